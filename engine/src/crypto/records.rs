//! Encryption of a stored batch's records section under a data key.
//!
//! An encrypted stored batch (see `protocol::batch` for the header):
//! ```text
//!  0     64     header, in clear: flags bit 0 (FLAG_ENCRYPTED) set, batch_len = 64 + n + 16,
//!               header_crc over bytes 8..64 as always, records_crc over the *plaintext*
//!  64    n      records, AES-256-GCM ciphertext (same length as the plaintext)
//!  64+n  16     GCM tag over (AAD = the 64 header bytes, ciphertext)
//! ```
//! Nonce (12 bytes) = `segment_nonce` (header bytes 48..56) ‖ low 32 bits of `base_seq`
//! (bytes 24..28). Why this is unique per (data key, batch): a stored batch is stamped with
//! the nonce of the extent that holds it and with its sequence number; within one extent
//! sequence numbers strictly increase and an extent holds fewer than 2^32 records (it is at
//! most `extent_bytes_max`, far below 2^32 bytes, and a record takes at least 3), so the low
//! 32 bits never repeat inside an extent. Across extents the 64-bit segment nonces differ
//! (random, drawn per extent; the wiring bounds the extents per key epoch so that a
//! collision is below 2^-32, and recovery never appends to an extent opened before the
//! crash: see the module doc of `crypto`). Replay copies a sealed batch verbatim, which
//! re-uses a nonce only with the identical plaintext: no leak.
//!
//! AAD = all 64 header bytes as stored. Nothing in the header is rewritten after staging
//! (the store stamps base_seq, timestamps and segment nonce in the staging buffer, then the
//! bytes travel unchanged to the journal, the extent and the reader), so all of it can be
//! bound: a batch whose sequence number, timestamps, length or CRCs were altered fails.

use ring::aead::{Aad, Nonce, Tag};

use spate_protocol::batch::BATCH_HEADER_LEN;

use super::envelope::DataKey;
use super::{CryptoError, NONCE_BYTES, TAG_BYTES};

/// Header `flags` bit set on a stored batch whose records are encrypted. Producers must
/// send 0 in `flags` (`check_producer_batch` refuses anything else), so only the store
/// sets it.
pub const FLAG_ENCRYPTED: u16 = 1;

const FLAGS_AT: usize = 14;
const BATCH_LEN_AT: usize = 8;

fn flags(header: &[u8; BATCH_HEADER_LEN]) -> u16 {
    u16::from_le_bytes([header[FLAGS_AT], header[FLAGS_AT + 1]])
}

fn batch_len(header: &[u8; BATCH_HEADER_LEN]) -> usize {
    u32::from_le_bytes(
        header[BATCH_LEN_AT..BATCH_LEN_AT + 4]
            .try_into()
            .expect("4"),
    ) as usize
}

fn base_seq(header: &[u8; BATCH_HEADER_LEN]) -> u64 {
    u64::from_le_bytes(header[24..32].try_into().expect("8 bytes"))
}

fn reseal_header_crc(header: &mut [u8; BATCH_HEADER_LEN]) {
    let crc = crc32c::crc32c(&header[8..BATCH_HEADER_LEN]);
    header[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// The GCM nonce of the batch with this (stamped) header: segment nonce ‖ base_seq's low
/// 32 bits, all little-endian. See the module doc for why it is unique.
pub fn batch_nonce(header: &[u8; BATCH_HEADER_LEN]) -> [u8; NONCE_BYTES] {
    let mut n = [0u8; NONCE_BYTES];
    n[..8].copy_from_slice(&header[48..56]);
    n[8..].copy_from_slice(&header[24..28]);
    n
}

/// Turns a plaintext header into the header of its encrypted form: sets `FLAG_ENCRYPTED`,
/// grows `batch_len` by the tag and re-seals the header CRC. Do it before (or after)
/// `batch::stamp`, and before `encrypt_records`, whose AAD is the final header.
pub fn mark_encrypted(header: &mut [u8; BATCH_HEADER_LEN]) {
    let f = flags(header);
    assert_eq!(f & FLAG_ENCRYPTED, 0, "batch already marked encrypted");
    header[FLAGS_AT..FLAGS_AT + 2].copy_from_slice(&(f | FLAG_ENCRYPTED).to_le_bytes());
    let len = batch_len(header) + TAG_BYTES;
    header[BATCH_LEN_AT..BATCH_LEN_AT + 4].copy_from_slice(&(len as u32).to_le_bytes());
    reseal_header_crc(header);
}

/// The reverse of `mark_encrypted`, after a successful decryption: the header a client
/// would have seen for the plaintext batch (flag clear, length without the tag, CRC
/// re-sealed), so the batch served is byte-for-byte the unencrypted one.
pub fn unmark_encrypted(header: &mut [u8; BATCH_HEADER_LEN]) {
    let f = flags(header);
    assert_ne!(f & FLAG_ENCRYPTED, 0, "batch not marked encrypted");
    header[FLAGS_AT..FLAGS_AT + 2].copy_from_slice(&(f & !FLAG_ENCRYPTED).to_le_bytes());
    let len = batch_len(header) - TAG_BYTES;
    header[BATCH_LEN_AT..BATCH_LEN_AT + 4].copy_from_slice(&(len as u32).to_le_bytes());
    reseal_header_crc(header);
}

/// Whether a stored batch's header says its records are encrypted.
pub fn is_encrypted(header: &[u8; BATCH_HEADER_LEN]) -> bool {
    flags(header) & FLAG_ENCRYPTED != 0
}

/// Encrypts `records` in place and returns the tag, for a caller that writes it itself
/// (the store's staging buffer is a fixed slice). `header` is the final, stamped header
/// (`mark_encrypted` applied): trusted state, so a header that does not describe
/// `records` is a bug and panics.
pub fn encrypt_records_detached(
    key: &DataKey,
    header: &[u8; BATCH_HEADER_LEN],
    records: &mut [u8],
) -> [u8; TAG_BYTES] {
    assert!(is_encrypted(header), "header not marked encrypted");
    assert_eq!(
        batch_len(header),
        BATCH_HEADER_LEN + records.len() + TAG_BYTES,
        "header's batch_len does not cover records and tag"
    );
    let tag: Tag = key
        .aead()
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(batch_nonce(header)),
            Aad::from(&header[..]),
            records,
        )
        .expect("a batch is far below GCM's length limit");
    let mut out = [0u8; TAG_BYTES];
    out.copy_from_slice(tag.as_ref());
    out
}

/// Encrypts the records section in place and appends the 16-byte tag.
pub fn encrypt_records(key: &DataKey, header: &[u8; BATCH_HEADER_LEN], records: &mut Vec<u8>) {
    let tag = encrypt_records_detached(key, header, records);
    records.extend_from_slice(&tag);
}

/// Decrypts `sealed` (ciphertext then tag, as stored after `header`) in place; returns the
/// plaintext length (the records are `sealed[..len]`). Untrusted input: a header that is not
/// marked encrypted or does not match the length, a wrong key, or any altered byte of the
/// header, ciphertext or tag is an error, and no plaintext is released: on a failed tag
/// check `ring` overwrites `sealed` (the ciphertext is gone too), so decrypt into the
/// buffer that would be served, never the only copy of stored bytes.
pub fn decrypt_records_in_place(
    key: &DataKey,
    header: &[u8; BATCH_HEADER_LEN],
    sealed: &mut [u8],
) -> Result<usize, CryptoError> {
    let seq = base_seq(header);
    if !is_encrypted(header) {
        return Err(CryptoError::NotEncrypted { base_seq: seq });
    }
    let declared = batch_len(header);
    if sealed.len() < TAG_BYTES || declared != BATCH_HEADER_LEN + sealed.len() {
        return Err(CryptoError::SealedLength {
            base_seq: seq,
            declared,
            actual: BATCH_HEADER_LEN + sealed.len(),
        });
    }
    let plain = key
        .aead()
        .open_in_place(
            Nonce::assume_unique_for_key(batch_nonce(header)),
            Aad::from(&header[..]),
            sealed,
        )
        .map_err(|_| CryptoError::Decrypt { base_seq: seq })?;
    Ok(plain.len())
}

/// Decrypts the records section in place and removes the tag.
pub fn decrypt_records(
    key: &DataKey,
    header: &[u8; BATCH_HEADER_LEN],
    records: &mut Vec<u8>,
) -> Result<(), CryptoError> {
    let len = decrypt_records_in_place(key, header, records)?;
    records.truncate(len);
    Ok(())
}

/// Whole-batch convenience: a stamped plaintext batch becomes its stored encrypted form
/// (header marked, records sealed, tag appended). The batch must be exactly `batch_len`
/// bytes (trusted state; panics otherwise).
pub fn encrypt_batch(key: &DataKey, batch: &mut Vec<u8>) {
    let mut header: [u8; BATCH_HEADER_LEN] = batch[..BATCH_HEADER_LEN].try_into().expect("64");
    assert_eq!(
        batch_len(&header),
        batch.len(),
        "batch_len is the batch's length"
    );
    mark_encrypted(&mut header);
    batch[..BATCH_HEADER_LEN].copy_from_slice(&header);
    let tag = encrypt_records_detached(key, &header, &mut batch[BATCH_HEADER_LEN..]);
    batch.extend_from_slice(&tag);
}

/// Whole-batch convenience for readers: a stored encrypted batch (untrusted bytes) becomes
/// the plaintext batch a client would have received from an unencrypted stream. The caller
/// then runs `batch::verify_stored` on it as today (the CRCs cover the plaintext).
pub fn decrypt_batch(key: &DataKey, batch: &mut Vec<u8>) -> Result<(), CryptoError> {
    if batch.len() < BATCH_HEADER_LEN {
        return Err(CryptoError::SealedLength {
            base_seq: 0,
            declared: 0,
            actual: batch.len(),
        });
    }
    let mut header: [u8; BATCH_HEADER_LEN] = batch[..BATCH_HEADER_LEN].try_into().expect("64");
    let len = decrypt_records_in_place(key, &header, &mut batch[BATCH_HEADER_LEN..])?;
    batch.truncate(BATCH_HEADER_LEN + len);
    unmark_encrypted(&mut header);
    batch[..BATCH_HEADER_LEN].copy_from_slice(&header);
    Ok(())
}
