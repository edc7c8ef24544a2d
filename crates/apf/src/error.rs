//! Error types, one per layer: [`DecodeError`] for the codec, [`SessionError`] for the session
//! state machines (mapped once, in [`SessionError::disconnect_reason`], to what the peer is
//! told) and [`ChannelError`] for application actions that cannot be carried out.

use crate::types::{ChannelId, DisconnectReason, MessageType};

/// Bytes that are not a valid APF message. "Not enough bytes yet" is never an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown message type {0}")]
    UnknownType(MessageType),
    #[error("message type {0} cannot come in this state")]
    NotAllowedNow(MessageType),
    #[error("{field} length {len} exceeds the maximum of {max}")]
    TooLong {
        field: &'static str,
        len: u32,
        max: usize,
    },
    #[error("{field} is not valid UTF-8")]
    InvalidUtf8 { field: &'static str },
    #[error("{field} has invalid value {value:#x}")]
    InvalidValue { field: &'static str, value: u32 },
    #[error("unsupported message layout: {0}")]
    Unsupported(&'static str),
}

/// A fatal session error. When `handle_input` returns one, the session has already queued an
/// APF DISCONNECT with [`SessionError::disconnect_reason`] and is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("malformed APF message: {0}")]
    Decode(#[from] DecodeError),
    #[error("unexpected {message} message while {state}")]
    UnexpectedMessage {
        message: MessageType,
        state: &'static str,
    },
    #[error("service {0:?} is not available")]
    ServiceNotAvailable(String),
    #[error("window adjust on channel {channel} overflows the send window")]
    WindowOverflow { channel: ChannelId },
    #[error("authentication failed {0} times")]
    TooManyAuthFailures(u32),
}

impl SessionError {
    /// The reason code sent to the peer in the DISCONNECT that ends the session.
    pub fn disconnect_reason(&self) -> DisconnectReason {
        match self {
            SessionError::Decode(_)
            | SessionError::UnexpectedMessage { .. }
            | SessionError::WindowOverflow { .. } => DisconnectReason::PROTOCOL_ERROR,
            SessionError::ServiceNotAvailable(_) => DisconnectReason::SERVICE_NOT_AVAILABLE,
            SessionError::TooManyAuthFailures(_) => DisconnectReason::INVALID_CREDENTIALS,
        }
    }
}

/// An application action on a channel (or opening one) that cannot be carried out. These never
/// close the session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error("the session is closed")]
    SessionClosed,
    #[error("the session is not authenticated yet")]
    NotReady,
    #[error("no channel {0}")]
    UnknownChannel(ChannelId),
    #[error("channel {0} is closing")]
    Closing(ChannelId),
    #[error("too many open channels")]
    TooManyChannels,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_to_disconnect_reasons() {
        let protocol = [
            SessionError::Decode(DecodeError::UnknownType(MessageType(0))),
            SessionError::UnexpectedMessage {
                message: MessageType::GLOBAL_REQUEST,
                state: "awaiting authentication",
            },
            SessionError::WindowOverflow {
                channel: ChannelId(4),
            },
        ];
        for e in protocol {
            assert_eq!(e.disconnect_reason(), DisconnectReason::PROTOCOL_ERROR);
        }
        assert_eq!(
            SessionError::TooManyAuthFailures(3).disconnect_reason(),
            DisconnectReason::INVALID_CREDENTIALS
        );
        assert_eq!(
            SessionError::ServiceNotAvailable("x".into()).disconnect_reason(),
            DisconnectReason::SERVICE_NOT_AVAILABLE
        );
    }

    #[test]
    fn messages_print_unknown_types_in_hex() {
        let e = SessionError::Decode(DecodeError::UnknownType(MessageType(0x47)));
        assert_eq!(
            e.to_string(),
            "malformed APF message: unknown message type 0x47"
        );
    }
}
