//! TLS record protection after the handshake, for AEAD suites: TLS 1.3 (RFC 8446 §5) and
//! TLS 1.2 AES-GCM (RFC 5288) or ChaCha20-Poly1305 (RFC 7905).
//!
//! OpenSSL runs the handshake; then the ingress keeps only the traffic keys and sequence
//! numbers and frees OpenSSL's per-connection state (the `SSL` object, its record layer,
//! cipher contexts and session: about 14 KB). A CIRA session is idle almost all of its life,
//! so that state was most of a connected device's memory. Sans-IO: bytes in, bytes out.
//!
//! Post-handshake messages: a TLS 1.3 KeyUpdate is honoured (and answered when asked);
//! a TLS 1.2 renegotiation is refused with a `no_renegotiation` warning, as OpenSSL does
//! with renegotiation off; anything else ends the connection with the matching alert.

use std::cell::RefCell;
use std::sync::{Mutex, OnceLock};

use openssl::cipher::{Cipher, CipherRef};
use openssl::cipher_ctx::CipherCtx;
use openssl::error::ErrorStack;
use openssl::ex_data::Index;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::ssl::{Ssl, SslAcceptor, SslAcceptorBuilder, SslRef, SslVersion};
use zeroize::{Zeroize, Zeroizing};

const HEADER: usize = 5;
const TAG: usize = 16;
const NONCE: usize = 12;
/// Explicit nonce carried in each TLS 1.2 AES-GCM record.
const EXPLICIT_NONCE: usize = 8;
const MAX_PLAINTEXT: usize = 1 << 14;
/// Largest fragment a peer may send: 2^14 + 2048 in TLS 1.2, 2^14 + 256 in TLS 1.3.
const MAX_CIPHERTEXT_12: usize = MAX_PLAINTEXT + 2048;
const MAX_CIPHERTEXT_13: usize = MAX_PLAINTEXT + 256;
/// Largest traffic secret (SHA-384).
const MAX_SECRET: usize = 48;
/// Records in a row that carry no application data (empty records, KeyUpdates, warnings)
/// before the peer is cut off, as OpenSSL does: otherwise a peer could keep the session busy
/// without ever sending data.
const MAX_EMPTY_RECORDS: u8 = 32;

mod content {
    pub const ALERT: u8 = 21;
    pub const HANDSHAKE: u8 = 22;
    pub const APPLICATION_DATA: u8 = 23;
}

/// Alert descriptions (RFC 8446 §6).
pub mod alert {
    pub const CLOSE_NOTIFY: u8 = 0;
    pub const UNEXPECTED_MESSAGE: u8 = 10;
    pub const BAD_RECORD_MAC: u8 = 20;
    pub const RECORD_OVERFLOW: u8 = 22;
    pub const DECODE_ERROR: u8 = 50;
    pub const INTERNAL_ERROR: u8 = 80;
    pub const USER_CANCELED: u8 = 90;
    pub const NO_RENEGOTIATION: u8 = 100;
    pub const WARNING: u8 = 1;
    pub const FATAL: u8 = 2;
}

const KEY_UPDATE: u8 = 24;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    Tls12,
    Tls13,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aead {
    Aes128Gcm,
    Aes256Gcm,
    ChaCha20Poly1305,
}

impl Aead {
    fn from_nid(nid: Nid) -> Option<Self> {
        match nid {
            Nid::AES_128_GCM => Some(Aead::Aes128Gcm),
            Nid::AES_256_GCM => Some(Aead::Aes256Gcm),
            Nid::CHACHA20_POLY1305 => Some(Aead::ChaCha20Poly1305),
            _ => None,
        }
    }

    fn key_len(self) -> usize {
        match self {
            Aead::Aes128Gcm => 16,
            Aead::Aes256Gcm | Aead::ChaCha20Poly1305 => 32,
        }
    }

    fn cipher(self) -> &'static CipherRef {
        match self {
            Aead::Aes128Gcm => Cipher::aes_128_gcm(),
            Aead::Aes256Gcm => Cipher::aes_256_gcm(),
            Aead::ChaCha20Poly1305 => Cipher::chacha20_poly1305(),
        }
    }

    /// Bytes of nonce each TLS 1.2 record carries: AES-GCM's explicit part, none for ChaCha20.
    fn explicit_nonce_len_12(self) -> usize {
        match self {
            Aead::Aes128Gcm | Aead::Aes256Gcm => EXPLICIT_NONCE,
            Aead::ChaCha20Poly1305 => 0,
        }
    }

    /// TLS 1.2 fixed IV length: a 4-byte salt for AES-GCM, a whole 12-byte IV for ChaCha20.
    fn fixed_iv_len_12(self) -> usize {
        match self {
            Aead::Aes128Gcm | Aead::Aes256Gcm => 4,
            Aead::ChaCha20Poly1305 => NONCE,
        }
    }
}

/// What was wrong with the peer's records.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("TLS record failed authentication")]
    BadRecordMac,
    #[error("TLS record of {0} bytes exceeds the limit")]
    Overflow(usize),
    #[error("unexpected TLS {0}")]
    Unexpected(&'static str),
    #[error("malformed TLS {0}")]
    Decode(&'static str),
    #[error("peer sent TLS alert {0}")]
    PeerAlert(u8),
    #[error("TLS sequence numbers exhausted")]
    SequenceExhausted,
    #[error("TLS crypto: {0}")]
    Crypto(#[from] ErrorStack),
}

impl RecordError {
    /// The fatal alert the peer is told, if any (an alert is not answered with one).
    pub fn alert(&self) -> Option<u8> {
        match self {
            RecordError::BadRecordMac => Some(alert::BAD_RECORD_MAC),
            RecordError::Overflow(_) => Some(alert::RECORD_OVERFLOW),
            RecordError::Unexpected(_) => Some(alert::UNEXPECTED_MESSAGE),
            RecordError::Decode(_) => Some(alert::DECODE_ERROR),
            RecordError::SequenceExhausted | RecordError::Crypto(_) => Some(alert::INTERNAL_ERROR),
            RecordError::PeerAlert(_) => None,
        }
    }
}

/// Secrets OpenSSL reports through its key-log callback during a handshake (hex-decoded).
/// They go from the callback to [`RecordLayer::after_handshake`] and are wiped on drop.
#[derive(Default)]
pub struct Captured {
    client: Zeroizing<Vec<u8>>,
    server: Zeroizing<Vec<u8>>,
    master: Zeroizing<Vec<u8>>,
}

impl Captured {
    /// Takes one NSS key-log line (`LABEL <client random> <secret>`); others are ignored.
    pub fn record(&mut self, line: &str) {
        let mut parts = line.split(' ');
        let (Some(label), Some(_random), Some(secret)) = (parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        let slot = match label {
            "CLIENT_TRAFFIC_SECRET_0" => &mut self.client,
            "SERVER_TRAFFIC_SECRET_0" => &mut self.server,
            "CLIENT_RANDOM" => &mut self.master,
            _ => return,
        };
        *slot = Zeroizing::new(decode_hex(secret).unwrap_or_default());
    }
}

/// Shared slot for the key-log callback (OpenSSL hands it only `&SslRef`).
pub type CapturedSlot = Mutex<Captured>;

static CAPTURED: OnceLock<Index<Ssl, CapturedSlot>> = OnceLock::new();

/// The `SSL` ex-data index where a connection's captured secrets wait.
fn captured_index() -> Result<Index<Ssl, CapturedSlot>, ErrorStack> {
    if let Some(index) = CAPTURED.get() {
        return Ok(*index);
    }
    let index = Ssl::new_ex_index()?;
    Ok(*CAPTURED.get_or_init(|| index))
}

/// Installs the key-log callback that feeds [`take_over`]; the acceptor calls this once.
pub fn capture_secrets(builder: &mut SslAcceptorBuilder) -> Result<(), ErrorStack> {
    let index = captured_index()?;
    builder.set_keylog_callback(move |ssl, line| {
        if let Some(Ok(mut slot)) = ssl.ex_data(index).map(|m| m.lock()) {
            slot.record(line);
        }
    });
    Ok(())
}

/// A server `SSL` for one connection, with its slot for captured secrets.
pub fn server_ssl(acceptor: &SslAcceptor) -> Result<Ssl, ErrorStack> {
    let mut ssl = Ssl::new(acceptor.context())?;
    ssl.set_ex_data(captured_index()?, Mutex::new(Captured::default()));
    Ok(ssl)
}

/// After the handshake: the compact record layer when the suite allows it, `None` when
/// OpenSSL's record layer has to stay. The captured secrets are wiped either way.
pub fn take_over(ssl: &SslRef) -> Result<Option<RecordLayer>, ErrorStack> {
    let Some(Ok(mut slot)) = ssl.ex_data(captured_index()?).map(|m| m.lock()) else {
        return Ok(None);
    };
    let captured = std::mem::take(&mut *slot);
    RecordLayer::after_handshake(ssl, &captured)
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 2 * MAX_SECRET {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// One direction's keys. Wiped on drop.
#[cfg_attr(test, derive(Clone))]
struct Keys {
    key: [u8; 32],
    iv: [u8; NONCE],
    seq: u64,
    /// TLS 1.3 traffic secret (for KeyUpdate); `secret_len` bytes of it are used.
    secret: [u8; MAX_SECRET],
    secret_len: u8,
}

impl Drop for Keys {
    fn drop(&mut self) {
        self.key.zeroize();
        self.iv.zeroize();
        self.secret.zeroize();
    }
}

impl Keys {
    /// No key yet; the next record is number `seq`.
    fn empty(seq: u64) -> Keys {
        Keys {
            key: [0; 32],
            iv: [0; NONCE],
            seq,
            secret: [0; MAX_SECRET],
            secret_len: 0,
        }
    }

    fn tls13(hash: Hash, aead: Aead, secret: &[u8]) -> Keys {
        let mut keys = Keys::empty(0);
        keys.set_secret(hash, aead, secret);
        keys
    }

    fn set_secret(&mut self, hash: Hash, aead: Aead, secret: &[u8]) {
        let key = hkdf_expand_label(hash, secret, b"key", aead.key_len());
        let iv = hkdf_expand_label(hash, secret, b"iv", NONCE);
        self.key[..key.len()].copy_from_slice(&key);
        self.iv.copy_from_slice(&iv);
        self.secret[..secret.len()].copy_from_slice(secret);
        self.secret_len = secret.len() as u8;
        self.seq = 0;
    }

    /// RFC 8446 §7.2: the next generation of traffic secret and its keys.
    fn update(&mut self, hash: Hash, aead: Aead) {
        let current = &self.secret[..usize::from(self.secret_len)];
        let next = hkdf_expand_label(hash, current, b"traffic upd", current.len());
        self.set_secret(hash, aead, &next)
    }

    /// Per-record nonce: the IV XOR the sequence number (TLS 1.3, TLS 1.2 ChaCha20).
    fn xor_nonce(&self) -> [u8; NONCE] {
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        nonce
    }

    /// TLS 1.2 per-record nonce: the salt and the record's explicit part (AES-GCM, RFC 5288),
    /// or the IV XOR the sequence number when the record carries none (ChaCha20, RFC 7905).
    fn tls12_nonce(&self, explicit: &[u8]) -> [u8; NONCE] {
        if explicit.is_empty() {
            return self.xor_nonce();
        }
        let mut nonce = [0u8; NONCE];
        nonce[..4].copy_from_slice(&self.iv[..4]);
        nonce[4..].copy_from_slice(explicit);
        nonce
    }

    fn next_seq(&mut self) -> Result<(), RecordError> {
        self.seq = self
            .seq
            .checked_add(1)
            .ok_or(RecordError::SequenceExhausted)?;
        Ok(())
    }
}

/// Record protection for one connection after the handshake.
pub struct RecordLayer {
    version: Version,
    aead: Aead,
    /// Hash of the suite (TLS 1.3 key updates).
    hash: Hash,
    read: Keys,
    write: Keys,
    /// Bytes of a record not yet complete.
    partial: Vec<u8>,
    /// Records to send before any further data: a KeyUpdate answer, a refusal.
    pending: Vec<u8>,
    peer_closed: bool,
    /// Records in a row without application data.
    empty_records: u8,
    /// KeyUpdates received (the transport limits their rate).
    key_updates: u32,
}

impl RecordLayer {
    /// Takes over a finished server handshake, or `None` when the suite or version is one this
    /// layer does not handle (the caller keeps OpenSSL's record layer then). The `SSL` must not
    /// have read past the handshake (read-ahead off), so no record is left inside it.
    pub fn after_handshake(
        ssl: &SslRef,
        captured: &Captured,
    ) -> Result<Option<RecordLayer>, ErrorStack> {
        let Some(cipher) = ssl.current_cipher() else {
            return Ok(None);
        };
        let (Some(aead), Some(hash)) = (
            cipher.cipher_nid().and_then(Aead::from_nid),
            cipher.handshake_digest().and_then(Hash::from_md),
        ) else {
            return Ok(None);
        };
        if ssl.pending() > 0 {
            return Ok(None);
        }
        let layer = match ssl.version2() {
            Some(SslVersion::TLS1_3) => {
                if captured.client.is_empty() || captured.server.is_empty() {
                    return Ok(None);
                }
                Self::new(
                    Version::Tls13,
                    aead,
                    hash,
                    Keys::tls13(hash, aead, &captured.client),
                    Keys::tls13(hash, aead, &captured.server),
                )
            }
            Some(SslVersion::TLS1_2) => {
                if captured.master.is_empty() {
                    return Ok(None);
                }
                let mut client_random = [0u8; 32];
                let mut server_random = [0u8; 32];
                ssl.client_random(&mut client_random);
                ssl.server_random(&mut server_random);
                let (read, write) =
                    tls12_keys(hash, aead, &captured.master, &client_random, &server_random);
                Self::new(Version::Tls12, aead, hash, read, write)
            }
            _ => return Ok(None),
        };
        Ok(Some(layer))
    }

    /// A copy with the same keys and sequence numbers, for tests that replay one stream.
    #[cfg(test)]
    fn duplicate(&self) -> RecordLayer {
        Self::new(
            self.version,
            self.aead,
            self.hash,
            self.read.clone(),
            self.write.clone(),
        )
    }

    fn new(version: Version, aead: Aead, hash: Hash, read: Keys, write: Keys) -> Self {
        RecordLayer {
            version,
            aead,
            hash,
            read,
            write,
            partial: Vec::new(),
            pending: Vec::new(),
            peer_closed: false,
            empty_records: 0,
            key_updates: 0,
        }
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// True once the peer's close_notify arrived; nothing after it is read.
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Decrypts every complete record of what arrived, appending application data to `out`.
    /// An incomplete record is kept for the next call.
    pub fn open(&mut self, input: Vec<u8>, out: &mut Vec<u8>) -> Result<(), RecordError> {
        if self.peer_closed {
            return Ok(());
        }
        let mut buf = if self.partial.is_empty() {
            input
        } else {
            let mut b = std::mem::take(&mut self.partial);
            b.extend_from_slice(&input);
            b
        };
        let max = match self.version {
            Version::Tls12 => MAX_CIPHERTEXT_12,
            Version::Tls13 => MAX_CIPHERTEXT_13,
        };
        let mut pos = 0;
        while !self.peer_closed {
            let Some(rest) = buf.get_mut(pos..) else {
                break;
            };
            if rest.len() < HEADER {
                break;
            }
            if rest[1] != 3 {
                return Err(RecordError::Decode("record header"));
            }
            let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
            if len > max {
                return Err(RecordError::Overflow(len));
            }
            if rest.len() < HEADER + len {
                break;
            }
            let (header, rest) = rest.split_at_mut(HEADER);
            let header: [u8; HEADER] = [header[0], header[1], header[2], header[3], header[4]];
            self.open_record(header, &mut rest[..len], out)?;
            pos += HEADER + len;
        }
        if !self.peer_closed && pos < buf.len() {
            buf.drain(..pos);
            buf.shrink_to_fit();
            self.partial = buf;
        }
        Ok(())
    }

    fn open_record(
        &mut self,
        header: [u8; HEADER],
        body: &mut [u8],
        out: &mut Vec<u8>,
    ) -> Result<(), RecordError> {
        let (typ, plaintext) = match self.version {
            Version::Tls13 => {
                if header[0] != content::APPLICATION_DATA {
                    return Err(RecordError::Unexpected("record type after the handshake"));
                }
                let ct_len = body
                    .len()
                    .checked_sub(TAG)
                    .ok_or(RecordError::Decode("record"))?;
                let (ct, tag) = body.split_at_mut(ct_len);
                let nonce = self.read.xor_nonce();
                open_in_place(self.aead, &self.read.key, &nonce, &header, ct, tag)?;
                self.read.next_seq()?;
                // Inner plaintext: content, the real type, zero padding.
                let end = ct
                    .iter()
                    .rposition(|&b| b != 0)
                    .ok_or(RecordError::Unexpected("record without a content type"))?;
                (ct[end], &ct[..end])
            }
            Version::Tls12 => {
                let typ = header[0];
                if !matches!(
                    typ,
                    content::APPLICATION_DATA | content::ALERT | content::HANDSHAKE
                ) {
                    return Err(RecordError::Unexpected("record type after the handshake"));
                }
                let explicit = self.aead.explicit_nonce_len_12();
                let ct_len = body
                    .len()
                    .checked_sub(explicit + TAG)
                    .ok_or(RecordError::Decode("record"))?;
                let (nonce_part, rest) = body.split_at_mut(explicit);
                let (ct, tag) = rest.split_at_mut(ct_len);
                let nonce = self.read.tls12_nonce(nonce_part);
                let aad = tls12_aad(self.read.seq, header, ct_len);
                open_in_place(self.aead, &self.read.key, &nonce, &aad, ct, tag)?;
                self.read.next_seq()?;
                (typ, &*ct)
            }
        };
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(RecordError::Overflow(plaintext.len()));
        }
        if typ == content::APPLICATION_DATA && !plaintext.is_empty() {
            self.empty_records = 0;
        } else {
            self.empty_records += 1;
            if self.empty_records > MAX_EMPTY_RECORDS {
                return Err(RecordError::Unexpected("run of records without data"));
            }
        }
        match typ {
            content::APPLICATION_DATA => out.extend_from_slice(plaintext),
            content::ALERT => {
                let [level, description] = plaintext else {
                    return Err(RecordError::Decode("alert"));
                };
                match *description {
                    alert::CLOSE_NOTIFY => self.peer_closed = true,
                    alert::USER_CANCELED => {}
                    _ if self.version == Version::Tls12 && *level == alert::WARNING => {}
                    other => return Err(RecordError::PeerAlert(other)),
                }
            }
            content::HANDSHAKE => match self.version {
                Version::Tls13 => self.post_handshake(plaintext)?,
                Version::Tls12 => {
                    // A ClientHello asking to renegotiate: refuse (once while unsent), keep the
                    // session.
                    if self.pending.is_empty() {
                        self.queue_record(
                            content::ALERT,
                            &[alert::WARNING, alert::NO_RENEGOTIATION],
                        )?;
                    }
                }
            },
            _ => return Err(RecordError::Unexpected("record content type")),
        }
        Ok(())
    }

    /// TLS 1.3 handshake messages after the handshake: only KeyUpdate is acceptable from a
    /// client. Each message must be whole within its record (OpenSSL never splits one).
    fn post_handshake(&mut self, mut msgs: &[u8]) -> Result<(), RecordError> {
        while !msgs.is_empty() {
            let [typ, a, b, c, rest @ ..] = msgs else {
                return Err(RecordError::Decode("handshake message"));
            };
            let len = usize::from(*a) << 16 | usize::from(*b) << 8 | usize::from(*c);
            if *typ != KEY_UPDATE {
                return Err(RecordError::Unexpected(
                    "handshake message after the handshake",
                ));
            }
            if rest.len() < len {
                return Err(RecordError::Decode("handshake message"));
            }
            let (body, after) = rest.split_at(len);
            let [request] = body else {
                return Err(RecordError::Decode("KeyUpdate"));
            };
            if !after.is_empty() {
                // A key change must end its record (RFC 8446 §5.1).
                return Err(RecordError::Unexpected(
                    "data after KeyUpdate in one record",
                ));
            }
            match *request {
                0 => {}
                // One answer covers every request received while it is unsent (RFC 8446
                // §4.6.3); in TLS 1.3 nothing else waits in `pending`.
                1 if !self.pending.is_empty() => {}
                1 => {
                    // Answer under the current keys, then move ours on.
                    self.queue_record(content::HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 0])?;
                    self.write.update(self.hash, self.aead);
                }
                _ => return Err(RecordError::Decode("KeyUpdate")),
            }
            self.key_updates = self.key_updates.saturating_add(1);
            self.read.update(self.hash, self.aead);
            msgs = after;
        }
        Ok(())
    }

    /// Encrypts application data into `out` (records of at most 2^14 bytes), after anything
    /// that had to be sent first.
    pub fn seal(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
        out.append(&mut self.pending);
        for chunk in data.chunks(MAX_PLAINTEXT) {
            self.seal_record(content::APPLICATION_DATA, chunk, out)?;
        }
        Ok(())
    }

    /// An alert record into `out` (close_notify as a warning, anything else fatal).
    pub fn seal_alert(&mut self, description: u8, out: &mut Vec<u8>) -> Result<(), RecordError> {
        out.append(&mut self.pending);
        let level = if description == alert::CLOSE_NOTIFY {
            alert::WARNING
        } else {
            alert::FATAL
        };
        self.seal_record(content::ALERT, &[level, description], out)
    }

    /// KeyUpdates received so far.
    pub fn key_updates(&self) -> u32 {
        self.key_updates
    }

    /// Records waiting to be sent (a KeyUpdate answer, a refusal), if any.
    pub fn take_pending(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
    }

    /// Seals a record into `pending`, to go out before any further data.
    fn queue_record(&mut self, typ: u8, data: &[u8]) -> Result<(), RecordError> {
        let mut pending = std::mem::take(&mut self.pending);
        let sealed = self.seal_record(typ, data, &mut pending);
        self.pending = pending;
        sealed
    }

    fn seal_record(&mut self, typ: u8, data: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
        match self.version {
            Version::Tls13 => {
                let len = data.len() + 1 + TAG;
                let header = record_header(content::APPLICATION_DATA, len);
                out.extend_from_slice(&header);
                let start = out.len();
                out.extend_from_slice(data);
                out.push(typ);
                let nonce = self.write.xor_nonce();
                let tag = seal_in_place(
                    self.aead,
                    &self.write.key,
                    &nonce,
                    &header,
                    &mut out[start..],
                )?;
                out.extend_from_slice(&tag);
            }
            Version::Tls12 => {
                let explicit = self.aead.explicit_nonce_len_12();
                let header = record_header(typ, explicit + data.len() + TAG);
                out.extend_from_slice(&header);
                // An explicit part is the sequence number: unique per key.
                let seq = self.write.seq.to_be_bytes();
                let explicit = &seq[..explicit];
                out.extend_from_slice(explicit);
                let nonce = self.write.tls12_nonce(explicit);
                let start = out.len();
                out.extend_from_slice(data);
                let aad = tls12_aad(self.write.seq, header, data.len());
                let tag =
                    seal_in_place(self.aead, &self.write.key, &nonce, &aad, &mut out[start..])?;
                out.extend_from_slice(&tag);
            }
        }
        self.write.next_seq()
    }
}

fn record_header(typ: u8, len: usize) -> [u8; HEADER] {
    // `len` is at most 2^14 + 1 + 8 + 16 by construction.
    let [hi, lo] = u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes();
    [typ, 3, 3, hi, lo]
}

/// TLS 1.2 AEAD additional data: seq_num, type, version, plaintext length.
fn tls12_aad(seq: u64, header: [u8; HEADER], plaintext_len: usize) -> [u8; 13] {
    let mut aad = [0u8; 13];
    aad[..8].copy_from_slice(&seq.to_be_bytes());
    aad[8..11].copy_from_slice(&header[..3]);
    let [hi, lo] = u16::try_from(plaintext_len)
        .unwrap_or(u16::MAX)
        .to_be_bytes();
    aad[11] = hi;
    aad[12] = lo;
    aad
}

thread_local! {
    /// One cipher context per AEAD per thread, re-keyed for every record: a context holds
    /// about a kilobyte, which every connection would otherwise keep for each direction.
    static CONTEXTS: RefCell<[Option<CipherCtx>; 3]> = const { RefCell::new([None, None, None]) };
}

fn with_ctx<R>(
    aead: Aead,
    f: impl FnOnce(&mut CipherCtx) -> Result<R, RecordError>,
) -> Result<R, RecordError> {
    CONTEXTS.with(|slots| {
        let mut slots = slots
            .try_borrow_mut()
            .map_err(|_| RecordError::Unexpected("re-entrant cipher use"))?;
        let slot = &mut slots[aead as usize];
        let ctx = match slot {
            Some(ctx) => ctx,
            None => {
                let mut ctx = CipherCtx::new()?;
                ctx.encrypt_init(Some(aead.cipher()), None, None)?;
                slot.insert(ctx)
            }
        };
        f(ctx)
    })
}

fn seal_in_place(
    aead: Aead,
    key: &[u8; 32],
    nonce: &[u8; NONCE],
    aad: &[u8],
    data: &mut [u8],
) -> Result<[u8; TAG], RecordError> {
    with_ctx(aead, |ctx| {
        ctx.encrypt_init(None, Some(&key[..aead.key_len()]), Some(nonce))?;
        ctx.cipher_update(aad, None)?;
        let len = data.len();
        ctx.cipher_update_inplace(data, len)?;
        ctx.cipher_final(&mut [])?;
        let mut tag = [0u8; TAG];
        ctx.tag(&mut tag)?;
        Ok(tag)
    })
}

fn open_in_place(
    aead: Aead,
    key: &[u8; 32],
    nonce: &[u8; NONCE],
    aad: &[u8],
    data: &mut [u8],
    tag: &[u8],
) -> Result<(), RecordError> {
    with_ctx(aead, |ctx| {
        ctx.decrypt_init(None, Some(&key[..aead.key_len()]), Some(nonce))?;
        ctx.cipher_update(aad, None)?;
        let len = data.len();
        ctx.cipher_update_inplace(data, len)?;
        ctx.set_tag(tag)?;
        ctx.cipher_final(&mut [])
            .map_err(|_| RecordError::BadRecordMac)?;
        Ok(())
    })
}

/// The hash of a suite's key schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hash {
    Sha256,
    Sha384,
}

impl Hash {
    fn from_md(md: MessageDigest) -> Option<Hash> {
        match md.type_() {
            Nid::SHA256 => Some(Hash::Sha256),
            Nid::SHA384 => Some(Hash::Sha384),
            _ => None,
        }
    }

    fn block_len(self) -> usize {
        match self {
            Hash::Sha256 => 64,
            Hash::Sha384 => 128,
        }
    }

    fn digest(self, parts: &[&[u8]]) -> Zeroizing<Vec<u8>> {
        match self {
            Hash::Sha256 => {
                let mut h = openssl::sha::Sha256::new();
                parts.iter().for_each(|p| h.update(p));
                Zeroizing::new(h.finish().to_vec())
            }
            Hash::Sha384 => {
                let mut h = openssl::sha::Sha384::new();
                parts.iter().for_each(|p| h.update(p));
                Zeroizing::new(h.finish().to_vec())
            }
        }
    }
}

/// HMAC (RFC 2104) on OpenSSL's plain SHA-2 functions: the EVP HMAC of OpenSSL 3 costs tens
/// of microseconds per call in provider lookups, which is most of a handshake's key schedule.
fn hmac(hash: Hash, key: &[u8], parts: &[&[u8]]) -> Zeroizing<Vec<u8>> {
    let mut k = Zeroizing::new(vec![0u8; hash.block_len()]);
    if key.len() > k.len() {
        let d = hash.digest(&[key]);
        k[..d.len()].copy_from_slice(&d);
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let ipad: Zeroizing<Vec<u8>> = Zeroizing::new(k.iter().map(|b| b ^ 0x36).collect());
    let opad: Zeroizing<Vec<u8>> = Zeroizing::new(k.iter().map(|b| b ^ 0x5c).collect());
    let mut inner_parts = Vec::with_capacity(parts.len() + 1);
    inner_parts.push(&ipad[..]);
    inner_parts.extend_from_slice(parts);
    let inner = hash.digest(&inner_parts);
    hash.digest(&[&opad, &inner])
}

/// RFC 8446 §7.1 HKDF-Expand-Label with an empty context, for outputs of at most one hash
/// block (keys, IVs, traffic secrets).
fn hkdf_expand_label(hash: Hash, secret: &[u8], label: &[u8], len: usize) -> Zeroizing<Vec<u8>> {
    let mut info = Vec::with_capacity(4 + 6 + label.len());
    info.extend_from_slice(&(len as u16).to_be_bytes());
    info.push((6 + label.len()) as u8);
    info.extend_from_slice(b"tls13 ");
    info.extend_from_slice(label);
    info.push(0);
    // HKDF-Expand, first block: HMAC(secret, info || 0x01).
    let mut block = hmac(hash, secret, &[&info, &[1]]);
    block.truncate(len);
    block
}

/// RFC 5246 §5 PRF (P_hash) and §6.3 key block for an AEAD suite: (client keys, server keys),
/// i.e. (what the server reads with, what it writes with).
fn tls12_keys(
    hash: Hash,
    aead: Aead,
    master: &[u8],
    client_random: &[u8; 32],
    server_random: &[u8; 32],
) -> (Keys, Keys) {
    let key_len = aead.key_len();
    let iv_len = aead.fixed_iv_len_12();
    let need = 2 * (key_len + iv_len);
    let label: &[u8] = b"key expansion";
    let mut block = Zeroizing::new(Vec::with_capacity(need + 48));
    let mut a = hmac(hash, master, &[label, server_random, client_random]);
    while block.len() < need {
        block.extend_from_slice(&hmac(
            hash,
            master,
            &[&a, label, server_random, client_random],
        ));
        a = hmac(hash, master, &[&a]);
    }
    let keys = |key_at: usize, iv_at: usize| {
        // The Finished message was record 0 under these keys in each direction.
        let mut k = Keys::empty(1);
        k.key[..key_len].copy_from_slice(&block[key_at..key_at + key_len]);
        k.iv[..iv_len].copy_from_slice(&block[iv_at..iv_at + iv_len]);
        k
    };
    let client = keys(0, 2 * key_len);
    let server = keys(key_len, 2 * key_len + iv_len);
    (client, server)
}

#[cfg(test)]
mod tests;
