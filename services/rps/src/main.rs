//! `rps`: parses configuration, connects the dependencies, serves rpc clients and the admin
//! API until SIGTERM.

use clap::Parser;
use homeport_rps::{Rps, RpsConfig, RpsParts};
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    name = "rps",
    version,
    about = "Homeport remote provisioning (rpc clients, protocol 4.0.0)"
)]
struct Cli {
    #[command(flatten)]
    common: homeport_runtime::CommonArgs,
    #[command(flatten)]
    rps: RpsConfig,
}

fn main() {
    let cli = Cli::parse();
    let valid = cli
        .common
        .validate()
        .and_then(|()| cli.rps.validate().map_err(anyhow::Error::msg));
    let log = cli.common.logging();
    homeport_runtime::run_main("rps", valid, &log, || run(cli));
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let auth = cli.rps.jwt.authenticator()?;
    let instance = format!("{:08x}", fastrand::u32(..));
    let secrets = cli.common.open_secrets().await?;
    let store = cli.common.open_store().await?;
    let nats = cli
        .common
        .connect_nats(
            homeport_contracts::access::Role::Rps,
            &format!("rps/{instance}"),
            std::time::Duration::from_secs(30),
        )
        .await?;
    let clients = homeport_runtime::bind(cli.rps.listen, "the rpc listener").await?;
    let grpc = homeport_runtime::bind(cli.rps.grpc_listen, "gRPC port").await?;
    let health = homeport_runtime::bind(cli.rps.health_listen, "health port").await?;
    let grace = cli.rps.flow_timeout();
    let service = Rps::start(RpsParts {
        config: cli.rps.clone(),
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
    service.serve_clients(clients);
    tracing::info!(clients = %cli.rps.listen, admin = %cli.rps.grpc_listen, "serving");
    service
        .serve_admin(grpc, homeport_runtime::shutdown_signal())
        .await?;
    tracing::info!("shutdown requested; letting flows in progress finish");
    service.shutdown(grace).await;
    stop_health.cancel();
    Ok(())
}
