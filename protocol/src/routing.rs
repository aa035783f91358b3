//! Partition key → hash key → shard, the Kinesis rule: the MD5 of the partition key read as
//! a 128-bit big-endian unsigned integer, and the shard whose inclusive range holds it.

use md5::{Digest, Md5};

/// MD5 of the partition key as a big-endian u128 (Kinesis' hash key).
pub fn hash_key(partition_key: &[u8]) -> u128 {
    let digest = Md5::digest(partition_key);
    u128::from_be_bytes(digest.into())
}

/// The inclusive hash-key range of shard `index` when `[0, 2^128)` is split evenly into
/// `shard_count` shards, as Kinesis does at stream creation. The last shard takes the rest.
pub fn even_range(index: u32, shard_count: u32) -> (u128, u128) {
    assert!(
        shard_count > 0 && index < shard_count,
        "shard {index} of {shard_count}"
    );
    if shard_count == 1 {
        return (0, u128::MAX);
    }
    // floor(2^128 / n), as Kinesis splits the space (2^128 itself does not fit in a u128).
    let n = u128::from(shard_count);
    let step = u128::MAX / n + (u128::MAX % n + 1) / n;
    let start = step * u128::from(index);
    let end = if index + 1 == shard_count {
        u128::MAX
    } else {
        start + step - 1
    };
    (start, end)
}

/// Turns partition keys into hash keys. The plain MD5 is always right; a caching hasher
/// trades a little memory for skipping MD5 on keys seen recently.
pub trait KeyHasher {
    fn hash_key(&mut self, partition_key: &[u8]) -> u128;

    /// Whether [`KeyHasher::prefetch`] does anything: a batch check reads keys ahead for
    /// it only then.
    const PREFETCHES: bool = false;

    /// A hint that `partition_key` is hashed soon: a caching hasher may start loading the
    /// memory it keeps that key's hash in. Changes nothing a hash returns.
    fn prefetch(&self, _partition_key: &[u8]) {}
}

/// MD5 every time.
#[derive(Debug, Default, Clone, Copy)]
pub struct Md5KeyHasher;

impl KeyHasher for Md5KeyHasher {
    fn hash_key(&mut self, partition_key: &[u8]) -> u128 {
        hash_key(partition_key)
    }
}

/// Longest partition key the cache stores; longer keys are hashed every time.
const CACHED_KEY_BYTES_MAX: usize = 47;

/// One cache line: the hash, the key's length and the key.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct CacheSlot {
    hash: u128,
    len: u8,
    key: [u8; CACHED_KEY_BYTES_MAX],
}

const _: () = assert!(std::mem::size_of::<CacheSlot>() == 64);

/// A two-way set-associative cache of partition key → MD5 hash key. A set (two adjacent
/// cache lines) is chosen by a cheap hash of the key, and a slot is hit only when its stored
/// key bytes are equal, so it never returns a wrong hash; a miss computes MD5 and takes the
/// set's older slot (the set is kept most recent first). Clickstream and IoT traffic reuses
/// a bounded set of device keys, so most lookups skip MD5 (~5x cheaper); two ways keep
/// keys that happen to share a set from evicting each other at every use.
pub struct CachedKeyHasher {
    slots: Box<[CacheSlot]>,
    /// Sets − 1 (a power of two).
    mask: usize,
}

impl std::fmt::Debug for CachedKeyHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedKeyHasher")
            .field("slots", &self.slots.len())
            .finish()
    }
}

impl CachedKeyHasher {
    /// A cache of `slots` entries (rounded up to a power of two, at least 2; 64 bytes each).
    pub fn new(slots: usize) -> CachedKeyHasher {
        let n = slots.max(2).next_power_of_two();
        let empty = CacheSlot {
            hash: 0,
            len: 0,
            key: [0; CACHED_KEY_BYTES_MAX],
        };
        CachedKeyHasher {
            slots: vec![empty; n].into_boxed_slice(),
            mask: n / 2 - 1,
        }
    }

    /// Index of the first slot of the key's set.
    fn set_of(&self, key: &[u8]) -> usize {
        // Eight bytes at a time, multiplied and folded: a few cycles for a device id (byte
        // by byte FNV-1a took longer than the cache line it chose), and good enough to
        // spread keys over the sets (a poor spread costs hits, never a wrong hash).
        const K: u64 = 0x9e37_79b9_7f4a_7c15;
        let word = |b: &[u8]| -> u64 {
            let mut w = [0u8; 8];
            w[..b.len()].copy_from_slice(b);
            u64::from_le_bytes(w)
        };
        let len = key.len();
        let mut h = (len as u64).wrapping_mul(K);
        if len <= 16 {
            // The first and the last eight bytes (overlapping when shorter): all of it.
            let (a, b) = if len >= 8 {
                (word(&key[..8]), word(&key[len - 8..]))
            } else {
                (word(key), 0)
            };
            h = (h ^ a).wrapping_mul(K);
            h = (h ^ b).wrapping_mul(K);
        } else {
            let mut chunks = key.chunks_exact(8);
            for c in &mut chunks {
                h = (h ^ word(c)).wrapping_mul(K);
            }
            h = (h ^ word(&key[len - 8..])).wrapping_mul(K);
        }
        // (MurmurHash3's finalizer: every bit of the key reaches the low bits.)
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        ((h as usize) & self.mask) * 2
    }

    /// Where `key`'s set is, for a caller that prefetches the keys it comes to next.
    pub fn set_address(&self, key: &[u8]) -> *const u8 {
        let i = self.set_of(key);
        std::ptr::from_ref(&self.slots[i]).cast()
    }
}

impl KeyHasher for CachedKeyHasher {
    fn hash_key(&mut self, partition_key: &[u8]) -> u128 {
        // Empty keys never reach here (the batch check refuses them), but stay correct.
        if partition_key.is_empty() || partition_key.len() > CACHED_KEY_BYTES_MAX {
            return hash_key(partition_key);
        }
        let i = self.set_of(partition_key);
        let len = partition_key.len();
        let hit = |s: &CacheSlot| s.len as usize == len && &s.key[..len] == partition_key;
        if hit(&self.slots[i]) {
            return self.slots[i].hash;
        }
        if hit(&self.slots[i + 1]) {
            self.slots.swap(i, i + 1);
            return self.slots[i].hash;
        }
        let hash = hash_key(partition_key);
        self.slots[i + 1] = self.slots[i];
        let slot = &mut self.slots[i];
        slot.len = len as u8;
        slot.key[..len].copy_from_slice(partition_key);
        slot.hash = hash;
        hash
    }
}

/// A partition key (`key-<n>`, smallest `n`) whose MD5 falls in shard `shard` of a stream
/// split evenly into `shards`: for tests, benchmarks and tools that must address a shard
/// with a key the engine will accept there.
pub fn key_for_shard(shard: u32, shards: u32) -> String {
    let (lo, hi) = even_range(shard, shards);
    (0u64..)
        .map(|n| format!("key-{n}"))
        .find(|k| (lo..=hi).contains(&hash_key(k.as_bytes())))
        .expect("some key hashes into every shard")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_matches_known_vector() {
        // MD5("") = d41d8cd98f00b204e9800998ecf8427e
        assert_eq!(hash_key(b""), 0xd41d8cd98f00b204e9800998ecf8427e);
    }

    #[test]
    fn cached_hasher_keeps_the_two_most_recent_keys_of_a_set() {
        let mut cache = CachedKeyHasher::new(2); // one set: every key shares it
        let held = |c: &CachedKeyHasher| -> Vec<Vec<u8>> {
            c.slots
                .iter()
                .map(|s| s.key[..s.len as usize].to_vec())
                .collect()
        };
        cache.hash_key(b"a");
        cache.hash_key(b"b");
        assert_eq!(held(&cache), [b"b".to_vec(), b"a".to_vec()]);
        // A hit on the older makes it the newer; a miss then evicts the other.
        assert_eq!(cache.hash_key(b"a"), hash_key(b"a"));
        assert_eq!(held(&cache), [b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(cache.hash_key(b"c"), hash_key(b"c"));
        assert_eq!(held(&cache), [b"c".to_vec(), b"a".to_vec()]);
        assert_eq!(cache.hash_key(b"a"), hash_key(b"a"));
        assert_eq!(held(&cache), [b"a".to_vec(), b"c".to_vec()]);
    }

    #[test]
    fn cached_hasher_always_agrees_with_md5() {
        let mut cache = CachedKeyHasher::new(8); // tiny: plenty of collisions and evictions
        for round in 0..3 {
            for i in 0..100 {
                let key = format!("device-{}", (i * 7 + round) % 37);
                assert_eq!(cache.hash_key(key.as_bytes()), hash_key(key.as_bytes()));
            }
        }
        let long = "k".repeat(48);
        assert_eq!(cache.hash_key(long.as_bytes()), hash_key(long.as_bytes()));
        assert_eq!(cache.hash_key(b""), hash_key(b""));
    }

    #[test]
    fn cached_hasher_spreads_device_ids_over_its_sets() {
        // 10,000 device ids of a few shapes over 4,096 sets: no set gets much more than its
        // share (a poor spread would evict keys that fit).
        let cache = CachedKeyHasher::new(8192);
        for shape in ["device-{}", "{}", "sensor/eu-west-1/{}/temp", "k{}"] {
            let mut per_set = vec![0u32; 4096];
            for i in 0..10_000 {
                let key = shape.replace("{}", &i.to_string());
                per_set[cache.set_of(key.as_bytes()) / 2] += 1;
            }
            let max = *per_set.iter().max().unwrap();
            assert!(max <= 12, "{shape}: a set holds {max} of 10,000 keys");
        }
    }

    #[test]
    fn even_ranges_match_kinesis() {
        // What CreateStream with 2 and 3 shards gives in Kinesis.
        assert_eq!(even_range(0, 2).1, 170141183460469231731687303715884105727);
        assert_eq!(even_range(1, 2).0, 170141183460469231731687303715884105728);
        assert_eq!(even_range(0, 3).1, 113427455640312821154458202477256070484);
        assert_eq!(even_range(2, 3).0, 226854911280625642308916404954512140970);
        assert_eq!(even_range(0, 1), (0, u128::MAX));
    }

    #[test]
    fn even_ranges_tile_the_space() {
        for n in [1u32, 2, 3, 7, 64, 1000] {
            let mut next = 0u128;
            for i in 0..n {
                let (s, e) = even_range(i, n);
                assert_eq!(s, next);
                assert!(e >= s);
                next = e.wrapping_add(1);
            }
            assert_eq!(even_range(n - 1, n).1, u128::MAX);
        }
    }
}
