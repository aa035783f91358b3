//! Shard-log tests on the simulated disk: unit behaviour, plus a seeded model check that
//! runs random appends, rolls, reads, retention, crashes and injected faults against a
//! simple in-memory model of what the log must hold.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use futures_lite::future::block_on;
use spate_protocol::batch::{self, BatchBuilder, BatchHeader, RecordIter};

use crate::clock::{ClockRef, ManualClock};
use crate::io::Storage;
use crate::log::{join_all, LogConfig, LogError, ShardIdent, ShardLog};
use crate::segment::{index_file_name, segment_file_name};
use crate::sim::{SimFaults, SimRng, SimStorage};
use crate::spare::SparePool;

/// A record as the tests see it: partition key and data.
type Rec = (Vec<u8>, Vec<u8>);
/// Records by sequence number, with their arrival time.
type ReadBack = BTreeMap<u64, (Vec<u8>, Vec<u8>, i64)>;

const IDENT: ShardIdent = ShardIdent {
    stream_id: 9,
    shard_id: 2,
};

fn small_cfg() -> LogConfig {
    LogConfig {
        segment_bytes: 64 << 10,
        segment_bytes_min: 16 << 10,
        segment_age_max_ms: 3_600_000,
        write_chunk_bytes_max: 16 << 10,
        index_interval_bytes: 2 << 10,
        read_chunk_bytes: 4 << 10,
        round_bytes_max: 32 << 10,
    }
}

struct Harness {
    storage: Rc<SimStorage>,
    clock: ManualClock,
    spares: Rc<SparePool<SimStorage>>,
    cfg: LogConfig,
    dir: PathBuf,
}

impl Harness {
    fn new(seed: u64, cfg: LogConfig) -> Harness {
        let storage = Rc::new(SimStorage::new(seed));
        let spares = Rc::new(
            SparePool::open(
                &*storage,
                PathBuf::from("/d/spare/core-0"),
                cfg.segment_bytes,
                2,
            )
            .unwrap(),
        );
        Harness {
            storage,
            clock: ManualClock::new(1_000_000),
            spares,
            cfg,
            dir: PathBuf::from("/d/streams/s/00002"),
        }
    }

    fn open(&self) -> Result<ShardLog<SimStorage>, LogError> {
        // A restart gets a fresh spare pool view of the same directory.
        let spares = Rc::new(
            SparePool::open(
                &*self.storage,
                PathBuf::from("/d/spare/core-0"),
                self.cfg.segment_bytes,
                2,
            )
            .unwrap(),
        );
        let clock: ClockRef = Arc::new(self.clock.clone());
        block_on(ShardLog::open(
            self.storage.clone(),
            self.dir.clone(),
            IDENT,
            self.cfg,
            clock,
            spares,
        ))
    }
}

fn make_batch(rng: &mut SimRng, tag: u64) -> (Vec<u8>, Vec<Rec>) {
    let n = 1 + rng.below(5) as usize;
    let mut b = BatchBuilder::new();
    let mut recs = Vec::new();
    for i in 0..n {
        let key = format!("key-{}", rng.below(7)).into_bytes();
        let len = if rng.below(10) == 0 {
            5000 + rng.below(4000)
        } else {
            rng.below(300)
        } as usize;
        let mut data = format!("{tag}:{i}:").into_bytes();
        data.resize(data.len() + len, (tag % 251) as u8);
        b.push(&key, &data, None).unwrap();
        recs.push((key, data));
    }
    (b.finish(), recs)
}

/// Every record readable from `from` on, by sequence number.
fn read_all(log: &ShardLog<SimStorage>, from: u64) -> Result<ReadBack, LogError> {
    let mut out = BTreeMap::new();
    let mut next = from;
    loop {
        let r = block_on(log.read(next, 37, 8 << 10))?;
        if r.batch_count == 0 {
            assert_eq!(
                r.end_seq,
                next.max(log.trim_horizon()),
                "empty read must not move"
            );
            return Ok(out);
        }
        let mut pos = 0;
        while pos < r.bytes.len() {
            let h = BatchHeader::decode(&r.bytes[pos..]).unwrap();
            let one = &r.bytes[pos..pos + h.batch_len as usize];
            batch::verify_stored(one).expect("served batch verifies");
            for (i, rec) in RecordIter::new(one, h.record_count).enumerate() {
                let seq = h.base_seq + i as u64;
                if seq >= r.start_seq && seq < r.end_seq {
                    let rec = rec.unwrap();
                    assert!(out
                        .insert(seq, (rec.key.to_vec(), rec.data.to_vec(), h.first_ts_ms))
                        .is_none());
                }
            }
            pos += h.batch_len as usize;
        }
        assert!(r.end_seq > next, "read made no progress");
        next = r.end_seq;
    }
}

#[test]
fn append_read_roll_and_reopen() {
    let h = Harness::new(1, small_cfg());
    let log = h.open().unwrap();
    let mut rng = SimRng::new(7);
    let mut model = BTreeMap::new();
    for tag in 0..200 {
        let (b, recs) = make_batch(&mut rng, tag);
        let ack = block_on(log.append(&b, recs.len() as u32)).unwrap();
        assert_eq!(
            ack.base_seq,
            model.len() as u64,
            "sequence numbers are dense and increasing"
        );
        for (i, (k, d)) in recs.into_iter().enumerate() {
            model.insert(ack.base_seq + i as u64, (k, d));
        }
        h.clock.advance(3);
    }
    assert!(log.segment_count() > 3, "small segments must have rolled");
    let check = |log: &ShardLog<SimStorage>| {
        let got = read_all(log, 0).unwrap();
        assert_eq!(got.len(), model.len());
        for (seq, (k, d, _)) in &got {
            assert_eq!(&model[seq], &(k.clone(), d.clone()));
        }
    };
    check(&log);
    drop(log);
    let log = h.open().unwrap();
    assert_eq!(log.durable_seq(), model.len() as u64);
    assert_eq!(log.recovered_torn_bytes(), 0);
    check(&log);
    // Appends continue the sequence after a restart.
    let (b, recs) = make_batch(&mut rng, 999);
    assert_eq!(
        block_on(log.append(&b, recs.len() as u32))
            .unwrap()
            .base_seq,
        model.len() as u64
    );
}

#[test]
fn group_commit_shares_one_flush() {
    let h = Harness::new(2, small_cfg());
    let log = h.open().unwrap();
    let syncs_before = h.storage.stats().syncs;
    let mut rng = SimRng::new(3);
    let batches: Vec<_> = (0..8)
        .map(|t| make_batch(&mut rng, t))
        .map(|(b, r)| (b, r.len() as u32))
        .collect();
    let acks = block_on(join_all(batches.iter().map(|(b, n)| log.append(b, *n))));
    let mut seqs: Vec<u64> = acks.into_iter().map(|a| a.unwrap().base_seq).collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), 8);
    // The first appender flushes alone; the other seven share the next round.
    let syncs = h.storage.stats().syncs - syncs_before;
    assert!(syncs <= 3, "{syncs} fdatasyncs for 8 concurrent appends");
}

#[test]
fn no_padding_between_batches() {
    let h = Harness::new(3, small_cfg());
    let log = h.open().unwrap();
    let mut b = BatchBuilder::new();
    b.push(b"k", b"abc", None).unwrap();
    let one = b.finish();
    for _ in 0..3 {
        block_on(log.append(&one, 1)).unwrap();
    }
    let file = h
        .storage
        .file_contents(&h.dir.join(segment_file_name(0)))
        .unwrap();
    let n = one.len();
    for i in 0..3 {
        let at = 4096 + i * n;
        let hdr = BatchHeader::decode(&file[at..]).unwrap();
        assert_eq!(
            hdr.base_seq,
            i as u64,
            "batch {i} sits right after batch {}",
            i as i64 - 1
        );
    }
    assert!(file[4096 + 3 * n..8192].iter().all(|&b| b == 0));
}

#[test]
fn torn_tail_is_cut_and_acked_data_survives() {
    for seed in 0..40 {
        let h = Harness::new(seed, small_cfg());
        let log = h.open().unwrap();
        let mut rng = SimRng::new(seed ^ 0xabc);
        let mut acked = 0u64;
        for tag in 0..20 {
            let (b, recs) = make_batch(&mut rng, tag);
            acked = block_on(log.append(&b, recs.len() as u32))
                .unwrap()
                .base_seq
                + recs.len() as u64;
        }
        // Un-synced writes in flight at the crash: stage some without waiting for them.
        let (b, recs) = make_batch(&mut rng, 77);
        let pending = log.append(&b, recs.len() as u32);
        let mut pending = Box::pin(pending);
        let waker = std::task::Waker::noop();
        let _ = pending
            .as_mut()
            .poll(&mut std::task::Context::from_waker(waker));
        drop(pending);
        h.storage.crash();
        drop(log);
        let log = h
            .open()
            .unwrap_or_else(|e| panic!("seed {seed}: reopen failed: {e}"));
        assert!(
            log.durable_seq() >= acked,
            "seed {seed}: lost acknowledged records"
        );
        let all = read_all(&log, 0).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert_eq!(all.len() as u64, log.durable_seq(), "seed {seed}");
    }
}

#[test]
fn corrupt_batch_in_the_middle_is_reported_not_skipped() {
    let h = Harness::new(
        4,
        LogConfig {
            segment_bytes: 1 << 20,
            segment_bytes_min: 1 << 20,
            ..small_cfg()
        },
    );
    let log = h.open().unwrap();
    let mut rng = SimRng::new(5);
    for tag in 0..30 {
        let (b, recs) = make_batch(&mut rng, tag);
        block_on(log.append(&b, recs.len() as u32)).unwrap();
    }
    let seg = h.dir.join(segment_file_name(0));
    let file = h.storage.file_contents(&seg).unwrap();
    let first = BatchHeader::decode(&file[4096..]).unwrap();
    // Flip a payload byte of the second batch.
    let at = 4096 + first.batch_len as usize + 70;
    h.storage.corrupt(&seg, at, &[file[at] ^ 0x40]);
    let err = block_on(log.read(0, 10_000, 10 << 20)).unwrap_err();
    assert!(matches!(err, LogError::Corrupt { .. }), "{err}");
    // The first batch is still served on its own.
    let ok = block_on(log.read(0, first.record_count, 1)).unwrap();
    assert_eq!(ok.batch_count, 1);
}

#[test]
fn index_is_rebuilt_when_missing_or_damaged() {
    let h = Harness::new(6, small_cfg());
    let log = h.open().unwrap();
    let mut rng = SimRng::new(8);
    for tag in 0..120 {
        let (b, recs) = make_batch(&mut rng, tag);
        block_on(log.append(&b, recs.len() as u32)).unwrap();
    }
    let expected = read_all(&log, 0).unwrap();
    let durable = log.durable_seq();
    drop(log);
    let names = h.storage.list_dir(&h.dir).unwrap();
    let idx: Vec<_> = names.iter().filter(|n| n.ends_with(".idx")).collect();
    assert!(idx.len() >= 2);
    h.storage.remove_file(&h.dir.join(idx[0])).unwrap();
    h.storage.corrupt(&h.dir.join(idx[1]), 3, &[0xff]);
    let log = h.open().unwrap();
    assert_eq!(log.durable_seq(), durable);
    assert_eq!(read_all(&log, 0).unwrap(), expected);
    assert!(
        h.storage.file_contents(&h.dir.join(idx[0])).is_some(),
        "missing index rewritten"
    );
    // Lookups by sequence land on the right record everywhere.
    for seq in (0..durable).step_by(13) {
        let r = block_on(log.read(seq, 1, 1)).unwrap();
        assert_eq!(r.start_seq, seq);
        assert_eq!(r.end_seq, seq + 1);
    }
}

#[test]
fn retention_deletes_whole_old_segments_only() {
    let h = Harness::new(10, small_cfg());
    let log = h.open().unwrap();
    let mut rng = SimRng::new(11);
    let mut ts_by_seq = BTreeMap::new();
    for tag in 0..150 {
        let (b, recs) = make_batch(&mut rng, tag);
        let ack = block_on(log.append(&b, recs.len() as u32)).unwrap();
        for i in 0..recs.len() as u64 {
            ts_by_seq.insert(ack.base_seq + i, ack.ts_ms);
        }
        h.clock.advance(1000);
    }
    let segments = log.segment_count();
    assert!(segments > 4);
    let cutoff = 1_000_000 + 75 * 1000;
    let removed = block_on(log.apply_retention(cutoff)).unwrap();
    assert!(removed > 0 && removed < segments);
    let horizon = log.trim_horizon();
    // Everything deleted was older than the cutoff; the oldest kept segment has a newer record.
    assert!(ts_by_seq.range(..horizon).all(|(_, &ts)| ts < cutoff));
    let remaining = read_all(&log, 0).unwrap();
    assert_eq!(*remaining.keys().next().unwrap(), horizon);
    assert_eq!(remaining.len() as u64, log.durable_seq() - horizon);
    // Even when every record is old, the active segment stays.
    h.clock.advance(10_000_000);
    block_on(log.apply_retention(h.clock_now() + 1)).unwrap();
    assert_eq!(log.segment_count(), 1);
    assert!(
        h.spares.ready_count()
            + h.storage
                .list_dir(&PathBuf::from("/d/spare/core-0"))
                .unwrap()
                .len()
            > 0
    );
    // Restart: the trim horizon persists.
    let horizon = log.trim_horizon();
    drop(log);
    assert_eq!(h.open().unwrap().trim_horizon(), horizon);
}

impl Harness {
    fn clock_now(&self) -> i64 {
        use crate::clock::Clock;
        self.clock.now_ms()
    }
}

#[test]
fn slow_segments_roll_by_age() {
    let h = Harness::new(
        12,
        LogConfig {
            segment_age_max_ms: 10_000,
            ..small_cfg()
        },
    );
    let log = h.open().unwrap();
    let mut rng = SimRng::new(1);
    let (b, recs) = make_batch(&mut rng, 0);
    block_on(log.append(&b, recs.len() as u32)).unwrap();
    h.clock.advance(10_000);
    block_on(log.append(&b, recs.len() as u32)).unwrap();
    assert_eq!(log.segment_count(), 2);
}

#[test]
fn seek_by_timestamp() {
    let h = Harness::new(13, small_cfg());
    let log = h.open().unwrap();
    let mut rng = SimRng::new(2);
    let mut first_at = BTreeMap::new();
    for tag in 0..100 {
        let (b, recs) = make_batch(&mut rng, tag);
        let ack = block_on(log.append(&b, recs.len() as u32)).unwrap();
        first_at.entry(ack.ts_ms).or_insert(ack.base_seq);
        h.clock.advance(10);
    }
    for (&ts, &seq) in first_at.iter().step_by(7) {
        assert_eq!(block_on(log.seq_at_timestamp(ts)).unwrap(), seq);
        assert_eq!(block_on(log.seq_at_timestamp(ts - 5)).unwrap(), seq);
    }
    assert_eq!(block_on(log.seq_at_timestamp(0)).unwrap(), 0);
    assert_eq!(
        block_on(log.seq_at_timestamp(i64::MAX)).unwrap(),
        log.durable_seq()
    );
}

#[test]
fn failed_flush_poisons_until_reopen() {
    let h = Harness::new(14, small_cfg());
    let log = h.open().unwrap();
    let mut rng = SimRng::new(3);
    let (b, recs) = make_batch(&mut rng, 0);
    block_on(log.append(&b, recs.len() as u32)).unwrap();
    h.storage.set_faults(SimFaults {
        sync_error_ppm: 1_000_000,
        ..SimFaults::default()
    });
    assert!(matches!(
        block_on(log.append(&b, recs.len() as u32)),
        Err(LogError::Poisoned(_))
    ));
    h.storage.set_faults(SimFaults::default());
    // Still refused: we do not know what reached the disk.
    assert!(matches!(
        block_on(log.append(&b, recs.len() as u32)),
        Err(LogError::Poisoned(_))
    ));
    drop(log);
    let log = h.open().unwrap();
    assert!(block_on(log.append(&b, recs.len() as u32)).is_ok());
}

#[test]
fn full_disk_fails_the_roll_cleanly_and_recovers() {
    let h = Harness::new(15, small_cfg());
    let log = h.open().unwrap();
    let mut rng = SimRng::new(4);
    h.storage.set_faults(SimFaults {
        disk_full: true,
        ..SimFaults::default()
    });
    let mut saw_full = false;
    let mut acked = Vec::new();
    for tag in 0..100 {
        let (b, recs) = make_batch(&mut rng, tag);
        match block_on(log.append(&b, recs.len() as u32)) {
            Ok(a) => acked.push(a.base_seq),
            Err(LogError::StorageFull) => {
                saw_full = true;
                break;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(saw_full);
    h.storage.set_faults(SimFaults::default());
    let (b, recs) = make_batch(&mut rng, 500);
    block_on(log.append(&b, recs.len() as u32)).expect("writes resume when space returns");
    assert_eq!(read_all(&log, 0).unwrap().len() as u64, log.durable_seq());
}

/// The model check. Each seed runs a random schedule; a failure prints the seed.
#[test]
fn random_schedules_match_the_model() {
    let seeds: u64 = std::env::var("SPATE_MODEL_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let first: u64 = std::env::var("SPATE_MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    for seed in first..first + seeds {
        if let Err(msg) = std::panic::catch_unwind(|| run_model(seed)) {
            let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
            panic!("model check failed for seed {seed}: {msg}");
        }
    }
}

fn run_model(seed: u64) {
    let h = Harness::new(seed, small_cfg());
    let mut rng = SimRng::new(seed.wrapping_mul(0x9e37));
    let faulty = seed % 3 == 1;
    let set_faults = |on: bool| {
        h.storage.set_faults(if on {
            SimFaults {
                write_error_ppm: 15_000,
                short_write_ppm: 30_000,
                sync_error_ppm: 15_000,
                disk_full: false,
            }
        } else {
            SimFaults::default()
        })
    };
    let reopen = |h: &Harness| loop {
        match h.open() {
            Ok(log) => return log,
            Err(_) => continue, // an injected fault during recovery: try again, like a restart
        }
    };
    set_faults(false);
    let mut log = h.open().unwrap();
    set_faults(faulty);
    // Everything known durable: seq -> (key, data). Acked records must never leave it
    // except by retention; recovered un-acked records join it once observed.
    let mut model: BTreeMap<u64, (Vec<u8>, Vec<u8>)> = BTreeMap::new();
    let mut tag = 0;
    let debug = std::env::var("SPATE_DEBUG").is_ok();
    for step in 0..120 {
        if debug {
            eprintln!(
                "step {step}: {}",
                log.debug_segments().trim_end().replace('\n', " | ")
            );
        }
        match rng.below(10) {
            0..=5 => {
                let k = 1 + rng.below(5) as usize;
                let batches: Vec<_> = (0..k)
                    .map(|_| {
                        tag += 1;
                        make_batch(&mut rng, tag)
                    })
                    .collect();
                let results = block_on(join_all(
                    batches.iter().map(|(b, r)| log.append(b, r.len() as u32)),
                ));
                let mut failed = false;
                for ((_, recs), r) in batches.iter().zip(results) {
                    match r {
                        Ok(ack) => {
                            for (i, rec) in recs.iter().enumerate() {
                                model.insert(ack.base_seq + i as u64, rec.clone());
                            }
                        }
                        Err(LogError::Poisoned(_)) | Err(LogError::Io(_)) => failed = true,
                        Err(e) => panic!("unexpected error {e}"),
                    }
                }
                if debug {
                    eprintln!("  appended {k} batches, failed={failed}");
                }
                if failed {
                    drop(std::mem::replace(&mut log, reopen(&h)));
                    observe(&log, &mut model);
                }
                h.clock.advance(rng.below(2000) as i64);
            }
            6 => {
                if debug {
                    eprintln!("  crash");
                }
                h.storage.crash();
                drop(std::mem::replace(&mut log, reopen(&h)));
                observe(&log, &mut model);
            }
            7 => {
                let cutoff = h.clock_now() - rng.below(60_000) as i64;
                let before = log.trim_horizon();
                block_on(log.apply_retention(cutoff)).unwrap();
                let after = log.trim_horizon();
                assert!(after >= before);
                model.retain(|&seq, _| seq >= after);
            }
            _ => {
                let lo = log.trim_horizon();
                let hi = log.durable_seq();
                let from = lo + rng.below(hi - lo + 1);
                let got = read_all(&log, from).unwrap();
                let want: Vec<_> = model.range(from..).map(|(s, r)| (*s, r.clone())).collect();
                let have: Vec<_> = got.into_iter().map(|(s, (k, d, _))| (s, (k, d))).collect();
                let seqs = |v: &[(u64, Rec)]| v.iter().map(|(s, _)| *s).collect::<Vec<_>>();
                assert_eq!(
                    seqs(&have),
                    seqs(&want),
                    "sequence numbers read from {from}"
                );
                assert!(
                    have == want,
                    "records read from {from} differ from the model"
                );
            }
        }
    }
}

/// After a restart: every record in the model is still there, nothing else is below the
/// durable sequence but records that just became visible (un-acked writes that survived),
/// and those are added to the model.
fn observe(log: &ShardLog<SimStorage>, model: &mut BTreeMap<u64, (Vec<u8>, Vec<u8>)>) {
    let got = read_all(log, 0).unwrap_or_else(|e| panic!("{e}\n{}", log.debug_segments()));
    for (seq, rec) in model.iter() {
        let (k, d, _) = got
            .get(seq)
            .unwrap_or_else(|| panic!("acknowledged record {seq} lost"));
        assert!((k, d) == (&rec.0, &rec.1), "record {seq} changed");
    }
    let horizon = log.trim_horizon();
    let seqs: Vec<u64> = got.keys().copied().collect();
    assert_eq!(
        seqs,
        (horizon..log.durable_seq()).collect::<Vec<_>>(),
        "sequence numbers are dense"
    );
    for (seq, (k, d, _)) in got {
        model.entry(seq).or_insert((k, d));
    }
}

#[test]
fn index_file_names_are_per_segment() {
    assert_eq!(index_file_name(5), "00000000000000000005.idx");
}

#[test]
fn reads_respect_their_byte_and_record_bounds() {
    let h = Harness::new(16, small_cfg());
    let log = h.open().unwrap();
    for i in 0..40u64 {
        let mut b = BatchBuilder::new();
        for r in 0..3 {
            b.push(format!("k{r}").as_bytes(), &[i as u8; 300], None)
                .unwrap();
        }
        block_on(log.append(&b.finish(), 3)).unwrap();
    }
    let one = block_on(log.read(0, 10_000, 1)).unwrap();
    assert_eq!(one.batch_count, 1, "the first batch is always served");
    let some = block_on(log.read(0, 10_000, 3000)).unwrap();
    assert!(
        some.bytes.len() <= 3000 && some.batch_count >= 2,
        "{} bytes",
        some.bytes.len()
    );
    let few = block_on(log.read(4, 5, 1 << 20)).unwrap();
    assert_eq!((few.start_seq, few.end_seq), (4, 9));
    // Batches start at 3 and 6 cover 4..9; the one starting at 9 is not shipped.
    assert_eq!(few.batch_count, 2);
}
