//! The `<p>.cira.<guid>.http` request/reply contract.
//!
//! Request: payload = raw HTTP/1.1 request bytes; header [`PORT_HEADER`] picks the device port
//! (default [`DEFAULT_PORT`]). Reply: payload = raw HTTP/1.1 response bytes, or, on failure, a
//! [`ERROR_HEADER`] with a [`TunnelError`] code and a human-readable payload.

use std::fmt;

pub const PORT_HEADER: &str = "Hp-Port";
pub const ERROR_HEADER: &str = "Hp-Error";
/// WS-Man over CIRA always uses the plain-HTTP AMT port inside the (TLS) tunnel.
pub const DEFAULT_PORT: u32 = 16992;
/// Ports a caller may reach through the tunnel: WS-Man (16992/16993) and redirection (16994/16995).
pub const ALLOWED_PORTS: [u32; 4] = [16992, 16993, 16994, 16995];
/// Largest HTTP request accepted for tunnelling.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// Largest HTTP response relayed back (NATS' default max payload is 1 MiB).
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024 - 4096;

/// Why a tunnel request failed, as carried in the [`ERROR_HEADER`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TunnelError {
    /// The device is not connected (also what "no responders" means to a caller).
    NotConnected,
    /// The device did not answer within the ingress' per-request timeout.
    Timeout,
    /// The CIRA session ended while the request was in flight.
    DeviceDropped,
    /// The device refused or failed to open the APF channel.
    ChannelRefused,
    /// Too many requests in flight for this device.
    Busy,
    /// The request itself was unacceptable (port, size, framing).
    BadRequest,
    /// The device's answer was not a well-formed HTTP response or too large.
    BadResponse,
}

impl TunnelError {
    pub const ALL: [TunnelError; 7] = [
        TunnelError::NotConnected,
        TunnelError::Timeout,
        TunnelError::DeviceDropped,
        TunnelError::ChannelRefused,
        TunnelError::Busy,
        TunnelError::BadRequest,
        TunnelError::BadResponse,
    ];

    pub fn code(self) -> &'static str {
        match self {
            TunnelError::NotConnected => "not-connected",
            TunnelError::Timeout => "timeout",
            TunnelError::DeviceDropped => "device-dropped",
            TunnelError::ChannelRefused => "channel-refused",
            TunnelError::Busy => "busy",
            TunnelError::BadRequest => "bad-request",
            TunnelError::BadResponse => "bad-response",
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.code() == code)
    }
}

impl fmt::Display for TunnelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for e in TunnelError::ALL {
            assert_eq!(TunnelError::from_code(e.code()), Some(e));
        }
        assert_eq!(TunnelError::from_code("nope"), None);
    }
}
