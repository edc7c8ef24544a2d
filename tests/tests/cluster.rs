//! A cluster on one machine: two ingress nodes, two mps-command replicas and two audit
//! workers, each its own process started from the environment the deployment manifests set
//! (NKey files, a database URL file, the shared secret store, health and gRPC listeners),
//! against one NATS (with the shipped users and permissions) and one PostgreSQL, devices
//! behind an L4 balancer as in front of the ingress pods. One ingress node is killed: its
//! devices reconnect through the balancer to the other, answer commands on both API replicas
//! again, and the audit trail holds every event of the stream exactly once. Every metric the
//! shipped dashboards and alert rules ask for is in the processes' real `/metrics`.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use homeport_contracts::access::{self, Credential, Role};
use homeport_contracts::proto::event::Payload;
use homeport_contracts::Names;
use homeport_proto::device::v1 as pb;
use homeport_proto::device::v1::device_service_client::DeviceServiceClient;
use homeport_runtime::{connect_nats_with, NatsAuth, NatsCredential};
use homeport_secrets::SecretString;
use homeport_tests::command::{Bearer, CommandHandle, Devices, TEST_JWT_SECRET};
use homeport_tests::procs::{bin, free_port, grpc_channel, wait_ready};
use homeport_tests::*;
use tokio::process::{Child, Command};

const DEVICES: u64 = 20;
const WAIT: Duration = Duration::from_secs(60);

/// An L4 balancer like the one in front of the ingress pods: each new connection goes to the
/// next backend that accepts it.
async fn balancer(backends: Vec<SocketAddr>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let (backends, next) = (backends.clone(), next.clone());
            tokio::spawn(async move {
                for _ in 0..backends.len() {
                    let target = backends[next.fetch_add(1, Ordering::Relaxed) % backends.len()];
                    let connect = tokio::net::TcpStream::connect(target);
                    if let Ok(Ok(mut outbound)) =
                        tokio::time::timeout(Duration::from_secs(1), connect).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        return;
                    }
                }
            });
        }
    });
    addr
}

struct Cluster {
    keys: PathBuf,
    common: HashMap<&'static str, String>,
}

impl Cluster {
    /// Starts `binary` as `role` with the common environment plus `extra`.
    fn spawn(&self, binary: &str, role: &str, extra: &[(&str, String)]) -> Child {
        self.spawn_logging(binary, role, extra, std::process::Stdio::null())
    }

    fn spawn_logging(
        &self,
        binary: &str,
        role: &str,
        extra: &[(&str, String)],
        log: std::process::Stdio,
    ) -> Child {
        Command::new(bin(binary))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.common.iter().map(|(k, v)| (*k, v.as_str())))
            .env(
                "HOMEPORT_NATS_NKEY_FILE",
                self.keys.join(format!("{role}.nk")),
            )
            .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }
}

async fn devices_client(port: u16) -> Devices {
    let channel = grpc_channel(port).await;
    let token = CommandHandle::token("acme");
    DeviceServiceClient::with_interceptor(channel, Bearer::new(Some(&token)))
}

/// Power state of every device, alternating between the API replicas; the failures.
async fn query_all(apis: &mut [Devices], guids: &[String]) -> Vec<String> {
    let mut failed = Vec::new();
    for (i, guid) in guids.iter().enumerate() {
        let api = &mut apis[i % apis.len()];
        let request = pb::DeviceRef { guid: guid.clone() };
        if let Err(e) = api.get_power_state(request).await {
            failed.push(format!("{guid}: {}", e.message()));
        }
    }
    failed
}

async fn nodes_holding(env: &TestEnv) -> HashMap<String, usize> {
    let mut held = HashMap::new();
    for (_, p) in env.presence_entries().await {
        *held.entry(p.node).or_insert(0) += 1;
    }
    held
}

async fn scrape_metrics(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// The `homeport_*` metric names a rule file or dashboard refers to.
fn metric_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("homeport_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

fn write_secret(dir: &Path, name: &str, content: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_ingress_node_loses_no_device_command_or_audit_event() {
    // NATS with the shipped users and permissions; keys made as operators make them.
    let names = Names::new("hp");
    let keys = std::env::temp_dir().join(format!("homeport-cluster-{:08x}", fastrand::u32(..)));
    let made = std::process::Command::new(bin("homeportctl"))
        .args(["nats-keys", "--out"])
        .arg(&keys)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let public: HashMap<String, String> = std::fs::read_to_string(keys.join("nats-users.env"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let users: Vec<_> = Role::ALL
        .into_iter()
        .map(|r| {
            (
                r,
                Credential::NKey(public[&access::nkey_variable(r)].clone()),
            )
        })
        .collect();
    let admin = r#"{ user: "test", password: "test-admin-password" }"#.to_string();
    let nats = PrivateNats::start_with(&access::authorization_block(&names, &users, &[admin]));
    let auth = NatsAuth {
        credential: NatsCredential::UserPassword(
            "test".into(),
            SecretString::new("test-admin-password"),
        ),
        ..Default::default()
    };
    let client = connect_nats_with(&nats.url(), "test", Duration::from_secs(10), &auth)
        .await
        .unwrap();
    let env = TestEnv::with_client("cluster", client, names.prefix()).await;
    homeport_cira_ingress::tls::load_or_generate(&env.secrets, "localhost", &[])
        .await
        .unwrap();

    // The environment the manifests set (deploy/k8s/base, compose/): secrets as files.
    let common = HashMap::from([
        ("HOMEPORT_NATS_URL", nats.url()),
        ("HOMEPORT_SUBJECT_PREFIX", names.prefix().to_string()),
        (
            "HOMEPORT_DATABASE_URL_FILE",
            write_secret(&keys, "database-url", env.database_url().as_bytes()),
        ),
        ("HOMEPORT_SECRETS", "local".into()),
        (
            "HOMEPORT_SECRETS_FILE",
            env.dir.join("secrets.enc").display().to_string(),
        ),
        (
            "HOMEPORT_SECRETS_KEY_FILE",
            env.dir.join("secrets.key").display().to_string(),
        ),
        ("HOMEPORT_EVENTS_MAX_BYTES", (64 << 20).to_string()),
        ("HOMEPORT_LOG", "warn".into()),
    ]);
    let jwt = write_secret(&keys, "jwt-hs256.key", TEST_JWT_SECRET);
    let cluster = Cluster {
        keys: keys.clone(),
        common,
    };

    let mut ingress = Vec::new();
    let mut cira = Vec::new();
    // Health and metrics ports of the processes that stay up.
    let mut scraped = Vec::new();
    // Node B logs JSON lines (HOMEPORT_LOG_FORMAT=json), checked at the end.
    let json_log = keys.join("node-b.log");
    for node in ["node-a", "node-b"] {
        let (port, health) = (free_port(), free_port());
        let log = if node == "node-b" {
            std::process::Stdio::from(std::fs::File::create(&json_log).unwrap())
        } else {
            std::process::Stdio::null()
        };
        let format = if node == "node-b" { "json" } else { "text" };
        let mut child = cluster.spawn_logging(
            "cira-ingress",
            "ingress",
            &[
                ("HOMEPORT_LOG_FORMAT", format.into()),
                ("HOMEPORT_LOG", "info".into()),
                ("HOMEPORT_CIRA_LISTEN", format!("127.0.0.1:{port}")),
                ("HOMEPORT_HEALTH_LISTEN", format!("127.0.0.1:{health}")),
                ("HOMEPORT_NODE_ID", node.into()),
                ("HOMEPORT_HEARTBEAT_INTERVAL", "1".into()),
                ("HOMEPORT_DRAIN_GRACE", "5".into()),
                // Every simulated device dials from 127.0.0.1.
                ("HOMEPORT_MAX_CONNECTIONS_PER_SOURCE_PER_SEC", "1000".into()),
            ],
            log,
        );
        wait_ready(node, health, &mut child).await;
        if node == "node-b" {
            scraped.push(health);
        }
        ingress.push(child);
        cira.push(format!("127.0.0.1:{port}").parse().unwrap());
    }
    let mut workers = Vec::new();
    let mut api_ports = Vec::new();
    for (binary, role) in [("mps-command", "command"), ("audit", "audit")] {
        for _ in 0..2 {
            let (grpc, health) = (free_port(), free_port());
            let mut child = cluster.spawn(
                binary,
                role,
                &[
                    ("HOMEPORT_GRPC_LISTEN", format!("127.0.0.1:{grpc}")),
                    ("HOMEPORT_HEALTH_LISTEN", format!("127.0.0.1:{health}")),
                    ("HOMEPORT_JWT_HS256_SECRET_FILE", jwt.clone()),
                ],
            );
            wait_ready(binary, health, &mut child).await;
            scraped.push(health);
            workers.push(child);
            if binary == "mps-command" {
                api_ports.push(grpc);
            }
        }
    }

    // The MQTT bridge (against the machine's Mosquitto), for the metrics check at the end.
    let health = free_port();
    let mut bridge = cluster.spawn(
        "mqtt-bridge",
        "bridge",
        &[
            ("HOMEPORT_HEALTH_LISTEN", format!("127.0.0.1:{health}")),
            ("HOMEPORT_MQTT_ADDRESS", "127.0.0.1:1883".into()),
        ],
    );
    wait_ready("mqtt-bridge", health, &mut bridge).await;
    scraped.push(health);
    workers.push(bridge);

    // rps with its own NATS user, for the metrics check at the end.
    let health = free_port();
    let mut rps = cluster.spawn(
        "rps",
        "rps",
        &[
            ("HOMEPORT_HEALTH_LISTEN", format!("127.0.0.1:{health}")),
            ("HOMEPORT_RPS_LISTEN", format!("127.0.0.1:{}", free_port())),
            ("HOMEPORT_GRPC_LISTEN", format!("127.0.0.1:{}", free_port())),
            ("HOMEPORT_JWT_HS256_SECRET_FILE", jwt.clone()),
        ],
    );
    wait_ready("rps", health, &mut rps).await;
    scraped.push(health);
    workers.push(rps);

    // The REST gateway in front of the first device API, for the metrics check at the end.
    let health = free_port();
    let mut gateway = cluster.spawn(
        "gateway",
        "gateway",
        &[
            ("HOMEPORT_HEALTH_LISTEN", format!("127.0.0.1:{health}")),
            (
                "HOMEPORT_GATEWAY_LISTEN",
                format!("127.0.0.1:{}", free_port()),
            ),
            (
                "HOMEPORT_DEVICE_API_URL",
                format!("http://127.0.0.1:{}", api_ports[0]),
            ),
            ("HOMEPORT_JWT_HS256_SECRET_FILE", jwt.clone()),
        ],
    );
    wait_ready("gateway", health, &mut gateway).await;
    scraped.push(health);
    workers.push(gateway);

    // The fleet dials the balancer; both nodes take a share.
    let lb = balancer(cira).await;
    let cfg = env.enrolled_fleet(lb, DEVICES, 61, "acme").await;
    let guids: Vec<String> = cfg.identities().map(|i| i.guid.clone()).collect();
    let fleet = env.start_connected(cfg, WAIT).await;
    let held = nodes_holding(&env).await;
    assert!(
        held.get("node-a").is_some_and(|n| *n > 0) && held.get("node-b").is_some_and(|n| *n > 0),
        "both nodes hold devices: {held:?}"
    );
    let mut apis = Vec::new();
    for port in &api_ports {
        apis.push(devices_client(*port).await);
    }
    assert_eq!(query_all(&mut apis, &guids).await, Vec::<String>::new());

    // Node A dies without a goodbye; the sessions it held:
    let lost = held["node-a"];
    let lost_sessions: Vec<(String, String)> = env
        .presence_entries()
        .await
        .into_iter()
        .filter(|(_, p)| p.node == "node-a")
        .map(|(guid, p)| (guid, p.session))
        .collect();
    assert_eq!(lost_sessions.len(), lost);
    ingress[0].start_kill().unwrap();
    let _ = ingress[0].wait().await;
    env.wait_presence("every device on node-b", WAIT, |entries| {
        entries.len() as u64 == DEVICES && entries.iter().all(|(_, p)| p.node == "node-b")
    })
    .await;
    assert!(fleet.wait_connected(DEVICES, WAIT).await >= DEVICES);
    // Every device answers again, through both API replicas (a reconnecting device may still
    // be finishing its login: give the retries a little time).
    let deadline = Instant::now() + WAIT;
    loop {
        let failed = query_all(&mut apis, &guids).await;
        if failed.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "after the node loss: {failed:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The audit trail holds every event of the stream, once: the connects on both nodes, the
    // node-b reconnects of node-a's {lost} devices and every command.
    let mut stream = env.js.get_stream(names.events_stream()).await.unwrap();
    let deadline = Instant::now() + WAIT;
    let (published, stored) = loop {
        let published = stream.info().await.unwrap().state.messages;
        let stored = env.store.count_audit_events().await.unwrap();
        if stored >= published || Instant::now() > deadline {
            break (published, stored);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(stored, published, "audit rows vs events in the stream");
    let events = env.events().await;
    let connects = events.iter().filter(|(_, e)| e.kind == "connected").count() as u64;
    // Each of node A's sessions has its one `disconnected` (node-lost), published by the
    // device's next session or a reaper, whichever saw it first.
    for (guid, session) in &lost_sessions {
        let told: Vec<_> = events
            .iter()
            .filter_map(|(_, e)| match &e.payload {
                Some(Payload::DeviceDisconnected(d))
                    if e.device_guid == *guid && d.session == *session =>
                {
                    Some(d)
                }
                _ => None,
            })
            .collect();
        assert_eq!(told.len(), 1, "{guid}: {told:?}");
        assert_eq!(
            (told[0].node.as_str(), told[0].reason.as_str()),
            ("node-a", "node-lost")
        );
    }
    assert!(
        connects >= DEVICES + lost as u64,
        "{connects} connects for {DEVICES} devices and {lost} reconnects"
    );
    assert!(
        published >= connects + lost as u64 + 2 * DEVICES,
        "commands are events too"
    );

    // What the dashboards and alert rules ask Prometheus for is what the services export.
    let mut exported = std::collections::HashSet::new();
    let mut expiry = None;
    for port in scraped {
        for line in scrape_metrics(port).await.lines() {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let name = line
                .split(['{', ' '])
                .next()
                .unwrap_or_default()
                .to_string();
            if name == "homeport_cira_tls_certificate_expiry_timestamp_seconds" {
                expiry = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
            }
            exported.insert(name);
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        expiry.is_some_and(|e| e > now + 86_400.0),
        "the certificate's expiry is exported: {expiry:?}"
    );
    let observability = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/observability/");
    let mut asked = vec![std::fs::read_to_string(format!("{observability}alerts.yml")).unwrap()];
    for board in [
        "fleet",
        "ingress",
        "commands",
        "audit",
        "provisioning",
        "gateway",
    ] {
        let path = format!("{observability}grafana/dashboards/{board}.json");
        let text = std::fs::read_to_string(&path).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
        assert!(
            json["panels"].as_array().is_some_and(|p| !p.is_empty()),
            "{path}"
        );
        asked.push(text);
    }
    let mut missing = Vec::new();
    let mut checked = 0;
    for text in &asked {
        for name in metric_names(text) {
            checked += 1;
            if !exported.contains(&name) {
                missing.push(name);
            }
        }
    }
    missing.sort();
    missing.dedup();
    assert!(checked > 30, "only {checked} metric references found");
    assert_eq!(missing, Vec::<String>::new(), "asked for but not exported");

    // Every line node B logged is a JSON object with its time and level.
    let lines: Vec<String> = std::fs::read_to_string(&json_log)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(!lines.is_empty(), "node-b logged nothing");
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
        assert!(
            v["timestamp"].is_string() && v["level"].is_string() && v["message"].is_string(),
            "{line}"
        );
    }

    fleet.stop().await;
    for mut child in workers.into_iter().chain(ingress) {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    let _ = std::fs::remove_dir_all(&keys);
    env.cleanup().await;
}
