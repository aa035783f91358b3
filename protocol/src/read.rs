//! Read messages: open a shard iterator, get records at it, and the client-side walk over
//! the records a get-records response carries.
//!
//! The engine answers get-records with stored batches, unmodified (stamped with sequence
//! numbers and arrival time, still covered by both CRCs), so a consumer checks end to end
//! what the producer checksummed. Batches are stored whole, so the first batch may begin
//! before `start_seq` and the last may run past `end_seq`: a reader yields only records with
//! `start_seq <= seq < end_seq` ([`GetRecordsResponse::records`] does). Batches travel back
//! to back at the end of the payload, each delimited by its own `batch_len`, so the server
//! can send a run of them straight from the segment (vectored write or sendfile) after
//! [`encode_get_records_head`].
//!
//! ```text
//! GetIterator   req:  stream str, shard_id u32, position: tag u8
//!                     (0 TRIM_HORIZON | 1 LATEST | 2 AT_SEQUENCE_NUMBER seq u64 |
//!                      3 AFTER_SEQUENCE_NUMBER seq u64 | 4 AT_TIMESTAMP ts_ms i64)
//!               resp: iterator bytes (opaque; at most MAX_ITERATOR_TOKEN_BYTES)
//! GetRecords    req:  iterator bytes, max_records u32 (1..=10,000),
//!                     max_bytes u32 (1..=10 MiB), wait_ms u32 (0..=MAX_WAIT_MS; 0 = answer at
//!                     once, else long-poll until a record arrives or the wait ends)
//!               resp: start_seq u64, end_seq u64 (exclusive), millis_behind_latest u64,
//!                     next_iterator opt<bytes> (absent: the shard is closed and drained),
//!                     child_shards: count varint, count × u32 (once drained: the shards
//!                     that took over its keys),
//!                     batch_count u32, batches (the rest: batch_count stored batches)
//! ```
//! The server keeps the batches of one response within `max_bytes`, except that the first
//! batch is always sent whole, so a response stays within `DEFAULT_MAX_FRAME_BYTES`.

use crate::batch::{verify_stored, BatchError, BatchHeader, RecordIter, BATCH_HEADER_LEN};
use crate::error::ErrorCode;
use crate::frame::{begin_frame, finish_frame, Opcode, FLAG_RESPONSE};
use crate::message::Payload;
use crate::stream::{get_stream_name, put_stream_name};
use crate::token::MAX_ITERATOR_TOKEN_BYTES;
use crate::wire::{
    put_bytes, put_count, put_i64, put_option, put_u32, put_u64, put_u8, DecodeError, Reader,
};

/// Kinesis: at most 10,000 records per get-records call.
pub const MAX_RECORDS_PER_READ: u32 = 10_000;
/// Kinesis: at most 10 MiB per get-records call.
pub const MAX_BYTES_PER_READ: u32 = 10 * 1024 * 1024;
/// The longest long-poll a get-records call may ask for.
pub const MAX_WAIT_MS: u32 = 30_000;

/// Where a new iterator starts in its shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IteratorPosition {
    /// The oldest retained record.
    TrimHorizon,
    /// Just after the newest record: only records put from now on.
    Latest,
    AtSequenceNumber {
        seq: u64,
    },
    AfterSequenceNumber {
        seq: u64,
    },
    /// The first record that arrived at or after this time (ms since the epoch).
    AtTimestamp {
        ts_ms: i64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GetIteratorRequest<'a> {
    pub stream: &'a str,
    pub shard_id: u32,
    pub position: IteratorPosition,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GetIteratorResponse<'a> {
    /// An opaque token (the server encodes an [`crate::IteratorToken`]).
    pub iterator: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GetRecordsRequest<'a> {
    pub iterator: &'a [u8],
    pub max_records: u32,
    pub max_bytes: u32,
    /// Long-poll: how long the server may hold the call open for a first record.
    pub wait_ms: u32,
}

/// The fields of a get-records response before its batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GetRecordsHead<'a> {
    /// First sequence number this response covers.
    pub start_seq: u64,
    /// One past the last; the next iterator resumes here.
    pub end_seq: u64,
    /// How far the last record returned is behind the shard's newest (0 at the tip).
    pub millis_behind_latest: u64,
    /// Where to read next; `None` once the shard is closed and fully read.
    pub next_iterator: Option<&'a [u8]>,
    /// Once `next_iterator` is `None`: the shards that took over the closed shard's keys
    /// (read them next; a merged child after both its parents).
    pub child_shards: ShardIds<'a>,
}

/// A list of shard ids borrowed from a frame (or built by [`ShardIds::encode`]): u32s,
/// little-endian, back to back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ShardIds<'a> {
    bytes: &'a [u8],
}

impl<'a> ShardIds<'a> {
    /// The wire form of `ids`, to borrow a `ShardIds` from (`ShardIds::from_bytes`).
    pub fn encode(ids: &[u32]) -> Vec<u8> {
        ids.iter().flat_map(|id| id.to_le_bytes()).collect()
    }

    /// Ids from their wire form; `None` if the length is not a multiple of 4.
    pub fn from_bytes(bytes: &'a [u8]) -> Option<ShardIds<'a>> {
        (bytes.len() % 4 == 0).then_some(ShardIds { bytes })
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn len(&self) -> usize {
        self.bytes.len() / 4
    }

    pub fn iter(&self) -> impl Iterator<Item = u32> + 'a {
        self.bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
    }

    /// The ids as they travel: u32s, little-endian.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    pub fn to_vec(&self) -> Vec<u32> {
        self.iter().collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GetRecordsResponse<'a> {
    pub head: GetRecordsHead<'a>,
    pub batches: BatchSlices<'a>,
}

/// Stored batches back to back, borrowed from the response frame. Constructed only through
/// [`BatchSlices::parse`], which checks that the region splits into exactly `count` batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSlices<'a> {
    bytes: &'a [u8],
    count: u32,
}

/// The `batch_len` field of the batch at the start of `bytes`, if the header is there.
fn batch_len_at(bytes: &[u8]) -> Option<usize> {
    let field = bytes.get(8..12)?;
    Some(u32::from_le_bytes([field[0], field[1], field[2], field[3]]) as usize)
}

impl<'a> BatchSlices<'a> {
    /// Splits `bytes` into `count` batches by their `batch_len` fields. Checks framing only;
    /// each batch's integrity is [`verify_stored`]'s job.
    pub fn parse(bytes: &'a [u8], count: u32) -> Result<BatchSlices<'a>, DecodeError> {
        if (count as usize).saturating_mul(BATCH_HEADER_LEN) > bytes.len() {
            return Err(DecodeError::Truncated { field: "batches" });
        }
        let mut rest = bytes;
        for _ in 0..count {
            let len = batch_len_at(rest).ok_or(DecodeError::Truncated { field: "batch" })?;
            if len < BATCH_HEADER_LEN {
                return Err(DecodeError::Malformed {
                    field: "batch",
                    reason: "shorter than a header",
                });
            }
            if len > rest.len() {
                return Err(DecodeError::Truncated { field: "batch" });
            }
            rest = &rest[len..];
        }
        if !rest.is_empty() {
            return Err(DecodeError::TrailingBytes(rest.len()));
        }
        Ok(BatchSlices { bytes, count })
    }

    /// No batches.
    pub fn empty() -> BatchSlices<'static> {
        BatchSlices {
            bytes: &[],
            count: 0,
        }
    }

    pub fn len(&self) -> u32 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The whole region, as it travels on the wire.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    pub fn iter(&self) -> BatchSliceIter<'a> {
        BatchSliceIter {
            rest: self.bytes,
            left: self.count,
        }
    }
}

impl<'a> IntoIterator for BatchSlices<'a> {
    type Item = &'a [u8];
    type IntoIter = BatchSliceIter<'a>;

    fn into_iter(self) -> BatchSliceIter<'a> {
        self.iter()
    }
}

/// Yields each batch of a [`BatchSlices`] as its own byte slice.
#[derive(Debug, Clone)]
pub struct BatchSliceIter<'a> {
    rest: &'a [u8],
    left: u32,
}

impl<'a> Iterator for BatchSliceIter<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.left == 0 {
            return None;
        }
        // `parse` checked the framing; the checks here only keep this panic-free.
        let len = batch_len_at(self.rest).filter(|&len| len <= self.rest.len())?;
        let (batch, rest) = self.rest.split_at(len);
        self.rest = rest;
        self.left -= 1;
        Some(batch)
    }
}

/// One record of a get-records response, borrowed from the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub seq: u64,
    pub arrival_ts_ms: i64,
    pub key: &'a [u8],
    pub data: &'a [u8],
    pub explicit_hash_key: Option<u128>,
}

/// Why a get-records response failed the client's end-to-end check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("batch {index}: {source}")]
    Batch { index: u32, source: BatchError },
    #[error(
        "batch {index} starts at seq {base_seq}, before the previous batch ended at {min_seq}"
    )]
    OutOfOrder {
        index: u32,
        base_seq: u64,
        min_seq: u64,
    },
}

impl ReadError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ReadError::Batch { source, .. } => ErrorCode::from(source.clone()),
            ReadError::OutOfOrder { .. } => ErrorCode::Internal,
        }
    }
}

impl<'a> GetRecordsResponse<'a> {
    /// The records with `start_seq <= seq < end_seq`, in order, after verifying every batch
    /// (both CRCs) and that batches do not go back in sequence. Stops at the first error.
    pub fn records(&self) -> Records<'a> {
        Records::window(self.batches, self.head.start_seq, self.head.end_seq)
    }
}

/// The batch being walked: its header and records, and the next record's sequence number.
#[derive(Debug, Clone)]
struct CurrentBatch<'a> {
    header: BatchHeader,
    records: RecordIter<'a>,
    next_seq: u64,
}

/// See [`GetRecordsResponse::records`].
#[derive(Debug, Clone)]
pub struct Records<'a> {
    batches: BatchSliceIter<'a>,
    batch_index: u32,
    current: Option<CurrentBatch<'a>>,
    min_seq: u64,
    start_seq: u64,
    end_seq: u64,
    failed: bool,
}

impl<'a> Records<'a> {
    /// The records of `batches` with `start_seq <= seq < end_seq`.
    pub(crate) fn window(batches: BatchSlices<'a>, start_seq: u64, end_seq: u64) -> Records<'a> {
        Records {
            batches: batches.iter(),
            batch_index: 0,
            current: None,
            min_seq: 0,
            start_seq,
            end_seq,
            failed: false,
        }
    }

    fn open_next_batch(&mut self, batch: &'a [u8]) -> Result<(), ReadError> {
        let index = self.batch_index;
        self.batch_index += 1;
        let header = verify_stored(batch).map_err(|source| ReadError::Batch { index, source })?;
        if header.base_seq < self.min_seq {
            return Err(ReadError::OutOfOrder {
                index,
                base_seq: header.base_seq,
                min_seq: self.min_seq,
            });
        }
        // Saturating: the sequence numbers are off the wire, and a hostile one must not panic.
        self.min_seq = header
            .base_seq
            .saturating_add(u64::from(header.record_count));
        self.current = Some(CurrentBatch {
            header,
            records: RecordIter::new(batch, header.record_count),
            next_seq: header.base_seq,
        });
        Ok(())
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<Record<'a>, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.failed {
            let Some(current) = &mut self.current else {
                let batch = self.batches.next()?;
                if let Err(e) = self.open_next_batch(batch) {
                    self.failed = true;
                    return Some(Err(e));
                }
                continue;
            };
            match current.records.next() {
                None => self.current = None,
                Some(Err(source)) => {
                    self.failed = true;
                    return Some(Err(ReadError::Batch {
                        index: self.batch_index - 1,
                        source,
                    }));
                }
                Some(Ok(r)) => {
                    let seq = current.next_seq;
                    current.next_seq = seq.saturating_add(1);
                    if (self.start_seq..self.end_seq).contains(&seq) {
                        return Some(Ok(Record {
                            seq,
                            arrival_ts_ms: current.header.first_ts_ms,
                            key: r.key,
                            data: r.data,
                            explicit_hash_key: r.explicit_hash_key,
                        }));
                    }
                }
            }
        }
        None
    }
}

const POSITION_TRIM_HORIZON: u8 = 0;
const POSITION_LATEST: u8 = 1;
const POSITION_AT_SEQUENCE_NUMBER: u8 = 2;
const POSITION_AFTER_SEQUENCE_NUMBER: u8 = 3;
const POSITION_AT_TIMESTAMP: u8 = 4;

pub(crate) fn put_position(out: &mut Vec<u8>, position: IteratorPosition) {
    match position {
        IteratorPosition::TrimHorizon => put_u8(out, POSITION_TRIM_HORIZON),
        IteratorPosition::Latest => put_u8(out, POSITION_LATEST),
        IteratorPosition::AtSequenceNumber { seq } => {
            put_u8(out, POSITION_AT_SEQUENCE_NUMBER);
            put_u64(out, seq);
        }
        IteratorPosition::AfterSequenceNumber { seq } => {
            put_u8(out, POSITION_AFTER_SEQUENCE_NUMBER);
            put_u64(out, seq);
        }
        IteratorPosition::AtTimestamp { ts_ms } => {
            put_u8(out, POSITION_AT_TIMESTAMP);
            put_i64(out, ts_ms);
        }
    }
}

pub(crate) fn get_position(r: &mut Reader<'_>) -> Result<IteratorPosition, DecodeError> {
    Ok(match r.u8("position")? {
        POSITION_TRIM_HORIZON => IteratorPosition::TrimHorizon,
        POSITION_LATEST => IteratorPosition::Latest,
        POSITION_AT_SEQUENCE_NUMBER => IteratorPosition::AtSequenceNumber { seq: r.u64("seq")? },
        POSITION_AFTER_SEQUENCE_NUMBER => {
            IteratorPosition::AfterSequenceNumber { seq: r.u64("seq")? }
        }
        POSITION_AT_TIMESTAMP => IteratorPosition::AtTimestamp {
            ts_ms: r.i64("ts_ms")?,
        },
        _ => {
            return Err(DecodeError::Malformed {
                field: "position",
                reason: "unknown tag",
            })
        }
    })
}

impl<'a> Payload<'a> for GetIteratorRequest<'a> {
    fn encode_payload(&self, out: &mut Vec<u8>) {
        put_stream_name(out, self.stream);
        put_u32(out, self.shard_id);
        put_position(out, self.position);
    }

    fn decode_payload(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let stream = get_stream_name(r)?;
        let shard_id = r.u32("shard_id")?;
        let position = get_position(r)?;
        Ok(GetIteratorRequest {
            stream,
            shard_id,
            position,
        })
    }
}

impl<'a> Payload<'a> for GetIteratorResponse<'a> {
    fn encode_payload(&self, out: &mut Vec<u8>) {
        put_bytes(out, self.iterator);
    }

    fn decode_payload(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        Ok(GetIteratorResponse {
            iterator: r.bytes(MAX_ITERATOR_TOKEN_BYTES, "iterator")?,
        })
    }
}

impl<'a> Payload<'a> for GetRecordsRequest<'a> {
    fn encode_payload(&self, out: &mut Vec<u8>) {
        put_bytes(out, self.iterator);
        put_u32(out, self.max_records);
        put_u32(out, self.max_bytes);
        put_u32(out, self.wait_ms);
    }

    fn decode_payload(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        // The token itself is checked by the server (`IteratorToken::decode`), which answers
        // InvalidIterator rather than a generic argument error.
        let iterator = r.bytes(MAX_ITERATOR_TOKEN_BYTES, "iterator")?;
        let max_records = r.u32("max_records")?;
        if max_records == 0 || max_records > MAX_RECORDS_PER_READ {
            return Err(DecodeError::Invalid {
                field: "max_records",
                reason: "not in 1..=10000",
            });
        }
        let max_bytes = r.u32("max_bytes")?;
        if max_bytes == 0 || max_bytes > MAX_BYTES_PER_READ {
            return Err(DecodeError::Invalid {
                field: "max_bytes",
                reason: "not in 1..=10 MiB",
            });
        }
        let wait_ms = r.u32("wait_ms")?;
        if wait_ms > MAX_WAIT_MS {
            return Err(DecodeError::Invalid {
                field: "wait_ms",
                reason: "above MAX_WAIT_MS",
            });
        }
        Ok(GetRecordsRequest {
            iterator,
            max_records,
            max_bytes,
            wait_ms,
        })
    }
}

fn put_head(out: &mut Vec<u8>, head: &GetRecordsHead<'_>) {
    put_u64(out, head.start_seq);
    put_u64(out, head.end_seq);
    put_u64(out, head.millis_behind_latest);
    put_option(out, head.next_iterator, put_bytes);
    put_count(out, head.child_shards.len());
    out.extend_from_slice(head.child_shards.bytes);
}

impl<'a> Payload<'a> for GetRecordsResponse<'a> {
    fn encode_payload(&self, out: &mut Vec<u8>) {
        put_head(out, &self.head);
        put_u32(out, self.batches.count);
        out.extend_from_slice(self.batches.bytes);
    }

    fn decode_payload(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let start_seq = r.u64("start_seq")?;
        let end_seq = r.u64("end_seq")?;
        if end_seq < start_seq {
            return Err(DecodeError::Malformed {
                field: "end_seq",
                reason: "below start_seq",
            });
        }
        let millis_behind_latest = r.u64("millis_behind_latest")?;
        let next_iterator = if r.present("next_iterator")? {
            Some(r.bytes(MAX_ITERATOR_TOKEN_BYTES, "next_iterator")?)
        } else {
            None
        };
        let children = r.count(
            crate::stream::MAX_SHARDS_PER_STREAM as usize,
            4,
            "child_shards",
        )?;
        let child_shards = ShardIds {
            bytes: r.take(children * 4, "child_shards")?,
        };
        let count = r.u32("batch_count")?;
        let batches = BatchSlices::parse(r.rest(), count)?;
        let head = GetRecordsHead {
            start_seq,
            end_seq,
            millis_behind_latest,
            next_iterator,
            child_shards,
        };
        Ok(GetRecordsResponse { head, batches })
    }
}

/// Appends a whole get-records response frame, copying each stored batch in (the one copy
/// on the read path when the server does not send batches by vectored write). Every slice
/// must be one whole stored batch.
pub fn encode_get_records_response<'b>(
    out: &mut Vec<u8>,
    correlation_id: u64,
    head: &GetRecordsHead<'_>,
    batches: impl IntoIterator<Item = &'b [u8]>,
) {
    let start = begin_frame(
        out,
        FLAG_RESPONSE,
        Opcode::GetRecords.as_u16(),
        correlation_id,
    );
    put_head(out, head);
    let count_at = out.len();
    put_u32(out, 0);
    let mut count = 0u32;
    for batch in batches {
        // Pair assertion: the reader splits batches by this field, so a slice that is not
        // exactly one batch would corrupt every batch after it.
        assert_eq!(
            batch_len_at(batch),
            Some(batch.len()),
            "slice is not one whole batch"
        );
        out.extend_from_slice(batch);
        count += 1;
    }
    out[count_at..count_at + 4].copy_from_slice(&count.to_le_bytes());
    finish_frame(out, start, 0);
}

/// Appends the head of a get-records response frame: everything but the batches, which the
/// caller sends right after `out` without copying (`batch_count` whole batches,
/// `batches_len` bytes in all, e.g. one contiguous run of a segment file).
pub fn encode_get_records_head(
    out: &mut Vec<u8>,
    correlation_id: u64,
    head: &GetRecordsHead<'_>,
    batch_count: u32,
    batches_len: usize,
) {
    let start = begin_frame(
        out,
        FLAG_RESPONSE,
        Opcode::GetRecords.as_u16(),
        correlation_id,
    );
    put_head(out, head);
    put_u32(out, batch_count);
    finish_frame(out, start, batches_len);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{stamp, BatchBuilder};
    use crate::message::testkit::{check_request, check_response};
    use crate::message::{decode_response, encode_response, Request, Response};
    use crate::token::IteratorToken;
    use crate::{decode_frame, DEFAULT_MAX_FRAME_BYTES};
    use proptest::prelude::*;

    /// A stored batch: `n` records from `base_seq`, keys "k{i}", data [i].
    fn stored(base_seq: u64, n: u32, ts_ms: i64) -> Vec<u8> {
        let mut b = BatchBuilder::new();
        for i in 0..n {
            b.push(format!("k{i}").as_bytes(), &[i as u8], None)
                .unwrap();
        }
        let mut batch = b.finish();
        stamp(&mut batch, base_seq, ts_ms, 0xabc);
        batch
    }

    fn token() -> [u8; crate::token::ITERATOR_TOKEN_LEN] {
        IteratorToken {
            stream_id: 1,
            shard_id: 2,
            next_seq: 3,
            issued_at_ms: 4,
        }
        .encode(&crate::token::TokenKey::new([1; 32]))
    }

    fn response_bytes(head: &GetRecordsHead<'_>, batches: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_get_records_response(&mut out, 42, head, batches.iter().copied());
        out
    }

    fn decoded(frame: &[u8]) -> GetRecordsResponse<'_> {
        let frame = decode_frame(frame, DEFAULT_MAX_FRAME_BYTES)
            .unwrap()
            .unwrap();
        match decode_response(&frame) {
            Ok(Ok(Response::GetRecords(r))) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn requests_round_trip_and_truncate_cleanly() {
        let positions = [
            IteratorPosition::TrimHorizon,
            IteratorPosition::Latest,
            IteratorPosition::AtSequenceNumber { seq: 5 },
            IteratorPosition::AfterSequenceNumber { seq: u64::MAX },
            IteratorPosition::AtTimestamp { ts_ms: -1 },
        ];
        for position in positions {
            check_request(&Request::GetIterator(GetIteratorRequest {
                stream: "s",
                shard_id: 9,
                position,
            }));
        }
        let token = token();
        check_request(&Request::GetRecords(GetRecordsRequest {
            iterator: &token,
            max_records: MAX_RECORDS_PER_READ,
            max_bytes: MAX_BYTES_PER_READ,
            wait_ms: MAX_WAIT_MS,
        }));
        check_request(&Request::GetRecords(GetRecordsRequest {
            iterator: b"",
            max_records: 1,
            max_bytes: 1,
            wait_ms: 0,
        }));
    }

    #[test]
    fn responses_round_trip_and_truncate_cleanly() {
        let token = token();
        check_response(&Response::GetIterator(GetIteratorResponse {
            iterator: &token,
        }));
        let a = stored(10, 3, 1000);
        let b = stored(13, 2, 1001);
        let region = [a.clone(), b.clone()].concat();
        let batches = BatchSlices::parse(&region, 2).unwrap();
        let head = GetRecordsHead {
            start_seq: 11,
            end_seq: 15,
            millis_behind_latest: 7,
            next_iterator: Some(&token),
            child_shards: Default::default(),
        };
        let out = check_response(&Response::GetRecords(GetRecordsResponse { head, batches }));
        assert_eq!(out, response_bytes(&head, &[&a, &b]));
        let drained = GetRecordsHead {
            next_iterator: None,
            start_seq: 3,
            end_seq: 3,
            ..head
        };
        let empty = BatchSlices::empty();
        check_response(&Response::GetRecords(GetRecordsResponse {
            head: drained,
            batches: empty,
        }));
    }

    #[test]
    fn golden_get_iterator_request() {
        let out = check_request(&Request::GetIterator(GetIteratorRequest {
            stream: "s",
            shard_id: 1,
            position: IteratorPosition::AtSequenceNumber { seq: 2 },
        }));
        #[rustfmt::skip]
        let expected = [
            31, 0, 0, 0,  1,  0,  30, 0,  1, 0, 0, 0, 0, 0xee, 0xff, 0xc0,
            1, b's',                  // stream
            1, 0, 0, 0,               // shard_id
            2, 2, 0, 0, 0, 0, 0, 0, 0 // AT_SEQUENCE_NUMBER 2
        ];
        assert_eq!(out, expected);
    }

    #[test]
    fn records_are_verified_and_clipped_to_the_range() {
        let a = stored(10, 3, 1000);
        let b = stored(13, 2, 1001);
        let head = GetRecordsHead {
            start_seq: 11,
            end_seq: 14,
            millis_behind_latest: 0,
            next_iterator: None,
            child_shards: Default::default(),
        };
        let frame = response_bytes(&head, &[&a, &b]);
        let response = decoded(&frame);
        assert_eq!(response.batches.len(), 2);
        assert_eq!(
            response.batches.iter().collect::<Vec<_>>(),
            vec![&a[..], &b[..]]
        );
        let records: Vec<_> = response.records().map(Result::unwrap).collect();
        let seqs: Vec<_> = records.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![11, 12, 13]);
        assert_eq!(records[0].key, b"k1");
        assert_eq!(records[0].data, &[1]);
        assert_eq!(records[0].arrival_ts_ms, 1000);
        assert_eq!(records[2].key, b"k0");
        assert_eq!(records[2].arrival_ts_ms, 1001);
    }

    #[test]
    fn corruption_and_reordering_are_caught() {
        let a = stored(10, 3, 1000);
        let b = stored(13, 2, 1001);
        let head = GetRecordsHead {
            start_seq: 10,
            end_seq: 15,
            millis_behind_latest: 0,
            next_iterator: None,
            child_shards: Default::default(),
        };
        let mut frame = response_bytes(&head, &[&a, &b]);
        let last = frame.len() - 1;
        frame[last] ^= 1; // the last data byte of batch b
        let results: Vec<_> = decoded(&frame).records().collect();
        assert_eq!(results.len(), 4, "three good records, then the error");
        assert_eq!(
            results[3],
            Err(ReadError::Batch {
                index: 1,
                source: BatchError::RecordsCrc
            })
        );
        assert_eq!(
            results[3].clone().unwrap_err().code(),
            ErrorCode::ChecksumMismatch
        );

        let frame = response_bytes(&head, &[&b, &a]);
        let results: Vec<_> = decoded(&frame).records().collect();
        assert_eq!(
            results.last(),
            Some(&Err(ReadError::OutOfOrder {
                index: 1,
                base_seq: 10,
                min_seq: 15
            }))
        );
    }

    #[test]
    fn batch_framing_is_checked() {
        let a = stored(0, 1, 0);
        assert!(BatchSlices::parse(&a, 1).is_ok());
        assert!(BatchSlices::parse(&a, 2).is_err());
        assert!(BatchSlices::parse(&a, 0).is_err());
        assert!(BatchSlices::parse(&a[..a.len() - 1], 1).is_err());
        let mut short = a.clone();
        short[8..12].copy_from_slice(&10u32.to_le_bytes());
        assert!(BatchSlices::parse(&short, 1).is_err());
        assert!(BatchSlices::parse(&[], u32::MAX).is_err());
    }

    #[test]
    fn head_encoder_matches_full_frame() {
        let a = stored(0, 2, 5);
        let b = stored(2, 1, 6);
        let head = GetRecordsHead {
            start_seq: 0,
            end_seq: 3,
            millis_behind_latest: 1,
            next_iterator: None,
            child_shards: Default::default(),
        };
        let full = response_bytes(&head, &[&a, &b]);
        let mut out = Vec::new();
        encode_get_records_head(&mut out, 42, &head, 2, a.len() + b.len());
        out.extend_from_slice(&a);
        out.extend_from_slice(&b);
        assert_eq!(out, full);
    }

    #[test]
    fn request_bounds_are_enforced() {
        let ok = GetRecordsRequest {
            iterator: b"t",
            max_records: 1,
            max_bytes: 1,
            wait_ms: 0,
        };
        let bad = [
            GetRecordsRequest {
                max_records: 0,
                ..ok
            },
            GetRecordsRequest {
                max_records: MAX_RECORDS_PER_READ + 1,
                ..ok
            },
            GetRecordsRequest { max_bytes: 0, ..ok },
            GetRecordsRequest {
                max_bytes: MAX_BYTES_PER_READ + 1,
                ..ok
            },
            GetRecordsRequest {
                wait_ms: MAX_WAIT_MS + 1,
                ..ok
            },
        ];
        for req in bad {
            let mut out = Vec::new();
            crate::encode_request(&mut out, 1, &Request::GetRecords(req));
            let frame = decode_frame(&out, DEFAULT_MAX_FRAME_BYTES)
                .unwrap()
                .unwrap();
            let err = crate::decode_request(&frame).unwrap_err();
            assert_eq!(err.code(), ErrorCode::InvalidArgument, "{req:?}");
        }
        let long = [0u8; MAX_ITERATOR_TOKEN_BYTES + 1];
        let mut payload = Vec::new();
        GetRecordsRequest {
            iterator: &long,
            ..ok
        }
        .encode_payload(&mut payload);
        assert!(Request::decode(Opcode::GetRecords.as_u16(), &payload).is_err());
    }

    #[test]
    fn a_response_reencodes_identically() {
        let a = stored(4, 4, 9);
        let head = GetRecordsHead {
            start_seq: 4,
            end_seq: 8,
            millis_behind_latest: 0,
            next_iterator: None,
            child_shards: Default::default(),
        };
        let frame = response_bytes(&head, &[&a]);
        let response = decoded(&frame);
        let mut again = Vec::new();
        encode_response(&mut again, 42, &Response::GetRecords(response));
        assert_eq!(again, frame);
    }

    proptest! {
        #[test]
        fn get_records_responses_round_trip(
            sizes in proptest::collection::vec(1u32..6, 0..5),
            behind: u64,
            with_iterator: bool,
        ) {
            let mut seq = 100;
            let mut batches = Vec::new();
            for n in &sizes {
                batches.push(stored(seq, *n, 1));
                seq += u64::from(*n);
            }
            let token = token();
            let head = GetRecordsHead {
                start_seq: 100,
                end_seq: seq,
                millis_behind_latest: behind,
                next_iterator: with_iterator.then_some(&token[..]),
                child_shards: Default::default(),
            };
            let slices: Vec<&[u8]> = batches.iter().map(Vec::as_slice).collect();
            let frame = response_bytes(&head, &slices);
            let response = decoded(&frame);
            prop_assert_eq!(response.head, head);
            let records: Vec<_> = response.records().map(Result::unwrap).collect();
            prop_assert_eq!(records.len() as u64, seq - 100);
            check_response(&Response::GetRecords(response));
        }
    }
}
