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
