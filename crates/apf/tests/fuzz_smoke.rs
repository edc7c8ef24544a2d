//! Runs the fuzz target bodies (`homeport_apf::fuzzing`) on stable over a few thousand
//! deterministic mutations of golden frames, so CI exercises them without cargo-fuzz.

use std::time::Instant;

use homeport_apf::fuzzing::{self, Rng};

const ITERATIONS: usize = 3000;

fn golden_files() -> Vec<Vec<u8>> {
    vec![
        include_bytes!("../test_data/service_request_auth.bin").to_vec(),
        include_bytes!("../test_data/service_accept_auth.bin").to_vec(),
        include_bytes!("../test_data/userauth_request_admin.bin").to_vec(),
        include_bytes!("../test_data/tcpip_forward_myhost_16992.bin").to_vec(),
        include_bytes!("../test_data/channel_open_first.bin").to_vec(),
        include_bytes!("../test_data/protocol_version.bin").to_vec(),
        include_bytes!("../test_data/userauth_failure_mps.bin").to_vec(),
        include_bytes!("../test_data/request_success_16992.bin").to_vec(),
        include_bytes!("../test_data/request_success_bare.bin").to_vec(),
        include_bytes!("../test_data/keepalive_options_request_30_0.bin").to_vec(),
    ]
}

fn corpus() -> Vec<Vec<u8>> {
    let mut seeds = fuzzing::seed_inputs();
    seeds.extend(golden_files());
    seeds
}

/// A few mutation operators of the usual kind: flips, overwrites with interesting values,
/// insertions, deletions, truncation and splicing with another seed.
fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let pick = rng.below(seeds.len() as u64) as usize;
    let mut data = seeds.get(pick).cloned().unwrap_or_default();
    for _ in 0..rng.range(1, 5) {
        let len = data.len() as u64;
        let at = rng.below(len.max(1)) as usize;
        match rng.below(7) {
            0 => {
                if let Some(b) = data.get_mut(at) {
                    *b ^= 1 << rng.below(8);
                }
            }
            1 => {
                let interesting = [0x00, 0x01, 0x7f, 0x80, 0xff, 0x5e, 0x32, 0xc0];
                if let (Some(b), Some(&v)) = (
                    data.get_mut(at),
                    interesting.get(rng.below(interesting.len() as u64) as usize),
                ) {
                    *b = v;
                }
            }
            2 => {
                let n = rng.below(8) as usize;
                let bytes = rng.bytes(n);
                let at = at.min(data.len());
                data.splice(at..at, bytes);
            }
            3 => {
                if at < data.len() {
                    let end = (at + rng.below(8) as usize + 1).min(data.len());
                    data.drain(at..end);
                }
            }
            4 => data.truncate(at),
            5 => {
                let other = rng.below(seeds.len() as u64) as usize;
                data.extend(seeds.get(other).cloned().unwrap_or_default());
            }
            _ => {
                // Overwrite a u32 with a boundary length.
                let values = [0u32, 1, 2048, 2049, 1 << 20, (1 << 20) + 1, u32::MAX];
                let v = values
                    .get(rng.below(values.len() as u64) as usize)
                    .copied()
                    .unwrap_or(0);
                if at + 4 <= data.len() {
                    data.splice(at..at + 4, v.to_be_bytes());
                }
            }
        }
    }
    data
}

#[test]
fn decode_target_smoke() {
    let seeds = corpus();
    let mut rng = Rng::new(1);
    for seed in &seeds {
        fuzzing::decode(seed);
    }
    for _ in 0..ITERATIONS {
        fuzzing::decode(&mutate(&mut rng, &seeds));
    }
}

#[test]
fn round_trip_target_smoke() {
    let seeds = corpus();
    let mut rng = Rng::new(2);
    for seed in &seeds {
        fuzzing::round_trip(seed);
    }
    for _ in 0..ITERATIONS {
        fuzzing::round_trip(&mutate(&mut rng, &seeds));
    }
}

#[test]
fn session_target_smoke() {
    let seeds = corpus();
    let mut rng = Rng::new(3);
    let base = Instant::now();
    for seed in &seeds {
        for mode in 0..8u8 {
            let input = [&[mode][..], seed].concat();
            fuzzing::session(base, &input);
        }
    }
    for _ in 0..ITERATIONS {
        let mut input = mutate(&mut rng, &seeds);
        input.insert(0, rng.below(256) as u8);
        fuzzing::session(base, &input);
    }
}

#[test]
fn mutations_reach_decodable_and_erroneous_inputs() {
    // Guards the smoke tests against a mutator that only ever produces garbage (or nothing).
    let seeds = corpus();
    let mut rng = Rng::new(4);
    let (mut ok, mut err) = (0, 0);
    for _ in 0..ITERATIONS {
        let data = mutate(&mut rng, &seeds);
        match homeport_apf::decode(&data, Default::default()) {
            Ok(Some(_)) => ok += 1,
            Err(_) => err += 1,
            Ok(None) => {}
        }
    }
    assert!(ok > ITERATIONS / 10, "{ok}");
    assert!(err > ITERATIONS / 20, "{err}");
}
