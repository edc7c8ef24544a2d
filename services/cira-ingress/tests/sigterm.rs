//! The `cira-ingress` binary drains cleanly on SIGTERM: devices get an APF DISCONNECT,
//! presence is released, `disconnected` events are published, and the process exits 0.

use std::process::Stdio;
use std::time::{Duration, Instant};

use homeport_amt_sim::Fleet;
use homeport_contracts::proto::event::Payload;
use homeport_tests::TestEnv;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

async fn ready(health: u16) -> bool {
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", health)).await else {
        return false;
    };
    let _ = s
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out.starts_with("HTTP/1.1 200")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_sessions_and_exits_cleanly() {
    let env = TestEnv::new("sigterm").await;
    homeport_cira_ingress::tls::load_or_generate(&env.secrets, "localhost", &[])
        .await
        .unwrap();
    let (cira, health) = (free_port(), free_port());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_cira-ingress"))
        .env("HOMEPORT_NATS_URL", homeport_tests::nats_url())
        .env("HOMEPORT_SUBJECT_PREFIX", env.names.prefix())
        .env("HOMEPORT_DATABASE_URL", env.database_url())
        .env("HOMEPORT_SECRETS_FILE", env.dir.join("secrets.enc"))
        .env("HOMEPORT_SECRETS_KEY_FILE", env.dir.join("secrets.key"))
        .env("HOMEPORT_CIRA_LISTEN", format!("127.0.0.1:{cira}"))
        .env("HOMEPORT_HEALTH_LISTEN", format!("127.0.0.1:{health}"))
        .env("HOMEPORT_NODE_ID", "sigterm-node")
        .env("HOMEPORT_DRAIN_GRACE", "5")
        .env("HOMEPORT_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready(health).await {
        assert!(Instant::now() < deadline, "ingress not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut cfg = env
        .enrolled_fleet(format!("127.0.0.1:{cira}").parse().unwrap(), 5, 21, "acme")
        .await;
    cfg.reconnect_min = Duration::from_secs(60);
    cfg.reconnect_max = Duration::from_secs(60);
    let fleet = Fleet::start(cfg).unwrap();
    assert_eq!(fleet.wait_connected(5, Duration::from_secs(30)).await, 5);
    env.wait_presence("5 devices", Duration::from_secs(30), |p| p.len() == 5)
        .await;

    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("exits within the grace period")
        .unwrap();
    assert!(exit.success(), "exit status {exit:?}");

    assert!(env.presence_entries().await.is_empty(), "presence released");
    let gone = env
        .wait_events("disconnected", 5, Duration::from_secs(10))
        .await;
    assert!(gone
        .iter()
        .all(|(_, e)| matches!(&e.payload, Some(Payload::DeviceDisconnected(d)) if d.reason == "drain" && d.node == "sigterm-node")));
    assert_eq!(
        fleet
            .stats()
            .server_disconnects
            .load(std::sync::atomic::Ordering::Relaxed),
        5,
        "every device got an APF DISCONNECT"
    );
    fleet.stop().await;
    env.cleanup().await;
}
