//! Remote provisioning end to end: simulated PCs run the rpc protocol against rps (as
//! processes and in-process) over TLS WebSockets, get activated and configured for CIRA,
//! dial the ingress by themselves, obey mps-command, and are deactivated.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::collections::HashMap;
use std::time::Duration;

use homeport_amt_sim::provision::{Message, RpcClient, RpcFault, SimDevice};
use homeport_amt_sim::SimConfig;
use homeport_proto::device::v1 as dpb;
use homeport_proto::provisioning::v1 as pb;
use homeport_secrets::DeviceSecrets;
use homeport_tests::command::{command_config, TEST_JWT_SECRET};
use homeport_tests::procs::{bin, free_port};
use homeport_tests::rps::{admin_client, ccm_profile_with_cira, rps_config};
use homeport_tests::{nats_url, wait_until, TestEnv};
use prost::Message as _;
use tokio::process::{Child, Command};

const WAIT: Duration = Duration::from_secs(60);

struct RpsProcess {
    child: Child,
    port: u16,
    grpc: u16,
    log: std::path::PathBuf,
}

impl RpsProcess {
    /// Starts an rps process on free ports; a start that loses a port to a parallel test
    /// (the process exits before it is ready) is tried again on others.
    async fn start(env: &TestEnv, name: &str) -> RpsProcess {
        let jwt = env.dir.join("jwt.key");
        std::fs::write(&jwt, TEST_JWT_SECRET).unwrap();
        let log = env.dir.join(format!("{name}.log"));
        for attempt in 1..=3 {
            let (port, grpc, health) = (free_port(), free_port(), free_port());
            let out = std::fs::File::create(&log).unwrap();
            let err = out.try_clone().unwrap();
            let mut child = Command::new(bin("rps"))
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .env("HOMEPORT_NATS_URL", nats_url())
                .env("HOMEPORT_SUBJECT_PREFIX", env.names.prefix())
                .env("HOMEPORT_DATABASE_URL", env.database_url())
                .env("HOMEPORT_SECRETS_FILE", env.dir.join("secrets.enc"))
                .env("HOMEPORT_SECRETS_KEY_FILE", env.dir.join("secrets.key"))
                .env("HOMEPORT_EVENTS_MAX_BYTES", (64 << 20).to_string())
                .env("HOMEPORT_JWT_HS256_SECRET_FILE", &jwt)
                .env("HOMEPORT_RPS_LISTEN", format!("127.0.0.1:{port}"))
                .env("HOMEPORT_GRPC_LISTEN", format!("127.0.0.1:{grpc}"))
                .env("HOMEPORT_HEALTH_LISTEN", format!("127.0.0.1:{health}"))
                // Debug lines too: none of them may carry a secret.
                .env("HOMEPORT_LOG", "debug")
                .stdout(out)
                .stderr(err)
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            let deadline = std::time::Instant::now() + WAIT;
            loop {
                let ready = tokio::process::Command::new("bash")
                    .arg(concat!(
                        env!("CARGO_MANIFEST_DIR"),
                        "/../scripts/healthcheck.sh"
                    ))
                    .arg(health.to_string())
                    .stderr(std::process::Stdio::null())
                    .status()
                    .await
                    .unwrap()
                    .success();
                if ready {
                    return RpsProcess {
                        child,
                        port,
                        grpc,
                        log,
                    };
                }
                if let Ok(Some(status)) = child.try_wait() {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    assert!(attempt < 3, "{name} exited: {status}\n{text}");
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "{name} not ready");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        unreachable!("three attempts")
    }

    fn url(&self) -> String {
        format!("wss://127.0.0.1:{}/activate", self.port)
    }
}

fn client(url: &str, tenant: &str) -> RpcClient {
    let mut c = RpcClient::new(url).unwrap();
    c.tenant = tenant.into();
    c.timeout = WAIT;
    c
}

async fn stored(env: &TestEnv, guid: &str) -> Option<DeviceSecrets> {
    DeviceSecrets::load(env.secrets.as_ref(), guid)
        .await
        .unwrap()
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    !needle.is_empty()
        && haystack
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_activates_through_rps_even_across_a_killed_replica_dials_the_ingress_and_is_deactivated(
) {
    let env = TestEnv::new("prov").await;
    let ingress = env.start_ingress("node-a", TestEnv::ingress_config()).await;
    let cmd = env
        .start_command(command_config(Duration::from_secs(5)))
        .await;
    let mut a = RpsProcess::start(&env, "rps-a").await;
    let b = RpsProcess::start(&env, "rps-b").await;
    let mut admin = admin_client(b.grpc, "acme").await;
    ccm_profile_with_cira(&mut admin, "ccm", ingress.local_addr()).await;

    // Replica A dies while the device is half configured: Setup is done, CIRA is not.
    let dev = SimDevice::unprovisioned(31, 0);
    let guid = dev.guid().to_string();
    let mut slow = client(&a.url(), "acme");
    slow.latency = Duration::from_millis(150);
    let first = {
        let dev = dev.clone();
        tokio::spawn(async move { dev.rpc(&slow, "activate --profile ccm", None).await })
    };
    wait_until("the device took its admin password", WAIT, || {
        dev.control_mode() == 1
    })
    .await;
    a.child.kill().await.unwrap();
    let cut = first.await.unwrap();
    assert!(cut.is_err(), "the flow on the killed replica ends: {cut:?}");
    assert!(dev.cira_target().is_none(), "CIRA was not configured yet");

    // The operator runs the client again with the device's password (from the secret
    // store, where it was put before the device took it): replica B completes the flow.
    let secrets = stored(&env, &guid)
        .await
        .expect("credentials stored before Setup");
    let amt = secrets
        .amt_password
        .clone()
        .expect("AMT password")
        .expose()
        .to_string();
    assert!(dev.admin_password_is(&amt));
    let to_b = client(&b.url(), "acme");
    let done = dev
        .rpc(&to_b, "activate --profile ccm", Some(&amt))
        .await
        .unwrap();
    assert!(done.ok, "{done:?}");
    assert_eq!(done.status("CIRAConnection").as_deref(), Some("Configured"));
    let (address, port, user) = dev.cira_target().expect("CIRA configured");
    assert_eq!(
        (address.as_str(), port),
        ("127.0.0.1", ingress.local_addr().port())
    );
    assert_eq!(user, "homeport1");
    let device = env
        .store
        .get_device(&guid)
        .await
        .unwrap()
        .expect("registered");
    assert_eq!(device.tenant_id, "acme");
    assert_eq!(device.mps_username, "homeport1");
    assert_eq!(device.tags, ["provisioned"]);

    // A wrong password on re-activation is refused before any WS-Man.
    let wrong = dev
        .rpc(&to_b, "activate --profile ccm", Some("Wrong-Pass-1!"))
        .await
        .unwrap();
    assert!(!wrong.ok);
    assert!(
        wrong.message.contains("does not match"),
        "{}",
        wrong.message
    );

    // Whoever claims to be that PC, factory-fresh, gets nothing of it: no setup from mode 0
    // of a registered device, and no forced deactivation without its password.
    let impostor = SimDevice::unprovisioned(31, 0);
    let r = impostor
        .rpc(&to_b, "activate --profile ccm", None)
        .await
        .unwrap();
    assert!(
        !r.ok && r.message.contains("registered as activated"),
        "{r:?}"
    );
    assert_eq!(r.exchanges, 0);
    let r = dev
        .rpc(&to_b, "deactivate --password x -f", Some("Not-The-Pass1!"))
        .await
        .unwrap();
    assert!(!r.ok && r.message.contains("does not match"), "{r:?}");
    assert!(env.store.get_device(&guid).await.unwrap().is_some());

    // The device dials the ingress with what it was given, and answers a power action.
    let mut sim = SimConfig::new(ingress.local_addr(), 1);
    sim.reconnect_min = Duration::from_millis(200);
    sim.reconnect_max = Duration::from_secs(2);
    let fleet = homeport_amt_sim::Fleet::start_provisioned(sim, vec![dev.clone()]).unwrap();
    assert_eq!(
        fleet.wait_connected(1, WAIT).await,
        1,
        "connected over CIRA"
    );
    env.wait_presence("the device is present", WAIT, |p| p.len() == 1)
        .await;
    let mut api = cmd.devices("acme").await;
    let r = api
        .power_action(dpb::PowerActionRequest {
            guid: guid.clone(),
            action: 8,
        })
        .await
        .expect("power action through mps-command")
        .into_inner();
    assert_eq!(r.return_value, 0);
    let mps_password = stored(&env, &guid)
        .await
        .and_then(|s| s.mps_password)
        .expect("CIRA password stored")
        .expose()
        .to_string();

    // Maintenance: a new admin password (stored first, then set; mps-command follows it),
    // and AMT's clock set from the PC's.
    let r = dev
        .rpc(
            &to_b,
            "maintenance -password x --changepassword",
            Some(&amt),
        )
        .await
        .unwrap();
    assert!(r.ok, "{r:?}");
    let changed = stored(&env, &guid)
        .await
        .and_then(|s| s.amt_password)
        .unwrap()
        .expose()
        .to_string();
    assert_ne!(changed, amt);
    assert!(dev.admin_password_is(&changed));
    api.get_power_state(dpb::DeviceRef { guid: guid.clone() })
        .await
        .expect("mps-command uses the new password");
    dev.skew_clock(-7200);
    let r = dev
        .rpc(&to_b, "maintenance -password x --synctime", Some(&changed))
        .await
        .unwrap();
    assert!(r.ok, "{r:?}");
    assert!(dev.maintained_state().0.abs() <= 5);
    let old = dev
        .rpc(&to_b, "maintenance -password x --synctime", Some(&amt))
        .await
        .unwrap();
    assert!(!old.ok, "the old password no longer works");

    // Deactivation: the device leaves CIRA, the registry and the secret store.
    let gone = dev
        .rpc(&to_b, "deactivate --password x", Some(&changed))
        .await
        .unwrap();
    assert!(gone.ok, "{gone:?}");
    assert_eq!(gone.status("Status").as_deref(), Some("Deactivated"));
    assert_eq!(dev.control_mode(), 0);
    env.wait_presence("the device left presence", WAIT, |p| p.is_empty())
        .await;
    assert!(env.store.get_device(&guid).await.unwrap().is_none());
    assert!(stored(&env, &guid).await.is_none());

    // One event per outcome, and no secret in any event or log line.
    env.wait_events("deactivated", 1, WAIT).await;
    let events = env.events().await;
    let outcomes: Vec<&str> = events
        .iter()
        .filter(|(s, _)| s.contains(".provisioning."))
        .filter_map(|(s, _)| s.rsplit('.').next())
        .collect();
    assert!(outcomes.contains(&"activated"), "{outcomes:?}");
    assert!(
        outcomes.contains(&"failed"),
        "the refusal is recorded: {outcomes:?}"
    );
    assert_eq!(outcomes.iter().filter(|o| **o == "deactivated").count(), 1);
    assert_eq!(outcomes.iter().filter(|o| **o == "maintained").count(), 2);
    for (subject, ev) in &events {
        let bytes = ev.encode_to_vec();
        for secret in [&amt, &changed, &mps_password] {
            assert!(!contains(&bytes, secret), "a secret in event {subject}");
        }
    }
    for log in [&a.log, &b.log] {
        let text = std::fs::read(log).unwrap();
        assert!(!text.is_empty(), "{} logged nothing", log.display());
        for secret in [&amt, &changed, &mps_password] {
            assert!(!contains(&text, secret), "a secret in {}", log.display());
        }
    }
    fleet.stop().await;
    cmd.stop().await;
    ingress.shutdown().await;
    drop(b);
    env.cleanup().await;
}

fn first_text(texts: &[String]) -> HashMap<String, serde_json::Value> {
    texts
        .first()
        .and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_refused_with_clear_messages() {
    let env = TestEnv::new("provref").await;
    // The CIRA configuration's root defaults to the ingress's, which an ingress stores.
    homeport_cira_ingress::tls::load_or_generate(&env.secrets, "localhost", &[])
        .await
        .unwrap();
    let rps = env.start_rps(rps_config()).await;
    let mut acme = rps.admin("acme").await;
    ccm_profile_with_cira(&mut acme, "ccm", "127.0.0.1:4433".parse().unwrap()).await;
    let dev = SimDevice::unprovisioned(32, 0);

    let refused = |c: &RpcClient, cmd: &'static str| {
        let (dev, c) = (dev.clone(), c.clone());
        async move { dev.rpc(&c, cmd, None).await.unwrap() }
    };
    let acme_client = client(&rps.url(), "acme");
    let r = refused(&acme_client, "activate --profile nope").await;
    assert!(
        !r.ok && r.message.contains("Profile nope not found"),
        "{r:?}"
    );
    // Another tenant's profile is as unknown as a missing one.
    let other = client(&rps.url(), "other");
    let r = refused(&other, "activate --profile ccm").await;
    assert!(
        !r.ok && r.message.contains("Profile ccm not found"),
        "{r:?}"
    );
    let mut old = client(&rps.url(), "acme");
    old.protocol_version = "5.0.0".into();
    let r = refused(&old, "activate --profile ccm").await;
    assert_eq!(r.message, "protocol version NOT supported: 5.0.0");
    // A client that drops at the third exchange (the Setup request) leaves the PC as it was;
    // the next run activates it.
    let mut dropping = SimDevice::unprovisioned(32, 1);
    dropping.fault = RpcFault::DropAt(3);
    let dropped = dropping
        .rpc(&acme_client, "activate --profile ccm", None)
        .await;
    assert!(
        matches!(dropped, Err(ref e) if e.to_string().contains("exchange 3")),
        "{dropped:?}"
    );
    assert_eq!(dropping.control_mode(), 0);
    dropping.fault = RpcFault::None;
    let r = dropping
        .rpc(&acme_client, "activate --profile ccm", None)
        .await
        .unwrap();
    assert!(r.ok, "{r:?}");
    let r = refused(&acme_client, "dance --profile ccm").await;
    assert!(r.message.contains("not a supported method"), "{r:?}");
    let r = refused(&acme_client, "deactivate --password x").await;
    assert!(r.message.contains("pre-provisioning"), "{r:?}");
    assert_eq!(dev.control_mode(), 0, "nothing reached the device");

    // Malformed, binary and oversized frames.
    let texts = acme_client
        .send_raw(Message::text("{not json"))
        .await
        .unwrap();
    assert_eq!(first_text(&texts)["method"], "error");
    assert_eq!(
        first_text(&texts)["message"],
        "message is not a JSON envelope"
    );
    let texts = acme_client
        .send_raw(Message::binary(vec![1u8, 2, 3]))
        .await
        .unwrap();
    assert_eq!(first_text(&texts)["method"], "error");
    let huge = format!(
        r#"{{"method":"activate --profile ccm","payload":"{}"}}"#,
        "A".repeat(200_000)
    );
    // The server stops reading at the limit and closes: the client may not even finish
    // sending. Either way nothing is processed.
    match acme_client.send_raw(Message::text(huge)).await {
        Ok(texts) => assert!(
            texts.iter().all(|t| !t.contains("success")),
            "an oversized message is not processed: {texts:?}"
        ),
        Err(e) => assert!(
            e.to_string().contains("EOF") || e.to_string().contains("reset"),
            "{e}"
        ),
    }

    // The admin API checks what it stores, per tenant.
    let e = acme
        .create_profile(pb::Profile {
            name: "weak".into(),
            activation: pb::Activation::Ccm as i32,
            amt_password: "password".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("amt_password:"), "{}", e.message());
    let e = acme
        .delete_cira_config(pb::NameRef {
            name: "ccm-cira".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    let mut other_admin = rps.admin("other").await;
    let e = other_admin
        .get_profile(pb::NameRef { name: "ccm".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let p = acme
        .get_profile(pb::NameRef { name: "CCM".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((p.name.as_str(), p.version), ("ccm", 1));
    assert!(p.amt_password.is_empty(), "secrets are never returned");
    let stale = acme
        .update_profile(pb::Profile {
            version: 7,
            ..p.clone()
        })
        .await
        .unwrap_err();
    assert_eq!(stale.code(), tonic::Code::Aborted);
    let updated = acme
        .update_profile(pb::Profile {
            generate_random_password: true,
            sol_enabled: false,
            ..p
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.version, 2);

    // homeportctl reaches the same API: tables for people, JSON for scripts.
    let table = ctl(&rps, &["profiles", "list"]).await.unwrap();
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table.contains("ccm-cira") && table.contains("1 of 1"),
        "{table}"
    );
    let json: serde_json::Value = serde_json::from_str(
        &ctl(&rps, &["--json", "cira-configs", "get", "ccm-cira"])
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(json["username"], "homeport1");
    let psk = env.dir.join("psk");
    std::fs::write(&psk, "correct horse battery\n").unwrap();
    let made = ctl(
        &rps,
        &[
            "wireless",
            "create",
            "office",
            "--ssid",
            "Office",
            "--psk-file",
            psk.to_str().unwrap(),
        ],
    )
    .await
    .unwrap();
    assert!(
        made.contains("Office") && !made.contains("correct horse"),
        "{made}"
    );
    let changed = ctl(
        &rps,
        &[
            "--json",
            "profiles",
            "update",
            "ccm",
            "--tags",
            "a,b",
            "--sol",
            "true",
            "--random-password",
        ],
    )
    .await
    .unwrap();
    let changed: serde_json::Value = serde_json::from_str(&changed).unwrap();
    assert_eq!(changed["tags"], serde_json::json!(["a", "b"]));
    assert_eq!(changed["sol"], true);
    assert_eq!(
        changed["version"], 3,
        "one more version after the API's update"
    );
    let e = ctl(&rps, &["profiles", "get", "nope"]).await.unwrap_err();
    assert!(e.starts_with("NOT_FOUND"), "{e}");
    rps.stop().await;
    env.cleanup().await;
}

/// Runs homeportctl against `rps`'s admin API as tenant acme.
async fn ctl(rps: &homeport_tests::rps::RpsHandle, args: &[&str]) -> Result<String, String> {
    let mut argv: Vec<String> = vec![
        "homeportctl".into(),
        "--rps-endpoint".into(),
        format!("http://{}", rps.admin_addr),
        "--token".into(),
        homeport_tests::command::CommandHandle::token("acme"),
    ];
    argv.extend(args.iter().map(|s| s.to_string()));
    tokio::task::spawn_blocking(move || {
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let (r, text) = homeportctl::run_captured(&argv);
        r.map(|()| text).map_err(|e| e.line())
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_control_mode_through_rps_with_a_domain_certificate_the_device_trusts() {
    use homeport_amt_sim::provision::ProvisioningPki;
    let env = TestEnv::new("provacm").await;
    let ingress = env.start_ingress("node-a", TestEnv::ingress_config()).await;
    let audit = env.start_audit().await;
    let rps = env.start_rps(rps_config()).await;
    let mut admin = rps.admin("acme").await;
    ccm_profile_with_cira(&mut admin, "ccm", ingress.local_addr()).await;
    let pki = ProvisioningPki::generate("provisioning.sim.homeport.test", "pfx-Pass-1").unwrap();

    // A domain is checked before it is stored: password, suffix against the leaf's name.
    let domain = |suffix: &str, password: &str| pb::Domain {
        name: "sim".into(),
        domain_suffix: suffix.into(),
        provisioning_cert: pki.pfx_b64.clone(),
        provisioning_cert_password: password.into(),
        ..Default::default()
    };
    let e = admin
        .create_domain(domain("sim.homeport.test", "wrong"))
        .await
        .unwrap_err();
    assert!(
        e.message().contains("could not be opened"),
        "{}",
        e.message()
    );
    let e = admin
        .create_domain(domain("elsewhere.example", "pfx-Pass-1"))
        .await
        .unwrap_err();
    assert!(e.message().starts_with("domain_suffix:"), "{}", e.message());
    let d = admin
        .create_domain(domain("Sim.Homeport.Test", "pfx-Pass-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.domain_suffix, "sim.homeport.test");
    assert!(d.provisioning_cert.is_empty() && d.provisioning_cert_password.is_empty());
    assert!(d.expiration_date > chrono_now());
    admin
        .create_profile(pb::Profile {
            name: "acm".into(),
            activation: pb::Activation::Acm as i32,
            generate_random_password: true,
            generate_random_mebx_password: true,
            cira_config_name: "ccm-cira".into(),
            dhcp_enabled: true,
            user_consent: pb::UserConsent::Kvm as i32,
            kvm_enabled: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let c = client(&rps.url(), "acme");

    // A PC whose firmware trusts the root: admin control mode, MEBx password, CIRA.
    let mut trusted = SimDevice::unprovisioned(33, 0);
    trusted.trust_root(&pki.root_der);
    let r = trusted
        .rpc(&c, "activate --profile acm", None)
        .await
        .unwrap();
    assert!(r.ok, "{r:?}");
    assert_eq!(r.status("Status").as_deref(), Some("Admin control mode."));
    assert_eq!(r.status("CIRAConnection").as_deref(), Some("Configured"));
    assert_eq!(trusted.control_mode(), 2);
    assert!(trusted.mebx_set());
    let secrets = stored(&env, trusted.guid()).await.unwrap();
    assert!(secrets.mebx_password.is_some() && secrets.mps_password.is_some());
    let device = env.store.get_device(trusted.guid()).await.unwrap().unwrap();
    assert_eq!(
        device.device_info.and_then(|i| i.current_mode).as_deref(),
        Some("ACM")
    );
    let mut sim = SimConfig::new(ingress.local_addr(), 1);
    sim.reconnect_min = Duration::from_millis(200);
    let fleet = homeport_amt_sim::Fleet::start_provisioned(sim, vec![trusted.clone()]).unwrap();
    assert_eq!(
        fleet.wait_connected(1, WAIT).await,
        1,
        "the ACM device dials in"
    );

    // Refused before any WS-Man: a root the PC does not trust, a DNS suffix with no domain.
    // (Its firmware would trust the root, but the hashes its client reports do not list it.)
    let mut untrusting = SimDevice::unprovisioned(33, 1);
    untrusting.trust_root(&pki.root_der);
    untrusting.fault = RpcFault::WrongHashes;
    let r = untrusting
        .rpc(&c, "activate --profile acm", None)
        .await
        .unwrap();
    assert!(
        !r.ok && r.message.contains("Invalid domain certificate"),
        "{r:?}"
    );
    assert_eq!(r.exchanges, 0);
    let mut elsewhere = SimDevice::unprovisioned(33, 2);
    elsewhere.trust_root(&pki.root_der);
    elsewhere.fqdn = "corp.elsewhere.example".into();
    let r = elsewhere
        .rpc(&c, "activate --profile acm", None)
        .await
        .unwrap();
    assert!(
        !r.ok && r.message.contains("No domain has the suffix"),
        "{r:?}"
    );
    // The firmware refusing AdminSetup ends the flow with its answer.
    let mut refusing = SimDevice::unprovisioned(33, 3);
    refusing.trust_root(&pki.root_der);
    refusing.refuse_admin_setup();
    let r = refusing
        .rpc(&c, "activate --profile acm", None)
        .await
        .unwrap();
    assert!(!r.ok && r.message.contains("AdminSetup returned"), "{r:?}");

    // Client control mode first, then the same PC upgraded with its password.
    let mut upgraded = SimDevice::unprovisioned(33, 4);
    upgraded.trust_root(&pki.root_der);
    assert!(
        upgraded
            .rpc(&c, "activate --profile ccm", None)
            .await
            .unwrap()
            .ok
    );
    let amt = stored(&env, upgraded.guid())
        .await
        .and_then(|s| s.amt_password)
        .unwrap()
        .expose()
        .to_string();
    let r = upgraded
        .rpc(&c, "activate --profile acm", Some(&amt))
        .await
        .unwrap();
    assert!(r.ok, "{r:?}");
    assert_eq!(
        r.status("Status").as_deref(),
        Some("Upgraded to admin control mode.")
    );
    assert_eq!(upgraded.control_mode(), 2);

    // A profile with a Wi-Fi link: the profile goes onto the device (passphrase from the
    // secret store), after the wired settings.
    admin
        .create_wireless_config(pb::WirelessConfig {
            name: "office".into(),
            authentication_method: 6,
            encryption_method: 4,
            ssid: "Office".into(),
            psk_passphrase: "correct horse battery".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    admin
        .create_profile(pb::Profile {
            name: "wifi".into(),
            activation: pb::Activation::Ccm as i32,
            generate_random_password: true,
            dhcp_enabled: true,
            ip_sync_enabled: true,
            wifi_configs: vec![pb::WifiLink {
                profile_name: "office".into(),
                priority: 1,
            }],
            user_consent: pb::UserConsent::All as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    let roaming = SimDevice::unprovisioned(33, 5);
    let r = roaming
        .rpc(&c, "activate --profile wifi", None)
        .await
        .unwrap();
    assert!(r.ok, "{r:?}");
    assert_eq!(
        r.status("Network").as_deref(),
        Some("Wired Network Configured. Wireless Configured (1 profile)")
    );
    assert_eq!(roaming.wifi().0, [("Office".to_string(), 1)]);

    // Every outcome reaches the audit trail.
    let filter = homeport_store::AuditFilter {
        kind: Some("activated".into()),
        ..Default::default()
    };
    let mut stored_outcomes = 0;
    for _ in 0..100 {
        stored_outcomes = env
            .store
            .query_audit_events("acme", &filter, 0, 100)
            .await
            .unwrap()
            .len();
        if stored_outcomes >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(stored_outcomes, 4, "four activations in the audit trail");
    fleet.stop().await;
    rps.stop().await;
    audit.stop().await;
    ingress.shutdown().await;
    env.cleanup().await;
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_hold_no_place_or_slot_beyond_their_deadlines() {
    use tokio::io::AsyncReadExt;
    let env = TestEnv::new("provhost").await;
    homeport_cira_ingress::tls::load_or_generate(&env.secrets, "localhost", &[])
        .await
        .unwrap();
    let mut config = rps_config();
    config.handshake_timeout_secs = 3;
    config.step_timeout_secs = 2;
    config.max_handshakes_per_source = 4;
    config.max_flows = 1;
    let rps = env.start_rps(config).await;
    let mut admin = rps.admin("acme").await;
    ccm_profile_with_cira(&mut admin, "ccm", "127.0.0.1:4433".parse().unwrap()).await;

    // Four sockets that never speak fill this source's handshake places; a fifth is closed
    // before any TLS (its handshake fails), and the four are closed at their deadline.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(tokio::net::TcpStream::connect(rps.clients).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let c = client(&rps.url(), "acme");
    let refused = SimDevice::unprovisioned(34, 0)
        .rpc(&c, "activate --profile ccm", None)
        .await;
    assert!(
        matches!(&refused, Err(e) if e.to_string().contains("connecting")),
        "no TLS for a fifth handshake from the source: {refused:?}"
    );
    for mut s in idle {
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(WAIT, s.read(&mut buf)).await;
        assert!(
            matches!(n, Ok(Ok(0)) | Ok(Err(_))),
            "an idle socket is closed at the handshake deadline: {n:?}"
        );
    }

    // A PC that stops answering holds the only flow slot until its step deadlines run out
    // (the request is sent again twice); meanwhile another valid request is told to retry.
    let mut hung = SimDevice::unprovisioned(34, 1);
    hung.fault = RpcFault::StallFrom(2);
    let hung_flow = {
        let c = c.clone();
        tokio::spawn(async move { hung.rpc(&c, "activate --profile ccm", None).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let busy = SimDevice::unprovisioned(34, 2)
        .rpc(&c, "activate --profile ccm", None)
        .await
        .unwrap();
    assert!(!busy.ok && busy.message.contains("busy"), "{busy:?}");
    let hung_result = hung_flow.await.unwrap().unwrap();
    assert!(!hung_result.ok, "{hung_result:?}");
    assert!(
        hung_result.message.contains("sent three times"),
        "{hung_result:?}"
    );
    // Everything given back: the next PC activates.
    let ok = SimDevice::unprovisioned(34, 3)
        .rpc(&c, "activate --profile ccm", None)
        .await
        .unwrap();
    assert!(ok.ok, "{ok:?}");
    rps.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activation_rides_out_a_short_database_outage_after_setup() {
    use homeport_tests::audit::TcpProxy;
    let env = TestEnv::new("provpg").await;
    homeport_cira_ingress::tls::load_or_generate(&env.secrets, "localhost", &[])
        .await
        .unwrap();
    let host_port = env
        .database_url()
        .split_once('@')
        .and_then(|(_, rest)| rest.split('/').next())
        .unwrap()
        .to_string();
    let proxy = TcpProxy::start(host_port.parse().unwrap()).await;
    let mut config = homeport_store::StoreConfig::new(
        env.database_url()
            .replace(&host_port, &proxy.addr.to_string()),
    );
    config.acquire_timeout = Duration::from_secs(1);
    config.min_connections = 0;
    let store = homeport_store::Store::connect_with(config).await.unwrap();
    let rps = env.start_rps_with(rps_config(), store).await;
    let mut admin = rps.admin("acme").await;
    ccm_profile_with_cira(&mut admin, "ccm", "127.0.0.1:4433".parse().unwrap()).await;

    let dev = SimDevice::unprovisioned(35, 0);
    let mut slow = client(&rps.url(), "acme");
    slow.latency = Duration::from_millis(200);
    let flow = {
        let dev = dev.clone();
        tokio::spawn(async move { dev.rpc(&slow, "activate --profile ccm", None).await })
    };
    // The database goes away once the device has taken its password, and comes back while
    // rps is retrying the registration.
    wait_until("Setup applied", WAIT, || dev.control_mode() == 1).await;
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    proxy.restore();
    let r = flow.await.unwrap().unwrap();
    assert!(r.ok, "{r:?}");
    assert_eq!(
        env.store
            .get_device(dev.guid())
            .await
            .unwrap()
            .map(|d| d.tenant_id),
        Some("acme".to_string())
    );
    rps.stop().await;
    env.cleanup().await;
}
