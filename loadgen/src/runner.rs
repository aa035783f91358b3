//! One load-generator run: set up the stream, start the consumers, drive the producers for
//! the warm-up and the measured window, drain, read back (`--verify`), and report.
//!
//! Tasks (all on the load generator's tokio runtime, pinned to `--cores`):
//!
//! ```text
//!  generator p ──send──▶ client Producer p (own connection) ──▶ engine
//!      │ (SendHandle, due time, key, counter)                      │
//!      ▼                                                           │ acks
//!  collector p: awaits every handle as it resolves, records ack    ▼
//!  latency (from the due time), counts throttled / errors,    consumers (crate::consumers):
//!  marks acknowledged counters for --verify                    poll, push or group, from
//!                                                              the tip; record end-to-end
//!                                                              latency
//!  progress: one line on stderr per second
//! ```
//!
//! A progress line labels every figure with what it is: `/s` rates and the ack (and
//! end-to-end) latency `p99 (1s)` / `max (1s)` in ms cover the last second only (warm-up
//! included); `total ...` counts are since the start of the run; `loadgen cpu` is this
//! process's CPU over the last second, in cores:
//!
//! ```text
//! [   2.0s] sent/s    5024  acked/s    5072  acked MiB/s    5.0  ack p99 (1s)  60.831 ms  ack max (1s)  70.655 ms  consumed/s    5071  e2e p99 (1s)  61.695 ms  e2e max (1s)  72.127 ms  throttled/s     0  errors/s   0  total acked     9985  total throttled      0  total errors   0  loadgen cpu 1.35 cores
//! ```
//!
//! The final figures (the measured window only) are the report's; the binary prints them
//! as a table ([`Report::summary_table`]).
//!
//! `--reshard AT:OP` steps (UpdateShardCount, SplitShard, MergeShards) are made on the
//! admin connection at their times while the producers go on (the client re-routes what a
//! closing shard refuses); each is timed, and the ack latency of the records due in its
//! change window (from 0.1 s before it until 0.9 s after its answer) is kept apart from
//! the rest (the steady state). `--verify` reads every shard the stream has at the end,
//! closed parents included (several at once), and checks them in id order, so each key is
//! checked across the lineage.
//!
//! `--stop-after-mib MIB` (closed loop) stops each producer once the producers together
//! have sent that much; the measured window then ends when the last one stopped.
//!
//! `--rate-step AT:RATE` changes the offered rate during the run ([`Schedule`]);
//! `--on-demand` switches the created stream to on-demand capacity first; `--timeline`
//! samples the live counters and a description of the stream every second (open shards,
//! on-demand scaling decisions) into the report.
//!
//! A generator never waits for an acknowledgement itself (open loop); its only brake is
//! the window of `--inflight` outstanding records (and the client's own buffer bounds),
//! which in closed loop is what paces it. Each producer owns its keys, so a key's records
//! are sent in counter order by one task.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use spate_client::{
    CapacityMode, Client, ClientConfig, ClientError, Entry, ErrorCode, Limits, Position, Producer,
    ProducerConfig, PutResult, ReadOptions, RetryPolicy, SendHandle, ShardMap, ShardRoute,
    ShardState, StreamConfig,
};
use spate_protocol::batch::BatchBuilder;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use crate::config::{Api, KeyMode, LimitsArg, ReshardOp, ReshardStep, RunConfig};
use crate::consumers::{ConsumerStats, Prepared, StopAt};
use crate::keys::{make_keys, owned_by};
use crate::payload::{self, Header, PaddingPool, RecordWriter, Rng};
use crate::report::{
    git_sha, unix_now_s, ConsumerReport, Machine, Report, ReshardReport, ScalingSeen,
    TimelineSecond,
};
use crate::schedule::{wait_until, Schedule};
use crate::stats::{core_use, cpu_ticks, CpuTimes, CpuUse, Latency};
use crate::verify::{BitSet, Verifier};
use crate::Error;

const MIB: f64 = 1024.0 * 1024.0;
/// Bytes asked for per read. Not the protocol's 10 MiB: the server may answer a 10 MiB
/// read with whole batches past 10 MiB, in a frame larger than the client accepts
/// ("frame of 10741664 bytes exceeds the maximum of 10551639").
pub(crate) const READ_BYTES_MAX: u32 = 4 << 20;
/// How long producers may take to settle their outstanding records after the run.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long consumers may take to reach the tip after the producers are done.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);
/// A `--reshard` step's change window starts this long before the step is due (records
/// already in flight when the shards close)...
const CHANGE_BEFORE: Duration = Duration::from_millis(100);
/// ... and ends this long after the call answered (records refused by a closed shard and
/// sent again on the new routes, the producers' first calls to new shards).
const CHANGE_AFTER: Duration = Duration::from_millis(900);

/// Runs `cfg` on a fresh runtime pinned to `cfg.cores` and returns its report. Blocks.
pub fn run_blocking(cfg: &RunConfig) -> Result<Report, Error> {
    let rt = runtime(cfg.cores.as_deref())?;
    let cfg = cfg.clone();
    // The run is spawned so that it, too, runs on the pinned workers.
    rt.block_on(async move { tokio::spawn(async move { run(&cfg).await }).await })
        .map_err(|e| Error::new(format!("the run panicked or was cancelled: {e}")))?
}

/// A multi-threaded runtime with one worker per CPU of `cores`, each pinned to one of
/// them; unpinned with a worker per available CPU when `cores` is `None`.
pub fn runtime(cores: Option<&[usize]>) -> Result<tokio::runtime::Runtime, Error> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.enable_all().thread_name("spate-loadgen");
    match cores {
        Some(cores) => {
            crate::cpus::check_available(cores).map_err(Error::new)?;
            b.worker_threads(cores.len())
                .on_thread_start(crate::cpus::pinner(cores.to_vec()));
        }
        None => {
            b.worker_threads(crate::cpus::available_cpus().len().max(1));
        }
    }
    b.build()
        .map_err(|e| Error::new(format!("cannot start the runtime: {e}")))
}

/// What every task of a run shares (read-only but for the live counters).
pub(crate) struct Shared {
    pub(crate) t0: Instant,
    warmup_ns: u64,
    end_ns: u64,
    pub(crate) run_id: u32,
    pub(crate) keys: Arc<Vec<String>>,
    pub(crate) live: Live,
    /// Progress lines are printed: keep the per-second histograms.
    pub(crate) progress: bool,
    /// One per `--reshard` step.
    changes: Vec<ChangeWindow>,
    /// `--stop-after-mib`: bytes (key and data) the producers may still send.
    budget_bytes: Option<AtomicI64>,
    /// SIGINT or SIGTERM came: the producers send nothing more, and the run ends as at its
    /// planned end (drained, consumers caught up, reported, cleaned up).
    interrupted: std::sync::atomic::AtomicBool,
}

/// A `--reshard` step's change window on the run's clock: the records due from `from_ns`
/// until `until_ns`, which stays unbounded until the step's call has answered (a record
/// acknowledged before then was due during the change or just before it).
struct ChangeWindow {
    from_ns: u64,
    until_ns: AtomicU64,
}

impl ChangeWindow {
    fn contains(&self, origin_ns: u64) -> bool {
        origin_ns >= self.from_ns && origin_ns < self.until_ns.load(Ordering::Relaxed)
    }
}

impl Shared {
    /// A run's shared state for unit tests: run `run_id` over `keys`, its clock started
    /// now, measuring from `warmup_ns` to `end_ns`.
    #[cfg(test)]
    pub(crate) fn for_test(run_id: u32, keys: Vec<String>, warmup_ns: u64, end_ns: u64) -> Shared {
        Shared {
            t0: Instant::now(),
            warmup_ns,
            end_ns,
            run_id,
            keys: Arc::new(keys),
            live: Live::default(),
            progress: false,
            changes: Vec::new(),
            budget_bytes: None,
            interrupted: Default::default(),
        }
    }

    pub(crate) fn now_ns(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }

    /// Whether a time on the run's clock is in the measured window.
    pub(crate) fn in_window(&self, origin_ns: u64) -> bool {
        (self.warmup_ns..self.end_ns).contains(&origin_ns)
    }
}

/// Counters of the whole run (warm-up included) for the progress line.
#[derive(Default)]
pub(crate) struct Live {
    sent: AtomicU64,
    acked: AtomicU64,
    acked_bytes: AtomicU64,
    throttled: AtomicU64,
    errors: AtomicU64,
    pub(crate) consumed: AtomicU64,
    /// When the last throttled answer came (run clock, ns; 0: none yet).
    last_throttled_ns: AtomicU64,
}

/// A producer's figures for the measured window (errors: the whole run).
#[derive(Default)]
struct ProducerStats {
    ack: Latency,
    /// Ack latency since the last progress line (warm-up included), with progress on.
    ack_1s: Latency,
    /// `--reshard`: ack latency in each step's change window, and outside all of them.
    ack_changes: Vec<Latency>,
    ack_steady: Latency,
    acked: u64,
    bytes: u64,
    throttled: u64,
    errors: u64,
    errors_by_code: BTreeMap<String, u64>,
    first_error: Option<String>,
}

impl ProducerStats {
    fn error(&mut self, e: &ClientError) {
        self.errors += 1;
        *self.errors_by_code.entry(error_name(e)).or_default() += 1;
        self.first_error.get_or_insert_with(|| e.to_string());
    }
}

/// A producer before its generator starts.
enum ProducerKind {
    Producer(Producer),
    PutRecords(Client),
    PutBatches(Client, Arc<ShardMap>),
}

/// A record sent and not yet settled.
struct Pending {
    handle: SendHandle,
    meta: Meta,
}

#[derive(Clone, Copy)]
struct Meta {
    /// Index into the producer's own keys.
    key_local: u32,
    counter: u32,
    origin_ns: u64,
    bytes: u32,
}

/// What a generator did.
struct Generated {
    sent: u64,
    sent_in_window: u64,
    unsent: u64,
    /// `--api put-records` with `--verify`: the acknowledged counters per owned key.
    acked: Option<Vec<BitSet>>,
}

/// Runs `cfg` on the current tokio runtime; see the module docs.
pub async fn run(cfg: &RunConfig) -> Result<Report, Error> {
    cfg.validate().map_err(Error::new)?;
    let started_unix_s = unix_now_s();
    let client_cfg = ClientConfig {
        client_name: format!("spate-loadgen/{}", env!("CARGO_PKG_VERSION")),
        retry: RetryPolicy {
            max_attempts: cfg.retries,
            ..RetryPolicy::default()
        },
        ..crate::config::client_config(cfg.tls.as_ref())
    };
    let admin = Client::connect_with(cfg.server.clone(), client_cfg.clone())
        .await
        .map_err(|e| connect_failed(&cfg.server, &e))?;
    let engine_cores = admin.server_info().cores.len();
    if let Some(shards) = cfg.create_shards {
        create_stream(&admin, cfg, shards).await?;
        if cfg.on_demand {
            if let Err(e) = switch_to_on_demand(&admin, &cfg.stream).await {
                let _ = admin.delete_stream(&cfg.stream).await;
                return Err(e);
            }
        } else if let Some(warning) = over_limits(cfg, &limits_of(cfg.limits), shards) {
            eprintln!("spate-loadgen: {warning}");
        }
    } else if let Ok(info) = admin.describe_stream(&cfg.stream).await {
        // An existing stream keeps its own limits, whatever --limits says.
        if cfg.limits == LimitsArg::Off && info.limits != Limits::Off {
            eprintln!(
                "spate-loadgen: --limits off applies to a stream the run creates (--create-shards); stream {} keeps its limits",
                cfg.stream
            );
        }
        if info.mode != CapacityMode::OnDemand {
            if let Some(warning) = over_limits(cfg, &info.limits, open_shards(&info)) {
                eprintln!("spate-loadgen: {warning}");
            }
        }
    }
    let result = run_on_stream(cfg, &admin, client_cfg, engine_cores, started_unix_s).await;
    if cfg.delete_after {
        if let Err(e) = admin.delete_stream(&cfg.stream).await {
            tracing::warn!(stream = %cfg.stream, error = %e, "could not delete the stream");
        }
    }
    result
}

fn limits_of(arg: LimitsArg) -> Limits {
    match arg {
        LimitsArg::Kinesis => Limits::Kinesis,
        LimitsArg::Off => Limits::Off,
    }
}

/// A warning when the offered rate is above what `limits` let `shards` shards take: the
/// surplus is throttled (reported, never dropped), which a user should expect up front.
fn over_limits(cfg: &RunConfig, limits: &Limits, shards: u32) -> Option<String> {
    let (records_per_s, bytes_per_s, what) = match *limits {
        Limits::Off => return None,
        Limits::Kinesis => (1000, 1 << 20, "Kinesis limits"),
        Limits::Custom {
            write_bytes_per_s,
            write_records_per_s,
            ..
        } => (write_records_per_s, write_bytes_per_s, "its limits"),
    };
    if cfg.rate <= 0.0 || shards == 0 {
        return None;
    }
    // Per shard, records and bytes (keys and data count).
    let per_record = cfg.size.mean() + 16.0;
    let records = records_per_s as f64 * f64::from(shards);
    let bytes = bytes_per_s as f64 * f64::from(shards);
    let capacity = records.min(bytes / per_record);
    (cfg.rate > capacity * 1.05).then(|| {
        format!(
            "offering {:.0} records/s to {shards} shard(s) with {what}, which take about {:.0} records/s of this size: expect about {:.0} % throttled (use --limits off on a stream the run creates, or more shards)",
            cfg.rate,
            capacity,
            100.0 * (1.0 - capacity / cfg.rate)
        )
    })
}

async fn create_stream(admin: &Client, cfg: &RunConfig, shards: u32) -> Result<(), Error> {
    let limits = limits_of(cfg.limits);
    match admin
        .create_stream(
            &cfg.stream,
            &StreamConfig::new(shards)
                .limits(limits)
                .encryption(cfg.encryption),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(ErrorCode::StreamExists) => Err(Error::new(format!(
            "stream {} already exists: drop --create-shards to use it, or pick another name",
            cfg.stream
        ))),
        Err(e) => Err(Error::new(format!(
            "cannot create stream {}: {e}",
            cfg.stream
        ))),
    }
}

/// UpdateStreamMode to on-demand, then waits (up to 10 s) until a description says so and
/// shows at least 4 open shards (an on-demand stream's minimum).
async fn switch_to_on_demand(admin: &Client, stream: &str) -> Result<(), Error> {
    admin
        .update_stream_mode(stream, CapacityMode::OnDemand, None)
        .await
        .map_err(|e| Error::new(format!("cannot switch stream {stream} to on-demand: {e}")))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = admin
            .describe_stream(stream)
            .await
            .map_err(|e| Error::new(format!("cannot describe stream {stream}: {e}")))?;
        if info.mode == CapacityMode::OnDemand && open_shards(&info) >= 4 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::new(format!(
                "stream {stream} is still {} with {} open shards 10 s after switching it to on-demand",
                info.mode.name(),
                open_shards(&info)
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn open_shards(info: &spate_client::StreamInfo) -> u32 {
    info.shards
        .iter()
        .filter(|s| s.state == ShardState::Open)
        .count() as u32
}

async fn run_on_stream(
    cfg: &RunConfig,
    admin: &Client,
    client_cfg: ClientConfig,
    engine_cores: usize,
    started_unix_s: u64,
) -> Result<Report, Error> {
    // While the run is set up, SIGINT or SIGTERM quits at once (as a signal's default would);
    // from the clock's start it stops the run early instead, with its report and clean-up.
    let setup_exit = exit_on_interrupt();
    let info = admin
        .describe_stream(&cfg.stream)
        .await
        .map_err(|e| Error::new(format!("cannot describe stream {}: {e}", cfg.stream)))?;
    let shards: Vec<u32> = info
        .shards
        .iter()
        .filter(|s| s.state == ShardState::Open)
        .map(|s| s.id)
        .collect();
    let size_max = cfg.size.max as u32;
    if size_max > info.max_record_data_bytes {
        return Err(Error::new(format!(
            "--size {} exceeds stream {}'s record limit of {} bytes",
            cfg.size, cfg.stream, info.max_record_data_bytes
        )));
    }
    let map = admin
        .shard_map(&cfg.stream)
        .await
        .map_err(|e| Error::new(format!("cannot route stream {}: {e}", cfg.stream)))?;
    let keys = Arc::new(make_keys(cfg.keys, cfg.key_mode, &map).map_err(Error::new)?);
    let run_id = payload::mix(cfg.seed ^ u64::from(std::process::id()) ^ now_nanos()) as u32;
    let warmup_ns = cfg.warmup().as_nanos() as u64;
    let end_ns = cfg.run_duration().as_nanos() as u64;

    // Producers connect (each on its own connection) before the clock starts.
    let mut producers = Vec::with_capacity(cfg.producers);
    for p in 0..cfg.producers {
        let client = Client::connect_with(cfg.server.clone(), client_cfg.clone())
            .await
            .map_err(|e| Error::new(format!("producer {p} cannot connect: {e}")))?;
        let producer = match cfg.api {
            Api::Producer | Api::ProducerCallback => ProducerKind::Producer(
                client
                    .producer(
                        &cfg.stream,
                        ProducerConfig {
                            linger: Duration::from_millis(cfg.linger_ms),
                            batch_bytes_max: cfg.batch_bytes,
                            ..ProducerConfig::default()
                        },
                    )
                    .await
                    .map_err(|e| Error::new(format!("producer {p} cannot start: {e}")))?,
            ),
            Api::PutRecords => {
                // Learn the routing table now, not on the first call.
                client
                    .shard_map(&cfg.stream)
                    .await
                    .map_err(|e| Error::new(format!("producer {p} cannot route: {e}")))?;
                ProducerKind::PutRecords(client)
            }
            Api::PutBatches => {
                let map = client
                    .shard_map(&cfg.stream)
                    .await
                    .map_err(|e| Error::new(format!("producer {p} cannot route: {e}")))?;
                ProducerKind::PutBatches(client, map)
            }
        };
        producers.push(producer);
    }

    // Consumers open their iterators at the tip (or join their group) before anything is
    // sent, so they see every record of the run.
    let (stop_tx, stop_rx) = watch::channel::<StopAt>(None);
    let prepared = match cfg.consumers {
        0 => None,
        _ => Some(Prepared::open(cfg, admin, &client_cfg, &info, &shards).await?),
    };
    let consumer_names = prepared.as_ref().map(Prepared::names).unwrap_or_default();

    let interrupt = interrupt_signal();
    tokio::pin!(interrupt);
    drop(setup_exit);
    // The clock starts now: record n is due at t0 + n / rate.
    let shared = Arc::new(Shared {
        t0: Instant::now(),
        warmup_ns,
        end_ns,
        run_id,
        keys: keys.clone(),
        live: Live::default(),
        progress: cfg.progress,
        changes: cfg
            .reshards
            .iter()
            .map(|step| ChangeWindow {
                from_ns: Duration::from_secs_f64(step.at_s)
                    .saturating_sub(CHANGE_BEFORE)
                    .as_nanos() as u64,
                until_ns: AtomicU64::new(u64::MAX),
            })
            .collect(),
        budget_bytes: cfg
            .stop_after_mib
            .map(|mib| AtomicI64::new((mib * MIB) as i64)),
        interrupted: Default::default(),
    });
    // The shards change (if asked) on the admin connection while the producers go on.
    let reshards = (!cfg.reshards.is_empty()).then(|| {
        tokio::spawn(reshard_steps(
            admin.clone(),
            cfg.stream.clone(),
            cfg.reshards.clone(),
            shared.clone(),
        ))
    });
    let consumer_stats: Vec<Arc<Mutex<ConsumerStats>>> = (0..cfg.consumers)
        .map(|_| Arc::new(Mutex::new(ConsumerStats::default())))
        .collect();
    let consumers = prepared.map(|p| p.spawn(cfg, &shared, &consumer_stats, &stop_rx));

    let pool = Arc::new(PaddingPool::new(cfg.size.max, cfg.seed));
    let mut producer_stats = Vec::new();
    let mut generators = Vec::new();
    let mut collectors = Vec::new();
    // How many generators have stopped (with --stop-after-mib, before the run's end).
    let (stopped_tx, mut stopped_rx) = watch::channel(0usize);
    for (p, producer) in producers.into_iter().enumerate() {
        let owned = owned_by(p, cfg.producers, cfg.keys);
        let stats = Arc::new(Mutex::new(ProducerStats {
            ack_changes: vec![Latency::default(); cfg.reshards.len()],
            ..ProducerStats::default()
        }));
        let acked = cfg.verify.then(|| vec![BitSet::default(); owned.len()]);
        // The producer's `--inflight` window (its records sent and not settled).
        let window = Arc::new(Semaphore::new(cfg.inflight));
        let sender = match producer {
            ProducerKind::Producer(producer) if cfg.api == Api::ProducerCallback => {
                let sink = Arc::new(Sink {
                    verify: acked.is_some(),
                    shared: shared.clone(),
                    stats: stats.clone(),
                    acked: Mutex::new(acked),
                });
                // The generator closes its producer (every callback has run) before the
                // collectors are read.
                let (closed_tx, closed_rx) = oneshot::channel::<()>();
                let read = sink.clone();
                collectors.push(tokio::spawn(async move {
                    let _ = closed_rx.await;
                    read.acked.lock().expect("acked lock").take()
                }));
                Sender::ProducerCallback(producer, sink, closed_tx)
            }
            ProducerKind::Producer(producer) => {
                let (tx, rx) = mpsc::unbounded_channel();
                // Each owned key's shard (its index in the routes), by which the collector
                // keeps the handles in the order they will resolve.
                let lanes = owned
                    .iter()
                    .map(|&k| {
                        let key = keys[k as usize].as_bytes();
                        map.index_for_hash(spate_protocol::routing::hash_key(key))
                            .unwrap_or(0) as u32
                    })
                    .collect();
                collectors.push(tokio::spawn(collect(
                    rx,
                    shared.clone(),
                    stats.clone(),
                    acked,
                    lanes,
                    map.routes().len().max(1),
                    window.clone(),
                )));
                Sender::Producer(producer, tx)
            }
            ProducerKind::PutRecords(client) => Sender::PutRecords(client, acked),
            ProducerKind::PutBatches(client, map) => Sender::PutBatches(client, map, acked),
        };
        let gen = Generator::new(
            cfg,
            sender,
            p,
            owned,
            shared.clone(),
            stats.clone(),
            pool.clone(),
            window,
        );
        let stopped = stopped_tx.clone();
        generators.push(tokio::spawn(async move {
            let generated = gen.run().await;
            stopped.send_modify(|n| *n += 1);
            generated
        }));
        producer_stats.push(stats);
    }
    let done = Arc::new(AtomicBool::new(false));
    let progress = cfg.progress.then(|| {
        tokio::spawn(progress(
            shared.clone(),
            producer_stats.clone(),
            consumer_stats.clone(),
            done.clone(),
        ))
    });

    let (timeline_stop, timeline_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let timeline = cfg.timeline.then(|| {
        tokio::spawn(sample_timeline(
            admin.clone(),
            cfg.stream.clone(),
            schedule_of(cfg, 0, 1),
            info.last_scaling.clone(),
            shared.clone(),
            timeline_stop_rx,
        ))
    });

    // CPU is measured over the measured window.
    let mut interrupted: Option<(&str, f64)> = None;
    let stop_now = |signal: &'static str| {
        shared.interrupted.store(true, Ordering::Relaxed);
        eprintln!(
            "spate-loadgen: {signal}: stopping the run (again to quit at once, without a report or clean-up)"
        );
        (signal, shared.t0.elapsed().as_secs_f64())
    };
    tokio::select! {
        _ = tokio::time::sleep_until((shared.t0 + cfg.warmup()).into()) => {}
        signal = &mut interrupt => interrupted = Some(stop_now(signal)),
    }
    let cpu_start = (
        CpuTimes::of_self(),
        cfg.engine_pid.and_then(CpuTimes::of_pid),
    );
    let ticks_start = cpu_ticks();
    // Acknowledgements that arrive during the measured window, whatever their records' due
    // time: under an overload (records due in the window never sent) what the engine still
    // acknowledged, of the backlog.
    let acks_start = shared.live.acked.load(Ordering::Relaxed);
    let window_start = Instant::now();
    let run_end = tokio::time::sleep_until((shared.t0 + cfg.run_duration()).into());
    let budget_spent = cfg.stop_after_mib.is_some();
    let stopped_early = interrupted.is_some()
        || tokio::select! {
            _ = run_end => false,
            _ = stopped_rx.wait_for(|&n| n == cfg.producers), if budget_spent => true,
            signal = &mut interrupt => {
                interrupted = Some(stop_now(signal));
                true
            }
        };
    // Past the measured window (draining, consumers catching up, reading back, cleaning
    // up) a signal ends the process at once; not after this run (a bench runs several).
    let _tail_exit = exit_on_interrupt();
    let cpu_end = (
        CpuTimes::of_self(),
        cfg.engine_pid.and_then(CpuTimes::of_pid),
    );
    let window_s = window_start.elapsed().as_secs_f64();
    let window_acks = shared.live.acked.load(Ordering::Relaxed) - acks_start;
    let cpus = core_use(&ticks_start, &cpu_ticks());

    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        let mut generated = Vec::new();
        for g in generators {
            generated.push(g.await.expect("generator task"));
        }
        let mut acked = Vec::new();
        for c in collectors {
            acked.push(c.await.expect("collector task"));
        }
        (generated, acked)
    })
    .await;
    let Ok((mut generated, mut collected)) = drained else {
        done.store(true, Ordering::Relaxed);
        return Err(Error::new(format!(
            "producers still had unsettled records {} s after the run",
            DRAIN_TIMEOUT.as_secs()
        )));
    };
    // The timeline's last sample: every record is answered now.
    let _ = timeline_stop.send(());
    let (timeline, scalings) = match timeline {
        Some(task) => task
            .await
            .map_err(|e| Error::new(format!("the timeline task failed: {e}")))?,
        None => (Vec::new(), Vec::new()),
    };

    let steps = match reshards {
        Some(task) => task
            .await
            .map_err(|e| Error::new(format!("the reshard task failed: {e}")))?,
        None => Vec::new(),
    };

    // Consumers read up to each shard's last record, then stop. A stream that cannot be
    // described now (deleted under the run, the server gone) stops them where they are and
    // leaves nothing to read back, but what the producers saw is still reported.
    let (tips, incomplete) = match shard_tips(admin, &cfg.stream).await {
        Ok(tips) => (Some(tips), None),
        Err(e) => {
            let also = if cfg.verify {
                "; nothing read back"
            } else {
                ""
            };
            (None, Some(format!("{e}{also}")))
        }
    };
    let incomplete = match (interrupted, incomplete) {
        (Some((signal, at_s)), after) => Some(format!(
            "stopped by {signal} at {at_s:.1} s of {:.1} s{}",
            cfg.run_duration().as_secs_f64(),
            after.map(|a| format!("; {a}")).unwrap_or_default()
        )),
        (None, after) => after,
    };
    stop_tx.send_replace(Some(Arc::new(tips.iter().flatten().copied().collect())));
    let caught_up = match consumers {
        Some(c) => tokio::time::timeout(CATCH_UP_TIMEOUT, c.finish())
            .await
            .map(Some),
        None => Ok(None),
    };
    done.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        let _ = p.await;
    }
    let Ok(finished) = caught_up else {
        return Err(Error::new(format!(
            "consumers had not reached the tip {} s after the run",
            CATCH_UP_TIMEOUT.as_secs()
        )));
    };
    let mut group = finished.and_then(|f| f.group);

    let verify = if let (true, Some(tips)) = (cfg.verify, &tips) {
        let mut acked = vec![BitSet::default(); keys.len()];
        // Each producer's counters come from its collector or (put-records) itself.
        let mut collected = collected.drain(..);
        for (p, g) in generated.iter_mut().enumerate() {
            let local = match g.acked.take() {
                Some(local) => local,
                None => collected
                    .next()
                    .flatten()
                    .expect("verify keeps acknowledged counters"),
            };
            for (j, bits) in local.into_iter().enumerate() {
                acked[p + j * cfg.producers] = bits;
            }
        }
        // A group must have handed out every acknowledged record at least once.
        if let Some((report, seen)) = group.as_mut() {
            let missed = acked
                .iter()
                .zip(seen.iter())
                .map(|(a, s)| a.count_not_in(s));
            report.missed = Some(missed.sum());
        }
        Some(read_back(admin, &cfg.stream, tips, &shared, Verifier::new(acked)).await?)
    } else {
        None
    };

    // Assemble the report.
    let mut ack = Latency::default();
    let mut totals = ProducerStats {
        ack_changes: vec![Latency::default(); cfg.reshards.len()],
        ..ProducerStats::default()
    };
    for s in &producer_stats {
        let s = s.lock().expect("stats lock");
        ack.add(&s.ack);
        totals.ack_steady.add(&s.ack_steady);
        for (all, one) in totals.ack_changes.iter_mut().zip(&s.ack_changes) {
            all.add(one);
        }
        totals.acked += s.acked;
        totals.bytes += s.bytes;
        totals.throttled += s.throttled;
        totals.errors += s.errors;
        for (code, n) in &s.errors_by_code {
            *totals.errors_by_code.entry(code.clone()).or_default() += n;
        }
        if totals.first_error.is_none() {
            totals.first_error = s.first_error.clone();
        }
    }
    // With --stop-after-mib the window ends when the last producer stopped.
    let duration_s = if stopped_early {
        window_s
    } else {
        cfg.duration_s
    };
    let mut e2e = Latency::default();
    let consumers: Vec<ConsumerReport> = consumer_stats
        .iter()
        .zip(consumer_names)
        .enumerate()
        .map(|(id, (s, name))| {
            let s = s.lock().expect("stats lock");
            e2e.add(&s.e2e);
            ConsumerReport {
                id,
                name,
                records: s.records,
                bytes: s.bytes,
                records_per_s: s.records as f64 / duration_s,
                mib_per_s: s.bytes as f64 / MIB / duration_s,
                received_records_per_s: s.received_in_window as f64 / duration_s,
                e2e_latency_us: s.e2e.summary(),
                redelivered: s.redelivered,
                throttled: s.throttled,
                errors: s.errors,
            }
        })
        .collect();
    let with_consumers = cfg.consumers > 0;
    let consumed_records: u64 = consumers.iter().map(|c| c.records).sum();
    let consumed_bytes: u64 = consumers.iter().map(|c| c.bytes).sum();
    let records_due = cfg.rate.gt(&0.0).then(|| {
        let s = schedule_of(cfg, 0, 1);
        let before = if warmup_ns > 0 {
            s.due_count(warmup_ns - 1)
        } else {
            0
        };
        s.due_count(u64::MAX) - before
    });
    let loadgen_cores = cfg.cores.as_ref().map(Vec::len);
    let s_of = |ns: u64| ns as f64 / 1e9;
    let reshards: Vec<ReshardReport> = steps
        .into_iter()
        .zip(&shared.changes)
        .zip(&totals.ack_changes)
        .map(|((done, window), ack)| ReshardReport {
            step: done.step,
            started_s: s_of(done.started_ns),
            took_ms: done.took.as_secs_f64() * 1e3,
            map_version: done.result.as_ref().ok().map(|r| r.map_version),
            new_shards: done
                .result
                .as_ref()
                .map(|r| r.new_shards.clone())
                .unwrap_or_default(),
            open_shards_after: done.open_after,
            error: done.result.err(),
            window_s: [
                s_of(window.from_ns),
                s_of(window.until_ns.load(Ordering::Relaxed)),
            ],
            ack_latency_us: ack.summary(),
        })
        .collect();
    Ok(Report {
        tool: format!("spate-loadgen {}", env!("CARGO_PKG_VERSION")),
        engine_version: env!("CARGO_PKG_VERSION").to_string(),
        git_sha: git_sha(),
        started_unix_s,
        command: cfg.command_line(),
        params: cfg.clone(),
        machine: Machine::detect(engine_cores, cfg.cores.clone()),
        shards: shards.len(),
        records_due,
        records_sent: generated.iter().map(|g| g.sent_in_window).sum(),
        records_unsent: generated.iter().map(|g| g.unsent).sum(),
        records_acked: totals.acked,
        records_throttled: totals.throttled,
        errors: totals.errors,
        errors_by_code: totals.errors_by_code,
        first_error: totals.first_error,
        bytes_acked: totals.bytes,
        duration_s,
        acked_records_per_s: totals.acked as f64 / duration_s,
        acked_mib_per_s: totals.bytes as f64 / MIB / duration_s,
        acks_in_window_per_s: window_acks as f64 / window_s.max(1e-9),
        // With rate steps: the mean over the measured window.
        offered_records_per_s: match records_due {
            Some(due) if !cfg.rate_steps.is_empty() => Some(due as f64 / duration_s),
            _ => (cfg.rate > 0.0).then_some(cfg.rate),
        },
        ack_latency_us: ack.summary(),
        ack_latency_spectrum_us: ack.spectrum(),
        e2e_latency_us: with_consumers.then(|| e2e.summary()),
        e2e_latency_spectrum_us: with_consumers.then(|| e2e.spectrum()),
        consumer_mode: with_consumers.then_some(cfg.consumer_mode),
        consumed_records: with_consumers.then_some(consumed_records),
        consumed_records_per_s: with_consumers.then(|| consumed_records as f64 / duration_s),
        consumed_mib_per_s: with_consumers.then(|| consumed_bytes as f64 / MIB / duration_s),
        per_consumer_records_per_s: consumers.iter().map(|c| c.records_per_s).collect(),
        redelivered: with_consumers.then(|| consumers.iter().map(|c| c.redelivered).sum()),
        consumer_reads_throttled: with_consumers
            .then(|| consumers.iter().map(|c| c.throttled).sum()),
        group: group.map(|(report, _)| report),
        consumers,
        verify,
        loadgen_cpu: CpuUse::over(cpu_end.0.since(&cpu_start.0), window_s, loadgen_cores),
        engine_cpu: match (cpu_start.1, cpu_end.1) {
            (Some(a), Some(b)) => Some(CpuUse::over(b.since(&a), window_s, Some(engine_cores))),
            _ => None,
        },
        cpus,
        ack_latency_steady_us: (!reshards.is_empty()).then(|| totals.ack_steady.summary()),
        reshards,
        timeline,
        scalings,
        incomplete,
    })
}

/// `--timeline`: a sample every second of the run's clock (and a last one when `stop`
/// comes, once every record is answered): the live counters' change over the interval,
/// the records due in it, and a fresh description's open shards, map version and last
/// scaling decision (a new one is kept in the returned list).
async fn sample_timeline(
    admin: Client,
    stream: String,
    schedule: Schedule,
    mut last_scaling: Option<String>,
    sh: Arc<Shared>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> (Vec<TimelineSecond>, Vec<ScalingSeen>) {
    let mut tick = tokio::time::interval_at(
        (sh.t0 + Duration::from_secs(1)).into(),
        Duration::from_secs(1),
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut samples, mut scalings) = (Vec::new(), Vec::new());
    let counters = |l: &Live| {
        [
            l.sent.load(Ordering::Relaxed),
            l.acked.load(Ordering::Relaxed),
            l.acked_bytes.load(Ordering::Relaxed),
            l.throttled.load(Ordering::Relaxed),
            l.errors.load(Ordering::Relaxed),
        ]
    };
    let (mut before, mut before_ns) = ([0u64; 5], 0u64);
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            _ = &mut stop => true,
        };
        let now_ns = sh.now_ns();
        let now = counters(&sh.live);
        let last_throttled_ns = sh.live.last_throttled_ns.load(Ordering::Relaxed);
        let described =
            tokio::time::timeout(Duration::from_secs(2), admin.describe_stream(&stream))
                .await
                .ok()
                .and_then(Result::ok);
        let d = |i: usize| now[i].saturating_sub(before[i]);
        let throttled = d(3);
        samples.push(TimelineSecond {
            t_s: now_ns as f64 / 1e9,
            dt_s: now_ns.saturating_sub(before_ns) as f64 / 1e9,
            due: schedule.is_open_loop().then(|| {
                let before_due = if before_ns == 0 {
                    0
                } else {
                    schedule.due_count(before_ns)
                };
                schedule.due_count(now_ns).saturating_sub(before_due)
            }),
            sent: d(0),
            acked: d(1),
            acked_bytes: d(2),
            throttled,
            errors: d(4),
            last_throttled_s: (throttled > 0).then(|| last_throttled_ns as f64 / 1e9),
            open_shards: described.as_ref().map(open_shards),
            map_version: described.as_ref().map(|i| i.map_version),
        });
        if let Some(info) = described {
            if info.last_scaling.is_some() && info.last_scaling != last_scaling {
                scalings.push(ScalingSeen {
                    seen_s: now_ns as f64 / 1e9,
                    decision: info.last_scaling.clone().unwrap_or_default(),
                });
                last_scaling = info.last_scaling;
            }
        }
        (before, before_ns) = (now, now_ns);
        if last {
            return (samples, scalings);
        }
    }
}

/// What a `--reshard` step did.
struct StepDone {
    step: ReshardStep,
    /// On the run's clock.
    started_ns: u64,
    took: Duration,
    result: Result<spate_client::Reshard, String>,
    open_after: Option<u32>,
}

/// Makes each step when it is due (or when the previous one is done, if later), timing
/// its call, and closes its change window once the call has answered.
async fn reshard_steps(
    admin: Client,
    stream: String,
    steps: Vec<ReshardStep>,
    sh: Arc<Shared>,
) -> Vec<StepDone> {
    let mut done: Vec<StepDone> = Vec::new();
    for (i, step) in steps.into_iter().enumerate() {
        // What the call needs is looked up before it is due, outside its time.
        let split_at = match step.op {
            ReshardOp::Split { shard } => Some(middle_key(&admin, &stream, shard).await),
            _ => None,
        };
        let merge = match step.op {
            ReshardOp::Merge { shards: Some(pair) } => Ok(pair),
            ReshardOp::Merge { shards: None } => {
                match done.last().and_then(|d| d.result.as_ref().ok()) {
                    Some(r) if r.new_shards.len() == 2 => Ok((r.new_shards[0], r.new_shards[1])),
                    _ => Err("merge: the previous step did not open two shards to merge".into()),
                }
            }
            _ => Err(String::new()),
        };
        tokio::time::sleep_until((sh.t0 + Duration::from_secs_f64(step.at_s)).into()).await;
        let started_ns = sh.now_ns();
        let t = Instant::now();
        let result = match step.op {
            ReshardOp::Count { target } => admin
                .update_shard_count(&stream, target)
                .await
                .map_err(|e| e.to_string()),
            ReshardOp::Split { shard } => match split_at.expect("looked up above") {
                Ok(at) => admin
                    .split_shard(&stream, shard, at)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e),
            },
            ReshardOp::Merge { .. } => match merge {
                Ok((a, b)) => admin
                    .merge_shards(&stream, a, b)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e),
            },
        };
        let took = t.elapsed();
        let until = sh.now_ns().saturating_add(CHANGE_AFTER.as_nanos() as u64);
        sh.changes[i].until_ns.store(until, Ordering::Relaxed);
        let open_after = admin.describe_stream(&stream).await.ok().map(|info| {
            info.shards
                .iter()
                .filter(|s| s.state == ShardState::Open)
                .count() as u32
        });
        done.push(StepDone {
            step,
            started_ns,
            took,
            result,
            open_after,
        });
    }
    done
}

/// The hash key in the middle of `shard`'s range (where a split without a key cuts).
async fn middle_key(admin: &Client, stream: &str, shard: u32) -> Result<u128, String> {
    let info = admin
        .describe_stream(stream)
        .await
        .map_err(|e| format!("split: cannot describe {stream}: {e}"))?;
    let s = info
        .shards
        .iter()
        .find(|s| s.id == shard)
        .ok_or_else(|| format!("split: stream {stream} has no shard {shard}"))?;
    Ok(s.hash_key_start + (s.hash_key_end - s.hash_key_start) / 2 + 1)
}

/// Producer `p` of `producers`' due times: `cfg.rate`, changed by `cfg.rate_steps`.
fn schedule_of(cfg: &RunConfig, p: usize, producers: usize) -> Schedule {
    let steps: Vec<(Duration, f64)> = cfg
        .rate_steps
        .iter()
        .map(|s| (Duration::from_secs_f64(s.at_s), s.rate))
        .collect();
    Schedule::with_steps(cfg.rate, &steps, p, producers, cfg.run_duration())
}

pub(crate) fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The first SIGINT or SIGTERM from now on (the handlers are installed at the call), by
/// name; never, if they cannot be installed (the signal then ends the process as usual).
fn interrupt_signal() -> impl std::future::Future<Output = &'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    );
    async move {
        match handlers {
            (Ok(mut int), Ok(mut term)) => tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            },
            _ => std::future::pending().await,
        }
    }
}

/// Until the guard is dropped, SIGINT or SIGTERM ends the process at once, with the status
/// a shell gives a process that signal ended (128 + its number).
fn exit_on_interrupt() -> AbortOnDrop {
    let signal = interrupt_signal();
    AbortOnDrop(tokio::spawn(async move {
        let status = match signal.await {
            "SIGTERM" => 128 + libc::SIGTERM,
            _ => 128 + libc::SIGINT,
        };
        std::process::exit(status);
    }))
}

/// A task that ends with its guard.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A failed connect, naming the server once (the client's own message may already).
pub(crate) fn connect_failed(server: &str, e: &ClientError) -> Error {
    let m = e.to_string();
    Error::new(if m.contains(server) {
        m
    } else {
        format!("cannot connect to {server}: {m}")
    })
}

/// A short name for an error, for `errors_by_code`.
fn error_name(e: &ClientError) -> String {
    match (e.code(), e) {
        (Some(code), _) => format!("{code:?}"),
        (None, ClientError::Connect { .. }) => "Connect".into(),
        (None, ClientError::ConnectionLost { .. }) => "ConnectionLost".into(),
        (None, ClientError::Timeout { .. }) => "Timeout".into(),
        (None, ClientError::Closed) => "Closed".into(),
        (None, _) => "Other".into(),
    }
}

/// Every shard's last sequence number (`None`: empty), from a fresh description: the open
/// ones and the closed parents still retained, in ascending id order, which is lineage
/// order (a child's id is above its parents'), so a key's records are read back in the
/// order they were written even when a split or merge moved the key during the run.
async fn shard_tips(admin: &Client, stream: &str) -> Result<Vec<(u32, Option<u64>)>, Error> {
    let info = admin.describe_stream(stream).await.map_err(|e| {
        Error::new(format!(
            "cannot describe stream {stream} after the run: {e}"
        ))
    })?;
    let mut tips: Vec<(u32, Option<u64>)> =
        info.shards.iter().map(|s| (s.id, s.last_seq)).collect();
    tips.sort_by_key(|&(id, _)| id);
    Ok(tips)
}

/// How a generator hands its records to the client.
enum Sender {
    /// `Producer::send` per record; a collector task awaits the handles.
    Producer(Producer, mpsc::UnboundedSender<Vec<Pending>>),
    /// `Producer::send_with` per record; each callback settles its record into the sink;
    /// the sender says when the producer is closed.
    ProducerCallback(Producer, Arc<Sink>, oneshot::Sender<()>),
    /// `Client::put_records` per call; the generator settles the results itself.
    PutRecords(Client, Option<Vec<BitSet>>),
    /// `Client::put_shard_batches` per call, records generated into their shard's batch.
    PutBatches(Client, Arc<ShardMap>, Option<Vec<BitSet>>),
}

/// One producer's record generator; see the module docs.
struct Generator {
    cfg: RunConfig,
    sender: Option<Sender>,
    schedule: Schedule,
    /// Global indices of the keys this producer owns.
    owned: Vec<u32>,
    shared: Arc<Shared>,
    stats: Arc<Mutex<ProducerStats>>,
    pool: Arc<PaddingPool>,
    rng: Rng,
    window: Arc<Semaphore>,
    /// Per owned key, the counter of its next record.
    counters: Vec<u32>,
    writer: RecordWriter,
    next_key: usize,
    /// Records sent so far (the schedule's index of the next one).
    k: u64,
    /// Closed loop: no call before this time (run clock, ns), the server's retry hint for
    /// the last throttled call (sending again at once only collects more refusals).
    hold_until_ns: AtomicU64,
    out: Generated,
}

impl Generator {
    #[allow(clippy::too_many_arguments)]
    fn new(
        cfg: &RunConfig,
        sender: Sender,
        p: usize,
        owned: Vec<u32>,
        shared: Arc<Shared>,
        stats: Arc<Mutex<ProducerStats>>,
        pool: Arc<PaddingPool>,
        window: Arc<Semaphore>,
    ) -> Generator {
        Generator {
            hold_until_ns: AtomicU64::new(0),
            cfg: cfg.clone(),
            sender: Some(sender),
            schedule: schedule_of(cfg, p, cfg.producers),
            counters: vec![0; owned.len()],
            owned,
            shared,
            stats,
            pool,
            rng: Rng::new(payload::mix(cfg.seed.wrapping_add(p as u64))),
            window,
            writer: RecordWriter::new(cfg.size.max),
            next_key: 0,
            k: 0,
            out: Generated {
                sent: 0,
                sent_in_window: 0,
                unsent: 0,
                acked: None,
            },
        }
    }

    async fn run(mut self) -> Generated {
        match self.sender.take().expect("a generator runs once") {
            Sender::Producer(producer, tx) => {
                self.run_producer(producer, Settling::Handles(tx)).await
            }
            Sender::ProducerCallback(producer, sink, closed) => {
                self.run_producer(producer, Settling::Callbacks(sink)).await;
                let _ = closed.send(());
            }
            Sender::PutRecords(client, acked) => self.run_put_records(client, acked).await,
            Sender::PutBatches(client, map, acked) => {
                self.run_put_batches(client, &map, acked).await
            }
        }
        if self.schedule.is_open_loop() {
            // Interrupted: what fell due until then (the rest was never due).
            let until = if self.shared.interrupted.load(Ordering::Relaxed) {
                self.shared.now_ns()
            } else {
                u64::MAX
            };
            self.out.unsent = self.schedule.due_count(until).saturating_sub(self.k);
        }
        self.out
    }

    fn run_end(&self) -> Instant {
        self.shared.t0 + Duration::from_nanos(self.shared.end_ns)
    }

    /// Waits for record `k`'s due time (open loop); `Err(())` once nothing more is due.
    async fn wait_due(&self) -> Result<Option<u64>, ()> {
        match self.schedule.due_ns(self.k) {
            Some(due) => {
                let spin = Duration::from_micros(self.cfg.spin_us);
                // A producer sending record by record whose records come closer together
                // than the spin window would spin all the time (the load generator's core
                // 93 % busy at 95 k records/s through `Producer::send`): it sleeps on the
                // timer instead and sends what is due in bursts, each record still measured
                // from its due time. (The producer lingers 5 ms before sending anyway.)
                let per_record = matches!(self.cfg.api, Api::Producer | Api::ProducerCallback)
                    && self.cfg.rate * spin.as_secs_f64() > self.cfg.producers as f64;
                let spin = if per_record { Duration::ZERO } else { spin };
                wait_until(self.shared.t0 + Duration::from_nanos(due), spin).await;
                Ok(Some(due))
            }
            None if self.schedule.is_open_loop() => Err(()),
            None => {
                let hold = self.hold_until_ns.load(Ordering::Relaxed);
                if hold > self.shared.now_ns() {
                    wait_until(self.shared.t0 + Duration::from_nanos(hold), Duration::ZERO).await;
                }
                Ok(None)
            }
        }
    }

    /// After a call whose throttled records the server told to come back in
    /// `retry_after_ms`: a closed loop's next call waits that long (an open loop keeps its
    /// schedule: its offered rate is the point).
    fn hold_for(&self, retry_after_ms: u32) {
        if retry_after_ms > 0 && !self.schedule.is_open_loop() {
            let until = self.shared.now_ns() + u64::from(retry_after_ms) * 1_000_000;
            self.hold_until_ns.fetch_max(until, Ordering::Relaxed);
        }
    }

    /// `--stop-after-mib`: the producers have sent that much.
    fn budget_spent(&self) -> bool {
        self.shared.interrupted.load(Ordering::Relaxed)
            || self
                .shared
                .budget_bytes
                .as_ref()
                .is_some_and(|b| b.load(Ordering::Relaxed) <= 0)
    }

    /// Which owned key the next record goes to, and its size.
    fn pick(&mut self) -> (usize, usize) {
        let j = match self.cfg.key_mode {
            KeyMode::Random => self.rng.below(self.owned.len() as u64) as usize,
            KeyMode::PerShard => {
                let j = self.next_key;
                self.next_key = (self.next_key + 1) % self.owned.len();
                j
            }
        };
        let size = self.cfg.size.min
            + self
                .rng
                .below((self.cfg.size.max - self.cfg.size.min + 1) as u64) as usize;
        (j, size)
    }

    /// Counts a record of owned key `j` and `size` bytes as sent, due (or sent, closed
    /// loop) at `origin_ns`: its header and what settling it needs.
    fn account(&mut self, j: usize, size: usize, origin_ns: u64) -> (Header, Meta) {
        let (header, meta) = self.next_record(j, size, origin_ns);
        self.count_sent(1, u64::from(meta.bytes), origin_ns);
        (header, meta)
    }

    /// The header and settling data of owned key `j`'s next record (`size` bytes), due at
    /// `origin_ns`; not counted as sent.
    fn next_record(&mut self, j: usize, size: usize, origin_ns: u64) -> (Header, Meta) {
        let sh = &self.shared;
        let counter = self.counters[j];
        self.counters[j] += 1;
        let key_idx = self.owned[j];
        let header = Header {
            run: sh.run_id,
            key: key_idx,
            counter,
            origin_ns,
        };
        let meta = Meta {
            key_local: j as u32,
            counter,
            origin_ns,
            bytes: (sh.keys[key_idx as usize].len() + size) as u32,
        };
        (header, meta)
    }

    /// Counts `n` records of `bytes` key and data bytes in all as sent at `origin_ns`.
    fn count_sent(&mut self, n: u64, bytes: u64, origin_ns: u64) {
        let sh = &self.shared;
        if let Some(budget) = &sh.budget_bytes {
            budget.fetch_sub(bytes as i64, Ordering::Relaxed);
        }
        self.k += n;
        self.out.sent += n;
        if sh.in_window(origin_ns) {
            self.out.sent_in_window += n;
        }
        sh.live.sent.fetch_add(n, Ordering::Relaxed);
    }

    /// The next record, due (or sent, closed loop) at `origin_ns`, written into `buf`: the
    /// index of its key, and its meta.
    fn make_record_into(&mut self, origin_ns: u64, buf: &mut Vec<u8>) -> (usize, Meta) {
        let (j, size) = self.pick();
        let (header, meta) = self.account(j, size, origin_ns);
        crate::payload::write_record_into(buf, &header, size, &self.pool, &mut self.rng);
        (header.key as usize, meta)
    }

    /// The next record, due (or sent, closed loop) at `origin_ns`.
    fn make_record(&mut self, origin_ns: u64) -> (String, Bytes, Meta) {
        let (j, size) = self.pick();
        let (header, meta) = self.account(j, size, origin_ns);
        let data = self.writer.write(&header, size, &self.pool, &mut self.rng);
        // The client takes an owned String per record (one allocation).
        let key = self.shared.keys[header.key as usize].clone();
        (key, data, meta)
    }

    /// `--api producer`: one `send` per record, never waiting for its answer (the collector
    /// awaits the handles); `--api producer-callback`: one `send_with` per record, settled
    /// by its callback.
    async fn run_producer(&mut self, producer: Producer, settling: Settling) {
        let run_end = self.run_end();
        let shared = self.shared.clone();
        let mut buf = Vec::new();
        // Handles not yet given to the collector: they go by the burst (a channel message
        // and a wake-up of the collector per record were 8 % of the load generator's core),
        // and always before the generator waits for anything, so none of them sits here
        // while its answer could arrive.
        let mut handed: Vec<Pending> = Vec::new();
        let hand = |handed: &mut Vec<Pending>| {
            if let Settling::Handles(tx) = &settling {
                if !handed.is_empty() {
                    let burst = std::mem::replace(handed, Vec::with_capacity(HANDLES_PER_HAND));
                    if tx.send(burst).is_err() {
                        unreachable!("the collector outlives its generator");
                    }
                }
            }
        };
        loop {
            let Ok(due_ns) = or_before_waiting(self.wait_due(), || hand(&mut handed)).await else {
                break;
            };
            // A place in the window, given back when the record settles (by the collector,
            // a batch's at once, or by the record's callback).
            match self.window.try_acquire() {
                Ok(p) => p.forget(),
                Err(_) => {
                    hand(&mut handed);
                    self.window.acquire().await.expect("window open").forget()
                }
            }
            // A record due before the end but not sent by then is not sent at all. (One
            // clock reading for this and for the closed loop's origin.)
            let now = Instant::now();
            if now >= run_end || self.budget_spent() {
                break;
            }
            // Closed loop measures from the send; open loop from the due time.
            let origin_ns = due_ns
                .unwrap_or_else(|| now.saturating_duration_since(self.shared.t0).as_nanos() as u64);
            // The producer copies the record into its batch: one buffer serves them all,
            // and the key is lent, not cloned.
            let (key, meta) = self.make_record_into(origin_ns, &mut buf);
            let key = &shared.keys[key];
            let data = &buf[..];
            let sent = match &settling {
                Settling::Handles(_) => {
                    or_before_waiting(producer.send(key, data), || hand(&mut handed))
                        .await
                        .map(|handle| {
                            handed.push(Pending { handle, meta });
                            if handed.len() >= HANDLES_PER_HAND {
                                hand(&mut handed);
                            }
                        })
                }
                Settling::Callbacks(sink) => {
                    let sink = sink.clone();
                    let window = self.window.clone();
                    producer
                        .send_with(key, data, move |result| {
                            sink.settle(result, meta);
                            window.add_permits(1);
                        })
                        .await
                }
            };
            if let Err(e) = sent {
                self.shared.live.errors.fetch_add(1, Ordering::Relaxed);
                self.stats.lock().expect("stats lock").error(&e);
                self.window.add_permits(1);
            }
        }
        hand(&mut handed);
        // Sends whatever is still queued and waits for it to settle; the collector sees
        // every handle resolve, then its channel close (when `tx` drops).
        producer.close().await;
    }

    /// `--api put-records`: every record due so far in one call, up to `--calls-in-flight`
    /// calls at a time (a record due while that many are out waits for one to return).
    async fn run_put_records(&mut self, client: Client, mut acked: Option<Vec<BitSet>>) {
        let run_end = self.run_end();
        let stream = self.cfg.stream.clone();
        let most = self.cfg.calls_in_flight;
        let mut calls = FuturesUnordered::new();
        loop {
            // Room for a call: settle those that came back.
            while calls.len() >= most {
                let Some((metas, results)) = calls.next().await else {
                    break;
                };
                let hint = settle_call(&self.shared, &self.stats, acked.as_mut(), metas, results);
                self.hold_for(hint);
            }
            // The first record of a call waits for its due time (calls in flight are
            // settled meanwhile, each when it returns); the rest are those already due
            // (open loop) or the next ones (closed loop), up to the bound.
            let due = loop {
                if calls.is_empty() {
                    break self.wait_due().await;
                }
                let due = std::pin::pin!(self.wait_due());
                match futures_util::future::select(due, calls.next()).await {
                    futures_util::future::Either::Left((due, _)) => break due,
                    futures_util::future::Either::Right((call, _)) => {
                        let (metas, results) = call.expect("calls in flight");
                        let hint =
                            settle_call(&self.shared, &self.stats, acked.as_mut(), metas, results);
                        self.hold_for(hint);
                    }
                }
            };
            let Ok(due_ns) = due else {
                break;
            };
            if Instant::now() >= run_end || self.budget_spent() {
                break;
            }
            let mut entries = Vec::with_capacity(self.cfg.call_records.min(4096));
            let mut metas = Vec::with_capacity(self.cfg.call_records.min(4096));
            let origin_ns = due_ns.unwrap_or_else(|| self.shared.now_ns());
            let (key, data, meta) = self.make_record(origin_ns);
            entries.push(Entry::new(key, data));
            metas.push(meta);
            let now_ns = self.shared.now_ns();
            while entries.len() < self.cfg.call_records && !self.budget_spent() {
                let origin_ns = match self.schedule.due_ns(self.k) {
                    Some(due) if due <= now_ns => due,
                    Some(_) => break,
                    None if self.schedule.is_open_loop() => break,
                    None => now_ns,
                };
                let (key, data, meta) = self.make_record(origin_ns);
                entries.push(Entry::new(key, data));
                metas.push(meta);
            }
            let (client, stream) = (client.clone(), stream.clone());
            calls.push(async move { (metas, client.put_records(&stream, entries).await) });
        }
        while let Some((metas, results)) = calls.next().await {
            settle_call(&self.shared, &self.stats, acked.as_mut(), metas, results);
        }
        self.out.acked = acked;
    }
}

/// Settles every record of a `put_records` call with its result.
fn settle_call(
    sh: &Shared,
    stats: &Mutex<ProducerStats>,
    acked: Option<&mut Vec<BitSet>>,
    metas: Vec<Meta>,
    results: Vec<spate_client::Result<PutResult>>,
) -> u32 {
    settle_all(sh, stats, acked, results.into_iter().zip(metas))
}

impl Generator {
    /// `--api put-batches`: as `run_put_records`, each record written straight into its
    /// shard's batch; a call ends early when a shard's batch is full (500 records).
    async fn run_put_batches(
        &mut self,
        client: Client,
        map: &ShardMap,
        mut acked: Option<Vec<BitSet>>,
    ) {
        let run_end = self.run_end();
        let stream = self.cfg.stream.clone();
        let sh = self.shared.clone();
        let routes = map.routes();
        // Each owned key's shard, found once (the engine checks every record's hash).
        let key_route: Vec<usize> = self
            .owned
            .iter()
            .map(|&g| {
                let hash = spate_protocol::routing::hash_key(sh.keys[g as usize].as_bytes());
                map.index_for_hash(hash)
                    .expect("the open shards cover every hash key")
            })
            .collect();
        if self.cfg.prebuilt_calls > 0 {
            self.run_prebuilt_batches(&client, &stream, routes, &key_route)
                .await;
            self.out.acked = acked;
            return;
        }
        let mut builders: Vec<BatchBuilder> = routes.iter().map(|_| BatchBuilder::new()).collect();
        let mut metas: Vec<Vec<Meta>> = routes.iter().map(|_| Vec::new()).collect();
        // Shards with records in this call, in first-use order.
        let mut used: Vec<usize> = Vec::new();
        // A record picked for a call whose shard's batch was full: the next call's first.
        let mut carry: Option<(usize, usize)> = None;
        loop {
            let Ok(due_ns) = self.wait_due().await else {
                break;
            };
            if Instant::now() >= run_end || self.budget_spent() {
                break;
            }
            let mut origin_ns = due_ns.unwrap_or_else(|| sh.now_ns());
            let now_ns = sh.now_ns();
            let mut count = 0;
            loop {
                let (j, size) = carry.take().unwrap_or_else(|| self.pick());
                let r = key_route[j];
                let key = sh.keys[self.owned[j] as usize].as_bytes();
                if !builders[r].fits(key.len(), size, false) {
                    carry = Some((j, size));
                    break;
                }
                let (header, meta) = self.account(j, size, origin_ns);
                self.generate_into(&mut builders[r], key, size, &header);
                if metas[r].is_empty() {
                    used.push(r);
                }
                metas[r].push(meta);
                count += 1;
                if count >= self.cfg.call_records || self.budget_spent() {
                    break;
                }
                origin_ns = match self.schedule.due_ns(self.k) {
                    Some(due) if due <= now_ns => due,
                    Some(_) => break,
                    None if self.schedule.is_open_loop() => break,
                    None => now_ns,
                };
            }
            let batches: Vec<(ShardRoute, Bytes)> = used
                .iter()
                .map(|&r| (routes[r], Bytes::from(builders[r].finish())))
                .collect();
            let answers = client.put_shard_batches(&stream, batches).await;
            let mut settled = Vec::with_capacity(count);
            for (&r, answer) in used.iter().zip(answers) {
                let shard_id = routes[r].shard_id;
                for (i, meta) in metas[r].drain(..).enumerate() {
                    settled.push((batch_outcome(&answer, shard_id, i as u32), meta));
                }
            }
            let hint = settle_all(&sh, &self.stats, acked.as_mut(), settled);
            self.hold_for(hint);
            used.clear();
        }
        self.out.acked = acked;
    }

    /// Generates the record `header` names (`size` bytes of data) straight into `batch`.
    fn generate_into(
        &mut self,
        batch: &mut BatchBuilder,
        key: &[u8],
        size: usize,
        header: &Header,
    ) {
        let (pool, rng) = (&self.pool, &mut self.rng);
        batch
            .push_with(key, size, None, |out| {
                payload::fill_record(header, out, pool, rng)
            })
            .expect("the load generator's records are valid");
    }

    /// `--prebuilt-calls N`: N calls built at the start (records generated as usual, one
    /// batch per shard), then sent over and over in a closed loop, each measured from its
    /// send. What the load generator's core then does per record is settle it.
    async fn run_prebuilt_batches(
        &mut self,
        client: &Client,
        stream: &str,
        routes: &[ShardRoute],
        key_route: &[usize],
    ) {
        let sh = self.shared.clone();
        let run_end = self.run_end();
        // Each call: its batches, their records' settling data, and its key and data bytes.
        let mut calls: Vec<PrebuiltCall> = Vec::with_capacity(self.cfg.prebuilt_calls);
        for _ in 0..self.cfg.prebuilt_calls {
            let mut builders: Vec<BatchBuilder> =
                routes.iter().map(|_| BatchBuilder::new()).collect();
            let mut metas: Vec<Vec<Meta>> = routes.iter().map(|_| Vec::new()).collect();
            let mut used: Vec<usize> = Vec::new();
            let mut bytes = 0u64;
            for _ in 0..self.cfg.call_records {
                let (j, size) = self.pick();
                let r = key_route[j];
                let key = sh.keys[self.owned[j] as usize].as_bytes();
                if !builders[r].fits(key.len(), size, false) {
                    break;
                }
                let (header, meta) = self.next_record(j, size, 0);
                self.generate_into(&mut builders[r], key, size, &header);
                if metas[r].is_empty() {
                    used.push(r);
                }
                bytes += u64::from(meta.bytes);
                metas[r].push(meta);
            }
            calls.push(PrebuiltCall {
                batches: used
                    .iter()
                    .map(|&r| (routes[r], Bytes::from(builders[r].finish())))
                    .collect(),
                metas: used
                    .iter()
                    .map(|&r| std::mem::take(&mut metas[r]))
                    .collect(),
                bytes,
            });
        }
        for call in calls.iter().cycle() {
            if self.wait_due().await.is_err() || Instant::now() >= run_end || self.budget_spent() {
                break;
            }
            let origin_ns = sh.now_ns();
            let count: usize = call.metas.iter().map(Vec::len).sum();
            self.count_sent(count as u64, call.bytes, origin_ns);
            let answers = client.put_shard_batches(stream, call.batches.clone()).await;
            let mut settled = Vec::with_capacity(count);
            for (((route, _), metas), answer) in call.batches.iter().zip(&call.metas).zip(answers) {
                for (i, meta) in metas.iter().enumerate() {
                    let meta = Meta { origin_ns, ..*meta };
                    settled.push((batch_outcome(&answer, route.shard_id, i as u32), meta));
                }
            }
            let hint = settle_all(&sh, &self.stats, None, settled);
            self.hold_for(hint);
        }
    }
}

/// One call of `--prebuilt-calls`: a batch per shard, and what settling its records needs.
struct PrebuiltCall {
    batches: Vec<(ShardRoute, Bytes)>,
    /// Per batch, its records in order.
    metas: Vec<Vec<Meta>>,
    /// Key and data bytes of the whole call.
    bytes: u64,
}

/// What record `i` of a batch sent to shard `shard_id` came to, by the batch's answer: the
/// engine stores a prefix of a batch and refuses the rest.
fn batch_outcome(
    answer: &spate_client::Result<spate_protocol::PutBatchResponse>,
    shard_id: u32,
    i: u32,
) -> spate_client::Result<PutResult> {
    match answer {
        Ok(a) if i < a.accepted => Ok(PutResult {
            shard_id,
            seq: a.base_seq + u64::from(i),
        }),
        Ok(a) => Err(match a.rejected {
            Some(rej) => ClientError::Server {
                code: rej.code,
                retry_after_ms: rej.retry_after_ms,
                message: format!("shard {shard_id} refused the record"),
            },
            None => ClientError::Server {
                code: ErrorCode::Internal,
                retry_after_ms: 0,
                message: "the server accounted for only part of the batch".into(),
            },
        }),
        Err(e) => Err(e.clone()),
    }
}

/// The most handles a generator keeps before giving them to its collector.
const HANDLES_PER_HAND: usize = 64;

/// Awaits `fut`, calling `before` first if it is not ready at once (the generator hands
/// its collector the handles it holds before it waits for anything).
async fn or_before_waiting<F: std::future::Future>(fut: F, before: impl FnOnce()) -> F::Output {
    use futures_util::FutureExt;
    let mut fut = std::pin::pin!(fut);
    if let Some(out) = fut.as_mut().now_or_never() {
        return out;
    }
    before();
    fut.await
}

/// How a `Producer` generator's records settle.
enum Settling {
    /// Handles, sent to the collector task that awaits them.
    Handles(mpsc::UnboundedSender<Vec<Pending>>),
    /// Callbacks into the sink.
    Callbacks(Arc<Sink>),
}

/// Where `--api producer-callback`'s callbacks settle their records (on the producer's
/// worker task, as the answers arrive).
struct Sink {
    verify: bool,
    shared: Arc<Shared>,
    stats: Arc<Mutex<ProducerStats>>,
    /// Acknowledged counters per owned key (`--verify`), taken once the producer closed.
    acked: Mutex<Option<Vec<BitSet>>>,
}

impl Sink {
    fn settle(&self, result: spate_client::Result<PutResult>, meta: Meta) {
        if self.verify {
            let mut acked = self.acked.lock().expect("acked lock");
            settle(&self.shared, &self.stats, acked.as_mut(), result, meta);
        } else {
            settle(&self.shared, &self.stats, None, result, meta);
        }
    }
}

fn settle(
    sh: &Shared,
    stats: &Mutex<ProducerStats>,
    acked: Option<&mut Vec<BitSet>>,
    result: spate_client::Result<PutResult>,
    meta: Meta,
) {
    settle_all(sh, stats, acked, std::iter::once((result, meta)));
}

/// Awaits a producer's handles as they resolve; returns the acknowledged counters per
/// owned key when verifying.
///
/// The handles of a shard resolve in the order they were sent, a batch's at once (the
/// producer keeps one batch of a shard in flight and settles it in order). So they wait in
/// one queue per shard (`lanes`: each owned key's shard), and only each queue's oldest is
/// awaited: when it resolves, the ones behind it that resolved with it are taken without
/// waiting and settled together (one clock reading and one lock for a batch). A future,
/// a wake-up and a clock reading per record were a sixth of the load generator's core.
/// A record that resolves out of that order (a shard split under the producer) is
/// only seen when the ones before it are, which can lengthen its measured latency, never
/// lose it.
async fn collect(
    mut rx: mpsc::UnboundedReceiver<Vec<Pending>>,
    sh: Arc<Shared>,
    stats: Arc<Mutex<ProducerStats>>,
    mut acked: Option<Vec<BitSet>>,
    lanes: Vec<u32>,
    shards: usize,
    window: Arc<Semaphore>,
) -> Option<Vec<BitSet>> {
    use futures_util::FutureExt;
    let mut queues: Vec<std::collections::VecDeque<Pending>> = (0..shards)
        .map(|_| std::collections::VecDeque::new())
        .collect();
    // A shard whose oldest handle is being awaited in `waiting`.
    let mut watched = vec![false; shards];
    let mut waiting = FuturesUnordered::new();
    let mut ready = Vec::new();
    let mut open = true;
    loop {
        tokio::select! {
            biased;
            Some((lane, result, meta)) = waiting.next(), if !waiting.is_empty() => {
                ready.push((result, meta));
                let q: &mut std::collections::VecDeque<Pending> = &mut queues[lane];
                while let Some(front) = q.front_mut() {
                    let Some(result) = (&mut front.handle).now_or_never() else {
                        break;
                    };
                    let p = q.pop_front().expect("front");
                    ready.push((result, p.meta));
                }
                // Their places in the window come back together.
                window.add_permits(ready.len());
                settle_all(&sh, &stats, acked.as_mut(), ready.drain(..));
                match q.pop_front() {
                    Some(p) => waiting.push(wait(lane, p)),
                    None => watched[lane] = false,
                }
            }
            msg = rx.recv(), if open => match msg {
                Some(burst) => {
                    // Everything queued now, before `waiting` is polled again (each poll of
                    // it registers the task's waker).
                    let mut next = Some(burst);
                    while let Some(burst) = next.take() {
                        for p in burst {
                            let lane =
                                lanes.get(p.meta.key_local as usize).map_or(0, |&l| l as usize);
                            if watched[lane] {
                                queues[lane].push_back(p);
                            } else {
                                watched[lane] = true;
                                waiting.push(wait(lane, p));
                            }
                        }
                        next = rx.try_recv().ok();
                    }
                }
                None => open = false,
            },
            else => break,
        }
    }
    acked
}

async fn wait(lane: usize, p: Pending) -> (usize, spate_client::Result<PutResult>, Meta) {
    let Pending { handle, meta } = p;
    (lane, handle.await, meta)
}

/// Settles records whose answers arrived together (one call's): the clock is read once,
/// the stats locked once and the live counters added to once for all of them (at millions
/// of records a second, a clock reading and a lock per record were a fifth of the load
/// generator's CPU). Returns the longest retry hint of the throttled ones (0: none).
fn settle_all(
    sh: &Shared,
    stats: &Mutex<ProducerStats>,
    mut acked: Option<&mut Vec<BitSet>>,
    answers: impl IntoIterator<Item = (spate_client::Result<PutResult>, Meta)>,
) -> u32 {
    let mut retry_after_ms = 0;
    let now_ns = sh.now_ns();
    let (mut n_acked, mut n_bytes, mut n_throttled, mut n_errors) = (0u64, 0u64, 0u64, 0u64);
    // Taken at the first record that needs it, held to the end.
    let mut guard: Option<std::sync::MutexGuard<'_, ProducerStats>> = None;
    for (result, meta) in answers {
        let in_window = sh.in_window(meta.origin_ns);
        match result {
            Ok(_) => {
                if let Some(acked) = acked.as_deref_mut() {
                    acked[meta.key_local as usize].insert(meta.counter);
                }
                n_acked += 1;
                n_bytes += u64::from(meta.bytes);
                let latency_ns = now_ns.saturating_sub(meta.origin_ns);
                if in_window || sh.progress {
                    let s = guard.get_or_insert_with(|| stats.lock().expect("stats lock"));
                    if sh.progress {
                        s.ack_1s.record_ns(latency_ns);
                    }
                    if in_window {
                        s.ack.record_ns(latency_ns);
                        s.acked += 1;
                        s.bytes += u64::from(meta.bytes);
                        if !sh.changes.is_empty() {
                            let mut steady = true;
                            for (c, h) in sh.changes.iter().zip(s.ack_changes.iter_mut()) {
                                if c.contains(meta.origin_ns) {
                                    h.record_ns(latency_ns);
                                    steady = false;
                                }
                            }
                            if steady {
                                s.ack_steady.record_ns(latency_ns);
                            }
                        }
                    }
                }
            }
            Err(e) if e.code() == Some(ErrorCode::Throttled) => {
                n_throttled += 1;
                retry_after_ms = retry_after_ms.max(e.retry_after_ms());
                if in_window {
                    guard
                        .get_or_insert_with(|| stats.lock().expect("stats lock"))
                        .throttled += 1;
                }
            }
            Err(e) => {
                n_errors += 1;
                guard
                    .get_or_insert_with(|| stats.lock().expect("stats lock"))
                    .error(&e);
            }
        }
    }
    drop(guard);
    let live = &sh.live;
    if n_acked > 0 {
        live.acked.fetch_add(n_acked, Ordering::Relaxed);
        live.acked_bytes.fetch_add(n_bytes, Ordering::Relaxed);
    }
    if n_throttled > 0 {
        live.throttled.fetch_add(n_throttled, Ordering::Relaxed);
        live.last_throttled_ns.fetch_max(now_ns, Ordering::Relaxed);
    }
    if n_errors > 0 {
        live.errors.fetch_add(n_errors, Ordering::Relaxed);
    }
    retry_after_ms
}

/// Shards read back at once by `--verify`. With Kinesis limits each shard's reads are
/// limited (2 MiB/s), so reading them one after another would take as long as the stream's
/// whole size at one shard's read rate.
const READ_BACK_SHARDS_AT_ONCE: usize = 32;

/// What one shard held of this run: its records' (key, counter) in sequence order, and how
/// many were corrupt or another run's.
#[derive(Default)]
struct ShardContents {
    records: Vec<(u32, u32)>,
    corrupt: u64,
    foreign: u64,
}

/// Reads every shard of `tips` (open and closed: see [`shard_tips`]) from the oldest record
/// to its tip and checks this run's records. Shards are read concurrently (at most
/// [`READ_BACK_SHARDS_AT_ONCE`]), but the verifier sees them in ascending id order, which
/// is lineage order, so a key's order is checked across splits and merges.
async fn read_back(
    admin: &Client,
    stream: &str,
    tips: &[(u32, Option<u64>)],
    sh: &Arc<Shared>,
    mut verifier: Verifier,
) -> Result<crate::verify::VerifyReport, Error> {
    // Owned futures (a borrowing iterator's futures trip the compiler's Send check).
    let reads: Vec<_> = tips
        .iter()
        .filter_map(|&(shard, tip)| {
            tip.map(|last| read_shard(admin.clone(), stream.to_string(), shard, last, sh.clone()))
        })
        .collect();
    let mut reads = futures_util::stream::iter(reads).buffered(READ_BACK_SHARDS_AT_ONCE);
    while let Some(contents) = reads.next().await {
        let contents = contents?;
        for (key, counter) in contents.records {
            verifier.observe(key, counter);
        }
        for _ in 0..contents.corrupt {
            verifier.corrupt();
        }
        for _ in 0..contents.foreign {
            verifier.foreign();
        }
    }
    Ok(verifier.finish())
}

/// One shard from TRIM_HORIZON up to `last`, inclusive.
async fn read_shard(
    admin: Client,
    stream: String,
    shard: u32,
    last: u64,
    sh: Arc<Shared>,
) -> Result<ShardContents, Error> {
    let fail = |e: &dyn std::fmt::Display| {
        Error::new(format!("verify: cannot read back shard {shard}: {e}"))
    };
    let mut out = ShardContents::default();
    let mut reader = admin
        .shard_reader(
            &stream,
            shard,
            Position::TrimHorizon,
            ReadOptions {
                max_bytes: READ_BYTES_MAX,
                ..ReadOptions::default()
            },
        )
        .await
        .map_err(|e| fail(&e))?;
    let mut empty_in_a_row = 0;
    while reader.next_seq().is_none_or(|n| n <= last) {
        // The read limit (with Kinesis limits) is waited out, however few retries the
        // run's client is allowed.
        let records = match reader.next().await {
            Err(e) if e.code() == Some(spate_client::ErrorCode::ReadThrottled) => {
                tokio::time::sleep(Duration::from_millis(u64::from(e.retry_after_ms().max(50))))
                    .await;
                continue;
            }
            r => r.map_err(|e| fail(&e))?,
        };
        let Some(records) = records else {
            break;
        };
        if records.records.is_empty() {
            empty_in_a_row += 1;
            if empty_in_a_row > 100 {
                return Err(fail(&format!(
                    "no progress at sequence number {}",
                    records.end_seq
                )));
            }
            continue;
        }
        empty_in_a_row = 0;
        for r in records.records.iter().filter(|r| r.seq <= last) {
            match payload::decode(&r.data) {
                Ok(h) if h.run == sh.run_id => {
                    if sh.keys.get(h.key as usize).is_some_and(|k| *k == r.key) {
                        out.records.push((h.key, h.counter));
                    } else {
                        out.corrupt += 1;
                    }
                }
                _ => out.foreign += 1,
            }
        }
    }
    Ok(out)
}

/// Prints one line a second on stderr until `done` (see the module docs for its columns).
async fn progress(
    sh: Arc<Shared>,
    producers: Vec<Arc<Mutex<ProducerStats>>>,
    consumers: Vec<Arc<Mutex<ConsumerStats>>>,
    done: Arc<AtomicBool>,
) {
    let mut tick = tokio::time::interval_at(
        (sh.t0 + Duration::from_secs(1)).into(),
        Duration::from_secs(1),
    );
    let mut last = Totals::default();
    let mut cpu0 = CpuTimes::of_self();
    let mut at0 = Instant::now();
    while !done.load(Ordering::Relaxed) {
        tick.tick().await;
        let l = &sh.live;
        let now = Totals {
            sent: l.sent.load(Ordering::Relaxed),
            acked: l.acked.load(Ordering::Relaxed),
            acked_bytes: l.acked_bytes.load(Ordering::Relaxed),
            throttled: l.throttled.load(Ordering::Relaxed),
            errors: l.errors.load(Ordering::Relaxed),
            consumed: l.consumed.load(Ordering::Relaxed),
        };
        let (cpu, at) = (CpuTimes::of_self(), Instant::now());
        let dt = at.duration_since(at0).as_secs_f64().max(1e-9);
        // This second's latencies: merge every task's and start the next second afresh.
        let mut ack = Latency::default();
        for p in &producers {
            let mut s = p.lock().expect("stats lock");
            ack.add(&s.ack_1s);
            s.ack_1s.reset();
        }
        let e2e = (!consumers.is_empty()).then(|| {
            let mut e2e = Latency::default();
            for c in &consumers {
                let mut s = c.lock().expect("stats lock");
                e2e.add(&s.e2e_1s);
                s.e2e_1s.reset();
            }
            e2e
        });
        let line = progress_line(&ProgressSecond {
            elapsed_s: sh.t0.elapsed().as_secs_f64(),
            warmup: sh.now_ns() < sh.warmup_ns,
            dt_s: dt,
            before: last,
            now,
            ack: &ack,
            e2e: e2e.as_ref(),
            loadgen_cores: cpu.since(&cpu0).total_s() / dt,
        });
        eprintln!("{line}");
        (last, cpu0, at0) = (now, cpu, at);
    }
}

/// The live counters at one progress line (the whole run so far).
#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    sent: u64,
    acked: u64,
    acked_bytes: u64,
    throttled: u64,
    errors: u64,
    consumed: u64,
}

/// What one progress line shows.
struct ProgressSecond<'a> {
    elapsed_s: f64,
    warmup: bool,
    /// Seconds since the previous line.
    dt_s: f64,
    before: Totals,
    now: Totals,
    /// Latencies since the previous line.
    ack: &'a Latency,
    e2e: Option<&'a Latency>,
    loadgen_cores: f64,
}

/// One progress line: last-second rates and latencies (ms), then totals, then CPU.
fn progress_line(p: &ProgressSecond<'_>) -> String {
    let rate = |now: u64, before: u64| now.saturating_sub(before) as f64 / p.dt_s;
    let (b, n) = (&p.before, &p.now);
    let mut line = format!(
        "[{:>6.1}s{}] sent/s {:>7.0}  acked/s {:>7.0}  acked MiB/s {:>6.1}  ack p99 (1s) {:>10}  ack max (1s) {:>10}",
        p.elapsed_s,
        if p.warmup { " warm-up" } else { "" },
        rate(n.sent, b.sent),
        rate(n.acked, b.acked),
        rate(n.acked_bytes, b.acked_bytes) / MIB,
        ms_or_dash(p.ack, 99.0),
        ms_or_dash(p.ack, 100.0),
    );
    if let Some(e2e) = p.e2e {
        line += &format!(
            "  consumed/s {:>7.0}  e2e p99 (1s) {:>10}  e2e max (1s) {:>10}",
            rate(n.consumed, b.consumed),
            ms_or_dash(e2e, 99.0),
            ms_or_dash(e2e, 100.0),
        );
    }
    line += &format!(
        "  throttled/s {:>5.0}  errors/s {:>3.0}  total acked {:>8}  total throttled {:>6}  total errors {:>3}  loadgen cpu {:.2} cores",
        rate(n.throttled, b.throttled),
        rate(n.errors, b.errors),
        n.acked,
        n.throttled,
        n.errors,
        p.loadgen_cores,
    );
    line
}

/// A latency percentile (100: the maximum) as `1.234 ms`, or `-` when nothing was recorded.
fn ms_or_dash(h: &Latency, percentile: f64) -> String {
    if h.count() == 0 {
        return "-".into();
    }
    let us = if percentile >= 100.0 {
        h.max()
    } else {
        h.at(percentile)
    };
    format!("{} ms", crate::report::fmt_ms(us))
}

#[cfg(test)]
mod over_limits_tests {
    use super::*;
    use crate::config::SizeSpec;

    #[test]
    fn warns_only_above_the_streams_capacity() {
        let cfg = |rate: f64| RunConfig {
            rate,
            size: SizeSpec::fixed(1024),
            ..RunConfig::new("127.0.0.1:1".to_string(), "s".to_string())
        };
        let kinesis = limits_of(LimitsArg::Kinesis);
        let w = over_limits(&cfg(10_000.0), &kinesis, 4).expect("a warning");
        assert!(w.contains("expect about 60 % throttled"), "{w}");
        assert_eq!(over_limits(&cfg(10_000.0), &kinesis, 12), None);
        assert_eq!(over_limits(&cfg(10_000.0), &Limits::Off, 4), None);
        assert_eq!(over_limits(&cfg(0.0), &kinesis, 1), None, "closed loop");
        // An existing stream's own limits: 100 records/s a shard.
        let custom = Limits::Custom {
            write_bytes_per_s: 1 << 30,
            write_records_per_s: 100,
            read_bytes_per_s: 1 << 30,
        };
        let w = over_limits(&cfg(1_000.0), &custom, 2).expect("a warning");
        assert!(
            w.contains("with its limits") && w.contains("about 80 % throttled"),
            "{w}"
        );
    }
}

#[cfg(test)]
mod progress_tests {
    use super::*;

    #[test]
    fn a_progress_line_labels_every_figure() {
        let mut ack = Latency::default();
        for us in 1..=1000u64 {
            ack.record_ns(us * 1000);
        }
        let totals = |n: u64| Totals {
            sent: 1000 * n,
            acked: 1000 * n,
            acked_bytes: (1 << 20) * n,
            throttled: 10 * n,
            errors: 0,
            consumed: 2000 * n,
        };
        let second = ProgressSecond {
            elapsed_s: 3.0,
            warmup: false,
            dt_s: 1.0,
            before: totals(2),
            now: totals(3),
            ack: &ack,
            e2e: None,
            loadgen_cores: 0.5,
        };
        let line = progress_line(&second);
        for want in [
            "[   3.0s] ",
            "sent/s    1000",
            "acked/s    1000",
            "acked MiB/s    1.0",
            // HdrHistogram rounds to 3 significant digits: 990 µs and 1000 µs.
            "ack p99 (1s)   0.990 ms",
            "ack max (1s)   1.000 ms",
            "throttled/s    10",
            "errors/s   0",
            "total acked     3000",
            "total throttled     30",
            "total errors   0",
            "loadgen cpu 0.50 cores",
        ] {
            assert!(line.contains(want), "{want:?} not in {line:?}");
        }
        assert!(!line.contains("consumed") && !line.contains('µ'), "{line}");

        // With consumers, and a second without acknowledgements.
        let empty = Latency::default();
        let line = progress_line(&ProgressSecond {
            warmup: true,
            ack: &empty,
            e2e: Some(&ack),
            ..second
        });
        for want in [
            "s warm-up] ",
            "ack p99 (1s)          -",
            "consumed/s    2000",
            "e2e p99 (1s)   0.990 ms",
            "e2e max (1s)   1.000 ms",
        ] {
            assert!(line.contains(want), "{want:?} not in {line:?}");
        }
    }
}
