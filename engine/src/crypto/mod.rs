//! Encryption at rest: the pure, I/O-free core of envelope encryption (issue 10). Owns
//! master keys (`keys`: `KeyProvider`, `FileKeyProvider`), data keys and their wrapped form
//! (`envelope`), and the sealing of a stored batch's records (`records`). No async, no
//! shared state: every function runs on the caller's core; `FileKeyProvider::load` is the
//! only one that touches a file (blocking, at startup or on a blocking thread).
//!
//! # Envelope
//! A stream with encryption has one *data key* per *key epoch* (AES-256, random). The data
//! key is stored only wrapped (AES-256-GCM under a *master key* from the `KeyProvider`, AAD
//! = `key_aad(stream_id, epoch)`), so the data directory never holds a usable key, and a
//! master-key rotation re-wraps 48 bytes per epoch instead of re-encrypting data. Batches
//! are sealed with the data key; the header stays in clear (the store indexes, recovers
//! and trims by it) but is authenticated, and the CRCs in it stay over the plaintext, so a
//! client's end-to-end check is unchanged.
//!
//! # Wiring plan (next session)
//! **Catalog** (`catalog.rs`): the stream entry gains `encryption: Option<StreamEncryption>`
//! with `algorithm` (AES-256-GCM, the only one) and `keys: Vec<(epoch u32, WrappedKey
//! bytes)>`, the last being current. No per-shard "encrypted from seq" is needed: the
//! header flag says it per batch and the extent header names the epoch (below). The catalog is persisted atomically already, so a new epoch (a new data
//! key) is durable before any batch uses it. Epochs change when a stream's extents under the
//! current one reach a proposed `EXTENTS_PER_EPOCH_MAX` (2^16: bounds the chance two extents under one
//! key draw the same 64-bit segment nonce to below 2^-33) and on request.
//!
//! **Which key sealed a batch**: the header has no room for an epoch, and the batch nonce
//! must stay unique per key, so the epoch is a property of the *extent*: the extent header
//! (`layout.rs`, bytes 64.. of its first block are zero today) gets `key_epoch u32` and a
//! flag, written by `ShardLog::open_extent`, carried by the journal's `Roll` entry (its body
//! grows by a u32; a layout version bump) and by the manifest's extent record. All batches
//! of an extent use its epoch's key, so a reader resolves the key once per extent read.
//!
//! **Marking a batch**: `flags` bit 0 (`FLAG_ENCRYPTED`) in the batch header; producers must
//! send 0 there (`check_producer_batch` refuses other flags), so only the store sets it.
//! `batch_len` grows by the 16-byte tag. The extent's space accounting (`needs_roll`,
//! `roll_order`, `staging_room`, `round_bytes`) uses the stored length `len + 16`.
//!
//! **Write path** (`store/mod.rs` `Store::stage`, `store/shard.rs` `ShardLog::stage`):
//! `ShardLog::stage` copies the batch into staging as today, then `mark_encrypted` on the
//! header, `batch::stamp` (seals the header CRC), `encrypt_records_detached` on the records
//! in the staging slice and the tag written after them: no extra copy, one AES-GCM pass
//! (about 1-2 GB/s per core with AES-NI, against the ~4 GB/s CRC we already pay). The
//! stamped, sealed bytes are what `staged_bytes` returns, so the journal entry, the direct
//! in-place write and write-behind (`behind.rs`) all carry ciphertext unchanged; nothing
//! there changes. The per-stream `DataKey` lives in `ShardLog` (an `Rc<DataKey>` per epoch)
//! and is handed in by `Store::open` / `add_shard` from the catalog.
//!
//! **Read path** (`Store::read`, `Store::read_extent`, `shard::parse_batches_until_damage`):
//! header checks (`check_stored_header`) stay as they are on the clear header. Where
//! `verify_stored` runs today on a batch that will be served, an encrypted batch is first
//! `decrypt_batch`ed (tag check: wrong key or any altered byte is `CryptoError::Decrypt`,
//! surfaced as a damaged batch and never served), then `verify_stored` checks the plaintext
//! CRCs as today. The batch served is byte-for-byte the unencrypted one. In-memory staging
//! and pieces hold ciphertext, so a read of the tip decrypts too (one copy into the
//! response buffer, which the read path makes anyway). `seq_at_timestamp` and index
//! lookups need only clear headers.
//!
//! **Recovery** (`recover.rs` `replay_batch`, `replay_direct`, `verify_span`): a torn tail
//! must be told from a whole batch. Proposal: decrypt (tag check) in `verify_span` and
//! `replay_batch` where they call `verify_stored` today: replay work is bounded by the
//! journal since the checkpoint, and journal rounds already carry an outer payload CRC, so
//! torn rounds are found before any decryption; only direct ranges pay the AES pass, and
//! the GCM tag is a stronger check than an outer CRC would be (no format change needed).
//! Nonce reuse after a crash is the one real hazard: a batch staged but never acknowledged
//! may be on disk (journal tail, volume) when recovery cuts it, and the next append would
//! reuse its (segment nonce, base_seq) with different plaintext. So for an encrypted shard
//! recovery must not continue the extent that was active at the crash: `replay_tail` /
//! `load_tail` marks the shard `roll_before_append`, and `ShardLog::needs_roll` honours it,
//! so the first append after a reopen rolls to a new extent with a fresh segment nonce.
//!
//! **Retention** frees whole extents: unchanged. Dropping the last extent of an epoch lets
//! the catalog drop that epoch's wrapped key (crypto-shredding of expired data).
//!
//! **`stream create --encryption aes-256-gcm`**: the control plane (core 0) calls
//! `DataKey::generate`, `wrap` under `provider.current()` with `key_aad(stream_id, 0)`, and
//! commits the catalog entry before the shards are placed. **Enabling on a live stream**:
//! the same, epoch 0, committed to the catalog; then each shard's store is told (the
//! runtime's per-core channel) and forces a roll, so the new extent (and everything after)
//! is encrypted; older extents stay plaintext until retention removes them (new data only,
//! as the issue asks). Disabling would be the same roll without a key.
//!
//! **Master-key rotation without downtime**: append a line to the key file and `reload`
//! (SIGHUP or `spate keys reload`). New epochs are wrapped under the new current key; a
//! background task on core 0 re-wraps existing epochs' data keys (`unwrap` with the old,
//! `wrap` with the new, one catalog commit), after which the old master key may be removed
//! from the file. Unwrap always uses the key a `WrappedKey` names, so reads never stop.
//! Data keys are unwrapped at `Store::open`/`add_shard` and held in memory; the key file is
//! not read on the hot path.

mod envelope;
mod keys;
mod records;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use envelope::{key_aad, DataKey, WrappedKey, WRAPPED_KEY_BYTES};
pub use keys::{FileKeyProvider, KeyId, KeyProvider, MasterKey};
pub use records::{
    batch_nonce, decrypt_batch, decrypt_records, decrypt_records_in_place, encrypt_batch,
    encrypt_records, encrypt_records_detached, is_encrypted, mark_encrypted, unmark_encrypted,
    FLAG_ENCRYPTED,
};

/// AES-256 key length.
pub const KEY_BYTES: usize = 32;
/// AES-GCM nonce length.
pub const NONCE_BYTES: usize = 12;
/// AES-GCM tag length: what encryption adds to a stored batch.
pub const TAG_BYTES: usize = 16;

/// Why a key could not be loaded, a data key unwrapped or a batch decrypted. Authentication
/// failures never come with data: nothing undecryptable is returned.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("key file {}: {source}", path.display())]
    KeyFileIo {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "key file {}: mode {mode:o} lets group or others read it; chmod 600 it",
        path.display()
    )]
    KeyFilePermissions { path: PathBuf, mode: u32 },
    #[error("key file {}{}: {why}", path.display(), line.map(|l| format!(" line {l}")).unwrap_or_default())]
    KeyFile {
        path: PathBuf,
        line: Option<usize>,
        why: String,
    },
    #[error("master key {0} is not known to the key provider")]
    UnknownMasterKey(KeyId),
    #[error("data key does not unwrap under master key {master_id}: wrong master key, or the wrapped key or its context was altered")]
    Unwrap { master_id: KeyId },
    #[error(
        "batch at sequence {base_seq} does not decrypt: wrong data key, or the batch was altered"
    )]
    Decrypt { base_seq: u64 },
    #[error("batch at sequence {base_seq} is not marked encrypted")]
    NotEncrypted { base_seq: u64 },
    #[error("encrypted batch at sequence {base_seq}: length field {declared}, {actual} bytes")]
    SealedLength {
        base_seq: u64,
        declared: usize,
        actual: usize,
    },
    #[error("malformed key material: {0}")]
    Malformed(String),
    #[error("the system random number generator failed")]
    Random,
}

/// Overwrites secret bytes with zeros in a way the optimizer may not remove.
pub(crate) fn zeroize(bytes: &mut [u8]) {
    for b in bytes.iter_mut() {
        // SAFETY: `b` is a valid, aligned, exclusive reference to a u8.
        unsafe { std::ptr::write_volatile(b, 0) };
    }
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
}
