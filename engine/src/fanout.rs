//! Fan-out state, owned by core 0 like the catalog: registered (push) consumers, and
//! consumer groups — their members, the shard leases the engine hands them, and their
//! checkpoints (what Kinesis' client library keeps in a DynamoDB table).
//!
//! What must survive a restart (consumers, groups, checkpoints) is [`FanoutData`], kept in
//! `<data>/fanout.bin` in the catalog's file format (magic `SPFANOU1`, CRC32C, length, rkyv
//! archive) and written atomically, through the storage, before a change is answered —
//! except checkpoints, the frequent change, which are appended to `<data>/fanout.log` (one
//! fdatasync per group of them) and folded into the next snapshot ([`Fanout::take_log`]).
//! Members and leases live in memory only: after a restart every worker's next heartbeat
//! rejoins it and the shards are leased afresh (a worker resumes after the checkpoint, so
//! nothing checkpointed is delivered again; what came after it may be: at-least-once).
//!
//! Leases: a worker that has not heartbeat for `lease_timeout_ms` is dropped and its shards
//! go to the others at their next heartbeat. A shard is leasable once every parent it has
//! in the stream is checkpointed at its end (a child after its parents, as Kinesis' client
//! library does); shards are spread so that no worker holds more than one more than any
//! other. Every hand-over raises the shard's epoch, and a checkpoint must name the epoch of
//! the lease it holds (fencing: a worker that lost a shard cannot checkpoint it).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use spate_protocol::consumer::{Checkpoint, Lease};
use spate_protocol::IteratorPosition;

use crate::catalog::{ShardState, StreamEntry};
use crate::error::EngineError;

const FANOUT_MAGIC: [u8; 8] = *b"SPFANOU1";
pub const FANOUT_FILE: &str = "fanout.bin";
/// Checkpoints since the last snapshot, appended (see [`Fanout::take_log`]).
pub const CHECKPOINT_LOG_FILE: &str = "fanout.log";
/// Past this many bytes of checkpoint log, the state is written whole and the log starts
/// over.
pub const CHECKPOINT_LOG_MAX_BYTES: u64 = 4 << 20;

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ConsumerEntry {
    /// The stream incarnation it is registered on (a re-created stream starts with none).
    pub stream_id: u64,
    pub name: String,
    pub consumer_id: u64,
    pub created_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum GroupStart {
    TrimHorizon,
    Latest,
    AtTimestamp(i64),
}

impl GroupStart {
    pub fn from_position(p: IteratorPosition) -> Result<GroupStart, EngineError> {
        match p {
            IteratorPosition::TrimHorizon => Ok(GroupStart::TrimHorizon),
            IteratorPosition::Latest => Ok(GroupStart::Latest),
            IteratorPosition::AtTimestamp { ts_ms } => Ok(GroupStart::AtTimestamp(ts_ms)),
            _ => Err(EngineError::InvalidArgument(
                "a group starts at TRIM_HORIZON, LATEST or AT_TIMESTAMP".into(),
            )),
        }
    }

    pub fn position(self) -> IteratorPosition {
        match self {
            GroupStart::TrimHorizon => IteratorPosition::TrimHorizon,
            GroupStart::Latest => IteratorPosition::Latest,
            GroupStart::AtTimestamp(ts_ms) => IteratorPosition::AtTimestamp { ts_ms },
        }
    }

    /// Where a shard the group has not checkpointed is read from. A group from LATEST
    /// reads what arrived from its creation on: read as LATEST by whichever worker holds
    /// the lease, a shard whose lease moved before its first checkpoint would skip what
    /// arrived in between (and a child shard would skip its first records).
    pub fn read_from(self, created_ms: i64) -> IteratorPosition {
        match self {
            GroupStart::Latest => IteratorPosition::AtTimestamp { ts_ms: created_ms },
            other => other.position(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum StoredCheckpoint {
    After(u64),
    ShardEnd,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct GroupEntry {
    pub stream_id: u64,
    pub name: String,
    pub start: GroupStart,
    pub created_ms: i64,
    /// By shard id, ascending.
    pub checkpoints: Vec<(u32, StoredCheckpoint)>,
}

impl GroupEntry {
    pub fn checkpoint(&self, shard_id: u32) -> Checkpoint {
        match self
            .checkpoints
            .binary_search_by_key(&shard_id, |(s, _)| *s)
        {
            Ok(i) => match self.checkpoints[i].1 {
                StoredCheckpoint::After(seq) => Checkpoint::After { seq },
                StoredCheckpoint::ShardEnd => Checkpoint::ShardEnd,
            },
            Err(_) => Checkpoint::None,
        }
    }

    fn set_checkpoint(&mut self, shard_id: u32, c: StoredCheckpoint) {
        match self
            .checkpoints
            .binary_search_by_key(&shard_id, |(s, _)| *s)
        {
            Ok(i) => self.checkpoints[i].1 = c,
            Err(i) => self.checkpoints.insert(i, (shard_id, c)),
        }
    }

    fn done(&self, shard_id: u32) -> bool {
        self.checkpoint(shard_id) == Checkpoint::ShardEnd
    }
}

/// What survives a restart.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct FanoutData {
    pub next_consumer_id: u64,
    pub consumers: Vec<ConsumerEntry>,
    pub groups: Vec<GroupEntry>,
}

/// A group's members and leases (memory only).
#[derive(Debug, Default)]
struct GroupLive {
    /// Worker -> time of its last heartbeat (ms).
    members: BTreeMap<String, i64>,
    /// Shard -> (worker, epoch).
    leases: BTreeMap<u32, (String, u64)>,
}

/// One member as describe shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    pub worker: String,
    pub idle_ms: u64,
    pub leases: u32,
}

/// One shard as describe shows it (the caller adds the shard's end to compute lag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardView {
    pub shard_id: u32,
    pub owner: Option<String>,
    pub epoch: u64,
    pub checkpoint: Checkpoint,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupView {
    pub name: String,
    pub start: GroupStart,
    pub created_ms: i64,
    pub members: Vec<MemberView>,
    pub shards: Vec<ShardView>,
}

/// Core 0's fan-out state; see the module docs.
#[derive(Debug)]
pub struct Fanout {
    path: PathBuf,
    pub data: FanoutData,
    live: HashMap<(u64, String), GroupLive>,
    /// Lease epochs: from the clock at start, so they rise across restarts too.
    next_epoch: u64,
    /// Raised by every change to `data` but checkpoints (what a snapshot must cover).
    pub changes: u64,
    /// Checkpoints stored since the start, and the encoded log records of those not yet
    /// handed to the log writer, by number.
    pub checkpoints: u64,
    log_pending: Vec<(u64, Vec<u8>)>,
}

impl Fanout {
    /// The state of `data_dir` from its file's bytes (`None`: no file yet).
    pub fn from_bytes(
        data_dir: &Path,
        bytes: Option<&[u8]>,
        now_ms: i64,
    ) -> Result<Fanout, EngineError> {
        let path = data_dir.join(FANOUT_FILE);
        let data = match bytes {
            None => FanoutData {
                next_consumer_id: 1,
                ..Default::default()
            },
            Some(b) => decode(b).map_err(|why| {
                EngineError::Startup(format!("{} is damaged: {why}", path.display()))
            })?,
        };
        Ok(Fanout {
            path,
            data,
            live: HashMap::new(),
            next_epoch: (now_ms.max(0) as u64) << 8,
            changes: 0,
            checkpoints: 0,
            log_pending: Vec::new(),
        })
    }

    /// The file's path and encoded bytes, for an atomic write.
    pub fn encoded(&self) -> (PathBuf, Vec<u8>) {
        (self.path.clone(), encode(&self.data))
    }

    /// The checkpoint log's records not yet taken, up to checkpoint number `upto`, as bytes
    /// to append (CRC-framed: a torn tail is found and ignored on replay).
    ///
    /// Checkpoints are the frequent change (a worker may checkpoint every batch), so each
    /// is appended to `fanout.log` (one fdatasync per group of them) instead of rewriting
    /// the whole state; a snapshot (`fanout.bin`) covers every checkpoint made before it and
    /// empties the log. Replaying a record is idempotent and never moves a checkpoint back
    /// or onto a group re-created since ([`Fanout::replay_log`]), so a log left behind by a
    /// crash between a snapshot and the log's removal does no harm.
    pub fn take_log(&mut self, upto: u64) -> Vec<u8> {
        let mut out = Vec::new();
        self.log_pending.retain(|(n, bytes)| {
            if *n <= upto {
                out.extend_from_slice(bytes);
                false
            } else {
                true
            }
        });
        out
    }

    /// Forgets the log records a snapshot covered (numbers up to `upto`).
    pub fn snapshot_covers(&mut self, upto: u64) {
        self.log_pending.retain(|(n, _)| *n > upto);
    }

    /// Applies a checkpoint log's records (`bytes`, the file's contents) over the state
    /// loaded from the snapshot; stops at the first record that does not verify (a torn
    /// tail). Answers how many records it read.
    pub fn replay_log(&mut self, bytes: &[u8]) -> usize {
        let mut pos = 0;
        let mut read = 0;
        while let Some((rec, len)) = decode_log_record(&bytes[pos..]) {
            pos += len;
            read += 1;
            let Some(g) = self.data.groups.iter_mut().find(|g| {
                g.stream_id == rec.stream_id
                    && g.name == rec.group
                    && g.created_ms == rec.group_created_ms
            }) else {
                continue;
            };
            let ahead = match (g.checkpoint(rec.shard_id), rec.checkpoint) {
                (Checkpoint::None, _) => true,
                (Checkpoint::After { seq: old }, StoredCheckpoint::After(new)) => new > old,
                (Checkpoint::After { .. }, StoredCheckpoint::ShardEnd) => true,
                (Checkpoint::ShardEnd, _) => false,
            };
            if ahead {
                g.set_checkpoint(rec.shard_id, rec.checkpoint);
            }
        }
        read
    }

    /// Drops what belongs to stream incarnations that no longer exist.
    pub fn retain_streams(&mut self, live: impl Fn(u64) -> bool) {
        let before = (self.data.consumers.len(), self.data.groups.len());
        self.data.consumers.retain(|c| live(c.stream_id));
        self.data.groups.retain(|g| live(g.stream_id));
        self.live.retain(|(stream_id, _), _| live(*stream_id));
        if before != (self.data.consumers.len(), self.data.groups.len()) {
            self.changes += 1;
        }
    }

    // ---- consumers -----------------------------------------------------------------

    pub fn consumer(
        &self,
        stream: &StreamEntry,
        name: &str,
    ) -> Result<&ConsumerEntry, EngineError> {
        self.data
            .consumers
            .iter()
            .find(|c| c.stream_id == stream.stream_id && c.name == name)
            .ok_or_else(|| EngineError::UnknownConsumer {
                stream: stream.name.clone(),
                consumer: name.to_owned(),
            })
    }

    pub fn consumers(&self, stream: &StreamEntry) -> Vec<ConsumerEntry> {
        let mut out: Vec<ConsumerEntry> = self
            .data
            .consumers
            .iter()
            .filter(|c| c.stream_id == stream.stream_id)
            .cloned()
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub fn register(
        &mut self,
        stream: &StreamEntry,
        name: &str,
        max_per_stream: u32,
        now_ms: i64,
    ) -> Result<ConsumerEntry, EngineError> {
        if !spate_protocol::consumer::is_valid_name(name) {
            return Err(EngineError::InvalidArgument(format!(
                "consumer name {name:?} must be 1-128 characters of A-Z a-z 0-9 _ . -"
            )));
        }
        if self.consumer(stream, name).is_ok() {
            return Err(EngineError::ConsumerExists {
                stream: stream.name.clone(),
                consumer: name.to_owned(),
            });
        }
        let count = self
            .data
            .consumers
            .iter()
            .filter(|c| c.stream_id == stream.stream_id)
            .count();
        if count >= max_per_stream as usize {
            return Err(EngineError::LimitExceeded(format!(
                "stream {:?} has {count} registered consumers, the most allowed (max_consumers_per_stream)",
                stream.name
            )));
        }
        let entry = ConsumerEntry {
            stream_id: stream.stream_id,
            name: name.to_owned(),
            consumer_id: self.data.next_consumer_id,
            created_ms: now_ms,
        };
        self.data.next_consumer_id += 1;
        self.data.consumers.push(entry.clone());
        self.changes += 1;
        Ok(entry)
    }

    pub fn deregister(
        &mut self,
        stream: &StreamEntry,
        name: &str,
    ) -> Result<ConsumerEntry, EngineError> {
        let id = self.consumer(stream, name)?.consumer_id;
        let i = self
            .data
            .consumers
            .iter()
            .position(|c| c.consumer_id == id)
            .expect("found above");
        self.changes += 1;
        Ok(self.data.consumers.remove(i))
    }

    // ---- groups --------------------------------------------------------------------

    fn group_index(&self, stream: &StreamEntry, group: &str) -> Result<usize, EngineError> {
        self.data
            .groups
            .iter()
            .position(|g| g.stream_id == stream.stream_id && g.name == group)
            .ok_or_else(|| EngineError::UnknownGroup {
                stream: stream.name.clone(),
                group: group.to_owned(),
            })
    }

    pub fn groups(&self, stream: &StreamEntry) -> Vec<String> {
        let mut out: Vec<String> = self
            .data
            .groups
            .iter()
            .filter(|g| g.stream_id == stream.stream_id)
            .map(|g| g.name.clone())
            .collect();
        out.sort();
        out
    }

    pub fn delete_group(&mut self, stream: &StreamEntry, group: &str) -> Result<(), EngineError> {
        let i = self.group_index(stream, group)?;
        self.data.groups.remove(i);
        self.live.remove(&(stream.stream_id, group.to_owned()));
        self.changes += 1;
        Ok(())
    }

    /// A worker's heartbeat: creates the group (at `start`) if it does not exist, renews
    /// the worker (or, with `leave`, removes it and frees its leases), expires silent
    /// workers, rebalances, and answers the worker's leases.
    #[allow(clippy::too_many_arguments)]
    pub fn heartbeat(
        &mut self,
        stream: &StreamEntry,
        group: &str,
        worker: &str,
        start: IteratorPosition,
        leave: bool,
        now_ms: i64,
        timeout_ms: u64,
    ) -> Result<Vec<Lease>, EngineError> {
        if !spate_protocol::consumer::is_valid_name(group) {
            return Err(EngineError::InvalidArgument(format!(
                "group name {group:?} must be 1-128 characters of A-Z a-z 0-9 _ . -"
            )));
        }
        let start = GroupStart::from_position(start)?;
        let gi = match self.group_index(stream, group) {
            Ok(i) => i,
            Err(_) if leave => return Ok(Vec::new()),
            Err(_) => {
                // A group is not made to start in the future (as an iterator is not): its
                // readers would be refused, or read what came before its time.
                if let GroupStart::AtTimestamp(ts) = start {
                    if ts > now_ms.saturating_add(crate::runtime::FUTURE_TIMESTAMP_GRACE_MS) {
                        return Err(EngineError::InvalidArgument(format!(
                            "group {group:?} cannot start at {}: that is in the future (the server's time is {}); start it at LATEST",
                            crate::clock::rfc3339_ms(ts),
                            crate::clock::rfc3339_ms(now_ms)
                        )));
                    }
                }
                let mut entry = GroupEntry {
                    stream_id: stream.stream_id,
                    name: group.to_owned(),
                    start,
                    created_ms: now_ms,
                    checkpoints: Vec::new(),
                };
                // From LATEST, what is closed already is history the group never reads.
                if start == GroupStart::Latest {
                    for s in stream
                        .shards
                        .iter()
                        .filter(|s| s.state == ShardState::Closed)
                    {
                        entry.set_checkpoint(s.shard_id, StoredCheckpoint::ShardEnd);
                    }
                }
                self.data.groups.push(entry);
                self.changes += 1;
                self.data.groups.len() - 1
            }
        };
        let key = (stream.stream_id, group.to_owned());
        let live = self.live.entry(key.clone()).or_default();
        if leave {
            live.members.remove(worker);
        } else {
            live.members.insert(worker.to_owned(), now_ms);
        }
        self.rebalance(gi, stream, now_ms, timeout_ms);
        Ok(self.leases_of(gi, stream.stream_id, worker))
    }

    /// Where the group's workers read a shard it has not checkpointed (`None`: no such
    /// group, e.g. after a leaving heartbeat of a group never created).
    pub fn read_start(&self, stream: &StreamEntry, group: &str) -> Option<IteratorPosition> {
        let gi = self.group_index(stream, group).ok()?;
        let g = &self.data.groups[gi];
        Some(g.start.read_from(g.created_ms))
    }

    fn leases_of(&self, gi: usize, stream_id: u64, worker: &str) -> Vec<Lease> {
        let g = &self.data.groups[gi];
        let Some(live) = self.live.get(&(stream_id, g.name.clone())) else {
            return Vec::new();
        };
        live.leases
            .iter()
            .filter(|(_, (w, _))| w == worker)
            .map(|(&shard_id, &(_, epoch))| Lease {
                shard_id,
                epoch,
                checkpoint: g.checkpoint(shard_id),
            })
            .collect()
    }

    /// Expires silent workers and spreads the leasable shards over the members.
    fn rebalance(&mut self, gi: usize, stream: &StreamEntry, now_ms: i64, timeout_ms: u64) {
        let g = &self.data.groups[gi];
        let live = self
            .live
            .entry((stream.stream_id, g.name.clone()))
            .or_default();
        live.members
            .retain(|_, seen| now_ms.saturating_sub(*seen) < timeout_ms as i64);
        let members = &live.members;
        live.leases.retain(|_, (w, _)| members.contains_key(w));
        let leasable: Vec<u32> = stream
            .shards
            .iter()
            .filter(|s| !g.done(s.shard_id))
            .filter(|s| {
                [s.parent, s.adjacent_parent]
                    .into_iter()
                    .flatten()
                    .all(|p| stream.shard(p).is_none() || g.done(p))
            })
            .map(|s| s.shard_id)
            .collect();
        live.leases
            .retain(|shard, _| leasable.binary_search(shard).is_ok());
        if live.members.is_empty() {
            return;
        }
        let mut held: BTreeMap<&str, Vec<u32>> = live
            .members
            .keys()
            .map(|w| (w.as_str(), Vec::new()))
            .collect();
        for (shard, (w, _)) in &live.leases {
            held.get_mut(w.as_str()).expect("members only").push(*shard);
        }
        let n = live.members.len();
        let most = leasable.len().div_ceil(n);
        // Shed what is over the fair share, then hand out what is free to the least loaded,
        // then even out: nobody holds two more than anybody.
        let mut free: Vec<u32> = Vec::new();
        for shards in held.values_mut() {
            while shards.len() > most {
                free.push(shards.pop().expect("over the share"));
            }
        }
        free.extend(
            leasable
                .iter()
                .filter(|s| !live.leases.contains_key(s))
                .copied(),
        );
        free.sort_unstable();
        free.dedup();
        let mut moves: Vec<(u32, String)> = Vec::new();
        for shard in free {
            let (w, shards) = held
                .iter_mut()
                .min_by_key(|(w, s)| (s.len(), **w))
                .expect("members");
            shards.push(shard);
            moves.push((shard, (*w).to_owned()));
        }
        loop {
            let (max_w, max_n) = held
                .iter()
                .map(|(w, s)| (*w, s.len()))
                .max_by_key(|(w, n)| (*n, std::cmp::Reverse(*w)))
                .expect("members");
            let (min_w, min_n) = held
                .iter()
                .map(|(w, s)| (*w, s.len()))
                .min_by_key(|(w, n)| (*n, *w))
                .expect("members");
            if max_n <= min_n + 1 {
                break;
            }
            let shard = held
                .get_mut(max_w)
                .expect("member")
                .pop()
                .expect("non-empty");
            held.get_mut(min_w).expect("member").push(shard);
            moves.push((shard, min_w.to_owned()));
        }
        for (shard, worker) in moves {
            let unchanged = live.leases.get(&shard).is_some_and(|(w, _)| *w == worker);
            if !unchanged {
                self.next_epoch += 1;
                live.leases.insert(shard, (worker, self.next_epoch));
            }
        }
    }

    /// Stores a checkpoint of a shard the worker leases (with the lease's epoch). The
    /// caller persists the change before answering. A checkpoint at the shard's end frees
    /// the lease and makes its children leasable.
    #[allow(clippy::too_many_arguments)]
    pub fn checkpoint(
        &mut self,
        stream: &StreamEntry,
        group: &str,
        worker: &str,
        shard_id: u32,
        epoch: u64,
        checkpoint: Checkpoint,
        now_ms: i64,
        timeout_ms: u64,
    ) -> Result<(), EngineError> {
        let gi = self.group_index(stream, group)?;
        let shard = stream
            .shard(shard_id)
            .ok_or_else(|| EngineError::UnknownShard {
                stream: stream.name.clone(),
                shard: shard_id,
            })?;
        let key = (stream.stream_id, group.to_owned());
        let live = self.live.entry(key).or_default();
        let alive = live
            .members
            .get(worker)
            .is_some_and(|seen| now_ms.saturating_sub(*seen) < timeout_ms as i64);
        let holds = live
            .leases
            .get(&shard_id)
            .is_some_and(|(w, e)| w == worker && *e == epoch);
        if !alive || !holds {
            return Err(EngineError::LeaseLost(format!(
                "worker {worker:?} does not hold shard {shard_id} of group {group:?} at epoch {epoch}; heartbeat for its leases"
            )));
        }
        let g = &mut self.data.groups[gi];
        let stored = match checkpoint {
            Checkpoint::None => {
                return Err(EngineError::InvalidArgument(
                    "a checkpoint names a sequence number or the shard's end".into(),
                ))
            }
            Checkpoint::After { seq } => {
                if let Checkpoint::After { seq: old } = g.checkpoint(shard_id) {
                    if seq < old {
                        return Err(EngineError::InvalidArgument(format!(
                            "checkpoint {seq} of shard {shard_id} is below the group's {old}"
                        )));
                    }
                }
                if let Some(end) = shard
                    .ending_seq
                    .filter(|_| shard.state == ShardState::Closed)
                {
                    if seq >= end {
                        return Err(EngineError::InvalidArgument(format!(
                            "shard {shard_id} ends before sequence number {seq}"
                        )));
                    }
                }
                StoredCheckpoint::After(seq)
            }
            Checkpoint::ShardEnd => {
                if shard.state != ShardState::Closed {
                    return Err(EngineError::InvalidArgument(format!(
                        "shard {shard_id} is open: it has no end to checkpoint"
                    )));
                }
                StoredCheckpoint::ShardEnd
            }
        };
        g.set_checkpoint(shard_id, stored);
        let record = encode_log_record(&LogRecord {
            stream_id: g.stream_id,
            group: g.name.clone(),
            group_created_ms: g.created_ms,
            shard_id,
            checkpoint: stored,
        });
        self.checkpoints += 1;
        self.log_pending.push((self.checkpoints, record));
        if stored == StoredCheckpoint::ShardEnd {
            self.rebalance(gi, stream, now_ms, timeout_ms);
        }
        Ok(())
    }

    pub fn describe(
        &mut self,
        stream: &StreamEntry,
        group: &str,
        now_ms: i64,
        timeout_ms: u64,
    ) -> Result<GroupView, EngineError> {
        let gi = self.group_index(stream, group)?;
        self.rebalance(gi, stream, now_ms, timeout_ms);
        let g = &self.data.groups[gi];
        let live = self
            .live
            .get(&(stream.stream_id, group.to_owned()))
            .expect("rebalance made it");
        let members = live
            .members
            .iter()
            .map(|(w, seen)| MemberView {
                worker: w.clone(),
                idle_ms: now_ms.saturating_sub(*seen).max(0) as u64,
                leases: live.leases.values().filter(|(o, _)| o == w).count() as u32,
            })
            .collect();
        let shards = stream
            .shards
            .iter()
            .map(|s| {
                let lease = live.leases.get(&s.shard_id);
                ShardView {
                    shard_id: s.shard_id,
                    owner: lease.map(|(w, _)| w.clone()),
                    epoch: lease.map_or(0, |(_, e)| *e),
                    checkpoint: g.checkpoint(s.shard_id),
                }
            })
            .collect();
        Ok(GroupView {
            name: g.name.clone(),
            start: g.start,
            created_ms: g.created_ms,
            members,
            shards,
        })
    }
}

/// One checkpoint in `fanout.log`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LogRecord {
    stream_id: u64,
    group: String,
    /// Which incarnation of the group (a group deleted and made again is another).
    group_created_ms: i64,
    shard_id: u32,
    checkpoint: StoredCheckpoint,
}

/// `len u32, crc32c u32, payload`; payload: stream_id u64, group_created_ms i64, shard_id
/// u32, tag u8 (1 after, 2 shard end), seq u64, group name (u16 length, bytes).
fn encode_log_record(r: &LogRecord) -> Vec<u8> {
    let mut p = Vec::with_capacity(40 + r.group.len());
    p.extend_from_slice(&r.stream_id.to_le_bytes());
    p.extend_from_slice(&r.group_created_ms.to_le_bytes());
    p.extend_from_slice(&r.shard_id.to_le_bytes());
    let (tag, seq) = match r.checkpoint {
        StoredCheckpoint::After(seq) => (1u8, seq),
        StoredCheckpoint::ShardEnd => (2u8, 0),
    };
    p.push(tag);
    p.extend_from_slice(&seq.to_le_bytes());
    p.extend_from_slice(&(r.group.len() as u16).to_le_bytes());
    p.extend_from_slice(r.group.as_bytes());
    let mut out = Vec::with_capacity(8 + p.len());
    out.extend_from_slice(&(p.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&p).to_le_bytes());
    out.extend_from_slice(&p);
    out
}

/// The record at the start of `bytes` and its length, if a whole one verifies there.
fn decode_log_record(bytes: &[u8]) -> Option<(LogRecord, usize)> {
    let len = u32::from_le_bytes(bytes.get(0..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
    let p = bytes.get(8..8usize.checked_add(len)?)?;
    if crc32c::crc32c(p) != crc || p.len() < 31 {
        return None;
    }
    let u64_at = |i: usize| u64::from_le_bytes(p[i..i + 8].try_into().expect("8 bytes"));
    let name_len = u16::from_le_bytes(p[29..31].try_into().expect("2 bytes")) as usize;
    let group = std::str::from_utf8(p.get(31..31 + name_len)?)
        .ok()?
        .to_owned();
    let checkpoint = match p[20] {
        1 => StoredCheckpoint::After(u64_at(21)),
        2 => StoredCheckpoint::ShardEnd,
        _ => return None,
    };
    let rec = LogRecord {
        stream_id: u64_at(0),
        group_created_ms: u64_at(8) as i64,
        shard_id: u32::from_le_bytes(p[16..20].try_into().expect("4 bytes")),
        checkpoint,
        group,
    };
    Some((rec, 8 + len))
}

fn encode(data: &FanoutData) -> Vec<u8> {
    let payload = rkyv::to_bytes::<rkyv::rancor::Error>(data).expect("fan-out state serializes");
    crate::catalog::seal_state_file(&FANOUT_MAGIC, &payload)
}

fn decode(bytes: &[u8]) -> Result<FanoutData, String> {
    let aligned = crate::catalog::open_state_file(&FANOUT_MAGIC, bytes)?;
    rkyv::from_bytes::<FanoutData, rkyv::rancor::Error>(&aligned).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Catalog, StreamOptions};

    fn stream(shards: u32) -> StreamEntry {
        let mut c = Catalog::from_bytes(Path::new("/x"), None).unwrap();
        c.add_stream("s", &StreamOptions::new(shards), 1, 0)
            .unwrap();
        c.data.streams[0].clone()
    }

    fn fanout() -> Fanout {
        Fanout::from_bytes(Path::new("/x"), None, 1000).unwrap()
    }

    fn hb(f: &mut Fanout, s: &StreamEntry, w: &str, now: i64) -> Vec<u32> {
        f.heartbeat(s, "g", w, IteratorPosition::TrimHorizon, false, now, 6000)
            .unwrap()
            .iter()
            .map(|l| l.shard_id)
            .collect()
    }

    #[test]
    fn consumers_register_once_up_to_the_limit_and_survive_encoding() {
        let s = stream(2);
        let mut f = fanout();
        let a = f.register(&s, "a", 2, 5).unwrap();
        assert!(matches!(
            f.register(&s, "a", 2, 5),
            Err(EngineError::ConsumerExists { .. })
        ));
        f.register(&s, "b", 2, 5).unwrap();
        assert!(matches!(
            f.register(&s, "c", 2, 5),
            Err(EngineError::LimitExceeded(_))
        ));
        let (_, bytes) = f.encoded();
        let back = Fanout::from_bytes(Path::new("/x"), Some(&bytes), 0).unwrap();
        assert_eq!(back.data, f.data);
        assert_eq!(f.deregister(&s, "a").unwrap(), a);
        let c = f.register(&s, "c", 2, 6).unwrap();
        assert!(c.consumer_id > a.consumer_id, "ids are never reused");
        let mut damaged = bytes.clone();
        *damaged.last_mut().unwrap() ^= 1;
        assert!(Fanout::from_bytes(Path::new("/x"), Some(&damaged), 0).is_err());
    }

    /// A group is not made to start in the future (past a second's grace); one made at a
    /// past time, or now, is.
    #[test]
    fn a_group_is_not_made_to_start_in_the_future() {
        let s = stream(1);
        let mut f = fanout();
        let at = |ts_ms| IteratorPosition::AtTimestamp { ts_ms };
        let e = f
            .heartbeat(&s, "g", "w", at(2_001), false, 1_000, 6000)
            .unwrap_err();
        assert!(e.to_string().contains("in the future"), "{e}");
        assert!(f
            .heartbeat(&s, "g", "w", at(1_000), false, 1_000, 6000)
            .is_ok());
        assert!(f.heartbeat(&s, "h", "w", at(5), false, 1_000, 6000).is_ok());
    }

    #[test]
    fn leases_spread_evenly_and_move_when_a_worker_goes_silent() {
        let s = stream(8);
        let mut f = fanout();
        assert_eq!(hb(&mut f, &s, "w1", 0).len(), 8);
        assert_eq!(hb(&mut f, &s, "w2", 100).len(), 4);
        let w1 = hb(&mut f, &s, "w1", 200);
        assert_eq!(w1.len(), 4);
        hb(&mut f, &s, "w3", 300);
        let counts: Vec<usize> = ["w1", "w2", "w3"]
            .iter()
            .map(|w| hb(&mut f, &s, w, 400).len())
            .collect();
        assert_eq!(counts.iter().sum::<usize>(), 8);
        assert!(counts.iter().all(|&n| (2..=3).contains(&n)), "{counts:?}");
        // w3 falls silent: after the timeout its shards go to the others.
        hb(&mut f, &s, "w1", 3000);
        hb(&mut f, &s, "w2", 3000);
        let a = hb(&mut f, &s, "w1", 6500);
        let b = hb(&mut f, &s, "w2", 6500);
        assert_eq!(a.len() + b.len(), 8);
        let mut all: Vec<u32> = a.iter().chain(&b).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..8).collect::<Vec<_>>());
    }

    #[test]
    fn the_checkpoint_log_replays_forward_only_onto_the_same_group() {
        let s = stream(2);
        let mut f = fanout();
        hb(&mut f, &s, "w1", 0);
        let leases = f
            .heartbeat(&s, "g", "w1", IteratorPosition::TrimHorizon, false, 1, 6000)
            .unwrap();
        let (_, snapshot) = f.encoded();
        let cp = |f: &mut Fanout, shard: u32, seq: u64| {
            let epoch = leases.iter().find(|l| l.shard_id == shard).unwrap().epoch;
            let c = Checkpoint::After { seq };
            f.checkpoint(&s, "g", "w1", shard, epoch, c, 2, 6000)
                .unwrap();
        };
        cp(&mut f, 0, 10);
        cp(&mut f, 1, 7);
        cp(&mut f, 0, 25);
        assert_eq!(f.checkpoints, 3);
        let log = f.take_log(f.checkpoints);
        assert!(f.take_log(u64::MAX).is_empty(), "taken once");
        // The snapshot from before the checkpoints plus the log: where the state is now.
        let restored = |bytes: &[u8]| {
            let mut r = Fanout::from_bytes(Path::new("/x"), Some(&snapshot), 0).unwrap();
            let n = r.replay_log(bytes);
            (r, n)
        };
        let (r, n) = restored(&log);
        assert_eq!(n, 3);
        let g = &r.data.groups[0];
        assert_eq!(g.checkpoint(0), Checkpoint::After { seq: 25 });
        assert_eq!(g.checkpoint(1), Checkpoint::After { seq: 7 });
        // Replayed again (a log left behind by a crash after a snapshot): nothing moves.
        let mut twice = log.clone();
        twice.extend_from_slice(&log);
        let (r2, _) = restored(&twice);
        assert_eq!(r2.data, r.data);
        // A torn tail: the whole records before it count, the rest is ignored.
        let (r3, n3) = restored(&log[..log.len() - 3]);
        assert_eq!(n3, 2);
        assert_eq!(
            r3.data.groups[0].checkpoint(0),
            Checkpoint::After { seq: 10 }
        );
        // Garbage in the middle stops the replay there.
        let mut bad = log.clone();
        bad[9] ^= 1;
        assert_eq!(restored(&bad).1, 0);
        // A group deleted and made again is another group: old records do not touch it.
        let mut again = Fanout::from_bytes(Path::new("/x"), Some(&snapshot), 0).unwrap();
        again.delete_group(&s, "g").unwrap();
        again
            .heartbeat(
                &s,
                "g",
                "w1",
                IteratorPosition::TrimHorizon,
                false,
                99,
                6000,
            )
            .unwrap();
        again.replay_log(&log);
        assert_eq!(again.data.groups[0].checkpoint(0), Checkpoint::None);
    }

    #[test]
    fn checkpoints_are_fenced_by_the_lease_epoch() {
        let s = stream(1);
        let mut f = fanout();
        let l = f
            .heartbeat(&s, "g", "w1", IteratorPosition::TrimHorizon, false, 0, 6000)
            .unwrap()[0];
        let cp = |seq| Checkpoint::After { seq };
        f.checkpoint(&s, "g", "w1", 0, l.epoch, cp(5), 10, 6000)
            .unwrap();
        assert!(matches!(
            f.checkpoint(&s, "g", "w1", 0, l.epoch + 1, cp(6), 10, 6000),
            Err(EngineError::LeaseLost(_))
        ));
        assert!(matches!(
            f.checkpoint(&s, "g", "w2", 0, l.epoch, cp(6), 10, 6000),
            Err(EngineError::LeaseLost(_))
        ));
        assert!(matches!(
            f.checkpoint(&s, "g", "w1", 0, l.epoch, cp(4), 10, 6000),
            Err(EngineError::InvalidArgument(_))
        ));
        // w1 leaves; w2 takes the shard with a new epoch and the checkpoint.
        f.heartbeat(&s, "g", "w1", IteratorPosition::TrimHorizon, true, 20, 6000)
            .unwrap();
        let l2 = f
            .heartbeat(
                &s,
                "g",
                "w2",
                IteratorPosition::TrimHorizon,
                false,
                30,
                6000,
            )
            .unwrap()[0];
        assert!(l2.epoch > l.epoch);
        assert_eq!(l2.checkpoint, cp(5));
        assert!(matches!(
            f.checkpoint(&s, "g", "w1", 0, l.epoch, cp(9), 40, 6000),
            Err(EngineError::LeaseLost(_))
        ));
    }

    #[test]
    fn children_are_leased_once_their_parents_are_read_to_the_end() {
        let mut c = Catalog::from_bytes(Path::new("/x"), None).unwrap();
        c.add_stream("s", &StreamOptions::new(1), 1, 0).unwrap();
        let mut s = c.data.streams[0].clone();
        // Shard 0 split into 1 and 2.
        s.shards[0].state = ShardState::Closed;
        s.shards[0].ending_seq = Some(10);
        for (id, (a, b)) in [
            (1u32, (0u128, u128::MAX / 2)),
            (2, (u128::MAX / 2 + 1, u128::MAX)),
        ] {
            s.shards.push(crate::catalog::ShardEntry {
                shard_id: id,
                hash_start: a.to_be_bytes(),
                hash_end: b.to_be_bytes(),
                parent: Some(0),
                adjacent_parent: None,
                state: ShardState::Open,
                core: 0,
                ending_seq: None,
                closed_ms: 0,
            });
        }
        let mut f = fanout();
        assert_eq!(hb(&mut f, &s, "w1", 0), vec![0]);
        let l = f
            .heartbeat(&s, "g", "w1", IteratorPosition::TrimHorizon, false, 1, 6000)
            .unwrap()[0];
        assert!(f
            .checkpoint(
                &s,
                "g",
                "w1",
                0,
                l.epoch,
                Checkpoint::After { seq: 10 },
                2,
                6000
            )
            .is_err());
        f.checkpoint(&s, "g", "w1", 0, l.epoch, Checkpoint::ShardEnd, 2, 6000)
            .unwrap();
        assert_eq!(hb(&mut f, &s, "w1", 3), vec![1, 2]);
        // A group starting at LATEST never reads closed history.
        let l = f
            .heartbeat(&s, "late", "w1", IteratorPosition::Latest, false, 4, 6000)
            .unwrap();
        assert_eq!(l.iter().map(|l| l.shard_id).collect::<Vec<_>>(), vec![1, 2]);
        // ... and reads the rest from its creation, whoever asks and however they say.
        assert_eq!(
            f.read_start(&s, "late"),
            Some(IteratorPosition::AtTimestamp { ts_ms: 4 })
        );
        f.heartbeat(
            &s,
            "late",
            "w2",
            IteratorPosition::TrimHorizon,
            false,
            9,
            6000,
        )
        .unwrap();
        assert_eq!(
            f.read_start(&s, "late"),
            Some(IteratorPosition::AtTimestamp { ts_ms: 4 })
        );
        assert_eq!(f.read_start(&s, "g"), Some(IteratorPosition::TrimHorizon));
        assert_eq!(f.read_start(&s, "none"), None);
    }
}
