//! Bearer JWT verification (HS256 or RS256, with OpenSSL) and the caller it yields, shared by
//! every gRPC service; `JwtArgs` is the common configuration.
//!
//! Every gRPC call passes through [`Authenticator::interceptor`]; the verified [`Caller`] is
//! put into the request's extensions, and handlers scope everything to `caller.tenant`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use base64::Engine;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Public};
use openssl::sign::{Signer, Verifier};
use serde_json::Value;
use tonic::{Request, Status};

/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECS: i64 = 60;
/// The `aud` claim required by default, and what `mint_hs256` and `homeportctl token` put in.
pub const DEFAULT_AUDIENCE: &str = "homeport";
/// Smallest RSA key accepted for RS256.
const MIN_RSA_BITS: u32 = 2048;
/// Longest `sub` claim accepted (it goes into events and logs).
const MAX_SUBJECT_CHARS: usize = 256;

/// Longest token accepted; real tokens are a few hundred bytes.
const MAX_TOKEN_BYTES: usize = 8192;

/// Token verification settings, as flags and `HOMEPORT_JWT_*` variables.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct JwtArgs {
    /// File holding the HS256 secret that signs bearer tokens.
    #[arg(long = "jwt-hs256-secret-file", env = "HOMEPORT_JWT_HS256_SECRET_FILE")]
    pub hs256_secret_file: Option<PathBuf>,
    /// PEM file with the RS256 public key that verifies bearer tokens.
    #[arg(
        long = "jwt-rs256-public-key-file",
        env = "HOMEPORT_JWT_RS256_PUBLIC_KEY_FILE"
    )]
    pub rs256_public_key_file: Option<PathBuf>,
    /// Token claim naming the caller's tenant.
    #[arg(
        long = "jwt-tenant-claim",
        env = "HOMEPORT_JWT_TENANT_CLAIM",
        default_value = "tenant"
    )]
    pub tenant_claim: String,
    /// Required `aud` claim (an empty value accepts tokens without one).
    #[arg(
        long = "jwt-audience",
        env = "HOMEPORT_JWT_AUDIENCE",
        default_value = DEFAULT_AUDIENCE
    )]
    pub audience: Option<String>,
    /// Required `iss` claim, if set.
    #[arg(long = "jwt-issuer", env = "HOMEPORT_JWT_ISSUER")]
    pub issuer: Option<String>,
}

impl JwtArgs {
    /// HS256 with this secret file, the `tenant` claim.
    pub fn hs256(secret_file: PathBuf) -> JwtArgs {
        JwtArgs {
            hs256_secret_file: Some(secret_file),
            tenant_claim: "tenant".into(),
            audience: Some(DEFAULT_AUDIENCE.into()),
            ..JwtArgs::default()
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.hs256_secret_file.is_none() && self.rs256_public_key_file.is_none() {
            return Err("set --jwt-hs256-secret-file or --jwt-rs256-public-key-file (HOMEPORT_JWT_*): every call needs a bearer token".into());
        }
        Ok(())
    }

    /// Reads the configured keys.
    pub fn authenticator(&self) -> anyhow::Result<Authenticator> {
        let mut keys = Vec::new();
        if let Some(f) = &self.hs256_secret_file {
            let s = read_hs256_secret(f)?;
            anyhow::ensure!(
                s.len() >= 32,
                "{}: an HS256 secret needs at least 32 bytes",
                f.display()
            );
            keys.push(Key::Hs256(s));
        }
        if let Some(f) = &self.rs256_public_key_file {
            let pem = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
            let key = openssl::pkey::PKey::public_key_from_pem(&pem)
                .with_context(|| format!("{}: not a PEM public key", f.display()))?;
            anyhow::ensure!(
                key.id() == openssl::pkey::Id::RSA,
                "{}: RS256 needs an RSA public key, not {:?}",
                f.display(),
                key.id()
            );
            anyhow::ensure!(
                key.bits() >= MIN_RSA_BITS,
                "{}: the RSA key has {} bits; at least {MIN_RSA_BITS} are required",
                f.display(),
                key.bits()
            );
            keys.push(Key::Rs256(key));
        }
        let audience = self.audience.clone().filter(|a| !a.is_empty());
        Ok(Authenticator::new(keys, &self.tenant_claim)
            .with_audience(audience, self.issuer.clone()))
    }
}

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub subject: String,
    pub tenant: String,
}

pub enum Key {
    Hs256(Vec<u8>),
    Rs256(PKey<Public>),
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Key::Hs256(_) => "Hs256(***)",
            Key::Rs256(_) => "Rs256(public key)",
        })
    }
}

#[derive(Debug)]
pub struct Authenticator {
    keys: Vec<Key>,
    tenant_claim: String,
    audience: Option<String>,
    issuer: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("malformed token")]
    Malformed,
    #[error("unsupported token algorithm {0:?}")]
    Algorithm(String),
    #[error("bad token signature")]
    Signature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token lacks the {0:?} claim")]
    Claim(String),
    #[error("token audience or issuer does not match")]
    Audience,
    #[error("tenant claim must be empty or 1-64 letters, digits, '-' or '_' (and not \"_\")")]
    Tenant,
}

/// Tenants appear verbatim as NATS subject tokens, so only names that map to themselves are
/// accepted: two tenants can never share a token (and "_" is the default tenant's token).
pub fn valid_tenant(t: &str) -> bool {
    t.is_empty()
        || (t.len() <= 64
            && t != "_"
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
}

fn b64(s: &str) -> Result<Vec<u8>, AuthError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| AuthError::Malformed)
}

impl Authenticator {
    pub fn new(keys: Vec<Key>, tenant_claim: &str) -> Authenticator {
        Authenticator {
            keys,
            tenant_claim: tenant_claim.to_string(),
            audience: None,
            issuer: None,
        }
    }

    pub fn with_audience(mut self, audience: Option<String>, issuer: Option<String>) -> Self {
        self.audience = audience;
        self.issuer = issuer;
        self
    }

    /// Verifies a compact JWT and returns its caller.
    pub fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed);
        };
        let header: Value = serde_json::from_slice(&b64(h)?).map_err(|_| AuthError::Malformed)?;
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let signature = b64(s)?;
        let signed = &token.as_bytes()[..h.len() + 1 + c.len()];
        let ok = self.keys.iter().any(|k| match (k, alg) {
            (Key::Hs256(secret), "HS256") => hmac_sha256(secret, signed).is_ok_and(|mac| {
                mac.len() == signature.len() && openssl::memcmp::eq(&mac, &signature)
            }),
            (Key::Rs256(key), "RS256") => Verifier::new(MessageDigest::sha256(), key)
                .and_then(|mut v| {
                    v.update(signed)?;
                    v.verify(&signature)
                })
                .unwrap_or(false),
            _ => false,
        });
        if !ok {
            let known = self.keys.iter().any(|k| {
                matches!(
                    (k, alg),
                    (Key::Hs256(_), "HS256") | (Key::Rs256(_), "RS256")
                )
            });
            return Err(if known {
                AuthError::Signature
            } else {
                AuthError::Algorithm(alg.chars().take(16).collect())
            });
        }
        let claims: Value = serde_json::from_slice(&b64(c)?).map_err(|_| AuthError::Malformed)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        match claims.get("exp").and_then(Value::as_i64) {
            Some(exp) if exp.saturating_add(LEEWAY_SECS) < now => return Err(AuthError::Expired),
            Some(_) => {}
            None => return Err(AuthError::Claim("exp".into())),
        }
        if claims
            .get("nbf")
            .and_then(Value::as_i64)
            .is_some_and(|nbf| nbf.saturating_sub(LEEWAY_SECS) > now)
        {
            return Err(AuthError::NotYetValid);
        }
        if let Some(aud) = &self.audience {
            let matches = match claims.get("aud") {
                Some(Value::String(a)) => a == aud,
                Some(Value::Array(v)) => v.iter().any(|a| a.as_str() == Some(aud)),
                _ => false,
            };
            if !matches {
                return Err(AuthError::Audience);
            }
        }
        if let Some(iss) = &self.issuer {
            if claims.get("iss").and_then(Value::as_str) != Some(iss) {
                return Err(AuthError::Audience);
            }
        }
        let tenant = claims
            .get(&self.tenant_claim)
            .and_then(Value::as_str)
            .ok_or_else(|| AuthError::Claim(self.tenant_claim.clone()))?;
        if !valid_tenant(tenant) {
            return Err(AuthError::Tenant);
        }
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or_default();
        // The subject is recorded as the actor of events and in logs: printable text only.
        if subject.chars().count() > MAX_SUBJECT_CHARS || subject.chars().any(char::is_control) {
            return Err(AuthError::Claim("sub".into()));
        }
        Ok(Caller {
            subject: subject.to_string(),
            tenant: tenant.to_string(),
        })
    }

    /// A tonic interceptor: verifies `authorization: Bearer …` and stores the [`Caller`].
    pub fn interceptor(
        self: Arc<Self>,
    ) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
        move |mut req: Request<()>| {
            let token = req
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    v.strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                })
                .ok_or_else(|| Status::unauthenticated(AuthError::Missing.to_string()))?;
            let caller = self
                .verify(token.trim())
                .map_err(|e| Status::unauthenticated(e.to_string()))?;
            req.extensions_mut().insert(caller);
            Ok(req)
        }
    }
}

/// The caller of a request that passed the interceptor.
pub fn caller<T>(req: &Request<T>) -> Result<Caller, Status> {
    req.extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no verified caller"))
}

/// Mints an HS256 token (tests, the demo, `homeportctl token`).
/// The caller's W3C `traceparent` (gRPC metadata), which the request's span continues.
pub fn traceparent<T>(req: &Request<T>) -> Option<String> {
    req.metadata()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

pub fn mint_hs256(
    secret: &[u8],
    subject: &str,
    tenant: &str,
    ttl_secs: i64,
) -> Result<String, openssl::error::ErrorStack> {
    let now = unix_now();
    sign_hs256(
        secret,
        &serde_json::json!({"sub": subject, "tenant": tenant, "aud": DEFAULT_AUDIENCE, "iat": now, "exp": now + ttl_secs}),
    )
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(0))
        .unwrap_or(0)
}

/// An HS256 token carrying `claims`.
pub fn sign_hs256(
    secret: &[u8],
    claims: &serde_json::Value,
) -> Result<String, openssl::error::ErrorStack> {
    let e = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let header = e(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = e(claims.to_string().as_bytes());
    let mac = hmac_sha256(secret, format!("{header}.{claims}").as_bytes())?;
    Ok(format!("{header}.{claims}.{}", e(&mac)))
}

/// HMAC-SHA256 of `data` under `key`.
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> Result<Vec<u8>, openssl::error::ErrorStack> {
    let key = PKey::hmac(key)?;
    let mut signer = Signer::new(MessageDigest::sha256(), &key)?;
    signer.update(data)?;
    signer.sign_to_vec()
}

/// The HS256 secret in `path`, as every reader takes it: one trailing newline dropped.
pub fn read_hs256_secret(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let s = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(s.strip_suffix(b"\n").unwrap_or(&s).to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::rsa::Rsa;

    #[test]
    fn hs256_round_trip_and_failures() {
        let a = Authenticator::new(vec![Key::Hs256(b"s3cret".to_vec())], "tenant");
        let t = mint_hs256(b"s3cret", "alice", "acme", 60).unwrap();
        assert_eq!(
            a.verify(&t).unwrap(),
            Caller {
                subject: "alice".into(),
                tenant: "acme".into()
            }
        );
        let other = mint_hs256(b"other", "alice", "acme", 60).unwrap();
        assert_eq!(a.verify(&other), Err(AuthError::Signature));
        let expired = mint_hs256(b"s3cret", "alice", "acme", -3600).unwrap();
        assert_eq!(a.verify(&expired), Err(AuthError::Expired));
        // Tampered claims (tenant switched) keep the old signature: refused.
        let mut parts: Vec<String> = t.split('.').map(str::to_string).collect();
        parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"sub":"alice","tenant":"evil","exp":99999999999}"#);
        assert_eq!(a.verify(&parts.join(".")), Err(AuthError::Signature));
        // alg=none is never accepted.
        let none = format!(
            "{}.{}.",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
            parts[1]
        );
        assert!(matches!(
            a.verify(&none),
            Err(AuthError::Algorithm(_)) | Err(AuthError::Malformed)
        ));
        assert_eq!(a.verify("a.b"), Err(AuthError::Malformed));
        for bad in ["acme.corp", "_", "a*", "a>b", "x y"] {
            let t = mint_hs256(b"s3cret", "alice", bad, 60).unwrap();
            assert_eq!(a.verify(&t), Err(AuthError::Tenant), "{bad}");
        }
        assert!(valid_tenant("") && valid_tenant("acme_corp-2"));
        let a2 = Authenticator::new(vec![Key::Hs256(b"s3cret".to_vec())], "org");
        assert_eq!(a2.verify(&t), Err(AuthError::Claim("org".into())));
    }

    #[test]
    fn configured_verifiers_require_the_audience_strong_rsa_and_a_printable_subject() {
        let dir = std::env::temp_dir().join(format!("homeport-jwt-{:x}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("hs256");
        std::fs::write(&secret, "0123456789abcdef0123456789abcdef").unwrap();
        let a = JwtArgs::hs256(secret.clone()).authenticator().unwrap();
        let key = b"0123456789abcdef0123456789abcdef";
        // Ours carry the audience; a token without one is refused.
        assert!(a
            .verify(&mint_hs256(key, "ops", "acme", 60).unwrap())
            .is_ok());
        let e = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let sign = |claims: &str| {
            let header = e(br#"{"alg":"HS256"}"#);
            let body = e(claims.as_bytes());
            let pkey = PKey::hmac(key).unwrap();
            let mut signer = Signer::new(MessageDigest::sha256(), &pkey).unwrap();
            signer
                .update(format!("{header}.{body}").as_bytes())
                .unwrap();
            format!("{header}.{body}.{}", e(&signer.sign_to_vec().unwrap()))
        };
        let no_aud = sign(r#"{"sub":"ops","tenant":"acme","exp":99999999999}"#);
        assert_eq!(a.verify(&no_aud), Err(AuthError::Audience));
        // A subject with a NUL (or any control character) never reaches events.
        let nul = sign(r#"{"sub":"o\u0000ps","tenant":"acme","aud":"homeport","exp":99999999999}"#);
        assert_eq!(a.verify(&nul), Err(AuthError::Claim("sub".into())));
        // An empty --jwt-audience accepts tokens without one.
        let open = JwtArgs {
            audience: Some(String::new()),
            ..JwtArgs::hs256(secret)
        };
        assert!(open.authenticator().unwrap().verify(&no_aud).is_ok());
        // RS256 keys must be RSA of at least 2048 bits.
        for (name, pem) in [
            (
                "rsa1024",
                Rsa::generate(1024).unwrap().public_key_to_pem().unwrap(),
            ),
            (
                "ec",
                openssl::ec::EcKey::generate(
                    &openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1)
                        .unwrap(),
                )
                .unwrap()
                .public_key_to_pem()
                .unwrap(),
            ),
        ] {
            let file = dir.join(name);
            std::fs::write(&file, pem).unwrap();
            let args = JwtArgs {
                rs256_public_key_file: Some(file),
                ..JwtArgs::default()
            };
            assert!(args.authenticator().is_err(), "{name}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn rs256_verifies_and_rejects_hs256_confusion() {
        let rsa = Rsa::generate(2048).unwrap();
        let private = PKey::from_rsa(rsa.clone()).unwrap();
        let public = PKey::public_key_from_pem(&rsa.public_key_to_pem().unwrap()).unwrap();
        let e = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let header = e(br#"{"alg":"RS256"}"#);
        let claims = e(br#"{"sub":"svc","tenant":"t1","exp":99999999999}"#);
        let mut signer = Signer::new(MessageDigest::sha256(), &private).unwrap();
        signer
            .update(format!("{header}.{claims}").as_bytes())
            .unwrap();
        let token = format!("{header}.{claims}.{}", e(&signer.sign_to_vec().unwrap()));
        let a = Authenticator::new(vec![Key::Rs256(public)], "tenant");
        assert_eq!(a.verify(&token).unwrap().tenant, "t1");
        // An HS256 token "signed" with the public key must not pass an RS256-only verifier.
        let pem = rsa.public_key_to_pem().unwrap();
        let forged = mint_hs256(&pem, "svc", "t1", 60).unwrap();
        assert!(matches!(a.verify(&forged), Err(AuthError::Algorithm(_))));
    }
}
