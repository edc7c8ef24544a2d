//! `homeport-bench command`: the whole device-command path on this machine, as separate
//! processes (cira-ingress, amt-sim, mps-command) sharing the local NATS and PostgreSQL.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use homeport_amt_sim::SimConfig;
use homeport_proto::device::v1 as pb;
use homeport_proto::device::v1::device_service_client::DeviceServiceClient;
use homeport_secrets::{DynSecretStore, LocalFileConfig, LocalFileStore};
use tonic::transport::Channel;

use crate::{free_port, http_get, round, sibling, Child};

#[derive(clap::Args, Debug)]
pub struct CommandArgs {
    /// Simulated devices the queries are spread over.
    #[arg(long, default_value_t = 1000)]
    devices: u64,
    /// Seconds of measured load (after a short warm-up).
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Fixed request rate per second (open loop); 0 = closed loop with --concurrency.
    #[arg(long, default_value_t = 0)]
    rate: u32,
    /// Requests in flight in closed-loop mode.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// gRPC connections the client spreads requests over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// WS-Man latency of the simulated firmware, milliseconds.
    #[arg(long, default_value_t = 0)]
    wsman_latency_ms: u64,
    /// Devices registered besides the simulated ones, never connected (a fleet whose
    /// registry is larger than what is online; `rest` times the dashboard's queries over it).
    #[arg(long, default_value_t = 0)]
    registered: u64,
    #[command(flatten)]
    backends: crate::Backends,
}

const JWT_SECRET: &[u8] = b"homeport-bench-secret-0123456789abcdef";

pub async fn run(args: CommandArgs) -> anyhow::Result<()> {
    run_as(args, false).await
}

/// `rest`: the same deployment, measured over gRPC first and then through the gateway.
pub async fn run_as(args: CommandArgs, rest: bool) -> anyhow::Result<()> {
    let gateway = if rest {
        Some(sibling("gateway")?)
    } else {
        None
    };
    let bins = (
        sibling("cira-ingress")?,
        sibling("amt-sim")?,
        sibling("mps-command")?,
    );
    let run = format!("cmdbench{:06x}", fastrand::u32(..0xff_ffff));
    let dir = std::env::temp_dir().join(format!("homeport-{run}"));
    std::fs::create_dir_all(&dir)?;
    let db = homeport_store::testing::temp_postgres(&args.backends.pg_admin_url, "cmdbench")
        .await
        .context("creating the bench database")?;
    let result = inner(
        &args,
        &run,
        &dir,
        &db.url,
        (&bins.0, &bins.1, &bins.2),
        gateway.as_deref(),
    )
    .await;
    let _ = db.drop_db().await;
    let _ = std::fs::remove_dir_all(&dir);
    crate::remove_nats_state(&args.backends.nats_url, &run).await;
    result
}

pub(crate) async fn wait_ready(health: SocketAddr, name: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !matches!(http_get(health, "/readyz").await, Ok((200, _))) {
        if Instant::now() > deadline {
            bail!("{name} not ready after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

pub(crate) fn spawn(
    bin: &Path,
    name: &str,
    envs: &[(&str, String)],
    args: &[String],
) -> anyhow::Result<Child> {
    let mut c = tokio::process::Command::new(bin);
    c.args(args).stdout(Stdio::null()).kill_on_drop(true);
    for (k, v) in envs {
        c.env(k, v);
    }
    Ok(Child {
        inner: c.spawn().with_context(|| format!("starting {name}"))?,
        name: name.to_string(),
    })
}

async fn inner(
    args: &CommandArgs,
    run: &str,
    dir: &Path,
    db_url: &str,
    bins: (&Path, &Path, &Path),
    gateway_bin: Option<&Path>,
) -> anyhow::Result<()> {
    let n = args.devices;
    let secrets_file = dir.join("secrets.enc");
    let key_file = dir.join("secrets.key");
    let jwt_file = dir.join("jwt.secret");
    std::fs::write(&jwt_file, JWT_SECRET)?;
    let secrets: DynSecretStore = Arc::new(
        LocalFileStore::open(LocalFileConfig::new(secrets_file.clone(), key_file.clone())).await?,
    );
    let store = homeport_store::Store::connect(db_url).await?;
    eprintln!("enrolling {n} devices…");
    let cfg = SimConfig::new(SocketAddr::from(([127, 0, 0, 1], 4433)), n);
    let ids: Vec<_> = cfg.identities().collect();
    homeport_amt_sim::enroll(&store, &secrets, &ids, "bench").await?;
    if args.registered > 0 {
        eprintln!("registering {} more devices (offline)…", args.registered);
        let mut offline = SimConfig::new(SocketAddr::from(([127, 0, 0, 1], 4433)), args.registered);
        offline.seed = 2;
        let more: Vec<_> = offline.identities().collect();
        homeport_amt_sim::enroll(&store, &secrets, &more, "bench").await?;
    }
    homeport_cira_ingress::tls::load_or_generate(&secrets, "localhost", &[]).await?;
    let guids: Arc<Vec<String>> = Arc::new(ids.iter().map(|i| i.guid.clone()).collect());
    drop(ids);

    let common = |health: SocketAddr| {
        vec![
            ("HOMEPORT_NATS_URL", args.backends.nats_url.clone()),
            ("HOMEPORT_SUBJECT_PREFIX", run.to_string()),
            ("HOMEPORT_DATABASE_URL", db_url.to_string()),
            ("HOMEPORT_DATABASE_POOL", "8".to_string()),
            ("HOMEPORT_SECRETS_FILE", secrets_file.display().to_string()),
            ("HOMEPORT_SECRETS_KEY_FILE", key_file.display().to_string()),
            ("HOMEPORT_HEALTH_LISTEN", health.to_string()),
            ("HOMEPORT_LOG", "warn".to_string()),
        ]
    };
    let cira = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let ingress_health = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let mut env = common(ingress_health);
    env.push(("HOMEPORT_CIRA_LISTEN", cira.to_string()));
    env.push(("HOMEPORT_NODE_ID", "bench-0".into()));
    let ingress = spawn(bins.0, "cira-ingress", &env, &[])?;
    wait_ready(ingress_health, "cira-ingress").await?;

    let grpc = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let command_health = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let mut env = common(command_health);
    env.push(("HOMEPORT_GRPC_LISTEN", grpc.to_string()));
    env.push((
        "HOMEPORT_JWT_HS256_SECRET_FILE",
        jwt_file.display().to_string(),
    ));
    let command = spawn(bins.2, "mps-command", &env, &[])?;
    wait_ready(command_health, "mps-command").await?;

    eprintln!("connecting {n} devices…");
    let sim_args: Vec<String> = [
        "run",
        "--seed",
        "1",
        "--devices",
        &n.to_string(),
        "--server",
        &cira.to_string(),
        "--ramp",
        "500",
        "--wsman-latency-ms",
        &args.wsman_latency_ms.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let sim = spawn(bins.1, "amt-sim", &[], &sim_args)?;
    let started = Instant::now();
    loop {
        let connected = crate::metric_at(ingress_health, "homeport_cira_devices_connected").await;
        if connected >= n {
            break;
        }
        if started.elapsed() > Duration::from_secs(120 + n / 100) {
            bail!("only {connected}/{n} devices connected");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let token = homeport_mps_command::auth::mint_hs256(JWT_SECRET, "bench", "bench", 3600)?;
    let mut clients = Vec::new();
    for _ in 0..args.connections.max(1) {
        let ch = Channel::from_shared(format!("http://{grpc}"))?
            .connect()
            .await?;
        clients.push(Client::new(ch, &token)?);
    }
    // Warm-up: every device once (first calls pay AMT's 401 and fill the caches).
    eprintln!("warming up…");
    load(&clients, &guids, 0, 64, Duration::from_secs(3600), Some(n)).await;
    eprintln!("measuring for {} s…", args.seconds);
    let (rss0, cpu0) = usage(&[&ingress, &command, &sim]);
    let stats = load(
        &clients,
        &guids,
        args.rate,
        args.concurrency,
        Duration::from_secs(args.seconds),
        None,
    )
    .await;
    let (_, cpu1) = usage(&[&ingress, &command, &sim]);
    let _ = rss0;
    let rest = match gateway_bin {
        Some(bin) => Some(
            crate::rest::measure(crate::rest::Setup {
                bin,
                grpc,
                jwt_file: &jwt_file,
                token: &token,
                guids: &guids,
                seconds: args.seconds,
                concurrency: args.concurrency,
                others: &[&ingress, &command, &sim],
            })
            .await?,
        ),
        None => None,
    };
    let tunnel_requests =
        crate::metric_at(ingress_health, "homeport_cira_tunnel_requests_total").await;
    let tunnel_errors = crate::metric_at(ingress_health, "homeport_cira_tunnel_errors_total").await;
    let exchanges = crate::metric_at(command_health, "homeport_wsman_exchanges_total").await;
    for c in [sim, command, ingress] {
        c.terminate(Duration::from_secs(20)).await;
    }
    let mut lat = stats.latencies_us;
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i] as f64 / 1000.0
    };
    let grpc_rps = (stats.ok + stats.errors) as f64 / stats.elapsed.as_secs_f64();
    if let Some(r) = rest {
        let line = crate::rest::report(
            &r,
            n,
            args.concurrency,
            grpc_rps,
            round(pct(0.99)),
            cpu1.saturating_sub(cpu0).as_secs_f64() * 1000.0
                / (stats.ok + stats.errors).max(1) as f64,
            stats.errors,
        );
        println!("{line}");
        return Ok(());
    }
    let line = serde_json::json!({
        "bench": "command",
        "cpu": crate::cpu::describe(),
        "devices": n,
        "mode": if args.rate > 0 { "rate" } else { "closed-loop" },
        "target_rate": args.rate,
        "concurrency": args.concurrency,
        "seconds": round(stats.elapsed.as_secs_f64()),
        "requests": stats.ok + stats.errors,
        "errors": stats.errors,
        "requests_per_second": round((stats.ok + stats.errors) as f64 / stats.elapsed.as_secs_f64()),
        "p50_ms": round(pct(0.50)),
        "p90_ms": round(pct(0.90)),
        "p99_ms": round(pct(0.99)),
        "max_ms": round(pct(1.0)),
        "server_cpu_ms_per_request": round(cpu1.saturating_sub(cpu0).as_secs_f64() * 1000.0 / (stats.ok + stats.errors).max(1) as f64),
        "first_error": stats.first_error,
        "error_times_s": stats.error_times.iter().take(5).map(|t| round(*t)).collect::<Vec<_>>(),
        "wsman_exchanges": exchanges,
        "ingress_tunnel_requests": tunnel_requests,
        "ingress_tunnel_errors": tunnel_errors,
    });
    println!("{line}");
    Ok(())
}

fn usage(children: &[&Child]) -> (u64, Duration) {
    children.iter().fold((0, Duration::ZERO), |(rss, cpu), c| {
        let (r, t) = homeport_telemetry::usage_of(&c.pid()).unwrap_or((0, Duration::ZERO));
        (rss + r, cpu + t)
    })
}

type Api = DeviceServiceClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

#[derive(Clone)]
pub(crate) struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl Bearer {
    pub(crate) fn new(token: &str) -> anyhow::Result<Bearer> {
        Ok(Bearer(format!("Bearer {token}").parse()?))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

#[derive(Clone)]
struct Client(Api);

impl Client {
    fn new(ch: Channel, token: &str) -> anyhow::Result<Client> {
        Ok(Client(DeviceServiceClient::with_interceptor(
            ch,
            Bearer::new(token)?,
        )))
    }
}

#[derive(Default)]
struct Stats {
    ok: u64,
    errors: u64,
    latencies_us: Vec<u32>,
    elapsed: Duration,
    first_error: Option<String>,
    /// Seconds into the run at which failed requests ended.
    error_times: Vec<f64>,
    started: Option<Instant>,
}

impl Stats {
    fn record(&mut self, r: (Duration, Result<(), String>)) {
        self.latencies_us
            .push(u32::try_from(r.0.as_micros()).unwrap_or(u32::MAX));
        match r.1 {
            Ok(()) => self.ok += 1,
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
                if let Some(s) = self.started {
                    self.error_times.push(s.elapsed().as_secs_f64());
                }
            }
        }
    }
}

async fn one(mut c: Client, guid: String) -> (Duration, Result<(), String>) {
    let t = Instant::now();
    let r = c.0.get_power_state(pb::DeviceRef { guid }).await;
    (
        t.elapsed(),
        r.map(|_| ())
            .map_err(|e| format!("{:?}: {}", e.code(), e.message())),
    )
}

/// Closed loop (rate 0: `concurrency` requests always in flight) or open loop at `rate`/s,
/// for `duration` or until `total` requests were made.
async fn load(
    clients: &[Client],
    guids: &Arc<Vec<String>>,
    rate: u32,
    concurrency: usize,
    duration: Duration,
    total: Option<u64>,
) -> Stats {
    let started = Instant::now();
    let mut stats = Stats {
        started: Some(started),
        ..Stats::default()
    };
    let mut issued: u64 = 0;
    let mut set = tokio::task::JoinSet::new();
    let pick = |i: u64| guids[(i % guids.len() as u64) as usize].clone();
    if rate == 0 {
        loop {
            let done = started.elapsed() >= duration || total.is_some_and(|t| issued >= t);
            while !done && set.len() < concurrency.max(1) {
                let c = clients[(issued % clients.len() as u64) as usize].clone();
                set.spawn(one(c, pick(issued)));
                issued += 1;
            }
            match set.join_next().await {
                Some(Ok(r)) => stats.record(r),
                Some(Err(_)) => stats.errors += 1,
                None => break,
            }
        }
    } else {
        let gap = Duration::from_secs(1) / rate;
        let mut next = tokio::time::Instant::now();
        while started.elapsed() < duration {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {
                    // Bounded: a stalled server must not make the client pile up work forever.
                    if set.len() < 20_000 {
                        let c = clients[(issued % clients.len() as u64) as usize].clone();
                        set.spawn(one(c, pick(fastrand::u64(..))));
                        issued += 1;
                    } else {
                        stats.errors += 1;
                    }
                    next += gap;
                }
                Some(r) = set.join_next(), if !set.is_empty() => {
                    if let Ok(r) = r { stats.record(r) } else { stats.errors += 1 }
                }
            }
        }
        while let Some(r) = set.join_next().await {
            if let Ok(r) = r {
                stats.record(r)
            } else {
                stats.errors += 1
            }
        }
    }
    stats.elapsed = started.elapsed();
    stats
}
