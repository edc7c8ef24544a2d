//! One CIRA connection: TLS, the APF server session, login, presence, events and the tunnel.

use std::future::pending;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use async_nats::Subject;
use bytes::Bytes;
use homeport_apf::{ChannelId, DisconnectReason, ServerConfig, ServerEvent, ServerSession};
use homeport_contracts::events::envelope;
use homeport_contracts::presence::Presence;
use homeport_contracts::proto::{self, event::Payload};
use homeport_contracts::tunnel::{self, TunnelError};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::auth::{self, AuthFailure};
use crate::registry::{reply_error, SessionCmd};
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
/// What an HTTP `GET` on the CIRA port gets, like the reference MPS.
const BANNER: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nConnection: close\r\n\r\n<!DOCTYPE html><html><head><title>Homeport</title></head><body>Homeport CIRA ingress.<br />Intel&reg; AMT computers must connect here using CIRA.</body></html>";

/// Why a session ended; the `disconnected` event carries `code()`.
#[derive(Debug)]
enum End {
    PeerClosed,
    PeerDisconnect(DisconnectReason),
    IdleTimeout,
    HandshakeTimeout,
    Superseded,
    ProtocolError(String),
    AuthFailed,
    Drain,
    HttpProbe,
    Io(String),
}

impl End {
    fn code(&self) -> &'static str {
        match self {
            End::PeerClosed => "peer_closed",
            End::PeerDisconnect(_) => "peer_disconnect",
            End::IdleTimeout => "idle_timeout",
            End::HandshakeTimeout => "handshake_timeout",
            End::Superseded => "superseded",
            End::ProtocolError(_) => "protocol_error",
            End::AuthFailed => "auth_failed",
            End::Drain => "drain",
            End::HttpProbe => "http_probe",
            End::Io(_) => "io_error",
        }
    }

    fn detail(&self) -> String {
        match self {
            End::PeerDisconnect(r) => format!("device sent DISCONNECT {r}"),
            End::ProtocolError(e) | End::Io(e) => e.clone(),
            other => other.code().replace('_', " "),
        }
    }
}

enum AuthOutcome {
    Accepted {
        tenant: String,
        rx: mpsc::Receiver<SessionCmd>,
        seen: Seen,
    },
    Rejected(auth::Rejected),
}

/// What a session knows of its device's presence entry before writing its own. Presence is
/// only ever written with an expected revision, so a session can never overwrite an entry it
/// has not seen, such as a newer session's on another node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
enum Seen {
    /// Not read (NATS was unreachable at login): read before writing.
    #[default]
    Unknown,
    /// The last revision of the key, 0 for none; `superseded` is the session whose entry that
    /// was (closed at login), which may still be there when the write is made.
    At {
        revision: u64,
        superseded: Option<String>,
    },
}

/// What the entry of a device says about ownership, for a session deciding to write.
#[derive(Debug, PartialEq, Eq)]
enum Claim {
    /// The entry is this session's: its revision.
    Ours(u64),
    /// Free to write over this revision (none, a delete, or the superseded session's).
    Free(u64),
    /// Another session owns the device now.
    Taken(String),
}

/// Decides from the device's current entry (`None`: no key) whether `session`, which
/// connected at `connected_at` (RFC 3339), may write.
fn claim(
    current: Option<(u64, Option<Presence>)>,
    session: &str,
    connected_at: &str,
    seen: &Seen,
) -> Claim {
    let Some((revision, value)) = current else {
        return Claim::Free(0);
    };
    match value {
        None => Claim::Free(revision),
        Some(p) if p.session == session => Claim::Ours(revision),
        Some(p) => match seen {
            // The login could not read presence: an entry of a session that connected earlier
            // is an older one to take over, a later one is the device's newer session.
            Seen::Unknown if earlier(&p.connected_at, connected_at) => Claim::Free(revision),
            Seen::Unknown => Claim::Taken(p.session),
            Seen::At { superseded, .. } if superseded.as_deref() == Some(p.session.as_str()) => {
                Claim::Free(revision)
            }
            Seen::At { .. } => Claim::Taken(p.session),
        },
    }
}

/// Whether RFC 3339 time `a` is before `b` (unparsable times are never earlier).
fn earlier(a: &str, b: &str) -> bool {
    match (
        chrono::DateTime::parse_from_rfc3339(a),
        chrono::DateTime::parse_from_rfc3339(b),
    ) {
        (Ok(a), Ok(b)) => a < b,
        _ => false,
    }
}

/// A tunnelled HTTP request waiting for its device's answer.
struct Pending {
    channel: ChannelId,
    reply: Subject,
    /// Sent once the channel is open.
    request: Option<Vec<u8>>,
    response: Vec<u8>,
    /// Where the response's framing stands (each piece is looked at once).
    framer: homeport_http1::ResponseFramer,
    started: Instant,
    deadline: Instant,
    /// The caller's W3C traceparent, for the log line of a failure.
    trace: Option<Box<str>>,
}

enum Step {
    Drain,
    Input(std::io::Result<Vec<u8>>),
    Auth(AuthOutcome),
    Cmd(Option<SessionCmd>),
    Timer,
}

struct Conn {
    shared: Arc<Shared>,
    peer: SocketAddr,
    session: ServerSession,
    session_id: u64,
    guid: Option<String>,
    apf_version: (u32, u32),
    tenant: String,
    auth_attempt: u32,
    /// The login in progress (a task: the session stays responsive while it runs).
    auth: Option<tokio::task::JoinHandle<AuthOutcome>>,
    /// Commands from the node's dispatcher, once logged in.
    rx: Option<mpsc::Receiver<SessionCmd>>,
    registered: bool,
    ready_at: Option<Instant>,
    presence_rev: Option<u64>,
    /// The presence entry as last seen, for the next conditional write.
    presence_seen: Seen,
    /// Checking that a recorded entry survived a long NATS cut (a reaper may have removed it).
    recheck: bool,
    /// Another node reaped this session's presence and published its `disconnected`.
    reaped: bool,
    /// Set while the presence write has to be retried.
    presence_retry_at: Option<Instant>,
    connected_at: String,
    pending: Vec<Pending>,
    draining: bool,
    end: Option<End>,
    /// This connection's place among its source address's handshakes, until login.
    source_slot: Option<SourceSlot>,
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
        let mut conn = Conn::new(shared.clone(), peer, accepted, slot);
        conn.drive(&mut stream).await;
        // close_notify, best effort: the device may already be gone.
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.close()).await;
        Box::pin(conn.finish()).await;
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

impl Conn {
    fn new(shared: Arc<Shared>, peer: SocketAddr, accepted: Instant, slot: SourceSlot) -> Self {
        let c = &shared.config;
        let config = ServerConfig {
            keepalive_interval: c.keepalive_interval(),
            idle_timeout: c.idle_timeout(),
            handshake_timeout: c.handshake_timeout(),
            max_auth_attempts: c.max_auth_attempts,
            ..ServerConfig::default()
        };
        Self {
            session: ServerSession::new(config, accepted),
            session_id: fastrand::u64(..),
            shared,
            peer,
            guid: None,
            apf_version: (0, 0),
            tenant: String::new(),
            auth_attempt: 0,
            auth: None,
            rx: None,
            registered: false,
            ready_at: None,
            presence_rev: None,
            presence_seen: Seen::Unknown,
            recheck: false,
            reaped: false,
            presence_retry_at: None,
            connected_at: String::new(),
            pending: Vec::new(),
            draining: false,
            end: None,
            source_slot: Some(slot),
        }
    }

    /// The deadline of a write that starts now.
    fn write_deadline(&self) -> tokio::time::Instant {
        (Instant::now() + self.shared.config.write_timeout()).into()
    }

    async fn drive(&mut self, stream: &mut Transport) {
        if !Box::pin(self.probe(stream)).await {
            return;
        }
        loop {
            // Nothing is read while output is unsent, and every write has a deadline: a peer
            // that stops reading is dropped, whatever it asked for.
            if let Err(e) = stream.flush_pending(self.write_deadline()).await {
                return self.set_end(End::Io(e.to_string()));
            }
            if let Some(out) = self.session.poll_transmit() {
                if let Err(e) = stream.write_all(&out, self.write_deadline()).await {
                    return self.set_end(End::Io(e.to_string()));
                }
            }
            if self.end.is_some() || self.session.is_closed() {
                return self.set_end(End::PeerClosed);
            }
            let deadline = self.next_deadline();
            let step = tokio::select! {
                _ = self.shared.drain.cancelled(), if !self.draining => Step::Drain,
                r = stream.read() => Step::Input(r),
                o = poll_auth(&mut self.auth), if self.auth.is_some() => Step::Auth(o),
                c = next_cmd(&mut self.rx), if self.rx.is_some() => Step::Cmd(c),
                _ = tokio::time::sleep_until(deadline.into()) => Step::Timer,
            };
            match step {
                Step::Drain => {
                    self.draining = true;
                    self.session.disconnect(DisconnectReason::BY_APPLICATION);
                    self.set_end(End::Drain);
                }
                Step::Input(Ok(bytes)) if bytes.is_empty() => self.set_end(End::PeerClosed),
                Step::Input(Ok(bytes)) => self.input(&bytes),
                Step::Input(Err(e)) => self.set_end(End::Io(e.to_string())),
                Step::Auth(outcome) => {
                    self.auth = None;
                    self.on_auth(outcome);
                }
                Step::Cmd(Some(SessionCmd::Http(msg))) => Box::pin(self.on_http(*msg)).await,
                Step::Cmd(Some(SessionCmd::Supersede(reply))) => {
                    Box::pin(self.on_supersede(*reply)).await
                }
                Step::Cmd(Some(SessionCmd::RecheckPresence)) => {
                    if self.presence_rev.is_some() {
                        self.recheck = true;
                        Box::pin(self.write_presence()).await;
                    }
                }
                Step::Cmd(None) => self.rx = None,
                Step::Timer => {
                    let now = Instant::now();
                    self.session.handle_timeout(now);
                    Box::pin(self.expire(now)).await;
                    if self.presence_retry_at.is_some_and(|at| at <= now) {
                        Box::pin(self.write_presence()).await;
                    }
                }
            }
            // Boxed: what runs only now and then stays out of every session's resident task.
            Box::pin(self.process_events()).await;
        }
    }

    /// Answers an HTTP `GET` on the CIRA port with a banner; false when the connection is done.
    async fn probe(&mut self, stream: &mut Transport) -> bool {
        let mut first = Vec::new();
        let deadline = self.session.poll_timeout().unwrap_or_else(Instant::now);
        while first.len() < 3 && b"GET".starts_with(&first) {
            match tokio::time::timeout_at(deadline.into(), stream.read()).await {
                Ok(Ok(b)) if b.is_empty() => {
                    self.set_end(End::PeerClosed);
                    return false;
                }
                Ok(Ok(b)) => first.extend_from_slice(&b),
                Ok(Err(e)) => {
                    self.set_end(End::Io(e.to_string()));
                    return false;
                }
                Err(_) => {
                    self.set_end(End::HandshakeTimeout);
                    return false;
                }
            }
        }
        if first.starts_with(b"GET") {
            self.shared.metrics.http_probes.inc();
            let _ = stream.write_all(BANNER, self.write_deadline()).await;
            self.set_end(End::HttpProbe);
            return false;
        }
        self.input(&first);
        true
    }

    fn set_end(&mut self, end: End) {
        if self.end.is_none() {
            self.end = Some(end);
        }
    }

    fn input(&mut self, bytes: &[u8]) {
        let ignored = self.session.keepalives_ignored();
        let result = self.session.handle_input(Instant::now(), bytes);
        let flooded = self.session.keepalives_ignored() - ignored;
        if flooded > 0 {
            self.shared.metrics.keepalives_ignored.add(flooded);
        }
        if let Err(e) = result {
            self.shared.metrics.protocol_errors.inc();
            tracing::info!(device = ?self.guid, peer = %self.peer, error = %e, "APF protocol error; disconnecting");
            self.set_end(End::ProtocolError(e.to_string()));
        }
    }

    fn next_deadline(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        let mut d = self.session.poll_timeout().unwrap_or(far);
        if let Some(at) = self.presence_retry_at {
            d = d.min(at);
        }
        for p in &self.pending {
            d = d.min(p.deadline);
        }
        d
    }

    async fn process_events(&mut self) {
        while let Some(ev) = self.session.poll_event() {
            match ev {
                ServerEvent::ProtocolVersion { guid, major, minor } => {
                    self.guid = Some(guid);
                    self.apf_version = (major, minor);
                }
                ServerEvent::AuthRequest { username, password } => {
                    self.auth_attempt += 1;
                    let Some(guid) = self.guid.clone() else {
                        self.session.reject_auth();
                        continue;
                    };
                    let shared = self.shared.clone();
                    let peer = self.peer;
                    let session_id = self.session_id;
                    // Zeroised when the login ends, whatever its outcome.
                    let password = zeroize::Zeroizing::new(password.expose().as_bytes().to_vec());
                    let attempt = self.auth_attempt;
                    self.auth = Some(tokio::spawn(login(
                        shared, guid, username, password, peer, session_id, attempt,
                    )));
                }
                ServerEvent::Ready { .. } => {
                    // Logged in: no longer counts against its source's handshakes.
                    self.source_slot = None;
                    self.on_ready().await
                }
                ServerEvent::KeepAlive => self.shared.metrics.keepalives.inc(),
                ServerEvent::ChannelOpened { id } => {
                    if let Some(p) = self.pending.iter_mut().find(|p| p.channel == id) {
                        if let Some(req) = p.request.take() {
                            let _ = self.session.send_data(id, &req);
                        }
                    }
                }
                ServerEvent::ChannelOpenFailed { id, reason } => {
                    if let Some(i) = self.pending.iter().position(|p| p.channel == id) {
                        let p = self.pending.swap_remove(i);
                        self.fail(
                            p,
                            TunnelError::ChannelRefused,
                            &format!("device refused the channel: {reason}"),
                        )
                        .await;
                    }
                }
                ServerEvent::ChannelData { id, data } => self.on_channel_data(id, &data).await,
                ServerEvent::ChannelAborted { id, why } => {
                    self.shared.metrics.channel_aborts.inc();
                    if let Some(i) = self.pending.iter().position(|p| p.channel == id) {
                        let p = self.pending.swap_remove(i);
                        let detail = format!("channel ended: {why}");
                        self.fail(p, TunnelError::BadResponse, &detail).await;
                    }
                }
                ServerEvent::ChannelClosed { id } => {
                    if let Some(i) = self.pending.iter().position(|p| p.channel == id) {
                        let mut p = self.pending.swap_remove(i);
                        match p.framer.advance(&p.response, true) {
                            Ok(Some(len)) => self.answer(p, len).await,
                            _ => {
                                self.fail(
                                    p,
                                    TunnelError::DeviceDropped,
                                    "device closed the channel mid-response",
                                )
                                .await
                            }
                        }
                    }
                }
                ServerEvent::PeerDisconnected { reason } => {
                    self.set_end(End::PeerDisconnect(reason))
                }
                ServerEvent::IdleTimeout => {
                    self.shared.metrics.idle_timeouts.inc();
                    tracing::info!(device = ?self.guid, "session idle past the timeout; dropped");
                    self.set_end(End::IdleTimeout);
                }
                ServerEvent::HandshakeTimeout => self.set_end(End::HandshakeTimeout),
            }
        }
    }

    fn on_auth(&mut self, outcome: AuthOutcome) {
        match outcome {
            AuthOutcome::Accepted { tenant, rx, seen } => {
                self.presence_seen = seen;
                self.tenant = tenant;
                self.rx = Some(rx);
                self.registered = true;
                self.session.accept_auth();
            }
            AuthOutcome::Rejected(r) => {
                let guid = self.guid.as_deref().unwrap_or_default();
                tracing::debug!(device = %guid, peer = %self.peer, reason = r.why.as_str(), attempt = self.auth_attempt, "device login refused");
                self.session.reject_auth();
                if self.session.is_closed() {
                    self.set_end(End::AuthFailed);
                }
            }
        }
    }

    async fn on_ready(&mut self) {
        let Some(guid) = self.guid.clone() else {
            return;
        };
        self.connected_at = chrono::Utc::now().to_rfc3339();
        self.write_presence().await;
        let mut ev = envelope(&self.tenant, &guid, "connected", &self.shared.source);
        ev.payload = Some(Payload::DeviceConnected(proto::DeviceConnected {
            node: self.shared.node_id.clone(),
            session: self.session_hex(),
            remote_addr: self.peer.to_string(),
            apf_major: self.apf_version.0,
            apf_minor: self.apf_version.1,
        }));
        let tenant = self.tenant.clone();
        self.emit(&tenant, &guid, "connected", &ev);
        self.ready_at = Some(Instant::now());
        self.shared.metrics.sessions_connected.inc();
        tracing::debug!(device = %guid, peer = %self.peer, "device connected");
    }

    /// The revision of the device's presence entry if it is this session's.
    async fn own_presence_revision(&self, guid: &str) -> Option<u64> {
        match read_presence(&self.shared, guid).await {
            Ok(current) => match claim(
                current,
                &self.session_hex(),
                &self.connected_at,
                &self.presence_seen,
            ) {
                Claim::Ours(rev) => Some(rev),
                _ => None,
            },
            Err(()) => None,
        }
    }

    fn session_hex(&self) -> String {
        format!("{:016x}", self.session_id)
    }

    /// Records this session in the presence bucket, only over the revision it last saw (see
    /// [`Seen`]). While NATS is unreachable the device stays connected but cannot be found by
    /// callers, so a failed write is retried; a retry first re-reads the entry, since the
    /// lost write may have landed or another session may own the device by now. A session
    /// that finds the device taken ends as superseded.
    async fn write_presence(&mut self) {
        let Some(guid) = self.guid.clone() else {
            return;
        };
        let session = self.session_hex();
        let presence = Presence {
            node: self.shared.node_id.clone(),
            session: session.clone(),
            tenant: self.tenant.clone(),
            connected_at: self.connected_at.clone(),
            remote: self.peer.to_string(),
        };
        let Ok(value) = serde_json::to_vec(&presence) else {
            return;
        };
        let mut must_read =
            self.recheck || self.presence_retry_at.is_some() || self.presence_seen == Seen::Unknown;
        // A conflict means the entry changed since it was seen (a superseded session deleting
        // its own, usually): read and decide again, a few times at most.
        for _ in 0..4 {
            let revision = if must_read {
                let Ok(current) = read_presence(&self.shared, &guid).await else {
                    return self.retry_presence(&guid, "presence not readable");
                };
                match claim(current, &session, &self.connected_at, &self.presence_seen) {
                    Claim::Ours(rev) => {
                        self.recheck = false;
                        return self.presence_recorded(&guid, rev);
                    }
                    Claim::Taken(other) => return self.presence_taken(&guid, &other),
                    Claim::Free(_) if self.recheck => {
                        // Our entry is gone: another node reaped it (and published our
                        // `disconnected`); the device reconnects and is recorded afresh.
                        self.recheck = false;
                        self.presence_rev = None;
                        self.reaped = true;
                        return self.presence_taken(&guid, "none (reaped)");
                    }
                    Claim::Free(rev) => rev,
                }
            } else {
                match &self.presence_seen {
                    Seen::At { revision, .. } => *revision,
                    Seen::Unknown => 0,
                }
            };
            let written = tokio::time::timeout(
                NATS_OP_TIMEOUT,
                self.shared
                    .presence
                    .update(&guid, value.clone().into(), revision),
            )
            .await;
            match written {
                Ok(Ok(rev)) => return self.presence_recorded(&guid, rev),
                Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    must_read = true;
                }
                Ok(Err(e)) => return self.retry_presence(&guid, &e.to_string()),
                Err(_) => return self.retry_presence(&guid, "presence write timed out"),
            }
        }
        self.retry_presence(&guid, "presence kept changing");
    }

    fn presence_recorded(&mut self, guid: &str, rev: u64) {
        if self.presence_retry_at.take().is_some() {
            tracing::info!(device = %guid, "presence recorded after retrying");
        }
        self.presence_rev = Some(rev);
        self.presence_seen = Seen::At {
            revision: rev,
            superseded: None,
        };
    }

    fn retry_presence(&mut self, guid: &str, why: &str) {
        tracing::warn!(device = %guid, error = why, "presence not recorded; will retry");
        self.presence_retry_at = Some(Instant::now() + PRESENCE_RETRY);
    }

    /// Another session recorded the device after this one logged in: it is the device's
    /// session now, and this one steps aside without touching its entry.
    fn presence_taken(&mut self, guid: &str, other: &str) {
        tracing::info!(device = %guid, newer = other, "device recorded by another session; closing this one");
        self.presence_retry_at = None;
        self.deregister();
        self.shared.metrics.superseded.inc();
        self.session.disconnect(DisconnectReason::BY_APPLICATION);
        self.set_end(End::Superseded);
    }

    fn emit(&self, tenant: &str, guid: &str, kind: &str, ev: &proto::Event) {
        let subject = self.shared.names.device_event(tenant, guid, kind);
        if let Err(e) = self.shared.events.publish(subject, ev) {
            tracing::error!(device = %guid, error = %e, "event not queued");
        }
    }

    async fn on_supersede(&mut self, reply: Option<Subject>) {
        // Leave the registry first, so the new session is the only one requests reach.
        self.deregister();
        if let Some(reply) = reply {
            let _ = self
                .shared
                .nats
                .publish(reply, Bytes::from_static(b"closing"))
                .await;
            let _ = self.shared.nats.flush().await;
        }
        self.shared.metrics.superseded.inc();
        tracing::info!(device = ?self.guid, "device reconnected; closing this older session");
        self.session.disconnect(DisconnectReason::BY_APPLICATION);
        self.set_end(End::Superseded);
    }

    fn deregister(&mut self) {
        if self.registered {
            self.registered = false;
            if let Some(guid) = &self.guid {
                self.shared.sessions.deregister(guid, self.session_id);
            }
        }
    }

    async fn on_http(&mut self, msg: async_nats::Message) {
        let Some(reply) = msg.reply else { return };
        if self.ready_at.is_none() || self.end.is_some() {
            return reply_error(
                &self.shared,
                reply,
                TunnelError::NotConnected,
                "device session is not ready",
            )
            .await;
        }
        let port = match msg
            .headers
            .as_ref()
            .and_then(|h| h.get(tunnel::PORT_HEADER))
        {
            None => tunnel::DEFAULT_PORT,
            Some(v) => match v.as_str().parse::<u32>() {
                Ok(p) if tunnel::ALLOWED_PORTS.contains(&p) => p,
                _ => {
                    return reply_error(
                        &self.shared,
                        reply,
                        TunnelError::BadRequest,
                        &format!("port {} not allowed", v.as_str()),
                    )
                    .await
                }
            },
        };
        if msg.payload.len() > tunnel::MAX_REQUEST_BYTES {
            return reply_error(
                &self.shared,
                reply,
                TunnelError::BadRequest,
                "request too large",
            )
            .await;
        }
        if self.pending.len() >= self.shared.config.tunnel_concurrency {
            return reply_error(
                &self.shared,
                reply,
                TunnelError::Busy,
                "too many requests in flight for this device",
            )
            .await;
        }
        match self.session.open_channel(port) {
            Ok(channel) => {
                self.shared.metrics.channel_opens.inc();
                let now = Instant::now();
                self.pending.push(Pending {
                    channel,
                    reply,
                    request: Some(msg.payload.to_vec()),
                    response: Vec::new(),
                    framer: homeport_http1::ResponseFramer::new(),
                    started: now,
                    deadline: now + self.shared.config.tunnel_timeout(),
                    trace: msg
                        .headers
                        .as_ref()
                        .and_then(|h| h.get(tunnel::TRACE_HEADER))
                        .map(|v| v.as_str().chars().take(64).collect()),
                });
            }
            Err(e) => {
                reply_error(
                    &self.shared,
                    reply,
                    TunnelError::NotConnected,
                    &format!("cannot open channel: {e}"),
                )
                .await
            }
        }
    }

    async fn on_channel_data(&mut self, id: ChannelId, data: &[u8]) {
        let Some(i) = self.pending.iter().position(|p| p.channel == id) else {
            return;
        };
        let p = &mut self.pending[i];
        if p.response.len() + data.len() > tunnel::MAX_RESPONSE_BYTES {
            let p = self.pending.swap_remove(i);
            let _ = self.session.close_channel(id);
            return self
                .fail(p, TunnelError::BadResponse, "response too large")
                .await;
        }
        p.response.extend_from_slice(data);
        match p.framer.advance(&p.response, false) {
            Ok(None) => {}
            Ok(Some(len)) => {
                let p = self.pending.swap_remove(i);
                let _ = self.session.close_channel(id);
                self.answer(p, len).await;
            }
            Err(e) => {
                let p = self.pending.swap_remove(i);
                let _ = self.session.close_channel(id);
                self.fail(
                    p,
                    TunnelError::BadResponse,
                    &format!("malformed HTTP from device: {e}"),
                )
                .await;
            }
        }
    }

    async fn expire(&mut self, now: Instant) {
        while let Some(i) = self.pending.iter().position(|p| p.deadline <= now) {
            let p = self.pending.swap_remove(i);
            let _ = self.session.close_channel(p.channel);
            self.fail(p, TunnelError::Timeout, "device did not answer in time")
                .await;
        }
    }

    async fn answer(&self, mut p: Pending, len: usize) {
        p.response.truncate(len);
        self.shared
            .metrics
            .tunnel_latency
            .observe(p.started.elapsed());
        if let Err(e) = self.shared.nats.publish(p.reply, p.response.into()).await {
            tracing::warn!(device = ?self.guid, error = %e, "tunnel reply not sent");
        }
    }

    async fn fail(&self, p: Pending, error: TunnelError, detail: &str) {
        tracing::info!(
            device = ?self.guid,
            trace = p.trace.as_deref().unwrap_or("-"),
            %error,
            detail,
            "tunnel request failed"
        );
        reply_error(&self.shared, p.reply, error, detail).await;
    }

    /// Releases everything the session held: registry entry, pending requests, presence, and
    /// publishes `disconnected` for a session that was connected.
    async fn finish(&mut self) {
        let end = self.end.take().unwrap_or(End::PeerClosed);
        if let Some(task) = self.auth.take() {
            task.abort();
        }
        // Unconditionally: a login task aborted mid-way may have registered already.
        self.registered = true;
        self.deregister();
        for p in std::mem::take(&mut self.pending) {
            self.fail(p, TunnelError::DeviceDropped, "device disconnected")
                .await;
        }
        if let Some(mut rx) = self.rx.take() {
            // Requests queued behind the end of the session get a clear answer.
            rx.close();
            while let Ok(cmd) = rx.try_recv() {
                if let SessionCmd::Http(msg) = cmd {
                    if let Some(reply) = msg.reply {
                        reply_error(
                            &self.shared,
                            reply,
                            TunnelError::DeviceDropped,
                            "device disconnected",
                        )
                        .await;
                    }
                }
            }
        }
        let (Some(guid), Some(ready_at)) = (self.guid.clone(), self.ready_at) else {
            return;
        };
        self.shared.metrics.sessions_connected.dec();
        // A write whose answer was lost (NATS outage) may still have landed: find our own entry.
        let rev = match self.presence_rev {
            Some(rev) => Some(rev),
            None => self.own_presence_revision(&guid).await,
        };
        if let Some(rev) = rev {
            // Only our own entry: a newer session of the device has a newer revision.
            let _ = tokio::time::timeout(
                NATS_OP_TIMEOUT,
                self.shared
                    .presence
                    .delete_expect_revision(&guid, Some(rev)),
            )
            .await;
        }
        if self.reaped {
            // The reaper published this session's one `disconnected` (node-lost).
            return;
        }
        let mut ev = envelope(&self.tenant, &guid, "disconnected", &self.shared.source);
        ev.payload = Some(Payload::DeviceDisconnected(proto::DeviceDisconnected {
            node: self.shared.node_id.clone(),
            session: self.session_hex(),
            reason: end.code().to_string(),
            detail: end.detail(),
            duration_seconds: ready_at.elapsed().as_secs(),
        }));
        self.emit(&self.tenant, &guid, "disconnected", &ev);
        tracing::debug!(device = %guid, reason = end.code(), "device disconnected");
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

async fn poll_auth(auth: &mut Option<tokio::task::JoinHandle<AuthOutcome>>) -> AuthOutcome {
    match auth {
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

async fn next_cmd(rx: &mut Option<mpsc::Receiver<SessionCmd>>) -> Option<SessionCmd> {
    match rx {
        Some(rx) => rx.recv().await,
        None => pending().await,
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
                    older.send(SessionCmd::Supersede(Box::new(None))),
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
async fn read_presence(shared: &Shared, guid: &str) -> Result<Option<(u64, Option<Presence>)>, ()> {
    let entry = tokio::time::timeout(NATS_OP_TIMEOUT, shared.presence.entry(guid))
        .await
        .map_err(|_| ())?
        .map_err(|_| ())?;
    Ok(entry.map(|e| (e.revision, Presence::from_entry(&e))))
}

/// Asks the session recorded in presence, if it is not this one, to close, and waits for it
/// (a dead node answers "no responders" at once). Returns what it saw, for the conditional
/// presence write that follows.
async fn supersede_recorded(shared: &Shared, guid: &str, session_id: u64) -> Seen {
    let (revision, recorded) = match read_presence(shared, guid).await {
        Ok(Some(current)) => current,
        Ok(None) => (0, None),
        Err(()) => return Seen::Unknown,
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
        shared.nats.request(subject, Bytes::new()),
    )
    .await
    {
        Ok(Ok(_)) => tracing::debug!(device = %guid, node = %old.node, "older session closed"),
        Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {}
        Ok(Err(e)) => {
            tracing::warn!(device = %guid, error = %e, "superseding the older session failed")
        }
        Err(_) => tracing::warn!(device = %guid, "older session did not confirm closing"),
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(session: &str, connected_at: &str) -> Presence {
        Presence {
            node: "node-x".into(),
            session: session.into(),
            tenant: "acme".into(),
            connected_at: connected_at.into(),
            remote: "192.0.2.1:1".into(),
        }
    }

    const T1: &str = "2026-12-06T10:00:00+00:00";
    const T2: &str = "2026-12-06T10:00:05+00:00";

    #[test]
    fn presence_is_written_only_over_what_the_session_may_replace() {
        let at = |revision, superseded: Option<&str>| Seen::At {
            revision,
            superseded: superseded.map(str::to_owned),
        };
        // No key, or a deleted one: free, at its revision.
        assert_eq!(claim(None, "me", T2, &at(0, None)), Claim::Free(0));
        assert_eq!(
            claim(Some((7, None)), "me", T2, &at(5, Some("old"))),
            Claim::Free(7)
        );
        // Our own entry (a write whose answer was lost landed).
        assert_eq!(
            claim(Some((9, Some(entry("me", T2)))), "me", T2, &at(5, None)),
            Claim::Ours(9)
        );
        // The session superseded at login may still be there: replace it.
        assert_eq!(
            claim(
                Some((5, Some(entry("old", T1)))),
                "me",
                T2,
                &at(5, Some("old"))
            ),
            Claim::Free(5)
        );
        // Any other session wrote after the login: it owns the device, never overwritten.
        assert_eq!(
            claim(
                Some((8, Some(entry("newer", T1)))),
                "me",
                T2,
                &at(5, Some("old"))
            ),
            Claim::Taken("newer".into())
        );
        // The login could not read: an earlier session is replaced, a later one is not.
        assert_eq!(
            claim(Some((3, Some(entry("old", T1)))), "me", T2, &Seen::Unknown),
            Claim::Free(3)
        );
        assert_eq!(
            claim(
                Some((4, Some(entry("newer", T2)))),
                "me",
                T1,
                &Seen::Unknown
            ),
            Claim::Taken("newer".into())
        );
    }
}
