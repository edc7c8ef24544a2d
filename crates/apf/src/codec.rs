//! APF message codec (openamt-mps.md §1.1, §1.2, §1.6): a [`Reader`] cursor that never trusts a
//! length, the [`Message`] enum, [`decode`] and [`Message::encode`].
//!
//! APF has no outer length field: the type byte and the layout for that type say how long a
//! message is. So every declared length is checked against its named maximum as soon as it is
//! read, before waiting for the bytes it announces, and a prefix of a valid message is always
//! `Ok(None)` ("need more bytes"), never an error.

use crate::error::DecodeError;
use crate::types::{ChannelOpenFailureReason, DisconnectReason, MessageType, Secret};

/// Longest string field (service, user, method, password, channel type, addresses, request
/// names, descriptions) MPS accepts.
pub const MAX_STRING_LEN: usize = 2048;
/// Largest CHANNEL_DATA payload MPS accepts (1 MiB).
pub const MAX_CHANNEL_DATA: usize = 1_048_576;
/// Largest payload of a `udp-send-to@amt.intel.com` global request we accept.
pub const MAX_GLOBAL_REQUEST_DATA: usize = 8192;

/// Service requested first, to authenticate.
pub const SERVICE_AUTH: &str = "auth@amt.intel.com";
/// Service requested after authentication, for port forwarding.
pub const SERVICE_PFWD: &str = "pfwd@amt.intel.com";
/// The only USERAUTH_REQUEST method APF uses.
pub const METHOD_PASSWORD: &str = "password";
/// Global request to forward a device port.
pub const TCPIP_FORWARD: &str = "tcpip-forward";
/// Global request to stop forwarding a device port.
pub const CANCEL_TCPIP_FORWARD: &str = "cancel-tcpip-forward";
/// Global request carrying a UDP datagram.
pub const UDP_SEND_TO: &str = "udp-send-to@amt.intel.com";
/// Channel type of server-opened tunnels to device ports.
pub const FORWARDED_TCPIP: &str = "forwarded-tcpip";
/// Channel type a device would use to reach a host behind the server.
pub const DIRECT_TCPIP: &str = "direct-tcpip";

/// Length of a PROTOCOL_VERSION message, including its 64 reserved bytes.
pub const PROTOCOL_VERSION_LEN: usize = 93;

/// What the receiver must know to resolve layouts the wire does not announce, and the bounds
/// its protocol state allows. Every bound is checked on the type byte or the length field,
/// before the bytes it announces are waited for (so before they are buffered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeContext {
    /// REQUEST_SUCCESS carries a `u32` port after a tcpip-forward (5 bytes) and nothing after a
    /// cancel-tcpip-forward (1 byte); only the requester knows which one it is waiting for.
    pub request_success_has_port: bool,
    /// Longest string field accepted (at most [`MAX_STRING_LEN`]).
    pub max_string: usize,
    /// Longest CHANNEL_DATA payload accepted (at most [`MAX_CHANNEL_DATA`]).
    pub max_channel_data: usize,
    /// When set, only these message types may come now; any other fails on its type byte.
    pub only: Option<&'static [MessageType]>,
}

impl Default for DecodeContext {
    /// The codec's own maximums, any message type.
    fn default() -> Self {
        Self {
            request_success_has_port: false,
            max_string: MAX_STRING_LEN,
            max_channel_data: MAX_CHANNEL_DATA,
            only: None,
        }
    }
}

/// Payload of a GLOBAL_REQUEST, chosen by the request name (openamt-mps.md §1.6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GlobalRequestBody {
    TcpipForward {
        address: String,
        port: u32,
    },
    CancelTcpipForward {
        address: String,
        port: u32,
    },
    UdpSendTo {
        address: String,
        port: u32,
        originator_address: String,
        originator_port: u32,
        data: Vec<u8>,
    },
    /// A request name we do not know. Its payload length is not on the wire, so decoding
    /// consumes only the header (type, name, want-reply) and yields an empty vector; any payload
    /// that followed is then read as the next message (which usually fails to decode). This is a
    /// limitation of APF, not something a receiver can fix. Encoding writes the bytes verbatim.
    Unknown(Vec<u8>),
}

/// One APF message, owning its data.
///
/// Encoding does not validate lengths: strings longer than [`MAX_STRING_LEN`] or data longer
/// than [`MAX_CHANNEL_DATA`] encode, but the peer will reject them. A `GlobalRequest`'s `name`
/// must match its `body` to decode back to the same value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Disconnect {
        reason: DisconnectReason,
    },
    ServiceRequest {
        service: String,
    },
    ServiceAccept {
        service: String,
    },
    UserauthRequest {
        username: String,
        service: String,
        method: String,
        /// Present exactly when `method` is `"password"`.
        password: Option<Secret>,
    },
    UserauthFailure {
        methods: String,
    },
    UserauthSuccess,
    GlobalRequest {
        name: String,
        want_reply: bool,
        body: GlobalRequestBody,
    },
    RequestSuccess {
        port: Option<u32>,
    },
    RequestFailure,
    ChannelOpen {
        channel_type: String,
        sender: u32,
        window: u32,
        max_packet: u32,
        target_address: String,
        target_port: u32,
        source_address: String,
        source_port: u32,
    },
    ChannelOpenConfirmation {
        recipient: u32,
        sender: u32,
        window: u32,
        max_packet: u32,
    },
    ChannelOpenFailure {
        recipient: u32,
        reason: ChannelOpenFailureReason,
        description: String,
        language: String,
    },
    ChannelWindowAdjust {
        recipient: u32,
        bytes: u32,
    },
    ChannelData {
        recipient: u32,
        data: Vec<u8>,
    },
    ChannelClose {
        recipient: u32,
    },
    ProtocolVersion {
        major: u32,
        minor: u32,
        trigger: u32,
        uuid: [u8; 16],
    },
    KeepaliveRequest {
        cookie: u32,
    },
    KeepaliveReply {
        cookie: u32,
    },
    KeepaliveOptionsRequest {
        interval: u32,
        timeout: u32,
    },
    KeepaliveOptionsReply {
        interval: u32,
        timeout: u32,
    },
}

/// Why a read stopped: not enough bytes yet, or bytes that can never become valid.
#[derive(Debug)]
pub(crate) enum Short {
    Incomplete,
    Invalid(DecodeError),
}

impl From<DecodeError> for Short {
    fn from(e: DecodeError) -> Self {
        Short::Invalid(e)
    }
}

/// A cursor over received bytes with checked reads only.
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
    consumed: usize,
    max_string: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], max_string: usize) -> Self {
        Self {
            rest: buf,
            consumed: 0,
            max_string: max_string.min(MAX_STRING_LEN),
        }
    }

    pub(crate) fn consumed(&self) -> usize {
        self.consumed
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Short> {
        let (head, tail) = self.rest.split_at_checked(n).ok_or(Short::Incomplete)?;
        self.rest = tail;
        self.consumed += n;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Short> {
        let (head, tail) = self
            .rest
            .split_first_chunk::<N>()
            .ok_or(Short::Incomplete)?;
        self.rest = tail;
        self.consumed += N;
        Ok(*head)
    }

    fn u8(&mut self) -> Result<u8, Short> {
        let [b] = self.array::<1>()?;
        Ok(b)
    }

    fn u16(&mut self) -> Result<u16, Short> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, Short> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// A `u32` length followed by that many bytes; the length is checked against `max` before
    /// waiting for the bytes, so a huge declared length fails at once instead of buffering.
    fn bytes(&mut self, field: &'static str, max: usize) -> Result<&'a [u8], Short> {
        let len = self.u32()?;
        let n = usize::try_from(len).unwrap_or(usize::MAX);
        if n > max {
            return Err(DecodeError::TooLong { field, len, max }.into());
        }
        self.take(n)
    }

    fn string(&mut self, field: &'static str) -> Result<String, Short> {
        let raw = self.bytes(field, self.max_string)?;
        String::from_utf8(raw.to_vec()).map_err(|_| DecodeError::InvalidUtf8 { field }.into())
    }

    /// SSH booleans are "any non-zero is true"; we accept only 0 and 1 so that every decoded
    /// message re-encodes to the bytes it came from.
    fn bool(&mut self, field: &'static str) -> Result<bool, Short> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(DecodeError::InvalidValue {
                field,
                value: u32::from(other),
            }
            .into()),
        }
    }
}

/// Decodes one message from the front of `buf`.
///
/// `Ok(None)` means `buf` is a prefix of a message (possibly empty) and more bytes are needed;
/// `Ok(Some((message, n)))` means the first `n` bytes were one message.
pub fn decode(buf: &[u8], ctx: DecodeContext) -> Result<Option<(Message, usize)>, DecodeError> {
    let mut r = Reader::new(buf, ctx.max_string);
    match decode_message(&mut r, ctx) {
        Ok(message) => Ok(Some((message, r.consumed()))),
        Err(Short::Incomplete) => Ok(None),
        Err(Short::Invalid(e)) => Err(e),
    }
}

fn decode_message(r: &mut Reader<'_>, ctx: DecodeContext) -> Result<Message, Short> {
    let ty = MessageType(r.u8()?);
    if ctx.only.is_some_and(|only| !only.contains(&ty)) {
        return Err(DecodeError::NotAllowedNow(ty).into());
    }
    let message = match ty {
        MessageType::DISCONNECT => {
            let reason = DisconnectReason(r.u32()?);
            let _reserved = r.u16()?;
            Message::Disconnect { reason }
        }
        MessageType::SERVICE_REQUEST => Message::ServiceRequest {
            service: r.string("service name")?,
        },
        MessageType::SERVICE_ACCEPT => Message::ServiceAccept {
            service: r.string("service name")?,
        },
        MessageType::USERAUTH_REQUEST => decode_userauth_request(r)?,
        MessageType::USERAUTH_FAILURE => {
            let methods = r.string("auth methods")?;
            // SSH's "partial success" flag. APF has a single auth step, so it is always FALSE.
            // The reference MPS writes two zero bytes here (15 bytes in all); we read the
            // 14-byte SSH layout and the device session skips the stray zero.
            if r.bool("partial success")? {
                return Err(
                    DecodeError::Unsupported("USERAUTH_FAILURE with partial success").into(),
                );
            }
            Message::UserauthFailure { methods }
        }
        MessageType::USERAUTH_SUCCESS => Message::UserauthSuccess,
        MessageType::GLOBAL_REQUEST => decode_global_request(r)?,
        MessageType::REQUEST_SUCCESS => Message::RequestSuccess {
            port: if ctx.request_success_has_port {
                Some(r.u32()?)
            } else {
                None
            },
        },
        MessageType::REQUEST_FAILURE => Message::RequestFailure,
        MessageType::CHANNEL_OPEN => Message::ChannelOpen {
            channel_type: r.string("channel type")?,
            sender: r.u32()?,
            window: r.u32()?,
            max_packet: r.u32()?,
            target_address: r.string("target address")?,
            target_port: r.u32()?,
            source_address: r.string("source address")?,
            source_port: r.u32()?,
        },
        MessageType::CHANNEL_OPEN_CONFIRMATION => Message::ChannelOpenConfirmation {
            recipient: r.u32()?,
            sender: r.u32()?,
            window: r.u32()?,
            max_packet: r.u32()?,
        },
        // MPS reads only 17 bytes (empty strings assumed); we read the real layout.
        MessageType::CHANNEL_OPEN_FAILURE => Message::ChannelOpenFailure {
            recipient: r.u32()?,
            reason: ChannelOpenFailureReason(r.u32()?),
            description: r.string("failure description")?,
            language: r.string("language tag")?,
        },
        MessageType::CHANNEL_WINDOW_ADJUST => Message::ChannelWindowAdjust {
            recipient: r.u32()?,
            bytes: r.u32()?,
        },
        MessageType::CHANNEL_DATA => Message::ChannelData {
            recipient: r.u32()?,
            data: r
                .bytes("channel data", ctx.max_channel_data.min(MAX_CHANNEL_DATA))?
                .to_vec(),
        },
        MessageType::CHANNEL_CLOSE => Message::ChannelClose {
            recipient: r.u32()?,
        },
        MessageType::PROTOCOL_VERSION => {
            let major = r.u32()?;
            let minor = r.u32()?;
            let trigger = r.u32()?;
            let uuid = r.array::<16>()?;
            // Reserved; real devices send zeros, and we do not insist.
            let _reserved = r.array::<64>()?;
            Message::ProtocolVersion {
                major,
                minor,
                trigger,
                uuid,
            }
        }
        MessageType::KEEPALIVE_REQUEST => Message::KeepaliveRequest { cookie: r.u32()? },
        MessageType::KEEPALIVE_REPLY => Message::KeepaliveReply { cookie: r.u32()? },
        MessageType::KEEPALIVE_OPTIONS_REQUEST => Message::KeepaliveOptionsRequest {
            interval: r.u32()?,
            timeout: r.u32()?,
        },
        MessageType::KEEPALIVE_OPTIONS_REPLY => Message::KeepaliveOptionsReply {
            interval: r.u32()?,
            timeout: r.u32()?,
        },
        other => return Err(DecodeError::UnknownType(other).into()),
    };
    Ok(message)
}

fn decode_userauth_request(r: &mut Reader<'_>) -> Result<Message, Short> {
    let username = r.string("user name")?;
    let service = r.string("auth service name")?;
    let method = r.string("auth method")?;
    let password = match method.as_str() {
        METHOD_PASSWORD => {
            // TRUE would announce an SSH password change (old and new password); APF never
            // sends one, and decoding it as a plain request would desynchronise the stream.
            if r.bool("password change flag")? {
                return Err(DecodeError::Unsupported("USERAUTH_REQUEST password change").into());
            }
            Some(Secret::new(r.string("password")?))
        }
        // SSH's "none" probe carries nothing after the method.
        "none" => None,
        // Any other method has fields whose layout we cannot know, so the stream cannot be
        // resynchronised.
        _ => return Err(DecodeError::Unsupported("USERAUTH_REQUEST method").into()),
    };
    Ok(Message::UserauthRequest {
        username,
        service,
        method,
        password,
    })
}

fn decode_global_request(r: &mut Reader<'_>) -> Result<Message, Short> {
    let name = r.string("global request name")?;
    let want_reply = r.bool("want reply")?;
    let body = match name.as_str() {
        TCPIP_FORWARD => GlobalRequestBody::TcpipForward {
            address: r.string("bind address")?,
            port: r.u32()?,
        },
        CANCEL_TCPIP_FORWARD => GlobalRequestBody::CancelTcpipForward {
            address: r.string("bind address")?,
            port: r.u32()?,
        },
        UDP_SEND_TO => GlobalRequestBody::UdpSendTo {
            address: r.string("udp address")?,
            port: r.u32()?,
            originator_address: r.string("udp originator address")?,
            originator_port: r.u32()?,
            data: r.bytes("udp data", MAX_GLOBAL_REQUEST_DATA)?.to_vec(),
        },
        // See `GlobalRequestBody::Unknown`: the payload length is not knowable.
        _ => GlobalRequestBody::Unknown(Vec::new()),
    };
    Ok(Message::GlobalRequest {
        name,
        want_reply,
        body,
    })
}

/// Lengths we write come from our own values; a length beyond `u32` cannot occur in practice
/// (and would be rejected by the peer's maximums anyway).
fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_u32(out, len_u32(b.len()));
    out.extend_from_slice(b);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

/// Writes the 9-byte CHANNEL_DATA header; the caller appends exactly `len` payload bytes. Lets
/// the channel code copy payload straight from its send queue.
pub(crate) fn put_channel_data_header(out: &mut Vec<u8>, recipient: u32, len: usize) {
    out.push(MessageType::CHANNEL_DATA.0);
    put_u32(out, recipient);
    put_u32(out, len_u32(len));
}

impl Message {
    /// The type byte this message is sent with.
    pub fn message_type(&self) -> MessageType {
        match self {
            Message::Disconnect { .. } => MessageType::DISCONNECT,
            Message::ServiceRequest { .. } => MessageType::SERVICE_REQUEST,
            Message::ServiceAccept { .. } => MessageType::SERVICE_ACCEPT,
            Message::UserauthRequest { .. } => MessageType::USERAUTH_REQUEST,
            Message::UserauthFailure { .. } => MessageType::USERAUTH_FAILURE,
            Message::UserauthSuccess => MessageType::USERAUTH_SUCCESS,
            Message::GlobalRequest { .. } => MessageType::GLOBAL_REQUEST,
            Message::RequestSuccess { .. } => MessageType::REQUEST_SUCCESS,
            Message::RequestFailure => MessageType::REQUEST_FAILURE,
            Message::ChannelOpen { .. } => MessageType::CHANNEL_OPEN,
            Message::ChannelOpenConfirmation { .. } => MessageType::CHANNEL_OPEN_CONFIRMATION,
            Message::ChannelOpenFailure { .. } => MessageType::CHANNEL_OPEN_FAILURE,
            Message::ChannelWindowAdjust { .. } => MessageType::CHANNEL_WINDOW_ADJUST,
            Message::ChannelData { .. } => MessageType::CHANNEL_DATA,
            Message::ChannelClose { .. } => MessageType::CHANNEL_CLOSE,
            Message::ProtocolVersion { .. } => MessageType::PROTOCOL_VERSION,
            Message::KeepaliveRequest { .. } => MessageType::KEEPALIVE_REQUEST,
            Message::KeepaliveReply { .. } => MessageType::KEEPALIVE_REPLY,
            Message::KeepaliveOptionsRequest { .. } => MessageType::KEEPALIVE_OPTIONS_REQUEST,
            Message::KeepaliveOptionsReply { .. } => MessageType::KEEPALIVE_OPTIONS_REPLY,
        }
    }

    /// Appends the wire form of this message to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.message_type().0);
        match self {
            Message::Disconnect { reason } => {
                put_u32(out, reason.0);
                out.extend_from_slice(&[0, 0]);
            }
            Message::ServiceRequest { service } | Message::ServiceAccept { service } => {
                put_str(out, service);
            }
            Message::UserauthRequest {
                username,
                service,
                method,
                password,
            } => {
                put_str(out, username);
                put_str(out, service);
                put_str(out, method);
                if let Some(password) = password {
                    out.push(0);
                    put_str(out, password.expose());
                }
            }
            // The 14-byte SSH/APF layout, not MPS's 15-byte one.
            Message::UserauthFailure { methods } => {
                put_str(out, methods);
                out.push(0);
            }
            Message::UserauthSuccess | Message::RequestFailure => {}
            Message::GlobalRequest {
                name,
                want_reply,
                body,
            } => {
                put_str(out, name);
                out.push(u8::from(*want_reply));
                match body {
                    GlobalRequestBody::TcpipForward { address, port }
                    | GlobalRequestBody::CancelTcpipForward { address, port } => {
                        put_str(out, address);
                        put_u32(out, *port);
                    }
                    GlobalRequestBody::UdpSendTo {
                        address,
                        port,
                        originator_address,
                        originator_port,
                        data,
                    } => {
                        put_str(out, address);
                        put_u32(out, *port);
                        put_str(out, originator_address);
                        put_u32(out, *originator_port);
                        put_bytes(out, data);
                    }
                    GlobalRequestBody::Unknown(payload) => out.extend_from_slice(payload),
                }
            }
            Message::RequestSuccess { port } => {
                if let Some(port) = port {
                    put_u32(out, *port);
                }
            }
            Message::ChannelOpen {
                channel_type,
                sender,
                window,
                max_packet,
                target_address,
                target_port,
                source_address,
                source_port,
            } => {
                put_str(out, channel_type);
                put_u32(out, *sender);
                put_u32(out, *window);
                put_u32(out, *max_packet);
                put_str(out, target_address);
                put_u32(out, *target_port);
                put_str(out, source_address);
                put_u32(out, *source_port);
            }
            Message::ChannelOpenConfirmation {
                recipient,
                sender,
                window,
                max_packet,
            } => {
                put_u32(out, *recipient);
                put_u32(out, *sender);
                put_u32(out, *window);
                put_u32(out, *max_packet);
            }
            Message::ChannelOpenFailure {
                recipient,
                reason,
                description,
                language,
            } => {
                put_u32(out, *recipient);
                put_u32(out, reason.0);
                put_str(out, description);
                put_str(out, language);
            }
            Message::ChannelWindowAdjust { recipient, bytes } => {
                put_u32(out, *recipient);
                put_u32(out, *bytes);
            }
            Message::ChannelData { recipient, data } => {
                put_u32(out, *recipient);
                put_bytes(out, data);
            }
            Message::ChannelClose { recipient } => put_u32(out, *recipient),
            Message::ProtocolVersion {
                major,
                minor,
                trigger,
                uuid,
            } => {
                put_u32(out, *major);
                put_u32(out, *minor);
                put_u32(out, *trigger);
                out.extend_from_slice(uuid);
                out.extend_from_slice(&[0u8; 64]);
            }
            Message::KeepaliveRequest { cookie } | Message::KeepaliveReply { cookie } => {
                put_u32(out, *cookie);
            }
            Message::KeepaliveOptionsRequest { interval, timeout }
            | Message::KeepaliveOptionsReply { interval, timeout } => {
                put_u32(out, *interval);
                put_u32(out, *timeout);
            }
        }
    }

    /// The wire form of this message in a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

#[cfg(test)]
mod tests;
