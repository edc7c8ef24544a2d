//! A small HTTP/1.1 client over one keep-alive connection: the tests, the benchmark and the
//! browser-test driver talk to HTTP services with it (no client stack to build).

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// A complete response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One connection; requests go one after another on it.
pub struct Conn {
    stream: TcpStream,
    host: String,
    buf: Vec<u8>,
    /// Deadline of one whole exchange.
    pub timeout: Duration,
}

fn other(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl Conn {
    pub async fn connect(addr: std::net::SocketAddr) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            host: addr.to_string(),
            buf: Vec::with_capacity(16 * 1024),
            timeout: Duration::from_secs(60),
        })
    }

    /// The request's bytes, head and body.
    pub fn encode(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Vec<u8> {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        bytes
    }

    /// Sends a request and reads its whole response.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        let bytes = self.encode(method, path, headers, body);
        self.send_raw(&bytes).await
    }

    /// Sends `bytes` as they are (a request, possibly malformed on purpose) and reads one
    /// response.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<Response> {
        let timeout = self.timeout;
        tokio::time::timeout(timeout, async {
            self.stream.write_all(bytes).await?;
            self.read_response().await
        })
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "HTTP exchange timed out"))?
    }

    async fn read_response(&mut self) -> std::io::Result<Response> {
        let mut closed = false;
        loop {
            if let Some(c) = crate::complete_response(&self.buf, closed).map_err(other)? {
                let body = crate::body(&self.buf, &c).map_err(other)?;
                let r = Response {
                    status: c.head.status().unwrap_or(0),
                    headers: c.head.headers.clone(),
                    body,
                };
                self.buf.drain(..c.len);
                return Ok(r);
            }
            if closed {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed before a complete response",
                ));
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                closed = true;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends a request whose response streams (Server-Sent Events): returns the status and
    /// headers; the body is then read with [`Conn::read_some`].
    pub async fn start_stream(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> std::io::Result<(u16, Vec<(String, String)>)> {
        let bytes = self.encode("GET", path, headers, b"");
        self.stream.write_all(&bytes).await?;
        loop {
            if let Some(head) = crate::parse_head(&self.buf).map_err(other)? {
                self.buf.drain(..head.len);
                return Ok((head.status().unwrap_or(0), head.headers));
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed before the response head",
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// More raw bytes of a streaming body (chunk framing included); empty when the server
    /// closed the connection.
    pub async fn read_some(&mut self) -> std::io::Result<Vec<u8>> {
        if !self.buf.is_empty() {
            return Ok(std::mem::take(&mut self.buf));
        }
        let mut chunk = vec![0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        chunk.truncate(n);
        Ok(chunk)
    }
}
