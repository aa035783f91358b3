//! The engine's side of encryption at rest: the master keys (`crypto::FileKeyProvider`) and
//! the streams' unwrapped data keys. Owned by core 0 (the control plane), which hands each
//! shard's core an `Arc<StreamKeys>` with the shard's spec (`runtime::ShardSpecMsg`); the
//! hot path only ever sees those. Made at start (`Engine::start`), where a wrong or missing
//! master key stops the engine with an error naming the stream, before anything is served.
//!
//! Key epochs: a stream gets a new data key (a new epoch, wrapped under the current master
//! key and committed to the catalog before any batch uses it) when encryption starts, at
//! every start of the engine (a batch cut by a crash may be on disk under a nonce the next
//! batch would reuse: see `crypto::records`), and at a master-key rotation. Reads open each
//! batch under the epoch it names, so old data stays readable after every change.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::catalog::{KeyEpoch, StreamEncryption, StreamEntry};
use crate::crypto::{key_aad, DataKey, FileKeyProvider, KeyProvider, StreamKeys, WrappedKey};
use crate::error::EngineError;

pub struct Keyring {
    provider: Option<FileKeyProvider>,
    /// Unwrapped keys by stream incarnation (re-made when its epochs change).
    cache: HashMap<u64, Arc<StreamKeys>>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("key_file", &self.provider.as_ref().map(|p| p.path()))
            .field("streams", &self.cache.len())
            .finish()
    }
}

fn unavailable(e: impl std::fmt::Display) -> EngineError {
    EngineError::KeyUnavailable(e.to_string())
}

impl Keyring {
    /// Loads the key file, if one is configured (blocking: at start).
    pub fn open(key_file: Option<&Path>) -> Result<Keyring, EngineError> {
        let provider = match key_file {
            Some(p) => Some(FileKeyProvider::load(p).map_err(unavailable)?),
            None => None,
        };
        Ok(Keyring {
            provider,
            cache: HashMap::new(),
        })
    }

    fn provider(&self) -> Result<&FileKeyProvider, EngineError> {
        self.provider.as_ref().ok_or_else(|| {
            EngineError::KeyUnavailable(
                "encryption at rest needs master keys: start the server with --key-file (key_file in the config)".into(),
            )
        })
    }

    /// The id of the master key new data keys are wrapped under.
    pub fn current_master(&self) -> Result<u32, EngineError> {
        Ok(self.provider()?.current().map_err(unavailable)?.0 .0)
    }

    /// The stream's data keys, unwrapped (`None`: the stream was never encrypted). Fails
    /// when a key cannot be unwrapped: no key file, a master key missing from it, or a
    /// different key under the same id (the wrap's tag check fails).
    pub fn keys(&mut self, entry: &StreamEntry) -> Result<Option<Arc<StreamKeys>>, EngineError> {
        let Some(enc) = &entry.encryption else {
            self.cache.remove(&entry.stream_id);
            return Ok(None);
        };
        let epochs: Vec<u32> = enc.epochs.iter().map(|e| e.epoch).collect();
        if let Some(k) = self.cache.get(&entry.stream_id) {
            if k.current == enc.current && k.epochs() == epochs {
                return Ok(Some(k.clone()));
            }
        }
        let provider = self.provider().map_err(|e| match e {
            EngineError::KeyUnavailable(why) => {
                EngineError::KeyUnavailable(format!("stream {} is encrypted: {why}", entry.name))
            }
            other => other,
        })?;
        let mut keys = Vec::with_capacity(enc.epochs.len());
        for e in &enc.epochs {
            let wrapped = WrappedKey::decode(&e.wrapped).map_err(|why| {
                EngineError::KeyUnavailable(format!(
                    "stream {} key epoch {}: {why}",
                    entry.name, e.epoch
                ))
            })?;
            let key = wrapped
                .unwrap(provider, &key_aad(entry.stream_id, e.epoch))
                .map_err(|why| {
                    EngineError::KeyUnavailable(format!(
                        "stream {} key epoch {}: {why}",
                        entry.name, e.epoch
                    ))
                })?;
            keys.push((e.epoch, key));
        }
        let k = Arc::new(StreamKeys::new(entry.stream_id, enc.current, keys));
        self.cache.insert(entry.stream_id, k.clone());
        Ok(Some(k))
    }

    /// Drops a deleted stream's unwrapped keys.
    pub fn forget(&mut self, stream_id: u64) {
        self.cache.remove(&stream_id);
    }

    /// The stream's encryption with a new data key, wrapped under the current master key,
    /// as the current epoch (the caller commits it to the catalog before any batch may use
    /// it). Starts encryption on a stream that has none.
    pub fn with_new_epoch(
        &self,
        stream_id: u64,
        enc: Option<&StreamEncryption>,
        now_ms: i64,
    ) -> Result<StreamEncryption, EngineError> {
        let provider = self.provider()?;
        let (master_id, master) = provider.current().map_err(unavailable)?;
        let mut next = enc.cloned().unwrap_or(StreamEncryption {
            current: None,
            epochs: Vec::new(),
        });
        let epoch = next.next_epoch();
        let key = DataKey::generate().map_err(unavailable)?;
        let wrapped = key
            .wrap(&master, master_id, &key_aad(stream_id, epoch))
            .map_err(unavailable)?;
        next.epochs.push(KeyEpoch {
            epoch,
            wrapped: wrapped.encode().to_vec(),
            created_ms: now_ms,
        });
        next.current = Some(epoch);
        Ok(next)
    }

    /// The stream's encryption with every data key re-wrapped under the current master key
    /// (after a rotation, so that older master keys can be retired). The data keys do not
    /// change, so no batch needs to be rewritten.
    pub fn rewrapped(
        &self,
        entry: &StreamEntry,
        keys: &StreamKeys,
    ) -> Result<Option<StreamEncryption>, EngineError> {
        let Some(enc) = &entry.encryption else {
            return Ok(None);
        };
        let provider = self.provider()?;
        let (master_id, master) = provider.current().map_err(unavailable)?;
        let mut next = enc.clone();
        for e in &mut next.epochs {
            let key = keys.get(e.epoch).ok_or_else(|| {
                EngineError::KeyUnavailable(format!(
                    "stream {} key epoch {} is not loaded",
                    entry.name, e.epoch
                ))
            })?;
            let wrapped = key
                .wrap(&master, master_id, &key_aad(entry.stream_id, e.epoch))
                .map_err(unavailable)?;
            e.wrapped = wrapped.encode().to_vec();
        }
        Ok(Some(next))
    }

    /// The key file, to reload it on a blocking thread (`replace_provider`).
    pub fn key_file(&self) -> Option<std::path::PathBuf> {
        self.provider.as_ref().map(|p| p.path().to_path_buf())
    }

    /// Replaces the master keys with ones loaded elsewhere (the key file re-read off the
    /// executor thread). Every master key in `in_use` (those some stream's data keys are
    /// wrapped under) must still be there with the same bytes; others may go (retired
    /// after a rotation re-wrapped everything under a newer one).
    pub fn replace_provider(
        &mut self,
        next: FileKeyProvider,
        in_use: &std::collections::BTreeSet<u32>,
    ) -> Result<u32, EngineError> {
        if let Some(old) = &self.provider {
            for &id in in_use {
                let id = crate::crypto::KeyId(id);
                match (old.get(id), next.get(id)) {
                    (Ok(a), Ok(b)) if a == b => {}
                    (Err(_), _) => {}
                    _ => {
                        return Err(EngineError::KeyUnavailable(format!(
                            "key file {}: master key {id} was removed or changed while data keys are wrapped under it; put it back (a rotation re-wraps them, then it may go)",
                            next.path().display()
                        )))
                    }
                }
            }
        }
        self.provider = Some(next);
        self.current_master()
    }

    /// The master keys the streams' data keys are wrapped under.
    pub fn masters_in_use<'a>(
        streams: impl Iterator<Item = &'a StreamEntry>,
    ) -> std::collections::BTreeSet<u32> {
        streams
            .filter_map(|s| s.encryption.as_ref())
            .flat_map(|e| &e.epochs)
            .filter_map(|k| WrappedKey::decode(&k.wrapped).ok())
            .map(|w| w.master_id.0)
            .collect()
    }

    /// The master key id the stream's current data key is wrapped under, for describe.
    pub fn master_of(enc: &StreamEncryption) -> Option<u32> {
        let c = enc.current?;
        let e = enc.epochs.iter().find(|e| e.epoch == c)?;
        WrappedKey::decode(&e.wrapped).ok().map(|w| w.master_id.0)
    }
}
