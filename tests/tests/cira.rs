//! End-to-end CIRA tests: simulated devices → real TLS → cira-ingress → real NATS/JetStream,
//! with the device registry in a real PostgreSQL database.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::time::Duration;

use homeport_amt_sim::{Fault, Fleet, SimTls};
use homeport_cira_ingress::tls::TlsProfile;
use homeport_contracts::proto::event::Payload;
use homeport_contracts::tunnel::{TunnelCallError, TunnelError};
use homeport_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_connect_are_present_and_publish_connected_events() {
    let env = TestEnv::new("connect").await;
    let ingress = env.start_ingress("node-a", TestEnv::ingress_config()).await;
    let cfg = env
        .enrolled_fleet(ingress.local_addr(), 20, 11, "acme")
        .await;
    let fleet = Fleet::start(cfg).unwrap();
    assert_eq!(fleet.wait_connected(20, WAIT).await, 20);
    env.wait_presence("20 devices on node-a", WAIT, |p| {
        p.len() == 20
            && p.iter()
                .all(|(_, e)| e.node == "node-a" && e.tenant == "acme")
    })
    .await;
    let events = env.wait_events("connected", 20, WAIT).await;
    let guids: std::collections::HashSet<_> =
        fleet.identities().iter().map(|i| i.guid.clone()).collect();
    for (subject, ev) in &events {
        assert!(
            guids.contains(&ev.device_guid),
            "unexpected device {}",
            ev.device_guid
        );
        assert_eq!(
            subject,
            &env.names.device_event("acme", &ev.device_guid, "connected")
        );
        assert!(matches!(ev.payload, Some(Payload::DeviceConnected(ref c)) if c.node == "node-a"));
    }
    // Keep-alives flow and nobody is dropped over a few keep-alive intervals.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        ingress.metrics().keepalives.get() >= 20,
        "keep-alives answered"
    );
    assert_eq!(fleet.stats().connected(), 20);
    assert_eq!(ingress.metrics().idle_timeouts.get(), 0);
    fleet.stop().await;
    env.wait_presence("all gone after devices disconnect", WAIT, |p| p.is_empty())
        .await;
    let gone = env.wait_events("disconnected", 20, WAIT).await;
    assert!(gone.iter().all(|(_, e)| matches!(e.payload, Some(Payload::DeviceDisconnected(ref d)) if d.reason == "peer_disconnect" || d.reason == "peer_closed")));
    ingress.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_refused_audited_and_disconnected() {
    let env = TestEnv::new("authfail").await;
    let ingress = env.start_ingress("node-a", TestEnv::ingress_config()).await;
    let mut cfg = env
        .enrolled_fleet(ingress.local_addr(), 1, 12, "acme")
        .await;
    cfg.faults = vec![(Fault::WrongPassword, 1.0)];
    let fleet = Fleet::start(cfg).unwrap();
    // The first failure is an event at once; the ones that follow within the interval are
    // counted into one event when it ends.
    let failures = env.wait_events("auth_failed", 2, WAIT).await;
    let guid = &fleet.identities()[0].guid;
    let mut counted = 0;
    for (subject, ev) in &failures {
        assert_eq!(
            subject,
            &env.names.device_event("acme", guid, "auth_failed")
        );
        match &ev.payload {
            Some(Payload::DeviceAuthFailed(f)) => {
                assert_eq!(f.reason, "bad_password");
                counted += f.failures;
            }
            other => panic!("unexpected payload {other:?}"),
        }
    }
    assert!(counted >= 3, "{counted} failures counted");
    // The event carries no secret.
    let raw = format!("{failures:?}");
    assert!(!raw.contains(fleet.identities()[0].mps_password.expose()));
    assert_eq!(fleet.stats().connected(), 0);
    assert!(env.presence_entries().await.is_empty());
    // After max_auth_attempts the server disconnects; the device's retry loop reconnects.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        fleet
            .stats()
            .attempts
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2,
        "server closed the session after repeated failures"
    );
    assert!(ingress.metrics().auth_failures.get() >= 3);
    fleet.stop().await;
    ingress.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_device_is_refused() {
    let env = TestEnv::new("unknown").await;
    let ingress = env.start_ingress("node-a", TestEnv::ingress_config()).await;
    // Not enrolled.
    let cfg = homeport_amt_sim::SimConfig::new(ingress.local_addr(), 1);
    let fleet = Fleet::start(cfg).unwrap();
    let failures = env.wait_events("auth_failed", 1, WAIT).await;
    assert!(
        matches!(&failures[0].1.payload, Some(Payload::DeviceAuthFailed(f)) if f.reason == "unknown_device")
    );
    assert_eq!(fleet.stats().connected(), 0);
    fleet.stop().await;
    ingress.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_device_is_dropped_after_the_idle_timeout() {
    let env = TestEnv::new("idle").await;
    let mut config = TestEnv::ingress_config();
    // The silent device itself gives up after 3 keep-alive intervals without input (6 s);
    // the server's idle timeout must fire first.
    config.keepalive_interval_secs = 2;
    config.idle_timeout_secs = 3;
    let ingress = env.start_ingress("node-a", config).await;
    let mut cfg = env.enrolled_fleet(ingress.local_addr(), 2, 13, "").await;
    // Device 0 or 1 silent depends on the draw; make both kinds explicit with two fleets.
    cfg.devices = 1;
    let healthy = Fleet::start(cfg.clone()).unwrap();
    let mut silent_cfg = cfg.clone();
    silent_cfg.first_index = 1;
    silent_cfg.faults = vec![(Fault::SilentKeepalive, 1.0)];
    silent_cfg.reconnect_min = Duration::from_secs(60);
    silent_cfg.reconnect_max = Duration::from_secs(60);
    let silent = Fleet::start(silent_cfg).unwrap();
    assert_eq!(silent.wait_connected(1, WAIT).await, 1);
    let silent_guid = silent.identities()[0].guid.clone();
    let gone = env.wait_events("disconnected", 1, WAIT).await;
    let (_, ev) = &gone[0];
    assert_eq!(ev.device_guid, silent_guid);
    match &ev.payload {
        Some(Payload::DeviceDisconnected(d)) => {
            assert_eq!(d.reason, "idle_timeout");
            assert!(
                d.duration_seconds <= 5,
                "dropped after about 3 s, not {}",
                d.duration_seconds
            );
        }
        other => panic!("unexpected payload {other:?}"),
    }
    assert_eq!(ingress.metrics().idle_timeouts.get(), 1);
    // The healthy device, answering keep-alives, stays.
    assert_eq!(healthy.stats().connected(), 1);
    let healthy_guid = healthy.identities()[0].guid.clone();
    env.wait_presence("only the healthy device", WAIT, |p| {
        p.len() == 1 && p[0].0 == healthy_guid
    })
    .await;
    silent.stop().await;
    healthy.stop().await;
    ingress.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_on_another_node_supersedes_the_old_session() {
    let env = TestEnv::new("supersede").await;
    let a = env.start_ingress("node-a", TestEnv::ingress_config()).await;
    let b = env.start_ingress("node-b", TestEnv::ingress_config()).await;
    let mut cfg = env.enrolled_fleet(a.local_addr(), 1, 14, "acme").await;
    cfg.reconnect_min = Duration::from_secs(60);
    cfg.reconnect_max = Duration::from_secs(60);
    let first = Fleet::start(cfg.clone()).unwrap();
    assert_eq!(first.wait_connected(1, WAIT).await, 1);
    env.wait_presence("device on node-a", WAIT, |p| {
        p.len() == 1 && p[0].1.node == "node-a"
    })
    .await;
    let old_session = env.presence_entries().await[0].1.session.clone();

    // The same device (same identity) connects to node-b.
    let mut again = cfg.clone();
    again.server = b.local_addr();
    let second = Fleet::start(again).unwrap();
    assert_eq!(second.wait_connected(1, WAIT).await, 1);
    env.wait_presence("device moved to node-b", WAIT, |p| {
        p.len() == 1 && p[0].1.node == "node-b" && p[0].1.session != old_session
    })
    .await;
    // node-a closed its socket: the first simulator saw the server end its session.
    wait_until("the old session is closed", WAIT, || {
        first.stats().connected() == 0
    })
    .await;
    assert_eq!(a.metrics().superseded.get(), 1);
    let gone = env.wait_events("disconnected", 1, WAIT).await;
    assert!(
        matches!(&gone[0].1.payload, Some(Payload::DeviceDisconnected(d)) if d.reason == "superseded" && d.node == "node-a")
    );
    // Exactly one node answers the device's tunnel now.
    let guid = second.identities()[0].guid.clone();
    env.assert_reachable(&guid).await;
    assert_eq!(b.metrics().channel_opens.get(), 1);
    assert_eq!(a.metrics().channel_opens.get(), 0);
    first.stop().await;
    second.stop().await;
    a.shutdown().await;
    b.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_reaches_the_simulator_with_digest_auth() {
    let env = TestEnv::new("tunnel").await;
    let ingress = env.start_ingress("node-a", TestEnv::ingress_config()).await;
    let cfg = env
        .enrolled_fleet(ingress.local_addr(), 3, 15, "acme")
        .await;
    let fleet = Fleet::start(cfg).unwrap();
    assert_eq!(fleet.wait_connected(3, WAIT).await, 3);
    env.wait_presence("3 present", WAIT, |p| p.len() == 3).await;
    let client = env.tunnel().await;
    let id = fleet.identities()[1].clone();
    let get = |auth: Option<String>| general_settings_request(&id.guid, auth.as_deref()).into();
    // First request: AMT's digest challenge (401 with an HTML body and Content-Length).
    let reply = client
        .request(&id.guid, None, get(None), WAIT)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&reply).to_string();
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    assert!(text.ends_with("</html>\n"));
    let header = text
        .lines()
        .find(|l| l.starts_with("WWW-Authenticate"))
        .unwrap()
        .to_string();
    let realm = challenge_param(&header, "realm").unwrap();
    let nonce = challenge_param(&header, "nonce").unwrap();
    assert_eq!(realm, id.realm);
    // With the AMT password: a chunked 200 with the device's settings. The nonce is reused
    // across channels with an increasing nc, as MPS does.
    for nc in 1..=3 {
        let auth = digest_authorization(&realm, &nonce, id.amt_password.expose(), nc);
        let reply = client
            .request(&id.guid, None, get(Some(auth)), WAIT)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&reply).to_string();
        assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
        assert!(text.contains("Transfer-Encoding: chunked"));
        assert!(text.ends_with("0\r\n\r\n"));
        assert!(
            text.contains(&id.hostname),
            "the answer comes from the right device"
        );
    }
    assert_eq!(ingress.metrics().channel_opens.get(), 4);
    // A port outside the AMT set is refused by the ingress itself.
    match client.request(&id.guid, Some(22), get(None), WAIT).await {
        Err(TunnelCallError::Failed { error, .. }) => assert_eq!(error, TunnelError::BadRequest),
        other => panic!("unexpected {other:?}"),
    }
    // A port the device does not accept: the channel is refused and the caller told so.
    match client.request(&id.guid, Some(16994), get(None), WAIT).await {
        Err(TunnelCallError::Failed { error, .. }) => {
            assert_eq!(error, TunnelError::ChannelRefused)
        }
        other => panic!("unexpected {other:?}"),
    }
    fleet.stop().await;
    ingress.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_to_a_device_that_is_not_connected_fails_at_once() {
    let env = TestEnv::new("notconn").await;
    let ingress = env.start_ingress("node-a", TestEnv::ingress_config()).await;
    let client = env.tunnel().await;
    let guid = "4c4c4544-004b-4210-8033-b6c04f504633";
    let req = || bytes::Bytes::from_static(b"POST /wsman HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    // No presence at all.
    let started = std::time::Instant::now();
    let err = client.request(guid, None, req(), WAIT).await.unwrap_err();
    assert!(matches!(err, TunnelCallError::NotConnected(_)), "{err:?}");
    // Stale presence naming a node that is gone: NATS has no responders.
    let kv = env.presence().await;
    let stale = |node: &str| {
        serde_json::to_vec(&homeport_contracts::presence::Presence {
            node: node.into(),
            session: "0".into(),
            tenant: String::new(),
            connected_at: String::new(),
            remote: String::new(),
        })
        .unwrap()
    };
    kv.put(guid, stale("ghost-node").into()).await.unwrap();
    let err = client.request(guid, None, req(), WAIT).await.unwrap_err();
    assert!(matches!(err, TunnelCallError::NotConnected(_)), "{err:?}");
    // Presence naming a live node that does not hold the device: the node says so.
    kv.put(guid, stale("node-a").into()).await.unwrap();
    let err = client.request(guid, None, req(), WAIT).await.unwrap_err();
    assert!(matches!(err, TunnelCallError::NotConnected(_)), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "immediate, never a timeout"
    );
    ingress.shutdown().await;
    env.cleanup().await;
}

/// Sends a request the device can never complete; expects `expected` within `within`.
async fn incomplete_request_fails(
    env: &TestEnv,
    guid: &str,
    expected: TunnelError,
    within: Duration,
) {
    let started = std::time::Instant::now();
    let partial = bytes::Bytes::from_static(INCOMPLETE_REQUEST);
    match env.tunnel().await.request(guid, None, partial, WAIT).await {
        Err(TunnelCallError::Failed { error, .. }) => assert_eq!(error, expected),
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        started.elapsed() < within,
        "answered after {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_not_answering_gets_a_clear_error_within_the_deadline() {
    let env = TestEnv::new("drop").await;
    let mut config = TestEnv::ingress_config();
    config.tunnel_timeout_ms = 2_000;
    let ingress = env.start_ingress("node-a", config).await;
    let cfg = env.enrolled_fleet(ingress.local_addr(), 1, 16, "").await;
    let fleet = env.start_connected(cfg, WAIT).await;
    let guid = fleet.identities()[0].guid.clone();
    // The device waits for the rest of the request, so the ingress' deadline (2 s) fires.
    incomplete_request_fails(&env, &guid, TunnelError::Timeout, Duration::from_secs(4)).await;
    // The device is still served afterwards.
    env.assert_reachable(&guid).await;
    fleet.stop().await;
    ingress.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_dropping_mid_request_gets_device_dropped() {
    let env = TestEnv::new("reset").await;
    let ingress = env.start_ingress("node-a", TestEnv::ingress_config()).await;
    let mut cfg = env.enrolled_fleet(ingress.local_addr(), 1, 22, "").await;
    // The device resets its TCP connection 2 s after it is up.
    cfg.faults = vec![(Fault::AbruptReset(Duration::from_secs(2)), 1.0)];
    cfg.reconnect_min = Duration::from_secs(60);
    cfg.reconnect_max = Duration::from_secs(60);
    let fleet = env.start_connected(cfg, WAIT).await;
    let guid = fleet.identities()[0].guid.clone();
    // A request the device will never complete, in flight when the reset comes: answered when
    // the device drops, before the 3 s tunnel deadline.
    incomplete_request_fails(
        &env,
        &guid,
        TunnelError::DeviceDropped,
        Duration::from_secs(3),
    )
    .await;
    let gone = env.wait_events("disconnected", 1, WAIT).await;
    assert!(
        matches!(&gone[0].1.payload, Some(Payload::DeviceDisconnected(d)) if d.reason == "io_error" || d.reason == "peer_closed")
    );
    fleet.stop().await;
    ingress.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_frames_end_only_that_session() {
    let env = TestEnv::new("frames").await;
    let ingress = env.start_ingress("node-a", TestEnv::ingress_config()).await;
    let mut cfg = env.enrolled_fleet(ingress.local_addr(), 6, 17, "").await;
    cfg.devices = 3;
    let healthy = Fleet::start(cfg.clone()).unwrap();
    assert_eq!(healthy.wait_connected(3, WAIT).await, 3);
    let mut bad = cfg.clone();
    bad.first_index = 3;
    bad.devices = 1;
    bad.faults = vec![(Fault::OversizedFrame, 1.0)];
    bad.reconnect_min = Duration::from_secs(60);
    bad.reconnect_max = Duration::from_secs(60);
    let oversized = Fleet::start(bad.clone()).unwrap();
    bad.first_index = 4;
    bad.faults = vec![(Fault::GarbageFrame, 1.0)];
    let garbage = Fleet::start(bad.clone()).unwrap();
    // Split frames are reassembled: this device connects normally.
    bad.first_index = 5;
    bad.faults = vec![(Fault::SplitFrames, 1.0)];
    let split = Fleet::start(bad).unwrap();
    assert_eq!(split.wait_connected(1, WAIT).await, 1);
    let errors = env.wait_events("disconnected", 2, WAIT).await;
    assert!(errors.iter().all(|(_, e)| matches!(&e.payload, Some(Payload::DeviceDisconnected(d)) if d.reason == "protocol_error")));
    assert_eq!(ingress.metrics().protocol_errors.get(), 2);
    assert_eq!(healthy.stats().connected(), 3);
    env.wait_presence("healthy and split devices remain", WAIT, |p| p.len() == 4)
        .await;
    let guid = split.identities()[0].guid.clone();
    env.assert_reachable(&guid).await;
    for f in [healthy, oversized, garbage, split] {
        f.stop().await;
    }
    ingress.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_rsa_only_firmware_connects_unless_strict() {
    let env = TestEnv::new("tls").await;
    let default = env.start_ingress("node-a", TestEnv::ingress_config()).await;
    let mut strict_cfg = TestEnv::ingress_config();
    strict_cfg.tls_profile = TlsProfile::Strict;
    let strict = env.start_ingress("node-b", strict_cfg).await;
    let mut cfg = env.enrolled_fleet(default.local_addr(), 2, 18, "").await;
    cfg.tls = SimTls::StaticRsa;
    cfg.devices = 1;
    let old = Fleet::start(cfg.clone()).unwrap();
    assert_eq!(old.wait_connected(1, WAIT).await, 1);
    cfg.first_index = 1;
    cfg.server = strict.local_addr();
    let refused = Fleet::start(cfg).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(refused.stats().connected(), 0);
    assert!(
        refused
            .stats()
            .tls_failures
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    assert!(strict.metrics().tls_failures.get() >= 1);
    old.stop().await;
    refused.stop().await;
    default.shutdown().await;
    strict.shutdown().await;
    env.cleanup().await;
}

/// AEAD suites run on the compact record layer; CBC-only firmware keeps OpenSSL's. Both carry
/// a tunnelled request end to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_firmware_tls_carries_the_tunnel() {
    let env = TestEnv::new("records").await;
    let ingress = env.start_ingress("node-a", TestEnv::ingress_config()).await;
    let mut cfg = env.enrolled_fleet(ingress.local_addr(), 4, 19, "").await;
    let client = env.tunnel().await;
    let mut fleets = Vec::new();
    for (i, (tls, openssl_sessions)) in [
        (SimTls::Modern, 0),
        (SimTls::ModernPq, 0),
        (SimTls::StaticRsa, 0),
        (SimTls::StaticRsaCbc, 1),
    ]
    .into_iter()
    .enumerate()
    {
        cfg.tls = tls;
        cfg.devices = 1;
        cfg.first_index = i as u64;
        let fleet = Fleet::start(cfg.clone()).unwrap();
        assert_eq!(fleet.wait_connected(1, WAIT).await, 1, "{tls:?}");
        assert_eq!(
            ingress.metrics().tls_openssl_records.get(),
            openssl_sessions,
            "{tls:?}"
        );
        let id = fleet.identities()[0].clone();
        env.wait_presence("present", WAIT, |p| p.iter().any(|(g, _)| *g == id.guid))
            .await;
        let request = general_settings_request(&id.guid, None);
        let reply = client
            .request(&id.guid, None, request.into(), WAIT)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&reply).to_string();
        assert!(text.starts_with("HTTP/1.1 401"), "{tls:?}: {text}");
        fleets.push(fleet);
    }
    // Keep-alives keep flowing over both record layers.
    let before = ingress.metrics().keepalives.get();
    wait_until("keep-alives on every session", WAIT, || {
        ingress.metrics().keepalives.get() >= before + 3
    })
    .await;
    for f in fleets {
        f.stop().await;
    }
    env.wait_events("disconnected", 4, WAIT).await;
    assert_eq!(ingress.metrics().protocol_errors.get(), 0);
    ingress.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_get_on_the_cira_port_gets_the_banner() {
    let env = TestEnv::new("probe").await;
    let ingress = env.start_ingress("node-a", TestEnv::ingress_config()).await;
    let tcp = tokio::net::TcpStream::connect(ingress.local_addr())
        .await
        .unwrap();
    let mut b = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls_client()).unwrap();
    b.set_verify(openssl::ssl::SslVerifyMode::NONE);
    let ssl = b
        .build()
        .configure()
        .unwrap()
        .into_ssl("localhost")
        .unwrap();
    let mut s = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
    std::pin::Pin::new(&mut s).connect().await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.contains("must connect here using CIRA"));
    assert_eq!(ingress.metrics().http_probes.get(), 1);
    ingress.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_disconnects_devices_and_releases_presence() {
    let env = TestEnv::new("drain").await;
    let ingress = env.start_ingress("node-a", TestEnv::ingress_config()).await;
    let mut cfg = env.enrolled_fleet(ingress.local_addr(), 5, 19, "").await;
    cfg.reconnect_min = Duration::from_secs(60);
    cfg.reconnect_max = Duration::from_secs(60);
    let fleet = Fleet::start(cfg).unwrap();
    assert_eq!(fleet.wait_connected(5, WAIT).await, 5);
    env.wait_presence("5 present", WAIT, |p| p.len() == 5).await;
    let started = std::time::Instant::now();
    ingress.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "drain finishes within the grace period"
    );
    assert!(env.presence_entries().await.is_empty(), "presence released");
    let gone = env.wait_events("disconnected", 5, WAIT).await;
    assert!(gone.iter().all(
        |(_, e)| matches!(&e.payload, Some(Payload::DeviceDisconnected(d)) if d.reason == "drain")
    ));
    assert_eq!(
        fleet
            .stats()
            .server_disconnects
            .load(std::sync::atomic::Ordering::Relaxed),
        5,
        "each device got an APF DISCONNECT"
    );
    fleet.stop().await;
    env.cleanup().await;
}

/// Connects with OpenSSL defaults or static-RSA suites only; returns the server's key type.
async fn server_key_type(addr: std::net::SocketAddr, static_rsa: bool) -> openssl::pkey::Id {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut b = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls_client()).unwrap();
    b.set_verify(openssl::ssl::SslVerifyMode::NONE);
    if static_rsa {
        b.set_max_proto_version(Some(openssl::ssl::SslVersion::TLS1_2))
            .unwrap();
        b.set_cipher_list("AES128-GCM-SHA256:AES256-SHA").unwrap();
    }
    let ssl = b
        .build()
        .configure()
        .unwrap()
        .into_ssl("localhost")
        .unwrap();
    let mut s = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
    std::pin::Pin::new(&mut s).connect().await.unwrap();
    s.ssl()
        .peer_certificate()
        .unwrap()
        .public_key()
        .unwrap()
        .id()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modern_clients_get_ecdsa_and_static_rsa_firmware_gets_rsa() {
    let env = TestEnv::new("certs").await;
    let ingress = env.start_ingress("node-a", TestEnv::ingress_config()).await;
    assert_eq!(
        server_key_type(ingress.local_addr(), false).await,
        openssl::pkey::Id::EC
    );
    assert_eq!(
        server_key_type(ingress.local_addr(), true).await,
        openssl::pkey::Id::RSA
    );
    ingress.shutdown().await;
    env.cleanup().await;
}

/// Whether a TLS 1.0-only client (firmware of the AMT 6–9 era) completes a handshake.
async fn tls10_handshake(addr: std::net::SocketAddr) -> bool {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut b = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls_client()).unwrap();
    b.set_verify(openssl::ssl::SslVerifyMode::NONE);
    b.set_min_proto_version(Some(openssl::ssl::SslVersion::TLS1))
        .unwrap();
    b.set_max_proto_version(Some(openssl::ssl::SslVersion::TLS1))
        .unwrap();
    b.set_cipher_list("AES128-SHA:AES256-SHA:@SECLEVEL=0")
        .unwrap();
    let ssl = b
        .build()
        .configure()
        .unwrap()
        .into_ssl("localhost")
        .unwrap();
    let mut s = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
    std::pin::Pin::new(&mut s).connect().await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_0_only_behind_the_legacy_switch() {
    let env = TestEnv::new("legacy").await;
    let default = env.start_ingress("node-a", TestEnv::ingress_config()).await;
    let mut legacy_cfg = TestEnv::ingress_config();
    legacy_cfg.tls_profile = TlsProfile::Legacy;
    let legacy = env.start_ingress("node-b", legacy_cfg).await;
    assert!(
        !tls10_handshake(default.local_addr()).await,
        "default profile refuses TLS 1.0"
    );
    assert!(
        tls10_handshake(legacy.local_addr()).await,
        "legacy profile accepts TLS 1.0"
    );
    default.shutdown().await;
    legacy.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_nodes_devices_are_reaped_once_with_node_lost() {
    use homeport_contracts::presence::{nodes_bucket, NodeHeartbeat, Presence};
    let env = TestEnv::new("reaper").await;
    let a = env.start_ingress("node-a", TestEnv::ingress_config()).await;
    let b = env.start_ingress("node-b", TestEnv::ingress_config()).await;
    // A real device on node-a, which stays.
    let cfg = env.enrolled_fleet(a.local_addr(), 1, 41, "acme").await;
    let fleet = env.start_connected(cfg, WAIT).await;
    // A node that beat once and died with three devices recorded.
    let nodes = nodes_bucket(&env.js, &env.names, Duration::from_secs(3), 1)
        .await
        .unwrap();
    let beat = NodeHeartbeat {
        node: "node-dead".into(),
        sessions: 3,
        at: "2026-12-06T00:00:00Z".into(),
        draining: false,
    };
    nodes
        .put("node-dead", serde_json::to_vec(&beat).unwrap().into())
        .await
        .unwrap();
    let presence = env.presence().await;
    let lost: Vec<String> = (0..3)
        .map(|i| format!("00000000-0000-4000-8000-00000000dea{i}"))
        .collect();
    for (i, guid) in lost.iter().enumerate() {
        let p = Presence {
            node: "node-dead".into(),
            session: format!("{i:016x}"),
            tenant: "acme".into(),
            connected_at: "2026-12-06T00:00:00Z".into(),
            remote: "192.0.2.1:1".into(),
        };
        presence
            .put(guid, serde_json::to_vec(&p).unwrap().into())
            .await
            .unwrap();
    }
    env.wait_presence("the lost node's entries are gone", WAIT, |p| {
        p.iter().all(|(_, e)| e.node != "node-dead")
    })
    .await;
    let gone = env.wait_events("disconnected", 3, WAIT).await;
    // Both surviving nodes watch; exactly one acts: no second event per device.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let all: Vec<_> = env
        .events()
        .await
        .into_iter()
        .filter(|(s, _)| s.ends_with(".disconnected"))
        .collect();
    assert_eq!(all.len(), 3, "{all:?}");
    for (_, ev) in &gone {
        assert!(lost.contains(&ev.device_guid));
        match &ev.payload {
            Some(Payload::DeviceDisconnected(d)) => {
                assert_eq!(d.reason, "node-lost");
                assert_eq!(d.node, "node-dead");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        a.metrics().presence_reaped.get() + b.metrics().presence_reaped.get(),
        3
    );
    // The live node's device was not touched.
    let guid = fleet.identities()[0].guid.clone();
    assert!(env
        .presence_entries()
        .await
        .iter()
        .any(|(g, e)| *g == guid && e.node == "node-a"));
    fleet.stop().await;
    a.shutdown().await;
    b.shutdown().await;
    env.cleanup().await;
}
