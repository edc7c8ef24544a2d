//! `cira-ingress`: parses configuration, connects the dependencies, serves until SIGTERM.

use clap::Parser;
use homeport_cira_ingress::{bootstrap, IngressConfig};

/// mimalloc serves Rust's allocations here and, as it also replaces `malloc` (its `override`
/// feature), OpenSSL's: a TLS handshake allocates and frees dozens of small blocks, and glibc's
/// allocator spent about a tenth of the ingress' CPU on them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Runtime worker threads (0: one per core). One thread per process spends about a fifth
    /// less CPU per device handshake than two (no wake-ups across threads); to use more cores,
    /// run one process per core with --reuse-port.
    #[arg(long, env = "HOMEPORT_WORKER_THREADS", default_value_t = 0)]
    worker_threads: usize,
}

fn main() {
    let cli = Cli::parse();
    let valid = cli
        .common
        .validate()
        .and_then(|()| cli.ingress.validate().map_err(anyhow::Error::msg));
    let log = cli.common.logging();
    let threads = cli.worker_threads;
    homeport_runtime::run_main_with_threads("cira-ingress", valid, &log, threads, || run(cli));
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let node_id = cli.ingress.node_id.clone().unwrap_or_else(default_node_id);
    let served = bootstrap::serve(&cli.common, &cli.ingress, node_id).await?;
    homeport_runtime::shutdown_signal().await;
    tracing::info!("shutdown requested");
    served.shutdown().await;
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
