//! `homeport-bench hostile`: attacks from other loopback addresses (127.0.0.2–127.0.0.9)
//! against one ingress node, while legitimate simulated devices (ten per address from
//! 127.0.1.1) connect to it. Every attack is bounded in time and count and dials only the
//! node it started. The attackers run in their own process at the lowest priority: on this
//! two-core machine they would otherwise take the CPU the ingress and the devices need, which
//! measures the machine, not the ingress.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use homeport_amt_sim::hostile;
use homeport_amt_sim::{Fleet, Identity, SimConfig};
use homeport_secrets::{DynSecretStore, LocalFileConfig, LocalFileStore};

use crate::{cpu, metric_at, round, sibling, NodeEnv};

const ATTACKS: [&str; 5] = [
    "slow-handshake",
    "keyupdate-flood",
    "preauth-bigframe",
    "login-flood",
    "guid-squat",
];
/// Loopback addresses the attackers dial from.
const SOURCES: u8 = 8;

#[derive(clap::Args, Debug)]
pub struct HostileArgs {
    /// slow-handshake, keyupdate-flood, preauth-bigframe, login-flood, guid-squat, all, or
    /// none (the baseline).
    #[arg(long, default_value = "all")]
    attack: String,
    /// Seconds the attack lasts (the legitimate devices connect during it).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(5..=3600))]
    seconds: u64,
    /// Legitimate simulated devices.
    #[arg(long, default_value_t = 1000)]
    devices: u64,
    /// Attacking connections at once per attack.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1000))]
    concurrency: u64,
    /// The ingress' --auth-event-interval-secs.
    #[arg(long, default_value_t = 10)]
    auth_event_interval: u64,
    #[command(flatten)]
    backends: crate::Backends,
}

/// The attackers' own process (started by `hostile` under `nice -n 19`, so that on a machine
/// shared with the ingress they model attackers on other machines rather than starve it).
#[derive(clap::Args, Debug)]
pub struct AttackerArgs {
    #[arg(long)]
    addr: SocketAddr,
    #[arg(long, value_delimiter = ',')]
    attacks: Vec<String>,
    #[arg(long)]
    seconds: u64,
    #[arg(long)]
    concurrency: u64,
    /// Seed and index of the device whose GUID guid-squat uses.
    #[arg(long)]
    squat_seed: u64,
}

/// Runs the attacks until the deadline and prints the tally as one JSON line.
pub async fn attacker(args: AttackerArgs) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(args.seconds);
    let tally = Arc::new(Tally::default());
    let squat = Identity::derive(args.squat_seed, 0);
    let mut workers = Vec::new();
    for attack in &args.attacks {
        let attack = ATTACKS
            .iter()
            .find(|a| **a == attack.as_str())
            .with_context(|| format!("unknown attack {attack:?}"))?;
        workers.extend(launch(
            attack,
            args.addr,
            squat.clone(),
            args.concurrency,
            until,
            tally.clone(),
        ));
    }
    for w in workers {
        let _ = tokio::time::timeout(Duration::from_secs(60), w).await;
    }
    println!(
        "{}",
        serde_json::json!({
            "attempts": tally.attempts.load(Ordering::Relaxed),
            "refused_or_dropped": tally.refused_or_dropped.load(Ordering::Relaxed),
            "errors": tally.errors.load(Ordering::Relaxed),
            "cpu_seconds": homeport_telemetry::usage_of("self")
                .map(|(_, c)| c.as_secs_f64())
                .unwrap_or(0.0),
        })
    );
    Ok(())
}

fn source(i: u64) -> IpAddr {
    IpAddr::from([127, 0, 0, 2 + (i % u64::from(SOURCES)) as u8])
}

/// What the attackers did.
#[derive(Default)]
struct Tally {
    attempts: AtomicU64,
    refused_or_dropped: AtomicU64,
    errors: AtomicU64,
}

/// Runs `attack` from `concurrency` workers until `until`.
fn launch(
    attack: &'static str,
    addr: SocketAddr,
    squat: Identity,
    concurrency: u64,
    until: Instant,
    tally: Arc<Tally>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..concurrency)
        .map(|w| {
            let tally = tally.clone();
            let squat = squat.clone();
            tokio::task::spawn_blocking(move || {
                let from = Some(source(w));
                while Instant::now() < until {
                    let bound = until.saturating_duration_since(Instant::now());
                    tally.attempts.fetch_add(1, Ordering::Relaxed);
                    let ended = match attack {
                        "slow-handshake" => {
                            hostile::slow_handshake(addr, from, bound).map(|h| h.closed())
                        }
                        "keyupdate-flood" => {
                            hostile::keyupdate_flood(addr, None, bound, Duration::from_millis(1))
                                .map(|h| h.closed())
                        }
                        "preauth-bigframe" => {
                            hostile::preauth_bigframe(addr, from, bound).map(|(h, _)| h.closed())
                        }
                        "login-flood" => hostile::random_guid_login(addr, from, bound),
                        _ => hostile::guid_squat_login(addr, from, &squat, bound),
                    };
                    match ended {
                        Ok(true) => {
                            tally.refused_or_dropped.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(false) => {}
                        Err(_) => {
                            tally.errors.fetch_add(1, Ordering::Relaxed);
                            // Refused at connect (the per-source cap): try again shortly.
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                }
            })
        })
        .collect()
}

pub async fn run(args: HostileArgs) -> anyhow::Result<()> {
    let attacks: Vec<&'static str> = match args.attack.as_str() {
        "all" => ATTACKS.to_vec(),
        // The baseline: the same devices, no attack.
        "none" => Vec::new(),
        one => match ATTACKS.iter().find(|a| **a == one) {
            Some(a) => vec![*a],
            None => bail!("--attack must be one of {ATTACKS:?}, all or none, not {one:?}"),
        },
    };
    let ingress_bin = sibling("cira-ingress")?;
    let run_id = format!("bench{:06x}", fastrand::u32(..0xff_ffff));
    let dir = std::env::temp_dir().join(format!("homeport-{run_id}"));
    std::fs::create_dir_all(&dir)?;
    let db = homeport_store::testing::temp_postgres(&args.backends.pg_admin_url, "bench")
        .await
        .context("creating the bench database")?;
    let result = run_inner(&args, &attacks, &run_id, &dir, &db.url, &ingress_bin).await;
    let _ = db.drop_db().await;
    let _ = std::fs::remove_dir_all(&dir);
    crate::remove_nats_state(&args.backends.nats_url, &run_id).await;
    result
}

async fn run_inner(
    args: &HostileArgs,
    attacks: &[&'static str],
    run_id: &str,
    dir: &std::path::Path,
    db_url: &str,
    ingress_bin: &std::path::Path,
) -> anyhow::Result<()> {
    let secrets_file = dir.join("secrets.enc");
    let key_file = dir.join("secrets.key");
    let secrets: DynSecretStore = Arc::new(
        LocalFileStore::open(LocalFileConfig::new(secrets_file.clone(), key_file.clone())).await?,
    );
    let store = homeport_store::Store::connect(db_url).await?;
    let mut cfg = SimConfig::new(SocketAddr::from(([127, 0, 0, 1], 4433)), args.devices);
    cfg.seed = 7;
    let ids: Vec<_> = cfg.identities().collect();
    homeport_amt_sim::enroll(&store, &secrets, &ids, "bench").await?;
    homeport_cira_ingress::tls::load_or_generate(&secrets, "localhost", &[]).await?;
    drop(ids);

    let env = NodeEnv {
        nats_url: args.backends.nats_url.clone(),
        run: run_id.to_string(),
        db_url: db_url.to_string(),
        secrets_file,
        key_file,
    };
    let node = env.spawn_node(
        ingress_bin,
        0,
        &[(
            "HOMEPORT_AUTH_EVENT_INTERVAL",
            args.auth_event_interval.to_string(),
        )],
    )?;
    crate::wait_ready(std::slice::from_ref(&node)).await?;
    let pid = node.child.pid();
    let rss = || {
        homeport_telemetry::usage_of(&pid)
            .map(|(r, _)| r)
            .unwrap_or(0)
    };
    let nats = homeport_runtime::connect_nats(
        &args.backends.nats_url,
        "bench-hostile",
        Duration::from_secs(10),
    )
    .await?;
    let js = async_nats::jetstream::new(nats);
    let names = homeport_contracts::Names::new(run_id);
    let stream_messages = || async {
        match js.get_stream(names.events_stream()).await {
            Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
            Err(_) => 0,
        }
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = rss();
    let events_before = stream_messages().await;
    let cpu_of = |pid: &str| {
        homeport_telemetry::usage_of(pid)
            .map(|(_, c)| c)
            .unwrap_or_default()
    };
    let me = std::process::id().to_string();
    let (ingress_cpu_before, bench_cpu_before) = (cpu_of(&pid), cpu_of(&me));

    eprintln!(
        "attacking with {attacks:?} for {} s ({} connections each, from {SOURCES} addresses)…",
        args.seconds, args.concurrency
    );
    let started = Instant::now();
    let until = started + Duration::from_secs(args.seconds);
    let attackers = if attacks.is_empty() {
        None
    } else {
        let me = std::env::current_exe()?;
        Some(
            tokio::process::Command::new("nice")
                .args(["-n", "19"])
                .arg(me)
                .arg("hostile-attacker")
                .args(["--addr", &node.cira.to_string()])
                .args(["--attacks", &attacks.join(",")])
                .args(["--seconds", &args.seconds.to_string()])
                .args(["--concurrency", &args.concurrency.to_string()])
                .args(["--squat-seed", &cfg.seed.to_string()])
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .context("starting the attackers")?,
        )
    };
    // The attack is under way when the real devices come.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut legit = cfg.clone();
    legit.server = node.cira;
    // Real devices come from many addresses: ten per loopback address from 127.0.1.1 up.
    legit.source_ips = (0..args.devices.div_ceil(10))
        .map(|i| IpAddr::from([127, 0, 1 + (i / 250) as u8, 1 + (i % 250) as u8]))
        .collect();
    legit.reconnect_min = Duration::from_millis(200);
    legit.reconnect_max = Duration::from_secs(2);
    let fleet = Fleet::start(legit)?;
    let mut rss_max = rss_before;
    let mut all_connected_after = None;
    while Instant::now() < until || all_connected_after.is_none() {
        if fleet.stats().connected() >= args.devices && all_connected_after.is_none() {
            all_connected_after = Some(started.elapsed().as_secs_f64() - 2.0);
        }
        if Instant::now() > until + Duration::from_secs(30) {
            break;
        }
        rss_max = rss_max.max(rss());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let attack_seconds = started.elapsed().as_secs_f64();
    let ingress_cpu = cpu_of(&pid)
        .saturating_sub(ingress_cpu_before)
        .as_secs_f64();
    let bench_cpu = cpu_of(&me).saturating_sub(bench_cpu_before).as_secs_f64();
    let legit_connected = fleet.stats().connected();
    let p99 = fleet.stats().connect_quantile_ms(0.99);
    let p50 = fleet.stats().connect_quantile_ms(0.5);
    let tally: serde_json::Value = match attackers {
        Some(child) => {
            let out = tokio::time::timeout(Duration::from_secs(90), child.wait_with_output())
                .await
                .context("the attackers did not stop")??;
            serde_json::from_slice(&out.stdout).unwrap_or_default()
        }
        None => serde_json::json!({}),
    };
    // The last failed-login interval closes, and its count is published.
    tokio::time::sleep(Duration::from_secs(args.auth_event_interval + 2)).await;
    rss_max = rss_max.max(rss());
    let events_after = stream_messages().await;
    let failure_events = metric_at(node.health, "homeport_cira_auth_failure_events_total").await;
    let failed_logins = metric_at(node.health, "homeport_cira_auth_failures_total").await;
    let refused_source = metric_at(
        node.health,
        "homeport_cira_connections_refused_source_total",
    )
    .await;
    let protocol_errors = metric_at(node.health, "homeport_cira_protocol_errors_total").await;
    let total_seconds = started.elapsed().as_secs_f64();
    // One window per source address and tenant per interval (random GUIDs are tenant "",
    // the squatted device's tenant "bench").
    let tenants =
        u64::from(attacks.contains(&"login-flood")) + u64::from(attacks.contains(&"guid-squat"));
    let intervals = (total_seconds / args.auth_event_interval as f64).ceil() as u64 + 1;
    let failure_event_bound = u64::from(SOURCES) * tenants * intervals;
    fleet.stop().await;
    node.child.terminate(Duration::from_secs(30)).await;

    let line = serde_json::json!({
        "bench": "hostile",
        "cpu": cpu::describe(),
        "attack": args.attack,
        "seconds": args.seconds,
        "attack_connections": args.concurrency,
        "attack_sources": SOURCES,
        "attack_attempts": tally["attempts"],
        "attack_refused_or_dropped": tally["refused_or_dropped"],
        "attack_connect_errors": tally["errors"],
        "attackers_cpu_percent": round(
            tally["cpu_seconds"].as_f64().unwrap_or(0.0) / args.seconds as f64 * 100.0
        ),
        "legit_devices": args.devices,
        "legit_connected": legit_connected,
        "legit_all_connected_seconds": all_connected_after.map(round),
        "legit_source_addresses": args.devices.div_ceil(10),
        "legit_connect_p50_ms": p50,
        "legit_connect_p99_ms": p99,
        "ingress_cpu_percent": round(ingress_cpu / attack_seconds * 100.0),
        "devices_cpu_percent": round(bench_cpu / attack_seconds * 100.0),
        "ingress_rss_before_bytes": rss_before,
        "ingress_rss_growth_bytes": rss_max.saturating_sub(rss_before),
        "events_published": events_after.saturating_sub(events_before),
        "failed_logins": failed_logins,
        "failed_login_events": failure_events,
        "failed_login_event_bound": failure_event_bound,
        "auth_event_interval_seconds": args.auth_event_interval,
        "refused_per_source_cap": refused_source,
        "protocol_errors": protocol_errors,
    });
    println!("{line}");
    Ok(())
}
