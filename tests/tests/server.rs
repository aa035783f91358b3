//! The server over real sockets, driven by a raw protocol client: every operation, routing
//! and forwarding between cores, pipelining, bad frames, bounds and graceful shutdown.

use spate_engine::config::EngineConfig;
use spate_engine::error::EngineError;
use spate_engine::server::Server;
use spate_protocol::{
    CreateStreamRequest, DeleteStreamRequest, DescribeStreamRequest, ErrorCode, GetIteratorRequest,
    GetRecordsRequest, HelloRequest, IteratorPosition, Limits, ListStreamsRequest, PutBatchRequest,
    PutBatchesRequest, PutRecordRequest, Reply, Request, Response, RetentionRequest, ShardBatch,
    ShardOutcome,
};
use spate_tests::{key_for_shard, tagged_batch, test_config, WireClient};

fn server(dir: &std::path::Path) -> Server {
    Server::start(EngineConfig {
        listen: "127.0.0.1:0".into(),
        ..test_config(dir)
    })
    .expect("server starts")
}

fn create(c: &mut WireClient, name: &str, shards: u32, limits: Limits) {
    let r = c.call(&Request::CreateStream(CreateStreamRequest {
        name,
        shard_count: shards,
        retention_hours: 24,
        limits,
        max_record_data_bytes: None,
        encryption: Default::default(),
    }));
    assert!(
        matches!(r.reply(), Ok(Response::CreateStream(_))),
        "{:?}",
        r.reply()
    );
}

fn error_code(r: &Reply<'_>) -> ErrorCode {
    match r {
        Err(e) => e.code,
        Ok(other) => panic!("expected an error, got {other:?}"),
    }
}

fn iterator(c: &mut WireClient, stream: &str, shard: u32, position: IteratorPosition) -> Vec<u8> {
    let r = c.call(&Request::GetIterator(GetIteratorRequest {
        stream,
        shard_id: shard,
        position,
    }));
    match r.reply() {
        Ok(Response::GetIterator(it)) => it.iterator.to_vec(),
        other => panic!("{other:?}"),
    }
}

/// Records read: (seq, data).
type Read = Vec<(u64, Vec<u8>)>;

/// Reads from `iterator` until the tip; returns (seq, data) and the final iterator.
fn read_to_tip(c: &mut WireClient, it: Vec<u8>) -> (Read, Vec<u8>) {
    let (out, next, _) = read_to_tip_counting(c, it);
    (out, next)
}

/// As `read_to_tip`, waiting out read throttling (Kinesis limits allow 5 calls per second
/// per shard) as the server's hint says; also answers how many calls were throttled.
fn read_to_tip_counting(c: &mut WireClient, mut it: Vec<u8>) -> (Read, Vec<u8>, u64) {
    let mut out = Vec::new();
    let mut throttled = 0;
    loop {
        let r = c.call(&Request::GetRecords(GetRecordsRequest {
            iterator: &it,
            max_records: 100,
            max_bytes: 1 << 20,
            wait_ms: 0,
        }));
        if let Err(e) = r.reply() {
            assert_eq!(e.code, ErrorCode::ReadThrottled, "{e:?}");
            throttled += 1;
            std::thread::sleep(std::time::Duration::from_millis(e.retry_after_ms.into()));
            continue;
        }
        let Ok(Response::GetRecords(g)) = r.reply() else {
            panic!("{:?}", r.reply())
        };
        let before = out.len();
        for rec in g.records() {
            let rec = rec.expect("records verify end to end");
            out.push((rec.seq, rec.data.to_vec()));
        }
        let next = g.head.next_iterator.expect("next iterator").to_vec();
        if out.len() == before {
            assert_eq!(g.head.millis_behind_latest, 0);
            return (out, next, throttled);
        }
        it = next;
    }
}

#[test]
fn every_operation_over_the_wire() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server(dir.path());
    let mut c = WireClient::connect(srv.local_addr());
    let hello = c.call(&Request::Hello(HelloRequest {
        client_name: "test",
    }));
    let Ok(Response::Hello(h)) = hello.reply() else {
        panic!("{:?}", hello.reply())
    };
    assert_eq!(h.cores.len(), srv.core_addrs().len());
    assert_eq!(h.cores[0].address, srv.core_addrs()[0].to_string());

    create(&mut c, "clicks", 4, Limits::Off);
    let dup = c.call(&Request::CreateStream(CreateStreamRequest {
        name: "clicks",
        shard_count: 1,
        retention_hours: 24,
        limits: Limits::Off,
        max_record_data_bytes: None,
        encryption: Default::default(),
    }));
    assert_eq!(error_code(&dup.reply()), ErrorCode::StreamExists);
    let list = c.call(&Request::ListStreams(ListStreamsRequest {
        exclusive_start_name: None,
        limit: 100,
    }));
    let Ok(Response::ListStreams(l)) = list.reply() else {
        panic!("{:?}", list.reply())
    };
    assert_eq!(l.names, vec!["clicks"]);

    // PutRecord routes by MD5 on the server.
    let mut b = spate_protocol::batch::BatchBuilder::new();
    let key = key_for_shard(2, 4);
    b.push(key.as_bytes(), b"hello", None).unwrap();
    let batch = b.finish();
    let r = c.call(&Request::PutRecord(PutRecordRequest {
        stream: "clicks",
        batch: &batch,
    }));
    let Ok(Response::PutRecord(p)) = r.reply() else {
        panic!("{:?}", r.reply())
    };
    assert_eq!((p.shard_id, p.seq), (2, 0));

    // PutBatch to an explicit shard, then read it back from TRIM_HORIZON.
    for tag in 0..10 {
        let batch = tagged_batch(&key, tag, 3, 100);
        let r = c.call(&Request::PutBatch(PutBatchRequest {
            stream: "clicks",
            shard_id: 2,
            batch: &batch,
        }));
        let Ok(Response::PutBatch(p)) = r.reply() else {
            panic!("{:?}", r.reply())
        };
        assert_eq!((p.base_seq, p.accepted, p.rejected), (1 + tag * 3, 3, None));
    }
    let it = iterator(&mut c, "clicks", 2, IteratorPosition::TrimHorizon);
    let (records, tip) = read_to_tip(&mut c, it);
    assert_eq!(records.len(), 31);
    assert_eq!(records[0], (0, b"hello".to_vec()));
    assert!(records[1].1.starts_with(b"0:0:"));
    // The iterator at the tip sees a record written after it was handed out.
    let batch = tagged_batch(&key, 99, 1, 10);
    c.call(&Request::PutBatch(PutBatchRequest {
        stream: "clicks",
        shard_id: 2,
        batch: &batch,
    }));
    let (more, _) = read_to_tip(&mut c, tip);
    assert_eq!(more.len(), 1);
    assert_eq!(more[0].0, 31);
    // AT / AFTER sequence number and LATEST.
    let at = iterator(
        &mut c,
        "clicks",
        2,
        IteratorPosition::AtSequenceNumber { seq: 10 },
    );
    assert_eq!(read_to_tip(&mut c, at).0.first().map(|r| r.0), Some(10));
    let after = iterator(
        &mut c,
        "clicks",
        2,
        IteratorPosition::AfterSequenceNumber { seq: 10 },
    );
    assert_eq!(read_to_tip(&mut c, after).0.first().map(|r| r.0), Some(11));
    let latest = iterator(&mut c, "clicks", 2, IteratorPosition::Latest);
    assert!(read_to_tip(&mut c, latest).0.is_empty());
    let ts = iterator(
        &mut c,
        "clicks",
        2,
        IteratorPosition::AtTimestamp { ts_ms: 0 },
    );
    assert_eq!(read_to_tip(&mut c, ts).0.len(), 32);

    // Describe, retention changes, errors.
    let d = c.call(&Request::DescribeStream(DescribeStreamRequest {
        name: "clicks",
    }));
    let Ok(Response::DescribeStream(d)) = d.reply() else {
        panic!()
    };
    assert_eq!(d.shards.len(), 4);
    assert_eq!(
        (d.shards[2].first_seq, d.shards[2].last_seq),
        (Some(0), Some(31))
    );
    assert_eq!(d.shards[3].hash_key_end, u128::MAX);
    let inc = c.call(&Request::IncreaseRetention(RetentionRequest {
        name: "clicks",
        retention_hours: 48,
    }));
    assert!(matches!(inc.reply(), Ok(Response::IncreaseRetention)));
    let bad = c.call(&Request::DecreaseRetention(RetentionRequest {
        name: "clicks",
        retention_hours: 72,
    }));
    assert_eq!(error_code(&bad.reply()), ErrorCode::InvalidArgument);
    let unknown = c.call(&Request::DescribeStream(DescribeStreamRequest {
        name: "nope",
    }));
    assert_eq!(error_code(&unknown.reply()), ErrorCode::UnknownStream);
    let wrong = tagged_batch(&key, 1, 1, 1);
    let r = c.call(&Request::PutBatch(PutBatchRequest {
        stream: "clicks",
        shard_id: 0,
        batch: &wrong,
    }));
    assert_eq!(error_code(&r.reply()), ErrorCode::WrongShard);
    let r = c.call(&Request::GetRecords(GetRecordsRequest {
        iterator: &[1, 2, 3],
        max_records: 1,
        max_bytes: 1,
        wait_ms: 0,
    }));
    assert_eq!(error_code(&r.reply()), ErrorCode::InvalidIterator);

    let del = c.call(&Request::DeleteStream(DeleteStreamRequest {
        name: "clicks",
    }));
    assert!(matches!(del.reply(), Ok(Response::DeleteStream)));
    let r = c.call(&Request::PutBatch(PutBatchRequest {
        stream: "clicks",
        shard_id: 2,
        batch: &batch,
    }));
    assert_eq!(error_code(&r.reply()), ErrorCode::UnknownStream);
    srv.shutdown();
}

#[test]
fn requests_to_any_core_are_forwarded_to_the_owner() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server(dir.path());
    let cores = srv.core_addrs();
    let mut admin = WireClient::connect(srv.local_addr());
    create(&mut admin, "s", 4, Limits::Off);
    let d = admin.call(&Request::DescribeStream(DescribeStreamRequest {
        name: "s",
    }));
    let Ok(Response::DescribeStream(d)) = d.reply() else {
        panic!()
    };
    // Talk to every core about every shard: owners and non-owners must answer the same.
    for (ci, addr) in cores.iter().enumerate() {
        let mut c = WireClient::connect(addr);
        for sh in &d.shards {
            let key = key_for_shard(sh.id, 4);
            let batch = tagged_batch(&key, ci as u64, 2, 50);
            let r = c.call(&Request::PutBatch(PutBatchRequest {
                stream: "s",
                shard_id: sh.id,
                batch: &batch,
            }));
            let Ok(Response::PutBatch(p)) = r.reply() else {
                panic!("{:?}", r.reply())
            };
            assert_eq!(p.base_seq, ci as u64 * 2, "shard {} via core {ci}", sh.id);
        }
    }
    for sh in &d.shards {
        let it = iterator(&mut admin, "s", sh.id, IteratorPosition::TrimHorizon);
        assert_eq!(read_to_tip(&mut admin, it).0.len(), cores.len() * 2);
    }
    // The in-process handle sees streams created and deleted over the wire.
    let engine = srv.engine().clone();
    let put = |shard: u32| {
        let batch = tagged_batch(&key_for_shard(shard, 4), 9, 1, 10);
        futures_lite::future::block_on(engine.put_batch("s", shard, batch))
    };
    assert_eq!(put(3).unwrap().base_seq, cores.len() as u64 * 2);
    let r = admin.call(&Request::DeleteStream(DeleteStreamRequest { name: "s" }));
    assert!(r.reply().is_ok());
    assert!(matches!(put(3), Err(EngineError::UnknownStream(_))));
    srv.shutdown();
}

#[test]
fn pipelined_requests_all_get_answers() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server(dir.path());
    let mut c = WireClient::connect(srv.local_addr());
    create(&mut c, "p", 2, Limits::Off);
    let keys = [key_for_shard(0, 2), key_for_shard(1, 2)];
    let mut sent = std::collections::HashMap::new();
    for i in 0..500u64 {
        let shard = (i % 2) as u32;
        let batch = tagged_batch(&keys[shard as usize], i, 1, 20);
        let cid = c.send(&Request::PutBatch(PutBatchRequest {
            stream: "p",
            shard_id: shard,
            batch: &batch,
        }));
        sent.insert(cid, shard);
    }
    let mut seqs: Vec<(u64, usize, u64)> = Vec::new();
    for _ in 0..500 {
        let r = c.recv().expect("answer");
        let cid = r.header.correlation_id;
        let shard = sent.remove(&cid).expect("known correlation id") as usize;
        let Ok(Response::PutBatch(p)) = r.reply() else {
            panic!("{:?}", r.reply())
        };
        assert_eq!(p.accepted, 1);
        seqs.push((cid, shard, p.base_seq));
    }
    // Answers may come in any order, but per shard the sequence numbers follow the order
    // the requests were sent in: per-key order holds under pipelining.
    seqs.sort_unstable();
    for shard in 0..2 {
        let in_send_order: Vec<u64> = seqs.iter().filter(|s| s.1 == shard).map(|s| s.2).collect();
        assert_eq!(
            in_send_order,
            (0..250).collect::<Vec<u64>>(),
            "shard {shard}"
        );
    }
    assert!(sent.is_empty());
    srv.shutdown();
}

#[test]
fn bad_frames_close_only_their_connection() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server(dir.path());
    let mut good = WireClient::connect(srv.local_addr());
    create(&mut good, "s", 1, Limits::Off);
    // Garbage: a frame header claiming version 9.
    let mut bad = WireClient::connect(srv.local_addr());
    bad.send_raw(&[20, 0, 0, 0, 9, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4])
        .unwrap();
    let r = bad.recv().expect("an error frame before the close");
    assert_eq!(error_code(&r.reply()), ErrorCode::UnsupportedVersion);
    assert!(bad.recv().is_none(), "connection closed");
    // A frame claiming 1 GiB.
    let mut big = WireClient::connect(srv.local_addr());
    big.send_raw(&[0, 0, 0, 64, 1, 0, 20, 0]).unwrap();
    let r = big.recv().expect("an error frame");
    assert_eq!(error_code(&r.reply()), ErrorCode::FrameTooLarge);
    assert!(big.recv().is_none());
    // A well-framed request with a corrupt payload is answered, and the connection lives.
    let mut bytes = Vec::new();
    let batch = tagged_batch("k", 0, 1, 10);
    spate_protocol::encode_request(
        &mut bytes,
        7,
        &Request::PutBatch(PutBatchRequest {
            stream: "s",
            shard_id: 0,
            batch: &batch,
        }),
    );
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    good.send_raw(&bytes).unwrap();
    let r = good.recv().unwrap();
    assert_eq!(r.header.correlation_id, 7);
    assert_eq!(error_code(&r.reply()), ErrorCode::ChecksumMismatch);
    // A dropped connection mid-frame harms nothing.
    let mut dropped = WireClient::connect(srv.local_addr());
    dropped.send_raw(&bytes[..bytes.len() / 2]).unwrap();
    drop(dropped);
    let batch = tagged_batch("k", 1, 1, 10);
    let r = good.call(&Request::PutBatch(PutBatchRequest {
        stream: "s",
        shard_id: 0,
        batch: &batch,
    }));
    let Ok(Response::PutBatch(p)) = r.reply() else {
        panic!("{:?}", r.reply())
    };
    assert_eq!(p.base_seq, 0);
    srv.shutdown();
}

#[test]
fn kinesis_limits_reject_a_suffix_with_retry_hint() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server(dir.path());
    let mut c = WireClient::connect(srv.local_addr());
    create(&mut c, "lim", 1, Limits::Kinesis);
    let mut accepted = 0;
    let mut saw_rejection = false;
    for tag in 0..3 {
        let batch = tagged_batch("k", tag, 500, 10);
        let r = c.call(&Request::PutBatch(PutBatchRequest {
            stream: "lim",
            shard_id: 0,
            batch: &batch,
        }));
        let Ok(Response::PutBatch(p)) = r.reply() else {
            panic!("{:?}", r.reply())
        };
        accepted += p.accepted;
        if let Some(rej) = p.rejected {
            assert_eq!(rej.code, ErrorCode::Throttled);
            assert!(rej.retry_after_ms >= 1);
            saw_rejection = true;
        }
    }
    assert!(saw_rejection);
    // One second of burst (1,000 records) plus whatever refilled while the test ran.
    assert!((1000..1500).contains(&accepted), "accepted {accepted}");
    srv.shutdown();
}

#[test]
fn shutdown_answers_in_flight_requests_and_data_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server(dir.path());
    let mut c = WireClient::connect(srv.local_addr());
    create(&mut c, "s", 1, Limits::Off);
    let cids: Vec<u64> = (0..50)
        .map(|i| {
            let batch = tagged_batch("k", i, 4, 100);
            c.send(&Request::PutBatch(PutBatchRequest {
                stream: "s",
                shard_id: 0,
                batch: &batch,
            }))
        })
        .collect();
    let mut acked = 0;
    for _ in &cids {
        match c.recv() {
            Some(r) => {
                if let Ok(Response::PutBatch(p)) = r.reply() {
                    acked += p.accepted;
                }
            }
            None => break,
        }
    }
    srv.shutdown();
    let srv = server(dir.path());
    let mut c = WireClient::connect(srv.local_addr());
    let it = iterator(&mut c, "s", 0, IteratorPosition::TrimHorizon);
    assert!(read_to_tip(&mut c, it).0.len() as u32 >= acked);
    assert_eq!(acked, 200);
    srv.shutdown();
}

#[test]
fn put_batches_stores_each_shard_on_its_own_and_answers_per_shard() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server(dir.path());
    let mut c = WireClient::connect(srv.local_addr());
    create(&mut c, "multi", 4, Limits::Off);
    let ok0 = tagged_batch(&key_for_shard(0, 4), 1, 3, 50);
    let ok2 = tagged_batch(&key_for_shard(2, 4), 2, 2, 50);
    // Shard 3's batch carries a key of shard 1: refused alone, the others are stored.
    let wrong = tagged_batch(&key_for_shard(1, 4), 3, 1, 50);
    let r = c.call(&Request::PutBatches(PutBatchesRequest {
        stream: "multi",
        batches: vec![
            ShardBatch {
                shard_id: 0,
                batch: &ok0,
            },
            ShardBatch {
                shard_id: 3,
                batch: &wrong,
            },
            ShardBatch {
                shard_id: 2,
                batch: &ok2,
            },
        ],
    }));
    let Ok(Response::PutBatches(p)) = r.reply() else {
        panic!("{:?}", r.reply())
    };
    type Summary = (u32, Result<(u64, u32), ErrorCode>);
    let summary: Vec<Summary> = p
        .outcomes
        .iter()
        .map(|o| match o {
            ShardOutcome::Stored(s) => (s.shard_id, Ok((s.base_seq, s.accepted))),
            ShardOutcome::Failed(f) => (f.shard_id, Err(f.code)),
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (0, Ok((0, 3))),
            (3, Err(ErrorCode::WrongShard)),
            (2, Ok((0, 2)))
        ]
    );
    // An unknown shard fails alone too; an unknown stream fails the whole request.
    let r = c.call(&Request::PutBatches(PutBatchesRequest {
        stream: "multi",
        batches: vec![
            ShardBatch {
                shard_id: 9,
                batch: &ok0,
            },
            ShardBatch {
                shard_id: 0,
                batch: &ok0,
            },
        ],
    }));
    let Ok(Response::PutBatches(p)) = r.reply() else {
        panic!("{:?}", r.reply())
    };
    assert!(matches!(p.outcomes[0], ShardOutcome::Failed(f) if f.code == ErrorCode::UnknownShard));
    assert!(matches!(p.outcomes[1], ShardOutcome::Stored(s) if s.base_seq == 3 && s.accepted == 3));
    let r = c.call(&Request::PutBatches(PutBatchesRequest {
        stream: "nope",
        batches: vec![ShardBatch {
            shard_id: 0,
            batch: &ok0,
        }],
    }));
    assert_eq!(error_code(&r.reply()), ErrorCode::UnknownStream);
    srv.shutdown();
}

/// `GET /metrics` on the metrics address: a known workload is counted exactly (Kinesis'
/// names, per stream), and the text parses with a Prometheus text-format parser; the
/// format follows the scraper's `Accept`.
#[test]
fn the_metrics_endpoint_counts_what_was_done() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(EngineConfig {
        listen: "127.0.0.1:0".into(),
        metrics_listen: "127.0.0.1:0".into(),
        ..test_config(dir.path())
    })
    .expect("server starts");
    let mut c = WireClient::connect(srv.local_addr());
    create(&mut c, "m", 1, Limits::Kinesis);
    // Per-shard metrics too (Kinesis' enhanced shard-level monitoring).
    let r = c.call(&Request::EnableEnhancedMonitoring(DescribeStreamRequest {
        name: "m",
    }));
    assert!(
        matches!(r.reply(), Ok(Response::EnableEnhancedMonitoring)),
        "{:?}",
        r.reply()
    );
    // 1,500 records at once: Kinesis' limit takes about 1,000 and throttles the rest.
    let (mut accepted, mut refused, mut bytes, mut stored_calls) = (0u64, 0u64, 0u64, 0.0);
    for tag in 0..3 {
        let batch = tagged_batch("k", tag, 500, 10);
        let r = c.call(&Request::PutBatch(PutBatchRequest {
            stream: "m",
            shard_id: 0,
            batch: &batch,
        }));
        let Ok(Response::PutBatch(p)) = r.reply() else {
            panic!("{:?}", r.reply())
        };
        accepted += u64::from(p.accepted);
        refused += 500 - u64::from(p.accepted);
        if p.accepted > 0 {
            stored_calls += 1.0;
        }
        // Kinesis counts the records' keys and data, not our batch framing.
        let header = spate_protocol::batch::BatchHeader::decode(&batch).unwrap();
        bytes += spate_protocol::batch::RecordIter::new(&batch, header.record_count)
            .take(p.accepted as usize)
            .map(|r| r.map(|r| (r.key.len() + r.data.len()) as u64).unwrap())
            .sum::<u64>();
    }
    assert!(refused > 0);
    let it = iterator(&mut c, "m", 0, IteratorPosition::TrimHorizon);
    // Eleven calls of 100 records: past Kinesis' 5 calls per second, some are throttled.
    let (read, _, read_throttled) = read_to_tip_counting(&mut c, it);
    assert!(read_throttled > 0);

    let request = |head: &str| {
        let mut s = std::net::TcpStream::connect(srv.metrics_addr().expect("metrics on")).unwrap();
        write!(s, "{head}\r\nHost: x\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    };
    let scrape = |path: &str| request(&format!("GET {path} HTTP/1.1"));
    assert!(scrape("/nope").starts_with("HTTP/1.1 404"));
    assert!(request("POST /metrics HTTP/1.1").starts_with("HTTP/1.1 405"));
    // What Prometheus asks for: OpenMetrics (counters' families without `_total`, `# EOF`).
    let open = request(
        "GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text;version=1.0.0,\
         text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    );
    let (head, body) = open.split_once("\r\n\r\n").unwrap();
    assert!(
        head.contains("Content-Type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    assert!(body.ends_with("# EOF\n"));
    assert!(body.contains("# TYPE IncomingRecords counter\n"), "{body}");
    // Refused with q=0: not OpenMetrics.
    let not_open =
        request("GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text;q=0, text/plain");
    assert!(
        not_open.contains("Content-Type: text/plain; version=0.0.4"),
        "{not_open}"
    );
    // Anyone else (curl, older agents): the classic text format, also with a query string.
    let text = scrape("/metrics?debug=1");
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(!body.contains("# EOF"));
    assert!(
        body.contains("# TYPE IncomingRecords_total counter\n"),
        "{body}"
    );
    // HEAD: GET's headers, no body.
    let only_head = request("HEAD /metrics HTTP/1.1");
    let (head, rest) = only_head.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains("Content-Length: "), "{head}");
    assert_eq!(rest, "");
    let lines = body.lines().map(|l| Ok(l.to_string()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");
    // A sample with `label`, and with `shard` (`None`: without a shard label).
    let sample = |name: &str, label: (&str, &str), shard: Option<&str>| -> f64 {
        let sample = parsed
            .samples
            .iter()
            .find(|s| {
                s.metric == name
                    && s.labels.get(label.0) == Some(label.1)
                    && s.labels.get("shard") == shard
            })
            .unwrap_or_else(|| panic!("no {name}{label:?} (shard {shard:?}) in\n{body}"));
        match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{name}: {other:?}"),
        }
    };
    let value = |name: &str, label: (&str, &str)| sample(name, label, None);
    let stream = ("stream", "m");
    assert_eq!(value("IncomingRecords_total", stream), accepted as f64);
    assert_eq!(value("IncomingBytes_total", stream), bytes as f64);
    assert_eq!(
        value("WriteProvisionedThroughputExceeded_total", stream),
        refused as f64
    );
    assert_eq!(value("PutRecords_Success_total", stream), stored_calls);
    assert_eq!(value("PutRecords_TotalRecords_total", stream), 1500.0);
    assert_eq!(
        value("PutRecords_SuccessfulRecords_total", stream),
        accepted as f64
    );
    assert_eq!(
        value("PutRecords_ThrottledRecords_total", stream),
        refused as f64
    );
    assert_eq!(value("PutRecords_FailedRecords_total", stream), 0.0);
    assert_eq!(value("PutRecords_Bytes_total", stream), bytes as f64);
    assert_eq!(value("GetRecords_Records_total", stream), read.len() as f64);
    assert_eq!(
        value("ReadProvisionedThroughputExceeded_total", stream),
        read_throttled as f64
    );
    // The shard's own samples say the same (it is the stream's only shard).
    let of_shard = |name: &str| sample(name, ("stream", "m"), Some("0"));
    assert_eq!(of_shard("IncomingRecords_total"), accepted as f64);
    assert_eq!(of_shard("IncomingBytes_total"), bytes as f64);
    assert_eq!(
        of_shard("WriteProvisionedThroughputExceeded_total"),
        refused as f64
    );
    assert_eq!(
        of_shard("ReadProvisionedThroughputExceeded_total"),
        read_throttled as f64
    );
    assert_eq!(of_shard("OutgoingRecords_total"), read.len() as f64);
    assert_eq!(read.len() as u64, accepted);
    assert!(value("GetRecords_Success_total", stream) >= 1.0);
    // Every stored record was read once: the same key and data bytes went out.
    assert_eq!(value("GetRecords_Bytes_total", stream), bytes as f64);
    assert_eq!(of_shard("OutgoingBytes_total"), bytes as f64);
    assert_eq!(value("spate_requests_total", ("op", "PutBatch")), 3.0);
    assert_eq!(value("spate_requests_total", ("op", "CreateStream")), 1.0);
    let plain = |name: &str| {
        parsed
            .samples
            .iter()
            .find(|s| s.metric == name)
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                ref other => panic!("{name}: {other:?}"),
            })
            .unwrap_or_else(|| panic!("no {name}"))
    };
    assert!(plain("spate_rounds_total") >= 1.0);
    // The adaptive round pacing (the default): a cap per core (0: unpaced, none of this
    // test's few rounds ran anywhere near a rate that would be cut) and its stall count.
    assert_eq!(plain("spate_core_round_rate_cap"), 0.0);
    assert!(plain("spate_core_stalls_total") >= 0.0);
    // Appends that waited, by reason: every reason is exposed (zero or not).
    let reasons: std::collections::BTreeSet<&str> = parsed
        .samples
        .iter()
        .filter(|s| s.metric == "spate_append_waits_total")
        .filter_map(|s| s.labels.get("reason"))
        .collect();
    assert_eq!(
        reasons,
        ["extent", "journal", "memory", "round", "tail"].into()
    );
    assert!(plain("spate_journal_bytes_total") >= bytes as f64);
    assert_eq!(plain("spate_connections"), 1.0);
    assert_eq!(plain("spate_retention_deleted_records_total"), 0.0);
    // Exposed (`plain` fails the test if it is not); its value is this start's recovery time.
    let _recovery = plain("spate_recovery_seconds");
    // Per core: the requests add up to the total.
    let per_core: f64 = parsed
        .samples
        .iter()
        .filter(|s| s.metric == "spate_core_requests_total")
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{other:?}"),
        })
        .sum();
    let total: f64 = parsed
        .samples
        .iter()
        .filter(|s| s.metric == "spate_requests_total")
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{other:?}"),
        })
        .sum();
    assert_eq!(per_core, total);
    // Every round's flush is in the flush-latency histogram.
    let flushes = parsed
        .samples
        .iter()
        .find(|s| s.metric == "spate_flush_latency")
        .map(|s| match &s.value {
            prometheus_parse::Value::Histogram(h) => h.iter().map(|b| b.count).fold(0.0, f64::max),
            other => panic!("{other:?}"),
        })
        .expect("spate_flush_latency");
    assert_eq!(flushes, plain("spate_rounds_total"));
    // The latency histogram counts one observation per put that stored something.
    let count = parsed
        .samples
        .iter()
        .find(|s| s.metric == "PutRecords_Latency" && s.labels.get("stream") == Some("m"))
        .map(|s| match &s.value {
            prometheus_parse::Value::Histogram(h) => h.iter().map(|b| b.count).fold(0.0, f64::max),
            other => panic!("{other:?}"),
        });
    assert_eq!(count, Some(stored_calls), "{body}");
    // Merged over the cores, it is what Server::metrics returns.
    assert_eq!(srv.metrics().streams["m"].incoming_records, accepted);
    srv.shutdown();
}
