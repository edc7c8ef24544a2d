//! DeviceSession unit tests against scripted server messages.

use super::*;
use crate::codec::decode;

const GUID_WIRE: [u8; 16] = [
    0x44, 0x45, 0x4C, 0x4C, 0x4B, 0x00, 0x10, 0x42, 0x80, 0x33, 0xB6, 0xC0, 0x4F, 0x50, 0x46, 0x33,
];

fn config() -> DeviceConfig {
    DeviceConfig {
        forward_address: "myhost".into(),
        forward_ports: vec![16992, 5900],
        ..DeviceConfig::new(GUID_WIRE, "admin", Secret::new("P@ssw0rd"))
    }
}

fn feed(d: &mut DeviceSession, now: Instant, msgs: &[Message]) -> Result<(), SessionError> {
    let mut bytes = Vec::new();
    for m in msgs {
        m.encode(&mut bytes);
    }
    d.handle_input(now, &bytes)
}

fn sent(d: &mut DeviceSession) -> Vec<Message> {
    let bytes = d.poll_transmit().unwrap_or_default();
    let mut pos = 0;
    let mut out = Vec::new();
    while let Some(rest) = bytes.get(pos..).filter(|r| !r.is_empty()) {
        let (m, used) = decode(rest, DecodeContext::default())
            .expect("device output decodes")
            .expect("device output is whole frames");
        out.push(m);
        pos += used;
    }
    out
}

fn events(d: &mut DeviceSession) -> Vec<DeviceEvent> {
    std::iter::from_fn(|| d.poll_event()).collect()
}

fn accept(service: &str) -> Message {
    Message::ServiceAccept {
        service: service.into(),
    }
}

fn success(port: u32) -> Message {
    Message::RequestSuccess { port: Some(port) }
}

/// A device that completed the handshake at `now`.
fn ready(now: Instant) -> DeviceSession {
    let mut d = DeviceSession::new(config(), now);
    feed(
        &mut d,
        now,
        &[
            accept(SERVICE_AUTH),
            Message::UserauthSuccess,
            accept(SERVICE_PFWD),
            success(16992),
            success(5900),
        ],
    )
    .expect("valid handshake");
    assert!(d.is_ready());
    let _ = sent(&mut d);
    let _ = events(&mut d);
    d
}

#[test]
fn construction_sends_version_and_auth_service_request() {
    let mut d = DeviceSession::new(config(), Instant::now());
    let bytes = d.poll_transmit().expect("opening bytes");
    let version = include_bytes!("../../test_data/protocol_version.bin");
    let auth = include_bytes!("../../test_data/service_request_auth.bin");
    assert_eq!(bytes, [&version[..], &auth[..]].concat());
    assert_eq!(d.poll_transmit(), None);
    assert_eq!(d.guid(), "4c4c4544-004b-4210-8033-b6c04f504633");
}

#[test]
fn handshake_sends_the_reference_frames() {
    let now = Instant::now();
    let mut d = DeviceSession::new(config(), now);
    let _ = d.poll_transmit();
    feed(&mut d, now, &[accept(SERVICE_AUTH)]).expect("ok");
    assert_eq!(
        d.poll_transmit().as_deref(),
        Some(&include_bytes!("../../test_data/userauth_request_admin.bin")[..])
    );
    feed(&mut d, now, &[Message::UserauthSuccess]).expect("ok");
    assert_eq!(events(&mut d), vec![DeviceEvent::Authenticated]);
    assert_eq!(
        sent(&mut d),
        vec![Message::ServiceRequest {
            service: SERVICE_PFWD.into()
        }]
    );
    feed(&mut d, now, &[accept(SERVICE_PFWD)]).expect("ok");
    assert_eq!(
        d.poll_transmit().as_deref(),
        Some(&include_bytes!("../../test_data/tcpip_forward_myhost_16992.bin")[..])
    );
    // One forward at a time: the next goes out only after the reply.
    assert_eq!(d.poll_transmit(), None);
    d.handle_input(
        now,
        include_bytes!("../../test_data/request_success_16992.bin"),
    )
    .expect("ok");
    assert!(matches!(
        sent(&mut d).as_slice(),
        [Message::GlobalRequest {
            body: GlobalRequestBody::TcpipForward { port: 5900, .. },
            ..
        }]
    ));
    assert!(!d.is_ready());
    feed(&mut d, now, &[success(5900)]).expect("ok");
    assert_eq!(events(&mut d), vec![DeviceEvent::Ready]);
    assert!(d.is_ready());
}

#[test]
fn keepalive_options_and_periodic_keepalives() {
    let now = Instant::now();
    let mut d = ready(now);
    assert_eq!(d.poll_timeout(), Some(now + Duration::from_secs(60)));
    d.handle_input(
        now,
        include_bytes!("../../test_data/keepalive_options_request_30_0.bin"),
    )
    .expect("ok");
    assert_eq!(
        sent(&mut d),
        vec![Message::KeepaliveOptionsReply {
            interval: 30,
            timeout: 0
        }]
    );
    assert_eq!(d.keepalive_interval(), Duration::from_secs(30));
    let t1 = now + Duration::from_secs(30);
    assert_eq!(d.poll_timeout(), Some(t1));
    d.handle_timeout(t1 - Duration::from_millis(1));
    assert_eq!(d.poll_transmit(), None, "not due yet");
    d.handle_timeout(t1);
    assert_eq!(sent(&mut d), vec![Message::KeepaliveRequest { cookie: 0 }]);
    feed(&mut d, t1, &[Message::KeepaliveReply { cookie: 0 }]).expect("ok");
    let t2 = t1 + Duration::from_secs(30);
    assert_eq!(d.poll_timeout(), Some(t2));
    d.handle_timeout(t2);
    assert_eq!(sent(&mut d), vec![Message::KeepaliveRequest { cookie: 1 }]);
    assert_eq!(d.keepalive_replies(), 1);
    // A zero interval leaves the current one in force.
    feed(
        &mut d,
        t2,
        &[Message::KeepaliveOptionsRequest {
            interval: 0,
            timeout: 0,
        }],
    )
    .expect("ok");
    assert_eq!(d.keepalive_interval(), Duration::from_secs(30));
    // The server may ask too.
    feed(&mut d, t2, &[Message::KeepaliveRequest { cookie: 9 }]).expect("ok");
    assert_eq!(
        sent(&mut d).last(),
        Some(&Message::KeepaliveReply { cookie: 9 })
    );
}

#[test]
fn silent_device_sends_no_keepalives_and_declares_the_link_dead() {
    let now = Instant::now();
    let mut d = DeviceSession::new(
        DeviceConfig {
            send_keepalives: false,
            ..config()
        },
        now,
    );
    let _ = d.poll_transmit();
    let dead = now + Duration::from_secs(180);
    assert_eq!(d.poll_timeout(), Some(dead));
    d.handle_timeout(dead - Duration::from_secs(1));
    assert_eq!(d.poll_transmit(), None);
    d.handle_timeout(dead);
    assert_eq!(events(&mut d), vec![DeviceEvent::LinkDead]);
    assert!(d.is_closed());
    assert_eq!(
        sent(&mut d),
        vec![Message::Disconnect {
            reason: DisconnectReason::CONNECTION_TIMED_OUT
        }]
    );
}

#[test]
fn mps_userauth_failure_with_stray_zero_is_tolerated() {
    let failure = include_bytes!("../../test_data/userauth_failure_mps.bin");
    let disconnect = Message::Disconnect {
        reason: DisconnectReason::INVALID_CREDENTIALS,
    }
    .to_bytes();
    let stream = [&failure[..], &disconnect].concat();
    // Every split point, including between the failure and its stray zero.
    for cut in 0..=stream.len() {
        let now = Instant::now();
        let mut d = DeviceSession::new(config(), now);
        feed(&mut d, now, &[accept(SERVICE_AUTH)]).expect("ok");
        let (a, b) = stream.split_at(cut);
        d.handle_input(now, a).expect("cut a");
        d.handle_input(now, b).expect("cut b");
        assert_eq!(
            events(&mut d),
            vec![
                DeviceEvent::AuthFailed,
                DeviceEvent::PeerDisconnected {
                    reason: DisconnectReason::INVALID_CREDENTIALS
                }
            ],
            "cut at {cut}"
        );
    }
}

#[test]
fn retry_after_failure_and_spec_layout_failure() {
    let now = Instant::now();
    let mut d = DeviceSession::new(config(), now);
    assert!(!d.retry_auth(), "nothing failed yet");
    feed(
        &mut d,
        now,
        &[
            accept(SERVICE_AUTH),
            Message::UserauthFailure {
                methods: METHOD_PASSWORD.into(),
            },
        ],
    )
    .expect("ok");
    let _ = d.poll_transmit();
    assert!(d.retry_auth());
    assert!(matches!(
        sent(&mut d).as_slice(),
        [Message::UserauthRequest { .. }]
    ));
    feed(&mut d, now, &[Message::UserauthSuccess]).expect("ok");
    assert_eq!(
        events(&mut d),
        vec![DeviceEvent::AuthFailed, DeviceEvent::Authenticated]
    );
}

#[test]
fn a_zero_byte_anywhere_else_is_a_protocol_error() {
    let now = Instant::now();
    let mut d = DeviceSession::new(config(), now);
    let r = d.handle_input(now, &[0]);
    assert_eq!(
        r.map_err(|e| e.disconnect_reason()),
        Err(DisconnectReason::PROTOCOL_ERROR)
    );
    assert!(d.is_closed());
}

#[test]
fn channels_before_authentication_are_protocol_errors() {
    let now = Instant::now();
    let mut d = DeviceSession::new(config(), now);
    let r = feed(&mut d, now, &[open(16992)]);
    assert!(r.is_err());
    assert!(d.is_closed());
}

fn open(port: u32) -> Message {
    Message::ChannelOpen {
        channel_type: FORWARDED_TCPIP.into(),
        sender: 4,
        window: 32768,
        max_packet: u32::MAX,
        target_address: String::new(),
        target_port: port,
        source_address: "1.2.3.4".into(),
        source_port: 1024,
    }
}

#[test]
fn channel_open_accepted_or_refused() {
    let now = Instant::now();
    let mut d = ready(now);
    d.handle_input(
        now,
        include_bytes!("../../test_data/channel_open_first.bin"),
    )
    .expect("ok");
    assert_eq!(
        sent(&mut d),
        vec![Message::ChannelOpenConfirmation {
            recipient: 4,
            sender: FIRST_DEVICE_CHANNEL_ID,
            window: DEFAULT_CHANNEL_WINDOW,
            max_packet: u32::MAX
        }]
    );
    assert_eq!(
        events(&mut d),
        vec![DeviceEvent::ChannelOpened {
            id: ChannelId(FIRST_DEVICE_CHANNEL_ID),
            port: 16992,
            source_address: "1.2.3.4".into(),
            source_port: 1024
        }]
    );
    let mut session = open(16992);
    if let Message::ChannelOpen { channel_type, .. } = &mut session {
        *channel_type = "session".into();
    }
    feed(&mut d, now, &[open(16994), session]).expect("ok");
    let failures: Vec<_> = sent(&mut d)
        .into_iter()
        .map(|m| match m {
            Message::ChannelOpenFailure {
                recipient: 4,
                reason,
                description,
                language,
            } => {
                assert!(description.is_empty() && language.is_empty());
                reason
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        failures,
        vec![
            ChannelOpenFailureReason::CONNECT_FAILED,
            ChannelOpenFailureReason::UNKNOWN_CHANNEL_TYPE
        ]
    );
    assert_eq!(d.channel_count(), 1);
}

#[test]
fn server_disconnect() {
    let now = Instant::now();
    let mut d = ready(now);
    feed(
        &mut d,
        now,
        &[Message::Disconnect {
            reason: DisconnectReason::BY_APPLICATION,
        }],
    )
    .expect("ok");
    assert!(d.is_closed());
    assert_eq!(d.poll_timeout(), None);
    assert_eq!(
        events(&mut d),
        vec![DeviceEvent::PeerDisconnected {
            reason: DisconnectReason::BY_APPLICATION
        }]
    );
}

#[test]
fn device_session_is_small() {
    let size = std::mem::size_of::<DeviceSession>();
    assert!(size <= 400, "{size}");
}
