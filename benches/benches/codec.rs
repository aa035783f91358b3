//! Codec benchmarks: building, checking and stamping record batches, and MD5 routing.
//!
//! `cargo bench -p spate-benches --bench codec`

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use spate_protocol::batch::{self, RecordRules};
use spate_protocol::routing::hash_key;

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

fn batches(c: &mut Criterion) {
    for (records, bytes) in [(500u32, 100usize), (64, 1024)] {
        let mut g = c.benchmark_group(format!("batch/{records}x{bytes}B"));
        g.throughput(Throughput::Elements(u64::from(records)));
        g.bench_function("BatchBuilder::push+finish", |b| {
            b.iter(|| spate_benches::sample_batch(records, bytes))
        });
        let built = spate_benches::sample_batch(records, bytes);
        let off = RecordRules::default();
        g.bench_function("check_producer_batch", |b| {
            b.iter(|| batch::check_producer_batch(&built, &off).unwrap())
        });
        let routed = RecordRules {
            hash_range: Some((0, u128::MAX)),
            ..RecordRules::default()
        };
        g.bench_function("check_producer_batch+md5", |b| {
            b.iter(|| batch::check_producer_batch(&built, &routed).unwrap())
        });
        let mut cache = spate_protocol::routing::CachedKeyHasher::new(4096);
        g.bench_function("check_producer_batch+md5-cached", |b| {
            b.iter(|| batch::check_producer_batch_with(&built, &routed, &mut cache).unwrap())
        });
        // As the engine sees device traffic: 10,000 keys in random order over 20 batches,
        // the engine's cache size (32,768 one-line slots, 2 MiB): the lookups' lines are
        // not all in the CPU's near caches, as in `max-100b`.
        let spread: Vec<Vec<u8>> = (0..20u64)
            .map(|b| {
                let mut builder = spate_protocol::batch::BatchBuilder::new();
                for i in 0..u64::from(records) {
                    let n = (b * u64::from(records) + i).wrapping_mul(7_919) % 10_000;
                    let key = format!("device-{n:06}");
                    builder
                        .push(key.as_bytes(), &vec![b'x'; bytes], None)
                        .unwrap();
                }
                builder.finish()
            })
            .collect();
        let mut engine_cache = spate_protocol::routing::CachedKeyHasher::new(32_768);
        let mut next = 0;
        g.bench_function("check_producer_batch+md5-cached-10k-keys", |b| {
            b.iter(|| {
                next = (next + 1) % spread.len();
                batch::check_producer_batch_with(&spread[next], &routed, &mut engine_cache).unwrap()
            })
        });
        let mut stamped = built.clone();
        g.bench_function("stamp", |b| b.iter(|| batch::stamp(&mut stamped, 1, 2, 3)));
        g.bench_function("verify_stored", |b| {
            b.iter(|| batch::verify_stored(&stamped).unwrap())
        });
        g.finish();
    }
}

fn routing(c: &mut Criterion) {
    let mut g = c.benchmark_group("routing");
    for key in [
        "device-000042",
        "a-much-longer-partition-key-for-clickstream-sessions-0123456789",
    ] {
        g.bench_with_input(BenchmarkId::new("hash_key", key.len()), key, |b, k| {
            b.iter(|| hash_key(k.as_bytes()))
        });
    }
    g.finish();
}

criterion_group! { name = benches; config = config(); targets = batches, routing }
criterion_main!(benches);
