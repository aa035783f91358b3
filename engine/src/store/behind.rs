//! Background work of a store: making space (volumes, journal files), writing journaled
//! bytes behind into their extents, and checkpoints.
//!
//! None of it acknowledges anything, so none of it is on an appender's path; the core runs
//! `background_step` in a task queue of its own with a small share of the CPU (see
//! `runtime.rs`), and appenders only wait for it when a bound is reached (memory for
//! unwritten bytes, journal space, free extents).
//!
//! Write-behind writes a shard's sealed pieces in order (a padded piece shares its last
//! block with the next), one shard at a time per writer, never concurrently with a round
//! that writes the same shard in place (`direct`, `direct_round`), and without a flush:
//! the journal still holds those bytes, and the next checkpoint fdatasyncs the volumes.

use std::rc::Rc;

use super::layout::{journal_file_name, volume_file_name, ExtentId, ShardKey, MANIFEST_FILE};
use super::manifest::{self, ExtentRecord, Manifest, ShardRecord};
use super::shard::{seal_padded, seal_staging};
use super::{join_all, write_fully, State, Store, StoreError, SPACE_RETRY_MS};
use crate::io::{align_down, align_up, SegFile, Storage, BLOCK_BYTES};
use crate::notify::OnDrop;

/// Shards written behind concurrently by one background step.
const BEHIND_CONCURRENCY: usize = 4;

/// Shards one look over a store short of memory queues for write-behind, largest first:
/// the look touches every shard (10,000 at `many-shards`), so it is made once for this
/// many, not once a step of `BEHIND_CONCURRENCY` (a sort of every shard a step was 5 % of
/// the core there: BENCHMARKS.md).
const PRESSED_PICK: usize = 64;

/// Shards a checkpoint writes behind at once.
const CHECKPOINT_CONCURRENCY: usize = 32;

/// A journal file's zero-fill goes out in writes of this size ...
pub(crate) const FILL_CHUNK_BYTES: u64 = 64 << 10;
/// ... and at most this much of it accumulates while no round needs it.
pub(crate) const FILL_CREDIT_MAX: u64 = 4 << 20;

/// Write-behind credit saved up while nothing needed it (a cap, so that a quiet spell is
/// not followed by a burst).
pub(crate) const BEHIND_CREDIT_MAX: i64 = 1 << 20;
/// The same cap for the prewrite of free volume space ...
pub(crate) const PREWRITE_CREDIT_MAX: i64 = 1 << 20;
/// ... which goes out in pieces of a quarter of a unit, at most this large (see
/// `Store::prewrite_some`).
pub(crate) const PREWRITE_CHUNK_BYTES: u64 = 256 << 10;

/// The prewrite's piece for units of `unit` bytes (powers of two of whole blocks).
pub(crate) fn prewrite_chunk(unit: u64) -> u64 {
    (unit / 4)
        .clamp(BLOCK_BYTES as u64, PREWRITE_CHUNK_BYTES)
        .min(unit)
}

/// A checkpoint's snapshot: the manifest, the extent ranges it claims that must be
/// written first (shard, extent, end), and the extents it records as free (quarantined
/// until it is on disk).
pub(crate) type Snapshot = (
    Manifest,
    Vec<(ShardKey, ExtentId, u64)>,
    Vec<(ExtentId, u32)>,
);

/// See `Store::checkpoint_inner`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CheckpointMode {
    Now,
    Deferred,
}

/// A journal file being zero-filled (see `Store::fill_journal_file`).
pub(crate) struct Fill<S: Storage> {
    slot: usize,
    file: Rc<S::File>,
    zeros: Rc<S::Buf>,
    pos: u64,
    len: u64,
}

impl<S: Storage> Store<S> {
    /// One unit of background work: space, a checkpoint when one is due, write-behind.
    /// Returns whether it did anything (the caller sleeps when it did not).
    pub async fn background_step(&self) -> Result<bool, StoreError> {
        if self.st.borrow().poisoned.is_some() || self.st.borrow().stopping {
            return Ok(false);
        }
        let mut did = self.prepare_space().await?;
        if self.checkpoint_due() {
            did |= self.checkpoint_as(self.checkpoint_mode()).await?;
        }
        did |= self.write_behind_some().await?;
        did |= self.prewrite_some().await?;
        Ok(did)
    }

    /// Resolves when background work may be waiting (a bound was reached, a round made a
    /// checkpoint due). The caller also wakes itself on a timer for time-based work.
    pub async fn work_signal(&self) {
        self.work.wait().await
    }

    fn checkpoint_due(&self) -> bool {
        let st = self.st.borrow();
        if st.checkpointing {
            return false;
        }
        let journal_tight = journal_tight(&st);
        let pending_old = st.pending_checkpoint.as_ref().is_some_and(|(_, taken_ms)| {
            self.clock.now_ms() - taken_ms >= self.cfg.checkpoint_interval_ms
        });
        pending_old
            || st.since_checkpoint_bytes >= self.cfg.checkpoint_bytes
            || st.checkpoint_urgent
            || (journal_tight && st.since_checkpoint_bytes > 0)
            || (st.checkpoint_owed
                && self.clock.now_ms() - st.last_checkpoint_ms >= self.cfg.checkpoint_interval_ms)
    }

    // ---------------------------------------------------------------- space

    /// Starts a journal file when none is free (and zero-fills it, paced), and creates a
    /// volume when free extents run low.
    async fn prepare_space(&self) -> Result<bool, StoreError> {
        // Busy, or nothing to make space for: a store without shards takes no disk.
        if self.st.borrow().space_busy || self.st.borrow().shards.is_empty() {
            return Ok(false);
        }
        let (journal_slot, need_volume) = {
            let st = self.st.borrow();
            let recently_failed = st.space_error.is_some()
                && self.clock.now_ms() - st.last_space_attempt_ms < SPACE_RETRY_MS;
            if recently_failed {
                return Ok(false);
            }
            // Keep a quarter of the next volume's size free, and at least two of the
            // largest extents; but no more than twice what every shard's next extent
            // takes (shards that write little roll small extents), so that space is made
            // in proportion to the shards that are busy.
            // (The sum over every shard is taken only when free space is below the rest of
            // the mark: this runs at every background step, over thousands of shards.)
            let units = self.cfg.volume_size(st.next_volume) / self.cfg.extent_bytes_min;
            let base_water = (units / 4).max(2 << self.cfg.max_order());
            let low = st.alloc.free_units() < base_water && {
                let next_extents: u64 = st.shards.values().map(|l| 1u64 << l.next_order).sum();
                st.alloc.free_units() < 2 * next_extents
            };
            // Or an appender needs an extent size that free space (fragmented) cannot give,
            // and no checkpoint is about to release more.
            let wanted = st.extent_wanted && st.quarantined_units() == 0 && !st.checkpointing;
            let need_volume = low || wanted;
            // The ring's second file is made once the first, active, has taken an eighth of
            // its size, or the store needs another volume (a store whose shards write
            // little never needs it; a busy one gets it before its volumes take the room
            // kept back for it); otherwise (no active file: rounds wait for one) and past
            // two, when none is free.
            let files = st.journal.slots.iter().filter(|s| s.file.is_some()).count();
            let second_due = files != 1
                || need_volume
                || st.journal.active.is_none()
                || st.journal.write_pos >= st.journal.file_bytes / 8;
            let slot = if st.journal.free_slots() == 0 && st.fill.is_none() && second_due {
                st.journal.slots.iter().position(|s| s.file.is_none())
            } else {
                None
            };
            (slot, need_volume)
        };
        let filling = self.st.borrow().fill.is_some();
        if journal_slot.is_none() && !need_volume && !filling {
            return Ok(false);
        }
        self.st.borrow_mut().space_busy = true;
        let _busy = OnDrop::new(|| self.st.borrow_mut().space_busy = false);
        let result = async {
            let mut did = false;
            if let Some(slot) = journal_slot {
                self.st.borrow_mut().last_space_attempt_ms = self.clock.now_ms();
                self.start_journal_file(slot).await?;
                did = true;
            }
            did |= self.fill_journal_file().await?;
            if need_volume {
                self.st.borrow_mut().last_space_attempt_ms = self.clock.now_ms();
                self.create_volume().await?;
                did = true;
            }
            Ok::<bool, StoreError>(did)
        }
        .await;
        let did = match result {
            Ok(did) => {
                if did && self.st.borrow_mut().space_error.take().is_some() {
                    tracing::info!(store = self.cfg.index, "space is available again");
                }
                did
            }
            Err(e) => {
                if self.st.borrow().space_error.is_none() {
                    tracing::warn!(store = self.cfg.index, error = %e, "cannot create space for data; writes that need it fail with StorageFull until it returns");
                }
                self.space_failed(&e).await;
                true
            }
        };
        if did {
            self.changed.notify_all();
        }
        Ok(did)
    }

    /// Creates a journal file under a temporary name, allocated but not yet written; the
    /// rounds then pace its zero-fill (`fill_journal_file`).
    async fn start_journal_file(&self, slot: usize) -> Result<(), StoreError> {
        let len = self.cfg.journal_file_bytes;
        let tmp = self.tmp_path(&journal_file_name(slot as u32));
        // The ring needs two files to turn. Past that a journal file only buys speed (fewer
        // checkpoints), so it never takes more than half of what is free: data comes first.
        let files = self
            .st
            .borrow()
            .journal
            .slots
            .iter()
            .filter(|s| s.file.is_some())
            .count();
        self.room_for(if files >= 2 { 2 * len } else { len })
            .await?;
        self.storage.create_allocated(&tmp, len).await?;
        let file = match self.storage.open(&tmp).await {
            Ok(f) => Rc::new(f),
            Err(e) => {
                let _ = self.storage.remove_file(&tmp).await;
                return Err(e.into());
            }
        };
        let mut zeros = self.storage.alloc_buf(FILL_CHUNK_BYTES as usize);
        zeros.as_mut().fill(0);
        let mut st = self.st.borrow_mut();
        st.fill = Some(Fill {
            slot,
            file,
            zeros: Rc::new(zeros),
            pos: 0,
            len,
        });
        st.fill_credit = FILL_CHUNK_BYTES;
        Ok(())
    }

    /// Zero-fills the journal file being made as far as the rounds' credit allows (all of
    /// it when an appender waits for journal room), and once it is full makes it durable
    /// and puts it into the ring: every later round in it is an overwrite of written
    /// blocks, whose fdatasync needs no metadata commit.
    ///
    /// Filling 64 MiB at once would put tens of megabytes of dirty data in front of the
    /// next round's flush (a write-back disk flushes everything written before it): on the
    /// development VM that alone made 20-50 ms rounds. Paced, each round's flush carries at
    /// most twice its own bytes of zeros.
    async fn fill_journal_file(&self) -> Result<bool, StoreError> {
        let mut did = false;
        loop {
            let (file, zeros, pos, end) = {
                let mut st = self.st.borrow_mut();
                let starved = st.journal_starved;
                let credit = st.fill_credit;
                let Some(f) = st.fill.as_mut() else {
                    return Ok(did);
                };
                if f.pos >= f.len {
                    break;
                }
                let batch = if starved {
                    16
                } else {
                    (credit / FILL_CHUNK_BYTES) as usize
                };
                let n = batch.min((f.len - f.pos).div_ceil(FILL_CHUNK_BYTES) as usize);
                if n == 0 {
                    return Ok(did);
                }
                let pos = f.pos;
                let end = (pos + n as u64 * FILL_CHUNK_BYTES).min(f.len);
                f.pos = end;
                if !starved {
                    st.fill_credit -= n as u64 * FILL_CHUNK_BYTES;
                }
                let f = st.fill.as_ref().expect("filling");
                (f.file.clone(), f.zeros.clone(), pos, end)
            };
            let storage = &*self.storage;
            let writes = (pos..end).step_by(FILL_CHUNK_BYTES as usize).map(|p| {
                let zeros = if end - p >= FILL_CHUNK_BYTES {
                    zeros.clone()
                } else {
                    let mut b = storage.alloc_buf((end - p) as usize);
                    b.as_mut().fill(0);
                    Rc::new(b)
                };
                let file = file.clone();
                async move { write_fully(storage, &*file, zeros, p, false).await }
            });
            let result = join_all(writes)
                .await
                .into_iter()
                .collect::<Result<(), _>>();
            if let Err(e) = result {
                self.abandon_fill().await;
                return Err(e);
            }
            self.st.borrow_mut().stats.fill_bytes += end - pos;
            did = true;
        }
        // Full: make the zeros and the extents' written state durable, then the name.
        let (slot, file) = {
            let st = self.st.borrow();
            let f = st.fill.as_ref().expect("filling");
            (f.slot, f.file.clone())
        };
        let name = journal_file_name(slot as u32);
        let dir = &self.cfg.dir;
        let tmp = self.tmp_path(&name);
        let path = dir.join(&name);
        let finish = async {
            file.fdatasync().await?;
            self.storage.rename(&tmp, &path).await?;
            self.storage.sync_dir(dir).await?;
            Ok::<_, StoreError>(Rc::new(self.storage.open(&path).await?))
        }
        .await;
        let file = match finish {
            Ok(f) => f,
            Err(e) => {
                self.abandon_fill().await;
                let _ = self.storage.remove_file(&path).await;
                return Err(e);
            }
        };
        tracing::debug!(store = self.cfg.index, slot, "journal file ready");
        let mut st = self.st.borrow_mut();
        st.fill = None;
        st.fill_credit = 0;
        st.journal_starved = false;
        let s = &mut st.journal.slots[slot];
        s.file = Some(file);
        s.content_seq = 0;
        Ok(true)
    }

    /// Drops a fill that failed; its temporary file goes (recovery removes it too).
    async fn abandon_fill(&self) {
        let Some(f) = self.st.borrow_mut().fill.take() else {
            return;
        };
        let tmp = self.tmp_path(&journal_file_name(f.slot as u32));
        drop(f);
        let _ = self.storage.remove_file(&tmp).await;
    }

    /// A store gets its first journal file and volume before its first shard is served (at
    /// open, or when a shard is placed on it), so its first write does not wait for them.
    /// Failure (a full disk) is not fatal: writes that need the space fail with StorageFull
    /// until the background work creates it.
    pub(crate) async fn initial_space(&self) {
        // Never beside the background's space work (it would make the same first journal
        // file): if that is running, it is making the space already.
        let (need_journal, need_volume) = {
            let st = self.st.borrow();
            if st.space_busy {
                return;
            }
            (
                st.journal.slots.iter().all(|s| s.file.is_none()) && st.fill.is_none(),
                st.volumes.is_empty(),
            )
        };
        if !need_journal && !need_volume {
            return;
        }
        self.st.borrow_mut().space_busy = true;
        let _busy = OnDrop::new(|| self.st.borrow_mut().space_busy = false);
        let result = async {
            if need_journal {
                self.create_journal_file(0).await?;
            }
            if need_volume {
                self.create_volume().await?;
            }
            Ok::<(), StoreError>(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(store = self.cfg.index, error = %e, "cannot create the store's first files; writes wait for space");
            self.space_failed(&e).await;
        }
    }

    /// Notes a failed attempt to create space, and what the file system had free then:
    /// writes that need space are refused until the next try (`SPACE_RETRY_MS`), or until
    /// the file system has more room (`Store::space_returned`).
    async fn space_failed(&self, e: &StoreError) {
        let free = self.storage.free_bytes(&self.cfg.dir).await.unwrap_or(0);
        let mut st = self.st.borrow_mut();
        st.space_error = Some(e.to_string());
        st.last_space_attempt_ms = self.clock.now_ms();
        st.free_at_space_error = free;
    }

    /// Where a file is made before it is renamed into place (recovery removes leftovers).
    fn tmp_path(&self, name: &str) -> std::path::PathBuf {
        self.cfg.dir.join(format!("{name}.tmp"))
    }

    /// StorageFull unless the file system has `len` bytes free, and a sixteenth more.
    async fn room_for(&self, len: u64) -> Result<(), StoreError> {
        if self.storage.free_bytes(&self.cfg.dir).await? < len + len / 16 {
            return Err(StoreError::StorageFull);
        }
        Ok(())
    }

    /// Creates and syncs a file under a temporary name (zero-filled, or only allocated),
    /// then renames it into place and syncs the directory: a file with a final name is
    /// always complete and durable.
    async fn create_file(
        &self,
        name: &str,
        len: u64,
        zeroed: bool,
    ) -> Result<Rc<S::File>, StoreError> {
        let dir = &self.cfg.dir;
        self.room_for(len).await?;
        let tmp = self.tmp_path(name);
        let path = dir.join(name);
        if zeroed {
            self.storage.create_zeroed(&tmp, len).await?;
        } else {
            self.storage.create_allocated(&tmp, len).await?;
        }
        self.storage.rename(&tmp, &path).await?;
        self.storage.sync_dir(dir).await?;
        Ok(Rc::new(self.storage.open(&path).await?))
    }

    async fn create_journal_file(&self, slot: usize) -> Result<(), StoreError> {
        let file = self
            .create_file(
                &journal_file_name(slot as u32),
                self.cfg.journal_file_bytes,
                true,
            )
            .await?;
        let mut st = self.st.borrow_mut();
        let s = &mut st.journal.slots[slot];
        s.file = Some(file);
        s.content_seq = 0;
        Ok(())
    }

    async fn create_volume(&self) -> Result<(), StoreError> {
        let n = {
            let mut st = self.st.borrow_mut();
            let n = st.next_volume;
            st.next_volume += 1;
            n
        };
        // Near a full file system, a smaller volume: what is free but a sixteenth, in whole
        // largest extents (at least one), so data gets the last of the space rather than
        // StorageFull while hundreds of megabytes are free.
        // The journal ring's second file (if it has neither it nor its fill yet) keeps its
        // room: without it the ring cannot turn and nothing could be written at all.
        let standard = self.cfg.volume_size(n);
        let journal_reserve = {
            let st = self.st.borrow();
            let files = st.journal.slots.iter().filter(|s| s.file.is_some()).count()
                + usize::from(st.fill.is_some());
            2usize.saturating_sub(files) as u64 * (self.cfg.journal_file_bytes * 17 / 16)
        };
        let free = self
            .storage
            .free_bytes(&self.cfg.dir)
            .await?
            .saturating_sub(journal_reserve);
        let size = if free >= standard + standard / 16 {
            standard
        } else {
            align_down_to(free - free / 16, self.cfg.extent_bytes_max)
        };
        if size < self.cfg.extent_bytes_max {
            return Err(StoreError::StorageFull);
        }
        // Journal files are zero-filled: every round is an overwrite of written blocks. A
        // volume is only allocated: zero-filling it first would write every byte twice on
        // a growing store (on the development VM, writes into allocated-but-unwritten
        // space cost 5-10 % more than overwrites; a zero-fill costs 100 %; BENCHMARKS.md).
        let file = self.create_file(&volume_file_name(n), size, false).await?;
        let mut st = self.st.borrow_mut();
        st.alloc
            .add_volume(n, (size / self.cfg.extent_bytes_min) as u32);
        st.extent_wanted = false;
        st.volumes.insert(n, file);
        tracing::debug!(store = self.cfg.index, volume = n, "volume ready");
        Ok(())
    }

    // ---------------------------------------------------------------- write-behind

    /// Writes behind the queued shards (and, under memory pressure, the largest ones);
    /// with none queued, what the kept snapshot claims, ahead of its checkpoint.
    ///
    /// A shard is queued when it has `write_behind_bytes` unwritten; a slow one never
    /// has, and its bytes would wait for the checkpoint. With 10,000 slow shards that was
    /// every checkpoint writing 10,000 partial tails (120-160 MB at 100,000 records/s)
    /// in a burst of about a second, and the rounds' fdatasyncs meanwhile carried it
    /// (20-50 ms each: the acknowledgement p99 at 10,000 shards was 30-52 ms against
    /// 7-9 ms at 10 shards; BENCHMARKS.md). The kept snapshot's targets are known an
    /// interval before its checkpoint: written ahead through the interval, paced by the
    /// rounds like the rest of write-behind, they leave the checkpoint little to write.
    /// The same writes, earlier: a target is written once (up to its end, which the
    /// checkpoint would have written), and one already written is skipped.
    async fn write_behind_some(&self) -> Result<bool, StoreError> {
        let jobs: Vec<(ShardKey, Option<(ExtentId, u64)>)> = {
            let mut guard = self.st.borrow_mut();
            let st = &mut *guard;
            // Paced by the rounds (each round's flush carries a little of it: a write-back
            // disk flushes everything written before the flush), unless memory runs short.
            let pressed = st.pending_bytes > self.cfg.memory_bytes_max / 2;
            if st.behind_credit <= 0 && !pressed {
                return Ok(false);
            }
            let mut jobs = Vec::new();
            while jobs.len() < BEHIND_CONCURRENCY {
                let Some(k) = st.behind_queue.pop_front() else {
                    break;
                };
                if let Some(log) = st.shards.get_mut(&k) {
                    log.queued_behind = false;
                    jobs.push((k, None));
                }
            }
            if jobs.is_empty() && pressed {
                // The largest, picked without sorting every shard; the first few written
                // now, the rest queued for the next steps.
                let mut by_size: Vec<(u64, ShardKey)> = st
                    .shards
                    .iter()
                    .map(|(k, l)| (l.unwritten_bytes(), *k))
                    .filter(|(n, _)| *n >= BLOCK_BYTES as u64)
                    .collect();
                if by_size.len() > PRESSED_PICK {
                    by_size.select_nth_unstable_by(PRESSED_PICK, |a, b| b.cmp(a));
                    by_size.truncate(PRESSED_PICK);
                }
                by_size.sort_unstable_by(|a, b| b.cmp(a));
                for (i, (_, k)) in by_size.into_iter().enumerate() {
                    if i < BEHIND_CONCURRENCY {
                        jobs.push((k, None));
                    } else if let Some(log) = st.shards.get_mut(&k) {
                        log.queued_behind = true;
                        st.behind_queue.push_back(k);
                    }
                }
            }
            if jobs.is_empty() && !st.checkpointing {
                if let Some(((_, targets, _), _)) = &st.pending_checkpoint {
                    while jobs.len() < BEHIND_CONCURRENCY && st.settle_ahead_at < targets.len() {
                        let (key, eid, target) = targets[st.settle_ahead_at];
                        st.settle_ahead_at += 1;
                        // Gone (retention) or written already: nothing to do. Busy (a round
                        // writes it in place, or another writer has it): the checkpoint
                        // waits for it as before.
                        let wanted = st.shards.get(&key).is_some_and(|l| {
                            !l.writing_behind
                                && l.direct.is_none()
                                && l.direct_round == 0
                                && l.extent(eid).is_some_and(|e| e.written_end < target)
                        });
                        if wanted {
                            jobs.push((key, Some((eid, target))));
                        }
                    }
                }
            }
            jobs
        };
        if jobs.is_empty() {
            return Ok(false);
        }
        let mut did = false;
        for r in join_all(jobs.iter().map(|&(k, force)| self.write_behind(k, force))).await {
            did |= r?;
        }
        Ok(did)
    }

    /// Writes a shard's unwritten bytes into its extents: whole blocks of the extent being
    /// appended to, and closed extents completely; with `force`, also the partial block up
    /// to that offset of that extent (a checkpoint). Returns false if the shard is busy
    /// (another writer has it) or had nothing to write.
    pub(crate) async fn write_behind(
        &self,
        key: ShardKey,
        force: Option<(ExtentId, u64)>,
    ) -> Result<bool, StoreError> {
        let storage = &*self.storage;
        let jobs = {
            let mut guard = self.st.borrow_mut();
            let st = &mut *guard;
            let Some(log) = st.shards.get_mut(&key) else {
                return Ok(false);
            };
            if log.writing_behind || log.direct.is_some() || log.direct_round != 0 {
                return Ok(false);
            }
            let last = log.extents.back().map(|e| e.id);
            let mut jobs = Vec::new();
            for e in log.extents.iter_mut().filter(|e| e.written_end < e.end) {
                let closed = Some(e.id) != last;
                let staged_from = e.staging.as_ref().map(|s| s.pos);
                match (closed, force) {
                    (true, _) => {
                        if staged_from.is_some_and(|p| p < e.end) {
                            let end = e.end;
                            seal_padded(e, end, storage.alloc_buf(BLOCK_BYTES));
                        }
                    }
                    (false, Some((fid, upto))) if fid == e.id && upto > e.written_end => {
                        if staged_from.is_some_and(|p| p < upto) {
                            let rest = (e.end - align_down(upto)) as usize;
                            seal_padded(e, upto, storage.alloc_buf(fresh_len(rest)));
                        }
                    }
                    _ => {
                        let upto = align_down(e.end);
                        if staged_from.is_some_and(|p| p < upto) {
                            let rest = (e.end - upto) as usize;
                            seal_staging(e, upto, storage.alloc_buf(fresh_len(rest)));
                        }
                    }
                }
                let vol = st
                    .volumes
                    .get(&e.id.volume())
                    .expect("extent in a volume")
                    .clone();
                let vpos = u64::from(e.id.unit()) * self.cfg.extent_bytes_min;
                for p in e.pieces.iter_mut().filter(|p| !p.writing) {
                    p.writing = true;
                    jobs.push((
                        e.id,
                        p.pos,
                        p.pos + p.len as u64,
                        vol.clone(),
                        p.buf.clone(),
                        vpos + p.pos,
                    ));
                }
            }
            if jobs.is_empty() {
                return Ok(false);
            }
            log.writing_behind = true;
            jobs
        };
        let mut result = Ok(());
        let mut bytes = 0u64;
        for (eid, from, to, file, buf, pos) in jobs {
            bytes += buf.as_ref().as_ref().len() as u64;
            if let Err(e) = write_fully(storage, &*file, buf, pos, false).await {
                result = Err(e);
                break;
            }
            // (Marks the volume for the next checkpoint's fdatasync.)
            self.piece_written(key, eid, from, to);
        }
        {
            let mut st = self.st.borrow_mut();
            if let Some(log) = st.shards.get_mut(&key) {
                log.writing_behind = false;
                // A closed extent that is wholly on disk needs no buffer any more.
                let last = log.extents.back().map(|e| e.id);
                for e in log.extents.iter_mut() {
                    if Some(e.id) != last && e.written_end >= e.end && e.pieces.is_empty() {
                        e.staging = None;
                    }
                }
            }
            st.stats.write_behind_bytes += bytes;
            st.behind_credit -= bytes as i64;
            if let Err(e) = &result {
                if st.poisoned.is_none() {
                    tracing::error!(store = self.cfg.index, error = %e, "write-behind failed; the store refuses writes until restart");
                    st.poisoned = Some(e.to_string());
                }
            }
        }
        self.changed.notify_all();
        result.map(|()| true)
    }

    // ---------------------------------------------------------------- prewrite

    /// Writes zeros into free volume space just above what is written already, so that
    /// the extents appenders get next are overwrites: a first write into fallocated space
    /// makes the fdatasync that covers it commit an extent conversion too (on the
    /// development VM, fio's durable 1 MiB write + fdatasync does 30 % less into fallocated
    /// space than into written space; BENCHMARKS.md).
    ///
    /// Keeps at most `prewrite_bytes` of free space written ahead, fills the volumes in
    /// order from their start (allocation is lowest address first), one unit at a time,
    /// each taken out of free space while its zeros are written. Recycled space (extents
    /// retention freed) is written already; the prewrite only matters while a store grows.
    ///
    /// Paced so that no round's flush carries much of it: a write-back disk's flush
    /// persists everything written before it, so zeros written just before a round's
    /// fdatasync lengthen that round. While rounds come, a quarter of their bytes, in
    /// pieces of a quarter unit (`prewrite_chunk`; a unit may take several steps). A whole
    /// 1 MiB unit whenever there was any credit made every ~40th round of 100 KB carry
    /// 1 MiB of zeros: `peer-shape`'s one producer had ack p99 4.3-6.5 ms, in pieces
    /// 1.8-3.5 ms, at the same throughput (BENCHMARKS.md). While no round has
    /// completed for 50 ms, a unit a step, made durable at once, so the first round after
    /// a quiet spell carries none of it.
    async fn prewrite_some(&self) -> Result<bool, StoreError> {
        const IDLE_MS: i64 = 50;
        if self.cfg.prewrite_bytes == 0 {
            return Ok(false);
        }
        let unit = self.cfg.extent_bytes_min;
        let chunk = prewrite_chunk(unit);
        let (mut budget, idle) = {
            let st = self.st.borrow();
            let idle = self.clock.now_ms() - st.last_round_ms >= IDLE_MS;
            // At most a unit a step: the other background work (write-behind, the
            // checkpoint) waits for it.
            let budget = if idle {
                unit as i64
            } else {
                st.prewrite_credit.min(unit as i64)
            };
            (budget, idle)
        };
        let part_pending = self.st.borrow().prewrite_part.is_some();
        if budget <= 0 || (!part_pending && self.prewritten_free_bytes() >= self.cfg.prewrite_bytes)
        {
            return Ok(false);
        }
        // One piece of zeros, made once and shared by every write of every step.
        let zeros = self
            .st
            .borrow_mut()
            .prewrite_zeros
            .get_or_insert_with(|| {
                let mut b = self.storage.alloc_buf(chunk as usize);
                b.as_mut().fill(0);
                Rc::new(b)
            })
            .clone();
        let mut did = false;
        while budget > 0 {
            // A unit an earlier step left part-written, if it is still free; else the
            // lowest free unit at or above a volume's written mark.
            let (id, mut done, file) = {
                let mut guard = self.st.borrow_mut();
                let st = &mut *guard;
                if st.poisoned.is_some() || st.stopping {
                    break;
                }
                let mut found = None;
                if let Some((id, done)) = st.prewrite_part.take() {
                    if let Some(file) = st.volumes.get(&id.volume()) {
                        if st.alloc.take(id, 0) {
                            found = Some((id, done, file.clone()));
                        }
                    }
                }
                if found.is_none() && self.prewritten_free_bytes_of(st) >= self.cfg.prewrite_bytes {
                    break;
                }
                for (&v, file) in &st.volumes {
                    if found.is_some() {
                        break;
                    }
                    let units = st.alloc.volume_units(v);
                    let w = st.prewritten.entry(v).or_insert(0);
                    while *w < units {
                        let id = ExtentId::new(v, *w);
                        *w += 1;
                        if st.alloc.take(id, 0) {
                            found = Some((id, 0, file.clone()));
                            break;
                        }
                    }
                }
                match found {
                    Some(f) => f,
                    None => break,
                }
            };
            let base = u64::from(id.unit()) * unit;
            // As many chunks as the budget allows, at once (under load a step's writes one
            // after another queued behind the rounds' and fell behind).
            let n = (unit - done)
                .div_ceil(chunk)
                .min((budget as u64).div_ceil(chunk));
            let writes = (0..n).map(|i| {
                write_fully(
                    &*self.storage,
                    &*file,
                    zeros.clone(),
                    base + done + i * chunk,
                    false,
                )
            });
            let mut result = join_all(writes)
                .await
                .into_iter()
                .collect::<Result<(), _>>();
            let written = n * chunk;
            done += written;
            budget -= written as i64;
            if result.is_ok() && idle && done >= unit {
                // Durable now, not in the next round's flush.
                result = file.fdatasync().await.map_err(StoreError::from);
            }
            let mut st = self.st.borrow_mut();
            st.alloc.free_now(id, 0);
            if let Err(e) = result {
                if st.poisoned.is_none() {
                    tracing::error!(store = self.cfg.index, error = %e, "prewrite failed; the store refuses writes until restart");
                    st.poisoned = Some(e.to_string());
                }
                drop(st);
                // Appenders waiting for space see the store is poisoned.
                self.changed.notify_all();
                return Err(e);
            }
            if done < unit {
                st.prewrite_part = Some((id, done));
            }
            // The next checkpoint's fdatasync commits the extents' written state.
            st.dirty_volumes.insert(id.volume());
            st.stats.prewrite_bytes += written;
            if !idle {
                st.prewrite_credit -= written as i64;
            }
            did = true;
        }
        if did {
            self.changed.notify_all();
        }
        Ok(did)
    }

    /// Free volume space below the volumes' written marks.
    pub(crate) fn prewritten_free_bytes(&self) -> u64 {
        self.prewritten_free_bytes_of(&self.st.borrow())
    }

    fn prewritten_free_bytes_of(&self, st: &State<S>) -> u64 {
        let units: u64 = st
            .alloc
            .free_blocks()
            .map(|(id, order)| {
                let w = st.prewritten.get(&id.volume()).copied().unwrap_or(0);
                let end = id.unit() + (1 << order);
                u64::from(end.min(w).saturating_sub(id.unit()))
            })
            .sum();
        units * self.cfg.extent_bytes_min
    }

    // ---------------------------------------------------------------- checkpoints

    /// How the due checkpoint goes: `Deferred` when the journal traffic made it due and
    /// nothing waits for it; `Now` when an appender waits for what it frees, the journal
    /// ring runs short, or it is due by time (freed extents, replayed data, or a deferred
    /// snapshot that has waited an interval).
    fn checkpoint_mode(&self) -> CheckpointMode {
        let st = self.st.borrow();
        if self.cfg.checkpoint_deferred
            && st.since_checkpoint_bytes >= self.cfg.checkpoint_bytes
            && !st.checkpoint_urgent
            && !journal_tight(&st)
        {
            CheckpointMode::Deferred
        } else {
            CheckpointMode::Now
        }
    }

    /// Takes a checkpoint of the state as of now: records every shard's durable extents and
    /// where journal replay must start, after writing behind and fdatasyncing everything it
    /// claims; then journal files before that position and extents freed before it are
    /// reusable, and a restart replays nothing written before this call. Returns false if
    /// one was already running.
    pub async fn checkpoint(&self) -> Result<bool, StoreError> {
        self.checkpoint_as(CheckpointMode::Now).await
    }

    pub(super) async fn checkpoint_as(&self, mode: CheckpointMode) -> Result<bool, StoreError> {
        {
            let mut st = self.st.borrow_mut();
            if let Some(p) = &st.poisoned {
                return Err(StoreError::Poisoned(p.clone()));
            }
            if st.checkpointing {
                return Ok(false);
            }
            st.checkpointing = true;
        }
        // Also if this future is dropped half-way (a shutdown): a stuck flag would stop
        // every later checkpoint.
        let guard = OnDrop::new(|| self.st.borrow_mut().checkpointing = false);
        // A snapshot retention made unwritable is retried at once when the checkpoint is
        // wanted now (the next snapshot sees the retention).
        let result = loop {
            match self.checkpoint_inner(mode).await {
                Ok(false) if mode == CheckpointMode::Now => continue,
                r => break r.map(|_| ()),
            }
        };
        drop(guard);
        {
            let mut st = self.st.borrow_mut();
            if let Err(e) = &result {
                if st.poisoned.is_none() {
                    tracing::error!(store = self.cfg.index, error = %e, "checkpoint failed; the store refuses writes until restart");
                    st.poisoned = Some(e.to_string());
                }
            }
        }
        self.changed.notify_all();
        result.map(|()| true)
    }

    /// `Now`: snapshots the state, writes behind what it claims, syncs, records it.
    /// `Deferred`: snapshots the state and keeps the snapshot for the next checkpoint, and
    /// records the one kept by the last (if any). By then write-behind has written nearly
    /// everything that one claims (a busy shard's bytes are written behind in pieces long
    /// before an interval of journal passes, and slow shards' tails are written ahead of
    /// the checkpoint through the interval: `write_behind_some`), so the checkpoint
    /// writes little. Taken at once, a snapshot's claims are every busy shard's unwritten tail
    /// — at 256 shards of 1 MB/s, 50–140 MB written in one burst every half second, which
    /// the rounds' flushes beside it carried (rounds of 80–800 ms; BENCHMARKS.md). Recovery
    /// is unchanged: a manifest and the journal from its replay position, which the journal
    /// keeps (files before the last recorded manifest's position are reused, not later
    /// ones); the journal replayed after a crash grows by one interval (≤ 3 ×
    /// `checkpoint_bytes`).
    /// Returns false if the snapshot could not be written (see below).
    async fn checkpoint_inner(&self, mode: CheckpointMode) -> Result<bool, StoreError> {
        let started = std::time::Instant::now();
        let behind_before = self.st.borrow().stats.write_behind_bytes;
        let now = self.snapshot();
        let (mut manifest, targets, quarantine) = {
            let mut st = self.st.borrow_mut();
            let older = st.pending_checkpoint.take();
            match mode {
                CheckpointMode::Now => {
                    // What the kept snapshot would have released is released with this one.
                    let (m, t, mut q) = now;
                    if let Some(((_, _, older_q), _)) = older {
                        q.extend(older_q);
                    }
                    (m, t, q)
                }
                CheckpointMode::Deferred => {
                    st.pending_checkpoint = Some((now, self.clock.now_ms()));
                    st.settle_ahead_at = 0;
                    match older {
                        Some((snapshot, _)) => snapshot,
                        None => return Ok(true),
                    }
                }
            }
        };
        // Write behind everything the manifest will claim. An extent retention freed (or a
        // shard dropped) meanwhile is left out of the manifest instead: its bytes may never
        // be written, and it is free space to recovery (and quarantined until then).
        // Many shards at once (a store with 10,000 shards has as many partial blocks to
        // write): one at a time, a checkpoint took a second while appenders waited for the
        // journal files it frees.
        let mut gone: Vec<(ShardKey, ExtentId)> = Vec::new();
        for chunk in targets.chunks(CHECKPOINT_CONCURRENCY) {
            let settled = join_all(
                chunk
                    .iter()
                    .map(|&(key, eid, target)| self.settle(key, eid, target)),
            )
            .await;
            for r in settled {
                gone.extend(r?);
            }
        }
        for (key, eid) in gone {
            if let Some(rec) = manifest
                .shards
                .iter_mut()
                .find(|r| r.stream_id == key.stream_id && r.shard_id == key.shard_id)
            {
                // Retention frees a shard's extents oldest first: the claimed ones before a
                // gone one are gone too (freed whole; written, so not among the targets).
                // Claiming them but not the gone one would leave a gap the journal cannot
                // fill (the model check, seed 3982, once snapshots were kept for an
                // interval).
                if let Some(i) = rec.extents.iter().position(|x| x.id == eid.0) {
                    rec.extents.drain(..=i);
                }
            }
        }
        {
            // Retention may have freed every extent the snapshot claims of a shard that
            // goes on in an extent opened after it. Without a claimed extent the manifest
            // would not say where that shard continues, and replay would cut it at the
            // journal's roll into its next extent (the model check, seed 953, once
            // snapshots were kept for an interval). Such a snapshot is not written: its
            // extents wait for the next checkpoint's snapshot, which sees the retention.
            let mut st = self.st.borrow_mut();
            let emptied_live = manifest.shards.iter().any(|r| {
                r.extents.is_empty()
                    && st.shards.contains_key(&ShardKey {
                        stream_id: r.stream_id,
                        shard_id: r.shard_id,
                    })
            });
            if emptied_live {
                for (id, order) in quarantine {
                    st.alloc.free_later(id, order);
                }
                st.checkpoint_owed = true;
                return Ok(false);
            }
        }
        manifest.shards.retain(|r| !r.extents.is_empty());
        // Every volume written since its last fdatasync, the claimed bytes among them.
        let files: Vec<Rc<S::File>> = {
            let mut st = self.st.borrow_mut();
            let dirty = std::mem::take(&mut st.dirty_volumes);
            dirty
                .iter()
                .filter_map(|v| st.volumes.get(v).cloned())
                .collect()
        };
        let written_us = started.elapsed().as_micros() as u64;
        for r in join_all(files.iter().map(|f| f.fdatasync())).await {
            r?;
        }
        let synced_us = started.elapsed().as_micros() as u64;
        // A write or fdatasync that failed meanwhile (a round's) leaves nothing certain
        // about what reached the disk: no manifest then (recovery replays the journal).
        if let Some(p) = &self.st.borrow().poisoned {
            return Err(StoreError::Poisoned(p.clone()));
        }
        manifest.checkpoint = self.st.borrow().checkpoints + 1;
        let bytes = manifest::encode(&manifest);
        self.storage
            .write_small_atomic(&self.cfg.dir.join(MANIFEST_FILE), &bytes)
            .await?;
        let mut st = self.st.borrow_mut();
        st.journal.checkpoint_pos = manifest.replay_from;
        st.alloc.release(quarantine);
        st.checkpoints = manifest.checkpoint;
        st.last_checkpoint_ms = self.clock.now_ms();
        st.stats.checkpoints += 1;
        st.stats.checkpoint_syncs += files.len() as u64;
        tracing::debug!(
            store = self.cfg.index,
            ?mode,
            extents_to_write = targets.len(),
            written_bytes = st.stats.write_behind_bytes - behind_before,
            volumes = files.len(),
            write_us = written_us,
            sync_us = synced_us - written_us,
            total_us = started.elapsed().as_micros() as u64,
            "checkpoint"
        );
        Ok(true)
    }

    /// Writes a shard's extent behind up to `target` for a checkpoint (waiting for a round
    /// or another writer that has the shard); `Some` if the extent is gone meanwhile.
    async fn settle(
        &self,
        key: ShardKey,
        eid: ExtentId,
        target: u64,
    ) -> Result<Option<(ShardKey, ExtentId)>, StoreError> {
        loop {
            let busy = {
                let st = self.st.borrow();
                if let Some(p) = &st.poisoned {
                    return Err(StoreError::Poisoned(p.clone()));
                }
                let Some(e) = st.shards.get(&key).and_then(|l| l.extent(eid)) else {
                    return Ok(Some((key, eid)));
                };
                let log = &st.shards[&key];
                if e.written_end >= target {
                    return Ok(None);
                }
                log.writing_behind || log.direct.is_some() || log.direct_round != 0
            };
            if busy {
                // A round writes it in place, or another writer has it: wait for them.
                self.changed.wait().await;
                continue;
            }
            self.write_behind(key, Some((eid, target))).await?;
        }
    }

    /// The manifest as of the last durable round, the writes it depends on, and the
    /// extents it records as free.
    fn snapshot(&self) -> Snapshot {
        let mut guard = self.st.borrow_mut();
        let st = &mut *guard;
        let replay_from = st.journal.durable_pos;
        let quarantine = st.alloc.take_quarantine();
        let mut keys: Vec<ShardKey> = st.shards.keys().copied().collect();
        keys.sort_unstable();
        let mut shards = Vec::new();
        let mut targets = Vec::new();
        for key in keys {
            let log = &st.shards[&key];
            let mut extents = Vec::new();
            for (i, e) in log.extents.iter().enumerate() {
                if !e.opened_durable {
                    break;
                }
                let sealed = log.extents.get(i + 1).is_some_and(|n| n.opened_durable);
                let has_data = e.durable_end > super::layout::EXTENT_DATA_START;
                extents.push(ExtentRecord {
                    id: e.id.0,
                    order: e.order,
                    base_seq: e.base_seq,
                    nonce: e.nonce,
                    created_ms: e.created_ms,
                    first_ts_ms: if has_data {
                        e.first_ts_ms.unwrap_or(i64::MIN)
                    } else {
                        i64::MIN
                    },
                    end_offset: e.durable_end,
                    end_seq: e.durable_end_seq,
                    last_ts_ms: e.durable_last_ts_ms,
                    sealed,
                });
                if e.written_end < e.durable_end {
                    targets.push((key, e.id, e.durable_end));
                }
            }
            if !extents.is_empty() {
                shards.push(ShardRecord {
                    stream_id: key.stream_id,
                    shard_id: key.shard_id,
                    extents,
                });
            }
        }
        st.since_checkpoint_bytes = 0;
        st.checkpoint_owed = false;
        st.checkpoint_urgent = false;
        let manifest = Manifest {
            store: self.cfg.index,
            checkpoint: st.checkpoints + 1,
            replay_from,
            next_file_seq: st.journal.next_file_seq,
            shards,
        };
        (manifest, targets, quarantine)
    }

    /// Stops taking appends, makes everything durable, and takes a final checkpoint, so a
    /// restart replays nothing.
    pub async fn shutdown(&self) -> Result<(), StoreError> {
        self.flush().await?;
        self.st.borrow_mut().stopping = true;
        self.wake_readers();
        if self.st.borrow().poisoned.is_some() {
            return Ok(());
        }
        while !self.checkpoint().await? {
            self.changed.wait().await;
        }
        Ok(())
    }
}

/// Whether the journal ring is running out of room: no free file, the active one more
/// than half used, and a checkpoint could free others. (While the ring is still growing,
/// a paced fill makes the next file.)
fn journal_tight<S: Storage>(st: &State<S>) -> bool {
    let others = st
        .journal
        .slots
        .iter()
        .enumerate()
        .any(|(i, s)| s.file.is_some() && Some(i) != st.journal.active);
    others && st.journal.free_slots() == 0 && st.journal.active.is_some() && {
        let left = st.journal.file_bytes - st.journal.write_pos;
        left < st.journal.file_bytes / 2
    }
}

/// Capacity of a fresh staging buffer that restarts with `rest` bytes.
fn fresh_len(rest: usize) -> usize {
    (align_up(rest as u64 + 1) as usize).max(BLOCK_BYTES)
}

/// `n` rounded down to a multiple of `unit`.
fn align_down_to(n: u64, unit: u64) -> u64 {
    n / unit * unit
}
