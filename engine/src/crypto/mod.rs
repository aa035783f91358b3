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
//! and trims by it) but is authenticated, and the producer's CRC over the plaintext is
//! kept in it and restored when a batch is opened, so a client's end-to-end check is
//! unchanged (see `records` for the layout).
//!
//! # Where it is wired
//! - **Catalog** (`catalog::StreamEncryption`): per stream, the current key epoch (`None`
//!   once encryption is stopped) and every epoch's wrapped data key. Written atomically
//!   before any batch is sealed under a new epoch.
//! - **Keyring** (`crate::keyring`, core 0): the key provider and the unwrapped keys; at
//!   start it checks every stream's keys unwrap (a wrong or missing master key stops the
//!   engine, naming the stream) and gives each encrypting stream a new epoch for the run
//!   (the nonce-reuse hazard after a crash: see `records`). Start/stop encryption and a
//!   master-key rotation go through it; shards get an `Arc<StreamKeys>` with their spec.
//! - **Store** (`store::shard::ShardLog::stage`): a batch is copied into staging, stamped,
//!   then sealed in place (`seal_batch`): the journal, in-place writes and write-behind
//!   carry ciphertext only. The stored batch's CRCs cover what is stored, so recovery,
//!   replay and damage checks need no key. `Store::read` opens sealed batches
//!   (`open_batches`) after its CRC checks: a tag that does not check is `Corrupt`, never
//!   served; what a reader receives is byte for byte the producer's batch, stamped.
//! - **Retention** frees whole extents as before; an epoch's wrapped key stays in the
//!   catalog (76 bytes) after its data has expired.

mod envelope;
mod keys;
mod records;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use envelope::{key_aad, DataKey, WrappedKey, WRAPPED_KEY_BYTES};
pub use keys::{FileKeyProvider, KeyId, KeyProvider, MasterKey};
pub use records::{
    is_encrypted, open_batch, open_batches, seal_batch, sealed_epoch, BatchContext, StreamKeys,
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
