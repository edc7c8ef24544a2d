//! A NATS outage: connected devices stay connected, devices can still log in, readiness says
//! what is wrong, and once NATS is back presence and events catch up with nothing lost or doubled.

use std::time::Duration;

use homeport_amt_sim::Fleet;
use homeport_telemetry::Observable;
use homeport_tests::{wait_until, PrivateNats, TestEnv};

const WAIT: Duration = Duration::from_secs(40);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_outage_keeps_devices_and_catches_up() {
    let mut nats = PrivateNats::start();
    let env = TestEnv::with_nats("outage", &nats.url()).await;
    let ingress = env.start_ingress("node-a", TestEnv::ingress_config()).await;
    let observable = ingress.observable();
    let mut cfg = env
        .enrolled_fleet(ingress.local_addr(), 4, 31, "acme")
        .await;
    cfg.devices = 2;
    let before = env.start_connected(cfg.clone(), WAIT).await;

    nats.stop();
    wait_until("readiness reports NATS down", WAIT, || {
        observable.ready().is_err()
    })
    .await;
    let during_cfg = {
        let mut c = cfg.clone();
        c.first_index = 2;
        c
    };
    // Logins do not need NATS: the registry and the secrets are elsewhere.
    let during = Fleet::start(during_cfg).unwrap();
    assert_eq!(during.wait_connected(2, WAIT).await, 2);
    assert_eq!(
        before.stats().connected(),
        2,
        "connected devices stay connected"
    );

    nats.restart();
    wait_until("readiness recovers", WAIT, || observable.ready().is_ok()).await;
    env.wait_presence("all four present again", WAIT, |p| p.len() == 4)
        .await;
    let connected = env.wait_events("connected", 4, WAIT).await;
    let ids: std::collections::HashSet<_> = connected.iter().map(|(_, e)| e.id.clone()).collect();
    assert_eq!(connected.len(), 4, "exactly one connected event per device");
    assert_eq!(ids.len(), 4);
    // A device that logged in during the outage is reachable through the tunnel.
    env.assert_reachable(&during.identities()[0].guid).await;
    // Sessions that began during the outage still clean up after themselves: each knows the
    // presence revision it wrote, so its entry goes when it ends.
    before.stop().await;
    during.stop().await;
    env.wait_presence("no presence left", WAIT, |p| p.is_empty())
        .await;
    ingress.shutdown().await;
    env.cleanup().await;
}
