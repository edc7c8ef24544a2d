//! Tests of the local store against the real filesystem.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::*;

/// A unique directory under the system temp dir, removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(label: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let dir = std::env::temp_dir().join(format!(
            "homeport-secrets-{label}-{}-{nanos}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    fn config(&self) -> LocalFileConfig {
        LocalFileConfig::new(self.0.join("secrets.bin"), self.0.join("secrets.key"))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn map(pairs: &[(&str, &str)]) -> SecretMap {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).into()))
        .collect()
}

async fn open(config: &LocalFileConfig) -> LocalFileStore {
    LocalFileStore::open(config.clone()).await.expect("open")
}

#[tokio::test]
async fn round_trip() {
    let dir = TempDir::new("roundtrip");
    let store = open(&dir.config()).await;
    assert_eq!(store.get("devices/a").await.expect("get"), None);
    // Opening alone writes no secrets file; the key is created at once.
    assert!(!dir.config().path.exists());
    assert!(dir.config().key_path.exists());

    let value = map(&[("AMT_PASSWORD", "amt-pw"), ("MPS_PASSWORD", "mps-pw")]);
    store.put("devices/a", value.clone()).await.expect("put");
    assert_eq!(store.get("devices/a").await.expect("get"), Some(value));
    store
        .put("devices/a", map(&[("AMT_PASSWORD", "new")]))
        .await
        .expect("replace");
    let got = store.get("devices/a").await.expect("get").expect("present");
    assert_eq!(got.len(), 1);
    assert_eq!(got["AMT_PASSWORD"].expose(), "new");

    store.delete("devices/a").await.expect("delete");
    store.delete("devices/a").await.expect("delete absent");
    assert_eq!(store.get("devices/a").await.expect("get"), None);
    assert!(matches!(
        store.get("../etc").await,
        Err(SecretError::InvalidPath { .. })
    ));
}

#[tokio::test]
async fn persists_across_instances() {
    let dir = TempDir::new("persist");
    let store = open(&dir.config()).await;
    store
        .put("devices/a", map(&[("k", "v")]))
        .await
        .expect("put");
    drop(store);
    let reopened = open(&dir.config()).await;
    assert_eq!(
        reopened.get("devices/a").await.expect("get"),
        Some(map(&[("k", "v")]))
    );
    // The plaintext is not in the file.
    let raw = fs::read(&dir.config().path).expect("read");
    assert!(!raw.windows(2).any(|w| w == b"k\""));
    assert!(!String::from_utf8_lossy(&raw).contains("devices/a"));
}

#[tokio::test]
async fn put_if_absent_writes_once() {
    let dir = TempDir::new("cas");
    let store = open(&dir.config()).await;
    let other = open(&dir.config()).await;
    assert!(store
        .put_if_absent("MPSCerts", map(&[("cert", "one")]))
        .await
        .expect("first"));
    assert!(!other
        .put_if_absent("MPSCerts", map(&[("cert", "two")]))
        .await
        .expect("second"));
    assert_eq!(
        other.get("MPSCerts").await.expect("get"),
        Some(map(&[("cert", "one")]))
    );
}

#[tokio::test]
async fn wrong_key_is_corrupt_and_nothing_is_overwritten() {
    let dir = TempDir::new("wrongkey");
    let config = dir.config();
    open(&config)
        .await
        .put("devices/a", map(&[("k", "v")]))
        .await
        .expect("put");
    let before = fs::read(&config.path).expect("read");

    let other_key = dir.path().join("other.key");
    fs::write(&other_key, [7u8; 32]).expect("write key");
    let wrong = LocalFileConfig {
        key_path: other_key,
        ..config.clone()
    };
    let err = LocalFileStore::open(wrong).await.expect_err("wrong key");
    assert!(matches!(err, SecretError::Corrupt(_)), "{err}");
    assert!(err.to_string().contains("wrong key"), "{err}");
    assert_eq!(fs::read(&config.path).expect("read"), before);
}

#[tokio::test]
async fn missing_key_with_existing_file_is_refused() {
    let dir = TempDir::new("nokey");
    let config = dir.config();
    open(&config)
        .await
        .put("a", map(&[("k", "v")]))
        .await
        .expect("put");
    fs::remove_file(&config.key_path).expect("rm key");
    let err = LocalFileStore::open(config.clone())
        .await
        .expect_err("no key");
    assert!(matches!(err, SecretError::Corrupt(_)), "{err}");
    assert!(!config.key_path.exists(), "a new key must not be created");
}

#[tokio::test]
async fn truncated_or_tampered_file_is_corrupt() {
    let dir = TempDir::new("tamper");
    let config = dir.config();
    let store = open(&config).await;
    store.put("a", map(&[("k", "v")])).await.expect("put");
    let good = fs::read(&config.path).expect("read");

    let mut tampered = good.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x80;
    for bad in [good[..good.len() / 2].to_vec(), Vec::new(), tampered] {
        fs::write(&config.path, &bad).expect("write");
        // The running instance notices the replaced file and refuses it too.
        let err = store.get("a").await.expect_err("corrupt");
        assert!(matches!(err, SecretError::Corrupt(_)), "{err}");
        let err = store.put("b", map(&[("k", "v")])).await.expect_err("put");
        assert!(matches!(err, SecretError::Corrupt(_)), "{err}");
        assert_eq!(fs::read(&config.path).expect("read"), bad, "overwritten");
        let err = LocalFileStore::open(config.clone())
            .await
            .expect_err("open");
        assert!(matches!(err, SecretError::Corrupt(_)), "{err}");
    }
}

#[tokio::test]
async fn reader_sees_other_instance_writes() {
    let dir = TempDir::new("reload");
    let reader = open(&dir.config()).await;
    let writer = open(&dir.config()).await;
    assert_eq!(reader.get("devices/x").await.expect("get"), None);
    writer
        .put("devices/x", map(&[("k", "1")]))
        .await
        .expect("put");
    assert_eq!(
        reader.get("devices/x").await.expect("get"),
        Some(map(&[("k", "1")]))
    );
    writer
        .put("devices/x", map(&[("k", "2")]))
        .await
        .expect("put");
    assert_eq!(
        reader.get("devices/x").await.expect("get"),
        Some(map(&[("k", "2")]))
    );
    writer.delete("devices/x").await.expect("delete");
    assert_eq!(reader.get("devices/x").await.expect("get"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_in_separate_instances_lose_nothing() {
    let dir = TempDir::new("concurrent");
    // Separate instances share no in-process mutex, so only the lock file keeps them apart,
    // as it would for separate processes.
    let a = open(&dir.config()).await;
    let b = open(&dir.config()).await;
    let mut tasks = Vec::new();
    for (name, store) in [("a", a.clone()), ("b", b.clone())] {
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                store
                    .put(&format!("devices/{name}{i}"), map(&[("k", "v")]))
                    .await
                    .expect("put");
            }
        }));
    }
    for t in tasks {
        t.await.expect("join");
    }
    for name in ["a", "b"] {
        for i in 0..20 {
            assert!(
                a.get(&format!("devices/{name}{i}"))
                    .await
                    .expect("get")
                    .is_some(),
                "{name}{i} lost"
            );
        }
    }
    assert!(!a.inner.lock_path.exists(), "lock file left behind");
}

#[tokio::test]
async fn put_many_writes_everything() {
    let dir = TempDir::new("many");
    let store = open(&dir.config()).await;
    let items = (0..1000)
        .map(|i| (format!("devices/{i}"), map(&[("MPS_PASSWORD", "p")])))
        .collect();
    store.put_many(items).await.expect("put_many");
    let reopened = open(&dir.config()).await;
    assert!(reopened.get("devices/999").await.expect("get").is_some());
    let bad = vec![("/abs".to_owned(), SecretMap::new())];
    assert!(store.put_many(bad).await.is_err());
}

#[tokio::test]
async fn files_are_private() {
    let dir = TempDir::new("perms");
    let config = dir.config();
    let store = open(&config).await;
    store.put("a", map(&[("k", "v")])).await.expect("put");
    for path in [&config.path, &config.key_path] {
        let mode = fs::metadata(path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", path.display());
    }
    // Only the data file, key and nothing else (no temp or lock files) remain.
    let mut names: Vec<_> = fs::read_dir(dir.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["secrets.bin", "secrets.key"]);
}

#[tokio::test]
async fn nothing_secret_in_debug_output() {
    let dir = TempDir::new("debug");
    let store = open(&dir.config()).await;
    store
        .put("a", map(&[("AMT_PASSWORD", "hunter2")]))
        .await
        .expect("put");
    let got = store.get("a").await.expect("get");
    assert!(!format!("{got:?}").contains("hunter2"));
    assert!(format!("{got:?}").contains("***"));
    // The store's own Debug includes its cache: it must not leak either.
    let _ = store.get("a").await;
    let debug = format!("{store:?}");
    assert!(!debug.contains("hunter2"), "{debug}");
}
