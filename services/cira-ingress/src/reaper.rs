//! Presence of nodes that died without draining: every node watches the others' heartbeats,
//! and the presence entries of a node whose heartbeat stopped are removed, with one
//! `disconnected` (reason `node-lost`) per device, by exactly one surviving node.
//!
//! A node is dead when its heartbeat's revision has not changed for `DEAD_AFTER` of this
//! node's ticks (two per heartbeat interval), or its heartbeat is gone (expired or deleted).
//! Revisions, not timestamps, so clocks between hosts do not matter. The node that creates the
//! key `reaped.<node>` in the nodes bucket first does the work (a KV create succeeds once; the
//! key expires with the bucket's TTL). Deleting presence uses the entry's revision, so a device
//! that already reconnected elsewhere keeps its new entry. A node that finds its own
//! `reaped.` key (it was cut off, not dead) disconnects its devices so they reconnect and are
//! recorded again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use futures_util::StreamExt;
use homeport_contracts::events;
use homeport_contracts::presence::Presence;
use homeport_contracts::proto;
use tokio_util::sync::CancellationToken;

use crate::Shared;

/// Whole seconds since an RFC 3339 time (0 when it does not parse).
pub(crate) fn seconds_since(rfc3339: &str) -> u64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .ok()
        .and_then(|t| (chrono::Utc::now() - t.to_utc()).to_std().ok())
        .map_or(0, |d| d.as_secs())
}

/// Ticks without a new heartbeat revision after which a node is dead: with two ticks per
/// heartbeat interval, 2.5 intervals of silence (a live node's late beat is tolerated), and
/// its devices are reaped about three intervals after its last beat.
const DEAD_AFTER: u32 = 5;
/// Ticks between full scans of presence for entries of nodes nobody saw die (a node that died
/// while no other was running).
const FULL_SCAN_EVERY: u32 = 120;
const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for the next entry of a presence scan.
const SCAN_STEP_TIMEOUT: Duration = Duration::from_secs(10);

const REAPED_PREFIX: &str = "reaped.";

/// How long a node may go without a heartbeat before the others declare it lost (with
/// heartbeats every `every`).
pub(crate) fn dead_after(every: Duration) -> Duration {
    every / 2 * DEAD_AFTER
}

pub(crate) fn reaped_key(node: &str) -> String {
    format!("{REAPED_PREFIX}{node}")
}

/// Runs until `stop`, two ticks per heartbeat interval `every`.
pub(crate) async fn run(
    shared: Arc<Shared>,
    nodes: kv::Store,
    every: Duration,
    stop: CancellationToken,
) {
    let mut seen: HashMap<String, (u64, u32)> = HashMap::new();
    let mut tick = tokio::time::interval(every / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks = 0u32;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(alive) = heartbeats(&nodes, &shared.node_id).await else {
            continue;
        };
        // Each with the heartbeat revision it was last seen at (None: no heartbeat).
        let mut dead: Vec<(String, Option<u64>)> = Vec::new();
        seen.retain(|node, (revision, still)| match alive.get(node) {
            Some(&now) if now != *revision => {
                *revision = now;
                *still = 0;
                true
            }
            Some(_) => {
                *still += 1;
                if *still >= DEAD_AFTER {
                    dead.push((node.clone(), Some(*revision)));
                    false
                } else {
                    true
                }
            }
            None => {
                dead.push((node.clone(), None));
                false
            }
        });
        for (node, &revision) in &alive {
            seen.entry(node.clone()).or_insert((revision, 0));
        }
        if ticks.is_multiple_of(FULL_SCAN_EVERY) {
            // Entries of nodes that are neither alive nor this one.
            if let Some(orphans) = orphan_nodes(&shared, &alive).await {
                for node in orphans {
                    if !dead.iter().any(|(n, _)| *n == node) {
                        dead.push((node, None));
                    }
                }
            }
        }
        ticks = ticks.wrapping_add(1);
        for (node, last) in dead {
            reap(&shared, &nodes, &node, last).await;
        }
    }
}

/// The other nodes' heartbeat revisions, or `None` when NATS did not answer.
async fn heartbeats(nodes: &kv::Store, me: &str) -> Option<HashMap<String, u64>> {
    let keys: Vec<String> = tokio::time::timeout(OP_TIMEOUT, async {
        let keys = nodes.keys().await.ok()?;
        Some(keys.filter_map(|k| async move { k.ok() }).collect().await)
    })
    .await
    .ok()??;
    let mut alive = HashMap::new();
    for key in keys {
        if key == me || key.starts_with(REAPED_PREFIX) {
            continue;
        }
        match tokio::time::timeout(OP_TIMEOUT, nodes.entry(key.as_str())).await {
            Ok(Ok(Some(e))) if e.operation == kv::Operation::Put => {
                alive.insert(key, e.revision);
            }
            Ok(Ok(_)) => {}
            _ => return None,
        }
    }
    Some(alive)
}

/// Every presence entry (Put) with its revision, or `None` when the scan did not complete.
async fn presence_entries(shared: &Shared) -> Option<Vec<(String, u64, Presence)>> {
    // Fresh stream state (the KV handle's own status is what it saw when opened).
    let mut stream = shared.presence.stream.clone();
    let values = tokio::time::timeout(OP_TIMEOUT, stream.info())
        .await
        .ok()?
        .ok()?
        .state
        .messages;
    let mut found = Vec::new();
    if values == 0 {
        return Some(found);
    }
    let mut watch = tokio::time::timeout(OP_TIMEOUT, shared.presence.watch_with_history(">"))
        .await
        .ok()?
        .ok()?;
    loop {
        let entry = tokio::time::timeout(SCAN_STEP_TIMEOUT, watch.next())
            .await
            .ok()??
            .ok()?;
        if let Some(p) = Presence::from_entry(&entry) {
            found.push((entry.key.clone(), entry.revision, p));
        }
        // The last entry of the snapshot has nothing pending behind it.
        if entry.delta == 0 {
            return Some(found);
        }
    }
}

/// Nodes named in presence that have no heartbeat (and are not this node).
async fn orphan_nodes(shared: &Shared, alive: &HashMap<String, u64>) -> Option<Vec<String>> {
    let mut orphans: Vec<String> = presence_entries(shared)
        .await?
        .into_iter()
        .map(|(_, _, p)| p.node)
        .filter(|n| *n != shared.node_id && !alive.contains_key(n))
        .collect();
    orphans.sort();
    orphans.dedup();
    Some(orphans)
}

/// Removes `node`'s presence entries and publishes their `disconnected`, unless another node
/// already took the job or the node turns out to be alive (its heartbeat is not the one last
/// seen, `last`).
async fn reap(shared: &Shared, nodes: &kv::Store, node: &str, last: Option<u64>) {
    let claimed = tokio::time::timeout(
        OP_TIMEOUT,
        nodes.create(reaped_key(node), shared.node_id.clone().into()),
    )
    .await;
    match claimed {
        Ok(Ok(_)) => {}
        Ok(Err(e)) if e.kind() == kv::CreateErrorKind::AlreadyExists => return,
        Ok(Err(e)) => {
            tracing::warn!(node, error = %e, "could not claim a dead node's presence");
            return;
        }
        Err(_) => return,
    }
    // The claim is ours; a node that beat (or started) since it was judged is not dead.
    let current = match tokio::time::timeout(OP_TIMEOUT, nodes.entry(node)).await {
        Ok(Ok(Some(e))) if e.operation == kv::Operation::Put => Some(e.revision),
        Ok(Ok(_)) => None,
        _ => {
            let _ = nodes.delete(reaped_key(node)).await;
            return;
        }
    };
    if current.is_some() && current != last {
        let _ = nodes.delete(reaped_key(node)).await;
        return;
    }
    let Some(entries) = presence_entries(shared).await else {
        tracing::warn!(
            node,
            "presence scan failed; the dead node's entries stay for now"
        );
        // Let another tick (here or elsewhere) try again.
        let _ = nodes.delete(reaped_key(node)).await;
        return;
    };
    let mut removed = 0u64;
    for (guid, revision, p) in entries.into_iter().filter(|(_, _, p)| p.node == node) {
        let deleted = tokio::time::timeout(
            OP_TIMEOUT,
            shared
                .presence
                .delete_expect_revision(&guid, Some(revision)),
        )
        .await;
        if !matches!(deleted, Ok(Ok(()))) {
            // A newer session recorded the device meanwhile, or NATS failed: not ours to tell.
            continue;
        }
        removed += 1;
        let ev = events::disconnected(
            &p.tenant,
            &guid,
            &shared.source,
            proto::DeviceDisconnected {
                node: node.to_string(),
                session: p.session.clone(),
                reason: "node-lost".into(),
                detail: format!("ingress node {node} stopped sending heartbeats"),
                duration_seconds: seconds_since(&p.connected_at),
            },
        );
        let subject = shared.names.device_event(&p.tenant, &guid, "disconnected");
        if let Err(e) = shared.events.publish(subject, &ev) {
            tracing::error!(device = %guid, error = %e, "event not queued");
        }
    }
    shared.metrics.presence_reaped.add(removed);
    tracing::warn!(
        node,
        devices = removed,
        "ingress node lost; its devices' presence removed"
    );
}
