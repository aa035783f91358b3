//! Crash recovery on real files: a child process appends from many threads and is killed
//! with SIGKILL at a random moment; after a restart every acknowledged batch is back, in
//! order, with its sequence numbers. Repeated on the same data directory, the kills aimed at
//! journaled rounds, at checkpoints, and at hot shards' in-place writes in turn, then at the
//! last two again with O_DSYNC rounds (`round_sync = "dsync"`, two rounds in flight).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use futures_lite::future::block_on;
use spate_engine::runtime::ReadRequest;
use spate_engine::Engine;
use spate_tests::{records, test_config};

struct Ack {
    shard: u32,
    base_seq: u64,
    count: u32,
    tag: u64,
}

/// Runs the writer until it has produced `acks_before_kill` acknowledgements, then kills it.
fn run_writer_and_kill(
    dir: &std::path::Path,
    start_tag: u64,
    mode: &str,
    acks_before_kill: usize,
) -> Vec<Ack> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_crash_writer"))
        .arg(dir)
        .arg(start_tag.to_string())
        .arg(mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn crash_writer");
    let stdout = child.stdout.take().unwrap();
    let mut acks = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("child output");
        if let Some(rest) = line.strip_prefix("ACK ") {
            let f: Vec<u64> = rest.split(' ').map(|x| x.parse().unwrap()).collect();
            acks.push(Ack {
                shard: f[0] as u32,
                base_seq: f[1],
                count: f[2] as u32,
                tag: f[3],
            });
            if acks.len() >= acks_before_kill || Instant::now() > deadline {
                // SIGKILL: no flush, no destructor, like a power cut for the process.
                unsafe {
                    libc::kill(child.id() as i32, libc::SIGKILL);
                }
                break;
            }
        }
    }
    let _ = child.wait();
    acks
}

#[test]
fn sigkill_at_random_moments_loses_no_acknowledged_batch() {
    let dir = tempfile::tempdir().unwrap();
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("crash test seed {seed}");
    let mut rng = seed | 1;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut all_acks: Vec<Ack> = Vec::new();
    for (round, mode) in [
        "journal",
        "checkpoint",
        "direct",
        "checkpoint",
        "journal",
        "direct",
        "direct-dsync",
        "journal-dsync",
    ]
    .into_iter()
    .enumerate()
    {
        let kill_after = 50 + (next() % 400) as usize;
        all_acks.extend(run_writer_and_kill(
            dir.path(),
            round as u64 * 1_000_000,
            mode,
            kill_after,
        ));
        let engine = Engine::start(test_config(dir.path())).expect("restart after SIGKILL");
        for shard in 0..16u32 {
            let mut got: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
            let mut from = 0;
            loop {
                let req = ReadRequest {
                    from_seq: from,
                    max_records: 10_000,
                    max_bytes: 4 << 20,
                    wait_ms: 0,
                };
                let r = block_on(engine.read("crash", shard, req)).expect("read after restart");
                if r.batch_count == 0 {
                    break;
                }
                for (seq, _, data) in records(&r.bytes, r.start_seq, r.end_seq) {
                    assert!(
                        got.insert(seq, data).is_none(),
                        "seed {seed}: seq {seq} twice"
                    );
                }
                from = r.end_seq;
            }
            let seqs: Vec<u64> = got.keys().copied().collect();
            assert_eq!(
                seqs,
                (0..seqs.len() as u64).collect::<Vec<_>>(),
                "seed {seed}: shard {shard} has gaps"
            );
            for ack in all_acks.iter().filter(|a| a.shard == shard) {
                for i in 0..ack.count {
                    let data = got.get(&(ack.base_seq + u64::from(i))).unwrap_or_else(|| {
                        panic!(
                            "seed {seed}: acked seq {} of shard {shard} lost",
                            ack.base_seq
                        )
                    });
                    let prefix = format!("{}:{i}:", ack.tag);
                    assert!(
                        data.starts_with(prefix.as_bytes()),
                        "seed {seed}: seq {} holds other data",
                        ack.base_seq
                    );
                }
            }
        }
        engine.shutdown();
    }
}
