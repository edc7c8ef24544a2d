//! AuditService: stored events by query, live events by subscription; both scoped to the
//! caller's tenant (the database filter for queries, the subject filter for subscriptions).

use std::pin::Pin;
use std::sync::Arc;

use async_nats::jetstream::{self, consumer};
use futures_util::{Stream, StreamExt};
use homeport_auth::caller;
use homeport_contracts::{proto, Names};
use homeport_proto::audit::v1 as pb;
use homeport_proto::audit::v1::audit_service_server::AuditService;
use homeport_store::{AuditFilter, Store};
use prost::Message as _;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;
/// Events buffered per subscriber before the feed waits for the client.
const SUBSCRIBER_BUFFER: usize = 256;

pub struct AuditApi {
    pub(crate) store: Store,
    pub(crate) js: jetstream::Context,
    pub(crate) names: Names,
    pub(crate) subscribers: Arc<homeport_telemetry::Gauge>,
    pub(crate) feeds: Arc<Feeds>,
}

/// Live feeds open per caller (token subject in its tenant); each holds a JetStream consumer.
pub const MAX_FEEDS_PER_CALLER: u32 = 8;
/// Live feeds open on one replica.
pub const MAX_FEEDS: u32 = 1024;

/// Feeds open on the replica, and per caller (tenant, token subject).
type OpenFeeds = (u32, std::collections::HashMap<(String, String), u32>);

/// Open live feeds, by caller: bounds the consumers one token can make NATS keep.
#[derive(Default)]
pub struct Feeds {
    open: std::sync::Mutex<OpenFeeds>,
}

/// One open feed; gives its place back when dropped.
pub(crate) struct FeedSlot {
    feeds: Arc<Feeds>,
    caller: (String, String),
}

impl Feeds {
    fn enter(self: &Arc<Self>, tenant: &str, subject: &str) -> Result<FeedSlot, Status> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.0 >= MAX_FEEDS {
            return Err(Status::resource_exhausted(format!(
                "this audit replica already serves {MAX_FEEDS} live feeds"
            )));
        }
        let caller = (tenant.to_string(), subject.to_string());
        let n = open.1.entry(caller.clone()).or_insert(0);
        if *n >= MAX_FEEDS_PER_CALLER {
            return Err(Status::resource_exhausted(format!(
                "at most {MAX_FEEDS_PER_CALLER} live feeds per caller; close one first"
            )));
        }
        *n += 1;
        open.0 += 1;
        Ok(FeedSlot {
            feeds: self.clone(),
            caller,
        })
    }
}

impl Drop for FeedSlot {
    fn drop(&mut self) {
        let mut open = self.feeds.open.lock().unwrap_or_else(|e| e.into_inner());
        open.0 = open.0.saturating_sub(1);
        if let Some(n) = open.1.get_mut(&self.caller) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.1.remove(&self.caller);
            }
        }
    }
}

fn opt(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

fn stored(seq: u64, subject: &str, payload: &[u8]) -> Result<pb::StoredEvent, Status> {
    let event = proto::Event::decode(payload)
        .map_err(|e| Status::internal(format!("stored event {seq} does not decode: {e}")))?;
    Ok(pb::StoredEvent {
        sequence: seq,
        subject: subject.to_string(),
        event: Some(event),
    })
}

/// Limits of one CountEvents call (a day of minutes).
const MAX_COUNT_KINDS: usize = 16;
const MAX_COUNT_BUCKETS: u32 = 1440;

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::StoredEvent, Status>> + Send>>;

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn query_events(
        &self,
        req: Request<pb::QueryEventsRequest>,
    ) -> Result<Response<pb::QueryEventsResponse>, Status> {
        let parent = homeport_auth::traceparent(&req);
        homeport_telemetry::traces::traced(
            "AuditService/QueryEvents",
            parent.as_deref(),
            async move {
                let c = caller(&req)?;
                let r = req.into_inner();
                let f = r.filter.unwrap_or_default();
                let filter = AuditFilter {
                    device_guid: opt(&f.device_guid).map(|g| g.to_ascii_lowercase()),
                    kind: opt(&f.kind),
                    from_nanos: (f.from_unix_nanos != 0).then_some(f.from_unix_nanos),
                    to_nanos: (f.to_unix_nanos != 0).then_some(f.to_unix_nanos),
                };
                let page = match r.page_size {
                    0 => DEFAULT_PAGE,
                    n => n.min(MAX_PAGE),
                };
                let token: i64 = if r.page_token.is_empty() {
                    0
                } else {
                    r.page_token
                        .parse()
                        .map_err(|_| Status::invalid_argument("bad page_token"))?
                };
                let rows = if r.newest_first {
                    self.store
                        .query_audit_events_newest(&c.tenant, &filter, token, u64::from(page))
                        .await
                } else {
                    self.store
                        .query_audit_events(&c.tenant, &filter, token, u64::from(page))
                        .await
                }
                .map_err(|e| Status::unavailable(format!("database: {e}")))?;
                let full = rows.len() == page as usize;
                let next = rows.last().map(|r| r.stream_seq.to_string());
                let events = rows
                    .iter()
                    .map(|r| {
                        stored(
                            u64::try_from(r.stream_seq).unwrap_or(0),
                            &r.subject,
                            &r.payload,
                        )
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Response::new(pb::QueryEventsResponse {
                    events,
                    next_page_token: if full {
                        next.unwrap_or_default()
                    } else {
                        String::new()
                    },
                }))
            },
        )
        .await
    }

    async fn count_events(
        &self,
        req: Request<pb::CountEventsRequest>,
    ) -> Result<Response<pb::CountEventsResponse>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        if r.kinds.is_empty() || r.kinds.len() > MAX_COUNT_KINDS {
            return Err(Status::invalid_argument(format!(
                "kinds: name 1 to {MAX_COUNT_KINDS} event kinds"
            )));
        }
        if r.bucket_seconds == 0 || r.buckets == 0 || r.buckets > MAX_COUNT_BUCKETS {
            return Err(Status::invalid_argument(format!(
                "bucket_seconds must be positive and buckets 1 to {MAX_COUNT_BUCKETS}"
            )));
        }
        let bucket_nanos = i64::from(r.bucket_seconds) * 1_000_000_000;
        let rows = self
            .store
            .count_audit_events_by_bucket(
                &c.tenant,
                &r.kinds,
                r.from_unix_nanos,
                bucket_nanos,
                r.buckets,
            )
            .await
            .map_err(|e| Status::unavailable(format!("database: {e}")))?;
        let mut series: Vec<pb::EventSeries> = r
            .kinds
            .iter()
            .map(|k| pb::EventSeries {
                kind: k.clone(),
                counts: vec![0; r.buckets as usize],
            })
            .collect();
        for (kind, bucket, n) in rows {
            for s in series.iter_mut().filter(|s| s.kind == kind) {
                s.counts[bucket as usize] += n;
            }
        }
        Ok(Response::new(pb::CountEventsResponse { series }))
    }

    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        req: Request<pb::SubscribeRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let c = caller(&req)?;
        let slot = self.feeds.enter(&c.tenant, &c.subject)?;
        let r = req.into_inner();
        let f = r.filter.unwrap_or_default();
        let device = opt(&f.device_guid).map(|g| g.to_ascii_lowercase());
        let kind = opt(&f.kind);
        let subject =
            self.names
                .tenant_events_filter(&c.tenant, device.as_deref(), kind.as_deref());
        let stream = self
            .js
            .get_stream(self.names.events_stream())
            .await
            .map_err(|e| Status::unavailable(format!("events stream: {e}")))?;
        let deliver_policy = match r.after_sequence {
            0 => consumer::DeliverPolicy::New,
            n => consumer::DeliverPolicy::ByStartSequence {
                start_sequence: n.saturating_add(1),
            },
        };
        // An ordered consumer: in stream order, recreated by the client library after a gap,
        // so the feed has no hole and no repeat.
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: subject,
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(|e| Status::unavailable(format!("events consumer: {e}")))?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| Status::unavailable(format!("events feed: {e}")))?;
        let (tx, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
        let gauge = self.subscribers.clone();
        let tenant = c.tenant.clone();
        gauge.inc();
        tokio::spawn(async move {
            let _slot = slot;
            loop {
                let next = tokio::select! {
                    _ = tx.closed() => break,
                    m = messages.next() => m,
                };
                let item = match next {
                    None => break,
                    Some(Err(e)) => Err(Status::unavailable(format!("events feed: {e}"))),
                    Some(Ok(m)) => {
                        let seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
                        match stored(seq, m.subject.as_str(), &m.payload) {
                            // The subject filter already fixes the tenant; the payload's
                            // tenant is checked too, so a mislabelled event never leaks.
                            Ok(e) if e.event.as_ref().is_some_and(|ev| ev.tenant == tenant) => {
                                Ok(e)
                            }
                            Ok(_) => continue,
                            // Not an event: the audit worker counts it; the feed skips it.
                            Err(_) => continue,
                        }
                    }
                };
                let end = item.is_err();
                if tx.send(item).await.is_err() || end {
                    break;
                }
            }
            gauge.dec();
        });
        let out = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Ok(Response::new(Box::pin(out)))
    }
}
