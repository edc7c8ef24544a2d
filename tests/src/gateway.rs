//! The gateway in the test process, in front of this test's mps-command, audit and rps, and
//! an HTTP client that speaks to it over a real socket.

use std::net::SocketAddr;
use std::time::Duration;

use homeport_auth::{Authenticator, Key};
use homeport_gateway::{auth, Gateway, GatewayConfig, GatewayParts};
use homeport_http1::client::{Conn, Response};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::command::TEST_JWT_SECRET;

/// The admin password of test gateways.
pub const ADMIN_PASSWORD: &str = "Gateway-Test-Pw1!";

/// Settings for tests: the given upstreams, sign-in for `tenant`, small limits.
pub fn gateway_config(
    device: SocketAddr,
    audit: SocketAddr,
    rps: SocketAddr,
    tenant: &str,
) -> GatewayConfig {
    GatewayConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        health_listen: "127.0.0.1:0".parse().expect("addr"),
        device_api: format!("http://{device}"),
        audit_api: format!("http://{audit}"),
        rps_api: format!("http://{rps}"),
        jwt: homeport_auth::JwtArgs {
            audience: Some(homeport_auth::DEFAULT_AUDIENCE.into()),
            tenant_claim: "tenant".into(),
            ..Default::default()
        },
        admin_user: "admin".into(),
        admin_password_hash_file: None,
        admin_tenant: tenant.into(),
        token_ttl_minutes: 60,
        max_body_bytes: 102_400,
        call_timeout_secs: 30,
        stream_buffer: 64,
        write_timeout_secs: 3,
        max_streams: 100,
        max_streams_per_tenant: 50,
    }
}

pub struct GatewayHandle {
    pub addr: SocketAddr,
    observable: std::sync::Arc<dyn homeport_telemetry::Observable>,
    stop: CancellationToken,
    served: tokio::task::JoinHandle<()>,
}

impl GatewayHandle {
    pub async fn start(config: GatewayConfig) -> GatewayHandle {
        let hash = auth::PasswordHash::parse(&auth::hash_password(ADMIN_PASSWORD).expect("hash"))
            .expect("parse");
        let gateway = Gateway::new(GatewayParts {
            config,
            auth: Authenticator::new(vec![Key::Hs256(TEST_JWT_SECRET.to_vec())], "tenant")
                .with_audience(Some(homeport_auth::DEFAULT_AUDIENCE.into()), None),
            signing_secret: Some(TEST_JWT_SECRET.to_vec()),
            admin_password: Some(hash),
        })
        .expect("gateway");
        let observable = gateway.observable();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = CancellationToken::new();
        let s = stop.clone();
        let served = tokio::spawn(async move {
            let _ = gateway.serve(listener, s.cancelled_owned()).await;
        });
        GatewayHandle {
            addr,
            observable,
            stop,
            served,
        }
    }

    pub async fn client(&self) -> Http {
        Http {
            conn: Conn::connect(self.addr)
                .await
                .expect("connect to the gateway"),
            token: None,
        }
    }

    /// A counter or gauge of the gateway's metrics (0 when absent).
    pub fn metric(&self, name: &str) -> i64 {
        self.observable
            .metrics()
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0)
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.served).await;
    }
}

/// A keep-alive connection to the gateway, with an optional bearer token.
pub struct Http {
    pub conn: Conn,
    pub token: Option<String>,
}

impl Http {
    pub fn with_token(mut self, token: &str) -> Http {
        self.token = Some(token.to_owned());
        self
    }

    pub async fn call(&mut self, method: &str, path: &str, body: Option<&Value>) -> Response {
        let bearer = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if let Some(b) = &bearer {
            headers.push(("Authorization", b));
        }
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        if body.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        self.conn
            .request(method, path, &headers, &bytes)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// The call's status and JSON body (`Null` when empty).
    pub async fn json(&mut self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let r = self.call(method, path, body).await;
        let v = if r.body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&r.body)
                .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {}", r.text()))
        };
        (r.status, v)
    }
}

/// The whole pipeline behind a gateway: one ingress node ("node-a"), a connected simulated
/// fleet of one tenant, mps-command (5 s exchange deadline), the audit service, rps, and the
/// gateway signing in to that tenant.
pub struct Pipeline {
    pub env: crate::TestEnv,
    pub ingress: homeport_cira_ingress::Ingress,
    pub fleet: homeport_amt_sim::Fleet,
    pub cmd: crate::command::CommandHandle,
    pub audit: crate::audit::AuditHandle,
    pub rps: crate::rps::RpsHandle,
    pub gw: GatewayHandle,
}

impl Pipeline {
    pub async fn start(label: &str, devices: u64, seed: u64, tenant: &str) -> Pipeline {
        let env = crate::TestEnv::new(label).await;
        let ingress = env
            .start_ingress("node-a", crate::TestEnv::ingress_config())
            .await;
        let cfg = env
            .enrolled_fleet(ingress.local_addr(), devices, seed, tenant)
            .await;
        let fleet = env.start_connected(cfg, Duration::from_secs(30)).await;
        let cmd = env
            .start_command(crate::command::command_config(Duration::from_secs(5)))
            .await;
        let audit = env.start_audit().await;
        let rps = env.start_rps(crate::rps::rps_config()).await;
        let gw = GatewayHandle::start(gateway_config(cmd.addr, audit.addr, rps.admin_addr, tenant))
            .await;
        Pipeline {
            env,
            ingress,
            fleet,
            cmd,
            audit,
            rps,
            gw,
        }
    }

    pub fn guid(&self, i: usize) -> String {
        self.fleet.identities()[i].guid.clone()
    }

    pub async fn stop(self) {
        self.gw.stop().await;
        self.rps.stop().await;
        self.audit.stop().await;
        self.cmd.stop().await;
        self.fleet.stop().await;
        drop(self.ingress);
        self.env.cleanup().await;
    }
}
