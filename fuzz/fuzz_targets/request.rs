//! Request payload decoding: the first two input bytes pick the opcode.
//! The property lives in `spate_protocol::fuzzing::request`, shared with the stable smoke test.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = spate_protocol::fuzzing::request(data);
});
