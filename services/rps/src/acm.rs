//! A domain's provisioning certificate (openamt-rps.md §2.2 EXTRACT_DOMAIN_CERT): the PFX
//! decoded into its chain (leaf first, root last), the root's fingerprints that the device
//! must trust, the leaf's common name and the earliest expiry.

use base64::Engine as _;
use openssl::hash::MessageDigest;
use openssl::pkcs12::Pkcs12;
use openssl::pkey::{PKey, Private};
use openssl::x509::X509;

pub struct Provisioning {
    pub leaf_common_name: String,
    /// Earliest notAfter of the chain, Unix seconds.
    pub expires: i64,
    /// Base64 DER, leaf → intermediates → root.
    pub chain: Vec<String>,
    /// Lower-case hex fingerprints of the root.
    pub root_sha256: String,
    pub root_sha1: String,
    pub key: PKey<Private>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unix(t: &openssl::asn1::Asn1TimeRef) -> Result<i64, String> {
    let epoch = openssl::asn1::Asn1Time::from_unix(0).map_err(|e| e.to_string())?;
    let d = epoch.diff(t).map_err(|e| e.to_string())?;
    Ok(i64::from(d.days) * 86_400 + i64::from(d.secs))
}

impl Provisioning {
    /// Decodes a base64 PKCS#12 with its password. Both the legacy (RC2/3DES, SHA-1 MAC)
    /// and the modern (PBES2/AES, SHA-256 MAC) encodings are read.
    pub fn decode(b64: &str, password: &str) -> Result<Provisioning, String> {
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| "must be base64 PKCS#12".to_string())?;
        let parsed = Pkcs12::from_der(&der)
            .map_err(|_| "is not a PKCS#12 file".to_string())?
            .parse2(password)
            .or_else(|_| {
                // Legacy encodings need OpenSSL's legacy provider; load it once and retry.
                legacy_provider();
                Pkcs12::from_der(&der)
                    .and_then(|p| p.parse2(password))
            })
            .map_err(|_| {
                "could not be opened with provisioning_cert_password (wrong password, or an encoding OpenSSL cannot read)".to_string()
            })?;
        let key = parsed.pkey.ok_or("holds no private key")?;
        let leaf = parsed.cert.ok_or("holds no certificate")?;
        let mut others: Vec<X509> = parsed
            .ca
            .map(|s| s.into_iter().collect())
            .unwrap_or_default();
        // Order: leaf, then each issuer found among the others, the self-signed root last.
        let mut chain = vec![leaf];
        while let Some(pos) = others.iter().position(|c| {
            chain.last().is_some_and(|last| {
                last.issuer_name_hash() == c.subject_name_hash() && !is_self_signed(last)
            })
        }) {
            chain.push(others.remove(pos));
            if chain.len() > 4 {
                return Err("chain longer than 4 certificates".into());
            }
        }
        let root = chain.last().ok_or("holds no certificate")?;
        if !is_self_signed(root) {
            return Err("the chain does not end in a self-signed root".into());
        }
        let leaf = &chain[0];
        let leaf_common_name = leaf
            .subject_name()
            .entries_by_nid(openssl::nid::Nid::COMMONNAME)
            .next()
            .and_then(|e| e.data().to_string().ok())
            .ok_or("the leaf certificate has no common name")?;
        let mut expires = i64::MAX;
        for c in &chain {
            expires = expires.min(unix(c.not_after())?);
        }
        let fp = |md| root.digest(md).map(|d| hex(&d)).map_err(|e| e.to_string());
        Ok(Provisioning {
            leaf_common_name,
            expires,
            root_sha256: fp(MessageDigest::sha256())?,
            root_sha1: fp(MessageDigest::sha1())?,
            chain: chain
                .iter()
                .map(|c| {
                    c.to_der()
                        .map(|d| base64::engine::general_purpose::STANDARD.encode(d))
                })
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?,
            key,
        })
    }

    /// Whether the device trusts the root (its hash list from the client).
    pub fn trusted_by(&self, hashes: &[String]) -> bool {
        hashes.iter().any(|h| {
            let h = h.trim().to_lowercase();
            h == self.root_sha256 || h == self.root_sha1
        })
    }
}

fn is_self_signed(c: &X509) -> bool {
    c.issuer_name_hash() == c.subject_name_hash()
        && c.public_key()
            .ok()
            .is_some_and(|k| c.verify(&k).unwrap_or(false))
}

fn legacy_provider() {
    static LOADED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    LOADED.get_or_init(|| {
        let legacy = openssl::provider::Provider::try_load(None, "legacy", true);
        if let Ok(p) = legacy {
            // Providers stay loaded for the process's life.
            std::mem::forget(p);
            true
        } else {
            false
        }
    });
}
