//! One shard's log as its store keeps it: a list of extents, and the bytes of each that are
//! not yet written to its volume.
//!
//! Positions are offsets inside an extent. For the extent being appended to:
//! `durable_end ≤ end` (staged bytes beyond `durable_end` wait for their round), and every
//! byte at or after `mem_start()` is in memory; bytes before it are on disk (written, synced
//! by the round that wrote them directly or by the next checkpoint). In memory, an extent
//! holds *pieces* (sealed buffers waiting to be written, or being written) and one
//! *staging* buffer that appends go into. A piece is dropped once its write completed; its
//! bytes are then read from the volume.
//!
//! Everything here is synchronous: the store's async code borrows a `ShardLog` between
//! awaits, never across one.

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

use spate_protocol::batch::{self, BatchHeader, BATCH_HEADER_LEN};

use super::layout::{ExtentHeader, ExtentId, EXTENT_DATA_START};
use crate::crypto::{self, BatchContext, StreamKeys, TAG_BYTES};
use crate::io::{align_down, align_up, IoBuf, BLOCK_BYTES};
use crate::notify::Notify;

/// One sparse-index entry: where a batch starts and when it arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub seq: u64,
    pub offset: u64,
    pub ts_ms: i64,
}

/// A sealed run of an extent's bytes in memory, waiting to be written or being written.
pub(crate) struct Piece<B> {
    /// Block-aligned offset of `buf[0]` in the extent.
    pub pos: u64,
    /// Valid bytes (the buffer's length is this rounded up to a block).
    pub len: usize,
    pub buf: Rc<B>,
    /// A write of it is in flight.
    pub writing: bool,
}

/// The buffer appends go into.
pub(crate) struct Staging<B> {
    pub pos: u64,
    pub len: usize,
    pub buf: B,
}

pub(crate) struct Extent<B> {
    pub id: ExtentId,
    pub order: u32,
    pub size: u64,
    pub base_seq: u64,
    pub nonce: u64,
    pub created_ms: i64,
    pub first_ts_ms: Option<i64>,
    pub last_ts_ms: i64,
    /// End of staged batches, and the sequence number that comes next there.
    pub end: u64,
    pub end_seq: u64,
    /// End of batches whose round is durable.
    pub durable_end: u64,
    pub durable_end_seq: u64,
    pub durable_last_ts_ms: i64,
    /// The roll that opened this extent is durable (or it came from the manifest).
    pub opened_durable: bool,
    /// Bytes before this offset are in the volume with their final contents (written,
    /// synced by a direct round or the next checkpoint).
    pub written_end: u64,
    pub pieces: Vec<Piece<B>>,
    pub staging: Option<Staging<B>>,
    /// Sparse index: batch positions at least `index_interval_bytes` apart. After a restart
    /// it covers only what was appended since; lookups before its first entry scan.
    pub index: Vec<IndexEntry>,
    pub last_index_offset: u64,
}

impl<B: IoBuf> Extent<B> {
    /// Offset from which every byte is in memory (`end` when nothing is).
    pub fn mem_start(&self) -> u64 {
        self.pieces
            .first()
            .map(|p| p.pos)
            .or(self.staging.as_ref().map(|s| s.pos))
            .unwrap_or(self.end)
    }

    /// Bytes held in memory (buffer capacities).
    pub fn mem_bytes(&self) -> usize {
        self.pieces
            .iter()
            .map(|p| p.buf.as_ref().as_ref().len())
            .sum::<usize>()
            + self.staging.as_ref().map_or(0, |s| s.buf.as_ref().len())
    }

    /// Staged bytes not yet in the volume.
    pub fn unwritten_bytes(&self) -> u64 {
        self.end.saturating_sub(self.written_end)
    }

    /// Copies `[pos, pos + out.len())` from memory if it is all there; false otherwise.
    pub fn copy_from_mem(&self, pos: u64, out: &mut [u8]) -> bool {
        let end = pos + out.len() as u64;
        let mut at = pos;
        let mut runs: Vec<(u64, &[u8])> = self
            .pieces
            .iter()
            .map(|p| (p.pos, &p.buf.as_ref().as_ref()[..p.len]))
            .collect();
        if let Some(s) = &self.staging {
            runs.push((s.pos, &s.buf.as_ref()[..s.len]));
        }
        // Later runs win where they overlap (a staging buffer restarts with a copy of the
        // partial block the previous piece ended with).
        while at < end {
            let Some((rpos, bytes)) = runs
                .iter()
                .rev()
                .find(|(rpos, b)| *rpos <= at && at < rpos + b.len() as u64)
            else {
                return false;
            };
            let n = ((rpos + bytes.len() as u64).min(end) - at) as usize;
            let from = (at - rpos) as usize;
            let to = (at - pos) as usize;
            out[to..to + n].copy_from_slice(&bytes[from..from + n]);
            at += n as u64;
        }
        true
    }

    pub fn floor_seq(&self, seq: u64) -> Option<IndexEntry> {
        let i = self.index.partition_point(|e| e.seq <= seq);
        i.checked_sub(1).map(|i| self.index[i])
    }

    pub fn floor_ts(&self, ts_ms: i64) -> Option<IndexEntry> {
        let i = self.index.partition_point(|e| e.ts_ms < ts_ms);
        i.checked_sub(1).map(|i| self.index[i])
    }

    /// The extent header block, as it must be on disk.
    pub fn header(&self, stream_id: u64, shard_id: u32) -> ExtentHeader {
        ExtentHeader {
            stream_id,
            shard_id,
            order: self.order,
            base_seq: self.base_seq,
            nonce: self.nonce,
            created_ms: self.created_ms,
            id: self.id,
        }
    }
}

/// Where the direct part of a shard's contribution to the open round starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DirectStart {
    /// Index of the extent in the shard's list (by its id, stable across retention).
    pub extent: ExtentId,
    pub offset: u64,
    pub seq: u64,
}

pub(crate) struct ShardLog<B> {
    pub stream_id: u64,
    pub shard_id: u32,
    /// The stream's data keys (encryption at rest): batches are sealed under the current
    /// epoch's as they are staged, and reads open them. `None`: a stream never encrypted.
    pub keys: Option<Arc<StreamKeys>>,
    /// Oldest first; the last one is appended to.
    pub extents: VecDeque<Extent<B>>,
    pub next_seq: u64,
    pub durable_seq: u64,
    pub last_ts_ms: i64,
    pub durable_last_ts_ms: i64,
    /// Batch bytes staged into the open round (decides the direct path).
    pub round_bytes: usize,
    pub round_id: u64,
    /// Batch bytes the shard staged into the round before (it is hot when they were many).
    pub prev_round_bytes: usize,
    /// The shard writes its bytes in place in the open round, from here on.
    pub direct: Option<DirectStart>,
    /// Round whose direct write of this shard is in flight (0: none).
    pub direct_round: u64,
    /// A write-behind of this shard is in flight.
    pub writing_behind: bool,
    /// The shard is in the store's write-behind queue.
    pub queued_behind: bool,
    /// Size of the extent to open next (an order), grown while the shard is busy.
    pub next_order: u32,
    /// Long-polling readers wait here; woken when the durable end moves.
    pub changed: Rc<Notify>,
    /// Records below this are past the stream's retention though their extent is kept: the
    /// extent being appended to is never freed, so a shard no longer written (idle, or a
    /// closed parent) would serve its expired records for good. Derived from timestamps
    /// by each retention sweep (the first at start), so never persisted.
    pub expired_to: u64,
}

/// What a staged batch told the round.
pub(crate) struct Staged {
    pub base_seq: u64,
    pub ts_ms: i64,
    /// Offset of the batch in the extent.
    pub offset: u64,
    pub len: usize,
}

impl<B: IoBuf> ShardLog<B> {
    pub fn new(stream_id: u64, shard_id: u32, next_seq: u64, last_ts_ms: i64) -> ShardLog<B> {
        ShardLog {
            stream_id,
            shard_id,
            keys: None,
            extents: VecDeque::new(),
            next_seq,
            durable_seq: next_seq,
            last_ts_ms,
            durable_last_ts_ms: last_ts_ms,
            round_bytes: 0,
            round_id: 0,
            prev_round_bytes: 0,
            direct: None,
            direct_round: 0,
            writing_behind: false,
            queued_behind: false,
            next_order: 0,
            changed: Rc::new(Notify::new()),
            expired_to: 0,
        }
    }

    /// Oldest sequence number still retained.
    pub fn trim_horizon(&self) -> u64 {
        self.extents
            .front()
            .map_or(self.next_seq, |e| e.base_seq)
            .max(self.expired_to)
    }

    pub fn active(&self) -> Option<&Extent<B>> {
        self.extents.back()
    }

    /// Starts loading the active extent's state (a batch loop's hint for a shard it comes
    /// to soon: `crate::shard_table`).
    pub fn prefetch_active(&self) {
        if let Some(a) = self.extents.back() {
            crate::shard_table::prefetch_lines(a, std::mem::size_of_val(a));
        }
    }

    /// Starts loading the readers' wake-up (what a round's completion touches besides).
    pub fn prefetch_readers(&self) {
        crate::shard_table::prefetch_lines(Rc::as_ptr(&self.changed), 64);
    }

    /// Starts loading where the next staged batch goes.
    pub fn prefetch_staging(&self) {
        if let Some(s) = self.extents.back().and_then(|a| a.staging.as_ref()) {
            let buf = s.buf.as_ref();
            if s.len < buf.len() {
                crate::shard_table::prefetch_lines(&buf[s.len], 128);
            }
        }
    }

    pub fn extent(&self, id: ExtentId) -> Option<&Extent<B>> {
        self.extents.iter().find(|e| e.id == id)
    }

    pub fn extent_mut(&mut self, id: ExtentId) -> Option<&mut Extent<B>> {
        self.extents.iter_mut().find(|e| e.id == id)
    }

    /// Index of the extent holding `seq` (which must be retained and below `next_seq`).
    pub fn extent_index_of(&self, seq: u64) -> Option<usize> {
        let i = self.extents.partition_point(|e| e.base_seq <= seq);
        i.checked_sub(1)
    }

    pub fn mem_bytes(&self) -> usize {
        self.extents.iter().map(Extent::mem_bytes).sum()
    }

    /// Staged bytes not yet written to the volume.
    pub fn unwritten_bytes(&self) -> u64 {
        self.extents.iter().map(Extent::unwritten_bytes).sum()
    }

    /// Whether the next batch of `len` bytes needs a new extent (the active one is full, or
    /// it is older than `age_max_ms`).
    pub fn needs_roll(&self, len: u64, now_ms: i64, age_max_ms: i64) -> bool {
        match self.extents.back() {
            None => true,
            Some(a) => {
                a.end + len > a.size
                    || (a.end > EXTENT_DATA_START
                        && a.first_ts_ms
                            .is_some_and(|t| now_ms.saturating_sub(t) >= age_max_ms))
                    // Its records are all past retention: new ones go in a new extent, so
                    // the old one can be freed whole and a restart, which forgets
                    // `expired_to`, finds it expired again (records staged into it while
                    // the horizon moved are the exception: they keep it until it ages out).
                    || self.expired_to > a.base_seq
            }
        }
    }

    /// Opens a new extent at `next_seq` (the roll's durability is the round's business).
    /// Its header block goes into a fresh staging buffer, so it reaches the disk with the
    /// extent's first bytes.
    #[allow(clippy::too_many_arguments)]
    pub fn open_extent(
        &mut self,
        id: ExtentId,
        order: u32,
        size: u64,
        nonce: u64,
        created_ms: i64,
        staging: B,
    ) {
        let base_seq = self.next_seq;
        let mut e = Extent {
            id,
            order,
            size,
            base_seq,
            nonce,
            created_ms,
            first_ts_ms: None,
            last_ts_ms: self.last_ts_ms,
            end: EXTENT_DATA_START,
            end_seq: base_seq,
            durable_end: EXTENT_DATA_START,
            durable_end_seq: base_seq,
            durable_last_ts_ms: self.last_ts_ms,
            opened_durable: false,
            written_end: 0,
            pieces: Vec::new(),
            staging: None,
            index: Vec::new(),
            last_index_offset: 0,
        };
        let mut staging = staging;
        e.header(self.stream_id, self.shard_id)
            .encode_block(staging.as_mut());
        e.staging = Some(Staging {
            pos: 0,
            len: BLOCK_BYTES,
            buf: staging,
        });
        self.extents.push_back(e);
    }

    /// What a batch of `len` bytes takes in the log: its length, plus the GCM tag when the
    /// shard's stream seals new batches.
    pub fn stored_len(&self, len: usize) -> usize {
        match self.keys.as_deref().and_then(StreamKeys::sealing) {
            Some(_) => len + TAG_BYTES,
            None => len,
        }
    }

    /// Copies a checked batch into the active extent's staging buffer and stamps it there
    /// (the one copy from the request into memory that goes to disk); an encrypted
    /// stream's batch is then sealed in place (`crypto::seal_batch`), so the journal, the
    /// extent and write-behind only ever see ciphertext. The caller made sure the stored
    /// length (`stored_len`) fits and that the staging buffer has room (`staging_room`).
    pub fn stage(
        &mut self,
        batch: &[u8],
        record_count: u32,
        ts_ms: i64,
        index_interval: u64,
    ) -> Staged {
        let ts_ms = ts_ms.max(self.last_ts_ms);
        let base_seq = self.next_seq;
        let e = self.extents.back_mut().expect("an active extent");
        let offset = e.end;
        let s = e.staging.as_mut().expect("staging buffer");
        assert_eq!(
            s.pos + s.len as u64,
            offset,
            "staging buffer ends at the extent's end"
        );
        let sealing = self.keys.as_deref().and_then(StreamKeys::sealing);
        let len = batch.len() + if sealing.is_some() { TAG_BYTES } else { 0 };
        let dst = &mut s.buf.as_mut()[s.len..s.len + len];
        dst[..batch.len()].copy_from_slice(batch);
        batch::stamp(dst, base_seq, ts_ms, e.nonce);
        if let Some((epoch, key)) = sealing {
            let ctx = BatchContext {
                stream_id: self.stream_id,
                shard_id: self.shard_id,
            };
            crypto::seal_batch(key, epoch, ctx, dst);
        }
        s.len += len;
        e.end += len as u64;
        assert!(e.end <= e.size, "a batch was staged past the extent's end");
        self.next_seq += u64::from(record_count);
        e.end_seq = self.next_seq;
        e.first_ts_ms.get_or_insert(ts_ms);
        e.last_ts_ms = ts_ms;
        self.last_ts_ms = ts_ms;
        if offset == EXTENT_DATA_START || offset - e.last_index_offset >= index_interval {
            e.index.push(IndexEntry {
                seq: base_seq,
                offset,
                ts_ms,
            });
            e.last_index_offset = offset;
        }
        Staged {
            base_seq,
            ts_ms,
            offset,
            len,
        }
    }

    /// The stamped bytes of a batch just staged (to copy into the journal).
    pub fn staged_bytes(&self, st: &Staged) -> &[u8] {
        let e = self.extents.back().expect("active");
        let s = e.staging.as_ref().expect("staging");
        let from = (st.offset - s.pos) as usize;
        &s.buf.as_ref()[from..from + st.len]
    }

    /// Whether the active staging buffer can take `len` more bytes.
    pub fn staging_room(&self, len: usize) -> bool {
        self.extents.back().is_some_and(|e| {
            e.staging
                .as_ref()
                .is_some_and(|s| s.len + len <= s.buf.as_ref().len())
        })
    }
}

/// Seals the whole blocks of a staging buffer below `upto` (block-aligned) into a piece;
/// the staging buffer restarts at `upto` with a copy of the bytes from there on (a partial
/// block, plus whatever is staged beyond `upto`). `fresh` must hold them.
pub(crate) fn seal_staging<B: IoBuf>(e: &mut Extent<B>, upto: u64, mut fresh: B) {
    let s = e.staging.take().expect("staging");
    assert_eq!(upto % BLOCK_BYTES as u64, 0);
    assert!(upto >= s.pos && upto <= s.pos + align_up(s.len as u64));
    let keep_from = (upto - s.pos) as usize;
    let rest = s.len.saturating_sub(keep_from);
    fresh.as_mut()[..rest].copy_from_slice(&s.buf.as_ref()[keep_from..keep_from + rest]);
    let mut buf = s.buf;
    if keep_from > 0 {
        buf.trim(keep_from);
        e.pieces.push(Piece {
            pos: s.pos,
            len: keep_from,
            buf: Rc::new(buf),
            writing: false,
        });
    }
    e.staging = Some(Staging {
        pos: upto,
        len: rest,
        buf: fresh,
    });
}

/// Seals everything staged up to `upto` (any offset) into a piece padded with zeros to a
/// block, for a write that must cover a partial block (a direct round, a checkpoint). The
/// staging buffer restarts at the partial block with a copy of it and of what follows.
pub(crate) fn seal_padded<B: IoBuf>(e: &mut Extent<B>, upto: u64, mut fresh: B) {
    let s = e.staging.take().expect("staging");
    assert!(upto >= s.pos && upto <= s.pos + s.len as u64);
    let valid = (upto - s.pos) as usize;
    let padded = align_up(valid as u64) as usize;
    let restart = align_down(upto);
    let keep_from = (restart - s.pos) as usize;
    let rest = s.len - keep_from;
    fresh.as_mut()[..rest].copy_from_slice(&s.buf.as_ref()[keep_from..s.len]);
    let mut buf = s.buf;
    if valid > 0 {
        buf.as_mut()[valid..padded].fill(0);
        buf.trim(padded);
        e.pieces.push(Piece {
            pos: s.pos,
            len: valid,
            buf: Rc::new(buf),
            writing: false,
        });
    }
    e.staging = Some(Staging {
        pos: restart,
        len: rest,
        buf: fresh,
    });
}

/// Verifies the header of the batch at the start of `bytes` as stored in an extent with
/// `nonce`, whose base sequence number must be `expect_seq`.
pub(crate) fn check_stored_header(
    bytes: &[u8],
    nonce: u64,
    expect_seq: u64,
) -> Result<BatchHeader, String> {
    let h = batch::verify_stored_header(bytes).map_err(|e| e.to_string())?;
    if h.segment_nonce != nonce {
        return Err("batch from another extent (nonce mismatch)".into());
    }
    if h.base_seq != expect_seq {
        return Err(format!(
            "sequence {} where {} was expected",
            h.base_seq, expect_seq
        ));
    }
    Ok(h)
}

/// Parses whole batches at the start of `chunk` (stored at `offset` in an extent), fully
/// verified, until one runs past the chunk. Returns their positions in the chunk and
/// headers. With `strict`, a batch that fails verification is an error; otherwise parsing
/// stops there.
pub(crate) fn parse_batches(
    chunk: &[u8],
    nonce: u64,
    expect_seq: u64,
    strict: bool,
) -> Result<Vec<(usize, BatchHeader)>, (usize, String)> {
    match parse_batches_until_damage(chunk, nonce, expect_seq, 0) {
        (_, Some(d)) if strict => Err((d.at, d.why)),
        (out, _) => Ok(out),
    }
}

/// A batch that does not verify.
#[derive(Debug, Clone)]
pub(crate) struct Damage {
    /// Where it starts in the chunk.
    pub at: usize,
    pub why: String,
    /// Its header, when the header itself verifies (only the records are damaged): then
    /// exactly its records are lost, and reading can go on right after it.
    pub header: Option<BatchHeader>,
}

/// The whole batches at the start of `chunk` that verify, and the first one that does not,
/// if one does not. A batch cut by the end of the chunk is neither. Batches that end at or
/// before `serve_from` (a read wants none of their records) have only their headers
/// checked, which is all walking past them needs: a tip follower's read, which starts at
/// an indexed batch before its position, does not check again the records it skips.
pub(crate) fn parse_batches_until_damage(
    chunk: &[u8],
    nonce: u64,
    mut expect_seq: u64,
    serve_from: u64,
) -> (Vec<(usize, BatchHeader)>, Option<Damage>) {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while chunk.len() - pos >= BATCH_HEADER_LEN {
        let damage = |why: String, header| {
            Some(Damage {
                at: pos,
                why,
                header,
            })
        };
        let h = match check_stored_header(&chunk[pos..], nonce, expect_seq) {
            Ok(h) => h,
            Err(why) => return (out, damage(why, None)),
        };
        let len = h.batch_len as usize;
        if chunk.len() - pos < len {
            break;
        }
        if h.next_seq() > serve_from {
            if let Err(e) = batch::verify_stored(&chunk[pos..pos + len]) {
                return (out, damage(e.to_string(), Some(h)));
            }
        }
        out.push((pos, h));
        pos += len;
        expect_seq = h.next_seq();
    }
    (out, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::Storage;
    use crate::sim::{SimBuf, SimStorage};

    fn buf(len: usize) -> SimBuf {
        SimStorage::new(0).alloc_buf(len)
    }

    fn one(data: &[u8]) -> Vec<u8> {
        let mut b = batch::BatchBuilder::new();
        b.push(b"k", data, None).unwrap();
        b.finish()
    }

    #[test]
    fn stage_seal_and_read_back_from_memory() {
        let mut log: ShardLog<SimBuf> = ShardLog::new(1, 2, 0, 0);
        log.open_extent(ExtentId::new(0, 0), 0, 64 << 10, 99, 5, buf(16 << 10));
        let b = one(&[7u8; 3000]);
        let mut offsets = Vec::new();
        for i in 0..4 {
            let st = log.stage(&b, 1, 10 + i, 4096);
            offsets.push(st.offset);
            assert_eq!(st.base_seq, i as u64);
        }
        let e = log.extents.back_mut().unwrap();
        assert_eq!(e.end, 4096 + 4 * b.len() as u64);
        seal_staging(e, 8192, buf(16 << 10));
        let mut got = vec![0u8; b.len()];
        assert!(e.copy_from_mem(offsets[1], &mut got));
        let h = check_stored_header(&got, 99, 1).unwrap();
        assert_eq!(h.first_ts_ms, 11);
        let end = e.end;
        seal_padded(e, end, buf(16 << 10));
        assert!(e.copy_from_mem(offsets[3], &mut got));
        assert_eq!(e.mem_start(), 0);
        assert_eq!(e.staging.as_ref().unwrap().pos, align_down(end));
        // The header block went to disk with the first piece.
        assert!(ExtentHeader::decode(e.pieces[0].buf.as_ref().as_ref()).is_some());
        assert_eq!(
            e.index.len(),
            2,
            "an entry every 4 KiB: at 4096 and past 8192"
        );
    }

    #[test]
    fn skipped_batches_are_walked_by_their_headers_and_served_ones_verified() {
        // Three stored batches of one record each (sequence numbers 0, 1, 2); the second's
        // records damaged, its header intact.
        let mut chunk = Vec::new();
        let mut starts = Vec::new();
        for seq in 0..3u64 {
            let mut b = one(&[seq as u8; 100]);
            batch::stamp(&mut b, seq, 1_000 + seq as i64, 99);
            starts.push(chunk.len());
            chunk.extend_from_slice(&b);
        }
        let last = chunk.len() - 1;
        chunk[starts[2] - 1] ^= 0xff; // the last byte of the second batch's records
        assert!(chunk[last] == 2, "the third batch is intact");
        // Serving from 0 or 1 meets the damage at the second batch.
        for from in [0, 1] {
            let (ok, damage) = parse_batches_until_damage(&chunk, 99, 0, from);
            assert_eq!(ok.len(), 1, "from {from}");
            let d = damage.expect("damage");
            assert_eq!(d.at, starts[1]);
            assert_eq!(d.header.map(|h| h.base_seq), Some(1));
        }
        // A read from 2 walks past it by its header and gets the third, verified.
        let (ok, damage) = parse_batches_until_damage(&chunk, 99, 0, 2);
        assert!(damage.is_none());
        assert_eq!(
            ok.iter().map(|(_, h)| h.base_seq).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        // Damage in a batch that is served is still found.
        chunk[last] ^= 0xff;
        let (ok, damage) = parse_batches_until_damage(&chunk, 99, 0, 2);
        assert_eq!(ok.len(), 2);
        assert_eq!(damage.expect("damage").at, starts[2]);
    }

    #[test]
    fn rolls_on_size_and_age() {
        let mut log: ShardLog<SimBuf> = ShardLog::new(1, 2, 0, 0);
        assert!(log.needs_roll(100, 0, 1000));
        log.open_extent(ExtentId::new(0, 0), 0, 16 << 10, 1, 0, buf(16 << 10));
        assert!(!log.needs_roll(100, 0, 1000));
        assert!(log.needs_roll(13 << 10, 0, 1000));
        let b = one(b"x");
        log.stage(&b, 1, 500, 4096);
        assert!(!log.needs_roll(100, 1499, 1000));
        assert!(log.needs_roll(100, 1500, 1000));
    }
}
