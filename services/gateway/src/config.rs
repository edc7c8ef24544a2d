//! gateway configuration: flags and `HOMEPORT_*` variables, parsed once at start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use homeport_auth::JwtArgs;

#[derive(clap::Args, Clone, Debug)]
pub struct GatewayConfig {
    /// HTTP listen address of the REST API and the dashboard.
    #[arg(long, env = "HOMEPORT_GATEWAY_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Health and metrics listen address (/healthz, /readyz, /metrics).
    #[arg(long, env = "HOMEPORT_HEALTH_LISTEN", default_value = "127.0.0.1:9438")]
    pub health_listen: SocketAddr,
    /// The device API (mps-command gRPC: registry and device methods).
    #[arg(
        long,
        env = "HOMEPORT_DEVICE_API_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub device_api: String,
    /// The audit API (stored and live events).
    #[arg(
        long,
        env = "HOMEPORT_AUDIT_API_URL",
        default_value = "http://127.0.0.1:50052"
    )]
    pub audit_api: String,
    /// The provisioning admin API (rps gRPC: profiles, CIRA configs, domains, wireless).
    #[arg(
        long,
        env = "HOMEPORT_RPS_API_URL",
        default_value = "http://127.0.0.1:50053"
    )]
    pub rps_api: String,
    #[command(flatten)]
    pub jwt: JwtArgs,
    /// User name of `POST /api/v1/authorize` (compared case-insensitively, as MPS does).
    #[arg(long, env = "HOMEPORT_GATEWAY_ADMIN_USER", default_value = "admin")]
    pub admin_user: String,
    /// File holding the admin password's hash (`gateway hash-password` writes one); without
    /// it `/authorize` answers 405 "Authentication disabled" and only bearer tokens minted
    /// elsewhere are accepted.
    #[arg(long, env = "HOMEPORT_GATEWAY_ADMIN_PASSWORD_HASH_FILE")]
    pub admin_password_hash_file: Option<PathBuf>,
    /// Tenant of the tokens `/authorize` issues.
    #[arg(long, env = "HOMEPORT_GATEWAY_ADMIN_TENANT", default_value = "")]
    pub admin_tenant: String,
    /// Lifetime of the tokens `/authorize` issues (MPS: 1440).
    #[arg(
        long,
        env = "HOMEPORT_GATEWAY_TOKEN_TTL_MINUTES",
        default_value_t = 1440
    )]
    pub token_ttl_minutes: u64,
    /// Largest request body accepted (MPS's JSON parser: 100 kB).
    #[arg(
        long,
        env = "HOMEPORT_GATEWAY_MAX_BODY_BYTES",
        default_value_t = 102_400
    )]
    pub max_body_bytes: usize,
    /// Deadline of one upstream call (above mps-command's own command deadline).
    #[arg(
        long,
        env = "HOMEPORT_GATEWAY_CALL_TIMEOUT_SECS",
        default_value_t = 130
    )]
    pub call_timeout_secs: u64,
    /// Events buffered per live-event client; a client that falls this far behind is
    /// disconnected (it resumes with Last-Event-ID) instead of growing memory.
    #[arg(long, env = "HOMEPORT_GATEWAY_STREAM_BUFFER", default_value_t = 256)]
    pub stream_buffer: usize,
    /// A connection whose written data the client leaves unread (or unacknowledged) this long
    /// is closed by the kernel (TCP_USER_TIMEOUT): the write deadline of every answer and of
    /// a live-event client that stopped reading.
    #[arg(
        long,
        env = "HOMEPORT_GATEWAY_WRITE_TIMEOUT_SECS",
        default_value_t = 30
    )]
    pub write_timeout_secs: u64,
    /// Live-event clients at once on this replica; more get 503.
    #[arg(long, env = "HOMEPORT_GATEWAY_MAX_STREAMS", default_value_t = 1000)]
    pub max_streams: usize,
    /// Of those, at most this many for one tenant.
    #[arg(
        long,
        env = "HOMEPORT_GATEWAY_MAX_STREAMS_PER_TENANT",
        default_value_t = 200
    )]
    pub max_streams_per_tenant: usize,
}

impl GatewayConfig {
    pub fn validate(&self) -> Result<(), String> {
        self.jwt.validate()?;
        if !homeport_auth::valid_tenant(&self.admin_tenant) {
            return Err(format!(
                "--admin-tenant {:?} is not a valid tenant (letters, digits, - and _, at most 64)",
                self.admin_tenant
            ));
        }
        if self.admin_password_hash_file.is_some() && self.jwt.hs256_secret_file.is_none() {
            return Err("--admin-password-hash-file needs --jwt-hs256-secret-file: the gateway signs the tokens /authorize issues with it".into());
        }
        for (flag, url) in [
            ("--device-api", &self.device_api),
            ("--audit-api", &self.audit_api),
            ("--rps-api", &self.rps_api),
        ] {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!(
                    "{flag} must be an http:// or https:// URL, not {url:?}"
                ));
            }
        }
        if self.stream_buffer == 0 || self.max_streams == 0 || self.max_body_bytes == 0 {
            return Err(
                "--stream-buffer, --max-streams and --max-body-bytes must be positive".into(),
            );
        }
        Ok(())
    }

    pub fn call_timeout(&self) -> Duration {
        Duration::from_secs(self.call_timeout_secs.max(1))
    }

    pub fn token_ttl(&self) -> Duration {
        Duration::from_secs(self.token_ttl_minutes.max(1) * 60)
    }
}
