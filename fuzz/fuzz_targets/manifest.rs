//! libFuzzer target: the on-disk decoder `manifest` (see `spate_engine::store::fuzzing`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = spate_engine::store::fuzzing::manifest(data);
});
