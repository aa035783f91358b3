//! Storage benchmarks: appends with group commit on one core (one shard, and many shards
//! sharing each flush), the latency of a lone durable append, CRC32C, and recovery (reopen
//! with journal replay).
//!
//! `cargo bench -p spate-benches --bench storage` (set `SPATE_BENCH_DIR` to a directory on
//! the disk to measure; default: the system temp dir). The shard runs on CPU 1 when the
//! machine has one, the driver on whatever is left.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use spate_benches::{bench_store_config, tiny_store_config, AppendLoad, AppendRig};

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
        AppendRig::start(base, cpu, bench_store_config())
    } else {
        AppendRig::start(base, cpu, tiny_store_config())
    }
}

const UNIT_BYTES: u64 = 16 << 20;

fn append(c: &mut Criterion) {
    let rig = rig();
    // (name, record bytes, records per batch, shards, producers): one hot shard, and many
    // shards each sending small batches (the journal path: one flush for all of them).
    let shapes: &[(&str, usize, u32, u32, &[usize])] = &[
        ("1KiB", 1024, 64, 1, &[16, 64]),
        ("100B", 100, 500, 1, &[16, 64]),
        ("1KiB-8-shards", 1024, 64, 8, &[64]),
        ("1000B-x1-1000-shards", 1000, 1, 1000, &[1000]),
        ("100B-x10-1000-shards", 100, 10, 1000, &[1000]),
    ];
    for &(name, record_bytes, per_batch, shards, producer_counts) in shapes {
        let mut g = c.benchmark_group(format!("Store::append/{name}"));
        let probe = spate_benches::sample_batch(per_batch, record_bytes).len() as u64;
        let records_per_unit = UNIT_BYTES / probe * u64::from(per_batch);
        if record_bytes >= 1024 {
            g.throughput(Throughput::Bytes(UNIT_BYTES));
        } else {
            g.throughput(Throughput::Elements(records_per_unit));
        }
        for &producers in producer_counts {
            g.bench_with_input(
                BenchmarkId::from_parameter(format!("{producers}-producers")),
                &producers,
                |b, &p| {
                    b.iter_custom(|iters| {
                        let load = AppendLoad {
                            record_bytes,
                            records_per_batch: per_batch,
                            producers: p,
                            shards,
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
        "Store::append lone 100 B record, {n} appends: p50 {} us, p90 {} us, p99 {} us, p99.9 {} us, max {} us",
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

/// Not a throughput loop: one shard's last GiB read back from the volumes with 10 MiB
/// reads, printed as GB/s to compare with fio's sequential O_DIRECT read (BENCHMARKS.md).
fn replay(_c: &mut Criterion) {
    let rig = rig();
    let total_bytes = if full_size() { 1 << 30 } else { 16 << 20 };
    rig.append(AppendLoad {
        record_bytes: 1024,
        records_per_batch: 500,
        producers: 8,
        shards: 1,
        total_bytes,
        keep: true,
    });
    for _ in 0..if full_size() { 3 } else { 1 } {
        let (bytes, took) = rig.replay(0, 10 << 20);
        println!(
            "Store::read replay of one shard: {:.2} GiB in {:.2} s, {:.3} GB/s",
            bytes as f64 / f64::from(1u32 << 30),
            took.as_secs_f64(),
            bytes as f64 / took.as_secs_f64() / 1e9
        );
    }
}

fn recovery(c: &mut Criterion) {
    let rig = rig();
    // A store holding 1 GiB in 64 shards, small batches (journaled), then reopened: the
    // manifest is loaded and the journal since the last checkpoint replayed.
    let total_bytes = if full_size() { 1 << 30 } else { 32 << 20 };
    rig.append(AppendLoad {
        record_bytes: 1024,
        records_per_batch: 8,
        producers: 64,
        shards: 64,
        total_bytes,
        keep: true,
    });
    let mut g = c.benchmark_group("Store::open");
    g.bench_function("1GiB-64-shards", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| rig.reopen()).sum())
    });
    g.finish();
}

criterion_group! { name = benches; config = config(); targets = append, lone_append_latency, crc, replay, recovery }
criterion_main!(benches);
