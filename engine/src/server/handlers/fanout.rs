//! Fan-out requests: registered consumers, subscriptions (one request answered by a stream
//! of pushed events), credit, and consumer groups.

use std::rc::Rc;
use std::time::{Duration, Instant};

use spate_protocol::consumer::{
    encode_subscribe_event_head, CheckpointRequest, ConsumerDescription, CreditRequest,
    GroupDescription, GroupHeartbeatRequest, GroupHeartbeatResponse, GroupMember, GroupShard,
    ListConsumersResponse, ListGroupsResponse, SubscribeEventHead, SubscribeRequest,
};
use spate_protocol::read::{IteratorPosition, ShardIds};
use spate_protocol::stream::ShardState;
use spate_protocol::Response;

use super::{
    fail, last_arrival_ms, locate, position_of, route, wait_data, Failure, MAX_READ_RECORDS,
};
use crate::error::EngineError;
use crate::fanout::ConsumerEntry;
use crate::io::Storage;
use crate::runtime::{call, call_read, Core, CoreMsg, FanoutAnswer, FanoutOp, ReadRequest};
use crate::server::transport::{ConnState, SubscriptionCredit};
use crate::store::ReadOutput;

/// Largest event: records are pushed in pieces of at most this many bytes (and never more
/// than the subscriber's credit).
const MAX_EVENT_BYTES: u64 = 1 << 20;

pub(super) async fn fanout_call<S: Storage + 'static>(
    core: &Core<S>,
    op: FanoutOp,
    changes: bool,
) -> Result<FanoutAnswer, Failure> {
    let peer = &core.peers[0];
    let answer = if changes {
        call(peer, |reply| CoreMsg::Fanout { op, reply }).await
    } else {
        call_read(peer, |reply| CoreMsg::Fanout { op, reply }).await
    };
    answer.map_err(fail)
}

fn described(c: &ConsumerEntry) -> ConsumerDescription<'_> {
    ConsumerDescription {
        name: &c.name,
        consumer_id: c.consumer_id,
        created_ms: c.created_ms,
    }
}

/// Register, deregister and describe: one consumer in, one description out.
pub(super) async fn consumer_op<S: Storage + 'static>(
    core: &Core<S>,
    cid: u64,
    op: FanoutOp,
    out: &mut Vec<u8>,
) -> Result<(), Failure> {
    let kind = match &op {
        FanoutOp::Register { .. } => 0,
        FanoutOp::Deregister { .. } => 1,
        _ => 2,
    };
    let FanoutAnswer::Consumer(c) = fanout_call(core, op, kind < 2).await? else {
        unreachable!("a consumer operation answers a consumer")
    };
    let response = match kind {
        0 => Response::RegisterConsumer(described(&c)),
        1 => Response::DeregisterConsumer,
        _ => Response::DescribeConsumer(described(&c)),
    };
    spate_protocol::encode_response(out, cid, &response);
    Ok(())
}

pub(super) async fn list_consumers<S: Storage + 'static>(
    core: &Core<S>,
    cid: u64,
    stream: &str,
    out: &mut Vec<u8>,
) -> Result<(), Failure> {
    let op = FanoutOp::ListConsumers {
        stream: stream.to_owned(),
    };
    let FanoutAnswer::Consumers(list) = fanout_call(core, op, false).await? else {
        unreachable!("a list answers consumers")
    };
    let consumers = list.iter().map(described).collect();
    let response = Response::ListConsumers(ListConsumersResponse { consumers });
    spate_protocol::encode_response(out, cid, &response);
    Ok(())
}

pub(super) fn credit(
    core: &Core<impl Storage>,
    conn: &ConnState,
    r: CreditRequest,
) -> Response<'static> {
    // A grant for a subscription that has just ended is no error: the two crossed.
    if let Some(c) = conn.subscriptions.borrow().get(&r.subscription) {
        let cap = core.cfg.max_subscription_credit_bytes.min(i64::MAX as u64) as i64;
        c.bytes.set((c.bytes.get() + i64::from(r.bytes)).min(cap));
        c.granted.notify_all();
    }
    Response::SubscribeCredit
}

pub(super) async fn heartbeat<S: Storage + 'static>(
    core: &Core<S>,
    cid: u64,
    r: GroupHeartbeatRequest<'_>,
    out: &mut Vec<u8>,
) -> Result<(), Failure> {
    let op = FanoutOp::Heartbeat {
        stream: r.stream.to_owned(),
        group: r.group.to_owned(),
        worker: r.worker.to_owned(),
        start: r.start,
        leave: r.leave,
    };
    let FanoutAnswer::Leases {
        timeout_ms,
        leases,
        start,
    } = fanout_call(core, op, true).await?
    else {
        unreachable!("a heartbeat answers leases")
    };
    let response = Response::GroupHeartbeat(GroupHeartbeatResponse {
        lease_timeout_ms: timeout_ms.min(u64::from(u32::MAX)) as u32,
        start,
        leases,
    });
    spate_protocol::encode_response(out, cid, &response);
    Ok(())
}

pub(super) async fn checkpoint<S: Storage + 'static>(
    core: &Core<S>,
    r: CheckpointRequest<'_>,
) -> Result<Response<'static>, Failure> {
    let op = FanoutOp::Checkpoint {
        stream: r.stream.to_owned(),
        group: r.group.to_owned(),
        worker: r.worker.to_owned(),
        shard_id: r.shard_id,
        epoch: r.epoch,
        checkpoint: r.checkpoint,
    };
    fanout_call(core, op, true).await?;
    Ok(Response::Checkpoint)
}

pub(super) async fn describe_group<S: Storage + 'static>(
    core: &Core<S>,
    cid: u64,
    stream: &str,
    group: &str,
    out: &mut Vec<u8>,
) -> Result<(), Failure> {
    let op = FanoutOp::DescribeGroup {
        stream: stream.to_owned(),
        group: group.to_owned(),
    };
    let FanoutAnswer::Group(view, next) = fanout_call(core, op, false).await? else {
        unreachable!("describe answers a group")
    };
    let shards = view
        .shards
        .iter()
        .zip(&next)
        .map(|(s, &(next_seq, lag_records))| GroupShard {
            shard_id: s.shard_id,
            owner: s.owner.as_deref(),
            epoch: s.epoch,
            checkpoint: s.checkpoint,
            next_seq,
            lag_records,
        })
        .collect();
    let members = view
        .members
        .iter()
        .map(|m| GroupMember {
            worker: &m.worker,
            idle_ms: m.idle_ms,
            leases: m.leases,
        })
        .collect();
    let response = Response::DescribeGroup(GroupDescription {
        group: &view.name,
        start: view.start.position(),
        created_ms: view.created_ms,
        lease_timeout_ms: core.cfg.group_lease_timeout_ms.min(u64::from(u32::MAX)) as u32,
        members,
        shards,
    });
    spate_protocol::encode_response(out, cid, &response);
    Ok(())
}

pub(super) async fn list_groups<S: Storage + 'static>(
    core: &Core<S>,
    cid: u64,
    stream: &str,
    out: &mut Vec<u8>,
) -> Result<(), Failure> {
    let op = FanoutOp::ListGroups {
        stream: stream.to_owned(),
    };
    let FanoutAnswer::Groups(groups) = fanout_call(core, op, false).await? else {
        unreachable!("a list answers groups")
    };
    let groups = groups.iter().map(String::as_str).collect();
    let response = Response::ListGroups(ListGroupsResponse { groups });
    spate_protocol::encode_response(out, cid, &response);
    Ok(())
}

/// Where a subscription starts: as an iterator would, except that `AT_SEQUENCE_NUMBER` may
/// name the shard's tip (a subscriber resuming at its continuation sequence number when
/// nothing came after it).
async fn start_seq<S: Storage + 'static>(
    core: &Core<S>,
    ident: crate::runtime::ShardIdent,
    owner: usize,
    pos: IteratorPosition,
) -> Result<u64, EngineError> {
    if let IteratorPosition::AtSequenceNumber { seq } = pos {
        let tip = position_of(core, ident, owner, IteratorPosition::Latest).await?;
        if seq == tip {
            return Ok(tip);
        }
    }
    position_of(core, ident, owner, pos).await
}

async fn read_as<S: Storage + 'static>(
    core: &Core<S>,
    ident: crate::runtime::ShardIdent,
    owner: usize,
    req: ReadRequest,
    consumer: (u64, u64),
) -> Result<ReadOutput, EngineError> {
    if owner == core.index {
        core.read_as(ident, req, Some(consumer)).await
    } else {
        call_read(&core.peers[owner], |reply| CoreMsg::Read {
            ident,
            req,
            consumer: Some(consumer),
            reply,
        })
        .await
    }
}

/// Resolves (`false`) when the client hangs up or the core starts stopping.
async fn ended<S: Storage + 'static>(core: &Core<S>, conn: &ConnState) -> bool {
    let closed = async {
        conn.closed().await;
    };
    let stopping = async {
        while !core.stopping.get() {
            core.net.stopping.wait().await;
        }
    };
    futures_lite::future::or(closed, stopping).await;
    false
}

/// Where a shard ends (once it is closed) and its children's ids, encoded; from this core's
/// routes.
fn shard_end<S: Storage + 'static>(
    core: &Core<S>,
    stream: &str,
    stream_id: u64,
    shard_id: u32,
) -> Result<(Option<u64>, Vec<u8>), Failure> {
    let entry = route(core, stream).map_err(fail)?;
    if entry.stream_id != stream_id {
        return Err(fail(EngineError::UnknownStream(stream.to_owned())));
    }
    let shard = entry.shard(shard_id).ok_or_else(|| {
        fail(EngineError::UnknownShard {
            stream: stream.to_owned(),
            shard: shard_id,
        })
    })?;
    let ending = shard
        .ending_seq
        .filter(|_| shard.state == ShardState::Closed);
    Ok((ending, ShardIds::encode(&entry.children_of(shard_id))))
}

/// A subscription: claims `(consumer, shard)`, then pushes an event (flag MORE) whenever
/// records are durable past where it stands, within the subscriber's credit, or an empty
/// one every `subscription_heartbeat_ms`; ends with the shard's end (an event with `ended`
/// and the children, written to `out`) or an error.
pub(super) async fn subscribe<S: Storage + 'static>(
    core: &Rc<Core<S>>,
    conn: &ConnState,
    cid: u64,
    r: SubscribeRequest<'_>,
    out: &mut Vec<u8>,
) -> Result<(), Failure> {
    let (ident, owner, entry) = locate(core, r.stream, r.shard_id).map_err(fail)?;
    let op = FanoutOp::Subscribe {
        stream: r.stream.to_owned(),
        consumer: r.consumer.to_owned(),
        shard_id: r.shard_id,
    };
    let FanoutAnswer::Claimed {
        consumer_id,
        generation,
    } = fanout_call(core, op, true).await?
    else {
        unreachable!("a subscribe answers a claim")
    };
    let mut next = start_seq(core, ident, owner, r.position)
        .await
        .map_err(fail)?;
    let credit = Rc::new(SubscriptionCredit::default());
    credit
        .bytes
        .set(u64::from(r.credit_bytes).min(core.cfg.max_subscription_credit_bytes) as i64);
    conn.subscriptions.borrow_mut().insert(cid, credit.clone());
    let _unregister = crate::notify::OnDrop::new(|| {
        conn.subscriptions.borrow_mut().remove(&cid);
    });
    core.metrics
        .stream(entry.stream_id, &entry.name, |c| c.subscribe_success += 1);
    tracing::debug!(stream = %r.stream, shard = r.shard_id, consumer = %r.consumer, from = next, "subscription started");
    let heartbeat = Duration::from_millis(core.cfg.subscription_heartbeat_ms);
    // Answered at once: an empty event saying where the subscription starts (a subscriber
    // that loses its connection before any record resumes exactly there).
    let (ending, _) = shard_end(core, r.stream, entry.stream_id, r.shard_id)?;
    let head = SubscribeEventHead {
        start_seq: next,
        continuation_seq: next,
        millis_behind_latest: 0,
        ended: false,
        child_shards: ShardIds::default(),
    };
    if ending.is_none_or(|end| next < end) {
        let mut event = Vec::with_capacity(64);
        encode_subscribe_event_head(&mut event, cid, &head, 0, 0, true);
        conn.push(&core.net, &event);
    }
    let mut last_push = Instant::now();
    let gone = || -> Failure { fail(EngineError::ShuttingDown) };
    loop {
        if core.stopping.get() {
            return Err(fail(EngineError::ShuttingDown));
        }
        // The shard's end, once it is closed and everything in it was pushed.
        let (ending, children) = shard_end(core, r.stream, entry.stream_id, r.shard_id)?;
        if ending.is_some_and(|end| next >= end) {
            let head = SubscribeEventHead {
                start_seq: next,
                continuation_seq: next,
                millis_behind_latest: 0,
                ended: true,
                child_shards: ShardIds::from_bytes(&children).expect("whole ids"),
            };
            encode_subscribe_event_head(out, cid, &head, 0, 0, false);
            return Ok(());
        }
        // Nothing goes out past what the subscriber granted.
        while credit.bytes.get() <= 0 {
            let granted = async {
                credit.granted.wait().await;
                true
            };
            if !futures_lite::future::or(granted, ended(core, conn)).await || core.stopping.get() {
                return Err(gone());
            }
        }
        // Wait for records, at most until the next heartbeat is due.
        let waited_from = Instant::now();
        let left = heartbeat.saturating_sub(last_push.elapsed());
        let left_ms = left.as_millis().clamp(1, u128::from(u32::MAX)) as u32;
        let wait = async { Some(wait_data(core, ident, owner, next, left_ms).await) };
        let closed = async {
            conn.closed().await;
            None
        };
        futures_lite::future::or(wait, closed)
            .await
            .ok_or_else(gone)?
            .map_err(fail)?;
        // A principal disabled, deleted or stripped of the permission since the subscription
        // began gets nothing more (the connection's cached decision, asked again only after
        // principals or policies changed).
        if core.cfg.auth {
            super::security::authorize(core, conn, "spate:Subscribe", r.stream).await?;
        }
        let want = (credit.bytes.get() as u64).min(MAX_EVENT_BYTES) as usize;
        let room = conn.reserve(want).await.ok_or_else(gone)?;
        let req = ReadRequest {
            from_seq: next,
            max_records: MAX_READ_RECORDS,
            max_bytes: room.bytes(),
            wait_ms: 0,
        };
        let got = match read_as(core, ident, owner, req, (consumer_id, generation)).await {
            Ok(got) => got,
            Err(EngineError::ReadThrottled { retry_after_ms }) => {
                drop(room);
                core.metrics
                    .stream(entry.stream_id, &entry.name, |c| c.read_throttled += 1);
                let nap = async {
                    glommio::timer::sleep(Duration::from_millis(u64::from(retry_after_ms))).await;
                    true
                };
                if !futures_lite::future::or(nap, ended(core, conn)).await {
                    return Err(gone());
                }
                continue;
            }
            Err(e) => return Err(fail(e)),
        };
        let empty = got.batch_count == 0;
        if empty && last_push.elapsed() < heartbeat {
            // Woken with nothing to push (a seal, a shutdown, no room to park): look again,
            // without spinning.
            if waited_from.elapsed() < Duration::from_millis(1) {
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
            continue;
        }
        let now = core.clock.now_ms();
        let millis_behind_latest = if got.end_seq >= got.durable_seq {
            0
        } else {
            (now - last_arrival_ms(&got.bytes).unwrap_or(got.latest_ts_ms)).max(0) as u64
        };
        let head = SubscribeEventHead {
            start_seq: got.start_seq,
            continuation_seq: got.end_seq,
            millis_behind_latest,
            ended: false,
            child_shards: ShardIds::default(),
        };
        let mut event = Vec::with_capacity(96 + got.bytes.len());
        encode_subscribe_event_head(
            &mut event,
            cid,
            &head,
            got.batch_count,
            got.bytes.len(),
            true,
        );
        event.extend_from_slice(&got.bytes);
        conn.push(&core.net, &event);
        drop(room);
        let bytes = got.bytes.len() as u64;
        credit.bytes.set(credit.bytes.get() - bytes as i64);
        next = got.end_seq;
        last_push = Instant::now();
        let record_bytes = got.record_bytes;
        core.metrics.stream(entry.stream_id, &entry.name, |c| {
            c.subscribe_events += 1;
            c.subscribe_event_records += got.end_seq - got.start_seq;
            c.subscribe_event_bytes += record_bytes;
            c.outgoing_bytes += record_bytes;
            c.subscribe_millis_behind = millis_behind_latest;
            c.subscribe_millis_behind_at_ms = now;
        });
        core.metrics
            .shard(entry.stream_id, r.shard_id, &entry.name, |c| {
                c.outgoing_records += got.end_seq - got.start_seq;
                c.outgoing_bytes += record_bytes;
            });
    }
}
