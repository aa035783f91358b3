//! The record batch: the unit a producer sends, the engine stores and a consumer reads.
//!
//! A batch is built once by the client for one shard, checked by the engine, stamped in
//! place (base sequence number, arrival time, segment nonce) and written to the segment
//! file as is. No record is ever re-encoded on the way from the producer to the disk or
//! from the disk to the consumer. The layout is a fixed little-endian header (not rkyv):
//! the engine must patch four fields in place and checksum exact bytes, and a fixed
//! layout makes that a few stores instead of a serializer round trip.
//!
//! ```text
//! offset size field           who sets it
//!  0     4    magic           producer   b"SPB1"
//!  4     4    header_crc      engine     CRC32C of bytes 8..64 (producer: of its own header)
//!  8     4    batch_len       producer   total bytes, header included
//! 12     2    version         producer   1
//! 14     2    flags           producer   0 (reserved)
//! 16     4    record_count    producer   1..=MAX_RECORDS_PER_BATCH
//! 20     4    records_crc     producer   CRC32C of bytes 64..batch_len
//! 24     8    base_seq        engine     sequence number of the first record
//! 32     8    first_ts_ms     engine     arrival time, ms since the epoch
//! 40     8    last_ts_ms      engine     equal to first_ts_ms for a batch stamped at once
//! 48     8    segment_nonce   engine     random id of the segment that holds the batch
//! 56     8    reserved        producer   0
//! 64     ...  records, back to back
//!
//! record:
//!   attrs      u8         bit 0: an explicit hash key follows
//!   [hash_key  16 bytes]  big-endian u128, only when attrs bit 0 is set
//!   key_len    varint     1..=256 (LEB128, at most 5 bytes)
//!   key        key_len bytes of UTF-8
//!   data_len   varint     0..=the stream's record data limit
//!   data       data_len bytes
//! ```
//! Record `i` of a batch has sequence number `base_seq + i` and the batch's arrival time.
//! The two CRCs split the work: the producer pays for the checksum of the payload once, the
//! engine verifies it once and only re-checksums the 56 header bytes after stamping; a
//! reader verifies both, so every stored byte is covered.

/// Magic at the start of every batch: `b"SPB1"` read as little-endian u32.
pub const BATCH_MAGIC: u32 = u32::from_le_bytes(*b"SPB1");
/// The only batch layout version this build reads and writes.
pub const BATCH_VERSION: u16 = 1;
/// Fixed header length; records start here.
pub const BATCH_HEADER_LEN: usize = 64;
/// Kinesis: at most 500 records in one put.
pub const MAX_RECORDS_PER_BATCH: u32 = 500;
/// Kinesis: at most 10 MiB in one put (payload, excluding our 64-byte header), with room
/// for the framing of one record whose data is the largest a stream may allow
/// ([`MAX_RECORD_DATA_BYTES_CEILING`]) under the longest key and an explicit hash key, so
/// that such a record fits a batch of its own.
pub const MAX_BATCH_PAYLOAD_BYTES: usize = 10 * 1024 * 1024 + MAX_RECORD_FRAMING_BYTES;
/// The most bytes a record's encoding adds to its data: attributes, explicit hash key, the
/// longest key and both length varints.
pub const MAX_RECORD_FRAMING_BYTES: usize = 1 + 16 + 2 + MAX_PARTITION_KEY_BYTES + 4;
/// Largest encoded batch: the payload bound plus header.
pub const MAX_BATCH_BYTES: usize = MAX_BATCH_PAYLOAD_BYTES + BATCH_HEADER_LEN;
/// Partition keys are 1..=256 bytes of UTF-8.
pub const MAX_PARTITION_KEY_BYTES: usize = 256;
/// Default per-record data limit (a stream may raise it to `MAX_RECORD_DATA_BYTES_CEILING`).
pub const DEFAULT_MAX_RECORD_DATA_BYTES: usize = 1024 * 1024;
/// The largest per-record data limit a stream may choose.
pub const MAX_RECORD_DATA_BYTES_CEILING: usize = 10 * 1024 * 1024;

const ATTR_EXPLICIT_HASH_KEY: u8 = 1;

/// Why a batch (or one of its records) was refused. Decoding never panics on any input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("batch truncated: need {need} bytes, have {have}")]
    Truncated { need: usize, have: usize },
    #[error("bad batch magic {0:#010x}")]
    BadMagic(u32),
    #[error("unsupported batch version {0}")]
    UnsupportedVersion(u16),
    #[error("batch length field {field} does not match {actual} bytes")]
    LengthMismatch { field: usize, actual: usize },
    #[error("batch of {0} bytes exceeds the limit")]
    BatchTooLarge(usize),
    #[error("batch header checksum mismatch")]
    HeaderCrc,
    #[error("batch records checksum mismatch")]
    RecordsCrc,
    #[error("batch declares {declared} records, holds {found}")]
    CountMismatch { declared: u32, found: u32 },
    #[error("batch has {0} records; allowed 1..=500")]
    RecordCount(u32),
    #[error("record {index}: partition key of {len} bytes; allowed 1..=256")]
    KeyLength { index: u32, len: usize },
    #[error("record {index}: partition key is not UTF-8")]
    KeyNotUtf8 { index: u32 },
    #[error("record {index}: data of {len} bytes exceeds the limit of {max}")]
    RecordTooLarge { index: u32, len: usize, max: usize },
    #[error("record {index}: malformed length")]
    BadVarint { index: u32 },
    #[error("record {index}: unknown attribute bits {attrs:#04x}")]
    BadAttrs { index: u32, attrs: u8 },
    #[error("record {index}: hash key outside the shard's range")]
    WrongShard { index: u32 },
    #[error("reserved batch field is not zero")]
    Reserved,
}

/// The decoded fixed header of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchHeader {
    pub header_crc: u32,
    pub batch_len: u32,
    pub version: u16,
    pub flags: u16,
    pub record_count: u32,
    pub records_crc: u32,
    pub base_seq: u64,
    pub first_ts_ms: i64,
    pub last_ts_ms: i64,
    pub segment_nonce: u64,
    pub reserved: u64,
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl BatchHeader {
    /// Reads the header from the first 64 bytes of `buf`. Checks only magic and version;
    /// checksums are the caller's choice (`verify_stored`, `check_producer_batch`).
    pub fn decode(buf: &[u8]) -> Result<BatchHeader, BatchError> {
        if buf.len() < BATCH_HEADER_LEN {
            return Err(BatchError::Truncated {
                need: BATCH_HEADER_LEN,
                have: buf.len(),
            });
        }
        let magic = le_u32(buf, 0);
        if magic != BATCH_MAGIC {
            return Err(BatchError::BadMagic(magic));
        }
        let header = BatchHeader {
            header_crc: le_u32(buf, 4),
            batch_len: le_u32(buf, 8),
            version: le_u16(buf, 12),
            flags: le_u16(buf, 14),
            record_count: le_u32(buf, 16),
            records_crc: le_u32(buf, 20),
            base_seq: le_u64(buf, 24),
            first_ts_ms: le_u64(buf, 32) as i64,
            last_ts_ms: le_u64(buf, 40) as i64,
            segment_nonce: le_u64(buf, 48),
            reserved: le_u64(buf, 56),
        };
        if header.version != BATCH_VERSION {
            return Err(BatchError::UnsupportedVersion(header.version));
        }
        Ok(header)
    }

    /// Writes the header into `out[..64]`, computing `header_crc` over bytes 8..64.
    pub fn encode_into(&self, out: &mut [u8]) {
        assert!(out.len() >= BATCH_HEADER_LEN, "header buffer too short");
        out[0..4].copy_from_slice(&BATCH_MAGIC.to_le_bytes());
        out[8..12].copy_from_slice(&self.batch_len.to_le_bytes());
        out[12..14].copy_from_slice(&self.version.to_le_bytes());
        out[14..16].copy_from_slice(&self.flags.to_le_bytes());
        out[16..20].copy_from_slice(&self.record_count.to_le_bytes());
        out[20..24].copy_from_slice(&self.records_crc.to_le_bytes());
        out[24..32].copy_from_slice(&self.base_seq.to_le_bytes());
        out[32..40].copy_from_slice(&self.first_ts_ms.to_le_bytes());
        out[40..48].copy_from_slice(&self.last_ts_ms.to_le_bytes());
        out[48..56].copy_from_slice(&self.segment_nonce.to_le_bytes());
        out[56..64].copy_from_slice(&self.reserved.to_le_bytes());
        let crc = crc32c::crc32c(&out[8..BATCH_HEADER_LEN]);
        out[4..8].copy_from_slice(&crc.to_le_bytes());
    }

    /// Sequence number one past the batch's last record.
    pub fn next_seq(&self) -> u64 {
        self.base_seq + u64::from(self.record_count)
    }
}

/// Appends `v` as LEB128 (at most 5 bytes for a u32).
pub fn put_varint(out: &mut Vec<u8>, mut v: u32) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a LEB128 u32 at `*pos`, advancing it. `None` if truncated or longer than 5 bytes.
#[inline]
pub fn get_varint(buf: &[u8], pos: &mut usize) -> Option<u32> {
    let mut v: u32 = 0;
    for i in 0..5 {
        let b = *buf.get(*pos + i)?;
        let bits = u32::from(b & 0x7f);
        if i == 4 && bits > 0x0f {
            return None;
        }
        v |= bits << (7 * i);
        if b & 0x80 == 0 {
            *pos += i + 1;
            return Some(v);
        }
    }
    None
}

/// Number of bytes `put_varint` writes for `v`.
pub fn varint_len(v: u32) -> usize {
    match v {
        0..=0x7f => 1,
        0x80..=0x3fff => 2,
        0x4000..=0x1f_ffff => 3,
        0x20_0000..=0x0fff_ffff => 4,
        _ => 5,
    }
}

/// Encoded size of one record inside a batch.
pub fn record_encoded_len(key_len: usize, data_len: usize, explicit_hash_key: bool) -> usize {
    1 + if explicit_hash_key { 16 } else { 0 }
        + varint_len(key_len as u32)
        + key_len
        + varint_len(data_len as u32)
        + data_len
}

/// Builds a producer batch for one shard. The client library owns one per shard and
/// hands the finished bytes to the wire unchanged.
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    /// The batch is `buf[start..]` (`start` is 0 unless it was begun at the end of a
    /// caller's buffer: [`BatchBuilder::append_to`]).
    buf: Vec<u8>,
    start: usize,
    count: u32,
    /// CRC32C of the records so far (`buf[start + BATCH_HEADER_LEN..]`), taken as each record is
    /// written, while its bytes are still in the cache: a batch filled a record at a time
    /// among other work (the client's `Producer`) is long gone from it when sealed.
    crc: u32,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl BatchBuilder {
    pub fn new() -> BatchBuilder {
        Self::with_capacity(4096)
    }

    pub fn with_capacity(bytes: usize) -> BatchBuilder {
        Self::append_to(Vec::with_capacity(bytes.max(BATCH_HEADER_LEN)))
    }

    /// Begins a batch at the end of `buf`, after the bytes it holds: a caller sending many
    /// small batches at once (`put_records` over thousands of shards) builds them back to
    /// back in one buffer, one allocation instead of one per batch. Finish it with
    /// [`BatchBuilder::into_buffer`].
    pub fn append_to(mut buf: Vec<u8>) -> BatchBuilder {
        let start = buf.len();
        buf.resize(start + BATCH_HEADER_LEN, 0);
        BatchBuilder {
            buf,
            start,
            count: 0,
            crc: 0,
        }
    }

    pub fn len(&self) -> u32 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes the finished batch will have, header included.
    pub fn encoded_len(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Whether one more record of this shape keeps the batch within Kinesis' put limits.
    pub fn fits(&self, key_len: usize, data_len: usize, explicit_hash_key: bool) -> bool {
        self.count < MAX_RECORDS_PER_BATCH
            && self.encoded_len() + record_encoded_len(key_len, data_len, explicit_hash_key)
                <= MAX_BATCH_BYTES
    }

    /// Appends one record. Checks what the engine would check about the record itself
    /// (key length and UTF-8, the default data limit is the caller's business), so a
    /// malformed record is refused at the producer.
    pub fn push(
        &mut self,
        key: &[u8],
        data: &[u8],
        explicit_hash_key: Option<u128>,
    ) -> Result<(), BatchError> {
        let at = self.buf.len();
        self.push_head(key, data.len(), explicit_hash_key)?;
        self.buf.extend_from_slice(data);
        self.count += 1;
        self.crc = crc32c::crc32c_append(self.crc, &self.buf[at..]);
        Ok(())
    }

    /// As [`BatchBuilder::push`], for a record of `data_len` bytes that `fill` writes in
    /// place (it gets exactly `data_len` zeroed bytes): a producer that generates its data
    /// saves copying it from a buffer of its own.
    pub fn push_with(
        &mut self,
        key: &[u8],
        data_len: usize,
        explicit_hash_key: Option<u128>,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<(), BatchError> {
        let head_at = self.buf.len();
        self.push_head(key, data_len, explicit_hash_key)?;
        let at = self.buf.len();
        self.buf.resize(at + data_len, 0);
        fill(&mut self.buf[at..]);
        self.count += 1;
        self.crc = crc32c::crc32c_append(self.crc, &self.buf[head_at..]);
        Ok(())
    }

    /// Checks a record of this shape and writes everything of it but its data.
    fn push_head(
        &mut self,
        key: &[u8],
        data_len: usize,
        explicit_hash_key: Option<u128>,
    ) -> Result<(), BatchError> {
        let index = self.count;
        if key.is_empty() || key.len() > MAX_PARTITION_KEY_BYTES {
            return Err(BatchError::KeyLength {
                index,
                len: key.len(),
            });
        }
        // (ASCII first: device keys almost always are, and the check is a few word loads.)
        if !key.is_ascii() && std::str::from_utf8(key).is_err() {
            return Err(BatchError::KeyNotUtf8 { index });
        }
        if data_len > MAX_RECORD_DATA_BYTES_CEILING {
            return Err(BatchError::RecordTooLarge {
                index,
                len: data_len,
                max: MAX_RECORD_DATA_BYTES_CEILING,
            });
        }
        if self.count >= MAX_RECORDS_PER_BATCH {
            return Err(BatchError::RecordCount(self.count + 1));
        }
        let added = record_encoded_len(key.len(), data_len, explicit_hash_key.is_some());
        if self.encoded_len() + added > MAX_BATCH_BYTES {
            return Err(BatchError::BatchTooLarge(self.encoded_len() + added));
        }
        match explicit_hash_key {
            Some(h) => {
                self.buf.push(ATTR_EXPLICIT_HASH_KEY);
                self.buf.extend_from_slice(&h.to_be_bytes());
            }
            None => self.buf.push(0),
        }
        put_varint(&mut self.buf, key.len() as u32);
        self.buf.extend_from_slice(key);
        put_varint(&mut self.buf, data_len as u32);
        Ok(())
    }

    /// Seals the header (length, count, records CRC) and returns the batch bytes. The
    /// builder is left empty and reusable (with a new buffer of the same capacity: a
    /// builder used once should be [`BatchBuilder::into_batch`]ed instead).
    pub fn finish(&mut self) -> Vec<u8> {
        assert_eq!(
            self.start, 0,
            "a batch begun with append_to ends with into_buffer"
        );
        self.seal();
        let mut out = Vec::with_capacity(self.buf.capacity());
        out.resize(BATCH_HEADER_LEN, 0);
        self.count = 0;
        self.crc = 0;
        std::mem::replace(&mut self.buf, out)
    }

    /// As [`BatchBuilder::finish`], consuming the builder: no buffer is made for a next
    /// batch (for a batch of a few hundred KiB that is an allocation, often an `mmap`, and
    /// its release, per batch).
    pub fn into_batch(mut self) -> Vec<u8> {
        assert_eq!(
            self.start, 0,
            "a batch begun with append_to ends with into_buffer"
        );
        self.seal();
        self.buf
    }

    /// Seals the batch and gives back the whole buffer: what it held before
    /// [`BatchBuilder::append_to`], then the batch.
    pub fn into_buffer(mut self) -> Vec<u8> {
        self.seal();
        self.buf
    }

    fn seal(&mut self) {
        let start = self.start;
        debug_assert_eq!(
            self.crc,
            crc32c::crc32c(&self.buf[start + BATCH_HEADER_LEN..])
        );
        let records_crc = self.crc;
        let header = BatchHeader {
            batch_len: self.encoded_len() as u32,
            version: BATCH_VERSION,
            record_count: self.count,
            records_crc,
            ..BatchHeader::default()
        };
        header.encode_into(&mut self.buf[start..start + BATCH_HEADER_LEN]);
    }
}

/// What the engine learns from checking a producer batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSummary {
    pub record_count: u32,
    /// Sum of record data lengths: what Kinesis' 1 MiB/s write limit counts (plus keys).
    pub payload_bytes: u64,
}

/// What the engine enforces on each record of a producer batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRules {
    /// The stream's per-record data limit.
    pub max_record_data_bytes: usize,
    /// When set, every record's hash key (explicit, or MD5 of its partition key) must fall in
    /// this inclusive range: the engine's guard against a batch sent to the wrong shard.
    pub hash_range: Option<(u128, u128)>,
}

impl Default for RecordRules {
    fn default() -> Self {
        RecordRules {
            max_record_data_bytes: DEFAULT_MAX_RECORD_DATA_BYTES,
            hash_range: None,
        }
    }
}

/// Checks a batch as received from a producer: layout, both checksums, every record's
/// framing and limits. Runs on the shard's core before the batch is stamped; the bytes
/// are untrusted, so every failure is a typed error.
pub fn check_producer_batch(buf: &[u8], rules: &RecordRules) -> Result<BatchSummary, BatchError> {
    check_producer_batch_with(buf, rules, &mut crate::routing::Md5KeyHasher)
}

/// How many records ahead `check_producer_batch_with` announces keys to its hasher.
const HASH_LOOKAHEAD_RECORDS: usize = 4;

/// `check_producer_batch` with the caller's partition-key hasher (the engine passes a
/// per-core cache, since the same device keys come back again and again).
pub fn check_producer_batch_with<H: crate::routing::KeyHasher>(
    buf: &[u8],
    rules: &RecordRules,
    hasher: &mut H,
) -> Result<BatchSummary, BatchError> {
    let header = BatchHeader::decode(buf)?;
    if header.batch_len as usize != buf.len() {
        return Err(BatchError::LengthMismatch {
            field: header.batch_len as usize,
            actual: buf.len(),
        });
    }
    if buf.len() > MAX_BATCH_BYTES {
        return Err(BatchError::BatchTooLarge(buf.len()));
    }
    if header.flags != 0 || header.reserved != 0 {
        return Err(BatchError::Reserved);
    }
    if header.record_count == 0 || header.record_count > MAX_RECORDS_PER_BATCH {
        return Err(BatchError::RecordCount(header.record_count));
    }
    if crc32c::crc32c(&buf[BATCH_HEADER_LEN..]) != header.records_crc {
        return Err(BatchError::RecordsCrc);
    }
    let mut payload_bytes = 0u64;
    let mut found = 0u32;
    // The keys a few records on, announced to the hasher before their turn: a caching
    // hasher's lookups are cache misses, which then overlap instead of following each other.
    // (Not read for a hasher that does nothing with them: MD5 every time.)
    let mut ahead = rules
        .hash_range
        .filter(|_| H::PREFETCHES)
        .map(|_| RecordIter::new(buf, header.record_count).flatten());
    if let Some(ahead) = ahead.as_mut() {
        for r in ahead.by_ref().take(HASH_LOOKAHEAD_RECORDS) {
            hasher.prefetch(r.key);
        }
    }
    for record in RecordIter::new(buf, header.record_count) {
        let record = record?;
        if let Some(r) = ahead.as_mut().and_then(Iterator::next) {
            hasher.prefetch(r.key);
        }
        let index = found;
        if record.key.is_empty() || record.key.len() > MAX_PARTITION_KEY_BYTES {
            return Err(BatchError::KeyLength {
                index,
                len: record.key.len(),
            });
        }
        if !record.key.is_ascii() && std::str::from_utf8(record.key).is_err() {
            return Err(BatchError::KeyNotUtf8 { index });
        }
        if record.data.len() > rules.max_record_data_bytes {
            return Err(BatchError::RecordTooLarge {
                index,
                len: record.data.len(),
                max: rules.max_record_data_bytes,
            });
        }
        if let Some((lo, hi)) = rules.hash_range {
            let h = record
                .explicit_hash_key
                .unwrap_or_else(|| hasher.hash_key(record.key));
            if h < lo || h > hi {
                return Err(BatchError::WrongShard { index });
            }
        }
        payload_bytes += (record.key.len() + record.data.len()) as u64;
        found += 1;
    }
    Ok(BatchSummary {
        record_count: found,
        payload_bytes,
    })
}

/// Stamps a checked batch in place with its sequence number, arrival time and segment
/// nonce, and re-seals the header checksum. The records and their CRC are untouched.
pub fn stamp(buf: &mut [u8], base_seq: u64, ts_ms: i64, segment_nonce: u64) {
    assert!(
        buf.len() >= BATCH_HEADER_LEN,
        "stamp on a buffer shorter than a header"
    );
    buf[24..32].copy_from_slice(&base_seq.to_le_bytes());
    buf[32..40].copy_from_slice(&ts_ms.to_le_bytes());
    buf[40..48].copy_from_slice(&ts_ms.to_le_bytes());
    buf[48..56].copy_from_slice(&segment_nonce.to_le_bytes());
    let crc = crc32c::crc32c(&buf[8..BATCH_HEADER_LEN]);
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// Cuts a checked producer batch down to its first `keep` records, in place, and re-seals
/// it (length, count, records CRC, header CRC). Returns the new length: the batch is now
/// `buf[..len]`. The engine uses it when a limit admits only a prefix of a batch: it stores
/// the prefix and rejects the rest (see `write::PutBatchResponse`). `buf` may be longer
/// than the batch (an aligned write buffer); the bytes after the new end are left as they
/// were. Costs one CRC pass over the kept records.
pub fn truncate_records(buf: &mut [u8], keep: u32) -> Result<usize, BatchError> {
    let header = BatchHeader::decode(buf)?;
    if keep == 0 || keep > header.record_count {
        return Err(BatchError::RecordCount(keep));
    }
    let batch_len = header.batch_len as usize;
    if batch_len > buf.len() {
        return Err(BatchError::Truncated {
            need: batch_len,
            have: buf.len(),
        });
    }
    let mut records = RecordIter::new(&buf[..batch_len], header.record_count);
    for _ in 0..keep {
        records.next().unwrap_or(Err(BatchError::CountMismatch {
            declared: header.record_count,
            found: records.index,
        }))?;
    }
    let end = records.pos;
    let cut = BatchHeader {
        batch_len: end as u32,
        record_count: keep,
        records_crc: crc32c::crc32c(&buf[BATCH_HEADER_LEN..end]),
        ..header
    };
    cut.encode_into(&mut buf[..BATCH_HEADER_LEN]);
    Ok(end)
}

/// Checks the header of a batch read back from storage: magic, version, header CRC and a
/// sane length. `buf` may hold only the header. Use before trusting `batch_len` to read on.
pub fn verify_stored_header(buf: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::decode(buf)?;
    if crc32c::crc32c(&buf[8..BATCH_HEADER_LEN]) != header.header_crc {
        return Err(BatchError::HeaderCrc);
    }
    let len = header.batch_len as usize;
    if !(BATCH_HEADER_LEN..=MAX_BATCH_BYTES).contains(&len) {
        return Err(BatchError::BatchTooLarge(len));
    }
    if header.record_count == 0 || header.record_count > MAX_RECORDS_PER_BATCH {
        return Err(BatchError::RecordCount(header.record_count));
    }
    Ok(header)
}

/// Checks a whole stored batch (`buf` is exactly `batch_len` bytes): header and records
/// CRC. Nothing that fails this is ever served to a reader.
pub fn verify_stored(buf: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = verify_stored_header(buf)?;
    if header.batch_len as usize != buf.len() {
        return Err(BatchError::LengthMismatch {
            field: header.batch_len as usize,
            actual: buf.len(),
        });
    }
    if crc32c::crc32c(&buf[BATCH_HEADER_LEN..]) != header.records_crc {
        return Err(BatchError::RecordsCrc);
    }
    Ok(header)
}

/// One record, borrowed from its batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    pub key: &'a [u8],
    pub data: &'a [u8],
    pub explicit_hash_key: Option<u128>,
}

/// Walks the records of a batch (`buf` starts at the batch header). Yields an error and
/// stops at the first malformed record; reports a count mismatch at the end.
#[derive(Debug, Clone)]
pub struct RecordIter<'a> {
    buf: &'a [u8],
    pos: usize,
    index: u32,
    count: u32,
    done: bool,
}

impl<'a> RecordIter<'a> {
    pub fn new(batch: &'a [u8], record_count: u32) -> RecordIter<'a> {
        RecordIter {
            buf: batch,
            pos: BATCH_HEADER_LEN,
            index: 0,
            count: record_count,
            done: false,
        }
    }

    #[inline(always)]
    fn next_record(&mut self) -> Result<RecordRef<'a>, BatchError> {
        let index = self.index;
        let buf = self.buf;
        let attrs = *buf.get(self.pos).ok_or(BatchError::BadVarint { index })?;
        self.pos += 1;
        if attrs & !ATTR_EXPLICIT_HASH_KEY != 0 {
            return Err(BatchError::BadAttrs { index, attrs });
        }
        let explicit_hash_key = if attrs & ATTR_EXPLICIT_HASH_KEY != 0 {
            let bytes = buf
                .get(self.pos..self.pos + 16)
                .ok_or(BatchError::BadVarint { index })?;
            self.pos += 16;
            Some(u128::from_be_bytes(bytes.try_into().expect("16 bytes")))
        } else {
            None
        };
        let key_len = get_varint(buf, &mut self.pos).ok_or(BatchError::BadVarint { index })?;
        let key = take(buf, &mut self.pos, key_len as usize).ok_or(BatchError::KeyLength {
            index,
            len: key_len as usize,
        })?;
        let data_len = get_varint(buf, &mut self.pos).ok_or(BatchError::BadVarint { index })?;
        let data = take(buf, &mut self.pos, data_len as usize).ok_or(BatchError::Truncated {
            need: self.pos.saturating_add(data_len as usize),
            have: buf.len(),
        })?;
        Ok(RecordRef {
            key,
            data,
            explicit_hash_key,
        })
    }
}

#[inline]
fn take<'a>(buf: &'a [u8], pos: &mut usize, len: usize) -> Option<&'a [u8]> {
    let end = pos.checked_add(len)?;
    let out = buf.get(*pos..end)?;
    *pos = end;
    Some(out)
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Result<RecordRef<'a>, BatchError>;

    // (Inlined into the engine's checks, a record stays in registers. Returned through
    // memory, its 16-byte tag was read back at once and stalled on the stores just made:
    // two thirds of the batch check's samples under `max-100b`.)
    #[inline(always)]
    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.index == self.count {
            self.done = true;
            if self.pos != self.buf.len() {
                // Bytes left over: the batch holds more than it declares.
                return Some(Err(BatchError::CountMismatch {
                    declared: self.count,
                    found: self.count + 1,
                }));
            }
            return None;
        }
        if self.pos >= self.buf.len() {
            self.done = true;
            return Some(Err(BatchError::CountMismatch {
                declared: self.count,
                found: self.index,
            }));
        }
        match self.next_record() {
            Ok(r) => {
                self.index += 1;
                Some(Ok(r))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Vec<u8> {
        let mut b = BatchBuilder::new();
        b.push(b"device-1", b"hello", None).unwrap();
        b.push(b"device-2", b"", Some(42)).unwrap();
        b.push("κλειδί".as_bytes(), &[7u8; 300], None).unwrap();
        b.finish()
    }

    /// A stream whose record limit is the ceiling (10 MiB) takes a record of exactly that
    /// much data under the longest key and an explicit hash key, in a batch of its own.
    #[test]
    fn a_record_at_the_largest_data_limit_fits_a_batch_of_its_own() {
        let data = vec![5u8; MAX_RECORD_DATA_BYTES_CEILING];
        let key = "k".repeat(MAX_PARTITION_KEY_BYTES);
        assert_eq!(
            record_encoded_len(key.len(), data.len(), true),
            data.len() + MAX_RECORD_FRAMING_BYTES
        );
        let mut b = BatchBuilder::new();
        assert!(b.fits(key.len(), data.len(), true));
        b.push(key.as_bytes(), &data, Some(u128::MAX)).unwrap();
        let batch = b.finish();
        assert_eq!(batch.len(), MAX_BATCH_BYTES);
        let rules = RecordRules {
            max_record_data_bytes: MAX_RECORD_DATA_BYTES_CEILING,
            hash_range: None,
        };
        check_producer_batch(&batch, &rules).unwrap();
        // One byte more of data is over the limit, and no batch holds it with that key.
        assert!(!BatchBuilder::new().fits(key.len(), data.len() + 1, true));
    }

    #[test]
    fn build_check_stamp_verify_round_trip() {
        let mut batch = sample();
        let summary = check_producer_batch(&batch, &RecordRules::default()).unwrap();
        assert_eq!(summary.record_count, 3);
        stamp(&mut batch, 1000, 1_700_000_000_000, 0xfeed);
        let h = verify_stored(&batch).unwrap();
        assert_eq!(
            (h.base_seq, h.first_ts_ms, h.segment_nonce),
            (1000, 1_700_000_000_000, 0xfeed)
        );
        assert_eq!(h.next_seq(), 1003);
        let recs: Vec<_> = RecordIter::new(&batch, h.record_count)
            .map(Result::unwrap)
            .collect();
        assert_eq!(recs[0].key, b"device-1");
        assert_eq!(recs[1].explicit_hash_key, Some(42));
        assert_eq!(recs[2].data.len(), 300);
    }

    /// Batches begun at the end of one buffer are, byte for byte, the batches built on
    /// their own, back to back; and one that would pass the limits is refused by its own
    /// size, not the buffer's.
    #[test]
    fn batches_appended_to_one_buffer_equal_batches_built_alone() {
        let second = {
            let mut b = BatchBuilder::new();
            b.push(b"k", &[1u8; 10], Some(7)).unwrap();
            b.finish()
        };
        let mut b = BatchBuilder::append_to(Vec::new());
        b.push(b"device-1", b"hello", None).unwrap();
        b.push(b"device-2", b"", Some(42)).unwrap();
        b.push("κλειδί".as_bytes(), &[7u8; 300], None).unwrap();
        let buf = b.into_buffer();
        let mut b = BatchBuilder::append_to(buf);
        assert_eq!(b.encoded_len(), BATCH_HEADER_LEN);
        b.push(b"k", &[1u8; 10], Some(7)).unwrap();
        assert_eq!(b.encoded_len(), second.len());
        let buf = b.into_buffer();
        let first = sample();
        assert_eq!(&buf[..first.len()], &first[..]);
        assert_eq!(&buf[first.len()..], &second[..]);
        let h = BatchHeader::decode(&buf[first.len()..]).unwrap();
        assert_eq!(h.record_count, 1);
        check_producer_batch(&buf[first.len()..], &RecordRules::default()).unwrap();
        // A buffer already holding most of a batch's limit: the next batch still takes a
        // record of nearly the whole limit.
        let big = vec![0u8; MAX_BATCH_BYTES - 1024];
        let mut b = BatchBuilder::append_to(big);
        assert!(b.fits(1, MAX_BATCH_BYTES - 1024, false));
        b.push(b"k", &vec![3u8; MAX_BATCH_BYTES - 1024], None)
            .unwrap();
        assert!(b.push(b"k", &[0u8; 2048], None).is_err());
    }

    /// A hasher that logs what it is told: each key hashed must have been announced first,
    /// at most `HASH_LOOKAHEAD_RECORDS` records before, and hashes come out as MD5's.
    #[derive(Default)]
    struct Logging {
        announced: std::cell::RefCell<Vec<Vec<u8>>>,
        hashed: usize,
    }

    impl crate::routing::KeyHasher for Logging {
        const PREFETCHES: bool = true;

        fn hash_key(&mut self, key: &[u8]) -> u128 {
            let announced = self.announced.borrow();
            let i = announced
                .iter()
                .rposition(|k| k == key)
                .expect("every key is announced before it is hashed");
            assert!(announced.len() - self.hashed <= HASH_LOOKAHEAD_RECORDS + 1);
            assert!(
                i >= self.hashed,
                "announced for this record, not an earlier one"
            );
            self.hashed += 1;
            crate::routing::hash_key(key)
        }

        fn prefetch(&self, key: &[u8]) {
            self.announced.borrow_mut().push(key.to_vec());
        }
    }

    #[test]
    fn keys_are_announced_to_the_hasher_a_few_records_ahead() {
        let mut b = BatchBuilder::new();
        let keys: Vec<String> = (0..23).map(|i| format!("device-{}", i % 7)).collect();
        for k in &keys {
            b.push(k.as_bytes(), b"x", None).unwrap();
        }
        let batch = b.finish();
        let rules = RecordRules {
            hash_range: Some((0, u128::MAX)),
            ..RecordRules::default()
        };
        let mut h = Logging::default();
        let summary = check_producer_batch_with(&batch, &rules, &mut h).unwrap();
        assert_eq!(summary.record_count, 23);
        assert_eq!(h.hashed, 23);
        let announced: Vec<Vec<u8>> = keys.iter().map(|k| k.as_bytes().to_vec()).collect();
        assert_eq!(*h.announced.borrow(), announced, "each key once, in order");
        // A one-record batch, and a wrong-shard key: the verdicts are MD5's.
        let mut one = BatchBuilder::new();
        one.push(b"k", b"v", None).unwrap();
        let one = one.finish();
        let hash = crate::routing::hash_key(b"k");
        let outside = RecordRules {
            hash_range: Some((hash.wrapping_add(1), u128::MAX)),
            ..RecordRules::default()
        };
        assert!(check_producer_batch_with(&one, &rules, &mut Logging::default()).is_ok());
        assert!(matches!(
            check_producer_batch_with(&one, &outside, &mut Logging::default()),
            Err(BatchError::WrongShard { index: 0 })
        ));
        // Without a hash range nothing is announced or hashed.
        let mut h = Logging::default();
        check_producer_batch_with(&batch, &RecordRules::default(), &mut h).unwrap();
        assert!(h.announced.borrow().is_empty() && h.hashed == 0);
    }

    #[test]
    fn golden_bytes_of_a_one_record_batch() {
        let mut b = BatchBuilder::new();
        b.push(b"k", b"v", None).unwrap();
        let batch = b.finish();
        assert_eq!(&batch[0..4], b"SPB1");
        assert_eq!(&batch[8..12], &69u32.to_le_bytes());
        assert_eq!(&batch[64..], &[0, 1, b'k', 1, b'v']);
        assert_eq!(le_u32(&batch, 20), crc32c::crc32c(&[0, 1, b'k', 1, b'v']));
    }

    #[test]
    fn push_with_builds_the_same_bytes_as_push() {
        let mut a = BatchBuilder::new();
        let mut b = BatchBuilder::new();
        for (key, data, ehk) in [
            (&b"device-1"[..], &b"hello"[..], None),
            (b"device-2", b"", Some(42)),
            ("κλειδί".as_bytes(), &[7u8; 300][..], None),
        ] {
            a.push(key, data, ehk).unwrap();
            b.push_with(key, data.len(), ehk, |out| {
                assert!(out.iter().all(|&x| x == 0), "handed zeroed bytes");
                out.copy_from_slice(data)
            })
            .unwrap();
        }
        let c = a.clone();
        let finished = a.finish();
        assert_eq!(finished, b.finish());
        // Consuming the builder seals the same bytes, and a finished builder starts empty.
        assert_eq!(c.into_batch(), finished);
        assert!(a.is_empty() && a.encoded_len() == BATCH_HEADER_LEN);
        // The same checks refuse the same records, and leave the builder as it was.
        let before = b.encoded_len();
        let called = std::cell::Cell::new(false);
        assert!(matches!(
            b.push_with(b"", 3, None, |_| called.set(true)),
            Err(BatchError::KeyLength { .. })
        ));
        assert!(matches!(
            b.push_with(b"k", MAX_RECORD_DATA_BYTES_CEILING + 1, None, |_| called
                .set(true)),
            Err(BatchError::RecordTooLarge { .. })
        ));
        assert!(!called.get() && b.encoded_len() == before && b.is_empty());
    }

    #[test]
    fn every_flipped_bit_is_caught_after_stamping() {
        let mut batch = sample();
        stamp(&mut batch, 5, 6, 7);
        for byte in 0..batch.len() {
            for bit in 0..8 {
                let mut bad = batch.clone();
                bad[byte] ^= 1 << bit;
                assert!(
                    verify_stored(&bad).is_err(),
                    "flip at byte {byte} bit {bit} undetected"
                );
            }
        }
    }

    #[test]
    fn every_truncation_is_rejected() {
        let batch = sample();
        for len in 0..batch.len() {
            assert!(check_producer_batch(&batch[..len], &RecordRules::default()).is_err());
            assert!(verify_stored(&batch[..len]).is_err());
        }
    }

    #[test]
    fn truncation_keeps_a_valid_prefix() {
        let original = sample();
        for keep in 1..=3u32 {
            let mut buf = original.clone();
            buf.extend_from_slice(&[0xaa; 100]); // an aligned buffer's slack
            let len = truncate_records(&mut buf, keep).unwrap();
            let batch = &buf[..len];
            let summary = check_producer_batch(batch, &RecordRules::default()).unwrap();
            assert_eq!(summary.record_count, keep);
            let kept: Vec<_> = RecordIter::new(batch, keep).map(Result::unwrap).collect();
            let all: Vec<_> = RecordIter::new(&original, 3).map(Result::unwrap).collect();
            assert_eq!(kept[..], all[..keep as usize]);
        }
        let mut stamped = original.clone();
        stamp(&mut stamped, 40, 50, 60);
        let len = truncate_records(&mut stamped, 1).unwrap();
        let h = verify_stored(&stamped[..len]).unwrap();
        assert_eq!((h.base_seq, h.first_ts_ms, h.record_count), (40, 50, 1));
        let mut buf = original.clone();
        assert_eq!(
            truncate_records(&mut buf, 0),
            Err(BatchError::RecordCount(0))
        );
        assert_eq!(
            truncate_records(&mut buf, 4),
            Err(BatchError::RecordCount(4))
        );
        assert!(truncate_records(&mut buf[..70], 1).is_err());
    }

    #[test]
    fn limits_are_enforced() {
        let mut b = BatchBuilder::new();
        assert!(matches!(
            b.push(b"", b"x", None),
            Err(BatchError::KeyLength { .. })
        ));
        assert!(matches!(
            b.push(&[b'a'; 257], b"x", None),
            Err(BatchError::KeyLength { .. })
        ));
        assert!(matches!(
            b.push(&[0xff, 0xfe], b"x", None),
            Err(BatchError::KeyNotUtf8 { .. })
        ));
        b.push(b"k", &[0u8; 2000], None).unwrap();
        let batch = b.finish();
        let rules = RecordRules {
            max_record_data_bytes: 1000,
            hash_range: None,
        };
        assert!(matches!(
            check_producer_batch(&batch, &rules),
            Err(BatchError::RecordTooLarge {
                index: 0,
                len: 2000,
                max: 1000
            })
        ));
        let mut b = BatchBuilder::new();
        for _ in 0..MAX_RECORDS_PER_BATCH {
            b.push(b"k", b"", None).unwrap();
        }
        assert!(matches!(
            b.push(b"k", b"", None),
            Err(BatchError::RecordCount(501))
        ));
    }

    #[test]
    fn hash_range_guard() {
        let mut b = BatchBuilder::new();
        b.push(b"k", b"v", Some(10)).unwrap();
        let batch = b.finish();
        let inside = RecordRules {
            hash_range: Some((10, 20)),
            ..RecordRules::default()
        };
        let outside = RecordRules {
            hash_range: Some((11, 20)),
            ..RecordRules::default()
        };
        assert!(check_producer_batch(&batch, &inside).is_ok());
        assert_eq!(
            check_producer_batch(&batch, &outside),
            Err(BatchError::WrongShard { index: 0 })
        );
    }

    #[test]
    fn varints_round_trip_and_reject_overlong() {
        for v in [0u32, 1, 127, 128, 16383, 16384, u32::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v));
            let mut pos = 0;
            assert_eq!(get_varint(&out, &mut pos), Some(v));
            assert_eq!(pos, out.len());
        }
        let mut pos = 0;
        assert_eq!(get_varint(&[0xff, 0xff, 0xff, 0xff, 0x7f], &mut pos), None);
        assert_eq!(
            get_varint(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x01], &mut pos),
            None
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = check_producer_batch(&bytes, &RecordRules::default());
            let _ = verify_stored(&bytes);
            if let Ok(h) = BatchHeader::decode(&bytes) {
                for r in RecordIter::new(&bytes, h.record_count) { let _ = r; }
            }
        }

        #[test]
        fn built_batches_round_trip(records in proptest::collection::vec(
            ("[a-z0-9]{1,40}", proptest::collection::vec(any::<u8>(), 0..200), any::<Option<u128>>()), 1..50)) {
            let mut b = BatchBuilder::new();
            for (k, d, h) in &records { b.push(k.as_bytes(), d, *h).unwrap(); }
            let mut batch = b.finish();
            prop_assert_eq!(check_producer_batch(&batch, &RecordRules::default()).unwrap().record_count as usize, records.len());
            stamp(&mut batch, 77, 88, 99);
            let h = verify_stored(&batch).unwrap();
            let back: Vec<_> = RecordIter::new(&batch, h.record_count).map(Result::unwrap).collect();
            prop_assert_eq!(back.len(), records.len());
            for (r, (k, d, hk)) in back.iter().zip(&records) {
                prop_assert_eq!(r.key, k.as_bytes());
                prop_assert_eq!(r.data, &d[..]);
                prop_assert_eq!(r.explicit_hash_key, *hk);
            }
        }
    }
}
