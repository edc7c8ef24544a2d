//! Hostile CIRA peers, for the ingress' tests and `homeport-bench hostile`. Each one dials
//! only the address it is given, is bounded in time, and reports how the server treated it.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use homeport_apf::{DeviceConfig, DeviceSession, Message, Secret};
use openssl::ssl::{SslConnector, SslMethod, SslStream, SslVerifyMode, SslVersion};

use crate::Identity;

/// How long a hostile connection lasted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// The server closed it after this long.
    ClosedAfter(Duration),
    /// Still open when the attack's bound ran out.
    StillOpen,
}

impl Held {
    pub fn closed(self) -> bool {
        matches!(self, Held::ClosedAfter(_))
    }
}

fn tls13() -> Result<SslConnector, String> {
    let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(|e| e.to_string())?;
    b.set_verify(SslVerifyMode::NONE);
    b.set_min_proto_version(Some(SslVersion::TLS1_3))
        .map_err(|e| e.to_string())?;
    Ok(b.build())
}

/// A TCP connection to `addr` from `source` (any port), with blocking I/O; a small receive
/// buffer when `small_window` (so what the server sends and nobody reads piles up at its end).
fn dial(addr: SocketAddr, source: Option<IpAddr>, small_window: bool) -> io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    if small_window {
        socket.set_recv_buffer_size(4096)?;
    }
    // tokio's socket only connects asynchronously; a tiny runtime does it, then the stream
    // goes back to blocking mode.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    let stream = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(5), socket.connect(addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
    })?;
    let std = stream.into_std()?;
    std.set_nonblocking(false)?;
    Ok(std)
}

fn tls_connect(
    addr: SocketAddr,
    source: Option<IpAddr>,
    small_window: bool,
) -> Result<SslStream<TcpStream>, String> {
    let tcp = dial(addr, source, small_window).map_err(|e| format!("connect: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    tls13()?
        .connect("localhost", tcp)
        .map_err(|e| format!("TLS: {e}"))
}

/// Logs in as `device` over `tls` and forwards ports until the server calls the session ready.
fn log_in(tls: &mut SslStream<TcpStream>, device: &Identity) -> Result<(), String> {
    let password = Secret::new(device.mps_password.expose().to_string());
    let config = DeviceConfig::new(device.uuid_wire, device.mps_username.clone(), password);
    let mut session = DeviceSession::new(config, Instant::now());
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !session.is_ready() {
        if let Some(out) = session.poll_transmit() {
            tls.write_all(&out).map_err(|e| format!("write: {e}"))?;
        }
        if Instant::now() > deadline || session.is_closed() {
            return Err("login did not complete".into());
        }
        let n = tls.read(&mut buf).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("server closed during login".into());
        }
        session
            .handle_input(Instant::now(), &buf[..n])
            .map_err(|e| e.to_string())?;
    }
    if let Some(out) = session.poll_transmit() {
        tls.write_all(&out).map_err(|e| format!("write: {e}"))?;
    }
    Ok(())
}

#[allow(unsafe_code)]
fn request_key_update(tls: &SslStream<TcpStream>) -> Result<(), String> {
    use foreign_types::ForeignTypeRef;
    extern "C" {
        fn SSL_key_update(s: *mut openssl_sys::SSL, updatetype: std::ffi::c_int)
            -> std::ffi::c_int;
    }
    // SAFETY: a live SSL of an established TLS 1.3 connection; the call only queues a
    // KeyUpdate(update_requested) for the next write.
    let ok = unsafe { SSL_key_update(tls.ssl().as_ptr(), 1) };
    if ok == 1 {
        Ok(())
    } else {
        Err("SSL_key_update refused".into())
    }
}

/// What a flood sends one byte per record: keep-alive requests forever once logged in, or,
/// without a login, the start of a login that never completes (PROTOCOL_VERSION, the auth
/// service and a USERAUTH_REQUEST with a 512-byte user name, cut before its end).
fn flood_bytes(logged_in: bool) -> Box<dyn Iterator<Item = u8> + Send> {
    if logged_in {
        return Box::new(
            (0u32..).flat_map(|cookie| Message::KeepaliveRequest { cookie }.to_bytes()),
        );
    }
    let mut bytes = Message::ProtocolVersion {
        major: 1,
        minor: 0,
        trigger: 1,
        uuid: *b"hostile-keyupdat",
    }
    .to_bytes();
    Message::ServiceRequest {
        service: homeport_apf::SERVICE_AUTH.into(),
    }
    .encode(&mut bytes);
    let mut login = Message::UserauthRequest {
        username: "u".repeat(512),
        service: homeport_apf::SERVICE_PFWD.into(),
        method: homeport_apf::METHOD_PASSWORD.into(),
        password: Some(Secret::new("p")),
    }
    .to_bytes();
    login.truncate(login.len() - 8);
    bytes.extend(login);
    Box::new(bytes.into_iter())
}

/// TLS 1.3, a login as `device` when given, then for at most `bound`: KeyUpdate
/// (update_requested) before every one-byte record of [`flood_bytes`], never reading anything
/// the server sends. A server that keeps reading must pile up answers nobody reads.
pub fn keyupdate_flood(
    addr: SocketAddr,
    device: Option<&Identity>,
    bound: Duration,
    pace: Duration,
) -> Result<Held, String> {
    let mut tls = tls_connect(addr, None, true)?;
    if let Some(device) = device {
        log_in(&mut tls, device)?;
    }
    // A blocked write returns now and then so the bound is kept.
    tls.get_ref()
        .set_write_timeout(Some(Duration::from_millis(200)))
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    for byte in flood_bytes(device.is_some()) {
        if started.elapsed() >= bound {
            return Ok(Held::StillOpen);
        }
        if request_key_update(&tls).is_err() {
            return Ok(Held::ClosedAfter(started.elapsed()));
        }
        loop {
            match tls.ssl_write(&[byte]) {
                Ok(_) => break,
                Err(e) if e.io_error().is_some_and(would_block) => {
                    if started.elapsed() >= bound {
                        return Ok(Held::StillOpen);
                    }
                }
                Err(_) => return Ok(Held::ClosedAfter(started.elapsed())),
            }
        }
        // Paced so the server reads each request on its own and owes an answer for each.
        std::thread::sleep(pace);
    }
    // Out of bytes to send: see what the server makes of the silence.
    Ok(wait_closed(tls.get_mut(), started, bound))
}

fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Waits up to `bound` for the server to close `tcp`, reading and discarding what comes.
fn wait_closed(tcp: &mut TcpStream, started: Instant, bound: Duration) -> Held {
    let _ = tcp.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = [0u8; 4096];
    while started.elapsed() < bound {
        match tcp.read(&mut buf) {
            Ok(0) => return Held::ClosedAfter(started.elapsed()),
            Ok(_) => {}
            Err(e) if would_block(&e) => {}
            Err(_) => return Held::ClosedAfter(started.elapsed()),
        }
    }
    Held::StillOpen
}

/// A TCP connection from `source` that sends the first byte of a TLS ClientHello and then
/// nothing, held for at most `bound`.
pub fn slow_handshake(
    addr: SocketAddr,
    source: Option<IpAddr>,
    bound: Duration,
) -> Result<Held, String> {
    let started = Instant::now();
    let mut tcp = dial(addr, source, false).map_err(|e| format!("connect: {e}"))?;
    // A handshake record's content type: the server has to wait for the rest.
    if tcp.write_all(&[0x16]).is_err() {
        return Ok(Held::ClosedAfter(started.elapsed()));
    }
    Ok(wait_closed(&mut tcp, started, bound))
}

/// TLS, PROTOCOL_VERSION, then a CHANNEL_DATA header announcing 1 MiB before any login, and
/// then its bytes a kilobyte at a time. Returns how the server treated it and how many payload
/// bytes it took before closing.
pub fn preauth_bigframe(
    addr: SocketAddr,
    source: Option<IpAddr>,
    bound: Duration,
) -> Result<(Held, usize), String> {
    let mut tls = tls_connect(addr, source, false)?;
    let started = Instant::now();
    let mut frame = Message::ProtocolVersion {
        major: 1,
        minor: 0,
        trigger: 1,
        uuid: *b"hostile-bigframe",
    }
    .to_bytes();
    frame.push(94);
    frame.extend_from_slice(&4u32.to_be_bytes());
    frame.extend_from_slice(&(1u32 << 20).to_be_bytes());
    if tls.write_all(&frame).is_err() {
        return Ok((Held::ClosedAfter(started.elapsed()), 0));
    }
    tls.get_ref()
        .set_write_timeout(Some(Duration::from_millis(200)))
        .map_err(|e| e.to_string())?;
    let chunk = [0u8; 1024];
    let mut sent = 0usize;
    while sent < 1 << 20 && started.elapsed() < bound {
        match tls.ssl_write(&chunk) {
            Ok(n) => sent += n,
            Err(e) if e.io_error().is_some_and(would_block) => {}
            Err(_) => return Ok((Held::ClosedAfter(started.elapsed()), sent)),
        }
        // Give the server the time to look at what came.
        std::thread::sleep(Duration::from_millis(5));
    }
    let held = wait_closed(tls.get_mut(), started, bound);
    Ok((held, sent))
}

/// One login with a random GUID (no such device) from `source`: TLS, PROTOCOL_VERSION, the
/// auth service and a password, then waits for the server's answer. True when the server
/// refused the login (USERAUTH_FAILURE or a close), false when the bound ran out first.
pub fn random_guid_login(
    addr: SocketAddr,
    source: Option<IpAddr>,
    bound: Duration,
) -> Result<bool, String> {
    let mut uuid = [0u8; 16];
    uuid.iter_mut().for_each(|b| *b = fastrand::u8(..));
    let config = DeviceConfig::new(uuid, "admin", Secret::new("not-a-password"));
    refused_login(addr, source, config, bound)
}

/// A login as `device` with a wrong password from `source` (a stranger squatting a known
/// device's GUID); true when refused.
pub fn guid_squat_login(
    addr: SocketAddr,
    source: Option<IpAddr>,
    device: &Identity,
    bound: Duration,
) -> Result<bool, String> {
    let config = DeviceConfig::new(
        device.uuid_wire,
        device.mps_username.clone(),
        Secret::new("wrong-password-123"),
    );
    refused_login(addr, source, config, bound)
}

fn refused_login(
    addr: SocketAddr,
    source: Option<IpAddr>,
    config: DeviceConfig,
    bound: Duration,
) -> Result<bool, String> {
    let started = Instant::now();
    let mut tls = tls_connect(addr, source, false)?;
    tls.get_ref()
        .set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(|e| e.to_string())?;
    let mut session = DeviceSession::new(config, Instant::now());
    let mut buf = [0u8; 4096];
    while started.elapsed() < bound {
        if let Some(out) = session.poll_transmit() {
            if tls.write_all(&out).is_err() {
                return Ok(true);
            }
        }
        while let Some(event) = session.poll_event() {
            if matches!(event, homeport_apf::DeviceEvent::AuthFailed) {
                return Ok(true);
            }
        }
        if session.is_closed() || session.is_ready() {
            return Ok(!session.is_ready());
        }
        match tls.read(&mut buf) {
            Ok(0) => return Ok(true),
            Ok(n) => session
                .handle_input(Instant::now(), &buf[..n])
                .map_err(|e| e.to_string())?,
            Err(e) if would_block(&e) => {}
            Err(_) => return Ok(true),
        }
    }
    Ok(false)
}
