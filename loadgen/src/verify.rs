//! `--verify`: compare what was acknowledged with what the stream holds.
//!
//! While the run goes on, each producer's collector marks, per key, the counters of the
//! records the engine acknowledged ([`BitSet`] per key; a key belongs to exactly one
//! producer, which numbers its records 0, 1, 2, ...). Afterwards every shard is read back
//! from the oldest record to the tip and each record of this run is shown to a
//! [`Verifier`], in shard order. Since a key maps to one shard and the engine keeps a
//! shard's order, a key's records must come back with increasing counters:
//!
//! - **lost**: acknowledged, never read back;
//! - **duplicated**: read back more than once (each extra copy counts once);
//! - **reordered**: read back after a record of the same key with a higher counter;
//! - **corrupt**: data that claims to be this run's but does not decode, names an unknown
//!   key, or sits under another partition key than its header says.
//!
//! A record read back that was never acknowledged (`unacked_present`) is not an error: a
//! put whose answer was lost (timeout, broken connection) may still have been stored, and
//! the engine promises nothing about it either way.

use serde::{Deserialize, Serialize};

/// A growable set of small integers (a key's counters).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BitSet {
    words: Vec<u64>,
}

impl BitSet {
    /// Adds `i`; returns whether it was absent.
    pub fn insert(&mut self, i: u32) -> bool {
        let (w, b) = ((i / 64) as usize, i % 64);
        if w >= self.words.len() {
            self.words.resize(w + 1, 0);
        }
        let was = self.words[w] >> b & 1 == 1;
        self.words[w] |= 1 << b;
        !was
    }

    pub fn contains(&self, i: u32) -> bool {
        let (w, b) = ((i / 64) as usize, i % 64);
        self.words.get(w).is_some_and(|x| x >> b & 1 == 1)
    }

    pub fn len(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// Members of `self` that are not in `other`.
    pub fn count_not_in(&self, other: &BitSet) -> u64 {
        self.words
            .iter()
            .enumerate()
            .map(|(i, &w)| u64::from((w & !other.words.get(i).copied().unwrap_or(0)).count_ones()))
            .sum()
    }

    /// Adds every member of `other`.
    pub fn union_with(&mut self, other: &BitSet) {
        if other.words.len() > self.words.len() {
            self.words.resize(other.words.len(), 0);
        }
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= b;
        }
    }
}

/// What the read-back found; every count but `records_read` and `unacked_present` must be
/// zero for the run to pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub corrupt: u64,
    /// Records of this run read back that were never acknowledged (not an error).
    pub unacked_present: u64,
    /// Records of this run read back.
    pub records_read: u64,
    /// Records of other runs (or other programs) in the stream, ignored.
    pub foreign: u64,
    /// Acknowledged records of this run.
    pub acked: u64,
}

impl VerifyReport {
    pub fn passed(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.reordered == 0 && self.corrupt == 0
    }
}

/// Per-key state of the read-back.
#[derive(Debug, Clone, Default)]
struct KeySeen {
    seen: BitSet,
    /// The highest counter read so far (valid once `seen` is not empty).
    highest: u32,
}

/// Checks a read-back against the acknowledged counters; see the module docs.
#[derive(Debug)]
pub struct Verifier {
    /// Acknowledged counters, by key index.
    acked: Vec<BitSet>,
    seen: Vec<KeySeen>,
    report: VerifyReport,
}

impl Verifier {
    /// A verifier for `acked[key]` = the counters acknowledged for each key index.
    pub fn new(acked: Vec<BitSet>) -> Verifier {
        let report = VerifyReport {
            acked: acked.iter().map(BitSet::len).sum(),
            ..VerifyReport::default()
        };
        Verifier {
            seen: vec![KeySeen::default(); acked.len()],
            acked,
            report,
        }
    }

    /// One record of this run read back (in shard order): key index and counter.
    pub fn observe(&mut self, key: u32, counter: u32) {
        let Some(k) = self.seen.get_mut(key as usize) else {
            self.report.corrupt += 1;
            return;
        };
        self.report.records_read += 1;
        if !k.seen.insert(counter) {
            self.report.duplicated += 1;
            return;
        }
        if k.seen.len() > 1 && counter < k.highest {
            self.report.reordered += 1;
        }
        k.highest = if k.seen.len() == 1 {
            counter
        } else {
            k.highest.max(counter)
        };
        if !self.acked[key as usize].contains(counter) {
            self.report.unacked_present += 1;
        }
    }

    /// A record that claims to be this run's but is damaged or misplaced.
    pub fn corrupt(&mut self) {
        self.report.corrupt += 1;
    }

    /// A record of another run or program.
    pub fn foreign(&mut self) {
        self.report.foreign += 1;
    }

    /// The verdict once every shard has been read.
    pub fn finish(mut self) -> VerifyReport {
        self.report.lost = self
            .acked
            .iter()
            .zip(&self.seen)
            .map(|(acked, seen)| acked.count_not_in(&seen.seen))
            .sum();
        self.report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acked(keys: &[&[u32]]) -> Vec<BitSet> {
        keys.iter()
            .map(|counters| {
                let mut b = BitSet::default();
                for &c in *counters {
                    b.insert(c);
                }
                b
            })
            .collect()
    }

    fn check(acks: &[&[u32]], read: &[(u32, u32)]) -> VerifyReport {
        let mut v = Verifier::new(acked(acks));
        for &(k, n) in read {
            v.observe(k, n);
        }
        v.finish()
    }

    #[test]
    fn bitset_basics() {
        let mut a = BitSet::default();
        assert!(a.is_empty());
        assert!(a.insert(0) && a.insert(64) && a.insert(1000));
        assert!(!a.insert(64));
        assert!(a.contains(1000) && !a.contains(999) && !a.contains(1 << 20));
        assert_eq!(a.len(), 3);
        let mut b = BitSet::default();
        b.insert(64);
        assert_eq!(a.count_not_in(&b), 2);
        assert_eq!(b.count_not_in(&a), 0);
        b.union_with(&a);
        assert_eq!(b, a);
    }

    #[test]
    fn a_clean_read_back_passes() {
        // Two keys interleaved in one shard, a third key alone; key 1's record 1 was
        // throttled (never acknowledged, never stored).
        let r = check(
            &[&[0, 1, 2], &[0, 2], &[0]],
            &[(0, 0), (1, 0), (0, 1), (1, 2), (0, 2), (2, 0)],
        );
        assert!(r.passed(), "{r:?}");
        assert_eq!((r.records_read, r.acked, r.unacked_present), (6, 6, 0));
    }

    #[test]
    fn lost_records_are_counted() {
        let r = check(&[&[0, 1, 2, 3], &[0]], &[(0, 0), (0, 2)]);
        assert_eq!((r.lost, r.duplicated, r.reordered), (3, 0, 0));
        assert!(!r.passed());
    }

    #[test]
    fn duplicates_are_counted_once_per_extra_copy() {
        let r = check(&[&[0, 1]], &[(0, 0), (0, 1), (0, 1), (0, 1)]);
        assert_eq!((r.lost, r.duplicated, r.reordered), (0, 2, 0));
        // A duplicate of an earlier record is a duplicate, not a reordering.
        let r = check(&[&[0, 1]], &[(0, 0), (0, 1), (0, 0)]);
        assert_eq!((r.lost, r.duplicated, r.reordered), (0, 1, 0));
    }

    #[test]
    fn reordering_is_per_key() {
        // Key 0: 0, 2, 1 — record 1 came back after 2. Key 1 in order, interleaved.
        let r = check(
            &[&[0, 1, 2], &[0, 1]],
            &[(0, 0), (1, 0), (0, 2), (0, 1), (1, 1)],
        );
        assert_eq!((r.lost, r.duplicated, r.reordered), (0, 0, 1));
        // 3 2 1 0: three records came back behind a higher one.
        let r = check(&[&[0, 1, 2, 3]], &[(0, 3), (0, 2), (0, 1), (0, 0)]);
        assert_eq!(r.reordered, 3);
    }

    #[test]
    fn unacknowledged_records_that_were_stored_are_not_errors() {
        let r = check(&[&[0]], &[(0, 0), (0, 1)]);
        assert!(r.passed());
        assert_eq!(r.unacked_present, 1);
    }

    #[test]
    fn unknown_keys_and_damage_are_corrupt() {
        let mut v = Verifier::new(acked(&[&[0]]));
        v.observe(0, 0);
        v.observe(7, 0);
        v.corrupt();
        v.foreign();
        let r = v.finish();
        assert_eq!((r.corrupt, r.foreign, r.lost), (2, 1, 0));
        assert!(!r.passed());
    }
}
