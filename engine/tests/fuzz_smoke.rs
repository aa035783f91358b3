//! Fuzz smoke for the on-disk decoders (`spate_engine::store::fuzzing`): extent and journal
//! headers, rounds and their entries, the manifest and the catalog, each thrown mutated
//! valid encodings on a fixed budget under `cargo test`, as the libFuzzer targets in
//! `fuzz/` do without one. Deterministic from a seed; a failure prints seed, iteration and
//! input. `SPATE_FUZZ_SEED` and `SPATE_FUZZ_ITERATIONS` change them.

use std::panic::{catch_unwind, AssertUnwindSafe};

use spate_engine::catalog::{Catalog, StreamOptions};
use spate_engine::store::fuzzing;
use spate_engine::store::layout::*;
use spate_engine::store::manifest::{self, ExtentRecord, JournalPos, Manifest, ShardRecord};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const KEY: ShardKey = ShardKey {
    stream_id: 3,
    shard_id: 7,
};

fn samples() -> Vec<(&'static str, Vec<u8>)> {
    let mut ext = vec![0u8; 4096];
    ExtentHeader {
        stream_id: 3,
        shard_id: 7,
        order: 2,
        base_seq: 1000,
        nonce: 42,
        created_ms: 5,
        id: ExtentId::new(1, 8),
    }
    .encode_block(&mut ext);
    let mut jnl = vec![0u8; 4096];
    JournalHeader {
        file_seq: 4,
        nonce: 9,
        first_round: 77,
        created_ms: 1,
        store: 0,
    }
    .encode_block(&mut jnl);
    let batch = {
        let mut b = spate_protocol::batch::BatchBuilder::new();
        b.push(b"k", b"some data", None).unwrap();
        b.finish()
    };
    let mut payload =
        vec![0u8; entry_len(batch.len()) + entry_len(ROLL_BODY_LEN) + entry_len(DIRECT_BODY_LEN)];
    encode_batch_entry_header(&mut payload, KEY, batch.len());
    payload[ENTRY_HEADER_LEN..ENTRY_HEADER_LEN + batch.len()].copy_from_slice(&batch);
    let mut at = entry_len(batch.len());
    encode_roll(
        &mut payload[at..],
        KEY,
        &Roll {
            extent: ExtentId::new(0, 4),
            order: 1,
            base_seq: 1,
            nonce: 2,
            created_ms: 3,
        },
    );
    at += entry_len(ROLL_BODY_LEN);
    encode_direct(
        &mut payload[at..],
        KEY,
        &Direct {
            extent: ExtentId::new(0, 4),
            from_offset: 4096,
            to_offset: 8192,
            from_seq: 1,
            next_seq: 5,
        },
    );
    let mut round = vec![0u8; ROUND_HEADER_LEN];
    RoundHeader {
        nonce: 9,
        round: 77,
        payload_len: payload.len() as u32,
        entry_count: 3,
        payload_crc: crc32c::crc32c(&payload),
    }
    .encode(&mut round);
    round.extend_from_slice(&payload);
    let m = manifest::encode(&Manifest {
        store: 0,
        checkpoint: 3,
        replay_from: JournalPos {
            file_seq: 4,
            offset: 8192,
            round: 77,
        },
        next_file_seq: 5,
        shards: vec![ShardRecord {
            stream_id: 3,
            shard_id: 7,
            extents: vec![ExtentRecord {
                id: ExtentId::new(0, 4).0,
                order: 1,
                base_seq: 0,
                nonce: 2,
                created_ms: 3,
                first_ts_ms: 4,
                end_offset: 9000,
                end_seq: 5,
                last_ts_ms: 6,
                sealed: false,
            }],
        }],
    });
    let mut cat = Catalog::from_bytes(std::path::Path::new("/x"), None).unwrap();
    cat.add_stream("clicks", &StreamOptions::new(3), 2, 1)
        .unwrap();
    let (_, cat) = cat.encoded();
    vec![
        ("extent_header", ext),
        ("journal_header", jnl),
        ("round", round),
        ("manifest", m),
        ("catalog", cat),
    ]
}

fn check(name: &str, data: &[u8]) -> bool {
    match name {
        "extent_header" => fuzzing::extent_header(data),
        "journal_header" => fuzzing::journal_header(data),
        "round" => fuzzing::round(data),
        "manifest" => fuzzing::manifest(data),
        "catalog" => fuzzing::catalog(data),
        _ => unreachable!(),
    }
}

#[test]
fn on_disk_decoders_survive_mutated_input() {
    let seed = env_u64("SPATE_FUZZ_SEED", 0x0d15_c0de_0000_0001);
    let iterations = env_u64("SPATE_FUZZ_ITERATIONS", 20_000);
    let mut rng = Rng(seed);
    let samples = samples();
    for (name, s) in &samples {
        assert!(check(name, s), "the valid {name} sample decodes");
    }
    let mut decoded = 0u64;
    for i in 0..iterations {
        let (name, base) = &samples[rng.below(samples.len())];
        let mut data = base.clone();
        for _ in 0..1 + rng.below(4) {
            if data.is_empty() {
                break;
            }
            match rng.below(5) {
                0 => {
                    let at = rng.below(data.len());
                    data[at] ^= 1 << rng.below(8);
                }
                1 => {
                    let at = rng.below(data.len());
                    data[at] = rng.next() as u8;
                }
                2 => data.truncate(rng.below(data.len() + 1)),
                3 => {
                    let at = rng.below(data.len() + 1).min(data.len());
                    data.insert(at, rng.next() as u8);
                }
                _ => {
                    // A length or count field: four bytes of a small or a huge value.
                    if data.len() >= 4 {
                        let at = rng.below(data.len() - 3);
                        let v = if rng.below(2) == 0 {
                            rng.below(64) as u32
                        } else {
                            u32::MAX - rng.below(64) as u32
                        };
                        data[at..at + 4].copy_from_slice(&v.to_le_bytes());
                    }
                }
            }
        }
        match catch_unwind(AssertUnwindSafe(|| check(name, &data))) {
            Ok(d) => decoded += u64::from(d),
            Err(_) => {
                panic!("seed {seed:#x} iteration {i}: {name} decoder broke a property on {data:?}")
            }
        }
    }
    assert!(
        decoded > iterations / 50,
        "mutations still reach the decoders: {decoded}"
    );
}
