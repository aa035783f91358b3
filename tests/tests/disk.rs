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
    let s = ChildServer::start(bin, &data, "cores = [0]", true);
    let mut c = WireClient::connect(s.addr);
    let r = c.call(&Request::CreateStream(CreateStreamRequest {
        name: "s",
        shard_count: 2,
        retention_hours: 24,
        limits: Limits::Off,
        max_record_data_bytes: None,
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
    let s = ChildServer::start(bin, &data, "cores = [0]", true);
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
