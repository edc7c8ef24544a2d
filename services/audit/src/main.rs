//! `audit`: parses configuration, connects the dependencies, stores events and serves
//! AuditService until SIGTERM.

use clap::Parser;
use homeport_audit::{Audit, AuditConfig, AuditParts};
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    name = "audit",
    version,
    about = "Homeport audit: every fleet event, stored once, queryable and live"
)]
struct Cli {
    #[command(flatten)]
    common: homeport_runtime::CommonArgs,
    #[command(flatten)]
    audit: AuditConfig,
}

fn main() {
    let cli = Cli::parse();
    let valid = cli
        .common
        .validate()
        .and_then(|()| cli.audit.validate().map_err(anyhow::Error::msg));
    let log = cli.common.logging();
    homeport_runtime::run_main("audit", valid, &log, || run(cli));
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let auth = cli.audit.jwt.authenticator()?;
    let store = cli.common.open_store().await?;
    let nats = cli
        .common
        .connect_nats(
            homeport_contracts::access::Role::Audit,
            "audit",
            std::time::Duration::from_secs(30),
        )
        .await?;
    let listener = homeport_runtime::bind(cli.audit.grpc_listen, "gRPC port").await?;
    let health = homeport_runtime::bind(cli.audit.health_listen, "health port").await?;
    let audit = Audit::start(AuditParts {
        config: cli.audit.clone(),
        names: cli.common.names(),
        nats,
        store,
        auth,
        stream_limits: cli.common.stream_limits(),
    });
    let stop_health = CancellationToken::new();
    tokio::spawn(homeport_telemetry::serve_health(
        health,
        audit.observable(),
        stop_health.clone(),
    ));
    tracing::info!(listen = %cli.audit.grpc_listen, "storing events and serving AuditService");
    audit
        .serve(listener, homeport_runtime::shutdown_signal())
        .await?;
    tracing::info!("shutdown requested");
    audit.shutdown().await;
    stop_health.cancel();
    Ok(())
}
