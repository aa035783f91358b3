//! A store's journal: a ring of pre-written files that rounds are appended to.
//!
//! Each round is one contiguous, block-aligned run of bytes in the active journal file
//! (never split across files). When a round does not fit, the journal moves on to a free
//! file: one whose contents are older than the last checkpoint's replay position. Starting a
//! file rewrites its header with a new sequence number, nonce and first round, so rounds
//! left over from its previous lap fail the nonce check and are never replayed.
//!
//! This is bookkeeping only (single-core, no I/O); the store does the writes.

use std::rc::Rc;

use super::layout::{JournalHeader, JOURNAL_DATA_START};
use super::manifest::JournalPos;

pub(crate) struct JournalSlot<F> {
    pub file: Option<Rc<F>>,
    /// Sequence number of the file's current contents (0: holds nothing needed).
    pub content_seq: u64,
    pub nonce: u64,
}

pub(crate) struct Journal<F> {
    pub slots: Vec<JournalSlot<F>>,
    pub file_bytes: u64,
    pub store: u32,
    /// Slot rounds are appended to, with its header's file sequence number and nonce.
    pub active: Option<usize>,
    pub active_seq: u64,
    pub active_nonce: u64,
    /// Where the next round goes in the active file.
    pub write_pos: u64,
    pub next_file_seq: u64,
    pub next_round: u64,
    /// Just after the last durable round: where replay would start if a checkpoint were
    /// taken now.
    pub durable_pos: JournalPos,
    /// Replay start recorded by the last durable checkpoint: files with older contents are
    /// free.
    pub checkpoint_pos: JournalPos,
}

/// Where a sealed round goes.
pub(crate) struct Placement {
    pub slot: usize,
    pub pos: u64,
    pub round: u64,
    pub nonce: u64,
    pub file_seq: u64,
    /// The round starts this file: its header is written with the round.
    pub new_header: Option<JournalHeader>,
}

impl<F> Journal<F> {
    fn slot_is_free(&self, i: usize) -> bool {
        let s = &self.slots[i];
        s.file.is_some()
            && Some(i) != self.active
            && (s.content_seq == 0 || s.content_seq < self.checkpoint_pos.file_seq)
    }

    pub fn free_slot(&self) -> Option<usize> {
        (0..self.slots.len()).find(|&i| self.slot_is_free(i))
    }

    /// Free files (ready to take rounds), not counting the active one.
    pub fn free_slots(&self) -> usize {
        (0..self.slots.len())
            .filter(|&i| self.slot_is_free(i))
            .count()
    }

    /// Largest round that can ever fit in one file.
    pub fn round_bytes_limit(&self) -> u64 {
        self.file_bytes - JOURNAL_DATA_START
    }

    /// Whether a round of `padded` bytes could be placed now.
    pub fn has_room(&self, padded: u64) -> bool {
        if padded > self.round_bytes_limit() {
            return false;
        }
        let in_active = self.active.is_some() && self.write_pos + padded <= self.file_bytes;
        in_active || self.free_slot().is_some()
    }

    /// Places a round of `padded` bytes (call only after `has_room`).
    pub fn place(&mut self, padded: u64, now_ms: i64) -> Placement {
        let fits = self.active.is_some() && self.write_pos + padded <= self.file_bytes;
        let mut new_header = None;
        if !fits {
            let slot = self.free_slot().expect("has_room was checked");
            let header = JournalHeader {
                file_seq: self.next_file_seq,
                nonce: rand::random::<u64>() | 1,
                first_round: self.next_round,
                created_ms: now_ms,
                store: self.store,
            };
            self.next_file_seq += 1;
            self.active = Some(slot);
            self.active_seq = header.file_seq;
            self.active_nonce = header.nonce;
            self.write_pos = JOURNAL_DATA_START;
            let s = &mut self.slots[slot];
            s.content_seq = header.file_seq;
            s.nonce = header.nonce;
            new_header = Some(header);
        }
        let p = Placement {
            slot: self.active.expect("active"),
            pos: self.write_pos,
            round: self.next_round,
            nonce: self.active_nonce,
            file_seq: self.active_seq,
            new_header,
        };
        self.write_pos += padded;
        self.next_round += 1;
        p
    }
}
