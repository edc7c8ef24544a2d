//! The node's table of live device sessions, and the dispatcher that routes the node's one
//! NATS subscription (`<p>.cira.node.<node>.>`) to them.
//!
//! One subscription per node instead of one per device: an async-nats subscription costs about
//! 6 KiB of client memory (a 32-slot channel block of 184-byte messages), a session's entry
//! here about half a KiB.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_nats::{HeaderMap, Subject, Subscriber};
use bytes::Bytes;
use futures_util::StreamExt;
use homeport_contracts::tunnel::{self, TunnelError};
use homeport_contracts::NodeOp;
use tokio::sync::mpsc;

use crate::Shared;

/// What the dispatcher hands a session. Both variants are boxed so a channel slot is small.
pub(crate) enum SessionCmd {
    /// A tunnel request.
    Http(Box<async_nats::Message>),
    /// A newer session of the device asks this one to close; reply (if any) once closed.
    Supersede(Box<Supersede>),
    /// The device API asks this session to end (the device reconnects by itself).
    Disconnect(Box<Supersede>),
    /// The node was cut off from NATS for long enough to have been declared lost: check that
    /// the device's presence entry is still this session's, and close if it is gone.
    RecheckPresence,
}

/// A request to close a device's session.
pub(crate) struct Supersede {
    pub reply: Option<Subject>,
    /// The session meant (hex id, from the request body); `None` means whichever this node
    /// holds. A node whose session of the device is another one leaves it alone.
    pub session: Option<String>,
}

struct Entry {
    session: u64,
    tx: mpsc::Sender<SessionCmd>,
}

#[derive(Default)]
pub(crate) struct Registry {
    inner: Mutex<HashMap<String, Entry>>,
}

impl Registry {
    /// Registers a session; returns the previous session of the same device on this node.
    pub fn register(
        &self,
        guid: &str,
        session: u64,
        tx: mpsc::Sender<SessionCmd>,
    ) -> Option<mpsc::Sender<SessionCmd>> {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(guid.to_string(), Entry { session, tx })
            .filter(|old| old.session != session)
            .map(|old| old.tx)
    }

    /// Removes the device's entry if it is still this session's.
    pub fn deregister(&self, guid: &str, session: u64) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(guid).is_some_and(|e| e.session == session) {
            map.remove(guid);
        }
    }

    /// Every session's sender (to close them all).
    pub fn senders(&self) -> Vec<mpsc::Sender<SessionCmd>> {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.values().map(|e| e.tx.clone()).collect()
    }

    fn sender(&self, guid: &str) -> Option<mpsc::Sender<SessionCmd>> {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.get(guid).map(|e| e.tx.clone())
    }
}

/// Routes the node's subject to sessions until the subscription ends.
pub(crate) async fn dispatch(shared: Arc<Shared>, mut sub: Subscriber) {
    while let Some(msg) = sub.next().await {
        let Some((op, guid)) = shared
            .names
            .parse_node_subject(&shared.node_id, msg.subject.as_str())
        else {
            continue;
        };
        let sender = shared.sessions.sender(guid);
        match (op, sender) {
            (NodeOp::Http, sender) => {
                // Counted here, once per request, whatever becomes of it.
                shared.metrics.tunnel_requests.inc();
                let reply = msg.reply.clone();
                let refused = match sender {
                    None => Some((
                        TunnelError::NotConnected,
                        "this node holds no session of the device",
                    )),
                    Some(tx) => match tx.try_send(SessionCmd::Http(Box::new(msg))) {
                        Ok(()) => None,
                        Err(mpsc::error::TrySendError::Full(_)) => Some((
                            TunnelError::Busy,
                            "too many requests queued for this device",
                        )),
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            Some((TunnelError::NotConnected, "device session ended"))
                        }
                    },
                };
                if let (Some((error, detail)), Some(r)) = (refused, reply) {
                    reply_error(&shared, r, error, detail).await;
                }
            }
            (op @ (NodeOp::Supersede | NodeOp::Disconnect), Some(tx)) => {
                let session = std::str::from_utf8(&msg.payload)
                    .ok()
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned);
                let request = Box::new(Supersede {
                    reply: msg.reply,
                    session,
                });
                let cmd = if op == NodeOp::Supersede {
                    SessionCmd::Supersede(request)
                } else {
                    SessionCmd::Disconnect(request)
                };
                // Rare; never let it block the dispatcher.
                tokio::spawn(async move {
                    let _ = tx.send(cmd).await;
                });
            }
            (NodeOp::Supersede | NodeOp::Disconnect, None) => {
                if let Some(r) = msg.reply {
                    let _ = shared
                        .nats
                        .publish(r, Bytes::from_static(b"no session"))
                        .await;
                }
            }
        }
    }
}

/// Answers a tunnel request with an error code and a human-readable detail.
pub(crate) async fn reply_error(shared: &Shared, reply: Subject, error: TunnelError, detail: &str) {
    shared.metrics.tunnel_errors.inc();
    let mut headers = HeaderMap::new();
    headers.insert(tunnel::ERROR_HEADER, error.code());
    if let Err(e) = shared
        .nats
        .publish_with_headers(reply, headers, Bytes::from(detail.to_string()))
        .await
    {
        tracing::warn!(error = %e, "tunnel error reply not sent");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_session_replaces_and_older_cannot_remove_it() {
        let r = Registry::default();
        let (a, _ra) = mpsc::channel(1);
        let (b, _rb) = mpsc::channel(1);
        assert!(r.register("g", 1, a).is_none());
        assert!(
            r.register("g", 2, b).is_some(),
            "the older session is handed back"
        );
        r.deregister("g", 1);
        assert!(
            r.sender("g").is_some(),
            "the old session's exit keeps the new entry"
        );
        r.deregister("g", 2);
        assert!(r.sender("g").is_none());
    }
}
