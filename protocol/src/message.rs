//! The message layer: [`Request`] and [`Response`] (one variant per opcode), the error body,
//! and the functions that put them into frames and take them out.
//!
//! Encoders append a whole frame to a caller-owned `Vec<u8>`: header first with a
//! placeholder length, then the payload fields straight into the vector, then the length
//! patched in, so no intermediate buffer is built. Decoders borrow strings and byte fields
//! from the frame, so a request's batch is not copied until the server moves it into its
//! write buffer. The messages of each command group live in their own module (`hello`,
//! `stream`, `write`, `read`), with their tests beside them.

use crate::auth::{
    AuthChallengeRequest, AuthChallengeResponse, AuthenticateRequest, AuthenticateResponse,
    ListPrincipalsResponse, PolicyDocument, PolicyRequest, PrincipalCreated, PrincipalRequest,
    PutPolicyRequest, ReadAuditRequest, ReadAuditResponse, UpdatePrincipalRequest,
};
use crate::consumer::{
    CheckpointRequest, ConsumerDescription, ConsumerRequest, CreditRequest, GroupDescription,
    GroupHeartbeatRequest, GroupHeartbeatResponse, GroupRequest, ListConsumersResponse,
    ListGroupsResponse, StreamRequest, SubscribeEvent, SubscribeRequest,
};
use crate::error::ErrorCode;
use crate::frame::{begin_frame, finish_frame, Frame, Opcode, FLAG_ERROR, FLAG_RESPONSE};
use crate::hello::{HelloRequest, HelloResponse};
use crate::read::{GetIteratorRequest, GetIteratorResponse, GetRecordsRequest, GetRecordsResponse};
use crate::stream::{
    CreateStreamRequest, CreateStreamResponse, DeleteStreamRequest, DescribeStreamRequest,
    ListStreamsRequest, ListStreamsResponse, MergeShardsRequest, ReshardResponse, RetentionRequest,
    RotateKeysResponse, SplitShardRequest, StreamDescription, StreamEncryptionRequest,
    UpdateShardCountRequest, UpdateStreamModeRequest,
};
use crate::wire::{put_str, put_u16, put_u32, put_u64, DecodeError, Reader};
use crate::write::{
    PutBatchRequest, PutBatchResponse, PutBatchesRequest, PutBatchesResponse, PutRecordRequest,
    PutRecordResponse,
};

/// Error messages are cut to this many bytes (at a character boundary) when encoded: they
/// are for humans and logs, and a bound keeps an error frame small.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 1024;

/// A message's payload codec. Decoding reads the whole payload; the caller checks that
/// nothing is left over.
pub(crate) trait Payload<'a>: Sized {
    fn encode_payload(&self, out: &mut Vec<u8>);
    fn decode_payload(r: &mut Reader<'a>) -> Result<Self, DecodeError>;
}

/// A request, borrowing its strings and batch bytes from the frame it was decoded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    Hello(HelloRequest<'a>),
    AuthChallenge(AuthChallengeRequest<'a>),
    Authenticate(AuthenticateRequest),
    CreateStream(CreateStreamRequest<'a>),
    DeleteStream(DeleteStreamRequest<'a>),
    ListStreams(ListStreamsRequest<'a>),
    DescribeStream(DescribeStreamRequest<'a>),
    IncreaseRetention(RetentionRequest<'a>),
    DecreaseRetention(RetentionRequest<'a>),
    SplitShard(SplitShardRequest<'a>),
    MergeShards(MergeShardsRequest<'a>),
    UpdateShardCount(UpdateShardCountRequest<'a>),
    UpdateStreamMode(UpdateStreamModeRequest<'a>),
    EnableEnhancedMonitoring(DescribeStreamRequest<'a>),
    DisableEnhancedMonitoring(DescribeStreamRequest<'a>),
    StartStreamEncryption(StreamEncryptionRequest<'a>),
    StopStreamEncryption(StreamEncryptionRequest<'a>),
    PutRecord(PutRecordRequest<'a>),
    PutBatch(PutBatchRequest<'a>),
    PutBatches(PutBatchesRequest<'a>),
    GetIterator(GetIteratorRequest<'a>),
    GetRecords(GetRecordsRequest<'a>),
    RegisterConsumer(ConsumerRequest<'a>),
    DeregisterConsumer(ConsumerRequest<'a>),
    ListConsumers(StreamRequest<'a>),
    DescribeConsumer(ConsumerRequest<'a>),
    SubscribeToShard(SubscribeRequest<'a>),
    SubscribeCredit(CreditRequest),
    GroupHeartbeat(GroupHeartbeatRequest<'a>),
    Checkpoint(CheckpointRequest<'a>),
    DescribeGroup(GroupRequest<'a>),
    DeleteGroup(GroupRequest<'a>),
    ListGroups(StreamRequest<'a>),
    CreatePrincipal(PrincipalRequest<'a>),
    ListPrincipals,
    UpdatePrincipal(UpdatePrincipalRequest<'a>),
    DeletePrincipal(PrincipalRequest<'a>),
    PutPolicy(PutPolicyRequest<'a>),
    GetPolicy(PolicyRequest<'a>),
    DeletePolicy(PolicyRequest<'a>),
    ReadAudit(ReadAuditRequest),
    RotateKeys,
}

/// A successful response. Errors travel as [`ErrorResponse`] in frames flagged `ERROR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response<'a> {
    Hello(HelloResponse<'a>),
    AuthChallenge(AuthChallengeResponse),
    Authenticate(AuthenticateResponse<'a>),
    CreateStream(CreateStreamResponse),
    DeleteStream,
    ListStreams(ListStreamsResponse<'a>),
    DescribeStream(StreamDescription<'a>),
    IncreaseRetention,
    DecreaseRetention,
    SplitShard(ReshardResponse),
    MergeShards(ReshardResponse),
    UpdateShardCount(ReshardResponse),
    UpdateStreamMode,
    EnableEnhancedMonitoring,
    DisableEnhancedMonitoring,
    StartStreamEncryption,
    StopStreamEncryption,
    PutRecord(PutRecordResponse),
    PutBatch(PutBatchResponse),
    PutBatches(PutBatchesResponse<'a>),
    GetIterator(GetIteratorResponse<'a>),
    GetRecords(GetRecordsResponse<'a>),
    RegisterConsumer(ConsumerDescription<'a>),
    DeregisterConsumer,
    ListConsumers(ListConsumersResponse<'a>),
    DescribeConsumer(ConsumerDescription<'a>),
    /// One event of a subscription (frames flagged MORE until the last).
    SubscribeToShard(SubscribeEvent<'a>),
    SubscribeCredit,
    GroupHeartbeat(GroupHeartbeatResponse),
    Checkpoint,
    DescribeGroup(GroupDescription<'a>),
    DeleteGroup,
    ListGroups(ListGroupsResponse<'a>),
    CreatePrincipal(PrincipalCreated<'a>),
    ListPrincipals(ListPrincipalsResponse<'a>),
    UpdatePrincipal,
    DeletePrincipal,
    PutPolicy,
    GetPolicy(PolicyDocument<'a>),
    DeletePolicy,
    ReadAudit(ReadAuditResponse<'a>),
    RotateKeys(RotateKeysResponse),
}

/// The body of every error response.
///
/// ```text
/// code               u16   an ErrorCode other than Ok
/// retry_after_ms     u32   when to retry (throttling, busy); 0 when there is no hint
/// message            str   for humans, at most MAX_ERROR_MESSAGE_BYTES
/// shard_map_version  u64   ShardClosed: the stream's shard-map version that closed the
///                          shard (describe until at least this one); 0 otherwise
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorResponse<'a> {
    pub code: ErrorCode,
    pub retry_after_ms: u32,
    pub message: &'a str,
    pub shard_map_version: u64,
}

/// What a response frame carries: the answer, or why there is none.
pub type Reply<'a> = Result<Response<'a>, ErrorResponse<'a>>;

fn decode_exact<'a, T: Payload<'a>>(payload: &'a [u8]) -> Result<T, DecodeError> {
    let mut r = Reader::new(payload);
    let value = T::decode_payload(&mut r)?;
    r.finish()?;
    Ok(value)
}

fn decode_empty(payload: &[u8]) -> Result<(), DecodeError> {
    Reader::new(payload).finish()
}

impl<'a> Request<'a> {
    pub fn opcode(&self) -> Opcode {
        match self {
            Request::Hello(_) => Opcode::Hello,
            Request::AuthChallenge(_) => Opcode::AuthChallenge,
            Request::Authenticate(_) => Opcode::Authenticate,
            Request::CreateStream(_) => Opcode::CreateStream,
            Request::DeleteStream(_) => Opcode::DeleteStream,
            Request::ListStreams(_) => Opcode::ListStreams,
            Request::DescribeStream(_) => Opcode::DescribeStream,
            Request::IncreaseRetention(_) => Opcode::IncreaseRetention,
            Request::DecreaseRetention(_) => Opcode::DecreaseRetention,
            Request::SplitShard(_) => Opcode::SplitShard,
            Request::MergeShards(_) => Opcode::MergeShards,
            Request::UpdateShardCount(_) => Opcode::UpdateShardCount,
            Request::UpdateStreamMode(_) => Opcode::UpdateStreamMode,
            Request::EnableEnhancedMonitoring(_) => Opcode::EnableEnhancedMonitoring,
            Request::DisableEnhancedMonitoring(_) => Opcode::DisableEnhancedMonitoring,
            Request::StartStreamEncryption(_) => Opcode::StartStreamEncryption,
            Request::StopStreamEncryption(_) => Opcode::StopStreamEncryption,
            Request::PutRecord(_) => Opcode::PutRecord,
            Request::PutBatch(_) => Opcode::PutBatch,
            Request::PutBatches(_) => Opcode::PutBatches,
            Request::GetIterator(_) => Opcode::GetIterator,
            Request::GetRecords(_) => Opcode::GetRecords,
            Request::RegisterConsumer(_) => Opcode::RegisterConsumer,
            Request::DeregisterConsumer(_) => Opcode::DeregisterConsumer,
            Request::ListConsumers(_) => Opcode::ListConsumers,
            Request::DescribeConsumer(_) => Opcode::DescribeConsumer,
            Request::SubscribeToShard(_) => Opcode::SubscribeToShard,
            Request::SubscribeCredit(_) => Opcode::SubscribeCredit,
            Request::GroupHeartbeat(_) => Opcode::GroupHeartbeat,
            Request::Checkpoint(_) => Opcode::Checkpoint,
            Request::DescribeGroup(_) => Opcode::DescribeGroup,
            Request::DeleteGroup(_) => Opcode::DeleteGroup,
            Request::ListGroups(_) => Opcode::ListGroups,
            Request::CreatePrincipal(_) => Opcode::CreatePrincipal,
            Request::ListPrincipals => Opcode::ListPrincipals,
            Request::UpdatePrincipal(_) => Opcode::UpdatePrincipal,
            Request::DeletePrincipal(_) => Opcode::DeletePrincipal,
            Request::PutPolicy(_) => Opcode::PutPolicy,
            Request::GetPolicy(_) => Opcode::GetPolicy,
            Request::DeletePolicy(_) => Opcode::DeletePolicy,
            Request::ReadAudit(_) => Opcode::ReadAudit,
            Request::RotateKeys => Opcode::RotateKeys,
        }
    }

    /// Appends the payload (no frame header).
    pub fn encode_payload(&self, out: &mut Vec<u8>) {
        match self {
            Request::Hello(m) => m.encode_payload(out),
            Request::AuthChallenge(m) => m.encode_payload(out),
            Request::Authenticate(m) => m.encode_payload(out),
            Request::CreatePrincipal(m) | Request::DeletePrincipal(m) => m.encode_payload(out),
            Request::ListPrincipals | Request::RotateKeys => {}
            Request::UpdatePrincipal(m) => m.encode_payload(out),
            Request::PutPolicy(m) => m.encode_payload(out),
            Request::GetPolicy(m) | Request::DeletePolicy(m) => m.encode_payload(out),
            Request::ReadAudit(m) => m.encode_payload(out),
            Request::CreateStream(m) => m.encode_payload(out),
            Request::DeleteStream(m) => m.encode_payload(out),
            Request::ListStreams(m) => m.encode_payload(out),
            Request::DescribeStream(m) => m.encode_payload(out),
            Request::IncreaseRetention(m) | Request::DecreaseRetention(m) => m.encode_payload(out),
            Request::SplitShard(m) => m.encode_payload(out),
            Request::MergeShards(m) => m.encode_payload(out),
            Request::UpdateShardCount(m) => m.encode_payload(out),
            Request::UpdateStreamMode(m) => m.encode_payload(out),
            Request::EnableEnhancedMonitoring(m) | Request::DisableEnhancedMonitoring(m) => {
                m.encode_payload(out)
            }
            Request::StartStreamEncryption(m) | Request::StopStreamEncryption(m) => {
                m.encode_payload(out)
            }
            Request::PutRecord(m) => m.encode_payload(out),
            Request::PutBatch(m) => m.encode_payload(out),
            Request::PutBatches(m) => m.encode_payload(out),
            Request::GetIterator(m) => m.encode_payload(out),
            Request::GetRecords(m) => m.encode_payload(out),
            Request::RegisterConsumer(m)
            | Request::DeregisterConsumer(m)
            | Request::DescribeConsumer(m) => m.encode_payload(out),
            Request::ListConsumers(m) | Request::ListGroups(m) => m.encode_payload(out),
            Request::SubscribeToShard(m) => m.encode_payload(out),
            Request::SubscribeCredit(m) => m.encode_payload(out),
            Request::GroupHeartbeat(m) => m.encode_payload(out),
            Request::Checkpoint(m) => m.encode_payload(out),
            Request::DescribeGroup(m) | Request::DeleteGroup(m) => m.encode_payload(out),
        }
    }

    /// Decodes a request payload for `opcode`. Validates every field's range, so the server
    /// can act on the result without further checks (except the batch's checksums and
    /// records, which [`crate::batch::check_producer_batch`] checks on the shard's core).
    pub fn decode(opcode: u16, payload: &'a [u8]) -> Result<Request<'a>, DecodeError> {
        let op = Opcode::from_u16(opcode).ok_or(DecodeError::UnknownOpcode(opcode))?;
        Ok(match op {
            Opcode::Hello => Request::Hello(decode_exact(payload)?),
            Opcode::AuthChallenge => Request::AuthChallenge(decode_exact(payload)?),
            Opcode::Authenticate => Request::Authenticate(decode_exact(payload)?),
            Opcode::CreatePrincipal => Request::CreatePrincipal(decode_exact(payload)?),
            Opcode::ListPrincipals => decode_empty(payload).map(|()| Request::ListPrincipals)?,
            Opcode::UpdatePrincipal => Request::UpdatePrincipal(decode_exact(payload)?),
            Opcode::DeletePrincipal => Request::DeletePrincipal(decode_exact(payload)?),
            Opcode::PutPolicy => Request::PutPolicy(decode_exact(payload)?),
            Opcode::GetPolicy => Request::GetPolicy(decode_exact(payload)?),
            Opcode::DeletePolicy => Request::DeletePolicy(decode_exact(payload)?),
            Opcode::ReadAudit => Request::ReadAudit(decode_exact(payload)?),
            Opcode::RotateKeys => decode_empty(payload).map(|()| Request::RotateKeys)?,
            Opcode::CreateStream => Request::CreateStream(decode_exact(payload)?),
            Opcode::DeleteStream => Request::DeleteStream(decode_exact(payload)?),
            Opcode::ListStreams => Request::ListStreams(decode_exact(payload)?),
            Opcode::DescribeStream => Request::DescribeStream(decode_exact(payload)?),
            Opcode::IncreaseRetention => Request::IncreaseRetention(decode_exact(payload)?),
            Opcode::DecreaseRetention => Request::DecreaseRetention(decode_exact(payload)?),
            Opcode::SplitShard => Request::SplitShard(decode_exact(payload)?),
            Opcode::MergeShards => Request::MergeShards(decode_exact(payload)?),
            Opcode::UpdateShardCount => Request::UpdateShardCount(decode_exact(payload)?),
            Opcode::UpdateStreamMode => Request::UpdateStreamMode(decode_exact(payload)?),
            Opcode::EnableEnhancedMonitoring => {
                Request::EnableEnhancedMonitoring(decode_exact(payload)?)
            }
            Opcode::DisableEnhancedMonitoring => {
                Request::DisableEnhancedMonitoring(decode_exact(payload)?)
            }
            Opcode::StartStreamEncryption => Request::StartStreamEncryption(
                decode_exact::<StreamEncryptionRequest>(payload)?.check_start()?,
            ),
            Opcode::StopStreamEncryption => Request::StopStreamEncryption(decode_exact(payload)?),
            Opcode::PutRecord => Request::PutRecord(decode_exact(payload)?),
            Opcode::PutBatch => Request::PutBatch(decode_exact(payload)?),
            Opcode::PutBatches => Request::PutBatches(decode_exact(payload)?),
            Opcode::GetIterator => Request::GetIterator(decode_exact(payload)?),
            Opcode::GetRecords => Request::GetRecords(decode_exact(payload)?),
            Opcode::RegisterConsumer => Request::RegisterConsumer(decode_exact(payload)?),
            Opcode::DeregisterConsumer => Request::DeregisterConsumer(decode_exact(payload)?),
            Opcode::ListConsumers => Request::ListConsumers(decode_exact(payload)?),
            Opcode::DescribeConsumer => Request::DescribeConsumer(decode_exact(payload)?),
            Opcode::SubscribeToShard => Request::SubscribeToShard(decode_exact(payload)?),
            Opcode::SubscribeCredit => Request::SubscribeCredit(decode_exact(payload)?),
            Opcode::GroupHeartbeat => Request::GroupHeartbeat(decode_exact(payload)?),
            Opcode::Checkpoint => Request::Checkpoint(decode_exact(payload)?),
            Opcode::DescribeGroup => Request::DescribeGroup(decode_exact(payload)?),
            Opcode::DeleteGroup => Request::DeleteGroup(decode_exact(payload)?),
            Opcode::ListGroups => Request::ListGroups(decode_exact(payload)?),
        })
    }
}

impl<'a> Response<'a> {
    pub fn opcode(&self) -> Opcode {
        match self {
            Response::Hello(_) => Opcode::Hello,
            Response::AuthChallenge(_) => Opcode::AuthChallenge,
            Response::Authenticate(_) => Opcode::Authenticate,
            Response::CreatePrincipal(_) => Opcode::CreatePrincipal,
            Response::ListPrincipals(_) => Opcode::ListPrincipals,
            Response::UpdatePrincipal => Opcode::UpdatePrincipal,
            Response::DeletePrincipal => Opcode::DeletePrincipal,
            Response::PutPolicy => Opcode::PutPolicy,
            Response::GetPolicy(_) => Opcode::GetPolicy,
            Response::DeletePolicy => Opcode::DeletePolicy,
            Response::ReadAudit(_) => Opcode::ReadAudit,
            Response::RotateKeys(_) => Opcode::RotateKeys,
            Response::CreateStream(_) => Opcode::CreateStream,
            Response::DeleteStream => Opcode::DeleteStream,
            Response::ListStreams(_) => Opcode::ListStreams,
            Response::DescribeStream(_) => Opcode::DescribeStream,
            Response::IncreaseRetention => Opcode::IncreaseRetention,
            Response::DecreaseRetention => Opcode::DecreaseRetention,
            Response::SplitShard(_) => Opcode::SplitShard,
            Response::MergeShards(_) => Opcode::MergeShards,
            Response::UpdateShardCount(_) => Opcode::UpdateShardCount,
            Response::UpdateStreamMode => Opcode::UpdateStreamMode,
            Response::EnableEnhancedMonitoring => Opcode::EnableEnhancedMonitoring,
            Response::DisableEnhancedMonitoring => Opcode::DisableEnhancedMonitoring,
            Response::StartStreamEncryption => Opcode::StartStreamEncryption,
            Response::StopStreamEncryption => Opcode::StopStreamEncryption,
            Response::PutRecord(_) => Opcode::PutRecord,
            Response::PutBatch(_) => Opcode::PutBatch,
            Response::PutBatches(_) => Opcode::PutBatches,
            Response::GetIterator(_) => Opcode::GetIterator,
            Response::GetRecords(_) => Opcode::GetRecords,
            Response::RegisterConsumer(_) => Opcode::RegisterConsumer,
            Response::DeregisterConsumer => Opcode::DeregisterConsumer,
            Response::ListConsumers(_) => Opcode::ListConsumers,
            Response::DescribeConsumer(_) => Opcode::DescribeConsumer,
            Response::SubscribeToShard(_) => Opcode::SubscribeToShard,
            Response::SubscribeCredit => Opcode::SubscribeCredit,
            Response::GroupHeartbeat(_) => Opcode::GroupHeartbeat,
            Response::Checkpoint => Opcode::Checkpoint,
            Response::DescribeGroup(_) => Opcode::DescribeGroup,
            Response::DeleteGroup => Opcode::DeleteGroup,
            Response::ListGroups(_) => Opcode::ListGroups,
        }
    }

    /// Appends the payload (no frame header).
    pub fn encode_payload(&self, out: &mut Vec<u8>) {
        match self {
            Response::Hello(m) => m.encode_payload(out),
            Response::AuthChallenge(m) => m.encode_payload(out),
            Response::Authenticate(m) => m.encode_payload(out),
            Response::CreatePrincipal(m) => m.encode_payload(out),
            Response::ListPrincipals(m) => m.encode_payload(out),
            Response::GetPolicy(m) => m.encode_payload(out),
            Response::ReadAudit(m) => m.encode_payload(out),
            Response::RotateKeys(m) => m.encode_payload(out),
            Response::CreateStream(m) => m.encode_payload(out),
            Response::ListStreams(m) => m.encode_payload(out),
            Response::DescribeStream(m) => m.encode_payload(out),
            Response::SplitShard(m) | Response::MergeShards(m) | Response::UpdateShardCount(m) => {
                m.encode_payload(out)
            }
            Response::PutRecord(m) => m.encode_payload(out),
            Response::PutBatch(m) => m.encode_payload(out),
            Response::PutBatches(m) => m.encode_payload(out),
            Response::GetIterator(m) => m.encode_payload(out),
            Response::GetRecords(m) => m.encode_payload(out),
            Response::RegisterConsumer(m) | Response::DescribeConsumer(m) => m.encode_payload(out),
            Response::ListConsumers(m) => m.encode_payload(out),
            Response::SubscribeToShard(m) => m.encode_payload(out),
            Response::GroupHeartbeat(m) => m.encode_payload(out),
            Response::DescribeGroup(m) => m.encode_payload(out),
            Response::ListGroups(m) => m.encode_payload(out),
            Response::DeleteStream
            | Response::IncreaseRetention
            | Response::DecreaseRetention
            | Response::UpdateStreamMode
            | Response::EnableEnhancedMonitoring
            | Response::DisableEnhancedMonitoring
            | Response::StartStreamEncryption
            | Response::StopStreamEncryption
            | Response::DeregisterConsumer
            | Response::SubscribeCredit
            | Response::Checkpoint
            | Response::DeleteGroup
            | Response::UpdatePrincipal
            | Response::DeletePrincipal
            | Response::PutPolicy
            | Response::DeletePolicy => {}
        }
    }

    /// Decodes a successful response payload for `opcode`.
    pub fn decode(opcode: u16, payload: &'a [u8]) -> Result<Response<'a>, DecodeError> {
        let op = Opcode::from_u16(opcode).ok_or(DecodeError::UnknownOpcode(opcode))?;
        Ok(match op {
            Opcode::Hello => Response::Hello(decode_exact(payload)?),
            Opcode::AuthChallenge => Response::AuthChallenge(decode_exact(payload)?),
            Opcode::Authenticate => Response::Authenticate(decode_exact(payload)?),
            Opcode::CreatePrincipal => Response::CreatePrincipal(decode_exact(payload)?),
            Opcode::ListPrincipals => Response::ListPrincipals(decode_exact(payload)?),
            Opcode::UpdatePrincipal => decode_empty(payload).map(|()| Response::UpdatePrincipal)?,
            Opcode::DeletePrincipal => decode_empty(payload).map(|()| Response::DeletePrincipal)?,
            Opcode::PutPolicy => decode_empty(payload).map(|()| Response::PutPolicy)?,
            Opcode::GetPolicy => Response::GetPolicy(decode_exact(payload)?),
            Opcode::DeletePolicy => decode_empty(payload).map(|()| Response::DeletePolicy)?,
            Opcode::ReadAudit => Response::ReadAudit(decode_exact(payload)?),
            Opcode::RotateKeys => Response::RotateKeys(decode_exact(payload)?),
            Opcode::CreateStream => Response::CreateStream(decode_exact(payload)?),
            Opcode::DeleteStream => decode_empty(payload).map(|()| Response::DeleteStream)?,
            Opcode::ListStreams => Response::ListStreams(decode_exact(payload)?),
            Opcode::DescribeStream => Response::DescribeStream(decode_exact(payload)?),
            Opcode::IncreaseRetention => {
                decode_empty(payload).map(|()| Response::IncreaseRetention)?
            }
            Opcode::DecreaseRetention => {
                decode_empty(payload).map(|()| Response::DecreaseRetention)?
            }
            Opcode::SplitShard => Response::SplitShard(decode_exact(payload)?),
            Opcode::MergeShards => Response::MergeShards(decode_exact(payload)?),
            Opcode::UpdateShardCount => Response::UpdateShardCount(decode_exact(payload)?),
            Opcode::UpdateStreamMode => {
                decode_empty(payload).map(|()| Response::UpdateStreamMode)?
            }
            Opcode::EnableEnhancedMonitoring => {
                decode_empty(payload).map(|()| Response::EnableEnhancedMonitoring)?
            }
            Opcode::DisableEnhancedMonitoring => {
                decode_empty(payload).map(|()| Response::DisableEnhancedMonitoring)?
            }
            Opcode::StartStreamEncryption => {
                decode_empty(payload).map(|()| Response::StartStreamEncryption)?
            }
            Opcode::StopStreamEncryption => {
                decode_empty(payload).map(|()| Response::StopStreamEncryption)?
            }
            Opcode::PutRecord => Response::PutRecord(decode_exact(payload)?),
            Opcode::PutBatch => Response::PutBatch(decode_exact(payload)?),
            Opcode::PutBatches => Response::PutBatches(decode_exact(payload)?),
            Opcode::GetIterator => Response::GetIterator(decode_exact(payload)?),
            Opcode::GetRecords => Response::GetRecords(decode_exact(payload)?),
            Opcode::RegisterConsumer => Response::RegisterConsumer(decode_exact(payload)?),
            Opcode::DeregisterConsumer => {
                decode_empty(payload).map(|()| Response::DeregisterConsumer)?
            }
            Opcode::ListConsumers => Response::ListConsumers(decode_exact(payload)?),
            Opcode::DescribeConsumer => Response::DescribeConsumer(decode_exact(payload)?),
            Opcode::SubscribeToShard => Response::SubscribeToShard(decode_exact(payload)?),
            Opcode::SubscribeCredit => decode_empty(payload).map(|()| Response::SubscribeCredit)?,
            Opcode::GroupHeartbeat => Response::GroupHeartbeat(decode_exact(payload)?),
            Opcode::Checkpoint => decode_empty(payload).map(|()| Response::Checkpoint)?,
            Opcode::DescribeGroup => Response::DescribeGroup(decode_exact(payload)?),
            Opcode::DeleteGroup => decode_empty(payload).map(|()| Response::DeleteGroup)?,
            Opcode::ListGroups => Response::ListGroups(decode_exact(payload)?),
        })
    }
}

impl<'a> Payload<'a> for ErrorResponse<'a> {
    fn encode_payload(&self, out: &mut Vec<u8>) {
        put_u16(out, self.code.as_u16());
        put_u32(out, self.retry_after_ms);
        put_str(out, truncate_at_char(self.message, MAX_ERROR_MESSAGE_BYTES));
        put_u64(out, self.shard_map_version);
    }

    fn decode_payload(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let raw = r.u16("error code")?;
        let code = ErrorCode::from_u16(raw).ok_or(DecodeError::UnknownErrorCode(raw))?;
        if code == ErrorCode::Ok {
            return Err(DecodeError::Malformed {
                field: "error code",
                reason: "Ok in an error",
            });
        }
        Ok(ErrorResponse {
            code,
            retry_after_ms: r.u32("retry_after_ms")?,
            message: r.str(MAX_ERROR_MESSAGE_BYTES, "error message")?,
            shard_map_version: r.u64("shard_map_version")?,
        })
    }
}

impl<'a> ErrorResponse<'a> {
    /// Decodes an error body (the payload of a frame flagged `ERROR`).
    pub fn decode(payload: &'a [u8]) -> Result<ErrorResponse<'a>, DecodeError> {
        decode_exact(payload)
    }
}

/// The longest prefix of `s` of at most `max_bytes` that ends on a character boundary.
/// An error message cut to `MAX_ERROR_MESSAGE_BYTES` at a character boundary.
pub(crate) fn truncated_message(s: &str) -> &str {
    truncate_at_char(s, MAX_ERROR_MESSAGE_BYTES)
}

fn truncate_at_char(s: &str, max_bytes: usize) -> &str {
    if s.len() <= max_bytes {
        return s;
    }
    let mut end = max_bytes;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Appends a request frame.
pub fn encode_request(out: &mut Vec<u8>, correlation_id: u64, request: &Request<'_>) {
    let start = begin_frame(out, 0, request.opcode().as_u16(), correlation_id);
    request.encode_payload(out);
    finish_frame(out, start, 0);
}

/// Appends a success response frame.
pub fn encode_response(out: &mut Vec<u8>, correlation_id: u64, response: &Response<'_>) {
    let start = begin_frame(
        out,
        FLAG_RESPONSE,
        response.opcode().as_u16(),
        correlation_id,
    );
    response.encode_payload(out);
    finish_frame(out, start, 0);
}

/// Appends an error response frame. `opcode` is the failed request's (raw, so an unknown
/// opcode can be echoed); after a framing error, when no request could be read, it is 0
/// and so is `correlation_id`. The message is cut to `MAX_ERROR_MESSAGE_BYTES`.
pub fn encode_error(
    out: &mut Vec<u8>,
    opcode: u16,
    correlation_id: u64,
    error: &ErrorResponse<'_>,
) {
    assert_ne!(
        error.code,
        ErrorCode::Ok,
        "an error response needs an error code"
    );
    let start = begin_frame(out, FLAG_RESPONSE | FLAG_ERROR, opcode, correlation_id);
    error.encode_payload(out);
    finish_frame(out, start, 0);
}

/// Decodes the request in `frame`; fails if the frame is a response.
pub fn decode_request<'a>(frame: &Frame<'a>) -> Result<Request<'a>, DecodeError> {
    if frame.header.is_response() {
        return Err(DecodeError::WrongDirection {
            expected: "request",
        });
    }
    Request::decode(frame.header.opcode, frame.payload)
}

/// Decodes the response in `frame`: `Ok(Ok(_))` for an answer, `Ok(Err(_))` for an error
/// response, `Err(_)` if the frame cannot be decoded. Match it to its request by
/// `frame.header.correlation_id`.
pub fn decode_response<'a>(frame: &Frame<'a>) -> Result<Reply<'a>, DecodeError> {
    if !frame.header.is_response() {
        return Err(DecodeError::WrongDirection {
            expected: "response",
        });
    }
    if frame.header.is_error() {
        return ErrorResponse::decode(frame.payload).map(Err);
    }
    Response::decode(frame.header.opcode, frame.payload).map(Ok)
}

/// Round-trip and truncation checks shared by every command group's tests.
#[cfg(test)]
pub(crate) mod testkit {
    use super::*;
    use crate::frame::{decode_frame, DEFAULT_MAX_FRAME_BYTES};

    /// Encodes `request` in a frame, checks that it decodes to itself, that every strict
    /// prefix of the frame asks for more bytes and that every strict prefix of the payload
    /// fails to decode. Returns the frame.
    pub(crate) fn check_request(request: &Request<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        encode_request(&mut out, 0xc0ff_ee00_0000_0001, request);
        let frame = decode_frame(&out, DEFAULT_MAX_FRAME_BYTES)
            .unwrap()
            .unwrap();
        assert_eq!(frame.encoded_len(), out.len());
        assert_eq!(frame.header.correlation_id, 0xc0ff_ee00_0000_0001);
        assert_eq!(&decode_request(&frame).unwrap(), request);
        assert!(decode_response(&frame).is_err());
        check_prefixes(&out, |payload| {
            Request::decode(frame.header.opcode, payload).is_err()
        });
        out
    }

    /// As [`check_request`], for a success response.
    pub(crate) fn check_response(response: &Response<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        encode_response(&mut out, 42, response);
        let frame = decode_frame(&out, DEFAULT_MAX_FRAME_BYTES)
            .unwrap()
            .unwrap();
        assert_eq!(frame.encoded_len(), out.len());
        assert_eq!(&decode_response(&frame).unwrap().unwrap(), response);
        assert!(decode_request(&frame).is_err());
        check_prefixes(&out, |payload| {
            Response::decode(frame.header.opcode, payload).is_err()
        });
        out
    }

    /// As [`check_request_with_added_tail`], for a response: the payload without its last
    /// `added` bytes is what a server from before sends, and must decode as `older`.
    pub(crate) fn check_response_with_added_tail(
        response: &Response<'_>,
        older: &Response<'_>,
        added: usize,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        encode_response(&mut out, 42, response);
        let frame = decode_frame(&out, DEFAULT_MAX_FRAME_BYTES)
            .unwrap()
            .unwrap();
        assert_eq!(&decode_response(&frame).unwrap().unwrap(), response);
        assert!(decode_request(&frame).is_err());
        let older_len = frame.payload.len() - added;
        assert_eq!(
            Response::decode(frame.header.opcode, &frame.payload[..older_len]).as_ref(),
            Ok(older),
            "the payload without its added tail"
        );
        check_prefixes(&out, |payload| {
            payload.len() == older_len || Response::decode(frame.header.opcode, payload).is_err()
        });
        out
    }

    /// As [`check_request`], for a request whose last `added` payload bytes are fields
    /// added to the message after its release: the payload without them is what a client
    /// from before sends, and must decode as `older`; every other strict prefix fails.
    pub(crate) fn check_request_with_added_tail(
        request: &Request<'_>,
        older: &Request<'_>,
        added: usize,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        encode_request(&mut out, 0xc0ff_ee00_0000_0001, request);
        let frame = decode_frame(&out, DEFAULT_MAX_FRAME_BYTES)
            .unwrap()
            .unwrap();
        assert_eq!(&decode_request(&frame).unwrap(), request);
        assert!(decode_response(&frame).is_err());
        let older_len = frame.payload.len() - added;
        assert_eq!(
            Request::decode(frame.header.opcode, &frame.payload[..older_len]).as_ref(),
            Ok(older),
            "the payload without its added tail"
        );
        check_prefixes(&out, |payload| {
            payload.len() == older_len || Request::decode(frame.header.opcode, payload).is_err()
        });
        out
    }

    fn check_prefixes(frame: &[u8], payload_prefix_fails: impl Fn(&[u8]) -> bool) {
        for cut in 0..frame.len() {
            assert_eq!(
                decode_frame(&frame[..cut], DEFAULT_MAX_FRAME_BYTES),
                Ok(None),
                "cut {cut}"
            );
        }
        let payload = &frame[crate::frame::FRAME_HEADER_LEN..];
        for cut in 0..payload.len() {
            assert!(
                payload_prefix_fails(&payload[..cut]),
                "payload prefix of {cut} bytes decoded"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testkit::*;
    use super::*;
    use crate::frame::{decode_frame, DEFAULT_MAX_FRAME_BYTES};
    use crate::stream::DeleteStreamRequest;

    fn error_frame(code: ErrorCode, retry_after_ms: u32, message: &str) -> Vec<u8> {
        let mut out = Vec::new();
        encode_error(
            &mut out,
            21,
            9,
            &ErrorResponse {
                code,
                retry_after_ms,
                message,
                shard_map_version: 0,
            },
        );
        out
    }

    #[test]
    fn error_responses_round_trip_and_truncate_cleanly() {
        let out = error_frame(ErrorCode::Throttled, 250, "shard 3 over its write limit");
        let frame = decode_frame(&out, DEFAULT_MAX_FRAME_BYTES)
            .unwrap()
            .unwrap();
        assert!(frame.header.is_error());
        let err = decode_response(&frame).unwrap().unwrap_err();
        assert_eq!(err.code, ErrorCode::Throttled);
        assert_eq!(err.retry_after_ms, 250);
        assert_eq!(err.message, "shard 3 over its write limit");
        for cut in 0..frame.payload.len() {
            assert!(ErrorResponse::decode(&frame.payload[..cut]).is_err());
        }
    }

    #[test]
    fn golden_error_frame() {
        let out = error_frame(ErrorCode::UnknownStream, 0, "no");
        #[rustfmt::skip]
        let expected = [
            33, 0, 0, 0,  1,  3,  21, 0,  9, 0, 0, 0, 0, 0, 0, 0, // header: RESPONSE|ERROR
            200, 0,  0, 0, 0, 0,  2, b'n', b'o',                  // code, retry_after_ms, message
            0, 0, 0, 0, 0, 0, 0, 0,                               // shard_map_version
        ];
        assert_eq!(out, expected);
        let mut out = Vec::new();
        let closed = ErrorResponse {
            code: ErrorCode::ShardClosed,
            retry_after_ms: 0,
            message: "",
            shard_map_version: 7,
        };
        encode_error(&mut out, 21, 9, &closed);
        #[rustfmt::skip]
        let expected = [
            31, 0, 0, 0,  1,  3,  21, 0,  9, 0, 0, 0, 0, 0, 0, 0,
            203, 0,  0, 0, 0, 0,  0,  7, 0, 0, 0, 0, 0, 0, 0,     // ShardClosed, version 7
        ];
        assert_eq!(out, expected);
        let frame = decode_frame(&out, DEFAULT_MAX_FRAME_BYTES)
            .unwrap()
            .unwrap();
        assert_eq!(decode_response(&frame).unwrap().unwrap_err(), closed);
    }

    #[test]
    fn golden_delete_stream_frames() {
        let req = Request::DeleteStream(DeleteStreamRequest { name: "s1" });
        let out = check_request(&req);
        #[rustfmt::skip]
        let expected = [
            19, 0, 0, 0,  1,  0,  11, 0,  1, 0, 0, 0, 0, 0xee, 0xff, 0xc0,
            2, b's', b'1',
        ];
        assert_eq!(out, expected);
        let out = check_response(&Response::DeleteStream);
        assert_eq!(out, [16, 0, 0, 0, 1, 1, 11, 0, 42, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn error_bodies_are_checked() {
        let mut out = error_frame(ErrorCode::Internal, 0, "x");
        let frame = decode_frame(&out, DEFAULT_MAX_FRAME_BYTES)
            .unwrap()
            .unwrap();
        assert!(decode_request(&frame).is_err());
        out[16..18].copy_from_slice(&0u16.to_le_bytes());
        let frame = decode_frame(&out, DEFAULT_MAX_FRAME_BYTES)
            .unwrap()
            .unwrap();
        assert!(matches!(
            decode_response(&frame),
            Err(DecodeError::Malformed { .. })
        ));
        out[16..18].copy_from_slice(&999u16.to_le_bytes());
        let frame = decode_frame(&out, DEFAULT_MAX_FRAME_BYTES)
            .unwrap()
            .unwrap();
        assert_eq!(
            decode_response(&frame),
            Err(DecodeError::UnknownErrorCode(999))
        );
    }

    #[test]
    fn long_messages_are_cut_at_a_char_boundary() {
        let message = "é".repeat(MAX_ERROR_MESSAGE_BYTES); // 2 bytes each
        let out = error_frame(ErrorCode::Internal, 0, &message);
        let frame = decode_frame(&out, DEFAULT_MAX_FRAME_BYTES)
            .unwrap()
            .unwrap();
        let err = decode_response(&frame).unwrap().unwrap_err();
        assert_eq!(err.message.len(), MAX_ERROR_MESSAGE_BYTES);
        let odd = format!("a{message}");
        let out = error_frame(ErrorCode::Internal, 0, &odd);
        let frame = decode_frame(&out, DEFAULT_MAX_FRAME_BYTES)
            .unwrap()
            .unwrap();
        let err = decode_response(&frame).unwrap().unwrap_err();
        assert_eq!(err.message.len(), MAX_ERROR_MESSAGE_BYTES - 1);
    }

    #[test]
    fn unknown_opcodes_and_trailing_bytes_are_typed_errors() {
        assert_eq!(
            Request::decode(999, b""),
            Err(DecodeError::UnknownOpcode(999))
        );
        assert_eq!(
            Request::decode(999, b"").unwrap_err().code(),
            ErrorCode::UnknownOpcode
        );
        assert_eq!(Response::decode(0, b""), Err(DecodeError::UnknownOpcode(0)));
        assert_eq!(
            Response::decode(Opcode::DeleteStream.as_u16(), b"x"),
            Err(DecodeError::TrailingBytes(1))
        );
        let mut payload = Vec::new();
        Request::DeleteStream(DeleteStreamRequest { name: "s" }).encode_payload(&mut payload);
        payload.push(0);
        assert_eq!(
            Request::decode(Opcode::DeleteStream.as_u16(), &payload),
            Err(DecodeError::TrailingBytes(1))
        );
    }
}
