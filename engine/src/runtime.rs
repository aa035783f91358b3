//! One pinned glommio executor per engine core, and the shards each owns.
//!
//! Ownership: every shard (its `ShardLog`, limiters and spec) lives in exactly one core's
//! `Core` and is touched by no other thread. Core 0 additionally owns the catalog (the
//! control plane). Other threads and cores reach a core only through its bounded request
//! channel (`CoreMsg`); replies come back on a one-slot channel. No locks are taken on the
//! write path: the channel is the only cross-thread structure a request touches.
//!
//! Each core runs three kinds of task: one per request (so a slow flush never blocks the
//! core's queue), a spare-segment filler, and a retention sweeper.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use async_channel::{Receiver, Sender};
use spate_protocol::batch::{
    self, check_producer_batch_with, BatchHeader, RecordIter, RecordRules,
};

use crate::catalog::{validate_retention, Catalog, StreamEntry};
use crate::clock::ClockRef;
use crate::config::EngineConfig;
use crate::error::EngineError;
use crate::io::{DmaStorage, Storage};
use crate::limits::{Limits, TokenBucket, WriteLimiter};
use crate::log::{LogConfig, ReadOutput, ShardIdent, ShardLog};
use crate::segment::{shard_dir, stream_dir};
use crate::spare::SparePool;

/// Slots of each core's partition-key hash cache (~80 bytes each: 320 KiB per core).
const KEY_HASH_CACHE_SLOTS: usize = 4096;

pub(crate) type Reply<T> = Sender<Result<T, EngineError>>;

/// Everything a core needs to open and run one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardSpec {
    pub ident: ShardIdent,
    pub stream: String,
    pub hash_range: (u128, u128),
    pub limits: Limits,
    pub retention_hours: u32,
    pub max_record_data_bytes: u32,
}

impl ShardSpec {
    pub fn from_catalog(stream: &StreamEntry) -> Vec<ShardSpec> {
        stream
            .shards
            .iter()
            .map(|sh| ShardSpec {
                ident: ShardIdent {
                    stream_id: stream.stream_id,
                    shard_id: sh.shard_id,
                },
                stream: stream.name.clone(),
                hash_range: sh.hash_range(),
                limits: stream.limits,
                retention_hours: stream.retention_hours,
                max_record_data_bytes: stream.max_record_data_bytes,
            })
            .collect()
    }
}

/// Where an iterator starts (Kinesis' ShardIteratorType).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPosition {
    TrimHorizon,
    Latest,
    AtSequence(u64),
    AfterSequence(u64),
    AtTimestamp(i64),
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
    pub ts_ms: i64,
    /// Set when `accepted < record_count`.
    pub retry_after_ms: Option<u32>,
}

/// A shard's vital statistics (for describe).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardStats {
    pub first_seq: u64,
    /// One past the newest durable record.
    pub next_seq: u64,
    pub latest_ts_ms: i64,
    pub segments: usize,
    pub poisoned: bool,
}

/// Control-plane operations, served by core 0.
#[derive(Debug, Clone)]
pub enum ControlOp {
    CreateStream {
        name: String,
        opts: crate::catalog::StreamOptions,
    },
    DeleteStream {
        name: String,
    },
    SetRetention {
        name: String,
        hours: u32,
    },
    Snapshot,
}

pub(crate) enum CoreMsg {
    OpenShard {
        spec: ShardSpec,
        reply: Reply<()>,
    },
    DropShard {
        ident: ShardIdent,
        reply: Reply<()>,
    },
    UpdateShard {
        spec: ShardSpec,
        reply: Reply<()>,
    },
    Append {
        ident: ShardIdent,
        batch: Vec<u8>,
        reply: Reply<PutOutcome>,
    },
    Read {
        ident: ShardIdent,
        req: ReadRequest,
        reply: Reply<ReadOutput>,
    },
    Position {
        ident: ShardIdent,
        pos: StartPosition,
        reply: Reply<u64>,
    },
    Stats {
        ident: ShardIdent,
        reply: Reply<ShardStats>,
    },
    RetentionNow {
        reply: Reply<usize>,
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
        reply: Reply<()>,
    },
    Shutdown {
        reply: Reply<()>,
    },
}

/// What a core's thread is started with.
pub(crate) struct CoreSetup {
    pub index: usize,
    pub cfg: EngineConfig,
    pub clock: ClockRef,
    pub rx: Receiver<CoreMsg>,
    pub peers: Vec<Sender<CoreMsg>>,
    pub catalog: Option<Catalog>,
    pub shards: Vec<ShardSpec>,
    pub routes: HashMap<String, StreamEntry>,
    pub ready: std::sync::mpsc::Sender<Result<(), EngineError>>,
}

pub(crate) struct ShardSlot {
    spec: RefCell<ShardSpec>,
    log: ShardLog<DmaStorage>,
    write: RefCell<Option<WriteLimiter>>,
    read: RefCell<Option<TokenBucket>>,
}

pub(crate) struct Core {
    pub(crate) index: usize,
    pub(crate) cfg: EngineConfig,
    log_cfg: LogConfig,
    pub(crate) clock: ClockRef,
    storage: Rc<DmaStorage>,
    spares: Rc<SparePool<DmaStorage>>,
    shards: RefCell<HashMap<ShardIdent, Rc<ShardSlot>>>,
    pub(crate) peers: Vec<Sender<CoreMsg>>,
    catalog: Option<RefCell<Catalog>>,
    pub(crate) stopping: Cell<bool>,
    /// This core's copy of the stream routing table (name -> catalog entry).
    pub(crate) routes: RefCell<HashMap<String, Rc<StreamEntry>>>,
    /// Listeners, connections and request accounting (see `server`).
    pub(crate) net: crate::server::NetState,
    /// Partition key -> MD5 cache for the routing check (`verify_hash_keys`).
    key_hashes: RefCell<spate_protocol::routing::CachedKeyHasher>,
}

fn limiters(spec: &ShardSpec, now_ms: i64) -> (Option<WriteLimiter>, Option<TokenBucket>) {
    match spec.limits.rates() {
        Some((wb, wr, rb)) => (
            Some(WriteLimiter::new(wb, wr, now_ms)),
            Some(TokenBucket::new(rb, now_ms)),
        ),
        None => (None, None),
    }
}

/// The body of a core's thread, run inside its glommio executor.
pub(crate) async fn run_core(setup: CoreSetup) {
    let CoreSetup {
        index,
        cfg,
        clock,
        rx,
        peers,
        catalog,
        shards,
        routes,
        ready,
    } = setup;
    let storage = Rc::new(DmaStorage);
    let spare_dir = cfg.data_dir.join("spare").join(format!("core-{index}"));
    if let Err(e) = DmaStorage::warm_up(&spare_dir).await {
        let _ = ready.send(Err(EngineError::Startup(format!("core {index}: {e}"))));
        return;
    }
    let spares = match SparePool::open(
        &*storage,
        spare_dir,
        cfg.segment_bytes,
        cfg.spare_segments_per_core,
    ) {
        Ok(p) => Rc::new(p),
        Err(e) => {
            let _ = ready.send(Err(EngineError::Startup(format!(
                "core {index}: spare pool: {e}"
            ))));
            return;
        }
    };
    let core = Rc::new(Core {
        index,
        log_cfg: cfg.log_config(),
        cfg,
        clock,
        storage,
        spares,
        shards: RefCell::new(HashMap::new()),
        peers,
        catalog: catalog.map(RefCell::new),
        stopping: Cell::new(false),
        routes: RefCell::new(routes.into_iter().map(|(k, v)| (k, Rc::new(v))).collect()),
        net: crate::server::NetState::default(),
        key_hashes: RefCell::new(spate_protocol::routing::CachedKeyHasher::new(
            KEY_HASH_CACHE_SLOTS,
        )),
    });
    for spec in shards {
        if let Err(e) = core.open_shard(spec.clone()).await {
            let _ = ready.send(Err(EngineError::Startup(format!(
                "core {index}: cannot open stream {:?} shard {}: {e}",
                spec.stream, spec.ident.shard_id
            ))));
            return;
        }
    }
    let _ = ready.send(Ok(()));
    glommio::spawn_local(fill_spares(core.clone())).detach();
    glommio::spawn_local(sweep_retention(core.clone())).detach();
    while let Ok(msg) = rx.recv().await {
        if let CoreMsg::Shutdown { reply } = msg {
            core.stopping.set(true);
            // Long-polling readers wake up, see `stopping` and answer at once.
            for slot in core.shards.borrow().values() {
                slot.log.wake_waiters();
            }
            core.drain_requests().await;
            let slots: Vec<_> = core.shards.borrow().values().cloned().collect();
            for slot in slots {
                if let Err(e) = slot.log.flush().await {
                    tracing::error!(shard = ?slot.log.ident(), error = %e, "flush at shutdown failed");
                }
            }
            let _ = reply.send(Ok(())).await;
            break;
        }
        glommio::spawn_local(core.clone().handle(msg)).detach();
    }
    tracing::debug!(core = index, "core stopped");
}

async fn fill_spares(core: Rc<Core>) {
    loop {
        if core.stopping.get() {
            return;
        }
        if let Err(e) = core.spares.fill(&*core.storage).await {
            tracing::warn!(core = core.index, error = %e, "cannot fill spare segments");
        }
        glommio::timer::sleep(Duration::from_millis(200)).await;
    }
}

async fn sweep_retention(core: Rc<Core>) {
    loop {
        glommio::timer::sleep(Duration::from_millis(
            core.cfg.retention_check_interval_ms.max(10),
        ))
        .await;
        if core.stopping.get() {
            return;
        }
        core.apply_retention().await;
    }
}

impl Core {
    async fn handle(self: Rc<Self>, msg: CoreMsg) {
        match msg {
            CoreMsg::OpenShard { spec, reply } => {
                let _ = reply.send(self.open_shard(spec).await).await;
            }
            CoreMsg::DropShard { ident, reply } => {
                let _ = reply.send(self.drop_shard(ident).await).await;
            }
            CoreMsg::UpdateShard { spec, reply } => {
                let r = self.slot(spec.ident).map(|slot| {
                    *slot.spec.borrow_mut() = spec;
                });
                let _ = reply.send(r).await;
            }
            CoreMsg::Append {
                ident,
                batch,
                reply,
            } => {
                let _ = reply.send(self.append(ident, &batch).await).await;
            }
            CoreMsg::Read { ident, req, reply } => {
                let _ = reply.send(self.read(ident, req).await).await;
            }
            CoreMsg::Position { ident, pos, reply } => {
                let _ = reply.send(self.position(ident, pos).await).await;
            }
            CoreMsg::Stats { ident, reply } => {
                let r = self.slot(ident).map(|slot| ShardStats {
                    first_seq: slot.log.trim_horizon(),
                    next_seq: slot.log.durable_seq(),
                    latest_ts_ms: slot.log.latest_ts_ms(),
                    segments: slot.log.segment_count(),
                    poisoned: slot.log.is_poisoned().is_some(),
                });
                let _ = reply.send(r).await;
            }
            CoreMsg::RetentionNow { reply } => {
                let n = self.apply_retention().await;
                let _ = reply.send(Ok(n)).await;
            }
            CoreMsg::Control { op, reply } => {
                let _ = reply.send(self.control(op).await).await;
            }
            CoreMsg::RouteUpdate { name, entry, reply } => {
                {
                    let mut routes = self.routes.borrow_mut();
                    match entry {
                        Some(e) => routes.insert(name, Rc::new(e)),
                        None => routes.remove(&name),
                    };
                }
                let _ = reply.send(Ok(())).await;
            }
            CoreMsg::Listen { public, own, reply } => {
                let _ = reply.send(self.clone().listen(public, own)).await;
            }
            CoreMsg::SetTopology { addrs, reply } => {
                *self.net.topology.borrow_mut() = addrs;
                let _ = reply.send(Ok(())).await;
            }
            CoreMsg::Shutdown { reply } => {
                let _ = reply.send(Ok(())).await;
            }
        }
    }

    fn slot(&self, ident: ShardIdent) -> Result<Rc<ShardSlot>, EngineError> {
        self.shards
            .borrow()
            .get(&ident)
            .cloned()
            .ok_or_else(|| EngineError::UnknownShard {
                stream: format!("#{}", ident.stream_id),
                shard: ident.shard_id,
            })
    }

    async fn open_shard(&self, spec: ShardSpec) -> Result<(), EngineError> {
        if self.shards.borrow().contains_key(&spec.ident) {
            return Ok(());
        }
        let dir = shard_dir(
            &self.cfg.data_dir,
            spec.ident.stream_id,
            spec.ident.shard_id,
        );
        let log = ShardLog::open(
            self.storage.clone(),
            dir,
            spec.ident,
            self.log_cfg,
            self.clock.clone(),
            self.spares.clone(),
        )
        .await?;
        if log.recovered_torn_bytes() > 0 {
            tracing::warn!(stream = %spec.stream, shard = spec.ident.shard_id, "recovered shard had a torn tail");
        }
        let (write, read) = limiters(&spec, self.clock.now_ms());
        let slot = ShardSlot {
            spec: RefCell::new(spec.clone()),
            log,
            write: RefCell::new(write),
            read: RefCell::new(read),
        };
        self.shards.borrow_mut().insert(spec.ident, Rc::new(slot));
        Ok(())
    }

    async fn drop_shard(&self, ident: ShardIdent) -> Result<(), EngineError> {
        let slot = self.shards.borrow_mut().remove(&ident);
        if let Some(slot) = slot {
            // Writes already acknowledged are durable; pending ones finish or fail first.
            let _ = slot.log.flush().await;
            self.storage.remove_dir_all(slot.log.dir())?;
        }
        Ok(())
    }

    /// Checks, limits and appends one producer batch to a shard of this core. The batch is
    /// borrowed (from the connection's frame, or a forwarded message); the log copies it
    /// once into its write buffer. Only a throttled batch is copied here, to cut it down.
    pub(crate) async fn append(
        &self,
        ident: ShardIdent,
        batch: &[u8],
    ) -> Result<PutOutcome, EngineError> {
        if self.stopping.get() {
            return Err(EngineError::ShuttingDown);
        }
        let slot = self.slot(ident)?;
        let (rules, has_limits) = {
            let spec = slot.spec.borrow();
            let rules = RecordRules {
                max_record_data_bytes: spec.max_record_data_bytes as usize,
                hash_range: self.cfg.verify_hash_keys.then_some(spec.hash_range),
            };
            (rules, spec.limits != Limits::Off)
        };
        let summary = check_producer_batch_with(batch, &rules, &mut *self.key_hashes.borrow_mut())?;
        let mut accepted = summary.record_count;
        let mut retry_after_ms = None;
        if has_limits {
            if let Some(limiter) = slot.write.borrow_mut().as_mut() {
                let header = BatchHeader::decode(batch)?;
                let sizes = RecordIter::new(batch, header.record_count)
                    .map(|r| r.map_or(0, |r| (r.key.len() + r.data.len()) as u64));
                let admission = limiter.admit(sizes, self.clock.now_ms());
                accepted = admission.records;
                retry_after_ms = admission.retry_after_ms;
            }
            if accepted == 0 {
                return Err(EngineError::Throttled {
                    retry_after_ms: retry_after_ms.unwrap_or(1),
                });
            }
        }
        let mut cut;
        let mut batch = batch;
        if accepted < summary.record_count {
            cut = batch.to_vec();
            let len = batch::truncate_records(&mut cut, accepted)?;
            batch = &cut[..len];
        }
        let ack = slot.log.append(batch, accepted).await?;
        Ok(PutOutcome {
            shard_id: ident.shard_id,
            base_seq: ack.base_seq,
            accepted,
            record_count: summary.record_count,
            ts_ms: ack.ts_ms,
            retry_after_ms,
        })
    }

    pub(crate) async fn read(
        &self,
        ident: ShardIdent,
        req: ReadRequest,
    ) -> Result<ReadOutput, EngineError> {
        let slot = self.slot(ident)?;
        if req.wait_ms > 0 && req.from_seq >= slot.log.durable_seq() {
            let deadline =
                std::time::Instant::now() + Duration::from_millis(u64::from(req.wait_ms));
            while req.from_seq >= slot.log.durable_seq() && !self.stopping.get() {
                let now = std::time::Instant::now();
                if now >= deadline {
                    break;
                }
                let changed = async {
                    slot.log.wait_for_change().await;
                    true
                };
                let timeout = async {
                    glommio::timer::sleep(deadline - now).await;
                    false
                };
                if !futures_lite::future::or(changed, timeout).await {
                    break;
                }
            }
        }
        if let Some(bucket) = slot.read.borrow_mut().as_mut() {
            if bucket.available(self.clock.now_ms()) == 0 {
                return Err(EngineError::ReadThrottled {
                    retry_after_ms: bucket.wait_ms(1),
                });
            }
        }
        let out = slot
            .log
            .read(req.from_seq, req.max_records, req.max_bytes)
            .await?;
        if let Some(bucket) = slot.read.borrow_mut().as_mut() {
            bucket.take(out.bytes.len() as u64);
        }
        Ok(out)
    }

    pub(crate) async fn position(
        &self,
        ident: ShardIdent,
        pos: StartPosition,
    ) -> Result<u64, EngineError> {
        let slot = self.slot(ident)?;
        let log = &slot.log;
        let durable = log.durable_seq();
        let seq = match pos {
            StartPosition::TrimHorizon => log.trim_horizon(),
            StartPosition::Latest => durable,
            StartPosition::AtSequence(s) | StartPosition::AfterSequence(s) if s >= durable => {
                return Err(EngineError::InvalidArgument(format!(
                    "sequence number {s} is not in the shard (next is {durable})"
                )))
            }
            StartPosition::AtSequence(s) => s.max(log.trim_horizon()),
            StartPosition::AfterSequence(s) => (s + 1).max(log.trim_horizon()),
            StartPosition::AtTimestamp(ts) => log.seq_at_timestamp(ts).await?,
        };
        Ok(seq)
    }

    async fn apply_retention(&self) -> usize {
        let slots: Vec<_> = self.shards.borrow().values().cloned().collect();
        let now = self.clock.now_ms();
        let mut removed = 0;
        for slot in slots {
            let hours = slot.spec.borrow().retention_hours;
            let cutoff = now - i64::from(hours) * 3_600_000;
            match slot.log.apply_retention(cutoff).await {
                Ok(n) => removed += n,
                Err(e) => tracing::warn!(shard = ?slot.log.ident(), error = %e, "retention failed"),
            }
        }
        removed
    }

    /// Sends each shard's spec to the core that owns it and waits for every answer.
    async fn tell_owners(
        &self,
        entry: &StreamEntry,
        make: impl Fn(ShardSpec, Reply<()>) -> CoreMsg,
    ) -> Result<(), EngineError> {
        for spec in ShardSpec::from_catalog(entry) {
            let (_, owner) = entry.locate(spec.ident.shard_id, self.peers.len())?;
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
    ) -> Result<(), EngineError> {
        for peer in &self.peers {
            let entry = entry.clone();
            call(peer, |reply| CoreMsg::RouteUpdate {
                name: name.to_owned(),
                entry,
                reply,
            })
            .await?;
        }
        Ok(())
    }

    /// Control plane (core 0 only): mutate the catalog, persist it, then tell the owning
    /// cores. Returns the affected streams (or all of them for `Snapshot`).
    async fn control(&self, op: ControlOp) -> Result<Vec<StreamEntry>, EngineError> {
        let catalog = self.catalog.as_ref().expect("control ops go to core 0");
        let cores = self.peers.len() as u32;
        match op {
            ControlOp::Snapshot => Ok(catalog.borrow().data.streams.clone()),
            ControlOp::CreateStream { name, opts } => {
                let entry = {
                    let mut cat = catalog.borrow_mut();
                    let entry = cat
                        .add_stream(&name, &opts, cores, self.clock.now_ms())?
                        .clone();
                    if let Err(e) = cat.save() {
                        cat.remove_stream(&name)?;
                        return Err(e);
                    }
                    entry
                };
                self.tell_owners(&entry, |spec, reply| CoreMsg::OpenShard { spec, reply })
                    .await?;
                self.broadcast_route(&entry.name, Some(entry.clone()))
                    .await?;
                Ok(vec![entry])
            }
            ControlOp::DeleteStream { name } => {
                let entry = {
                    let mut cat = catalog.borrow_mut();
                    let entry = cat.remove_stream(&name)?;
                    cat.save()?;
                    entry
                };
                self.broadcast_route(&entry.name, None).await?;
                for sh in &entry.shards {
                    let ident = ShardIdent {
                        stream_id: entry.stream_id,
                        shard_id: sh.shard_id,
                    };
                    let peer = &self.peers[(sh.core % cores) as usize];
                    call(peer, |reply| CoreMsg::DropShard { ident, reply }).await?;
                }
                self.storage
                    .remove_dir_all(&stream_dir(&self.cfg.data_dir, entry.stream_id))?;
                Ok(vec![entry])
            }
            ControlOp::SetRetention { name, hours } => {
                validate_retention(hours)?;
                let entry = {
                    let mut cat = catalog.borrow_mut();
                    let s = cat
                        .data
                        .streams
                        .iter_mut()
                        .find(|s| s.name == name)
                        .ok_or_else(|| EngineError::UnknownStream(name.clone()))?;
                    let old = s.retention_hours;
                    s.retention_hours = hours;
                    let entry = s.clone();
                    if let Err(e) = cat.save() {
                        if let Some(s) = cat.data.streams.iter_mut().find(|s| s.name == name) {
                            s.retention_hours = old;
                        }
                        return Err(e);
                    }
                    entry
                };
                self.tell_owners(&entry, |spec, reply| CoreMsg::UpdateShard { spec, reply })
                    .await?;
                self.broadcast_route(&entry.name, Some(entry.clone()))
                    .await?;
                Ok(vec![entry])
            }
        }
    }
}

/// Sends a request to a core and waits for its reply.
pub(crate) async fn call<T>(
    peer: &Sender<CoreMsg>,
    make: impl FnOnce(Reply<T>) -> CoreMsg,
) -> Result<T, EngineError> {
    let (tx, rx) = async_channel::bounded(1);
    peer.send(make(tx))
        .await
        .map_err(|_| EngineError::ShuttingDown)?;
    rx.recv().await.map_err(|_| EngineError::ShuttingDown)?
}
