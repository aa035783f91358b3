//! Shared helpers for Spate's end-to-end tests (the `spate` test binary) and the crash
//! writer child process.

use std::path::Path;

use spate_engine::config::EngineConfig;
use spate_protocol::batch::{BatchBuilder, BatchHeader, RecordIter};

/// A configuration small enough for tests: small segments so that rolls, retention and
/// recovery across segments all happen within a few megabytes.
pub fn test_config(data_dir: &Path) -> EngineConfig {
    EngineConfig {
        data_dir: data_dir.to_path_buf(),
        segment_bytes: 16 << 20,
        segment_bytes_min: 64 << 10,
        segment_age_max_ms: 1000,
        spare_segments_per_core: 1,
        retention_check_interval_ms: 3_600_000,
        ..EngineConfig::default()
    }
}

/// A batch of `n` records whose data encodes `(tag, i)` so a reader can check identity.
pub fn tagged_batch(key: &str, tag: u64, n: u32, data_bytes: usize) -> Vec<u8> {
    let mut b = BatchBuilder::new();
    for i in 0..n {
        let mut data = format!("{tag}:{i}:").into_bytes();
        data.resize(data_bytes.max(data.len()), b'x');
        b.push(key.as_bytes(), &data, None).expect("valid record");
    }
    b.finish()
}

/// Decodes a read's concatenated batches into `(seq, key, data)` for `start_seq..end_seq`.
pub fn records(bytes: &[u8], start_seq: u64, end_seq: u64) -> Vec<(u64, Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let h = spate_protocol::batch::verify_stored(
            &bytes[pos..pos
                + BatchHeader::decode(&bytes[pos..])
                    .expect("header")
                    .batch_len as usize],
        )
        .expect("stored batch verifies");
        let batch = &bytes[pos..pos + h.batch_len as usize];
        for (i, r) in RecordIter::new(batch, h.record_count).enumerate() {
            let seq = h.base_seq + i as u64;
            if (start_seq..end_seq).contains(&seq) {
                let r = r.expect("record");
                out.push((seq, r.key.to_vec(), r.data.to_vec()));
            }
        }
        pos += h.batch_len as usize;
    }
    out
}

/// A partition key whose MD5 falls in shard `shard` of a stream with `shards` even shards.
pub fn key_for_shard(shard: u32, shards: u32) -> String {
    let (lo, hi) = spate_protocol::routing::even_range(shard, shards);
    (0..)
        .map(|n| format!("key-{n}"))
        .find(|k| (lo..=hi).contains(&spate_protocol::routing::hash_key(k.as_bytes())))
        .expect("some key hashes into every shard")
}
