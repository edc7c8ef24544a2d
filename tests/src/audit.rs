//! The audit service in the harness, a way to publish events directly, and a TCP proxy that
//! can cut a dependency off (the database) and bring it back.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use homeport_audit::{Audit, AuditConfig, AuditParts};
use homeport_contracts::{events, proto};
use homeport_proto::audit::v1::audit_service_client::AuditServiceClient;
use homeport_store::Store;
use prost::Message as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::command::{Bearer, CommandHandle, TEST_JWT_SECRET};
use crate::TestEnv;

pub type AuditClient = AuditServiceClient<InterceptedService<Channel, Bearer>>;

/// A running audit worker with its API on a loopback port.
pub struct AuditHandle {
    pub addr: SocketAddr,
    pub metrics: Arc<homeport_audit::Metrics>,
    stop: CancellationToken,
    served: tokio::task::JoinHandle<()>,
}

impl AuditHandle {
    pub async fn client(&self, tenant: &str) -> AuditClient {
        let ch = Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect()
            .await
            .expect("gRPC connect");
        AuditServiceClient::with_interceptor(ch, Bearer::new(Some(&CommandHandle::token(tenant))))
    }

    /// Stops the worker (an uncommitted batch stays unacked) and its API.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(15), self.served).await;
    }
}

impl TestEnv {
    /// Starts an audit worker and its API against `store` (this test's database unless the
    /// test routes it elsewhere, e.g. through a [`TcpProxy`]).
    pub async fn start_audit_with(&self, store: Store) -> AuditHandle {
        let audit = Audit::start(AuditParts {
            config: AuditConfig::with_jwt(homeport_auth::JwtArgs::default()),
            stream_limits: crate::test_stream_limits(),
            names: self.names.clone(),
            nats: self.nats_as(homeport_contracts::access::Role::Audit),
            store,
            auth: homeport_auth::Authenticator::new(
                vec![homeport_auth::Key::Hs256(TEST_JWT_SECRET.to_vec())],
                "tenant",
            ),
        });
        let metrics = audit.metrics.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = CancellationToken::new();
        let s = stop.clone();
        let served = tokio::spawn(async move {
            let _ = audit.serve(listener, s.cancelled_owned()).await;
            audit.shutdown().await;
        });
        AuditHandle {
            addr,
            metrics,
            stop,
            served,
        }
    }

    pub async fn start_audit(&self) -> AuditHandle {
        self.start_audit_with(self.store.clone()).await
    }

    /// Publishes one event straight to the stream (as a producer would) and waits for the ack.
    pub async fn publish_event(&self, tenant: &str, guid: &str, kind: &str) -> proto::Event {
        let ev = events::envelope(tenant, guid, kind, "test");
        self.publish_raw(
            &self.names.device_event(tenant, guid, kind),
            &ev.id,
            ev.encode_to_vec(),
        )
        .await;
        ev
    }

    /// Publishes bytes with a de-duplication id and waits for the stream's ack.
    pub async fn publish_raw(&self, subject: &str, msg_id: &str, payload: Vec<u8>) {
        events::ensure_events_stream(&self.js, &self.names, &crate::test_stream_limits())
            .await
            .expect("events stream");
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", msg_id);
        self.js
            .publish_with_headers(subject.to_string(), headers, payload.into())
            .await
            .expect("publish")
            .await
            .expect("stream ack");
    }
}

/// Forwards TCP connections to `target` until cut; a cut closes every connection and refuses
/// new ones until restored.
pub struct TcpProxy {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    cut: Arc<Notify>,
    stop: CancellationToken,
}

impl TcpProxy {
    pub async fn start(target: SocketAddr) -> TcpProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let up = Arc::new(AtomicBool::new(true));
        let cut = Arc::new(Notify::new());
        let stop = CancellationToken::new();
        let (u, c, s) = (up.clone(), cut.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = s.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((mut inbound, _)) = accepted else {
                    continue;
                };
                if !u.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees the connection closed
                }
                let (c, s) = (c.clone(), s.clone());
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = c.notified() => {}
                        _ = s.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
        TcpProxy {
            addr,
            up,
            cut,
            stop,
        }
    }

    /// Closes every connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.notify_waiters();
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
