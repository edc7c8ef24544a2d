//! `homeport`: every Homeport service in one process, with embedded defaults (SQLite, a local
//! encrypted secret file, and a NATS server started on demand) for laptops, demos and small
//! fleets. `homeport demo` adds a simulated fleet and shows what is connected.

mod nats;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use futures_util::StreamExt;
use homeport_amt_sim::{Fleet, SimConfig};
use homeport_cira_ingress::{bootstrap, IngressConfig};
use homeport_contracts::presence::Presence;

#[derive(Parser, Debug)]
#[command(
    name = "homeport",
    version,
    about = "Homeport all-in-one: manage Intel AMT fleets over CIRA"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    common: homeport_runtime::CommonArgs,
    #[command(flatten)]
    ingress: IngressConfig,
    /// Start a private NATS server: "auto" (when none answers at --nats-url), "always", "never".
    #[arg(long, env = "HOMEPORT_EMBEDDED_NATS", default_value = "auto")]
    embedded_nats: String,
    /// Data directory of the embedded NATS server.
    #[arg(long, env = "HOMEPORT_DATA_DIR", default_value = "homeport-data")]
    data_dir: std::path::PathBuf,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the services (the default).
    Serve,
    /// Run the services plus a simulated fleet, and print the connected devices.
    Demo {
        /// Simulated devices.
        #[arg(long, default_value_t = 25)]
        devices: u64,
        /// Stop after this many seconds (0: until Ctrl-C).
        #[arg(long, default_value_t = 0)]
        duration: u64,
    },
}

fn main() {
    let cli = Cli::parse();
    let valid = cli
        .common
        .validate()
        .and_then(|()| cli.ingress.validate().map_err(anyhow::Error::msg))
        .and_then(|()| match cli.embedded_nats.as_str() {
            "auto" | "always" | "never" => Ok(()),
            other => anyhow::bail!("--embedded-nats must be auto, always or never, not {other:?}"),
        });
    let log = cli.common.log.clone();
    homeport_runtime::run_main("homeport", valid, &log, || run(cli));
}

async fn run(mut cli: Cli) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cli.data_dir)
        .with_context(|| format!("creating {}", cli.data_dir.display()))?;
    let _nats_server = nats::ensure(&mut cli.common, &cli.embedded_nats, &cli.data_dir).await?;
    let node_id = cli
        .ingress
        .node_id
        .clone()
        .unwrap_or_else(|| "homeport".into());
    let served = bootstrap::serve(&cli.common, &cli.ingress, node_id).await?;
    let (ingress, store, secrets, nats) = (
        &served.ingress,
        &served.store,
        &served.secrets,
        &served.nats,
    );
    let names = cli.common.names();
    println!(
        "Homeport is running: CIRA on {}, health and metrics on http://{}/metrics, NATS {}, database {}",
        ingress.local_addr(),
        cli.ingress.health_listen,
        cli.common.nats_url,
        homeport_runtime::redact_url(&cli.common.database_url),
    );

    match cli.command {
        None | Some(Command::Serve) => {
            homeport_runtime::shutdown_signal().await;
        }
        Some(Command::Demo { devices, duration }) => {
            let mut cfg = SimConfig::new(cira_target(ingress.local_addr()), devices);
            cfg.ramp_per_second = 200;
            let ids: Vec<_> = cfg.identities().collect();
            homeport_amt_sim::enroll(store, secrets, &ids, "demo").await?;
            println!("Enrolled {devices} simulated devices (tenant \"demo\"); connecting them over CIRA…");
            let fleet = Fleet::start(cfg)?;
            let presence = homeport_contracts::presence::presence_bucket(
                &async_nats::jetstream::new(nats.clone()),
                &names,
            )
            .await?;
            let started = Instant::now();
            let stop = homeport_runtime::stop_after(duration);
            tokio::pin!(stop);
            let mut tick = tokio::time::interval(Duration::from_secs(3));
            let mut shown = false;
            loop {
                tokio::select! {
                    _ = &mut stop => break,
                    _ = tick.tick() => {
                        let connected = fleet.stats().connected();
                        println!("[{:>4.0}s] {connected}/{devices} simulated devices connected", started.elapsed().as_secs_f64());
                        if connected == devices && !shown {
                            shown = true;
                            print_presence(&presence).await;
                            probe_tunnel(nats, &names, &fleet).await;
                            println!("Press Ctrl-C to stop.");
                        }
                    }
                }
            }
            fleet.stop().await;
        }
    }
    println!("Shutting down: draining CIRA sessions…");
    served.shutdown().await;
    Ok(())
}

/// The ingress listens on all interfaces by default; the simulator dials loopback.
fn cira_target(local: SocketAddr) -> SocketAddr {
    if local.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], local.port()))
    } else {
        local
    }
}

/// Prints the presence bucket: what NATS knows is connected, and where.
async fn print_presence(presence: &async_nats::jetstream::kv::Store) {
    let Ok(mut keys) = presence.keys().await else {
        return;
    };
    let mut rows = Vec::new();
    while let Some(Ok(guid)) = keys.next().await {
        if let Ok(Some(v)) = presence.get(&guid).await {
            if let Ok(p) = serde_json::from_slice::<Presence>(&v) {
                rows.push((guid, p));
            }
        }
    }
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    println!(
        "\n{:<38} {:<8} {:<12} {:<22} CONNECTED AT",
        "DEVICE", "TENANT", "NODE", "REMOTE"
    );
    for (guid, p) in rows.iter().take(20) {
        println!(
            "{guid:<38} {:<8} {:<12} {:<22} {}",
            p.tenant, p.node, p.remote, p.connected_at
        );
    }
    if rows.len() > 20 {
        println!("… and {} more", rows.len() - 20);
    }
    println!();
}

/// Sends one HTTP request through the CIRA tunnel of the first device to show the path works.
async fn probe_tunnel(nats: &async_nats::Client, names: &homeport_contracts::Names, fleet: &Fleet) {
    let Some(id) = fleet.identities().first() else {
        return;
    };
    let client =
        match homeport_contracts::tunnel::TunnelClient::new(nats.clone(), names.clone()).await {
            Ok(c) => c,
            Err(e) => return println!("Tunnel check failed: {e}"),
        };
    let request = format!(
        "POST /wsman HTTP/1.1\r\nHost: {}:16992\r\nContent-Length: 0\r\n\r\n",
        id.guid
    );
    let started = Instant::now();
    match client
        .request(
            &id.guid,
            None,
            request.into_bytes().into(),
            Duration::from_secs(10),
        )
        .await
    {
        Ok(reply) => {
            let text = String::from_utf8_lossy(&reply);
            let status = text.lines().next().unwrap_or_default();
            println!(
                "Tunnel check: device {} answered \"{status}\" (NATS → ingress → APF channel → device) in {:.1} ms",
                id.guid,
                started.elapsed().as_secs_f64() * 1000.0
            );
        }
        Err(e) => println!("Tunnel check failed: {e}"),
    }
}
