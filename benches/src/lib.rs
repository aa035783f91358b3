//! Benchmark workloads shared by the criterion harnesses in `benches/` and by the tiny
//! versions of them that run under `cargo test` (so the benchmarks cannot rot).
//!
//! `AppendRig` runs one shard log on one pinned glommio executor (the engine's own storage
//! path: O_DIRECT writes through io_uring, group commit, fdatasync per round) and lets a
//! benchmark drive it from the outside: append N bytes with P concurrent producers, reopen
//! (recovery), and recycle segments between runs so the disk does not fill up.

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use spate_engine::clock::SystemClock;
use spate_engine::io::DmaStorage;
use spate_engine::log::{LogConfig, ShardIdent, ShardLog};
use spate_engine::spare::SparePool;
use spate_protocol::batch::BatchBuilder;

/// What one append run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendStats {
    pub elapsed: Duration,
    pub records: u64,
    /// Batch bytes written (what the disk took, headers included).
    pub bytes: u64,
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
    pub total_bytes: u64,
    /// Keep the data afterwards (recovery benchmarks); otherwise sealed segments are
    /// recycled into the spare pool after the run.
    pub keep: bool,
}

enum Cmd {
    Append(AppendLoad, mpsc::Sender<AppendStats>),
    Latency(u32, mpsc::Sender<Vec<Duration>>),
    Reopen(mpsc::Sender<Duration>),
}

/// One shard log on a dedicated, pinned glommio executor.
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

/// A log configuration for benchmarks: full-size segments from the start.
pub fn bench_log_config() -> LogConfig {
    let mut cfg = LogConfig {
        segment_bytes_min: 256 << 20,
        ..LogConfig::default()
    };
    // For tuning experiments: SPATE_BENCH_CHUNK_KIB overrides the staging buffer size.
    if let Some(kib) = std::env::var("SPATE_BENCH_CHUNK_KIB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        cfg.write_chunk_bytes_max = kib << 10;
    }
    cfg
}

impl AppendRig {
    /// Starts the rig on `cpu` (or unpinned), in a temporary directory under `base` (the
    /// directory must be on the disk being measured), with `spares` ready segments.
    pub fn start(
        base: Option<PathBuf>,
        cpu: Option<usize>,
        cfg: LogConfig,
        spares: usize,
    ) -> AppendRig {
        let dir = match base {
            Some(b) => tempfile::tempdir_in(b).expect("temp dir"),
            None => tempfile::tempdir().expect("temp dir"),
        };
        let path = dir.path().to_path_buf();
        let (tx, rx) = mpsc::channel::<Cmd>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let placement = cpu.map_or(glommio::Placement::Unbound, glommio::Placement::Fixed);
        let thread = glommio::LocalExecutorBuilder::new(placement)
            .name("bench-shard")
            .spawn(move || async move {
                let storage = Rc::new(DmaStorage);
                let spare_dir = path.join("spare");
                DmaStorage::warm_up(&spare_dir).await.expect("direct I/O works");
                let pool = Rc::new(SparePool::open(&*storage, spare_dir, cfg.segment_bytes, spares).expect("pool"));
                pool.fill(&*storage).await.expect("fill spares");
                let ident = ShardIdent { stream_id: 1, shard_id: 0 };
                let open = || {
                    ShardLog::open(
                        storage.clone(),
                        path.join("shard"),
                        ident,
                        cfg,
                        Arc::new(SystemClock),
                        pool.clone(),
                    )
                };
                let mut log = Rc::new(open().await.expect("open log"));
                ready_tx.send(()).expect("ready");
                while let Ok(cmd) = rx.recv() {
                    match cmd {
                        Cmd::Append(load, reply) => {
                            let before = log.stats();
                            let stats = append_run(&log, load).await;
                            if std::env::var_os("SPATE_BENCH_VERBOSE").is_some() {
                                let a = log.stats();
                                let rounds = (a.rounds - before.rounds).max(1);
                                eprintln!(
                                    "rounds {rounds} avg {} KiB, appends/round {:.1}, write {} us/round, sync {} us/round, rolls {}, {:.2} GB/s",
                                    (a.round_bytes - before.round_bytes) / rounds / 1024,
                                    (a.appends - before.appends) as f64 / rounds as f64,
                                    (a.write_us - before.write_us) / rounds,
                                    (a.sync_us - before.sync_us) / rounds,
                                    a.rolls - before.rolls,
                                    stats.bytes_per_s() / 1e9
                                );
                            }
                            // Recycle everything sealed and top the pool up, outside the timing.
                            if !load.keep {
                                log.apply_retention(i64::MAX).await.expect("recycle");
                            }
                            pool.fill(&*storage).await.expect("refill spares");
                            let _ = reply.send(stats);
                        }
                        Cmd::Latency(n, reply) => {
                            // One producer, one 100 B record per append: the latency of a
                            // lone durable append (write + fdatasync), nothing to share it with.
                            let batch = sample_batch(1, 100);
                            let mut out = Vec::with_capacity(n as usize);
                            for _ in 0..n {
                                let t = Instant::now();
                                log.append(&batch, 1).await.expect("append");
                                out.push(t.elapsed());
                            }
                            let _ = reply.send(out);
                        }
                        Cmd::Reopen(reply) => {
                            drop(log);
                            let started = Instant::now();
                            log = Rc::new(open().await.expect("reopen"));
                            let _ = reply.send(started.elapsed());
                        }
                    }
                }
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

    /// Drops and reopens the log (recovery), returning the time `open` took.
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

async fn append_run(log: &Rc<ShardLog<DmaStorage>>, load: AppendLoad) -> AppendStats {
    let batch = Rc::new(sample_batch(load.records_per_batch, load.record_bytes));
    let batches_total = load.total_bytes.div_ceil(batch.len() as u64);
    let issued = Rc::new(std::cell::Cell::new(0u64));
    let started = Instant::now();
    let tasks: Vec<_> = (0..load.producers)
        .map(|_| {
            let (log, batch, issued) = (log.clone(), batch.clone(), issued.clone());
            glommio::spawn_local(async move {
                while issued.get() < batches_total {
                    issued.set(issued.get() + 1);
                    log.append(&batch, load.records_per_batch)
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
    AppendStats {
        elapsed,
        records: batches_total * u64::from(load.records_per_batch),
        bytes: batches_total * batch.len() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The benchmark workloads, tiny: they must run and produce sane figures.
    #[test]
    fn append_and_reopen_workloads_run_tiny() {
        let cfg = LogConfig {
            segment_bytes: 16 << 20,
            segment_bytes_min: 16 << 20,
            ..LogConfig::default()
        };
        let rig = AppendRig::start(None, None, cfg, 1);
        for (record_bytes, per_batch) in [(100, 500), (1024, 64)] {
            let load = AppendLoad {
                record_bytes,
                records_per_batch: per_batch,
                producers: 4,
                total_bytes: 20 << 20,
                keep: false,
            };
            let s = rig.append(load);
            assert!(s.bytes >= 20 << 20);
            assert!(s.records_per_s() > 0.0 && s.bytes_per_s() > 0.0);
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
