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
    let log = cli.common.log.clone();
    homeport_runtime::run_main("mqtt-bridge", valid, &log, || run(cli));
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let nats = cli
        .common
        .connect_nats("mqtt-bridge", std::time::Duration::from_secs(30))
        .await?;
    let cancel = CancellationToken::new();
    let task = tokio::spawn(homeport_mqtt_bridge::run(
        async_nats::jetstream::new(nats),
        cli.common.names(),
        cli.common.stream_limits(),
        cli.bridge.clone(),
        Arc::new(BridgeMetrics::default()),
        cancel.clone(),
    ));
    homeport_runtime::shutdown_signal().await;
    cancel.cancel();
    let _ = task.await;
    Ok(())
}
