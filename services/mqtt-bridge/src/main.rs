//! `mqtt-bridge`: republishes events as Open AMT-style MQTT JSON until SIGTERM.

use std::sync::Arc;

use clap::Parser;
use homeport_mqtt_bridge::{BridgeConfig, BridgeMetrics};
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    name = "mqtt-bridge",
    version,
    about = "Homeport events as Open AMT-style MQTT JSON (mps/events)"
)]
struct Cli {
    #[command(flatten)]
    common: homeport_runtime::CommonArgs,
    #[command(flatten)]
    bridge: BridgeConfig,
}

fn main() {
    let cli = Cli::parse();
    let valid = cli.common.validate();
    let log = cli.common.logging();
    homeport_runtime::run_main("mqtt-bridge", valid, &log, || run(cli));
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let nats = cli
        .common
        .connect_nats(
            homeport_contracts::access::Role::Bridge,
            "mqtt-bridge",
            std::time::Duration::from_secs(30),
        )
        .await?;
    let cancel = CancellationToken::new();
    let metrics = Arc::new(BridgeMetrics::default());
    let health = homeport_runtime::bind(cli.bridge.health_listen, "health port").await?;
    tokio::spawn(homeport_telemetry::serve_health(
        health,
        Arc::new(homeport_mqtt_bridge::Observed {
            metrics: metrics.clone(),
            nats: nats.clone(),
        }),
        cancel.clone(),
    ));
    let task = tokio::spawn(homeport_mqtt_bridge::run(
        async_nats::jetstream::new(nats),
        cli.common.names(),
        cli.common.stream_limits(),
        cli.bridge.clone(),
        metrics,
        cancel.clone(),
    ));
    homeport_runtime::shutdown_signal().await;
    cancel.cancel();
    let _ = task.await;
    Ok(())
}
