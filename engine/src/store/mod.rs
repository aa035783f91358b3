//! A store: the logs of every shard placed on it, kept durable with one journal flush per
//! round, whatever number of shards wrote in the round.
//!
//! # Layout (see `layout.rs` for the bytes)
//! Each shard's log is a list of *extents*: power-of-two runs of blocks (1–16 MiB by
//! default) inside a few large, pre-written *volume* files the store shares between all its
//! shards. Extents are allocated from the volumes by a buddy allocator, grow while a shard is
//! busy, roll by size or age, and are freed whole by retention, so a shard's history is
//! contiguous in runs of its own (replay reads it sequentially), streams with different
//! windows can share a store, and an idle shard owns nothing on disk until it is written.
//!
//! # Write path (group commit, one flush per round)
//! 1. `append` stages a batch: it assigns sequence numbers, copies the batch into the shard's
//!    staging buffer (the extent's bytes as they will be on disk), stamps it there, and
//!    copies the stamped bytes into the open round's journal buffer (the second copy).
//! 2. The first appender that finds no round being written leads one: it seals the round
//!    (header, CRC, padding), places it in the journal, writes it, and fdatasyncs the journal
//!    file once. Every append of the round then returns. Round *n+1* is written while round
//!    *n* is synced; syncs stay in order.
//! 3. A shard that puts at least `direct_write_bytes_min` into one round (a hot shard) is
//!    not copied into the journal: the round writes its bytes in place in its extent and
//!    fdatasyncs that volume too, and the journal carries only a `direct` entry naming the
//!    range. Hot shards are written once; the many small contributions share one flush.
//!    The number of flushes per round is bounded by the volumes touched, not by shards.
//! 4. *Write-behind*: journaled bytes stay in memory and are written into their extents in
//!    large pieces in the background (`behind.rs`), without a flush of their own.
//! 5. *Checkpoint*: every `checkpoint_bytes` of journal, everything durable is written
//!    behind, the volumes written since the last checkpoint are fdatasynced, and the
//!    manifest records each shard's extents and the journal position replay starts from;
//!    journal files before it are reused. Recovery (`recover.rs`) loads the manifest and
//!    replays the journal from there: bounded work, whatever is retained.
//!
//! The durability contract holds per file: an append returns only after the round's
//! fdatasync of the journal file holding its bytes, or of the volume holding them (direct).
//! A checkpoint claims only bytes it wrote and then fdatasynced in their volume.
//!
//! # Concurrency contract
//! A store lives on one core. Its state sits in one `RefCell`, borrowed between awaits and
//! never across one; every async method re-checks state after each await.

mod alloc;
mod behind;
#[doc(hidden)]
pub mod fuzzing;
mod journal;
pub mod layout;
pub mod manifest;
mod recover;
mod shard;
#[cfg(test)]
mod tests;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use spate_protocol::batch::{BatchHeader, BATCH_HEADER_LEN};

use crate::clock::ClockRef;
use crate::crypto::{BatchContext, StreamKeys};
use crate::io::{align_down, align_up, IoBuf, SegFile, Storage, BLOCK_BYTES};
use crate::notify::Notify;

use alloc::ExtentAllocator;
use journal::Journal;
pub use layout::ShardKey;
use layout::{
    encode_batch_entry_header, encode_direct, encode_roll, entry_len, Direct, ExtentId, Roll,
    RoundHeader, DIRECT_BODY_LEN, ENTRY_HEADER_LEN, EXTENT_DATA_START, ROLL_BODY_LEN,
    ROUND_HEADER_LEN,
};
use shard::{parse_batches, seal_padded, seal_staging, DirectStart, ShardLog, Staged};

/// Tunables of one store (see `config.rs` for the defaults and what each is for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// Index of the store (its directory is `store-<index>`); served by core `index % cores`.
    pub index: u32,
    pub dir: PathBuf,
    /// Smallest extent (the allocation unit) and largest; powers of two.
    pub extent_bytes_min: u64,
    pub extent_bytes_max: u64,
    /// Size of each volume file (a multiple of `extent_bytes_max`); a store's first volumes
    /// are smaller (32 MiB, then ×4).
    pub volume_bytes: u64,
    pub journal_file_bytes: u64,
    /// Journal files in the ring (at least 2).
    pub journal_files: u32,
    /// Journal and in-place bytes after which a checkpoint starts: bounds
    /// what recovery replays.
    pub checkpoint_bytes: u64,
    /// A checkpoint also runs this often when one is owed (freed extents, replayed data).
    pub checkpoint_interval_ms: i64,
    /// A checkpoint made due by journal traffic records the snapshot the previous one took
    /// (written behind by then) instead of one of its own (see `checkpoint_inner`).
    pub checkpoint_deferred: bool,
    /// A shard putting at least this much into one round writes it in place (not journaled).
    pub direct_write_bytes_min: usize,
    /// A shard's unwritten bytes that start a write-behind.
    pub write_behind_bytes: usize,
    /// Free volume space kept written (with zeros) ahead of allocation (0: none).
    pub prewrite_bytes: u64,
    /// Unwritten bytes the store holds in memory before appends wait.
    pub memory_bytes_max: usize,
    /// An extent whose oldest record is this old is closed at the next append.
    pub segment_age_max_ms: i64,
    pub index_interval_bytes: u64,
    pub read_chunk_bytes: usize,
    /// Bytes one round may take while the previous one is being written.
    pub round_bytes_max: usize,
    /// Rounds per second at most, on average (a token bucket holding `ROUND_BURST`
    /// rounds); 0: a round starts as soon as the one before it is syncing. See `pace`. The
    /// rate at start: an adaptive pacer (`crate::pacer`) may change it later.
    pub round_rate_max: u32,
    /// How a round becomes durable: its writes, then an fdatasync of each file written, or
    /// O_DSYNC writes that are each durable when they complete. See `RoundSync`.
    pub round_sync: RoundSync,
    /// Largest staging buffer, and journal buffer after a round's first (which is as large
    /// as the round before, up to `round_bytes_max`: `OpenRound`).
    pub write_chunk_bytes_max: usize,
}

/// How a group-commit round is made durable. Either way a round is acknowledged only once
/// every byte it wrote is durable in the file that holds it (POSIX: an fdatasync of that
/// file after the write, or an O_DSYNC write).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoundSync {
    /// Write the round's pieces, then fdatasync the journal file and each volume written in
    /// place (the next round is written while this one syncs).
    Fdatasync,
    /// A file the round writes once (one producer's call, a small round's journal run) is
    /// written with O_DSYNC: the write returns once its bytes are durable, with no separate
    /// fdatasync (no io_uring worker thread and its wake-ups). A file written several times
    /// is written plainly, then fdatasynced. Two rounds may be in flight at once. The
    /// default: more throughput at full load in alternated runs (BENCHMARKS.md, "O_DSYNC
    /// rounds by default").
    #[default]
    Dsync,
}

impl StoreConfig {
    pub fn validate(&self) -> Result<(), String> {
        let block = BLOCK_BYTES as u64;
        if !self.extent_bytes_min.is_power_of_two()
            || !self.extent_bytes_max.is_power_of_two()
            || self.extent_bytes_min < 4 * block
            || self.extent_bytes_max < self.extent_bytes_min
        {
            return Err("extent sizes must be powers of two, at least 16 KiB, min <= max".into());
        }
        if self.volume_bytes % self.extent_bytes_max != 0 || self.volume_bytes == 0 {
            return Err("volume_bytes must be a multiple of extent_bytes_max".into());
        }
        if self.volume_bytes / self.extent_bytes_min > u64::from(u32::MAX) {
            return Err("volume_bytes / extent_bytes_min must fit in 32 bits".into());
        }
        if self.journal_files < 2 {
            return Err("journal_files must be at least 2".into());
        }
        if self.journal_file_bytes % block != 0
            || self.journal_file_bytes < 2 * self.round_bytes_max as u64 + 2 * block
        {
            return Err("journal_file_bytes must be block-aligned and hold two full rounds".into());
        }
        if self.checkpoint_bytes == 0
            || self.checkpoint_bytes > u64::from(self.journal_files - 1) * self.journal_file_bytes
        {
            return Err(
                "checkpoint_bytes must be positive and fit in all but one journal file".into(),
            );
        }
        if self.write_chunk_bytes_max < 16 << 10 || self.write_chunk_bytes_max % BLOCK_BYTES != 0 {
            return Err("write_chunk_bytes_max must be a multiple of 4096, at least 16 KiB".into());
        }
        if self.index_interval_bytes == 0 || self.read_chunk_bytes < BLOCK_BYTES {
            return Err("index_interval_bytes and read_chunk_bytes must be positive".into());
        }
        Ok(())
    }

    fn max_order(&self) -> u32 {
        (self.extent_bytes_max / self.extent_bytes_min).trailing_zeros()
    }

    fn extent_size(&self, order: u32) -> u64 {
        self.extent_bytes_min << order
    }

    /// Largest batch the store can hold (one batch never spans extents).
    pub fn max_batch_bytes(&self) -> usize {
        (self.extent_bytes_max - EXTENT_DATA_START) as usize
    }

    /// Size of the store's volume number `n`: the first ones are small (a fresh store
    /// takes its first write after a short fill), each four times the last, up to
    /// `volume_bytes`.
    fn volume_size(&self, n: u32) -> u64 {
        let first = (32u64 << 20).max(2 * self.extent_bytes_max);
        first
            .checked_shl(2 * n.min(16))
            .unwrap_or(u64::MAX)
            .min(self.volume_bytes)
            .max(self.extent_bytes_max)
    }
}

/// Errors of a store. Converted to wire codes at the server boundary.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("the store refuses writes after a failed write or flush: {0}")]
    Poisoned(String),
    #[error("no space left for the shard's data")]
    StorageFull,
    #[error("I/O error: {0}")]
    Io(String),
    #[error("corrupt data: {0}")]
    Corrupt(String),
    #[error("batch of {0} bytes does not fit in an extent")]
    BatchTooLarge(usize),
    #[error("no shard {0:?} in this store")]
    UnknownShard(ShardKey),
    #[error("the store is shutting down")]
    ShuttingDown,
}

impl From<io::Error> for StoreError {
    fn from(e: io::Error) -> Self {
        if e.raw_os_error() == Some(libc::ENOSPC) {
            StoreError::StorageFull
        } else {
            StoreError::Io(e.to_string())
        }
    }
}

/// What an acknowledged append tells the producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendAck {
    pub base_seq: u64,
    pub record_count: u32,
    pub ts_ms: i64,
}

/// Stored batches returned by a read, exactly as on disk, plus the window of sequence
/// numbers the reader should yield from them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadOutput {
    /// Concatenated stored batches, each verified by CRC.
    pub bytes: Vec<u8>,
    pub batch_count: u32,
    /// Yield records with `start_seq <= seq < end_seq`; `end_seq` is also where to continue.
    pub start_seq: u64,
    pub end_seq: u64,
    /// Arrival time of the newest durable record, for "millis behind latest".
    pub latest_ts_ms: i64,
    /// One past the newest durable record.
    pub durable_seq: u64,
    /// Key and data bytes of the records `start_seq..end_seq` ([`records_bytes`]): what a
    /// read is charged to its shard's limit and counted as in the metrics (`bytes` holds
    /// whole batches, which may hold records outside the range).
    pub record_bytes: u64,
}

/// Key and data bytes of the records `start_seq..end_seq` in `bytes` (whole stored batches,
/// which may hold records outside the range): what Kinesis' `GetRecords.Bytes` and
/// `OutgoingBytes` count. A batch whose records cannot be walked counts its own length.
pub fn records_bytes(bytes: &[u8], start_seq: u64, end_seq: u64) -> u64 {
    let mut pos = 0;
    let mut total = 0;
    while bytes.len() - pos >= BATCH_HEADER_LEN {
        let Ok(h) = BatchHeader::decode(&bytes[pos..]) else {
            return total + (bytes.len() - pos) as u64;
        };
        let batch = &bytes[pos..(pos + h.batch_len as usize).min(bytes.len())];
        let mut sum = 0;
        let records = spate_protocol::batch::RecordIter::new(batch, h.record_count);
        for (seq, r) in (h.base_seq..).zip(records) {
            match r {
                Ok(r) if (start_seq..end_seq).contains(&seq) => {
                    sum += (r.key.len() + r.data.len()) as u64
                }
                Ok(_) => {}
                Err(_) => {
                    sum = batch.len() as u64;
                    break;
                }
            }
        }
        total += sum;
        pos += (h.batch_len as usize).max(BATCH_HEADER_LEN);
    }
    total
}

/// Counters of a store (its metrics probe).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub rounds: u64,
    pub round_syncs: u64,
    pub appends: u64,
    pub journal_bytes: u64,
    pub direct_bytes: u64,
    pub write_behind_bytes: u64,
    /// Zeros written to make new journal files (paced by rounds).
    pub fill_bytes: u64,
    /// Zeros written into free volume space ahead of allocation.
    pub prewrite_bytes: u64,
    pub checkpoints: u64,
    pub checkpoint_syncs: u64,
    pub rolls: u64,
    /// Time spent in the write phase and in the sync phase of rounds, summed.
    pub write_us: u64,
    pub sync_us: u64,
    /// The slowest write phase and sync phase of a round.
    pub write_us_max: u64,
    pub sync_us_max: u64,
    pub replayed_rounds: u64,
    pub replayed_bytes: u64,
    /// Shards recovery cut at a round that never completed.
    pub cut_shards: u64,
    /// Rounds by how long their sync phase took (`crate::metrics::LATENCY_BOUNDS_MS`).
    pub sync_buckets: [u64; crate::metrics::LATENCY_BUCKETS],
    /// Rounds by time from seal to completion (write, wait for the sync turn, sync).
    pub round_buckets: [u64; crate::metrics::LATENCY_BUCKETS],
    /// Appends that waited before staging, by `WaitReason` (index: `reason as usize`),
    /// each append counted once per reason.
    pub waits: [u64; WaitReason::ALL.len()],
}

/// What an append waited for before it could be staged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitReason {
    /// Room in the open round (the one before it still writing, `round_bytes_max`).
    Round,
    /// Memory: unwritten bytes over `memory_bytes_max`.
    Memory,
    /// The journal ring.
    Journal,
    /// An extent of the size it needs.
    Extent,
    /// Its shard's tail, loaded at the shard's first append after an open.
    Tail,
}

impl WaitReason {
    pub const ALL: [WaitReason; 5] = [
        WaitReason::Round,
        WaitReason::Memory,
        WaitReason::Journal,
        WaitReason::Extent,
        WaitReason::Tail,
    ];

    /// Its name in metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            WaitReason::Round => "round",
            WaitReason::Memory => "memory",
            WaitReason::Journal => "journal",
            WaitReason::Extent => "extent",
            WaitReason::Tail => "tail",
        }
    }
}

/// A shard's vital statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardInfo {
    pub first_seq: u64,
    /// One past the newest durable record.
    pub next_seq: u64,
    pub latest_ts_ms: i64,
    pub extents: usize,
    /// Bytes of durable data in the shard's extents.
    pub bytes: u64,
    /// Disk the shard's extents hold.
    pub disk_bytes: u64,
}

/// The round being filled: its journal payload (built as batches are staged) and the
/// shards that staged into it.
struct OpenRound<B> {
    /// Journal buffers; the first starts with room for the round header and is as large
    /// as the round before (`first_chunk`): under steady load a round is one write, so
    /// with O_DSYNC rounds one durable write and no fdatasync. Each further one is as
    /// large as all before it together (up to `write_chunk_bytes_max`): a round of 2 MB
    /// that outgrows its first buffer takes a few more writes, not 128 of 16 KiB
    /// (shard-density at 512 shards: BENCHMARKS.md).
    chunks: Vec<B>,
    /// The size of the first buffer.
    first_chunk: usize,
    /// Bytes `chunks` hold in all.
    cap: usize,
    /// Bytes used in `chunks` (header room included).
    len: usize,
    entries: u32,
    crc: u32,
    touched: Vec<ShardKey>,
    direct: Vec<ShardKey>,
    /// Batch bytes staged into the round (journaled or direct).
    batch_bytes: usize,
}

impl<B: IoBuf> OpenRound<B> {
    /// An empty round whose first journal buffer will hold `first_chunk` bytes (at least
    /// 16 KiB, block-aligned).
    fn new(first_chunk: usize) -> OpenRound<B> {
        OpenRound {
            chunks: Vec::new(),
            first_chunk: align_up(first_chunk.max(16 << 10) as u64) as usize,
            cap: 0,
            len: ROUND_HEADER_LEN,
            entries: 0,
            crc: 0,
            touched: Vec::new(),
            direct: Vec::new(),
            batch_bytes: 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.entries == 0 && self.direct.is_empty()
    }

    fn push_chunk(&mut self, chunk: B) {
        self.cap += chunk.as_ref().len();
        self.chunks.push(chunk);
    }

    /// Appends payload bytes, allocating journal buffers as needed.
    fn put(&mut self, bytes: &[u8], chunk_bytes: usize, alloc: &dyn Fn(usize) -> B) {
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        let mut rest = bytes;
        while !rest.is_empty() {
            let cap = self.cap;
            if self.len == cap {
                let want = (align_up((rest.len() + ROUND_HEADER_LEN) as u64) as usize).max(cap);
                self.push_chunk(alloc(want.clamp(16 << 10, chunk_bytes)));
                continue;
            }
            let last = self.chunks.last_mut().expect("a chunk");
            let start_of_last = cap - last.as_ref().len();
            let at = self.len - start_of_last;
            let n = rest.len().min(last.as_ref().len() - at);
            last.as_mut()[at..at + n].copy_from_slice(&rest[..n]);
            self.len += n;
            rest = &rest[n..];
        }
    }

    fn put_entry(
        &mut self,
        header: &[u8],
        body: &[u8],
        chunk_bytes: usize,
        alloc: &dyn Fn(usize) -> B,
    ) {
        if self.chunks.is_empty() {
            self.push_chunk(alloc(self.first_chunk));
        }
        self.put(header, chunk_bytes, alloc);
        self.put(body, chunk_bytes, alloc);
        let pad = body.len().next_multiple_of(8) - body.len();
        self.put(&[0u8; 8][..pad], chunk_bytes, alloc);
        self.entries += 1;
    }
}

/// What completing a round tells one shard.
struct Completion {
    key: ShardKey,
    extent: ExtentId,
    end: u64,
    end_seq: u64,
    last_ts_ms: i64,
}

/// A write of one buffer to a file at a position.
struct WriteJob<F, B> {
    file: Rc<F>,
    buf: Rc<B>,
    pos: u64,
}

/// One in-place write of a hot shard: the extent, the range `[from, to)` of it, the write.
type DirectWrite<F, B> = (ExtentId, u64, u64, WriteJob<F, B>);

/// A shard's in-place writes of one round, in order, and what they cover.
struct DirectJob<F, B> {
    key: ShardKey,
    writes: Vec<DirectWrite<F, B>>,
}

/// A round, sealed and placed, ready to be written.
struct SealedRound<S: Storage> {
    id: u64,
    journal_file: Rc<S::File>,
    journal_writes: Vec<WriteJob<S::File, S::Buf>>,
    direct: Vec<DirectJob<S::File, S::Buf>>,
    direct_volumes: BTreeSet<u32>,
    completions: Vec<Completion>,
    end_pos: manifest::JournalPos,
    journal_bytes: u64,
    direct_bytes: u64,
}

impl<S: Storage> SealedRound<S> {
    /// Every file the round writes, with how many writes it gets.
    fn writes_per_file(&self) -> Vec<(Rc<S::File>, usize)> {
        let mut files: Vec<(Rc<S::File>, usize)> = Vec::new();
        let writes = self.journal_writes.iter().chain(
            self.direct
                .iter()
                .flat_map(|j| j.writes.iter().map(|(_, _, _, w)| w)),
        );
        for w in writes {
            match files.iter_mut().find(|(f, _)| Rc::ptr_eq(f, &w.file)) {
                Some((_, n)) => *n += 1,
                None => files.push((w.file.clone(), 1)),
            }
        }
        files
    }
}

pub(crate) struct State<S: Storage> {
    /// Looked up per batch and per round: dense by shard id (`crate::shard_table`).
    shards: crate::shard_table::ShardTable<ShardLog<S::Buf>>,
    alloc: ExtentAllocator,
    volumes: BTreeMap<u32, Rc<S::File>>,
    next_volume: u32,
    journal: Journal<S::File>,
    open: OpenRound<S::Buf>,
    open_id: u64,
    writing: bool,
    /// The round rate's token bucket (`pace`): rounds that may start now, as of when; and
    /// whether an appender is waiting for a token before leading the next round.
    round_tokens: f64,
    round_tokens_at: Option<std::time::Instant>,
    pacing: bool,
    /// The rate `pace` holds rounds to now (0: unpaced): `round_rate_max` at start, then
    /// whatever the core's adaptive pacer sets (`Store::set_round_rate`).
    round_rate: u32,
    synced_id: u64,
    /// The round whose sync phase started last (rounds sync one at a time, in order).
    sync_started_id: u64,
    durable_id: u64,
    poisoned: Option<String>,
    /// Staged bytes not yet written to their extents.
    pending_bytes: usize,
    /// Volumes written since the last checkpoint took them for its fdatasync (by
    /// write-behind, prewrite, or rounds in place: see `piece_written`).
    dirty_volumes: BTreeSet<u32>,
    since_checkpoint_bytes: u64,
    last_checkpoint_ms: i64,
    checkpoints: u64,
    checkpointing: bool,
    /// The snapshot the next routine checkpoint writes, and when it was taken (see
    /// `Store::checkpoint_due`): a busy store's checkpoint records the state of one
    /// interval before, which write-behind has written by then.
    pending_checkpoint: Option<(behind::Snapshot, i64)>,
    /// How many of the kept snapshot's targets write-behind has looked at (it writes them
    /// ahead of the checkpoint: `Store::write_behind_some`).
    settle_ahead_at: usize,
    /// A checkpoint is owed (replayed data, freed extents) even without journal traffic.
    checkpoint_owed: bool,
    /// An appender waits for what only a checkpoint frees (journal files, extents).
    checkpoint_urgent: bool,
    /// An appender waits for an extent size free space cannot give (fragmented or full).
    extent_wanted: bool,
    /// Shards queued for write-behind.
    behind_queue: std::collections::VecDeque<ShardKey>,
    /// `prepare_space` is running (it is not reentrant: the background task and tests may
    /// run steps concurrently).
    space_busy: bool,
    /// A journal file being zero-filled in the background, paced by rounds.
    fill: Option<behind::Fill<S>>,
    /// Zero-fill bytes the completed rounds allow now (see `behind::FILL_CREDIT_MAX`).
    fill_credit: u64,
    /// An appender waits for journal room: the fill goes at full speed.
    journal_starved: bool,
    /// Write-behind bytes the completed rounds allow now; negative after a piece larger
    /// than the credit (see `behind::BEHIND_CREDIT_MAX`).
    behind_credit: i64,
    /// Per volume, the units below which free space has been written (by the prewrite).
    prewritten: std::collections::BTreeMap<u32, u32>,
    /// Prewrite bytes the completed rounds allow now (a quarter of their bytes).
    prewrite_credit: i64,
    /// A unit the prewrite has written only this far into (it goes on there next).
    prewrite_part: Option<(ExtentId, u64)>,
    /// The prewrite's piece of zeros (made at its first step).
    prewrite_zeros: Option<Rc<S::Buf>>,
    /// When the last round completed (the prewrite runs freely while none do).
    last_round_ms: i64,
    /// Why the last attempt to create space (a volume, a journal file) failed, when, and
    /// how many bytes the file system had free then.
    space_error: Option<String>,
    last_space_attempt_ms: i64,
    free_at_space_error: u64,
    /// A refused write is looking whether space came back (`space_returned`).
    free_check_busy: bool,
    stopping: bool,
    /// Rounds over `STALLED_ROUND_US` not yet in a warning, and when the last one was logged.
    stalled_rounds: u64,
    stalled_round_warned_ms: i64,
    stats: StoreStats,
}

/// A round whose write and sync together take this long is logged (debug).
const SLOW_ROUND_US: u64 = 20_000;

/// A round whose write and sync together take this long held its acknowledgements long
/// enough to show in any client's tail: a warning, at most one per `STALL_WARN_EVERY_MS`
/// per store (with how many such rounds it covers), so that a pause a client sees can be
/// told apart from one of the executor (`runtime`'s lateness warning) or the network.
const STALLED_ROUND_US: u64 = 50_000;

/// Warnings of stalled rounds (and of a late executor, `runtime`) at most this often.
pub(crate) const STALL_WARN_EVERY_MS: i64 = 10_000;

/// O_DSYNC rounds written at once (sealed and not yet durable), at most.
const DSYNC_ROUNDS_IN_FLIGHT: u64 = 2;

/// Rounds that may start back to back before `round_rate_max` paces them.
const ROUND_BURST: f64 = 8.0;

/// A store. See the module docs for the write path and the concurrency contract.
pub struct Store<S: Storage> {
    storage: Rc<S>,
    cfg: StoreConfig,
    clock: ClockRef,
    st: RefCell<State<S>>,
    /// Rounds sealed, written or completed, space freed, memory released: appenders of the
    /// open round and the checkpoint wait here.
    changed: Notify,
    /// A round completed: appenders of sealed rounds wait here.
    round_done: Notify,
    /// A piece reached its extent, or a round failed: an O_DSYNC round's piece that shares
    /// a block with one the round before is still writing waits here.
    piece_done: Notify,
    /// Wakes the background task.
    work: Notify,
}

fn poisoned(st: &State<impl Storage>) -> Result<(), StoreError> {
    match &st.poisoned {
        Some(p) => Err(StoreError::Poisoned(p.clone())),
        None => Ok(()),
    }
}

/// Extra journal bytes a staged batch may bring with it (a roll and a direct entry).
const ENTRY_SLACK_BYTES: usize = 2 * (ENTRY_HEADER_LEN + 48);

/// How long a failed attempt to create space is trusted before the next try.
pub(crate) const SPACE_RETRY_MS: i64 = 1000;

/// Long reads from a volume go out in pieces of this size, all in flight at once.
const READ_PIECE_BYTES: usize = 1 << 20;

/// Staging buffers start this small (an idle shard's first batch).
const STAGING_BYTES_MIN: usize = 16 << 10;

impl<S: Storage> Store<S> {
    pub fn config(&self) -> &StoreConfig {
        &self.cfg
    }

    pub fn stats(&self) -> StoreStats {
        self.st.borrow().stats
    }

    pub fn is_poisoned(&self) -> Option<String> {
        self.st.borrow().poisoned.clone()
    }

    /// Staged bytes not yet written to extents (the memory the store holds for them).
    pub fn pending_bytes(&self) -> usize {
        self.st.borrow().pending_bytes
    }

    /// Bytes of memory the shards' buffers hold (a scan: for tests and benchmarks).
    pub fn memory_bytes(&self) -> usize {
        self.st
            .borrow()
            .shards
            .values()
            .map(ShardLog::mem_bytes)
            .sum()
    }

    /// Volumes and journal files this store has.
    pub fn file_count(&self) -> usize {
        let st = self.st.borrow();
        st.volumes.len() + st.journal.slots.iter().filter(|s| s.file.is_some()).count()
    }

    /// Registers a shard (a new stream's, or one placed here). No I/O: a shard owns
    /// nothing on disk until it is written.
    pub fn add_shard(&self, key: ShardKey) {
        let shards = &mut self.st.borrow_mut().shards;
        if !shards.contains_key(&key) {
            shards.insert(key, ShardLog::new(key.stream_id, key.shard_id, 0, 0));
        }
    }

    /// Gives a shard its stream's data keys (encryption at rest), or takes them away
    /// (`None`: the stream was never encrypted). New batches are sealed under the current
    /// epoch's key from the next one staged; reads open sealed batches under theirs.
    pub fn set_keys(&self, key: ShardKey, keys: Option<Arc<StreamKeys>>) {
        if let Some(log) = self.st.borrow_mut().shards.get_mut(&key) {
            log.keys = keys;
        }
    }

    pub fn has_shard(&self, key: ShardKey) -> bool {
        self.st.borrow().shards.contains_key(&key)
    }

    /// Drops a shard (its stream was deleted): its extents are freed after the next
    /// checkpoint; readers waiting on it are woken.
    pub fn drop_shard(&self, key: ShardKey) {
        let mut st = self.st.borrow_mut();
        let Some(log) = st.shards.remove(&key) else {
            return;
        };
        for e in &log.extents {
            st.pending_bytes -= (e.end - e.written_end.min(e.end)) as usize;
            st.alloc.free_later(e.id, e.order);
        }
        st.checkpoint_owed = true;
        log.changed.notify_all();
        drop(st);
        self.work.notify_all();
    }

    /// The signal a long-polling reader of `key` waits on.
    pub fn changed(&self, key: ShardKey) -> Result<Rc<Notify>, StoreError> {
        let st = self.st.borrow();
        let log = st.shards.get(&key).ok_or(StoreError::UnknownShard(key))?;
        Ok(log.changed.clone())
    }

    /// Wakes every reader waiting on any shard (shutdown).
    pub fn wake_readers(&self) {
        for log in self.st.borrow().shards.values() {
            log.changed.notify_all();
        }
    }

    pub fn shard_info(&self, key: ShardKey) -> Result<ShardInfo, StoreError> {
        let st = self.st.borrow();
        let log = st.shards.get(&key).ok_or(StoreError::UnknownShard(key))?;
        Ok(ShardInfo {
            first_seq: log.trim_horizon().min(log.durable_seq),
            next_seq: log.durable_seq,
            latest_ts_ms: log.durable_last_ts_ms,
            extents: log.extents.len(),
            bytes: log
                .extents
                .iter()
                .map(|e| e.durable_end.saturating_sub(EXTENT_DATA_START))
                .sum(),
            disk_bytes: log.extents.iter().map(|e| e.size).sum(),
        })
    }

    pub fn durable_seq(&self, key: ShardKey) -> Result<u64, StoreError> {
        Ok(self.shard_info(key)?.next_seq)
    }

    pub fn trim_horizon(&self, key: ShardKey) -> Result<u64, StoreError> {
        Ok(self.shard_info(key)?.first_seq)
    }

    // ---------------------------------------------------------------- appends

    /// Appends one checked producer batch (see `protocol::batch::check_producer_batch`) to
    /// a shard and returns once it is durable.
    pub async fn append(
        &self,
        key: ShardKey,
        batch: &[u8],
        record_count: u32,
    ) -> Result<AppendAck, StoreError> {
        debug_assert_eq!(
            BatchHeader::decode(batch).map(|h| h.record_count),
            Ok(record_count)
        );
        self.admit(key, batch.len()).await?;
        let (ack, round_id) = self.stage(key, batch, record_count, self.clock.now_ms())?;
        self.wait_round(round_id).await?;
        Ok(ack)
    }

    /// Appends one batch to each of several shards (or several to one, in order) and
    /// returns once all are durable: one result per batch, in order. Staging is the same as
    /// `append`'s, but the caller waits once for the last round instead of once per batch
    /// (a put spread over thousands of shards: `many-shards`).
    pub async fn append_many(
        &self,
        items: &[(ShardKey, &[u8], u32)],
    ) -> Vec<Result<AppendAck, StoreError>> {
        let mut staged: Vec<Result<(AppendAck, u64), StoreError>> = Vec::with_capacity(items.len());
        let mut last: Option<u64> = None;
        // One clock reading for the whole call (thousands of single-record batches of a
        // `many-shards` put), read again only after a wait.
        let mut now = self.clock.now_ms();
        for (i, &(key, batch, record_count)) in items.iter().enumerate() {
            prefetch_shards(
                &self.st.borrow().shards,
                |j| items.get(j).map(|t| t.0),
                i,
                Touches::Put,
            );
            debug_assert_eq!(
                BatchHeader::decode(batch).map(|h| h.record_count),
                Ok(record_count)
            );
            // What this call staged waits for nobody until it returns: before waiting for
            // room (which may need those rounds to go out), see them through.
            let r = match self.admission(key, batch.len(), now) {
                Ok(Wait::None)
                    if batch.len() + crate::crypto::TAG_BYTES <= self.cfg.max_batch_bytes() =>
                {
                    self.stage(key, batch, record_count, now)
                }
                Err(e) => Err(e),
                Ok(_) => {
                    if let Some(last) = last {
                        let _ = self.wait_round(last).await;
                    }
                    let admitted = self.admit(key, batch.len()).await;
                    now = self.clock.now_ms();
                    match admitted {
                        Ok(()) => self.stage(key, batch, record_count, now),
                        Err(e) => Err(e),
                    }
                }
            };
            if let Ok((_, id)) = &r {
                last = last.max(Some(*id));
            }
            staged.push(r);
        }
        if let Some(last) = last {
            // Rounds complete in order: once the last is through, every earlier one is.
            let _ = self.wait_round(last).await;
        }
        let st = self.st.borrow();
        staged
            .into_iter()
            .map(|r| {
                let (ack, id) = r?;
                if st.durable_id >= id {
                    Ok(ack)
                } else {
                    poisoned(&st)?;
                    Err(StoreError::Poisoned("round failed".into()))
                }
            })
            .collect()
    }

    /// What an append of `len` bytes to `key` has to wait for now, if anything.
    fn admission(&self, key: ShardKey, len: usize, now: i64) -> Result<Wait, StoreError> {
        let st = self.st.borrow();
        poisoned(&st)?;
        if st.stopping {
            return Err(StoreError::ShuttingDown);
        }
        let log = st.shards.get(&key).ok_or(StoreError::UnknownShard(key))?;
        let len = log.stored_len(len);
        let round_full = self.round_busy(&st) && st.open.batch_bytes >= self.cfg.round_bytes_max;
        let memory_full =
            st.pending_bytes + len > self.cfg.memory_bytes_max && st.pending_bytes > 0;
        let padded = align_up((st.open.len + entry_len(len) + ENTRY_SLACK_BYTES) as u64);
        let journal_full = !st.journal.has_room(padded);
        let needs_roll = log.needs_roll(len as u64, now, self.cfg.segment_age_max_ms);
        let no_extent = needs_roll && !st.alloc_possible(self.roll_order(log, len));
        let space_failed_recently =
            st.space_error.is_some() && now - st.last_space_attempt_ms < SPACE_RETRY_MS;
        if (journal_full || no_extent) && space_failed_recently {
            // Nothing in flight can make room: the file system is full. A checkpoint
            // frees journal files only below the durable position; if there are
            // none, the ring needs a new file, which the file system refused.
            let j = &st.journal;
            let freeable = j.slots.iter().enumerate().any(|(i, s)| {
                s.file.is_some() && Some(i) != j.active && s.content_seq < j.durable_pos.file_seq
            });
            // A journal file being filled will make room (the appender starves it into
            // filling at full speed), so only without one is a full journal final.
            let filling = st.fill.is_some();
            if journal_full && !freeable && j.free_slots() == 0 && !filling {
                return Err(StoreError::StorageFull);
            }
            let journal_stuck =
                journal_full && j.free_slots() == 0 && j.slots.iter().all(|s| s.file.is_some());
            if !st.checkpointing && (no_extent || (!journal_stuck && !filling)) {
                return Err(StoreError::StorageFull);
            }
        }
        let needs_tail = log.active().is_some_and(|a| a.staging.is_none()) && !needs_roll;
        let wait = if needs_tail {
            Wait::LoadTail
        } else if round_full {
            Wait::Round
        } else if memory_full || journal_full || no_extent {
            Wait::Background {
                urgent: journal_full || (no_extent && st.quarantined_units() > 0),
                extent: no_extent,
            }
        } else {
            Wait::None
        };
        Ok(wait)
    }

    /// Waits until a batch of `len` bytes for `key` may be staged now (room in the round,
    /// memory, journal, an extent; the shard's tail loaded), or fails.
    async fn admit(&self, key: ShardKey, len: usize) -> Result<(), StoreError> {
        if len + crate::crypto::TAG_BYTES > self.cfg.max_batch_bytes() {
            return Err(StoreError::BatchTooLarge(len));
        }
        // What this append waited for so far (each reason counted once per append).
        let mut waited = 0u8;
        loop {
            let wait = match self.admission(key, len, self.clock.now_ms()) {
                Err(StoreError::StorageFull) if self.space_returned().await => continue,
                wait => wait?,
            };

            match wait {
                Wait::None => break,
                Wait::Round => {
                    self.count_wait(&mut waited, WaitReason::Round);
                    self.changed.wait().await
                }
                Wait::Background { urgent, extent } => {
                    let w = self.changed.wait();
                    {
                        // (Urgent without an extent wanted: the journal is full.)
                        self.count_wait(
                            &mut waited,
                            if extent {
                                WaitReason::Extent
                            } else if urgent {
                                WaitReason::Journal
                            } else {
                                WaitReason::Memory
                            },
                        );
                        let mut st = self.st.borrow_mut();
                        st.checkpoint_urgent |= urgent;
                        st.extent_wanted |= extent;
                        st.journal_starved |= urgent && st.fill.is_some();
                    }
                    self.work.notify_all();
                    w.await;
                }
                Wait::LoadTail => {
                    self.count_wait(&mut waited, WaitReason::Tail);
                    self.load_tail(key).await?
                }
            }
        }
        Ok(())
    }

    /// Counts an append's wait for `reason`, once per append (`waited`: the reasons counted
    /// so far, one bit each).
    fn count_wait(&self, waited: &mut u8, reason: WaitReason) {
        let bit = 1u8 << reason as u8;
        if *waited & bit == 0 {
            *waited |= bit;
            self.st.borrow_mut().stats.waits[reason as usize] += 1;
        }
    }

    /// A failed attempt to create space is trusted for `SPACE_RETRY_MS`: writes that need
    /// space are refused meanwhile, without a try at each. But space may come back sooner
    /// (a file deleted beside the store). A write about to be refused looks at the file
    /// system (one at a time; others wait for its answer); if a largest extent more is free
    /// than at the failure, the background tries again at once and the write waits for it.
    /// So writes resume with the space, rather than flapping for a second between success
    /// (a batch that fits its shard's extent) and StorageFull (one that needs a new one).
    /// Returns whether admission should be looked at again.
    async fn space_returned(&self) -> bool {
        let busy = {
            let st = self.st.borrow();
            if st.space_error.is_none() {
                return false;
            }
            st.free_check_busy
        };
        if busy {
            self.changed.wait().await;
            return true;
        }
        self.st.borrow_mut().free_check_busy = true;
        // Also if this future is dropped half-way (its request's connection went away): a
        // stuck flag would keep every later refused write waiting for an answer.
        let done = crate::notify::OnDrop::new(|| {
            self.st.borrow_mut().free_check_busy = false;
            // Those waiting for this answer look again (and, if refused, look themselves).
            self.changed.notify_all();
        });
        let free = self.storage.free_bytes(&self.cfg.dir).await;
        let mut st = self.st.borrow_mut();
        let again = match free {
            // Made meanwhile: look again.
            _ if st.space_error.is_none() => true,
            Ok(free)
                if free
                    >= st
                        .free_at_space_error
                        .saturating_add(self.cfg.extent_bytes_max) =>
            {
                st.last_space_attempt_ms = i64::MIN / 2;
                true
            }
            _ => false,
        };
        drop(st);
        if again {
            self.work.notify_all();
        }
        drop(done);
        again
    }

    /// Size order of the next extent of a shard: doubles while the shard fills extents,
    /// and is large enough for the batch.
    fn roll_order(&self, log: &ShardLog<S::Buf>, len: usize) -> u32 {
        let need = (len as u64 + EXTENT_DATA_START).div_ceil(self.cfg.extent_bytes_min);
        let need_order = need.next_power_of_two().trailing_zeros();
        log.next_order.max(need_order).min(self.cfg.max_order())
    }

    /// Reads the partial last block of a recovered shard's active extent into a staging
    /// buffer, so appends can continue it.
    async fn load_tail(&self, key: ShardKey) -> Result<(), StoreError> {
        let (file, pos, at) = {
            let st = self.st.borrow();
            let log = st.shards.get(&key).ok_or(StoreError::UnknownShard(key))?;
            let Some(a) = log.active() else { return Ok(()) };
            if a.staging.is_some() {
                return Ok(());
            }
            let at = align_down(a.end);
            let file = st.volume(a.id)?;
            (file, self.volume_pos(a.id) + at, at)
        };
        let want = (self.cfg_end_of(key)? - at) as usize;
        let bytes = if want > 0 {
            file.read_at(pos, want).await?.as_ref().to_vec()
        } else {
            Vec::new()
        };
        let mut st = self.st.borrow_mut();
        let log = st
            .shards
            .get_mut(&key)
            .ok_or(StoreError::UnknownShard(key))?;
        let Some(a) = log.extents.back_mut() else {
            return Ok(());
        };
        if a.staging.is_some() || align_down(a.end) != at || bytes.len() != (a.end - at) as usize {
            return Ok(()); // someone else loaded it, or it changed: re-check
        }
        let mut buf = self.storage.alloc_buf(STAGING_BYTES_MIN);
        buf.as_mut()[..bytes.len()].copy_from_slice(&bytes);
        a.staging = Some(shard::Staging {
            pos: at,
            len: bytes.len(),
            buf,
        });
        Ok(())
    }

    fn cfg_end_of(&self, key: ShardKey) -> Result<u64, StoreError> {
        let st = self.st.borrow();
        let log = st.shards.get(&key).ok_or(StoreError::UnknownShard(key))?;
        Ok(log.active().map_or(0, |a| a.end))
    }

    /// Byte position of an extent in its volume.
    fn volume_pos(&self, id: ExtentId) -> u64 {
        u64::from(id.unit()) * self.cfg.extent_bytes_min
    }

    /// Stages a batch (synchronous, so sequence numbers, file order and journal order all
    /// agree). Returns the ack and the round that makes it durable.
    fn stage(
        &self,
        key: ShardKey,
        batch: &[u8],
        record_count: u32,
        now: i64,
    ) -> Result<(AppendAck, u64), StoreError> {
        let cfg = &self.cfg;
        let storage = &*self.storage;
        let alloc_buf = |n: usize| storage.alloc_buf(n);
        let mut guard = self.st.borrow_mut();
        let st = &mut *guard;
        let open_id = st.open_id;
        let log = st
            .shards
            .get_mut(&key)
            .ok_or(StoreError::UnknownShard(key))?;
        let len = log.stored_len(batch.len());
        if log.round_id != open_id {
            // A shard that was hot in the round before goes in place from its first batch.
            log.prev_round_bytes = if log.round_id + 1 == open_id {
                log.round_bytes
            } else {
                0
            };
            log.round_id = open_id;
            log.round_bytes = 0;
            st.open.touched.push(key);
        }
        if log.needs_roll(len as u64, now, cfg.segment_age_max_ms) {
            let order = self.roll_order(log, len);
            let id = st.alloc.alloc(order).ok_or(StoreError::StorageFull)?;
            // The shard grows its extents while it fills them; an extent closed by age
            // means a slow shard, which goes back down.
            if let Some(a) = log.active() {
                let full = a.end + len as u64 > a.size;
                log.next_order = if full {
                    (a.order + 1).min(cfg.max_order())
                } else {
                    a.order.saturating_sub(1)
                };
            }
            let was_direct = log.direct.take();
            if let Some(d) = was_direct {
                let a = log.active().expect("direct implies an active extent");
                let entry = Direct {
                    extent: d.extent,
                    from_offset: d.offset,
                    to_offset: a.end,
                    from_seq: d.seq,
                    next_seq: log.next_seq,
                };
                let mut e = [0u8; ENTRY_HEADER_LEN + DIRECT_BODY_LEN];
                encode_direct(&mut e, key, &entry);
                st.open.put_entry(
                    &e[..ENTRY_HEADER_LEN],
                    &e[ENTRY_HEADER_LEN..],
                    cfg.write_chunk_bytes_max,
                    &alloc_buf,
                );
            }
            let nonce = rand::random::<u64>() | 1;
            let size = cfg.extent_size(order);
            let staging_len =
                align_up((len + BLOCK_BYTES) as u64).max(STAGING_BYTES_MIN as u64) as usize;
            log.open_extent(
                id,
                order,
                size,
                nonce,
                now,
                alloc_buf(
                    staging_len
                        .min(cfg.write_chunk_bytes_max)
                        .max(align_up((len + BLOCK_BYTES) as u64) as usize),
                ),
            );
            let roll = Roll {
                extent: id,
                order,
                base_seq: log.next_seq,
                nonce,
                created_ms: now,
            };
            let mut e = [0u8; ENTRY_HEADER_LEN + ROLL_BODY_LEN];
            encode_roll(&mut e, key, &roll);
            st.open.put_entry(
                &e[..ENTRY_HEADER_LEN],
                &e[ENTRY_HEADER_LEN..],
                cfg.write_chunk_bytes_max,
                &alloc_buf,
            );
            st.pending_bytes += BLOCK_BYTES;
            st.stats.rolls += 1;
            if was_direct.is_some() {
                log.direct = Some(DirectStart {
                    extent: id,
                    offset: EXTENT_DATA_START,
                    seq: log.next_seq,
                });
            }
            if log.extents.len() > 1 && !log.queued_behind {
                // The closed extent's bytes can go to disk whole.
                log.queued_behind = true;
                st.behind_queue.push_back(key);
            }
        }
        if !log.staging_room(len) {
            let a = log.extents.back_mut().expect("active extent");
            let s = a.staging.as_ref().expect("staging");
            let carry = (a.end - align_down(a.end)) as usize;
            let want = (s.buf.as_ref().len() * 2)
                .clamp(STAGING_BYTES_MIN, cfg.write_chunk_bytes_max)
                .max(align_up((carry + len) as u64) as usize);
            let upto = align_down(a.end);
            seal_staging(a, upto, alloc_buf(want));
        }
        let hot = log.prev_round_bytes >= cfg.direct_write_bytes_min
            || log.round_bytes + len >= cfg.direct_write_bytes_min;
        // Not while a write-behind of the shard is in flight (one writer of a shard's blocks
        // at a time). A direct write of the round before may still be syncing: this round
        // writes only after that one's writes completed.
        let direct = log.direct.is_some() || (hot && !log.writing_behind);
        if direct && log.direct.is_none() {
            let a = log.active().expect("active extent");
            log.direct = Some(DirectStart {
                extent: a.id,
                offset: a.end,
                seq: log.next_seq,
            });
            st.open.direct.push(key);
        }
        let staged: Staged = log.stage(batch, record_count, now, cfg.index_interval_bytes);
        log.round_bytes += len;
        st.open.batch_bytes += len;
        st.pending_bytes += len;
        if !direct {
            let mut h = [0u8; ENTRY_HEADER_LEN];
            encode_batch_entry_header(&mut h, key, len);
            st.open.put_entry(
                &h,
                log.staged_bytes(&staged),
                cfg.write_chunk_bytes_max,
                &alloc_buf,
            );
        }
        let unwritten = log.active().map_or(0, |a| a.end - a.mem_start());
        if unwritten >= cfg.write_behind_bytes as u64 && !log.queued_behind && log.direct.is_none()
        {
            log.queued_behind = true;
            st.behind_queue.push_back(key);
            self.work.notify_all();
        }
        st.stats.appends += 1;
        Ok((
            AppendAck {
                base_seq: staged.base_seq,
                record_count,
                ts_ms: staged.ts_ms,
            },
            open_id,
        ))
    }

    /// Waits until round `round_id` is durable (or failed), leading its flush if nobody
    /// else is writing.
    async fn wait_round(&self, round_id: u64) -> Result<(), StoreError> {
        loop {
            let lead = {
                let st = self.st.borrow();
                if st.durable_id >= round_id {
                    return Ok(());
                }
                if st.synced_id >= round_id {
                    poisoned(&st)?;
                    return Err(StoreError::Poisoned("round failed".into()));
                }
                // At most one round waits for its sync turn: a new round is sealed only once
                // the one before it is syncing. At low load this merges what would be many
                // tiny rounds (each paying a device flush) into fewer, fuller ones.
                let turn = match self.cfg.round_sync {
                    RoundSync::Fdatasync => st.sync_started_id + 1 >= round_id,
                    // At most `DSYNC_ROUNDS_IN_FLIGHT` O_DSYNC rounds in flight: this one
                    // starts once the one that many before it is durable.
                    RoundSync::Dsync => st.synced_id + DSYNC_ROUNDS_IN_FLIGHT >= round_id,
                };
                !st.writing && st.open_id == round_id && turn
            };
            if lead {
                if self.st.borrow().pacing {
                    self.changed.wait().await;
                    continue;
                }
                if let Some(wait) = self.pace() {
                    // One appender waits for a token, then leads; the others wait for it
                    // (and look again when it is done, or dropped).
                    self.st.borrow_mut().pacing = true;
                    let _pacing = crate::notify::OnDrop::new(|| {
                        self.st.borrow_mut().pacing = false;
                        self.changed.notify_all();
                    });
                    self.storage.pause(wait).await;
                    continue;
                }
                self.flush_round().await;
            } else if self.st.borrow().open_id > round_id {
                // Sealed: only its completion matters. (Waking every appender at every
                // state change made thousands of waiters spin: `many-shards`.)
                self.round_done.wait().await;
            } else {
                self.changed.wait().await;
            }
        }
    }

    /// How long a would-be leader waits before sealing the open round (None: lead now):
    /// rounds start at most `round_rate_max` a second on average, with bursts of up to
    /// `ROUND_BURST` (a closed-loop producer below the rate never waits).
    ///
    /// Why: at low load rounds go back to back, one write and one fdatasync per sync
    /// duration (2,700 a second here for 8,000 records/s). Each is cheap for the disk, but
    /// on a virtual machine the host's emulation of every I/O is paid from the VM's CPU
    /// quota: at ~2,600 flushes a second this VM was stopped for 5-23 ms in most 100 ms
    /// periods (both vCPUs, whatever ran on them), at ~1,000 a second never
    /// (BENCHMARKS.md, "Pacing rounds"). Bigger, fewer rounds cost the same disk time.
    fn pace(&self) -> Option<std::time::Duration> {
        let mut st = self.st.borrow_mut();
        if st.round_rate == 0 {
            return None;
        }
        let rate = f64::from(st.round_rate);
        let now = std::time::Instant::now();
        let Some(at) = st.round_tokens_at else {
            st.round_tokens = ROUND_BURST;
            st.round_tokens_at = Some(now);
            return None;
        };
        st.round_tokens = (st.round_tokens + (now - at).as_secs_f64() * rate).min(ROUND_BURST);
        st.round_tokens_at = Some(now);
        (st.round_tokens < 1.0)
            .then(|| std::time::Duration::from_secs_f64((1.0 - st.round_tokens) / rate))
    }

    /// Paces rounds to `rate` a second from now on (0: unpaced). A leader already waiting
    /// for a token waits out the delay it was given, then asks again.
    pub fn set_round_rate(&self, rate: u32) {
        let mut st = self.st.borrow_mut();
        if st.round_rate == 0 && rate > 0 {
            // Unpaced until now: the bucket starts full, as at start.
            st.round_tokens_at = None;
        }
        st.round_rate = rate;
    }

    /// The rate rounds are paced to now (0: unpaced).
    pub fn round_rate(&self) -> u32 {
        self.st.borrow().round_rate
    }

    /// Whether the open round cannot be sealed now (so it takes at most `round_bytes_max`):
    /// a round is being written (fdatasync rounds) or sealed, or two O_DSYNC rounds are in
    /// flight.
    fn round_busy(&self, st: &State<S>) -> bool {
        st.writing
            || (self.cfg.round_sync == RoundSync::Dsync
                && st.open_id > st.synced_id + DSYNC_ROUNDS_IN_FLIGHT)
    }

    /// Makes everything staged so far durable (shutdown, tests, the checkpoint).
    pub async fn flush(&self) -> Result<(), StoreError> {
        let round_id = {
            let st = self.st.borrow();
            if st.open.is_empty() {
                st.open_id - 1
            } else {
                st.open_id
            }
        };
        self.wait_round(round_id).await
    }

    /// Runs one round: seal, write (journal and direct writes concurrently), then once the
    /// previous round's sync finished, fdatasync the journal file and the volumes written in
    /// place, and publish.
    ///
    /// Why the overlap is safe: round `n + 1` is written only after round `n`'s writes
    /// completed. Journal rounds never share blocks. A direct write may rewrite a block that
    /// round `n` wrote (a shard's partial last block), with the same bytes for round `n`'s
    /// part, so a crash (even a torn block) leaves round `n`'s records intact. Syncs stay in
    /// order, so a write-back error is seen by the round it belongs to or an earlier one.
    ///
    /// O_DSYNC rounds (`RoundSync::Dsync`): a file written once in the round is durable when
    /// its write completes; the sync phase fdatasyncs only files written more than once,
    /// still in order of rounds. Round `n + 1` is sealed and written while round `n`'s
    /// writes are in flight (at most two rounds at once), except that a piece sharing a
    /// block with a piece of the same shard that round `n` is still writing waits for it
    /// (`earlier_pieces_written`), so the newer bytes of a block always land last. Rounds
    /// complete in order, and a round after a failed one fails too (the store is
    /// poisoned), so no acknowledgement depends on a round that is not durable. A crash may
    /// leave round `n + 1` durable and round `n` not; recovery then stops at round `n` as
    /// it would for any torn round, and nothing of round `n + 1` was acknowledged.
    async fn flush_round(&self) {
        // Claim the write phase, then let every task that is already runnable (appenders
        // woken by the last round) stage before the round is sealed.
        self.st.borrow_mut().writing = true;
        futures_lite::future::yield_now().await;
        let sealed = self.seal_round();
        // Appenders held back by a full open round may stage into the fresh one now.
        self.changed.notify_all();
        let Some(sealed) = sealed else {
            self.st.borrow_mut().writing = false;
            self.changed.notify_all();
            return;
        };
        let started = std::time::Instant::now();
        let dsync = self.cfg.round_sync == RoundSync::Dsync;
        if dsync {
            // Sealed: the next round may lead now (`wait_round`).
            self.st.borrow_mut().writing = false;
            self.changed.notify_all();
        }
        // O_DSYNC rounds: how many writes each file gets (one: an O_DSYNC write; more: plain
        // writes, then the sync phase's fdatasync). Empty for fdatasync rounds.
        let per_file = if dsync {
            sealed.writes_per_file()
        } else {
            Vec::new()
        };
        let already_failed = self.st.borrow().poisoned.is_some();
        let mut result = if already_failed {
            Err(StoreError::Poisoned("an earlier round failed".into()))
        } else {
            self.write_round(&sealed, &per_file).await
        };
        let write_us = started.elapsed().as_micros() as u64;
        if !dsync {
            self.st.borrow_mut().writing = false;
            self.changed.notify_all();
        }
        while self.st.borrow().synced_id + 1 < sealed.id {
            self.changed.wait().await;
        }
        self.st.borrow_mut().sync_started_id = sealed.id;
        self.changed.notify_all();
        if result.is_ok() {
            poisoned(&self.st.borrow())
                .map_err(|e| result = Err(e))
                .ok();
        }
        let sync_started = std::time::Instant::now();
        let mut syncs = 0;
        if result.is_ok() {
            let files: Vec<Rc<S::File>> = if dsync {
                // A file written once was written with O_DSYNC: durable already. The others
                // get their fdatasync.
                syncs += per_file.iter().filter(|(_, n)| *n == 1).count() as u64;
                per_file
                    .iter()
                    .filter(|(_, n)| *n > 1)
                    .map(|(f, _)| f.clone())
                    .collect()
            } else {
                let mut files = vec![sealed.journal_file.clone()];
                let st = self.st.borrow();
                for v in &sealed.direct_volumes {
                    if let Some(f) = st.volumes.get(v) {
                        files.push(f.clone());
                    }
                }
                files
            };
            syncs += files.len() as u64;
            for r in join_all(files.iter().map(|f| f.fdatasync())).await {
                if let Err(e) = r {
                    result = Err(e.into());
                }
            }
        }
        let mut sync_us = sync_started.elapsed().as_micros() as u64;
        let mut write_us = write_us;
        if dsync {
            // The writes included the flushes (O_DSYNC): count them as flush time
            // (`flush_latency`, `flush_seconds`); `syncs` counts each file made durable,
            // by its O_DSYNC write or its fdatasync.
            sync_us += write_us;
            write_us = 0;
        }
        if write_us + sync_us >= SLOW_ROUND_US {
            // Where an acknowledgement tail comes from (RUST_LOG=spate_engine=debug): the
            // round's own size, and whether a checkpoint was writing beside it.
            tracing::debug!(
                store = self.cfg.index,
                round = sealed.id,
                journal_bytes = sealed.journal_bytes,
                direct_bytes = sealed.direct_bytes,
                write_us,
                sync_us,
                syncs,
                checkpointing = self.st.borrow().checkpointing,
                "slow round"
            );
        }
        if write_us + sync_us >= STALLED_ROUND_US {
            let now = self.clock.now_ms();
            let mut st = self.st.borrow_mut();
            st.stalled_rounds += 1;
            if now - st.stalled_round_warned_ms >= STALL_WARN_EVERY_MS {
                let rounds = std::mem::take(&mut st.stalled_rounds);
                st.stalled_round_warned_ms = now;
                tracing::warn!(
                    store = self.cfg.index,
                    round = sealed.id,
                    write_ms = write_us / 1000,
                    sync_ms = sync_us / 1000,
                    syncs,
                    journal_bytes = sealed.journal_bytes,
                    direct_bytes = sealed.direct_bytes,
                    rounds,
                    "a round took over 50 ms to write and make durable, and its acknowledgements waited as long: the disk, unless the core's executor was late at the same time (its own warning) (rounds: how many since the last such line)"
                );
            }
        }
        self.st.borrow_mut().stats.round_buckets
            [crate::metrics::latency_bucket_us(started.elapsed().as_micros() as u64)] += 1;
        self.complete_round(sealed, result, write_us, sync_us, syncs);
        self.round_done.notify_all();
        self.changed.notify_all();
    }

    /// Seals the open round: finishes its journal payload (final direct entries, header,
    /// padding), places it in the journal, and collects the in-place writes of hot shards.
    fn seal_round(&self) -> Option<SealedRound<S>> {
        let cfg = &self.cfg;
        let storage = &*self.storage;
        let alloc_buf = |n: usize| storage.alloc_buf(n);
        let mut guard = self.st.borrow_mut();
        let st = &mut *guard;
        if st.open.is_empty() {
            return None;
        }
        let id = st.open_id;
        // The next round's first journal buffer as large as this round, or most of the
        // largest lately (rounds of one and of two calls alternate under load); a round's
        // bytes are bounded by `round_bytes_max`, plus a batch that started it past that.
        let first_chunk = st
            .open
            .len
            .max(st.open.first_chunk / 8 * 7)
            .min(self.cfg.round_bytes_max);
        let mut round = std::mem::replace(&mut st.open, OpenRound::new(first_chunk));
        st.open_id += 1;
        // A token of the round rate (`pace`; the flush of shutdown and checkpoints counts).
        if st.round_rate > 0 {
            st.round_tokens -= 1.0;
        }
        // Hot shards: a final direct entry, and their unwritten bytes sealed for writing.
        let mut direct = Vec::new();
        let mut direct_volumes = BTreeSet::new();
        let mut direct_bytes = 0u64;
        for key in std::mem::take(&mut round.direct) {
            let Some(log) = st.shards.get_mut(&key) else {
                continue;
            };
            let Some(d) = log.direct.take() else { continue };
            let a = log.active().expect("active extent");
            let entry = Direct {
                extent: d.extent,
                from_offset: d.offset,
                to_offset: a.end,
                from_seq: d.seq,
                next_seq: log.next_seq,
            };
            direct_bytes += a.end - d.offset;
            let mut e = [0u8; ENTRY_HEADER_LEN + DIRECT_BODY_LEN];
            encode_direct(&mut e, key, &entry);
            round.put_entry(
                &e[..ENTRY_HEADER_LEN],
                &e[ENTRY_HEADER_LEN..],
                cfg.write_chunk_bytes_max,
                &alloc_buf,
            );
            let mut job = DirectJob {
                key,
                writes: Vec::new(),
            };
            let base: Vec<(ExtentId, u64)> = log
                .extents
                .iter()
                .filter(|e| e.written_end < e.end)
                .map(|e| (e.id, e.end))
                .collect();
            for (eid, end) in base {
                let e = log.extent_mut(eid).expect("listed");
                if e.staging.as_ref().is_some_and(|s| s.pos < end) {
                    let rest = (end - align_down(end)) as usize;
                    seal_padded(
                        e,
                        end,
                        alloc_buf(align_up(rest as u64 + 1).max(BLOCK_BYTES as u64) as usize),
                    );
                }
                let vol = st
                    .volumes
                    .get(&eid.volume())
                    .expect("extent in a volume")
                    .clone();
                direct_volumes.insert(eid.volume());
                let vpos = u64::from(eid.unit()) * cfg.extent_bytes_min;
                for p in e.pieces.iter_mut().filter(|p| !p.writing) {
                    p.writing = true;
                    job.writes.push((
                        eid,
                        p.pos,
                        p.pos + p.len as u64,
                        WriteJob {
                            file: vol.clone(),
                            buf: p.buf.clone(),
                            pos: vpos + p.pos,
                        },
                    ));
                }
            }
            log.direct_round = id;
            direct.push(job);
        }
        // What each shard of the round will be able to publish once it is durable.
        let mut completions = Vec::with_capacity(round.touched.len());
        for (k, key) in round.touched.iter().enumerate() {
            prefetch_shards(
                &st.shards,
                |j| round.touched.get(j).copied(),
                k,
                Touches::Seal,
            );
            if let Some(log) = st.shards.get(key) {
                if let Some(a) = log.active() {
                    completions.push(Completion {
                        key: *key,
                        extent: a.id,
                        end: a.end,
                        end_seq: log.next_seq,
                        last_ts_ms: log.last_ts_ms,
                    });
                }
            }
        }
        // The header, then padding to a block.
        let payload_len = round.len - ROUND_HEADER_LEN;
        let padded = align_up(round.len as u64);
        let placement = st.journal.place(padded, self.clock.now_ms());
        let header = RoundHeader {
            nonce: placement.nonce,
            round: placement.round,
            payload_len: payload_len as u32,
            entry_count: round.entries,
            payload_crc: round.crc,
        };
        header.encode(&mut round.chunks[0].as_mut()[..ROUND_HEADER_LEN]);
        let slot = &st.journal.slots[placement.slot];
        let file = slot.file.clone().expect("placed in an existing file");
        let mut journal_writes = Vec::new();
        if let Some(h) = placement.new_header {
            let mut b = alloc_buf(BLOCK_BYTES);
            h.encode_block(b.as_mut());
            journal_writes.push(WriteJob {
                file: file.clone(),
                buf: Rc::new(b),
                pos: 0,
            });
        }
        let mut pos = placement.pos;
        let mut left = padded as usize;
        let mut filled = round.len;
        for mut c in round.chunks {
            let cap = c.as_ref().len();
            let n = left.min(cap);
            // Zero the unused tail of the last chunk: padding is part of the round's bytes.
            let valid = filled.min(cap);
            c.as_mut()[valid..n].fill(0);
            filled = filled.saturating_sub(cap);
            c.trim(n);
            journal_writes.push(WriteJob {
                file: file.clone(),
                buf: Rc::new(c),
                pos,
            });
            pos += n as u64;
            left -= n;
            if left == 0 {
                break;
            }
        }
        assert_eq!(left, 0, "journal buffers cover the padded round");
        let end_pos = manifest::JournalPos {
            file_seq: placement.file_seq,
            offset: placement.pos + padded,
            round: placement.round + 1,
        };
        Some(SealedRound {
            id,
            journal_file: file,
            journal_writes,
            direct,
            direct_volumes,
            completions,
            end_pos,
            journal_bytes: padded,
            direct_bytes,
        })
    }

    /// The write phase of a round: journal buffers concurrently; each hot shard's pieces in
    /// order (a padded piece shares its last block with the next), shards concurrently.
    ///
    /// O_DSYNC rounds write a file that gets one write in the round with O_DSYNC, and the
    /// others plainly (the sync phase fdatasyncs them): an O_DSYNC write makes only its own
    /// bytes durable, so a file written many times would pay a device flush per write
    /// (`max-100b`: 9.3 flushes a round, 27 % fewer records a second than with fdatasync).
    /// `per_file`: `SealedRound::writes_per_file` for O_DSYNC rounds, empty otherwise.
    async fn write_round(
        &self,
        r: &SealedRound<S>,
        per_file: &[(Rc<S::File>, usize)],
    ) -> Result<(), StoreError> {
        let storage = &*self.storage;
        let dsync = self.cfg.round_sync == RoundSync::Dsync;
        let durable = |f: &Rc<S::File>| per_file.iter().any(|(o, n)| *n == 1 && Rc::ptr_eq(o, f));
        let journal = join_all(
            r.journal_writes
                .iter()
                .map(|w| write_fully(storage, &*w.file, w.buf.clone(), w.pos, durable(&w.file))),
        );
        // A shard's pieces go to the disk at once, except that a piece sharing a block with
        // the one before it (a padded piece is rewritten by its successor) waits for it: so
        // a wave is a run of pieces that share no block. They are marked written in order,
        // up to the first that failed. (One after another, 256 KiB at a time, rounds of 6 MB
        // for four shards wrote at ~1 GB/s.)
        let direct = join_all(r.direct.iter().map(|job| async move {
            let mut start = 0;
            while start < job.writes.len() {
                let mut end = start + 1;
                while end < job.writes.len() {
                    let (peid, _, pto, _) = &job.writes[end - 1];
                    let (eid, from, _, _) = &job.writes[end];
                    if eid == peid && *from < align_up(*pto) {
                        break;
                    }
                    end += 1;
                }
                let wave = &job.writes[start..end];
                if dsync {
                    self.earlier_pieces_written(job, wave).await?;
                }
                let done = join_all(wave.iter().map(|(_, _, _, w)| {
                    write_fully(storage, &*w.file, w.buf.clone(), w.pos, durable(&w.file))
                }))
                .await;
                for ((eid, from, to, _), result) in wave.iter().zip(done) {
                    result?;
                    self.piece_written(job.key, *eid, *from, *to);
                }
                start = end;
            }
            Ok::<(), StoreError>(())
        }));
        let (j, d) = futures_lite::future::zip(journal, direct).await;
        for r in j.into_iter().chain(d) {
            r?;
        }
        Ok(())
    }

    /// Waits until no earlier piece of `job`'s shard that an earlier O_DSYNC round is still
    /// writing shares a block with a piece of `wave` (that round's write could otherwise land
    /// after this one and undo the newer bytes of the block). Pieces of `job` itself are
    /// ordered by its waves; pieces of later rounds wait for this one.
    async fn earlier_pieces_written(
        &self,
        job: &DirectJob<S::File, S::Buf>,
        wave: &[DirectWrite<S::File, S::Buf>],
    ) -> Result<(), StoreError> {
        loop {
            {
                let st = self.st.borrow();
                poisoned(&st)?;
                let Some(log) = st.shards.get(&job.key) else {
                    return Ok(());
                };
                let mine = |eid: ExtentId, from: u64, to: u64| {
                    job.writes
                        .iter()
                        .any(|(e, f, t, _)| *e == eid && *f == from && *t == to)
                };
                let blocked = wave.iter().any(|(eid, from, to, _)| {
                    log.extent(*eid).is_some_and(|e| {
                        e.pieces.iter().any(|p| {
                            let (pf, pt) = (p.pos, p.pos + p.len as u64);
                            // Earlier: it ends before this one does (a later round's
                            // piece shares this one's last block but ends after it, and
                            // waits for it: waiting for it in turn would deadlock).
                            p.writing
                                && pt < *to
                                && align_down(pf) < align_up(*to)
                                && align_down(*from) < align_up(pt)
                                && !mine(*eid, pf, pt)
                        })
                    })
                });
                if !blocked {
                    return Ok(());
                }
            }
            self.piece_done.wait().await;
        }
    }

    /// A piece `[from, to)` of an extent reached its volume: drop it from memory.
    ///
    /// Its volume is marked for the next checkpoint's fdatasync, whoever wrote it (a
    /// write-behind, or a round in place): a checkpoint claims every byte below an
    /// extent's `written_end` (it writes behind only what is not), so that mark must not
    /// depend on a round's own fdatasync, which may still be in flight when the checkpoint
    /// writes its manifest, and may fail or be cut off by a crash. (A round that wrote a
    /// closed extent's journaled tail in place, then failed its fdatasync, after a
    /// checkpoint had claimed that tail and moved replay past its journal rounds, lost
    /// acknowledged records: found by the model check, seed 700819.)
    fn piece_written(&self, key: ShardKey, eid: ExtentId, from: u64, to: u64) {
        self.piece_done.notify_all();
        let mut guard = self.st.borrow_mut();
        let st = &mut *guard;
        st.dirty_volumes.insert(eid.volume());
        let Some(log) = st.shards.get_mut(&key) else {
            return;
        };
        let Some(e) = log.extent_mut(eid) else { return };
        e.pieces
            .retain(|p| !(p.pos == from && p.pos + p.len as u64 == to && p.writing));
        if to > e.written_end {
            let before = e.written_end.min(e.end);
            e.written_end = to;
            st.pending_bytes -= (to.min(e.end) - before) as usize;
        }
    }

    fn complete_round(
        &self,
        r: SealedRound<S>,
        result: Result<(), StoreError>,
        write_us: u64,
        sync_us: u64,
        syncs: u64,
    ) {
        let mut guard = self.st.borrow_mut();
        let st = &mut *guard;
        assert_eq!(st.synced_id + 1, r.id, "rounds sync in order");
        st.synced_id = r.id;
        st.stats.rounds += 1;
        st.stats.write_us += write_us;
        st.stats.sync_us += sync_us;
        st.stats.write_us_max = st.stats.write_us_max.max(write_us);
        st.stats.sync_us_max = st.stats.sync_us_max.max(sync_us);
        st.stats.sync_buckets[crate::metrics::latency_bucket_us(sync_us)] += 1;
        st.stats.round_syncs += syncs;
        {
            // Write-behind is paced the same way (each round's journal bytes must be
            // written behind once; twice that keeps it ahead).
            // (Capped at what may be saved up, but never below this round's allowance:
            // capped at 1 MiB, rounds of 2 MiB let write-behind do half of what they
            // journaled, and it fell behind until memory pressure unpaced it.)
            let before = st.behind_credit;
            let allowance = 2 * r.journal_bytes as i64;
            st.behind_credit = (before + allowance).min(behind::BEHIND_CREDIT_MAX.max(allowance));
            if before <= 0
                && st.behind_credit > 0
                && (!st.behind_queue.is_empty() || st.settle_ahead_left())
            {
                self.work.notify_all();
            }
        }
        st.last_round_ms = self.clock.now_ms();
        if self.cfg.prewrite_bytes > 0 {
            st.prewrite_credit = (st.prewrite_credit
                + ((r.journal_bytes + r.direct_bytes) / 4) as i64)
                .min(behind::PREWRITE_CREDIT_MAX);
        }
        if st.fill.is_some() {
            // A journal file is being zero-filled: each round lets it write twice the
            // journal bytes the round used, so the fill keeps ahead of the journal while
            // every round's flush carries only a little of it.
            let before = st.fill_credit;
            st.fill_credit = (before + 2 * r.journal_bytes).min(behind::FILL_CREDIT_MAX);
            if before < behind::FILL_CHUNK_BYTES && st.fill_credit >= behind::FILL_CHUNK_BYTES {
                self.work.notify_all();
            }
        }
        match result {
            Ok(()) => {
                st.durable_id = r.id;
                assert!(
                    r.end_pos.round > st.journal.durable_pos.round
                        || st.journal.durable_pos.round == 0
                );
                st.journal.durable_pos = r.end_pos;
                // Replay reads journal bytes and re-reads direct bytes to verify them: both
                // count in full. (At a quarter, 8 hot shards at full speed put 1 GiB of
                // in-place bytes between checkpoints, and a restart after SIGKILL took
                // 1.1–2.2 s re-reading them; in full, 0.43–0.45 s. A checkpoint of in-place
                // bytes writes nothing: they are on disk already.)
                st.since_checkpoint_bytes += r.journal_bytes + r.direct_bytes;
                st.stats.journal_bytes += r.journal_bytes;
                st.stats.direct_bytes += r.direct_bytes;
                for (k, c) in r.completions.iter().enumerate() {
                    prefetch_shards(
                        &st.shards,
                        |j| r.completions.get(j).map(|c| c.key),
                        k,
                        Touches::Completion,
                    );
                    let Some(log) = st.shards.get_mut(&c.key) else {
                        continue;
                    };
                    assert!(
                        c.end_seq >= log.durable_seq,
                        "durable sequence went backwards"
                    );
                    log.durable_seq = c.end_seq;
                    log.durable_last_ts_ms = c.last_ts_ms.max(log.durable_last_ts_ms);
                    if log.direct_round == r.id {
                        log.direct_round = 0;
                    }
                    // Every extent up to the round's last one is now durable to its end
                    // (earlier ones were closed by rolls staged before the seal).
                    let Some(i) = log.extents.iter().rposition(|e| e.id == c.extent) else {
                        continue;
                    };
                    for (j, e) in log.extents.iter_mut().enumerate().take(i + 1).rev() {
                        let end = if j == i { c.end } else { e.end };
                        if e.opened_durable && e.durable_end >= end {
                            break;
                        }
                        e.opened_durable = true;
                        e.durable_end = end;
                        e.durable_end_seq = if j == i { c.end_seq } else { e.end_seq };
                        e.durable_last_ts_ms = if j == i { c.last_ts_ms } else { e.last_ts_ms };
                    }
                    log.changed.notify_all();
                }
                if st.since_checkpoint_bytes >= self.cfg.checkpoint_bytes {
                    drop(guard);
                    self.work.notify_all();
                }
            }
            Err(e) => {
                if st.poisoned.is_none() {
                    tracing::error!(store = self.cfg.index, error = %e, "round failed; the store refuses writes until restart");
                    st.poisoned = Some(e.to_string());
                }
                self.piece_done.notify_all();
                for c in &r.completions {
                    if let Some(log) = st.shards.get(&c.key) {
                        log.changed.notify_all();
                    }
                }
            }
        }
    }

    // ---------------------------------------------------------------- reads

    /// Reads stored batches from `from_seq` on: at most `max_records` records (counting from
    /// `from_seq`) and about `max_bytes` bytes, but always at least one batch if any record
    /// at or after `from_seq` is durable. A batch that fails its checksum is an error, never
    /// served and never skipped.
    pub async fn read(
        &self,
        key: ShardKey,
        from_seq: u64,
        max_records: u32,
        max_bytes: usize,
    ) -> Result<ReadOutput, StoreError> {
        let (durable_seq, latest_ts_ms, horizon, keys) = {
            let st = self.st.borrow();
            let log = st.shards.get(&key).ok_or(StoreError::UnknownShard(key))?;
            (
                log.durable_seq,
                log.durable_last_ts_ms,
                log.trim_horizon(),
                log.keys.clone(),
            )
        };
        let from_seq = from_seq.max(horizon);
        let mut out = ReadOutput {
            start_seq: from_seq,
            end_seq: from_seq,
            latest_ts_ms,
            durable_seq,
            ..ReadOutput::default()
        };
        if from_seq >= durable_seq || max_records == 0 {
            return Ok(out);
        }
        let limit_seq = from_seq
            .saturating_add(u64::from(max_records))
            .min(durable_seq);
        let mut cursor = self.locate(key, from_seq)?;
        while let Some(c) = cursor {
            let done = self
                .read_extent(key, c, from_seq, limit_seq, max_bytes, &mut out)
                .await?;
            if done || out.end_seq >= limit_seq {
                break;
            }
            cursor = self.next_extent_cursor(key, c.extent)?;
        }
        out.end_seq = out.end_seq.min(limit_seq).max(from_seq);
        // Sealed batches (encryption at rest) are opened here, after the store verified
        // their CRCs as stored: a batch whose tag does not check is never served. A stream
        // that never had keys has no sealed batch (only the store seals, and producers'
        // batches with any flag set are refused), so its reads skip the walk.
        if let Some(keys) = keys.as_deref() {
            let ctx = BatchContext {
                stream_id: key.stream_id,
                shard_id: key.shard_id,
            };
            crate::crypto::open_batches(Some(keys), ctx, &mut out.bytes)
                .map_err(|e| StoreError::Corrupt(format!("shard {key:?}: {e}")))?;
        }
        out.record_bytes = records_bytes(&out.bytes, out.start_seq, out.end_seq);
        Ok(out)
    }

    /// Where to start reading for `seq`: its extent, and an indexed batch at or before it.
    fn locate(&self, key: ShardKey, seq: u64) -> Result<Option<Cursor>, StoreError> {
        let st = self.st.borrow();
        let log = st.shards.get(&key).ok_or(StoreError::UnknownShard(key))?;
        let Some(i) = log.extent_index_of(seq) else {
            return Ok(None);
        };
        let e = &log.extents[i];
        let (offset, expect_seq) = e
            .floor_seq(seq)
            .map_or((EXTENT_DATA_START, e.base_seq), |x| (x.offset, x.seq));
        Ok(Some(Cursor {
            extent: e.id,
            nonce: e.nonce,
            offset,
            expect_seq,
        }))
    }

    fn next_extent_cursor(
        &self,
        key: ShardKey,
        after: ExtentId,
    ) -> Result<Option<Cursor>, StoreError> {
        let st = self.st.borrow();
        let log = st.shards.get(&key).ok_or(StoreError::UnknownShard(key))?;
        let Some(i) = log.extents.iter().position(|e| e.id == after) else {
            return Ok(None);
        };
        Ok(log.extents.get(i + 1).map(|e| Cursor {
            extent: e.id,
            nonce: e.nonce,
            offset: EXTENT_DATA_START,
            expect_seq: e.base_seq,
        }))
    }

    /// Bytes `[pos, pos + len)` of an extent, from memory where they are there and from the
    /// volume otherwise (`None` if the extent is gone: retention removed it meanwhile).
    async fn fetch(
        &self,
        key: ShardKey,
        eid: ExtentId,
        pos: u64,
        len: usize,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let mut out = vec![0u8; len];
        let mut at = 0usize;
        while at < len {
            let disk = {
                let st = self.st.borrow();
                let Some(e) = st.shards.get(&key).and_then(|l| l.extent(eid)) else {
                    return Ok(None);
                };
                let here = pos + at as u64;
                let mem = e.mem_start();
                if here >= mem {
                    if !e.copy_from_mem(here, &mut out[at..]) {
                        return Err(StoreError::Corrupt(format!(
                            "extent {eid:?} bytes {here}.. missing from memory"
                        )));
                    }
                    return Ok(Some(out));
                }
                let n = ((mem - here) as usize).min(len - at);
                (st.volume(eid)?, self.volume_pos(eid) + here, n)
            };
            let (file, vpos, n) = disk;
            // A long read (a consumer replaying history) goes out as several reads in
            // flight at once: one large read at a time leaves the device idle between them.
            let pieces = n.div_ceil(READ_PIECE_BYTES);
            let reads = join_all((0..pieces).map(|i| {
                let from = i * READ_PIECE_BYTES;
                let len = READ_PIECE_BYTES.min(n - from);
                let file = &file;
                async move { (from, len, file.read_at(vpos + from as u64, len).await) }
            }))
            .await;
            for (from, len, got) in reads {
                let got = got?;
                let got = got.as_ref();
                if got.len() < len {
                    return Err(StoreError::Corrupt(format!(
                        "volume short read: {} of {len} bytes at {}",
                        got.len(),
                        vpos + from as u64
                    )));
                }
                out[at + from..at + from + len].copy_from_slice(&got[..len]);
            }
            at += n;
        }
        Ok(Some(out))
    }

    /// Reads batches of one extent into `out`. Returns whether `out` is complete.
    async fn read_extent(
        &self,
        key: ShardKey,
        mut c: Cursor,
        from_seq: u64,
        limit_seq: u64,
        max_bytes: usize,
        out: &mut ReadOutput,
    ) -> Result<bool, StoreError> {
        loop {
            let end = {
                let st = self.st.borrow();
                let Some(e) = st.shards.get(&key).and_then(|l| l.extent(c.extent)) else {
                    return Ok(false);
                };
                e.durable_end
            };
            if c.offset >= end || c.expect_seq >= limit_seq {
                return Ok(false);
            }
            let want = self
                .cfg
                .read_chunk_bytes
                .max(max_bytes.saturating_sub(out.bytes.len()))
                .min((end - c.offset) as usize);
            let Some(chunk) = self.fetch(key, c.extent, c.offset, want).await? else {
                return Ok(false);
            };
            // Damage ends the read after the batches before it; a read that starts at it
            // is told which records are damaged and where reading can go on.
            let (mut batches, damage) =
                shard::parse_batches_until_damage(&chunk, c.nonce, c.expect_seq, from_seq);
            let damaged = match damage {
                Some(d) if batches.is_empty() => {
                    if self.at_damage(key, &mut c, &d, from_seq, out.batch_count > 0)? {
                        return Ok(true);
                    }
                    continue;
                }
                Some(_) => true,
                None => false,
            };
            let mut data = chunk;
            if batches.is_empty() {
                // One batch larger than the chunk: read it whole.
                // (Its header verified: the parse above would have reported it otherwise.)
                let h = shard::check_stored_header(&data, c.nonce, c.expect_seq)
                    .map_err(|why| corrupt(key, c.extent, c.offset, why))?;
                let len = (h.batch_len as usize).min((end - c.offset) as usize);
                let Some(whole) = self.fetch(key, c.extent, c.offset, len).await? else {
                    return Ok(false);
                };
                let (whole_batches, damage) =
                    shard::parse_batches_until_damage(&whole, c.nonce, c.expect_seq, from_seq);
                if let Some(d) = damage.filter(|_| whole_batches.is_empty()) {
                    if self.at_damage(key, &mut c, &d, from_seq, out.batch_count > 0)? {
                        return Ok(true);
                    }
                    continue;
                }
                batches = whole_batches;
                if batches.is_empty() {
                    return Err(corrupt(
                        key,
                        c.extent,
                        c.offset,
                        "batch runs past the durable end",
                    ));
                }
                data = whole;
            }
            for (pos, h) in &batches {
                c.offset += u64::from(h.batch_len);
                c.expect_seq = h.next_seq();
                if h.next_seq() <= from_seq {
                    continue;
                }
                let len = h.batch_len as usize;
                if h.base_seq >= limit_seq
                    || (out.batch_count > 0 && out.bytes.len() + len > max_bytes)
                {
                    return Ok(true);
                }
                out.bytes.extend_from_slice(&data[*pos..*pos + len]);
                out.batch_count += 1;
                out.end_seq = h.next_seq();
            }
            if out.bytes.len() >= max_bytes || (damaged && out.batch_count > 0) {
                return Ok(true);
            }
        }
    }

    /// A read meets damage `d` at the cursor: steps over it when the read does not want
    /// those records (`false`: go on), ends the read after the batches it already has
    /// (`true`), or reports the damage.
    fn at_damage(
        &self,
        key: ShardKey,
        c: &mut Cursor,
        d: &shard::Damage,
        from_seq: u64,
        served: bool,
    ) -> Result<bool, StoreError> {
        match d.header {
            Some(h) if h.next_seq() <= from_seq => {
                c.offset += u64::from(h.batch_len);
                c.expect_seq = h.next_seq();
                Ok(false)
            }
            _ if served => Ok(true),
            _ => Err(self.damaged(key, *c, c.offset + d.at as u64, d)),
        }
    }

    /// The error for damaged bytes at `offset` of the cursor's extent: which records are
    /// lost (from the one expected there to the next that can be found: the next sparse
    /// index entry, else the extent's end) and where reading can go on.
    fn damaged(&self, key: ShardKey, c: Cursor, offset: u64, d: &shard::Damage) -> StoreError {
        if let Some(h) = d.header {
            return StoreError::Corrupt(format!(
                "stream {} shard {}: records {}..{} are damaged (extent {}:{} offset {offset}: {}); reading can go on at sequence number {}",
                key.stream_id,
                key.shard_id,
                h.base_seq,
                h.next_seq(),
                c.extent.volume(),
                c.extent.unit(),
                d.why,
                h.next_seq()
            ));
        }
        let resume = {
            let st = self.st.borrow();
            st.shards
                .get(&key)
                .and_then(|l| l.extent(c.extent))
                .map(|e| {
                    e.index
                        .iter()
                        .find(|i| i.offset > offset)
                        .map_or(e.durable_end_seq, |i| i.seq)
                })
                .unwrap_or(c.expect_seq)
        };
        StoreError::Corrupt(format!(
            "stream {} shard {}: records {}..{} are damaged (extent {}:{} offset {offset}: {}); reading can go on at sequence number {resume}",
            key.stream_id,
            key.shard_id,
            c.expect_seq,
            resume,
            c.extent.volume(),
            c.extent.unit(),
            d.why
        ))
    }

    /// The first sequence number whose batch arrived at or after `ts_ms` (the durable end
    /// if none did): where an AT_TIMESTAMP iterator starts.
    pub async fn seq_at_timestamp(&self, key: ShardKey, ts_ms: i64) -> Result<u64, StoreError> {
        let candidates: Vec<Cursor> = {
            let st = self.st.borrow();
            let log = st.shards.get(&key).ok_or(StoreError::UnknownShard(key))?;
            log.extents
                .iter()
                .filter(|e| e.opened_durable && e.durable_last_ts_ms >= ts_ms)
                .map(|e| {
                    let (offset, expect_seq) = e
                        .floor_ts(ts_ms)
                        .map_or((EXTENT_DATA_START, e.base_seq), |x| (x.offset, x.seq));
                    Cursor {
                        extent: e.id,
                        nonce: e.nonce,
                        offset,
                        expect_seq,
                    }
                })
                .collect()
        };
        for mut c in candidates {
            loop {
                let end = {
                    let st = self.st.borrow();
                    match st.shards.get(&key).and_then(|l| l.extent(c.extent)) {
                        Some(e) => e.durable_end,
                        None => break,
                    }
                };
                if c.offset >= end {
                    break;
                }
                let want = self.cfg.read_chunk_bytes.min((end - c.offset) as usize);
                let Some(chunk) = self.fetch(key, c.extent, c.offset, want).await? else {
                    break;
                };
                let batches = parse_batches(&chunk, c.nonce, c.expect_seq, true)
                    .map_err(|(at, why)| corrupt(key, c.extent, c.offset + at as u64, why))?;
                if let Some((_, h)) = batches.iter().find(|(_, h)| h.first_ts_ms >= ts_ms) {
                    return Ok(h.base_seq);
                }
                match batches.last() {
                    Some((pos, h)) => {
                        c.offset += (*pos + h.batch_len as usize) as u64;
                        c.expect_seq = h.next_seq();
                    }
                    None => {
                        let h = shard::check_stored_header(&chunk, c.nonce, c.expect_seq)
                            .map_err(|why| corrupt(key, c.extent, c.offset, why))?;
                        if h.first_ts_ms >= ts_ms {
                            return Ok(h.base_seq);
                        }
                        c.offset += u64::from(h.batch_len);
                        c.expect_seq = h.next_seq();
                    }
                }
            }
        }
        self.durable_seq(key)
    }

    // ---------------------------------------------------------------- retention

    /// Frees the oldest closed extents of a shard whose newest record arrived before
    /// `cutoff_ms` (reusable after the next checkpoint). Never the extent being appended
    /// to. Returns how many went.
    pub fn apply_retention(&self, key: ShardKey, cutoff_ms: i64) -> usize {
        let mut guard = self.st.borrow_mut();
        let st = &mut *guard;
        let Some(log) = st.shards.get_mut(&key) else {
            return 0;
        };
        let mut removed = 0;
        while log.extents.len() > 1 {
            let closed_durable = log.extents[1].opened_durable;
            if !(closed_durable && log.extents[0].durable_last_ts_ms < cutoff_ms) {
                break;
            }
            // Bytes still in memory are expired too: they are dropped, never written. A
            // write of them in flight lands in an extent nothing refers to any more.
            let e = log.extents.pop_front().expect("checked");
            st.pending_bytes -= e.unwritten_bytes() as usize;
            st.alloc.free_later(e.id, e.order);
            removed += 1;
        }
        if removed > 0 {
            st.checkpoint_owed = true;
            log.changed.notify_all();
        }
        // The extent appended to is kept (the shard goes on in it), but when even its newest
        // durable record is past the window, every record of the shard is: none is served.
        if log
            .extents
            .back()
            .is_some_and(|e| e.durable_end_seq > e.base_seq && e.durable_last_ts_ms < cutoff_ms)
            && log.durable_seq > log.trim_horizon()
        {
            log.expired_to = log.durable_seq;
            log.changed.notify_all();
        }
        removed
    }
}

#[derive(Debug)]
enum Wait {
    None,
    Round,
    Background { urgent: bool, extent: bool },
    LoadTail,
}

/// A read position inside one extent.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    extent: ExtentId,
    nonce: u64,
    offset: u64,
    expect_seq: u64,
}

fn corrupt(key: ShardKey, eid: ExtentId, offset: u64, why: impl ToString) -> StoreError {
    StoreError::Corrupt(format!(
        "stream {} shard {} extent {}:{} offset {offset}: {}",
        key.stream_id,
        key.shard_id,
        eid.volume(),
        eid.unit(),
        why.to_string()
    ))
}

impl<S: Storage> State<S> {
    /// Whether targets of the kept snapshot are left to write ahead of its checkpoint.
    fn settle_ahead_left(&self) -> bool {
        self.pending_checkpoint
            .as_ref()
            .is_some_and(|((_, targets, _), _)| self.settle_ahead_at < targets.len())
    }

    fn volume(&self, id: ExtentId) -> Result<Rc<S::File>, StoreError> {
        self.volumes
            .get(&id.volume())
            .cloned()
            .ok_or_else(|| StoreError::Corrupt(format!("extent {id:?} names a missing volume")))
    }
    /// Units freed but not allocatable until a checkpoint records them free (a kept
    /// snapshot's among them).
    fn quarantined_units(&self) -> u64 {
        let kept = self
            .pending_checkpoint
            .as_ref()
            .map_or(0, |((_, _, q), _)| {
                q.iter().map(|(_, order)| 1u64 << order).sum::<u64>()
            });
        self.alloc.quarantined_units() + kept
    }

    fn alloc_possible(&self, order: u32) -> bool {
        self.alloc.can_alloc(order)
    }
}

/// Awaits every future concurrently and returns their outputs in order. Each future has
/// its own waker (`FuturesUnordered`), so waking one does not re-poll the others: a
/// PutBatches of thousands of shards joins thousands of appends.
pub(crate) async fn join_all<T, Fut: std::future::Future<Output = T>>(
    futs: impl Iterator<Item = Fut>,
) -> Vec<T> {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    let mut set: FuturesUnordered<_> = futs
        .enumerate()
        .map(|(i, f)| async move { (i, f.await) })
        .collect();
    let mut out: Vec<Option<T>> = (0..set.len()).map(|_| None).collect();
    while let Some((i, v)) = set.next().await {
        out[i] = Some(v);
    }
    out.into_iter()
        .map(|v| v.expect("every future finished"))
        .collect()
}

/// What a loop over many shards touches of each, for `prefetch_shards`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Touches {
    /// A put: the log, the active extent, where the next batch goes.
    Put,
    /// A round's seal: the log and the active extent.
    Seal,
    /// A round's completion: the log, the active extent and the readers' wake-up.
    Completion,
}

/// Hints the CPU to load the state of the shards a loop over many shards (a put's batches,
/// a round's seal or completion) comes to after item `i`, `key_at` naming each item's
/// shard: 8 items ahead the shard's log, 4 ahead its active extent (and for a completion
/// the readers' wake-up), and for a put 2 ahead where its next batch goes. Asked for a
/// level at a time, the cache misses of consecutive shards overlap (`many-shards`:
/// BENCHMARKS.md).
fn prefetch_shards<B: IoBuf>(
    shards: &crate::shard_table::ShardTable<ShardLog<B>>,
    key_at: impl Fn(usize) -> Option<ShardKey>,
    i: usize,
    touches: Touches,
) {
    if let Some(key) = key_at(i + 8) {
        shards.prefetch(&key);
    }
    if let Some(log) = key_at(i + 4).and_then(|k| shards.get(&k)) {
        log.prefetch_active();
        if touches == Touches::Completion {
            log.prefetch_readers();
        }
    }
    if touches == Touches::Put {
        if let Some(log) = key_at(i + 2).and_then(|k| shards.get(&k)) {
            log.prefetch_staging();
        }
    }
}

/// Writes a buffer completely (`durable`: with O_DSYNC writes, so it is durable on return).
/// A short direct write is retried once for the remainder (the kernel may split large
/// writes); a write that makes no progress is an error.
async fn write_fully<S: Storage>(
    storage: &S,
    file: &S::File,
    buf: Rc<S::Buf>,
    pos: u64,
    durable: bool,
) -> Result<(), StoreError> {
    let total = buf.as_ref().as_ref().len();
    let write = |b: Rc<S::Buf>, at: u64| async move {
        if durable {
            file.write_at_durable(b, at).await
        } else {
            file.write_at(b, at).await
        }
    };
    let mut done = write(buf.clone(), pos).await?;
    if done < total {
        let start = align_down(done as u64) as usize;
        let mut rest = storage.alloc_buf(total - start);
        rest.as_mut()
            .copy_from_slice(&buf.as_ref().as_ref()[start..]);
        let n = write(Rc::new(rest), pos + start as u64).await?;
        done = start + n;
    }
    if done < total {
        return Err(StoreError::Io(format!(
            "short write: {done} of {total} bytes at {pos}"
        )));
    }
    Ok(())
}

/// Verifies that `bytes` hold exactly the batches `from_seq..next_seq` of an extent with
/// `nonce` (replay of a direct entry).
fn verify_span(
    bytes: &[u8],
    nonce: u64,
    from_seq: u64,
    next_seq: u64,
) -> Result<Vec<(usize, BatchHeader)>, String> {
    let batches = parse_batches(bytes, nonce, from_seq, true)
        .map_err(|(at, why)| format!("at {at}: {why}"))?;
    let end: usize = batches.last().map_or(0, |(p, h)| p + h.batch_len as usize);
    let last_seq = batches.last().map_or(from_seq, |(_, h)| h.next_seq());
    if end != bytes.len() || last_seq != next_seq {
        return Err(format!(
            "span holds batches to {last_seq} over {end} bytes, expected {next_seq} over {}",
            bytes.len()
        ));
    }
    if bytes.len() < BATCH_HEADER_LEN && next_seq > from_seq {
        return Err("span too short".into());
    }
    Ok(batches)
}

#[cfg(test)]
impl<S: Storage> Store<S> {
    /// A summary of the state, for test failure messages.
    pub(crate) fn debug_state(&self) -> String {
        let st = self.st.borrow();
        let mut out = format!(
            "open_id {} writing {} synced {} durable {} poisoned {:?} pending {} open.len {} open.batch {} checkpointing {} since_ckpt {} space_error {:?} free_units {} volumes {}\n journal: active {:?} seq {} pos {} next_round {} free_slots {} durable_pos {:?} ckpt_pos {:?} slots {:?}\n",
            st.open_id, st.writing, st.synced_id, st.durable_id, st.poisoned, st.pending_bytes,
            st.open.len, st.open.batch_bytes, st.checkpointing, st.since_checkpoint_bytes,
            st.space_error, st.alloc.free_units(), st.volumes.len(),
            st.journal.active, st.journal.active_seq, st.journal.write_pos, st.journal.next_round,
            st.journal.free_slots(), st.journal.durable_pos, st.journal.checkpoint_pos,
            st.journal.slots.iter().map(|s| (s.file.is_some(), s.content_seq)).collect::<Vec<_>>(),
        );
        for (k, l) in &st.shards {
            if l.extents.is_empty() {
                continue;
            }
            out += &format!(
                " shard {:?}: next {} durable {} direct {:?} direct_round {} behind {} queued {} extents {}\n",
                k, l.next_seq, l.durable_seq, l.direct, l.direct_round, l.writing_behind, l.queued_behind, l.extents.len()
            );
            for e in &l.extents {
                out += &format!(
                    "   ext {:?} o{} base {} end {} durable_end {} written {} od {} pieces {:?} staging {:?}\n",
                    e.id, e.order, e.base_seq, e.end, e.durable_end, e.written_end, e.opened_durable,
                    e.pieces.iter().map(|p| (p.pos, p.len, p.writing)).collect::<Vec<_>>(),
                    e.staging.as_ref().map(|s| (s.pos, s.len))
                );
            }
        }
        out
    }
}
