//! `spate-loadgen summarize DIR`: a markdown section for BENCHMARKS.md from the scenarios'
//! JSON files and `machine-limits.json` (written by `benches/scripts/machine-limits.sh` in
//! the same session): every figure with its command, and each SPEC §6 target with the
//! measured figure, its ratio to the machine's limit and whether it was met.

use std::fmt::Write as _;
use std::path::Path;

use serde::Deserialize;

use crate::bench::{BenchResult, SCENARIOS};
use crate::report::Report;
use crate::Error;

/// What `machine-limits.sh` measured.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct MachineLimits {
    pub fio_seq_write_64k_qd32_bytes_per_s: f64,
    pub fio_fdatasync_64k_qd1_us: SyncLatency,
    /// 1 MiB writes each followed by fdatasync, QD 1 ("fio durable", SPEC §6).
    #[serde(default)]
    pub fio_durable_write_1m_qd1_bytes_per_s: Option<f64>,
    /// The same with 100 KiB writes: one `peer-shape` call's bytes.
    #[serde(default)]
    pub fio_durable_write_100k_qd1_bytes_per_s: Option<f64>,
    #[serde(default)]
    pub fio_seq_read_1m_qd8_bytes_per_s: Option<f64>,
    pub iperf3_loopback_bytes_per_s: f64,
    /// `disk-floor.py`: back-to-back 64 KiB write + fdatasync rounds, quiet ...
    #[serde(default)]
    pub disk_floor_quiet: Option<DiskFloor>,
    /// ... and under background writes shaped like an engine's write-behind.
    #[serde(default)]
    pub disk_floor_loaded: Option<DiskFloor>,
    /// `vm-stalls.py`: whether the machine stops for the flush rate it is asked to do.
    #[serde(default)]
    pub vm_stalls: Option<VmStalls>,
}

/// `benches/scripts/vm-stalls.py`: a loop of 64 KiB write + fdatasync at each rate, and how
/// often a sleeping probe on another CPU woke more than 5 ms late meanwhile. A VM whose host
/// charges I/O emulation to the VM's CPU quota stalls past some flush rate (the reason for
/// the engine's `round_rate_max`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VmStalls {
    pub runs: Vec<VmStallRun>,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct VmStallRun {
    /// Flushes a second asked for (0: back to back) and done.
    pub rate_target: f64,
    pub flushes_per_s: f64,
    pub probe_seconds: f64,
    pub probe_gaps_over_5ms: u64,
    pub probe_gap_max_ms: f64,
}

/// The best open-loop acknowledgement latency a group commit could show on this disk
/// (`benches/scripts/disk-floor.py`): fio's per-operation percentiles hide a stall that an
/// open-loop producer's every record waits through.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct DiskFloor {
    pub seconds: f64,
    pub background_mb_per_s: f64,
    pub round_us: Percentiles,
    pub open_loop_ack_us: Percentiles,
    pub seconds_in_rounds_over_10ms: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct SyncLatency {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
}

/// Writes `output` from `dir/*.json`.
pub fn summarize_dir(dir: &Path, output: &Path) -> Result<(), Error> {
    let read = |name: &str| -> Result<Option<String>, Error> {
        match std::fs::read_to_string(dir.join(name)) {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::new(format!(
                "cannot read {}: {e}",
                dir.join(name).display()
            ))),
        }
    };
    let limits = match read("machine-limits.json")? {
        Some(t) => Some(
            serde_json::from_str::<MachineLimits>(&t)
                .map_err(|e| Error::new(format!("machine-limits.json: {e}")))?,
        ),
        None => None,
    };
    let mut results = Vec::new();
    for s in SCENARIOS {
        if let Some(t) = read(&format!("{}.json", s.name))? {
            let r: BenchResult = serde_json::from_str(&t)
                .map_err(|e| Error::new(format!("{}.json: {e}", s.name)))?;
            results.push(r);
        }
    }
    if results.is_empty() {
        return Err(Error::new(format!(
            "no scenario results in {}",
            dir.display()
        )));
    }
    std::fs::write(output, markdown(limits.as_ref(), &results))
        .map_err(|e| Error::new(format!("cannot write {}: {e}", output.display())))
}

fn find<'a>(results: &'a [BenchResult], name: &str) -> Option<&'a BenchResult> {
    results
        .iter()
        .find(|r| r.scenario == name && !r.runs.is_empty())
}

fn fig(r: Option<&BenchResult>, name: &str) -> Option<f64> {
    r.and_then(|r| r.figures.get(name).copied())
}

/// One row of the targets table.
struct Target {
    what: &'static str,
    goal: String,
    measured: String,
    ratio: String,
    met: Option<bool>,
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "**missed**",
        None => "not measured",
    }
}

fn gb(bytes_per_s: f64) -> String {
    format!("{:.2} GB/s", bytes_per_s / 1e9)
}

/// Microseconds as milliseconds, one decimal.
fn ms(us: f64) -> String {
    format!("{:.1} ms", us / 1e3)
}

fn targets(limits: Option<&MachineLimits>, results: &[BenchResult]) -> Vec<Target> {
    let mut t = Vec::new();
    let max1k = find(results, "max-1k");
    let bw = fig(max1k, "acked_bytes_per_s");
    // SPEC §6: "fio durable" (1 MiB write + fdatasync); older limit files lack it, and then
    // plain fio stands in.
    let durable = limits.map(|l| {
        l.fio_durable_write_1m_qd1_bytes_per_s
            .unwrap_or(l.fio_seq_write_64k_qd32_bytes_per_s)
    });
    let floor = limits
        .zip(durable)
        .map(|(l, d)| d.min(l.iperf3_loopback_bytes_per_s));
    t.push(Target {
        what: "durable ingest, 1 KiB records, over loopback",
        goal: match floor {
            Some(f) => format!("≥ 80 % of min(fio durable, iperf3) = {}", gb(0.8 * f)),
            None => "≥ 80 % of min(fio durable, iperf3)".into(),
        },
        measured: match (bw, fig(max1k, "acked_records_per_s")) {
            (Some(b), Some(r)) => format!("{} ({:.0} records/s)", gb(b), r),
            _ => "—".into(),
        },
        ratio: match (bw, floor) {
            (Some(b), Some(f)) => format!("{:.1} % of the machine's limit", 100.0 * b / f),
            _ => "—".into(),
        },
        met: bw.zip(floor).map(|(b, f)| b >= 0.8 * f),
    });
    let max100 = find(results, "max-100b");
    let per_core = fig(max100, "acked_records_per_s_per_engine_core");
    t.push(Target {
        what: "durable ingest, 100 B records, per engine core",
        goal: "≥ 5,000,000 records/s".into(),
        measured: per_core.map_or("—".into(), |r| format!("{r:.0} records/s")),
        ratio: per_core.map_or("—".into(), |r| format!("{:.1} % of the goal", r / 5e4)),
        met: per_core.map(|r| r >= 5e6),
    });
    let half = find(results, "latency-half");
    let sync99 = limits.map(|l| l.fio_fdatasync_64k_qd1_us.p99);
    let floor = limits.and_then(|l| l.disk_floor_loaded);
    for (what, name, factor) in [
        ("ack latency p99 at half of max load", "ack_p99_us", 2.0),
        ("ack latency p99.9 at half of max load", "ack_p999_us", 4.0),
    ] {
        let v = fig(half, name);
        let floor_pct = floor.map(|f| {
            if factor == 2.0 {
                f.open_loop_ack_us.p99
            } else {
                f.open_loop_ack_us.p999
            }
        });
        t.push(Target {
            what,
            goal: match sync99 {
                Some(s) => format!("≤ {factor:.0} × fdatasync p99 = {:.0} µs", factor * s),
                None => format!("≤ {factor:.0} × fio's fdatasync p99"),
            },
            measured: v.map_or("—".into(), |v| format!("{v:.0} µs")),
            ratio: match (v, sync99) {
                (Some(v), Some(s)) if s > 0.0 => format!(
                    "{:.1} × fdatasync p99{}",
                    v / s,
                    match floor_pct {
                        Some(f) if f > 0.0 => format!(" ({:.1} × the loaded disk floor)", v / f),
                        _ => String::new(),
                    }
                ),
                _ => "—".into(),
            },
            met: v.zip(sync99).map(|(v, s)| v <= factor * s),
        });
    }
    let fan = find(results, "fan-out");
    for (what, prefix) in [
        ("produce → consumer latency p99, 20 push consumers", ""),
        (
            "produce → consumer latency p99, 20 polling consumers",
            "poll_",
        ),
    ] {
        let e2e = fig(fan, &format!("{prefix}e2e_p99_us"));
        let ack = fig(fan, &format!("{prefix}ack_p99_us"));
        let ratio = fig(fan, &format!("{prefix}min_consumer_ratio"));
        t.push(Target {
            what,
            goal: "≤ ack p99 + 1 ms; each consumer ≈ the write rate".into(),
            measured: match (e2e, ack) {
                (Some(e), Some(a)) => format!(
                    "{e:.0} µs (ack p99 {a:.0} µs); slowest consumer {} × the write rate",
                    ratio.map_or("?".into(), |r| format!("{r:.3}"))
                ),
                _ => "—".into(),
            },
            ratio: match (e2e, ack) {
                (Some(e), Some(a)) => format!("{:+.0} µs over ack p99", e - a),
                _ => "—".into(),
            },
            // Results of the older fan-out scenario have no consumer ratio.
            met: e2e
                .zip(ack)
                .map(|(e, a)| e - a <= 1000.0 && ratio.is_none_or(|r| r >= 0.95)),
        });
    }
    let catch = find(results, "catch-up");
    let fio_read = limits.and_then(|l| l.fio_seq_read_1m_qd8_bytes_per_s);
    // A limited consumer's rate past its bucket's burst, else over its whole read.
    let limited = |i: u32| {
        fig(catch, &format!("limited_consumer_{i}_steady_mib_per_s"))
            .or_else(|| fig(catch, &format!("limited_consumer_{i}_mib_per_s")))
    };
    t.push(Target {
        what: "catch-up from TRIM_HORIZON: 2 push consumers with Kinesis limits; one unlimited",
        goal: "≈ 2 MiB/s each with limits; unlimited against fio's read bandwidth".into(),
        measured: match (
            limited(0),
            limited(1),
            fig(catch, "unlimited_push_mib_per_s"),
            fig(catch, "unlimited_backlog_mib"),
        ) {
            (Some(a), Some(b), Some(u), Some(mib)) => format!(
                "{a:.2} and {b:.2} MiB/s; unlimited {u:.0} MiB/s over a {mib:.0} MiB backlog"
            ),
            _ => "—".into(),
        },
        ratio: match (fig(catch, "unlimited_push_mib_per_s"), fio_read) {
            (Some(u), Some(f)) => format!("{:.2} × fio read", u * 1024.0 * 1024.0 / f),
            _ => "—".into(),
        },
        met: catch
            .filter(|r| !r.checks.is_empty())
            .map(|r| r.checks.iter().all(|c| c.passed)),
    });
    let failover = find(results, "group-failover");
    let reread = fig(failover, "read_again_after_s");
    t.push(Target {
        what: "consumer group: a worker of 4 crashes (8 shards, steady load)",
        goal: "its shards read again ≤ 10 s (default lease timeout); none missed".into(),
        measured: match (reread, fig(failover, "missed_by_group")) {
            (Some(r), Some(m)) => format!(
                "read again after {r:.2} s (lease timeout {} ms); {} records redelivered; \
                 {m:.0} missed",
                fig(failover, "lease_timeout_ms").unwrap_or(f64::NAN),
                fig(failover, "redelivered_after_drop").unwrap_or(f64::NAN)
            ),
            _ => "—".into(),
        },
        ratio: reread.map_or("—".into(), |r| format!("{:.2} × the goal", r / 10.0)),
        met: failover.map(|r| r.checks.iter().all(|c| c.passed)),
    });
    let density = find(results, "shard-density");
    let spc = fig(density, "shards_per_engine_core");
    // A shard at its limit writes ~1.0486 MB/s (1,000 records of 1,000 B + key).
    let density_goal = durable.map_or(1000.0, |d| (0.8 * d / 1.0486e6).floor().min(1000.0));
    t.push(Target {
        what: "shards per core at 1,000 records/s of 1,000 B, p99 ack ≤ 10 ms",
        goal: match durable {
            Some(_) => format!("≥ min(1,000, shards in 80 % of fio durable) = {density_goal:.0}"),
            None => "≥ min(1,000, shards in 80 % of fio durable)".into(),
        },
        measured: spc.map_or("—".into(), |s| format!("{s:.0}")),
        ratio: spc.map_or("—".into(), |s| {
            format!("{:.0} % of the goal", 100.0 * s / density_goal)
        }),
        met: spc.map(|s| s >= density_goal),
    });
    let small = find(results, "shard-density-small");
    let spc = fig(small, "shards_per_engine_core");
    t.push(Target {
        what: "shards per core at 1,000 records/s of 100 B, p99 ack ≤ 10 ms",
        goal: "≥ 1,000".into(),
        measured: spc.map_or("—".into(), |s| format!("{s:.0}")),
        ratio: spc.map_or("—".into(), |s| format!("{:.0} % of the goal", s / 10.0)),
        met: spc.map(|s| s >= 1000.0),
    });
    let many = find(results, "many-shards");
    t.push(Target {
        what: "10,000 shards on one core at 100 records/s of 100 B",
        goal: "ack p99 ≤ 10 ms; engine CPU per record within 20 % of 10 shards".into(),
        measured: match (
            fig(many, "many_ack_p99_us"),
            fig(many, "many_engine_cpu_ns_per_record"),
            fig(many, "few_engine_cpu_ns_per_record"),
        ) {
            (Some(p), m, f) => {
                let acked = fig(many, "many_acked_records_per_s").unwrap_or(0.0);
                let mut s = if acked == 0.0 {
                    // Overloaded: nothing due in the window was sent, so no latency.
                    "nothing due in the window acknowledged".to_string()
                } else {
                    format!("p99 {p:.0} µs")
                };
                // Behind the schedule, the engine still acknowledged older records.
                if let Some(w) = fig(many, "many_acks_in_window_per_s").filter(|w| *w > acked * 1.1)
                {
                    s += &format!(" (the engine acknowledged {w:.0} records/s, backlog included)");
                }
                if let (Some(m), Some(f)) = (m, f) {
                    s += &format!("; {m:.0} vs {f:.0} ns per record");
                }
                s
            }
            _ => "—".into(),
        },
        ratio: "—".into(),
        met: many.map(|r| r.checks.iter().all(|c| c.passed)),
    });
    let peer = find(results, "peer-shape");
    t.push(Target {
        what: "peer shape: 1 and 4 producers, one shard each, 1,000 B × 100 per call",
        goal: "≥ 80 % of fio durable with each".into(),
        measured: match (
            fig(peer, "producers_1_mb_per_s"),
            fig(peer, "producers_4_mb_per_s"),
        ) {
            (Some(a), Some(b)) => format!("{a:.0} MB/s; {b:.0} MB/s"),
            _ => "—".into(),
        },
        ratio: match (
            fig(peer, "producers_1_ratio_to_fio_durable"),
            fig(peer, "producers_4_ratio_to_fio_durable"),
        ) {
            (Some(a), Some(b)) => {
                let mut r = format!("{:.0} %; {:.0} % of fio durable", a * 100.0, b * 100.0);
                // One producer's calls are 100 KB: fio's own 100 KiB write + fdatasync at
                // queue depth 1 is the most any store acknowledging after a flush gets.
                if let Some(c) = fig(peer, "producers_1_ratio_to_fio_durable_100k") {
                    r += &format!(
                        " (one producer: {:.0} % of fio's 100 KiB durable)",
                        c * 100.0
                    );
                }
                r
            }
            _ => "—".into(),
        },
        met: peer
            .filter(|r| !r.checks.is_empty())
            .map(|r| r.checks.iter().all(|c| c.passed)),
    });
    let prod = find(results, "producer-path");
    t.push(Target {
        what: "Producer::send, 8 shards, 1 KiB",
        goal: "≥ 80 % of put_records; ack p99 ≤ 10 ms at half its maximum".into(),
        measured: match (
            fig(prod, "producer_acked_records_per_s"),
            fig(prod, "put_records_acked_records_per_s"),
            fig(prod, "producer_half_ack_p99_us"),
        ) {
            (Some(p), Some(q), Some(l)) => {
                format!("{p:.0} vs {q:.0} records/s; p99 {l:.0} µs at half")
            }
            _ => "—".into(),
        },
        ratio: match (
            fig(prod, "producer_acked_records_per_s"),
            fig(prod, "put_records_acked_records_per_s"),
        ) {
            (Some(p), Some(q)) if q > 0.0 => format!("{:.0} % of put_records", 100.0 * p / q),
            _ => "—".into(),
        },
        met: prod.map(|r| r.checks.iter().all(|c| c.passed)),
    });
    let churn = find(results, "control-churn");
    t.push(Target {
        what: "acks while another client creates and deletes streams (blocking calls off the executor)",
        goal: "ack p99 ≤ 2 × alone + 1 ms".into(),
        measured: match (
            fig(churn, "churn_ack_p99_us"),
            fig(churn, "alone_ack_p99_us"),
            fig(churn, "churn_pairs_per_s"),
        ) {
            (Some(c), Some(a), Some(p)) => {
                format!("p99 {c:.0} µs vs {a:.0} µs alone; {p:.0} create/delete pairs/s")
            }
            _ => "—".into(),
        },
        ratio: match (fig(churn, "churn_ack_p99_us"), fig(churn, "alone_ack_p99_us")) {
            (Some(c), Some(a)) if a > 0.0 => format!("{:.2} × alone", c / a),
            _ => "—".into(),
        },
        met: churn.map(|r| r.checks.iter().all(|c| c.passed)),
    });
    let reshard = find(results, "reshard");
    let scale_ms = reshard.and_then(|r| {
        r.figures
            .iter()
            .find(|(k, _)| k.starts_with("scale_4_to_") && k.ends_with("_ms"))
            .map(|(_, v)| *v)
    });
    t.push(Target {
        what: "resharding under steady load: a split, a merge, 4 → 8 → 4 shards, 4 → 64",
        goal: "0 lost, duplicated, reordered across the lineage; ack p99 during 4 → 8 and 8 → 4 \
               ≤ 2 × steady; a split or merge ≤ 100 ms; 4 → 64 ≤ 1 s"
            .into(),
        measured: match (
            fig(reshard, "split_ms"),
            fig(reshard, "merge_ms"),
            scale_ms,
            fig(reshard, "double_4_to_8_window_ack_p99_us"),
            fig(reshard, "halve_8_to_4_window_ack_p99_us"),
            fig(reshard, "steady_ack_p99_us"),
        ) {
            (Some(sp), Some(me), Some(sc), Some(d), Some(h), Some(st)) => format!(
                "split {sp:.0} ms, merge {me:.0} ms, 4 → 64 {sc:.0} ms; ack p99 {d:.0} µs \
                 (4 → 8), {h:.0} µs (8 → 4) vs {st:.0} µs steady; lost {}, duplicated {}, \
                 reordered {}",
                fig(reshard, "lost").unwrap_or(f64::NAN),
                fig(reshard, "duplicated").unwrap_or(f64::NAN),
                fig(reshard, "reordered").unwrap_or(f64::NAN),
            ),
            _ => "—".into(),
        },
        ratio: match (
            fig(reshard, "double_4_to_8_window_ack_p99_us"),
            fig(reshard, "halve_8_to_4_window_ack_p99_us"),
            fig(reshard, "steady_ack_p99_us"),
        ) {
            (Some(d), Some(h), Some(st)) if st > 0.0 => {
                format!("{:.2} ×, {:.2} × steady", d / st, h / st)
            }
            _ => "—".into(),
        },
        met: reshard.map(|r| r.checks.iter().all(|c| c.passed)),
    });
    let od = find(results, "on-demand");
    let scale_in = match (
        fig(od, "scale_in_first_after_s"),
        fig(od, "scale_in_to_4_after_s"),
        fig(od, "open_shards_at_step_down"),
        fig(od, "open_shards_at_end"),
    ) {
        (Some(first), Some(back), Some(a), Some(b)) => format!(
            "scale-in {a:.0} → {b:.0} shards, first {first:.0} s and back at 4 {back:.0} s after \
             the step down"
        ),
        (Some(first), None, Some(a), Some(b)) => {
            format!("scale-in {a:.0} → {b:.0} shards, first {first:.0} s after the step down")
        }
        (None, _, Some(a), _) => format!(
            "no scale-in within {:.0} s from {a:.0} shards (the server's on_demand_quiet_ms)",
            fig(od, "scale_in_wait_s").unwrap_or(f64::NAN)
        ),
        _ => "scale-in not measured".into(),
    };
    let lost_etc = format!(
        "lost {}, duplicated {}, reordered {}",
        fig(od, "lost").unwrap_or(f64::NAN),
        fig(od, "duplicated").unwrap_or(f64::NAN),
        fig(od, "reordered").unwrap_or(f64::NAN),
    );
    t.push(Target {
        what: "on-demand: offered load steps from 1 MiB/s to 16 MiB/s of 1 KiB records, then back",
        goal: "throttling stops ≤ 60 s after the step up; 0 lost, duplicated, reordered".into(),
        measured: match (
            fig(od, "throttling_stopped_after_s"),
            fig(od, "throttled_share_until_stopped"),
            fig(od, "open_shards_at_step_up"),
            fig(od, "open_shards_when_throttling_stopped"),
            fig(od, "open_shards_max"),
        ) {
            (Some(stop), Some(share), Some(a), Some(b), Some(m)) => format!(
                "throttling stopped {stop:.1} s after the step ({:.1} % of the records offered \
                 meanwhile throttled), {a:.0} → {b:.0} open shards by then, {m:.0} at most; \
                 {lost_etc}; {scale_in}",
                share * 100.0
            ),
            (None, _, _, _, Some(m)) => format!(
                "throttling did not stop within the high phase ({m:.0} open shards at most); \
                 {lost_etc}; {scale_in}"
            ),
            _ => "—".into(),
        },
        ratio: match fig(od, "throttling_stopped_after_s") {
            Some(stop) => format!("{:.2} × the goal", stop / 60.0),
            None => "—".into(),
        },
        met: od.map(|r| r.checks.iter().all(|c| c.passed)),
    });
    let limit = find(results, "shard-limit");
    t.push(Target {
        what: "one shard offered 2× its write limit",
        goal:
            "accepted within ±10 % of 1,000 records/s and of 1 MiB/s; rest throttled; nothing lost"
                .into(),
        measured: match (
            fig(limit, "records_run_acked_records_per_s"),
            fig(limit, "bytes_run_acked_mib_per_s"),
        ) {
            (Some(r), Some(b)) => format!("{r:.0} records/s; {b:.3} MiB/s"),
            _ => "—".into(),
        },
        ratio: "—".into(),
        met: limit.map(|l| l.checks.iter().all(|c| c.passed)),
    });
    t
}

/// The markdown section.
pub fn markdown(limits: Option<&MachineLimits>, results: &[BenchResult]) -> String {
    let mut s = String::new();
    let first = results.iter().flat_map(|r| r.runs.first()).next();
    let _ = writeln!(s, "## Load-generator scenarios\n");
    if results.iter().any(|r| r.quick) {
        let _ = writeln!(
            s,
            "**Quick mode (`--quick`): every run lasted half a second; nothing below is a \
             measurement.**\n"
        );
    }
    if let Some(r) = first {
        let m = &r.machine;
        let _ = writeln!(
            s,
            "Commit `{}`; {} ({} CPUs), kernel {}; engine on {} core(s), the load generator \
             pinned to CPU(s) {}. Each scenario is one `spate-loadgen bench NAME` command (given \
             under its table); `NAME.json` beside this file holds every run's full report. \
             *loadgen CPU* and *engine CPU* are each process's own CPU time over the measured \
             window, in cores; *CPUs busy* is every CPU's non-idle share over the same window \
             whoever ran there (kernel work and interrupts included: loopback TCP's receive \
             path runs on the sender's core, disk completions where the disk's interrupt \
             lands), with the share spent waiting for I/O in parentheses.\n",
            results[0].git_sha,
            m.cpu_model,
            m.cores,
            m.kernel,
            m.engine_cores,
            m.loadgen_cores
                .as_ref()
                .map_or("(unpinned)".into(), |c| crate::cpus::format_cpu_list(c)),
        );
    }
    match limits {
        Some(l) => {
            let f = l.fio_fdatasync_64k_qd1_us;
            let _ = writeln!(
                s,
                "### The machine's own limits (same session, `benches/scripts/machine-limits.sh`)\n\n\
                 | what | figure |\n|---|---|\n\
                 | fio sequential O_DIRECT write, 64 KiB, QD32, already-written file | {} |\n\
                 | fio 64 KiB write + fdatasync, QD1 | p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs |\n\
                 | fio durable: 1 MiB write + fdatasync, QD1 | {} |\n\
                 | fio durable at `peer-shape`'s call size: 100 KiB write + fdatasync, QD1 | {} |\n\
                 | fio sequential O_DIRECT read, 1 MiB, QD8 | {} |\n\
                 | iperf3 loopback, one stream | {} |",
                gb(l.fio_seq_write_64k_qd32_bytes_per_s),
                f.p50,
                f.p99,
                f.p999,
                l.fio_durable_write_1m_qd1_bytes_per_s.map_or("not measured".into(), gb),
                l.fio_durable_write_100k_qd1_bytes_per_s
                    .map_or("not measured".into(), gb),
                l.fio_seq_read_1m_qd8_bytes_per_s.map_or("not measured".into(), gb),
                gb(l.iperf3_loopback_bytes_per_s),
            );
            for floor in [l.disk_floor_quiet, l.disk_floor_loaded]
                .into_iter()
                .flatten()
            {
                let (r, o) = (floor.round_us, floor.open_loop_ack_us);
                let _ = writeln!(
                    s,
                    "| disk floor ({:.0} s of 64 KiB write + fdatasync rounds back to back, {}): \
                     round p50 / p99 / max; the open-loop ack latency they allow \
                     (`disk-floor.py`) | round {:.0} µs / {:.0} µs / {}; ack p50 {:.0} µs, \
                     p99 {:.0} µs, p99.9 {:.0} µs, max {}; {:.2} s in rounds over 10 ms |",
                    floor.seconds,
                    if floor.background_mb_per_s > 0.0 {
                        format!(
                            "under {:.0} MB/s of background writes",
                            floor.background_mb_per_s
                        )
                    } else {
                        "quiet".into()
                    },
                    r.p50,
                    r.p99,
                    ms(r.max),
                    o.p50,
                    o.p99,
                    o.p999,
                    ms(o.max),
                    floor.seconds_in_rounds_over_10ms,
                );
            }
            if let Some(v) = &l.vm_stalls {
                let runs: Vec<String> = v
                    .runs
                    .iter()
                    .map(|r| {
                        format!(
                            "{:.0}/s{}: {} gaps (max {:.1} ms)",
                            r.flushes_per_s,
                            if r.rate_target == 0.0 {
                                " (back to back)"
                            } else {
                                ""
                            },
                            r.probe_gaps_over_5ms,
                            r.probe_gap_max_ms
                        )
                    })
                    .collect();
                let _ = writeln!(
                    s,
                    "| VM stalls: 64 KiB write + fdatasync at each rate, and a sleeping probe on \
                     another CPU's wake-ups over 5 ms late in {:.0} s (`vm-stalls.py`; the \
                     engine's `round_rate_max` keeps its rounds under the rate that stalls) | {} |",
                    v.runs.first().map_or(0.0, |r| r.probe_seconds),
                    runs.join("; ")
                );
            }
            s.push('\n');
        }
        None => {
            let _ = writeln!(
                s,
                "(No machine-limits.json: ratios to the machine's limits are missing.)\n"
            );
        }
    }
    let _ = writeln!(
        s,
        "### Targets (SPEC §6)\n\n| target | goal | measured | ratio | verdict |\n|---|---|---|---|---|"
    );
    for t in targets(limits, results) {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            t.what,
            t.goal,
            t.measured,
            t.ratio,
            verdict(t.met)
        );
    }
    s.push('\n');
    for r in results {
        scenario_section(&mut s, r);
    }
    s
}

fn scenario_section(s: &mut String, r: &BenchResult) {
    let _ = writeln!(s, "### `{}`: {}\n", r.scenario, r.description);
    if r.quick {
        let _ = writeln!(
            s,
            "*Quick mode: these runs only check that the scenario works.*\n"
        );
    }
    let _ = writeln!(
        s,
        "| run | shards | offered | acked records/s | MiB/s | ack p50 | p90 | p99 | p99.9 | p99.99 | max | e2e p99 | throttled | errors | loadgen CPU | engine CPU | CPUs busy (iowait) |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for (i, run) in r.runs.iter().enumerate() {
        run_row(s, i + 1, run);
    }
    s.push('\n');
    if !r.figures.is_empty() {
        let figures: Vec<String> = r
            .figures
            .iter()
            .map(|(k, v)| format!("`{k}` = {}", fmt_num(*v)))
            .collect();
        let _ = writeln!(s, "Figures: {}.\n", figures.join(", "));
    }
    for c in &r.checks {
        let _ = writeln!(
            s,
            "- check: {} — {} ({})",
            c.name,
            if c.passed { "passed" } else { "**missed**" },
            c.detail
        );
    }
    for n in &r.notes {
        let _ = writeln!(s, "- note: {n}");
    }
    if !r.checks.is_empty() || !r.notes.is_empty() {
        s.push('\n');
    }
    let _ = writeln!(s, "```sh\n{}", r.command);
    for run in &r.runs {
        let _ = writeln!(s, "# run: {}", run.command);
    }
    let _ = writeln!(s, "```\n");
}

fn run_row(s: &mut String, i: usize, r: &Report) {
    let a = &r.ack_latency_us;
    let cpu = |c: Option<f64>| c.map_or("—".into(), |c| format!("{c:.2} cores"));
    let _ = writeln!(
        s,
        "| {i} | {} | {} | {:.0} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        r.shards,
        r.offered_records_per_s
            .map_or("closed loop".into(), |o| format!("{o:.0}/s")),
        r.acked_records_per_s,
        r.acked_mib_per_s,
        us(a.p50),
        us(a.p90),
        us(a.p99),
        us(a.p999),
        us(a.p9999),
        us(a.max),
        match (r.e2e_latency_us, r.consumer_mode) {
            (Some(e), Some(mode)) => format!("{} ({})", us(e.p99), mode.name()),
            (Some(e), None) => us(e.p99),
            (None, _) => "—".into(),
        },
        r.records_throttled,
        r.errors,
        cpu(Some(r.loadgen_cpu.cores_used)),
        cpu(r.engine_cpu.map(|c| c.cores_used)),
        r.cpus
            .iter()
            .map(|c| format!("{}: {:.0} % ({:.0} %)", c.cpu, c.busy * 100.0, c.iowait * 100.0))
            .collect::<Vec<_>>()
            .join(", "),
    );
}

fn us(v: u64) -> String {
    if v >= 10_000 {
        format!("{:.1} ms", v as f64 / 1000.0)
    } else {
        format!("{v} µs")
    }
}

fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn result(name: &str, figures: &[(&str, f64)]) -> BenchResult {
        BenchResult {
            scenario: name.into(),
            description: "d".into(),
            command: format!("spate-loadgen bench {name}"),
            started_unix_s: 0,
            git_sha: "abc".into(),
            engine_cores: 1,
            quick: false,
            figures: figures
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect::<BTreeMap<_, _>>(),
            checks: Vec::new(),
            notes: vec!["a note".into()],
            runs: vec![crate::report::tests::sample()],
        }
    }

    #[test]
    fn targets_compare_with_the_machine_limits() {
        let limits = MachineLimits {
            fio_seq_write_64k_qd32_bytes_per_s: 3e9,
            fio_fdatasync_64k_qd1_us: SyncLatency {
                p50: 35.0,
                p99: 100.0,
                p999: 200.0,
            },
            fio_durable_write_1m_qd1_bytes_per_s: Some(2.9e9),
            fio_durable_write_100k_qd1_bytes_per_s: Some(1.2e9),
            fio_seq_read_1m_qd8_bytes_per_s: Some(2.0e9),
            iperf3_loopback_bytes_per_s: 2.5e9,
            disk_floor_quiet: None,
            disk_floor_loaded: Some(DiskFloor {
                seconds: 30.0,
                background_mb_per_s: 190.0,
                round_us: Percentiles {
                    p50: 110.0,
                    p99: 275.0,
                    p999: 900.0,
                    max: 4600.0,
                },
                open_loop_ack_us: Percentiles {
                    p50: 190.0,
                    p99: 300.0,
                    p999: 2000.0,
                    max: 4800.0,
                },
                seconds_in_rounds_over_10ms: 0.0,
            }),
            vm_stalls: Some(VmStalls {
                runs: vec![
                    VmStallRun {
                        rate_target: 0.0,
                        flushes_per_s: 2731.0,
                        probe_seconds: 6.0,
                        probe_gaps_over_5ms: 21,
                        probe_gap_max_ms: 21.48,
                    },
                    VmStallRun {
                        rate_target: 1000.0,
                        flushes_per_s: 990.0,
                        probe_seconds: 6.0,
                        probe_gaps_over_5ms: 0,
                        probe_gap_max_ms: 0.0,
                    },
                ],
            }),
        };
        let results = vec![
            result(
                "max-1k",
                &[("acked_bytes_per_s", 2.1e9), ("acked_records_per_s", 2e6)],
            ),
            result(
                "latency-half",
                &[("ack_p99_us", 150.0), ("ack_p999_us", 500.0)],
            ),
            result(
                "peer-shape",
                &[
                    ("producers_1_mb_per_s", 600.0),
                    ("producers_4_mb_per_s", 2400.0),
                    ("producers_1_ratio_to_fio_durable", 600.0 / 2900.0),
                    ("producers_4_ratio_to_fio_durable", 2400.0 / 2900.0),
                    ("producers_1_ratio_to_fio_durable_100k", 0.5),
                ],
            ),
            result(
                "on-demand",
                &[
                    ("throttling_stopped_after_s", 10.5),
                    ("throttled_share_until_stopped", 0.373),
                    ("open_shards_at_step_up", 4.0),
                    ("open_shards_when_throttling_stopped", 16.0),
                    ("open_shards_max", 31.0),
                    ("open_shards_at_step_down", 31.0),
                    ("open_shards_at_end", 31.0),
                    ("scale_in_wait_s", 60.0),
                    ("lost", 0.0),
                    ("duplicated", 0.0),
                    ("reordered", 0.0),
                ],
            ),
        ];
        let md = markdown(Some(&limits), &results);
        // 2.1 GB/s against 0.8 × 2.5 GB/s: met, at 84 % of the limit.
        assert!(
            md.contains("| 2.10 GB/s (2000000 records/s) | 84.0 % of the machine's limit | met |"),
            "{md}"
        );
        // p99 150 µs ≤ 200 µs met; p99.9 500 µs > 400 µs missed.
        assert!(
            md.contains("| 150 µs | 1.5 × fdatasync p99 (0.5 × the loaded disk floor) | met |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| 500 µs | 5.0 × fdatasync p99 (0.2 × the loaded disk floor) | **missed** |"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "under 190 MB/s of background writes): round p50 / p99 / max; the open-loop \
                 ack latency they allow (`disk-floor.py`) | round 110 µs / 275 µs / 4.6 ms; \
                 ack p50 190 µs, p99 300 µs, p99.9 2000 µs, max 4.8 ms; 0.00 s in rounds over \
                 10 ms |"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "over 5 ms late in 6 s (`vm-stalls.py`; the engine's `round_rate_max` keeps its \
                 rounds under the rate that stalls) | 2731/s (back to back): 21 gaps (max 21.5 \
                 ms); 990/s: 0 gaps (max 0.0 ms) |"
            ),
            "{md}"
        );
        assert!(md.contains("| not measured |"));
        // One producer measured against fio at its own call size too.
        assert!(
            md.contains(
                "| 600 MB/s; 2400 MB/s | 21 %; 83 % of fio durable (one producer: 50 % of \
                 fio's 100 KiB durable) |"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "| fio durable at `peer-shape`'s call size: 100 KiB write + fdatasync, QD1 | \
                 1.20 GB/s |"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "| throttling stopped 10.5 s after the step (37.3 % of the records offered \
                 meanwhile throttled), 4 → 16 open shards by then, 31 at most; lost 0, \
                 duplicated 0, reordered 0; no scale-in within 60 s from 31 shards (the server's \
                 on_demand_quiet_ms) | 0.17 × the goal | met |"
            ),
            "{md}"
        );
        assert!(
            md.contains("spate-loadgen bench max-1k")
                && md.contains("# run: spate-loadgen --server")
        );
        assert!(md.contains("- note: a note"));
    }

    #[test]
    fn many_shards_says_what_the_engine_acknowledged_under_overload() {
        let row = |figures: &[(&str, f64)]| {
            let md = markdown(None, &[result("many-shards", figures)]);
            md.lines()
                .find(|l| l.starts_with("| 10,000 shards on one core"))
                .expect("the many-shards row")
                .to_string()
        };
        // Nothing due in the window was sent: no latency to give, but the acknowledgements
        // of the backlog and the CPU per acknowledged record.
        let over = row(&[
            ("many_ack_p99_us", 0.0),
            ("many_acked_records_per_s", 0.0),
            ("many_acks_in_window_per_s", 172_000.0),
            ("many_engine_cpu_ns_per_record", 4600.0),
            ("few_engine_cpu_ns_per_record", 480.0),
        ]);
        assert!(
            over.contains(
                "| nothing due in the window acknowledged (the engine acknowledged 172000 \
                 records/s, backlog included); 4600 vs 480 ns per record |"
            ),
            "{over}"
        );
        // Keeping up: the window's acknowledgements are its records'; no backlog to mention.
        let kept = row(&[
            ("many_ack_p99_us", 8000.0),
            ("many_acked_records_per_s", 1e6),
            ("many_acks_in_window_per_s", 1.01e6),
        ]);
        assert!(kept.contains("| p99 8000 µs |"), "{kept}");
    }

    #[test]
    fn fan_out_catch_up_and_failover_targets() {
        let limits = MachineLimits {
            fio_seq_write_64k_qd32_bytes_per_s: 3e9,
            fio_fdatasync_64k_qd1_us: SyncLatency {
                p50: 35.0,
                p99: 100.0,
                p999: 200.0,
            },
            fio_durable_write_1m_qd1_bytes_per_s: None,
            fio_durable_write_100k_qd1_bytes_per_s: None,
            fio_seq_read_1m_qd8_bytes_per_s: Some(1024.0 * 1024.0 * 1000.0),
            iperf3_loopback_bytes_per_s: 2.5e9,
            disk_floor_quiet: None,
            disk_floor_loaded: None,
            vm_stalls: None,
        };
        let results = vec![
            result(
                "fan-out",
                &[
                    ("e2e_p99_us", 2500.0),
                    ("ack_p99_us", 2000.0),
                    ("min_consumer_ratio", 0.999),
                    ("poll_e2e_p99_us", 4000.0),
                    ("poll_ack_p99_us", 2000.0),
                    ("poll_min_consumer_ratio", 1.0),
                ],
            ),
            result(
                "catch-up",
                &[
                    ("limited_consumer_0_steady_mib_per_s", 1.98),
                    ("limited_consumer_1_mib_per_s", 2.2),
                    ("unlimited_push_mib_per_s", 500.0),
                    ("unlimited_backlog_mib", 256.0),
                ],
            ),
            result(
                "group-failover",
                &[
                    ("read_again_after_s", 6.3),
                    ("missed_by_group", 0.0),
                    ("lease_timeout_ms", 6000.0),
                    ("redelivered_after_drop", 12.0),
                ],
            ),
        ];
        let md = markdown(Some(&limits), &results);
        assert!(
            md.contains(
                "| produce → consumer latency p99, 20 push consumers | ≤ ack p99 + 1 ms; each \
                 consumer ≈ the write rate | 2500 µs (ack p99 2000 µs); slowest consumer 0.999 × \
                 the write rate | +500 µs over ack p99 | met |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| 4000 µs (ack p99 2000 µs); slowest consumer 1.000 × the write rate | +2000 µs over ack p99 | **missed** |"),
            "{md}"
        );
        assert!(
            md.contains("| 1.98 and 2.20 MiB/s; unlimited 500 MiB/s over a 256 MiB backlog | 0.50 × fio read |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| read again after 6.30 s (lease timeout 6000 ms); 12 records redelivered; 0 \
                 missed | 0.63 × the goal | met |"
            ),
            "{md}"
        );
    }

    #[test]
    fn summarize_reads_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("RESULTS.md");
        assert!(
            summarize_dir(dir.path(), &out).is_err(),
            "nothing to summarise"
        );
        let r = result("max-100b", &[("acked_records_per_s_per_engine_core", 6e6)]);
        std::fs::write(
            dir.path().join("max-100b.json"),
            serde_json::to_string(&r).unwrap(),
        )
        .unwrap();
        summarize_dir(dir.path(), &out).unwrap();
        let md = std::fs::read_to_string(&out).unwrap();
        assert!(
            md.contains("| 6000000 records/s | 120.0 % of the goal | met |"),
            "{md}"
        );
        assert!(md.contains("No machine-limits.json"));
    }
}
