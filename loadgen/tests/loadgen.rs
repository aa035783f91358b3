//! The load generator against a real server in-process (port 0, temp dir, small files):
//! a short open-loop run with consumers and --verify (polling, push and consumer-group
//! consumers), and a throttled run; and the `spate-loadgen` binary itself against the same
//! kind of server (its stdout table, `--json` and `--plot` files).

use spate_engine::config::EngineConfig;
use spate_engine::server::Server;
use spate_loadgen::{
    run_blocking, Api, ConsumerMode, KeyMode, LimitsArg, RunConfig, SizeSpec, TlsConfig,
};

struct Env {
    server: Option<Server>,
    _dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(EngineConfig {
            listen: "127.0.0.1:0".into(),
            ..EngineConfig::small(dir.path())
        })
        .expect("server starts");
        Env {
            server: Some(server),
            _dir: dir,
        }
    }

    fn config(&self, stream: &str) -> RunConfig {
        let addr = self.server.as_ref().unwrap().local_addr().to_string();
        RunConfig::new(addr, stream)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown();
        }
    }
}

#[test]
fn open_loop_run_with_consumers_verifies_clean() {
    let env = Env::new();
    let cfg = RunConfig {
        create_shards: Some(3),
        limits: LimitsArg::Off,
        producers: 2,
        rate: 2000.0,
        size: SizeSpec::parse("100-300").unwrap(),
        keys: 50,
        duration_s: 1.0,
        consumers: 2,
        verify: true,
        read_wait_ms: 200,
        spin_us: 0,
        ..env.config("lg-open")
    };
    let r = run_blocking(&cfg).expect("run succeeds");
    eprintln!("{}", r.summary_line());
    assert_eq!(r.failure(), None, "{}", r.summary_line());
    assert_eq!((r.errors, r.records_throttled), (0, 0));
    assert_eq!(r.shards, 3);
    // Every record due was either sent (and then acknowledged) or, on a machine too busy
    // to keep up, counted as unsent; nothing in between.
    assert_eq!(r.records_due, Some(2000));
    assert_eq!(r.records_sent + r.records_unsent, 2000);
    assert_eq!(r.records_acked, r.records_sent);
    assert!(r.records_acked > 0);
    assert!(r.bytes_acked >= 100 * r.records_acked);
    assert_eq!(r.ack_latency_us.count, r.records_acked);
    assert!(
        r.ack_latency_us.p50 <= r.ack_latency_us.p99
            && r.ack_latency_us.p99 <= r.ack_latency_us.max
    );
    // Each consumer group saw every record once.
    let e2e = r.e2e_latency_us.expect("consumers report e2e latency");
    assert_eq!(e2e.count, 2 * r.records_acked);
    assert_eq!(r.consumers.len(), 2);
    for c in &r.consumers {
        assert_eq!(
            (c.records, c.bytes, c.errors),
            (r.records_acked, r.bytes_acked, 0)
        );
    }
    let v = r.verify.expect("verify ran");
    assert_eq!((v.lost, v.duplicated, v.reordered, v.corrupt), (0, 0, 0, 0));
    assert_eq!(
        (v.acked, v.records_read),
        (r.records_acked, r.records_acked)
    );
    // The JSON holds every field SPEC §5 names.
    let json = serde_json::to_value(&r).unwrap();
    for f in [
        "records_acked",
        "records_throttled",
        "errors",
        "bytes_acked",
        "duration_s",
        "acked_records_per_s",
        "acked_mib_per_s",
    ] {
        assert!(json[f].is_number(), "{f}");
    }
    for f in ["lost", "duplicated", "reordered"] {
        assert_eq!(json["verify"][f], 0, "{f}");
    }
}

/// Polling consumers at the tip under Kinesis' read limit (5 reads a second a shard) are
/// refused reads all the time: each is waited out as the server's hint says and counted as
/// throttled, not as a failed read, and the run (every record read) succeeds.
#[test]
fn polling_consumers_wait_out_the_read_limit_and_the_run_succeeds() {
    let env = Env::new();
    let cfg = RunConfig {
        create_shards: Some(2),
        limits: LimitsArg::Kinesis,
        producers: 1,
        rate: 200.0,
        size: SizeSpec::parse("100").unwrap(),
        keys: 50,
        duration_s: 2.0,
        consumers: 1,
        verify: true,
        read_wait_ms: 200,
        spin_us: 0,
        ..env.config("lg-read-limit")
    };
    let r = run_blocking(&cfg).expect("run succeeds");
    eprintln!("{}", r.summary_line());
    assert_eq!(r.failure(), None, "{}", r.summary_line());
    let c = &r.consumers[0];
    assert_eq!((c.records, c.errors), (r.records_acked, 0));
    // A record every 10 ms a shard, each ending a long-poll: over 5 reads a second.
    assert!(c.throttled > 0, "no read was throttled: {c:?}");
    assert_eq!(r.consumer_reads_throttled, Some(c.throttled));
    let v = r.verify.expect("verify ran");
    assert_eq!((v.lost, v.duplicated, v.reordered, v.corrupt), (0, 0, 0, 0));
}

/// The consumer keys every mode's JSON report holds.
fn assert_consumer_keys(r: &spate_loadgen::Report, mode: &str, consumers: usize) {
    let json = serde_json::to_value(r).unwrap();
    assert_eq!(json["consumer_mode"], mode);
    for f in [
        "consumed_records",
        "consumed_records_per_s",
        "consumed_mib_per_s",
        "redelivered",
    ] {
        assert!(json[f].is_number(), "{f} in {json}");
    }
    let per = json["per_consumer_records_per_s"].as_array().unwrap();
    assert_eq!(per.len(), consumers);
    for p in ["p50", "p90", "p99", "p999", "p9999", "max"] {
        assert!(json["e2e_latency_us"][p].is_u64(), "e2e_latency_us.{p}");
    }
    for f in ["lost", "duplicated", "reordered"] {
        assert_eq!(json["verify"][f], 0, "{f}");
    }
}

/// Runs `f` on a small runtime (the tests' own client calls).
fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// A run whose push consumers cannot all be registered (the stream's 20-consumer quota)
/// fails, and takes back the ones it registered: nothing is left to refuse the next.
#[test]
fn a_push_setup_that_fails_half_way_deregisters_what_it_registered() {
    let env = Env::new();
    let cfg = RunConfig {
        create_shards: Some(1),
        limits: LimitsArg::Off,
        producers: 1,
        rate: 100.0,
        keys: 10,
        duration_s: 0.5,
        consumers: 21,
        consumer_mode: ConsumerMode::Push,
        spin_us: 0,
        ..env.config("lg-push-quota")
    };
    let e = run_blocking(&cfg).expect_err("21 consumers are over the quota");
    assert!(
        e.to_string()
            .contains("cannot register consumer loadgen-20"),
        "{e}"
    );
    let left = block_on(async {
        let client = spate_client::Client::connect(cfg.server.clone())
            .await
            .unwrap();
        client.list_consumers("lg-push-quota").await.unwrap()
    });
    assert!(left.is_empty(), "{left:?}");
}

/// A stream deleted under a run: the producers' failures are reported (the report is
/// written, naming the first error), and the run says what it could not do after.
#[test]
fn a_stream_deleted_during_the_run_still_gets_its_report() {
    let env = Env::new();
    let cfg = RunConfig {
        create_shards: Some(1),
        limits: LimitsArg::Off,
        producers: 1,
        rate: 500.0,
        keys: 10,
        duration_s: 2.0,
        warmup_s: 0.0,
        verify: true,
        spin_us: 0,
        ..env.config("lg-deleted")
    };
    let server = cfg.server.clone();
    // Deletes the stream once the run has stored some records in it.
    let deleter = std::thread::spawn(move || {
        block_on(async {
            let c = spate_client::Client::connect(server).await.unwrap();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            loop {
                if let Ok(info) = c.describe_stream("lg-deleted").await {
                    if info.shards.iter().any(|s| s.records >= 50) {
                        break;
                    }
                }
                assert!(std::time::Instant::now() < deadline, "no records stored");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            c.delete_stream("lg-deleted").await.unwrap();
        })
    });
    let r = run_blocking(&cfg).expect("a report, not an error");
    deleter.join().unwrap();
    assert!(r.records_acked >= 50, "{}", r.summary_line());
    assert!(r.errors > 0, "{}", r.summary_line());
    assert!(
        r.incomplete
            .as_deref()
            .unwrap_or("")
            .contains("nothing read back"),
        "{:?}",
        r.incomplete
    );
    assert!(r.verify.is_none());
    assert!(r.failure().is_some());
}

#[test]
fn push_consumers_each_read_every_record_once() {
    let env = Env::new();
    let cfg = RunConfig {
        create_shards: Some(3),
        limits: LimitsArg::Off,
        producers: 2,
        rate: 1000.0,
        size: SizeSpec::fixed(200),
        keys: 50,
        duration_s: 1.0,
        consumers: 2,
        consumer_mode: ConsumerMode::Push,
        verify: true,
        spin_us: 0,
        ..env.config("lg-push")
    };
    let r = run_blocking(&cfg).expect("run succeeds");
    eprintln!("{}", r.summary_line());
    assert_eq!(r.failure(), None, "{}", r.summary_line());
    assert!(r.records_acked > 0);
    assert_eq!(r.records_acked, r.records_sent);
    assert_eq!(r.consumer_mode, Some(ConsumerMode::Push));
    // Each registered consumer had every record pushed to it, once.
    assert_eq!(r.consumers.len(), 2);
    for c in &r.consumers {
        assert_eq!(
            c.name.as_deref(),
            Some(format!("loadgen-{}", c.id).as_str())
        );
        assert_eq!(
            (c.records, c.bytes, c.redelivered, c.errors),
            (r.records_acked, r.bytes_acked, 0, 0)
        );
    }
    assert_eq!(r.consumed_records, Some(2 * r.records_acked));
    assert_eq!(r.redelivered, Some(0));
    assert_eq!(r.e2e_latency_us.unwrap().count, 2 * r.records_acked);
    assert_consumer_keys(&r, "push", 2);
    // The run deregistered its consumers.
    let left = block_on(async {
        let client = spate_client::Client::connect(cfg.server.clone())
            .await
            .unwrap();
        client.list_consumers("lg-push").await.unwrap()
    });
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_consumer_group_reads_every_record_once() {
    let env = Env::new();
    let cfg = RunConfig {
        create_shards: Some(4),
        limits: LimitsArg::Off,
        producers: 2,
        rate: 1000.0,
        size: SizeSpec::fixed(200),
        keys: 50,
        duration_s: 1.0,
        consumers: 2,
        consumer_mode: ConsumerMode::Group,
        verify: true,
        read_wait_ms: 200,
        spin_us: 0,
        ..env.config("lg-group")
    };
    let r = run_blocking(&cfg).expect("run succeeds");
    eprintln!("{}", r.summary_line());
    assert_eq!(r.failure(), None, "{}", r.summary_line());
    assert!(r.records_acked > 0);
    assert_eq!(r.records_acked, r.records_sent);
    assert_eq!(r.consumer_mode, Some(ConsumerMode::Group));
    // The workers shared the shards: every record counted once over both.
    assert_eq!(r.consumed_records, Some(r.records_acked));
    assert_eq!(
        r.consumers.iter().map(|c| c.records).sum::<u64>(),
        r.records_acked
    );
    assert_eq!(r.e2e_latency_us.unwrap().count, r.records_acked);
    let g = r.group.as_ref().expect("a group report");
    assert_eq!(g.missed, Some(0), "{g:?}");
    assert!(g.checkpoints > 0 && g.failover.is_none(), "{g:?}");
    assert_eq!(r.consumers.iter().map(|c| c.errors).sum::<u64>(), 0);
    assert_consumer_keys(&r, "group", 2);
    // The run deleted its group.
    let groups = block_on(async {
        let client = spate_client::Client::connect(cfg.server.clone())
            .await
            .unwrap();
        client.list_groups("lg-group").await.unwrap()
    });
    assert!(groups.is_empty(), "{groups:?}");
}

/// A closed-loop `put_records` run on 2 shards: every record sent is acknowledged once and
/// reads back in key order. Returns the records acknowledged.
fn closed_put_records_verifies_clean(
    env: &Env,
    stream: &str,
    call_records: usize,
    calls_in_flight: usize,
    keys: u32,
) -> u64 {
    let cfg = RunConfig {
        create_shards: Some(2),
        limits: LimitsArg::Off,
        delete_after: true,
        producers: 2,
        rate: 0.0,
        api: Api::PutRecords,
        call_records,
        calls_in_flight,
        size: SizeSpec::fixed(128),
        keys,
        duration_s: 0.5,
        verify: true,
        ..env.config(stream)
    };
    let r = run_blocking(&cfg).expect("run succeeds");
    eprintln!("{}", r.summary_line());
    assert_eq!(r.failure(), None, "{}", r.summary_line());
    assert_eq!(r.records_due, None, "closed loop has no schedule");
    assert_eq!((r.records_unsent, r.errors, r.records_throttled), (0, 0, 0));
    assert_eq!(r.records_acked, r.records_sent);
    let v = r.verify.expect("verify ran");
    assert!(v.passed(), "{v:?}");
    assert_eq!(v.records_read, v.acked);
    r.records_acked
}

#[test]
fn closed_loop_put_records_run_verifies_clean() {
    let env = Env::new();
    assert!(closed_put_records_verifies_clean(&env, "lg-closed", 300, 1, 1000) > 0);
}

/// `--calls-in-flight 4`: each producer keeps four `put_records` calls out at once on its
/// connection (closed loop, so they always overlap); every record is acknowledged once and
/// reads back in key order (the engine stages one connection's calls in arrival order).
#[test]
fn pipelined_put_records_keep_key_order() {
    let env = Env::new();
    let acked = closed_put_records_verifies_clean(&env, "lg-pipelined", 50, 4, 8);
    assert!(acked > 1000, "{acked} records acknowledged");
}

/// `--api producer-callback`: `Producer::send_with`, each record settled by its callback,
/// closed loop on 3 shards with Kinesis limits (throttled batches are retried by the
/// producer until its attempts run out): every record sent is acknowledged or throttled,
/// and every acknowledged one reads back once, in key order.
#[test]
fn producer_callback_run_verifies_clean() {
    let env = Env::new();
    let cfg = RunConfig {
        create_shards: Some(3),
        limits: LimitsArg::Kinesis,
        delete_after: true,
        producers: 2,
        rate: 0.0,
        api: Api::ProducerCallback,
        size: SizeSpec::fixed(128),
        keys: 300,
        duration_s: 0.5,
        verify: true,
        ..env.config("lg-callback")
    };
    let r = run_blocking(&cfg).expect("run succeeds");
    eprintln!("{}", r.summary_line());
    assert_eq!(r.failure(), None, "{}", r.summary_line());
    assert_eq!((r.records_unsent, r.errors), (0, 0), "{}", r.summary_line());
    assert_eq!(r.records_acked + r.records_throttled, r.records_sent);
    assert!(r.records_acked > 0);
    let v = r.verify.expect("verify ran");
    assert!(v.passed(), "{v:?}");
    assert_eq!(v.records_read, v.acked);
}

/// Half a second of closed-loop `--api put-batches` from 2 producers on a fresh 3-shard
/// stream of `stream`, limits off, 200 B records, deleted after.
fn closed_put_batches(env: &Env, stream: &str) -> RunConfig {
    RunConfig {
        create_shards: Some(3),
        limits: LimitsArg::Off,
        delete_after: true,
        producers: 2,
        rate: 0.0,
        api: Api::PutBatches,
        size: SizeSpec::fixed(200),
        duration_s: 0.5,
        ..env.config(stream)
    }
}

/// `--api put-batches`: records generated into their shard's batch, closed loop with calls
/// larger than a batch holds (600 > 500 records: a call ends at a full batch and the record
/// that did not fit opens the next one), then open loop with Kinesis limits (throttled
/// suffixes are counted, never retried): every acknowledged record reads back, in order.
#[test]
fn put_batches_runs_verify_clean() {
    let env = Env::new();
    let closed = RunConfig {
        call_records: 600,
        // One key each: all of a producer's records go to one shard.
        keys: 2,
        verify: true,
        ..closed_put_batches(&env, "lg-batches")
    };
    let r = run_blocking(&closed).expect("run succeeds");
    eprintln!("{}", r.summary_line());
    assert_eq!(r.failure(), None, "{}", r.summary_line());
    assert_eq!((r.records_unsent, r.errors, r.records_throttled), (0, 0, 0));
    assert_eq!(r.records_acked, r.records_sent);
    assert!(r.records_acked > 1000, "{}", r.summary_line());
    let v = r.verify.expect("verify ran");
    assert!(v.passed(), "{v:?}");
    assert_eq!(v.records_read, v.acked);

    let open = RunConfig {
        create_shards: Some(1),
        limits: LimitsArg::Kinesis,
        rate: 3000.0,
        keys: 20,
        key_mode: KeyMode::PerShard,
        duration_s: 1.0,
        spin_us: 0,
        ..env.config("lg-batches-open")
    };
    let open = RunConfig {
        api: Api::PutBatches,
        call_records: 100,
        delete_after: true,
        verify: true,
        size: SizeSpec::fixed(100),
        ..open
    };
    let r = run_blocking(&open).expect("run succeeds");
    eprintln!("{}", r.summary_line());
    assert_eq!(r.errors, 0, "{}", r.summary_line());
    assert!(
        r.records_throttled > 0,
        "3,000/s on a 1,000/s shard throttles"
    );
    assert_eq!(r.records_acked + r.records_throttled, r.records_sent);
    let v = r.verify.expect("verify ran");
    assert!(v.passed(), "{v:?}");
    assert_eq!(v.records_read, v.acked);
}

/// `--prebuilt-calls`: a few calls built at the start, sent over and over (more records are
/// acknowledged than were built), every one of them acknowledged.
#[test]
fn prebuilt_calls_are_sent_again_and_again() {
    let env = Env::new();
    let cfg = RunConfig {
        call_records: 300,
        prebuilt_calls: 2,
        keys: 30,
        ..closed_put_batches(&env, "lg-prebuilt")
    };
    let r = run_blocking(&cfg).expect("run succeeds");
    eprintln!("{}", r.summary_line());
    assert_eq!(r.failure(), None, "{}", r.summary_line());
    assert_eq!((r.records_unsent, r.errors, r.records_throttled), (0, 0, 0));
    assert_eq!(r.records_acked, r.records_sent);
    assert!(
        r.records_acked > 2 * 2 * 300,
        "the calls were sent again: {}",
        r.summary_line()
    );
    // Repeated records cannot be verified, nor followed by consumers.
    let refused = RunConfig {
        verify: true,
        ..cfg.clone()
    };
    assert!(refused.validate().unwrap_err().contains("--prebuilt-calls"));
}

#[test]
fn over_the_shard_limit_records_are_throttled_not_lost() {
    let env = Env::new();
    let cfg = RunConfig {
        create_shards: Some(1),
        limits: LimitsArg::Kinesis,
        delete_after: true,
        producers: 1,
        rate: 5000.0,
        size: SizeSpec::fixed(100),
        keys: 20,
        key_mode: KeyMode::PerShard,
        duration_s: 1.0,
        verify: true,
        spin_us: 0,
        ..env.config("lg-limit")
    };
    let r = run_blocking(&cfg).expect("run succeeds");
    eprintln!("{}", r.summary_line());
    assert_eq!(r.failure(), None, "{}", r.summary_line());
    assert_eq!(r.errors, 0);
    assert_eq!(r.records_acked + r.records_throttled, r.records_sent);
    // One second of burst plus one second of refill at 1,000 records/s admit at most
    // about 2,000 records; anything sent beyond that must have been throttled.
    if r.records_sent > 2500 {
        assert!(r.records_throttled > 0, "{}", r.summary_line());
    }
    let v = r.verify.expect("verify ran");
    assert!(v.passed(), "{v:?}");
    assert_eq!(
        v.records_read, r.records_acked,
        "throttled records are not stored"
    );
}

/// A closed loop against a shard's write limit waits out the server's retry hint after a
/// throttled call (it resent at once: ~150,000 refused records a second against one
/// Kinesis-limited shard, the engine busy refusing them), for both put APIs.
#[test]
fn a_closed_loop_waits_out_the_throttle_hint() {
    let env = Env::new();
    for (api, stream) in [
        (Api::PutRecords, "lg-hint-r"),
        (Api::PutBatches, "lg-hint-b"),
    ] {
        let cfg = RunConfig {
            create_shards: Some(1),
            limits: LimitsArg::Kinesis,
            delete_after: true,
            producers: 1,
            rate: 0.0,
            api,
            call_records: 100,
            size: SizeSpec::fixed(100),
            keys: 20,
            duration_s: 1.0,
            ..env.config(stream)
        };
        let r = run_blocking(&cfg).expect("run succeeds");
        eprintln!("{api:?}: {}", r.summary_line());
        assert_eq!(r.errors, 0);
        assert_eq!(r.records_acked + r.records_throttled, r.records_sent);
        // The burst and a second's refill admit about 2,000 records; a call comes back
        // throttled at most every hint (tens of ms), so at most 100 records each time.
        assert!(r.records_acked >= 500, "{}", r.summary_line());
        assert!(
            r.records_throttled < 10_000,
            "throttled calls were resent without waiting: {}",
            r.summary_line()
        );
    }
}

#[test]
fn reshards_during_a_run_verify_across_the_lineage() {
    use spate_loadgen::{ReshardOp, ReshardStep};
    let env = Env::new();
    let step = |at_s: f64, op| ReshardStep { at_s, op };
    let cfg = RunConfig {
        create_shards: Some(2),
        limits: LimitsArg::Off,
        delete_after: true,
        producers: 2,
        rate: 2000.0,
        size: SizeSpec::fixed(200),
        keys: 100,
        duration_s: 1.5,
        verify: true,
        spin_us: 0,
        reshards: vec![
            step(0.2, ReshardOp::Split { shard: 1 }),
            step(0.5, ReshardOp::Merge { shards: None }),
            step(0.8, ReshardOp::Count { target: 4 }),
            step(1.1, ReshardOp::Count { target: 2 }),
        ],
        ..env.config("lg-reshard")
    };
    let r = run_blocking(&cfg).expect("run succeeds");
    eprintln!("{}", r.summary_line());
    assert_eq!(r.failure(), None, "{}", r.summary_line());
    assert_eq!(r.shards, 2, "open at the start");
    let opened: Vec<(Vec<u32>, Option<u32>)> = r
        .reshards
        .iter()
        .map(|s| (s.new_shards.clone(), s.open_shards_after))
        .collect();
    assert_eq!(
        opened,
        [
            (vec![2, 3], Some(3)),
            (vec![4], Some(2)),
            (vec![5, 6, 7, 8], Some(4)),
            (vec![9, 10], Some(2)),
        ]
    );
    for s in &r.reshards {
        assert!(s.error.is_none() && s.took_ms > 0.0, "{s:?}");
        assert!(s.started_s >= s.step.at_s && s.window_s[0] < s.started_s);
        assert!(s.window_s[1] > s.started_s + 0.9, "{s:?}");
        assert!(s.ack_latency_us.count > 0, "{s:?}");
    }
    // Every acknowledged record is in a change window or in the steady state.
    let steady = r
        .ack_latency_steady_us
        .expect("steady state with --reshard");
    assert!(steady.count > 0);
    assert!(steady.count <= r.records_acked);
    // Read back from every shard, parents before children: all of them, once, in order.
    let v = r.verify.expect("verify ran");
    assert!(v.passed(), "{v:?}");
    assert_eq!(v.records_read, v.acked);
}

#[test]
fn every_bench_scenario_runs_tiny() {
    use spate_loadgen::bench::{run_and_write, BenchOptions, SCENARIOS};
    let env = Env::new();
    let out = tempfile::tempdir().unwrap();
    let addr = env.server.as_ref().unwrap().local_addr().to_string();
    let opts = BenchOptions {
        quick: true,
        ..BenchOptions::new(addr, out.path())
    };
    // In list order: latency-half takes its rate from max-1k.json.
    for s in SCENARIOS {
        let r = run_and_write(s.name, &opts).unwrap_or_else(|e| panic!("{}: {e}", s.name));
        assert_eq!(r.failure(), None, "{}", s.name);
        assert!(!r.runs.is_empty() && !r.figures.is_empty(), "{}", s.name);
        assert!(out.path().join(format!("{}.json", s.name)).exists());
    }
    spate_loadgen::summary::summarize_dir(out.path(), &out.path().join("RESULTS.md")).unwrap();
    let md = std::fs::read_to_string(out.path().join("RESULTS.md")).unwrap();
    assert!(md.contains("### `shard-density`"), "{md}");
    spate_loadgen::plot::plot_file(
        &out.path().join("fan-out.json"),
        &out.path().join("fan-out.svg"),
    )
    .unwrap();
}

/// Command lines that cannot run exit with status 2 and one line, before anything is
/// sent (no server listens on port 1): flags that do not go together, an unknown
/// scenario, a --json file that cannot be written.
#[test]
fn command_line_errors_exit_2_before_the_run() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_spate-loadgen"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let base = [
        "--server",
        "127.0.0.1:1",
        "--stream",
        "s",
        "--duration",
        "1",
    ];
    for (extra, says) in [
        (&["--producers", "0"][..], "invalid command line"),
        (
            &["--json", "/nonexistent/dir/r.json"][..],
            "cannot write --json",
        ),
        (
            &["--consumers", "1", "--crash-worker-at", "1"][..],
            "invalid command line",
        ),
    ] {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let (code, stderr) = run(&args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(says) && stderr.lines().count() == 1,
            "{stderr}"
        );
    }
    let (code, stderr) = run(&["bench", "nosuch", "--server", "127.0.0.1:1"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("no scenario \"nosuch\""), "{stderr}");
    // An --engine-pid that is no process (its report had no engine CPU, silently).
    let args: Vec<&str> = base
        .iter()
        .copied()
        .chain(["--engine-pid", "4294967294"])
        .collect();
    let (code, stderr) = run(&args);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("no process 4294967294"), "{stderr}");
    // A run that cannot be done is status 1.
    let (code, stderr) = run(&base);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        stderr.matches("cannot connect to 127.0.0.1:1").count(),
        1,
        "{stderr}"
    );
}

/// A child process killed if the test fails before it has let go of it.
struct KillOnDrop(Option<std::process::Child>);

impl KillOnDrop {
    fn take(mut self) -> std::process::Child {
        self.0.take().expect("taken once")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// SIGINT stops a run early as its end would: the producers stop, the report is written
/// (saying it was interrupted, and when), and the clean-up is done (the push consumers
/// deregistered, the stream deleted with --delete-after); the status says it is incomplete.
#[test]
fn an_interrupted_run_reports_and_cleans_up() {
    let env = Env::new();
    let addr = env.server.as_ref().unwrap().local_addr().to_string();
    let out = tempfile::tempdir().unwrap();
    let json = out.path().join("r.json");
    let child = KillOnDrop(Some(
        std::process::Command::new(env!("CARGO_BIN_EXE_spate-loadgen"))
            .args([
                "--server",
                &addr,
                "--stream",
                "lg-int",
                "--create-shards",
                "1",
                "--limits",
                "off",
                "--producers",
                "1",
                "--rate",
                "500",
                "--keys",
                "10",
                "--duration",
                "600",
                "--warmup",
                "0",
                "--consumers",
                "1",
                "--consumer-mode",
                "push",
                "--delete-after",
                "-q",
                "--json",
            ])
            .arg(&json)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    // Interrupted once the run has stored some records.
    block_on(async {
        let c = spate_client::Client::connect(addr.clone()).await.unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if let Ok(info) = c.describe_stream("lg-int").await {
                if info.shards.iter().any(|s| s.records >= 100) {
                    break;
                }
            }
            assert!(std::time::Instant::now() < deadline, "no records stored");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    });
    let child = child.take();
    // SAFETY: kill(2) on our child, not yet reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the run is incomplete: stopped by SIGINT at"),
        "{stderr}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(report["records_acked"].as_u64().unwrap() >= 100, "{report}");
    assert!(report["duration_s"].as_f64().unwrap() < 600.0, "{report}");
    let listed = block_on(async {
        let c = spate_client::Client::connect(addr.clone()).await.unwrap();
        c.list_streams().await.unwrap()
    });
    assert!(!listed.iter().any(|s| s == "lg-int"), "{listed:?}");
}

#[test]
fn the_binary_prints_a_table_and_writes_json_and_plot() {
    let env = Env::new();
    let out = tempfile::tempdir().unwrap();
    let (json, svg, svg_from_json) = (
        out.path().join("run.json"),
        out.path().join("run.svg"),
        out.path().join("from-json.svg"),
    );
    let addr = env.server.as_ref().unwrap().local_addr().to_string();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_spate-loadgen"))
        .args([
            "--server",
            &addr,
            "--stream",
            "lg-cli",
            "--create-shards",
            "2",
            "--limits",
            "off",
            "--delete-after",
            "--rate",
            "1000",
            "--size",
            "100",
            "--keys",
            "20",
            "--duration",
            "0.5",
            "--consumers",
            "1",
            "--read-wait-ms",
            "200",
            "--spin-us",
            "0",
            "--verify",
            "--quiet",
        ])
        .arg("--json")
        .arg(&json)
        .arg("--plot")
        .arg(&svg)
        .output()
        .expect("spate-loadgen runs");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        output.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    // The summary table is on stdout, nothing of it on stderr (-q: no progress either).
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("stream lg-cli: 2 shards, 0.5 s measured, open loop at 1000"),
        "{stdout}"
    );
    for start in [
        "records ",
        "  count ",
        "  per second ",
        "  MiB/s ",
        "latency (ms) ",
        "  ack ",
        "  end-to-end ",
        "verify ",
        "  passed ",
        "cpu (cores) ",
        "  used ",
    ] {
        assert!(
            lines.iter().any(|l| l.starts_with(start)),
            "no line starts with {start:?} in\n{stdout}"
        );
    }
    let header = lines
        .iter()
        .find(|l| l.starts_with("latency (ms)"))
        .unwrap();
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        ["latency", "(ms)", "p50", "p90", "p99", "p99.9", "p99.99", "max"]
    );
    let ack = lines.iter().find(|l| l.starts_with("  ack ")).unwrap();
    let ms: Vec<f64> = ack
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{v:?} in {ack:?}")))
        .collect();
    assert_eq!(ms.len(), 6, "{ack}");
    assert!(ms.windows(2).all(|w| w[0] <= w[1]), "{ack}");
    assert!(
        !stdout.contains('µ') && !stderr.contains("latency (ms)"),
        "{stderr}"
    );

    // The JSON report is written as before, and agrees with the table.
    let report: spate_loadgen::Report =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report.failure(), None);
    let count = lines.iter().find(|l| l.starts_with("  count ")).unwrap();
    assert_eq!(
        count.split_whitespace().nth(2),
        Some(report.records_acked.to_string().as_str()),
        "{stdout}"
    );
    assert_eq!(
        ms[2],
        report.ack_latency_us.p99 as f64 / 1000.0,
        "p99 in ms: {ack}"
    );

    // --plot drew the SVG the plot subcommand draws from the JSON.
    let drawn = std::fs::read_to_string(&svg).expect("--plot wrote the SVG");
    assert!(drawn.starts_with("<svg") && drawn.ends_with("</svg>\n"));
    assert_eq!(drawn.matches("<polyline").count(), 2, "ack and end-to-end");
    assert!(
        drawn.contains(
            ">lg-cli: 2 shards, 1 producer, 1000 records/s, 100 B, 0.5 s, 1 consumer group</text>"
        ),
        "{drawn}"
    );
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_spate-loadgen"))
        .arg("plot")
        .arg(&json)
        .arg(&svg_from_json)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(std::fs::read_to_string(&svg_from_json).unwrap(), drawn);
}

/// A server speaking TLS only, with a certificate for 127.0.0.1 signed by a CA made here;
/// answers the server and the CA file's path.
fn tls_env(dir: &std::path::Path) -> (Env, std::path::PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let path = |name: &str| dir.join(name);
    std::fs::write(path("ca.pem"), ca.pem()).unwrap();
    std::fs::write(path("server.pem"), cert.pem()).unwrap();
    std::fs::write(path("server-key.pem"), key.serialize_pem()).unwrap();
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(EngineConfig {
        listen: "127.0.0.1:0".into(),
        tls_cert_file: Some(path("server.pem")),
        tls_key_file: Some(path("server-key.pem")),
        plaintext: false,
        ..EngineConfig::small(data.path())
    })
    .expect("server starts");
    let env = Env {
        server: Some(server),
        _dir: data,
    };
    (env, path("ca.pem"))
}

#[test]
fn a_run_over_tls_with_push_consumers_verifies_clean() {
    let pki = tempfile::tempdir().unwrap();
    let (env, ca) = tls_env(pki.path());
    let cfg = RunConfig {
        create_shards: Some(2),
        limits: LimitsArg::Off,
        producers: 2,
        rate: 1000.0,
        size: SizeSpec::fixed(300),
        keys: 20,
        duration_s: 0.5,
        consumers: 1,
        consumer_mode: ConsumerMode::Push,
        verify: true,
        spin_us: 0,
        tls: Some(TlsConfig {
            ca: Some(ca.clone()),
        }),
        ..env.config("lg-tls")
    };
    assert!(cfg
        .command_line()
        .contains(&format!("--tls --ca {}", ca.display())));
    let r = run_blocking(&cfg).expect("run succeeds");
    eprintln!("{}", r.summary_line());
    assert_eq!(r.failure(), None, "{}", r.summary_line());
    assert!(r.records_acked > 0);
    assert_eq!(r.consumed_records, Some(r.records_acked));
    // Without TLS the same server refuses the run at its first connection.
    let plain = RunConfig {
        tls: None,
        ..cfg.clone()
    };
    let err = run_blocking(&plain).expect_err("plaintext is refused");
    assert!(err.to_string().contains("TLS"), "{err}");
    // The binary takes --tls --ca.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_spate-loadgen"))
        .args(["--server", &cfg.server, "--stream", "lg-tls-cli"])
        .args(["--create-shards", "1", "--limits", "off", "--delete-after"])
        .args(["--rate", "500", "--size", "100", "--duration", "0.3"])
        .args(["--spin-us", "0", "--verify", "--quiet", "--tls", "--ca"])
        .arg(&ca)
        .output()
        .expect("spate-loadgen runs");
    assert!(
        output.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
