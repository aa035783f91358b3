//! Storage benchmarks: segment append with group commit on one core, CRC32C, sparse-index
//! lookup, and recovery (reopen) of a 1 GiB shard.
//!
//! `cargo bench -p spate-benches --bench storage` (set `SPATE_BENCH_DIR` to a directory on
//! the disk to measure; default: the system temp dir). The shard runs on CPU 1 when the
//! machine has one, the driver on whatever is left.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use spate_benches::{bench_log_config, AppendLoad, AppendRig};
use spate_engine::segment::{IndexEntry, SegmentIndex};

/// Criterion defaults for this suite, in one place.
fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(8))
}

/// `cargo bench` passes `--bench`; `cargo test --benches` does not, and then every
/// benchmark runs once on small data so the suite cannot rot without costing CI time.
fn full_size() -> bool {
    std::env::args().any(|a| a == "--bench")
}

fn rig() -> AppendRig {
    let cpu = if std::thread::available_parallelism().map_or(1, |n| n.get()) > 1 {
        Some(1)
    } else {
        None
    };
    let base = std::env::var_os("SPATE_BENCH_DIR").map(Into::into);
    if full_size() {
        AppendRig::start(base, cpu, bench_log_config(), 4)
    } else {
        let cfg = spate_engine::log::LogConfig {
            segment_bytes: 16 << 20,
            segment_bytes_min: 16 << 20,
            ..bench_log_config()
        };
        AppendRig::start(base, cpu, cfg, 1)
    }
}

const UNIT_BYTES: u64 = 16 << 20;

fn append(c: &mut Criterion) {
    let rig = rig();
    for (name, record_bytes, per_batch) in [("1KiB", 1024usize, 64u32), ("100B", 100, 500)] {
        let mut g = c.benchmark_group(format!("ShardLog::append/{name}"));
        let probe = spate_benches::sample_batch(per_batch, record_bytes).len() as u64;
        let records_per_unit = UNIT_BYTES / probe * u64::from(per_batch);
        if record_bytes >= 1024 {
            g.throughput(Throughput::Bytes(UNIT_BYTES));
        } else {
            g.throughput(Throughput::Elements(records_per_unit));
        }
        for producers in [16usize, 64, 256] {
            g.bench_with_input(
                BenchmarkId::from_parameter(format!("{producers}-producers")),
                &producers,
                |b, &p| {
                    b.iter_custom(|iters| {
                        let load = AppendLoad {
                            record_bytes,
                            records_per_batch: per_batch,
                            producers: p,
                            total_bytes: iters * UNIT_BYTES,
                            keep: false,
                        };
                        let s = rig.append(load);
                        // Scale to exactly `iters` units (the last batch may overshoot).
                        s.elapsed
                            .mul_f64((iters * UNIT_BYTES) as f64 / s.bytes as f64)
                    })
                },
            );
        }
        g.finish();
    }
}

/// Not a throughput loop: the latency distribution of a lone durable append, printed, to
/// compare with fio's fdatasync latency (BENCHMARKS.md).
fn lone_append_latency(_c: &mut Criterion) {
    let rig = rig();
    let n = if full_size() { 20_000 } else { 100 };
    let mut us: Vec<u128> = rig
        .lone_append_latencies(n)
        .iter()
        .map(|d| d.as_micros())
        .collect();
    us.sort_unstable();
    let q = |f: f64| us[((us.len() - 1) as f64 * f) as usize];
    println!(
        "ShardLog::append lone 100 B record, {n} appends: p50 {} us, p90 {} us, p99 {} us, p99.9 {} us, max {} us",
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        us[us.len() - 1]
    );
}

fn crc(c: &mut Criterion) {
    let mut g = c.benchmark_group("crc32c");
    for size in [1024usize, 1 << 20] {
        let buf = vec![0xabu8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &buf, |b, buf| {
            b.iter(|| crc32c::crc32c(buf))
        });
    }
    g.finish();
}

fn index(c: &mut Criterion) {
    // A 1 GiB segment indexed every 64 KiB: 16,384 entries.
    let entries: Vec<IndexEntry> = (0..16_384u64)
        .map(|i| IndexEntry {
            seq: i * 64,
            offset: 4096 + i * 65_536,
            ts_ms: 1_700_000_000_000 + i as i64,
        })
        .collect();
    let idx = SegmentIndex { entries };
    let mut g = c.benchmark_group("SegmentIndex");
    let mut x = 0u64;
    g.bench_function("floor_seq", |b| {
        b.iter(|| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            idx.floor_seq(x % (16_384 * 64))
        })
    });
    g.bench_function("floor_ts", |b| {
        b.iter(|| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            idx.floor_ts(1_700_000_000_000 + (x % 16_384) as i64)
        })
    });
    g.finish();
}

fn recovery(c: &mut Criterion) {
    let rig = rig();
    // A shard holding 1 GiB: four full segments, the newest one active.
    let total_bytes = if full_size() { 1 << 30 } else { 32 << 20 };
    rig.append(AppendLoad {
        record_bytes: 1024,
        records_per_batch: 64,
        producers: 16,
        total_bytes,
        keep: true,
    });
    let mut g = c.benchmark_group("ShardLog::open");
    g.bench_function("1GiB-shard", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| rig.reopen()).sum())
    });
    g.finish();
}

criterion_group! { name = benches; config = config(); targets = append, lone_append_latency, crc, index, recovery }
criterion_main!(benches);
