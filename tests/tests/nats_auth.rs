//! Every service signs in to NATS as its own user with only the permissions it needs: the
//! whole pipeline works on a NATS that enforces them, and each user is refused what it must
//! not do (tested by delivery, not by error messages).

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::time::Duration;

use futures_util::StreamExt;
use homeport_contracts::access::{self, Credential, Role};
use homeport_contracts::Names;
use homeport_proto::device::v1 as pb;
use homeport_runtime::{connect_nats_with, NatsAuth, NatsCredential};
use homeport_secrets::SecretString;
use homeport_tests::command::command_config;
use homeport_tests::*;

const WAIT: Duration = Duration::from_secs(30);

async fn connect(url: &str, role: Option<Role>, credential: NatsCredential) -> async_nats::Client {
    let auth = NatsAuth {
        role,
        credential,
        ..Default::default()
    };
    connect_nats_with(url, "test", Duration::from_secs(10), &auth)
        .await
        .unwrap()
}

/// Whether a message `from` publishes on `subject` reaches a subscriber of `to`.
async fn reaches(from: &async_nats::Client, to: &async_nats::Client, subject: &str) -> bool {
    let mut sub = to.subscribe(subject.to_string()).await.unwrap();
    to.flush().await.unwrap();
    // A refused subscription is answered with an error shortly after: give it the time.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = from.publish(subject.to_string(), "probe".into()).await;
    let _ = from.flush().await;
    tokio::time::timeout(Duration::from_millis(700), sub.next())
        .await
        .ok()
        .flatten()
        .is_some()
}

fn violations(server: &PrivateNats) -> Vec<String> {
    std::fs::read_to_string(server.log_path())
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("Violation"))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_works_with_only_its_permissions_and_nothing_more() {
    let names = Names::new("hp");
    let pairs: Vec<(Role, nkeys::KeyPair)> = Role::ALL
        .into_iter()
        .map(|r| (r, nkeys::KeyPair::new_user()))
        .collect();
    let users: Vec<_> = pairs
        .iter()
        .map(|(r, k)| (*r, Credential::NKey(k.public_key())))
        .collect();
    let admin = r#"{ user: "test", password: "test-admin-password" }"#.to_string();
    let server = PrivateNats::start_with(&access::authorization_block(&names, &users, &[admin]));
    let url = server.url();
    // Strangers are refused.
    assert!(
        homeport_runtime::connect_nats(&url, "anonymous", Duration::from_secs(2))
            .await
            .is_err(),
        "anonymous connection accepted"
    );
    let admin = connect(
        &url,
        None,
        NatsCredential::UserPassword("test".into(), SecretString::new("test-admin-password")),
    )
    .await;
    let mut env = TestEnv::with_client("natsauth", admin.clone(), "hp").await;
    for (role, pair) in &pairs {
        let seed = SecretString::new(pair.seed().unwrap());
        let client = connect(&url, Some(*role), NatsCredential::NKeySeed(seed)).await;
        env.role_nats.insert(*role, client);
    }

    // The pipeline, each service as its own user.
    let ingress = env.start_ingress("node-a", TestEnv::ingress_config()).await;
    let audit = env.start_audit().await;
    let cmd = env
        .start_command(command_config(Duration::from_secs(5)))
        .await;
    let mut cfg = env
        .enrolled_fleet(ingress.local_addr(), 2, 51, "acme")
        .await;
    cfg.reconnect_min = Duration::from_secs(60);
    cfg.reconnect_max = Duration::from_secs(60);
    let fleet = env.start_connected(cfg.clone(), WAIT).await;
    let guid = fleet.identities()[0].guid.clone();
    let mut api = cmd.devices("acme").await;
    let state = api
        .get_power_state(pb::DeviceRef { guid: guid.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state.power_state, 2);
    wait_until_stored(&env, 3).await;
    // The same devices connect to node-b: node-b asks node-a to close their old sessions
    // (ingress to ingress) and records them.
    let b = env.start_ingress("node-b", TestEnv::ingress_config()).await;
    let mut again = cfg.clone();
    again.server = b.local_addr();
    let moved = homeport_amt_sim::Fleet::start(again).unwrap();
    assert_eq!(moved.wait_connected(2, WAIT).await, 2);
    env.wait_presence("devices moved to node-b", WAIT, |p| {
        p.len() == 2 && p.iter().all(|(_, e)| e.node == "node-b")
    })
    .await;
    wait_until("node-a closed the old sessions", WAIT, || {
        ingress.metrics().superseded.get() == 2
    })
    .await;
    assert_eq!(
        violations(&server),
        Vec::<String>::new(),
        "the services needed more"
    );

    // What each user must not do.
    let as_role = |r: Role| env.nats_as(r);
    let supersede = names.cira_node_supersede("node-b", &guid);
    assert!(reaches(&as_role(Role::Ingress), &admin, &supersede).await);
    for r in [Role::Command, Role::Audit, Role::Bridge, Role::Rps] {
        assert!(
            !reaches(&as_role(r), &admin, &supersede).await,
            "{r:?} disconnects devices"
        );
    }
    // Ending a session on request: the device API only.
    let disconnect = names.cira_node_disconnect("node-b", &guid);
    assert!(reaches(&as_role(Role::Command), &admin, &disconnect).await);
    for r in [Role::Audit, Role::Bridge, Role::Rps] {
        assert!(
            !reaches(&as_role(r), &admin, &disconnect).await,
            "{r:?} ends device sessions"
        );
    }
    let http = names.cira_node_http("node-b", &guid);
    assert!(reaches(&as_role(Role::Command), &admin, &http).await);
    for r in [Role::Ingress, Role::Audit, Role::Bridge, Role::Rps] {
        assert!(
            !reaches(&as_role(r), &admin, &http).await,
            "{r:?} talks to devices"
        );
        if r != Role::Ingress {
            assert!(
                !reaches(&admin, &as_role(r), &http).await,
                "{r:?} reads WS-Man"
            );
        }
    }
    let event = names.device_event("acme", &guid, "connected");
    for r in [Role::Audit, Role::Bridge, Role::Command] {
        assert!(
            !reaches(&as_role(r), &admin, &event).await,
            "{r:?} forges device events"
        );
    }
    let replies = format!("{}.x", Role::Command.inbox_prefix());
    for r in [Role::Ingress, Role::Audit, Role::Bridge, Role::Rps] {
        assert!(
            !reaches(&admin, &as_role(r), &replies).await,
            "{r:?} reads replies to mps-command"
        );
    }
    // The bridge uses its own durable consumer and no other: the audit worker's events are not
    // its to take.
    let bridge = async_nats::jetstream::new(as_role(Role::Bridge));
    homeport_contracts::events::durable_consumer(
        &bridge,
        &names,
        &test_stream_limits(),
        access::BRIDGE_CONSUMER,
        Duration::from_secs(30),
        100,
    )
    .await
    .expect("the bridge's own consumer");
    let admin_js = async_nats::jetstream::new(admin.clone());
    let events = names.events_stream();
    let audit_consumer = |js: async_nats::jetstream::Context| {
        let events = events.clone();
        async move {
            let stream = js.get_stream(events).await.ok()?;
            stream
                .get_consumer::<async_nats::jetstream::consumer::pull::Config>("audit")
                .await
                .ok()
        }
    };
    assert!(
        audit_consumer(admin_js).await.is_some(),
        "the audit worker's consumer is there"
    );
    for r in [Role::Bridge] {
        let js = async_nats::jetstream::new(as_role(r));
        let taken = tokio::time::timeout(Duration::from_secs(3), audit_consumer(js)).await;
        assert!(
            !matches!(taken, Ok(Some(_))),
            "{r:?} reaches the audit worker's consumer"
        );
    }
    assert!(
        !violations(&server).is_empty(),
        "the refusals were the server's"
    );

    fleet.stop().await;
    moved.stop().await;
    ingress.shutdown().await;
    b.shutdown().await;
    audit.stop().await;
    cmd.stop().await;
    env.cleanup().await;
}

async fn wait_until_stored(env: &TestEnv, n: u64) {
    let deadline = std::time::Instant::now() + WAIT;
    while env.store.count_audit_events().await.unwrap_or(0) < n {
        assert!(std::time::Instant::now() < deadline, "events not stored");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn the_shipped_nats_configuration_is_current_and_starts_with_generated_keys() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/nats/nats-server.conf"
    );
    let shipped = std::fs::read_to_string(path).unwrap();
    assert_eq!(
        shipped,
        access::deployment_config(&Names::new("hp")),
        "regenerate it: homeportctl nats-config > deploy/nats/nats-server.conf"
    );
    let dir = std::env::temp_dir().join(format!("homeport-nk-{:08x}", fastrand::u32(..)));
    let out = dir.to_str().unwrap();
    let (result, printed) = homeportctl::run_captured(&["homeportctl", "nats-keys", "--out", out]);
    result.unwrap();
    assert!(printed.contains("5 seeds"), "{printed}");
    let env_file = std::fs::read_to_string(dir.join("nats-users.env")).unwrap();
    let check = |vars: &[(String, String)]| {
        std::process::Command::new("nats-server")
            .args(["-t", "-c", path])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(vars.iter().cloned())
            .output()
            .unwrap()
            .status
            .success()
    };
    let vars: Vec<(String, String)> = env_file
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(vars.len(), Role::ALL.len());
    assert!(
        check(&vars),
        "the server accepts the configuration with the keys"
    );
    assert!(!check(&vars[1..]), "a missing key stops the server");
    // Seeds are for their service only.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.join("ingress.nk"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    // The Kubernetes NATS cluster includes the same users and permissions.
    let k8s = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/k8s/base/nats/");
    assert_eq!(
        std::fs::read_to_string(format!("{k8s}auth.conf")).unwrap(),
        access::deployment_authorization(&Names::new("hp")),
        "regenerate it: homeportctl nats-config --authorization-only > deploy/k8s/base/nats/auth.conf"
    );
    let cluster = |vars: &[(String, String)]| {
        std::process::Command::new("nats-server")
            .args(["-t", "-c", &format!("{k8s}nats.conf")])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("POD_NAME", "nats-0")
            .envs(vars.iter().cloned())
            .output()
            .unwrap()
    };
    let out = cluster(&vars);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !cluster(&vars[1..]).status.success(),
        "a missing key stops it"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
