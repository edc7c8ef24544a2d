//! Wire-number newtypes (message types, disconnect and channel-open failure reasons), channel
//! ids and the password [`Secret`].
//!
//! Wire numbers are newtypes rather than Rust enums so that a value this crate does not know
//! survives decoding and still prints usefully (in hex) in logs and errors.

use std::fmt;

/// Defines a `pub struct $name(pub $repr)` with named constants, `name()`, `description()`,
/// a `Debug` that prints `Type::CONST` (or `Type(0x..)` when unknown) and a `Display` that
/// prints the description (or the value in hex when unknown).
macro_rules! wire_number {
    (
        $(#[$meta:meta])*
        $name:ident($repr:ty) {
            $( $(#[$cmeta:meta])* $konst:ident = $value:literal => $text:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub $repr);

        impl $name {
            $( $(#[$cmeta])* pub const $konst: Self = Self($value); )*

            /// The constant's name, or `None` for a value this crate does not know.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $( $value => Some(stringify!($konst)), )*
                    _ => None,
                }
            }

            /// What the value means, or `None` for a value this crate does not know.
            pub fn description(self) -> Option<&'static str> {
                match self.0 {
                    $( $value => Some($text), )*
                    _ => None,
                }
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.name() {
                    Some(n) => write!(f, concat!(stringify!($name), "::{}"), n),
                    None => write!(f, concat!(stringify!($name), "({:#x})"), self.0),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.description() {
                    Some(text) => f.write_str(text),
                    None => write!(f, "{:#x}", self.0),
                }
            }
        }

        impl From<$repr> for $name {
            fn from(value: $repr) -> Self {
                Self(value)
            }
        }
    };
}

wire_number! {
    /// The first byte of every APF message (openamt-mps.md §1.2).
    MessageType(u8) {
        DISCONNECT = 1 => "DISCONNECT",
        SERVICE_REQUEST = 5 => "SERVICE_REQUEST",
        SERVICE_ACCEPT = 6 => "SERVICE_ACCEPT",
        USERAUTH_REQUEST = 50 => "USERAUTH_REQUEST",
        USERAUTH_FAILURE = 51 => "USERAUTH_FAILURE",
        USERAUTH_SUCCESS = 52 => "USERAUTH_SUCCESS",
        GLOBAL_REQUEST = 80 => "GLOBAL_REQUEST",
        REQUEST_SUCCESS = 81 => "REQUEST_SUCCESS",
        REQUEST_FAILURE = 82 => "REQUEST_FAILURE",
        CHANNEL_OPEN = 90 => "CHANNEL_OPEN",
        CHANNEL_OPEN_CONFIRMATION = 91 => "CHANNEL_OPEN_CONFIRMATION",
        CHANNEL_OPEN_FAILURE = 92 => "CHANNEL_OPEN_FAILURE",
        CHANNEL_WINDOW_ADJUST = 93 => "CHANNEL_WINDOW_ADJUST",
        CHANNEL_DATA = 94 => "CHANNEL_DATA",
        CHANNEL_CLOSE = 97 => "CHANNEL_CLOSE",
        PROTOCOL_VERSION = 192 => "PROTOCOL_VERSION",
        KEEPALIVE_REQUEST = 208 => "KEEPALIVE_REQUEST",
        KEEPALIVE_REPLY = 209 => "KEEPALIVE_REPLY",
        KEEPALIVE_OPTIONS_REQUEST = 210 => "KEEPALIVE_OPTIONS_REQUEST",
        KEEPALIVE_OPTIONS_REPLY = 211 => "KEEPALIVE_OPTIONS_REPLY",
    }
}

wire_number! {
    /// Reason code of an APF DISCONNECT (the APFDisconnectCode table, openamt-mps.md §1.2).
    DisconnectReason(u32) {
        HOST_NOT_ALLOWED_TO_CONNECT = 1 => "host not allowed to connect",
        PROTOCOL_ERROR = 2 => "protocol error",
        KEY_EXCHANGE_FAILED = 3 => "key exchange failed",
        RESERVED = 4 => "reserved",
        MAC_ERROR = 5 => "MAC error",
        COMPRESSION_ERROR = 6 => "compression error",
        SERVICE_NOT_AVAILABLE = 7 => "service not available",
        PROTOCOL_VERSION_NOT_SUPPORTED = 8 => "protocol version not supported",
        HOST_KEY_NOT_VERIFIABLE = 9 => "host key not verifiable",
        CONNECTION_LOST = 10 => "connection lost",
        BY_APPLICATION = 11 => "by application",
        TOO_MANY_CONNECTIONS = 12 => "too many connections",
        AUTH_CANCELLED_BY_USER = 13 => "auth cancelled by user",
        NO_MORE_AUTH_METHODS_AVAILABLE = 14 => "no more auth methods available",
        INVALID_CREDENTIALS = 15 => "invalid credentials",
        CONNECTION_TIMED_OUT = 16 => "connection timed out",
        BY_POLICY = 17 => "by policy",
        TEMPORARILY_UNAVAILABLE = 18 => "temporarily unavailable",
    }
}

wire_number! {
    /// Reason code of a CHANNEL_OPEN_FAILURE (openamt-mps.md §1.2).
    ChannelOpenFailureReason(u32) {
        ADMINISTRATIVELY_PROHIBITED = 1 => "administratively prohibited",
        CONNECT_FAILED = 2 => "connect failed",
        UNKNOWN_CHANNEL_TYPE = 3 => "unknown channel type",
        RESOURCE_SHORTAGE = 4 => "resource shortage",
    }
}

/// A channel id chosen by the local side (the "sender channel" we put on the wire). The peer's
/// id for the same channel stays inside the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId(pub u32);

impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A password. `Debug` prints `***` so it can never leak through logs, events or errors.
///
/// Equality is the derived, non-constant-time one (it exists for tests); compare credentials
/// with a constant-time comparison in the application.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a password.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The password itself. Callers must not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values_print_names() {
        assert_eq!(
            format!("{:?}", MessageType::CHANNEL_OPEN),
            "MessageType::CHANNEL_OPEN"
        );
        assert_eq!(MessageType::CHANNEL_OPEN.to_string(), "CHANNEL_OPEN");
        assert_eq!(
            format!("{:?}", DisconnectReason::INVALID_CREDENTIALS),
            "DisconnectReason::INVALID_CREDENTIALS"
        );
        assert_eq!(
            DisconnectReason::PROTOCOL_ERROR.to_string(),
            "protocol error"
        );
        assert_eq!(
            ChannelOpenFailureReason::CONNECT_FAILED.to_string(),
            "connect failed"
        );
    }

    #[test]
    fn unknown_values_print_hex() {
        assert_eq!(format!("{:?}", MessageType(0x47)), "MessageType(0x47)");
        assert_eq!(MessageType(0x47).to_string(), "0x47");
        assert_eq!(DisconnectReason(0x1234).to_string(), "0x1234");
        assert_eq!(
            format!("{:?}", ChannelOpenFailureReason(99)),
            "ChannelOpenFailureReason(0x63)"
        );
        assert_eq!(MessageType(0).name(), None);
    }

    #[test]
    fn reason_table_is_complete() {
        for code in 1..=18 {
            assert!(DisconnectReason(code).name().is_some(), "{code}");
        }
        assert!(DisconnectReason(19).name().is_none());
        for code in 1..=4 {
            assert!(ChannelOpenFailureReason(code).name().is_some(), "{code}");
        }
    }

    #[test]
    fn secret_debug_is_redacted() {
        let s = Secret::new("P@ssw0rd");
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some(***)");
        assert_eq!(s.expose(), "P@ssw0rd");
    }
}
