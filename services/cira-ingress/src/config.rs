//! Configuration of the CIRA ingress, from flags or `HOMEPORT_*` variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::tls::TlsProfile;

#[derive(clap::Args, Clone, Debug)]
pub struct IngressConfig {
    /// Address of the CIRA listener (TLS + APF).
    #[arg(
        long = "cira-listen",
        env = "HOMEPORT_CIRA_LISTEN",
        default_value = "0.0.0.0:4433"
    )]
    pub listen: SocketAddr,
    /// Share the CIRA port with other ingress processes on this host (SO_REUSEPORT; the
    /// kernel spreads connections over them): one single-threaded process per core.
    #[arg(long, env = "HOMEPORT_CIRA_REUSE_PORT")]
    pub reuse_port: bool,
    /// Address of the health and metrics endpoint (/healthz, /readyz, /metrics).
    #[arg(
        long = "health-listen",
        env = "HOMEPORT_HEALTH_LISTEN",
        default_value = "127.0.0.1:9433"
    )]
    pub health_listen: SocketAddr,
    /// This node's id in presence and events (default: host name plus a random suffix).
    #[arg(long, env = "HOMEPORT_NODE_ID")]
    pub node_id: Option<String>,
    /// TLS profile: "default" (TLS 1.2/1.3 incl. static-RSA suites AMT offers), "legacy"
    /// (adds TLS 1.0/1.1 at security level 0, for old firmware), "strict" (no static RSA).
    #[arg(long, env = "HOMEPORT_TLS_PROFILE", default_value = "default")]
    pub tls_profile: TlsProfile,
    /// Server certificate chain (PEM). Without it a CA and server certificate are generated once
    /// and kept in the secret store.
    #[arg(long, env = "HOMEPORT_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Server private key (PEM), with --tls-cert.
    #[arg(long, env = "HOMEPORT_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Optional ECDSA server certificate chain (PEM), served to clients that offer ECDSA.
    #[arg(long, env = "HOMEPORT_TLS_EC_CERT", requires = "tls_ec_key")]
    pub tls_ec_cert: Option<PathBuf>,
    /// ECDSA private key (PEM), with --tls-ec-cert.
    #[arg(long, env = "HOMEPORT_TLS_EC_KEY", requires = "tls_ec_cert")]
    pub tls_ec_key: Option<PathBuf>,
    /// Common name of a generated server certificate: the FQDN devices are configured with.
    #[arg(long, env = "HOMEPORT_TLS_COMMON_NAME", default_value = "localhost")]
    pub tls_common_name: String,
    /// Extra DNS names or IP addresses of a generated server certificate (repeatable).
    #[arg(long = "tls-san", env = "HOMEPORT_TLS_SANS", value_delimiter = ',')]
    pub tls_sans: Vec<String>,
    /// Keep-alive interval asked of devices, seconds.
    #[arg(long, env = "HOMEPORT_KEEPALIVE_INTERVAL", default_value_t = 30)]
    pub keepalive_interval_secs: u64,
    /// A session with no input for this long is dropped, seconds.
    #[arg(long, env = "HOMEPORT_IDLE_TIMEOUT", default_value_t = 90)]
    pub idle_timeout_secs: u64,
    /// Time allowed from TCP accept to the end of the APF handshake, seconds.
    #[arg(long, env = "HOMEPORT_HANDSHAKE_TIMEOUT", default_value_t = 30)]
    pub handshake_timeout_secs: u64,
    /// Connections from one source address between accept and login at once; more are
    /// refused at accept (devices behind one NAT rarely log in at the same moment).
    #[arg(long, env = "HOMEPORT_MAX_HANDSHAKES_PER_SOURCE", default_value_t = 32)]
    pub max_handshakes_per_source: u32,
    /// New connections one source address may open per second (bursts of twice that); more
    /// are refused at accept, before any TLS work.
    #[arg(
        long,
        env = "HOMEPORT_MAX_CONNECTIONS_PER_SOURCE_PER_SEC",
        default_value_t = 20
    )]
    pub max_connections_per_source_per_sec: u32,
    /// Deadline of every write to a device, seconds: a peer that stops reading is dropped.
    #[arg(long, env = "HOMEPORT_WRITE_TIMEOUT", default_value_t = 10)]
    pub write_timeout_secs: u64,
    /// Failed-login events are at most one per source address and tenant per this many
    /// seconds; the failures in between are counted in the next one.
    #[arg(long, env = "HOMEPORT_AUTH_EVENT_INTERVAL", default_value_t = 60)]
    pub auth_event_interval_secs: u64,
    /// Failed logins in one session before it is disconnected.
    #[arg(long, env = "HOMEPORT_MAX_AUTH_ATTEMPTS", default_value_t = 3)]
    pub max_auth_attempts: u32,
    /// Per-request deadline of a tunnelled HTTP request, milliseconds.
    #[arg(long, env = "HOMEPORT_TUNNEL_TIMEOUT_MS", default_value_t = 10_000)]
    pub tunnel_timeout_ms: u64,
    /// Tunnelled requests in flight per device; more are answered "busy".
    #[arg(long, env = "HOMEPORT_TUNNEL_CONCURRENCY", default_value_t = 4)]
    pub tunnel_concurrency: usize,
    /// On SIGTERM, time given to sessions to end before the process exits, seconds.
    #[arg(long, env = "HOMEPORT_DRAIN_GRACE", default_value_t = 10)]
    pub drain_grace_secs: u64,
    /// Connections held at once; more are refused at accept.
    #[arg(long, env = "HOMEPORT_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,
    /// Interval of this node's heartbeat in the nodes bucket, seconds.
    #[arg(long, env = "HOMEPORT_HEARTBEAT_INTERVAL", default_value_t = 10)]
    pub heartbeat_interval_secs: u64,
}

impl IngressConfig {
    /// The server certificates: from files when configured, else generated once and kept in
    /// the secret store.
    pub async fn certificates(
        &self,
        secrets: &homeport_secrets::DynSecretStore,
    ) -> Result<crate::tls::CertBundle, crate::tls::TlsError> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                let ec = self.tls_ec_cert.as_deref().zip(self.tls_ec_key.as_deref());
                crate::tls::load_files(cert, key, ec)
            }
            _ => crate::tls::load_or_generate(secrets, &self.tls_common_name, &self.tls_sans).await,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.keepalive_interval_secs == 0 || self.keepalive_interval_secs > 3600 {
            return Err("--keepalive-interval-secs must be 1..=3600".into());
        }
        if self.idle_timeout_secs <= self.keepalive_interval_secs {
            return Err("--idle-timeout-secs must be longer than the keep-alive interval".into());
        }
        if self.tunnel_concurrency == 0 {
            return Err("--tunnel-concurrency must be at least 1".into());
        }
        if self.max_handshakes_per_source == 0 {
            return Err("--max-handshakes-per-source must be at least 1".into());
        }
        if self.max_connections_per_source_per_sec == 0 {
            return Err("--max-connections-per-source-per-sec must be at least 1".into());
        }
        if self.write_timeout_secs == 0 {
            return Err("--write-timeout-secs must be at least 1".into());
        }
        if self.handshake_timeout_secs == 0 {
            return Err("--handshake-timeout-secs must be at least 1".into());
        }
        if self.auth_event_interval_secs == 0 {
            return Err("--auth-event-interval-secs must be at least 1".into());
        }
        if self.max_auth_attempts == 0 {
            return Err("--max-auth-attempts must be at least 1".into());
        }
        Ok(())
    }

    pub fn keepalive_interval(&self) -> Duration {
        Duration::from_secs(self.keepalive_interval_secs)
    }
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout_secs)
    }
    pub fn auth_event_interval(&self) -> Duration {
        Duration::from_secs(self.auth_event_interval_secs)
    }
    pub fn write_timeout(&self) -> Duration {
        Duration::from_secs(self.write_timeout_secs)
    }
    pub fn tunnel_timeout(&self) -> Duration {
        Duration::from_millis(self.tunnel_timeout_ms)
    }
    pub fn drain_grace(&self) -> Duration {
        Duration::from_secs(self.drain_grace_secs)
    }
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_secs(self.heartbeat_interval_secs.max(1))
    }
}

impl Default for IngressConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 4433)),
            reuse_port: false,
            health_listen: SocketAddr::from(([127, 0, 0, 1], 9433)),
            node_id: None,
            tls_profile: TlsProfile::Default,
            tls_cert: None,
            tls_key: None,
            tls_ec_cert: None,
            tls_ec_key: None,
            tls_common_name: "localhost".into(),
            tls_sans: Vec::new(),
            keepalive_interval_secs: 30,
            idle_timeout_secs: 90,
            handshake_timeout_secs: 30,
            max_handshakes_per_source: 32,
            max_connections_per_source_per_sec: 20,
            write_timeout_secs: 10,
            auth_event_interval_secs: 60,
            max_auth_attempts: 3,
            tunnel_timeout_ms: 10_000,
            tunnel_concurrency: 4,
            drain_grace_secs: 10,
            max_connections: 100_000,
            heartbeat_interval_secs: 10,
        }
    }
}
