//! The WebSocket listener's TLS: the operator's certificate, or (embedded mode) a
//! self-signed ECDSA P-256 one generated at start.

use std::path::Path;

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::ssl::{SslAcceptor, SslMethod, SslMode};
use openssl::x509::extension::{ExtendedKeyUsage, SubjectAlternativeName};
use openssl::x509::{X509NameBuilder, X509};

/// An acceptor for TLS 1.2 and 1.3 (rpc-go is a Go client: both work).
pub fn acceptor(cert: Option<&Path>, key: Option<&Path>) -> anyhow::Result<SslAcceptor> {
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())?;
    match (cert, key) {
        (Some(cert), Some(key)) => {
            b.set_certificate_chain_file(cert)?;
            b.set_private_key_file(key, openssl::ssl::SslFiletype::PEM)?;
        }
        _ => {
            let (cert, key) = self_signed()?;
            tracing::warn!(
                sha256 = %cert
                    .digest(MessageDigest::sha256())
                    .map(|d| d.iter().map(|b| format!("{b:02x}")).collect::<String>())
                    .unwrap_or_default(),
                "no TLS certificate configured for the rpc listener: using a generated self-signed one (clients need -n)"
            );
            b.set_certificate(&cert)?;
            b.set_private_key(&key)?;
        }
    }
    b.check_private_key()?;
    // Idle connections (waiting for a device's answer) give their record buffers back.
    b.set_mode(SslMode::RELEASE_BUFFERS);
    Ok(b.build())
}

fn self_signed() -> anyhow::Result<(X509, PKey<openssl::pkey::Private>)> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    let key = PKey::from_ec_key(EcKey::generate(&group)?)?;
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_text("CN", "homeport-rps")?;
    let name = name.build();
    let mut c = X509::builder()?;
    c.set_version(2)?;
    let mut serial = BigNum::new()?;
    serial.rand(120, MsbOption::MAYBE_ZERO, false)?;
    let serial = serial.to_asn1_integer()?;
    c.set_serial_number(&serial)?;
    c.set_subject_name(&name)?;
    c.set_issuer_name(&name)?;
    c.set_pubkey(&key)?;
    let (from, until) = (Asn1Time::days_from_now(0)?, Asn1Time::days_from_now(365)?);
    c.set_not_before(&from)?;
    c.set_not_after(&until)?;
    c.append_extension(ExtendedKeyUsage::new().server_auth().build()?)?;
    let san = SubjectAlternativeName::new()
        .dns("localhost")
        .ip("127.0.0.1")
        .build(&c.x509v3_context(None, None))?;
    c.append_extension(san)?;
    c.sign(&key, MessageDigest::sha256())?;
    Ok((c.build(), key))
}
