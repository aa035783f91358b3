//! The [`Producer`]: aggregates records per shard into batches, like the Kinesis Producer
//! Library's collection, with bounded buffering and per-key order.
//!
//! Each open shard of the stream has one worker task and one bounded queue. `send` routes
//! the record, waits for room (backpressure: a byte budget shared by the whole producer and
//! a record bound per shard queue), queues it, and returns a [`SendHandle`] that resolves
//! once the record is acknowledged or has failed. A worker takes the first queued record,
//! then keeps collecting until the batch reaches `batch_bytes_max` or 500 records, or
//! `linger` has passed since its first record, and puts the batch.
//!
//! Ordering: a worker has exactly one batch in flight; it sends the next only after the
//! previous one is fully settled (its throttled tail retried to completion or failed). So
//! a partition key's acknowledged records are stored in the order they were sent, at the
//! cost of one round trip per batch per shard; records queue (bounded) meanwhile and go out
//! together in the next batch. Batches of different shards are in flight at once,
//! pipelined on one connection per core.
//!
//! Failure: a record whose batch fails for good (after the retries of
//! [`crate::RetryPolicy`]) resolves to the error; the worker goes on with the next batch.
//! Dropping the producer without [`Producer::close`] still sends what was queued.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::routing::cached_hash_key;
use bytes::Bytes;
use spate_protocol::batch::{MAX_BATCH_BYTES, MAX_RECORDS_PER_BATCH};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::client::Client;
use crate::error::{ClientError, Result};
use crate::put::{check_entry, put_to_shard, Entry, PutResult};
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
    /// Records queued per shard, beyond which `send` waits.
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
    entry: Entry,
    done: oneshot::Sender<Result<PutResult>>,
    /// The record's share of the byte budget, returned when the record settles.
    _budget: OwnedSemaphorePermit,
}

enum Msg {
    Record(Item),
    /// Answered once every record queued before it has settled.
    Flush(oneshot::Sender<()>),
}

/// Aggregates records into per-shard batches; see the module docs.
pub struct Producer {
    stream: String,
    map: Arc<ShardMap>,
    config: ProducerConfig,
    queues: Vec<mpsc::Sender<Msg>>,
    budget: Arc<Semaphore>,
    workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("stream", &self.stream)
            .field("shards", &self.queues.len())
            .field("config", &self.config)
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
    /// A producer for `stream`, routing by the stream's current shards.
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
        let mut queues = Vec::new();
        let mut workers = Vec::new();
        for route in map.routes() {
            let (tx, rx) = mpsc::channel(config.queued_records_max_per_shard);
            queues.push(tx);
            let worker = ShardWorker {
                client: client.clone(),
                stream: stream.to_string(),
                map: map.clone(),
                route: *route,
                config,
                rx,
                carry: None,
            };
            workers.push(tokio::spawn(worker.run()));
        }
        Producer {
            stream: stream.to_string(),
            map,
            config,
            queues,
            budget: Arc::new(Semaphore::new(config.buffered_bytes_max)),
            workers,
        }
    }

    /// Queues a record, waiting while the producer's buffers are full. The returned handle
    /// resolves when the record is acknowledged or has failed. Fails at once for a record
    /// the engine would refuse (key length, data size).
    pub async fn send(&self, key: impl Into<String>, data: impl Into<Bytes>) -> Result<SendHandle> {
        self.send_entry(Entry::new(key, data)).await
    }

    /// As [`Producer::send`], for an [`Entry`] (which may carry an explicit hash key).
    pub async fn send_entry(&self, entry: Entry) -> Result<SendHandle> {
        check_entry(&self.map, &entry)?;
        let hash = entry
            .explicit_hash_key
            .unwrap_or_else(|| cached_hash_key(entry.key.as_bytes()));
        let shard = self
            .map
            .index_for_hash(hash)
            .ok_or_else(|| ClientError::protocol("no open shard covers the record's hash key"))?;
        let cost = (entry.key.len() + entry.data.len()).clamp(1, self.config.buffered_bytes_max);
        let budget = self
            .budget
            .clone()
            .acquire_many_owned(cost as u32)
            .await
            .map_err(|_| ClientError::Closed)?;
        let (done, rx) = oneshot::channel();
        let item = Item {
            entry,
            done,
            _budget: budget,
        };
        self.queues[shard]
            .send(Msg::Record(item))
            .await
            .map_err(|_| ClientError::Closed)?;
        Ok(SendHandle { rx })
    }

    /// Sends everything queued now (without waiting out the linger) and waits until every
    /// record sent before this call has settled.
    pub async fn flush(&self) {
        let mut acks = Vec::with_capacity(self.queues.len());
        for queue in &self.queues {
            let (tx, rx) = oneshot::channel();
            if queue.send(Msg::Flush(tx)).await.is_ok() {
                acks.push(rx);
            }
        }
        for ack in acks {
            let _ = ack.await;
        }
    }

    /// Sends what is queued, waits for every record to settle, and stops the workers.
    pub async fn close(self) {
        let Producer {
            queues, workers, ..
        } = self;
        drop(queues);
        for worker in workers {
            if let Err(e) = worker.await {
                if e.is_panic() {
                    std::panic::resume_unwind(e.into_panic());
                }
            }
        }
    }
}

/// One shard's batching loop.
struct ShardWorker {
    client: Client,
    stream: String,
    map: Arc<ShardMap>,
    route: ShardRoute,
    config: ProducerConfig,
    rx: mpsc::Receiver<Msg>,
    /// A record that did not fit the previous batch: the first of the next.
    carry: Option<Item>,
}

impl ShardWorker {
    async fn run(mut self) {
        loop {
            let first = match self.carry.take() {
                Some(item) => item,
                None => match self.rx.recv().await {
                    Some(Msg::Record(item)) => item,
                    Some(Msg::Flush(ack)) => {
                        let _ = ack.send(());
                        continue;
                    }
                    None => return,
                },
            };
            let (items, flushes) = self.collect(first).await;
            self.put(items).await;
            for ack in flushes {
                let _ = ack.send(());
            }
        }
    }

    /// Collects a batch starting with `first`, until it is full, the linger has passed, a
    /// flush is asked for or the producer is closed.
    async fn collect(&mut self, first: Item) -> (Vec<Item>, Vec<oneshot::Sender<()>>) {
        let deadline = Instant::now() + self.config.linger;
        let mut bytes = first.entry.key.len() + first.entry.data.len();
        let mut items = vec![first];
        let mut flushes = Vec::new();
        while items.len() < self.config.batch_records_max as usize
            && bytes < self.config.batch_bytes_max
        {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(Msg::Record(item))) => {
                    let size = item.entry.key.len() + item.entry.data.len();
                    if bytes + size > self.config.batch_bytes_max {
                        self.carry = Some(item);
                        break;
                    }
                    bytes += size;
                    items.push(item);
                }
                Ok(Some(Msg::Flush(ack))) => {
                    flushes.push(ack);
                    break;
                }
                Ok(None) | Err(_) => break,
            }
        }
        (items, flushes)
    }

    async fn put(&self, items: Vec<Item>) {
        let (entries, dones): (Vec<Entry>, Vec<_>) = items
            .into_iter()
            .map(|item| (item.entry, (item.done, item._budget)))
            .unzip();
        let results = put_to_shard(
            &self.client,
            &self.stream,
            &self.map,
            &self.route,
            &entries,
            MAX_BATCH_BYTES,
        )
        .await;
        for ((done, _budget), result) in dones.into_iter().zip(results) {
            let _ = done.send(result);
        }
    }
}
