//! The secret store trait shared by every backend, and the path rules they all enforce.

use std::sync::Arc;

use async_trait::async_trait;

use crate::{SecretError, SecretMap};

/// A key/value secret store addressed by slash-separated paths (`devices/<guid>`).
///
/// Every method validates the path with [`validate_path`] first.
#[async_trait]
pub trait SecretStore: Send + Sync + 'static {
    /// Reads the secrets at `path`; `Ok(None)` when nothing is stored there.
    async fn get(&self, path: &str) -> Result<Option<SecretMap>, SecretError>;

    /// Replaces whatever is stored at `path` with `value`.
    async fn put(&self, path: &str, value: SecretMap) -> Result<(), SecretError>;

    /// Stores `value` only if nothing is stored at `path`; returns whether it was written.
    /// Atomic across processes and nodes, so two ingress nodes starting together never both
    /// generate and store TLS certificates.
    async fn put_if_absent(&self, path: &str, value: SecretMap) -> Result<bool, SecretError>;

    /// Removes everything stored at `path`; deleting an absent path succeeds.
    async fn delete(&self, path: &str) -> Result<(), SecretError>;

    /// Replaces several paths at once. Backends that rewrite a whole file override this to do
    /// one write, which matters when a simulator enrolls tens of thousands of devices.
    async fn put_many(&self, entries: Vec<(String, SecretMap)>) -> Result<(), SecretError> {
        for (path, value) in entries {
            self.put(&path, value).await?;
        }
        Ok(())
    }

    /// Checks that the backend is reachable and usable, for readiness probes.
    async fn health(&self) -> Result<(), SecretError> {
        Ok(())
    }
}

/// A shareable secret store, as services receive it.
pub type DynSecretStore = Arc<dyn SecretStore>;

/// Longest accepted path; Open AMT paths are far shorter, this only bounds garbage.
const MAX_PATH_LEN: usize = 512;

/// Checks that `path` is a relative, normalized, slash-separated path: non-empty segments, no
/// `.`/`..`, no control characters. Backends map paths onto files or URLs, so anything that
/// could escape or alias another path is refused.
pub fn validate_path(path: &str) -> Result<(), SecretError> {
    let invalid = |reason| {
        Err(SecretError::InvalidPath {
            path: path.to_owned(),
            reason,
        })
    };
    if path.is_empty() {
        return invalid("empty");
    }
    if path.len() > MAX_PATH_LEN {
        return invalid("too long");
    }
    if path.chars().any(|c| c.is_control()) {
        return invalid("contains control characters");
    }
    for segment in path.split('/') {
        match segment {
            "" => return invalid("empty segment (leading, trailing or double slash)"),
            "." | ".." => return invalid("relative segment"),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_rules() {
        assert!(validate_path("devices/abc").is_ok());
        assert!(validate_path("MPSCerts").is_ok());
        for bad in ["", "/devices/a", "devices/", "a//b", "a/../b", ".", "a\nb"] {
            assert!(
                matches!(validate_path(bad), Err(SecretError::InvalidPath { .. })),
                "{bad:?} accepted"
            );
        }
        assert!(validate_path(&"a".repeat(MAX_PATH_LEN + 1)).is_err());
    }
}
