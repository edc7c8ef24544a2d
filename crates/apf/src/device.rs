//! The device (AMT) side of an APF session, as a simulator uses it (openamt-mps.md §1.11,
//! wsman-amt.md §3.7). Kept small: a simulator runs tens of thousands of these.
//!
//! Order: PROTOCOL_VERSION + SERVICE_REQUEST auth on construction → USERAUTH_REQUEST on
//! SERVICE_ACCEPT → SERVICE_REQUEST pfwd on USERAUTH_SUCCESS → one tcpip-forward at a time,
//! each after the previous REQUEST_SUCCESS → ready, then periodic keep-alives.

use std::time::{Duration, Instant};

use crate::channel::{ChannelAbort, Channels, ADVERTISED_MAX_PACKET, DEFAULT_CHANNEL_WINDOW};
use crate::codec::{
    DecodeContext, GlobalRequestBody, Message, FORWARDED_TCPIP, METHOD_PASSWORD, SERVICE_AUTH,
    SERVICE_PFWD, TCPIP_FORWARD,
};
use crate::conn::{deadline, handle_input, ChannelEvents, Core, Role};
use crate::error::{ChannelError, SessionError};
use crate::guid::guid_from_wire;
use crate::types::{ChannelId, ChannelOpenFailureReason, DisconnectReason, MessageType, Secret};

/// First local channel id of a device session.
pub const FIRST_DEVICE_CHANNEL_ID: u32 = 1;
/// The link is considered dead after this many keep-alive intervals without input.
pub const LINK_DEAD_INTERVALS: u32 = 3;

/// Device session settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceConfig {
    /// System UUID in wire order (see [`crate::guid_to_wire`]).
    pub uuid: [u8; 16],
    /// CIRA user name.
    pub username: String,
    /// CIRA password.
    pub password: Secret,
    /// Ports forwarded after authentication, in order.
    pub forward_ports: Vec<u32>,
    /// Bind address sent in tcpip-forward (the device's host name).
    pub forward_address: String,
    /// False simulates a silent device that never sends keep-alives.
    pub send_keepalives: bool,
    /// Keep-alive interval until the server sends KEEPALIVE_OPTIONS_REQUEST.
    pub default_keepalive_interval: Duration,
    /// PROTOCOL_VERSION trigger reason (1 user-initiated, 2 alert, 3 provisioning, 4 periodic).
    pub trigger: u32,
    /// Receive window advertised on each channel.
    pub channel_window: u32,
    /// Channels to these ports are accepted; others are refused with "connect failed".
    pub accept_ports: Vec<u32>,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        Self {
            uuid: [0; 16],
            username: String::new(),
            password: Secret::default(),
            forward_ports: vec![16993, 16992, 664, 623, 16995, 16994, 5900],
            forward_address: String::new(),
            send_keepalives: true,
            default_keepalive_interval: Duration::from_secs(60),
            trigger: 4,
            channel_window: DEFAULT_CHANNEL_WINDOW,
            accept_ports: vec![16992],
        }
    }
}

impl DeviceConfig {
    /// Defaults with the given identity and credentials.
    pub fn new(uuid: [u8; 16], username: impl Into<String>, password: Secret) -> Self {
        Self {
            uuid,
            username: username.into(),
            password,
            ..Self::default()
        }
    }
}

/// What the device session tells the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceEvent {
    Authenticated,
    /// USERAUTH_FAILURE; call [`DeviceSession::retry_auth`] to try again, or disconnect.
    AuthFailed,
    /// All ports are forwarded.
    Ready,
    /// No input for [`LINK_DEAD_INTERVALS`] keep-alive intervals; the session is closed.
    LinkDead,
    /// The server opened a channel to `port` and we accepted it.
    ChannelOpened {
        id: ChannelId,
        port: u32,
        source_address: String,
        source_port: u32,
    },
    ChannelData {
        id: ChannelId,
        data: Vec<u8>,
    },
    ChannelClosed {
        id: ChannelId,
    },
    PeerDisconnected {
        reason: DisconnectReason,
    },
}

impl ChannelEvents for DeviceEvent {
    // The device never opens channels, so these outcomes cannot occur.
    fn opened(_id: ChannelId) -> Option<Self> {
        None
    }
    fn open_failed(_id: ChannelId, _reason: ChannelOpenFailureReason) -> Option<Self> {
        None
    }
    fn data(id: ChannelId, data: Vec<u8>) -> Self {
        DeviceEvent::ChannelData { id, data }
    }
    fn closed(id: ChannelId) -> Self {
        DeviceEvent::ChannelClosed { id }
    }
    fn aborted(id: ChannelId, _why: ChannelAbort) -> Self {
        DeviceEvent::ChannelClosed { id }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitAuthAccept,
    AwaitAuthResult,
    AuthFailed,
    AwaitPfwdAccept,
    /// Waiting for the REQUEST_SUCCESS of `forward_ports[i]`.
    Forwarding(usize),
    Ready,
}

impl State {
    fn describe(self) -> &'static str {
        match self {
            State::AwaitAuthAccept => "awaiting the auth service accept",
            State::AwaitAuthResult => "awaiting the authentication result",
            State::AuthFailed => "authentication failed",
            State::AwaitPfwdAccept => "awaiting the pfwd service accept",
            State::Forwarding(_) => "forwarding ports",
            State::Ready => "ready",
        }
    }

    fn authenticated(self) -> bool {
        matches!(
            self,
            State::AwaitPfwdAccept | State::Forwarding(_) | State::Ready
        )
    }
}

/// One simulated AMT device connection. Sans-IO, driven like [`crate::ServerSession`].
#[derive(Debug)]
pub struct DeviceSession {
    core: Core<DeviceEvent>,
    config: DeviceConfig,
    state: State,
    /// MPS sends USERAUTH_FAILURE with one zero byte too many; drop it if it is next.
    skip_stray_zero: bool,
    keepalive_interval: Duration,
    next_keepalive: Option<Instant>,
    cookie: u32,
    keepalive_replies: u64,
}

impl DeviceSession {
    /// Queues PROTOCOL_VERSION and SERVICE_REQUEST auth@amt.intel.com.
    pub fn new(config: DeviceConfig, now: Instant) -> Self {
        let channels = Channels::new(FIRST_DEVICE_CHANNEL_ID, config.channel_window);
        let mut core = Core::new(now, channels);
        core.send(&Message::ProtocolVersion {
            major: 1,
            minor: 0,
            trigger: config.trigger,
            uuid: config.uuid,
        });
        core.send(&Message::ServiceRequest {
            service: SERVICE_AUTH.into(),
        });
        let keepalive_interval = config.default_keepalive_interval;
        Self {
            core,
            config,
            state: State::AwaitAuthAccept,
            skip_stray_zero: false,
            keepalive_interval,
            next_keepalive: None,
            cookie: 0,
            keepalive_replies: 0,
        }
    }

    /// Processes received bytes (any split). On `Err` a DISCONNECT is queued and the session
    /// is closed.
    pub fn handle_input(&mut self, now: Instant, data: &[u8]) -> Result<(), SessionError> {
        handle_input(self, now, data)
    }

    /// Sends a due keep-alive and declares the link dead after too long without input.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.core.is_closed() {
            return;
        }
        if self.link_dead_deadline().is_some_and(|t| now >= t) {
            self.core.emit(DeviceEvent::LinkDead);
            self.core.close_with(DisconnectReason::CONNECTION_TIMED_OUT);
            return;
        }
        if self.next_keepalive.is_some_and(|t| now >= t) {
            self.core.send(&Message::KeepaliveRequest {
                cookie: self.cookie,
            });
            self.cookie = self.cookie.wrapping_add(1);
            self.next_keepalive = deadline(now, self.keepalive_interval);
        }
    }

    /// The earliest time [`handle_timeout`](Self::handle_timeout) must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.core.is_closed() {
            return None;
        }
        match (self.next_keepalive, self.link_dead_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// All pending outbound bytes; the internal buffer is left empty without capacity.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.core.poll_transmit()
    }

    pub fn poll_event(&mut self) -> Option<DeviceEvent> {
        self.core.poll_event()
    }

    /// True after a DISCONNECT was sent or received or a fatal error occurred.
    pub fn is_closed(&self) -> bool {
        self.core.is_closed()
    }

    pub fn is_ready(&self) -> bool {
        self.state == State::Ready
    }

    /// Canonical lowercase GUID of this device.
    pub fn guid(&self) -> String {
        guid_from_wire(&self.config.uuid)
    }

    /// KEEPALIVE_REPLYs received.
    pub fn keepalive_replies(&self) -> u64 {
        self.keepalive_replies
    }

    /// The keep-alive interval in force (the server's, once it sent options).
    pub fn keepalive_interval(&self) -> Duration {
        self.keepalive_interval
    }

    /// Channels currently in the table (opening, open, or closing).
    pub fn channel_count(&self) -> usize {
        self.core.channels.len()
    }

    /// Application data queued on a channel but not yet sent for lack of window.
    pub fn queued_bytes(&self, id: ChannelId) -> Option<usize> {
        self.core.channels.queued_bytes(id)
    }

    /// Sends USERAUTH_REQUEST again after [`DeviceEvent::AuthFailed`]. Returns false (and does
    /// nothing) in any other state.
    pub fn retry_auth(&mut self) -> bool {
        if self.core.is_closed() || self.state != State::AuthFailed {
            return false;
        }
        self.send_userauth();
        true
    }

    /// Queues data on a channel; it is sent as the server's window allows.
    pub fn send_data(&mut self, id: ChannelId, data: &[u8]) -> Result<(), ChannelError> {
        if self.core.is_closed() {
            return Err(ChannelError::SessionClosed);
        }
        let (channels, out) = self.core.parts();
        channels.send(id, data, out)
    }

    /// Closes a channel gracefully (queued data first).
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

    fn link_dead_deadline(&self) -> Option<Instant> {
        if self.keepalive_interval.is_zero() {
            return None;
        }
        let limit = self.keepalive_interval.checked_mul(LINK_DEAD_INTERVALS)?;
        deadline(self.core.last_input, limit)
    }

    fn send_userauth(&mut self) {
        self.core.send(&Message::UserauthRequest {
            username: self.config.username.clone(),
            service: SERVICE_PFWD.into(),
            method: METHOD_PASSWORD.into(),
            password: Some(self.config.password.clone()),
        });
        self.state = State::AwaitAuthResult;
    }

    /// Sends the tcpip-forward for `forward_ports[index]`, or becomes ready past the end.
    fn forward_next(&mut self, now: Instant, index: usize) {
        match self.config.forward_ports.get(index) {
            Some(&port) => {
                self.core.send(&Message::GlobalRequest {
                    name: TCPIP_FORWARD.into(),
                    want_reply: true,
                    body: GlobalRequestBody::TcpipForward {
                        address: self.config.forward_address.clone(),
                        port,
                    },
                });
                self.state = State::Forwarding(index);
            }
            None => {
                self.state = State::Ready;
                self.schedule_keepalive(now);
                self.core.emit(DeviceEvent::Ready);
            }
        }
    }

    fn schedule_keepalive(&mut self, now: Instant) {
        self.next_keepalive = if self.config.send_keepalives && self.state == State::Ready {
            deadline(now, self.keepalive_interval)
        } else {
            None
        };
    }

    fn on_channel_open(&mut self, channel_type: &str, open: OpenRequest) {
        let refuse = |reason| Message::ChannelOpenFailure {
            recipient: open.sender,
            reason,
            description: String::new(),
            language: String::new(),
        };
        if channel_type != FORWARDED_TCPIP {
            let m = refuse(ChannelOpenFailureReason::UNKNOWN_CHANNEL_TYPE);
            self.core.send(&m);
            return;
        }
        if !self.config.accept_ports.contains(&open.target_port) {
            let m = refuse(ChannelOpenFailureReason::CONNECT_FAILED);
            self.core.send(&m);
            return;
        }
        match self
            .core
            .channels
            .accept_inbound(open.sender, open.window, open.max_packet)
        {
            Ok(id) => {
                let window = self.core.channels.window();
                self.core.send(&Message::ChannelOpenConfirmation {
                    recipient: open.sender,
                    sender: id.0,
                    window,
                    max_packet: ADVERTISED_MAX_PACKET,
                });
                self.core.emit(DeviceEvent::ChannelOpened {
                    id,
                    port: open.target_port,
                    source_address: open.source_address,
                    source_port: open.source_port,
                });
            }
            Err(_) => {
                let m = refuse(ChannelOpenFailureReason::RESOURCE_SHORTAGE);
                self.core.send(&m);
            }
        }
    }
}

/// The CHANNEL_OPEN fields the device acts on.
struct OpenRequest {
    sender: u32,
    window: u32,
    max_packet: u32,
    target_port: u32,
    source_address: String,
    source_port: u32,
}

impl Role for DeviceSession {
    type Event = DeviceEvent;

    fn core(&mut self) -> &mut Core<DeviceEvent> {
        &mut self.core
    }

    fn decode_context(&self) -> DecodeContext {
        // The device sends only tcpip-forward, whose REQUEST_SUCCESS carries the port.
        DecodeContext {
            request_success_has_port: true,
            ..DecodeContext::default()
        }
    }

    fn skip_stray_byte(&mut self, next: u8) -> bool {
        // No message type 0 exists, so a zero right after USERAUTH_FAILURE can only be the
        // second byte MPS writes for the one-byte "partial success" flag.
        std::mem::take(&mut self.skip_stray_zero) && next == 0
    }

    fn on_message(&mut self, now: Instant, message: Message) -> Result<(), SessionError> {
        let ty = message.message_type();
        let authenticated = self.state.authenticated();
        match message {
            Message::Disconnect { reason } => {
                self.core.emit(DeviceEvent::PeerDisconnected { reason });
                self.core.mark_closed();
            }
            Message::ServiceAccept { service }
                if self.state == State::AwaitAuthAccept && service == SERVICE_AUTH =>
            {
                self.send_userauth();
            }
            Message::ServiceAccept { service }
                if self.state == State::AwaitPfwdAccept && service == SERVICE_PFWD =>
            {
                self.forward_next(now, 0);
            }
            Message::UserauthSuccess if self.state == State::AwaitAuthResult => {
                self.core.emit(DeviceEvent::Authenticated);
                self.core.send(&Message::ServiceRequest {
                    service: SERVICE_PFWD.into(),
                });
                self.state = State::AwaitPfwdAccept;
            }
            Message::UserauthFailure { .. } if self.state == State::AwaitAuthResult => {
                self.state = State::AuthFailed;
                self.skip_stray_zero = true;
                self.core.emit(DeviceEvent::AuthFailed);
            }
            // A refused forward is not fatal: real AMT carries on with the next port.
            Message::RequestSuccess { .. } | Message::RequestFailure => match self.state {
                State::Forwarding(i) => self.forward_next(now, i.saturating_add(1)),
                _ => return Err(self.unexpected(ty)),
            },
            Message::KeepaliveOptionsRequest { interval, timeout } if authenticated => {
                self.core
                    .send(&Message::KeepaliveOptionsReply { interval, timeout });
                if interval > 0 {
                    self.keepalive_interval = Duration::from_secs(u64::from(interval));
                    self.schedule_keepalive(now);
                }
            }
            Message::KeepaliveRequest { cookie } if authenticated => {
                self.core.send(&Message::KeepaliveReply { cookie });
            }
            Message::KeepaliveReply { .. } if authenticated => {
                self.keepalive_replies = self.keepalive_replies.saturating_add(1);
            }
            Message::ChannelOpen {
                channel_type,
                sender,
                window,
                max_packet,
                target_port,
                source_address,
                source_port,
                ..
            } if authenticated => self.on_channel_open(
                &channel_type,
                OpenRequest {
                    sender,
                    window,
                    max_packet,
                    target_port,
                    source_address,
                    source_port,
                },
            ),
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

impl DeviceSession {
    fn unexpected(&self, message: MessageType) -> SessionError {
        SessionError::UnexpectedMessage {
            message,
            state: self.state.describe(),
        }
    }
}

#[cfg(test)]
mod tests;
