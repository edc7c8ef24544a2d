//! The device tunnel: request/reply on `<p>.cira.node.<node>.http.<guid>`, and
//! [`TunnelClient`], which finds the node in presence.
//!
//! Request: payload = raw HTTP/1.1 request bytes; header [`PORT_HEADER`] picks the device port
//! (default [`DEFAULT_PORT`]). Reply: payload = raw HTTP/1.1 response bytes, or, on failure, a
//! [`ERROR_HEADER`] with a [`TunnelError`] code and a human-readable payload.

use std::fmt;

pub const PORT_HEADER: &str = "Hp-Port";
pub const ERROR_HEADER: &str = "Hp-Error";
/// W3C trace context of the caller's operation, carried to the ingress for its logs.
pub const TRACE_HEADER: &str = "traceparent";
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

/// A W3C trace context (`00-<trace id>-<span id>-<flags>`), or `None` if `s` is not one.
pub fn parse_traceparent(s: &str) -> Option<(&str, &str)> {
    let mut it = s.trim().split('-');
    let (v, trace, span, flags) = (it.next()?, it.next()?, it.next()?, it.next()?);
    let hex = |x: &str, n: usize| x.len() == n && x.bytes().all(|b| b.is_ascii_hexdigit());
    let zero = |x: &str| x.bytes().all(|b| b == b'0');
    (it.next().is_none()
        && v == "00"
        && hex(trace, 32)
        && !zero(trace)
        && hex(span, 16)
        && !zero(span)
        && hex(flags, 2))
    .then_some((trace, span))
}

/// A new span of the trace in `parent` (a fresh trace when there is none or it is invalid).
pub fn child_traceparent(parent: Option<&str>) -> String {
    let span = format!("{:016x}", fastrand::u64(1..));
    match parent.and_then(parse_traceparent) {
        Some((trace, _)) => format!("00-{}-{span}-01", trace.to_ascii_lowercase()),
        None => format!("00-{:032x}-{span}-01", fastrand::u128(1..)),
    }
}

#[cfg(test)]
mod trace_tests {
    use super::*;

    #[test]
    fn traceparent_is_validated_and_continued() {
        let p = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            parse_traceparent(p),
            Some(("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"))
        );
        for bad in [
            "",
            "00-x-y-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
        let child = child_traceparent(Some(p));
        assert!(child.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert_ne!(child, p);
        assert!(parse_traceparent(&child_traceparent(Some("junk"))).is_some());
    }
}

/// Why a tunnel call failed, as a caller sees it.
#[derive(Debug, thiserror::Error)]
pub enum TunnelCallError {
    /// No session: no presence entry, a dead node, or a node that no longer holds the device.
    #[error("device {0} is not connected")]
    NotConnected(String),
    /// The ingress or the device failed the request.
    #[error("device {guid}: {error}: {detail}")]
    Failed {
        guid: String,
        error: TunnelError,
        detail: String,
    },
    /// No answer within the caller's deadline.
    #[error("device {0}: no answer in time")]
    Timeout(String),
    /// NATS itself failed (disconnected, bucket unavailable).
    #[error("NATS: {0}")]
    Nats(String),
}

/// How long a device's node, once read from presence, is used without reading it again. A
/// device that moved in the meantime costs one retry: its old node answers "not connected"
/// (or nobody answers), and the node is read again.
const NODE_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(10);
const NODE_CACHE_MAX: usize = 200_000;

type NodeCache = std::sync::Arc<
    std::sync::Mutex<std::collections::HashMap<String, (String, std::time::Instant)>>,
>;

/// Sends HTTP requests to devices through whichever ingress node holds them: the node is read
/// from the presence bucket (and cached briefly), the request goes to that node's subject.
#[derive(Clone)]
pub struct TunnelClient {
    nats: async_nats::Client,
    names: crate::Names,
    presence: async_nats::jetstream::kv::Store,
    nodes: NodeCache,
}

impl TunnelClient {
    /// A client over `names`' presence bucket (created, if missing, on `replicas` servers).
    pub async fn new(
        nats: async_nats::Client,
        names: crate::Names,
        replicas: usize,
    ) -> Result<Self, crate::presence::PresenceError> {
        let js = async_nats::jetstream::new(nats.clone());
        let presence = crate::presence::presence_bucket(&js, &names, replicas).await?;
        Ok(Self {
            nats,
            names,
            presence,
            nodes: NodeCache::default(),
        })
    }

    fn cached_node(&self, guid: &str) -> Option<String> {
        let cache = self
            .nodes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        cache
            .get(guid)
            .filter(|(_, at)| at.elapsed() < NODE_CACHE_TTL)
            .map(|(node, _)| node.clone())
    }

    fn remember_node(&self, guid: &str, node: Option<&str>) {
        let mut cache = self
            .nodes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match node {
            Some(node) => {
                if cache.len() >= NODE_CACHE_MAX {
                    cache.clear();
                }
                cache.insert(
                    guid.to_string(),
                    (node.to_string(), std::time::Instant::now()),
                );
            }
            None => {
                cache.remove(guid);
            }
        }
    }

    /// Asks the node holding the device's current session to end it (the device is told and
    /// reconnects by itself). `Ok(false)` when the device had no session to end.
    pub async fn disconnect(
        &self,
        guid: &str,
        timeout: std::time::Duration,
    ) -> Result<bool, TunnelCallError> {
        let Some(presence) = self.locate(guid).await? else {
            return Ok(false);
        };
        self.remember_node(guid, None);
        let subject = self.names.cira_node_disconnect(&presence.node, guid);
        let asked = self
            .nats
            .request(subject, bytes::Bytes::from(presence.session.clone()));
        match tokio::time::timeout(timeout, asked).await {
            Ok(Ok(reply)) => Ok(reply.payload.as_ref() == b"closing"),
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => Ok(false),
            Ok(Err(e)) => Err(TunnelCallError::Nats(e.to_string())),
            Err(_) => Err(TunnelCallError::Timeout(guid.to_owned())),
        }
    }

    /// Where the device's current session is, if it has one.
    pub async fn locate(
        &self,
        guid: &str,
    ) -> Result<Option<crate::presence::Presence>, TunnelCallError> {
        match self.presence.get(guid).await {
            Ok(Some(v)) => Ok(serde_json::from_slice(&v).ok()),
            Ok(None) => Ok(None),
            Err(e) => Err(TunnelCallError::Nats(e.to_string())),
        }
    }

    /// Sends `http` (a complete HTTP/1.1 request) to `port` of the device (default
    /// [`DEFAULT_PORT`]) and returns the device's complete HTTP response.
    pub async fn request(
        &self,
        guid: &str,
        port: Option<u32>,
        http: bytes::Bytes,
        timeout: std::time::Duration,
    ) -> Result<bytes::Bytes, TunnelCallError> {
        self.request_traced(guid, port, http, timeout, None).await
    }

    /// [`TunnelClient::request`] carrying a W3C `traceparent` to the ingress.
    pub async fn request_traced(
        &self,
        guid: &str,
        port: Option<u32>,
        http: bytes::Bytes,
        timeout: std::time::Duration,
        trace: Option<&str>,
    ) -> Result<bytes::Bytes, TunnelCallError> {
        if let Some(node) = self.cached_node(guid) {
            match self
                .request_via(&node, guid, port, http.clone(), timeout, trace)
                .await
            {
                Err(TunnelCallError::NotConnected(_)) => self.remember_node(guid, None),
                other => return other,
            }
        }
        let Some(presence) = self.locate(guid).await? else {
            return Err(TunnelCallError::NotConnected(guid.to_string()));
        };
        let result = self
            .request_via(&presence.node, guid, port, http, timeout, trace)
            .await;
        if !matches!(result, Err(TunnelCallError::NotConnected(_))) {
            self.remember_node(guid, Some(&presence.node));
        }
        result
    }

    async fn request_via(
        &self,
        node: &str,
        guid: &str,
        port: Option<u32>,
        http: bytes::Bytes,
        timeout: std::time::Duration,
        trace: Option<&str>,
    ) -> Result<bytes::Bytes, TunnelCallError> {
        let mut headers = async_nats::HeaderMap::new();
        if let Some(port) = port {
            headers.insert(PORT_HEADER, port.to_string().as_str());
        }
        if let Some(t) = trace {
            headers.insert(TRACE_HEADER, t);
        }
        let subject = self.names.cira_node_http(node, guid);
        let call = self.nats.request_with_headers(subject, headers, http);
        let reply = match tokio::time::timeout(timeout, call).await {
            Err(_) => return Err(TunnelCallError::Timeout(guid.to_string())),
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                // The node in presence is gone.
                return Err(TunnelCallError::NotConnected(guid.to_string()));
            }
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::TimedOut => {
                return Err(TunnelCallError::Timeout(guid.to_string()))
            }
            Ok(Err(e)) => return Err(TunnelCallError::Nats(e.to_string())),
            Ok(Ok(reply)) => reply,
        };
        let code = reply
            .headers
            .as_ref()
            .and_then(|h| h.get(ERROR_HEADER))
            .map(|v| v.as_str().to_string());
        match code {
            None => Ok(reply.payload),
            Some(code) => match TunnelError::from_code(&code) {
                Some(TunnelError::NotConnected) => {
                    Err(TunnelCallError::NotConnected(guid.to_string()))
                }
                Some(error) => Err(TunnelCallError::Failed {
                    guid: guid.to_string(),
                    error,
                    detail: String::from_utf8_lossy(&reply.payload).into_owned(),
                }),
                None => Err(TunnelCallError::Nats(format!(
                    "unknown tunnel error {code:?}"
                ))),
            },
        }
    }
}
