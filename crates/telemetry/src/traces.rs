//! OpenTelemetry traces over OTLP/gRPC. Configured only by the standard `OTEL_*` variables
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER` and its
//! argument, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_BSP_*`); with no endpoint nothing is exported
//! and a span costs a no-op. Context crosses processes as a W3C `traceparent` (gRPC metadata,
//! NATS headers, events), which these spans continue.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{Span as _, SpanKind, Status, Tracer as _};
use opentelemetry::{global, Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;

/// This process's name for OpenTelemetry (the binary's), unless `OTEL_SERVICE_NAME` says.
static SERVICE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The OTLP endpoint of this process (`OTEL_EXPORTER_OTLP_ENDPOINT`), if one is set.
pub(crate) fn otlp_endpoint() -> Option<String> {
    std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|e| !e.trim().is_empty())
}

/// Spans are exported (work done only for them can be skipped otherwise).
static ENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process exports spans.
pub fn enabled() -> bool {
    ENABLED.load(std::sync::atomic::Ordering::Relaxed)
}

/// The resource every signal of this process carries: `service.name` and what
/// `OTEL_RESOURCE_ATTRIBUTES` adds.
pub(crate) fn resource() -> opentelemetry_sdk::Resource {
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        if let Some(name) = SERVICE.get() {
            resource = resource.with_service_name(name.clone());
        }
    }
    resource.build()
}

/// The exporter of this process, if any; shut it down to flush before exiting.
#[derive(Default)]
pub struct Tracing {
    provider: Option<SdkTracerProvider>,
}

impl Tracing {
    /// Exports what is buffered (within the exporter's timeout) and stops.
    pub fn shutdown(self) {
        if let Some(p) = self.provider {
            let _ = p.shutdown();
        }
    }
}

/// Starts exporting spans when `OTEL_EXPORTER_OTLP_ENDPOINT` is set; `service` names the
/// process unless `OTEL_SERVICE_NAME` does. Call inside the Tokio runtime.
pub fn init(service: &str) -> Tracing {
    let Some(endpoint) = otlp_endpoint() else {
        return Tracing::default();
    };
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
    {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(endpoint, error = %e, "OTLP exporter not started; no traces");
            return Tracing::default();
        }
    };
    let processor =
        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
    let _ = SERVICE.set(service.to_owned());
    ENABLED.store(true, std::sync::atomic::Ordering::Relaxed);
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource())
        .build();
    global::set_tracer_provider(provider.clone());
    tracing::info!(endpoint, "exporting traces over OTLP");
    Tracing {
        provider: Some(provider),
    }
}

/// One operation's span. Never carries secrets: callers pass only names, ids and outcomes.
pub struct TraceSpan {
    span: global::BoxedSpan,
    /// The W3C context to send on (this span's when it records, else a child of the parent).
    traceparent: Option<String>,
}

impl std::fmt::Debug for TraceSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceSpan")
            .field("traceparent", &self.traceparent)
            .finish()
    }
}

impl TraceSpan {
    /// Starts `name` as a child of the W3C `parent` traceparent, if any.
    pub fn start(
        name: &'static str,
        server: bool,
        parent: Option<&str>,
        attributes: Vec<(&'static str, String)>,
    ) -> TraceSpan {
        let parent_cx = match parent {
            Some(tp) => {
                let carrier = HashMap::from([("traceparent".to_string(), tp.to_string())]);
                TraceContextPropagator::new().extract(&carrier)
            }
            None => Context::new(),
        };
        let kind = if server {
            SpanKind::Server
        } else {
            SpanKind::Internal
        };
        let span = global::tracer("homeport")
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(
                attributes
                    .into_iter()
                    .map(|(k, v)| KeyValue::new(k, v))
                    .collect::<Vec<_>>(),
            )
            .start_with_context(&global::tracer("homeport"), &parent_cx);
        let traceparent = span.is_recording().then(|| {
            let cx = span.span_context();
            format!(
                "00-{}-{}-{:02x}",
                cx.trace_id(),
                cx.span_id(),
                cx.trace_flags().to_u8()
            )
        });
        TraceSpan { span, traceparent }
    }

    /// This span's W3C traceparent, when it is recorded (exported).
    pub fn traceparent(&self) -> Option<&str> {
        self.traceparent.as_deref()
    }

    /// A `tracing` span for the log lines of this operation, carrying its trace and span ids
    /// (empty when nothing is exported).
    pub fn log_span(&self, operation: &'static str) -> tracing::Span {
        let (trace_id, span_id) = self
            .traceparent()
            .and_then(trace_and_span)
            .unwrap_or_default();
        tracing::info_span!("op", operation, trace_id, span_id)
    }

    /// Ends the span, failed with `error` if given.
    pub fn end(mut self, error: Option<&str>) {
        if let Some(e) = error {
            self.span.set_status(Status::error(e.to_owned()));
        }
        self.span.end();
    }
}

/// Runs a request's `work` in a server span `name`, child of the caller's W3C `parent` if any,
/// failed with the error's text when it fails.
pub async fn traced<T, E: std::fmt::Display>(
    name: &'static str,
    parent: Option<&str>,
    work: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let span = TraceSpan::start(name, true, parent, vec![("rpc.system", "grpc".to_string())]);
    // The request's log lines carry its trace and span ids.
    let result = tracing::Instrument::instrument(work, span.log_span(name)).await;
    span.end(result.as_ref().err().map(|e| e.to_string()).as_deref());
    result
}

/// The trace and span ids of a W3C traceparent (`00-<32 hex>-<16 hex>-<2 hex>`).
fn trace_and_span(traceparent: &str) -> Option<(&str, &str)> {
    let mut parts = traceparent.split('-');
    let (_, trace, span) = (parts.next()?, parts.next()?, parts.next()?);
    (trace.len() == 32 && span.len() == 16).then_some((trace, span))
}
