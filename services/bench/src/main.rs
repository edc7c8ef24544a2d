//! `homeport-bench`: measures Homeport end to end on this machine, over real sockets, real
//! TLS, real NATS and PostgreSQL, and prints one JSON line per run.
//!
//! `cira`: starts ingress node processes and simulator processes (one process holds at most
//! `--per-process` connections, below the file-descriptor limit), connects N devices, then
//! holds them with keep-alives and reports connect rate, CPU per handshake, memory per device
//! and keep-alive CPU of the ingress processes.
//!
//! `audit`: starts the audit worker, measures how fast it persists a backlog and its
//! publish-to-commit lag at a fixed publish rate.
//!
//! `tls`: the ingress' TLS handshake alone, server CPU per handshake.
//!
//! `hostile`: bounded attacks from other loopback addresses against one ingress while
//! legitimate simulated devices connect to it; reports whether they all got in, how fast,
//! the ingress' memory growth and what the attack added to the events stream.
//!
//! `activate`: starts rps, runs N simulated PCs through CCM activation with CIRA
//! configuration, C at a time, and reports activations per second, latency percentiles and
//! rps memory per activation in flight.
//!
//! `command`: starts cira-ingress, amt-sim and mps-command processes, connects N devices and
//! drives power-state queries through gRPC, closed-loop (`--concurrency`) or at a fixed rate
//! (`--rate`), and reports throughput and latency percentiles.

mod activate;
mod audit;
mod command;
mod cpu;
mod hostile;
mod rest;
mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use homeport_amt_sim::SimConfig;
use homeport_secrets::{DynSecretStore, LocalFileConfig, LocalFileStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser, Debug)]
#[command(
    name = "homeport-bench",
    version,
    about = "Homeport benchmarks; each prints one JSON line"
)]
struct Cli {
    #[command(subcommand)]
    command: Bench,
}

#[derive(Subcommand, Debug)]
enum Bench {
    /// CIRA ingress: connect N simulated devices and hold them.
    Cira(CiraArgs),
    /// Device commands: power-state queries through gRPC → mps-command → NATS → ingress → devices.
    Command(command::CommandArgs),
    /// The REST gateway: the `command` deployment measured over gRPC, then the same query as
    /// `GET /api/v1/amt/power/state/<guid>` through the gateway over keep-alive HTTP/1.1.
    Rest(command::CommandArgs),
    /// Durable events: backlog persist rate and publish-to-commit lag of the audit worker.
    Audit(audit::AuditArgs),
    /// The ingress' TLS handshake alone: server CPU per handshake against a device's offer.
    Tls(tls::TlsArgs),
    /// Hostile peers against one ingress while legitimate devices connect to it.
    Hostile(hostile::HostileArgs),
    /// Remote provisioning: N simulated PCs activated in CCM with CIRA through rps.
    Activate(activate::ActivateArgs),
    /// (Started by `hostile`: the attackers' own process.)
    #[command(hide = true)]
    HostileAttacker(hostile::AttackerArgs),
}

/// The NATS and PostgreSQL every bench runs against.
#[derive(clap::Args, Debug)]
pub(crate) struct Backends {
    /// NATS server.
    #[arg(
        long,
        env = "HOMEPORT_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub(crate) nats_url: String,
    /// PostgreSQL admin URL (a throwaway database is created and dropped).
    #[arg(long, env = "HOMEPORT_BENCH_PG_URL", default_value = homeport_store::testing::DEFAULT_ADMIN_URL)]
    pub(crate) pg_admin_url: String,
}

#[derive(clap::Args, Debug)]
struct CiraArgs {
    /// Simulated devices.
    #[arg(long, default_value_t = 1000)]
    devices: u64,
    /// Seconds to hold all devices connected with keep-alives after the last one connected.
    #[arg(long, default_value_t = 60)]
    hold: u64,
    /// Most connections one process (ingress or simulator) holds.
    #[arg(long, default_value_t = 18_000)]
    per_process: u64,
    /// Simulator connection rate, per second across all simulator processes (0: unlimited).
    #[arg(long, default_value_t = 0)]
    ramp: u32,
    /// TLS offered by the simulated devices: modern, modern-pq, static-rsa or static-rsa-cbc.
    #[arg(long, default_value = "modern")]
    tls: String,
    /// Keep-alive interval asked of devices, seconds.
    #[arg(long, default_value_t = 30)]
    keepalive: u64,
    /// Runtime worker threads of each ingress process (0: one per core). One per process is
    /// the recommended deployment (scale with processes and --reuse-port).
    #[arg(long, default_value_t = 1)]
    ingress_threads: usize,
    /// Give up waiting for all devices after this many seconds.
    #[arg(long, default_value_t = 600)]
    connect_timeout: u64,
    #[command(flatten)]
    backends: crate::Backends,
}

fn main() {
    let cli = Cli::parse();
    homeport_telemetry::init_logging("warn");
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("homeport-bench: {e}");
            std::process::exit(1);
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Bench::Cira(args) => cira(args).await,
            Bench::Command(args) => command::run(args).await,
            Bench::Rest(args) => command::run_as(args, true).await,
            Bench::Audit(args) => audit::run(args).await,
            Bench::Tls(args) => tls::run(args).await,
            Bench::Hostile(args) => hostile::run(args).await,
            Bench::Activate(args) => activate::run(args).await,
            Bench::HostileAttacker(args) => hostile::attacker(args).await,
        }
    });
    if let Err(e) = result {
        eprintln!("homeport-bench: {e:#}");
        std::process::exit(1);
    }
}

/// A child process killed when dropped (a failed bench leaves nothing running).
pub(crate) struct Child {
    pub(crate) inner: tokio::process::Child,
    pub(crate) name: String,
}

impl Child {
    pub(crate) fn pid(&self) -> String {
        self.inner.id().map(|p| p.to_string()).unwrap_or_default()
    }

    pub(crate) async fn terminate(mut self, grace: Duration) {
        let pid = self.pid();
        let _ = tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await;
        if tokio::time::timeout(grace, self.inner.wait())
            .await
            .is_err()
        {
            eprintln!("{} did not stop within {grace:?}; killing", self.name);
            let _ = self.inner.kill().await;
        }
    }
}

pub(crate) fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe
        .parent()
        .map(|d| d.join(name))
        .context("binary directory")?;
    if !path.exists() {
        bail!(
            "{} not found; build it first (cargo build --release --bins)",
            path.display()
        );
    }
    Ok(path)
}

pub(crate) struct Node {
    pub(crate) child: Child,
    pub(crate) cira: SocketAddr,
    pub(crate) health: SocketAddr,
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub(crate) async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, out))
}

/// Value of an un-labelled metric from a node's /metrics.
async fn metric(node: &Node, name: &str) -> u64 {
    metric_at(node.health, name).await
}

/// Value of an un-labelled metric from the /metrics of `health`.
pub(crate) async fn metric_at(health: SocketAddr, name: &str) -> u64 {
    let Ok((_, text)) = http_get(health, "/metrics").await else {
        return 0;
    };
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or(0)
}

async fn total(nodes: &[Node], name: &str) -> u64 {
    let mut sum = 0;
    for n in nodes {
        sum += metric(n, name).await;
    }
    sum
}

fn usage(nodes: &[Node]) -> (u64, Duration) {
    nodes.iter().fold((0, Duration::ZERO), |(rss, cpu), n| {
        let (r, c) = homeport_telemetry::usage_of(&n.child.pid()).unwrap_or((0, Duration::ZERO));
        (rss + r, cpu + c)
    })
}

/// Milliseconds of one RSA-2048 private-key operation (sign), measured like `openssl speed
/// rsa2048`: signing back to back for `RSA_SECONDS` and taking the mean. A short best-of
/// figure would catch this machine's fast moments only (its speed drifts by a third from one
/// second to the next), making every ratio against it look worse than `openssl speed` would.
pub(crate) fn rsa2048_sign_ms() -> anyhow::Result<f64> {
    const RSA_SECONDS: f64 = 10.0;
    let key = openssl::pkey::PKey::from_rsa(openssl::rsa::Rsa::generate(2048)?)?;
    let data = [7u8; 32];
    eprintln!("timing RSA-2048 signatures for {RSA_SECONDS} s (the reference)…");
    let started = Instant::now();
    let mut signed = 0u32;
    while started.elapsed().as_secs_f64() < RSA_SECONDS {
        let mut signer = openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &key)?;
        signer.update(&data)?;
        let _ = signer.sign_to_vec()?;
        signed += 1;
    }
    Ok(started.elapsed().as_secs_f64() * 1000.0 / f64::from(signed))
}

async fn cira(args: CiraArgs) -> anyhow::Result<()> {
    args.tls
        .parse::<homeport_amt_sim::SimTls>()
        .map_err(|e| anyhow::anyhow!("--tls: {e}"))?;
    let ingress_bin = sibling("cira-ingress")?;
    let sim_bin = sibling("amt-sim")?;
    let rsa_ms = rsa2048_sign_ms()?;
    let run = format!("bench{:06x}", fastrand::u32(..0xff_ffff));
    let dir = std::env::temp_dir().join(format!("homeport-{run}"));
    std::fs::create_dir_all(&dir)?;
    let db = homeport_store::testing::temp_postgres(&args.backends.pg_admin_url, "bench")
        .await
        .context("creating the bench database")?;
    let result = cira_inner(&args, &run, &dir, &db.url, &ingress_bin, &sim_bin, rsa_ms).await;
    let _ = db.drop_db().await;
    let _ = std::fs::remove_dir_all(&dir);
    remove_nats_state(&args.backends.nats_url, &run).await;
    result
}

/// Deletes the run's stream and buckets.
pub(crate) async fn remove_nats_state(nats_url: &str, run: &str) {
    if let Ok(nats) =
        homeport_runtime::connect_nats(nats_url, "bench-cleanup", Duration::from_secs(5)).await
    {
        let js = async_nats::jetstream::new(nats);
        let names = homeport_contracts::Names::new(run);
        let _ = js.delete_stream(names.events_stream()).await;
        let _ = js.delete_key_value(names.presence_bucket()).await;
        let _ = js.delete_key_value(names.nodes_bucket()).await;
    }
}

/// What every ingress node of a bench run shares.
pub(crate) struct NodeEnv {
    pub nats_url: String,
    pub run: String,
    pub db_url: String,
    pub secrets_file: PathBuf,
    pub key_file: PathBuf,
}

impl NodeEnv {
    /// Starts ingress node `i` (CIRA and health on free loopback ports) with `extra` settings.
    pub(crate) fn spawn_node(
        &self,
        ingress_bin: &Path,
        i: u64,
        extra: &[(&str, String)],
    ) -> anyhow::Result<Node> {
        let cira = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let health = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        // HOMEPORT_BENCH_WRAPPER runs the ingress under a tool, e.g. "valgrind --tool=callgrind".
        // The ingress links mimalloc over `malloc`, which valgrind cannot intercept: massif
        // needs `--pages-as-heap=yes` there.
        let mut command = match std::env::var("HOMEPORT_BENCH_WRAPPER") {
            Ok(w) if !w.trim().is_empty() => {
                let mut parts = w.split_whitespace();
                let mut c = tokio::process::Command::new(parts.next().unwrap_or_default());
                c.args(parts).arg(ingress_bin);
                c
            }
            _ => tokio::process::Command::new(ingress_bin),
        };
        let child = command
            .env("HOMEPORT_NATS_URL", &self.nats_url)
            .env("HOMEPORT_SUBJECT_PREFIX", &self.run)
            .env("HOMEPORT_DATABASE_URL", &self.db_url)
            .env("HOMEPORT_DATABASE_POOL", "8")
            .env("HOMEPORT_SECRETS_FILE", &self.secrets_file)
            .env("HOMEPORT_SECRETS_KEY_FILE", &self.key_file)
            .env("HOMEPORT_CIRA_LISTEN", cira.to_string())
            .env("HOMEPORT_HEALTH_LISTEN", health.to_string())
            .env("HOMEPORT_NODE_ID", format!("bench-{i}"))
            .env("HOMEPORT_LOG", "warn")
            .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting cira-ingress")?;
        Ok(Node {
            child: Child {
                inner: child,
                name: format!("cira-ingress bench-{i}"),
            },
            cira,
            health,
        })
    }
}

/// Waits until every node answers `/readyz` (60 s at most each).
pub(crate) async fn wait_ready(nodes: &[Node]) -> anyhow::Result<()> {
    for node in nodes {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if matches!(http_get(node.health, "/readyz").await, Ok((200, _))) {
                break;
            }
            if Instant::now() > deadline {
                bail!("{} not ready after 60 s", node.child.name);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn cira_inner(
    args: &CiraArgs,
    run: &str,
    dir: &Path,
    db_url: &str,
    ingress_bin: &Path,
    sim_bin: &Path,
    rsa_ms: f64,
) -> anyhow::Result<()> {
    let n = args.devices;
    let per = args.per_process.max(1);
    let processes = n.div_ceil(per).max(1);
    let secrets_file = dir.join("secrets.enc");
    let key_file = dir.join("secrets.key");
    let secrets: DynSecretStore = Arc::new(
        LocalFileStore::open(LocalFileConfig::new(secrets_file.clone(), key_file.clone())).await?,
    );
    let store = homeport_store::Store::connect(db_url).await?;
    eprintln!("enrolling {n} devices…");
    let enroll_started = Instant::now();
    let mut cfg = SimConfig::new(SocketAddr::from(([127, 0, 0, 1], 4433)), n);
    cfg.seed = 42;
    let ids: Vec<_> = cfg.identities().collect();
    homeport_amt_sim::enroll(&store, &secrets, &ids, "bench").await?;
    let enroll_seconds = enroll_started.elapsed().as_secs_f64();
    // Certificates once, before the nodes start.
    homeport_cira_ingress::tls::load_or_generate(&secrets, "localhost", &[]).await?;
    drop(ids);

    eprintln!("starting {processes} ingress node(s)…");
    let env = NodeEnv {
        nats_url: args.backends.nats_url.clone(),
        run: run.to_string(),
        db_url: db_url.to_string(),
        secrets_file: secrets_file.clone(),
        key_file: key_file.clone(),
    };
    let mut nodes = Vec::new();
    for i in 0..processes {
        nodes.push(env.spawn_node(
            ingress_bin,
            i,
            &[
                ("HOMEPORT_KEEPALIVE_INTERVAL", args.keepalive.to_string()),
                ("HOMEPORT_IDLE_TIMEOUT", (args.keepalive * 3).to_string()),
                ("HOMEPORT_HANDSHAKE_TIMEOUT", "120".into()),
                ("HOMEPORT_WORKER_THREADS", args.ingress_threads.to_string()),
            ],
        )?);
    }
    wait_ready(&nodes).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss_before, cpu_before) = usage(&nodes);

    eprintln!("connecting {n} devices through {processes} simulator process(es)…");
    let started = Instant::now();
    let mut sims = Vec::new();
    // Each simulator process dials one node, so the kernel picks ports per destination and
    // one process stays under the ~28k ephemeral ports of a 4-tuple. Binding source addresses
    // is only needed beyond that, and costs the kernel a port search per bind.
    let source_ips = if per > 25_000 { per.div_ceil(4_000) } else { 0 }.to_string();
    for (i, node) in nodes.iter().enumerate() {
        let first = i as u64 * per;
        let count = per.min(n - first);
        let ramp = if args.ramp == 0 {
            0
        } else {
            (args.ramp / processes as u32).max(1)
        };
        let child = tokio::process::Command::new(sim_bin)
            .args(["run", "--seed", "42"])
            .args([
                "--devices",
                &count.to_string(),
                "--first-index",
                &first.to_string(),
            ])
            .args([
                "--server",
                &node.cira.to_string(),
                "--ramp",
                &ramp.to_string(),
            ])
            .args(["--source-ips", &source_ips, "--tls", &args.tls])
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting amt-sim")?;
        sims.push(Child {
            inner: child,
            name: format!("amt-sim {i}"),
        });
    }
    let mut connected = 0;
    let deadline = started + Duration::from_secs(args.connect_timeout);
    let mut last_report = Instant::now();
    while Instant::now() < deadline {
        connected = total(&nodes, "homeport_cira_devices_connected").await;
        if connected >= n {
            break;
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            eprintln!(
                "  {connected}/{n} connected after {:.0} s",
                started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let connect_seconds = started.elapsed().as_secs_f64();
    let (rss_after, cpu_after) = usage(&nodes);
    let handshakes = total(&nodes, "homeport_cira_tls_handshakes_total")
        .await
        .max(1);

    eprintln!(
        "{connected}/{n} connected in {connect_seconds:.1} s; holding for {} s…",
        args.hold
    );
    let hold_started = Instant::now();
    let mut min_connected = connected;
    while hold_started.elapsed() < Duration::from_secs(args.hold) {
        tokio::time::sleep(Duration::from_secs(1).min(Duration::from_secs(args.hold))).await;
        min_connected = min_connected.min(total(&nodes, "homeport_cira_devices_connected").await);
    }
    let hold_seconds = hold_started.elapsed().as_secs_f64();
    let (rss_hold, cpu_hold) = usage(&nodes);
    let final_connected = total(&nodes, "homeport_cira_devices_connected").await;
    let idle_timeouts = total(&nodes, "homeport_cira_idle_timeouts_total").await;
    let keepalives = total(&nodes, "homeport_cira_keepalives_total").await;
    let reconnects = handshakes.saturating_sub(n);

    for s in sims {
        s.terminate(Duration::from_secs(20)).await;
    }
    for node in nodes {
        node.child.terminate(Duration::from_secs(30)).await;
    }

    let cpu_connect_ms = cpu_after.saturating_sub(cpu_before).as_secs_f64() * 1000.0;
    let per_handshake = cpu_connect_ms / handshakes as f64;
    let line = serde_json::json!({
        "bench": "cira",
        "cpu": cpu::describe(),
        "devices": n,
        "connected": connected,
        "ingress_processes": processes,
        "ingress_worker_threads": args.ingress_threads,
        "tls": args.tls,
        "enroll_seconds": round(enroll_seconds),
        "seconds_to_all_connected": round(connect_seconds),
        "handshakes_per_second": round(connected as f64 / connect_seconds),
        "ingress_cpu_ms_per_handshake": round(per_handshake),
        "rsa2048_sign_ms": round(rsa_ms),
        "handshake_cpu_vs_rsa2048": round(per_handshake / rsa_ms),
        "ingress_rss_bytes_per_device": rss_after.saturating_sub(rss_before) / connected.max(1),
        "ingress_rss_bytes_per_device_after_hold": rss_hold.saturating_sub(rss_before) / connected.max(1),
        "ingress_rss_bytes_total": rss_hold,
        "hold_seconds": round(hold_seconds),
        "keepalive_cpu_percent": round(cpu_hold.saturating_sub(cpu_after).as_secs_f64() / hold_seconds * 100.0),
        "keepalives_answered": keepalives,
        "min_connected_during_hold": min_connected,
        "connected_at_end": final_connected,
        "drops": n.saturating_sub(min_connected) + idle_timeouts,
        "reconnects": reconnects,
    });
    println!("{line}");
    Ok(())
}

pub(crate) fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
