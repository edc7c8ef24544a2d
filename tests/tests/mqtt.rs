//! The MQTT bridge against the machine's Mosquitto (and a private one for an outage): events
//! from JetStream arrive as Open AMT-style JSON, and a broker outage loses nothing.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use homeport_contracts::proto::event::Payload;
use homeport_contracts::{events, proto};
use homeport_mqtt_bridge::{BridgeConfig, BridgeMetrics};
use homeport_tests::{wait_until, TestEnv};
use prost::Message as _;
use tokio::io::AsyncBufReadExt;
use tokio_util::sync::CancellationToken;

/// `mosquitto_sub` printing up to `n` messages of `topic` on `port`, one per line.
async fn subscriber(port: u16, topic: &str, n: usize) -> tokio::process::Child {
    let child = tokio::process::Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            topic,
            "-q",
            "1",
            "-C",
            &n.to_string(),
            "-W",
            "60",
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto_sub (apt-get install mosquitto-clients)");
    // Let it subscribe before anything is published (messages are not retained).
    tokio::time::sleep(Duration::from_millis(700)).await;
    child
}

async fn lines(child: tokio::process::Child, n: usize) -> Vec<serde_json::Value> {
    let out = child.stdout.unwrap();
    let mut reader = tokio::io::BufReader::new(out).lines();
    let mut got = Vec::new();
    while got.len() < n {
        match tokio::time::timeout(Duration::from_secs(30), reader.next_line()).await {
            Ok(Ok(Some(l))) => got.push(serde_json::from_str(&l).unwrap()),
            other => panic!("after {} of {n} messages: {other:?}", got.len()),
        }
    }
    got
}

async fn publish(env: &TestEnv, guid: &str, payload: Payload, kind: &str) {
    let mut ev = events::envelope("acme", guid, kind, "test");
    ev.payload = Some(payload);
    env.publish_raw(
        &env.names.device_event("acme", guid, kind),
        &ev.id,
        ev.encode_to_vec(),
    )
    .await;
}

fn start_bridge(
    env: &TestEnv,
    port: u16,
    topic: &str,
) -> (
    CancellationToken,
    Arc<BridgeMetrics>,
    tokio::task::JoinHandle<()>,
) {
    let cancel = CancellationToken::new();
    let metrics = Arc::new(BridgeMetrics::default());
    let task = tokio::spawn(homeport_mqtt_bridge::run(
        env.js.clone(),
        env.names.clone(),
        Default::default(),
        BridgeConfig {
            mqtt_address: format!("127.0.0.1:{port}"),
            topic: topic.to_string(),
            consumer: "mqtt-bridge".into(),
            client_id: format!("hp-test-{}", env.label),
            tenant: Some("acme".into()),
            health_listen: "127.0.0.1:0".parse().unwrap(),
        },
        metrics.clone(),
        cancel.clone(),
    ));
    (cancel, metrics, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_as_open_amt_json() {
    let env = TestEnv::new("mqtt").await;
    let topic = format!("homeport-test/{}", env.names.prefix());
    let sub = subscriber(1883, &topic, 3).await;
    let g = "00000000-0000-0000-0000-00000000000a";
    publish(
        &env,
        g,
        Payload::DeviceConnected(Default::default()),
        "connected",
    )
    .await;
    publish(
        &env,
        g,
        Payload::CommandExecuted(proto::CommandExecuted {
            action: "GetHardwareInfo".into(),
            result: "ok".into(),
            ..Default::default()
        }),
        "GetHardwareInfo",
    )
    .await;
    // Another tenant's event stays off this tenant's topic.
    let mut other = events::envelope("evil", g, "connected", "test");
    other.payload = Some(Payload::DeviceConnected(Default::default()));
    env.publish_raw(
        &env.names.device_event("evil", g, "connected"),
        &other.id,
        other.encode_to_vec(),
    )
    .await;
    publish(
        &env,
        g,
        Payload::DeviceDisconnected(proto::DeviceDisconnected {
            reason: "idle_timeout".into(),
            ..Default::default()
        }),
        "disconnected",
    )
    .await;
    // Garbage on the subject is skipped, not forwarded.
    env.publish_raw(
        &env.names.device_event("acme", g, "connected"),
        "junk",
        vec![0xff, 0x00],
    )
    .await;
    let (cancel, metrics, task) = start_bridge(&env, 1883, &topic);
    let got = lines(sub, 3).await;
    assert_eq!(metrics.connected.get(), 1);
    assert_eq!(got[0]["methods"][0], "CIRA_Connected");
    assert_eq!(got[0]["type"], "success");
    assert_eq!(got[0]["guid"], g);
    assert_eq!(got[1]["methods"][0], "AMT_HardwareInfo");
    assert_eq!(got[2]["message"], "CIRA Connection Closed (idle_timeout)");
    assert!(got
        .iter()
        .all(|v| v["timestamp"].as_i64().unwrap() > 1_600_000_000_000));
    wait_until("the garbage is skipped", Duration::from_secs(10), || {
        metrics.skipped.get() >= 1
    })
    .await;
    cancel.cancel();
    let _ = task.await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_loses_nothing() {
    let env = TestEnv::new("mqttout").await;
    // The bridge dials a proxy that is cut (the broker is "down"); the broker comes back
    // behind it once a subscriber listens, so nothing races the subscription.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let proxy = homeport_tests::audit::TcpProxy::start(([127, 0, 0, 1], port).into()).await;
    proxy.cut();
    let topic = "homeport-test/outage";
    let (cancel, metrics, task) = start_bridge(&env, proxy.addr.port(), topic);
    for i in 0..5u32 {
        publish(
            &env,
            &format!("00000000-0000-0000-0000-{i:012}"),
            Payload::DeviceConnected(Default::default()),
            "connected",
        )
        .await;
    }
    wait_until(
        "the bridge notices the missing broker",
        Duration::from_secs(10),
        || metrics.broker_errors.get() >= 1,
    )
    .await;
    assert_eq!(metrics.published.get(), 0);
    let mut broker = tokio::process::Command::new("mosquitto")
        .args(["-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sub = subscriber(port, topic, 5).await;
    proxy.restore();
    let got = lines(sub, 5).await;
    let guids: Vec<&str> = got.iter().map(|v| v["guid"].as_str().unwrap()).collect();
    assert_eq!(
        guids,
        (0..5u32)
            .map(|i| format!("00000000-0000-0000-0000-{i:012}"))
            .collect::<Vec<_>>()
    );
    cancel.cancel();
    let _ = task.await;
    let _ = broker.kill().await;
    env.cleanup().await;
}
