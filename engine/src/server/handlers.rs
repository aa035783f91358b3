//! Request handlers: one decoded request in, engine calls, one encoded response out; one
//! function per command. Errors become wire codes in exactly one place ([`error_code`]).

use std::rc::Rc;

use bytes::Bytes;
use spate_protocol::batch::{BatchHeader, BATCH_HEADER_LEN};
use spate_protocol::hello::{CoreInfo, HelloResponse};
use spate_protocol::read::{GetRecordsHead, IteratorPosition, ShardIds};
use spate_protocol::stream::{
    CreateStreamResponse, ListStreamsResponse, ShardDescription, ShardState, StreamDescription,
};
use spate_protocol::token::IteratorToken;
use spate_protocol::write::{
    PutBatchResponse, PutBatchesResponse, PutRecordResponse, Rejection, ShardBatch, ShardFailure,
    ShardOutcome,
};
use spate_protocol::{
    decode_request, encode_error, encode_response, CreateStreamRequest, ErrorCode, ErrorResponse,
    Frame, GetIteratorRequest, GetRecordsRequest, PutBatchesRequest, PutRecordRequest, Request,
    Response, RetentionRequest, PROTOCOL_VERSION,
};

use super::transport::ConnState;
use crate::catalog::{self, StreamEntry};
use crate::error::EngineError;
use crate::io::Storage;
use crate::runtime::{
    call, call_read, ControlOp, Core, CoreMsg, FanoutOp, PutOutcome, ReadRequest, ShardIdent,
    StreamStatus,
};
use crate::store::ReadOutput;

mod fanout;
mod security;

pub(crate) use security::ConnSecurity;

/// Kinesis caps one read at 10,000 records and 10 MiB.
const MAX_READ_RECORDS: u32 = 10_000;
const MAX_READ_BYTES: u32 = 10 << 20;

/// One request, start to finish: decode, execute, encode the response into `out`.
pub(super) async fn handle<S: Storage + 'static>(
    core: &Rc<Core<S>>,
    conn: &ConnState,
    frame_bytes: &Bytes,
    out: &mut Vec<u8>,
) {
    // The reader validated this exact frame; failing here would be a bug, answered as one.
    let Ok(Some(frame)) = spate_protocol::decode_frame(frame_bytes, usize::MAX) else {
        let message = "frame failed to decode twice";
        let e = ErrorResponse {
            code: ErrorCode::Internal,
            retry_after_ms: 0,
            message,
            shard_map_version: 0,
        };
        return encode_error(out, 0, 0, &e);
    };
    let (opcode, cid) = (frame.header.opcode, frame.header.correlation_id);
    let result = match decode_request(&frame) {
        Ok(req) => execute(core, conn, &frame, req, out).await,
        Err(e) => Err((e.code(), 0, e.to_string()).into()),
    };
    let result = audited(core, conn, &frame, result, out).await;
    let code = result.as_ref().err().map(|f| f.code.name());
    core.metrics.request(opcode, code);
    if let Err(Failure { code, message, .. }) = &result {
        let op = spate_protocol::Opcode::from_u16(opcode).map_or("unknown", |o| o.name());
        // Decoded again (no copy) for its stream: errors are the rare path.
        let req = decode_request(&frame).ok();
        log_error(
            core,
            conn,
            op,
            cid,
            req.as_ref().and_then(stream_of),
            *code,
            message,
        );
    }
    if let Err(f) = result {
        encode_error(
            out,
            opcode,
            cid,
            &ErrorResponse {
                code: f.code,
                retry_after_ms: f.retry_after_ms,
                message: &f.message,
                shard_map_version: f.shard_map_version,
            },
        );
    }
}

/// Records a control-plane call (whatever its outcome), an authentication, or a request
/// refused for security, in the audit trail before it is answered. A call done whose line
/// cannot be written is answered with the error instead of its response.
async fn audited<S: Storage + 'static>(
    core: &Rc<Core<S>>,
    conn: &ConnState,
    frame: &Frame<'_>,
    result: Result<(), Failure>,
    out: &mut Vec<u8>,
) -> Result<(), Failure> {
    if !core.cfg.audit {
        return result;
    }
    let refused = matches!(
        &result,
        Err(f) if matches!(
            f.code,
            ErrorCode::AccessDenied
                | ErrorCode::AuthenticationRequired
                | ErrorCode::AuthenticationFailed
        )
    );
    let op = spate_protocol::Opcode::from_u16(frame.header.opcode);
    if !refused && !op.is_some_and(security::is_audited_opcode) {
        return result;
    }
    // Decoded again (no copy): audited requests are the rare ones.
    let Ok(req) = decode_request(frame) else {
        return result;
    };
    let outcome = result.as_ref().err().map(|f| (f.code, f.message.as_str()));
    let event = security::audit_event(core, conn, frame.header.correlation_id, &req, outcome);
    match security::audit(core, event).await {
        Ok(()) => result,
        Err(f) => {
            out.clear();
            Err(Failure {
                message: match &result {
                    Ok(()) => format!(
                        "the call was done, but its audit record could not be stored: {}",
                        f.message
                    ),
                    Err(e) => format!(
                        "{} (and its audit record could not be stored: {})",
                        e.message, f.message
                    ),
                },
                ..f
            })
        }
    }
}

/// Why a request failed, as its error response says it.
struct Failure {
    code: ErrorCode,
    retry_after_ms: u32,
    message: String,
    /// ShardClosed: the shard-map version that closed the shard.
    shard_map_version: u64,
}

impl From<(ErrorCode, u32, String)> for Failure {
    fn from((code, retry_after_ms, message): (ErrorCode, u32, String)) -> Failure {
        Failure {
            code,
            retry_after_ms,
            message,
            shard_map_version: 0,
        }
    }
}

/// The stream a request is about, for logs (a read names it only inside its iterator).
fn stream_of<'a>(req: &Request<'a>) -> Option<&'a str> {
    match req {
        Request::CreateStream(r) => Some(r.name),
        Request::DeleteStream(r) => Some(r.name),
        Request::DescribeStream(r) => Some(r.name),
        Request::IncreaseRetention(r) | Request::DecreaseRetention(r) => Some(r.name),
        Request::SplitShard(r) => Some(r.name),
        Request::MergeShards(r) => Some(r.name),
        Request::UpdateShardCount(r) => Some(r.name),
        Request::UpdateStreamMode(r) => Some(r.name),
        Request::EnableEnhancedMonitoring(r) | Request::DisableEnhancedMonitoring(r) => {
            Some(r.name)
        }
        Request::StartStreamEncryption(r) | Request::StopStreamEncryption(r) => Some(r.name),
        Request::PutRecord(r) => Some(r.stream),
        Request::PutBatch(r) => Some(r.stream),
        Request::PutBatches(r) => Some(r.stream),
        Request::GetIterator(r) => Some(r.stream),
        Request::RegisterConsumer(r)
        | Request::DeregisterConsumer(r)
        | Request::DescribeConsumer(r) => Some(r.stream),
        Request::ListConsumers(r) | Request::ListGroups(r) => Some(r.stream),
        Request::SubscribeToShard(r) => Some(r.stream),
        Request::GroupHeartbeat(r) => Some(r.stream),
        Request::Checkpoint(r) => Some(r.stream),
        Request::DescribeGroup(r) | Request::DeleteGroup(r) => Some(r.stream),
        Request::Hello(_)
        | Request::ListStreams(_)
        | Request::GetRecords(_)
        | Request::SubscribeCredit(_)
        | Request::AuthChallenge(_)
        | Request::Authenticate(_)
        | Request::CreatePrincipal(_)
        | Request::ListPrincipals
        | Request::UpdatePrincipal(_)
        | Request::DeletePrincipal(_)
        | Request::PutPolicy(_)
        | Request::GetPolicy(_)
        | Request::DeletePolicy(_)
        | Request::ReadAudit(_)
        | Request::RotateKeys => None,
    }
}

/// Most error answers a core logs per second; past it they are counted, and the count is
/// logged with the next one after the second is over.
const ERROR_LOGS_PER_SECOND: u32 = 20;

/// Logs an error answered to a client, once, with the request id (its correlation id), the
/// peer and the stream: at warn when the server failed (storage, damage, a bug), at debug
/// for the expected pushback (throttling, busy, shutting down), at info when the request
/// was refused otherwise (an unknown stream, a bad argument). Rate-limited per core.
fn log_error<S: Storage + 'static>(
    core: &Core<S>,
    conn: &ConnState,
    op: &'static str,
    request_id: u64,
    stream: Option<&str>,
    code: ErrorCode,
    message: &str,
) {
    let server_side = matches!(
        code,
        ErrorCode::StorageIo
            | ErrorCode::StorageFull
            | ErrorCode::Corrupt
            | ErrorCode::ShardPoisoned
            | ErrorCode::Internal
            | ErrorCode::OutcomeUnknown
    );
    let pushback = matches!(
        code,
        ErrorCode::Throttled
            | ErrorCode::ReadThrottled
            | ErrorCode::ServerBusy
            | ErrorCode::ShuttingDown
    );
    // Only lines the filter lets through spend the budget.
    let visible = if server_side {
        tracing::enabled!(tracing::Level::WARN)
    } else if pushback {
        tracing::enabled!(tracing::Level::DEBUG)
    } else {
        tracing::enabled!(tracing::Level::INFO)
    };
    if !visible {
        return;
    }
    let now = core.clock.now_ms() / 1000;
    let limiter = &core.error_logs;
    let (second, logged, suppressed) = limiter.get();
    let (logged, suppressed) = if second == now {
        (logged, suppressed)
    } else {
        (0, suppressed)
    };
    if logged >= ERROR_LOGS_PER_SECOND {
        limiter.set((now, logged, suppressed + 1));
        return;
    }
    limiter.set((now, logged + 1, 0));
    let peer = conn.peer();
    let principal = conn.security.borrow().principal();
    let principal = principal.as_deref();
    if server_side {
        tracing::warn!(request_id, peer = %super::Peer(peer), principal, op, stream, %code, suppressed, "{message}");
    } else if pushback {
        tracing::debug!(request_id, peer = %super::Peer(peer), principal, op, stream, %code, suppressed, "{message}");
    } else {
        tracing::info!(request_id, peer = %super::Peer(peer), principal, op, stream, %code, suppressed, "{message}");
    }
}

/// The one place engine errors become wire codes.
pub fn error_code(e: &EngineError) -> (ErrorCode, u32) {
    match e {
        EngineError::UnknownStream(_) | EngineError::NotActive { .. } => {
            (ErrorCode::UnknownStream, 0)
        }
        EngineError::StreamExists(_) => (ErrorCode::StreamExists, 0),
        EngineError::UnknownShard { .. } => (ErrorCode::UnknownShard, 0),
        EngineError::ShardClosed { .. } => (ErrorCode::ShardClosed, 0),
        EngineError::UnknownConsumer { .. } => (ErrorCode::UnknownConsumer, 0),
        EngineError::ConsumerExists { .. } => (ErrorCode::ConsumerExists, 0),
        EngineError::UnknownGroup { .. } => (ErrorCode::UnknownGroup, 0),
        EngineError::LeaseLost(_) => (ErrorCode::LeaseLost, 0),
        EngineError::SubscriptionReplaced => (ErrorCode::SubscriptionReplaced, 0),
        EngineError::UnknownPrincipal(_) => (ErrorCode::UnknownPrincipal, 0),
        EngineError::PrincipalExists(_) => (ErrorCode::PrincipalExists, 0),
        EngineError::UnknownPolicy { .. } => (ErrorCode::UnknownPolicy, 0),
        EngineError::AccessDenied(_) => (ErrorCode::AccessDenied, 0),
        EngineError::AuthenticationRequired(_) => (ErrorCode::AuthenticationRequired, 0),
        EngineError::AuthenticationFailed(_) => (ErrorCode::AuthenticationFailed, 0),
        EngineError::InvalidArgument(_) => (ErrorCode::InvalidArgument, 0),
        EngineError::InvalidBatch(b) => (ErrorCode::from(b.clone()), 0),
        EngineError::Throttled { retry_after_ms } => (ErrorCode::Throttled, *retry_after_ms),
        EngineError::ReadThrottled { retry_after_ms } => {
            (ErrorCode::ReadThrottled, *retry_after_ms)
        }
        EngineError::LimitExceeded(_) => (ErrorCode::LimitExceeded, 0),
        EngineError::StorageFull => (ErrorCode::StorageFull, 1000),
        EngineError::Busy(_) => (ErrorCode::ServerBusy, 10),
        EngineError::Io(_) => (ErrorCode::StorageIo, 0),
        EngineError::Poisoned(_) => (ErrorCode::ShardPoisoned, 0),
        EngineError::Corrupt(_) => (ErrorCode::Corrupt, 0),
        EngineError::KeyUnavailable(_) => (ErrorCode::KeyUnavailable, 0),
        EngineError::Startup(_) => (ErrorCode::Internal, 0),
        EngineError::ShuttingDown => (ErrorCode::ShuttingDown, 100),
        EngineError::OutcomeUnknown => (ErrorCode::OutcomeUnknown, 0),
    }
}

fn fail(e: EngineError) -> Failure {
    let (code, retry_after_ms) = error_code(&e);
    Failure {
        code,
        retry_after_ms,
        message: e.to_string(),
        shard_map_version: closed_version(&e),
    }
}

/// The shard-map version a `ShardClosed` error names (0 for any other error).
fn closed_version(e: &EngineError) -> u64 {
    match e {
        EngineError::ShardClosed { map_version, .. } => *map_version,
        _ => 0,
    }
}

/// The one place a request is routed to its command's function.
async fn execute<S: Storage + 'static>(
    core: &Rc<Core<S>>,
    conn: &ConnState,
    frame: &Frame<'_>,
    req: Request<'_>,
    out: &mut Vec<u8>,
) -> Result<(), Failure> {
    let cid = frame.header.correlation_id;
    if core.cfg.auth {
        if let Some(action) = security::action_of(&req) {
            security::authorize(core, conn, action, stream_of(&req).unwrap_or("*")).await?;
        }
    }
    let response = match req {
        Request::Hello(_) => {
            hello(core, conn, cid, out).await;
            return Ok(());
        }
        Request::AuthChallenge(r) => security::challenge(core, conn, r).await?,
        Request::Authenticate(r) => return security::authenticate(conn, cid, r, out),
        admin @ (Request::CreatePrincipal(_)
        | Request::ListPrincipals
        | Request::UpdatePrincipal(_)
        | Request::DeletePrincipal(_)
        | Request::PutPolicy(_)
        | Request::GetPolicy(_)
        | Request::DeletePolicy(_)
        | Request::ReadAudit(_)) => return security::admin(core, cid, &admin, out).await,
        Request::CreateStream(r) => create_stream(core, r).await?,
        Request::DeleteStream(r) => {
            control_op(
                core,
                ControlOp::DeleteStream {
                    name: r.name.to_owned(),
                },
            )
            .await
            .map_err(fail)?;
            Response::DeleteStream
        }
        Request::IncreaseRetention(r) => set_retention(core, r, true).await?,
        Request::DecreaseRetention(r) => set_retention(core, r, false).await?,
        Request::SplitShard(r) => Response::SplitShard(
            reshard(
                core,
                ControlOp::SplitShard {
                    name: r.name.to_owned(),
                    shard_id: r.shard_id,
                    at: r.new_starting_hash_key,
                },
            )
            .await?,
        ),
        Request::MergeShards(r) => Response::MergeShards(
            reshard(
                core,
                ControlOp::MergeShards {
                    name: r.name.to_owned(),
                    shard_id: r.shard_id,
                    adjacent: r.adjacent_shard_id,
                },
            )
            .await?,
        ),
        Request::UpdateShardCount(r) => Response::UpdateShardCount(
            reshard(
                core,
                ControlOp::UpdateShardCount {
                    name: r.name.to_owned(),
                    target: r.target_shard_count,
                },
            )
            .await?,
        ),
        Request::StartStreamEncryption(r) => {
            let op = ControlOp::StartEncryption {
                name: r.name.to_owned(),
            };
            control_op(core, op).await.map_err(fail)?;
            Response::StartStreamEncryption
        }
        Request::StopStreamEncryption(r) => {
            let op = ControlOp::StopEncryption {
                name: r.name.to_owned(),
            };
            control_op(core, op).await.map_err(fail)?;
            Response::StopStreamEncryption
        }
        Request::RotateKeys => {
            let entries = control_op(core, ControlOp::RotateKeys)
                .await
                .map_err(fail)?;
            // Every data key is now wrapped under the current master key.
            let master_key_id = current_master_key(core).await.map_err(fail)?;
            Response::RotateKeys(spate_protocol::RotateKeysResponse {
                master_key_id,
                // The streams that got a new data key (stopped ones are only re-wrapped).
                streams: entries
                    .iter()
                    .filter(|e| e.encryption.as_ref().is_some_and(|x| x.is_on()))
                    .count() as u32,
            })
        }
        Request::EnableEnhancedMonitoring(r) | Request::DisableEnhancedMonitoring(r) => {
            let on = matches!(req, Request::EnableEnhancedMonitoring(_));
            let op = ControlOp::SetShardLevelMetrics {
                name: r.name.to_owned(),
                on,
            };
            control_op(core, op).await.map_err(fail)?;
            if on {
                Response::EnableEnhancedMonitoring
            } else {
                Response::DisableEnhancedMonitoring
            }
        }
        Request::UpdateStreamMode(r) => {
            let op = ControlOp::SetMode {
                name: r.name.to_owned(),
                mode: r.mode,
                max_write_mib_per_s: r.max_write_mib_per_s,
            };
            control_op(core, op).await.map_err(fail)?;
            Response::UpdateStreamMode
        }
        Request::ListStreams(r) => {
            let names = list_streams(core, r.exclusive_start_name, r.limit);
            let (names, has_more) = (names.0.iter().map(String::as_str).collect(), names.1);
            let page = ListStreamsResponse { names, has_more };
            encode_response(out, cid, &Response::ListStreams(page));
            return Ok(());
        }
        Request::DescribeStream(r) => return describe_stream(core, cid, r.name, out).await,
        Request::PutRecord(r) => put_record(core, r).await?,
        Request::PutBatch(r) => {
            let (ident, owner, _) = locate(core, r.stream, r.shard_id).map_err(fail)?;
            let result = put_counted(core, ident, owner, r.stream, r.batch, false).await;
            Response::PutBatch(put_batch_response(r.shard_id, result).map_err(fail)?)
        }
        Request::PutBatches(r) => return put_batches(core, cid, r, out).await,
        Request::GetIterator(r) => return get_iterator(core, cid, r, out).await,
        Request::GetRecords(r) => return get_records(core, conn, cid, r, out).await,
        Request::RegisterConsumer(r) => {
            let op = FanoutOp::Register {
                stream: r.stream.to_owned(),
                consumer: r.consumer.to_owned(),
            };
            return fanout::consumer_op(core, cid, op, out).await;
        }
        Request::DeregisterConsumer(r) => {
            let op = FanoutOp::Deregister {
                stream: r.stream.to_owned(),
                consumer: r.consumer.to_owned(),
            };
            return fanout::consumer_op(core, cid, op, out).await;
        }
        Request::DescribeConsumer(r) => {
            let op = FanoutOp::DescribeConsumer {
                stream: r.stream.to_owned(),
                consumer: r.consumer.to_owned(),
            };
            return fanout::consumer_op(core, cid, op, out).await;
        }
        Request::ListConsumers(r) => return fanout::list_consumers(core, cid, r.stream, out).await,
        Request::SubscribeToShard(r) => return fanout::subscribe(core, conn, cid, r, out).await,
        Request::SubscribeCredit(r) => fanout::credit(core, conn, r),
        Request::GroupHeartbeat(r) => return fanout::heartbeat(core, cid, r, out).await,
        Request::Checkpoint(r) => fanout::checkpoint(core, r).await?,
        Request::DescribeGroup(r) => {
            return fanout::describe_group(core, cid, r.stream, r.group, out).await
        }
        Request::DeleteGroup(r) => {
            let op = FanoutOp::DeleteGroup {
                stream: r.stream.to_owned(),
                group: r.group.to_owned(),
            };
            fanout::fanout_call(core, op, true).await?;
            Response::DeleteGroup
        }
        Request::ListGroups(r) => return fanout::list_groups(core, cid, r.stream, out).await,
    };
    encode_response(out, cid, &response);
    Ok(())
}

async fn hello<S: Storage + 'static>(
    core: &Core<S>,
    conn: &ConnState,
    cid: u64,
    out: &mut Vec<u8>,
) {
    let principal = security::hello_principal(core, conn).await;
    let topology = core.net.topology.borrow().clone();
    let cores = topology
        .iter()
        .enumerate()
        .map(|(i, a)| CoreInfo {
            core_id: i as u16,
            address: a.as_str(),
        })
        .collect();
    let metrics = core.net.metrics_address.borrow();
    let hello = HelloResponse {
        protocol_version: PROTOCOL_VERSION,
        max_frame_bytes: core.cfg.max_frame_bytes as u32,
        cores,
        metrics_address: metrics.as_deref(),
        auth_required: core.cfg.auth,
        principal: principal.as_deref(),
    };
    encode_response(out, cid, &Response::Hello(hello));
}

/// A split, merge or scale: the new shard-map version and the shards it opened.
async fn reshard<S: Storage + 'static>(
    core: &Core<S>,
    op: ControlOp,
) -> Result<spate_protocol::ReshardResponse, Failure> {
    let entries = control_op(core, op).await.map_err(fail)?;
    let [before, after] = &entries[..] else {
        return Err((ErrorCode::Internal, 0, "a reshard answered no entry".into()).into());
    };
    let mut new_shards: Vec<&catalog::ShardEntry> = after
        .open_shards()
        .into_iter()
        .filter(|s| before.shard(s.shard_id).is_none())
        .collect();
    new_shards.sort_by_key(|s| s.hash_range().0);
    Ok(spate_protocol::ReshardResponse {
        map_version: after.map_version,
        new_shards: new_shards.iter().map(|s| s.shard_id).collect(),
    })
}

async fn create_stream<S: Storage + 'static>(
    core: &Core<S>,
    r: CreateStreamRequest<'_>,
) -> Result<Response<'static>, Failure> {
    let opts = crate::catalog::StreamOptions {
        shard_count: r.shard_count,
        retention_hours: r.retention_hours,
        limits: r.limits,
        max_record_data_bytes: r
            .max_record_data_bytes
            .unwrap_or(spate_protocol::batch::DEFAULT_MAX_RECORD_DATA_BYTES as u32),
        encryption: r.encryption != spate_protocol::stream::EncryptionType::None,
    };
    let op = ControlOp::CreateStream {
        name: r.name.to_owned(),
        opts,
        answer_within: Some(std::time::Duration::from_millis(core.cfg.create_answer_ms)),
    };
    let entry = control_op(core, op)
        .await
        .map_err(fail)?
        .pop()
        .expect("created");
    // Core 0 told every core (this one too) when the stream became ACTIVE.
    let status = core
        .statuses
        .borrow()
        .get(r.name)
        .copied()
        .unwrap_or(StreamStatus::Active);
    Ok(Response::CreateStream(CreateStreamResponse {
        stream_id: entry.stream_id,
        status,
    }))
}

async fn set_retention<S: Storage + 'static>(
    core: &Core<S>,
    r: RetentionRequest<'_>,
    increase: bool,
) -> Result<Response<'static>, Failure> {
    let current = route(core, r.name).map_err(fail)?.retention_hours;
    if (increase && r.retention_hours < current) || (!increase && r.retention_hours > current) {
        let dir = if increase { "increase" } else { "decrease" };
        return Err(fail(EngineError::InvalidArgument(format!(
            "cannot {dir} retention from {current} h to {} h",
            r.retention_hours
        ))));
    }
    catalog::validate_retention(r.retention_hours).map_err(fail)?;
    control_op(
        core,
        ControlOp::SetRetention {
            name: r.name.to_owned(),
            hours: r.retention_hours,
        },
    )
    .await
    .map_err(fail)?;
    Ok(if increase {
        Response::IncreaseRetention
    } else {
        Response::DecreaseRetention
    })
}

/// One page of stream names after `start`, and whether more follow.
fn list_streams<S: Storage + 'static>(
    core: &Core<S>,
    start: Option<&str>,
    limit: u32,
) -> (Vec<String>, bool) {
    let mut names: Vec<String> = core
        .routes
        .borrow()
        .keys()
        .filter(|n| start.is_none_or(|s| n.as_str() > s))
        .cloned()
        .collect();
    names.sort();
    let limit = if limit == 0 { 1000 } else { limit.min(10_000) } as usize;
    let has_more = names.len() > limit;
    names.truncate(limit);
    (names, has_more)
}

async fn describe_stream<S: Storage + 'static>(
    core: &Core<S>,
    cid: u64,
    name: &str,
    out: &mut Vec<u8>,
) -> Result<(), Failure> {
    let status = core
        .statuses
        .borrow()
        .get(name)
        .copied()
        .unwrap_or(StreamStatus::Active);
    let entry = core
        .routes
        .borrow()
        .get(name)
        .cloned()
        .ok_or_else(|| fail(EngineError::UnknownStream(name.to_owned())))?;
    let mut shards = Vec::with_capacity(entry.shards.len());
    for sh in &entry.shards {
        let ident = ShardIdent {
            stream_id: entry.stream_id,
            shard_id: sh.shard_id,
        };
        let owner = sh.core as usize % core.peers.len();
        let stats =
            match call_read(&core.peers[owner], |reply| CoreMsg::Stats { ident, reply }).await {
                Ok(stats) => stats,
                // A shard of a stream still being created may not be open yet: it is empty.
                Err(EngineError::UnknownShard { .. }) if status == StreamStatus::Creating => {
                    crate::runtime::ShardStats::default()
                }
                Err(e) => return Err(fail(e)),
            };
        let (start, end) = sh.hash_range();
        let has_data = stats.next_seq > stats.first_seq;
        shards.push(ShardDescription {
            id: sh.shard_id,
            state: if stats.damaged.is_some() {
                ShardState::Damaged
            } else {
                sh.state
            },
            hash_key_start: start,
            hash_key_end: end,
            parent: sh.parent,
            adjacent_parent: sh.adjacent_parent,
            core: owner as u16,
            first_seq: has_data.then_some(stats.first_seq),
            last_seq: has_data.then(|| stats.next_seq - 1),
            records: stats.next_seq - stats.first_seq,
            bytes: stats.bytes,
            disk_bytes: stats.disk_bytes,
        });
    }
    let last_scaling = entry
        .last_scaling
        .as_ref()
        .map(|(at_ms, what)| format!("{}: {what}", crate::clock::rfc3339_ms(*at_ms)));
    let d = StreamDescription {
        name: &entry.name,
        stream_id: entry.stream_id,
        status,
        retention_hours: entry.retention_hours,
        limits: entry.limits,
        max_record_data_bytes: entry.max_record_data_bytes,
        created_ms: entry.created_ms,
        shards,
        mode: entry.mode,
        map_version: entry.map_version,
        last_scaling: last_scaling.as_deref(),
        shard_level_metrics: entry.shard_level_metrics,
        encryption: match &entry.encryption {
            Some(e) if e.is_on() => spate_protocol::stream::EncryptionType::Aes256Gcm,
            _ => spate_protocol::stream::EncryptionType::None,
        },
        key_epochs: entry
            .encryption
            .as_ref()
            .map_or(0, |e| e.epochs.len() as u32),
        master_key_id: entry
            .encryption
            .as_ref()
            .and_then(crate::keyring::Keyring::master_of),
        // The ceiling the on-demand scaler works to: the stream's own, else the server's.
        max_write_mib_per_s: (entry.mode == crate::catalog::CapacityMode::OnDemand).then(|| {
            match entry.max_write_mib_per_s {
                0 => core.cfg.on_demand_max_write_mib_per_s,
                m => m,
            }
            .clamp(4, 1_000_000)
        }),
    };
    encode_response(out, cid, &Response::DescribeStream(d));
    Ok(())
}

async fn put_record<S: Storage + 'static>(
    core: &Core<S>,
    r: PutRecordRequest<'_>,
) -> Result<Response<'static>, Failure> {
    let hash = r
        .hash_key()
        .map_err(|e| (ErrorCode::from(e.clone()), 0, e.to_string()))?;
    // The server routes this one, so a split or merge under way is its business: a shard
    // closed under it is retried on the new routes once they arrive (within a second).
    let mut attempt = 0;
    let outcome = loop {
        let entry = route(core, r.stream).map_err(fail)?;
        let shard = entry
            .shards
            .iter()
            .find(|s| {
                s.state == ShardState::Open && (s.hash_range().0..=s.hash_range().1).contains(&hash)
            })
            .ok_or_else(|| {
                (
                    ErrorCode::Internal,
                    0,
                    "no open shard covers the hash key".to_string(),
                )
            })?;
        let (ident, owner, _) = locate(core, r.stream, shard.shard_id).map_err(fail)?;
        match put_counted(core, ident, owner, r.stream, r.batch, true).await {
            Err(EngineError::ShardClosed { map_version, .. }) if attempt < 200 => {
                attempt += 1;
                while attempt < 200
                    && route(core, r.stream).is_ok_and(|e| e.map_version < map_version)
                {
                    attempt += 1;
                    glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
                }
            }
            other => break other.map_err(fail)?,
        }
    };
    if outcome.accepted == 0 {
        let retry = outcome.retry_after_ms.unwrap_or(1);
        return Err((
            ErrorCode::Throttled,
            retry,
            "write limit of the shard reached".into(),
        )
            .into());
    }
    Ok(Response::PutRecord(PutRecordResponse {
        shard_id: outcome.shard_id,
        seq: outcome.base_seq,
    }))
}

async fn put_batches<S: Storage + 'static>(
    core: &Core<S>,
    cid: u64,
    r: PutBatchesRequest<'_>,
    out: &mut Vec<u8>,
) -> Result<(), Failure> {
    let entry = route(core, r.stream).map_err(fail)?;
    let started = std::time::Instant::now();
    let results = put_many(core, &entry, &r.batches).await;
    core.metrics.count_put(
        entry.stream_id,
        r.stream,
        r.batches.iter().zip(&results).map(|(b, res)| {
            let (stored, bytes, throttled, failed) = put_counts(b.batch, res);
            (b.shard_id, stored, bytes, throttled, failed)
        }),
        false,
        started.elapsed(),
    );
    let messages: Vec<String> = results
        .iter()
        .map(|res| match res {
            Err(e) if !matches!(e, EngineError::Throttled { .. }) => e.to_string(),
            _ => String::new(),
        })
        .collect();
    let outcomes = r
        .batches
        .iter()
        .zip(results)
        .zip(&messages)
        .map(
            |((b, res), message)| match put_batch_response(b.shard_id, res) {
                Ok(stored) => ShardOutcome::Stored(stored),
                Err(e) => {
                    let (code, retry_after_ms) = error_code(&e);
                    ShardOutcome::Failed(ShardFailure {
                        shard_id: b.shard_id,
                        code,
                        retry_after_ms,
                        message,
                        shard_map_version: closed_version(&e),
                    })
                }
            },
        )
        .collect();
    encode_response(
        out,
        cid,
        &Response::PutBatches(PutBatchesResponse { outcomes }),
    );
    Ok(())
}

async fn get_iterator<S: Storage + 'static>(
    core: &Core<S>,
    cid: u64,
    r: GetIteratorRequest<'_>,
    out: &mut Vec<u8>,
) -> Result<(), Failure> {
    let (ident, owner, entry) = locate(core, r.stream, r.shard_id).map_err(fail)?;
    let key = core.token_key.get().expect("set when the core starts");
    let seq = position_of(core, ident, owner, r.position)
        .await
        .map_err(fail)?;
    let token = IteratorToken {
        stream_id: entry.stream_id,
        shard_id: r.shard_id,
        next_seq: seq,
        issued_at_ms: core.clock.now_ms(),
    }
    .encode(key);
    encode_response(
        out,
        cid,
        &Response::GetIterator(spate_protocol::read::GetIteratorResponse { iterator: &token }),
    );
    Ok(())
}

async fn get_records<S: Storage + 'static>(
    core: &Core<S>,
    conn: &ConnState,
    cid: u64,
    r: GetRecordsRequest<'_>,
    out: &mut Vec<u8>,
) -> Result<(), Failure> {
    let started = std::time::Instant::now();
    let now = core.clock.now_ms();
    let key = core.token_key.get().expect("set when the core starts");
    let token = IteratorToken::decode_live(r.iterator, key, now).map_err(|code| {
        let why = if code == ErrorCode::IteratorExpired {
            "iterator expired (5 minutes)"
        } else {
            "invalid iterator (altered, forged, or from another server)"
        };
        (code, 0, why.to_string())
    })?;
    let entry = route_by_id(core, token.stream_id).ok_or_else(|| {
        (
            ErrorCode::InvalidIterator,
            0,
            "the iterator's stream no longer exists".to_string(),
        )
    })?;
    if core.cfg.auth {
        security::authorize(core, conn, "spate:GetRecords", &entry.name).await?;
    }
    let (ident, owner, _) = locate(core, &entry.name, token.shard_id).map_err(fail)?;
    // A closed shard read to its end: say so, and name the shards that took its keys.
    let ending = entry
        .shard(token.shard_id)
        .and_then(|s| s.ending_seq)
        .filter(|_| {
            entry
                .shard(token.shard_id)
                .is_some_and(|s| s.state == ShardState::Closed)
        });
    let children = ShardIds::encode(&entry.children_of(token.shard_id));
    if ending.is_some_and(|end| token.next_seq >= end) {
        let head = GetRecordsHead {
            start_seq: token.next_seq,
            end_seq: token.next_seq,
            millis_behind_latest: 0,
            next_iterator: None,
            child_shards: ShardIds::from_bytes(&children).expect("whole ids"),
        };
        spate_protocol::read::encode_get_records_head(out, cid, &head, 0, 0);
        core.metrics
            .stream(entry.stream_id, &entry.name, |c| c.get_records_success += 1);
        return Ok(());
    }
    let gone = || {
        (
            ErrorCode::ShuttingDown,
            0,
            "the connection is closed".to_string(),
        )
    };
    // A long-poll waits for data first, holding no room for its answer; it stops waiting
    // when its client goes.
    if r.wait_ms > 0 {
        let wait = async { Some(wait_data(core, ident, owner, token.next_seq, r.wait_ms).await) };
        let closed = async {
            conn.closed().await;
            None
        };
        futures_lite::future::or(wait, closed)
            .await
            .ok_or_else(gone)?
            .map_err(fail)?;
        // Access taken away during the wait: nothing is answered.
        if core.cfg.auth {
            security::authorize(core, conn, "spate:GetRecords", &entry.name).await?;
        }
    }
    // A connection whose client has not read earlier answers gets less, or waits.
    let room = conn
        .reserve(r.max_bytes.clamp(1, MAX_READ_BYTES) as usize)
        .await
        .ok_or_else(gone)?;
    let req = ReadRequest {
        from_seq: token.next_seq,
        max_records: r.max_records.clamp(1, MAX_READ_RECORDS),
        max_bytes: room.bytes(),
        wait_ms: 0,
    };
    let got = match read_shard(core, ident, owner, req).await {
        Ok(got) => got,
        Err(e) => {
            if matches!(e, EngineError::ReadThrottled { .. }) {
                core.metrics
                    .stream(entry.stream_id, &entry.name, |c| c.read_throttled += 1);
                core.metrics
                    .shard(entry.stream_id, token.shard_id, &entry.name, |c| {
                        c.read_throttled += 1
                    });
            }
            return Err(fail(e));
        }
    };
    let now = core.clock.now_ms();
    let next = IteratorToken {
        next_seq: got.end_seq,
        issued_at_ms: now,
        ..token
    }
    .encode(key);
    let millis_behind_latest = if got.end_seq >= got.durable_seq {
        0
    } else {
        (now - last_arrival_ms(&got.bytes).unwrap_or(got.latest_ts_ms)).max(0) as u64
    };
    let drained = ending.is_some_and(|end| got.end_seq >= end);
    let head = GetRecordsHead {
        start_seq: got.start_seq,
        end_seq: got.end_seq,
        millis_behind_latest,
        next_iterator: (!drained).then_some(&next[..]),
        child_shards: if drained {
            ShardIds::from_bytes(&children).expect("whole ids")
        } else {
            ShardIds::default()
        },
    };
    spate_protocol::read::encode_get_records_head(
        out,
        cid,
        &head,
        got.batch_count,
        got.bytes.len(),
    );
    out.extend_from_slice(&got.bytes);
    let record_bytes = got.record_bytes;
    core.metrics.stream(entry.stream_id, &entry.name, |c| {
        c.get_records_success += 1;
        c.get_records_records += got.end_seq - got.start_seq;
        c.get_records_bytes += record_bytes;
        c.outgoing_bytes += record_bytes;
        c.get_records_latency.observe(started.elapsed());
        c.iterator_age_ms = millis_behind_latest;
        c.iterator_age_at_ms = now;
    });
    core.metrics
        .shard(entry.stream_id, token.shard_id, &entry.name, |c| {
            c.outgoing_records += got.end_seq - got.start_seq;
            c.outgoing_bytes += record_bytes;
            c.iterator_age_ms = millis_behind_latest;
            c.iterator_age_at_ms = now;
        });
    Ok(())
}

/// `put`, counted in its stream's metrics (`single`: a PutRecord call).
async fn put_counted<S: Storage + 'static>(
    core: &Core<S>,
    ident: ShardIdent,
    owner: usize,
    stream: &str,
    batch: &[u8],
    single: bool,
) -> Result<PutOutcome, EngineError> {
    let started = std::time::Instant::now();
    let result = put(core, ident, owner, batch).await;
    count_put(
        core,
        (ident.stream_id, ident.shard_id),
        stream,
        batch,
        &result,
        started,
        single,
    );
    result
}

/// Counts a put of one batch in its stream's metrics: what was stored (its records' keys
/// and data, as Kinesis counts), throttled records, the latency.
fn count_put<S: Storage + 'static>(
    core: &Core<S>,
    (stream_id, shard_id): (u64, u32),
    stream: &str,
    batch: &[u8],
    result: &Result<PutOutcome, EngineError>,
    started: std::time::Instant,
    single: bool,
) {
    let (stored, bytes, throttled, failed) = put_counts(batch, result);
    core.metrics.count_put(
        stream_id,
        stream,
        [(shard_id, stored, bytes, throttled, failed)],
        single,
        started.elapsed(),
    );
}

/// What a put of `batch` counts in the metrics: `(stored, bytes, throttled, failed)`
/// records and key and data bytes stored, records throttled, and records that failed
/// otherwise.
fn put_counts(batch: &[u8], result: &Result<PutOutcome, EngineError>) -> (u64, u64, u64, u64) {
    let records = || BatchHeader::decode(batch).map_or(0, |h| u64::from(h.record_count));
    match result {
        Ok(o) => {
            let stored = u64::from(o.accepted);
            (stored, o.bytes, u64::from(o.record_count - o.accepted), 0)
        }
        Err(EngineError::Throttled { .. }) => (0, 0, records(), 0),
        Err(_) => (0, 0, 0, records()),
    }
}

fn route<S: Storage + 'static>(
    core: &Core<S>,
    stream: &str,
) -> Result<Rc<StreamEntry>, EngineError> {
    if let Some(status) = core.statuses.borrow().get(stream) {
        if matches!(status, StreamStatus::Creating | StreamStatus::Deleting) {
            return Err(EngineError::NotActive {
                stream: stream.to_owned(),
                status: status.name(),
            });
        }
    }
    core.routes
        .borrow()
        .get(stream)
        .cloned()
        .ok_or_else(|| EngineError::UnknownStream(stream.to_owned()))
}

/// The shard's identity and owning core.
fn locate<S: Storage + 'static>(
    core: &Core<S>,
    stream: &str,
    shard_id: u32,
) -> Result<(ShardIdent, usize, Rc<StreamEntry>), EngineError> {
    let entry = route(core, stream)?;
    let (ident, owner) = entry.locate(shard_id, core.peers.len())?;
    Ok((ident, owner, entry))
}

async fn control_op<S: Storage + 'static>(
    core: &Core<S>,
    op: ControlOp,
) -> Result<Vec<StreamEntry>, EngineError> {
    call(&core.peers[0], |reply| CoreMsg::Control { op, reply }).await
}

/// The master key new data keys are wrapped under (asked of core 0, which holds them).
async fn current_master_key<S: Storage + 'static>(core: &Core<S>) -> Result<u32, EngineError> {
    call(&core.peers[0], |reply| CoreMsg::MasterKey { reply }).await
}

async fn put<S: Storage + 'static>(
    core: &Core<S>,
    ident: ShardIdent,
    owner: usize,
    batch: &[u8],
) -> Result<PutOutcome, EngineError> {
    if owner == core.index {
        core.append(ident, batch).await
    } else {
        // Forwarded: the batch is copied into the message for the owning core.
        let batch = batch.to_vec();
        call(&core.peers[owner], |reply| CoreMsg::Append {
            ident,
            batch,
            reply,
        })
        .await
    }
}

/// Puts one batch to each of several shards of a stream: this core's shards directly,
/// every other core's in one message to it; all at once. One result per batch, in order.
async fn put_many<S: Storage + 'static>(
    core: &Core<S>,
    entry: &StreamEntry,
    batches: &[ShardBatch<'_>],
) -> Vec<Result<PutOutcome, EngineError>> {
    let cores = core.peers.len();
    let mut results: Vec<Option<Result<PutOutcome, EngineError>>> = vec![None; batches.len()];
    let mut local = Vec::new();
    let mut remote: Vec<Vec<(usize, ShardIdent, Vec<u8>)>> = vec![Vec::new(); cores];
    for (i, b) in batches.iter().enumerate() {
        match entry.locate(b.shard_id, cores) {
            Ok((ident, owner)) if owner == core.index => local.push((i, ident)),
            // Forwarded: the batch is copied into the message for the owning core.
            Ok((ident, owner)) => remote[owner].push((i, ident, b.batch.to_vec())),
            Err(e) => results[i] = Some(Err(e)),
        }
    }
    let here = async {
        let items: Vec<(ShardIdent, &[u8])> = local
            .iter()
            .map(|(i, ident)| (*ident, batches[*i].batch))
            .collect();
        let got = core.append_many(&items).await;
        local.iter().map(|(i, _)| *i).zip(got).collect::<Vec<_>>()
    };
    let there = crate::store::join_all(
        remote
            .into_iter()
            .enumerate()
            .filter(|(_, v)| !v.is_empty())
            .map(|(owner, items)| async move {
                let index: Vec<usize> = items.iter().map(|(i, _, _)| *i).collect();
                let items: Vec<(ShardIdent, Vec<u8>)> =
                    items.into_iter().map(|(_, ident, b)| (ident, b)).collect();
                let n = items.len();
                let got = call(&core.peers[owner], |reply| CoreMsg::AppendMany {
                    items,
                    reply,
                })
                .await
                .unwrap_or_else(|e| (0..n).map(|_| Err(e.clone())).collect());
                index.into_iter().zip(got).collect::<Vec<_>>()
            }),
    );
    let (here, there) = futures_lite::future::zip(here, there).await;
    for (i, r) in here.into_iter().chain(there.into_iter().flatten()) {
        results[i] = Some(r);
    }
    results
        .into_iter()
        .map(|r| r.expect("every batch has a result"))
        .collect()
}

async fn read_shard<S: Storage + 'static>(
    core: &Core<S>,
    ident: ShardIdent,
    owner: usize,
    req: ReadRequest,
) -> Result<ReadOutput, EngineError> {
    if owner == core.index {
        core.read(ident, req).await
    } else {
        call_read(&core.peers[owner], |reply| CoreMsg::Read {
            ident,
            req,
            consumer: None,
            reply,
        })
        .await
    }
}

/// A long-poll on the shard's core. Dropped when the client hangs up: a local one stops
/// at once; a remote one is told through `cancel` and leaves within a second.
async fn wait_data<S: Storage + 'static>(
    core: &Core<S>,
    ident: ShardIdent,
    owner: usize,
    from_seq: u64,
    wait_ms: u32,
) -> Result<(), EngineError> {
    if owner == core.index {
        return core.wait_for_data(ident, from_seq, wait_ms, None).await;
    }
    let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let on_drop = cancel.clone();
    let _cancel_if_dropped = crate::notify::OnDrop::new(move || {
        on_drop.store(true, std::sync::atomic::Ordering::Relaxed)
    });
    call_read(&core.peers[owner], |reply| CoreMsg::WaitData {
        ident,
        from_seq,
        wait_ms,
        cancel,
        reply,
    })
    .await
}

async fn position_of<S: Storage + 'static>(
    core: &Core<S>,
    ident: ShardIdent,
    owner: usize,
    pos: IteratorPosition,
) -> Result<u64, EngineError> {
    if owner == core.index {
        core.position(ident, pos).await
    } else {
        call_read(&core.peers[owner], |reply| CoreMsg::Position {
            ident,
            pos,
            reply,
        })
        .await
    }
}

/// A put's outcome as the wire reports it: a stored prefix (maybe with the rest throttled),
/// a wholly throttled batch, or an error for the whole batch.
fn put_batch_response(
    shard_id: u32,
    result: Result<PutOutcome, EngineError>,
) -> Result<PutBatchResponse, EngineError> {
    match result {
        Ok(o) => Ok(PutBatchResponse {
            shard_id: o.shard_id,
            base_seq: o.base_seq,
            accepted: o.accepted,
            rejected: o
                .retry_after_ms
                .filter(|_| o.accepted < o.record_count)
                .map(|retry_after_ms| Rejection {
                    code: ErrorCode::Throttled,
                    retry_after_ms,
                }),
        }),
        Err(EngineError::Throttled { retry_after_ms }) => Ok(PutBatchResponse {
            shard_id,
            base_seq: 0,
            accepted: 0,
            rejected: Some(Rejection {
                code: ErrorCode::Throttled,
                retry_after_ms,
            }),
        }),
        Err(e) => Err(e),
    }
}

/// This core's route of the stream incarnation `stream_id` (an iterator names its stream
/// by id), if it still exists.
pub(super) fn route_by_id<S: Storage + 'static>(
    core: &Core<S>,
    stream_id: u64,
) -> Option<Rc<StreamEntry>> {
    core.routes
        .borrow()
        .values()
        .find(|e| e.stream_id == stream_id)
        .cloned()
}

/// Arrival time of the last batch in a read's concatenated stored batches.
fn last_arrival_ms(bytes: &[u8]) -> Option<i64> {
    let mut pos = 0;
    let mut last = None;
    while bytes.len() - pos >= BATCH_HEADER_LEN {
        let h = BatchHeader::decode(&bytes[pos..]).ok()?;
        last = Some(h.last_ts_ms);
        pos += h.batch_len as usize;
    }
    last
}

#[cfg(test)]
mod tests {
    use spate_protocol::batch::{BatchBuilder, BatchHeader};

    /// Stored batches as a read returns them: `sizes` records each of key "k" and that
    /// much data, stamped from `base`.
    fn stored(base: u64, sizes: &[usize]) -> Vec<u8> {
        let mut b = BatchBuilder::new();
        for &n in sizes {
            b.push(b"k", &vec![7u8; n], None).unwrap();
        }
        let mut batch = b.finish();
        let mut h = BatchHeader::decode(&batch).unwrap();
        h.base_seq = base;
        h.encode_into(&mut batch[..spate_protocol::batch::BATCH_HEADER_LEN]);
        batch
    }

    #[test]
    fn read_metrics_count_the_keys_and_data_of_the_records_delivered() {
        let mut bytes = stored(10, &[100; 20]);
        bytes.extend(stored(30, &[5, 6]));
        // All of it: 22 records' keys (1 B each) and data.
        assert_eq!(
            crate::store::records_bytes(&bytes, 10, 32),
            20 * 101 + 6 + 7
        );
        // Three records of the first batch (a read limited to 3 gets the whole batch).
        assert_eq!(crate::store::records_bytes(&bytes, 10, 13), 3 * 101);
        // The second batch's last record only.
        assert_eq!(crate::store::records_bytes(&bytes, 31, 32), 7);
        // Something that does not walk: counted whole.
        assert_eq!(crate::store::records_bytes(&[0u8; 100], 0, 1), 100);
    }
}
