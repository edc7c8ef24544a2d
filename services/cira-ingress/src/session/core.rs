//! The decisions of one CIRA session, sans-IO: the HTTP probe, the APF session, the login
//! hand-off, presence ownership, the tunnel's requests and every deadline. It is driven by
//! events and a clock argument and answers with [`Action`]s and bytes to send, like the APF
//! crate's `ServerSession` (quinn-proto's `Connection` is the model); the async shell in
//! `session/mod.rs` only moves bytes, runs the actions and feeds their outcomes back. So the
//! deadlines, the back-pressure and presence ownership are tested here without sockets, NATS
//! or real time.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use homeport_apf::{ChannelId, DisconnectReason, ServerConfig, ServerEvent, ServerSession};
use homeport_contracts::presence::Presence;
use homeport_contracts::proto::{self, event::Payload};
use homeport_contracts::tunnel::{self, TunnelError};

use crate::auth::AuthFailure;

/// What an HTTP `GET` on the CIRA port gets, like the reference MPS.
const BANNER: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nConnection: close\r\n\r\n<!DOCTYPE html><html><head><title>Homeport</title></head><body>Homeport CIRA ingress.<br />Intel&reg; AMT computers must connect here using CIRA.</body></html>";
/// Conflicting presence writes in a row (the entry changing under us) before waiting to retry.
const PRESENCE_CONFLICTS: u32 = 4;

/// The settings a session decides with.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub apf: ServerConfig,
    /// Every write (and the flush of what TLS owes the peer) ends by then or ends the session.
    pub write_timeout: Duration,
    pub tunnel_timeout: Duration,
    pub tunnel_concurrency: usize,
    /// Wait between attempts to record presence while NATS is unreachable.
    pub presence_retry: Duration,
    /// This node's id, recorded in presence and events.
    pub node: String,
}

/// Why a session ended; the `disconnected` event carries `code()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum End {
    PeerClosed,
    PeerDisconnect(DisconnectReason),
    IdleTimeout,
    HandshakeTimeout,
    Superseded,
    ProtocolError(String),
    AuthFailed,
    Drain,
    /// The device API asked for the session to end.
    Requested,
    HttpProbe,
    Io(String),
}

impl End {
    pub fn code(&self) -> &'static str {
        match self {
            End::PeerClosed => "peer_closed",
            End::PeerDisconnect(_) => "peer_disconnect",
            End::IdleTimeout => "idle_timeout",
            End::HandshakeTimeout => "handshake_timeout",
            End::Superseded => "superseded",
            End::ProtocolError(_) => "protocol_error",
            End::AuthFailed => "auth_failed",
            End::Drain => "drain",
            End::Requested => "requested",
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

/// What a session knows of its device's presence entry before writing its own. Presence is
/// only ever written with an expected revision, so a session can never overwrite an entry it
/// has not seen, such as a newer session's on another node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) enum Seen {
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
pub(crate) enum Claim {
    /// The entry is this session's: its revision.
    Ours(u64),
    /// Free to write over this revision (none, a delete, or the superseded session's).
    Free(u64),
    /// The entry is an older session's that the login did not close (it could not read
    /// presence, or the older one recorded itself after the login read): write over it and
    /// ask that session to close.
    Replace {
        revision: u64,
        node: String,
        session: String,
    },
    /// Another, newer session owns the device now.
    Taken(String),
}

/// Decides from the device's current entry (`None`: no key) whether `session`, which
/// connected at `connected_at` (RFC 3339), may write.
pub(crate) fn claim(
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
            Seen::At { superseded, .. } if superseded.as_deref() == Some(p.session.as_str()) => {
                Claim::Free(revision)
            }
            // An entry of a session that connected earlier is an older one to take over
            // (nodes' clocks are assumed within the seconds between two connections of one
            // device); a later one is the device's newer session, never overwritten.
            _ if earlier(&p.connected_at, connected_at) => Claim::Replace {
                revision,
                node: p.node,
                session: p.session,
            },
            _ => Claim::Taken(p.session),
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

/// The device's presence entry as read: `Some((revision, value))` with `None` for a deleted
/// key, `None` when the key never existed; `Err` when NATS did not answer.
pub(crate) type PresenceRead = Result<Option<(u64, Option<Presence>)>, String>;

/// How a conditional presence write went.
#[derive(Debug)]
pub(crate) enum Written {
    /// Recorded at this revision.
    Ok(u64),
    /// The entry is no longer at the expected revision.
    Conflict,
    /// NATS failed or did not answer in time.
    Failed(String),
}

/// What a login decided.
#[derive(Debug)]
pub(crate) enum LoginResult {
    /// Credentials good; the session is registered with the node, older ones were asked to
    /// close, and `seen` is what the login read of presence.
    Accepted {
        tenant: String,
        seen: Seen,
    },
    Rejected(AuthFailure),
}

/// A tunnelled HTTP request from a caller; `R` is where the answer goes.
pub(crate) struct HttpRequest<R> {
    pub reply: R,
    /// The port header as sent (`None`: the default port).
    pub port: Option<String>,
    pub payload: Vec<u8>,
    /// The caller's W3C traceparent, for the log line of a failure.
    pub trace: Option<Box<str>>,
}

/// What a counter of the node's metrics should count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Count {
    KeepAlive,
    KeepalivesIgnored(u64),
    ProtocolError,
    ChannelOpen,
    ChannelAbort,
    IdleTimeout,
    Superseded,
    HttpProbe,
    PresenceWriteFailed,
}

/// Work for the shell; outcomes come back through the matching `Core` method.
#[derive(Debug)]
pub(crate) enum Action<R> {
    /// Check these credentials; answer with [`Core::login_done`].
    Login {
        guid: String,
        username: String,
        password: zeroize::Zeroizing<Vec<u8>>,
        attempt: u32,
    },
    /// The device is logged in and ready: it no longer counts against its source's
    /// handshakes, and is one more connected session.
    Connected,
    /// Read the device's presence entry; answer with [`Core::presence_read`].
    ReadPresence {
        guid: String,
    },
    /// Write `value` only over `revision`; answer with [`Core::presence_written`].
    WritePresence {
        guid: String,
        revision: u64,
        value: Presence,
    },
    /// Delete the device's entry only if it is still at `revision` (best effort, no answer).
    DeletePresence {
        guid: String,
        revision: u64,
    },
    /// Ask the device's older session `session` on `node` to close (no answer needed; a
    /// node whose session of the device is another one ignores it).
    SupersedeOlder {
        node: String,
        guid: String,
        session: String,
    },
    /// Leave the node's registry (only this session's entry).
    Deregister {
        guid: String,
    },
    /// Publish a device event.
    Emit {
        tenant: String,
        guid: String,
        kind: &'static str,
        payload: Payload,
    },
    /// Answer a tunnel request: the device's response, or an error and its detail.
    Reply {
        to: R,
        result: Result<Vec<u8>, (TunnelError, String)>,
        /// Request to answer, for a successful one.
        latency: Option<Duration>,
    },
    Count(Count),
}

/// A tunnelled HTTP request waiting for its device's answer.
struct Pending<R> {
    channel: ChannelId,
    reply: R,
    /// Sent once the channel is open.
    request: Option<Vec<u8>>,
    response: Vec<u8>,
    /// Where the response's framing stands (each piece is looked at once).
    framer: homeport_http1::ResponseFramer,
    started: Instant,
    deadline: Instant,
    trace: Option<Box<str>>,
}

/// The presence operation the shell is running for this session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PresenceOp {
    Read,
    Write,
    /// The read at the end that looks for this session's own entry (a write whose answer was
    /// lost may have landed).
    FinalRead,
}

#[derive(Debug, Default)]
struct PresenceState {
    /// The entry as last seen, for the next conditional write.
    seen: Seen,
    /// This session's recorded revision.
    rev: Option<u64>,
    /// Checking that a recorded entry survived a long NATS cut (a reaper may have removed it).
    recheck: bool,
    /// Another node reaped this session's entry and published its `disconnected`.
    reaped: bool,
    /// When to try again after a failure.
    retry_at: Option<Instant>,
    /// A failed attempt is being retried (the next one reads first).
    retrying: bool,
    op: Option<PresenceOp>,
    /// Conflicts in the current round.
    conflicts: u32,
    /// A round was asked for while an operation was in flight.
    again: bool,
    /// A re-check was asked for while an operation was in flight: it starts (reading) when
    /// that one ends, whatever it found.
    recheck_after: bool,
    /// The session ended while an operation was in flight: the release waits for its answer.
    closing_waits: bool,
}

/// Where the session stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// The first bytes decide between CIRA and an HTTP probe.
    Probing,
    Apf,
    /// Ended; the final steps (release presence, `disconnected`) are under way.
    Closing,
    Finished,
}

/// One CIRA session's state and decisions.
pub(crate) struct Core<R> {
    settings: Settings,
    apf: ServerSession,
    phase: Phase,
    probe: Vec<u8>,
    peer: SocketAddr,
    session_id: u64,
    /// Wall-clock time at `started` (connection times are derived from the clock argument).
    wall_start: chrono::DateTime<chrono::Utc>,
    started: Instant,
    guid: Option<String>,
    apf_version: (u32, u32),
    tenant: String,
    auth_attempt: u32,
    login_pending: bool,
    ready_at: Option<Instant>,
    connected_at: String,
    presence: PresenceState,
    pending: Vec<Pending<R>>,
    /// A banner or the APF session's output waiting to be sent.
    out: VecDeque<Vec<u8>>,
    /// When the write in progress must end.
    write_deadline: Option<Instant>,
    /// A write failed or timed out: nothing more is sent.
    write_failed: bool,
    /// `connected` waits for the first presence write's answer (so a caller that reacts to it
    /// finds the device), whatever the answer.
    connected_pending: Option<proto::DeviceConnected>,
    draining: bool,
    end: Option<End>,
    actions: VecDeque<Action<R>>,
}

impl<R> Core<R> {
    pub fn new(
        settings: Settings,
        peer: SocketAddr,
        session_id: u64,
        now: Instant,
        wall_now: chrono::DateTime<chrono::Utc>,
    ) -> Self {
        Self {
            apf: ServerSession::new(settings.apf.clone(), now),
            settings,
            phase: Phase::Probing,
            probe: Vec::new(),
            peer,
            session_id,
            wall_start: wall_now,
            started: now,
            guid: None,
            apf_version: (0, 0),
            tenant: String::new(),
            auth_attempt: 0,
            login_pending: false,
            ready_at: None,
            connected_at: String::new(),
            presence: PresenceState::default(),
            pending: Vec::new(),
            out: VecDeque::new(),
            write_deadline: None,
            write_failed: false,
            connected_pending: None,
            draining: false,
            end: None,
            actions: VecDeque::new(),
        }
    }

    pub fn session_hex(&self) -> String {
        format!("{:016x}", self.session_id)
    }

    pub fn guid(&self) -> Option<&str> {
        self.guid.as_deref()
    }

    #[cfg(test)]
    pub fn end(&self) -> Option<&End> {
        self.end.as_ref()
    }

    /// The session is over: nothing more is read or asked of it but [`Core::close`].
    pub fn is_over(&self) -> bool {
        self.end.is_some()
            || self.apf.is_closed()
            || matches!(self.phase, Phase::Closing | Phase::Finished)
    }

    /// Whether the shell may read: never while a write is unfinished (a peer that stops
    /// reading stops being read), never once the session is over.
    pub fn wants_input(&self) -> bool {
        self.write_deadline.is_none() && !self.is_over()
    }

    /// A login is waiting for its answer.
    #[cfg(test)]
    pub fn login_pending(&self) -> bool {
        self.login_pending
    }

    /// Bytes to send; the shell writes them by the deadline of [`Core::start_write`].
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        if self.write_failed {
            return None;
        }
        if let Some(out) = self.out.pop_front() {
            return Some(out);
        }
        self.apf.poll_transmit()
    }

    /// A write starts now; it must end by the returned deadline.
    pub fn start_write(&mut self, now: Instant) -> Instant {
        let deadline = now + self.settings.write_timeout;
        self.write_deadline = Some(deadline);
        deadline
    }

    /// Reading from the peer failed.
    pub fn read_failed(&mut self, e: std::io::Error) {
        self.set_end(End::Io(e.to_string()));
    }

    /// The write started by [`Core::start_write`] ended.
    pub fn write_done(&mut self, result: std::io::Result<()>) {
        self.write_deadline = None;
        if let Err(e) = result {
            self.write_failed = true;
            self.set_end(End::Io(e.to_string()));
        }
    }

    pub fn poll_action(&mut self) -> Option<Action<R>> {
        self.actions.pop_front()
    }

    /// When [`Core::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next = self.write_deadline;
        let mut at = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n: Instant| n.min(t)));
            }
        };
        if !self.is_over() {
            at(self.apf.poll_timeout());
            at(self.presence.retry_at);
            for p in &self.pending {
                at(Some(p.deadline));
            }
        }
        next
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.write_deadline.is_some_and(|d| d <= now) {
            self.write_deadline = None;
            self.write_failed = true;
            self.set_end(End::Io("write timed out: the peer is not reading".into()));
            return;
        }
        if self.is_over() {
            return;
        }
        self.apf.handle_timeout(now);
        while let Some(i) = self.pending.iter().position(|p| p.deadline <= now) {
            let p = self.pending.swap_remove(i);
            let _ = self.apf.close_channel(p.channel);
            self.fail(p, TunnelError::Timeout, "device did not answer in time");
        }
        if self.presence.retry_at.is_some_and(|at| at <= now) {
            self.presence.retry_at = None;
            self.presence_round();
        }
        self.process_events(now);
    }

    /// Bytes from the peer; empty at the end of its stream.
    pub fn handle_input(&mut self, now: Instant, bytes: &[u8]) {
        if self.is_over() {
            return;
        }
        if bytes.is_empty() {
            return self.set_end(End::PeerClosed);
        }
        if self.phase == Phase::Probing {
            self.probe.extend_from_slice(bytes);
            if self.probe.len() < 3 && b"GET".starts_with(&self.probe) {
                return;
            }
            let first = std::mem::take(&mut self.probe);
            if first.starts_with(b"GET") {
                self.actions.push_back(Action::Count(Count::HttpProbe));
                self.out.push_back(BANNER.to_vec());
                return self.set_end(End::HttpProbe);
            }
            self.phase = Phase::Apf;
            return self.apf_input(now, &first);
        }
        self.apf_input(now, bytes);
    }

    fn apf_input(&mut self, now: Instant, bytes: &[u8]) {
        let ignored = self.apf.keepalives_ignored();
        let result = self.apf.handle_input(now, bytes);
        let flooded = self.apf.keepalives_ignored() - ignored;
        if flooded > 0 {
            self.actions
                .push_back(Action::Count(Count::KeepalivesIgnored(flooded)));
        }
        if let Err(e) = result {
            self.actions.push_back(Action::Count(Count::ProtocolError));
            tracing::info!(device = ?self.guid, peer = %self.peer, error = %e, "APF protocol error; disconnecting");
            self.set_end(End::ProtocolError(e.to_string()));
        }
        self.process_events(now);
    }

    /// The node is draining: the device is told to go (it reconnects elsewhere).
    pub fn drain(&mut self) {
        if self.draining || self.is_over() {
            return;
        }
        self.draining = true;
        self.apf.disconnect(DisconnectReason::BY_APPLICATION);
        self.set_end(End::Drain);
    }

    /// The device API asked for the session to end: the device is told, presence and the
    /// `disconnected` event follow as for any other end, and the device reconnects by itself.
    pub fn close_on_request(&mut self) {
        if self.is_over() || self.end.is_some() {
            return;
        }
        tracing::info!(device = ?self.guid, "closing the session on request");
        self.apf.disconnect(DisconnectReason::BY_APPLICATION);
        self.set_end(End::Requested);
    }

    fn set_end(&mut self, end: End) {
        if self.end.is_none() {
            self.end = Some(end);
        }
    }

    fn process_events(&mut self, now: Instant) {
        while let Some(ev) = self.apf.poll_event() {
            match ev {
                ServerEvent::ProtocolVersion { guid, major, minor } => {
                    self.guid = Some(guid);
                    self.apf_version = (major, minor);
                }
                ServerEvent::AuthRequest { username, password } => {
                    self.auth_attempt += 1;
                    let Some(guid) = self.guid.clone() else {
                        self.apf.reject_auth();
                        continue;
                    };
                    self.login_pending = true;
                    self.actions.push_back(Action::Login {
                        guid,
                        username,
                        // Zeroised when the login ends, whatever its outcome.
                        password: zeroize::Zeroizing::new(password.expose().as_bytes().to_vec()),
                        attempt: self.auth_attempt,
                    });
                }
                ServerEvent::Ready { .. } => self.on_ready(now),
                ServerEvent::KeepAlive => self.actions.push_back(Action::Count(Count::KeepAlive)),
                ServerEvent::ChannelOpened { id } => {
                    if let Some(p) = self.pending.iter_mut().find(|p| p.channel == id) {
                        if let Some(req) = p.request.take() {
                            let _ = self.apf.send_data(id, &req);
                        }
                    }
                }
                ServerEvent::ChannelOpenFailed { id, reason } => {
                    if let Some(p) = self.take_pending(id) {
                        let detail = format!("device refused the channel: {reason}");
                        self.fail(p, TunnelError::ChannelRefused, &detail);
                    }
                }
                ServerEvent::ChannelData { id, data } => self.on_channel_data(now, id, &data),
                ServerEvent::ChannelAborted { id, why } => {
                    self.actions.push_back(Action::Count(Count::ChannelAbort));
                    if let Some(p) = self.take_pending(id) {
                        let detail = format!("channel ended: {why}");
                        self.fail(p, TunnelError::BadResponse, &detail);
                    }
                }
                ServerEvent::ChannelClosed { id } => {
                    if let Some(mut p) = self.take_pending(id) {
                        match p.framer.advance(&p.response, true) {
                            Ok(Some(len)) => self.answer(now, p, len),
                            _ => self.fail(
                                p,
                                TunnelError::DeviceDropped,
                                "device closed the channel mid-response",
                            ),
                        }
                    }
                }
                ServerEvent::PeerDisconnected { reason } => {
                    self.set_end(End::PeerDisconnect(reason))
                }
                ServerEvent::IdleTimeout => {
                    self.actions.push_back(Action::Count(Count::IdleTimeout));
                    tracing::info!(device = ?self.guid, "session idle past the timeout; dropped");
                    self.set_end(End::IdleTimeout);
                }
                ServerEvent::HandshakeTimeout => self.set_end(End::HandshakeTimeout),
            }
        }
    }

    /// The login's answer.
    pub fn login_done(&mut self, now: Instant, result: LoginResult) {
        self.login_pending = false;
        if self.is_over() {
            return;
        }
        match result {
            LoginResult::Accepted { tenant, seen } => {
                self.presence.seen = seen;
                self.tenant = tenant;
                self.apf.accept_auth();
            }
            LoginResult::Rejected(why) => {
                let guid = self.guid.as_deref().unwrap_or_default();
                tracing::debug!(device = %guid, peer = %self.peer, reason = why.as_str(), attempt = self.auth_attempt, "device login refused");
                self.apf.reject_auth();
                if self.apf.is_closed() {
                    self.set_end(End::AuthFailed);
                }
            }
        }
        self.process_events(now);
    }

    fn on_ready(&mut self, now: Instant) {
        let Some(guid) = self.guid.clone() else {
            return;
        };
        let since_start = chrono::Duration::from_std(now - self.started).unwrap_or_default();
        self.connected_at = (self.wall_start + since_start).to_rfc3339();
        self.ready_at = Some(now);
        self.actions.push_back(Action::Connected);
        self.connected_pending = Some(proto::DeviceConnected {
            node: self.settings.node.clone(),
            session: self.session_hex(),
            remote_addr: self.peer.to_string(),
            apf_major: self.apf_version.0,
            apf_minor: self.apf_version.1,
        });
        self.presence_round();
        tracing::debug!(device = %guid, peer = %self.peer, "device connected");
    }

    /// Publishes `connected` once the first presence write has an answer.
    fn flush_connected(&mut self) {
        let (Some(connected), Some(guid)) = (self.connected_pending.take(), self.guid.clone())
        else {
            return;
        };
        self.actions.push_back(Action::Emit {
            tenant: self.tenant.clone(),
            guid,
            kind: "connected",
            payload: Payload::DeviceConnected(connected),
        });
    }

    // ----- presence -----

    /// The node was cut off from NATS long enough to be declared lost: check that the
    /// recorded entry is still this session's.
    pub fn recheck_presence(&mut self) {
        if self.presence.rev.is_none() || self.is_over() {
            return;
        }
        if self.presence.op.is_some() {
            // What is in flight may have started before the cut: check after it.
            self.presence.recheck_after = true;
            return;
        }
        self.presence.recheck = true;
        // The re-check's read is the retry, too.
        self.presence.retry_at = None;
        self.presence_round();
    }

    fn presence_value(&self) -> Presence {
        Presence {
            node: self.settings.node.clone(),
            session: self.session_hex(),
            tenant: self.tenant.clone(),
            connected_at: self.connected_at.clone(),
            remote: self.peer.to_string(),
        }
    }

    /// Starts recording this session in presence, only over the revision it last saw (see
    /// [`Seen`]); a retry, a re-check or a login that could not read presence reads first,
    /// since a lost write may have landed or another session may own the device by now.
    fn presence_round(&mut self) {
        let Some(guid) = self.guid.clone() else {
            return;
        };
        if self.presence.op.is_some() {
            self.presence.again = true;
            return;
        }
        self.presence.conflicts = 0;
        let p = &self.presence;
        if p.recheck || p.retrying || p.seen == Seen::Unknown {
            self.presence.op = Some(PresenceOp::Read);
            self.actions.push_back(Action::ReadPresence { guid });
        } else {
            let revision = match &p.seen {
                Seen::At { revision, .. } => *revision,
                Seen::Unknown => 0,
            };
            self.write_presence(guid, revision);
        }
    }

    fn write_presence(&mut self, guid: String, revision: u64) {
        self.presence.op = Some(PresenceOp::Write);
        let value = self.presence_value();
        self.actions.push_back(Action::WritePresence {
            guid,
            revision,
            value,
        });
    }

    /// The answer to [`Action::ReadPresence`].
    pub fn presence_read(&mut self, now: Instant, read: PresenceRead) {
        let op = self.presence.op.take();
        let Some(guid) = self.guid.clone() else {
            return;
        };
        let session = self.session_hex();
        if op == Some(PresenceOp::FinalRead) {
            let found = read
                .ok()
                .map(|current| claim(current, &session, &self.connected_at, &Seen::Unknown));
            let own = match found {
                Some(Claim::Ours(rev)) => Some(rev),
                _ => None,
            };
            if self.recheck_outstanding()
                && matches!(found, Some(Claim::Free(_) | Claim::Replace { .. }))
            {
                // Recorded once, removed since: reaped, and the reaper published
                // `disconnected`. (Taken by a newer session is not a reap: ours to publish.)
                self.presence.reaped = true;
            }
            return self.finish_steps(now, own);
        }
        if self.is_over() {
            // A read that was in flight when the session ended: what it says of a re-check
            // still counts.
            if let Ok(current) = &read {
                if self.presence.recheck {
                    self.presence.recheck = false;
                    match claim(
                        current.clone(),
                        &session,
                        &self.connected_at,
                        &self.presence.seen,
                    ) {
                        Claim::Ours(_) => {}
                        Claim::Taken(_) => self.presence.rev = None,
                        Claim::Free(_) | Claim::Replace { .. } => {
                            self.presence.rev = None;
                            self.presence.reaped = true;
                        }
                    }
                }
            }
            return self.closing_op_done(now);
        }
        let current = match read {
            Ok(current) => current,
            Err(e) => return self.retry_presence(now, &format!("presence not readable: {e}")),
        };
        match claim(current, &session, &self.connected_at, &self.presence.seen) {
            Claim::Ours(rev) => {
                self.presence.recheck = false;
                self.presence_recorded(rev);
            }
            Claim::Taken(other) => self.presence_taken(&other),
            Claim::Free(_) | Claim::Replace { .. } if self.presence.recheck => {
                // Our entry is gone: another node reaped it (and published our
                // `disconnected`); the device reconnects and is recorded afresh.
                self.presence.recheck = false;
                self.presence.rev = None;
                self.presence.reaped = true;
                self.presence_taken("none (reaped)");
            }
            Claim::Free(rev) => self.write_presence(guid, rev),
            Claim::Replace {
                revision,
                node,
                session,
            } => {
                self.actions.push_back(Action::SupersedeOlder {
                    node,
                    guid: guid.clone(),
                    session,
                });
                self.write_presence(guid, revision);
            }
        }
    }

    /// The answer to [`Action::WritePresence`].
    pub fn presence_written(&mut self, now: Instant, written: Written) {
        self.presence.op = None;
        if self.is_over() {
            // A write that landed after the end is this session's entry: release it. One whose
            // answer was lost may have landed too: the final read finds it.
            match written {
                Written::Ok(rev) => self.presence.rev = Some(rev),
                Written::Failed(_) => self.presence.rev = None,
                Written::Conflict => {}
            }
            return self.closing_op_done(now);
        }
        match written {
            Written::Ok(rev) => self.presence_recorded(rev),
            // The entry changed since it was seen (a superseded session deleting its own,
            // usually): read and decide again, a few times at most.
            Written::Conflict => {
                // Our own recorded entry changed under us, or a re-check is owed: the read
                // that follows is judged as a re-check (gone means reaped).
                if std::mem::take(&mut self.presence.recheck_after) || self.presence.rev.is_some() {
                    self.presence.recheck = true;
                }
                self.presence.conflicts += 1;
                if self.presence.conflicts >= PRESENCE_CONFLICTS {
                    return self.retry_presence(now, "presence kept changing");
                }
                let Some(guid) = self.guid.clone() else {
                    return;
                };
                self.presence.op = Some(PresenceOp::Read);
                self.actions.push_back(Action::ReadPresence { guid });
            }
            Written::Failed(e) => self.retry_presence(now, &e),
        }
    }

    fn presence_recorded(&mut self, rev: u64) {
        if std::mem::take(&mut self.presence.retrying) {
            tracing::info!(device = ?self.guid, "presence recorded after retrying");
        }
        self.presence.retry_at = None;
        self.presence.rev = Some(rev);
        self.presence.seen = Seen::At {
            revision: rev,
            superseded: None,
        };
        self.flush_connected();
        // Recorded: a round asked for meanwhile (a retry's timer) has nothing left to do,
        // unless a re-check is owed.
        self.presence.again = false;
        if std::mem::take(&mut self.presence.recheck_after) {
            self.presence.recheck = true;
            self.presence_round();
        }
    }

    /// While NATS is unreachable the device stays connected but cannot be found by callers,
    /// so a failed attempt is tried again later.
    fn retry_presence(&mut self, now: Instant, why: &str) {
        tracing::warn!(device = ?self.guid, error = why, "presence not recorded; will retry");
        self.actions
            .push_back(Action::Count(Count::PresenceWriteFailed));
        self.presence.again = false;
        self.presence.retrying = true;
        self.presence.retry_at = Some(now + self.settings.presence_retry);
        if std::mem::take(&mut self.presence.recheck_after) {
            self.presence.recheck = true;
        }
        self.flush_connected();
    }

    /// Another session recorded the device after this one logged in: it is the device's
    /// session now, and this one steps aside without touching its entry.
    fn presence_taken(&mut self, other: &str) {
        tracing::info!(device = ?self.guid, newer = other, "device recorded by another session; closing this one");
        self.presence.retry_at = None;
        self.presence.again = false;
        self.presence.recheck = false;
        self.presence.recheck_after = false;
        // The entry is the other session's now; ours is gone.
        self.presence.rev = None;
        self.flush_connected();
        self.close_for_another();
    }

    /// A newer session of the device asked this one to close.
    pub fn supersede(&mut self) {
        if self.end.is_some() {
            return;
        }
        tracing::info!(device = ?self.guid, "device reconnected; closing this older session");
        self.close_for_another();
    }

    fn close_for_another(&mut self) {
        // Leave the registry first, so the newer session is the only one requests reach.
        if let Some(guid) = self.guid.clone() {
            self.actions.push_back(Action::Deregister { guid });
        }
        self.actions.push_back(Action::Count(Count::Superseded));
        self.apf.disconnect(DisconnectReason::BY_APPLICATION);
        self.set_end(End::Superseded);
    }

    // ----- the tunnel -----

    /// A caller's request for the device.
    pub fn http_request(&mut self, now: Instant, req: HttpRequest<R>) {
        let opened = self.check_request(&req).and_then(|port| {
            self.apf.open_channel(port).map_err(|e| {
                (
                    TunnelError::NotConnected,
                    format!("cannot open channel: {e}"),
                )
            })
        });
        match opened {
            Ok(channel) => {
                self.actions.push_back(Action::Count(Count::ChannelOpen));
                self.pending.push(Pending {
                    channel,
                    reply: req.reply,
                    request: Some(req.payload),
                    response: Vec::new(),
                    framer: homeport_http1::ResponseFramer::new(),
                    started: now,
                    deadline: now + self.settings.tunnel_timeout,
                    trace: req.trace,
                });
            }
            Err(refused) => self.actions.push_back(Action::Reply {
                to: req.reply,
                result: Err(refused),
                latency: None,
            }),
        }
    }

    /// The port a request may go to, or why it is refused.
    fn check_request(&self, req: &HttpRequest<R>) -> Result<u32, (TunnelError, String)> {
        if self.ready_at.is_none() || self.is_over() {
            return Err((
                TunnelError::NotConnected,
                "device session is not ready".into(),
            ));
        }
        let port = match req.port.as_deref() {
            None => tunnel::DEFAULT_PORT,
            Some(v) => match v.parse::<u32>() {
                Ok(p) if tunnel::ALLOWED_PORTS.contains(&p) => p,
                _ => return Err((TunnelError::BadRequest, format!("port {v} not allowed"))),
            },
        };
        if req.payload.len() > tunnel::MAX_REQUEST_BYTES {
            return Err((TunnelError::BadRequest, "request too large".into()));
        }
        if self.pending.len() >= self.settings.tunnel_concurrency {
            let detail = "too many requests in flight for this device";
            return Err((TunnelError::Busy, detail.into()));
        }
        Ok(port)
    }

    fn take_pending(&mut self, id: ChannelId) -> Option<Pending<R>> {
        let i = self.pending.iter().position(|p| p.channel == id)?;
        Some(self.pending.swap_remove(i))
    }

    fn on_channel_data(&mut self, now: Instant, id: ChannelId, data: &[u8]) {
        let Some(i) = self.pending.iter().position(|p| p.channel == id) else {
            return;
        };
        let p = &mut self.pending[i];
        if p.response.len() + data.len() > tunnel::MAX_RESPONSE_BYTES {
            let p = self.pending.swap_remove(i);
            let _ = self.apf.close_channel(id);
            return self.fail(p, TunnelError::BadResponse, "response too large");
        }
        p.response.extend_from_slice(data);
        match p.framer.advance(&p.response, false) {
            Ok(None) => {}
            Ok(Some(len)) => {
                let p = self.pending.swap_remove(i);
                let _ = self.apf.close_channel(id);
                self.answer(now, p, len);
            }
            Err(e) => {
                let p = self.pending.swap_remove(i);
                let _ = self.apf.close_channel(id);
                let detail = format!("malformed HTTP from device: {e}");
                self.fail(p, TunnelError::BadResponse, &detail);
            }
        }
    }

    fn answer(&mut self, now: Instant, mut p: Pending<R>, len: usize) {
        p.response.truncate(len);
        self.actions.push_back(Action::Reply {
            to: p.reply,
            result: Ok(p.response),
            latency: Some(now.saturating_duration_since(p.started)),
        });
    }

    fn fail(&mut self, p: Pending<R>, error: TunnelError, detail: &str) {
        tracing::info!(
            device = ?self.guid,
            trace = p.trace.as_deref().unwrap_or("-"),
            %error,
            detail,
            "tunnel request failed"
        );
        self.actions.push_back(Action::Reply {
            to: p.reply,
            result: Err((error, detail.to_string())),
            latency: None,
        });
    }

    // ----- the end -----

    /// Starts the final steps once the session is over (or the shell gives up on it): every
    /// waiting caller is answered, the registry entry and this session's own presence entry
    /// are released, and a session that was connected publishes its `disconnected` (unless
    /// another node reaped it and published it already). Run the actions until
    /// [`Core::is_finished`].
    pub fn close(&mut self, now: Instant) {
        if matches!(self.phase, Phase::Closing | Phase::Finished) {
            return;
        }
        self.set_end(End::PeerClosed);
        self.phase = Phase::Closing;
        self.write_deadline = None;
        self.presence.retry_at = None;
        if let Some(guid) = self.guid.clone() {
            // Unconditionally: a login abandoned mid-way may have registered already.
            self.actions.push_back(Action::Deregister { guid });
        }
        for p in std::mem::take(&mut self.pending) {
            self.fail(p, TunnelError::DeviceDropped, "device disconnected");
        }
        if self.ready_at.is_none() || self.guid.is_none() {
            self.phase = Phase::Finished;
            return;
        }
        if self.presence.op.is_some() {
            // Its answer says which entry is ours (a write may land) or whether we were reaped.
            self.presence.closing_waits = true;
            return;
        }
        self.release_presence(now);
    }

    /// A re-check was asked for and has not found this session's entry yet.
    fn recheck_outstanding(&self) -> bool {
        self.presence.recheck || self.presence.recheck_after
    }

    /// The presence operation in flight at the end answered.
    fn closing_op_done(&mut self, now: Instant) {
        if self.phase == Phase::Closing && std::mem::take(&mut self.presence.closing_waits) {
            self.release_presence(now);
        }
    }

    fn release_presence(&mut self, now: Instant) {
        match self.presence.rev {
            Some(rev) if !self.recheck_outstanding() => self.finish_steps(now, Some(rev)),
            _ if self.presence.reaped => self.finish_steps(now, None),
            // A write whose answer was lost may have landed, or a re-check is owed: find our
            // own entry before releasing it.
            _ => {
                self.presence.op = Some(PresenceOp::FinalRead);
                let guid = self.guid.clone().unwrap_or_default();
                self.actions.push_back(Action::ReadPresence { guid });
            }
        }
    }

    fn finish_steps(&mut self, now: Instant, own: Option<u64>) {
        let (Some(guid), Some(ready_at)) = (self.guid.clone(), self.ready_at) else {
            self.phase = Phase::Finished;
            return;
        };
        if let Some(revision) = own {
            // Only our own entry: a newer session of the device has a newer revision.
            self.actions.push_back(Action::DeletePresence {
                guid: guid.clone(),
                revision,
            });
        }
        self.phase = Phase::Finished;
        self.flush_connected();
        if self.presence.reaped {
            // The reaper published this session's one `disconnected` (node-lost).
            return;
        }
        let end = self.end.clone().unwrap_or(End::PeerClosed);
        tracing::debug!(device = %guid, reason = end.code(), "device disconnected");
        self.actions.push_back(Action::Emit {
            tenant: self.tenant.clone(),
            guid,
            kind: "disconnected",
            payload: Payload::DeviceDisconnected(proto::DeviceDisconnected {
                node: self.settings.node.clone(),
                session: self.session_hex(),
                reason: end.code().to_string(),
                detail: end.detail(),
                duration_seconds: now.saturating_duration_since(ready_at).as_secs(),
            }),
        });
    }

    /// The final steps are decided (the shell still runs the queued actions).
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    /// A session that reached ready (and counts among the connected ones).
    pub fn was_connected(&self) -> bool {
        self.ready_at.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use homeport_apf::{DeviceConfig, DeviceEvent, DeviceSession, Secret};

    const T1: &str = "2026-12-06T10:00:00+00:00";
    const T2: &str = "2026-12-06T10:00:05+00:00";
    const SESSION: u64 = 0xfeed;
    const OK_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

    /// What a login that found no entry saw.
    const NONE_SEEN: Seen = Seen::At {
        revision: 0,
        superseded: None,
    };

    fn entry(session: &str, connected_at: &str) -> Presence {
        Presence {
            node: "node-x".into(),
            session: session.into(),
            tenant: "acme".into(),
            connected_at: connected_at.into(),
            remote: "192.0.2.1:1".into(),
        }
    }

    fn settings() -> Settings {
        Settings {
            apf: ServerConfig {
                handshake_timeout: Duration::from_secs(30),
                idle_timeout: Duration::from_secs(90),
                ..ServerConfig::default()
            },
            write_timeout: Duration::from_secs(10),
            tunnel_timeout: Duration::from_secs(20),
            tunnel_concurrency: 2,
            presence_retry: Duration::from_secs(3),
            node: "node-a".into(),
        }
    }

    /// A core and a device (the APF crate's device session) joined in memory, on a clock
    /// that moves only when told.
    struct Rig {
        core: Core<u32>,
        dev: DeviceSession,
        now: Instant,
        actions: Vec<Action<u32>>,
        dev_events: Vec<DeviceEvent>,
    }

    impl Rig {
        fn new() -> Self {
            let now = Instant::now();
            let wall = chrono::DateTime::parse_from_rfc3339(T2).unwrap().to_utc();
            let peer: SocketAddr = "192.0.2.7:40000".parse().unwrap();
            let mut uuid = [0u8; 16];
            uuid[0] = 7;
            let dev =
                DeviceSession::new(DeviceConfig::new(uuid, "admin", Secret::new("P@ss")), now);
            Self {
                core: Core::new(settings(), peer, SESSION, now, wall),
                dev,
                now,
                actions: Vec::new(),
                dev_events: Vec::new(),
            }
        }

        /// Moves bytes both ways until both sides are quiet; every write completes at once.
        fn pump(&mut self) {
            loop {
                let mut moved = false;
                while let Some(out) = self.core.poll_transmit() {
                    self.core.start_write(self.now);
                    let _ = self.dev.handle_input(self.now, &out);
                    self.core.write_done(Ok(()));
                    moved = true;
                }
                while let Some(out) = self.dev.poll_transmit() {
                    self.core.handle_input(self.now, &out);
                    moved = true;
                }
                while let Some(ev) = self.dev.poll_event() {
                    self.dev_events.push(ev);
                }
                while let Some(a) = self.core.poll_action() {
                    self.actions.push(a);
                }
                if !moved {
                    break;
                }
            }
        }

        fn take(&mut self) -> Vec<Action<u32>> {
            self.pump();
            std::mem::take(&mut self.actions)
        }

        fn advance(&mut self, by: Duration) {
            self.now += by;
            self.core.handle_timeout(self.now);
            self.dev.handle_timeout(self.now);
            self.pump();
        }

        /// Logs in with the given view of presence; returns what the core asked for then.
        fn login(&mut self, seen: Seen) -> Vec<Action<u32>> {
            let actions = self.take();
            assert!(
                matches!(&actions[..], [Action::Login { guid, attempt: 1, .. }] if guid == &self.dev.guid()),
                "{actions:?}"
            );
            assert!(self.core.login_pending());
            self.core.login_done(
                self.now,
                LoginResult::Accepted {
                    tenant: "acme".into(),
                    seen,
                },
            );
            let actions = self.take();
            assert!(self.dev.is_ready(), "the device got through the handshake");
            actions
        }

        /// A session recorded at revision 1 whose re-check read is out.
        fn rechecking() -> Self {
            let mut rig = Self::new();
            rig.login(NONE_SEEN);
            rig.core.presence_written(rig.now, Written::Ok(1));
            rig.take();
            rig.core.recheck_presence();
            assert_eq!(reads(&rig.take()), 1, "nothing in flight: read at once");
            rig
        }

        fn own(&self) -> Presence {
            let mut p = self.core.presence_value();
            p.connected_at = T2.into();
            p
        }

        fn request(&mut self, reply: u32, port: Option<&str>) {
            self.core.http_request(
                self.now,
                HttpRequest {
                    reply,
                    port: port.map(str::to_owned),
                    payload: b"POST /wsman HTTP/1.1\r\nContent-Length: 0\r\n\r\n".to_vec(),
                    trace: None,
                },
            );
            self.pump();
        }
    }

    fn writes(actions: &[Action<u32>]) -> Vec<u64> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::WritePresence { revision, .. } => Some(*revision),
                _ => None,
            })
            .collect()
    }

    fn reads(actions: &[Action<u32>]) -> usize {
        actions
            .iter()
            .filter(|a| matches!(a, Action::ReadPresence { .. }))
            .count()
    }

    fn deletes(actions: &[Action<u32>]) -> Vec<u64> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::DeletePresence { revision, .. } => Some(*revision),
                _ => None,
            })
            .collect()
    }

    fn emitted(actions: &[Action<u32>]) -> Vec<(&'static str, String)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Emit { kind, payload, .. } => Some((
                    *kind,
                    match payload {
                        Payload::DeviceDisconnected(d) => d.reason.clone(),
                        _ => String::new(),
                    },
                )),
                _ => None,
            })
            .collect()
    }

    /// A session's two events: `connected`, then `disconnected` with `reason`.
    fn connected_then(reason: &str) -> Vec<(&'static str, String)> {
        vec![
            ("connected", String::new()),
            ("disconnected", reason.into()),
        ]
    }

    fn replies(actions: &[Action<u32>]) -> Vec<(u32, Result<Vec<u8>, TunnelError>)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Reply { to, result, .. } => Some((*to, result.clone().map_err(|(e, _)| e))),
                _ => None,
            })
            .collect()
    }

    fn close(rig: &mut Rig) -> Vec<Action<u32>> {
        rig.core.close(rig.now);
        rig.take()
    }

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
        let old = Some((5, Some(entry("old", T1))));
        assert_eq!(claim(old, "me", T2, &at(5, Some("old"))), Claim::Free(5));
        // A session that connected later owns the device: never overwritten.
        let newer = Some((8, Some(entry("newer", "2026-12-06T10:00:09+00:00"))));
        assert_eq!(
            claim(newer, "me", T2, &at(5, Some("old"))),
            Claim::Taken("newer".into())
        );
        // An earlier session the login did not close (it could not read, or that one
        // recorded itself after the read) is replaced and told; a later one is not.
        let replace = Claim::Replace {
            revision: 3,
            node: "node-x".into(),
            session: "old".into(),
        };
        let earlier = Some((3, Some(entry("old", T1))));
        assert_eq!(claim(earlier.clone(), "me", T2, &Seen::Unknown), replace);
        assert_eq!(claim(earlier, "me", T2, &at(0, None)), replace);
        let later = Some((4, Some(entry("newer", T2))));
        assert_eq!(
            claim(later.clone(), "me", T1, &Seen::Unknown),
            Claim::Taken("newer".into())
        );
        assert_eq!(
            claim(later, "me", T1, &at(0, None)),
            Claim::Taken("newer".into())
        );
    }

    #[test]
    fn an_http_get_gets_the_banner_and_nothing_else() {
        let mut rig = Rig::new();
        let mut core = Core::<u32>::new(
            settings(),
            "192.0.2.9:1".parse().unwrap(),
            1,
            rig.now,
            chrono::Utc::now(),
        );
        core.handle_input(rig.now, b"GE");
        assert!(
            core.poll_transmit().is_none() && !core.is_over(),
            "two bytes decide nothing"
        );
        core.handle_input(rig.now, b"T / HTTP/1.1\r\n\r\n");
        assert!(core
            .poll_transmit()
            .is_some_and(|b| b.starts_with(b"HTTP/1.1 200 OK")));
        assert_eq!(core.end(), Some(&End::HttpProbe));
        assert!(!core.wants_input());
        // A device's first byte is APF's, never a G.
        rig.pump();
        assert!(matches!(rig.take()[..], [Action::Login { .. }]));
    }

    #[test]
    fn the_handshake_deadline_runs_from_accept_whatever_was_received() {
        let mut core = Core::<u32>::new(
            settings(),
            "192.0.2.9:1".parse().unwrap(),
            1,
            Instant::now(),
            chrono::Utc::now(),
        );
        let start = core.started;
        core.handle_input(start, b"G");
        assert_eq!(core.poll_timeout(), Some(start + Duration::from_secs(30)));
        core.handle_timeout(start + Duration::from_secs(29));
        assert!(!core.is_over());
        core.handle_timeout(start + Duration::from_secs(30));
        assert_eq!(core.end(), Some(&End::HandshakeTimeout));

        // A login that never answers does not stretch it either.
        let mut rig = Rig::new();
        assert!(matches!(rig.take()[..], [Action::Login { .. }]));
        rig.advance(Duration::from_secs(30));
        assert_eq!(rig.core.end(), Some(&End::HandshakeTimeout));
        rig.core.login_done(
            rig.now,
            LoginResult::Accepted {
                tenant: "acme".into(),
                seen: Seen::default(),
            },
        );
        assert!(!rig.dev.is_ready(), "a late login is not accepted");
        let actions = close(&mut rig);
        assert!(emitted(&actions).is_empty(), "never connected: no event");
        assert!(rig.core.is_finished());
    }

    #[test]
    fn login_records_presence_over_the_revision_seen_and_release_is_conditional() {
        let mut rig = Rig::new();
        let actions = rig.login(Seen::At {
            revision: 4,
            superseded: Some("old".into()),
        });
        assert!(matches!(actions[0], Action::Connected), "{actions:?}");
        assert_eq!(
            writes(&actions),
            [4],
            "over the superseded entry's revision"
        );
        let Some(Action::WritePresence { value, .. }) = actions
            .iter()
            .find(|a| matches!(a, Action::WritePresence { .. }))
        else {
            unreachable!()
        };
        assert_eq!(
            (value.node.as_str(), value.session.as_str()),
            ("node-a", "000000000000feed")
        );
        assert_eq!(value.connected_at, T2, "from the clock argument");
        assert!(
            emitted(&actions).is_empty(),
            "`connected` waits for presence: a caller reacting to it finds the device"
        );

        rig.core.presence_written(rig.now, Written::Ok(5));
        assert_eq!(emitted(&rig.take()), [("connected", String::new())]);
        rig.dev.disconnect(DisconnectReason::BY_APPLICATION);
        rig.pump();
        assert!(rig.core.is_over());
        let actions = close(&mut rig);
        assert_eq!(deletes(&actions), [5], "only its own revision");
        assert_eq!(
            emitted(&actions),
            [("disconnected", "peer_disconnect".into())]
        );
        assert!(rig.core.is_finished());
    }

    #[test]
    fn a_conflicting_write_reads_again_and_steps_aside_for_a_newer_session() {
        let mut rig = Rig::new();
        rig.login(Seen::At {
            revision: 4,
            superseded: Some("old".into()),
        });
        // The superseded session deleted its entry meanwhile: read, then write over the delete.
        rig.core.presence_written(rig.now, Written::Conflict);
        assert_eq!(reads(&rig.take()), 1);
        rig.core.presence_read(rig.now, Ok(Some((5, None))));
        assert_eq!(writes(&rig.take()), [5]);
        // Now a newer session recorded itself: never overwritten, this one closes.
        rig.core.presence_written(rig.now, Written::Conflict);
        assert_eq!(reads(&rig.take()), 1);
        rig.core
            .presence_read(rig.now, Ok(Some((6, Some(entry("newer", T2))))));
        let actions = rig.take();
        assert!(writes(&actions).is_empty());
        assert!(
            matches!(
                &actions[..],
                [
                    Action::Emit {
                        kind: "connected",
                        ..
                    },
                    Action::Deregister { .. },
                    Action::Count(Count::Superseded)
                ]
            ),
            "the first answer releases `connected`, then it steps aside: {actions:?}"
        );
        assert_eq!(rig.core.end(), Some(&End::Superseded));
        assert!(
            rig.dev_events
                .iter()
                .any(|e| matches!(e, DeviceEvent::PeerDisconnected { .. })),
            "the device is told"
        );
        // At the end it looks for an entry of its own and leaves the newer one alone.
        let actions = close(&mut rig);
        assert_eq!(reads(&actions), 1);
        assert!(!rig.core.is_finished());
        rig.core
            .presence_read(rig.now, Ok(Some((6, Some(entry("newer", T2))))));
        let actions = rig.take();
        assert!(deletes(&actions).is_empty());
        assert_eq!(emitted(&actions), [("disconnected", "superseded".into())]);
    }

    #[test]
    fn conflicts_without_end_wait_for_the_retry_interval() {
        let mut rig = Rig::new();
        rig.login(NONE_SEEN);
        for rev in 1..=3 {
            rig.core.presence_written(rig.now, Written::Conflict);
            assert_eq!(reads(&rig.take()), 1);
            rig.core.presence_read(rig.now, Ok(Some((rev, None))));
            assert_eq!(writes(&rig.take()), [rev]);
        }
        rig.core.presence_written(rig.now, Written::Conflict);
        let actions = rig.take();
        assert!(
            matches!(
                &actions[..],
                [
                    Action::Count(Count::PresenceWriteFailed),
                    Action::Emit {
                        kind: "connected",
                        ..
                    }
                ]
            ),
            "the fourth conflict waits (and releases `connected`): {actions:?}"
        );
        assert_eq!(
            rig.core.poll_timeout(),
            Some(rig.now + Duration::from_secs(3))
        );
    }

    #[test]
    fn a_failed_write_waits_then_reads_before_writing_again() {
        let mut rig = Rig::new();
        rig.login(NONE_SEEN);
        rig.core
            .presence_written(rig.now, Written::Failed("no responders".into()));
        let actions = rig.take();
        assert!(
            matches!(
                &actions[..],
                [
                    Action::Count(Count::PresenceWriteFailed),
                    Action::Emit {
                        kind: "connected",
                        ..
                    }
                ]
            ),
            "{actions:?}"
        );
        rig.advance(Duration::from_millis(2_900));
        assert!(rig.take().is_empty(), "not before the retry interval");
        rig.advance(Duration::from_millis(100));
        let actions = rig.take();
        assert_eq!(
            (reads(&actions), writes(&actions).len()),
            (1, 0),
            "{actions:?}"
        );
        // NATS still down: wait again.
        rig.core.presence_read(rig.now, Err("timed out".into()));
        assert_eq!(rig.take().len(), 1, "counted, nothing else");
        rig.advance(Duration::from_secs(3));
        assert_eq!(reads(&rig.take()), 1);
        // The write whose answer was lost had landed: nothing more to write.
        let own = rig.own();
        rig.core.presence_read(rig.now, Ok(Some((1, Some(own)))));
        assert!(rig.take().is_empty());
        assert!(rig.core.presence.retry_at.is_none() && rig.core.presence.rev == Some(1));
        rig.dev.disconnect(DisconnectReason::BY_APPLICATION);
        rig.pump();
        assert_eq!(deletes(&close(&mut rig)), [1]);
    }

    #[test]
    fn a_login_that_could_not_read_never_overwrites_a_later_session() {
        let mut rig = Rig::new();
        let actions = rig.login(Seen::Unknown);
        assert_eq!((reads(&actions), writes(&actions).len()), (1, 0));
        let later = entry("newer", "2026-12-06T10:00:09+00:00");
        rig.core.presence_read(rig.now, Ok(Some((9, Some(later)))));
        assert_eq!(rig.core.end(), Some(&End::Superseded));
        assert!(writes(&rig.take()).is_empty());
    }

    #[test]
    fn an_older_session_recorded_after_the_login_read_is_replaced_and_told() {
        let mut rig = Rig::new();
        rig.login(NONE_SEEN);
        // An older connection of the device, on another node, recorded itself late.
        rig.core.presence_written(rig.now, Written::Conflict);
        assert_eq!(reads(&rig.take()), 1);
        rig.core
            .presence_read(rig.now, Ok(Some((2, Some(entry("old", T1))))));
        let actions = rig.take();
        assert!(
            matches!(&actions[0], Action::SupersedeOlder { node, session, .. } if node == "node-x" && session == "old"),
            "{actions:?}"
        );
        assert_eq!(writes(&actions), [2]);
        assert!(!rig.core.is_over());
    }

    #[test]
    fn a_recheck_asked_during_a_recheck_reads_after_it() {
        let mut rig = Rig::rechecking();
        rig.core.recheck_presence();
        assert!(rig.take().is_empty(), "one operation at a time");
        // The read in flight started before the reap and finds our entry...
        let own = rig.own();
        rig.core.presence_read(rig.now, Ok(Some((1, Some(own)))));
        // ...so the re-check asked meanwhile reads again, and finds it gone.
        assert_eq!(reads(&rig.take()), 1);
        rig.core.presence_read(rig.now, Ok(Some((2, None))));
        assert_eq!(rig.core.end(), Some(&End::Superseded));
        let actions = close(&mut rig);
        assert!(emitted(&actions).is_empty() && deletes(&actions).is_empty());
    }

    #[test]
    fn a_recheck_in_flight_at_the_end_still_decides_the_event() {
        let mut rig = Rig::rechecking();
        rig.dev.disconnect(DisconnectReason::BY_APPLICATION);
        rig.pump();
        // Deregistered and callers answered at once; presence waits for the read's answer.
        let actions = close(&mut rig);
        assert!(
            matches!(actions[..], [Action::Deregister { .. }]),
            "{actions:?}"
        );
        assert!(!rig.core.is_finished());
        rig.core.presence_read(rig.now, Ok(Some((2, None))));
        let actions = rig.take();
        assert!(rig.core.is_finished());
        assert!(
            emitted(&actions).is_empty(),
            "reaped: the reaper's event is the one"
        );
        assert!(deletes(&actions).is_empty());
    }

    #[test]
    fn a_write_in_flight_at_the_end_is_released_once_it_answers() {
        let mut rig = Rig::new();
        rig.login(NONE_SEEN);
        rig.dev.disconnect(DisconnectReason::BY_APPLICATION);
        rig.pump();
        let actions = close(&mut rig);
        assert!(
            matches!(actions[..], [Action::Deregister { .. }]),
            "{actions:?}"
        );
        rig.core.presence_written(rig.now, Written::Ok(4));
        let actions = rig.take();
        assert_eq!(deletes(&actions), [4]);
        assert_eq!(emitted(&actions), connected_then("peer_disconnect"));
    }

    #[test]
    fn after_a_failed_write_nothing_more_is_sent() {
        let mut rig = Rig::new();
        rig.login(NONE_SEEN);
        // The drain queues a DISCONNECT; the write before it fails.
        rig.core.drain();
        rig.core.start_write(rig.now);
        rig.core.write_done(Err(std::io::Error::other("timed out")));
        assert!(
            rig.core.poll_transmit().is_none(),
            "the DISCONNECT is not sent"
        );
    }

    #[test]
    fn a_recheck_owed_during_a_retry_read_is_not_forgotten() {
        let mut rig = Rig::new();
        rig.login(NONE_SEEN);
        rig.core.presence_written(rig.now, Written::Ok(1));
        // NATS answers badly for a while: a re-check read fails, and its retry is due.
        rig.core.recheck_presence();
        assert_eq!(reads(&rig.take()), 1);
        rig.core.presence_read(rig.now, Err("timed out".into()));
        rig.take();
        rig.advance(Duration::from_secs(3));
        assert_eq!(reads(&rig.take()), 1, "the retry reads");
        // A second re-check while that read is out is owed, and is not forgotten when the
        // read finds the entry.
        rig.core.recheck_presence();
        let own = rig.own();
        rig.core.presence_read(rig.now, Ok(Some((1, Some(own)))));
        assert_eq!(reads(&rig.take()), 1, "the owed re-check reads");
        rig.core.presence_read(rig.now, Ok(Some((2, None))));
        assert_eq!(rig.core.end(), Some(&End::Superseded), "reaped meanwhile");
        let actions = close(&mut rig);
        assert!(emitted(&actions).is_empty() && deletes(&actions).is_empty());
    }

    #[test]
    fn a_recheck_that_finds_a_newer_session_publishes_its_own_disconnected() {
        let mut rig = Rig::rechecking();
        let newer = entry("newer", "2026-12-06T10:00:09+00:00");
        rig.core.presence_read(rig.now, Ok(Some((2, Some(newer)))));
        assert_eq!(rig.core.end(), Some(&End::Superseded));
        assert_eq!(
            reads(&close(&mut rig)),
            1,
            "the final read looks for an entry of ours"
        );
        let newer = entry("newer", "2026-12-06T10:00:09+00:00");
        rig.core.presence_read(rig.now, Ok(Some((2, Some(newer)))));
        let actions = rig.take();
        assert!(
            deletes(&actions).is_empty(),
            "the newer session's entry stays"
        );
        assert_eq!(emitted(&actions), [("disconnected", "superseded".into())]);
    }

    #[test]
    fn a_recheck_in_flight_at_the_end_that_finds_our_entry_releases_it() {
        let mut rig = Rig::rechecking();
        rig.dev.disconnect(DisconnectReason::BY_APPLICATION);
        rig.pump();
        close(&mut rig);
        let own = rig.own();
        rig.core.presence_read(rig.now, Ok(Some((1, Some(own)))));
        let actions = rig.take();
        assert_eq!(deletes(&actions), [1]);
        assert_eq!(
            emitted(&actions),
            [("disconnected", "peer_disconnect".into())]
        );
    }

    #[test]
    fn a_session_whose_entry_was_reaped_closes_without_a_second_disconnected() {
        let mut rig = Rig::new();
        rig.login(NONE_SEEN);
        rig.core.presence_written(rig.now, Written::Ok(1));
        // The entry survived the cut: the session goes on.
        rig.core.recheck_presence();
        assert_eq!(reads(&rig.take()), 1);
        let own = rig.own();
        rig.core.presence_read(rig.now, Ok(Some((1, Some(own)))));
        assert!(rig.take().is_empty() && !rig.core.is_over());
        // Another node reaped it: close, and leave the reaper's `disconnected` the only one.
        rig.core.recheck_presence();
        assert_eq!(reads(&rig.take()), 1);
        rig.core.presence_read(rig.now, Ok(Some((2, None))));
        assert_eq!(rig.core.end(), Some(&End::Superseded));
        let actions = close(&mut rig);
        assert!(deletes(&actions).is_empty(), "{actions:?}");
        assert!(emitted(&actions).is_empty(), "{actions:?}");
        assert!(rig.core.is_finished());
    }

    #[test]
    fn a_write_answer_lost_at_the_end_is_found_and_released() {
        let mut rig = Rig::new();
        rig.login(NONE_SEEN);
        rig.dev.disconnect(DisconnectReason::BY_APPLICATION);
        rig.pump();
        rig.core
            .presence_written(rig.now, Written::Failed("timed out".into()));
        let actions = close(&mut rig);
        assert_eq!(reads(&actions), 1, "{actions:?}");
        let own = rig.own();
        rig.core.presence_read(rig.now, Ok(Some((1, Some(own)))));
        let actions = rig.take();
        assert_eq!(deletes(&actions), [1]);
        assert_eq!(
            emitted(&actions),
            connected_then("peer_disconnect"),
            "the session did connect: both, in order"
        );
    }

    #[test]
    fn a_peer_that_stops_reading_is_not_read_and_is_dropped_at_the_write_deadline() {
        let mut rig = Rig::new();
        rig.login(NONE_SEEN);
        rig.core.presence_written(rig.now, Written::Ok(1));
        rig.core.http_request(
            rig.now,
            HttpRequest {
                reply: 1,
                port: None,
                payload: b"GET / HTTP/1.1\r\n\r\n".to_vec(),
                trace: None,
            },
        );
        assert!(rig.core.poll_transmit().is_some(), "CHANNEL_OPEN to send");
        let deadline = rig.core.start_write(rig.now);
        assert_eq!(deadline, rig.now + Duration::from_secs(10));
        assert!(!rig.core.wants_input(), "no reading while output is unsent");
        assert_eq!(
            rig.core.poll_timeout(),
            Some(deadline),
            "before the tunnel's 20 s"
        );
        rig.core.handle_timeout(deadline - Duration::from_millis(1));
        assert!(!rig.core.is_over());
        rig.core.handle_timeout(deadline);
        assert!(matches!(rig.core.end(), Some(End::Io(e)) if e.contains("write timed out")));
        assert!(
            rig.core.poll_transmit().is_none(),
            "nothing more is written"
        );
        let actions = close(&mut rig);
        assert_eq!(replies(&actions), [(1, Err(TunnelError::DeviceDropped))]);
        assert_eq!(emitted(&actions), connected_then("io_error"));
    }

    #[test]
    fn tunnel_requests_are_checked_bounded_and_answered_by_their_deadline() {
        let mut rig = Rig::new();
        rig.core.http_request(
            rig.now,
            HttpRequest {
                reply: 1,
                port: None,
                payload: Vec::new(),
                trace: None,
            },
        );
        let refused = rig.core.poll_action().into_iter().collect::<Vec<_>>();
        assert_eq!(replies(&refused), [(1, Err(TunnelError::NotConnected))]);
        rig.login(NONE_SEEN);
        rig.request(2, Some("22"));
        assert_eq!(replies(&rig.take()), [(2, Err(TunnelError::BadRequest))]);
        // Two in flight (the setting); the device does not answer them.
        rig.request(3, None);
        rig.request(4, Some("16992"));
        rig.request(5, None);
        assert_eq!(replies(&rig.take()), [(5, Err(TunnelError::Busy))]);
        rig.advance(Duration::from_secs(19));
        assert!(replies(&rig.take()).is_empty());
        rig.advance(Duration::from_secs(1));
        let mut timed_out = replies(&rig.take());
        timed_out.sort_by_key(|r| r.0);
        assert_eq!(
            timed_out,
            [
                (3, Err(TunnelError::Timeout)),
                (4, Err(TunnelError::Timeout))
            ]
        );
        // One the device answers.
        rig.request(6, None);
        let (id, request) = rig
            .dev_events
            .iter()
            .rev()
            .find_map(|e| match e {
                DeviceEvent::ChannelData { id, data } => Some((*id, data.clone())),
                _ => None,
            })
            .expect("the request reached the device");
        assert!(request.starts_with(b"POST /wsman"));
        rig.dev.send_data(id, OK_RESPONSE).unwrap();
        rig.pump();
        assert_eq!(replies(&rig.take()), [(6, Ok(OK_RESPONSE.to_vec()))]);
        assert!(!rig.core.is_over());
    }

    #[test]
    fn a_requested_close_tells_the_device_and_ends_like_any_other() {
        let mut rig = Rig::new();
        rig.login(NONE_SEEN);
        rig.core.close_on_request();
        rig.pump();
        assert_eq!(rig.core.end(), Some(&End::Requested));
        assert!(rig
            .dev_events
            .iter()
            .any(|e| matches!(e, DeviceEvent::PeerDisconnected { .. })));
        assert_eq!(End::Requested.code(), "requested");
    }

    #[test]
    fn drain_and_supersede_tell_the_device_and_end_the_session() {
        let mut rig = Rig::new();
        rig.login(NONE_SEEN);
        rig.core.drain();
        rig.pump();
        assert_eq!(rig.core.end(), Some(&End::Drain));
        assert!(rig
            .dev_events
            .iter()
            .any(|e| matches!(e, DeviceEvent::PeerDisconnected { .. })));

        let mut rig = Rig::new();
        rig.login(NONE_SEEN);
        rig.core.presence_written(rig.now, Written::Ok(3));
        assert_eq!(emitted(&rig.take()), [("connected", String::new())]);
        rig.core.supersede();
        let actions = rig.take();
        assert!(matches!(
            actions[..],
            [Action::Deregister { .. }, Action::Count(Count::Superseded)]
        ));
        // Its entry is released only at its own revision: the newer session's has another.
        let actions = close(&mut rig);
        assert_eq!(deletes(&actions), [3]);
        assert_eq!(emitted(&actions), [("disconnected", "superseded".into())]);
    }

    #[test]
    fn a_refused_login_ends_after_the_allowed_attempts() {
        let mut rig = Rig::new();
        for attempt in 1..=3 {
            let actions = rig.take();
            assert!(
                matches!(actions[..], [Action::Login { attempt: a, .. }] if a == attempt),
                "{actions:?}"
            );
            rig.core
                .login_done(rig.now, LoginResult::Rejected(AuthFailure::BadPassword));
            rig.pump();
            if attempt < 3 {
                assert!(rig.dev.retry_auth());
            }
        }
        assert_eq!(rig.core.end(), Some(&End::AuthFailed));
        assert!(emitted(&close(&mut rig)).is_empty());
    }
}
