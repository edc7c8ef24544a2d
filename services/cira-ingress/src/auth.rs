//! Device login: the guid must be a registered device, the user its mps username and the
//! password its MPS_PASSWORD; repeated failures from one source address are slowed down.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use homeport_secrets::{device_path, DynSecretStore, MPS_PASSWORD};
use homeport_store::{canonical_guid, Device, Store};
use tokio::sync::{mpsc, oneshot};

/// Why a login failed, as put in the auth-failure event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    UnknownDevice,
    BadUsername,
    BadPassword,
    NoCredentials,
    StoreUnavailable,
}

impl AuthFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::UnknownDevice => "unknown_device",
            AuthFailure::BadUsername => "bad_username",
            AuthFailure::BadPassword => "bad_password",
            AuthFailure::NoCredentials => "no_credentials",
            AuthFailure::StoreUnavailable => "store_unavailable",
        }
    }
}

/// The device as far as the session needs it after a successful login.
pub struct LoggedIn {
    pub tenant: String,
}

/// A failed login, with the device's tenant when the device is known.
pub struct Rejected {
    pub why: AuthFailure,
    pub tenant: String,
}

impl AuthFailure {
    fn without_tenant(self) -> Rejected {
        Rejected {
            why: self,
            tenant: String::new(),
        }
    }
}

/// Longest wait for one batch of device rows before its logins fail as "store unavailable".
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Most devices read in one query.
const MAX_BATCH: usize = 256;
/// How long a batch waits for more logins after its first: at a thousand logins a second
/// this gathers a few per query, where each query costs the ingress tens of microseconds of
/// CPU; a device's login waits this much longer, next to its TLS and APF round trips.
const BATCH_WINDOW: Duration = Duration::from_millis(3);
/// Database connections the lookups keep open: one for the batch being read, one that sqlx is
/// still checking after the previous batch.
pub const LOOKUP_CONNECTIONS: u32 = 2;

type Lookup = (String, oneshot::Sender<Result<Option<Device>, String>>);

/// Device rows for logins, read in batches: logins that arrive together (a reconnect storm)
/// share one query instead of paying one each. A batch is what queued while the previous
/// query ran plus what arrives within `BATCH_WINDOW` of its first login.
#[derive(Clone)]
pub struct DeviceLookup {
    tx: mpsc::UnboundedSender<Lookup>,
}

impl DeviceLookup {
    /// Starts the batching task; it ends when the last handle is dropped.
    pub fn start(store: Store) -> DeviceLookup {
        let (tx, mut rx) = mpsc::unbounded_channel::<Lookup>();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(MAX_BATCH);
            while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
                let window = tokio::time::Instant::now() + BATCH_WINDOW;
                while batch.len() < MAX_BATCH {
                    let more = MAX_BATCH - batch.len();
                    match tokio::time::timeout_at(window, rx.recv_many(&mut batch, more)).await {
                        Ok(n) if n > 0 => {}
                        _ => break,
                    }
                }
                let guids: Vec<String> = batch.iter().map(|(g, _)| g.clone()).collect();
                let result =
                    match tokio::time::timeout(LOOKUP_TIMEOUT, store.get_devices(&guids)).await {
                        Ok(Ok(found)) => Ok(found),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err("device lookup timed out".to_string()),
                    };
                for (guid, reply) in batch.drain(..) {
                    let answer = match &result {
                        Ok(found) => Ok(canonical_guid(&guid).and_then(|g| found.get(&g).cloned())),
                        Err(e) => Err(e.clone()),
                    };
                    let _ = reply.send(answer);
                }
            }
        });
        DeviceLookup { tx }
    }

    async fn get(&self, guid: &str) -> Result<Option<Device>, String> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((guid.to_owned(), tx))
            .map_err(|_| "device lookup stopped".to_string())?;
        rx.await.map_err(|_| "device lookup stopped".to_string())?
    }
}

pub async fn check(
    devices: &DeviceLookup,
    secrets: &DynSecretStore,
    guid: &str,
    username: &str,
    password: &[u8],
) -> Result<LoggedIn, Rejected> {
    let device = match devices.get(guid).await {
        Ok(Some(d)) => d,
        Ok(None) => return Err(AuthFailure::UnknownDevice.without_tenant()),
        Err(e) => {
            tracing::warn!(device = %guid, error = %e, "device lookup failed during login");
            return Err(AuthFailure::StoreUnavailable.without_tenant());
        }
    };
    let reject = |why| Rejected {
        why,
        tenant: device.tenant_id.clone(),
    };
    let stored = match secrets.get(&device_path(guid)).await {
        Ok(Some(map)) => map,
        Ok(None) => return Err(reject(AuthFailure::NoCredentials)),
        Err(e) => {
            tracing::warn!(device = %guid, error = %e, "secret lookup failed during login");
            return Err(reject(AuthFailure::StoreUnavailable));
        }
    };
    let Some(expected) = stored.get(MPS_PASSWORD) else {
        return Err(reject(AuthFailure::NoCredentials));
    };
    // Compare both before deciding, and in constant time, so timing tells nothing.
    let user_ok = device.mps_username.as_bytes() == username.as_bytes();
    let expected = expected.expose().as_bytes();
    let pass_ok = expected.len() == password.len() && openssl::memcmp::eq(expected, password);
    match (user_ok, pass_ok) {
        (true, true) => Ok(LoggedIn {
            tenant: device.tenant_id.clone(),
        }),
        (false, _) => Err(reject(AuthFailure::BadUsername)),
        (true, false) => Err(reject(AuthFailure::BadPassword)),
    }
}

/// Slows down sources that keep failing: after `FREE_FAILURES` failures within `WINDOW`, each
/// further failure is answered after a delay that doubles up to `MAX_DELAY`.
#[derive(Default)]
pub struct FailureLimiter {
    by_source: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

const FREE_FAILURES: u32 = 3;
const WINDOW: Duration = Duration::from_secs(600);
const MAX_DELAY: Duration = Duration::from_secs(10);
const MAX_TRACKED: usize = 100_000;

impl FailureLimiter {
    /// Records a failure and returns how long to wait before answering it.
    pub fn failure(&self, source: IpAddr, now: Instant) -> Duration {
        let Ok(mut map) = self.by_source.lock() else {
            return Duration::ZERO;
        };
        if map.len() >= MAX_TRACKED {
            map.retain(|_, (_, at)| now.duration_since(*at) < WINDOW);
        }
        let entry = map.entry(source).or_insert((0, now));
        if now.duration_since(entry.1) >= WINDOW {
            *entry = (0, now);
        }
        entry.0 = entry.0.saturating_add(1);
        entry.1 = now;
        delay_for(entry.0)
    }
}

fn delay_for(failures: u32) -> Duration {
    if failures <= FREE_FAILURES {
        return Duration::ZERO;
    }
    let exp = (failures - FREE_FAILURES - 1).min(10);
    (Duration::from_millis(250) * 2u32.pow(exp)).min(MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_from_one_source_slow_down() {
        let l = FailureLimiter::default();
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        let other: IpAddr = "127.0.0.10".parse().unwrap();
        let now = Instant::now();
        let delays: Vec<_> = (0..8).map(|_| l.failure(ip, now)).collect();
        assert_eq!(delays[..3], [Duration::ZERO; 3]);
        assert_eq!(delays[3], Duration::from_millis(250));
        assert_eq!(delays[4], Duration::from_millis(500));
        assert!(delays.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(l.failure(other, now), Duration::ZERO);
        assert_eq!(delay_for(100), MAX_DELAY);
        // The window forgets old failures.
        assert_eq!(l.failure(ip, now + WINDOW), Duration::ZERO);
    }
}
