//! The CIRA server side of an APF session (the role MPS plays, openamt-mps.md §1.4–1.8), with
//! the message order enforced that MPS leaves unchecked.
//!
//! Order: PROTOCOL_VERSION → SERVICE_REQUEST auth → USERAUTH_REQUEST (the application decides
//! asynchronously) → SERVICE_REQUEST pfwd → tcpip-forward requests → ready (after the 5900
//! forward, or at the first keep-alive). Channels to device ports can be opened once the
//! device is authenticated.

use std::time::{Duration, Instant};

use crate::channel::{ChannelAbort, Channels, ADVERTISED_MAX_PACKET, DEFAULT_CHANNEL_WINDOW};
use crate::codec::{
    DecodeContext, GlobalRequestBody, Message, DIRECT_TCPIP, FORWARDED_TCPIP, METHOD_PASSWORD,
    SERVICE_AUTH, SERVICE_PFWD,
};
use crate::conn::{deadline, handle_input, ChannelEvents, Core, Role};
use crate::error::{ChannelError, SessionError};
use crate::guid::guid_from_wire;
use crate::types::{ChannelId, ChannelOpenFailureReason, DisconnectReason, MessageType, Secret};

/// The port whose forward completes a real AMT's handshake; MPS answers it with
/// KEEPALIVE_OPTIONS_REQUEST.
pub const KEEPALIVE_TRIGGER_PORT: u32 = 5900;
/// First local channel id, as in MPS.
pub const FIRST_SERVER_CHANNEL_ID: u32 = 4;
/// Most forwarded ports remembered per session; further tcpip-forwards get REQUEST_FAILURE.
pub const MAX_FORWARDED_PORTS: usize = 64;
/// Longest string field accepted before the device is authenticated. The longest message that
/// can legally come then, USERAUTH_REQUEST with four strings, stays near 2 KB, so a stranger
/// cannot make the session buffer more than that.
pub const PREAUTH_MAX_STRING_LEN: usize = 512;
/// Default largest CHANNEL_DATA decoded (twice the default window): data within it but beyond a
/// channel's window ends that channel only; a longer message ends the session on its header.
pub const DEFAULT_MAX_CHANNEL_PACKET: usize = 2 * DEFAULT_CHANNEL_WINDOW as usize;
/// Source address MPS puts in CHANNEL_OPEN.
const CHANNEL_SOURCE_ADDRESS: &str = "1.2.3.4";

/// Server session settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Keep-alive interval requested from the device (KEEPALIVE_OPTIONS_REQUEST), whole seconds.
    pub keepalive_interval: Duration,
    /// The session is closed after this long without any input.
    pub idle_timeout: Duration,
    /// Rejected USERAUTH_REQUESTs allowed before disconnecting with "invalid credentials".
    pub max_auth_attempts: u32,
    /// Receive window advertised on each channel.
    pub channel_window: u32,
    /// Time from connect until the session must be ready.
    pub handshake_timeout: Duration,
    /// Largest CHANNEL_DATA payload decoded once authenticated.
    pub max_channel_packet: usize,
    /// Keep-alive requests closer together than this after an answered one are not answered
    /// (some clients read the timeout as their interval and send hundreds a second).
    pub keepalive_min_gap: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            keepalive_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
            max_auth_attempts: 3,
            channel_window: DEFAULT_CHANNEL_WINDOW,
            handshake_timeout: Duration::from_secs(30),
            max_channel_packet: DEFAULT_MAX_CHANNEL_PACKET,
            keepalive_min_gap: Duration::from_secs(1),
        }
    }
}

/// What the server session tells the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    /// The device identified itself; `guid` is canonical lowercase.
    ProtocolVersion {
        guid: String,
        major: u32,
        minor: u32,
    },
    /// Check these credentials, then call [`ServerSession::accept_auth`] or
    /// [`ServerSession::reject_auth`].
    AuthRequest {
        username: String,
        password: Secret,
    },
    /// The handshake is complete.
    Ready {
        forwarded_ports: Vec<u32>,
    },
    /// A keep-alive request was received and answered.
    KeepAlive,
    ChannelOpened {
        id: ChannelId,
    },
    ChannelOpenFailed {
        id: ChannelId,
        reason: ChannelOpenFailureReason,
    },
    ChannelData {
        id: ChannelId,
        data: Vec<u8>,
    },
    /// The channel is gone (both CLOSEs exchanged); emitted once per opened channel.
    ChannelClosed {
        id: ChannelId,
    },
    /// The device broke the channel's rules; the channel is gone, the session goes on.
    ChannelAborted {
        id: ChannelId,
        why: ChannelAbort,
    },
    PeerDisconnected {
        reason: DisconnectReason,
    },
    IdleTimeout,
    HandshakeTimeout,
}

impl ChannelEvents for ServerEvent {
    fn opened(id: ChannelId) -> Option<Self> {
        Some(ServerEvent::ChannelOpened { id })
    }
    fn open_failed(id: ChannelId, reason: ChannelOpenFailureReason) -> Option<Self> {
        Some(ServerEvent::ChannelOpenFailed { id, reason })
    }
    fn data(id: ChannelId, data: Vec<u8>) -> Self {
        ServerEvent::ChannelData { id, data }
    }
    fn closed(id: ChannelId) -> Self {
        ServerEvent::ChannelClosed { id }
    }
    fn aborted(id: ChannelId, why: ChannelAbort) -> Self {
        ServerEvent::ChannelAborted { id, why }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitVersion,
    AwaitAuthService,
    AwaitUserauth,
    AuthPending,
    AwaitPfwdService,
    Forwarding,
    Ready,
}

impl State {
    fn describe(self) -> &'static str {
        match self {
            State::AwaitVersion => "awaiting PROTOCOL_VERSION",
            State::AwaitAuthService => "awaiting the auth service request",
            State::AwaitUserauth => "awaiting USERAUTH_REQUEST",
            State::AuthPending => "deciding on authentication",
            State::AwaitPfwdService => "awaiting the pfwd service request",
            State::Forwarding => "awaiting port forwards",
            State::Ready => "ready",
        }
    }

    fn authenticated(self) -> bool {
        matches!(
            self,
            State::AwaitPfwdService | State::Forwarding | State::Ready
        )
    }

    /// The only message types that may come before authentication, per state.
    fn preauth_types(self) -> Option<&'static [MessageType]> {
        match self {
            State::AwaitVersion => Some(&[MessageType::DISCONNECT, MessageType::PROTOCOL_VERSION]),
            State::AwaitAuthService => {
                Some(&[MessageType::DISCONNECT, MessageType::SERVICE_REQUEST])
            }
            State::AwaitUserauth => Some(&[MessageType::DISCONNECT, MessageType::USERAUTH_REQUEST]),
            State::AuthPending => Some(&[MessageType::DISCONNECT]),
            State::AwaitPfwdService | State::Forwarding | State::Ready => None,
        }
    }
}

/// One device connection, server side. Sans-IO: feed received bytes to
/// [`handle_input`](Self::handle_input), send what [`poll_transmit`](Self::poll_transmit)
/// returns, and call [`handle_timeout`](Self::handle_timeout) at
/// [`poll_timeout`](Self::poll_timeout).
#[derive(Debug)]
pub struct ServerSession {
    core: Core<ServerEvent>,
    config: ServerConfig,
    state: State,
    started: Instant,
    uuid: Option<[u8; 16]>,
    auth_failures: u32,
    forwarded_ports: Vec<u32>,
    /// MPS's per-socket counter `k` for the CHANNEL_OPEN source port 1024 + (k mod 30000).
    opened_channels: u32,
    last_keepalive_reply: Option<Instant>,
    keepalives_ignored: u32,
}

impl ServerSession {
    pub fn new(config: ServerConfig, now: Instant) -> Self {
        let channels = Channels::new(FIRST_SERVER_CHANNEL_ID, config.channel_window);
        Self {
            core: Core::new(now, channels),
            config,
            state: State::AwaitVersion,
            started: now,
            uuid: None,
            auth_failures: 0,
            forwarded_ports: Vec::new(),
            opened_channels: 0,
            last_keepalive_reply: None,
            keepalives_ignored: 0,
        }
    }

    /// Processes received bytes (any split: partial messages are buffered). On `Err` a
    /// DISCONNECT with [`SessionError::disconnect_reason`] is queued and the session is closed.
    pub fn handle_input(&mut self, now: Instant, data: &[u8]) -> Result<(), SessionError> {
        handle_input(self, now, data)
    }

    /// Fires the handshake and idle timeouts that are due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.core.is_closed() {
            return;
        }
        if self.handshake_deadline().is_some_and(|t| now >= t) {
            self.core.emit(ServerEvent::HandshakeTimeout);
            self.core.close_with(DisconnectReason::CONNECTION_TIMED_OUT);
        } else if self.idle_deadline().is_some_and(|t| now >= t) {
            self.core.emit(ServerEvent::IdleTimeout);
            self.core.close_with(DisconnectReason::CONNECTION_TIMED_OUT);
        }
    }

    /// The earliest time [`handle_timeout`](Self::handle_timeout) must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.core.is_closed() {
            return None;
        }
        match (self.handshake_deadline(), self.idle_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// All pending outbound bytes; the internal buffer is left empty without capacity.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.core.poll_transmit()
    }

    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.core.poll_event()
    }

    /// True after a DISCONNECT was sent or received or a fatal error occurred.
    pub fn is_closed(&self) -> bool {
        self.core.is_closed()
    }

    /// Canonical lowercase GUID from PROTOCOL_VERSION, once received.
    pub fn guid(&self) -> Option<String> {
        self.uuid.as_ref().map(guid_from_wire)
    }

    /// The 16 wire bytes of the device's system UUID, once received.
    pub fn uuid(&self) -> Option<[u8; 16]> {
        self.uuid
    }

    pub fn is_authenticated(&self) -> bool {
        self.state.authenticated()
    }

    pub fn is_ready(&self) -> bool {
        self.state == State::Ready
    }

    /// Ports the device forwarded so far (cancelled ones removed).
    pub fn forwarded_ports(&self) -> &[u32] {
        &self.forwarded_ports
    }

    /// Channel messages for ids we do not have, ignored (normally close races).
    pub fn stray_channel_messages(&self) -> u64 {
        self.core.channels.stray_messages()
    }

    /// Keep-alive requests left unanswered because they came too soon after an answered one.
    pub fn keepalives_ignored(&self) -> u64 {
        u64::from(self.keepalives_ignored)
    }

    /// Channels currently in the table (opening, open, or closing).
    pub fn channel_count(&self) -> usize {
        self.core.channels.len()
    }

    /// Application data queued on a channel but not yet sent for lack of window.
    pub fn queued_bytes(&self, id: ChannelId) -> Option<usize> {
        self.core.channels.queued_bytes(id)
    }

    /// Accepts the pending [`ServerEvent::AuthRequest`]: queues USERAUTH_SUCCESS. Returns false
    /// (and does nothing) when no decision is pending.
    pub fn accept_auth(&mut self) -> bool {
        if self.core.is_closed() || self.state != State::AuthPending {
            return false;
        }
        self.core.send(&Message::UserauthSuccess);
        self.state = State::AwaitPfwdService;
        true
    }

    /// Rejects the pending [`ServerEvent::AuthRequest`]: queues USERAUTH_FAILURE, and after
    /// `max_auth_attempts` rejections also DISCONNECT "invalid credentials" (the session is
    /// then closed). Returns false (and does nothing) when no decision is pending.
    pub fn reject_auth(&mut self) -> bool {
        if self.core.is_closed() || self.state != State::AuthPending {
            return false;
        }
        self.fail_auth();
        true
    }

    /// Opens a "forwarded-tcpip" channel to `port` on the device (16992 WS-Man, 16994
    /// redirection). [`ServerEvent::ChannelOpened`] or `ChannelOpenFailed` follows.
    pub fn open_channel(&mut self, port: u32) -> Result<ChannelId, ChannelError> {
        if self.core.is_closed() {
            return Err(ChannelError::SessionClosed);
        }
        if !self.state.authenticated() {
            return Err(ChannelError::NotReady);
        }
        let id = self.core.channels.open_outbound()?;
        let k = self.opened_channels;
        self.opened_channels = k.wrapping_add(1);
        let window = self.core.channels.window();
        self.core.send(&Message::ChannelOpen {
            channel_type: FORWARDED_TCPIP.into(),
            sender: id.0,
            window,
            max_packet: ADVERTISED_MAX_PACKET,
            target_address: String::new(),
            target_port: port,
            source_address: CHANNEL_SOURCE_ADDRESS.into(),
            source_port: 1024 + k % 30000,
        });
        Ok(id)
    }

    /// Queues data on a channel; it is sent as the device's window allows.
    pub fn send_data(&mut self, id: ChannelId, data: &[u8]) -> Result<(), ChannelError> {
        if self.core.is_closed() {
            return Err(ChannelError::SessionClosed);
        }
        let (channels, out) = self.core.parts();
        channels.send(id, data, out)
    }

    /// Closes a channel gracefully (queued data first). [`ServerEvent::ChannelClosed`]
    /// follows when the device answers.
    pub fn close_channel(&mut self, id: ChannelId) -> Result<(), ChannelError> {
        if self.core.is_closed() {
            return Err(ChannelError::SessionClosed);
        }
        let (channels, out) = self.core.parts();
        channels.close(id, out)
    }

    /// Queues DISCONNECT with `reason` and closes the session.
    pub fn disconnect(&mut self, reason: DisconnectReason) {
        self.core.close_with(reason);
    }

    fn handshake_deadline(&self) -> Option<Instant> {
        if self.state == State::Ready {
            None
        } else {
            deadline(self.started, self.config.handshake_timeout)
        }
    }

    fn idle_deadline(&self) -> Option<Instant> {
        deadline(self.core.last_input, self.config.idle_timeout)
    }

    fn fail_auth(&mut self) {
        self.auth_failures = self.auth_failures.saturating_add(1);
        self.core.send(&Message::UserauthFailure {
            methods: METHOD_PASSWORD.into(),
        });
        if self.auth_failures >= self.config.max_auth_attempts {
            let _ = self
                .core
                .fail(SessionError::TooManyAuthFailures(self.auth_failures));
        } else {
            self.state = State::AwaitUserauth;
        }
    }

    fn become_ready(&mut self) {
        self.state = State::Ready;
        self.core.emit(ServerEvent::Ready {
            forwarded_ports: self.forwarded_ports.clone(),
        });
    }

    fn unexpected(&self, message: MessageType) -> SessionError {
        SessionError::UnexpectedMessage {
            message,
            state: self.state.describe(),
        }
    }

    fn on_service_request(&mut self, service: String) -> Result<(), SessionError> {
        let next = match (self.state, service.as_str()) {
            (State::AwaitAuthService, SERVICE_AUTH) => State::AwaitUserauth,
            (State::AwaitPfwdService, SERVICE_PFWD) => State::Forwarding,
            // A known service out of order is a protocol error, not an unavailable service.
            (State::AwaitAuthService | State::AwaitPfwdService, SERVICE_AUTH | SERVICE_PFWD) => {
                return Err(self.unexpected(MessageType::SERVICE_REQUEST))
            }
            (State::AwaitAuthService | State::AwaitPfwdService, _) => {
                return Err(SessionError::ServiceNotAvailable(service))
            }
            _ => return Err(self.unexpected(MessageType::SERVICE_REQUEST)),
        };
        self.core.send(&Message::ServiceAccept { service });
        self.state = next;
        Ok(())
    }

    fn on_global_request(&mut self, want_reply: bool, body: GlobalRequestBody) {
        match body {
            GlobalRequestBody::TcpipForward { port, .. } => {
                let known = self.forwarded_ports.contains(&port);
                if !known && self.forwarded_ports.len() >= MAX_FORWARDED_PORTS {
                    if want_reply {
                        self.core.send(&Message::RequestFailure);
                    }
                    return;
                }
                if !known {
                    self.forwarded_ports.push(port);
                }
                if want_reply {
                    self.core
                        .send(&Message::RequestSuccess { port: Some(port) });
                }
                if port == KEEPALIVE_TRIGGER_PORT && self.state == State::Forwarding {
                    let interval = self.config.keepalive_interval.as_secs();
                    self.core.send(&Message::KeepaliveOptionsRequest {
                        interval: u32::try_from(interval).unwrap_or(u32::MAX),
                        timeout: 0,
                    });
                    self.become_ready();
                }
            }
            GlobalRequestBody::CancelTcpipForward { port, .. } => {
                self.forwarded_ports.retain(|&p| p != port);
                if want_reply {
                    self.core.send(&Message::RequestSuccess { port: None });
                }
            }
            // MPS silently consumes udp-send-to; we have nowhere to send it either.
            GlobalRequestBody::UdpSendTo { .. } | GlobalRequestBody::Unknown(_) => {
                if want_reply {
                    self.core.send(&Message::RequestFailure);
                }
            }
        }
    }
}

impl Role for ServerSession {
    type Event = ServerEvent;

    fn core(&mut self) -> &mut Core<ServerEvent> {
        &mut self.core
    }

    fn decode_context(&self) -> DecodeContext {
        // The server sends no global requests, so a REQUEST_SUCCESS from the device is
        // unexpected whatever its length. Before authentication only the next handshake
        // message may come, with short strings and no channel data.
        match self.state.preauth_types() {
            Some(only) => DecodeContext {
                request_success_has_port: false,
                max_string: PREAUTH_MAX_STRING_LEN,
                max_channel_data: 0,
                only: Some(only),
            },
            None => DecodeContext {
                request_success_has_port: false,
                max_channel_data: self.config.max_channel_packet,
                ..DecodeContext::default()
            },
        }
    }

    fn on_message(&mut self, now: Instant, message: Message) -> Result<(), SessionError> {
        let ty = message.message_type();
        let authenticated = self.state.authenticated();
        match message {
            Message::Disconnect { reason } => {
                self.core.emit(ServerEvent::PeerDisconnected { reason });
                self.core.mark_closed();
            }
            Message::ProtocolVersion {
                major, minor, uuid, ..
            } if self.state == State::AwaitVersion => {
                self.uuid = Some(uuid);
                self.state = State::AwaitAuthService;
                self.core.emit(ServerEvent::ProtocolVersion {
                    guid: guid_from_wire(&uuid),
                    major,
                    minor,
                });
            }
            Message::ServiceRequest { service } => self.on_service_request(service)?,
            Message::UserauthRequest {
                username,
                method,
                password,
                ..
            } if self.state == State::AwaitUserauth => match password {
                Some(password) if method == METHOD_PASSWORD => {
                    self.state = State::AuthPending;
                    self.core
                        .emit(ServerEvent::AuthRequest { username, password });
                }
                // A "none" probe: tell the device to use a password. It counts as an attempt
                // so a device cannot probe forever.
                _ => self.fail_auth(),
            },
            Message::GlobalRequest {
                want_reply, body, ..
            } if matches!(self.state, State::Forwarding | State::Ready) => {
                self.on_global_request(want_reply, body);
            }
            Message::KeepaliveRequest { .. }
                if authenticated
                    && self
                        .last_keepalive_reply
                        .and_then(|at| deadline(at, self.config.keepalive_min_gap))
                        .is_some_and(|next| now < next) =>
            {
                // Input already keeps the session alive; answering a flood only feeds it.
                self.keepalives_ignored = self.keepalives_ignored.saturating_add(1);
            }
            Message::KeepaliveRequest { cookie } if authenticated => {
                self.last_keepalive_reply = Some(now);
                self.core.send(&Message::KeepaliveReply { cookie });
                if self.state == State::Forwarding {
                    // A device that never forwards 5900 still settles into keep-alives.
                    self.become_ready();
                }
                self.core.emit(ServerEvent::KeepAlive);
            }
            Message::KeepaliveReply { .. } | Message::KeepaliveOptionsReply { .. }
                if authenticated => {}
            Message::ChannelOpen {
                channel_type,
                sender,
                ..
            } if authenticated => {
                // Devices have no business opening channels to us (MPS refuses them too).
                let reason = if channel_type == FORWARDED_TCPIP || channel_type == DIRECT_TCPIP {
                    ChannelOpenFailureReason::ADMINISTRATIVELY_PROHIBITED
                } else {
                    ChannelOpenFailureReason::UNKNOWN_CHANNEL_TYPE
                };
                self.core.send(&Message::ChannelOpenFailure {
                    recipient: sender,
                    reason,
                    description: String::new(),
                    language: String::new(),
                });
            }
            message @ (Message::ChannelOpenConfirmation { .. }
            | Message::ChannelOpenFailure { .. }
            | Message::ChannelData { .. }
            | Message::ChannelWindowAdjust { .. }
            | Message::ChannelClose { .. })
                if authenticated =>
            {
                self.core.on_channel_message(message)?;
            }
            _ => return Err(self.unexpected(ty)),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
