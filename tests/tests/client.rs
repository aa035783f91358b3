//! The client library against a real server in-process (port 0, temp dir): routing, per-key
//! order, every iterator position, 1 MiB records, throttling and retries, long-poll, many
//! outstanding requests, the producer, and errors.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use spate_client::{
    Client, ClientConfig, Entry, ErrorCode, Limits, Position, ProducerConfig, PutResult,
    ReadOptions, Record, RetryPolicy, StreamConfig,
};
use spate_engine::config::EngineConfig;
use spate_engine::server::Server;
use spate_protocol::routing::hash_key;
use spate_tests::{key_for_shard, test_config};

struct Env {
    server: Option<Server>,
    _dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(EngineConfig {
            listen: "127.0.0.1:0".into(),
            ..test_config(dir.path())
        })
        .expect("server starts");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        Env {
            server: Some(server),
            _dir: dir,
            rt,
        }
    }

    fn addr(&self) -> String {
        self.server.as_ref().unwrap().local_addr().to_string()
    }

    fn client(&self) -> Client {
        let addr = self.addr();
        self.rt
            .block_on(Client::connect(addr))
            .expect("client connects")
    }

    fn run<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown();
        }
    }
}

fn off(shards: u32) -> StreamConfig {
    StreamConfig::new(shards).limits(Limits::Off)
}

/// Every record of a shard from the oldest to the tip.
async fn read_shard(client: &Client, stream: &str, shard: u32) -> Vec<Record> {
    let mut reader = client
        .shard_reader(stream, shard, Position::TrimHorizon, ReadOptions::default())
        .await
        .expect("reader opens");
    let mut out = Vec::new();
    loop {
        let answer = reader.next().await.expect("read").expect("open shard");
        if answer.records.is_empty() {
            assert_eq!(answer.millis_behind_latest, 0);
            return out;
        }
        out.extend(answer.records);
    }
}

#[test]
fn put_records_route_by_md5_and_keep_each_keys_order() {
    let env = Env::new();
    let client = env.client();
    env.run(async {
        client.create_stream("routed", &off(4)).await.unwrap();
        let keys: Vec<String> = (0..40).map(|k| format!("device-{k}")).collect();
        let entries: Vec<Entry> = (0..2000)
            .map(|i| {
                Entry::new(
                    keys[i % keys.len()].clone(),
                    format!("{}:{i}", i % keys.len()),
                )
            })
            .collect();
        let results = client.put_records("routed", entries.clone()).await;
        let info = client.describe_stream("routed").await.unwrap();
        let mut by_shard: HashMap<u32, Vec<(u64, usize)>> = HashMap::new();
        for (i, r) in results.iter().enumerate() {
            let r: PutResult = r.clone().unwrap_or_else(|e| panic!("record {i}: {e}"));
            let shard = info.shards.iter().find(|s| s.id == r.shard_id).unwrap();
            let h = hash_key(entries[i].key.as_bytes());
            assert!(
                (shard.hash_key_start..=shard.hash_key_end).contains(&h),
                "record {i} stored in shard {} whose range does not hold its MD5",
                r.shard_id
            );
            by_shard.entry(r.shard_id).or_default().push((r.seq, i));
        }
        assert!(by_shard.len() > 1, "40 keys spread over several shards");
        // Read every shard back: the records sit at the acknowledged sequence numbers, and
        // each key's records come in the order they were given.
        let mut last_index: HashMap<String, usize> = HashMap::new();
        let mut total = 0;
        for shard in &info.shards {
            let records = read_shard(&client, "routed", shard.id).await;
            let mut acked = by_shard.remove(&shard.id).unwrap_or_default();
            acked.sort_unstable();
            assert_eq!(records.len(), acked.len(), "shard {}", shard.id);
            for (rec, (seq, i)) in records.iter().zip(&acked) {
                assert_eq!(rec.seq, *seq);
                assert_eq!(rec.key, entries[*i].key);
                assert_eq!(rec.data, entries[*i].data);
                if let Some(prev) = last_index.insert(rec.key.clone(), *i) {
                    assert!(prev < *i, "key {} out of order", rec.key);
                }
            }
            total += records.len();
        }
        assert_eq!(total, 2000);
    });
}

/// A record the client refuses in the middle of one shard's records: the records of that
/// shard before it are stored, it fails with its code, every later one of its shard fails
/// as not sent with the same code, and the other shards' records (interleaved with them in
/// the call) are all stored, each result in its input place.
#[test]
fn put_records_fail_a_shards_rest_after_a_refused_record_and_store_the_others() {
    let env = Env::new();
    let client = env.client();
    env.run(async {
        client.create_stream("mixed", &off(3)).await.unwrap();
        let keys: Vec<String> = (0..3).map(|s| key_for_shard(s, 3)).collect();
        let mut entries = Vec::new();
        for i in 0..30 {
            let data = if i == 13 {
                // Shard 1's fifth record: over the 1 MiB limit.
                vec![b'x'; (1 << 20) + 1]
            } else {
                format!("{i}").into_bytes()
            };
            entries.push(Entry::new(keys[i % 3].clone(), data));
        }
        let results = client.put_records("mixed", entries.clone()).await;
        assert_eq!(results.len(), 30);
        let mut next_seq: HashMap<u32, u64> = HashMap::new();
        for (i, r) in results.iter().enumerate() {
            match (i % 3, i) {
                (1, 13..) => {
                    let e = r.as_ref().expect_err("refused, or after the refused one");
                    assert_eq!(e.code(), Some(ErrorCode::RecordTooLarge), "record {i}: {e}");
                    if i > 13 {
                        assert!(e.to_string().contains("not sent"), "record {i}: {e}");
                    }
                }
                _ => {
                    let r = r.as_ref().unwrap_or_else(|e| panic!("record {i}: {e}"));
                    assert_eq!(r.shard_id, (i % 3) as u32, "record {i}");
                    // In input order within its shard.
                    if let Some(prev) = next_seq.insert(r.shard_id, r.seq) {
                        assert!(r.seq > prev, "record {i}");
                    }
                }
            }
        }
        for shard in 0..3u32 {
            let stored = read_shard(&client, "mixed", shard).await;
            let expected: Vec<Vec<u8>> = (0..30)
                .filter(|i| i % 3 == shard as usize && !(shard == 1 && *i >= 13))
                .map(|i| format!("{i}").into_bytes())
                .collect();
            let got: Vec<Vec<u8>> = stored.iter().map(|r| r.data.to_vec()).collect();
            assert_eq!(got, expected, "shard {shard}");
        }
    });
}

/// `put_shard_batches`: caller-built batches, several shards of one core in one request and
/// a lone one; each outcome in input order with its sequence numbers; a batch holding a
/// record whose key does not hash into its shard is refused whole (`WrongShard`) while the
/// others of the same request are stored, and nothing is retried.
#[test]
fn put_shard_batches_send_caller_built_batches_once() {
    let env = Env::new();
    let client = env.client();
    env.run(async {
        client.create_stream("built", &off(3)).await.unwrap();
        let map = client.shard_map("built").await.unwrap();
        let routes = map.routes().to_vec();
        let batch = |shard: usize, n: usize, wrong_at: Option<usize>| {
            let mut b = spate_protocol::batch::BatchBuilder::new();
            for i in 0..n {
                let owner = if wrong_at == Some(i) {
                    (shard + 1) % 3
                } else {
                    shard
                };
                let key = key_for_shard(routes[owner].shard_id, 3);
                let data = format!("{shard}:{i}");
                b.push_with(key.as_bytes(), data.len(), None, |out| {
                    out.copy_from_slice(data.as_bytes())
                })
                .unwrap();
            }
            bytes::Bytes::from(b.finish())
        };
        let answers = client
            .put_shard_batches(
                "built",
                vec![
                    (routes[0], batch(0, 5, None)),
                    (routes[1], batch(1, 7, Some(4))),
                    (routes[2], batch(2, 3, None)),
                ],
            )
            .await;
        assert_eq!(answers.len(), 3);
        let a0 = answers[0].as_ref().unwrap();
        assert_eq!(
            (a0.shard_id, a0.accepted, a0.rejected),
            (routes[0].shard_id, 5, None)
        );
        let e1 = answers[1].as_ref().unwrap_err();
        assert_eq!(e1.code(), Some(ErrorCode::WrongShard), "{e1}");
        assert_eq!(answers[2].as_ref().unwrap().accepted, 3);
        // A second call continues each shard's sequence numbers.
        let again = client
            .put_shard_batches("built", vec![(routes[0], batch(0, 2, None))])
            .await;
        let b0 = again[0].as_ref().unwrap();
        assert_eq!(b0.accepted, 2);
        assert!(b0.base_seq > a0.base_seq + 4);
        for (i, (shard, want)) in [(0, 7), (1, 0), (2, 3)].into_iter().enumerate() {
            let records = read_shard(&client, "built", routes[shard].shard_id).await;
            assert_eq!(records.len(), want, "shard {i}");
            for (j, r) in records.iter().enumerate() {
                let n = if shard == 0 && j >= 5 { j - 5 } else { j };
                assert_eq!(&r.data[..], format!("{shard}:{n}").as_bytes());
            }
            if shard == 0 {
                assert_eq!(records[0].seq, a0.base_seq);
                assert_eq!(records[5].seq, b0.base_seq);
            }
        }
    });
}

#[test]
fn every_iterator_position() {
    let env = Env::new();
    let client = env.client();
    env.run(async {
        client.create_stream("positions", &off(1)).await.unwrap();
        for i in 0..10 {
            let r = client
                .put_record("positions", "k", format!("r{i}"), None)
                .await
                .unwrap();
            assert_eq!(
                r,
                PutResult {
                    shard_id: 0,
                    seq: i
                }
            );
        }
        let all = read_shard(&client, "positions", 0).await;
        assert_eq!(
            all.iter().map(|r| r.seq).collect::<Vec<_>>(),
            (0..10).collect::<Vec<_>>()
        );
        assert_eq!(&all[3].data[..], b"r3");
        let first_seq = |position| {
            let client = client.clone();
            async move {
                let it = client.get_iterator("positions", 0, position).await.unwrap();
                let r = client.get_records(&it, 100, 1 << 20, 0).await.unwrap();
                (r.records.first().map(|r| r.seq), r)
            }
        };
        assert_eq!(first_seq(Position::TrimHorizon).await.0, Some(0));
        assert_eq!(
            first_seq(Position::AtSequenceNumber { seq: 3 }).await.0,
            Some(3)
        );
        assert_eq!(
            first_seq(Position::AfterSequenceNumber { seq: 3 }).await.0,
            Some(4)
        );
        // AT_TIMESTAMP: the first record that arrived at or after the time.
        for probe in [0, 5, 9] {
            let ts_ms = all[probe].ts_ms;
            let expected = all.iter().find(|r| r.ts_ms >= ts_ms).unwrap().seq;
            let got = first_seq(Position::AtTimestamp { ts_ms }).await.0;
            assert_eq!(got, Some(expected), "at timestamp of record {probe}");
        }
        // LATEST: nothing now; the next record put is the first one read.
        let (none, latest) = first_seq(Position::Latest).await;
        assert_eq!(none, None);
        assert_eq!(latest.millis_behind_latest, 0);
        client
            .put_record("positions", "k", "new", None)
            .await
            .unwrap();
        let it = latest
            .next_iterator
            .expect("an open shard always has a next iterator");
        let r = client.get_records(&it, 100, 1 << 20, 0).await.unwrap();
        assert_eq!(r.records.len(), 1);
        assert_eq!(
            (r.records[0].seq, &r.records[0].data[..]),
            (10, &b"new"[..])
        );
        // A bad position is the server's error, typed.
        let err = client
            .get_iterator("positions", 0, Position::AtSequenceNumber { seq: 1000 })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::InvalidArgument), "{err}");
        let err = client
            .get_iterator("positions", 9, Position::TrimHorizon)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::UnknownShard), "{err}");
    });
}

#[test]
fn one_mib_records_round_trip() {
    let env = Env::new();
    let client = env.client();
    env.run(async {
        client.create_stream("big", &off(1)).await.unwrap();
        let data: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 1 << 20]).collect();
        let entries = data.iter().map(|d| Entry::new("k", d.clone())).collect();
        let results = client.put_records("big", entries).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        let records = read_shard(&client, "big", 0).await;
        assert_eq!(records.len(), 5);
        for (r, d) in records.iter().zip(&data) {
            assert!(r.data[..] == d[..], "record {} intact", r.seq);
        }
        let err = client
            .put_record("big", "k", vec![0u8; (1 << 20) + 1], None)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::RecordTooLarge));
    });
}

#[test]
fn kinesis_limits_throttle_and_the_client_retries_until_all_succeed() {
    let env = Env::new();
    let addr = env.addr();
    env.run(async {
        let retrying = Client::connect(addr.clone()).await.unwrap();
        let no_retry = Client::connect_with(
            addr,
            ClientConfig {
                retry: RetryPolicy::none(),
                ..ClientConfig::default()
            },
        )
        .await
        .unwrap();
        retrying
            .create_stream("limited", &StreamConfig::new(1))
            .await
            .unwrap();
        // 3,000 records against a 1,000 records/s shard (one second of burst): without
        // retries some are throttled, and once one is, every later one is not sent.
        let entries: Vec<Entry> = (0..3000).map(|i| Entry::new("k", format!("{i}"))).collect();
        let results = no_retry.put_records("limited", entries).await;
        let acked = results.iter().take_while(|r| r.is_ok()).count();
        assert!((1000..3000).contains(&acked), "{acked} acknowledged");
        let err = results[acked].as_ref().unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::Throttled), "{err}");
        assert!(err.is_safe_to_retry() && err.retry_after_ms() > 0);
        assert!(results[acked..].iter().all(Result::is_err));
        // With retries, everything gets in, in order, at the shard's pace.
        let entries: Vec<Entry> = (0..1500).map(|i| Entry::new("k", format!("{i}"))).collect();
        let results = retrying.put_records("limited", entries).await;
        let seqs: Vec<u64> = results
            .iter()
            .map(|r| r.as_ref().unwrap_or_else(|e| panic!("{e}")).seq)
            .collect();
        let base = acked as u64;
        assert_eq!(seqs, (base..base + 1500).collect::<Vec<_>>());
    });
}

#[test]
fn long_poll_wakes_up_on_new_data() {
    let env = Env::new();
    let client = env.client();
    env.run(async {
        client.create_stream("poll", &off(1)).await.unwrap();
        let it = client
            .get_iterator("poll", 0, Position::Latest)
            .await
            .unwrap();
        // An empty long-poll holds the call for its wait.
        let started = Instant::now();
        let empty = client.get_records(&it, 10, 1 << 20, 200).await.unwrap();
        assert!(empty.records.is_empty());
        assert!(started.elapsed() >= Duration::from_millis(150));
        let it = empty.next_iterator.unwrap();
        // A long-poll of 20 s returns as soon as a record arrives.
        let poll = tokio::spawn({
            let client = client.clone();
            async move {
                let started = Instant::now();
                let r = client.get_records(&it, 10, 1 << 20, 20_000).await;
                (r, started.elapsed())
            }
        });
        client
            .put_record("poll", "k", "wake up", None)
            .await
            .unwrap();
        let (r, waited) = poll.await.unwrap();
        let r = r.unwrap();
        assert_eq!(r.records.len(), 1);
        assert_eq!(&r.records[0].data[..], b"wake up");
        assert!(waited < Duration::from_secs(15), "woke after {waited:?}");
    });
}

#[test]
fn many_outstanding_requests_and_the_producer() {
    let env = Env::new();
    let client = env.client();
    env.run(async {
        client.create_stream("busy", &off(4)).await.unwrap();
        // 500 single puts at once, over the per-core connections.
        let mut calls = Vec::new();
        for i in 0..500 {
            let client = client.clone();
            calls.push(tokio::spawn(async move {
                client
                    .put_record("busy", &format!("key-{}", i % 16), format!("{i}"), None)
                    .await
            }));
        }
        let mut seen = std::collections::HashSet::new();
        for call in calls {
            let r = call.await.unwrap().unwrap();
            assert!(seen.insert(r), "{r:?} acknowledged twice");
        }
        // The producer: many keys, per-key order, everything acknowledged.
        let producer = client
            .producer("busy", ProducerConfig::default())
            .await
            .unwrap();
        let keys: Vec<String> = (0..4).map(|s| key_for_shard(s, 4)).collect();
        let mut handles = Vec::new();
        for i in 0..4000usize {
            let key = keys[i % 4].clone();
            handles.push((
                key.clone(),
                i,
                producer.send(key, format!("p{i}")).await.unwrap(),
            ));
        }
        producer.flush().await;
        let mut acked: HashMap<(u32, u64), usize> = HashMap::new();
        for (_, i, handle) in handles {
            let r = handle.await.unwrap();
            acked.insert((r.shard_id, r.seq), i);
        }
        producer.close().await;
        for shard in 0..4 {
            let mut last = None;
            for rec in read_shard(&client, "busy", shard).await {
                let Some(&i) = acked.get(&(shard, rec.seq)) else {
                    continue; // one of the single puts
                };
                assert_eq!(rec.data, format!("p{i}").as_bytes());
                assert_eq!(rec.key, keys[i % 4]);
                assert!(
                    last < Some(i),
                    "producer records out of order in shard {shard}"
                );
                last = Some(i);
            }
        }
        assert_eq!(acked.len(), 4000);
    });
}

#[test]
fn administration_and_errors() {
    let env = Env::new();
    let client = env.client();
    env.run(async {
        assert!(!client.server_info().cores.is_empty());
        for name in ["b-stream", "a-stream", "c-stream"] {
            client.create_stream(name, &off(2)).await.unwrap();
        }
        assert_eq!(
            client.list_streams().await.unwrap(),
            vec!["a-stream", "b-stream", "c-stream"]
        );
        let err = client.create_stream("a-stream", &off(1)).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::StreamExists));
        client.increase_retention("a-stream", 48).await.unwrap();
        assert_eq!(
            client
                .describe_stream("a-stream")
                .await
                .unwrap()
                .retention_hours,
            48
        );
        client.decrease_retention("a-stream", 12).await.unwrap();
        let info = client.describe_stream("a-stream").await.unwrap();
        assert_eq!(
            (info.retention_hours, info.limits, info.shards.len()),
            (12, Limits::Off, 2)
        );

        client.put_record("b-stream", "k", "v", None).await.unwrap();
        client.delete_stream("b-stream").await.unwrap();
        assert_eq!(
            client.list_streams().await.unwrap(),
            vec!["a-stream", "c-stream"]
        );
        // Unknown streams, everywhere; the routing cache does not hide a deletion.
        let unknown = Some(ErrorCode::UnknownStream);
        assert_eq!(
            client.describe_stream("b-stream").await.unwrap_err().code(),
            unknown
        );
        assert_eq!(
            client
                .put_record("b-stream", "k", "v", None)
                .await
                .unwrap_err()
                .code(),
            unknown
        );
        let results = client.put_records("nope", vec![Entry::new("k", "v")]).await;
        assert_eq!(results[0].as_ref().unwrap_err().code(), unknown);
        let err = client
            .get_iterator("nope", 0, Position::Latest)
            .await
            .unwrap_err();
        assert_eq!(err.code(), unknown);
        assert_eq!(
            client.delete_stream("nope").await.unwrap_err().code(),
            unknown
        );
        assert!(client
            .producer("nope", ProducerConfig::default())
            .await
            .is_err());
    });
}

/// A server configured with requests smaller than the producer's default batch (256 KiB)
/// still takes everything a producer sends: its batches are capped by the server's largest
/// request (every full batch was refused `FrameTooLarge`).
#[test]
fn a_producers_batches_fit_the_servers_smaller_requests() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(EngineConfig {
        listen: "127.0.0.1:0".into(),
        max_frame_bytes: 64 << 10,
        ..test_config(dir.path())
    })
    .expect("server starts");
    let addr = server.local_addr().to_string();
    let rt = spate_tests::runtime();
    rt.block_on(async {
        let client = Client::connect(addr).await.unwrap();
        client
            .create_stream("small", &StreamConfig::new(1).limits(Limits::Off))
            .await
            .unwrap();
        let producer = client
            .producer(
                "small",
                ProducerConfig {
                    linger: std::time::Duration::from_millis(50),
                    ..ProducerConfig::default()
                },
            )
            .await
            .unwrap();
        let mut handles = Vec::new();
        for _ in 0..1000 {
            handles.push(producer.send("k", vec![b'x'; 1000]).await.unwrap());
        }
        producer.flush().await;
        for h in handles {
            h.await.expect("every record acknowledged");
        }
        producer.close().await;
    });
    server.shutdown();
}
