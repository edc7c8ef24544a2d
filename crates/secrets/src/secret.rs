//! The secret value newtype: it can be read on purpose (`expose`) but never printed by accident.

use std::collections::BTreeMap;
use std::fmt;

/// A secret string (password, key, certificate). `Debug` and `Display` print `***`.
///
/// There is deliberately no `Serialize`: writing a secret anywhere must go through
/// [`SecretString::expose`], so it is visible in review. `Deserialize` exists so services can
/// read secrets from their configuration files.
#[derive(Clone, Default, serde::Deserialize)]
#[serde(transparent)]
pub struct SecretString(String);

/// The key/value pairs stored at one secret path.
pub type SecretMap = BTreeMap<String, SecretString>;

impl SecretString {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value itself. Call it only where the value is used, never to log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the secret is the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Compares with a candidate in time independent of where they differ, for checking
    /// passwords presented by devices. Only the length can leak.
    pub fn ct_eq(&self, candidate: &[u8]) -> bool {
        let ours = self.0.as_bytes();
        ours.len() == candidate.len() && openssl::memcmp::eq(ours, candidate)
    }
}

// Equality is constant time too, so `==` on secrets is never the weak spot of an auth check.
impl PartialEq for SecretString {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other.0.as_bytes())
    }
}

impl Eq for SecretString {}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl From<String> for SecretString {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for SecretString {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_the_value() {
        let s = SecretString::new("hunter2");
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(format!("{s}"), "***");
        let mut map = SecretMap::new();
        map.insert("AMT_PASSWORD".into(), s.clone());
        assert!(!format!("{map:?}").contains("hunter2"));
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn equality() {
        let s = SecretString::new("abc");
        assert!(s.ct_eq(b"abc"));
        assert!(!s.ct_eq(b"abd"));
        assert!(!s.ct_eq(b"abcd"));
        assert!(!s.ct_eq(b""));
        assert_eq!(s, SecretString::from("abc"));
        assert_ne!(s, SecretString::from("ab"));
    }

    #[test]
    fn deserializes_transparently() {
        let s: SecretString = serde_json::from_str("\"pw\"").expect("json");
        assert_eq!(s.expose(), "pw");
    }
}
