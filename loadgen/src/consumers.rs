//! The run's consumers (`--consumers C`), in one of three modes (`--consumer-mode`):
//!
//! ```text
//!  poll   consumer c × shard s: a ShardReader long-polling from the tip (GetRecords)
//!  push   consumer c = registered consumer loadgen-c; × shard s: a Subscription from the
//!         tip, the server pushing records once durable; a closed shard's children are
//!         subscribed from TRIM_HORIZON when its last event names them
//!  group  worker c of group loadgen-<random>: the engine leases each shard to one worker;
//!         every batch is counted once (a BitSet per key), then checkpointed
//! ```
//!
//! Every mode counts a batch the same way ([`account`]): each record of this run (its
//! header names the run) gets its end-to-end latency from its due time, not from when it
//! was sent, so a stalled producer or server shows in the tail (coordinated omission);
//! records due in the measured window count in the figures; records that arrive during the
//! measured window count apart (`received_records_per_s`: did the consumer keep up?).
//!
//! Lifecycle: [`Prepared::open`] runs before the run's clock starts (readers and
//! subscriptions open at the tip, group workers joined and their leases settled), so every
//! record of the run is seen; [`Prepared::spawn`] starts one task per reader, subscription
//! or worker; once the producers are done the runner sends every shard's last sequence
//! number on the stop channel, and [`Running::finish`] waits until each consumer has read
//! that far, then deregisters the push consumers or has the workers leave and deletes the
//! group.
//!
//! Concurrency: tasks share a consumer's [`ConsumerStats`] (and, in a group, the set of
//! records seen and how far each shard was read) behind mutexes taken once per batch, in
//! the order seen set, then stats.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use spate_client::{
    Checkpoint, Client, ClientConfig, ErrorCode, GroupEvent, GroupOptions, GroupWorker, Position,
    ReadOptions, Record, RetryPolicy, ShardReader, ShardState, StreamInfo, SubscribeOptions,
    Subscription,
};
use tokio::sync::{oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::config::{ConsumerMode, RunConfig};
use crate::payload;
use crate::report::{FailoverReport, GroupReport, ShardFailover};
use crate::runner::{Shared, READ_BYTES_MAX};
use crate::stats::Latency;
use crate::verify::BitSet;
use crate::Error;

/// Where the consumers stop: each shard's last sequence number once the producers are
/// done (`None` inside: an empty shard), `None` until then.
pub(crate) type StopAt = Option<Arc<HashMap<u32, Option<u64>>>>;

/// Once the producers stopped (`Some`): the shard's last record then (`None`: it had none).
fn stop_tip(stop: &watch::Receiver<StopAt>, shard: u32) -> Option<Option<u64>> {
    stop.borrow()
        .as_ref()
        .map(|t| t.get(&shard).copied().flatten())
}

/// Failed reads in a row after which a reader, subscription or worker gives up.
const ERRORS_IN_A_ROW_MAX: u32 = 10;
/// The least a throttled read waits (a hint of 0 is not an invitation to spin).
const THROTTLED_WAIT_MIN_MS: u64 = 10;
/// How long the group's workers may take to settle their leases before the run starts.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// After a worker is dropped, how long a description of the group is polled for the
/// takeover of its leases.
const TAKEOVER_WATCH: Duration = Duration::from_secs(60);

/// One consumer's figures for the measured window (a polling consumer group, a push
/// consumer, or a group worker).
#[derive(Default)]
pub(crate) struct ConsumerStats {
    pub e2e: Latency,
    /// End-to-end latency since the last progress line, with progress on.
    pub e2e_1s: Latency,
    pub records: u64,
    pub bytes: u64,
    /// Records of this run that arrived during the measured window, whenever due.
    pub received_in_window: u64,
    /// Delivered again (see [`crate::report::ConsumerReport::redelivered`]); whole run.
    pub redelivered: u64,
    /// Reads the shard's read limit refused, each waited out as the server said.
    pub throttled: u64,
    pub errors: u64,
}

/// Counts one delivered batch for `stats`: each record of this run once, skipping other
/// runs' records and, with `seen` (a group), records some worker was handed before
/// (counted as redelivered). Returns the records counted.
pub(crate) fn account(
    sh: &Shared,
    stats: &Mutex<ConsumerStats>,
    records: &[Record],
    seen: Option<&Mutex<Vec<BitSet>>>,
) -> u64 {
    let now_ns = sh.now_ns();
    let arrived_in_window = sh.in_window(now_ns);
    let mut seen = seen.map(|m| m.lock().expect("seen lock"));
    let mut s = stats.lock().expect("stats lock");
    let mut n = 0;
    for r in records {
        let Ok(h) = payload::decode(&r.data) else {
            continue;
        };
        if h.run != sh.run_id {
            continue;
        }
        if let Some(seen) = seen.as_mut() {
            // The key index comes off the wire: an unknown one is not this run's record.
            let Some(bits) = seen.get_mut(h.key as usize) else {
                continue;
            };
            if !bits.insert(h.counter) {
                s.redelivered += 1;
                continue;
            }
        }
        n += 1;
        let latency_ns = now_ns.saturating_sub(h.origin_ns);
        if sh.progress {
            s.e2e_1s.record_ns(latency_ns);
        }
        if arrived_in_window {
            s.received_in_window += 1;
        }
        if sh.in_window(h.origin_ns) {
            s.e2e.record_ns(latency_ns);
            s.records += 1;
            s.bytes += (r.key.len() + r.data.len()) as u64;
        }
    }
    drop(s);
    sh.live.consumed.fetch_add(n, Ordering::Relaxed);
    n
}

/// The consumers, opened before the run's clock starts.
pub(crate) enum Prepared {
    Poll(Vec<Vec<ShardReader>>),
    Push(PushSetup),
    Group(GroupSetup),
}

pub(crate) struct PushSetup {
    stream: String,
    /// Per consumer: its name, its connection and a subscription per shard.
    consumers: Vec<(String, Client, Vec<Subscription>)>,
    admin: Client,
}

pub(crate) struct GroupSetup {
    stream: String,
    group: String,
    workers: Vec<GroupWorker>,
    admin: Client,
    /// Every shard described at the start and its last sequence number then.
    start_tips: HashMap<u32, u64>,
    lease_timeout_ms: Option<u32>,
}

impl Prepared {
    /// Opens `cfg.consumers` consumers of `cfg.consumer_mode` on the shards of `info` (the
    /// stream at the start; `shards`: its open shards).
    pub(crate) async fn open(
        cfg: &RunConfig,
        admin: &Client,
        client_cfg: &ClientConfig,
        info: &StreamInfo,
        shards: &[u32],
    ) -> Result<Prepared, Error> {
        // Push and group consumers ride out a passing failure (a refused or lost
        // connection) with the client's usual retries, whatever --retries says of puts.
        let consumer_cfg = ClientConfig {
            retry: RetryPolicy::default(),
            ..client_cfg.clone()
        };
        match cfg.consumer_mode {
            ConsumerMode::Poll => open_poll(cfg, client_cfg, shards).await.map(Prepared::Poll),
            ConsumerMode::Push => open_push(cfg, admin, &consumer_cfg, shards)
                .await
                .map(Prepared::Push),
            ConsumerMode::Group => open_group(cfg, admin, &consumer_cfg, info)
                .await
                .map(Prepared::Group),
        }
    }

    /// Each consumer's name (push: the registered consumer; group: the worker's id).
    pub(crate) fn names(&self) -> Vec<Option<String>> {
        match self {
            Prepared::Poll(readers) => vec![None; readers.len()],
            Prepared::Push(p) => p.consumers.iter().map(|c| Some(c.0.clone())).collect(),
            Prepared::Group(g) => g
                .workers
                .iter()
                .map(|w| Some(w.worker().to_string()))
                .collect(),
        }
    }

    /// Starts every consumer's tasks; `stats` has one entry per consumer.
    pub(crate) fn spawn(
        self,
        cfg: &RunConfig,
        sh: &Arc<Shared>,
        stats: &[Arc<Mutex<ConsumerStats>>],
        stop: &watch::Receiver<StopAt>,
    ) -> Running {
        match self {
            Prepared::Poll(readers) => {
                let mut tasks = Vec::new();
                for (c, readers) in readers.into_iter().enumerate() {
                    for reader in readers {
                        let task = follow(reader, sh.clone(), stats[c].clone(), stop.clone());
                        tasks.push(tokio::spawn(task));
                    }
                }
                Running::Poll(tasks)
            }
            Prepared::Push(p) => {
                let mut tasks = Vec::new();
                for (c, (name, client, subs)) in p.consumers.into_iter().enumerate() {
                    tasks.push(tokio::spawn(push_consumer(
                        client,
                        p.stream.clone(),
                        name,
                        subs,
                        sh.clone(),
                        stats[c].clone(),
                        stop.clone(),
                    )));
                }
                Running::Push {
                    tasks,
                    admin: p.admin,
                    stream: p.stream,
                    names: (0..stats.len()).map(push_name).collect(),
                }
            }
            Prepared::Group(g) => spawn_group(g, cfg, sh, stats, stop),
        }
    }
}

/// Push consumer `c`'s registered name.
fn push_name(c: usize) -> String {
    format!("loadgen-{c}")
}

async fn open_poll(
    cfg: &RunConfig,
    client_cfg: &ClientConfig,
    shards: &[u32],
) -> Result<Vec<Vec<ShardReader>>, Error> {
    let mut all = Vec::new();
    for c in 0..cfg.consumers {
        let client = Client::connect_with(cfg.server.clone(), client_cfg.clone())
            .await
            .map_err(|e| Error::new(format!("consumer {c} cannot connect: {e}")))?;
        let mut readers = Vec::new();
        for &shard in shards {
            let options = ReadOptions {
                wait_ms: cfg.read_wait_ms,
                max_bytes: READ_BYTES_MAX,
                ..ReadOptions::default()
            };
            let reader = client
                .shard_reader(&cfg.stream, shard, Position::Latest, options)
                .await
                .map_err(|e| Error::new(format!("cannot open a reader on shard {shard}: {e}")))?;
            readers.push(reader);
        }
        all.push(readers);
    }
    Ok(all)
}

/// Registers `loadgen-0..C-1` (reusing any that exist) and subscribes each to every open
/// shard from the tip: the subscription's first event fixes where it starts, before any
/// record of the run is sent.
async fn open_push(
    cfg: &RunConfig,
    admin: &Client,
    consumer_cfg: &ClientConfig,
    shards: &[u32],
) -> Result<PushSetup, Error> {
    let mut registered = Vec::new();
    match subscribe_push(cfg, admin, consumer_cfg, shards, &mut registered).await {
        Ok(consumers) => Ok(PushSetup {
            stream: cfg.stream.clone(),
            consumers,
            admin: admin.clone(),
        }),
        Err(e) => {
            // What the run registered goes, as at the end of a run (the stream's 20
            // consumers are a quota: leftovers would refuse the next registration).
            for name in &registered {
                if let Err(e) = admin.deregister_consumer(&cfg.stream, name).await {
                    tracing::warn!(consumer = %name, error = %e, "could not deregister");
                }
            }
            Err(e)
        }
    }
}

/// The consumers of [`open_push`], subscribed; `registered` collects their names as they
/// are registered (or found), for the clean-up of a setup that fails half way.
async fn subscribe_push(
    cfg: &RunConfig,
    admin: &Client,
    consumer_cfg: &ClientConfig,
    shards: &[u32],
    registered: &mut Vec<String>,
) -> Result<Vec<(String, Client, Vec<Subscription>)>, Error> {
    let mut consumers = Vec::new();
    for c in 0..cfg.consumers {
        let name = push_name(c);
        match admin.register_consumer(&cfg.stream, &name).await {
            Ok(_) => {}
            Err(e) if e.code() == Some(ErrorCode::ConsumerExists) => {}
            Err(e) => {
                return Err(Error::new(format!(
                    "cannot register consumer {name} on stream {}: {e}",
                    cfg.stream
                )))
            }
        }
        registered.push(name.clone());
        let client = Client::connect_with(cfg.server.clone(), consumer_cfg.clone())
            .await
            .map_err(|e| Error::new(format!("consumer {name} cannot connect: {e}")))?;
        let mut subs = Vec::new();
        for &shard in shards {
            let sub = client
                .subscribe(
                    &cfg.stream,
                    &name,
                    shard,
                    Position::Latest,
                    SubscribeOptions::default(),
                )
                .await
                .map_err(|e| {
                    Error::new(format!("{name} cannot subscribe to shard {shard}: {e}"))
                })?;
            subs.push(sub);
        }
        consumers.push((name, client, subs));
    }
    Ok(consumers)
}

/// Follows one shard from the tip for one polling consumer until the stop signal's tip.
async fn follow(
    mut reader: ShardReader,
    sh: Arc<Shared>,
    stats: Arc<Mutex<ConsumerStats>>,
    mut stop: watch::Receiver<StopAt>,
) {
    let shard = reader.shard_id();
    let mut errors_in_a_row = 0;
    loop {
        let tip = stop_tip(&stop, shard);
        let answer = match tip {
            // Stop once past the shard's last record (or at once if it has none).
            Some(tip) => {
                if tip.is_none_or(|last| reader.next_seq().is_some_and(|n| n > last)) {
                    return;
                }
                reader.next().await
            }
            // Until the producers are done, a long-poll is abandoned when the stop comes,
            // so the consumer need not wait out its wait time at an idle tip.
            None => tokio::select! {
                r = reader.next() => r,
                changed = stop.changed() => {
                    if changed.is_err() {
                        return; // The run is gone.
                    }
                    continue;
                }
            },
        };
        match answer {
            Ok(Some(records)) => {
                errors_in_a_row = 0;
                account(&sh, &stats, &records.records, None);
            }
            Ok(None) => return,
            // The shard's read limit (Kinesis: 5 reads and 2 MiB a second): what a
            // consumer at the tip meets all the time; waited out as the server says, as a
            // Kinesis consumer backs off, and counted apart from failures.
            Err(e) if e.code() == Some(spate_client::ErrorCode::ReadThrottled) => {
                stats.lock().expect("stats lock").throttled += 1;
                let wait = u64::from(e.retry_after_ms()).max(THROTTLED_WAIT_MIN_MS);
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
            Err(e) => {
                stats.lock().expect("stats lock").errors += 1;
                errors_in_a_row += 1;
                tracing::warn!(shard, error = %e, "consumer read failed");
                if errors_in_a_row >= ERRORS_IN_A_ROW_MAX {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One push consumer: a task per subscription; when a shard ends, its children (each once)
/// are subscribed from TRIM_HORIZON. Returns once every subscription is done.
async fn push_consumer(
    client: Client,
    stream: String,
    name: String,
    subs: Vec<Subscription>,
    sh: Arc<Shared>,
    stats: Arc<Mutex<ConsumerStats>>,
    stop: watch::Receiver<StopAt>,
) {
    let mut subscribed: HashSet<u32> = subs.iter().map(Subscription::shard_id).collect();
    let mut tasks = JoinSet::new();
    for sub in subs {
        tasks.spawn(follow_subscription(
            sub,
            sh.clone(),
            stats.clone(),
            stop.clone(),
        ));
    }
    while let Some(done) = tasks.join_next().await {
        let children = done.unwrap_or_else(|e| {
            tracing::warn!(consumer = %name, error = %e, "a subscription task failed");
            stats.lock().expect("stats lock").errors += 1;
            Vec::new()
        });
        for child in children {
            // A merged child is named by both its parents' ends: subscribe once.
            if !subscribed.insert(child) {
                continue;
            }
            match client
                .subscribe(
                    &stream,
                    &name,
                    child,
                    Position::TrimHorizon,
                    SubscribeOptions::default(),
                )
                .await
            {
                Ok(sub) => {
                    tasks.spawn(follow_subscription(
                        sub,
                        sh.clone(),
                        stats.clone(),
                        stop.clone(),
                    ));
                }
                Err(e) => {
                    tracing::warn!(consumer = %name, child, error = %e, "cannot subscribe to a child shard");
                    stats.lock().expect("stats lock").errors += 1;
                }
            }
        }
    }
}

/// Takes one subscription's events until the stop signal's tip (or the shard's end:
/// returns its children then).
async fn follow_subscription(
    mut sub: Subscription,
    sh: Arc<Shared>,
    stats: Arc<Mutex<ConsumerStats>>,
    mut stop: watch::Receiver<StopAt>,
) -> Vec<u32> {
    let shard = sub.shard_id();
    let mut last_seq: Option<u64> = None;
    let mut errors_in_a_row = 0;
    loop {
        let tip = stop_tip(&stop, shard);
        let event = match tip {
            Some(tip) => {
                let past = |last| sub.continuation_seq().is_some_and(|c| c > last);
                if tip.is_none_or(past) {
                    return Vec::new();
                }
                sub.next().await
            }
            // `Subscription::next` waits on a channel: dropping the wait when the stop
            // comes loses nothing.
            None => tokio::select! {
                e = sub.next() => e,
                changed = stop.changed() => {
                    if changed.is_err() {
                        return Vec::new();
                    }
                    continue;
                }
            },
        };
        match event {
            Ok(Some(event)) => {
                errors_in_a_row = 0;
                // The engine promises each record once per subscription; a sequence
                // number at or below the last one is counted, not taken.
                let fresh = match last_seq {
                    Some(last) => event.records.partition_point(|r| r.seq <= last),
                    None => 0,
                };
                if fresh > 0 {
                    stats.lock().expect("stats lock").redelivered += fresh as u64;
                }
                if let Some(r) = event.records.last() {
                    last_seq = Some(last_seq.map_or(r.seq, |l| l.max(r.seq)));
                }
                account(&sh, &stats, &event.records[fresh..], None);
                if event.ended {
                    return event.child_shards;
                }
            }
            Ok(None) => return Vec::new(),
            Err(e) => {
                stats.lock().expect("stats lock").errors += 1;
                errors_in_a_row += 1;
                tracing::warn!(shard, error = %e, "subscription failed");
                if errors_in_a_row >= ERRORS_IN_A_ROW_MAX {
                    return Vec::new();
                }
                // The next call subscribes again where the last event left off.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Creates group `loadgen-<random>` and joins `cfg.consumers` workers, each on its own
/// connection; returns once their leases have settled (every leasable shard held by
/// exactly one worker that knows it), so no lease moves while the run goes on.
///
/// The group starts at TRIM_HORIZON. On a stream that already holds records, a setup
/// worker first checkpoints every open shard after its last record and every closed one
/// at its end, then leaves: the workers start exactly where the run's records start,
/// and a lease that moves before its first checkpoint (at LATEST it would restart at a
/// later tip) loses nothing.
async fn open_group(
    cfg: &RunConfig,
    admin: &Client,
    consumer_cfg: &ClientConfig,
    info: &StreamInfo,
) -> Result<GroupSetup, Error> {
    let group = format!(
        "loadgen-{:08x}",
        payload::mix(crate::runner::now_nanos() ^ u64::from(std::process::id())) as u32
    );
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        Error::new(format!("group {group} on {}: {what}: {e}", cfg.stream))
    };
    let history = info
        .shards
        .iter()
        .any(|s| s.last_seq.is_some() || s.state != ShardState::Open);
    if history {
        skip_history(admin, &cfg.stream, &group, info)
            .await
            .map_err(|e| fail("cannot skip the stream's earlier records", &e))?;
    }
    let mut workers = Vec::new();
    for c in 0..cfg.consumers {
        let client = Client::connect_with(cfg.server.clone(), consumer_cfg.clone())
            .await
            .map_err(|e| fail(&format!("worker {c} cannot connect"), &e))?;
        let options = GroupOptions {
            worker: worker_name(&group, c),
            start: Position::TrimHorizon,
            read: ReadOptions {
                wait_ms: cfg.read_wait_ms,
                max_bytes: READ_BYTES_MAX,
                ..ReadOptions::default()
            },
            ..GroupOptions::default()
        };
        let worker = GroupWorker::join(&client, &cfg.stream, &group, options)
            .await
            .map_err(|e| fail(&format!("worker {c} cannot join"), &e))?;
        workers.push(worker);
    }
    let lease_timeout_ms = settle(admin, &cfg.stream, &group, &mut workers)
        .await
        .map_err(|e| fail("leases did not settle", &e))?;
    let start_tips = info
        .shards
        .iter()
        .filter_map(|s| Some((s.id, s.last_seq?)))
        .collect();
    Ok(GroupSetup {
        stream: cfg.stream.clone(),
        group,
        workers,
        admin: admin.clone(),
        start_tips,
        lease_timeout_ms: Some(lease_timeout_ms),
    })
}

/// Worker `c`'s id in `group`.
fn worker_name(group: &str, c: usize) -> String {
    format!("{group}-w{c}")
}

/// Checkpoints, as a setup worker that leaves afterwards, every shard of `info` past what
/// it holds: an open shard after its last record, a closed one at its end (which makes
/// its children leasable, checkpointed in turn on the next round).
async fn skip_history(
    admin: &Client,
    stream: &str,
    group: &str,
    info: &StreamInfo,
) -> Result<(), String> {
    let setup = format!("{group}-setup");
    let mut done: HashSet<u32> = HashSet::new();
    // Each round frees at least one more generation of shards; there are no more rounds
    // than shards.
    for _ in 0..=info.shards.len() {
        let leases = admin
            .group_heartbeat(stream, group, &setup, Position::TrimHorizon, false)
            .await
            .map_err(|e| e.to_string())?
            .leases;
        let mut progressed = false;
        for lease in leases {
            if !done.insert(lease.shard_id) {
                continue;
            }
            let Some(s) = info.shards.iter().find(|s| s.id == lease.shard_id) else {
                continue; // Opened since the description: it holds only the run's records.
            };
            let checkpoint = match (s.state, s.last_seq) {
                (ShardState::Open, Some(seq)) => Checkpoint::After { seq },
                (ShardState::Open, None) => continue,
                _ => Checkpoint::ShardEnd,
            };
            admin
                .checkpoint(stream, group, &setup, s.id, lease.epoch, checkpoint)
                .await
                .map_err(|e| format!("checkpoint of shard {}: {e}", s.id))?;
            progressed = true;
        }
        if !progressed {
            break;
        }
    }
    admin
        .group_heartbeat(stream, group, &setup, Position::TrimHorizon, true)
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Waits until every shard the group still has to read is leased to one worker and every
/// worker's own view of its leases matches the group's description. Returns the lease
/// timeout.
async fn settle(
    admin: &Client,
    stream: &str,
    group: &str,
    workers: &mut [GroupWorker],
) -> Result<u32, String> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let info = admin
            .describe_group(stream, group)
            .await
            .map_err(|e| e.to_string())?;
        let mut owned: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
        let mut unowned = 0;
        for s in info
            .shards
            .iter()
            .filter(|s| s.checkpoint != Checkpoint::ShardEnd)
        {
            match &s.owner {
                Some(w) => owned.entry(w.as_str()).or_default().push(s.shard_id),
                None => unowned += 1,
            }
        }
        let agreed = workers.iter().all(|w| {
            let mut theirs = owned.get(w.worker()).cloned().unwrap_or_default();
            theirs.sort_unstable();
            theirs == w.leases()
        });
        if unowned == 0 && agreed {
            // The leases lost while settling (before the run) are not the run's.
            for w in workers.iter_mut() {
                while let Ok(event) = tokio::time::timeout(Duration::ZERO, w.next()).await {
                    match event {
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Err(format!("{}: {e}", w.worker())),
                        None => return Err(format!("{} stopped", w.worker())),
                    }
                }
            }
            return Ok(info.lease_timeout_ms);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{unowned} shards without a worker, workers agreeing with the group: {agreed}, \
                 after {} s",
                SETTLE_TIMEOUT.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What a group's workers share.
pub(crate) struct GroupShared {
    stream: String,
    group: String,
    admin: Client,
    /// Per key index, the counters some worker was handed.
    seen: Mutex<Vec<BitSet>>,
    /// Per shard, the highest sequence number handed to any worker (or its last at the
    /// start, for the shards the group skips).
    read_to: Mutex<HashMap<u32, u64>>,
    checkpoints: AtomicU64,
    /// How long stored checkpoints took, from asking to the answer.
    checkpoint_latency: Mutex<Latency>,
    checkpoints_lease_lost: AtomicU64,
    leases_lost: AtomicU64,
    /// Every worker's stats (the failover's count of redelivered records).
    stats: Vec<Arc<Mutex<ConsumerStats>>>,
    failover: Mutex<Option<Failover>>,
    /// Set once every shard was read to the stop signal's tip: every worker stops.
    finished: watch::Sender<bool>,
}

/// How one of a dropped worker's shards moved, on the run's clock (ns).
#[derive(Default, Clone, Copy)]
struct Takeover {
    /// When a description first showed it no longer leased to the dropped worker.
    moved_ns: Option<u64>,
    /// When another worker was first handed its records, and which.
    reread: Option<(u64, usize)>,
}

/// A dropped worker's shards, as they move.
struct Failover {
    worker: usize,
    worker_name: String,
    at_ns: u64,
    shards: BTreeMap<u32, Takeover>,
    /// Redelivered records counted by all workers when it was dropped.
    redelivered_before: u64,
}

impl GroupShared {
    fn redelivered(&self) -> u64 {
        self.stats
            .iter()
            .map(|s| s.lock().expect("stats lock").redelivered)
            .sum()
    }

    /// Notes that `shard` was read up to `seq`; with the stop signal's tips known, finishes
    /// the run's reading once every shard is read to its tip.
    fn read(&self, shard: u32, seq: u64, stop: &StopAt) {
        {
            let mut read_to = self.read_to.lock().expect("read lock");
            let at = read_to.entry(shard).or_insert(seq);
            *at = (*at).max(seq);
        }
        self.check_finished(stop);
    }

    fn check_finished(&self, stop: &StopAt) {
        let Some(tips) = stop else {
            return;
        };
        let read_to = self.read_to.lock().expect("read lock");
        let all = tips.iter().all(|(shard, tip)| {
            tip.is_none_or(|last| read_to.get(shard).is_some_and(|&r| r >= last))
        });
        if all {
            self.finished.send_replace(true);
        }
    }
}

fn spawn_group(
    g: GroupSetup,
    cfg: &RunConfig,
    sh: &Arc<Shared>,
    stats: &[Arc<Mutex<ConsumerStats>>],
    stop: &watch::Receiver<StopAt>,
) -> Running {
    let (finished, _) = watch::channel(false);
    let shared = Arc::new(GroupShared {
        stream: g.stream,
        group: g.group,
        admin: g.admin,
        seen: Mutex::new(vec![BitSet::default(); sh.keys.len()]),
        read_to: Mutex::new(g.start_tips),
        checkpoints: AtomicU64::new(0),
        checkpoint_latency: Mutex::new(Latency::default()),
        checkpoints_lease_lost: AtomicU64::new(0),
        leases_lost: AtomicU64::new(0),
        stats: stats.to_vec(),
        failover: Mutex::new(None),
        finished,
    });
    let mut crash = None;
    let crash_task = cfg.crash_worker_at_s.map(|at_s| {
        let (tx, rx) = oneshot::channel();
        crash = Some(rx);
        let at = sh.t0 + Duration::from_secs_f64(at_s);
        tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let _ = tx.send(());
        })
    });
    let mut tasks = Vec::new();
    for (i, worker) in g.workers.into_iter().enumerate() {
        let member = Member {
            idx: i,
            sh: sh.clone(),
            stats: stats[i].clone(),
            g: shared.clone(),
            stop: stop.clone(),
            finished: shared.finished.subscribe(),
        };
        // The first worker is the one dropped.
        let crash = if i == 0 { crash.take() } else { None };
        tasks.push(tokio::spawn(member.run(worker, crash)));
    }
    Running::Group {
        tasks,
        shared,
        crash_task,
        lease_timeout_ms: g.lease_timeout_ms,
    }
}

/// Waits for the crash timer: `true` when it fired, `false` when the run ended first
/// (its sender dropped); never without one.
async fn crash_fired(crash: &mut Option<oneshot::Receiver<()>>) -> bool {
    match crash.as_mut() {
        Some(rx) => rx.await.is_ok(),
        None => std::future::pending().await,
    }
}

/// One group worker's task.
struct Member {
    idx: usize,
    sh: Arc<Shared>,
    stats: Arc<Mutex<ConsumerStats>>,
    g: Arc<GroupShared>,
    stop: watch::Receiver<StopAt>,
    finished: watch::Receiver<bool>,
}

impl Member {
    /// Takes the worker's events until every shard is read to its tip (then leaves the
    /// group), or until `crash` fires (then drops the worker without leaving). Returns the
    /// dropped worker's takeover watcher, if it was dropped.
    async fn run(
        mut self,
        mut worker: GroupWorker,
        mut crash: Option<oneshot::Receiver<()>>,
    ) -> Option<JoinHandle<()>> {
        /// What woke the worker's task.
        enum Wake {
            Event(Option<spate_client::Result<GroupEvent>>),
            /// The stop signal changed (`false`: the run is gone).
            Stop(bool),
            Finished,
            /// The crash timer fired (`false`: the run ended first).
            Crash(bool),
        }
        let mut errors_in_a_row = 0;
        loop {
            if *self.finished.borrow() {
                break;
            }
            let wake = tokio::select! {
                e = worker.next() => Wake::Event(e),
                changed = self.stop.changed() => Wake::Stop(changed.is_ok()),
                _ = self.finished.changed() => Wake::Finished,
                crashed = crash_fired(&mut crash) => Wake::Crash(crashed),
            };
            let event = match wake {
                Wake::Event(event) => event,
                Wake::Stop(true) => {
                    self.g.check_finished(&self.stop.borrow().clone());
                    continue;
                }
                Wake::Stop(false) => return None,
                Wake::Finished => continue,
                Wake::Crash(true) => return Some(self.crash(worker)),
                Wake::Crash(false) => {
                    crash = None;
                    continue;
                }
            };
            let Some(event) = event else {
                // The worker stopped after an error it reported.
                break;
            };
            match event {
                Ok(event) => {
                    errors_in_a_row = 0;
                    // A crash may come while a batch is handled, before its checkpoint is
                    // stored: its records then come again at the shard's next owner.
                    let crashed = tokio::select! {
                        () = self.handle(&worker, event) => None,
                        crashed = crash_fired(&mut crash) => Some(crashed),
                    };
                    match crashed {
                        None => {}
                        Some(true) => return Some(self.crash(worker)),
                        Some(false) => crash = None,
                    }
                }
                Err(e) => {
                    tracing::warn!(worker = %worker.worker(), error = %e, "group worker failed");
                    self.stats.lock().expect("stats lock").errors += 1;
                    errors_in_a_row += 1;
                    if errors_in_a_row >= ERRORS_IN_A_ROW_MAX {
                        break;
                    }
                }
            }
        }
        if let Err(e) = worker.leave().await {
            tracing::warn!(error = %e, "a group worker could not leave");
        }
        None
    }

    async fn handle(&self, worker: &GroupWorker, event: GroupEvent) {
        match event {
            GroupEvent::Records {
                shard_id, records, ..
            } => {
                account(&self.sh, &self.stats, &records, Some(&self.g.seen));
                let Some(last) = records.last().map(|r| r.seq) else {
                    return;
                };
                self.note_reread(shard_id);
                self.g.read(shard_id, last, &self.stop.borrow().clone());
                let asked = Instant::now();
                let done = worker.checkpoint(shard_id, last).await;
                self.checkpointed(done, asked);
            }
            GroupEvent::ShardEnded { shard_id } => {
                let asked = Instant::now();
                let done = worker.checkpoint_shard_end(shard_id).await;
                self.checkpointed(done, asked);
            }
            GroupEvent::LeaseLost { .. } => {
                self.g.leases_lost.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn checkpointed(&self, done: spate_client::Result<()>, asked: Instant) {
        match done {
            Ok(()) => {
                self.g.checkpoints.fetch_add(1, Ordering::Relaxed);
                let took_ns = asked.elapsed().as_nanos() as u64;
                self.g
                    .checkpoint_latency
                    .lock()
                    .expect("checkpoint latency lock")
                    .record_ns(took_ns);
            }
            // The lease moved: the records come again at its new owner.
            Err(e) if e.code() == Some(ErrorCode::LeaseLost) => {
                self.g
                    .checkpoints_lease_lost
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(error = %e, "checkpoint failed");
                self.stats.lock().expect("stats lock").errors += 1;
            }
        }
    }

    /// The first records of a dropped worker's shard delivered to another worker.
    fn note_reread(&self, shard: u32) {
        let mut failover = self.g.failover.lock().expect("failover lock");
        let Some(f) = failover.as_mut().filter(|f| f.worker != self.idx) else {
            return;
        };
        if let Some(t) = f.shards.get_mut(&shard).filter(|t| t.reread.is_none()) {
            t.reread = Some((self.sh.now_ns(), self.idx));
        }
    }

    /// Drops the worker without leaving, as a crash would (its leases expire after the
    /// timeout), and starts watching the group's description for the takeover.
    fn crash(self, worker: GroupWorker) -> JoinHandle<()> {
        let held = worker.leases();
        let name = worker.worker().to_string();
        drop(worker);
        let at_ns = self.sh.now_ns();
        *self.g.failover.lock().expect("failover lock") = Some(Failover {
            worker: self.idx,
            worker_name: name.clone(),
            at_ns,
            shards: held.iter().map(|&s| (s, Takeover::default())).collect(),
            redelivered_before: self.g.redelivered(),
        });
        tracing::info!(worker = %name, shards = ?held, "dropped a group worker");
        tokio::spawn(watch_takeover(self.g.clone(), self.sh.clone(), name))
    }
}

/// Polls the group's description until no shard the dropped worker held is leased to it
/// any more (expired, or already another worker's), until the group's reading is
/// finished, or until [`TAKEOVER_WATCH`] passes.
async fn watch_takeover(g: Arc<GroupShared>, sh: Arc<Shared>, dropped: String) {
    let deadline = Instant::now() + TAKEOVER_WATCH;
    while Instant::now() < deadline {
        let finished = *g.finished.borrow();
        match g.admin.describe_group(&g.stream, &g.group).await {
            Ok(info) => {
                let now_ns = sh.now_ns();
                let mut failover = g.failover.lock().expect("failover lock");
                let Some(f) = failover.as_mut() else {
                    return;
                };
                for s in &info.shards {
                    let Some(t) = f.shards.get_mut(&s.shard_id) else {
                        continue;
                    };
                    if t.moved_ns.is_none() && s.owner.as_ref() != Some(&dropped) {
                        t.moved_ns = Some(now_ns);
                    }
                }
                if f.shards.values().all(|t| t.moved_ns.is_some()) {
                    return;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "describe_group failed while watching a takeover")
            }
        }
        if finished {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The consumers' tasks while the run goes on.
pub(crate) enum Running {
    Poll(Vec<JoinHandle<()>>),
    Push {
        tasks: Vec<JoinHandle<()>>,
        admin: Client,
        stream: String,
        names: Vec<String>,
    },
    Group {
        tasks: Vec<JoinHandle<Option<JoinHandle<()>>>>,
        shared: Arc<GroupShared>,
        crash_task: Option<JoinHandle<()>>,
        lease_timeout_ms: Option<u32>,
    },
}

/// What the consumers leave for the report once finished.
pub(crate) struct Finished {
    /// A group's figures (without `missed`), and the records its workers were handed.
    pub group: Option<(GroupReport, Vec<BitSet>)>,
}

impl Running {
    /// Waits until every consumer has read to the stop signal's tips, then cleans up
    /// (push: deregisters the consumers; group: the workers leave, the group is deleted).
    pub(crate) async fn finish(self) -> Finished {
        match self {
            Running::Poll(tasks) => {
                for t in tasks {
                    t.await.expect("reader task");
                }
                Finished { group: None }
            }
            Running::Push {
                tasks,
                admin,
                stream,
                names,
            } => {
                for t in tasks {
                    t.await.expect("push consumer task");
                }
                for name in names {
                    if let Err(e) = admin.deregister_consumer(&stream, &name).await {
                        tracing::warn!(consumer = %name, error = %e, "could not deregister");
                    }
                }
                Finished { group: None }
            }
            Running::Group {
                tasks,
                shared,
                crash_task,
                lease_timeout_ms,
            } => {
                if let Some(t) = crash_task {
                    t.abort();
                }
                let mut watchers = Vec::new();
                for t in tasks {
                    watchers.extend(t.await.expect("group worker task"));
                }
                // The takeover was seen by now, or the watcher gives up on its own.
                for w in watchers {
                    let _ = w.await;
                }
                if let Err(e) = shared
                    .admin
                    .delete_group(&shared.stream, &shared.group)
                    .await
                {
                    tracing::warn!(group = %shared.group, error = %e, "could not delete the group");
                }
                let report = group_report(&shared, lease_timeout_ms);
                let seen = std::mem::take(&mut *shared.seen.lock().expect("seen lock"));
                Finished {
                    group: Some((report, seen)),
                }
            }
        }
    }
}

fn group_report(g: &GroupShared, lease_timeout_ms: Option<u32>) -> GroupReport {
    let failover = g.failover.lock().expect("failover lock").as_ref().map(|f| {
        let after = |ns: u64| ns.saturating_sub(f.at_ns) as f64 / 1e9;
        let shards: Vec<ShardFailover> = f
            .shards
            .iter()
            .map(|(&shard, t)| ShardFailover {
                shard,
                lease_moved_after_s: t.moved_ns.map(after),
                reread_after_s: t.reread.map(|(ns, _)| after(ns)),
                reread_by: t.reread.map(|(_, w)| worker_name(&g.group, w)),
            })
            .collect();
        let max = |v: Vec<Option<f64>>| v.into_iter().try_fold(0.0f64, |m, x| x.map(|x| m.max(x)));
        FailoverReport {
            worker: f.worker_name.clone(),
            at_s: f.at_ns as f64 / 1e9,
            reread_after_s_max: max(shards.iter().map(|s| s.reread_after_s).collect()),
            lease_moved_after_s_max: max(shards.iter().map(|s| s.lease_moved_after_s).collect()),
            shards,
            redelivered: g.redelivered().saturating_sub(f.redelivered_before),
        }
    });
    GroupReport {
        group: g.group.clone(),
        lease_timeout_ms,
        checkpoints: g.checkpoints.load(Ordering::Relaxed),
        checkpoint_latency_us: g
            .checkpoint_latency
            .lock()
            .expect("checkpoint latency lock")
            .summary(),
        checkpoints_lease_lost: g.checkpoints_lease_lost.load(Ordering::Relaxed),
        leases_lost: g.leases_lost.load(Ordering::Relaxed),
        missed: None,
        failover,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::{Header, PaddingPool, RecordWriter, Rng};

    fn record(run: u32, key: u32, counter: u32, origin_ns: u64) -> Record {
        let mut writer = RecordWriter::new(256);
        let header = Header {
            run,
            key,
            counter,
            origin_ns,
        };
        let data = writer.write(&header, 200, &PaddingPool::new(256, 1), &mut Rng::new(1));
        Record {
            seq: u64::from(counter),
            ts_ms: 0,
            key: format!("k{key}"),
            data,
            explicit_hash_key: None,
        }
    }

    #[test]
    fn a_batch_counts_this_runs_records_once_by_due_time() {
        // Measured from 0 to an hour: every record here is due in the window.
        let sh = Shared::for_test(7, vec!["k0".into(), "k1".into()], 0, 3_600_000_000_000);
        let stats = Mutex::new(ConsumerStats::default());
        let mut batch = vec![record(7, 0, 0, 0), record(7, 1, 0, 0), record(9, 0, 0, 0)];
        batch.push(Record {
            data: bytes::Bytes::from_static(b"not a load-generator record"),
            ..record(7, 0, 1, 0)
        });
        // Poll and push: every record of the run counts, another run's and garbage do not.
        assert_eq!(account(&sh, &stats, &batch, None), 2);
        assert_eq!(account(&sh, &stats, &batch, None), 2);
        {
            let s = stats.lock().unwrap();
            assert_eq!((s.records, s.received_in_window, s.redelivered), (4, 4, 0));
            assert_eq!(s.e2e.count(), 4);
            assert_eq!(s.bytes, 4 * (2 + 200));
        }
        // A group: the second delivery of a record is redelivered, not counted; a key index
        // the run does not have is skipped.
        let seen = Mutex::new(vec![BitSet::default(); 2]);
        let stats = Mutex::new(ConsumerStats::default());
        assert_eq!(account(&sh, &stats, &batch, Some(&seen)), 2);
        let again = [record(7, 1, 0, 0), record(7, 1, 1, 0), record(7, 5, 0, 0)];
        assert_eq!(account(&sh, &stats, &again, Some(&seen)), 1);
        let s = stats.lock().unwrap();
        assert_eq!((s.records, s.redelivered, s.e2e.count()), (3, 1, 3));
        assert_eq!(sh.live.consumed.load(Ordering::Relaxed), 7);
    }

    #[test]
    fn records_due_before_the_window_are_not_counted() {
        // The window starts an hour after the clock: nothing here is due in it, nor
        // arriving in it.
        let hour_ns = 3_600_000_000_000;
        let sh = Shared::for_test(7, vec!["k0".into()], hour_ns, 2 * hour_ns);
        let stats = Mutex::new(ConsumerStats::default());
        assert_eq!(account(&sh, &stats, &[record(7, 0, 0, 0)], None), 1);
        let s = stats.lock().unwrap();
        assert_eq!((s.records, s.received_in_window, s.e2e.count()), (0, 0, 0));
    }
}
