//! Response payload and error-body decoding, including the get-records record walk.
//! The property lives in `spate_protocol::fuzzing::response`, shared with the stable smoke test.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = spate_protocol::fuzzing::response(data);
});
