//! The gateway: the Open AMT MPS and RPS REST APIs, live events (Server-Sent Events) and the
//! web dashboard, over Homeport's gRPC services. Stateless: every answer comes from
//! mps-command, the audit service or rps, called with the caller's own bearer token, so
//! tenant scoping is decided where the data lives and a token that fails here fails there.

// The OpenAPI document's schemas are large `json!` literals.
#![recursion_limit = "256"]

mod assets;
pub mod auth;
mod auth_routes;
pub mod config;
mod error;
mod events;
mod mps;
mod openapi;
mod routes;
mod rps;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use homeport_auth::{Authenticator, Caller};
use homeport_proto::audit::v1::audit_service_client::AuditServiceClient;
use homeport_proto::device::v1::device_registry_client::DeviceRegistryClient;
use homeport_proto::device::v1::device_service_client::DeviceServiceClient;
use homeport_proto::provisioning::v1::provisioning_admin_client::ProvisioningAdminClient;
use homeport_telemetry::{Counter, Exposition, Gauge, Histogram};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

pub use config::GatewayConfig;
pub use error::{ApiError, ApiResult, FieldError};

/// What the gateway needs to run.
pub struct GatewayParts {
    pub config: GatewayConfig,
    /// Verifies bearer tokens (the same settings as the gRPC services).
    pub auth: Authenticator,
    /// The HS256 secret that signs `/authorize` tokens, when sign-in is enabled.
    pub signing_secret: Option<Vec<u8>>,
    /// The admin password hash, when sign-in is enabled.
    pub admin_password: Option<auth::PasswordHash>,
}

#[derive(Default)]
pub struct Metrics {
    pub requests: Counter,
    pub errors_4xx: Counter,
    pub errors_5xx: Counter,
    pub latency: Histogram,
    pub sign_ins: Counter,
    pub sign_in_failures: Counter,
    pub streams: Gauge,
    pub streams_dropped: Counter,
    pub stream_events: Counter,
}

pub(crate) struct Inner {
    pub config: GatewayConfig,
    pub auth: Authenticator,
    pub signing_secret: Option<Vec<u8>>,
    pub admin_password: Option<auth::PasswordHash>,
    pub devices: DeviceServiceClient<Channel>,
    pub registry: DeviceRegistryClient<Channel>,
    pub audit: AuditServiceClient<Channel>,
    pub admin: ProvisioningAdminClient<Channel>,
    /// The upstream connections (device API, audit, rps), for health checks.
    pub channels: (Channel, Channel, Channel),
    pub metrics: Metrics,
    /// Live-event clients per tenant: one tenant cannot take every place.
    pub tenant_streams: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    pub streams: Arc<tokio::sync::Semaphore>,
    // Sign-ins verify a deliberately slow hash; a few at a time keep a flood of them from
    // taking every core.
    pub sign_in_slots: tokio::sync::Semaphore,
    pub draining: AtomicBool,
    pub stop: CancellationToken,
}

pub(crate) type AppState = Arc<Inner>;

/// A running gateway.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

fn channel(url: &str) -> anyhow::Result<Channel> {
    // Lazy: the gateway starts (and answers 503 for the routes of a missing service) while
    // an upstream is still coming up.
    Ok(Endpoint::from_shared(url.to_owned())?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true)
        .connect_lazy())
}

impl Gateway {
    pub fn new(parts: GatewayParts) -> anyhow::Result<Gateway> {
        let c = &parts.config;
        let (devices, audit, admin) = (
            channel(&c.device_api)?,
            channel(&c.audit_api)?,
            channel(&c.rps_api)?,
        );
        let inner = Inner {
            streams: Arc::new(tokio::sync::Semaphore::new(c.max_streams)),
            devices: DeviceServiceClient::new(devices.clone()),
            registry: DeviceRegistryClient::new(devices.clone()),
            audit: AuditServiceClient::new(audit.clone()),
            admin: ProvisioningAdminClient::new(admin.clone()),
            channels: (devices, audit, admin),
            tenant_streams: std::sync::Mutex::new(std::collections::HashMap::new()),
            config: parts.config,
            auth: parts.auth,
            signing_secret: parts.signing_secret,
            admin_password: parts.admin_password,
            metrics: Metrics {
                latency: Histogram::new(&[1, 2, 5, 10, 25, 50, 100, 250, 1000, 5000, 30000]),
                ..Metrics::default()
            },
            sign_in_slots: tokio::sync::Semaphore::new(2),
            draining: AtomicBool::new(false),
            stop: CancellationToken::new(),
        };
        Ok(Gateway {
            inner: Arc::new(inner),
        })
    }

    /// The whole HTTP application.
    pub fn router(&self) -> axum::Router {
        routes::router(self.inner.clone())
    }

    /// The OpenAPI document of the REST API.
    pub fn openapi() -> Value {
        openapi::document()
    }

    /// Serves HTTP on `listener` until `shutdown`; then stops taking connections, ends the
    /// live-event streams and lets requests in flight finish.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        use axum::serve::ListenerExt as _;
        let inner = self.inner.clone();
        let deadline = Duration::from_secs(inner.config.write_timeout_secs.max(1));
        let listener = listener.tap_io(move |tcp| {
            let _ = tcp.set_nodelay(true);
            if let Err(e) = write_deadline(tcp, deadline) {
                tracing::debug!(error = %e, "TCP_USER_TIMEOUT not set");
            }
        });
        // Paths are normalised before routing (a layer on the Router would run after it).
        let app = tower::ServiceBuilder::new()
            .map_request(routes::normalize::<axum::body::Body>)
            .service(self.router());
        axum::serve(
            listener,
            axum::ServiceExt::<Request>::into_make_service(app),
        )
        .with_graceful_shutdown(async move {
            shutdown.await;
            inner.draining.store(true, Ordering::Relaxed);
            inner.stop.cancel();
        })
        .await?;
        Ok(())
    }

    pub fn observable(&self) -> Arc<dyn homeport_telemetry::Observable> {
        Arc::new(Observed(self.inner.clone()))
    }
}

struct Observed(Arc<Inner>);

impl homeport_telemetry::Observable for Observed {
    fn ready(&self) -> Result<(), String> {
        if self.0.draining.load(Ordering::Relaxed) {
            return Err("draining".into());
        }
        Ok(())
    }

    fn metrics(&self) -> String {
        let m = &self.0.metrics;
        let mut e = Exposition::default();
        e.counter(
            "homeport_gateway_requests_total",
            "HTTP requests answered.",
            m.requests.get(),
        );
        e.counter(
            "homeport_gateway_client_errors_total",
            "Requests answered with a 4xx status.",
            m.errors_4xx.get(),
        );
        e.counter(
            "homeport_gateway_server_errors_total",
            "Requests answered with a 5xx status.",
            m.errors_5xx.get(),
        );
        e.histogram(
            "homeport_gateway_request_duration_seconds",
            "Time to answer a request (to the response head; streams excluded).",
            &m.latency,
        );
        e.counter(
            "homeport_gateway_sign_ins_total",
            "Successful sign-ins (POST /authorize).",
            m.sign_ins.get(),
        );
        e.counter(
            "homeport_gateway_sign_in_failures_total",
            "Refused sign-ins.",
            m.sign_in_failures.get(),
        );
        e.gauge(
            "homeport_gateway_event_streams",
            "Live-event clients connected (SSE and WebSocket).",
            m.streams.get(),
        );
        e.counter(
            "homeport_gateway_event_streams_dropped_total",
            "Live-event clients dropped for falling behind their buffer.",
            m.streams_dropped.get(),
        );
        e.counter(
            "homeport_gateway_stream_events_total",
            "Events sent to live-event clients.",
            m.stream_events.get(),
        );
        e.finish()
    }
}

/// Counts every answer and its latency.
pub(crate) async fn observe(
    State(s): State<AppState>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let started = Instant::now();
    let resp = next.run(req).await;
    let m = &s.metrics;
    m.requests.inc();
    m.latency.observe(started.elapsed());
    match resp.status().as_u16() {
        400..=499 => m.errors_4xx.inc(),
        500..=599 => m.errors_5xx.inc(),
        _ => {}
    }
    resp
}

/// The verified caller of a request, and its token to pass on to the gRPC services.
pub(crate) struct Authed {
    pub caller: Caller,
    pub bearer: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
}

impl Authed {
    /// The caller `token` names, if it verifies.
    pub fn from_token(s: &Inner, token: &str) -> Result<Authed, ApiError> {
        let caller = s
            .auth
            .verify(token)
            .map_err(|e| ApiError::Unauthorized(e.to_string()))?;
        let bearer = format!("Bearer {token}")
            .parse()
            .map_err(|_| ApiError::Unauthorized("malformed token".into()))?;
        Ok(Authed { caller, bearer })
    }

    /// A gRPC request carrying the caller's token and the call deadline.
    pub fn call<T>(&self, s: &Inner, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut()
            .insert("authorization", self.bearer.clone());
        r.set_timeout(s.config.call_timeout());
        r
    }
}

impl FromRequestParts<AppState> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let token = auth::bearer(header)
            .ok_or_else(|| ApiError::Unauthorized("a bearer token is required".into()))?;
        Authed::from_token(s, token)
    }
}

/// A JSON body read with the size limit: too large is 413, not JSON is MPS's 400.
pub(crate) struct JsonBody(pub Value);

impl FromRequest<AppState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request<Body>, s: &AppState) -> Result<Self, ApiError> {
        let limit = s.config.max_body_bytes;
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(ApiError::TooLarge(limit));
        }
        let bytes = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|_| ApiError::TooLarge(limit))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            // express.json() leaves an empty body as {}.
            return Ok(JsonBody(Value::Object(Default::default())));
        }
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::BadRequest(format!("the body is not valid JSON: {e}")))
    }
}

/// The query string as ordered pairs (`$top`-style names kept as they are).
pub(crate) fn query_pairs(q: Option<&str>) -> Vec<(String, String)> {
    let Some(q) = q else { return Vec::new() };
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode_component(k), decode_component(v))
        })
        .collect()
}

fn decode_component(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The last value of query parameter `name`.
pub(crate) fn param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// 200 with a JSON body.
pub(crate) fn json(v: Value) -> Response {
    axum::Json(v).into_response()
}

pub(crate) fn status_json(status: StatusCode, v: Value) -> Response {
    (status, axum::Json(v)).into_response()
}

/// Answers CORS preflights and adds the reference's open CORS header (MPS and RPS use
/// `cors()` with its defaults); the API takes bearer tokens, not cookies, so this lends a
/// page nothing it could not do itself.
pub(crate) async fn cors(req: Request, next: axum::middleware::Next) -> Response {
    if req.method() == axum::http::Method::OPTIONS {
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET,HEAD,PUT,PATCH,POST,DELETE"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization,content-type,if-match,last-event-id"),
        );
        return r;
    }
    let mut r = next.run(req).await;
    r.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    r
}

pub(crate) fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// `TCP_USER_TIMEOUT`: the kernel aborts a connection whose sent data stays unacknowledged,
/// or whose peer keeps a zero window (stopped reading), for `after`. Neither tokio nor hyper
/// has a write deadline; this is the one that also covers a body hyper is blocked writing.
fn write_deadline(tcp: &tokio::net::TcpStream, after: Duration) -> std::io::Result<()> {
    let ms = i32::try_from(after.as_millis()).unwrap_or(i32::MAX);
    homeport_runtime::io::set_tcp_option(tcp, homeport_runtime::io::TCP_USER_TIMEOUT, ms)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn query_strings_decode_like_urlencoded_forms() {
        assert_eq!(
            query_pairs(Some("$top=2&search=a%20b+c&tags=x%2Cy&bad=%zz&&empty=")),
            vec![
                ("$top".to_owned(), "2".to_owned()),
                ("search".into(), "a b c".into()),
                ("tags".into(), "x,y".into()),
                ("bad".into(), "%zz".into()),
                ("empty".into(), String::new()),
            ]
        );
        assert_eq!(
            query_pairs(Some("a=%4")),
            vec![("a".to_owned(), "%4".to_owned())]
        );
        assert!(query_pairs(None).is_empty());
        let pairs = query_pairs(Some("k=1&k=2"));
        assert_eq!(param(&pairs, "k"), Some("2"));
        assert_eq!(param(&pairs, "x"), None);
    }
}
