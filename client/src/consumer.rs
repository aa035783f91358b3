//! Registered (push) consumers and [`Subscription`]s: records pushed by the server as soon
//! as they are durable, each consumer with its own read allowance per shard.
//!
//! A subscription travels on a connection of its own to the core owning the shard (so that
//! dropping it ends it on the server, and its events never queue behind other answers). The
//! server sends no more record bytes than the subscription has granted: `credit_bytes` at
//! the start, and the subscription grants back what it has handed to the caller once that
//! reaches half of it. A subscriber that stops calling [`Subscription::next`] therefore
//! holds at most `credit_bytes` on the server and in its own queue.
//!
//! A lost connection or a server restart is survived: the subscription subscribes again at
//! the continuation sequence number of the last event it handed out (nothing lost, nothing
//! repeated), with backoff, up to the client's retry policy.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use spate_protocol::consumer::{
    ConsumerRequest, CreditRequest, StreamRequest, SubscribeRequest, MAX_CREDIT_BYTES,
};
use spate_protocol::{encode_request, ErrorCode, Opcode, Request, Response};
use tokio::sync::mpsc;

use crate::client::{check_stream_name, Client, Position, Record, Target};
use crate::connection::{decode_reply, Connection};
use crate::error::{ClientError, Result};

/// A consumer registered on a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerInfo {
    pub name: String,
    pub consumer_id: u64,
    pub created_ms: i64,
}

/// How a [`Subscription`] asks for records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// Bytes of records the server may send ahead of what the caller has taken
    /// (1 B..=256 MiB; the server caps what it holds at its `max_subscription_credit_bytes`).
    pub credit_bytes: u32,
    /// Without any event (the server sends one at least every few seconds) for this long,
    /// the connection is taken for dead and the subscription starts again.
    pub silence_timeout: Duration,
}

impl Default for SubscribeOptions {
    /// 4 MiB of credit; 30 s of silence.
    fn default() -> Self {
        SubscribeOptions {
            credit_bytes: 4 << 20,
            silence_timeout: Duration::from_secs(30),
        }
    }
}

/// One pushed event, its batches verified end to end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionEvent {
    pub shard_id: u32,
    /// Possibly none: a heartbeat.
    pub records: Vec<Record>,
    /// Where the subscription stands: one past the last record it has delivered. Subscribe
    /// again `AtSequenceNumber` it to go on from here.
    pub continuation_seq: u64,
    pub millis_behind_latest: u64,
    /// The shard is closed and every record of it was delivered: the last event.
    pub ended: bool,
    /// With `ended`: the shards that took over its keys.
    pub child_shards: Vec<u32>,
}

/// The least credit a server holds for a subscription: its `max_subscription_credit_bytes`
/// is at least this (`engine::config`).
const SERVER_CREDIT_FLOOR_BYTES: u64 = 1 << 20;

impl Client {
    async fn consumer_call(&self, req: &Request<'_>, expect: Opcode) -> Result<Bytes> {
        let frame = self.request(Target::Bootstrap, req, 0).await?;
        decode_reply(&frame, Some(expect))?;
        Ok(frame)
    }

    /// Registers `consumer` on `stream` (at most 20 per stream by default).
    pub async fn register_consumer(&self, stream: &str, consumer: &str) -> Result<ConsumerInfo> {
        check_names(stream, consumer)?;
        let req = Request::RegisterConsumer(ConsumerRequest { stream, consumer });
        let frame = self.consumer_call(&req, Opcode::RegisterConsumer).await?;
        match decode_reply(&frame, None)? {
            Response::RegisterConsumer(c) => Ok(info(&c)),
            _ => unreachable!("checked"),
        }
    }

    /// Removes `consumer` from `stream`; its subscriptions end.
    pub async fn deregister_consumer(&self, stream: &str, consumer: &str) -> Result<()> {
        check_names(stream, consumer)?;
        let req = Request::DeregisterConsumer(ConsumerRequest { stream, consumer });
        self.consumer_call(&req, Opcode::DeregisterConsumer).await?;
        Ok(())
    }

    pub async fn describe_consumer(&self, stream: &str, consumer: &str) -> Result<ConsumerInfo> {
        check_names(stream, consumer)?;
        let req = Request::DescribeConsumer(ConsumerRequest { stream, consumer });
        let frame = self.consumer_call(&req, Opcode::DescribeConsumer).await?;
        match decode_reply(&frame, None)? {
            Response::DescribeConsumer(c) => Ok(info(&c)),
            _ => unreachable!("checked"),
        }
    }

    /// The consumers registered on `stream`, by name.
    pub async fn list_consumers(&self, stream: &str) -> Result<Vec<ConsumerInfo>> {
        check_stream_name(stream)?;
        let req = Request::ListConsumers(StreamRequest { stream });
        let frame = self.consumer_call(&req, Opcode::ListConsumers).await?;
        match decode_reply(&frame, None)? {
            Response::ListConsumers(l) => Ok(l.consumers.iter().map(info).collect()),
            _ => unreachable!("checked"),
        }
    }

    /// Subscribes registered `consumer` to `shard_id` of `stream` from `position`; see
    /// [`Subscription`]. Fails here if the stream, shard or consumer does not exist.
    pub async fn subscribe(
        &self,
        stream: &str,
        consumer: &str,
        shard_id: u32,
        position: Position,
        options: SubscribeOptions,
    ) -> Result<Subscription> {
        check_names(stream, consumer)?;
        if options.credit_bytes == 0 || options.credit_bytes > MAX_CREDIT_BYTES {
            return Err(ClientError::invalid(
                ErrorCode::InvalidArgument,
                "credit_bytes must be 1 B..=256 MiB",
            ));
        }
        let mut sub = Subscription {
            client: self.clone(),
            stream: stream.to_string(),
            consumer: consumer.to_string(),
            shard_id,
            position,
            options,
            live: None,
            continuation: None,
            ended: false,
            consumed: 0,
            pending_end: None,
            replaced: None,
        };
        sub.open().await?;
        Ok(sub)
    }
}

fn info(c: &spate_protocol::consumer::ConsumerDescription<'_>) -> ConsumerInfo {
    ConsumerInfo {
        name: c.name.to_string(),
        consumer_id: c.consumer_id,
        created_ms: c.created_ms,
    }
}

fn check_names(stream: &str, consumer: &str) -> Result<()> {
    check_stream_name(stream)?;
    if spate_protocol::consumer::is_valid_name(consumer) {
        Ok(())
    } else {
        Err(ClientError::invalid(
            ErrorCode::InvalidArgument,
            format!("invalid consumer name {consumer:?}: use 1..=128 characters of [a-zA-Z0-9_.-]"),
        ))
    }
}

/// The subscription's connection and the channel its events arrive on.
struct Live {
    conn: Arc<Connection>,
    id: u64,
    events: mpsc::UnboundedReceiver<Result<Bytes>>,
}

/// Records of one shard pushed to a registered consumer; see the module docs.
pub struct Subscription {
    client: Client,
    stream: String,
    consumer: String,
    shard_id: u32,
    position: Position,
    options: SubscribeOptions,
    live: Option<Live>,
    /// The last event's continuation sequence number.
    continuation: Option<u64>,
    ended: bool,
    /// Bytes handed to the caller since credit was last granted back.
    consumed: u64,
    /// The shard's end, when the server answered the subscription with it.
    pending_end: Option<SubscriptionEvent>,
    /// A newer subscription of the consumer to the shard took over: every later call
    /// answers this (subscribing again would take the shard back from it).
    replaced: Option<ClientError>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("stream", &self.stream)
            .field("consumer", &self.consumer)
            .field("shard_id", &self.shard_id)
            .field("continuation", &self.continuation)
            .field("ended", &self.ended)
            .finish()
    }
}

impl Subscription {
    pub fn shard_id(&self) -> u32 {
        self.shard_id
    }

    /// One past the last record delivered (`None` before the first event).
    pub fn continuation_seq(&self) -> Option<u64> {
        self.continuation
    }

    /// Subscribes (again): at the continuation sequence number once there is one.
    async fn open(&mut self) -> Result<()> {
        let core = self
            .client
            .shard_map(&self.stream)
            .await?
            .core_of(self.shard_id);
        let conn = Arc::new(self.client.dedicated_connection(core).await?);
        let position = match self.continuation {
            Some(seq) => Position::AtSequenceNumber { seq },
            None => self.position,
        };
        let req = Request::SubscribeToShard(SubscribeRequest {
            stream: &self.stream,
            consumer: &self.consumer,
            shard_id: self.shard_id,
            position,
            credit_bytes: self.options.credit_bytes,
        });
        let (id, mut events) = conn
            .open_stream(|out, id| encode_request(out, id, &req))
            .await?;
        // The server answers a subscription at once: an empty event saying where it
        // starts, or the error that refused it (unknown consumer, shard ...).
        let timeout = self.client.config().request_timeout;
        let frame = match tokio::time::timeout(timeout, events.recv()).await {
            Ok(Some(Ok(frame))) => frame,
            Ok(Some(Err(e))) => return Err(e),
            Ok(None) => return Err(ClientError::Closed),
            Err(_) => {
                return Err(ClientError::Timeout {
                    addr: format!("subscription to shard {}", self.shard_id),
                    timeout_ms: timeout.as_millis() as u64,
                })
            }
        };
        let (first, _) = self.decode(&frame)?;
        self.continuation = Some(first.continuation_seq);
        self.consumed = 0;
        if first.ended {
            self.pending_end = Some(first);
            return Ok(());
        }
        self.live = Some(Live { conn, id, events });
        Ok(())
    }

    /// The next event: records (or a heartbeat), or the shard's end. `None` after the
    /// shard's end was delivered. Once replaced by a newer subscription of the consumer to
    /// the shard (`SubscriptionReplaced`), that error every time.
    pub async fn next(&mut self) -> Result<Option<SubscriptionEvent>> {
        if let Some(e) = &self.replaced {
            return Err(e.clone());
        }
        let result = self.next_event().await;
        if let Err(e) = &result {
            if e.code() == Some(ErrorCode::SubscriptionReplaced) {
                self.replaced = Some(e.clone());
            }
        }
        result
    }

    async fn next_event(&mut self) -> Result<Option<SubscriptionEvent>> {
        let policy = self.client.config().retry;
        let mut attempt = 0u32;
        while !self.ended {
            if let Some(end) = self.pending_end.take() {
                self.ended = true;
                return Ok(Some(end));
            }
            if self.live.is_none() {
                if let Err(e) = self.open().await {
                    if retryable(&e) && attempt < policy.max_attempts {
                        tokio::time::sleep(policy.delay(attempt, e.retry_after_ms())).await;
                        attempt += 1;
                        continue;
                    }
                    return Err(e);
                }
            }
            let live = self.live.as_mut().expect("open");
            let got = tokio::time::timeout(self.options.silence_timeout, live.events.recv()).await;
            let frame = match got {
                Ok(Some(Ok(frame))) => frame,
                Ok(Some(Err(e))) => {
                    self.live = None;
                    if retryable(&e) && attempt < policy.max_attempts {
                        tokio::time::sleep(policy.delay(attempt, e.retry_after_ms())).await;
                        attempt += 1;
                        continue;
                    }
                    return Err(e);
                }
                Ok(None) | Err(_) => {
                    // The connection went quiet or the stream of events ended without its
                    // last event: start again where we stand.
                    self.live = None;
                    if attempt < policy.max_attempts {
                        attempt += 1;
                        continue;
                    }
                    return Err(ClientError::Closed);
                }
            };
            let (event, batch_bytes) = match self.decode(&frame) {
                Ok(decoded) => decoded,
                Err(e) => {
                    self.live = None;
                    if retryable(&e) && attempt < policy.max_attempts {
                        tokio::time::sleep(policy.delay(attempt, e.retry_after_ms())).await;
                        attempt += 1;
                        continue;
                    }
                    return Err(e);
                }
            };
            self.continuation = Some(event.continuation_seq);
            if event.ended {
                self.ended = true;
                self.live = None;
            } else {
                // Exactly what the server counted against the credit: the stored batches.
                self.grant(batch_bytes);
            }
            return Ok(Some(event));
        }
        Ok(None)
    }

    /// Grants credit back once half of it has been handed out: half of what the server
    /// surely holds, which caps `credit_bytes` at its `max_subscription_credit_bytes` (1 MiB
    /// at least). Half of a larger credit than the server took was never reached: the
    /// server, out of credit, went silent until the silence timeout (30 s) reconnected.
    fn grant(&mut self, bytes: u64) {
        self.consumed += bytes;
        let half = u64::from(self.options.credit_bytes).min(SERVER_CREDIT_FLOOR_BYTES) / 2;
        if self.consumed < half.max(1) {
            return;
        }
        let grant = self.consumed.min(u64::from(MAX_CREDIT_BYTES)) as u32;
        self.consumed = 0;
        let Some(live) = &self.live else { return };
        let conn = live.conn.clone();
        let subscription = live.id;
        let timeout = self.client.config().request_timeout;
        tokio::spawn(async move {
            let req = Request::SubscribeCredit(CreditRequest {
                subscription,
                bytes: grant,
            });
            // A grant that fails means the connection failed: the subscription sees that.
            let _ = conn
                .call(
                    |out, id| encode_request(out, id, &req),
                    Bytes::new(),
                    timeout,
                )
                .await;
        });
    }

    /// The event, and the bytes of its stored batches (what the server charges to credit).
    fn decode(&self, frame: &Bytes) -> Result<(SubscriptionEvent, u64)> {
        let Response::SubscribeToShard(e) = decode_reply(frame, Some(Opcode::SubscribeToShard))?
        else {
            unreachable!("decode_reply checked the opcode")
        };
        let mut records = Vec::new();
        for r in e.records() {
            let r = r.map_err(|err| ClientError::Protocol {
                code: err.code(),
                message: format!("a record batch failed its end-to-end check: {err}"),
            })?;
            let key = std::str::from_utf8(r.key)
                .map_err(|_| ClientError::protocol("a record's partition key is not UTF-8"))?;
            records.push(Record {
                seq: r.seq,
                ts_ms: r.arrival_ts_ms,
                key: key.to_string(),
                data: frame.slice_ref(r.data),
                explicit_hash_key: r.explicit_hash_key,
            });
        }
        let event = SubscriptionEvent {
            shard_id: self.shard_id,
            records,
            continuation_seq: e.head.continuation_seq,
            millis_behind_latest: e.head.millis_behind_latest,
            ended: e.head.ended,
            child_shards: e.head.child_shards.to_vec(),
        };
        Ok((event, e.batches.as_bytes().len() as u64))
    }
}

/// Worth subscribing again: the connection failed, or the server refused for now.
fn retryable(e: &ClientError) -> bool {
    e.is_retryable()
        || matches!(
            e,
            ClientError::ConnectionLost { .. }
                | ClientError::Connect { .. }
                | ClientError::Timeout { .. }
                | ClientError::Closed
        )
}
