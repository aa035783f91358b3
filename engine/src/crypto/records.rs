//! Encryption of a stored batch under its stream's data key, and the key set a shard
//! seals and opens batches with.
//!
//! An encrypted stored batch (see `protocol::batch` for the header):
//! ```text
//!  0     64     header, in clear. The store stamps it as for any batch (base_seq, times,
//!               segment nonce), then sealing changes:
//!                 flags        bit 0 (FLAG_ENCRYPTED) set
//!                 batch_len    64 + n + 16
//!                 records_crc  CRC32C of the n + 16 stored bytes (ciphertext and tag)
//!                 reserved     low 32 bits: the producer's records_crc (over the plaintext);
//!                              high 32 bits: the key epoch whose data key sealed it
//!                 header_crc   re-sealed over bytes 8..64 as always
//!  64    n      records, AES-256-GCM ciphertext (same length as the plaintext)
//!  64+n  16     GCM tag
//! ```
//! The stored batch is an ordinary batch to everything below the read path: its header
//! CRC and records CRC verify (`batch::verify_stored`) without a key, so recovery, journal
//! replay, torn-tail detection and the damaged-batch checks of the store are unchanged, and
//! a batch rotted on disk is told from a wrong key. Opening it checks the GCM tag and gives
//! back byte for byte the batch the producer sent, stamped (flags and reserved 0, the
//! producer's records CRC): the end-to-end CRC a client checks still covers the plaintext.
//!
//! Nonce (12 bytes) = shard id (u32 LE) ‖ base_seq (u64 LE). Unique per (data key, batch):
//! a data key belongs to one stream, shard ids are never reused within a stream (splits and
//! merges take new ones), and a shard's sequence numbers strictly increase. The one way a
//! sequence number is stamped twice is a crash that cut an unacknowledged batch that had
//! reached the disk; so every start gives each encrypted stream a new key epoch before it
//! takes a write (`crate::keyring`), and a batch sealed after a restart never shares a key
//! with one sealed before it. (A failed write poisons the store: no sequence number is
//! stamped twice while it runs.)
//!
//! AAD = stream id (u64 LE) ‖ shard id (u32 LE) ‖ header bytes 8..20 and 24..64 (all of it
//! but magic and the two CRCs, which depend on the sealed bytes): a batch moved to another
//! shard, stream or position, or with any header field changed, does not open.

use ring::aead::{Aad, Nonce, Tag};

use spate_protocol::batch::BATCH_HEADER_LEN;

use super::envelope::DataKey;
use super::{CryptoError, NONCE_BYTES, TAG_BYTES};

/// Header `flags` bit set on a stored batch whose records are encrypted. Producers must
/// send 0 in `flags` (`check_producer_batch` refuses anything else), so only the store
/// sets it.
pub const FLAG_ENCRYPTED: u16 = 1;

const BATCH_LEN_AT: usize = 8;
const FLAGS_AT: usize = 14;
const RECORDS_CRC_AT: usize = 20;
const BASE_SEQ_AT: usize = 24;
const RESERVED_AT: usize = 56;
const AAD_BYTES: usize = 12 + BATCH_HEADER_LEN - 12;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn put_u32_at(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn reseal_header_crc(header: &mut [u8]) {
    let crc = crc32c::crc32c(&header[8..BATCH_HEADER_LEN]);
    header[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// Where a sealed batch lives: its nonce and AAD bind it there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchContext {
    pub stream_id: u64,
    pub shard_id: u32,
}

fn nonce(ctx: BatchContext, header: &[u8]) -> [u8; NONCE_BYTES] {
    let mut n = [0u8; NONCE_BYTES];
    n[..4].copy_from_slice(&ctx.shard_id.to_le_bytes());
    n[4..].copy_from_slice(&header[BASE_SEQ_AT..BASE_SEQ_AT + 8]);
    n
}

fn aad(ctx: BatchContext, header: &[u8]) -> [u8; AAD_BYTES] {
    let mut a = [0u8; AAD_BYTES];
    a[..8].copy_from_slice(&ctx.stream_id.to_le_bytes());
    a[8..12].copy_from_slice(&ctx.shard_id.to_le_bytes());
    a[12..24].copy_from_slice(&header[8..RECORDS_CRC_AT]);
    a[24..].copy_from_slice(&header[RECORDS_CRC_AT + 4..BATCH_HEADER_LEN]);
    a
}

/// Whether a stored batch's header says its records are encrypted.
pub fn is_encrypted(header: &[u8]) -> bool {
    u16_at(header, FLAGS_AT) & FLAG_ENCRYPTED != 0
}

/// The key epoch a sealed batch names (meaningless for a batch that is not encrypted).
pub fn sealed_epoch(header: &[u8]) -> u32 {
    u32_at(header, RESERVED_AT + 4)
}

/// Seals a stamped plaintext batch in place. `buf` holds the batch in `buf[..len - 16]`
/// (`batch_len` says so) and has room for the tag: `buf.len()` is the sealed length. The
/// batch is trusted (checked and stamped by the store): a batch that does not fit `buf`
/// is a bug and panics.
pub fn seal_batch(key: &DataKey, epoch: u32, ctx: BatchContext, buf: &mut [u8]) {
    let plain_len = u32_at(buf, BATCH_LEN_AT) as usize;
    assert_eq!(plain_len + TAG_BYTES, buf.len(), "room for exactly the tag");
    assert!(!is_encrypted(buf), "batch already sealed");
    let flags = u16_at(buf, FLAGS_AT) | FLAG_ENCRYPTED;
    buf[FLAGS_AT..FLAGS_AT + 2].copy_from_slice(&flags.to_le_bytes());
    put_u32_at(buf, BATCH_LEN_AT, (plain_len + TAG_BYTES) as u32);
    let plain_crc = u32_at(buf, RECORDS_CRC_AT);
    put_u32_at(buf, RESERVED_AT, plain_crc);
    put_u32_at(buf, RESERVED_AT + 4, epoch);
    let (header, rest) = buf.split_at_mut(BATCH_HEADER_LEN);
    let (records, tag_out) = rest.split_at_mut(plain_len - BATCH_HEADER_LEN);
    let tag: Tag = key
        .aead()
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce(ctx, header)),
            Aad::from(aad(ctx, header)),
            records,
        )
        .expect("a batch is far below GCM's length limit");
    tag_out.copy_from_slice(tag.as_ref());
    let crc = crc32c::crc32c(rest);
    put_u32_at(header, RECORDS_CRC_AT, crc);
    reseal_header_crc(header);
}

/// Opens one sealed batch in place: `batch` is exactly its stored bytes (untrusted).
/// Returns the plaintext batch's length (it is `batch[..len]`, header restored). A wrong
/// key, a batch moved or altered in any byte, or a malformed header is an error, and then
/// no plaintext is released (`ring` wipes the buffer on a failed tag check: open a copy,
/// never the only copy of stored bytes).
pub fn open_batch(
    key: &DataKey,
    ctx: BatchContext,
    batch: &mut [u8],
) -> Result<usize, CryptoError> {
    if batch.len() < BATCH_HEADER_LEN + TAG_BYTES {
        return Err(CryptoError::SealedLength {
            base_seq: 0,
            declared: 0,
            actual: batch.len(),
        });
    }
    let seq = u64_at(batch, BASE_SEQ_AT);
    if !is_encrypted(batch) {
        return Err(CryptoError::NotEncrypted { base_seq: seq });
    }
    let declared = u32_at(batch, BATCH_LEN_AT) as usize;
    if declared != batch.len() {
        return Err(CryptoError::SealedLength {
            base_seq: seq,
            declared,
            actual: batch.len(),
        });
    }
    let (header, sealed) = batch.split_at_mut(BATCH_HEADER_LEN);
    let plain = key
        .aead()
        .open_in_place(
            Nonce::assume_unique_for_key(nonce(ctx, header)),
            Aad::from(aad(ctx, header)),
            sealed,
        )
        .map_err(|_| CryptoError::Decrypt { base_seq: seq })?
        .len();
    let plain_crc = u32_at(header, RESERVED_AT);
    let flags = u16_at(header, FLAGS_AT) & !FLAG_ENCRYPTED;
    header[FLAGS_AT..FLAGS_AT + 2].copy_from_slice(&flags.to_le_bytes());
    put_u32_at(header, BATCH_LEN_AT, (BATCH_HEADER_LEN + plain) as u32);
    put_u32_at(header, RECORDS_CRC_AT, plain_crc);
    header[RESERVED_AT..BATCH_HEADER_LEN].fill(0);
    reseal_header_crc(header);
    Ok(BATCH_HEADER_LEN + plain)
}

/// One stream's data keys, by key epoch, as a shard's store holds them (unwrapped, in
/// memory only). Shared read-only between cores; replaced whole when the stream gets a new
/// epoch (a restart, a rotation, encryption started or stopped).
pub struct StreamKeys {
    pub stream_id: u64,
    /// The epoch new batches are sealed under; `None`: new batches are stored in clear
    /// (encryption stopped), the older ones stay readable.
    pub current: Option<u32>,
    keys: Vec<(u32, DataKey)>,
}

impl std::fmt::Debug for StreamKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamKeys")
            .field("stream_id", &self.stream_id)
            .field("current", &self.current)
            .field("epochs", &self.epochs())
            .finish()
    }
}

/// Equal when they name the same epochs (the keys of an epoch never change).
impl PartialEq for StreamKeys {
    fn eq(&self, other: &StreamKeys) -> bool {
        self.stream_id == other.stream_id
            && self.current == other.current
            && self.epochs() == other.epochs()
    }
}
impl Eq for StreamKeys {}

impl StreamKeys {
    /// `keys` sorted by epoch or not; `current` must be one of them.
    pub fn new(stream_id: u64, current: Option<u32>, mut keys: Vec<(u32, DataKey)>) -> StreamKeys {
        keys.sort_by_key(|(e, _)| *e);
        assert!(
            current.is_none_or(|c| keys.iter().any(|(e, _)| *e == c)),
            "the current epoch has a key"
        );
        StreamKeys {
            stream_id,
            current,
            keys,
        }
    }

    pub fn epochs(&self) -> Vec<u32> {
        self.keys.iter().map(|(e, _)| *e).collect()
    }

    pub fn get(&self, epoch: u32) -> Option<&DataKey> {
        self.keys
            .binary_search_by_key(&epoch, |(e, _)| *e)
            .ok()
            .map(|i| &self.keys[i].1)
    }

    /// The epoch and key new batches are sealed under, if encryption is on.
    pub fn sealing(&self) -> Option<(u32, &DataKey)> {
        let c = self.current?;
        Some((c, self.get(c).expect("checked in new")))
    }
}

/// Opens every sealed batch of `bytes` (concatenated stored batches, each whole and
/// CRC-verified by the store) in place, moving the plaintext batches together; batches
/// in clear are kept as they are. Fails on the first batch that does not open (its
/// epoch's key is unknown, or the tag check fails): nothing of the read is served.
pub fn open_batches(
    keys: Option<&StreamKeys>,
    ctx: BatchContext,
    bytes: &mut Vec<u8>,
) -> Result<(), CryptoError> {
    let (mut read, mut write) = (0usize, 0usize);
    while bytes.len() - read >= BATCH_HEADER_LEN {
        let len = u32_at(bytes, read + BATCH_LEN_AT) as usize;
        if len < BATCH_HEADER_LEN || read + len > bytes.len() {
            return Err(CryptoError::SealedLength {
                base_seq: u64_at(bytes, read + BASE_SEQ_AT),
                declared: len,
                actual: bytes.len() - read,
            });
        }
        let out_len = if is_encrypted(&bytes[read..]) {
            let epoch = sealed_epoch(&bytes[read..]);
            let key = keys.and_then(|k| k.get(epoch)).ok_or_else(|| {
                CryptoError::Malformed(format!(
                    "batch at sequence {} is sealed under key epoch {epoch}, which this stream does not have",
                    u64_at(bytes, read + BASE_SEQ_AT)
                ))
            })?;
            open_batch(key, ctx, &mut bytes[read..read + len])?
        } else {
            len
        };
        if write != read {
            bytes.copy_within(read..read + out_len, write);
        }
        write += out_len;
        read += len;
    }
    if read != bytes.len() {
        return Err(CryptoError::SealedLength {
            base_seq: 0,
            declared: 0,
            actual: bytes.len() - read,
        });
    }
    bytes.truncate(write);
    Ok(())
}
