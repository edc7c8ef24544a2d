//! Sans-IO implementation of APF (Intel AMT Port Forwarding), the SSH-like protocol AMT devices
//! speak inside the CIRA TLS connection: the message codec, GUID conversion, and the session
//! state machines for both ends (the CIRA server and a simulated device), with channel flow
//! control.
//!
//! Nothing here does I/O or reads a clock. A driver feeds received bytes to `handle_input`,
//! writes what `poll_transmit` returns, acts on `poll_event`, and calls `handle_timeout` at the
//! instant `poll_timeout` names. References: openamt-mps.md §1 (what MPS does, including its
//! bugs, which are not copied) and wsman-amt.md §3.7 (the device side).

#![forbid(unsafe_code)]

mod channel;
mod codec;
mod conn;
mod device;
mod error;
pub mod fuzzing;
mod guid;
mod server;
mod types;

pub use channel::{ChannelAbort, DEFAULT_CHANNEL_WINDOW, MAX_CHANNELS};
pub use codec::{
    decode, DecodeContext, GlobalRequestBody, Message, CANCEL_TCPIP_FORWARD, DIRECT_TCPIP,
    FORWARDED_TCPIP, MAX_CHANNEL_DATA, MAX_GLOBAL_REQUEST_DATA, MAX_STRING_LEN, METHOD_PASSWORD,
    PROTOCOL_VERSION_LEN, SERVICE_AUTH, SERVICE_PFWD, TCPIP_FORWARD, UDP_SEND_TO,
};
pub use device::{
    DeviceConfig, DeviceEvent, DeviceSession, FIRST_DEVICE_CHANNEL_ID, LINK_DEAD_INTERVALS,
};
pub use error::{ChannelError, DecodeError, SessionError};
pub use guid::{guid_from_wire, guid_to_wire, GuidParseError};
pub use server::{
    ServerConfig, ServerEvent, ServerSession, DEFAULT_MAX_CHANNEL_PACKET, FIRST_SERVER_CHANNEL_ID,
    KEEPALIVE_TRIGGER_PORT, MAX_FORWARDED_PORTS, PREAUTH_MAX_STRING_LEN,
};
pub use types::{ChannelId, ChannelOpenFailureReason, DisconnectReason, MessageType, Secret};
