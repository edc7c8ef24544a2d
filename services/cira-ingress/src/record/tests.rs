//! The compact record layer against OpenSSL clients over real sockets: every AEAD suite of
//! TLS 1.2 and 1.3 in both directions, key updates, alerts, and hostile records.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;

use openssl::ssl::{
    ErrorCode, SslAcceptor, SslConnector, SslConnectorBuilder, SslMethod, SslStream, SslVerifyMode,
    SslVersion,
};

use super::*;
use crate::tls::{self, TlsProfile};

fn acceptor(profile: TlsProfile) -> &'static SslAcceptor {
    static DEFAULT: OnceLock<SslAcceptor> = OnceLock::new();
    static LEGACY: OnceLock<SslAcceptor> = OnceLock::new();
    let slot = match profile {
        TlsProfile::Legacy => &LEGACY,
        _ => &DEFAULT,
    };
    slot.get_or_init(|| tls::acceptor(profile, tls::test_bundle()).expect("acceptor"))
}

/// An OpenSSL client and the server end of the socket after the server's handshake.
struct Pair {
    client: SslStream<UnixStream>,
    server: UnixStream,
    layer: Option<RecordLayer>,
}

fn handshake(profile: TlsProfile, client: impl FnOnce(&mut SslConnectorBuilder)) -> Pair {
    let (c, s) = UnixStream::pair().expect("socket pair");
    let acceptor = acceptor(profile);
    let server = std::thread::spawn(move || {
        let raw = s.try_clone().expect("dup");
        let ssl = server_ssl(acceptor).expect("ssl");
        let stream = ssl.accept(s).expect("server handshake");
        let layer = take_over(stream.ssl()).expect("take over");
        // Frees the SSL without a close_notify; the socket lives on in `raw`.
        drop(stream);
        (raw, layer)
    });
    let mut b = SslConnector::builder(SslMethod::tls_client()).expect("connector");
    b.set_verify(SslVerifyMode::NONE);
    client(&mut b);
    let client = b
        .build()
        .configure()
        .expect("configure")
        .verify_hostname(false)
        .connect("localhost", c)
        .expect("client handshake");
    let (server, layer) = server.join().expect("server thread");
    Pair {
        client,
        server,
        layer,
    }
}

fn tls13(suite: &'static str) -> impl FnOnce(&mut SslConnectorBuilder) {
    move |b| {
        b.set_min_proto_version(Some(SslVersion::TLS1_3)).unwrap();
        b.set_ciphersuites(suite).unwrap();
    }
}

fn tls12(ciphers: &'static str) -> impl FnOnce(&mut SslConnectorBuilder) {
    move |b| {
        b.set_max_proto_version(Some(SslVersion::TLS1_2)).unwrap();
        b.set_cipher_list(ciphers).unwrap();
    }
}

impl Pair {
    fn layer(&mut self) -> &mut RecordLayer {
        self.layer.as_mut().expect("compact record layer")
    }

    /// Reads from the socket until `want` bytes of application data arrived.
    fn server_read(&mut self, want: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while out.len() < want {
            let mut buf = vec![0u8; 4096];
            let n = self.server.read(&mut buf).expect("server read");
            assert!(n > 0, "client closed early");
            buf.truncate(n);
            self.layer().open(buf, &mut out).expect("open");
        }
        out
    }

    fn server_write(&mut self, data: &[u8]) {
        let mut out = Vec::new();
        self.layer().seal(data, &mut out).expect("seal");
        self.server.write_all(&out).expect("server write");
    }

    /// Sends an alert from the server; what the client's next read says.
    fn send_alert(&mut self, description: u8) -> openssl::ssl::Error {
        let mut out = Vec::new();
        self.layer().seal_alert(description, &mut out).unwrap();
        self.server.write_all(&out).unwrap();
        let mut buf = [0u8; 8];
        self.client
            .ssl_read(&mut buf)
            .expect_err("an alert ends reading")
    }

    fn client_read(&mut self, want: usize) -> Vec<u8> {
        let mut out = vec![0u8; want];
        self.client.read_exact(&mut out).expect("client read");
        out
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Both directions, small and larger than one record, and data the client sends right after
/// its Finished (it must still be in the socket, not inside the freed SSL).
fn exchange(pair: &mut Pair) {
    pair.client.write_all(b"hello").unwrap();
    let big = pattern(40_000, 7);
    pair.client.write_all(&big).unwrap();
    let got = pair.server_read(5 + big.len());
    assert_eq!(&got[..5], b"hello");
    assert_eq!(&got[5..], &big[..]);
    let reply = pattern(50_000, 3);
    pair.server_write(&reply);
    pair.server_write(b"bye");
    assert_eq!(pair.client_read(reply.len()), reply);
    assert_eq!(pair.client_read(3), b"bye");
}

#[test]
fn tls13_suites_round_trip() {
    for suite in [
        "TLS_AES_128_GCM_SHA256",
        "TLS_AES_256_GCM_SHA384",
        "TLS_CHACHA20_POLY1305_SHA256",
    ] {
        let mut pair = handshake(TlsProfile::Default, tls13(suite));
        assert_eq!(pair.layer().version(), Version::Tls13, "{suite}");
        exchange(&mut pair);
    }
}

#[test]
fn tls12_aead_suites_round_trip() {
    for (profile, suite) in [
        (TlsProfile::Default, "ECDHE-ECDSA-AES128-GCM-SHA256"),
        (TlsProfile::Default, "ECDHE-RSA-AES256-GCM-SHA384"),
        // Static RSA, what older firmware offers.
        (TlsProfile::Default, "AES128-GCM-SHA256"),
        (TlsProfile::Default, "AES256-GCM-SHA384"),
        (TlsProfile::Legacy, "ECDHE-ECDSA-CHACHA20-POLY1305"),
    ] {
        let mut pair = handshake(profile, tls12(suite));
        assert_eq!(
            pair.client.ssl().current_cipher().map(|c| c.name()),
            Some(suite)
        );
        assert_eq!(pair.layer().version(), Version::Tls12, "{suite}");
        exchange(&mut pair);
    }
}

#[test]
fn the_server_picks_the_suite() {
    // OpenSSL's client lists AES-256 first; the server's AES-128 wins.
    let pair = handshake(TlsProfile::Default, |_| {});
    assert_eq!(
        pair.client.ssl().current_cipher().map(|c| c.name()),
        Some("TLS_AES_128_GCM_SHA256")
    );
    // A TLS 1.2 device listing static RSA first still gets forward secrecy.
    let pair = handshake(
        TlsProfile::Default,
        tls12("AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256"),
    );
    assert_eq!(
        pair.client.ssl().current_cipher().map(|c| c.name()),
        Some("ECDHE-RSA-AES128-GCM-SHA256")
    );
}

#[test]
fn cbc_suites_keep_openssls_record_layer() {
    let pair = handshake(TlsProfile::Default, tls12("AES128-SHA256"));
    assert!(pair.layer.is_none());
}

#[allow(unsafe_code)]
fn request_key_update(stream: &SslStream<UnixStream>, requested: bool) {
    use foreign_types::ForeignTypeRef;
    extern "C" {
        fn SSL_key_update(s: *mut openssl_sys::SSL, updatetype: std::ffi::c_int)
            -> std::ffi::c_int;
    }
    // SAFETY: a live SSL of an established TLS 1.3 connection; the call only queues a message.
    let ok = unsafe { SSL_key_update(stream.ssl().as_ptr(), i32::from(requested)) };
    assert_eq!(ok, 1, "SSL_key_update");
}

#[test]
fn key_updates_from_the_client_are_followed_and_answered() {
    for requested in [false, true] {
        let mut pair = handshake(TlsProfile::Default, tls13("TLS_AES_128_GCM_SHA256"));
        pair.client.write_all(b"before").unwrap();
        assert_eq!(pair.server_read(6), b"before");
        request_key_update(&pair.client, requested);
        // The update goes out with the next write, under the old keys; the data under new ones.
        pair.client.write_all(b"after").unwrap();
        assert_eq!(pair.server_read(5), b"after");
        // Read keys moved on: "after" was record 1 of the new generation.
        assert_eq!(pair.layer().read.seq, 1);
        assert_eq!(!pair.layer().pending.is_empty(), requested);
        // Our answer (when asked) precedes our next data; the client must read both.
        pair.server_write(b"reply");
        assert_eq!(pair.client_read(5), b"reply");
        assert!(pair.layer().pending.is_empty());
        pair.client.write_all(b"again").unwrap();
        assert_eq!(pair.server_read(5), b"again");
    }
}

#[test]
fn close_notify_ends_reading_and_ours_reaches_the_client() {
    let mut pair = handshake(TlsProfile::Default, tls13("TLS_AES_256_GCM_SHA384"));
    pair.client.write_all(b"last").unwrap();
    let _ = pair.client.shutdown();
    let mut out = Vec::new();
    while !pair.layer().peer_closed() {
        let mut buf = vec![0u8; 512];
        let n = pair.server.read(&mut buf).unwrap();
        assert!(n > 0, "socket closed before close_notify");
        buf.truncate(n);
        pair.layer().open(buf, &mut out).unwrap();
    }
    assert_eq!(out, b"last");
    let err = pair.send_alert(alert::CLOSE_NOTIFY);
    assert_eq!(err.code(), ErrorCode::ZERO_RETURN);
}

#[test]
fn fatal_alert_reaches_the_client() {
    let mut pair = handshake(TlsProfile::Default, tls12("ECDHE-ECDSA-AES128-GCM-SHA256"));
    let err = pair.send_alert(alert::DECODE_ERROR);
    assert_eq!(err.code(), ErrorCode::SSL, "{err}");
}

/// The raw bytes of one client write.
fn captured_write(pair: &mut Pair, data: &[u8]) -> Vec<u8> {
    pair.client.write_all(data).unwrap();
    let mut buf = vec![0u8; 4096];
    let n = pair.server.read(&mut buf).unwrap();
    buf.truncate(n);
    buf
}

#[test]
fn a_record_split_into_single_bytes_is_reassembled() {
    let mut pair = handshake(TlsProfile::Default, tls13("TLS_AES_128_GCM_SHA256"));
    let wire = captured_write(&mut pair, b"split me");
    let mut out = Vec::new();
    for b in wire {
        pair.layer().open(vec![b], &mut out).unwrap();
    }
    assert_eq!(out, b"split me");
    assert!(pair.layer().partial.is_empty());
}

/// A TLS 1.3 and a TLS 1.2 AES-GCM session.
fn gcm_pairs() -> [Pair; 2] {
    [
        handshake(TlsProfile::Default, tls13("TLS_AES_128_GCM_SHA256")),
        handshake(TlsProfile::Default, tls12("ECDHE-ECDSA-AES128-GCM-SHA256")),
    ]
}

#[test]
fn tampered_records_fail_authentication() {
    for mut pair in gcm_pairs() {
        let mut wire = captured_write(&mut pair, b"do not touch");
        let last = wire.len() - 1;
        wire[last] ^= 1;
        let err = pair.layer().open(wire, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, RecordError::BadRecordMac), "{err}");
        assert_eq!(err.alert(), Some(alert::BAD_RECORD_MAC));
    }
}

#[test]
fn replayed_record_fails_authentication() {
    let mut pair = handshake(TlsProfile::Default, tls13("TLS_AES_128_GCM_SHA256"));
    let wire = captured_write(&mut pair, b"once");
    let mut out = Vec::new();
    pair.layer().open(wire.clone(), &mut out).unwrap();
    assert_eq!(out, b"once");
    assert!(matches!(
        pair.layer().open(wire, &mut out),
        Err(RecordError::BadRecordMac)
    ));
}

#[test]
fn hostile_headers_are_refused() {
    let mut pair = handshake(TlsProfile::Default, tls13("TLS_AES_128_GCM_SHA256"));
    let layer = pair.layer();
    let err = layer.open(vec![23, 3, 3, 0xff, 0xff], &mut Vec::new());
    assert!(matches!(err, Err(RecordError::Overflow(0xffff))), "{err:?}");
    let mut pair = handshake(TlsProfile::Default, tls13("TLS_AES_128_GCM_SHA256"));
    let err = pair
        .layer()
        .open(b"GET / HTTP/1.1\r\n".to_vec(), &mut Vec::new());
    assert!(matches!(err, Err(RecordError::Decode(_))), "{err:?}");
    let mut pair = handshake(TlsProfile::Default, tls13("TLS_AES_128_GCM_SHA256"));
    let err = pair.layer().open(vec![20, 3, 3, 0, 1, 1], &mut Vec::new());
    assert!(matches!(err, Err(RecordError::Unexpected(_))), "{err:?}");
    // Too short to hold a tag.
    let mut pair = handshake(TlsProfile::Default, tls12("AES128-GCM-SHA256"));
    let err = pair
        .layer()
        .open(vec![23, 3, 3, 0, 4, 1, 2, 3, 4], &mut Vec::new());
    assert!(matches!(err, Err(RecordError::Decode(_))), "{err:?}");
}

#[test]
fn keys_are_not_in_the_captured_slot_after_take_over() {
    let (c, s) = UnixStream::pair().unwrap();
    let acceptor = acceptor(TlsProfile::Default);
    let server = std::thread::spawn(move || {
        let ssl = server_ssl(acceptor).unwrap();
        let stream = ssl.accept(s).unwrap();
        assert!(take_over(stream.ssl()).unwrap().is_some());
        let slot = stream.ssl().ex_data(captured_index().unwrap()).unwrap();
        let slot = slot.lock().unwrap();
        assert!(slot.client.is_empty() && slot.server.is_empty() && slot.master.is_empty());
    });
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    b.set_verify(SslVerifyMode::NONE);
    let _client = b
        .build()
        .configure()
        .unwrap()
        .verify_hostname(false)
        .connect("localhost", c)
        .unwrap();
    server.join().unwrap();
}

#[test]
fn key_log_lines_are_parsed_strictly() {
    let mut c = Captured::default();
    c.record("CLIENT_TRAFFIC_SECRET_0 00 0a0B");
    assert_eq!(&c.client[..], &[0x0a, 0x0b]);
    c.record("SERVER_TRAFFIC_SECRET_0 00 zz");
    assert!(c.server.is_empty());
    c.record("CLIENT_RANDOM 00 abc");
    assert!(c.master.is_empty());
    c.record("EXPORTER_SECRET 00 0102");
    c.record("garbage");
    assert!(c.server.is_empty() && c.master.is_empty());
}

#[test]
fn hmac_matches_rfc_4231() {
    let hex = |s: &str| decode_hex(s).unwrap();
    // Test case 2: key "Jefe".
    let data: &[u8] = b"what do ya want for nothing?";
    assert_eq!(
        &hmac(Hash::Sha256, b"Jefe", &[&data[..10], &data[10..]])[..],
        &hex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")[..]
    );
    assert_eq!(
        hmac(Hash::Sha384, b"Jefe", &[data]).to_vec(),
        [
            hex("af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47"),
            hex("e42ec3736322445e8e2240ca5e69e2c78b3239ecfab21649"),
        ]
        .concat()
    );
    // Test case 6: a key longer than the block is hashed first.
    let key = [0xaau8; 131];
    assert_eq!(
        &hmac(
            Hash::Sha256,
            &key,
            &[b"Test Using Larger Than Block-Size Key - Hash Key First"]
        )[..],
        &hex("60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")[..]
    );
}

/// Mutated and truncated record streams (bit flips, length changes, cut points, random bytes)
/// end in an error or wait for more; never a panic, never data that was not sent.
#[test]
fn mutated_streams_never_panic_or_forge_data() {
    for mut pair in gcm_pairs() {
        let mut wire = captured_write(&mut pair, b"first record");
        wire.extend(captured_write(&mut pair, &pattern(3000, 1)));
        let pristine = pair.layer().duplicate();
        let mut rng = fastrand::Rng::with_seed(7);
        for round in 0..3000 {
            let mut bytes = wire.clone();
            match round % 4 {
                0 => {
                    let i = rng.usize(..bytes.len());
                    bytes[i] ^= 1 << rng.u8(..8);
                }
                1 => bytes.truncate(rng.usize(..bytes.len())),
                2 => {
                    // A record length in the header changed.
                    bytes[3] = rng.u8(..);
                    bytes[4] = rng.u8(..);
                }
                _ => {
                    let i = rng.usize(..bytes.len());
                    bytes.insert(i, rng.u8(..));
                }
            }
            let mut layer = pristine.duplicate();
            let mut out = Vec::new();
            let _ = layer.open(bytes, &mut out);
            let sent = [&b"first record"[..], &pattern(3000, 1)].concat();
            assert!(sent.starts_with(&out), "round {round}: forged plaintext");
        }
        let mut random = pristine.duplicate();
        for _ in 0..200 {
            let len = rng.usize(..64);
            let junk: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            if random.open(junk, &mut Vec::new()).is_err() {
                random = pristine.duplicate();
            }
        }
    }
}

/// The client's side of a session: the server's keys with the directions swapped.
fn client_of(layer: &RecordLayer) -> RecordLayer {
    let mut client = layer.duplicate();
    std::mem::swap(&mut client.read, &mut client.write);
    client
}

#[test]
fn a_run_of_records_without_data_is_cut_off() {
    let mut pair = handshake(TlsProfile::Default, tls13("TLS_AES_128_GCM_SHA256"));
    let mut client = client_of(pair.layer());
    let mut wire = Vec::new();
    for _ in 0..MAX_EMPTY_RECORDS {
        client
            .seal_record(content::APPLICATION_DATA, b"", &mut wire)
            .unwrap();
    }
    client
        .seal_record(content::APPLICATION_DATA, b"x", &mut wire)
        .unwrap();
    let mut out = Vec::new();
    pair.layer().open(wire, &mut out).unwrap();
    assert_eq!(out, b"x", "32 empty records, then data: fine");
    let mut wire = Vec::new();
    for _ in 0..=MAX_EMPTY_RECORDS {
        client
            .seal_record(content::APPLICATION_DATA, b"", &mut wire)
            .unwrap();
    }
    assert!(matches!(
        pair.layer().open(wire, &mut out),
        Err(RecordError::Unexpected(_))
    ));
}

#[test]
fn many_key_update_requests_get_one_answer() {
    let mut pair = handshake(TlsProfile::Default, tls13("TLS_AES_256_GCM_SHA384"));
    let mut client = client_of(pair.layer());
    let mut wire = Vec::new();
    for _ in 0..10 {
        client
            .seal_record(content::HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 1], &mut wire)
            .unwrap();
        client.write.update(client.hash, client.aead);
    }
    client
        .seal_record(content::APPLICATION_DATA, b"new keys", &mut wire)
        .unwrap();
    let mut out = Vec::new();
    pair.layer().open(wire, &mut out).unwrap();
    assert_eq!(out, b"new keys");
    // One answer record, then the reply under the server's next keys; the client follows.
    let mut reply = Vec::new();
    pair.layer().seal(b"ok", &mut reply).unwrap();
    let mut got = Vec::new();
    client.open(reply, &mut got).unwrap();
    assert_eq!(got, b"ok");
}
