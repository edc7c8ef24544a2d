//! The production secret store: HashiCorp Vault KV v2 through vaultrs.
//!
//! Layout follows Open AMT (§5.4 of the MPS reference): mount `secret` (or `kv`), data at
//! `<prefix><path>`, deletes remove the metadata so no versions linger. Vault's own failures
//! are classified once here: unreachable or sealed is [`SecretError::Unavailable`], 404 is
//! "absent", 401/403 is [`SecretError::Denied`].

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use vaultrs::api::kv2::requests::SetSecretRequestOptions;
use vaultrs::client::{VaultClient, VaultClientSettings};
use vaultrs::error::ClientError;

use crate::{validate_path, SecretError, SecretMap, SecretStore, SecretString};

/// How to reach Vault. Built by the service from its own configuration; nothing here reads
/// `VAULT_*` environment variables (vaultrs' builder would, so it is not used).
#[derive(Clone, Debug)]
pub struct VaultConfig {
    /// Base address, e.g. `http://vault:8200`.
    pub address: String,
    /// The Vault token (sent as `X-Vault-Token`).
    pub token: SecretString,
    /// KV v2 mount; Open AMT uses `secret` (Kubernetes charts: `kv`).
    pub mount: String,
    /// Prepended verbatim to every path, e.g. `homeport/` to share a mount with other tools.
    pub prefix: String,
    /// Per-request timeout, so a hung Vault fails a device login instead of stalling it.
    pub timeout: Duration,
    /// PEM files of CAs that verify Vault's certificate, besides the system's (a Vault with a
    /// cluster-internal name, say).
    pub ca_files: Vec<String>,
}

impl VaultConfig {
    /// The Open AMT default mount.
    pub const DEFAULT_MOUNT: &'static str = "secret";
    /// Default per-request timeout.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

    /// A config with the default mount, no prefix and the default timeout.
    pub fn new(address: impl Into<String>, token: SecretString) -> Self {
        Self {
            address: address.into(),
            token,
            mount: Self::DEFAULT_MOUNT.to_owned(),
            prefix: String::new(),
            ca_files: Vec::new(),
            timeout: Self::DEFAULT_TIMEOUT,
        }
    }
}

/// The Vault KV v2 [`SecretStore`].
pub struct VaultStore {
    client: VaultClient,
    mount: String,
    prefix: String,
}

impl std::fmt::Debug for VaultStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultStore")
            .field("address", &self.client.settings.address.as_str())
            .field("mount", &self.mount)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl VaultStore {
    /// Builds the client; does not contact Vault (use [`SecretStore::health`] for that).
    pub fn new(config: VaultConfig) -> Result<Self, SecretError> {
        validate_mount_and_prefix(&config.mount, &config.prefix)?;
        let address = parse_address(&config.address)?;
        // Every field is set explicitly: the vaultrs builder fills unset ones from VAULT_*
        // environment variables, which a library must not read.
        let settings = VaultClientSettings {
            address,
            ca_certs: config.ca_files.clone(),
            identity: None,
            timeout: Some(config.timeout),
            token: config.token.expose().to_owned(),
            verify: true,
            version: 1,
            wrapping: false,
            namespace: None,
            proxy: None,
        };
        let client = VaultClient::new(settings).map_err(|e| {
            SecretError::Config(format!("cannot build Vault client: {}", describe(&e)))
        })?;
        Ok(Self {
            client,
            mount: config.mount,
            prefix: config.prefix,
        })
    }

    fn vault_path(&self, path: &str) -> Result<String, SecretError> {
        vault_path(&self.prefix, path)
    }
}

fn parse_address(address: &str) -> Result<url::Url, SecretError> {
    let url = url::Url::parse(address)
        .map_err(|e| SecretError::Config(format!("Vault address {address:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(SecretError::Config(format!(
            "Vault address {address:?} must be http:// or https://"
        )));
    }
    Ok(url)
}

fn validate_mount_and_prefix(mount: &str, prefix: &str) -> Result<(), SecretError> {
    validate_path(mount).map_err(|_| {
        SecretError::Config(format!("Vault mount {mount:?} must be a relative path"))
    })?;
    if prefix.starts_with('/') || prefix.contains("//") || prefix.chars().any(char::is_control) {
        return Err(SecretError::Config(format!(
            "Vault prefix {prefix:?} must be relative, without empty segments"
        )));
    }
    Ok(())
}

/// The path inside the mount: `<prefix><path>`, validated as a whole.
fn vault_path(prefix: &str, path: &str) -> Result<String, SecretError> {
    validate_path(path)?;
    let full = format!("{prefix}{path}");
    validate_path(&full)?;
    Ok(full)
}

/// The HTTP status of a failed request, if Vault answered at all.
fn status_of(e: &ClientError) -> Option<u16> {
    match e {
        ClientError::APIError { code, .. } => Some(*code),
        ClientError::RestClientError {
            source: rustify::errors::ClientError::ServerResponseError { code, .. },
        } => Some(*code),
        _ => None,
    }
}

/// Text for an error message. Only top-level vaultrs messages and Vault's own error strings
/// are used: nested parse errors can quote response bodies, which hold secrets.
fn describe(e: &ClientError) -> String {
    match e {
        ClientError::APIError { code, errors } if errors.is_empty() => format!("HTTP {code}"),
        ClientError::APIError { code, errors } => format!("HTTP {code}: {}", errors.join("; ")),
        ClientError::RestClientError { source } => match source {
            rustify::errors::ClientError::ServerResponseError { code, .. } => {
                format!("HTTP {code}")
            }
            other => other.to_string(),
        },
        other => other.to_string(),
    }
}

/// Maps a vaultrs error (other than the 404/CAS cases callers handle first) onto the store's
/// error kinds.
fn map_error(op: &str, path: &str, e: &ClientError) -> SecretError {
    let msg = format!("Vault {op} {path}: {}", describe(e));
    if let Some(code) = status_of(e) {
        return match code {
            401 | 403 => SecretError::Denied(msg),
            // 429: standby/rate limited; 5xx: sealed, standby, internal trouble.
            429 | 500..=599 => SecretError::Unavailable(msg),
            _ => SecretError::Rejected(msg),
        };
    }
    use rustify::errors::ClientError as Http;
    match e {
        ClientError::RestClientError { source } => match source {
            Http::RequestError { .. } | Http::ResponseError { .. } => SecretError::Unavailable(msg),
            Http::ResponseParseError { .. }
            | Http::ResponseConversionError { .. }
            | Http::DataParseError { .. } => SecretError::Corrupt(msg),
            _ => SecretError::Rejected(msg),
        },
        ClientError::JsonParseError { .. }
        | ClientError::ResponseEmptyError
        | ClientError::ResponseDataEmptyError
        | ClientError::ResponseWrapError => SecretError::Corrupt(msg),
        ClientError::RestClientBuildError { .. } => SecretError::Config(msg),
        _ => SecretError::Rejected(msg),
    }
}

/// Whether a write failed only because the key already exists (KV v2 check-and-set).
fn is_cas_mismatch(e: &ClientError) -> bool {
    match e {
        ClientError::APIError { code: 400, errors } => {
            errors.iter().any(|m| m.contains("check-and-set"))
        }
        _ => false,
    }
}

/// Converts Vault's JSON data to secrets; only string values are accepted, since anything else
/// was not written by Homeport and would not survive a round trip.
fn from_vault_data(
    path: &str,
    data: BTreeMap<String, serde_json::Value>,
) -> Result<SecretMap, SecretError> {
    data.into_iter()
        .map(|(key, value)| match value {
            serde_json::Value::String(s) => Ok((key, SecretString::from(s))),
            _ => Err(SecretError::Corrupt(format!(
                "Vault secret {path} key {key:?} is not a string"
            ))),
        })
        .collect()
}

fn to_vault_data(value: &SecretMap) -> BTreeMap<&str, &str> {
    value
        .iter()
        .map(|(k, v)| (k.as_str(), v.expose()))
        .collect()
}

#[async_trait]
impl SecretStore for VaultStore {
    async fn get(&self, path: &str) -> Result<Option<SecretMap>, SecretError> {
        let full = self.vault_path(path)?;
        let read = vaultrs::kv2::read::<BTreeMap<String, serde_json::Value>>(
            &self.client,
            &self.mount,
            &full,
        )
        .await;
        match read {
            Ok(data) => from_vault_data(&full, data).map(Some),
            // Absent, or deleted (KV v2 answers 404 for a deleted latest version too).
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(map_error("read", &full, &e)),
        }
    }

    async fn put(&self, path: &str, value: SecretMap) -> Result<(), SecretError> {
        let full = self.vault_path(path)?;
        vaultrs::kv2::set(&self.client, &self.mount, &full, &to_vault_data(&value))
            .await
            .map(drop)
            .map_err(|e| map_error("write", &full, &e))
    }

    /// `cas=0` makes Vault write only if the key has no versions at all. [`Self::delete`]
    /// removes metadata, so a deleted path counts as absent again.
    async fn put_if_absent(&self, path: &str, value: SecretMap) -> Result<bool, SecretError> {
        let full = self.vault_path(path)?;
        let written = vaultrs::kv2::set_with_options(
            &self.client,
            &self.mount,
            &full,
            &to_vault_data(&value),
            SetSecretRequestOptions { cas: 0 },
        )
        .await;
        match written {
            Ok(_) => Ok(true),
            Err(e) if is_cas_mismatch(&e) => Ok(false),
            Err(e) => Err(map_error("write", &full, &e)),
        }
    }

    async fn delete(&self, path: &str) -> Result<(), SecretError> {
        let full = self.vault_path(path)?;
        match vaultrs::kv2::delete_metadata(&self.client, &self.mount, &full).await {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(e) => Err(map_error("delete", &full, &e)),
        }
    }

    async fn health(&self) -> Result<(), SecretError> {
        match vaultrs::sys::health(&self.client).await {
            Ok(_) => Ok(()),
            // Standby and performance-standby nodes forward requests, so they serve.
            Err(e) if matches!(status_of(&e), Some(429 | 473)) => Ok(()),
            Err(e) => Err(match map_error("health", "sys/health", &e) {
                // Sealed (503) or uninitialized (501) are outages, not request errors.
                SecretError::Rejected(msg) => SecretError::Unavailable(msg),
                other => other,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16, errors: &[&str]) -> ClientError {
        ClientError::APIError {
            code,
            errors: errors.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn paths_get_the_prefix() {
        assert_eq!(vault_path("", "devices/a").ok(), Some("devices/a".into()));
        assert_eq!(
            vault_path("homeport/", "devices/a").ok(),
            Some("homeport/devices/a".into())
        );
        assert!(vault_path("", "/devices/a").is_err());
        assert!(vault_path("", "devices/../x").is_err());
        assert!(validate_mount_and_prefix("secret", "").is_ok());
        assert!(validate_mount_and_prefix("kv", "a/b/").is_ok());
        assert!(validate_mount_and_prefix("", "").is_err());
        assert!(validate_mount_and_prefix("secret", "/x/").is_err());
    }

    #[test]
    fn config_and_address_checks() {
        let config = VaultConfig::new("http://127.0.0.1:8200", "root-token".into());
        assert_eq!(config.mount, "secret");
        assert!(!format!("{config:?}").contains("root-token"));
        let store = VaultStore::new(config).expect("client builds without contacting Vault");
        assert!(!format!("{store:?}").contains("root-token"));
        assert!(matches!(
            VaultStore::new(VaultConfig::new("not a url", "t".into())),
            Err(SecretError::Config(_))
        ));
        assert!(matches!(
            VaultStore::new(VaultConfig::new("ftp://vault", "t".into())),
            Err(SecretError::Config(_))
        ));
    }

    #[test]
    fn error_mapping() {
        assert_eq!(status_of(&api(404, &[])), Some(404));
        let denied = map_error("read", "p", &api(403, &["permission denied"]));
        assert!(matches!(denied, SecretError::Denied(ref m) if m.contains("permission denied")));
        assert!(map_error("read", "p", &api(503, &["Vault is sealed"])).is_unavailable());
        assert!(map_error("read", "p", &api(500, &[])).is_unavailable());
        assert!(matches!(
            map_error("write", "p", &api(400, &["bad"])),
            SecretError::Rejected(_)
        ));
        assert!(matches!(
            map_error("read", "p", &ClientError::ResponseDataEmptyError),
            SecretError::Corrupt(_)
        ));
        let raw_404 = ClientError::RestClientError {
            source: rustify::errors::ClientError::ServerResponseError {
                code: 404,
                content: Some("not json".into()),
            },
        };
        assert_eq!(status_of(&raw_404), Some(404));
        let raw_502 = ClientError::RestClientError {
            source: rustify::errors::ClientError::ServerResponseError {
                code: 502,
                content: Some("secret body".into()),
            },
        };
        let e = map_error("read", "p", &raw_502);
        assert!(e.is_unavailable());
        assert!(!e.to_string().contains("secret body"), "{e}");
    }

    #[tokio::test]
    async fn unreachable_vault_is_unavailable_not_absent() {
        // A port that was just free is closed: the connection is refused at once. This
        // exercises the mapping of a real transport error without any Vault server.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut config = VaultConfig::new(format!("http://127.0.0.1:{port}"), "t".into());
        config.timeout = Duration::from_secs(2);
        let store = VaultStore::new(config).expect("client");
        let err = store.get("devices/a").await.expect_err("no vault");
        assert!(err.is_unavailable(), "{err}");
    }

    #[test]
    fn cas_mismatch_detection() {
        assert!(is_cas_mismatch(&api(
            400,
            &["check-and-set parameter did not match the current version"]
        )));
        assert!(!is_cas_mismatch(&api(400, &["other"])));
        assert!(!is_cas_mismatch(&api(500, &["check-and-set"])));
    }

    #[test]
    fn only_string_values_are_accepted() {
        let mut data = BTreeMap::new();
        data.insert("AMT_PASSWORD".to_owned(), serde_json::json!("pw"));
        let map = from_vault_data("p", data.clone()).expect("strings");
        assert_eq!(map["AMT_PASSWORD"].expose(), "pw");
        data.insert("n".to_owned(), serde_json::json!(5));
        let err = from_vault_data("p", data).expect_err("number");
        assert!(matches!(err, SecretError::Corrupt(_)));
        assert_eq!(to_vault_data(&map).get("AMT_PASSWORD"), Some(&"pw"));
    }
}
