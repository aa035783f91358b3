//! The whole request path of a core on the simulated disk: the control plane (catalog saved
//! through the storage), limits and checks, appends, reads, long-polls, positions and
//! retention, with crashes (file data and directory changes lost as a power cut would) and
//! restarts, against a model of what every acknowledged put must leave behind.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use spate_protocol::batch::BatchBuilder;
use spate_protocol::routing::key_for_shard;

use crate::catalog::{Catalog, StreamOptions};
use crate::clock::{ClockRef, ManualClock};
use crate::config::EngineConfig;
use crate::error::EngineError;
use crate::io::Storage;
use crate::limits::Limits;
use crate::runtime::{
    call, ControlOp, Core, CoreMsg, IteratorPosition, ReadRequest, ShardIdent, ShardSpecMsg,
};
use crate::sim::{SimRng, SimStorage};
use crate::store::RoundSync;

const DATA: &str = "/data";

fn cfg() -> EngineConfig {
    EngineConfig {
        data_dir: PathBuf::from(DATA),
        // Small files: the simulated disk holds them in memory and copies them at a crash.
        extent_bytes_min: 16 << 10,
        extent_bytes_max: 256 << 10,
        volume_bytes: 1 << 20,
        journal_file_bytes: 1 << 20,
        journal_files: 3,
        round_bytes_max: 128 << 10,
        // Pacing waits on the wall clock: off, so a seed's schedule stays its own.
        round_rate_max: crate::config::RoundRate::Fixed(0),
        write_chunk_bytes_max: 64 << 10,
        memory_bytes_max: 4 << 20,
        checkpoint_bytes: 256 << 10,
        checkpoint_interval_ms: 1000,
        segment_age_max_ms: 1000,
        direct_write_bytes_min: 32 << 10,
        ..EngineConfig::default()
    }
}

/// Odd seeds run O_DSYNC rounds, even ones write-then-fdatasync rounds. O_DSYNC rounds
/// overlap, so their seeds also let the disk's writes complete out of order.
fn round_sync_of(seed: u64, storage: &SimStorage) -> RoundSync {
    if seed % 2 == 1 {
        storage.set_io_jitter(2);
        RoundSync::Dsync
    } else {
        RoundSync::Fdatasync
    }
}

/// A running core and the flag that stops its background driver.
struct Running {
    core: Rc<Core<SimStorage>>,
    alive: Rc<std::cell::Cell<bool>>,
    driver: glommio::Task<()>,
    /// The core's message channel: closed at the stop, which ends the message loop and so
    /// drops its reference to the core (the core holds the sending side: a cycle otherwise,
    /// and every restart of every seed would keep its core, caches included, to the end).
    inbox: async_channel::Receiver<CoreMsg>,
}

impl Running {
    /// Stops the background driver and waits for it, so nothing touches the disk after.
    async fn stop(self) -> Rc<Core<SimStorage>> {
        self.alive.set(false);
        self.driver.await;
        self.core.stopping.set(true);
        self.inbox.close();
        self.core
    }
}

/// Starts a single core on the simulated disk (catalog and stores recovered from it) with
/// its message loop running, as `run_core` does on a real one, and its background work
/// driven by a task of ours.
/// `sync`: how the store's rounds become durable (the seeds alternate between both).
async fn start(storage: &Rc<SimStorage>, clock: &ManualClock, sync: RoundSync) -> Running {
    let bytes = storage
        .read_small(&Path::new(DATA).join("catalog.bin"))
        .await
        .unwrap();
    let catalog = Catalog::from_bytes(Path::new(DATA), bytes.as_deref()).unwrap();
    let mut specs = Vec::new();
    let mut routes = HashMap::new();
    for s in &catalog.data.streams {
        specs.extend(ShardSpecMsg::from_catalog(s, None));
        routes.insert(s.name.clone(), s.clone());
    }
    let (tx, rx) = async_channel::bounded(64);
    let clock: ClockRef = Arc::new(clock.clone());
    let core = Rc::new(
        Core::open(
            0,
            1,
            EngineConfig {
                round_sync: sync,
                ..cfg()
            },
            clock,
            storage.clone(),
            vec![tx],
            Some(catalog),
            vec![(0, specs)],
            routes,
        )
        .await
        .expect("core opens"),
    );
    let c = core.clone();
    let inbox = rx.clone();
    glommio::spawn_local(async move {
        while let Ok(msg) = rx.recv().await {
            glommio::spawn_local(c.clone().handle(msg)).detach();
        }
    })
    .detach();
    let alive = Rc::new(std::cell::Cell::new(true));
    let (c, a) = (core.clone(), alive.clone());
    let driver = glommio::spawn_local(async move {
        while a.get() {
            if !c.background_once().await {
                futures_lite::future::yield_now().await;
            }
        }
    });
    Running {
        core,
        alive,
        driver,
        inbox,
    }
}

fn tagged(key: &str, tag: u64, n: u32, size: usize) -> Vec<u8> {
    let mut b = BatchBuilder::new();
    for i in 0..n {
        let mut data = format!("{tag}:{i}:").into_bytes();
        data.resize(size.max(data.len()), b'z');
        b.push(key.as_bytes(), &data, None).unwrap();
    }
    b.finish()
}

async fn read_shard(core: &Core<SimStorage>, id: ShardIdent) -> BTreeMap<u64, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut from = core
        .position(id, IteratorPosition::TrimHorizon)
        .await
        .unwrap();
    loop {
        let req = ReadRequest {
            from_seq: from,
            max_records: 100,
            max_bytes: 64 << 10,
            wait_ms: 0,
        };
        let r = core.read(id, req).await.unwrap();
        if r.batch_count == 0 {
            return out;
        }
        let mut pos = 0;
        while pos < r.bytes.len() {
            let h = spate_protocol::batch::verify_stored(
                &r.bytes[pos..pos
                    + spate_protocol::batch::BatchHeader::decode(&r.bytes[pos..])
                        .unwrap()
                        .batch_len as usize],
            )
            .unwrap();
            let one = &r.bytes[pos..pos + h.batch_len as usize];
            for (i, rec) in spate_protocol::batch::RecordIter::new(one, h.record_count).enumerate()
            {
                let seq = h.base_seq + i as u64;
                if (r.start_seq..r.end_seq).contains(&seq) {
                    out.insert(seq, rec.unwrap().data.to_vec());
                }
            }
            pos += h.batch_len as usize;
        }
        from = r.end_seq;
    }
}

#[test]
fn the_request_path_on_the_simulated_disk_survives_crashes() {
    let seeds: u64 = std::env::var("SPATE_CORE_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    glommio::LocalExecutorBuilder::default()
        .make()
        .expect("executor")
        .run(async move {
            for seed in 0..seeds {
                run_seed(seed).await;
            }
        });
}

async fn run_seed(seed: u64) {
    let storage = Rc::new(SimStorage::new(seed));
    storage.create_dir_all(Path::new(DATA)).await.unwrap();
    storage.sync_dir(Path::new("/")).await.unwrap();
    let clock = ManualClock::new(1_700_000_000_000);
    let mut rng = SimRng::new(seed ^ 0xc0);
    let sync = round_sync_of(seed, &storage);
    let mut running = start(&storage, &clock, sync).await;
    let mut core = running.core.clone();
    let shards = 1 + rng.below(8) as u32;
    let create = |name: &str, limits: Limits| ControlOp::CreateStream {
        name: name.into(),
        opts: StreamOptions {
            limits,
            ..StreamOptions::new(shards)
        },
        answer_within: None,
    };
    let peer = core.peers[0].clone();
    let entry = call(&peer, |reply| CoreMsg::Control {
        op: create("s", Limits::Off),
        reply,
    })
    .await
    .unwrap()
    .pop()
    .unwrap();
    let stream_id = entry.stream_id;
    // Acknowledged records: (shard, seq) -> data prefix.
    let mut acked: BTreeMap<(u32, u64), String> = BTreeMap::new();
    let mut tag = 0u64;
    for step in 0..60 {
        match rng.below(10) {
            0..=5 => {
                let n = 1 + rng.below(6) as usize;
                let puts: Vec<(u32, Vec<u8>, u64)> = (0..n)
                    .map(|_| {
                        let shard = rng.below(u64::from(shards)) as u32;
                        tag += 1;
                        let size = if rng.below(4) == 0 { 9000 } else { 200 };
                        let b = tagged(
                            &key_for_shard(shard, shards),
                            tag,
                            1 + rng.below(4) as u32,
                            size,
                        );
                        (shard, b, tag)
                    })
                    .collect();
                let results = crate::store::join_all(puts.iter().map(|(shard, b, _)| {
                    let c = core.clone();
                    let id = ShardIdent {
                        stream_id,
                        shard_id: *shard,
                    };
                    async move { c.append(id, b).await }
                }))
                .await;
                for ((shard, _, t), r) in puts.iter().zip(results) {
                    let out = r.unwrap_or_else(|e| panic!("seed {seed} step {step}: put: {e}"));
                    for i in 0..out.accepted {
                        acked.insert((*shard, out.base_seq + u64::from(i)), format!("{t}:{i}:"));
                    }
                }
            }
            6 => {
                // A long-poll at the tip answers at its timeout with nothing, and leaves no
                // waiter behind.
                let id = ShardIdent {
                    stream_id,
                    shard_id: 0,
                };
                let tip = core.position(id, IteratorPosition::Latest).await.unwrap();
                let r = core
                    .read(
                        id,
                        ReadRequest {
                            from_seq: tip,
                            max_records: 10,
                            max_bytes: 1 << 20,
                            wait_ms: 5,
                        },
                    )
                    .await
                    .unwrap();
                assert_eq!(r.batch_count, 0);
            }
            7 => {
                clock.advance(1500);
                core.apply_retention();
            }
            _ => {
                // A crash: the core is gone with everything in flight, the disk keeps
                // what a power cut would leave.
                drop(core);
                drop(running.stop().await);
                storage.crash();
                running = start(&storage, &clock, sync).await;
                core = running.core.clone();
                let peer = core.peers[0].clone();
                let snapshot = call(&peer, |reply| CoreMsg::Control {
                    op: ControlOp::Snapshot,
                    reply,
                })
                .await
                .unwrap();
                assert_eq!(
                    snapshot.len(),
                    1,
                    "seed {seed}: the created stream survives"
                );
                for shard in 0..shards {
                    let id = ShardIdent {
                        stream_id,
                        shard_id: shard,
                    };
                    let got = read_shard(&core, id).await;
                    for ((s, seq), prefix) in acked.range((shard, 0)..(shard, u64::MAX)) {
                        let _ = s;
                        let data = got.get(seq).unwrap_or_else(|| {
                            panic!("seed {seed} step {step}: acked {shard}/{seq} lost")
                        });
                        assert!(
                            data.starts_with(prefix.as_bytes()),
                            "seed {seed}: {shard}/{seq} changed"
                        );
                    }
                }
            }
        }
    }
    // Unknown streams and shards are typed errors, never a panic.
    let bad = ShardIdent {
        stream_id: 999,
        shard_id: 0,
    };
    assert!(matches!(
        core.append(bad, &tagged("k", 0, 1, 10)).await,
        Err(EngineError::UnknownShard { .. })
    ));
    drop(core);
    drop(running.stop().await);
}

#[test]
fn a_message_not_taken_is_shutting_down_and_one_taken_but_unanswered_is_unknown() {
    let ident = ShardIdent {
        stream_id: 1,
        shard_id: 0,
    };
    let append = |reply| CoreMsg::Append {
        ident,
        batch: Vec::new(),
        reply,
    };
    futures_lite::future::block_on(async {
        // Taken and dropped unanswered (the core stopped while running it).
        let (tx, rx) = async_channel::bounded(4);
        let taker = async {
            let msg = rx.recv().await.expect("sent");
            drop(msg);
        };
        let (got, ()) = futures_lite::future::zip(call(&tx, append), taker).await;
        assert!(matches!(got, Err(EngineError::OutcomeUnknown)), "{got:?}");
        // Refused unrun at shutdown: queued, then answered ShuttingDown.
        let sent = async { call(&tx, append).await };
        let refuser = async {
            rx.recv().await.expect("sent").refuse();
        };
        let (got, ()) = futures_lite::future::zip(sent, refuser).await;
        assert!(matches!(got, Err(EngineError::ShuttingDown)), "{got:?}");
        // Not taken at all: the channel is closed.
        rx.close();
        let got = call(&tx, append).await;
        assert!(matches!(got, Err(EngineError::ShuttingDown)), "{got:?}");
        // A read whose outcome is unknown changed nothing: as good as not done.
        let (tx, rx) = async_channel::bounded(4);
        let read = |reply| CoreMsg::Stats { ident, reply };
        let taker = async {
            drop(rx.recv().await.expect("sent"));
        };
        let (got, ()) =
            futures_lite::future::zip(crate::runtime::call_read(&tx, read), taker).await;
        assert!(matches!(got, Err(EngineError::ShuttingDown)), "{got:?}");
    });
}

#[test]
fn control_operations_show_kinesis_statuses_while_they_run() {
    use crate::runtime::StreamStatus;
    glommio::LocalExecutorBuilder::default()
        .make()
        .expect("executor")
        .run(async move {
            let storage = Rc::new(SimStorage::new(3));
            storage.create_dir_all(Path::new(DATA)).await.unwrap();
            storage.sync_dir(Path::new("/")).await.unwrap();
            let clock = ManualClock::new(1_700_000_000_000);
            let running = start(&storage, &clock, RoundSync::Fdatasync).await;
            let core = running.core.clone();
            // Runs `op` to its end, noting every status "s" shows on the way.
            let observe = |op: ControlOp| {
                let core = core.clone();
                async move {
                    let peer = core.peers[0].clone();
                    let task = glommio::spawn_local(async move {
                        call(&peer, |reply| CoreMsg::Control { op, reply }).await
                    });
                    let mut seen = Vec::new();
                    let done = Rc::new(std::cell::Cell::new(false));
                    let d = done.clone();
                    let waiter = glommio::spawn_local(async move {
                        let r = task.await;
                        d.set(true);
                        r
                    });
                    while !done.get() {
                        let now = core.statuses.borrow().get("s").copied();
                        if seen.last() != Some(&now) {
                            seen.push(now);
                        }
                        futures_lite::future::yield_now().await;
                    }
                    waiter.await.expect("operation succeeds");
                    let now = core.statuses.borrow().get("s").copied();
                    if seen.last() != Some(&now) {
                        seen.push(now);
                    }
                    seen
                }
            };
            let seen = observe(ControlOp::CreateStream {
                name: "s".into(),
                opts: StreamOptions {
                    limits: Limits::Off,
                    ..StreamOptions::new(64)
                },
                answer_within: None,
            })
            .await;
            assert_eq!(
                seen,
                vec![None, Some(StreamStatus::Creating), None],
                "create"
            );
            // The server's create answers before the shards are open: CREATING, then
            // ACTIVE by itself; a delete queued meanwhile waits for the create to end.
            let peer = core.peers[0].clone();
            let op = ControlOp::CreateStream {
                name: "early".into(),
                opts: StreamOptions::new(16),
                answer_within: Some(std::time::Duration::ZERO),
            };
            call(&peer, |reply| CoreMsg::Control { op, reply })
                .await
                .expect("created");
            assert_eq!(
                core.statuses.borrow().get("early").copied(),
                Some(StreamStatus::Creating)
            );
            let op = ControlOp::DeleteStream {
                name: "early".into(),
            };
            let deleting = glommio::spawn_local(async move {
                call(&peer, |reply| CoreMsg::Control { op, reply }).await
            });
            while core.statuses.borrow().get("early") == Some(&StreamStatus::Creating) {
                futures_lite::future::yield_now().await;
            }
            assert!(
                matches!(
                    core.statuses.borrow().get("early"),
                    None | Some(StreamStatus::Deleting)
                ),
                "ACTIVE (or already DELETING) after CREATING"
            );
            deleting.await.expect("deleted after the create ended");
            assert!(core.routes.borrow().get("early").is_none());
            let seen = observe(ControlOp::SetRetention {
                name: "s".into(),
                hours: 48,
            })
            .await;
            assert_eq!(
                seen,
                vec![None, Some(StreamStatus::Updating), None],
                "retention"
            );
            let seen = observe(ControlOp::DeleteStream { name: "s".into() }).await;
            assert_eq!(
                seen,
                vec![None, Some(StreamStatus::Deleting), None],
                "delete"
            );
            assert!(core.routes.borrow().get("s").is_none());
            running.stop().await;
        });
}

/// The open shard of `entry` that takes `hash`.
fn owner_of(entry: &crate::catalog::StreamEntry, hash: u128) -> u32 {
    entry
        .open_shards()
        .into_iter()
        .find(|s| (s.hash_range().0..=s.hash_range().1).contains(&hash))
        .expect("the open shards cover the key space")
        .shard_id
}

async fn snapshot(core: &Core<SimStorage>, name: &str) -> crate::catalog::StreamEntry {
    let peer = core.peers[0].clone();
    call(&peer, |reply| CoreMsg::Control {
        op: ControlOp::Snapshot,
        reply,
    })
    .await
    .unwrap()
    .into_iter()
    .find(|s| s.name == name)
    .expect("the stream exists")
}

/// Checks the stream against the model: the open shards cover the key space once; every
/// closed shard ends where it was sealed; read shard by shard in id order (a child always
/// has a higher id than its parents, so this is lineage order), each key's records come in
/// the order they were sent, and every acknowledged one is there exactly once.
async fn check_lineage(
    core: &Core<SimStorage>,
    seed: u64,
    step: usize,
    acked: &BTreeMap<String, std::collections::BTreeSet<u64>>,
) {
    let entry = snapshot(core, "r").await;
    assert!(
        entry.covers_key_space(),
        "seed {seed} step {step}: open shards {:?} do not cover the key space once",
        entry.open_shards()
    );
    let mut seen: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for sh in &entry.shards {
        let id = ShardIdent {
            stream_id: entry.stream_id,
            shard_id: sh.shard_id,
        };
        let got = read_shard(core, id).await;
        if let Some(end) = sh.ending_seq {
            let next = core.shard_stats(id).unwrap().next_seq;
            assert_eq!(
                next, end,
                "seed {seed} step {step}: closed shard {} holds records past its end",
                sh.shard_id
            );
        }
        for data in got.values() {
            let text = String::from_utf8_lossy(data);
            let mut parts = text.split(':');
            let key = parts.next().unwrap().to_string();
            let n: u64 = parts.next().unwrap().parse().unwrap();
            seen.entry(key).or_default().push(n);
        }
    }
    for (key, ns) in &seen {
        assert!(
            ns.windows(2).all(|w| w[0] < w[1]),
            "seed {seed} step {step}: key {key} out of order or repeated across lineage: {ns:?}"
        );
    }
    for (key, ns) in acked {
        let have: std::collections::BTreeSet<u64> =
            seen.get(key).into_iter().flatten().copied().collect();
        for n in ns {
            assert!(
                have.contains(n),
                "seed {seed} step {step}: acknowledged {key}:{n} lost"
            );
        }
    }
}

#[test]
fn resharding_under_writes_and_crashes_keeps_every_record_once_and_in_key_order() {
    let seeds: u64 = std::env::var("SPATE_RESHARD_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(16);
    glommio::LocalExecutorBuilder::default()
        .make()
        .expect("executor")
        .run(async move {
            for seed in 0..seeds {
                run_reshard_seed(seed).await;
            }
        });
}

async fn run_reshard_seed(seed: u64) {
    use spate_protocol::routing::hash_key;
    let storage = Rc::new(SimStorage::new(seed ^ 0x5eed));
    storage.create_dir_all(Path::new(DATA)).await.unwrap();
    storage.sync_dir(Path::new("/")).await.unwrap();
    let clock = ManualClock::new(1_700_000_000_000);
    let mut rng = SimRng::new(seed ^ 0x7e);
    let sync = round_sync_of(seed, &storage);
    let mut running = start(&storage, &clock, sync).await;
    let mut core = running.core.clone();
    call(&core.peers[0].clone(), |reply| CoreMsg::Control {
        op: ControlOp::CreateStream {
            name: "r".into(),
            opts: StreamOptions {
                limits: Limits::Off,
                ..StreamOptions::new(1 + rng.below(4) as u32)
            },
            answer_within: None,
        },
        reply,
    })
    .await
    .unwrap();
    let keys: Vec<String> = (0..24).map(|k| format!("key{k}")).collect();
    // Per key: the next number to send, and the acknowledged ones.
    let mut next: HashMap<String, u64> = HashMap::new();
    let mut acked: BTreeMap<String, std::collections::BTreeSet<u64>> = BTreeMap::new();
    for step in 0..70 {
        match rng.below(10) {
            0..=6 => {
                // Writes to distinct keys (one batch in flight per key), with a split, merge
                // or scale at the same moment half of the time.
                let entry = snapshot(&core, "r").await;
                let mut chosen: Vec<String> = Vec::new();
                for _ in 0..1 + rng.below(8) {
                    let k = keys[rng.below(keys.len() as u64) as usize].clone();
                    if !chosen.contains(&k) {
                        chosen.push(k);
                    }
                }
                let batches: Vec<(String, Vec<u8>, Vec<u64>)> = chosen
                    .into_iter()
                    .map(|k| {
                        let count = 1 + rng.below(3);
                        let first = *next.entry(k.clone()).or_default();
                        next.insert(k.clone(), first + count);
                        let mut b = BatchBuilder::new();
                        let ns: Vec<u64> = (first..first + count).collect();
                        for n in &ns {
                            let data = format!("{k}:{n}:").into_bytes();
                            b.push(k.as_bytes(), &data, None).unwrap();
                        }
                        (k, b.finish(), ns)
                    })
                    .collect();
                let op = match rng.below(6) {
                    0 => {
                        let open = entry.open_shards();
                        let s = open[rng.below(open.len() as u64) as usize];
                        let (a, b) = s.hash_range();
                        (b > a).then(|| ControlOp::SplitShard {
                            name: "r".into(),
                            shard_id: s.shard_id,
                            at: a
                                + 1
                                + (rng.next_u64() as u128
                                    * ((b - a) / u128::from(u64::MAX)).max(1))
                                .min(b - a - 1),
                        })
                    }
                    1 => {
                        let open = entry.open_shards();
                        (open.len() > 1).then(|| {
                            let i = rng.below(open.len() as u64 - 1) as usize;
                            ControlOp::MergeShards {
                                name: "r".into(),
                                shard_id: open[i + 1].shard_id,
                                adjacent: open[i].shard_id,
                            }
                        })
                    }
                    2 => Some(ControlOp::UpdateShardCount {
                        name: "r".into(),
                        target: 1 + rng.below(8) as u32,
                    }),
                    _ => None,
                };
                let peer = core.peers[0].clone();
                let reshard = async {
                    match op {
                        Some(op) => Some(
                            call(&peer, |reply| CoreMsg::Control { op, reply })
                                .await
                                .unwrap_or_else(|e| {
                                    panic!("seed {seed} step {step}: reshard: {e}")
                                }),
                        ),
                        None => None,
                    }
                };
                let puts = crate::store::join_all(batches.iter().map(|(k, b, _)| {
                    let c = core.clone();
                    let shard = owner_of(&entry, hash_key(k.as_bytes()));
                    let id = ShardIdent {
                        stream_id: entry.stream_id,
                        shard_id: shard,
                    };
                    async move { c.append(id, b).await }
                }));
                let (results, _) = futures_lite::future::zip(puts, reshard).await;
                for ((k, b, ns), r) in batches.iter().zip(results) {
                    let r = match r {
                        // Closed under the put: nothing of it was stored; it goes to the
                        // child that owns the key now.
                        Err(EngineError::ShardClosed { .. }) => {
                            let entry = snapshot(&core, "r").await;
                            let id = ShardIdent {
                                stream_id: entry.stream_id,
                                shard_id: owner_of(&entry, hash_key(k.as_bytes())),
                            };
                            core.append(id, b).await
                        }
                        other => other,
                    };
                    let out = r.unwrap_or_else(|e| panic!("seed {seed} step {step}: put {k}: {e}"));
                    assert_eq!(out.accepted as usize, ns.len());
                    acked.entry(k.clone()).or_default().extend(ns);
                }
            }
            7 => check_lineage(&core, seed, step, &acked).await,
            _ => {
                drop(core);
                drop(running.stop().await);
                storage.crash();
                clock.advance(1000);
                running = start(&storage, &clock, sync).await;
                core = running.core.clone();
                check_lineage(&core, seed, step, &acked).await;
            }
        }
    }
    check_lineage(&core, seed, 70, &acked).await;
    drop(core);
    drop(running.stop().await);
}
