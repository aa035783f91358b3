//! The JSON report of a run: every field SPEC §5 names, the parameters, the machine, the
//! engine version and git commit, and both programs' CPU use.
//!
//! Counts and rates cover the measured window only (records due, or sent in closed loop,
//! after the warm-up). `bytes_acked` counts partition key plus data bytes, as Kinesis
//! accounts a record against a shard's limits.
//!
//! For people, [`Report::summary_table`] renders the headline figures as a small aligned
//! table (latencies in ms), which `spate-loadgen` prints on stdout at the end of a run:
//!
//! ```text
//! stream clicks: 4 shards, 3.0 s measured after 1.0 s warm-up, open loop at 5000 records/s offered
//! records          sent       acked  throttled   errors  unsent
//!   count         15000       15000          0        0       0
//!   per second   5000.0      5000.0        0.0
//!   MiB/s                      4.94
//! latency (ms)      p50         p90        p99    p99.9  p99.99        max
//!   ack           7.591      19.519     38.719   53.215  56.127     56.927
//!   end-to-end    7.743      19.695     38.943   53.759  56.831     57.631
//! verify           lost  duplicated  reordered  corrupt   acked  read back
//!   passed            0           0          0        0   20000      20000
//! cpu (cores)   loadgen      engine
//!   used           1.35        0.39
//! CPUs busy (whole machine): cpu0 88 %, cpu1 90 %
//! (errors and verify cover the whole run, warm-up included)
//! ```

use std::collections::BTreeMap;
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::config::{ConsumerMode, ReshardStep, RunConfig};
use crate::stats::{CoreUse, CpuUse, Percentiles};
use crate::verify::VerifyReport;

/// One consumer's figures (a polling consumer group, a registered push consumer, or a
/// consumer group's worker).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsumerReport {
    pub id: usize,
    /// The registered consumer's name (push) or the worker's id (group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Records of the measured window this consumer read (group: first deliveries only).
    pub records: u64,
    pub bytes: u64,
    pub records_per_s: f64,
    pub mib_per_s: f64,
    /// Records of this run that arrived during the measured window (whenever they were
    /// due), per second: whether the consumer kept up with the producers while they ran.
    #[serde(default)]
    pub received_records_per_s: f64,
    pub e2e_latency_us: Percentiles,
    /// Records delivered again (group: after a lease moved; push: a sequence number
    /// delivered twice, which the engine promises never happens).
    #[serde(default)]
    pub redelivered: u64,
    /// Reads refused by the shard's read limit (`ReadThrottled`), each waited out as the
    /// server's hint said: not failures.
    #[serde(default)]
    pub throttled: u64,
    /// Failed reads (after the client's retries).
    pub errors: u64,
}

/// `--consumer-mode group`: the group as a whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupReport {
    pub group: String,
    /// The server's lease timeout (from a description of the group).
    pub lease_timeout_ms: Option<u32>,
    /// Checkpoints stored (one per batch, one per shard end).
    pub checkpoints: u64,
    /// How long each took, from asking to the answer (the worker takes its next batch only
    /// then, so this adds to the end-to-end latency of the records queued behind it).
    #[serde(default)]
    pub checkpoint_latency_us: Percentiles,
    /// Checkpoints refused because the lease had moved (the records come again elsewhere).
    pub checkpoints_lease_lost: u64,
    /// `LeaseLost` events the workers saw.
    pub leases_lost: u64,
    /// With `--verify`: acknowledged records no worker delivered (must be 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missed: Option<u64>,
    /// `--crash-worker-at`: the dropped worker and the takeover of its shards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<FailoverReport>,
}

/// `--crash-worker-at`: a worker dropped without leaving, and how its shards moved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailoverReport {
    pub worker: String,
    /// When it was dropped, in seconds since the run's clock started.
    pub at_s: f64,
    /// The shards it held then, each with when (seconds after the drop) a description of
    /// the group (polled every 50 ms) first showed it no longer leased to the dropped
    /// worker, and when another worker first delivered records of it (`None`: not seen
    /// before the run ended).
    pub shards: Vec<ShardFailover>,
    /// The largest `reread_after_s` (`None` if a shard was never read again).
    pub reread_after_s_max: Option<f64>,
    /// The largest `lease_moved_after_s` (`None` if one was not seen).
    pub lease_moved_after_s_max: Option<f64>,
    /// Records delivered again after the drop (processed by the dropped worker after its
    /// last checkpoint).
    pub redelivered: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardFailover {
    pub shard: u32,
    pub lease_moved_after_s: Option<f64>,
    pub reread_after_s: Option<f64>,
    /// The worker that read it again.
    pub reread_by: Option<String>,
}

/// What one `--reshard` step did, and the ack latency of the records it may have touched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReshardReport {
    pub step: ReshardStep,
    /// When the call was made, in seconds since the run's clock started (the step's `at_s`,
    /// or later when the previous step ran over).
    pub started_s: f64,
    /// How long the call took: from asking until the answer, when the new shards take
    /// writes and the closed ones refuse them.
    pub took_ms: f64,
    /// The shard-map version after the change.
    #[serde(default)]
    pub map_version: Option<u64>,
    /// The shards the change opened.
    #[serde(default)]
    pub new_shards: Vec<u32>,
    /// Open shards afterwards (a fresh description).
    #[serde(default)]
    pub open_shards_after: Option<u32>,
    /// Why the call failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The change window, in seconds since the run's clock started: records due in it
    /// (within the measured window) count in `ack_latency_us` (from 0.1 s before the call
    /// until 0.9 s after its answer).
    pub window_s: [f64; 2],
    pub ack_latency_us: Percentiles,
}

/// One second of a run (`--timeline`), by when things happened (records sent, answers
/// received), warm-up included; the last sample covers the rest of the run until every
/// outstanding record was answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineSecond {
    /// The end of the interval, in seconds since the run's clock started.
    pub t_s: f64,
    /// Its length (about 1 s).
    pub dt_s: f64,
    /// Open loop: records due in the interval (the offered load).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due: Option<u64>,
    pub sent: u64,
    pub acked: u64,
    /// Key and data bytes of the acknowledged records.
    pub acked_bytes: u64,
    pub throttled: u64,
    pub errors: u64,
    /// When the interval's last throttled answer came, in seconds since the run's clock
    /// started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_throttled_s: Option<f64>,
    /// Open shards and shard-map version of a description made at the end of the interval.
    #[serde(default)]
    pub open_shards: Option<u32>,
    #[serde(default)]
    pub map_version: Option<u64>,
}

/// A scaling decision of an on-demand stream seen during the run (`--timeline`): the
/// stream's `last_scaling` changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScalingSeen {
    /// When the description that first showed it was made, in seconds since the run's
    /// clock started.
    pub seen_s: f64,
    /// The engine's words: when, what and why.
    pub decision: String,
}

/// The machine the load generator ran on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// CPUs online.
    pub cores: usize,
    pub kernel: String,
    pub cpu_model: String,
    pub hostname: String,
    /// Engine cores, from the server's hello.
    pub engine_cores: usize,
    /// The CPUs the load generator's threads were pinned to, if any.
    pub loadgen_cores: Option<Vec<usize>>,
}

impl Machine {
    pub fn detect(engine_cores: usize, loadgen_cores: Option<Vec<usize>>) -> Machine {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        let cpu_model = read("/proc/cpuinfo")
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default();
        Machine {
            cores: online_cpus(),
            kernel: read("/proc/sys/kernel/osrelease"),
            cpu_model,
            hostname: read("/proc/sys/kernel/hostname"),
            engine_cores,
            loadgen_cores,
        }
    }
}

/// The report of one run; see the module docs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub tool: String,
    /// The engine's version (the workspace's: the load generator is built with it).
    pub engine_version: String,
    pub git_sha: String,
    pub started_unix_s: u64,
    /// The command line that repeats this run.
    pub command: String,
    pub params: RunConfig,
    pub machine: Machine,
    /// Open shards of the stream when the run started.
    pub shards: usize,
    /// Open loop: records the schedule made due in the measured window (the offered load).
    pub records_due: Option<u64>,
    pub records_sent: u64,
    /// Open loop: records due in the whole run that the producers had not sent when it
    /// ended (the load generator or the server could not keep up). Never sent, so never
    /// counted as errors or in the latencies.
    pub records_unsent: u64,
    pub records_acked: u64,
    pub records_throttled: u64,
    pub errors: u64,
    pub errors_by_code: BTreeMap<String, u64>,
    pub first_error: Option<String>,
    pub bytes_acked: u64,
    pub duration_s: f64,
    pub acked_records_per_s: f64,
    pub acked_mib_per_s: f64,
    /// Acknowledgements that arrived during the measured window, whatever their records'
    /// due time, per second. Equal to `acked_records_per_s` at a load the engine keeps up
    /// with; under an open-loop overload (records due in the window never sent) what the
    /// engine still acknowledged of the backlog.
    #[serde(default)]
    pub acks_in_window_per_s: f64,
    pub offered_records_per_s: Option<f64>,
    pub ack_latency_us: Percentiles,
    pub ack_latency_spectrum_us: Vec<[f64; 2]>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub e2e_latency_us: Option<Percentiles>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub e2e_latency_spectrum_us: Option<Vec<[f64; 2]>>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub consumers: Vec<ConsumerReport>,
    /// With consumers: how they read (`poll`, `push`, `group`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub consumer_mode: Option<ConsumerMode>,
    /// With consumers: records of the measured window consumed, each consumer's counted
    /// (poll and push: every consumer reads every record; group: each record once).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub consumed_records: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub consumed_records_per_s: Option<f64>,
    /// Key and data bytes of those records.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub consumed_mib_per_s: Option<f64>,
    /// Each consumer's `records_per_s`, in consumer order.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub per_consumer_records_per_s: Vec<f64>,
    /// With consumers: records delivered more than once (whole run).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub redelivered: Option<u64>,
    /// With consumers: reads the shards' read limits refused and the consumers waited out
    /// (whole run; see [`ConsumerReport::throttled`]).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub consumer_reads_throttled: Option<u64>,
    /// `--consumer-mode group`: the group's checkpoints, leases and failover.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub group: Option<GroupReport>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub verify: Option<VerifyReport>,
    pub loadgen_cpu: CpuUse,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub engine_cpu: Option<CpuUse>,
    /// How every CPU of the machine spent the measured window (`/proc/stat`), kernel work
    /// and interrupts included: a core can be saturated by work neither process is charged
    /// for (loopback TCP's receive path runs in the sender's softirq; disk completions run
    /// where the disk's interrupt is delivered).
    #[serde(default)]
    pub cpus: Vec<CoreUse>,
    /// `--reshard`: each step, in order.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub reshards: Vec<ReshardReport>,
    /// `--reshard`: ack latency of the measured window's records outside every step's
    /// change window (the steady state around the changes).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ack_latency_steady_us: Option<Percentiles>,
    /// `--timeline`: one sample a second.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub timeline: Vec<TimelineSecond>,
    /// `--timeline`: the on-demand scaling decisions seen during the run, in order.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub scalings: Vec<ScalingSeen>,
    /// What the run could not do after its records were answered (the stream could not be
    /// described: deleted, or the server gone), so consumers stopped where they were and
    /// nothing was read back; the figures above still hold. A failure of the run.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub incomplete: Option<String>,
}

impl Report {
    /// Whether the run failed: records failed with errors other than throttling, or the
    /// verification found a problem. The reason is one line.
    pub fn failure(&self) -> Option<String> {
        if let Some(v) = &self.verify {
            if !v.passed() {
                return Some(format!(
                    "verify failed: lost {}, duplicated {}, reordered {}, corrupt {}",
                    v.lost, v.duplicated, v.reordered, v.corrupt
                ));
            }
        }
        if self.errors > 0 {
            return Some(format!(
                "{} records failed; first error: {}",
                self.errors,
                self.first_error.as_deref().unwrap_or("unknown")
            ));
        }
        if let Some(why) = &self.incomplete {
            return Some(format!("the run is incomplete: {why}"));
        }
        let read_errors: u64 = self.consumers.iter().map(|c| c.errors).sum();
        if read_errors > 0 {
            return Some(format!("{read_errors} consumer reads failed"));
        }
        if let Some(missed) = self.group.as_ref().and_then(|g| g.missed) {
            if missed > 0 {
                return Some(format!(
                    "the consumer group never delivered {missed} acknowledged records"
                ));
            }
        }
        if let Some((r, e)) = self
            .reshards
            .iter()
            .find_map(|r| r.error.as_ref().map(|e| (r, e)))
        {
            return Some(format!("reshard step {} failed: {e}", r.step));
        }
        None
    }

    /// A one-line human summary (printed on stderr after each run of a `bench` scenario).
    pub fn summary_line(&self) -> String {
        let a = &self.ack_latency_us;
        let mut s = format!(
            "{} acked in {:.1} s: {:.0} records/s, {:.1} MiB/s; ack p50 {}, p99 {}, p99.9 {}, p99.99 {}, max {}; \
             throttled {}, errors {}, loadgen CPU {:.2} cores",
            self.records_acked,
            self.duration_s,
            self.acked_records_per_s,
            self.acked_mib_per_s,
            fmt_latency_us(a.p50),
            fmt_latency_us(a.p99),
            fmt_latency_us(a.p999),
            fmt_latency_us(a.p9999),
            fmt_latency_us(a.max),
            self.records_throttled,
            self.errors,
            self.loadgen_cpu.cores_used,
        );
        if let (Some(mode), Some(n)) = (self.consumer_mode, self.consumed_records_per_s) {
            s += &format!("; {} consumers {n:.0} records/s", mode.name());
            if let Some(r) = self.redelivered.filter(|&r| r > 0) {
                s += &format!(" ({r} redelivered)");
            }
        }
        if let Some(e) = &self.e2e_latency_us {
            s += &format!(
                "; e2e p50 {}, p99 {}, max {}",
                fmt_latency_us(e.p50),
                fmt_latency_us(e.p99),
                fmt_latency_us(e.max)
            );
        }
        if let Some(c) = &self.engine_cpu {
            s += &format!("; engine CPU {:.2} cores", c.cores_used);
        }
        if !self.cpus.is_empty() {
            let busy: Vec<String> = self
                .cpus
                .iter()
                .map(|c| format!("{} {:.0} %", c.cpu, c.busy * 100.0))
                .collect();
            s += &format!("; CPUs busy: {}", busy.join(", "));
        }
        if self.records_unsent > 0 {
            s += &format!("; {} records due but never sent", self.records_unsent);
        }
        if let Some(v) = &self.verify {
            s += &format!(
                "; verify: lost {} duplicated {} reordered {} corrupt {}",
                v.lost, v.duplicated, v.reordered, v.corrupt
            );
        }
        s
    }
}

impl Report {
    /// The headline figures as a small aligned table, latencies in ms (see the module
    /// docs for an example); ends with a newline. Counts and rates cover the measured
    /// window, `errors` the whole run.
    pub fn summary_table(&self) -> String {
        let p = &self.params;
        let mut head = format!(
            "stream {}: {} shard{}, {:.1} s measured",
            p.stream,
            self.shards,
            if self.shards == 1 { "" } else { "s" },
            self.duration_s
        );
        if p.warmup_s > 0.0 {
            head += &format!(" after {:.1} s warm-up", p.warmup_s);
        }
        head += &match self.offered_records_per_s {
            Some(r) => format!(", open loop at {r:.0} records/s offered"),
            None => ", closed loop".into(),
        };

        let mut t = Table::default();
        let per_s = |n: u64| {
            if self.duration_s > 0.0 {
                format!("{:.1}", n as f64 / self.duration_s)
            } else {
                "-".into()
            }
        };
        let open_loop = self.records_due.is_some();
        let mut header = vec!["records", "sent", "acked", "throttled", "errors"];
        let mut count = vec![
            self.records_sent.to_string(),
            self.records_acked.to_string(),
            self.records_throttled.to_string(),
            self.errors.to_string(),
        ];
        if open_loop {
            header.push("unsent");
            count.push(self.records_unsent.to_string());
        }
        t.header(&header);
        t.row("count", count);
        t.row(
            "per second",
            vec![
                per_s(self.records_sent),
                format!("{:.1}", self.acked_records_per_s),
                per_s(self.records_throttled),
            ],
        );
        t.row(
            "MiB/s",
            vec![String::new(), format!("{:.2}", self.acked_mib_per_s)],
        );

        t.header(&[
            "latency (ms)",
            "p50",
            "p90",
            "p99",
            "p99.9",
            "p99.99",
            "max",
        ]);
        t.row("ack", latency_cells(&self.ack_latency_us));
        if let Some(e2e) = &self.e2e_latency_us {
            t.row("end-to-end", latency_cells(e2e));
        }
        if let Some(steady) = &self.ack_latency_steady_us {
            t.row("ack, steady", latency_cells(steady));
        }
        for r in &self.reshards {
            t.row(
                &format!("ack, {} at {:.1} s", r.step.op, r.started_s),
                latency_cells(&r.ack_latency_us),
            );
        }

        if let (Some(mode), Some(n)) = (self.consumer_mode, self.consumed_records) {
            t.header(&[
                "consumers",
                "records",
                "per second",
                "MiB/s",
                "slowest/s",
                "redelivered",
                "throttled",
            ]);
            let slowest = self
                .per_consumer_records_per_s
                .iter()
                .copied()
                .fold(f64::INFINITY, f64::min);
            t.row(
                &format!("{} {}", self.consumers.len(), mode.name()),
                vec![
                    n.to_string(),
                    format!("{:.1}", self.consumed_records_per_s.unwrap_or(0.0)),
                    format!("{:.2}", self.consumed_mib_per_s.unwrap_or(0.0)),
                    if slowest.is_finite() {
                        format!("{slowest:.1}")
                    } else {
                        "-".into()
                    },
                    self.redelivered.unwrap_or(0).to_string(),
                    self.consumer_reads_throttled.unwrap_or(0).to_string(),
                ],
            );
        }

        if let Some(v) = &self.verify {
            t.header(&[
                "verify",
                "lost",
                "duplicated",
                "reordered",
                "corrupt",
                "acked",
                "read back",
            ]);
            t.row(
                if v.passed() { "passed" } else { "FAILED" },
                [
                    v.lost,
                    v.duplicated,
                    v.reordered,
                    v.corrupt,
                    v.acked,
                    v.records_read,
                ]
                .iter()
                .map(u64::to_string)
                .collect(),
            );
        }

        let mut cpu_header = vec!["cpu (cores)", "loadgen"];
        let mut cpu = vec![format!("{:.2}", self.loadgen_cpu.cores_used)];
        if let Some(e) = &self.engine_cpu {
            cpu_header.push("engine");
            cpu.push(format!("{:.2}", e.cores_used));
        }
        t.header(&cpu_header);
        t.row("used", cpu);

        let mut out = head + "\n" + &t.render();
        for r in &self.reshards {
            out += &match &r.error {
                None => format!(
                    "reshard {} at {:.2} s: took {:.1} ms, {} open shards after (map version {})\n",
                    r.step.op,
                    r.started_s,
                    r.took_ms,
                    r.open_shards_after.map_or("?".into(), |n| n.to_string()),
                    r.map_version.map_or("?".into(), |v| v.to_string()),
                ),
                Some(e) => format!(
                    "reshard {} at {:.2} s: FAILED after {:.1} ms: {e}\n",
                    r.step.op, r.started_s, r.took_ms
                ),
            };
        }
        for sc in &self.scalings {
            out += &format!("scaling seen at {:.1} s: {}\n", sc.seen_s, sc.decision);
        }
        if let Some(g) = &self.group {
            out += &g.summary_lines();
        }
        let changes = self.open_shards_changes();
        if !changes.is_empty() {
            let steps: Vec<String> = changes
                .iter()
                .map(|(t, n)| format!("{n} at {t:.0} s"))
                .collect();
            out += &format!("open shards (timeline): {}\n", steps.join(", "));
        }
        if !self.cpus.is_empty() {
            let busy: Vec<String> = self
                .cpus
                .iter()
                .map(|c| format!("cpu{} {:.0} %", c.cpu, c.busy * 100.0))
                .collect();
            out += &format!("CPUs busy (whole machine): {}\n", busy.join(", "));
        }
        if p.warmup_s > 0.0 {
            out += "(errors and verify cover the whole run, warm-up included)\n";
        }
        out
    }
}

impl GroupReport {
    /// The group's name, lease timeout, checkpoints and (with a drop) its failover, one
    /// line each.
    fn summary_lines(&self) -> String {
        let c = &self.checkpoint_latency_us;
        let mut out = format!(
            "group {}: lease timeout {} ms, {} checkpoints (p50 {} ms, p99 {} ms, max {} ms; {} refused: lease moved), {} leases lost{}\n",
            self.group,
            self.lease_timeout_ms.map_or("?".into(), |t| t.to_string()),
            self.checkpoints,
            fmt_ms(c.p50),
            fmt_ms(c.p99),
            fmt_ms(c.max),
            self.checkpoints_lease_lost,
            self.leases_lost,
            self.missed
                .map_or(String::new(), |m| format!(", {m} acknowledged records never delivered")),
        );
        if let Some(f) = &self.failover {
            let secs = |v: Option<f64>| v.map_or("never".into(), |s| format!("{s:.2} s"));
            let shards: Vec<String> = f.shards.iter().map(|s| s.shard.to_string()).collect();
            out += &format!(
                "failover: worker {} dropped at {:.1} s holding shard(s) {}; leases moved after {}, \
                 read again after {}; {} records delivered again\n",
                f.worker,
                f.at_s,
                shards.join(", "),
                secs(f.lease_moved_after_s_max),
                secs(f.reread_after_s_max),
                f.redelivered,
            );
        }
        out
    }
}

impl Report {
    /// `--timeline`: the open shard count of the first sample and of every sample where it
    /// changed, as (end of the sample in seconds, open shards).
    pub fn open_shards_changes(&self) -> Vec<(f64, u32)> {
        let mut out: Vec<(f64, u32)> = Vec::new();
        for s in &self.timeline {
            if let Some(n) = s.open_shards {
                if out.last().is_none_or(|&(_, m)| m != n) {
                    out.push((s.t_s, n));
                }
            }
        }
        out
    }
}

/// p50 p90 p99 p99.9 p99.99 max in ms; `-` when nothing was recorded.
fn latency_cells(p: &Percentiles) -> Vec<String> {
    [p.p50, p.p90, p.p99, p.p999, p.p9999, p.max]
        .iter()
        .map(|&us| if p.count == 0 { "-".into() } else { fmt_ms(us) })
        .collect()
}

/// Rows of a text table: a left-aligned label, then right-aligned cells. Every column is
/// as wide as its widest cell over the whole table, so the blocks line up; a header row's
/// label starts at the margin, a data row's is indented under it.
#[derive(Default)]
struct Table {
    rows: Vec<(String, Vec<String>)>,
}

impl Table {
    fn header(&mut self, cells: &[&str]) {
        let (label, rest) = cells.split_first().expect("a header has a label");
        self.rows.push((
            label.to_string(),
            rest.iter().map(|c| c.to_string()).collect(),
        ));
    }

    fn row(&mut self, label: &str, cells: Vec<String>) {
        self.rows.push((format!("  {label}"), cells));
    }

    fn render(&self) -> String {
        let width = |s: &str| s.chars().count();
        let label_w = self.rows.iter().map(|(l, _)| width(l)).max().unwrap_or(0);
        let columns = self.rows.iter().map(|(_, c)| c.len()).max().unwrap_or(0);
        let col_w: Vec<usize> = (0..columns)
            .map(|i| {
                self.rows
                    .iter()
                    .filter_map(|(_, c)| c.get(i))
                    .map(|c| width(c))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for (label, cells) in &self.rows {
            let mut line = format!("{label:<label_w$}");
            for (cell, w) in cells.iter().zip(&col_w) {
                line += &format!("  {cell:>w$}");
            }
            out += line.trim_end();
            out.push('\n');
        }
        out
    }
}

/// A latency in ms with three decimals (to the µs), the unit of the progress lines and the
/// summary table.
pub fn fmt_ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

/// A latency for people: µs below 1 ms, then ms (the `bench` runs' summary lines).
pub fn fmt_latency_us(us: u64) -> String {
    match us {
        us if us >= 10_000 => format!("{:.0} ms", us as f64 / 1000.0),
        us if us >= 1000 => format!("{:.2} ms", us as f64 / 1000.0),
        us => format!("{us} µs"),
    }
}

/// CPUs online (not only those this process may use).
fn online_cpus() -> usize {
    // SAFETY: sysconf has no memory effects.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n > 0 {
        n as usize
    } else {
        crate::cpus::available_cpus().len()
    }
}

/// The git commit: `git rev-parse HEAD` where the load generator runs (with `-dirty` when
/// the tree has changes), else the commit it was built from, else "unknown".
pub fn git_sha() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    if let Some(sha) = git(&["rev-parse", "HEAD"]).filter(|s| !s.is_empty()) {
        let dirty =
            git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
        return if dirty { format!("{sha}-dirty") } else { sha };
    }
    match env!("SPATE_GIT_SHA") {
        "" => "unknown".into(),
        sha => sha.into(),
    }
}

pub fn unix_now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::stats::Latency;

    /// A report as a finished run with consumers and --verify would write it.
    pub(crate) fn sample() -> Report {
        let mut h = Latency::default();
        for us in [100, 200, 300, 5000] {
            h.record_ns(us * 1000);
        }
        Report {
            tool: "spate-loadgen".into(),
            engine_version: "0.1.0".into(),
            git_sha: "abc".into(),
            started_unix_s: 1,
            command: "spate-loadgen --server x --stream s".into(),
            params: RunConfig::new("x", "s"),
            machine: Machine::detect(1, Some(vec![1])),
            shards: 2,
            records_due: Some(4),
            records_sent: 4,
            records_unsent: 0,
            records_acked: 4,
            records_throttled: 0,
            errors: 0,
            errors_by_code: BTreeMap::new(),
            first_error: None,
            bytes_acked: 4096,
            duration_s: 1.0,
            acked_records_per_s: 4.0,
            acked_mib_per_s: 4096.0 / 1048576.0,
            acks_in_window_per_s: 4.0,
            offered_records_per_s: Some(4.0),
            ack_latency_us: h.summary(),
            ack_latency_spectrum_us: h.spectrum(),
            e2e_latency_us: Some(h.summary()),
            e2e_latency_spectrum_us: Some(h.spectrum()),
            consumers: vec![ConsumerReport {
                id: 0,
                name: None,
                records: 4,
                bytes: 4096,
                records_per_s: 4.0,
                mib_per_s: 0.004,
                received_records_per_s: 4.0,
                e2e_latency_us: h.summary(),
                redelivered: 0,
                throttled: 3,
                errors: 0,
            }],
            consumer_mode: Some(ConsumerMode::Poll),
            consumed_records: Some(4),
            consumed_records_per_s: Some(4.0),
            consumed_mib_per_s: Some(4096.0 / 1048576.0),
            per_consumer_records_per_s: vec![4.0],
            redelivered: Some(0),
            consumer_reads_throttled: Some(3),
            group: None,
            verify: Some(VerifyReport::default()),
            loadgen_cpu: CpuUse::default(),
            engine_cpu: None,
            cpus: Vec::new(),
            reshards: Vec::new(),
            ack_latency_steady_us: None,
            timeline: Vec::new(),
            scalings: Vec::new(),
            incomplete: None,
        }
    }

    #[test]
    fn every_spec_field_is_in_the_json() {
        let v = serde_json::to_value(sample()).unwrap();
        for field in [
            "records_acked",
            "records_throttled",
            "errors",
            "bytes_acked",
            "duration_s",
            "acked_records_per_s",
            "acked_mib_per_s",
        ] {
            assert!(
                v[field].is_number(),
                "{field} missing or not a number in {v}"
            );
        }
        for hist in ["ack_latency_us", "e2e_latency_us"] {
            for p in ["p50", "p90", "p99", "p999", "p9999", "max"] {
                assert!(v[hist][p].is_u64(), "{hist}.{p} missing in {v}");
            }
        }
        for f in ["lost", "duplicated", "reordered"] {
            assert!(v["verify"][f].is_u64(), "verify.{f} missing in {v}");
        }
        // Parameters, machine, version and commit travel with the figures.
        for f in [
            "params",
            "machine",
            "engine_version",
            "git_sha",
            "command",
            "loadgen_cpu",
        ] {
            assert!(!v[f].is_null(), "{f} missing in {v}");
        }
        assert!(v["machine"]["kernel"].is_string() && v["machine"]["cores"].is_u64());
        assert!(v["params"]["producers"].is_u64() && v["params"]["rate"].is_number());
        // And the JSON reads back into the same report.
        let back: Report = serde_json::from_value(v).unwrap();
        assert_eq!(back, sample_with_same_machine(&back));
    }

    fn sample_with_same_machine(other: &Report) -> Report {
        Report {
            machine: other.machine.clone(),
            ..sample()
        }
    }

    #[test]
    fn optional_sections_are_left_out_when_unused() {
        let r = Report {
            e2e_latency_us: None,
            e2e_latency_spectrum_us: None,
            consumers: Vec::new(),
            consumer_mode: None,
            consumed_records: None,
            consumed_records_per_s: None,
            consumed_mib_per_s: None,
            per_consumer_records_per_s: Vec::new(),
            redelivered: None,
            consumer_reads_throttled: None,
            verify: None,
            ..sample()
        };
        let v = serde_json::to_value(&r).unwrap();
        assert!(v.get("e2e_latency_us").is_none() && v.get("verify").is_none());
        for f in [
            "consumer_mode",
            "consumed_records",
            "consumed_records_per_s",
            "consumed_mib_per_s",
            "per_consumer_records_per_s",
            "redelivered",
            "group",
        ] {
            assert!(v.get(f).is_none(), "{f}");
        }
        assert!(r.failure().is_none());
        assert!(!r.summary_table().contains("consumers"));
    }

    #[test]
    fn consumers_and_a_group_show_in_the_table_and_json() {
        let mut r = sample();
        r.consumer_mode = Some(ConsumerMode::Group);
        r.redelivered = Some(3);
        r.group = Some(GroupReport {
            group: "loadgen-1".into(),
            lease_timeout_ms: Some(6000),
            checkpoints: 12,
            checkpoint_latency_us: Percentiles {
                p50: 1500,
                p99: 20_000,
                max: 250_000,
                ..Percentiles::default()
            },
            checkpoints_lease_lost: 1,
            leases_lost: 2,
            missed: Some(0),
            failover: Some(FailoverReport {
                worker: "loadgen-1-w0".into(),
                at_s: 10.0,
                shards: vec![ShardFailover {
                    shard: 4,
                    lease_moved_after_s: Some(6.1),
                    reread_after_s: Some(6.25),
                    reread_by: Some("loadgen-1-w2".into()),
                }],
                reread_after_s_max: Some(6.25),
                lease_moved_after_s_max: Some(6.1),
                redelivered: 3,
            }),
        });
        let table = r.summary_table();
        let row = table
            .lines()
            .find(|l| l.starts_with("  1 group"))
            .unwrap_or_else(|| panic!("no consumers row in\n{table}"));
        assert_eq!(
            row.split_whitespace().skip(2).collect::<Vec<_>>(),
            ["4", "4.0", "0.00", "4.0", "3", "3"]
        );
        assert!(table.contains(
            "\ngroup loadgen-1: lease timeout 6000 ms, 12 checkpoints (p50 1.500 ms, p99 20.000 \
             ms, max 250.000 ms; 1 refused: lease moved), 2 leases lost, 0 acknowledged records \
             never delivered\n"
        ));
        assert!(table.contains(
            "\nfailover: worker loadgen-1-w0 dropped at 10.0 s holding shard(s) 4; leases moved \
             after 6.10 s, read again after 6.25 s; 3 records delivered again\n"
        ));
        assert!(r
            .summary_line()
            .contains("group consumers 4 records/s (3 redelivered)"));
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["consumer_mode"], "group");
        assert_eq!(v["group"]["failover"]["shards"][0]["reread_after_s"], 6.25);
        let back: Report = serde_json::from_value(v).unwrap();
        assert_eq!(back.group, r.group);
        assert_eq!(r.failure(), None);
        // A record the group never handed out fails the run.
        r.group.as_mut().unwrap().missed = Some(2);
        assert_eq!(
            r.failure().unwrap(),
            "the consumer group never delivered 2 acknowledged records"
        );
    }

    #[test]
    fn the_summary_table_is_aligned_and_in_ms() {
        let mut r = sample();
        r.engine_cpu = Some(CpuUse {
            cores_used: 0.8,
            ..CpuUse::default()
        });
        let table = r.summary_table();
        let lines: Vec<&str> = table.lines().collect();
        assert!(table.ends_with('\n'), "{table}");
        assert_eq!(
            lines[0],
            "stream s: 2 shards, 1.0 s measured, open loop at 4 records/s offered"
        );
        // Every block's header labels its columns.
        for header in [
            "records",
            "sent",
            "acked",
            "throttled",
            "errors",
            "unsent",
            "latency (ms)",
            "p50",
            "p90",
            "p99",
            "p99.9",
            "p99.99",
            "max",
            "verify",
            "lost",
            "duplicated",
            "reordered",
            "corrupt",
            "read back",
            "cpu (cores)",
            "loadgen",
            "engine",
        ] {
            assert!(table.contains(header), "{header:?} missing in\n{table}");
        }
        let row = |label: &str| -> Vec<&str> {
            let line = lines
                .iter()
                .find(|l| l.starts_with(&format!("  {label} ")))
                .unwrap_or_else(|| panic!("no {label} row in\n{table}"));
            line[label.len() + 2..].split_whitespace().collect()
        };
        assert_eq!(row("count"), ["4", "4", "0", "0", "0"]);
        assert_eq!(row("per second"), ["4.0", "4.0", "0.0"]);
        assert_eq!(row("MiB/s"), ["0.00"]);
        // 100, 200, 300 and 5000 µs, in ms (HdrHistogram keeps 3 significant digits: 5003).
        assert_eq!(
            row("ack"),
            ["0.200", "5.003", "5.003", "5.003", "5.003", "5.003"]
        );
        assert_eq!(row("end-to-end"), row("ack"));
        assert_eq!(row("passed"), ["0", "0", "0", "0", "0", "0"]);
        assert_eq!(row("used"), ["0.00", "0.80"]);
        assert!(!table.contains('µ'), "latencies are in ms:\n{table}");
        // Columns line up: each value ends where its header does.
        let end_of = |line: &str, word: &str| line.find(word).unwrap() + word.len();
        let header = lines.iter().find(|l| l.starts_with("latency")).unwrap();
        let ack = lines.iter().find(|l| l.starts_with("  ack")).unwrap();
        assert_eq!(end_of(header, "p50"), end_of(ack, "0.200"), "\n{table}");
        assert_eq!(end_of(header, " max"), ack.len(), "\n{table}");
        let records = lines[1];
        let count = lines.iter().find(|l| l.starts_with("  count")).unwrap();
        assert_eq!(records.len(), count.len(), "\n{table}");

        // Closed loop, no consumers, no verify, a failed verify, nothing acknowledged.
        let r = Report {
            records_due: None,
            offered_records_per_s: None,
            e2e_latency_us: None,
            verify: Some(VerifyReport {
                lost: 3,
                ..VerifyReport::default()
            }),
            ack_latency_us: Percentiles::default(),
            params: RunConfig {
                warmup_s: 2.0,
                ..RunConfig::new("x", "s")
            },
            cpus: vec![crate::stats::CoreUse {
                cpu: 3,
                busy: 0.5,
                ..Default::default()
            }],
            ..sample()
        };
        let table = r.summary_table();
        assert_eq!(
            table.lines().next().unwrap(),
            "stream s: 2 shards, 1.0 s measured after 2.0 s warm-up, closed loop"
        );
        assert!(
            table.contains("\nCPUs busy (whole machine): cpu3 50 %\n"),
            "{table}"
        );
        assert!(table.ends_with("(errors and verify cover the whole run, warm-up included)\n"));
        assert!(
            !table.contains("unsent") && !table.contains("end-to-end"),
            "{table}"
        );
        assert!(!table.contains("engine"), "{table}");
        assert!(table.contains("  FAILED "), "{table}");
        let ack = table.lines().find(|l| l.starts_with("  ack")).unwrap();
        assert_eq!(ack.split_whitespace().skip(1).collect::<Vec<_>>(), ["-"; 6]);
    }

    #[test]
    fn reshard_steps_show_in_the_table_and_fail_the_run() {
        let h = sample().ack_latency_us;
        let step = |text: &str, error: Option<&str>| ReshardReport {
            step: ReshardStep::parse(text).unwrap(),
            started_s: 3.0,
            took_ms: 12.5,
            map_version: error.is_none().then_some(2),
            new_shards: vec![2, 3],
            open_shards_after: error.is_none().then_some(3),
            error: error.map(str::to_string),
            window_s: [2.9, 3.9],
            ack_latency_us: h,
        };
        let mut r = Report {
            reshards: vec![step("3:split=0", None)],
            ack_latency_steady_us: Some(h),
            ..sample()
        };
        assert_eq!(r.failure(), None);
        let table = r.summary_table();
        assert!(table.contains("\n  ack, steady "), "{table}");
        assert!(table.contains("\n  ack, split=0 at 3.0 s "), "{table}");
        assert!(
            table.contains(
                "\nreshard split=0 at 3.00 s: took 12.5 ms, 3 open shards after (map version 2)\n"
            ),
            "{table}"
        );
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["reshards"][0]["step"]["op"], "split");
        assert!(v["ack_latency_steady_us"]["p99"].is_number());
        let back: Report = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
        r.reshards
            .push(step("4:merge", Some("InvalidArgument: not adjacent")));
        let why = r.failure().unwrap();
        assert_eq!(
            why,
            "reshard step 4:merge failed: InvalidArgument: not adjacent"
        );
        assert!(r
            .summary_table()
            .contains("reshard merge at 3.00 s: FAILED after 12.5 ms"));
        // A report without steps leaves both out.
        let v = serde_json::to_value(sample()).unwrap();
        assert!(v.get("reshards").is_none() && v.get("ack_latency_steady_us").is_none());
    }

    #[test]
    fn failures_have_a_one_line_reason() {
        let mut r = sample();
        r.verify = Some(VerifyReport {
            lost: 2,
            ..VerifyReport::default()
        });
        let why = r.failure().unwrap();
        assert!(why.contains("lost 2") && !why.contains('\n'), "{why}");
        r.verify = None;
        r.errors = 3;
        r.first_error = Some("StorageIo (602): disk".into());
        assert!(r.failure().unwrap().contains("3 records failed"));
        r.errors = 0;
        r.records_throttled = 10;
        assert!(r.failure().is_none(), "throttling is not a failure");
    }
}
