//! The durable consumer: pulls events from the stream, writes them to the database in batches
//! (idempotent on the event id), and acks only after the commit. Undecodable messages, and
//! events whose tenant is not their subject's, are terminated and counted; a database outage
//! pauses the worker, which retries the same batch with backoff and catches up when the
//! database returns. An event the database refuses for good (not an outage) is isolated by
//! splitting its batch, terminated and counted, so it never stalls the others.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, AckKind};
use chrono::{DateTime, TimeZone, Utc};
use futures_util::StreamExt;
use homeport_contracts::events::StreamLimits;
use homeport_contracts::{proto, Names};
use homeport_store::{AuditRecord, Store};
use prost::Message as _;
use tokio_util::sync::CancellationToken;

use crate::{AuditConfig, Metrics};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The record of one stream message, or `None` if it is not an event of the tenant its
/// subject names (a publisher must not file events under another tenant).
pub fn record_of(names: &Names, subject: &str, seq: u64, payload: &[u8]) -> Option<AuditRecord> {
    let ev = proto::Event::decode(payload).ok()?;
    if ev.id.is_empty() || ev.id.len() > 64 {
        return None;
    }
    if !names.event_subject_is_tenants(subject, &ev.tenant) {
        return None;
    }
    Some(AuditRecord {
        id: ev.id,
        stream_seq: i64::try_from(seq).ok()?,
        tenant: ev.tenant,
        device_guid: ev.device_guid,
        kind: ev.kind,
        subject: subject.to_string(),
        time_nanos: ev.time_unix_nanos,
        source: ev.source,
        actor: ev.actor,
        trace_id: ev.trace_id,
        payload: payload.to_vec(),
        stored_nanos: 0,
    })
}

/// A span for an event's persistence in the trace of the operation that caused it (events
/// carry its trace and span ids), when spans are exported.
fn stored_span(payload: &[u8]) {
    let Ok(ev) = proto::Event::decode(payload) else {
        return;
    };
    if ev.trace_id.is_empty() || ev.span_id.is_empty() {
        return;
    }
    let parent = format!("00-{}-{}-01", ev.trace_id, ev.span_id);
    homeport_telemetry::traces::TraceSpan::start(
        "audit.store",
        false,
        Some(&parent),
        vec![
            ("homeport.event", ev.id),
            ("homeport.event.kind", ev.kind),
            ("homeport.device", ev.device_guid),
        ],
    )
    .end(None);
}

/// Runs until `cancel`; reconnects to the consumer after NATS trouble.
pub async fn run(
    js: jetstream::Context,
    names: Names,
    store: Store,
    config: AuditConfig,
    limits: StreamLimits,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let mut backoff = BACKOFF_MIN;
    while !cancel.is_cancelled() {
        match consume(&js, &names, &store, &config, &limits, &metrics, &cancel).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "event consumer interrupted; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

async fn consume(
    js: &jetstream::Context,
    names: &Names,
    store: &Store,
    config: &AuditConfig,
    limits: &StreamLimits,
    metrics: &Metrics,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let consumer = homeport_contracts::events::durable_consumer(
        js,
        names,
        limits,
        &config.consumer,
        config.ack_wait(),
        i64::try_from(config.batch * 20).unwrap_or(20_000),
    )
    .await
    .map_err(anyhow::Error::msg)?;
    let messages = consumer
        .stream()
        .max_messages_per_batch(config.batch)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await?;
    // Whatever is ready, up to a batch: small batches when quiet (low lag), full ones under load.
    let mut batches = messages.ready_chunks(config.batch);
    let mut pending = Sessions::default();
    loop {
        let batch = tokio::select! {
            _ = cancel.cancelled() => {
                pending.flush(store, metrics).await;
                return Ok(());
            }
            b = batches.next() => b,
            // A quiet stream still gets its last sessions written.
            _ = tokio::time::sleep(SESSION_FLUSH), if !pending.is_empty() => {
                pending.flush(store, metrics).await;
                continue;
            }
        };
        let Some(batch) = batch else {
            anyhow::bail!("message stream ended");
        };
        let mut records = Vec::with_capacity(batch.len());
        let mut acks = Vec::with_capacity(batch.len());
        for m in batch {
            let m = m.map_err(|e| anyhow::anyhow!("{e}"))?;
            let seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
            match record_of(names, m.subject.as_str(), seq, &m.payload) {
                Some(r) => {
                    records.push(r);
                    acks.push(m);
                }
                None => {
                    metrics.poison.inc();
                    tracing::warn!(subject = %m.subject, seq, bytes = m.payload.len(), "not an event of its subject's tenant; terminated");
                    let _ = m.ack_with(AckKind::Term).await;
                }
            }
        }
        if records.is_empty() {
            continue;
        }
        let sessions = session_marks(&records);
        let span = homeport_telemetry::traces::TraceSpan::start(
            "audit.batch",
            false,
            None,
            vec![("homeport.events", records.len().to_string())],
        );
        let refused = write(store, records, metrics, cancel).await;
        let outcome = (!refused.is_empty()).then(|| format!("{} events refused", refused.len()));
        span.end(outcome.as_deref());
        if cancel.is_cancelled() {
            // Not acked: redelivered to whichever replica runs next.
            return Ok(());
        }
        pending.add(sessions);
        if pending.due() {
            pending.flush(store, metrics).await;
        }
        for (i, m) in acks.into_iter().enumerate() {
            if refused.contains(&i) {
                let _ = m.ack_with(AckKind::Term).await;
                continue;
            }
            if homeport_telemetry::traces::enabled() {
                stored_span(&m.payload);
            }
            if let Err(e) = m.ack().await {
                tracing::warn!(error = %e, "ack not sent; the event will be redelivered and skipped");
            }
        }
    }
}

/// Session starts and ends in a batch, from the ingress's `connected` and `disconnected`
/// device events: (guid, time) each. Times more than a minute ahead of this host's clock are
/// ignored (the columns only move forward, so a future time would stick).
fn session_marks(records: &[AuditRecord]) -> (Marks, Marks) {
    let horizon = now_nanos().saturating_add(60_000_000_000);
    let mut connects = Vec::new();
    let mut disconnects = Vec::new();
    for r in records {
        if r.time_nanos <= 0 || r.time_nanos > horizon || !r.subject.contains(".device.") {
            continue;
        }
        let list = match r.kind.as_str() {
            "connected" => &mut connects,
            "disconnected" => &mut disconnects,
            _ => continue,
        };
        list.push((r.device_guid.clone(), Utc.timestamp_nanos(r.time_nanos)));
    }
    (connects, disconnects)
}

/// (device guid, time) of session starts or ends.
type Marks = Vec<(String, DateTime<Utc>)>;

/// How often the devices' connection times are written (and at most how many devices wait).
const SESSION_FLUSH: Duration = Duration::from_secs(1);
const SESSION_MAX: usize = 10_000;

/// The devices' last connect and disconnect times waiting to be written: the latest per
/// device, written a statement per kind at most once a second (or when many wait), never per
/// keep-alive. Derived data: a replica that dies loses at most a second of them, and a
/// failed write is logged; the next event sets them again.
#[derive(Default)]
struct Sessions {
    connects: HashMap<String, DateTime<Utc>>,
    disconnects: HashMap<String, DateTime<Utc>>,
    since: Option<std::time::Instant>,
}

impl Sessions {
    fn add(&mut self, (connects, disconnects): (Marks, Marks)) {
        for (map, marks) in [
            (&mut self.connects, connects),
            (&mut self.disconnects, disconnects),
        ] {
            for (guid, at) in marks {
                let slot = map.entry(guid).or_insert(at);
                *slot = (*slot).max(at);
            }
        }
        if !self.is_empty() {
            self.since.get_or_insert_with(std::time::Instant::now);
        }
    }

    fn is_empty(&self) -> bool {
        self.connects.is_empty() && self.disconnects.is_empty()
    }

    fn due(&self) -> bool {
        self.connects.len() + self.disconnects.len() >= SESSION_MAX
            || self.since.is_some_and(|t| t.elapsed() >= SESSION_FLUSH)
    }

    async fn flush(&mut self, store: &Store, metrics: &Metrics) {
        self.since = None;
        for (connected, map) in [(true, &mut self.connects), (false, &mut self.disconnects)] {
            if map.is_empty() {
                continue;
            }
            let marks: Vec<(String, DateTime<Utc>)> = map.drain().collect();
            match store.record_sessions(connected, &marks).await {
                Ok(n) => metrics.sessions.add(n),
                Err(e) => {
                    metrics.db_errors.inc();
                    tracing::warn!(error = %e, devices = marks.len(), "device connection times not recorded");
                }
            }
        }
    }
}

/// How one attempt at a slice of a batch ended.
enum Written {
    Committed,
    /// The database refused it for a reason that retrying does not change.
    Refused(String),
    Cancelled,
}

/// Writes one batch; returns the indices of the events the database refused for good. A
/// refused slice is split in halves until the refused events are alone (about log2(batch)
/// extra statements per bad event); the others are committed.
async fn write(
    store: &Store,
    mut records: Vec<AuditRecord>,
    metrics: &Metrics,
    cancel: &CancellationToken,
) -> Vec<usize> {
    let mut refused = Vec::new();
    let mut slices = vec![(0, records.len())];
    while let Some((lo, hi)) = slices.pop() {
        let Some(slice) = records.get_mut(lo..hi) else {
            continue;
        };
        match write_slice(store, slice, metrics, cancel).await {
            Written::Committed => {}
            Written::Cancelled => return refused,
            Written::Refused(e) if hi - lo == 1 => {
                metrics.poison.inc();
                let r = &records[lo];
                tracing::warn!(id = %r.id, subject = %r.subject, error = %e, "the database refuses this event; terminated");
                refused.push(lo);
            }
            Written::Refused(_) => {
                let mid = lo + (hi - lo) / 2;
                slices.push((mid, hi));
                slices.push((lo, mid));
            }
        }
    }
    refused
}

/// Writes `records` in one transaction, retrying with backoff while the database fails for
/// any reason but refusing the data itself (outages, failovers, full disks, deadlocks), until
/// it commits, is refused, or the worker stops.
async fn write_slice(
    store: &Store,
    records: &mut [AuditRecord],
    metrics: &Metrics,
    cancel: &CancellationToken,
) -> Written {
    let mut backoff = BACKOFF_MIN;
    let mut failing = false;
    loop {
        let at = now_nanos();
        for r in records.iter_mut() {
            r.stored_nanos = at;
        }
        let n = records.len() as u64;
        let started = std::time::Instant::now();
        match store.insert_audit_events(records.to_vec()).await {
            Ok(new) => {
                // Publish-to-commit lag of each event (clocks of one host or NTP-synced ones).
                let committed = now_nanos();
                for r in records.iter() {
                    if r.time_nanos > 0 && committed >= r.time_nanos {
                        metrics.lag.observe(Duration::from_nanos(
                            u64::try_from(committed - r.time_nanos).unwrap_or(0),
                        ));
                    }
                }
                metrics.batch_write.observe(started.elapsed());
                metrics.stored.add(new);
                metrics.duplicates.add(n - new.min(n));
                metrics.batches.inc();
                if failing {
                    tracing::info!("database writable again; catching up");
                }
                metrics.db_down.set(0);
                return Written::Committed;
            }
            Err(e) if e.is_refused_data() => {
                metrics.db_errors.inc();
                return Written::Refused(e.to_string());
            }
            Err(e) => {
                metrics.db_errors.inc();
                metrics.db_down.set(1);
                if !failing {
                    tracing::warn!(error = %e, events = n, "events not stored; retrying until the database answers");
                    failing = true;
                }
                tokio::select! {
                    _ = cancel.cancelled() => return Written::Cancelled,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Deletes events older than the retention, a bounded chunk at a time, once an hour (any
/// replica may: deleting is idempotent).
pub async fn prune(store: Store, retention: Duration, cancel: CancellationToken) {
    const CHUNK: u64 = 10_000;
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let keep = i64::try_from(retention.as_nanos()).unwrap_or(i64::MAX);
        let before = now_nanos().saturating_sub(keep);
        let mut total = 0;
        loop {
            match store.prune_audit_events(before, CHUNK).await {
                Ok(n) => {
                    total += n;
                    if n < CHUNK || cancel.is_cancelled() {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "old audit events not pruned; trying again later");
                    break;
                }
            }
        }
        if total > 0 {
            tracing::info!(events = total, "audit events past the retention deleted");
        }
    }
}
