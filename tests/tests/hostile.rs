//! Hostile clients (issue 13): each attack with the bound it must hold, measured from the
//! engine's own accounting (`Server::net_stats`) or the server process's RSS, while another
//! client's requests are still answered within a stated time.

use std::time::{Duration, Instant};

use spate_engine::config::EngineConfig;
use spate_engine::server::{NetStats, Server};
use spate_protocol::{
    CreateStreamRequest, DescribeStreamRequest, ErrorCode, GetIteratorRequest, GetRecordsRequest,
    IteratorPosition, Limits, PutBatchRequest, Request, Response,
};
use spate_tests::{
    config_with, key_for_shard, tagged_batch, test_config, wait_until, ChildServer, WireClient,
};

/// What other clients' requests must be answered within while an attack runs.
const SERVED_WITHIN: Duration = Duration::from_secs(2);
const WAIT: Duration = Duration::from_secs(60);

fn server(dir: &std::path::Path, overrides: &str) -> Server {
    let cfg = config_with(
        EngineConfig {
            listen: "127.0.0.1:0".into(),
            ..test_config(dir)
        },
        overrides,
    );
    Server::start(cfg).expect("server starts")
}

fn total(s: &Server) -> NetStats {
    s.net_stats()
        .into_iter()
        .fold(NetStats::default(), |a, b| NetStats {
            connections: a.connections + b.connections,
            inflight_requests: a.inflight_requests + b.inflight_requests,
            request_bytes: a.request_bytes + b.request_bytes,
            unsent_bytes: a.unsent_bytes + b.unsent_bytes,
            parked_reads: a.parked_reads + b.parked_reads,
        })
}

fn create(c: &mut WireClient, name: &str, shards: u32) {
    let r = c.call(&Request::CreateStream(CreateStreamRequest {
        name,
        shard_count: shards,
        retention_hours: 24,
        limits: Limits::Off,
        max_record_data_bytes: None,
        encryption: Default::default(),
    }));
    assert!(
        matches!(r.reply(), Ok(Response::CreateStream(_))),
        "{:?}",
        r.reply()
    );
}

fn put(c: &mut WireClient, stream: &str, shard: u32, batch: &[u8]) -> Result<(), ErrorCode> {
    let r = c.call(&Request::PutBatch(PutBatchRequest {
        stream,
        shard_id: shard,
        batch,
    }));
    match r.reply() {
        Ok(Response::PutBatch(p)) if p.rejected.is_none() => Ok(()),
        Ok(other) => panic!("{other:?}"),
        Err(e) => Err(e.code),
    }
}

fn iterator(c: &mut WireClient, stream: &str, shard: u32) -> Vec<u8> {
    let r = c.call(&Request::GetIterator(GetIteratorRequest {
        stream,
        shard_id: shard,
        position: IteratorPosition::TrimHorizon,
    }));
    match r.reply() {
        Ok(Response::GetIterator(it)) => it.iterator.to_vec(),
        other => panic!("{other:?}"),
    }
}

fn get_records<'a>(iterator: &'a [u8], max_bytes: u32, wait_ms: u32) -> Request<'a> {
    Request::GetRecords(GetRecordsRequest {
        iterator,
        max_records: 10_000,
        max_bytes,
        wait_ms,
    })
}

/// A well-behaved client's put and read, each answered within `SERVED_WITHIN`.
fn still_served(addr: std::net::SocketAddr, stream: &str, shards: u32) {
    let start = Instant::now();
    let mut c = WireClient::connect(addr);
    let batch = tagged_batch(&key_for_shard(0, shards), 7, 10, 100);
    put(&mut c, stream, 0, &batch).expect("put served");
    let it = iterator(&mut c, stream, 0);
    let r = c.call(&get_records(&it, 1 << 20, 0));
    assert!(matches!(r.reply(), Ok(Response::GetRecords(_))));
    assert!(
        start.elapsed() < SERVED_WITHIN,
        "a normal client waited {:?}",
        start.elapsed()
    );
}

/// A shard of `stream` that core `core` owns.
fn shard_on_core(c: &mut WireClient, stream: &str, core: u16) -> u32 {
    let r = c.call(&Request::DescribeStream(DescribeStreamRequest {
        name: stream,
    }));
    let Ok(Response::DescribeStream(d)) = r.reply() else {
        panic!("{:?}", r.reply())
    };
    let shard = d.shards.iter().find(|sh| sh.core == core);
    shard
        .unwrap_or_else(|| panic!("no shard on core {core}"))
        .id
}

/// A frame header (16 bytes) declaring a PutBatch of `len` bytes, and nothing else.
fn lone_header(len: u32) -> Vec<u8> {
    let mut full = Vec::new();
    let batch = tagged_batch("k", 0, 1, 10);
    spate_protocol::encode_request(
        &mut full,
        1,
        &Request::PutBatch(PutBatchRequest {
            stream: "s",
            shard_id: 0,
            batch: &batch,
        }),
    );
    let mut header = full[..spate_protocol::frame::FRAME_HEADER_LEN].to_vec();
    header[..4].copy_from_slice(&len.to_le_bytes());
    header
}

#[test]
fn partial_frames_are_charged_to_the_budget_and_time_out() {
    let dir = tempfile::tempdir().unwrap();
    // 64 MiB of request budget per core; a started frame has 2 s to arrive.
    let s = server(
        dir.path(),
        "max_buffered_bytes_per_core = 67108864\nframe_timeout_ms = 2000",
    );
    let addr = s.local_addr();
    let mut c = WireClient::connect(addr);
    create(&mut c, "s", 1);
    // (With port 0 every connection lands on core 0.)
    let budget = 64usize << 20;
    let mut idle = Vec::new();
    for _ in 0..100 {
        let mut h = WireClient::connect(addr);
        h.send_raw(&lone_header(10_000_000)).unwrap();
        idle.push(h);
    }
    // Every header is seen: charged while the budget lasts, the rest set to be dropped.
    wait_until("the headers are charged", WAIT, || {
        s.net_stats()[0].request_bytes > budget - 10_000_000
    });
    let t = s.net_stats()[0];
    assert!(t.request_bytes <= budget, "{t:?}");
    still_served(addr, "s", 1);
    // The started frames never complete: each connection is closed, every byte returned.
    for mut h in idle {
        assert!(
            h.recv().is_none() || h.recv().is_none(),
            "closed after the frame timeout"
        );
    }
    wait_until("the budget is back", WAIT, || total(&s).request_bytes == 0);
    s.shutdown();
}

#[test]
fn declared_but_unsent_frames_cost_no_memory() {
    // In a process of its own so that its RSS is its alone.
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::start(
        env!("CARGO_BIN_EXE_test_server"),
        dir.path(),
        "cores = [0]",
        false,
    );
    let addr = server.addr;
    let mut c = WireClient::connect(addr);
    create(&mut c, "s", 1);
    let before = spate_tests::rss_bytes(server.child.id());
    let mut idle = Vec::new();
    for _ in 0..100 {
        let mut h = WireClient::connect(addr);
        h.send_raw(&lone_header(10_000_000)).unwrap();
        idle.push(h);
    }
    // Round trips on the server's one core give its readers time to take every header
    // (the in-process test above proves they are taken by the accounting).
    still_served(addr, "s", 1);
    still_served(addr, "s", 1);
    let grown = spate_tests::rss_bytes(server.child.id()).saturating_sub(before);
    // 100 declared frames of 10 MB once cost 648 MiB; only what arrived may cost now.
    assert!(grown < 48 << 20, "RSS grew by {} MiB", grown >> 20);
    drop(idle);
    server.stop();
}

#[test]
fn a_client_that_does_not_read_is_bounded_then_dropped() {
    let dir = tempfile::tempdir().unwrap();
    // 4 MiB per connection; a client that reads nothing for 2 s is disconnected.
    let s = server(
        dir.path(),
        "max_connection_bytes = 10551639\nwrite_stall_timeout_ms = 2000",
    );
    let addr = s.local_addr();
    let mut c = WireClient::connect(addr);
    create(&mut c, "s", 1);
    // 4 MiB of data in 64 KiB batches, so every read answer is up to 10 MiB of it.
    for i in 0..64 {
        put(
            &mut c,
            "s",
            0,
            &tagged_batch(&key_for_shard(0, 1), i, 1, 64 << 10),
        )
        .unwrap();
    }
    let it = iterator(&mut c, "s", 0);
    let mut hog = WireClient::connect(addr);
    hog.stream
        .set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut frames = Vec::new();
    for i in 0..2000u64 {
        frames.clear();
        spate_protocol::encode_request(&mut frames, i + 1, &get_records(&it, 10 << 20, 0));
        // The server stops reading this socket once its answers pile up; then our
        // writes block (and time out) too.
        if hog.send_raw(&frames).is_err() {
            break;
        }
    }
    let bound = 10_551_360 + (64 << 10) + 4096;
    let mut peak = 0;
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1500) {
        peak = peak.max(total(&s).unsent_bytes);
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(peak <= bound, "unsent answers reached {peak} bytes");
    assert!(peak > 0, "the attack held answers");
    still_served(addr, "s", 1);
    // The stall timeout drops the connection and every held byte goes.
    wait_until("the non-reader is dropped", WAIT, || {
        let t = total(&s);
        t.unsent_bytes == 0 && t.connections == 1 && t.request_bytes == 0
    });
    s.shutdown();
}

#[test]
fn non_readers_cannot_pin_the_request_budget() {
    let dir = tempfile::tempdir().unwrap();
    // 16 MiB of request budget per core; pinners send 64 MiB each.
    let s = server(dir.path(), "max_buffered_bytes_per_core = 16777216");
    let addr = s.local_addr();
    let mut c = WireClient::connect(addr);
    create(&mut c, "s", 2);
    let batch = tagged_batch(&key_for_shard(1, 2), 1, 16, 64 << 10);
    let mut pinners = Vec::new();
    for _ in 0..4 {
        let mut p = WireClient::connect(addr);
        let mut frames = Vec::new();
        for i in 0..64u64 {
            spate_protocol::encode_request(
                &mut frames,
                i + 1,
                &Request::PutBatch(PutBatchRequest {
                    stream: "s",
                    shard_id: 1,
                    batch: &batch,
                }),
            );
        }
        p.send_raw(&frames).unwrap();
        pinners.push(p);
    }
    // Their puts finish and give their bytes back though their answers sit unread.
    wait_until("the pinners' requests are done", WAIT, || {
        let t = total(&s);
        t.request_bytes == 0 && t.inflight_requests == 0
    });
    for _ in 0..5 {
        still_served(addr, "s", 2);
    }
    drop(pinners);
    s.shutdown();
}

#[test]
fn long_polls_leave_nothing_behind_and_are_bounded_per_core() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), "max_parked_reads_per_core = 50");
    let addr = s.local_addr();
    let mut c = WireClient::connect(addr);
    create(&mut c, "s", 1);
    let it = iterator(&mut c, "s", 0);
    // Short long-polls on an idle shard, pipelined: each times out and unregisters.
    // (500 at a time: a connection may have 1,024 requests in flight.)
    let mut frames = Vec::new();
    for round in 0..6u64 {
        frames.clear();
        for i in 0..500u64 {
            let cid = 1000 + round * 500 + i;
            spate_protocol::encode_request(&mut frames, cid, &get_records(&it, 1 << 20, 1));
        }
        c.send_raw(&frames).unwrap();
        for _ in 0..500 {
            let r = c.recv().expect("answer");
            assert!(
                matches!(r.reply(), Ok(Response::GetRecords(_))),
                "{:?}",
                r.reply()
            );
        }
    }
    assert_eq!(total(&s).parked_reads, 0);
    // A herd of 200 long-polls: 50 park, the rest answer at once (empty).
    let mut herd = WireClient::connect(addr);
    frames.clear();
    for i in 0..200u64 {
        spate_protocol::encode_request(&mut frames, 1 + i, &get_records(&it, 1 << 20, 30_000));
    }
    herd.send_raw(&frames).unwrap();
    for _ in 0..150 {
        let r = herd.recv().expect("answer");
        match r.reply() {
            Ok(Response::GetRecords(g)) => assert!(g.batches.is_empty()),
            other => panic!("{other:?}"),
        }
    }
    wait_until("50 long-polls park", WAIT, || total(&s).parked_reads == 50);
    still_served(addr, "s", 1);
    // The put above woke the parked ones.
    for _ in 0..50 {
        assert!(herd.recv().is_some());
    }
    wait_until("no long-poll is parked", WAIT, || {
        total(&s).parked_reads == 0
    });
    // A long-poll whose client goes stops waiting.
    let mut gone = WireClient::connect(addr);
    let it = iterator(&mut gone, "s", 0);
    let mut frame = Vec::new();
    // Read from the tip so that it parks.
    let tip = {
        let r = gone.call(&get_records(&it, 10 << 20, 0));
        match r.reply() {
            Ok(Response::GetRecords(g)) => g.head.next_iterator.unwrap().to_vec(),
            other => panic!("{other:?}"),
        }
    };
    spate_protocol::encode_request(&mut frame, 99, &get_records(&tip, 1 << 20, 30_000));
    gone.send_raw(&frame).unwrap();
    wait_until("the long-poll parks", WAIT, || total(&s).parked_reads == 1);
    drop(gone);
    wait_until(
        "the long-poll of a closed connection ends",
        Duration::from_secs(10),
        || total(&s).parked_reads == 0,
    );
    s.shutdown();
}

#[test]
fn silent_peers_and_half_headers_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(
        dir.path(),
        "idle_timeout_ms = 1000\nframe_timeout_ms = 1000",
    );
    let addr = s.local_addr();
    let mut silent = WireClient::connect(addr);
    let mut half = WireClient::connect(addr);
    half.send_raw(&lone_header(100)[..5]).unwrap();
    assert!(
        silent.recv().is_none(),
        "a peer that never speaks is closed"
    );
    assert!(
        half.recv().is_none(),
        "a header that never completes is closed"
    );
    // A connection that is merely between requests is closed only when idle that long;
    // a working one is not.
    let mut c = WireClient::connect(addr);
    for _ in 0..3 {
        let r = c.call(&Request::DescribeStream(DescribeStreamRequest {
            name: "nope",
        }));
        assert!(r.reply().is_err());
        std::thread::sleep(Duration::from_millis(400));
    }
    wait_until("only the working client is left", WAIT, || {
        total(&s).connections <= 1
    });
    // A client that always has some frame under way, each arriving well within the limit,
    // is not mistaken for a slow one, for longer than the limit.
    let mut busy = WireClient::connect(addr);
    let mut stream_bytes = Vec::new();
    for i in 0..60u64 {
        spate_protocol::encode_request(
            &mut stream_bytes,
            i + 1,
            &Request::DescribeStream(DescribeStreamRequest { name: "nope" }),
        );
    }
    let start = Instant::now();
    for piece in stream_bytes.chunks(stream_bytes.len() / 60 + 7) {
        busy.send_raw(piece).unwrap();
        std::thread::sleep(Duration::from_millis(60));
    }
    assert!(start.elapsed() > Duration::from_millis(2000));
    for _ in 0..60 {
        assert!(busy.recv().is_some(), "the busy client was cut off");
    }
    s.shutdown();
}

#[test]
fn forged_altered_and_foreign_iterators_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), "");
    let other = server(other_dir.path(), "");
    let mut c = WireClient::connect(s.local_addr());
    let mut o = WireClient::connect(other.local_addr());
    create(&mut c, "s", 1);
    create(&mut o, "s", 1);
    put(
        &mut c,
        "s",
        0,
        &tagged_batch(&key_for_shard(0, 1), 1, 5, 10),
    )
    .unwrap();
    let it = iterator(&mut c, "s", 0);
    let code = |c: &mut WireClient, it: &[u8]| match c.call(&get_records(it, 1 << 20, 0)).reply() {
        Ok(Response::GetRecords(_)) => None,
        Err(e) => Some(e.code),
        Ok(other) => panic!("{other:?}"),
    };
    assert_eq!(code(&mut c, &it), None);
    // Altered: a later position or issue time (bytes 13..29) without the secret.
    for byte in [13, 21, 28, 40] {
        let mut bad = it.clone();
        bad[byte] ^= 1;
        assert_eq!(code(&mut c, &bad), Some(ErrorCode::InvalidIterator));
    }
    // Forged in the old (CRC32C) layout, valid as that layout went.
    let mut v1 = it[..29].to_vec();
    v1[0] = 1;
    let crc = spate_tests::crc32c(&v1);
    v1.extend_from_slice(&crc.to_le_bytes());
    assert_eq!(code(&mut c, &v1), Some(ErrorCode::InvalidIterator));
    // From another server (its own secret), for a stream of the same name.
    let foreign = iterator(&mut o, "s", 0);
    assert_eq!(code(&mut c, &foreign), Some(ErrorCode::InvalidIterator));
    // The secret lives in the data directory: an iterator outlives a restart.
    s.shutdown();
    let s = server(dir.path(), "");
    let mut c = WireClient::connect(s.local_addr());
    assert_eq!(code(&mut c, &it), None);
    let key = std::fs::metadata(dir.path().join("iterator.key")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(key.permissions().mode() & 0o777, 0o600);
    s.shutdown();
    other.shutdown();
}

#[test]
fn create_and_delete_cannot_race_into_a_ghost_stream() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), "");
    let mut c = WireClient::connect(s.local_addr());
    // Create and delete pipelined: the delete is taken while the create still opens its
    // 200 shards. They run one after the other, never interleaved.
    let mut frames = Vec::new();
    for i in 0..10u64 {
        let name = format!("r{i}");
        spate_protocol::encode_request(
            &mut frames,
            2 * i + 1,
            &Request::CreateStream(CreateStreamRequest {
                name: &name,
                shard_count: 200,
                retention_hours: 24,
                limits: Limits::Off,
                max_record_data_bytes: None,
                encryption: Default::default(),
            }),
        );
        spate_protocol::encode_request(
            &mut frames,
            2 * i + 2,
            &Request::DeleteStream(spate_protocol::DeleteStreamRequest { name: &name }),
        );
    }
    c.send_raw(&frames).unwrap();
    // Pipelined requests run concurrently, so a delete may also come first (and find no
    // stream); either way what exists must match what was answered.
    let mut deleted = [false; 10];
    for _ in 0..20 {
        let r = c.recv().expect("answer");
        let cid = r.header.correlation_id;
        let i = ((cid - 1) / 2) as usize;
        match (cid % 2, r.reply()) {
            (1, Ok(_)) => {}
            (0, Ok(_)) => deleted[i] = true,
            (0, Err(e)) if e.code == ErrorCode::UnknownStream => {}
            (_, other) => panic!("request {cid}: {other:?}"),
        }
    }
    let ghosts = |c: &mut WireClient| {
        (0..10)
            .filter(|&i| {
                let name = format!("r{i}");
                let batch = tagged_batch(&key_for_shard(0, 200), 1, 1, 10);
                let exists = put(c, &name, 0, &batch) != Err(ErrorCode::UnknownStream);
                exists == deleted[i]
            })
            .count()
    };
    assert_eq!(
        ghosts(&mut c),
        0,
        "a deleted stream takes writes, or a created one does not"
    );
    s.shutdown();
    let s = server(dir.path(), "");
    let mut c = WireClient::connect(s.local_addr());
    assert_eq!(ghosts(&mut c), 0);
    s.shutdown();
}

#[test]
fn extreme_limits_are_refused_at_create() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), "");
    let mut c = WireClient::connect(s.local_addr());
    let r = c.call(&Request::CreateStream(CreateStreamRequest {
        name: "x",
        shard_count: 1,
        retention_hours: 24,
        limits: Limits::Custom {
            write_bytes_per_s: u64::MAX,
            write_records_per_s: u64::MAX,
            read_bytes_per_s: u64::MAX,
        },
        max_record_data_bytes: None,
        encryption: Default::default(),
    }));
    assert_eq!(r.reply().unwrap_err().code, ErrorCode::InvalidArgument);
    s.shutdown();
}

#[test]
fn quotas_are_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(
        dir.path(),
        "max_streams = 2\nmax_shards_per_stream = 5\nmax_shards = 8",
    );
    let mut c = WireClient::connect(s.local_addr());
    let create_n = |c: &mut WireClient, name: &str, shards: u32| {
        let r = c.call(&Request::CreateStream(CreateStreamRequest {
            name,
            shard_count: shards,
            retention_hours: 24,
            limits: Limits::Off,
            max_record_data_bytes: None,
            encryption: Default::default(),
        }));
        r.reply()
            .map(|_| ())
            .map_err(|e| (e.code, e.message.to_string()))
    };
    create_n(&mut c, "a", 5).unwrap();
    let (code, why) = create_n(&mut c, "b", 6).unwrap_err();
    assert_eq!(code, ErrorCode::LimitExceeded);
    assert!(why.contains("max_shards_per_stream"), "{why}");
    let (code, why) = create_n(&mut c, "b", 4).unwrap_err();
    assert_eq!(code, ErrorCode::LimitExceeded);
    assert!(why.contains("max_shards"), "{why}");
    create_n(&mut c, "b", 3).unwrap();
    let (code, why) = create_n(&mut c, "c", 1).unwrap_err();
    assert_eq!(code, ErrorCode::LimitExceeded);
    assert!(why.contains("max_streams"), "{why}");
    let r = c.call(&Request::DeleteStream(
        spate_protocol::DeleteStreamRequest { name: "a" },
    ));
    assert!(r.reply().is_ok());
    create_n(&mut c, "c", 5).unwrap();
    // The node quota counts open shards: after a merge in "c" (7 open, 9 in all with its
    // closed parents) a split in "b" makes 8 open, within the quota of 8.
    let r = c.call(&Request::MergeShards(spate_protocol::MergeShardsRequest {
        name: "c",
        shard_id: 0,
        adjacent_shard_id: 1,
    }));
    assert!(r.reply().is_ok(), "{:?}", r.reply());
    let r = c.call(&Request::SplitShard(spate_protocol::SplitShardRequest {
        name: "b",
        shard_id: 0,
        new_starting_hash_key: 1 << 64,
    }));
    assert!(r.reply().is_ok(), "{:?}", r.reply());
    // One more open shard would pass it.
    let r = c.call(&Request::SplitShard(spate_protocol::SplitShardRequest {
        name: "b",
        shard_id: 1,
        new_starting_hash_key: u128::MAX / 2,
    }));
    let e = r.reply().unwrap_err();
    assert_eq!(e.code, ErrorCode::LimitExceeded);
    assert!(e.message.contains("8 open shards"), "{}", e.message);
    s.shutdown();
}

#[test]
fn forwarded_batches_are_charged_where_they_are_held() {
    let dir = tempfile::tempdir().unwrap();
    // Two cores, each with 16 MiB of request budget.
    let s = server(
        dir.path(),
        "cores = [0, 0]\nmax_buffered_bytes_per_core = 16777216",
    );
    let cores = s.core_addrs();
    let mut c = WireClient::connect(cores[0]);
    create(&mut c, "s", 2);
    let on1 = shard_on_core(&mut c, "s", 1);
    // Core 1's budget is taken by frames that never finish arriving.
    let mut pins = Vec::new();
    for _ in 0..2 {
        let mut p = WireClient::connect(cores[1]);
        p.send_raw(&lone_header(10_000_000)).unwrap();
        pins.push(p);
    }
    wait_until("core 1's budget is taken", WAIT, || {
        s.net_stats()[1].request_bytes >= 10_000_000
    });
    // A put through core 0 to core 1's shard: core 1 refuses to hold it, nothing is done.
    let big = tagged_batch(&key_for_shard(on1, 2), 1, 100, 80_000);
    assert_eq!(put(&mut c, "s", on1, &big), Err(ErrorCode::ServerBusy));
    // Small ones still fit, and once the pins go, big ones do too.
    put(
        &mut c,
        "s",
        on1,
        &tagged_batch(&key_for_shard(on1, 2), 2, 1, 10),
    )
    .unwrap();
    drop(pins);
    wait_until("core 1's budget is back", WAIT, || {
        s.net_stats()[1].request_bytes == 0
    });
    put(&mut c, "s", on1, &big).unwrap();
    s.shutdown();
}

#[test]
fn a_long_poll_on_another_core_ends_when_its_client_hangs_up() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), "cores = [0, 0]");
    let cores = s.core_addrs();
    let mut c = WireClient::connect(cores[0]);
    create(&mut c, "s", 2);
    let on1 = shard_on_core(&mut c, "s", 1);
    // Through core 0, parked on core 1.
    let mut gone = WireClient::connect(cores[0]);
    let it = iterator(&mut gone, "s", on1);
    let mut frame = Vec::new();
    spate_protocol::encode_request(&mut frame, 9, &get_records(&it, 1 << 20, 30_000));
    gone.send_raw(&frame).unwrap();
    wait_until("it parks on core 1", WAIT, || {
        s.net_stats()[1].parked_reads == 1
    });
    let hung_up = Instant::now();
    drop(gone);
    wait_until("it leaves core 1", WAIT, || {
        s.net_stats()[1].parked_reads == 0
    });
    assert!(
        hung_up.elapsed() < Duration::from_secs(10),
        "left after {:?}, not at its 30 s deadline",
        hung_up.elapsed()
    );
    s.shutdown();
}

#[test]
fn a_herd_of_long_polls_on_a_busy_shard_costs_others_nothing() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), "");
    let addr = s.local_addr();
    let mut c = WireClient::connect(addr);
    create(&mut c, "s", 2);
    let tip = {
        let it = iterator(&mut c, "s", 1);
        match c.call(&get_records(&it, 1 << 20, 0)).reply() {
            Ok(Response::GetRecords(g)) => g.head.next_iterator.unwrap().to_vec(),
            other => panic!("{other:?}"),
        }
    };
    // 4 connections x 50 long-polls on shard 1, each re-issued as soon as it is answered.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let herd: Vec<_> = (0..4)
        .map(|_| {
            let (stop, answered, tip) = (stop.clone(), answered.clone(), tip.clone());
            std::thread::spawn(move || {
                let mut h = WireClient::connect(addr);
                let mut frames = Vec::new();
                for i in 0..50u64 {
                    spate_protocol::encode_request(
                        &mut frames,
                        i,
                        &get_records(&tip, 1 << 20, 2000),
                    );
                }
                h.send_raw(&frames).unwrap();
                let mut cid = 1000u64;
                while !stop.load(Ordering::Relaxed) {
                    let r = h.recv().expect("answer");
                    let next = match r.reply() {
                        Ok(Response::GetRecords(g)) => g.head.next_iterator.unwrap().to_vec(),
                        other => panic!("{other:?}"),
                    };
                    answered.fetch_add(1, Ordering::Relaxed);
                    frames.clear();
                    cid += 1;
                    spate_protocol::encode_request(
                        &mut frames,
                        cid,
                        &get_records(&next, 1 << 20, 2000),
                    );
                    h.send_raw(&frames).unwrap();
                }
            })
        })
        .collect();
    wait_until("the herd parks", WAIT, || total(&s).parked_reads >= 150);
    // The shard is written 150 times, each round waking the herd; another client's put and
    // read (shard 0) are answered within the stated time throughout.
    let mut p = WireClient::connect(addr);
    for t in 0..150u64 {
        put(
            &mut p,
            "s",
            1,
            &tagged_batch(&key_for_shard(1, 2), t, 1, 100),
        )
        .unwrap();
        if t % 30 == 0 {
            still_served(addr, "s", 2);
        }
    }
    assert!(
        answered.load(Ordering::Relaxed) >= 200,
        "the herd was woken"
    );
    stop.store(true, Ordering::Relaxed);
    // One more put answers whatever is parked, so every herd thread sees the stop.
    put(
        &mut p,
        "s",
        1,
        &tagged_batch(&key_for_shard(1, 2), 999, 1, 100),
    )
    .unwrap();
    for t in herd {
        t.join().unwrap();
    }
    wait_until("nothing stays parked", WAIT, || total(&s).parked_reads == 0);
    s.shutdown();
}
