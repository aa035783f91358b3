//! Fan-out: registered (push) consumers, subscriptions with credit-based flow control, and
//! consumer groups with leases and server-side checkpoints.
//!
//! ```text
//! RegisterConsumer 40   stream str, consumer str             -> ConsumerDescription
//! DeregisterConsumer 41 stream str, consumer str             -> (empty)
//! ListConsumers 42      stream str                           -> count, ConsumerDescription…
//! DescribeConsumer 43   stream str, consumer str             -> ConsumerDescription
//!   ConsumerDescription: name str, consumer_id u64, created_ms i64
//! SubscribeToShard 44   stream str, consumer str, shard_id u32, position, credit_bytes u32
//!                       -> SubscribeEvent frames with the subscription's correlation id:
//!                          every one but the last flagged MORE; the last is an event with
//!                          `ended` (the shard is closed and read to its end) or an error
//!   SubscribeEvent:     start_seq u64, continuation_seq u64, millis_behind_latest u64,
//!                       ended bool, child_shards (count, u32…), batch_count u32, batches
//! SubscribeCredit 45    subscription u64 (its correlation id), bytes u32  -> (empty)
//! GroupHeartbeat 50     stream str, group str, worker str, start position, leave bool
//!                       -> lease_timeout_ms u32, start position (where a shard without
//!                          a checkpoint is read from), count, Lease…
//!   Lease:              shard_id u32, epoch u64, checkpoint
//! Checkpoint 51         stream str, group str, worker str, shard_id u32, epoch u64,
//!                       checkpoint                           -> (empty)
//! DescribeGroup 52      stream str, group str                -> GroupDescription
//! DeleteGroup 53        stream str, group str                -> (empty)
//! ListGroups 54         stream str                           -> count, group str…
//!   checkpoint: tag u8 — 0 none, 1 after (then seq u64), 2 shard end
//! ```
//!
//! A subscription is one request answered many times: the server pushes an event as soon as
//! records are durable (or every few seconds with none, as a heartbeat), never more bytes of
//! records than the client has granted: `credit_bytes` at the start, plus every
//! `SubscribeCredit` since. The client grants credit back as it consumes, so a subscriber
//! that stops reading makes the server hold at most its outstanding credit.

use crate::message::Payload;
use crate::read::{get_position, put_position, BatchSlices, IteratorPosition, ShardIds};
use crate::stream::{get_stream_name, put_stream_name, MAX_SHARDS_DESCRIBED};
use crate::wire::{
    put_bool, put_count, put_i64, put_str, put_u32, put_u64, put_u8, DecodeError, Reader,
};

/// Consumer, group and worker names: 1..=128 bytes of `[a-zA-Z0-9_.-]`.
pub const MAX_NAME_BYTES: usize = 128;
/// Worker ids: 1..=256 bytes of printable ASCII without spaces (host names, pids, UUIDs).
pub const MAX_WORKER_BYTES: usize = 256;
/// Most credit one grant may carry (the server also caps what it holds per subscription).
pub const MAX_CREDIT_BYTES: u32 = 256 << 20;
/// Most consumers or groups one answer lists.
pub const MAX_LISTED: usize = 10_000;

/// Whether `name` is a valid consumer or group name.
pub fn is_valid_name(name: &str) -> bool {
    (1..=MAX_NAME_BYTES).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Whether `worker` is a valid worker id.
pub fn is_valid_worker(worker: &str) -> bool {
    (1..=MAX_WORKER_BYTES).contains(&worker.len()) && worker.bytes().all(|b| b.is_ascii_graphic())
}

fn get_name<'a>(r: &mut Reader<'a>, field: &'static str) -> Result<&'a str, DecodeError> {
    let name = r.str(MAX_NAME_BYTES, field)?;
    if !is_valid_name(name) {
        return Err(DecodeError::Invalid {
            field,
            reason: "must be 1..=128 characters of [a-zA-Z0-9_.-]",
        });
    }
    Ok(name)
}

fn get_worker<'a>(r: &mut Reader<'a>) -> Result<&'a str, DecodeError> {
    let worker = r.str(MAX_WORKER_BYTES, "worker")?;
    if !is_valid_worker(worker) {
        return Err(DecodeError::Invalid {
            field: "worker",
            reason: "must be 1..=256 printable ASCII characters without spaces",
        });
    }
    Ok(worker)
}

/// A request naming a stream and a consumer (register, deregister, describe).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerRequest<'a> {
    pub stream: &'a str,
    pub consumer: &'a str,
}

/// A request naming a stream only (list consumers, list groups).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamRequest<'a> {
    pub stream: &'a str,
}

/// A registered consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerDescription<'a> {
    pub name: &'a str,
    /// Unique on the server, never reused.
    pub consumer_id: u64,
    pub created_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListConsumersResponse<'a> {
    pub consumers: Vec<ConsumerDescription<'a>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscribeRequest<'a> {
    pub stream: &'a str,
    pub consumer: &'a str,
    pub shard_id: u32,
    pub position: IteratorPosition,
    /// Bytes of records the server may push before it hears of more credit (1..=256 MiB).
    pub credit_bytes: u32,
}

/// The fields of a pushed event before its batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscribeEventHead<'a> {
    pub start_seq: u64,
    /// Where the subscription goes on (one past the last record pushed): a subscriber that
    /// reconnects resumes at it, missing and repeating nothing.
    pub continuation_seq: u64,
    pub millis_behind_latest: u64,
    /// The shard is closed and every record of it was pushed: the last event.
    pub ended: bool,
    /// With `ended`: the shards that took over its keys.
    pub child_shards: ShardIds<'a>,
}

/// One pushed event: records (possibly none: a heartbeat) in stored batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscribeEvent<'a> {
    pub head: SubscribeEventHead<'a>,
    pub batches: BatchSlices<'a>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreditRequest {
    /// The correlation id of the subscribe request.
    pub subscription: u64,
    pub bytes: u32,
}

/// What a group has done with a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Checkpoint {
    /// Nothing yet: a worker starts at the group's start position.
    None,
    /// Every record up to and including `seq` is processed: a worker resumes after it.
    After { seq: u64 },
    /// The shard is closed and read to its end: its children may be leased.
    ShardEnd,
}

const CHECKPOINT_NONE: u8 = 0;
const CHECKPOINT_AFTER: u8 = 1;
const CHECKPOINT_SHARD_END: u8 = 2;

fn put_checkpoint(out: &mut Vec<u8>, c: Checkpoint) {
    match c {
        Checkpoint::None => put_u8(out, CHECKPOINT_NONE),
        Checkpoint::After { seq } => {
            put_u8(out, CHECKPOINT_AFTER);
            put_u64(out, seq);
        }
        Checkpoint::ShardEnd => put_u8(out, CHECKPOINT_SHARD_END),
    }
}

fn get_checkpoint(r: &mut Reader<'_>) -> Result<Checkpoint, DecodeError> {
    Ok(match r.u8("checkpoint")? {
        CHECKPOINT_NONE => Checkpoint::None,
        CHECKPOINT_AFTER => Checkpoint::After {
            seq: r.u64("checkpoint seq")?,
        },
        CHECKPOINT_SHARD_END => Checkpoint::ShardEnd,
        _ => {
            return Err(DecodeError::Malformed {
                field: "checkpoint",
                reason: "unknown tag",
            })
        }
    })
}

/// A worker's heartbeat: joins the group (creating it at `start` if it does not exist),
/// renews its leases and learns them; `leave` gives them up at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupHeartbeatRequest<'a> {
    pub stream: &'a str,
    pub group: &'a str,
    pub worker: &'a str,
    /// Where a new group starts in shards without a checkpoint: TRIM_HORIZON, LATEST or
    /// AT_TIMESTAMP (ignored once the group exists).
    pub start: IteratorPosition,
    pub leave: bool,
}

/// A shard leased to the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub shard_id: u32,
    /// Raised each time the shard changes hands; a checkpoint names it (fencing).
    pub epoch: u64,
    pub checkpoint: Checkpoint,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupHeartbeatResponse {
    /// A worker silent for this long loses its leases.
    pub lease_timeout_ms: u32,
    /// Where a leased shard without a checkpoint is read from: the group's start, a group
    /// from LATEST as AT_TIMESTAMP of its creation (whichever worker reads the shard).
    pub start: IteratorPosition,
    pub leases: Vec<Lease>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointRequest<'a> {
    pub stream: &'a str,
    pub group: &'a str,
    pub worker: &'a str,
    pub shard_id: u32,
    pub epoch: u64,
    pub checkpoint: Checkpoint,
}

/// A request naming a stream and a group (describe, delete).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupRequest<'a> {
    pub stream: &'a str,
    pub group: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListGroupsResponse<'a> {
    pub groups: Vec<&'a str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupMember<'a> {
    pub worker: &'a str,
    /// Milliseconds since its last heartbeat.
    pub idle_ms: u64,
    pub leases: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupShard<'a> {
    pub shard_id: u32,
    /// The worker holding the lease, if any.
    pub owner: Option<&'a str>,
    pub epoch: u64,
    pub checkpoint: Checkpoint,
    /// One past the shard's newest durable record.
    pub next_seq: u64,
    /// Records after the checkpoint (to `next_seq`).
    pub lag_records: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription<'a> {
    pub group: &'a str,
    pub start: IteratorPosition,
    pub created_ms: i64,
    pub lease_timeout_ms: u32,
    pub members: Vec<GroupMember<'a>>,
    pub shards: Vec<GroupShard<'a>>,
}

fn get_group_start(r: &mut Reader<'_>) -> Result<IteratorPosition, DecodeError> {
    let start = get_position(r)?;
    match start {
        IteratorPosition::TrimHorizon
        | IteratorPosition::Latest
        | IteratorPosition::AtTimestamp { .. } => Ok(start),
        _ => Err(DecodeError::Invalid {
            field: "start",
            reason: "a group starts at TRIM_HORIZON, LATEST or AT_TIMESTAMP",
        }),
    }
}

impl<'a> Payload<'a> for ConsumerRequest<'a> {
    fn encode_payload(&self, out: &mut Vec<u8>) {
        put_stream_name(out, self.stream);
        put_str(out, self.consumer);
    }

    fn decode_payload(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        Ok(ConsumerRequest {
            stream: get_stream_name(r)?,
            consumer: get_name(r, "consumer")?,
        })
    }
}

impl<'a> Payload<'a> for StreamRequest<'a> {
    fn encode_payload(&self, out: &mut Vec<u8>) {
        put_stream_name(out, self.stream);
    }

    fn decode_payload(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        Ok(StreamRequest {
            stream: get_stream_name(r)?,
        })
    }
}

impl<'a> Payload<'a> for ConsumerDescription<'a> {
    fn encode_payload(&self, out: &mut Vec<u8>) {
        put_str(out, self.name);
        put_u64(out, self.consumer_id);
        put_i64(out, self.created_ms);
    }

    fn decode_payload(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        Ok(ConsumerDescription {
            name: get_name(r, "consumer")?,
            consumer_id: r.u64("consumer_id")?,
            created_ms: r.i64("created_ms")?,
        })
    }
}

impl<'a> Payload<'a> for ListConsumersResponse<'a> {
    fn encode_payload(&self, out: &mut Vec<u8>) {
        put_count(out, self.consumers.len());
        for c in &self.consumers {
            c.encode_payload(out);
        }
    }

    fn decode_payload(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        // Name (2 bytes at least), id and time.
        let n = r.count(MAX_LISTED, 2 + 16, "consumers")?;
        let mut consumers = Vec::with_capacity(n);
        for _ in 0..n {
            consumers.push(ConsumerDescription::decode_payload(r)?);
        }
        Ok(ListConsumersResponse { consumers })
    }
}

impl<'a> Payload<'a> for SubscribeRequest<'a> {
    fn encode_payload(&self, out: &mut Vec<u8>) {
        put_stream_name(out, self.stream);
        put_str(out, self.consumer);
        put_u32(out, self.shard_id);
        put_position(out, self.position);
        put_u32(out, self.credit_bytes);
    }

    fn decode_payload(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let stream = get_stream_name(r)?;
        let consumer = get_name(r, "consumer")?;
        let shard_id = r.u32("shard_id")?;
        let position = get_position(r)?;
        let credit_bytes = get_credit(r)?;
        Ok(SubscribeRequest {
            stream,
            consumer,
            shard_id,
            position,
            credit_bytes,
        })
    }
}

fn get_credit(r: &mut Reader<'_>) -> Result<u32, DecodeError> {
    let bytes = r.u32("credit_bytes")?;
    if bytes == 0 || bytes > MAX_CREDIT_BYTES {
        return Err(DecodeError::Invalid {
            field: "credit_bytes",
            reason: "not in 1..=256 MiB",
        });
    }
    Ok(bytes)
}

fn put_event_head(out: &mut Vec<u8>, head: &SubscribeEventHead<'_>) {
    put_u64(out, head.start_seq);
    put_u64(out, head.continuation_seq);
    put_u64(out, head.millis_behind_latest);
    put_bool(out, head.ended);
    put_count(out, head.child_shards.len());
    out.extend_from_slice(head.child_shards.as_bytes());
}

impl<'a> Payload<'a> for SubscribeEvent<'a> {
    fn encode_payload(&self, out: &mut Vec<u8>) {
        put_event_head(out, &self.head);
        put_u32(out, self.batches.len());
        out.extend_from_slice(self.batches.as_bytes());
    }

    fn decode_payload(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let start_seq = r.u64("start_seq")?;
        let continuation_seq = r.u64("continuation_seq")?;
        if continuation_seq < start_seq {
            return Err(DecodeError::Malformed {
                field: "continuation_seq",
                reason: "below start_seq",
            });
        }
        let millis_behind_latest = r.u64("millis_behind_latest")?;
        let ended = r.bool("ended")?;
        let children = r.count(MAX_SHARDS_DESCRIBED, 4, "child_shards")?;
        let child_shards =
            ShardIds::from_bytes(r.take(children * 4, "child_shards")?).expect("whole ids");
        let count = r.u32("batch_count")?;
        let batches = BatchSlices::parse(r.rest(), count)?;
        Ok(SubscribeEvent {
            head: SubscribeEventHead {
                start_seq,
                continuation_seq,
                millis_behind_latest,
                ended,
                child_shards,
            },
            batches,
        })
    }
}

impl<'a> SubscribeEvent<'a> {
    /// The records of the event, each batch verified (both CRCs) as it is reached.
    pub fn records(&self) -> crate::read::Records<'a> {
        crate::read::Records::window(
            self.batches,
            self.head.start_seq,
            self.head.continuation_seq,
        )
    }
}

/// Appends the head of a subscribe event frame: everything but the batches, which follow
/// (`batch_count` whole stored batches, `batches_len` bytes). `more`: another event follows
/// for this subscription (flag MORE).
pub fn encode_subscribe_event_head(
    out: &mut Vec<u8>,
    correlation_id: u64,
    head: &SubscribeEventHead<'_>,
    batch_count: u32,
    batches_len: usize,
    more: bool,
) {
    use crate::frame::{begin_frame, finish_frame, Opcode, FLAG_MORE, FLAG_RESPONSE};
    let flags = if more {
        FLAG_RESPONSE | FLAG_MORE
    } else {
        FLAG_RESPONSE
    };
    let start = begin_frame(
        out,
        flags,
        Opcode::SubscribeToShard.as_u16(),
        correlation_id,
    );
    put_event_head(out, head);
    put_u32(out, batch_count);
    finish_frame(out, start, batches_len);
}

impl<'a> Payload<'a> for CreditRequest {
    fn encode_payload(&self, out: &mut Vec<u8>) {
        put_u64(out, self.subscription);
        put_u32(out, self.bytes);
    }

    fn decode_payload(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        Ok(CreditRequest {
            subscription: r.u64("subscription")?,
            bytes: get_credit(r)?,
        })
    }
}

impl<'a> Payload<'a> for GroupHeartbeatRequest<'a> {
    fn encode_payload(&self, out: &mut Vec<u8>) {
        put_stream_name(out, self.stream);
        put_str(out, self.group);
        put_str(out, self.worker);
        put_position(out, self.start);
        put_bool(out, self.leave);
    }

    fn decode_payload(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        Ok(GroupHeartbeatRequest {
            stream: get_stream_name(r)?,
            group: get_name(r, "group")?,
            worker: get_worker(r)?,
            start: get_group_start(r)?,
            leave: r.bool("leave")?,
        })
    }
}

impl<'a> Payload<'a> for GroupHeartbeatResponse {
    fn encode_payload(&self, out: &mut Vec<u8>) {
        put_u32(out, self.lease_timeout_ms);
        put_position(out, self.start);
        put_count(out, self.leases.len());
        for l in &self.leases {
            put_u32(out, l.shard_id);
            put_u64(out, l.epoch);
            put_checkpoint(out, l.checkpoint);
        }
    }

    fn decode_payload(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let lease_timeout_ms = r.u32("lease_timeout_ms")?;
        let start = get_group_start(r)?;
        let n = r.count(MAX_SHARDS_DESCRIBED, 13, "leases")?;
        let mut leases = Vec::with_capacity(n);
        for _ in 0..n {
            leases.push(Lease {
                shard_id: r.u32("shard_id")?,
                epoch: r.u64("epoch")?,
                checkpoint: get_checkpoint(r)?,
            });
        }
        Ok(GroupHeartbeatResponse {
            lease_timeout_ms,
            start,
            leases,
        })
    }
}

impl<'a> Payload<'a> for CheckpointRequest<'a> {
    fn encode_payload(&self, out: &mut Vec<u8>) {
        put_stream_name(out, self.stream);
        put_str(out, self.group);
        put_str(out, self.worker);
        put_u32(out, self.shard_id);
        put_u64(out, self.epoch);
        put_checkpoint(out, self.checkpoint);
    }

    fn decode_payload(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        Ok(CheckpointRequest {
            stream: get_stream_name(r)?,
            group: get_name(r, "group")?,
            worker: get_worker(r)?,
            shard_id: r.u32("shard_id")?,
            epoch: r.u64("epoch")?,
            checkpoint: get_checkpoint(r)?,
        })
    }
}

impl<'a> Payload<'a> for GroupRequest<'a> {
    fn encode_payload(&self, out: &mut Vec<u8>) {
        put_stream_name(out, self.stream);
        put_str(out, self.group);
    }

    fn decode_payload(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        Ok(GroupRequest {
            stream: get_stream_name(r)?,
            group: get_name(r, "group")?,
        })
    }
}

impl<'a> Payload<'a> for ListGroupsResponse<'a> {
    fn encode_payload(&self, out: &mut Vec<u8>) {
        put_count(out, self.groups.len());
        for g in &self.groups {
            put_str(out, g);
        }
    }

    fn decode_payload(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let n = r.count(MAX_LISTED, 2, "groups")?;
        let mut groups = Vec::with_capacity(n);
        for _ in 0..n {
            groups.push(get_name(r, "group")?);
        }
        Ok(ListGroupsResponse { groups })
    }
}

impl<'a> Payload<'a> for GroupDescription<'a> {
    fn encode_payload(&self, out: &mut Vec<u8>) {
        put_str(out, self.group);
        put_position(out, self.start);
        put_i64(out, self.created_ms);
        put_u32(out, self.lease_timeout_ms);
        put_count(out, self.members.len());
        for m in &self.members {
            put_str(out, m.worker);
            put_u64(out, m.idle_ms);
            put_u32(out, m.leases);
        }
        put_count(out, self.shards.len());
        for s in &self.shards {
            put_u32(out, s.shard_id);
            match s.owner {
                Some(w) => {
                    put_u8(out, 1);
                    put_str(out, w);
                }
                None => put_u8(out, 0),
            }
            put_u64(out, s.epoch);
            put_checkpoint(out, s.checkpoint);
            put_u64(out, s.next_seq);
            put_u64(out, s.lag_records);
        }
    }

    fn decode_payload(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let group = get_name(r, "group")?;
        let start = get_group_start(r)?;
        let created_ms = r.i64("created_ms")?;
        let lease_timeout_ms = r.u32("lease_timeout_ms")?;
        let n = r.count(MAX_LISTED, 2 + 12, "members")?;
        let mut members = Vec::with_capacity(n);
        for _ in 0..n {
            members.push(GroupMember {
                worker: get_worker(r)?,
                idle_ms: r.u64("idle_ms")?,
                leases: r.u32("leases")?,
            });
        }
        let n = r.count(MAX_SHARDS_DESCRIBED, 4 + 1 + 8 + 1 + 16, "shards")?;
        let mut shards = Vec::with_capacity(n);
        for _ in 0..n {
            let shard_id = r.u32("shard_id")?;
            let owner = if r.present("owner")? {
                Some(get_worker(r)?)
            } else {
                None
            };
            shards.push(GroupShard {
                shard_id,
                owner,
                epoch: r.u64("epoch")?,
                checkpoint: get_checkpoint(r)?,
                next_seq: r.u64("next_seq")?,
                lag_records: r.u64("lag_records")?,
            });
        }
        Ok(GroupDescription {
            group,
            start,
            created_ms,
            lease_timeout_ms,
            members,
            shards,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{stamp, BatchBuilder};
    use crate::frame::{decode_frame, DEFAULT_MAX_FRAME_BYTES, FLAG_MORE};
    use crate::message::testkit::{check_request, check_response};
    use crate::message::{decode_response, Request, Response};

    #[test]
    fn golden_consumer_requests() {
        let out = check_request(&Request::RegisterConsumer(ConsumerRequest {
            stream: "s",
            consumer: "c",
        }));
        #[rustfmt::skip]
        let expected = [
            20, 0, 0, 0,  1,  0,  40, 0,  1, 0, 0, 0, 0, 0xee, 0xff, 0xc0,
            1, b's',  // stream
            1, b'c',  // consumer
        ];
        assert_eq!(out, expected);
        let out = check_request(&Request::SubscribeToShard(SubscribeRequest {
            stream: "s",
            consumer: "c",
            shard_id: 3,
            position: IteratorPosition::AfterSequenceNumber { seq: 7 },
            credit_bytes: 1 << 20,
        }));
        #[rustfmt::skip]
        let expected = [
            37, 0, 0, 0,  1,  0,  44, 0,  1, 0, 0, 0, 0, 0xee, 0xff, 0xc0,
            1, b's',                    // stream
            1, b'c',                    // consumer
            3, 0, 0, 0,                 // shard_id
            3, 7, 0, 0, 0, 0, 0, 0, 0,  // position: AFTER_SEQUENCE_NUMBER 7
            0, 0, 0x10, 0,              // credit_bytes: 1 MiB
        ];
        assert_eq!(out, expected);
        let out = check_request(&Request::SubscribeCredit(CreditRequest {
            subscription: 9,
            bytes: 4096,
        }));
        #[rustfmt::skip]
        let expected = [
            28, 0, 0, 0,  1,  0,  45, 0,  1, 0, 0, 0, 0, 0xee, 0xff, 0xc0,
            9, 0, 0, 0, 0, 0, 0, 0,  // subscription
            0, 0x10, 0, 0,           // bytes
        ];
        assert_eq!(out, expected);
        for r in [
            Request::DeregisterConsumer(ConsumerRequest {
                stream: "s",
                consumer: "c",
            }),
            Request::DescribeConsumer(ConsumerRequest {
                stream: "s",
                consumer: "c",
            }),
            Request::ListConsumers(StreamRequest { stream: "s" }),
            Request::ListGroups(StreamRequest { stream: "s" }),
            Request::DescribeGroup(GroupRequest {
                stream: "s",
                group: "g",
            }),
            Request::DeleteGroup(GroupRequest {
                stream: "s",
                group: "g",
            }),
        ] {
            check_request(&r);
        }
    }

    #[test]
    fn golden_group_messages() {
        let out = check_request(&Request::GroupHeartbeat(GroupHeartbeatRequest {
            stream: "s",
            group: "g",
            worker: "w",
            start: IteratorPosition::TrimHorizon,
            leave: false,
        }));
        #[rustfmt::skip]
        let expected = [
            24, 0, 0, 0,  1,  0,  50, 0,  1, 0, 0, 0, 0, 0xee, 0xff, 0xc0,
            1, b's',  1, b'g',  1, b'w',  // stream, group, worker
            0,                            // start: TRIM_HORIZON
            0,                            // leave
        ];
        assert_eq!(out, expected);
        let out = check_request(&Request::Checkpoint(CheckpointRequest {
            stream: "s",
            group: "g",
            worker: "w",
            shard_id: 1,
            epoch: 2,
            checkpoint: Checkpoint::After { seq: 5 },
        }));
        #[rustfmt::skip]
        let expected = [
            43, 0, 0, 0,  1,  0,  51, 0,  1, 0, 0, 0, 0, 0xee, 0xff, 0xc0,
            1, b's',  1, b'g',  1, b'w',  // stream, group, worker
            1, 0, 0, 0,                   // shard_id
            2, 0, 0, 0, 0, 0, 0, 0,       // epoch
            1, 5, 0, 0, 0, 0, 0, 0, 0,    // checkpoint: after 5
        ];
        assert_eq!(out, expected);
        let out = check_response(&Response::GroupHeartbeat(GroupHeartbeatResponse {
            lease_timeout_ms: 6000,
            start: IteratorPosition::AtTimestamp { ts_ms: 9 },
            leases: vec![Lease {
                shard_id: 4,
                epoch: 1,
                checkpoint: Checkpoint::ShardEnd,
            }],
        }));
        #[rustfmt::skip]
        let expected = [
            43, 0, 0, 0,  1,  1,  50, 0,  42, 0, 0, 0, 0, 0, 0, 0,
            0x70, 0x17, 0, 0,         // lease_timeout_ms
            4, 9, 0, 0, 0, 0, 0, 0, 0, // start: at timestamp 9
            1,                        // one lease
            4, 0, 0, 0,               // shard_id
            1, 0, 0, 0, 0, 0, 0, 0,   // epoch
            2,                        // checkpoint: shard end
        ];
        assert_eq!(out, expected);
        check_response(&Response::DescribeGroup(GroupDescription {
            group: "g",
            start: IteratorPosition::AtTimestamp { ts_ms: 5 },
            created_ms: 7,
            lease_timeout_ms: 6000,
            members: vec![GroupMember {
                worker: "host-1:42",
                idle_ms: 10,
                leases: 2,
            }],
            shards: vec![
                GroupShard {
                    shard_id: 0,
                    owner: Some("host-1:42"),
                    epoch: 3,
                    checkpoint: Checkpoint::None,
                    next_seq: 10,
                    lag_records: 10,
                },
                GroupShard {
                    shard_id: 1,
                    owner: None,
                    epoch: 0,
                    checkpoint: Checkpoint::ShardEnd,
                    next_seq: 4,
                    lag_records: 0,
                },
            ],
        }));
        check_response(&Response::ListGroups(ListGroupsResponse {
            groups: vec!["a", "b"],
        }));
        check_response(&Response::ListConsumers(ListConsumersResponse {
            consumers: vec![ConsumerDescription {
                name: "c",
                consumer_id: 1,
                created_ms: 2,
            }],
        }));
        for r in [
            Response::Checkpoint,
            Response::DeleteGroup,
            Response::DeregisterConsumer,
            Response::SubscribeCredit,
        ] {
            check_response(&r);
        }
    }

    #[test]
    fn a_group_starts_only_where_a_group_can() {
        let mut out = Vec::new();
        crate::message::encode_request(
            &mut out,
            1,
            &Request::GroupHeartbeat(GroupHeartbeatRequest {
                stream: "s",
                group: "g",
                worker: "w",
                start: IteratorPosition::AtSequenceNumber { seq: 1 },
                leave: false,
            }),
        );
        let frame = decode_frame(&out, DEFAULT_MAX_FRAME_BYTES)
            .unwrap()
            .unwrap();
        let err = crate::message::decode_request(&frame).unwrap_err();
        assert_eq!(err.code(), crate::ErrorCode::InvalidArgument);
        assert!(!is_valid_worker("two words"));
        assert!(!is_valid_name("a/b"));
        assert!(is_valid_worker("host-1:4242/7"));
    }

    #[test]
    fn events_round_trip_with_their_records_and_the_more_flag() {
        let mut b = BatchBuilder::new();
        b.push(b"k", b"v", None).unwrap();
        let mut batch = b.finish();
        stamp(&mut batch, 10, 1_700_000_000_000, 1);
        let children = ShardIds::encode(&[5, 6]);
        let head = SubscribeEventHead {
            start_seq: 10,
            continuation_seq: 11,
            millis_behind_latest: 3,
            ended: true,
            child_shards: ShardIds::from_bytes(&children).unwrap(),
        };
        let mut out = Vec::new();
        encode_subscribe_event_head(&mut out, 77, &head, 1, batch.len(), true);
        out.extend_from_slice(&batch);
        let frame = decode_frame(&out, DEFAULT_MAX_FRAME_BYTES)
            .unwrap()
            .unwrap();
        assert_eq!(frame.header.flags & FLAG_MORE, FLAG_MORE);
        assert_eq!(frame.header.correlation_id, 77);
        let Ok(Response::SubscribeToShard(event)) = decode_response(&frame).unwrap() else {
            panic!("not an event")
        };
        assert_eq!(event.head, head);
        let records: Vec<_> = event.records().map(|r| r.unwrap()).collect();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].seq, 10);
        assert_eq!(records[0].data, b"v");
        // Re-encoded as a plain response, it is the same payload.
        let again = check_response(&Response::SubscribeToShard(event));
        assert_eq!(again[16..], out[16..]);
    }
}
