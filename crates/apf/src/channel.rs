//! Channel table and flow control (openamt-mps.md §1.7), shared by the server and device roles.
//!
//! Each side advertises a receive window and refills it with CHANNEL_WINDOW_ADJUST once more
//! than half of it has been received; data the application sends is queued and released as
//! CHANNEL_DATA only within the peer's window (our send credits). Unlike the reference MPS, a
//! channel is removed from the table when both CLOSEs have been exchanged, whoever closed first.

use std::collections::{BTreeMap, VecDeque};

use crate::codec::{put_channel_data_header, Message, MAX_CHANNEL_DATA};
use crate::error::{ChannelError, SessionError};
use crate::types::{ChannelId, ChannelOpenFailureReason, MessageType};

/// Receive window advertised by default (the value MPS uses).
pub const DEFAULT_CHANNEL_WINDOW: u32 = 32768;
/// Most channels one session keeps at once; further opens are refused with resource shortage
/// (device) or [`ChannelError::TooManyChannels`] (server), which bounds per-session memory.
pub const MAX_CHANNELS: usize = 1024;
/// The "max packet" we advertise. MPS and AMT write 0xFFFFFFFF in this (reserved) slot.
pub(crate) const ADVERTISED_MAX_PACKET: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// We sent CHANNEL_OPEN and wait for the confirmation; the peer id is not known yet.
    Opening,
    Open,
}

#[derive(Debug)]
struct Channel {
    state: State,
    peer_id: u32,
    /// The application asked to close: CLOSE goes out once the send queue is drained (and,
    /// while opening, once the confirmation arrived).
    close_requested: bool,
    close_sent: bool,
    /// Bytes the peer may still send before we refill its window.
    recv_remaining: u32,
    /// Bytes received since the last WINDOW_ADJUST we sent.
    recv_unacked: u32,
    /// Bytes we may still send (the peer's window).
    send_credits: u32,
    /// Largest CHANNEL_DATA payload we send, from the peer's "max packet" slot.
    send_max_chunk: usize,
    send_queue: VecDeque<u8>,
}

/// What a channel message meant for the application.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Nothing,
    Opened(ChannelId),
    OpenFailed(ChannelId, ChannelOpenFailureReason),
    Data(ChannelId, Vec<u8>),
    Closed(ChannelId),
    /// The peer broke the channel's rules; the channel is gone (our CLOSE is queued), the
    /// session goes on.
    Aborted(ChannelId, ChannelAbort),
}

/// Why a channel was ended on the peer's account without ending the session (the reference
/// closes only the channel too; third-party CIRA clients make these mistakes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelAbort {
    /// A CHANNEL_DATA larger than the window we had left; its bytes are discarded.
    WindowExceeded { received: usize, window: u32 },
}

impl std::fmt::Display for ChannelAbort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChannelAbort::WindowExceeded { received, window } => write!(
                f,
                "device sent {received} bytes with only {window} bytes of window left"
            ),
        }
    }
}

/// The channels of one session, keyed by our own id.
#[derive(Debug)]
pub(crate) struct Channels {
    map: BTreeMap<u32, Channel>,
    first_id: u32,
    next_id: u32,
    window: u32,
    stray: u64,
}

fn unexpected(message: MessageType, state: &'static str) -> SessionError {
    SessionError::UnexpectedMessage { message, state }
}

impl Channels {
    /// `first_id` is the first local id handed out; `window` is the receive window we
    /// advertise on every channel.
    pub(crate) fn new(first_id: u32, window: u32) -> Self {
        Self {
            map: BTreeMap::new(),
            first_id,
            next_id: first_id,
            window,
            stray: 0,
        }
    }

    pub(crate) fn window(&self) -> u32 {
        self.window
    }

    /// Messages for channel ids we do not have (usually a close race); ignored and counted.
    pub(crate) fn stray_messages(&self) -> u64 {
        self.stray
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn queued_bytes(&self, id: ChannelId) -> Option<usize> {
        self.map.get(&id.0).map(|ch| ch.send_queue.len())
    }

    /// Drops every channel (the session is closing) and frees their memory.
    pub(crate) fn clear(&mut self) {
        self.map = BTreeMap::new();
    }

    /// Ids increase and are not reused while in use; after `u32::MAX` they wrap to `first_id`
    /// and skip ids still in the table. The table is bounded, so a free id always exists.
    fn allocate_id(&mut self) -> Result<u32, ChannelError> {
        if self.map.len() >= MAX_CHANNELS {
            return Err(ChannelError::TooManyChannels);
        }
        loop {
            let id = self.next_id;
            self.next_id = id.checked_add(1).unwrap_or(self.first_id);
            if !self.map.contains_key(&id) {
                return Ok(id);
            }
        }
    }

    fn new_channel(&self, state: State, peer_id: u32, credits: u32, max_packet: u32) -> Channel {
        Channel {
            state,
            peer_id,
            close_requested: false,
            close_sent: false,
            recv_remaining: self.window,
            recv_unacked: 0,
            send_credits: credits,
            send_max_chunk: max_chunk(max_packet),
            send_queue: VecDeque::new(),
        }
    }

    /// Registers a channel we are opening; the caller sends CHANNEL_OPEN with the returned id
    /// and [`Channels::window`].
    pub(crate) fn open_outbound(&mut self) -> Result<ChannelId, ChannelError> {
        let id = self.allocate_id()?;
        let ch = self.new_channel(State::Opening, 0, 0, 0);
        self.map.insert(id, ch);
        Ok(ChannelId(id))
    }

    /// Registers a channel the peer opened and we accept; the caller sends the confirmation.
    pub(crate) fn accept_inbound(
        &mut self,
        peer_id: u32,
        peer_window: u32,
        peer_max_packet: u32,
    ) -> Result<ChannelId, ChannelError> {
        let id = self.allocate_id()?;
        let ch = self.new_channel(State::Open, peer_id, peer_window, peer_max_packet);
        self.map.insert(id, ch);
        Ok(ChannelId(id))
    }

    /// CHANNEL_OPEN_CONFIRMATION for a channel we opened.
    pub(crate) fn on_confirmation(
        &mut self,
        recipient: u32,
        sender: u32,
        window: u32,
        max_packet: u32,
        out: &mut Vec<u8>,
    ) -> Result<Outcome, SessionError> {
        let Some(ch) = self.map.get_mut(&recipient) else {
            self.stray += 1;
            return Ok(Outcome::Nothing);
        };
        if ch.state != State::Opening {
            return Err(unexpected(
                MessageType::CHANNEL_OPEN_CONFIRMATION,
                "the channel is already open",
            ));
        }
        ch.state = State::Open;
        ch.peer_id = sender;
        ch.send_credits = window;
        ch.send_max_chunk = max_chunk(max_packet);
        flush(ch, out);
        Ok(Outcome::Opened(ChannelId(recipient)))
    }

    /// CHANNEL_OPEN_FAILURE for a channel we opened.
    pub(crate) fn on_open_failure(
        &mut self,
        recipient: u32,
        reason: ChannelOpenFailureReason,
    ) -> Result<Outcome, SessionError> {
        match self.map.get(&recipient).map(|ch| ch.state) {
            None => {
                self.stray += 1;
                Ok(Outcome::Nothing)
            }
            Some(State::Open) => Err(unexpected(
                MessageType::CHANNEL_OPEN_FAILURE,
                "the channel is already open",
            )),
            Some(State::Opening) => {
                self.map.remove(&recipient);
                Ok(Outcome::OpenFailed(ChannelId(recipient), reason))
            }
        }
    }

    /// CHANNEL_DATA: enforces our advertised window and refills it past the half-way mark.
    pub(crate) fn on_data(
        &mut self,
        recipient: u32,
        data: Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Result<Outcome, SessionError> {
        let window = self.window;
        let Some(ch) = self.map.get_mut(&recipient) else {
            self.stray += 1;
            return Ok(Outcome::Nothing);
        };
        if ch.state == State::Opening {
            return Err(unexpected(
                MessageType::CHANNEL_DATA,
                "the channel is not confirmed yet",
            ));
        }
        let id = ChannelId(recipient);
        let Some(received) = u32::try_from(data.len())
            .ok()
            .filter(|&n| n <= ch.recv_remaining)
        else {
            // The codec bounded the message already; its bytes are dropped with the channel.
            let abort = ChannelAbort::WindowExceeded {
                received: data.len(),
                window: ch.recv_remaining,
            };
            if !ch.close_sent {
                Message::ChannelClose {
                    recipient: ch.peer_id,
                }
                .encode(out);
            }
            self.map.remove(&recipient);
            return Ok(Outcome::Aborted(id, abort));
        };
        ch.recv_remaining -= received;
        // recv_remaining + recv_unacked never exceeds the window, so this cannot overflow.
        ch.recv_unacked += received;
        // After our CLOSE no further message may be sent on the channel, adjusts included.
        if ch.recv_unacked > window / 2 && !ch.close_sent {
            Message::ChannelWindowAdjust {
                recipient: ch.peer_id,
                bytes: ch.recv_unacked,
            }
            .encode(out);
            ch.recv_remaining += ch.recv_unacked;
            ch.recv_unacked = 0;
        }
        if data.is_empty() {
            return Ok(Outcome::Nothing);
        }
        Ok(Outcome::Data(id, data))
    }

    /// CHANNEL_WINDOW_ADJUST: more send credits; a sum past `u32::MAX` is a protocol error.
    pub(crate) fn on_window_adjust(
        &mut self,
        recipient: u32,
        bytes: u32,
        out: &mut Vec<u8>,
    ) -> Result<(), SessionError> {
        let Some(ch) = self.map.get_mut(&recipient) else {
            self.stray += 1;
            return Ok(());
        };
        if ch.state == State::Opening {
            return Err(unexpected(
                MessageType::CHANNEL_WINDOW_ADJUST,
                "the channel is not confirmed yet",
            ));
        }
        ch.send_credits =
            ch.send_credits
                .checked_add(bytes)
                .ok_or(SessionError::WindowOverflow {
                    channel: ChannelId(recipient),
                })?;
        flush(ch, out);
        Ok(())
    }

    /// CHANNEL_CLOSE: answered with our CLOSE unless we sent one, and the entry is removed.
    pub(crate) fn on_close(
        &mut self,
        recipient: u32,
        out: &mut Vec<u8>,
    ) -> Result<Outcome, SessionError> {
        let Some(ch) = self.map.get(&recipient) else {
            self.stray += 1;
            return Ok(Outcome::Nothing);
        };
        if ch.state == State::Opening {
            // Some firmware answers an open it could not connect locally with CLOSE instead of
            // OPEN_FAILURE. We do not know its id to answer with, and need not: the channel
            // never opened.
            self.map.remove(&recipient);
            return Ok(Outcome::OpenFailed(
                ChannelId(recipient),
                ChannelOpenFailureReason::CONNECT_FAILED,
            ));
        }
        if !ch.close_sent {
            Message::ChannelClose {
                recipient: ch.peer_id,
            }
            .encode(out);
        }
        self.map.remove(&recipient);
        Ok(Outcome::Closed(ChannelId(recipient)))
    }

    /// Queues application data and sends what the peer's window allows.
    pub(crate) fn send(
        &mut self,
        id: ChannelId,
        data: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), ChannelError> {
        let ch = self
            .map
            .get_mut(&id.0)
            .ok_or(ChannelError::UnknownChannel(id))?;
        if ch.close_requested {
            return Err(ChannelError::Closing(id));
        }
        ch.send_queue.extend(data);
        flush(ch, out);
        Ok(())
    }

    /// Graceful close: CLOSE is sent once, after queued data has been sent (and, for a channel
    /// still opening, after the confirmation). Closing twice is harmless.
    pub(crate) fn close(&mut self, id: ChannelId, out: &mut Vec<u8>) -> Result<(), ChannelError> {
        let ch = self
            .map
            .get_mut(&id.0)
            .ok_or(ChannelError::UnknownChannel(id))?;
        ch.close_requested = true;
        flush(ch, out);
        Ok(())
    }
}

/// The largest CHANNEL_DATA payload for a peer "max packet" value. 0 is treated as "no
/// limit": the slot is reserved in APF and a zero must not stall the channel forever.
fn max_chunk(max_packet: u32) -> usize {
    let peer = match usize::try_from(max_packet) {
        Ok(0) | Err(_) => usize::MAX,
        Ok(n) => n,
    };
    peer.min(MAX_CHANNEL_DATA)
}

/// Sends queued data within the credits, in chunks of at most min(credits, max packet,
/// MAX_CHANNEL_DATA), then the deferred CLOSE once the queue is empty.
fn flush(ch: &mut Channel, out: &mut Vec<u8>) {
    if ch.state != State::Open || ch.close_sent {
        return;
    }
    while !ch.send_queue.is_empty() && ch.send_credits > 0 {
        let credits = usize::try_from(ch.send_credits).unwrap_or(usize::MAX);
        let n = ch.send_queue.len().min(credits).min(ch.send_max_chunk);
        put_channel_data_header(out, ch.peer_id, n);
        out.extend(ch.send_queue.drain(..n));
        // n <= send_credits, so it fits in u32 and does not underflow.
        ch.send_credits -= u32::try_from(n).unwrap_or(ch.send_credits);
    }
    if ch.send_queue.is_empty() {
        // Drop the capacity: idle sessions must stay small.
        ch.send_queue = VecDeque::new();
        if ch.close_requested {
            Message::ChannelClose {
                recipient: ch.peer_id,
            }
            .encode(out);
            ch.close_sent = true;
        }
    }
}

#[cfg(test)]
mod tests;
