//! HTTP digest authentication as AMT does it (reference §1.2): MD5, qop=auth, the challenge
//! nonce reused with an increasing nc until the device says it is stale. A challenge without
//! `qop=auth` is refused: RFC 2069's answer has no client nonce, so whoever sends the challenge
//! would get a response of its own choosing to attack the password with offline.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("not a Digest challenge")]
    NotDigest,
    #[error("challenge without {0}")]
    Missing(&'static str),
    #[error("challenge without qop=auth (RFC 2069 digest is not answered)")]
    NoQopAuth,
}

/// A parsed `WWW-Authenticate: Digest …` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub opaque: Option<String>,
    pub stale: bool,
}

impl Challenge {
    pub fn parse(header: &str) -> Result<Challenge, DigestError> {
        let rest = header
            .trim()
            .strip_prefix("Digest")
            .ok_or(DigestError::NotDigest)?;
        let params = params(rest);
        let get = |k: &str| {
            params
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.clone())
        };
        if !get("qop").is_some_and(|q| q.split(',').any(|v| v.trim() == "auth")) {
            return Err(DigestError::NoQopAuth);
        }
        Ok(Challenge {
            realm: get("realm").ok_or(DigestError::Missing("realm"))?,
            nonce: get("nonce").ok_or(DigestError::Missing("nonce"))?,
            opaque: get("opaque"),
            stale: get("stale").is_some_and(|s| s.eq_ignore_ascii_case("true")),
        })
    }
}

/// Splits `k=v, k="v",k=v` (quoted or not, with or without spaces).
pub fn params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some(eq) = rest.find('=') else { break };
        let key = rest[..eq].trim().trim_start_matches(',').trim().to_string();
        rest = rest[eq + 1..].trim_start();
        let value;
        if let Some(stripped) = rest.strip_prefix('"') {
            let end = stripped.find('"').unwrap_or(stripped.len());
            value = stripped[..end].to_string();
            rest = stripped.get(end + 1..).unwrap_or_default();
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            value = rest[..end].trim().to_string();
            rest = &rest[end..];
        }
        rest = rest.trim_start().trim_start_matches(',').trim_start();
        out.push((key, value));
    }
    out
}

/// Digest state for one device: the current challenge and the request counter.
#[derive(Clone, Debug)]
pub struct DigestSession {
    challenge: Challenge,
    nc: u32,
}

impl DigestSession {
    pub fn new(challenge: Challenge) -> DigestSession {
        DigestSession { challenge, nc: 0 }
    }

    pub fn realm(&self) -> &str {
        &self.challenge.realm
    }

    /// The `Authorization` value for the next request (increments nc).
    pub fn authorize(&mut self, user: &str, password: &str, method: &str, uri: &str) -> String {
        self.nc = self.nc.wrapping_add(1);
        let c = &self.challenge;
        let ha1 = md5_hex(&format!("{user}:{}:{password}", c.realm));
        let ha2 = md5_hex(&format!("{method}:{uri}"));
        let cnonce = format!("{:016x}", fastrand_u64());
        let nc = format!("{:08x}", self.nc);
        let mut h = format!(
            r#"Digest username="{}",realm="{}",nonce="{}",uri="{uri}","#,
            quote(user),
            quote(&c.realm),
            quote(&c.nonce)
        );
        let response = md5_hex(&format!("{ha1}:{}:{nc}:{cnonce}:auth:{ha2}", c.nonce));
        h.push_str(&format!(
            r#"qop="auth",response="{response}",nc="{nc}",cnonce="{cnonce}""#
        ));
        if let Some(o) = &c.opaque {
            h.push_str(&format!(r#",opaque="{}""#, quote(o)));
        }
        h
    }
}

/// Quoted-string content: drop quotes and control characters a hostile challenge could use to
/// inject header fields.
fn quote(s: &str) -> String {
    s.chars()
        .filter(|c| *c != '"' && *c != '\\' && !c.is_control())
        .collect()
}

fn fastrand_u64() -> u64 {
    let mut b = [0u8; 8];
    if openssl::rand::rand_bytes(&mut b).is_err() {
        // Only the cnonce's unpredictability suffers; the digest stays valid.
        return 0x5eed;
    }
    u64::from_le_bytes(b)
}

pub fn md5_hex(s: &str) -> String {
    match openssl::hash::hash(openssl::hash::MessageDigest::md5(), s.as_bytes()) {
        Ok(d) => d.iter().map(|b| format!("{b:02x}")).collect(),
        Err(_) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amt_challenge_parses() {
        let c = Challenge::parse(r#"Digest realm="Digest:727734D63A1FC0423736E48DA554E462", nonce="B9AX94iAAAAAAAAAx6rrSfPHGUrx/3uA",stale="false",qop="auth""#).unwrap();
        assert_eq!(c.realm, "Digest:727734D63A1FC0423736E48DA554E462");
        assert_eq!(c.nonce, "B9AX94iAAAAAAAAAx6rrSfPHGUrx/3uA");
        assert!(!c.stale);
        assert!(
            Challenge::parse(r#"Digest realm="r",nonce="n",stale="true",qop="auth""#)
                .unwrap()
                .stale
        );
        assert_eq!(
            Challenge::parse("Basic realm=x"),
            Err(DigestError::NotDigest)
        );
        assert_eq!(
            Challenge::parse("Digest realm=x, qop=auth"),
            Err(DigestError::Missing("nonce"))
        );
    }

    #[test]
    fn a_challenge_without_qop_auth_is_refused() {
        for header in [
            r#"Digest realm="Digest:ABC", nonce="n""#,
            r#"Digest realm="Digest:ABC", nonce="n", qop="auth-int""#,
        ] {
            assert_eq!(
                Challenge::parse(header),
                Err(DigestError::NoQopAuth),
                "{header}"
            );
        }
    }

    #[test]
    fn response_is_rfc2617_and_nc_increments() {
        let c =
            Challenge::parse(r#"Digest realm="R", nonce="N",stale="false",qop="auth""#).unwrap();
        let mut s = DigestSession::new(c);
        let a1 = s.authorize("admin", "P@ss", "POST", "/wsman");
        let a2 = s.authorize("admin", "P@ss", "POST", "/wsman");
        let p1 = params(a1.strip_prefix("Digest ").unwrap());
        let p2 = params(a2.strip_prefix("Digest ").unwrap());
        let get =
            |p: &[(String, String)], k: &str| p.iter().find(|(n, _)| n == k).unwrap().1.clone();
        assert_eq!(get(&p1, "nc"), "00000001");
        assert_eq!(get(&p2, "nc"), "00000002");
        let ha1 = md5_hex("admin:R:P@ss");
        let ha2 = md5_hex("POST:/wsman");
        let expected = md5_hex(&format!(
            "{ha1}:N:00000001:{}:auth:{ha2}",
            get(&p1, "cnonce")
        ));
        assert_eq!(get(&p1, "response"), expected);
    }

    #[test]
    fn hostile_challenge_cannot_inject_headers() {
        let c = Challenge::parse("Digest realm=\"a\r\nX-Evil: 1\", nonce=\"n\", qop=auth").unwrap();
        let h = DigestSession::new(c).authorize("admin", "p", "POST", "/wsman");
        assert!(!h.contains('\r') && !h.contains('\n'));
    }
}
