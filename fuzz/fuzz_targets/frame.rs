//! The streaming frame decoder, then the frame's message as request and response.
//! The property lives in `spate_protocol::fuzzing::frame`, shared with the stable smoke test.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = spate_protocol::fuzzing::frame(data);
});
