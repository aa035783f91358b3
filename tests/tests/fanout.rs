//! Fan-out end to end against a real server (port 0, temp dir): registered consumers and
//! their subscriptions (pushed records, resumption at the continuation sequence number,
//! flow control, the end of a split shard), consumer groups (leases spread over workers,
//! moving when a worker dies, checkpoints surviving kill -9), and the polling read-call
//! limit.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use spate_client::{
    Client, ClientError, Entry, ErrorCode, GroupEvent, GroupOptions, GroupWorker, Limits, Position,
    ReadOptions, StreamConfig, SubscribeOptions,
};
use spate_engine::config::EngineConfig;
use spate_engine::server::Server;
use spate_tests::{runtime, test_config, ChildServer};

fn start(dir: &std::path::Path, cfg: impl FnOnce(EngineConfig) -> EngineConfig) -> Server {
    Server::start(cfg(EngineConfig {
        listen: "127.0.0.1:0".into(),
        ..test_config(dir)
    }))
    .expect("server starts")
}

/// Puts `n` records "k{i % keys}:{i}" in batches of 100 and answers their (shard, seq).
async fn put(client: &Client, stream: &str, from: u64, n: u64, data_bytes: usize) {
    let mut i = from;
    while i < from + n {
        let entries: Vec<Entry> = (i..(i + 100).min(from + n))
            .map(|j| {
                let mut data = format!("k{}:{j}:", j % 7).into_bytes();
                data.resize(data.len().max(data_bytes), b'.');
                Entry::new(format!("k{}", j % 7), data)
            })
            .collect();
        i += entries.len() as u64;
        for r in client.put_records(stream, entries).await {
            r.expect("stored");
        }
    }
}

/// The record number in "k{key}:{n}:..." data.
fn number(data: &[u8]) -> u64 {
    let s = std::str::from_utf8(data).unwrap();
    s.split(':').nth(1).unwrap().parse().unwrap()
}

#[test]
fn subscriptions_push_every_record_once_in_order_and_resume_at_the_continuation() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |c| c);
    let addr = server.local_addr().to_string();
    runtime().block_on(async {
        let client = Client::connect(addr).await.unwrap();
        client
            .create_stream("push", &StreamConfig::new(1).limits(Limits::Off))
            .await
            .unwrap();
        let a = client.register_consumer("push", "a").await.unwrap();
        let b = client.register_consumer("push", "b").await.unwrap();
        assert!(b.consumer_id > a.consumer_id);
        let err = client.register_consumer("push", "a").await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::ConsumerExists));
        let names: Vec<String> = client
            .list_consumers("push")
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(client.describe_consumer("push", "b").await.unwrap(), b);
        let err = client
            .subscribe(
                "push",
                "nobody",
                0,
                Position::TrimHorizon,
                Default::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::UnknownConsumer));
        // Up to 20 per stream (the default).
        for i in 2..20 {
            client
                .register_consumer("push", &format!("c{i}"))
                .await
                .unwrap();
        }
        let err = client
            .register_consumer("push", "one-too-many")
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::LimitExceeded));

        let mut sub_a = client
            .subscribe("push", "a", 0, Position::TrimHorizon, Default::default())
            .await
            .unwrap();
        // b starts at LATEST before anything is written: it sees the same records.
        let mut sub_b = client
            .subscribe("push", "b", 0, Position::Latest, Default::default())
            .await
            .unwrap();
        let writer = {
            let client = client.clone();
            tokio::spawn(async move { put(&client, "push", 0, 3000, 16).await })
        };
        // a: read half, drop the subscription, resume at its continuation.
        let mut seen_a = Vec::new();
        while seen_a.len() < 1500 {
            let e = sub_a.next().await.unwrap().unwrap();
            seen_a.extend(e.records.iter().map(|r| number(&r.data)));
        }
        let resume = sub_a.continuation_seq().unwrap();
        drop(sub_a);
        let mut sub_a = client
            .subscribe(
                "push",
                "a",
                0,
                Position::AtSequenceNumber { seq: resume },
                Default::default(),
            )
            .await
            .unwrap();
        while seen_a.len() < 3000 {
            let e = sub_a.next().await.unwrap().unwrap();
            seen_a.extend(e.records.iter().map(|r| number(&r.data)));
        }
        let mut seen_b = Vec::new();
        while seen_b.len() < 3000 {
            let e = sub_b.next().await.unwrap().unwrap();
            seen_b.extend(e.records.iter().map(|r| number(&r.data)));
        }
        writer.await.unwrap();
        let all: Vec<u64> = (0..3000).collect();
        assert_eq!(
            seen_a, all,
            "a: every record once, in order, across the resumption"
        );
        assert_eq!(seen_b, all, "b: every record once, in order");

        // A second subscription of b takes over; the first is told.
        let mut again = client
            .subscribe("push", "b", 0, Position::TrimHorizon, Default::default())
            .await
            .unwrap();
        put(&client, "push", 3000, 10, 16).await;
        let e = again.next().await.unwrap().unwrap();
        assert!(!e.records.is_empty());
        let err = loop {
            match sub_b.next().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the replaced subscription ended without saying why"),
                Err(e) => break e,
            }
        };
        assert_eq!(err.code(), Some(ErrorCode::SubscriptionReplaced));
        // Asked again, the replaced one says so again: it does not subscribe anew and take
        // the shard back from the newer one (which reads on below).
        let err = sub_b.next().await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::SubscriptionReplaced));
        // A deregistered consumer's subscription ends.
        client.deregister_consumer("push", "b").await.unwrap();
        put(&client, "push", 3010, 10, 16).await;
        let err = loop {
            match again.next().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("ended without an error"),
                Err(e) => break e,
            }
        };
        assert_eq!(err.code(), Some(ErrorCode::UnknownConsumer));
        let m = server.metrics();
        let push = &m.streams["push"];
        assert!(push.subscribe_event_records >= 6000, "{push:?}");
        assert!(push.subscribe_success >= 4);
    });
    server.shutdown();
}

#[test]
fn a_subscriber_that_stops_reading_holds_no_more_than_its_credit() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |c| c);
    let addr = server.local_addr().to_string();
    runtime().block_on(async {
        let client = Client::connect(addr).await.unwrap();
        client
            .create_stream("slow", &StreamConfig::new(1).limits(Limits::Off))
            .await
            .unwrap();
        client.register_consumer("slow", "stuck").await.unwrap();
        client.register_consumer("slow", "quick").await.unwrap();
        let credit = 256 << 10;
        let mut stuck = client
            .subscribe(
                "slow",
                "stuck",
                0,
                Position::TrimHorizon,
                SubscribeOptions {
                    credit_bytes: credit,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let mut quick = client
            .subscribe(
                "slow",
                "quick",
                0,
                Position::TrimHorizon,
                Default::default(),
            )
            .await
            .unwrap();
        // 16 MiB of records while `stuck` takes nothing: the quick one keeps up.
        let n = 4000u64;
        let writer = {
            let client = client.clone();
            tokio::spawn(async move { put(&client, "slow", 0, n, 4096).await })
        };
        let mut got = 0u64;
        let mut next = 0u64;
        while got < n {
            let e = quick.next().await.unwrap().unwrap();
            for r in &e.records {
                assert_eq!(number(&r.data), next);
                next += 1;
            }
            got += e.records.len() as u64;
        }
        writer.await.unwrap();
        // What was pushed to the stuck subscriber stays within its credit: everything the
        // server pushed, less what the quick one took (as many bytes as a polling read of
        // the whole shard).
        let it = client
            .get_iterator("slow", 0, Position::TrimHorizon)
            .await
            .unwrap();
        let mut it = Some(it);
        let mut polled = 0u64;
        while polled < n {
            let r = client
                .get_records(it.as_ref().unwrap(), 10_000, 10 << 20, 0)
                .await
                .unwrap();
            polled += r.records.len() as u64;
            it = r.next_iterator;
        }
        let m = server.metrics();
        let c = &m.streams["slow"];
        let to_stuck = c.subscribe_event_bytes - c.get_records_bytes;
        // A stored batch is never cut: the last event may pass the credit by one batch
        // (here 100 records of 4 KiB and their framing).
        let batch = 100 * (4096 + 32) + 64;
        assert!(
            to_stuck <= u64::from(credit) + batch,
            "{to_stuck} bytes pushed to a subscriber that granted {credit} and read nothing"
        );
        let unsent: usize = server.net_stats().iter().map(|s| s.unsent_bytes).sum();
        assert!(
            unsent <= credit as usize + (64 << 10),
            "{unsent} bytes unsent"
        );
        // It takes everything in the end, in order.
        let mut next = 0u64;
        while next < n {
            let e = stuck.next().await.unwrap().unwrap();
            for r in &e.records {
                assert_eq!(number(&r.data), next);
                next += 1;
            }
        }
    });
    server.shutdown();
}

#[test]
fn a_subscription_to_a_split_shard_ends_with_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |c| c);
    let addr = server.local_addr().to_string();
    runtime().block_on(async {
        let client = Client::connect(addr).await.unwrap();
        client
            .create_stream("splits", &StreamConfig::new(1).limits(Limits::Off))
            .await
            .unwrap();
        client.register_consumer("splits", "c").await.unwrap();
        let mut sub = client
            .subscribe("splits", "c", 0, Position::TrimHorizon, Default::default())
            .await
            .unwrap();
        put(&client, "splits", 0, 100, 8).await;
        let split = client.split_shard("splits", 0, 1 << 127).await.unwrap();
        put(&client, "splits", 100, 100, 8).await;
        let mut records = 0;
        let end = loop {
            let e = sub.next().await.unwrap().expect("an end event");
            records += e.records.len();
            if e.ended {
                break e;
            }
        };
        assert_eq!(records, 100, "the parent's records, and no child's");
        let mut children = end.child_shards.clone();
        children.sort_unstable();
        let mut want = split.new_shards.clone();
        want.sort_unstable();
        assert_eq!(children, want);
        assert!(sub.next().await.unwrap().is_none());
    });
    server.shutdown();
}

/// Drains a worker's events for `for_ms`, checkpointing each batch; answers the record
/// numbers seen per shard.
async fn drain(
    worker: &mut GroupWorker,
    for_ms: u64,
    seen: &mut BTreeMap<u32, Vec<u64>>,
) -> Result<(), ClientError> {
    let until = tokio::time::Instant::now() + Duration::from_millis(for_ms);
    loop {
        let next = tokio::time::timeout_at(until, worker.next()).await;
        let Ok(Some(event)) = next else { return Ok(()) };
        match event? {
            GroupEvent::Records {
                shard_id, records, ..
            } => {
                let last = records.last().unwrap().seq;
                seen.entry(shard_id)
                    .or_default()
                    .extend(records.iter().map(|r| number(&r.data)));
                match worker.checkpoint(shard_id, last).await {
                    Ok(()) => {}
                    Err(e) if e.code() == Some(ErrorCode::LeaseLost) => {}
                    Err(e) => return Err(e),
                }
            }
            GroupEvent::ShardEnded { shard_id } => {
                worker.checkpoint_shard_end(shard_id).await?;
            }
            GroupEvent::LeaseLost { .. } => {}
        }
    }
}

#[test]
fn a_group_spreads_shards_moves_a_dead_workers_leases_and_keeps_checkpoints_across_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let overrides = "group_lease_timeout_ms = 1500";
    let server = ChildServer::start(
        env!("CARGO_BIN_EXE_test_server"),
        dir.path(),
        overrides,
        false,
    );
    let addr = server.addr.to_string();
    let rt = runtime();
    let checkpointed: BTreeMap<u32, u64> = rt.block_on(async {
        let client = Client::connect(addr.clone()).await.unwrap();
        client
            .create_stream("groups", &StreamConfig::new(4).limits(Limits::Off))
            .await
            .unwrap();
        put(&client, "groups", 0, 2000, 8).await;
        let opts = |w: &str| GroupOptions {
            worker: w.to_string(),
            read: ReadOptions {
                wait_ms: 200,
                ..ReadOptions::default()
            },
            ..GroupOptions::default()
        };
        let mut w1 = GroupWorker::join(&client, "groups", "g", opts("w1"))
            .await
            .unwrap();
        let mut w2 = GroupWorker::join(&client, "groups", "g", opts("w2"))
            .await
            .unwrap();
        let mut seen: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
        // Both drain until the leases settle two and two and everything is read.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            drain(&mut w1, 200, &mut seen).await.unwrap();
            drain(&mut w2, 200, &mut seen).await.unwrap();
            let total: usize = seen.values().map(Vec::len).sum();
            if w1.leases().len() == 2 && w2.leases().len() == 2 && total >= 2000 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "leases {:?} {:?}",
                w1.leases(),
                w2.leases()
            );
        }
        let d = client.describe_group("groups", "g").await.unwrap();
        assert_eq!(d.members.len(), 2);
        assert!(d.shards.iter().all(|s| s.lag_records == 0), "{d:?}");
        // w2 dies (no leave): within the lease timeout its shards go to w1.
        let w2_shards = w2.leases();
        drop(w2);
        put(&client, "groups", 2000, 400, 8).await;
        let died = Instant::now();
        let mut after: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
        while w1.leases().len() < 4 || after.values().map(Vec::len).sum::<usize>() < 400 {
            drain(&mut w1, 200, &mut after).await.unwrap();
            assert!(
                died.elapsed() < Duration::from_secs(15),
                "w1 has {:?}",
                w1.leases()
            );
        }
        for s in &w2_shards {
            assert!(
                after.contains_key(s),
                "shard {s} of the dead worker is read again"
            );
        }
        let mut numbers: Vec<u64> = after.values().flatten().copied().collect();
        numbers.sort_unstable();
        numbers.dedup();
        assert_eq!(
            numbers,
            (2000..2400).collect::<Vec<_>>(),
            "nothing lost, nothing before a checkpoint again"
        );
        let d = client.describe_group("groups", "g").await.unwrap();
        d.shards
            .iter()
            .map(|s| match s.checkpoint {
                spate_client::Checkpoint::After { seq } => (s.shard_id, seq),
                c => panic!("shard {} checkpoint {c:?}", s.shard_id),
            })
            .collect()
    });
    // kill -9: the checkpoints acknowledged survive.
    unsafe {
        libc::kill(server.child.id() as i32, libc::SIGKILL);
    }
    drop(server);
    let server = ChildServer::start(
        env!("CARGO_BIN_EXE_test_server"),
        dir.path(),
        overrides,
        false,
    );
    let addr = server.addr.to_string();
    rt.block_on(async {
        let client = Client::connect(addr).await.unwrap();
        let d = client.describe_group("groups", "g").await.unwrap();
        for s in &d.shards {
            assert_eq!(
                s.checkpoint,
                spate_client::Checkpoint::After {
                    seq: checkpointed[&s.shard_id]
                },
                "shard {}",
                s.shard_id
            );
        }
        // A new worker resumes after the checkpoints: only what came after them.
        put(&client, "groups", 2400, 100, 8).await;
        let mut w3 = GroupWorker::join(
            &client,
            "groups",
            "g",
            GroupOptions {
                worker: "w3".into(),
                ..GroupOptions::default()
            },
        )
        .await
        .unwrap();
        let mut seen: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while seen.values().map(Vec::len).sum::<usize>() < 100 {
            drain(&mut w3, 200, &mut seen).await.unwrap();
            assert!(Instant::now() < deadline);
        }
        let mut numbers: Vec<u64> = seen.values().flatten().copied().collect();
        numbers.sort_unstable();
        assert_eq!(numbers, (2400..2500).collect::<Vec<_>>());
        w3.leave().await.unwrap();
        let d = client.describe_group("groups", "g").await.unwrap();
        assert!(d.members.is_empty());
        assert_eq!(client.list_groups("groups").await.unwrap(), ["g"]);
        client.delete_group("groups", "g").await.unwrap();
        let err = client.describe_group("groups", "g").await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::UnknownGroup));
    });
    server.stop();
}

#[test]
fn a_latest_group_reads_from_its_creation_whichever_worker_holds_the_shard() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |c| EngineConfig {
        group_lease_timeout_ms: 1_000,
        ..c
    });
    let addr = server.local_addr().to_string();
    runtime().block_on(async {
        let client = Client::connect(addr).await.unwrap();
        client
            .create_stream("late", &StreamConfig::new(2).limits(Limits::Off))
            .await
            .unwrap();
        put(&client, "late", 0, 300, 8).await;
        // The group's creation falls in a later millisecond than every record before it.
        let ms = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis()
        };
        let before = ms();
        while ms() <= before + 1 {
            tokio::task::yield_now().await;
        }
        let opts = |w: &str, start: Position| GroupOptions {
            worker: w.to_string(),
            start,
            read: ReadOptions {
                wait_ms: 200,
                ..ReadOptions::default()
            },
            ..GroupOptions::default()
        };
        // w1 creates the group at LATEST and dies before checkpointing anything.
        let w1 = GroupWorker::join(&client, "late", "g", opts("w1", Position::Latest))
            .await
            .unwrap();
        let created = client.describe_group("late", "g").await.unwrap();
        assert_eq!(created.start, Position::Latest);
        drop(w1);
        put(&client, "late", 300, 300, 8).await;
        // Its lag counts what it will take: the records since its creation, not the shards'
        // whole history. A group is not made to start in the future (as Kinesis refuses an
        // iterator at a future time: its readers would be handed what came before it).
        let lag =
            |d: &spate_client::GroupInfo| -> u64 { d.shards.iter().map(|s| s.lag_records).sum() };
        let d = client.describe_group("late", "g").await.unwrap();
        assert_eq!(lag(&d), 300, "{d:?}");
        let e = GroupWorker::join(
            &client,
            "late",
            "future",
            opts(
                "w9",
                Position::AtTimestamp {
                    ts_ms: 4_102_444_800_000,
                },
            ),
        )
        .await
        .unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::InvalidArgument), "{e}");
        assert!(e.to_string().contains("in the future"), "{e}");
        // w2 asks for TRIM_HORIZON, but the group's start is what counts; once w1's leases
        // expire it reads both shards from the group's creation: what came after it,
        // nothing before.
        let mut w2 = GroupWorker::join(&client, "late", "g", opts("w2", Position::TrimHorizon))
            .await
            .unwrap();
        let mut seen: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while w2.leases().len() < 2 || seen.values().map(Vec::len).sum::<usize>() < 300 {
            drain(&mut w2, 200, &mut seen).await.unwrap();
            assert!(Instant::now() < deadline, "w2 leases {:?}", w2.leases());
        }
        drain(&mut w2, 300, &mut seen).await.unwrap();
        let mut numbers: Vec<u64> = seen.values().flatten().copied().collect();
        numbers.sort_unstable();
        assert_eq!(numbers, (300..600).collect::<Vec<_>>());
        // Checkpointing from another task while the worker waits for records.
        let checkpointer = w2.checkpointer();
        put(&client, "late", 600, 10, 8).await;
        let event = tokio::time::timeout(Duration::from_secs(20), w2.next())
            .await
            .expect("records come")
            .expect("the worker runs")
            .unwrap();
        let GroupEvent::Records {
            shard_id, records, ..
        } = event
        else {
            panic!("{event:?}")
        };
        let last = records.last().unwrap().seq;
        tokio::spawn(async move { checkpointer.checkpoint(shard_id, last).await })
            .await
            .unwrap()
            .unwrap();
        let d = client.describe_group("late", "g").await.unwrap();
        let s = d.shards.iter().find(|s| s.shard_id == shard_id).unwrap();
        assert_eq!(s.checkpoint, spate_client::Checkpoint::After { seq: last });
    });
    server.shutdown();
}

#[test]
fn polling_readers_share_five_calls_per_second_under_kinesis_limits() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |c| c);
    let addr = server.local_addr().to_string();
    runtime().block_on(async {
        let client = Client::connect(addr).await.unwrap();
        client
            .create_stream("calls", &StreamConfig::new(1))
            .await
            .unwrap();
        let it = client
            .get_iterator("calls", 0, Position::TrimHorizon)
            .await
            .unwrap();
        let mut throttled = 0;
        for _ in 0..12 {
            match client.get_records(&it, 10, 1 << 20, 0).await {
                Ok(_) => {}
                Err(e) => {
                    assert_eq!(e.code(), Some(ErrorCode::ReadThrottled));
                    assert!(e.retry_after_ms() > 0);
                    throttled += 1;
                }
            }
        }
        // A full bucket holds five calls; twelve back to back cannot all pass.
        assert!(throttled >= 5, "{throttled} of 12 calls throttled");
        // A registered consumer's subscription has its own allowance, unaffected.
        client.register_consumer("calls", "c").await.unwrap();
        client
            .subscribe("calls", "c", 0, Position::TrimHorizon, Default::default())
            .await
            .unwrap();
    });
    server.shutdown();
}

#[test]
fn a_subscription_goes_on_across_a_server_restart_without_loss_or_repeat() {
    let dir = tempfile::tempdir().unwrap();
    // An address the restart can bind again: a free port, found by binding port 0 and
    // letting go. Another test's connection may take it as its own port before the server
    // binds it, so a refused one is given up for another (within a bound).
    let (listen, server) = {
        let mut tries = 0;
        loop {
            let listen = {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                l.local_addr().unwrap().to_string()
            };
            match Server::start(EngineConfig {
                listen: listen.clone(),
                ..test_config(dir.path())
            }) {
                Ok(server) => break (listen, server),
                Err(e) if tries < 20 => {
                    eprintln!("start on {listen}: {e}; another port");
                    tries += 1;
                }
                Err(e) => panic!("start on {listen}: {e}"),
            }
        }
    };
    let with_listen = |c: EngineConfig| EngineConfig {
        listen: listen.clone(),
        ..c
    };
    let rt = runtime();
    let client = rt.block_on(async {
        let client = Client::connect(listen.clone()).await.unwrap();
        client
            .create_stream("restart", &StreamConfig::new(1).limits(Limits::Off))
            .await
            .unwrap();
        client.register_consumer("restart", "c").await.unwrap();
        client
    });
    let mut sub = rt.block_on(async {
        let mut sub = client
            .subscribe("restart", "c", 0, Position::TrimHorizon, Default::default())
            .await
            .unwrap();
        put(&client, "restart", 0, 500, 16).await;
        let mut numbers = Vec::new();
        while numbers.len() < 200 {
            let e = sub.next().await.unwrap().unwrap();
            numbers.extend(e.records.iter().map(|r| number(&r.data)));
        }
        (sub, numbers)
    });
    server.shutdown();
    // The same address again: another test may hold the port for a moment (or its last
    // connections linger), so try until it is free, within a bound.
    let server = {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match Server::start(with_listen(EngineConfig {
                listen: "127.0.0.1:0".into(),
                ..test_config(dir.path())
            })) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("restart on {listen}: {e}; trying again");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("restart on {listen}: {e}"),
            }
        }
    };
    rt.block_on(async {
        let (ref mut s, ref mut numbers) = sub;
        put(&client, "restart", 500, 500, 16).await;
        while numbers.len() < 1000 {
            let e = s.next().await.unwrap().unwrap();
            numbers.extend(e.records.iter().map(|r| number(&r.data)));
        }
        assert_eq!(*numbers, (0..1000).collect::<Vec<_>>());
    });
    server.shutdown();
}

/// A worker that takes its time to checkpoint a shard's end (a consumer behind: the end
/// waits in its queue while heartbeats go on) then reads the children. Its background task
/// awaited the finished reader again at every heartbeat, panicked at the second, and the
/// worker ended without an error and never read the children.
#[test]
fn a_worker_slow_to_checkpoint_a_shards_end_goes_on_to_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |c| EngineConfig {
        group_lease_timeout_ms: 300,
        ..c
    });
    let addr = server.local_addr().to_string();
    runtime().block_on(async {
        let client = Client::connect(addr).await.unwrap();
        client
            .create_stream("ends", &StreamConfig::new(1).limits(Limits::Off))
            .await
            .unwrap();
        put(&client, "ends", 0, 50, 8).await;
        client.split_shard("ends", 0, u128::MAX / 2).await.unwrap();
        put(&client, "ends", 50, 50, 8).await;
        let mut worker = GroupWorker::join(
            &client,
            "ends",
            "g",
            GroupOptions {
                worker: "slow".into(),
                read: ReadOptions {
                    wait_ms: 100,
                    ..ReadOptions::default()
                },
                ..GroupOptions::default()
            },
        )
        .await
        .unwrap();
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while seen.len() < 100 {
            assert!(Instant::now() < deadline, "read {} of 100", seen.len());
            let event = tokio::time::timeout(Duration::from_secs(10), worker.next())
                .await
                .expect("an event")
                .expect("the worker goes on")
                .unwrap();
            match event {
                GroupEvent::Records {
                    shard_id, records, ..
                } => {
                    seen.extend(records.iter().map(|r| number(&r.data)));
                    worker
                        .checkpoint(shard_id, records.last().unwrap().seq)
                        .await
                        .unwrap();
                }
                GroupEvent::ShardEnded { shard_id } => {
                    // Several heartbeats (every lease_timeout / 3) pass before the end is
                    // checkpointed: this is the delay under test, not a wait for a condition.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    worker.checkpoint_shard_end(shard_id).await.unwrap();
                }
                GroupEvent::LeaseLost { shard_id } => panic!("lease of {shard_id} lost"),
            }
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..100).collect::<Vec<u64>>());
        worker.leave().await.unwrap();
    });
    server.shutdown();
}

/// A subscription whose credit is larger than the server takes (its
/// `max_subscription_credit_bytes`) still flows: the client granted back only after half of
/// its own credit, which the server never sent, and each MiB waited out the silence timeout.
#[test]
fn a_subscription_with_more_credit_than_the_server_takes_flows() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |c| EngineConfig {
        max_subscription_credit_bytes: 1 << 20,
        ..c
    });
    let addr = server.local_addr().to_string();
    runtime().block_on(async {
        let client = Client::connect(addr).await.unwrap();
        client
            .create_stream("wide", &StreamConfig::new(1).limits(Limits::Off))
            .await
            .unwrap();
        put(&client, "wide", 0, 3000, 1000).await;
        client.register_consumer("wide", "c").await.unwrap();
        let mut sub = client
            .subscribe(
                "wide",
                "c",
                0,
                Position::TrimHorizon,
                SubscribeOptions {
                    credit_bytes: 4 << 20,
                    // Far longer than the test waits: a stall cannot be covered by it.
                    silence_timeout: Duration::from_secs(300),
                },
            )
            .await
            .unwrap();
        let read_all = async {
            let mut n = 0;
            while n < 3000 {
                n += sub.next().await.unwrap().unwrap().records.len();
            }
            n
        };
        let n = tokio::time::timeout(Duration::from_secs(60), read_all)
            .await
            .expect("3 MB through a 1 MiB server credit without stalling");
        assert_eq!(n, 3000);
    });
    server.shutdown();
}
