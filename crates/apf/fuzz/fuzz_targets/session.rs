//! Fuzz target: arbitrary input chunks to a server and a device session never panic, and
//! errors always end in the mapped DISCONNECT.
#![no_main]

use std::sync::OnceLock;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;

/// The sessions only compare instants, so one base for the whole run keeps inputs
/// reproducible.
static BASE: OnceLock<Instant> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let base = *BASE.get_or_init(Instant::now);
    homeport_apf::fuzzing::session(base, data);
});
