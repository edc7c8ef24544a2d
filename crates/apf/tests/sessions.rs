//! A ServerSession and a DeviceSession talking to each other in memory on a simulated clock.

use std::time::{Duration, Instant};

use homeport_apf::{
    decode, ChannelId, ChannelOpenFailureReason, DecodeContext, DecodeError, DeviceConfig,
    DeviceEvent, DeviceSession, DisconnectReason, Message, MessageType, Secret, ServerConfig,
    ServerEvent, ServerSession, SessionError,
};

const GUID_WIRE: [u8; 16] = [
    0x44, 0x45, 0x4C, 0x4C, 0x4B, 0x00, 0x10, 0x42, 0x80, 0x33, 0xB6, 0xC0, 0x4F, 0x50, 0x46, 0x33,
];
const GUID: &str = "4c4c4544-004b-4210-8033-b6c04f504633";
const PASSWORD: &str = "Str0ng!Pass";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Delivery {
    /// Everything pending, in one call.
    Coalesced,
    /// One `handle_input` call per byte.
    ByteAtATime,
}

/// Two sessions, the bytes between them, what each application saw, and a simulated clock.
struct Net {
    now: Instant,
    server: ServerSession,
    device: DeviceSession,
    delivery: Delivery,
    server_events: Vec<ServerEvent>,
    device_events: Vec<DeviceEvent>,
    server_errors: Vec<SessionError>,
    device_errors: Vec<SessionError>,
    /// Every message that crossed the wire, in order, with its direction.
    to_server: Vec<Message>,
    to_device: Vec<Message>,
    /// When false the server application never decides on authentication.
    decide_auth: bool,
    /// The device retries authentication after a failure.
    retry_auth: bool,
}

fn device_config() -> DeviceConfig {
    DeviceConfig {
        forward_address: "amt-host.example".into(),
        ..DeviceConfig::new(GUID_WIRE, "cira-user", Secret::new(PASSWORD))
    }
}

impl Net {
    fn new(server: ServerConfig, device: DeviceConfig, delivery: Delivery) -> Self {
        let now = Instant::now();
        Self {
            now,
            server: ServerSession::new(server, now),
            device: DeviceSession::new(device, now),
            delivery,
            server_events: Vec::new(),
            device_events: Vec::new(),
            server_errors: Vec::new(),
            device_errors: Vec::new(),
            to_server: Vec::new(),
            to_device: Vec::new(),
            decide_auth: true,
            retry_auth: false,
        }
    }

    fn default_pair() -> Self {
        Self::new(
            ServerConfig::default(),
            device_config(),
            Delivery::Coalesced,
        )
    }

    fn ready_pair() -> Self {
        let mut net = Self::default_pair();
        net.pump();
        assert!(net.server.is_ready() && net.device.is_ready());
        net
    }

    /// Moves bytes both ways and lets both applications react, until nothing moves.
    fn pump(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            if let Some(bytes) = self.device.poll_transmit() {
                moved = true;
                tap(&bytes, false, &mut self.to_server);
                let r = deliver(self.delivery, &bytes, |b| {
                    self.server.handle_input(self.now, b)
                });
                self.server_errors.extend(r.err());
            }
            if let Some(bytes) = self.server.poll_transmit() {
                moved = true;
                tap(&bytes, true, &mut self.to_device);
                let r = deliver(self.delivery, &bytes, |b| {
                    self.device.handle_input(self.now, b)
                });
                self.device_errors.extend(r.err());
            }
            self.react();
            if !moved {
                return;
            }
        }
        panic!("the sessions never went quiet");
    }

    fn react(&mut self) {
        while let Some(event) = self.server.poll_event() {
            if let ServerEvent::AuthRequest { username, password } = &event {
                if self.decide_auth {
                    if username == "cira-user" && password.expose() == PASSWORD {
                        assert!(self.server.accept_auth());
                    } else {
                        assert!(self.server.reject_auth());
                    }
                }
            }
            self.server_events.push(event);
        }
        while let Some(event) = self.device.poll_event() {
            // The last failure arrives together with the DISCONNECT.
            if event == DeviceEvent::AuthFailed && self.retry_auth && !self.device.is_closed() {
                assert!(self.device.retry_auth());
            }
            self.device_events.push(event);
        }
    }

    /// Advances the simulated clock by `by`, firing every timeout on the way in order.
    fn advance(&mut self, by: Duration) {
        let target = self.now + by;
        for _ in 0..100_000 {
            let next = [self.server.poll_timeout(), self.device.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(t) if t <= target => {
                    self.now = self.now.max(t);
                    self.server.handle_timeout(self.now);
                    self.device.handle_timeout(self.now);
                    self.pump();
                }
                _ => {
                    self.now = target;
                    return;
                }
            }
        }
        panic!("timeouts never settled");
    }

    fn count_to_server(&self, ty: MessageType) -> usize {
        self.to_server
            .iter()
            .filter(|m| m.message_type() == ty)
            .count()
    }

    fn count_to_device(&self, ty: MessageType) -> usize {
        self.to_device
            .iter()
            .filter(|m| m.message_type() == ty)
            .count()
    }

    /// Opens a channel to `port` from the server and returns the ids of both ends.
    fn open(&mut self, port: u32) -> (ChannelId, ChannelId) {
        let server_id = self.server.open_channel(port).expect("authenticated");
        self.pump();
        assert!(self
            .server_events
            .contains(&ServerEvent::ChannelOpened { id: server_id }));
        let device_id = self
            .device_events
            .iter()
            .rev()
            .find_map(|e| match e {
                DeviceEvent::ChannelOpened { id, port: p, .. } if *p == port => Some(*id),
                _ => None,
            })
            .expect("the device saw the open");
        (server_id, device_id)
    }

    fn server_data(&self, id: ChannelId) -> Vec<u8> {
        self.server_events
            .iter()
            .filter_map(|e| match e {
                ServerEvent::ChannelData { id: i, data } if *i == id => Some(data.as_slice()),
                _ => None,
            })
            .flatten()
            .copied()
            .collect()
    }

    fn device_data(&self, id: ChannelId) -> Vec<u8> {
        self.device_events
            .iter()
            .filter_map(|e| match e {
                DeviceEvent::ChannelData { id: i, data } if *i == id => Some(data.as_slice()),
                _ => None,
            })
            .flatten()
            .copied()
            .collect()
    }
}

fn deliver(
    delivery: Delivery,
    bytes: &[u8],
    mut input: impl FnMut(&[u8]) -> Result<(), SessionError>,
) -> Result<(), SessionError> {
    match delivery {
        Delivery::Coalesced => input(bytes),
        Delivery::ByteAtATime => bytes.chunks(1).try_for_each(input),
    }
}

/// Decodes what crossed the wire for the assertions (both sides send whole frames).
fn tap(bytes: &[u8], to_device: bool, log: &mut Vec<Message>) {
    let ctx = DecodeContext {
        request_success_has_port: to_device,
        ..DecodeContext::default()
    };
    let mut pos = 0;
    while let Some(rest) = bytes.get(pos..).filter(|r| !r.is_empty()) {
        let (m, used) = decode(rest, ctx)
            .expect("sessions send valid frames")
            .expect("sessions send whole frames");
        log.push(m);
        pos += used;
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn full_handshake_to_ready() {
    let net = Net::ready_pair();
    assert_eq!(
        net.server_events,
        vec![
            ServerEvent::ProtocolVersion {
                guid: GUID.into(),
                major: 1,
                minor: 0
            },
            ServerEvent::AuthRequest {
                username: "cira-user".into(),
                password: Secret::new(PASSWORD)
            },
            ServerEvent::Ready {
                forwarded_ports: vec![16993, 16992, 664, 623, 16995, 16994, 5900]
            },
        ]
    );
    assert_eq!(
        net.device_events,
        vec![DeviceEvent::Authenticated, DeviceEvent::Ready]
    );
    assert_eq!(net.server.guid().as_deref(), Some(GUID));
    assert_eq!(net.device.keepalive_interval(), Duration::from_secs(30));
    assert_eq!(net.count_to_server(MessageType::KEEPALIVE_OPTIONS_REPLY), 1);
    assert!(net.server_errors.is_empty() && net.device_errors.is_empty());
}

#[test]
fn wrong_password_rejected_three_times_then_invalid_credentials() {
    let mut net = Net::new(
        ServerConfig::default(),
        DeviceConfig {
            password: Secret::new("wrong"),
            ..device_config()
        },
        Delivery::Coalesced,
    );
    net.retry_auth = true;
    net.pump();
    assert_eq!(net.count_to_server(MessageType::USERAUTH_REQUEST), 3);
    assert_eq!(net.count_to_device(MessageType::USERAUTH_FAILURE), 3);
    assert_eq!(
        net.device_events,
        vec![
            DeviceEvent::AuthFailed,
            DeviceEvent::AuthFailed,
            DeviceEvent::AuthFailed,
            DeviceEvent::PeerDisconnected {
                reason: DisconnectReason::INVALID_CREDENTIALS
            }
        ]
    );
    assert_eq!(
        net.to_device.last(),
        Some(&Message::Disconnect {
            reason: DisconnectReason::INVALID_CREDENTIALS
        })
    );
    assert!(net.server.is_closed() && net.device.is_closed());
}

#[test]
fn channel_transfers_more_than_the_window_both_ways() {
    let mut net = Net::ready_pair();
    let (sid, did) = net.open(16992);
    let request = pattern(200 * 1024, 1);
    let response = pattern(200 * 1024 + 17, 2);
    net.server.send_data(sid, &request).expect("open");
    net.pump();
    assert_eq!(net.device_data(did), request);
    net.device.send_data(did, &response).expect("open");
    net.pump();
    assert_eq!(net.server_data(sid), response);

    // Flow control did the work: adjusts both ways, no frame beyond the 32 KiB window.
    assert!(net.count_to_server(MessageType::CHANNEL_WINDOW_ADJUST) >= 6);
    assert!(net.count_to_device(MessageType::CHANNEL_WINDOW_ADJUST) >= 6);
    for m in net.to_server.iter().chain(&net.to_device) {
        if let Message::ChannelData { data, .. } = m {
            assert!(data.len() <= 32768, "{}", data.len());
        }
    }
    assert_eq!(net.server.queued_bytes(sid), Some(0));

    net.server.close_channel(sid).expect("open");
    net.pump();
    assert!(net
        .server_events
        .contains(&ServerEvent::ChannelClosed { id: sid }));
    assert!(net
        .device_events
        .contains(&DeviceEvent::ChannelClosed { id: did }));
    assert_eq!(net.count_to_device(MessageType::CHANNEL_CLOSE), 1);
    assert_eq!(net.count_to_server(MessageType::CHANNEL_CLOSE), 1);
    assert_eq!(
        (net.server.channel_count(), net.device.channel_count()),
        (0, 0)
    );
    assert!(net.server_errors.is_empty() && net.device_errors.is_empty());
}

#[test]
fn many_sequential_channels_do_not_leak() {
    let mut net = Net::ready_pair();
    for i in 0..50u32 {
        let (sid, did) = net.open(16992);
        assert_eq!(sid, ChannelId(4 + i));
        net.server.send_data(sid, b"GET /wsman").expect("open");
        net.pump();
        net.device.send_data(did, b"HTTP/1.1 401").expect("open");
        if i % 2 == 0 {
            net.server.close_channel(sid).expect("open");
        } else {
            net.device.close_channel(did).expect("open");
        }
        net.pump();
        assert_eq!(
            (net.server.channel_count(), net.device.channel_count()),
            (0, 0)
        );
    }
}

#[test]
fn channel_to_a_port_the_device_does_not_accept_fails() {
    let mut net = Net::ready_pair();
    let id = net.server.open_channel(16994).expect("authenticated");
    net.pump();
    assert_eq!(
        net.server_events.last(),
        Some(&ServerEvent::ChannelOpenFailed {
            id,
            reason: ChannelOpenFailureReason::CONNECT_FAILED
        })
    );
    assert_eq!(net.server.channel_count(), 0);
    assert_eq!(
        net.server.send_data(id, b"x"),
        Err(homeport_apf::ChannelError::UnknownChannel(id))
    );
}

#[test]
fn keepalives_over_simulated_time() {
    let mut net = Net::ready_pair();
    net.advance(Duration::from_secs(10 * 60));
    let keepalives = net
        .server_events
        .iter()
        .filter(|e| **e == ServerEvent::KeepAlive)
        .count();
    assert_eq!(keepalives, 20, "one per 30 s interval");
    assert_eq!(net.device.keepalive_replies(), 20);
    assert!(!net.server.is_closed() && !net.device.is_closed());
    let cookies: Vec<u32> = net
        .to_server
        .iter()
        .filter_map(|m| match m {
            Message::KeepaliveRequest { cookie } => Some(*cookie),
            _ => None,
        })
        .collect();
    assert_eq!(cookies, (0..20).collect::<Vec<_>>());
}

#[test]
fn idle_timeout_when_the_device_is_silent() {
    // With the default 30 s interval the silent device would also give up on the link at
    // 90 s (it hears nothing either); 45 s moves its deadline to 135 s.
    let mut net = Net::new(
        ServerConfig {
            keepalive_interval: Duration::from_secs(45),
            ..ServerConfig::default()
        },
        DeviceConfig {
            send_keepalives: false,
            ..device_config()
        },
        Delivery::Coalesced,
    );
    net.pump();
    assert!(net.server.is_ready());
    let ready_at = net.now;
    net.advance(Duration::from_secs(89));
    assert!(!net.server.is_closed());
    net.advance(Duration::from_secs(1));
    assert!(net.server.is_closed());
    assert_eq!(net.server_events.last(), Some(&ServerEvent::IdleTimeout));
    assert_eq!(net.now - ready_at, Duration::from_secs(90));
    assert_eq!(
        net.device_events.last(),
        Some(&DeviceEvent::PeerDisconnected {
            reason: DisconnectReason::CONNECTION_TIMED_OUT
        })
    );
    assert_eq!(net.count_to_server(MessageType::KEEPALIVE_REQUEST), 0);
}

#[test]
fn handshake_timeout_when_auth_is_never_decided() {
    let mut net = Net::default_pair();
    net.decide_auth = false;
    net.pump();
    net.advance(Duration::from_secs(30));
    assert_eq!(
        net.server_events.last(),
        Some(&ServerEvent::HandshakeTimeout)
    );
    assert_eq!(
        net.device_events.last(),
        Some(&DeviceEvent::PeerDisconnected {
            reason: DisconnectReason::CONNECTION_TIMED_OUT
        })
    );
}

/// Handshake, a channel exchange, a close and some keep-alives; returns what both
/// applications saw.
fn scripted_run(
    delivery: Delivery,
) -> (
    Vec<ServerEvent>,
    Vec<DeviceEvent>,
    Vec<Message>,
    Vec<Message>,
) {
    let mut net = Net::new(ServerConfig::default(), device_config(), delivery);
    net.pump();
    let (sid, did) = net.open(16992);
    net.server
        .send_data(sid, &pattern(70_000, 3))
        .expect("open");
    net.pump();
    net.device
        .send_data(did, &pattern(40_000, 4))
        .expect("open");
    net.device.close_channel(did).expect("open");
    net.pump();
    net.advance(Duration::from_secs(95));
    assert!(net.server_errors.is_empty() && net.device_errors.is_empty());
    (
        net.server_events,
        net.device_events,
        net.to_server,
        net.to_device,
    )
}

#[test]
fn byte_at_a_time_and_coalesced_delivery_agree() {
    let coalesced = scripted_run(Delivery::Coalesced);
    let bytewise = scripted_run(Delivery::ByteAtATime);
    assert!(coalesced.0.len() > 5 && coalesced.1.len() > 5);
    // Data events are split differently; compare everything else and the bytes per channel.
    let merge_server = |events: &[ServerEvent]| {
        let mut out: Vec<ServerEvent> = Vec::new();
        for e in events {
            if let (
                Some(ServerEvent::ChannelData { id: a, data: acc }),
                ServerEvent::ChannelData { id: b, data },
            ) = (out.last_mut(), e)
            {
                if a == b {
                    acc.extend_from_slice(data);
                    continue;
                }
            }
            out.push(e.clone());
        }
        out
    };
    let merge_device = |events: &[DeviceEvent]| {
        let mut out: Vec<DeviceEvent> = Vec::new();
        for e in events {
            if let (
                Some(DeviceEvent::ChannelData { id: a, data: acc }),
                DeviceEvent::ChannelData { id: b, data },
            ) = (out.last_mut(), e)
            {
                if a == b {
                    acc.extend_from_slice(data);
                    continue;
                }
            }
            out.push(e.clone());
        }
        out
    };
    assert_eq!(merge_server(&coalesced.0), merge_server(&bytewise.0));
    assert_eq!(merge_device(&coalesced.1), merge_device(&bytewise.1));
    // The sessions decide what to send from whole messages only, so the wire is identical.
    assert_eq!(coalesced.2, bytewise.2);
    assert_eq!(coalesced.3, bytewise.3);
}

#[test]
fn garbage_first_byte_disconnects_with_protocol_error() {
    let mut server = ServerSession::new(ServerConfig::default(), Instant::now());
    let err = server
        .handle_input(Instant::now(), b"GET / HTTP/1.1\r\n\r\n")
        .expect_err("not APF");
    assert_eq!(err.disconnect_reason(), DisconnectReason::PROTOCOL_ERROR);
    assert_eq!(server.poll_transmit(), Some(vec![1, 0, 0, 0, 2, 0, 0]));
    assert!(server.is_closed());
}

#[test]
fn huge_declared_channel_data_fails_immediately() {
    let mut net = Net::ready_pair();
    let (sid, _) = net.open(16992);
    let mut frame = vec![94];
    frame.extend_from_slice(&sid.0.to_be_bytes());
    frame.extend_from_slice(&0x8000_0000u32.to_be_bytes());
    let err = net
        .server
        .handle_input(net.now, &frame)
        .expect_err("2 GiB is over the maximum");
    assert!(
        matches!(
            err,
            SessionError::Decode(DecodeError::TooLong {
                len: 0x8000_0000,
                ..
            })
        ),
        "{err:?}"
    );
    assert_eq!(net.server.poll_transmit(), Some(vec![1, 0, 0, 0, 2, 0, 0]));
}

#[test]
fn global_request_before_auth_is_a_protocol_error() {
    let mut server = ServerSession::new(ServerConfig::default(), Instant::now());
    let mut bytes = Vec::new();
    Message::ProtocolVersion {
        major: 1,
        minor: 0,
        trigger: 1,
        uuid: GUID_WIRE,
    }
    .encode(&mut bytes);
    bytes.extend_from_slice(include_bytes!(
        "../test_data/tcpip_forward_myhost_16992.bin"
    ));
    let err = server
        .handle_input(Instant::now(), &bytes)
        .expect_err("not authenticated");
    // Refused on its type byte, before its fields are read.
    assert_eq!(
        err,
        SessionError::Decode(DecodeError::NotAllowedNow(MessageType::GLOBAL_REQUEST))
    );
    assert_eq!(server.poll_transmit(), Some(vec![1, 0, 0, 0, 2, 0, 0]));
}

#[test]
fn window_overrun_by_a_peer_ends_only_its_channel() {
    let mut net = Net::ready_pair();
    let (sid, _) = net.open(16992);
    let mut frame = Vec::new();
    Message::ChannelData {
        recipient: sid.0,
        data: vec![0; 32769],
    }
    .encode(&mut frame);
    net.server
        .handle_input(net.now, &frame)
        .expect("the session stays up");
    assert!(!net.server.is_closed());
    assert_eq!(net.server.channel_count(), 0);
    assert!(matches!(
        net.server.poll_event(),
        Some(ServerEvent::ChannelAborted { id, .. }) if id == sid
    ));
}
