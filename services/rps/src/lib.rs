//! rps: Homeport's remote provisioning service. Stateless, any number of replicas. The rpc
//! client on each PC connects over a TLS WebSocket and speaks the Open AMT protocol 4.0.0;
//! rps runs the provisioning flow (sans-IO state machines in `flow`), writes the device's
//! credentials to the secret store and the device into the registry, and emits one event
//! per outcome. Profiles and the other admin objects are served over gRPC (`admin`).

pub mod acm;
mod admin;
pub mod config;
pub mod flow;
pub mod limits;
pub mod protocol;
mod session;
pub mod specs;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use homeport_auth::Authenticator;
use homeport_contracts::events::{
    ensure_events_stream, EventPublisher, PublisherConfig, StreamLimits,
};
use homeport_contracts::Names;
use homeport_proto::provisioning::v1::provisioning_admin_server::ProvisioningAdminServer;
use homeport_secrets::DynSecretStore;
use homeport_store::Store;
use homeport_telemetry::{Counter, Exposition, Gauge, Histogram, Observable};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::service::interceptor::InterceptedService;

pub use config::RpsConfig;

/// Largest admin request decoded (a domain's PFX is a few KB).
pub const MAX_REQUEST_BYTES: usize = 1 << 20;

pub struct RpsParts {
    pub config: RpsConfig,
    pub instance: String,
    pub names: Names,
    pub nats: async_nats::Client,
    pub store: Store,
    pub secrets: DynSecretStore,
    pub auth: Authenticator,
    pub stream_limits: StreamLimits,
}

#[derive(Default)]
pub struct Metrics {
    pub flows: Counter,
    pub succeeded: Counter,
    pub failed: Counter,
    pub refused: Counter,
    pub exchanges: Counter,
    pub in_flight: Gauge,
    pub duration: Histogram,
}

/// Decoded provisioning certificates by (tenant, lower-case domain name): the domain version
/// they were decoded for, and the result.
type CertCache = std::collections::HashMap<(String, String), (i64, Arc<acm::Provisioning>)>;

pub(crate) struct Inner {
    pub config: RpsConfig,
    pub source: String,
    pub names: Names,
    pub store: Store,
    pub secrets: DynSecretStore,
    pub events: EventPublisher,
    pub metrics: Metrics,
    pub nats: async_nats::Client,
    pub slots: Arc<tokio::sync::Semaphore>,
    pub handshakes: Arc<limits::Handshakes>,
    /// Decoded provisioning certificates by (tenant, domain), with the domain version they
    /// were decoded for: PKCS#12 decoding costs key-derivation rounds, once per version.
    pub provisioning_certs: std::sync::Mutex<CertCache>,
}

impl Inner {
    /// The provisioning certificate of `domain` (cached per domain version).
    pub(crate) async fn provisioning_cert(
        &self,
        tenant: &str,
        domain: &homeport_store::ConfigRecord,
    ) -> Result<Arc<acm::Provisioning>, session::Refusal> {
        let key = (tenant.to_string(), domain.name.to_lowercase());
        if let Some((v, p)) = self
            .provisioning_certs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
        {
            if *v == domain.version {
                return Ok(p.clone());
            }
        }
        let path = specs::secret_path(tenant, specs::DOMAIN, &domain.name);
        let map = self
            .secrets
            .get(&path)
            .await
            .map_err(|e| session::Refusal::Other(format!("secret store: {e}")))?
            .ok_or_else(|| {
                session::Refusal::Other(format!("domain {} has no stored certificate", domain.name))
            })?;
        let (Some(pfx), Some(password)) = (map.get(specs::CERT), map.get(specs::CERT_PASSWORD))
        else {
            return Err(session::Refusal::Other(format!(
                "domain {} has no stored certificate",
                domain.name
            )));
        };
        let decoded = acm::Provisioning::decode(pfx.expose(), password.expose()).map_err(|e| {
            session::Refusal::Other(format!("domain {}: the certificate {e}", domain.name))
        })?;
        let decoded = Arc::new(decoded);
        let mut cache = self
            .provisioning_certs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() >= 1024 {
            cache.clear();
        }
        cache.insert(key, (domain.version, decoded.clone()));
        Ok(decoded)
    }

    /// The ingress's root certificate (base64 DER), when an ingress has stored one.
    pub async fn ingress_root_der(&self) -> Option<String> {
        let der = self.ingress_root().await?.to_der().ok()?;
        Some(base64::engine::general_purpose::STANDARD.encode(der))
    }

    /// The ingress's root certificate as the secret store holds it, if it parses.
    pub async fn ingress_root(&self) -> Option<openssl::x509::X509> {
        let map = self
            .secrets
            .get(homeport_secrets::CIRA_CERTS_PATH)
            .await
            .ok()??;
        let pem = map.get(homeport_secrets::CIRA_CA_CERT)?;
        openssl::x509::X509::from_pem(pem.expose().as_bytes()).ok()
    }
}

/// A running rps.
pub struct Rps {
    inner: Arc<Inner>,
    auth: Arc<Authenticator>,
    acceptor: Arc<openssl::ssl::SslAcceptor>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl Rps {
    pub async fn start(parts: RpsParts) -> anyhow::Result<Rps> {
        let js = async_nats::jetstream::new(parts.nats.clone());
        ensure_events_stream(&js, &parts.names, &parts.stream_limits)
            .await
            .map_err(anyhow::Error::msg)?;
        let acceptor = tls::acceptor(
            parts.config.tls_cert_file.as_deref(),
            parts.config.tls_key_file.as_deref(),
        )?;
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
            slots: Arc::new(tokio::sync::Semaphore::new(parts.config.max_flows)),
            handshakes: limits::Handshakes::new(
                parts.config.max_handshakes,
                parts.config.max_handshakes_per_source,
            ),
            config: parts.config,
            source: format!("rps/{}", parts.instance),
            names: parts.names,
            store: parts.store,
            secrets: parts.secrets,
            events,
            metrics: Metrics {
                duration: Histogram::new(&[
                    100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000, 120_000,
                ]),
                ..Metrics::default()
            },
            nats: parts.nats,
            provisioning_certs: std::sync::Mutex::new(std::collections::HashMap::new()),
        });
        Ok(Rps {
            inner,
            auth: Arc::new(parts.auth),
            acceptor: Arc::new(acceptor),
            cancel,
            tasks,
        })
    }

    /// Accepts rpc clients on `listener` until `stop` is cancelled; flows in progress are
    /// waited for by `shutdown`.
    pub fn serve_clients(&self, listener: tokio::net::TcpListener) {
        let inner = self.inner.clone();
        let acceptor = self.acceptor.clone();
        let stop = self.cancel.clone();
        let tasks = self.tasks.clone();
        self.tasks.spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stop.cancelled() => return,
                    a = listener.accept() => a,
                };
                match accepted {
                    Ok((tcp, peer)) => {
                        tasks.spawn(session::handle(inner.clone(), acceptor.clone(), tcp, peer));
                    }
                    Err(e) => {
                        // Out of descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
    }

    /// Serves the admin API on `listener` until `shutdown` resolves.
    pub async fn serve_admin(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<ProvisioningAdminServer<admin::AdminApi>>()
            .await;
        let admin = InterceptedService::new(
            ProvisioningAdminServer::new(admin::AdminApi {
                inner: self.inner.clone(),
            })
            .max_decoding_message_size(MAX_REQUEST_BYTES),
            self.auth.clone().interceptor(),
        );
        tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(admin)
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

    /// Stops accepting, lets flows in progress finish (bounded), flushes events.
    pub async fn shutdown(self, grace: Duration) {
        self.cancel.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(grace, self.tasks.wait()).await;
        self.inner.events.flush(Duration::from_secs(5)).await;
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
            "homeport_rps_flows_total",
            "Provisioning flows started.",
            m.flows.get(),
        );
        e.counter(
            "homeport_rps_flows_succeeded_total",
            "Provisioning flows that succeeded.",
            m.succeeded.get(),
        );
        e.counter(
            "homeport_rps_flows_failed_total",
            "Provisioning flows that failed after starting.",
            m.failed.get(),
        );
        e.counter("homeport_rps_requests_refused_total", "Client requests refused before any WS-Man (bad frames, versions, profiles, passwords, no slot).", m.refused.get());
        e.counter(
            "homeport_rps_wsman_exchanges_total",
            "WS-Man exchanges sent to devices through their clients.",
            m.exchanges.get(),
        );
        e.gauge(
            "homeport_rps_flows_in_flight",
            "Client connections being served.",
            m.in_flight.get(),
        );
        e.gauge(
            "homeport_rps_handshakes",
            "Connections between accept and their first message.",
            i64::try_from(self.0.handshakes.held()).unwrap_or(i64::MAX),
        );
        e.histogram(
            "homeport_rps_flow_seconds",
            "Duration of provisioning flows.",
            &m.duration,
        );
        e.finish()
    }
}
