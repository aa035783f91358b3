//! When each record is due: the open-loop schedule, and pacing to it.
//!
//! With `--rate R > 0` the run is *open loop*: record `n` of the whole run (counting every
//! producer's records together) is due `n / R` seconds after the start, whatever happened
//! to the records before it. Producer `p` of `P` sends records `p, p + P, p + 2P, ...`, so
//! the producers interleave evenly and together offer exactly `R` records per second.
//! Latency is measured from a record's due time, not from when it was finally sent: a
//! server that stalls for a second makes every record due during that second late, and
//! the tail shows it. A closed-loop generator (the next request waits for an answer) would
//! send nothing during the stall and record a single slow request — the *coordinated
//! omission* wrk2 was written to avoid.
//!
//! With `--rate 0` the run is *closed loop*: each producer sends as fast as its window of
//! outstanding records allows, and latency is measured from the send.
//!
//! Pacing: tokio's timer has millisecond resolution, too coarse for sub-millisecond
//! latency figures. A generator whose next record is due more than `spin` away sleeps on
//! the timer until `spin` before it, then yields to the runtime in a loop until the due
//! instant. Spinning costs CPU on the load generator's own cores (never the engine's), so
//! at low rates the load generator's CPU use is an upper bound of what it needed.

use std::time::{Duration, Instant};

/// The due times of one producer's records.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// The run's rates in time order (one for a constant rate); all 0 for closed loop.
    segments: Vec<Segment>,
    producer: u64,
    producers: u64,
    /// Nothing is due at or after this offset from the start.
    end_ns: u64,
}

/// From `start_ns` on, record `first + j` of the whole run is due at
/// `start_ns + j / rate` s (until the next segment starts).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Segment {
    start_ns: u64,
    first: u64,
    rate: f64,
}

impl Segment {
    fn due(&self, n: u64) -> f64 {
        self.start_ns as f64 + (n - self.first) as f64 * 1e9 / self.rate
    }
}

impl Schedule {
    /// The schedule of producer `producer` of `producers` sharing `rate` records per second
    /// (0: closed loop) for `run` (warm-up included).
    pub fn new(rate: f64, producer: usize, producers: usize, run: Duration) -> Schedule {
        Schedule::with_steps(rate, &[], producer, producers, run)
    }

    /// The same with the rate changing at offsets from the start: `(at, rate)` in time
    /// order, each rate positive (`rate` holds until the first). Record `n` of the run is
    /// due at its segment's start plus its place in the segment over the segment's rate,
    /// so due times never drift, and a step takes effect exactly at its time.
    pub fn with_steps(
        rate: f64,
        steps: &[(Duration, f64)],
        producer: usize,
        producers: usize,
        run: Duration,
    ) -> Schedule {
        assert!(producer < producers, "producer {producer} of {producers}");
        assert!(rate >= 0.0 && rate.is_finite(), "rate {rate}");
        let mut segments = vec![Segment {
            start_ns: 0,
            first: 0,
            rate,
        }];
        if rate > 0.0 {
            for &(at, r) in steps {
                assert!(r > 0.0 && r.is_finite(), "rate {r}");
                let at_ns = u64::try_from(at.as_nanos()).expect("a step within 584 years");
                let prev = *segments.last().expect("one segment at least");
                assert!(at_ns >= prev.start_ns, "rate steps in time order");
                // The previous segment's records due before the step: estimate, then
                // correct the estimate's rounding against the due times themselves.
                let before = |m: u64| prev.due(prev.first + m) < at_ns as f64;
                let mut m = ((at_ns - prev.start_ns) as f64 * prev.rate / 1e9) as u64;
                while m > 0 && !before(m - 1) {
                    m -= 1;
                }
                while before(m) {
                    m += 1;
                }
                segments.push(Segment {
                    start_ns: at_ns,
                    first: prev.first + m,
                    rate: r,
                });
            }
        }
        Schedule {
            segments,
            producer: producer as u64,
            producers: producers as u64,
            end_ns: u64::try_from(run.as_nanos()).expect("run shorter than 584 years"),
        }
    }

    pub fn is_open_loop(&self) -> bool {
        self.segments[0].rate > 0.0
    }

    pub fn end_ns(&self) -> u64 {
        self.end_ns
    }

    /// Offset from the start at which this producer's `k`-th record (0-based) is due;
    /// `None` once it would be due at or after the end, and always `None` in closed loop.
    pub fn due_ns(&self, k: u64) -> Option<u64> {
        let n = k.checked_mul(self.producers)?.checked_add(self.producer)?;
        self.global_due_ns(n)
    }

    /// When record `n` of the whole run is due.
    fn global_due_ns(&self, n: u64) -> Option<u64> {
        if !self.is_open_loop() {
            return None;
        }
        // The last segment starting at or before record n (a segment that holds no record
        // shares its `first` with the next one, which is the one that counts).
        let i = self.segments.partition_point(|s| s.first <= n) - 1;
        // f64 is exact for n up to 2^53; the rounding of a nanosecond is irrelevant, and
        // every due time is computed from n and its segment alone, so no error accumulates.
        let due = self.segments[i].due(n);
        (due < self.end_ns as f64).then_some(due as u64)
    }

    /// How many of this producer's records are due at or before `elapsed_ns`; 0 in closed
    /// loop.
    pub fn due_count(&self, elapsed_ns: u64) -> u64 {
        if !self.is_open_loop() {
            return 0;
        }
        let is_due = |n: u64| self.global_due_ns(n).is_some_and(|d| d <= elapsed_ns);
        // Global records 0..g are due by then: estimate g, then correct the estimate's
        // rounding against the due times themselves.
        let t = elapsed_ns.min(self.end_ns);
        let seg = self.segments[self.segments.partition_point(|s| s.start_ns <= t) - 1];
        let mut g = seg.first + ((t - seg.start_ns) as f64 * seg.rate / 1e9) as u64;
        while g > 0 && !is_due(g - 1) {
            g -= 1;
        }
        while is_due(g) {
            g += 1;
        }
        // Of global records 0..g, this producer holds those with n % P == p.
        if g <= self.producer {
            0
        } else {
            (g - self.producer).div_ceil(self.producers)
        }
    }
}

/// Waits until `due` with sub-millisecond accuracy; see the module docs.
pub async fn wait_until(due: Instant, spin: Duration) {
    let now = Instant::now();
    if due <= now {
        return;
    }
    if due - now > spin {
        tokio::time::sleep_until((due - spin).into()).await;
    }
    while Instant::now() < due {
        tokio::task::yield_now().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producers_interleave_and_offer_the_rate_together() {
        let run = Duration::from_secs(1);
        let p = 3;
        let schedules: Vec<Schedule> = (0..p).map(|i| Schedule::new(1000.0, i, p, run)).collect();
        let mut all: Vec<u64> = Vec::new();
        for s in &schedules {
            let mut k = 0;
            while let Some(due) = s.due_ns(k) {
                all.push(due);
                k += 1;
            }
        }
        all.sort_unstable();
        // 1,000 records in one second, one every millisecond, none at or past the end.
        assert_eq!(all.len(), 1000);
        for (n, due) in all.iter().enumerate() {
            assert_eq!(*due, n as u64 * 1_000_000, "record {n}");
        }
        // Producer 1's records are global records 1, 4, 7, ...
        assert_eq!(schedules[1].due_ns(0), Some(1_000_000));
        assert_eq!(schedules[1].due_ns(2), Some(7_000_000));
    }

    #[test]
    fn due_times_do_not_drift() {
        // 3 records a second for an hour: record n is due at exactly n/3 s, no accumulated
        // rounding.
        let s = Schedule::new(3.0, 0, 1, Duration::from_secs(3600));
        assert_eq!(s.due_ns(3 * 3599), Some(3_599_000_000_000));
        assert_eq!(s.due_ns(3 * 3600), None);
        let d = s.due_ns(1).unwrap();
        assert!((333_333_333..=333_333_334).contains(&d));
    }

    #[test]
    fn due_count_matches_due_times() {
        let run = Duration::from_millis(100);
        for (rate, p) in [(1000.0, 1), (1000.0, 4), (333.0, 3), (12_345.0, 7)] {
            for i in 0..p {
                let s = Schedule::new(rate, i, p, run);
                for t in [
                    0,
                    1,
                    999_999,
                    1_000_000,
                    5_000_123,
                    99_999_999,
                    100_000_000,
                    u64::MAX,
                ] {
                    let expected = (0..)
                        .map_while(|k| s.due_ns(k))
                        .filter(|&due| due <= t)
                        .count() as u64;
                    assert_eq!(s.due_count(t), expected, "rate {rate} p {i}/{p} t {t}");
                }
            }
        }
    }

    #[test]
    fn rate_steps_change_the_rate_at_their_times() {
        let run = Duration::from_secs(3);
        let steps = [
            (Duration::from_secs(1), 10.0),
            (Duration::from_millis(1500), 1000.0),
            (Duration::from_millis(1500), 4.0),
            (Duration::from_secs(2), 3.0),
        ];
        let p = 2;
        let mut all: Vec<u64> = Vec::new();
        for i in 0..p {
            let s = Schedule::with_steps(100.0, &steps, i, p, run);
            let mut k = 0;
            while let Some(due) = s.due_ns(k) {
                all.push(due);
                k += 1;
            }
            for t in [
                0,
                999_999_999,
                1_000_000_000,
                1_499_999_999,
                1_500_000_000,
                2_000_000_001,
                u64::MAX,
            ] {
                let expected = (0..)
                    .map_while(|k| s.due_ns(k))
                    .filter(|&due| due <= t)
                    .count() as u64;
                assert_eq!(s.due_count(t), expected, "p {i} t {t}");
            }
        }
        all.sort_unstable();
        // 100/s for 1 s, 10/s for 0.5 s, (1,000/s for no time at all), 4/s for 0.5 s, 3/s
        // for 1 s: every due time where its segment puts it.
        let mut want: Vec<u64> = (0..100).map(|n| n * 10_000_000).collect();
        want.extend((0..5).map(|n| 1_000_000_000 + n * 100_000_000));
        want.extend((0..2).map(|n| 1_500_000_000 + n * 250_000_000));
        want.extend((0..3).map(|n| 2_000_000_000 + n * 1_000_000_000 / 3));
        assert_eq!(all.len(), want.len());
        for (got, want) in all.iter().zip(&want) {
            assert!(got.abs_diff(*want) <= 1, "{got} vs {want}");
        }
        // Without steps, the same as a constant rate.
        assert_eq!(
            Schedule::with_steps(100.0, &[], 0, 1, run),
            Schedule::new(100.0, 0, 1, run)
        );
    }

    #[test]
    fn closed_loop_has_no_due_times() {
        let s = Schedule::new(0.0, 0, 2, Duration::from_secs(1));
        assert!(!s.is_open_loop());
        assert_eq!(s.due_ns(0), None);
        assert_eq!(s.due_count(500_000_000), 0);
    }
}
