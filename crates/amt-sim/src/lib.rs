//! amt-sim: thousands of simulated Intel AMT devices in one process, each with a real CIRA
//! connection (TLS + APF) and an HTTP/WS-Man responder behind digest authentication.
//!
//! Identities are derived from a seed, so `enroll` (registering the devices and their secrets)
//! and `run` can happen in different processes and agree. Each device answers the WS-Man calls
//! of the device-management features from a small per-device model (`wsman`), created on its
//! first request; `Fleet::device` and the control listener expose that model to tests.

pub mod amt;
pub mod control;
mod device;
pub mod hostile;
pub mod identity;
pub mod provision;
mod wsman;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use homeport_secrets::{DynSecretStore, SecretMap, SecretString};
use homeport_store::{DeviceInfo, NewDevice, Store};
use openssl::ssl::{SslConnector, SslMethod, SslMode, SslVerifyMode, SslVersion};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use control::{serve_control, Control, DeviceHandle, DeviceStatus};
pub use identity::Identity;

use control::{DeviceSlot, Directory};

/// A misbehaviour injected into some devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Logs in with a wrong CIRA password.
    WrongPassword,
    /// Sends no keep-alives (the server's idle timeout must drop it).
    SilentKeepalive,
    /// Resets the TCP connection this long after becoming ready.
    AbruptReset(Duration),
    /// Writes its APF frames in pieces of 1-7 bytes.
    SplitFrames,
    /// Sends a CHANNEL_DATA frame claiming a 2 GiB payload once ready.
    OversizedFrame,
    /// Sends bytes that are no APF message once ready.
    GarbageFrame,
    /// Answers every authenticated WS-Man request with a 200 whose body is malformed XML
    /// (unclosed tags, 10,000-deep nesting, an entity bomb — in rotation).
    HostileWsman,
    /// On its first authenticated WS-Man request, resets the TCP connection instead of
    /// answering and stays away for `VANISH_FOR` before reconnecting (once per device).
    VanishMidCall,
}

/// How long a device that vanished mid-call stays away.
pub const VANISH_FOR: Duration = Duration::from_secs(30);

impl std::str::FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "none" => Fault::None,
            "wrong-password" => Fault::WrongPassword,
            "silent" => Fault::SilentKeepalive,
            "split" => Fault::SplitFrames,
            "oversized" => Fault::OversizedFrame,
            "garbage" => Fault::GarbageFrame,
            "hostile-wsman" => Fault::HostileWsman,
            "vanish" => Fault::VanishMidCall,
            other => match other.strip_prefix("reset:") {
                Some(secs) => Fault::AbruptReset(Duration::from_secs(
                    secs.parse().map_err(|_| format!("bad reset delay in {other:?}"))?,
                )),
                None => return Err(format!("unknown fault {other:?} (wrong-password, silent, reset:SECS, split, oversized, garbage, hostile-wsman, vanish)")),
            },
        })
    }
}

/// TLS offered by the simulated devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimTls {
    /// TLS 1.2/1.3 with classic ECDHE groups only (X25519, P-256, P-384), like current
    /// firmware: AMT's TLS stack offers no post-quantum key exchange.
    Modern,
    /// TLS 1.2/1.3 with the client library's default groups, which since OpenSSL 3.5 put the
    /// post-quantum hybrid X25519MLKEM768 first. No AMT firmware offers it; this measures what
    /// such a client costs the ingress.
    ModernPq,
    /// Only TLS 1.2 static-RSA suites, like older AMT firmware.
    StaticRsa,
    /// Only TLS 1.2 static-RSA CBC suites (no AES-GCM), like the oldest TLS 1.2 firmware.
    StaticRsaCbc,
}

impl std::str::FromStr for SimTls {
    type Err = String;

    fn from_str(s: &str) -> Result<SimTls, String> {
        Ok(match s {
            "modern" => SimTls::Modern,
            "modern-pq" => SimTls::ModernPq,
            "static-rsa" => SimTls::StaticRsa,
            "static-rsa-cbc" => SimTls::StaticRsaCbc,
            other => {
                return Err(format!(
                "TLS mode must be modern, modern-pq, static-rsa or static-rsa-cbc, not {other:?}"
            ))
            }
        })
    }
}

/// Key-exchange groups of `SimTls::Modern`.
const CLASSIC_GROUPS: &str = "X25519:P-256:P-384";

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub server: SocketAddr,
    /// SNI sent to the server.
    pub server_name: String,
    pub seed: u64,
    pub first_index: u64,
    pub devices: u64,
    /// New connections per second across the fleet (0: unlimited).
    pub ramp_per_second: u32,
    /// Source addresses to spread connections over (each has ~28k ephemeral ports); empty: OS.
    pub source_ips: Vec<IpAddr>,
    pub tls: SimTls,
    /// Verify the server against this CA; without it the device trusts any server.
    pub ca_file: Option<PathBuf>,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// Fraction of devices (0.0-1.0) that get each fault, chosen deterministically by index.
    pub faults: Vec<(Fault, f64)>,
    /// Every WS-Man answer is sent this much later (real CIRA round trips are ~100-300 ms);
    /// the device's other channels and keep-alives are not held up.
    pub wsman_latency: Duration,
    /// Devices whose index is a multiple of this are a no-KVM SKU (0: none).
    pub no_kvm_every: u64,
}

impl SimConfig {
    pub fn new(server: SocketAddr, devices: u64) -> Self {
        Self {
            server,
            server_name: "localhost".into(),
            seed: 1,
            first_index: 0,
            devices,
            ramp_per_second: 0,
            source_ips: Vec::new(),
            tls: SimTls::Modern,
            ca_file: None,
            reconnect_min: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(30),
            faults: Vec::new(),
            wsman_latency: Duration::ZERO,
            no_kvm_every: 0,
        }
    }

    /// Whether device `index` is a no-KVM SKU (its KVM classes answer DestinationUnreachable).
    pub fn no_kvm_for(&self, index: u64) -> bool {
        self.no_kvm_every != 0 && index.is_multiple_of(self.no_kvm_every)
    }

    pub fn identities(&self) -> impl Iterator<Item = Identity> + '_ {
        (self.first_index..self.first_index + self.devices).map(|i| Identity::derive(self.seed, i))
    }

    /// The fault of device `index`: faults claim consecutive slices of a per-device draw.
    pub fn fault_for(&self, index: u64) -> Fault {
        let draw = (index.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as f64 / (1u64 << 53) as f64;
        let mut acc = 0.0;
        for (fault, share) in &self.faults {
            acc += share;
            if draw < acc {
                return *fault;
            }
        }
        Fault::None
    }
}

/// Fleet-wide counters.
#[derive(Debug, Default)]
pub struct FleetStats {
    pub attempts: AtomicU64,
    pub connect_failures: AtomicU64,
    pub tls_handshakes: AtomicU64,
    pub tls_failures: AtomicU64,
    pub auth_failures: AtomicU64,
    /// Devices whose session is ready right now.
    pub connected: AtomicU64,
    pub ready_total: AtomicU64,
    pub disconnects: AtomicU64,
    pub server_disconnects: AtomicU64,
    pub http_requests: AtomicU64,
    pub injected_faults: AtomicU64,
    /// Milliseconds from a device's first dial to its first ready session, refused and failed
    /// attempts included (the first million devices).
    pub connect_ms: std::sync::Mutex<Vec<u32>>,
}

/// Connect times kept at most (a sample for percentiles, bounded).
const MAX_CONNECT_SAMPLES: usize = 1_000_000;

impl FleetStats {
    pub fn connected(&self) -> u64 {
        self.connected.load(Ordering::Relaxed)
    }

    pub(crate) fn record_connect(&self, took: Duration) {
        let mut samples = self
            .connect_ms
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if samples.len() < MAX_CONNECT_SAMPLES {
            samples.push(u32::try_from(took.as_millis()).unwrap_or(u32::MAX));
        }
    }

    /// The `q` quantile (0..=1) of connect times in milliseconds, if any connected.
    pub fn connect_quantile_ms(&self, q: f64) -> Option<u32> {
        let mut samples = self
            .connect_ms
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let rank = ((samples.len() as f64) * q.clamp(0.0, 1.0)).ceil() as usize;
        samples
            .get(rank.saturating_sub(1).min(samples.len() - 1))
            .copied()
    }
}

pub(crate) struct FleetShared {
    pub config: SimConfig,
    pub connector: SslConnector,
    pub stats: Arc<FleetStats>,
    next_slot: Mutex<tokio::time::Instant>,
}

impl FleetShared {
    /// Waits for this connection's slot when the fleet ramps up at a fixed rate.
    pub async fn ramp(&self) {
        if self.config.ramp_per_second == 0 {
            return;
        }
        let gap = Duration::from_secs(1) / self.config.ramp_per_second;
        let at = {
            let mut next = self.next_slot.lock().await;
            let now = tokio::time::Instant::now();
            let at = (*next).max(now);
            *next = at + gap;
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("TLS setup: {0}")]
    Tls(#[from] openssl::error::ErrorStack),
    #[error("enrolment: {0}")]
    Enroll(String),
}

/// The TLS client a simulated device uses: what it offers (`tls`) and whom it trusts.
pub fn connector(tls: SimTls, ca_file: Option<&Path>) -> Result<SslConnector, SimError> {
    let mut b = SslConnector::builder(SslMethod::tls_client())?;
    let static_rsa = match tls {
        SimTls::Modern => {
            b.set_groups_list(CLASSIC_GROUPS)?;
            None
        }
        SimTls::ModernPq => None,
        SimTls::StaticRsa => Some(
            "AES128-GCM-SHA256:AES256-GCM-SHA384:AES128-SHA256:AES256-SHA256:AES128-SHA:AES256-SHA",
        ),
        SimTls::StaticRsaCbc => Some("AES128-SHA256:AES256-SHA256:AES128-SHA:AES256-SHA"),
    };
    if let Some(ciphers) = static_rsa {
        b.set_max_proto_version(Some(SslVersion::TLS1_2))?;
        b.set_cipher_list(ciphers)?;
    }
    match ca_file {
        Some(ca) => {
            b.set_ca_file(ca)?;
            b.set_verify(SslVerifyMode::PEER);
        }
        None => b.set_verify(SslVerifyMode::NONE),
    }
    b.set_mode(SslMode::RELEASE_BUFFERS);
    Ok(b.build())
}

/// A running fleet of simulated devices.
pub struct Fleet {
    shared: Arc<FleetShared>,
    cancel: CancellationToken,
    tasks: TaskTracker,
    directory: Arc<Directory>,
}

impl Fleet {
    /// Starts every device's connection task.
    pub fn start(config: SimConfig) -> Result<Fleet, SimError> {
        let devices = config
            .identities()
            .map(|id| {
                let slot = Arc::new(DeviceSlot::new(config.no_kvm_for(id.index)));
                (Arc::new(id), slot)
            })
            .collect();
        Fleet::start_slots(config, devices)
    }

    /// Starts CIRA for devices that were activated through rps (`provision`): each logs in
    /// with the CIRA configuration it received. `config.devices` is ignored.
    pub fn start_provisioned(
        config: SimConfig,
        devices: Vec<provision::SimDevice>,
    ) -> Result<Fleet, SimError> {
        let slots = devices
            .into_iter()
            .map(|d| (Arc::new(d.id), d.slot))
            .collect();
        Fleet::start_slots(config, slots)
    }

    fn start_slots(
        config: SimConfig,
        devices: Vec<(Arc<Identity>, Arc<DeviceSlot>)>,
    ) -> Result<Fleet, SimError> {
        let shared = Arc::new(FleetShared {
            connector: connector(config.tls, config.ca_file.as_deref())?,
            stats: Arc::new(FleetStats::default()),
            next_slot: Mutex::new(tokio::time::Instant::now()),
            config,
        });
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        let (identities, slots): (Vec<_>, Vec<_>) = devices.into_iter().unzip();
        for (id, slot) in identities.iter().zip(&slots) {
            let fault = shared.config.fault_for(id.index);
            tasks.spawn(device::run(
                shared.clone(),
                id.clone(),
                slot.clone(),
                fault,
                cancel.clone(),
            ));
        }
        tasks.close();
        Ok(Fleet {
            shared,
            cancel,
            tasks,
            directory: Arc::new(Directory { identities, slots }),
        })
    }

    /// The device with this GUID, to read its state or steer it from a test.
    pub fn device(&self, guid: &str) -> Option<DeviceHandle> {
        self.control().device(guid)
    }

    /// A cloneable view of the devices, for `serve_control`.
    pub fn control(&self) -> Control {
        Control {
            directory: self.directory.clone(),
        }
    }

    pub fn stats(&self) -> Arc<FleetStats> {
        self.shared.stats.clone()
    }

    pub fn identities(&self) -> &[Arc<Identity>] {
        &self.directory.identities
    }

    /// Waits until `n` devices are connected, or `timeout` passes; returns the count reached.
    pub async fn wait_connected(&self, n: u64, timeout: Duration) -> u64 {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let c = self.shared.stats.connected();
            if c >= n || tokio::time::Instant::now() >= deadline {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Disconnects every device (APF DISCONNECT, TLS close) and waits for the tasks.
    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.tasks.wait()).await;
    }
}

/// Registers devices in the store and writes their secrets (MPS and AMT passwords).
pub async fn enroll(
    store: &Store,
    secrets: &DynSecretStore,
    identities: &[Identity],
    tenant: &str,
) -> Result<(), SimError> {
    for batch in identities.chunks(5_000) {
        let devices = batch
            .iter()
            .map(|id| NewDevice {
                guid: id.guid.clone(),
                tenant_id: tenant.to_string(),
                hostname: Some(id.hostname.clone()),
                friendly_name: Some(format!("Simulated device {}", id.index)),
                tags: vec!["simulated".to_string()],
                mps_username: id.mps_username.clone(),
                device_info: Some(DeviceInfo {
                    fw_version: Some("15.0.23".into()),
                    fw_build: Some("1706".into()),
                    fw_sku: Some("16392".into()),
                    current_mode: Some("ACM".into()),
                    ..DeviceInfo::default()
                }),
            })
            .collect();
        store
            .bulk_upsert_devices(devices)
            .await
            .map_err(|e| SimError::Enroll(e.to_string()))?;
        let entries = batch
            .iter()
            .map(|id| {
                let mut m = SecretMap::new();
                m.insert(
                    homeport_secrets::MPS_PASSWORD.into(),
                    id.mps_password.clone(),
                );
                m.insert(
                    homeport_secrets::AMT_PASSWORD.into(),
                    id.amt_password.clone(),
                );
                m.insert(
                    homeport_secrets::MEBX_PASSWORD.into(),
                    SecretString::new(format!("Mebx!{}", id.index)),
                );
                (homeport_secrets::device_path(&id.guid), m)
            })
            .collect();
        secrets
            .put_many(entries)
            .await
            .map_err(|e| SimError::Enroll(e.to_string()))?;
    }
    Ok(())
}
