//! Fleet counts from presence: a KV watch keeps every connected device's tenant and node in
//! memory (tens of bytes each), so `GetFleetStats` counts fifty thousand devices in a
//! millisecond instead of reading the bucket per call.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::kv;
use futures_util::StreamExt as _;
use homeport_contracts::presence::Presence;
use tokio_util::sync::CancellationToken;

/// Who is connected where, as presence last said.
#[derive(Default)]
pub struct PresenceView {
    // guid → (tenant, node)
    entries: RwLock<HashMap<String, (String, String)>>,
    // False until the watch has delivered every stored entry once.
    loaded: std::sync::atomic::AtomicBool,
}

impl PresenceView {
    /// Connected devices of `tenant`, in total and per node (sorted by node).
    pub fn counts(&self, tenant: &str) -> (u64, Vec<(String, u64)>) {
        let mut nodes: HashMap<&str, u64> = HashMap::new();
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        for (t, node) in entries.values() {
            if t == tenant {
                *nodes.entry(node.as_str()).or_default() += 1;
            }
        }
        let total = nodes.values().sum();
        let mut nodes: Vec<(String, u64)> =
            nodes.into_iter().map(|(n, c)| (n.to_owned(), c)).collect();
        nodes.sort();
        (total, nodes)
    }

    pub fn loaded(&self) -> bool {
        self.loaded.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The replay is over: what it delivered replaces what was held.
    fn loaded_with(&self, fresh: HashMap<String, (String, String)>) {
        *self.entries.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        self.loaded
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn apply(&self, entry: &kv::Entry) {
        apply(
            &mut self.entries.write().unwrap_or_else(|e| e.into_inner()),
            entry,
        );
    }

    /// Follows the presence bucket until `stop`; a broken watch is opened again (with the
    /// whole history, replacing what was held) after a short pause.
    pub async fn follow(self: Arc<Self>, bucket: kv::Store, stop: CancellationToken) {
        loop {
            if let Err(e) = self.watch_once(&bucket, &stop).await {
                tracing::warn!(error = %e, "presence watch ended; reopening");
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    async fn watch_once(&self, bucket: &kv::Store, stop: &CancellationToken) -> anyhow::Result<()> {
        let mut watch = bucket.watch_with_history(">").await?;
        let mut fresh: HashMap<String, (String, String)> = HashMap::new();
        let mut replaying = true;
        // An empty bucket delivers nothing, so the replay also ends after a quiet moment.
        let mut quiet = Box::pin(tokio::time::sleep(Duration::from_millis(500)));
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = &mut quiet, if replaying => None,
                n = watch.next() => Some(n),
            };
            match next {
                None => {
                    replaying = false;
                    self.loaded_with(std::mem::take(&mut fresh));
                }
                Some(None) => anyhow::bail!("the watch closed"),
                Some(Some(entry)) => {
                    let entry = entry?;
                    if replaying {
                        apply(&mut fresh, &entry);
                        if entry.delta == 0 {
                            replaying = false;
                            self.loaded_with(std::mem::take(&mut fresh));
                        }
                    } else {
                        self.apply(&entry);
                    }
                }
            }
        }
    }
}

/// A put records the device's tenant and node; a delete or purge forgets it.
fn apply(entries: &mut HashMap<String, (String, String)>, entry: &kv::Entry) {
    match Presence::from_entry(entry) {
        Some(p) => {
            entries.insert(entry.key.clone(), (p.tenant, p.node));
        }
        None => {
            entries.remove(&entry.key);
        }
    }
}
