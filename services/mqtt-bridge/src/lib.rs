//! The MQTT bridge (optional): republishes Homeport's events as Open AMT-style JSON
//! (`{type, message, methods, guid, timestamp}` on `mps/events`) for dashboards built for the
//! reference MPS. Unlike the reference, delivery is at-least-once: a durable JetStream consumer
//! acks an event only after the broker's PUBACK, and disconnects are published too.

pub mod mqtt;

use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use futures_util::StreamExt;
use homeport_contracts::proto::event::Payload;
use homeport_contracts::{proto, Names};
use homeport_telemetry::{Counter, Gauge};
use prost::Message as _;
use tokio_util::sync::CancellationToken;

#[derive(clap::Args, Clone, Debug)]
pub struct BridgeConfig {
    /// MQTT broker, host:port.
    #[arg(long, env = "HOMEPORT_MQTT_ADDRESS", default_value = "127.0.0.1:1883")]
    pub mqtt_address: String,
    /// Topic every event goes to (the reference MPS uses mps/events).
    #[arg(long, env = "HOMEPORT_MQTT_TOPIC", default_value = "mps/events")]
    pub topic: String,
    /// Durable consumer the bridge replicas share.
    /// With NATS permissions (deploy/nats), the bridge's user may only use the consumer named
    /// there (`mqtt-bridge`).
    #[arg(long, env = "HOMEPORT_MQTT_CONSUMER", default_value = homeport_contracts::access::BRIDGE_CONSUMER)]
    pub consumer: String,
    /// Only this tenant's events ("" is the default tenant); every tenant's when not set.
    /// The Open AMT JSON has no tenant field, so a multi-tenant deployment runs one bridge (and
    /// topic) per tenant.
    #[arg(long, env = "HOMEPORT_MQTT_TENANT")]
    pub tenant: Option<String>,
    /// Health and metrics listen address (/healthz, /readyz, /metrics).
    #[arg(long, env = "HOMEPORT_HEALTH_LISTEN", default_value = "127.0.0.1:9436")]
    pub health_listen: std::net::SocketAddr,
    /// MQTT client id.
    #[arg(
        long,
        env = "HOMEPORT_MQTT_CLIENT_ID",
        default_value = "homeport-mqtt-bridge"
    )]
    pub client_id: String,
}

#[derive(Default)]
pub struct BridgeMetrics {
    pub published: Counter,
    pub skipped: Counter,
    pub broker_errors: Counter,
    /// 1 while connected to the broker.
    pub connected: Gauge,
}

/// `/readyz` and `/metrics` of the bridge.
pub struct Observed {
    pub metrics: std::sync::Arc<BridgeMetrics>,
    pub nats: async_nats::Client,
}

impl homeport_telemetry::Observable for Observed {
    fn ready(&self) -> Result<(), String> {
        if self.metrics.connected.get() != 1 {
            return Err("MQTT broker not connected".into());
        }
        homeport_contracts::nats_ready(&self.nats)
    }

    fn metrics(&self) -> String {
        let m = &self.metrics;
        let mut e = homeport_telemetry::Exposition::default();
        e.counter(
            "homeport_mqtt_published_total",
            "Events published to the broker (PUBACKed).",
            m.published.get(),
        );
        e.counter(
            "homeport_mqtt_skipped_total",
            "Messages that are not events (terminated).",
            m.skipped.get(),
        );
        e.counter(
            "homeport_mqtt_broker_errors_total",
            "Broker or stream interruptions (retried).",
            m.broker_errors.get(),
        );
        e.gauge(
            "homeport_mqtt_connected",
            "1 while connected to the broker.",
            m.connected.get(),
        );
        e.finish()
    }
}

fn method_of(action: &str) -> String {
    match action {
        "GetAuditLog" => "AMT_AuditLog",
        "GetEventLog" => "AMT_EventLog",
        "GetGeneralSettings" => "AMT_GeneralSettings",
        "GetHardwareInfo" => "AMT_HardwareInfo",
        "GetPowerState" | "GetPowerStates" => "AMT_PowerState",
        "GetVersion" => "AMT_Version",
        "GetPowerCapabilities" => "AMT_BootCapabilities",
        "PowerAction" => "AMT_PowerAction",
        "SetBootOptions" => "AMT_BootSettingData",
        "GetFeatures" => "AMT_GetFeatures",
        "SetFeatures" => "AMT_SetFeatures",
        other => other,
    }
    .to_string()
}

/// The Open AMT-style JSON of one event.
pub fn to_open_amt(ev: &proto::Event) -> serde_json::Value {
    let (kind, message, method) = match &ev.payload {
        Some(Payload::DeviceConnected(_)) => (
            "success",
            "CIRA Connection Established".to_string(),
            "CIRA_Connected".to_string(),
        ),
        Some(Payload::DeviceDisconnected(d)) => (
            "success",
            format!("CIRA Connection Closed ({})", d.reason),
            "CIRA_Disconnected".to_string(),
        ),
        Some(Payload::DeviceAuthFailed(a)) => (
            "fail",
            format!("CIRA Connection Failed ({})", a.reason),
            "CIRA_Connected".to_string(),
        ),
        Some(Payload::CommandExecuted(c)) if c.result == "ok" => (
            "success",
            format!("{} succeeded", c.action),
            method_of(&c.action),
        ),
        Some(Payload::CommandExecuted(c)) => (
            "fail",
            format!("{} failed: {}", c.action, c.detail),
            method_of(&c.action),
        ),
        Some(Payload::CommandRequested(c)) => (
            "request",
            format!("{} requested", c.action),
            method_of(&c.action),
        ),
        Some(Payload::DeviceRegistryChanged(r)) => (
            "success",
            format!("Device {}", r.change),
            format!("Device_{}", r.change),
        ),
        // The reference's rps wording (openamt-rps.md §5): "Failed to activate",
        // "Device activated in <status>", method "Activator".
        Some(Payload::Provisioning(p)) if p.outcome == "failed" => (
            "fail",
            format!(
                "Failed to {}: {}",
                p.flow,
                p.status.get("Status").map_or("", String::as_str)
            ),
            "Activator".to_string(),
        ),
        Some(Payload::Provisioning(p)) if p.outcome == "activated" => (
            "success",
            format!(
                "Device activated in {}",
                p.status.get("Status").map_or("", String::as_str)
            ),
            "Activator".to_string(),
        ),
        Some(Payload::Provisioning(p)) => (
            "success",
            format!(
                "{}: {}",
                p.flow,
                p.status.get("Status").map_or("", String::as_str)
            ),
            "Activator".to_string(),
        ),
        None => ("success", ev.kind.clone(), ev.kind.clone()),
    };
    let mut v = serde_json::json!({
        "type": kind,
        "message": message,
        "methods": [method],
        "timestamp": ev.time_unix_nanos / 1_000_000,
    });
    if !ev.device_guid.is_empty() {
        v["guid"] = serde_json::Value::String(ev.device_guid.clone());
    }
    v
}

/// Runs until `cancel`, reconnecting to NATS and the broker as needed.
pub async fn run(
    js: jetstream::Context,
    names: Names,
    limits: homeport_contracts::events::StreamLimits,
    config: BridgeConfig,
    metrics: std::sync::Arc<BridgeMetrics>,
    cancel: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    while !cancel.is_cancelled() {
        let result = bridge(&js, &names, &limits, &config, &metrics, &cancel).await;
        metrics.connected.set(0);
        match result {
            Ok(()) => return,
            Err(e) => {
                metrics.broker_errors.inc();
                tracing::warn!(error = %e, "MQTT bridge interrupted; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn bridge(
    js: &jetstream::Context,
    names: &Names,
    limits: &homeport_contracts::events::StreamLimits,
    config: &BridgeConfig,
    metrics: &BridgeMetrics,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let consumer = homeport_contracts::events::durable_consumer(
        js,
        names,
        limits,
        &config.consumer,
        Duration::from_secs(30),
        1000,
    )
    .await
    .map_err(anyhow::Error::msg)?;
    let mut messages = consumer.messages().await?;
    let keepalive = Duration::from_secs(30);
    let mut client = mqtt::Client::connect(
        &config.mqtt_address,
        &config.client_id,
        keepalive,
        Duration::from_secs(10),
    )
    .await?;
    tracing::info!(broker = %config.mqtt_address, topic = %config.topic, "MQTT bridge connected");
    metrics.connected.set(1);
    loop {
        let next = tokio::select! {
            _ = cancel.cancelled() => {
                client.disconnect().await;
                return Ok(());
            }
            _ = tokio::time::sleep(keepalive / 2) => {
                client.ping().await?;
                continue;
            }
            m = messages.next() => m,
        };
        let Some(m) = next else {
            anyhow::bail!("event stream ended")
        };
        let m = m.map_err(|e| anyhow::anyhow!("{e}"))?;
        match proto::Event::decode(m.payload.as_ref()) {
            Ok(ev) if config.tenant.as_ref().is_some_and(|t| *t != ev.tenant) => {
                // Another tenant's event: not for this bridge's topic.
                let _ = m.ack().await;
            }
            Ok(ev)
                if !ev.id.is_empty() && names.event_subject_is_tenants(&m.subject, &ev.tenant) =>
            {
                let json = to_open_amt(&ev).to_string();
                // Not acked until the broker has it: a broker outage loses nothing.
                client.publish(&config.topic, json.as_bytes()).await?;
                metrics.published.inc();
                let _ = m.ack().await;
            }
            _ => {
                // Not an event, or one filed under another tenant's subject.
                metrics.skipped.inc();
                let _ = m.ack_with(AckKind::Term).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_amt_shapes() {
        let mut ev = homeport_contracts::events::envelope("t", "g", "connected", "x");
        ev.payload = Some(Payload::DeviceConnected(Default::default()));
        let v = to_open_amt(&ev);
        assert_eq!(v["type"], "success");
        assert_eq!(v["methods"][0], "CIRA_Connected");
        assert_eq!(v["guid"], "g");
        assert!(v["timestamp"].as_i64().unwrap_or(0) > 1_600_000_000_000);
        ev.payload = Some(Payload::CommandExecuted(proto::CommandExecuted {
            action: "GetHardwareInfo".into(),
            result: "UNAVAILABLE".into(),
            detail: "not connected".into(),
            ..Default::default()
        }));
        let v = to_open_amt(&ev);
        assert_eq!(
            (v["type"].as_str(), v["methods"][0].as_str()),
            (Some("fail"), Some("AMT_HardwareInfo"))
        );
        ev.payload = Some(Payload::Provisioning(proto::Provisioning {
            flow: "activate".into(),
            outcome: "activated".into(),
            status: [("Status".to_string(), "Client control mode.".to_string())].into(),
            ..Default::default()
        }));
        let v = to_open_amt(&ev);
        assert_eq!(v["message"], "Device activated in Client control mode.");
        assert_eq!(v["methods"][0], "Activator");
        ev.payload = Some(Payload::Provisioning(proto::Provisioning {
            flow: "activate".into(),
            outcome: "failed".into(),
            status: [("Status".to_string(), "Profile p not found".to_string())].into(),
            ..Default::default()
        }));
        let v = to_open_amt(&ev);
        assert_eq!(v["type"], "fail");
        assert_eq!(v["message"], "Failed to activate: Profile p not found");
        ev.device_guid.clear();
        assert!(to_open_amt(&ev).get("guid").is_none());
    }
}
