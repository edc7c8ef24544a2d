//! mps-command configuration: flags and `HOMEPORT_*` variables, parsed once at start.

use std::net::SocketAddr;
use std::time::Duration;

use homeport_auth::JwtArgs;

#[derive(clap::Args, Clone, Debug)]
pub struct CommandConfig {
    /// gRPC listen address.
    #[arg(long, env = "HOMEPORT_GRPC_LISTEN", default_value = "127.0.0.1:50051")]
    pub grpc_listen: SocketAddr,
    /// Health and metrics listen address (/healthz, /readyz, /metrics).
    #[arg(long, env = "HOMEPORT_HEALTH_LISTEN", default_value = "127.0.0.1:9434")]
    pub health_listen: SocketAddr,
    /// Deadline of one WS-Man exchange with a device, in milliseconds.
    #[arg(long, env = "HOMEPORT_EXCHANGE_TIMEOUT_MS", default_value_t = 10_000)]
    pub exchange_timeout_ms: u64,
    #[command(flatten)]
    pub jwt: JwtArgs,
    /// Deadline of a whole command (all its WS-Man exchanges), in milliseconds.
    #[arg(long, env = "HOMEPORT_COMMAND_TIMEOUT_MS", default_value_t = 120_000)]
    pub command_timeout_ms: u64,
    /// Devices queried at once by GetPowerStates.
    #[arg(long, env = "HOMEPORT_BULK_CONCURRENCY", default_value_t = 64)]
    pub bulk_concurrency: usize,
}

impl CommandConfig {
    pub fn exchange_timeout(&self) -> Duration {
        Duration::from_millis(self.exchange_timeout_ms)
    }

    pub fn command_timeout(&self) -> Duration {
        Duration::from_millis(self.command_timeout_ms)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.command_timeout_ms < self.exchange_timeout_ms {
            return Err("--command-timeout-ms must be at least --exchange-timeout-ms".into());
        }
        self.jwt.validate()?;
        if self.exchange_timeout_ms == 0 {
            return Err("--exchange-timeout-ms must be positive".into());
        }
        if self.bulk_concurrency == 0 {
            return Err("--bulk-concurrency must be positive".into());
        }
        Ok(())
    }
}
