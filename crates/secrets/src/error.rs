//! The one error type of the secret stores.

/// Why a secret store operation failed. Messages name paths and causes, never secret values.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// The backend cannot be reached or did not answer (network, I/O, sealed Vault, lock
    /// timeout). Callers must NOT read this as "the secret does not exist": doing so would, for
    /// example, make an ingress generate fresh TLS keys or refuse every device while Vault
    /// restarts.
    #[error("secret store unavailable: {0}")]
    Unavailable(String),
    /// Stored data cannot be decrypted or parsed (wrong key, tampered or truncated file,
    /// unexpected response shape). Never repaired automatically.
    #[error("secret store data is corrupt or unreadable: {0}")]
    Corrupt(String),
    /// The backend refused the caller (Vault 401/403, file permissions).
    #[error("access to secret store denied: {0}")]
    Denied(String),
    /// The backend rejected the request for another reason.
    #[error("secret store rejected the request: {0}")]
    Rejected(String),
    /// The path is not acceptable (empty, absolute, `..` segments, ...).
    #[error("invalid secret path {path:?}: {reason}")]
    InvalidPath {
        /// The offending path (paths are not secret).
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The store's configuration is unusable.
    #[error("invalid secret store configuration: {0}")]
    Config(String),
}

impl SecretError {
    /// True when the backend could not be reached: retry later, do not treat as absent.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, SecretError::Unavailable(_))
    }
}
