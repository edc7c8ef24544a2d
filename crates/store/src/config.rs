//! Connection settings for [`crate::Store`].

use std::fmt;
use std::time::Duration;

/// Where the database is and how many connections to keep.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// `postgres://user:pass@host/db`, `sqlite://path?mode=rwc` or `sqlite::memory:`.
    pub url: String,
    /// Pool size. Forced to 1 for in-memory SQLite, whose data lives in its one connection.
    pub max_connections: u32,
    /// How long a query waits for a free pooled connection before failing as unavailable.
    pub acquire_timeout: Duration,
    /// Connections opened at start and kept while idle, so that a burst of work (a reconnect
    /// storm at the ingress) does not pay for opening them: each costs a TLS handshake and,
    /// with the system's OpenSSL, loading the CA store, tens of milliseconds of CPU.
    pub min_connections: u32,
}

impl StoreConfig {
    /// Default pool size: enough for a service's concurrent handlers without exhausting
    /// PostgreSQL's default 100 connections across a few replicas.
    pub const DEFAULT_MAX_CONNECTIONS: u32 = 10;
    /// Default wait for a pooled connection.
    pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

    /// A config with default pool settings.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            acquire_timeout: Self::DEFAULT_ACQUIRE_TIMEOUT,
            min_connections: 0,
        }
    }

    /// The URL with any password replaced by `***`, for logs and errors.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }
}

// By hand: the URL may hold a database password.
impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreConfig")
            .field("url", &self.redacted_url())
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("min_connections", &self.min_connections)
            .finish()
    }
}

/// Replaces the password in `scheme://user:password@host...` with `***`; query parameters
/// (`?password=...`) are dropped entirely since they may hold one too.
pub(crate) fn redact_url(url: &str) -> String {
    let url = url.split('?').next().unwrap_or_default();
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &authority[..at];
    let Some(colon) = userinfo.find(':') else {
        return url.to_owned();
    };
    format!(
        "{}{}:***{}",
        &url[..scheme_end + 3],
        &userinfo[..colon],
        &rest[at..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction() {
        assert_eq!(
            redact_url("postgres://hp:s3cret@db:5432/homeport?sslmode=require"),
            "postgres://hp:***@db:5432/homeport"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1/x"),
            "postgres://postgres@127.0.0.1/x"
        );
        assert_eq!(redact_url("sqlite::memory:"), "sqlite::memory:");
        assert_eq!(redact_url("postgres://a:b@h"), "postgres://a:***@h");
        let config = StoreConfig::new("postgres://u:pw@h/db");
        assert!(!format!("{config:?}").contains("pw"));
    }
}
