//! Channel table tests, including randomised window bookkeeping with a deterministic PRNG.

use super::*;
use crate::codec::{decode, DecodeContext};
use crate::fuzzing::Rng;

fn frames(out: &mut Vec<u8>) -> Vec<Message> {
    let bytes = std::mem::take(out);
    let mut pos = 0;
    let mut found = Vec::new();
    while let Some(rest) = bytes.get(pos..).filter(|r| !r.is_empty()) {
        let (m, used) = decode(rest, DecodeContext::default())
            .expect("we only encode valid frames")
            .expect("we only encode whole frames");
        found.push(m);
        pos += used;
    }
    found
}

/// Delivers our encoded frames to the other table, returning the outcomes and checking the
/// chunk limit on the way.
fn deliver(
    from_out: &mut Vec<u8>,
    to: &mut Channels,
    to_out: &mut Vec<u8>,
    max_chunk: usize,
) -> Result<Vec<Outcome>, SessionError> {
    let mut outcomes = Vec::new();
    for m in frames(from_out) {
        let outcome = match m {
            Message::ChannelData { recipient, data } => {
                assert!(!data.is_empty(), "empty data frames are never sent");
                assert!(data.len() <= max_chunk, "{} > {max_chunk}", data.len());
                to.on_data(recipient, data, to_out)?
            }
            Message::ChannelWindowAdjust { recipient, bytes } => {
                to.on_window_adjust(recipient, bytes, to_out)?;
                Outcome::Nothing
            }
            Message::ChannelClose { recipient } => to.on_close(recipient, to_out)?,
            other => panic!("unexpected {other:?}"),
        };
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

struct Pair {
    a: Channels,
    b: Channels,
    a_out: Vec<u8>,
    b_out: Vec<u8>,
    a_id: ChannelId,
    b_id: ChannelId,
}

/// `a` opens a channel, `b` accepts it, `a` sees the confirmation.
fn open_pair(a_window: u32, b_window: u32, a_max: u32, b_max: u32) -> Pair {
    let mut a = Channels::new(4, a_window);
    let mut b = Channels::new(1, b_window);
    let mut a_out = Vec::new();
    let a_id = a.open_outbound().expect("room");
    let b_id = b.accept_inbound(a_id.0, a_window, a_max).expect("room");
    let outcome = a
        .on_confirmation(a_id.0, b_id.0, b_window, b_max, &mut a_out)
        .expect("opening");
    assert_eq!(outcome, Outcome::Opened(a_id));
    Pair {
        a,
        b,
        a_out,
        b_out: Vec::new(),
        a_id,
        b_id,
    }
}

#[test]
fn window_adjust_after_more_than_half() {
    let mut p = open_pair(32768, 32768, u32::MAX, u32::MAX);
    let mut out = Vec::new();
    let r = p.a.on_data(p.a_id.0, vec![1; 16384], &mut out);
    assert_eq!(r, Ok(Outcome::Data(p.a_id, vec![1; 16384])));
    assert!(out.is_empty(), "exactly half does not trigger an adjust");
    let r = p.a.on_data(p.a_id.0, vec![2], &mut out);
    assert_eq!(r, Ok(Outcome::Data(p.a_id, vec![2])));
    assert_eq!(
        frames(&mut out),
        vec![Message::ChannelWindowAdjust {
            recipient: p.b_id.0,
            bytes: 16385
        }]
    );
    // The refilled window admits a full window again, but not one byte more.
    assert!(p.a.on_data(p.a_id.0, vec![3; 32768], &mut out).is_ok());
}

#[test]
fn data_for_unknown_ids_is_ignored_and_counted() {
    let mut t = Channels::new(4, 100);
    let mut out = Vec::new();
    assert_eq!(t.on_data(9, vec![1], &mut out), Ok(Outcome::Nothing));
    assert_eq!(t.on_window_adjust(9, 1, &mut out), Ok(()));
    assert_eq!(t.on_close(9, &mut out), Ok(Outcome::Nothing));
    assert_eq!(
        t.on_confirmation(9, 1, 1, 1, &mut out),
        Ok(Outcome::Nothing)
    );
    assert_eq!(t.stray_messages(), 4);
    assert!(out.is_empty());
}

#[test]
fn data_beyond_the_window_ends_only_that_channel() {
    let mut p = open_pair(100, 100, u32::MAX, u32::MAX);
    let other = p.a.open_outbound().expect("room");
    let mut out = Vec::new();
    p.a.on_confirmation(other.0, 7, 100, u32::MAX, &mut out)
        .expect("opening");
    assert!(p.a.on_data(p.a_id.0, vec![0; 40], &mut out).is_ok());
    let r = p.a.on_data(p.a_id.0, vec![0; 61], &mut out);
    assert_eq!(
        r,
        Ok(Outcome::Aborted(
            p.a_id,
            ChannelAbort::WindowExceeded {
                received: 61,
                window: 60
            }
        ))
    );
    // Our CLOSE went out and the entry is gone; the peer's late data is a counted stray.
    assert_eq!(
        frames(&mut out),
        vec![Message::ChannelClose {
            recipient: p.b_id.0
        }]
    );
    assert_eq!(p.a.len(), 1);
    assert_eq!(
        p.a.on_data(p.a_id.0, vec![1], &mut out),
        Ok(Outcome::Nothing)
    );
    assert_eq!(p.a.stray_messages(), 1);
    // The other channel is untouched.
    assert_eq!(
        p.a.on_data(other.0, vec![5; 10], &mut out),
        Ok(Outcome::Data(other, vec![5; 10]))
    );
}

#[test]
fn close_answering_an_open_is_an_open_failure() {
    let mut t = Channels::new(4, 100);
    let mut out = Vec::new();
    let id = t.open_outbound().expect("room");
    assert_eq!(
        t.on_close(id.0, &mut out),
        Ok(Outcome::OpenFailed(
            id,
            ChannelOpenFailureReason::CONNECT_FAILED
        ))
    );
    assert_eq!(t.len(), 0);
    assert!(
        out.is_empty(),
        "nothing to answer: the peer's id is unknown"
    );
}

#[test]
fn window_adjust_overflow_is_a_protocol_error() {
    let mut p = open_pair(100, u32::MAX - 5, u32::MAX, u32::MAX);
    let mut out = Vec::new();
    assert_eq!(p.a.on_window_adjust(p.a_id.0, 5, &mut out), Ok(()));
    assert_eq!(
        p.a.on_window_adjust(p.a_id.0, 1, &mut out),
        Err(SessionError::WindowOverflow { channel: p.a_id })
    );
}

#[test]
fn sending_respects_credits_and_max_packet() {
    let mut p = open_pair(32768, 1000, u32::MAX, 300);
    p.a.send(p.a_id, &[7; 2500], &mut p.a_out).expect("open");
    let sent: Vec<usize> = frames(&mut p.a_out)
        .into_iter()
        .map(|m| match m {
            Message::ChannelData { recipient, data } => {
                assert_eq!(recipient, p.b_id.0);
                data.len()
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(sent, vec![300, 300, 300, 100]);
    assert_eq!(p.a.queued_bytes(p.a_id), Some(1500));
    p.a.on_window_adjust(p.a_id.0, 450, &mut p.a_out)
        .expect("fits");
    assert_eq!(frames(&mut p.a_out).len(), 2);
    assert_eq!(p.a.queued_bytes(p.a_id), Some(1050));
}

#[test]
fn close_while_opening_is_deferred_until_confirmation_and_data_drained() {
    let mut a = Channels::new(4, 1000);
    let mut out = Vec::new();
    let id = a.open_outbound().expect("room");
    a.send(id, b"hello", &mut out).expect("queued");
    a.close(id, &mut out).expect("deferred");
    assert!(
        out.is_empty(),
        "nothing may be sent before the confirmation"
    );
    assert_eq!(
        a.send(id, b"more", &mut out),
        Err(ChannelError::Closing(id))
    );
    a.on_confirmation(id.0, 77, 3, 0, &mut out)
        .expect("confirm");
    assert_eq!(
        frames(&mut out),
        vec![Message::ChannelData {
            recipient: 77,
            data: b"hel".to_vec()
        }]
    );
    a.on_window_adjust(id.0, 10, &mut out).expect("adjust");
    assert_eq!(
        frames(&mut out),
        vec![
            Message::ChannelData {
                recipient: 77,
                data: b"lo".to_vec()
            },
            Message::ChannelClose { recipient: 77 }
        ]
    );
    // Closing again sends nothing more; the peer's CLOSE removes the entry without a reply.
    a.close(id, &mut out).expect("idempotent");
    assert!(out.is_empty());
    assert_eq!(a.on_close(id.0, &mut out), Ok(Outcome::Closed(id)));
    assert!(out.is_empty());
    assert_eq!(a.len(), 0, "no leak when we closed first");
}

#[test]
fn peer_close_is_answered_once_and_removed() {
    let mut p = open_pair(1000, 1000, u32::MAX, u32::MAX);
    let mut out = Vec::new();
    assert_eq!(
        p.b.on_close(p.b_id.0, &mut out),
        Ok(Outcome::Closed(p.b_id))
    );
    assert_eq!(
        frames(&mut out),
        vec![Message::ChannelClose {
            recipient: p.a_id.0
        }]
    );
    assert_eq!(p.b.len(), 0);
    assert_eq!(
        p.b.send(p.b_id, b"x", &mut out),
        Err(ChannelError::UnknownChannel(p.b_id))
    );
}

#[test]
fn open_failure_removes_the_channel() {
    let mut a = Channels::new(4, 1000);
    let id = a.open_outbound().expect("room");
    assert_eq!(
        a.on_open_failure(id.0, ChannelOpenFailureReason::CONNECT_FAILED),
        Ok(Outcome::OpenFailed(
            id,
            ChannelOpenFailureReason::CONNECT_FAILED
        ))
    );
    assert_eq!(a.len(), 0);
}

#[test]
fn messages_for_an_unconfirmed_channel_are_protocol_errors() {
    let mut a = Channels::new(4, 1000);
    let mut out = Vec::new();
    let id = a.open_outbound().expect("room");
    assert!(a.on_data(id.0, vec![1], &mut out).is_err());
    assert!(a.on_window_adjust(id.0, 1, &mut out).is_err());
    a.on_confirmation(id.0, 1, 1, 1, &mut out).expect("confirm");
    assert!(a.on_confirmation(id.0, 1, 1, 1, &mut out).is_err());
    assert!(a
        .on_open_failure(id.0, ChannelOpenFailureReason::CONNECT_FAILED)
        .is_err());
}

#[test]
fn ids_start_at_first_id_increase_and_wrap_skipping_used_ones() {
    let mut t = Channels::new(4, 1);
    assert_eq!(t.open_outbound(), Ok(ChannelId(4)));
    assert_eq!(t.open_outbound(), Ok(ChannelId(5)));
    t.map.remove(&4);
    assert_eq!(t.open_outbound(), Ok(ChannelId(6)), "ids are not reused");
    t.next_id = u32::MAX;
    assert_eq!(t.open_outbound(), Ok(ChannelId(u32::MAX)));
    // Wraps to 4 (free again), then skips 5 and 6, which are in use.
    assert_eq!(t.open_outbound(), Ok(ChannelId(4)));
    assert_eq!(t.open_outbound(), Ok(ChannelId(7)));
}

#[test]
fn the_table_is_bounded() {
    let mut t = Channels::new(0, 1);
    for _ in 0..MAX_CHANNELS {
        t.open_outbound().expect("room");
    }
    assert_eq!(t.open_outbound(), Err(ChannelError::TooManyChannels));
    assert_eq!(
        t.accept_inbound(1, 1, 1),
        Err(ChannelError::TooManyChannels)
    );
}

/// Random sends in both directions, random delivery batching, random windows and packet
/// sizes: nothing exceeds a window (the receiver would fail), nothing is lost or reordered,
/// every frame respects the chunk limit, and all queues drain.
#[test]
fn randomised_window_bookkeeping() {
    let mut rng = Rng::new(0x5eed_1234);
    for round in 0..200 {
        let a_window = rng.range(1, 70_000) as u32;
        let b_window = rng.range(1, 70_000) as u32;
        let pick_max = |rng: &mut Rng| match rng.below(4) {
            0 => 0,
            1 => u32::MAX,
            _ => rng.range(1, 5000) as u32,
        };
        let a_max = pick_max(&mut rng);
        let b_max = pick_max(&mut rng);
        let mut p = open_pair(a_window, b_window, a_max, b_max);
        let (mut a_sent, mut b_sent) = (Vec::new(), Vec::new());
        let (mut a_got, mut b_got) = (Vec::new(), Vec::new());
        let collect = |outcomes: Vec<Outcome>, into: &mut Vec<u8>| {
            for o in outcomes {
                match o {
                    Outcome::Data(_, d) => into.extend(d),
                    Outcome::Nothing => {}
                    other => panic!("{other:?}"),
                }
            }
        };
        for _ in 0..rng.range(1, 60) {
            match rng.below(4) {
                0 => {
                    let len = rng.below(20_000) as usize;
                    let chunk = rng.bytes(len);
                    a_sent.extend_from_slice(&chunk);
                    p.a.send(p.a_id, &chunk, &mut p.a_out).expect("open");
                }
                1 => {
                    let len = rng.below(20_000) as usize;
                    let chunk = rng.bytes(len);
                    b_sent.extend_from_slice(&chunk);
                    p.b.send(p.b_id, &chunk, &mut p.b_out).expect("open");
                }
                2 => {
                    let got = deliver(&mut p.a_out, &mut p.b, &mut p.b_out, max_chunk(b_max))
                        .unwrap_or_else(|e| panic!("round {round}: {e}"));
                    collect(got, &mut b_got);
                }
                _ => {
                    let got = deliver(&mut p.b_out, &mut p.a, &mut p.a_out, max_chunk(a_max))
                        .unwrap_or_else(|e| panic!("round {round}: {e}"));
                    collect(got, &mut a_got);
                }
            }
        }
        // Drain: keep pumping until both sides are quiet.
        while !p.a_out.is_empty() || !p.b_out.is_empty() {
            let got = deliver(&mut p.a_out, &mut p.b, &mut p.b_out, max_chunk(b_max))
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            collect(got, &mut b_got);
            let got = deliver(&mut p.b_out, &mut p.a, &mut p.a_out, max_chunk(a_max))
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            collect(got, &mut a_got);
        }
        assert_eq!(b_got.len(), a_sent.len(), "round {round}");
        assert!(b_got == a_sent, "round {round}: a→b bytes differ");
        assert!(a_got == b_sent, "round {round}: b→a bytes differ");
        assert_eq!(p.a.queued_bytes(p.a_id), Some(0));
        assert_eq!(p.b.queued_bytes(p.b_id), Some(0));
    }
}
