//! rps configuration: flags and `HOMEPORT_*` variables, parsed once at start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use homeport_auth::JwtArgs;

#[derive(clap::Args, Clone, Debug)]
pub struct RpsConfig {
    /// WebSocket (wss) listen address for the rpc clients; any URL path is accepted.
    #[arg(long, env = "HOMEPORT_RPS_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// TLS certificate chain (PEM) of the WebSocket listener; without it a self-signed one is
    /// generated at start (embedded mode: clients must skip verification, `rpc -n`).
    #[arg(long, env = "HOMEPORT_RPS_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, env = "HOMEPORT_RPS_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
    /// gRPC listen address of the admin API (profiles, CIRA configs, domains, wireless).
    #[arg(long, env = "HOMEPORT_GRPC_LISTEN", default_value = "127.0.0.1:50053")]
    pub grpc_listen: SocketAddr,
    /// Health and metrics listen address (/healthz, /readyz, /metrics).
    #[arg(long, env = "HOMEPORT_HEALTH_LISTEN", default_value = "127.0.0.1:9437")]
    pub health_listen: SocketAddr,
    #[command(flatten)]
    pub jwt: JwtArgs,
    /// Deadline of one step: a WS-Man answer from the client, or a store write.
    #[arg(long, env = "HOMEPORT_RPS_STEP_TIMEOUT_SECS", default_value_t = 12)]
    pub step_timeout_secs: u64,
    /// Deadline of a whole flow, from the WebSocket upgrade to the result. rpc-go relays each
    /// exchange in about 1 s over LMS and 2-3 s over LME, so a long ACM flow needs minutes.
    #[arg(long, env = "HOMEPORT_RPS_FLOW_TIMEOUT_SECS", default_value_t = 600)]
    pub flow_timeout_secs: u64,
    /// Deadline of the TLS and WebSocket handshakes and the client's first message.
    #[arg(
        long,
        env = "HOMEPORT_RPS_HANDSHAKE_TIMEOUT_SECS",
        default_value_t = 10
    )]
    pub handshake_timeout_secs: u64,
    /// Largest WebSocket message accepted (the reference's 100 KiB).
    #[arg(
        long,
        env = "HOMEPORT_RPS_MAX_MESSAGE_BYTES",
        default_value_t = 102_400
    )]
    pub max_message_bytes: usize,
    /// Flows in progress at once on this replica; a valid request beyond it waits for a slot
    /// (up to the handshake timeout), so memory stays bounded.
    #[arg(long, env = "HOMEPORT_RPS_MAX_FLOWS", default_value_t = 10_000)]
    pub max_flows: usize,
    /// Connections between accept and their first message, at once; more are closed at once
    /// (a flood of idle sockets costs a task and TLS state each).
    #[arg(long, env = "HOMEPORT_RPS_MAX_HANDSHAKES", default_value_t = 1024)]
    pub max_handshakes: usize,
    /// Of those, at most this many from one source address (IPv6: one /64); a site's PCs
    /// behind one NAT address activate a few at a time.
    #[arg(
        long,
        env = "HOMEPORT_RPS_MAX_HANDSHAKES_PER_SOURCE",
        default_value_t = 64
    )]
    pub max_handshakes_per_source: usize,
    /// Wait after Setup before the device is used with its new password (the reference's
    /// fixed 12 s; current firmware needs none).
    #[arg(long, env = "HOMEPORT_RPS_SETUP_SETTLE_MS", default_value_t = 0)]
    pub setup_settle_ms: u64,
}

impl RpsConfig {
    pub fn step_timeout(&self) -> Duration {
        Duration::from_secs(self.step_timeout_secs)
    }

    pub fn flow_timeout(&self) -> Duration {
        Duration::from_secs(self.flow_timeout_secs)
    }

    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout_secs)
    }

    pub fn validate(&self) -> Result<(), String> {
        self.jwt.validate()?;
        if self.step_timeout_secs == 0 || self.flow_timeout_secs == 0 {
            return Err("--step-timeout-secs and --flow-timeout-secs must be positive".into());
        }
        if self.flow_timeout_secs < self.step_timeout_secs {
            return Err("--flow-timeout-secs must be at least --step-timeout-secs".into());
        }
        if self.handshake_timeout_secs == 0 {
            return Err("--handshake-timeout-secs must be positive".into());
        }
        if !(4096..=16 << 20).contains(&self.max_message_bytes) {
            return Err("--max-message-bytes must be between 4096 and 16 MiB".into());
        }
        if self.max_flows == 0 || self.max_handshakes == 0 || self.max_handshakes_per_source == 0 {
            return Err(
                "--max-flows, --max-handshakes and --max-handshakes-per-source must be positive"
                    .into(),
            );
        }
        Ok(())
    }
}
