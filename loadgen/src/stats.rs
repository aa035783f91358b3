//! Latency histograms and the counters a run keeps, and CPU accounting.
//!
//! Latencies are recorded in microseconds into HdrHistograms (3 significant digits, 1 µs
//! to 1 hour), so percentiles up to p99.99 and the maximum are exact to 0.1 %. Each
//! producer's collector and each consumer owns its histograms behind a mutex that only it
//! and the once-a-second progress printer take; they are merged at the end. With progress
//! lines on, each also keeps a second histogram of the last second only, which the progress
//! printer merges and resets every second.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency recorded exactly (1 hour); anything slower is clamped to it.
const LATENCY_US_MAX: u64 = 3_600_000_000;

/// A latency histogram in microseconds.
#[derive(Debug, Clone)]
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Latency(Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid histogram bounds"))
    }
}

impl Latency {
    /// Records one latency given in nanoseconds (rounded up to a whole microsecond, so a
    /// sub-microsecond latency still counts as 1 µs).
    pub fn record_ns(&mut self, ns: u64) {
        self.0
            .saturating_record(ns.div_ceil(1000).clamp(1, LATENCY_US_MAX));
    }

    pub fn add(&mut self, other: &Latency) {
        self.0
            .add(&other.0)
            .expect("histograms with the same bounds");
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The highest value recorded in µs; 0 when empty.
    pub fn max(&self) -> u64 {
        if self.0.is_empty() {
            0
        } else {
            self.0.max()
        }
    }

    /// Forgets every value (keeps the allocation): for the per-second progress histograms.
    pub fn reset(&mut self) {
        self.0.reset();
    }

    /// The value at `percentile` (0..=100) in µs; 0 when empty.
    pub fn at(&self, percentile: f64) -> u64 {
        if self.0.is_empty() {
            0
        } else {
            self.0.value_at_percentile(percentile)
        }
    }

    pub fn summary(&self) -> Percentiles {
        Percentiles {
            p50: self.at(50.0),
            p90: self.at(90.0),
            p99: self.at(99.0),
            p999: self.at(99.9),
            p9999: self.at(99.99),
            max: self.max(),
            mean: if self.0.is_empty() {
                0.0
            } else {
                self.0.mean()
            },
            count: self.count(),
        }
    }

    /// The latency at a fixed set of percentiles, for plots: `[percentile, µs]` pairs.
    pub fn spectrum(&self) -> Vec<[f64; 2]> {
        if self.0.is_empty() {
            return Vec::new();
        }
        SPECTRUM_PERCENTILES
            .iter()
            .map(|&p| [p, if p >= 100.0 { self.0.max() } else { self.at(p) } as f64])
            .collect()
    }
}

const SPECTRUM_PERCENTILES: &[f64] = &[
    0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.995, 99.999, 100.0,
];

/// The percentiles SPEC §5 names, in microseconds, plus mean and count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub p9999: u64,
    pub max: u64,
    pub mean: f64,
    pub count: u64,
}

/// CPU time of a process (or this one), from `getrusage` or `/proc/PID/stat`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuTimes {
    pub user_s: f64,
    pub sys_s: f64,
}

impl CpuTimes {
    /// This process's CPU time so far (every thread).
    pub fn of_self() -> CpuTimes {
        // SAFETY: getrusage writes into the zeroed struct we own; RUSAGE_SELF is valid.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
        assert_eq!(rc, 0, "getrusage(RUSAGE_SELF) cannot fail");
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        CpuTimes {
            user_s: secs(ru.ru_utime),
            sys_s: secs(ru.ru_stime),
        }
    }

    /// Another process's CPU time so far, from `/proc/PID/stat`; `None` if it is gone.
    pub fn of_pid(pid: u32) -> Option<CpuTimes> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        parse_proc_stat(&stat, clock_ticks_per_s())
    }

    pub fn since(&self, earlier: &CpuTimes) -> CpuTimes {
        CpuTimes {
            user_s: self.user_s - earlier.user_s,
            sys_s: self.sys_s - earlier.sys_s,
        }
    }

    pub fn total_s(&self) -> f64 {
        self.user_s + self.sys_s
    }
}

fn clock_ticks_per_s() -> f64 {
    // SAFETY: sysconf has no memory effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime and stime (fields 14 and 15) of a `/proc/PID/stat` line. The command name (field
/// 2) may hold spaces and parentheses, so fields are counted after its last `)`.
pub(crate) fn parse_proc_stat(stat: &str, ticks_per_s: f64) -> Option<CpuTimes> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // `rest` starts at field 3 (state); utime is field 14.
    let utime: f64 = fields.nth(11)?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some(CpuTimes {
        user_s: utime / ticks_per_s,
        sys_s: stime / ticks_per_s,
    })
}

/// CPU use over a measured interval, as reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuUse {
    pub user_s: f64,
    pub sys_s: f64,
    /// Cores' worth of CPU used on average (1.0 = one core fully busy).
    pub cores_used: f64,
    /// `cores_used` over the number of cores the program was given, when known.
    pub utilization: Option<f64>,
}

impl CpuUse {
    pub fn over(t: CpuTimes, wall_s: f64, cores: Option<usize>) -> CpuUse {
        let cores_used = if wall_s > 0.0 {
            t.total_s() / wall_s
        } else {
            0.0
        };
        CpuUse {
            user_s: t.user_s,
            sys_s: t.sys_s,
            cores_used,
            utilization: cores.filter(|&c| c > 0).map(|c| cores_used / c as f64),
        }
    }
}

/// One CPU's time counters from `/proc/stat` (clock ticks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTicks {
    pub cpu: usize,
    pub user: u64,
    pub system: u64,
    /// Hard and soft interrupts.
    pub irq: u64,
    pub iowait: u64,
    pub idle: u64,
    /// Stolen by the hypervisor.
    pub steal: u64,
}

/// Every CPU's counters now; empty where `/proc/stat` is missing.
pub fn cpu_ticks() -> Vec<CpuTicks> {
    std::fs::read_to_string("/proc/stat")
        .map(|s| parse_cpu_ticks(&s))
        .unwrap_or_default()
}

pub(crate) fn parse_cpu_ticks(stat: &str) -> Vec<CpuTicks> {
    stat.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let cpu: usize = f.next()?.strip_prefix("cpu")?.parse().ok()?;
            let v: Vec<u64> = f.map_while(|x| x.parse().ok()).collect();
            let at = |i: usize| v.get(i).copied().unwrap_or(0);
            // user nice system idle iowait irq softirq steal
            Some(CpuTicks {
                cpu,
                user: at(0) + at(1),
                system: at(2),
                idle: at(3),
                iowait: at(4),
                irq: at(5) + at(6),
                steal: at(7),
            })
        })
        .collect()
}

/// How one CPU spent the measured window (fractions of it), whoever ran there: the
/// engine, the load generator, kernel threads, interrupt handlers or other programs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CoreUse {
    pub cpu: usize,
    /// user + system + irq (not idle, not waiting for I/O, not stolen).
    pub busy: f64,
    pub user: f64,
    pub system: f64,
    pub irq: f64,
    /// Idle with I/O outstanding.
    pub iowait: f64,
    pub steal: f64,
}

/// Each CPU's use between two samples of [`cpu_ticks`].
pub fn core_use(before: &[CpuTicks], after: &[CpuTicks]) -> Vec<CoreUse> {
    after
        .iter()
        .filter_map(|a| {
            let b = before.iter().find(|b| b.cpu == a.cpu)?;
            let d = |x: u64, y: u64| x.saturating_sub(y) as f64;
            let (user, system, irq) = (d(a.user, b.user), d(a.system, b.system), d(a.irq, b.irq));
            let (iowait, idle, steal) = (
                d(a.iowait, b.iowait),
                d(a.idle, b.idle),
                d(a.steal, b.steal),
            );
            let total = user + system + irq + iowait + idle + steal;
            (total > 0.0).then(|| CoreUse {
                cpu: a.cpu,
                busy: (user + system + irq) / total,
                user: user / total,
                system: system / total,
                irq: irq / total,
                iowait: iowait / total,
                steal: steal / total,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = Latency::default();
        for us in 1..=10_000u64 {
            h.record_ns(us * 1000);
        }
        let s = h.summary();
        assert_eq!(s.count, 10_000);
        let near = |got: u64, want: u64| got.abs_diff(want) * 1000 <= want;
        assert!(
            near(s.p50, 5000) && near(s.p90, 9000) && near(s.p99, 9900),
            "{s:?}"
        );
        assert!(
            near(s.p999, 9990) && near(s.p9999, 9999) && near(s.max, 10_000),
            "{s:?}"
        );
        let spectrum = h.spectrum();
        assert_eq!(spectrum.first().unwrap()[0], 0.0);
        assert_eq!(spectrum.last().unwrap(), &[100.0, s.max as f64]);
        assert!(spectrum.windows(2).all(|w| w[0][1] <= w[1][1]));
    }

    #[test]
    fn empty_and_extreme_latencies() {
        let mut h = Latency::default();
        assert_eq!(h.summary(), Percentiles::default());
        assert!(h.spectrum().is_empty());
        h.record_ns(0);
        h.record_ns(1);
        h.record_ns(u64::MAX);
        assert_eq!(h.summary().p50, 1);
        assert!(h.summary().max >= LATENCY_US_MAX);
        let mut g = Latency::default();
        g.add(&h);
        assert_eq!(g.count(), 3);
        g.reset();
        assert_eq!(g.summary(), Percentiles::default());
    }

    #[test]
    fn proc_stat_fields() {
        let line =
            "1234 (spate (serve) x) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 \
                    100 1000000 500 18446744073709551615";
        let t = parse_proc_stat(line, 100.0).unwrap();
        assert_eq!((t.user_s, t.sys_s), (2.5, 0.5));
        assert!(parse_proc_stat("garbage", 100.0).is_none());
        let me = CpuTimes::of_pid(std::process::id()).expect("own /proc entry");
        assert!(me.total_s() >= 0.0);
        assert!(CpuTimes::of_self().total_s() >= 0.0);
    }

    #[test]
    fn per_cpu_use_from_proc_stat() {
        let before = parse_cpu_ticks(
            "cpu  1 2 3 4 5 6 7 8 9 10\ncpu0 100 0 50 800 50 0 0 0 0 0\ncpu1 10 0 10 900 0 0 80 0 0 0\nintr 5\n",
        );
        assert_eq!(before.len(), 2, "the aggregate line is skipped");
        let after =
            parse_cpu_ticks("cpu0 160 0 70 800 70 0 0 0 0 0\ncpu1 60 0 30 910 0 0 100 0 0 0\n");
        let u = core_use(&before, &after);
        assert_eq!(u.len(), 2);
        // CPU 0: 60 user + 20 system busy, 20 iowait of 100 ticks.
        assert_eq!((u[0].cpu, u[0].busy, u[0].iowait), (0, 0.8, 0.2));
        // CPU 1: 50 user + 20 system + 20 softirq busy, 10 idle.
        assert_eq!((u[1].busy, u[1].irq), (0.9, 0.2));
        assert!(!cpu_ticks().is_empty());
    }

    #[test]
    fn cpu_use_over_an_interval() {
        let u = CpuUse::over(
            CpuTimes {
                user_s: 1.5,
                sys_s: 0.5,
            },
            4.0,
            Some(2),
        );
        assert_eq!((u.cores_used, u.utilization), (0.5, Some(0.25)));
    }
}
