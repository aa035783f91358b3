//! Disks that fill up (issue 13): on a real, small, loop-mounted ext4 file system with the
//! default configuration, a full disk answers StorageFull, loses nothing acknowledged,
//! leaves no half-made files, and takes writes again by itself once space returns.

use std::path::{Path, PathBuf};

use std::process::Command;
use std::time::{Duration, Instant};

use spate_protocol::{
    CreateStreamRequest, ErrorCode, GetIteratorRequest, GetRecordsRequest, IteratorPosition,
    Limits, PutBatchRequest, Request, Response,
};
use spate_tests::{key_for_shard, records, tagged_batch, ChildServer, WireClient};

/// A loop-mounted ext4 file system, unmounted when dropped.
struct LoopFs {
    mount: PathBuf,
    _dir: tempfile::TempDir,
}

impl LoopFs {
    /// `None` (the test says it was skipped) without root or loop devices.
    fn new(mib: u64) -> Option<LoopFs> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: mounting a loop file system needs root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("fs.img");
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).unwrap();
        std::fs::File::create(&image)
            .unwrap()
            .set_len(mib << 20)
            .unwrap();
        let ok = |c: &mut Command| c.status().is_ok_and(|s| s.success());
        if !ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image))
            || !ok(Command::new("mount")
                .args(["-o", "loop"])
                .arg(&image)
                .arg(&mount))
        {
            eprintln!("skipped: no mkfs.ext4 or loop devices here");
            return None;
        }
        Some(LoopFs { mount, _dir: dir })
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
    }
}

fn free_bytes(dir: &Path) -> u64 {
    spate_engine::io::free_bytes_blocking(dir).unwrap()
}

fn put(c: &mut WireClient, shard: u32, batch: &[u8]) -> Result<(u64, u32), ErrorCode> {
    let r = c.call(&Request::PutBatch(PutBatchRequest {
        stream: "s",
        shard_id: shard,
        batch,
    }));
    match r.reply() {
        Ok(Response::PutBatch(p)) if p.rejected.is_none() => Ok((p.base_seq, p.accepted)),
        Ok(other) => panic!("{other:?}"),
        Err(e) => Err(e.code),
    }
}

#[test]
fn a_full_file_system_answers_storage_full_and_writes_resume_when_space_returns() {
    let Some(fs) = LoopFs::new(400) else {
        return;
    };
    let data = fs.mount.join("data");
    // Something else on the disk, deleted later to give space back.
    let filler = fs.mount.join("filler");
    std::fs::write(&filler, vec![7u8; 120 << 20]).unwrap();
    // A process of its own, so that a restart closes its files as in production.
    let bin = env!("CARGO_BIN_EXE_test_server");
    let s = ChildServer::start(
        bin,
        &data,
        "cores = [0]\ncreate_answer_ms = 3600000\nmetrics_listen = \"127.0.0.1:0\"",
        true,
    );
    let mut c = WireClient::connect(s.addr);
    let r = c.call(&Request::CreateStream(CreateStreamRequest {
        name: "s",
        shard_count: 2,
        retention_hours: 24,
        limits: Limits::Off,
        max_record_data_bytes: None,
        encryption: Default::default(),
    }));
    assert!(r.reply().is_ok(), "{:?}", r.reply());
    // 256 KiB batches until the disk is full.
    let mut acked: Vec<(u32, u64, u64)> = Vec::new(); // (shard, base_seq, tag)
    let mut tag = 0u64;
    let full = loop {
        let shard = (tag % 2) as u32;
        let batch = tagged_batch(&key_for_shard(shard, 2), tag, 64, 4096);
        match put(&mut c, shard, &batch) {
            Ok((base, n)) => {
                assert_eq!(n, 64);
                acked.push((shard, base, tag));
            }
            Err(ErrorCode::StorageFull) => break free_bytes(&fs.mount),
            Err(e) => panic!("batch {tag}: {e:?}"),
        }
        tag += 1;
        assert!(tag < 10_000, "the disk never filled");
    };
    // Data had the disk: StorageFull leaves less than a largest extent (16 MiB) and the
    // sixteenth kept back.
    assert!(full < 48 << 20, "StorageFull with {} MiB free", full >> 20);
    assert!(acked.len() > 100, "only {} batches fit", acked.len());
    std::fs::remove_file(&filler).unwrap();
    // Space is back: writes resume by themselves (a client retrying StorageFull).
    let start = Instant::now();
    loop {
        let shard = (tag % 2) as u32;
        let batch = tagged_batch(&key_for_shard(shard, 2), tag, 64, 4096);
        match put(&mut c, shard, &batch) {
            Ok((base, _)) => {
                acked.push((shard, base, tag));
                break;
            }
            Err(ErrorCode::StorageFull) => {
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "writes never resumed"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    for _ in 0..100 {
        tag += 1;
        let shard = (tag % 2) as u32;
        let batch = tagged_batch(&key_for_shard(shard, 2), tag, 64, 4096);
        let (base, _) = put(&mut c, shard, &batch).expect("writes go on");
        acked.push((shard, base, tag));
    }
    // Every acknowledged record reads back.
    for shard in 0..2u32 {
        let r = c.call(&Request::GetIterator(GetIteratorRequest {
            stream: "s",
            shard_id: shard,
            position: IteratorPosition::TrimHorizon,
        }));
        let Ok(Response::GetIterator(it)) = r.reply() else {
            panic!("{:?}", r.reply())
        };
        let mut it = it.iterator.to_vec();
        let mut got = std::collections::BTreeMap::new();
        loop {
            let r = c.call(&Request::GetRecords(GetRecordsRequest {
                iterator: &it,
                max_records: 10_000,
                max_bytes: 10 << 20,
                wait_ms: 0,
            }));
            let Ok(Response::GetRecords(g)) = r.reply() else {
                panic!("{:?}", r.reply())
            };
            for (seq, _, data) in records(g.batches.as_bytes(), g.head.start_seq, g.head.end_seq) {
                got.insert(seq, data);
            }
            if g.batches.is_empty() {
                break;
            }
            it = g.head.next_iterator.expect("open shard").to_vec();
        }
        for &(_, base, tag) in acked.iter().filter(|a| a.0 == shard) {
            for i in 0..64u64 {
                let data = got.get(&(base + i)).expect("acknowledged record is there");
                assert!(data.starts_with(format!("{tag}:{i}:").as_bytes()));
            }
        }
    }
    // Nothing half-made piles up: at most the one journal file being filled (paced by the
    // writes) is unfinished, across a restart too; and the server takes writes after it.
    s.stop();
    let s = ChildServer::start(
        bin,
        &data,
        "cores = [0]\nmetrics_listen = \"127.0.0.1:0\"",
        true,
    );
    let names: Vec<String> = std::fs::read_dir(data.join("store-0"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let unfinished: Vec<&String> = names.iter().filter(|n| n.ends_with(".tmp")).collect();
    assert!(
        unfinished.len() <= 1 && unfinished.iter().all(|n| n.starts_with("jnl-")),
        "{names:?}"
    );
    let mut c = WireClient::connect(s.addr);
    let batch = tagged_batch(&key_for_shard(0, 2), tag + 1, 64, 4096);
    put(&mut c, 0, &batch).expect("writes after a restart");
    s.stop();
}

#[test]
fn a_store_that_cannot_be_opened_is_reported_and_the_rest_is_served() {
    use spate_protocol::{DescribeStreamRequest, ShardState};
    let dir = tempfile::tempdir().unwrap();
    // Two cores (both on CPU 0: this works on any machine), so two stores.
    let overrides = "cores = [0, 0]";
    let bin = env!("CARGO_BIN_EXE_test_server");
    let s = ChildServer::start(bin, dir.path(), overrides, false);
    let mut c = WireClient::connect(s.addr);
    let r = c.call(&Request::CreateStream(CreateStreamRequest {
        name: "s",
        shard_count: 4,
        retention_hours: 24,
        limits: Limits::Off,
        max_record_data_bytes: None,
        encryption: Default::default(),
    }));
    assert!(r.reply().is_ok(), "{:?}", r.reply());
    for shard in 0..4u32 {
        let batch = tagged_batch(&key_for_shard(shard, 4), u64::from(shard), 10, 100);
        put(&mut c, shard, &batch).unwrap();
    }
    s.stop();
    // Store 1 loses its volumes.
    let store1 = dir.path().join("store-1");
    for e in std::fs::read_dir(&store1).unwrap() {
        let p = e.unwrap().path();
        if p.file_name().unwrap().to_string_lossy().starts_with("vol-") {
            std::fs::remove_file(p).unwrap();
        }
    }
    // The engine starts anyway.
    let s = ChildServer::start(bin, dir.path(), overrides, false);
    let mut c = WireClient::connect(s.addr);
    let r = c.call(&Request::DescribeStream(DescribeStreamRequest {
        name: "s",
    }));
    let Ok(Response::DescribeStream(d)) = r.reply() else {
        panic!("{:?}", r.reply())
    };
    let damaged: Vec<u32> = d
        .shards
        .iter()
        .filter(|sh| sh.state == ShardState::Damaged)
        .map(|sh| sh.id)
        .collect();
    let served: Vec<u32> = d
        .shards
        .iter()
        .filter(|sh| sh.state == ShardState::Open)
        .map(|sh| sh.id)
        .collect();
    assert!(!damaged.is_empty() && !served.is_empty(), "{d:?}");
    for &shard in &damaged {
        let batch = tagged_batch(&key_for_shard(shard, 4), 9, 1, 10);
        assert_eq!(put(&mut c, shard, &batch), Err(ErrorCode::Corrupt));
        let r = c.call(&Request::GetIterator(GetIteratorRequest {
            stream: "s",
            shard_id: shard,
            position: IteratorPosition::TrimHorizon,
        }));
        let e = r.reply().unwrap_err();
        assert_eq!(e.code, ErrorCode::Corrupt);
        assert!(
            e.message.contains("store-1"),
            "names the store: {}",
            e.message
        );
    }
    for &shard in &served {
        let batch = tagged_batch(&key_for_shard(shard, 4), 9, 1, 10);
        let (base, _) = put(&mut c, shard, &batch).expect("the other store serves");
        assert_eq!(base, 10, "shard {shard} kept its records");
    }
    // New streams go where they can be opened, or are refused whole.
    for i in 0..4 {
        let name = format!("new{i}");
        let r = c.call(&Request::CreateStream(CreateStreamRequest {
            name: &name,
            shard_count: 1,
            retention_hours: 24,
            limits: Limits::Off,
            max_record_data_bytes: None,
            encryption: Default::default(),
        }));
        match r.reply() {
            Ok(_) => {
                let batch = tagged_batch(&key_for_shard(0, 1), 1, 1, 10);
                let r = c.call(&Request::PutBatch(PutBatchRequest {
                    stream: &name,
                    shard_id: 0,
                    batch: &batch,
                }));
                assert!(r.reply().is_ok(), "a created stream takes writes");
            }
            Err(e) => {
                assert_eq!(e.code, ErrorCode::Corrupt);
                let r = c.call(&Request::DescribeStream(DescribeStreamRequest {
                    name: &name,
                }));
                assert_eq!(r.reply().unwrap_err().code, ErrorCode::UnknownStream);
            }
        }
    }
    s.stop();
}

/// Bytes the files under `dir` take on disk.
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        total += if m.is_dir() {
            disk_usage(&e.path())
        } else {
            m.blocks() * 512
        };
    }
    total
}

#[test]
fn an_empty_server_takes_almost_no_disk_and_a_stream_gets_space_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_test_server");
    // The embedded default configuration, two cores.
    let s = ChildServer::start(
        bin,
        dir.path(),
        "cores = [0, 0]\ncreate_answer_ms = 3600000\nmetrics_listen = \"127.0.0.1:0\"",
        true,
    );
    let empty = disk_usage(dir.path());
    assert!(
        empty <= 64 << 20,
        "an empty server takes {} MiB",
        empty >> 20
    );
    let mut c = WireClient::connect(s.addr);
    let r = c.call(&Request::CreateStream(CreateStreamRequest {
        name: "s",
        shard_count: 1,
        retention_hours: 24,
        limits: Limits::Off,
        max_record_data_bytes: None,
        encryption: Default::default(),
    }));
    assert!(r.reply().is_ok(), "{:?}", r.reply());
    let batch = tagged_batch(&key_for_shard(0, 1), 1, 10, 100);
    put(&mut c, 0, &batch).expect("the first write");
    assert!(
        disk_usage(dir.path()) > empty,
        "the stream's store got its files"
    );
    s.stop();
}
