//! Client-side routing: which shard (and so which engine core) takes a record.
//!
//! The rule is Kinesis': the record's explicit hash key, or the MD5 of its partition key
//! read as a big-endian u128, falls in exactly one open shard's inclusive hash-key range.
//! A [`ShardMap`] is built from a stream description and cached by the client; the engine
//! checks every record's hash key against the shard it was sent to, so a stale map yields a
//! `WrongShard` or `UnknownShard` error, never a misplaced record.

use spate_protocol::routing::{CachedKeyHasher, KeyHasher};
use spate_protocol::{ShardState, StreamDescription};

/// One open shard as the router sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardRoute {
    pub shard_id: u32,
    /// Inclusive hash-key range.
    pub hash_key_start: u128,
    pub hash_key_end: u128,
    /// The engine core owning the shard.
    pub core: u16,
}

/// The open shards of one stream incarnation, sorted by hash-key range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardMap {
    pub stream: String,
    pub stream_id: u64,
    /// The stream's per-record data limit.
    pub max_record_data_bytes: u32,
    /// The shard-map version described (raised by every split, merge and scale).
    pub map_version: u64,
    routes: Vec<ShardRoute>,
    /// `routes`' range starts alone, for the search by hash key (a tenth of the client's
    /// CPU at 10,000 shards when it walked the 48-byte routes).
    starts: Vec<u128>,
    /// Where the search starts by the hash key's top `lut_bits` bits: entry `j` is how many
    /// starts are at or below the first hash key of bucket `j` (the last entry: all of
    /// them), so a key of bucket `j` is searched for only among `starts[lut[j]..lut[j + 1]]`
    /// (about one route). A binary search of 10,000 starts was 7 % of the load generator's
    /// core in `many-shards`, most of it cache misses.
    lut: Vec<u32>,
    lut_bits: u32,
    /// Every described shard (open or closed) and its core, by shard id.
    cores: Vec<(u32, u16)>,
}

impl ShardMap {
    /// The routing table of a described stream: its open shards by hash-key range.
    pub fn from_description(d: &StreamDescription<'_>) -> ShardMap {
        let mut routes: Vec<ShardRoute> = d
            .shards
            .iter()
            .filter(|s| s.state == ShardState::Open)
            .map(|s| ShardRoute {
                shard_id: s.id,
                hash_key_start: s.hash_key_start,
                hash_key_end: s.hash_key_end,
                core: s.core,
            })
            .collect();
        routes.sort_by_key(|r| r.hash_key_start);
        let mut cores: Vec<(u32, u16)> = d.shards.iter().map(|s| (s.id, s.core)).collect();
        cores.sort_unstable();
        let starts: Vec<u128> = routes.iter().map(|r| r.hash_key_start).collect();
        // About a route a bucket: 2^16 buckets (256 KiB) at most.
        let lut_bits = (starts.len().max(1).next_power_of_two().trailing_zeros()).min(16);
        let buckets = 1usize << lut_bits;
        let lut = (0..=buckets)
            .map(|j| {
                if j == buckets {
                    starts.len() as u32
                } else {
                    let first = bucket_start(j as u128, lut_bits);
                    starts.partition_point(|&s| s <= first) as u32
                }
            })
            .collect();
        ShardMap {
            stream: d.name.to_string(),
            stream_id: d.stream_id,
            max_record_data_bytes: d.max_record_data_bytes,
            map_version: d.map_version,
            routes,
            starts,
            lut,
            lut_bits,
            cores,
        }
    }

    /// The core owning shard `shard_id` (open or closed), if the stream has it.
    pub fn core_of(&self, shard_id: u32) -> Option<u16> {
        let i = self.cores.binary_search_by_key(&shard_id, |c| c.0).ok()?;
        Some(self.cores[i].1)
    }

    /// The open shards, in hash-key order.
    pub fn routes(&self) -> &[ShardRoute] {
        &self.routes
    }

    /// Index (into [`ShardMap::routes`]) of the open shard whose range holds `hash`.
    /// `None` only if the open shards do not cover the whole key space (never for a stream
    /// described by a healthy server).
    pub fn index_for_hash(&self, hash: u128) -> Option<usize> {
        // Every start at or below the bucket's first key is at or below `hash`; none at or
        // above the next bucket's first key is.
        let j = bucket_of(hash, self.lut_bits);
        let (lo, hi) = (self.lut[j] as usize, self.lut[j + 1] as usize);
        let after = lo + self.starts[lo..hi].partition_point(|&start| start <= hash);
        let i = after.checked_sub(1)?;
        (hash <= self.routes[i].hash_key_end).then_some(i)
    }

    /// The shard for a record: by its explicit hash key, else by its partition key's MD5.
    pub fn route(
        &self,
        partition_key: &[u8],
        explicit_hash_key: Option<u128>,
    ) -> Option<&ShardRoute> {
        let hash = explicit_hash_key.unwrap_or_else(|| cached_hash_key(partition_key));
        self.index_for_hash(hash).map(|i| &self.routes[i])
    }
}

/// The first hash key of bucket `j` of `2^bits`.
fn bucket_start(j: u128, bits: u32) -> u128 {
    if bits == 0 {
        0
    } else {
        j << (128 - bits)
    }
}

/// The bucket of `2^bits` that holds `hash`.
fn bucket_of(hash: u128, bits: u32) -> usize {
    if bits == 0 {
        0
    } else {
        (hash >> (128 - bits)) as usize
    }
}

/// Slots of each thread's partition-key hash cache (64 bytes each: 1 MiB per thread that
/// routes records). 4,096 slots held too few of `producer-path`'s 10,000 device keys: MD5
/// was 4 % of the load generator's core.
const KEY_HASH_CACHE_SLOTS: usize = 16_384;

thread_local! {
    static KEY_HASHES: std::cell::RefCell<CachedKeyHasher> =
        std::cell::RefCell::new(CachedKeyHasher::new(KEY_HASH_CACHE_SLOTS));
}

/// MD5 of a partition key through a per-thread cache: producers send the same device keys
/// over and over, and MD5 is most of the client's per-record CPU otherwise.
pub(crate) fn cached_hash_key(partition_key: &[u8]) -> u128 {
    KEY_HASHES.with(|c| c.borrow_mut().hash_key(partition_key))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use spate_protocol::routing::even_range;
    use spate_protocol::{Limits, ShardDescription};

    /// A stream of `n` even shards, shard `i` on core `i % 2`.
    pub(crate) fn description(n: u32) -> StreamDescription<'static> {
        StreamDescription {
            name: "s",
            stream_id: 1,
            status: spate_protocol::StreamStatus::Active,
            retention_hours: 24,
            limits: Limits::Off,
            max_record_data_bytes: 1 << 20,
            created_ms: 0,
            mode: spate_protocol::CapacityMode::Provisioned,
            map_version: 1,
            last_scaling: None,
            shard_level_metrics: false,
            encryption: spate_protocol::EncryptionType::None,
            key_epochs: 0,
            master_key_id: None,
            max_write_mib_per_s: None,
            // Listed in reverse to check the map sorts them.
            shards: (0..n)
                .rev()
                .map(|i| {
                    let (start, end) = even_range(i, n);
                    ShardDescription {
                        id: i,
                        state: ShardState::Open,
                        hash_key_start: start,
                        hash_key_end: end,
                        parent: None,
                        adjacent_parent: None,
                        core: (i % 2) as u16,
                        first_seq: None,
                        last_seq: None,
                        records: 0,
                        bytes: 0,
                        disk_bytes: 0,
                    }
                })
                .collect(),
        }
    }

    #[test]
    fn every_hash_lands_in_the_shard_whose_range_holds_it() {
        for n in [1, 2, 3, 7] {
            let map = ShardMap::from_description(&description(n));
            for i in 0..n {
                let (start, end) = even_range(i, n);
                for h in [start, end, start + (end - start) / 2] {
                    let r = &map.routes()[map.index_for_hash(h).unwrap()];
                    assert_eq!(r.shard_id, i, "hash {h:#x} of {n} shards");
                    assert_eq!(r.core, (i % 2) as u16);
                }
            }
            for key in ["a", "device-7", "ü"] {
                let h = spate_protocol::routing::hash_key(key.as_bytes());
                let r = map.route(key.as_bytes(), None).unwrap();
                assert!((r.hash_key_start..=r.hash_key_end).contains(&h));
            }
            assert_eq!(map.core_of(n - 1), Some(((n - 1) % 2) as u16));
            assert_eq!(map.core_of(n), None);
            let r = map.route(b"any", Some(u128::MAX)).unwrap();
            assert_eq!(r.shard_id, n - 1);
            assert_eq!(map.route(b"any", Some(0)).unwrap().shard_id, 0);
        }
    }

    /// The bucketed search finds what a plain search of every start finds, for even and
    /// uneven splits (a stream split and merged over and over), gaps, and keys at, beside
    /// and between the ranges' bounds.
    #[test]
    fn the_bucketed_search_agrees_with_a_plain_one() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for n in [1u32, 2, 3, 5, 16, 100, 1_000, 10_000, 70_000] {
            for uneven in [false, true] {
                let mut d = description(n);
                if uneven {
                    // Random bounds, some shards closed (gaps).
                    let mut bounds: Vec<u128> = (1..n)
                        .map(|_| (u128::from(next()) << 64) | u128::from(next()))
                        .collect();
                    bounds.sort_unstable();
                    bounds.dedup();
                    let mut start = 0u128;
                    d.shards = bounds
                        .iter()
                        .copied()
                        .chain([u128::MAX])
                        .enumerate()
                        .map(|(i, end)| {
                            let mut s = d.shards[0];
                            s.id = i as u32;
                            s.hash_key_start = start;
                            s.hash_key_end = if end == u128::MAX { end } else { end - 1 };
                            start = end;
                            if next() % 7 == 0 {
                                s.state = ShardState::Closed;
                            }
                            s
                        })
                        .collect();
                }
                let map = ShardMap::from_description(&d);
                let plain = |h: u128| {
                    let after = map.starts.partition_point(|&s| s <= h);
                    let i = after.checked_sub(1)?;
                    (h <= map.routes[i].hash_key_end).then_some(i)
                };
                let mut keys = vec![0, 1, u128::MAX, u128::MAX - 1];
                for r in map.routes() {
                    for h in [r.hash_key_start, r.hash_key_end] {
                        keys.extend([h, h.wrapping_sub(1), h.wrapping_add(1)]);
                    }
                }
                for j in 0..(1u128 << map.lut_bits.min(12)) {
                    let b = bucket_start(j, map.lut_bits.min(12));
                    keys.extend([b, b.wrapping_sub(1)]);
                }
                keys.extend((0..2_000).map(|_| (u128::from(next()) << 64) | u128::from(next())));
                for h in keys {
                    assert_eq!(map.index_for_hash(h), plain(h), "{n} shards, key {h:#x}");
                }
            }
        }
    }

    #[test]
    fn closed_shards_and_gaps_do_not_route() {
        let mut d = description(2);
        d.shards.retain(|s| s.id == 1);
        let map = ShardMap::from_description(&d);
        assert_eq!(map.index_for_hash(0), None);
        assert!(map.index_for_hash(u128::MAX).is_some());
        d.shards[0].state = ShardState::Closed;
        assert!(ShardMap::from_description(&d).routes().is_empty());
    }
}
