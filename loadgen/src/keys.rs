//! The run's partition keys, and which producer owns which.
//!
//! Key index `i` belongs to producer `i % P`, so each key's records come from one producer,
//! in counter order, and the per-key order the engine must keep is well defined.
//!
//! - [`KeyMode::Random`]: key `i` is [`key_name`]`(i)`; a producer picks its next key
//!   uniformly at random (many devices reporting independently).
//! - [`KeyMode::PerShard`]: keys are searched (by the MD5 routing rule) so that key `i`
//!   lands on the `i % N`-th shard of the stream's N open shards, and a producer uses its
//!   keys round-robin: every shard receives exactly the same share of the load.

use std::collections::HashMap;

use spate_client::ShardMap;

use crate::config::KeyMode;
use crate::payload::key_name;

/// `count` partition keys for `mode`.
pub fn make_keys(count: u32, mode: KeyMode, map: &ShardMap) -> Result<Vec<String>, String> {
    match mode {
        KeyMode::Random => Ok((0..u64::from(count)).map(key_name).collect()),
        KeyMode::PerShard => per_shard_keys(count, map),
    }
}

fn per_shard_keys(count: u32, map: &ShardMap) -> Result<Vec<String>, String> {
    let n = map.routes().len();
    if n == 0 {
        return Err(format!("stream {} has no open shard", map.stream));
    }
    if (count as usize) < n {
        return Err(format!(
            "--key-mode per-shard needs at least one key per shard: --keys {count} < {n} shards"
        ));
    }
    let index: HashMap<u32, usize> = map
        .routes()
        .iter()
        .enumerate()
        .map(|(i, r)| (r.shard_id, i))
        .collect();
    let mut keys: Vec<Option<String>> = vec![None; count as usize];
    // Next free key index of each shard: shard s takes indices s, s + n, s + 2n, ...
    let mut next: Vec<usize> = (0..n).collect();
    let mut missing = count as usize;
    // Some shard may be tiny (a split); the bound only stops a hopeless search.
    let candidates_max = 1000 * u64::from(count) + 1_000_000;
    for c in 0..candidates_max {
        let name = key_name(c);
        let Some(route) = map.route(name.as_bytes(), None) else {
            return Err("the stream's open shards do not cover the hash-key space".into());
        };
        let s = index[&route.shard_id];
        if next[s] < keys.len() {
            keys[next[s]] = Some(name);
            next[s] += n;
            missing -= 1;
            if missing == 0 {
                return Ok(keys.into_iter().map(|k| k.expect("filled")).collect());
            }
        }
    }
    Err(format!(
        "found no keys for some of the {n} shards after {candidates_max} candidates"
    ))
}

/// The key indices producer `p` of `producers` owns.
pub fn owned_by(p: usize, producers: usize, count: u32) -> Vec<u32> {
    (p as u32..count).step_by(producers).collect()
}
