//! Soak: mixed load against a server that is killed with SIGKILL and restarted at random
//! moments, then a full verification (issue 13).
//!
//! `soak [--duration SECS] [--kill-every MIN-MAX] [--seed N] [--data-dir DIR]`
//!
//! Runs the `test_server` binary next to this one (the test configuration) on a data
//! directory, and against it, all at once:
//! - producers, each putting batches of its own partition key (so to one shard) in order,
//!   every record tagged `producer:counter`; a put whose connection breaks has an unknown
//!   outcome and is never sent again (so nothing may be duplicated);
//! - consumers, one per shard, following it with long-polls and checking what they see;
//! - control operations: streams created, written, their retention changed, deleted;
//! - hostile connections: garbage, half frames, pipelined reads never read, silence;
//! - a killer: SIGKILL of the server every MIN-MAX seconds, and a restart.
//!
//! At the end the server is stopped cleanly and restarted, every shard is read from the
//! trim horizon, and: every acknowledged record must be there (lost), no record twice
//! (duplicated), each producer's records in its order (reordered), and everything a
//! consumer saw must still be there. Prints one JSON line; exits 1 if any check failed.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use spate_engine::sim::SimRng;
use spate_protocol::batch::BatchBuilder;
use spate_protocol::{
    CreateStreamRequest, DeleteStreamRequest, ErrorCode, GetIteratorRequest, GetRecordsRequest,
    IteratorPosition, Limits, PutBatchRequest, Request, Response, RetentionRequest,
};
use spate_tests::{key_for_shard, ChildServer};

const STREAM: &str = "soak";
const SHARDS: u32 = 4;
const PRODUCERS: u32 = 6;

/// The server's current address (it changes at every restart: port 0).
type Addr = Arc<RwLock<SocketAddr>>;

/// A blocking wire client that reports failures instead of panicking.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    cid: u64,
}

#[derive(Debug)]
enum CallError {
    /// The connection broke: the outcome of the request is unknown.
    Lost,
    /// The server answered with an error.
    Server(ErrorCode),
}

impl Conn {
    fn connect(addr: &Addr) -> Option<Conn> {
        let a = *addr.read().unwrap();
        let stream = TcpStream::connect_timeout(&a, Duration::from_secs(2)).ok()?;
        stream.set_nodelay(true).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .ok()?;
        Some(Conn {
            stream,
            buf: Vec::new(),
            cid: 0,
        })
    }

    /// Sends a request and returns the answer's frame bytes.
    fn call_raw(&mut self, req: &Request<'_>) -> Result<Vec<u8>, CallError> {
        self.cid += 1;
        let mut out = Vec::new();
        spate_protocol::encode_request(&mut out, self.cid, req);
        self.stream.write_all(&out).map_err(|_| CallError::Lost)?;
        loop {
            match spate_protocol::decode_frame(&self.buf, usize::MAX) {
                Ok(Some(f)) => {
                    let len = f.encoded_len();
                    let frame: Vec<u8> = self.buf.drain(..len).collect();
                    return Ok(frame);
                }
                Ok(None) => {}
                Err(_) => return Err(CallError::Lost),
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(CallError::Lost),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return Err(CallError::Lost),
            }
        }
    }

    /// Sends a request; `f` sees the decoded answer.
    fn call<T>(
        &mut self,
        req: &Request<'_>,
        f: impl FnOnce(&Response<'_>) -> T,
    ) -> Result<T, CallError> {
        let frame = self.call_raw(req)?;
        let frame = spate_protocol::decode_frame(&frame, usize::MAX)
            .map_err(|_| CallError::Lost)?
            .ok_or(CallError::Lost)?;
        match spate_protocol::decode_response(&frame) {
            Ok(Ok(r)) => Ok(f(&r)),
            Ok(Err(e)) => Err(CallError::Server(e.code)),
            Err(_) => Err(CallError::Lost),
        }
    }
}

/// One acknowledged put: `n` records of `producer` from `counter`, at `base_seq` of `shard`.
#[derive(Debug, Clone, Copy)]
struct Acked {
    shard: u32,
    base_seq: u64,
    producer: u32,
    counter: u64,
    n: u32,
}

#[derive(Default)]
struct Counters {
    puts_acked: AtomicU64,
    records_acked: AtomicU64,
    puts_unknown: AtomicU64,
    retries: AtomicU64,
    consumer_records: AtomicU64,
    consumer_errors: AtomicU64,
    control_ops: AtomicU64,
    hostile: AtomicU64,
}

struct Shared {
    addr: Addr,
    stop: AtomicBool,
    acked: Mutex<Vec<Acked>>,
    /// What consumers saw: (shard, seq) -> (producer, counter).
    seen: Mutex<HashMap<(u32, u64), Tag>>,
    counters: Counters,
}

fn producer(sh: Arc<Shared>, p: u32, seed: u64) {
    let mut rng = SimRng::new(seed);
    let shard = p % SHARDS;
    let key = key_for_shard(shard, SHARDS);
    let mut counter = 0u64;
    let mut conn: Option<Conn> = None;
    while !sh.stop.load(Ordering::Relaxed) {
        let Some(c) = conn.as_mut() else {
            conn = Conn::connect(&sh.addr);
            if conn.is_none() {
                std::thread::sleep(Duration::from_millis(50));
            }
            continue;
        };
        let n = 1 + rng.below(20) as u32;
        let mut b = BatchBuilder::new();
        for i in 0..u64::from(n) {
            let mut data = format!("{p}:{}:", counter + i).into_bytes();
            data.resize(data.len() + rng.below(300) as usize, b'x');
            b.push(key.as_bytes(), &data, None).expect("valid record");
        }
        let batch = b.finish();
        // Sent until answered; a retry only after "nothing was done" answers.
        loop {
            let r = c.call(
                &Request::PutBatch(PutBatchRequest {
                    stream: STREAM,
                    shard_id: shard,
                    batch: &batch,
                }),
                |r| match r {
                    Response::PutBatch(p) => (p.base_seq, p.accepted),
                    other => panic!("unexpected answer {other:?}"),
                },
            );
            match r {
                Ok((base_seq, accepted)) => {
                    assert_eq!(accepted, n, "limits are off");
                    sh.acked.lock().unwrap().push(Acked {
                        shard,
                        base_seq,
                        producer: p,
                        counter,
                        n,
                    });
                    sh.counters.puts_acked.fetch_add(1, Ordering::Relaxed);
                    sh.counters
                        .records_acked
                        .fetch_add(u64::from(n), Ordering::Relaxed);
                    break;
                }
                Err(CallError::Server(code))
                    if code.is_retryable() && code != ErrorCode::OutcomeUnknown =>
                {
                    sh.counters.retries.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(CallError::Server(code)) => panic!("producer {p}: put failed with {code}"),
                Err(CallError::Lost) => {
                    sh.counters.puts_unknown.fetch_add(1, Ordering::Relaxed);
                    conn = None;
                    break;
                }
            }
        }
        counter += u64::from(n);
        // A steady load, not a flood: the soak is about faults, and its disk use stays
        // small over half an hour (about 1 MB/s).
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A record's identity: (producer, counter).
type Tag = (u32, u64);

/// Decodes a read answer into (seq, tag) pairs.
fn decode_records(r: &Response<'_>) -> (Vec<(u64, Tag)>, Option<Vec<u8>>) {
    let Response::GetRecords(g) = r else {
        panic!("unexpected answer {r:?}")
    };
    let recs = spate_tests::records(g.batches.as_bytes(), g.head.start_seq, g.head.end_seq)
        .into_iter()
        .map(|(seq, _, data)| {
            let text = String::from_utf8_lossy(&data);
            let mut parts = text.splitn(3, ':');
            let mut num = || parts.next().and_then(|p| p.parse::<u64>().ok());
            let tag = match (num(), num()) {
                (Some(p), Some(n)) => (p as u32, n),
                _ => panic!("record {seq} is not producer:counter: {text:?}"),
            };
            (seq, tag)
        })
        .collect();
    (recs, g.head.next_iterator.map(<[u8]>::to_vec))
}

fn consumer(sh: Arc<Shared>, shard: u32) {
    let mut last: Option<u64> = None;
    let mut conn: Option<Conn> = None;
    let mut iterator: Option<Vec<u8>> = None;
    while !sh.stop.load(Ordering::Relaxed) {
        let Some(c) = conn.as_mut() else {
            conn = Conn::connect(&sh.addr);
            iterator = None;
            if conn.is_none() {
                std::thread::sleep(Duration::from_millis(50));
            }
            continue;
        };
        let Some(it) = iterator.as_ref() else {
            let position = match last {
                None => IteratorPosition::TrimHorizon,
                Some(seq) => IteratorPosition::AfterSequenceNumber { seq },
            };
            let req = Request::GetIterator(GetIteratorRequest {
                stream: STREAM,
                shard_id: shard,
                position,
            });
            match c.call(&req, |r| match r {
                Response::GetIterator(i) => i.iterator.to_vec(),
                other => panic!("unexpected answer {other:?}"),
            }) {
                Ok(i) => iterator = Some(i),
                Err(_) => {
                    sh.counters.consumer_errors.fetch_add(1, Ordering::Relaxed);
                    conn = None;
                }
            }
            continue;
        };
        let req = Request::GetRecords(GetRecordsRequest {
            iterator: it,
            max_records: 1000,
            max_bytes: 1 << 20,
            wait_ms: 500,
        });
        match c.call(&req, decode_records) {
            Ok((recs, next)) => {
                let mut seen = sh.seen.lock().unwrap();
                for (seq, tag) in recs {
                    assert!(
                        last.is_none_or(|l| seq > l),
                        "consumer of shard {shard} saw {seq} after {last:?}"
                    );
                    last = Some(seq);
                    seen.insert((shard, seq), tag);
                    sh.counters.consumer_records.fetch_add(1, Ordering::Relaxed);
                }
                iterator = next;
            }
            Err(_) => {
                sh.counters.consumer_errors.fetch_add(1, Ordering::Relaxed);
                conn = None;
            }
        }
    }
}

fn control(sh: Arc<Shared>, seed: u64) {
    let mut rng = SimRng::new(seed);
    let mut i = 0u64;
    while !sh.stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100 + rng.below(400)));
        let Some(mut c) = Conn::connect(&sh.addr) else {
            continue;
        };
        i += 1;
        let name = format!("churn-{}", i % 5);
        let ops: [Request<'_>; 3] = [
            Request::CreateStream(CreateStreamRequest {
                name: &name,
                shard_count: 1 + rng.below(8) as u32,
                retention_hours: 24,
                limits: Limits::Kinesis,
                max_record_data_bytes: None,
                encryption: Default::default(),
            }),
            Request::IncreaseRetention(RetentionRequest {
                name: &name,
                retention_hours: 48,
            }),
            Request::DeleteStream(DeleteStreamRequest { name: &name }),
        ];
        for op in &ops {
            if c.call(op, |_| ()).is_ok() {
                sh.counters.control_ops.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn hostile(sh: Arc<Shared>, seed: u64) {
    let mut rng = SimRng::new(seed);
    let mut held: Vec<TcpStream> = Vec::new();
    while !sh.stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50 + rng.below(200)));
        let a = *sh.addr.read().unwrap();
        let Ok(mut s) = TcpStream::connect_timeout(&a, Duration::from_secs(1)) else {
            continue;
        };
        let _ = s.set_write_timeout(Some(Duration::from_millis(200)));
        sh.counters.hostile.fetch_add(1, Ordering::Relaxed);
        match rng.below(4) {
            // Garbage.
            0 => {
                let junk: Vec<u8> = (0..rng.below(4096)).map(|_| rng.next_u64() as u8).collect();
                let _ = s.write_all(&junk);
            }
            // A header declaring 10 MB, then silence.
            1 => {
                let mut frame = Vec::new();
                spate_protocol::encode_request(
                    &mut frame,
                    1,
                    &Request::DeleteStream(DeleteStreamRequest { name: "x" }),
                );
                frame[..4].copy_from_slice(&10_000_000u32.to_le_bytes());
                let _ = s.write_all(&frame[..16]);
            }
            // Reads pipelined and never read.
            2 => {
                let mut frames = Vec::new();
                for i in 0..200 {
                    spate_protocol::encode_request(
                        &mut frames,
                        i,
                        &Request::ListStreams(spate_protocol::ListStreamsRequest {
                            exclusive_start_name: None,
                            limit: 1000,
                        }),
                    );
                }
                let _ = s.write_all(&frames);
            }
            // Silence.
            _ => {}
        }
        held.push(s);
        if held.len() > 20 {
            held.remove(rng.below(held.len() as u64) as usize);
        }
    }
}

struct Args {
    duration: Duration,
    kill_min: Duration,
    kill_max: Duration,
    seed: u64,
    data_dir: Option<PathBuf>,
}

fn args() -> Args {
    let mut a = Args {
        duration: Duration::from_secs(60),
        kill_min: Duration::from_secs(2),
        kill_max: Duration::from_secs(8),
        seed: 1,
        data_dir: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--duration" => a.duration = Duration::from_secs(value.parse().expect("seconds")),
            "--kill-every" => {
                let (lo, hi) = value.split_once('-').expect("MIN-MAX seconds");
                a.kill_min = Duration::from_secs_f64(lo.parse().expect("seconds"));
                a.kill_max = Duration::from_secs_f64(hi.parse().expect("seconds"));
            }
            "--seed" => a.seed = value.parse().expect("a number"),
            "--data-dir" => a.data_dir = Some(value.into()),
            _ => panic!("unknown flag {flag}"),
        }
    }
    a
}

fn main() {
    let a = args();
    let tmp;
    let dir = match &a.data_dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::tempdir().expect("temp dir");
            tmp.path().to_path_buf()
        }
    };
    let bin = std::env::current_exe()
        .expect("own path")
        .with_file_name("test_server");
    let mut server = ChildServer::start(&bin, &dir, "", false);
    let addr = server.addr;
    let mut c = Conn::connect(&Arc::new(RwLock::new(addr))).expect("connect");
    c.call(
        &Request::CreateStream(CreateStreamRequest {
            name: STREAM,
            shard_count: SHARDS,
            retention_hours: 24,
            limits: Limits::Off,
            max_record_data_bytes: None,
            encryption: Default::default(),
        }),
        |_| (),
    )
    .expect("create the soak stream");
    drop(c);
    let sh = Arc::new(Shared {
        addr: Arc::new(RwLock::new(addr)),
        stop: AtomicBool::new(false),
        acked: Mutex::new(Vec::new()),
        seen: Mutex::new(HashMap::new()),
        counters: Counters::default(),
    });
    let mut threads = Vec::new();
    for p in 0..PRODUCERS {
        let sh = sh.clone();
        threads.push(std::thread::spawn(move || {
            producer(sh, p, a.seed * 1000 + u64::from(p))
        }));
    }
    for shard in 0..SHARDS {
        let sh = sh.clone();
        threads.push(std::thread::spawn(move || consumer(sh, shard)));
    }
    {
        let sh = sh.clone();
        threads.push(std::thread::spawn(move || control(sh, a.seed * 7 + 1)));
    }
    {
        let sh = sh.clone();
        threads.push(std::thread::spawn(move || hostile(sh, a.seed * 13 + 5)));
    }
    // The killer.
    let mut rng = SimRng::new(a.seed * 31 + 3);
    let start = Instant::now();
    let mut kills = 0u64;
    loop {
        let span = (a.kill_max - a.kill_min).as_millis() as u64;
        let wait = a.kill_min + Duration::from_millis(rng.below(span + 1));
        let left = a.duration.saturating_sub(start.elapsed());
        if wait >= left {
            std::thread::sleep(left);
            break;
        }
        std::thread::sleep(wait);
        server.child.kill().expect("SIGKILL");
        server.child.wait().expect("reaped");
        kills += 1;
        server = ChildServer::start(&bin, &dir, "", false);
        *sh.addr.write().unwrap() = server.addr;
    }
    sh.stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("a load thread failed");
    }
    // A clean stop and restart, then everything is read back.
    server.stop();
    let server = ChildServer::start(&bin, &dir, "", false);
    let addr = Arc::new(RwLock::new(server.addr));
    let mut c = Conn::connect(&addr).expect("connect");
    let mut stored: BTreeMap<(u32, u64), Tag> = BTreeMap::new();
    for shard in 0..SHARDS {
        let mut it = c
            .call(
                &Request::GetIterator(GetIteratorRequest {
                    stream: STREAM,
                    shard_id: shard,
                    position: IteratorPosition::TrimHorizon,
                }),
                |r| match r {
                    Response::GetIterator(i) => i.iterator.to_vec(),
                    other => panic!("{other:?}"),
                },
            )
            .expect("iterator");
        loop {
            let (recs, next) = c
                .call(
                    &Request::GetRecords(GetRecordsRequest {
                        iterator: &it,
                        max_records: 10_000,
                        max_bytes: 10 << 20,
                        wait_ms: 0,
                    }),
                    decode_records,
                )
                .expect("read back");
            if recs.is_empty() {
                break;
            }
            for (seq, tag) in recs {
                stored.insert((shard, seq), tag);
            }
            it = next.expect("open shard");
        }
    }
    // The catalog after kills in the middle of creates, deletes and retention changes:
    // every stream it lists describes, with every shard open.
    let names = c
        .call(
            &Request::ListStreams(spate_protocol::ListStreamsRequest {
                exclusive_start_name: None,
                limit: 1000,
            }),
            |r| match r {
                Response::ListStreams(l) => {
                    l.names.iter().map(|n| n.to_string()).collect::<Vec<_>>()
                }
                other => panic!("{other:?}"),
            },
        )
        .expect("list");
    let mut inconsistent = 0u64;
    for name in &names {
        let ok = c.call(
            &Request::DescribeStream(spate_protocol::DescribeStreamRequest { name }),
            |r| match r {
                Response::DescribeStream(d) => d
                    .shards
                    .iter()
                    .all(|s| s.state == spate_protocol::ShardState::Open),
                _ => false,
            },
        );
        if ok.ok() != Some(true) {
            inconsistent += 1;
        }
    }
    server.stop();
    // Checks.
    let acked = sh.acked.lock().unwrap();
    let mut lost = 0u64;
    for a in acked.iter() {
        for i in 0..u64::from(a.n) {
            let want = (a.producer, a.counter + i);
            if stored.get(&(a.shard, a.base_seq + i)) != Some(&want) {
                lost += 1;
            }
        }
    }
    let mut duplicated = 0u64;
    let mut reordered = 0u64;
    let mut tags: std::collections::HashSet<Tag> = std::collections::HashSet::new();
    let mut last_counter: HashMap<(u32, u32), u64> = HashMap::new();
    for (&(shard, _), &(p, n)) in &stored {
        if !tags.insert((p, n)) {
            duplicated += 1;
        }
        if let Some(prev) = last_counter.insert((shard, p), n) {
            if n <= prev {
                reordered += 1;
            }
        }
    }
    let seen = sh.seen.lock().unwrap();
    let phantom = seen
        .iter()
        .filter(|(k, v)| stored.get(k) != Some(v))
        .count();
    let k = &sh.counters;
    let report = serde_json::json!({
        "duration_s": a.duration.as_secs(),
        "kills": kills,
        "puts_acked": k.puts_acked.load(Ordering::Relaxed),
        "records_acked": k.records_acked.load(Ordering::Relaxed),
        "puts_unknown_outcome": k.puts_unknown.load(Ordering::Relaxed),
        "retries": k.retries.load(Ordering::Relaxed),
        "records_stored": stored.len(),
        "consumer_records": k.consumer_records.load(Ordering::Relaxed),
        "consumer_reconnects": k.consumer_errors.load(Ordering::Relaxed),
        "control_ops": k.control_ops.load(Ordering::Relaxed),
        "hostile_connections": k.hostile.load(Ordering::Relaxed),
        "lost": lost,
        "duplicated": duplicated,
        "reordered": reordered,
        "seen_by_consumers_but_gone": phantom,
        "streams_after": names.len(),
        "inconsistent_streams": inconsistent,
    });
    println!("{report}");
    if lost + duplicated + reordered + phantom as u64 + inconsistent > 0 {
        std::process::exit(1);
    }
}
