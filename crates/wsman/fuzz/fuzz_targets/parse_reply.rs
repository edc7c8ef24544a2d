//! Fuzz target: any bytes a device sends back parse to a reply, a typed error, or a clean
//! model error; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    homeport_wsman::fuzzing::parse_reply(data);
});
