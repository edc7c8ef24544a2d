//! An in-memory secret store for tests and throwaway runs; nothing is persisted.

use std::collections::BTreeMap;

use async_trait::async_trait;
use tokio::sync::Mutex;

use crate::{validate_path, SecretError, SecretMap, SecretStore};

/// Secrets in a map behind a mutex. Same path rules and semantics as the real stores.
#[derive(Debug, Default)]
pub struct MemoryStore {
    entries: Mutex<BTreeMap<String, SecretMap>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl SecretStore for MemoryStore {
    async fn get(&self, path: &str) -> Result<Option<SecretMap>, SecretError> {
        validate_path(path)?;
        Ok(self.entries.lock().await.get(path).cloned())
    }

    async fn put(&self, path: &str, value: SecretMap) -> Result<(), SecretError> {
        validate_path(path)?;
        self.entries.lock().await.insert(path.to_owned(), value);
        Ok(())
    }

    async fn put_if_absent(&self, path: &str, value: SecretMap) -> Result<bool, SecretError> {
        validate_path(path)?;
        let mut entries = self.entries.lock().await;
        if entries.contains_key(path) {
            return Ok(false);
        }
        entries.insert(path.to_owned(), value);
        Ok(true)
    }

    async fn delete(&self, path: &str) -> Result<(), SecretError> {
        validate_path(path)?;
        self.entries.lock().await.remove(path);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn semantics() {
        let store = MemoryStore::new();
        let mut v = SecretMap::new();
        v.insert("k".into(), "v".into());
        assert!(store.put_if_absent("a", v.clone()).await.expect("put"));
        assert!(!store
            .put_if_absent("a", SecretMap::new())
            .await
            .expect("put"));
        assert_eq!(store.get("a").await.expect("get"), Some(v));
        store.delete("a").await.expect("delete");
        store.delete("a").await.expect("delete twice");
        assert_eq!(store.get("a").await.expect("get"), None);
        assert!(store.get("/a").await.is_err());
    }
}
