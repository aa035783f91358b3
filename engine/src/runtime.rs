//! One pinned glommio executor per engine core, the stores it serves and the shards in them.
//!
//! Ownership: every shard lives in exactly one store, and every store is served by exactly
//! one core (store `k` by core `k % cores`; normally core `k` serves store `k`). A core's
//! state (`Core`) is touched only by its own thread. Core 0 additionally owns the catalog
//! (the control plane). Other threads and cores reach a core only through its bounded
//! request channel (`CoreMsg`); replies come back on a one-slot channel. No locks are taken
//! on the write path: the channel is the only cross-thread structure a request touches.
//!
//! Each core runs one task per request (so a slow flush never blocks the core's queue), and
//! per store a background task (write-behind, checkpoints, space) in a task queue with
//! `background_shares` of CPU shares against 1000 for requests, plus a retention sweeper.
//!
//! `Core` is generic over the storage, so the whole request path (limits, appends, reads,
//! long-polls, the control plane) runs on the simulated disk in tests.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use async_channel::{Receiver, Sender};
use spate_protocol::batch::{
    self, check_producer_batch_with, BatchHeader, RecordIter, RecordRules,
};
pub use spate_protocol::read::IteratorPosition;
pub use spate_protocol::stream::StreamStatus;

use crate::catalog::{validate_retention, Catalog, ShardState, StreamEntry};
use crate::clock::ClockRef;
use crate::config::EngineConfig;
use crate::crypto::StreamKeys;
use crate::error::EngineError;
use crate::io::{DmaStorage, Storage};
use crate::keyring::Keyring;
use crate::limits::{Limits, TokenBucket, WriteLimiter};
use crate::store::{ReadOutput, ShardKey, Store};

mod auth_ops;
mod fanout_ops;
pub(crate) use auth_ops::{AuthAnswer, AuthOp};
pub(crate) use fanout_ops::{FanoutAnswer, FanoutOp};

/// Names one shard: its stream incarnation and shard number.
pub type ShardIdent = ShardKey;

/// A batch that passed its checks and limits, ready for its store.
struct Prepared<S: Storage> {
    slot: Rc<ShardSlot<S>>,
    /// Held until the append is answered, so that a seal waits for it.
    _appending: Appending<S>,
    /// The batch cut down to what the limits admit (None: all of it).
    cut: Option<Vec<u8>>,
    accepted: u32,
    record_count: u32,
    /// Key and data bytes of the accepted records (what Kinesis' byte metrics count).
    bytes: u64,
    retry_after_ms: Option<u32>,
}

/// The core's key-hash cache, with the lookahead of `check_producer_batch_with` turned into
/// prefetches of the cache sets it will look at (at `max-1k`'s 500-record batches of 10,000
/// keys, each lookup was a cache miss the next one waited for).
struct PrefetchingHasher<'a>(&'a mut spate_protocol::routing::CachedKeyHasher);

impl spate_protocol::routing::KeyHasher for PrefetchingHasher<'_> {
    const PREFETCHES: bool = true;

    fn hash_key(&mut self, partition_key: &[u8]) -> u128 {
        self.0.hash_key(partition_key)
    }

    fn prefetch(&self, partition_key: &[u8]) {
        crate::shard_table::prefetch_lines(self.0.set_address(partition_key), 128);
    }
}

impl<S: Storage> Prepared<S> {
    fn batch<'a>(&'a self, original: &'a [u8]) -> &'a [u8] {
        self.cut.as_deref().unwrap_or(original)
    }

    fn outcome(&self, ident: ShardIdent, ack: crate::store::AppendAck) -> PutOutcome {
        PutOutcome {
            shard_id: ident.shard_id,
            base_seq: ack.base_seq,
            accepted: self.accepted,
            record_count: self.record_count,
            bytes: self.bytes,
            ts_ms: ack.ts_ms,
            retry_after_ms: self.retry_after_ms,
        }
    }
}

/// Slots of each core's partition-key hash cache (64 bytes each: 2 MiB per core). Enough
/// for `many-shards`' 10,000 device keys to hit ~9 times in 10 (two ways of 16,384 sets).
const KEY_HASH_CACHE_SLOTS: usize = 32 * 1024;

pub(crate) type Reply<T> = Sender<Result<T, EngineError>>;

/// The routing table core 0 publishes for the thread-safe `Engine` handle after every
/// control operation (whoever asked for it: the handle or a client over the wire). Only
/// the handle reads it, never a core's request path.
pub(crate) type SharedRoutes =
    std::sync::Arc<std::sync::RwLock<HashMap<String, std::sync::Arc<StreamEntry>>>>;

/// Everything a core needs to serve one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardSpec {
    pub ident: ShardIdent,
    pub stream: Rc<str>,
    /// The store holding the shard's data (the catalog's placement).
    pub store: u32,
    pub hash_range: (u128, u128),
    pub limits: Limits,
    pub retention_hours: u32,
    pub max_record_data_bytes: u32,
    /// Closed (split or merged): the shard-map version that closed it.
    pub closed: Option<u64>,
    /// The stream's data keys (encryption at rest), unwrapped by core 0.
    pub keys: Option<Arc<StreamKeys>>,
}

/// A `ShardSpec` that can cross threads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardSpecMsg {
    pub ident: ShardIdent,
    pub stream: String,
    pub store: u32,
    pub hash_range: (u128, u128),
    pub limits: Limits,
    pub retention_hours: u32,
    pub max_record_data_bytes: u32,
    pub closed: Option<u64>,
    pub keys: Option<Arc<StreamKeys>>,
}

impl ShardSpecMsg {
    /// The specs of a stream's shards; `keys` are its data keys (`Keyring::keys`), `None`
    /// for a stream that was never encrypted.
    pub fn from_catalog(stream: &StreamEntry, keys: Option<Arc<StreamKeys>>) -> Vec<ShardSpecMsg> {
        stream
            .shards
            .iter()
            .map(|sh| ShardSpecMsg {
                ident: ShardIdent {
                    stream_id: stream.stream_id,
                    shard_id: sh.shard_id,
                },
                stream: stream.name.clone(),
                store: sh.core,
                hash_range: sh.hash_range(),
                limits: stream.limits,
                retention_hours: stream.retention_hours,
                max_record_data_bytes: stream.max_record_data_bytes,
                closed: (sh.state == crate::catalog::ShardState::Closed)
                    .then_some(stream.map_version),
                keys: keys.clone(),
            })
            .collect()
    }

    fn local(self) -> ShardSpec {
        ShardSpec {
            ident: self.ident,
            stream: self.stream.into(),
            store: self.store,
            hash_range: self.hash_range,
            limits: self.limits,
            retention_hours: self.retention_hours,
            max_record_data_bytes: self.max_record_data_bytes,
            closed: self.closed,
            keys: self.keys,
        }
    }
}

/// A read request against one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadRequest {
    pub from_seq: u64,
    pub max_records: u32,
    pub max_bytes: usize,
    /// Long-poll: wait up to this long for a record at or after `from_seq`.
    pub wait_ms: u32,
}

/// The result of a put: records `0..accepted` of the batch were stored with sequence
/// numbers `base_seq..base_seq + accepted`; the rest were throttled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutOutcome {
    pub shard_id: u32,
    pub base_seq: u64,
    pub accepted: u32,
    pub record_count: u32,
    /// Key and data bytes of the accepted records: what Kinesis' `IncomingBytes` counts
    /// (not the batch's framing).
    pub bytes: u64,
    pub ts_ms: i64,
    /// Set when `accepted < record_count`.
    pub retry_after_ms: Option<u32>,
}

/// A shard's vital statistics (for describe).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardStats {
    pub first_seq: u64,
    /// One past the newest durable record.
    pub next_seq: u64,
    pub latest_ts_ms: i64,
    pub segments: usize,
    /// Bytes of durable data in the shard's extents, and the disk they hold.
    pub bytes: u64,
    pub disk_bytes: u64,
    pub poisoned: bool,
    /// Why the shard's data cannot be served (its store failed to open), if it cannot.
    pub damaged: Option<String>,
}

/// Control-plane operations, served by core 0.
#[derive(Debug, Clone)]
pub enum ControlOp {
    CreateStream {
        name: String,
        opts: crate::catalog::StreamOptions,
        /// Answer once the stream is ACTIVE (`None`), or after at most this long with the
        /// stream CREATING while its shards go on opening (the server's create).
        answer_within: Option<std::time::Duration>,
    },
    DeleteStream {
        name: String,
    },
    SetRetention {
        name: String,
        hours: u32,
    },
    /// Kinesis' SplitShard. Answers the stream's entry before and after.
    SplitShard {
        name: String,
        shard_id: u32,
        at: u128,
    },
    /// Kinesis' MergeShards. Answers the entry before and after.
    MergeShards {
        name: String,
        shard_id: u32,
        adjacent: u32,
    },
    /// Kinesis' UpdateShardCount (uniform scaling). Answers the entry before and after.
    UpdateShardCount {
        name: String,
        target: u32,
    },
    /// Removes closed shards that hold no record any more and were closed more than a
    /// retention window ago (core 0's sweeper runs it).
    ExpireClosedShards,
    /// Kinesis' UpdateStreamMode. Answers the entry before and after.
    SetMode {
        name: String,
        mode: crate::catalog::CapacityMode,
        /// On-demand: the stream's ceiling in MiB/s (`None`: leave it as it is).
        max_write_mib_per_s: Option<u32>,
    },
    /// Kinesis' Enable/DisableEnhancedMonitoring: export the stream's per-shard metrics.
    SetShardLevelMetrics {
        name: String,
        on: bool,
    },
    /// One look of the on-demand scaler at every on-demand stream (core 0's scaler runs it).
    OnDemandTick,
    /// Kinesis' StartStreamEncryption: new batches are sealed under a new data key.
    /// Answers the entry.
    StartEncryption {
        name: String,
    },
    /// Kinesis' StopStreamEncryption: new batches are stored in clear; sealed ones stay
    /// readable. Answers the entry.
    StopEncryption {
        name: String,
    },
    /// Re-reads the key file (a master key appended), re-wraps every data key under the
    /// current master key and gives every encrypted stream a new data key under it.
    /// Answers the encrypted streams' entries.
    RotateKeys,
    Snapshot,
}

pub(crate) enum CoreMsg {
    OpenShard {
        spec: ShardSpecMsg,
        reply: Reply<()>,
    },
    DropShard {
        ident: ShardIdent,
        reply: Reply<()>,
    },
    UpdateShard {
        spec: ShardSpecMsg,
        reply: Reply<()>,
    },
    /// Closes shards of this core to writes (a split or merge): refuses new appends with
    /// `ShardClosed`, waits for the appends under way, and answers each shard's end (one past
    /// its last sequence number).
    Seal {
        idents: Vec<ShardIdent>,
        map_version: u64,
        reply: Reply<Vec<u64>>,
    },
    /// Takes back a seal whose change could not be recorded.
    Unseal {
        idents: Vec<ShardIdent>,
        reply: Reply<()>,
    },
    /// This core's recent write rate per shard (bytes per second), for placement.
    Load {
        reply: Reply<Vec<(ShardIdent, ShardLoad)>>,
    },
    Append {
        ident: ShardIdent,
        batch: Vec<u8>,
        reply: Reply<PutOutcome>,
    },
    /// Batches for several shards of this core, appended at once (a forwarded PutBatches).
    AppendMany {
        items: Vec<(ShardIdent, Vec<u8>)>,
        reply: Sender<Result<Vec<Result<PutOutcome, EngineError>>, EngineError>>,
    },
    Read {
        ident: ShardIdent,
        req: ReadRequest,
        /// A subscription's read: the registered consumer and its claim (`None`: polling).
        consumer: Option<(u64, u64)>,
        reply: Reply<ReadOutput>,
    },
    /// Core 0: a fan-out operation (consumers, subscriptions' claims, groups).
    Fanout {
        op: FanoutOp,
        reply: Reply<FanoutAnswer>,
    },
    /// Core 0: a security operation (principals, policies, decisions, the audit trail).
    Auth {
        op: AuthOp,
        reply: Reply<AuthAnswer>,
    },
    /// Principals or policies changed: connections drop the decisions they cached.
    AuthChanged {
        version: u64,
        reply: Reply<()>,
    },
    /// A new subscription takes over `(consumer, shard)`; answers its generation.
    Claim {
        ident: ShardIdent,
        consumer_id: u64,
        reply: Reply<u64>,
    },
    /// A consumer was deregistered: its subscriptions end.
    DropConsumer {
        consumer_id: u64,
        reply: Reply<()>,
    },
    Position {
        ident: ShardIdent,
        pos: IteratorPosition,
        reply: Reply<u64>,
    },
    Stats {
        ident: ShardIdent,
        reply: Reply<ShardStats>,
    },
    RetentionNow {
        reply: Reply<usize>,
    },
    /// Runs a checkpoint of every store of the core now (tests, benchmarks).
    CheckpointNow {
        reply: Reply<()>,
    },
    Control {
        op: ControlOp,
        reply: Reply<Vec<StreamEntry>>,
    },
    /// Core 0 tells every core about a created, changed (`Some`) or deleted (`None`) stream
    /// before it answers the control request, so any core can route the next request.
    RouteUpdate {
        name: String,
        entry: Option<StreamEntry>,
        status: StreamStatus,
        reply: Reply<()>,
    },
    /// Bind the public (SO_REUSEPORT) and the core's own listener; reply with both addresses.
    Listen {
        public: Option<SocketAddr>,
        own: SocketAddr,
        reply: Reply<(Option<SocketAddr>, SocketAddr)>,
    },
    /// Every core's advertised address, for `Hello`.
    SetTopology {
        addrs: Vec<String>,
        metrics: Option<String>,
        reply: Reply<()>,
    },
    /// A long-poll (`Core::wait_for_data`), answered when the shard has data or time is up,
    /// or soon after `cancel` is set (the asking client hung up).
    WaitData {
        ident: ShardIdent,
        from_seq: u64,
        wait_ms: u32,
        cancel: std::sync::Arc<std::sync::atomic::AtomicBool>,
        reply: Reply<()>,
    },
    /// This core's network accounting.
    Metrics {
        reply: Reply<crate::metrics::MetricsSnapshot>,
    },
    NetStats {
        reply: Reply<crate::server::NetStats>,
    },
    /// Core 0: the master key new data keys are wrapped under.
    MasterKey {
        reply: Reply<u32>,
    },
    Shutdown {
        reply: Reply<()>,
    },
}

/// What a core's thread is started with.
pub(crate) struct CoreSetup {
    pub index: usize,
    pub cores: usize,
    pub cfg: EngineConfig,
    pub clock: ClockRef,
    pub rx: Receiver<CoreMsg>,
    pub peers: Vec<Sender<CoreMsg>>,
    pub catalog: Option<Catalog>,
    /// Stores this core serves, with the shards placed in each.
    pub stores: Vec<(u32, Vec<ShardSpecMsg>)>,
    pub routes: HashMap<String, StreamEntry>,
    /// Where core 0 publishes routes for the `Engine` handle.
    pub published: SharedRoutes,
    /// The secret iterator tokens are authenticated with.
    pub token_key: spate_protocol::TokenKey,
    /// Core 0: the master keys and the streams' data keys.
    pub keyring: Option<Keyring>,
    pub ready: std::sync::mpsc::Sender<Result<(), EngineError>>,
}

pub(crate) struct ShardSlot<S: Storage> {
    spec: RefCell<ShardSpec>,
    store: Rc<Store<S>>,
    write: RefCell<Option<WriteLimiter>>,
    read: RefCell<Option<TokenBucket>>,
    /// Kinesis limits: polling read calls per second (5), a long-poll counting as one.
    read_calls: RefCell<Option<TokenBucket>>,
    /// Registered consumers subscribed to the shard, each with its own read allowance.
    subscribers: RefCell<HashMap<u64, fanout_ops::Subscriber>>,
    /// Closed to writes: the shard-map version that closed it.
    sealed: Cell<Option<u64>>,
    /// Appends past their checks and not yet answered (a seal waits for them).
    appending: Cell<u32>,
    appends_done: crate::notify::Notify,
    /// Recent write rate (bytes of key and data per second).
    rate: Cell<crate::rate::RateMeter>,
    /// Recent write rate in records per second (on-demand scaling: a shard's record limit
    /// is met long before its byte limit with small records).
    records_rate: Cell<crate::rate::RateMeter>,
    /// Records refused by the write limit, ever.
    throttled: Cell<u64>,
}

/// A shard's recent write rate and throttling, for placement and on-demand scaling.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ShardLoad {
    pub bytes_per_s: f64,
    pub records_per_s: f64,
    /// Records refused by the write limit since the shard was opened.
    pub throttled: u64,
}

/// What core 0 remembers of an on-demand stream between looks.
#[derive(Debug, Clone, Copy, Default)]
struct ScalerState {
    /// Since when the write rate has been above the scale-out share (below the scale-in
    /// share).
    above_since: Option<i64>,
    below_since: Option<i64>,
    /// Throttled records summed over the open shards at the last look.
    throttled: u64,
}

/// Counts an append under way on its shard until dropped.
struct Appending<S: Storage>(Rc<ShardSlot<S>>);

impl<S: Storage> Appending<S> {
    fn new(slot: &Rc<ShardSlot<S>>) -> Appending<S> {
        slot.appending.set(slot.appending.get() + 1);
        Appending(slot.clone())
    }
}

impl<S: Storage> Drop for Appending<S> {
    fn drop(&mut self) {
        let slot = &self.0;
        slot.appending.set(slot.appending.get() - 1);
        if slot.appending.get() == 0 {
            slot.appends_done.notify_all();
        }
    }
}

pub struct Core<S: Storage> {
    pub(crate) index: usize,
    pub(crate) cfg: EngineConfig,
    pub(crate) clock: ClockRef,
    storage: Rc<S>,
    /// The stores this core serves, by store index.
    stores: RefCell<BTreeMap<u32, Rc<Store<S>>>>,
    /// Looked up per batch: dense by shard id (`crate::shard_table`).
    shards: RefCell<crate::shard_table::ShardTable<Rc<ShardSlot<S>>>>,
    /// Counters of this core's requests (read by a scrape, `CoreMsg::Metrics`).
    pub(crate) metrics: crate::metrics::CoreMetrics,
    /// Error answers logged: (second, logged in it, suppressed since the last logged).
    pub(crate) error_logs: Cell<(i64, u32, u64)>,
    /// Extents and records retention deleted on this core.
    retention_deleted: Cell<(u64, u64)>,
    /// How long opening (recovering) this core's stores took at start.
    recovery_ms: Cell<u64>,
    /// The rate this core's stores pace their rounds to (0: unpaced): `round_rate_max`, or
    /// with "auto" the pacer's cap (`pace_rounds`); and the stalls its probe saw.
    round_rate: Cell<u32>,
    stalls: Cell<u64>,
    pub(crate) peers: Vec<Sender<CoreMsg>>,
    catalog: Option<RefCell<Catalog>>,
    pub(crate) stopping: Cell<bool>,
    /// This core's copy of the stream routing table (name -> catalog entry).
    pub(crate) routes: RefCell<HashMap<String, Rc<StreamEntry>>>,
    /// Listeners, connections and request accounting (see `server`).
    pub(crate) net: crate::server::NetState,
    /// Messages from other cores being handled (a shutdown waits for them).
    pub(crate) handling: Cell<usize>,
    /// Core 0: where routes are published for the `Engine` handle.
    published: RefCell<Option<SharedRoutes>>,
    /// Core 0: control operations run one at a time.
    control_lock: Rc<crate::notify::TaskLock>,
    /// Streams in a status other than ACTIVE while a control operation runs on them.
    pub(crate) statuses: RefCell<HashMap<String, StreamStatus>>,
    /// Shards of stores that failed to open at start, with the reason: they answer Corrupt,
    /// and everything else is served.
    damaged: RefCell<rustc_hash::FxHashMap<ShardIdent, Rc<str>>>,
    damaged_stores: RefCell<BTreeMap<u32, Rc<str>>>,
    /// The secret iterator tokens are authenticated with (set once the core starts).
    pub(crate) token_key: std::cell::OnceCell<spate_protocol::TokenKey>,
    /// Partition key -> MD5 cache for the routing check (`verify_hash_keys`).
    key_hashes: RefCell<spate_protocol::routing::CachedKeyHasher>,
    /// Core 0: on-demand streams' scaling state, by stream incarnation.
    scalers: RefCell<HashMap<u64, ScalerState>>,
    /// Core 0: registered consumers and consumer groups (`crate::fanout`).
    fanout: Option<RefCell<crate::fanout::Fanout>>,
    /// Core 0: registrations and subscriptions' claims run one at a time.
    fanout_lock: crate::notify::TaskLock,
    /// Core 0: one write of the fan-out state at a time, and the changes it covered.
    fanout_writer: crate::notify::TaskLock,
    fanout_saved: Cell<u64>,
    /// Core 0: checkpoints durable (in the log or a snapshot), by number, and whether a
    /// failed append may have left the log torn (the next checkpoint writes a snapshot).
    checkpoints_saved: Cell<u64>,
    checkpoint_log_broken: Cell<bool>,
    /// Subscriptions' claims handed out by this core.
    next_generation: Cell<u64>,
    /// Core 0: principals and their policies (`crate::auth`).
    auth: Option<RefCell<crate::auth::AuthStore>>,
    /// Core 0: one write of them at a time, and the changes it covered.
    auth_writer: crate::notify::TaskLock,
    auth_saved: Cell<u64>,
    /// Core 0: the audit trail (`None` with `audit = false`).
    audit: Option<crate::audit::AuditLog>,
    /// The principals' and policies' version this core knows; a connection's cached
    /// decisions from another version are dropped.
    pub(crate) auth_version: Cell<u64>,
    /// Core 0: master keys and unwrapped data keys (encryption at rest).
    keyring: RefCell<Option<Keyring>>,
}

/// Kinesis: polling consumers share 5 read calls per second per shard.
pub const KINESIS_READ_CALLS_PER_S: u64 = 5;

/// A read is charged at least 1/this of the stored bytes it read and sent (`read_as`).
const READ_CHARGE_SHARE: u64 = 4;

/// How far past the server's time an AT_TIMESTAMP position (or a group's start) may be
/// before it is refused as in the future: clocks a little ahead of the server's.
pub(crate) const FUTURE_TIMESTAMP_GRACE_MS: i64 = 1000;

type Limiters = (
    Option<WriteLimiter>,
    Option<TokenBucket>,
    Option<TokenBucket>,
);

fn limiters(spec: &ShardSpec, now_ms: i64) -> Limiters {
    let calls = (spec.limits == Limits::Kinesis)
        .then(|| TokenBucket::new(KINESIS_READ_CALLS_PER_S, now_ms));
    match spec.limits.rates() {
        Some((wb, wr, rb)) => (
            Some(WriteLimiter::new(wb, wr, now_ms)),
            Some(TokenBucket::new(rb, now_ms)),
            calls,
        ),
        None => (None, None, None),
    }
}

/// The body of a core's thread, run inside its glommio executor.
pub(crate) async fn run_core(setup: CoreSetup) {
    let CoreSetup {
        index,
        cores,
        cfg,
        clock,
        rx,
        peers,
        catalog,
        stores,
        routes,
        published,
        token_key,
        keyring,
        ready,
    } = setup;
    let storage = match DmaStorage::open_core(&cfg.data_dir, index).await {
        Ok(s) => Rc::new(s),
        Err(e) => {
            let _ = ready.send(Err(EngineError::Startup(format!("core {index}: {e}"))));
            return;
        }
    };
    let core = match Core::open(
        index, cores, cfg, clock, storage, peers, catalog, stores, routes,
    )
    .await
    {
        Ok(c) => Rc::new(c),
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    *core.published.borrow_mut() = Some(published);
    *core.keyring.borrow_mut() = keyring;
    let _ = core.token_key.set(token_key);
    let _ = ready.send(Ok(()));
    core.spawn_background();
    while let Ok(msg) = rx.recv().await {
        if let CoreMsg::Shutdown { reply } = msg {
            // From here a message either fails to send or is refused unrun, both answered
            // ShuttingDown ("nothing was done"); the ones already running are waited for.
            rx.close();
            while let Ok(queued) = rx.try_recv() {
                queued.refuse();
            }
            core.shutdown().await;
            let _ = reply.send(Ok(())).await;
            break;
        }
        core.handling.set(core.handling.get() + 1);
        let c = core.clone();
        glommio::spawn_local(async move {
            let done = crate::notify::OnDrop::new(|| {
                c.handling.set(c.handling.get() - 1);
                if c.handling.get() == 0 {
                    c.net.idle.notify_all();
                }
            });
            c.clone().handle(msg).await;
            drop(done);
        })
        .detach();
    }
    tracing::debug!(core = index, "core stopped");
}

impl<S: Storage + 'static> Core<S> {
    /// Opens (recovers) the stores this core serves and registers their shards.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn open(
        index: usize,
        cores: usize,
        cfg: EngineConfig,
        clock: ClockRef,
        storage: Rc<S>,
        peers: Vec<Sender<CoreMsg>>,
        catalog: Option<Catalog>,
        stores: Vec<(u32, Vec<ShardSpecMsg>)>,
        routes: HashMap<String, StreamEntry>,
    ) -> Result<Core<S>, EngineError> {
        let _ = cores;
        let metrics = crate::metrics::CoreMetrics::new(cfg.metrics);
        let round_rate = cfg.round_rate_max.fixed();
        let core = Core {
            index,
            cfg,
            clock,
            storage,
            stores: RefCell::new(BTreeMap::new()),
            shards: RefCell::new(Default::default()),
            metrics,
            error_logs: Cell::new((0, 0, 0)),
            retention_deleted: Cell::new((0, 0)),
            recovery_ms: Cell::new(0),
            round_rate: Cell::new(round_rate),
            stalls: Cell::new(0),
            peers,
            catalog: catalog.map(RefCell::new),
            stopping: Cell::new(false),
            routes: RefCell::new(routes.into_iter().map(|(k, v)| (k, Rc::new(v))).collect()),
            net: crate::server::NetState::default(),
            handling: Cell::new(0),
            published: RefCell::new(None),
            control_lock: Rc::new(crate::notify::TaskLock::new()),
            statuses: RefCell::new(HashMap::new()),
            damaged: RefCell::new(Default::default()),
            damaged_stores: RefCell::new(BTreeMap::new()),
            token_key: std::cell::OnceCell::new(),
            key_hashes: RefCell::new(spate_protocol::routing::CachedKeyHasher::new(
                KEY_HASH_CACHE_SLOTS,
            )),
            scalers: RefCell::new(HashMap::new()),
            fanout: None,
            fanout_lock: crate::notify::TaskLock::new(),
            fanout_writer: crate::notify::TaskLock::new(),
            fanout_saved: Cell::new(0),
            checkpoints_saved: Cell::new(0),
            checkpoint_log_broken: Cell::new(false),
            next_generation: Cell::new(0),
            auth: None,
            auth_writer: crate::notify::TaskLock::new(),
            auth_saved: Cell::new(0),
            audit: None,
            auth_version: Cell::new(0),
            keyring: RefCell::new(None),
        };
        let mut core = core;
        if core.catalog.is_some() {
            let path = core.cfg.data_dir.join(crate::fanout::FANOUT_FILE);
            let bytes = core.storage.read_small(&path).await.map_err(|e| {
                EngineError::Startup(format!("cannot read {}: {e}", path.display()))
            })?;
            let mut fanout = crate::fanout::Fanout::from_bytes(
                &core.cfg.data_dir,
                bytes.as_deref(),
                core.clock.now_ms(),
            )?;
            let live: std::collections::HashSet<u64> =
                core.routes.borrow().values().map(|e| e.stream_id).collect();
            fanout.retain_streams(|id| live.contains(&id));
            // Checkpoints since the last snapshot: replayed, then folded into a new
            // snapshot, so appends never follow a torn tail.
            let log_path = core.cfg.data_dir.join(crate::fanout::CHECKPOINT_LOG_FILE);
            let log = core.storage.read_small(&log_path).await.map_err(|e| {
                EngineError::Startup(format!("cannot read {}: {e}", log_path.display()))
            })?;
            if let Some(log) = log {
                let records = fanout.replay_log(&log);
                let (path, bytes) = fanout.encoded();
                let io =
                    |e: std::io::Error| EngineError::Startup(format!("{}: {e}", path.display()));
                core.storage
                    .write_small_atomic(&path, &bytes)
                    .await
                    .map_err(io)?;
                core.storage.remove_file(&log_path).await.map_err(io)?;
                tracing::info!(records, "consumer-group checkpoint log replayed");
            }
            core.fanout = Some(RefCell::new(fanout));
            core.open_security().await?;
        }
        for e in core.routes.borrow().values() {
            core.metrics
                .set_shard_level(e.stream_id, e.shard_level_metrics);
        }
        let recovery_started = std::time::Instant::now();
        let (mut opened_stores, mut opened_shards, mut rounds, mut cut) = (0u64, 0u64, 0u64, 0u64);
        let store_count = stores.len();
        for (store_index, specs) in stores {
            let live: Vec<ShardKey> = specs.iter().map(|s| s.ident).collect();
            let started = std::time::Instant::now();
            let opened = Store::open(
                core.storage.clone(),
                core.cfg.store_config(store_index),
                core.clock.clone(),
                &live,
            )
            .await;
            // A store that cannot be opened (a missing or damaged file) does not keep the
            // engine from starting: its shards are reported damaged and answer Corrupt, and
            // every other store serves.
            let store = match opened {
                Ok(s) => s,
                Err(e) => {
                    let why: Rc<str> = format!(
                        "store {store_index} ({}) cannot be opened: {e}",
                        core.cfg.store_config(store_index).dir.display()
                    )
                    .into();
                    tracing::error!(
                        core = index,
                        store = store_index,
                        shards = live.len(),
                        "{why}; its shards answer Corrupt until it is repaired, everything else is served"
                    );
                    core.damaged_stores
                        .borrow_mut()
                        .insert(store_index, why.clone());
                    let mut damaged = core.damaged.borrow_mut();
                    for spec in &specs {
                        damaged.insert(spec.ident, why.clone());
                    }
                    continue;
                }
            };
            tracing::info!(
                core = index,
                store = store_index,
                shards = live.len(),
                ms = started.elapsed().as_millis() as u64,
                "store open"
            );
            let stats = store.stats();
            opened_stores += 1;
            opened_shards += live.len() as u64;
            rounds += stats.replayed_rounds;
            cut += stats.cut_shards;
            core.stores.borrow_mut().insert(store_index, Rc::new(store));
            for spec in specs {
                core.register_shard(spec.local())?;
            }
        }
        core.recovery_ms
            .set(recovery_started.elapsed().as_millis() as u64);
        if store_count > 0 {
            tracing::info!(
                core = index,
                stores = opened_stores,
                damaged_stores = store_count as u64 - opened_stores,
                shards = opened_shards,
                rounds_replayed = rounds,
                shards_cut = cut,
                ms = recovery_started.elapsed().as_millis() as u64,
                "recovery done"
            );
        }
        Ok(core)
    }

    /// Starts the background tasks: per store write-behind, checkpoints and space, in a low
    /// priority task queue; and the retention sweeper.
    pub(crate) fn spawn_background(self: &Rc<Self>) {
        // Before anything is served: what expired while the server was down is not.
        self.apply_retention();
        let shares = glommio::Shares::Static(self.cfg.background_shares);
        let tq = glommio::executor().create_task_queue(
            shares,
            glommio::Latency::NotImportant,
            "background",
        );
        let stores: Vec<Rc<Store<S>>> = self.stores.borrow().values().cloned().collect();
        for store in stores {
            let core = self.clone();
            let spawned =
                glommio::spawn_local_into(async move { core.background_loop(store).await }, tq);
            match spawned {
                Ok(t) => {
                    t.detach();
                }
                Err(e) => {
                    tracing::error!(core = self.index, error = %e, "cannot start background work")
                }
            }
        }
        if tracing::enabled!(tracing::Level::DEBUG) {
            glommio::spawn_local(probe_executor_lateness(self.index)).detach();
        }
        if self.cfg.round_rate_max == crate::config::RoundRate::Auto {
            let core = self.clone();
            glommio::spawn_local(async move { core.pace_rounds().await }).detach();
        }
        let spawned = glommio::spawn_local_into(sweep_retention(self.clone()), tq);
        if let Ok(t) = spawned {
            t.detach();
        }
        if self.cfg.metrics && self.cfg.metrics_toggle_ms > 0 {
            let core = self.clone();
            glommio::spawn_local(async move { core.toggle_metrics().await }).detach();
        }
        if self.audit.is_some() {
            // Refusals folded past the audit budget get their summary line within a second.
            let core = self.clone();
            glommio::spawn_local(async move {
                loop {
                    // Once a second, and once more when the core starts stopping (what was
                    // folded in its last second is written, not dropped).
                    let stopping = core.stopping.get();
                    if !stopping {
                        let tick = glommio::timer::sleep(Duration::from_secs(1));
                        futures_lite::future::or(tick, core.net.stopping.wait()).await;
                    }
                    let Some(log) = &core.audit else { return };
                    if let Err(e) = log
                        .flush_refusals(&*core.storage, core.clock.now_ms())
                        .await
                    {
                        tracing::error!(error = %e, "the audit trail cannot be written");
                    }
                    if stopping {
                        return;
                    }
                }
            })
            .detach();
        }
        if self.catalog.is_some() {
            let core = self.clone();
            glommio::spawn_local(async move {
                loop {
                    glommio::timer::sleep(Duration::from_millis(core.cfg.on_demand_check_ms))
                        .await;
                    if core.stopping.get() {
                        return;
                    }
                    if let Err(e) = core.control(ControlOp::OnDemandTick).await {
                        tracing::warn!(error = %e, "the on-demand scaler's look failed; it looks again");
                    }
                }
            })
            .detach();
        }
    }

    async fn background_loop(self: Rc<Self>, store: Rc<Store<S>>) {
        let mut last = store.stats();
        let mut last_log = std::time::Instant::now();
        loop {
            if self.stopping.get() {
                return;
            }
            if last_log.elapsed() >= Duration::from_secs(10) {
                let now = store.stats();
                log_store_stats(store.config().index, &last, &now, last_log.elapsed());
                last = now;
                last_log = std::time::Instant::now();
            }
            match store.background_step().await {
                Ok(true) => futures_lite::future::yield_now().await,
                Ok(false) => {
                    let signal = store.work_signal();
                    let tick = glommio::timer::sleep(Duration::from_millis(100));
                    futures_lite::future::or(signal, tick).await;
                }
                Err(e) => {
                    tracing::warn!(core = self.index, error = %e, "background work failed");
                    glommio::timer::sleep(Duration::from_millis(1000)).await;
                }
            }
        }
    }

    /// `round_rate_max = "auto"`: watches this core's executor (stalls while its rounds run
    /// fast; its CPU share) and paces the rounds as `crate::pacer` decides (see there for
    /// why).
    async fn pace_rounds(&self) {
        use crate::pacer::{AutoPacer, Change, ACTIVE_RATE, STALL_US};
        const WINDOW: Duration = Duration::from_millis(100);
        let rounds = || -> u64 {
            self.stores
                .borrow()
                .values()
                .map(|s| s.stats().rounds)
                .sum()
        };
        let t0 = std::time::Instant::now();
        let mut pacer = AutoPacer::default();
        let mut window = (t0, rounds(), crate::metrics::thread_cpu_ns());
        // A wake-up this late is logged (at most once per `STALL_WARN_EVERY_MS`).
        const LATE_WARN_US: u64 = 50_000;
        let (mut late_warned, mut late_unreported) = (None, 0u64);
        // Rounds a second in the last two whole windows (a stall depresses its own window).
        let (mut rate, mut rate_before) = (0.0f64, 0.0f64);
        let apply = |cap: Change| {
            let cap = cap.unwrap_or(0);
            self.round_rate.set(cap);
            for store in self.stores.borrow().values() {
                store.set_round_rate(cap);
            }
        };
        while !self.stopping.get() {
            let active = rate.max(rate_before) >= ACTIVE_RATE;
            let nap = if active {
                Duration::from_millis(1)
            } else {
                WINDOW
            };
            let slept = std::time::Instant::now();
            glommio::timer::sleep(nap).await;
            let now = std::time::Instant::now();
            let late_us = ((now - slept).saturating_sub(nap)).as_micros() as u64;
            let now_ms = (now - t0).as_millis() as u64;
            if late_us >= LATE_WARN_US {
                late_unreported += 1;
                let due = late_warned.is_none_or(|at: std::time::Instant| {
                    (now - at).as_millis() as i64 >= crate::store::STALL_WARN_EVERY_MS
                });
                if due {
                    tracing::warn!(
                        core = self.index,
                        late_ms = late_us / 1000,
                        times = std::mem::take(&mut late_unreported),
                        "the core's executor woke over 50 ms late: every request on it waited (the host took the CPU, or a call blocked the thread; times: how many since the last such line)"
                    );
                    late_warned = Some(now);
                }
            }
            if late_us >= STALL_US {
                self.stalls.set(self.stalls.get() + 1);
                let seen = rate.max(rate_before);
                let before = pacer.cap();
                if let Some(cap) = pacer.stall(now_ms, seen) {
                    let (late_ms, rounds_per_s) = (late_us / 1000, seen as u64);
                    if cap.unwrap_or(u32::MAX) < before.unwrap_or(u32::MAX) {
                        tracing::info!(
                            core = self.index,
                            late_ms,
                            rounds_per_s,
                            cap = cap.unwrap_or(0),
                            hold_s = pacer.hold_ms() / 1000,
                            "the executor stalled while rounds ran fast (a host that pays for each I/O from the VM's CPU?): rounds are capped (cap: rounds a second; round_rate_max = \"auto\")"
                        );
                    } else {
                        tracing::info!(
                            core = self.index,
                            late_ms,
                            rounds_per_s,
                            cap = cap.unwrap_or(0),
                            "the executor stalls as often with rounds at the floor as faster: the host's stalls, not the rounds'; the stalls' cap is lifted (cap: rounds a second, 0 none; round_rate_max = \"auto\")"
                        );
                    }
                    apply(cap);
                }
            }
            if let Some(cap) = pacer.tick(now_ms) {
                tracing::debug!(
                    core = self.index,
                    cap = cap.unwrap_or(0),
                    "round pacing eased"
                );
                apply(cap);
            }
            let (at, was, cpu_was) = window;
            if now - at >= WINDOW {
                let (n, cpu) = (rounds(), crate::metrics::thread_cpu_ns());
                let wall = (now - at).as_secs_f64();
                rate_before = rate;
                rate = (n - was) as f64 / wall;
                let busy = cpu.saturating_sub(cpu_was) as f64 / 1e9 / wall;
                window = (now, n, cpu);
                if let Some(cap) = pacer.window((now - at).as_millis() as u64, busy, rate) {
                    apply(cap);
                }
            }
        }
    }

    /// One step of every store's background work (tests drive it by hand).
    #[cfg(test)]
    pub(crate) async fn background_once(&self) -> bool {
        let stores: Vec<Rc<Store<S>>> = self.stores.borrow().values().cloned().collect();
        let mut did = false;
        for s in stores {
            did |= s.background_step().await.unwrap_or(false);
        }
        did
    }

    /// `metrics_toggle_ms`: counting on in even periods of the wall clock, off in odd ones,
    /// until the core stops (the summary is logged at shutdown).
    async fn toggle_metrics(&self) {
        let period = self.cfg.metrics_toggle_ms;
        while !self.stopping.get() {
            let now = crate::clock::Clock::now_ms(&*self.clock).max(0) as u64;
            let next = (now / period + 1) * period;
            glommio::timer::sleep(Duration::from_millis(next - now)).await;
            let on = (next / period) % 2 == 0;
            self.metrics.toggle_phase(
                on,
                self.cfg.metrics_toggle_calibrate,
                std::time::Instant::now(),
            );
        }
    }

    /// Stops taking requests, answers the in-flight ones, and makes every store durable
    /// with a final checkpoint (a clean restart replays nothing).
    pub(crate) async fn shutdown(&self) {
        self.stopping.set(true);
        if let Some(s) = self.metrics.toggle_summary() {
            tracing::info!(
                core = self.index,
                pairs = s.pairs,
                on_records_per_s = s.on_records_per_s as u64,
                off_records_per_s = s.off_records_per_s as u64,
                on_cpu_ns_per_record = s.on_cpu_ns_per_record as u64,
                off_cpu_ns_per_record = s.off_cpu_ns_per_record as u64,
                "metrics toggle: counting on/off CPU per record {:.4} ± {:.4}, throughput on/off {:.4} ± {:.4} (mean of paired periods ± standard error)",
                s.cpu_ratio.0,
                s.cpu_ratio.1,
                s.throughput_ratio.0,
                s.throughput_ratio.1
            );
        }
        self.net.stopping.notify_all();
        crate::server::stop_accepting(self);
        let stores: Vec<Rc<Store<S>>> = self.stores.borrow().values().cloned().collect();
        // Long-polling readers wake up, see `stopping` and answer at once.
        for s in &stores {
            s.wake_readers();
        }
        crate::server::drain_requests(self).await;
        for s in stores {
            if let Err(e) = s.shutdown().await {
                tracing::error!(store = s.config().index, error = %e, "flush at shutdown failed");
            }
        }
        crate::server::close_connections(self).await;
    }

    pub(crate) async fn handle(self: Rc<Self>, msg: CoreMsg) {
        match msg {
            CoreMsg::OpenShard { spec, reply } => {
                let _ = reply.send(self.open_shard(spec.local()).await).await;
            }
            CoreMsg::DropShard { ident, reply } => {
                self.drop_shard(ident);
                let _ = reply.send(Ok(())).await;
            }
            CoreMsg::UpdateShard { spec, reply } => {
                let spec = spec.local();
                let r = self.slot(spec.ident).map(|slot| {
                    slot.store.set_keys(spec.ident, spec.keys.clone());
                    *slot.spec.borrow_mut() = spec;
                });
                let _ = reply.send(r).await;
            }
            CoreMsg::Seal {
                idents,
                map_version,
                reply,
            } => {
                let _ = reply.send(self.seal(&idents, map_version).await).await;
            }
            CoreMsg::Unseal { idents, reply } => {
                for ident in idents {
                    if let Ok(slot) = self.slot(ident) {
                        slot.sealed.set(slot.spec.borrow().closed);
                    }
                }
                let _ = reply.send(Ok(())).await;
            }
            CoreMsg::Load { reply } => {
                let now = self.clock.now_ms();
                let rates = self
                    .shards
                    .borrow()
                    .iter()
                    .map(|(ident, slot)| {
                        let load = ShardLoad {
                            bytes_per_s: slot.rate.get().per_second(now),
                            records_per_s: slot.records_rate.get().per_second(now),
                            throttled: slot.throttled.get(),
                        };
                        (*ident, load)
                    })
                    .collect();
                let _ = reply.send(Ok(rates)).await;
            }
            CoreMsg::Append {
                ident,
                batch,
                reply,
            } => {
                let result = match self
                    .net
                    .charge_forwarded(batch.len(), self.cfg.max_buffered_bytes_per_core)
                {
                    Ok(_held) => self.append(ident, &batch).await,
                    Err(e) => Err(e),
                };
                let _ = reply.send(result).await;
            }
            CoreMsg::AppendMany { items, reply } => {
                let bytes = items.iter().map(|(_, b)| b.len()).sum();
                let result = match self
                    .net
                    .charge_forwarded(bytes, self.cfg.max_buffered_bytes_per_core)
                {
                    Ok(_held) => {
                        let borrowed: Vec<(ShardIdent, &[u8])> =
                            items.iter().map(|(i, b)| (*i, b.as_slice())).collect();
                        Ok(self.append_many(&borrowed).await)
                    }
                    Err(e) => Err(e),
                };
                let _ = reply.send(result).await;
            }
            CoreMsg::Read {
                ident,
                req,
                consumer,
                reply,
            } => {
                let _ = reply.send(self.read_as(ident, req, consumer).await).await;
            }
            CoreMsg::Fanout { op, reply } => {
                let _ = reply.send(self.fanout_op(op).await).await;
            }
            CoreMsg::Auth { op, reply } => {
                let _ = reply.send(self.auth_op(op).await).await;
            }
            CoreMsg::AuthChanged { version, reply } => {
                self.auth_version.set(self.auth_version.get().max(version));
                let _ = reply.send(Ok(())).await;
            }
            CoreMsg::Claim {
                ident,
                consumer_id,
                reply,
            } => {
                let _ = reply.send(self.claim(ident, consumer_id)).await;
            }
            CoreMsg::DropConsumer { consumer_id, reply } => {
                self.drop_consumer(consumer_id);
                let _ = reply.send(Ok(())).await;
            }
            CoreMsg::Position { ident, pos, reply } => {
                let _ = reply.send(self.position(ident, pos).await).await;
            }
            CoreMsg::WaitData {
                ident,
                from_seq,
                wait_ms,
                cancel,
                reply,
            } => {
                let waited = self
                    .wait_for_data(ident, from_seq, wait_ms, Some(&cancel))
                    .await;
                let _ = reply.send(waited).await;
            }
            CoreMsg::MasterKey { reply } => {
                let _ = reply
                    .send(self.current_master_key().ok_or_else(no_keyring))
                    .await;
            }
            CoreMsg::NetStats { reply } => {
                let _ = reply.send(Ok(self.net.stats())).await;
            }
            CoreMsg::Metrics { reply } => {
                let _ = reply.send(Ok(self.metrics_snapshot())).await;
            }
            CoreMsg::Stats { ident, reply } => {
                let _ = reply.send(self.shard_stats(ident)).await;
            }
            CoreMsg::RetentionNow { reply } => {
                let n = self.apply_retention();
                let _ = reply.send(Ok(n)).await;
            }
            CoreMsg::CheckpointNow { reply } => {
                let _ = reply.send(self.checkpoint_now().await).await;
            }
            CoreMsg::Control { op, reply } => {
                let what = match &op {
                    ControlOp::CreateStream { name, opts, .. } => Some(format!(
                        "create stream {name} with {} shards{}",
                        opts.shard_count,
                        if opts.encryption { ", encrypted" } else { "" }
                    )),
                    ControlOp::DeleteStream { name } => Some(format!("delete stream {name}")),
                    ControlOp::SetRetention { name, hours } => {
                        Some(format!("set the retention of stream {name} to {hours} h"))
                    }
                    ControlOp::SplitShard { name, shard_id, at } => Some(format!(
                        "split shard {shard_id} of stream {name} at hash key {at}"
                    )),
                    ControlOp::MergeShards {
                        name,
                        shard_id,
                        adjacent,
                    } => Some(format!(
                        "merge shards {shard_id} and {adjacent} of stream {name}"
                    )),
                    ControlOp::UpdateShardCount { name, target } => {
                        Some(format!("scale stream {name} to {target} open shards"))
                    }
                    ControlOp::SetMode { name, mode, .. } => {
                        Some(format!("set the mode of stream {name} to {}", mode.name()))
                    }
                    ControlOp::SetShardLevelMetrics { name, on } => Some(format!(
                        "turn shard-level metrics of stream {name} {}",
                        if *on { "on" } else { "off" }
                    )),
                    ControlOp::StartEncryption { name } => {
                        Some(format!("start encryption of stream {name}"))
                    }
                    ControlOp::StopEncryption { name } => {
                        Some(format!("stop encryption of stream {name}"))
                    }
                    ControlOp::RotateKeys => Some("rotate the master key".to_owned()),
                    ControlOp::ExpireClosedShards
                    | ControlOp::OnDemandTick
                    | ControlOp::Snapshot => None,
                };
                let result = self.control(op).await;
                if let Some(what) = what {
                    match &result {
                        Ok(_) => tracing::info!("{what}: done"),
                        Err(e) => tracing::info!(error = %e, "{what}: refused"),
                    }
                }
                let _ = reply.send(result).await;
            }
            CoreMsg::RouteUpdate {
                name,
                entry,
                status,
                reply,
            } => {
                {
                    let mut statuses = self.statuses.borrow_mut();
                    if entry.is_some() && status != StreamStatus::Active {
                        statuses.insert(name.clone(), status);
                    } else {
                        statuses.remove(&name);
                    }
                    let mut routes = self.routes.borrow_mut();
                    match entry {
                        Some(e) => {
                            self.metrics
                                .set_shard_level(e.stream_id, e.shard_level_metrics);
                            routes.insert(name, Rc::new(e))
                        }
                        None => {
                            self.metrics.forget(&name);
                            routes.remove(&name)
                        }
                    };
                }
                let _ = reply.send(Ok(())).await;
            }
            CoreMsg::Listen { public, own, reply } => {
                let _ = reply
                    .send(crate::server::listen(self.clone(), public, own))
                    .await;
            }
            CoreMsg::SetTopology {
                addrs,
                metrics,
                reply,
            } => {
                *self.net.topology.borrow_mut() = addrs;
                *self.net.metrics_address.borrow_mut() = metrics;
                let _ = reply.send(Ok(())).await;
            }
            CoreMsg::Shutdown { reply } => {
                let _ = reply.send(Ok(())).await;
            }
        }
    }

    fn slot(&self, ident: ShardIdent) -> Result<Rc<ShardSlot<S>>, EngineError> {
        if let Some(slot) = self.shards.borrow().get(&ident) {
            return Ok(slot.clone());
        }
        if let Some(why) = self.damaged.borrow().get(&ident) {
            return Err(EngineError::Corrupt(why.to_string()));
        }
        Err(EngineError::UnknownShard {
            stream: format!("#{}", ident.stream_id),
            shard: ident.shard_id,
        })
    }

    /// This core's counters, network accounting, store statistics and disk per stream.
    fn metrics_snapshot(&self) -> crate::metrics::MetricsSnapshot {
        let mut m = self.metrics.snapshot(self.clock.now_ms());
        let net = self.net.stats();
        m.connections = net.connections as u64;
        m.request_bytes = net.request_bytes as u64;
        m.unsent_bytes = net.unsent_bytes as u64;
        m.parked_reads = net.parked_reads as u64;
        m.cores = 1;
        for store in self.stores.borrow().values() {
            let s = store.stats();
            m.rounds += s.rounds;
            m.round_syncs += s.round_syncs;
            m.journal_bytes += s.journal_bytes;
            m.direct_bytes += s.direct_bytes;
            m.sync_us += s.sync_us;
            m.checkpoints += s.checkpoints;
            for why in crate::store::WaitReason::ALL {
                *m.append_waits.entry(why.name()).or_default() += s.waits[why as usize];
            }
            m.staged_bytes += store.pending_bytes() as u64;
            m.store_memory_bytes += store.memory_bytes() as u64;
            for (b, n) in m.flush_latency.buckets.iter_mut().zip(s.sync_buckets) {
                *b += n;
            }
            m.flush_latency.count += s.sync_buckets.iter().sum::<u64>();
            m.flush_latency.sum_ms += s.sync_us as f64 / 1000.0;
        }
        let names: HashMap<u64, String> = self
            .routes
            .borrow()
            .values()
            .map(|e| (e.stream_id, e.name.clone()))
            .collect();
        for (ident, slot) in self.shards.borrow().iter() {
            let (Some(name), Ok(info)) =
                (names.get(&ident.stream_id), slot.store.shard_info(*ident))
            else {
                continue;
            };
            *m.disk_bytes.entry(name.clone()).or_default() += info.disk_bytes;
        }
        m.retention_extents = self.retention_deleted.get().0;
        m.retention_records = self.retention_deleted.get().1;
        m.recovery_ms = self.recovery_ms.get();
        m.per_core.insert(
            self.index as u64,
            crate::metrics::CoreLoad {
                requests: m.requests.values().sum(),
                rounds: m.rounds,
                connections: m.connections,
                queue_depth: self.peers[self.index].len() as u64,
                round_rate_cap: u64::from(self.round_rate.get()),
                stalls: self.stalls.get(),
            },
        );
        m
    }

    pub(crate) fn shard_stats(&self, ident: ShardIdent) -> Result<ShardStats, EngineError> {
        if let Some(why) = self.damaged.borrow().get(&ident) {
            return Ok(ShardStats {
                first_seq: 0,
                next_seq: 0,
                latest_ts_ms: 0,
                segments: 0,
                bytes: 0,
                disk_bytes: 0,
                poisoned: false,
                damaged: Some(why.to_string()),
            });
        }
        let slot = self.slot(ident)?;
        let info = slot.store.shard_info(ident)?;
        Ok(ShardStats {
            first_seq: info.first_seq,
            next_seq: info.next_seq,
            latest_ts_ms: info.latest_ts_ms,
            segments: info.extents,
            bytes: info.bytes,
            disk_bytes: info.disk_bytes,
            poisoned: slot.store.is_poisoned().is_some(),
            damaged: None,
        })
    }

    /// The store with index `store`, opening (creating) it if this core does not serve it
    /// yet (a new stream placed on a store that does not exist yet).
    async fn store(&self, store: u32) -> Result<Rc<Store<S>>, EngineError> {
        if let Some(s) = self.stores.borrow().get(&store) {
            return Ok(s.clone());
        }
        // Opening a store that failed at start for a new shard would treat the data of its
        // damaged shards as free space.
        if let Some(why) = self.damaged_stores.borrow().get(&store) {
            return Err(EngineError::Corrupt(format!(
                "a new shard cannot be placed there: {why}"
            )));
        }
        let s = Rc::new(
            Store::open(
                self.storage.clone(),
                self.cfg.store_config(store),
                self.clock.clone(),
                &[],
            )
            .await?,
        );
        let existing = self.stores.borrow().get(&store).cloned();
        if let Some(e) = existing {
            return Ok(e);
        }
        s.set_round_rate(self.round_rate.get());
        self.stores.borrow_mut().insert(store, s.clone());
        Ok(s)
    }

    fn register_shard(&self, spec: ShardSpec) -> Result<(), EngineError> {
        let store = self
            .stores
            .borrow()
            .get(&spec.store)
            .cloned()
            .ok_or_else(|| EngineError::Startup(format!("store {} is not open", spec.store)))?;
        store.add_shard(spec.ident);
        store.set_keys(spec.ident, spec.keys.clone());
        let (write, read, read_calls) = limiters(&spec, self.clock.now_ms());
        let slot = ShardSlot {
            spec: RefCell::new(spec.clone()),
            store,
            write: RefCell::new(write),
            read: RefCell::new(read),
            read_calls: RefCell::new(read_calls),
            subscribers: RefCell::new(HashMap::new()),
            sealed: Cell::new(spec.closed),
            appending: Cell::new(0),
            appends_done: crate::notify::Notify::new(),
            rate: Cell::new(Default::default()),
            records_rate: Cell::new(Default::default()),
            throttled: Cell::new(0),
        };
        self.shards.borrow_mut().insert(spec.ident, Rc::new(slot));
        Ok(())
    }

    async fn open_shard(&self, spec: ShardSpec) -> Result<(), EngineError> {
        if self.shards.borrow().contains_key(&spec.ident) {
            return Ok(());
        }
        let store = self.store(spec.store).await?;
        // The store's first files, if this is its first shard: made before the shard is
        // registered, so the background (idle while a store has no shards) cannot race them.
        store.initial_space().await;
        self.register_shard(spec)
    }

    fn drop_shard(&self, ident: ShardIdent) {
        self.damaged.borrow_mut().remove(&ident);
        let slot = self.shards.borrow_mut().remove(&ident);
        if let Some(slot) = slot {
            slot.store.drop_shard(ident);
        }
    }

    /// Checks, limits and appends one producer batch to a shard of this core. The batch is
    /// borrowed (from the connection's frame, or a forwarded message); the store copies it
    /// once into the shard's buffer. Only a throttled batch is copied here, to cut it down.
    pub(crate) async fn append(
        &self,
        ident: ShardIdent,
        batch: &[u8],
    ) -> Result<PutOutcome, EngineError> {
        let p = self.prepare_append(ident, batch, self.clock.now_ms())?;
        let ack = p
            .slot
            .store
            .append(ident, p.batch(batch), p.accepted)
            .await?;
        Ok(p.outcome(ident, ack))
    }

    /// `append` for several batches at once (a put spread over many shards): each is
    /// checked and limited as `append` does, then every store stages its batches and waits
    /// once for them all. One result per batch, in order.
    pub(crate) async fn append_many(
        &self,
        items: &[(ShardIdent, &[u8])],
    ) -> Vec<Result<PutOutcome, EngineError>> {
        let mut results: Vec<Option<Result<PutOutcome, EngineError>>> =
            (0..items.len()).map(|_| None).collect();
        let mut prepared = Vec::with_capacity(items.len());
        // One clock reading for the limits of every batch of the put.
        let now = self.clock.now_ms();
        for (i, (ident, batch)) in items.iter().enumerate() {
            // The shard's slot and its first keys' hash cache sets a few batches ahead:
            // their cache misses overlap this one's (`many-shards`).
            if let Some((ahead, batch)) = items.get(i + 8) {
                if let Some(slot) = self.shards.borrow().get(ahead) {
                    // (From the reference counts, which precede the value.)
                    crate::shard_table::prefetch_lines(
                        Rc::as_ptr(slot).cast::<u8>().wrapping_sub(16),
                        16 + std::mem::size_of::<ShardSlot<S>>(),
                    );
                }
                if let Ok(header) = BatchHeader::decode(batch) {
                    let hashes = self.key_hashes.borrow();
                    for r in RecordIter::new(batch, header.record_count)
                        .take(2)
                        .flatten()
                    {
                        crate::shard_table::prefetch_lines(hashes.set_address(r.key), 128);
                    }
                }
            }
            match self.prepare_append(*ident, batch, now) {
                Ok(p) => prepared.push((i, p)),
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        // Per store (a core may serve several), in the request's order.
        let mut stores: Vec<Rc<Store<S>>> = Vec::new();
        for (_, p) in &prepared {
            if !stores.iter().any(|s| Rc::ptr_eq(s, &p.slot.store)) {
                stores.push(p.slot.store.clone());
            }
        }
        let runs = stores.iter().map(|store| {
            let mine: Vec<&(usize, Prepared<S>)> = prepared
                .iter()
                .filter(|(_, p)| Rc::ptr_eq(&p.slot.store, store))
                .collect();
            async move {
                let input: Vec<(ShardKey, &[u8], u32)> = mine
                    .iter()
                    .map(|(i, p)| (items[*i].0, p.batch(items[*i].1), p.accepted))
                    .collect();
                let acks = store.append_many(&input).await;
                mine.into_iter()
                    .zip(acks)
                    .map(|((i, p), ack)| {
                        (
                            *i,
                            ack.map(|a| p.outcome(items[*i].0, a)).map_err(Into::into),
                        )
                    })
                    .collect::<Vec<_>>()
            }
        });
        for (i, r) in crate::store::join_all(runs).await.into_iter().flatten() {
            results[i] = Some(r);
        }
        results
            .into_iter()
            .map(|r| r.expect("every batch has a result"))
            .collect()
    }

    /// The synchronous part of an append: the shard, the batch's checks, its limits.
    fn prepare_append(
        &self,
        ident: ShardIdent,
        batch: &[u8],
        now: i64,
    ) -> Result<Prepared<S>, EngineError> {
        if self.stopping.get() {
            return Err(EngineError::ShuttingDown);
        }
        let slot = self.slot(ident)?;
        if let Some(map_version) = slot.sealed.get() {
            return Err(EngineError::ShardClosed {
                shard: ident.shard_id,
                map_version,
            });
        }
        let (rules, has_limits) = {
            let spec = slot.spec.borrow();
            let rules = RecordRules {
                max_record_data_bytes: spec.max_record_data_bytes as usize,
                hash_range: self.cfg.verify_hash_keys.then_some(spec.hash_range),
            };
            (rules, spec.limits != Limits::Off)
        };
        let summary = check_producer_batch_with(
            batch,
            &rules,
            &mut PrefetchingHasher(&mut self.key_hashes.borrow_mut()),
        )?;
        let mut accepted = summary.record_count;
        let mut bytes = summary.payload_bytes;
        let mut retry_after_ms = None;
        if has_limits {
            if let Some(limiter) = slot.write.borrow_mut().as_mut() {
                let header = BatchHeader::decode(batch)?;
                let sizes = RecordIter::new(batch, header.record_count)
                    .map(|r| r.map_or(0, |r| (r.key.len() + r.data.len()) as u64));
                let admission = limiter.admit(sizes, now);
                accepted = admission.records;
                bytes = admission.bytes;
                retry_after_ms = admission.retry_after_ms;
                let refused = u64::from(summary.record_count - accepted);
                slot.throttled.set(slot.throttled.get() + refused);
            }
            if accepted == 0 {
                return Err(EngineError::Throttled {
                    retry_after_ms: retry_after_ms.unwrap_or(1),
                });
            }
        }
        let cut = if accepted < summary.record_count {
            let mut cut = batch.to_vec();
            let len = batch::truncate_records(&mut cut, accepted)?;
            cut.truncate(len);
            Some(cut)
        } else {
            None
        };
        let mut rate = slot.rate.get();
        rate.add(cut.as_ref().map_or(batch.len(), Vec::len) as u64, now);
        slot.rate.set(rate);
        let mut records = slot.records_rate.get();
        records.add(u64::from(accepted), now);
        slot.records_rate.set(records);
        Ok(Prepared {
            _appending: Appending::new(&slot),
            slot,
            cut,
            accepted,
            record_count: summary.record_count,
            bytes,
            retry_after_ms,
        })
    }

    /// A long-poll: waits until the shard has a durable record at `from_seq` or later,
    /// `wait_ms` passes, or the core stops. Past `max_parked_reads_per_core` waiting at once,
    /// it returns at once (the read answers empty and the client asks again).
    ///
    /// A long-poll asked for by another core polls `cancel` at least once a second, so one
    /// whose client hung up leaves within a second (a local one is simply dropped).
    pub(crate) async fn wait_for_data(
        &self,
        ident: ShardIdent,
        from_seq: u64,
        wait_ms: u32,
        cancel: Option<&std::sync::atomic::AtomicBool>,
    ) -> Result<(), EngineError> {
        let slot = self.slot(ident)?;
        let store = &slot.store;
        let parked = &self.net.parked_reads;
        let may_park = parked.get() < self.cfg.max_parked_reads_per_core;
        // A closed shard gets no more records: its readers are not kept waiting.
        let closed = slot.sealed.get().is_some();
        if !may_park || wait_ms == 0 || closed || from_seq < store.durable_seq(ident)? {
            return Ok(());
        }
        parked.set(parked.get() + 1);
        let _unpark = crate::notify::OnDrop::new(|| parked.set(parked.get() - 1));
        let deadline = std::time::Instant::now() + Duration::from_millis(u64::from(wait_ms));
        let changed = store.changed(ident)?;
        let cancelled = || cancel.is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed));
        while from_seq >= store.durable_seq(ident)?
            && !self.stopping.get()
            && !cancelled()
            && slot.sealed.get().is_none()
        {
            let now = std::time::Instant::now();
            if now >= deadline {
                break;
            }
            let nap = if cancel.is_some() {
                (deadline - now).min(Duration::from_secs(1))
            } else {
                deadline - now
            };
            let woken = async {
                changed.wait().await;
                true
            };
            let timeout = async {
                glommio::timer::sleep(nap).await;
                false
            };
            if !futures_lite::future::or(woken, timeout).await && nap == deadline - now {
                break;
            }
            if !store.has_shard(ident) {
                return Err(EngineError::UnknownShard {
                    stream: format!("#{}", ident.stream_id),
                    shard: ident.shard_id,
                });
            }
        }
        Ok(())
    }

    /// A read, after a long-poll for data when `req.wait_ms` asks for one.
    pub(crate) async fn read(
        &self,
        ident: ShardIdent,
        req: ReadRequest,
    ) -> Result<ReadOutput, EngineError> {
        self.read_as(ident, req, None).await
    }

    /// A read charged to the shard's polling allowance (`consumer: None`: 2 MiB/s and, with
    /// Kinesis limits, 5 calls/s shared by every polling reader), or to a registered
    /// consumer's own (`Some((consumer_id, generation))`: a subscription, which must still
    /// hold the consumer's newest claim on the shard).
    pub(crate) async fn read_as(
        &self,
        ident: ShardIdent,
        req: ReadRequest,
        consumer: Option<(u64, u64)>,
    ) -> Result<ReadOutput, EngineError> {
        self.wait_for_data(ident, req.from_seq, req.wait_ms, None)
            .await?;
        let slot = self.slot(ident)?;
        let store = &slot.store;
        let now = self.clock.now_ms();
        match consumer {
            None => {
                if let Some(bucket) = slot.read.borrow_mut().as_mut() {
                    if bucket.available(now) == 0 {
                        return Err(EngineError::ReadThrottled {
                            retry_after_ms: bucket.wait_ms(1),
                        });
                    }
                }
                if let Some(calls) = slot.read_calls.borrow_mut().as_mut() {
                    if calls.available(now) == 0 {
                        return Err(EngineError::ReadThrottled {
                            retry_after_ms: calls.wait_ms(1),
                        });
                    }
                    calls.take(1);
                }
            }
            Some((id, generation)) => {
                let mut subs = slot.subscribers.borrow_mut();
                let sub = subs
                    .get_mut(&id)
                    .ok_or_else(|| EngineError::UnknownConsumer {
                        stream: format!("#{}", ident.stream_id),
                        consumer: format!("#{id} (deregistered)"),
                    })?;
                if sub.generation != generation {
                    return Err(EngineError::SubscriptionReplaced);
                }
                if let Some(bucket) = sub.bucket.as_mut() {
                    if bucket.available(now) == 0 {
                        return Err(EngineError::ReadThrottled {
                            retry_after_ms: bucket.wait_ms(1),
                        });
                    }
                }
            }
        }
        let out = store
            .read(ident, req.from_seq, req.max_records, req.max_bytes)
            .await?;
        // Charged as Kinesis does, the records' keys and data delivered, not the whole
        // stored batches sent around them (a 1-record read out of a 1 MB batch was charged
        // 1 MB, and readers asking for few records were throttled far below the limit);
        // but at least a quarter of the bytes read and sent, so that readers asking for a
        // record at a time inside large batches (calls are not limited under custom limits)
        // cannot make the shard read and send more than 4x its limit.
        let taken = out
            .record_bytes
            .max(out.bytes.len() as u64 / READ_CHARGE_SHARE);
        match consumer {
            None => {
                if let Some(bucket) = slot.read.borrow_mut().as_mut() {
                    bucket.take(taken);
                }
            }
            Some((id, _)) => {
                if let Some(bucket) = slot
                    .subscribers
                    .borrow_mut()
                    .get_mut(&id)
                    .and_then(|s| s.bucket.as_mut())
                {
                    bucket.take(taken);
                }
            }
        }
        Ok(out)
    }

    pub(crate) async fn position(
        &self,
        ident: ShardIdent,
        pos: IteratorPosition,
    ) -> Result<u64, EngineError> {
        let slot = self.slot(ident)?;
        let store = &slot.store;
        let info = store.shard_info(ident)?;
        let durable = info.next_seq;
        let horizon = info.first_seq;
        let seq = match pos {
            IteratorPosition::TrimHorizon => horizon,
            IteratorPosition::Latest => durable,
            // At the next sequence number: the next record written (as LATEST), where a
            // reader that has read everything, or a group's checkpoint, stands.
            IteratorPosition::AtSequenceNumber { seq: s } if s == durable => durable,
            IteratorPosition::AtSequenceNumber { seq: s }
            | IteratorPosition::AfterSequenceNumber { seq: s }
                if s >= durable =>
            {
                return Err(EngineError::InvalidArgument(format!(
                    "sequence number {s} is not in the shard: not written yet (the next is {durable})"
                )))
            }
            IteratorPosition::AtSequenceNumber { seq: s } => s.max(horizon),
            IteratorPosition::AfterSequenceNumber { seq: s } => (s + 1).max(horizon),
            // As Kinesis: a time after now is refused (positioned at the tip, such a reader
            // was handed the records that arrived before its time). A second's grace for
            // clocks a little ahead of the server's.
            IteratorPosition::AtTimestamp { ts_ms: ts }
                if ts > self.clock.now_ms().saturating_add(FUTURE_TIMESTAMP_GRACE_MS) =>
            {
                return Err(EngineError::InvalidArgument(format!(
                    "timestamp {} is in the future (the server's time is {}): records arriving from now on are read from LATEST",
                    crate::clock::rfc3339_ms(ts),
                    crate::clock::rfc3339_ms(self.clock.now_ms())
                )))
            }
            IteratorPosition::AtTimestamp { ts_ms: ts } => {
                store.seq_at_timestamp(ident, ts).await?
            }
        };
        Ok(seq)
    }

    pub(crate) fn apply_retention(&self) -> usize {
        let slots: Vec<_> = self.shards.borrow().values().cloned().collect();
        let now = self.clock.now_ms();
        let mut removed = 0;
        for slot in slots {
            let (ident, hours) = {
                let spec = slot.spec.borrow();
                (spec.ident, spec.retention_hours)
            };
            let cutoff = now - i64::from(hours) * 3_600_000;
            let before = slot.store.trim_horizon(ident).unwrap_or(0);
            let extents = slot.store.apply_retention(ident, cutoff);
            // Records past the window leave reads by whole extents or, in the extent last
            // appended to, by the horizon alone: both count.
            let after = slot.store.trim_horizon(ident).unwrap_or(before);
            if extents > 0 || after > before {
                let (e, r) = self.retention_deleted.get();
                self.retention_deleted
                    .set((e + extents as u64, r + after.saturating_sub(before)));
            }
            removed += extents;
        }
        removed
    }

    pub(crate) async fn checkpoint_now(&self) -> Result<(), EngineError> {
        let stores: Vec<Rc<Store<S>>> = self.stores.borrow().values().cloned().collect();
        for s in stores {
            s.flush().await?;
            while !s.checkpoint().await? {
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
        }
        Ok(())
    }

    /// Sends each shard's spec to the core that serves its store and waits for every answer.
    async fn tell_owners(
        &self,
        entry: &StreamEntry,
        make: impl Fn(ShardSpecMsg, Reply<()>) -> CoreMsg,
    ) -> Result<(), EngineError> {
        let keys = self.stream_keys(entry)?;
        for spec in ShardSpecMsg::from_catalog(entry, keys) {
            let owner = spec.store as usize % self.peers.len();
            call(&self.peers[owner], |reply| make(spec, reply)).await?;
        }
        Ok(())
    }

    /// Tells every core (this one included) about a stream's new routing entry and waits
    /// until all of them applied it.
    async fn broadcast_route(
        &self,
        name: &str,
        entry: Option<StreamEntry>,
        status: StreamStatus,
    ) -> Result<(), EngineError> {
        for peer in &self.peers {
            let entry = entry.clone();
            call(peer, |reply| CoreMsg::RouteUpdate {
                name: name.to_owned(),
                entry,
                status,
                reply,
            })
            .await?;
        }
        if let Some(published) = self.published.borrow().as_ref() {
            let mut routes = published.write().expect("routes lock");
            match entry {
                Some(e) => routes.insert(name.to_owned(), std::sync::Arc::new(e)),
                None => routes.remove(name),
            };
        }
        Ok(())
    }

    /// Opens a just-created stream's shards on their cores and marks it ACTIVE; if one
    /// cannot be opened (its store is damaged), the stream is taken back out, as if never
    /// created. A shutdown half-way leaves it in the catalog: the restart opens the rest.
    async fn open_created(&self, entry: StreamEntry) -> Result<(), EngineError> {
        let catalog = self.catalog.as_ref().expect("control ops go to core 0");
        let cores = self.peers.len() as u32;
        let name = entry.name.clone();
        let opened = self
            .tell_owners(&entry, |spec, reply| CoreMsg::OpenShard { spec, reply })
            .await;
        match opened {
            Ok(()) => {}
            Err(EngineError::ShuttingDown) => return Err(EngineError::ShuttingDown),
            Err(e) => {
                tracing::error!(stream = %name, error = %e, "a new stream's shard could not be opened; the stream is removed");
                let _ = catalog.borrow_mut().remove_stream(&name);
                if self.save_catalog().await.is_ok() {
                    for sh in &entry.shards {
                        let ident = ShardIdent {
                            stream_id: entry.stream_id,
                            shard_id: sh.shard_id,
                        };
                        let peer = &self.peers[(sh.core % cores) as usize];
                        let _ = call(peer, |reply| CoreMsg::DropShard { ident, reply }).await;
                    }
                }
                let _ = self
                    .broadcast_route(&name, None, StreamStatus::Deleting)
                    .await;
                return Err(e);
            }
        }
        self.broadcast_route(&name, Some(entry), StreamStatus::Active)
            .await
    }

    /// The node's quotas (`max_streams`, `max_shards_per_stream`, `max_shards`), checked
    /// before a stream is added: past one, `LimitExceeded` naming it.
    fn check_quotas(
        &self,
        catalog: &Catalog,
        name: &str,
        opts: &crate::catalog::StreamOptions,
    ) -> Result<(), EngineError> {
        let cfg = &self.cfg;
        let streams = catalog.data.streams.len();
        if catalog.stream(name).is_none() && streams >= cfg.max_streams as usize {
            return Err(EngineError::LimitExceeded(format!(
                "this node has {streams} streams, its quota (max_streams); delete one or raise the quota"
            )));
        }
        if opts.shard_count > cfg.max_shards_per_stream {
            return Err(EngineError::LimitExceeded(format!(
                "{} shards is over the quota of {} per stream (max_shards_per_stream)",
                opts.shard_count, cfg.max_shards_per_stream
            )));
        }
        let shards: u64 = catalog
            .data
            .streams
            .iter()
            .map(|s| s.open_shards().len() as u64)
            .sum();
        if shards + u64::from(opts.shard_count) > cfg.max_shards {
            return Err(EngineError::LimitExceeded(format!(
                "this node has {shards} open shards; {} more would pass its quota of {} (max_shards)",
                opts.shard_count, cfg.max_shards
            )));
        }
        Ok(())
    }

    /// Control plane (core 0 only): mutate the catalog, persist it (off the executor
    /// thread), then tell the owning cores. Returns the affected streams (or all of them for
    /// `Snapshot`).
    async fn control(self: &Rc<Self>, op: ControlOp) -> Result<Vec<StreamEntry>, EngineError> {
        let catalog = self.catalog.as_ref().expect("control ops go to core 0");
        let cores = self.peers.len() as u32;
        if let ControlOp::Snapshot = op {
            return Ok(catalog.borrow().data.streams.clone());
        }
        // One change at a time, start to finish: a delete never runs while a create is still
        // opening shards, and catalog saves land in the order the changes were made.
        let serial = crate::notify::TaskLock::lock_owned(&self.control_lock).await;
        match op {
            ControlOp::Snapshot => unreachable!("answered above"),
            ControlOp::SplitShard { name, shard_id, at } => {
                self.reshard(&name, |s, now| {
                    provisioned_only(s, "SplitShard")?;
                    s.plan_split(shard_id, at, now)
                })
                .await
            }
            ControlOp::MergeShards {
                name,
                shard_id,
                adjacent,
            } => {
                self.reshard(&name, |s, now| {
                    provisioned_only(s, "MergeShards")?;
                    s.plan_merge(shard_id, adjacent, now)
                })
                .await
            }
            ControlOp::UpdateShardCount { name, target } => {
                self.reshard(&name, |s, now| {
                    provisioned_only(s, "UpdateShardCount")?;
                    s.plan_scale(target, now)
                })
                .await
            }
            ControlOp::ExpireClosedShards => self.expire_closed_shards().await,
            ControlOp::SetMode {
                name,
                mode,
                max_write_mib_per_s,
            } => self.set_mode(&name, mode, max_write_mib_per_s).await,
            ControlOp::OnDemandTick => self.on_demand_tick().await,
            ControlOp::SetShardLevelMetrics { name, on } => {
                let old = {
                    let mut cat = catalog.borrow_mut();
                    let s = cat
                        .stream_mut(&name)
                        .ok_or_else(|| EngineError::UnknownStream(name.clone()))?;
                    std::mem::replace(&mut s.shard_level_metrics, on)
                };
                if let Err(e) = self.save_catalog().await {
                    if let Some(s) = catalog.borrow_mut().stream_mut(&name) {
                        s.shard_level_metrics = old;
                    }
                    return Err(e);
                }
                let entry = catalog
                    .borrow()
                    .stream(&name)
                    .cloned()
                    .expect("just changed");
                self.broadcast_route(&name, Some(entry.clone()), StreamStatus::Active)
                    .await?;
                Ok(vec![entry])
            }
            ControlOp::StartEncryption { name } => self.set_encryption(&name, true).await,
            ControlOp::StopEncryption { name } => self.set_encryption(&name, false).await,
            ControlOp::RotateKeys => self.rotate_keys().await,
            ControlOp::CreateStream {
                name,
                opts,
                answer_within,
            } => {
                self.check_quotas(&catalog.borrow(), &name, &opts)?;
                let now = self.clock.now_ms();
                let entry = {
                    let mut cat = catalog.borrow_mut();
                    let stream_id = cat.add_stream(&name, &opts, cores, now)?.stream_id;
                    if opts.encryption {
                        let enc = self
                            .keyring
                            .borrow()
                            .as_ref()
                            .ok_or_else(no_keyring)
                            .and_then(|k| k.with_new_epoch(stream_id, None, now));
                        match enc {
                            Ok(enc) => {
                                cat.stream_mut(&name).expect("just added").encryption = Some(enc)
                            }
                            Err(e) => {
                                let _ = cat.remove_stream(&name);
                                return Err(e);
                            }
                        }
                    }
                    cat.stream(&name).expect("just added").clone()
                };
                if let Err(e) = self.save_catalog().await {
                    let _ = catalog.borrow_mut().remove_stream(&name);
                    return Err(e);
                }
                // Described as CREATING (and refused for data) while its shards open.
                self.broadcast_route(&name, Some(entry.clone()), StreamStatus::Creating)
                    .await?;
                // The shards open in a task of their own that holds the control lock to the
                // end, so that the answer can go before a big stream is done.
                let core = self.clone();
                let created = entry.clone();
                let opening = glommio::spawn_local(async move {
                    let _serial = serial;
                    core.open_created(created).await
                })
                .detach();
                match answer_within {
                    None => opening.await.unwrap_or(Err(EngineError::ShuttingDown))?,
                    Some(bound) if bound.is_zero() => {}
                    Some(bound) => {
                        let done = async { Some(opening.await) };
                        let late = async {
                            glommio::timer::sleep(bound).await;
                            None
                        };
                        if let Some(r) = futures_lite::future::or(done, late).await {
                            r.unwrap_or(Err(EngineError::ShuttingDown))?;
                        }
                    }
                }
                Ok(vec![entry])
            }
            ControlOp::DeleteStream { name } => {
                let current = catalog
                    .borrow()
                    .stream(&name)
                    .cloned()
                    .ok_or_else(|| EngineError::UnknownStream(name.clone()))?;
                // Described as DELETING (and refused for data) from here on.
                self.broadcast_route(&name, Some(current.clone()), StreamStatus::Deleting)
                    .await?;
                let entry = catalog.borrow_mut().remove_stream(&name)?;
                if let Err(e) = self.save_catalog().await {
                    catalog.borrow_mut().data.streams.push(entry);
                    let _ = self
                        .broadcast_route(&name, Some(current), StreamStatus::Active)
                        .await;
                    return Err(e);
                }
                self.broadcast_route(&entry.name, None, StreamStatus::Deleting)
                    .await?;
                if let Some(k) = self.keyring.borrow_mut().as_mut() {
                    k.forget(entry.stream_id);
                }
                for sh in &entry.shards {
                    let ident = ShardIdent {
                        stream_id: entry.stream_id,
                        shard_id: sh.shard_id,
                    };
                    let peer = &self.peers[(sh.core % cores) as usize];
                    call(peer, |reply| CoreMsg::DropShard { ident, reply }).await?;
                }
                Ok(vec![entry])
            }
            ControlOp::SetRetention { name, hours } => {
                validate_retention(hours)?;
                let current = catalog
                    .borrow()
                    .stream(&name)
                    .cloned()
                    .ok_or_else(|| EngineError::UnknownStream(name.clone()))?;
                self.broadcast_route(&name, Some(current.clone()), StreamStatus::Updating)
                    .await?;
                let (entry, old) = {
                    let mut cat = catalog.borrow_mut();
                    let s = cat
                        .stream_mut(&name)
                        .ok_or_else(|| EngineError::UnknownStream(name.clone()))?;
                    let old = s.retention_hours;
                    s.retention_hours = hours;
                    (s.clone(), old)
                };
                if let Err(e) = self.save_catalog().await {
                    if let Some(s) = catalog
                        .borrow_mut()
                        .data
                        .streams
                        .iter_mut()
                        .find(|s| s.name == name)
                    {
                        s.retention_hours = old;
                    }
                    let _ = self
                        .broadcast_route(&name, Some(current), StreamStatus::Active)
                        .await;
                    return Err(e);
                }
                self.tell_owners(&entry, |spec, reply| CoreMsg::UpdateShard { spec, reply })
                    .await?;
                self.broadcast_route(&entry.name, Some(entry.clone()), StreamStatus::Active)
                    .await?;
                Ok(vec![entry])
            }
        }
    }

    /// Closes shards of this core to writes and waits for the appends under way; answers
    /// each one's end (one past its last sequence number).
    async fn seal(&self, idents: &[ShardIdent], map_version: u64) -> Result<Vec<u64>, EngineError> {
        let slots = idents
            .iter()
            .map(|i| self.slot(*i))
            .collect::<Result<Vec<_>, _>>()?;
        for (ident, slot) in idents.iter().zip(&slots) {
            slot.sealed.set(Some(map_version));
            // Long-polls at its tip stop waiting for records that will not come.
            if let Ok(changed) = slot.store.changed(*ident) {
                changed.notify_all();
            }
        }
        let mut ends = Vec::with_capacity(slots.len());
        for (ident, slot) in idents.iter().zip(&slots) {
            while slot.appending.get() > 0 {
                slot.appends_done.wait().await;
            }
            ends.push(slot.store.shard_info(*ident)?.next_seq);
        }
        Ok(ends)
    }

    /// Every core's shards' recent write rates and throttling.
    async fn loads(&self) -> Result<HashMap<ShardIdent, ShardLoad>, EngineError> {
        let mut loads = HashMap::new();
        for peer in &self.peers {
            loads.extend(call_read(peer, |reply| CoreMsg::Load { reply }).await?);
        }
        Ok(loads)
    }

    /// Switches a stream between provisioned and on-demand capacity; an on-demand stream
    /// has at least 4 open shards (Kinesis' 4 MiB/s and 4,000 records/s to start with).
    async fn set_mode(
        &self,
        name: &str,
        mode: crate::catalog::CapacityMode,
        max_write_mib_per_s: Option<u32>,
    ) -> Result<Vec<StreamEntry>, EngineError> {
        let catalog = self.catalog.as_ref().expect("core 0");
        if max_write_mib_per_s.is_some_and(|m| m < 4) {
            return Err(EngineError::InvalidArgument(
                "an on-demand stream's ceiling must be at least 4 MiB/s".into(),
            ));
        }
        let old = {
            let mut cat = catalog.borrow_mut();
            let s = cat
                .stream_mut(name)
                .ok_or_else(|| EngineError::UnknownStream(name.to_owned()))?;
            let old = (s.mode, s.max_write_mib_per_s);
            s.mode = mode;
            if let Some(m) = max_write_mib_per_s {
                s.max_write_mib_per_s = m;
            }
            old
        };
        if let Err(e) = self.save_catalog().await {
            if let Some(s) = catalog
                .borrow_mut()
                .data
                .streams
                .iter_mut()
                .find(|s| s.name == name)
            {
                (s.mode, s.max_write_mib_per_s) = old;
            }
            return Err(e);
        }
        self.scalers.borrow_mut().clear();
        let entry = catalog
            .borrow()
            .stream(name)
            .cloned()
            .expect("just changed");
        self.broadcast_route(name, Some(entry.clone()), StreamStatus::Active)
            .await?;
        if mode == crate::catalog::CapacityMode::OnDemand && entry.open_shards().len() < 4 {
            let target = 4;
            let changed = self
                .reshard(name, |s, now| s.plan_scale(target, now))
                .await?;
            self.note_scaling(
                name,
                format!(
                    "{} -> 4 open shards: on-demand starts at 4 MiB/s and 4,000 records/s",
                    entry.open_shards().len()
                ),
            )
            .await?;
            return Ok(changed);
        }
        Ok(vec![entry.clone(), entry])
    }

    /// Records an on-demand scaling decision in the catalog (describe shows the last one)
    /// and the log.
    async fn note_scaling(&self, name: &str, what: String) -> Result<(), EngineError> {
        tracing::info!(stream = %name, "on-demand scaling: {what}");
        let catalog = self.catalog.as_ref().expect("core 0");
        let now = self.clock.now_ms();
        let entry = {
            let mut cat = catalog.borrow_mut();
            let Some(s) = cat.stream_mut(name) else {
                return Ok(());
            };
            s.last_scaling = Some((now, what));
            s.clone()
        };
        self.save_catalog().await?;
        self.broadcast_route(name, Some(entry), StreamStatus::Active)
            .await
    }

    /// One look at every on-demand stream (core 0, under the control lock): scale out when
    /// its write rate has stayed above `on_demand_scale_out_percent` of its capacity for
    /// `on_demand_scale_out_after_ms`, or at once when it throttled, by splitting its
    /// hottest shards (at most doubling, and up to twice the peak write rate of the window,
    /// at most the stream's ceiling, by default `on_demand_max_write_mib_per_s`); scale in when the rate has stayed below
    /// `on_demand_scale_in_percent` for `on_demand_quiet_ms`, by merging its coldest
    /// neighbours (never below 4 shards).
    async fn on_demand_tick(&self) -> Result<Vec<StreamEntry>, EngineError> {
        let catalog = self.catalog.as_ref().expect("core 0");
        let streams: Vec<StreamEntry> = catalog
            .borrow()
            .data
            .streams
            .iter()
            .filter(|s| s.mode == crate::catalog::CapacityMode::OnDemand)
            .cloned()
            .collect();
        if streams.is_empty() {
            return Ok(Vec::new());
        }
        let loads = self.loads().await?;
        let cfg = &self.cfg;
        let now = self.clock.now_ms();
        let mut changed = Vec::new();
        for s in streams {
            // Without limits a shard's scale is Kinesis' 1 MiB/s, and records do not count.
            let (per_shard, per_shard_records) = s
                .limits
                .rates()
                .map_or((1 << 20, None), |(write_bytes, write_records, _)| {
                    (write_bytes, Some(write_records))
                });
            let per_shard = per_shard.max(1) as f64;
            let open = s.open_shards();
            // A shard's load in bytes a second, or as many bytes as its records a second are
            // of its record limit if that is more: with 100 B records the record limit is
            // met at a tenth of the byte limit (it scaled in to throttling at 62 % of it).
            let load_of = |id: u32| {
                let mut load = loads
                    .get(&ShardIdent {
                        stream_id: s.stream_id,
                        shard_id: id,
                    })
                    .copied()
                    .unwrap_or_default();
                if let Some(records) = per_shard_records {
                    load.bytes_per_s = load
                        .bytes_per_s
                        .max(load.records_per_s / records.max(1) as f64 * per_shard);
                }
                load
            };
            let rate: f64 = open.iter().map(|sh| load_of(sh.shard_id).bytes_per_s).sum();
            let throttled_total: u64 = open.iter().map(|sh| load_of(sh.shard_id).throttled).sum();
            let capacity = open.len() as f64 * per_shard;
            let mut state =
                self.scalers
                    .borrow()
                    .get(&s.stream_id)
                    .copied()
                    .unwrap_or(ScalerState {
                        throttled: throttled_total,
                        ..Default::default()
                    });
            // New shards start their counters at 0: a drop is not throttling.
            let throttled = throttled_total > state.throttled;
            state.throttled = throttled_total;
            let out_share = f64::from(cfg.on_demand_scale_out_percent) / 100.0;
            let in_share = f64::from(cfg.on_demand_scale_in_percent) / 100.0;
            // A shard whose own rate is above the share of its limit is hot even when the
            // stream as a whole is not (splits leave uneven ranges, and a bucket's burst
            // hides a small overload for a while).
            let hot: Vec<u32> = open
                .iter()
                .filter(|sh| load_of(sh.shard_id).bytes_per_s > out_share * per_shard)
                .map(|sh| sh.shard_id)
                .collect();
            state.above_since = (rate > out_share * capacity || !hot.is_empty())
                .then(|| state.above_since.unwrap_or(now));
            state.below_since =
                (rate < in_share * capacity).then(|| state.below_since.unwrap_or(now));
            // The peak of the window (a peak older than the window is forgotten).
            let window_ms = i64::from(cfg.on_demand_peak_window_days) * 86_400_000;
            let mut peak = s.peak_write_bytes_per_s as f64;
            let mut peak_at = s.peak_at_ms;
            if now - peak_at > window_ms {
                peak = 0.0;
                peak_at = now;
            }
            if rate > peak {
                peak = rate;
                peak_at = now;
            }
            let ceiling = match s.max_write_mib_per_s {
                0 => cfg.on_demand_max_write_mib_per_s,
                m => m,
            };
            let cap_shards = ((f64::from(ceiling) * (1 << 20) as f64 / per_shard).floor() as usize)
                .clamp(4, cfg.max_shards_per_stream as usize);
            let allowed = ((2.0 * peak / per_shard).ceil() as usize).clamp(4, cap_shards);
            let n = open.len();
            let sustained = state
                .above_since
                .is_some_and(|t| now - t >= cfg.on_demand_scale_out_after_ms as i64);
            // Shards to split, pairs to merge, and why.
            type Decision = (Vec<u32>, Vec<(u32, u32)>, String);
            let mut decision: Option<Decision> = None;
            if (throttled || sustained) && n < cap_shards {
                let stream_hot = throttled || rate > out_share * capacity;
                let target = if stream_hot {
                    (n + 1).max((2 * n).min(allowed))
                } else {
                    // Only some shards are hot: split those.
                    n + hot.len().max(1)
                }
                .max(n + hot.len())
                .min(cap_shards)
                .min(2 * n);
                let mut hottest: Vec<&&crate::catalog::ShardEntry> = open.iter().collect();
                hottest.sort_by(|a, b| {
                    load_of(b.shard_id)
                        .bytes_per_s
                        .total_cmp(&load_of(a.shard_id).bytes_per_s)
                        .then(a.shard_id.cmp(&b.shard_id))
                });
                let split: Vec<u32> = hottest
                    .iter()
                    .take(target - n)
                    .map(|sh| sh.shard_id)
                    .collect();
                let why = if throttled {
                    "writes were throttled".to_string()
                } else if !stream_hot {
                    format!(
                        "shards {hot:?} stayed above {}% of their write limit for {} s",
                        cfg.on_demand_scale_out_percent,
                        cfg.on_demand_scale_out_after_ms / 1000
                    )
                } else {
                    format!(
                        "the write rate stayed above {}% of capacity for {} s",
                        cfg.on_demand_scale_out_percent,
                        cfg.on_demand_scale_out_after_ms / 1000
                    )
                };
                decision = Some((
                    split,
                    Vec::new(),
                    format!(
                        "{n} -> {target} open shards: {why} (write rate {:.2} MiB/s, capacity {:.2} MiB/s, peak {:.2} MiB/s)",
                        rate / (1 << 20) as f64,
                        capacity / (1 << 20) as f64,
                        peak / (1 << 20) as f64
                    ),
                ));
            } else if !throttled
                && n > 4
                && state
                    .below_since
                    .is_some_and(|t| now - t >= cfg.on_demand_quiet_ms as i64)
            {
                let target = ((rate / (out_share * per_shard)).ceil() as usize).max(4);
                let mut pairs: Vec<(f64, u32, u32)> = open
                    .windows(2)
                    .map(|w| {
                        let r =
                            load_of(w[0].shard_id).bytes_per_s + load_of(w[1].shard_id).bytes_per_s;
                        (r, w[0].shard_id, w[1].shard_id)
                    })
                    .collect();
                pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
                let mut used: Vec<u32> = Vec::new();
                let mut merge = Vec::new();
                for (_, a, b) in pairs {
                    if n - merge.len() <= target {
                        break;
                    }
                    if !used.contains(&a) && !used.contains(&b) {
                        used.extend([a, b]);
                        merge.push((a, b));
                    }
                }
                if !merge.is_empty() {
                    let to = n - merge.len();
                    decision = Some((
                        Vec::new(),
                        merge,
                        format!(
                            "{n} -> {to} open shards: the write rate stayed below {}% of capacity for {} s (write rate {:.2} MiB/s, capacity {:.2} MiB/s)",
                            cfg.on_demand_scale_in_percent,
                            cfg.on_demand_quiet_ms / 1000,
                            rate / (1 << 20) as f64,
                            capacity / (1 << 20) as f64
                        ),
                    ));
                }
            }
            let peak_moved = (peak - s.peak_write_bytes_per_s as f64).abs()
                > 0.1 * (s.peak_write_bytes_per_s as f64).max(per_shard);
            if peak_moved || decision.is_some() {
                let mut cat = catalog.borrow_mut();
                if let Some(e) = cat
                    .data
                    .streams
                    .iter_mut()
                    .find(|e| e.stream_id == s.stream_id)
                {
                    e.peak_write_bytes_per_s = peak as u64;
                    e.peak_at_ms = peak_at;
                }
            }
            if let Some((split, merge, what)) = decision {
                let r = self
                    .reshard(&s.name, |e, now| e.plan_many(&split, &merge, now))
                    .await;
                match r {
                    Ok(mut entries) => {
                        self.note_scaling(&s.name, what).await?;
                        changed.extend(entries.pop());
                    }
                    Err(e) => {
                        tracing::warn!(stream = %s.name, error = %e, "on-demand scaling failed: {what}");
                    }
                }
                // Counters and timers start again on the new shards.
                self.scalers.borrow_mut().remove(&s.stream_id);
            } else {
                if peak_moved {
                    self.save_catalog().await?;
                }
                self.scalers.borrow_mut().insert(s.stream_id, state);
            }
        }
        Ok(changed)
    }

    /// Chooses a core for each new open shard of `plan`: the one with the least recent
    /// write rate and open shards (each as a share of the node's), counting what the new
    /// shard is expected to write (its share of the closing shards' rates). Closed
    /// pass-through shards go to their first parent's core.
    async fn place(
        &self,
        stream: &StreamEntry,
        plan: &mut crate::catalog::ReshardPlan,
    ) -> Result<(), EngineError> {
        let catalog = self.catalog.as_ref().expect("core 0");
        let cores = self.peers.len();
        let rates = self.loads().await?;
        let rate_of = |stream_id: u64, shard_id: u32| {
            rates
                .get(&ShardIdent {
                    stream_id,
                    shard_id,
                })
                .map_or(0.0, |l| l.bytes_per_s)
        };
        let mut load = vec![0.0f64; cores];
        let mut count = vec![0u64; cores];
        for s in &catalog.borrow().data.streams {
            for sh in s.shards.iter().filter(|sh| sh.state == ShardState::Open) {
                if s.stream_id == stream.stream_id && plan.close.contains(&sh.shard_id) {
                    continue;
                }
                let c = sh.core as usize % cores;
                load[c] += rate_of(s.stream_id, sh.shard_id);
                count[c] += 1;
            }
        }
        let size = |(a, b): (u128, u128)| (b - a) as f64 + 1.0;
        for i in 0..plan.new_shards.len() {
            let new = plan.new_shards[i].clone();
            if new.state == ShardState::Closed {
                let parent = new.parent.expect("a new shard has a parent");
                let core = stream
                    .shard(parent)
                    .map(|p| p.core)
                    .or_else(|| {
                        plan.new_shards[..i]
                            .iter()
                            .find(|s| s.shard_id == parent)
                            .map(|s| s.core)
                    })
                    .unwrap_or(0);
                plan.new_shards[i].core = core;
                continue;
            }
            let range = new.hash_range();
            let expected: f64 = plan
                .close
                .iter()
                .filter_map(|id| stream.shard(*id))
                .map(|p| {
                    let (a, b) = p.hash_range();
                    let overlap = (range.0.max(a), range.1.min(b));
                    if overlap.0 > overlap.1 {
                        0.0
                    } else {
                        rate_of(stream.stream_id, p.shard_id) * size(overlap) / size((a, b))
                    }
                })
                .sum();
            let total_load: f64 = load.iter().sum::<f64>() + expected;
            let total_count = count.iter().sum::<u64>() + 1;
            let score = |c: usize| {
                (load[c] + expected) / total_load.max(1.0)
                    + (count[c] + 1) as f64 / total_count as f64
            };
            let best = (0..cores)
                .min_by(|&a, &b| score(a).total_cmp(&score(b)).then(a.cmp(&b)))
                .expect("at least one core");
            load[best] += expected;
            count[best] += 1;
            plan.new_shards[i].core = best as u32;
        }
        Ok(())
    }

    /// A split, merge or scale of `name` (core 0, under the control lock): plan it, place
    /// the new shards, seal the closing ones on their cores (their ends are then known and
    /// nothing more is appended to them), record it all in one catalog save, open the new
    /// shards, publish the new routes. A crash before the save leaves the stream as it was
    /// (a seal lives in memory only); after it, the restart opens everything from the
    /// catalog. Nothing can be written to a new shard before the save, so nothing of a key
    /// is acknowledged in a child before its parent is closed.
    async fn reshard(
        &self,
        name: &str,
        plan_it: impl FnOnce(&StreamEntry, i64) -> Result<crate::catalog::ReshardPlan, EngineError>,
    ) -> Result<Vec<StreamEntry>, EngineError> {
        let catalog = self.catalog.as_ref().expect("core 0");
        let cores = self.peers.len() as u32;
        let before = catalog
            .borrow()
            .stream(name)
            .cloned()
            .ok_or_else(|| EngineError::UnknownStream(name.to_owned()))?;
        let now = self.clock.now_ms();
        let mut plan = plan_it(&before, now)?;
        if plan.is_empty() {
            return Ok(vec![before.clone(), before]);
        }
        let open_after = before.open_shards().len() - plan.close.len()
            + plan
                .new_shards
                .iter()
                .filter(|s| s.state == ShardState::Open)
                .count();
        if open_after as u64 > u64::from(self.cfg.max_shards_per_stream) {
            return Err(EngineError::LimitExceeded(format!(
                "{open_after} open shards is over the quota of {} per stream (max_shards_per_stream)",
                self.cfg.max_shards_per_stream
            )));
        }
        // The quota is of open shards (closed parents stay until their data expires: a node
        // that reshards often would otherwise be refused for shards that take nothing).
        let open: u64 = catalog
            .borrow()
            .data
            .streams
            .iter()
            .map(|s| s.open_shards().len() as u64)
            .sum();
        let open_now = before.open_shards().len() as u64;
        if open_after as u64 > open_now && open - open_now + open_after as u64 > self.cfg.max_shards
        {
            return Err(EngineError::LimitExceeded(format!(
                "this node has {open} open shards; {} more would pass its quota of {} (max_shards)",
                open_after as u64 - open_now,
                self.cfg.max_shards
            )));
        }
        self.place(&before, &mut plan).await?;
        self.broadcast_route(name, Some(before.clone()), StreamStatus::Updating)
            .await?;
        let version = before.map_version + 1;
        let mut by_core: BTreeMap<usize, Vec<ShardIdent>> = BTreeMap::new();
        for id in &plan.close {
            let sh = before.shard(*id).expect("planned from the entry");
            by_core
                .entry((sh.core % cores) as usize)
                .or_default()
                .push(ShardIdent {
                    stream_id: before.stream_id,
                    shard_id: *id,
                });
        }
        let mut ending = HashMap::new();
        let mut sealed: Vec<(usize, Vec<ShardIdent>)> = Vec::new();
        let mut failure = None;
        for (core, idents) in &by_core {
            let asked = idents.clone();
            match call(&self.peers[*core], |reply| CoreMsg::Seal {
                idents: asked,
                map_version: version,
                reply,
            })
            .await
            {
                Ok(ends) => {
                    for (ident, end) in idents.iter().zip(ends) {
                        ending.insert(ident.shard_id, end);
                    }
                    sealed.push((*core, idents.clone()));
                }
                Err(e) => {
                    // It may have sealed some of them before failing: take them all back.
                    sealed.push((*core, idents.clone()));
                    failure = Some(e);
                    break;
                }
            }
        }
        let after = match failure {
            Some(e) => Err(e),
            None => {
                let after = {
                    let mut cat = catalog.borrow_mut();
                    let s = cat
                        .stream_mut(name)
                        .expect("looked up above, under the control lock");
                    s.apply_reshard(&plan, &ending, now);
                    s.clone()
                };
                match self.save_catalog().await {
                    Ok(()) => Ok(after),
                    Err(e) => {
                        let mut cat = catalog.borrow_mut();
                        if let Some(s) = cat.stream_mut(name) {
                            *s = before.clone();
                        }
                        Err(e)
                    }
                }
            }
        };
        let after = match after {
            Ok(a) => a,
            Err(e) => {
                for (core, idents) in sealed {
                    let _ =
                        call(&self.peers[core], |reply| CoreMsg::Unseal { idents, reply }).await;
                }
                let _ = self
                    .broadcast_route(name, Some(before), StreamStatus::Active)
                    .await;
                return Err(e);
            }
        };
        let new_ids: Vec<u32> = plan.new_shards.iter().map(|s| s.shard_id).collect();
        let mut opened = Ok(());
        let keys = self.stream_keys(&after)?;
        for spec in ShardSpecMsg::from_catalog(&after, keys) {
            let owner = spec.store as usize % self.peers.len();
            let shard = spec.ident.shard_id;
            let r = if new_ids.contains(&shard) {
                call(&self.peers[owner], |reply| CoreMsg::OpenShard {
                    spec,
                    reply,
                })
                .await
            } else if plan.close.contains(&shard) {
                call(&self.peers[owner], |reply| CoreMsg::UpdateShard {
                    spec,
                    reply,
                })
                .await
            } else {
                Ok(())
            };
            if let Err(e) = r {
                tracing::error!(stream = %name, shard, error = %e, "a shard of a reshard could not be opened; the catalog has it, a restart opens it");
                opened = opened.and(Err(e));
            }
        }
        self.broadcast_route(name, Some(after.clone()), StreamStatus::Active)
            .await?;
        opened?;
        Ok(vec![before, after])
    }

    /// Removes closed shards that are empty and were closed over a retention window ago.
    async fn expire_closed_shards(&self) -> Result<Vec<StreamEntry>, EngineError> {
        let catalog = self.catalog.as_ref().expect("core 0");
        let cores = self.peers.len() as u32;
        let now = self.clock.now_ms();
        // Per stream: name, incarnation, and its closed shards past the window (id, core).
        type Candidates = Vec<(String, u64, Vec<(u32, u32)>)>;
        let candidates: Candidates = catalog
            .borrow()
            .data
            .streams
            .iter()
            .map(|s| {
                let window = i64::from(s.retention_hours) * 3_600_000;
                let old: Vec<(u32, u32)> = s
                    .shards
                    .iter()
                    .filter(|sh| sh.state == ShardState::Closed && sh.closed_ms + window <= now)
                    .map(|sh| (sh.shard_id, sh.core))
                    .collect();
                (s.name.clone(), s.stream_id, old)
            })
            .filter(|(_, _, old)| !old.is_empty())
            .collect();
        let mut changed = Vec::new();
        for (name, stream_id, old) in candidates {
            let mut gone = Vec::new();
            for (shard_id, core) in old {
                let ident = ShardIdent {
                    stream_id,
                    shard_id,
                };
                let peer = &self.peers[(core % cores) as usize];
                match call_read(peer, |reply| CoreMsg::Stats { ident, reply }).await {
                    Ok(st) if st.next_seq <= st.first_seq && st.damaged.is_none() => {
                        gone.push(ident)
                    }
                    _ => {}
                }
            }
            if gone.is_empty() {
                continue;
            }
            let (before, after) = {
                let mut cat = catalog.borrow_mut();
                let Some(s) = cat.stream_mut(&name) else {
                    continue;
                };
                let before = s.clone();
                s.shards.retain(|sh| {
                    !gone.contains(&ShardIdent {
                        stream_id,
                        shard_id: sh.shard_id,
                    })
                });
                (before, s.clone())
            };
            if let Err(e) = self.save_catalog().await {
                let mut cat = catalog.borrow_mut();
                if let Some(s) = cat.stream_mut(&name) {
                    *s = before;
                }
                return Err(e);
            }
            self.broadcast_route(&name, Some(after.clone()), StreamStatus::Active)
                .await?;
            for ident in gone {
                let core = before.shard(ident.shard_id).map_or(0, |s| s.core);
                let peer = &self.peers[(core % cores) as usize];
                call(peer, |reply| CoreMsg::DropShard { ident, reply }).await?;
                tracing::info!(stream = %name, shard = ident.shard_id, "closed shard removed: its records are past retention");
            }
            changed.push(after);
        }
        Ok(changed)
    }

    /// A stream's unwrapped data keys (core 0), for the specs its shards' cores get.
    fn stream_keys(&self, entry: &StreamEntry) -> Result<Option<Arc<StreamKeys>>, EngineError> {
        if entry.encryption.is_none() {
            return Ok(None);
        }
        let mut keyring = self.keyring.borrow_mut();
        keyring.as_mut().ok_or_else(no_keyring)?.keys(entry)
    }

    /// Starts (a new data key, current from the next batch) or stops (new batches in
    /// clear) a stream's encryption: catalog first, then the shards' cores.
    async fn set_encryption(&self, name: &str, on: bool) -> Result<Vec<StreamEntry>, EngineError> {
        let catalog = self.catalog.as_ref().expect("core 0");
        let before = catalog
            .borrow()
            .stream(name)
            .cloned()
            .ok_or_else(|| EngineError::UnknownStream(name.to_owned()))?;
        let is_on = before.encryption.as_ref().is_some_and(|e| e.is_on());
        if is_on == on {
            return Ok(vec![before]);
        }
        let next = if on {
            let keyring = self.keyring.borrow();
            let keyring = keyring.as_ref().ok_or_else(no_keyring)?;
            keyring.with_new_epoch(
                before.stream_id,
                before.encryption.as_ref(),
                self.clock.now_ms(),
            )?
        } else {
            let mut e = before.encryption.clone().expect("on");
            e.current = None;
            e
        };
        self.commit_encryption(vec![(before, next)]).await
    }

    /// Commits new encryption states of streams: the catalog (one atomic write, before any
    /// batch uses a new key), then each stream's shards and routes. Answers the entries.
    async fn commit_encryption(
        &self,
        changes: Vec<(StreamEntry, crate::catalog::StreamEncryption)>,
    ) -> Result<Vec<StreamEntry>, EngineError> {
        let catalog = self.catalog.as_ref().expect("core 0");
        let mut after = Vec::with_capacity(changes.len());
        {
            let mut cat = catalog.borrow_mut();
            for (before, next) in &changes {
                let s = cat
                    .stream_mut(&before.name)
                    .expect("looked up under the control lock");
                s.encryption = Some(next.clone());
                after.push(s.clone());
            }
        }
        // The keys must unwrap before anything is committed.
        let resolved: Result<Vec<_>, _> = after.iter().map(|e| self.stream_keys(e)).collect();
        let saved = match resolved {
            Ok(_) => self.save_catalog().await,
            Err(e) => Err(e),
        };
        if let Err(e) = saved {
            let mut cat = catalog.borrow_mut();
            for (before, _) in &changes {
                if let Some(s) = cat.stream_mut(&before.name) {
                    s.encryption = before.encryption.clone();
                }
            }
            return Err(e);
        }
        for entry in &after {
            self.tell_owners(entry, |spec, reply| CoreMsg::UpdateShard { spec, reply })
                .await?;
            self.broadcast_route(&entry.name, Some(entry.clone()), StreamStatus::Active)
                .await?;
        }
        Ok(after)
    }

    /// A master-key rotation: the key file is re-read off the executor thread, every data
    /// key is re-wrapped under the current master key (so older ones can be retired), and
    /// every stream that seals gets a new data key under it.
    async fn rotate_keys(&self) -> Result<Vec<StreamEntry>, EngineError> {
        let path = self
            .keyring
            .borrow()
            .as_ref()
            .and_then(Keyring::key_file)
            .ok_or_else(no_keyring)?;
        let loaded = glommio::executor()
            .spawn_blocking(move || crate::crypto::FileKeyProvider::load(&path))
            .await
            .map_err(|e| EngineError::KeyUnavailable(e.to_string()))?;
        let catalog = self.catalog.as_ref().expect("core 0");
        let in_use = Keyring::masters_in_use(catalog.borrow().data.streams.iter());
        let master = {
            let mut keyring = self.keyring.borrow_mut();
            keyring
                .as_mut()
                .ok_or_else(no_keyring)?
                .replace_provider(loaded, &in_use)?
        };
        let streams: Vec<StreamEntry> = catalog
            .borrow()
            .data
            .streams
            .iter()
            .filter(|s| s.encryption.is_some())
            .cloned()
            .collect();
        let now = self.clock.now_ms();
        let mut changes = Vec::with_capacity(streams.len());
        for entry in streams {
            let keys = self.stream_keys(&entry)?.expect("encrypted");
            let keyring = self.keyring.borrow();
            let keyring = keyring.as_ref().ok_or_else(no_keyring)?;
            let mut next = keyring.rewrapped(&entry, &keys)?.expect("encrypted");
            if next.is_on() {
                next = keyring.with_new_epoch(entry.stream_id, Some(&next), now)?;
            }
            changes.push((entry, next));
        }
        let after = self.commit_encryption(changes).await?;
        tracing::info!(
            master_key = master,
            streams = after.len(),
            "master key rotated"
        );
        Ok(after)
    }

    /// The master key new data keys are wrapped under (core 0), if a key file is loaded.
    pub(crate) fn current_master_key(&self) -> Option<u32> {
        self.keyring
            .borrow()
            .as_ref()
            .and_then(|k| k.current_master().ok())
    }

    async fn save_catalog(&self) -> Result<(), EngineError> {
        let catalog = self.catalog.as_ref().expect("core 0");
        // Encode under the borrow, write without it: the write runs off the executor thread.
        let (path, bytes) = catalog.borrow().encoded();
        self.storage.write_small_atomic(&path, &bytes).await?;
        Ok(())
    }
}

fn no_keyring() -> EngineError {
    EngineError::KeyUnavailable(
        "encryption at rest needs master keys: start the server with --key-file (key_file in the config)".into(),
    )
}

/// A debugging probe (only with debug logging): a task of the request queue that sleeps
/// 1 ms at a time and logs, every ten seconds, how late its wake-ups were. A late wake-up is
/// time the executor thread spent elsewhere (a task that did not yield, a blocking call),
/// which every request on the core waited out too.
async fn probe_executor_lateness(core: usize) {
    const BOUNDS_US: [u64; 6] = [250, 500, 1_000, 2_000, 5_000, 10_000];
    let mut over = [0u64; BOUNDS_US.len()];
    let mut wakeups = 0u64;
    let mut max_us = 0u64;
    let mut since = std::time::Instant::now();
    loop {
        let slept = std::time::Instant::now();
        glommio::timer::sleep(Duration::from_millis(1)).await;
        let late_us = (slept.elapsed().as_micros() as u64).saturating_sub(1_000);
        wakeups += 1;
        max_us = max_us.max(late_us);
        for (n, b) in over.iter_mut().zip(BOUNDS_US) {
            *n += u64::from(late_us >= b);
        }
        if since.elapsed() >= Duration::from_secs(10) {
            tracing::debug!(
                core,
                wakeups,
                late_250us = over[0],
                late_500us = over[1],
                late_1ms = over[2],
                late_2ms = over[3],
                late_5ms = over[4],
                late_10ms = over[5],
                late_max_us = max_us,
                "executor lateness"
            );
            (over, wakeups, max_us) = ([0; BOUNDS_US.len()], 0, 0);
            since = std::time::Instant::now();
        }
    }
}

/// One debug line per store every ten seconds: what its rounds were like.
fn log_store_stats(
    store: u32,
    a: &crate::store::StoreStats,
    b: &crate::store::StoreStats,
    over: Duration,
) {
    let rounds = b.rounds - a.rounds;
    if rounds == 0 {
        return;
    }
    tracing::debug!(
        store,
        rounds_per_s = (rounds as f64 / over.as_secs_f64()) as u64,
        appends_per_round = (b.appends - a.appends) as f64 / rounds as f64,
        journal_kib_per_round = (b.journal_bytes - a.journal_bytes) / rounds / 1024,
        direct_kib_per_round = (b.direct_bytes - a.direct_bytes) / rounds / 1024,
        syncs_per_round = (b.round_syncs - a.round_syncs) as f64 / rounds as f64,
        write_us_per_round = (b.write_us - a.write_us) / rounds,
        sync_us_per_round = (b.sync_us - a.sync_us) / rounds,
        write_behind_mib = (b.write_behind_bytes - a.write_behind_bytes) >> 20,
        fill_mib = (b.fill_bytes - a.fill_bytes) >> 20,
        prewrite_mib = (b.prewrite_bytes - a.prewrite_bytes) >> 20,
        checkpoints = b.checkpoints - a.checkpoints,
        write_us_max = b.write_us_max,
        sync_us_max = b.sync_us_max,
        // Appends that waited before staging, by reason, over the window.
        waits = %crate::store::WaitReason::ALL
            .iter()
            .map(|w| format!("{}:{}", w.name(), b.waits[*w as usize] - a.waits[*w as usize]))
            .collect::<Vec<_>>()
            .join(" "),
        // Rounds from seal to completion (waiting for the sync turn included), by bucket
        // bound in ms (`metrics::LATENCY_BOUNDS_MS`), over the window.
        round_ms = %round_histogram(&a.round_buckets, &b.round_buckets),
        "store rounds"
    );
}

fn round_histogram(a: &[u64], b: &[u64]) -> String {
    let mut out = String::new();
    for (i, (a, b)) in a.iter().zip(b).enumerate() {
        if b > a {
            let bound = crate::metrics::LATENCY_BOUNDS_MS
                .get(i)
                .map_or("inf".to_string(), |ms| ms.to_string());
            out.push_str(&format!("<={bound}:{} ", b - a));
        }
    }
    out
}

async fn sweep_retention<S: Storage + 'static>(core: Rc<Core<S>>) {
    loop {
        glommio::timer::sleep(Duration::from_millis(
            core.cfg.retention_check_interval_ms.max(10),
        ))
        .await;
        if core.stopping.get() {
            return;
        }
        core.apply_retention();
        if core.catalog.is_some() {
            if let Err(e) = core.control(ControlOp::ExpireClosedShards).await {
                tracing::warn!(error = %e, "closed shards past retention could not be removed; will try again");
            }
        }
    }
}

/// Sends a request to a core and waits for its reply. A message the core did not take is
/// `ShuttingDown` (nothing was done); one it took and never answered (it stopped while
/// running it, past the shutdown's drain) is `OutcomeUnknown`.
pub(crate) async fn call<T>(
    peer: &Sender<CoreMsg>,
    make: impl FnOnce(Reply<T>) -> CoreMsg,
) -> Result<T, EngineError> {
    let (tx, rx) = async_channel::bounded(1);
    peer.send(make(tx))
        .await
        .map_err(|_| EngineError::ShuttingDown)?;
    rx.recv().await.map_err(|_| EngineError::OutcomeUnknown)?
}

/// `call` for requests that change nothing (reads, positions, statistics, long-polls): an
/// unknown outcome is as good as not done.
pub(crate) async fn call_read<T>(
    peer: &Sender<CoreMsg>,
    make: impl FnOnce(Reply<T>) -> CoreMsg,
) -> Result<T, EngineError> {
    match call(peer, make).await {
        Err(EngineError::OutcomeUnknown) => Err(EngineError::ShuttingDown),
        other => other,
    }
}

impl CoreMsg {
    /// Answers a message the core will not run with `ShuttingDown`.
    pub(crate) fn refuse(self) {
        fn no<T>(reply: Sender<Result<T, EngineError>>) {
            let _ = reply.try_send(Err(EngineError::ShuttingDown));
        }
        match self {
            CoreMsg::OpenShard { reply, .. }
            | CoreMsg::DropShard { reply, .. }
            | CoreMsg::UpdateShard { reply, .. }
            | CoreMsg::Unseal { reply, .. }
            | CoreMsg::CheckpointNow { reply }
            | CoreMsg::RouteUpdate { reply, .. }
            | CoreMsg::SetTopology { reply, .. }
            | CoreMsg::WaitData { reply, .. }
            | CoreMsg::Shutdown { reply } => no(reply),
            CoreMsg::Append { reply, .. } => no(reply),
            CoreMsg::AppendMany { reply, .. } => no(reply),
            CoreMsg::Read { reply, .. } => no(reply),
            CoreMsg::Fanout { reply, .. } => no(reply),
            CoreMsg::Auth { reply, .. } => no(reply),
            CoreMsg::AuthChanged { reply, .. } => no(reply),
            CoreMsg::Claim { reply, .. } => no(reply),
            CoreMsg::DropConsumer { reply, .. } => no(reply),
            CoreMsg::Position { reply, .. } => no(reply),
            CoreMsg::Stats { reply, .. } => no(reply),
            CoreMsg::RetentionNow { reply } => no(reply),
            CoreMsg::Control { reply, .. } => no(reply),
            CoreMsg::Listen { reply, .. } => no(reply),
            CoreMsg::NetStats { reply } => no(reply),
            CoreMsg::MasterKey { reply } => no(reply),
            CoreMsg::Metrics { reply } => no(reply),
            CoreMsg::Seal { reply, .. } => no(reply),
            CoreMsg::Load { reply } => no(reply),
        }
    }
}

/// Kinesis: SplitShard, MergeShards and UpdateShardCount are for provisioned streams; an
/// on-demand stream's shards are the engine's to split and merge.
fn provisioned_only(entry: &StreamEntry, op: &str) -> Result<(), EngineError> {
    if entry.mode == crate::catalog::CapacityMode::OnDemand {
        return Err(EngineError::InvalidArgument(format!(
            "{op} is for provisioned streams; stream {:?} is on-demand (the engine splits and merges its shards): switch it to provisioned first",
            entry.name
        )));
    }
    Ok(())
}
