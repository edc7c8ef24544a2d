//! mps-command configuration: flags and `HOMEPORT_*` variables, parsed once at start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

use crate::auth::{Authenticator, Key};

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
    /// File holding the HS256 secret that signs bearer tokens.
    #[arg(long, env = "HOMEPORT_JWT_HS256_SECRET_FILE")]
    pub jwt_hs256_secret_file: Option<PathBuf>,
    /// PEM file with the RS256 public key that verifies bearer tokens.
    #[arg(long, env = "HOMEPORT_JWT_RS256_PUBLIC_KEY_FILE")]
    pub jwt_rs256_public_key_file: Option<PathBuf>,
    /// Token claim naming the caller's tenant.
    #[arg(long, env = "HOMEPORT_JWT_TENANT_CLAIM", default_value = "tenant")]
    pub jwt_tenant_claim: String,
    /// Required `aud` claim, if set.
    #[arg(long, env = "HOMEPORT_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Required `iss` claim, if set.
    #[arg(long, env = "HOMEPORT_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Devices queried at once by GetPowerStates.
    #[arg(long, env = "HOMEPORT_BULK_CONCURRENCY", default_value_t = 64)]
    pub bulk_concurrency: usize,
}

impl CommandConfig {
    pub fn exchange_timeout(&self) -> Duration {
        Duration::from_millis(self.exchange_timeout_ms)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.jwt_hs256_secret_file.is_none() && self.jwt_rs256_public_key_file.is_none() {
            return Err("set --jwt-hs256-secret-file or --jwt-rs256-public-key-file (HOMEPORT_JWT_*): every call needs a bearer token".into());
        }
        if self.exchange_timeout_ms == 0 {
            return Err("--exchange-timeout-ms must be positive".into());
        }
        if self.bulk_concurrency == 0 {
            return Err("--bulk-concurrency must be positive".into());
        }
        Ok(())
    }
}

/// Reads the configured token keys.
pub fn authenticator(config: &CommandConfig) -> anyhow::Result<Authenticator> {
    let mut keys = Vec::new();
    if let Some(f) = &config.jwt_hs256_secret_file {
        let s = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
        let s = s.strip_suffix(b"\n").unwrap_or(&s).to_vec();
        anyhow::ensure!(
            s.len() >= 32,
            "{}: an HS256 secret needs at least 32 bytes",
            f.display()
        );
        keys.push(Key::Hs256(s));
    }
    if let Some(f) = &config.jwt_rs256_public_key_file {
        let pem = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
        let key = openssl::pkey::PKey::public_key_from_pem(&pem)
            .with_context(|| format!("{}: not a PEM public key", f.display()))?;
        keys.push(Key::Rs256(key));
    }
    Ok(Authenticator::new(keys, &config.jwt_tenant_claim)
        .with_audience(config.jwt_audience.clone(), config.jwt_issuer.clone()))
}
