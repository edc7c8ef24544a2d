//! One device's WS-Man side of a flow: builds requests, answers AMT's digest challenges
//! (the first call of a flow goes without credentials and meets a 401, as in the reference),
//! resends a challenged request at most three times in a row, and parses answers.

use homeport_wsman::digest::{Challenge, DigestSession};
use homeport_wsman::response::{self, ResponseError};
use homeport_wsman::{http, Request, Response};
use zeroize::Zeroizing;

/// Consecutive 401s before a flow gives up (§1.6).
const MAX_UNAUTHORIZED: u8 = 3;
/// Times one request is sent again after a lost or cut-off answer (the reference resends
/// twice on parse errors; rpc-go forwards whatever arrived within its read deadline).
const MAX_RESENDS: u8 = 2;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LinkError {
    #[error("Unable to authenticate with AMT")]
    Unauthorized,
    #[error("unreadable answer from AMT: {0}")]
    Malformed(String),
    #[error("AMT answered HTTP {0}")]
    Status(u16),
}

/// What an answer meant.
#[derive(Debug)]
pub enum Reply {
    /// A challenge: send these bytes (the same request, now with credentials).
    Resend(Vec<u8>),
    /// HTTP 200 with a parsed envelope.
    Ok(Response),
    /// HTTP 400 with a SOAP fault (some steps expect one, e.g. deleting what is not there).
    Fault(String),
}

pub struct Link {
    host: String,
    user: String,
    password: Zeroizing<String>,
    digest: Option<DigestSession>,
    unauthorized: u8,
    message_id: u64,
    pending: Option<String>,
    exchanges: u32,
    resends: u8,
}

impl Link {
    pub fn new(guid: &str, user: &str, password: &str) -> Link {
        Link {
            host: format!("{guid}:16992"),
            user: user.to_string(),
            password: Zeroizing::new(password.to_string()),
            digest: None,
            unauthorized: 0,
            message_id: 0,
            pending: None,
            exchanges: 0,
            resends: 0,
        }
    }

    /// Switches to new credentials (after Setup set the admin password); the device's nonce
    /// stays valid, so no extra challenge.
    pub fn set_credentials(&mut self, user: &str, password: &str) {
        self.user = user.to_string();
        self.password = Zeroizing::new(password.to_string());
    }

    /// Starts counting consecutive challenges afresh (after switching credentials on
    /// purpose).
    pub fn reset_challenges(&mut self) {
        self.unauthorized = 0;
    }

    pub fn exchanges(&self) -> u32 {
        self.exchanges
    }

    /// The HTTP bytes of `req`.
    pub fn send(&mut self, req: &Request) -> Vec<u8> {
        self.message_id += 1;
        let envelope = req.to_xml(self.message_id);
        let bytes = self.frame(&envelope);
        self.pending = Some(envelope);
        self.resends = 0;
        bytes
    }

    /// The last request again (its answer was lost or cut off), at most `MAX_RESENDS` times.
    pub fn resend(&mut self) -> Option<Vec<u8>> {
        if self.resends >= MAX_RESENDS {
            return None;
        }
        self.resends += 1;
        let envelope = self.pending.clone()?;
        Some(self.frame(&envelope))
    }

    fn frame(&mut self, envelope: &str) -> Vec<u8> {
        self.exchanges += 1;
        let user = self.user.clone();
        let auth = self
            .digest
            .as_mut()
            .map(|d| d.authorize(&user, &self.password, "POST", "/wsman"));
        http::request_chunked(&self.host, auth.as_deref(), envelope)
    }

    /// Reads the device's answer to the last `send`.
    pub fn receive(&mut self, bytes: &[u8]) -> Result<Reply, LinkError> {
        let reply = http::parse_reply(bytes).map_err(|e| LinkError::Malformed(e.to_string()))?;
        match reply.status {
            401 => {
                self.unauthorized += 1;
                if self.unauthorized > MAX_UNAUTHORIZED {
                    return Err(LinkError::Unauthorized);
                }
                let header = reply
                    .www_authenticate
                    .ok_or_else(|| LinkError::Malformed("401 without a challenge".into()))?;
                let challenge = Challenge::parse(&header)
                    .map_err(|e| LinkError::Malformed(format!("challenge: {e}")))?;
                self.digest = Some(DigestSession::new(challenge));
                let envelope = self
                    .pending
                    .clone()
                    .ok_or_else(|| LinkError::Malformed("401 to nothing sent".into()))?;
                Ok(Reply::Resend(self.frame(&envelope)))
            }
            200 => {
                self.unauthorized = 0;
                response::parse(&reply.body)
                    .map(Reply::Ok)
                    .map_err(|e| LinkError::Malformed(e.to_string()))
            }
            400 => {
                self.unauthorized = 0;
                Ok(Reply::Fault(match response::parse(&reply.body) {
                    Err(ResponseError::Fault(f)) => f.to_string(),
                    _ => "HTTP 400".into(),
                }))
            }
            other => Err(LinkError::Status(other)),
        }
    }

    /// The realm of the current challenge, if one was met.
    pub fn realm(&self) -> Option<&str> {
        self.digest.as_ref().map(DigestSession::realm)
    }
}
