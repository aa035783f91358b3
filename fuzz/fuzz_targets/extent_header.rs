//! libFuzzer target: the on-disk decoder `extent_header` (see `spate_engine::store::fuzzing`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = spate_engine::store::fuzzing::extent_header(data);
});
