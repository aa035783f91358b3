//! The client against a scripted fake server that speaks the protocol crate's codec over
//! tokio TCP. The fake answers hello and describe-stream itself and hands every other
//! request to the test, which answers when and how it likes: out of order, throttled,
//! or by dropping the connection. Nothing here waits on a sleep; every step waits on a
//! request arriving or a response resolving.

use std::sync::Arc;
use std::time::Duration;

use spate_client::{
    Client, ClientConfig, ClientError, EncryptionType, Entry, ErrorCode, Position, ProducerConfig,
    PutResult, ReadOptions, RetryPolicy, RotateKeysResponse, StreamConfig,
};
use spate_protocol::batch::{stamp, BatchBuilder, BatchHeader, RecordIter};
use spate_protocol::routing::{even_range, hash_key};
use spate_protocol::{
    decode_frame, decode_request, encode_error, encode_get_records_response, encode_response,
    CoreInfo, ErrorResponse, GetIteratorResponse, GetRecordsHead, HelloResponse, Limits,
    PutBatchResponse, PutBatchesResponse, PutRecordResponse, Rejection, Request, Response,
    ShardDescription, ShardOutcome, ShardState, StreamDescription, DEFAULT_MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
};

mod fake {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::mpsc;

    /// The fake's view of a stream: `shards` even shards, shard `i` on core `i % cores`.
    #[derive(Clone)]
    pub struct Setup {
        pub stream: &'static str,
        pub shards: u32,
        pub max_record_data_bytes: u32,
        /// Encrypted under this master key (one key epoch); `None`: in the clear.
        pub master_key_id: Option<u32>,
    }

    enum Out {
        Frame(Vec<u8>),
        Close,
    }

    /// One shard's batch of a put request: (stream, shard id, [(key, data)]).
    pub type Put = (String, u32, Vec<(String, Vec<u8>)>);

    /// A request the fake did not answer itself, with the means to answer it.
    pub struct Req {
        pub core: u16,
        pub conn: usize,
        pub id: u64,
        pub opcode: u16,
        frame: Vec<u8>,
        out: mpsc::UnboundedSender<Out>,
    }

    impl Req {
        pub fn request(&self) -> Request<'_> {
            let frame = decode_frame(&self.frame, DEFAULT_MAX_FRAME_BYTES)
                .unwrap()
                .unwrap();
            decode_request(&frame).unwrap()
        }

        /// (stream, shard id, [(key, data)]) of a put-batch request.
        pub fn put_batch(&self) -> (String, u32, Vec<(String, Vec<u8>)>) {
            let Request::PutBatch(p) = self.request() else {
                panic!("expected a put-batch, got opcode {}", self.opcode)
            };
            (p.stream.to_string(), p.shard_id, batch_records(p.batch))
        }

        /// Every (stream, shard id, records) of a put-batch or put-batches request.
        pub fn puts(&self) -> Vec<Put> {
            match self.request() {
                Request::PutBatch(p) => {
                    vec![(p.stream.to_string(), p.shard_id, batch_records(p.batch))]
                }
                Request::PutBatches(p) => p
                    .batches
                    .iter()
                    .map(|b| (p.stream.to_string(), b.shard_id, batch_records(b.batch)))
                    .collect(),
                _ => panic!("expected a put, got opcode {}", self.opcode),
            }
        }

        /// Accepts every batch of a put request whole, numbering each shard's records from
        /// `base(shard)`.
        pub fn accept_all(&self, base: impl Fn(u32) -> u64) {
            self.answer_puts(|shard_id, n| PutBatchResponse {
                shard_id,
                base_seq: base(shard_id),
                accepted: n as u32,
                rejected: None,
            });
        }

        /// Answers every batch of a put request (a put-batch or a put-batches) with what
        /// `answer(shard, records in its batch)` says.
        pub fn answer_puts(&self, mut answer: impl FnMut(u32, usize) -> PutBatchResponse) {
            let stored: Vec<PutBatchResponse> = self
                .puts()
                .iter()
                .map(|(_, shard_id, records)| answer(*shard_id, records.len()))
                .collect();
            if matches!(self.request(), Request::PutBatch(_)) {
                self.respond(&Response::PutBatch(stored[0]));
            } else {
                self.respond(&Response::PutBatches(PutBatchesResponse {
                    outcomes: stored.into_iter().map(ShardOutcome::Stored).collect(),
                }));
            }
        }

        pub fn respond(&self, response: &Response<'_>) {
            let mut out = Vec::new();
            encode_response(&mut out, self.id, response);
            let _ = self.out.send(Out::Frame(out));
        }

        pub fn respond_raw(&self, frame: Vec<u8>) {
            let _ = self.out.send(Out::Frame(frame));
        }

        pub fn error(&self, code: ErrorCode, retry_after_ms: u32) {
            let mut out = Vec::new();
            let body = ErrorResponse {
                code,
                retry_after_ms,
                message: "fake says no",
                shard_map_version: 0,
            };
            encode_error(&mut out, self.opcode, self.id, &body);
            let _ = self.out.send(Out::Frame(out));
        }

        pub fn accept_batch(
            &self,
            base_seq: u64,
            accepted: u32,
            rejected: Option<(ErrorCode, u32)>,
        ) {
            let (_, shard_id, _) = self.put_batch();
            self.respond(&Response::PutBatch(PutBatchResponse {
                shard_id,
                base_seq,
                accepted,
                rejected: rejected.map(|(code, retry_after_ms)| Rejection {
                    code,
                    retry_after_ms,
                }),
            }));
        }

        /// Closes the connection the request came on.
        pub fn close_connection(&self) {
            let _ = self.out.send(Out::Close);
        }
    }

    pub fn batch_records(batch: &[u8]) -> Vec<(String, Vec<u8>)> {
        let h = BatchHeader::decode(batch).unwrap();
        RecordIter::new(batch, h.record_count)
            .map(|r| {
                let r = r.unwrap();
                (String::from_utf8(r.key.to_vec()).unwrap(), r.data.to_vec())
            })
            .collect()
    }

    pub struct Fake {
        pub addrs: Vec<String>,
        pub requests: mpsc::UnboundedReceiver<Req>,
    }

    impl Fake {
        pub async fn next(&mut self) -> Req {
            tokio::time::timeout(Duration::from_secs(30), self.requests.recv())
                .await
                .expect("a request within 30 s")
                .expect("fake server running")
        }
    }

    /// Starts one listener per core on 127.0.0.1:0; the hello advertises all of them.
    pub async fn start(cores: u16, setup: Setup) -> Fake {
        let mut listeners = Vec::new();
        for _ in 0..cores {
            listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
        }
        let addrs: Vec<String> = listeners
            .iter()
            .map(|l| l.local_addr().unwrap().to_string())
            .collect();
        let (tx, rx) = mpsc::unbounded_channel();
        let conn_ids = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for (core, listener) in listeners.into_iter().enumerate() {
            let (tx, addrs, setup, conn_ids) =
                (tx.clone(), addrs.clone(), setup.clone(), conn_ids.clone());
            tokio::spawn(async move {
                loop {
                    let (socket, _) = listener.accept().await.unwrap();
                    let conn = conn_ids.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tokio::spawn(serve(
                        socket,
                        core as u16,
                        conn,
                        addrs.clone(),
                        setup.clone(),
                        tx.clone(),
                    ));
                }
            });
        }
        Fake {
            addrs,
            requests: rx,
        }
    }

    async fn serve(
        socket: TcpStream,
        core: u16,
        conn: usize,
        addrs: Vec<String>,
        setup: Setup,
        requests: mpsc::UnboundedSender<Req>,
    ) {
        let (mut rd, mut wr) = socket.into_split();
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Out>();
        let reader = tokio::spawn({
            let out_tx = out_tx.clone();
            async move {
                let mut buf = Vec::new();
                let mut chunk = vec![0u8; 64 * 1024];
                loop {
                    while let Some(frame) = decode_frame(&buf, DEFAULT_MAX_FRAME_BYTES).unwrap() {
                        let len = frame.encoded_len();
                        let (id, opcode) = (frame.header.correlation_id, frame.header.opcode);
                        let req = Req {
                            core,
                            conn,
                            id,
                            opcode,
                            frame: buf[..len].to_vec(),
                            out: out_tx.clone(),
                        };
                        if !answer_itself(&req, &addrs, &setup) {
                            let _ = requests.send(req);
                        }
                        buf.drain(..len);
                    }
                    match rd.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            }
        });
        while let Some(out) = out_rx.recv().await {
            match out {
                Out::Frame(f) => {
                    if wr.write_all(&f).await.is_err() {
                        break;
                    }
                }
                Out::Close => break,
            }
        }
        reader.abort();
        let _ = wr.shutdown().await;
    }

    fn answer_itself(req: &Req, addrs: &[String], setup: &Setup) -> bool {
        match req.request() {
            Request::Hello(_) => {
                let cores = addrs
                    .iter()
                    .enumerate()
                    .map(|(i, a)| CoreInfo {
                        core_id: i as u16,
                        address: a,
                    })
                    .collect();
                req.respond(&Response::Hello(HelloResponse {
                    protocol_version: PROTOCOL_VERSION,
                    max_frame_bytes: DEFAULT_MAX_FRAME_BYTES as u32,
                    cores,
                    metrics_address: None,
                    auth_required: false,
                    principal: None,
                }));
                true
            }
            Request::DescribeStream(d) if d.name == setup.stream => {
                let n = setup.shards;
                let shards = (0..n)
                    .map(|i| {
                        let (start, end) = even_range(i, n);
                        ShardDescription {
                            id: i,
                            state: ShardState::Open,
                            hash_key_start: start,
                            hash_key_end: end,
                            parent: None,
                            adjacent_parent: None,
                            core: (i % addrs.len() as u32) as u16,
                            first_seq: None,
                            last_seq: None,
                            records: 0,
                            bytes: 0,
                            disk_bytes: 0,
                        }
                    })
                    .collect();
                req.respond(&Response::DescribeStream(StreamDescription {
                    name: setup.stream,
                    stream_id: 7,
                    status: spate_protocol::StreamStatus::Active,
                    retention_hours: 24,
                    limits: Limits::Off,
                    max_record_data_bytes: setup.max_record_data_bytes,
                    created_ms: 0,
                    shards,
                    mode: spate_protocol::CapacityMode::Provisioned,
                    map_version: 1,
                    last_scaling: None,
                    shard_level_metrics: false,
                    encryption: match setup.master_key_id {
                        Some(_) => EncryptionType::Aes256Gcm,
                        None => EncryptionType::None,
                    },
                    key_epochs: u32::from(setup.master_key_id.is_some()),
                    master_key_id: setup.master_key_id,
                    max_write_mib_per_s: None,
                }));
                true
            }
            Request::DescribeStream(_) => {
                req.error(ErrorCode::UnknownStream, 0);
                true
            }
            _ => false,
        }
    }
}

use fake::{batch_records, Fake, Setup};

fn setup(shards: u32) -> Setup {
    Setup {
        stream: "s",
        shards,
        max_record_data_bytes: 1 << 20,
        master_key_id: None,
    }
}

fn fast_retry() -> ClientConfig {
    ClientConfig {
        retry: RetryPolicy {
            backoff_base: Duration::from_millis(1),
            backoff_max: Duration::from_millis(5),
            max_attempts: 5,
        },
        ..ClientConfig::default()
    }
}

async fn connect(fake: &Fake) -> Client {
    Client::connect_with(fake.addrs[0].clone(), fast_retry())
        .await
        .unwrap()
}

fn key_for(shard: u32, shards: u32, n: usize) -> String {
    let (lo, hi) = even_range(shard, shards);
    (0..)
        .map(|i| format!("key-{n}-{i}"))
        .find(|k| (lo..=hi).contains(&hash_key(k.as_bytes())))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_outstanding_requests_on_one_connection_with_out_of_order_responses() {
    let mut fake = fake::start(1, setup(1)).await;
    let client = connect(&fake).await;
    const N: usize = 200;
    let mut calls = Vec::new();
    for i in 0..N {
        let client = client.clone();
        calls.push(tokio::spawn(async move {
            client
                .put_record("s", &format!("k{i}"), format!("{i}"), None)
                .await
        }));
    }
    // Every request is outstanding before the first answer: the client pipelines them.
    let mut reqs = Vec::new();
    for _ in 0..N {
        reqs.push(fake.next().await);
    }
    let conn = reqs[0].conn;
    assert!(
        reqs.iter().all(|r| r.conn == conn),
        "one connection carries them all"
    );
    // Answer in reverse order, each with a sequence number derived from its record.
    for req in reqs.iter().rev() {
        let Request::PutRecord(p) = req.request() else {
            panic!("expected put-record")
        };
        let (key, _) = batch_records(p.batch).remove(0);
        let i: u64 = key[1..].parse().unwrap();
        req.respond(&Response::PutRecord(PutRecordResponse {
            shard_id: 0,
            seq: 1000 + i,
        }));
    }
    for (i, call) in calls.into_iter().enumerate() {
        let r = call.await.unwrap().unwrap();
        assert_eq!(
            r,
            PutResult {
                shard_id: 0,
                seq: 1000 + i as u64
            }
        );
    }
}

#[tokio::test]
async fn throttled_suffixes_are_retried_in_order() {
    let mut fake = fake::start(1, setup(1)).await;
    let client = connect(&fake).await;
    let entries: Vec<Entry> = (0..700)
        .map(|i| Entry::new("one-key", format!("{i}")))
        .collect();
    let put = tokio::spawn({
        let client = client.clone();
        async move { client.put_records("s", entries).await }
    });
    let data = |records: &[(String, Vec<u8>)]| -> Vec<usize> {
        records
            .iter()
            .map(|(_, d)| String::from_utf8(d.clone()).unwrap().parse().unwrap())
            .collect()
    };
    // The first batch is full; the shard takes 200 and throttles the rest.
    let r = fake.next().await;
    let (_, _, records) = r.put_batch();
    assert_eq!(data(&records), (0..500).collect::<Vec<_>>());
    r.accept_batch(0, 200, Some((ErrorCode::Throttled, 3)));
    // The refused tail comes back first (not the records after the batch).
    let r = fake.next().await;
    assert_eq!(data(&r.put_batch().2), (200..700).collect::<Vec<_>>());
    // Throttled entirely, as an error response this time.
    r.error(ErrorCode::Throttled, 2);
    let r = fake.next().await;
    assert_eq!(data(&r.put_batch().2), (200..700).collect::<Vec<_>>());
    r.accept_batch(200, 500, None);
    let results = put.await.unwrap();
    let seqs: Vec<u64> = results.into_iter().map(|r| r.unwrap().seq).collect();
    assert_eq!(seqs, (0..700).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_final_failure_fails_the_rest_of_the_shard_unsent() {
    let mut fake = fake::start(1, setup(1)).await;
    let client = connect(&fake).await;
    let entries: Vec<Entry> = (0..700).map(|i| Entry::new("k", format!("{i}"))).collect();
    let put = tokio::spawn({
        let client = client.clone();
        async move { client.put_records("s", entries).await }
    });
    let r = fake.next().await;
    assert_eq!(r.put_batch().2.len(), 500);
    r.accept_batch(10, 100, Some((ErrorCode::ShardPoisoned, 0)));
    // Completing proves nothing else was sent: it would have needed an answer first.
    let results = put.await.unwrap();
    assert_eq!(results.len(), 700);
    for (i, r) in results.iter().enumerate() {
        if i < 100 {
            assert_eq!(r.as_ref().unwrap().seq, 10 + i as u64);
        } else {
            let err = r.as_ref().unwrap_err();
            assert_eq!(err.code(), Some(ErrorCode::ShardPoisoned), "record {i}");
            assert_eq!(
                err.to_string().contains("not sent"),
                i > 100,
                "record {i}: {err}"
            );
        }
    }
    assert!(fake.requests.try_recv().is_err());
}

#[tokio::test]
async fn invalid_records_fail_in_their_place_and_stop_their_shard_only() {
    const SHARDS: u32 = 2;
    let mut fake = fake::start(1, setup(SHARDS)).await;
    let client = connect(&fake).await;
    let (a, b) = (key_for(0, SHARDS, 0), key_for(1, SHARDS, 1));
    let entries = vec![
        Entry::new(a.clone(), "a0"),
        Entry::new(b.clone(), "b0"),
        Entry::new(a.clone(), vec![0u8; (1 << 20) + 1]), // over the stream's data limit
        Entry::new(b.clone(), "b1"),
        Entry::new(a.clone(), "a2"),
        Entry::new("x".repeat(257), "bad key"),
    ];
    let put = tokio::spawn({
        let client = client.clone();
        async move { client.put_records("s", entries).await }
    });
    // Both shards live on the one core: their batches travel in one request.
    let r = fake.next().await;
    let puts = r.puts();
    assert_eq!(
        puts.len(),
        2,
        "one put-batches request for the core's two shards"
    );
    for (_, shard, records) in &puts {
        let data: Vec<&[u8]> = records.iter().map(|(_, d)| d.as_slice()).collect();
        match shard {
            0 => assert_eq!(
                data,
                vec![b"a0".as_slice()],
                "shard 0 stops at the big record"
            ),
            _ => assert_eq!(data, vec![b"b0".as_slice(), b"b1".as_slice()]),
        }
    }
    r.accept_all(|_| 0);
    let results = put.await.unwrap();
    let codes: Vec<Option<ErrorCode>> = results
        .iter()
        .map(|r| r.as_ref().err().and_then(ClientError::code))
        .collect();
    let big = Some(ErrorCode::RecordTooLarge);
    assert_eq!(codes[..5], [None, None, big, None, big]);
    assert!(results[5].is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_the_address_the_user_gave_and_the_core() {
    // Two cores: shard 1 lives on core 1, whose port the user never typed.
    let mut fake = fake::start(2, setup(2)).await;
    let client = connect(&fake).await;
    let call = tokio::spawn({
        let client = client.clone();
        let key = key_for(1, 2, 0);
        async move { client.put_record("s", &key, "x", None).await }
    });
    let req = fake.next().await;
    assert_eq!(req.core, 1);
    req.close_connection();
    let err = call.await.unwrap().unwrap_err().to_string();
    let want = format!(
        "connection to {} (core 1 at {}) lost",
        fake.addrs[0], fake.addrs[1]
    );
    assert!(err.starts_with(&want), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_fails_in_flight_requests_and_the_next_one_reconnects() {
    let mut fake = fake::start(1, setup(1)).await;
    let client = connect(&fake).await;
    let mut calls = Vec::new();
    for i in 0..5 {
        let client = client.clone();
        calls.push(tokio::spawn(async move {
            client.put_record("s", &format!("k{i}"), "x", None).await
        }));
    }
    let mut reqs = Vec::new();
    for _ in 0..5 {
        reqs.push(fake.next().await);
    }
    reqs[0].close_connection();
    for call in calls {
        let err = call.await.unwrap().unwrap_err();
        assert!(matches!(err, ClientError::ConnectionLost { .. }), "{err:?}");
        assert!(err.is_retryable() && !err.is_safe_to_retry());
    }
    let again = tokio::spawn({
        let client = client.clone();
        async move { client.put_record("s", "k", "x", None).await }
    });
    let r = fake.next().await;
    assert_ne!(r.conn, reqs[0].conn, "a new connection");
    r.respond(&Response::PutRecord(PutRecordResponse {
        shard_id: 0,
        seq: 9,
    }));
    assert_eq!(again.await.unwrap().unwrap().seq, 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_go_to_the_shard_whose_range_holds_their_md5_on_its_core() {
    const SHARDS: u32 = 4;
    let mut fake = fake::start(2, setup(SHARDS)).await;
    let client = connect(&fake).await;
    let entries: Vec<Entry> = (0..400)
        .map(|i| Entry::new(format!("user-{i}"), format!("{i}")))
        .collect();
    let expected: Vec<u32> = entries
        .iter()
        .map(|e| {
            let h = hash_key(e.key.as_bytes());
            (0..SHARDS)
                .find(|&s| {
                    let (lo, hi) = even_range(s, SHARDS);
                    (lo..=hi).contains(&h)
                })
                .unwrap()
        })
        .collect();
    // An explicit hash key overrides the MD5.
    let mut entries = entries;
    entries.push(Entry::new("user-0", "ehk").with_explicit_hash_key(u128::MAX));
    let mut expected = expected;
    expected.push(SHARDS - 1);
    let put = tokio::spawn({
        let client = client.clone();
        async move { client.put_records("s", entries).await }
    });
    let shards_hit = expected
        .iter()
        .collect::<std::collections::HashSet<_>>()
        .len();
    // One request per core, each carrying that core's shards.
    let mut seen = 0;
    while seen < shards_hit {
        let r = fake.next().await;
        for (_, shard, records) in r.puts() {
            assert_eq!(
                u32::from(r.core),
                shard % 2,
                "shard {shard} sent to its own core"
            );
            let (lo, hi) = even_range(shard, SHARDS);
            for (key, data) in &records {
                if data != b"ehk" {
                    assert!(
                        (lo..=hi).contains(&hash_key(key.as_bytes())),
                        "{key} in shard {shard}"
                    );
                }
            }
            seen += 1;
        }
        r.accept_all(|shard| u64::from(shard) * 1000);
    }
    let results = put.await.unwrap();
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.as_ref().unwrap().shard_id, expected[i], "record {i}");
    }
    // The client's own routing table agrees.
    let map = client.shard_map("s").await.unwrap();
    assert_eq!(map.route(b"user-1", None).unwrap().shard_id, expected[1]);
    assert_eq!(map.core_of(3), Some(1));
}

#[tokio::test]
async fn the_producer_batches_per_shard_keeps_one_batch_in_flight_and_key_order() {
    const SHARDS: u32 = 2;
    let mut fake = fake::start(1, setup(SHARDS)).await;
    let client = connect(&fake).await;
    let config = ProducerConfig {
        linger: Duration::from_millis(1),
        batch_records_max: 50,
        ..ProducerConfig::default()
    };
    let producer = client.producer("s", config).await.unwrap();
    let keys = [key_for(0, SHARDS, 0), key_for(1, SHARDS, 1)];
    let mut handles = Vec::new();
    for i in 0..300usize {
        let key = &keys[i % 2];
        handles.push((i, producer.send(key.clone(), format!("{i}")).await.unwrap()));
    }
    let flushed = tokio::spawn(async move {
        producer.flush().await;
        producer
    });
    // Answer each shard's batches, accepting only part of every other batch. Each shard's
    // next batch must start right after what was accepted: a second batch in flight, or a
    // retry out of order, would show up as a gap or an overlap.
    let mut next_expected = [0usize, 1usize];
    let mut next_seq = [0u64; 2];
    let mut round = 0;
    while next_expected.iter().any(|&n| n < 300) {
        let r = fake.next().await;
        // Both shards' batches may come in one put-batches request, or one each.
        let puts = r.puts();
        let mut answers = std::collections::HashMap::new();
        for (_, shard, records) in &puts {
            let s = *shard as usize;
            let got: Vec<usize> = records
                .iter()
                .map(|(_, d)| String::from_utf8(d.clone()).unwrap().parse().unwrap())
                .collect();
            assert!(records.iter().all(|(k, _)| *k == keys[s]));
            let want: Vec<usize> = (0..got.len()).map(|j| next_expected[s] + 2 * j).collect();
            assert_eq!(got, want, "shard {shard} batch out of order");
            round += 1;
            let accepted = if round % 2 == 0 {
                got.len().div_ceil(2)
            } else {
                got.len()
            } as u32;
            let rejected = (accepted < got.len() as u32).then_some(Rejection {
                code: ErrorCode::Throttled,
                retry_after_ms: 1,
            });
            answers.insert(
                *shard,
                PutBatchResponse {
                    shard_id: *shard,
                    base_seq: next_seq[s],
                    accepted,
                    rejected,
                },
            );
            next_seq[s] += u64::from(accepted);
            next_expected[s] += 2 * accepted as usize;
        }
        r.answer_puts(|shard, _| answers[&shard]);
    }
    let producer = flushed.await.unwrap();
    let mut per_shard_seq = [0u64; 2];
    for (i, handle) in handles {
        let r = handle.await.unwrap();
        assert_eq!(r.shard_id as usize, i % 2);
        assert_eq!(r.seq, per_shard_seq[i % 2], "record {i}");
        per_shard_seq[i % 2] += 1;
    }
    producer.close().await;
}

/// `send_with`: each record's outcome reaches its callback, in send order per key, mixed
/// with handle sends; a flush returns only once every callback of the records before it
/// has run; a callback that panics costs nothing but its own record.
#[tokio::test]
async fn the_producer_settles_callbacks_in_order_and_flush_waits_for_them() {
    const SHARDS: u32 = 2;
    let mut fake = fake::start(1, setup(SHARDS)).await;
    let client = connect(&fake).await;
    let config = ProducerConfig {
        linger: Duration::from_millis(1),
        batch_records_max: 40,
        ..ProducerConfig::default()
    };
    let producer = client.producer("s", config).await.unwrap();
    let keys = [key_for(0, SHARDS, 0), key_for(1, SHARDS, 1)];
    let settled = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    for i in 0..200usize {
        let key = keys[i % 2].clone();
        if i % 5 == 4 {
            handles.push((i, producer.send(key, format!("{i}")).await.unwrap()));
            continue;
        }
        let settled = settled.clone();
        producer
            .send_with(key, format!("{i}"), move |r| {
                settled
                    .lock()
                    .unwrap()
                    .push((i, r.map(|r| (r.shard_id, r.seq))));
                assert_ne!(i, 7, "a callback that panics");
            })
            .await
            .unwrap();
    }
    let flushed = tokio::spawn(async move {
        producer.flush().await;
        producer
    });
    let mut next_seq = [0u64; 2];
    let mut answered = 0;
    while answered < 200 {
        assert!(
            !flushed.is_finished(),
            "a flush returned with records unanswered"
        );
        let r = fake.next().await;
        let mut answers = std::collections::HashMap::new();
        for (_, shard, records) in r.puts() {
            let s = shard as usize;
            answers.insert(
                shard,
                PutBatchResponse {
                    shard_id: shard,
                    base_seq: next_seq[s],
                    accepted: records.len() as u32,
                    rejected: None,
                },
            );
            next_seq[s] += records.len() as u64;
            answered += records.len();
        }
        r.answer_puts(|shard, _| answers[&shard]);
    }
    let producer = flushed.await.unwrap();
    // Every callback ran before the flush returned, the panicking one included.
    let got = std::mem::take(&mut *settled.lock().unwrap());
    assert_eq!(got.len(), 160);
    // Per shard, records were stored in send order (handles and callbacks together).
    let mut by_index: Vec<(usize, (u32, u64))> = got
        .into_iter()
        .map(|(i, r)| (i, r.expect("acknowledged")))
        .collect();
    for (i, handle) in handles {
        let r = handle.await.unwrap();
        by_index.push((i, (r.shard_id, r.seq)));
    }
    by_index.sort();
    let mut seq = [0u64; 2];
    for (i, (shard, s)) in by_index {
        assert_eq!(shard as usize, i % 2, "record {i}");
        assert_eq!(s, seq[i % 2], "record {i}");
        seq[i % 2] += 1;
    }
    // The worker survived the panic: a later record still settles.
    let (tx, rx) = tokio::sync::oneshot::channel();
    producer
        .send_with(keys[0].clone(), "after", move |r| {
            let _ = tx.send(r.map(|r| r.seq));
        })
        .await
        .unwrap();
    let r = fake.next().await;
    r.answer_puts(|shard, _| PutBatchResponse {
        shard_id: shard,
        base_seq: 100,
        accepted: 1,
        rejected: None,
    });
    assert_eq!(rx.await.unwrap().unwrap(), 100);
    producer.close().await;
}

/// A producer over many shards: a record sent alone to each of 256 shards goes out once
/// its linger passes (no flush, no later record to fill its batch), in few requests, and
/// every handle resolves to its shard.
#[tokio::test]
async fn the_producer_sends_each_of_many_shards_after_its_linger() {
    const SHARDS: u32 = 256;
    let mut fake = fake::start(1, setup(SHARDS)).await;
    let client = connect(&fake).await;
    let config = ProducerConfig {
        linger: Duration::from_millis(2),
        ..ProducerConfig::default()
    };
    let producer = client.producer("s", config).await.unwrap();
    let mut handles = Vec::new();
    for shard in 0..SHARDS {
        let key = key_for(shard, SHARDS, shard as usize);
        handles.push((shard, producer.send(key, "x").await.unwrap()));
    }
    let mut seen = 0;
    let mut requests = 0;
    while seen < SHARDS as usize {
        let r = tokio::time::timeout(Duration::from_secs(30), fake.next())
            .await
            .expect("every shard's record goes out after its linger");
        requests += 1;
        seen += r
            .puts()
            .iter()
            .map(|(_, _, records)| records.len())
            .sum::<usize>();
        r.answer_puts(|shard, _| PutBatchResponse {
            shard_id: shard,
            base_seq: 7,
            accepted: 1,
            rejected: None,
        });
    }
    assert!(
        requests < SHARDS,
        "{requests} requests for {SHARDS} one-record batches"
    );
    for (shard, handle) in handles {
        let r = handle.await.unwrap();
        assert_eq!((r.shard_id, r.seq), (shard, 7));
    }
    producer.close().await;
}

/// `queued_records_max_per_shard` bounds each shard's queue on its own: with a batch of
/// shard 0 in flight and its queue full, a send to shard 0 waits (and one to shard 1 does
/// not) until the answer lets the next batch go; everything is acknowledged in order.
#[tokio::test]
async fn a_full_shard_queue_makes_its_sends_wait_and_no_other_shards() {
    const SHARDS: u32 = 2;
    let mut fake = fake::start(1, setup(SHARDS)).await;
    let client = connect(&fake).await;
    let config = ProducerConfig {
        linger: Duration::from_secs(3600),
        batch_records_max: 5,
        queued_records_max_per_shard: 10,
        ..ProducerConfig::default()
    };
    let producer = Arc::new(client.producer("s", config).await.unwrap());
    let (k0, k1) = (key_for(0, SHARDS, 0), key_for(1, SHARDS, 1));
    let mut handles = Vec::new();
    // A full batch goes at once (no linger): shard 0 then has a batch in flight.
    for i in 0..5 {
        handles.push(producer.send(k0.clone(), format!("{i}")).await.unwrap());
    }
    let first = fake.next().await;
    assert_eq!(first.puts()[0].2.len(), 5);
    // Ten more fit its queue.
    for i in 5..15 {
        handles.push(producer.send(k0.clone(), format!("{i}")).await.unwrap());
    }
    // The next one waits for room...
    let p = producer.clone();
    let k = k0.clone();
    // (The handle comes back in a tuple: a task yielding a future is a lint.)
    let waiting = tokio::spawn(async move { (p.send(k, "15").await.unwrap(),) });
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert!(!waiting.is_finished(), "a full shard's send waits");
    // ... and another shard's does not.
    let other = producer.send(k1.clone(), "x").await.unwrap();
    // The answer lets shard 0's next batch go, which makes room.
    first.accept_all(|_| 0);
    handles.push(waiting.await.unwrap().0);
    // The rest lingers: a flush sends it.
    let p = producer.clone();
    let flushed = tokio::spawn(async move { p.flush().await });
    let mut next_seq = 5u64;
    let mut other_records = 0;
    while next_seq < 16 || other_records == 0 {
        let r = fake.next().await;
        let mut seqs = std::collections::HashMap::new();
        for (_, shard, records) in &r.puts() {
            if *shard == 0 {
                seqs.insert(0u32, next_seq);
                next_seq += records.len() as u64;
            } else {
                seqs.insert(1u32, 0);
                other_records += records.len();
            }
        }
        r.accept_all(|shard| seqs[&shard]);
    }
    flushed.await.unwrap();
    assert_eq!((next_seq, other_records), (16, 1));
    for (i, h) in handles.into_iter().enumerate() {
        let r = h.await.unwrap();
        assert_eq!((r.shard_id, r.seq), (0, i as u64), "record {i}");
    }
    assert_eq!(other.await.unwrap().shard_id, 1);
    Arc::try_unwrap(producer).unwrap().close().await;
}

/// A send dropped while it waits for room in its shard's queue gives its share of the byte
/// budget back: afterwards the whole budget is there for new records.
#[tokio::test]
async fn a_send_dropped_while_waiting_for_room_gives_its_budget_back() {
    const SHARDS: u32 = 3;
    let mut fake = fake::start(1, setup(SHARDS)).await;
    let client = connect(&fake).await;
    let key = |shard: u32| key_for(shard, SHARDS, shard as usize);
    // Three records' worth of budget; every record is a batch of its own.
    let cost = key(0).len().max(key(1).len()).max(key(2).len()) + 1;
    let config = ProducerConfig {
        linger: Duration::from_secs(3600),
        batch_records_max: 1,
        queued_records_max_per_shard: 1,
        buffered_bytes_max: 3 * cost,
        ..ProducerConfig::default()
    };
    let producer = Arc::new(client.producer("s", config).await.unwrap());
    let pad = move |k: &String| "x".repeat(cost - k.len());
    let k0 = key(0);
    // One in flight, one queued: shard 0 is full.
    let a = producer.send(k0.clone(), pad(&k0)).await.unwrap();
    let first = fake.next().await;
    let b = producer.send(k0.clone(), pad(&k0)).await.unwrap();
    let p = producer.clone();
    let k = k0.clone();
    let waiting = tokio::spawn(async move { (p.send(k.clone(), pad(&k)).await.unwrap(),) });
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert!(!waiting.is_finished(), "a full shard's send waits");
    waiting.abort();
    assert!(waiting.await.unwrap_err().is_cancelled());
    // Both settle.
    first.accept_all(|_| 0);
    fake.next().await.accept_all(|_| 1);
    assert_eq!(a.await.unwrap().seq, 0);
    assert_eq!(b.await.unwrap().seq, 1);
    // The whole budget is back: three records, one per shard, go out at once.
    let mut handles = Vec::new();
    for shard in 0..SHARDS {
        let k = key(shard);
        let sent = tokio::time::timeout(Duration::from_secs(30), producer.send(k.clone(), pad(&k)))
            .await
            .expect("the dropped send's budget came back");
        handles.push(sent.unwrap());
    }
    let mut seen = 0;
    while seen < SHARDS as usize {
        let r = fake.next().await;
        seen += r.puts().len();
        r.accept_all(|_| 7);
    }
    for h in handles {
        assert_eq!(h.await.unwrap().seq, 7);
    }
    Arc::try_unwrap(producer).unwrap().close().await;
}

fn stored_batch(base_seq: u64, n: u32, ts_ms: i64) -> Vec<u8> {
    let mut b = BatchBuilder::new();
    for i in 0..n {
        b.push(
            b"k",
            format!("r{}", base_seq + u64::from(i)).as_bytes(),
            None,
        )
        .unwrap();
    }
    let mut batch = b.finish();
    stamp(&mut batch, base_seq, ts_ms, 1);
    batch
}

fn records_frame(id: u64, start: u64, end: u64, batches: &[&[u8]], token: &[u8]) -> Vec<u8> {
    let head = GetRecordsHead {
        start_seq: start,
        end_seq: end,
        millis_behind_latest: 0,
        next_iterator: Some(token),
        child_shards: Default::default(),
    };
    let mut out = Vec::new();
    encode_get_records_response(&mut out, id, &head, batches.iter().copied());
    out
}

#[tokio::test]
async fn reads_are_verified_and_the_reader_retries_and_renews_its_iterator() {
    let mut fake = fake::start(1, setup(1)).await;
    let client = connect(&fake).await;
    let options = ReadOptions {
        max_records: 100,
        max_bytes: 1 << 20,
        wait_ms: 0,
    };
    let open = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .shard_reader("s", 0, Position::TrimHorizon, options)
                .await
        }
    });
    let r = fake.next().await;
    let Request::GetIterator(g) = r.request() else {
        panic!()
    };
    assert_eq!((g.shard_id, g.position), (0, Position::TrimHorizon));
    r.respond(&Response::GetIterator(GetIteratorResponse {
        iterator: b"t1",
    }));
    let mut reader = open.await.unwrap().unwrap();

    let next = tokio::spawn(async move {
        let first = reader.next().await;
        (reader, first)
    });
    let r = fake.next().await;
    let Request::GetRecords(g) = r.request() else {
        panic!()
    };
    assert_eq!(g.iterator, b"t1");
    // The first batch starts before the range: only records 2..5 are returned.
    let a = stored_batch(0, 3, 1000);
    let b = stored_batch(3, 2, 1001);
    r.respond_raw(records_frame(r.id, 2, 5, &[&a, &b], b"t2"));
    let (mut reader, first) = next.await.unwrap();
    let first = first.unwrap().unwrap();
    let seqs: Vec<u64> = first.records.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, vec![2, 3, 4]);
    assert_eq!(&first.records[1].data[..], b"r3");
    assert_eq!(first.records[1].ts_ms, 1001);
    assert_eq!(first.records[0].key, "k");

    let next = tokio::spawn(async move {
        let second = reader.next().await;
        (reader, second)
    });
    // The iterator expired: the reader opens one after the last record it returned.
    let r = fake.next().await;
    let Request::GetRecords(g) = r.request() else {
        panic!()
    };
    assert_eq!(g.iterator, b"t2");
    r.error(ErrorCode::IteratorExpired, 0);
    let r = fake.next().await;
    let Request::GetIterator(g) = r.request() else {
        panic!()
    };
    assert_eq!(g.position, Position::AfterSequenceNumber { seq: 4 });
    r.respond(&Response::GetIterator(GetIteratorResponse {
        iterator: b"t3",
    }));
    // Read-throttled: retried after the hint.
    let r = fake.next().await;
    r.error(ErrorCode::ReadThrottled, 1);
    let r = fake.next().await;
    let Request::GetRecords(g) = r.request() else {
        panic!()
    };
    assert_eq!(g.iterator, b"t3");
    let mut corrupt = stored_batch(5, 1, 1002);
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0x55;
    r.respond_raw(records_frame(r.id, 5, 6, &[&corrupt], b"t4"));
    let (_, second) = next.await.unwrap();
    let err = second.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ChecksumMismatch), "{err}");
}

#[tokio::test]
async fn server_errors_carry_their_code_and_unknown_streams_fail_cleanly() {
    let fake = fake::start(1, setup(1)).await;
    let client = connect(&fake).await;
    let err = client.describe_stream("nope").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UnknownStream));
    assert!(!err.is_retryable());
    let results = client.put_records("nope", vec![Entry::new("k", "v")]).await;
    assert_eq!(
        results[0].as_ref().unwrap_err().code(),
        Some(ErrorCode::UnknownStream)
    );
    let err = client
        .put_record("bad name", "k", "v", None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidArgument));
    let err = Client::connect("127.0.0.1:1").await.unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
    assert_eq!(client.server_info().cores.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_batches_outcomes_apply_per_shard_and_only_the_throttled_shard_is_retried() {
    const SHARDS: u32 = 3;
    let mut fake = fake::start(1, setup(SHARDS)).await;
    let client = connect(&fake).await;
    let keys: Vec<String> = (0..SHARDS)
        .map(|s| key_for(s, SHARDS, s as usize))
        .collect();
    let entries: Vec<Entry> = (0..SHARDS)
        .flat_map(|s| (0..3).map(move |i| (s, i)))
        .map(|(s, i)| Entry::new(keys[s as usize].clone(), format!("{s}-{i}")))
        .collect();
    let put = tokio::spawn({
        let client = client.clone();
        async move { client.put_records("s", entries).await }
    });
    // First step: one request with the three shards. Shard 0 is stored whole, shard 1 has
    // its last two records throttled, shard 2 fails for good (not safe to retry).
    let r = fake.next().await;
    assert_eq!(r.puts().len(), 3);
    let outcomes = r
        .puts()
        .iter()
        .map(|(_, shard, records)| match shard {
            0 => ShardOutcome::Stored(PutBatchResponse {
                shard_id: 0,
                base_seq: 100,
                accepted: records.len() as u32,
                rejected: None,
            }),
            1 => ShardOutcome::Stored(PutBatchResponse {
                shard_id: 1,
                base_seq: 200,
                accepted: 1,
                rejected: Some(Rejection {
                    code: ErrorCode::Throttled,
                    retry_after_ms: 1,
                }),
            }),
            _ => ShardOutcome::Failed(spate_protocol::ShardFailure {
                shard_id: 2,
                code: ErrorCode::WrongShard,
                retry_after_ms: 0,
                message: "no",
                shard_map_version: 0,
            }),
        })
        .collect();
    r.respond(&Response::PutBatches(PutBatchesResponse { outcomes }));
    // Second step: only shard 1's refused tail, in order.
    let r = fake.next().await;
    let puts = r.puts();
    assert_eq!(puts.len(), 1);
    let (_, shard, records) = &puts[0];
    assert_eq!(*shard, 1);
    let data: Vec<&[u8]> = records.iter().map(|(_, d)| d.as_slice()).collect();
    assert_eq!(data, vec![b"1-1".as_slice(), b"1-2".as_slice()]);
    r.accept_all(|_| 201);
    let results = put.await.unwrap();
    let seqs: Vec<Option<u64>> = results
        .iter()
        .map(|r| r.as_ref().ok().map(|p| p.seq))
        .collect();
    assert_eq!(
        seqs,
        vec![
            Some(100),
            Some(101),
            Some(102),
            Some(200),
            Some(201),
            Some(202),
            None,
            None,
            None
        ]
    );
    assert_eq!(
        results[6].as_ref().unwrap_err().code(),
        Some(ErrorCode::WrongShard)
    );
}

#[tokio::test]
async fn an_unknown_outcome_is_reported_and_never_retried() {
    let mut fake = fake::start(1, setup(1)).await;
    let client = connect(&fake).await;
    let entries: Vec<Entry> = (0..10).map(|i| Entry::new("k", format!("{i}"))).collect();
    let put = tokio::spawn({
        let client = client.clone();
        async move { client.put_records("s", entries).await }
    });
    fake.next().await.error(ErrorCode::OutcomeUnknown, 0);
    let results = put.await.unwrap();
    for r in &results {
        let err = r.as_ref().unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::OutcomeUnknown));
        assert!(
            !err.is_safe_to_retry(),
            "a blind retry could store it twice"
        );
    }
    assert!(fake.requests.try_recv().is_err(), "nothing was sent again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encryption_requests_carry_their_type_and_a_missing_key_is_not_retried() {
    let mut fake = fake::start(
        1,
        Setup {
            master_key_id: Some(3),
            ..setup(1)
        },
    )
    .await;
    let client = connect(&fake).await;
    let info = client.describe_stream("s").await.unwrap();
    assert_eq!(
        (info.encryption, info.key_epochs, info.master_key_id),
        (EncryptionType::Aes256Gcm, 1, Some(3))
    );

    // A create asks for the type it was given; KeyUnavailable comes back once, unretried.
    let c = client.clone();
    let config = StreamConfig::new(2).encryption(EncryptionType::Aes256Gcm);
    let create = tokio::spawn(async move { c.create_stream("e", &config).await });
    let req = fake.next().await;
    let Request::CreateStream(r) = req.request() else {
        panic!("opcode {}", req.opcode)
    };
    assert_eq!((r.name, r.encryption), ("e", EncryptionType::Aes256Gcm));
    req.error(ErrorCode::KeyUnavailable, 0);
    let err = create.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::KeyUnavailable));
    assert!(!err.is_retryable(), "{err}");
    assert_eq!(StreamConfig::new(1).encryption, EncryptionType::None);

    // Start and stop: their own opcodes, the same body.
    for start in [true, false] {
        let c = client.clone();
        let call = tokio::spawn(async move {
            if start {
                c.start_stream_encryption("s").await
            } else {
                c.stop_stream_encryption("s").await
            }
        });
        let req = fake.next().await;
        let (body, response) = match req.request() {
            Request::StartStreamEncryption(b) if start => (b, Response::StartStreamEncryption),
            Request::StopStreamEncryption(b) if !start => (b, Response::StopStreamEncryption),
            _ => panic!("start {start}: opcode {}", req.opcode),
        };
        assert_eq!(
            (body.name, body.encryption),
            ("s", EncryptionType::Aes256Gcm)
        );
        req.respond(&response);
        call.await.unwrap().unwrap();
    }
    assert!(client.start_stream_encryption("bad name").await.is_err());

    let c = client.clone();
    let rotate = tokio::spawn(async move { c.rotate_keys().await });
    let req = fake.next().await;
    assert!(matches!(req.request(), Request::RotateKeys));
    let answer = RotateKeysResponse {
        master_key_id: 4,
        streams: 2,
    };
    req.respond(&Response::RotateKeys(answer));
    assert_eq!(rotate.await.unwrap().unwrap(), answer);
}
