//! Child process for the restart benchmark: starts an engine on a data directory with the
//! default configuration, creates the stream `hot` if needed, and appends to it at full speed
//! from several threads until killed. The parent kills it with SIGKILL mid-ingest and times
//! the restart (journal replay included).
//!
//! Usage: ingest_forever DATA_DIR CPU SHARDS

use futures_lite::future::block_on;
use spate_engine::config::EngineConfig;
use spate_engine::engine::StreamOptions;
use spate_engine::limits::Limits;
use spate_engine::Engine;

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .expect("usage: ingest_forever DATA_DIR CPU SHARDS");
    let cpu: usize = args.next().and_then(|c| c.parse().ok()).unwrap_or(0);
    let shards: u32 = args.next().and_then(|c| c.parse().ok()).unwrap_or(8);
    let cfg = EngineConfig {
        data_dir: dir.into(),
        cores: vec![cpu],
        ..EngineConfig::default()
    };
    let engine = Engine::start(cfg).expect("engine starts");
    if block_on(engine.describe_stream("hot")).is_err() {
        let opts = StreamOptions {
            limits: Limits::Off,
            ..StreamOptions::new(shards)
        };
        block_on(engine.create_stream("hot", opts)).expect("create");
    }
    println!("READY");
    let threads: Vec<_> = (0..shards)
        .map(|shard| {
            let engine = engine.clone();
            std::thread::spawn(move || {
                let key = spate_benches::key_for_shard(shard, shards);
                // Small batches (journaled) and large ones (written in place) interleave.
                let small = spate_benches::sample_batch_keyed(Some(&key), 16, 1000);
                let large = spate_benches::sample_batch_keyed(Some(&key), 400, 1000);
                for i in 0u64.. {
                    let b = if i % 2 == 0 { &small } else { &large };
                    block_on(engine.put_batch("hot", shard, b.clone())).expect("append");
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}
