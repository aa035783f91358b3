//! Consumer groups: a [`GroupWorker`] joins a named group on a stream; the engine leases
//! the stream's shards to the group's workers (balanced; a child shard once its parents
//! are read to their end) and keeps the group's checkpoints durably.
//!
//! The worker heartbeats every third of the lease timeout the server names, reads each
//! shard it leases (from just after the group's checkpoint, or from the group's start),
//! and hands the records to the caller through [`GroupWorker::next`], a bounded queue: a
//! caller that stops taking them stops the reading. The caller checkpoints what it has
//! processed ([`GroupWorker::checkpoint`]); delivery is at least once: after a restart, a
//! crash or a lease that moved, records after the last checkpoint may come again, and none
//! before it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use spate_protocol::consumer::{
    Checkpoint, CheckpointRequest, GroupHeartbeatRequest, GroupRequest, Lease, StreamRequest,
};
use spate_protocol::{ErrorCode, Opcode, Request, Response};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::client::{check_stream_name, Client, Position, Record, Target};
use crate::connection::decode_reply;
use crate::error::{ClientError, Result};
use crate::reader::ReadOptions;

/// What the caller gets from a [`GroupWorker`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupEvent {
    /// Records of a leased shard, in order.
    Records {
        shard_id: u32,
        records: Vec<Record>,
        millis_behind_latest: u64,
    },
    /// A leased shard is closed and every record of it was delivered: checkpoint its end
    /// ([`GroupWorker::checkpoint_shard_end`]) once they are processed, and its children
    /// become leasable.
    ShardEnded { shard_id: u32 },
    /// The shard's lease moved to another worker (or expired): stop processing it.
    LeaseLost { shard_id: u32 },
}

/// How a [`GroupWorker`] joins and reads.
#[derive(Debug, Clone)]
pub struct GroupOptions {
    /// This worker's id in the group; unique per worker (default: host, pid and a random
    /// suffix).
    pub worker: String,
    /// Where a new group starts: `TrimHorizon`, `Latest` or `AtTimestamp`.
    pub start: Position,
    /// Each shard's reads (long-poll at the tip).
    pub read: ReadOptions,
    /// Batches of records queued for the caller before reading waits.
    pub queue: usize,
}

impl Default for GroupOptions {
    fn default() -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".to_string());
        GroupOptions {
            worker: format!(
                "{host}-{}-{:08x}",
                std::process::id(),
                rand::random::<u32>()
            ),
            start: Position::TrimHorizon,
            read: ReadOptions {
                wait_ms: 1_000,
                ..ReadOptions::default()
            },
            queue: 16,
        }
    }
}

/// A group's member, its leases and checkpoints, as describe shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    pub group: String,
    pub start: Position,
    pub created_ms: i64,
    pub lease_timeout_ms: u32,
    pub members: Vec<GroupMemberInfo>,
    pub shards: Vec<GroupShardInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMemberInfo {
    pub worker: String,
    pub idle_ms: u64,
    pub leases: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupShardInfo {
    pub shard_id: u32,
    pub owner: Option<String>,
    pub epoch: u64,
    pub checkpoint: Checkpoint,
    pub next_seq: u64,
    pub lag_records: u64,
}

/// What a heartbeat answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// A worker silent for this long loses its leases.
    pub lease_timeout_ms: u32,
    /// Where a leased shard the group has not checkpointed is read from (the group's start;
    /// a group created at LATEST reads from the time it was created).
    pub start: Position,
    /// The worker's leases.
    pub leases: Vec<Lease>,
}

impl Client {
    /// One heartbeat of `worker` in `group`: joins (creating the group at `start`),
    /// renews, or with `leave` gives up its leases.
    pub async fn group_heartbeat(
        &self,
        stream: &str,
        group: &str,
        worker: &str,
        start: Position,
        leave: bool,
    ) -> Result<Heartbeat> {
        check_stream_name(stream)?;
        let req = Request::GroupHeartbeat(GroupHeartbeatRequest {
            stream,
            group,
            worker,
            start,
            leave,
        });
        let frame = self.request(Target::Bootstrap, &req, 0).await?;
        match decode_reply(&frame, Some(Opcode::GroupHeartbeat))? {
            Response::GroupHeartbeat(r) => Ok(Heartbeat {
                lease_timeout_ms: r.lease_timeout_ms,
                start: r.start,
                leases: r.leases,
            }),
            _ => unreachable!("checked"),
        }
    }

    /// Stores `group`'s checkpoint of `shard_id` durably; `epoch` is the worker's lease's
    /// (a worker that lost the lease gets `LeaseLost`).
    pub async fn checkpoint(
        &self,
        stream: &str,
        group: &str,
        worker: &str,
        shard_id: u32,
        epoch: u64,
        checkpoint: Checkpoint,
    ) -> Result<()> {
        check_stream_name(stream)?;
        let req = Request::Checkpoint(CheckpointRequest {
            stream,
            group,
            worker,
            shard_id,
            epoch,
            checkpoint,
        });
        let frame = self.request(Target::Bootstrap, &req, 0).await?;
        decode_reply(&frame, Some(Opcode::Checkpoint))?;
        Ok(())
    }

    pub async fn describe_group(&self, stream: &str, group: &str) -> Result<GroupInfo> {
        check_stream_name(stream)?;
        let req = Request::DescribeGroup(GroupRequest { stream, group });
        let frame = self.request(Target::Bootstrap, &req, 0).await?;
        let Response::DescribeGroup(d) = decode_reply(&frame, Some(Opcode::DescribeGroup))? else {
            unreachable!("checked")
        };
        Ok(GroupInfo {
            group: d.group.to_string(),
            start: d.start,
            created_ms: d.created_ms,
            lease_timeout_ms: d.lease_timeout_ms,
            members: d
                .members
                .iter()
                .map(|m| GroupMemberInfo {
                    worker: m.worker.to_string(),
                    idle_ms: m.idle_ms,
                    leases: m.leases,
                })
                .collect(),
            shards: d
                .shards
                .iter()
                .map(|s| GroupShardInfo {
                    shard_id: s.shard_id,
                    owner: s.owner.map(str::to_string),
                    epoch: s.epoch,
                    checkpoint: s.checkpoint,
                    next_seq: s.next_seq,
                    lag_records: s.lag_records,
                })
                .collect(),
        })
    }

    pub async fn delete_group(&self, stream: &str, group: &str) -> Result<()> {
        check_stream_name(stream)?;
        let req = Request::DeleteGroup(GroupRequest { stream, group });
        let frame = self.request(Target::Bootstrap, &req, 0).await?;
        decode_reply(&frame, Some(Opcode::DeleteGroup))?;
        Ok(())
    }

    pub async fn list_groups(&self, stream: &str) -> Result<Vec<String>> {
        check_stream_name(stream)?;
        let req = Request::ListGroups(StreamRequest { stream });
        let frame = self.request(Target::Bootstrap, &req, 0).await?;
        match decode_reply(&frame, Some(Opcode::ListGroups))? {
            Response::ListGroups(l) => Ok(l.groups.iter().map(|g| g.to_string()).collect()),
            _ => unreachable!("checked"),
        }
    }
}

/// What the worker's tasks share.
#[derive(Debug)]
struct Shared {
    /// Leased shards and their epochs.
    leases: Mutex<HashMap<u32, u64>>,
}

/// Checkpoints for a [`GroupWorker`]'s shards, usable from other tasks while the worker's
/// [`GroupWorker::next`] is waiting (e.g. by the tasks that process its records). Cheap to
/// clone; it checkpoints with the worker's current lease of the shard.
#[derive(Debug, Clone)]
pub struct Checkpointer {
    client: Client,
    stream: String,
    group: String,
    worker: String,
    shared: Arc<Shared>,
}

impl Checkpointer {
    fn epoch(&self, shard_id: u32) -> Result<u64> {
        self.shared
            .leases
            .lock()
            .expect("leases lock")
            .get(&shard_id)
            .copied()
            .ok_or_else(|| {
                ClientError::invalid(
                    ErrorCode::LeaseLost,
                    format!("this worker does not lease shard {shard_id}"),
                )
            })
    }

    /// Checkpoints `shard_id` after `seq`: every record up to it is processed.
    pub async fn checkpoint(&self, shard_id: u32, seq: u64) -> Result<()> {
        self.store(shard_id, Checkpoint::After { seq }).await
    }

    /// Checkpoints a closed shard's end (after its [`GroupEvent::ShardEnded`]).
    pub async fn checkpoint_shard_end(&self, shard_id: u32) -> Result<()> {
        self.store(shard_id, Checkpoint::ShardEnd).await
    }

    async fn store(&self, shard_id: u32, checkpoint: Checkpoint) -> Result<()> {
        let epoch = self.epoch(shard_id)?;
        self.client
            .checkpoint(
                &self.stream,
                &self.group,
                &self.worker,
                shard_id,
                epoch,
                checkpoint,
            )
            .await
    }
}

/// A member of a consumer group; see the module docs. Dropping it stops its tasks (its
/// leases expire after the timeout); [`GroupWorker::leave`] hands them over at once.
pub struct GroupWorker {
    checkpointer: Checkpointer,
    options: GroupOptions,
    events: mpsc::Receiver<Result<GroupEvent>>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for GroupWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupWorker")
            .field("stream", &self.checkpointer.stream)
            .field("group", &self.checkpointer.group)
            .field("worker", &self.options.worker)
            .finish()
    }
}

impl Drop for GroupWorker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An error a worker waits out (the server restarting, a connection lost, throttling)
/// rather than reports.
fn passing(e: &ClientError) -> bool {
    e.is_retryable()
}

impl GroupWorker {
    /// Joins `group` on `stream` (creating the group at `options.start` if it is new) and
    /// starts reading the shards leased to this worker.
    pub async fn join(
        client: &Client,
        stream: &str,
        group: &str,
        options: GroupOptions,
    ) -> Result<GroupWorker> {
        if !spate_protocol::consumer::is_valid_name(group) {
            return Err(ClientError::invalid(
                ErrorCode::InvalidArgument,
                format!("invalid group name {group:?}: use 1..=128 characters of [a-zA-Z0-9_.-]"),
            ));
        }
        let first = client
            .group_heartbeat(stream, group, &options.worker, options.start, false)
            .await?;
        let shared = Arc::new(Shared {
            leases: Mutex::new(HashMap::new()),
        });
        let (tx, rx) = mpsc::channel(options.queue.max(1));
        let run = Runner {
            client: client.clone(),
            stream: stream.to_string(),
            group: group.to_string(),
            options: options.clone(),
            shared: shared.clone(),
            tx,
            readers: HashMap::new(),
        };
        let task = tokio::spawn(run.run(first));
        Ok(GroupWorker {
            checkpointer: Checkpointer {
                client: client.clone(),
                stream: stream.to_string(),
                group: group.to_string(),
                worker: options.worker.clone(),
                shared,
            },
            options,
            events: rx,
            task,
        })
    }

    pub fn worker(&self) -> &str {
        &self.options.worker
    }

    /// The shards leased to this worker now.
    pub fn leases(&self) -> Vec<u32> {
        let mut l: Vec<u32> = self
            .checkpointer
            .shared
            .leases
            .lock()
            .expect("leases lock")
            .keys()
            .copied()
            .collect();
        l.sort_unstable();
        l
    }

    /// The next batch of records, shard end or lost lease. `None` once the worker stopped
    /// (after an error it could not get past, returned before). A reader that met an
    /// error it cannot wait out (returned here) is started again at the next heartbeat,
    /// after the last record it delivered, while the worker still holds the shard.
    pub async fn next(&mut self) -> Option<Result<GroupEvent>> {
        self.events.recv().await
    }

    /// A handle that checkpoints this worker's shards from other tasks.
    pub fn checkpointer(&self) -> Checkpointer {
        self.checkpointer.clone()
    }

    /// Checkpoints `shard_id` after `seq`: every record up to it is processed.
    pub async fn checkpoint(&self, shard_id: u32, seq: u64) -> Result<()> {
        self.checkpointer.checkpoint(shard_id, seq).await
    }

    /// Checkpoints a closed shard's end (after its [`GroupEvent::ShardEnded`]).
    pub async fn checkpoint_shard_end(&self, shard_id: u32) -> Result<()> {
        self.checkpointer.checkpoint_shard_end(shard_id).await
    }

    /// Leaves the group: its leases go to the other workers at once.
    pub async fn leave(self) -> Result<()> {
        self.task.abort();
        let c = &self.checkpointer;
        c.client
            .group_heartbeat(&c.stream, &c.group, &c.worker, self.options.start, true)
            .await
            .map(|_| ())
    }
}

/// How a shard's reader task ended.
#[derive(Debug, Clone, Copy)]
enum ReaderEnd {
    /// The shard is closed and every record of it was delivered.
    ShardEnded,
    /// An error it could not wait out (reported to the caller); read again from here.
    Failed(Position),
    /// The caller dropped the worker.
    Stopped,
}

/// A leased shard's reader.
struct ShardTask {
    epoch: u64,
    task: JoinHandle<ReaderEnd>,
    /// The task finished for good and its result was taken (a handle is awaited once:
    /// awaiting it again panics).
    done: bool,
}

/// The worker's background task: heartbeats and one reader per leased shard.
struct Runner {
    client: Client,
    stream: String,
    group: String,
    options: GroupOptions,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Result<GroupEvent>>,
    readers: HashMap<u32, ShardTask>,
}

impl Drop for Runner {
    fn drop(&mut self) {
        for (_, r) in self.readers.drain() {
            r.task.abort();
        }
    }
}

impl Runner {
    async fn run(mut self, first: Heartbeat) {
        let mut failures = 0u32;
        let mut beat = first;
        // When the last heartbeat that got through was sent: the server counts the lease
        // timeout from no later than that.
        let mut renewed = tokio::time::Instant::now();
        loop {
            self.apply(&beat).await;
            let every = Duration::from_millis(u64::from(beat.lease_timeout_ms / 3).max(50));
            tokio::time::sleep(every).await;
            let sent = tokio::time::Instant::now();
            let client = self.client.clone();
            let (stream, group, worker) = (
                self.stream.clone(),
                self.group.clone(),
                self.options.worker.clone(),
            );
            let start = self.options.start;
            let call = async move {
                client
                    .group_heartbeat(&stream, &group, &worker, start, false)
                    .await
            };
            tokio::pin!(call);
            // Not renewed within the lease timeout (a heartbeat failing, or one waiting for
            // an unreachable server): the server has given the leases to other workers, so
            // stop reading them at that moment (two workers would process the same shards)
            // and say so; the next heartbeat that gets through answers what this worker
            // holds again.
            let expiry = renewed + Duration::from_millis(u64::from(beat.lease_timeout_ms));
            let result = loop {
                tokio::select! {
                    r = &mut call => break r,
                    () = tokio::time::sleep_until(expiry), if !beat.leases.is_empty() => {
                        beat.leases.clear();
                        self.apply(&beat).await;
                    }
                }
            };
            match result {
                Ok(b) => {
                    failures = 0;
                    beat = b;
                    renewed = sent;
                }
                Err(e) => {
                    // Unreachable for a while (a server restart): keep reading what we
                    // have and try again; give up when the error is not a passing one.
                    failures += 1;
                    if !(passing(&e) || matches!(e, ClientError::Closed)) || failures > 100 {
                        let _ = self.tx.send(Err(e)).await;
                        return;
                    }
                    if sent >= expiry && !beat.leases.is_empty() {
                        beat.leases.clear();
                        self.apply(&beat).await;
                    }
                }
            }
        }
    }

    /// Starts readers for new leases, restarts failed ones, and stops those of leases gone.
    async fn apply(&mut self, beat: &Heartbeat) {
        let now: HashMap<u32, &Lease> = beat.leases.iter().map(|l| (l.shard_id, l)).collect();
        let gone: Vec<u32> = self
            .readers
            .iter()
            .filter(|(shard, r)| now.get(shard).is_none_or(|l| l.epoch != r.epoch))
            .map(|(shard, _)| *shard)
            .collect();
        for shard_id in gone {
            // A reader that finished read its shard to the end (checkpointed there, the
            // lease is released): no loss to report.
            let mut lost = !now.contains_key(&shard_id);
            if let Some(r) = self.readers.remove(&shard_id) {
                lost &= !r.task.is_finished();
                r.task.abort();
            }
            self.shared
                .leases
                .lock()
                .expect("leases lock")
                .remove(&shard_id);
            if lost {
                let _ = self.tx.send(Ok(GroupEvent::LeaseLost { shard_id })).await;
            }
        }
        for l in &beat.leases {
            let position = match self.readers.get_mut(&l.shard_id) {
                // Still held: a reader that failed starts again where it stopped.
                Some(r) if r.done => continue,
                Some(r) if r.task.is_finished() => match (&mut r.task).await {
                    Ok(ReaderEnd::Failed(at)) => at,
                    // Read to its end: the caller checkpoints the end; until then the
                    // lease stays and nothing is read again.
                    Ok(_) => {
                        r.done = true;
                        continue;
                    }
                    // A bug in the reader: said, not left as a shard that is never read.
                    Err(e) => {
                        r.done = true;
                        let e = ClientError::Invalid {
                            code: ErrorCode::Internal,
                            message: format!("the reader of shard {} failed: {e}", l.shard_id),
                        };
                        let _ = self.tx.send(Err(e)).await;
                        continue;
                    }
                },
                Some(_) => continue,
                None => match l.checkpoint {
                    Checkpoint::After { seq } => Position::AfterSequenceNumber { seq },
                    Checkpoint::None => beat.start,
                    Checkpoint::ShardEnd => continue,
                },
            };
            self.shared
                .leases
                .lock()
                .expect("leases lock")
                .insert(l.shard_id, l.epoch);
            let task = tokio::spawn(read_shard(
                self.client.clone(),
                self.stream.clone(),
                l.shard_id,
                position,
                self.options.read,
                self.tx.clone(),
            ));
            self.readers.insert(
                l.shard_id,
                ShardTask {
                    epoch: l.epoch,
                    task,
                    done: false,
                },
            );
        }
    }
}

/// Reads one leased shard into the worker's queue until its end. Errors it can wait out
/// (a restarting server, a lost connection) are retried here; another is reported, and
/// the reader ends with where to read again.
async fn read_shard(
    client: Client,
    stream: String,
    shard_id: u32,
    position: Position,
    options: ReadOptions,
    tx: mpsc::Sender<Result<GroupEvent>>,
) -> ReaderEnd {
    // Waits between tries: 200 ms doubling to 1.6 s.
    let mut waits = 0u32;
    let backoff = |waits: &mut u32| {
        *waits = (*waits + 1).min(4);
        tokio::time::sleep(Duration::from_millis(100 << *waits))
    };
    let mut reader = loop {
        match client
            .shard_reader(&stream, shard_id, position, options)
            .await
        {
            Ok(r) => break r,
            Err(e) if passing(&e) => backoff(&mut waits).await,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return ReaderEnd::Failed(position);
            }
        }
    };
    loop {
        match reader.next().await {
            Ok(Some(r)) => {
                waits = 0;
                if r.records.is_empty() {
                    continue;
                }
                let event = GroupEvent::Records {
                    shard_id,
                    records: r.records,
                    millis_behind_latest: r.millis_behind_latest,
                };
                if tx.send(Ok(event)).await.is_err() {
                    return ReaderEnd::Stopped;
                }
            }
            Ok(None) => {
                let _ = tx.send(Ok(GroupEvent::ShardEnded { shard_id })).await;
                return ReaderEnd::ShardEnded;
            }
            Err(e) if passing(&e) => backoff(&mut waits).await,
            Err(e) => {
                let at = match reader.next_seq() {
                    None => position,
                    Some(0) => Position::TrimHorizon,
                    Some(next) => Position::AfterSequenceNumber { seq: next - 1 },
                };
                let _ = tx.send(Err(e)).await;
                return ReaderEnd::Failed(at);
            }
        }
    }
}
