//! A cross-process writer lock for the secrets file, without `flock`.
//!
//! `flock` needs libc and `unsafe`, which the workspace denies, so the lock is a file created
//! with `create_new` (atomic on local filesystems). A crashed writer leaves the file behind;
//! a lock older than the stale limit is removed. Removal is best effort: two waiters that both
//! judge the same lock stale at the same instant could let a third writer through, which needs
//! a writer to have hung for the whole stale limit first. Every write is a whole-file
//! replace, so even then no file is ever half written; at worst one update is lost.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::AsyncWriteExt;

use super::format::io_error;
use crate::SecretError;

/// First wait between attempts; doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(2);
const MAX_BACKOFF: Duration = Duration::from_millis(50);

/// Held while a process rewrites the secrets file; removes the lock file when dropped.
#[derive(Debug)]
pub(super) struct FileLock {
    path: PathBuf,
}

impl FileLock {
    /// Waits until the lock file can be created, up to `timeout`.
    pub(super) async fn acquire(
        path: &Path,
        timeout: Duration,
        stale_after: Duration,
    ) -> Result<FileLock, SecretError> {
        let started = Instant::now();
        let mut backoff = FIRST_BACKOFF;
        loop {
            let created = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .await;
            match created {
                Ok(mut file) => {
                    // The pid is only a hint for a human looking at a leftover lock.
                    let _ = file
                        .write_all(format!("{}\n", std::process::id()).as_bytes())
                        .await;
                    return Ok(FileLock {
                        path: path.to_owned(),
                    });
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    if remove_if_stale(path, stale_after).await {
                        continue;
                    }
                }
                Err(e) => return Err(io_error("cannot create lock file", path, &e)),
            }
            if started.elapsed() >= timeout {
                return Err(SecretError::Unavailable(format!(
                    "timed out after {timeout:?} waiting for lock file {}",
                    path.display()
                )));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// Removes the lock file if its last modification is older than `stale_after`; true if the
/// caller should retry at once.
async fn remove_if_stale(path: &Path, stale_after: Duration) -> bool {
    let Ok(meta) = tokio::fs::metadata(path).await else {
        // Gone already: the holder released it.
        return true;
    };
    let age = meta
        .modified()
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .unwrap_or_default();
    if age < stale_after {
        return false;
    }
    tracing::warn!(
        path = %path.display(),
        age_secs = age.as_secs(),
        "removing stale secrets lock file left by a crashed writer"
    );
    match tokio::fs::remove_file(path).await {
        Ok(()) => true,
        Err(e) => e.kind() == ErrorKind::NotFound,
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // A blocking unlink is microseconds; doing it in Drop means every error path releases.
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove secrets lock file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn exclusive_then_released_and_stale_removed() {
        let dir = crate::local::tests::TempDir::new("lock");
        let path = dir.path().join("s.lock");
        let long = Duration::from_secs(60);
        let held = FileLock::acquire(&path, long, long).await.expect("first");
        let second = FileLock::acquire(&path, Duration::from_millis(30), long).await;
        assert!(matches!(second, Err(SecretError::Unavailable(_))));
        drop(held);
        assert!(!path.exists());
        let held = FileLock::acquire(&path, long, long)
            .await
            .expect("after release");
        // Pretend the holder crashed: a zero stale limit lets the next writer take over.
        std::mem::forget(held);
        let taken = FileLock::acquire(&path, long, Duration::ZERO).await;
        assert!(taken.is_ok());
    }
}
