//! Fuzz target: decoding arbitrary bytes never panics and honours the prefix rule.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    homeport_apf::fuzzing::decode(data);
});
