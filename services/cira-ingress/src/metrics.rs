//! Metric names and counters of the CIRA ingress (names are constants here, in one place).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use homeport_contracts::events::PublisherStats;
use homeport_telemetry::{Counter, Exposition, Gauge, Histogram, Observable};

#[derive(Debug, Default)]
pub struct Metrics {
    pub connections_total: Counter,
    pub connections_refused: Counter,
    /// Refused because their source address had too many handshakes in progress.
    pub connections_refused_source: Counter,
    pub connections_open: Gauge,
    pub tls_handshakes: Counter,
    pub tls_failures: Counter,
    /// Sessions whose suite kept OpenSSL's record layer (TLS 1.2 CBC, TLS 1.0/1.1).
    pub tls_openssl_records: Counter,
    pub http_probes: Counter,
    pub auth_failures: Counter,
    /// `auth_failed` events published (each may stand for several failed logins).
    pub auth_failure_events: Counter,
    pub sessions_connected: Gauge,
    pub keepalives: Counter,
    /// Keep-alive requests left unanswered (too soon after the last answered one).
    pub keepalives_ignored: Counter,
    /// Channels ended because the device broke their rules (the session stayed up).
    pub channel_aborts: Counter,
    pub protocol_errors: Counter,
    pub idle_timeouts: Counter,
    pub superseded: Counter,
    /// Presence entries of lost nodes removed by this node's reaper.
    pub presence_reaped: Counter,
    /// Attempts to record a session's presence that failed (NATS unreachable, or the entry
    /// kept changing); each is retried.
    pub presence_write_failures: Counter,
    /// When the CIRA server certificate expires (Unix seconds).
    pub tls_certificate_expiry: Gauge,
    pub channel_opens: Counter,
    pub tunnel_requests: Counter,
    pub tunnel_errors: Counter,
    pub tunnel_latency: Histogram,
}

/// What `/readyz` and `/metrics` report for one ingress.
pub struct IngressObservable {
    pub metrics: Arc<Metrics>,
    pub events: Arc<PublisherStats>,
    pub nats: async_nats::Client,
    pub draining: Arc<AtomicBool>,
}

impl Observable for IngressObservable {
    fn ready(&self) -> Result<(), String> {
        if self.draining.load(Ordering::Relaxed) {
            return Err("draining".into());
        }
        homeport_contracts::nats_ready(&self.nats)
    }

    fn metrics(&self) -> String {
        let m = &self.metrics;
        let mut e = Exposition::default();
        e.counter(
            "homeport_cira_connections_total",
            "TCP connections accepted",
            m.connections_total.get(),
        );
        e.counter(
            "homeport_cira_connections_refused_total",
            "Connections refused at the connection limit",
            m.connections_refused.get(),
        );
        e.counter(
            "homeport_cira_connections_refused_source_total",
            "Connections refused because their source address had too many handshakes in progress",
            m.connections_refused_source.get(),
        );
        e.gauge(
            "homeport_cira_connections_open",
            "TCP connections open",
            m.connections_open.get(),
        );
        e.counter(
            "homeport_cira_tls_handshakes_total",
            "Completed TLS handshakes",
            m.tls_handshakes.get(),
        );
        e.counter(
            "homeport_cira_tls_failures_total",
            "Failed or timed-out TLS handshakes",
            m.tls_failures.get(),
        );
        e.counter(
            "homeport_cira_tls_openssl_record_layer_total",
            "Sessions whose TLS suite (CBC, TLS 1.0/1.1) kept OpenSSL's larger record layer",
            m.tls_openssl_records.get(),
        );
        e.counter(
            "homeport_cira_http_probes_total",
            "HTTP GET probes answered with the banner",
            m.http_probes.get(),
        );
        e.counter(
            "homeport_cira_auth_failures_total",
            "Failed device logins",
            m.auth_failures.get(),
        );
        e.counter(
            "homeport_cira_auth_failure_events_total",
            "auth_failed events published (at most one per source address and tenant per interval)",
            m.auth_failure_events.get(),
        );
        e.gauge(
            "homeport_cira_devices_connected",
            "Devices with a ready CIRA session on this node",
            m.sessions_connected.get(),
        );
        e.counter(
            "homeport_cira_keepalives_total",
            "Keep-alive requests answered",
            m.keepalives.get(),
        );
        e.counter(
            "homeport_cira_presence_write_failures_total",
            "Failed attempts to record a session's presence (retried)",
            m.presence_write_failures.get(),
        );
        e.gauge(
            "homeport_cira_tls_certificate_expiry_timestamp_seconds",
            "When the CIRA server certificate expires, Unix time",
            m.tls_certificate_expiry.get(),
        );
        e.counter(
            "homeport_cira_presence_reaped_total",
            "Presence entries of lost ingress nodes removed by this node (one disconnected event each)",
            m.presence_reaped.get(),
        );
        e.counter(
            "homeport_cira_keepalives_ignored_total",
            "Keep-alive requests left unanswered because they came too soon after the last answer",
            m.keepalives_ignored.get(),
        );
        e.counter(
            "homeport_cira_channel_aborts_total",
            "Channels ended because the device broke their rules (the session stayed up)",
            m.channel_aborts.get(),
        );
        e.counter(
            "homeport_cira_protocol_errors_total",
            "Sessions ended by an APF protocol violation",
            m.protocol_errors.get(),
        );
        e.counter(
            "homeport_cira_idle_timeouts_total",
            "Sessions dropped after the idle timeout",
            m.idle_timeouts.get(),
        );
        e.counter(
            "homeport_cira_superseded_total",
            "Sessions closed because the device reconnected",
            m.superseded.get(),
        );
        e.counter(
            "homeport_cira_channel_opens_total",
            "APF channels opened to devices",
            m.channel_opens.get(),
        );
        e.counter(
            "homeport_cira_tunnel_requests_total",
            "Tunnelled HTTP requests",
            m.tunnel_requests.get(),
        );
        e.counter(
            "homeport_cira_tunnel_errors_total",
            "Tunnelled HTTP requests that failed",
            m.tunnel_errors.get(),
        );
        e.histogram(
            "homeport_cira_tunnel_latency_seconds",
            "Tunnelled request latency",
            &m.tunnel_latency,
        );
        let ev = &self.events;
        e.counter(
            "homeport_events_published_total",
            "Events acknowledged by JetStream",
            ev.published.load(Ordering::Relaxed),
        );
        e.gauge(
            "homeport_events_pending",
            "Events waiting for JetStream",
            i64::try_from(ev.pending.load(Ordering::Relaxed)).unwrap_or(i64::MAX),
        );
        e.counter(
            "homeport_events_retries_total",
            "Event publish attempts that failed and were retried",
            ev.retries.load(Ordering::Relaxed),
        );
        e.counter(
            "homeport_events_dropped_total",
            "Events dropped because the buffer was full",
            ev.dropped.load(Ordering::Relaxed),
        );
        e.finish()
    }
}
