//! mps-command: Homeport's device-management gRPC API. Stateless, any number of replicas:
//! every call checks the caller's tenant against the registry, builds WS-Man, signs it with
//! the device's AMT credentials, sends it through the CIRA tunnel over NATS and answers with
//! the parsed result. Every command emits an event.

pub mod config;
pub mod error;
pub mod features;
mod fleet;
pub mod link;
mod registry;
mod service;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::service::interceptor::InterceptedService;

use futures_util::StreamExt;
use homeport_contracts::events::{
    ensure_events_stream, EventPublisher, PublisherConfig, StreamLimits,
};
use homeport_contracts::tunnel::TunnelClient;
use homeport_contracts::Names;
use homeport_proto::device::v1::device_registry_server::DeviceRegistryServer;
use homeport_proto::device::v1::device_service_server::DeviceServiceServer;
use homeport_secrets::DynSecretStore;
use homeport_store::Store;
use homeport_telemetry::{Counter, Exposition, Histogram, Observable};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::CommandConfig;
pub use error::CommandError;
pub use homeport_auth as auth;
pub use homeport_auth::{Authenticator, Caller, Key};

/// How long a guid → tenant answer from the registry is trusted without an event.
const TENANT_CACHE_TTL: Duration = Duration::from_secs(30);
const TENANT_CACHE_MAX: usize = 200_000;

/// Everything the service needs, ready-made (tests build it without ports or environment).
/// Largest gRPC request decoded (bulk power state: 10,000 guids of 36 characters fit).
pub const MAX_REQUEST_BYTES: usize = 1 << 20;

pub struct CommandParts {
    pub config: CommandConfig,
    /// Names this replica in events ("mps-command/<instance>").
    pub instance: String,
    pub names: Names,
    pub nats: async_nats::Client,
    pub store: Store,
    pub secrets: DynSecretStore,
    pub auth: Authenticator,
    /// Limits of the events stream, if this process creates it.
    pub stream_limits: StreamLimits,
}

#[derive(Default)]
pub struct Metrics {
    pub commands: Counter,
    pub command_errors: Counter,
    pub latency: Histogram,
}

pub(crate) struct Inner {
    pub config: CommandConfig,
    pub source: String,
    pub names: Names,
    pub store: Store,
    pub secrets: DynSecretStore,
    pub link: link::DeviceLink,
    pub events: EventPublisher,
    pub tenants: Mutex<HashMap<String, (String, Instant)>>,
    /// Bumped by every `forget`: a registry read that raced an invalidation is not cached.
    pub forgets: std::sync::atomic::AtomicU64,
    pub metrics: Metrics,
    pub nats: async_nats::Client,
    pub fleet: Arc<fleet::PresenceView>,
}

/// A running mps-command.
pub struct MpsCommand {
    inner: Arc<Inner>,
    auth: Arc<Authenticator>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl MpsCommand {
    pub async fn start(parts: CommandParts) -> anyhow::Result<MpsCommand> {
        let js = async_nats::jetstream::new(parts.nats.clone());
        ensure_events_stream(&js, &parts.names, &parts.stream_limits)
            .await
            .map_err(anyhow::Error::msg)?;
        let presence = homeport_contracts::presence::presence_bucket(
            &js,
            &parts.names,
            parts.stream_limits.replicas,
        )
        .await?;
        let tunnel = TunnelClient::new(
            parts.nats.clone(),
            parts.names.clone(),
            parts.stream_limits.replicas,
        )
        .await?;
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        let (events, publisher) = EventPublisher::start(
            js,
            PublisherConfig::default(),
            cancel.child_token(),
            Duration::from_secs(5),
        );
        tasks.spawn(async move {
            let _ = publisher.await;
        });
        let inner = Arc::new(Inner {
            link: link::DeviceLink::new(
                tunnel,
                parts.secrets.clone(),
                parts.config.exchange_timeout(),
            ),
            config: parts.config,
            source: format!("mps-command/{}", parts.instance),
            names: parts.names,
            store: parts.store,
            secrets: parts.secrets,
            events,
            tenants: Mutex::new(HashMap::new()),
            forgets: std::sync::atomic::AtomicU64::new(0),
            metrics: Metrics {
                latency: Histogram::new(&[2, 5, 10, 25, 50, 100, 250, 1000, 5000, 10000]),
                ..Metrics::default()
            },
            nats: parts.nats,
            fleet: Arc::new(fleet::PresenceView::default()),
        });
        tasks.spawn(inner.fleet.clone().follow(presence, cancel.child_token()));
        // Registry changes from any replica drop cached tenants and credentials here.
        let sub = inner
            .nats
            .subscribe(inner.names.device_events_wildcard())
            .await?;
        let watcher = inner.clone();
        let stop = cancel.clone();
        tasks.spawn(async move {
            let mut sub = sub;
            loop {
                let msg = tokio::select! {
                    _ = stop.cancelled() => return,
                    m = sub.next() => m,
                };
                let Some(msg) = msg else { return };
                let parts: Vec<&str> = msg.subject.as_str().rsplitn(3, '.').collect();
                if let [kind, guid, ..] = parts.as_slice() {
                    if matches!(*kind, "updated" | "deleted" | "created") {
                        watcher.forget(guid);
                    }
                }
            }
        });
        Ok(MpsCommand {
            inner,
            auth: Arc::new(parts.auth),
            cancel,
            tasks,
        })
    }

    /// Serves gRPC on `listener` until `shutdown` resolves.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<DeviceServiceServer<service::DeviceApi>>()
            .await;
        health
            .set_serving::<DeviceRegistryServer<registry::RegistryApi>>()
            .await;
        let interceptor = self.auth.clone().interceptor();
        // Requests are small (a guid and a few fields; a bulk call 10,000 guids): anything
        // bigger is refused before it is decoded.
        let device = InterceptedService::new(
            DeviceServiceServer::new(service::DeviceApi {
                inner: self.inner.clone(),
            })
            .max_decoding_message_size(MAX_REQUEST_BYTES),
            interceptor.clone(),
        );
        let registry = InterceptedService::new(
            DeviceRegistryServer::new(registry::RegistryApi {
                inner: self.inner.clone(),
            })
            .max_decoding_message_size(MAX_REQUEST_BYTES),
            interceptor,
        );
        tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(device)
            .add_service(registry)
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                shutdown,
            )
            .await?;
        Ok(())
    }

    pub fn observable(&self) -> Arc<dyn Observable> {
        Arc::new(Observed(self.inner.clone()))
    }

    /// Stops background work and flushes queued events.
    pub async fn shutdown(self) {
        self.inner.events.flush(Duration::from_secs(5)).await;
        self.cancel.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.tasks.wait()).await;
    }
}

impl Inner {
    pub fn forget(&self, guid: &str) {
        self.forgets.fetch_add(1, Ordering::SeqCst);
        self.tenants
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(guid);
        self.link.forget(guid);
    }

    /// Checks that `guid` belongs to `tenant` (cached; events invalidate the cache).
    pub async fn authorize_device(&self, tenant: &str, guid: &str) -> Result<(), CommandError> {
        let cached = self
            .tenants
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(guid)
            .filter(|(_, at)| at.elapsed() < TENANT_CACHE_TTL)
            .map(|(t, _)| t.clone());
        let owner = match cached {
            Some(t) => t,
            None => {
                let generation = self.forgets.load(Ordering::SeqCst);
                let device = self
                    .store
                    .get_device(guid)
                    .await
                    .map_err(|e| CommandError::Unavailable(format!("database: {e}")))?
                    .ok_or_else(|| CommandError::NotFound(guid.to_string()))?;
                let mut cache = self
                    .tenants
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if cache.len() >= TENANT_CACHE_MAX {
                    cache.clear();
                }
                if self.forgets.load(Ordering::SeqCst) == generation {
                    cache.insert(guid.to_string(), (device.tenant_id.clone(), Instant::now()));
                }
                device.tenant_id
            }
        };
        // Another tenant's device is indistinguishable from a missing one.
        if owner != tenant {
            return Err(CommandError::NotFound(guid.to_string()));
        }
        Ok(())
    }
}

struct Observed(Arc<Inner>);

impl Observable for Observed {
    fn ready(&self) -> Result<(), String> {
        homeport_contracts::nats_ready(&self.0.nats)
    }

    fn metrics(&self) -> String {
        let m = &self.0.metrics;
        let mut e = Exposition::default();
        e.counter(
            "homeport_commands_total",
            "Device commands handled.",
            m.commands.get(),
        );
        e.counter(
            "homeport_command_errors_total",
            "Device commands that failed.",
            m.command_errors.get(),
        );
        e.histogram(
            "homeport_command_seconds",
            "Device command latency.",
            &m.latency,
        );
        e.counter(
            "homeport_wsman_exchanges_total",
            "WS-Man exchanges sent to devices.",
            self.0.link.stats.exchanges.load(Ordering::Relaxed),
        );
        e.counter(
            "homeport_wsman_digest_challenges_total",
            "401 challenges received from devices.",
            self.0.link.stats.challenges.load(Ordering::Relaxed),
        );
        e.finish()
    }
}
