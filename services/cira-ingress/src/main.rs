//! `cira-ingress`: parses configuration, connects the dependencies, serves until SIGTERM.

use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use homeport_cira_ingress::{tls, Ingress, IngressConfig, IngressParts};

#[derive(Parser, Debug)]
#[command(
    name = "cira-ingress",
    version,
    about = "Homeport CIRA ingress: AMT devices connect here over TLS + APF"
)]
struct Cli {
    #[command(flatten)]
    common: homeport_runtime::CommonArgs,
    #[command(flatten)]
    ingress: IngressConfig,
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = cli
        .common
        .validate()
        .and_then(|()| cli.ingress.validate().map_err(anyhow::Error::msg))
    {
        eprintln!("cira-ingress: {e:#}");
        std::process::exit(2);
    }
    homeport_telemetry::init_logging(&cli.common.log);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cira-ingress: cannot start runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run(cli)) {
        eprintln!("cira-ingress: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let node_id = cli.ingress.node_id.clone().unwrap_or_else(default_node_id);
    let secrets = cli.common.open_secrets().await?;
    let bundle = cli.ingress.certificates(&secrets).await?;
    let acceptor = tls::acceptor(cli.ingress.tls_profile, &bundle)?;
    let store = cli.common.open_store().await?;
    let nats = cli
        .common
        .connect_nats(&format!("cira-ingress/{node_id}"), Duration::from_secs(30))
        .await?;
    let listener = tokio::net::TcpListener::bind(cli.ingress.listen)
        .await
        .with_context(|| format!("binding CIRA port {}", cli.ingress.listen))?;
    let health = tokio::net::TcpListener::bind(cli.ingress.health_listen)
        .await
        .with_context(|| format!("binding health port {}", cli.ingress.health_listen))?;
    let ingress = Ingress::start(
        IngressParts {
            config: cli.ingress.clone(),
            node_id,
            names: cli.common.names(),
            nats,
            store,
            secrets,
            tls: acceptor,
            stream_limits: Default::default(),
        },
        listener,
    )
    .await?;
    let stop_health = tokio_util::sync::CancellationToken::new();
    tokio::spawn(homeport_telemetry::serve_health(
        health,
        ingress.observable(),
        stop_health.clone(),
    ));
    homeport_runtime::shutdown_signal().await;
    tracing::info!("shutdown requested");
    ingress.shutdown().await;
    stop_health.cancel();
    Ok(())
}

fn default_node_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let host = if host.is_empty() {
        "ingress".to_string()
    } else {
        host
    };
    format!("{host}-{:04x}", fastrand::u16(..))
}
