//! The stream catalog: streams, their shards, hash-key ranges, placement on cores,
//! retention and limits. Owned by the control core (core index 0); persisted atomically.
//!
//! File `<data>/catalog.bin`:
//! ```text
//!   0   8  magic      b"SPCATLG3" (b"SPCATLG2": before encryption at rest, b"SPCATLG1":
//!                     before resharding; both still read)
//!   8   4  crc        CRC32C of the payload
//!  12   4  length     payload bytes
//!  16   .. payload    rkyv archive of `CatalogData` (validated with bytecheck on load)
//! ```
//! rkyv fits here: the catalog is a nested structure read once at start and written on
//! every control operation, and rkyv validates the archive structurally on load, so a
//! damaged file is a clean error rather than a misread. Write: new file, fsync, rename,
//! fsync the directory — after a crash the catalog is the old or the new one, never a mix.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use spate_protocol::routing::even_range;

use crate::error::EngineError;
use crate::limits::Limits;
use crate::runtime::ShardIdent;

const CATALOG_MAGIC: [u8; 8] = *b"SPCATLG3";
const CATALOG_MAGIC_V2: [u8; 8] = *b"SPCATLG2";
const CATALOG_MAGIC_V1: [u8; 8] = *b"SPCATLG1";
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
    /// Encryption at rest (AES-256-GCM under a data key wrapped by the master key).
    pub encryption: bool,
}

impl StreamOptions {
    pub fn new(shard_count: u32) -> StreamOptions {
        StreamOptions {
            shard_count,
            retention_hours: DEFAULT_RETENTION_HOURS,
            limits: Limits::Kinesis,
            max_record_data_bytes: spate_protocol::batch::DEFAULT_MAX_RECORD_DATA_BYTES as u32,
            encryption: false,
        }
    }
}

pub use spate_protocol::stream::{CapacityMode, ShardState};

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ShardEntry {
    pub shard_id: u32,
    /// Inclusive hash-key range, big-endian bytes of a u128.
    pub hash_start: [u8; 16],
    pub hash_end: [u8; 16],
    /// The shard this one was split from, or the first of the two it was merged from.
    pub parent: Option<u32>,
    /// The second parent of a merge.
    pub adjacent_parent: Option<u32>,
    pub state: ShardState,
    /// Executor index that owns the shard.
    pub core: u32,
    /// Closed shards: one past the last sequence number the shard holds (its records end
    /// there; readers move on to the children).
    pub ending_seq: Option<u64>,
    /// Closed shards: when (ms since the epoch). The shard leaves the catalog once its last
    /// record has left the retention window and it has been closed for a whole window.
    pub closed_ms: i64,
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
    /// order from 0), so until a closed shard's records have all expired and it leaves the
    /// list, shard `n` is at index `n`: one look; otherwise a binary search, not a scan. A
    /// put-batches request looks up thousands of shards of a stream of thousands.
    pub fn shard(&self, shard_id: u32) -> Option<&ShardEntry> {
        if let Some(s) = self.shards.get(shard_id as usize) {
            if s.shard_id == shard_id {
                return Some(s);
            }
        }
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
    /// Open and closed shards, in ascending id order.
    pub shards: Vec<ShardEntry>,
    pub mode: CapacityMode,
    /// Raised by every split, merge and scale.
    pub map_version: u64,
    /// The id the next new shard gets.
    pub next_shard_id: u32,
    /// Per-shard metrics exported for this stream (Kinesis' enhanced shard-level metrics).
    pub shard_level_metrics: bool,
    /// On-demand: the highest write rate seen (bytes per second) and when; capacity goes
    /// up to twice it.
    pub peak_write_bytes_per_s: u64,
    pub peak_at_ms: i64,
    /// The last on-demand scaling decision: when, and what and why, for describe.
    pub last_scaling: Option<(i64, String)>,
    /// On-demand: the stream's write-capacity ceiling in MiB/s (0: the node's
    /// `on_demand_max_write_mib_per_s`).
    pub max_write_mib_per_s: u32,
    /// Encryption at rest: the stream's data keys, wrapped (`None`: never encrypted).
    pub encryption: Option<StreamEncryption>,
}

/// A stream's data keys, one per key epoch, each wrapped under a master key
/// (`crate::crypto`, envelope encryption). The catalog is written atomically before any
/// batch is sealed under a new epoch, so every sealed batch's key is in it.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct StreamEncryption {
    /// The epoch new batches are sealed under; `None`: encryption was stopped, new batches
    /// are stored in clear and the epochs stay for the batches sealed before.
    pub current: Option<u32>,
    /// Oldest first.
    pub epochs: Vec<KeyEpoch>,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct KeyEpoch {
    pub epoch: u32,
    /// `crypto::WrappedKey::encode`, AAD `crypto::key_aad(stream_id, epoch)`.
    pub wrapped: Vec<u8>,
    pub created_ms: i64,
}

impl StreamEncryption {
    /// Whether new batches are sealed.
    pub fn is_on(&self) -> bool {
        self.current.is_some()
    }

    /// The epoch a new data key gets.
    pub fn next_epoch(&self) -> u32 {
        self.epochs.last().map_or(0, |e| e.epoch + 1)
    }
}

impl StreamEntry {
    /// The open shards, in hash-key order.
    pub fn open_shards(&self) -> Vec<&ShardEntry> {
        let mut open: Vec<&ShardEntry> = self
            .shards
            .iter()
            .filter(|s| s.state == ShardState::Open)
            .collect();
        open.sort_by_key(|s| s.hash_range().0);
        open
    }

    /// The shards that took over `shard_id`'s keys (split or merge children).
    pub fn children_of(&self, shard_id: u32) -> Vec<u32> {
        self.shards
            .iter()
            .filter(|s| s.parent == Some(shard_id) || s.adjacent_parent == Some(shard_id))
            .map(|s| s.shard_id)
            .collect()
    }

    /// Whether the open shards' ranges cover the whole 128-bit key space exactly once.
    pub fn covers_key_space(&self) -> bool {
        let mut next: Option<u128> = Some(0);
        for s in self.open_shards() {
            let (start, end) = s.hash_range();
            if next != Some(start) || end < start {
                return false;
            }
            next = end.checked_add(1);
        }
        next.is_none()
    }
}

/// A split, merge or scale worked out against a stream's current shards, before anything
/// is done: which open shards close, and the shards that appear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReshardPlan {
    /// Open shards that close (each is sealed on its core first).
    pub close: Vec<u32>,
    /// New shards, in id order: open ones (their core still to be chosen: `core` is
    /// `u32::MAX`), and closed empty ones that only pass lineage on (a scale that splits a
    /// shard and merges a piece of it with a neighbour), placed on their first parent's core.
    pub new_shards: Vec<ShardEntry>,
}

impl ReshardPlan {
    pub fn is_empty(&self) -> bool {
        self.close.is_empty() && self.new_shards.is_empty()
    }
}

/// Builds plans: hands out shard ids and records lineage.
struct Planner<'a> {
    stream: &'a StreamEntry,
    next_id: u32,
    now_ms: i64,
    plan: ReshardPlan,
}

/// A range of keys during planning: an existing open shard, or a new one (index into
/// `plan.new_shards`).
#[derive(Clone, Copy)]
enum Piece {
    Old(u32),
    New(usize),
}

impl<'a> Planner<'a> {
    fn new(stream: &'a StreamEntry, now_ms: i64) -> Planner<'a> {
        Planner {
            stream,
            next_id: stream.next_shard_id,
            now_ms,
            plan: ReshardPlan {
                close: Vec::new(),
                new_shards: Vec::new(),
            },
        }
    }

    fn id(&self, p: Piece) -> u32 {
        match p {
            Piece::Old(id) => id,
            Piece::New(i) => self.plan.new_shards[i].shard_id,
        }
    }

    fn range(&self, p: Piece) -> (u128, u128) {
        match p {
            Piece::Old(id) => self.stream.shard(id).expect("planned from it").hash_range(),
            Piece::New(i) => self.plan.new_shards[i].hash_range(),
        }
    }

    /// `p` takes no more writes: an old shard is sealed and closed; a new one is born
    /// closed and empty.
    fn close(&mut self, p: Piece) {
        match p {
            Piece::Old(id) => self.plan.close.push(id),
            Piece::New(i) => {
                let s = &mut self.plan.new_shards[i];
                s.state = ShardState::Closed;
                s.ending_seq = Some(0);
                s.closed_ms = self.now_ms;
            }
        }
    }

    fn child(&mut self, range: (u128, u128), parent: Piece, adjacent: Option<Piece>) -> Piece {
        let shard_id = self.next_id;
        self.next_id += 1;
        self.plan.new_shards.push(ShardEntry {
            shard_id,
            hash_start: range.0.to_be_bytes(),
            hash_end: range.1.to_be_bytes(),
            parent: Some(self.id(parent)),
            adjacent_parent: adjacent.map(|a| self.id(a)),
            state: ShardState::Open,
            core: u32::MAX,
            ending_seq: None,
            closed_ms: 0,
        });
        Piece::New(self.plan.new_shards.len() - 1)
    }

    /// Splits `p` at each of `cuts` (ascending, inside its range, above its start).
    fn split(&mut self, p: Piece, cuts: &[u128]) -> Vec<Piece> {
        if cuts.is_empty() {
            return vec![p];
        }
        let (start, end) = self.range(p);
        let mut bounds = vec![start];
        bounds.extend_from_slice(cuts);
        let mut pieces = Vec::new();
        for (i, &from) in bounds.iter().enumerate() {
            let to = bounds.get(i + 1).map_or(end, |next| next - 1);
            pieces.push(self.child((from, to), p, None));
        }
        self.close(p);
        pieces
    }

    /// Merges `a` with the piece right after it.
    fn merge(&mut self, a: Piece, b: Piece) -> Piece {
        let range = (self.range(a).0, self.range(b).1);
        let m = self.child(range, a, Some(b));
        self.close(a);
        self.close(b);
        m
    }
}

impl StreamEntry {
    fn open_shard(&self, shard_id: u32) -> Result<&ShardEntry, EngineError> {
        let sh = self
            .shard(shard_id)
            .ok_or_else(|| EngineError::UnknownShard {
                stream: self.name.clone(),
                shard: shard_id,
            })?;
        if sh.state != ShardState::Open {
            return Err(EngineError::InvalidArgument(format!(
                "shard {shard_id} of stream {:?} is closed; only open shards can be split or merged",
                self.name
            )));
        }
        Ok(sh)
    }

    /// Kinesis' SplitShard: `shard_id`'s keys below `at` go to one child, the rest to the
    /// other.
    pub fn plan_split(
        &self,
        shard_id: u32,
        at: u128,
        now_ms: i64,
    ) -> Result<ReshardPlan, EngineError> {
        let (start, end) = self.open_shard(shard_id)?.hash_range();
        if at <= start || at > end {
            return Err(EngineError::InvalidArgument(format!(
                "new starting hash key {at} must be above shard {shard_id}'s first key {start} and at most its last {end}"
            )));
        }
        let mut p = Planner::new(self, now_ms);
        p.split(Piece::Old(shard_id), &[at]);
        Ok(p.plan)
    }

    /// Kinesis' MergeShards: two open shards whose ranges touch become one, which names
    /// `shard_id` as its parent and `adjacent` as its adjacent parent.
    pub fn plan_merge(
        &self,
        shard_id: u32,
        adjacent: u32,
        now_ms: i64,
    ) -> Result<ReshardPlan, EngineError> {
        let a = self.open_shard(shard_id)?.hash_range();
        let b = self.open_shard(adjacent)?.hash_range();
        let touching = a.1.checked_add(1) == Some(b.0) || b.1.checked_add(1) == Some(a.0);
        if !touching {
            return Err(EngineError::InvalidArgument(format!(
                "shards {shard_id} and {adjacent} of stream {:?} are not adjacent (their hash-key ranges do not touch)",
                self.name
            )));
        }
        let mut p = Planner::new(self, now_ms);
        let range = (a.0.min(b.0), a.1.max(b.1));
        p.child(range, Piece::Old(shard_id), Some(Piece::Old(adjacent)));
        p.close(Piece::Old(shard_id));
        p.close(Piece::Old(adjacent));
        Ok(p.plan)
    }

    /// Kinesis' UpdateShardCount with uniform scaling: afterwards `target` open shards
    /// with even ranges (a cut within 2^32 keys of an open shard's edge is moved onto it,
    /// so ranges are even to that much). Every open shard with a target boundary inside it is split there;
    /// the pieces inside each target range are then merged one after the other. A doubling
    /// is one split per shard, a halving one merge per pair; other ratios leave closed,
    /// empty shards between (as Kinesis does). An open shard that already is a target
    /// range stays as it is.
    pub fn plan_scale(&self, target: u32, now_ms: i64) -> Result<ReshardPlan, EngineError> {
        if target == 0 || target > MAX_SHARDS_PER_STREAM {
            return Err(EngineError::InvalidArgument(format!(
                "target shard count {target} must be 1..={MAX_SHARDS_PER_STREAM}"
            )));
        }
        // Even ranges (floor(2^128 / n) apart, as Kinesis cuts them), each cut moved onto an
        // open shard's edge when it is within rounding of one: the even ranges of n and of
        // 2n (or n/2) differ by a few keys where n is not a power of two, and cutting there
        // made one-key slivers to merge away, several new shards where one would do.
        const SNAP_KEYS: u128 = 1 << 32;
        let edges: std::collections::BTreeSet<u128> = self
            .open_shards()
            .iter()
            .map(|s| s.hash_range().0)
            .filter(|&e| e > 0)
            .collect();
        let starts: Vec<u128> = (0..target)
            .map(|i| {
                let t = even_range(i, target).0;
                if t == 0 {
                    return 0;
                }
                edges
                    .range(t.saturating_sub(SNAP_KEYS)..=t.saturating_add(SNAP_KEYS))
                    .min_by_key(|&&e| e.abs_diff(t))
                    .copied()
                    .unwrap_or(t)
            })
            .collect();
        let targets: Vec<(u128, u128)> = starts
            .iter()
            .enumerate()
            .map(|(i, &start)| {
                let end = starts.get(i + 1).map_or(u128::MAX, |&next| next - 1);
                (start, end)
            })
            .collect();
        let mut p = Planner::new(self, now_ms);
        let mut pieces = Vec::new();
        for sh in self.open_shards() {
            let (start, end) = sh.hash_range();
            let cuts: Vec<u128> = targets
                .iter()
                .map(|t| t.0)
                .filter(|&t| t > start && t <= end)
                .collect();
            pieces.extend(p.split(Piece::Old(sh.shard_id), &cuts));
        }
        let mut pieces = pieces.into_iter().peekable();
        for (_, t_end) in targets {
            let mut acc = pieces.next().expect("the open shards cover the key space");
            while p.range(acc).1 < t_end {
                let next = pieces.next().expect("pieces reach every target's end");
                acc = p.merge(acc, next);
            }
        }
        Ok(p.plan)
    }

    /// On-demand scaling: split each of `split` at the middle of its range, and merge each
    /// of `merge`'s pairs (adjacent open shards, no shard in two changes), in one change.
    pub fn plan_many(
        &self,
        split: &[u32],
        merge: &[(u32, u32)],
        now_ms: i64,
    ) -> Result<ReshardPlan, EngineError> {
        let mut p = Planner::new(self, now_ms);
        for &id in split {
            let (a, b) = self.open_shard(id)?.hash_range();
            if a == b {
                continue;
            }
            p.split(Piece::Old(id), &[a + (b - a) / 2 + 1]);
        }
        for &(x, y) in merge {
            let one = self.plan_merge(x, y, now_ms)?;
            let range = one.new_shards[0].hash_range();
            p.child(range, Piece::Old(x), Some(Piece::Old(y)));
            p.close(Piece::Old(x));
            p.close(Piece::Old(y));
        }
        Ok(p.plan)
    }

    /// Applies a plan whose closing shards were sealed at `ending` (one past each one's last
    /// sequence number), with the new open shards on `cores` (in the order they appear in
    /// `plan.new_shards`). Raises the shard-map version.
    pub fn apply_reshard(&mut self, plan: &ReshardPlan, ending: &HashMap<u32, u64>, now_ms: i64) {
        for sh in &mut self.shards {
            if plan.close.contains(&sh.shard_id) {
                sh.state = ShardState::Closed;
                sh.ending_seq = Some(ending.get(&sh.shard_id).copied().unwrap_or(0));
                sh.closed_ms = now_ms;
            }
        }
        for new in &plan.new_shards {
            self.shards.push(new.clone());
            self.next_shard_id = self.next_shard_id.max(new.shard_id + 1);
        }
        self.shards.sort_by_key(|s| s.shard_id);
        self.map_version += 1;
    }
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

    pub fn stream_mut(&mut self, name: &str) -> Option<&mut StreamEntry> {
        self.data.streams.iter_mut().find(|s| s.name == name)
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
            encryption,
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
                adjacent_parent: None,
                state: ShardState::Open,
                core,
                ending_seq: None,
                closed_ms: 0,
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
            mode: CapacityMode::Provisioned,
            map_version: 1,
            next_shard_id: shard_count,
            shard_level_metrics: false,
            peak_write_bytes_per_s: 0,
            peak_at_ms: now_ms,
            last_scaling: None,
            max_write_mib_per_s: 0,
            // Set by the control plane, which holds the keys (`Keyring::with_new_epoch`).
            encryption: None,
        });
        let _ = encryption;
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
    seal_state_file(&CATALOG_MAGIC, &payload)
}

/// The catalog's file format, which `fanout.bin` and `auth.bin` share: 8-byte magic,
/// CRC32C of the payload, payload length (u32), payload (an rkyv archive).
pub(crate) fn seal_state_file(magic: &[u8; 8], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + payload.len());
    out.extend_from_slice(magic);
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The payload of a file in [`seal_state_file`]'s format, checked (magic, length, CRC),
/// copied to an aligned buffer for rkyv (the file's bytes sit at an arbitrary address).
pub(crate) fn open_state_file(
    magic: &[u8; 8],
    bytes: &[u8],
) -> Result<rkyv::util::AlignedVec<16>, String> {
    if bytes.len() < 16 || bytes[..8] != *magic {
        return Err("bad magic".into());
    }
    let payload = checked_payload(bytes)?;
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(payload.len());
    aligned.extend_from_slice(payload);
    Ok(aligned)
}

fn decode(bytes: &[u8]) -> Result<CatalogData, String> {
    if bytes.len() >= 16 && bytes[..8] == CATALOG_MAGIC_V1 {
        return v1::decode(bytes);
    }
    if bytes.len() >= 16 && bytes[..8] == CATALOG_MAGIC_V2 {
        return v2::decode(bytes);
    }
    let aligned = open_state_file(&CATALOG_MAGIC, bytes)?;
    rkyv::from_bytes::<CatalogData, rkyv::rancor::Error>(&aligned).map_err(|e| e.to_string())
}

/// The catalog layout before resharding (`SPCATLG1`): read, converted, written back as v2.
mod v1 {
    use super::{CatalogData, ShardState};
    use crate::limits::Limits;

    #[derive(rkyv::Archive, rkyv::Deserialize)]
    struct ShardEntry {
        shard_id: u32,
        hash_start: [u8; 16],
        hash_end: [u8; 16],
        parent: Option<u32>,
        state: ShardState,
        core: u32,
    }

    #[derive(rkyv::Archive, rkyv::Deserialize)]
    struct StreamEntry {
        name: String,
        stream_id: u64,
        retention_hours: u32,
        limits: Limits,
        max_record_data_bytes: u32,
        created_ms: i64,
        shards: Vec<ShardEntry>,
    }

    #[derive(rkyv::Archive, rkyv::Deserialize)]
    struct Data {
        next_stream_id: u64,
        streams: Vec<StreamEntry>,
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<CatalogData, String> {
        let payload = super::checked_payload(bytes)?;
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(payload.len());
        aligned.extend_from_slice(payload);
        let old =
            rkyv::from_bytes::<Data, rkyv::rancor::Error>(&aligned).map_err(|e| e.to_string())?;
        Ok(CatalogData {
            next_stream_id: old.next_stream_id,
            streams: old
                .streams
                .into_iter()
                .map(|s| super::StreamEntry {
                    next_shard_id: s.shards.iter().map(|sh| sh.shard_id + 1).max().unwrap_or(0),
                    name: s.name,
                    stream_id: s.stream_id,
                    retention_hours: s.retention_hours,
                    limits: s.limits,
                    max_record_data_bytes: s.max_record_data_bytes,
                    created_ms: s.created_ms,
                    shards: s
                        .shards
                        .into_iter()
                        .map(|sh| super::ShardEntry {
                            shard_id: sh.shard_id,
                            hash_start: sh.hash_start,
                            hash_end: sh.hash_end,
                            parent: sh.parent,
                            adjacent_parent: None,
                            state: sh.state,
                            core: sh.core,
                            ending_seq: None,
                            closed_ms: 0,
                        })
                        .collect(),
                    mode: super::CapacityMode::Provisioned,
                    map_version: 1,
                    shard_level_metrics: false,
                    peak_write_bytes_per_s: 0,
                    peak_at_ms: s.created_ms,
                    last_scaling: None,
                    max_write_mib_per_s: 0,
                    encryption: None,
                })
                .collect(),
        })
    }
}

/// The layout before encryption at rest (`SPCATLG2`): read, converted, written back as v3.
mod v2 {
    use super::{CapacityMode, CatalogData, ShardEntry};
    use crate::limits::Limits;

    // Serialize too: the test writes a v2 file to check it still loads.
    #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
    pub(super) struct StreamEntry {
        name: String,
        stream_id: u64,
        retention_hours: u32,
        limits: Limits,
        max_record_data_bytes: u32,
        created_ms: i64,
        shards: Vec<ShardEntry>,
        mode: CapacityMode,
        map_version: u64,
        next_shard_id: u32,
        shard_level_metrics: bool,
        peak_write_bytes_per_s: u64,
        peak_at_ms: i64,
        last_scaling: Option<(i64, String)>,
        max_write_mib_per_s: u32,
    }

    #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
    pub(super) struct Data {
        pub next_stream_id: u64,
        pub streams: Vec<StreamEntry>,
    }

    /// A v2 file holding `data`'s streams (their encryption dropped), for the test.
    #[cfg(test)]
    pub(super) fn encode(data: &CatalogData) -> Vec<u8> {
        let old = Data {
            next_stream_id: data.next_stream_id,
            streams: data
                .streams
                .iter()
                .cloned()
                .map(|s| StreamEntry {
                    name: s.name,
                    stream_id: s.stream_id,
                    retention_hours: s.retention_hours,
                    limits: s.limits,
                    max_record_data_bytes: s.max_record_data_bytes,
                    created_ms: s.created_ms,
                    shards: s.shards,
                    mode: s.mode,
                    map_version: s.map_version,
                    next_shard_id: s.next_shard_id,
                    shard_level_metrics: s.shard_level_metrics,
                    peak_write_bytes_per_s: s.peak_write_bytes_per_s,
                    peak_at_ms: s.peak_at_ms,
                    last_scaling: s.last_scaling,
                    max_write_mib_per_s: s.max_write_mib_per_s,
                })
                .collect(),
        };
        let payload = rkyv::to_bytes::<rkyv::rancor::Error>(&old).expect("serializes");
        super::seal_state_file(&super::CATALOG_MAGIC_V2, &payload)
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<CatalogData, String> {
        let aligned = super::open_state_file(&super::CATALOG_MAGIC_V2, bytes)?;
        let old =
            rkyv::from_bytes::<Data, rkyv::rancor::Error>(&aligned).map_err(|e| e.to_string())?;
        Ok(CatalogData {
            next_stream_id: old.next_stream_id,
            streams: old
                .streams
                .into_iter()
                .map(|s| super::StreamEntry {
                    name: s.name,
                    stream_id: s.stream_id,
                    retention_hours: s.retention_hours,
                    limits: s.limits,
                    max_record_data_bytes: s.max_record_data_bytes,
                    created_ms: s.created_ms,
                    shards: s.shards,
                    mode: s.mode,
                    map_version: s.map_version,
                    next_shard_id: s.next_shard_id,
                    shard_level_metrics: s.shard_level_metrics,
                    peak_write_bytes_per_s: s.peak_write_bytes_per_s,
                    peak_at_ms: s.peak_at_ms,
                    last_scaling: s.last_scaling,
                    max_write_mib_per_s: s.max_write_mib_per_s,
                    encryption: None,
                })
                .collect(),
        })
    }
}

/// The payload of a catalog file after its checksum has been checked.
fn checked_payload(bytes: &[u8]) -> Result<&[u8], String> {
    let crc = u32::from_le_bytes(bytes[8..12].try_into().expect("4"));
    let len = u32::from_le_bytes(bytes[12..16].try_into().expect("4")) as usize;
    let payload = bytes.get(16..16 + len).ok_or("truncated")?;
    if crc32c::crc32c(payload) != crc {
        return Err("checksum mismatch".into());
    }
    Ok(payload)
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
                encryption: false,
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
                encryption: false,
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
    fn a_catalog_written_before_encryption_at_rest_loads() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Catalog::load(dir.path()).unwrap();
        c.add_stream("clicks", &StreamOptions::new(3), 2, 1)
            .unwrap();
        c.stream_mut("clicks").unwrap().last_scaling = Some((5, "why".into()));
        let back = Catalog::from_bytes(dir.path(), Some(&v2::encode(&c.data))).unwrap();
        assert_eq!(back.data, c.data);
        assert_eq!(back.stream("clicks").unwrap().encryption, None);
        // Written back as the current layout, with encryption.
        let mut c = back;
        c.stream_mut("clicks").unwrap().encryption = Some(StreamEncryption {
            current: Some(0),
            epochs: vec![KeyEpoch {
                epoch: 0,
                wrapped: vec![7; 76],
                created_ms: 9,
            }],
        });
        let (_, bytes) = c.encoded();
        assert_eq!(&bytes[..8], b"SPCATLG3");
        assert_eq!(
            Catalog::from_bytes(dir.path(), Some(&bytes)).unwrap().data,
            c.data
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
        assert_eq!(clicks.next_shard_id, 3);
        assert_eq!(clicks.map_version, 1);
        assert!(clicks.covers_key_space());
        // It is written back in the current layout, which reads back the same.
        let again = decode(&encode(&c.data)).unwrap();
        assert_eq!(again, c.data);
    }

    fn stream_with(shards: u32) -> StreamEntry {
        let mut c = Catalog {
            path: PathBuf::from("/nonexistent"),
            data: CatalogData::default(),
        };
        c.add_stream("s", &StreamOptions::new(shards), 2, 0)
            .unwrap()
            .clone()
    }

    fn apply(s: &mut StreamEntry, plan: &ReshardPlan) {
        let mut plan = plan.clone();
        for sh in &mut plan.new_shards {
            sh.core = 0;
        }
        s.apply_reshard(&plan, &HashMap::new(), 1);
    }

    #[test]
    fn doubling_splits_halving_merges_and_other_ratios_pass_lineage_through() {
        let mut s = stream_with(4);
        let plan = s.plan_scale(8, 1).unwrap();
        assert_eq!(plan.close, vec![0, 1, 2, 3]);
        assert_eq!(
            plan.new_shards.len(),
            8,
            "one split per shard, nothing in between"
        );
        assert!(plan
            .new_shards
            .iter()
            .all(|n| n.state == ShardState::Open && n.adjacent_parent.is_none()));
        apply(&mut s, &plan);
        assert!(s.covers_key_space());
        assert_eq!(s.open_shards().len(), 8);
        assert_eq!(s.map_version, 2);
        for (i, sh) in s.open_shards().iter().enumerate() {
            assert_eq!(sh.hash_range(), even_range(i as u32, 8));
        }
        let plan = s.plan_scale(4, 2).unwrap();
        assert_eq!(plan.new_shards.len(), 4, "one merge per pair");
        assert!(plan.new_shards.iter().all(|n| n.adjacent_parent.is_some()));
        apply(&mut s, &plan);
        assert_eq!(s.open_shards().len(), 4);
        assert!(s.plan_scale(4, 3).unwrap().is_empty(), "already uniform");
        for target in [1, 3, 5, 7, 64, 2] {
            let plan = s.plan_scale(target, 3).unwrap();
            apply(&mut s, &plan);
            assert!(s.covers_key_space(), "{target}");
            let open = s.open_shards();
            assert_eq!(open.len(), target as usize);
            // Even ranges, give or take the few keys of a cut moved onto an existing edge.
            for (i, sh) in open.iter().enumerate() {
                let (want, got) = (even_range(i as u32, target), sh.hash_range());
                assert!(
                    want.0.abs_diff(got.0) <= 1 << 32 && want.1.abs_diff(got.1) <= 1 << 32,
                    "{target}: {got:?} for {want:?}"
                );
            }
            // Every shard's parents are older (lower ids): id order is lineage order.
            for sh in &s.shards {
                for p in [sh.parent, sh.adjacent_parent].into_iter().flatten() {
                    assert!(p < sh.shard_id);
                }
            }
        }
    }

    /// Between counts that are not powers of two a doubling is still one split per shard
    /// and a halving one merge per pair: the even cuts of n and 2n differ by a few keys,
    /// and cutting at both made one-key slivers, each a new shard made only to be merged
    /// away.
    #[test]
    fn doubling_and_halving_uneven_counts_make_no_slivers() {
        for (from, to) in [(3, 6), (10, 20), (500, 250), (6, 3), (1000, 2000)] {
            let mut s = stream_with(from);
            let plan = s.plan_scale(to, 1).unwrap();
            assert_eq!(plan.new_shards.len() as u32, to, "{from} -> {to}");
            assert!(
                plan.new_shards.iter().all(|n| n.state == ShardState::Open),
                "{from} -> {to}: no shard made only to be merged away"
            );
            apply(&mut s, &plan);
            assert!(s.covers_key_space());
            assert_eq!(s.open_shards().len() as u32, to);
        }
    }

    #[test]
    fn splits_and_merges_are_checked() {
        let mut s = stream_with(2);
        let (_, end0) = s.shards[0].hash_range();
        assert!(s.plan_split(0, 0, 1).is_err(), "at the first key");
        assert!(s.plan_split(0, end0 + 1, 1).is_err(), "outside");
        assert!(s.plan_split(9, 5, 1).is_err(), "unknown shard");
        let plan = s.plan_split(0, 1000, 1).unwrap();
        apply(&mut s, &plan);
        assert!(s.covers_key_space());
        assert!(s.plan_split(0, 500, 1).is_err(), "closed");
        assert!(
            s.plan_merge(2, 1, 1).is_err(),
            "2 ends at 999, 1 starts at end0 + 1"
        );
        let plan = s.plan_merge(3, 1, 1).unwrap();
        apply(&mut s, &plan);
        let merged = s
            .open_shards()
            .into_iter()
            .find(|x| x.shard_id == 4)
            .unwrap();
        assert_eq!((merged.parent, merged.adjacent_parent), (Some(3), Some(1)));
        assert_eq!(s.children_of(1), vec![4]);
        assert!(s.covers_key_space());
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
                encryption: false,
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
                    max_record_data_bytes: 1,
                    encryption: false,
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
                    max_record_data_bytes: 1,
                    encryption: false,
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
                    max_record_data_bytes: 1,
                    encryption: false,
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
                    max_record_data_bytes: 1,
                    encryption: false,
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
                    encryption: false,
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
                encryption: false,
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
                    max_record_data_bytes: 1,
                    encryption: false,
                },
                1,
                0
            ),
            Err(EngineError::StreamExists(_))
        ));
    }
}
