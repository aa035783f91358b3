//! Record batch checks (producer and stored), the record walk and the iterator token.
//! The property lives in `spate_protocol::fuzzing::batch`, shared with the stable smoke test.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = spate_protocol::fuzzing::batch(data);
});
