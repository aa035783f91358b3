//! Resharding end to end against a real server (port 0, temp dir): splits, merges and
//! scales while a `Producer` and `put_records` write, each key's records in order across
//! the lineage and every acknowledged record exactly once; the typed error a closed shard
//! answers; a closed shard's end naming its children; the shape surviving a restart.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use spate_client::{
    Client, Entry, ErrorCode, Limits, Position, ProducerConfig, ReadOptions, ShardState,
    StreamConfig,
};
use spate_engine::config::EngineConfig;
use spate_engine::server::Server;
use spate_tests::{runtime, test_config};

fn start(dir: &std::path::Path) -> Server {
    Server::start(EngineConfig {
        listen: "127.0.0.1:0".into(),
        ..test_config(dir)
    })
    .expect("server starts")
}

/// Every record of the stream, shard by shard in id order (a child's id is always above
/// its parents', so this is lineage order): (shard, seq, data).
async fn read_stream(client: &Client, stream: &str) -> Vec<(u32, u64, String)> {
    let info = client.describe_stream(stream).await.unwrap();
    let mut ids: Vec<u32> = info.shards.iter().map(|s| s.id).collect();
    ids.sort_unstable();
    let mut out = Vec::new();
    for id in ids {
        let mut reader = client
            .shard_reader(stream, id, Position::TrimHorizon, ReadOptions::default())
            .await
            .unwrap();
        while let Some(answer) = reader.next().await.unwrap() {
            if answer.records.is_empty() {
                break;
            }
            for r in answer.records {
                out.push((id, r.seq, String::from_utf8(r.data.to_vec()).unwrap()));
            }
        }
    }
    out
}

/// Per key ("k:n" data), the numbers in the order read.
fn by_key(records: &[(u32, u64, String)]) -> BTreeMap<String, Vec<u64>> {
    let mut keys: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (_, _, data) in records {
        let (k, n) = data.split_once(':').unwrap();
        keys.entry(k.to_string())
            .or_default()
            .push(n.parse().unwrap());
    }
    keys
}

#[test]
fn producers_keep_each_keys_order_across_splits_merges_and_scales() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let rt = runtime();
    let addr = server.local_addr().to_string();
    rt.block_on(async {
        let client = Client::connect(addr.clone()).await.unwrap();
        client
            .create_stream("moving", &StreamConfig::new(2).limits(Limits::Off))
            .await
            .unwrap();
        let sent = Arc::new(AtomicU64::new(0));
        const KEYS: u64 = 40;
        const RECORDS: u64 = 12_000;
        // The producer: keys p0..p39, each with numbers 0, 1, 2 … in send order.
        let producing = {
            let client = Client::connect(addr.clone()).await.unwrap();
            let sent = sent.clone();
            tokio::spawn(async move {
                let producer = client
                    .producer(
                        "moving",
                        ProducerConfig {
                            linger: Duration::from_millis(1),
                            ..ProducerConfig::default()
                        },
                    )
                    .await
                    .unwrap();
                let mut handles = Vec::new();
                // Every third record settles by callback (`send_with`): re-routed records
                // carry their callbacks along.
                let called = Arc::new(AtomicU64::new(0));
                for i in 0..RECORDS {
                    let key = format!("p{}", i % KEYS);
                    let data = format!("{key}:{}", i / KEYS);
                    if i % 3 == 2 {
                        let called = called.clone();
                        producer
                            .send_with(key, data, move |r| {
                                r.expect("every record is acknowledged");
                                called.fetch_add(1, Ordering::SeqCst);
                            })
                            .await
                            .unwrap();
                    } else {
                        handles.push(producer.send(key, data).await.unwrap());
                    }
                    sent.fetch_add(1, Ordering::SeqCst);
                    if i % 64 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                producer.close().await;
                for h in handles {
                    h.await.expect("every record is acknowledged");
                }
                assert_eq!(called.load(Ordering::SeqCst), RECORDS / 3);
            })
        };
        // put_records: keys b0..b9, batches of 50, each key's numbers in order.
        let batching = {
            let client = Client::connect(addr.clone()).await.unwrap();
            tokio::spawn(async move {
                let mut n = 0u64;
                for _ in 0..60 {
                    let entries: Vec<Entry> = (0..50)
                        .map(|j| {
                            let key = format!("b{}", j % 10);
                            Entry::new(key.clone(), format!("{key}:{}", n + j / 10))
                        })
                        .collect();
                    n += 5;
                    for r in client.put_records("moving", entries).await {
                        r.expect("put_records re-routes what a closed shard refused");
                    }
                }
            })
        };
        // A reader of the whole stream, across every change below.
        let following = {
            let client = Client::connect(addr.clone()).await.unwrap();
            let mut reader = client
                .stream_reader("moving", Position::TrimHorizon, ReadOptions::default())
                .await
                .unwrap();
            tokio::spawn(async move {
                let mut seen: Vec<(u32, u64, String)> = Vec::new();
                while seen.len() < (RECORDS + 3_000) as usize {
                    let (shard, r) = reader.next().await.unwrap().expect("open shards remain");
                    for rec in r.records {
                        let data = String::from_utf8(rec.data.to_vec()).unwrap();
                        seen.push((shard, rec.seq, data));
                    }
                }
                seen
            })
        };
        // Reshards while both write, each once the producer is a bit further on.
        let admin = Client::connect(addr.clone()).await.unwrap();
        let wait_for = |n: u64| {
            let sent = sent.clone();
            async move {
                while sent.load(Ordering::SeqCst) < n {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        };
        wait_for(1_000).await;
        let info = admin.describe_stream("moving").await.unwrap();
        let first = &info.shards[0];
        let mid = first.hash_key_start + (first.hash_key_end - first.hash_key_start) / 2;
        let split = admin.split_shard("moving", first.id, mid).await.unwrap();
        assert_eq!(split.new_shards.len(), 2);
        assert_eq!(split.map_version, 2);
        wait_for(3_000).await;
        let scaled = admin.update_shard_count("moving", 8).await.unwrap();
        assert_eq!(scaled.new_shards.len(), 8);
        wait_for(6_000).await;
        admin.update_shard_count("moving", 3).await.unwrap();
        wait_for(8_000).await;
        let info = admin.describe_stream("moving").await.unwrap();
        let mut open: Vec<_> = info
            .shards
            .iter()
            .filter(|s| s.state == ShardState::Open)
            .collect();
        open.sort_by_key(|s| s.hash_key_start);
        let merged = admin
            .merge_shards("moving", open[0].id, open[1].id)
            .await
            .unwrap();
        assert_eq!(merged.new_shards.len(), 1);
        producing.await.unwrap();
        batching.await.unwrap();

        let info = admin.describe_stream("moving").await.unwrap();
        assert_eq!(info.map_version, merged.map_version);
        let mut open: Vec<_> = info
            .shards
            .iter()
            .filter(|s| s.state == ShardState::Open)
            .collect();
        open.sort_by_key(|s| s.hash_key_start);
        assert_eq!(open.len(), 2);
        assert_eq!(open[0].hash_key_start, 0);
        assert_eq!(open.last().unwrap().hash_key_end, u128::MAX);
        for w in open.windows(2) {
            assert_eq!(w[0].hash_key_end + 1, w[1].hash_key_start);
        }
        let child = info
            .shards
            .iter()
            .find(|s| s.id == merged.new_shards[0])
            .unwrap();
        assert_eq!(child.parent, Some(open[0].id.min(child.parent.unwrap())));
        assert!(child.adjacent_parent.is_some());

        let records = read_stream(&admin, "moving").await;
        let followed = tokio::time::timeout(Duration::from_secs(120), following)
            .await
            .expect("the stream reader sees every record")
            .unwrap();
        assert_eq!(
            by_key(&followed),
            by_key(&records),
            "the stream reader: same order"
        );
        let keys = by_key(&records);
        for k in 0..KEYS {
            let ns = &keys[&format!("p{k}")];
            let expected: Vec<u64> = (0..RECORDS / KEYS).collect();
            assert_eq!(ns, &expected, "key p{k}: in order, each once");
        }
        for k in 0..10 {
            let ns = &keys[&format!("b{k}")];
            let expected: Vec<u64> = (0..300).collect();
            assert_eq!(ns, &expected, "key b{k}: in order, each once");
        }
    });
    server.shutdown();
}

#[test]
fn a_closed_shard_refuses_writes_with_the_new_map_version_and_names_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path());
    let rt = runtime();
    let addr = server.local_addr().to_string();
    rt.block_on(async {
        let client = Client::connect(addr.clone()).await.unwrap();
        client
            .create_stream("split", &StreamConfig::new(1).limits(Limits::Off))
            .await
            .unwrap();
        let before: Vec<Entry> = (0..20)
            .map(|i| Entry::new(format!("k{i}"), "old"))
            .collect();
        for r in client.put_records("split", before).await {
            assert_eq!(r.unwrap().shard_id, 0);
        }
        let split = client.split_shard("split", 0, 1 << 127).await.unwrap();
        assert_eq!(split.new_shards, vec![1, 2]);
        let info = client.describe_stream("split").await.unwrap();
        let parent = info.shards.iter().find(|s| s.id == 0).unwrap();
        assert_eq!(parent.state, ShardState::Closed);
        assert_eq!(parent.last_seq, Some(19));
        for id in [1, 2] {
            let c = info.shards.iter().find(|s| s.id == id).unwrap();
            assert_eq!((c.state, c.parent), (ShardState::Open, Some(0)));
        }
        // Writes to the parent: a typed error naming the new version.
        let mut wire = spate_tests::WireClient::connect(&addr);
        let batch = spate_tests::tagged_batch("k1", 1, 1, 10);
        let r = wire.call(&spate_protocol::Request::PutBatch(
            spate_protocol::PutBatchRequest {
                stream: "split",
                shard_id: 0,
                batch: &batch,
            },
        ));
        let err = r.reply().unwrap_err();
        assert_eq!(err.code, ErrorCode::ShardClosed);
        assert_eq!(err.shard_map_version, info.map_version);
        // Reading the parent: its 20 records, then the end and the children.
        let mut reader = client
            .shard_reader("split", 0, Position::TrimHorizon, ReadOptions::default())
            .await
            .unwrap();
        let mut got = 0;
        let children = loop {
            let a = reader
                .next()
                .await
                .unwrap()
                .expect("an answer before the end");
            got += a.records.len();
            if a.next_iterator.is_none() {
                break a.child_shards.clone();
            }
        };
        assert_eq!(got, 20);
        assert_eq!(children, vec![1, 2]);
        assert!(reader.next().await.unwrap().is_none(), "then nothing more");
        // A reader at LATEST of the closed parent ends at once.
        let mut latest = client
            .shard_reader("split", 0, Position::Latest, ReadOptions::default())
            .await
            .unwrap();
        let a = latest.next().await.unwrap().unwrap();
        assert!(a.records.is_empty() && a.next_iterator.is_none());
        // Errors are typed: unknown shard, closed shard, not adjacent.
        let e = client.split_shard("split", 0, 5).await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::InvalidArgument), "{e}");
        let e = client.split_shard("split", 9, 5).await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::UnknownShard), "{e}");
        let e = client.merge_shards("split", 1, 0).await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::InvalidArgument), "{e}");
        let e = client.update_shard_count("nope", 2).await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::UnknownStream), "{e}");
    });
    // The shape and the data survive a restart; the parent still refuses writes.
    server.shutdown();
    server = start(dir.path());
    let addr = server.local_addr().to_string();
    rt.block_on(async {
        let client = Client::connect(addr.clone()).await.unwrap();
        let info = client.describe_stream("split").await.unwrap();
        assert_eq!(info.map_version, 2);
        assert_eq!(info.shards.len(), 3);
        let records = read_stream(&client, "split").await;
        assert_eq!(records.len(), 20);
        let after: Vec<Entry> = (0..20)
            .map(|i| Entry::new(format!("k{i}"), "new"))
            .collect();
        for r in client.put_records("split", after).await {
            assert_ne!(r.unwrap().shard_id, 0);
        }
        let mut wire = spate_tests::WireClient::connect(&addr);
        let batch = spate_tests::tagged_batch("k1", 1, 1, 10);
        let r = wire.call(&spate_protocol::Request::PutBatch(
            spate_protocol::PutBatchRequest {
                stream: "split",
                shard_id: 0,
                batch: &batch,
            },
        ));
        assert_eq!(r.reply().unwrap_err().code, ErrorCode::ShardClosed);
    });
    server.shutdown();
}

#[test]
fn an_on_demand_stream_splits_when_it_throttles_and_merges_when_quiet() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(EngineConfig {
        listen: "127.0.0.1:0".into(),
        on_demand_check_ms: 50,
        on_demand_scale_out_after_ms: 200,
        on_demand_quiet_ms: 500,
        ..test_config(dir.path())
    })
    .expect("server starts");
    let rt = runtime();
    let addr = server.local_addr().to_string();
    rt.block_on(async {
        let client = Client::connect(addr.clone()).await.unwrap();
        // Small per-shard limits, so that a test's load is more than 4 shards take.
        let limits = Limits::Custom {
            write_bytes_per_s: 16 << 10,
            write_records_per_s: 1000,
            read_bytes_per_s: 1 << 20,
        };
        client
            .create_stream("auto", &StreamConfig::new(1).limits(limits))
            .await
            .unwrap();
        client
            .update_stream_mode("auto", spate_client::CapacityMode::OnDemand, None)
            .await
            .unwrap();
        let open = |info: &spate_client::StreamInfo| {
            info.shards
                .iter()
                .filter(|s| s.state == ShardState::Open)
                .count()
        };
        let info = client.describe_stream("auto").await.unwrap();
        assert_eq!(info.mode, spate_client::CapacityMode::OnDemand);
        assert_eq!(open(&info), 4, "on-demand starts at 4 shards");
        // Its shards are the engine's: the user's resharding calls are refused, as Kinesis
        // refuses them on an on-demand stream.
        let first = info
            .shards
            .iter()
            .find(|s| s.state == ShardState::Open)
            .unwrap();
        for refused in [
            client
                .split_shard("auto", first.id, first.hash_key_start + 1)
                .await,
            client.update_shard_count("auto", 8).await,
        ] {
            let e = refused.unwrap_err();
            assert_eq!(
                e.code(),
                Some(spate_client::ErrorCode::InvalidArgument),
                "{e}"
            );
            assert!(e.to_string().contains("on-demand"), "{e}");
        }
        let e = client.merge_shards("auto", 0, 1).await.unwrap_err();
        assert!(
            e.to_string()
                .contains("MergeShards is for provisioned streams"),
            "{e}"
        );
        // A stream whose ceiling is its starting capacity (4 shards of 1 MiB/s) throttles
        // (10 records/s a shard) but never splits: throttled before "auto" below, so the
        // look that splits "auto" has seen it throttle.
        let tight = Limits::Custom {
            write_bytes_per_s: 1 << 20,
            write_records_per_s: 10,
            read_bytes_per_s: 1 << 20,
        };
        client
            .create_stream("capped", &StreamConfig::new(4).limits(tight))
            .await
            .unwrap();
        client
            .update_stream_mode("capped", spate_client::CapacityMode::OnDemand, Some(4))
            .await
            .unwrap();
        let entries: Vec<Entry> = (0..400).map(|i| Entry::new(format!("c{i}"), "x")).collect();
        // Without retries, so that the throttling shows.
        let no_retries = Client::connect_with(
            addr.clone(),
            spate_client::ClientConfig {
                retry: spate_client::RetryPolicy::none(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let capped_throttled = no_retries
            .put_records("capped", entries)
            .await
            .iter()
            .any(|r| {
                r.as_ref()
                    .is_err_and(|e| e.code() == Some(ErrorCode::Throttled))
            });
        assert!(capped_throttled, "400 records at 40 records/s throttle");
        // About 150 KiB/s offered against 64 KiB/s of capacity: throttled, then split.
        let mut most = 4;
        let mut written = 0u64;
        let started = std::time::Instant::now();
        while most < 8 {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no scale-out within 60 s"
            );
            let entries: Vec<Entry> = (0..30)
                .map(|i| Entry::new(format!("k{}", written + i), vec![7u8; 1000]))
                .collect();
            written += 30;
            for r in client.put_records("auto", entries).await {
                // Throttled records are retried by the client; past its retries they fail
                // with Throttled, never anything else.
                if let Err(e) = r {
                    assert_eq!(e.code(), Some(ErrorCode::Throttled), "{e}");
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            most = most.max(open(&client.describe_stream("auto").await.unwrap()));
        }
        let info = client.describe_stream("auto").await.unwrap();
        let why = info
            .last_scaling
            .clone()
            .expect("a scaling decision is described");
        assert!(why.contains("-> "), "{why}");
        // Quiet: it merges back toward 4 shards. (The scaler may still split once or twice
        // on what it saw of the load before the merges start: those raise `most`.)
        let started = std::time::Instant::now();
        loop {
            let info = client.describe_stream("auto").await.unwrap();
            let n = open(&info);
            let scaled_in = info
                .last_scaling
                .as_deref()
                .is_some_and(|why| why.contains("below"));
            if scaled_in && n < most {
                assert!(n >= 4);
                break;
            }
            if !scaled_in {
                most = most.max(n);
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no scale-in within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Back to provisioned: the scaler leaves it alone.
        client
            .update_stream_mode("auto", spate_client::CapacityMode::Provisioned, None)
            .await
            .unwrap();
        let info = client.describe_stream("auto").await.unwrap();
        assert_eq!(info.mode, spate_client::CapacityMode::Provisioned);
    });
    server.shutdown();
}

#[test]
fn a_long_poll_at_a_parents_tip_ends_when_it_is_split() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let rt = runtime();
    let addr = server.local_addr().to_string();
    rt.block_on(async {
        let client = Client::connect(addr.clone()).await.unwrap();
        client
            .create_stream("tip", &StreamConfig::new(1).limits(Limits::Off))
            .await
            .unwrap();
        let options = ReadOptions {
            wait_ms: 20_000,
            ..ReadOptions::default()
        };
        let mut reader = client
            .shard_reader("tip", 0, Position::Latest, options)
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let following = tokio::spawn(async move {
            // Answers until the shard's end: the children then.
            loop {
                let a = reader
                    .next()
                    .await
                    .unwrap()
                    .expect("an answer before the end");
                if a.next_iterator.is_none() {
                    return a.child_shards;
                }
            }
        });
        // Split once the reader is parked at the tip.
        while server
            .net_stats()
            .iter()
            .map(|n| n.parked_reads)
            .sum::<usize>()
            == 0
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        client.split_shard("tip", 0, 1 << 127).await.unwrap();
        let children = following.await.unwrap();
        assert_eq!(children, vec![1, 2]);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the parked read ended with the split, not its 20 s wait: {:?}",
            started.elapsed()
        );
    });
    server.shutdown();
}

/// A whole-stream reader from a time reads the children of a shard it read to its end
/// from that time too, not from their first record (which may be older than asked for).
#[test]
fn a_stream_reader_from_a_time_reads_children_from_that_time() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let addr = server.local_addr().to_string();
    runtime().block_on(async {
        let client = Client::connect(addr).await.unwrap();
        client
            .create_stream("t", &StreamConfig::new(1).limits(Limits::Off))
            .await
            .unwrap();
        let split = client.split_shard("t", 0, u128::MAX / 2).await.unwrap();
        assert_eq!(split.new_shards.len(), 2);
        // A record in a child, then one at a later millisecond: the time to read from.
        let put = |data: &'static str| {
            let client = client.clone();
            async move {
                client
                    .put_records("t", vec![Entry::new("k", data)])
                    .await
                    .remove(0)
                    .unwrap()
            }
        };
        let first = put("before").await;
        let read_one = |shard, seq| {
            let client = client.clone();
            async move {
                let it = client
                    .get_iterator("t", shard, Position::AtSequenceNumber { seq })
                    .await
                    .unwrap();
                client
                    .get_records(&it, 1, 1 << 20, 0)
                    .await
                    .unwrap()
                    .records[0]
                    .clone()
            }
        };
        let before = read_one(first.shard_id, first.seq).await;
        let mut after = before.clone();
        while after.ts_ms <= before.ts_ms {
            let r = put("after").await;
            after = read_one(r.shard_id, r.seq).await;
        }
        let mut reader = client
            .stream_reader(
                "t",
                Position::AtTimestamp { ts_ms: after.ts_ms },
                ReadOptions::default(),
            )
            .await
            .unwrap();
        let (shard, got) = loop {
            let (shard, r) = reader.next().await.unwrap().expect("open shards remain");
            if !r.records.is_empty() {
                break (shard, r.records);
            }
        };
        assert_eq!(shard, first.shard_id);
        assert!(
            got.iter()
                .all(|r| r.ts_ms >= after.ts_ms && &r.data[..] == b"after"),
            "{got:?}"
        );
    });
    server.shutdown();
}
