//! The encrypted secrets file format and the key file.
//!
//! File layout (version 1):
//!
//! ```text
//! magic "HPSECRET" (8) | version 0x01 (1) | nonce (12) | GCM tag (16) | ciphertext (rest)
//! ```
//!
//! The ciphertext is AES-256-GCM over the JSON object `{path: {key: value}}`; the magic and
//! version are the additional authenticated data, so a flipped version byte fails like any
//! other tampering. The nonce is fresh random for every write: with 96-bit random nonces the
//! collision risk stays negligible for far more writes than a local store will ever do.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use openssl::symm::{decrypt_aead, encrypt_aead, Cipher};

use crate::SecretError;

/// The decrypted contents: path → key → value. Plain strings because this never leaves the
/// module; callers get [`crate::SecretMap`]s.
pub(super) type Plain = BTreeMap<String, BTreeMap<String, String>>;

const MAGIC: &[u8; 8] = b"HPSECRET";
const VERSION: u8 = 1;
const HEADER_LEN: usize = MAGIC.len() + 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const KEY_LEN: usize = 32;

/// The AES-256 key. `Debug` hides it like every other secret.
pub(super) struct Key([u8; KEY_LEN]);

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(***)")
    }
}

fn header() -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..MAGIC.len()].copy_from_slice(MAGIC);
    h[MAGIC.len()] = VERSION;
    h
}

fn openssl_failure(what: &str, e: &openssl::error::ErrorStack) -> SecretError {
    // OpenSSL error stacks name functions and reasons, never buffer contents.
    SecretError::Unavailable(format!("{what}: {e}"))
}

/// Serializes and encrypts the whole store into file bytes.
pub(super) fn seal(key: &Key, entries: &Plain) -> Result<Vec<u8>, SecretError> {
    let plaintext = serde_json::to_vec(entries)
        .map_err(|_| SecretError::Rejected("secrets could not be serialized".into()))?;
    let mut nonce = [0u8; NONCE_LEN];
    openssl::rand::rand_bytes(&mut nonce).map_err(|e| openssl_failure("random nonce", &e))?;
    let mut tag = [0u8; TAG_LEN];
    let header = header();
    let ciphertext = encrypt_aead(
        Cipher::aes_256_gcm(),
        &key.0,
        Some(&nonce),
        &header,
        &plaintext,
        &mut tag,
    )
    .map_err(|e| openssl_failure("encryption", &e))?;
    let mut out = Vec::with_capacity(HEADER_LEN + NONCE_LEN + TAG_LEN + ciphertext.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&tag);
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

/// Decrypts and parses file bytes. Every failure is [`SecretError::Corrupt`]: the caller must
/// never "repair" by overwriting, since the usual cause is a wrong key, and the data is still
/// recoverable with the right one.
pub(super) fn open(key: &Key, bytes: &[u8], path: &Path) -> Result<Plain, SecretError> {
    let corrupt = |why: &str| SecretError::Corrupt(format!("{}: {why}", path.display()));
    if bytes.len() < HEADER_LEN + NONCE_LEN + TAG_LEN {
        return Err(corrupt("file is truncated"));
    }
    let (header, rest) = bytes.split_at(HEADER_LEN);
    if !header.starts_with(MAGIC) {
        return Err(corrupt("not a homeport secrets file (bad magic)"));
    }
    if header[MAGIC.len()] != VERSION {
        return Err(corrupt("unsupported secrets file version"));
    }
    let (nonce, rest) = rest.split_at(NONCE_LEN);
    let (tag, ciphertext) = rest.split_at(TAG_LEN);
    let plaintext = decrypt_aead(
        Cipher::aes_256_gcm(),
        &key.0,
        Some(nonce),
        header,
        ciphertext,
        tag,
    )
    .map_err(|_| {
        corrupt("decryption failed: wrong key file, or the file was modified or truncated")
    })?;
    // The parse error text may quote the plaintext, so it is not passed on.
    serde_json::from_slice(&plaintext).map_err(|_| corrupt("decrypted contents are not valid"))
}

pub(super) fn io_error(what: &str, path: &Path, e: &std::io::Error) -> SecretError {
    let msg = format!("{what} {}: {e}", path.display());
    if e.kind() == ErrorKind::PermissionDenied {
        SecretError::Denied(msg)
    } else {
        SecretError::Unavailable(msg)
    }
}

/// Reads the key file, creating it (mode 0600, random key) when absent.
///
/// Refuses to create a key when the secrets file already exists: a new key could never decrypt
/// it, and silently starting over would lose every device credential.
pub(super) fn load_or_create_key(key_path: &Path, data_path: &Path) -> Result<Key, SecretError> {
    match read_key(key_path)? {
        Some(key) => return Ok(key),
        None if data_path.exists() => {
            // Another process may have created both files between our two checks.
            return read_key(key_path)?.ok_or_else(|| {
                SecretError::Corrupt(format!(
                    "key file {} is missing but secrets file {} exists; refusing to create a new \
                     key that could not decrypt it",
                    key_path.display(),
                    data_path.display()
                ))
            });
        }
        None => {}
    }
    create_key(key_path)?;
    read_key(key_path)?.ok_or_else(|| {
        SecretError::Unavailable(format!("key file {} vanished", key_path.display()))
    })
}

fn read_key(key_path: &Path) -> Result<Option<Key>, SecretError> {
    let bytes = match fs::read(key_path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("cannot read key file", key_path, &e)),
    };
    if let Ok(meta) = fs::metadata(key_path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                path = %key_path.display(),
                "secret key file is readable by group or others; it should be mode 0600"
            );
        }
    }
    parse_key(&bytes).map(Some).ok_or_else(|| {
        SecretError::Corrupt(format!(
            "key file {} must hold 64 hex digits or 32 raw bytes",
            key_path.display()
        ))
    })
}

/// Accepts 64 hex digits (what we write; easy to hand to Docker/Kubernetes secrets) or 32 raw
/// bytes.
fn parse_key(bytes: &[u8]) -> Option<Key> {
    let text = bytes.trim_ascii();
    let mut key = [0u8; KEY_LEN];
    if text.len() == KEY_LEN * 2 {
        for (out, pair) in key.iter_mut().zip(text.chunks_exact(2)) {
            *out = (hex_val(pair[0])? << 4) | hex_val(pair[1])?;
        }
        return Some(Key(key));
    }
    if bytes.len() == KEY_LEN {
        key.copy_from_slice(bytes);
        return Some(Key(key));
    }
    None
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Writes a fresh key to a private temp file, then hard-links it into place: the link fails if
/// another process got there first, and nobody ever sees a half-written key file.
fn create_key(key_path: &Path) -> Result<(), SecretError> {
    if let Some(dir) = key_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| io_error("cannot create directory", dir, &e))?;
    }
    let mut raw = [0u8; KEY_LEN];
    openssl::rand::rand_bytes(&mut raw).map_err(|e| openssl_failure("random key", &e))?;
    let mut text = String::with_capacity(KEY_LEN * 2 + 1);
    for b in raw {
        text.push_str(&format!("{b:02x}"));
    }
    text.push('\n');

    let tmp = super::sibling_temp_path(key_path);
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io_error("cannot create key file", &tmp, &e))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| io_error("cannot write key file", &tmp, &e))?;
        match fs::hard_link(&tmp, key_path) {
            Ok(()) => {
                tracing::info!(path = %key_path.display(), "created new secret store key");
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(io_error("cannot install key file", key_path, &e)),
        }
    })();
    let _ = fs::remove_file(&tmp);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> Key {
        Key([b; KEY_LEN])
    }

    #[test]
    fn seal_open_round_trip_and_tamper() {
        let mut entries = Plain::new();
        entries
            .entry("devices/a".into())
            .or_default()
            .insert("AMT_PASSWORD".into(), "pw".into());
        let path = Path::new("/x");
        let sealed = seal(&key(1), &entries).expect("seal");
        assert_eq!(open(&key(1), &sealed, path).expect("open"), entries);
        // Two seals of the same data differ (fresh nonce).
        assert_ne!(seal(&key(1), &entries).expect("seal"), sealed);

        assert!(matches!(
            open(&key(2), &sealed, path),
            Err(SecretError::Corrupt(_))
        ));
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(
                matches!(open(&key(1), &bad, path), Err(SecretError::Corrupt(_))),
                "flip at {i} accepted"
            );
        }
        for len in 0..sealed.len() {
            assert!(matches!(
                open(&key(1), &sealed[..len], path),
                Err(SecretError::Corrupt(_))
            ));
        }
    }

    #[test]
    fn key_formats() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF\n";
        let k = parse_key(hex.as_bytes()).expect("hex");
        assert_eq!(k.0[1], 0x11);
        assert_eq!(k.0[31], 0xff);
        assert!(parse_key(&[7u8; 32]).is_some());
        assert!(parse_key(b"short").is_none());
        assert!(parse_key(&[b'g'; 64]).is_none());
        assert_eq!(format!("{k:?}"), "Key(***)");
    }
}
