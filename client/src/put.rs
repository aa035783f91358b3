//! Batch puts: route records to shards, one batch per shard, retry refused suffixes.
//!
//! `put_records` sends each shard's records as a chain of batches (each within 500 records
//! and 10 MiB): shards in parallel, but a shard's batches one after another, each sent only
//! once the previous one is fully acknowledged (its throttled tail retried first). Since the
//! engine admits a prefix of a batch and refuses the rest, and the refused rest is retried
//! before anything later is sent, a partition key's acknowledged records are stored in input
//! order. After a final failure on a shard (a record the client finds invalid, anything but
//! a refusal the server says may be retried, or retries exhausted), that record and every
//! later record of the same shard fail with the same error code and are not sent: no record
//! is acknowledged after an earlier record of its shard failed, so a caller that stops at
//! the first failure in input order has seen every acknowledgement.

use crate::routing::cached_hash_key;
use bytes::Bytes;
use spate_protocol::batch::{
    record_encoded_len, BatchBuilder, BATCH_HEADER_LEN, MAX_BATCH_BYTES, MAX_PARTITION_KEY_BYTES,
};
use spate_protocol::ErrorCode;
use tokio::task::JoinSet;

use crate::client::Client;
use crate::error::{ClientError, Result};
use crate::routing::{ShardMap, ShardRoute};

/// A record to put.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Partition key: 1..=256 bytes of UTF-8.
    pub key: String,
    pub data: Bytes,
    /// Routes the record by this hash key instead of the MD5 of its partition key.
    pub explicit_hash_key: Option<u128>,
}

impl Entry {
    pub fn new(key: impl Into<String>, data: impl Into<Bytes>) -> Entry {
        Entry {
            key: key.into(),
            data: data.into(),
            explicit_hash_key: None,
        }
    }

    pub fn with_explicit_hash_key(self, hash_key: u128) -> Entry {
        Entry {
            explicit_hash_key: Some(hash_key),
            ..self
        }
    }

    fn encoded_len(&self) -> usize {
        record_encoded_len(
            self.key.len(),
            self.data.len(),
            self.explicit_hash_key.is_some(),
        )
    }
}

/// Where an acknowledged record was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PutResult {
    pub shard_id: u32,
    pub seq: u64,
}

/// Refuses a record the engine would refuse: a key outside 1..=256 bytes, data above the
/// stream's limit, or a record too big for any batch.
pub(crate) fn check_entry(map: &ShardMap, entry: &Entry) -> Result<()> {
    if entry.key.is_empty() || entry.key.len() > MAX_PARTITION_KEY_BYTES {
        return Err(ClientError::invalid(
            ErrorCode::InvalidRecord,
            format!(
                "partition key of {} bytes; allowed 1..=256",
                entry.key.len()
            ),
        ));
    }
    let max = map.max_record_data_bytes as usize;
    if entry.data.len() > max || BATCH_HEADER_LEN + entry.encoded_len() > MAX_BATCH_BYTES {
        return Err(ClientError::invalid(
            ErrorCode::RecordTooLarge,
            format!(
                "record data of {} bytes exceeds the stream's limit of {max}",
                entry.data.len()
            ),
        ));
    }
    Ok(())
}

/// Builds one batch from the longest prefix of `entries` that keeps within the put limits
/// and, past its first record, within `bytes_max`. Returns the batch and how many records
/// it holds (at least one; every entry must have passed `check_entry`).
fn build_batch(entries: &[Entry], bytes_max: usize) -> (Bytes, usize) {
    let first = entries.first().expect("a batch of at least one record");
    let mut b = BatchBuilder::with_capacity(bytes_max.min(BATCH_HEADER_LEN + first.encoded_len()));
    for e in entries {
        let fits_soft = b.is_empty() || b.encoded_len() + e.encoded_len() <= bytes_max;
        let has_ehk = e.explicit_hash_key.is_some();
        if !fits_soft || !b.fits(e.key.len(), e.data.len(), has_ehk) {
            break;
        }
        // The copy into the batch is the one the wire format needs: the records of a batch
        // travel (and are stored) back to back.
        b.push(e.key.as_bytes(), &e.data, e.explicit_hash_key)
            .expect("entry checked by check_entry");
    }
    let count = b.len() as usize;
    assert!(count >= 1, "a checked entry always fits an empty batch");
    (Bytes::from(b.finish()), count)
}

/// Puts `entries` (all routed to `route`) in order, batch after batch; see the module docs.
/// Returns one result per entry, in order.
pub(crate) async fn put_to_shard(
    client: &Client,
    stream: &str,
    map: &ShardMap,
    route: &ShardRoute,
    entries: &[Entry],
    batch_bytes_max: usize,
) -> Vec<Result<PutResult>> {
    let policy = client.config().retry;
    let mut results: Vec<Result<PutResult>> = Vec::with_capacity(entries.len());
    let mut attempt = 0u32;
    // Records from the first invalid one on are never sent.
    let sendable = entries
        .iter()
        .position(|e| check_entry(map, e).is_err())
        .unwrap_or(entries.len());
    while results.len() < entries.len() {
        let next = results.len();
        if next == sendable {
            let err = check_entry(map, &entries[next]).expect_err("invalid, found above");
            fail_rest(&mut results, entries.len(), err, route);
            break;
        }
        let (batch, count) = build_batch(&entries[next..sendable], batch_bytes_max);
        let err = match client.put_batch_once(stream, route, batch).await {
            Ok(resp) if resp.accepted as usize > count => ClientError::protocol(format!(
                "server accepted {} records of a batch of {count}",
                resp.accepted
            )),
            Ok(resp) => {
                for i in 0..resp.accepted {
                    results.push(Ok(PutResult {
                        shard_id: route.shard_id,
                        seq: resp.base_seq + u64::from(i),
                    }));
                }
                if resp.accepted > 0 {
                    attempt = 0;
                }
                match resp.rejected {
                    None if resp.accepted as usize == count => continue,
                    None => ClientError::Server {
                        code: ErrorCode::Internal,
                        retry_after_ms: 0,
                        message: "the server accounted for only part of the batch".into(),
                    },
                    Some(rejection) => ClientError::Server {
                        code: rejection.code,
                        retry_after_ms: rejection.retry_after_ms,
                        message: format!("shard {} refused the record", route.shard_id),
                    },
                }
            }
            Err(e) => e,
        };
        if err.is_safe_to_retry() && attempt < policy.max_attempts {
            tracing::debug!(shard = route.shard_id, attempt, error = %err, "retrying put");
            tokio::time::sleep(policy.delay(attempt, err.retry_after_ms())).await;
            attempt += 1;
            continue;
        }
        client.forget_on(stream, &err);
        fail_rest(&mut results, entries.len(), err, route);
    }
    results
}

/// Fails the next record with `err` and every later one as not sent because of it.
fn fail_rest(
    results: &mut Vec<Result<PutResult>>,
    len: usize,
    err: ClientError,
    route: &ShardRoute,
) {
    let skipped = err.skipped_after(route.shard_id);
    results.push(Err(err));
    results.resize(len, Err(skipped));
}

impl Client {
    /// Puts many records: routes each one by the MD5 of its key (or its explicit hash key)
    /// to its shard, sends one batch chain per shard to the shard's core, all shards
    /// concurrently, and retries refused suffixes with backoff. Returns one result per
    /// record, in input order (see the module docs for ordering and failure semantics).
    pub async fn put_records(&self, stream: &str, entries: Vec<Entry>) -> Vec<Result<PutResult>> {
        let n = entries.len();
        if n == 0 {
            return Vec::new();
        }
        let map = match self.shard_map(stream).await {
            Ok(map) => map,
            Err(e) => return vec![Err(e); n],
        };
        let mut results: Vec<Option<Result<PutResult>>> = vec![None; n];
        let mut groups: Vec<(Vec<usize>, Vec<Entry>)> =
            vec![(Vec::new(), Vec::new()); map.routes().len()];
        for (i, entry) in entries.into_iter().enumerate() {
            // An invalid record is routed too: it fails in its place in its shard's chain.
            let hash = entry
                .explicit_hash_key
                .unwrap_or_else(|| cached_hash_key(entry.key.as_bytes()));
            let routed = map
                .index_for_hash(hash)
                .ok_or_else(|| ClientError::protocol("no open shard covers the record's hash key"));
            match routed {
                Ok(shard) => {
                    groups[shard].0.push(i);
                    groups[shard].1.push(entry);
                }
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        let mut tasks = JoinSet::new();
        for (shard, (indices, entries)) in groups.into_iter().enumerate() {
            if indices.is_empty() {
                continue;
            }
            let client = self.clone();
            let stream = stream.to_string();
            let map = map.clone();
            let route = map.routes()[shard];
            tasks.spawn(async move {
                let r =
                    put_to_shard(&client, &stream, &map, &route, &entries, MAX_BATCH_BYTES).await;
                (indices, r)
            });
        }
        while let Some(joined) = tasks.join_next().await {
            let (indices, shard_results) = match joined {
                Ok(done) => done,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => panic!("put task cancelled: {e}"),
            };
            for (i, r) in indices.into_iter().zip(shard_results) {
                results[i] = Some(r);
            }
        }
        results
            .into_iter()
            .map(|r| r.expect("every record has a result"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_respect_the_soft_and_hard_bounds() {
        let small: Vec<Entry> = (0..600)
            .map(|i| Entry::new(format!("k{i}"), vec![0u8; 10]))
            .collect();
        let (_, n) = build_batch(&small, MAX_BATCH_BYTES);
        assert_eq!(n, 500, "at most 500 records a batch");
        let (batch, n) = build_batch(&small, 200);
        assert!(n >= 1 && batch.len() <= 200 + small[0].encoded_len());
        let big = vec![Entry::new("k", vec![1u8; 4 << 20]); 3];
        let (batch, n) = build_batch(&big, MAX_BATCH_BYTES);
        assert_eq!(n, 2, "10 MiB hold two 4 MiB records");
        assert!(batch.len() <= MAX_BATCH_BYTES);
        let (_, n) = build_batch(&big, 1024);
        assert_eq!(
            n, 1,
            "the first record always goes, whatever the soft bound"
        );
    }
}
