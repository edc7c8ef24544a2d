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

/// A GUID no device has (the nil UUID), read in place of an unknown device's secrets.
const UNKNOWN_DEVICE_PATH_GUID: &str = "00000000-0000-0000-0000-000000000000";

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
        Ok(None) => {
            // The same secret read a known device costs, so the answer's timing does not tell
            // a stranger which GUIDs are registered.
            let _ = secrets.get(&device_path(UNKNOWN_DEVICE_PATH_GUID)).await;
            return Err(AuthFailure::UnknownDevice.without_tenant());
        }
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

use crate::bounded::Generations;

/// Slows down sources that keep failing: after `FREE_FAILURES` failures within `WINDOW`, each
/// further failure is answered after a delay that doubles up to `MAX_DELAY`. At most
/// `MAX_TRACKED` sources are remembered (the least recently failing are forgotten first), and
/// every failure costs O(1) under the lock.
pub struct FailureLimiter {
    by_source: Mutex<Generations<IpAddr, (u32, Instant)>>,
}

impl Default for FailureLimiter {
    fn default() -> Self {
        Self::with_capacity(MAX_TRACKED)
    }
}

const FREE_FAILURES: u32 = 3;
const WINDOW: Duration = Duration::from_secs(600);
const MAX_DELAY: Duration = Duration::from_secs(10);
const MAX_TRACKED: usize = 100_000;

impl FailureLimiter {
    fn with_capacity(cap: usize) -> Self {
        Self {
            by_source: Mutex::new(Generations::new(cap)),
        }
    }

    /// Records a failure and returns how long to wait before answering it.
    pub fn failure(&self, source: IpAddr, now: Instant) -> Duration {
        let source = crate::sources::source_key(source);
        let mut map = self.by_source.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map.get_mut_or_insert(&source, || (0, now));
        if now.duration_since(entry.1) >= WINDOW {
            *entry = (0, now);
        }
        entry.0 = entry.0.saturating_add(1);
        entry.1 = now;
        delay_for(entry.0)
    }

    /// Sources remembered now (at most `MAX_TRACKED`).
    pub fn tracked(&self) -> usize {
        self.by_source.lock().map(|m| m.len()).unwrap_or(0)
    }
}

fn delay_for(failures: u32) -> Duration {
    if failures <= FREE_FAILURES {
        return Duration::ZERO;
    }
    let exp = (failures - FREE_FAILURES - 1).min(10);
    (Duration::from_millis(250) * 2u32.pow(exp)).min(MAX_DELAY)
}

/// What a failed login's event says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedLogin {
    pub guid: String,
    pub remote: String,
    pub reason: AuthFailure,
    pub attempt: u32,
}

/// An `auth_failed` event to publish: the login it describes and how many failed logins
/// (from its source, in its tenant) it stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailureReport {
    pub tenant: String,
    pub login: FailedLogin,
    pub failures: u32,
}

struct Window {
    ends: Instant,
    /// Failures since the window's event, with the latest of them.
    suppressed: u32,
    last: Option<FailedLogin>,
}

impl Window {
    /// A window whose event was just reported, ending at `ends`.
    fn open(ends: Instant) -> Self {
        Self {
            ends,
            suppressed: 0,
            last: None,
        }
    }
}

/// Failed-login events, at most one per source address and tenant per interval: the first
/// failure of a quiet source is reported at once; the failures that follow within the
/// interval are counted and reported together when it ends (which opens the next interval).
/// A stranger cycling random GUIDs therefore adds one event per interval, not one per try.
pub struct FailureEvents {
    interval: Duration,
    windows: Mutex<HashMap<(IpAddr, String), Window>>,
    max_sources: usize,
    dropped: std::sync::atomic::AtomicU64,
}

impl FailureEvents {
    pub fn new(interval: Duration, max_sources: usize) -> Self {
        Self {
            interval,
            windows: Mutex::new(HashMap::new()),
            max_sources,
            dropped: Default::default(),
        }
    }

    /// Records a failed login; returns the event to publish now, if any.
    pub fn record(
        &self,
        now: Instant,
        source: IpAddr,
        tenant: &str,
        login: FailedLogin,
    ) -> Option<FailureReport> {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let mut key = (crate::sources::source_key(source), tenant.to_owned());
        if !windows.contains_key(&key) && windows.len() >= self.max_sources {
            // Bounded: past this many noisy sources, new ones share one window per tenant,
            // which still reports (so a fresh address cannot fail unseen).
            self.dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            key.0 = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
        }
        if let Some(w) = windows.get_mut(&key) {
            if now < w.ends {
                w.suppressed = w.suppressed.saturating_add(1);
                w.last = Some(login);
                return None;
            }
            // A window that ended without being swept: its count goes into this event.
            let failures = w.suppressed.saturating_add(1);
            *w = Window::open(now + self.interval);
            return Some(FailureReport {
                tenant: key.1,
                login,
                failures,
            });
        }
        windows.insert(key.clone(), Window::open(now + self.interval));
        Some(FailureReport {
            tenant: key.1,
            login,
            failures: 1,
        })
    }

    /// Ends the windows that are over: one report for each that counted failures (opening a
    /// new window), and quiet ones are forgotten.
    pub fn sweep(&self, now: Instant) -> Vec<FailureReport> {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let mut reports = Vec::new();
        windows.retain(|(_, tenant), w| {
            if now < w.ends {
                return true;
            }
            match w.last.take() {
                Some(login) => {
                    reports.push(FailureReport {
                        tenant: tenant.clone(),
                        login,
                        failures: w.suppressed,
                    });
                    *w = Window::open(now + self.interval);
                    true
                }
                None => false,
            }
        });
        reports
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Failures counted in the shared window because too many sources were being tracked.
    pub fn pooled(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }
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

    #[test]
    fn the_limiter_is_bounded_and_forgets_the_least_recent_sources() {
        let l = FailureLimiter::with_capacity(100);
        let now = Instant::now();
        let busy: IpAddr = "198.51.100.1".parse().unwrap();
        for _ in 0..5 {
            l.failure(busy, now);
        }
        for i in 0..10_000u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0A00_0000 + i));
            l.failure(ip, now);
            // The busy source keeps failing now and then, so it stays remembered.
            if i % 20 == 0 {
                l.failure(busy, now);
            }
            assert!(l.tracked() <= 100, "{}", l.tracked());
        }
        assert!(l.failure(busy, now) >= MAX_DELAY / 2, "still slowed down");
    }

    fn login(guid: &str) -> FailedLogin {
        FailedLogin {
            guid: guid.into(),
            remote: "192.0.2.7:4000".into(),
            reason: AuthFailure::UnknownDevice,
            attempt: 1,
        }
    }

    #[test]
    fn failed_login_events_are_one_per_source_and_tenant_per_interval() {
        let ev = FailureEvents::new(Duration::from_secs(60), 1000);
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.7".parse().unwrap();
        let b: IpAddr = "192.0.2.8".parse().unwrap();
        // The first failure is reported at once.
        let first = ev.record(t0, a, "", login("g0")).expect("first");
        assert_eq!(first.failures, 1);
        // A thousand more within the interval: none at once.
        for i in 1..=1000 {
            let at = t0 + Duration::from_millis(i * 10);
            assert_eq!(ev.record(at, a, "", login(&format!("g{i}"))), None);
        }
        // Another source and another tenant are windows of their own.
        assert!(ev.record(t0, b, "", login("x")).is_some());
        assert!(ev.record(t0, a, "acme", login("y")).is_some());
        assert!(ev.sweep(t0 + Duration::from_secs(59)).is_empty());
        // The interval's end reports the thousand together, with the latest login.
        let reports = ev.sweep(t0 + Duration::from_secs(60));
        assert_eq!(reports.len(), 1, "{reports:?}");
        assert_eq!(reports[0].failures, 1000);
        assert_eq!(reports[0].login.guid, "g1000");
        // That report opened the next interval: a failure right after it is counted.
        assert_eq!(
            ev.record(t0 + Duration::from_secs(61), a, "", login("z")),
            None
        );
        let later = ev.sweep(t0 + Duration::from_secs(120));
        assert_eq!(later.len(), 1);
        assert_eq!(later[0].failures, 1);
        // Quiet windows are forgotten; the next failure is reported at once again.
        assert!(ev.sweep(t0 + Duration::from_secs(180)).is_empty());
        assert_eq!(
            ev.record(t0 + Duration::from_secs(181), a, "", login("w"))
                .map(|r| r.failures),
            Some(1)
        );
    }

    #[test]
    fn failed_login_events_track_a_bounded_number_of_sources() {
        let ev = FailureEvents::new(Duration::from_secs(60), 10);
        let now = Instant::now();
        let reported = (0..50u32)
            .filter(|i| {
                let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0A00_0000 + i));
                ev.record(now, ip, "", login("g")).is_some()
            })
            .count();
        // Ten sources of their own, then one shared window for the rest (still reported).
        assert_eq!(reported, 11);
        assert_eq!(ev.pooled(), 40);
        let later = ev.sweep(now + Duration::from_secs(60));
        assert_eq!(later.iter().map(|r| r.failures).sum::<u32>(), 39);
    }
}
