//! Signing in: the admin password kept only as a salted PBKDF2 hash, tokens with the MPS
//! payload shape, and the bearer check every API route passes (the same verifier as gRPC).

use anyhow::Context as _;
use base64::Engine as _;
use openssl::hash::MessageDigest;

/// PBKDF2-HMAC-SHA256 rounds of new hashes: tens of milliseconds per sign-in on one core.
const ROUNDS: usize = 210_000;
const SCHEME: &str = "pbkdf2-sha256";

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD_NO_PAD
}

fn derive(password: &[u8], salt: &[u8], rounds: usize) -> anyhow::Result<[u8; 32]> {
    let mut out = [0u8; 32];
    openssl::pkcs5::pbkdf2_hmac(password, salt, rounds, MessageDigest::sha256(), &mut out)?;
    Ok(out)
}

/// `pbkdf2-sha256$<rounds>$<salt b64>$<hash b64>` of `password`, with a random salt.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let mut salt = [0u8; 16];
    openssl::rand::rand_bytes(&mut salt)?;
    let hash = derive(password.as_bytes(), &salt, ROUNDS)?;
    Ok(format!(
        "{SCHEME}${ROUNDS}${}${}",
        b64().encode(salt),
        b64().encode(hash)
    ))
}

/// A stored password hash.
#[derive(Clone)]
pub struct PasswordHash {
    rounds: usize,
    salt: Vec<u8>,
    hash: Vec<u8>,
}

impl std::fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PasswordHash({SCHEME}, {} rounds)", self.rounds)
    }
}

impl PasswordHash {
    pub fn parse(line: &str) -> anyhow::Result<PasswordHash> {
        let parts: Vec<&str> = line.trim().split('$').collect();
        let [scheme, rounds, salt, hash] = parts.as_slice() else {
            anyhow::bail!("not a {SCHEME}$rounds$salt$hash line");
        };
        anyhow::ensure!(*scheme == SCHEME, "unknown hash scheme {scheme:?}");
        let rounds: usize = rounds.parse().context("rounds")?;
        anyhow::ensure!(
            (10_000..=10_000_000).contains(&rounds),
            "rounds out of range"
        );
        let salt = b64().decode(salt).context("salt")?;
        let hash = b64().decode(hash).context("hash")?;
        anyhow::ensure!(
            hash.len() == 32 && salt.len() >= 8,
            "wrong hash or salt length"
        );
        Ok(PasswordHash { rounds, salt, hash })
    }

    pub fn read(path: &std::path::Path) -> anyhow::Result<PasswordHash> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the admin password hash {}", path.display()))?;
        PasswordHash::parse(&text)
            .with_context(|| format!("admin password hash {}", path.display()))
    }

    /// Constant-time comparison of the derived key.
    pub fn verify(&self, password: &str) -> bool {
        derive(password.as_bytes(), &self.salt, self.rounds)
            .map(|d| openssl::memcmp::eq(&d, &self.hash))
            .unwrap_or(false)
    }
}

/// What a signed token says.
pub struct Claims<'a> {
    pub subject: &'a str,
    pub tenant: &'a str,
    /// `*` for API tokens; a guid for a redirection token.
    pub device_id: &'a str,
    pub ttl_secs: i64,
    pub audience: Option<&'a str>,
    pub issuer: &'a str,
}

/// An HS256 token carrying MPS's payload (`tenantId`, `iss`, `deviceId`, `exp`) and
/// Homeport's (`sub`, `tenant`, `aud`, `iat`), so both kinds of client read it.
pub fn sign(secret: &[u8], c: &Claims<'_>) -> anyhow::Result<String> {
    let now = homeport_auth::unix_now();
    let mut claims = serde_json::json!({
        "tenantId": c.tenant,
        "tenant": c.tenant,
        "iss": c.issuer,
        "deviceId": c.device_id,
        "sub": c.subject,
        "iat": now,
        "exp": now + c.ttl_secs,
    });
    if let Some(aud) = c.audience {
        claims["aud"] = aud.into();
    }
    Ok(homeport_auth::sign_hs256(secret, &claims)?)
}

/// A key derived from `secret` for one purpose (HMAC-SHA256 of the purpose's name), so
/// tokens signed with it are never valid where `secret` itself is checked.
pub fn derived_key(secret: &[u8], purpose: &str) -> anyhow::Result<Vec<u8>> {
    Ok(homeport_auth::hmac_sha256(secret, purpose.as_bytes())?)
}

/// The bearer token of an `Authorization` header value.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let h = header?.trim();
    let (scheme, token) = h.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn hashes_verify_only_their_password() {
        let line = hash_password("correct horse").unwrap();
        assert!(line.starts_with("pbkdf2-sha256$210000$"));
        let h = PasswordHash::parse(&line).unwrap();
        assert!(h.verify("correct horse"));
        assert!(!h.verify("correct horse "));
        assert!(!h.verify(""));
        // Same password, new salt: a different line.
        assert_ne!(line, hash_password("correct horse").unwrap());
        assert!(PasswordHash::parse("md5$1$x$y").is_err());
        assert!(PasswordHash::parse("pbkdf2-sha256$5$AAAAAAAAAAA$AAAA").is_err());
        assert!(!format!("{h:?}").contains(&line[25..]));
    }

    #[test]
    fn tokens_carry_both_payload_shapes_and_verify() {
        let t = sign(
            b"k",
            &Claims {
                subject: "admin",
                tenant: "acme",
                device_id: "*",
                ttl_secs: 60,
                audience: Some("homeport"),
                issuer: "homeport",
            },
        )
        .unwrap();
        let payload = t.split('.').nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(v["tenantId"], "acme");
        assert_eq!(v["deviceId"], "*");
        let a = homeport_auth::Authenticator::new(
            vec![homeport_auth::Key::Hs256(b"k".to_vec())],
            "tenant",
        )
        .with_audience(Some("homeport".into()), None);
        assert_eq!(a.verify(&t).unwrap().tenant, "acme");
        assert_eq!(bearer(Some("Bearer  abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(None), None);
    }
}
