//! Data keys and their wrapped (encrypted under a master key) form.
//!
//! Wrapped key, as stored in the catalog or a per-store key file (little-endian):
//! ```text
//!  0  4  magic        b"SPWK"
//!  4  2  version      1
//!  6  2  sealed_len   48 (32 key bytes + 16-byte GCM tag)
//!  8  4  master_id    the master key it is wrapped under
//! 12 12  nonce        random
//! 24 48  sealed       AES-256-GCM(master key, nonce, data key), tag appended
//! 72  4  crc          CRC32C of bytes 0..72 (tells a torn or rotten record from a wrong key)
//! ```
//! The wrap's AAD is `b"spate-wk1" | master_id (u32 LE) | caller AAD`, so neither the master
//! id in the record nor the caller's context (stream id, key epoch: `key_aad`) can be
//! changed without the unwrap failing.

use std::fmt;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::rand::{SecureRandom, SystemRandom};

use super::keys::{KeyId, KeyProvider, MasterKey};
use super::{zeroize, CryptoError, KEY_BYTES, NONCE_BYTES, TAG_BYTES};

const WRAPPED_MAGIC: [u8; 4] = *b"SPWK";
const WRAPPED_VERSION: u16 = 1;
const SEALED_BYTES: usize = KEY_BYTES + TAG_BYTES;
/// Length of an encoded `WrappedKey`.
pub const WRAPPED_KEY_BYTES: usize = 76;
const WRAP_AAD_PREFIX: &[u8] = b"spate-wk1";

/// The AAD that binds a wrapped data key to its stream and key epoch: a wrapped key copied
/// to another stream's (or epoch's) entry does not unwrap there.
pub fn key_aad(stream_id: u64, epoch: u32) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[..8].copy_from_slice(&stream_id.to_le_bytes());
    out[8..].copy_from_slice(&epoch.to_le_bytes());
    out
}

/// A 256-bit data key with its expanded AES key schedule, ready for batches. The raw bytes
/// are zeroed on drop; the schedule inside `ring` is not (ring offers no way to), which is
/// why a store holds one `DataKey` per key epoch and does not copy it around.
pub struct DataKey {
    bytes: [u8; KEY_BYTES],
    aead: LessSafeKey,
}

impl DataKey {
    /// A fresh random data key (from the operating system's CSPRNG).
    pub fn generate() -> Result<DataKey, CryptoError> {
        let mut bytes = [0u8; KEY_BYTES];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| CryptoError::Random)?;
        Ok(DataKey::from_bytes(bytes))
    }

    pub(crate) fn from_bytes(mut bytes: [u8; KEY_BYTES]) -> DataKey {
        let aead = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &bytes).expect("32-byte key"));
        let key = DataKey { bytes, aead };
        zeroize(&mut bytes);
        key
    }

    pub(crate) fn aead(&self) -> &LessSafeKey {
        &self.aead
    }

    /// Encrypts this key under `master` (named `master_id`) with a random nonce. `aad` is
    /// the context it belongs to (`key_aad(stream_id, epoch)`).
    pub fn wrap(
        &self,
        master: &MasterKey,
        master_id: KeyId,
        aad: &[u8],
    ) -> Result<WrappedKey, CryptoError> {
        let mut nonce = [0u8; NONCE_BYTES];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| CryptoError::Random)?;
        let mut sealed = self.bytes.to_vec();
        let tag = master_aead(master)
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(wrap_aad(master_id, aad)),
                &mut sealed,
            )
            .map_err(|_| CryptoError::Malformed("sealing a data key failed".into()))?;
        sealed.extend_from_slice(tag.as_ref());
        Ok(WrappedKey {
            master_id,
            nonce,
            ciphertext: sealed,
        })
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

impl Drop for DataKey {
    fn drop(&mut self) {
        zeroize(&mut self.bytes);
    }
}

fn master_aead(master: &MasterKey) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, master.bytes()).expect("32-byte key"))
}

fn wrap_aad(master_id: KeyId, aad: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(WRAP_AAD_PREFIX.len() + 4 + aad.len());
    out.extend_from_slice(WRAP_AAD_PREFIX);
    out.extend_from_slice(&master_id.0.to_le_bytes());
    out.extend_from_slice(aad);
    out
}

/// A data key encrypted under a master key: safe to store next to the data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKey {
    pub master_id: KeyId,
    pub nonce: [u8; NONCE_BYTES],
    /// The sealed key: 32 bytes then the 16-byte tag.
    pub ciphertext: Vec<u8>,
}

impl WrappedKey {
    /// Decrypts the data key with the master key it names, fetched from `provider`. Fails
    /// (never returns a wrong key) if the master key is unknown or different, or if the
    /// wrapped bytes or `aad` are not exactly those it was wrapped with.
    pub fn unwrap(&self, provider: &dyn KeyProvider, aad: &[u8]) -> Result<DataKey, CryptoError> {
        if self.ciphertext.len() != SEALED_BYTES {
            return Err(CryptoError::Malformed(format!(
                "wrapped key of {} bytes, expected {SEALED_BYTES}",
                self.ciphertext.len()
            )));
        }
        let master = provider.get(self.master_id)?;
        let mut buf = [0u8; SEALED_BYTES];
        buf.copy_from_slice(&self.ciphertext);
        let opened = master_aead(&master)
            .open_in_place(
                Nonce::assume_unique_for_key(self.nonce),
                Aad::from(wrap_aad(self.master_id, aad)),
                &mut buf,
            )
            .map_err(|_| CryptoError::Unwrap {
                master_id: self.master_id,
            })?;
        let mut key = [0u8; KEY_BYTES];
        key.copy_from_slice(opened);
        zeroize(&mut buf);
        Ok(DataKey::from_bytes(key))
    }

    /// The stored form (see the module doc).
    pub fn encode(&self) -> [u8; WRAPPED_KEY_BYTES] {
        assert_eq!(
            self.ciphertext.len(),
            SEALED_BYTES,
            "a wrapped key is 48 bytes"
        );
        let mut out = [0u8; WRAPPED_KEY_BYTES];
        out[0..4].copy_from_slice(&WRAPPED_MAGIC);
        out[4..6].copy_from_slice(&WRAPPED_VERSION.to_le_bytes());
        out[6..8].copy_from_slice(&(SEALED_BYTES as u16).to_le_bytes());
        out[8..12].copy_from_slice(&self.master_id.0.to_le_bytes());
        out[12..24].copy_from_slice(&self.nonce);
        out[24..72].copy_from_slice(&self.ciphertext);
        let crc = crc32c::crc32c(&out[..72]);
        out[72..76].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes untrusted bytes (exactly one encoded key); every defect is a typed error.
    pub fn decode(buf: &[u8]) -> Result<WrappedKey, CryptoError> {
        let bad = |why: String| Err(CryptoError::Malformed(why));
        if buf.len() != WRAPPED_KEY_BYTES {
            return bad(format!(
                "wrapped key of {} bytes, expected {WRAPPED_KEY_BYTES}",
                buf.len()
            ));
        }
        if buf[0..4] != WRAPPED_MAGIC {
            return bad("bad wrapped-key magic".into());
        }
        let version = u16::from_le_bytes([buf[4], buf[5]]);
        if version != WRAPPED_VERSION {
            return bad(format!("unsupported wrapped-key version {version}"));
        }
        let sealed_len = u16::from_le_bytes([buf[6], buf[7]]) as usize;
        if sealed_len != SEALED_BYTES {
            return bad(format!("wrapped key declares {sealed_len} sealed bytes"));
        }
        let crc = u32::from_le_bytes(buf[72..76].try_into().expect("4 bytes"));
        if crc32c::crc32c(&buf[..72]) != crc {
            return bad("wrapped-key checksum mismatch".into());
        }
        let master_id = KeyId(u32::from_le_bytes(buf[8..12].try_into().expect("4 bytes")));
        let mut nonce = [0u8; NONCE_BYTES];
        nonce.copy_from_slice(&buf[12..24]);
        Ok(WrappedKey {
            master_id,
            nonce,
            ciphertext: buf[24..72].to_vec(),
        })
    }
}

/// `aead::NONCE_LEN` and our constant must agree (checked at compile time).
const _: () = assert!(aead::NONCE_LEN == NONCE_BYTES);
