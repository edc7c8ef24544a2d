//! `homeport-bench rest`: the command bench's deployment, measured first over gRPC and then
//! through the gateway (`GET /api/v1/amt/power/state/<guid>` over keep-alive HTTP/1.1), so
//! the two figures come from the same processes a moment apart.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use homeport_http1::client::Conn;

use crate::command::{spawn, wait_ready};
use crate::{free_port, round, Child};

pub struct Setup<'a> {
    pub bin: &'a Path,
    pub grpc: SocketAddr,
    pub jwt_file: &'a Path,
    pub token: &'a str,
    pub guids: &'a Arc<Vec<String>>,
    pub seconds: u64,
    pub concurrency: usize,
    /// The rest of the path (ingress, mps-command, simulator), for its CPU.
    pub others: &'a [&'a Child],
}

pub struct RestStats {
    pub ok: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub latencies_us: Vec<u32>,
    pub first_error: Option<String>,
    pub gateway_cpu: Duration,
    pub path_cpu: Duration,
    pub gateway_rss: u64,
    /// Dashboard queries over the same fleet, after the load.
    pub listings: serde_json::Value,
}

fn cpu_of(children: &[&Child]) -> Duration {
    children
        .iter()
        .map(|c| homeport_telemetry::usage_of(&c.pid()).map_or(Duration::ZERO, |u| u.1))
        .sum()
}

/// One connection's loop: requests back to back until `until`.
async fn worker(
    addr: SocketAddr,
    auth: Arc<String>,
    guids: Arc<Vec<String>>,
    offset: usize,
    until: Instant,
) -> (u64, u64, Vec<u32>, Option<String>) {
    let (mut ok, mut errors, mut lat, mut first) = (0u64, 0u64, Vec::new(), None);
    let mut conn = match Conn::connect(addr).await {
        Ok(c) => c,
        Err(e) => return (0, 1, lat, Some(e.to_string())),
    };
    conn.timeout = Duration::from_secs(30);
    let mut i = offset;
    while Instant::now() < until {
        let guid = &guids[i % guids.len()];
        i += 1;
        let t = Instant::now();
        let r = conn
            .request(
                "GET",
                &format!("/api/v1/amt/power/state/{guid}"),
                &[("Authorization", auth.as_str())],
                b"",
            )
            .await;
        lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
        match r {
            Ok(r) if r.status == 200 => ok += 1,
            Ok(r) => {
                errors += 1;
                first.get_or_insert_with(|| format!("{}: {}", r.status, r.text()));
            }
            Err(e) => {
                errors += 1;
                first.get_or_insert_with(|| e.to_string());
                match Conn::connect(addr).await {
                    Ok(c) => conn = c,
                    Err(_) => break,
                }
            }
        }
    }
    (ok, errors, lat, first)
}

async fn run_load(addr: SocketAddr, s: &Setup<'_>, seconds: Duration) -> RestStats {
    let auth = Arc::new(format!("Bearer {}", s.token));
    let started = Instant::now();
    let until = started + seconds;
    let mut set = tokio::task::JoinSet::new();
    for w in 0..s.concurrency.max(1) {
        set.spawn(worker(addr, auth.clone(), s.guids.clone(), w * 7919, until));
    }
    let mut out = RestStats {
        ok: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latencies_us: Vec::new(),
        first_error: None,
        gateway_cpu: Duration::ZERO,
        path_cpu: Duration::ZERO,
        gateway_rss: 0,
        listings: serde_json::Value::Null,
    };
    while let Some(r) = set.join_next().await {
        if let Ok((ok, errors, lat, first)) = r {
            out.ok += ok;
            out.errors += errors;
            out.latencies_us.extend(lat);
            if out.first_error.is_none() {
                out.first_error = first;
            }
        } else {
            out.errors += 1;
        }
    }
    out.elapsed = started.elapsed();
    out
}

pub async fn measure(s: Setup<'_>) -> anyhow::Result<RestStats> {
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let health = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let env = vec![
        ("HOMEPORT_GATEWAY_LISTEN", listen.to_string()),
        ("HOMEPORT_HEALTH_LISTEN", health.to_string()),
        ("HOMEPORT_DEVICE_API_URL", format!("http://{}", s.grpc)),
        (
            "HOMEPORT_JWT_HS256_SECRET_FILE",
            s.jwt_file.display().to_string(),
        ),
        ("HOMEPORT_LOG", "warn".to_string()),
    ];
    let gateway = spawn(s.bin, "gateway", &env, &[])?;
    wait_ready(health, "gateway").await.context("gateway")?;
    eprintln!("warming up the gateway…");
    let _ = run_load(listen, &s, Duration::from_secs(3)).await;
    eprintln!("measuring through the gateway for {} s…", s.seconds);
    let (g0, p0) = (cpu_of(&[&gateway]), cpu_of(s.others));
    let mut stats = run_load(listen, &s, Duration::from_secs(s.seconds)).await;
    stats.gateway_cpu = cpu_of(&[&gateway]).saturating_sub(g0);
    stats.path_cpu = cpu_of(s.others).saturating_sub(p0);
    stats.gateway_rss = homeport_telemetry::usage_of(&gateway.pid()).map_or(0, |u| u.0);
    stats.listings = listings(listen, &s).await;
    gateway.terminate(Duration::from_secs(10)).await;
    Ok(stats)
}

/// What the dashboard asks while someone browses the fleet: pages, searches, a tag, the
/// counts; each 20 times, median and slowest in milliseconds.
async fn listings(addr: SocketAddr, s: &Setup<'_>) -> serde_json::Value {
    let auth = format!("Bearer {}", s.token);
    let n = s.guids.len();
    let probe = s.guids[n / 2].clone();
    let queries = [
        (
            "first_page",
            "/api/v1/devices?$top=25&$count=true".to_owned(),
        ),
        (
            "middle_page",
            format!("/api/v1/devices?$top=25&$skip={}&$count=true", n / 2),
        ),
        (
            "search_guid",
            format!("/api/v1/devices?$top=25&$count=true&search={}", &probe[..8]),
        ),
        (
            "search_no_match",
            "/api/v1/devices?$top=25&$count=true&search=no-such-device".to_owned(),
        ),
        (
            "search_host",
            "/api/v1/devices?$top=25&$count=true&search=sim-00001".to_owned(),
        ),
        (
            "tag",
            "/api/v1/devices?$top=25&$count=true&tags=simulated".to_owned(),
        ),
        ("stats", "/api/v1/devices/stats".to_owned()),
        ("tags", "/api/v1/devices/tags".to_owned()),
    ];
    let mut out = serde_json::Map::new();
    let Ok(mut conn) = Conn::connect(addr).await else {
        return serde_json::Value::Null;
    };
    for (name, path) in queries {
        let mut ms = Vec::new();
        let mut status = 0;
        for _ in 0..20 {
            let t = Instant::now();
            match conn
                .request("GET", &path, &[("Authorization", auth.as_str())], b"")
                .await
            {
                Ok(r) => status = r.status,
                Err(_) => status = 0,
            }
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        ms.sort_by(f64::total_cmp);
        out.insert(
            name.to_owned(),
            serde_json::json!({"status": status, "p50_ms": round(ms[ms.len() / 2]), "max_ms": round(ms[ms.len() - 1])}),
        );
    }
    serde_json::Value::Object(out)
}

/// The bench's JSON line.
pub fn report(
    r: &RestStats,
    devices: u64,
    concurrency: usize,
    grpc_rps: f64,
    grpc_p99_ms: f64,
    grpc_cpu_ms: f64,
    grpc_errors: u64,
) -> serde_json::Value {
    let mut lat = r.latencies_us.clone();
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        f64::from(lat[i]) / 1000.0
    };
    let n = (r.ok + r.errors).max(1) as f64;
    let rps = (r.ok + r.errors) as f64 / r.elapsed.as_secs_f64();
    let gateway_ms = r.gateway_cpu.as_secs_f64() * 1000.0 / n;
    let path_ms = r.path_cpu.as_secs_f64() * 1000.0 / n;
    serde_json::json!({
        "bench": "rest",
        "cpu": crate::cpu::describe(),
        "devices": devices,
        "connections": concurrency,
        "seconds": round(r.elapsed.as_secs_f64()),
        "requests": r.ok + r.errors,
        "errors": r.errors,
        "requests_per_second": round(rps),
        "p50_ms": round(pct(0.50)),
        "p90_ms": round(pct(0.90)),
        "p99_ms": round(pct(0.99)),
        "max_ms": round(pct(1.0)),
        "grpc_requests_per_second": round(grpc_rps),
        "grpc_errors": grpc_errors,
        "grpc_p99_ms": grpc_p99_ms,
        "rest_to_grpc_throughput": round(rps / grpc_rps.max(1e-9)),
        "gateway_cpu_ms_per_request": round(gateway_ms),
        "path_cpu_ms_per_request": round(gateway_ms + path_ms),
        "gateway_share_of_path_cpu": round(gateway_ms / (gateway_ms + path_ms).max(1e-9)),
        "grpc_path_cpu_ms_per_request": round(grpc_cpu_ms),
        "gateway_rss_mb": round(r.gateway_rss as f64 / 1e6),
        "first_error": r.first_error,
        "dashboard_queries": r.listings,
    })
}
