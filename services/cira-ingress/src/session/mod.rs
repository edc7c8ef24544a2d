//! One CIRA connection: the async shell around the session's sans-IO core (`core.rs`). The
//! shell accepts TLS, moves bytes between the socket and the core, runs the core's actions
//! (login, presence reads and writes, events, tunnel replies) and feeds their outcomes back;
//! every decision, deadline and bound is the core's.

mod core;

use std::future::{pending, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use async_nats::Subject;
use bytes::Bytes;
use homeport_contracts::events::{self, envelope};
use homeport_contracts::presence::Presence;
use homeport_contracts::proto::{self, event::Payload};
use homeport_contracts::tunnel::{self, TunnelError};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use self::core::{
    Action, Core, Count, HttpRequest, LoginResult, PresenceRead, Seen, Settings, Written,
};
use crate::auth::{self, AuthFailure};
use crate::registry::{reply_error, SessionCmd, Supersede};
use crate::sources::SourceSlot;
use crate::transport::{self, Transport};
use crate::Shared;

/// The TLS part of the handshake ends within this long after accept (queueing for a permit
/// included), and within the whole handshake's deadline.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const SUPERSEDE_TIMEOUT: Duration = Duration::from_secs(3);
const NATS_OP_TIMEOUT: Duration = Duration::from_secs(5);
/// Interval between attempts to record presence while NATS is unreachable.
const PRESENCE_RETRY: Duration = Duration::from_secs(3);

enum AuthOutcome {
    Accepted {
        tenant: String,
        rx: mpsc::Receiver<SessionCmd>,
        seen: Seen,
    },
    Rejected(auth::Rejected),
}

/// A presence operation's outcome, for the core.
enum PresenceOutcome {
    Read(PresenceRead),
    Written(Written),
}

type PresenceOp = Pin<Box<dyn Future<Output = PresenceOutcome> + Send>>;

enum Step {
    Drain,
    Input(std::io::Result<Vec<u8>>),
    Login(AuthOutcome),
    Presence(PresenceOutcome),
    Cmd(Option<SessionCmd>),
    Timer,
}

/// Where a tunnel request's answer goes, and the span of its exchange with the device.
struct Reply {
    subject: Subject,
    span: homeport_telemetry::traces::TraceSpan,
}

struct Shell {
    shared: Arc<Shared>,
    core: Core<Reply>,
    session_id: u64,
    /// The login in progress (a task: the session stays responsive while it runs).
    login: Option<tokio::task::JoinHandle<AuthOutcome>>,
    /// The presence read or write in progress (the core asks for one at a time).
    presence: Option<PresenceOp>,
    /// Commands from the node's dispatcher, once logged in.
    rx: Option<mpsc::Receiver<SessionCmd>>,
    /// This connection's place among its source address's handshakes, until login.
    source_slot: Option<SourceSlot>,
    peer: SocketAddr,
}

pub(crate) async fn handle_connection(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr) {
    // --handshake-timeout-secs runs from here to the end of the APF login, whatever the phase.
    let accepted = Instant::now();
    shared.metrics.connections_total.inc();
    let Some(slot) = shared.sources.try_enter(peer.ip()) else {
        shared.metrics.connections_refused_source.inc();
        tracing::debug!(%peer, "too many handshakes from this address; refused");
        return;
    };
    shared.metrics.connections_open.inc();
    let _ = tcp.set_nodelay(true);
    let handshake_deadline = accepted + shared.config.handshake_timeout();
    let tls_deadline = handshake_deadline.min(accepted + TLS_HANDSHAKE_TIMEOUT);
    if let Some(mut stream) = Box::pin(tls_accept(&shared, tcp, peer, tls_deadline)).await {
        let mut shell = Shell::new(shared.clone(), peer, accepted, slot);
        shell.drive(&mut stream).await;
        // close_notify, best effort: the device may already be gone.
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.close()).await;
        Box::pin(shell.finish()).await;
    }
    shared.metrics.connections_open.dec();
}

async fn tls_accept(
    shared: &Shared,
    tcp: TcpStream,
    peer: SocketAddr,
    deadline: Instant,
) -> Option<Transport> {
    let gate = Some(shared.handshakes.clone());
    match tokio::time::timeout_at(deadline.into(), transport::accept(&shared.tls, tcp, gate)).await
    {
        Ok(Ok(stream)) => {
            shared.metrics.tls_handshakes.inc();
            if matches!(stream, Transport::OpenSsl(_)) {
                shared.metrics.tls_openssl_records.inc();
            }
            Some(stream)
        }
        Ok(Err(e)) => {
            shared.metrics.tls_failures.inc();
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            shared.metrics.tls_failures.inc();
            tracing::debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

impl Shell {
    fn new(shared: Arc<Shared>, peer: SocketAddr, accepted: Instant, slot: SourceSlot) -> Self {
        let c = &shared.config;
        let settings = Settings {
            apf: homeport_apf::ServerConfig {
                keepalive_interval: c.keepalive_interval(),
                idle_timeout: c.idle_timeout(),
                handshake_timeout: c.handshake_timeout(),
                max_auth_attempts: c.max_auth_attempts,
                ..homeport_apf::ServerConfig::default()
            },
            write_timeout: c.write_timeout(),
            tunnel_timeout: c.tunnel_timeout(),
            tunnel_concurrency: c.tunnel_concurrency,
            presence_retry: PRESENCE_RETRY,
            node: shared.node_id.clone(),
        };
        // The wall clock at accept, for the presence entry's `connected_at`.
        let wall =
            chrono::Utc::now() - chrono::Duration::from_std(accepted.elapsed()).unwrap_or_default();
        let session_id = fastrand::u64(..);
        Self {
            core: Core::new(settings, peer, session_id, accepted, wall),
            session_id,
            shared,
            login: None,
            presence: None,
            rx: None,
            source_slot: Some(slot),
            peer,
        }
    }

    async fn drive(&mut self, stream: &mut Transport) {
        let mut drained = false;
        loop {
            Box::pin(self.run_actions()).await;
            // The core reads nothing while a write is unfinished, and each write has its
            // deadline: a peer that stops reading is dropped, whatever it asked for.
            let deadline = self.core.start_write(Instant::now());
            let flushed = stream.flush_pending(deadline.into()).await;
            self.core.write_done(flushed);
            while let Some(out) = self.core.poll_transmit() {
                let deadline = self.core.start_write(Instant::now());
                let written = stream.write_all(&out, deadline.into()).await;
                self.core.write_done(written);
            }
            if self.core.is_over() {
                return;
            }
            let far = Instant::now() + Duration::from_secs(3600);
            let deadline = self.core.poll_timeout().unwrap_or(far);
            let step = tokio::select! {
                _ = self.shared.drain.cancelled(), if !drained => Step::Drain,
                r = stream.read(), if self.core.wants_input() => Step::Input(r),
                o = poll_login(&mut self.login), if self.login.is_some() => Step::Login(o),
                o = poll_presence(&mut self.presence), if self.presence.is_some() => Step::Presence(o),
                c = next_cmd(&mut self.rx), if self.rx.is_some() => Step::Cmd(c),
                _ = tokio::time::sleep_until(deadline.into()) => Step::Timer,
            };
            let now = Instant::now();
            match step {
                Step::Drain => {
                    drained = true;
                    self.core.drain();
                }
                Step::Input(Ok(bytes)) => self.core.handle_input(now, &bytes),
                Step::Input(Err(e)) => self.core.read_failed(e),
                Step::Login(outcome) => {
                    self.login = None;
                    let result = match outcome {
                        AuthOutcome::Accepted { tenant, rx, seen } => {
                            self.rx = Some(rx);
                            LoginResult::Accepted { tenant, seen }
                        }
                        AuthOutcome::Rejected(r) => LoginResult::Rejected(r.why),
                    };
                    self.core.login_done(now, result);
                }
                Step::Presence(outcome) => {
                    self.presence = None;
                    self.presence_done(now, outcome);
                }
                Step::Cmd(Some(SessionCmd::Http(msg))) => self.on_http(now, *msg).await,
                Step::Cmd(Some(SessionCmd::Supersede(request))) => {
                    let meant = request.session.as_deref();
                    if meant.is_some_and(|s| s != self.core.session_hex()) {
                        // Meant for an older session of the device that is gone already.
                        confirm(&self.shared, request.reply, b"no session").await;
                        continue;
                    }
                    self.core.supersede();
                    // Out of the registry before confirming, so the newer session is the only
                    // one requests reach.
                    Box::pin(self.run_actions()).await;
                    confirm(&self.shared, request.reply, b"closing").await;
                }
                Step::Cmd(Some(SessionCmd::Disconnect(request))) => {
                    let meant = request.session.as_deref();
                    if meant.is_some_and(|s| s != self.core.session_hex()) {
                        confirm(&self.shared, request.reply, b"no session").await;
                        continue;
                    }
                    self.core.close_on_request();
                    Box::pin(self.run_actions()).await;
                    confirm(&self.shared, request.reply, b"closing").await;
                }
                Step::Cmd(Some(SessionCmd::RecheckPresence)) => self.core.recheck_presence(),
                Step::Cmd(None) => self.rx = None,
                Step::Timer => self.core.handle_timeout(now),
            }
        }
    }

    fn presence_done(&mut self, now: Instant, outcome: PresenceOutcome) {
        match outcome {
            PresenceOutcome::Read(read) => self.core.presence_read(now, read),
            PresenceOutcome::Written(written) => self.core.presence_written(now, written),
        }
    }

    async fn on_http(&mut self, now: Instant, msg: async_nats::Message) {
        let Some(reply) = msg.reply else { return };
        let header = |name| {
            msg.headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
        };
        let trace: Option<Box<str>> =
            header(tunnel::TRACE_HEADER).map(|v| v.chars().take(64).collect());
        let port = header(tunnel::PORT_HEADER);
        // The device exchange, continuing the caller's trace.
        let span = homeport_telemetry::traces::TraceSpan::start(
            "cira.tunnel",
            true,
            trace.as_deref(),
            vec![
                (
                    "homeport.device",
                    self.core.guid().unwrap_or_default().to_owned(),
                ),
                ("homeport.node", self.shared.node_id.clone()),
                (
                    "server.port",
                    port.clone()
                        .unwrap_or_else(|| tunnel::DEFAULT_PORT.to_string()),
                ),
            ],
        );
        let request = HttpRequest {
            reply: Reply {
                subject: reply,
                span,
            },
            port,
            payload: msg.payload.to_vec(),
            trace,
        };
        self.core.http_request(now, request);
    }

    /// Runs what the core asked for, in order.
    async fn run_actions(&mut self) {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Login {
                    guid,
                    username,
                    password,
                    attempt,
                } => {
                    let (shared, peer, session) = (self.shared.clone(), self.peer, self.session_id);
                    // The login path as a span: the device, its address and the outcome, never
                    // credentials.
                    let span = homeport_telemetry::traces::TraceSpan::start(
                        "cira.login",
                        true,
                        None,
                        vec![
                            ("homeport.device", guid.clone()),
                            ("client.address", peer.ip().to_string()),
                            ("homeport.node", shared.node_id.clone()),
                        ],
                    );
                    let log_span = span.log_span("cira.login");
                    self.login = Some(tokio::spawn(async move {
                        let work = login(shared, guid, username, password, peer, session, attempt);
                        let outcome = tracing::Instrument::instrument(work, log_span).await;
                        match &outcome {
                            AuthOutcome::Accepted { .. } => span.end(None),
                            AuthOutcome::Rejected(r) => span.end(Some(r.why.as_str())),
                        }
                        outcome
                    }));
                }
                Action::Connected => {
                    // Logged in: no longer counts against its source's handshakes.
                    self.source_slot = None;
                    self.shared.metrics.sessions_connected.inc();
                }
                Action::ReadPresence { guid } => {
                    let shared = self.shared.clone();
                    self.presence = Some(Box::pin(async move {
                        PresenceOutcome::Read(read_presence(&shared, &guid).await)
                    }));
                }
                Action::WritePresence {
                    guid,
                    revision,
                    value,
                } => {
                    let shared = self.shared.clone();
                    self.presence = Some(Box::pin(async move {
                        PresenceOutcome::Written(
                            write_presence(&shared, &guid, revision, &value).await,
                        )
                    }));
                }
                Action::DeletePresence { guid, revision } => {
                    let presence = &self.shared.presence;
                    let _ = tokio::time::timeout(
                        NATS_OP_TIMEOUT,
                        presence.delete_expect_revision(&guid, Some(revision)),
                    )
                    .await;
                }
                Action::SupersedeOlder {
                    node,
                    guid,
                    session,
                } => {
                    let shared = self.shared.clone();
                    // Not awaited: the older session closes on its own node, in its own time.
                    tokio::spawn(async move {
                        let subject = shared.names.cira_node_supersede(&node, &guid);
                        let request = shared.nats.request(subject, Bytes::from(session));
                        let _ = tokio::time::timeout(SUPERSEDE_TIMEOUT, request).await;
                    });
                }
                Action::Deregister { guid } => {
                    self.shared.sessions.deregister(&guid, self.session_id)
                }
                Action::Emit {
                    tenant,
                    guid,
                    kind,
                    payload,
                } => {
                    let ev = match payload {
                        Payload::DeviceDisconnected(d) => {
                            events::disconnected(&tenant, &guid, &self.shared.source, d)
                        }
                        payload => {
                            let mut ev = envelope(&tenant, &guid, kind, &self.shared.source);
                            ev.payload = Some(payload);
                            ev
                        }
                    };
                    let subject = self.shared.names.device_event(&tenant, &guid, kind);
                    if let Err(e) = self.shared.events.publish(subject, &ev) {
                        tracing::error!(device = %guid, error = %e, "event not queued");
                    }
                }
                Action::Reply {
                    to,
                    result,
                    latency,
                } => match result {
                    Ok(response) => {
                        if let Some(latency) = latency {
                            self.shared.metrics.tunnel_latency.observe(latency);
                        }
                        to.span.end(None);
                        let sent = self.shared.nats.publish(to.subject, response.into()).await;
                        if let Err(e) = sent {
                            tracing::warn!(device = ?self.core.guid(), error = %e, "tunnel reply not sent");
                        }
                    }
                    Err((error, detail)) => {
                        to.span.end(Some(error.code()));
                        reply_error(&self.shared, to.subject, error, &detail).await
                    }
                },
                Action::Count(count) => {
                    let m = &self.shared.metrics;
                    match count {
                        Count::KeepAlive => m.keepalives.inc(),
                        Count::KeepalivesIgnored(n) => m.keepalives_ignored.add(n),
                        Count::ProtocolError => m.protocol_errors.inc(),
                        Count::ChannelOpen => m.channel_opens.inc(),
                        Count::ChannelAbort => m.channel_aborts.inc(),
                        Count::IdleTimeout => m.idle_timeouts.inc(),
                        Count::Superseded => m.superseded.inc(),
                        Count::HttpProbe => m.http_probes.inc(),
                        Count::PresenceWriteFailed => m.presence_write_failures.inc(),
                    }
                }
            }
        }
    }

    /// Releases everything the session held (see [`Core::close`]); presence operations are
    /// awaited here, each within its NATS deadline.
    async fn finish(&mut self) {
        if let Some(task) = self.login.take() {
            task.abort();
            // Ended for sure before the registry entry is removed: an aborted login that
            // registered must not register after that.
            let _ = task.await;
        }
        // Deregisters and answers callers at once; the release of presence waits for the
        // operation in flight, if any (its answer says which entry is ours).
        self.core.close(Instant::now());
        loop {
            self.run_actions().await;
            match self.presence.take() {
                Some(op) => {
                    let outcome = op.await;
                    self.presence_done(Instant::now(), outcome);
                }
                None if self.core.is_finished() => break,
                None => {
                    tracing::error!(device = ?self.core.guid(), "session core waits for nothing; ending");
                    break;
                }
            }
        }
        if let Some(mut rx) = self.rx.take() {
            // Requests queued behind the end of the session get a clear answer.
            rx.close();
            while let Ok(cmd) = rx.try_recv() {
                match cmd {
                    SessionCmd::Http(msg) => {
                        if let Some(reply) = msg.reply {
                            let (error, detail) =
                                (TunnelError::DeviceDropped, "device disconnected");
                            reply_error(&self.shared, reply, error, detail).await;
                        }
                    }
                    // The newer session (or the device API) need not wait for its timeout:
                    // this one is gone.
                    SessionCmd::Supersede(request) | SessionCmd::Disconnect(request) => {
                        confirm(&self.shared, request.reply, b"closing").await
                    }
                    SessionCmd::RecheckPresence => {}
                }
            }
        }
        if self.core.was_connected() {
            self.shared.metrics.sessions_connected.dec();
        }
    }
}

/// Answers a supersede request, within the NATS deadline.
async fn confirm(shared: &Shared, reply: Option<Subject>, answer: &'static [u8]) {
    if let Some(reply) = reply {
        let sent = async {
            let _ = shared.nats.publish(reply, Bytes::from_static(answer)).await;
            let _ = shared.nats.flush().await;
        };
        let _ = tokio::time::timeout(NATS_OP_TIMEOUT, sent).await;
    }
}

async fn poll_login(login: &mut Option<tokio::task::JoinHandle<AuthOutcome>>) -> AuthOutcome {
    match login {
        Some(task) => match task.await {
            Ok(outcome) => outcome,
            Err(_) => AuthOutcome::Rejected(auth::Rejected {
                why: AuthFailure::StoreUnavailable,
                tenant: String::new(),
            }),
        },
        None => pending().await,
    }
}

async fn poll_presence(op: &mut Option<PresenceOp>) -> PresenceOutcome {
    match op {
        Some(op) => op.await,
        None => pending().await,
    }
}

async fn next_cmd(rx: &mut Option<mpsc::Receiver<SessionCmd>>) -> Option<SessionCmd> {
    match rx {
        Some(rx) => rx.recv().await,
        None => pending().await,
    }
}

/// Writes the device's entry only over `revision`.
async fn write_presence(shared: &Shared, guid: &str, revision: u64, value: &Presence) -> Written {
    let Ok(value) = serde_json::to_vec(value) else {
        return Written::Failed("presence entry not encodable".into());
    };
    let update = shared.presence.update(guid, value.into(), revision);
    match tokio::time::timeout(NATS_OP_TIMEOUT, update).await {
        Ok(Ok(rev)) => Written::Ok(rev),
        Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Written::Conflict,
        Ok(Err(e)) => Written::Failed(e.to_string()),
        Err(_) => Written::Failed("presence write timed out".into()),
    }
}

/// Publishes one `auth_failed` event (which may stand for several failed logins).
pub(crate) fn publish_auth_failure(shared: &Shared, report: auth::FailureReport) {
    shared.metrics.auth_failure_events.inc();
    let login = &report.login;
    tracing::warn!(
        device = %login.guid,
        peer = %login.remote,
        reason = login.reason.as_str(),
        failures = report.failures,
        "device login refused"
    );
    let mut ev = envelope(&report.tenant, &login.guid, "auth_failed", &shared.source);
    ev.payload = Some(Payload::DeviceAuthFailed(proto::DeviceAuthFailed {
        node: shared.node_id.clone(),
        remote_addr: login.remote.clone(),
        reason: login.reason.as_str().to_string(),
        attempt: login.attempt,
        failures: report.failures,
    }));
    let subject = shared
        .names
        .device_event(&report.tenant, &login.guid, "auth_failed");
    if let Err(e) = shared.events.publish(subject, &ev) {
        tracing::error!(device = %login.guid, error = %e, "event not queued");
    }
}

/// Checks the credentials; on success takes the device over from any older session (on any
/// node) and registers with the node's dispatcher before the device is told it is logged in.
async fn login(
    shared: Arc<Shared>,
    guid: String,
    username: String,
    password: zeroize::Zeroizing<Vec<u8>>,
    peer: SocketAddr,
    session_id: u64,
    attempt: u32,
) -> AuthOutcome {
    match auth::check(
        &shared.devices,
        &shared.secrets,
        &guid,
        &username,
        &password,
    )
    .await
    {
        Ok(login) => {
            let seen = supersede_recorded(&shared, &guid, session_id).await;
            let (tx, rx) = mpsc::channel(shared.config.tunnel_concurrency + 2);
            if let Some(older) = shared.sessions.register(&guid, session_id, tx) {
                // An older session on this node that had not recorded presence yet.
                let _ = tokio::time::timeout(
                    SUPERSEDE_TIMEOUT,
                    older.send(SessionCmd::Supersede(Box::new(Supersede {
                        reply: None,
                        session: None,
                    }))),
                )
                .await;
            }
            AuthOutcome::Accepted {
                tenant: login.tenant,
                rx,
                seen,
            }
        }
        Err(rejected) => {
            // Counted when decided: a slowed-down answer may outlive the session.
            shared.metrics.auth_failures.inc();
            let login = auth::FailedLogin {
                guid,
                remote: peer.to_string(),
                reason: rejected.why,
                attempt,
            };
            let now = Instant::now();
            let failures = &shared.failure_events;
            if let Some(report) = failures.record(now, peer.ip(), &rejected.tenant, login) {
                publish_auth_failure(&shared, report);
            }
            let delay = shared.limiter.failure(peer.ip(), now);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            AuthOutcome::Rejected(rejected)
        }
    }
}

/// The device's presence entry: `Some((revision, value))` with `None` for a deleted key,
/// `None` when the key never existed; `Err` when NATS did not answer.
async fn read_presence(shared: &Shared, guid: &str) -> PresenceRead {
    let entry = tokio::time::timeout(NATS_OP_TIMEOUT, shared.presence.entry(guid))
        .await
        .map_err(|_| "presence read timed out".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(entry.map(|e| (e.revision, Presence::from_entry(&e))))
}

/// Asks the session recorded in presence, if it is not this one, to close, and waits for it
/// (a dead node answers "no responders" at once). Returns what it saw, for the conditional
/// presence write that follows.
async fn supersede_recorded(shared: &Shared, guid: &str, session_id: u64) -> Seen {
    let (revision, recorded) = match read_presence(shared, guid).await {
        Ok(Some(current)) => current,
        Ok(None) => (0, None),
        Err(_) => return Seen::Unknown,
    };
    let seen = Seen::At {
        revision,
        superseded: recorded.as_ref().map(|p| p.session.clone()),
    };
    let Some(old) = recorded else { return seen };
    if old.session == format!("{session_id:016x}") {
        return seen;
    }
    let subject = shared.names.cira_node_supersede(&old.node, guid);
    match tokio::time::timeout(
        SUPERSEDE_TIMEOUT,
        shared
            .nats
            .request(subject, Bytes::from(old.session.clone())),
    )
    .await
    {
        Ok(Ok(_)) => tracing::debug!(device = %guid, node = %old.node, "older session closed"),
        Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
            // The old node is gone (or cut off from NATS): nobody else may ever tell that its
            // session ended, since this login replaces the entry a reaper would look at. The
            // event carries the id the node or a reaper would give it, so it is kept once.
            let ev = events::disconnected(
                &old.tenant,
                guid,
                &shared.source,
                proto::DeviceDisconnected {
                    node: old.node.clone(),
                    session: old.session.clone(),
                    reason: "node-lost".into(),
                    detail: format!(
                        "ingress node {} did not answer when the device reconnected to {}",
                        old.node, shared.node_id
                    ),
                    duration_seconds: crate::reaper::seconds_since(&old.connected_at),
                },
            );
            let subject = shared.names.device_event(&old.tenant, guid, "disconnected");
            if let Err(e) = shared.events.publish(subject, &ev) {
                tracing::error!(device = %guid, error = %e, "event not queued");
            }
        }
        Ok(Err(e)) => {
            tracing::warn!(device = %guid, error = %e, "superseding the older session failed")
        }
        Err(_) => tracing::warn!(device = %guid, "older session did not confirm closing"),
    }
    seen
}
