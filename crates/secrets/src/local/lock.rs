//! A cross-process writer lock for the secrets file, without `flock`.
//!
//! `flock` needs libc and `unsafe`, which the workspace denies, so the lock is a file created
//! with `create_new` (atomic on local filesystems) holding the writer's pid and a random
//! token. A crashed writer leaves the file behind: a lock older than the stale limit whose pid
//! is no longer running is removed (one older than `FORCE_AFTER_STALE` times the limit is
//! removed whatever its pid says, since pids are reused). A slow but live writer keeps its
//! lock, and a holder only ever deletes the lock file that still carries its own token, so it
//! never removes another writer's lock. Every write is a whole-file replace, so no file is
//! ever half written.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::AsyncWriteExt;

use super::format::io_error;
use crate::SecretError;

/// First wait between attempts; doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(2);
const MAX_BACKOFF: Duration = Duration::from_millis(50);
/// A lock this many stale limits old is removed even if its pid runs (a reused pid).
const FORCE_AFTER_STALE: u32 = 10;

/// Held while a process rewrites the secrets file; removes the lock file when dropped.
#[derive(Debug)]
pub(super) struct FileLock {
    path: PathBuf,
    /// What this holder wrote into the lock file.
    token: String,
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
                    let mut nonce = [0u8; 8];
                    let _ = openssl::rand::rand_bytes(&mut nonce);
                    let token = format!(
                        "{} {:016x} {}\n",
                        std::process::id(),
                        u64::from_le_bytes(nonce),
                        host_name()
                    );
                    file.write_all(token.as_bytes())
                        .await
                        .map_err(|e| io_error("cannot write lock file", path, &e))?;
                    let _ = file.flush().await;
                    return Ok(FileLock {
                        path: path.to_owned(),
                        token,
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
    let content = tokio::fs::read_to_string(path).await.unwrap_or_default();
    let mut fields = content.split_whitespace();
    let holder = fields.next().and_then(|p| p.parse::<u32>().ok());
    // A holder on another host (a container sharing the volume, with its own pids) cannot be
    // checked here: taken for alive until the forced limit.
    let elsewhere = fields.nth(1).is_some_and(|h| h != host_name());
    let running =
        elsewhere || holder.is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
    if running && age < stale_after * FORCE_AFTER_STALE {
        // A slow writer, not a crashed one: wait for it.
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

/// This host's name (a container's own), as the kernel has it.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // Only our own lock: if it was judged stale and taken over, the file is another
        // writer's now. Blocking file calls of microseconds; in Drop so every path releases.
        match std::fs::read_to_string(&self.path) {
            Ok(t) if t == self.token => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot remove secrets lock file");
                }
            }
            Ok(_) => {
                tracing::warn!(path = %self.path.display(), "secrets lock was taken over; left to its new holder")
            }
            Err(_) => {}
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
        // A live holder (this process) keeps its lock past the stale limit (until ten times it).
        let waited =
            FileLock::acquire(&path, Duration::from_millis(60), Duration::from_millis(20)).await;
        assert!(matches!(waited, Err(SecretError::Unavailable(_))));
        // A crashed holder (a pid that is not running) loses it.
        std::mem::forget(held);
        std::fs::write(&path, "4294967295 dead\n").unwrap();
        let taken = FileLock::acquire(&path, long, Duration::ZERO)
            .await
            .expect("taken over");
        // The old holder's release leaves the new holder's lock alone.
        let old = FileLock {
            path: path.clone(),
            token: "4294967295 dead\n".into(),
        };
        drop(old);
        assert!(path.exists(), "the new holder's lock is still there");
        drop(taken);
        assert!(!path.exists());
        // A holder on another host (another container's pid namespace) is not judged by pid.
        std::fs::write(&path, "4294967295 other other-host\n").unwrap();
        let waited =
            FileLock::acquire(&path, Duration::from_millis(60), Duration::from_millis(20)).await;
        assert!(matches!(waited, Err(SecretError::Unavailable(_))));
        std::fs::remove_file(&path).unwrap();
    }
}
