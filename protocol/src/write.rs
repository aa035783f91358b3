//! Write messages: put one record, put a batch, put batches for many shards at once.
//!
//! Both carry a producer batch in exactly the [`crate::batch`] layout, as the payload's last
//! field (it runs to the end of the frame, its length is the batch's own `batch_len`). That
//! lets a client send the frame head and the batch from separate buffers with one vectored
//! write ([`encode_put_batch_head`]), and the server copy the batch once, from its receive
//! buffer into the shard's write buffer, and store it as is. Decoding checks the batch's
//! framing (magic, version, length); its checksums and records are checked by
//! [`crate::batch::check_producer_batch`] on the shard's core, where the bytes are touched
//! anyway.
//!
//! ```text
//! PutRecord   req:  stream str, batch (one record; the server routes it by MD5 of its key
//!                   or its explicit hash key)
//!             resp: shard_id u32, seq u64
//! PutBatch    req:  stream str, shard_id u32, batch (1..=500 records, all for that shard)
//!             resp: shard_id u32, base_seq u64, accepted u32, rejected opt<{code u16,
//!                   retry_after_ms u32}>
//! PutBatches  req:  stream str, count varint (1..=MAX_BATCHES_PER_PUT), then count times:
//!                   shard_id u32, batch (its own length field delimits it); shard ids distinct
//!             resp: count varint, then per batch in request order:
//!                   tag u8 = 0  stored: a PutBatch response (shard_id, base_seq, accepted,
//!                               rejected)
//!                   tag u8 = 1  failed: shard_id u32, code u16, retry_after_ms u32, message str
//! ```
//! PutBatches is Kinesis' PutRecords across shards, shaped for a shard-aware client: one
//! frame carries a batch for each of many shards (of one core), so a producer writing to
//! thousands of shards sends one request per core per linger instead of one per shard. Each
//! batch succeeds, is throttled in part, or fails on its own; the order of batches of
//! different shards does not matter, and a shard appears at most once per request.
//! The engine stores a batch whole, and when a limit admits only part of it, it stores a
//! prefix: records `0..accepted` got sequence numbers `base_seq + i`, and every later record
//! failed with `rejected`'s code. The client retries the rejected tail (in order, so a
//! partition key's records keep their order).

use crate::batch::{
    BatchError, BatchHeader, RecordIter, BATCH_HEADER_LEN, MAX_BATCH_BYTES, MAX_RECORDS_PER_BATCH,
};
use crate::error::ErrorCode;
use crate::frame::{begin_frame, finish_frame, Opcode};
use crate::message::Payload;
use crate::routing::hash_key;
use crate::stream::{get_stream_name, put_stream_name};
use crate::wire::{put_count, put_str, put_u16, put_u32, put_u64, put_u8, DecodeError, Reader};

/// Put one record. `batch` holds exactly one record, so its payload is checksummed like any
/// batch's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutRecordRequest<'a> {
    pub stream: &'a str,
    pub batch: &'a [u8],
}

/// Put a batch built for one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutBatchRequest<'a> {
    pub stream: &'a str,
    pub shard_id: u32,
    pub batch: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutRecordResponse {
    pub shard_id: u32,
    pub seq: u64,
}

/// Why the records after the accepted prefix of a batch failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    pub code: ErrorCode,
    /// When to retry (throttling); 0 when there is no hint.
    pub retry_after_ms: u32,
}

/// The per-record outcome of a put-batch, encoded as an accepted prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutBatchResponse {
    pub shard_id: u32,
    /// Sequence number of record 0; meaningless when `accepted` is 0.
    pub base_seq: u64,
    /// Records `0..accepted` are stored.
    pub accepted: u32,
    /// Why records `accepted..` failed; `None` when the whole batch was stored.
    pub rejected: Option<Rejection>,
}

impl PutBatchResponse {
    /// Sequence number of record `index`, if it was stored.
    pub fn seq_of(&self, index: u32) -> Option<u64> {
        (index < self.accepted).then(|| self.base_seq.wrapping_add(u64::from(index)))
    }

    /// One result per record of a batch of `record_count` records (the count the client
    /// sent). A record the response accounts for neither way (the server answered fewer
    /// accepted records and no rejection) is reported as `Internal`.
    pub fn results(&self, record_count: u32) -> Vec<Result<u64, Rejection>> {
        let missing = Rejection {
            code: ErrorCode::Internal,
            retry_after_ms: 0,
        };
        let rejected = self.rejected.unwrap_or(missing);
        (0..record_count)
            .map(|i| self.seq_of(i).ok_or(rejected))
            .collect()
    }
}

/// Most batches (shards) one put-batches request may carry.
pub const MAX_BATCHES_PER_PUT: usize = 10_000;

/// One shard's batch in a put-batches request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardBatch<'a> {
    pub shard_id: u32,
    pub batch: &'a [u8],
}

/// Put a batch to each of several shards of one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutBatchesRequest<'a> {
    pub stream: &'a str,
    pub batches: Vec<ShardBatch<'a>>,
}

/// Why one shard's batch of a put-batches request failed as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardFailure<'a> {
    pub shard_id: u32,
    pub code: ErrorCode,
    pub retry_after_ms: u32,
    pub message: &'a str,
    /// ShardClosed: the shard-map version that closed the shard; 0 otherwise.
    pub shard_map_version: u64,
}

/// The outcome of one shard's batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardOutcome<'a> {
    /// Stored whole, or a prefix stored and the rest refused (throttling).
    Stored(PutBatchResponse),
    Failed(ShardFailure<'a>),
}

impl ShardOutcome<'_> {
    pub fn shard_id(&self) -> u32 {
        match self {
            ShardOutcome::Stored(r) => r.shard_id,
            ShardOutcome::Failed(f) => f.shard_id,
        }
    }
}

/// One outcome per batch, in request order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutBatchesResponse<'a> {
    pub outcomes: Vec<ShardOutcome<'a>>,
}

/// The batch that ends a put payload, with its framing checked.
fn get_batch<'a>(r: &mut Reader<'a>) -> Result<(&'a [u8], BatchHeader), DecodeError> {
    let batch = r.rest();
    check_batch_framing(batch)
}

/// One batch inside a payload, delimited by its own length field.
fn get_inner_batch<'a>(r: &mut Reader<'a>) -> Result<(&'a [u8], BatchHeader), DecodeError> {
    let head = r.peek(BATCH_HEADER_LEN, "batch")?;
    let header = BatchHeader::decode(head)?;
    let len = header.batch_len as usize;
    if len > MAX_BATCH_BYTES {
        return Err(BatchError::BatchTooLarge(len).into());
    }
    if len < BATCH_HEADER_LEN {
        return Err(BatchError::LengthMismatch {
            field: len,
            actual: BATCH_HEADER_LEN,
        }
        .into());
    }
    check_batch_framing(r.take(len, "batch")?)
}

fn check_batch_framing(batch: &[u8]) -> Result<(&[u8], BatchHeader), DecodeError> {
    let header = BatchHeader::decode(batch)?;
    if batch.len() > MAX_BATCH_BYTES {
        return Err(BatchError::BatchTooLarge(batch.len()).into());
    }
    if header.batch_len as usize != batch.len() {
        return Err(BatchError::LengthMismatch {
            field: header.batch_len as usize,
            actual: batch.len(),
        }
        .into());
    }
    Ok((batch, header))
}

impl PutRecordRequest<'_> {
    /// The record's hash key: its explicit hash key, or the MD5 of its partition key. The
    /// server routes by it before the shard's core checks the batch's checksum, so a
    /// corrupted key at worst sends the record to a shard that then refuses it.
    pub fn hash_key(&self) -> Result<u128, BatchError> {
        let record =
            RecordIter::new(self.batch, 1)
                .next()
                .unwrap_or(Err(BatchError::CountMismatch {
                    declared: 1,
                    found: 0,
                }))?;
        Ok(record
            .explicit_hash_key
            .unwrap_or_else(|| hash_key(record.key)))
    }
}

impl<'a> Payload<'a> for PutRecordRequest<'a> {
    fn encode_payload(&self, out: &mut Vec<u8>) {
        put_stream_name(out, self.stream);
        out.extend_from_slice(self.batch);
    }

    fn decode_payload(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let stream = get_stream_name(r)?;
        let (batch, header) = get_batch(r)?;
        if header.record_count != 1 {
            return Err(DecodeError::Invalid {
                field: "batch",
                reason: "put-record takes one record",
            });
        }
        Ok(PutRecordRequest { stream, batch })
    }
}

impl<'a> Payload<'a> for PutBatchRequest<'a> {
    fn encode_payload(&self, out: &mut Vec<u8>) {
        put_stream_name(out, self.stream);
        put_u32(out, self.shard_id);
        out.extend_from_slice(self.batch);
    }

    fn decode_payload(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let stream = get_stream_name(r)?;
        let shard_id = r.u32("shard_id")?;
        let (batch, _) = get_batch(r)?;
        Ok(PutBatchRequest {
            stream,
            shard_id,
            batch,
        })
    }
}

impl<'a> Payload<'a> for PutRecordResponse {
    fn encode_payload(&self, out: &mut Vec<u8>) {
        put_u32(out, self.shard_id);
        put_u64(out, self.seq);
    }

    fn decode_payload(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        Ok(PutRecordResponse {
            shard_id: r.u32("shard_id")?,
            seq: r.u64("seq")?,
        })
    }
}

impl<'a> Payload<'a> for PutBatchResponse {
    fn encode_payload(&self, out: &mut Vec<u8>) {
        put_u32(out, self.shard_id);
        put_u64(out, self.base_seq);
        put_u32(out, self.accepted);
        match self.rejected {
            Some(rejection) => {
                put_u8(out, 1);
                put_u16(out, rejection.code.as_u16());
                put_u32(out, rejection.retry_after_ms);
            }
            None => put_u8(out, 0),
        }
    }

    fn decode_payload(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let shard_id = r.u32("shard_id")?;
        let base_seq = r.u64("base_seq")?;
        let accepted = r.u32("accepted")?;
        if accepted > MAX_RECORDS_PER_BATCH || base_seq.checked_add(u64::from(accepted)).is_none() {
            return Err(DecodeError::Malformed {
                field: "accepted",
                reason: "out of range",
            });
        }
        let rejected = if r.present("rejected")? {
            let raw = r.u16("rejected code")?;
            let code = ErrorCode::from_u16(raw).ok_or(DecodeError::UnknownErrorCode(raw))?;
            if code == ErrorCode::Ok {
                return Err(DecodeError::Malformed {
                    field: "rejected code",
                    reason: "Ok",
                });
            }
            Some(Rejection {
                code,
                retry_after_ms: r.u32("retry_after_ms")?,
            })
        } else {
            None
        };
        if accepted == 0 && rejected.is_none() {
            return Err(DecodeError::Malformed {
                field: "accepted",
                reason: "nothing accounted",
            });
        }
        Ok(PutBatchResponse {
            shard_id,
            base_seq,
            accepted,
            rejected,
        })
    }
}

impl<'a> Payload<'a> for PutBatchesRequest<'a> {
    fn encode_payload(&self, out: &mut Vec<u8>) {
        put_stream_name(out, self.stream);
        put_count(out, self.batches.len());
        for b in &self.batches {
            put_shard_batch(out, b.shard_id, b.batch);
        }
    }

    fn decode_payload(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let stream = get_stream_name(r)?;
        let n = r.count(MAX_BATCHES_PER_PUT, 4 + BATCH_HEADER_LEN, "batches")?;
        if n == 0 {
            return Err(DecodeError::Invalid {
                field: "batches",
                reason: "no batch",
            });
        }
        let mut batches = Vec::with_capacity(n);
        for _ in 0..n {
            let shard_id = r.u32("shard_id")?;
            let (batch, _) = get_inner_batch(r)?;
            batches.push(ShardBatch { shard_id, batch });
        }
        let mut ids: Vec<u32> = batches.iter().map(|b| b.shard_id).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return Err(DecodeError::Invalid {
                field: "batches",
                reason: "a shard appears twice",
            });
        }
        Ok(PutBatchesRequest { stream, batches })
    }
}

impl<'a> Payload<'a> for PutBatchesResponse<'a> {
    fn encode_payload(&self, out: &mut Vec<u8>) {
        put_count(out, self.outcomes.len());
        for o in &self.outcomes {
            match o {
                ShardOutcome::Stored(r) => {
                    put_u8(out, 0);
                    r.encode_payload(out);
                }
                ShardOutcome::Failed(f) => {
                    put_u8(out, 1);
                    put_u32(out, f.shard_id);
                    put_u16(out, f.code.as_u16());
                    put_u32(out, f.retry_after_ms);
                    put_str(out, crate::message::truncated_message(f.message));
                    put_u64(out, f.shard_map_version);
                }
            }
        }
    }

    fn decode_payload(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        // The smallest outcome is a stored one: 1 + 4 + 8 + 4 + 1 bytes (a failure takes
        // at least 1 + 4 + 2 + 4 + 1 + 8).
        let n = r.count(MAX_BATCHES_PER_PUT, 18, "outcomes")?;
        let mut outcomes = Vec::with_capacity(n);
        for _ in 0..n {
            let outcome = match r.u8("outcome")? {
                0 => ShardOutcome::Stored(PutBatchResponse::decode_payload(r)?),
                1 => {
                    let shard_id = r.u32("shard_id")?;
                    let raw = r.u16("code")?;
                    let code =
                        ErrorCode::from_u16(raw).ok_or(DecodeError::UnknownErrorCode(raw))?;
                    if code == ErrorCode::Ok {
                        return Err(DecodeError::Malformed {
                            field: "code",
                            reason: "Ok",
                        });
                    }
                    ShardOutcome::Failed(ShardFailure {
                        shard_id,
                        code,
                        retry_after_ms: r.u32("retry_after_ms")?,
                        message: r.str(crate::message::MAX_ERROR_MESSAGE_BYTES, "message")?,
                        shard_map_version: r.u64("shard_map_version")?,
                    })
                }
                _ => {
                    return Err(DecodeError::Malformed {
                        field: "outcome",
                        reason: "tag is neither 0 nor 1",
                    })
                }
            };
            outcomes.push(outcome);
        }
        Ok(PutBatchesResponse { outcomes })
    }
}

/// Appends one shard's entry of a put-batches body: the shard id, then the batch.
pub fn put_shard_batch(out: &mut Vec<u8>, shard_id: u32, batch: &[u8]) {
    put_u32(out, shard_id);
    out.extend_from_slice(batch);
}

/// Appends the head of a put-batches request frame: everything up to the first shard's
/// entry. The caller sends `body_len` bytes of entries (see [`put_shard_batch`]) right after.
pub fn encode_put_batches_head(
    out: &mut Vec<u8>,
    correlation_id: u64,
    stream: &str,
    count: usize,
    body_len: usize,
) {
    let start = begin_frame(out, 0, Opcode::PutBatches.as_u16(), correlation_id);
    put_stream_name(out, stream);
    put_count(out, count);
    finish_frame(out, start, body_len);
}

/// Appends the head of a put-batch request frame: everything but the batch, which the
/// caller sends right after `out` (a vectored write), so the batch is never copied into the
/// frame buffer. `batch_len` is the batch's length.
pub fn encode_put_batch_head(
    out: &mut Vec<u8>,
    correlation_id: u64,
    stream: &str,
    shard_id: u32,
    batch_len: usize,
) {
    let start = begin_frame(out, 0, Opcode::PutBatch.as_u16(), correlation_id);
    put_stream_name(out, stream);
    put_u32(out, shard_id);
    finish_frame(out, start, batch_len);
}

/// As [`encode_put_batch_head`], for a put-record request.
pub fn encode_put_record_head(
    out: &mut Vec<u8>,
    correlation_id: u64,
    stream: &str,
    batch_len: usize,
) {
    let start = begin_frame(out, 0, Opcode::PutRecord.as_u16(), correlation_id);
    put_stream_name(out, stream);
    finish_frame(out, start, batch_len);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{check_producer_batch, BatchBuilder, RecordRules};
    use crate::message::testkit::{check_request, check_response};
    use crate::message::{encode_request, Request, Response};
    use proptest::prelude::*;

    fn one_record(key: &[u8], explicit_hash_key: Option<u128>) -> Vec<u8> {
        let mut b = BatchBuilder::new();
        b.push(key, b"data", explicit_hash_key).unwrap();
        b.finish()
    }

    fn three_records() -> Vec<u8> {
        let mut b = BatchBuilder::new();
        for key in ["a", "b", "c"] {
            b.push(key.as_bytes(), &[1, 2, 3], None).unwrap();
        }
        b.finish()
    }

    #[test]
    fn requests_round_trip_and_truncate_cleanly() {
        let one = one_record(b"device-7", None);
        let three = three_records();
        check_request(&Request::PutRecord(PutRecordRequest {
            stream: "s",
            batch: &one,
        }));
        check_request(&Request::PutBatch(PutBatchRequest {
            stream: "s",
            shard_id: 3,
            batch: &three,
        }));
        // The server stores what it decoded: the very bytes the producer built.
        let mut out = Vec::new();
        let req = PutBatchRequest {
            stream: "s",
            shard_id: 3,
            batch: &three,
        };
        encode_request(&mut out, 1, &Request::PutBatch(req));
        let frame = crate::decode_frame(&out, crate::DEFAULT_MAX_FRAME_BYTES)
            .unwrap()
            .unwrap();
        let Request::PutBatch(decoded) = crate::decode_request(&frame).unwrap() else {
            panic!()
        };
        assert_eq!(decoded.batch, &three[..]);
        assert_eq!(
            check_producer_batch(decoded.batch, &RecordRules::default())
                .unwrap()
                .record_count,
            3
        );
    }

    #[test]
    fn responses_round_trip_and_truncate_cleanly() {
        check_response(&Response::PutRecord(PutRecordResponse {
            shard_id: 1,
            seq: 99,
        }));
        check_response(&Response::PutBatch(PutBatchResponse {
            shard_id: 2,
            base_seq: 1000,
            accepted: 500,
            rejected: None,
        }));
        check_response(&Response::PutBatch(PutBatchResponse {
            shard_id: 2,
            base_seq: 0,
            accepted: 0,
            rejected: Some(Rejection {
                code: ErrorCode::Throttled,
                retry_after_ms: 120,
            }),
        }));
    }

    #[test]
    fn put_batches_round_trip_truncate_and_refuse_a_shard_twice() {
        let one = one_record(b"device-7", None);
        let three = three_records();
        let req = PutBatchesRequest {
            stream: "s",
            batches: vec![
                ShardBatch {
                    shard_id: 4,
                    batch: &three,
                },
                ShardBatch {
                    shard_id: 1,
                    batch: &one,
                },
            ],
        };
        check_request(&Request::PutBatches(req.clone()));
        // The head helper and the entry helper make the same frame.
        let mut body = Vec::new();
        for b in &req.batches {
            put_shard_batch(&mut body, b.shard_id, b.batch);
        }
        let mut head = Vec::new();
        encode_put_batches_head(&mut head, 0xc0ff_ee00_0000_0001, "s", 2, body.len());
        head.extend_from_slice(&body);
        let mut whole = Vec::new();
        encode_request(&mut whole, 0xc0ff_ee00_0000_0001, &Request::PutBatches(req));
        assert_eq!(head, whole);
        // A shard twice is refused: its batches' order would be the server's guess.
        let twice = PutBatchesRequest {
            stream: "s",
            batches: vec![
                ShardBatch {
                    shard_id: 1,
                    batch: &one,
                },
                ShardBatch {
                    shard_id: 1,
                    batch: &one,
                },
            ],
        };
        let mut out = Vec::new();
        encode_request(&mut out, 1, &Request::PutBatches(twice));
        let frame = crate::decode_frame(&out, crate::DEFAULT_MAX_FRAME_BYTES)
            .unwrap()
            .unwrap();
        assert!(matches!(
            crate::decode_request(&frame),
            Err(DecodeError::Invalid { .. })
        ));
        check_response(&Response::PutBatches(PutBatchesResponse {
            outcomes: vec![
                ShardOutcome::Stored(PutBatchResponse {
                    shard_id: 4,
                    base_seq: 10,
                    accepted: 3,
                    rejected: None,
                }),
                ShardOutcome::Failed(ShardFailure {
                    shard_id: 1,
                    code: ErrorCode::WrongShard,
                    retry_after_ms: 0,
                    message: "hash key outside the shard",
                    shard_map_version: 0,
                }),
            ],
        }));
    }

    #[test]
    fn golden_put_batches_response() {
        let out = check_response(&Response::PutBatches(PutBatchesResponse {
            outcomes: vec![
                ShardOutcome::Stored(PutBatchResponse {
                    shard_id: 2,
                    base_seq: 7,
                    accepted: 1,
                    rejected: None,
                }),
                ShardOutcome::Failed(ShardFailure {
                    shard_id: 3,
                    code: ErrorCode::Throttled,
                    retry_after_ms: 9,
                    message: "x",
                    shard_map_version: 5,
                }),
            ],
        }));
        #[rustfmt::skip]
        let expected = [
            56, 0, 0, 0,  1,  1,  22, 0,  42, 0, 0, 0, 0, 0, 0, 0,
            2,                          // two outcomes
            0,                          // stored:
            2, 0, 0, 0,                 //   shard_id
            7, 0, 0, 0, 0, 0, 0, 0,     //   base_seq
            1, 0, 0, 0,                 //   accepted
            0,                          //   nothing rejected
            1,                          // failed:
            3, 0, 0, 0,                 //   shard_id
            0x90, 0x01,                 //   Throttled (400)
            9, 0, 0, 0,                 //   retry_after_ms
            1, b'x',                    //   message
            5, 0, 0, 0, 0, 0, 0, 0,     //   shard_map_version
        ];
        assert_eq!(out, expected);
    }

    #[test]
    fn golden_put_batch_response() {
        let out = check_response(&Response::PutBatch(PutBatchResponse {
            shard_id: 1,
            base_seq: 0x100,
            accepted: 2,
            rejected: Some(Rejection {
                code: ErrorCode::Throttled,
                retry_after_ms: 50,
            }),
        }));
        #[rustfmt::skip]
        let expected = [
            39, 0, 0, 0,  1,  1,  21, 0,  42, 0, 0, 0, 0, 0, 0, 0,
            1, 0, 0, 0,                 // shard_id
            0, 1, 0, 0, 0, 0, 0, 0,     // base_seq
            2, 0, 0, 0,                 // accepted
            1, 0x90, 0x01, 50, 0, 0, 0, // rejected: Throttled (400), retry after 50 ms
        ];
        assert_eq!(out, expected);
    }

    #[test]
    fn results_expand_the_prefix() {
        let r = PutBatchResponse {
            shard_id: 0,
            base_seq: 10,
            accepted: 2,
            rejected: Some(Rejection {
                code: ErrorCode::Throttled,
                retry_after_ms: 7,
            }),
        };
        let throttled = Rejection {
            code: ErrorCode::Throttled,
            retry_after_ms: 7,
        };
        assert_eq!(
            r.results(4),
            vec![Ok(10), Ok(11), Err(throttled), Err(throttled)]
        );
        let all = PutBatchResponse {
            rejected: None,
            ..r
        };
        assert_eq!(all.results(2), vec![Ok(10), Ok(11)]);
        let internal = Rejection {
            code: ErrorCode::Internal,
            retry_after_ms: 0,
        };
        assert_eq!(all.results(3)[2], Err(internal));
        assert_eq!(all.seq_of(1), Some(11));
        assert_eq!(all.seq_of(2), None);
    }

    #[test]
    fn head_encoders_match_full_frames() {
        let batch = three_records();
        let mut full = Vec::new();
        let req = PutBatchRequest {
            stream: "str",
            shard_id: 8,
            batch: &batch,
        };
        encode_request(&mut full, 5, &Request::PutBatch(req));
        let mut head = Vec::new();
        encode_put_batch_head(&mut head, 5, "str", 8, batch.len());
        head.extend_from_slice(&batch);
        assert_eq!(head, full);

        let one = one_record(b"k", None);
        let mut full = Vec::new();
        encode_request(
            &mut full,
            6,
            &Request::PutRecord(PutRecordRequest {
                stream: "s",
                batch: &one,
            }),
        );
        let mut head = Vec::new();
        encode_put_record_head(&mut head, 6, "s", one.len());
        head.extend_from_slice(&one);
        assert_eq!(head, full);
    }

    #[test]
    fn put_record_routes_by_key() {
        let one = one_record(b"device-7", None);
        let req = PutRecordRequest {
            stream: "s",
            batch: &one,
        };
        assert_eq!(req.hash_key(), Ok(hash_key(b"device-7")));
        let explicit = one_record(b"device-7", Some(12345));
        assert_eq!(
            PutRecordRequest {
                stream: "s",
                batch: &explicit
            }
            .hash_key(),
            Ok(12345)
        );
        assert!(PutRecordRequest {
            stream: "s",
            batch: b""
        }
        .hash_key()
        .is_err());
    }

    #[test]
    fn batch_framing_is_checked() {
        let three = three_records();
        let mut payload = Vec::new();
        PutRecordRequest {
            stream: "s",
            batch: &three,
        }
        .encode_payload(&mut payload);
        let err = Request::decode(Opcode::PutRecord.as_u16(), &payload).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidArgument);

        let mut payload = Vec::new();
        PutBatchRequest {
            stream: "s",
            shard_id: 0,
            batch: &three,
        }
        .encode_payload(&mut payload);
        payload.push(0);
        let err = Request::decode(Opcode::PutBatch.as_u16(), &payload).unwrap_err();
        assert!(matches!(
            err,
            DecodeError::Batch(BatchError::LengthMismatch { .. })
        ));
        assert_eq!(err.code(), ErrorCode::InvalidRecord);

        let mut bad_magic = three.clone();
        bad_magic[0] = b'X';
        let mut payload = Vec::new();
        PutBatchRequest {
            stream: "s",
            shard_id: 0,
            batch: &bad_magic,
        }
        .encode_payload(&mut payload);
        assert!(Request::decode(Opcode::PutBatch.as_u16(), &payload).is_err());
    }

    #[test]
    fn inconsistent_put_batch_responses_are_refused() {
        let bad = [
            PutBatchResponse {
                shard_id: 0,
                base_seq: 0,
                accepted: 0,
                rejected: None,
            },
            PutBatchResponse {
                shard_id: 0,
                base_seq: 0,
                accepted: 501,
                rejected: None,
            },
            PutBatchResponse {
                shard_id: 0,
                base_seq: u64::MAX,
                accepted: 2,
                rejected: None,
            },
        ];
        for response in bad {
            let mut payload = Vec::new();
            response.encode_payload(&mut payload);
            assert!(
                Response::decode(Opcode::PutBatch.as_u16(), &payload).is_err(),
                "{response:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn put_batches_round_trip(
            stream in "[a-z]{1,10}",
            shard_id: u32,
            records in proptest::collection::vec(("[a-z0-9]{1,8}", proptest::collection::vec(any::<u8>(), 0..32)), 1..8),
        ) {
            let mut b = BatchBuilder::new();
            for (k, d) in &records {
                b.push(k.as_bytes(), d, None).unwrap();
            }
            let batch = b.finish();
            check_request(&Request::PutBatch(PutBatchRequest { stream: &stream, shard_id, batch: &batch }));
        }

        #[test]
        fn put_batch_responses_round_trip(
            shard_id: u32,
            base_seq in 0..u64::MAX / 2,
            accepted in 0..=MAX_RECORDS_PER_BATCH,
            retry_after_ms: u32,
            code_index in 1..ErrorCode::ALL.len(),
        ) {
            let rejected = (accepted < MAX_RECORDS_PER_BATCH || accepted == 0)
                .then_some(Rejection { code: ErrorCode::ALL[code_index], retry_after_ms });
            check_response(&Response::PutBatch(PutBatchResponse { shard_id, base_seq, accepted, rejected }));
        }
    }
}
