//! Engine-scale measurements that are not throughput loops (SPEC §6):
//! - memory and files per idle shard (≤ 16 KiB, no files of its own; 100,000 on one core);
//! - restart to serving with 10 GiB retained in 10,000 shards (≤ 1 s);
//! - restart after SIGKILL in the middle of full-speed ingest (≤ 1 s: bounded replay).
//!
//! `SPATE_BENCH_DIR=/path/on/disk cargo bench -p spate-benches --bench scale`
//! Under `cargo test --benches` it runs on small sizes so it cannot rot.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

/// The default configuration on one core (the figures are per core).
fn config(dir: &std::path::Path) -> EngineConfig {
    EngineConfig {
        data_dir: dir.to_path_buf(),
        cores: vec![engine_cpu()],
        // 100,000 idle shards and the stream that warms the engine up: past the default
        // node quota (`max_shards`, 100,000), which the measurement is not about.
        max_shards: 200_000,
        checkpoint_deferred: std::env::var_os("SCALE_AT_ONCE").is_none(),
        ..EngineConfig::default()
    }
}

fn engine_cpu() -> usize {
    if std::thread::available_parallelism().map_or(1, |n| n.get()) > 1 {
        1
    } else {
        0
    }
}

/// Files under `dir`, recursively.
fn file_count(dir: &std::path::Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            n += file_count(&p);
        } else {
            n += 1;
        }
    }
    n
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
    // A first stream, so what every engine has (buffers, caches) does not count.
    block_on(engine.create_stream(
        "warm",
        StreamOptions {
            limits: Limits::Off,
            ..StreamOptions::new(2)
        },
    ))
    .unwrap();
    let before = rss_bytes();
    let files_before = file_count(dir.path());
    let per_stream = 10_000;
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
    let files_after = file_count(dir.path());
    let per_shard = after.saturating_sub(before) / u64::from(shards);
    println!(
        "idle shards: {shards} on one core, RSS +{} KiB, {per_shard} bytes per idle shard (target <= 16384); files {files_before} -> {files_after}",
        after.saturating_sub(before) / 1024,
    );
    engine.shutdown();
}

/// Writes `bytes` into a stream of `shards` shards, then measures a full engine restart
/// (preflight, catalog, every store's manifest and journal replay) until it serves.
fn restart_with_retained(dir: &std::path::Path, bytes: u64, shards: u32) {
    let engine = Engine::start(config(dir)).expect("engine");
    block_on(engine.create_stream(
        "data",
        StreamOptions {
            limits: Limits::Off,
            ..StreamOptions::new(shards)
        },
    ))
    .unwrap();
    let quota = bytes / u64::from(shards);
    let threads = 16u32.min(shards);
    let writers: Vec<_> = (0..threads)
        .map(|t| {
            let engine = engine.clone();
            std::thread::spawn(move || {
                let mut done = 0u64;
                for shard in (t..shards).step_by(threads as usize) {
                    // The engine checks every key's hash against the shard: use one that fits.
                    let key = spate_benches::key_for_shard(shard, shards);
                    let per_record = 2000usize;
                    let records = (quota / per_record as u64).clamp(1, 500) as u32;
                    let batch = spate_benches::sample_batch_keyed(Some(&key), records, per_record);
                    let mut mine = 0u64;
                    while mine + batch.len() as u64 <= quota.max(batch.len() as u64) {
                        block_on(engine.put_batch("data", shard, batch.clone())).expect("append");
                        mine += batch.len() as u64;
                    }
                    done += mine;
                }
                done
            })
        })
        .collect();
    let written: u64 = writers.into_iter().map(|w| w.join().expect("writer")).sum();
    engine.shutdown();
    drop(engine);
    let started = Instant::now();
    let engine = Engine::start(config(dir)).expect("restart");
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

/// Ingests at full speed in a child process, kills it with SIGKILL after `ingest`, and
/// times the restart (the journal since the last checkpoint is replayed).
fn restart_after_kill(dir: &std::path::Path, ingest: Duration, shards: u32) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ingest_forever"))
        .arg(dir)
        .arg(engine_cpu().to_string())
        .arg(shards.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn ingest_forever");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().and_then(Result::ok).as_deref(), Some("READY"));
    std::thread::sleep(ingest);
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGKILL);
    }
    let _ = child.wait();
    let started = Instant::now();
    let engine = Engine::start(config(dir)).expect("restart after SIGKILL");
    let elapsed = started.elapsed();
    let d = block_on(engine.describe_stream("hot")).expect("serving");
    let records: u64 = d
        .shards
        .iter()
        .map(|s| s.last_seq.map_or(0, |l| l + 1 - s.first_seq.unwrap_or(0)))
        .sum();
    println!(
        "restart after SIGKILL during {:.0} s of full-speed ingest ({records} records in {shards} shards): {:.1} ms to serving (target <= 1000 ms)",
        ingest.as_secs_f64(),
        elapsed.as_secs_f64() * 1000.0
    );
    engine.shutdown();
}

fn main() {
    let dir = base_dir();
    if full_size() {
        idle_shard_memory(100_000);
        restart_with_retained(dir.path(), 10 << 30, 10_000);
        restart_after_kill(dir.path(), Duration::from_secs(20), 8);
    } else {
        idle_shard_memory(200);
        restart_with_retained(dir.path(), 8 << 20, 20);
        restart_after_kill(dir.path(), Duration::from_millis(500), 2);
    }
}
