//! Spate's wire protocol: a pure codec with no I/O and no async runtime. The server, the
//! client library, the CLI and the load generator all speak through it; none of it knows
//! about sockets or cores, so every function here is deterministic and testable alone.
//!
//! # What travels
//!
//! A connection carries length-prefixed frames in both directions. Requests are pipelined:
//! a client may send many before the first answer, and responses may come back in any order
//! (each engine core answers as its shard finishes); the correlation id pairs them up.
//!
//! ```text
//! frame (integers little-endian)
//! offset size field           meaning
//!  0     4    frame_len       total frame bytes, header included (16 + payload)
//!  4     1    version         PROTOCOL_VERSION (1)
//!  5     1    flags           bit 0 RESPONSE, bit 1 ERROR, bit 2 MORE (another
//!                             response follows: a subscription's events); bits 3..8 0
//!  6     2    opcode          Hello 1 | AuthChallenge 2 | Authenticate 3 | CreateStream 10 | DeleteStream 11 | ListStreams 12 |
//!                             DescribeStream 13 | IncreaseRetention 14 |
//!                             DecreaseRetention 15 | SplitShard 16 | MergeShards 17 |
//!                             UpdateShardCount 18 | UpdateStreamMode 19 |
//!                             EnableEnhancedMonitoring 23 | DisableEnhancedMonitoring 24 |
//!                             StartStreamEncryption 25 | StopStreamEncryption 26 |
//!                             PutRecord 20 | PutBatch 21 |
//!                             PutBatches 22 | GetIterator 30 | GetRecords 31 |
//!                             RegisterConsumer 40 | DeregisterConsumer 41 |
//!                             ListConsumers 42 | DescribeConsumer 43 |
//!                             SubscribeToShard 44 | SubscribeCredit 45 |
//!                             GroupHeartbeat 50 | Checkpoint 51 | DescribeGroup 52 |
//!                             DeleteGroup 53 | ListGroups 54 | CreatePrincipal 60 |
//!                             ListPrincipals 61 | UpdatePrincipal 62 |
//!                             DeletePrincipal 63 | PutPolicy 64 | GetPolicy 65 |
//!                             DeletePolicy 66 | ReadAudit 70 | RotateKeys 71
//!  8     8    correlation_id  chosen by the client, echoed by the response
//! 16     ...  payload         request, response, or error body (see below)
//!
//! error body (flags RESPONSE|ERROR): code u16, retry_after_ms u32, message str,
//!                                     shard_map_version u64
//! ```
//!
//! Payload fields: fixed-width little-endian integers; `str`/`bytes` are a LEB128 varint
//! length then the bytes; `opt<T>` is a presence byte (0 or 1) then `T`; lists are a varint
//! count then the elements. Each command group's module draws its messages: [`hello`],
//! [`stream`], [`write`](mod@write), [`read`], [`consumer`], [`auth`]; the iterator token is drawn in [`token`].
//!
//! Records travel in the [`batch`] layout, byte for byte as the producer built them and as
//! the engine stores them: a 64-byte header (magic `SPB1`, header CRC, length, version,
//! record count, records CRC, base sequence number, arrival time, segment nonce) then the
//! records back to back (attributes, optional explicit hash key, varint key length, key,
//! varint data length, data). A put request ends with one producer batch; a get-records
//! response ends with stored batches back to back. See `batch.rs` for the exact layout.
//!
//! ```text
//! put-batch request frame
//! ┌──────────────┬──────────────────────────┬─────────────────────────────────────────┐
//! │ frame header │ stream str, shard_id u32 │ batch: header (64) │ record │ record … │
//! └──────────────┴──────────────────────────┴─────────────────────────────────────────┘
//!                                             └─ stored as is, CRCs checked end to end
//! ```
//!
//! # Use
//!
//! Receiving: [`decode_frame`] over the unread bytes (`Ok(None)`: read more), then
//! [`decode_request`] or [`decode_response`], which borrow strings and batches from the
//! buffer. Sending: [`encode_request`], [`encode_response`], [`encode_error`] append one
//! frame to a caller-owned `Vec<u8>`; [`write::encode_put_batch_head`] and
//! [`read::encode_get_records_head`] write everything but the batches, for a vectored write.
//! A framing error ([`FrameError`]) desynchronises the stream: answer it and close. A
//! [`DecodeError`] concerns one request: answer it with [`DecodeError::code`] and go on.
//!
//! Decoding never panics on any input, never allocates for a claimed length before the
//! bytes are known to be there, and reports a typed error. `tests/fuzz_smoke.rs` throws
//! mutated frames at every decoder under `cargo test`; the `fuzz/` crate at the workspace
//! root does the same under libFuzzer.

pub mod auth;
pub mod batch;
pub mod consumer;
pub mod error;
pub mod frame;
pub mod hello;
pub mod message;
pub mod read;
pub mod routing;
pub mod scram;
pub mod stream;
pub mod token;
mod wire;
pub mod write;

#[doc(hidden)]
pub mod fuzzing;

pub use error::ErrorCode;
pub use frame::{
    decode_frame, peek_header, Frame, FrameError, FrameHeader, Opcode, DEFAULT_MAX_FRAME_BYTES,
    FLAG_ERROR, FLAG_MORE, FLAG_RESPONSE, FRAME_HEADER_LEN, PROTOCOL_VERSION,
};
pub use hello::{CoreInfo, HelloRequest, HelloResponse};
pub use message::{
    decode_request, decode_response, encode_error, encode_request, encode_response, ErrorResponse,
    Reply, Request, Response, MAX_ERROR_MESSAGE_BYTES,
};
pub use read::{
    encode_get_records_head, encode_get_records_response, BatchSlices, GetIteratorRequest,
    GetIteratorResponse, GetRecordsHead, GetRecordsRequest, GetRecordsResponse, IteratorPosition,
    ReadError, Record, ShardIds,
};
pub use stream::{
    CapacityMode, CreateStreamRequest, CreateStreamResponse, DeleteStreamRequest,
    DescribeStreamRequest, EncryptionType, Limits, ListStreamsRequest, ListStreamsResponse,
    MergeShardsRequest, ReshardResponse, RetentionRequest, RotateKeysResponse, ShardDescription,
    ShardState, SplitShardRequest, StreamDescription, StreamEncryptionRequest, StreamStatus,
    UpdateShardCountRequest, UpdateStreamModeRequest,
};
pub use token::{IteratorToken, TokenKey, ITERATOR_LIFETIME_MS};
pub use wire::DecodeError;
pub use write::{
    encode_put_batch_head, encode_put_batches_head, encode_put_record_head, put_shard_batch,
    PutBatchRequest, PutBatchResponse, PutBatchesRequest, PutBatchesResponse, PutRecordRequest,
    PutRecordResponse, Rejection, ShardBatch, ShardFailure, ShardOutcome, MAX_BATCHES_PER_PUT,
};
