//! The shard log: one shard's append-only sequence of segment files.
//!
//! Lifecycle: `ShardLog::open` recovers (or creates) the log, then the owning core calls
//! `append`, `read`, the position lookups and `apply_retention` until it drops the log.
//! Concurrency contract: a `ShardLog` lives on exactly one core and is shared between that
//! core's tasks by `Rc`; no method blocks the thread, and state is borrowed only between
//! awaits, never across one.
//!
//! Write path (group commit):
//! 1. `append` assigns sequence numbers, stamps the batch into the shard's staging buffer (the
//!    one copy of the data on the write path), and joins the open flush round.
//! 2. If no flush is in flight, the appender leads one: it seals the staging buffer, writes
//!    every buffer of the round (disjoint block ranges, submitted together), fdatasyncs, and
//!    publishes the new durable sequence number. Batches that arrive meanwhile go into the
//!    next round, so one fdatasync covers every producer that arrived while the last one ran.
//! 3. An append returns only after its round is durable. A failed write or fdatasync poisons
//!    the log: we do not know what reached the disk, so every later append is refused.
//!
//! The partially filled last block stays in memory (`tail_page`) and is rewritten at the
//! start of the next round, so the file holds batches back to back with no padding.
//!
//! Offsets that can diverge are kept apart: `next_seq` (assigned) ≥ `durable_seq` (fsynced,
//! the only one readers see), and `write_end` ≥ `durable_end` in the active segment.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use spate_protocol::batch::{self, BatchHeader, BATCH_HEADER_LEN};

use crate::clock::ClockRef;
use crate::io::{align_down, align_up, IoBuf, SegFile, Storage, BLOCK_BYTES};
use crate::notify::Notify;
use crate::segment::{
    decode_index, encode_index_entry, encode_seal, index_file_name, parse_segment_file_name,
    segment_file_name, IndexEntry, Seal, SegmentHeader, SegmentIndex, SEGMENT_DATA_START,
};
use crate::spare::SparePool;

/// Tunables of one shard log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogConfig {
    /// Largest segment file (pre-written); a segment rolls when a batch would not fit.
    /// Spare files in the pool have this size.
    pub segment_bytes: u64,
    /// Size of a shard's first segment. Each roll doubles the size past what the closing
    /// segment held, up to 16 MiB (zero-filled at the roll), then jumps to `segment_bytes`
    /// (taken from the pool), so idle shards cost little disk and busy ones reach full-size
    /// pre-written segments after a few rolls.
    pub segment_bytes_min: u64,
    /// A segment whose oldest record is this old is rolled at the next append, so that
    /// retention can delete slow shards' data on time.
    pub segment_age_max_ms: i64,
    /// Largest staging buffer; a round writes several when it holds more.
    pub write_chunk_bytes_max: usize,
    /// A sparse-index entry at least every this many bytes of log.
    pub index_interval_bytes: u64,
    /// Bytes read from disk per step of a read or scan.
    pub read_chunk_bytes: usize,
    /// Bytes one flush round may take while the previous round is being written.
    pub round_bytes_max: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 256 << 20,
            segment_bytes_min: 1 << 20,
            segment_age_max_ms: 3_600_000,
            write_chunk_bytes_max: 256 << 10,
            index_interval_bytes: 64 << 10,
            read_chunk_bytes: 256 << 10,
            round_bytes_max: 2 << 20,
        }
    }
}

/// Largest segment a roll zero-fills on the append path; bigger ones come from the pool.
const LADDER_BYTES_MAX: u64 = 16 << 20;

/// Smallest staging buffer: what an idle shard allocates for its first batch.
const WRITE_CHUNK_BYTES_MIN: usize = 16 << 10;

/// Errors of the shard log. Converted to wire codes at the server boundary.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LogError {
    #[error("shard refuses writes after a failed flush: {0}")]
    Poisoned(String),
    #[error("no space left for a new segment")]
    StorageFull,
    #[error("I/O error: {0}")]
    Io(String),
    #[error("corrupt batch in segment {segment_base} at offset {offset}: {reason}")]
    Corrupt {
        segment_base: u64,
        offset: u64,
        reason: String,
    },
    #[error("batch of {0} bytes does not fit in a segment")]
    BatchTooLarge(usize),
}

impl From<io::Error> for LogError {
    fn from(e: io::Error) -> Self {
        if e.raw_os_error() == Some(libc::ENOSPC) {
            LogError::StorageFull
        } else {
            LogError::Io(e.to_string())
        }
    }
}

/// Names one shard: its stream incarnation and shard number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardIdent {
    pub stream_id: u64,
    pub shard_id: u32,
}

/// What an acknowledged append tells the producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendAck {
    pub base_seq: u64,
    pub record_count: u32,
    pub ts_ms: i64,
}

/// Counters of a shard log's write path (the log's metrics probe).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    pub rounds: u64,
    pub round_bytes: u64,
    pub appends: u64,
    /// Time spent in the write phase and in the fdatasync phase of rounds, summed.
    pub write_us: u64,
    pub sync_us: u64,
    pub rolls: u64,
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
}

struct SegmentMeta {
    base_seq: u64,
    nonce: u64,
    /// File size.
    size: u64,
    index: SegmentIndex,
    /// Set once the segment is closed.
    seal: Option<Seal>,
}

struct Active<F: SegFile> {
    base_seq: u64,
    nonce: u64,
    size: u64,
    file: Rc<F>,
    /// End of appended bytes (durable or not).
    write_end: u64,
    /// End of durable bytes.
    durable_end: u64,
    /// Bytes of the block containing `write_end` up to it: rewritten by the next round.
    tail_page: Box<[u8; BLOCK_BYTES]>,
    /// Offset of the newest index entry (durable or pending).
    last_index_offset: u64,
}

struct Staging<F: SegFile> {
    buf: F::Buf,
    /// Block-aligned file offset of `buf[0]`.
    file_pos: u64,
    /// Valid bytes in `buf`.
    len: usize,
}

struct PendingWrite<F: SegFile> {
    file: Rc<F>,
    buf: Rc<F::Buf>,
    pos: u64,
}

/// Everything one flush makes durable.
struct Round<F: SegFile> {
    writes: Vec<PendingWrite<F>>,
    index: Vec<IndexEntry>,
    /// Sequence number, write end and arrival time once this round is durable.
    end_seq: u64,
    end_offset: u64,
    last_ts_ms: i64,
}

impl<F: SegFile> Round<F> {
    fn new(end_seq: u64, end_offset: u64, last_ts_ms: i64) -> Round<F> {
        Round {
            writes: Vec::new(),
            index: Vec::new(),
            end_seq,
            end_offset,
            last_ts_ms,
        }
    }
}

struct State<F: SegFile> {
    sealed: BTreeMap<u64, SegmentMeta>,
    active_meta: SegmentMeta,
    active: Active<F>,
    staging: Option<Staging<F>>,
    open_round: Round<F>,
    /// Id of the open round. Rounds are written one after another and synced one after
    /// another, but round `n + 1` may be written while round `n` is being synced.
    open_round_id: u64,
    /// Batch bytes staged into the open round.
    open_round_bytes: usize,
    /// A round is being written (only one at a time: rounds share their boundary block).
    writing: bool,
    /// Every round up to this one finished its sync phase (successfully or not).
    synced_round_id: u64,
    /// Every round up to this one is durable.
    durable_round_id: u64,
    /// Rounds with this id or above failed.
    failed_from_round: Option<u64>,
    poisoned: Option<String>,
    next_seq: u64,
    durable_seq: u64,
    last_ts_ms: i64,
    durable_last_ts_ms: i64,
    /// Bytes in the last round, to size the next staging buffer.
    last_round_bytes: usize,
    rolling: bool,
}

/// One shard's log. See the module docs for the lifecycle and concurrency contract.
pub struct ShardLog<S: Storage> {
    storage: Rc<S>,
    dir: PathBuf,
    ident: ShardIdent,
    cfg: LogConfig,
    clock: ClockRef,
    spares: Rc<SparePool<S>>,
    st: RefCell<State<S::File>>,
    /// Signalled when a round completes or a roll ends.
    changed: Notify,
    /// Cached handle of the sealed segment last read.
    reader: RefCell<Option<(u64, Rc<S::File>)>>,
    recovered_torn_bytes: Cell<u64>,
    stats: Cell<LogStats>,
}

fn corrupt(segment_base: u64, offset: u64, reason: impl ToString) -> LogError {
    LogError::Corrupt {
        segment_base,
        offset,
        reason: reason.to_string(),
    }
}

impl<S: Storage> ShardLog<S> {
    /// Opens the shard's log in `dir`, creating it if empty. Recovery validates only the
    /// newest segment's tail: from its last index hint that checks out, batches are
    /// verified forward until the first that does not (torn or stale), which is cut.
    pub async fn open(
        storage: Rc<S>,
        dir: PathBuf,
        ident: ShardIdent,
        cfg: LogConfig,
        clock: ClockRef,
        spares: Rc<SparePool<S>>,
    ) -> Result<ShardLog<S>, LogError> {
        assert!(
            cfg.segment_bytes_min >= SEGMENT_DATA_START + 2 * BLOCK_BYTES as u64
                && cfg.segment_bytes_min.is_power_of_two()
                && cfg.segment_bytes >= cfg.segment_bytes_min
                && cfg.segment_bytes % BLOCK_BYTES as u64 == 0,
            "segment sizes {}..{} too small or unaligned",
            cfg.segment_bytes_min,
            cfg.segment_bytes
        );
        storage.create_dir_all(&dir)?;
        let names = storage.list_dir(&dir)?;
        for tmp in names.iter().filter(|n| n.ends_with(".tmp")) {
            // A roll that crashed before its rename: the file was never part of the log.
            storage.remove_file(&dir.join(tmp))?;
        }
        let mut bases: Vec<u64> = names
            .iter()
            .filter_map(|n| parse_segment_file_name(n))
            .collect();
        bases.sort_unstable();
        let newest = match bases.pop() {
            Some(b) => b,
            None => {
                let path = dir.join(segment_file_name(0));
                storage.create_zeroed(&path, cfg.segment_bytes_min).await?;
                storage.sync_dir(&dir)?;
                0
            }
        };
        let mut sealed = BTreeMap::new();
        for (i, &base) in bases.iter().enumerate() {
            let next_base = bases.get(i + 1).copied().unwrap_or(newest);
            let meta = load_sealed(&*storage, &dir, ident, base, next_base, &cfg).await?;
            sealed.insert(base, meta);
        }
        let (active, active_meta, recovered) =
            recover_active(&*storage, &dir, ident, newest, &cfg, &*clock).await?;
        let last_ts_ms = recovered.last_ts_ms.max(
            sealed
                .values()
                .filter_map(|m| m.seal)
                .map(|s| s.last_ts_ms)
                .max()
                .unwrap_or(0),
        );
        let next_seq = recovered.next_seq;
        let state = State {
            sealed,
            active_meta,
            staging: None,
            open_round: Round::new(next_seq, active.write_end, last_ts_ms),
            active,
            open_round_id: 1,
            open_round_bytes: 0,
            writing: false,
            synced_round_id: 0,
            durable_round_id: 0,
            failed_from_round: None,
            poisoned: None,
            next_seq,
            durable_seq: next_seq,
            last_ts_ms,
            durable_last_ts_ms: last_ts_ms,
            last_round_bytes: 0,
            rolling: false,
        };
        let log = ShardLog {
            storage,
            dir,
            ident,
            cfg,
            clock,
            spares,
            st: RefCell::new(state),
            changed: Notify::new(),
            reader: RefCell::new(None),
            recovered_torn_bytes: Cell::new(recovered.torn_bytes),
            stats: Cell::new(LogStats::default()),
        };
        Ok(log)
    }

    pub fn ident(&self) -> ShardIdent {
        self.ident
    }

    /// Write-path counters since open.
    pub fn stats(&self) -> LogStats {
        self.stats.get()
    }

    fn count(&self, f: impl FnOnce(&mut LogStats)) {
        let mut s = self.stats.get();
        f(&mut s);
        self.stats.set(s);
    }

    /// Bytes cut from the tail at open (0 after a clean shutdown).
    pub fn recovered_torn_bytes(&self) -> u64 {
        self.recovered_torn_bytes.get()
    }

    /// Oldest sequence number still retained.
    pub fn trim_horizon(&self) -> u64 {
        let st = self.st.borrow();
        st.sealed
            .keys()
            .next()
            .copied()
            .unwrap_or(st.active.base_seq)
    }

    /// One past the newest durable record: where a LATEST iterator starts.
    pub fn durable_seq(&self) -> u64 {
        self.st.borrow().durable_seq
    }

    /// Arrival time of the newest durable record (0 if none was ever written).
    pub fn latest_ts_ms(&self) -> i64 {
        self.st.borrow().durable_last_ts_ms
    }

    pub fn is_poisoned(&self) -> Option<String> {
        self.st.borrow().poisoned.clone()
    }

    /// Number of segment files (sealed and active).
    pub fn segment_count(&self) -> usize {
        self.st.borrow().sealed.len() + 1
    }

    /// Wakes every task waiting in `wait_for_change` (shutdown).
    pub fn wake_waiters(&self) {
        self.changed.notify_all();
    }

    /// Resolves when the durable sequence number moves past `seq` or the log changes
    /// otherwise; the caller re-checks (long-poll readers).
    pub async fn wait_for_change(&self) {
        self.changed.wait().await
    }

    /// Appends one checked producer batch (see `protocol::batch::check_producer_batch`) and
    /// returns once it is durable.
    pub async fn append(&self, batch: &[u8], record_count: u32) -> Result<AppendAck, LogError> {
        debug_assert_eq!(
            BatchHeader::decode(batch).map(|h| h.record_count),
            Ok(record_count)
        );
        let len = batch.len() as u64;
        if len > self.cfg.segment_bytes - SEGMENT_DATA_START {
            return Err(LogError::BatchTooLarge(batch.len()));
        }
        loop {
            let (poisoned, needs_roll, rolling, round_full) = {
                let st = self.st.borrow();
                // While a round is being written, the next one fills up to a bound: past it,
                // appenders wait for the round after, which keeps each fdatasync's share of
                // data (and so its latency) bounded.
                let round_full = st.writing && st.open_round_bytes >= self.cfg.round_bytes_max;
                let full = st.active.write_end + len > st.active.size;
                let old = st.active.write_end > SEGMENT_DATA_START
                    && st.active_meta.index.first_ts_ms().is_some_and(|t| {
                        self.clock.now_ms().saturating_sub(t) >= self.cfg.segment_age_max_ms
                    });
                (st.poisoned.clone(), full || old, st.rolling, round_full)
            };
            if let Some(p) = poisoned {
                return Err(LogError::Poisoned(p));
            }
            // Nothing is staged while a roll runs: the closing segment's seal must cover
            // every batch written into it.
            if rolling || round_full {
                self.changed.wait().await;
                continue;
            }
            if !needs_roll {
                break;
            }
            self.st.borrow_mut().rolling = true;
            let rolled = self.roll(len).await;
            self.st.borrow_mut().rolling = false;
            self.changed.notify_all();
            rolled?;
        }
        let (ack, round_id) = self.stage(batch, record_count);
        self.count(|s| s.appends += 1);
        self.wait_round(round_id).await?;
        Ok(ack)
    }

    /// Stamps the batch into the staging buffer; synchronous, so sequence numbers and file
    /// order always agree.
    fn stage(&self, batch: &[u8], record_count: u32) -> (AppendAck, u64) {
        let mut guard = self.st.borrow_mut();
        let st = &mut *guard;
        let ts_ms = self.clock.now_ms().max(st.last_ts_ms);
        let base_seq = st.next_seq;
        let offset = st.active.write_end;
        let len = batch.len();
        let fits = st
            .staging
            .as_ref()
            .is_some_and(|s| s.len + len <= s.buf.as_ref().len());
        if !fits {
            if let Some(full) = st.staging.take() {
                seal_staging(st, full, SealKind::WholeBlocks);
            }
            let carry = (st.active.write_end % BLOCK_BYTES as u64) as usize;
            let want = (st.last_round_bytes * 2)
                .clamp(WRITE_CHUNK_BYTES_MIN, self.cfg.write_chunk_bytes_max)
                .max(align_up((carry + len) as u64) as usize);
            let mut buf = st.active.file.alloc_buf(want);
            buf.as_mut()[..carry].copy_from_slice(&st.active.tail_page[..carry]);
            st.staging = Some(Staging {
                buf,
                file_pos: align_down(st.active.write_end),
                len: carry,
            });
        }
        let staging = st.staging.as_mut().expect("staging exists");
        // The one copy on the write path: from the request buffer into the aligned buffer
        // that goes to the disk. The batch is stamped there, not before.
        let dst = &mut staging.buf.as_mut()[staging.len..staging.len + len];
        dst.copy_from_slice(batch);
        batch::stamp(dst, base_seq, ts_ms, st.active.nonce);
        staging.len += len;
        st.open_round_bytes += len;
        st.active.write_end += len as u64;
        st.next_seq += u64::from(record_count);
        st.last_ts_ms = ts_ms;
        if offset == SEGMENT_DATA_START
            || offset - st.active.last_index_offset >= self.cfg.index_interval_bytes
        {
            st.open_round.index.push(IndexEntry {
                seq: base_seq,
                offset,
                ts_ms,
            });
            st.active.last_index_offset = offset;
        }
        st.open_round.end_seq = st.next_seq;
        st.open_round.end_offset = st.active.write_end;
        st.open_round.last_ts_ms = ts_ms;
        (
            AppendAck {
                base_seq,
                record_count,
                ts_ms,
            },
            st.open_round_id,
        )
    }

    /// Waits until round `round_id` is durable (or failed), leading its flush if nobody
    /// else is writing.
    async fn wait_round(&self, round_id: u64) -> Result<(), LogError> {
        loop {
            let lead = {
                let st = self.st.borrow();
                if st.durable_round_id >= round_id {
                    return Ok(());
                }
                if st.failed_from_round.is_some_and(|f| f <= round_id) {
                    return Err(LogError::Poisoned(st.poisoned.clone().unwrap_or_default()));
                }
                !st.writing && st.open_round_id == round_id
            };
            if lead {
                self.flush_round().await;
            } else {
                self.changed.wait().await;
            }
        }
    }

    /// Makes everything staged so far durable (used before a roll and at shutdown).
    pub async fn flush(&self) -> Result<(), LogError> {
        let round_id = {
            let st = self.st.borrow();
            if st.open_round.writes.is_empty() && st.staging.is_none() {
                st.open_round_id - 1
            } else {
                st.open_round_id
            }
        };
        self.wait_round(round_id).await
    }

    /// Runs one flush round: seal and write its buffers; then, once the previous round's
    /// sync finished, fdatasync and publish. The next round may start writing as soon as
    /// this one's writes completed, so the disk is never idle during an fdatasync.
    ///
    /// Why the overlap is safe: round `n + 1` rewrites round `n`'s last block, but only
    /// after round `n`'s write completed, with the same bytes for round `n`'s part, so a
    /// crash (even a torn block) leaves round `n`'s records intact. Syncs stay in order, so
    /// a write-back error is always seen by the round it belongs to or an earlier one.
    async fn flush_round(&self) {
        // Claim the write phase, then let every task that is already runnable (appenders
        // woken by the last round) stage its batch before the round is sealed: one yield
        // turns a round of 1 batch followed by a round of 63 into one round of 64.
        self.st.borrow_mut().writing = true;
        futures_lite::future::yield_now().await;
        let (round, round_id) = {
            let mut guard = self.st.borrow_mut();
            let st = &mut *guard;
            if let Some(staging) = st.staging.take() {
                seal_staging(st, staging, SealKind::Padded);
            }
            let fresh = Round::new(st.next_seq, st.active.write_end, st.last_ts_ms);
            let round = std::mem::replace(&mut st.open_round, fresh);
            st.open_round_bytes = 0;
            let id = st.open_round_id;
            st.open_round_id += 1;
            st.writing = true;
            (round, id)
        };
        // Appenders held back by a full open round may stage into the fresh one now.
        self.changed.notify_all();
        let bytes: usize = round
            .writes
            .iter()
            .map(|w| w.buf.as_ref().as_ref().len())
            .sum();
        // A round after a failed one is never written: it would land behind a gap and make
        // data after the gap look valid to recovery.
        let poisoned = self.st.borrow().poisoned.is_some();
        let write_started = std::time::Instant::now();
        let mut result = if poisoned {
            Err(LogError::Poisoned(String::new()))
        } else {
            write_buffers(&round).await
        };
        let write_us = write_started.elapsed().as_micros() as u64;
        {
            let mut st = self.st.borrow_mut();
            st.writing = false;
            st.last_round_bytes = bytes;
        }
        self.changed.notify_all();
        while self.st.borrow().synced_round_id + 1 < round_id {
            self.changed.wait().await;
        }
        if result.is_ok() {
            if let Some(p) = self.st.borrow().poisoned.clone() {
                result = Err(LogError::Poisoned(p));
            }
        }
        let sync_started = std::time::Instant::now();
        if result.is_ok() {
            result = sync_files(&round).await;
        }
        let sync_us = sync_started.elapsed().as_micros() as u64;
        self.count(|s| {
            s.rounds += 1;
            s.round_bytes += bytes as u64;
            s.write_us += write_us;
            s.sync_us += sync_us;
        });
        self.complete_round(round, round_id, result);
        self.changed.notify_all();
    }

    fn complete_round(&self, round: Round<S::File>, round_id: u64, result: Result<(), LogError>) {
        let mut guard = self.st.borrow_mut();
        let st = &mut *guard;
        assert_eq!(st.synced_round_id + 1, round_id, "rounds sync in order");
        st.synced_round_id = round_id;
        match result {
            Ok(()) => {
                assert!(
                    round.end_seq >= st.durable_seq,
                    "durable sequence went backwards"
                );
                st.durable_round_id = round_id;
                st.durable_seq = round.end_seq;
                st.durable_last_ts_ms = round.last_ts_ms.max(st.durable_last_ts_ms);
                st.active.durable_end = round.end_offset;
                if !round.index.is_empty() {
                    let mut hint = Vec::with_capacity(round.index.len() * 32);
                    for e in &round.index {
                        encode_index_entry(&mut hint, e);
                    }
                    st.active_meta.index.entries.extend_from_slice(&round.index);
                    let path = self.dir.join(index_file_name(st.active.base_seq));
                    // Hints only: a lost or torn hint costs recovery a longer scan.
                    if let Err(e) = self.storage.append_small(&path, &hint) {
                        tracing::warn!(?path, error = %e, "index hint not written");
                    }
                }
            }
            Err(e) => {
                if st.poisoned.is_none() {
                    tracing::error!(shard = ?self.ident, error = %e, "flush failed; shard poisoned");
                    st.poisoned = Some(e.to_string());
                }
                let failed = st.failed_from_round.map_or(round_id, |f| f.min(round_id));
                st.failed_from_round = Some(failed);
            }
        }
    }

    /// Closes the active segment and opens a new one at `next_seq`. Everything staged is
    /// made durable first, so a sealed segment never has a torn tail.
    async fn roll(&self, batch_len: u64) -> Result<(), LogError> {
        self.flush().await?;
        self.count(|s| s.rolls += 1);
        let (base, old_base, seal, size) = {
            let st = self.st.borrow();
            let seal = Seal {
                next_seq: st.durable_seq,
                end_offset: st.active.durable_end,
                last_ts_ms: st.durable_last_ts_ms,
            };
            assert_eq!(
                st.next_seq, st.durable_seq,
                "roll with records still pending"
            );
            // Grow by doubling while small files are cheap to zero-fill on this path; past
            // LADDER_BYTES_MAX take a full-size file from the pool (already written).
            let used = st.active.durable_end.max(batch_len + SEGMENT_DATA_START);
            let doubled = (used * 2)
                .next_power_of_two()
                .max(self.cfg.segment_bytes_min);
            let size = if doubled > LADDER_BYTES_MAX.max(self.cfg.segment_bytes_min) {
                self.cfg.segment_bytes
            } else {
                doubled.min(self.cfg.segment_bytes)
            };
            (st.next_seq, st.active.base_seq, seal, size)
        };
        // An empty segment (its first batch did not fit) is replaced in place rather than
        // sealed: two segments may not share a base sequence number.
        let empty = seal.next_seq == old_base;
        if !empty {
            let mut seal_bytes = Vec::new();
            encode_seal(&mut seal_bytes, &seal);
            self.storage
                .append_small(&self.dir.join(index_file_name(old_base)), &seal_bytes)?;
        }
        let path = self.dir.join(segment_file_name(base));
        let tmp = self.dir.join(format!("{}.tmp", segment_file_name(base)));
        // A full-size file comes from the pool. When the pool is empty (many shards rolled
        // at once), zero-filling one here would stall this shard's appends for the whole
        // fill: take a ladder-size file instead, cheap to fill, and grow again next roll.
        let size = if size == self.cfg.segment_bytes && self.spares.ready_count() == 0 {
            LADDER_BYTES_MAX
                .clamp(self.cfg.segment_bytes_min, self.cfg.segment_bytes)
                .max(align_up(batch_len + SEGMENT_DATA_START))
        } else {
            size
        };
        if size == self.cfg.segment_bytes && self.spares.ready_count() > 0 {
            self.spares.provide(&self.storage, &tmp, size).await?;
        } else {
            // Smaller than the pooled size: the shard is still growing; zero-fill one now.
            self.storage.create_zeroed(&tmp, size).await?;
        }
        self.storage.rename(&tmp, &path)?;
        self.storage.sync_dir(&self.dir)?;
        let file = Rc::new(self.storage.open(&path).await?);
        let nonce = rand::random::<u64>();
        let mut guard = self.st.borrow_mut();
        let st = &mut *guard;
        assert_eq!(st.next_seq, base, "appends ran during a roll");
        let header = SegmentHeader {
            stream_id: self.ident.stream_id,
            shard_id: self.ident.shard_id,
            base_seq: base,
            nonce,
            created_ms: self.clock.now_ms(),
            segment_bytes: size,
        };
        let new_active = new_active(file, base, nonce, &header);
        let old_meta = std::mem::replace(
            &mut st.active_meta,
            SegmentMeta {
                base_seq: base,
                nonce,
                size,
                index: SegmentIndex::default(),
                seal: None,
            },
        );
        if !empty {
            st.sealed.insert(
                old_base,
                SegmentMeta {
                    seal: Some(seal),
                    ..old_meta
                },
            );
        }
        st.active = new_active.0;
        st.staging = Some(Staging {
            buf: new_active.1,
            file_pos: 0,
            len: BLOCK_BYTES,
        });
        st.open_round.end_offset = st.active.write_end;
        *self.reader.borrow_mut() = None;
        Ok(())
    }

    /// Reads stored batches from `from_seq` on: at most `max_records` records (counting from
    /// `from_seq`) and about `max_bytes` bytes, but always at least one batch if any record
    /// at or after `from_seq` is durable. Stops at a segment boundary. A batch that fails its
    /// checksum is an error, never served and never skipped.
    pub async fn read(
        &self,
        from_seq: u64,
        max_records: u32,
        max_bytes: usize,
    ) -> Result<ReadOutput, LogError> {
        let (durable_seq, latest_ts_ms) = {
            let st = self.st.borrow();
            (st.durable_seq, st.durable_last_ts_ms)
        };
        let from_seq = from_seq.max(self.trim_horizon());
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
        let (seg_base, nonce, start_offset, start_seq, end_offset) = self.locate(from_seq);
        let file = self.segment_file(seg_base).await?;
        let limit_seq = from_seq
            .saturating_add(u64::from(max_records))
            .min(durable_seq);
        let mut cursor = Cursor {
            offset: start_offset,
            expect_seq: start_seq,
        };
        while cursor.expect_seq < limit_seq && cursor.offset < end_offset {
            let want = self
                .cfg
                .read_chunk_bytes
                .max(max_bytes.saturating_sub(out.bytes.len()));
            let chunk = read_span(&*file, cursor.offset, want, end_offset).await?;
            let batches = parse_batches(chunk.as_ref(), seg_base, nonce, &mut cursor, true)?;
            if batches.is_empty() {
                // One batch larger than the chunk: read it whole.
                let header =
                    batch_header_at(&*file, seg_base, nonce, cursor.offset, cursor.expect_seq)
                        .await?;
                let whole =
                    read_span(&*file, cursor.offset, header.batch_len as usize, end_offset).await?;
                let got = parse_batches(whole.as_ref(), seg_base, nonce, &mut cursor, true)?;
                if got.is_empty() {
                    return Err(corrupt(
                        seg_base,
                        cursor.offset,
                        "batch runs past the end of data",
                    ));
                }
                if self.take_batches(
                    &mut out,
                    whole.as_ref(),
                    &got,
                    from_seq,
                    limit_seq,
                    max_bytes,
                ) {
                    break;
                }
            } else if self.take_batches(
                &mut out,
                chunk.as_ref(),
                &batches,
                from_seq,
                limit_seq,
                max_bytes,
            ) {
                break;
            }
        }
        out.end_seq = out.end_seq.min(limit_seq);
        if !self.st.borrow().sealed.contains_key(&seg_base)
            && seg_base != self.st.borrow().active.base_seq
        {
            // Retention removed the segment while we read it: start over from the new horizon.
            return Box::pin(self.read(from_seq, max_records, max_bytes)).await;
        }
        Ok(out)
    }

    /// Appends the batches of `chunk` that hold records at or after `from_seq` to `out`,
    /// stopping before one that starts at or past `limit_seq` or would push `out` past
    /// `max_bytes` (the first batch is always taken, whatever its size). Returns whether
    /// `out` is complete.
    fn take_batches(
        &self,
        out: &mut ReadOutput,
        chunk: &[u8],
        batches: &[(usize, BatchHeader)],
        from_seq: u64,
        limit_seq: u64,
        max_bytes: usize,
    ) -> bool {
        for (pos, h) in batches {
            if h.next_seq() <= from_seq {
                continue;
            }
            let len = h.batch_len as usize;
            if h.base_seq >= limit_seq || (out.batch_count > 0 && out.bytes.len() + len > max_bytes)
            {
                return true;
            }
            out.bytes.extend_from_slice(&chunk[*pos..*pos + len]);
            out.batch_count += 1;
            out.end_seq = h.next_seq();
        }
        out.bytes.len() >= max_bytes
    }

    /// Segment and starting point for reading `seq`: (segment base, nonce, offset of an
    /// indexed batch at or before `seq`, that batch's base seq, end of readable data).
    fn locate(&self, seq: u64) -> (u64, u64, u64, u64, u64) {
        let st = self.st.borrow();
        let (meta, end) = if seq >= st.active.base_seq {
            (&st.active_meta, st.active.durable_end)
        } else {
            let (_, meta) = st
                .sealed
                .range(..=seq)
                .next_back()
                .expect("seq above trim horizon");
            (meta, meta.seal.map_or(meta.size, |s| s.end_offset))
        };
        let (offset, start_seq) = meta
            .index
            .floor_seq(seq)
            .map_or((SEGMENT_DATA_START, meta.base_seq), |e| (e.offset, e.seq));
        (meta.base_seq, meta.nonce, offset, start_seq, end)
    }

    async fn segment_file(&self, base: u64) -> Result<Rc<S::File>, LogError> {
        {
            let st = self.st.borrow();
            if base == st.active.base_seq {
                return Ok(st.active.file.clone());
            }
        }
        if let Some((b, f)) = &*self.reader.borrow() {
            if *b == base {
                return Ok(f.clone());
            }
        }
        let file = Rc::new(
            self.storage
                .open(&self.dir.join(segment_file_name(base)))
                .await?,
        );
        *self.reader.borrow_mut() = Some((base, file.clone()));
        Ok(file)
    }

    /// The first sequence number whose batch arrived at or after `ts_ms` (durable_seq if
    /// none did): where an AT_TIMESTAMP iterator starts.
    pub async fn seq_at_timestamp(&self, ts_ms: i64) -> Result<u64, LogError> {
        let candidates: Vec<(u64, u64, u64, u64, u64)> = {
            let st = self.st.borrow();
            let mut v = Vec::new();
            for meta in st.sealed.values().chain(std::iter::once(&st.active_meta)) {
                let last_ts = meta.seal.map(|s| s.last_ts_ms);
                if last_ts.is_some_and(|t| t < ts_ms) {
                    continue; // every record of this segment is older
                }
                let (offset, seq) = meta
                    .index
                    .floor_ts(ts_ms)
                    .map_or((SEGMENT_DATA_START, meta.base_seq), |e| (e.offset, e.seq));
                let end = if meta.base_seq == st.active.base_seq {
                    st.active.durable_end
                } else {
                    meta.seal.map_or(meta.size, |s| s.end_offset)
                };
                v.push((meta.base_seq, meta.nonce, offset, seq, end));
            }
            v
        };
        for (base, nonce, offset, seq, end) in candidates {
            let file = self.segment_file(base).await?;
            let mut cursor = Cursor {
                offset,
                expect_seq: seq,
            };
            while cursor.offset < end {
                let chunk =
                    read_span(&*file, cursor.offset, self.cfg.read_chunk_bytes, end).await?;
                let before = cursor.offset;
                let batches = parse_batches(chunk.as_ref(), base, nonce, &mut cursor, true)?;
                if let Some((_, h)) = batches.iter().find(|(_, h)| h.first_ts_ms >= ts_ms) {
                    return Ok(h.base_seq);
                }
                if cursor.offset == before {
                    let h = batch_header_at(&*file, base, nonce, cursor.offset, cursor.expect_seq)
                        .await?;
                    if h.first_ts_ms >= ts_ms {
                        return Ok(h.base_seq);
                    }
                    cursor.offset += u64::from(h.batch_len);
                    cursor.expect_seq = h.next_seq();
                }
            }
        }
        Ok(self.durable_seq())
    }

    /// Deletes (recycles) the oldest sealed segments whose newest record arrived before
    /// `cutoff_ms`. Never touches the active segment. Returns how many went.
    pub async fn apply_retention(&self, cutoff_ms: i64) -> Result<usize, LogError> {
        let mut removed = 0;
        loop {
            let victim = {
                let st = self.st.borrow();
                st.sealed.iter().next().and_then(|(base, meta)| {
                    let last_ts = meta.seal.map_or_else(
                        || {
                            // No seal (index lost): the next segment's first arrival bounds it.
                            st.sealed
                                .range(base + 1..)
                                .next()
                                .map(|(_, m)| &m.index)
                                .unwrap_or(&st.active_meta.index)
                                .first_ts_ms()
                                .unwrap_or(i64::MAX)
                        },
                        |s| s.last_ts_ms,
                    );
                    (last_ts < cutoff_ms).then_some(*base)
                })
            };
            let Some(base) = victim else { break };
            self.st.borrow_mut().sealed.remove(&base);
            if self
                .reader
                .borrow()
                .as_ref()
                .is_some_and(|(b, _)| *b == base)
            {
                *self.reader.borrow_mut() = None;
            }
            let seg = self.dir.join(segment_file_name(base));
            self.spares.recycle(&*self.storage, &seg)?;
            let idx = self.dir.join(index_file_name(base));
            match self.storage.remove_file(&idx) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
            removed += 1;
        }
        if removed > 0 {
            self.storage.sync_dir(&self.dir)?;
            self.changed.notify_all();
        }
        Ok(removed)
    }

    /// The shard's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// How a staging buffer is sealed into the open round.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SealKind {
    /// Mid-round, the buffer is full: only its whole blocks are written; the partial last
    /// block moves into `tail_page` and starts the next buffer, so the buffers of one round
    /// cover disjoint block ranges and can be written concurrently.
    WholeBlocks,
    /// At flush time: the partial last block is padded with zeros (what the pre-written
    /// file holds there anyway), written, and also kept in `tail_page` for the next round.
    Padded,
}

fn seal_staging<F: SegFile>(st: &mut State<F>, mut staging: Staging<F>, how: SealKind) {
    let whole = align_down(staging.len as u64) as usize;
    st.active.tail_page[..staging.len - whole]
        .copy_from_slice(&staging.buf.as_ref()[whole..staging.len]);
    let write_len = match how {
        SealKind::WholeBlocks => whole,
        SealKind::Padded => {
            let padded = align_up(staging.len as u64) as usize;
            staging.buf.as_mut()[staging.len..padded].fill(0);
            padded
        }
    };
    if write_len == 0 {
        return;
    }
    staging.buf.trim(write_len);
    st.open_round.writes.push(PendingWrite {
        file: st.active.file.clone(),
        buf: Rc::new(staging.buf),
        pos: staging.file_pos,
    });
}

/// Writes every buffer of a round, concurrently: their block ranges are disjoint.
async fn write_buffers<F: SegFile>(round: &Round<F>) -> Result<(), LogError> {
    let writes = round
        .writes
        .iter()
        .map(|w| write_fully(&*w.file, w.buf.clone(), w.pos));
    for r in join_all(writes).await {
        r?;
    }
    Ok(())
}

/// fdatasyncs each file the round wrote.
async fn sync_files<F: SegFile>(round: &Round<F>) -> Result<(), LogError> {
    let mut synced: Vec<*const F> = Vec::new();
    for f in round.writes.iter().map(|w| &w.file) {
        let ptr = Rc::as_ptr(f);
        if !synced.contains(&ptr) {
            synced.push(ptr);
            f.fdatasync().await?;
        }
    }
    Ok(())
}

/// Minimal join of a few futures without a runtime dependency.
pub(crate) async fn join_all<T, Fut: std::future::Future<Output = T>>(
    futs: impl Iterator<Item = Fut>,
) -> Vec<T> {
    let mut pending: Vec<Pin<Box<Fut>>> = futs.map(Box::pin).collect();
    let mut results: Vec<Option<T>> = (0..pending.len()).map(|_| None).collect();
    std::future::poll_fn(move |cx| {
        let mut all = true;
        for (i, f) in pending.iter_mut().enumerate() {
            if results[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => results[i] = Some(v),
                    std::task::Poll::Pending => all = false,
                }
            }
        }
        if all {
            std::task::Poll::Ready(
                results
                    .iter_mut()
                    .map(|r| r.take().expect("ready"))
                    .collect(),
            )
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

use std::pin::Pin;

/// Writes a buffer completely. A short direct write is retried once for the remainder (the
/// kernel may split large writes); a write that makes no progress is an error.
async fn write_fully<F: SegFile>(file: &F, buf: Rc<F::Buf>, pos: u64) -> Result<(), LogError> {
    let total = buf.as_ref().as_ref().len();
    let mut done = file.write_at(buf.clone(), pos).await?;
    if done < total {
        // Retry the rest from a fresh aligned copy (short writes end on a block boundary).
        let rest_len = total - align_down(done as u64) as usize;
        let start = total - rest_len;
        let mut rest = file.alloc_buf(rest_len);
        rest.as_mut()
            .copy_from_slice(&buf.as_ref().as_ref()[start..]);
        let n = file.write_at(Rc::new(rest), pos + start as u64).await?;
        done = start + n;
    }
    if done < total {
        return Err(LogError::Io(format!(
            "short write: {done} of {total} bytes at {pos}"
        )));
    }
    Ok(())
}

fn new_active<F: SegFile>(
    file: Rc<F>,
    base: u64,
    nonce: u64,
    header: &SegmentHeader,
) -> (Active<F>, F::Buf) {
    let mut buf = file.alloc_buf(WRITE_CHUNK_BYTES_MIN);
    header.encode_page(buf.as_mut());
    let active = Active {
        base_seq: base,
        nonce,
        size: header.segment_bytes,
        file,
        write_end: SEGMENT_DATA_START,
        durable_end: SEGMENT_DATA_START,
        tail_page: Box::new([0u8; BLOCK_BYTES]),
        last_index_offset: 0,
    };
    (active, buf)
}

/// Scan position: the offset of the next batch and the sequence number it must start with.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    offset: u64,
    expect_seq: u64,
}

/// Reads `[pos, min(pos + want, end))`.
async fn read_span<F: SegFile>(
    file: &F,
    pos: u64,
    want: usize,
    end: u64,
) -> Result<F::ReadBuf, LogError> {
    let len = want.min(end.saturating_sub(pos) as usize);
    Ok(file.read_at(pos, len).await?)
}

async fn batch_header_at<F: SegFile>(
    file: &F,
    seg_base: u64,
    nonce: u64,
    offset: u64,
    expect_seq: u64,
) -> Result<BatchHeader, LogError> {
    let head = file.read_at(offset, BATCH_HEADER_LEN).await?;
    check_header(head.as_ref(), nonce, expect_seq).map_err(|r| corrupt(seg_base, offset, r))
}

fn check_header(bytes: &[u8], nonce: u64, expect_seq: u64) -> Result<BatchHeader, String> {
    let h = batch::verify_stored_header(bytes).map_err(|e| e.to_string())?;
    if h.segment_nonce != nonce {
        return Err("batch from another segment (nonce mismatch)".into());
    }
    if h.base_seq != expect_seq {
        return Err(format!(
            "sequence {} where {} was expected",
            h.base_seq, expect_seq
        ));
    }
    Ok(h)
}

/// Parses whole batches from `chunk` (which starts at `cursor.offset`), verifying each
/// completely, and advances the cursor past them. Stops quietly at a batch that runs past
/// the chunk. With `strict`, a batch that fails verification is an error; otherwise the scan
/// stops there (recovery: that is the torn tail).
fn parse_batches(
    chunk: &[u8],
    seg_base: u64,
    nonce: u64,
    cursor: &mut Cursor,
    strict: bool,
) -> Result<Vec<(usize, BatchHeader)>, LogError> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while chunk.len() - pos >= BATCH_HEADER_LEN {
        let h = match check_header(&chunk[pos..], nonce, cursor.expect_seq) {
            Ok(h) => h,
            Err(reason) if strict => return Err(corrupt(seg_base, cursor.offset, reason)),
            Err(_) => break,
        };
        let len = h.batch_len as usize;
        if chunk.len() - pos < len {
            break;
        }
        if let Err(e) = batch::verify_stored(&chunk[pos..pos + len]) {
            if strict {
                return Err(corrupt(seg_base, cursor.offset, e));
            }
            break;
        }
        out.push((pos, h));
        pos += len;
        cursor.offset += len as u64;
        cursor.expect_seq = h.next_seq();
    }
    Ok(out)
}

struct Recovered {
    next_seq: u64,
    last_ts_ms: i64,
    torn_bytes: u64,
}

/// Loads a sealed segment's metadata from its index; rebuilds the index by scanning the
/// segment if the file is missing or damaged.
async fn load_sealed<S: Storage>(
    storage: &S,
    dir: &Path,
    ident: ShardIdent,
    base: u64,
    next_base: u64,
    cfg: &LogConfig,
) -> Result<SegmentMeta, LogError> {
    let path = dir.join(segment_file_name(base));
    let file = storage.open(&path).await?;
    let head = file.read_at(0, BLOCK_BYTES).await?;
    let header = SegmentHeader::decode(head.as_ref())
        .filter(|h| {
            h.base_seq == base && h.stream_id == ident.stream_id && h.shard_id == ident.shard_id
        })
        .ok_or_else(|| corrupt(base, 0, "sealed segment has no valid header"))?;
    let idx_path = dir.join(index_file_name(base));
    let idx = storage
        .read_small(&idx_path)?
        .map(|b| decode_index(&b))
        .unwrap_or_default();
    if let (false, Some(seal), Some(first)) = (idx.damaged, idx.seal, idx.entries.first()) {
        if seal.next_seq == next_base && first.seq == base {
            return Ok(SegmentMeta {
                base_seq: base,
                nonce: header.nonce,
                size: header.segment_bytes,
                index: SegmentIndex {
                    entries: idx.entries,
                },
                seal: Some(seal),
            });
        }
    }
    tracing::warn!(segment = %path.display(), "index missing or damaged; rebuilding from the log");
    let scan = scan_forward(
        &file,
        header.nonce,
        SEGMENT_DATA_START,
        base,
        cfg,
        header.segment_bytes,
    )
    .await?;
    if scan.next_seq != next_base {
        tracing::error!(segment = %path.display(), expected = next_base, found = scan.next_seq,
            "sealed segment ends early: a batch in the middle of the log is damaged");
    }
    let seal = Seal {
        next_seq: scan.next_seq,
        end_offset: scan.end_offset,
        last_ts_ms: scan.last_ts_ms,
    };
    let mut bytes = Vec::new();
    for e in &scan.entries {
        encode_index_entry(&mut bytes, e);
    }
    encode_seal(&mut bytes, &seal);
    storage.write_small_atomic(&idx_path, &bytes)?;
    Ok(SegmentMeta {
        base_seq: base,
        nonce: header.nonce,
        size: header.segment_bytes,
        index: SegmentIndex {
            entries: scan.entries,
        },
        seal: Some(seal),
    })
}

struct Scan {
    next_seq: u64,
    end_offset: u64,
    last_ts_ms: i64,
    entries: Vec<IndexEntry>,
    /// Header of the first batch that failed (the torn one), if it decoded.
    stop_claimed_len: Option<u32>,
}

/// Verifies batches forward from `offset` until the first that does not check out.
async fn scan_forward<F: SegFile>(
    file: &F,
    nonce: u64,
    offset: u64,
    expect_seq: u64,
    cfg: &LogConfig,
    end: u64,
) -> Result<Scan, LogError> {
    let mut cursor = Cursor { offset, expect_seq };
    let mut scan = Scan {
        next_seq: expect_seq,
        end_offset: offset,
        last_ts_ms: 0,
        entries: Vec::new(),
        stop_claimed_len: None,
    };
    let mut last_indexed: Option<u64> = None;
    loop {
        let chunk = read_span(file, cursor.offset, cfg.read_chunk_bytes, end).await?;
        let chunk_start = cursor.offset;
        let mut batches = parse_batches(chunk.as_ref(), 0, nonce, &mut cursor, false)?;
        let mut whole = None;
        if batches.is_empty() {
            // Either the end of the log, or one batch bigger than the chunk.
            let Ok(h) = check_header(chunk.as_ref(), nonce, cursor.expect_seq) else {
                break;
            };
            let buf = read_span(file, cursor.offset, h.batch_len as usize, end).await?;
            batches = parse_batches(buf.as_ref(), 0, nonce, &mut cursor, false)?;
            if batches.is_empty() {
                scan.stop_claimed_len = Some(h.batch_len);
                break;
            }
            whole = Some(());
        }
        let base_off = if whole.is_some() {
            cursor.offset - u64::from(batches[0].1.batch_len)
        } else {
            chunk_start
        };
        for (pos, h) in &batches {
            let off = base_off + *pos as u64;
            if last_indexed.is_none_or(|l| off - l >= cfg.index_interval_bytes) {
                scan.entries.push(IndexEntry {
                    seq: h.base_seq,
                    offset: off,
                    ts_ms: h.first_ts_ms,
                });
                last_indexed = Some(off);
            }
            scan.last_ts_ms = scan.last_ts_ms.max(h.last_ts_ms);
        }
        scan.next_seq = cursor.expect_seq;
        scan.end_offset = cursor.offset;
        if whole.is_none() && (cursor.offset - chunk_start) < chunk.as_ref().len() as u64 {
            // The chunk had room for more: check whether what follows is a batch that
            // merely straddles the chunk end; otherwise the log ends here.
            let rest = &chunk.as_ref()[(cursor.offset - chunk_start) as usize..];
            if rest.len() >= BATCH_HEADER_LEN {
                match check_header(rest, nonce, cursor.expect_seq) {
                    Ok(h) if (h.batch_len as usize) > rest.len() => continue,
                    Ok(h) => {
                        scan.stop_claimed_len = Some(h.batch_len);
                        break;
                    }
                    Err(_) => break,
                }
            } else if cursor.offset + (rest.len() as u64) < end && !rest.is_empty() {
                continue;
            } else {
                break;
            }
        }
        if cursor.offset >= end {
            break;
        }
    }
    Ok(scan)
}

/// Recovers the newest segment: validates the header, finds the last index hint that
/// points at a real batch, scans forward from it and cuts whatever follows the last good
/// batch. Restart cost is bounded by the index interval, not by the data retained.
async fn recover_active<S: Storage>(
    storage: &S,
    dir: &Path,
    ident: ShardIdent,
    base: u64,
    cfg: &LogConfig,
    clock: &dyn crate::clock::Clock,
) -> Result<(Active<S::File>, SegmentMeta, Recovered), LogError> {
    let path = dir.join(segment_file_name(base));
    let file = Rc::new(storage.open(&path).await?);
    let head = file.read_at(0, BLOCK_BYTES).await?;
    let header = SegmentHeader::decode(head.as_ref()).filter(|h| {
        h.base_seq == base && h.stream_id == ident.stream_id && h.shard_id == ident.shard_id
    });
    let idx_path = dir.join(index_file_name(base));
    let Some(header) = header else {
        // Never written (fresh, recycled, or the crash hit before the first flush): start it.
        let nonce = rand::random::<u64>();
        let size = align_down(file.size().await?);
        let header = SegmentHeader {
            stream_id: ident.stream_id,
            shard_id: ident.shard_id,
            base_seq: base,
            nonce,
            created_ms: clock.now_ms(),
            segment_bytes: size,
        };
        let _ = storage.remove_file(&idx_path);
        let (mut active, buf) = new_active(file, base, nonce, &header);
        // Write the header page now so that the segment is self-describing on disk.
        let mut buf = buf;
        buf.trim(BLOCK_BYTES);
        write_fully(&*active.file, Rc::new(buf), 0).await?;
        active.file.fdatasync().await?;
        active.durable_end = SEGMENT_DATA_START;
        let meta = SegmentMeta {
            base_seq: base,
            nonce,
            size,
            index: SegmentIndex::default(),
            seal: None,
        };
        return Ok((
            active,
            meta,
            Recovered {
                next_seq: base,
                last_ts_ms: 0,
                torn_bytes: 0,
            },
        ));
    };
    let hints = storage
        .read_small(&idx_path)?
        .map(|b| decode_index(&b))
        .unwrap_or_default();
    let original = hints.entries.clone();
    let mut entries = hints.entries;
    // Walk the hints from the newest back to one that points at a real batch.
    let (start_offset, start_seq) = loop {
        let Some(e) = entries.last().copied() else {
            break (SEGMENT_DATA_START, base);
        };
        let ok = match file.read_at(e.offset, BATCH_HEADER_LEN).await {
            Ok(h) => check_header(h.as_ref(), header.nonce, e.seq).is_ok(),
            Err(_) => false,
        };
        if ok {
            entries.pop();
            break (e.offset, e.seq);
        }
        entries.pop();
    };
    let size = header.segment_bytes;
    let scan = scan_forward(&*file, header.nonce, start_offset, start_seq, cfg, size).await?;
    entries.extend(scan.entries.iter().copied());
    let rebuilt = hints.damaged || entries != original;
    // Cut the torn tail: zero from the end of the last good batch over whatever a torn
    // batch claimed (or one interval), so stale bytes can never be mistaken for data.
    let end = scan.end_offset;
    let tail_probe = file.read_at(end, BATCH_HEADER_LEN).await?;
    let mut torn_bytes = 0;
    if tail_probe.as_ref().iter().any(|&b| b != 0) {
        let claimed = scan.stop_claimed_len.map_or(0, u64::from);
        let zero_to = align_up(end + claimed.max(cfg.index_interval_bytes)).min(size);
        let first_block = align_down(end);
        let len = (zero_to - first_block) as usize;
        let mut buf = file.alloc_buf(len);
        buf.as_mut().fill(0);
        let keep = (end - first_block) as usize;
        let page = file.read_at(first_block, keep).await?;
        buf.as_mut()[..keep].copy_from_slice(page.as_ref());
        write_fully(&*file, Rc::new(buf), first_block).await?;
        file.fdatasync().await?;
        torn_bytes = zero_to - end;
        tracing::warn!(segment = %path.display(), offset = end, "cut a torn tail");
    }
    if rebuilt || torn_bytes > 0 {
        let mut bytes = Vec::new();
        for e in &entries {
            encode_index_entry(&mut bytes, e);
        }
        storage.write_small_atomic(&idx_path, &bytes)?;
    }
    // What we recovered may sit in the page cache only (a restart after a failed flush, or
    // writes that never reached their fdatasync); it is served from now on, so make it durable.
    file.fdatasync().await?;
    let mut tail_page = Box::new([0u8; BLOCK_BYTES]);
    let keep = (end % BLOCK_BYTES as u64) as usize;
    if keep > 0 {
        let page = file.read_at(align_down(end), keep).await?;
        tail_page[..keep].copy_from_slice(page.as_ref());
    }
    let last_index_offset = entries.last().map_or(0, |e| e.offset);
    let active = Active {
        base_seq: base,
        nonce: header.nonce,
        size,
        file,
        write_end: end,
        durable_end: end,
        tail_page,
        last_index_offset,
    };
    let meta = SegmentMeta {
        base_seq: base,
        nonce: header.nonce,
        size,
        index: SegmentIndex { entries },
        seal: None,
    };
    Ok((
        active,
        meta,
        Recovered {
            next_seq: scan.next_seq,
            last_ts_ms: scan.last_ts_ms,
            torn_bytes,
        },
    ))
}

#[cfg(test)]
impl<S: Storage> ShardLog<S> {
    /// Segment layout, for test failure messages.
    pub(crate) fn debug_segments(&self) -> String {
        let st = self.st.borrow();
        let mut out = String::new();
        for m in st.sealed.values() {
            out += &format!(
                "sealed {} size {} seal {:?} idx {}\n",
                m.base_seq,
                m.size,
                m.seal,
                m.index.entries.len()
            );
        }
        out += &format!(
            "active {} size {} write_end {} durable_end {} next {} durable {}\n",
            st.active.base_seq,
            st.active.size,
            st.active.write_end,
            st.active.durable_end,
            st.next_seq,
            st.durable_seq
        );
        out
    }
}
