//! Deterministic identities of simulated devices: the same seed and index always give the same
//! GUID, credentials and realm, so runs are reproducible and enrolment can happen elsewhere.

use homeport_secrets::SecretString;

/// One simulated device's identity and credentials.
#[derive(Clone)]
pub struct Identity {
    pub index: u64,
    /// SMBIOS UUID in AMT wire order (what PROTOCOL_VERSION carries).
    pub uuid_wire: [u8; 16],
    /// Canonical lowercase GUID string.
    pub guid: String,
    pub hostname: String,
    pub mps_username: String,
    pub mps_password: SecretString,
    pub amt_password: SecretString,
    /// `Digest:` + 32 upper-case hex digits, as AMT_GeneralSettings.DigestRealm.
    pub realm: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("index", &self.index)
            .field("guid", &self.guid)
            .field("mps_username", &self.mps_username)
            .finish_non_exhaustive()
    }
}

/// splitmix64: a tiny, well-mixed generator; enough for reproducible identities.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";

fn text(mut x: u64, len: usize, salt: u64) -> String {
    let mut s = String::with_capacity(len);
    for i in 0..len {
        if i % 8 == 0 {
            x = mix(x ^ salt.wrapping_add(i as u64));
        }
        let idx = usize::try_from(x % ALPHABET.len() as u64).unwrap_or(0);
        s.push(char::from(ALPHABET.get(idx).copied().unwrap_or(b'x')));
        x /= ALPHABET.len() as u64;
    }
    s
}

impl Identity {
    pub fn derive(seed: u64, index: u64) -> Self {
        let base = mix(seed ^ mix(index));
        let a = mix(base ^ 1);
        let b = mix(base ^ 2);
        let mut uuid_wire = [0u8; 16];
        uuid_wire[..8].copy_from_slice(&a.to_be_bytes());
        uuid_wire[8..].copy_from_slice(&b.to_be_bytes());
        // Version 4 / RFC 4122 variant bits, so the GUID looks like a real SMBIOS UUID.
        uuid_wire[7] = (uuid_wire[7] & 0x0f) | 0x40;
        uuid_wire[8] = (uuid_wire[8] & 0x3f) | 0x80;
        let guid = homeport_apf::guid_from_wire(&uuid_wire);
        Self {
            index,
            uuid_wire,
            guid,
            hostname: format!("sim-{index:06}"),
            mps_username: format!("cira{}", text(base, 12, 3)),
            mps_password: SecretString::new(text(base, 20, 4)),
            amt_password: SecretString::new(format!("Amt!{}", text(base, 12, 5))),
            realm: format!("Digest:{:016X}{:016X}", mix(base ^ 6), mix(base ^ 7)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_are_deterministic_and_distinct() {
        let a = Identity::derive(7, 1);
        let b = Identity::derive(7, 1);
        let c = Identity::derive(7, 2);
        let d = Identity::derive(8, 1);
        assert_eq!(a.guid, b.guid);
        assert_eq!(a.mps_password.expose(), b.mps_password.expose());
        assert_ne!(a.guid, c.guid);
        assert_ne!(a.guid, d.guid);
        assert_eq!(a.guid.len(), 36);
        assert_eq!(a.realm.len(), "Digest:".len() + 32);
        assert_eq!(homeport_apf::guid_to_wire(&a.guid).ok(), Some(a.uuid_wire));
        let guids: std::collections::HashSet<_> =
            (0..10_000).map(|i| Identity::derive(1, i).guid).collect();
        assert_eq!(guids.len(), 10_000);
    }
}
