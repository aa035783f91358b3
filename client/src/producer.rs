//! The [`Producer`]: aggregates records per shard into batches, like the Kinesis Producer
//! Library's collection, with bounded buffering and per-key order.
//!
//! One worker task per engine core. `send` routes the record, waits for room (backpressure:
//! a byte budget shared by the whole producer), and hands it to its core's worker, which
//! queues it under its shard and returns a [`SendHandle`] that resolves once the record is
//! acknowledged or has failed ([`Producer::send_with`] calls back with the outcome instead,
//! on the worker, saving a future and its waiter per record). A shard's queued records
//! become a batch when they reach `batch_bytes_max` or `batch_records_max`, or `linger`
//! after the first of them (the worker looks only at shards that may have become due: a
//! batch filled, a batch settled, a timer, a flush); the worker sends every batch that is
//! ready at the same moment in one request (PutBatches), so a producer writing to
//! thousands of shards of a core sends about one request per linger, not one per shard.
//!
//! Ordering: a shard has at most one batch in flight; its next batch is built only after the
//! previous one settled, and a throttled tail goes back to the front of its shard's queue
//! (after the retry delay), so a partition key's acknowledged records are stored in the
//! order they were sent. Different shards' batches are in flight at once, in one or more
//! requests, pipelined on one connection per core.
//!
//! Resharding: a batch refused with `ShardClosed` (its shard was split or merged; nothing of
//! it was stored) is held at the front of its queue, and the producer asks for routes of at
//! least the shard-map version the error named. It then swaps its routing table under a
//! write lock (no record is routed meanwhile): every worker gives back the records of the
//! shards the new table closed, once their batches in flight have settled, and they are
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
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::routing::cached_hash_key;
use bytes::Bytes;
use spate_protocol::batch::{BatchBuilder, MAX_BATCH_BYTES, MAX_RECORDS_PER_BATCH};
use spate_protocol::{ErrorCode, PutBatchResponse};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::client::Client;
use crate::error::{ClientError, Result};
use crate::put::{check_entry, Entry, PutResult};
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
    /// Records on their way to a core's worker, beyond which `send` waits.
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

struct Item {
    id: u64,
    /// The order it was queued in at its current worker (flushes count by it).
    local: u64,
    entry: Entry,
    done: Settle,
    /// The record's share of the byte budget, returned when the record settles.
    _budget: OwnedSemaphorePermit,
}

/// How a record's outcome reaches its sender: a [`SendHandle`] or a callback.
enum Settle {
    Handle(oneshot::Sender<Result<PutResult>>),
    Callback(Box<dyn FnOnce(Result<PutResult>) + Send>),
}

impl Settle {
    fn settle(self, outcome: Result<PutResult>) {
        match self {
            Settle::Handle(tx) => {
                let _ = tx.send(outcome);
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

enum Msg {
    /// A record for this shard.
    Record(ShardRoute, Item),
    /// Answered once every record queued before it has settled.
    Flush(oneshot::Sender<()>),
    /// The shards were closed by a split or merge: answer every record queued for them (in
    /// send order), once none of their batches is in flight.
    Release {
        closed: Vec<u32>,
        reply: oneshot::Sender<Vec<Item>>,
    },
    /// The new routes could not be had: fail the records held for closed shards.
    FailHeld(ClientError),
    /// Send what is queued and stop once everything has settled.
    Close,
}

/// The routing table and the workers it routes to; replaced as a whole when a split or
/// merge closes a shard (under the write lock, so no record is routed meanwhile).
struct Routing {
    map: Arc<ShardMap>,
    workers: BTreeMap<u16, mpsc::Sender<Msg>>,
    handles: Vec<JoinHandle<()>>,
}

struct Shared {
    client: Client,
    stream: String,
    config: ProducerConfig,
    routing: tokio::sync::RwLock<Routing>,
    budget: Arc<Semaphore>,
    next_id: std::sync::atomic::AtomicU64,
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

/// Resolves to a sent record's outcome.
#[derive(Debug)]
pub struct SendHandle {
    rx: oneshot::Receiver<Result<PutResult>>,
}

impl Future for SendHandle {
    type Output = Result<PutResult>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(ClientError::Closed)))
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
            batch_bytes_max: config.batch_bytes_max.min(MAX_BATCH_BYTES),
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
            routing: tokio::sync::RwLock::new(Routing {
                map: map.clone(),
                workers: BTreeMap::new(),
                handles: Vec::new(),
            }),
            budget: Arc::new(Semaphore::new(config.buffered_bytes_max)),
            next_id: std::sync::atomic::AtomicU64::new(1),
            reroutes: std::sync::atomic::AtomicU64::new(0),
            refresh,
        });
        {
            let mut routing = shared.routing.try_write().expect("nobody else has it yet");
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
    pub async fn send(&self, key: impl Into<String>, data: impl Into<Bytes>) -> Result<SendHandle> {
        self.send_entry(Entry::new(key, data)).await
    }

    /// As [`Producer::send`], for an [`Entry`] (which may carry an explicit hash key).
    pub async fn send_entry(&self, entry: Entry) -> Result<SendHandle> {
        let (done, rx) = oneshot::channel();
        self.queue(entry, Settle::Handle(done)).await?;
        Ok(SendHandle { rx })
    }

    /// As [`Producer::send`], but the record's outcome goes to `on_settled` instead of a
    /// handle: no future per record, so a producer sending millions of records a second
    /// spends less per record (Kafka's `send(record, callback)`). `on_settled` runs on the
    /// producer's worker task as soon as the record is acknowledged or has failed: it must
    /// be quick and must not block (hand heavy work to a channel); a panic in it is caught
    /// and logged. Records of one partition key settle in the order they were sent.
    pub async fn send_with<F>(
        &self,
        key: impl Into<String>,
        data: impl Into<Bytes>,
        on_settled: F,
    ) -> Result<()>
    where
        F: FnOnce(Result<PutResult>) + Send + 'static,
    {
        self.send_entry_with(Entry::new(key, data), on_settled)
            .await
    }

    /// As [`Producer::send_with`], for an [`Entry`] (which may carry an explicit hash key).
    pub async fn send_entry_with<F>(&self, entry: Entry, on_settled: F) -> Result<()>
    where
        F: FnOnce(Result<PutResult>) + Send + 'static,
    {
        self.queue(entry, Settle::Callback(Box::new(on_settled)))
            .await
    }

    /// Routes a record and queues it at its core's worker (waiting for room).
    async fn queue(&self, entry: Entry, done: Settle) -> Result<()> {
        let shared = &self.shared;
        let cost = (entry.key.len() + entry.data.len()).clamp(1, shared.config.buffered_bytes_max);
        let budget = shared
            .budget
            .clone()
            .acquire_many_owned(cost as u32)
            .await
            .map_err(|_| ClientError::Closed)?;
        let hash = entry
            .explicit_hash_key
            .unwrap_or_else(|| cached_hash_key(entry.key.as_bytes()));
        // Routed and queued under the read lock: a re-routing (write lock) sees every record
        // routed by the old table already at its worker.
        let routing = shared.routing.read().await;
        check_entry(&routing.map, &entry)?;
        let route = routing
            .map
            .index_for_hash(hash)
            .map(|i| routing.map.routes()[i])
            .ok_or_else(|| ClientError::protocol("no open shard covers the record's hash key"))?;
        let item = Item {
            id: shared
                .next_id
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            local: 0,
            entry,
            done,
            _budget: budget,
        };
        routing
            .workers
            .get(&route.core)
            .ok_or(ClientError::Closed)?
            .send(Msg::Record(route, item))
            .await
            .map_err(|_| ClientError::Closed)?;
        Ok(())
    }

    /// Sends everything queued now (without waiting out the linger) and waits until every
    /// record sent before this call has settled.
    pub async fn flush(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        loop {
            let reroutes = self.shared.reroutes.load(SeqCst);
            let mut acks = Vec::new();
            {
                let routing = self.shared.routing.read().await;
                for queue in routing.workers.values() {
                    let (tx, rx) = oneshot::channel();
                    if queue.send(Msg::Flush(tx)).await.is_ok() {
                        acks.push(rx);
                    }
                }
            }
            for ack in acks {
                let _ = ack.await;
            }
            // A re-routing that started meanwhile (it counts itself first, under the write
            // lock) is waited out, and the records it moved are waited for once more.
            drop(self.shared.routing.read().await);
            if self.shared.reroutes.load(SeqCst) == reroutes {
                return;
            }
        }
    }

    /// Sends what is queued, waits for every record to settle, and stops the workers.
    pub async fn close(self) {
        self.flush().await;
        let handles = {
            let mut routing = self.shared.routing.write().await;
            for queue in routing.workers.values() {
                let _ = queue.send(Msg::Close).await;
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
    /// Starts the worker of `core` if there is none.
    fn add_worker(&self, routing: &mut Routing, core: u16) {
        if routing.workers.contains_key(&core) {
            return;
        }
        let (tx, rx) = mpsc::channel(self.config.queued_records_max_per_shard);
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let worker = CoreWorker {
            client: self.client.clone(),
            stream: self.stream.clone(),
            core,
            config: self.config,
            rx,
            done_tx,
            done_rx,
            refresh: self.refresh.clone(),
            shards: HashMap::new(),
            inflight: 0,
            unsettled: Unsettled::default(),
            releases: Vec::new(),
            force_upto: 0,
            maybe_due: Vec::new(),
            timers: BinaryHeap::new(),
            held: 0,
            closed: false,
            rx_done: false,
        };
        routing.workers.insert(core, tx);
        routing.handles.push(tokio::spawn(worker.run()));
    }

    /// Moves to routes of at least shard-map `version`: with new records held back (write
    /// lock), every worker gives back the records of shards the new table closed, once
    /// their batches in flight have settled; they go to the shards that own their keys now,
    /// in the order they were sent, ahead of anything sent later.
    async fn reroute(&self, map: Arc<ShardMap>) {
        let mut routing = self.routing.write().await;
        if map.map_version <= routing.map.map_version {
            return;
        }
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
        let mut released = Vec::new();
        for queue in routing.workers.values() {
            let (tx, rx) = oneshot::channel();
            let asked = Msg::Release {
                closed: closed.clone(),
                reply: tx,
            };
            if queue.send(asked).await.is_ok() {
                released.extend(rx.await.unwrap_or_default());
            }
        }
        released.sort_by_key(|i: &Item| i.id);
        tracing::debug!(stream = %self.stream, version = map.map_version, closed = ?closed, moved = released.len(), "producer re-routes after a reshard");
        routing.map = map;
        for item in released {
            let hash = item
                .entry
                .explicit_hash_key
                .unwrap_or_else(|| cached_hash_key(item.entry.key.as_bytes()));
            let Some(route) = routing
                .map
                .index_for_hash(hash)
                .map(|i| routing.map.routes()[i])
            else {
                item.done.settle(Err(ClientError::protocol(
                    "no open shard covers the record's hash key",
                )));
                continue;
            };
            if let Some(queue) = routing.workers.get(&route.core) {
                if let Err(mpsc::error::SendError(Msg::Record(_, item))) =
                    queue.send(Msg::Record(route, item)).await
                {
                    item.done.settle(Err(ClientError::Closed));
                }
            }
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
        if shared.routing.read().await.map.map_version >= version {
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
                let routing = shared.routing.read().await;
                for queue in routing.workers.values() {
                    let _ = queue.send(Msg::FailHeld(e.clone())).await;
                }
            }
        }
    }
}

/// A shard's records waiting at its core's worker.
struct ShardQueue {
    route: ShardRoute,
    queue: VecDeque<Item>,
    /// Key and data bytes queued.
    bytes: usize,
    /// When the oldest queued record arrived (the linger runs from it).
    first_at: Option<Instant>,
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
            queue: VecDeque::new(),
            bytes: 0,
            first_at: None,
            busy: false,
            retry_at: None,
            attempt: 0,
            held: false,
            timer: None,
        }
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

/// What came back for one request: each shard's batch (its items, how many records) and
/// the answer for it.
struct Done {
    sent: Vec<(u32, Vec<Item>)>,
    answers: Vec<Result<PutBatchResponse>>,
}

/// Messages a worker takes at once before it looks at its batches again.
const DRAIN_MAX: usize = 256;

/// One core's batching loop.
struct CoreWorker {
    client: Client,
    stream: String,
    core: u16,
    config: ProducerConfig,
    rx: mpsc::Receiver<Msg>,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,
    /// Where to ask for newer routes.
    refresh: mpsc::UnboundedSender<u64>,
    /// Queues by shard id.
    shards: HashMap<u32, ShardQueue>,
    /// Requests in flight.
    inflight: usize,
    /// Records queued or in flight here, and the flushes waiting for some of them.
    unsettled: Unsettled,
    /// Releases waiting for batches of closed shards in flight.
    releases: Vec<(Vec<u32>, oneshot::Sender<Vec<Item>>)>,
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
    /// Shards held for a re-routing.
    held: usize,
    closed: bool,
    /// Every sender is gone.
    rx_done: bool,
}

impl CoreWorker {
    async fn run(mut self) {
        loop {
            self.send_due();
            self.answer_releases();
            self.answer_flushes();
            if self.closed
                && self.unsettled.count == 0
                && self.inflight == 0
                && self.releases.is_empty()
            {
                return;
            }
            let deadline = self.next_deadline();
            let holding = self.held > 0;
            let refresh = self.refresh.clone();
            tokio::select! {
                // Read after a close too: a re-routing may still ask for held records.
                msg = self.rx.recv(), if !self.rx_done => {
                    self.handle(msg);
                    // What else is queued, up to a bound, before the batches are looked
                    // at again: one pass over the shards and one timer per burst of
                    // records, not per record.
                    for _ in 0..DRAIN_MAX {
                        match self.rx.try_recv() {
                            Ok(msg) => self.handle(Some(msg)),
                            Err(mpsc::error::TryRecvError::Empty) => break,
                            Err(mpsc::error::TryRecvError::Disconnected) => {
                                self.handle(None);
                                break;
                            }
                        }
                    }
                }
                Some(done) = self.done_rx.recv() => {
                    self.settle(done);
                    while let Ok(done) = self.done_rx.try_recv() {
                        self.settle(done);
                    }
                }
                _ = sleep_until(deadline), if deadline.is_some() => {}
                // The producer is gone: nobody will re-route what is held.
                _ = refresh.closed(), if holding => self.fail_held(ClientError::Closed),
            }
        }
    }

    /// One message from the producer (`None`: every sender is gone).
    fn handle(&mut self, msg: Option<Msg>) {
        match msg {
            Some(Msg::Record(route, item)) => self.enqueue(route, item),
            Some(Msg::Flush(ack)) => {
                let upto = self.unsettled.flush(ack);
                self.force(upto);
            }
            Some(Msg::Release { closed, reply }) => {
                for id in &closed {
                    self.hold(*id);
                }
                self.releases.push((closed, reply));
            }
            Some(Msg::FailHeld(e)) => self.fail_held(e),
            Some(Msg::Close) => {
                self.closed = true;
                self.force(u64::MAX);
            }
            None => {
                self.rx_done = true;
                self.closed = true;
                self.force(u64::MAX);
            }
        }
    }

    /// Records queued up to `upto` go out without waiting out the linger (rare: a flush or
    /// the close looks at every shard once).
    fn force(&mut self, upto: u64) {
        self.force_upto = self.force_upto.max(upto);
        self.maybe_due.extend(
            self.shards
                .iter()
                .filter(|(_, q)| !q.queue.is_empty())
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

    fn enqueue(&mut self, route: ShardRoute, mut item: Item) {
        let q = self
            .shards
            .entry(route.shard_id)
            .or_insert_with(|| ShardQueue::new(route));
        item.local = self.unsettled.queued();
        // Queued after a close (a re-routing's records): it goes without the linger.
        let forced = item.local <= self.force_upto;
        let before = q.bytes;
        q.bytes += item.entry.key.len() + item.entry.data.len();
        if q.first_at.is_none() {
            let now = Instant::now();
            q.first_at = Some(now);
            arm(
                &mut self.timers,
                q,
                route.shard_id,
                now + self.config.linger,
            );
        }
        q.queue.push_back(item);
        // A batch's worth now (counted once, when it is reached).
        let max_bytes = self.config.batch_bytes_max;
        if (before < max_bytes && q.bytes >= max_bytes)
            || q.queue.len() == self.config.batch_records_max as usize
            || forced
        {
            self.maybe_due.push(route.shard_id);
        }
    }

    /// The earliest moment a waiting shard becomes due (linger or retry delay).
    fn next_deadline(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _))| *t)
    }

    fn due(&self, q: &ShardQueue, now: Instant) -> bool {
        if q.busy || q.held || q.queue.is_empty() || q.retry_at.is_some_and(|t| t > now) {
            return false;
        }
        q.retry_at.is_some()
            || q.bytes >= self.config.batch_bytes_max
            || q.queue.len() >= self.config.batch_records_max as usize
            || q.first_at.is_some_and(|t| t + self.config.linger <= now)
            || q.queue.front().is_some_and(|i| i.local <= self.force_upto)
    }

    /// Builds a batch for every shard that is due and sends them, one request per frame's
    /// worth (most often one).
    fn send_due(&mut self) {
        let now = Instant::now();
        while let Some(&Reverse((t, id))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            if let Some(q) = self.shards.get_mut(&id) {
                if q.timer == Some(t) {
                    q.timer = None;
                }
            }
            self.maybe_due.push(id);
        }
        if self.maybe_due.is_empty() {
            return;
        }
        let mut looked = std::mem::take(&mut self.maybe_due);
        looked.sort_unstable();
        looked.dedup();
        let mut due = Vec::new();
        for id in looked {
            let Some(q) = self.shards.get(&id) else {
                continue;
            };
            if self.due(q, now) {
                due.push(id);
            } else if !q.busy && !q.held && !q.queue.is_empty() {
                // Waiting: its deadline is ahead (a due one would have gone).
                let at = match q.retry_at {
                    Some(t) => t,
                    None => q.first_at.expect("queued") + self.config.linger,
                };
                let q = self.shards.get_mut(&id).expect("looked up above");
                arm(&mut self.timers, q, id, at);
            }
            // (Busy: looked at again when its batch settles. Held: re-routed.)
        }
        if due.is_empty() {
            return;
        }
        // Packed as `put_records` packs (all this worker's shards are on its core), but each
        // request settles its own records when it is answered.
        let mut taken: Vec<Option<(u32, Vec<Item>, Bytes)>> = due
            .into_iter()
            .map(|shard| {
                let (items, batch) = self.take_batch(shard);
                Some((shard, items, batch))
            })
            .collect();
        let packed = crate::put::pack_per_core(
            &self.client,
            taken
                .iter()
                .map(|t| (self.core, t.as_ref().map_or(0, |(_, _, b)| b.len()))),
        );
        for (core, indices) in packed {
            let request: Vec<(u32, Vec<Item>, Bytes)> = indices
                .iter()
                .map(|&i| taken[i].take().expect("each batch in one request"))
                .collect();
            self.inflight += 1;
            let client = self.client.clone();
            let stream = self.stream.clone();
            let parts: Vec<(ShardRoute, Bytes)> = request
                .iter()
                .map(|(s, _, b)| (self.shards[s].route, b.clone()))
                .collect();
            let done_tx = self.done_tx.clone();
            tokio::spawn(async move {
                let answers = crate::put::send_packed(&client, &stream, core, &parts).await;
                let sent = request
                    .into_iter()
                    .map(|(s, items, _)| (s, items))
                    .collect();
                let _ = done_tx.send(Done { sent, answers });
            });
        }
    }

    /// Takes the longest prefix of a shard's queue that makes one batch (within the batch
    /// bounds; the first record always goes) and builds it.
    fn take_batch(&mut self, shard: u32) -> (Vec<Item>, Bytes) {
        let config = self.config;
        let q = self.shards.get_mut(&shard).expect("due shard");
        let mut b = BatchBuilder::with_capacity(
            q.bytes.min(config.batch_bytes_max) + 64 * q.queue.len().min(500),
        );
        let mut items = Vec::new();
        while let Some(item) = q.queue.front() {
            let e = &item.entry;
            let size = e.key.len() + e.data.len();
            let soft = !b.is_empty()
                && (b.encoded_len() + size > config.batch_bytes_max
                    || b.len() >= config.batch_records_max);
            if soft || !b.fits(e.key.len(), e.data.len(), e.explicit_hash_key.is_some()) {
                break;
            }
            // The copy into the batch is the one the wire format needs.
            b.push(e.key.as_bytes(), &e.data, e.explicit_hash_key)
                .expect("entry checked by send");
            q.bytes -= size;
            items.push(q.queue.pop_front().expect("front"));
        }
        assert!(
            !items.is_empty(),
            "a checked record always fits an empty batch"
        );
        q.busy = true;
        q.first_at = q.queue.front().map(|_| Instant::now());
        (items, Bytes::from(b.finish()))
    }

    /// Resolves what a request's answer settled; a refused tail goes back to the front of
    /// its shard's queue after the retry delay.
    fn settle(&mut self, done: Done) {
        self.inflight -= 1;
        let policy = self.client.config().retry;
        for ((shard, items), answer) in done.sent.into_iter().zip(done.answers) {
            self.maybe_due.push(shard);
            let q = self.shards.get_mut(&shard).expect("sent shard");
            q.busy = false;
            let count = items.len();
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
            let mut items = items.into_iter();
            for (i, item) in items.by_ref().take(accepted).enumerate() {
                self.unsettled.settled(item.local);
                item.done.settle(Ok(PutResult {
                    shard_id: q.route.shard_id,
                    seq: base_seq + i as u64,
                }));
            }
            if accepted > 0 {
                q.attempt = 0;
            }
            let Some(err) = err else {
                q.retry_at = None;
                continue;
            };
            let rest: Vec<Item> = items.collect();
            if let ClientError::ShardClosed {
                shard_map_version, ..
            } = err
            {
                // Split or merged: held at the front of the queue (nothing of it was stored)
                // until the producer moves it to the shards that own its keys now.
                tracing::debug!(
                    shard = q.route.shard_id,
                    version = shard_map_version,
                    "shard closed under the producer"
                );
                if !q.held {
                    q.held = true;
                    self.held += 1;
                }
                q.retry_at = None;
                for item in rest.into_iter().rev() {
                    q.bytes += item.entry.key.len() + item.entry.data.len();
                    q.queue.push_front(item);
                }
                if self.refresh.send(shard_map_version).is_err() {
                    self.fail_held(ClientError::Closed);
                }
                continue;
            }
            if err.is_safe_to_retry() && q.attempt < policy.max_attempts {
                tracing::debug!(shard = q.route.shard_id, attempt = q.attempt, error = %err, "retrying batch");
                q.retry_at = Some(Instant::now() + policy.delay(q.attempt, err.retry_after_ms()));
                q.attempt += 1;
                for item in rest.into_iter().rev() {
                    q.bytes += item.entry.key.len() + item.entry.data.len();
                    q.queue.push_front(item);
                }
                q.first_at.get_or_insert_with(Instant::now);
            } else {
                self.client.forget_on(&self.stream, &err);
                q.retry_at = None;
                q.attempt = 0;
                for item in rest {
                    self.unsettled.settled(item.local);
                    item.done.settle(Err(err.clone()));
                }
            }
        }
    }

    /// Answers the releases whose shards have no batch in flight: their queued records, in
    /// send order.
    fn answer_releases(&mut self) {
        let mut waiting = Vec::new();
        for (closed, reply) in std::mem::take(&mut self.releases) {
            let busy = closed
                .iter()
                .any(|id| self.shards.get(id).is_some_and(|q| q.busy));
            if busy {
                waiting.push((closed, reply));
                continue;
            }
            let mut items = Vec::new();
            for id in &closed {
                if let Some(q) = self.remove_shard(*id) {
                    for item in q.queue {
                        self.unsettled.settled(item.local);
                        items.push(item);
                    }
                }
            }
            if let Err(items) = reply.send(items) {
                for item in items {
                    item.done.settle(Err(ClientError::Closed));
                }
            }
        }
        self.releases = waiting;
    }

    /// Fails the records held for closed shards (the new routes cannot be had).
    fn fail_held(&mut self, err: ClientError) {
        let held: Vec<u32> = self
            .shards
            .iter()
            .filter(|(_, q)| q.held && !q.busy)
            .map(|(id, _)| *id)
            .collect();
        for id in held {
            if let Some(q) = self.remove_shard(id) {
                for item in q.queue {
                    self.unsettled.settled(item.local);
                    item.done.settle(Err(err.clone()));
                }
            }
        }
    }

    fn answer_flushes(&mut self) {
        self.unsettled.answer();
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
