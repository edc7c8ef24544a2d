//! `homeport-bench audit`: the audit worker as its own process against the local NATS and
//! PostgreSQL. Phase one publishes a backlog of `--events` and measures how fast the worker
//! persists it; phase two publishes at `--rate` for `--seconds` and reads the worker's
//! publish-to-commit lag histogram.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use homeport_contracts::events;
use prost::Message as _;

use crate::{free_port, http_get, round, sibling, Child};

#[derive(clap::Args, Debug)]
pub struct AuditArgs {
    /// Events in the backlog the worker drains (persist throughput).
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// Publish rate of the lag phase, events per second.
    #[arg(long, default_value_t = 5000)]
    rate: u32,
    /// Seconds of the lag phase.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    #[command(flatten)]
    backends: crate::Backends,
}

pub async fn run(args: AuditArgs) -> anyhow::Result<()> {
    let bin = sibling("audit")?;
    let run = format!("audbench{:06x}", fastrand::u32(..0xff_ffff));
    let dir = std::env::temp_dir().join(format!("homeport-{run}"));
    std::fs::create_dir_all(&dir)?;
    let db = homeport_store::testing::temp_postgres(&args.backends.pg_admin_url, "audbench")
        .await
        .context("creating the bench database")?;
    let result = inner(&args, &run, &dir, &db.url, &bin).await;
    let _ = db.drop_db().await;
    let _ = std::fs::remove_dir_all(&dir);
    crate::remove_nats_state(&args.backends.nats_url, &run).await;
    result
}

/// Publishes `n` events, keeping up to `window` acks outstanding; at `rate` per second if set.
async fn publish(
    js: &async_nats::jetstream::Context,
    names: &homeport_contracts::Names,
    n: u64,
    rate: u32,
) -> anyhow::Result<()> {
    let mut pending = std::collections::VecDeque::new();
    let window = 4096;
    let gap = (rate > 0).then(|| Duration::from_secs(1) / rate);
    let started = tokio::time::Instant::now();
    for i in 0..n {
        if let Some(gap) = gap {
            tokio::time::sleep_until(started + gap * u32::try_from(i).unwrap_or(u32::MAX)).await;
        }
        let guid = format!("00000000-0000-0000-0000-{:012}", i % 1000);
        let ev = events::envelope("bench", &guid, "connected", "bench");
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", ev.id.as_str());
        let ack = js
            .publish_with_headers(
                names.device_event("bench", &guid, "connected"),
                headers,
                ev.encode_to_vec().into(),
            )
            .await?;
        pending.push_back(ack);
        if pending.len() >= window {
            if let Some(a) = pending.pop_front() {
                a.await?;
            }
        }
    }
    for a in pending {
        a.await?;
    }
    Ok(())
}

/// `(bound in seconds, cumulative count)` of a histogram in a /metrics text.
fn buckets(text: &str, name: &str) -> Vec<(f64, u64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    text.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|l| {
            let (le, count) = l.split_once("\"} ")?;
            Some((
                le.parse().unwrap_or(f64::INFINITY),
                count.trim().parse().ok()?,
            ))
        })
        .collect()
}

/// The smallest bucket bound holding fraction `p` of the observations, in ms.
fn quantile_ms(b: &[(f64, u64)], p: f64) -> f64 {
    let total = b.last().map(|x| x.1).unwrap_or(0);
    let want = (total as f64 * p).ceil() as u64;
    b.iter()
        .find(|(_, c)| *c >= want && total > 0)
        .map(|(le, _)| le * 1000.0)
        .unwrap_or(f64::NAN)
}

async fn inner(
    args: &AuditArgs,
    run: &str,
    dir: &std::path::Path,
    db_url: &str,
    bin: &std::path::Path,
) -> anyhow::Result<()> {
    let nats = homeport_runtime::connect_nats(
        &args.backends.nats_url,
        "bench-audit",
        Duration::from_secs(10),
    )
    .await?;
    let js = async_nats::jetstream::new(nats);
    let names = homeport_contracts::Names::new(run);
    events::ensure_events_stream(&js, &names, &Default::default())
        .await
        .map_err(anyhow::Error::msg)?;
    let jwt = dir.join("jwt.secret");
    std::fs::write(&jwt, b"homeport-bench-secret-0123456789abcdef")?;

    eprintln!("publishing a backlog of {} events…", args.events);
    let started = Instant::now();
    publish(&js, &names, args.events, 0).await?;
    let publish_rate = args.events as f64 / started.elapsed().as_secs_f64();

    let health = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let grpc = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let mut c = tokio::process::Command::new(bin);
    c.env("HOMEPORT_NATS_URL", &args.backends.nats_url)
        .env("HOMEPORT_SUBJECT_PREFIX", run)
        .env("HOMEPORT_DATABASE_URL", db_url)
        .env("HOMEPORT_DATABASE_POOL", "4")
        .env("HOMEPORT_HEALTH_LISTEN", health.to_string())
        .env("HOMEPORT_GRPC_LISTEN", grpc.to_string())
        .env("HOMEPORT_JWT_HS256_SECRET_FILE", &jwt)
        .env("HOMEPORT_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true);
    let child = Child {
        inner: c.spawn().context("starting audit")?,
        name: "audit".into(),
    };
    eprintln!("draining the backlog…");
    let stored = |t: String| {
        t.lines()
            .find_map(|l| l.strip_prefix("homeport_audit_events_stored_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let drain_started = Instant::now();
    let mut first: Option<Instant> = None;
    loop {
        let n = http_get(health, "/metrics")
            .await
            .map(|(_, t)| stored(t))
            .unwrap_or(0);
        if n > 0 && first.is_none() {
            first = Some(Instant::now());
        }
        if n >= args.events {
            break;
        }
        if drain_started.elapsed() > Duration::from_secs(600) {
            bail!("only {n}/{} events stored after 600 s", args.events);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // From the first stored batch: start-up and migrations are not persistence.
    let drain = first
        .map(|f| f.elapsed())
        .unwrap_or_default()
        .max(Duration::from_millis(1));
    let persisted_per_second = args.events as f64 / drain.as_secs_f64();

    eprintln!("publishing at {}/s for {} s…", args.rate, args.seconds);
    let before = http_get(health, "/metrics").await?.1;
    let lag_events = u64::from(args.rate) * args.seconds;
    publish(&js, &names, lag_events, args.rate).await?;
    let target = args.events + lag_events;
    let deadline = Instant::now() + Duration::from_secs(60);
    let after = loop {
        let t = http_get(health, "/metrics").await?.1;
        if stored(t.clone()) >= target || Instant::now() > deadline {
            break t;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (b0, b1) = (
        buckets(&before, "homeport_audit_lag_seconds"),
        buckets(&after, "homeport_audit_lag_seconds"),
    );
    let lag: Vec<(f64, u64)> = b1
        .iter()
        .zip(b0.iter().chain(std::iter::repeat(&(0.0, 0))))
        .map(|(a, b)| (a.0, a.1 - b.1.min(a.1)))
        .collect();
    let writes = buckets(&after, "homeport_audit_batch_write_seconds");
    let total_stored = stored(after.clone());
    child.terminate(Duration::from_secs(20)).await;
    let line = serde_json::json!({
        "bench": "audit",
        "cpu": crate::cpu::describe(),
        "events": args.events,
        "backlog_publish_per_second": round(publish_rate),
        "persisted_per_second": round(persisted_per_second),
        "drain_seconds": round(drain.as_secs_f64()),
        "lag_rate": args.rate,
        "lag_events": lag_events,
        "lag_p50_ms": quantile_ms(&lag, 0.50),
        "lag_p99_ms": quantile_ms(&lag, 0.99),
        "lag_max_bucket_ms": quantile_ms(&lag, 1.0),
        "batch_write_p99_ms": quantile_ms(&writes, 0.99),
        "stored_total": total_stored,
        "expected_total": target,
    });
    println!("{line}");
    Ok(())
}
