//! Core 0's fan-out operations (registered consumers, subscriptions' claims, consumer
//! groups), and each core's per-shard subscriber bookkeeping. The state and its rules are
//! in `crate::fanout`; this is where they meet the cores, the routes and the disk.

use std::rc::Rc;

use spate_protocol::consumer::{Checkpoint, Lease};
use spate_protocol::IteratorPosition;

use super::{call, call_read, Core, CoreMsg, ShardIdent};
use crate::catalog::StreamEntry;
use crate::error::EngineError;
use crate::fanout::{ConsumerEntry, GroupView};
use crate::io::Storage;
use crate::limits::TokenBucket;

/// A fan-out request for core 0.
#[derive(Debug, Clone)]
pub(crate) enum FanoutOp {
    Register {
        stream: String,
        consumer: String,
    },
    Deregister {
        stream: String,
        consumer: String,
    },
    ListConsumers {
        stream: String,
    },
    DescribeConsumer {
        stream: String,
        consumer: String,
    },
    /// Takes over `(consumer, shard)` for a new subscription on the shard's core.
    Subscribe {
        stream: String,
        consumer: String,
        shard_id: u32,
    },
    Heartbeat {
        stream: String,
        group: String,
        worker: String,
        start: IteratorPosition,
        leave: bool,
    },
    Checkpoint {
        stream: String,
        group: String,
        worker: String,
        shard_id: u32,
        epoch: u64,
        checkpoint: Checkpoint,
    },
    DescribeGroup {
        stream: String,
        group: String,
    },
    DeleteGroup {
        stream: String,
        group: String,
    },
    ListGroups {
        stream: String,
    },
}

#[derive(Debug, Clone)]
pub(crate) enum FanoutAnswer {
    Consumer(ConsumerEntry),
    Consumers(Vec<ConsumerEntry>),
    /// A subscription's claim: it reads as `consumer_id` while `generation` is the
    /// consumer's newest on the shard.
    Claimed {
        consumer_id: u64,
        generation: u64,
    },
    Leases {
        timeout_ms: u64,
        leases: Vec<Lease>,
        /// Where a leased shard without a checkpoint is read from.
        start: IteratorPosition,
    },
    /// A group, with each of its shards' next sequence number and how many records the
    /// group has yet to take from it (in the view's order).
    Group(GroupView, Vec<(u64, u64)>),
    Groups(Vec<String>),
    Done,
}

/// A registered consumer's standing on one shard, kept by the shard's core.
#[derive(Debug, Clone)]
pub(crate) struct Subscriber {
    /// The newest subscription's claim; an older one reading is told it was replaced.
    pub generation: u64,
    /// Its own read allowance (`None` without limits).
    pub bucket: Option<TokenBucket>,
}

impl<S: Storage + 'static> Core<S> {
    fn active_stream(&self, name: &str) -> Result<Rc<StreamEntry>, EngineError> {
        if let Some(status) = self.statuses.borrow().get(name) {
            if matches!(
                status,
                super::StreamStatus::Creating | super::StreamStatus::Deleting
            ) {
                return Err(EngineError::NotActive {
                    stream: name.to_owned(),
                    status: status.name(),
                });
            }
        }
        self.routes
            .borrow()
            .get(name)
            .cloned()
            .ok_or_else(|| EngineError::UnknownStream(name.to_owned()))
    }

    /// Runs a fan-out operation (core 0). Changes are on disk before it answers.
    pub(crate) async fn fanout_op(
        self: &Rc<Self>,
        op: FanoutOp,
    ) -> Result<FanoutAnswer, EngineError> {
        let fanout = self.fanout.as_ref().expect("fan-out runs on core 0");
        let now = self.clock.now_ms();
        let timeout = self.cfg.group_lease_timeout_ms;
        match op {
            FanoutOp::Register { stream, consumer } => {
                let _serial = self.fanout_lock.lock().await;
                let entry = self.active_stream(&stream)?;
                let max = self.cfg.max_consumers_per_stream;
                let c = fanout.borrow_mut().register(&entry, &consumer, max, now)?;
                self.persist_fanout().await?;
                tracing::info!(stream = %stream, consumer = %consumer, id = c.consumer_id, "consumer registered");
                Ok(FanoutAnswer::Consumer(c))
            }
            FanoutOp::Deregister { stream, consumer } => {
                let _serial = self.fanout_lock.lock().await;
                let entry = self.active_stream(&stream)?;
                let c = fanout.borrow_mut().deregister(&entry, &consumer)?;
                self.persist_fanout().await?;
                // Its subscriptions end at their next read, on every core.
                for peer in &self.peers {
                    let consumer_id = c.consumer_id;
                    call(peer, |reply| CoreMsg::DropConsumer { consumer_id, reply }).await?;
                }
                tracing::info!(stream = %stream, consumer = %consumer, "consumer deregistered");
                Ok(FanoutAnswer::Consumer(c))
            }
            FanoutOp::ListConsumers { stream } => {
                let entry = self.active_stream(&stream)?;
                Ok(FanoutAnswer::Consumers(fanout.borrow().consumers(&entry)))
            }
            FanoutOp::DescribeConsumer { stream, consumer } => {
                let entry = self.active_stream(&stream)?;
                let c = fanout.borrow().consumer(&entry, &consumer)?.clone();
                Ok(FanoutAnswer::Consumer(c))
            }
            FanoutOp::Subscribe {
                stream,
                consumer,
                shard_id,
            } => {
                // Under the lock a deregistration cannot slip between the look-up and the
                // claim.
                let _serial = self.fanout_lock.lock().await;
                let entry = self.active_stream(&stream)?;
                let consumer_id = fanout.borrow().consumer(&entry, &consumer)?.consumer_id;
                let (ident, owner) = entry.locate(shard_id, self.peers.len())?;
                let generation = call(&self.peers[owner], |reply| CoreMsg::Claim {
                    ident,
                    consumer_id,
                    reply,
                })
                .await?;
                Ok(FanoutAnswer::Claimed {
                    consumer_id,
                    generation,
                })
            }
            FanoutOp::Heartbeat {
                stream,
                group,
                worker,
                start,
                leave,
            } => {
                let entry = self.active_stream(&stream)?;
                let (leases, read_start, changed) = {
                    let mut f = fanout.borrow_mut();
                    let before = f.changes;
                    let leases =
                        f.heartbeat(&entry, &group, &worker, start, leave, now, timeout)?;
                    let read_start = f.read_start(&entry, &group).unwrap_or(start);
                    (leases, read_start, f.changes != before)
                };
                if changed {
                    self.persist_fanout().await?;
                }
                Ok(FanoutAnswer::Leases {
                    timeout_ms: timeout,
                    leases,
                    start: read_start,
                })
            }
            FanoutOp::Checkpoint {
                stream,
                group,
                worker,
                shard_id,
                epoch,
                checkpoint,
            } => {
                let entry = self.active_stream(&stream)?;
                fanout.borrow_mut().checkpoint(
                    &entry, &group, &worker, shard_id, epoch, checkpoint, now, timeout,
                )?;
                self.persist_checkpoints().await?;
                Ok(FanoutAnswer::Done)
            }
            FanoutOp::DescribeGroup { stream, group } => {
                let entry = self.active_stream(&stream)?;
                let view = fanout.borrow_mut().describe(&entry, &group, now, timeout)?;
                let cores = self.peers.len();
                let mut next = Vec::with_capacity(view.shards.len());
                for s in &view.shards {
                    let (ident, owner) = entry.locate(s.shard_id, cores)?;
                    let peer = &self.peers[owner];
                    let next_seq = call_read(peer, |reply| CoreMsg::Stats { ident, reply })
                        .await
                        .map_or(0, |st| st.next_seq);
                    // Where the group goes on: after its checkpoint, or, on a shard it has
                    // not checkpointed, where its start puts a reader (records before that,
                    // or already past retention, are not the group's to take).
                    let lag = match s.checkpoint {
                        Checkpoint::After { seq } => next_seq.saturating_sub(seq + 1),
                        Checkpoint::ShardEnd => 0,
                        Checkpoint::None => {
                            let pos = view.start.read_from(view.created_ms);
                            call_read(peer, |reply| CoreMsg::Position { ident, pos, reply })
                                .await
                                .map_or(next_seq, |from| next_seq.saturating_sub(from))
                        }
                    };
                    next.push((next_seq, lag));
                }
                Ok(FanoutAnswer::Group(view, next))
            }
            FanoutOp::DeleteGroup { stream, group } => {
                let entry = self.active_stream(&stream)?;
                fanout.borrow_mut().delete_group(&entry, &group)?;
                self.persist_fanout().await?;
                tracing::info!(stream = %stream, group = %group, "consumer group deleted");
                Ok(FanoutAnswer::Done)
            }
            FanoutOp::ListGroups { stream } => {
                let entry = self.active_stream(&stream)?;
                Ok(FanoutAnswer::Groups(fanout.borrow().groups(&entry)))
            }
        }
    }

    /// Writes the fan-out state if it changed since the last write, sharing one write
    /// among every change made meanwhile (group commit).
    async fn persist_fanout(&self) -> Result<(), EngineError> {
        let want = self.fanout.as_ref().expect("core 0").borrow().changes;
        let _writer = self.fanout_writer.lock().await;
        if self.fanout_saved.get() >= want {
            return Ok(());
        }
        self.snapshot_fanout().await
    }

    /// Makes the checkpoints stored so far durable: appends their records to the
    /// checkpoint log with one fdatasync for all of them (group commit), and writes a
    /// snapshot instead once the log is long (or a failed append may have left it torn).
    async fn persist_checkpoints(&self) -> Result<(), EngineError> {
        let fanout = self.fanout.as_ref().expect("core 0");
        let want = fanout.borrow().checkpoints;
        let _writer = self.fanout_writer.lock().await;
        if self.checkpoints_saved.get() >= want {
            return Ok(());
        }
        if self.checkpoint_log_broken.get() {
            return self.snapshot_fanout().await;
        }
        let upto = fanout.borrow().checkpoints;
        let bytes = fanout.borrow_mut().take_log(upto);
        let path = self.cfg.data_dir.join(crate::fanout::CHECKPOINT_LOG_FILE);
        match self.storage.append_durable(&path, &bytes).await {
            Ok(len) => {
                self.checkpoints_saved.set(upto);
                if len > crate::fanout::CHECKPOINT_LOG_MAX_BYTES {
                    self.snapshot_fanout().await?;
                }
                Ok(())
            }
            Err(e) => {
                // The file may end in part of this append: nothing more goes after it; the
                // next checkpoint writes the whole state instead (which covers these).
                self.checkpoint_log_broken.set(true);
                Err(e.into())
            }
        }
    }

    /// Writes the whole fan-out state (every checkpoint made so far included) atomically,
    /// then removes the checkpoint log it covers. The caller holds `fanout_writer`.
    async fn snapshot_fanout(&self) -> Result<(), EngineError> {
        let fanout = self.fanout.as_ref().expect("core 0");
        let (path, bytes, covers, checkpoints) = {
            let mut f = fanout.borrow_mut();
            let routes = self.routes.borrow();
            let live: std::collections::HashSet<u64> =
                routes.values().map(|e| e.stream_id).collect();
            f.retain_streams(|id| live.contains(&id));
            let (path, bytes) = f.encoded();
            (path, bytes, f.changes, f.checkpoints)
        };
        self.storage.write_small_atomic(&path, &bytes).await?;
        self.fanout_saved.set(covers);
        fanout.borrow_mut().snapshot_covers(checkpoints);
        self.checkpoints_saved
            .set(self.checkpoints_saved.get().max(checkpoints));
        // What the log held is in the snapshot now. Should the removal not survive a crash,
        // replaying the old log changes nothing (see `Fanout::take_log`).
        let log = self.cfg.data_dir.join(crate::fanout::CHECKPOINT_LOG_FILE);
        match self.storage.remove_file(&log).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        self.checkpoint_log_broken.set(false);
        Ok(())
    }

    /// A new subscription of `consumer_id` to a shard of this core: it becomes the
    /// consumer's one subscription there (an older one is told it was replaced); the
    /// consumer keeps its read allowance across subscriptions.
    pub(crate) fn claim(&self, ident: ShardIdent, consumer_id: u64) -> Result<u64, EngineError> {
        let slot = self.slot(ident)?;
        let generation = self.next_generation.get() + 1;
        self.next_generation.set(generation);
        let rate = slot.spec.borrow().limits.rates().map(|(_, _, rb)| rb);
        let now = self.clock.now_ms();
        let mut subs = slot.subscribers.borrow_mut();
        let sub = subs.entry(consumer_id).or_insert_with(|| Subscriber {
            generation,
            bucket: rate.map(|rb| TokenBucket::new(rb, now)),
        });
        sub.generation = generation;
        Ok(generation)
    }

    /// A deregistered consumer: its subscriptions on this core end at their next read.
    pub(crate) fn drop_consumer(&self, consumer_id: u64) {
        for slot in self.shards.borrow().values() {
            slot.subscribers.borrow_mut().remove(&consumer_id);
        }
    }
}
