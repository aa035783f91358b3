//! The [`ShardReader`]: follows one shard from a position, call after call.
//!
//! It keeps the iterator each answer hands back, retries read throttling, busy answers and
//! lost connections with backoff ([`crate::RetryPolicy`]), and when an iterator expires (a reader idle for
//! five minutes) opens a new one just after the last sequence number it has returned, so a
//! reader neither skips nor repeats a record. With `wait_ms > 0` each call long-polls at the
//! tip, so a follower sees a new record about as soon as it is durable.

use crate::client::{Client, Position, Records, ShardIterator};
use crate::error::Result;
use spate_protocol::read::{MAX_BYTES_PER_READ, MAX_RECORDS_PER_READ, MAX_WAIT_MS};
use spate_protocol::ErrorCode;

/// Bounds of each get-records call a [`ShardReader`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOptions {
    /// 1..=10,000.
    pub max_records: u32,
    /// 1..=10 MiB.
    pub max_bytes: u32,
    /// Long-poll wait at the tip, 0..=30,000 ms; 0 answers at once.
    pub wait_ms: u32,
}

impl Default for ReadOptions {
    /// 10,000 records, 10 MiB, no long-poll.
    fn default() -> Self {
        ReadOptions {
            max_records: MAX_RECORDS_PER_READ,
            max_bytes: MAX_BYTES_PER_READ,
            wait_ms: 0,
        }
    }
}

impl ReadOptions {
    fn clamped(self) -> ReadOptions {
        ReadOptions {
            max_records: self.max_records.clamp(1, MAX_RECORDS_PER_READ),
            max_bytes: self.max_bytes.clamp(1, MAX_BYTES_PER_READ),
            wait_ms: self.wait_ms.min(MAX_WAIT_MS),
        }
    }
}

/// Reads one shard in order; see the module docs.
#[derive(Debug)]
pub struct ShardReader {
    client: Client,
    stream: String,
    shard_id: u32,
    start: Position,
    options: ReadOptions,
    iterator: Option<ShardIterator>,
    /// One past the last sequence number returned (from the last answer's `end_seq`).
    next_seq: Option<u64>,
    finished: bool,
}

impl Client {
    /// A reader of `shard_id` of `stream` from `position`. Opens the iterator now, so an
    /// unknown stream or shard fails here.
    pub async fn shard_reader(
        &self,
        stream: &str,
        shard_id: u32,
        position: Position,
        options: ReadOptions,
    ) -> Result<ShardReader> {
        let iterator = self.get_iterator(stream, shard_id, position).await?;
        Ok(ShardReader {
            client: self.clone(),
            stream: stream.to_string(),
            shard_id,
            start: position,
            options: options.clamped(),
            iterator: Some(iterator),
            next_seq: None,
            finished: false,
        })
    }
}

impl ShardReader {
    /// The next answer: `Some` with the records read (possibly none, when a long-poll ended
    /// at the tip), or `None` once the shard is closed and fully read.
    pub async fn next(&mut self) -> Result<Option<Records>> {
        let policy = self.client.config().retry;
        let mut attempt = 0u32;
        while !self.finished {
            let iterator = match &self.iterator {
                Some(it) => it.clone(),
                // Renewing an expired iterator is a read too: retried like one.
                None => match self.reopen().await {
                    Ok(it) => it,
                    Err(err) if err.is_retryable() && attempt < policy.max_attempts => {
                        tokio::time::sleep(policy.delay(attempt, err.retry_after_ms())).await;
                        attempt += 1;
                        continue;
                    }
                    Err(err) => return Err(err),
                },
            };
            let o = self.options;
            let err = match self
                .client
                .get_records(&iterator, o.max_records, o.max_bytes, o.wait_ms)
                .await
            {
                Ok(records) => {
                    self.next_seq = Some(records.end_seq);
                    self.iterator = records.next_iterator.clone();
                    self.finished = self.iterator.is_none();
                    return Ok(Some(records));
                }
                Err(e) => e,
            };
            let expired = err.code() == Some(ErrorCode::IteratorExpired);
            // A read changes nothing, so a lost connection or a timeout is retried too.
            // An expired iterator is reopened whatever the policy (a fresh one cannot expire
            // at once, so this does not loop).
            if expired || (err.is_retryable() && attempt < policy.max_attempts) {
                if expired {
                    self.iterator = None;
                } else {
                    tokio::time::sleep(policy.delay(attempt, err.retry_after_ms())).await;
                }
                attempt += 1;
                continue;
            }
            return Err(err);
        }
        Ok(None)
    }

    /// Changes the bounds of the following calls (e.g. a long-poll wait once caught up).
    pub fn set_options(&mut self, options: ReadOptions) {
        self.options = options.clamped();
    }

    pub fn options(&self) -> ReadOptions {
        self.options
    }

    /// One past the last sequence number returned so far, once a call has answered.
    pub fn next_seq(&self) -> Option<u64> {
        self.next_seq
    }

    pub fn shard_id(&self) -> u32 {
        self.shard_id
    }

    /// Opens a fresh iterator where the expired one would have continued.
    async fn reopen(&mut self) -> Result<ShardIterator> {
        let position = match self.next_seq {
            None => self.start,
            // Nothing below sequence number 0 exists, so everything from the oldest on is
            // what the reader has not seen yet.
            Some(0) => Position::TrimHorizon,
            Some(next) => Position::AfterSequenceNumber { seq: next - 1 },
        };
        let it = self
            .client
            .get_iterator(&self.stream, self.shard_id, position)
            .await?;
        self.iterator = Some(it.clone());
        Ok(it)
    }
}

/// Reads a whole stream across splits and merges: every shard, a parent to its end before
/// its children, each shard's records in order; see [`Client::stream_reader`].
#[derive(Debug)]
pub struct StreamReader {
    client: Client,
    stream: String,
    options: ReadOptions,
    /// Shards known (from the description at start, and children as parents end), with
    /// their parents among them.
    shards: Vec<(u32, Vec<u32>)>,
    started: Vec<u32>,
    ended: Vec<u32>,
    /// A shard's end not yet taken up (its children not yet found or started).
    pending_end: Option<(u32, Vec<u32>)>,
    /// Where a child of a shard read to its end starts: from a time, at that time (its
    /// records before it are older than asked for); else from its first record.
    child_from: Position,
    tx: tokio::sync::mpsc::Sender<Result<Followed>>,
    rx: tokio::sync::mpsc::Receiver<Result<Followed>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What a shard's reader task reports.
#[derive(Debug)]
enum Followed {
    Records(u32, Records),
    Ended(u32, Vec<u32>),
}

impl Drop for StreamReader {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Client {
    /// A reader of every shard of `stream`: from `position` on the shards whose parents are
    /// gone (TRIM_HORIZON, AT_TIMESTAMP) or on the open shards (LATEST), then each child
    /// from its first record (from the time, for AT_TIMESTAMP) once all its parents have
    /// been read to their ends (children
    /// made while reading are found as their parents end). Sequence-number positions are
    /// per shard and refused here. One task per shard being read, long-polling with
    /// `options.wait_ms` (at least a second: it follows the stream, and ends only once
    /// every shard is closed and read).
    pub async fn stream_reader(
        &self,
        stream: &str,
        position: Position,
        options: ReadOptions,
    ) -> Result<StreamReader> {
        if matches!(
            position,
            Position::AtSequenceNumber { .. } | Position::AfterSequenceNumber { .. }
        ) {
            return Err(crate::error::ClientError::invalid(
                ErrorCode::InvalidArgument,
                "sequence numbers are per shard: read one shard with shard_reader",
            ));
        }
        let info = self.describe_stream(stream).await?;
        let shards: Vec<(u32, Vec<u32>)> = info
            .shards
            .iter()
            .filter(|s| position != Position::Latest || s.state == spate_protocol::ShardState::Open)
            .map(|s| {
                (
                    s.id,
                    [s.parent, s.adjacent_parent]
                        .into_iter()
                        .flatten()
                        .collect(),
                )
            })
            .collect();
        let ids: Vec<u32> = shards.iter().map(|s| s.0).collect();
        let shards = shards
            .into_iter()
            .map(|(id, parents)| {
                (
                    id,
                    parents.into_iter().filter(|p| ids.contains(p)).collect(),
                )
            })
            .collect();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let mut reader = StreamReader {
            client: self.clone(),
            stream: stream.to_string(),
            options: ReadOptions {
                wait_ms: options.wait_ms.max(1000),
                ..options
            }
            .clamped(),
            shards,
            started: Vec::new(),
            ended: Vec::new(),
            pending_end: None,
            child_from: match position {
                Position::AtTimestamp { .. } => position,
                _ => Position::TrimHorizon,
            },
            tx,
            rx,
            tasks: Vec::new(),
        };
        reader.start_ready(position).await?;
        Ok(reader)
    }
}

impl StreamReader {
    /// The next answer with records, and the shard it is from; `None` once every shard is
    /// closed and read to its end. A shard's end whose children could not be found or
    /// started (the server unreachable a moment) is taken up again by the next call; a
    /// shard whose reads failed past their retries returns the error and is read again a
    /// second later (an error that lasts comes back each time), so calling `next` again
    /// goes on.
    pub async fn next(&mut self) -> Result<Option<(u32, Records)>> {
        loop {
            if let Some((id, children)) = self.pending_end.take() {
                if let Err(e) = self.take_end(id, &children).await {
                    self.pending_end = Some((id, children));
                    return Err(e);
                }
            }
            if self.ended.len() == self.shards.len() {
                return Ok(None);
            }
            match self.rx.recv().await {
                Some(Ok(Followed::Records(id, r))) => return Ok(Some((id, r))),
                Some(Ok(Followed::Ended(id, children))) => {
                    self.pending_end = Some((id, children));
                }
                Some(Err(e)) => return Err(e),
                None => return Ok(None),
            }
        }
    }

    /// Shard `id` was read to its end: learns its children, counts it ended and starts the
    /// children whose parents have all ended. Safe to run again after an error part way.
    async fn take_end(&mut self, id: u32, children: &[u32]) -> Result<()> {
        let new: Vec<u32> = children
            .iter()
            .copied()
            .filter(|c| !self.shards.iter().any(|s| s.0 == *c))
            .collect();
        if !new.is_empty() {
            let info = self.client.describe_stream(&self.stream).await?;
            for c in new {
                let parents = info
                    .shards
                    .iter()
                    .find(|s| s.id == c)
                    .map(|s| {
                        [s.parent, s.adjacent_parent]
                            .into_iter()
                            .flatten()
                            .collect()
                    })
                    .unwrap_or_else(|| vec![id]);
                self.shards.push((c, parents));
            }
        }
        if !self.ended.contains(&id) {
            self.ended.push(id);
        }
        self.start_ready(Position::TrimHorizon).await
    }

    /// The shards being read or read to their end.
    pub fn shards(&self) -> Vec<u32> {
        self.started.clone()
    }

    /// Starts a reader task for every shard whose parents (among those read) have ended:
    /// from `position` when none of its parents is read, else from its first record.
    async fn start_ready(&mut self, position: Position) -> Result<()> {
        let known: Vec<u32> = self.shards.iter().map(|s| s.0).collect();
        let ready: Vec<(u32, bool)> = self
            .shards
            .iter()
            .filter(|(id, parents)| {
                !self.started.contains(id)
                    && parents
                        .iter()
                        .all(|p| self.ended.contains(p) || !known.contains(p))
            })
            .map(|(id, parents)| (*id, parents.iter().any(|p| known.contains(p))))
            .collect();
        for (id, child) in ready {
            let from = if child { self.child_from } else { position };
            let mut reader = self
                .client
                .shard_reader(&self.stream, id, from, self.options)
                .await?;
            self.started.push(id);
            let tx = self.tx.clone();
            self.tasks.push(tokio::spawn(async move {
                let mut children = Vec::new();
                loop {
                    let msg = match reader.next().await {
                        Ok(Some(r)) => {
                            if r.next_iterator.is_none() {
                                children = r.child_shards.clone();
                            }
                            if r.records.is_empty() {
                                continue;
                            }
                            Ok(Followed::Records(id, r))
                        }
                        Ok(None) => Ok(Followed::Ended(id, std::mem::take(&mut children))),
                        Err(e) => Err(e),
                    };
                    // An error is the caller's to see, but the shard is not given up: its
                    // reader tries again from where it stands (it was left unread for the
                    // rest of the reader's life), a second later.
                    let failed = msg.is_err();
                    let last = matches!(msg, Ok(Followed::Ended(..)));
                    if tx.send(msg).await.is_err() || last {
                        return;
                    }
                    if failed {
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                }
            }));
        }
        Ok(())
    }
}
