//! ServerSession unit tests: order enforcement, replies, authentication, timeouts.

use super::*;
use crate::codec::{decode, TCPIP_FORWARD};
use crate::error::DecodeError;

const GUID_WIRE: [u8; 16] = [
    0x44, 0x45, 0x4C, 0x4C, 0x4B, 0x00, 0x10, 0x42, 0x80, 0x33, 0xB6, 0xC0, 0x4F, 0x50, 0x46, 0x33,
];

fn t0() -> Instant {
    Instant::now()
}

fn feed(s: &mut ServerSession, now: Instant, msgs: &[Message]) -> Result<(), SessionError> {
    let mut bytes = Vec::new();
    for m in msgs {
        m.encode(&mut bytes);
    }
    s.handle_input(now, &bytes)
}

/// Decodes everything the server sent. REQUEST_SUCCESS is decoded with a port unless
/// `bare_success` (after a cancel).
fn sent_with(s: &mut ServerSession, bare_success: bool) -> Vec<Message> {
    let bytes = s.poll_transmit().unwrap_or_default();
    let ctx = DecodeContext {
        request_success_has_port: !bare_success,
        ..DecodeContext::default()
    };
    let mut pos = 0;
    let mut out = Vec::new();
    while let Some(rest) = bytes.get(pos..).filter(|r| !r.is_empty()) {
        let (m, used) = decode(rest, ctx)
            .expect("server output decodes")
            .expect("server output is whole frames");
        out.push(m);
        pos += used;
    }
    out
}

fn sent(s: &mut ServerSession) -> Vec<Message> {
    sent_with(s, false)
}

fn events(s: &mut ServerSession) -> Vec<ServerEvent> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

fn version() -> Message {
    Message::ProtocolVersion {
        major: 1,
        minor: 0,
        trigger: 1,
        uuid: GUID_WIRE,
    }
}

fn service(name: &str) -> Message {
    Message::ServiceRequest {
        service: name.into(),
    }
}

fn userauth(password: &str) -> Message {
    Message::UserauthRequest {
        username: "admin".into(),
        service: SERVICE_PFWD.into(),
        method: METHOD_PASSWORD.into(),
        password: Some(Secret::new(password)),
    }
}

fn forward(port: u32) -> Message {
    Message::GlobalRequest {
        name: TCPIP_FORWARD.into(),
        want_reply: true,
        body: GlobalRequestBody::TcpipForward {
            address: "myhost".into(),
            port,
        },
    }
}

fn disconnect(reason: DisconnectReason) -> Message {
    Message::Disconnect { reason }
}

/// A session that has accepted auth and the pfwd service.
fn authenticated(now: Instant) -> ServerSession {
    let mut s = ServerSession::new(ServerConfig::default(), now);
    feed(
        &mut s,
        now,
        &[version(), service(SERVICE_AUTH), userauth("pw")],
    )
    .expect("valid handshake");
    assert!(s.accept_auth());
    feed(&mut s, now, &[service(SERVICE_PFWD)]).expect("valid handshake");
    let _ = sent(&mut s);
    let _ = events(&mut s);
    s
}

fn assert_failed_with(
    s: &mut ServerSession,
    r: Result<(), SessionError>,
    reason: DisconnectReason,
) {
    let err = r.expect_err("protocol violation");
    assert_eq!(err.disconnect_reason(), reason, "{err}");
    assert!(s.is_closed());
    assert_eq!(sent(s).last(), Some(&disconnect(reason)));
    // Input after closing is ignored, and nothing more is sent.
    assert_eq!(feed(s, t0(), &[version()]), Ok(()));
    assert_eq!(s.poll_transmit(), None);
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn full_handshake() {
    let now = t0();
    let mut s = ServerSession::new(ServerConfig::default(), now);
    feed(&mut s, now, &[version()]).expect("ok");
    assert_eq!(
        events(&mut s),
        vec![ServerEvent::ProtocolVersion {
            guid: "4c4c4544-004b-4210-8033-b6c04f504633".into(),
            major: 1,
            minor: 0
        }]
    );
    assert_eq!(
        s.guid().as_deref(),
        Some("4c4c4544-004b-4210-8033-b6c04f504633")
    );
    assert!(
        sent(&mut s).is_empty(),
        "MPS never answers PROTOCOL_VERSION"
    );

    feed(&mut s, now, &[service(SERVICE_AUTH), userauth("P@ssw0rd")]).expect("ok");
    assert_eq!(
        sent(&mut s),
        vec![Message::ServiceAccept {
            service: SERVICE_AUTH.into()
        }]
    );
    assert_eq!(
        events(&mut s),
        vec![ServerEvent::AuthRequest {
            username: "admin".into(),
            password: Secret::new("P@ssw0rd")
        }]
    );
    assert!(!s.is_authenticated());
    assert!(s.accept_auth());
    assert!(!s.accept_auth(), "only one decision per request");
    assert_eq!(sent(&mut s), vec![Message::UserauthSuccess]);

    feed(&mut s, now, &[service(SERVICE_PFWD)]).expect("ok");
    assert_eq!(
        sent(&mut s),
        vec![Message::ServiceAccept {
            service: SERVICE_PFWD.into()
        }]
    );
    feed(
        &mut s,
        now,
        &[forward(16993), forward(16992), forward(16992)],
    )
    .expect("ok");
    assert_eq!(
        sent(&mut s),
        vec![
            Message::RequestSuccess { port: Some(16993) },
            Message::RequestSuccess { port: Some(16992) },
            Message::RequestSuccess { port: Some(16992) },
        ]
    );
    assert!(events(&mut s).is_empty());
    feed(&mut s, now, &[forward(5900)]).expect("ok");
    assert_eq!(
        sent(&mut s),
        vec![
            Message::RequestSuccess { port: Some(5900) },
            Message::KeepaliveOptionsRequest {
                interval: 30,
                timeout: 0
            },
        ]
    );
    assert_eq!(
        events(&mut s),
        vec![ServerEvent::Ready {
            forwarded_ports: vec![16993, 16992, 5900]
        }]
    );
    assert!(s.is_ready());

    feed(
        &mut s,
        now,
        &[
            Message::KeepaliveOptionsReply {
                interval: 30,
                timeout: 0,
            },
            Message::KeepaliveRequest { cookie: 42 },
        ],
    )
    .expect("ok");
    assert_eq!(sent(&mut s), vec![Message::KeepaliveReply { cookie: 42 }]);
    assert_eq!(events(&mut s), vec![ServerEvent::KeepAlive]);
}

#[test]
fn first_channel_open_matches_the_reference_bytes() {
    let now = t0();
    let mut s = ServerSession::new(ServerConfig::default(), now);
    assert_eq!(s.open_channel(16992), Err(ChannelError::NotReady));
    let mut s = authenticated(now);
    assert_eq!(s.open_channel(16992), Ok(ChannelId(4)));
    assert_eq!(
        s.poll_transmit().as_deref(),
        Some(&include_bytes!("../../test_data/channel_open_first.bin")[..])
    );
    assert_eq!(s.open_channel(16994), Ok(ChannelId(5)));
    assert!(matches!(
        sent(&mut s).as_slice(),
        [Message::ChannelOpen {
            sender: 5,
            target_port: 16994,
            source_port: 1025,
            ..
        }]
    ));
    assert_eq!(s.channel_count(), 2);
}

#[test]
fn anything_before_protocol_version_is_a_protocol_error() {
    let mut s = ServerSession::new(ServerConfig::default(), t0());
    let r = feed(&mut s, t0(), &[service(SERVICE_AUTH)]);
    assert_failed_with(&mut s, r, DisconnectReason::PROTOCOL_ERROR);
}

#[test]
fn garbage_first_byte_is_a_protocol_error() {
    let mut s = ServerSession::new(ServerConfig::default(), t0());
    let r = s.handle_input(t0(), b"GET / HTTP/1.1\r\n");
    assert_eq!(
        r.clone().err(),
        Some(SessionError::Decode(crate::DecodeError::NotAllowedNow(
            MessageType(b'G')
        )))
    );
    assert_failed_with(&mut s, r, DisconnectReason::PROTOCOL_ERROR);
}

#[test]
fn unknown_service_is_not_available() {
    let mut s = ServerSession::new(ServerConfig::default(), t0());
    let r = feed(&mut s, t0(), &[version(), service("ssh-connection")]);
    assert_eq!(
        r.clone().err(),
        Some(SessionError::ServiceNotAvailable("ssh-connection".into()))
    );
    assert_failed_with(&mut s, r, DisconnectReason::SERVICE_NOT_AVAILABLE);
}

#[test]
fn pfwd_before_auth_is_a_protocol_error() {
    let mut s = ServerSession::new(ServerConfig::default(), t0());
    let r = feed(&mut s, t0(), &[version(), service(SERVICE_PFWD)]);
    assert_failed_with(&mut s, r, DisconnectReason::PROTOCOL_ERROR);
}

#[test]
fn global_request_before_auth_is_a_protocol_error() {
    let mut s = ServerSession::new(ServerConfig::default(), t0());
    let r = feed(
        &mut s,
        t0(),
        &[version(), service(SERVICE_AUTH), forward(16992)],
    );
    assert_failed_with(&mut s, r, DisconnectReason::PROTOCOL_ERROR);
}

#[test]
fn messages_while_auth_is_pending_are_protocol_errors() {
    for early in [
        userauth("again"),
        service(SERVICE_PFWD),
        Message::KeepaliveRequest { cookie: 1 },
    ] {
        let mut s = ServerSession::new(ServerConfig::default(), t0());
        let r = feed(
            &mut s,
            t0(),
            &[version(), service(SERVICE_AUTH), userauth("pw"), early],
        );
        assert_eq!(
            events(&mut s).len(),
            2,
            "version and auth request were emitted"
        );
        assert_failed_with(&mut s, r, DisconnectReason::PROTOCOL_ERROR);
        assert!(!s.accept_auth());
    }
}

#[test]
fn three_rejections_disconnect_with_invalid_credentials() {
    let mut s = ServerSession::new(ServerConfig::default(), t0());
    feed(&mut s, t0(), &[version(), service(SERVICE_AUTH)]).expect("ok");
    let _ = sent(&mut s);
    for attempt in 1..=3 {
        feed(&mut s, t0(), &[userauth("wrong")]).expect("ok");
        assert!(s.reject_auth());
        let out = sent(&mut s);
        let failure = Message::UserauthFailure {
            methods: METHOD_PASSWORD.into(),
        };
        if attempt < 3 {
            assert_eq!(out, vec![failure]);
            assert!(!s.is_closed());
        } else {
            assert_eq!(
                out,
                vec![failure, disconnect(DisconnectReason::INVALID_CREDENTIALS)]
            );
            assert!(s.is_closed());
        }
    }
    assert!(!s.reject_auth());
}

#[test]
fn non_password_methods_fail_and_count_as_attempts() {
    let config = ServerConfig {
        max_auth_attempts: 1,
        ..ServerConfig::default()
    };
    let mut s = ServerSession::new(config, t0());
    let none = Message::UserauthRequest {
        username: "admin".into(),
        service: SERVICE_PFWD.into(),
        method: "none".into(),
        password: None,
    };
    feed(&mut s, t0(), &[version(), service(SERVICE_AUTH), none]).expect("ok");
    assert!(events(&mut s)
        .iter()
        .all(|e| !matches!(e, ServerEvent::AuthRequest { .. })));
    assert_eq!(
        sent(&mut s).last(),
        Some(&disconnect(DisconnectReason::INVALID_CREDENTIALS))
    );
    assert!(s.is_closed());
}

#[test]
fn other_global_requests() {
    let now = t0();
    let mut s = authenticated(now);
    let unknown = Message::GlobalRequest {
        name: "x@example.com".into(),
        want_reply: true,
        body: GlobalRequestBody::Unknown(Vec::new()),
    };
    let quiet = Message::GlobalRequest {
        name: "x@example.com".into(),
        want_reply: false,
        body: GlobalRequestBody::Unknown(Vec::new()),
    };
    feed(&mut s, now, &[forward(623), unknown, quiet]).expect("ok");
    assert_eq!(
        sent(&mut s),
        vec![
            Message::RequestSuccess { port: Some(623) },
            Message::RequestFailure
        ]
    );
    let cancel = Message::GlobalRequest {
        name: crate::codec::CANCEL_TCPIP_FORWARD.into(),
        want_reply: true,
        body: GlobalRequestBody::CancelTcpipForward {
            address: "myhost".into(),
            port: 623,
        },
    };
    feed(&mut s, now, &[cancel]).expect("ok");
    assert_eq!(
        sent_with(&mut s, true),
        vec![Message::RequestSuccess { port: None }]
    );
    assert!(s.forwarded_ports().is_empty());
}

#[test]
fn forwarded_ports_are_bounded() {
    let now = t0();
    let mut s = authenticated(now);
    let many: Vec<Message> = (0..MAX_FORWARDED_PORTS as u32 + 1)
        .map(|p| forward(p + 1))
        .collect();
    feed(&mut s, now, &many).expect("ok");
    assert_eq!(s.forwarded_ports().len(), MAX_FORWARDED_PORTS);
    assert_eq!(sent(&mut s).last(), Some(&Message::RequestFailure));
}

#[test]
fn device_channel_opens_are_refused() {
    let now = t0();
    let mut s = authenticated(now);
    let open = |channel_type: &str| Message::ChannelOpen {
        channel_type: channel_type.into(),
        sender: 9,
        window: 100,
        max_packet: 100,
        target_address: String::new(),
        target_port: 80,
        source_address: String::new(),
        source_port: 0,
    };
    feed(&mut s, now, &[open("direct-tcpip"), open("session")]).expect("ok");
    let reasons: Vec<ChannelOpenFailureReason> = sent(&mut s)
        .into_iter()
        .map(|m| match m {
            Message::ChannelOpenFailure {
                recipient: 9,
                reason,
                ..
            } => reason,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        reasons,
        vec![
            ChannelOpenFailureReason::ADMINISTRATIVELY_PROHIBITED,
            ChannelOpenFailureReason::UNKNOWN_CHANNEL_TYPE
        ]
    );
    assert!(events(&mut s).is_empty());
}

#[test]
fn ready_at_first_keepalive_without_5900() {
    let now = t0();
    let mut s = authenticated(now);
    feed(
        &mut s,
        now,
        &[forward(16992), Message::KeepaliveRequest { cookie: 1 }],
    )
    .expect("ok");
    assert_eq!(
        events(&mut s),
        vec![
            ServerEvent::Ready {
                forwarded_ports: vec![16992]
            },
            ServerEvent::KeepAlive
        ]
    );
    let later = now + Duration::from_secs(1);
    feed(&mut s, later, &[Message::KeepaliveRequest { cookie: 2 }]).expect("ok");
    assert_eq!(events(&mut s), vec![ServerEvent::KeepAlive]);
}

#[test]
fn handshake_timeout() {
    let now = t0();
    let mut s = ServerSession::new(ServerConfig::default(), now);
    assert_eq!(s.poll_timeout(), Some(now + Duration::from_secs(30)));
    feed(&mut s, now + Duration::from_secs(20), &[version()]).expect("ok");
    // Input does not extend the handshake deadline.
    assert_eq!(s.poll_timeout(), Some(now + Duration::from_secs(30)));
    s.handle_timeout(now + Duration::from_secs(29));
    assert!(!s.is_closed());
    s.handle_timeout(now + Duration::from_secs(30));
    assert!(s.is_closed());
    assert_eq!(events(&mut s).last(), Some(&ServerEvent::HandshakeTimeout));
    assert_eq!(
        sent(&mut s),
        vec![disconnect(DisconnectReason::CONNECTION_TIMED_OUT)]
    );
}

#[test]
fn idle_timeout_after_ready() {
    let now = t0();
    let mut s = authenticated(now);
    feed(&mut s, now, &[forward(5900)]).expect("ok");
    let _ = sent(&mut s);
    assert_eq!(s.poll_timeout(), Some(now + Duration::from_secs(90)));
    let later = now + Duration::from_secs(60);
    feed(&mut s, later, &[Message::KeepaliveRequest { cookie: 1 }]).expect("ok");
    assert_eq!(s.poll_timeout(), Some(later + Duration::from_secs(90)));
    s.handle_timeout(now + Duration::from_secs(90));
    assert!(!s.is_closed(), "the keep-alive reset the idle timer");
    s.handle_timeout(later + Duration::from_secs(90));
    assert!(s.is_closed());
    assert_eq!(events(&mut s).last(), Some(&ServerEvent::IdleTimeout));
    assert_eq!(
        sent(&mut s).last(),
        Some(&disconnect(DisconnectReason::CONNECTION_TIMED_OUT))
    );
}

#[test]
fn peer_disconnect_closes_silently() {
    let mut s = ServerSession::new(ServerConfig::default(), t0());
    feed(
        &mut s,
        t0(),
        &[
            version(),
            disconnect(DisconnectReason::BY_APPLICATION),
            version(),
        ],
    )
    .expect("ok");
    assert!(s.is_closed());
    assert_eq!(
        events(&mut s).last(),
        Some(&ServerEvent::PeerDisconnected {
            reason: DisconnectReason::BY_APPLICATION
        })
    );
    assert_eq!(s.poll_transmit(), None);
}

#[test]
fn app_disconnect() {
    let mut s = authenticated(t0());
    s.disconnect(DisconnectReason::BY_POLICY);
    s.disconnect(DisconnectReason::BY_APPLICATION);
    assert_eq!(sent(&mut s), vec![disconnect(DisconnectReason::BY_POLICY)]);
    assert_eq!(s.open_channel(16992), Err(ChannelError::SessionClosed));
}

#[test]
fn buffers_hold_no_memory_when_idle() {
    let now = t0();
    let mut s = authenticated(now);
    // Half a message stays buffered, the rest completes it.
    let bytes = Message::KeepaliveRequest { cookie: 5 }.to_bytes();
    let (a, b) = bytes.split_at(2);
    s.handle_input(now, a).expect("ok");
    assert_eq!(s.core.buffer_capacities().0, 2);
    s.handle_input(now, b).expect("ok");
    let _ = s.poll_transmit();
    assert_eq!(s.core.buffer_capacities(), (0, 0));
    assert!(
        std::mem::size_of::<ServerSession>() <= 320,
        "{}",
        std::mem::size_of::<ServerSession>()
    );
}

/// A ready session with one confirmed channel to 16992 (device id 77, window 32 KiB).
fn with_channel(now: Instant) -> (ServerSession, ChannelId) {
    let mut s = authenticated(now);
    feed(&mut s, now, &[forward(5900)]).expect("ok");
    let id = s.open_channel(16992).expect("room");
    feed(
        &mut s,
        now,
        &[Message::ChannelOpenConfirmation {
            recipient: id.0,
            sender: 77,
            window: 32768,
            max_packet: u32::MAX,
        }],
    )
    .expect("ok");
    let _ = sent(&mut s);
    let _ = events(&mut s);
    (s, id)
}

#[test]
fn before_login_only_the_next_handshake_message_may_come() {
    // A CHANNEL_DATA header announcing 1 MiB fails on its type byte: nothing is buffered.
    for prefix in [
        vec![],
        vec![version()],
        vec![version(), service(SERVICE_AUTH)],
    ] {
        let mut s = ServerSession::new(ServerConfig::default(), t0());
        let mut bytes = Vec::new();
        for m in &prefix {
            m.encode(&mut bytes);
        }
        bytes.push(MessageType::CHANNEL_DATA.0);
        let r = s.handle_input(t0(), &bytes);
        assert_eq!(
            r,
            Err(SessionError::Decode(DecodeError::NotAllowedNow(
                MessageType::CHANNEL_DATA
            )))
        );
        assert_eq!(s.core.buffer_capacities().0, 0);
    }
    // Keep-alives and channel messages are for logged-in devices only, even while the login
    // is being decided.
    let mut s = ServerSession::new(ServerConfig::default(), t0());
    let mut bytes = Vec::new();
    for m in [version(), service(SERVICE_AUTH), userauth("pw")] {
        m.encode(&mut bytes);
    }
    bytes.push(MessageType::KEEPALIVE_REQUEST.0);
    assert!(matches!(
        s.handle_input(t0(), &bytes),
        Err(SessionError::Decode(DecodeError::NotAllowedNow(_)))
    ));
}

#[test]
fn strings_before_login_are_short_and_checked_on_their_length() {
    let mut s = ServerSession::new(ServerConfig::default(), t0());
    feed(&mut s, t0(), &[version(), service(SERVICE_AUTH)]).expect("ok");
    // USERAUTH_REQUEST whose user name announces 513 bytes: refused before they arrive.
    let mut bytes = vec![MessageType::USERAUTH_REQUEST.0];
    bytes.extend_from_slice(&(PREAUTH_MAX_STRING_LEN as u32 + 1).to_be_bytes());
    let r = s.handle_input(t0(), &bytes);
    assert!(
        matches!(r, Err(SessionError::Decode(DecodeError::TooLong { max, .. })) if max == PREAUTH_MAX_STRING_LEN),
        "{r:?}"
    );
    // The longest legal login fits in about 2 KB and is accepted.
    let mut s = ServerSession::new(ServerConfig::default(), t0());
    let long = Message::UserauthRequest {
        username: "u".repeat(PREAUTH_MAX_STRING_LEN),
        service: SERVICE_PFWD.into(),
        method: METHOD_PASSWORD.into(),
        password: Some(Secret::new("p".repeat(PREAUTH_MAX_STRING_LEN))),
    };
    assert!(long.to_bytes().len() < 2200);
    feed(&mut s, t0(), &[version(), service(SERVICE_AUTH), long]).expect("ok");
    assert!(matches!(
        events(&mut s).last(),
        Some(ServerEvent::AuthRequest { .. })
    ));
}

#[test]
fn channel_data_longer_than_a_packet_fails_on_its_header() {
    let (mut s, id) = with_channel(t0());
    let mut bytes = vec![MessageType::CHANNEL_DATA.0];
    bytes.extend_from_slice(&id.0.to_be_bytes());
    bytes.extend_from_slice(&(DEFAULT_MAX_CHANNEL_PACKET as u32 + 1).to_be_bytes());
    let r = s.handle_input(t0(), &bytes);
    assert!(
        matches!(r, Err(SessionError::Decode(DecodeError::TooLong { .. }))),
        "{r:?}"
    );
}

#[test]
fn data_beyond_the_window_ends_the_channel_not_the_session() {
    let now = t0();
    let (mut s, id) = with_channel(now);
    let other = s.open_channel(16992).expect("room");
    // One 40,960-byte message against a 32 KiB window, as a third-party client sends.
    feed(
        &mut s,
        now,
        &[Message::ChannelData {
            recipient: id.0,
            data: vec![b'x'; 40960],
        }],
    )
    .expect("the session stays up");
    assert!(!s.is_closed());
    assert_eq!(
        events(&mut s),
        vec![ServerEvent::ChannelAborted {
            id,
            why: ChannelAbort::WindowExceeded {
                received: 40960,
                window: 32768
            }
        }]
    );
    assert!(sent(&mut s).contains(&Message::ChannelClose { recipient: 77 }));
    assert_eq!(s.channel_count(), 1, "only the other channel is left");
    // The rest of the session works: the other channel opens, keep-alives are answered.
    feed(
        &mut s,
        now,
        &[
            Message::ChannelOpenConfirmation {
                recipient: other.0,
                sender: 78,
                window: 100,
                max_packet: u32::MAX,
            },
            Message::KeepaliveRequest { cookie: 9 },
        ],
    )
    .expect("ok");
    assert_eq!(
        events(&mut s),
        vec![
            ServerEvent::ChannelOpened { id: other },
            ServerEvent::KeepAlive
        ]
    );
}

#[test]
fn close_answering_an_open_is_a_failed_open() {
    let now = t0();
    let mut s = authenticated(now);
    feed(&mut s, now, &[forward(5900)]).expect("ok");
    let id = s.open_channel(16994).expect("room");
    let _ = sent(&mut s);
    let _ = events(&mut s);
    feed(&mut s, now, &[Message::ChannelClose { recipient: id.0 }]).expect("session stays up");
    assert!(!s.is_closed());
    assert_eq!(
        events(&mut s),
        vec![ServerEvent::ChannelOpenFailed {
            id,
            reason: ChannelOpenFailureReason::CONNECT_FAILED
        }]
    );
    assert_eq!(s.channel_count(), 0);
}

#[test]
fn a_keepalive_flood_is_answered_at_a_bounded_rate() {
    let now = t0();
    let mut s = authenticated(now);
    feed(&mut s, now, &[forward(5900)]).expect("ok");
    let _ = sent(&mut s);
    let _ = events(&mut s);
    // 500 requests within one second: one answer, the rest counted.
    for i in 0..500u32 {
        let at = now + Duration::from_millis(u64::from(i) * 2);
        feed(&mut s, at, &[Message::KeepaliveRequest { cookie: i }]).expect("ok");
    }
    assert_eq!(sent(&mut s), vec![Message::KeepaliveReply { cookie: 0 }]);
    assert_eq!(events(&mut s), vec![ServerEvent::KeepAlive]);
    assert_eq!(s.keepalives_ignored(), 499);
    // A second later the device is answered again.
    let later = now + Duration::from_secs(1);
    feed(&mut s, later, &[Message::KeepaliveRequest { cookie: 7 }]).expect("ok");
    assert_eq!(sent(&mut s), vec![Message::KeepaliveReply { cookie: 7 }]);
    assert!(!s.is_closed());
}
