//! Extent allocation inside a store's volumes: a buddy allocator over power-of-two runs of
//! `extent_bytes_min` units, lowest address first.
//!
//! Every volume holds a number of units that is a multiple of the largest extent, so a
//! volume starts as a row of free max-order blocks. Volumes may differ in size (a store's
//! first volumes are small, so a fresh store takes its first write at once). Allocating order `o` splits the smallest
//! free block that fits; freeing merges a block with its buddy while the buddy is free.
//!
//! Freed extents are not reusable at once: the last checkpoint's manifest may still list
//! them as a shard's, and recovery trusts the manifest. They wait in `quarantine` until the
//! next checkpoint records them as free (`release_quarantine`).
//!
//! Single-core, no I/O; trusted state is asserted.

use std::collections::BTreeSet;

use super::layout::ExtentId;

#[derive(Debug, Clone)]
pub struct ExtentAllocator {
    max_order: u32,
    /// Units of each volume.
    volume_units: std::collections::BTreeMap<u32, u32>,
    /// Free blocks, per order, lowest address first.
    free: Vec<BTreeSet<ExtentId>>,
    /// Freed since the last checkpoint started; allocatable after the next one.
    quarantine: Vec<(ExtentId, u32)>,
    volumes: BTreeSet<u32>,
    free_units: u64,
}

impl ExtentAllocator {
    pub fn new(max_order: u32) -> ExtentAllocator {
        assert!(max_order < 24, "extent orders are small");
        ExtentAllocator {
            max_order,
            volume_units: Default::default(),
            free: vec![BTreeSet::new(); max_order as usize + 1],
            quarantine: Vec::new(),
            volumes: BTreeSet::new(),
            free_units: 0,
        }
    }

    /// Adds a volume of `units` units (a multiple of `1 << max_order`), every one free.
    pub fn add_volume(&mut self, volume: u32, units: u32) {
        assert!(
            units > 0 && units % (1 << self.max_order) == 0,
            "a volume holds whole max-size extents"
        );
        assert!(self.volumes.insert(volume), "volume {volume} added twice");
        self.volume_units.insert(volume, units);
        let step = 1u32 << self.max_order;
        for unit in (0..units).step_by(step as usize) {
            self.free[self.max_order as usize].insert(ExtentId::new(volume, unit));
        }
        self.free_units += u64::from(units);
    }

    /// Units free for allocation now (quarantined ones excluded).
    pub fn free_units(&self) -> u64 {
        self.free_units
    }

    /// Units waiting for a checkpoint.
    pub fn quarantined_units(&self) -> u64 {
        self.quarantine.iter().map(|(_, o)| 1u64 << o).sum()
    }

    /// Whether a whole volume is free (it could be returned to the file system).
    #[cfg(test)]
    pub fn volume_is_free(&self, volume: u32) -> bool {
        let step = 1u32 << self.max_order;
        (0..self.volume_units[&volume])
            .step_by(step as usize)
            .all(|u| self.free[self.max_order as usize].contains(&ExtentId::new(volume, u)))
    }

    /// Whether an extent of `order` can be allocated now.
    /// Free blocks (start, order), any order.
    pub fn free_blocks(&self) -> impl Iterator<Item = (ExtentId, u32)> + '_ {
        self.free
            .iter()
            .enumerate()
            .flat_map(|(o, set)| set.iter().map(move |&id| (id, o as u32)))
    }

    /// Units of `volume` (0 if unknown).
    pub fn volume_units(&self, volume: u32) -> u32 {
        self.volume_units.get(&volume).copied().unwrap_or(0)
    }

    pub fn can_alloc(&self, order: u32) -> bool {
        (order..=self.max_order).any(|o| !self.free[o as usize].is_empty())
    }

    /// Allocates an extent of `order`, lowest address first.
    pub fn alloc(&mut self, order: u32) -> Option<ExtentId> {
        assert!(order <= self.max_order);
        let from = (order..=self.max_order).find(|&o| !self.free[o as usize].is_empty())?;
        let block = self.free[from as usize].pop_first().expect("non-empty");
        // Split down: keep the lower half, free the upper half at each level.
        for o in (order..from).rev() {
            let upper = ExtentId::new(block.volume(), block.unit() + (1 << o));
            self.free[o as usize].insert(upper);
        }
        self.free_units -= 1 << order;
        Some(block)
    }

    /// Takes one specific extent out of the free space (recovery rebuilding ownership from
    /// the manifest and the journal). Returns false if any part of it is not free.
    pub fn take(&mut self, id: ExtentId, order: u32) -> bool {
        let Some(&units) = self.volume_units.get(&id.volume()) else {
            return false;
        };
        if order > self.max_order
            || id.unit() % (1 << order) != 0
            || id.unit() + (1 << order) > units
        {
            return false;
        }
        for o in order..=self.max_order {
            let start = id.unit() & !((1u32 << o) - 1);
            let block = ExtentId::new(id.volume(), start);
            if self.free[o as usize].remove(&block) {
                // Split `block` down to `order`, freeing the halves that do not hold `id`.
                let mut lo = start;
                for level in (order..o).rev() {
                    let half = 1u32 << level;
                    if id.unit() >= lo + half {
                        self.free[level as usize].insert(ExtentId::new(id.volume(), lo));
                        lo += half;
                    } else {
                        self.free[level as usize].insert(ExtentId::new(id.volume(), lo + half));
                    }
                }
                debug_assert_eq!(lo, id.unit());
                self.free_units -= 1 << order;
                return true;
            }
        }
        false
    }

    /// Returns an extent to free space at once, merging buddies. Only for extents nothing
    /// durable refers to (recovery discarding, or never-durable allocations).
    pub fn free_now(&mut self, id: ExtentId, order: u32) {
        let mut unit = id.unit();
        let mut o = order;
        while o < self.max_order {
            let buddy = ExtentId::new(id.volume(), unit ^ (1 << o));
            if !self.free[o as usize].remove(&buddy) {
                break;
            }
            unit &= !(1 << o);
            o += 1;
        }
        let block = ExtentId::new(id.volume(), unit);
        assert!(
            self.free[o as usize].insert(block),
            "extent {block:?} order {o} freed twice"
        );
        self.free_units += 1 << order;
    }

    /// Frees an extent a checkpoint may still list: reusable after the next checkpoint.
    pub fn free_later(&mut self, id: ExtentId, order: u32) {
        self.quarantine.push((id, order));
    }

    /// Called when a checkpoint starts: the extents quarantined so far will be recorded as
    /// free by it. Returns them so they can be released once it is durable.
    pub fn take_quarantine(&mut self) -> Vec<(ExtentId, u32)> {
        std::mem::take(&mut self.quarantine)
    }

    /// The checkpoint that recorded these as free is durable: make them allocatable.
    pub fn release(&mut self, extents: Vec<(ExtentId, u32)>) {
        for (id, order) in extents {
            self.free_now(id, order);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::SimRng;

    #[test]
    fn split_and_merge() {
        let mut a = ExtentAllocator::new(2);
        a.add_volume(0, 8);
        assert_eq!(a.free_units(), 8);
        let x = a.alloc(0).unwrap();
        assert_eq!(x, ExtentId::new(0, 0));
        let y = a.alloc(1).unwrap();
        assert_eq!(y, ExtentId::new(0, 2));
        let z = a.alloc(0).unwrap();
        assert_eq!(z, ExtentId::new(0, 1));
        assert_eq!(a.free_units(), 4);
        a.free_now(x, 0);
        a.free_now(z, 0);
        a.free_now(y, 1);
        assert!(a.volume_is_free(0));
        assert_eq!(a.alloc(2), Some(ExtentId::new(0, 0)));
    }

    #[test]
    fn take_specific_extents() {
        let mut a = ExtentAllocator::new(3);
        a.add_volume(4, 16);
        assert!(a.take(ExtentId::new(4, 5), 0));
        assert!(!a.take(ExtentId::new(4, 5), 0), "not free any more");
        assert!(!a.take(ExtentId::new(4, 4), 1), "overlaps a taken unit");
        assert!(a.take(ExtentId::new(4, 8), 3));
        assert!(!a.take(ExtentId::new(4, 3), 1), "misaligned");
        assert_eq!(a.free_units(), 16 - 1 - 8);
        a.free_now(ExtentId::new(4, 5), 0);
        a.free_now(ExtentId::new(4, 8), 3);
        assert!(a.volume_is_free(4));
    }

    #[test]
    fn quarantine_delays_reuse() {
        let mut a = ExtentAllocator::new(0);
        a.add_volume(0, 2);
        let x = a.alloc(0).unwrap();
        let _y = a.alloc(0).unwrap();
        a.free_later(x, 0);
        assert_eq!(a.alloc(0), None, "quarantined extents are not reused");
        let q = a.take_quarantine();
        a.release(q);
        assert_eq!(a.alloc(0), Some(x));
    }

    #[test]
    fn random_alloc_free_keeps_accounting() {
        let mut rng = SimRng::new(11);
        let mut a = ExtentAllocator::new(4);
        a.add_volume(0, 64);
        a.add_volume(1, 64);
        let mut held: Vec<(ExtentId, u32)> = Vec::new();
        for _ in 0..5000 {
            if rng.below(2) == 0 || held.is_empty() {
                let o = rng.below(5) as u32;
                if let Some(id) = a.alloc(o) {
                    for (h, ho) in &held {
                        let (s1, e1) = (id.unit(), id.unit() + (1 << o));
                        let (s2, e2) = (h.unit(), h.unit() + (1 << ho));
                        assert!(h.volume() != id.volume() || e1 <= s2 || e2 <= s1, "overlap");
                    }
                    held.push((id, o));
                }
            } else {
                let i = rng.below(held.len() as u64) as usize;
                let (id, o) = held.swap_remove(i);
                a.free_now(id, o);
            }
            let used: u64 = held.iter().map(|(_, o)| 1u64 << o).sum();
            assert_eq!(a.free_units() + used, 128);
        }
        for (id, o) in held.drain(..) {
            a.free_now(id, o);
        }
        assert!(a.volume_is_free(0) && a.volume_is_free(1));
    }
}
