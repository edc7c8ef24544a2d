//! One simulated device's connection: TCP from its source address, TLS like AMT, the APF
//! device session, the HTTP responder on its channels, faults, and reconnects with backoff.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use homeport_apf::{ChannelId, DeviceConfig, DeviceEvent, DeviceSession, DisconnectReason, Secret};
use homeport_runtime::io::read_some;
use openssl::ssl::SslConnector;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_openssl::SslStream;
use tokio_util::sync::CancellationToken;

use crate::amt::{self, AmtState};
use crate::identity::Identity;
use crate::{Fault, FleetShared};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// How one connection attempt ended.
#[derive(Debug)]
enum Outcome {
    Cancelled,
    /// The session had reached Ready before it ended.
    EndedAfterReady(String),
    Failed(String),
}

pub(crate) async fn run(
    shared: Arc<FleetShared>,
    id: Arc<Identity>,
    fault: Fault,
    cancel: CancellationToken,
) {
    let mut failures: u32 = 0;
    loop {
        shared.ramp().await;
        if cancel.is_cancelled() {
            return;
        }
        shared.stats.attempts.fetch_add(1, Ordering::Relaxed);
        let outcome = once(&shared, &id, fault, &cancel).await;
        match &outcome {
            Outcome::Cancelled => return,
            Outcome::EndedAfterReady(why) => {
                failures = 0;
                tracing::debug!(device = %id.guid, why, "session ended; reconnecting");
            }
            Outcome::Failed(why) => {
                failures = failures.saturating_add(1);
                tracing::debug!(device = %id.guid, why, "connection attempt failed");
            }
        }
        // Jittered exponential backoff, like firmware retrying on its periodic policy.
        let base = shared.config.reconnect_min.as_millis() as u64;
        let max = shared.config.reconnect_max.as_millis() as u64;
        let exp = base
            .saturating_mul(1u64 << failures.min(10))
            .min(max)
            .max(1);
        let delay = Duration::from_millis(exp / 2 + fastrand::u64(0..=exp / 2));
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

async fn connect_tcp(shared: &FleetShared, index: u64) -> std::io::Result<TcpStream> {
    let server = shared.config.server;
    let socket = match server {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if !shared.config.source_ips.is_empty() {
        let n = shared.config.source_ips.len() as u64;
        let ip = shared.config.source_ips[usize::try_from(index % n).unwrap_or(0)];
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(server))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "TCP connect timed out")
        })??;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

async fn tls_connect(
    connector: &SslConnector,
    name: &str,
    tcp: TcpStream,
) -> Result<SslStream<TcpStream>, String> {
    let ssl = connector
        .configure()
        .and_then(|c| {
            c.verify_hostname(false)
                .use_server_name_indication(true)
                .into_ssl(name)
        })
        .map_err(|e| e.to_string())?;
    let mut stream = SslStream::new(ssl, tcp).map_err(|e| e.to_string())?;
    tokio::time::timeout(CONNECT_TIMEOUT, Pin::new(&mut stream).connect())
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|e| format!("TLS: {e}"))?;
    Ok(stream)
}

async fn once(
    shared: &FleetShared,
    id: &Identity,
    fault: Fault,
    cancel: &CancellationToken,
) -> Outcome {
    let stats = &shared.stats;
    let tcp = match connect_tcp(shared, id.index).await {
        Ok(t) => t,
        Err(e) => {
            stats.connect_failures.fetch_add(1, Ordering::Relaxed);
            return Outcome::Failed(format!("connect: {e}"));
        }
    };
    let mut stream = match tls_connect(&shared.connector, &shared.config.server_name, tcp).await {
        Ok(s) => s,
        Err(e) => {
            stats.tls_failures.fetch_add(1, Ordering::Relaxed);
            return Outcome::Failed(e);
        }
    };
    stats.tls_handshakes.fetch_add(1, Ordering::Relaxed);
    let password = match fault {
        Fault::WrongPassword => format!("wrong-{}", id.mps_password.expose()),
        _ => id.mps_password.expose().to_string(),
    };
    let config = DeviceConfig {
        uuid: id.uuid_wire,
        username: id.mps_username.clone(),
        password: Secret::new(password),
        forward_address: id.hostname.clone(),
        send_keepalives: fault != Fault::SilentKeepalive,
        ..DeviceConfig::default()
    };
    let mut session = DeviceSession::new(config, Instant::now());
    let mut amt_state = AmtState::default();
    let mut channels: Vec<(ChannelId, Vec<u8>)> = Vec::new();
    let mut ready_at: Option<Instant> = None;
    let mut fault_done = false;
    let end = loop {
        if let Some(out) = session.poll_transmit() {
            let written = if fault == Fault::SplitFrames {
                write_split(&mut stream, &out).await
            } else {
                stream.write_all(&out).await
            };
            if let Err(e) = written {
                break Err(format!("write: {e}"));
            }
        }
        if session.is_closed() {
            break Err("session closed".to_string());
        }
        // Faults that fire once the device is up.
        if let (Some(at), false) = (ready_at, fault_done) {
            match fault {
                Fault::AbruptReset(after) if at.elapsed() >= after => {
                    // SO_LINGER 0: closing sends a TCP RST instead of a FIN.
                    #[allow(deprecated)]
                    let _ = stream.get_ref().set_linger(Some(Duration::ZERO));
                    stats.injected_faults.fetch_add(1, Ordering::Relaxed);
                    break Err("abrupt reset (injected)".to_string());
                }
                Fault::OversizedFrame => {
                    fault_done = true;
                    stats.injected_faults.fetch_add(1, Ordering::Relaxed);
                    // CHANNEL_DATA claiming a 2 GiB payload.
                    let frame = [94u8, 0, 0, 0, 4, 0x80, 0, 0, 0];
                    if stream.write_all(&frame).await.is_err() {
                        break Err("write failed".into());
                    }
                }
                Fault::GarbageFrame => {
                    fault_done = true;
                    stats.injected_faults.fetch_add(1, Ordering::Relaxed);
                    if stream.write_all(&[0xEE, 0xFF, 0x00, 0x01]).await.is_err() {
                        break Err("write failed".into());
                    }
                }
                _ => {}
            }
        }
        let now = Instant::now();
        let mut deadline = session
            .poll_timeout()
            .unwrap_or(now + Duration::from_secs(3600));
        if let (Fault::AbruptReset(after), Some(at)) = (fault, ready_at) {
            deadline = deadline.min(at + after);
        }
        tokio::select! {
            _ = cancel.cancelled() => {
                session.disconnect(DisconnectReason::BY_APPLICATION);
                if let Some(out) = session.poll_transmit() {
                    let _ = stream.write_all(&out).await;
                }
                let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
                break Ok(Outcome::Cancelled);
            }
            r = read_some(&mut stream) => match r {
                Ok(b) if b.is_empty() => break Err("server closed the connection".into()),
                Ok(b) => {
                    if let Err(e) = session.handle_input(Instant::now(), &b) {
                        break Err(format!("APF: {e}"));
                    }
                }
                Err(e) => break Err(format!("read: {e}")),
            },
            _ = tokio::time::sleep_until(deadline.into()) => session.handle_timeout(Instant::now()),
        }
        while let Some(ev) = session.poll_event() {
            match ev {
                DeviceEvent::Ready => {
                    ready_at = Some(Instant::now());
                    stats.connected.fetch_add(1, Ordering::Relaxed);
                    stats.ready_total.fetch_add(1, Ordering::Relaxed);
                }
                DeviceEvent::AuthFailed => {
                    stats.auth_failures.fetch_add(1, Ordering::Relaxed);
                    // Like firmware, try again on the same connection; the server decides
                    // when to give up on it.
                    session.retry_auth();
                }
                DeviceEvent::ChannelOpened { id: ch, .. } => channels.push((ch, Vec::new())),
                DeviceEvent::ChannelData { id: ch, data } => {
                    if let Some((_, buf)) = channels.iter_mut().find(|(c, _)| *c == ch) {
                        buf.extend_from_slice(&data);
                        serve_http(id, &mut amt_state, &mut session, ch, buf, &shared.stats);
                    }
                }
                DeviceEvent::ChannelClosed { id: ch } => channels.retain(|(c, _)| *c != ch),
                DeviceEvent::PeerDisconnected { reason } => {
                    stats.server_disconnects.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(device = %id.guid, %reason, "server sent DISCONNECT");
                }
                DeviceEvent::LinkDead => {
                    session.disconnect(DisconnectReason::CONNECTION_TIMED_OUT);
                }
                _ => {}
            }
        }
    };
    if ready_at.is_some() {
        stats.connected.fetch_sub(1, Ordering::Relaxed);
    }
    match end {
        Ok(o) => o,
        Err(why) if ready_at.is_some() => {
            stats.disconnects.fetch_add(1, Ordering::Relaxed);
            Outcome::EndedAfterReady(why)
        }
        Err(why) => Outcome::Failed(why),
    }
}

/// Answers every complete HTTP request buffered on a channel.
fn serve_http(
    id: &Identity,
    state: &mut AmtState,
    session: &mut DeviceSession,
    ch: ChannelId,
    buf: &mut Vec<u8>,
    stats: &crate::FleetStats,
) {
    loop {
        match homeport_http1::complete_request(buf) {
            Ok(None) => return,
            Ok(Some(c)) => {
                let body = homeport_http1::body(buf, &c).unwrap_or_default();
                let resp = amt::respond(id, state, Instant::now(), &c.head, &body);
                stats.http_requests.fetch_add(1, Ordering::Relaxed);
                let _ = session.send_data(ch, &resp);
                buf.drain(..c.len);
            }
            Err(e) => {
                let msg = format!("Bad Request. {e}");
                let resp = format!(
                    "HTTP/1.1 400 Bad Request\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{msg}",
                    msg.len()
                );
                let _ = session.send_data(ch, resp.as_bytes());
                let _ = session.close_channel(ch);
                buf.clear();
                return;
            }
        }
    }
}

/// Writes in pieces of 1 to 7 bytes, each flushed, to exercise the server's reassembly.
async fn write_split(stream: &mut SslStream<TcpStream>, out: &[u8]) -> std::io::Result<()> {
    let mut rest = out;
    while !rest.is_empty() {
        let n = fastrand::usize(1..=7).min(rest.len());
        stream.write_all(&rest[..n]).await?;
        stream.flush().await?;
        rest = &rest[n..];
    }
    Ok(())
}
