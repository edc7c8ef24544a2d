//! The simulator's control side: per-device slots the connection tasks and the fleet share
//! (lazily created device model, wake-ups for forced disconnects and re-provisioning), the
//! `DeviceHandle` tests use to "read the screen", and a small local HTTP/JSON listener
//! (`amt-sim run --control-listen`) exposing the same.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::identity::Identity;
use crate::wsman::logs::{audit_record, Initiator};
use crate::wsman::model::{DeviceModel, Now};

/// What the fleet keeps per device whether or not it was ever talked to: a few dozen bytes
/// until the first WS-Man request creates the model.
pub(crate) struct DeviceSlot {
    model: OnceLock<Arc<Mutex<DeviceModel>>>,
    no_kvm: bool,
    /// Wakes the connection task: a forced disconnect, or re-provisioning.
    pub(crate) wake: Notify,
    pub(crate) disconnect: AtomicBool,
}

impl DeviceSlot {
    pub(crate) fn new(no_kvm: bool) -> DeviceSlot {
        DeviceSlot {
            model: OnceLock::new(),
            no_kvm,
            wake: Notify::new(),
            disconnect: AtomicBool::new(false),
        }
    }

    /// A slot whose device model already exists (a device that went through provisioning).
    pub(crate) fn with_model(model: Arc<Mutex<DeviceModel>>) -> DeviceSlot {
        let slot = DeviceSlot::new(false);
        let _ = slot.model.set(model);
        slot
    }

    /// The CIRA user and password provisioning set, if it did (without creating a model).
    pub(crate) fn cira_credentials(&self) -> Option<(String, String)> {
        let m = self
            .model
            .get()?
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        m.remote
            .as_ref()?
            .servers
            .first()
            .map(|s| (s.username.clone(), s.password.clone()))
    }

    /// The device model, created on first use.
    pub(crate) fn model(&self) -> &Arc<Mutex<DeviceModel>> {
        self.model.get_or_init(|| {
            Arc::new(Mutex::new(DeviceModel::new(
                self.no_kvm,
                Now::current().unix,
            )))
        })
    }

    /// Locks the model; a panic elsewhere while holding it leaves usable state behind.
    pub(crate) fn lock(&self) -> MutexGuard<'_, DeviceModel> {
        self.model().lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the device may hold a CIRA connection (a device never talked to is).
    pub(crate) fn provisioned(&self) -> bool {
        self.model
            .get()
            .is_none_or(|m| m.lock().unwrap_or_else(PoisonError::into_inner).provisioned)
    }
}

/// Identities and slots of a fleet, shared by the fleet, its tasks and control handles.
pub(crate) struct Directory {
    pub identities: Vec<Arc<Identity>>,
    pub slots: Vec<Arc<DeviceSlot>>,
}

/// A cloneable view of a running fleet's devices, for control listeners.
#[derive(Clone)]
pub struct Control {
    pub(crate) directory: Arc<Directory>,
}

impl Control {
    /// The device with this GUID (case-insensitive), if it belongs to the fleet.
    pub fn device(&self, guid: &str) -> Option<DeviceHandle> {
        let d = &self.directory;
        let i = d
            .identities
            .iter()
            .position(|id| id.guid.eq_ignore_ascii_case(guid.trim()))?;
        Some(DeviceHandle {
            id: d.identities.get(i)?.clone(),
            slot: d.slots.get(i)?.clone(),
        })
    }
}

/// A snapshot of one device's observable state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceStatus {
    pub guid: String,
    pub power_state: u32,
    /// The 6-digit user-consent code on the device's screen, if one is displayed.
    pub consent_code: Option<String>,
    pub opt_in_state: u32,
    pub provisioned: bool,
    pub alarms: usize,
    pub audit_records: usize,
    pub event_records: usize,
}

/// Reads and steers one simulated device from outside its connection.
#[derive(Clone)]
pub struct DeviceHandle {
    id: Arc<Identity>,
    slot: Arc<DeviceSlot>,
}

impl DeviceHandle {
    fn with<T>(&self, f: impl FnOnce(&mut DeviceModel) -> T) -> T {
        let mut m = self.slot.lock();
        // Apply due timeouts and alarms first, as a request would.
        m.tick(Now::current());
        f(&mut m)
    }

    pub fn identity(&self) -> &Identity {
        &self.id
    }

    pub fn guid(&self) -> &str {
        &self.id.guid
    }

    /// The consent code StartOptIn put on screen (zero-padded, 6 digits), while displayed.
    pub fn consent_code(&self) -> Option<String> {
        self.with(|m| m.optin.screen())
    }

    /// IPS_OptInService OptInState (0 none, 2 displayed, 3 received).
    pub fn opt_in_state(&self) -> u32 {
        self.with(|m| u32::from(m.optin.state))
    }

    /// DMTF PowerState (2 on, 4 sleep, 7 hibernate, 8 off).
    pub fn power_state(&self) -> u32 {
        self.with(|m| u32::from(m.power))
    }

    pub fn alarms_len(&self) -> usize {
        self.with(|m| m.alarms.len())
    }

    pub fn audit_len(&self) -> usize {
        self.with(|m| m.audit.len())
    }

    pub fn event_len(&self) -> usize {
        self.with(|m| m.events.len())
    }

    pub fn is_provisioned(&self) -> bool {
        self.slot.provisioned()
    }

    /// Re-activates an unprovisioned device (audits 1600/1601, alarms cleared like a fresh
    /// activation); it then reconnects. No-op when provisioned.
    pub fn reprovision(&self) {
        self.with(|m| {
            if !m.provisioned {
                let unix = Now::current().unix;
                m.provisioned = true;
                m.alarms.clear();
                m.push_audit(audit_record(1600, Initiator::Local, unix, "", &[]));
                m.push_audit(audit_record(1601, Initiator::Local, unix, "", &[]));
            }
        });
        self.slot.wake.notify_one();
    }

    /// Closes the device's CIRA connection (APF DISCONNECT by application); it reconnects
    /// after the usual backoff. No-op while it is not connected.
    pub fn disconnect(&self) {
        self.slot.disconnect.store(true, Ordering::SeqCst);
        self.slot.wake.notify_one();
    }

    pub fn status(&self) -> DeviceStatus {
        let provisioned = self.is_provisioned();
        self.with(|m| DeviceStatus {
            guid: self.id.guid.clone(),
            power_state: u32::from(m.power),
            consent_code: m.optin.screen(),
            opt_in_state: u32::from(m.optin.state),
            provisioned,
            alarms: m.alarms.len(),
            audit_records: m.audit.len(),
            event_records: m.events.len(),
        })
    }
}

/// How long a control client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves the control API until `cancel`:
/// `GET /devices/<guid>` → `{guid, power_state, consent_code, opt_in_state, provisioned,
/// alarms, audit_records, event_records}`; `POST /devices/<guid>/disconnect` and
/// `POST /devices/<guid>/reprovision` → `{"ok":true}`. One request per connection.
pub async fn serve_control(listener: TcpListener, control: Control, cancel: CancellationToken) {
    let tasks = TaskTracker::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let control = control.clone();
                    tasks.spawn(async move {
                        if let Err(e) = control_connection(stream, &control).await {
                            tracing::debug!(%peer, error = %e, "control request failed");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control listener accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    tasks.close();
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, tasks.wait()).await;
}

/// Binds the control listener (call before starting the fleet so a bad address fails early).
pub async fn bind_control(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

async fn control_connection(mut stream: TcpStream, control: &Control) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let request = tokio::time::timeout(REQUEST_TIMEOUT, async {
        loop {
            match homeport_http1::complete_request(&buf) {
                Ok(Some(c)) => return Ok::<_, std::io::Error>(Some(c.head)),
                Ok(None) => {}
                Err(_) => return Ok(None),
            }
            let chunk = homeport_runtime::io::read_some(&mut stream).await?;
            if chunk.is_empty() {
                return Ok(None);
            }
            buf.extend_from_slice(&chunk);
        }
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "request timed out"))??;
    let (status, body) = match request {
        Some(head) => route(control, &head.first, &head.second),
        None => ("400 Bad Request", error_json("malformed request")),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

fn error_json(message: &str) -> String {
    serde_json::json!({ "error": message }).to_string()
}

fn route(control: &Control, method: &str, target: &str) -> (&'static str, String) {
    let path = target.split('?').next().unwrap_or_default();
    let Some(rest) = path.strip_prefix("/devices/") else {
        return ("404 Not Found", error_json("unknown path"));
    };
    let (guid, action) = rest.split_once('/').unwrap_or((rest, ""));
    let Some(device) = control.device(guid) else {
        return ("404 Not Found", error_json("unknown device"));
    };
    match (method, action) {
        ("GET", "") => {
            let s = device.status();
            let body = serde_json::json!({
                "guid": s.guid,
                "power_state": s.power_state,
                "consent_code": s.consent_code,
                "opt_in_state": s.opt_in_state,
                "provisioned": s.provisioned,
                "alarms": s.alarms,
                "audit_records": s.audit_records,
                "event_records": s.event_records,
            });
            ("200 OK", body.to_string())
        }
        ("POST", "disconnect") => {
            device.disconnect();
            ("200 OK", serde_json::json!({ "ok": true }).to_string())
        }
        ("POST", "reprovision") => {
            device.reprovision();
            ("200 OK", serde_json::json!({ "ok": true }).to_string())
        }
        (_, "" | "disconnect" | "reprovision") => {
            ("405 Method Not Allowed", error_json("method not allowed"))
        }
        _ => ("404 Not Found", error_json("unknown path")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn control(n: u64) -> Control {
        let identities: Vec<_> = (0..n).map(|i| Arc::new(Identity::derive(9, i))).collect();
        let slots = (0..n).map(|i| Arc::new(DeviceSlot::new(i == 0))).collect();
        Control {
            directory: Arc::new(Directory { identities, slots }),
        }
    }

    #[test]
    fn handles_read_and_steer_the_model() {
        let c = control(3);
        let guid = c.directory.identities[1].guid.to_uppercase();
        let d = c.device(&guid).expect("found case-insensitively");
        assert!(
            c.directory.slots[1].model.get().is_none(),
            "lazy until used"
        );
        assert_eq!(d.power_state(), 2);
        assert_eq!(d.consent_code(), None);
        assert_eq!(d.audit_len(), 4);
        assert_eq!(d.event_len(), 20);
        assert!(d.is_provisioned());
        d.slot.lock().provisioned = false;
        assert!(!d.is_provisioned());
        d.reprovision();
        assert!(d.is_provisioned());
        assert_eq!(d.audit_len(), 6);
        assert!(c.device("00000000-0000-0000-0000-000000000000").is_none());
    }

    #[test]
    fn slots_stay_small() {
        assert!(
            std::mem::size_of::<DeviceSlot>() <= 128,
            "{}",
            std::mem::size_of::<DeviceSlot>()
        );
    }

    #[tokio::test]
    async fn control_listener_answers_json() {
        let c = control(2);
        let guid = c.directory.identities[1].guid.clone();
        let listener = bind_control(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let server = tokio::spawn(serve_control(listener, c.clone(), cancel.clone()));
        let ask = |req: String| async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let out = ask(format!("GET /devices/{guid} HTTP/1.1\r\nHost: x\r\n\r\n")).await;
        assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
        let json: serde_json::Value =
            serde_json::from_str(out.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(json["power_state"], 2);
        assert_eq!(json["consent_code"], serde_json::Value::Null);
        assert_eq!(json["provisioned"], true);
        assert_eq!(json["audit_records"], 4);
        assert_eq!(json["event_records"], 20);
        let out = ask(format!("POST /devices/{guid}/disconnect HTTP/1.1\r\n\r\n")).await;
        assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
        assert!(c.directory.slots[1].disconnect.load(Ordering::SeqCst));
        let out = ask("GET /devices/nope HTTP/1.1\r\n\r\n".into()).await;
        assert!(out.starts_with("HTTP/1.1 404"), "{out}");
        let out = ask("garbage\r\n\r\n".into()).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{out}");
        cancel.cancel();
        server.await.unwrap();
    }
}
