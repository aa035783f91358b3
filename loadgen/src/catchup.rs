//! Reading a backlog back (the `catch-up` scenario): a registered consumer subscribed to
//! one shard from TRIM_HORIZON, or a polling reader, timed until it reaches the tip the
//! shard had when it started, or until a time limit.
//!
//! Throughput counts partition-key and data bytes (what a producer wrote); the engine
//! charges a consumer's read allowance for the stored batches, whose framing adds a few
//! bytes per record, so a consumer held to 2 MiB/s shows a little under 2 MiB/s here.
//! The first seconds of a limited consumer include its bucket's burst; `steady_mib_per_s`
//! leaves out the first [`STEADY_AFTER`].

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use spate_client::{
    Client, ClientConfig, ErrorCode, Position, ReadOptions, RetryPolicy, SubscribeOptions,
};

use crate::config::{client_config, TlsConfig};
use crate::Error;

const MIB: f64 = 1024.0 * 1024.0;
/// The steady rate is measured from this long after the start (past a bucket's burst).
pub const STEADY_AFTER: Duration = Duration::from_secs(2);
/// Credit a catch-up subscription grants: as much as the server holds for one by default
/// (`max_subscription_credit_bytes`), so credit never paces an unlimited read.
const CREDIT_BYTES: u32 = 16 << 20;
/// Bytes asked for per poll (see the runner's `READ_BYTES_MAX`).
const POLL_BYTES_MAX: u32 = 4 << 20;

/// What one timed read of a backlog did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BacklogRead {
    /// The registered consumer's name, or `poll`.
    pub reader: String,
    pub shard: u32,
    pub records: u64,
    /// Key and data bytes.
    pub bytes: u64,
    /// From the subscription's (or first read's) start until the tip or the time limit.
    pub seconds: f64,
    pub mib_per_s: f64,
    /// From [`STEADY_AFTER`] on, when the read lasted longer than that.
    pub steady_mib_per_s: Option<f64>,
    /// Whether it read everything up to the shard's tip at the start.
    pub reached_tip: bool,
}

/// The only (first) shard of `stream` and its last sequence number.
async fn shard_and_tip(client: &Client, stream: &str) -> Result<(u32, Option<u64>), Error> {
    let info = client
        .describe_stream(stream)
        .await
        .map_err(|e| Error::new(format!("catch-up: cannot describe {stream}: {e}")))?;
    let shard = info
        .shards
        .first()
        .ok_or_else(|| Error::new(format!("catch-up: stream {stream} has no shard")))?;
    Ok((shard.id, shard.last_seq))
}

/// Counts bytes over time and keeps the steady rate's starting point.
struct Meter {
    started: Instant,
    records: u64,
    bytes: u64,
    /// Bytes read and time when the steady window began.
    steady_from: Option<(Instant, u64)>,
}

impl Meter {
    fn new() -> Meter {
        Meter {
            started: Instant::now(),
            records: 0,
            bytes: 0,
            steady_from: None,
        }
    }

    fn add(&mut self, records: &[spate_client::Record]) {
        let now = Instant::now();
        if self.steady_from.is_none() && now.duration_since(self.started) >= STEADY_AFTER {
            self.steady_from = Some((now, self.bytes));
        }
        self.records += records.len() as u64;
        self.bytes += records
            .iter()
            .map(|r| (r.key.len() + r.data.len()) as u64)
            .sum::<u64>();
    }

    fn finish(self, reader: String, shard: u32, reached_tip: bool) -> BacklogRead {
        let end = Instant::now();
        let seconds = end.duration_since(self.started).as_secs_f64().max(1e-9);
        let steady_mib_per_s = self.steady_from.and_then(|(at, bytes)| {
            let s = end.duration_since(at).as_secs_f64();
            (s > 0.5).then(|| (self.bytes - bytes) as f64 / MIB / s)
        });
        BacklogRead {
            reader,
            shard,
            records: self.records,
            bytes: self.bytes,
            seconds,
            mib_per_s: self.bytes as f64 / MIB / seconds,
            steady_mib_per_s,
            reached_tip,
        }
    }
}

/// Registers `consumer` on `stream` (reusing it if it exists), reads the stream's shard
/// from TRIM_HORIZON through a subscription until its tip at the start or `limit`, then
/// deregisters it.
pub async fn push_read(
    server: &str,
    tls: Option<&TlsConfig>,
    stream: &str,
    consumer: &str,
    limit: Option<Duration>,
) -> Result<BacklogRead, Error> {
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        Error::new(format!("catch-up: {consumer} on {stream}: {what}: {e}"))
    };
    let client = connect(server, tls).await?;
    let (shard, tip) = shard_and_tip(&client, stream).await?;
    match client.register_consumer(stream, consumer).await {
        Ok(_) => {}
        Err(e) if e.code() == Some(ErrorCode::ConsumerExists) => {}
        Err(e) => return Err(fail("cannot register", &e)),
    }
    let options = SubscribeOptions {
        credit_bytes: CREDIT_BYTES,
        ..SubscribeOptions::default()
    };
    let mut sub = client
        .subscribe(stream, consumer, shard, Position::TrimHorizon, options)
        .await
        .map_err(|e| fail("cannot subscribe", &e))?;
    let mut meter = Meter::new();
    let deadline = limit.map(|l| meter.started + l);
    let past_tip = |sub: &spate_client::Subscription| {
        tip.is_none_or(|last| sub.continuation_seq().is_some_and(|c| c > last))
    };
    let mut reached_tip = past_tip(&sub);
    while !reached_tip {
        let next = match deadline {
            Some(d) => match tokio::time::timeout_at(d.into(), sub.next()).await {
                Ok(next) => next,
                Err(_) => break,
            },
            None => sub.next().await,
        };
        match next.map_err(|e| fail("read failed", &e))? {
            Some(event) => meter.add(&event.records),
            None => break,
        }
        reached_tip = past_tip(&sub);
    }
    let read = meter.finish(consumer.to_string(), shard, reached_tip);
    drop(sub);
    if let Err(e) = client.deregister_consumer(stream, consumer).await {
        tracing::warn!(consumer, error = %e, "could not deregister");
    }
    Ok(read)
}

/// Reads the stream's shard from TRIM_HORIZON with a polling reader (GetRecords, one call
/// at a time) until its tip at the start.
pub async fn poll_read(
    server: &str,
    tls: Option<&TlsConfig>,
    stream: &str,
) -> Result<BacklogRead, Error> {
    let fail = |e: &dyn std::fmt::Display| Error::new(format!("catch-up: polling {stream}: {e}"));
    let client = connect(server, tls).await?;
    let (shard, tip) = shard_and_tip(&client, stream).await?;
    let options = ReadOptions {
        max_bytes: POLL_BYTES_MAX,
        ..ReadOptions::default()
    };
    let mut reader = client
        .shard_reader(stream, shard, Position::TrimHorizon, options)
        .await
        .map_err(|e| fail(&e))?;
    let mut meter = Meter::new();
    let mut reached_tip = tip.is_none();
    let mut empty_in_a_row = 0;
    while !reached_tip {
        let Some(records) = reader.next().await.map_err(|e| fail(&e))? else {
            break;
        };
        // Below the tip every answer holds records; a run of empty ones means no progress.
        empty_in_a_row = if records.records.is_empty() {
            empty_in_a_row + 1
        } else {
            0
        };
        if empty_in_a_row > 100 {
            return Err(fail(&format!("no progress at {:?}", reader.next_seq())));
        }
        meter.add(&records.records);
        reached_tip = tip.is_none_or(|last| reader.next_seq().is_some_and(|n| n > last));
    }
    Ok(meter.finish("poll".into(), shard, reached_tip))
}

async fn connect(server: &str, tls: Option<&TlsConfig>) -> Result<Client, Error> {
    let cfg = ClientConfig {
        client_name: format!("spate-loadgen/{} catch-up", env!("CARGO_PKG_VERSION")),
        retry: RetryPolicy::default(),
        ..client_config(tls)
    };
    Client::connect_with(server.to_string(), cfg)
        .await
        .map_err(|e| Error::new(format!("catch-up: cannot connect to {server}: {e}")))
}
