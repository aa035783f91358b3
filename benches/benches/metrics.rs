//! What counting costs a put request: the request by opcode, the stream's counters and
//! latency histogram, and (with shard-level metrics on) the shard's counters — the exact
//! code the server runs per stored batch (`CoreMetrics::count_put`), on and off.
//!
//! `cargo bench -p spate-benches --bench metrics`; BENCHMARKS.md, "Metrics cost", turns the
//! figure into a share of `max-1k`'s engine CPU per batch.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use spate_engine::metrics::bench::Counting;

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

fn counting(c: &mut Criterion) {
    let mut g = c.benchmark_group("metrics/put-batch");
    for (name, on, shards) in [
        ("off", false, false),
        ("stream", true, false),
        ("stream+shard", true, true),
    ] {
        let m = Counting::new(on, shards);
        let mut shard = 0u32;
        g.bench_function(name, |b| {
            b.iter(|| {
                // 64 shards' batches in turn, as a PutBatches spreads over a stream.
                shard = (shard + 1) % 64;
                m.put(
                    std::hint::black_box(shard),
                    64,
                    64 * 1024,
                    Duration::from_micros(800),
                )
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = counting
}
criterion_main!(benches);
