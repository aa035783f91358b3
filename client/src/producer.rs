//! The [`Producer`]: aggregates records per shard into batches, like the Kinesis Producer
//! Library's collection or Kafka's record accumulator, with bounded buffering and per-key
//! order.
//!
//! `send` routes the record, waits for room (backpressure: a byte budget shared by the
//! whole producer, and a bound on each shard's queued records), and appends it to its
//! shard's open batch at its core, under a lock the core's senders share with the core's
//! worker task: the record is copied into the batch's wire bytes at once, and only what
//! settling it needs is kept (so `send` borrows the key and data). It returns a
//! [`SendHandle`] that resolves once the record is acknowledged or has failed: a batch's
//! handles share one slot, filled when the batch is answered ([`Producer::send_with`] calls
//! back with the outcome instead, on the worker, saving a future and its waiter per
//! record). A shard's batch is due when it reaches `batch_bytes_max` or `batch_records_max`
//! (the next record starts a new one), or `linger` after its first record. The worker is
//! woken only when a batch fills, a linger starts before its sleep ends, or a flush asks,
//! and looks only at the shards that may have become due (a batch filled, a batch settled,
//! a timer, a flush); it sends every batch that is due at the same moment in one request
//! (PutBatches), so a producer writing to thousands of shards of a core sends about one
//! request per linger, not one per shard.
//!
//! Ordering: a shard has at most one batch in flight; its next batch goes only after the
//! previous one settled, and a throttled tail goes back to the front of its shard's queue
//! (rebuilt from the sent batch's bytes; after the retry delay), so a partition key's acknowledged records are stored in the
//! order they were sent. Different shards' batches are in flight at once, in one or more
//! requests, pipelined on one connection per core.
//!
//! Resharding: a batch refused with `ShardClosed` (its shard was split or merged; nothing of
//! it was stored) is held at the front of its queue, and the producer asks for routes of at
//! least the shard-map version the error named. It then closes its routing gate (a flag
//! under the routing table's lock, which a send otherwise takes only to read, for a few
//! instructions: no record is routed meanwhile, and senders wait for the gate to open
//! without holding the lock), and every worker gives back the records of the shards the
//! new table closed, once their batches in flight have settled, and they are
//! queued at the shards that own their keys now (starting workers for new cores), in the
//! order they were sent, ahead of anything sent later. So a key's records are acknowledged
//! in send order across the lineage, and `send` never sees the reshard.
//!
//! Failure: a record whose batch fails for good (after the retries of
//! [`crate::RetryPolicy`]) resolves to the error; its shard goes on with the next batch.
//! Dropping the producer without [`Producer::close`] still sends what was queued.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crate::routing::cached_hash_key;
use bytes::Bytes;
use spate_protocol::batch::{
    BatchBuilder, RecordIter, BATCH_HEADER_LEN, MAX_BATCH_BYTES, MAX_RECORDS_PER_BATCH,
};
use spate_protocol::{ErrorCode, PutBatchResponse};
use tokio::sync::{mpsc, oneshot, Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::client::Client;
use crate::error::{ClientError, Result};
use crate::put::{check_record, Entry, PutResult, RecordView};
use crate::routing::{ShardMap, ShardRoute};

/// How a [`Producer`] batches and bounds its buffering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerConfig {
    /// How long a batch waits for more records after its first one.
    pub linger: Duration,
    /// A batch is sent once it holds this many bytes (one larger record goes alone).
    pub batch_bytes_max: usize,
    /// A batch is sent once it holds this many records (at most 500).
    pub batch_records_max: u32,
    /// Records queued for one shard (not counting its batch in flight), beyond which
    /// `send` waits.
    pub queued_records_max_per_shard: usize,
    /// Key and data bytes queued or in flight in the whole producer, beyond which `send`
    /// waits.
    pub buffered_bytes_max: usize,
}

impl Default for ProducerConfig {
    /// 5 ms linger, 256 KiB or 500 records a batch, 10,000 records a shard, 64 MiB in all.
    fn default() -> Self {
        ProducerConfig {
            linger: Duration::from_millis(5),
            batch_bytes_max: 256 * 1024,
            batch_records_max: MAX_RECORDS_PER_BATCH,
            queued_records_max_per_shard: 10_000,
            buffered_bytes_max: 64 << 20,
        }
    }
}

/// A record on its way to a batch: sent, or handed back by a closed shard for re-routing.
struct Item {
    /// Its order at the core it was queued at (a handed-back record's `Rec::local`).
    order: u64,
    entry: Entry,
    done: Settle,
    /// The record's share of the byte budget, given back when it settles.
    cost: u32,
}

/// A record in a batch: its bytes are in the batch, this is what settling it needs.
struct Rec {
    /// The order it was queued in at its core (flushes count by it; a re-routing orders the
    /// records it hands back by it).
    local: u64,
    done: Settle,
    cost: u32,
}

/// One shard's records built into a batch as they are sent.
struct Pending {
    builder: BatchBuilder,
    recs: Vec<Rec>,
    /// When its first record came (the linger runs from it).
    first_at: Instant,
    /// Where its records sent with handles settle (made by the first of them), and how
    /// many of them joined it (the next one's index).
    slot: Option<SlotWriter>,
    handles: u32,
}

impl Pending {
    /// Its records as they were sent (a closed shard's records go back for re-routing; a
    /// handle's record keeps its place in this batch's slot).
    fn into_items(self) -> Vec<Item> {
        let Pending {
            builder,
            recs,
            slot,
            ..
        } = self;
        let count = recs.len() as u32;
        let batch = Bytes::from(builder.into_batch());
        RecordIter::new(&batch, count)
            .zip(recs)
            .map(|(r, rec)| {
                let r = r.expect("a batch the producer built");
                Item {
                    order: rec.local,
                    entry: Entry {
                        key: String::from_utf8(r.key.to_vec()).expect("a checked key"),
                        data: batch.slice_ref(r.data),
                        explicit_hash_key: r.explicit_hash_key,
                    },
                    done: match rec.done {
                        Settle::Own(i) => Settle::Slot(
                            slot.clone().expect("a handle's record's batch has a slot"),
                            i,
                        ),
                        done => done,
                    },
                    cost: rec.cost,
                }
            })
            .collect()
    }
}

/// How a record's outcome reaches its sender: a [`SendHandle`] or a callback.
enum Settle {
    /// Sent with a handle, not yet in a batch (`enqueue` makes the handle).
    Handle,
    /// A handle's record in the batch it joined: its index in that batch's slot (settled
    /// with the batch's other handles under one lock: `Outcomes::push_recs`).
    Own(u32),
    /// A handle's record away from the batch it joined (re-routed after a split or merge).
    Slot(SlotWriter, u32),
    Callback(Box<dyn FnOnce(Result<PutResult>) + Send>),
}

impl Settle {
    fn settle(self, outcome: Result<PutResult>) {
        match self {
            Settle::Slot(slot, i) => {
                let wakers = {
                    let mut st = slot.0.lock();
                    st.put(i, outcome);
                    std::mem::take(&mut st.wakers)
                };
                wakers.into_iter().for_each(Waker::wake);
            }
            Settle::Handle | Settle::Own(_) => {
                debug_assert!(false, "a handle's record settles through its slot");
            }
            Settle::Callback(f) => {
                // A panicking callback must not take the worker (and every other record
                // it holds) down with it.
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(outcome))).is_err() {
                    tracing::error!("a producer callback panicked; the producer goes on");
                }
            }
        }
    }
}

/// Where the records sent with handles from one batch settle: one allocation a batch
/// instead of a channel a record (Kafka's per-batch future). A [`SendHandle`] holds the
/// slot and its record's index in it.
struct Slot {
    state: Mutex<SlotState>,
}

#[derive(Default)]
struct SlotState {
    /// By index: the record's outcome once settled, until its handle takes it.
    outcomes: Vec<Option<Result<PutResult>>>,
    /// [`SlotWriter`]s alive: the batch, its requeued tail, its re-routed records. Once
    /// none is, a record not settled never will be (its handle resolves to `Closed`).
    writers: usize,
    /// Tasks waiting on a handle of the slot (one entry per task).
    wakers: Vec<Waker>,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl SlotState {
    fn put(&mut self, index: u32, outcome: Result<PutResult>) {
        let i = index as usize;
        if i >= self.outcomes.len() {
            self.outcomes.resize_with(i + 1, || None);
        }
        self.outcomes[i] = Some(outcome);
    }
}

/// A holder of records of a slot that may still settle them; when the last one goes, the
/// slot's unsettled records resolve to `Closed` (as a dropped channel's would).
struct SlotWriter(Arc<Slot>);

impl SlotWriter {
    fn new() -> SlotWriter {
        SlotWriter(Arc::new(Slot {
            state: Mutex::new(SlotState {
                writers: 1,
                ..SlotState::default()
            }),
        }))
    }
}

impl Clone for SlotWriter {
    fn clone(&self) -> Self {
        self.0.lock().writers += 1;
        SlotWriter(self.0.clone())
    }
}

impl Drop for SlotWriter {
    fn drop(&mut self) {
        let wakers = {
            let mut st = self.0.lock();
            st.writers -= 1;
            if st.writers > 0 {
                return;
            }
            std::mem::take(&mut st.wakers)
        };
        wakers.into_iter().for_each(Waker::wake);
    }
}

/// A record's share of the byte budget, given back when dropped unless it was queued
/// (`cost` 0): then it comes back when the record settles.
struct Refund<'a> {
    budget: &'a Semaphore,
    cost: usize,
}

impl Drop for Refund<'_> {
    fn drop(&mut self) {
        if self.cost > 0 {
            self.budget.add_permits(self.cost);
        }
    }
}

/// Outcomes decided under a core's lock, delivered after it is released (a callback must
/// never run under the lock), with the budget they give back.
#[derive(Default)]
struct Outcomes {
    settled: Vec<(Settle, Result<PutResult>)>,
    /// Waiting on handles whose records are settled.
    wake: Vec<Waker>,
    cost: usize,
}

impl Outcomes {
    /// A record away from a batch (a re-routed or released one: never `Settle::Own`).
    fn push(&mut self, done: Settle, cost: u32, outcome: Result<PutResult>) {
        self.settled.push((done, outcome));
        self.cost += cost as usize;
    }

    /// Records of the batch whose slot is `slot`: its handles' outcomes go into the slot
    /// under one lock (no user code runs under it), the rest are delivered later.
    fn push_recs(
        &mut self,
        slot: Option<&SlotWriter>,
        recs: impl IntoIterator<Item = (Rec, Result<PutResult>)>,
    ) {
        let mut filled: Option<MutexGuard<'_, SlotState>> = None;
        for (rec, outcome) in recs {
            self.cost += rec.cost as usize;
            match rec.done {
                Settle::Own(i) => filled
                    .get_or_insert_with(|| {
                        slot.expect("a handle's record's batch has a slot").0.lock()
                    })
                    .put(i, outcome),
                done => self.settled.push((done, outcome)),
            }
        }
        if let Some(mut st) = filled {
            self.wake.append(&mut st.wakers);
        }
    }

    fn deliver(self, budget: &Semaphore) {
        if self.cost > 0 {
            budget.add_permits(self.cost);
        }
        for (done, outcome) in self.settled {
            done.settle(outcome);
        }
        self.wake.into_iter().for_each(Waker::wake);
    }
}

/// Rare requests to a core's worker.
enum Ctrl {
    /// The shards were closed by a split or merge: answer every record queued for them (in
    /// send order), once none of their batches is in flight.
    Release {
        closed: Vec<u32>,
        reply: oneshot::Sender<Vec<Item>>,
    },
    /// Send what is queued and stop once everything has settled.
    Close,
}

/// A core's worker as the producer sees it.
struct Worker {
    core: Arc<CoreShared>,
    ctrl: mpsc::UnboundedSender<Ctrl>,
}

/// The routing table and the workers it routes to; its map is replaced when a split or
/// merge closes a shard (with the gate closed meanwhile, so no record is routed by it).
struct Routing {
    map: Arc<ShardMap>,
    workers: BTreeMap<u16, Worker>,
    handles: Vec<JoinHandle<()>>,
    /// A re-routing is under way: nothing is routed until it ends (`Shared::rerouted`).
    rerouting: bool,
}

struct Shared {
    client: Client,
    stream: String,
    config: ProducerConfig,
    /// Held only for a few instructions, never across an await: a re-routing closes the
    /// gate (`Routing::rerouting`) instead of holding the lock while it waits for the
    /// workers. (An async lock here cost every `send` a mutex on its way out.)
    routing: RwLock<Routing>,
    /// Wakes whoever waits for a re-routing to end.
    rerouted: Notify,
    budget: Arc<Semaphore>,
    /// Raised by every re-routing (a flush that saw one waits again).
    reroutes: std::sync::atomic::AtomicU64,
    /// Workers ask here for routes of at least a shard-map version.
    refresh: mpsc::UnboundedSender<u64>,
}

/// Aggregates records into per-shard batches; see the module docs.
pub struct Producer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("stream", &self.shared.stream)
            .field("config", &self.shared.config)
            .finish()
    }
}

/// Resolves to a sent record's outcome. (It shares its batch's slot with the batch's other
/// handles: no allocation per record.)
pub struct SendHandle {
    slot: Arc<Slot>,
    index: u32,
}

impl std::fmt::Debug for SendHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendHandle")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl Future for SendHandle {
    type Output = Result<PutResult>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut st = self.slot.lock();
        if let Some(outcome) = st
            .outcomes
            .get_mut(self.index as usize)
            .and_then(Option::take)
        {
            return Poll::Ready(outcome);
        }
        if st.writers == 0 {
            return Poll::Ready(Err(ClientError::Closed));
        }
        if !st.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            st.wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl Client {
    /// A producer for `stream`, routing by the stream's current shards (and the new ones,
    /// once a split or merge closes one).
    pub async fn producer(&self, stream: &str, config: ProducerConfig) -> Result<Producer> {
        let map = self.shard_map(stream).await?;
        Ok(Producer::start(self.clone(), stream, map, config))
    }
}

impl Producer {
    fn start(client: Client, stream: &str, map: Arc<ShardMap>, config: ProducerConfig) -> Producer {
        assert!(config.queued_records_max_per_shard > 0 && config.buffered_bytes_max > 0);
        let config = ProducerConfig {
            batch_records_max: config.batch_records_max.clamp(1, MAX_RECORDS_PER_BATCH),
            // And within the server's largest request, less a request's own framing (a
            // server configured with a smaller `max_frame_bytes` refused every full batch).
            batch_bytes_max: config
                .batch_bytes_max
                .min(MAX_BATCH_BYTES)
                .min(crate::put::request_room(&client)),
            buffered_bytes_max: config
                .buffered_bytes_max
                .min(Semaphore::MAX_PERMITS)
                .min(u32::MAX as usize),
            ..config
        };
        let (refresh, refresh_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            client: client.clone(),
            stream: stream.to_string(),
            config,
            routing: RwLock::new(Routing {
                map: map.clone(),
                workers: BTreeMap::new(),
                handles: Vec::new(),
                rerouting: false,
            }),
            rerouted: Notify::new(),
            budget: Arc::new(Semaphore::new(config.buffered_bytes_max)),
            reroutes: std::sync::atomic::AtomicU64::new(0),
            refresh,
        });
        {
            let mut routing = shared.write_routing();
            for r in map.routes() {
                shared.add_worker(&mut routing, r.core);
            }
        }
        tokio::spawn(refresher(Arc::downgrade(&shared), refresh_rx));
        Producer { shared }
    }

    /// Queues a record, waiting while the producer's buffers are full. The returned handle
    /// resolves when the record is acknowledged or has failed. Fails at once for a record
    /// the engine would refuse (key length, data size).
    ///
    /// The key and data are copied into the shard's batch at once: they can be borrowed
    /// (`&str`, `&[u8]`, a buffer the caller reuses), and owned ones are dropped when `send`
    /// returns.
    pub async fn send(&self, key: impl AsRef<str>, data: impl AsRef<[u8]>) -> Result<SendHandle> {
        let record = RecordView {
            key: key.as_ref(),
            data: data.as_ref(),
            explicit_hash_key: None,
        };
        self.send_view(record).await
    }

    /// As [`Producer::send`], for an [`Entry`] (which may carry an explicit hash key).
    pub async fn send_entry(&self, entry: Entry) -> Result<SendHandle> {
        self.send_view(entry.view()).await
    }

    async fn send_view(&self, record: RecordView<'_>) -> Result<SendHandle> {
        Ok(self
            .queue(record, Settle::Handle)
            .await?
            .expect("a record sent with a handle gets one"))
    }

    /// As [`Producer::send`], but the record's outcome goes to `on_settled` instead of a
    /// handle: no future per record, so a producer sending millions of records a second
    /// spends less per record (Kafka's `send(record, callback)`). `on_settled` runs on the
    /// producer's worker task as soon as the record is acknowledged or has failed: it must
    /// be quick and must not block (hand heavy work to a channel); a panic in it is caught
    /// and logged. Records of one partition key settle in the order they were sent.
    pub async fn send_with<F>(
        &self,
        key: impl AsRef<str>,
        data: impl AsRef<[u8]>,
        on_settled: F,
    ) -> Result<()>
    where
        F: FnOnce(Result<PutResult>) + Send + 'static,
    {
        let record = RecordView {
            key: key.as_ref(),
            data: data.as_ref(),
            explicit_hash_key: None,
        };
        self.queue(record, Settle::Callback(Box::new(on_settled)))
            .await
            .map(|_| ())
    }

    /// As [`Producer::send_with`], for an [`Entry`] (which may carry an explicit hash key).
    pub async fn send_entry_with<F>(&self, entry: Entry, on_settled: F) -> Result<()>
    where
        F: FnOnce(Result<PutResult>) + Send + 'static,
    {
        self.queue(entry.view(), Settle::Callback(Box::new(on_settled)))
            .await
            .map(|_| ())
    }

    /// Routes a record and appends it to its shard's batch at its core (waiting for room);
    /// a record sent with a handle (`Settle::Handle`) gets it.
    async fn queue(&self, entry: RecordView<'_>, done: Settle) -> Result<Option<SendHandle>> {
        // A send that finds room never waits, so a task sending in a loop would keep its
        // thread from the workers (which send the batches and settle them) until something
        // else made it yield: it spends tokio's cooperative budget instead, yielding every
        // so many records.
        tokio::task::consume_budget().await;
        let shared = &self.shared;
        let cost = (entry.key.len() + entry.data.len()).clamp(1, shared.config.buffered_bytes_max);
        // The budget comes back by the batch (`Outcomes::deliver`), not with a permit per
        // record.
        match shared.budget.try_acquire_many(cost as u32) {
            Ok(permits) => permits.forget(),
            Err(tokio::sync::TryAcquireError::Closed) => return Err(ClientError::Closed),
            Err(tokio::sync::TryAcquireError::NoPermits) => shared
                .budget
                .acquire_many(cost as u32)
                .await
                .map_err(|_| ClientError::Closed)?
                .forget(),
        }
        let hash = entry
            .explicit_hash_key
            .unwrap_or_else(|| cached_hash_key(entry.key.as_bytes()));
        let mut done = Some(done);
        // Until the record is queued, its budget goes back if the send fails or is dropped
        // while it waits for room (a send inside a timeout must not shrink the budget).
        let mut refund = Refund {
            budget: &shared.budget,
            cost,
        };
        loop {
            // Routed and queued under the read lock: a re-routing (which closes the gate
            // under the write lock) sees every record routed by the old table already in
            // its shard's queue. (No await while it is held.)
            let full = {
                let routing = shared.read_routing();
                if routing.rerouting {
                    // Made under the lock: the re-routing's end (the gate opened under the
                    // write lock, then everyone woken) cannot be missed.
                    Err(shared.rerouted.notified())
                } else {
                    check_record(&routing.map, entry)?;
                    let Some(route) = routing
                        .map
                        .index_for_hash(hash)
                        .map(|i| routing.map.routes()[i])
                    else {
                        return Err(ClientError::protocol(
                            "no open shard covers the record's hash key",
                        ));
                    };
                    let Some(worker) = routing.workers.get(&route.core) else {
                        return Err(ClientError::Closed);
                    };
                    let max = shared.config.queued_records_max_per_shard;
                    let mut st = worker.core.lock();
                    if st.stopped {
                        return Err(ClientError::Closed);
                    }
                    if !st.full(route.shard_id, max) {
                        // Queued: its budget comes back when it settles.
                        refund.cost = 0;
                        let done = done.take().expect("not queued yet");
                        let (wake, handle) =
                            st.enqueue(&shared.config, route, entry, done, cost as u32);
                        drop(st);
                        if wake {
                            worker.core.wake.notify_one();
                        }
                        return Ok(handle);
                    }
                    Ok((worker.core.clone(), route.shard_id))
                }
            };
            let (core, shard_id) = match full {
                Ok(full) => full,
                Err(opened) => {
                    opened.await;
                    continue;
                }
            };
            // Full: wait for room. The worker wakes everyone waiting (`notify_waiters`)
            // after it takes a batch; a waiter made before the second look cannot miss it.
            // (A re-routing meanwhile is seen when the loop routes the record again.)
            let room = core.room.notified();
            if !core
                .lock()
                .full(shard_id, shared.config.queued_records_max_per_shard)
            {
                continue;
            }
            room.await;
        }
    }

    /// Sends everything queued now (without waiting out the linger) and waits until every
    /// record sent before this call has settled.
    pub async fn flush(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        loop {
            let reroutes = self.shared.reroutes.load(SeqCst);
            let mut acks = Vec::new();
            {
                let routing = self.shared.read_routing();
                for worker in routing.workers.values() {
                    let (tx, rx) = oneshot::channel();
                    {
                        let mut st = worker.core.lock();
                        let upto = st.unsettled.flush(tx);
                        st.force(upto);
                    }
                    worker.core.wake.notify_one();
                    acks.push(rx);
                }
            }
            for ack in acks {
                let _ = ack.await;
            }
            // A re-routing that started meanwhile (it counts itself first, under the write
            // lock) is waited out, and the records it moved are waited for once more.
            self.shared.rerouting_done().await;
            if self.shared.reroutes.load(SeqCst) == reroutes {
                return;
            }
        }
    }

    /// Sends what is queued, waits for every record to settle, and stops the workers.
    pub async fn close(self) {
        self.flush().await;
        self.shared.rerouting_done().await;
        let handles = {
            let mut routing = self.shared.write_routing();
            for worker in routing.workers.values() {
                let _ = worker.ctrl.send(Ctrl::Close);
            }
            std::mem::take(&mut routing.handles)
        };
        for worker in handles {
            if let Err(e) = worker.await {
                if e.is_panic() {
                    std::panic::resume_unwind(e.into_panic());
                }
            }
        }
    }
}

impl Shared {
    /// The routing table, to read (never held across an await).
    fn read_routing(&self) -> RwLockReadGuard<'_, Routing> {
        // (Nothing under the lock runs the caller's code; a panic there is a bug in this
        // module, and the table is still whole.)
        self.routing.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The routing table, to change (never held across an await).
    fn write_routing(&self) -> RwLockWriteGuard<'_, Routing> {
        self.routing.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Returns once no re-routing is under way.
    async fn rerouting_done(&self) {
        loop {
            let opened = {
                let routing = self.read_routing();
                if !routing.rerouting {
                    return;
                }
                self.rerouted.notified()
            };
            opened.await;
        }
    }

    /// Starts the worker of `core` if there is none.
    fn add_worker(&self, routing: &mut Routing, core: u16) {
        if routing.workers.contains_key(&core) {
            return;
        }
        let (ctrl, ctrl_rx) = mpsc::unbounded_channel();
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(CoreShared {
            state: Mutex::new(CoreState {
                shards: HashMap::new(),
                unsettled: Unsettled::default(),
                force_upto: 0,
                maybe_due: Vec::new(),
                timers: BinaryHeap::new(),
                sleep_until: None,
                held: 0,
                closed: false,
                stopped: false,
            }),
            wake: Notify::new(),
            room: Notify::new(),
            budget: self.budget.clone(),
        });
        let worker = CoreWorker {
            client: self.client.clone(),
            stream: self.stream.clone(),
            core,
            config: self.config,
            shared: shared.clone(),
            ctrl: ctrl_rx,
            ctrl_done: false,
            done_tx,
            done_rx,
            refresh: self.refresh.clone(),
            inflight: 0,
            releases: Vec::new(),
        };
        routing.workers.insert(core, Worker { core: shared, ctrl });
        routing.handles.push(tokio::spawn(worker.run()));
    }

    /// Moves to routes of at least shard-map `version`: with new records held back (write
    /// lock), every worker gives back the records of shards the new table closed, once
    /// their batches in flight have settled; they go to the shards that own their keys now,
    /// in the order they were sent, ahead of anything sent later.
    async fn reroute(&self, map: Arc<ShardMap>) {
        // Only the refresher task re-routes, one map at a time.
        let (closed, asked) = {
            let mut routing = self.write_routing();
            if map.map_version <= routing.map.map_version {
                return;
            }
            debug_assert!(!routing.rerouting, "one re-routing at a time");
            routing.rerouting = true;
            self.reroutes
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let closed: Vec<u32> = routing
                .map
                .routes()
                .iter()
                .map(|r| r.shard_id)
                .filter(|id| !map.routes().iter().any(|r| r.shard_id == *id))
                .collect();
            for r in map.routes() {
                self.add_worker(&mut routing, r.core);
            }
            let mut asked = Vec::new();
            for worker in routing.workers.values() {
                let (tx, rx) = oneshot::channel();
                let release = Ctrl::Release {
                    closed: closed.clone(),
                    reply: tx,
                };
                if worker.ctrl.send(release).is_ok() {
                    asked.push(rx);
                }
            }
            (closed, asked)
        };
        // The gate is closed: the workers answer without the lock held. (If this future is
        // dropped or panics before it opens the gate again, `reopen` does, so that no sender
        // waits for ever.)
        let mut reopen = Reopen {
            shared: self,
            armed: true,
        };
        let mut released = Vec::new();
        for rx in asked {
            released.extend(rx.await.unwrap_or_default());
        }
        // Each worker's records in the order they were queued there: a key's records are
        // all of one closed shard, so of one worker, and keep their order.
        released.sort_by_key(|i: &Item| i.order);
        tracing::debug!(stream = %self.stream, version = map.map_version, closed = ?closed, moved = released.len(), "producer re-routes after a reshard");
        let mut failed = Outcomes::default();
        {
            let mut routing = self.write_routing();
            routing.map = map;
            for item in released {
                let hash = item
                    .entry
                    .explicit_hash_key
                    .unwrap_or_else(|| cached_hash_key(item.entry.key.as_bytes()));
                let route = routing
                    .map
                    .index_for_hash(hash)
                    .map(|i| routing.map.routes()[i]);
                let worker = route.and_then(|r| routing.workers.get(&r.core));
                let (Some(route), Some(worker)) = (route, worker) else {
                    failed.push(
                        item.done,
                        item.cost,
                        Err(ClientError::protocol(
                            "no open shard covers the record's hash key",
                        )),
                    );
                    continue;
                };
                // Past the per-shard bound if need be: these were sent before anything
                // that waits for room.
                let mut st = worker.core.lock();
                if st.stopped {
                    drop(st);
                    failed.push(item.done, item.cost, Err(ClientError::Closed));
                    continue;
                }
                let Item {
                    entry, done, cost, ..
                } = item;
                let (wake, _) = st.enqueue(&self.config, route, entry.view(), done, cost);
                drop(st);
                if wake {
                    worker.core.wake.notify_one();
                }
            }
            // Open the gate: senders route by the new table, behind the moved records.
            routing.rerouting = false;
            reopen.armed = false;
        }
        self.rerouted.notify_waiters();
        failed.deliver(&self.budget);
    }
}

/// Opens the routing gate when dropped armed: a re-routing that ends early (a panic, or
/// its task dropped with the runtime) leaves senders routing by the old table, as they
/// would have after a failed refresh, instead of waiting for ever.
struct Reopen<'a> {
    shared: &'a Shared,
    armed: bool,
}

impl Drop for Reopen<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.shared.write_routing().rerouting = false;
            self.shared.rerouted.notify_waiters();
        }
    }
}

/// Serves the workers' requests for newer routes while the producer lives.
async fn refresher(shared: std::sync::Weak<Shared>, mut rx: mpsc::UnboundedReceiver<u64>) {
    while let Some(mut version) = rx.recv().await {
        while let Ok(more) = rx.try_recv() {
            version = version.max(more);
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.read_routing().map.map_version >= version {
            continue;
        }
        match shared
            .client
            .shard_map_at_least(&shared.stream, version)
            .await
        {
            Ok(map) => shared.reroute(map).await,
            Err(e) => {
                tracing::warn!(stream = %shared.stream, error = %e, "producer cannot get the routes after a reshard");
                let routing = shared.read_routing();
                for worker in routing.workers.values() {
                    worker.core.fail_held(e.clone());
                }
            }
        }
    }
}

/// A shard's batches waiting at its core.
struct ShardQueue {
    route: ShardRoute,
    /// Oldest first; records join the last one while it has room.
    batches: VecDeque<Pending>,
    /// Records in `batches`.
    records: usize,
    /// The size and records the last batch was sent with (a new batch starts with room
    /// for as much).
    last_batch_bytes: usize,
    last_batch_records: usize,
    /// A batch of this shard is in flight.
    busy: bool,
    /// A refused tail waits until then.
    retry_at: Option<Instant>,
    attempt: u32,
    /// Closed by a split or merge: held until the producer re-routes it.
    held: bool,
    /// The earliest of its entries in the worker's timer heap, if one is pending.
    timer: Option<Instant>,
}

impl ShardQueue {
    /// An empty queue for `route`.
    fn new(route: ShardRoute) -> ShardQueue {
        ShardQueue {
            route,
            batches: VecDeque::new(),
            records: 0,
            last_batch_bytes: 0,
            last_batch_records: 0,
            busy: false,
            retry_at: None,
            attempt: 0,
            held: false,
            timer: None,
        }
    }

    /// Puts the refused tail of a sent batch (its records from `skip` on) back at the front
    /// (its handles' records keep their places in the batch's slot).
    fn requeue(&mut self, sent: Sent, skip: usize, recs: Vec<Rec>) {
        if recs.is_empty() {
            return;
        }
        let (batch, count) = (&sent.batch, sent.count);
        let mut builder = BatchBuilder::with_capacity(batch.len());
        for r in RecordIter::new(batch, count as u32).skip(skip) {
            let r = r.expect("a batch the producer built");
            builder
                .push(r.key, r.data, r.explicit_hash_key)
                .expect("it fitted before");
        }
        self.records += recs.len();
        self.batches.push_front(Pending {
            builder,
            recs,
            first_at: Instant::now(),
            slot: sent.slot,
            handles: sent.handles,
        });
    }
}

/// Wakes the worker for shard `id` at `at`, unless an entry of it fires no later: the heap
/// holds about one entry per shard whatever the linger (a long linger with frequent
/// flushes would otherwise leave an entry per flush behind).
fn arm(timers: &mut BinaryHeap<Reverse<(Instant, u32)>>, q: &mut ShardQueue, id: u32, at: Instant) {
    if q.timer.is_none_or(|t| at < t) {
        q.timer = Some(at);
        timers.push(Reverse((at, id)));
    }
}

/// A core's batches, shared by the senders (who append records to them) and the core's
/// worker (which sends them and settles their records).
struct CoreShared {
    state: Mutex<CoreState>,
    /// Wakes the worker: a batch filled, a linger due before its sleep ends, a flush.
    wake: Notify,
    /// Wakes senders waiting for room in a shard's queue (a batch was taken).
    room: Notify,
    budget: Arc<Semaphore>,
}

impl CoreShared {
    fn lock(&self) -> MutexGuard<'_, CoreState> {
        // (Nothing under the lock runs the caller's code; a panic there is a bug in this
        // module, and the state is still consistent enough to fail records from.)
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fails the records held for closed shards (the new routes cannot be had).
    fn fail_held(&self, err: ClientError) {
        let mut out = Outcomes::default();
        {
            let mut st = self.lock();
            let held: Vec<u32> = st
                .shards
                .iter()
                .filter(|(_, q)| q.held && !q.busy)
                .map(|(id, _)| *id)
                .collect();
            for id in held {
                if let Some(q) = st.remove_shard(id) {
                    for p in q.batches {
                        for rec in &p.recs {
                            st.unsettled.settled(rec.local);
                        }
                        let failed = p.recs.into_iter().map(|rec| (rec, Err(err.clone())));
                        out.push_recs(p.slot.as_ref(), failed);
                    }
                }
            }
        }
        out.deliver(&self.budget);
        self.room.notify_waiters();
        // The worker answers flushes (and so `close`) that these settled records complete;
        // nothing else may wake it (a flush waiting on them hung).
        self.wake.notify_one();
    }
}

/// What a core's senders and its worker share.
struct CoreState {
    /// Queues by shard id.
    shards: HashMap<u32, ShardQueue>,
    /// Records queued or in flight here, and the flushes waiting for some of them.
    unsettled: Unsettled,
    /// Records queued here up to this `local` number go out without waiting out the
    /// linger (a flush asked).
    force_upto: u64,
    /// Shards that may have become due (a batch filled, a batch settled, a flush): looked
    /// at by the next `send_due`, so its work follows what changed, not the shard count
    /// (a producer may write to thousands of shards of a core).
    maybe_due: Vec<u32>,
    /// When waiting shards become due (linger or retry delay), earliest first; an entry
    /// may be stale (the shard went meanwhile): it is looked at and dropped.
    timers: BinaryHeap<Reverse<(Instant, u32)>>,
    /// Until when the worker sleeps (None: no timer): a sender whose batch's linger ends
    /// earlier wakes it.
    sleep_until: Option<Instant>,
    /// Shards held for a re-routing.
    held: usize,
    closed: bool,
    /// The worker has stopped (after a close, with nothing left): nothing queued here now
    /// would be sent.
    stopped: bool,
}

impl CoreState {
    /// Whether shard `id` has no room for another record (a held shard always has: its
    /// records are re-routed, not sent).
    fn full(&self, id: u32, max: usize) -> bool {
        self.shards
            .get(&id)
            .is_some_and(|q| !q.held && q.records >= max)
    }

    /// Appends a record to its shard's last batch, or to a new one when that is full (the
    /// copy into the batch is the one the wire format needs). Returns whether the worker
    /// must be woken: a batch became due, or a linger starts before the worker's sleep
    /// ends. A shard with a batch in flight is looked at when that settles.
    /// A record sent with a handle (`Settle::Handle`) gets it here, in its batch's slot.
    fn enqueue(
        &mut self,
        config: &ProducerConfig,
        route: ShardRoute,
        e: RecordView<'_>,
        done: Settle,
        cost: u32,
    ) -> (bool, Option<SendHandle>) {
        let local = self.unsettled.queued();
        // Queued after a close or a flush reached it (a re-routing's records): no linger.
        let forced = local <= self.force_upto;
        let id = route.shard_id;
        let add = e.encoded_len();
        let q = self
            .shards
            .entry(id)
            .or_insert_with(|| ShardQueue::new(route));
        let idle = !q.busy && !q.held && q.retry_at.is_none();
        let mut wake = false;
        // (Within the batch bounds is within the put limits: `start` clamps the bounds.)
        let joins = q.batches.back().is_some_and(|b| {
            b.builder.len() < config.batch_records_max
                && b.builder.encoded_len() + add <= config.batch_bytes_max
        });
        if !joins {
            if !q.batches.is_empty() && idle {
                // The last batch is full.
                self.maybe_due.push(id);
                wake = true;
            }
            let now = Instant::now();
            // Room for twice what the last batch took, up to a full batch: a buffer that
            // grows while it fills copies everything in it (a 256 KiB batch, or the
            // records' list, grown by one record past what the last one held).
            let bytes = (2 * q.last_batch_bytes)
                .clamp(4096, config.batch_bytes_max.max(4096))
                .max(BATCH_HEADER_LEN + add);
            let records = (2 * q.last_batch_records)
                .max(8)
                .min(config.batch_records_max as usize)
                .min(config.batch_bytes_max / add + 1);
            q.batches.push_back(Pending {
                builder: BatchBuilder::with_capacity(bytes),
                recs: Vec::with_capacity(records),
                first_at: now,
                slot: None,
                handles: 0,
            });
            if q.batches.len() == 1 && idle {
                // Its linger starts.
                let at = now + config.linger;
                wake |= self.sleep_until.is_none_or(|t| at < t);
                arm(&mut self.timers, q, id, at);
            }
        }
        let b = q.batches.back_mut().expect("a batch to join");
        b.builder
            .push(e.key.as_bytes(), e.data, e.explicit_hash_key)
            .expect("entry checked by send");
        let mut handle = None;
        let done = match done {
            Settle::Handle => {
                let slot = b.slot.get_or_insert_with(SlotWriter::new);
                let index = b.handles;
                b.handles += 1;
                handle = Some(SendHandle {
                    slot: slot.0.clone(),
                    index,
                });
                Settle::Own(index)
            }
            done => done,
        };
        b.recs.push(Rec { local, done, cost });
        q.records += 1;
        let filled = b.builder.len() >= config.batch_records_max
            || b.builder.encoded_len() >= config.batch_bytes_max;
        if (filled || forced) && idle {
            self.maybe_due.push(id);
            wake = true;
        }
        (wake, handle)
    }

    /// Records queued up to `upto` go out without waiting out the linger (rare: a flush or
    /// the close looks at every shard once).
    fn force(&mut self, upto: u64) {
        self.force_upto = self.force_upto.max(upto);
        self.maybe_due.extend(
            self.shards
                .iter()
                .filter(|(_, q)| q.records > 0)
                .map(|(id, _)| *id),
        );
    }

    /// Holds a shard closed by a split or merge until the producer re-routes its records.
    fn hold(&mut self, id: u32) {
        if let Some(q) = self.shards.get_mut(&id) {
            if !q.held {
                q.held = true;
                self.held += 1;
            }
        }
    }

    /// Takes a shard out (its records released or failed).
    fn remove_shard(&mut self, id: u32) -> Option<ShardQueue> {
        let q = self.shards.remove(&id)?;
        if q.held {
            self.held -= 1;
        }
        Some(q)
    }

    fn due(&self, config: &ProducerConfig, q: &ShardQueue, now: Instant) -> bool {
        if q.busy || q.held || q.retry_at.is_some_and(|t| t > now) {
            return false;
        }
        let Some(front) = q.batches.front() else {
            return false;
        };
        q.retry_at.is_some()
            || q.batches.len() > 1
            || front.builder.len() >= config.batch_records_max
            || front.builder.encoded_len() >= config.batch_bytes_max
            || front.first_at + config.linger <= now
            || front
                .recs
                .first()
                .is_some_and(|r| r.local <= self.force_upto)
    }

    /// Takes the shard's oldest batch to send.
    fn take_batch(&mut self, shard: u32) -> (Sent, Vec<Rec>) {
        let q = self.shards.get_mut(&shard).expect("due shard");
        let p = q.batches.pop_front().expect("a due shard has a batch");
        q.records -= p.recs.len();
        q.busy = true;
        let batch = p.builder.into_batch();
        q.last_batch_bytes = batch.len();
        q.last_batch_records = p.recs.len();
        let sent = Sent {
            shard,
            batch: Bytes::from(batch),
            count: p.recs.len(),
            slot: p.slot,
            handles: p.handles,
        };
        (sent, p.recs)
    }
}

/// A batch taken to be sent.
struct Sent {
    shard: u32,
    batch: Bytes,
    /// Its records.
    count: usize,
    /// Its slot and handle count (`Pending`'s), for its records' outcomes or its requeued
    /// tail.
    slot: Option<SlotWriter>,
    handles: u32,
}

/// What came back for one request: each shard's batch (its records and bytes) and the
/// answer for it.
struct Done {
    sent: Vec<(Sent, Vec<Rec>)>,
    answers: Vec<Result<PutBatchResponse>>,
}

/// One core's sending loop.
struct CoreWorker {
    client: Client,
    stream: String,
    core: u16,
    config: ProducerConfig,
    shared: Arc<CoreShared>,
    ctrl: mpsc::UnboundedReceiver<Ctrl>,
    /// Every sender of `ctrl` is gone (the producer was dropped).
    ctrl_done: bool,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,
    /// Where to ask for newer routes.
    refresh: mpsc::UnboundedSender<u64>,
    /// Requests in flight.
    inflight: usize,
    /// Releases waiting for batches of closed shards in flight.
    releases: Vec<(Vec<u32>, oneshot::Sender<Vec<Item>>)>,
}

impl CoreWorker {
    async fn run(mut self) {
        loop {
            let (deadline, holding, taken, failed) = {
                let shared = self.shared.clone();
                let mut st = shared.lock();
                let taken = self.send_due(&mut st);
                let failed = self.answer_releases(&mut st);
                st.unsettled.answer();
                if st.closed
                    && st.unsettled.count == 0
                    && self.inflight == 0
                    && self.releases.is_empty()
                {
                    st.stopped = true;
                    drop(st);
                    failed.deliver(&self.shared.budget);
                    return;
                }
                let deadline = st.timers.peek().map(|Reverse((t, _))| *t);
                st.sleep_until = deadline;
                (deadline, st.held > 0, taken, failed)
            };
            failed.deliver(&self.shared.budget);
            if taken {
                self.shared.room.notify_waiters();
            }
            let refresh = self.refresh.clone();
            tokio::select! {
                _ = self.shared.wake.notified() => {}
                // Read after a close too: a re-routing may still ask for held records.
                ctrl = self.ctrl.recv(), if !self.ctrl_done => self.handle(ctrl),
                Some(done) = self.done_rx.recv() => {
                    self.settle(done);
                    while let Ok(done) = self.done_rx.try_recv() {
                        self.settle(done);
                    }
                }
                _ = sleep_until(deadline), if deadline.is_some() => {}
                // The producer is gone: nobody will re-route what is held.
                _ = refresh.closed(), if holding => self.shared.fail_held(ClientError::Closed),
            }
        }
    }

    /// One request from the producer (`None`: the producer is gone).
    fn handle(&mut self, ctrl: Option<Ctrl>) {
        let shared = self.shared.clone();
        let mut st = shared.lock();
        match ctrl {
            Some(Ctrl::Release { closed, reply }) => {
                for id in &closed {
                    st.hold(*id);
                }
                self.releases.push((closed, reply));
            }
            Some(Ctrl::Close) => {
                st.closed = true;
                st.force(u64::MAX);
            }
            None => {
                self.ctrl_done = true;
                st.closed = true;
                st.force(u64::MAX);
            }
        }
    }

    /// Sends the batch of every shard that is due, one request per frame's worth (most
    /// often one). Returns whether it took any.
    fn send_due(&mut self, st: &mut CoreState) -> bool {
        let now = Instant::now();
        while let Some(&Reverse((t, id))) = st.timers.peek() {
            if t > now {
                break;
            }
            st.timers.pop();
            if let Some(q) = st.shards.get_mut(&id) {
                if q.timer == Some(t) {
                    q.timer = None;
                }
            }
            st.maybe_due.push(id);
        }
        if st.maybe_due.is_empty() {
            return false;
        }
        let mut looked = std::mem::take(&mut st.maybe_due);
        looked.sort_unstable();
        looked.dedup();
        let mut due = Vec::new();
        for id in looked {
            let Some(q) = st.shards.get(&id) else {
                continue;
            };
            if st.due(&self.config, q, now) {
                due.push(id);
            } else if !q.busy && !q.held && q.records > 0 {
                // Waiting: its deadline is ahead (a due one would have gone).
                let at = match q.retry_at {
                    Some(t) => t,
                    None => q.batches.front().expect("queued").first_at + self.config.linger,
                };
                let st = &mut *st;
                let q = st.shards.get_mut(&id).expect("looked up above");
                arm(&mut st.timers, q, id, at);
            }
            // (Busy: looked at again when its batch settles. Held: re-routed.)
        }
        if due.is_empty() {
            return false;
        }
        // Packed as `put_records` packs (all this worker's shards are on its core), but each
        // request settles its own records when it is answered.
        let mut taken: Vec<Option<(Sent, Vec<Rec>)>> = due
            .into_iter()
            .map(|shard| Some(st.take_batch(shard)))
            .collect();
        let packed = crate::put::pack_per_core(
            &self.client,
            taken
                .iter()
                .map(|t| (self.core, t.as_ref().map_or(0, |(s, _)| s.batch.len()))),
        );
        for (core, indices) in packed {
            let request: Vec<(Sent, Vec<Rec>)> = indices
                .iter()
                .map(|&i| taken[i].take().expect("each batch in one request"))
                .collect();
            self.inflight += 1;
            let client = self.client.clone();
            let stream = self.stream.clone();
            let parts: Vec<(ShardRoute, Bytes)> = request
                .iter()
                .map(|(s, _)| (st.shards[&s.shard].route, s.batch.clone()))
                .collect();
            let done_tx = self.done_tx.clone();
            tokio::spawn(async move {
                let answers = crate::put::send_packed(&client, &stream, core, &parts).await;
                let _ = done_tx.send(Done {
                    sent: request,
                    answers,
                });
            });
        }
        true
    }

    /// Resolves what a request's answer settled; a refused tail goes back to the front of
    /// its shard's queue after the retry delay.
    fn settle(&mut self, done: Done) {
        self.inflight -= 1;
        let policy = self.client.config().retry;
        let mut out = Outcomes::default();
        let mut gone = false;
        {
            let shared = self.shared.clone();
            let mut guard = shared.lock();
            let st = &mut *guard;
            for ((sent, recs), answer) in done.sent.into_iter().zip(done.answers) {
                let shard = sent.shard;
                st.maybe_due.push(shard);
                let q = st.shards.get_mut(&shard).expect("sent shard");
                q.busy = false;
                let count = recs.len();
                let (accepted, base_seq, err) = match answer {
                    Ok(r) if r.accepted as usize > count => (
                        0,
                        0,
                        Some(ClientError::protocol(format!(
                            "server accepted {} records of a batch of {count}",
                            r.accepted
                        ))),
                    ),
                    Ok(r) => {
                        let err = match r.rejected {
                            None if r.accepted as usize == count => None,
                            None => Some(ClientError::Server {
                                code: ErrorCode::Internal,
                                retry_after_ms: 0,
                                message: "the server accounted for only part of the batch".into(),
                            }),
                            Some(rej) => Some(ClientError::Server {
                                code: rej.code,
                                retry_after_ms: rej.retry_after_ms,
                                message: format!("shard {} refused the record", q.route.shard_id),
                            }),
                        };
                        (r.accepted as usize, r.base_seq, err)
                    }
                    Err(e) => (0, 0, Some(e)),
                };
                let mut recs = recs.into_iter();
                let shard_id = q.route.shard_id;
                let unsettled = &mut st.unsettled;
                out.push_recs(
                    sent.slot.as_ref(),
                    recs.by_ref().take(accepted).enumerate().map(|(i, rec)| {
                        unsettled.settled(rec.local);
                        let seq = base_seq + i as u64;
                        (rec, Ok(PutResult { shard_id, seq }))
                    }),
                );
                if accepted > 0 {
                    q.attempt = 0;
                }
                let Some(err) = err else {
                    q.retry_at = None;
                    continue;
                };
                let rest: Vec<Rec> = recs.collect();
                if let ClientError::ShardClosed {
                    shard_map_version, ..
                } = err
                {
                    // Split or merged: held at the front of the queue (nothing of it was
                    // stored) until the producer moves it to the shards that own its keys now.
                    tracing::debug!(
                        shard = q.route.shard_id,
                        version = shard_map_version,
                        "shard closed under the producer"
                    );
                    if !q.held {
                        q.held = true;
                        st.held += 1;
                    }
                    q.retry_at = None;
                    q.requeue(sent, accepted, rest);
                    if self.refresh.send(shard_map_version).is_err() {
                        // The producer is gone: nobody will re-route it.
                        gone = true;
                    }
                    continue;
                }
                if err.is_safe_to_retry() && q.attempt < policy.max_attempts {
                    tracing::debug!(shard = q.route.shard_id, attempt = q.attempt, error = %err, "retrying batch");
                    q.retry_at =
                        Some(Instant::now() + policy.delay(q.attempt, err.retry_after_ms()));
                    q.attempt += 1;
                    q.requeue(sent, accepted, rest);
                } else {
                    self.client.forget_on(&self.stream, &err);
                    q.retry_at = None;
                    q.attempt = 0;
                    for rec in &rest {
                        st.unsettled.settled(rec.local);
                    }
                    let failed = rest.into_iter().map(|rec| (rec, Err(err.clone())));
                    out.push_recs(sent.slot.as_ref(), failed);
                }
            }
        }
        out.deliver(&self.shared.budget);
        if gone {
            self.shared.fail_held(ClientError::Closed);
        }
    }

    /// Answers the releases whose shards have no batch in flight: their queued records, in
    /// send order.
    fn answer_releases(&mut self, st: &mut CoreState) -> Outcomes {
        let mut waiting = Vec::new();
        let mut failed = Outcomes::default();
        for (closed, reply) in std::mem::take(&mut self.releases) {
            let busy = closed
                .iter()
                .any(|id| st.shards.get(id).is_some_and(|q| q.busy));
            if busy {
                waiting.push((closed, reply));
                continue;
            }
            let mut items = Vec::new();
            for id in &closed {
                if let Some(q) = st.remove_shard(*id) {
                    for p in q.batches {
                        for rec in &p.recs {
                            st.unsettled.settled(rec.local);
                        }
                        items.extend(p.into_items());
                    }
                }
            }
            if let Err(items) = reply.send(items) {
                for item in items {
                    failed.push(item.done, item.cost, Err(ClientError::Closed));
                }
            }
        }
        self.releases = waiting;
        // (Records only when the producer stopped re-routing.)
        failed
    }
}

/// A worker's count of records queued or in flight (settled: answered, failed, or handed
/// back for a re-routing), and its flushes. Each record queued gets the next `local`
/// number; a flush waits for every record numbered up to the last one queued before it.
/// (Counts, not a set of ids: this is on every record's path.)
#[derive(Default)]
struct Unsettled {
    count: usize,
    /// The `local` number of the last record queued here.
    last: u64,
    /// Per flush: the last record it waits for, how many up to it are still unsettled,
    /// and who waits.
    flushes: Vec<(u64, usize, oneshot::Sender<()>)>,
}

impl Unsettled {
    /// Counts a record queued here; returns its `local` number.
    fn queued(&mut self) -> u64 {
        self.count += 1;
        self.last += 1;
        self.last
    }

    /// Counts the record numbered `local` settled.
    fn settled(&mut self, local: u64) {
        self.count -= 1;
        for (upto, left, _) in &mut self.flushes {
            if local <= *upto {
                *left -= 1;
            }
        }
    }

    /// A flush of every record queued so far; returns the last one's number.
    fn flush(&mut self, ack: oneshot::Sender<()>) -> u64 {
        self.flushes.push((self.last, self.count, ack));
        self.last
    }

    /// Answers the flushes none of whose records is unsettled any more.
    fn answer(&mut self) {
        if self.flushes.iter().all(|(_, left, _)| *left > 0) {
            return;
        }
        let (ready, waiting): (Vec<_>, Vec<_>) =
            self.flushes.drain(..).partition(|(_, left, _)| *left == 0);
        self.flushes = waiting;
        for (_, _, ack) in ready {
            let _ = ack.send(());
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flush_waits_for_the_records_queued_before_it_only() {
        let mut u = Unsettled::default();
        let a = u.queued();
        let b = u.queued();
        let (tx, mut rx) = oneshot::channel();
        assert_eq!(u.flush(tx), b);
        let c = u.queued(); // after the flush: not waited for
        u.settled(b);
        u.settled(c);
        u.answer();
        assert!(rx.try_recv().is_err(), "record {a} is still unsettled");
        let (tx2, mut rx2) = oneshot::channel();
        u.flush(tx2);
        u.settled(a);
        u.answer();
        assert!(rx.try_recv().is_ok());
        assert!(rx2.try_recv().is_ok());
        assert_eq!(u.count, 0);
        assert!(u.flushes.is_empty());
        // Nothing unsettled: a flush is answered at once.
        let (tx3, mut rx3) = oneshot::channel();
        u.flush(tx3);
        u.answer();
        assert!(rx3.try_recv().is_ok());
    }

    fn poll(h: &mut SendHandle) -> Poll<Result<PutResult>> {
        Pin::new(h).poll(&mut Context::from_waker(Waker::noop()))
    }

    fn rec(done: Settle) -> Rec {
        Rec {
            local: 0,
            done,
            cost: 1,
        }
    }

    /// A batch's handles share its slot: each resolves to its own outcome, a record moved
    /// to another shard (a re-routing) settles into the slot it was given, and a record
    /// nobody holds any more resolves to `Closed` once the last holder is gone.
    #[test]
    fn a_batchs_handles_share_its_slot_and_fail_closed_when_none_can_settle() {
        let ok = |seq| Ok(PutResult { shard_id: 4, seq });
        let writer = SlotWriter::new();
        let mut h: Vec<SendHandle> = (0..3)
            .map(|index| SendHandle {
                slot: writer.0.clone(),
                index,
            })
            .collect();
        assert!(poll(&mut h[0]).is_pending());
        // Record 2 was handed back for a re-routing; records 0 and 1 settle with the batch,
        // 1 failing.
        let moved = Settle::Slot(writer.clone(), 2);
        let budget = Semaphore::new(0);
        let mut out = Outcomes::default();
        out.push_recs(
            Some(&writer),
            [
                (rec(Settle::Own(0)), ok(7)),
                (rec(Settle::Own(1)), Err(ClientError::Closed)),
            ],
        );
        assert_eq!(out.cost, 2);
        out.deliver(&budget);
        assert_eq!(budget.available_permits(), 2);
        assert!(matches!(poll(&mut h[0]), Poll::Ready(Ok(r)) if r.seq == 7));
        assert!(matches!(
            poll(&mut h[1]),
            Poll::Ready(Err(ClientError::Closed))
        ));
        // The batch is gone; the moved record still holds the slot.
        drop(writer);
        assert!(poll(&mut h[2]).is_pending());
        moved.settle(ok(9));
        assert!(matches!(poll(&mut h[2]), Poll::Ready(Ok(r)) if r.seq == 9));

        // A batch dropped unsettled (its worker gone): its handles resolve to `Closed`.
        let writer = SlotWriter::new();
        let mut h = SendHandle {
            slot: writer.0.clone(),
            index: 0,
        };
        assert!(poll(&mut h).is_pending());
        drop(writer);
        assert!(matches!(
            poll(&mut h),
            Poll::Ready(Err(ClientError::Closed))
        ));
    }

    /// A server that answers a client's hello and nothing else: enough for a producer that
    /// never sends (a linger of an hour).
    async fn hello_only() -> String {
        use spate_protocol::{
            decode_frame, encode_response, CoreInfo, HelloResponse, Response,
            DEFAULT_MAX_FRAME_BYTES, PROTOCOL_VERSION,
        };
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let advertised = addr.clone();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let advertised = advertised.clone();
                tokio::spawn(async move {
                    let (mut buf, mut chunk) = (Vec::new(), vec![0u8; 4096]);
                    loop {
                        let n = match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(frame) = decode_frame(&buf, DEFAULT_MAX_FRAME_BYTES).unwrap()
                        {
                            let (len, id) = (frame.encoded_len(), frame.header.correlation_id);
                            let mut out = Vec::new();
                            let hello = HelloResponse {
                                protocol_version: PROTOCOL_VERSION,
                                max_frame_bytes: DEFAULT_MAX_FRAME_BYTES as u32,
                                cores: vec![CoreInfo {
                                    core_id: 0,
                                    address: &advertised,
                                }],
                                metrics_address: None,
                                auth_required: false,
                                principal: None,
                            };
                            encode_response(&mut out, id, &Response::Hello(hello));
                            socket.write_all(&out).await.unwrap();
                            buf.drain(..len);
                        }
                    }
                });
            }
        });
        addr
    }

    fn queued(producer: &Producer) -> usize {
        let routing = producer.shared.read_routing();
        let st = routing.workers[&0].core.lock();
        st.shards.get(&0).map_or(0, |q| q.records)
    }

    /// While a re-routing holds the gate, a send neither routes nor queues its record (it
    /// would go by the old table); once the gate opens (here: by the guard that opens it
    /// when a re-routing ends early), it goes.
    #[tokio::test]
    async fn a_send_waits_while_a_re_routing_holds_the_gate_and_goes_once_it_opens() {
        let client = Client::connect(hello_only().await).await.unwrap();
        let config = ProducerConfig {
            linger: Duration::from_secs(3600),
            ..ProducerConfig::default()
        };
        // One shard, on core 0, over the whole hash-key space.
        let map = ShardMap::from_description(&crate::routing::tests::description(1));
        let producer = Producer::start(client, "s", Arc::new(map), config);
        let mut first = std::pin::pin!(producer.send("k", b"1"));
        let cx = &mut Context::from_waker(Waker::noop());
        assert!(
            first.as_mut().poll(cx).is_ready(),
            "an open gate: queued at once"
        );
        assert_eq!(queued(&producer), 1);

        producer.shared.write_routing().rerouting = true;
        let mut second = std::pin::pin!(producer.send("k", b"2"));
        assert!(second.as_mut().poll(cx).is_pending());
        assert!(second.as_mut().poll(cx).is_pending());
        assert_eq!(
            queued(&producer),
            1,
            "nothing routed while the gate is closed"
        );

        // A re-routing that ends early opens the gate as it goes (its `Reopen` guard).
        drop(Reopen {
            shared: &producer.shared,
            armed: true,
        });
        tokio::time::timeout(Duration::from_secs(30), second)
            .await
            .expect("the send goes once the gate opens")
            .expect("queued");
        assert_eq!(queued(&producer), 2);
        // And `rerouting_done` (what a flush and a close wait for) sees it open.
        tokio::time::timeout(Duration::from_secs(30), producer.shared.rerouting_done())
            .await
            .expect("no re-routing under way");
    }

    #[test]
    fn what_a_queued_record_keeps_is_small() {
        // Order, budget share, and a handle's index or a callback: ARCHITECTURE.md's figure.
        assert_eq!(std::mem::size_of::<Rec>(), 40);
    }

    #[test]
    fn a_shard_keeps_one_timer_unless_an_earlier_one_is_asked() {
        let mut q = ShardQueue::new(ShardRoute {
            shard_id: 3,
            hash_key_start: 0,
            hash_key_end: u128::MAX,
            core: 0,
        });
        let mut timers = BinaryHeap::new();
        let t0 = Instant::now();
        let hour = Duration::from_secs(3600);
        // A long linger re-armed after every flush: still one entry.
        for i in 0..100 {
            arm(&mut timers, &mut q, 3, t0 + hour + Duration::from_millis(i));
        }
        assert_eq!(timers.len(), 1);
        assert_eq!(q.timer, Some(t0 + hour));
        // An earlier deadline (a retry) is armed at once.
        arm(&mut timers, &mut q, 3, t0 + Duration::from_millis(5));
        assert_eq!(timers.len(), 2);
        assert_eq!(
            timers.peek(),
            Some(&Reverse((t0 + Duration::from_millis(5), 3)))
        );
        assert_eq!(q.timer, Some(t0 + Duration::from_millis(5)));
    }
}
