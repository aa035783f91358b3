//! Named benchmark scenarios (`spate-loadgen bench NAME`), each one command writing one
//! JSON ([`BenchResult`]: headline figures, checks, and every run's full [`Report`]).
//!
//! | scenario | what it measures |
//! |---|---|
//! | `max-1k` | durable ingest of 1 KiB records, limits off, closed loop (16 producers, `PutBatches` calls of 2,000 records, two per producer built at the start and sent again and again): MiB/s |
//! | `max-100b` | the same with 100 B records and 64 producers (a call carries ≤ 500 records a shard): records/s (per engine core) |
//! | `latency-half` | open loop at half of `max-1k`'s rate: ack p50 … p99.99, max |
//! | `shard-limit` | one shard offered 2× its Kinesis write limit, in records and in bytes: accepted rate within ±10 % of the limit, the rest throttled, nothing lost |
//! | `shard-density` | N shards each at its full Kinesis write limit (1,000 records/s of 1,000 B; `PutBatches` calls of the records due), N growing until ack p99 exceeds 10 ms: the largest N per engine core |
//! | `shard-density-small` | the same with 100 B records (1,000 records/s per shard) |
//! | `many-shards` | 10,000 shards at 100 records/s of 100 B each, then 10 shards at the same total rate: ack p99, and the engine's CPU per record in both |
//! | `peer-shape` | 1 and 4 producers, one shard each, 1,000 B records, 100 per call, closed loop (the shape peers publish): MB/s against fio durable |
//! | `producer-path` | `Producer::send` on an 8-shard stream, 1 KiB records: its maximum against `put_records`' (and `Producer::send_with`'s, settling by callbacks), and ack latency at half its maximum |
//! | `fan-out` | 20 push consumers, then 20 polling consumers, on every shard of a 2-shard stream at a fixed rate: end-to-end p99 against ack p99 (goal: + 1 ms at most), each consumer's records/s against the write rate |
//! | `catch-up` | a backlog of 1 KiB records read from TRIM_HORIZON: 2 push consumers with Kinesis limits (≈ 2 MiB/s each), then one push consumer (and a polling reader) with limits off as fast as it goes, against fio's read bandwidth |
//! | `group-failover` | 4 workers of a consumer group on 8 shards under steady load; one dropped without leaving: time until its shards are read again (goal ≤ 10 s), records delivered again, none missed |
//! | `control-churn` | ack latency of a steady stream alone, then while another client creates and deletes streams |
//! | `reshard` | steady open-loop load on 4 shards while a split, a merge, UpdateShardCount 4 → 8 → 4 and (fresh stream) 4 → 64 → 4 happen: each change's time, ack p99 around it against the steady state, and every key checked across the lineage |
//! | `on-demand` | an on-demand stream (Kinesis limits, 4 shards) offered 1 MiB/s of 1 KiB records, then 16 MiB/s, then 1 MiB/s: time from the step up until throttling stops, the share throttled meanwhile, open shards over time, nothing lost; then the scale-in (which needs the server's `on_demand_quiet_ms` shortened) |
//!
//! Every scenario creates its own streams (named `bench-NAME-...`) and deletes them after.
//! `--quick` shrinks every run to about half a second: it checks a scenario still works
//! (the test suite runs every scenario that way), and measures nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::catchup;
use crate::config::{
    client_config, Api, ConsumerMode, KeyMode, LimitsArg, RateStep, ReshardOp, ReshardStep,
    RunConfig, SizeSpec, TlsConfig,
};
use crate::report::{git_sha, unix_now_s, Report, ReshardReport, TimelineSecond};
use crate::runner::{run, runtime};
use crate::Error;

/// A scenario's name and one line about it.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    pub name: &'static str,
    pub description: &'static str,
}

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "max-1k",
        description: "durable ingest of 1 KiB records, limits off, as fast as acknowledgements allow",
    },
    Scenario {
        name: "max-100b",
        description: "durable ingest of 100 B records, limits off, as fast as acknowledgements allow",
    },
    Scenario {
        name: "latency-half",
        description: "open loop at half of max-1k's rate: ack latency percentiles",
    },
    Scenario {
        name: "shard-limit",
        description: "one shard offered 2x its Kinesis write limit (records, then bytes): accepted within 10 %, rest throttled, nothing lost",
    },
    Scenario {
        name: "shard-density",
        description: "N shards each at its full Kinesis write limit, N growing until ack p99 > 10 ms",
    },
    Scenario {
        name: "shard-density-small",
        description: "N shards each at 1,000 records/s of 100 B, N growing until ack p99 > 10 ms",
    },
    Scenario {
        name: "many-shards",
        description: "10,000 shards at 100 records/s of 100 B each, then 10 shards at the same total rate: ack p99, engine CPU per record",
    },
    Scenario {
        name: "peer-shape",
        description: "1 and 4 producers, one shard each, 1,000 B records, 100 per call, closed loop: MB/s vs fio durable",
    },
    Scenario {
        name: "producer-path",
        description: "Producer::send on 8 shards, 1 KiB: its maximum vs put_records', ack latency at half its maximum",
    },
    Scenario {
        name: "control-churn",
        description: "ack latency of a steady stream alone, then while another client creates and deletes 16-shard streams nonstop (directory syncs, renames, catalog saves): blocking calls must stay off the hot path",
    },
    Scenario {
        name: "fan-out",
        description: "20 push consumers (then 20 polling ones) on every shard at a fixed open-loop rate: e2e p99 vs ack p99 (goal <= +1 ms), each consumer's records/s vs the write rate",
    },
    Scenario {
        name: "catch-up",
        description: "a shard's backlog of 1 KiB records read from TRIM_HORIZON: 2 push consumers with Kinesis limits (~2 MiB/s each), one unlimited push consumer (and a polling reader) as fast as it goes vs fio read",
    },
    Scenario {
        name: "group-failover",
        description: "4 consumer-group workers on 8 shards under steady load, one dropped without leaving: time until its shards are read again (goal <= 10 s), records redelivered, none missed",
    },
    Scenario {
        name: "reshard",
        description: "steady open-loop load on 4 shards while a split, a merge, UpdateShardCount 4 -> 8 -> 4 and (fresh stream) 4 -> 64 -> 4 happen: time of each change, ack p99 around it vs steady, nothing lost, duplicated or reordered across the lineage",
    },
    Scenario {
        name: "on-demand",
        description: "an on-demand stream (Kinesis limits, 4 shards) offered 1 MiB/s of 1 KiB records, then 16 MiB/s, then 1 MiB/s again: time from the step up until throttling stops (goal <= 60 s), share of records throttled meanwhile, open shards over time, nothing lost, duplicated or reordered; then the scale-in (seen only if the server runs with a short on_demand_quiet_ms, e.g. 10000)",
    },
];

/// How to run scenarios.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub server: String,
    pub cores: Option<Vec<usize>>,
    pub out_dir: PathBuf,
    pub engine_pid: Option<u32>,
    /// Overrides each run's measured seconds.
    pub duration_s: Option<f64>,
    /// `latency-half`: the `max-1k` result to take the rate from.
    pub max_report: Option<PathBuf>,
    /// `fan-out`: the stream's shards.
    pub shards: Option<u32>,
    /// `fan-out`, `group-failover`: the open-loop rate.
    pub rate: Option<f64>,
    /// `catch-up`: MiB in the backlog the unlimited consumer reads.
    pub catch_up_mib: Option<f64>,
    pub quick: bool,
    pub progress: bool,
    /// The command line, recorded in the result.
    pub command: String,
    /// Speak TLS on every connection; `None`: plaintext.
    pub tls: Option<TlsConfig>,
    /// Encryption at rest of the streams the scenarios create (the server needs a key
    /// file for `Aes256Gcm`).
    pub encryption: spate_client::EncryptionType,
}

impl BenchOptions {
    pub fn new(server: impl Into<String>, out_dir: impl Into<PathBuf>) -> BenchOptions {
        BenchOptions {
            server: server.into(),
            cores: None,
            out_dir: out_dir.into(),
            engine_pid: None,
            duration_s: None,
            max_report: None,
            shards: None,
            rate: None,
            catch_up_mib: None,
            quick: false,
            progress: false,
            command: String::new(),
            tls: None,
            encryption: spate_client::EncryptionType::None,
        }
    }
}

/// A pass/fail check within a scenario (e.g. the accepted rate within 10 % of the limit).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

/// What a scenario writes: `OUT/NAME.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchResult {
    pub scenario: String,
    pub description: String,
    pub command: String,
    pub started_unix_s: u64,
    pub git_sha: String,
    pub engine_cores: usize,
    pub quick: bool,
    /// Headline figures by name (units in the names).
    pub figures: BTreeMap<String, f64>,
    pub checks: Vec<Check>,
    pub notes: Vec<String>,
    pub runs: Vec<Report>,
}

impl BenchResult {
    /// A run failed (errors other than throttling, or verify): one line.
    pub fn failure(&self) -> Option<String> {
        self.runs
            .iter()
            .find_map(|r| r.failure())
            .map(|why| format!("{}: {why}", self.scenario))
    }

    /// Lines for stderr: the figures, checks and notes.
    pub fn headline_lines(&self) -> Vec<String> {
        let mut lines = vec![format!("== {} ==", self.scenario)];
        lines.extend(
            self.figures
                .iter()
                .map(|(k, v)| format!("  {k}: {}", fmt_figure(*v))),
        );
        lines.extend(self.checks.iter().map(|c| {
            format!(
                "  check {}: {} ({})",
                c.name,
                if c.passed { "ok" } else { "MISSED" },
                c.detail
            )
        }));
        lines.extend(self.notes.iter().map(|n| format!("  note: {n}")));
        lines
    }
}

fn fmt_figure(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

/// Runs scenario `name` and writes `OUT/NAME.json`.
pub fn run_and_write(name: &str, opts: &BenchOptions) -> Result<BenchResult, Error> {
    let result = run_scenario(name, opts)?;
    std::fs::create_dir_all(&opts.out_dir)
        .map_err(|e| Error::new(format!("cannot create {}: {e}", opts.out_dir.display())))?;
    let path = opts.out_dir.join(format!("{name}.json"));
    let json = serde_json::to_string_pretty(&result).expect("a result serialises");
    std::fs::write(&path, json + "\n")
        .map_err(|e| Error::new(format!("cannot write {}: {e}", path.display())))?;
    Ok(result)
}

/// Runs scenario `name` on a runtime pinned to `opts.cores`.
pub fn run_scenario(name: &str, opts: &BenchOptions) -> Result<BenchResult, Error> {
    let scenario = *SCENARIOS.iter().find(|s| s.name == name).ok_or_else(|| {
        let names: Vec<&str> = SCENARIOS.iter().map(|s| s.name).collect();
        Error::new(format!(
            "no scenario {name:?}; scenarios: {}",
            names.join(", ")
        ))
    })?;
    let rt = runtime(opts.cores.as_deref())?;
    let opts = opts.clone();
    rt.block_on(
        async move { tokio::spawn(async move { scenario_async(scenario, &opts).await }).await },
    )
    .map_err(|e| Error::new(format!("scenario {name} panicked: {e}")))?
}

async fn scenario_async(scenario: Scenario, opts: &BenchOptions) -> Result<BenchResult, Error> {
    let probe =
        spate_client::Client::connect_with(opts.server.clone(), client_config(opts.tls.as_ref()))
            .await
            .map_err(|e| crate::runner::connect_failed(&opts.server, &e))?;
    let engine_cores = probe.server_info().cores.len().max(1);
    drop(probe);
    let mut b = Bench {
        opts,
        engine_cores,
        result: BenchResult {
            scenario: scenario.name.into(),
            description: scenario.description.into(),
            command: opts.command.clone(),
            started_unix_s: unix_now_s(),
            git_sha: git_sha(),
            engine_cores,
            quick: opts.quick,
            figures: BTreeMap::new(),
            checks: Vec::new(),
            notes: Vec::new(),
            runs: Vec::new(),
        },
    };
    match scenario.name {
        "max-1k" => b.max(1024).await?,
        "max-100b" => b.max(100).await?,
        "latency-half" => b.latency_half().await?,
        "shard-limit" => b.shard_limit().await?,
        "shard-density" => b.shard_density(1000).await?,
        "shard-density-small" => b.shard_density(100).await?,
        "many-shards" => b.many_shards().await?,
        "peer-shape" => b.peer_shape().await?,
        "producer-path" => b.producer_path().await?,
        "fan-out" => b.fan_out().await?,
        "catch-up" => b.catch_up().await?,
        "group-failover" => b.group_failover().await?,
        "control-churn" => b.control_churn().await?,
        "reshard" => b.reshard().await?,
        "on-demand" => b.on_demand().await?,
        other => unreachable!("scenario {other} is listed but not implemented"),
    }
    Ok(b.result)
}

struct Bench<'a> {
    opts: &'a BenchOptions,
    engine_cores: usize,
    result: BenchResult,
}

static STREAM_COUNTER: AtomicU32 = AtomicU32::new(0);

const MIB: f64 = 1024.0 * 1024.0;

impl Bench<'_> {
    /// A run on a fresh stream of `shards` shards, deleted afterwards.
    fn config(&self, shards: u32, limits: LimitsArg) -> RunConfig {
        let stream = format!(
            "bench-{}-{}-{}-{}",
            self.result.scenario,
            std::process::id(),
            unix_now_s(),
            STREAM_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        RunConfig {
            create_shards: Some(shards),
            limits,
            delete_after: true,
            cores: self.opts.cores.clone(),
            engine_pid: self.opts.engine_pid,
            progress: self.opts.progress,
            // Quick runs measure nothing; spinning would only slow a shared machine.
            spin_us: if self.opts.quick { 0 } else { 1000 },
            tls: self.opts.tls.clone(),
            encryption: self.opts.encryption,
            ..RunConfig::new(self.opts.server.clone(), stream)
        }
    }

    /// Measured seconds: the scenario's, the override, or half a second when quick.
    fn duration(&self, normal: f64) -> f64 {
        if self.opts.quick {
            0.5
        } else {
            self.opts.duration_s.unwrap_or(normal)
        }
    }

    fn warmup(&self, normal: f64) -> f64 {
        if self.opts.quick {
            0.0
        } else {
            normal
        }
    }

    async fn run(&mut self, cfg: RunConfig) -> Result<Report, Error> {
        if self.opts.progress {
            eprintln!("-- {}", cfg.command_line());
        }
        let r = run(&cfg).await?;
        eprintln!("{}", r.summary_line());
        self.result.runs.push(r.clone());
        Ok(r)
    }

    fn figure(&mut self, name: &str, v: f64) {
        self.result.figures.insert(name.into(), v);
    }

    fn check(&mut self, name: &str, passed: bool, detail: String) {
        self.result.checks.push(Check {
            name: name.into(),
            passed,
            detail,
        });
    }

    fn note(&mut self, note: String) {
        self.result.notes.push(note);
    }

    fn throughput_figures(&mut self, r: &Report) {
        let per_core = r.acked_records_per_s / self.engine_cores as f64;
        self.figure("acked_records_per_s", r.acked_records_per_s);
        self.figure("acked_mib_per_s", r.acked_mib_per_s);
        self.figure("acked_bytes_per_s", r.bytes_acked as f64 / r.duration_s);
        self.figure("acked_records_per_s_per_engine_core", per_core);
        self.figure("loadgen_cores_used", r.loadgen_cpu.cores_used);
        if let Some(c) = &r.engine_cpu {
            self.figure("engine_cores_used", c.cores_used);
        }
    }

    /// The max-* runs: PutRecords-shaped calls of 2,000 records with each record generated
    /// straight into its shard's batch (`--api put-batches`: with one load-generator core,
    /// `put_records`' per-record key, buffer and routing work capped the figure at ~850 MiB/s
    /// while the engine's core idled), 16 connections (with 4, each waiting for its call's
    /// round, neither core was busy: 370–460 MiB/s).
    fn closed_loop(&self, size: usize) -> RunConfig {
        let shards = 4 * self.engine_cores as u32;
        RunConfig {
            // Enough bytes in flight for the engine to fill its rounds. A call carries at
            // most 500 records per shard (a batch's limit), so with 100 B records 16
            // producers had only 3.2 MB in flight and bound `max-100b` (1.50 M records/s,
            // neither core saturated; 64 producers: 1.75 M, the disk's durable bandwidth).
            producers: (16 * 1024 / size.max(1)).clamp(16, 64),
            rate: 0.0,
            api: Api::PutBatches,
            call_records: 2000,
            size: SizeSpec::fixed(size),
            keys: 10_000,
            duration_s: self.duration(15.0),
            warmup_s: self.warmup(3.0),
            ..self.config(shards, LimitsArg::Off)
        }
    }

    /// `max-1k` / `max-100b`.
    async fn max(&mut self, size: usize) -> Result<(), Error> {
        // Two calls per producer built at the start and sent again and again: generating
        // every record held the load generator's core near 100 % at `max-100b` (4.1–5.2 M
        // records/s, where prebuilt calls reached 6.8 M) and at 92 % at `max-1k`, which
        // then measured the load generator (BENCHMARKS.md, session o).
        let r = self
            .run(RunConfig {
                prebuilt_calls: 2,
                ..self.closed_loop(size)
            })
            .await?;
        self.throughput_figures(&r);
        self.bottleneck_note(&r);
        Ok(())
    }

    /// Says which core ran out, from how busy every CPU was (kernel work and interrupts
    /// included, which neither process's own CPU time shows).
    fn bottleneck_note(&mut self, r: &Report) {
        self.bottleneck_note_of("", r);
    }

    /// As `bottleneck_note`, the note starting with `what` (which run of several).
    fn bottleneck_note_of(&mut self, what: &str, r: &Report) {
        let Some(mine) = self.opts.cores.clone() else {
            return;
        };
        let mean = |f: &dyn Fn(&crate::stats::CoreUse) -> f64, loadgen: bool| {
            let v: Vec<f64> = r
                .cpus
                .iter()
                .filter(|c| mine.contains(&c.cpu) == loadgen)
                .map(f)
                .collect();
            (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
        };
        let (Some(lg), Some(en)) = (mean(&|c| c.busy, true), mean(&|c| c.busy, false)) else {
            return;
        };
        let iowait = mean(&|c| c.iowait, false).unwrap_or(0.0);
        let verdict = if lg > 0.9 && en < 0.9 {
            "the load generator's core(s) were the bottleneck"
        } else if en > 0.9 {
            "the engine's core(s) were saturated"
        } else {
            "no core was saturated"
        };
        self.note(format!(
            "{what}{verdict}: load generator's CPU(s) {:.0} % busy (the process itself {:.2} cores), \
             the other CPU(s) {:.0} % busy and {:.0} % waiting for I/O{}",
            lg * 100.0,
            r.loadgen_cpu.cores_used,
            en * 100.0,
            iowait * 100.0,
            r.engine_cpu.map_or(String::new(), |c| format!(
                " (the engine itself {:.2} cores)",
                c.cores_used
            ))
        ));
    }

    /// max-1k's acknowledged records/s: from a result file, or measured now.
    async fn max_1k_rate(&mut self) -> Result<f64, Error> {
        let path = self
            .opts
            .max_report
            .clone()
            .unwrap_or_else(|| self.opts.out_dir.join("max-1k.json"));
        if let Some(rate) = read_max_rate(&path)? {
            self.note(format!(
                "max-1k rate {rate:.0} records/s from {}",
                path.display()
            ));
            return Ok(rate);
        }
        self.note("max-1k measured first (no max-1k.json)".into());
        let r = self.run(self.closed_loop(1024)).await?;
        Ok(r.acked_records_per_s)
    }

    async fn latency_half(&mut self) -> Result<(), Error> {
        let max = self.max_1k_rate().await?;
        if max.is_nan() || max <= 0.0 {
            return Err(Error::new(
                "max-1k acknowledged nothing; no half rate to offer",
            ));
        }
        let rate = (max / 2.0).round().max(1.0);
        let cfg = RunConfig {
            rate,
            duration_s: self.duration(20.0),
            ..self.closed_loop(1024)
        };
        let r = self.run(cfg).await?;
        self.figure("offered_records_per_s", rate);
        self.figure("acked_records_per_s", r.acked_records_per_s);
        let a = r.ack_latency_us;
        for (name, v) in [
            ("ack_p50_us", a.p50),
            ("ack_p90_us", a.p90),
            ("ack_p99_us", a.p99),
            ("ack_p999_us", a.p999),
            ("ack_p9999_us", a.p9999),
            ("ack_max_us", a.max),
        ] {
            self.figure(name, v as f64);
        }
        self.figure("records_unsent", r.records_unsent as f64);
        // A handful of records due in the last instant are normal; more is a shortfall.
        if r.records_unsent as f64 > 0.001 * r.records_due.unwrap_or(0) as f64 {
            self.note(format!(
                "{} records were due but never sent: the offered rate was not reached",
                r.records_unsent
            ));
        }
        self.bottleneck_note(&r);
        Ok(())
    }

    async fn shard_limit(&mut self) -> Result<(), Error> {
        const LIMIT_RECORDS: f64 = 1000.0;
        const LIMIT_MIB: f64 = 1.0;
        let base = |b: &Self| RunConfig {
            producers: 1,
            keys: 16,
            key_mode: KeyMode::PerShard,
            duration_s: b.duration(10.0),
            // The token bucket starts with one second of burst; the warm-up spends it.
            warmup_s: b.warmup(2.0),
            verify: true,
            ..b.config(1, LimitsArg::Kinesis)
        };
        // Records: 100 B records at 2,000/s (2x 1,000 records/s; bytes far below 1 MiB/s).
        let records = RunConfig {
            rate: 2.0 * LIMIT_RECORDS,
            size: SizeSpec::fixed(100),
            ..base(self)
        };
        let r = self.run(records).await?;
        let got = r.acked_records_per_s;
        self.figure("records_run_acked_records_per_s", got);
        self.figure("records_run_throttled", r.records_throttled as f64);
        self.check(
            "records: accepted rate within 10 % of 1,000 records/s",
            (got / LIMIT_RECORDS - 1.0).abs() <= 0.10,
            format!("{got:.0} records/s accepted"),
        );
        self.limit_checks("records", &r);
        // Bytes: 10 KiB records at 200/s (2x 1 MiB/s; records far below 1,000/s).
        let bytes = RunConfig {
            rate: 200.0,
            size: SizeSpec::fixed(10 << 10),
            ..base(self)
        };
        let r = self.run(bytes).await?;
        let got = r.acked_mib_per_s;
        self.figure("bytes_run_acked_mib_per_s", got);
        self.figure("bytes_run_throttled", r.records_throttled as f64);
        self.check(
            "bytes: accepted rate within 10 % of 1 MiB/s",
            (got / LIMIT_MIB - 1.0).abs() <= 0.10,
            format!("{got:.3} MiB/s accepted (key + data bytes)"),
        );
        self.limit_checks("bytes", &r);
        Ok(())
    }

    fn limit_checks(&mut self, what: &str, r: &Report) {
        let sent = r.records_sent;
        self.check(
            &format!("{what}: every record sent was acknowledged or throttled"),
            r.records_acked + r.records_throttled == sent && r.errors == 0,
            format!(
                "sent {sent}, acked {}, throttled {}, errors {}",
                r.records_acked, r.records_throttled, r.errors
            ),
        );
        if let Some(v) = &r.verify {
            self.check(
                &format!("{what}: nothing lost, duplicated or reordered"),
                v.passed(),
                format!(
                    "lost {}, duplicated {}, reordered {}, corrupt {}",
                    v.lost, v.duplicated, v.reordered, v.corrupt
                ),
            );
        }
    }

    /// `shard-density` (1,000 B records) and `shard-density-small` (100 B).
    async fn shard_density(&mut self, size: usize) -> Result<(), Error> {
        const P99_US_MAX: u64 = 10_000;
        const PER_SHARD_RECORDS: f64 = 1000.0;
        let e = self.engine_cores as u32;
        let steps: Vec<u32> = if self.opts.quick {
            vec![2, 4]
        } else {
            [
                8, 16, 32, 64, 128, 256, 512, 768, 1024, 1536, 2048, 3072, 4096,
            ]
            .iter()
            .map(|n| n * e)
            .collect()
        };
        let mut best: Option<u32> = None;
        let mut stop = String::from("every step passed");
        for &n in &steps {
            let cfg = RunConfig {
                producers: 4,
                rate: PER_SHARD_RECORDS * f64::from(n),
                // Each record generated straight into its shard's batch, as in the max-*
                // runs: the engine gets the same PutBatches requests as from `put_records`
                // (the records due, grouped into one batch per shard, one call in flight
                // per producer), but `put_records`' per-record key, routing and buffer work
                // kept the load generator's core 0.89-0.92 busy at 1,024 shards of 100 B
                // records, against 0.54-0.55 this way (BENCHMARKS.md, session n).
                api: Api::PutBatches,
                call_records: 2000,
                // 1,000 B of data plus a ~15 B key: 1,000 records/s is ~0.97 MiB/s, so a
                // shard is at both of its write limits at once (100 B: the record limit).
                size: SizeSpec::fixed(size),
                keys: 4 * n,
                key_mode: KeyMode::PerShard,
                duration_s: self.duration(10.0),
                warmup_s: self.warmup(2.0),
                ..self.config(n, LimitsArg::Kinesis)
            };
            let r = self.run(cfg).await?;
            let due = r.records_due.unwrap_or(0).max(1) as f64;
            let p99 = r.ack_latency_us.p99;
            let unsent = r.records_unsent as f64 / due;
            let acked = r.records_acked as f64 / due;
            let verdict = if unsent > 0.01 {
                Some(format!(
                    "at {n} shards the load generator could not keep up ({:.1} % of records never sent, \
                     loadgen CPU {:.2} cores): the largest N is a lower bound",
                    unsent * 100.0,
                    r.loadgen_cpu.cores_used
                ))
            } else if p99 > P99_US_MAX {
                Some(format!("at {n} shards ack p99 was {p99} µs > 10 ms"))
            } else if acked < 0.95 || r.errors > 0 {
                Some(format!(
                    "at {n} shards only {:.1} % of the offered records were acknowledged \
                     ({} throttled, {} errors)",
                    acked * 100.0,
                    r.records_throttled,
                    r.errors
                ))
            } else {
                None
            };
            match verdict {
                None => best = Some(n),
                Some(why) => {
                    stop = why;
                    break;
                }
            }
        }
        let best_n = best.unwrap_or(0);
        self.figure("largest_ok_shards", f64::from(best_n));
        self.figure("shards_per_engine_core", f64::from(best_n) / f64::from(e));
        self.note(stop);
        Ok(())
    }

    /// One closed-loop producer with one call in flight makes a round per call, so the
    /// engine's round rate caps it: see [`round_rate_hint`].
    fn round_rate_note(&mut self, calls_per_s: f64) {
        let limits = self.machine_limits().unwrap_or_default();
        if let Some(note) = round_rate_hint(calls_per_s, &limits) {
            self.note(note);
        }
    }

    /// The machine's limits measured in the same session (`machine-limits.json` beside the
    /// results), if there.
    fn machine_limits(&self) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(self.opts.out_dir.join("machine-limits.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn machine_limit(&self, field: &str) -> Option<f64> {
        self.machine_limits()?[field].as_f64()
    }

    /// The engine's CPU time per record it acknowledged while that time was measured (the
    /// window's acknowledgements, whatever their records' due time: under an overload the
    /// engine still acknowledges the backlog).
    fn cpu_per_record_ns(r: &Report) -> Option<f64> {
        let c = r.engine_cpu.as_ref()?;
        let acks = if r.acks_in_window_per_s > 0.0 {
            r.acks_in_window_per_s
        } else {
            r.acked_records_per_s
        };
        (acks > 0.0).then(|| c.cores_used * 1e9 / acks)
    }

    async fn many_shards(&mut self) -> Result<(), Error> {
        let (shards, per_shard) = if self.opts.quick {
            (200, 20.0)
        } else {
            (10_000, 100.0)
        };
        let total = f64::from(shards) * per_shard;
        // Enough calls in flight that the load generator's window does not bind (as in
        // `max-100b`): with 4 producers, each one call of at most 2,000 records in flight,
        // 8,000 records were outstanding at a time, and a call that takes ~30 ms at 10,000
        // shards (a round of 2,000 single-record batches waiting for the one before it)
        // capped the run near 250,000 records/s with neither core saturated; 16 producers
        // gave 406,000-577,000, 64 gave 432,000-784,000 at less engine CPU (BENCHMARKS.md).
        // Both runs use the same number, so CPU per record compares like with like.
        const PRODUCERS: usize = 64;
        let base = |b: &Self, n: u32, limits: LimitsArg| RunConfig {
            producers: PRODUCERS,
            rate: total,
            api: Api::PutRecords,
            call_records: 2000,
            size: SizeSpec::fixed(100),
            // A key belongs to one producer: at least one key each.
            keys: n.max(4 * n.min(2500)).max(PRODUCERS as u32),
            key_mode: KeyMode::PerShard,
            duration_s: b.duration(15.0),
            warmup_s: b.warmup(5.0),
            ..b.config(n, limits)
        };
        let many = self.run(base(self, shards, LimitsArg::Kinesis)).await?;
        // The same total rate over 10 shards (each above Kinesis' per-shard limit: off).
        let few = self.run(base(self, 10, LimitsArg::Off)).await?;
        self.figure("many_ack_p99_us", many.ack_latency_us.p99 as f64);
        self.figure("many_acked_records_per_s", many.acked_records_per_s);
        self.figure("many_acks_in_window_per_s", many.acks_in_window_per_s);
        self.figure("few_ack_p99_us", few.ack_latency_us.p99 as f64);
        self.figure("few_acked_records_per_s", few.acked_records_per_s);
        self.figure("few_acks_in_window_per_s", few.acks_in_window_per_s);
        let unsent = unsent_share(&many);
        self.check(
            &format!("{shards} shards: ack p99 <= 10 ms"),
            many.ack_latency_us.p99 <= 10_000 && unsent <= 0.01,
            format!(
                "p99 {} µs, {:.0} records/s acknowledged of {total:.0} offered ({:.0} \
                 acknowledgements/s in the window, of records due earlier included)",
                many.ack_latency_us.p99, many.acked_records_per_s, many.acks_in_window_per_s
            ),
        );
        if let (Some(m), Some(f)) = (
            Self::cpu_per_record_ns(&many),
            Self::cpu_per_record_ns(&few),
        ) {
            self.figure("many_engine_cpu_ns_per_record", m);
            self.figure("few_engine_cpu_ns_per_record", f);
            self.check(
                "engine CPU per record within 20 % of 10 shards at the same rate",
                m <= f * 1.2,
                format!(
                    "{m:.0} ns vs {f:.0} ns per record ({:+.0} %)",
                    (m / f - 1.0) * 100.0
                ),
            );
        }
        if unsent > 0.01 {
            let p = &many.params;
            let seconds = (p.warmup_s + p.duration_s).max(1e-9);
            let whole_due = (p.rate * seconds).max(1.0);
            let sent = (whole_due - many.records_unsent as f64).max(0.0);
            self.note(format!(
                "the producers sent only {:.1} % of the records due over the run ({:.0} records/s \
                 of {:.0} offered; load generator CPU {:.2} cores, engine {}): the offered rate \
                 was not reached, the calls in flight waiting on acknowledgements",
                sent / whole_due * 100.0,
                sent / seconds,
                p.rate,
                many.loadgen_cpu.cores_used,
                many.engine_cpu
                    .as_ref()
                    .map_or("not measured".into(), |c| format!(
                        "{:.2} cores",
                        c.cores_used
                    )),
            ));
        }
        self.bottleneck_note(&many);
        Ok(())
    }

    async fn peer_shape(&mut self) -> Result<(), Error> {
        // Records per call: 100 of 1,000 B, the peer's batch.
        const PEER_CALL_RECORDS: usize = 100;
        let fio = self.machine_limit("fio_durable_write_1m_qd1_bytes_per_s");
        let fio_100k = self.machine_limit("fio_durable_write_100k_qd1_bytes_per_s");
        for producers in [1usize, 4] {
            let cfg = RunConfig {
                producers,
                rate: 0.0,
                api: Api::PutRecords,
                call_records: PEER_CALL_RECORDS,
                size: SizeSpec::fixed(1000),
                keys: producers as u32,
                key_mode: KeyMode::PerShard,
                duration_s: self.duration(15.0),
                warmup_s: self.warmup(3.0),
                ..self.config(producers as u32, LimitsArg::Off)
            };
            let r = self.run(cfg).await?;
            let bytes = r.bytes_acked as f64 / r.duration_s;
            self.figure(&format!("producers_{producers}_mb_per_s"), bytes / 1e6);
            if let Some(fio) = fio {
                self.figure(
                    &format!("producers_{producers}_ratio_to_fio_durable"),
                    bytes / fio,
                );
                self.check(
                    &format!("{producers} producer(s): >= 80 % of fio durable"),
                    bytes >= 0.8 * fio,
                    format!(
                        "{:.1} MB/s vs fio durable {:.1} MB/s",
                        bytes / 1e6,
                        fio / 1e6
                    ),
                );
            }
            if let (1, Some(f)) = (producers, fio_100k) {
                // One producer has one 100 KB call in flight: each call is a write and a
                // flush of its own, whatever the store.
                self.figure("producers_1_ratio_to_fio_durable_100k", bytes / f);
                self.note(format!(
                    "1 producer: {:.1} MB/s is {:.0} % of fio's own 100 KiB write + fdatasync \
                     at queue depth 1 ({:.1} MB/s), the most a store that acknowledges after a \
                     flush can do for one call in flight of that size",
                    bytes / 1e6,
                    100.0 * bytes / f,
                    f / 1e6
                ));
            }
            if producers == 1 {
                self.round_rate_note(r.acked_records_per_s / PEER_CALL_RECORDS as f64);
            }
            self.bottleneck_note(&r);
        }
        if fio.is_none() {
            self.note("no machine-limits.json beside the results: no ratio to fio durable".into());
        }
        Ok(())
    }

    async fn producer_path(&mut self) -> Result<(), Error> {
        let base = |b: &Self| RunConfig {
            producers: 4,
            rate: 0.0,
            size: SizeSpec::fixed(1024),
            keys: 10_000,
            duration_s: b.duration(15.0),
            warmup_s: b.warmup(3.0),
            ..b.config(8, LimitsArg::Off)
        };
        let put = self
            .run(RunConfig {
                api: Api::PutRecords,
                call_records: 2000,
                ..base(self)
            })
            .await?;
        let producer = self
            .run(RunConfig {
                api: Api::Producer,
                ..base(self)
            })
            .await?;
        // The same producer settling each record by a callback (`send_with`): no handle
        // for the load generator to await, so less of its core per record.
        let callback = self
            .run(RunConfig {
                api: Api::ProducerCallback,
                ..base(self)
            })
            .await?;
        let half = (producer.acked_records_per_s / 2.0).round().max(1.0);
        let at_half = self
            .run(RunConfig {
                api: Api::Producer,
                rate: half,
                ..base(self)
            })
            .await?;
        self.figure("put_records_acked_records_per_s", put.acked_records_per_s);
        self.figure("producer_acked_records_per_s", producer.acked_records_per_s);
        self.figure(
            "producer_callback_acked_records_per_s",
            callback.acked_records_per_s,
        );
        self.figure("producer_half_rate", half);
        self.figure(
            "producer_half_ack_p99_us",
            at_half.ack_latency_us.p99 as f64,
        );
        self.figure(
            "producer_half_ack_p999_us",
            at_half.ack_latency_us.p999 as f64,
        );
        let ratio = producer.acked_records_per_s / put.acked_records_per_s.max(1.0);
        self.check(
            "Producer::send >= 80 % of put_records",
            ratio >= 0.8,
            format!("{:.0} % ", ratio * 100.0),
        );
        self.check(
            "Producer::send at half its maximum: ack p99 <= 10 ms",
            at_half.ack_latency_us.p99 <= 10_000,
            format!("p99 {} µs", at_half.ack_latency_us.p99),
        );
        self.note(format!(
            "Producer::send_with (callbacks): {:.0} records/s, {:.0} % of put_records",
            callback.acked_records_per_s,
            100.0 * callback.acked_records_per_s / put.acked_records_per_s.max(1.0)
        ));
        self.bottleneck_note_of("Producer::send: ", &producer);
        self.bottleneck_note_of("Producer::send_with: ", &callback);
        Ok(())
    }

    /// Blocking filesystem calls (directory syncs, renames, removals, catalog saves) run off
    /// the engine cores' executors: a stream's acknowledgements must not slow down while
    /// another client creates and deletes streams on the same cores.
    async fn control_churn(&mut self) -> Result<(), Error> {
        let base = || RunConfig {
            producers: 2,
            rate: if self.opts.quick { 1000.0 } else { 5000.0 },
            size: SizeSpec::fixed(1024),
            keys: 1000,
            duration_s: self.duration(10.0),
            warmup_s: self.warmup(2.0),
            ..self.config(4 * self.engine_cores as u32, LimitsArg::Off)
        };
        let (first, second) = (base(), base());
        let alone = self.run(first).await?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ops = std::sync::Arc::new(AtomicU32::new(0));
        let churn = {
            let (server, stop, ops) = (self.opts.server.clone(), stop.clone(), ops.clone());
            let config = client_config(self.opts.tls.as_ref());
            let prefix = format!("churn-{}-{}", std::process::id(), unix_now_s());
            tokio::spawn(async move {
                let client = spate_client::Client::connect_with(server, config)
                    .await
                    .map_err(|e| Error::new(format!("churn: cannot connect: {e}")))?;
                let config = spate_client::StreamConfig::new(16);
                let mut n = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let name = format!("{prefix}-{n}");
                    client
                        .create_stream(&name, &config)
                        .await
                        .map_err(|e| Error::new(format!("churn: create {name}: {e}")))?;
                    client
                        .delete_stream(&name)
                        .await
                        .map_err(|e| Error::new(format!("churn: delete {name}: {e}")))?;
                    ops.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                }
                Ok::<(), Error>(())
            })
        };
        let during = self.run(second).await;
        stop.store(true, Ordering::Relaxed);
        let churned = churn
            .await
            .map_err(|e| Error::new(format!("churn task: {e}")))?;
        let during = during?;
        churned?;
        let pairs = ops.load(Ordering::Relaxed);
        let seconds = during.duration_s + during.params.warmup_s;
        self.figure("churn_create_delete_pairs", pairs as f64);
        self.figure("churn_pairs_per_s", pairs as f64 / seconds.max(1e-9));
        for (tag, r) in [("alone", &alone), ("churn", &during)] {
            let a = r.ack_latency_us;
            self.figure(&format!("{tag}_ack_p50_us"), a.p50 as f64);
            self.figure(&format!("{tag}_ack_p99_us"), a.p99 as f64);
            self.figure(&format!("{tag}_ack_p999_us"), a.p999 as f64);
            self.figure(&format!("{tag}_ack_max_us"), a.max as f64);
        }
        let (p_alone, p_churn) = (alone.ack_latency_us.p99, during.ack_latency_us.p99);
        self.check(
            "ack p99 with streams created and deleted alongside <= 2x alone (+1 ms)",
            pairs > 0 && p_churn <= 2 * p_alone + 1000,
            format!("{p_churn} µs vs {p_alone} µs alone; {pairs} create/delete pairs"),
        );
        Ok(())
    }

    /// Splits, merges and scales under steady open-loop load (issue 8's `reshard`). Run 1:
    /// a 4-shard stream; a split of shard 0 at 20 % of the measured window, the merge of
    /// its two children at 35 %, UpdateShardCount to 8 at 50 % and back to 4 at 75 %.
    /// Run 2: a fresh 4-shard stream scaled to 64 at 25 % and back to 4 at 62.5 %. Each
    /// change is timed (its call, until the new shards take writes); the ack latency of the
    /// records due in its change window (0.1 s before it to 0.9 s after its answer) is
    /// compared with the rest of the same run; `--verify` reads every shard, closed
    /// parents included, in id order (lineage order).
    async fn reshard(&mut self) -> Result<(), Error> {
        const SPLIT_MERGE_MS_MAX: f64 = 100.0;
        const SCALE_MS_MAX: f64 = 1000.0;
        let quick = self.opts.quick;
        // Quick runs only check that the scenario works; 16 shards are enough for that.
        let big = if quick { 16 } else { 64 };
        let rate = if quick { 1000.0 } else { 5000.0 };
        let base = |b: &Self, seconds: f64| RunConfig {
            producers: 2,
            rate,
            api: Api::PutRecords,
            call_records: 2000,
            size: SizeSpec::fixed(1024),
            keys: 1000,
            duration_s: b.duration(seconds),
            warmup_s: b.warmup(2.0),
            verify: true,
            ..b.config(4, LimitsArg::Off)
        };
        let steps = |cfg: &RunConfig, plan: &[(f64, ReshardOp)]| -> Vec<ReshardStep> {
            plan.iter()
                .map(|&(fraction, op)| ReshardStep {
                    at_s: cfg.warmup_s + fraction * cfg.duration_s,
                    op,
                })
                .collect()
        };
        let mut first = base(self, 16.0);
        first.reshards = steps(
            &first,
            &[
                (0.2, ReshardOp::Split { shard: 0 }),
                (0.35, ReshardOp::Merge { shards: None }),
                (0.5, ReshardOp::Count { target: 8 }),
                (0.75, ReshardOp::Count { target: 4 }),
            ],
        );
        let mut second = base(self, 8.0);
        second.reshards = steps(
            &second,
            &[
                (0.25, ReshardOp::Count { target: big }),
                (0.625, ReshardOp::Count { target: 4 }),
            ],
        );
        let one = self.run(first).await?;
        let two = self.run(second).await?;

        self.figure("offered_records_per_s", rate);
        let steady = one.ack_latency_steady_us.unwrap_or_default();
        self.figure("steady_ack_p50_us", steady.p50 as f64);
        self.figure("steady_ack_p99_us", steady.p99 as f64);
        self.figure("steady_ack_max_us", steady.max as f64);
        let names = [
            "split".to_string(),
            "merge".into(),
            "double_4_to_8".into(),
            "halve_8_to_4".into(),
            format!("scale_4_to_{big}"),
            format!("scale_{big}_to_4"),
        ];
        let all: Vec<&ReshardReport> = one.reshards.iter().chain(&two.reshards).collect();
        for (name, r) in names.iter().zip(&all) {
            self.figure(&format!("{name}_ms"), r.took_ms);
            let a = r.ack_latency_us;
            self.figure(&format!("{name}_window_ack_p50_us"), a.p50 as f64);
            self.figure(&format!("{name}_window_ack_p99_us"), a.p99 as f64);
            self.figure(&format!("{name}_window_ack_max_us"), a.max as f64);
            self.figure(&format!("{name}_window_records"), a.count as f64);
        }
        let steady_two = two.ack_latency_steady_us.unwrap_or_default();
        self.figure("scale_run_steady_ack_p99_us", steady_two.p99 as f64);

        // Nothing lost, duplicated or reordered across the lineage, in both runs.
        let mut total = crate::verify::VerifyReport::default();
        let mut verified = true;
        for r in [&one, &two] {
            match &r.verify {
                Some(v) => {
                    total.lost += v.lost;
                    total.duplicated += v.duplicated;
                    total.reordered += v.reordered;
                    total.corrupt += v.corrupt;
                    total.acked += v.acked;
                    total.records_read += v.records_read;
                }
                None => verified = false,
            }
        }
        self.figure("lost", total.lost as f64);
        self.figure("duplicated", total.duplicated as f64);
        self.figure("reordered", total.reordered as f64);
        self.figure("records_read_back", total.records_read as f64);
        self.check(
            "nothing lost, duplicated or reordered across the lineage (both runs)",
            verified && total.passed(),
            format!(
                "lost {}, duplicated {}, reordered {}, corrupt {}; {} records read back, {} acknowledged",
                total.lost,
                total.duplicated,
                total.reordered,
                total.corrupt,
                total.records_read,
                total.acked
            ),
        );
        let step_ok = |i: usize| all.get(i).copied().filter(|r| r.error.is_none());
        for (i, what) in [(2, "doubling 4 -> 8"), (3, "halving 8 -> 4")] {
            let r = step_ok(i);
            let p99 = r.map_or(0, |r| r.ack_latency_us.p99);
            self.check(
                &format!("ack p99 while {what} <= 2x steady p99"),
                r.is_some() && steady.count > 0 && p99 <= 2 * steady.p99,
                match r {
                    Some(r) => format!(
                        "{p99} µs ({} records due from {:.2} s to {:.2} s) vs {} µs steady ({} records)",
                        r.ack_latency_us.count, r.window_s[0], r.window_s[1], steady.p99, steady.count
                    ),
                    None => "the change did not happen".into(),
                },
            );
        }
        for (i, what, max_ms) in [
            (0, "a split".to_string(), SPLIT_MERGE_MS_MAX),
            (1, "a merge".to_string(), SPLIT_MERGE_MS_MAX),
            (4, format!("4 -> {big} shards"), SCALE_MS_MAX),
        ] {
            let r = step_ok(i);
            self.check(
                &format!("{what} takes effect in <= {max_ms:.0} ms"),
                r.is_some_and(|r| r.took_ms <= max_ms),
                match r {
                    Some(r) => format!(
                        "{:.1} ms; {} open shards after",
                        r.took_ms,
                        r.open_shards_after.map_or("?".into(), |n| n.to_string())
                    ),
                    None => "the change did not happen".into(),
                },
            );
        }
        if let Some((r, e)) = all.iter().find_map(|r| r.error.as_ref().map(|e| (r, e))) {
            self.note(format!("reshard step {} failed: {e}", r.step));
        }
        self.note(
            "a change's time is its call (SplitShard, MergeShards, UpdateShardCount) from asking \
             to the answer, by when the closed shards refuse writes and the new ones take them; \
             its ack latency covers the records due from 0.1 s before the call until 0.9 s after \
             the answer, the steady state every other record of the same run's measured window"
                .into(),
        );
        self.bottleneck_note(&one);
        Ok(())
    }

    /// Issue 8's on-demand benchmark: one open-loop run on a stream created with Kinesis
    /// limits and 4 shards and switched to on-demand, with `--timeline` (a sample a second:
    /// records due, sent, acknowledged, throttled, and a description's open shards) and
    /// `--verify`. 1 KiB records (plus ~8 B keys) at 1,024/s (1 MiB/s) for 10 s, then
    /// 16,384/s (16 MiB/s) for 90 s (`--duration` overrides), then 1,024/s for 60 s.
    /// `--retries 0`: a throttled record is counted and not sent again. The time until
    /// throttling stops runs from the step up to the last throttled answer after it;
    /// throttling counts as stopped only when the high phase then ran at least 5 s without
    /// any. Scale-in: the engine merges only after `on_demand_quiet_ms` below 25 % of
    /// capacity (15 minutes by default), so it shows within the last phase only when the
    /// server runs with a shorter quiet period (`on_demand_quiet_ms = 10000` in a file
    /// given to `spate serve --config`; `run-all.sh` does that for this scenario).
    async fn on_demand(&mut self) -> Result<(), Error> {
        const GOAL_S: f64 = 60.0;
        const CLEAN_S: f64 = 5.0;
        const SIZE: usize = 1024;
        let quick = self.opts.quick;
        // Records/s: 1 MiB/s and 16 MiB/s of 1 KiB data.
        let (low, high) = if quick {
            (1000.0, 8000.0)
        } else {
            (1024.0, 16_384.0)
        };
        let (before_s, high_s, after_s) = if quick {
            (0.5, 1.0, 0.5)
        } else {
            (10.0, self.opts.duration_s.unwrap_or(90.0), 60.0)
        };
        let (step_up, step_down) = (before_s, before_s + high_s);
        let end_s = step_down + after_s;
        let cfg = RunConfig {
            producers: 2,
            rate: low,
            rate_steps: vec![
                RateStep {
                    at_s: step_up,
                    rate: high,
                },
                RateStep {
                    at_s: step_down,
                    rate: low,
                },
            ],
            api: Api::PutRecords,
            call_records: 2000,
            size: SizeSpec::fixed(SIZE),
            keys: 10_000,
            duration_s: end_s,
            warmup_s: 0.0,
            retries: 0,
            verify: true,
            on_demand: true,
            timeline: true,
            ..self.config(4, LimitsArg::Kinesis)
        };
        let r = self.run(cfg).await?;
        let tl = &r.timeline;
        let record_bytes = if r.records_acked > 0 {
            r.bytes_acked as f64 / r.records_acked as f64
        } else {
            SIZE as f64
        };
        self.figure("offered_low_records_per_s", low);
        self.figure("offered_high_records_per_s", high);
        self.figure("offered_low_mib_per_s", low * record_bytes / MIB);
        self.figure("offered_high_mib_per_s", high * record_bytes / MIB);
        self.figure("record_bytes_key_and_data", record_bytes);
        self.figure("step_up_at_s", step_up);
        self.figure("step_down_at_s", step_down);

        // Did the load generator offer the load? (Records due but never sent.)
        let due = r.records_due.unwrap_or(0).max(1) as f64;
        let unsent = r.records_unsent as f64 / due;
        let high_samples: Vec<&TimelineSecond> = tl
            .iter()
            .filter(|s| s.t_s > step_up && s.t_s - s.dt_s < step_down)
            .collect();
        let max_sent = high_samples
            .iter()
            .map(|s| s.sent as f64 / s.dt_s.max(1e-9))
            .fold(0.0, f64::max);
        self.figure("high_phase_max_sent_records_per_s", max_sent);
        self.figure("records_unsent", r.records_unsent as f64);
        self.check(
            "the load generator offered the load (<= 0.1 % of the records due left unsent)",
            unsent <= 0.001,
            format!(
                "{} of {} records due never sent; at most {max_sent:.0} records/s sent in a second of the high phase",
                r.records_unsent,
                r.records_due.unwrap_or(0)
            ),
        );

        // Scale-out: the last throttled answer after the step up, within the high phase.
        let before_step: u64 = tl
            .iter()
            .filter(|s| s.t_s <= step_up)
            .map(|s| s.throttled)
            .sum();
        self.figure("throttled_before_step_up", before_step as f64);
        let last_throttle = tl
            .iter()
            .filter(|s| s.t_s > step_up && s.t_s - s.dt_s < step_down + 1.0)
            .filter_map(|s| s.last_throttled_s)
            .filter(|&t| t >= step_up && t < step_down + 1.0)
            .fold(None, |m: Option<f64>, t| Some(m.map_or(t, |m| m.max(t))));
        let stopped_at = last_throttle.unwrap_or(step_up);
        let stopped = stopped_at <= step_down - CLEAN_S;
        let took_s = stopped_at - step_up;
        // The seconds from the step up through the one holding the last throttled answer.
        let until_stop: Vec<&TimelineSecond> = high_samples
            .iter()
            .copied()
            .filter(|s| s.t_s - s.dt_s < stopped_at)
            .collect();
        let sum = |v: &[&TimelineSecond], f: &dyn Fn(&TimelineSecond) -> u64| -> u64 {
            v.iter().map(|s| f(s)).sum()
        };
        let throttled_until = sum(&until_stop, &|s| s.throttled);
        let due_until = sum(&until_stop, &|s| s.due.unwrap_or(0));
        let sent_until = sum(&until_stop, &|s| s.sent);
        let throttled_high = sum(&high_samples, &|s| s.throttled);
        let open_at = |t: f64| {
            tl.iter()
                .filter(|s| s.t_s <= t + 0.5)
                .filter_map(|s| s.open_shards)
                .next_back()
        };
        let start_open = r.shards as u32;
        let open_step_up = open_at(step_up).unwrap_or(start_open);
        let open_max = tl
            .iter()
            .filter_map(|s| s.open_shards)
            .max()
            .unwrap_or(start_open);
        let open_at_stop = tl
            .iter()
            .find(|s| s.t_s >= stopped_at)
            .and_then(|s| s.open_shards);
        // Decisions by what they did ("A -> B open shards"), else by when they were seen.
        let grew = |sc: &&crate::report::ScalingSeen| match scaling_shards(&sc.decision) {
            Some((a, b)) => b > a,
            None => sc.seen_s <= step_down,
        };
        let scale_outs: Vec<_> = r.scalings.iter().filter(grew).collect();
        if stopped {
            self.figure("throttling_stopped_after_s", took_s);
        }
        self.figure("last_throttled_answer_after_step_up_s", took_s);
        self.figure("throttled_records_until_stopped", throttled_until as f64);
        self.figure("offered_records_until_stopped", due_until as f64);
        self.figure("sent_records_until_stopped", sent_until as f64);
        self.figure(
            "throttled_share_until_stopped",
            throttled_until as f64 / (due_until.max(1)) as f64,
        );
        self.figure("throttled_records_high_phase", throttled_high as f64);
        // Throttling may pause and come back (a shard over its rate lives on its bucket's
        // burst for a while): how many seconds had any, and when the first one had none.
        let throttled_seconds = high_samples.iter().filter(|s| s.throttled > 0).count();
        self.figure(
            "seconds_with_throttling_after_step_up",
            throttled_seconds as f64,
        );
        if let Some(first) = high_samples.iter().position(|s| s.throttled > 0) {
            if let Some(free) = high_samples[first..].iter().find(|s| s.throttled == 0) {
                self.figure(
                    "first_throttle_free_second_after_step_up_s",
                    free.t_s - free.dt_s - step_up,
                );
            }
        }
        self.figure("open_shards_at_start", f64::from(start_open));
        self.figure("open_shards_at_step_up", f64::from(open_step_up));
        self.figure("open_shards_max", f64::from(open_max));
        if let Some(n) = open_at_stop.filter(|_| stopped) {
            self.figure("open_shards_when_throttling_stopped", f64::from(n));
            // Kinesis limits: 1,000 records/s and 1 MiB/s per shard, with one second of
            // burst in each bucket (a new shard starts full).
            let per_shard = high / f64::from(n.max(1));
            self.figure(
                "offered_records_per_s_per_open_shard_when_stopped",
                per_shard,
            );
            if per_shard > 1000.0 || per_shard * record_bytes > MIB {
                self.note(format!(
                    "when throttling stopped the {n} open shards were offered {per_shard:.0} \
                     records/s ({:.3} MiB/s) each on average, above a shard's 1,000 records/s \
                     or 1 MiB/s: the buckets' one second of burst (new shards start full) \
                     carried the excess until the next decisions; throttling did not come \
                     back before the load went down",
                    per_shard * record_bytes / MIB
                ));
            }
        }
        self.figure("scale_out_decisions", scale_outs.len() as f64);
        // What the stream took once throttling had stopped (the rest of the high phase).
        let settled: Vec<&TimelineSecond> = high_samples
            .iter()
            .copied()
            .filter(|s| s.t_s - s.dt_s >= stopped_at && s.t_s <= step_down)
            .collect();
        let settled_s: f64 = settled.iter().map(|s| s.dt_s).sum();
        if stopped && settled_s > 0.0 {
            let bytes = sum(&settled, &|s| s.acked_bytes) as f64;
            self.figure(
                "high_phase_acked_mib_per_s_after_stop",
                bytes / MIB / settled_s,
            );
        }
        self.check(
            &format!("throttling stops within {GOAL_S:.0} s of the step up"),
            stopped && took_s <= GOAL_S,
            if stopped {
                format!(
                    "last throttled answer {took_s:.1} s after the step up; {throttled_until} of \
                     {due_until} records offered until then throttled ({:.1} %); {} -> {} open \
                     shards by then in {} scaling decisions",
                    100.0 * throttled_until as f64 / due_until.max(1) as f64,
                    open_step_up,
                    open_at_stop.map_or("?".into(), |n| n.to_string()),
                    scale_outs.len()
                )
            } else {
                format!(
                    "still throttled {:.1} s after the step up, less than {CLEAN_S:.0} s before \
                     the load went down ({high_s:.0} s of high load): it did not stop; {} open \
                     shards at most",
                    took_s, open_max
                )
            },
        );

        // Scale-in after the step down.
        let open_down = open_at(step_down).unwrap_or(open_max);
        let after: Vec<&TimelineSecond> = tl.iter().filter(|s| s.t_s > step_down).collect();
        let first_lower = after
            .iter()
            .find(|s| s.open_shards.is_some_and(|n| n < open_down));
        let at_min = after.iter().find(|s| s.open_shards.is_some_and(|n| n <= 4));
        let open_end = tl
            .iter()
            .filter_map(|s| s.open_shards)
            .next_back()
            .unwrap_or(open_down);
        let scale_ins: Vec<_> = r.scalings.iter().filter(|sc| !grew(sc)).collect();
        self.figure("open_shards_at_step_down", f64::from(open_down));
        self.figure("open_shards_at_end", f64::from(open_end));
        self.figure("scale_in_decisions", scale_ins.len() as f64);
        self.figure("scale_in_wait_s", after_s);
        if let Some(s) = first_lower {
            self.figure("scale_in_first_after_s", s.t_s - step_down);
        }
        if let (Some(s), true) = (at_min, open_down > 4) {
            self.figure("scale_in_to_4_after_s", s.t_s - step_down);
        }
        if open_down <= 4 {
            self.note(format!(
                "scale-in: nothing to merge ({open_down} open shards when the load went down)"
            ));
        } else if first_lower.is_none() {
            self.note(format!(
                "scale-in: none within {after_s:.0} s of the load going down to {:.2} MiB/s \
                 ({open_down} open shards at the end as at the step down). The engine merges \
                 only after on_demand_quiet_ms below 25 % of capacity, 900000 ms (15 minutes) by \
                 default: run the server with a shorter quiet period (on_demand_quiet_ms = 10000 \
                 in a file given to `spate serve --config`) to see it within this wait",
                low * record_bytes / MIB
            ));
        } else {
            self.note(format!(
                "scale-in: {open_down} -> {open_end} open shards within {after_s:.0} s of the load \
                 going down ({} decisions; first seen {:.0} s after, {}); the server's \
                 on_demand_quiet_ms is below the 15-minute default, or it would not show",
                scale_ins.len(),
                first_lower.map_or(0.0, |s| s.t_s - step_down),
                match at_min {
                    Some(s) => format!("back at 4 shards {:.0} s after", s.t_s - step_down),
                    None => "not back at 4 shards by the end".into(),
                }
            ));
        }

        // Nothing lost, duplicated or reordered across the lineage.
        let v = r.verify.unwrap_or_default();
        self.figure("lost", v.lost as f64);
        self.figure("duplicated", v.duplicated as f64);
        self.figure("reordered", v.reordered as f64);
        self.figure("records_read_back", v.records_read as f64);
        self.check(
            "nothing lost, duplicated or reordered across the lineage",
            r.verify.as_ref().is_some_and(|v| v.passed()),
            format!(
                "lost {}, duplicated {}, reordered {}, corrupt {}; {} records read back, {} acknowledged",
                v.lost, v.duplicated, v.reordered, v.corrupt, v.records_read, v.acked
            ),
        );
        self.check(
            "every record sent was acknowledged or throttled",
            r.records_acked + r.records_throttled == r.records_sent && r.errors == 0,
            format!(
                "sent {}, acked {}, throttled {}, errors {}",
                r.records_sent, r.records_acked, r.records_throttled, r.errors
            ),
        );

        let shards: Vec<String> = r
            .open_shards_changes()
            .iter()
            .map(|(t, n)| format!("{n} at {t:.0} s"))
            .collect();
        self.note(format!(
            "open shards over time (a description each second; load steps at {step_up} s and \
             {step_down} s): {}",
            shards.join(", ")
        ));
        let throttled_per_s: Vec<String> = high_samples
            .iter()
            .filter(|s| s.t_s - s.dt_s < stopped_at + 1.0)
            .map(|s| format!("{}", s.throttled))
            .collect();
        self.note(format!(
            "throttled records per second from the step up until throttling stopped: {}",
            throttled_per_s.join(" ")
        ));
        for sc in &r.scalings {
            self.note(format!(
                "scaling seen at {:.1} s: {}",
                sc.seen_s, sc.decision
            ));
        }
        self.note(
            "--retries 0: a throttled record is counted and not sent again (a Kinesis producer \
             would retry it); the share throttled is of the records offered (due) from the step \
             up through the second of the last throttled answer; `lost` counts acknowledged \
             records missing from the read-back, which reads every shard, closed parents \
             included, in lineage order"
                .into(),
        );
        if quick {
            self.note(
                "quick mode: 2 s in all, far too short for the scaler; nothing measured".into(),
            );
        }
        self.bottleneck_note(&r);
        Ok(())
    }

    /// 20 push consumers on every shard of one stream (limits off) at a fixed open-loop
    /// rate well under the engine's maximum, then the same with 20 polling consumers. The
    /// headline figures are the push run's; `poll_*` the polling run's.
    async fn fan_out(&mut self) -> Result<(), Error> {
        const CONSUMERS: usize = 20;
        let shards = self.opts.shards.unwrap_or(2);
        let rate = self
            .opts
            .rate
            .unwrap_or(if self.opts.quick { 500.0 } else { 2000.0 });
        let base = |b: &Self, consumer_mode| RunConfig {
            producers: 2,
            rate,
            size: SizeSpec::fixed(1024),
            keys: 1000,
            consumers: CONSUMERS,
            consumer_mode,
            duration_s: b.duration(15.0),
            warmup_s: b.warmup(3.0),
            read_wait_ms: 1000,
            verify: true,
            ..b.config(shards, LimitsArg::Off)
        };
        let push = self.run(base(self, ConsumerMode::Push)).await?;
        let poll = self.run(base(self, ConsumerMode::Poll)).await?;
        self.figure("offered_records_per_s", rate);
        self.figure("shards", f64::from(shards));
        self.figure("consumers", CONSUMERS as f64);
        let loopback = self.machine_limit("iperf3_loopback_bytes_per_s");
        for (mode, r) in [("push", &push), ("poll", &poll)] {
            let (a, e) = (r.ack_latency_us, r.e2e_latency_us.unwrap_or_default());
            let ratio = min_consumer_ratio(r);
            let over_ms = (e.p99 as f64 - a.p99 as f64) / 1000.0;
            let prefix = if mode == "push" { "" } else { "poll_" };
            self.figure(
                &format!("{prefix}acked_records_per_s"),
                r.acked_records_per_s,
            );
            self.figure(&format!("{prefix}ack_p99_us"), a.p99 as f64);
            for (name, v) in [
                ("p50", e.p50),
                ("p99", e.p99),
                ("p999", e.p999),
                ("max", e.max),
            ] {
                self.figure(&format!("{prefix}e2e_{name}_us"), v as f64);
            }
            self.figure(&format!("{prefix}e2e_p99_minus_ack_p99_ms"), over_ms);
            self.figure(&format!("{prefix}min_consumer_ratio"), ratio);
            let egress = r.consumed_mib_per_s.unwrap_or(0.0);
            self.figure(&format!("{prefix}consumed_mib_per_s"), egress);
            if let Some(lo) = loopback {
                self.figure(
                    &format!("{prefix}consumed_ratio_to_iperf3_loopback"),
                    egress * MIB / lo,
                );
            }
            self.check(
                &format!("{mode}: e2e p99 <= ack p99 + 1 ms"),
                e.count > 0 && over_ms <= 1.0,
                format!(
                    "e2e p99 {} µs, ack p99 {} µs ({over_ms:+.3} ms)",
                    e.p99, a.p99
                ),
            );
            self.check(
                &format!("{mode}: every consumer kept up with the write rate (>= 0.95)"),
                ratio >= 0.95,
                format!(
                    "slowest consumer received {:.3} × the acknowledged records/s while the \
                     producers ran",
                    ratio
                ),
            );
            let short = r
                .consumers
                .iter()
                .filter(|c| c.records < r.records_acked)
                .count();
            self.check(
                &format!("{mode}: every consumer read every acknowledged record"),
                short == 0 && r.consumers.len() == CONSUMERS,
                format!(
                    "{short} of {} consumers read fewer records than the {} acknowledged",
                    r.consumers.len(),
                    r.records_acked
                ),
            );
        }
        self.note(
            "a consumer's ratio is the records of the run it received during the measured \
             window (by arrival) per second, over the acknowledged records per second; e2e \
             latency runs from each record's due time (open loop) to its arrival at the \
             consumer, ack latency from the same due time to its acknowledgement"
                .into(),
        );
        self.bottleneck_note(&push);
        Ok(())
    }

    /// A backlog read from TRIM_HORIZON. (a) Kinesis limits: a 1-shard stream filled at
    /// just under its write limit with what a consumer reads in `--duration` (15 s) at
    /// 2 MiB/s after its bucket's burst, then 2 push consumers reading it at once (each has
    /// its own 2 MiB/s), the rate taken from 2 s on (past the burst). (b) Limits
    /// off: a 1-shard stream filled with `--catch-up-mib` (256) MiB as fast as it takes
    /// them, then one push consumer reading all of it as fast as it goes, a polling reader
    /// after it and a second push consumer; against fio's sequential read bandwidth when `machine-limits.json`
    /// is beside the results (the backlog was just written, so some of it may come from
    /// the page cache).
    async fn catch_up(&mut self) -> Result<(), Error> {
        const LIMIT_MIB_PER_S: f64 = 2.0;
        const SIZE: usize = 1024;
        let quick = self.opts.quick;
        let read_s = self.duration(15.0);
        let unlimited_mib = self
            .opts
            .catch_up_mib
            .unwrap_or(if quick { 4.0 } else { 256.0 });
        // (a) Each consumer reads its bucket's burst (a second's worth) and then 2 MiB/s
        // for read_s: the backlog holds that and a twentieth.
        let limited_mib = if quick {
            1.0
        } else {
            (LIMIT_MIB_PER_S * (read_s + 1.0) * 1.05).min(unlimited_mib)
        };
        // Just under 1,000 records/s and 1 MiB/s of key and data bytes.
        let fill_rate = 950.0;
        let fill_s = (limited_mib * MIB / (fill_rate * (SIZE as f64 + 16.0))).max(0.5);
        let limited = RunConfig {
            producers: 1,
            rate: fill_rate,
            api: Api::PutRecords,
            call_records: 500,
            size: SizeSpec::fixed(SIZE),
            keys: 16,
            duration_s: fill_s,
            delete_after: false,
            ..self.config(1, LimitsArg::Kinesis)
        };
        let stream_a = limited.stream.clone();
        let result = self.catch_up_limited(limited, read_s).await;
        self.delete_stream(&stream_a).await;
        result?;
        // (b) Limits off: as fast as it goes.
        let unlimited = RunConfig {
            producers: 2,
            rate: 0.0,
            api: Api::PutRecords,
            call_records: 500,
            size: SizeSpec::fixed(SIZE),
            keys: 16,
            duration_s: 600.0,
            stop_after_mib: Some(unlimited_mib),
            delete_after: false,
            ..self.config(1, LimitsArg::Off)
        };
        let stream_b = unlimited.stream.clone();
        let result = self.catch_up_unlimited(unlimited).await;
        self.delete_stream(&stream_b).await;
        result
    }

    async fn catch_up_limited(&mut self, fill: RunConfig, read_s: f64) -> Result<(), Error> {
        const LIMIT_MIB_PER_S: f64 = 2.0;
        let stream = fill.stream.clone();
        let filled = self.run(fill).await?;
        self.figure("limited_backlog_mib", filled.bytes_acked as f64 / MIB);
        let limit = Some(Duration::from_secs_f64(read_s));
        let server = self.opts.server.clone();
        let tls = self.opts.tls.clone();
        let tls = tls.as_ref();
        let (a, b) = tokio::join!(
            catchup::push_read(&server, tls, &stream, "catch-up-0", limit),
            catchup::push_read(&server, tls, &stream, "catch-up-1", limit),
        );
        let reads = [a?, b?];
        let mut slowest = f64::INFINITY;
        for (i, r) in reads.iter().enumerate() {
            let rate = r.steady_mib_per_s.unwrap_or(r.mib_per_s);
            slowest = slowest.min(rate);
            self.figure(&format!("limited_consumer_{i}_mib_per_s"), r.mib_per_s);
            if let Some(steady) = r.steady_mib_per_s {
                self.figure(&format!("limited_consumer_{i}_steady_mib_per_s"), steady);
            }
            self.figure(&format!("limited_consumer_{i}_seconds"), r.seconds);
            if r.reached_tip && r.seconds < read_s * 0.9 {
                self.note(format!(
                    "limited consumer {i} reached the tip after {:.1} s, before the {read_s} s \
                     it was to read: the backlog was too small to measure its allowance",
                    r.seconds
                ));
            }
        }
        self.figure("limited_min_mib_per_s", slowest);
        let within = |r: &catchup::BacklogRead| {
            r.steady_mib_per_s
                .is_some_and(|s| (s / LIMIT_MIB_PER_S - 1.0).abs() <= 0.1)
        };
        let detail: Vec<String> = reads
            .iter()
            .map(|r| {
                format!(
                    "{}: {:.3} MiB/s over {:.1} s, {} from {} s on",
                    r.reader,
                    r.mib_per_s,
                    r.seconds,
                    r.steady_mib_per_s
                        .map_or("-".into(), |s| format!("{s:.3} MiB/s")),
                    catchup::STEADY_AFTER.as_secs()
                )
            })
            .collect();
        self.check(
            "Kinesis limits: each push consumer reads its own 2 MiB/s (steady, within 10 %)",
            reads.iter().all(within),
            detail.join("; "),
        );
        Ok(())
    }

    async fn catch_up_unlimited(&mut self, fill: RunConfig) -> Result<(), Error> {
        let stream = fill.stream.clone();
        let filled = self.run(fill).await?;
        let backlog_mib = filled.bytes_acked as f64 / MIB;
        self.figure("unlimited_backlog_mib", backlog_mib);
        self.figure("unlimited_backlog_records", filled.records_acked as f64);
        // The first read finds the backlog as the write left it; the next ones may find
        // it in caches the first one filled: a second push read shows the difference.
        let server = self.opts.server.clone();
        let tls = self.opts.tls.clone();
        let tls = tls.as_ref();
        let push = catchup::push_read(&server, tls, &stream, "catch-up", None).await?;
        let poll = catchup::poll_read(&server, tls, &stream).await?;
        let again = catchup::push_read(&server, tls, &stream, "catch-up-again", None).await?;
        self.figure("unlimited_push_mib_per_s", push.mib_per_s);
        self.figure("unlimited_push_seconds", push.seconds);
        self.figure("unlimited_poll_mib_per_s", poll.mib_per_s);
        self.figure("unlimited_poll_seconds", poll.seconds);
        self.figure("unlimited_push_again_mib_per_s", again.mib_per_s);
        match self.machine_limit("fio_seq_read_1m_qd8_bytes_per_s") {
            Some(fio) => {
                self.figure("fio_seq_read_mib_per_s", fio / MIB);
                self.figure(
                    "unlimited_push_ratio_to_fio_read",
                    push.mib_per_s * MIB / fio,
                );
                self.figure(
                    "unlimited_poll_ratio_to_fio_read",
                    poll.mib_per_s * MIB / fio,
                );
            }
            None => self.note(
                "no machine-limits.json with fio_seq_read_1m_qd8_bytes_per_s beside the \
                 results: no ratio to fio's read bandwidth"
                    .into(),
            ),
        }
        for r in [&push, &poll, &again] {
            self.check(
                &format!("limits off: the {} reader read the whole backlog", r.reader),
                r.reached_tip && r.records == filled.records_acked,
                format!(
                    "{} of {} records ({:.1} MiB) in {:.2} s",
                    r.records,
                    filled.records_acked,
                    r.bytes as f64 / MIB,
                    r.seconds
                ),
            );
        }
        self.note(
            "limits off: the push consumer read the backlog first, then the polling reader, \
             then a second push consumer (`unlimited_push_again_mib_per_s`): the later reads \
             may find the data in caches the first one filled; the backlog was written just \
             before, so even the first may be served partly from the page cache (a ratio \
             above 1 to fio's O_DIRECT read is possible)"
                .into(),
        );
        Ok(())
    }

    async fn delete_stream(&self, stream: &str) {
        let deleted = async {
            let config = client_config(self.opts.tls.as_ref());
            let client =
                spate_client::Client::connect_with(self.opts.server.clone(), config).await?;
            client.delete_stream(stream).await
        };
        if let Err(e) = deleted.await {
            tracing::warn!(stream, error = %e, "could not delete the stream");
        }
    }

    /// 4 workers of one consumer group on an 8-shard stream (limits off) under steady
    /// open-loop load; the first is dropped after 10 s without leaving, as a crash would.
    /// Its leases expire after the server's `group_lease_timeout_ms` (6 s by default) and
    /// go to the others, which read on from the last checkpoint (one per batch).
    async fn group_failover(&mut self) -> Result<(), Error> {
        const GOAL_S: f64 = 10.0;
        let quick = self.opts.quick;
        let duration_s = self.duration(25.0);
        let crash_at = if quick {
            0.3
        } else {
            (duration_s * 0.4).min(10.0)
        };
        let rate = self.opts.rate.unwrap_or(if quick { 500.0 } else { 2000.0 });
        let cfg = RunConfig {
            producers: 2,
            rate,
            size: SizeSpec::fixed(1024),
            keys: 1000,
            consumers: 4,
            consumer_mode: ConsumerMode::Group,
            crash_worker_at_s: Some(crash_at),
            duration_s,
            read_wait_ms: 1000,
            verify: true,
            ..self.config(8, LimitsArg::Off)
        };
        let r = self.run(cfg).await?;
        let g = r
            .group
            .clone()
            .ok_or_else(|| Error::new("group-failover: the run reported no group"))?;
        self.figure("offered_records_per_s", rate);
        self.figure("crash_at_s", crash_at);
        if let Some(t) = g.lease_timeout_ms {
            self.figure("lease_timeout_ms", f64::from(t));
        }
        self.figure("checkpoints", g.checkpoints as f64);
        self.figure("checkpoint_p50_us", g.checkpoint_latency_us.p50 as f64);
        self.figure("checkpoint_p99_us", g.checkpoint_latency_us.p99 as f64);
        self.figure("checkpoint_max_us", g.checkpoint_latency_us.max as f64);
        self.figure("records_acked", r.records_acked as f64);
        self.figure("consumed_records", r.consumed_records.unwrap_or(0) as f64);
        self.figure("redelivered", r.redelivered.unwrap_or(0) as f64);
        self.figure("ack_p99_us", r.ack_latency_us.p99 as f64);
        let e = r.e2e_latency_us.unwrap_or_default();
        self.figure("e2e_p99_us", e.p99 as f64);
        self.figure("e2e_max_us", e.max as f64);
        let Some(f) = &g.failover else {
            self.check(
                "a worker was dropped",
                false,
                "the drop did not happen before the run ended".into(),
            );
            return Ok(());
        };
        self.figure("dropped_worker_shards", f.shards.len() as f64);
        self.figure("redelivered_after_drop", f.redelivered as f64);
        if let Some(s) = f.lease_moved_after_s_max {
            self.figure("leases_moved_after_s", s);
        }
        if let Some(s) = f.reread_after_s_max {
            self.figure("read_again_after_s", s);
        }
        self.check(
            &format!("the dropped worker's shards are read again within {GOAL_S:.0} s"),
            !f.shards.is_empty() && f.reread_after_s_max.is_some_and(|s| s <= GOAL_S),
            format!(
                "{}; lease timeout {} ms",
                f.shards
                    .iter()
                    .map(|s| format!(
                        "shard {}: lease moved after {}, read again after {}{}",
                        s.shard,
                        s.lease_moved_after_s
                            .map_or("-".into(), |v| format!("{v:.2} s")),
                        s.reread_after_s
                            .map_or("never".into(), |v| format!("{v:.2} s")),
                        s.reread_by
                            .as_ref()
                            .map_or(String::new(), |w| format!(" by {w}"))
                    ))
                    .collect::<Vec<_>>()
                    .join("; "),
                g.lease_timeout_ms.map_or("?".into(), |t| t.to_string())
            ),
        );
        let missed = g.missed.unwrap_or(u64::MAX);
        let v = r.verify.unwrap_or_default();
        self.figure("missed_by_group", g.missed.unwrap_or(0) as f64);
        self.check(
            "no acknowledged record missed by the group (each delivered at least once)",
            missed == 0 && v.passed() && r.consumed_records == Some(r.records_acked),
            format!(
                "missed {missed}; {} of {} acknowledged records consumed in the window; \
                 read back: lost {}, duplicated {}",
                r.consumed_records.unwrap_or(0),
                r.records_acked,
                v.lost,
                v.duplicated
            ),
        );
        self.note(format!(
            "worker {} was dropped at {:.1} s without leaving; a shard's takeover is when a \
             description of the group (polled every 50 ms) first showed it leased to another \
             worker or to none, and when \
             another worker was first handed its records; records processed by the dropped \
             worker after its last checkpoint come again ({} here)",
            f.worker, f.at_s, f.redelivered
        ));
        self.note(
            "each worker checkpoints every batch before it takes the next one, so a slow \
             checkpoint delays the records queued behind it: end-to-end latency here includes \
             that wait (checkpoint_*_us), and the takeover's own (the dropped worker's shards \
             were not read until their leases moved)"
                .into(),
        );
        Ok(())
    }
}

/// The slowest consumer's records received during the measured window (by arrival), per
/// second, over the acknowledged records per second (0 without consumers).
fn min_consumer_ratio(r: &Report) -> f64 {
    if r.acked_records_per_s <= 0.0 || r.consumers.is_empty() {
        return 0.0;
    }
    r.consumers
        .iter()
        .map(|c| c.received_records_per_s / r.acked_records_per_s)
        .fold(f64::INFINITY, f64::min)
}

/// The shard counts of an on-demand scaling decision's words ("... 4 -> 8 open shards: ...").
fn scaling_shards(decision: &str) -> Option<(u32, u32)> {
    let (before, after) = decision.split_once(" -> ")?;
    let a = before.rsplit(' ').next()?.parse().ok()?;
    let b = after.split(' ').next()?.parse().ok()?;
    Some((a, b))
}

/// `acked_records_per_s` of a max-1k result (or a plain report), if the file exists.
fn read_max_rate(path: &Path) -> Result<Option<f64>, Error> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::new(format!("cannot read {}: {e}", path.display()))),
    };
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::new(format!("{} is not JSON: {e}", path.display())))?;
    let rate = v["figures"]["acked_records_per_s"]
        .as_f64()
        .or_else(|| v["acked_records_per_s"].as_f64())
        .ok_or_else(|| Error::new(format!("{} has no acked_records_per_s", path.display())))?;
    Ok(Some(rate))
}

/// The share of a constant-rate open-loop run's due records never sent. `records_unsent`
/// counts the whole run, warm-up included, and `records_due` only the measured window, so
/// the whole run's due records are the rate times its length.
fn unsent_share(r: &Report) -> f64 {
    let p = &r.params;
    let whole_due = (p.rate * (p.warmup_s + p.duration_s)).max(1.0);
    r.records_unsent as f64 / whole_due
}

/// What holds one closed-loop producer whose calls ran at 1,000 a second, the rate the
/// engine's round pacing falls to (`round_rate_max = "auto"` once its probe saw the host
/// stall, or a fixed `round_rate_max = 1000`; a call is a round), and whether this host
/// stalled when flushes came back to back (`vm-stalls.py` in `limits`, the machine limits),
/// in which case the cap is what keeps the VM running. None when the calls ran at another
/// rate.
fn round_rate_hint(calls_per_s: f64, limits: &serde_json::Value) -> Option<String> {
    const PACED_ROUND_RATE: f64 = 1000.0;
    if (calls_per_s - PACED_ROUND_RATE).abs() > 0.02 * PACED_ROUND_RATE {
        return None;
    }
    let back_to_back = limits["vm_stalls"]["runs"].as_array().and_then(|runs| {
        runs.iter().find_map(|run| {
            (run["rate_target"].as_f64()? == 0.0).then(|| {
                (
                    run["flushes_per_s"].as_f64().unwrap_or(0.0),
                    run["probe_gaps_over_5ms"].as_u64().unwrap_or(0),
                )
            })
        })
    });
    let host = match back_to_back {
        Some((flushes, 0)) => format!(
            "; this host did not stall at {flushes:.0} flushes a second back to back \
             (vm-stalls), so a fixed cap is not needed here: \"auto\" or 0 (tuning/README.md, \
             \"Round rate\")"
        ),
        Some((flushes, gaps)) => format!(
            "; this host stalled {gaps} times at {flushes:.0} flushes a second back to back \
             (vm-stalls): the cap is what keeps it running"
        ),
        None => String::new(),
    };
    Some(format!(
        "1 producer: {calls_per_s:.0} calls a second, one round each: the engine's round cap \
         held it (1,000 rounds a second: round_rate_max = \"auto\" after its probe saw the \
         host stall, spate_core_stalls_total, or a fixed 1000){host}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_producer_at_the_round_rate_is_told_what_holds_it_and_whether_the_host_stalls() {
        let limits = |gaps: u64| {
            serde_json::json!({"vm_stalls": {"runs": [
                {"rate_target": 0, "flushes_per_s": 7082.0, "probe_gaps_over_5ms": gaps},
                {"rate_target": 1000, "flushes_per_s": 997.0, "probe_gaps_over_5ms": 0},
            ]}})
        };
        let calm = round_rate_hint(999.0, &limits(0)).unwrap();
        assert!(calm.contains("999 calls") && calm.contains("a fixed cap is not needed"));
        let stalls = round_rate_hint(1004.0, &limits(21)).unwrap();
        assert!(stalls.contains("stalled 21 times at 7082") && stalls.contains("keeps it running"));
        let unknown = round_rate_hint(1000.0, &serde_json::Value::Null).unwrap();
        assert!(unknown.ends_with("or a fixed 1000)"));
        // Not at the rate: something else holds it.
        assert_eq!(round_rate_hint(1800.0, &limits(0)), None);
        assert_eq!(round_rate_hint(900.0, &limits(0)), None);
    }

    #[test]
    fn unsent_share_counts_the_whole_runs_due_records() {
        let mut r = crate::report::tests::sample();
        r.params.rate = 1000.0;
        r.params.warmup_s = 5.0;
        r.params.duration_s = 15.0;
        // 20,000 due over the run, 15,000 of them in the window.
        r.records_due = Some(15_000);
        r.records_unsent = 2_000;
        assert!((unsent_share(&r) - 0.1).abs() < 1e-12);
        r.records_unsent = 0;
        assert_eq!(unsent_share(&r), 0.0);
    }

    #[test]
    fn scaling_decisions_name_their_shard_counts() {
        assert_eq!(
            scaling_shards(
                "2026-12-02T15:44:50.153Z: 4 -> 5 open shards: writes were throttled (write rate \
                 1.97 MiB/s, capacity 4.00 MiB/s, peak 1.97 MiB/s)"
            ),
            Some((4, 5))
        );
        assert_eq!(
            scaling_shards("2026-12-02T15:46:34.299Z: 31 -> 18 open shards: quiet"),
            Some((31, 18))
        );
        assert_eq!(scaling_shards("switched to on-demand"), None);
    }
}
