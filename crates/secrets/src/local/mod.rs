//! The embedded default secret store: every secret in one AES-256-GCM encrypted file.
//!
//! Several processes may share the file (the all-in-one server and a simulator enrolling
//! devices), so:
//! - writers take a cross-process lock file ([`lock`]), re-read the file, change it, and
//!   replace it atomically (temp file, fsync, rename, fsync directory);
//! - readers keep the decrypted map in memory and re-read only when `stat` says the file was
//!   replaced (inode, size, mtime, ctime), which is cheap enough to do on every `get`.

mod format;
mod lock;

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Mutex;

use self::format::{io_error, Key, Plain};
use self::lock::FileLock;
use crate::{validate_path, SecretError, SecretMap, SecretStore};

/// Where the local store keeps its data and key, and how long writers wait for each other.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalFileConfig {
    /// The encrypted secrets file (created on first write, mode 0600).
    pub path: PathBuf,
    /// The key file: 64 hex digits (or 32 raw bytes). Created with mode 0600 on first use if
    /// absent, unless the secrets file already exists.
    pub key_path: PathBuf,
    /// How long a writer waits for another process's lock before giving up (`Unavailable`).
    pub lock_timeout: Duration,
    /// Age after which a lock file is taken to be left over by a crashed writer. Writes take
    /// milliseconds, so anything this old is not a live writer.
    pub stale_lock_after: Duration,
}

impl LocalFileConfig {
    /// Default lock wait; longer than [`Self::DEFAULT_STALE_LOCK_AFTER`] so a crashed
    /// writer's lock is cleared within one wait.
    pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(15);
    /// Default stale-lock age.
    pub const DEFAULT_STALE_LOCK_AFTER: Duration = Duration::from_secs(10);

    /// A config with default lock timings.
    pub fn new(path: impl Into<PathBuf>, key_path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            key_path: key_path.into(),
            lock_timeout: Self::DEFAULT_LOCK_TIMEOUT,
            stale_lock_after: Self::DEFAULT_STALE_LOCK_AFTER,
        }
    }
}

/// Identifies one version of the file. Every write renames a new inode into place, so the
/// inode alone nearly always changes; size and times cover inode reuse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// What the file held when last read: `stamp` is `None` when the file did not exist.
/// No `Debug`: the entries are plaintext secrets.
#[derive(Clone)]
struct Snapshot {
    stamp: Option<Stamp>,
    entries: Arc<Plain>,
}

struct Inner {
    config: LocalFileConfig,
    lock_path: PathBuf,
    key: Arc<Key>,
    /// Serializes this process's readers and writers and holds the cache.
    cache: Mutex<Option<Snapshot>>,
}

/// The local encrypted-file [`SecretStore`]. Cheap to clone; clones share the cache.
#[derive(Clone)]
pub struct LocalFileStore {
    inner: Arc<Inner>,
}

// By hand, because the cache holds decrypted secrets.
impl std::fmt::Debug for LocalFileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalFileStore")
            .field("path", &self.inner.config.path)
            .field("key_path", &self.inner.config.key_path)
            .finish_non_exhaustive()
    }
}

impl LocalFileStore {
    /// Opens the store: loads the key (creating it if this is the first run) and checks that
    /// the existing secrets file, if any, decrypts with it.
    pub async fn open(config: LocalFileConfig) -> Result<Self, SecretError> {
        if config.path.file_name().is_none() {
            return Err(SecretError::Config(format!(
                "secrets file path {} has no file name",
                config.path.display()
            )));
        }
        let key = {
            let (key_path, data_path) = (config.key_path.clone(), config.path.clone());
            blocking(move || format::load_or_create_key(&key_path, &data_path)).await?
        };
        let mut lock_name = config.path.file_name().unwrap_or_default().to_owned();
        lock_name.push(".lock");
        let store = Self {
            inner: Arc::new(Inner {
                lock_path: config.path.with_file_name(lock_name),
                config,
                key: Arc::new(key),
                cache: Mutex::new(None),
            }),
        };
        // Fail at start, not at the first device login, when the key does not fit the file.
        store.snapshot().await?;
        Ok(store)
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &LocalFileConfig {
        &self.inner.config
    }

    /// The current contents, re-read only if the file changed since the cached read.
    async fn snapshot(&self) -> Result<Arc<Plain>, SecretError> {
        let mut cache = self.inner.cache.lock().await;
        if let Some(cached) = cache.as_ref() {
            // The common case, checked inline: a `stat` of a local file takes microseconds,
            // where a hop through the blocking pool cost two thread switches per read (one
            // per device login on the ingress).
            if cached.stamp == stat(&self.inner.config.path)? {
                return Ok(cached.entries.clone());
            }
        }
        let snapshot = self.refresh(cache.take()).await?;
        let entries = snapshot.entries.clone();
        *cache = Some(snapshot);
        Ok(entries)
    }

    async fn refresh(&self, cached: Option<Snapshot>) -> Result<Snapshot, SecretError> {
        let path = self.inner.config.path.clone();
        let key = self.inner.key.clone();
        blocking(move || {
            let current = stat(&path)?;
            match cached {
                Some(c) if c.stamp == current => Ok(c),
                _ => read_snapshot(&path, &key),
            }
        })
        .await
    }

    /// Read-modify-write under both locks. `change` returns whether it changed anything (so
    /// no-op writes leave the file alone) and the caller's result.
    async fn modify<R, F>(&self, change: F) -> Result<R, SecretError>
    where
        F: FnOnce(&mut Plain) -> (bool, R) + Send + 'static,
        R: Send + 'static,
    {
        let mut cache = self.inner.cache.lock().await;
        let _lock = FileLock::acquire(
            &self.inner.lock_path,
            self.inner.config.lock_timeout,
            self.inner.config.stale_lock_after,
        )
        .await?;
        // Under the file lock nobody else writes, so this snapshot is the latest version.
        let snapshot = self.refresh(cache.take()).await?;
        let path = self.inner.config.path.clone();
        let key = self.inner.key.clone();
        let (snapshot, result) = blocking(move || {
            let mut entries = Arc::unwrap_or_clone(snapshot.entries);
            let (changed, result) = change(&mut entries);
            if !changed {
                let unchanged = Snapshot {
                    stamp: snapshot.stamp,
                    entries: Arc::new(entries),
                };
                return Ok((unchanged, result));
            }
            let stamp = write_atomic(&path, &key, &entries)?;
            let written = Snapshot {
                stamp: Some(stamp),
                entries: Arc::new(entries),
            };
            Ok((written, result))
        })
        .await?;
        *cache = Some(snapshot);
        Ok(result)
    }
}

fn to_secret_map(values: &std::collections::BTreeMap<String, String>) -> SecretMap {
    values
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().into()))
        .collect()
}

fn to_plain(value: SecretMap) -> std::collections::BTreeMap<String, String> {
    value
        .into_iter()
        .map(|(k, v)| (k, v.expose().to_owned()))
        .collect()
}

#[async_trait]
impl SecretStore for LocalFileStore {
    async fn get(&self, path: &str) -> Result<Option<SecretMap>, SecretError> {
        validate_path(path)?;
        Ok(self.snapshot().await?.get(path).map(to_secret_map))
    }

    async fn put(&self, path: &str, value: SecretMap) -> Result<(), SecretError> {
        validate_path(path)?;
        let (path, value) = (path.to_owned(), to_plain(value));
        self.modify(move |entries| {
            let changed = entries.get(&path) != Some(&value);
            entries.insert(path, value);
            (changed, ())
        })
        .await
    }

    async fn put_if_absent(&self, path: &str, value: SecretMap) -> Result<bool, SecretError> {
        validate_path(path)?;
        let (path, value) = (path.to_owned(), to_plain(value));
        self.modify(move |entries| {
            if entries.contains_key(&path) {
                return (false, false);
            }
            entries.insert(path, value);
            (true, true)
        })
        .await
    }

    async fn delete(&self, path: &str) -> Result<(), SecretError> {
        validate_path(path)?;
        let path = path.to_owned();
        self.modify(move |entries| (entries.remove(&path).is_some(), ()))
            .await
    }

    async fn put_many(&self, items: Vec<(String, SecretMap)>) -> Result<(), SecretError> {
        let mut plain = Vec::with_capacity(items.len());
        for (path, value) in items {
            validate_path(&path)?;
            plain.push((path, to_plain(value)));
        }
        self.modify(move |entries| {
            let mut changed = false;
            for (path, value) in plain {
                changed |= entries.get(&path) != Some(&value);
                entries.insert(path, value);
            }
            (changed, ())
        })
        .await
    }

    async fn health(&self) -> Result<(), SecretError> {
        self.snapshot().await.map(drop)
    }
}

/// Runs file work off the async workers: decrypting a store of 50,000 devices takes tens of
/// milliseconds.
async fn blocking<T, F>(f: F) -> Result<T, SecretError>
where
    F: FnOnce() -> Result<T, SecretError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SecretError::Unavailable(format!("secret store task failed: {e}")))?
}

fn stat(path: &Path) -> Result<Option<Stamp>, SecretError> {
    match fs::metadata(path) {
        Ok(meta) => Ok(Some(Stamp::of(&meta))),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error("cannot stat secrets file", path, &e)),
    }
}

fn read_snapshot(path: &Path, key: &Key) -> Result<Snapshot, SecretError> {
    let mut file = match fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Ok(Snapshot {
                stamp: None,
                entries: Arc::default(),
            })
        }
        Err(e) => return Err(io_error("cannot open secrets file", path, &e)),
    };
    // The stamp comes from the open handle, so it describes exactly the bytes read even if
    // the path is replaced meanwhile.
    let meta = file
        .metadata()
        .map_err(|e| io_error("cannot stat secrets file", path, &e))?;
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or_default());
    file.read_to_end(&mut bytes)
        .map_err(|e| io_error("cannot read secrets file", path, &e))?;
    let entries = format::open(key, &bytes, path)?;
    Ok(Snapshot {
        stamp: Some(Stamp::of(&meta)),
        entries: Arc::new(entries),
    })
}

/// Replaces the file so that readers see either the old or the new version, never a mix, and
/// the new version survives a crash once this returns.
fn write_atomic(path: &Path, key: &Key, entries: &Plain) -> Result<Stamp, SecretError> {
    let bytes = format::seal(key, entries)?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| io_error("cannot create directory", dir, &e))?;
    let tmp = sibling_temp_path(path);
    let written = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io_error("cannot create temp file", &tmp, &e))?;
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| io_error("cannot write temp file", &tmp, &e))?;
        fs::rename(&tmp, path).map_err(|e| io_error("cannot replace secrets file", path, &e))
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    // Make the rename itself durable.
    if let Err(e) = fs::File::open(dir).and_then(|d| d.sync_all()) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot fsync secrets directory");
    }
    stat(path)?.ok_or_else(|| {
        SecretError::Unavailable(format!("{} vanished after writing", path.display()))
    })
}

/// A unique temp file name next to `path` (same directory, so the rename is atomic).
fn sibling_temp_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(format!(
        ".tmp.{}.{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    path.with_file_name(name)
}

#[cfg(test)]
pub(crate) mod tests;
