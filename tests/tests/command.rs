//! End-to-end device management: gRPC client → mps-command → NATS → cira-ingress → APF →
//! simulated AMT, with the registry in PostgreSQL and credentials in the secret store.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use homeport_contracts::proto::event::Payload;
use homeport_proto::device::v1 as pb;
use homeport_tests::command::command_config;
use homeport_tests::*;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(30);

use homeport_tests::command::CommandSetup as Setup;

fn dref(guid: &str) -> pb::DeviceRef {
    pb::DeviceRef {
        guid: guid.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn general_settings_with_digest_reuse_and_a_command_event() {
    let s = Setup::start("cmdgs", 2, 31, "acme", |_| {}).await;
    let mut api = s.cmd.devices("acme").await;
    let id = s.fleet.identities()[0].clone();
    let before = s.fleet.stats().http_requests.load(Ordering::Relaxed);
    let g = api
        .get_general_settings(dref(&id.guid))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(g.digest_realm, id.realm);
    assert_eq!(g.host_name, id.hostname);
    assert_eq!(
        g.properties.get("InstanceID").map(String::as_str),
        Some("Intel(r) AMT: General Settings")
    );
    let first = s.fleet.stats().http_requests.load(Ordering::Relaxed) - before;
    assert_eq!(first, 2, "the first call meets AMT's 401 challenge");
    // The caller's trace context continues into the command's event.
    let mut traced = tonic::Request::new(dref(&id.guid));
    traced.metadata_mut().insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap(),
    );
    api.get_general_settings(traced).await.unwrap();
    let second = s.fleet.stats().http_requests.load(Ordering::Relaxed) - before - first;
    assert_eq!(second, 1, "later calls reuse the nonce");
    let events = s.env.wait_events("GetGeneralSettings", 2, WAIT).await;
    let (subject, ev) = &events[0];
    assert_eq!(
        subject,
        &s.env
            .names
            .command_event("acme", &id.guid, "GetGeneralSettings")
    );
    assert_eq!((ev.tenant.as_str(), ev.actor.as_str()), ("acme", "tester"));
    assert!(events
        .iter()
        .any(|(_, e)| e.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"));
    assert!(events.iter().all(|(_, e)| e.trace_id.len() == 32));
    let Some(Payload::CommandExecuted(c)) = &ev.payload else {
        panic!("payload {:?}", ev.payload)
    };
    assert_eq!(c.result, "ok");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_connected_unknown_and_malformed_devices_answer_at_once() {
    let env = TestEnv::new("cmdnc").await;
    let ingress = env.start_ingress("node-a", TestEnv::ingress_config()).await;
    // Enrolled but never started: registered, not connected.
    let cfg = env
        .enrolled_fleet(ingress.local_addr(), 1, 32, "acme")
        .await;
    let guid = cfg.identities().next().unwrap().guid;
    let cmd = env
        .start_command(command_config(Duration::from_secs(30)))
        .await;
    let mut api = cmd.devices("acme").await;
    let started = Instant::now();
    let e = api.get_power_state(dref(&guid)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("not connected"), "{e:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "not-connected must not wait for the deadline"
    );
    let e = api
        .get_power_state(dref("00000000-0000-0000-0000-00000000beef"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = api.get_power_state(dref("not-a-guid")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // Failures are audited too.
    let events = env.wait_events("GetPowerState", 3, WAIT).await;
    assert!(events.iter().any(|(_, e)| matches!(&e.payload, Some(Payload::CommandExecuted(c)) if c.result == "UNAVAILABLE")));
    cmd.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_isolated_and_tokens_required() {
    let s = Setup::start("cmdten", 1, 33, "acme", |_| {}).await;
    let guid = s.guid(0);
    let mut evil = s.cmd.devices("evil").await;
    let e = evil.get_general_settings(dref(&guid)).await.unwrap_err();
    assert_eq!(
        e.code(),
        Code::NotFound,
        "another tenant's device does not exist for the caller"
    );
    let e = evil
        .power_action(pb::PowerActionRequest {
            guid: guid.clone(),
            action: 8,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let mut evil_reg = s.cmd.registry("evil").await;
    assert_eq!(
        evil_reg.get_device(dref(&guid)).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        evil_reg
            .delete_device(dref(&guid))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let list = evil_reg
        .list_devices(pb::ListDevicesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(list.devices.is_empty());
    // The owner still sees and commands it.
    let mut reg = s.cmd.registry("acme").await;
    assert_eq!(
        reg.get_device(dref(&guid)).await.unwrap().into_inner().guid,
        guid
    );
    // No token, a garbage token, a token signed with another key: refused.
    for token in [
        None,
        Some("garbage"),
        Some(
            homeport_mps_command::auth::mint_hs256(
                b"another-secret-of-enough-length!!",
                "x",
                "acme",
                60,
            )
            .unwrap()
            .as_str(),
        ),
    ] {
        let mut api = s.cmd.devices_with(token).await;
        let e = api.get_general_settings(dref(&guid)).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{token:?}: {e:?}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_amt_password_is_refused_and_a_fixed_secret_recovers() {
    let s = Setup::start("cmdpw", 1, 34, "acme", |_| {}).await;
    let id = s.fleet.identities()[0].clone();
    let path = homeport_secrets::device_path(&id.guid);
    let mut good = s.env.secrets.get(&path).await.unwrap().unwrap();
    let mut bad = good.clone();
    bad.insert(
        homeport_secrets::AMT_PASSWORD.into(),
        homeport_secrets::SecretString::new("Wrong-Pass1!"),
    );
    s.env.secrets.put(&path, bad).await.unwrap();
    let mut api = s.cmd.devices("acme").await;
    let e = api.get_general_settings(dref(&id.guid)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        !e.message().contains("Wrong-Pass1!"),
        "secrets never appear in errors"
    );
    // The operator fixes the secret; the next call re-reads it after the device's 401.
    good.insert(
        homeport_secrets::AMT_PASSWORD.into(),
        id.amt_password.clone(),
    );
    s.env.secrets.put(&path, good).await.unwrap();
    let g = api
        .get_general_settings(dref(&id.guid))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(g.digest_realm, id.realm);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_nonce_is_recovered_transparently() {
    let s = Setup::start("cmdstale", 1, 35, "acme", |_| {}).await;
    let guid = s.guid(0);
    let mut api = s.cmd.devices("acme").await;
    api.get_general_settings(dref(&guid)).await.unwrap();
    // Other clients' challenges push mps-command's nonce out of the device's small table.
    for _ in 0..6 {
        s.env.assert_reachable(&guid).await;
    }
    let before = s.fleet.stats().http_requests.load(Ordering::Relaxed);
    api.get_general_settings(dref(&guid)).await.unwrap();
    let used = s.fleet.stats().http_requests.load(Ordering::Relaxed) - before;
    assert_eq!(used, 2, "one stale 401, then the retry");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_create_list_update_delete() {
    let s = Setup::start("cmdreg", 2, 36, "acme", |_| {}).await;
    let mut reg = s.cmd.registry("acme").await;
    let connected = reg.get_device(dref(&s.guid(0))).await.unwrap().into_inner();
    assert_eq!(connected.status, pb::ConnectionStatus::Connected as i32);
    assert_eq!(connected.node, "node-a");
    let new_guid = "11111111-2222-3333-4444-555555555555";
    let created = reg
        .create_device(pb::CreateDeviceRequest {
            guid: new_guid.to_uppercase(),
            hostname: "lab-1".into(),
            friendly_name: "Lab one".into(),
            tags: vec!["lab".into(), "floor-2".into()],
            mps_username: "lab1".into(),
            mps_password: "Mps-Pass1!".into(),
            amt_password: "Amt-Pass1!".into(),
            mebx_password: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (created.guid.as_str(), created.tenant.as_str()),
        (new_guid, "acme")
    );
    assert_eq!(created.status, pb::ConnectionStatus::Disconnected as i32);
    let stored = homeport_secrets::DeviceSecrets::load(s.env.secrets.as_ref(), new_guid)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.amt_password.unwrap().expose(), "Amt-Pass1!");
    let dup = reg
        .create_device(pb::CreateDeviceRequest {
            guid: new_guid.into(),
            mps_username: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists);
    // Another tenant cannot take the guid over either.
    let mut evil = s.cmd.registry("evil").await;
    let e = evil
        .create_device(pb::CreateDeviceRequest {
            guid: new_guid.into(),
            mps_username: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    let tagged = reg
        .list_devices(pb::ListDevicesRequest {
            tags: vec!["lab".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        tagged
            .devices
            .iter()
            .map(|d| d.guid.as_str())
            .collect::<Vec<_>>(),
        [new_guid]
    );
    let online = reg
        .list_devices(pb::ListDevicesRequest {
            status: pb::ConnectionStatus::Connected as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(online.devices.len(), 2);
    // Paging visits every device exactly once.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = reg
            .list_devices(pb::ListDevicesRequest {
                page_size: 1,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.devices.into_iter().map(|d| d.guid));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 3);
    let updated = reg
        .update_device(pb::UpdateDeviceRequest {
            guid: new_guid.into(),
            hostname: "lab-2".into(),
            update_mask: vec!["hostname".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (updated.hostname.as_str(), updated.friendly_name.as_str()),
        ("lab-2", "Lab one")
    );
    reg.delete_device(dref(new_guid)).await.unwrap();
    assert_eq!(
        reg.get_device(dref(new_guid)).await.unwrap_err().code(),
        Code::NotFound
    );
    assert!(s
        .env
        .secrets
        .get(&homeport_secrets::device_path(new_guid))
        .await
        .unwrap()
        .is_none());
    let changes = s.env.wait_events("created", 1, WAIT).await;
    assert_eq!(changes[0].1.device_guid, new_guid);
    s.env.wait_events("updated", 1, WAIT).await;
    s.env.wait_events("deleted", 1, WAIT).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_gives_up_still_leaves_a_command_event() {
    // Devices that take 2 s per WS-Man answer; the caller waits 300 ms.
    let s = Setup::start("cmdcancel", 1, 37, "acme", |c| {
        c.wsman_latency = Duration::from_secs(2)
    })
    .await;
    let mut api = s.cmd.devices("acme").await;
    let mut req = tonic::Request::new(homeport_proto::device::v1::PowerActionRequest {
        guid: s.guid(0),
        action: 8,
    });
    req.set_timeout(Duration::from_millis(300));
    let e = api.power_action(req).await.unwrap_err();
    assert!(
        matches!(e.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{e:?}"
    );
    // First the request (published before the device is touched), then the outcome.
    let events = s.env.wait_events("PowerAction", 2, WAIT).await;
    assert!(
        matches!(&events[0].1.payload, Some(Payload::CommandRequested(r)) if r.action == "PowerAction"),
        "{:?}",
        events[0].1.payload
    );
    let Some(Payload::CommandExecuted(c)) = &events[1].1.payload else {
        panic!("{:?}", events[1].1.payload)
    };
    assert_eq!(c.result, "CANCELLED", "{c:?}");
    assert_eq!(c.parameters.get("action").map(String::as_str), Some("8"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commands_to_one_device_queue_instead_of_failing() {
    let s = Setup::start("cmdqueue", 1, 38, "acme", |c| {
        c.wsman_latency = Duration::from_millis(200)
    })
    .await;
    let api = s.cmd.devices("acme").await;
    let guid = s.guid(0);
    // Sixteen at once: more than the ingress takes per device (4); mps-command queues them.
    let calls = (0..16).map(|_| {
        let mut api = api.clone();
        let g = guid.clone();
        tokio::spawn(async move { api.get_general_settings(dref(&g)).await })
    });
    // Spawned all at once (collect), not one by one as the loop below awaits them.
    let calls: Vec<_> = calls.collect();
    for c in calls {
        let r = c.await.unwrap();
        assert!(r.is_ok(), "{r:?}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_authorised_valid_commands_are_announced_and_client_strings_are_capped() {
    let s = Setup::start("cmdcap", 1, 36, "acme", |_| {}).await;
    let guid = s.guid(0);
    // Another tenant's power action: NOT_FOUND, and nothing announced.
    let mut evil = s.cmd.devices("evil").await;
    let e = evil
        .power_action(pb::PowerActionRequest {
            guid: guid.clone(),
            action: 8,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let mut api = s.cmd.devices("acme").await;
    // A 100,000-character alarm name: refused before the device is touched or announced.
    let long = "n".repeat(100_000);
    let e = api
        .add_alarm(pb::AddAlarmRequest {
            guid: guid.clone(),
            name: long.clone(),
            start_time: 4_102_444_800,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    // 1.1 MiB: refused by the server before decoding.
    let huge = "n".repeat(1_100_000);
    let e = api
        .add_alarm(pb::AddAlarmRequest {
            guid: guid.clone(),
            name: huge,
            start_time: 4_102_444_800,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_ne!(e.code(), Code::Ok);
    // A real command still announces itself and completes; its events arrive.
    api.power_action(pb::PowerActionRequest {
        guid: guid.clone(),
        action: 8,
    })
    .await
    .unwrap();
    let power = s.env.wait_events("PowerAction", 3, WAIT).await;
    let requested: Vec<_> = power
        .iter()
        .filter(|(_, e)| matches!(e.payload, Some(Payload::CommandRequested(_))))
        .collect();
    assert_eq!(requested.len(), 1, "only acme's own action is announced");
    assert_eq!(requested[0].1.tenant, "acme");
    let alarms = s.env.wait_events("AddAlarm", 1, WAIT).await;
    assert!(alarms
        .iter()
        .all(|(_, e)| !matches!(e.payload, Some(Payload::CommandRequested(_)))));
    match &alarms[0].1.payload {
        Some(Payload::CommandExecuted(c)) => {
            assert_eq!(c.result, "INVALID_ARGUMENT");
            assert!(
                c.parameters["name"].len() <= 256,
                "the event carries a capped name"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    s.stop().await;
}
