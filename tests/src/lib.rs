//! Harness of the end-to-end tests: each test gets its own PostgreSQL database, NATS subject
//! prefix, secret file and certificates, against the real NATS and PostgreSQL of the machine.

pub mod audit;
pub mod browser;
pub mod command;
pub mod gateway;
pub mod rps;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, kv};
use futures_util::StreamExt;
use homeport_amt_sim::SimConfig;
use homeport_cira_ingress::{tls, Ingress, IngressConfig, IngressParts};
use homeport_contracts::{proto, Names};
use homeport_secrets::{DynSecretStore, LocalFileConfig, LocalFileStore};
use homeport_store::testing::TempDatabase;
use homeport_store::Store;
use prost::Message as _;

/// Polls `check` every 50 ms until it holds; fails the test naming `what` after `timeout`.
pub async fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Events stream limits of a test: small, so streams a failed test leaves behind reserve
/// little of the shared NATS server's storage.
pub fn test_stream_limits() -> homeport_contracts::events::StreamLimits {
    homeport_contracts::events::StreamLimits {
        max_bytes: 64 << 20,
        ..Default::default()
    }
}

/// NATS the tests use (`HOMEPORT_TEST_NATS_URL`, default the machine's).
pub fn nats_url() -> String {
    std::env::var("HOMEPORT_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// PostgreSQL admin URL the tests create databases with (`HOMEPORT_TEST_PG_URL`).
pub fn pg_admin_url() -> String {
    std::env::var("HOMEPORT_TEST_PG_URL")
        .unwrap_or_else(|_| homeport_store::testing::DEFAULT_ADMIN_URL.into())
}

pub struct TestEnv {
    pub label: String,
    pub names: Names,
    pub nats: async_nats::Client,
    pub js: jetstream::Context,
    pub store: Store,
    pub secrets: DynSecretStore,
    pub dir: PathBuf,
    /// Clients the services started by this environment use, by role (default: `nats`).
    pub role_nats: std::collections::HashMap<homeport_contracts::access::Role, async_nats::Client>,
    db: Option<TempDatabase>,
}

impl TestEnv {
    pub async fn new(label: &str) -> TestEnv {
        Self::with_nats(label, &nats_url()).await
    }

    /// Like [`TestEnv::new`], against the NATS server at `url`.
    pub async fn with_nats(label: &str, url: &str) -> TestEnv {
        let nats =
            homeport_runtime::connect_nats(url, &format!("test-{label}"), Duration::from_secs(10))
                .await
                .expect("NATS for tests (is it running? scripts/test.sh starts it)");
        let unique = format!("{label}{:08x}", fastrand::u32(..));
        Self::with_client(label, nats, &format!("t{unique}")).await
    }

    /// A test environment whose own NATS client (for setup and assertions) is `nats`, with
    /// subjects under `prefix`.
    pub async fn with_client(label: &str, nats: async_nats::Client, prefix: &str) -> TestEnv {
        let unique = format!("{label}{:08x}", fastrand::u32(..));
        let db = homeport_store::testing::temp_postgres(&pg_admin_url(), label)
            .await
            .expect("PostgreSQL for tests (is it running? scripts/test.sh starts it)");
        let store = Store::connect(&db.url)
            .await
            .expect("connect test database");
        let dir = std::env::temp_dir().join(format!("homeport-test-{unique}"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let secrets: DynSecretStore = Arc::new(
            LocalFileStore::open(LocalFileConfig::new(
                dir.join("secrets.enc"),
                dir.join("secrets.key"),
            ))
            .await
            .expect("local secret store"),
        );
        TestEnv {
            label: label.to_string(),
            names: Names::new(prefix),
            role_nats: std::collections::HashMap::new(),
            js: jetstream::new(nats.clone()),
            nats,
            store,
            secrets,
            dir,
            db: Some(db),
        }
    }

    /// URL of this test's own database.
    /// The NATS client a service of `role` started by this environment uses.
    pub fn nats_as(&self, role: homeport_contracts::access::Role) -> async_nats::Client {
        self.role_nats.get(&role).unwrap_or(&self.nats).clone()
    }

    pub fn database_url(&self) -> &str {
        self.db.as_ref().map(|d| d.url.as_str()).unwrap_or_default()
    }

    /// Settings for fast tests: short keep-alive and timeouts.
    pub fn ingress_config() -> IngressConfig {
        IngressConfig {
            keepalive_interval_secs: 2,
            idle_timeout_secs: 6,
            handshake_timeout_secs: 10,
            tunnel_timeout_ms: 3_000,
            drain_grace_secs: 5,
            heartbeat_interval_secs: 1,
            auth_event_interval_secs: 2,
            // Whole fleets dial from 127.0.0.1 at once here; the rate limit has its own tests.
            max_connections_per_source_per_sec: 10_000,
            ..IngressConfig::default()
        }
    }

    /// Starts an ingress node on a loopback port.
    pub async fn start_ingress(&self, node: &str, config: IngressConfig) -> Ingress {
        let bundle = tls::load_or_generate(&self.secrets, "localhost", &[])
            .await
            .expect("certificates");
        let acceptor = tls::acceptor(config.tls_profile, &bundle).expect("acceptor");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        Ingress::start(
            IngressParts {
                config,
                node_id: node.to_string(),
                names: self.names.clone(),
                nats: self.nats_as(homeport_contracts::access::Role::Ingress),
                store: self.store.clone(),
                secrets: self.secrets.clone(),
                tls: acceptor,
                stream_limits: crate::test_stream_limits(),
            },
            listener,
        )
        .await
        .expect("ingress starts")
    }

    /// A simulator configuration for `devices` devices of `seed`, enrolled in `tenant`.
    pub async fn enrolled_fleet(
        &self,
        server: SocketAddr,
        devices: u64,
        seed: u64,
        tenant: &str,
    ) -> SimConfig {
        let mut cfg = SimConfig::new(server, devices);
        cfg.seed = seed;
        cfg.reconnect_min = Duration::from_millis(200);
        cfg.reconnect_max = Duration::from_secs(2);
        let ids: Vec<_> = cfg.identities().collect();
        homeport_amt_sim::enroll(&self.store, &self.secrets, &ids, tenant)
            .await
            .expect("enroll");
        cfg
    }

    /// Starts `cfg`'s devices and waits until all are connected and present.
    pub async fn start_connected(
        &self,
        cfg: SimConfig,
        timeout: Duration,
    ) -> homeport_amt_sim::Fleet {
        let n = cfg.devices;
        let fleet = homeport_amt_sim::Fleet::start(cfg).expect("fleet starts");
        assert_eq!(
            fleet.wait_connected(n, timeout).await,
            n,
            "devices connected"
        );
        self.wait_presence("every device present", timeout, |p| p.len() as u64 >= n)
            .await;
        fleet
    }

    /// Asserts that the device answers through the tunnel (with AMT's digest challenge).
    pub async fn assert_reachable(&self, guid: &str) {
        let reply = self
            .tunnel()
            .await
            .request(
                guid,
                None,
                general_settings_request(guid, None).into(),
                Duration::from_secs(10),
            )
            .await
            .expect("tunnel request");
        assert!(
            reply.starts_with(b"HTTP/1.1 401"),
            "{}",
            String::from_utf8_lossy(&reply)
        );
    }

    /// A tunnel client of this test's deployment.
    pub async fn tunnel(&self) -> homeport_contracts::tunnel::TunnelClient {
        homeport_contracts::tunnel::TunnelClient::new(self.nats.clone(), self.names.clone(), 1)
            .await
            .expect("tunnel client")
    }

    pub async fn presence(&self) -> kv::Store {
        homeport_contracts::presence::presence_bucket(&self.js, &self.names, 1)
            .await
            .expect("presence bucket")
    }

    /// Presence entries right now: guid → decoded presence.
    pub async fn presence_entries(&self) -> Vec<(String, homeport_contracts::presence::Presence)> {
        let kv = self.presence().await;
        let mut out = Vec::new();
        let Ok(mut keys) = kv.keys().await else {
            return out;
        };
        while let Some(Ok(k)) = keys.next().await {
            if let Ok(Some(v)) = kv.get(&k).await {
                if let Ok(p) = serde_json::from_slice(&v) {
                    out.push((k, p));
                }
            }
        }
        out
    }

    /// Waits until `pred` holds for the presence entries, or panics after `timeout`.
    pub async fn wait_presence<F>(&self, what: &str, timeout: Duration, pred: F)
    where
        F: Fn(&[(String, homeport_contracts::presence::Presence)]) -> bool,
    {
        let deadline = Instant::now() + timeout;
        loop {
            let entries = self.presence_entries().await;
            if pred(&entries) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for presence: {what}; have {} entries",
                entries.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every event in the stream so far, decoded, in order.
    pub async fn events(&self) -> Vec<(String, proto::Event)> {
        let Ok(stream) = self.js.get_stream(self.names.events_stream()).await else {
            return Vec::new();
        };
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                deliver_policy: consumer::DeliverPolicy::All,
                ack_policy: consumer::AckPolicy::None,
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .expect("consumer");
        let mut out = Vec::new();
        loop {
            let mut batch = consumer
                .fetch()
                .max_messages(1000)
                .expires(Duration::from_millis(300))
                .messages()
                .await
                .expect("fetch");
            let mut n = 0;
            while let Some(Ok(m)) = batch.next().await {
                n += 1;
                let ev = proto::Event::decode(m.payload.clone()).expect("events decode");
                out.push((m.subject.to_string(), ev));
            }
            if n == 0 {
                return out;
            }
        }
    }

    /// Waits until at least `n` events of `kind` are in the stream; returns them.
    pub async fn wait_events(
        &self,
        kind: &str,
        n: usize,
        timeout: Duration,
    ) -> Vec<(String, proto::Event)> {
        let deadline = Instant::now() + timeout;
        loop {
            let found: Vec<_> = self
                .events()
                .await
                .into_iter()
                .filter(|(_, e)| e.kind == kind)
                .collect();
            if found.len() >= n {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {n} {kind} events; have {}",
                found.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Removes the test's stream, buckets, database and files.
    pub async fn cleanup(mut self) {
        let _ = self.js.delete_stream(self.names.events_stream()).await;
        let _ = self.js.delete_key_value(self.names.presence_bucket()).await;
        let _ = self.js.delete_key_value(self.names.nodes_bucket()).await;
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(db) = self.db.take() {
            let _ = db.drop_db().await;
        }
    }
}

/// A test that panics before `cleanup` still drops its database.
impl Drop for TestEnv {
    fn drop(&mut self) {
        if let Some(db) = self.db.take() {
            let _ = std::fs::remove_dir_all(&self.dir);
            // Not inside the test's runtime (it may be gone): a thread with its own.
            let _ = std::thread::spawn(move || {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    let _ = rt.block_on(db.drop_db());
                }
            })
            .join();
        }
    }
}

/// An HTTP request whose body never arrives in full: a device waits for the rest forever.
pub const INCOMPLETE_REQUEST: &[u8] =
    b"POST /wsman HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc";

/// A WS-Man Get of AMT_GeneralSettings, optionally with a digest Authorization header.
pub fn general_settings_request(guid: &str, authorization: Option<&str>) -> Vec<u8> {
    let body = r#"<?xml version="1.0" encoding="utf-8"?><Envelope xmlns="http://www.w3.org/2003/05/soap-envelope" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"><Header><a:Action>http://schemas.xmlsoap.org/ws/2004/09/transfer/Get</a:Action><a:To>/wsman</a:To><w:ResourceURI>http://intel.com/wbem/wscim/1/amt-schema/1/AMT_GeneralSettings</w:ResourceURI><a:MessageID>1</a:MessageID><a:ReplyTo><a:Address>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:Address></a:ReplyTo><w:OperationTimeout>PT60S</w:OperationTimeout></Header><Body></Body></Envelope>"#;
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    format!(
        "POST /wsman HTTP/1.1\r\n{auth}Host: {guid}:16992\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The digest Authorization header MPS would send for a challenge.
pub fn digest_authorization(realm: &str, nonce: &str, password: &str, nc: u32) -> String {
    let md5 = |s: String| {
        openssl::hash::hash(openssl::hash::MessageDigest::md5(), s.as_bytes())
            .map(|d| d.iter().map(|b| format!("{b:02x}")).collect::<String>())
            .unwrap_or_default()
    };
    let ha1 = md5(format!("admin:{realm}:{password}"));
    let ha2 = md5("POST:/wsman".to_string());
    let nc = format!("{nc:08x}");
    let cnonce = "k3j4h5";
    let response = md5(format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"));
    format!("Digest username=\"admin\",realm=\"{realm}\",nonce=\"{nonce}\",uri=\"/wsman\",qop=\"auth\",response=\"{response}\",nc=\"{nc}\",cnonce=\"{cnonce}\"")
}

/// Reads `name="value"` from a WWW-Authenticate header.
pub fn challenge_param(header: &str, name: &str) -> Option<String> {
    let start = header.find(&format!("{name}=\""))? + name.len() + 2;
    let end = header[start..].find('"')? + start;
    Some(header[start..end].to_string())
}

/// A NATS server of the test's own (JetStream on a free loopback port, data in a temp dir),
/// which the test can stop and start again to play an outage. Killed when dropped.
pub struct PrivateNats {
    child: Option<std::process::Child>,
    port: u16,
    dir: PathBuf,
}

impl PrivateNats {
    pub fn start() -> PrivateNats {
        Self::start_with("")
    }

    /// A private server whose configuration file ends with `config` (an `authorization`
    /// block, say); its log goes to `log_path()`.
    pub fn start_with(config: &str) -> PrivateNats {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let dir =
            std::env::temp_dir().join(format!("homeport-nats-{port}-{:x}", fastrand::u32(..)));
        std::fs::create_dir_all(&dir).expect("nats dir");
        let conf = format!(
            "listen: \"127.0.0.1:{port}\"\njetstream {{ store_dir: \"{}\" }}\n{config}",
            dir.join("js").display()
        );
        std::fs::write(dir.join("nats.conf"), conf).expect("nats.conf");
        let mut nats = PrivateNats {
            child: None,
            port,
            dir,
        };
        nats.restart();
        nats
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("nats.log")
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server at once (no goodbye to clients).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server (again) on the same port and data directory.
    pub fn restart(&mut self) {
        self.stop();
        let child = std::process::Command::new("nats-server")
            .arg("-c")
            .arg(self.dir.join("nats.conf"))
            .arg("-l")
            .arg(self.log_path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server on PATH (scripts/ensure-services.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "private nats-server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Helpers of the tests that run the service binaries as separate processes.
pub mod procs {
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    const WAIT: Duration = Duration::from_secs(60);

    /// A workspace binary next to this test's own (scripts/test.sh builds them all first).
    pub fn bin(name: &str) -> PathBuf {
        let exe = std::env::current_exe().expect("test executable");
        let path = exe
            .parent()
            .and_then(|deps| deps.parent())
            .expect("target directory")
            .join(name);
        assert!(
            path.exists(),
            "{} is not built: run `cargo build --workspace --bins` first (scripts/test.sh does)",
            path.display()
        );
        path
    }

    /// A gRPC channel to a service process listening on loopback `port`.
    pub async fn grpc_channel(port: u16) -> tonic::transport::Channel {
        tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
            .expect("uri")
            .connect()
            .await
            .expect("gRPC connect")
    }

    pub fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port")
    }

    /// Ready by the image's own health check (scripts/healthcheck.sh: GET /readyz over bash).
    pub async fn wait_ready(what: &str, health: u16, child: &mut tokio::process::Child) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/healthcheck.sh");
        let deadline = Instant::now() + WAIT;
        loop {
            let ok = tokio::process::Command::new("bash")
                .arg(script)
                .arg(health.to_string())
                .stderr(std::process::Stdio::null())
                .status()
                .await
                .expect("bash")
                .success();
            if ok {
                return;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{what} exited before it was ready: {status}");
            }
            assert!(Instant::now() < deadline, "{what} not ready");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
