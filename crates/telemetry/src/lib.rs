//! Logs, metrics and the health endpoint shared by every Homeport service.
//!
//! Metrics are plain atomics rendered in the Prometheus text format: no registry, no labels
//! with unbounded values (device ids never become labels).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub mod otlp_metrics;
pub mod traces;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Installs the global subscriber, human-readable text. `filter` uses
/// `tracing_subscriber::EnvFilter` syntax.
pub fn init_logging(filter: &str) {
    init_logging_as(filter, false);
}

/// Like [`init_logging`]; with `json`, one JSON object per line (time, level, message and
/// fields at the top level) for log collectors.
pub fn init_logging_as(filter: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A second init (tests, all-in-one) keeps the first subscriber.
    if json {
        let _ = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            // The operation a line belongs to (a command's `trace_id` and `span_id`).
            .with_current_span(true)
            .with_span_list(false)
            .with_env_filter(filter)
            .try_init();
    } else {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_target(false)
            .try_init();
    }
}

#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Latency histogram with fixed millisecond buckets. When metrics go out over OTLP, the same
/// observations also feed an OpenTelemetry histogram (attached when the exposition first
/// renders this one).
pub struct Histogram {
    bounds_ms: &'static [u64],
    buckets: Vec<AtomicU64>,
    sum_us: AtomicU64,
    count: AtomicU64,
    /// The OpenTelemetry histogram and the attributes its convention asks for.
    otel: std::sync::OnceLock<(
        opentelemetry::metrics::Histogram<f64>,
        Vec<opentelemetry::KeyValue>,
    )>,
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("bounds_ms", &self.bounds_ms)
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

pub const LATENCY_BUCKETS_MS: &[u64] =
    &[1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000];

impl Default for Histogram {
    fn default() -> Self {
        Self::new(LATENCY_BUCKETS_MS)
    }
}

impl Histogram {
    pub fn new(bounds_ms: &'static [u64]) -> Self {
        Self {
            bounds_ms,
            buckets: bounds_ms.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
            count: AtomicU64::new(0),
            otel: std::sync::OnceLock::new(),
        }
    }

    pub fn observe(&self, d: Duration) {
        if let Some((h, attributes)) = self.otel.get() {
            h.record(d.as_secs_f64(), attributes);
        }
        let ms = d.as_millis();
        for (b, bound) in self.buckets.iter().zip(self.bounds_ms) {
            if ms <= u128::from(*bound) {
                b.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_us.fetch_add(
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// Builds a Prometheus text exposition.
#[derive(Default)]
pub struct Exposition(String);

impl Exposition {
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        let _ = writeln!(
            self.0,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    }
    pub fn gauge(&mut self, name: &str, help: &str, value: i64) {
        let _ = writeln!(
            self.0,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    }
    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        if let Some(meter) = otlp_metrics::meter() {
            h.otel.get_or_init(|| {
                let (otel, attributes) = otlp_metrics::otel_name(name);
                let histogram = meter
                    .f64_histogram(otel)
                    .with_description(help.to_owned())
                    .with_unit("s")
                    .with_boundaries(h.bounds_ms.iter().map(|ms| *ms as f64 / 1000.0).collect())
                    .build();
                (histogram, attributes)
            });
        }
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, bound) in h.buckets.iter().zip(h.bounds_ms) {
            let secs = *bound as f64 / 1000.0;
            let _ = writeln!(
                self.0,
                "{name}_bucket{{le=\"{secs}\"}} {}",
                b.load(Ordering::Relaxed)
            );
        }
        let count = h.count.load(Ordering::Relaxed);
        let sum = h.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(
            self.0,
            "{name}_bucket{{le=\"+Inf\"}} {count}\n{name}_sum {sum}\n{name}_count {count}"
        );
    }
    pub fn finish(self) -> String {
        self.0
    }
}

/// What a service reports on `/readyz` and `/metrics`.
pub trait Observable: Send + Sync + 'static {
    /// `Ok` when ready to serve; `Err(reason)` otherwise (a dependency is down, draining...).
    fn ready(&self) -> Result<(), String>;
    fn metrics(&self) -> String;
}

/// Serves `/healthz` (alive), `/readyz` and `/metrics` until `cancel` fires.
pub async fn serve_health(
    listener: TcpListener,
    target: Arc<dyn Observable>,
    cancel: CancellationToken,
) {
    // The same metrics over OTLP, when an endpoint is configured.
    let export = otlp_metrics::start(target.clone());
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            a = listener.accept() => a,
        };
        let Ok((mut sock, _)) = accepted else {
            continue;
        };
        let target = target.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut n = 0;
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while n < buf.len() {
                    let m = sock.read(&mut buf[n..]).await?;
                    if m == 0 {
                        break;
                    }
                    n += m;
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                Ok::<_, std::io::Error>(())
            })
            .await;
            if !matches!(read, Ok(Ok(()))) {
                return;
            }
            let line = String::from_utf8_lossy(&buf[..n]);
            let path = line.split_whitespace().nth(1).unwrap_or("/");
            let (status, ctype, body) = match path {
                "/healthz" => ("200 OK", "text/plain", "ok\n".to_string()),
                "/readyz" => match target.ready() {
                    Ok(()) => ("200 OK", "text/plain", "ready\n".to_string()),
                    Err(why) => ("503 Service Unavailable", "text/plain", format!("{why}\n")),
                },
                "/metrics" => ("200 OK", "text/plain; version=0.0.4", target.metrics()),
                _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
    let _ = tokio::task::spawn_blocking(move || export.shutdown()).await;
}

/// Resident memory and CPU time of this process, from /proc (Linux).
pub fn process_usage() -> Option<(u64, Duration)> {
    usage_of("self")
}

/// Resident memory (bytes) and CPU time (user + system) of process `pid` ("self" for this one).
pub fn usage_of(pid: &str) -> Option<(u64, Duration)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    let cpu = Duration::from_millis((utime + stime) * 10);
    Some((rss_kb * 1024, cpu))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_millis(700));
        let mut e = Exposition::default();
        e.histogram("x_seconds", "test", &h);
        let text = e.finish();
        assert!(text.contains("x_seconds_bucket{le=\"0.002\"} 0"), "{text}");
        assert!(text.contains("x_seconds_bucket{le=\"0.005\"} 1"), "{text}");
        assert!(text.contains("x_seconds_bucket{le=\"1\"} 2"), "{text}");
        assert!(text.contains("x_seconds_count 2"), "{text}");
    }

    #[test]
    fn own_usage_is_readable() {
        let (rss, _cpu) = process_usage().expect("/proc readable");
        assert!(rss > 0);
    }
}
