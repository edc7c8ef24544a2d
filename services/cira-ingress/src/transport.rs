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
use tokio_openssl::SslStream;

use crate::record::{self, RecordLayer};

/// The socket during the handshake, in a slot it can be taken back from: when the compact
/// record layer takes over, the socket leaves and the `SSL` is freed. Reads and writes go
/// through tokio's own `TcpStream` methods, which skip the `EAGAIN` read after a short one.
pub(crate) struct Socket(Option<TcpStream>);

fn taken() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "socket handed to the record layer",
    )
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
            Some(tcp) => Pin::new(tcp).poll_read(cx, buf),
            None => Poll::Ready(Err(taken())),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().0 {
            Some(tcp) => Pin::new(tcp).poll_write(cx, buf),
            None => Poll::Ready(Err(taken())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
            Some(tcp) => Pin::new(tcp).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
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
    },
    OpenSsl(SslStream<Socket>),
}

/// Runs the server handshake on `tcp` and picks the record layer.
pub(crate) async fn accept(acceptor: &SslAcceptor, tcp: TcpStream) -> Result<Transport, String> {
    let ssl = record::server_ssl(acceptor).map_err(|e| e.to_string())?;
    let mut stream = SslStream::new(ssl, Socket(Some(tcp))).map_err(|e| e.to_string())?;
    Pin::new(&mut stream)
        .accept()
        .await
        .map_err(|e| e.to_string())?;
    match record::take_over(stream.ssl()) {
        Ok(Some(records)) => match stream.get_mut().0.take() {
            Some(tcp) => Ok(Transport::Compact { tcp, records }),
            None => Err("socket missing after the handshake".into()),
        },
        Ok(None) => Ok(Transport::OpenSsl(stream)),
        Err(e) => Err(format!("taking over the TLS session: {e}")),
    }
}

impl Transport {
    /// Application bytes as they arrive; empty at the end of the stream (FIN or close_notify).
    /// Cancel-safe: a partial record stays in the record layer.
    pub(crate) async fn read(&mut self) -> io::Result<Vec<u8>> {
        match self {
            Transport::OpenSsl(stream) => read_some(stream).await,
            Transport::Compact { tcp, records } => loop {
                if records.peer_closed() {
                    return Ok(Vec::new());
                }
                let input = read_some(tcp).await?;
                if input.is_empty() {
                    return Ok(Vec::new());
                }
                let mut out = Vec::new();
                if let Err(e) = records.open(input, &mut out) {
                    if let Some(description) = e.alert() {
                        // Best effort, without waiting: the connection ends either way.
                        let mut alert = Vec::new();
                        if records.seal_alert(description, &mut alert).is_ok() {
                            let _ = tcp.try_write(&alert);
                        }
                    }
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
                if !out.is_empty() {
                    return Ok(out);
                }
            },
        }
    }

    pub(crate) async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Transport::OpenSsl(stream) => stream.write_all(data).await,
            Transport::Compact { tcp, records } => {
                let mut out = Vec::with_capacity(data.len() + 64);
                records.seal(data, &mut out).map_err(io::Error::other)?;
                tcp.write_all(&out).await
            }
        }
    }

    /// Records the record layer owes the peer (a KeyUpdate answer), sent before more is read.
    pub(crate) async fn flush_pending(&mut self) -> io::Result<()> {
        if let Transport::Compact { tcp, records } = self {
            let pending = records.take_pending();
            if !pending.is_empty() {
                tcp.write_all(&pending).await?;
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
            Transport::Compact { tcp, records } => {
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
