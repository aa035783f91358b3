//! A run's parameters ([`RunConfig`]): what the command line sets, what a named scenario
//! sets, what the report echoes, and the command line that reproduces a run.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use spate_client::{ClientConfig, EncryptionType, Pem, TlsOptions};

use crate::cpus::format_cpu_list;
use crate::payload::{MAX_RECORD_BYTES, MIN_RECORD_BYTES};

/// Record sizes: fixed, or uniform between two bounds (`100-4096`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SizeSpec {
    pub min: usize,
    pub max: usize,
}

impl SizeSpec {
    pub fn fixed(bytes: usize) -> SizeSpec {
        SizeSpec {
            min: bytes,
            max: bytes,
        }
    }

    /// `BYTES` or `MIN-MAX` (uniform), each within the load generator's record bounds.
    pub fn parse(text: &str) -> Result<SizeSpec, String> {
        let num = |s: &str| {
            s.trim()
                .parse::<usize>()
                .map_err(|_| format!("{s:?} is not a size in bytes"))
        };
        let spec = match text.split_once('-') {
            Some((a, b)) => SizeSpec {
                min: num(a)?,
                max: num(b)?,
            },
            None => SizeSpec::fixed(num(text)?),
        };
        if spec.min > spec.max {
            return Err(format!("size range {text:?} is descending"));
        }
        if spec.min < MIN_RECORD_BYTES || spec.max > MAX_RECORD_BYTES {
            return Err(format!(
                "record size {text:?} is outside {MIN_RECORD_BYTES}..={MAX_RECORD_BYTES} bytes \
                 (each record carries a {MIN_RECORD_BYTES}-byte tracking header)"
            ));
        }
        Ok(spec)
    }

    pub fn mean(&self) -> f64 {
        (self.min + self.max) as f64 / 2.0
    }
}

impl std::fmt::Display for SizeSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.min == self.max {
            write!(f, "{}", self.min)
        } else {
            write!(f, "{}-{}", self.min, self.max)
        }
    }
}

/// How producers pick the key of their next record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum KeyMode {
    /// Uniformly at random among the producer's keys (devices reporting at random).
    Random,
    /// Keys spread evenly over the shards and used round-robin, so every shard receives
    /// exactly the same rate (for per-shard limits and shard-density runs).
    PerShard,
}

/// Which client call the producers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Api {
    /// `Producer::send` per record (the client batches per shard, one batch in flight per
    /// shard); the producer never waits for an acknowledgement.
    Producer,
    /// `Producer::send_with` per record: the same producer, each record's outcome settled
    /// by a callback on the producer's worker instead of a handle the load generator awaits
    /// (no future, no waiting task per record: cheaper per record).
    ProducerCallback,
    /// `Client::put_records` with every record due so far (at most `--call-records`), one
    /// call in flight per producer, like Kinesis' PutRecords; cheaper per record.
    PutRecords,
    /// `Client::put_shard_batches`: the same calls as `put-records`, but each record is
    /// generated straight into its shard's batch (keys routed once, at the start; at most
    /// 500 records per shard per call): no per-record key, buffer or routing work in the
    /// client, so the load generator's core goes further (the `max-*` scenarios). Nothing
    /// refused is retried, so it takes no --reshard or --on-demand.
    PutBatches,
}

/// How `--consumers` read the stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ConsumerMode {
    /// Each consumer long-polls every shard (GetRecords through a `ShardReader`), from the
    /// tip at the start; polling readers share a shard's read allowance.
    #[default]
    Poll,
    /// Each consumer is a registered consumer (`loadgen-0` ...) subscribed to every shard
    /// from the tip at the start: the server pushes records as soon as they are durable,
    /// with an allowance of its own per shard. A closed shard's children are followed.
    Push,
    /// The consumers are the workers of one consumer group (`loadgen-<random>`): the
    /// engine leases each shard to one of them; each batch is checkpointed once counted.
    /// Every record of the run is counted once; a later copy (after a lease moved) is
    /// `redelivered`.
    Group,
}

impl ConsumerMode {
    pub fn name(self) -> &'static str {
        match self {
            ConsumerMode::Poll => "poll",
            ConsumerMode::Push => "push",
            ConsumerMode::Group => "group",
        }
    }
}

/// The limits mode of a stream the load generator creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LimitsArg {
    Kinesis,
    Off,
}

/// A change of the stream's shards during a run (`--reshard AT:OP`), made by the run's
/// admin connection while the producers go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "op")]
pub enum ReshardOp {
    /// UpdateShardCount (uniform scaling) to `target` open shards: `count=N`.
    Count { target: u32 },
    /// SplitShard of `shard` at the middle of its hash-key range: `split=ID`.
    Split { shard: u32 },
    /// MergeShards of two adjacent open shards: `merge=A+B`; `merge` alone merges the two
    /// shards the previous step opened (a split's children).
    Merge { shards: Option<(u32, u32)> },
}

impl std::fmt::Display for ReshardOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReshardOp::Count { target } => write!(f, "count={target}"),
            ReshardOp::Split { shard } => write!(f, "split={shard}"),
            ReshardOp::Merge { shards: None } => write!(f, "merge"),
            ReshardOp::Merge {
                shards: Some((a, b)),
            } => write!(f, "merge={a}+{b}"),
        }
    }
}

/// A [`ReshardOp`] due `at_s` seconds after the run's clock starts (warm-up included).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ReshardStep {
    pub at_s: f64,
    #[serde(flatten)]
    pub op: ReshardOp,
}

impl ReshardStep {
    /// `AT:count=N`, `AT:split=ID`, `AT:merge` or `AT:merge=A+B` (AT in seconds).
    pub fn parse(text: &str) -> Result<ReshardStep, String> {
        let bad = || {
            format!(
                "{text:?} is not a reshard step: AT:count=N, AT:split=ID, AT:merge or AT:merge=A+B \
                 (AT in seconds from the start of the run)"
            )
        };
        let (at, op) = text.split_once(':').ok_or_else(bad)?;
        let at_s: f64 = at.trim().parse().map_err(|_| bad())?;
        let num = |s: &str| s.trim().parse::<u32>().map_err(|_| bad());
        let op = match op.trim().split_once('=') {
            Some(("count", n)) => ReshardOp::Count { target: num(n)? },
            Some(("split", id)) => ReshardOp::Split { shard: num(id)? },
            Some(("merge", pair)) => {
                let (a, b) = pair.split_once('+').ok_or_else(bad)?;
                ReshardOp::Merge {
                    shards: Some((num(a)?, num(b)?)),
                }
            }
            None if op.trim() == "merge" => ReshardOp::Merge { shards: None },
            _ => return Err(bad()),
        };
        Ok(ReshardStep { at_s, op })
    }
}

impl std::fmt::Display for ReshardStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.at_s, self.op)
    }
}

/// A change of the offered rate during an open-loop run (`--rate-step AT:RATE`): from
/// `at_s` seconds after the run's clock starts (warm-up included), records are due at
/// `rate` per second over all producers, until the next step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RateStep {
    pub at_s: f64,
    pub rate: f64,
}

impl RateStep {
    /// `AT:RATE` (AT in seconds, RATE in records per second, both positive).
    pub fn parse(text: &str) -> Result<RateStep, String> {
        let bad = || {
            format!(
                "{text:?} is not a rate step: AT:RATE (AT in seconds from the start of the run, \
                 RATE in records per second over all producers)"
            )
        };
        let (at, rate) = text.split_once(':').ok_or_else(bad)?;
        let at_s: f64 = at.trim().parse().map_err(|_| bad())?;
        let rate: f64 = rate.trim().parse().map_err(|_| bad())?;
        if !(at_s.is_finite() && rate.is_finite() && rate > 0.0) {
            return Err(bad());
        }
        Ok(RateStep { at_s, rate })
    }
}

impl std::fmt::Display for RateStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.at_s, self.rate)
    }
}

/// TLS for every connection a run opens (`--tls`, `--ca FILE`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsConfig {
    /// CA certificates (PEM) the server's certificate must chain to; `None`: the system's
    /// bundle. The server name is the host of `--server`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
}

impl TlsConfig {
    /// The client library's options for it.
    pub fn options(&self) -> TlsOptions {
        TlsOptions {
            ca: self.ca.clone().map(Pem::File),
            ..TlsOptions::default()
        }
    }
}

/// The client library's defaults, over TLS with `tls`, authenticated as
/// SPATE_ACCESS_KEY_ID / SPATE_SECRET when they are set.
pub fn client_config(tls: Option<&TlsConfig>) -> ClientConfig {
    ClientConfig {
        tls: tls.map(TlsConfig::options),
        // `--access-key-id`/`--secret-file` (main exports them) or the environment.
        credentials: spate_client::Credentials::from_env(),
        ..ClientConfig::default()
    }
}

fn one_call() -> usize {
    1
}

fn is_one_call(n: &usize) -> bool {
    *n == 1
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Everything a run needs; see `spate-loadgen --help` for each field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub server: String,
    pub stream: String,
    /// Create the stream with this many shards first (it must not exist).
    pub create_shards: Option<u32>,
    /// Limits of a created stream.
    pub limits: LimitsArg,
    /// Encryption at rest of a created stream (`none`, `aes-256-gcm`); reports from before
    /// it read back as `none`.
    #[serde(default, with = "encryption_name")]
    pub encryption: EncryptionType,
    /// Delete the stream after the run (only one this run created).
    pub delete_after: bool,
    pub producers: usize,
    /// Records per second over all producers; 0 = closed loop.
    pub rate: f64,
    pub size: SizeSpec,
    pub api: Api,
    /// `--api put-records`: most records per call.
    pub call_records: usize,
    /// `--api put-records`: calls a producer keeps in flight at once (1: one call at a
    /// time, the next taking every record that came due meanwhile).
    #[serde(default = "one_call", skip_serializing_if = "is_one_call")]
    pub calls_in_flight: usize,
    /// `--api put-batches`, closed loop: calls built once at the start and sent over and
    /// over (0: every record generated as it is sent).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub prebuilt_calls: usize,
    pub keys: u32,
    pub key_mode: KeyMode,
    /// Measured seconds (after the warm-up).
    pub duration_s: f64,
    /// Seconds of load before measuring starts (records due then are sent, not counted).
    pub warmup_s: f64,
    /// Consumers; each follows every shard from the tip (poll, push), or together they
    /// share the shards as one consumer group's workers (group).
    pub consumers: usize,
    /// How the consumers read.
    #[serde(default)]
    pub consumer_mode: ConsumerMode,
    /// `--consumer-mode group`: drop the first worker this many seconds after the start
    /// (warm-up included) without leaving the group, as a crash would, and time how long
    /// its shards take to be read again by the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crash_worker_at_s: Option<f64>,
    /// Closed loop: stop sending once this many MiB (key and data bytes) were sent; the
    /// measured window then ends when every producer has stopped (or at `duration_s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_after_mib: Option<f64>,
    /// CPUs for the load generator's threads; `None`: every CPU, unpinned.
    pub cores: Option<Vec<usize>>,
    pub verify: bool,
    /// The producer's linger: how long a batch waits for more records.
    pub linger_ms: u64,
    pub batch_bytes: usize,
    /// Records a producer may have outstanding (sent, not yet answered).
    pub inflight: usize,
    /// Client retries of refused (throttled or busy) puts; 0 counts them as throttled.
    pub retries: u32,
    /// Long-poll wait of the consumers' reads.
    pub read_wait_ms: u32,
    /// Spin (instead of sleeping on the timer) when the next record is due this soon.
    pub spin_us: u64,
    pub seed: u64,
    /// Print a progress line to stderr every second.
    pub progress: bool,
    /// A process whose CPU use to report beside the load generator's (the engine).
    pub engine_pid: Option<u32>,
    /// Splits, merges and scales made during the run, in time order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reshards: Vec<ReshardStep>,
    /// Open loop: changes of the offered rate during the run, in time order (`rate` is the
    /// rate until the first one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_steps: Vec<RateStep>,
    /// Switch the created stream to on-demand capacity (UpdateStreamMode) before the run.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub on_demand: bool,
    /// Keep one sample a second (sent, acknowledged, throttled, open shards, scaling
    /// decisions) in the report's `timeline`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub timeline: bool,
    /// Speak TLS on every connection; `None`: plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
}

impl RunConfig {
    /// Defaults for everything but the server, stream and load shape.
    pub fn new(server: impl Into<String>, stream: impl Into<String>) -> RunConfig {
        RunConfig {
            server: server.into(),
            stream: stream.into(),
            create_shards: None,
            limits: LimitsArg::Kinesis,
            encryption: EncryptionType::None,
            delete_after: false,
            producers: 1,
            rate: 0.0,
            size: SizeSpec::fixed(1024),
            api: Api::Producer,
            call_records: 2000,
            calls_in_flight: 1,
            prebuilt_calls: 0,
            keys: 1000,
            key_mode: KeyMode::Random,
            duration_s: 10.0,
            warmup_s: 0.0,
            consumers: 0,
            consumer_mode: ConsumerMode::Poll,
            crash_worker_at_s: None,
            stop_after_mib: None,
            cores: None,
            verify: false,
            linger_ms: 0,
            batch_bytes: 256 << 10,
            inflight: 20_000,
            retries: 0,
            read_wait_ms: 1000,
            spin_us: 1000,
            seed: 1,
            progress: false,
            engine_pid: None,
            reshards: Vec::new(),
            rate_steps: Vec::new(),
            on_demand: false,
            timeline: false,
            tls: None,
        }
    }

    /// Checks values a run cannot use; one line.
    pub fn validate(&self) -> Result<(), String> {
        if self.producers == 0 {
            return Err("--producers must be at least 1".into());
        }
        if !(self.rate >= 0.0 && self.rate.is_finite()) {
            return Err("--rate must be 0 (closed loop) or a positive number".into());
        }
        if self.keys == 0 || (self.keys as usize) < self.producers {
            return Err(
                "--keys must be at least --producers (a key belongs to one producer)".into(),
            );
        }
        if !(self.duration_s > 0.0 && self.duration_s.is_finite()) {
            return Err("--duration must be positive".into());
        }
        if !(self.warmup_s >= 0.0 && self.warmup_s.is_finite()) {
            return Err("--warmup must be zero or positive".into());
        }
        // The record header's clock holds 48 bits of nanoseconds (78 hours).
        if self.duration_s + self.warmup_s > 72.0 * 3600.0 {
            return Err("--duration plus --warmup must be at most 72 hours".into());
        }
        if self.inflight == 0
            || self.batch_bytes == 0
            || self.call_records == 0
            || self.calls_in_flight == 0
        {
            return Err(
                "--inflight, --batch-bytes, --call-records and --calls-in-flight must be positive"
                    .into(),
            );
        }
        if self.calls_in_flight > 1 && self.api != Api::PutRecords {
            return Err("--calls-in-flight is for --api put-records".into());
        }
        if self.prebuilt_calls > 0
            && (self.api != Api::PutBatches
                || self.rate != 0.0
                || !self.rate_steps.is_empty()
                || self.verify
                || self.consumers > 0)
        {
            return Err(
                "--prebuilt-calls is for --api put-batches in a closed loop (--rate 0), \
                 without --verify or consumers (its records repeat)"
                    .into(),
            );
        }
        if self.read_wait_ms > 30_000 {
            return Err("--read-wait-ms must be at most 30000".into());
        }
        if self.create_shards == Some(0) {
            return Err("--create-shards must be at least 1".into());
        }
        if self.delete_after && self.create_shards.is_none() {
            return Err(
                "--delete-after only deletes a stream the run created (--create-shards)".into(),
            );
        }
        if let Some(cores) = &self.cores {
            if cores.is_empty() {
                return Err("--cores names no CPU".into());
            }
        }
        let end_s = self.warmup_s + self.duration_s;
        let mut last_s = 0.0;
        for step in &self.reshards {
            if !(step.at_s >= last_s && step.at_s < end_s) {
                return Err(format!(
                    "--reshard {step}: steps must be in time order, within the run's \
                     {end_s} s (warm-up plus duration)"
                ));
            }
            last_s = step.at_s;
            if step.op == (ReshardOp::Count { target: 0 }) {
                return Err(format!(
                    "--reshard {step}: a stream needs at least one shard"
                ));
            }
        }
        let mut last_s = 0.0;
        for step in &self.rate_steps {
            if self.rate <= 0.0 {
                return Err(format!(
                    "--rate-step {step}: rate steps need an open-loop run (--rate above 0)"
                ));
            }
            if !(step.rate > 0.0 && step.rate.is_finite()) {
                return Err(format!("--rate-step {step}: the rate must be positive"));
            }
            if !(step.at_s > last_s && step.at_s < end_s) {
                return Err(format!(
                    "--rate-step {step}: steps must be in time order, after 0 and within the \
                     run's {end_s} s (warm-up plus duration)"
                ));
            }
            last_s = step.at_s;
        }
        if self.encryption.is_encrypted() && self.create_shards.is_none() {
            return Err(
                "--encryption sets up a stream the run creates (--create-shards); an existing \
                 stream keeps its own (`spate stream start-encryption`)"
                    .into(),
            );
        }
        if self.api == Api::PutBatches && (self.on_demand || !self.reshards.is_empty()) {
            return Err(
                "--api put-batches routes keys once and retries nothing: it takes no \
                 --reshard or --on-demand (use put-records)"
                    .into(),
            );
        }
        if self.on_demand && !self.reshards.is_empty() {
            return Err(
                "--reshard splits and merges a provisioned stream; an --on-demand stream's shards \
                 are the engine's (it refuses SplitShard, MergeShards and UpdateShardCount)"
                    .into(),
            );
        }
        if self.on_demand && self.create_shards.is_none() {
            return Err(
                "--on-demand switches a stream the run creates (--create-shards) to on-demand"
                    .into(),
            );
        }
        if !self.reshards.is_empty()
            && self.consumers > 0
            && self.consumer_mode == ConsumerMode::Poll
        {
            return Err(
                "--reshard with --consumers: polling consumers follow only the shards open at \
                 the start (push and group consumers follow the children: --consumer-mode)"
                    .into(),
            );
        }
        if self.consumer_mode != ConsumerMode::Poll && self.consumers == 0 {
            return Err(format!(
                "--consumer-mode {} with no consumers: give --consumers N (it would run producers only)",
                self.consumer_mode.name()
            ));
        }
        if let Some(at_s) = self.crash_worker_at_s {
            if self.consumer_mode != ConsumerMode::Group || self.consumers < 2 {
                return Err(
                    "--crash-worker-at needs --consumer-mode group and at least 2 --consumers \
                     (one to drop, one to take over)"
                        .into(),
                );
            }
            if !(at_s > 0.0 && at_s < end_s) {
                return Err(format!(
                    "--crash-worker-at {at_s}: must be after 0 and within the run's {end_s} s \
                     (warm-up plus duration)"
                ));
            }
        }
        if let Some(mib) = self.stop_after_mib {
            if self.rate > 0.0 {
                return Err(
                    "--stop-after-mib stops a closed-loop run (--rate 0) once that much was sent"
                        .into(),
                );
            }
            if !(mib > 0.0 && mib.is_finite()) {
                return Err("--stop-after-mib must be positive".into());
            }
        }
        Ok(())
    }

    pub fn run_duration(&self) -> Duration {
        Duration::from_secs_f64(self.warmup_s + self.duration_s)
    }

    pub fn warmup(&self) -> Duration {
        Duration::from_secs_f64(self.warmup_s)
    }

    /// The `spate-loadgen` command line that repeats this run.
    pub fn command_line(&self) -> String {
        let mut a = vec![
            "spate-loadgen".to_string(),
            format!("--server {}", self.server),
            format!("--stream {}", self.stream),
        ];
        if let Some(tls) = &self.tls {
            a.push("--tls".into());
            if let Some(ca) = &tls.ca {
                a.push(format!("--ca {}", ca.display()));
            }
        }
        if let Some(n) = self.create_shards {
            a.push(format!("--create-shards {n}"));
            a.push(format!("--limits {}", limits_name(self.limits)));
            if self.encryption.is_encrypted() {
                a.push(format!("--encryption {}", self.encryption));
            }
        }
        if self.delete_after {
            a.push("--delete-after".into());
        }
        if self.on_demand {
            a.push("--on-demand".into());
        }
        a.push(format!("--producers {}", self.producers));
        a.push(format!("--rate {}", self.rate));
        for step in &self.rate_steps {
            a.push(format!("--rate-step {step}"));
        }
        a.push(format!("--size {}", self.size));
        match self.api {
            Api::PutRecords => {
                a.push(format!(
                    "--api put-records --call-records {}",
                    self.call_records
                ));
                if self.calls_in_flight != 1 {
                    a.push(format!("--calls-in-flight {}", self.calls_in_flight));
                }
            }
            Api::PutBatches => {
                a.push(format!(
                    "--api put-batches --call-records {}",
                    self.call_records
                ));
                if self.prebuilt_calls > 0 {
                    a.push(format!("--prebuilt-calls {}", self.prebuilt_calls));
                }
            }
            Api::Producer => {}
            Api::ProducerCallback => a.push("--api producer-callback".into()),
        }
        a.push(format!("--keys {}", self.keys));
        if self.key_mode == KeyMode::PerShard {
            a.push("--key-mode per-shard".into());
        }
        a.push(format!("--duration {}", self.duration_s));
        if self.warmup_s > 0.0 {
            a.push(format!("--warmup {}", self.warmup_s));
        }
        if self.consumers > 0 {
            a.push(format!("--consumers {}", self.consumers));
            if self.consumer_mode != ConsumerMode::Poll {
                a.push(format!("--consumer-mode {}", self.consumer_mode.name()));
            }
        }
        if let Some(at_s) = self.crash_worker_at_s {
            a.push(format!("--crash-worker-at {at_s}"));
        }
        if let Some(mib) = self.stop_after_mib {
            a.push(format!("--stop-after-mib {mib}"));
        }
        if let Some(cores) = &self.cores {
            a.push(format!("--cores {}", format_cpu_list(cores)));
        }
        let d = RunConfig::new("", "");
        if self.linger_ms != d.linger_ms {
            a.push(format!("--linger-ms {}", self.linger_ms));
        }
        if self.batch_bytes != d.batch_bytes {
            a.push(format!("--batch-bytes {}", self.batch_bytes));
        }
        if self.inflight != d.inflight {
            a.push(format!("--inflight {}", self.inflight));
        }
        if self.retries != d.retries {
            a.push(format!("--retries {}", self.retries));
        }
        for step in &self.reshards {
            a.push(format!("--reshard {step}"));
        }
        if self.timeline {
            a.push("--timeline".into());
        }
        if self.verify {
            a.push("--verify".into());
        }
        a.join(" ")
    }
}

/// An [`EncryptionType`] in a report: by its name, as the command line takes it.
mod encryption_name {
    use serde::{Deserialize, Deserializer, Serializer};
    use spate_client::EncryptionType;

    pub fn serialize<S: Serializer>(e: &EncryptionType, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(e.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<EncryptionType, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

pub fn limits_name(l: LimitsArg) -> &'static str {
    match l {
        LimitsArg::Kinesis => "kinesis",
        LimitsArg::Off => "off",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_fixed_and_ranges() {
        assert_eq!(SizeSpec::parse("1024").unwrap(), SizeSpec::fixed(1024));
        assert_eq!(
            SizeSpec::parse("100-4096").unwrap(),
            SizeSpec {
                min: 100,
                max: 4096
            }
        );
        for bad in ["", "x", "10", "4096-100", "100-", "2000000"] {
            assert!(SizeSpec::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(SizeSpec::parse("100-4096").unwrap().to_string(), "100-4096");
    }

    #[test]
    fn validation_names_the_flag() {
        let mut c = RunConfig::new("127.0.0.1:7400", "s");
        c.validate().unwrap();
        c.producers = 0;
        assert!(c.validate().unwrap_err().contains("--producers"));
        c.producers = 4;
        c.keys = 3;
        assert!(c.validate().unwrap_err().contains("--keys"));
        c.keys = 4;
        c.delete_after = true;
        assert!(c.validate().unwrap_err().contains("--delete-after"));
        c.delete_after = false;
        // A consumer mode without consumers would run producers only, silently.
        c.consumer_mode = ConsumerMode::Push;
        assert!(c.validate().unwrap_err().contains("--consumers N"));
        c.consumers = 1;
        c.validate().unwrap();
    }

    #[test]
    fn reshard_steps_parse_and_print() {
        for (text, op) in [
            ("6:count=8", ReshardOp::Count { target: 8 }),
            ("2.5:split=0", ReshardOp::Split { shard: 0 }),
            ("3:merge", ReshardOp::Merge { shards: None }),
            (
                "4:merge=4+5",
                ReshardOp::Merge {
                    shards: Some((4, 5)),
                },
            ),
        ] {
            let step = ReshardStep::parse(text).unwrap();
            assert_eq!(step.op, op, "{text}");
            assert_eq!(step.to_string(), text);
        }
        for bad in [
            "",
            "6",
            "x:count=8",
            "6:count",
            "6:count=x",
            "6:merge=4",
            "6:grow=2",
        ] {
            assert!(ReshardStep::parse(bad).is_err(), "{bad:?}");
        }
        let mut c = RunConfig::new("127.0.0.1:7400", "s");
        c.reshards = vec![
            ReshardStep::parse("5:count=8").unwrap(),
            ReshardStep::parse("4:count=4").unwrap(),
        ];
        assert!(c.validate().unwrap_err().contains("time order"));
        c.reshards.swap(0, 1);
        c.validate().unwrap();
        c.reshards.push(ReshardStep::parse("10:count=4").unwrap());
        assert!(c.validate().unwrap_err().contains("within the run"));
        c.reshards.pop();
        c.consumers = 1;
        assert!(c.validate().unwrap_err().contains("--consumers"));
        // Push and group consumers follow the children of a closed shard.
        for mode in [ConsumerMode::Push, ConsumerMode::Group] {
            c.consumer_mode = mode;
            c.validate().unwrap();
        }
        c.consumer_mode = ConsumerMode::Poll;
        c.consumers = 0;
        assert!(c
            .command_line()
            .ends_with("--reshard 4:count=4 --reshard 5:count=8"));
        // The JSON names each step's operation; a report without steps reads back.
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(
            v["reshards"][1],
            serde_json::json!({"at_s": 5.0, "op": "count", "target": 8})
        );
        let mut v = serde_json::to_value(RunConfig::new("x", "s")).unwrap();
        assert!(v.get("reshards").is_none());
        v.as_object_mut().unwrap().remove("reshards");
        let back: RunConfig = serde_json::from_value(v).unwrap();
        assert!(back.reshards.is_empty());
    }

    #[test]
    fn rate_steps_parse_validate_and_print() {
        let step = RateStep::parse("10:16384").unwrap();
        assert_eq!(
            step,
            RateStep {
                at_s: 10.0,
                rate: 16384.0
            }
        );
        assert_eq!(step.to_string(), "10:16384");
        for bad in ["", "10", "x:5", "10:x", "10:0", "10:-5", "10:inf"] {
            assert!(RateStep::parse(bad).is_err(), "{bad:?}");
        }
        let mut c = RunConfig::new("127.0.0.1:7400", "s");
        c.duration_s = 30.0;
        c.rate_steps = vec![RateStep::parse("10:5000").unwrap()];
        assert!(c.validate().unwrap_err().contains("open-loop"));
        c.rate = 1000.0;
        c.validate().unwrap();
        c.rate_steps.push(RateStep::parse("5:1000").unwrap());
        assert!(c.validate().unwrap_err().contains("time order"));
        c.rate_steps[1].at_s = 30.0;
        assert!(c.validate().unwrap_err().contains("within the run"));
        c.rate_steps[1].at_s = 20.0;
        c.validate().unwrap();
        c.on_demand = true;
        assert!(c.validate().unwrap_err().contains("--on-demand"));
        c.create_shards = Some(4);
        c.timeline = true;
        c.validate().unwrap();
        c.reshards.push(ReshardStep::parse("5:split=0").unwrap());
        assert!(c.validate().unwrap_err().contains("provisioned"));
        c.reshards.clear();
        assert_eq!(
            c.command_line(),
            "spate-loadgen --server 127.0.0.1:7400 --stream s --create-shards 4 --limits kinesis \
             --on-demand --producers 1 --rate 1000 --rate-step 10:5000 --rate-step 20:1000 \
             --size 1024 --keys 1000 --duration 30 --timeline"
        );
        // Reports without the new fields read back.
        let mut v = serde_json::to_value(RunConfig::new("x", "s")).unwrap();
        for f in ["rate_steps", "on_demand", "timeline"] {
            assert!(v.get(f).is_none(), "{f}");
        }
        v.as_object_mut().unwrap().remove("reshards");
        let back: RunConfig = serde_json::from_value(v).unwrap();
        assert!(back.rate_steps.is_empty() && !back.on_demand && !back.timeline);
    }

    #[test]
    fn consumer_modes_validate_and_print() {
        let mut c = RunConfig::new("127.0.0.1:7400", "s");
        c.consumers = 2;
        c.consumer_mode = ConsumerMode::Group;
        c.crash_worker_at_s = Some(4.0);
        c.validate().unwrap();
        assert_eq!(
            c.command_line(),
            "spate-loadgen --server 127.0.0.1:7400 --stream s --producers 1 --rate 0 --size 1024 \
             --keys 1000 --duration 10 --consumers 2 --consumer-mode group --crash-worker-at 4"
        );
        c.crash_worker_at_s = Some(10.0);
        assert!(c.validate().unwrap_err().contains("within the run"));
        c.crash_worker_at_s = Some(4.0);
        c.consumers = 1;
        assert!(c.validate().unwrap_err().contains("--crash-worker-at"));
        c.consumers = 2;
        c.consumer_mode = ConsumerMode::Push;
        assert!(c.validate().unwrap_err().contains("--consumer-mode group"));
        c.crash_worker_at_s = None;
        c.validate().unwrap();
        assert!(c
            .command_line()
            .ends_with("--consumers 2 --consumer-mode push"));
        // Poll is the default, left out of the command line; old reports read back as poll.
        c.consumer_mode = ConsumerMode::Poll;
        assert!(c.command_line().ends_with("--consumers 2"));
        let mut v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["consumer_mode"], "poll");
        v.as_object_mut().unwrap().remove("consumer_mode");
        let back: RunConfig = serde_json::from_value(v).unwrap();
        assert_eq!(back.consumer_mode, ConsumerMode::Poll);
        // A byte budget stops a closed-loop run.
        c.stop_after_mib = Some(64.0);
        c.validate().unwrap();
        assert!(c.command_line().ends_with("--stop-after-mib 64"));
        c.rate = 100.0;
        assert!(c.validate().unwrap_err().contains("--stop-after-mib"));
    }

    #[test]
    fn calls_in_flight_validate_print_and_read_back() {
        let mut c = RunConfig::new("127.0.0.1:7400", "s");
        c.api = Api::PutRecords;
        c.calls_in_flight = 0;
        assert!(c.validate().unwrap_err().contains("--calls-in-flight"));
        c.calls_in_flight = 1;
        c.validate().unwrap();
        assert!(!c.command_line().contains("--calls-in-flight"));
        c.calls_in_flight = 4;
        c.validate().unwrap();
        c.api = Api::PutBatches;
        assert!(c.validate().unwrap_err().contains("put-records"));
        c.api = Api::PutRecords;
        assert!(c
            .command_line()
            .contains("--api put-records --call-records 2000 --calls-in-flight 4"));
        // Reports from before the field read back as one call at a time.
        let mut v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["calls_in_flight"], 4);
        v.as_object_mut().unwrap().remove("calls_in_flight");
        let back: RunConfig = serde_json::from_value(v).unwrap();
        assert_eq!(back.calls_in_flight, 1);
    }

    #[test]
    fn prebuilt_calls_validate_print_and_read_back() {
        let mut c = RunConfig::new("127.0.0.1:7400", "s");
        c.api = Api::PutBatches;
        c.rate = 0.0;
        c.prebuilt_calls = 2;
        c.validate().unwrap();
        assert!(c
            .command_line()
            .contains("--api put-batches --call-records 2000 --prebuilt-calls 2"));
        for bad in [
            RunConfig {
                api: Api::PutRecords,
                ..c.clone()
            },
            RunConfig {
                rate: 1000.0,
                ..c.clone()
            },
            RunConfig {
                verify: true,
                ..c.clone()
            },
            RunConfig {
                consumers: 1,
                ..c.clone()
            },
        ] {
            assert!(bad.validate().unwrap_err().contains("--prebuilt-calls"));
        }
        // Reports from before the field read back as records generated one by one.
        let mut v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["prebuilt_calls"], 2);
        v.as_object_mut().unwrap().remove("prebuilt_calls");
        let back: RunConfig = serde_json::from_value(v).unwrap();
        assert_eq!(back.prebuilt_calls, 0);
        c.prebuilt_calls = 0;
        assert!(!c.command_line().contains("--prebuilt-calls"));
    }

    #[test]
    fn command_line_repeats_the_run() {
        let mut c = RunConfig::new("127.0.0.1:7400", "clicks");
        c.create_shards = Some(4);
        c.limits = LimitsArg::Off;
        c.rate = 5000.0;
        c.cores = Some(vec![1, 2, 3]);
        c.verify = true;
        assert_eq!(
            c.command_line(),
            "spate-loadgen --server 127.0.0.1:7400 --stream clicks --create-shards 4 --limits off \
             --producers 1 --rate 5000 --size 1024 --keys 1000 --duration 10 --cores 1-3 --verify"
        );
    }

    #[test]
    fn encryption_validates_prints_and_reads_back() {
        let mut c = RunConfig::new("127.0.0.1:7400", "clicks");
        c.encryption = EncryptionType::Aes256Gcm;
        assert!(c.validate().unwrap_err().contains("--create-shards"));
        c.create_shards = Some(2);
        c.validate().unwrap();
        assert_eq!(
            c.command_line(),
            "spate-loadgen --server 127.0.0.1:7400 --stream clicks --create-shards 2 \
             --limits kinesis --encryption aes-256-gcm --producers 1 --rate 0 --size 1024 \
             --keys 1000 --duration 10"
        );
        // In the report's parameters by name, always (a figure depends on it).
        let mut v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["encryption"], "aes-256-gcm");
        let back: RunConfig = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(back.encryption, EncryptionType::Aes256Gcm);
        let plain = serde_json::to_value(RunConfig::new("x", "s")).unwrap();
        assert_eq!(plain["encryption"], "none");
        // Reports from before it read back as none; a name from elsewhere is refused.
        v.as_object_mut().unwrap().remove("encryption");
        let back: RunConfig = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(back.encryption, EncryptionType::None);
        v["encryption"] = "rot13".into();
        assert!(serde_json::from_value::<RunConfig>(v).is_err());
    }
}
