//! The provisioning side of a simulated device: it plays both the rpc client (the WebSocket
//! protocol 4.0.0 to rps, openamt-rps.md §1) and the firmware behind it (the WS-Man classes
//! of `wsman::provisioning`, digest-checked like every other call). A device starts in
//! pre-provisioning mode with its local system account; rps activates it, and the CIRA
//! configuration it applies is what the device dials afterwards (`Fleet::start_provisioned`).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use homeport_wsman::digest::md5_hex;
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
pub use tokio_tungstenite::tungstenite::Message;

use crate::amt::{self, Served};
use crate::control::DeviceSlot;
use crate::identity::Identity;
use crate::wsman::model::{Credentials, DeviceModel, Now};
use crate::wsman::setup::{AMT_BUILD, AMT_SKU, AMT_VERSION};
use crate::wsman::Effect;
use crate::Fault;

type Ws = tokio_tungstenite::WebSocketStream<tokio_openssl::SslStream<TcpStream>>;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The local system account rpc-go reads over MEI.
pub const LSA_USER: &str = "$$OsAdmin";

/// Trusted-root hashes a device reports (SHA-256, lower-case hex): stand-ins for the
/// vendor roots firmware ships, derived so every device reports the same set.
pub fn default_cert_hashes() -> Vec<String> {
    (0..6u8)
        .map(|i| sha256_hex(format!("homeport-sim-trusted-root-{i}").as_bytes()))
        .collect()
}

/// SHA-256 in lower-case hex, the form trusted-root hashes take (rpc's `certHashes`).
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    openssl::sha::sha256(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The device's local system account password (deterministic per identity).
pub fn lsa_password(id: &Identity) -> String {
    let p = id.mps_password.expose();
    format!("Lsa{}", &p[..p.len().min(13)])
}

pub(crate) fn lsa_credentials(id: &Identity) -> Credentials {
    Credentials {
        user: LSA_USER.into(),
        ha1: md5_hex(&format!("{LSA_USER}:{}:{}", id.realm, lsa_password(id))),
    }
}

/// Misbehaviour of the rpc client or the firmware during a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RpcFault {
    None,
    /// Close the WebSocket instead of answering the n-th WS-Man request (1-based).
    DropAt(u32),
    /// Report trusted-root hashes that match nothing.
    WrongHashes,
    /// From the n-th WS-Man request on (1-based), never answer but keep the connection open
    /// (a PC that hung): the server's deadlines must end the flow.
    StallFrom(u32),
}

/// Where and how the simulated rpc clients connect.
#[derive(Clone)]
pub struct RpcClient {
    host: String,
    port: u16,
    path: String,
    connector: SslConnector,
    /// rpc-go's `-tenant`.
    pub tenant: String,
    /// Each WS-Man answer is sent this much later (LMS/LME round trips on a real PC).
    pub latency: Duration,
    /// Deadline of a whole flow on the client side.
    pub timeout: Duration,
    /// The protocol version sent (the real client's is 4.0.0).
    pub protocol_version: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("bad rps URL {0:?} (wss://host:port/path)")]
    Url(String),
    #[error("connecting to rps: {0}")]
    Connect(String),
    #[error("rps closed the connection without a result")]
    Closed,
    #[error("the flow took longer than {0:?}")]
    Timeout(Duration),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("dropped the connection at exchange {0} (injected)")]
    Dropped(u32),
}

/// What rps answered at the end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpcOutcome {
    /// `success` (true) or `error`.
    pub ok: bool,
    /// The result's `message` (the status JSON, or plain text for early refusals).
    pub message: String,
    pub exchanges: u32,
}

impl RpcOutcome {
    /// A field of the status JSON (`Status`, `CIRAConnection`, ...).
    pub fn status(&self, key: &str) -> Option<String> {
        let v: serde_json::Value = serde_json::from_str(&self.message).ok()?;
        v.get(key)?.as_str().map(str::to_string)
    }
}

impl RpcClient {
    /// `url` is like rpc-go's `-u`: `wss://host:port/activate`. The server certificate is
    /// not verified (rpc-go `-n`), as the embedded rps has a self-signed one.
    pub fn new(url: &str) -> Result<RpcClient, RpcError> {
        let rest = url
            .strip_prefix("wss://")
            .ok_or_else(|| RpcError::Url(url.into()))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].to_string()),
            None => (rest, "/".to_string()),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (
                h.trim_matches(['[', ']']).to_string(),
                p.parse().map_err(|_| RpcError::Url(url.into()))?,
            ),
            None => (authority.to_string(), 443),
        };
        let mut b = SslConnector::builder(SslMethod::tls_client())
            .map_err(|e| RpcError::Connect(e.to_string()))?;
        b.set_verify(SslVerifyMode::NONE);
        Ok(RpcClient {
            host,
            port,
            path,
            connector: b.build(),
            tenant: String::new(),
            latency: Duration::ZERO,
            timeout: Duration::from_secs(120),
            protocol_version: "4.0.0".into(),
        })
    }

    /// A client frame as rpc-go builds it (every field a string, the payload base64).
    fn envelope(&self, method: &str, payload: &[u8]) -> serde_json::Value {
        serde_json::json!({
            "method": method,
            "apiKey": "key",
            "appVersion": "amt-sim",
            "protocolVersion": self.protocol_version,
            "status": "ok",
            "message": "ok",
            "fqdn": "",
            "payload": B64.encode(payload),
            "tenantId": self.tenant,
        })
    }

    async fn connect(&self) -> Result<Ws, RpcError> {
        let client = self;
        let tcp = TcpStream::connect((client.host.as_str(), client.port))
            .await
            .map_err(|e| RpcError::Connect(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let ssl = client
            .connector
            .configure()
            .and_then(|c| c.into_ssl(&client.host))
            .map_err(|e| RpcError::Connect(e.to_string()))?;
        let mut tls = tokio_openssl::SslStream::new(ssl, tcp)
            .map_err(|e| RpcError::Connect(e.to_string()))?;
        std::pin::Pin::new(&mut tls)
            .connect()
            .await
            .map_err(|e| RpcError::Connect(format!("TLS: {e}")))?;
        let url = format!("wss://{}:{}{}", client.host, client.port, client.path);
        let (ws, _) = tokio_tungstenite::client_async_with_config(
            url.as_str(),
            tls,
            Some(WebSocketConfig::default()),
        )
        .await
        .map_err(|e| RpcError::Connect(format!("WebSocket: {e}")))?;
        Ok(ws)
    }

    /// Sends one frame as it is and returns the text frames the server sends back until it
    /// closes (for tests of refusals: malformed, oversized or binary frames).
    pub async fn send_raw(&self, frame: Message) -> Result<Vec<String>, RpcError> {
        let mut ws = self.connect().await?;
        ws.send(frame)
            .await
            .map_err(|e| RpcError::Protocol(e.to_string()))?;
        let mut texts = Vec::new();
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            match tokio::time::timeout_at(deadline, ws.next()).await {
                Err(_) => return Err(RpcError::Timeout(self.timeout)),
                Ok(Some(Ok(Message::Text(t)))) => texts.push(t.as_str().to_string()),
                Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => return Ok(texts),
                Ok(Some(Ok(_))) => {}
            }
        }
    }
}

/// One simulated PC: its identity and the firmware model behind the rpc client.
#[derive(Clone)]
pub struct SimDevice {
    pub id: Identity,
    pub(crate) slot: Arc<DeviceSlot>,
    /// Reported trusted-root hashes.
    pub cert_hashes: Vec<String>,
    pub fault: RpcFault,
    /// The DNS suffix the client reports (rpc-go: AMT's or the OS's).
    pub fqdn: String,
}

impl SimDevice {
    /// A device fresh from the factory (pre-provisioning mode).
    pub fn unprovisioned(seed: u64, index: u64) -> SimDevice {
        let id = Identity::derive(seed, index);
        let mut model =
            DeviceModel::unprovisioned(false, Now::current().unix, lsa_credentials(&id));
        if let Some(r) = model.remote.as_mut() {
            r.trusted_hashes = default_cert_hashes();
        }
        SimDevice {
            id,
            slot: Arc::new(DeviceSlot::with_model(Arc::new(std::sync::Mutex::new(
                model,
            )))),
            cert_hashes: default_cert_hashes(),
            fault: RpcFault::None,
            fqdn: "sim.homeport.test".into(),
        }
    }

    /// Adds a root (DER) to the roots the firmware trusts and reports, as OEMs ship the
    /// vendors' provisioning roots.
    pub fn trust_root(&mut self, der: &[u8]) {
        let hash = sha256_hex(der);
        self.cert_hashes.push(hash.clone());
        if let Some(r) = self.slot.lock().remote.as_mut() {
            r.trusted_hashes.push(hash);
        }
    }

    /// From now on the firmware refuses AdminSetup (a fault for tests).
    pub fn refuse_admin_setup(&self) {
        if let Some(r) = self.slot.lock().remote.as_mut() {
            r.refuse_admin_setup = true;
        }
    }

    /// AMT's clock minus the host's, seconds; its host name; its wired settings
    /// (DHCP, IP sync, address).
    pub fn maintained_state(&self) -> (i64, Option<String>, (bool, bool, String)) {
        let m = self.slot.lock();
        m.remote
            .as_ref()
            .map_or((0, None, (true, false, String::new())), |r| {
                (
                    r.clock_offset,
                    r.hostname.clone(),
                    (r.wired.dhcp, r.wired.ip_sync, r.wired.ip.clone()),
                )
            })
    }

    /// Sets AMT's clock off by `seconds` (for a sync-time test).
    pub fn skew_clock(&self, seconds: i64) {
        if let Some(r) = self.slot.lock().remote.as_mut() {
            r.clock_offset = seconds;
        }
    }

    /// Wi-Fi: the profiles' (SSID, priority), local profile sync, the port's state.
    pub fn wifi(&self) -> (Vec<(String, u32)>, u32, u32) {
        let m = self.slot.lock();
        m.remote.as_ref().map_or((Vec::new(), 0, 3), |r| {
            (
                r.wifi
                    .iter()
                    .map(|p| (p.ssid.clone(), p.priority))
                    .collect(),
                r.wifi_local_sync,
                r.wifi_port_state,
            )
        })
    }

    /// From now on the firmware refuses SetAdminAclEntryEx (a fault for tests).
    pub fn refuse_password_change(&self) {
        if let Some(r) = self.slot.lock().remote.as_mut() {
            r.refuse_password_change = true;
        }
    }

    /// Whether SetMEBxPassword was applied.
    pub fn mebx_set(&self) -> bool {
        self.slot.lock().remote.as_ref().is_some_and(|r| r.mebx_set)
    }

    pub fn guid(&self) -> &str {
        &self.id.guid
    }

    /// 0 pre-provisioning, 1 client control mode, 2 admin control mode.
    pub fn control_mode(&self) -> u8 {
        self.slot.lock().control_mode
    }

    /// The ingress the device was told to dial: (address, port, user name).
    pub fn cira_target(&self) -> Option<(String, u16, String)> {
        let m = self.slot.lock();
        let s = m.remote.as_ref()?.servers.first()?;
        Some((s.address.clone(), s.port, s.username.clone()))
    }

    /// Policies the device holds (names) and whether it considers itself outside (it has
    /// environment-detection domains set).
    pub fn cira_policies(&self) -> (Vec<String>, bool) {
        let m = self.slot.lock();
        m.remote.as_ref().map_or((Vec::new(), false), |r| {
            (
                r.policies.iter().map(|p| p.name.clone()).collect(),
                !r.detection.is_empty(),
            )
        })
    }

    /// The redirection and consent state rps left: (KVM on, SOL+IDER state, OptInRequired).
    pub fn features(&self) -> (bool, u16, u32) {
        let m = self.slot.lock();
        (m.kvm_enabled != 3, m.redirection, m.optin.required)
    }

    /// Whether `password` is the device's admin password now (its stored HA1 matches).
    pub fn admin_password_is(&self, password: &str) -> bool {
        let m = self.slot.lock();
        let want = md5_hex(&format!("admin:{}:{password}", self.id.realm));
        m.credentials
            .as_ref()
            .is_some_and(|c| c.user == "admin" && c.ha1 == want)
    }

    /// The payload rpc-go builds from the local AMT (openamt-rps.md §1.4).
    fn payload(&self, password: &str) -> serde_json::Value {
        let mode = self.control_mode();
        let hashes = match self.fault {
            RpcFault::WrongHashes => vec!["00".repeat(32)],
            _ => self.cert_hashes.clone(),
        };
        serde_json::json!({
            "ver": AMT_VERSION,
            "build": AMT_BUILD,
            "sku": AMT_SKU,
            "features": "AMT Pro Corporate",
            "uuid": self.id.guid,
            "username": LSA_USER,
            "password": password,
            "currentMode": mode,
            "hostname": self.id.hostname,
            "fqdn": self.fqdn,
            "client": "RPC",
            "certHashes": hashes,
        })
    }

    /// Runs one rpc command (`activate --profile P`, `deactivate`, ...) to its result.
    /// `password`: the AMT password for an activated device; the LSA password otherwise.
    pub async fn rpc(
        &self,
        client: &RpcClient,
        command: &str,
        password: Option<&str>,
    ) -> Result<RpcOutcome, RpcError> {
        let limit = client.timeout;
        tokio::time::timeout(limit, self.rpc_inner(client, command, password))
            .await
            .map_err(|_| RpcError::Timeout(limit))?
    }

    async fn rpc_inner(
        &self,
        client: &RpcClient,
        command: &str,
        password: Option<&str>,
    ) -> Result<RpcOutcome, RpcError> {
        let mut ws = client.connect().await?;
        let lsa = lsa_password(&self.id);
        let password = password.unwrap_or(&lsa);
        let first = client.envelope(command, &self.payload(password).to_string().into_bytes());
        ws.send(Message::text(first.to_string()))
            .await
            .map_err(|e| RpcError::Protocol(e.to_string()))?;
        let mut exchanges = 0u32;
        loop {
            let msg = match ws.next().await {
                None | Some(Ok(Message::Close(_))) => return Err(RpcError::Closed),
                Some(Err(e)) => return Err(RpcError::Protocol(e.to_string())),
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(_)) => continue,
            };
            let env: serde_json::Value = serde_json::from_str(msg.as_str())
                .map_err(|e| RpcError::Protocol(format!("not JSON: {e}")))?;
            let method = env["method"].as_str().unwrap_or_default();
            match method {
                "wsman" => {
                    exchanges += 1;
                    if self.fault == RpcFault::DropAt(exchanges) {
                        let _ = ws.close(None).await;
                        return Err(RpcError::Dropped(exchanges));
                    }
                    if matches!(self.fault, RpcFault::StallFrom(n) if exchanges >= n) {
                        continue;
                    }
                    let request = B64
                        .decode(env["payload"].as_str().unwrap_or_default())
                        .map_err(|_| RpcError::Protocol("wsman payload is not base64".into()))?;
                    let answer = self.answer(&request)?;
                    if !client.latency.is_zero() {
                        tokio::time::sleep(client.latency).await;
                    }
                    let reply = client.envelope("response", &answer);
                    ws.send(Message::text(reply.to_string()))
                        .await
                        .map_err(|e| RpcError::Protocol(e.to_string()))?;
                }
                "heartbeat_request" => {
                    let mut echo = env.clone();
                    echo["method"] = "heartbeat_response".into();
                    echo["status"] = "success".into();
                    let _ = ws.send(Message::text(echo.to_string())).await;
                }
                "success" | "error" => {
                    let _ = ws.close(None).await;
                    return Ok(RpcOutcome {
                        ok: method == "success",
                        message: env["message"].as_str().unwrap_or_default().to_string(),
                        exchanges,
                    });
                }
                other => return Err(RpcError::Protocol(format!("unexpected method {other:?}"))),
            }
        }
    }

    /// The firmware's answer to one tunnelled HTTP request, as LMS would relay it.
    pub fn answer(&self, request: &[u8]) -> Result<Vec<u8>, RpcError> {
        let complete = homeport_http1::complete_request(request)
            .map_err(|e| RpcError::Protocol(format!("HTTP request: {e}")))?
            .ok_or_else(|| RpcError::Protocol("incomplete HTTP request".into()))?;
        let body = homeport_http1::body(request, &complete)
            .map_err(|e| RpcError::Protocol(format!("HTTP body: {e}")))?;
        let served = {
            let mut m = self.slot.lock();
            amt::serve(
                &self.id,
                &mut m,
                Fault::None,
                Now::current(),
                "127.0.0.1",
                &complete.head,
                &body,
            )
        };
        match served {
            Served::Reply { bytes, effect } => {
                if effect == Effect::Unprovisioned {
                    // Unprovisioned locally: the CIRA connection, if up, goes down.
                    self.slot
                        .disconnect
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                    self.slot.wake.notify_one();
                }
                Ok(bytes)
            }
            Served::Vanish => Err(RpcError::Protocol("firmware vanished".into())),
        }
    }
}

/// A provisioning certificate as a CA vendor would issue it, for tests and the bench: a root
/// (which simulated PCs can be told to trust), a leaf for `common_name` signed by it, and the
/// PKCS#12 file an operator uploads as a domain.
pub struct ProvisioningPki {
    pub root_der: Vec<u8>,
    pub leaf_der: Vec<u8>,
    pub key: openssl::pkey::PKey<openssl::pkey::Private>,
    /// Base64 of the PKCS#12 (leaf, key, root), encrypted with the given password.
    pub pfx_b64: String,
}

impl ProvisioningPki {
    pub fn generate(
        common_name: &str,
        password: &str,
    ) -> Result<ProvisioningPki, openssl::error::ErrorStack> {
        use openssl::asn1::Asn1Time;
        use openssl::bn::{BigNum, MsbOption};
        use openssl::hash::MessageDigest;
        use openssl::pkey::PKey;
        use openssl::rsa::Rsa;
        use openssl::x509::extension::{BasicConstraints, ExtendedKeyUsage};
        use openssl::x509::{X509NameBuilder, X509};
        let cert = |cn: &str,
                    key: &PKey<openssl::pkey::Private>,
                    issuer: Option<(&X509, &PKey<openssl::pkey::Private>)>| {
            let mut name = X509NameBuilder::new()?;
            name.append_entry_by_text("CN", cn)?;
            let name = name.build();
            let mut b = X509::builder()?;
            b.set_version(2)?;
            let mut serial = BigNum::new()?;
            serial.rand(64, MsbOption::MAYBE_ZERO, false)?;
            let serial = serial.to_asn1_integer()?;
            b.set_serial_number(&serial)?;
            b.set_subject_name(&name)?;
            b.set_pubkey(key)?;
            let (from, until) = (Asn1Time::days_from_now(0)?, Asn1Time::days_from_now(365)?);
            b.set_not_before(&from)?;
            b.set_not_after(&until)?;
            match issuer {
                None => {
                    b.set_issuer_name(&name)?;
                    b.append_extension(BasicConstraints::new().critical().ca().build()?)?;
                    b.sign(key, MessageDigest::sha256())?;
                }
                Some((ca, ca_key)) => {
                    b.set_issuer_name(ca.subject_name())?;
                    // AMT's provisioning certificates carry this OID (or serverAuth).
                    b.append_extension(
                        ExtendedKeyUsage::new()
                            .server_auth()
                            .other("2.16.840.1.113741.1.2.3")
                            .build()?,
                    )?;
                    b.sign(ca_key, MessageDigest::sha256())?;
                }
            }
            Ok::<X509, openssl::error::ErrorStack>(b.build())
        };
        let root_key = PKey::from_rsa(Rsa::generate(2048)?)?;
        let root = cert("Homeport Simulated Provisioning Root", &root_key, None)?;
        let key = PKey::from_rsa(Rsa::generate(2048)?)?;
        let leaf = cert(common_name, &key, Some((&root, &root_key)))?;
        let mut ca = openssl::stack::Stack::new()?;
        ca.push(root.clone())?;
        let pfx = openssl::pkcs12::Pkcs12::builder()
            .name("provisioning")
            .pkey(&key)
            .cert(&leaf)
            .ca(ca)
            .build2(password)?;
        Ok(ProvisioningPki {
            root_der: root.to_der()?,
            leaf_der: leaf.to_der()?,
            key,
            pfx_b64: B64.encode(pfx.to_der()?),
        })
    }
}
