//! The services' metrics over OTLP/gRPC as well as Prometheus text, from one set of
//! instruments: each OpenTelemetry instrument is observable and reads the same atomics the
//! `/metrics` exposition renders (no second bookkeeping). Started with the health endpoint when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set; `OTEL_METRIC_EXPORT_INTERVAL` (ms, 60,000) paces it.
//! Histograms record each observation into an OpenTelemetry histogram as well.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::metrics::{Meter, MeterProvider as _};
use opentelemetry_sdk::metrics::SdkMeterProvider;

use crate::Observable;

/// The meter of this process's OTLP metrics, once started: histograms attach to it when the
/// exposition renders them.
static METER: std::sync::OnceLock<Meter> = std::sync::OnceLock::new();

pub(crate) fn meter() -> Option<&'static Meter> {
    METER.get()
}

/// The exporter of this process's metrics, if any.
#[derive(Default)]
pub struct MetricsExport {
    provider: Option<SdkMeterProvider>,
}

impl MetricsExport {
    /// Exports a last time and stops.
    pub fn shutdown(self) {
        if let Some(p) = self.provider {
            let _ = p.shutdown();
        }
    }
}

/// The OTLP name of a metric: the OpenTelemetry semantic conventions' where one exists (RPC,
/// messaging, database), the Prometheus name otherwise, with the attributes the convention asks
/// for.
pub(crate) fn otel_name(prometheus: &str) -> (String, Vec<opentelemetry::KeyValue>) {
    use opentelemetry::KeyValue;
    match prometheus {
        "homeport_command_seconds" => (
            "rpc.server.call.duration".into(),
            vec![KeyValue::new("rpc.system", "grpc")],
        ),
        "homeport_events_published_total" => (
            "messaging.client.sent.messages".into(),
            vec![KeyValue::new("messaging.system", "nats")],
        ),
        "homeport_audit_batch_write_seconds" => (
            "db.client.operation.duration".into(),
            vec![KeyValue::new("db.operation.name", "INSERT")],
        ),
        other => (other.to_owned(), Vec::new()),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

/// The counters and gauges of an exposition: name, kind, help.
fn families(text: &str) -> Vec<(String, Kind, String)> {
    let mut help = std::collections::HashMap::new();
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            if let Some((name, h)) = rest.split_once(' ') {
                help.insert(name.to_owned(), h.to_owned());
            }
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let kind = match rest.split_once(' ') {
                Some((name, "counter")) => Some((name, Kind::Counter)),
                Some((name, "gauge")) => Some((name, Kind::Gauge)),
                _ => None,
            };
            if let Some((name, kind)) = kind {
                let h = help.get(name).cloned().unwrap_or_default();
                out.push((name.to_owned(), kind, h));
            }
        }
    }
    out
}

/// The value of the unlabelled sample `name` in an exposition.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

fn instrument(meter: &Meter, target: &Arc<dyn Observable>, name: String, kind: Kind, help: String) {
    let t = target.clone();
    let (otel, attributes) = otel_name(&name);
    match kind {
        Kind::Counter => {
            meter
                .u64_observable_counter(otel)
                .with_description(help)
                .with_callback(move |o| {
                    if let Some(v) = sample(&t.metrics(), &name) {
                        o.observe(v as u64, &attributes);
                    }
                })
                .build();
        }
        Kind::Gauge => {
            meter
                .i64_observable_gauge(otel)
                .with_description(help)
                .with_callback(move |o| {
                    if let Some(v) = sample(&t.metrics(), &name) {
                        o.observe(v as i64, &attributes);
                    }
                })
                .build();
        }
    }
}

/// Starts exporting `target`'s metrics when `OTEL_EXPORTER_OTLP_ENDPOINT` is set. Call inside
/// the Tokio runtime.
pub fn start(target: Arc<dyn Observable>) -> MetricsExport {
    let Some(endpoint) = crate::traces::otlp_endpoint() else {
        return MetricsExport::default();
    };
    let exporter = match opentelemetry_otlp::MetricExporter::builder()
        .with_tonic()
        .build()
    {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(endpoint, error = %e, "OTLP metric exporter not started");
            return MetricsExport::default();
        }
    };
    let interval = std::env::var("OTEL_METRIC_EXPORT_INTERVAL")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(60), Duration::from_millis);
    let reader =
        opentelemetry_sdk::metrics::periodic_reader_with_async_runtime::PeriodicReader::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .with_interval(interval)
        .build();
    let provider = SdkMeterProvider::builder()
        .with_reader(reader)
        .with_resource(crate::traces::resource())
        .build();
    let meter = METER.get_or_init(|| provider.meter("homeport"));
    // Rendering the exposition once attaches its histograms to the meter.
    for (name, kind, help) in families(&target.metrics()) {
        instrument(meter, &target, name, kind, help);
    }
    MetricsExport {
        provider: Some(provider),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_gauges_are_read_from_the_exposition() {
        let mut e = crate::Exposition::default();
        e.counter("x_total", "Things", 7);
        e.gauge("y", "Level", -2);
        let text = e.finish();
        let f = families(&text);
        assert_eq!(f.len(), 2);
        assert!(f[0].0 == "x_total" && f[0].1 == Kind::Counter && f[0].2 == "Things");
        assert_eq!(sample(&text, "x_total"), Some(7.0));
        assert_eq!(sample(&text, "y"), Some(-2.0));
        assert_eq!(sample(&text, "x"), None, "a prefix is not a name");
    }
}
