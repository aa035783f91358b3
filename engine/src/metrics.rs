//! Metrics: per-core counters and latency histograms, merged and encoded in the Prometheus
//! (OpenMetrics) text format when scraped.
//!
//! Each core counts in plain cells of its own (`CoreMetrics`): no lock and no atomic on the
//! request path. A scrape asks every core for a snapshot (`CoreMsg::Metrics`), adds them up
//! (`MetricsSnapshot::merge`) and encodes them with `prometheus-client` (`encode`).
//!
//! Per stream, Kinesis' CloudWatch metrics under their names (a `.` becomes `_`, and
//! counters end in `_total` as OpenMetrics wants): `IncomingBytes`, `IncomingRecords`,
//! `PutRecord_Success`, `PutRecord_Bytes`, `PutRecord_Latency`, `PutRecords_Success`,
//! `PutRecords_Bytes`, `PutRecords_TotalRecords`, `PutRecords_SuccessfulRecords`,
//! `PutRecords_ThrottledRecords`, `PutRecords_FailedRecords`, `PutRecords_Latency`,
//! `WriteProvisionedThroughputExceeded`, `ReadProvisionedThroughputExceeded`,
//! `GetRecords_Success`, `GetRecords_Bytes`, `GetRecords_Records`, `GetRecords_Latency`,
//! `GetRecords_IteratorAgeMilliseconds` and `OutgoingBytes`, each with a `stream` label.
//! Engine internals are prefixed `spate_`.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

/// Upper bounds (ms) of the latency buckets; the last bucket is +Inf.
pub const LATENCY_BOUNDS_MS: [f64; 16] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
    10000.0,
];

/// Buckets of a latency histogram: one per bound, and +Inf.
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;

/// The bucket of a latency of `us` microseconds.
pub fn latency_bucket_us(us: u64) -> usize {
    let ms = us as f64 / 1000.0;
    LATENCY_BOUNDS_MS.partition_point(|b| *b < ms)
}

/// A latency histogram with fixed buckets (`LATENCY_BOUNDS_MS`), counts per bucket (not
/// cumulative).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Latency {
    pub buckets: [u64; LATENCY_BUCKETS],
    pub count: u64,
    pub sum_ms: f64,
}

impl Latency {
    pub fn observe(&mut self, d: Duration) {
        let ms = d.as_secs_f64() * 1000.0;
        let i = LATENCY_BOUNDS_MS.partition_point(|b| *b < ms);
        self.buckets[i] += 1;
        self.count += 1;
        self.sum_ms += ms;
    }

    pub fn merge(&mut self, o: &Latency) {
        for (a, b) in self.buckets.iter_mut().zip(&o.buckets) {
            *a += b;
        }
        self.count += o.count;
        self.sum_ms += o.sum_ms;
    }
}

/// One stream's counters on one core (or merged over all).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamCounters {
    pub incoming_bytes: u64,
    pub incoming_records: u64,
    /// Successful PutRecord calls, and put calls of batches (PutBatch, PutBatches) that
    /// stored something.
    pub put_record_success: u64,
    pub put_records_success: u64,
    /// Key and data bytes stored by PutRecord calls, and by batch calls (PutRecord.Bytes,
    /// PutRecords.Bytes).
    pub put_record_bytes: u64,
    pub put_records_bytes: u64,
    /// Records in batch calls: all, stored, refused by the write limit, failed otherwise
    /// (PutRecords.TotalRecords, .SuccessfulRecords, .ThrottledRecords, .FailedRecords).
    pub put_records_total_records: u64,
    pub put_records_successful_records: u64,
    pub put_records_throttled_records: u64,
    pub put_records_failed_records: u64,
    /// Latency of batch calls (PutRecords.Latency) and of PutRecord calls.
    pub put_latency: Latency,
    pub put_record_latency: Latency,
    /// Records refused by the write limit (reported to the producer, never dropped).
    pub write_throttled: u64,
    /// Reads refused by the read limit.
    pub read_throttled: u64,
    pub get_records_success: u64,
    pub get_records_bytes: u64,
    pub get_records_records: u64,
    pub get_records_latency: Latency,
    /// The iterator age (ms behind the shard's newest record) of the stream's latest
    /// GetRecords answer on this core, if that was within the last minute (a reader that
    /// stopped, or moved to another core, leaves no stale age); the largest of the cores'
    /// when merged.
    pub iterator_age_ms: u64,
    /// When `iterator_age_ms` was answered (ms since the epoch).
    pub iterator_age_at_ms: i64,
    pub outgoing_bytes: u64,
    /// Subscriptions started (Kinesis SubscribeToShard.Success).
    pub subscribe_success: u64,
    /// Events pushed with records, and their records and bytes (SubscribeToShardEvent.*).
    pub subscribe_events: u64,
    pub subscribe_event_records: u64,
    pub subscribe_event_bytes: u64,
    /// As `iterator_age_ms`, for the latest pushed event.
    pub subscribe_millis_behind: u64,
    pub subscribe_millis_behind_at_ms: i64,
}

impl StreamCounters {
    fn merge(&mut self, o: &StreamCounters) {
        self.incoming_bytes += o.incoming_bytes;
        self.incoming_records += o.incoming_records;
        self.put_record_success += o.put_record_success;
        self.put_records_success += o.put_records_success;
        self.put_record_bytes += o.put_record_bytes;
        self.put_records_bytes += o.put_records_bytes;
        self.put_records_total_records += o.put_records_total_records;
        self.put_records_successful_records += o.put_records_successful_records;
        self.put_records_throttled_records += o.put_records_throttled_records;
        self.put_records_failed_records += o.put_records_failed_records;
        self.put_latency.merge(&o.put_latency);
        self.put_record_latency.merge(&o.put_record_latency);
        self.write_throttled += o.write_throttled;
        self.read_throttled += o.read_throttled;
        self.get_records_success += o.get_records_success;
        self.get_records_bytes += o.get_records_bytes;
        self.get_records_records += o.get_records_records;
        self.get_records_latency.merge(&o.get_records_latency);
        self.iterator_age_ms = self.iterator_age_ms.max(o.iterator_age_ms);
        self.outgoing_bytes += o.outgoing_bytes;
        self.subscribe_success += o.subscribe_success;
        self.subscribe_events += o.subscribe_events;
        self.subscribe_event_records += o.subscribe_event_records;
        self.subscribe_event_bytes += o.subscribe_event_bytes;
        self.subscribe_millis_behind = self.subscribe_millis_behind.max(o.subscribe_millis_behind);
    }
}

/// One shard's counters (Kinesis' enhanced shard-level metrics), kept only for streams that
/// turned them on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardCounters {
    pub incoming_bytes: u64,
    pub incoming_records: u64,
    pub write_throttled: u64,
    pub read_throttled: u64,
    pub outgoing_bytes: u64,
    pub outgoing_records: u64,
    /// As the stream's: the last read's age, if within the last minute.
    pub iterator_age_ms: u64,
    pub iterator_age_at_ms: i64,
}

impl ShardCounters {
    fn merge(&mut self, o: &ShardCounters) {
        self.incoming_bytes += o.incoming_bytes;
        self.incoming_records += o.incoming_records;
        self.write_throttled += o.write_throttled;
        self.read_throttled += o.read_throttled;
        self.outgoing_bytes += o.outgoing_bytes;
        self.outgoing_records += o.outgoing_records;
        self.iterator_age_ms = self.iterator_age_ms.max(o.iterator_age_ms);
    }
}

/// How long an iterator age answered counts as the stream's current one.
const ITERATOR_AGE_FOR_MS: i64 = 60_000;

/// Request counters indexed by opcode (opcodes are small numbers).
const OPCODE_SLOTS: usize = 64;

/// A core's counters; touched only by its thread. Streams are found by incarnation id in a
/// hash map and requests by opcode in an array: a put pays two lookups, no string compare.
#[derive(Debug)]
pub(crate) struct CoreMetrics {
    /// Counting is off (`metrics = false`, or an off phase of `metrics_toggle_ms`): every
    /// call returns at once.
    off: Cell<bool>,
    /// Records this core stored, counting on or off (what `toggle` divides by).
    stored: Cell<u64>,
    /// `metrics_toggle_ms`: the phases so far.
    toggle: RefCell<Vec<TogglePeriod>>,
    streams: RefCell<rustc_hash::FxHashMap<u64, (String, StreamCounters)>>,
    /// Streams (by incarnation) whose shards are counted one by one.
    shard_level: RefCell<rustc_hash::FxHashSet<u64>>,
    shards: RefCell<rustc_hash::FxHashMap<(u64, u32), (String, ShardCounters)>>,
    requests: RefCell<[u64; OPCODE_SLOTS]>,
    errors: RefCell<BTreeMap<&'static str, u64>>,
}

impl Default for CoreMetrics {
    fn default() -> Self {
        CoreMetrics::new(true)
    }
}

impl CoreMetrics {
    pub(crate) fn new(on: bool) -> CoreMetrics {
        CoreMetrics {
            off: Cell::new(!on),
            stored: Cell::new(0),
            toggle: RefCell::new(Vec::new()),
            streams: RefCell::new(Default::default()),
            shard_level: RefCell::new(Default::default()),
            shards: RefCell::new(Default::default()),
            requests: RefCell::new([0; OPCODE_SLOTS]),
            errors: RefCell::new(BTreeMap::new()),
        }
    }

    /// Runs `f` on the counters of the stream with incarnation id `stream_id`, named
    /// `name` (made on first use).
    pub(crate) fn stream(&self, stream_id: u64, name: &str, f: impl FnOnce(&mut StreamCounters)) {
        if self.off.get() {
            return;
        }
        let mut streams = self.streams.borrow_mut();
        let (_, c) = streams
            .entry(stream_id)
            .or_insert_with(|| (name.to_owned(), StreamCounters::default()));
        f(c);
    }

    /// Whether the stream's shards are counted one by one (from its catalog entry).
    pub(crate) fn set_shard_level(&self, stream_id: u64, on: bool) {
        let mut set = self.shard_level.borrow_mut();
        if on {
            set.insert(stream_id);
        } else if set.remove(&stream_id) {
            self.shards.borrow_mut().retain(|(s, _), _| *s != stream_id);
        }
    }

    /// Runs `f` on the shard's counters if its stream counts shards one by one (one hash
    /// look-up otherwise).
    pub(crate) fn shard(
        &self,
        stream_id: u64,
        shard_id: u32,
        name: &str,
        f: impl FnOnce(&mut ShardCounters),
    ) {
        if self.off.get() || !self.shard_level.borrow().contains(&stream_id) {
            return;
        }
        let mut shards = self.shards.borrow_mut();
        let (_, c) = shards
            .entry((stream_id, shard_id))
            .or_insert_with(|| (name.to_owned(), ShardCounters::default()));
        f(c);
    }

    /// Counts a put call (`single`: a PutRecord; otherwise a put of one batch or of several:
    /// PutBatches, what the client's `put_records` sends): each batch's `(shard_id, stored,
    /// bytes, throttled)` — records and bytes stored, records throttled — in its shard's
    /// counters (if on), their sums in the stream's, and the call once in
    /// `PutRecord(s)_Success` and its latency if it stored anything (as Kinesis counts a
    /// PutRecords call with at least one record stored). One stream look-up per call, not
    /// per batch: a call can carry thousands (`many-shards`). What a put request costs the
    /// metrics (with `request`).
    pub(crate) fn count_put(
        &self,
        stream_id: u64,
        name: &str,
        batches: impl IntoIterator<Item = (u32, u64, u64, u64, u64)>,
        single: bool,
        took: Duration,
    ) {
        let shard_level = !self.off.get() && self.shard_level.borrow().contains(&stream_id);
        let (mut stored, mut bytes, mut throttled, mut failed) = (0, 0, 0, 0);
        for (shard_id, s, b, t, f) in batches {
            stored += s;
            bytes += b;
            throttled += t;
            failed += f;
            // A batch that failed outright names a shard the client chose, which may not
            // exist: only shards that stored or refused records get counters of their own.
            if shard_level && s + t > 0 {
                self.shard(stream_id, shard_id, name, |c| {
                    c.incoming_records += s;
                    c.incoming_bytes += b;
                    c.write_throttled += t;
                });
            }
        }
        // Counted on or off: the metrics-cost phases (`toggle_phase`) divide by it.
        self.stored.set(self.stored.get() + stored);
        self.stream(stream_id, name, |c| {
            c.incoming_records += stored;
            c.incoming_bytes += bytes;
            c.write_throttled += throttled;
            if single {
                c.put_record_bytes += bytes;
            } else {
                c.put_records_bytes += bytes;
                c.put_records_total_records += stored + throttled + failed;
                c.put_records_successful_records += stored;
                c.put_records_throttled_records += throttled;
                c.put_records_failed_records += failed;
            }
            if stored > 0 {
                if single {
                    c.put_record_success += 1;
                    c.put_record_latency.observe(took);
                } else {
                    c.put_records_success += 1;
                    c.put_latency.observe(took);
                }
            }
        });
    }

    /// `metrics_toggle_ms`: closes the phase that ends now (records stored and this
    /// thread's CPU time in it) and starts the next, counting `on` or off (with
    /// `calibrate`, counting stays on and only the phases are told apart: an A/A run).
    pub(crate) fn toggle_phase(&self, on: bool, calibrate: bool, now: std::time::Instant) {
        let cpu_ns = thread_cpu_ns();
        let stored = self.stored.get();
        let mut periods = self.toggle.borrow_mut();
        if let Some(last) = periods.last_mut() {
            last.records = stored - last.records;
            last.cpu_ns = cpu_ns - last.cpu_ns;
            last.wall_ns = now.duration_since(last.started).as_nanos() as u64;
            last.closed = true;
        }
        // The open period holds its starting values until it is closed.
        periods.push(TogglePeriod {
            on,
            records: stored,
            cpu_ns,
            wall_ns: 0,
            started: now,
            closed: false,
        });
        self.off.set(!on && !calibrate);
    }

    /// `metrics_toggle_ms`: what counting cost, from the phases so far (`None` before a
    /// pair of busy phases).
    pub(crate) fn toggle_summary(&self) -> Option<ToggleSummary> {
        ToggleSummary::of(&self.toggle.borrow())
    }

    /// Forgets a deleted stream's counters.
    pub(crate) fn forget(&self, name: &str) {
        self.streams.borrow_mut().retain(|_, (n, _)| n != name);
        self.shards.borrow_mut().retain(|_, (n, _)| n != name);
    }

    /// Counts a request by its opcode, and its error answer by code.
    pub(crate) fn request(&self, opcode: u16, error: Option<&'static str>) {
        if self.off.get() {
            return;
        }
        if let Some(n) = self.requests.borrow_mut().get_mut(usize::from(opcode)) {
            *n += 1;
        }
        if let Some(code) = error {
            *self.errors.borrow_mut().entry(code).or_default() += 1;
        }
    }

    /// The counters as of `now_ms`.
    pub(crate) fn snapshot(&self, now_ms: i64) -> MetricsSnapshot {
        let mut streams: BTreeMap<String, StreamCounters> = BTreeMap::new();
        for (name, c) in self.streams.borrow().values() {
            let mut c = c.clone();
            if now_ms - c.iterator_age_at_ms > ITERATOR_AGE_FOR_MS {
                c.iterator_age_ms = 0;
            }
            if now_ms - c.subscribe_millis_behind_at_ms > ITERATOR_AGE_FOR_MS {
                c.subscribe_millis_behind = 0;
            }
            streams.entry(name.clone()).or_default().merge(&c);
        }
        let mut shards: BTreeMap<(String, u32), ShardCounters> = BTreeMap::new();
        for (&(_, shard_id), (name, c)) in self.shards.borrow().iter() {
            let mut c = c.clone();
            if now_ms - c.iterator_age_at_ms > ITERATOR_AGE_FOR_MS {
                c.iterator_age_ms = 0;
            }
            shards
                .entry((name.clone(), shard_id))
                .or_default()
                .merge(&c);
        }
        let requests = self
            .requests
            .borrow()
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(op, n)| {
                let name =
                    spate_protocol::Opcode::from_u16(op as u16).map_or("unknown", |o| o.name());
                (name, *n)
            })
            .collect();
        MetricsSnapshot {
            streams,
            shards,
            requests,
            errors: self.errors.borrow().clone(),
            ..MetricsSnapshot::default()
        }
    }
}

/// One core's share of the work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoreLoad {
    pub requests: u64,
    pub rounds: u64,
    pub connections: u64,
    /// Messages waiting in the core's request channel (from other cores and handles).
    pub queue_depth: u64,
    /// The rate the core's rounds are paced to now (0: unpaced), and the stalls of its
    /// executor seen by the adaptive pacer's probe (`crate::pacer`).
    pub round_rate_cap: u64,
    pub stalls: u64,
}

/// What a scrape reports: every core's counters added up.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsSnapshot {
    pub streams: BTreeMap<String, StreamCounters>,
    /// Per shard, for streams with shard-level metrics on: (stream, shard id).
    pub shards: BTreeMap<(String, u32), ShardCounters>,
    /// Requests by operation, and error answers by code.
    pub requests: BTreeMap<&'static str, u64>,
    pub errors: BTreeMap<&'static str, u64>,
    /// Network: open connections, request bytes held, answer bytes not yet written, parked
    /// long-polls.
    pub connections: u64,
    pub request_bytes: u64,
    pub unsent_bytes: u64,
    pub parked_reads: u64,
    /// Store memory: staged bytes not yet written to their extents, and all buffers held.
    pub staged_bytes: u64,
    pub store_memory_bytes: u64,
    /// Stores: group-commit rounds, their flushes, journal and in-place bytes, and the
    /// time spent flushing.
    pub rounds: u64,
    pub round_syncs: u64,
    pub journal_bytes: u64,
    pub direct_bytes: u64,
    pub sync_us: u64,
    pub checkpoints: u64,
    /// Appends that waited before they could be staged, by what they waited for (`round`,
    /// `memory`, `journal`, `extent`, `tail`): where backpressure comes from.
    pub append_waits: BTreeMap<&'static str, u64>,
    /// How long rounds took to flush (fdatasync or O_DSYNC writes).
    pub flush_latency: Latency,
    /// Extents and records retention deleted.
    pub retention_extents: u64,
    pub retention_records: u64,
    /// The longest a core took to open (recover) its stores at start.
    pub recovery_ms: u64,
    /// Per core: requests, rounds and open connections.
    pub per_core: BTreeMap<u64, CoreLoad>,
    /// Bytes the shards' extents hold on disk, per stream.
    pub disk_bytes: BTreeMap<String, u64>,
    pub cores: u64,
}

impl MetricsSnapshot {
    pub fn merge(&mut self, o: &MetricsSnapshot) {
        for (name, c) in &o.streams {
            self.streams.entry(name.clone()).or_default().merge(c);
        }
        for (key, c) in &o.shards {
            self.shards.entry(key.clone()).or_default().merge(c);
        }
        for (op, n) in &o.requests {
            *self.requests.entry(op).or_default() += n;
        }
        for (code, n) in &o.errors {
            *self.errors.entry(code).or_default() += n;
        }
        for (name, n) in &o.disk_bytes {
            *self.disk_bytes.entry(name.clone()).or_default() += n;
        }
        self.connections += o.connections;
        self.request_bytes += o.request_bytes;
        self.unsent_bytes += o.unsent_bytes;
        self.parked_reads += o.parked_reads;
        self.staged_bytes += o.staged_bytes;
        self.store_memory_bytes += o.store_memory_bytes;
        self.rounds += o.rounds;
        self.round_syncs += o.round_syncs;
        self.journal_bytes += o.journal_bytes;
        self.direct_bytes += o.direct_bytes;
        self.sync_us += o.sync_us;
        self.checkpoints += o.checkpoints;
        for (why, n) in &o.append_waits {
            *self.append_waits.entry(why).or_default() += n;
        }
        self.flush_latency.merge(&o.flush_latency);
        self.retention_extents += o.retention_extents;
        self.retention_records += o.retention_records;
        self.recovery_ms = self.recovery_ms.max(o.recovery_ms);
        for (core, load) in &o.per_core {
            let l = self.per_core.entry(*core).or_default();
            l.requests += load.requests;
            l.rounds += load.rounds;
            l.connections += load.connections;
            l.round_rate_cap = load.round_rate_cap;
            l.stalls += load.stalls;
            l.queue_depth += load.queue_depth;
        }
        self.cores += o.cores;
    }

    /// The Prometheus (OpenMetrics) text exposition of the snapshot.
    pub fn encode(&self) -> String {
        let mut registry = Registry::default();
        let stream = |name: &str| -> Labels { vec![("stream", name.to_string())] };
        let core = |index: &u64| -> Labels { vec![("core", index.to_string())] };
        let counter = |registry: &mut Registry,
                       name: &str,
                       help: &str,
                       value: &dyn Fn(&StreamCounters) -> u64| {
            let family = counters(self.streams.iter().map(|(s, c)| (stream(s), value(c))));
            registry.register(name, help, family);
        };
        // Kinesis' enhanced shard-level metrics: the same names, with a `shard` label (the
        // stream's own samples have none: select them with `{shard=""}`).
        let shard = |(name, id): &(String, u32)| -> Labels {
            vec![("stream", name.clone()), ("shard", id.to_string())]
        };
        let with_shards = |registry: &mut Registry,
                           name: &str,
                           help: &str,
                           value: &dyn Fn(&StreamCounters) -> u64,
                           per_shard: &dyn Fn(&ShardCounters) -> u64| {
            let family = counters(
                self.streams
                    .iter()
                    .map(|(s, c)| (stream(s), value(c)))
                    .chain(self.shards.iter().map(|(k, c)| (shard(k), per_shard(c)))),
            );
            registry.register(name, help, family);
        };
        with_shards(
            &mut registry,
            "IncomingBytes",
            "Partition key and data bytes of the records stored (Kinesis IncomingBytes)",
            &|c| c.incoming_bytes,
            &|c| c.incoming_bytes,
        );
        with_shards(
            &mut registry,
            "IncomingRecords",
            "Records stored (Kinesis IncomingRecords)",
            &|c| c.incoming_records,
            &|c| c.incoming_records,
        );
        counter(
            &mut registry,
            "PutRecord_Success",
            "Successful PutRecord calls",
            &|c| c.put_record_success,
        );
        counter(
            &mut registry,
            "PutRecords_Success",
            "PutRecords and PutBatches calls that stored at least one record",
            &|c| c.put_records_success,
        );
        counter(
            &mut registry,
            "PutRecord_Bytes",
            "Partition key and data bytes stored by PutRecord calls",
            &|c| c.put_record_bytes,
        );
        counter(
            &mut registry,
            "PutRecords_Bytes",
            "Partition key and data bytes stored by PutRecords and PutBatches calls",
            &|c| c.put_records_bytes,
        );
        counter(
            &mut registry,
            "PutRecords_TotalRecords",
            "Records sent in PutRecords and PutBatches calls",
            &|c| c.put_records_total_records,
        );
        counter(
            &mut registry,
            "PutRecords_SuccessfulRecords",
            "Records of PutRecords and PutBatches calls that were stored",
            &|c| c.put_records_successful_records,
        );
        counter(
            &mut registry,
            "PutRecords_ThrottledRecords",
            "Records of PutRecords and PutBatches calls refused by the shard's write limit",
            &|c| c.put_records_throttled_records,
        );
        counter(
            &mut registry,
            "PutRecords_FailedRecords",
            "Records of PutRecords and PutBatches calls that failed otherwise",
            &|c| c.put_records_failed_records,
        );
        with_shards(
            &mut registry,
            "WriteProvisionedThroughputExceeded",
            "Records refused by the shard's write limit",
            &|c| c.write_throttled,
            &|c| c.write_throttled,
        );
        with_shards(
            &mut registry,
            "ReadProvisionedThroughputExceeded",
            "Reads refused by the shard's read limit",
            &|c| c.read_throttled,
            &|c| c.read_throttled,
        );
        counter(
            &mut registry,
            "GetRecords_Success",
            "Successful GetRecords calls",
            &|c| c.get_records_success,
        );
        counter(
            &mut registry,
            "GetRecords_Bytes",
            "Partition key and data bytes of the records GetRecords returned",
            &|c| c.get_records_bytes,
        );
        counter(
            &mut registry,
            "GetRecords_Records",
            "Records returned by GetRecords",
            &|c| c.get_records_records,
        );
        with_shards(
            &mut registry,
            "OutgoingBytes",
            "Partition key and data bytes of the records sent to consumers",
            &|c| c.outgoing_bytes,
            &|c| c.outgoing_bytes,
        );
        registry.register(
            "OutgoingRecords",
            "Records sent to consumers, per shard (shard-level metrics)",
            counters(
                self.shards
                    .iter()
                    .map(|(k, c)| (shard(k), c.outgoing_records)),
            ),
        );
        counter(
            &mut registry,
            "SubscribeToShard_Success",
            "Subscriptions of registered consumers started",
            &|c| c.subscribe_success,
        );
        counter(
            &mut registry,
            "SubscribeToShardEvent_Success",
            "Events with records pushed to subscribers",
            &|c| c.subscribe_events,
        );
        counter(
            &mut registry,
            "SubscribeToShardEvent_Records",
            "Records pushed to subscribers",
            &|c| c.subscribe_event_records,
        );
        counter(
            &mut registry,
            "SubscribeToShardEvent_Bytes",
            "Bytes of records pushed to subscribers",
            &|c| c.subscribe_event_bytes,
        );
        registry.register(
            "SubscribeToShardEvent_MillisBehindLatest",
            "How far behind the newest record the last pushed event was",
            gauges(
                self.streams
                    .iter()
                    .map(|(s, c)| (stream(s), c.subscribe_millis_behind)),
            ),
        );
        let ages = gauges(
            self.streams
                .iter()
                .map(|(s, c)| (stream(s), c.iterator_age_ms))
                .chain(
                    self.shards
                        .iter()
                        .map(|(k, c)| (shard(k), c.iterator_age_ms)),
                ),
        );
        registry.register(
            "GetRecords_IteratorAgeMilliseconds",
            "How far behind the newest record the last GetRecords answer was",
            ages,
        );
        let latency = |registry: &mut Registry,
                       name: &str,
                       help: &str,
                       value: &dyn Fn(&StreamCounters) -> &Latency| {
            let family = Family::<Labels, Histo>::default();
            for (s, c) in &self.streams {
                family.get_or_create(&stream(s)).set(value(c));
            }
            registry.register(name, help, family);
        };
        latency(
            &mut registry,
            "PutRecords_Latency",
            "PutRecords and PutBatches latency in ms, arrival to acknowledgement",
            &|c| &c.put_latency,
        );
        latency(
            &mut registry,
            "PutRecord_Latency",
            "PutRecord latency in ms, arrival to acknowledgement",
            &|c| &c.put_record_latency,
        );
        latency(
            &mut registry,
            "GetRecords_Latency",
            "GetRecords latency in ms (long-poll waits included)",
            &|c| &c.get_records_latency,
        );

        let spate = registry.sub_registry_with_prefix("spate");
        let by = |key: &'static str, map: &BTreeMap<&'static str, u64>| {
            counters(map.iter().map(|(k, n)| (vec![(key, k.to_string())], *n)))
        };
        spate.register(
            "requests",
            "Requests by operation",
            by("op", &self.requests),
        );
        // Every code from the first scrape on, at 0 until it happens: a rate() or an alert
        // on a code sees a series before its first error, not a gap.
        let mut errors: BTreeMap<&'static str, u64> = spate_protocol::ErrorCode::ALL
            .iter()
            .map(|c| (c.name(), 0))
            .collect();
        for (code, n) in &self.errors {
            *errors.entry(code).or_default() += n;
        }
        spate.register("errors", "Error answers by code", by("code", &errors));
        let plain = |n: u64| {
            let c = Counter::<u64>::default();
            c.inc_by(n);
            c
        };
        let gauge = |n: u64| {
            let g = Gauge::<i64>::default();
            g.set(n as i64);
            g
        };
        spate.register(
            "rounds",
            "Group-commit rounds made durable",
            plain(self.rounds),
        );
        spate.register(
            "round_syncs",
            "Flushes (fdatasync or O_DSYNC writes) of rounds",
            plain(self.round_syncs),
        );
        spate.register(
            "journal_bytes",
            "Bytes written to the journals",
            plain(self.journal_bytes),
        );
        spate.register(
            "direct_bytes",
            "Bytes of hot shards written in place",
            plain(self.direct_bytes),
        );
        spate.register("flush_seconds", "Time spent flushing rounds", {
            let c = Counter::<f64, std::sync::atomic::AtomicU64>::default();
            c.inc_by(self.sync_us as f64 / 1e6);
            c
        });
        spate.register("checkpoints", "Store checkpoints", plain(self.checkpoints));
        spate.register(
            "append_waits",
            "Appends that waited before staging, by reason: room in the open round, memory, the journal ring, an extent, their shard's tail",
            by("reason", &self.append_waits),
        );
        spate.register(
            "connections",
            "Open client connections",
            gauge(self.connections),
        );
        spate.register(
            "request_bytes",
            "Request bytes held (arriving or in flight)",
            gauge(self.request_bytes),
        );
        spate.register(
            "unsent_bytes",
            "Answer bytes not yet written",
            gauge(self.unsent_bytes),
        );
        spate.register(
            "parked_reads",
            "Long-polls waiting for records",
            gauge(self.parked_reads),
        );
        spate.register(
            "staged_bytes",
            "Bytes staged in memory, not yet written to their extents",
            gauge(self.staged_bytes),
        );
        spate.register(
            "store_memory_bytes",
            "Memory the stores' shard buffers hold",
            gauge(self.store_memory_bytes),
        );
        spate.register("cores", "Engine cores", gauge(self.cores));
        let disk = gauges(self.disk_bytes.iter().map(|(s, n)| (stream(s), *n)));
        spate.register("disk_bytes", "Disk held by each stream's shards", disk);
        let flush = Histo::default();
        flush.set(&self.flush_latency);
        spate.register(
            "flush_latency",
            "How long a round's flush took, in ms",
            flush,
        );
        spate.register(
            "retention_deleted_extents",
            "Extents deleted by retention",
            plain(self.retention_extents),
        );
        spate.register(
            "retention_deleted_records",
            "Records deleted by retention",
            plain(self.retention_records),
        );
        spate.register(
            "recovery_seconds",
            "How long the slowest core took to recover its stores at start",
            {
                let g = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
                g.set(self.recovery_ms as f64 / 1000.0);
                g
            },
        );
        let per_core = |value: fn(&CoreLoad) -> u64| {
            self.per_core.iter().map(move |(i, l)| (core(i), value(l)))
        };
        spate.register(
            "core_requests",
            "Requests per core",
            counters(per_core(|l| l.requests)),
        );
        spate.register(
            "core_rounds",
            "Group-commit rounds per core",
            counters(per_core(|l| l.rounds)),
        );
        spate.register(
            "core_connections",
            "Open connections per core",
            gauges(per_core(|l| l.connections)),
        );
        spate.register(
            "core_queue_depth",
            "Messages waiting in each core's request channel",
            gauges(per_core(|l| l.queue_depth)),
        );
        spate.register(
            "core_round_rate_cap",
            "Group-commit rounds a second each core is paced to now (0: unpaced)",
            gauges(per_core(|l| l.round_rate_cap)),
        );
        spate.register(
            "core_stalls",
            "Wake-ups of a core's executor 5 ms late or more, seen while round_rate_max = \"auto\" watches (a stopped VM, another process on the core)",
            counters(per_core(|l| l.stalls)),
        );
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// The classic Prometheus text format (`text/plain; version=0.0.4`) of an OpenMetrics
/// exposition as `encode` writes it, for scrapers that do not ask for OpenMetrics: a
/// counter's `# HELP`/`# TYPE` name its samples (`x_total`, not the family `x`), and the
/// lines that format lacks (`# UNIT`, `# EOF`, counters' `_created`) are left out. Samples
/// and label escaping are the same in both.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let tail = if tail == "unknown" { "untyped" } else { tail };
                let total = if counters.contains(name) {
                    "_total"
                } else {
                    ""
                };
                out.push_str(&format!("{prefix}{name}{total} {tail}\n"));
            }
            None => {
                let name = line.split(['{', ' ']).next().unwrap_or_default();
                let created = name
                    .strip_suffix("_created")
                    .is_some_and(|family| counters.contains(family));
                if !created {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
    }
    out
}

/// A metric's label set: (name, value) pairs.
type Labels = Vec<(&'static str, String)>;

/// A counter family holding `values`.
fn counters(values: impl IntoIterator<Item = (Labels, u64)>) -> Family<Labels, Counter> {
    let family = Family::<Labels, Counter>::default();
    for (labels, n) in values {
        family.get_or_create(&labels).inc_by(n);
    }
    family
}

/// A gauge family holding `values`.
fn gauges(values: impl IntoIterator<Item = (Labels, u64)>) -> Family<Labels, Gauge> {
    let family = Family::<Labels, Gauge>::default();
    for (labels, n) in values {
        family.get_or_create(&labels).set(n as i64);
    }
    family
}

/// A latency histogram as `prometheus-client` encodes one, set from merged counts.
#[derive(Debug, Default)]
struct Histo(Mutex<Latency>);

impl Histo {
    fn set(&self, l: &Latency) {
        *self.0.lock().expect("histogram lock") = l.clone();
    }
}

impl TypedMetric for Histo {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histo {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let l = self.0.lock().expect("histogram lock");
        // Counts per bucket: the encoder writes them cumulative; the last bound is +Inf.
        let buckets: Vec<(f64, u64)> = LATENCY_BOUNDS_MS
            .iter()
            .copied()
            .chain([f64::MAX])
            .zip(l.buckets)
            .collect();
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            l.sum_ms, l.count, &buckets, None,
        )
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// One phase of `metrics_toggle_ms`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TogglePeriod {
    on: bool,
    records: u64,
    cpu_ns: u64,
    wall_ns: u64,
    started: std::time::Instant,
    closed: bool,
}

/// The CPU time of the calling thread (the core's executor thread), in ns.
pub(crate) fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Counting's cost measured inside one engine process (`metrics_toggle_ms`): counting is
/// switched on and off every period, so the machine's drifts (the disk's speed changes
/// minute to minute here) fall on both alike, and each adjacent (on, off) pair of busy
/// periods is one paired sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ToggleSummary {
    pub pairs: usize,
    /// Records per second and executor CPU ns per record, counting on and off (totals).
    pub on_records_per_s: f64,
    pub off_records_per_s: f64,
    pub on_cpu_ns_per_record: f64,
    pub off_cpu_ns_per_record: f64,
    /// On/off CPU per record and records per second: 1 + the mean paired difference
    /// relative to the mean "off" value, with that mean's standard error.
    pub cpu_ratio: (f64, f64),
    pub throughput_ratio: (f64, f64),
}

impl ToggleSummary {
    fn of(periods: &[TogglePeriod]) -> Option<ToggleSummary> {
        // Busy, whole periods only (the first starts mid-way, the open one is not over),
        // paired with their neighbour, each period in one pair at most (independent
        // samples).
        let busy = |p: &TogglePeriod| p.closed && p.records > 0 && p.wall_ns > 0;
        let per = |p: &TogglePeriod| p.cpu_ns as f64 / p.records as f64;
        let rps = |p: &TogglePeriod| p.records as f64 * 1e9 / p.wall_ns as f64;
        // (on, off) CPU per record and records per second of each pair.
        let mut pairs: Vec<((f64, f64), (f64, f64))> = Vec::new();
        let mut i = 1;
        while i + 1 < periods.len() {
            let (a, b) = (&periods[i], &periods[i + 1]);
            if !(busy(a) && busy(b) && a.on != b.on) {
                i += 1;
                continue;
            }
            let (on, off) = if a.on { (a, b) } else { (b, a) };
            pairs.push(((per(on), per(off)), (rps(on), rps(off))));
            i += 2;
        }
        if pairs.is_empty() {
            return None;
        }
        // The mean paired difference relative to the mean "off" value, with its standard
        // error (differences, not ratios: a mean of ratios leans upward).
        let relative = |v: Vec<(f64, f64)>| {
            let n = v.len() as f64;
            let base = v.iter().map(|(_, off)| off).sum::<f64>() / n;
            let d: Vec<f64> = v.iter().map(|(on, off)| (on - off) / base).collect();
            let mean = d.iter().sum::<f64>() / n;
            let var = d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
            (1.0 + mean, (var / n).sqrt())
        };
        let cpu_ratio = relative(pairs.iter().map(|p| p.0).collect());
        let throughput_ratio = relative(pairs.iter().map(|p| p.1).collect());
        let busy: Vec<&TogglePeriod> = periods.iter().skip(1).filter(|p| busy(p)).collect();
        let sum = |on: bool, f: fn(&TogglePeriod) -> u64| {
            busy.iter()
                .filter(|p| p.on == on)
                .map(|p| f(p))
                .sum::<u64>() as f64
        };
        let (rec_on, rec_off) = (sum(true, |p| p.records), sum(false, |p| p.records));
        Some(ToggleSummary {
            pairs: pairs.len(),
            on_records_per_s: rec_on * 1e9 / sum(true, |p| p.wall_ns),
            off_records_per_s: rec_off * 1e9 / sum(false, |p| p.wall_ns),
            on_cpu_ns_per_record: sum(true, |p| p.cpu_ns) / rec_on,
            off_cpu_ns_per_record: sum(false, |p| p.cpu_ns) / rec_off,
            cpu_ratio,
            throughput_ratio,
        })
    }
}

/// The counting a put request does, for `benches/benches/metrics.rs` (not an API).
#[doc(hidden)]
pub mod bench {
    use std::time::Duration;

    /// One core's counters.
    pub struct Counting(super::CoreMetrics);

    impl Counting {
        /// Counting on or off; with `shard_level`, stream 1 counts its shards too.
        pub fn new(on: bool, shard_level: bool) -> Counting {
            let m = super::CoreMetrics::new(on);
            m.set_shard_level(1, shard_level);
            Counting(m)
        }

        /// What the server counts for one stored put of a batch: the request by opcode,
        /// then the stream's (and shard's) counters and latency.
        pub fn put(&self, shard_id: u32, records: u64, bytes: u64, took: Duration) {
            self.0
                .request(spate_protocol::Opcode::PutBatches.as_u16(), None);
            self.0
                .count_put(1, "stream", [(shard_id, records, bytes, 0, 0)], false, took);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_put_call_counts_its_batches_once_and_stores_with_metrics_off() {
        let on = CoreMetrics::new(true);
        on.count_put(
            7,
            "s",
            [(0, 3, 30, 1, 0), (1, 2, 20, 0, 4)],
            false,
            Duration::from_micros(5),
        );
        let (_, c) = &on.streams.borrow()[&7];
        assert_eq!(
            (c.incoming_records, c.incoming_bytes, c.write_throttled),
            (5, 50, 1)
        );
        assert_eq!((c.put_records_success, c.put_record_success), (1, 0));
        assert_eq!(
            (
                c.put_records_total_records,
                c.put_records_successful_records,
                c.put_records_throttled_records,
                c.put_records_failed_records,
                c.put_records_bytes,
                c.put_record_bytes
            ),
            (10, 5, 1, 4, 50, 0)
        );
        assert_eq!((c.put_latency.count, c.put_record_latency.count), (1, 0));
        // Off: no counters, but the records stored still count (the metrics-cost phases).
        let off = CoreMetrics::new(false);
        off.count_put(
            7,
            "s",
            [(0, 3, 30, 0, 0), (1, 2, 20, 0, 0)],
            false,
            Duration::from_micros(5),
        );
        assert_eq!(off.stored.get(), 5);
        assert!(off.streams.borrow().is_empty());
    }

    /// Shard-level counters: a batch that failed outright (a shard id the client made up)
    /// gets none, so made-up ids cannot grow the table.
    #[test]
    fn a_failed_batch_gets_no_shard_counters() {
        let on = CoreMetrics::new(true);
        on.shard_level.borrow_mut().insert(8);
        on.count_put(
            8,
            "t",
            [(5, 1, 10, 0, 0), (4_000_000, 0, 0, 0, 3)],
            false,
            Duration::from_micros(5),
        );
        let shards: Vec<(u64, u32)> = on.shards.borrow().keys().copied().collect();
        assert_eq!(shards, [(8, 5)]);
    }

    #[test]
    fn the_toggle_summary_pairs_busy_whole_periods() {
        let t = std::time::Instant::now();
        let p = |on, records, cpu_ns, closed| TogglePeriod {
            on,
            records,
            cpu_ns,
            wall_ns: 1_000_000_000,
            started: t,
            closed,
        };
        let periods = [
            p(true, 999, 1, true), // partial first period: skipped
            p(false, 1000, 1_000_000, true),
            p(true, 900, 990_000, true), // on: 1,100 ns/record, 900/s
            p(false, 0, 5, true),        // idle: skipped, breaks the pairing
            p(true, 1000, 1_100_000, true),
            p(false, 1000, 1_000_000, true),
            p(true, 7, 7, false), // still open
        ];
        let s = ToggleSummary::of(&periods).unwrap();
        assert_eq!(s.pairs, 2);
        assert!((s.cpu_ratio.0 - 1.1).abs() < 1e-9, "{s:?}");
        assert!((s.throughput_ratio.0 - 0.95).abs() < 1e-9, "{s:?}");
        assert!((s.off_cpu_ns_per_record - 1000.0).abs() < 1e-9);
        assert!((s.on_records_per_s - 950.0).abs() < 1e-9);
        assert!(ToggleSummary::of(&periods[..2]).is_none());
    }

    #[test]
    fn snapshots_merge_and_encode() {
        let core = CoreMetrics::default();
        core.stream(7, "s", |c| {
            c.incoming_bytes += 100;
            c.incoming_records += 2;
            c.put_latency.observe(Duration::from_micros(700));
        });
        let put_batch = spate_protocol::Opcode::PutBatch.as_u16();
        core.request(put_batch, None);
        core.request(put_batch, Some("Throttled"));
        let mut all = core.snapshot(0);
        all.merge(&core.snapshot(0));
        let c = &all.streams["s"];
        assert_eq!((c.incoming_bytes, c.incoming_records), (200, 4));
        assert_eq!(c.put_latency.count, 2);
        assert_eq!(
            c.put_latency.buckets[3], 2,
            "0.7 ms falls in the 1 ms bucket"
        );
        let text = all.encode();
        assert!(
            text.contains("IncomingBytes_total{stream=\"s\"} 200"),
            "{text}"
        );
        assert!(
            text.contains("spate_requests_total{op=\"PutBatch\"} 4"),
            "{text}"
        );
        assert!(
            text.contains("spate_errors_total{code=\"Throttled\"} 2"),
            "{text}"
        );
        // Codes that never happened are there at 0 (an alert's series exists from the start).
        assert!(
            text.contains("spate_errors_total{code=\"StorageFull\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("PutRecords_Latency_bucket{le=\"0.5\",stream=\"s\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("PutRecords_Latency_bucket{le=\"1.0\",stream=\"s\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("PutRecords_Latency_bucket{le=\"+Inf\",stream=\"s\"} 2"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }

    /// The classic text format: counters' metadata names their `_total` samples, the
    /// OpenMetrics-only lines are gone, and every sample is kept as it was.
    #[test]
    fn the_classic_text_format_names_counters_by_their_samples() {
        let core = CoreMetrics::default();
        core.stream(1, "s", |c| c.put_latency.observe(Duration::from_millis(1)));
        core.request(spate_protocol::Opcode::PutBatch.as_u16(), Some("Throttled"));
        let open = core.snapshot(0).encode();
        let classic = to_prometheus_text(&open);
        assert!(open.contains("# TYPE spate_requests counter\n"), "{open}");
        assert!(
            classic.contains("# TYPE spate_requests_total counter\n"),
            "{classic}"
        );
        assert!(
            classic.contains("# HELP spate_requests_total "),
            "{classic}"
        );
        assert!(
            !classic.contains("# TYPE spate_requests counter"),
            "{classic}"
        );
        assert!(
            classic.contains("# TYPE PutRecords_Latency histogram\n"),
            "{classic}"
        );
        assert!(
            classic.contains("# TYPE spate_connections gauge\n"),
            "{classic}"
        );
        assert!(
            !classic.contains("# EOF") && !classic.contains("# UNIT"),
            "{classic}"
        );
        let samples = |t: &str| -> Vec<String> {
            t.lines()
                .filter(|l| !l.starts_with('#'))
                .map(str::to_string)
                .collect()
        };
        assert_eq!(samples(&open), samples(&classic));
        assert!(samples(&classic).len() > 10);
        // Metadata of every family, each once, and every sample after its family's.
        let typed: Vec<&str> = classic
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .collect();
        let open_typed = open.lines().filter(|l| l.starts_with("# TYPE ")).count();
        assert_eq!(typed.len(), open_typed);
        // `_created` samples of counters are OpenMetrics only; other names keep theirs.
        let with_created =
            "# HELP c_x A count.\n# TYPE c_x counter\nc_x_total 3\nc_x_created 1.5\n\
                            # TYPE g_created gauge\ng_created 2\n# UNIT c_x seconds\n# EOF\n";
        assert_eq!(
            to_prometheus_text(with_created),
            "# HELP c_x_total A count.\n# TYPE c_x_total counter\nc_x_total 3\n\
             # TYPE g_created gauge\ng_created 2\n"
        );
    }

    /// The Grafana dashboard in the repository uses only names the endpoint exposes.
    #[test]
    fn the_dashboard_uses_only_exposed_names() {
        let core = CoreMetrics::default();
        core.stream(1, "s", |c| c.put_latency.observe(Duration::from_millis(1)));
        core.set_shard_level(1, true);
        core.shard(1, 0, "s", |c| c.incoming_bytes += 1);
        core.request(spate_protocol::Opcode::PutBatch.as_u16(), Some("Throttled"));
        let mut snapshot = core.snapshot(0);
        snapshot.disk_bytes.insert("s".into(), 1);
        snapshot.append_waits.insert("journal", 1);
        snapshot.per_core.insert(0, CoreLoad::default());
        let text = snapshot.encode();
        let exposed: std::collections::BTreeSet<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .collect();
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tuning/grafana/spate.json");
        let dashboard: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard")).unwrap();
        let promql = [
            "sum",
            "by",
            "rate",
            "max",
            "histogram_quantile",
            "le",
            "stream",
            "op",
            "code",
            "core",
            "shard",
            "reason",
            "topk",
            "__rate_interval",
            "label_values",
        ];
        let mut used = 0;
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap();
                // Label values and variables are quoted or start with `$`.
                let mut unquoted = String::new();
                let mut quoted = false;
                for ch in expr.chars() {
                    if ch == '"' {
                        quoted = !quoted;
                    } else if !quoted {
                        unquoted.push(ch);
                    }
                }
                for word in unquoted
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '$'))
                    .filter(|w| !w.is_empty() && !w.starts_with('$'))
                    .filter(|w| !w.chars().next().unwrap().is_ascii_digit())
                {
                    if promql.contains(&word) {
                        continue;
                    }
                    assert!(
                        exposed.contains(word),
                        "{word} (in {expr}) is not exposed:\n{text}"
                    );
                    used += 1;
                }
            }
        }
        assert!(used >= 20, "the dashboard reads {used} metrics");
    }
}
