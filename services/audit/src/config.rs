//! Audit worker configuration: flags and `HOMEPORT_*` variables, parsed once at start.

use std::net::SocketAddr;
use std::time::Duration;

use homeport_auth::JwtArgs;

#[derive(clap::Args, Clone, Debug)]
pub struct AuditConfig {
    /// gRPC listen address (AuditService).
    #[arg(long, env = "HOMEPORT_GRPC_LISTEN", default_value = "127.0.0.1:50052")]
    pub grpc_listen: SocketAddr,
    /// Health and metrics listen address (/healthz, /readyz, /metrics).
    #[arg(long, env = "HOMEPORT_HEALTH_LISTEN", default_value = "127.0.0.1:9435")]
    pub health_listen: SocketAddr,
    /// Durable consumer every replica shares.
    #[arg(long, env = "HOMEPORT_AUDIT_CONSUMER", default_value = "audit")]
    pub consumer: String,
    /// Most events written in one transaction.
    #[arg(long, env = "HOMEPORT_AUDIT_BATCH", default_value_t = 1000)]
    pub batch: usize,
    /// Seconds JetStream waits for an ack before redelivering (to this or another replica).
    #[arg(long, env = "HOMEPORT_AUDIT_ACK_WAIT_SECS", default_value_t = 30)]
    pub ack_wait_secs: u64,
    /// Days the audit trail keeps an event; older ones are deleted hourly.
    #[arg(long, env = "HOMEPORT_AUDIT_RETENTION_DAYS", default_value_t = 365)]
    pub retention_days: u64,
    #[command(flatten)]
    pub jwt: JwtArgs,
}

impl AuditConfig {
    pub fn validate(&self) -> Result<(), String> {
        self.jwt.validate()?;
        if self.batch == 0 || self.batch > 10_000 {
            return Err("--batch must be 1-10000".into());
        }
        if self.ack_wait_secs == 0 {
            return Err("--ack-wait-secs must be positive".into());
        }
        if self.retention_days == 0 {
            return Err("--retention-days must be positive".into());
        }
        Ok(())
    }

    pub fn retention(&self) -> Duration {
        Duration::from_secs(self.retention_days.saturating_mul(24 * 3600))
    }

    pub fn ack_wait(&self) -> Duration {
        Duration::from_secs(self.ack_wait_secs)
    }

    /// Settings for tests and embedding: the given tokens, defaults otherwise.
    pub fn with_jwt(jwt: JwtArgs) -> AuditConfig {
        AuditConfig {
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            health_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            consumer: "audit".into(),
            batch: 1000,
            ack_wait_secs: 30,
            retention_days: 365,
            jwt,
        }
    }
}
