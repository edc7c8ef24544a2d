//! Hostile peers against a real ingress over real sockets: each attack is bounded, and each
//! test shows what the ingress does about it and that legitimate devices are not hurt.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::net::IpAddr;
use std::time::Duration;

use homeport_amt_sim::hostile::{self, Held};
use homeport_amt_sim::Fleet;
use homeport_contracts::proto::event::Payload;
use homeport_tests::*;

const WAIT: Duration = Duration::from_secs(30);

/// The hostile connections come from this loopback address, the simulated fleet from
/// 127.0.0.1, so per-source limits can tell them apart.
fn attacker() -> Option<IpAddr> {
    Some("127.0.0.2".parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logged_in_peer_flooding_key_updates_without_reading_is_dropped() {
    let env = TestEnv::new("keyupdate").await;
    let mut config = TestEnv::ingress_config();
    config.write_timeout_secs = 2;
    // Timers that would otherwise end the session stay far away.
    config.keepalive_interval_secs = 60;
    config.idle_timeout_secs = 600;
    let ingress = env.start_ingress("node-a", config).await;
    let cfg = env
        .enrolled_fleet(ingress.local_addr(), 1, 31, "acme")
        .await;
    let device = cfg.identities().next().unwrap();
    let addr = ingress.local_addr();
    let held = tokio::task::spawn_blocking(move || {
        hostile::keyupdate_flood(
            addr,
            Some(&device),
            Duration::from_secs(40),
            Duration::from_micros(100),
        )
    })
    .await
    .unwrap()
    .unwrap();
    assert!(held.closed(), "the session was still open: {held:?}");
    let gone = env.wait_events("disconnected", 1, WAIT).await;
    // The KeyUpdate budget ends it first; were it larger, the write deadline would (the
    // transport's own test covers that).
    match &gone[0].1.payload {
        Some(Payload::DeviceDisconnected(d)) => {
            assert_eq!(d.reason, "io_error", "{d:?}");
            assert!(
                d.detail.contains("KeyUpdates") || d.detail.contains("write timed out"),
                "{d:?}"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    ingress.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_data_before_login_is_refused_on_its_header() {
    let env = TestEnv::new("bigframe").await;
    let ingress = env.start_ingress("node-a", TestEnv::ingress_config()).await;
    let addr = ingress.local_addr();
    let (held, sent) = tokio::task::spawn_blocking(move || {
        hostile::preauth_bigframe(addr, attacker(), Duration::from_secs(20))
    })
    .await
    .unwrap()
    .unwrap();
    assert!(held.closed(), "{held:?}");
    // The header alone ends the session: the server buffers none of the announced MiB (what
    // the client managed to send before noticing is in flight, not buffered).
    assert!(sent < 256 * 1024, "{sent} bytes accepted");
    assert_eq!(ingress.metrics().protocol_errors.get(), 1);
    ingress.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_hold_no_permit_and_are_capped_per_source() {
    let env = TestEnv::new("slowhs").await;
    let mut config = TestEnv::ingress_config();
    config.max_handshakes_per_source = 100;
    config.handshake_timeout_secs = 60;
    let ingress = env.start_ingress("node-a", config).await;
    let addr = ingress.local_addr();
    // 120 connections from one address that each send one byte of a ClientHello and stall:
    // 100 are held (more than the node's 64 handshake permits), 20 are refused at once.
    let stalled: Vec<_> = (0..120)
        .map(|_| {
            tokio::task::spawn_blocking(move || {
                hostile::slow_handshake(addr, attacker(), Duration::from_secs(25))
            })
        })
        .collect();
    let metrics = ingress.metrics();
    wait_until("100 stalled connections held", WAIT, || {
        metrics.connections_open.get() == 100 && metrics.connections_refused_source.get() == 20
    })
    .await;
    // A real device still gets a handshake while all of them stall: waiting for the network
    // holds no permit.
    let cfg = env
        .enrolled_fleet(ingress.local_addr(), 1, 32, "acme")
        .await;
    let fleet = Fleet::start(cfg).unwrap();
    assert_eq!(fleet.wait_connected(1, WAIT).await, 1);
    assert!(
        metrics.connections_open.get() >= 100,
        "the device connected while the stalled handshakes were still held"
    );
    fleet.stop().await;
    for s in stalled {
        let held = s.await.unwrap().unwrap();
        // The refused ones were closed at accept; the others are dropped at the TLS deadline.
        assert!(held.closed(), "{held:?}");
    }
    ingress.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handshake_timeout_runs_from_accept_whatever_the_phase() {
    let env = TestEnv::new("hstimeout").await;
    let mut config = TestEnv::ingress_config();
    config.handshake_timeout_secs = 2;
    let ingress = env.start_ingress("node-a", config).await;
    let addr = ingress.local_addr();
    let held = tokio::task::spawn_blocking(move || {
        hostile::slow_handshake(addr, attacker(), Duration::from_secs(20))
    })
    .await
    .unwrap()
    .unwrap();
    // Dropped at the 2 s handshake deadline, not at the TLS phase's own 10 s.
    match held {
        Held::ClosedAfter(after) => assert!(after < Duration::from_secs(8), "{after:?}"),
        Held::StillOpen => panic!("never dropped"),
    }
    ingress.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_flood_adds_one_event_per_source_and_interval_and_counts_every_try() {
    let env = TestEnv::new("loginflood").await;
    let ingress = env.start_ingress("node-a", TestEnv::ingress_config()).await;
    let addr = ingress.local_addr();
    let started = std::time::Instant::now();
    let tries: Vec<_> = (0..30)
        .map(|_| {
            tokio::task::spawn_blocking(move || {
                hostile::random_guid_login(addr, attacker(), Duration::from_secs(30))
            })
        })
        .collect();
    let mut refused = 0u32;
    for t in tries {
        refused += u32::from(t.await.unwrap().unwrap());
    }
    let lasted = started.elapsed();
    assert_eq!(refused, 30);
    // Every failure is counted, in few events: at most one per 2 s interval (plus the one
    // that closes the last interval).
    let deadline = std::time::Instant::now() + WAIT;
    let (events, counted) = loop {
        let failed: Vec<u32> = env
            .events()
            .await
            .iter()
            .filter_map(|(_, e)| match &e.payload {
                Some(Payload::DeviceAuthFailed(f)) => Some(f.failures),
                _ => None,
            })
            .collect();
        let counted: u32 = failed.iter().sum();
        if counted >= 30 || std::time::Instant::now() > deadline {
            break (failed.len(), counted);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(counted, 30, "every failure is counted once");
    let intervals = lasted.as_secs() / 2 + 2;
    assert!(
        events as u64 <= intervals,
        "{events} events for {counted} failures over {lasted:?}"
    );
    assert!(ingress.metrics().auth_failures.get() >= 30);
    ingress.shutdown().await;
    env.cleanup().await;
}
