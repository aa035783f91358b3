//! On-disk layouts of a store: names, extent headers, journal files, rounds and their
//! entries. Pure encode/decode, no I/O; every decoder takes untrusted bytes and answers
//! `None` or a typed error, never a panic (fuzzed by `fuzz_smoke` and the `fuzz/` crate).
//!
//! ```text
//! <data>/store-<k>/vol-<n:06>.dat       volume: pre-written, extents of shards' logs
//! <data>/store-<k>/jnl-<slot:03>.dat    journal file: pre-written, reused in a ring
//! <data>/store-<k>/manifest             checkpoint: shards' extents, replay position
//! ```
//!
//! Extent (a power-of-two run of blocks inside a volume; one shard's log is a list of them):
//! ```text
//!   0      4096   extent header (below), rest of the block zero
//!   4096   ...    batches back to back (protocol::batch layout), stamped with the nonce
//! extent header:
//!   0  8  magic        b"SPATEEXT"
//!   8  4  version      1
//!  12  4  header_crc   CRC32C of bytes 16..64
//!  16  8  stream_id
//!  24  4  shard_id
//!  28  4  order        size = extent_bytes_min << order
//!  32  8  base_seq     sequence number of the extent's first record
//!  40  8  nonce        random per extent; stamped into every batch it holds
//!  48  8  created_ms
//!  56  8  extent id    (volume << 32) | unit
//! ```
//!
//! Journal file (fixed size, every block written before first use):
//! ```text
//!   0      4096   file header:
//!                   0 8 magic b"SPATEJNL" | 8 4 version | 12 4 crc of 16..64 |
//!                  16 8 file_seq | 24 8 nonce | 32 8 first_round | 40 8 created_ms |
//!                  48 4 store | 52..64 zero
//!   4096   ...    rounds, each starting on a block boundary and padded to one:
//! round:
//!   0  4  magic        b"SPJR"
//!   4  4  header_crc   CRC32C of bytes 8..64
//!   8  8  file nonce   the journal file's nonce (stale rounds of an earlier lap fail it)
//!  16  8  round        round number (consecutive within and across files)
//!  24  4  payload_len  bytes of entries after this 64-byte header
//!  28  4  entry_count
//!  32  4  payload_crc  CRC32C of the payload
//!  36  28 zero
//!  64  ...  entries, each 8-byte aligned:
//!        0 1 kind (1 batch, 2 roll, 3 direct) | 1 3 zero | 4 4 shard_id | 8 8 stream_id |
//!       16 4 body_len | 20 4 zero | 24 .. body, zero-padded to 8 bytes
//! bodies:
//!   batch   the stored batch, stamped (its own CRCs cover it again)
//!   roll    extent id u64 | order u32 | zero u32 | base_seq u64 | nonce u64 | created_ms i64
//!           the shard's log continues in a new extent
//!   direct  extent id u64 | from_offset u64 | to_offset u64 | from_seq u64 | next_seq u64
//!           batches from_seq..next_seq were written in place in the extent at
//!           [from_offset, to_offset) and synced by the round (not copied into the journal)
//! ```

use spate_protocol::batch::BATCH_HEADER_LEN;

use crate::io::BLOCK_BYTES;

pub const EXTENT_MAGIC: [u8; 8] = *b"SPATEEXT";
pub const JOURNAL_MAGIC: [u8; 8] = *b"SPATEJNL";
pub const ROUND_MAGIC: [u8; 4] = *b"SPJR";
pub const LAYOUT_VERSION: u32 = 1;
/// Batches of an extent start after its header block.
pub const EXTENT_DATA_START: u64 = BLOCK_BYTES as u64;
/// Rounds of a journal file start after its header block.
pub const JOURNAL_DATA_START: u64 = BLOCK_BYTES as u64;
pub const ROUND_HEADER_LEN: usize = 64;
pub const ENTRY_HEADER_LEN: usize = 24;
pub const ROLL_BODY_LEN: usize = 40;
pub const DIRECT_BODY_LEN: usize = 40;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Where an extent lives: volume number and position in units of `extent_bytes_min`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExtentId(pub u64);

impl ExtentId {
    pub fn new(volume: u32, unit: u32) -> ExtentId {
        ExtentId((u64::from(volume) << 32) | u64::from(unit))
    }
    pub fn volume(self) -> u32 {
        (self.0 >> 32) as u32
    }
    pub fn unit(self) -> u32 {
        self.0 as u32
    }
}

/// The decoded extent header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtentHeader {
    pub stream_id: u64,
    pub shard_id: u32,
    pub order: u32,
    pub base_seq: u64,
    pub nonce: u64,
    pub created_ms: i64,
    pub id: ExtentId,
}

impl ExtentHeader {
    /// Writes the header into the first 64 bytes of `block` and zeroes the rest of it.
    pub fn encode_block(&self, block: &mut [u8]) {
        assert!(block.len() >= BLOCK_BYTES);
        block[..BLOCK_BYTES].fill(0);
        block[0..8].copy_from_slice(&EXTENT_MAGIC);
        block[8..12].copy_from_slice(&LAYOUT_VERSION.to_le_bytes());
        block[16..24].copy_from_slice(&self.stream_id.to_le_bytes());
        block[24..28].copy_from_slice(&self.shard_id.to_le_bytes());
        block[28..32].copy_from_slice(&self.order.to_le_bytes());
        block[32..40].copy_from_slice(&self.base_seq.to_le_bytes());
        block[40..48].copy_from_slice(&self.nonce.to_le_bytes());
        block[48..56].copy_from_slice(&self.created_ms.to_le_bytes());
        block[56..64].copy_from_slice(&self.id.0.to_le_bytes());
        let crc = crc32c::crc32c(&block[16..64]);
        block[12..16].copy_from_slice(&crc.to_le_bytes());
    }

    /// Decodes a header block read from disk; `None` if it is not a valid header.
    pub fn decode(block: &[u8]) -> Option<ExtentHeader> {
        if block.len() < 64 || block[0..8] != EXTENT_MAGIC {
            return None;
        }
        if u32_at(block, 8) != LAYOUT_VERSION || u32_at(block, 12) != crc32c::crc32c(&block[16..64])
        {
            return None;
        }
        Some(ExtentHeader {
            stream_id: u64_at(block, 16),
            shard_id: u32_at(block, 24),
            order: u32_at(block, 28),
            base_seq: u64_at(block, 32),
            nonce: u64_at(block, 40),
            created_ms: u64_at(block, 48) as i64,
            id: ExtentId(u64_at(block, 56)),
        })
    }
}

/// The decoded journal file header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalHeader {
    pub file_seq: u64,
    pub nonce: u64,
    pub first_round: u64,
    pub created_ms: i64,
    pub store: u32,
}

impl JournalHeader {
    pub fn encode_block(&self, block: &mut [u8]) {
        assert!(block.len() >= BLOCK_BYTES);
        block[..BLOCK_BYTES].fill(0);
        block[0..8].copy_from_slice(&JOURNAL_MAGIC);
        block[8..12].copy_from_slice(&LAYOUT_VERSION.to_le_bytes());
        block[16..24].copy_from_slice(&self.file_seq.to_le_bytes());
        block[24..32].copy_from_slice(&self.nonce.to_le_bytes());
        block[32..40].copy_from_slice(&self.first_round.to_le_bytes());
        block[40..48].copy_from_slice(&self.created_ms.to_le_bytes());
        block[48..52].copy_from_slice(&self.store.to_le_bytes());
        let crc = crc32c::crc32c(&block[16..64]);
        block[12..16].copy_from_slice(&crc.to_le_bytes());
    }

    pub fn decode(block: &[u8]) -> Option<JournalHeader> {
        if block.len() < 64 || block[0..8] != JOURNAL_MAGIC {
            return None;
        }
        if u32_at(block, 8) != LAYOUT_VERSION || u32_at(block, 12) != crc32c::crc32c(&block[16..64])
        {
            return None;
        }
        Some(JournalHeader {
            file_seq: u64_at(block, 16),
            nonce: u64_at(block, 24),
            first_round: u64_at(block, 32),
            created_ms: u64_at(block, 40) as i64,
            store: u32_at(block, 48),
        })
    }
}

/// The decoded header of one round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundHeader {
    pub nonce: u64,
    pub round: u64,
    pub payload_len: u32,
    pub entry_count: u32,
    pub payload_crc: u32,
}

impl RoundHeader {
    /// Bytes the round takes in the journal: header and payload padded to a block.
    pub fn padded_len(&self) -> u64 {
        crate::io::align_up(ROUND_HEADER_LEN as u64 + u64::from(self.payload_len))
    }

    pub fn encode(&self, out: &mut [u8]) {
        out[..ROUND_HEADER_LEN].fill(0);
        out[0..4].copy_from_slice(&ROUND_MAGIC);
        out[8..16].copy_from_slice(&self.nonce.to_le_bytes());
        out[16..24].copy_from_slice(&self.round.to_le_bytes());
        out[24..28].copy_from_slice(&self.payload_len.to_le_bytes());
        out[28..32].copy_from_slice(&self.entry_count.to_le_bytes());
        out[32..36].copy_from_slice(&self.payload_crc.to_le_bytes());
        let crc = crc32c::crc32c(&out[8..ROUND_HEADER_LEN]);
        out[4..8].copy_from_slice(&crc.to_le_bytes());
    }

    pub fn decode(b: &[u8]) -> Option<RoundHeader> {
        if b.len() < ROUND_HEADER_LEN || b[0..4] != ROUND_MAGIC {
            return None;
        }
        if u32_at(b, 4) != crc32c::crc32c(&b[8..ROUND_HEADER_LEN]) {
            return None;
        }
        if b[36..ROUND_HEADER_LEN].iter().any(|&x| x != 0) {
            return None;
        }
        Some(RoundHeader {
            nonce: u64_at(b, 8),
            round: u64_at(b, 16),
            payload_len: u32_at(b, 24),
            entry_count: u32_at(b, 28),
            payload_crc: u32_at(b, 32),
        })
    }
}

/// A shard of some stream, as journal entries name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardKey {
    pub stream_id: u64,
    pub shard_id: u32,
}

/// The shard's log continues in a new extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roll {
    pub extent: ExtentId,
    pub order: u32,
    pub base_seq: u64,
    pub nonce: u64,
    pub created_ms: i64,
}

/// Batches written in place (not journaled) and synced by the round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Direct {
    pub extent: ExtentId,
    pub from_offset: u64,
    pub to_offset: u64,
    pub from_seq: u64,
    pub next_seq: u64,
}

/// One decoded journal entry; a batch borrows from the round's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry<'a> {
    Batch(ShardKey, &'a [u8]),
    Roll(ShardKey, Roll),
    Direct(ShardKey, Direct),
}

const KIND_BATCH: u8 = 1;
const KIND_ROLL: u8 = 2;
const KIND_DIRECT: u8 = 3;

/// Bytes an entry with a body of `body_len` takes in a round.
pub fn entry_len(body_len: usize) -> usize {
    ENTRY_HEADER_LEN + body_len.next_multiple_of(8)
}

/// Writes an entry header at `out[0..24]` for a body of `body_len` bytes; the caller
/// writes the body after it and zero-pads it to 8 bytes.
pub fn encode_entry_header(out: &mut [u8], kind: u8, key: ShardKey, body_len: usize) {
    out[..ENTRY_HEADER_LEN].fill(0);
    out[0] = kind;
    out[4..8].copy_from_slice(&key.shard_id.to_le_bytes());
    out[8..16].copy_from_slice(&key.stream_id.to_le_bytes());
    out[16..20].copy_from_slice(&(body_len as u32).to_le_bytes());
}

pub fn encode_batch_entry_header(out: &mut [u8], key: ShardKey, batch_len: usize) {
    encode_entry_header(out, KIND_BATCH, key, batch_len);
}

/// Encodes a whole roll entry (`entry_len(ROLL_BODY_LEN)` bytes).
pub fn encode_roll(out: &mut [u8], key: ShardKey, r: &Roll) {
    encode_entry_header(out, KIND_ROLL, key, ROLL_BODY_LEN);
    let b = &mut out[ENTRY_HEADER_LEN..ENTRY_HEADER_LEN + ROLL_BODY_LEN];
    b[0..8].copy_from_slice(&r.extent.0.to_le_bytes());
    b[8..12].copy_from_slice(&r.order.to_le_bytes());
    b[12..16].fill(0);
    b[16..24].copy_from_slice(&r.base_seq.to_le_bytes());
    b[24..32].copy_from_slice(&r.nonce.to_le_bytes());
    b[32..40].copy_from_slice(&r.created_ms.to_le_bytes());
}

/// Encodes a whole direct entry (`entry_len(DIRECT_BODY_LEN)` bytes).
pub fn encode_direct(out: &mut [u8], key: ShardKey, d: &Direct) {
    encode_entry_header(out, KIND_DIRECT, key, DIRECT_BODY_LEN);
    let b = &mut out[ENTRY_HEADER_LEN..ENTRY_HEADER_LEN + DIRECT_BODY_LEN];
    b[0..8].copy_from_slice(&d.extent.0.to_le_bytes());
    b[8..16].copy_from_slice(&d.from_offset.to_le_bytes());
    b[16..24].copy_from_slice(&d.to_offset.to_le_bytes());
    b[24..32].copy_from_slice(&d.from_seq.to_le_bytes());
    b[32..40].copy_from_slice(&d.next_seq.to_le_bytes());
}

/// Why a round's payload could not be decoded (the round is then treated as torn).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("entry at {at} runs past the payload")]
    Truncated { at: usize },
    #[error("entry at {at} has unknown kind {kind}")]
    Kind { at: usize, kind: u8 },
    #[error("entry at {at} has a body of {len} bytes where {want} are required")]
    BodyLength { at: usize, len: usize, want: usize },
    #[error("entry at {at} has non-zero reserved bytes")]
    Reserved { at: usize },
    #[error("batch entry at {at} is shorter than a batch header")]
    ShortBatch { at: usize },
    #[error("payload holds {found} entries, the header says {declared}")]
    Count { found: u32, declared: u32 },
}

/// Decodes every entry of a round's payload (already checked against its CRC).
pub fn decode_entries(payload: &[u8], entry_count: u32) -> Result<Vec<Entry<'_>>, EntryError> {
    let mut out = Vec::with_capacity(entry_count.min(4096) as usize);
    let mut at = 0usize;
    while at < payload.len() {
        if payload.len() - at < ENTRY_HEADER_LEN {
            return Err(EntryError::Truncated { at });
        }
        let h = &payload[at..at + ENTRY_HEADER_LEN];
        if h[1..4] != [0, 0, 0] || h[20..24] != [0, 0, 0, 0] {
            return Err(EntryError::Reserved { at });
        }
        let key = ShardKey {
            shard_id: u32_at(h, 4),
            stream_id: u64_at(h, 8),
        };
        let len = u32_at(h, 16) as usize;
        let body_start = at + ENTRY_HEADER_LEN;
        let padded = len.next_multiple_of(8);
        if payload.len() - body_start < padded {
            return Err(EntryError::Truncated { at });
        }
        let body = &payload[body_start..body_start + len];
        if payload[body_start + len..body_start + padded]
            .iter()
            .any(|&b| b != 0)
        {
            return Err(EntryError::Reserved { at });
        }
        let entry = match h[0] {
            KIND_BATCH => {
                if len < BATCH_HEADER_LEN {
                    return Err(EntryError::ShortBatch { at });
                }
                Entry::Batch(key, body)
            }
            KIND_ROLL => {
                if len != ROLL_BODY_LEN {
                    return Err(EntryError::BodyLength {
                        at,
                        len,
                        want: ROLL_BODY_LEN,
                    });
                }
                Entry::Roll(
                    key,
                    Roll {
                        extent: ExtentId(u64_at(body, 0)),
                        order: u32_at(body, 8),
                        base_seq: u64_at(body, 16),
                        nonce: u64_at(body, 24),
                        created_ms: u64_at(body, 32) as i64,
                    },
                )
            }
            KIND_DIRECT => {
                if len != DIRECT_BODY_LEN {
                    return Err(EntryError::BodyLength {
                        at,
                        len,
                        want: DIRECT_BODY_LEN,
                    });
                }
                Entry::Direct(
                    key,
                    Direct {
                        extent: ExtentId(u64_at(body, 0)),
                        from_offset: u64_at(body, 8),
                        to_offset: u64_at(body, 16),
                        from_seq: u64_at(body, 24),
                        next_seq: u64_at(body, 32),
                    },
                )
            }
            kind => return Err(EntryError::Kind { at, kind }),
        };
        out.push(entry);
        at = body_start + padded;
    }
    if out.len() as u32 != entry_count {
        return Err(EntryError::Count {
            found: out.len() as u32,
            declared: entry_count,
        });
    }
    Ok(out)
}

pub fn volume_file_name(n: u32) -> String {
    format!("vol-{n:06}.dat")
}

pub fn parse_volume_file_name(name: &str) -> Option<u32> {
    let stem = name.strip_prefix("vol-")?.strip_suffix(".dat")?;
    (stem.len() == 6 && stem.bytes().all(|b| b.is_ascii_digit())).then(|| stem.parse().ok())?
}

pub fn journal_file_name(slot: u32) -> String {
    format!("jnl-{slot:03}.dat")
}

pub fn parse_journal_file_name(name: &str) -> Option<u32> {
    let stem = name.strip_prefix("jnl-")?.strip_suffix(".dat")?;
    (stem.len() == 3 && stem.bytes().all(|b| b.is_ascii_digit())).then(|| stem.parse().ok())?
}

pub const MANIFEST_FILE: &str = "manifest";

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: ShardKey = ShardKey {
        stream_id: 7,
        shard_id: 3,
    };

    #[test]
    fn extent_header_round_trip_and_damage() {
        let h = ExtentHeader {
            stream_id: 7,
            shard_id: 3,
            order: 2,
            base_seq: 1234,
            nonce: 0xdead_beef,
            created_ms: 99,
            id: ExtentId::new(1, 40),
        };
        let mut block = vec![0xffu8; BLOCK_BYTES];
        h.encode_block(&mut block);
        assert_eq!(ExtentHeader::decode(&block), Some(h));
        assert_eq!(h.id.volume(), 1);
        assert_eq!(h.id.unit(), 40);
        block[40] ^= 1;
        assert_eq!(ExtentHeader::decode(&block), None);
        assert_eq!(ExtentHeader::decode(&[0u8; BLOCK_BYTES]), None);
    }

    #[test]
    fn journal_header_round_trip() {
        let h = JournalHeader {
            file_seq: 9,
            nonce: 77,
            first_round: 1000,
            created_ms: 5,
            store: 1,
        };
        let mut block = vec![0u8; BLOCK_BYTES];
        h.encode_block(&mut block);
        assert_eq!(JournalHeader::decode(&block), Some(h));
        block[20] ^= 4;
        assert_eq!(JournalHeader::decode(&block), None);
    }

    #[test]
    fn round_with_every_entry_kind_round_trips() {
        let batch = {
            let mut b = spate_protocol::batch::BatchBuilder::new();
            b.push(b"k", b"hello", None).unwrap();
            b.finish()
        };
        let roll = Roll {
            extent: ExtentId::new(0, 16),
            order: 1,
            base_seq: 10,
            nonce: 11,
            created_ms: 12,
        };
        let direct = Direct {
            extent: ExtentId::new(0, 16),
            from_offset: 4096,
            to_offset: 9000,
            from_seq: 10,
            next_seq: 20,
        };
        let mut payload =
            vec![
                0u8;
                entry_len(batch.len()) + entry_len(ROLL_BODY_LEN) + entry_len(DIRECT_BODY_LEN)
            ];
        let mut at = 0;
        encode_batch_entry_header(&mut payload[at..], KEY, batch.len());
        payload[at + ENTRY_HEADER_LEN..at + ENTRY_HEADER_LEN + batch.len()].copy_from_slice(&batch);
        at += entry_len(batch.len());
        encode_roll(&mut payload[at..], KEY, &roll);
        at += entry_len(ROLL_BODY_LEN);
        encode_direct(&mut payload[at..], KEY, &direct);
        let entries = decode_entries(&payload, 3).unwrap();
        assert_eq!(
            entries,
            vec![
                Entry::Batch(KEY, &batch[..]),
                Entry::Roll(KEY, roll),
                Entry::Direct(KEY, direct)
            ]
        );
        assert!(decode_entries(&payload, 2).is_err());
        for cut in 0..payload.len() {
            assert!(decode_entries(&payload[..cut], 3).is_err(), "cut at {cut}");
        }
        let mut bad = payload.clone();
        bad[0] = 9;
        assert!(matches!(
            decode_entries(&bad, 3),
            Err(EntryError::Kind { .. })
        ));
    }

    #[test]
    fn round_header_round_trip() {
        let h = RoundHeader {
            nonce: 1,
            round: 2,
            payload_len: 5000,
            entry_count: 3,
            payload_crc: 4,
        };
        let mut b = [0u8; ROUND_HEADER_LEN];
        h.encode(&mut b);
        assert_eq!(RoundHeader::decode(&b), Some(h));
        assert_eq!(h.padded_len(), 8192);
        b[17] ^= 1;
        assert_eq!(RoundHeader::decode(&b), None);
    }

    #[test]
    fn file_names() {
        assert_eq!(volume_file_name(3), "vol-000003.dat");
        assert_eq!(parse_volume_file_name("vol-000003.dat"), Some(3));
        assert_eq!(parse_volume_file_name("vol-3.dat"), None);
        assert_eq!(journal_file_name(2), "jnl-002.dat");
        assert_eq!(parse_journal_file_name("jnl-002.dat"), Some(2));
        assert_eq!(parse_journal_file_name("jnl-002.tmp"), None);
    }
}
