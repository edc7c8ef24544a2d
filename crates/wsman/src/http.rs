//! WS-Man over HTTP/1.1: the request MPS sends inside the CIRA tunnel (no Content-Type, a
//! `Host: <guid>:16992`), and the response split into status, challenge and body.

use homeport_http1 as http1;

/// Largest response body accepted (matches the XML document limit).
pub const MAX_BODY_BYTES: usize = crate::xml::MAX_DOCUMENT_BYTES;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HttpError {
    #[error("incomplete HTTP response")]
    Incomplete,
    #[error("malformed HTTP response: {0}")]
    Malformed(String),
    #[error("HTTP body larger than {MAX_BODY_BYTES} bytes")]
    TooLarge,
}

/// `POST /wsman` with the envelope.
pub fn request(host: &str, authorization: Option<&str>, envelope: &str) -> Vec<u8> {
    let mut s = format!("POST /wsman HTTP/1.1\r\nHost: {host}\r\n");
    if let Some(a) = authorization {
        s.push_str("Authorization: ");
        s.push_str(a);
        s.push_str("\r\n");
    }
    s.push_str(&format!("Content-Length: {}\r\n\r\n", envelope.len()));
    let mut out = s.into_bytes();
    out.extend_from_slice(envelope.as_bytes());
    out
}

/// `POST /wsman` framed as the reference RPS frames it for an rpc client to relay
/// (openamt-rps.md §1.6): the Authorization header first, `Host: <guid>:16992`, one chunk with
/// an upper-case hex length, then the last chunk (rpc-go's LME transport speaks chunked).
pub fn request_chunked(host: &str, authorization: Option<&str>, envelope: &str) -> Vec<u8> {
    let mut s = String::from("POST /wsman HTTP/1.1\r\n");
    if let Some(a) = authorization {
        s.push_str("Authorization: ");
        s.push_str(a);
        s.push_str("\r\n");
    }
    s.push_str(&format!(
        "Host: {host}\r\nTransfer-Encoding: chunked\r\n\r\n{:X}\r\n",
        envelope.len()
    ));
    let mut out = s.into_bytes();
    out.extend_from_slice(envelope.as_bytes());
    out.extend_from_slice(b"\r\n0\r\n\r\n");
    out
}

/// A device's HTTP answer.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub www_authenticate: Option<String>,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

/// Parses one complete HTTP response (as the tunnel returns it).
pub fn parse_reply(bytes: &[u8]) -> Result<HttpReply, HttpError> {
    let complete = http1::complete_response(bytes, true)
        .map_err(|e| HttpError::Malformed(e.to_string()))?
        .ok_or(HttpError::Incomplete)?;
    let status = complete
        .head
        .status()
        .ok_or_else(|| HttpError::Malformed("no status code".into()))?;
    let body = http1::body(bytes, &complete).map_err(|e| HttpError::Malformed(e.to_string()))?;
    if body.len() > MAX_BODY_BYTES {
        return Err(HttpError::TooLarge);
    }
    Ok(HttpReply {
        status,
        www_authenticate: complete.head.header("www-authenticate").map(str::to_string),
        content_type: complete.head.header("content-type").map(str::to_string),
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunked_request_reads_back_whole() {
        let bytes = request_chunked("g:16992", Some("Digest x"), "<Envelope/>");
        let complete = http1::complete_request(&bytes).unwrap().unwrap();
        assert_eq!(complete.len, bytes.len());
        assert_eq!(complete.head.header("authorization"), Some("Digest x"));
        assert_eq!(http1::body(&bytes, &complete).unwrap(), b"<Envelope/>");
        assert!(bytes.starts_with(b"POST /wsman HTTP/1.1\r\nAuthorization: Digest x\r\n"));
    }

    #[test]
    fn chunked_amt_reply_with_split_tokens() {
        let raw = b"HTTP/1.1 200 OK\r\nServer: Intel(R) Active Management Technology 15.0.23.1706\r\nTransfer-Encoding: chunked\r\n\r\n0004\r\n<a:E\r\n0003\r\nnv/\r\n0001\r\n>\r\n0\r\n\r\n";
        let r = parse_reply(raw).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"<a:Env/>");
        assert_eq!(
            parse_reply(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab").unwrap_err(),
            HttpError::Incomplete
        );
        assert!(matches!(
            parse_reply(b"garbage\r\n\r\n"),
            Err(HttpError::Malformed(_))
        ));
    }

    #[test]
    fn request_has_length_and_no_content_type() {
        let r = request("g:16992", Some("Digest x"), "<E/>");
        let s = String::from_utf8(r).unwrap();
        assert!(s.starts_with("POST /wsman HTTP/1.1\r\nHost: g:16992\r\nAuthorization: Digest x\r\nContent-Length: 4\r\n\r\n<E/>"));
    }
}
