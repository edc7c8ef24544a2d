//! `homeportctl token`: mints an HS256 JWT (RFC 7519) for development and embedded setups.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::sign::Signer;

/// The JOSE header of every token we mint.
const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;
const MIN_SECRET_BYTES: usize = 32;

#[derive(clap::Args, Debug)]
pub struct TokenArgs {
    /// File holding the HMAC secret mps-command trusts (at least 32 bytes; one trailing
    /// newline is ignored).
    #[arg(long, value_name = "FILE")]
    pub secret_file: PathBuf,
    /// Tenant the token grants access to (the `tenant` claim).
    #[arg(long)]
    pub tenant: String,
    /// The `sub` claim.
    #[arg(long, default_value = "homeportctl")]
    pub subject: String,
    /// The `aud` claim (what mps-command requires by default, `--jwt-audience`).
    #[arg(long, default_value = "homeport")]
    pub audience: String,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub ttl_secs: u64,
}

/// Field order is the order in the token, which people read when debugging.
#[derive(serde::Serialize, Debug, PartialEq, Eq)]
pub struct Claims {
    pub sub: String,
    pub tenant: String,
    pub aud: String,
    pub iat: u64,
    pub exp: u64,
}

/// Mints a token from `args` and prints it to `sink`.
pub fn run(args: &TokenArgs, sink: &mut dyn std::io::Write) -> anyhow::Result<()> {
    let secret = crate::secret::read_file_bytes(&args.secret_file)?;
    // mps-command refuses shorter secrets (RFC 7518 §3.2: at least the hash's size).
    if secret.len() < MIN_SECRET_BYTES {
        bail!(
            "{}: an HS256 secret needs at least {MIN_SECRET_BYTES} bytes",
            args.secret_file.display()
        );
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the system clock is before 1970")?
        .as_secs();
    let claims = Claims {
        sub: args.subject.clone(),
        tenant: args.tenant.clone(),
        aud: args.audience.clone(),
        iat: now,
        exp: now
            .checked_add(args.ttl_secs)
            .context("--ttl-secs is too large")?,
    };
    crate::output::write_line(sink, &mint(&secret, &claims)?)?;
    Ok(())
}

pub fn mint(secret: &[u8], claims: &Claims) -> anyhow::Result<String> {
    sign(secret, HEADER.as_bytes(), &serde_json::to_vec(claims)?)
}

/// `base64url(header).base64url(payload).base64url(HMAC-SHA256(secret, first two parts))`.
fn sign(secret: &[u8], header: &[u8], payload: &[u8]) -> anyhow::Result<String> {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let mac = hmac_sha256(secret, input.as_bytes())?;
    Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac)))
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let key = PKey::hmac(key).context("HMAC key")?;
    let mut signer = Signer::new(MessageDigest::sha256(), &key)?;
    signer.update(data)?;
    Ok(signer.sign_to_vec()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_well_known_jwt_io_example() {
        let token = sign(
            b"your-256-bit-secret",
            HEADER.as_bytes(),
            br#"{"sub":"1234567890","name":"John Doe","iat":1516239022}"#,
        )
        .unwrap();
        assert_eq!(
            token,
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.\
             eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.\
             SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
        );
    }

    #[test]
    fn minted_token_has_our_header_claims_and_a_verifiable_signature() {
        let claims = Claims {
            sub: "ops".into(),
            tenant: "acme".into(),
            aud: "homeport".into(),
            iat: 1_700_000_000,
            exp: 1_700_003_600,
        };
        let token = mint(b"s3cret", &claims).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|p| !p.contains('=')), "no padding");

        let header = URL_SAFE_NO_PAD.decode(parts[0]).unwrap();
        assert_eq!(header, br#"{"alg":"HS256","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.decode(parts[1]).unwrap();
        assert_eq!(
            std::str::from_utf8(&payload).unwrap(),
            r#"{"sub":"ops","tenant":"acme","aud":"homeport","iat":1700000000,"exp":1700003600}"#
        );

        let signed = format!("{}.{}", parts[0], parts[1]);
        let key = PKey::hmac(b"s3cret").unwrap();
        let mut signer = Signer::new(MessageDigest::sha256(), &key).unwrap();
        signer.update(signed.as_bytes()).unwrap();
        let expected = signer.sign_to_vec().unwrap();
        let got = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        assert!(openssl::memcmp::eq(&expected, &got));
        assert_ne!(hmac_sha256(b"other", signed.as_bytes()).unwrap(), got);
    }
}
