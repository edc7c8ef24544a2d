//! Presence of devices and liveness of ingress nodes, kept in JetStream KV buckets.
//!
//! Invariant: steady-state liveness is O(nodes): a device writes its presence once per session,
//! a node writes one heartbeat per interval; keep-alives never touch NATS or the database.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use serde::{Deserialize, Serialize};

use crate::Names;

/// Value of `<p>_presence/<guid>`: which node holds the device's current CIRA session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    pub node: String,
    pub session: String,
    pub tenant: String,
    /// RFC 3339 UTC.
    pub connected_at: String,
    pub remote: String,
}

impl Presence {
    /// What a presence bucket entry records: `None` for a delete or purge marker, or a value
    /// that does not decode.
    pub fn from_entry(entry: &kv::Entry) -> Option<Presence> {
        (entry.operation == kv::Operation::Put)
            .then(|| serde_json::from_slice(&entry.value).ok())
            .flatten()
    }
}

/// Value of `<p>_nodes/<node id>`: a node's heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeHeartbeat {
    pub node: String,
    pub sessions: u64,
    /// RFC 3339 UTC.
    pub at: String,
    pub draining: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    #[error("JetStream KV bucket {bucket}: {message}")]
    Bucket { bucket: String, message: String },
}

/// Opens (creating if needed, on `replicas` servers of a cluster) the presence bucket.
pub async fn presence_bucket(
    js: &jetstream::Context,
    names: &Names,
    replicas: usize,
) -> Result<kv::Store, PresenceError> {
    open_bucket(js, names.presence_bucket(), Duration::ZERO, replicas).await
}

/// Opens (creating if needed) the node heartbeat bucket; entries expire after `ttl`, so a dead
/// node disappears and its presence entries can be recognised as stale.
pub async fn nodes_bucket(
    js: &jetstream::Context,
    names: &Names,
    ttl: Duration,
    replicas: usize,
) -> Result<kv::Store, PresenceError> {
    open_bucket(js, names.nodes_bucket(), ttl, replicas).await
}

async fn open_bucket(
    js: &jetstream::Context,
    bucket: String,
    max_age: Duration,
    replicas: usize,
) -> Result<kv::Store, PresenceError> {
    let err = |e: &dyn std::fmt::Display| PresenceError::Bucket {
        bucket: bucket.clone(),
        message: e.to_string(),
    };
    if let Ok(store) = js.get_key_value(&bucket).await {
        return Ok(store);
    }
    // The bucket's stream is created directly, with the layout the KV API expects: the
    // client's own create_key_value first reads account info in a shape NATS 2.9 (Debian's
    // package) does not send. Creating with an identical config is idempotent.
    js.get_or_create_stream(stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age,
        discard: stream::DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        num_replicas: replicas.max(1),
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|e| err(&e))?;
    js.get_key_value(&bucket).await.map_err(|e| err(&e))
}
