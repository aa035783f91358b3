//! The manifest: a store's checkpoint. It lists every shard's extents with how far each is
//! durable, and the journal position replay starts from. Written by each checkpoint with
//! `write_small_atomic` (a crash leaves the old or the new one), read once at start.
//!
//! File `<data>/store-<k>/manifest`:
//! ```text
//!   0   8  magic      b"SPMANIF1"
//!   8   4  crc        CRC32C of the payload
//!  12   4  length     payload bytes
//!  16   .. payload    rkyv archive of `Manifest` (validated with bytecheck on load)
//! ```
//! Only shards that hold data appear: an idle shard costs the manifest nothing.

use super::layout::ExtentId;

const MANIFEST_MAGIC: [u8; 8] = *b"SPMANIF1";

/// Where journal replay starts: the first round not covered by the checkpoint.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct JournalPos {
    /// Sequence number of the journal file (0: no journal file yet).
    pub file_seq: u64,
    pub offset: u64,
    /// Number of the next round.
    pub round: u64,
}

/// One extent of a shard's log as of the checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ExtentRecord {
    pub id: u64,
    pub order: u32,
    pub base_seq: u64,
    pub nonce: u64,
    pub created_ms: i64,
    /// Arrival time of the extent's first record (`i64::MIN` if it holds none).
    pub first_ts_ms: i64,
    /// End of the durable batches in the extent, and the next sequence number there.
    pub end_offset: u64,
    pub end_seq: u64,
    /// Arrival time of the extent's newest record.
    pub last_ts_ms: i64,
    /// Closed: the log continues in the next extent.
    pub sealed: bool,
}

impl ExtentRecord {
    pub fn extent(&self) -> ExtentId {
        ExtentId(self.id)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ShardRecord {
    pub stream_id: u64,
    pub shard_id: u32,
    pub extents: Vec<ExtentRecord>,
}

#[derive(
    Debug, Clone, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct Manifest {
    pub store: u32,
    /// Checkpoints taken by this store, this one included.
    pub checkpoint: u64,
    pub replay_from: JournalPos,
    /// Sequence number the next journal file takes.
    pub next_file_seq: u64,
    pub shards: Vec<ShardRecord>,
}

pub fn encode(m: &Manifest) -> Vec<u8> {
    let payload = rkyv::to_bytes::<rkyv::rancor::Error>(m).expect("manifest serializes");
    let mut out = Vec::with_capacity(16 + payload.len());
    out.extend_from_slice(&MANIFEST_MAGIC);
    out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Decodes a manifest file; any damage is an error naming what is wrong.
pub fn decode(bytes: &[u8]) -> Result<Manifest, String> {
    if bytes.len() < 16 || bytes[..8] != MANIFEST_MAGIC {
        return Err("bad magic".into());
    }
    let crc = u32::from_le_bytes(bytes[8..12].try_into().expect("4"));
    let len = u32::from_le_bytes(bytes[12..16].try_into().expect("4")) as usize;
    let payload = bytes.get(16..16 + len).ok_or("truncated")?;
    if crc32c::crc32c(payload) != crc {
        return Err("checksum mismatch".into());
    }
    // rkyv needs the archive aligned; the file's bytes sit at an arbitrary address.
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(payload.len());
    aligned.extend_from_slice(payload);
    rkyv::from_bytes::<Manifest, rkyv::rancor::Error>(&aligned).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let m = Manifest {
            store: 1,
            checkpoint: 4,
            replay_from: JournalPos {
                file_seq: 3,
                offset: 8192,
                round: 77,
            },
            next_file_seq: 5,
            shards: vec![ShardRecord {
                stream_id: 9,
                shard_id: 2,
                extents: vec![ExtentRecord {
                    id: ExtentId::new(0, 4).0,
                    order: 1,
                    base_seq: 0,
                    nonce: 5,
                    created_ms: 6,
                    first_ts_ms: 7,
                    end_offset: 9000,
                    end_seq: 40,
                    last_ts_ms: 8,
                    sealed: false,
                }],
            }],
        };
        let bytes = encode(&m);
        assert_eq!(decode(&bytes).unwrap(), m);
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err());
        }
        let mut bad = bytes.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(decode(&bad).is_err());
    }
}
