//! TLS for the CIRA port: OpenSSL profiles that real AMT firmware can speak, and the server
//! certificate (from files, or generated once and kept in the secret store).

use std::str::FromStr;

use homeport_secrets::{DynSecretStore, SecretError, SecretString};
use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::ssl::{
    SslAcceptor, SslMethod, SslMode, SslOptions, SslSessionCacheMode, SslVerifyMode, SslVersion,
};
use openssl::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName, SubjectKeyIdentifier,
};
use openssl::x509::{X509NameBuilder, X509};

/// Secret-store path of generated CIRA certificates.
pub const CERT_PATH: &str = homeport_secrets::CIRA_CERTS_PATH;
const CA_CERT: &str = homeport_secrets::CIRA_CA_CERT;
const CA_KEY: &str = "CA_KEY";
const SERVER_CERT: &str = "SERVER_CERT";
const SERVER_KEY: &str = "SERVER_KEY";
const SERVER_EC_CERT: &str = "SERVER_EC_CERT";
const SERVER_EC_KEY: &str = "SERVER_EC_KEY";

/// TLS 1.2 suites AMT firmware offers: ECDHE first, then the static-RSA suites older firmware
/// needs (rustls has none of these, hence OpenSSL).
const DEFAULT_CIPHERS: &str = "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:AES256-GCM-SHA384:AES128-GCM-SHA256:AES256-SHA256:AES128-SHA256:AES256-SHA:AES128-SHA";
const STRICT_CIPHERS: &str = "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256";
/// TLS 1.3 suites in the server's order of preference.
const TLS13_SUITES: &str =
    "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";
const LEGACY_CIPHERS: &str =
    "HIGH:!aNULL:!eNULL:!EXPORT:!DES:!RC4:!MD5:!PSK:!SRP:!CAMELLIA:@SECLEVEL=0";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsProfile {
    Default,
    Legacy,
    Strict,
}

impl FromStr for TlsProfile {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "default" => Ok(Self::Default),
            "legacy" => Ok(Self::Legacy),
            "strict" => Ok(Self::Strict),
            other => Err(format!(
                "unknown TLS profile {other:?} (default, legacy, strict)"
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS: {0}")]
    OpenSsl(#[from] openssl::error::ErrorStack),
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("secret store unavailable for CIRA certificates (not regenerating): {0}")]
    Store(#[from] SecretError),
    #[error("stored CIRA certificates at {CERT_PATH} are incomplete; delete them to regenerate")]
    Incomplete,
}

/// Server certificate chains and keys, PEM: an RSA one for every client, and optionally an
/// ECDSA one that clients offering ECDSA get instead (its handshake costs a fraction of an
/// RSA private-key operation; firmware with only static-RSA suites still gets RSA).
pub struct CertBundle {
    pub chain_pem: Vec<u8>,
    pub key_pem: SecretString,
    /// ECDSA P-256 chain and key.
    pub ec: Option<(Vec<u8>, SecretString)>,
    /// The root CA that devices must trust (what `/api/v1/ciracert` serves in the reference).
    pub ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for CertBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertBundle")
            .field("key_pem", &"***")
            .finish_non_exhaustive()
    }
}

/// Builds the acceptor for a profile. Buffers are released while a connection is idle, which
/// is most of a CIRA session's life.
pub fn acceptor(profile: TlsProfile, bundle: &CertBundle) -> Result<SslAcceptor, TlsError> {
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())?;
    match profile {
        TlsProfile::Default => {
            b.set_min_proto_version(Some(SslVersion::TLS1_2))?;
            b.set_cipher_list(DEFAULT_CIPHERS)?;
        }
        TlsProfile::Strict => {
            b.set_min_proto_version(Some(SslVersion::TLS1_2))?;
            b.set_cipher_list(STRICT_CIPHERS)?;
        }
        TlsProfile::Legacy => {
            b.set_min_proto_version(Some(SslVersion::TLS1))?;
            b.set_cipher_list(LEGACY_CIPHERS)?;
            b.clear_options(SslOptions::NO_TLSV1 | SslOptions::NO_TLSV1_1);
        }
    }
    // The server picks the suite: among TLS 1.3 suites AES-128-GCM-SHA256 (its key schedule
    // hashes with SHA-256, which CPUs accelerate, where a client's favourite AES-256 brings
    // SHA-384), and in TLS 1.2 forward-secret ECDHE before static RSA whenever a device offers
    // both.
    b.set_options(SslOptions::CIPHER_SERVER_PREFERENCE);
    b.set_ciphersuites(TLS13_SUITES)?;
    b.set_mode(SslMode::RELEASE_BUFFERS);
    // No read-ahead: OpenSSL must not read past the handshake, so that the compact record
    // layer (crate::record) can take over the socket with nothing left inside the `SSL`.
    b.set_read_ahead(false);
    crate::record::capture_secrets(&mut b)?;
    b.set_verify(SslVerifyMode::NONE);
    // No TLS 1.3 session tickets: encrypting and sending two per handshake costs CPU, and a
    // ticket is only good on the node that issued it, which a device reconnecting after that
    // node failed does not reach anyway.
    b.set_num_tickets(0)?;
    // Likewise no session-id cache for TLS 1.2 devices: it would hold a session per device.
    b.set_session_cache_mode(SslSessionCacheMode::OFF);
    let mut certs = X509::stack_from_pem(&bundle.chain_pem)?.into_iter();
    let leaf = certs.next().ok_or(TlsError::Incomplete)?;
    b.set_certificate(&leaf)?;
    for c in certs {
        b.add_extra_chain_cert(c)?;
    }
    let key = PKey::private_key_from_pem(bundle.key_pem.expose().as_bytes())?;
    b.set_private_key(&key)?;
    b.check_private_key()?;
    if let Some((chain, key)) = &bundle.ec {
        // OpenSSL keeps one certificate per key type and picks by what the client offers.
        let leaf = X509::stack_from_pem(chain)?
            .into_iter()
            .next()
            .ok_or(TlsError::Incomplete)?;
        b.set_certificate(&leaf)?;
        let key = PKey::private_key_from_pem(key.expose().as_bytes())?;
        b.set_private_key(&key)?;
        b.check_private_key()?;
    }
    Ok(b.build())
}

/// Loads the certificates from files: an RSA chain and key, and optionally an ECDSA pair.
pub fn load_files(
    cert: &std::path::Path,
    key: &std::path::Path,
    ec: Option<(&std::path::Path, &std::path::Path)>,
) -> Result<CertBundle, TlsError> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|source| TlsError::Io {
            path: p.display().to_string(),
            source,
        })
    };
    let secret = |p: &std::path::Path| {
        String::from_utf8(read(p)?)
            .map(SecretString::new)
            .map_err(|_| TlsError::Incomplete)
    };
    let ec = match ec {
        Some((c, k)) => Some((read(c)?, secret(k)?)),
        None => None,
    };
    Ok(CertBundle {
        chain_pem: read(cert)?,
        key_pem: secret(key)?,
        ec,
        ca_pem: None,
    })
}

/// Returns the stored certificates, generating and storing them on first use. A store error
/// is returned as is: only a definite "absent" leads to generation, so an outage can never
/// replace the certificate devices already trust.
pub async fn load_or_generate(
    secrets: &DynSecretStore,
    common_name: &str,
    sans: &[String],
) -> Result<CertBundle, TlsError> {
    if let Some(mut found) = secrets.get(CERT_PATH).await? {
        if !found.contains_key(SERVER_EC_CERT) {
            // Stored by an older version: add the ECDSA leaf under the same root.
            let ca_cert = X509::from_pem(get(&found, CA_CERT)?.as_bytes())?;
            let ca_key = PKey::private_key_from_pem(get(&found, CA_KEY)?.as_bytes())?;
            let (cert, key) = issue_leaf(&ca_cert, &ca_key, ec_key()?, common_name, sans)?;
            found.insert(SERVER_EC_CERT.into(), SecretString::new(cert));
            found.insert(SERVER_EC_KEY.into(), key);
            secrets.put(CERT_PATH, found.clone()).await?;
            tracing::info!(
                common_name,
                "added an ECDSA server certificate to the stored CIRA certificates"
            );
        }
        return from_map(&found);
    }
    let generated = generate(common_name, sans)?;
    let mut map = homeport_secrets::SecretMap::new();
    map.insert(CA_CERT.into(), SecretString::new(generated.ca_cert));
    map.insert(CA_KEY.into(), generated.ca_key);
    map.insert(SERVER_CERT.into(), SecretString::new(generated.server_cert));
    map.insert(SERVER_KEY.into(), generated.server_key);
    map.insert(
        SERVER_EC_CERT.into(),
        SecretString::new(generated.server_ec_cert),
    );
    map.insert(SERVER_EC_KEY.into(), generated.server_ec_key);
    if !secrets.put_if_absent(CERT_PATH, map).await? {
        tracing::info!("another node stored CIRA certificates first; using those");
    } else {
        tracing::info!(common_name, "generated CIRA root CA and server certificate");
    }
    let stored = secrets.get(CERT_PATH).await?.ok_or(TlsError::Incomplete)?;
    from_map(&stored)
}

fn get(map: &homeport_secrets::SecretMap, key: &str) -> Result<String, TlsError> {
    map.get(key)
        .map(|v| v.expose().to_string())
        .ok_or(TlsError::Incomplete)
}

fn from_map(map: &homeport_secrets::SecretMap) -> Result<CertBundle, TlsError> {
    let ca = get(map, CA_CERT)?;
    let server = get(map, SERVER_CERT)?;
    let ec = match (map.get(SERVER_EC_CERT), map.get(SERVER_EC_KEY)) {
        (Some(c), Some(k)) => Some((format!("{}{ca}", c.expose()).into_bytes(), k.clone())),
        _ => None,
    };
    Ok(CertBundle {
        chain_pem: format!("{server}{ca}").into_bytes(),
        key_pem: SecretString::new(get(map, SERVER_KEY)?),
        ec,
        ca_pem: Some(ca.into_bytes()),
    })
}

struct Generated {
    ca_cert: String,
    ca_key: SecretString,
    server_cert: String,
    server_key: SecretString,
    server_ec_cert: String,
    server_ec_key: SecretString,
}

fn pem_string(b: Vec<u8>) -> Result<String, TlsError> {
    String::from_utf8(b).map_err(|_| TlsError::Incomplete)
}

/// A root CA (RSA-3072, SHA-384, like the reference) and a server certificate (RSA-2048: one
/// private-key operation per handshake is the ingress' main CPU cost) for `common_name`.
fn generate(common_name: &str, sans: &[String]) -> Result<Generated, TlsError> {
    let ca_key = PKey::from_rsa(Rsa::generate(3072)?)?;
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_text("CN", "Homeport CIRA Root")?;
    name.append_entry_by_text("O", "Homeport")?;
    let ca_name = name.build();
    let mut ca = X509::builder()?;
    ca.set_version(2)?;
    let ca_serial = serial()?;
    ca.set_serial_number(&ca_serial)?;
    ca.set_subject_name(&ca_name)?;
    ca.set_issuer_name(&ca_name)?;
    ca.set_pubkey(&ca_key)?;
    let (from, until) = (
        Asn1Time::days_from_now(0)?,
        Asn1Time::days_from_now(365 * 20)?,
    );
    ca.set_not_before(&from)?;
    ca.set_not_after(&until)?;
    ca.append_extension(BasicConstraints::new().critical().ca().build()?)?;
    ca.append_extension(
        KeyUsage::new()
            .critical()
            .key_cert_sign()
            .crl_sign()
            .build()?,
    )?;
    let ski = SubjectKeyIdentifier::new().build(&ca.x509v3_context(None, None))?;
    ca.append_extension(ski)?;
    ca.sign(&ca_key, MessageDigest::sha384())?;
    let ca_cert = ca.build();

    let (server_cert, server_key) = issue_leaf(&ca_cert, &ca_key, rsa_key()?, common_name, sans)?;
    let (server_ec_cert, server_ec_key) =
        issue_leaf(&ca_cert, &ca_key, ec_key()?, common_name, sans)?;
    Ok(Generated {
        ca_cert: pem_string(ca_cert.to_pem()?)?,
        ca_key: SecretString::new(pem_string(ca_key.private_key_to_pem_pkcs8()?)?),
        server_cert,
        server_key,
        server_ec_cert,
        server_ec_key,
    })
}

/// A server certificate for `key`, signed by the root; returns (certificate PEM, key PEM).
fn issue_leaf(
    ca_cert: &X509,
    ca_key: &PKey<Private>,
    key: PKey<Private>,
    common_name: &str,
    sans: &[String],
) -> Result<(String, SecretString), TlsError> {
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_text("CN", common_name)?;
    let subject = name.build();
    let mut cert = X509::builder()?;
    cert.set_version(2)?;
    let cert_serial = serial()?;
    cert.set_serial_number(&cert_serial)?;
    cert.set_subject_name(&subject)?;
    cert.set_issuer_name(ca_cert.subject_name())?;
    cert.set_pubkey(&key)?;
    let (from, until) = (
        Asn1Time::days_from_now(0)?,
        Asn1Time::days_from_now(365 * 5)?,
    );
    cert.set_not_before(&from)?;
    cert.set_not_after(&until)?;
    cert.append_extension(BasicConstraints::new().build()?)?;
    let mut usage = KeyUsage::new();
    usage.critical().digital_signature();
    if key.rsa().is_ok() {
        // Static-RSA key exchange encrypts the premaster secret to this key.
        usage.key_encipherment();
    }
    cert.append_extension(usage.build()?)?;
    cert.append_extension(ExtendedKeyUsage::new().server_auth().build()?)?;
    let mut san = SubjectAlternativeName::new();
    let mut names: Vec<&str> = vec![common_name, "localhost"];
    names.extend(sans.iter().map(String::as_str));
    names.dedup();
    for n in names {
        if n.parse::<std::net::IpAddr>().is_ok() {
            san.ip(n);
        } else {
            san.dns(n);
        }
    }
    san.ip("127.0.0.1");
    let san = san.build(&cert.x509v3_context(Some(ca_cert), None))?;
    cert.append_extension(san)?;
    cert.sign(ca_key, MessageDigest::sha256())?;
    let cert = cert.build();
    Ok((
        pem_string(cert.to_pem()?)?,
        SecretString::new(pem_string(key.private_key_to_pem_pkcs8()?)?),
    ))
}

fn ec_key() -> Result<PKey<Private>, TlsError> {
    let group = openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1)?;
    Ok(PKey::from_ec_key(openssl::ec::EcKey::generate(&group)?)?)
}

fn rsa_key() -> Result<PKey<Private>, TlsError> {
    Ok(PKey::from_rsa(Rsa::generate(2048)?)?)
}

fn serial() -> Result<openssl::asn1::Asn1Integer, TlsError> {
    let mut bn = BigNum::new()?;
    bn.rand(127, MsbOption::MAYBE_ZERO, false)?;
    Ok(bn.to_asn1_integer()?)
}

/// A generated bundle (root, RSA and ECDSA leaves) for tests, made once per test binary.
#[cfg(test)]
pub(crate) fn test_bundle() -> &'static CertBundle {
    static BUNDLE: std::sync::OnceLock<CertBundle> = std::sync::OnceLock::new();
    BUNDLE.get_or_init(|| {
        let g = generate("localhost", &[]).expect("generate certificates");
        CertBundle {
            chain_pem: format!("{}{}", g.server_cert, g.ca_cert).into_bytes(),
            key_pem: g.server_key,
            ec: Some((g.server_ec_cert.into_bytes(), g.server_ec_key)),
            ca_pem: Some(g.ca_cert.into_bytes()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_chain_verifies_and_builds_every_profile() {
        let g = generate("cira.example.com", &["10.0.0.5".into()]).expect("generate");
        let ca = X509::from_pem(g.ca_cert.as_bytes()).unwrap();
        let leaf = X509::from_pem(g.server_cert.as_bytes()).unwrap();
        assert!(leaf.verify(&ca.public_key().unwrap()).unwrap());
        let sans: Vec<String> = leaf
            .subject_alt_names()
            .unwrap()
            .iter()
            .filter_map(|n| n.dnsname().map(str::to_string))
            .collect();
        assert!(sans.contains(&"cira.example.com".to_string()), "{sans:?}");
        let ec_leaf = X509::from_pem(g.server_ec_cert.as_bytes()).unwrap();
        assert!(ec_leaf.verify(&ca.public_key().unwrap()).unwrap());
        assert!(ec_leaf.public_key().unwrap().ec_key().is_ok());
        let bundle = CertBundle {
            chain_pem: format!("{}{}", g.server_cert, g.ca_cert).into_bytes(),
            key_pem: g.server_key,
            ec: Some((g.server_ec_cert.into_bytes(), g.server_ec_key)),
            ca_pem: None,
        };
        for p in [TlsProfile::Default, TlsProfile::Legacy, TlsProfile::Strict] {
            acceptor(p, &bundle).expect("acceptor");
        }
        assert!(!format!("{bundle:?}").contains("PRIVATE"));
    }

    #[tokio::test]
    async fn certificates_are_generated_once_and_never_over_an_unreadable_store() {
        let dir = std::env::temp_dir().join(format!("homeport-tls-{:x}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let config = homeport_secrets::LocalFileConfig::new(dir.join("s.enc"), dir.join("s.key"));
        let store: DynSecretStore = std::sync::Arc::new(
            homeport_secrets::LocalFileStore::open(config.clone())
                .await
                .unwrap(),
        );
        let first = load_or_generate(&store, "cira.test", &[]).await.unwrap();
        let again = load_or_generate(&store, "cira.test", &[]).await.unwrap();
        assert_eq!(
            first.chain_pem, again.chain_pem,
            "generated once, then reused"
        );
        assert!(first.ec.is_some());
        // The store becomes unreadable (tampered file): an error, not a new certificate.
        let stored = std::fs::read(dir.join("s.enc")).unwrap();
        let mut tampered = stored.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 0xff;
        std::fs::write(dir.join("s.enc"), &tampered).unwrap();
        assert!(matches!(
            load_or_generate(&store, "cira.test", &[]).await,
            Err(TlsError::Store(_))
        ));
        assert_eq!(
            std::fs::read(dir.join("s.enc")).unwrap(),
            tampered,
            "nothing was written"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
