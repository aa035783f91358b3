//! The engine in-process, on real files through io_uring: streams, appends, reads at
//! every iterator position, limits, long-poll, retention and restarts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::future::block_on;
use spate_engine::clock::{Clock, ManualClock};
use spate_engine::engine::StreamOptions;
use spate_engine::limits::Limits;
use spate_engine::runtime::{IteratorPosition, ReadRequest};
use spate_engine::{Engine, EngineError};
use spate_protocol::batch::{BatchBuilder, BatchError};
use spate_protocol::routing::hash_key;
use spate_tests::{key_for_shard, records, tagged_batch, test_config};

fn read_all(engine: &Engine, stream: &str, shard: u32, from: u64) -> Vec<(u64, Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    let mut next = from;
    loop {
        let req = ReadRequest {
            from_seq: next,
            max_records: 1000,
            max_bytes: 1 << 20,
            wait_ms: 0,
        };
        let r = block_on(engine.read(stream, shard, req)).expect("read");
        if r.batch_count == 0 {
            return out;
        }
        out.extend(records(&r.bytes, r.start_seq, r.end_seq));
        next = r.end_seq;
    }
}

fn off(shards: u32) -> StreamOptions {
    StreamOptions {
        limits: Limits::Off,
        ..StreamOptions::new(shards)
    }
}

/// Both io_uring setups (`io_uring_coop_taskrun`: completions run when the core enters the
/// kernel, or by an interrupt as upstream glommio does) take appends, wake a long-poll
/// from another thread, serve reads, shut down and come back with every record. Each call
/// from this thread wakes the core's executor from its sleep, the path the flag changes.
#[test]
fn both_io_uring_setups_store_wake_serve_and_restart() {
    for coop in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = spate_engine::config::EngineConfig {
            io_uring_coop_taskrun: coop,
            ..test_config(dir.path())
        };
        let user = key_for_shard(0, 1);
        {
            let engine = Arc::new(Engine::start(cfg.clone()).unwrap());
            block_on(engine.create_stream("s", off(1))).unwrap();
            for tag in 0..100u64 {
                let out =
                    block_on(engine.put_batch("s", 0, tagged_batch(&user, tag, 2, 100))).unwrap();
                assert_eq!(out.base_seq, tag * 2, "coop_taskrun = {coop}");
            }
            // A long-poll at the tip, woken by a put from another thread.
            let reader = {
                let engine = engine.clone();
                std::thread::spawn(move || {
                    let req = ReadRequest {
                        from_seq: 200,
                        max_records: 10,
                        max_bytes: 1 << 20,
                        wait_ms: 60_000,
                    };
                    block_on(engine.read("s", 0, req)).expect("long-poll")
                })
            };
            let put = block_on(engine.put_batch("s", 0, tagged_batch(&user, 100, 2, 100)));
            assert_eq!(put.unwrap().base_seq, 200, "coop_taskrun = {coop}");
            let woke = reader.join().unwrap();
            assert_eq!(
                (woke.start_seq, woke.end_seq),
                (200, 202),
                "coop_taskrun = {coop}"
            );
            engine.shutdown();
        }
        let engine = Engine::start(cfg).unwrap();
        let got = read_all(&engine, "s", 0, 0);
        assert_eq!(got.len(), 202, "coop_taskrun = {coop}");
        assert!(got.iter().enumerate().all(|(i, r)| r.0 == i as u64));
    }
}

#[test]
fn streams_lifecycle_and_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(test_config(dir.path())).unwrap();
    block_on(engine.create_stream("clicks", off(3))).unwrap();
    assert!(matches!(
        block_on(engine.create_stream("clicks", off(1))),
        Err(EngineError::StreamExists(_))
    ));
    assert!(matches!(
        block_on(engine.create_stream("bad name", off(1))),
        Err(EngineError::InvalidArgument(_))
    ));
    assert_eq!(
        block_on(engine.list_streams()).unwrap(),
        vec!["clicks".to_string()]
    );
    let mut expected = Vec::new();
    let user = key_for_shard(1, 3);
    for tag in 0..50u64 {
        let out =
            block_on(engine.put_batch("clicks", 1, tagged_batch(&user, tag, 4, 200))).unwrap();
        assert_eq!(out.base_seq, tag * 4);
        assert_eq!(out.accepted, 4);
        for i in 0..4 {
            expected.push((out.base_seq + i, format!("{tag}:{i}:")));
        }
    }
    let got = read_all(&engine, "clicks", 1, 0);
    assert_eq!(got.len(), expected.len());
    for ((seq, key, data), (eseq, prefix)) in got.iter().zip(&expected) {
        assert_eq!(seq, eseq);
        assert_eq!(key, user.as_bytes());
        assert!(data.starts_with(prefix.as_bytes()));
    }
    let d = block_on(engine.describe_stream("clicks")).unwrap();
    assert_eq!(d.shards.len(), 3);
    assert_eq!(
        (d.shards[1].first_seq, d.shards[1].last_seq),
        (Some(0), Some(199))
    );
    assert_eq!((d.shards[0].first_seq, d.shards[0].last_seq), (None, None));
    assert_eq!(d.shards[0].hash_key_start, 0);
    assert_eq!(d.shards[2].hash_key_end, u128::MAX);
    block_on(engine.delete_stream("clicks")).unwrap();
    assert!(matches!(
        block_on(engine.describe_stream("clicks")),
        Err(EngineError::UnknownStream(_))
    ));
    assert!(matches!(
        block_on(engine.put_batch("clicks", 0, tagged_batch("k", 0, 1, 1))),
        Err(EngineError::UnknownStream(_))
    ));
    engine.shutdown();
}

#[test]
fn put_record_routes_by_md5_and_wrong_shard_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(test_config(dir.path())).unwrap();
    block_on(engine.create_stream("s", off(4))).unwrap();
    for i in 0..40 {
        let key = format!("device-{i}");
        let out = block_on(engine.put_record("s", key.as_bytes(), b"x", None)).unwrap();
        let expected_shard = (hash_key(key.as_bytes()) >> 126) as u32;
        assert_eq!(out.shard_id, expected_shard, "{key}");
    }
    // The engine checks every record's hash key against the shard it was sent to.
    let key = "device-0";
    let right = (hash_key(key.as_bytes()) >> 126) as u32;
    let wrong = (right + 1) % 4;
    let err = block_on(engine.put_batch("s", wrong, tagged_batch(key, 0, 1, 10))).unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::InvalidBatch(BatchError::WrongShard { index: 0 })
        ),
        "{err}"
    );
    // Explicit hash keys route and are checked the same way.
    let out = block_on(engine.put_record("s", b"any", b"y", Some(u128::MAX))).unwrap();
    assert_eq!(out.shard_id, 3);
    engine.shutdown();
}

#[test]
fn malformed_batches_get_typed_errors_and_harm_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(test_config(dir.path())).unwrap();
    block_on(engine.create_stream(
        "s",
        StreamOptions {
            max_record_data_bytes: 1000,
            ..off(1)
        },
    ))
    .unwrap();
    block_on(engine.put_batch("s", 0, tagged_batch("k", 1, 2, 10))).unwrap();
    let mut bad = tagged_batch("k", 2, 2, 10);
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(matches!(
        block_on(engine.put_batch("s", 0, bad)),
        Err(EngineError::InvalidBatch(BatchError::RecordsCrc))
    ));
    assert!(matches!(
        block_on(engine.put_batch("s", 0, vec![1, 2, 3])),
        Err(EngineError::InvalidBatch(_))
    ));
    let big = tagged_batch("k", 3, 1, 1001);
    assert!(matches!(
        block_on(engine.put_batch("s", 0, big)),
        Err(EngineError::InvalidBatch(BatchError::RecordTooLarge { .. }))
    ));
    assert!(matches!(
        block_on(engine.put_batch("s", 9, tagged_batch("k", 0, 1, 1))),
        Err(EngineError::UnknownShard { .. })
    ));
    // The good data is intact and the shard still takes writes.
    assert_eq!(read_all(&engine, "s", 0, 0).len(), 2);
    assert_eq!(
        block_on(engine.put_batch("s", 0, tagged_batch("k", 4, 1, 10)))
            .unwrap()
            .base_seq,
        2
    );
    engine.shutdown();
}

#[test]
fn one_mib_records_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(test_config(dir.path())).unwrap();
    block_on(engine.create_stream("big", off(1))).unwrap();
    for tag in 0..12 {
        let mut b = BatchBuilder::new();
        let data = vec![tag as u8; 1 << 20];
        b.push(b"k", &data, None).unwrap();
        block_on(engine.put_batch("big", 0, b.finish())).unwrap();
    }
    let got = read_all(&engine, "big", 0, 0);
    assert_eq!(got.len(), 12);
    for (i, (_, _, data)) in got.iter().enumerate() {
        assert_eq!(data.len(), 1 << 20);
        assert!(data.iter().all(|&b| b == i as u8));
    }
    engine.shutdown();
}

#[test]
fn every_iterator_position() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_700_000_000_000);
    let engine =
        Engine::start_with_clock(test_config(dir.path()), Arc::new(clock.clone())).unwrap();
    block_on(engine.create_stream("s", off(1))).unwrap();
    let mut ts = Vec::new();
    for tag in 0..20u64 {
        let out = block_on(engine.put_batch("s", 0, tagged_batch("k", tag, 5, 50))).unwrap();
        ts.push((out.ts_ms, out.base_seq));
        clock.advance(100);
    }
    let pos = |p| block_on(engine.position("s", 0, p));
    assert_eq!(pos(IteratorPosition::TrimHorizon).unwrap(), 0);
    assert_eq!(pos(IteratorPosition::Latest).unwrap(), 100);
    assert_eq!(
        pos(IteratorPosition::AtSequenceNumber { seq: 42 }).unwrap(),
        42
    );
    assert_eq!(
        pos(IteratorPosition::AfterSequenceNumber { seq: 42 }).unwrap(),
        43
    );
    // At the next sequence number: where LATEST stands; past it, or after it: refused.
    assert_eq!(
        pos(IteratorPosition::AtSequenceNumber { seq: 100 }).unwrap(),
        100
    );
    for past in [
        IteratorPosition::AtSequenceNumber { seq: 101 },
        IteratorPosition::AfterSequenceNumber { seq: 100 },
    ] {
        assert!(matches!(pos(past), Err(EngineError::InvalidArgument(_))));
    }
    for &(t, seq) in ts.iter().step_by(3) {
        assert_eq!(
            pos(IteratorPosition::AtTimestamp { ts_ms: t }).unwrap(),
            seq
        );
        assert_eq!(
            pos(IteratorPosition::AtTimestamp { ts_ms: t - 50 }).unwrap(),
            seq
        );
    }
    assert_eq!(pos(IteratorPosition::AtTimestamp { ts_ms: 0 }).unwrap(), 0);
    // Now is the tip; a time after now is refused, as Kinesis does (a reader positioned at
    // the tip would be handed records from before its time).
    assert_eq!(
        pos(IteratorPosition::AtTimestamp {
            ts_ms: clock.now_ms()
        })
        .unwrap(),
        100
    );
    // A second's grace for clocks a little ahead: still the tip.
    assert_eq!(
        pos(IteratorPosition::AtTimestamp {
            ts_ms: clock.now_ms() + 1000
        })
        .unwrap(),
        100
    );
    for future in [clock.now_ms() + 1001, i64::MAX] {
        let e = pos(IteratorPosition::AtTimestamp { ts_ms: future }).unwrap_err();
        assert!(
            matches!(&e, EngineError::InvalidArgument(m) if m.contains("in the future")),
            "{e}"
        );
    }
    // Reading from the middle of a batch yields exactly the records asked for.
    let r = block_on(engine.read(
        "s",
        0,
        ReadRequest {
            from_seq: 42,
            max_records: 6,
            max_bytes: 1 << 20,
            wait_ms: 0,
        },
    ))
    .unwrap();
    let got: Vec<u64> = records(&r.bytes, r.start_seq, r.end_seq)
        .iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(got, (42..48).collect::<Vec<_>>());
    engine.shutdown();
}

#[test]
fn long_poll_wakes_on_new_data() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(test_config(dir.path())).unwrap();
    block_on(engine.create_stream("s", off(1))).unwrap();
    let reader = {
        let engine = engine.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let req = ReadRequest {
                from_seq: 0,
                max_records: 10,
                max_bytes: 1 << 20,
                wait_ms: 60_000,
            };
            let r = block_on(engine.read("s", 0, req)).unwrap();
            (r.batch_count, started.elapsed())
        })
    };
    // Write until the reader returns: it must return because of the write, long before
    // its 60 s timeout.
    while !reader.is_finished() {
        block_on(engine.put_batch("s", 0, tagged_batch("k", 0, 1, 10))).unwrap();
        std::thread::yield_now();
    }
    let (batches, waited) = reader.join().unwrap();
    assert!(batches >= 1);
    assert!(
        waited < Duration::from_secs(30),
        "long-poll did not wake: {waited:?}"
    );
    // A long-poll with nothing new returns empty after its wait.
    let req = ReadRequest {
        from_seq: 1_000_000,
        max_records: 10,
        max_bytes: 1 << 20,
        wait_ms: 50,
    };
    let r = block_on(engine.read("s", 0, req)).unwrap();
    assert_eq!(r.batch_count, 0);
    engine.shutdown();
}

#[test]
fn kinesis_limits_throttle_a_prefix_and_never_drop() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_700_000_000_000);
    let engine =
        Engine::start_with_clock(test_config(dir.path()), Arc::new(clock.clone())).unwrap();
    block_on(engine.create_stream("limited", StreamOptions::new(1))).unwrap();
    // 3 batches of 500 records within the same millisecond: 1,000 records fit the bucket.
    let mut accepted = 0;
    let mut throttled = 0;
    for tag in 0..3 {
        match block_on(engine.put_batch("limited", 0, tagged_batch("k", tag, 500, 10))) {
            Ok(out) => {
                accepted += out.accepted;
                if out.accepted < out.record_count {
                    throttled += out.record_count - out.accepted;
                    assert!(out.retry_after_ms.unwrap() >= 1);
                }
            }
            Err(EngineError::Throttled { retry_after_ms }) => {
                assert!(retry_after_ms >= 1);
                throttled += 500;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((accepted, throttled), (1000, 500));
    // Everything accepted is stored, in order, with dense sequence numbers.
    let got = read_all(&engine, "limited", 0, 0);
    assert_eq!(got.len(), 1000);
    assert!(got.iter().enumerate().all(|(i, r)| r.0 == i as u64));
    // Half a second later, half the allowance is back.
    clock.advance(500);
    let out = block_on(engine.put_batch("limited", 0, tagged_batch("k", 9, 500, 10))).unwrap();
    assert_eq!(out.accepted, 500);
    assert!(matches!(
        block_on(engine.put_batch("limited", 0, tagged_batch("k", 10, 1, 10))),
        Err(EngineError::Throttled { .. })
    ));
    engine.shutdown();
}

/// A read is charged to the shard's 2 MiB/s the records' keys and data it delivers, as
/// Kinesis does, not the whole stored batch around them (at least a quarter of it, 240 KB
/// here): reading one record at a time out of a 960 KB batch was charged 960 KB a call and
/// throttled at the third.
#[test]
fn reads_are_charged_the_records_they_deliver() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_700_000_000_000);
    let engine =
        Engine::start_with_clock(test_config(dir.path()), Arc::new(clock.clone())).unwrap();
    block_on(engine.create_stream("wide", StreamOptions::new(1))).unwrap();
    let out = block_on(engine.put_batch("wide", 0, tagged_batch("k", 1, 400, 2400))).unwrap();
    assert_eq!(out.accepted, 400);
    // Five calls (Kinesis' 5 a second) of one record each, the clock standing still.
    for seq in [399, 0, 200, 398, 1] {
        let req = ReadRequest {
            from_seq: seq,
            max_records: 1,
            max_bytes: 1 << 20,
            wait_ms: 0,
        };
        let r = block_on(engine.read("wide", 0, req))
            .unwrap_or_else(|e| panic!("one record at {seq}: {e}"));
        assert_eq!((r.start_seq, r.end_seq), (seq, seq + 1));
        assert_eq!(r.record_bytes, 1 + 2400);
        let got = records(&r.bytes, r.start_seq, r.end_seq);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, seq);
    }
    // The sixth call in the same millisecond is past the calls allowance.
    let req = ReadRequest {
        from_seq: 0,
        max_records: 1,
        max_bytes: 1 << 20,
        wait_ms: 0,
    };
    assert!(matches!(
        block_on(engine.read("wide", 0, req)),
        Err(EngineError::ReadThrottled { .. })
    ));
    // Custom limits do not count calls: one-record reads are still bounded, by the quarter
    // of each 960 KB batch sent (charged only 2.4 KB each, they never ran out).
    let custom = StreamOptions {
        limits: Limits::Custom {
            write_bytes_per_s: 1 << 20,
            write_records_per_s: 1000,
            read_bytes_per_s: 2 << 20,
        },
        ..StreamOptions::new(1)
    };
    block_on(engine.create_stream("calls", custom)).unwrap();
    block_on(engine.put_batch("calls", 0, tagged_batch("k", 1, 400, 2400))).unwrap();
    let refused_at = (0..20).find(|_| {
        let req = ReadRequest {
            from_seq: 7,
            max_records: 1,
            max_bytes: 1 << 20,
            wait_ms: 0,
        };
        block_on(engine.read("calls", 0, req)).is_err()
    });
    assert!(
        matches!(refused_at, Some(8..=10)),
        "refused at call {refused_at:?}"
    );
    engine.shutdown();
}

/// Retention reaches shards no longer written: an idle open shard's records past the
/// window are not served (its only extent is the one appended to, never freed), a closed
/// parent whose records all expired leaves the stream, and after a restart the same holds
/// from the first request on.
#[test]
fn retention_reaches_idle_shards_and_closed_parents() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_700_000_000_000);
    let cfg = spate_engine::config::EngineConfig {
        retention_check_interval_ms: 10,
        ..test_config(dir.path())
    };
    let start = || Engine::start_with_clock(cfg.clone(), Arc::new(clock.clone())).unwrap();
    let engine = start();
    let opts = StreamOptions {
        retention_hours: 1,
        ..off(2)
    };
    block_on(engine.create_stream("old", opts)).unwrap();
    for shard in 0..2 {
        let key = key_for_shard(shard, 2);
        block_on(engine.put_batch("old", shard, tagged_batch(&key, 1, 5, 10))).unwrap();
    }
    block_on(engine.split_shard("old", 0, 1 << 64)).unwrap();
    let idle_key = key_for_shard(1, 2);
    // Two hours on: shard 1's records are past the window, shard 0 (closed) is all expired.
    clock.advance(2 * 3_600_000);
    let describe = |engine: &Engine| block_on(engine.describe_stream("old")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let d = describe(&engine);
        let parent_gone = d.shards.iter().all(|s| s.shard_id != 0);
        let idle = d.shards.iter().find(|s| s.shard_id == 1).unwrap();
        if parent_gone && idle.first_seq.is_none() {
            break;
        }
        assert!(Instant::now() < deadline, "{d:?}");
        std::thread::yield_now();
    }
    assert!(read_all(&engine, "old", 1, 0).is_empty());
    assert_eq!(
        block_on(engine.position("old", 1, IteratorPosition::TrimHorizon)).unwrap(),
        5
    );
    // Written again: the new records are served, numbered on.
    let out = block_on(engine.put_batch("old", 1, tagged_batch(&idle_key, 2, 3, 10))).unwrap();
    assert_eq!(out.base_seq, 5);
    assert_eq!(read_all(&engine, "old", 1, 0).len(), 3);
    engine.shutdown();
    let engine = start();
    let got = read_all(&engine, "old", 1, 0);
    assert_eq!(got.iter().map(|r| r.0).collect::<Vec<_>>(), [5, 6, 7]);
    engine.shutdown();
}

#[test]
fn retention_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_700_000_000_000);
    let engine =
        Engine::start_with_clock(test_config(dir.path()), Arc::new(clock.clone())).unwrap();
    block_on(engine.create_stream(
        "r",
        StreamOptions {
            retention_hours: 1,
            ..off(2)
        },
    ))
    .unwrap();
    let k = key_for_shard(0, 2);
    // Old data: each batch lands in its own segment because segments roll by age (1 s).
    for tag in 0..5 {
        block_on(engine.put_batch("r", 0, tagged_batch(&k, tag, 3, 100))).unwrap();
        clock.advance(2000);
    }
    clock.advance(3_600_000);
    for tag in 5..8 {
        block_on(engine.put_batch("r", 0, tagged_batch(&k, tag, 3, 100))).unwrap();
    }
    let removed = block_on(engine.run_retention()).unwrap();
    assert_eq!(removed, 5, "the five old segments go, the new one stays");
    let got = read_all(&engine, "r", 0, 0);
    assert_eq!(got.first().map(|r| r.0), Some(15));
    assert_eq!(got.len(), 9);
    let d = block_on(engine.describe_stream("r")).unwrap();
    assert_eq!(
        (d.shards[0].first_seq, d.shards[0].last_seq),
        (Some(15), Some(23))
    );
    let placement: Vec<u32> = d.shards.iter().map(|s| s.core).collect();
    block_on(engine.set_retention("r", 48)).unwrap();
    engine.shutdown();
    drop(engine);
    // Restart: catalog, placement, retention and data are all back.
    let engine =
        Engine::start_with_clock(test_config(dir.path()), Arc::new(clock.clone())).unwrap();
    let d = block_on(engine.describe_stream("r")).unwrap();
    assert_eq!(d.retention_hours, 48);
    assert_eq!(
        d.shards.iter().map(|s| s.core).collect::<Vec<_>>(),
        placement
    );
    assert_eq!(
        (d.shards[0].first_seq, d.shards[0].last_seq),
        (Some(15), Some(23))
    );
    assert_eq!(read_all(&engine, "r", 0, 0), got);
    assert_eq!(
        block_on(engine.put_batch("r", 0, tagged_batch(&k, 99, 1, 1)))
            .unwrap()
            .base_seq,
        24
    );
    assert!(matches!(
        block_on(engine.set_retention("r", 0)),
        Err(EngineError::InvalidArgument(_))
    ));
    assert!(matches!(
        block_on(engine.set_retention("r", 8761)),
        Err(EngineError::InvalidArgument(_))
    ));
    engine.shutdown();
}

/// A second engine on a data directory in use refuses to start, naming the holder (two
/// would write the same journals and volumes and lose acknowledged records); once the
/// first has shut down, the directory is free.
#[test]
fn a_data_dir_serves_one_engine_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let first = Engine::start(test_config(dir.path())).unwrap();
    block_on(first.create_stream("s", off(1))).unwrap();
    // Nothing but the engine's own files: the direct-I/O probe files are gone once open.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
    assert!(names.iter().any(|n| n == "LOCK"), "{names:?}");
    let e = Engine::start(test_config(dir.path())).unwrap_err();
    let why = e.to_string();
    assert!(
        why.contains("is in use by another Spate engine")
            && why.contains(&format!("(pid {})", std::process::id())),
        "{why}"
    );
    // The refused start touched nothing: the first engine still serves its stream.
    block_on(first.put_batch("s", 0, tagged_batch("k", 1, 3, 10))).unwrap();
    first.shutdown();
    let second = Engine::start(test_config(dir.path())).unwrap();
    assert_eq!(read_all(&second, "s", 0, 0).len(), 3);
    second.shutdown();
}

/// A data directory path that names a file is refused in words (the OS said only "File
/// exists").
#[test]
fn a_data_dir_that_is_a_file_is_refused_in_words() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data");
    std::fs::write(&file, b"x").unwrap();
    let why = Engine::start(test_config(&file)).unwrap_err().to_string();
    assert!(
        why.contains("cannot create data dir") && why.contains("is not a directory"),
        "{why}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
}
