//! Child process for the crash test: starts an engine on the given data dir, creates the
//! stream if needed, and appends batches forever from several threads, printing
//! `ACK <shard> <base_seq> <count> <tag>` after each acknowledgement. The parent kills it
//! with SIGKILL at a random moment and checks every acknowledged batch after a restart.
//!
//! Modes (third argument) steer where the kill lands: `journal` (small batches over many
//! shards: journaled rounds and write-behind), `checkpoint` (a checkpoint every 256 KiB of
//! journal, so most kills hit one), `direct` (large batches: hot shards written in place).

use std::io::Write;

use futures_lite::future::block_on;
use spate_engine::engine::StreamOptions;
use spate_engine::limits::Limits;
use spate_engine::Engine;
use spate_protocol::routing::key_for_shard;

const PRODUCERS: u64 = 8;
/// Shards of the stream (the parent reads them all back).
pub const SHARDS: u32 = 16;

fn main() {
    let dir = std::env::args()
        .nth(1)
        .expect("usage: crash_writer DATA_DIR START_TAG");
    let start: u64 = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mode = std::env::args().nth(3).unwrap_or_else(|| "journal".into());
    let mut cfg = spate_tests::test_config(std::path::Path::new(&dir));
    // "MODE-dsync": the load with O_DSYNC rounds (two in flight at once, the default);
    // "MODE": with write-then-fdatasync rounds.
    let mode = match mode.strip_suffix("-dsync") {
        Some(m) => {
            cfg.round_sync = spate_engine::store::RoundSync::Dsync;
            m.to_string()
        }
        None => {
            cfg.round_sync = spate_engine::store::RoundSync::Fdatasync;
            mode
        }
    };
    let (size_min, size_spread) = match mode.as_str() {
        "checkpoint" => {
            cfg.checkpoint_bytes = 256 << 10;
            (100, 5000)
        }
        "direct" => (20_000, 60_000),
        _ => (100, 5000),
    };
    let engine = Engine::start(cfg).expect("engine starts");
    if block_on(engine.describe_stream("crash")).is_err() {
        let opts = StreamOptions {
            limits: Limits::Off,
            ..StreamOptions::new(SHARDS)
        };
        block_on(engine.create_stream("crash", opts)).expect("create");
    }
    // One partition key per shard that really hashes into it (the engine checks).
    let keys: Vec<String> = (0..SHARDS)
        .map(|shard| key_for_shard(shard, SHARDS))
        .collect();
    println!("READY");
    let threads: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let engine = engine.clone();
            let keys = keys.clone();
            std::thread::spawn(move || {
                let mut tag = start + p;
                loop {
                    // Shard and sizes vary with the tag: small and large batches interleave,
                    // segments roll, and many producers share each flush.
                    let shard = (tag % u64::from(SHARDS)) as u32;
                    let n = 1 + (tag % 7) as u32;
                    let batch = spate_tests::tagged_batch(
                        &keys[shard as usize],
                        tag,
                        n,
                        size_min + (tag % size_spread) as usize,
                    );
                    let out = block_on(engine.put_batch("crash", shard, batch)).expect("append");
                    let stdout = std::io::stdout();
                    let mut lock = stdout.lock();
                    writeln!(lock, "ACK {shard} {} {} {tag}", out.base_seq, out.accepted)
                        .expect("stdout");
                    lock.flush().expect("flush");
                    tag += PRODUCERS;
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}
