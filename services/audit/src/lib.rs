//! The audit service: a durable JetStream consumer that stores every fleet event in the
//! database exactly once, and `AuditService` (gRPC) to query them and follow them live.
//! Stateless: any number of replicas share the durable consumer.

mod config;
mod service;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use homeport_auth::Authenticator;
use homeport_contracts::Names;
use homeport_proto::audit::v1::audit_service_server::AuditServiceServer;
use homeport_store::Store;
use homeport_telemetry::{Counter, Exposition, Gauge, Histogram, Observable};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::AuditConfig;
pub use service::{MAX_FEEDS, MAX_FEEDS_PER_CALLER};

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            lag: Histogram::new(LAG_BUCKETS_MS),
            batch_write: Histogram::new(LAG_BUCKETS_MS),
            stored: Counter::default(),
            duplicates: Counter::default(),
            batches: Counter::default(),
            poison: Counter::default(),
            db_errors: Counter::default(),
            db_down: Gauge::default(),
            sessions: Counter::default(),
        }
    }
}

/// Buckets of the lag histogram: fine enough to read a p99 against a 500 ms target.
const LAG_BUCKETS_MS: &[u64] = &[
    1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 400, 500, 750, 1000, 2000, 5000, 10000, 30000,
];

pub struct Metrics {
    /// Publish-to-commit lag per event.
    pub lag: Histogram,
    /// Duration of one batch's insert and commit.
    pub batch_write: Histogram,
    pub stored: Counter,
    pub duplicates: Counter,
    pub batches: Counter,
    pub poison: Counter,
    pub db_errors: Counter,
    pub db_down: Gauge,
    /// Devices whose last connect or disconnect time moved.
    pub sessions: Counter,
}

pub struct AuditParts {
    pub config: AuditConfig,
    /// Limits of the events stream, if this process creates it.
    pub stream_limits: homeport_contracts::events::StreamLimits,
    pub names: Names,
    pub nats: async_nats::Client,
    pub store: Store,
    pub auth: Authenticator,
}

/// A running audit worker (and the API it can serve).
pub struct Audit {
    config: AuditConfig,
    names: Names,
    nats: async_nats::Client,
    store: Store,
    auth: Arc<Authenticator>,
    pub metrics: Arc<Metrics>,
    subscribers: Arc<Gauge>,
    feeds: Arc<service::Feeds>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl Audit {
    /// Starts the consumer.
    pub fn start(parts: AuditParts) -> Audit {
        let metrics = Arc::new(Metrics::default());
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(worker::run(
            async_nats::jetstream::new(parts.nats.clone()),
            parts.names.clone(),
            parts.store.clone(),
            parts.config.clone(),
            parts.stream_limits.clone(),
            metrics.clone(),
            cancel.clone(),
        ));
        tasks.spawn(worker::prune(
            parts.store.clone(),
            parts.config.retention(),
            cancel.clone(),
        ));
        Audit {
            config: parts.config,
            names: parts.names,
            nats: parts.nats,
            store: parts.store,
            auth: Arc::new(parts.auth),
            metrics,
            subscribers: Arc::new(Gauge::default()),
            feeds: Arc::default(),
            cancel,
            tasks,
        }
    }

    /// Serves AuditService on `listener` until `shutdown` resolves.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<AuditServiceServer<service::AuditApi>>()
            .await;
        let api = AuditServiceServer::with_interceptor(
            service::AuditApi {
                store: self.store.clone(),
                js: async_nats::jetstream::new(self.nats.clone()),
                names: self.names.clone(),
                subscribers: self.subscribers.clone(),
                feeds: self.feeds.clone(),
            },
            self.auth.clone().interceptor(),
        );
        tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(api)
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                shutdown,
            )
            .await?;
        Ok(())
    }

    pub fn config(&self) -> &AuditConfig {
        &self.config
    }

    pub fn observable(&self) -> Arc<dyn Observable> {
        Arc::new(Observed {
            metrics: self.metrics.clone(),
            subscribers: self.subscribers.clone(),
            nats: self.nats.clone(),
        })
    }

    /// Stops the consumer; a batch not yet committed stays unacked and is redelivered.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.tasks.wait()).await;
    }
}

struct Observed {
    metrics: Arc<Metrics>,
    subscribers: Arc<Gauge>,
    nats: async_nats::Client,
}

impl Observable for Observed {
    fn ready(&self) -> Result<(), String> {
        if self.metrics.db_down.get() != 0 {
            return Err("database unavailable".into());
        }
        homeport_contracts::nats_ready(&self.nats)
    }

    fn metrics(&self) -> String {
        let m = &self.metrics;
        let mut e = Exposition::default();
        e.counter(
            "homeport_audit_events_stored_total",
            "Events written to the database.",
            m.stored.get(),
        );
        e.counter(
            "homeport_audit_duplicates_total",
            "Redelivered events already stored (skipped).",
            m.duplicates.get(),
        );
        e.counter(
            "homeport_audit_batches_total",
            "Committed batches.",
            m.batches.get(),
        );
        e.counter(
            "homeport_audit_device_sessions_recorded_total",
            "Devices whose last connect or disconnect time moved.",
            m.sessions.get(),
        );
        e.counter(
            "homeport_audit_poison_total",
            "Messages that are not events (terminated).",
            m.poison.get(),
        );
        e.counter(
            "homeport_audit_db_errors_total",
            "Failed batch writes (retried).",
            m.db_errors.get(),
        );
        e.gauge(
            "homeport_audit_db_down",
            "1 while batch writes fail.",
            m.db_down.get(),
        );
        e.gauge(
            "homeport_audit_subscribers",
            "Live Subscribe streams.",
            self.subscribers.get(),
        );
        e.histogram(
            "homeport_audit_lag_seconds",
            "Publish-to-commit lag per event.",
            &m.lag,
        );
        e.histogram(
            "homeport_audit_batch_write_seconds",
            "Insert and commit of one batch.",
            &m.batch_write,
        );
        e.finish()
    }
}
