//! Sans-IO HTTP/1.1 message framing: where a request or response head ends, how long its body
//! is (Content-Length, chunked, or until close), and chunked decoding.
//!
//! Used on both ends of a CIRA tunnel: the ingress must know when a device's response is
//! complete (instead of the reference's scan for `</html>` or `0\r\n\r\n`), and the simulator
//! must accept requests in either framing. Every length is bounded. [`client`] is a small
//! keep-alive client on top, for tests and benchmarks.

use std::str;

pub mod client;

/// Largest head (start line + headers) accepted.
pub const MAX_HEAD: usize = 16 * 1024;
/// Largest body accepted.
pub const MAX_BODY: usize = 4 * 1024 * 1024;
/// Largest number of header fields accepted.
pub const MAX_HEADERS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("HTTP head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("HTTP body larger than {MAX_BODY} bytes")]
    BodyTooLarge,
    #[error("more than {MAX_HEADERS} header fields")]
    TooManyHeaders,
    #[error("malformed HTTP {0}")]
    Malformed(&'static str),
}

/// How the body of a message is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Length(usize),
    Chunked,
    /// Responses without length or chunking end when the connection closes.
    UntilClose,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Request: method; response: HTTP version.
    pub first: String,
    /// Request: target; response: status code.
    pub second: String,
    /// Request: HTTP version; response: reason phrase.
    pub third: String,
    pub headers: Vec<(String, String)>,
    /// Bytes of the head including the blank line.
    pub len: usize,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn status(&self) -> Option<u16> {
        self.second.parse().ok()
    }

    fn framing(&self, is_response: bool) -> Result<Framing, Error> {
        if let Some(te) = self.header("transfer-encoding") {
            if te.to_ascii_lowercase().contains("chunked") {
                return Ok(Framing::Chunked);
            }
        }
        if let Some(cl) = self.header("content-length") {
            let n: usize = cl
                .trim()
                .parse()
                .map_err(|_| Error::Malformed("Content-Length"))?;
            if n > MAX_BODY {
                return Err(Error::BodyTooLarge);
            }
            return Ok(Framing::Length(n));
        }
        if is_response {
            match self.status() {
                Some(s) if (100..200).contains(&s) || s == 204 || s == 304 => {
                    Ok(Framing::Length(0))
                }
                _ => Ok(Framing::UntilClose),
            }
        } else {
            Ok(Framing::Length(0))
        }
    }
}

/// Parses a head if `buf` holds a complete one. `Ok(None)`: need more bytes.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, Error> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return if buf.len() > MAX_HEAD {
            Err(Error::HeadTooLarge)
        } else {
            Ok(None)
        };
    };
    let len = end + 4;
    if len > MAX_HEAD {
        return Err(Error::HeadTooLarge);
    }
    let text = str::from_utf8(buf.get(..end).unwrap_or_default())
        .map_err(|_| Error::Malformed("head encoding"))?;
    let mut lines = text.split("\r\n");
    let start = lines.next().ok_or(Error::Malformed("start line"))?;
    let mut parts = start.splitn(3, ' ');
    let first = parts.next().unwrap_or_default().to_string();
    let second = parts
        .next()
        .ok_or(Error::Malformed("start line"))?
        .to_string();
    let third = parts.next().unwrap_or_default().to_string();
    if first.is_empty() || second.is_empty() {
        return Err(Error::Malformed("start line"));
    }
    let mut headers = Vec::new();
    for line in lines {
        if headers.len() == MAX_HEADERS {
            return Err(Error::TooManyHeaders);
        }
        let (name, value) = line
            .split_once(':')
            .ok_or(Error::Malformed("header line"))?;
        if name.is_empty() || name.contains(' ') {
            return Err(Error::Malformed("header name"));
        }
        headers.push((name.to_string(), value.trim().to_string()));
    }
    Ok(Some(Head {
        first,
        second,
        third,
        headers,
        len,
    }))
}

/// A complete message found at the start of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Complete {
    pub head: Head,
    /// Bytes of the whole message (head and framed body).
    pub len: usize,
}

/// Finds a complete response. With `closed` (the peer closed its side), an until-close body
/// ends at the end of the buffer; otherwise such a response is incomplete.
pub fn complete_response(buf: &[u8], closed: bool) -> Result<Option<Complete>, Error> {
    complete(buf, true, closed)
}

/// Finds a complete request (a request without length or chunking has no body).
pub fn complete_request(buf: &[u8]) -> Result<Option<Complete>, Error> {
    complete(buf, false, false)
}

fn complete(buf: &[u8], is_response: bool, closed: bool) -> Result<Option<Complete>, Error> {
    let Some(head) = parse_head(buf)? else {
        return Ok(None);
    };
    let body = buf.get(head.len..).unwrap_or_default();
    let body_len = match head.framing(is_response)? {
        Framing::Length(n) => (body.len() >= n).then_some(n),
        Framing::Chunked => chunked_len(body)?,
        Framing::UntilClose => {
            if body.len() > MAX_BODY {
                return Err(Error::BodyTooLarge);
            }
            closed.then_some(body.len())
        }
    };
    Ok(body_len.map(|b| Complete {
        len: head.len + b,
        head,
    }))
}

/// [`complete_response`] for a response that arrives piece by piece, as a device's does over
/// CIRA: it remembers how far the bytes are understood (the head once parsed, the chunks
/// already walked), so a response fed in n pieces costs O(length) in all, not O(n × length).
#[derive(Debug, Default, Clone)]
pub struct ResponseFramer {
    state: FrameState,
}

#[derive(Debug, Clone)]
enum FrameState {
    /// Bytes already searched for the end of the head.
    Head { scanned: usize },
    Body {
        head_len: usize,
        framing: Framing,
        chunks: ChunkWalk,
    },
}

impl Default for FrameState {
    fn default() -> Self {
        FrameState::Head { scanned: 0 }
    }
}

/// How far a chunked body has been walked: `pos` is where the next size line (or trailer
/// line) starts, `data` the chunk bytes so far.
#[derive(Debug, Default, Clone)]
struct ChunkWalk {
    pos: usize,
    data: usize,
    trailers: bool,
    /// The body's length once complete (asking again gives the same answer).
    done: Option<usize>,
}

impl ResponseFramer {
    pub fn new() -> Self {
        Self::default()
    }

    /// The length of the complete response at the start of `buf`, which holds every byte fed
    /// so far (the same buffer, grown); `None` while it is incomplete. With `closed`, an
    /// until-close body ends at the end of `buf`.
    pub fn advance(&mut self, buf: &[u8], closed: bool) -> Result<Option<usize>, Error> {
        if let FrameState::Head { scanned } = self.state {
            let from = scanned.saturating_sub(3).min(buf.len());
            if find(buf.get(from..).unwrap_or_default(), b"\r\n\r\n").is_none() {
                if buf.len() > MAX_HEAD {
                    return Err(Error::HeadTooLarge);
                }
                self.state = FrameState::Head { scanned: buf.len() };
                return Ok(None);
            }
            let head = parse_head(buf)?.ok_or(Error::Malformed("head"))?;
            self.state = FrameState::Body {
                head_len: head.len,
                framing: head.framing(true)?,
                chunks: ChunkWalk::default(),
            };
        }
        let FrameState::Body {
            head_len,
            framing,
            chunks,
        } = &mut self.state
        else {
            return Ok(None);
        };
        let body = buf.get(*head_len..).unwrap_or_default();
        let body_len = match *framing {
            Framing::Length(n) => (body.len() >= n).then_some(n),
            Framing::UntilClose => {
                if body.len() > MAX_BODY {
                    return Err(Error::BodyTooLarge);
                }
                closed.then_some(body.len())
            }
            Framing::Chunked => chunks.walk(body)?,
        };
        Ok(body_len.map(|b| *head_len + b))
    }
}

impl ChunkWalk {
    /// Walks on from where the last call stopped; the length of the complete chunked body.
    fn walk(&mut self, body: &[u8]) -> Result<Option<usize>, Error> {
        if self.done.is_some() {
            return Ok(self.done);
        }
        loop {
            let rest = body.get(self.pos..).unwrap_or_default();
            let Some(eol) = find(rest, b"\r\n") else {
                return if rest.len() > 1024 && !self.trailers {
                    Err(Error::Malformed("chunk size line"))
                } else {
                    Ok(None)
                };
            };
            if self.trailers {
                // Trailers end with an empty line.
                self.pos += eol + 2;
                if eol == 0 {
                    self.done = Some(self.pos);
                    return Ok(self.done);
                }
                continue;
            }
            let line = str::from_utf8(rest.get(..eol).unwrap_or_default())
                .map_err(|_| Error::Malformed("chunk size"))?;
            let hex = line.split(';').next().unwrap_or_default().trim();
            let size =
                usize::from_str_radix(hex, 16).map_err(|_| Error::Malformed("chunk size"))?;
            let data = self.data.checked_add(size).ok_or(Error::BodyTooLarge)?;
            if data > MAX_BODY {
                return Err(Error::BodyTooLarge);
            }
            if size == 0 {
                self.pos += eol + 2;
                self.trailers = true;
                continue;
            }
            let after = eol + 2 + size;
            match rest.get(after..after + 2) {
                Some(b"\r\n") => {
                    self.pos += after + 2;
                    self.data = data;
                }
                Some(_) => return Err(Error::Malformed("chunk terminator")),
                None => return Ok(None),
            }
        }
    }
}

/// Length of a complete chunked body (including the last chunk and trailers), or `None`.
pub fn chunked_len(body: &[u8]) -> Result<Option<usize>, Error> {
    let mut pos = 0usize;
    let mut data = 0usize;
    loop {
        let rest = body.get(pos..).unwrap_or_default();
        let Some(eol) = find(rest, b"\r\n") else {
            return if rest.len() > 1024 {
                Err(Error::Malformed("chunk size line"))
            } else {
                Ok(None)
            };
        };
        let line = str::from_utf8(rest.get(..eol).unwrap_or_default())
            .map_err(|_| Error::Malformed("chunk size"))?;
        let hex = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(hex, 16).map_err(|_| Error::Malformed("chunk size"))?;
        data = data.checked_add(size).ok_or(Error::BodyTooLarge)?;
        if data > MAX_BODY {
            return Err(Error::BodyTooLarge);
        }
        pos += eol + 2;
        if size == 0 {
            // Trailers end with an empty line.
            loop {
                let rest = body.get(pos..).unwrap_or_default();
                let Some(eol) = find(rest, b"\r\n") else {
                    return Ok(None);
                };
                pos += eol + 2;
                if eol == 0 {
                    return Ok(Some(pos));
                }
            }
        }
        let after = pos + size;
        match body.get(after..after + 2) {
            Some(b"\r\n") => pos = after + 2,
            Some(_) => return Err(Error::Malformed("chunk terminator")),
            None => return Ok(None),
        }
    }
}

/// Decodes a complete chunked body into its data.
pub fn decode_chunked(body: &[u8]) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    loop {
        let rest = body.get(pos..).unwrap_or_default();
        let eol = find(rest, b"\r\n").ok_or(Error::Malformed("chunk size line"))?;
        let line = str::from_utf8(rest.get(..eol).unwrap_or_default())
            .map_err(|_| Error::Malformed("chunk size"))?;
        let hex = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(hex, 16).map_err(|_| Error::Malformed("chunk size"))?;
        pos += eol + 2;
        if size == 0 {
            return Ok(out);
        }
        if out.len() + size > MAX_BODY {
            return Err(Error::BodyTooLarge);
        }
        let chunk = body
            .get(pos..pos + size)
            .ok_or(Error::Malformed("short chunk"))?;
        out.extend_from_slice(chunk);
        pos += size + 2;
    }
}

/// The body of a complete message, de-chunked when needed.
pub fn body(message: &[u8], complete: &Complete) -> Result<Vec<u8>, Error> {
    let raw = message
        .get(complete.head.len..complete.len)
        .ok_or(Error::Malformed("body bounds"))?;
    if complete
        .head
        .header("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"))
    {
        decode_chunked(raw)
    } else {
        Ok(raw.to_vec())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_framer_agrees_with_whole_buffer_framing_at_every_split() {
        let responses: [&[u8]; 5] = [
            CHUNKED,
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n2;x=y\r\nbc\r\n0\r\nT: 1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n\r\nuntil close",
        ];
        let mut rng = 0x2545_f491_u64;
        for full in responses {
            for _ in 0..50 {
                let mut framer = ResponseFramer::new();
                let mut buf = Vec::new();
                let mut at = 0;
                while at < full.len() {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let n = 1 + (rng % 7) as usize;
                    let end = (at + n).min(full.len());
                    buf.extend_from_slice(&full[at..end]);
                    at = end;
                    let whole = complete_response(&buf, false).map(|c| c.map(|c| c.len));
                    assert_eq!(
                        framer.advance(&buf, false),
                        whole,
                        "{:?}",
                        String::from_utf8_lossy(&buf)
                    );
                }
                let whole = complete_response(&buf, true).map(|c| c.map(|c| c.len));
                assert_eq!(framer.advance(&buf, true), whole);
            }
        }
    }

    #[test]
    fn the_framer_walks_a_long_chunked_body_once() {
        // 20,000 one-byte chunks fed one chunk at a time: each step looks at the new bytes
        // only (a whole-buffer parse per step would walk 200 million chunk lines).
        let mut framer = ResponseFramer::new();
        let mut buf = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        assert_eq!(framer.advance(&buf, false), Ok(None));
        for _ in 0..20_000 {
            buf.extend_from_slice(b"1\r\nx\r\n");
            assert_eq!(framer.advance(&buf, false), Ok(None));
        }
        buf.extend_from_slice(b"0\r\n\r\n");
        assert_eq!(framer.advance(&buf, false), Ok(Some(buf.len())));
    }

    const CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/soap+xml\r\nTransfer-Encoding: chunked\r\n\r\n0005\r\nhello\r\n0006\r\n world\r\n0\r\n\r\n";
    const UNAUTHORIZED: &[u8] = b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Digest realm=\"x\"\r\nContent-Length: 14\r\nConnection: close\r\n\r\n<html></html>\n";

    #[test]
    fn chunked_response_completes_only_at_the_last_chunk() {
        for cut in 0..CHUNKED.len() {
            assert_eq!(
                complete_response(&CHUNKED[..cut], false),
                Ok(None),
                "prefix {cut}"
            );
        }
        let c = complete_response(CHUNKED, false).unwrap().unwrap();
        assert_eq!(c.len, CHUNKED.len());
        assert_eq!(c.head.status(), Some(200));
        assert_eq!(body(CHUNKED, &c).unwrap(), b"hello world");
    }

    #[test]
    fn content_length_response_and_trailing_bytes() {
        let mut buf = UNAUTHORIZED.to_vec();
        buf.extend_from_slice(b"HTTP/1.1");
        let c = complete_response(&buf, false).unwrap().unwrap();
        assert_eq!(c.len, UNAUTHORIZED.len());
        assert_eq!(
            c.head.header("www-authenticate"),
            Some("Digest realm=\"x\"")
        );
    }

    #[test]
    fn until_close_needs_the_close() {
        let r = b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n<html>bad</html>";
        assert_eq!(complete_response(r, false), Ok(None));
        assert_eq!(complete_response(r, true).unwrap().unwrap().len, r.len());
    }

    #[test]
    fn requests_in_both_framings() {
        let cl = b"POST /wsman HTTP/1.1\r\nHost: x:16992\r\nContent-Length: 3\r\n\r\nabc";
        let c = complete_request(cl).unwrap().unwrap();
        assert_eq!(
            (c.head.first.as_str(), c.head.second.as_str()),
            ("POST", "/wsman")
        );
        assert_eq!(body(cl, &c).unwrap(), b"abc");
        let ch = b"POST /wsman HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        let c = complete_request(ch).unwrap().unwrap();
        assert_eq!(body(ch, &c).unwrap(), b"abc");
    }

    #[test]
    fn hostile_lengths_are_refused() {
        let huge = b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n";
        assert_eq!(complete_response(huge, false), Err(Error::BodyTooLarge));
        let chunk = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFF\r\n";
        assert_eq!(complete_response(chunk, false), Err(Error::BodyTooLarge));
        let long_head = vec![b'a'; MAX_HEAD + 1];
        assert_eq!(
            complete_response(&long_head, false),
            Err(Error::HeadTooLarge)
        );
        let bad = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        assert_eq!(
            complete_response(bad, false),
            Err(Error::Malformed("chunk size"))
        );
    }
}
