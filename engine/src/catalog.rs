//! The stream catalog: streams, their shards, hash-key ranges, placement on cores,
//! retention and limits. Owned by the control core (core index 0); persisted atomically.
//!
//! File `<data>/catalog.bin`:
//! ```text
//!   0   8  magic      b"SPCATLG1"
//!   8   4  crc        CRC32C of the payload
//!  12   4  length     payload bytes
//!  16   .. payload    rkyv archive of `CatalogData` (validated with bytecheck on load)
//! ```
//! rkyv fits here: the catalog is a nested structure read once at start and written on
//! every control operation, and rkyv validates the archive structurally on load, so a
//! damaged file is a clean error rather than a misread. Write: new file, fsync, rename,
//! fsync the directory — after a crash the catalog is the old or the new one, never a mix.

use std::path::{Path, PathBuf};

use spate_protocol::routing::even_range;

use crate::error::EngineError;
use crate::limits::Limits;
use crate::runtime::ShardIdent;

const CATALOG_MAGIC: [u8; 8] = *b"SPCATLG1";
const CATALOG_FILE: &str = "catalog.bin";

/// Stream names: 1–128 characters of `[A-Za-z0-9_.-]` (Kinesis' rule).
pub fn validate_stream_name(name: &str) -> Result<(), EngineError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(EngineError::InvalidArgument(format!(
            "stream name {name:?} must be 1-128 characters of A-Z a-z 0-9 _ . -"
        )))
    }
}

pub const MIN_RETENTION_HOURS: u32 = 1;
pub const MAX_RETENTION_HOURS: u32 = 8760;
pub const DEFAULT_RETENTION_HOURS: u32 = 24;
/// Shards one stream may have.
pub const MAX_SHARDS_PER_STREAM: u32 = 10_000;

/// Options of a new stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamOptions {
    pub shard_count: u32,
    pub retention_hours: u32,
    pub limits: Limits,
    pub max_record_data_bytes: u32,
}

impl StreamOptions {
    pub fn new(shard_count: u32) -> StreamOptions {
        StreamOptions {
            shard_count,
            retention_hours: DEFAULT_RETENTION_HOURS,
            limits: Limits::Kinesis,
            max_record_data_bytes: spate_protocol::batch::DEFAULT_MAX_RECORD_DATA_BYTES as u32,
        }
    }
}

pub use spate_protocol::stream::ShardState;

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ShardEntry {
    pub shard_id: u32,
    /// Inclusive hash-key range, big-endian bytes of a u128.
    pub hash_start: [u8; 16],
    pub hash_end: [u8; 16],
    pub parent: Option<u32>,
    pub state: ShardState,
    /// Executor index that owns the shard.
    pub core: u32,
}

impl StreamEntry {
    /// A shard's identity and the index of the core that owns it, among `cores` cores
    /// (placement is stable; with fewer cores than placed, shards wrap around).
    pub fn locate(&self, shard_id: u32, cores: usize) -> Result<(ShardIdent, usize), EngineError> {
        let sh = self
            .shard(shard_id)
            .ok_or_else(|| EngineError::UnknownShard {
                stream: self.name.clone(),
                shard: shard_id,
            })?;
        let ident = ShardIdent {
            stream_id: self.stream_id,
            shard_id,
        };
        Ok((ident, sh.core as usize % cores))
    }
}

impl StreamEntry {
    /// The shard with this id. Shards are kept in ascending id order (ids are handed out in
    /// order), so this is a binary search, not a scan: a put-batches request looks up
    /// thousands of shards of a stream of thousands.
    pub fn shard(&self, shard_id: u32) -> Option<&ShardEntry> {
        self.shards
            .binary_search_by_key(&shard_id, |s| s.shard_id)
            .ok()
            .map(|i| &self.shards[i])
    }
}

impl ShardEntry {
    pub fn hash_range(&self) -> (u128, u128) {
        (
            u128::from_be_bytes(self.hash_start),
            u128::from_be_bytes(self.hash_end),
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct StreamEntry {
    pub name: String,
    /// Incarnation id: a deleted and re-created stream gets a new one (and new directories).
    pub stream_id: u64,
    pub retention_hours: u32,
    pub limits: Limits,
    pub max_record_data_bytes: u32,
    pub created_ms: i64,
    pub shards: Vec<ShardEntry>,
}

#[derive(
    Debug, Clone, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct CatalogData {
    pub next_stream_id: u64,
    pub streams: Vec<StreamEntry>,
}

/// The catalog and where it lives.
#[derive(Debug)]
pub struct Catalog {
    path: PathBuf,
    pub data: CatalogData,
}

impl Catalog {
    /// Loads `<data_dir>/catalog.bin`, or starts an empty catalog if there is none.
    pub fn load(data_dir: &Path) -> Result<Catalog, EngineError> {
        let path = data_dir.join(CATALOG_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Catalog {
                    path,
                    data: CatalogData {
                        next_stream_id: 1,
                        streams: Vec::new(),
                    },
                })
            }
            Err(e) => {
                return Err(EngineError::Startup(format!(
                    "cannot read {}: {e}",
                    path.display()
                )))
            }
        };
        let data = decode(&bytes).map_err(|why| {
            EngineError::Startup(format!("catalog {} is damaged: {why}", path.display()))
        })?;
        Ok(Catalog { path, data })
    }

    /// Persists the catalog atomically. Blocking: from an executor, use `save_async`.
    pub fn save(&self) -> Result<(), EngineError> {
        crate::io::write_atomic(&self.path, &encode(&self.data))?;
        Ok(())
    }

    /// The catalog's path and encoded bytes, for an atomic write through the storage (off
    /// the executor thread in production).
    pub fn encoded(&self) -> (PathBuf, Vec<u8>) {
        (self.path.clone(), encode(&self.data))
    }

    /// The catalog of `data_dir` from the bytes of its file (`None`: there is none yet), as
    /// read through a storage (the simulated disk in tests).
    pub fn from_bytes(data_dir: &Path, bytes: Option<&[u8]>) -> Result<Catalog, EngineError> {
        let path = data_dir.join(CATALOG_FILE);
        let data = match bytes {
            None => CatalogData {
                next_stream_id: 1,
                streams: Vec::new(),
            },
            Some(b) => decode(b).map_err(|why| {
                EngineError::Startup(format!("catalog {} is damaged: {why}", path.display()))
            })?,
        };
        Ok(Catalog { path, data })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn stream(&self, name: &str) -> Option<&StreamEntry> {
        self.data.streams.iter().find(|s| s.name == name)
    }

    /// Adds a stream with `shard_count` shards splitting the hash-key space evenly, placed
    /// on the least-loaded of `cores` executors (ties to the lowest index).
    pub fn add_stream(
        &mut self,
        name: &str,
        opts: &StreamOptions,
        cores: u32,
        now_ms: i64,
    ) -> Result<&StreamEntry, EngineError> {
        validate_stream_name(name)?;
        if self.stream(name).is_some() {
            return Err(EngineError::StreamExists(name.to_owned()));
        }
        let StreamOptions {
            shard_count,
            retention_hours,
            limits,
            max_record_data_bytes,
        } = *opts;
        if shard_count == 0 || shard_count > MAX_SHARDS_PER_STREAM {
            return Err(EngineError::InvalidArgument(format!(
                "shard count {shard_count} must be 1..={MAX_SHARDS_PER_STREAM}"
            )));
        }
        validate_retention(retention_hours)?;
        let max_record = spate_protocol::batch::MAX_RECORD_DATA_BYTES_CEILING;
        if max_record_data_bytes == 0 || max_record_data_bytes as usize > max_record {
            return Err(EngineError::InvalidArgument(format!(
                "max record size {max_record_data_bytes} must be 1..={max_record}"
            )));
        }
        if !limits.is_valid() {
            return Err(EngineError::InvalidArgument(format!(
                "limits {limits:?}: each rate must be 1..={} per second",
                crate::limits::MAX_LIMIT_RATE
            )));
        }
        let mut load = vec![0u64; cores as usize];
        for s in &self.data.streams {
            for sh in &s.shards {
                load[(sh.core % cores) as usize] += 1;
            }
        }
        let mut shards = Vec::with_capacity(shard_count as usize);
        for i in 0..shard_count {
            let core = (0..cores)
                .min_by_key(|&c| (load[c as usize], c))
                .expect("at least one core");
            load[core as usize] += 1;
            let (start, end) = even_range(i, shard_count);
            shards.push(ShardEntry {
                shard_id: i,
                hash_start: start.to_be_bytes(),
                hash_end: end.to_be_bytes(),
                parent: None,
                state: ShardState::Open,
                core,
            });
        }
        let stream_id = self.data.next_stream_id;
        self.data.next_stream_id += 1;
        self.data.streams.push(StreamEntry {
            name: name.to_owned(),
            stream_id,
            retention_hours,
            limits,
            max_record_data_bytes,
            created_ms: now_ms,
            shards,
        });
        Ok(self.data.streams.last().expect("just pushed"))
    }

    pub fn remove_stream(&mut self, name: &str) -> Result<StreamEntry, EngineError> {
        let i = self
            .data
            .streams
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| EngineError::UnknownStream(name.to_owned()))?;
        Ok(self.data.streams.remove(i))
    }
}

pub fn validate_retention(hours: u32) -> Result<(), EngineError> {
    if (MIN_RETENTION_HOURS..=MAX_RETENTION_HOURS).contains(&hours) {
        Ok(())
    } else {
        Err(EngineError::InvalidArgument(format!(
            "retention {hours} h must be {MIN_RETENTION_HOURS}..={MAX_RETENTION_HOURS} hours"
        )))
    }
}

fn encode(data: &CatalogData) -> Vec<u8> {
    let payload = rkyv::to_bytes::<rkyv::rancor::Error>(data).expect("catalog serializes");
    let mut out = Vec::with_capacity(16 + payload.len());
    out.extend_from_slice(&CATALOG_MAGIC);
    out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

fn decode(bytes: &[u8]) -> Result<CatalogData, String> {
    if bytes.len() < 16 || bytes[..8] != CATALOG_MAGIC {
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
    rkyv::from_bytes::<CatalogData, rkyv::rancor::Error>(&aligned).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_survives_save_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Catalog::load(dir.path()).unwrap();
        c.add_stream(
            "clicks",
            &StreamOptions {
                shard_count: 4,
                retention_hours: 24,
                limits: Limits::Kinesis,
                max_record_data_bytes: 1 << 20,
            },
            2,
            1,
        )
        .unwrap();
        c.add_stream(
            "iot.v2",
            &StreamOptions {
                shard_count: 3,
                retention_hours: 48,
                limits: Limits::Off,
                max_record_data_bytes: 1 << 20,
            },
            2,
            2,
        )
        .unwrap();
        c.save().unwrap();
        let back = Catalog::load(dir.path()).unwrap();
        assert_eq!(back.data, c.data);
        let cores: Vec<u32> = back
            .data
            .streams
            .iter()
            .flat_map(|s| s.shards.iter().map(|sh| sh.core))
            .collect();
        assert_eq!(cores, vec![0, 1, 0, 1, 0, 1, 0]);
        assert_eq!(
            back.stream("clicks").unwrap().shards[3].hash_range().1,
            u128::MAX
        );
    }

    #[test]
    fn a_catalog_written_by_an_older_version_loads() {
        // Written by ca1cb5c (before limits became the protocol's type): `clicks`, 3 shards,
        // Kinesis limits, 24 h; `bench`, 1 shard, off, 48 h, 2 MiB records.
        let bytes = include_bytes!("../tests/fixtures/catalog-ca1cb5c.bin");
        let c = Catalog::from_bytes(Path::new("/x"), Some(bytes)).unwrap();
        let clicks = c.stream("clicks").unwrap();
        assert_eq!(clicks.shards.len(), 3);
        assert_eq!(clicks.limits, Limits::Kinesis);
        assert_eq!(clicks.retention_hours, 24);
        let bench = c.stream("bench").unwrap();
        assert_eq!(bench.shards.len(), 1);
        assert_eq!(bench.limits, Limits::Off);
        assert_eq!(bench.retention_hours, 48);
        assert_eq!(bench.max_record_data_bytes, 2 << 20);
        assert_eq!(c.data.next_stream_id, 3);
        // And it is written back byte for byte.
        assert_eq!(&encode(&c.data)[..], &bytes[..]);
    }

    #[test]
    fn damaged_catalog_is_a_clean_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Catalog::load(dir.path()).unwrap();
        c.add_stream(
            "s",
            &StreamOptions {
                shard_count: 1,
                retention_hours: 24,
                limits: Limits::Kinesis,
                max_record_data_bytes: 1 << 20,
            },
            1,
            0,
        )
        .unwrap();
        c.save().unwrap();
        let path = dir.path().join(CATALOG_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            Catalog::load(dir.path()),
            Err(EngineError::Startup(_))
        ));
    }

    #[test]
    fn validation() {
        let mut c = Catalog {
            path: PathBuf::from("/nonexistent"),
            data: CatalogData::default(),
        };
        assert!(c
            .add_stream(
                "bad name",
                &StreamOptions {
                    shard_count: 1,
                    retention_hours: 24,
                    limits: Limits::Off,
                    max_record_data_bytes: 1
                },
                1,
                0
            )
            .is_err());
        assert!(c
            .add_stream(
                "ok",
                &StreamOptions {
                    shard_count: 0,
                    retention_hours: 24,
                    limits: Limits::Off,
                    max_record_data_bytes: 1
                },
                1,
                0
            )
            .is_err());
        assert!(c
            .add_stream(
                "ok",
                &StreamOptions {
                    shard_count: 1,
                    retention_hours: 0,
                    limits: Limits::Off,
                    max_record_data_bytes: 1
                },
                1,
                0
            )
            .is_err());
        assert!(c
            .add_stream(
                "ok",
                &StreamOptions {
                    shard_count: 1,
                    retention_hours: 8761,
                    limits: Limits::Off,
                    max_record_data_bytes: 1
                },
                1,
                0
            )
            .is_err());
        let extreme = Limits::Custom {
            write_bytes_per_s: u64::MAX,
            write_records_per_s: 1,
            read_bytes_per_s: 1,
        };
        let err = c
            .add_stream(
                "ok",
                &StreamOptions {
                    shard_count: 1,
                    retention_hours: 24,
                    limits: extreme,
                    max_record_data_bytes: 1,
                },
                1,
                0,
            )
            .unwrap_err();
        assert!(matches!(err, EngineError::InvalidArgument(_)), "{err}");
        c.add_stream(
            "ok",
            &StreamOptions {
                shard_count: 1,
                retention_hours: 8760,
                limits: Limits::Off,
                max_record_data_bytes: 1,
            },
            1,
            0,
        )
        .unwrap();
        assert!(matches!(
            c.add_stream(
                "ok",
                &StreamOptions {
                    shard_count: 1,
                    retention_hours: 1,
                    limits: Limits::Off,
                    max_record_data_bytes: 1
                },
                1,
                0
            ),
            Err(EngineError::StreamExists(_))
        ));
    }
}
