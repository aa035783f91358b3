//! Segment files and their sparse indexes: names and byte layouts.
//!
//! A shard's log is a directory of segment files, each a fixed-size, pre-written file:
//!
//! ```text
//! <data>/streams/<stream_id:016x>/<shard_id:05>/<base_seq:020>.seg   the log
//! <data>/streams/<stream_id:016x>/<shard_id:05>/<base_seq:020>.idx   its sparse index
//! <data>/spare/core-<n>/spare-<k:06>.seg                             ready files (per core)
//!
//! segment file (size = segment_bytes, every block written before first use):
//!   0      4096   segment header page (layout below, rest of the page zero)
//!   4096   ...    batches back to back (protocol::batch layout), no padding between them
//!   ...    ...    zeros, or stale bytes of a recycled file (told apart by nonce and sequence)
//!
//! segment header:
//!   0  8  magic         b"SPATESEG"
//!   8  4  version       1
//!  12  4  header_crc    CRC32C of bytes 16..64
//!  16  8  stream_id
//!  24  4  shard_id
//!  28  4  reserved      0
//!  32  8  base_seq      sequence number of the segment's first record (also its file name)
//!  40  8  nonce         random per segment; stamped into every batch it holds
//!  48  8  created_ms
//!  56  8  segment_bytes
//! ```
//! A batch belongs to the segment only if its stamped nonce equals the header's and its
//! base sequence number continues the chain; stale batches of a recycled file fail both.
//!
//! Index file: 32-byte entries, appended (not synced) as batches become durable; recovery
//! treats them as hints and validates each against the log before using it.
//! ```text
//!   0  8  seq      base sequence number of the batch (kind 1) / next_seq (kind 2)
//!   8  8  offset   file offset of the batch (kind 1) / end of data (kind 2)
//!  16  8  ts_ms    arrival time of the batch (kind 1) / newest arrival time (kind 2)
//!  24  4  kind     1 = batch position, 2 = seal (segment closed, written once at roll)
//!  28  4  crc      CRC32C of bytes 0..28
//! ```

use std::path::{Path, PathBuf};

use crate::io::BLOCK_BYTES;

pub const SEGMENT_MAGIC: [u8; 8] = *b"SPATESEG";
pub const SEGMENT_VERSION: u32 = 1;
/// Batches start after the header page.
pub const SEGMENT_DATA_START: u64 = BLOCK_BYTES as u64;
pub const INDEX_ENTRY_BYTES: usize = 32;
const KIND_BATCH: u32 = 1;
const KIND_SEAL: u32 = 2;

/// The decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub stream_id: u64,
    pub shard_id: u32,
    pub base_seq: u64,
    pub nonce: u64,
    pub created_ms: i64,
    pub segment_bytes: u64,
}

impl SegmentHeader {
    /// Writes the header into the first 64 bytes of `page` and zeroes the rest of the page.
    pub fn encode_page(&self, page: &mut [u8]) {
        assert!(page.len() >= BLOCK_BYTES);
        page[..BLOCK_BYTES].fill(0);
        page[0..8].copy_from_slice(&SEGMENT_MAGIC);
        page[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
        page[16..24].copy_from_slice(&self.stream_id.to_le_bytes());
        page[24..28].copy_from_slice(&self.shard_id.to_le_bytes());
        page[32..40].copy_from_slice(&self.base_seq.to_le_bytes());
        page[40..48].copy_from_slice(&self.nonce.to_le_bytes());
        page[48..56].copy_from_slice(&self.created_ms.to_le_bytes());
        page[56..64].copy_from_slice(&self.segment_bytes.to_le_bytes());
        let crc = crc32c::crc32c(&page[16..64]);
        page[12..16].copy_from_slice(&crc.to_le_bytes());
    }

    /// Decodes a header page read from disk; `None` if it is not a valid header (never
    /// written, torn, or zeros).
    pub fn decode(page: &[u8]) -> Option<SegmentHeader> {
        if page.len() < 64 || page[0..8] != SEGMENT_MAGIC {
            return None;
        }
        let u32_at = |at: usize| u32::from_le_bytes(page[at..at + 4].try_into().expect("4"));
        let u64_at = |at: usize| u64::from_le_bytes(page[at..at + 8].try_into().expect("8"));
        if u32_at(8) != SEGMENT_VERSION || u32_at(12) != crc32c::crc32c(&page[16..64]) {
            return None;
        }
        Some(SegmentHeader {
            stream_id: u64_at(16),
            shard_id: u32_at(24),
            base_seq: u64_at(32),
            nonce: u64_at(40),
            created_ms: u64_at(48) as i64,
            segment_bytes: u64_at(56),
        })
    }
}

/// One sparse-index entry: where a batch starts and when it arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub seq: u64,
    pub offset: u64,
    pub ts_ms: i64,
}

/// What the seal entry records when a segment is closed at roll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seal {
    pub next_seq: u64,
    pub end_offset: u64,
    pub last_ts_ms: i64,
}

fn encode_entry(out: &mut Vec<u8>, seq: u64, offset: u64, ts_ms: i64, kind: u32) {
    let start = out.len();
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&ts_ms.to_le_bytes());
    out.extend_from_slice(&kind.to_le_bytes());
    let crc = crc32c::crc32c(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

pub fn encode_index_entry(out: &mut Vec<u8>, e: &IndexEntry) {
    encode_entry(out, e.seq, e.offset, e.ts_ms, KIND_BATCH);
}

pub fn encode_seal(out: &mut Vec<u8>, s: &Seal) {
    encode_entry(out, s.next_seq, s.end_offset, s.last_ts_ms, KIND_SEAL);
}

/// Index file contents as read back: the valid prefix of entries, an optional seal, and
/// whether anything after the valid prefix was damaged (torn append, flipped bits).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexFile {
    pub entries: Vec<IndexEntry>,
    pub seal: Option<Seal>,
    pub damaged: bool,
}

/// Parses an index file. Stops at the first bad entry; entries must be strictly increasing
/// in seq and offset, otherwise the rest is considered damaged.
pub fn decode_index(bytes: &[u8]) -> IndexFile {
    let mut out = IndexFile::default();
    for chunk in bytes.chunks(INDEX_ENTRY_BYTES) {
        if chunk.len() < INDEX_ENTRY_BYTES || out.seal.is_some() {
            out.damaged = true;
            break;
        }
        let u64_at = |at: usize| u64::from_le_bytes(chunk[at..at + 8].try_into().expect("8"));
        let kind = u32::from_le_bytes(chunk[24..28].try_into().expect("4"));
        let crc = u32::from_le_bytes(chunk[28..32].try_into().expect("4"));
        if crc != crc32c::crc32c(&chunk[..28]) {
            out.damaged = true;
            break;
        }
        let (seq, offset, ts_ms) = (u64_at(0), u64_at(8), u64_at(16) as i64);
        match kind {
            KIND_BATCH => {
                if let Some(last) = out.entries.last() {
                    if seq <= last.seq || offset <= last.offset {
                        out.damaged = true;
                        break;
                    }
                }
                out.entries.push(IndexEntry { seq, offset, ts_ms });
            }
            KIND_SEAL => {
                out.seal = Some(Seal {
                    next_seq: seq,
                    end_offset: offset,
                    last_ts_ms: ts_ms,
                })
            }
            _ => {
                out.damaged = true;
                break;
            }
        }
    }
    out
}

/// The in-memory sparse index of one segment.
#[derive(Debug, Clone, Default)]
pub struct SegmentIndex {
    pub entries: Vec<IndexEntry>,
}

impl SegmentIndex {
    /// The entry of the last indexed batch starting at or before `seq`.
    pub fn floor_seq(&self, seq: u64) -> Option<IndexEntry> {
        let i = self.entries.partition_point(|e| e.seq <= seq);
        i.checked_sub(1).map(|i| self.entries[i])
    }

    /// The entry of the last indexed batch that arrived strictly before `ts_ms`: scanning
    /// forward from it finds the first batch at or after `ts_ms`.
    pub fn floor_ts(&self, ts_ms: i64) -> Option<IndexEntry> {
        let i = self.entries.partition_point(|e| e.ts_ms < ts_ms);
        i.checked_sub(1).map(|i| self.entries[i])
    }

    pub fn first_ts_ms(&self) -> Option<i64> {
        self.entries.first().map(|e| e.ts_ms)
    }

    pub fn last(&self) -> Option<IndexEntry> {
        self.entries.last().copied()
    }
}

pub fn shard_dir(data_dir: &Path, stream_id: u64, shard_id: u32) -> PathBuf {
    data_dir
        .join("streams")
        .join(format!("{stream_id:016x}"))
        .join(format!("{shard_id:05}"))
}

pub fn stream_dir(data_dir: &Path, stream_id: u64) -> PathBuf {
    data_dir.join("streams").join(format!("{stream_id:016x}"))
}

pub fn segment_file_name(base_seq: u64) -> String {
    format!("{base_seq:020}.seg")
}

pub fn index_file_name(base_seq: u64) -> String {
    format!("{base_seq:020}.idx")
}

/// Parses `<base_seq:020>.seg`.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".seg")?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_rejects_damage() {
        let h = SegmentHeader {
            stream_id: 7,
            shard_id: 3,
            base_seq: 1234,
            nonce: 0xdead_beef,
            created_ms: 99,
            segment_bytes: 1 << 20,
        };
        let mut page = vec![0xffu8; BLOCK_BYTES];
        h.encode_page(&mut page);
        assert_eq!(SegmentHeader::decode(&page), Some(h));
        page[40] ^= 1;
        assert_eq!(SegmentHeader::decode(&page), None);
        assert_eq!(SegmentHeader::decode(&[0u8; BLOCK_BYTES]), None);
    }

    #[test]
    fn index_round_trip_torn_tail_and_seal() {
        let mut bytes = Vec::new();
        for i in 0..5u64 {
            encode_index_entry(
                &mut bytes,
                &IndexEntry {
                    seq: i * 10,
                    offset: 4096 + i * 1000,
                    ts_ms: i as i64,
                },
            );
        }
        let full = decode_index(&bytes);
        assert_eq!(full.entries.len(), 5);
        assert!(!full.damaged);
        let torn = decode_index(&bytes[..bytes.len() - 5]);
        assert_eq!(torn.entries.len(), 4);
        assert!(torn.damaged);
        encode_seal(
            &mut bytes,
            &Seal {
                next_seq: 50,
                end_offset: 9000,
                last_ts_ms: 4,
            },
        );
        let sealed = decode_index(&bytes);
        assert_eq!(sealed.seal.map(|s| s.next_seq), Some(50));
        let mut flipped = bytes.clone();
        flipped[40] ^= 0x10;
        let d = decode_index(&flipped);
        assert_eq!(d.entries.len(), 1);
        assert!(d.damaged);
    }

    #[test]
    fn floor_lookups() {
        let idx = SegmentIndex {
            entries: vec![
                IndexEntry {
                    seq: 0,
                    offset: 4096,
                    ts_ms: 100,
                },
                IndexEntry {
                    seq: 50,
                    offset: 9000,
                    ts_ms: 200,
                },
                IndexEntry {
                    seq: 90,
                    offset: 15000,
                    ts_ms: 300,
                },
            ],
        };
        assert_eq!(idx.floor_seq(0).map(|e| e.seq), Some(0));
        assert_eq!(idx.floor_seq(89).map(|e| e.seq), Some(50));
        assert_eq!(idx.floor_seq(1000).map(|e| e.seq), Some(90));
        assert_eq!(idx.floor_ts(100), None);
        assert_eq!(idx.floor_ts(250).map(|e| e.seq), Some(50));
    }

    #[test]
    fn file_names() {
        assert_eq!(segment_file_name(42), "00000000000000000042.seg");
        assert_eq!(
            parse_segment_file_name("00000000000000000042.seg"),
            Some(42)
        );
        assert_eq!(parse_segment_file_name("42.seg"), None);
        assert_eq!(parse_segment_file_name("00000000000000000042.idx"), None);
    }
}
