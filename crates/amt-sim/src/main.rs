//! `amt-sim`: enrol simulated AMT devices and run them against a CIRA server, or activate
//! unprovisioned ones through rps.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use homeport_amt_sim::{enroll, serve_control, Fault, Fleet, SimConfig, SimTls};

#[derive(Parser, Debug)]
#[command(
    name = "amt-sim",
    version,
    about = "Simulated Intel AMT devices that connect over CIRA"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Debug, Clone)]
struct FleetArgs {
    /// Number of devices.
    #[arg(long, default_value_t = 10)]
    devices: u64,
    /// Seed of the deterministic identities.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Index of the first device (to split one fleet across processes).
    #[arg(long, default_value_t = 0)]
    first_index: u64,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Register the devices and their secrets in Homeport's store.
    Enroll {
        #[command(flatten)]
        fleet: FleetArgs,
        /// Tenant the devices belong to.
        #[arg(long, default_value = "")]
        tenant: String,
        #[command(flatten)]
        common: Box<homeport_runtime::CommonArgs>,
    },
    /// Connect the devices and keep them connected until interrupted.
    Run {
        #[command(flatten)]
        fleet: FleetArgs,
        /// CIRA server address: host:port (a name is resolved once, at start).
        #[arg(long, default_value = "127.0.0.1:4433")]
        server: String,
        /// New connections per second (0: as fast as possible).
        #[arg(long, default_value_t = 500)]
        ramp: u32,
        /// Spread connections over this many loopback source addresses (127.0.1.1 upward).
        #[arg(long, default_value_t = 0)]
        source_ips: u32,
        /// TLS offered: "modern" (TLS 1.2/1.3 with classic ECDHE groups, like current firmware),
        /// "modern-pq" (adds the post-quantum hybrid X25519MLKEM768, which no firmware offers),
        /// "static-rsa" (TLS 1.2 static-RSA suites only, like older AMT) or "static-rsa-cbc"
        /// (static-RSA CBC suites only, the oldest TLS 1.2 firmware).
        #[arg(long, default_value = "modern")]
        tls: SimTls,
        /// Verify the server certificate against this CA (PEM).
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// Inject a fault into a share of the devices, e.g. wrong-password=0.1, silent=0.05,
        /// reset:30=0.01, split=0.2, oversized=0.01, garbage=0.01, hostile-wsman=0.01,
        /// vanish=0.01 (repeatable).
        #[arg(long = "fault")]
        faults: Vec<String>,
        /// Delay every WS-Man answer by this many milliseconds (real CIRA: ~100-300).
        #[arg(long, default_value_t = 0)]
        wsman_latency_ms: u64,
        /// Devices whose index is a multiple of this have no KVM (0: all have KVM).
        #[arg(long, default_value_t = 0)]
        no_kvm_every: u64,
        /// Serve the local HTTP/JSON control API here (GET /devices/<guid>,
        /// POST /devices/<guid>/disconnect, POST /devices/<guid>/reprovision).
        #[arg(long)]
        control_listen: Option<SocketAddr>,
        /// Stop after this many seconds (0: run until interrupted).
        #[arg(long, default_value_t = 0)]
        duration: u64,
        /// Log filter.
        #[arg(long, env = "HOMEPORT_LOG", default_value = "warn")]
        log: String,
    },
    /// Activate unprovisioned simulated PCs through rps, each with its own rpc client, then
    /// keep them connected over CIRA with the configuration they were given.
    Activate {
        #[command(flatten)]
        fleet: FleetArgs,
        /// The rps WebSocket, as rpc's -u (the certificate is not checked, as rpc -n).
        #[arg(long, default_value = "wss://127.0.0.1:8443/activate")]
        rps: String,
        /// Profile to activate with.
        #[arg(long)]
        profile: String,
        /// Tenant, as rpc's -tenant.
        #[arg(long, default_value = "")]
        tenant: String,
        /// Activations in flight at once.
        #[arg(long, default_value_t = 10)]
        concurrency: usize,
        /// Delay every WS-Man answer by this many milliseconds (rpc over LMS: about 1 s).
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// Keep the activated PCs connected over CIRA this many seconds (0: do not connect).
        #[arg(long, default_value_t = 0)]
        hold: u64,
        /// Log filter.
        #[arg(long, env = "HOMEPORT_LOG", default_value = "warn")]
        log: String,
    },
}

fn main() {
    let cli = Cli::parse();
    let log = match &cli.command {
        Command::Enroll { common, .. } => common.logging(),
        Command::Run { log, .. } | Command::Activate { log, .. } => homeport_runtime::Logging {
            filter: log.clone(),
            json: false,
        },
    };
    let valid = match &cli.command {
        Command::Enroll { common, .. } => common.validate(),
        Command::Run { .. } | Command::Activate { .. } => Ok(()),
    };
    homeport_runtime::run_main("amt-sim", valid, &log, || run(cli));
}

fn parse_fault(s: &str) -> anyhow::Result<(Fault, f64)> {
    let (name, share) = s
        .rsplit_once('=')
        .ok_or_else(|| anyhow::anyhow!("--fault {s:?}: expected NAME=SHARE"))?;
    let share: f64 = share
        .parse()
        .map_err(|_| anyhow::anyhow!("--fault {s:?}: share must be a number"))?;
    if !(0.0..=1.0).contains(&share) {
        anyhow::bail!("--fault {s:?}: share must be between 0 and 1");
    }
    Ok((name.parse().map_err(anyhow::Error::msg)?, share))
}

/// Loopback source addresses 127.0.1.1, 127.0.1.2, …
pub fn loopback_sources(n: u32) -> Vec<IpAddr> {
    (0..n)
        .map(|i| IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 1, 1)) + i)))
        .collect()
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Enroll {
            fleet,
            tenant,
            common,
        } => {
            common.validate()?;
            homeport_telemetry::init_logging_as(&common.log, common.log_format == "json");
            let store = common.open_store().await?;
            let secrets = common.open_secrets().await?;
            let mut cfg = SimConfig::new(SocketAddr::from(([127, 0, 0, 1], 4433)), fleet.devices);
            cfg.seed = fleet.seed;
            cfg.first_index = fleet.first_index;
            let ids: Vec<_> = cfg.identities().collect();
            let started = Instant::now();
            enroll(&store, &secrets, &ids, &tenant).await?;
            println!(
                "enrolled {} devices (seed {}, first index {}) in {:.1}s",
                ids.len(),
                fleet.seed,
                fleet.first_index,
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Command::Run {
            fleet,
            server,
            ramp,
            source_ips,
            tls,
            ca_file,
            faults,
            wsman_latency_ms,
            no_kvm_every,
            control_listen,
            duration,
            log: _,
        } => {
            let address = tokio::net::lookup_host(server.as_str())
                .await
                .with_context(|| format!("resolving --server {server}"))?
                .next()
                .with_context(|| format!("--server {server}: no address"))?;
            let mut cfg = SimConfig::new(address, fleet.devices);
            cfg.seed = fleet.seed;
            cfg.first_index = fleet.first_index;
            cfg.ramp_per_second = ramp;
            cfg.source_ips = loopback_sources(source_ips);
            cfg.ca_file = ca_file;
            cfg.tls = tls;
            cfg.faults = faults
                .iter()
                .map(|f| parse_fault(f))
                .collect::<anyhow::Result<_>>()?;
            cfg.wsman_latency = Duration::from_millis(wsman_latency_ms);
            cfg.no_kvm_every = no_kvm_every;
            // Bound before the fleet starts, so a taken port fails before any device connects.
            let control = match control_listen {
                Some(addr) => Some(
                    homeport_amt_sim::control::bind_control(addr)
                        .await
                        .map_err(|e| anyhow::anyhow!("--control-listen {addr}: {e}"))?,
                ),
                None => None,
            };
            let fleet_size = cfg.devices;
            let fleet = Fleet::start(cfg)?;
            let control_cancel = tokio_util::sync::CancellationToken::new();
            let control_task = control.map(|listener| {
                if let Ok(addr) = listener.local_addr() {
                    println!("control API on http://{addr}/devices/<guid>");
                }
                tokio::spawn(serve_control(
                    listener,
                    fleet.control(),
                    control_cancel.clone(),
                ))
            });
            let stats = fleet.stats();
            let started = Instant::now();
            let stop = homeport_runtime::stop_after(duration);
            tokio::pin!(stop);
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = &mut stop => break,
                    _ = tick.tick() => {
                        use std::sync::atomic::Ordering::Relaxed;
                        println!(
                            "[{:>5.0}s] connected {}/{} ready_total {} auth_failures {} disconnects {} http_requests {}",
                            started.elapsed().as_secs_f64(),
                            stats.connected(),
                            fleet_size,
                            stats.ready_total.load(Relaxed),
                            stats.auth_failures.load(Relaxed),
                            stats.disconnects.load(Relaxed),
                            stats.http_requests.load(Relaxed),
                        );
                    }
                }
            }
            control_cancel.cancel();
            if let Some(task) = control_task {
                let _ = task.await;
            }
            fleet.stop().await;
            Ok(())
        }
        Command::Activate {
            fleet,
            rps,
            profile,
            tenant,
            concurrency,
            latency_ms,
            hold,
            log: _,
        } => activate(fleet, rps, profile, tenant, concurrency, latency_ms, hold).await,
    }
}

async fn activate(
    fleet: FleetArgs,
    rps: String,
    profile: String,
    tenant: String,
    concurrency: usize,
    latency_ms: u64,
    hold: u64,
) -> anyhow::Result<()> {
    use homeport_amt_sim::provision::{RpcClient, SimDevice};
    let mut client = RpcClient::new(&rps).map_err(|e| anyhow::anyhow!("--rps: {e}"))?;
    client.tenant = tenant;
    client.latency = Duration::from_millis(latency_ms);
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let command = format!("activate --profile {profile}");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in fleet.first_index..fleet.first_index + fleet.devices {
        let (gate, client, command) = (gate.clone(), client.clone(), command.clone());
        tasks.push(tokio::spawn(async move {
            let _slot = gate.acquire_owned().await;
            let pc = SimDevice::unprovisioned(fleet.seed, i);
            let result = pc.rpc(&client, &command, None).await;
            (pc, result)
        }));
    }
    let mut activated = Vec::new();
    for t in tasks {
        let (pc, result) = t.await?;
        match result {
            Ok(r) if r.ok => {
                println!(
                    "{} {} ({} exchanges)",
                    pc.guid(),
                    r.status("Status").unwrap_or_default(),
                    r.exchanges
                );
                activated.push(pc);
            }
            Ok(r) => println!(
                "{} refused: {}",
                pc.guid(),
                r.status("Status").unwrap_or(r.message)
            ),
            Err(e) => println!("{} failed: {e}", pc.guid()),
        }
    }
    println!(
        "activated {}/{} in {:.1}s",
        activated.len(),
        fleet.devices,
        started.elapsed().as_secs_f64()
    );
    if hold == 0 || activated.is_empty() {
        return Ok(());
    }
    // They dial what their CIRA configuration says (the first device's server for all).
    let Some((host, port, _)) = activated[0].cira_target() else {
        anyhow::bail!("the profile has no CIRA configuration: nothing to connect to");
    };
    let address = tokio::net::lookup_host((host.as_str(), port))
        .await
        .with_context(|| format!("resolving the CIRA server {host}:{port}"))?
        .next()
        .with_context(|| format!("{host}:{port}: no address"))?;
    let mut cfg = SimConfig::new(address, 0);
    cfg.seed = fleet.seed;
    let n = activated.len() as u64;
    let fleet = Fleet::start_provisioned(cfg, activated)?;
    let connected = fleet.wait_connected(n, Duration::from_secs(60)).await;
    println!("{connected}/{n} connected over CIRA to {address}; holding {hold}s");
    homeport_runtime::stop_after(hold).await;
    fleet.stop().await;
    Ok(())
}
