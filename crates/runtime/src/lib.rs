//! What every Homeport binary shares: the common command-line/env configuration and the
//! wiring from that configuration to ready-made parts (NATS client, store, secret store).
//!
//! Only binaries use this crate; service libraries take the parts, never the environment.

pub mod io;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use homeport_secrets::DynSecretStore;

/// How a process logs: an `EnvFilter` and text or JSON lines.
#[derive(Clone, Debug)]
pub struct Logging {
    pub filter: String,
    pub json: bool,
}

/// Settings shared by every service. Each can be given as a flag or a `HOMEPORT_*` variable.
#[derive(clap::Args, Clone)]
pub struct CommonArgs {
    /// NATS server URL.
    #[arg(
        long,
        env = "HOMEPORT_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,
    /// Prefix of every NATS subject, stream and bucket of this deployment.
    #[arg(long, env = "HOMEPORT_SUBJECT_PREFIX", default_value = homeport_contracts::DEFAULT_PREFIX)]
    pub subject_prefix: String,
    /// Database URL: postgres://… in production, sqlite://path?mode=rwc embedded.
    #[arg(
        long,
        env = "HOMEPORT_DATABASE_URL",
        default_value = "sqlite://homeport-data/homeport.db?mode=rwc"
    )]
    pub database_url: String,
    /// File holding the database URL (a mounted secret: the URL carries the password); used
    /// instead of --database-url when set.
    #[arg(long, env = "HOMEPORT_DATABASE_URL_FILE")]
    pub database_url_file: Option<PathBuf>,
    /// Database connection pool size.
    #[arg(long, env = "HOMEPORT_DATABASE_POOL", default_value_t = 16)]
    pub database_pool: u32,
    /// Secret store: "local" (AES-GCM encrypted file) or "vault" (HashiCorp Vault KV v2).
    #[arg(long, env = "HOMEPORT_SECRETS", default_value = "local")]
    pub secrets: String,
    /// Local secret store file.
    #[arg(
        long,
        env = "HOMEPORT_SECRETS_FILE",
        default_value = "homeport-data/secrets.enc"
    )]
    pub secrets_file: PathBuf,
    /// Key of the local secret store (created on first use, mode 0600).
    #[arg(
        long,
        env = "HOMEPORT_SECRETS_KEY_FILE",
        default_value = "homeport-data/secrets.key"
    )]
    pub secrets_key_file: PathBuf,
    /// Vault address, with --secrets vault.
    #[arg(
        long,
        env = "HOMEPORT_VAULT_ADDR",
        default_value = "http://127.0.0.1:8200"
    )]
    pub vault_addr: String,
    /// Vault token, with --secrets vault. Prefer the environment variable over the flag.
    #[arg(
        long,
        env = "HOMEPORT_VAULT_TOKEN",
        default_value = "",
        hide_env_values = true
    )]
    pub vault_token: String,
    /// File holding the Vault token (a mounted secret), instead of --vault-token.
    #[arg(long, env = "HOMEPORT_VAULT_TOKEN_FILE")]
    pub vault_token_file: Option<PathBuf>,
    /// PEM file of the CA that signed Vault's certificate (when the system's CAs do not).
    #[arg(long, env = "HOMEPORT_VAULT_CA_FILE")]
    pub vault_ca_file: Option<PathBuf>,
    /// Vault KV v2 mount.
    #[arg(long, env = "HOMEPORT_VAULT_MOUNT", default_value = "secret")]
    pub vault_mount: String,
    /// Days the events stream keeps an event (JetStream max_age), when this process creates it.
    #[arg(long, env = "HOMEPORT_EVENTS_MAX_AGE_DAYS", default_value_t = 30)]
    pub events_max_age_days: u64,
    /// Bytes the events stream may hold before discarding the oldest (-1: no limit).
    #[arg(long, env = "HOMEPORT_EVENTS_MAX_BYTES", default_value_t = homeport_contracts::events::DEFAULT_EVENTS_MAX_BYTES, allow_negative_numbers = true)]
    pub events_max_bytes: i64,
    /// Replicas of the events stream and of the presence and node buckets in a NATS cluster
    /// (1 on a single server), applied by whichever process creates them.
    #[arg(long, env = "HOMEPORT_EVENTS_REPLICAS", default_value_t = 1)]
    pub events_replicas: usize,
    #[command(flatten)]
    pub nats_auth: NatsAuthArgs,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(
        long,
        env = "HOMEPORT_LOG",
        default_value = "info,async_nats=warn,sqlx=warn,sea_orm_migration=warn"
    )]
    pub log: String,
    /// Log lines as text for people ("text") or one JSON object per line for log collectors
    /// ("json").
    #[arg(long, env = "HOMEPORT_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

/// Secrets print as `***`: this goes into logs on start-up errors.
impl std::fmt::Debug for CommonArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommonArgs")
            .field("nats_url", &self.nats_url)
            .field("subject_prefix", &self.subject_prefix)
            .field("database_url", &redact_url(&self.database_url))
            .field("database_url_file", &self.database_url_file)
            .field("database_pool", &self.database_pool)
            .field("secrets", &self.secrets)
            .field("secrets_file", &self.secrets_file)
            .field("secrets_key_file", &self.secrets_key_file)
            .field("vault_addr", &self.vault_addr)
            .field("vault_token", &"***")
            .field("vault_token_file", &self.vault_token_file)
            .field("vault_ca_file", &self.vault_ca_file)
            .field("vault_mount", &self.vault_mount)
            .field("events_max_age_days", &self.events_max_age_days)
            .field("events_max_bytes", &self.events_max_bytes)
            .field("events_replicas", &self.events_replicas)
            .field("nats_auth", &self.nats_auth)
            .field("log", &self.log)
            .finish()
    }
}

/// How this process authenticates to NATS: its own user (an NKey, a credentials file, or a
/// user and password) and TLS. Without any, it connects anonymously (a NATS without
/// authorization, as in development).
#[derive(clap::Args, Clone, Default)]
pub struct NatsAuthArgs {
    /// File holding this service's NKey seed (`SU…`); the server knows its public key.
    #[arg(long, env = "HOMEPORT_NATS_NKEY_FILE")]
    pub nats_nkey_file: Option<PathBuf>,
    /// NATS credentials file (user JWT and NKey seed, from an operator/account setup).
    #[arg(long, env = "HOMEPORT_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// NATS user, with --nats-password-file (NKeys are preferred).
    #[arg(long, env = "HOMEPORT_NATS_USER", requires = "nats_password_file")]
    pub nats_user: Option<String>,
    /// File holding the NATS user's password.
    #[arg(long, env = "HOMEPORT_NATS_PASSWORD_FILE", requires = "nats_user")]
    pub nats_password_file: Option<PathBuf>,
    /// CA certificate (PEM) to verify the NATS server with; implies TLS.
    #[arg(long, env = "HOMEPORT_NATS_TLS_CA")]
    pub nats_tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for NATS TLS, with --nats-tls-key.
    #[arg(long, env = "HOMEPORT_NATS_TLS_CERT", requires = "nats_tls_key")]
    pub nats_tls_cert: Option<PathBuf>,
    /// Client key (PEM) for NATS TLS, with --nats-tls-cert.
    #[arg(long, env = "HOMEPORT_NATS_TLS_KEY", requires = "nats_tls_cert")]
    pub nats_tls_key: Option<PathBuf>,
    /// NKey seeds by role, set by the all-in-one for the NATS server it starts (not a flag).
    #[arg(skip)]
    pub role_seeds: Vec<(
        homeport_contracts::access::Role,
        homeport_secrets::SecretString,
    )>,
}

impl std::fmt::Debug for NatsAuthArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsAuthArgs")
            .field("nats_nkey_file", &self.nats_nkey_file)
            .field("nats_creds", &self.nats_creds)
            .field("nats_user", &self.nats_user)
            .field("nats_password_file", &self.nats_password_file)
            .field("nats_tls_ca", &self.nats_tls_ca)
            .field("nats_tls_cert", &self.nats_tls_cert)
            .field("nats_tls_key", &self.nats_tls_key)
            .field("role_seeds", &self.role_seeds.len())
            .finish()
    }
}

/// A NATS user's proof of identity.
#[derive(Clone, Debug, Default)]
pub enum NatsCredential {
    #[default]
    Anonymous,
    NKeySeed(homeport_secrets::SecretString),
    CredsFile(PathBuf),
    UserPassword(String, homeport_secrets::SecretString),
}

/// Everything a connection needs to authenticate as one role.
#[derive(Clone, Debug, Default)]
pub struct NatsAuth {
    /// The role: its reply inboxes get the role's prefix (the only ones it may read).
    pub role: Option<homeport_contracts::access::Role>,
    pub credential: NatsCredential,
    pub tls_ca: Option<PathBuf>,
    pub tls_client: Option<(PathBuf, PathBuf)>,
}

impl NatsAuthArgs {
    /// The authentication of `role` from these settings (reading secret files now).
    pub fn for_role(&self, role: homeport_contracts::access::Role) -> anyhow::Result<NatsAuth> {
        let read = |p: &PathBuf| -> anyhow::Result<homeport_secrets::SecretString> {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            Ok(homeport_secrets::SecretString::new(text.trim().to_string()))
        };
        let credential = if let Some((_, seed)) = self.role_seeds.iter().find(|(r, _)| *r == role) {
            NatsCredential::NKeySeed(seed.clone())
        } else if let Some(f) = &self.nats_nkey_file {
            NatsCredential::NKeySeed(read(f)?)
        } else if let Some(f) = &self.nats_creds {
            NatsCredential::CredsFile(f.clone())
        } else if let (Some(user), Some(f)) = (&self.nats_user, &self.nats_password_file) {
            NatsCredential::UserPassword(user.clone(), read(f)?)
        } else {
            NatsCredential::Anonymous
        };
        Ok(NatsAuth {
            role: Some(role),
            credential,
            tls_ca: self.nats_tls_ca.clone(),
            tls_client: self.nats_tls_cert.clone().zip(self.nats_tls_key.clone()),
        })
    }
}

impl CommonArgs {
    /// Checks what can be checked before any port is bound.
    pub fn validate(&self) -> anyhow::Result<()> {
        match self.secrets.as_str() {
            "local" => {}
            "vault" if self.vault_token.is_empty() && self.vault_token_file.is_none() => {
                bail!("--secrets vault needs a token (HOMEPORT_VAULT_TOKEN or HOMEPORT_VAULT_TOKEN_FILE)")
            }
            "vault" => {}
            other => bail!("--secrets must be \"local\" or \"vault\", not {other:?}"),
        }
        if self.events_replicas == 0 || self.events_replicas > 5 {
            bail!("--events-replicas must be 1-5");
        }
        if self.events_max_age_days == 0 {
            bail!("--events-max-age-days must be positive");
        }
        let url = self.database_url()?;
        if !(url.starts_with("postgres://")
            || url.starts_with("postgresql://")
            || url.starts_with("sqlite:"))
        {
            bail!("--database-url must start with postgres:// or sqlite:");
        }
        Ok(())
    }

    /// The database URL: the content of --database-url-file when set, else --database-url.
    pub fn database_url(&self) -> anyhow::Result<String> {
        match &self.database_url_file {
            Some(path) => read_setting_file("--database-url-file", path),
            None => Ok(self.database_url.clone()),
        }
    }

    /// The Vault token: the content of --vault-token-file when set, else --vault-token.
    fn vault_token(&self) -> anyhow::Result<String> {
        match &self.vault_token_file {
            Some(path) => read_setting_file("--vault-token-file", path),
            None => Ok(self.vault_token.clone()),
        }
    }

    /// How this process logs.
    pub fn logging(&self) -> Logging {
        Logging {
            filter: self.log.clone(),
            json: self.log_format == "json",
        }
    }

    /// Limits of the events stream, applied when a process creates it.
    pub fn stream_limits(&self) -> homeport_contracts::events::StreamLimits {
        homeport_contracts::events::StreamLimits {
            max_age: Duration::from_secs(self.events_max_age_days.saturating_mul(24 * 3600)),
            max_bytes: self.events_max_bytes,
            replicas: self.events_replicas.max(1),
        }
    }

    pub fn names(&self) -> homeport_contracts::Names {
        homeport_contracts::Names::new(&self.subject_prefix)
    }

    /// Opens the configured secret store.
    pub async fn open_secrets(&self) -> anyhow::Result<DynSecretStore> {
        match self.secrets.as_str() {
            "vault" => {
                let mut config = homeport_secrets::VaultConfig::new(
                    self.vault_addr.clone(),
                    homeport_secrets::SecretString::new(self.vault_token()?),
                );
                config.mount = self.vault_mount.clone();
                config.ca_files = self
                    .vault_ca_file
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect();
                let store = homeport_secrets::VaultStore::new(config).context("Vault client")?;
                Ok(Arc::new(store))
            }
            _ => {
                for p in [&self.secrets_file, &self.secrets_key_file] {
                    if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                        std::fs::create_dir_all(dir)
                            .with_context(|| format!("creating {}", dir.display()))?;
                    }
                }
                let store =
                    homeport_secrets::LocalFileStore::open(homeport_secrets::LocalFileConfig::new(
                        self.secrets_file.clone(),
                        self.secrets_key_file.clone(),
                    ))
                    .await
                    .context("local secret store")?;
                Ok(Arc::new(store))
            }
        }
    }

    /// Connects to the database (creating the SQLite directory) and applies migrations.
    pub async fn open_store(&self) -> anyhow::Result<homeport_store::Store> {
        self.open_store_keeping(0).await
    }

    /// Like [`CommonArgs::open_store`], keeping at least `min_connections` open from the start.
    pub async fn open_store_keeping(
        &self,
        min_connections: u32,
    ) -> anyhow::Result<homeport_store::Store> {
        let url = self.database_url()?;
        if let Some(path) = url.strip_prefix("sqlite://") {
            let file = path.split('?').next().unwrap_or_default();
            if let Some(dir) = std::path::Path::new(file)
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
            {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
        }
        let mut config = homeport_store::StoreConfig::new(url.clone());
        config.max_connections = self.database_pool;
        config.min_connections = min_connections;
        homeport_store::Store::connect_with(config)
            .await
            .with_context(|| format!("database {}", redact_url(&url)))
    }

    /// Connects to NATS as `role`, retrying for up to `wait` while it is unreachable.
    pub async fn connect_nats(
        &self,
        role: homeport_contracts::access::Role,
        name: &str,
        wait: Duration,
    ) -> anyhow::Result<async_nats::Client> {
        let auth = self.nats_auth.for_role(role)?;
        connect_nats_with(&self.nats_url, name, wait, &auth).await
    }
}

/// Messages a subscription buffers before NATS drops them (async-nats' default).
pub const SUBSCRIPTION_CAPACITY: usize = 65_536;

/// Connects to NATS anonymously (tools and tests against a development NATS).
pub async fn connect_nats(
    url: &str,
    name: &str,
    wait: Duration,
) -> anyhow::Result<async_nats::Client> {
    connect_nats_with(url, name, wait, &NatsAuth::default()).await
}

/// The options of one connection attempt with `auth`.
async fn auth_options(auth: &NatsAuth) -> anyhow::Result<async_nats::ConnectOptions> {
    let mut opts = match &auth.credential {
        NatsCredential::Anonymous => async_nats::ConnectOptions::new(),
        NatsCredential::NKeySeed(seed) => {
            async_nats::ConnectOptions::with_nkey(seed.expose().to_string())
        }
        NatsCredential::CredsFile(path) => {
            async_nats::ConnectOptions::with_credentials_file(path.clone())
                .await
                .with_context(|| format!("NATS credentials {}", path.display()))?
        }
        NatsCredential::UserPassword(user, password) => async_nats::ConnectOptions::new()
            .user_and_password(user.clone(), password.expose().to_string()),
    };
    if let Some(role) = auth.role {
        opts = opts.custom_inbox_prefix(role.inbox_prefix());
    }
    if let Some(ca) = &auth.tls_ca {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let Some((cert, key)) = &auth.tls_client {
        opts = opts
            .add_client_certificate(cert.clone(), key.clone())
            .require_tls(true);
    }
    Ok(opts)
}

/// Connects to NATS with `auth`, retrying for up to `wait` while it is unreachable. After the
/// first connection the client reconnects by itself forever.
pub async fn connect_nats_with(
    url: &str,
    name: &str,
    wait: Duration,
    auth: &NatsAuth,
) -> anyhow::Result<async_nats::Client> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut delay = Duration::from_millis(100);
    loop {
        let opts = auth_options(auth)
            .await?
            .name(name)
            // Few, busy subscriptions (one per ingress node, one reply inbox per client): a
            // burst must queue, not be dropped. Slots are allocated as used, not up front.
            .subscription_capacity(SUBSCRIPTION_CAPACITY)
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::SlowConsumer(sid) => {
                        tracing::warn!(
                            subscription = sid,
                            "NATS messages dropped: subscriber too slow"
                        )
                    }
                    async_nats::Event::Disconnected => tracing::warn!("NATS disconnected"),
                    async_nats::Event::ServerError(e) => {
                        tracing::error!(error = %e, "NATS refused an operation (permissions?)")
                    }
                    async_nats::Event::Connected => tracing::info!("NATS connected"),
                    other => tracing::debug!(event = %other, "NATS event"),
                }
            })
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5));
        match tokio::time::timeout(Duration::from_secs(5), opts.connect(url)).await {
            Ok(Ok(client))
                if client.connection_state() == async_nats::connection::State::Connected =>
            {
                return Ok(client)
            }
            Ok(Ok(client)) => {
                // retry_on_initial_connect returns at once; wait for the first connection.
                let until = tokio::time::Instant::now() + Duration::from_secs(5);
                while tokio::time::Instant::now() < until.min(deadline) {
                    if client.connection_state() == async_nats::connection::State::Connected {
                        return Ok(client);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            Ok(Err(e)) => tracing::warn!(url, error = %e, "NATS not reachable yet"),
            Err(_) => tracing::warn!(url, "NATS connect timed out"),
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("NATS at {url} not reachable after {wait:?}");
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// Hides a password in a database URL for logs and errors.
/// A setting kept in a mounted file (a Kubernetes or Swarm secret), surrounding whitespace
/// (the trailing newline editors add) removed.
fn read_setting_file(flag: &str, path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading {flag} {}", path.display()))?;
    Ok(text.trim().to_owned())
}

pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// A TCP listener on `addr`; the error names what it was for ("binding health port …").
pub async fn bind(
    addr: std::net::SocketAddr,
    what: &str,
) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {what} {addr}"))
}

/// The common `main` of every binary: exits 2 when the configuration is invalid (before any
/// port is bound), starts logging and a multi-threaded runtime, runs `body`, and exits 1 with
/// one line on error.
pub fn run_main<F, Fut>(name: &str, valid: anyhow::Result<()>, logging: &Logging, body: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    run_main_with_threads(name, valid, logging, 0, body)
}

/// [`run_main`] with `worker_threads` runtime threads (0: one per core).
pub fn run_main_with_threads<F, Fut>(
    name: &str,
    valid: anyhow::Result<()>,
    logging: &Logging,
    worker_threads: usize,
    body: F,
) where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    if let Err(e) = valid {
        eprintln!("{name}: {e:#}");
        std::process::exit(2);
    }
    homeport_telemetry::init_logging_as(&logging.filter, logging.json);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if worker_threads > 0 {
        builder.worker_threads(worker_threads);
    }
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = rt.block_on(async {
        // Spans go out over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set (the exporter runs
        // on this runtime), and what is buffered is flushed before the process exits.
        let traces = homeport_telemetry::traces::init(name);
        let result = body().await;
        let _ = tokio::task::spawn_blocking(move || traces.shutdown()).await;
        result
    });
    if let Err(e) = result {
        eprintln!("{name}: {}", one_line(&e));
        std::process::exit(1);
    }
}

/// The error and its causes on one line, skipping causes whose text is already there (library
/// errors often repeat their source in their own message).
pub fn one_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

/// Resolves after `seconds`, or on SIGTERM or Ctrl-C when `seconds` is 0.
pub async fn stop_after(seconds: u64) {
    if seconds == 0 {
        shutdown_signal().await
    } else {
        tokio::time::sleep(Duration::from_secs(seconds)).await
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_already_in_the_message_are_not_repeated() {
        let inner = std::io::Error::other("pool timed out");
        let outer = anyhow::Error::new(inner).context("database error: pool timed out");
        let e = outer.context("database postgres://x");
        assert_eq!(
            one_line(&e),
            "database postgres://x: database error: pool timed out"
        );
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        common: CommonArgs,
    }

    #[test]
    fn the_database_url_and_vault_token_can_come_from_mounted_files() {
        use clap::Parser as _;
        let dir = std::env::temp_dir().join(format!("hp-runtime-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (url, token) = (dir.join("database-url"), dir.join("vault-token"));
        std::fs::write(&url, "postgres://hp:pw@db:5432/hp\n").unwrap();
        std::fs::write(&token, "hvs.token\n").unwrap();
        let cli = Cli::try_parse_from([
            "x".as_ref(),
            "--secrets".as_ref(),
            "vault".as_ref(),
            "--database-url-file".as_ref(),
            url.as_os_str(),
            "--vault-token-file".as_ref(),
            token.as_os_str(),
        ])
        .unwrap();
        cli.common.validate().expect("a token file is a token");
        assert_eq!(
            cli.common.database_url().unwrap(),
            "postgres://hp:pw@db:5432/hp"
        );
        assert_eq!(cli.common.vault_token().unwrap(), "hvs.token");
        assert!(!format!("{:?}", cli.common).contains("pw@"), "redacted");
        std::fs::write(&url, "mysql://nope\n").unwrap();
        assert!(cli.common.validate().is_err(), "the file's URL is checked");
        std::fs::remove_file(&url).unwrap();
        let e = cli.common.database_url().unwrap_err().to_string();
        assert!(e.contains("--database-url-file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact_url("postgres://u:pw@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
    }
}
