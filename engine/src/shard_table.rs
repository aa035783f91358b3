//! A map from shard to per-shard state, laid out for the put path of a core with thousands
//! of shards: a put of a stream touches thousands of its shards, each looked up once per
//! batch (`many-shards`: 10,000 shards, one-record batches).
//!
//! Shard ids are handed out in order from 0 within a stream, so each stream keeps a dense
//! index (shard id → position) and the values live contiguously in one vector. A lookup is a
//! probe of a map that holds one entry per stream (a few, always in cache), a read of the
//! stream's index (4 bytes a shard) and the value itself: one cache miss where a hash map
//! keyed by shard takes two (its control bytes, then the bucket). The values' addresses are
//! known before they are read, so a batch loop can prefetch the shards it comes to next.
//! Ids past `DENSE_IDS_MAX` (streams resharded very many times) use a plain map.

use rustc_hash::FxHashMap;

use crate::store::ShardKey;

/// Shard ids below this go in a stream's dense index (4 bytes each, up to 1 MiB a stream).
const DENSE_IDS_MAX: u32 = 1 << 18;

/// No value at this index position.
const ABSENT: u32 = u32::MAX;

pub struct ShardTable<V> {
    /// Per stream: shard id → position in `entries` (`ABSENT` for none).
    dense: FxHashMap<u64, Vec<u32>>,
    /// Shards whose id is `DENSE_IDS_MAX` or more.
    sparse: FxHashMap<ShardKey, u32>,
    entries: Vec<(ShardKey, V)>,
}

impl<V> Default for ShardTable<V> {
    fn default() -> Self {
        ShardTable {
            dense: FxHashMap::default(),
            sparse: FxHashMap::default(),
            entries: Vec::new(),
        }
    }
}

impl<V> std::fmt::Debug for ShardTable<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardTable")
            .field("shards", &self.entries.len())
            .finish()
    }
}

impl<V> ShardTable<V> {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn position(&self, key: &ShardKey) -> Option<usize> {
        let at = if key.shard_id < DENSE_IDS_MAX {
            *self.dense.get(&key.stream_id)?.get(key.shard_id as usize)?
        } else {
            *self.sparse.get(key)?
        };
        (at != ABSENT).then_some(at as usize)
    }

    fn set_position(&mut self, key: ShardKey, at: u32) {
        if key.shard_id < DENSE_IDS_MAX {
            let index = self.dense.entry(key.stream_id).or_default();
            let i = key.shard_id as usize;
            if index.len() <= i {
                index.resize(i + 1, ABSENT);
            }
            index[i] = at;
        } else {
            self.sparse.insert(key, at);
        }
    }

    fn clear_position(&mut self, key: &ShardKey) {
        if key.shard_id < DENSE_IDS_MAX {
            if let Some(index) = self.dense.get_mut(&key.stream_id) {
                if let Some(p) = index.get_mut(key.shard_id as usize) {
                    *p = ABSENT;
                }
                // A stream whose last shard here went takes no memory.
                while index.last() == Some(&ABSENT) {
                    index.pop();
                }
                if index.is_empty() {
                    self.dense.remove(&key.stream_id);
                }
            }
        } else {
            self.sparse.remove(key);
        }
    }

    pub fn get(&self, key: &ShardKey) -> Option<&V> {
        self.position(key).map(|i| &self.entries[i].1)
    }

    pub fn get_mut(&mut self, key: &ShardKey) -> Option<&mut V> {
        self.position(key).map(|i| &mut self.entries[i].1)
    }

    pub fn contains_key(&self, key: &ShardKey) -> bool {
        self.position(key).is_some()
    }

    /// Hints the CPU to start loading `key`'s value (a batch loop calls this for a shard a
    /// few batches ahead, so the cache misses of consecutive shards overlap).
    #[inline]
    pub fn prefetch(&self, key: &ShardKey) {
        if let Some(i) = self.position(key) {
            let entry = &self.entries[i];
            prefetch_lines(entry, std::mem::size_of_val(entry));
        }
    }

    /// Inserts or replaces; returns the value replaced.
    pub fn insert(&mut self, key: ShardKey, value: V) -> Option<V> {
        if let Some(i) = self.position(&key) {
            return Some(std::mem::replace(&mut self.entries[i].1, value));
        }
        let at = u32::try_from(self.entries.len()).expect("fewer than 2^32 - 1 shards");
        assert!(at != ABSENT, "fewer than 2^32 - 1 shards");
        self.entries.push((key, value));
        self.set_position(key, at);
        None
    }

    pub fn remove(&mut self, key: &ShardKey) -> Option<V> {
        let i = self.position(key)?;
        self.clear_position(key);
        let (_, value) = self.entries.swap_remove(i);
        if let Some((moved, _)) = self.entries.get(i) {
            let moved = *moved;
            self.set_position(moved, i as u32);
        }
        Some(value)
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&ShardKey, &mut V) -> bool) {
        let gone: Vec<ShardKey> = self
            .entries
            .iter_mut()
            .filter_map(|(k, v)| (!keep(k, v)).then_some(*k))
            .collect();
        for k in gone {
            self.remove(&k);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ShardKey, &V)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&ShardKey, &mut V)> {
        self.entries.iter_mut().map(|(k, v)| (&*k, v))
    }

    pub fn keys(&self) -> impl Iterator<Item = &ShardKey> {
        self.entries.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.iter().map(|(_, v)| v)
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.entries.iter_mut().map(|(_, v)| v)
    }
}

impl<V> std::ops::Index<&ShardKey> for ShardTable<V> {
    type Output = V;

    fn index(&self, key: &ShardKey) -> &V {
        self.get(key).expect("shard in the table")
    }
}

impl<V> FromIterator<(ShardKey, V)> for ShardTable<V> {
    fn from_iter<I: IntoIterator<Item = (ShardKey, V)>>(iter: I) -> Self {
        let mut t = ShardTable::default();
        for (k, v) in iter {
            t.insert(k, v);
        }
        t
    }
}

impl<'a, V> IntoIterator for &'a ShardTable<V> {
    type Item = (&'a ShardKey, &'a V);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (ShardKey, V)>,
        fn(&'a (ShardKey, V)) -> (&'a ShardKey, &'a V),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter().map(|(k, v)| (k, v))
    }
}

/// Starts loading the cache lines of `bytes` bytes from `p`, at most 8 of them (a hint: no
/// effect on what the program computes).
#[inline]
pub fn prefetch_lines<T>(p: *const T, bytes: usize) {
    let p = p.cast::<u8>();
    for offset in (0..bytes.min(512)).step_by(64) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch never faults and reads no memory the program can observe,
        // whatever the address (`wrapping_add`: no pointer arithmetic UB either).
        unsafe {
            std::arch::x86_64::_mm_prefetch(
                p.wrapping_add(offset).cast::<i8>(),
                std::arch::x86_64::_MM_HINT_T0,
            );
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = p.wrapping_add(offset);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn key(stream_id: u64, shard_id: u32) -> ShardKey {
        ShardKey {
            stream_id,
            shard_id,
        }
    }

    /// Random inserts, replacements and removals (dense and sparse ids, several streams)
    /// against a BTreeMap: same contents after every step.
    #[test]
    fn behaves_as_a_map() {
        let mut rng = crate::sim::SimRng::new(7);
        let mut table: ShardTable<u64> = ShardTable::default();
        let mut model: BTreeMap<ShardKey, u64> = BTreeMap::new();
        for step in 0..20_000u64 {
            let shard_id = if rng.below(10) == 0 {
                DENSE_IDS_MAX + rng.below(5) as u32
            } else {
                rng.below(64) as u32
            };
            let k = key(rng.below(3), shard_id);
            match rng.below(4) {
                0 | 1 => assert_eq!(table.insert(k, step), model.insert(k, step)),
                2 => assert_eq!(table.remove(&k), model.remove(&k)),
                _ => {
                    let cut = rng.below(64) as u32;
                    table.retain(|k, _| k.shard_id != cut);
                    model.retain(|k, _| k.shard_id != cut);
                }
            }
            assert_eq!(table.len(), model.len());
            assert_eq!(table.get(&k), model.get(&k));
            if step % 97 == 0 {
                let mut got: Vec<(ShardKey, u64)> = table.iter().map(|(k, v)| (*k, *v)).collect();
                got.sort();
                let want: Vec<(ShardKey, u64)> = model.iter().map(|(k, v)| (*k, *v)).collect();
                assert_eq!(got, want);
                for (k, v) in &model {
                    assert_eq!(table[k], *v);
                }
            }
        }
        // Emptied: no stream keeps an index.
        let keys: Vec<ShardKey> = model.keys().copied().collect();
        for k in keys {
            table.remove(&k);
        }
        assert!(table.is_empty());
        assert!(table.dense.is_empty() && table.sparse.is_empty());
    }
}
