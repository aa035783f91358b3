//! Request round trip and single-connection throughput over loopback TCP, through the real
//! server and the client library: the engine on one core, the client pinned to another.
//!
//! `SPATE_BENCH_DIR=/path/on/disk cargo bench -p spate-benches --bench wire`
//! (under `cargo test --benches` it runs a few requests only, so it cannot rot).

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use spate_client::{Client, Entry, StreamConfig};
use spate_engine::config::EngineConfig;
use spate_engine::server::Server;

fn full_size() -> bool {
    std::env::args().any(|a| a == "--bench")
}

fn summary(name: &str, h: &Histogram<u64>) {
    println!(
        "{name}: n={} p50={}us p90={}us p99={}us p99.9={}us max={}us",
        h.len(),
        h.value_at_quantile(0.50),
        h.value_at_quantile(0.90),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max()
    );
}

fn main() {
    let n_rtt = if full_size() { 20_000 } else { 50 };
    let throughput_bytes: u64 = if full_size() { 4 << 30 } else { 4 << 20 };
    let cpus: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .iter()
        .map(|c| c.id)
        .collect();
    let engine_cpu = *cpus.last().expect("a CPU");
    let client_cpu = cpus.first().copied().filter(|&c| c != engine_cpu);
    let dir = match std::env::var_os("SPATE_BENCH_DIR") {
        Some(b) => tempfile::tempdir_in(b).expect("temp dir"),
        None => tempfile::tempdir().expect("temp dir"),
    };
    let cfg = EngineConfig {
        data_dir: dir.path().to_path_buf(),
        listen: "127.0.0.1:0".into(),
        cores: vec![engine_cpu],
        metrics_listen: String::new(),
        ..EngineConfig::default()
    };
    let server = Server::start(cfg).expect("server");
    if let Some(c) = client_cpu {
        core_affinity::set_for_current(core_affinity::CoreId { id: c });
    }
    println!("engine on CPU {engine_cpu}, client on CPU {client_cpu:?}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let client = Client::connect(server.local_addr().to_string()).await.expect("connect");
        let cfg = StreamConfig::new(1).limits(spate_client::Limits::Off);
        client.create_stream("wire", &cfg).await.expect("create");

        // Warm up: the engine zero-fills its spare segments right after start; measure after.
        let warm_until = Instant::now() + Duration::from_secs(if full_size() { 3 } else { 0 });
        while Instant::now() < warm_until {
            client.describe_stream("wire").await.expect("describe");
        }

        // Round trip of a request that touches no disk.
        let mut h = Histogram::<u64>::new(3).expect("histogram");
        for _ in 0..n_rtt {
            let t = Instant::now();
            client.describe_stream("wire").await.expect("describe");
            h.record(t.elapsed().as_micros() as u64).expect("record");
        }
        summary("round trip, describe-stream (no disk)", &h);

        // Round trip of one durable put: write, fdatasync, ack.
        let mut h = Histogram::<u64>::new(3).expect("histogram");
        for _ in 0..n_rtt {
            let t = Instant::now();
            client.put_record("wire", "device-1", vec![b'x'; 100], None).await.expect("put");
            h.record(t.elapsed().as_micros() as u64).expect("record");
        }
        summary("round trip, put-record 100 B durable", &h);

        // Single-connection throughput: many pipelined 64-record batches of 1 KiB records on
        // the one connection to the owning core.
        for (record_bytes, per_request, in_flight) in [(1024usize, 64usize, 32usize), (100, 500, 32)] {
            let payload = vec![b'x'; record_bytes];
            let requests = (throughput_bytes / (record_bytes * per_request) as u64).max(in_flight as u64);
            let started = Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            let per_task = requests / in_flight as u64;
            for t in 0..in_flight {
                let client = client.clone();
                let payload = payload.clone();
                tasks.spawn(async move {
                    for _ in 0..per_task {
                        let entries: Vec<Entry> = (0..per_request)
                            .map(|r| Entry::new(format!("device-{}", (t * 31 + r) % 1000), payload.clone()))
                            .collect();
                        for res in client.put_records("wire", entries).await {
                            res.expect("put");
                        }
                    }
                });
            }
            while let Some(done) = tasks.join_next().await {
                done.expect("producer task");
            }
            let elapsed = started.elapsed().max(Duration::from_micros(1));
            let records = per_task * in_flight as u64 * per_request as u64;
            let bytes = records * record_bytes as u64;
            println!(
                "single connection, {record_bytes} B records, {per_request}/request, {in_flight} in flight: {:.0} records/s, {:.1} MiB/s of data",
                records as f64 / elapsed.as_secs_f64(),
                bytes as f64 / elapsed.as_secs_f64() / f64::from(1u32 << 20)
            );
        }
    });
    server.shutdown();
}
