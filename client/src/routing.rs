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
        let starts = routes.iter().map(|r| r.hash_key_start).collect();
        ShardMap {
            stream: d.name.to_string(),
            stream_id: d.stream_id,
            max_record_data_bytes: d.max_record_data_bytes,
            map_version: d.map_version,
            routes,
            starts,
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
        let after = self.starts.partition_point(|&start| start <= hash);
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
mod tests {
    use super::*;
    use spate_protocol::routing::even_range;
    use spate_protocol::{Limits, ShardDescription};

    fn description(n: u32) -> StreamDescription<'static> {
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
