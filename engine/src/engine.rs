//! The engine handle: starts the cores, and is how any thread talks to them.
//!
//! `Engine` is `Clone + Send + Sync`; its async methods work under any executor (they only
//! await bounded channels), so a test, the CLI or a server thread can drive the engine.
//! Each data operation goes straight to the core that owns the shard; control operations go
//! to core 0, which owns the catalog. The stream routing table kept here (behind a mutex) is
//! used only by callers of this handle, never by the engine cores themselves.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_channel::Sender;
use spate_protocol::batch::BatchBuilder;
use spate_protocol::routing::hash_key;

use crate::catalog::{Catalog, ShardState, StreamEntry};
use crate::clock::{ClockRef, SystemClock};
use crate::config::EngineConfig;
use crate::error::EngineError;
use crate::keyring::Keyring;
use crate::limits::Limits;
use crate::runtime::{
    call, run_core, ControlOp, CoreMsg, CoreSetup, IteratorPosition, PutOutcome, ReadRequest,
    ShardIdent, ShardSpecMsg, ShardStats, SharedRoutes,
};
use crate::store::ReadOutput;

pub use crate::catalog::StreamOptions;

/// One shard as `describe` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardDescription {
    pub shard_id: u32,
    pub open: bool,
    pub hash_key_start: u128,
    pub hash_key_end: u128,
    pub parent: Option<u32>,
    pub adjacent_parent: Option<u32>,
    pub core: u32,
    /// Closed shards: one past the last sequence number they hold.
    pub ending_seq: Option<u64>,
    /// Oldest retained record, if any.
    pub first_seq: Option<u64>,
    /// Newest durable record, if any.
    pub last_seq: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamDescription {
    pub name: String,
    pub stream_id: u64,
    pub retention_hours: u32,
    pub limits: Limits,
    pub max_record_data_bytes: u32,
    pub shards: Vec<ShardDescription>,
    pub map_version: u64,
}

struct Inner {
    cores: Vec<Sender<CoreMsg>>,
    core_cpus: Vec<usize>,
    /// Published by core 0 after every control operation (see `SharedRoutes`).
    routes: SharedRoutes,
    threads: Mutex<Vec<glommio::ExecutorJoinHandle<()>>>,
    cfg: EngineConfig,
    /// `<data>/LOCK`, locked while the cores run (released at shutdown).
    lock: Mutex<Option<std::fs::File>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        shutdown_cores(&self.cores, &self.threads);
    }
}

/// A running engine. Cheap to clone; the cores stop at `shutdown` or when the last clone
/// is dropped.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("cores", &self.inner.core_cpus)
            .finish()
    }
}

/// The CPUs the engine will run on: the configured list, or every CPU this process may use.
pub fn engine_cpus(cfg: &EngineConfig) -> Result<Vec<usize>, EngineError> {
    if !cfg.cores.is_empty() {
        let allowed: Vec<usize> = core_affinity::get_core_ids()
            .unwrap_or_default()
            .iter()
            .map(|c| c.id)
            .collect();
        if let Some(bad) = cfg.cores.iter().find(|c| !allowed.contains(c)) {
            return Err(EngineError::Startup(format!(
                "core {bad} is not available to this process (available: {allowed:?}); fix --cores"
            )));
        }
        return Ok(cfg.cores.clone());
    }
    let ids = core_affinity::get_core_ids()
        .ok_or_else(|| EngineError::Startup("cannot list the CPUs this process may use".into()))?;
    Ok(ids.into_iter().map(|c| c.id).collect())
}

/// The file in the data directory holding the secret of iterator tokens.
pub const TOKEN_KEY_FILE: &str = "iterator.key";

/// The iterator-token secret of `data_dir`, made (from the kernel's random source, readable
/// by its owner only) at first start or when the file is damaged; a new secret only makes
/// outstanding iterators invalid, which clients answer by asking for new ones.
fn token_key(data_dir: &std::path::Path) -> Result<spate_protocol::TokenKey, EngineError> {
    use spate_protocol::token::TOKEN_KEY_LEN;
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join(TOKEN_KEY_FILE);
    let fail = |what: &str, e: std::io::Error| {
        EngineError::Startup(format!("cannot {what} {}: {e}", path.display()))
    };
    match std::fs::read(&path) {
        Ok(b) => match <[u8; TOKEN_KEY_LEN]>::try_from(b.as_slice()) {
            Ok(key) => return Ok(spate_protocol::TokenKey::new(key)),
            Err(_) => tracing::warn!(
                path = %path.display(),
                bytes = b.len(),
                "iterator key damaged; making a new one (outstanding iterators become invalid)"
            ),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail("read", e)),
    }
    let mut key = [0u8; TOKEN_KEY_LEN];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .map_err(|e| fail("make a secret for", e))?;
    let tmp = path.with_extension("tmp");
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(&key)?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, &path))
        .and_then(|()| std::fs::File::open(data_dir)?.sync_all())
        .map_err(|e| fail("write", e))?;
    Ok(spate_protocol::TokenKey::new(key))
}

/// Loads the master keys and checks that every encrypted stream's data keys unwrap under
/// them (a missing or wrong key stops the start, naming the stream: nothing undecryptable
/// is ever served); then gives every stream that seals a new data key for this run, since
/// a batch a crash cut may be on disk under the sequence numbers the next batches take
/// (`crypto::records`). The catalog is saved with the new keys before any core starts.
fn open_keyring(
    cfg: &EngineConfig,
    catalog: &mut Catalog,
    now_ms: i64,
) -> Result<Keyring, EngineError> {
    let startup = |e: EngineError| EngineError::Startup(e.to_string());
    let mut keyring = Keyring::open(cfg.key_file.as_deref()).map_err(startup)?;
    let mut renewed = false;
    for stream in &mut catalog.data.streams {
        if stream.encryption.is_none() {
            continue;
        }
        keyring.keys(stream).map_err(startup)?;
        let enc = stream.encryption.as_ref().expect("checked");
        if enc.is_on() {
            let next = keyring
                .with_new_epoch(stream.stream_id, Some(enc), now_ms)
                .map_err(startup)?;
            stream.encryption = Some(next);
            renewed = true;
        }
    }
    if renewed {
        catalog.save()?;
    }
    Ok(keyring)
}

impl Engine {
    /// Starts the engine with the system clock.
    pub fn start(cfg: EngineConfig) -> Result<Engine, EngineError> {
        Self::start_with_clock(cfg, Arc::new(SystemClock))
    }

    /// Starts one pinned executor per configured core, recovers every shard, and returns
    /// once all of them are ready to serve.
    pub fn start_with_clock(cfg: EngineConfig, clock: ClockRef) -> Result<Engine, EngineError> {
        cfg.validate().map_err(EngineError::Startup)?;
        let cpus = engine_cpus(&cfg)?;
        let mut seen = std::collections::BTreeSet::new();
        if let Some(cpu) = cpus.iter().find(|&&c| !seen.insert(c)) {
            // Allowed (tests run several cores on one CPU), but never what production wants:
            // the executors on one CPU take turns, and each keeps its store for good.
            tracing::warn!(
                "cores = {cpus:?}: CPU {cpu} runs more than one engine core; they take turns on it (the command line's --cores refuses this)"
            );
        }
        // Its own user's only (principals' keys, the audit trail, records in the clear).
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(&cfg.data_dir)
            .map_err(|e| {
                // `create_dir_all` says only "File exists" of a file in the way.
                let what = match std::fs::metadata(&cfg.data_dir) {
                    Ok(m) if !m.is_dir() => "it exists and is not a directory".to_string(),
                    _ => e.to_string(),
                };
                EngineError::Startup(format!(
                    "cannot create data dir {}: {what}",
                    cfg.data_dir.display()
                ))
            })?;
        let lock = lock_data_dir(&cfg.data_dir)?;
        let mode_of = |path: &std::path::Path| {
            std::fs::metadata(path)
                .ok()
                .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        };
        if let Some(mode) = mode_of(&cfg.data_dir).filter(|m| m & 0o077 != 0) {
            tracing::warn!(
                "data dir {} has mode {mode:o}: other users may read what it holds (principals' keys in auth.bin, the audit trail, records of streams stored in the clear); chmod 700 it",
                cfg.data_dir.display()
            );
        }
        // Written readable by an older version (before the server's umask).
        let secrets: Vec<String> = ["auth.bin", "iterator.key", "root.credentials"]
            .into_iter()
            .filter(|f| mode_of(&cfg.data_dir.join(f)).is_some_and(|m| m & 0o077 != 0))
            .map(str::to_owned)
            .collect();
        if !secrets.is_empty() {
            tracing::warn!(
                "{} in {} may be read by other users: chmod 600 them",
                secrets.join(", "),
                cfg.data_dir.display()
            );
        }
        // Refuse to start, with one line naming the fix, when the host cannot run glommio
        // (old kernel, io_uring disabled, memlock too low, no O_DIRECT on the data dir),
        // instead of panicking deep inside the runtime.
        let report = spate_tuning::preflight(
            &cfg.data_dir,
            cpus.len(),
            cfg.io_memory_bytes as u64,
            cfg.open_files_needed(cpus.len()),
        )
        .map_err(|e| EngineError::Startup(e.to_string()))?;
        tracing::info!("{}", report.summary());
        if cfg.io_uring_coop_taskrun {
            if let Err(e) = spate_tuning::probe::probe_io_uring_coop_taskrun() {
                tracing::warn!(
                    "io_uring_coop_taskrun: the kernel refuses IORING_SETUP_COOP_TASKRUN ({e}; Linux 5.19+): each core's ring is set up without it, and completions interrupt the cores (tuning/README.md, \"Interrupts\")"
                );
            }
        }
        if cfg.data_dir.join("streams").exists() {
            return Err(EngineError::Startup(format!(
                "{} holds data in the per-shard layout of Spate before 0.2, which this build does not read; move it away or use another --data-dir",
                cfg.data_dir.display()
            )));
        }
        let mut catalog = Catalog::load(&cfg.data_dir)?;
        let token_key = token_key(&cfg.data_dir)?;
        let keyring = open_keyring(&cfg, &mut catalog, clock.now_ms())?;
        let mut keyring = Some(keyring);
        let n = cpus.len();
        let mut routes = HashMap::new();
        // A shard's data lives in the store the catalog placed it on; store `k` is served by
        // core `k % n`, so placement survives a change of the core count (a core may then
        // serve several stores). Every core serves at least its own store.
        let mut stores: std::collections::BTreeMap<u32, Vec<ShardSpecMsg>> =
            (0..n as u32).map(|k| (k, Vec::new())).collect();
        for name in crate::io::list_dir_blocking(&cfg.data_dir).unwrap_or_default() {
            if let Some(k) = name
                .strip_prefix("store-")
                .and_then(|k| k.parse::<u32>().ok())
            {
                stores.entry(k).or_default();
            }
        }
        for stream in &catalog.data.streams {
            let keys = keyring.as_mut().expect("not yet handed out").keys(stream)?;
            for spec in ShardSpecMsg::from_catalog(stream, keys) {
                stores.entry(spec.store).or_default().push(spec);
            }
            routes.insert(stream.name.clone(), Arc::new(stream.clone()));
        }
        let mut per_core: Vec<Vec<(u32, Vec<ShardSpecMsg>)>> = vec![Vec::new(); n];
        for (k, specs) in stores {
            per_core[k as usize % n].push((k, specs));
        }
        let channels: Vec<_> = (0..n)
            .map(|_| async_channel::bounded(cfg.core_queue_depth))
            .collect();
        let senders: Vec<Sender<CoreMsg>> = channels.iter().map(|(tx, _)| tx.clone()).collect();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let mut threads = Vec::with_capacity(n);
        let core_routes: HashMap<String, StreamEntry> = catalog
            .data
            .streams
            .iter()
            .map(|s| (s.name.clone(), s.clone()))
            .collect();
        let published: SharedRoutes = Arc::new(std::sync::RwLock::new(routes));
        let mut catalog = Some(catalog);
        for (index, ((_, rx), stores)) in channels.into_iter().zip(per_core).enumerate() {
            let setup = CoreSetup {
                index,
                cores: n,
                cfg: cfg.clone(),
                clock: clock.clone(),
                rx,
                peers: senders.clone(),
                routes: core_routes.clone(),
                published: published.clone(),
                token_key: token_key.clone(),
                catalog: if index == 0 { catalog.take() } else { None },
                keyring: if index == 0 { keyring.take() } else { None },
                stores,
                ready: ready_tx.clone(),
            };
            let spawned =
                glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(cpus[index]))
                    .name(&format!("spate-core-{index}"))
                    .io_memory(cfg.io_memory_bytes)
                    .coop_taskrun(cfg.io_uring_coop_taskrun)
                    .spawn(move || run_core(setup));
            match spawned {
                Ok(handle) => threads.push(handle),
                Err(e) => {
                    let threads = Mutex::new(threads);
                    shutdown_cores(&senders, &threads);
                    return Err(EngineError::Startup(format!(
                        "cannot start executor on CPU {}: {e}",
                        cpus[index]
                    )));
                }
            }
        }
        drop(ready_tx);
        let inner = Inner {
            cores: senders,
            core_cpus: cpus,
            routes: published,
            threads: Mutex::new(threads),
            cfg,
            lock: Mutex::new(Some(lock)),
        };
        for _ in 0..n {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(EngineError::Startup(
                        "an engine core exited during start".into(),
                    ))
                }
            }
        }
        Ok(Engine {
            inner: Arc::new(inner),
        })
    }

    /// The request channel of core `index` (the server uses it to bind listeners).
    pub(crate) fn core_sender(&self, index: usize) -> &Sender<CoreMsg> {
        &self.inner.cores[index]
    }

    /// CPUs the cores are pinned to, by core index.
    pub fn core_cpus(&self) -> &[usize] {
        &self.inner.core_cpus
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.cfg
    }

    fn route(&self, stream: &str) -> Result<Arc<StreamEntry>, EngineError> {
        self.inner
            .routes
            .read()
            .expect("routes lock")
            .get(stream)
            .cloned()
            .ok_or_else(|| EngineError::UnknownStream(stream.to_owned()))
    }

    /// The core index and identity of a stream's shard.
    pub fn shard_owner(
        &self,
        stream: &str,
        shard_id: u32,
    ) -> Result<(ShardIdent, usize), EngineError> {
        self.route(stream)?.locate(shard_id, self.inner.cores.len())
    }

    /// The shard whose hash-key range holds `hash`.
    pub fn shard_for_hash(&self, stream: &str, hash: u128) -> Result<u32, EngineError> {
        let entry = self.route(stream)?;
        entry
            .shards
            .iter()
            .find(|s| {
                s.state == ShardState::Open && (s.hash_range().0..=s.hash_range().1).contains(&hash)
            })
            .map(|s| s.shard_id)
            .ok_or_else(|| {
                EngineError::Corrupt(format!(
                    "no open shard of {stream:?} covers hash key {hash}"
                ))
            })
    }

    async fn control(&self, op: ControlOp) -> Result<Vec<StreamEntry>, EngineError> {
        call(&self.inner.cores[0], |reply| CoreMsg::Control { op, reply }).await
    }

    pub async fn create_stream(
        &self,
        name: &str,
        opts: StreamOptions,
    ) -> Result<StreamEntry, EngineError> {
        let op = ControlOp::CreateStream {
            name: name.to_owned(),
            opts,
            answer_within: None,
        };
        Ok(self.control(op).await?.pop().expect("created stream"))
    }

    pub async fn delete_stream(&self, name: &str) -> Result<(), EngineError> {
        self.control(ControlOp::DeleteStream {
            name: name.to_owned(),
        })
        .await?;
        Ok(())
    }

    pub async fn set_retention(&self, name: &str, hours: u32) -> Result<(), EngineError> {
        self.control(ControlOp::SetRetention {
            name: name.to_owned(),
            hours,
        })
        .await?;
        Ok(())
    }

    /// Stream names, sorted.
    pub async fn list_streams(&self) -> Result<Vec<String>, EngineError> {
        let mut names: Vec<String> = self
            .control(ControlOp::Snapshot)
            .await?
            .into_iter()
            .map(|s| s.name)
            .collect();
        names.sort();
        Ok(names)
    }

    pub async fn describe_stream(&self, name: &str) -> Result<StreamDescription, EngineError> {
        let entry = self
            .control(ControlOp::Snapshot)
            .await?
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| EngineError::UnknownStream(name.to_owned()))?;
        let mut shards = Vec::with_capacity(entry.shards.len());
        for sh in &entry.shards {
            let stats = self.shard_stats(name, sh.shard_id).await?;
            let (start, end) = sh.hash_range();
            let has_data = stats.next_seq > stats.first_seq;
            shards.push(ShardDescription {
                shard_id: sh.shard_id,
                open: sh.state == ShardState::Open,
                hash_key_start: start,
                hash_key_end: end,
                parent: sh.parent,
                adjacent_parent: sh.adjacent_parent,
                core: sh.core % self.inner.cores.len() as u32,
                ending_seq: sh.ending_seq,
                first_seq: has_data.then_some(stats.first_seq),
                last_seq: has_data.then(|| stats.next_seq - 1),
            });
        }
        Ok(StreamDescription {
            name: entry.name,
            stream_id: entry.stream_id,
            retention_hours: entry.retention_hours,
            limits: entry.limits,
            max_record_data_bytes: entry.max_record_data_bytes,
            shards,
            map_version: entry.map_version,
        })
    }

    /// Kinesis' SplitShard; answers the stream's catalog entry after the change.
    pub async fn split_shard(
        &self,
        stream: &str,
        shard_id: u32,
        at: u128,
    ) -> Result<StreamEntry, EngineError> {
        let op = ControlOp::SplitShard {
            name: stream.to_owned(),
            shard_id,
            at,
        };
        Ok(self.control(op).await?.pop().expect("after"))
    }

    /// Kinesis' MergeShards; answers the stream's catalog entry after the change.
    pub async fn merge_shards(
        &self,
        stream: &str,
        shard_id: u32,
        adjacent: u32,
    ) -> Result<StreamEntry, EngineError> {
        let op = ControlOp::MergeShards {
            name: stream.to_owned(),
            shard_id,
            adjacent,
        };
        Ok(self.control(op).await?.pop().expect("after"))
    }

    /// Kinesis' UpdateShardCount (uniform scaling); answers the entry after the change.
    pub async fn update_shard_count(
        &self,
        stream: &str,
        target: u32,
    ) -> Result<StreamEntry, EngineError> {
        let op = ControlOp::UpdateShardCount {
            name: stream.to_owned(),
            target,
        };
        Ok(self.control(op).await?.pop().expect("after"))
    }

    pub async fn shard_stats(
        &self,
        stream: &str,
        shard_id: u32,
    ) -> Result<ShardStats, EngineError> {
        let (ident, core) = self.shard_owner(stream, shard_id)?;
        call(&self.inner.cores[core], |reply| CoreMsg::Stats {
            ident,
            reply,
        })
        .await
    }

    /// Appends a producer batch (built with `protocol::batch::BatchBuilder`) to one shard.
    /// Returns once the accepted records are durable.
    pub async fn put_batch(
        &self,
        stream: &str,
        shard_id: u32,
        batch: Vec<u8>,
    ) -> Result<PutOutcome, EngineError> {
        let (ident, core) = self.shard_owner(stream, shard_id)?;
        call(&self.inner.cores[core], |reply| CoreMsg::Append {
            ident,
            batch,
            reply,
        })
        .await
    }

    /// Puts one record, routed by the MD5 of its partition key (or the explicit hash key).
    pub async fn put_record(
        &self,
        stream: &str,
        key: &[u8],
        data: &[u8],
        explicit_hash_key: Option<u128>,
    ) -> Result<PutOutcome, EngineError> {
        let shard =
            self.shard_for_hash(stream, explicit_hash_key.unwrap_or_else(|| hash_key(key)))?;
        let mut b = BatchBuilder::with_capacity(128 + key.len() + data.len());
        b.push(key, data, explicit_hash_key)?;
        self.put_batch(stream, shard, b.finish()).await
    }

    /// Resolves an iterator start position to a sequence number.
    pub async fn position(
        &self,
        stream: &str,
        shard_id: u32,
        pos: IteratorPosition,
    ) -> Result<u64, EngineError> {
        let (ident, core) = self.shard_owner(stream, shard_id)?;
        call(&self.inner.cores[core], |reply| CoreMsg::Position {
            ident,
            pos,
            reply,
        })
        .await
    }

    /// Reads stored batches from a shard (see `ShardLog::read`), optionally long-polling.
    pub async fn read(
        &self,
        stream: &str,
        shard_id: u32,
        req: ReadRequest,
    ) -> Result<ReadOutput, EngineError> {
        let (ident, core) = self.shard_owner(stream, shard_id)?;
        call(&self.inner.cores[core], |reply| CoreMsg::Read {
            consumer: None,
            ident,
            req,
            reply,
        })
        .await
    }

    /// Takes a checkpoint of every store now (they also run by themselves).
    pub async fn checkpoint(&self) -> Result<(), EngineError> {
        for core in &self.inner.cores {
            call(core, |reply| CoreMsg::CheckpointNow { reply }).await?;
        }
        Ok(())
    }

    /// Runs the retention sweep on every core now (it also runs periodically).
    pub async fn run_retention(&self) -> Result<usize, EngineError> {
        let mut total = 0;
        for core in &self.inner.cores {
            total += call(core, |reply| CoreMsg::RetentionNow { reply }).await?;
        }
        Ok(total)
    }

    /// Flushes every shard and stops the cores. Blocks the calling thread; do not call it
    /// from an engine core. Idempotent.
    pub fn shutdown(&self) {
        shutdown_cores(&self.inner.cores, &self.inner.threads);
        // Every core has stopped: the data directory is free for the next engine.
        drop(
            self.inner
                .lock
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
    }
}

/// The data directory's lock file: an exclusive `flock` on it is held while the engine
/// runs, so that a second engine on the same directory (which would write the same
/// journals and volumes, and lose records the first acknowledged) refuses to start.
pub const LOCK_FILE: &str = "LOCK";

/// Takes `<data>/LOCK` (and writes this process's id into it), or says who holds it.
fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File, EngineError> {
    use std::io::{Read, Seek, Write};
    let path = dir.join(LOCK_FILE);
    let fail = |e: std::io::Error| {
        EngineError::Startup(format!(
            "cannot lock the data dir ({}): {e}",
            path.display()
        ))
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(fail)?;
    use std::os::fd::AsRawFd;
    // SAFETY: flock(2) on a descriptor this function owns; no memory is involved.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    let locked = if locked == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    };
    match locked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => String::new(),
                pid => format!(" (pid {pid})"),
            };
            return Err(EngineError::Startup(format!(
                "data dir {} is in use by another Spate engine{holder}: two engines on one directory would lose acknowledged records; stop it, or use another --data-dir",
                dir.display()
            )));
        }
        Err(e) => return Err(fail(e)),
    }
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .map_err(fail)?;
    Ok(file)
}

fn shutdown_cores(
    cores: &[Sender<CoreMsg>],
    threads: &Mutex<Vec<glommio::ExecutorJoinHandle<()>>>,
) {
    let mut threads = threads.lock().unwrap_or_else(|p| p.into_inner());
    if threads.is_empty() {
        return;
    }
    // Every core at once: a long-poll forwarded from one core to another ends when the
    // owning core stops, and the cores' drains and closing graces overlap.
    let replies: Vec<_> = cores
        .iter()
        .map(|core| {
            let (tx, rx) = async_channel::bounded(1);
            core.send_blocking(CoreMsg::Shutdown { reply: tx })
                .is_ok()
                .then_some(rx)
        })
        .collect();
    for rx in replies.into_iter().flatten() {
        let _ = rx.recv_blocking();
    }
    for core in cores {
        core.close();
    }
    for t in threads.drain(..) {
        let _ = t.join();
    }
}
