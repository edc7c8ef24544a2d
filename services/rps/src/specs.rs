//! The settings of each admin object as stored (a JSON document per object in
//! `provisioning_configs`), where their secrets live, and the rules they must follow
//! (openamt-rps.md §3.2, with the reference's messages where it has them).

use serde::{Deserialize, Serialize};

pub const PROFILE: &str = "profile";
pub const CIRA: &str = "cira";
pub const DOMAIN: &str = "domain";
pub const WIRELESS: &str = "wireless";

/// Secret keys, as the reference names them.
pub const AMT_PASSWORD: &str = "AMT_PASSWORD";
pub const MEBX_PASSWORD: &str = "MEBX_PASSWORD";
pub const MPS_PASSWORD: &str = "MPS_PASSWORD";
pub const CERT: &str = "CERT";
pub const CERT_PASSWORD: &str = "CERT_PASSWORD";
pub const PSK_PASSPHRASE: &str = "PSK_PASSPHRASE";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileSpec {
    /// "ccmactivate" or "acmactivate".
    pub activation: String,
    pub generate_random_password: bool,
    pub generate_random_mebx_password: bool,
    #[serde(default)]
    pub cira_config_name: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    pub dhcp_enabled: bool,
    pub ip_sync_enabled: bool,
    /// "None", "KVM" or "All".
    pub user_consent: String,
    pub ider_enabled: bool,
    pub kvm_enabled: bool,
    pub sol_enabled: bool,
    #[serde(default)]
    pub wifi_configs: Vec<(String, u32)>,
    pub local_wifi_sync_enabled: bool,
}

impl ProfileSpec {
    pub fn is_acm(&self) -> bool {
        self.activation == "acmactivate"
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CiraSpec {
    pub mps_server_address: String,
    pub server_address_format: u32,
    pub mps_port: u32,
    pub username: String,
    /// A static password is in the secret store; otherwise each device gets its own.
    pub static_password: bool,
    pub common_name: String,
    pub auth_method: u32,
    pub mps_root_certificate: String,
    pub proxy_details: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainSpec {
    pub domain_suffix: String,
    pub provisioning_cert_storage_format: String,
    /// Earliest notAfter of the chain, Unix seconds.
    pub expiration_date: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WirelessSpec {
    pub authentication_method: u32,
    pub encryption_method: u32,
    pub ssid: String,
    pub link_policy: Vec<u32>,
    pub ieee8021x_profile_name: String,
}

/// Where an object's secrets are: tenant-scoped (the reference's are not, §2.13), the name
/// lowercased, and anything beyond letters, digits, `-` and `_` hex-encoded so no name can
/// form another path or a URL a secret-store backend would misread.
pub fn secret_path(tenant: &str, kind: &str, name: &str) -> String {
    let tenant = if tenant.is_empty() { "_" } else { tenant };
    format!(
        "rps/{}/{kind}/{}",
        path_token(tenant),
        path_token(&name.to_lowercase())
    )
}

fn path_token(s: &str) -> String {
    // Names that look like an encoding ("x-…") are encoded too, so no two names meet.
    if !s.is_empty()
        && !s.starts_with("x-")
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        s.to_string()
    } else {
        let hex: String = s.bytes().map(|b| format!("{b:02x}")).collect();
        format!("x-{hex}")
    }
}

/// Profile, CIRA config and domain names: what the reference's pattern
/// `^[a-zA-Z0-9$@$!%*#?&-_~^]+$` was meant to allow (its `&-_` is a range in JavaScript
/// that also lets in `/`, `.`, `<` and more; Homeport does not copy that), at most 64.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "$@!%*#?&-_~^".contains(c))
}

/// AMT and MEBx passwords: 8-32 characters with a lower-case and an upper-case letter, a
/// digit and one of `!@#$%^&*` (what AMT itself requires of the admin password).
pub fn valid_amt_password(p: &str) -> bool {
    (8..=32).contains(&p.chars().count())
        && p.chars().any(|c| c.is_ascii_lowercase())
        && p.chars().any(|c| c.is_ascii_uppercase())
        && p.chars().any(|c| c.is_ascii_digit())
        && p.chars().any(|c| "!@#$%^&*".contains(c))
        && p.chars().all(|c| c.is_ascii_graphic())
}

/// A fresh random password of `len` (≥ 8) that AMT accepts: every class present, from a
/// CSPRNG, without characters that need escaping in XML.
pub fn random_password(len: usize) -> String {
    const LOWER: &[u8] = b"abcdefghijkmnopqrstuvwxyz";
    const UPPER: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ";
    const DIGIT: &[u8] = b"23456789";
    const SPECIAL: &[u8] = b"!@#$%^*";
    let len = len.max(8);
    let mut bytes = vec![0u8; len * 2];
    if openssl::rand::rand_bytes(&mut bytes).is_err() {
        // Never fall back to a weak generator for credentials.
        panic!("the system random generator failed");
    }
    let pick = |set: &[u8], b: u8| char::from(set[usize::from(b) % set.len()]);
    let all: Vec<u8> = [LOWER, UPPER, DIGIT, SPECIAL].concat();
    let mut out: Vec<char> = vec![
        pick(LOWER, bytes[0]),
        pick(UPPER, bytes[1]),
        pick(DIGIT, bytes[2]),
        pick(SPECIAL, bytes[3]),
    ];
    for b in &bytes[4..len] {
        out.push(pick(&all, *b));
    }
    // Shuffle so the classes are not always in the first four places.
    for i in (1..out.len()).rev() {
        let j = usize::from(bytes[len + i]) % (i + 1);
        out.swap(i, j);
    }
    out.into_iter().collect()
}

/// A host name or IPv4 address is a valid FQDN-format (201) address.
pub fn valid_fqdn(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_passwords_satisfy_amt() {
        for _ in 0..200 {
            let p = random_password(16);
            assert_eq!(p.len(), 16);
            assert!(valid_amt_password(&p), "{p}");
        }
        assert_ne!(random_password(16), random_password(16));
    }

    #[test]
    fn names_and_paths() {
        assert!(valid_name("ccm-profile_1"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name("a.b"));
        assert!(!valid_name(""));
        assert_eq!(secret_path("", PROFILE, "P1"), "rps/_/profile/p1");
        assert_eq!(secret_path("acme", CIRA, "a#b"), "rps/acme/cira/x-612362");
        assert_ne!(
            secret_path("acme", CIRA, "x-612362"),
            secret_path("acme", CIRA, "a#b")
        );
        assert!(!valid_amt_password("password"));
        assert!(valid_amt_password("P@ssw0rd"));
        assert!(valid_fqdn("mps.example.com") && valid_fqdn("127.0.0.1"));
        assert!(!valid_fqdn("bad_host.com") && !valid_fqdn(""));
    }
}
