//! Batch puts: route records to shards, one batch per shard, retry refused suffixes.
//!
//! `put_records` sends each shard's records as a chain of batches (each within 500 records
//! and 10 MiB): a shard's batches one after another, each sent only once the previous one is
//! fully acknowledged (its throttled tail retried first). Shards advance together: each step
//! sends, to every core, one request carrying the next batch of each of its shards that is
//! ready (PutBatches), so a call over thousands of shards costs a request per core per step,
//! not one per shard. Since the
//! engine admits a prefix of a batch and refuses the rest, and the refused rest is retried
//! before anything later is sent, a partition key's acknowledged records are stored in input
//! order. After a final failure on a shard (a record the client finds invalid, anything but
//! a refusal the server says may be retried, or retries exhausted), that record and every
//! later record of the same shard fail with the same error code and are not sent: no record
//! is acknowledged after an earlier record of its shard failed, so a caller that stops at
//! the first failure in input order has seen every acknowledgement. A record refused because
//! a split or merge closed its shard (`ShardClosed`: nothing of the batch was stored) is not
//! a failure: once every chain has run, such records go again, in input order, to the
//! shards that own their keys in the new routing table, up to eight times.

use crate::routing::cached_hash_key;
use bytes::Bytes;
use spate_protocol::batch::{
    record_encoded_len, BatchBuilder, BATCH_HEADER_LEN, MAX_BATCH_BYTES, MAX_PARTITION_KEY_BYTES,
    MAX_RECORDS_PER_BATCH,
};
use spate_protocol::{ErrorCode, PutBatchResponse};

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

    pub(crate) fn encoded_len(&self) -> usize {
        self.view().encoded_len()
    }

    pub(crate) fn view(&self) -> RecordView<'_> {
        RecordView {
            key: &self.key,
            data: &self.data,
            explicit_hash_key: self.explicit_hash_key,
        }
    }
}

/// A record borrowed from its sender (the `Producer` copies it into its batch at once).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecordView<'a> {
    pub key: &'a str,
    pub data: &'a [u8],
    pub explicit_hash_key: Option<u128>,
}

impl RecordView<'_> {
    pub(crate) fn encoded_len(&self) -> usize {
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
    check_record(map, entry.view())
}

/// As [`check_entry`], for a borrowed record.
pub(crate) fn check_record(map: &ShardMap, entry: RecordView<'_>) -> Result<()> {
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

/// The longest prefix of `entries` that keeps within the put limits and, past its first
/// record, within `bytes_max`: how many records it holds (at least one; every entry must
/// have passed `check_entry`) and the bytes of their batch.
fn plan_batch(entries: &[Entry], bytes_max: usize) -> (usize, usize) {
    let mut len = BATCH_HEADER_LEN;
    let mut count = 0;
    for e in entries {
        let add = e.encoded_len();
        let fits_soft = count == 0 || len + add <= bytes_max;
        if !fits_soft || count >= MAX_RECORDS_PER_BATCH as usize || len + add > MAX_BATCH_BYTES {
            break;
        }
        len += add;
        count += 1;
    }
    assert!(count >= 1, "a checked entry always fits an empty batch");
    (count, len)
}

/// Writes the batch of `entries` (a prefix `plan_batch` chose) at the end of `buf`. The
/// copy into the batch is the one the wire format needs: the records of a batch travel
/// (and are stored) back to back.
fn write_batch(buf: Vec<u8>, entries: &[Entry]) -> Vec<u8> {
    let mut b = BatchBuilder::append_to(buf);
    for e in entries {
        b.push(e.key.as_bytes(), &e.data, e.explicit_hash_key)
            .expect("entry checked by check_entry, and it fits: counted by plan_batch");
    }
    b.into_buffer()
}

/// Fails the first of `results` with `err` and every later one as not sent because of it.
fn fail_rest(results: &mut [Option<Result<PutResult>>], err: ClientError, route: &ShardRoute) {
    let skipped = err.skipped_after(route.shard_id);
    let Some((first, rest)) = results.split_first_mut() else {
        return;
    };
    for r in rest {
        *r = Some(Err(skipped.clone()));
    }
    *first = Some(Err(err));
}

/// One shard's records being put in order: a chain of batches, see the module docs.
/// How many times `put_records` re-routes records refused by shards a reshard closed (a
/// chain of splits and merges while one call is under way).
const MAX_RESHARD_ROUNDS: usize = 8;

pub(crate) struct Chain {
    pub route: ShardRoute,
    /// Its records: `entries[start..end]` of the call's records grouped by shard, in input
    /// order, and their results at the same places (a call over 10,000 shards holds about
    /// a chain per record: three vectors of its own each were three allocations a record).
    start: usize,
    end: usize,
    /// Records settled: their results are set.
    settled: usize,
    /// Records from `start + sendable` on: the client refuses the first of them, and none
    /// is ever sent.
    sendable: usize,
    attempt: u32,
    /// A refused tail is retried no earlier than this.
    ready_at: Option<tokio::time::Instant>,
}

impl Chain {
    /// The chain of `entries[start..end]` (one shard's records, in input order).
    pub(crate) fn new(
        map: &ShardMap,
        route: ShardRoute,
        entries: &[Entry],
        start: usize,
        end: usize,
    ) -> Chain {
        let sendable = entries[start..end]
            .iter()
            .position(|e| check_entry(map, e).is_err())
            .unwrap_or(end - start);
        Chain {
            route,
            start,
            end,
            settled: 0,
            sendable,
            attempt: 0,
            ready_at: None,
        }
    }

    pub(crate) fn done(&self) -> bool {
        self.settled == self.end - self.start
    }

    /// Its records' results from the first unsettled one on.
    fn unsettled<'a>(
        &self,
        results: &'a mut [Option<Result<PutResult>>],
    ) -> &'a mut [Option<Result<PutResult>>] {
        &mut results[self.start + self.settled..self.end]
    }

    /// The next batch to send (at most `bytes_max` past its first record): the index of
    /// its first record, how many it holds and its bytes; `None` when the chain is done or
    /// waiting out a retry delay. A record the client refuses fails here, with everything
    /// after it.
    fn next_batch(
        &mut self,
        map: &ShardMap,
        entries: &[Entry],
        results: &mut [Option<Result<PutResult>>],
        bytes_max: usize,
        now: tokio::time::Instant,
    ) -> Option<(usize, usize, usize)> {
        if self.done() || self.ready_at.is_some_and(|t| t > now) {
            return None;
        }
        let next = self.start + self.settled;
        if self.settled == self.sendable {
            let err = check_entry(map, &entries[next]).expect_err("invalid, found above");
            fail_rest(self.unsettled(results), err, &self.route);
            self.settled = self.end - self.start;
            return None;
        }
        let (count, len) = plan_batch(&entries[next..self.start + self.sendable], bytes_max);
        Some((next, count, len))
    }

    /// Applies the answer to a batch of `count` records.
    fn settle(
        &mut self,
        client: &Client,
        stream: &str,
        results: &mut [Option<Result<PutResult>>],
        count: usize,
        answer: Result<PutBatchResponse>,
    ) {
        let policy = client.config().retry;
        let err = match answer {
            Ok(resp) if resp.accepted as usize > count => ClientError::protocol(format!(
                "server accepted {} records of a batch of {count}",
                resp.accepted
            )),
            Ok(resp) => {
                let shard_id = self.route.shard_id;
                for (i, r) in self.unsettled(results)[..resp.accepted as usize]
                    .iter_mut()
                    .enumerate()
                {
                    *r = Some(Ok(PutResult {
                        shard_id,
                        seq: resp.base_seq + i as u64,
                    }));
                }
                self.settled += resp.accepted as usize;
                if resp.accepted > 0 {
                    self.attempt = 0;
                }
                match resp.rejected {
                    None if resp.accepted as usize == count => {
                        self.ready_at = None;
                        return;
                    }
                    None => ClientError::Server {
                        code: ErrorCode::Internal,
                        retry_after_ms: 0,
                        message: "the server accounted for only part of the batch".into(),
                    },
                    Some(rejection) => ClientError::Server {
                        code: rejection.code,
                        retry_after_ms: rejection.retry_after_ms,
                        message: format!("shard {} refused the record", self.route.shard_id),
                    },
                }
            }
            Err(e) => e,
        };
        if err.is_safe_to_retry() && self.attempt < policy.max_attempts {
            tracing::debug!(shard = self.route.shard_id, attempt = self.attempt, error = %err, "retrying put");
            self.ready_at = Some(
                tokio::time::Instant::now() + policy.delay(self.attempt, err.retry_after_ms()),
            );
            self.attempt += 1;
            return;
        }
        client.forget_on(stream, &err);
        fail_rest(self.unsettled(results), err, &self.route);
        self.settled = self.end - self.start;
    }
}

/// How many bytes of a step's batches share one buffer (`put_chains`).
const PACK_BYTES: usize = 256 << 10;

/// A chain's next batch in a request: (chain index, index of its first record, records in
/// it, bytes).
type Planned = (usize, usize, usize, usize);

/// Awaits every future, concurrently (the client's own tiny join: no extra dependency).
async fn join_all<T>(futs: impl Iterator<Item = impl std::future::Future<Output = T>>) -> Vec<T> {
    let mut set = Vec::new();
    for f in futs {
        set.push(Box::pin(f));
    }
    let mut out: Vec<Option<T>> = (0..set.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|v| v.expect("ready")).collect()
}

/// Runs chains to completion: each step sends every ready chain's next batch, one request
/// per core (split when a frame would be too large), all cores at once. The chains'
/// records are `entries`; their results go to the same places in `results`.
pub(crate) async fn put_chains(
    client: &Client,
    stream: &str,
    map: &ShardMap,
    entries: &[Entry],
    results: &mut [Option<Result<PutResult>>],
    chains: &mut [Chain],
    batch_bytes_max: usize,
) {
    loop {
        let now = tokio::time::Instant::now();
        // Every ready chain's next batch.
        let ready: Vec<Planned> = chains
            .iter_mut()
            .enumerate()
            .filter_map(|(i, c)| {
                c.next_batch(map, entries, results, batch_bytes_max, now)
                    .map(|(first, count, len)| (i, first, count, len))
            })
            .collect();
        if ready.is_empty() {
            let wake = chains
                .iter()
                .filter(|c| !c.done())
                .filter_map(|c| c.ready_at)
                .min();
            match wake {
                Some(t) => {
                    tokio::time::sleep_until(t).await;
                    continue;
                }
                None => return,
            }
        }
        // The step's small batches back to back in buffers of up to `PACK_BYTES`, each sent
        // as a slice of its buffer: over thousands of shards a call is about a batch per
        // record, and a buffer per batch (and the shared header its first clone made) were
        // two allocations a record. (A batch past `PACK_BYTES` has a buffer of its own, as
        // before: one buffer for a call's megabytes was slower to fill.)
        let mut left: usize = ready.iter().map(|p| p.3).sum();
        let mut bufs: Vec<Vec<u8>> = Vec::new();
        // Per batch: its route, its buffer, its bytes there.
        let mut spans = Vec::with_capacity(ready.len());
        for &(i, first, count, len) in &ready {
            match bufs.last() {
                Some(buf) if buf.len() + len <= PACK_BYTES => {}
                _ => bufs.push(Vec::with_capacity(len.max(left.min(PACK_BYTES)))),
            }
            let b = bufs.len() - 1;
            let at = bufs[b].len();
            bufs[b] = write_batch(std::mem::take(&mut bufs[b]), &entries[first..first + count]);
            debug_assert_eq!(bufs[b].len() - at, len);
            spans.push((chains[i].route, b, at..at + len));
            left -= len;
        }
        let bufs: Vec<Bytes> = bufs.into_iter().map(Bytes::from).collect();
        let routed: Vec<(ShardRoute, Bytes)> = spans
            .into_iter()
            .map(|(route, b, range)| (route, bufs[b].slice(range)))
            .collect();
        for (j, answer) in send_per_core(client, stream, &routed)
            .await
            .into_iter()
            .enumerate()
        {
            let (i, _, count, _) = ready[j];
            chains[i].settle(client, stream, results, count, answer);
        }
    }
}

/// Batch bytes a request to the server can carry: its largest request frame, less room for
/// the frame head, the stream name and each entry's shard id.
pub(crate) fn request_room(client: &Client) -> usize {
    client.max_request_bytes().saturating_sub(1024)
}

/// Packs batches into requests, one core's per request, in input order: a new request for a
/// core when its open one would pass the request size or `MAX_BATCHES_PER_PUT`. Takes each
/// batch's core and length; gives each request's core and the indices of its batches.
pub(crate) fn pack_per_core(
    client: &Client,
    batches: impl Iterator<Item = (u16, usize)>,
) -> Vec<(u16, Vec<usize>)> {
    let frame_max = request_room(client);
    // Requests: core, indices in input order, frame bytes so far.
    let mut requests: Vec<(u16, Vec<usize>, usize)> = Vec::new();
    let mut open: std::collections::BTreeMap<u16, usize> = Default::default();
    for (i, (core, len)) in batches.enumerate() {
        let entry = len + 4;
        let fits = open.get(&core).is_some_and(|&r| {
            let (_, items, bytes) = &requests[r];
            items.len() < spate_protocol::MAX_BATCHES_PER_PUT && bytes + entry <= frame_max
        });
        if !fits {
            open.insert(core, requests.len());
            requests.push((core, Vec::new(), 0));
        }
        let r = &mut requests[open[&core]];
        r.1.push(i);
        r.2 += entry;
    }
    requests
        .into_iter()
        .map(|(core, items, _)| (core, items))
        .collect()
}

/// Sends one request of `pack_per_core` once: a lone batch as the plain put-batch request,
/// several as PutBatches to their core. One answer per batch, in order.
pub(crate) async fn send_packed(
    client: &Client,
    stream: &str,
    core: u16,
    parts: &[(ShardRoute, Bytes)],
) -> Vec<Result<PutBatchResponse>> {
    if let [(route, batch)] = parts {
        return vec![client.put_batch_once(stream, route, batch.clone()).await];
    }
    let parts: Vec<(u32, Bytes)> = parts
        .iter()
        .map(|(route, batch)| (route.shard_id, batch.clone()))
        .collect();
    match client.put_batches_once(stream, core, &parts).await {
        Ok(r) => r,
        Err(e) => vec![Err(e); parts.len()],
    }
}

/// Sends batches, each to the shard of its route, once: packed per core (`pack_per_core`),
/// all requests at once. One answer per batch, in input order.
async fn send_per_core(
    client: &Client,
    stream: &str,
    batches: &[(ShardRoute, Bytes)],
) -> Vec<Result<PutBatchResponse>> {
    let requests = pack_per_core(client, batches.iter().map(|(r, b)| (r.core, b.len())));
    let answers = join_all(requests.iter().map(|(core, items)| async move {
        let parts: Vec<(ShardRoute, Bytes)> = items.iter().map(|&i| batches[i].clone()).collect();
        send_packed(client, stream, *core, &parts).await
    }))
    .await;
    let mut out: Vec<Option<Result<PutBatchResponse>>> = vec![None; batches.len()];
    for ((_, items), answer) in requests.into_iter().zip(answers) {
        for (i, a) in items.into_iter().zip(answer) {
            out[i] = Some(a);
        }
    }
    out.into_iter()
        .map(|a| a.expect("every batch has an answer"))
        .collect()
}

impl Client {
    /// Puts many records: routes each one by the MD5 of its key (or its explicit hash key)
    /// to its shard, and sends the shards' batch chains (one request per core per step, see
    /// the module docs), retrying refused suffixes with backoff. Returns one result per
    /// record, in input order (see the module docs for ordering and failure semantics).
    pub async fn put_records(&self, stream: &str, entries: Vec<Entry>) -> Vec<Result<PutResult>> {
        let n = entries.len();
        if n == 0 {
            return Vec::new();
        }
        let mut map = match self.shard_map(stream).await {
            Ok(map) => map,
            Err(e) => return vec![Err(e); n],
        };
        let mut results: Vec<Option<Result<PutResult>>> = vec![None; n];
        let mut pending: Vec<(usize, Entry)> = entries.into_iter().enumerate().collect();
        // A shard closed by a split or merge under way refuses the rest of its chain; those
        // records go again, in their order, to the shards that own their keys now (every
        // record of a key before it in the closed shard is acknowledged by then).
        for round in 0..MAX_RESHARD_ROUNDS {
            // Each record's shard, then the records grouped by shard in input order: sorted
            // (shard, position) pairs, not a vector per open shard. A stream of 10,000
            // shards made a call allocate and zero a slot for each of them, and grow two
            // vectors for every shard it touched (allocations were 29 % of the load
            // generator's CPU in `many-shards`).
            let mut keyed: Vec<u64> = Vec::with_capacity(pending.len());
            let mut routed: Vec<(usize, Option<Entry>)> = Vec::with_capacity(pending.len());
            for (i, entry) in pending.drain(..) {
                // An invalid record is routed too: it fails in its place in its shard's chain.
                let hash = entry
                    .explicit_hash_key
                    .unwrap_or_else(|| cached_hash_key(entry.key.as_bytes()));
                match map.index_for_hash(hash) {
                    Some(shard) => {
                        keyed.push((shard as u64) << 32 | routed.len() as u64);
                        routed.push((i, Some(entry)));
                    }
                    None => {
                        results[i] = Some(Err(ClientError::protocol(
                            "no open shard covers the record's hash key",
                        )))
                    }
                }
            }
            keyed.sort_unstable();
            // The records grouped by shard (input order within each), where each came from,
            // and one chain per shard over its run of them.
            let mut order: Vec<usize> = Vec::with_capacity(keyed.len());
            let mut grouped: Vec<Entry> = Vec::with_capacity(keyed.len());
            for k in &keyed {
                let (i, entry) = &mut routed[(k & 0xffff_ffff) as usize];
                order.push(*i);
                grouped.push(entry.take().expect("each record is taken once"));
            }
            let mut chains: Vec<Chain> = Vec::new();
            let mut at = 0;
            while at < keyed.len() {
                let shard = (keyed[at] >> 32) as usize;
                let run = keyed[at..].partition_point(|k| (k >> 32) as usize == shard);
                chains.push(Chain::new(
                    &map,
                    map.routes()[shard],
                    &grouped,
                    at,
                    at + run,
                ));
                at += run;
            }
            let mut outcomes: Vec<Option<Result<PutResult>>> = vec![None; grouped.len()];
            put_chains(
                self,
                stream,
                &map,
                &grouped,
                &mut outcomes,
                &mut chains,
                MAX_BATCH_BYTES,
            )
            .await;
            let mut version = 0;
            let last = round + 1 == MAX_RESHARD_ROUNDS;
            for ((i, r), entry) in order.into_iter().zip(outcomes).zip(grouped) {
                match r.expect("every chain runs to its end") {
                    Err(ClientError::ShardClosed {
                        shard_map_version, ..
                    }) if !last => {
                        version = version.max(shard_map_version);
                        pending.push((i, entry));
                    }
                    r => results[i] = Some(r),
                }
            }
            if pending.is_empty() {
                break;
            }
            pending.sort_by_key(|(i, _)| *i);
            map = match self.shard_map_at_least(stream, version).await {
                Ok(m) => m,
                Err(e) => {
                    for (i, _) in pending.drain(..) {
                        results[i] = Some(Err(e.clone()));
                    }
                    break;
                }
            };
        }
        results
            .into_iter()
            .map(|r| r.expect("every record has a result"))
            .collect()
    }
}

impl Client {
    /// Puts batches the caller built (with [`spate_protocol::batch::BatchBuilder`]), each to
    /// the shard of its route, sending each **once**: one request per core (PutBatches;
    /// split when a frame would be too large or hold too many batches), all cores at once.
    /// Answers one outcome per batch, in input order: how many of its records were stored
    /// (always a prefix) and at which sequence numbers, and why the rest were refused.
    ///
    /// Nothing is checked, routed or retried here: a batch holding a record whose key does
    /// not hash into its shard is refused whole by the engine (`WrongShard`), and a refused suffix
    /// (`Throttled`, `ShardClosed` after a split or merge) is the caller's to resend, in
    /// order, before anything later for the same keys. Several batches for one shard in one
    /// call are stored in input order only while they travel in one request (they fit in one
    /// frame); requests run at once, so give a shard one batch per call when order matters.
    /// For producers that build batches themselves (the load
    /// generator's `--api put-batches`: records generated straight into their batch);
    /// [`Client::put_records`] does all of the above for records.
    pub async fn put_shard_batches(
        &self,
        stream: &str,
        batches: Vec<(ShardRoute, Bytes)>,
    ) -> Vec<Result<PutBatchResponse>> {
        let answers = send_per_core(self, stream, &batches).await;
        for a in &answers {
            let failure = match a {
                Err(e) => Some(e.clone()),
                Ok(r) => r.rejected.map(|rej| ClientError::Server {
                    code: rej.code,
                    retry_after_ms: rej.retry_after_ms,
                    message: String::new(),
                }),
            };
            if let Some(e) = failure {
                // A shard the routing table no longer matches: learn the new one.
                self.forget_on(stream, &e);
            }
        }
        answers
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
        let (n, _) = plan_batch(&small, MAX_BATCH_BYTES);
        assert_eq!(n, 500, "at most 500 records a batch");
        let (n, len) = plan_batch(&small, 200);
        assert!(n >= 1 && len <= 200 + small[0].encoded_len());
        let big = vec![Entry::new("k", vec![1u8; 4 << 20]); 3];
        let (n, len) = plan_batch(&big, MAX_BATCH_BYTES);
        assert_eq!(n, 2, "10 MiB hold two 4 MiB records");
        assert!(len <= MAX_BATCH_BYTES);
        let (n, _) = plan_batch(&big, 1024);
        assert_eq!(
            n, 1,
            "the first record always goes, whatever the soft bound"
        );
    }

    /// Batches written back to back are each the batch planned: its size, its records.
    #[test]
    fn planned_batches_are_written_back_to_back() {
        let entries: Vec<Entry> = (0..5)
            .map(|i| Entry::new(format!("key-{i}"), vec![i as u8; 10 * i]))
            .collect();
        let (a, a_len) = plan_batch(&entries[..2], MAX_BATCH_BYTES);
        let (b, b_len) = plan_batch(&entries[2..], MAX_BATCH_BYTES);
        assert_eq!((a, b), (2, 3));
        let buf = write_batch(Vec::new(), &entries[..2]);
        assert_eq!(buf.len(), a_len);
        let buf = write_batch(buf, &entries[2..]);
        assert_eq!(buf.len(), a_len + b_len);
        for (range, from) in [(0..a_len, 0), (a_len..a_len + b_len, 2)] {
            let batch = &buf[range];
            let h = spate_protocol::batch::BatchHeader::decode(batch).unwrap();
            assert_eq!(h.batch_len as usize, batch.len());
            let records: Vec<_> = spate_protocol::batch::RecordIter::new(batch, h.record_count)
                .map(Result::unwrap)
                .collect();
            for (r, e) in records.iter().zip(&entries[from..]) {
                assert_eq!((r.key, r.data), (e.key.as_bytes(), &e.data[..]));
            }
            // Header, lengths and the records' CRC as the engine checks them.
            spate_protocol::batch::check_producer_batch(batch, &Default::default()).unwrap();
        }
    }
}
