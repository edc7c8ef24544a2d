//! Fuzz target: decode → encode → decode gives the same message and the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    homeport_apf::fuzzing::round_trip(data);
});
