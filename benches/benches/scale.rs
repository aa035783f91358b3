//! Engine-scale measurements that are not throughput loops: memory per idle shard and
//! restart time with data retained (SPEC §6: ≤ 64 KiB per idle shard; ≤ 1 s to serving
//! with 10 GiB retained).
//!
//! `SPATE_BENCH_DIR=/path/on/disk cargo bench -p spate-benches --bench scale`
//! Under `cargo test --benches` it runs on small sizes so it cannot rot.

use std::time::Instant;

use futures_lite::future::block_on;
use spate_engine::config::EngineConfig;
use spate_engine::engine::StreamOptions;
use spate_engine::limits::Limits;
use spate_engine::Engine;

fn full_size() -> bool {
    std::env::args().any(|a| a == "--bench")
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn config(dir: &std::path::Path) -> EngineConfig {
    EngineConfig {
        data_dir: dir.to_path_buf(),
        ..EngineConfig::default()
    }
}

fn base_dir() -> tempfile::TempDir {
    match std::env::var_os("SPATE_BENCH_DIR") {
        Some(b) => tempfile::tempdir_in(b).expect("temp dir"),
        None => tempfile::tempdir().expect("temp dir"),
    }
}

/// Creates `shards` idle shards and reports the resident memory they added, per shard.
fn idle_shard_memory(shards: u32) {
    let dir = base_dir();
    let engine = Engine::start(config(dir.path())).expect("engine");
    // Let the spare filler finish so its buffers do not count against the shards.
    block_on(engine.create_stream(
        "warm",
        StreamOptions {
            limits: Limits::Off,
            ..StreamOptions::new(2)
        },
    ))
    .unwrap();
    let before = rss_bytes();
    let per_stream = 100;
    let mut made = 0;
    while made < shards {
        let n = per_stream.min(shards - made);
        let opts = StreamOptions {
            limits: Limits::Kinesis,
            ..StreamOptions::new(n)
        };
        block_on(engine.create_stream(&format!("idle-{made}"), opts)).expect("create");
        made += n;
    }
    let after = rss_bytes();
    let per_shard = after.saturating_sub(before) / u64::from(shards);
    println!(
        "idle shards: {shards} on {} cores, RSS +{} KiB, {} bytes per idle shard (target <= 65536)",
        engine.core_cpus().len(),
        after.saturating_sub(before) / 1024,
        per_shard
    );
    engine.shutdown();
}

/// Writes `bytes` into a stream of `shards` shards, then measures a full engine restart
/// (preflight, catalog, recovery of every shard) until it serves.
fn restart_with_retained(bytes: u64, shards: u32) {
    let dir = base_dir();
    let engine = Engine::start(config(dir.path())).expect("engine");
    block_on(engine.create_stream(
        "data",
        StreamOptions {
            limits: Limits::Off,
            ..StreamOptions::new(shards)
        },
    ))
    .unwrap();
    let mut written = 0u64;
    let writers: Vec<_> = (0..shards)
        .map(|shard| {
            let engine = engine.clone();
            let quota = bytes / u64::from(shards);
            std::thread::spawn(move || {
                // The engine checks every key's hash against the shard: use one that fits.
                let key = spate_benches::key_for_shard(shard, shards);
                let batch = spate_benches::sample_batch_keyed(Some(&key), 500, 2000);
                let mut done = 0u64;
                while done < quota {
                    block_on(engine.put_batch("data", shard, batch.clone())).expect("append");
                    done += batch.len() as u64;
                }
                done
            })
        })
        .collect();
    for w in writers {
        written += w.join().expect("writer");
    }
    engine.shutdown();
    drop(engine);
    let started = Instant::now();
    let engine = Engine::start(config(dir.path())).expect("restart");
    let elapsed = started.elapsed();
    let d = block_on(engine.describe_stream("data")).expect("serving");
    assert!(d.shards.iter().all(|s| s.last_seq.is_some()));
    println!(
        "restart with {:.2} GiB retained in {shards} shards: {:.1} ms to serving (target <= 1000 ms)",
        written as f64 / f64::from(1u32 << 30),
        elapsed.as_secs_f64() * 1000.0
    );
    engine.shutdown();
}

fn main() {
    if full_size() {
        idle_shard_memory(2000);
        restart_with_retained(10 << 30, 8);
    } else {
        idle_shard_memory(20);
        restart_with_retained(8 << 20, 2);
    }
}
