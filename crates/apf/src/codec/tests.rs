//! Codec unit tests: golden frames from openamt-mps.md §1.4, round trips, prefixes, limits.

use super::*;
use crate::fuzzing::sample_messages;

const WITH_PORT: DecodeContext = DecodeContext {
    request_success_has_port: true,
    max_string: MAX_STRING_LEN,
    max_channel_data: MAX_CHANNEL_DATA,
    only: None,
};
const NO_PORT: DecodeContext = DecodeContext {
    request_success_has_port: false,
    max_string: MAX_STRING_LEN,
    max_channel_data: MAX_CHANNEL_DATA,
    only: None,
};

fn ctx_for(m: &Message) -> DecodeContext {
    match m {
        Message::RequestSuccess { port: Some(_) } => WITH_PORT,
        _ => NO_PORT,
    }
}

fn decode_all(buf: &[u8], ctx: DecodeContext) -> (Message, usize) {
    match decode(buf, ctx) {
        Ok(Some(found)) => found,
        other => panic!("expected a message from {buf:02x?}, got {other:?}"),
    }
}

fn golden() -> Vec<(&'static str, &'static [u8], Message, DecodeContext)> {
    vec![
        (
            "service_request_auth",
            include_bytes!("../../test_data/service_request_auth.bin"),
            Message::ServiceRequest {
                service: SERVICE_AUTH.into(),
            },
            NO_PORT,
        ),
        (
            "service_accept_auth",
            include_bytes!("../../test_data/service_accept_auth.bin"),
            Message::ServiceAccept {
                service: SERVICE_AUTH.into(),
            },
            NO_PORT,
        ),
        (
            "userauth_request_admin",
            include_bytes!("../../test_data/userauth_request_admin.bin"),
            Message::UserauthRequest {
                username: "admin".into(),
                service: SERVICE_PFWD.into(),
                method: METHOD_PASSWORD.into(),
                password: Some(Secret::new("P@ssw0rd")),
            },
            NO_PORT,
        ),
        (
            "tcpip_forward_myhost_16992",
            include_bytes!("../../test_data/tcpip_forward_myhost_16992.bin"),
            Message::GlobalRequest {
                name: TCPIP_FORWARD.into(),
                want_reply: true,
                body: GlobalRequestBody::TcpipForward {
                    address: "myhost".into(),
                    port: 16992,
                },
            },
            NO_PORT,
        ),
        (
            "channel_open_first",
            include_bytes!("../../test_data/channel_open_first.bin"),
            Message::ChannelOpen {
                channel_type: FORWARDED_TCPIP.into(),
                sender: 4,
                window: 32768,
                max_packet: 0xFFFF_FFFF,
                target_address: String::new(),
                target_port: 16992,
                source_address: "1.2.3.4".into(),
                source_port: 1024,
            },
            NO_PORT,
        ),
        (
            "protocol_version",
            include_bytes!("../../test_data/protocol_version.bin"),
            Message::ProtocolVersion {
                major: 1,
                minor: 0,
                trigger: 4,
                uuid: [
                    0x44, 0x45, 0x4C, 0x4C, 0x4B, 0x00, 0x10, 0x42, 0x80, 0x33, 0xB6, 0xC0, 0x4F,
                    0x50, 0x46, 0x33,
                ],
            },
            NO_PORT,
        ),
        (
            "request_success_16992",
            include_bytes!("../../test_data/request_success_16992.bin"),
            Message::RequestSuccess { port: Some(16992) },
            WITH_PORT,
        ),
        (
            "request_success_bare",
            include_bytes!("../../test_data/request_success_bare.bin"),
            Message::RequestSuccess { port: None },
            NO_PORT,
        ),
        (
            "keepalive_options_request_30_0",
            include_bytes!("../../test_data/keepalive_options_request_30_0.bin"),
            Message::KeepaliveOptionsRequest {
                interval: 30,
                timeout: 0,
            },
            NO_PORT,
        ),
    ]
}

#[test]
fn golden_frames_decode_and_encode_byte_exact() {
    for (name, bytes, expected, ctx) in golden() {
        let (message, used) = decode_all(bytes, ctx);
        assert_eq!(message, expected, "{name}");
        assert_eq!(used, bytes.len(), "{name}");
        assert_eq!(expected.to_bytes(), bytes, "{name}");
    }
}

#[test]
fn golden_frame_sizes_match_the_reference() {
    let sizes: Vec<(&str, usize)> = golden().iter().map(|g| (g.0, g.1.len())).collect();
    assert!(sizes.contains(&("userauth_request_admin", 57)));
    assert!(sizes.contains(&("channel_open_first", 55)));
    assert!(sizes.contains(&("protocol_version", PROTOCOL_VERSION_LEN)));
    assert!(sizes.contains(&("service_accept_auth", 23)));
}

#[test]
fn mps_userauth_failure_decodes_as_14_bytes_leaving_one_zero() {
    let bytes = include_bytes!("../../test_data/userauth_failure_mps.bin");
    assert_eq!(bytes.len(), 15);
    let (message, used) = decode_all(bytes, NO_PORT);
    assert_eq!(
        message,
        Message::UserauthFailure {
            methods: METHOD_PASSWORD.into()
        }
    );
    assert_eq!(used, 14);
    assert_eq!(bytes.get(used..), Some(&[0u8][..]));
    // We send the spec layout, not the reference's.
    assert_eq!(message.to_bytes(), bytes.get(..14).unwrap_or_default());
    // The stray byte is not a message of its own.
    assert_eq!(
        decode(&[0], NO_PORT),
        Err(DecodeError::UnknownType(MessageType(0)))
    );
}

#[test]
fn every_sample_round_trips() {
    let samples = sample_messages();
    let mut types: Vec<MessageType> = samples.iter().map(Message::message_type).collect();
    types.sort();
    types.dedup();
    assert_eq!(types.len(), 20, "one sample per message type at least");
    for m in samples {
        let bytes = m.to_bytes();
        let (back, used) = decode_all(&bytes, ctx_for(&m));
        assert_eq!(back, m);
        assert_eq!(used, bytes.len(), "{m:?}");
        assert_eq!(back.to_bytes(), bytes);
    }
}

#[test]
fn every_strict_prefix_is_incomplete() {
    let mut frames: Vec<(Vec<u8>, DecodeContext)> = sample_messages()
        .iter()
        .map(|m| (m.to_bytes(), ctx_for(m)))
        .collect();
    frames.extend(golden().into_iter().map(|g| (g.1.to_vec(), g.3)));
    for (frame, ctx) in frames {
        for cut in 0..frame.len() {
            let prefix = frame.get(..cut).unwrap_or_default();
            assert_eq!(decode(prefix, ctx), Ok(None), "{frame:02x?} cut at {cut}");
        }
    }
}

#[test]
fn coalesced_frames_decode_one_after_another() {
    let samples: Vec<Message> = sample_messages()
        .into_iter()
        .filter(|m| ctx_for(m) == NO_PORT)
        .collect();
    let mut stream = Vec::new();
    for m in &samples {
        m.encode(&mut stream);
    }
    let mut pos = 0;
    for expected in &samples {
        let (m, used) = decode_all(stream.get(pos..).unwrap_or_default(), NO_PORT);
        assert_eq!(&m, expected);
        pos += used;
    }
    assert_eq!(pos, stream.len());
}

#[test]
fn huge_channel_data_length_fails_before_buffering() {
    // recipient 4, declared length 2 GiB, no payload at all yet.
    let frame = [0x5e, 0, 0, 0, 4, 0x80, 0, 0, 0];
    assert_eq!(
        decode(&frame, NO_PORT),
        Err(DecodeError::TooLong {
            field: "channel data",
            len: 0x8000_0000,
            max: MAX_CHANNEL_DATA
        })
    );
    // One byte over the maximum is rejected too, exactly the maximum is merely incomplete.
    let over = (MAX_CHANNEL_DATA as u32 + 1).to_be_bytes();
    let at = (MAX_CHANNEL_DATA as u32).to_be_bytes();
    let mut f = vec![0x5e, 0, 0, 0, 4];
    f.extend_from_slice(&over);
    assert!(matches!(
        decode(&f, NO_PORT),
        Err(DecodeError::TooLong { .. })
    ));
    let mut f = vec![0x5e, 0, 0, 0, 4];
    f.extend_from_slice(&at);
    assert_eq!(decode(&f, NO_PORT), Ok(None));
    f.resize(9 + MAX_CHANNEL_DATA, 0xAB);
    let (m, used) = decode_all(&f, NO_PORT);
    assert_eq!(used, f.len());
    assert!(
        matches!(m, Message::ChannelData { recipient: 4, ref data } if data.len() == MAX_CHANNEL_DATA)
    );
}

#[test]
fn long_strings_fail_before_buffering() {
    for ty in [5u8, 6, 50, 51, 80, 90] {
        let mut f = vec![ty];
        f.extend_from_slice(&(MAX_STRING_LEN as u32 + 1).to_be_bytes());
        assert!(
            matches!(decode(&f, NO_PORT), Err(DecodeError::TooLong { .. })),
            "type {ty}"
        );
    }
    let ok = Message::ServiceRequest {
        service: "x".repeat(MAX_STRING_LEN),
    };
    assert_eq!(decode_all(&ok.to_bytes(), NO_PORT).0, ok);
    // A long string in a later field (the password) is caught too.
    let mut f = Message::UserauthRequest {
        username: "u".into(),
        service: SERVICE_PFWD.into(),
        method: METHOD_PASSWORD.into(),
        password: None,
    }
    .to_bytes();
    f.push(0);
    f.extend_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        decode(&f, NO_PORT),
        Err(DecodeError::TooLong {
            field: "password",
            ..
        })
    ));
}

#[test]
fn udp_data_is_bounded() {
    let mut f = vec![0x50];
    put_str(&mut f, UDP_SEND_TO);
    f.push(0);
    put_str(&mut f, "a");
    put_u32(&mut f, 1);
    put_str(&mut f, "b");
    put_u32(&mut f, 2);
    put_u32(&mut f, MAX_GLOBAL_REQUEST_DATA as u32 + 1);
    assert!(matches!(
        decode(&f, NO_PORT),
        Err(DecodeError::TooLong {
            field: "udp data",
            ..
        })
    ));
}

#[test]
fn udp_send_to_layout_matches_reference_length() {
    let m = Message::GlobalRequest {
        name: UDP_SEND_TO.into(),
        want_reply: false,
        body: GlobalRequestBody::UdpSendTo {
            address: "10.0.0.1".into(),
            port: 623,
            originator_address: "host".into(),
            originator_port: 1000,
            data: vec![1, 2, 3],
        },
    };
    let bytes = m.to_bytes();
    // 26 + name + address + originator address + data (openamt-mps.md §1.6).
    assert_eq!(bytes.len(), 26 + UDP_SEND_TO.len() + 8 + 4 + 3);
    assert_eq!(decode_all(&bytes, NO_PORT), (m, bytes.len()));
}

#[test]
fn unknown_types_are_rejected() {
    for ty in [0u8, 2, 0x47, 53, 95, 96, 98, 193, 212, 255] {
        assert_eq!(
            decode(&[ty, 0, 0, 0, 0], NO_PORT),
            Err(DecodeError::UnknownType(MessageType(ty)))
        );
    }
    assert_eq!(decode(&[], NO_PORT), Ok(None));
}

#[test]
fn unknown_global_request_consumes_only_the_header() {
    let mut f = vec![0x50];
    put_str(&mut f, "keepalive@openssh.com");
    f.push(1);
    let header_len = f.len();
    f.extend_from_slice(&[0x61, 0x62]);
    let (m, used) = decode_all(&f, NO_PORT);
    assert_eq!(used, header_len);
    assert_eq!(
        m,
        Message::GlobalRequest {
            name: "keepalive@openssh.com".into(),
            want_reply: true,
            body: GlobalRequestBody::Unknown(Vec::new()),
        }
    );
}

#[test]
fn request_success_layout_depends_on_context() {
    let bytes = [0x51, 0, 0, 0x42, 0x60];
    assert_eq!(
        decode(&bytes, NO_PORT),
        Ok(Some((Message::RequestSuccess { port: None }, 1)))
    );
    assert_eq!(
        decode(&bytes, WITH_PORT),
        Ok(Some((Message::RequestSuccess { port: Some(16992) }, 5)))
    );
    assert_eq!(decode(&[0x51, 0], WITH_PORT), Ok(None));
}

#[test]
fn channel_open_failure_reads_both_strings() {
    let m = Message::ChannelOpenFailure {
        recipient: 7,
        reason: ChannelOpenFailureReason::CONNECT_FAILED,
        description: "refused".into(),
        language: "en".into(),
    };
    let bytes = m.to_bytes();
    assert_eq!(bytes.len(), 17 + 7 + 2);
    assert_eq!(decode_all(&bytes, NO_PORT), (m, bytes.len()));
}

#[test]
fn invalid_utf8_and_booleans_are_rejected() {
    let mut f = vec![0x05];
    put_bytes(&mut f, &[0xff, 0xfe]);
    assert_eq!(
        decode(&f, NO_PORT),
        Err(DecodeError::InvalidUtf8 {
            field: "service name"
        })
    );
    let mut f = vec![0x50];
    put_str(&mut f, TCPIP_FORWARD);
    f.push(2);
    assert_eq!(
        decode(&f, NO_PORT),
        Err(DecodeError::InvalidValue {
            field: "want reply",
            value: 2
        })
    );
    let mut f = vec![0x33];
    put_str(&mut f, METHOD_PASSWORD);
    f.push(1);
    assert!(matches!(
        decode(&f, NO_PORT),
        Err(DecodeError::Unsupported(_))
    ));
}

#[test]
fn userauth_methods() {
    let none = Message::UserauthRequest {
        username: "u".into(),
        service: SERVICE_PFWD.into(),
        method: "none".into(),
        password: None,
    };
    let bytes = none.to_bytes();
    assert_eq!(decode_all(&bytes, NO_PORT), (none, bytes.len()));

    let mut f = vec![0x32];
    put_str(&mut f, "u");
    put_str(&mut f, SERVICE_PFWD);
    put_str(&mut f, "publickey");
    assert!(matches!(
        decode(&f, NO_PORT),
        Err(DecodeError::Unsupported(_))
    ));

    let mut f = vec![0x32];
    put_str(&mut f, "u");
    put_str(&mut f, SERVICE_PFWD);
    put_str(&mut f, METHOD_PASSWORD);
    f.push(1);
    assert!(matches!(
        decode(&f, NO_PORT),
        Err(DecodeError::Unsupported(_))
    ));
}

#[test]
fn disconnect_is_seven_bytes_and_ignores_reserved() {
    let m = Message::Disconnect {
        reason: DisconnectReason::BY_APPLICATION,
    };
    assert_eq!(m.to_bytes(), [1, 0, 0, 0, 11, 0, 0]);
    assert_eq!(
        decode(&[1, 0, 0, 0, 11, 0xff, 0xff], NO_PORT),
        Ok(Some((m, 7)))
    );
}
