//! The CIRA ingress: terminates TLS from AMT devices, drives one APF session per device,
//! records presence, publishes device events and serves the device's HTTP tunnel over NATS.
//!
//! Invariant: this is the only component that holds device sockets.
//! Invariant: keep-alives touch neither NATS nor the database; liveness work is one heartbeat
//! per node per interval.

pub mod auth;
pub mod bootstrap;
mod bounded;
pub mod config;
pub mod metrics;
mod reaper;
pub mod record;
mod registry;
mod session;
mod sources;
pub mod tls;
mod transport;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use homeport_contracts::events::{EventPublisher, PublisherConfig, StreamLimits};
use homeport_contracts::presence::{self, NodeHeartbeat};
use homeport_contracts::Names;
use homeport_secrets::DynSecretStore;
use homeport_store::Store;
use openssl::ssl::SslAcceptor;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::IngressConfig;
pub use metrics::{IngressObservable, Metrics};

/// Sources (address and tenant) whose failed logins are being aggregated at once.
const MAX_FAILURE_SOURCES: usize = 100_000;

/// TLS handshakes computing at once per node.
const MAX_CONCURRENT_HANDSHAKES: usize = 64;

/// Everything the ingress needs, ready-made: tests build these without ports or environment.
pub struct IngressParts {
    pub config: IngressConfig,
    pub node_id: String,
    pub names: Names,
    pub nats: async_nats::Client,
    pub store: Store,
    pub secrets: DynSecretStore,
    pub tls: SslAcceptor,
    pub stream_limits: StreamLimits,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("JetStream: {0}")]
    JetStream(String),
}

pub(crate) struct Shared {
    pub config: IngressConfig,
    pub node_id: String,
    pub source: String,
    pub names: Names,
    pub nats: async_nats::Client,
    /// Batched device reads for logins.
    pub devices: auth::DeviceLookup,
    pub secrets: DynSecretStore,
    pub tls: SslAcceptor,
    pub events: EventPublisher,
    pub presence: kv::Store,
    pub metrics: Arc<Metrics>,
    pub limiter: auth::FailureLimiter,
    /// Failed-login events, at most one per source and tenant per interval.
    pub failure_events: auth::FailureEvents,
    /// Live sessions of this node, by device guid.
    pub sessions: registry::Registry,
    /// TLS handshakes computing at once: bounds the CPU and transient memory of reconnect
    /// storms; a handshake waiting for its peer holds no permit, a queued one only a socket.
    pub handshakes: tokio_util::sync::PollSemaphore,
    /// Connections between accept and login, per source address.
    pub sources: Arc<sources::SourceGate>,
    /// Fires when the node drains: sessions disconnect their devices.
    pub drain: CancellationToken,
}

/// A running ingress. Dropping it does not stop it; call [`Ingress::shutdown`].
pub struct Ingress {
    shared: Arc<Shared>,
    local_addr: std::net::SocketAddr,
    stop_accept: CancellationToken,
    sessions: TaskTracker,
    background: TaskTracker,
    stop_background: CancellationToken,
    draining: Arc<AtomicBool>,
    nodes: kv::Store,
    dispatcher: tokio::task::JoinHandle<()>,
}

impl Ingress {
    /// Prepares the stream and buckets, then serves `listener` until [`Ingress::shutdown`].
    pub async fn start(parts: IngressParts, listener: TcpListener) -> Result<Ingress, StartError> {
        parts.config.validate().map_err(StartError::Config)?;
        let js = jetstream::new(parts.nats.clone());
        homeport_contracts::events::ensure_events_stream(&js, &parts.names, &parts.stream_limits)
            .await
            .map_err(StartError::JetStream)?;
        let replicas = parts.stream_limits.replicas;
        let presence_kv = presence::presence_bucket(&js, &parts.names, replicas)
            .await
            .map_err(|e| StartError::JetStream(e.to_string()))?;
        let heartbeat = parts.config.heartbeat_interval();
        let nodes = presence::nodes_bucket(&js, &parts.names, heartbeat * 3, replicas)
            .await
            .map_err(|e| StartError::JetStream(e.to_string()))?;
        let stop_background = CancellationToken::new();
        let background = TaskTracker::new();
        let (events, publisher_task) = EventPublisher::start(
            js,
            PublisherConfig::default(),
            stop_background.clone(),
            Duration::from_secs(5),
        );
        background.spawn(async move {
            let _ = publisher_task.await;
        });
        let local_addr = listener
            .local_addr()
            .map_err(|e| StartError::Config(format!("listener: {e}")))?;
        let per_source = parts.config.max_handshakes_per_source;
        let per_source_rate = parts.config.max_connections_per_source_per_sec;
        let auth_event_interval = parts.config.auth_event_interval();
        let shared = Arc::new(Shared {
            source: format!("cira-ingress/{}", parts.node_id),
            config: parts.config,
            node_id: parts.node_id,
            names: parts.names,
            nats: parts.nats,
            devices: auth::DeviceLookup::start(parts.store),
            secrets: parts.secrets,
            tls: parts.tls,
            events,
            presence: presence_kv,
            metrics: Arc::new(Metrics::default()),
            limiter: auth::FailureLimiter::default(),
            failure_events: auth::FailureEvents::new(auth_event_interval, MAX_FAILURE_SOURCES),
            sessions: registry::Registry::default(),
            handshakes: tokio_util::sync::PollSemaphore::new(Arc::new(Semaphore::new(
                MAX_CONCURRENT_HANDSHAKES,
            ))),
            sources: sources::SourceGate::new(per_source, per_source_rate),
            drain: CancellationToken::new(),
        });
        if let Some(expiry) = certificate_expiry(&shared.tls) {
            shared.metrics.tls_certificate_expiry.set(expiry);
        }
        let node_sub = shared
            .nats
            .subscribe(shared.names.cira_node_wildcard(&shared.node_id))
            .await
            .map_err(|e| StartError::JetStream(format!("subscribing the node subject: {e}")))?;
        let dispatcher = tokio::spawn(registry::dispatch(shared.clone(), node_sub));
        let draining = Arc::new(AtomicBool::new(false));
        background.spawn(heartbeat_loop(
            shared.clone(),
            nodes.clone(),
            heartbeat,
            draining.clone(),
            stop_background.clone(),
        ));
        background.spawn(failure_event_loop(shared.clone(), stop_background.clone()));
        background.spawn(reaper::run(
            shared.clone(),
            nodes.clone(),
            heartbeat,
            stop_background.clone(),
        ));
        let stop_accept = CancellationToken::new();
        let sessions = TaskTracker::new();
        tokio::spawn(accept_loop(
            shared.clone(),
            listener,
            stop_accept.clone(),
            sessions.clone(),
        ));
        tracing::info!(node = %shared.node_id, addr = %local_addr, "CIRA ingress listening");
        Ok(Ingress {
            shared,
            local_addr,
            stop_accept,
            sessions,
            background,
            stop_background,
            draining,
            nodes,
            dispatcher,
        })
    }

    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.local_addr
    }

    pub fn node_id(&self) -> &str {
        &self.shared.node_id
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.shared.metrics.clone()
    }

    pub fn observable(&self) -> Arc<IngressObservable> {
        Arc::new(IngressObservable {
            metrics: self.shared.metrics.clone(),
            events: self.shared.events.stats().clone(),
            nats: self.shared.nats.clone(),
            draining: self.draining.clone(),
        })
    }

    /// Graceful drain: stop accepting, disconnect every device with an APF DISCONNECT, wait
    /// up to the grace period for sessions to end (releasing presence, publishing
    /// `disconnected`), flush events, then remove this node's heartbeat.
    pub async fn shutdown(self) {
        let grace = self.shared.config.drain_grace();
        self.draining.store(true, Ordering::Relaxed);
        self.stop_accept.cancel();
        self.shared.drain.cancel();
        self.sessions.close();
        let open = self.shared.metrics.connections_open.get();
        tracing::info!(
            sessions = open,
            grace_secs = grace.as_secs(),
            "draining CIRA sessions"
        );
        if tokio::time::timeout(grace, self.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = self.shared.metrics.connections_open.get(),
                "drain grace period over; closing remaining sessions"
            );
        }
        self.dispatcher.abort();
        if !self.shared.events.flush(Duration::from_secs(5)).await {
            tracing::warn!("some events were not acknowledged before exit");
        }
        self.stop_background.cancel();
        self.background.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.background.wait()).await;
        let _ = self.nodes.delete(&self.shared.node_id).await;
        tracing::info!(node = %self.shared.node_id, "CIRA ingress stopped");
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    stop: CancellationToken,
    sessions: TaskTracker,
) {
    let limit = Arc::new(Semaphore::new(shared.config.max_connections));
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let Ok(permit) = limit.clone().try_acquire_owned() else {
                    shared.metrics.connections_refused.inc();
                    drop(tcp);
                    continue;
                };
                let shared = shared.clone();
                let fut = async move {
                    session::handle_connection(shared, tcp, peer).await;
                    drop(permit);
                };
                sessions.spawn(fut);
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::error!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Publishes the failed-login counts of the intervals that ended.
async fn failure_event_loop(shared: Arc<Shared>, stop: CancellationToken) {
    let every = (shared.failure_events.interval() / 4).max(Duration::from_millis(250));
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        for report in shared.failure_events.sweep(std::time::Instant::now()) {
            session::publish_auth_failure(&shared, report);
        }
    }
}

async fn heartbeat_loop(
    shared: Arc<Shared>,
    nodes: kv::Store,
    every: Duration,
    draining: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    let mut last_beat = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let beat = NodeHeartbeat {
            node: shared.node_id.clone(),
            sessions: u64::try_from(shared.metrics.sessions_connected.get()).unwrap_or(0),
            at: chrono::Utc::now().to_rfc3339(),
            draining: draining.load(Ordering::Relaxed),
        };
        let Ok(value) = serde_json::to_vec(&beat) else {
            continue;
        };
        if let Err(e) = nodes.put(&shared.node_id, value.into()).await {
            tracing::warn!(error = %e, "node heartbeat not written");
            continue;
        }
        let now = tokio::time::Instant::now();
        let silent = now.saturating_duration_since(last_beat);
        last_beat = now;
        // Declared lost by the others (its `reaped.` mark, which expires with the bucket's
        // TTL), or silent for longer than they wait before declaring it: the devices'
        // presence may be gone, so they are disconnected to reconnect and be recorded again.
        let mark = reaper::reaped_key(&shared.node_id);
        let marked = matches!(nodes.get(&mark).await, Ok(Some(_)));
        if marked || silent > reaper::dead_after(every) {
            // Marked (another node reaped this one) or only silent (NATS may have been down
            // for every node, and nobody reaped): each session checks that its entry is still
            // there and closes, without a second `disconnected`, only if it is gone.
            let sessions = shared.sessions.senders();
            tracing::warn!(
                sessions = sessions.len(),
                silent_secs = silent.as_secs(),
                marked,
                "heartbeats were not written for longer than the other nodes wait; checking this node's presence"
            );
            tokio::spawn(async move {
                for tx in sessions {
                    let cmd = registry::SessionCmd::RecheckPresence;
                    let _ = tokio::time::timeout(Duration::from_secs(1), tx.send(cmd)).await;
                }
            });
            if marked {
                let _ = nodes.delete(&mark).await;
            }
        }
    }
}

/// When the acceptor's server certificate expires, in Unix seconds.
fn certificate_expiry(tls: &openssl::ssl::SslAcceptor) -> Option<i64> {
    let not_after = tls.context().certificate()?.not_after();
    let diff = openssl::asn1::Asn1Time::from_unix(0)
        .ok()?
        .diff(not_after)
        .ok()?;
    Some(i64::from(diff.days) * 86_400 + i64::from(diff.secs))
}
