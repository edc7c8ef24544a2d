//! A device's byte stream after TLS: the compact record layer for AEAD suites (nearly every
//! device), or OpenSSL's own record layer for the suites it does not cover (TLS 1.2 CBC,
//! TLS 1.0/1.1 under the legacy profile).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use homeport_runtime::io::read_some;
use openssl::ssl::SslAcceptor;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_openssl::SslStream;
use tokio_util::sync::PollSemaphore;

use crate::record::{self, RecordLayer};

/// Bytes read from the socket at once during the handshake: a ClientHello, or a client's
/// ChangeCipherSpec and Finished together, in one `recv`.
const HANDSHAKE_READ: usize = 4096;

/// The socket during the handshake, in a slot it can be taken back from: when the compact
/// record layer takes over, the socket leaves and the `SSL` is freed. Reads and writes go
/// through tokio's own `TcpStream` methods, which skip the `EAGAIN` read after a short one.
///
/// Without read-ahead OpenSSL asks for each record's 5-byte header and then its body, two
/// `recv`s per record; while `buffering`, the socket reads up to `HANDSHAKE_READ` bytes at once
/// and serves OpenSSL from them. What the client sent after its Finished stays in `buf` for
/// whoever reads next: the compact record layer, or OpenSSL's.
///
/// The node's handshake permits bound the handshakes that compute at once. A permit is taken
/// only once the socket has bytes for OpenSSL, and given back whenever the handshake waits for
/// the network, so a peer that sends one byte and stalls holds none.
pub(crate) struct Socket {
    tcp: Option<TcpStream>,
    buf: Vec<u8>,
    pos: usize,
    buffering: bool,
    gate: Option<PollSemaphore>,
    permit: Option<OwnedSemaphorePermit>,
}

fn taken() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "socket handed to the record layer",
    )
}

impl Socket {
    fn new(tcp: TcpStream, gate: Option<PollSemaphore>) -> Socket {
        Socket {
            tcp: Some(tcp),
            buf: Vec::new(),
            pos: 0,
            buffering: true,
            gate,
            permit: None,
        }
    }

    /// The socket and what was read from it but not consumed.
    fn take(&mut self) -> Option<(TcpStream, Vec<u8>)> {
        self.release();
        let tcp = self.tcp.take()?;
        let mut rest = std::mem::take(&mut self.buf);
        rest.drain(..self.pos);
        self.pos = 0;
        Some((tcp, rest))
    }

    /// Gives the handshake permit back (the handshake waits, or is over).
    fn release(&mut self) {
        self.permit = None;
    }

    /// Ready once the socket has bytes and this handshake holds a permit; waits for the
    /// network first, so no permit is held while waiting.
    fn poll_turn(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (Some(tcp), Some(gate)) = (&self.tcp, &mut self.gate) else {
            return Poll::Ready(Ok(()));
        };
        if self.permit.is_some() {
            return Poll::Ready(Ok(()));
        }
        match tcp.poll_read_ready(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {}
        }
        match gate.poll_acquire(cx) {
            Poll::Ready(Some(permit)) => {
                self.permit = Some(permit);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(None) => Poll::Ready(Err(io::Error::other("handshake gate closed"))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// After the handshake: serve what is buffered, then read straight from the socket.
    fn stop_buffering(&mut self) {
        self.release();
        self.gate = None;
        self.buffering = false;
        if self.pos == self.buf.len() {
            self.buf = Vec::new();
            self.pos = 0;
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.tcp.is_none() {
            return Poll::Ready(Err(taken()));
        }
        if this.pos == this.buf.len() {
            match this.poll_turn(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            let Some(tcp) = &mut this.tcp else {
                return Poll::Ready(Err(taken()));
            };
            if !this.buffering || out.remaining() >= HANDSHAKE_READ {
                this.buf = Vec::new();
                this.pos = 0;
                let polled = Pin::new(tcp).poll_read(cx, out);
                if polled.is_pending() {
                    this.permit = None;
                }
                return polled;
            }
            this.buf.resize(HANDSHAKE_READ, 0);
            let mut fill = ReadBuf::new(&mut this.buf);
            let polled = Pin::new(tcp).poll_read(cx, &mut fill);
            let n = fill.filled().len();
            this.buf.truncate(n);
            this.pos = 0;
            if polled.is_pending() {
                this.permit = None;
            }
            match polled {
                Poll::Ready(Ok(())) if n == 0 => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
        }
        let n = out.remaining().min(this.buf.len() - this.pos);
        out.put_slice(&this.buf[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match &mut this.tcp {
            Some(tcp) => {
                let polled = Pin::new(tcp).poll_write(cx, buf);
                if polled.is_pending() {
                    // The peer does not read: its handshake waits without a permit.
                    this.permit = None;
                }
                polled
            }
            None => Poll::Ready(Err(taken())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().tcp {
            Some(tcp) => Pin::new(tcp).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().tcp {
            Some(tcp) => Pin::new(tcp).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

// The large variant is the common one: boxing it would only add an allocation per session.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Transport {
    Compact {
        tcp: TcpStream,
        records: RecordLayer,
        /// Application data that arrived with the client's Finished, not yet returned.
        early: Vec<u8>,
        key_updates: KeyUpdateBudget,
    },
    OpenSsl(SslStream<Socket>),
}

/// Runs the server handshake on `tcp` and picks the record layer. With a `gate`, the handshake
/// computes only while it holds one of the gate's permits (see [`Socket`]).
pub(crate) async fn accept(
    acceptor: &SslAcceptor,
    tcp: TcpStream,
    gate: Option<PollSemaphore>,
) -> Result<Transport, String> {
    let ssl = record::server_ssl(acceptor).map_err(|e| e.to_string())?;
    let mut stream = SslStream::new(ssl, Socket::new(tcp, gate)).map_err(|e| e.to_string())?;
    Pin::new(&mut stream)
        .accept()
        .await
        .map_err(|e| e.to_string())?;
    match record::take_over(stream.ssl()) {
        Ok(Some(mut records)) => {
            let (tcp, rest) = stream
                .get_mut()
                .take()
                .ok_or("socket missing after the handshake")?;
            let mut early = Vec::new();
            if !rest.is_empty() {
                open_or_alert(&tcp, &mut records, rest, &mut early)
                    .map_err(|e| format!("records after the handshake: {e}"))?;
            }
            Ok(Transport::Compact {
                tcp,
                records,
                early,
                key_updates: KeyUpdateBudget::new(Instant::now()),
            })
        }
        Ok(None) => {
            stream.get_mut().stop_buffering();
            Ok(Transport::OpenSsl(stream))
        }
        Err(e) => Err(format!("taking over the TLS session: {e}")),
    }
}

/// KeyUpdates a peer may send: a burst of `KEY_UPDATE_BURST`, then one per
/// `KEY_UPDATE_EVERY`. AMT firmware sends none; each costs two key derivations, so a flood of
/// them is a way to burn the node's CPU.
pub(crate) struct KeyUpdateBudget {
    seen: u32,
    tokens: u32,
    refilled: Instant,
}

const KEY_UPDATE_BURST: u32 = 8;
const KEY_UPDATE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl KeyUpdateBudget {
    fn new(now: Instant) -> Self {
        Self {
            seen: 0,
            tokens: KEY_UPDATE_BURST,
            refilled: now,
        }
    }

    /// Whether the peer, having sent `total` KeyUpdates by `now`, is within its budget.
    fn allow(&mut self, total: u32, now: Instant) -> bool {
        let new = total.saturating_sub(self.seen);
        self.seen = total;
        if new == 0 {
            return true;
        }
        let earned = (now.saturating_duration_since(self.refilled).as_millis()
            / KEY_UPDATE_EVERY.as_millis()) as u32;
        if earned > 0 {
            self.tokens = (self.tokens + earned).min(KEY_UPDATE_BURST);
            self.refilled = now;
        }
        match self.tokens.checked_sub(new) {
            Some(left) => {
                self.tokens = left;
                true
            }
            None => false,
        }
    }
}

fn write_timed_out() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "write timed out: the peer is not reading",
    )
}

/// Opens `input` into `out`; on a bad record, tells the peer with the matching alert.
fn open_or_alert(
    tcp: &TcpStream,
    records: &mut RecordLayer,
    input: Vec<u8>,
    out: &mut Vec<u8>,
) -> Result<(), record::RecordError> {
    let opened = records.open(input, out);
    if let Err(e) = &opened {
        if let Some(description) = e.alert() {
            // Best effort, without waiting: the connection ends either way.
            let mut alert = Vec::new();
            if records.seal_alert(description, &mut alert).is_ok() {
                let _ = tcp.try_write(&alert);
            }
        }
    }
    opened
}

impl Transport {
    /// Application bytes as they arrive; empty at the end of the stream (FIN or close_notify).
    /// Cancel-safe: a partial record stays in the record layer.
    pub(crate) async fn read(&mut self) -> io::Result<Vec<u8>> {
        match self {
            Transport::OpenSsl(stream) => read_some(stream).await,
            Transport::Compact {
                tcp,
                records,
                early,
                key_updates,
            } => loop {
                if !early.is_empty() {
                    return Ok(std::mem::take(early));
                }
                if records.peer_closed() {
                    return Ok(Vec::new());
                }
                let input = read_some(tcp).await?;
                if input.is_empty() {
                    return Ok(Vec::new());
                }
                let mut out = Vec::new();
                open_or_alert(tcp, records, input, &mut out)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                if !key_updates.allow(records.key_updates(), Instant::now()) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "more TLS KeyUpdates than allowed",
                    ));
                }
                if !out.is_empty() {
                    return Ok(out);
                }
            },
        }
    }

    /// Writes `data`, or fails with `TimedOut` at `deadline` (a peer that stops reading).
    pub(crate) async fn write_all(&mut self, data: &[u8], deadline: Instant) -> io::Result<()> {
        tokio::time::timeout_at(deadline, self.write_all_unbounded(data))
            .await
            .unwrap_or_else(|_| Err(write_timed_out()))
    }

    async fn write_all_unbounded(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Transport::OpenSsl(stream) => stream.write_all(data).await,
            Transport::Compact { tcp, records, .. } => {
                let mut out = Vec::with_capacity(data.len() + 64);
                records.seal(data, &mut out).map_err(io::Error::other)?;
                tcp.write_all(&out).await
            }
        }
    }

    /// Records the record layer owes the peer (a KeyUpdate answer), sent before more is read
    /// (so a peer that asks for answers and never reads them stops being read), or fails with
    /// `TimedOut` at `deadline`.
    pub(crate) async fn flush_pending(&mut self, deadline: Instant) -> io::Result<()> {
        if let Transport::Compact { tcp, records, .. } = self {
            let pending = records.take_pending();
            if !pending.is_empty() {
                return tokio::time::timeout_at(deadline, tcp.write_all(&pending))
                    .await
                    .unwrap_or_else(|_| Err(write_timed_out()));
            }
        }
        Ok(())
    }

    /// Sends close_notify, best effort.
    pub(crate) async fn close(&mut self) {
        match self {
            Transport::OpenSsl(stream) => {
                let _ = stream.shutdown().await;
            }
            Transport::Compact { tcp, records, .. } => {
                let mut out = Vec::new();
                if records
                    .seal_alert(record::alert::CLOSE_NOTIFY, &mut out)
                    .is_ok()
                {
                    let _ = tcp.write_all(&out).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode, SslVersion};

    use super::*;
    use crate::tls::{self, TlsProfile};

    /// A client socket that holds what TLS writes until `send` (or the client's next read), so
    /// a test can put the client's Finished and its first data in one segment.
    #[derive(Debug)]
    struct Held {
        tcp: std::net::TcpStream,
        pending: Vec<u8>,
    }

    impl Held {
        fn send(&mut self) -> io::Result<()> {
            self.tcp.write_all(&std::mem::take(&mut self.pending))
        }
    }

    impl Read for Held {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.send()?;
            self.tcp.read(buf)
        }
    }

    impl Write for Held {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.pending.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// The server's transport for a TLS 1.3 client that sends `first` in the same segment as
    /// its Finished, and the client.
    async fn coalesced(first: &'static [u8]) -> (Transport, openssl::ssl::SslStream<Held>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::thread::spawn(move || {
            let tcp = std::net::TcpStream::connect(addr).unwrap();
            let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
            b.set_verify(SslVerifyMode::NONE);
            b.set_min_proto_version(Some(SslVersion::TLS1_3)).unwrap();
            let held = Held {
                tcp,
                pending: Vec::new(),
            };
            let mut s = b
                .build()
                .connect("localhost", held)
                .expect("client handshake");
            s.write_all(first).unwrap();
            s.get_mut().send().unwrap();
            s
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let acceptor = tls::acceptor(TlsProfile::Default, tls::test_bundle()).unwrap();
        let transport = accept(&acceptor, tcp, None).await.unwrap();
        (transport, client.join().unwrap())
    }

    #[tokio::test]
    async fn data_sent_with_the_finished_is_read_first() {
        let (mut server, mut client) = coalesced(b"first bytes").await;
        // The bytes came with the Finished, in the handshake's read.
        assert!(matches!(&server, Transport::Compact { early, .. } if !early.is_empty()));
        assert_eq!(server.read().await.unwrap(), b"first bytes");
        // The session goes on in both directions.
        client.write_all(b"more").unwrap();
        client.get_mut().send().unwrap();
        assert_eq!(server.read().await.unwrap(), b"more");
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        server.write_all(b"reply", deadline).await.unwrap();
        let mut reply = [0u8; 5];
        client.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"reply");
    }

    #[tokio::test]
    async fn a_write_to_a_peer_that_does_not_read_fails_at_its_deadline() {
        // The client reads nothing after the handshake: the server's writes fill the
        // socket buffers and then must end at their deadline instead of waiting forever.
        let (mut server, client) = coalesced(b"x").await;
        let chunk = vec![0u8; 64 * 1024];
        let mut failed = None;
        for _ in 0..2_000 {
            let deadline = Instant::now() + std::time::Duration::from_millis(300);
            if let Err(e) = server.write_all(&chunk, deadline).await {
                failed = Some(e);
                break;
            }
        }
        let e = failed.expect("the writes never blocked");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        drop(client);
    }

    #[test]
    fn key_updates_get_a_burst_then_one_per_interval() {
        let t0 = Instant::now();
        let mut b = KeyUpdateBudget::new(t0);
        assert!(b.allow(0, t0), "no KeyUpdate, nothing spent");
        assert!(b.allow(8, t0), "a burst of eight");
        assert!(!b.allow(9, t0), "the ninth at once is refused");
        let mut b = KeyUpdateBudget::new(t0);
        assert!(b.allow(8, t0));
        assert!(b.allow(9, t0 + KEY_UPDATE_EVERY), "one more per interval");
        assert!(!b.allow(11, t0 + KEY_UPDATE_EVERY * 2), "but not two");
    }

    #[tokio::test]
    async fn a_handshake_read_holds_no_buffer_afterwards() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connect = tokio::spawn(tokio::net::TcpStream::connect(addr));
        let (tcp, _) = listener.accept().await.unwrap();
        let mut client = connect.await.unwrap().unwrap();
        let mut socket = Socket::new(tcp, None);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"12345678")
            .await
            .unwrap();
        let mut five = [0u8; 5];
        tokio::io::AsyncReadExt::read_exact(&mut socket, &mut five)
            .await
            .unwrap();
        // One recv took all eight bytes; three wait for the next reader.
        assert_eq!(socket.buf.len() - socket.pos, 3);
        socket.stop_buffering();
        let (_, rest) = socket.take().unwrap();
        assert_eq!(rest, b"678");
    }
}
