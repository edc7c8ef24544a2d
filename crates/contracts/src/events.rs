//! Fleet events: envelope helpers, the JetStream stream, and a publisher that does not lose events.
//!
//! Producers hand events to [`EventPublisher`], which publishes them to JetStream with the event
//! id as `Nats-Msg-Id` (so a retry is stored once) and waits for the stream's ack. While JetStream
//! is unavailable events wait in a bounded buffer and are retried with backoff.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, message::PublishMessage, stream};
use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{proto, Names};

/// Payload schema version of [`proto::Event`].
pub const EVENT_VERSION: u32 = 1;

/// A fresh event id: 128 random bits as 32 hex digits.
pub fn new_event_id() -> String {
    format!("{:032x}", fastrand::u128(..))
}

/// The id of the one `disconnected` event of `node`'s session `session`: the same whoever
/// publishes it (the session itself, a reaper, or the device's next session when the node is
/// gone), so the stream's duplicate window and the audit trail keep it once.
pub fn disconnected_event_id(node: &str, session: &str) -> String {
    // FNV-1a: stable across builds and machines (the ids must agree between nodes).
    let fnv = |bytes: &[u8]| {
        bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    let node_hash = fnv(format!("disconnected:{node}").as_bytes());
    if session.len() == 16 && session.bytes().all(|b| b.is_ascii_hexdigit()) {
        format!("{node_hash:016x}{}", session.to_ascii_lowercase())
    } else {
        format!("{node_hash:016x}{:016x}", fnv(session.as_bytes()))
    }
}

/// The `disconnected` event of a session, with its deterministic id.
pub fn disconnected(
    tenant: &str,
    guid: &str,
    source: &str,
    payload: proto::DeviceDisconnected,
) -> proto::Event {
    let mut ev = envelope(tenant, guid, "disconnected", source);
    ev.id = disconnected_event_id(&payload.node, &payload.session);
    ev.payload = Some(proto::event::Payload::DeviceDisconnected(payload));
    ev
}

pub fn now_unix_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// An envelope with id, time and identity filled in; the caller sets the payload.
pub fn envelope(tenant: &str, guid: &str, kind: &str, source: &str) -> proto::Event {
    proto::Event {
        id: new_event_id(),
        time_unix_nanos: now_unix_nanos(),
        tenant: tenant.to_string(),
        device_guid: guid.to_string(),
        kind: kind.to_string(),
        source: source.to_string(),
        actor: String::new(),
        version: EVENT_VERSION,
        trace_id: String::new(),
        span_id: String::new(),
        payload: None,
    }
}

/// A durable, explicitly acked pull consumer of every event, shared by all replicas that use
/// `name` (creating the stream with `limits` if needed). At most `max_ack_pending` events are
/// out for processing; one not acked within `ack_wait` is delivered again.
pub async fn durable_consumer(
    js: &jetstream::Context,
    names: &Names,
    limits: &StreamLimits,
    name: &str,
    ack_wait: Duration,
    max_ack_pending: i64,
) -> Result<jetstream::consumer::PullConsumer, String> {
    let stream = ensure_events_stream(js, names, limits).await?;
    stream
        .get_or_create_consumer(
            name,
            jetstream::consumer::pull::Config {
                durable_name: Some(name.to_string()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait,
                max_ack_pending,
                deliver_policy: jetstream::consumer::DeliverPolicy::All,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("consumer {name}: {e}"))
}

/// Limits of the events stream; configuration, not code.
#[derive(Clone, Debug)]
pub struct StreamLimits {
    pub max_age: Duration,
    pub max_bytes: i64,
    pub replicas: usize,
}

/// Default size limit of the events stream: a bound on what a flood can make NATS store
/// (the oldest events go first once it is reached).
pub const DEFAULT_EVENTS_MAX_BYTES: i64 = 1 << 30;

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(30 * 24 * 3600),
            max_bytes: DEFAULT_EVENTS_MAX_BYTES,
            replicas: 1,
        }
    }
}

/// Creates the events stream if it does not exist yet. An existing stream is used as it is,
/// even if its limits differ from `limits` (they were set when it was created, possibly by an
/// older version or another service; change them with the NATS tools).
pub async fn ensure_events_stream(
    js: &jetstream::Context,
    names: &Names,
    limits: &StreamLimits,
) -> Result<stream::Stream, String> {
    let name = names.events_stream();
    let created = js
        .get_or_create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![names.events_subjects()],
            max_age: limits.max_age,
            max_bytes: limits.max_bytes,
            num_replicas: limits.replicas,
            duplicate_window: Duration::from_secs(120),
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await;
    match created {
        Ok(stream) => Ok(stream),
        // "stream name already in use with a different configuration"
        Err(e) if e.to_string().contains("10058") => {
            tracing::info!(stream = %name, "events stream exists with other limits; keeping them");
            js.get_stream(&name)
                .await
                .map_err(|e| format!("events stream {name}: {e}"))
        }
        Err(e) => Err(format!("events stream {name}: {e}")),
    }
}

#[derive(Clone, Debug)]
pub struct PublisherConfig {
    /// Events waiting for JetStream, at most. When full, `publish` refuses and counts a drop.
    pub buffer: usize,
    /// Publishes awaiting their ack at once.
    pub max_in_flight: usize,
    pub max_backoff: Duration,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        Self {
            buffer: 200_000,
            max_in_flight: 512,
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// Counters a service exports as metrics.
#[derive(Debug, Default)]
pub struct PublisherStats {
    pub published: AtomicU64,
    pub pending: AtomicU64,
    pub retries: AtomicU64,
    pub dropped: AtomicU64,
}

/// Largest event published (the protobuf envelope). Events are small; a larger one would be
/// refused by NATS for good, so it is refused here, counted and never retried.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("event {1} is {0} bytes, over the {max} byte limit; dropped", max = MAX_EVENT_BYTES)]
    TooLarge(usize, String),
    #[error("event buffer full ({0} events waiting for JetStream); event {1} dropped")]
    BufferFull(usize, String),
    #[error("event publisher stopped; event {0} dropped")]
    Stopped(String),
}

struct Outgoing {
    subject: String,
    id: String,
    payload: Bytes,
}

/// Handle to the background publishing task. Cheap to clone.
#[derive(Clone)]
pub struct EventPublisher {
    tx: mpsc::Sender<Outgoing>,
    stats: Arc<PublisherStats>,
    buffer: usize,
}

impl EventPublisher {
    /// Starts the publishing task; it runs until `cancel` fires and the buffer is empty or
    /// `drain_timeout` has passed after cancellation.
    pub fn start(
        js: jetstream::Context,
        config: PublisherConfig,
        cancel: CancellationToken,
        drain_timeout: Duration,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(config.buffer.max(1));
        let stats = Arc::new(PublisherStats::default());
        let task = tokio::spawn(run(
            js,
            config.clone(),
            rx,
            stats.clone(),
            cancel,
            drain_timeout,
        ));
        (
            Self {
                tx,
                stats,
                buffer: config.buffer,
            },
            task,
        )
    }

    pub fn stats(&self) -> &Arc<PublisherStats> {
        &self.stats
    }

    /// Queues an event for publishing on `subject`. Never waits.
    pub fn publish(&self, subject: String, event: &proto::Event) -> Result<(), PublishError> {
        let len = event.encoded_len();
        if len > MAX_EVENT_BYTES {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return Err(PublishError::TooLarge(len, event.id.clone()));
        }
        let out = Outgoing {
            subject,
            id: event.id.clone(),
            payload: Bytes::from(event.encode_to_vec()),
        };
        match self.tx.try_send(out) {
            Ok(()) => {
                self.stats.pending.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(o)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                Err(PublishError::BufferFull(self.buffer, o.id))
            }
            Err(mpsc::error::TrySendError::Closed(o)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                Err(PublishError::Stopped(o.id))
            }
        }
    }

    /// Waits until every queued event is acknowledged, or `timeout` passes. True when empty.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.stats.pending.load(Ordering::Relaxed) > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }
}

async fn run(
    js: jetstream::Context,
    config: PublisherConfig,
    mut rx: mpsc::Receiver<Outgoing>,
    stats: Arc<PublisherStats>,
    cancel: CancellationToken,
    drain_timeout: Duration,
) {
    let mut in_flight = FuturesUnordered::new();
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    let mut rx_open = true;
    loop {
        if drain_deadline.is_none() && cancel.is_cancelled() {
            drain_deadline = Some(tokio::time::Instant::now() + drain_timeout);
        }
        if let Some(deadline) = drain_deadline {
            if tokio::time::Instant::now() >= deadline {
                let left = stats.pending.load(Ordering::Relaxed);
                if left > 0 {
                    tracing::error!(
                        events = left,
                        "event publisher stopped with unpublished events"
                    );
                }
                return;
            }
        }
        if !rx_open && in_flight.is_empty() {
            return;
        }
        let can_take = rx_open && in_flight.len() < config.max_in_flight;
        tokio::select! {
            msg = rx.recv(), if can_take => match msg {
                Some(out) => in_flight.push(publish_until_acked(js.clone(), out, stats.clone(), config.max_backoff)),
                None => rx_open = false,
            },
            Some(published) = in_flight.next(), if !in_flight.is_empty() => {
                if published {
                    stats.published.fetch_add(1, Ordering::Relaxed);
                } else {
                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
                stats.pending.fetch_sub(1, Ordering::Relaxed);
            }
            _ = cancel.cancelled(), if drain_deadline.is_none() => {}
            _ = tokio::time::sleep(Duration::from_millis(200)), if drain_deadline.is_some() => {
                if stats.pending.load(Ordering::Relaxed) == 0 {
                    return;
                }
            }
        }
    }
}

/// Whether a publish error will recur however often the event is sent again: too large for
/// the server or the stream.
fn permanent(e: &jetstream::context::PublishError) -> bool {
    use jetstream::context::PublishErrorKind;
    match e.kind() {
        PublishErrorKind::MaxPayloadExceeded => true,
        PublishErrorKind::Other => {
            // JetStream's "message size exceeds maximum allowed" (10054).
            let text = e.to_string();
            text.contains("10054") || text.contains("message size exceeds")
        }
        _ => false,
    }
}

/// Publishes until JetStream acknowledges (true), retrying with backoff while it is away;
/// an event refused for good is dropped (false) and logged once.
async fn publish_until_acked(
    js: jetstream::Context,
    out: Outgoing,
    stats: Arc<PublisherStats>,
    max_backoff: Duration,
) -> bool {
    let mut backoff = Duration::from_millis(50);
    loop {
        let publish = PublishMessage::build()
            .payload(out.payload.clone())
            .message_id(out.id.as_str());
        let result = match js.send_publish(out.subject.clone(), publish).await {
            Ok(ack) => ack.await.map(|_| ()),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => return true,
            Err(error) if permanent(&error) => {
                tracing::error!(event = %out.id, subject = %out.subject, %error, "event refused by NATS for good; dropped");
                return false;
            }
            Err(error) => {
                stats.retries.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(event = %out.id, subject = %out.subject, %error, "event not acknowledged by JetStream; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(max_backoff);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sessions_disconnected_has_one_id_whoever_publishes_it() {
        let id = disconnected_event_id("node-a", "00000000000000FE");
        assert_eq!(id, disconnected_event_id("node-a", "00000000000000fe"));
        assert_eq!(id.len(), 32);
        assert!(id.ends_with("00000000000000fe"));
        // Pinned: nodes of different builds must agree.
        assert_eq!(&id[..16], "bd682eddda9a2de6");
        assert_ne!(id, disconnected_event_id("node-b", "00000000000000fe"));
        assert_ne!(id, disconnected_event_id("node-a", "00000000000000ff"));
        let odd = disconnected_event_id("node-a", "not-hex");
        assert_eq!(odd.len(), 32);
        let ev = disconnected(
            "acme",
            "g",
            "test",
            proto::DeviceDisconnected {
                node: "node-a".into(),
                session: "00000000000000fe".into(),
                ..Default::default()
            },
        );
        assert_eq!(
            (ev.id.as_str(), ev.kind.as_str()),
            (id.as_str(), "disconnected")
        );
    }
}
