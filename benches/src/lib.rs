//! Benchmark workloads shared by the criterion harnesses in `benches/` and by the tiny
//! versions of them that run under `cargo test` (so the benchmarks cannot rot).
//!
//! `AppendRig` runs one store on one pinned glommio executor (the engine's own storage path:
//! O_DIRECT writes through io_uring, one journal flush per round shared by every shard,
//! in-place writes for hot shards, write-behind and checkpoints in the background) and lets
//! a benchmark drive it from the outside: append N bytes spread over S shards with P
//! concurrent producers, reopen (recovery), and free the data between runs so the disk
//! does not fill up.

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use spate_engine::clock::SystemClock;
use spate_engine::config::EngineConfig;
use spate_engine::io::DmaStorage;
use spate_engine::store::{ShardKey, Store, StoreConfig, StoreStats};
use spate_protocol::batch::BatchBuilder;

/// What one append run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendStats {
    pub elapsed: Duration,
    pub records: u64,
    /// Batch bytes appended (headers included).
    pub bytes: u64,
    /// The store's counters over the run.
    pub store: StoreStats,
}

impl AppendStats {
    pub fn bytes_per_s(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64()
    }

    pub fn records_per_s(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64()
    }
}

/// The shape of an append workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendLoad {
    pub record_bytes: usize,
    pub records_per_batch: u32,
    /// Concurrent producer tasks; their batches share flushes (group commit).
    pub producers: usize,
    /// Shards the producers spread over (producer `i` writes shard `i % shards`).
    pub shards: u32,
    pub total_bytes: u64,
    /// Keep the data afterwards (recovery benchmarks); otherwise it is freed after the run.
    pub keep: bool,
}

enum Cmd {
    Append(AppendLoad, mpsc::Sender<AppendStats>),
    Replay(u32, usize, mpsc::Sender<(u64, Duration)>),
    Latency(u32, mpsc::Sender<Vec<Duration>>),
    Reopen(mpsc::Sender<Duration>),
}

/// One store on a dedicated, pinned glommio executor.
pub struct AppendRig {
    tx: Option<mpsc::Sender<Cmd>>,
    thread: Option<glommio::ExecutorJoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for AppendRig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AppendRig")
    }
}

/// The engine's default store configuration (what `spate serve` runs with).
pub fn bench_store_config() -> StoreConfig {
    let mut cfg = EngineConfig::default().store_config(0);
    // For tuning experiments: overrides of the knobs that decide the write path.
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<usize>().ok());
    if let Some(kib) = env("SPATE_BENCH_CHUNK_KIB") {
        cfg.write_chunk_bytes_max = kib << 10;
    }
    if let Some(kib) = env("SPATE_BENCH_DIRECT_KIB") {
        cfg.direct_write_bytes_min = kib << 10;
    }
    cfg
}

/// A small store configuration for the tiny runs under `cargo test`.
pub fn tiny_store_config() -> StoreConfig {
    StoreConfig {
        volume_bytes: 64 << 20,
        journal_file_bytes: 32 << 20,
        journal_files: 3,
        checkpoint_bytes: 16 << 20,
        ..bench_store_config()
    }
}

/// Shards the rig's store holds.
const RIG_SHARDS: u32 = 1024;

fn rig_key(i: u32) -> ShardKey {
    ShardKey {
        stream_id: 1,
        shard_id: i,
    }
}

impl AppendRig {
    /// Starts the rig on `cpu` (or unpinned), in a temporary directory under `base` (the
    /// directory must be on the disk being measured).
    pub fn start(base: Option<PathBuf>, cpu: Option<usize>, cfg: StoreConfig) -> AppendRig {
        let dir = match base {
            Some(b) => tempfile::tempdir_in(b).expect("temp dir"),
            None => tempfile::tempdir().expect("temp dir"),
        };
        let path = dir.path().to_path_buf();
        let (tx, rx) = mpsc::channel::<Cmd>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let placement = cpu.map_or(glommio::Placement::Unbound, glommio::Placement::Fixed);
        let thread = glommio::LocalExecutorBuilder::new(placement)
            .name("bench-store")
            .spawn(move || async move {
                let storage = Rc::new(DmaStorage::open_core(&path, 0).await.expect("direct I/O works"));
                let cfg = StoreConfig {
                    dir: path.join("store-0"),
                    ..cfg
                };
                let keys: Vec<ShardKey> = (0..RIG_SHARDS).map(rig_key).collect();
                let open = || Store::open(storage.clone(), cfg.clone(), Arc::new(SystemClock), &keys);
                let mut store = Rc::new(open().await.expect("open store"));
                let mut stop = spawn_background(store.clone());
                // Space is made before the first measurement, as in a warm engine.
                while store.background_step().await.expect("space") {}
                ready_tx.send(()).expect("ready");
                while let Ok(cmd) = rx.recv() {
                    match cmd {
                        Cmd::Append(load, reply) => {
                            let stats = append_run(&store, load).await;
                            if std::env::var_os("SPATE_BENCH_VERBOSE").is_some() {
                                let a = stats.store;
                                let rounds = a.rounds.max(1);
                                eprintln!(
                                    "rounds {rounds}, appends/round {:.1}, journal {} KiB/round, direct {} KiB/round, syncs/round {:.2}, write {} us/round, sync {} us/round, behind {} MiB, checkpoints {}, {:.2} GB/s",
                                    a.appends as f64 / rounds as f64,
                                    a.journal_bytes / rounds / 1024,
                                    a.direct_bytes / rounds / 1024,
                                    a.round_syncs as f64 / rounds as f64,
                                    a.write_us / rounds,
                                    a.sync_us / rounds,
                                    a.write_behind_bytes >> 20,
                                    a.checkpoints,
                                    stats.bytes_per_s() / 1e9
                                );
                            }
                            if !load.keep {
                                // Free everything but each shard's newest extent, outside the
                                // timing, and let a checkpoint make the space reusable.
                                for k in &keys {
                                    store.apply_retention(*k, i64::MAX);
                                }
                                store.checkpoint().await.expect("checkpoint");
                            }
                            let _ = reply.send(stats);
                        }
                        Cmd::Replay(shard, read_bytes, reply) => {
                            // What is still in memory goes to disk first: a replay reads
                            // history, not the tail.
                            store.checkpoint().await.expect("checkpoint");
                            let key = rig_key(shard);
                            let mut from = store.trim_horizon(key).expect("shard");
                            let end = store.durable_seq(key).expect("shard");
                            let started = Instant::now();
                            let mut bytes = 0u64;
                            while from < end {
                                let r = store.read(key, from, 10_000, read_bytes).await.expect("read");
                                bytes += r.bytes.len() as u64;
                                from = r.end_seq;
                            }
                            let _ = reply.send((bytes, started.elapsed()));
                        }
                        Cmd::Latency(n, reply) => {
                            // One producer, one 100 B record per append: the latency of a
                            // lone durable append (write + fdatasync), nothing to share it with.
                            let batch = sample_batch(1, 100);
                            let mut out = Vec::with_capacity(n as usize);
                            for _ in 0..n {
                                let t = Instant::now();
                                store.append(rig_key(0), &batch, 1).await.expect("append");
                                out.push(t.elapsed());
                            }
                            let _ = reply.send(out);
                        }
                        Cmd::Reopen(reply) => {
                            // A restart after a crash: no final checkpoint, the journal since
                            // the last one is replayed.
                            stop.set(true);
                            store.flush().await.expect("flush");
                            drop(store);
                            let started = Instant::now();
                            store = Rc::new(open().await.expect("reopen"));
                            let _ = reply.send(started.elapsed());
                            stop = spawn_background(store.clone());
                        }
                    }
                }
                stop.set(true);
            })
            .expect("spawn bench executor");
        ready_rx.recv().expect("rig ready");
        AppendRig {
            tx: Some(tx),
            thread: Some(thread),
            _dir: dir,
        }
    }

    /// Appends `load.total_bytes` of records and returns how long it took.
    pub fn append(&self, load: AppendLoad) -> AppendStats {
        let (tx, rx) = mpsc::channel();
        self.tx
            .as_ref()
            .expect("running")
            .send(Cmd::Append(load, tx))
            .expect("rig alive");
        rx.recv().expect("rig reply")
    }

    /// `n` lone appends of one 100 B record, one after another; each one's latency.
    pub fn lone_append_latencies(&self, n: u32) -> Vec<Duration> {
        let (tx, rx) = mpsc::channel();
        self.tx
            .as_ref()
            .expect("running")
            .send(Cmd::Latency(n, tx))
            .expect("rig alive");
        rx.recv().expect("rig reply")
    }

    /// Reads shard `shard`'s whole history with reads of `read_bytes` (after a checkpoint,
    /// so it comes from the volumes): bytes read and time taken.
    pub fn replay(&self, shard: u32, read_bytes: usize) -> (u64, Duration) {
        let (tx, rx) = mpsc::channel();
        self.tx
            .as_ref()
            .expect("running")
            .send(Cmd::Replay(shard, read_bytes, tx))
            .expect("rig alive");
        rx.recv().expect("rig reply")
    }

    /// Drops and reopens the store (recovery with journal replay), returning the time
    /// `open` took.
    pub fn reopen(&self) -> Duration {
        let (tx, rx) = mpsc::channel();
        self.tx
            .as_ref()
            .expect("running")
            .send(Cmd::Reopen(tx))
            .expect("rig alive");
        rx.recv().expect("rig reply")
    }
}

impl Drop for AppendRig {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs the store's background work in a low-priority task queue, as the engine does,
/// until the returned flag is set.
fn spawn_background(store: Rc<Store<DmaStorage>>) -> Rc<std::cell::Cell<bool>> {
    let stop = Rc::new(std::cell::Cell::new(false));
    let flag = stop.clone();
    let tq = glommio::executor().create_task_queue(
        glommio::Shares::Static(100),
        glommio::Latency::NotImportant,
        "background",
    );
    glommio::spawn_local_into(
        async move {
            while !flag.get() {
                match store.background_step().await {
                    Ok(true) => futures_lite::future::yield_now().await,
                    _ => {
                        let tick = glommio::timer::sleep(Duration::from_millis(50));
                        futures_lite::future::or(store.work_signal(), tick).await;
                    }
                }
            }
        },
        tq,
    )
    .expect("background task")
    .detach();
    stop
}

/// A producer batch of `n` records of `bytes` bytes each, JSON-ish payloads.
pub fn sample_batch(n: u32, bytes: usize) -> Vec<u8> {
    sample_batch_keyed(None, n, bytes)
}

/// Like `sample_batch`, with every record under `key` when given (else 1,000 device keys).
pub fn sample_batch_keyed(key: Option<&str>, n: u32, bytes: usize) -> Vec<u8> {
    let mut b = BatchBuilder::with_capacity(n as usize * (bytes + 32) + 64);
    for i in 0..n {
        let key = key.map_or_else(|| format!("device-{:06}", i % 1000), str::to_owned);
        let mut data = format!("{{\"seq\":{i},\"event\":\"click\",\"pad\":\"").into_bytes();
        data.resize(bytes.saturating_sub(2).max(data.len()), b'x');
        data.extend_from_slice(b"\"}");
        data.truncate(bytes);
        b.push(key.as_bytes(), &data, None).expect("valid record");
    }
    b.finish()
}

pub use spate_protocol::routing::key_for_shard;

async fn append_run(store: &Rc<Store<DmaStorage>>, load: AppendLoad) -> AppendStats {
    let batch = Rc::new(sample_batch(load.records_per_batch, load.record_bytes));
    let batches_total = load.total_bytes.div_ceil(batch.len() as u64);
    let issued = Rc::new(std::cell::Cell::new(0u64));
    let before = store.stats();
    let started = Instant::now();
    let tasks: Vec<_> = (0..load.producers)
        .map(|p| {
            let (store, batch, issued) = (store.clone(), batch.clone(), issued.clone());
            let key = rig_key(p as u32 % load.shards.clamp(1, RIG_SHARDS));
            glommio::spawn_local(async move {
                while issued.get() < batches_total {
                    issued.set(issued.get() + 1);
                    store
                        .append(key, &batch, load.records_per_batch)
                        .await
                        .expect("append");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await;
    }
    let elapsed = started.elapsed();
    let after = store.stats();
    AppendStats {
        elapsed,
        records: batches_total * u64::from(load.records_per_batch),
        bytes: batches_total * batch.len() as u64,
        store: StoreStats {
            rounds: after.rounds - before.rounds,
            round_syncs: after.round_syncs - before.round_syncs,
            appends: after.appends - before.appends,
            journal_bytes: after.journal_bytes - before.journal_bytes,
            direct_bytes: after.direct_bytes - before.direct_bytes,
            write_behind_bytes: after.write_behind_bytes - before.write_behind_bytes,
            fill_bytes: after.fill_bytes - before.fill_bytes,
            prewrite_bytes: after.prewrite_bytes - before.prewrite_bytes,
            checkpoints: after.checkpoints - before.checkpoints,
            checkpoint_syncs: after.checkpoint_syncs - before.checkpoint_syncs,
            rolls: after.rolls - before.rolls,
            write_us: after.write_us - before.write_us,
            sync_us: after.sync_us - before.sync_us,
            write_us_max: after.write_us_max,
            sync_us_max: after.sync_us_max,
            replayed_rounds: 0,
            replayed_bytes: 0,
            cut_shards: 0,
            sync_buckets: [0; spate_engine::metrics::LATENCY_BUCKETS],
            round_buckets: [0; spate_engine::metrics::LATENCY_BUCKETS],
            waits: std::array::from_fn(|i| after.waits[i] - before.waits[i]),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The benchmark workloads, tiny: they must run and produce sane figures.
    #[test]
    fn append_and_reopen_workloads_run_tiny() {
        let rig = AppendRig::start(None, None, tiny_store_config());
        for (record_bytes, per_batch, shards) in [(100, 500, 1), (1024, 64, 1), (1000, 1, 64)] {
            let load = AppendLoad {
                record_bytes,
                records_per_batch: per_batch,
                producers: 64,
                shards,
                total_bytes: 8 << 20,
                keep: false,
            };
            let s = rig.append(load);
            assert!(s.bytes >= 8 << 20);
            assert!(s.records_per_s() > 0.0 && s.bytes_per_s() > 0.0);
            assert!(s.store.rounds > 0);
        }
        assert!(rig.reopen() < Duration::from_secs(30));
    }

    #[test]
    fn sample_batches_have_the_requested_shape() {
        let b = sample_batch(10, 100);
        let h = spate_protocol::batch::BatchHeader::decode(&b).unwrap();
        assert_eq!(h.record_count, 10);
        for r in spate_protocol::batch::RecordIter::new(&b, 10) {
            assert_eq!(r.unwrap().data.len(), 100);
        }
    }
}
