//! `mps-command`: parses configuration, connects the dependencies, serves gRPC until SIGTERM.

use clap::Parser;
use homeport_mps_command::{CommandConfig, CommandParts, MpsCommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    name = "mps-command",
    version,
    about = "Homeport device-management gRPC API"
)]
struct Cli {
    #[command(flatten)]
    common: homeport_runtime::CommonArgs,
    #[command(flatten)]
    command: CommandConfig,
}

fn main() {
    let cli = Cli::parse();
    let valid = cli
        .common
        .validate()
        .and_then(|()| cli.command.validate().map_err(anyhow::Error::msg));
    let log = cli.common.logging();
    homeport_runtime::run_main("mps-command", valid, &log, || run(cli));
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let auth = cli.command.jwt.authenticator()?;
    let instance = format!("{:08x}", fastrand::u32(..));
    let secrets = cli.common.open_secrets().await?;
    let store = cli.common.open_store().await?;
    let nats = cli
        .common
        .connect_nats(
            homeport_contracts::access::Role::Command,
            &format!("mps-command/{instance}"),
            std::time::Duration::from_secs(30),
        )
        .await?;
    let listener = homeport_runtime::bind(cli.command.grpc_listen, "gRPC port").await?;
    let health = homeport_runtime::bind(cli.command.health_listen, "health port").await?;
    let service = MpsCommand::start(CommandParts {
        config: cli.command.clone(),
        instance,
        names: cli.common.names(),
        nats,
        store,
        secrets,
        auth,
        stream_limits: cli.common.stream_limits(),
    })
    .await?;
    let stop_health = CancellationToken::new();
    tokio::spawn(homeport_telemetry::serve_health(
        health,
        service.observable(),
        stop_health.clone(),
    ));
    tracing::info!(listen = %cli.command.grpc_listen, "serving gRPC");
    service
        .serve(listener, homeport_runtime::shutdown_signal())
        .await?;
    tracing::info!("shutdown requested");
    service.shutdown().await;
    stop_health.cancel();
    Ok(())
}
