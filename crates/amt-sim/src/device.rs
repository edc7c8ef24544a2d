//! One simulated device's connection: TCP from its source address, TLS like AMT, the APF
//! device session, the HTTP responder on its channels (replies optionally delayed through a
//! queue folded into the select deadline, so keep-alives never wait), faults, forced
//! disconnects, deprovisioning, and reconnects with backoff.

use std::collections::VecDeque;
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

use crate::amt::{self, Served};
use crate::control::DeviceSlot;
use crate::identity::Identity;
use crate::wsman::model::Now;
use crate::wsman::Effect;
use crate::{Fault, FleetShared, FleetStats, VANISH_FOR};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// After a successful Unprovision the device keeps CIRA up this long, then drops it (§2.12).
const UNPROVISION_GRACE: Duration = Duration::from_secs(1);

/// How one connection attempt ended.
#[derive(Debug)]
enum Outcome {
    Cancelled,
    /// The session had reached Ready before it ended.
    EndedAfterReady(String),
    Failed(String),
    /// Unprovisioned: the device stays away until re-provisioned.
    Deprovisioned,
    /// `Fault::VanishMidCall` fired: the device stays away for `VANISH_FOR`.
    Vanished,
}

pub(crate) async fn run(
    shared: Arc<FleetShared>,
    id: Arc<Identity>,
    slot: Arc<DeviceSlot>,
    fault: Fault,
    cancel: CancellationToken,
) {
    let mut failures: u32 = 0;
    // Set at the first dial; taken when the first session is ready (the connect time
    // recorded, refused and failed attempts included).
    let mut first_dial: Option<Instant> = None;
    let mut dialed = false;
    loop {
        // A deprovisioned device has no CIRA configuration left: wait to be re-provisioned.
        while !slot.provisioned() {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = slot.wake.notified() => {}
            }
        }
        shared.ramp().await;
        if cancel.is_cancelled() {
            return;
        }
        shared.stats.attempts.fetch_add(1, Ordering::Relaxed);
        if !dialed {
            dialed = true;
            first_dial = Some(Instant::now());
        }
        let outcome = once(&shared, &id, &slot, fault, &cancel, &mut first_dial).await;
        match &outcome {
            Outcome::Cancelled => return,
            Outcome::Deprovisioned => {
                failures = 0;
                tracing::debug!(device = %id.guid, "unprovisioned; CIRA stays down");
                continue;
            }
            Outcome::Vanished => {
                failures = 0;
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(VANISH_FOR) => {}
                }
                continue;
            }
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

/// An accepted port-16992 channel and the HTTP bytes received on it so far.
struct Channel {
    id: ChannelId,
    buf: Vec<u8>,
    /// Originator address from CHANNEL_OPEN, recorded in audit records.
    peer: String,
}

async fn once(
    shared: &FleetShared,
    id: &Identity,
    slot: &DeviceSlot,
    fault: Fault,
    cancel: &CancellationToken,
    first_dial: &mut Option<Instant>,
) -> Outcome {
    let stats = &shared.stats;
    // A disconnect asked for while not connected does not carry over to the next connection.
    slot.disconnect.store(false, Ordering::SeqCst);
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
    // A device provisioned through rps logs in with what its CIRA configuration says.
    let (username, password) = slot.cira_credentials().unwrap_or_else(|| {
        (
            id.mps_username.clone(),
            id.mps_password.expose().to_string(),
        )
    });
    let password = match fault {
        Fault::WrongPassword => format!("wrong-{password}"),
        _ => password,
    };
    let config = DeviceConfig {
        uuid: id.uuid_wire,
        username,
        password: Secret::new(password),
        forward_address: id.hostname.clone(),
        send_keepalives: fault != Fault::SilentKeepalive,
        ..DeviceConfig::default()
    };
    let mut session = DeviceSession::new(config, Instant::now());
    let responder = Responder {
        id,
        slot,
        fault,
        stats,
        latency: shared.config.wsman_latency,
    };
    let mut channels: Vec<Channel> = Vec::new();
    // Replies held back by `wsman_latency`, in due order (the latency is constant).
    let mut pending: VecDeque<Delayed> = VecDeque::new();
    let mut unprovision_at: Option<Instant> = None;
    let mut ready_at: Option<Instant> = None;
    let mut fault_done = false;
    let end = 'conn: loop {
        let now = Instant::now();
        while pending.front().is_some_and(|d| d.due <= now) {
            if let Some(d) = pending.pop_front() {
                // The channel may have been closed meanwhile; the reply is then dropped.
                let _ = session.send_data(d.channel, &d.bytes);
                if d.close {
                    let _ = session.close_channel(d.channel);
                }
            }
        }
        if unprovision_at.is_some_and(|at| now >= at) {
            session.disconnect(DisconnectReason::BY_APPLICATION);
            close_gracefully(&mut session, &mut stream).await;
            break Ok(Outcome::Deprovisioned);
        }
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
        if let Some(d) = pending.front() {
            deadline = deadline.min(d.due);
        }
        if let Some(at) = unprovision_at {
            deadline = deadline.min(at);
        }
        tokio::select! {
            _ = cancel.cancelled() => {
                session.disconnect(DisconnectReason::BY_APPLICATION);
                close_gracefully(&mut session, &mut stream).await;
                break Ok(Outcome::Cancelled);
            }
            _ = slot.wake.notified() => {
                if slot.disconnect.swap(false, Ordering::SeqCst) {
                    session.disconnect(DisconnectReason::BY_APPLICATION);
                    close_gracefully(&mut session, &mut stream).await;
                    break Ok(Outcome::EndedAfterReady("forced disconnect".into()));
                }
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
                    if let Some(t) = first_dial.take() {
                        stats.record_connect(t.elapsed());
                    }
                    stats.connected.fetch_add(1, Ordering::Relaxed);
                    stats.ready_total.fetch_add(1, Ordering::Relaxed);
                }
                DeviceEvent::AuthFailed => {
                    stats.auth_failures.fetch_add(1, Ordering::Relaxed);
                    // Like firmware, try again on the same connection; the server decides
                    // when to give up on it.
                    session.retry_auth();
                }
                DeviceEvent::ChannelOpened {
                    id: ch,
                    source_address,
                    ..
                } => channels.push(Channel {
                    id: ch,
                    buf: Vec::new(),
                    peer: source_address,
                }),
                DeviceEvent::ChannelData { id: ch, data } => {
                    if let Some(c) = channels.iter_mut().find(|c| c.id == ch) {
                        c.buf.extend_from_slice(&data);
                        match responder.serve(&mut session, c, &mut pending) {
                            ChannelOutcome::Continue => {}
                            ChannelOutcome::Unprovisioned => {
                                unprovision_at =
                                    Some(Instant::now() + responder.latency + UNPROVISION_GRACE);
                            }
                            ChannelOutcome::Vanish => {
                                // SO_LINGER 0: closing sends a TCP RST instead of a FIN.
                                #[allow(deprecated)]
                                let _ = stream.get_ref().set_linger(Some(Duration::ZERO));
                                stats.injected_faults.fetch_add(1, Ordering::Relaxed);
                                break 'conn Ok(Outcome::Vanished);
                            }
                        }
                    }
                }
                DeviceEvent::ChannelClosed { id: ch } => channels.retain(|c| c.id != ch),
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
        Ok(Outcome::Cancelled) => Outcome::Cancelled,
        Ok(o) => {
            if ready_at.is_some() {
                stats.disconnects.fetch_add(1, Ordering::Relaxed);
            }
            o
        }
        Err(why) if ready_at.is_some() => {
            stats.disconnects.fetch_add(1, Ordering::Relaxed);
            Outcome::EndedAfterReady(why)
        }
        Err(why) => Outcome::Failed(why),
    }
}

/// Sends what the session has queued (the DISCONNECT) and closes TLS, bounded in time.
async fn close_gracefully(session: &mut DeviceSession, stream: &mut SslStream<TcpStream>) {
    if let Some(out) = session.poll_transmit() {
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&out)).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
}

/// What serving a channel's buffered requests asks of the connection.
enum ChannelOutcome {
    Continue,
    /// Unprovision succeeded: drop CIRA after the grace period.
    Unprovisioned,
    /// `Fault::VanishMidCall`: reset the connection now, unanswered.
    Vanish,
}

/// A reply held back by `wsman_latency`.
struct Delayed {
    due: Instant,
    channel: ChannelId,
    bytes: Vec<u8>,
    /// Close the channel after sending (malformed HTTP).
    close: bool,
}

/// The HTTP side of one device's connection.
struct Responder<'a> {
    id: &'a Identity,
    slot: &'a DeviceSlot,
    fault: Fault,
    stats: &'a FleetStats,
    latency: Duration,
}

impl Responder<'_> {
    /// Sends now, or after the configured latency behind earlier delayed replies.
    fn send(
        &self,
        session: &mut DeviceSession,
        pending: &mut VecDeque<Delayed>,
        channel: ChannelId,
        bytes: Vec<u8>,
        close: bool,
    ) {
        if self.latency.is_zero() {
            let _ = session.send_data(channel, &bytes);
            if close {
                let _ = session.close_channel(channel);
            }
        } else {
            pending.push_back(Delayed {
                due: Instant::now() + self.latency,
                channel,
                bytes,
                close,
            });
        }
    }

    /// Answers every complete HTTP request buffered on a channel, in order (pipelining).
    fn serve(
        &self,
        session: &mut DeviceSession,
        channel: &mut Channel,
        pending: &mut VecDeque<Delayed>,
    ) -> ChannelOutcome {
        let mut outcome = ChannelOutcome::Continue;
        loop {
            match homeport_http1::complete_request(&channel.buf) {
                Ok(None) => return outcome,
                Ok(Some(c)) => {
                    let body = homeport_http1::body(&channel.buf, &c).unwrap_or_default();
                    let served = {
                        // Held only while rendering: no await, no other lock inside.
                        let mut model = self.slot.lock();
                        amt::serve(
                            self.id,
                            &mut model,
                            self.fault,
                            Now::current(),
                            &channel.peer,
                            &c.head,
                            &body,
                        )
                    };
                    self.stats.http_requests.fetch_add(1, Ordering::Relaxed);
                    channel.buf.drain(..c.len);
                    match served {
                        Served::Vanish => return ChannelOutcome::Vanish,
                        Served::Reply { bytes, effect } => {
                            if effect == Effect::Unprovisioned {
                                outcome = ChannelOutcome::Unprovisioned;
                            }
                            self.send(session, pending, channel.id, bytes, false);
                        }
                    }
                }
                Err(e) => {
                    let msg = format!("Bad Request. {e}");
                    let resp = format!(
                        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{msg}",
                        msg.len()
                    );
                    self.send(session, pending, channel.id, resp.into_bytes(), true);
                    channel.buf.clear();
                    return outcome;
                }
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
