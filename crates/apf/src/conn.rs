//! The part of a session both roles share: input reassembly, the outbound byte buffer, the
//! event queue, the channel table and closing on errors.
//!
//! Buffers are replaced by `Vec::new()` whenever they empty, so an idle session holds no heap
//! memory beyond its configuration (a simulator runs 50,000 of them).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::channel::{ChannelAbort, Channels, Outcome};
use crate::codec::{decode, DecodeContext, Message};
use crate::error::SessionError;
use crate::types::{ChannelId, ChannelOpenFailureReason, DisconnectReason};

/// State and buffers common to [`crate::ServerSession`] and [`crate::DeviceSession`].
#[derive(Debug)]
pub(crate) struct Core<E> {
    /// Bytes of an incomplete message, kept until the rest arrives.
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    events: VecDeque<E>,
    pub(crate) channels: Channels,
    pub(crate) last_input: Instant,
    closed: bool,
}

/// Channel outcomes expressed as the role's own events.
pub(crate) trait ChannelEvents: Sized {
    fn opened(id: ChannelId) -> Option<Self>;
    fn open_failed(id: ChannelId, reason: ChannelOpenFailureReason) -> Option<Self>;
    fn data(id: ChannelId, data: Vec<u8>) -> Self;
    fn closed(id: ChannelId) -> Self;
    fn aborted(id: ChannelId, why: ChannelAbort) -> Self;
}

impl<E> Core<E> {
    pub(crate) fn new(now: Instant, channels: Channels) -> Self {
        Self {
            inbuf: Vec::new(),
            outbuf: Vec::new(),
            events: VecDeque::new(),
            channels,
            last_input: now,
            closed: false,
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    pub(crate) fn send(&mut self, message: &Message) {
        message.encode(&mut self.outbuf);
    }

    /// The channel table and the outbound buffer, borrowed together for channel actions.
    pub(crate) fn parts(&mut self) -> (&mut Channels, &mut Vec<u8>) {
        (&mut self.channels, &mut self.outbuf)
    }

    pub(crate) fn emit(&mut self, event: E) {
        self.events.push_back(event);
    }

    /// Queues a DISCONNECT and closes; later input, timeouts and actions are ignored.
    pub(crate) fn close_with(&mut self, reason: DisconnectReason) {
        if self.closed {
            return;
        }
        self.send(&Message::Disconnect { reason });
        self.mark_closed();
    }

    /// Closes because of `err`, telling the peer the mapped reason.
    pub(crate) fn fail(&mut self, err: SessionError) -> SessionError {
        self.close_with(err.disconnect_reason());
        err
    }

    /// Closes without sending anything (the peer disconnected).
    pub(crate) fn mark_closed(&mut self) {
        self.closed = true;
        self.inbuf = Vec::new();
        self.channels.clear();
    }

    /// Capacities of the input and output buffers, to test that idle sessions hold no memory.
    #[cfg(test)]
    pub(crate) fn buffer_capacities(&self) -> (usize, usize) {
        (self.inbuf.capacity(), self.outbuf.capacity())
    }

    pub(crate) fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        if self.outbuf.is_empty() {
            None
        } else {
            Some(std::mem::take(&mut self.outbuf))
        }
    }

    pub(crate) fn poll_event(&mut self) -> Option<E> {
        let event = self.events.pop_front();
        if self.events.is_empty() {
            self.events = VecDeque::new();
        }
        event
    }

    /// Feeds a channel outcome to the application as the role's event.
    pub(crate) fn emit_outcome(&mut self, outcome: Outcome)
    where
        E: ChannelEvents,
    {
        let event = match outcome {
            Outcome::Nothing => None,
            Outcome::Opened(id) => E::opened(id),
            Outcome::OpenFailed(id, reason) => E::open_failed(id, reason),
            Outcome::Data(id, data) => Some(E::data(id, data)),
            Outcome::Closed(id) => Some(E::closed(id)),
            Outcome::Aborted(id, why) => Some(E::aborted(id, why)),
        };
        if let Some(event) = event {
            self.emit(event);
        }
    }

    /// Channel messages are handled the same way by both roles.
    pub(crate) fn on_channel_message(&mut self, message: Message) -> Result<(), SessionError>
    where
        E: ChannelEvents,
    {
        let out = &mut self.outbuf;
        let outcome = match message {
            Message::ChannelOpenConfirmation {
                recipient,
                sender,
                window,
                max_packet,
            } => self
                .channels
                .on_confirmation(recipient, sender, window, max_packet, out)?,
            Message::ChannelOpenFailure {
                recipient, reason, ..
            } => self.channels.on_open_failure(recipient, reason)?,
            Message::ChannelData { recipient, data } => {
                self.channels.on_data(recipient, data, out)?
            }
            Message::ChannelWindowAdjust { recipient, bytes } => {
                self.channels.on_window_adjust(recipient, bytes, out)?;
                Outcome::Nothing
            }
            Message::ChannelClose { recipient } => self.channels.on_close(recipient, out)?,
            other => {
                return Err(SessionError::UnexpectedMessage {
                    message: other.message_type(),
                    state: "handling channels",
                })
            }
        };
        self.emit_outcome(outcome);
        Ok(())
    }
}

/// The role-specific half of a session, driven by [`handle_input`].
pub(crate) trait Role {
    type Event;
    fn core(&mut self) -> &mut Core<Self::Event>;
    fn decode_context(&self) -> DecodeContext;
    fn on_message(&mut self, now: Instant, message: Message) -> Result<(), SessionError>;
    /// Called before decoding each message; returns true when the byte at the front of the
    /// input is a stray to drop (the device's tolerance for MPS's 15-byte USERAUTH_FAILURE).
    fn skip_stray_byte(&mut self, _next: u8) -> bool {
        false
    }
}

/// Appends `data` to the partial input, processes every complete message, and keeps the
/// unconsumed tail. On an error the session has queued a DISCONNECT and is closed.
pub(crate) fn handle_input<R: Role>(
    role: &mut R,
    now: Instant,
    data: &[u8],
) -> Result<(), SessionError> {
    if role.core().closed || data.is_empty() {
        return Ok(());
    }
    role.core().last_input = now;
    let pending = std::mem::take(&mut role.core().inbuf);
    if pending.is_empty() {
        // Common case: parse straight from the caller's bytes, copying only a partial tail.
        let used = process(role, now, data)?;
        keep_tail(role.core(), data.get(used..).unwrap_or_default());
    } else {
        let mut pending = pending;
        pending.extend_from_slice(data);
        let used = process(role, now, &pending)?;
        if used < pending.len() {
            pending.drain(..used);
            if !role.core().closed {
                role.core().inbuf = pending;
            }
        }
    }
    Ok(())
}

fn keep_tail<E>(core: &mut Core<E>, tail: &[u8]) {
    if !tail.is_empty() && !core.closed {
        core.inbuf = tail.to_vec();
    }
}

/// Processes complete messages from `buf`, returning how many bytes were consumed.
fn process<R: Role>(role: &mut R, now: Instant, buf: &[u8]) -> Result<usize, SessionError> {
    let mut pos = 0;
    while let Some(rest) = buf.get(pos..).filter(|rest| !rest.is_empty()) {
        if role.core().closed {
            // A DISCONNECT (or an action taken from an event) ended the session; whatever
            // follows is ignored.
            break;
        }
        if let Some(&first) = rest.first() {
            if role.skip_stray_byte(first) {
                pos += 1;
                continue;
            }
        }
        // Per message: what may come next, and how long, follows the state.
        match decode(rest, role.decode_context()) {
            Ok(Some((message, used))) => {
                pos += used;
                if let Err(e) = role.on_message(now, message) {
                    return Err(role.core().fail(e));
                }
            }
            Ok(None) => break,
            Err(e) => return Err(role.core().fail(e.into())),
        }
    }
    Ok(pos)
}

/// `now + d`, or `None` when that is beyond what `Instant` can represent (no deadline).
pub(crate) fn deadline(from: Instant, d: Duration) -> Option<Instant> {
    from.checked_add(d)
}
