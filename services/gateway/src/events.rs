//! Fleet events over HTTP: the stored trail a page at a time, counts per interval for
//! charts, and the live feed as Server-Sent Events or WebSocket messages, resumable from the
//! last sequence seen. Each live client has a bounded buffer: one that falls behind is told
//! so and disconnected (it resumes where it was), so a slow browser never grows memory.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;
use futures_util::{Stream, StreamExt as _};
use homeport_proto::audit::v1 as pb;
use homeport_proto::events::v1 as ev;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::error::{service_status, ApiError, ApiResult, FieldError};
use crate::{header_str, json, param, query_pairs, AppState, Authed};

const KEEP_ALIVE: Duration = Duration::from_secs(15);

fn iso_nanos(nanos: i64) -> Value {
    let t = chrono::DateTime::from_timestamp(
        nanos.div_euclid(1_000_000_000),
        u32::try_from(nanos.rem_euclid(1_000_000_000)).unwrap_or(0),
    );
    t.map(|t| Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)))
        .unwrap_or(Value::Null)
}

/// One line a person can read about the event.
fn summary(e: &ev::Event) -> String {
    use ev::event::Payload;
    match &e.payload {
        Some(Payload::DeviceConnected(c)) => {
            format!("connected to {} from {}", c.node, c.remote_addr)
        }
        Some(Payload::DeviceDisconnected(d)) => format!(
            "disconnected from {} ({}) after {} s",
            d.node, d.reason, d.duration_seconds
        ),
        Some(Payload::DeviceAuthFailed(f)) => format!(
            "login refused on {} from {}: {}",
            f.node, f.remote_addr, f.reason
        ),
        Some(Payload::CommandRequested(c)) => format!("{} requested", c.action),
        Some(Payload::CommandExecuted(c)) => {
            if c.detail.is_empty() {
                format!("{}: {} in {} ms", c.action, c.result, c.duration_ms)
            } else {
                format!(
                    "{}: {} ({}) in {} ms",
                    c.action, c.result, c.detail, c.duration_ms
                )
            }
        }
        Some(Payload::DeviceRegistryChanged(r)) => {
            if r.fields.is_empty() {
                format!("registry: {}", r.change)
            } else {
                format!("registry: {} ({})", r.change, r.fields.join(", "))
            }
        }
        Some(Payload::Provisioning(p)) => format!(
            "{} {} ({}, profile {})",
            p.flow, p.outcome, p.control_mode, p.profile
        ),
        None => String::new(),
    }
}

/// The JSON of a stored event (no payload secrets exist to hide: events never carry them).
pub fn event_json(e: &pb::StoredEvent) -> Value {
    let ev = e.event.clone().unwrap_or_default();
    json!({
        "sequence": e.sequence,
        "id": ev.id,
        "time": iso_nanos(ev.time_unix_nanos),
        "tenant": ev.tenant,
        "deviceGuid": ev.device_guid,
        "kind": ev.kind,
        "source": ev.source,
        "actor": ev.actor,
        "subject": e.subject,
        "traceId": ev.trace_id,
        "summary": summary(&ev),
    })
}

fn filter_of(pairs: &[(String, String)], errors: &mut Vec<FieldError>) -> pb::EventFilter {
    let get = |k: &str| param(pairs, k).map(str::to_owned);
    let mut time = |k: &str| -> i64 {
        match get(k) {
            None => 0,
            Some(v) => match chrono::DateTime::parse_from_rfc3339(&v) {
                Ok(t) => t.timestamp_nanos_opt().unwrap_or(0),
                Err(_) => {
                    errors.push(FieldError::new(
                        "query",
                        k,
                        format!("{k} must be an RFC 3339 time"),
                        Some(&json!(v)),
                    ));
                    0
                }
            },
        }
    };
    let from = time("from");
    let to = time("to");
    pb::EventFilter {
        device_guid: get("device").unwrap_or_default(),
        kind: get("kind").unwrap_or_default(),
        from_unix_nanos: from,
        to_unix_nanos: to,
    }
}

/// GET /events: the stored trail; `order=desc` pages from the newest (`before` = `next`),
/// otherwise from the oldest (`after` = `next`).
pub async fn list(State(s): State<AppState>, a: Authed, RawQuery(q): RawQuery) -> ApiResult {
    let pairs = query_pairs(q.as_deref());
    let mut errors = Vec::new();
    let filter = filter_of(&pairs, &mut errors);
    let get = |k: &str| param(&pairs, k);
    let top = match get("$top").map(str::parse::<u32>) {
        None => 100,
        Some(Ok(n)) if (1..=1000).contains(&n) => n,
        Some(_) => {
            errors.push(FieldError::new(
                "query",
                "$top",
                "$top must be an integer between 1 and 1000",
                None,
            ));
            100
        }
    };
    let newest_first = match get("order") {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(o) => {
            errors.push(FieldError::new(
                "query",
                "order",
                "order must be asc or desc",
                Some(&json!(o)),
            ));
            false
        }
    };
    let token = get(if newest_first { "before" } else { "after" }).unwrap_or_default();
    if !token.is_empty() && token.parse::<u64>().is_err() {
        errors.push(FieldError::new(
            "query",
            if newest_first { "before" } else { "after" },
            "must be a sequence number",
            Some(&json!(token)),
        ));
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let r = s
        .audit
        .clone()
        .query_events(a.call(
            &s,
            pb::QueryEventsRequest {
                filter: Some(filter),
                page_size: top,
                page_token: token.to_owned(),
                newest_first,
            },
        ))
        .await
        .map_err(service_status)?
        .into_inner();
    let data: Vec<Value> = r.events.iter().map(event_json).collect();
    Ok(json(json!({
        "data": data,
        "next": if r.next_page_token.is_empty() { Value::Null } else { json!(r.next_page_token) },
    })))
}

/// GET /events/counts?kinds=connected,disconnected&minutes=60: events per minute of the
/// last `minutes` (at most a day), oldest first.
pub async fn counts(State(s): State<AppState>, a: Authed, RawQuery(q): RawQuery) -> ApiResult {
    let pairs = query_pairs(q.as_deref());
    let get = |k: &str| param(&pairs, k);
    let kinds: Vec<String> = get("kinds")
        .unwrap_or("connected,disconnected")
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .collect();
    let minutes = match get("minutes").map(str::parse::<u32>) {
        None => 60,
        Some(Ok(m)) if (1..=1440).contains(&m) => m,
        Some(_) => {
            return Err(ApiError::Validation(vec![FieldError::new(
                "query",
                "minutes",
                "minutes must be an integer between 1 and 1440",
                None,
            )]))
        }
    };
    if kinds.is_empty() || kinds.len() > 16 {
        return Err(ApiError::Validation(vec![FieldError::new(
            "query",
            "kinds",
            "name 1 to 16 event kinds, comma-separated",
            None,
        )]));
    }
    // Buckets end at the next whole minute, so the newest one is the current minute.
    let now = chrono::Utc::now().timestamp();
    let end = (now / 60 + 1) * 60;
    let from = end - i64::from(minutes) * 60;
    let r = s
        .audit
        .clone()
        .count_events(a.call(
            &s,
            pb::CountEventsRequest {
                kinds: kinds.clone(),
                from_unix_nanos: from * 1_000_000_000,
                bucket_seconds: 60,
                buckets: minutes,
            },
        ))
        .await
        .map_err(service_status)?
        .into_inner();
    let series: serde_json::Map<String, Value> = r
        .series
        .into_iter()
        .map(|s| (s.kind, json!(s.counts)))
        .collect();
    Ok(json(json!({
        "bucketSeconds": 60,
        "from": iso_nanos(from * 1_000_000_000),
        "series": series,
    })))
}

/// What a live client receives.
enum Item {
    Event(Box<pb::StoredEvent>),
    /// The feed ended (the audit service went away); the client should resume.
    End(String),
}

/// The live feed of one client: a reader task fills a bounded buffer; when the buffer is
/// full the client is too slow and gets `Overflow` instead of more events.
struct Feed {
    rx: mpsc::Receiver<Item>,
    overflow: Arc<AtomicBool>,
    /// Set once the close was handed out: the feed ends there.
    done: bool,
    _slot: tokio::sync::OwnedSemaphorePermit,
    tenant: String,
    state: AppState,
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.state.metrics.streams.dec();
        let mut per = self
            .state
            .tenant_streams
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = per.get_mut(&self.tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per.remove(&self.tenant);
            }
        }
    }
}

enum Out {
    Event(Box<pb::StoredEvent>),
    Close(String),
}

impl Stream for Feed {
    type Item = Out;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Out>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.overflow.swap(false, Ordering::Relaxed) {
            // Events still buffered are dropped; the client resumes from its last id.
            self.rx.close();
            self.done = true;
            self.state.metrics.streams_dropped.inc();
            return Poll::Ready(Some(Out::Close(
                "the client fell behind the live feed; reconnect with Last-Event-ID".into(),
            )));
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Item::Event(e))) => {
                self.state.metrics.stream_events.inc();
                Poll::Ready(Some(Out::Event(e)))
            }
            Poll::Ready(Some(Item::End(reason))) => {
                self.rx.close();
                self.done = true;
                Poll::Ready(Some(Out::Close(reason)))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Opens the caller's feed from the audit service, resuming after `after`.
async fn open_feed(
    s: &AppState,
    a: &Authed,
    filter: pb::EventFilter,
    after: u64,
) -> ApiResult<Feed> {
    let slot = s.streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::Unavailable(
            "too many live-event clients on this gateway; try another replica or later".into(),
        )
    })?;
    let tenant = a.caller.tenant.clone();
    {
        let mut per = s.tenant_streams.lock().unwrap_or_else(|e| e.into_inner());
        let n = per.entry(tenant.clone()).or_default();
        if *n >= s.config.max_streams_per_tenant {
            return Err(ApiError::Other(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "too many live-event clients for this tenant on this gateway".into(),
            ));
        }
        *n += 1;
    }
    s.metrics.streams.inc();
    // From here the Feed gives the places back when it goes, whatever happens next.
    let (tx, rx) = mpsc::channel(s.config.stream_buffer);
    let feed = Feed {
        rx,
        overflow: Arc::new(AtomicBool::new(false)),
        done: false,
        _slot: slot,
        tenant,
        state: s.clone(),
    };
    // The feed lives as long as the client does: no deadline once it is open, but opening
    // it has one.
    let mut req = tonic::Request::new(pb::SubscribeRequest {
        filter: Some(filter),
        after_sequence: after,
    });
    req.metadata_mut().insert("authorization", a.bearer.clone());
    let mut upstream =
        tokio::time::timeout(s.config.call_timeout(), s.audit.clone().subscribe(req))
            .await
            .map_err(|_| {
                ApiError::Timeout("the audit service did not open the feed in time".into())
            })?
            .map_err(service_status)?
            .into_inner();
    let flag = feed.overflow.clone();
    let stop = s.stop.clone();
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => {
                    let _ = tx.try_send(Item::End("the gateway is shutting down; reconnect".into()));
                    return;
                }
                _ = tx.closed() => return,
                n = upstream.next() => n,
            };
            let item = match next {
                Some(Ok(e)) => Item::Event(Box::new(e)),
                Some(Err(e)) => Item::End(format!("the live feed ended: {}", e.message())),
                None => Item::End("the live feed ended; reconnect".into()),
            };
            let end = matches!(item, Item::End(_));
            match tx.try_send(item) {
                Ok(()) if !end => {}
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    // The writer sees the flag at its next poll (returning drops `tx`, which
                    // wakes it) and sends the close instead of the backlog.
                    flag.store(true, Ordering::Relaxed);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
    });
    Ok(feed)
}

fn resume_point(headers: &HeaderMap, pairs: &[(String, String)]) -> ApiResult<u64> {
    let v = header_str(headers, "last-event-id")
        .map(str::to_owned)
        .or_else(|| param(pairs, "after").map(str::to_owned));
    match v {
        None => Ok(0),
        Some(v) if v.is_empty() => Ok(0),
        Some(v) => v.trim().parse().map_err(|_| {
            ApiError::Validation(vec![FieldError::new(
                "headers",
                "Last-Event-ID",
                "must be an event sequence number",
                Some(&json!(v)),
            )])
        }),
    }
}

/// GET /events/stream: Server-Sent Events, `id:` = sequence, `data:` = the event's JSON;
/// `event: close` with a reason ends it.
pub async fn stream(
    State(s): State<AppState>,
    a: Authed,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let pairs = query_pairs(q.as_deref());
    let after = resume_point(&headers, &pairs)?;
    let mut errors = Vec::new();
    let filter = filter_of(&pairs, &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let feed = open_feed(&s, &a, filter, after).await?;
    // The feed ends right after its close event.
    let frames = feed.map(|out| match out {
        Out::Event(e) => format!("id: {}\ndata: {}\n\n", e.sequence, event_json(&e)),
        Out::Close(reason) => format!("event: close\ndata: {}\n\n", json!({"reason": reason})),
    });
    // Comments keep proxies and browsers from timing the connection out when it is quiet.
    let keep_alive = tokio_stream_interval(KEEP_ALIVE).map(|_| ": keep-alive\n\n".to_owned());
    let body = futures_util::stream::select(
        frames
            .map(Some)
            .chain(futures_util::stream::once(async { None })),
        keep_alive.map(Some),
    )
    .take_while(|f| std::future::ready(f.is_some()))
    .map(|f| Ok::<_, std::convert::Infallible>(bytes::Bytes::from(f.unwrap_or_default())));
    let mut r = Response::new(axum::body::Body::from_stream(body));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(r)
}

/// A tick every `period`, first after one period.
fn tokio_stream_interval(period: Duration) -> impl Stream<Item = ()> {
    futures_util::stream::unfold((), move |()| async move {
        tokio::time::sleep(period).await;
        Some(((), ()))
    })
}

/// How long a closing WebSocket frame may take to go out.
const CLOSE_DEADLINE: Duration = Duration::from_secs(5);

/// The caller of a WebSocket upgrade: browsers cannot set headers on one, so the token may
/// come as the offered subprotocol (as the MPS relay takes it), which is then echoed.
fn ws_caller(s: &AppState, headers: &HeaderMap) -> ApiResult<(Authed, Option<String>)> {
    let bearer = |token: &str| Authed::from_token(s, token);
    if let Some(t) = crate::auth::bearer(header_str(headers, "authorization")) {
        return Ok((bearer(t)?, None));
    }
    let offered = header_str(headers, "sec-websocket-protocol").unwrap_or_default();
    let token = offered
        .split(',')
        .map(str::trim)
        .find(|p| p.matches('.').count() == 2)
        .ok_or_else(|| {
            ApiError::Unauthorized(
                "a bearer token is required (Authorization header or WebSocket subprotocol)".into(),
            )
        })?;
    Ok((bearer(token)?, Some(token.to_owned())))
}

/// GET /events/ws: the live feed as WebSocket text messages (one event's JSON each), resumed
/// with `?after=<sequence>`; a client that falls behind gets a close frame (4000) and resumes.
pub async fn websocket(
    State(s): State<AppState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    ws: axum::extract::ws::WebSocketUpgrade,
) -> ApiResult {
    use axum::extract::ws::{CloseFrame, Message};
    let (a, protocol) = ws_caller(&s, &headers)?;
    let pairs = query_pairs(q.as_deref());
    let after = resume_point(&HeaderMap::new(), &pairs)?;
    let mut errors = Vec::new();
    let filter = filter_of(&pairs, &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let mut feed = open_feed(&s, &a, filter, after).await?;
    let ws = match protocol {
        Some(p) => ws.protocols([p]),
        None => ws,
    };
    Ok(ws
        .max_message_size(4096)
        .on_upgrade(move |mut socket| async move {
            loop {
                let out = tokio::select! {
                    o = feed.next() => o,
                    // Anything the client sends is ignored; its close ends the feed.
                    m = socket.recv() => match m {
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                        Some(Ok(_)) => continue,
                    },
                };
                match out {
                    Some(Out::Event(e)) => {
                        let text = event_json(&e).to_string();
                        if socket.send(Message::Text(text.into())).await.is_err() {
                            return;
                        }
                    }
                    Some(Out::Close(reason)) => {
                        let frame = CloseFrame {
                            code: 4000,
                            reason: reason.chars().take(120).collect::<String>().into(),
                        };
                        let _ = tokio::time::timeout(
                            CLOSE_DEADLINE,
                            socket.send(Message::Close(Some(frame))),
                        )
                        .await;
                        return;
                    }
                    None => return,
                }
            }
        }))
}
