//! Opening a store: load the manifest, then replay the journal from the position it
//! records. Work is bounded by the journal written since the last checkpoint, not by the
//! data retained: the manifest says where every shard's durable bytes end, so no extent is
//! scanned.
//!
//! Replay rules (a shard's log is the longest valid prefix):
//! - Rounds are read in order: each must carry the file's nonce and the next round number,
//!   and its payload must match its CRC. The first that does not is where the journal ends
//!   (a torn round, or nothing written there); a later file continues the journal only if
//!   its header says it starts with the next round.
//! - A round's direct entries' bytes must verify in their volumes, all of them, before
//!   any of its entries is applied: a round whose in-place bytes are not all on disk never
//!   completed, and it is where the journal ends, like a torn round. (Applying the rest of
//!   it and cutting only that shard would leave the cut to be made again by every later
//!   recovery, which would then drop what was acknowledged for that shard after it.)
//! - A batch entry must continue its shard's sequence; a roll entry must open an extent at
//!   the shard's next sequence number in free space; a direct entry must continue its
//!   shard. A shard whose entry does not fit is cut there, and its later entries are
//!   dropped: rounds complete in order, so nothing after a round that did not complete was
//!   ever acknowledged.
//! - Journal files holding rounds past the end of the valid chain are invalidated (their
//!   headers zeroed and synced), and new rounds go to a new file, so a later recovery can
//!   never chain into stale rounds.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

/// A shard recovery had to cut: why, and what of it the replay left out after the cut.
struct Cut {
    why: String,
    entries: u64,
    bytes: u64,
}
use std::rc::Rc;

use spate_protocol::batch::{self, BatchHeader};

use super::alloc::ExtentAllocator;
use super::journal::{Journal, JournalSlot};
use super::layout::{
    decode_entries, parse_journal_file_name, parse_volume_file_name, Direct, Entry, JournalHeader,
    Roll, RoundHeader, ShardKey, EXTENT_DATA_START, JOURNAL_DATA_START, MANIFEST_FILE,
    ROUND_HEADER_LEN,
};
use super::manifest::{self, JournalPos, Manifest};
use super::shard::{seal_staging, Extent, ShardLog, Staging};
use super::{
    verify_span, OpenRound, State, Store, StoreConfig, StoreError, StoreStats, STAGING_BYTES_MIN,
};
use crate::clock::ClockRef;
use crate::io::{align_down, align_up, SegFile, Storage, BLOCK_BYTES};
use crate::notify::Notify;

/// Journal bytes read per step of replay.
const REPLAY_CHUNK_BYTES: usize = 4 << 20;

impl<S: Storage> Store<S> {
    /// Opens (or creates) the store in `cfg.dir` holding the shards `live` (the catalog's
    /// shards placed on it; data of any other shard is ignored and its space reused).
    pub async fn open(
        storage: Rc<S>,
        cfg: StoreConfig,
        clock: ClockRef,
        live: &[ShardKey],
    ) -> Result<Store<S>, StoreError> {
        cfg.validate().map_err(StoreError::Io)?;
        let dir = cfg.dir.clone();
        storage.create_dir_all(&dir).await?;
        if let Some(parent) = dir.parent() {
            storage.sync_dir(parent).await?;
        }
        let names = storage.list_dir(&dir).await?;
        let mut removed_tmp = false;
        for tmp in names.iter().filter(|n| n.ends_with(".tmp")) {
            // A file creation that crashed before its rename: never part of the store.
            storage.remove_file(&dir.join(tmp)).await?;
            removed_tmp = true;
        }
        if removed_tmp {
            storage.sync_dir(&dir).await?;
        }
        let manifest = match storage.read_small(&dir.join(MANIFEST_FILE)).await? {
            Some(bytes) => manifest::decode(&bytes).map_err(|why| {
                StoreError::Corrupt(format!(
                    "manifest {}: {why}",
                    dir.join(MANIFEST_FILE).display()
                ))
            })?,
            None => Manifest {
                store: cfg.index,
                checkpoint: 0,
                replay_from: JournalPos {
                    file_seq: 0,
                    offset: 0,
                    round: 1,
                },
                next_file_seq: 1,
                shards: Vec::new(),
            },
        };
        let mut alloc = ExtentAllocator::new(cfg.max_order());
        let mut volumes = BTreeMap::new();
        let mut next_volume = 0;
        let mut slots: Vec<JournalSlot<S::File>> = (0..cfg.journal_files)
            .map(|_| JournalSlot {
                file: None,
                content_seq: 0,
                nonce: 0,
            })
            .collect();
        let mut headers: Vec<Option<JournalHeader>> = vec![None; slots.len()];
        for name in &names {
            if let Some(n) = parse_volume_file_name(name) {
                let file = storage.open(&dir.join(name)).await?;
                let size = file.size().await?;
                if size == 0
                    || size % cfg.extent_bytes_max != 0
                    || size / cfg.extent_bytes_min > u64::from(u32::MAX)
                {
                    return Err(StoreError::Corrupt(format!(
                        "volume {name} holds {size} bytes, not a whole number of {}-byte extents",
                        cfg.extent_bytes_max
                    )));
                }
                alloc.add_volume(n, (size / cfg.extent_bytes_min) as u32);
                volumes.insert(n, Rc::new(file));
                next_volume = next_volume.max(n + 1);
            } else if let Some(slot) = parse_journal_file_name(name) {
                let slot = slot as usize;
                if slot >= slots.len() {
                    slots.resize_with(slot + 1, || JournalSlot {
                        file: None,
                        content_seq: 0,
                        nonce: 0,
                    });
                    headers.resize(slot + 1, None);
                }
                let file = storage.open(&dir.join(name)).await?;
                let head = file.read_at(0, BLOCK_BYTES).await?;
                let h = JournalHeader::decode(head.as_ref()).filter(|h| h.store == cfg.index);
                if let Some(h) = h {
                    slots[slot].content_seq = h.file_seq;
                    slots[slot].nonce = h.nonce;
                }
                headers[slot] = h;
                slots[slot].file = Some(Rc::new(file));
            }
        }
        // Shards as the manifest left them.
        let mut shards: crate::shard_table::ShardTable<ShardLog<S::Buf>> = live
            .iter()
            .map(|k| (*k, ShardLog::new(k.stream_id, k.shard_id, 0, 0)))
            .collect();
        for rec in &manifest.shards {
            let key = ShardKey {
                stream_id: rec.stream_id,
                shard_id: rec.shard_id,
            };
            let Some(log) = shards.get_mut(&key) else {
                continue;
            };
            for x in &rec.extents {
                if !alloc.take(x.extent(), x.order) {
                    return Err(StoreError::Corrupt(format!(
                        "manifest: extent {:?} of stream {} shard {} is outside the volumes or claimed twice",
                        x.extent(),
                        rec.stream_id,
                        rec.shard_id
                    )));
                }
                log.extents.push_back(Extent {
                    id: x.extent(),
                    order: x.order,
                    size: cfg.extent_size(x.order),
                    base_seq: x.base_seq,
                    nonce: x.nonce,
                    created_ms: x.created_ms,
                    first_ts_ms: (x.first_ts_ms != i64::MIN).then_some(x.first_ts_ms),
                    last_ts_ms: x.last_ts_ms,
                    end: x.end_offset,
                    end_seq: x.end_seq,
                    durable_end: x.end_offset,
                    durable_end_seq: x.end_seq,
                    durable_last_ts_ms: x.last_ts_ms,
                    opened_durable: true,
                    written_end: x.end_offset,
                    pieces: Vec::new(),
                    staging: None,
                    index: Vec::new(),
                    last_index_offset: x.end_offset,
                });
                log.next_seq = x.end_seq;
                log.last_ts_ms = log.last_ts_ms.max(x.last_ts_ms);
                log.next_order = x.order;
            }
            log.durable_seq = log.next_seq;
            log.durable_last_ts_ms = log.last_ts_ms;
        }
        let journal = Journal {
            slots,
            file_bytes: cfg.journal_file_bytes,
            store: cfg.index,
            active: None,
            active_seq: 0,
            active_nonce: 0,
            write_pos: 0,
            next_file_seq: manifest.next_file_seq.max(1),
            next_round: manifest.replay_from.round,
            durable_pos: manifest.replay_from,
            checkpoint_pos: manifest.replay_from,
        };
        let now = clock.now_ms();
        let round_rate = cfg.round_rate_max;
        let store = Store {
            storage,
            cfg,
            clock,
            st: RefCell::new(State {
                shards,
                alloc,
                volumes,
                next_volume,
                journal,
                open: OpenRound::new(0),
                open_id: 1,
                writing: false,
                round_tokens: 0.0,
                round_tokens_at: None,
                pacing: false,
                round_rate,
                synced_id: 0,
                sync_started_id: 0,
                durable_id: 0,
                poisoned: None,
                pending_bytes: 0,
                dirty_volumes: BTreeSet::new(),
                since_checkpoint_bytes: 0,
                last_checkpoint_ms: now,
                checkpoints: manifest.checkpoint,
                checkpointing: false,
                pending_checkpoint: None,
                settle_ahead_at: 0,
                checkpoint_owed: false,
                checkpoint_urgent: false,
                extent_wanted: false,
                behind_queue: Default::default(),
                space_busy: false,
                fill: None,
                fill_credit: 0,
                journal_starved: false,
                behind_credit: 0,
                prewritten: Default::default(),
                prewrite_credit: 0,
                prewrite_part: None,
                prewrite_zeros: None,
                last_round_ms: now,
                space_error: None,
                last_space_attempt_ms: i64::MIN / 2,
                free_at_space_error: 0,
                free_check_busy: false,
                stopping: false,
                stalled_rounds: 0,
                stalled_round_warned_ms: i64::MIN / 2,
                stats: StoreStats::default(),
            }),
            changed: Notify::new(),
            round_done: Notify::new(),
            piece_done: Notify::new(),
            work: Notify::new(),
        };
        store.replay(&manifest, &headers).await?;
        // A store without shards (a fresh server) takes no disk until one is placed on it.
        if !live.is_empty() {
            store.initial_space().await;
        }
        Ok(store)
    }

    /// Replays the journal from the manifest's position (see the module docs).
    async fn replay(
        &self,
        manifest: &Manifest,
        headers: &[Option<JournalHeader>],
    ) -> Result<(), StoreError> {
        let start = manifest.replay_from;
        let find = |pred: &dyn Fn(&JournalHeader) -> bool| -> Option<(usize, JournalHeader)> {
            headers
                .iter()
                .enumerate()
                .filter_map(|(i, h)| h.filter(|h| pred(h)).map(|h| (i, h)))
                .max_by_key(|(_, h)| h.file_seq)
        };
        let mut cur = if start.file_seq != 0 {
            find(&|h| h.file_seq == start.file_seq)
        } else {
            None
        };
        let mut pos = start.offset;
        if cur.is_none() {
            if start.file_seq != 0 {
                tracing::error!(
                    store = self.cfg.index,
                    file_seq = start.file_seq,
                    "the journal file the manifest names is missing"
                );
            }
            cur = find(&|h| h.first_round == start.round && h.file_seq > start.file_seq);
            pos = JOURNAL_DATA_START;
        }
        let mut expected = start.round;
        let mut end = start;
        let mut chain: BTreeSet<usize> = BTreeSet::new();
        let mut broken: BTreeMap<ShardKey, Cut> = BTreeMap::new();
        let mut replayed_rounds = 0u64;
        let mut replayed_bytes = 0u64;
        while let Some((slot, header)) = cur {
            chain.insert(slot);
            let file = self.st.borrow().journal.slots[slot]
                .file
                .clone()
                .expect("slot with a header has a file");
            let mut reader = ChunkReader::new(file, self.cfg.journal_file_bytes);
            loop {
                let Some((h, payload)) = reader.round(pos, header.nonce, expected).await? else {
                    break;
                };
                let entries = match decode_entries(&payload, h.entry_count) {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::warn!(store = self.cfg.index, round = expected, error = %e, "journal round does not decode; the journal ends here");
                        break;
                    }
                };
                // A round is durable only with all its in-place bytes: if one hot shard's
                // do not verify, the round never completed, so neither did any later one
                // (rounds complete in order), and none of its entries may be applied, or
                // a later recovery would cut that shard here again and drop what the next
                // run acknowledged after it.
                let mut verified = match self.torn_direct(&entries, &broken).await? {
                    Ok(v) => v,
                    Err(why) => {
                        tracing::warn!(store = self.cfg.index, round = expected, "in-place bytes of a journal round are not on disk ({why}): it never completed; the journal ends here");
                        break;
                    }
                };
                for (i, entry) in entries.into_iter().enumerate() {
                    self.apply(entry, verified[i].take(), &mut broken).await?;
                }
                replayed_rounds += 1;
                replayed_bytes += h.padded_len();
                pos += h.padded_len();
                expected += 1;
            }
            end = JournalPos {
                file_seq: header.file_seq,
                offset: pos,
                round: expected,
            };
            let prev_seq = header.file_seq;
            cur = find(&|h| h.first_round == expected && h.file_seq > prev_seq);
            pos = JOURNAL_DATA_START;
        }
        for (key, cut) in &broken {
            let st = self.st.borrow();
            let kept = st.shards.get(key).map(|l| (l.next_seq, l.last_ts_ms));
            let (next_seq, last_ts_ms) = kept.unwrap_or((0, 0));
            tracing::warn!(
                store = self.cfg.index,
                stream = key.stream_id,
                shard = key.shard_id,
                kept_through_seq = next_seq.checked_sub(1),
                last_kept_ts_ms = last_ts_ms,
                dropped_entries = cut.entries,
                dropped_bytes = cut.bytes,
                "recovery cut this shard at a round that never completed: {}; what came after was never acknowledged",
                cut.why
            );
        }
        // Invalidate files past the end of the chain, so no later recovery chains into them.
        let stale: Vec<usize> = headers
            .iter()
            .enumerate()
            .filter(|(i, h)| {
                h.is_some_and(|h| h.file_seq > end.file_seq && h.file_seq >= start.file_seq)
                    && !chain.contains(i)
            })
            .map(|(i, _)| i)
            .collect();
        for slot in stale {
            let file = self.st.borrow().journal.slots[slot]
                .file
                .clone()
                .expect("file");
            let mut zero = self.storage.alloc_buf(BLOCK_BYTES);
            zero.as_mut().fill(0);
            super::write_fully(&*self.storage, &*file, Rc::new(zero), 0, false).await?;
            file.fdatasync().await?;
            let mut st = self.st.borrow_mut();
            st.journal.slots[slot].content_seq = 0;
        }
        // Everything replayed is durable (it was read back from durable files, or it is
        // acknowledged by nothing and harmless to keep).
        let mut guard = self.st.borrow_mut();
        let st = &mut *guard;
        let max_seq = headers
            .iter()
            .flatten()
            .map(|h| h.file_seq)
            .max()
            .unwrap_or(0);
        st.journal.next_file_seq = st.journal.next_file_seq.max(max_seq + 1);
        st.journal.next_round = expected;
        st.journal.durable_pos = end;
        st.stats.replayed_rounds = replayed_rounds;
        st.stats.replayed_bytes = replayed_bytes;
        st.stats.cut_shards = broken.len() as u64;
        let mut pending = 0usize;
        for (key, log) in st.shards.iter_mut() {
            for e in log.extents.iter_mut() {
                e.opened_durable = true;
                e.durable_end = e.end;
                e.durable_end_seq = e.end_seq;
                e.durable_last_ts_ms = e.last_ts_ms;
                pending += e.unwritten_bytes() as usize;
            }
            log.durable_seq = log.next_seq;
            log.durable_last_ts_ms = log.last_ts_ms;
            if log.unwritten_bytes() > 0 {
                log.queued_behind = true;
                st.behind_queue.push_back(*key);
            }
        }
        st.pending_bytes = pending;
        // Replayed data pins the journal files it came from: checkpoint soon.
        st.checkpoint_urgent = replayed_rounds > 0;
        tracing::info!(
            store = self.cfg.index,
            rounds = replayed_rounds,
            bytes = replayed_bytes,
            shards_cut = broken.len(),
            end_round = end.round,
            end_file = end.file_seq,
            end_offset = end.offset,
            "journal replayed: every round that completed, up to where the journal ends"
        );
        Ok(())
    }

    /// Checks the in-place bytes of every direct entry of a round before any of its
    /// entries is applied: why the first that does not verify fails, or the bytes read (per
    /// entry, for `apply`, so they are read once). A direct entry whose shard state does
    /// not match (no such extent, another position) is left to `apply`, which cuts that
    /// shard.
    #[allow(clippy::type_complexity)]
    async fn torn_direct(
        &self,
        entries: &[Entry<'_>],
        broken: &BTreeMap<ShardKey, Cut>,
    ) -> Result<Result<Vec<Option<<S::File as SegFile>::ReadBuf>>, String>, StoreError> {
        let mut read: Vec<Option<<S::File as SegFile>::ReadBuf>> =
            (0..entries.len()).map(|_| None).collect();
        for (i, entry) in entries.iter().enumerate() {
            let Entry::Direct(key, d) = entry else {
                continue;
            };
            // The extent's nonce: from a roll into it earlier in this round, or from the
            // shard's active extent.
            let rolled = entries[..i].iter().rev().find_map(|e| match e {
                Entry::Roll(k, r) if k == key && r.extent == d.extent => Some(r.nonce),
                _ => None,
            });
            let (file, vpos, nonce) = {
                let st = self.st.borrow();
                if broken.contains_key(key) {
                    continue;
                }
                let Some(log) = st.shards.get(key) else {
                    continue;
                };
                let nonce = match rolled {
                    Some(n) => n,
                    None => match log.active() {
                        Some(a) if a.id == d.extent => a.nonce,
                        _ => continue,
                    },
                };
                let Ok(file) = st.volume(d.extent) else {
                    continue;
                };
                (file, self.volume_pos(d.extent) + d.from_offset, nonce)
            };
            if d.to_offset < d.from_offset {
                continue;
            }
            let len = (d.to_offset - d.from_offset) as usize;
            let got = file.read_at(vpos, len).await?;
            if got.as_ref().len() != len {
                return Ok(Err(format!(
                    "stream {} shard {}: past the volume's end",
                    key.stream_id, key.shard_id
                )));
            }
            if let Err(why) = verify_span(got.as_ref(), nonce, d.from_seq, d.next_seq) {
                return Ok(Err(format!(
                    "stream {} shard {}: {why}",
                    key.stream_id, key.shard_id
                )));
            }
            read[i] = Some(got);
        }
        Ok(Ok(read))
    }

    /// Applies one journal entry during replay.
    async fn apply(
        &self,
        entry: Entry<'_>,
        prefetched: Option<<S::File as SegFile>::ReadBuf>,
        broken: &mut BTreeMap<ShardKey, Cut>,
    ) -> Result<(), StoreError> {
        let (key, len) = match &entry {
            Entry::Batch(k, b) => (*k, b.len() as u64),
            Entry::Roll(k, _) => (*k, 0),
            Entry::Direct(k, d) => (*k, d.to_offset.saturating_sub(d.from_offset)),
        };
        if let Some(cut) = broken.get_mut(&key) {
            cut.entries += 1;
            cut.bytes += len;
            return Ok(());
        }
        if !self.st.borrow().shards.contains_key(&key) {
            return Ok(());
        }
        let outcome = match entry {
            Entry::Batch(_, bytes) => {
                self.replay_tail(key).await?;
                self.replay_batch(key, bytes)?
            }
            Entry::Roll(_, r) => self.replay_roll(key, &r),
            Entry::Direct(_, d) => {
                self.replay_tail(key).await?;
                self.replay_direct(key, &d, prefetched).await?
            }
        };
        if let Err(why) = outcome {
            broken.insert(
                key,
                Cut {
                    why: why.to_string(),
                    entries: 1,
                    bytes: len,
                },
            );
        }
        Ok(())
    }

    /// Makes sure the shard's active extent has a staging buffer holding its partial last
    /// block, so replayed batches continue it.
    async fn replay_tail(&self, key: ShardKey) -> Result<(), StoreError> {
        let needs = {
            let st = self.st.borrow();
            st.shards[&key]
                .active()
                .is_some_and(|a| a.staging.is_none())
        };
        if needs {
            self.load_tail(key).await?;
        }
        Ok(())
    }

    fn replay_batch(&self, key: ShardKey, bytes: &[u8]) -> Result<Result<(), String>, StoreError> {
        let h = match batch::verify_stored(bytes) {
            Ok(h) => h,
            Err(e) => return Ok(Err(format!("journaled batch does not verify: {e}"))),
        };
        let mut guard = self.st.borrow_mut();
        let st = &mut *guard;
        let log = st.shards.get_mut(&key).expect("checked");
        if h.next_seq() <= log.next_seq {
            return Ok(Ok(())); // already in the checkpoint
        }
        if h.base_seq != log.next_seq {
            return Ok(Err(format!(
                "batch at {} where {} comes next",
                h.base_seq, log.next_seq
            )));
        }
        let Some(a) = log.extents.back() else {
            return Ok(Err("batch before any extent".into()));
        };
        if a.end + bytes.len() as u64 > a.size || h.segment_nonce != a.nonce {
            return Ok(Err("batch does not belong to the active extent".into()));
        }
        restage(
            log,
            &h,
            bytes,
            &*self.storage,
            self.cfg.write_chunk_bytes_max,
            self.cfg.index_interval_bytes,
        );
        st.pending_bytes += bytes.len();
        Ok(Ok(()))
    }

    fn replay_roll(&self, key: ShardKey, r: &Roll) -> Result<(), String> {
        let mut guard = self.st.borrow_mut();
        let st = &mut *guard;
        let log = st.shards.get_mut(&key).expect("checked");
        if r.base_seq != log.next_seq {
            return Err(format!(
                "roll at {} where {} comes next",
                r.base_seq, log.next_seq
            ));
        }
        if r.order > self.cfg.max_order() || !st.alloc.take(r.extent, r.order) {
            return Err(format!(
                "roll into extent {:?}, which is not free",
                r.extent
            ));
        }
        let size = self.cfg.extent_size(r.order);
        log.open_extent(
            r.extent,
            r.order,
            size,
            r.nonce,
            r.created_ms,
            self.storage.alloc_buf(STAGING_BYTES_MIN),
        );
        log.next_order = r.order;
        Ok(())
    }

    async fn replay_direct(
        &self,
        key: ShardKey,
        d: &Direct,
        prefetched: Option<<S::File as SegFile>::ReadBuf>,
    ) -> Result<Result<(), String>, StoreError> {
        let (file, vpos, nonce) = {
            let st = self.st.borrow();
            let log = &st.shards[&key];
            let Some(a) = log.active() else {
                return Ok(Err("direct entry before any extent".into()));
            };
            if a.id != d.extent
                || a.end != d.from_offset
                || log.next_seq != d.from_seq
                || d.to_offset > a.size
                || d.to_offset < d.from_offset
            {
                return Ok(Err(format!(
                    "direct entry {d:?} does not continue the shard"
                )));
            }
            (
                st.volume(d.extent)?,
                self.volume_pos(d.extent) + d.from_offset,
                a.nonce,
            )
        };
        let len = (d.to_offset - d.from_offset) as usize;
        // Read (and verified) already when the round was checked, from the same place.
        let got = match prefetched {
            Some(b) => b,
            None => file.read_at(vpos, len).await?,
        };
        let bytes = got.as_ref();
        if bytes.len() != len {
            return Ok(Err("direct bytes past the volume's end".into()));
        }
        let batches = match verify_span(bytes, nonce, d.from_seq, d.next_seq) {
            Ok(b) => b,
            Err(why) => {
                return Ok(Err(format!(
                    "direct bytes do not verify ({why}): their round never completed"
                )))
            }
        };
        let mut guard = self.st.borrow_mut();
        let st = &mut *guard;
        let log = st.shards.get_mut(&key).expect("checked");
        for (pos, h) in batches {
            let one = &bytes[pos..pos + h.batch_len as usize];
            restage(
                log,
                &h,
                one,
                &*self.storage,
                self.cfg.write_chunk_bytes_max,
                self.cfg.index_interval_bytes,
            );
        }
        // These bytes are already in the volume; writing them again is harmless, but they
        // do not count as pending memory beyond what the staging buffer holds.
        st.pending_bytes += len;
        Ok(Ok(()))
    }
}

/// Copies a stored (already stamped) batch into the shard's active extent during replay.
fn restage<S: Storage>(
    log: &mut ShardLog<S::Buf>,
    h: &BatchHeader,
    bytes: &[u8],
    storage: &S,
    chunk_max: usize,
    index_interval: u64,
) {
    let len = bytes.len();
    if !log.staging_room(len) {
        let a = log.extents.back_mut().expect("active");
        let cap = a.staging.as_ref().map_or(0, |s| s.buf.as_ref().len());
        let carry = (a.end - align_down(a.end)) as usize;
        let want = (cap * 2)
            .clamp(STAGING_BYTES_MIN, chunk_max)
            .max(align_up((carry + len) as u64) as usize);
        let upto = align_down(a.end);
        if a.staging.is_none() {
            a.staging = Some(Staging {
                pos: upto,
                len: 0,
                buf: storage.alloc_buf(want),
            });
        } else {
            seal_staging(a, upto, storage.alloc_buf(want));
        }
    }
    let a = log.extents.back_mut().expect("active");
    let offset = a.end;
    let s = a.staging.as_mut().expect("staging");
    s.buf.as_mut()[s.len..s.len + len].copy_from_slice(bytes);
    s.len += len;
    a.end += len as u64;
    a.end_seq = h.next_seq();
    a.first_ts_ms.get_or_insert(h.first_ts_ms);
    a.last_ts_ms = h.last_ts_ms;
    if offset == EXTENT_DATA_START || offset - a.last_index_offset >= index_interval {
        a.index.push(super::shard::IndexEntry {
            seq: h.base_seq,
            offset,
            ts_ms: h.first_ts_ms,
        });
        a.last_index_offset = offset;
    }
    log.next_seq = h.next_seq();
    log.last_ts_ms = log.last_ts_ms.max(h.last_ts_ms);
}

/// Reads a journal file forward in large chunks.
struct ChunkReader<F: SegFile> {
    file: Rc<F>,
    file_bytes: u64,
    buf: Vec<u8>,
    buf_pos: u64,
}

impl<F: SegFile> ChunkReader<F> {
    fn new(file: Rc<F>, file_bytes: u64) -> Self {
        ChunkReader {
            file,
            file_bytes,
            buf: Vec::new(),
            buf_pos: 0,
        }
    }

    async fn get(&mut self, pos: u64, len: usize) -> Result<Option<&[u8]>, StoreError> {
        if pos + len as u64 > self.file_bytes {
            return Ok(None);
        }
        let have = pos >= self.buf_pos && pos + len as u64 <= self.buf_pos + self.buf.len() as u64;
        if !have {
            let want = len
                .max(REPLAY_CHUNK_BYTES)
                .min((self.file_bytes - pos) as usize);
            let got = self.file.read_at(pos, want).await?;
            self.buf.clear();
            self.buf.extend_from_slice(got.as_ref());
            self.buf_pos = pos;
            if self.buf.len() < len {
                return Ok(None);
            }
        }
        let from = (pos - self.buf_pos) as usize;
        Ok(Some(&self.buf[from..from + len]))
    }

    /// The round at `pos` if it is the valid round `expected` of a file with `nonce`.
    async fn round(
        &mut self,
        pos: u64,
        nonce: u64,
        expected: u64,
    ) -> Result<Option<(RoundHeader, Vec<u8>)>, StoreError> {
        let Some(head) = self.get(pos, ROUND_HEADER_LEN).await? else {
            return Ok(None);
        };
        let Some(h) = RoundHeader::decode(head) else {
            return Ok(None);
        };
        if h.nonce != nonce || h.round != expected || pos + h.padded_len() > self.file_bytes {
            return Ok(None);
        }
        let Some(payload) = self
            .get(pos + ROUND_HEADER_LEN as u64, h.payload_len as usize)
            .await?
        else {
            return Ok(None);
        };
        if crc32c::crc32c(payload) != h.payload_crc {
            return Ok(None);
        }
        Ok(Some((h, payload.to_vec())))
    }
}
