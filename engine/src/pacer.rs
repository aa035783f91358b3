//! Adaptive round pacing (`round_rate_max = "auto"`, the default): a core's rounds go back
//! to back until the host shows that it cannot take that many flushes a second, then at
//! most a rate it can take.
//!
//! Why: on some virtual machines the host emulates every guest I/O on the VM's CPU quota.
//! At ~2,600 flushes a second one development VM was stopped for 5-23 ms in most 100 ms
//! periods, both vCPUs, whatever ran on them; at ~1,000 a second never (BENCHMARKS.md,
//! "Pacing rounds"). A fixed cap of 1,000 rounds a second protected that host, but it held
//! a closed-loop producer with one call in flight at one call a round: on a host that does
//! not stall, `peer-shape`'s one producer got 101 MB/s paced against 217 MB/s unpaced.
//!
//! How: the core's probe ([`crate::runtime`]) sleeps 1 ms at a time while the core's rounds
//! run at [`ACTIVE_RATE`] a second or more (otherwise 100 ms at a time, to stay cheap when
//! rounds are few). A wake-up [`STALL_US`] late or more is a stall: the executor thread did
//! not run (on such a VM the whole guest was stopped; an executor busy with its own work
//! wakes its timers far sooner). A stall seen while rounds ran faster than the floor
//! ([`FLOOR_BAND`]) lowers the cap to half the rate just seen, not below [`FLOOR`] (the
//! rate that never stalled there). After a hold without stalls the cap rises by a quarter
//! every [`STEP_MS`] and is lifted at [`CEILING`]. The hold starts at [`HOLD_MS`] and doubles
//! (up to [`HOLD_MAX_MS`]) for a stall within two holds of the last cut, so on a host that
//! stalls the probing costs a stall every ten minutes at most, and a host that stalled once
//! is not held back for long.
//!
//! Some hosts stop the VM now and then whatever it does (one development VM: 1-6 wake-ups
//! 5-7 ms late in 6 s at 953, 1,704 and 2,660 flushes a second alike). A cut cannot help
//! there, and it held one closed-loop producer at the floor. So the pacer weighs stalls by
//! the rate of the rounds they came with: it counts stalls and watched time at the floor
//! (rounds at most [`FLOOR_BAND`] a second, where a cap leaves them) and faster. Once it
//! has watched the floor [`NOISE_EVIDENCE_MS`] and seen stalls there, stalls with rounds
//! faster that come no more than [`NOISE_RATIO`] times as often are the host's
//! ([`AutoPacer::noisy`]): a stall at the floor then lifts the stalls' cap, and one faster
//! cuts nothing. A host whose stalls follow the rounds' rate shows none at the floor, and
//! is cut as before. The counts are a moving estimate (halved every [`BAND_SPAN_MS`] of
//! their band's time). Other false stalls (another process on the core, a long task) cost a
//! cap of at least [`FLOOR`] for a while: the old fixed default.
//!
//! Rounds also cost the core: ~100-200 µs of CPU each here, mostly the kernel's and the
//! VM's (submission, the device's notification, the completion's interrupt, wake-ups). Back
//! to back at low load they buy latency with time the core has spare; near saturation they
//! take it from the requests (unpaced, `shard-density` held 32-64 shards under a 10 ms p99
//! where 1,000 rounds a second held 128-256). So the pacer also watches the executor thread's
//! CPU share in each window: at [`BUSY_HIGH`] or more it caps rounds at [`LOAD_CUT`] of the
//! rate just seen (not below [`FLOOR`]); under [`BUSY_LOW`] it raises that cap by a quarter
//! a window, lifted at [`CEILING`]. The cap in force is the lower of the two.

/// A wake-up this late (µs) is a stall.
pub const STALL_US: u64 = 5_000;
/// The lowest cap the pacer sets (rounds a second), and the round rate below which a stall
/// is not the rounds' doing.
pub const FLOOR: u32 = 1_000;
/// The probe watches closely (1 ms sleeps) while rounds run at this rate or more.
pub const ACTIVE_RATE: f64 = 900.0;
/// A cap that rises to this is lifted (rounds go back to back again).
pub const CEILING: u32 = 16_000;
/// Stalls within this long after a cut belong to the same episode (the cut takes a moment).
pub const SETTLE_MS: u64 = 1_000;
/// The first hold after a cut, and the longest.
pub const HOLD_MS: u64 = 30_000;
pub const HOLD_MAX_MS: u64 = 600_000;
/// After the hold, the cap rises by a quarter this often.
pub const STEP_MS: u64 = 5_000;

/// The executor thread's CPU share over a window at or above which rounds are capped
/// lower, and below which the cap is raised.
pub const BUSY_HIGH: f64 = 0.5;
pub const BUSY_LOW: f64 = 0.3;
/// A busy window caps rounds at this share of the rate just seen.
pub const LOAD_CUT: f64 = 0.7;

/// Rounds up to this much over [`FLOOR`] a second run "at the floor": a stall there is one
/// the pacer cannot prevent.
pub const FLOOR_BAND: f64 = 1.1 * FLOOR as f64;
/// Stalls at the floor are weighed once the probe has watched it this long.
pub const NOISE_EVIDENCE_MS: f64 = 5_000.0;
/// Stalls with rounds faster than the floor are the rounds' doing only if they come more
/// than this many times as often as at the floor.
pub const NOISE_RATIO: f64 = 2.0;
/// Each band's stall count and watched time halve when the time passes this (a moving
/// estimate: a host that changes is seen to change).
pub const BAND_SPAN_MS: f64 = 120_000.0;

/// What the pacer decided: the new cap (None: unpaced).
pub type Change = Option<u32>;

/// Stalls seen while rounds ran in one band of rates, and how long the probe watched it.
#[derive(Debug, Clone, Copy, Default)]
struct Band {
    ms: f64,
    stalls: f64,
}

impl Band {
    fn watched(&mut self, ms: f64) {
        self.ms += ms;
        if self.ms > BAND_SPAN_MS {
            self.ms /= 2.0;
            self.stalls /= 2.0;
        }
    }

    /// Stalls a second, over at least `NOISE_EVIDENCE_MS` (a stall in a short spell is not
    /// a high rate).
    fn per_s(&self) -> f64 {
        self.stalls * 1_000.0 / self.ms.max(NOISE_EVIDENCE_MS)
    }
}

/// The decisions of one core's pacer; time is in milliseconds from any origin.
#[derive(Debug, Clone)]
pub struct AutoPacer {
    /// The cap stalls set (eased over time), and the cap the core's load sets.
    cap: Option<u32>,
    load_cap: Option<u32>,
    hold_ms: u64,
    last_cut_ms: Option<u64>,
    last_step_ms: u64,
    /// Stalls at the floor and with rounds faster (see [`AutoPacer::noisy`]).
    floor: Band,
    fast: Band,
}

impl Default for AutoPacer {
    fn default() -> Self {
        AutoPacer {
            cap: None,
            load_cap: None,
            hold_ms: HOLD_MS,
            last_cut_ms: None,
            last_step_ms: 0,
            floor: Band::default(),
            fast: Band::default(),
        }
    }
}

impl AutoPacer {
    /// The cap in force (None: unpaced): the lower of the stalls' and the load's.
    pub fn cap(&self) -> Option<u32> {
        match (self.cap, self.load_cap) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The cap in force after `f` changed the pacer's state, if it moved.
    fn changed(&mut self, f: impl FnOnce(&mut Self)) -> Option<Change> {
        let before = self.cap();
        f(self);
        let after = self.cap();
        (after != before).then_some(after)
    }

    /// A window of `ms` in which the executor thread was busy `busy` of the time (0 to 1)
    /// and the core's rounds ran at `rate` a second: the cap in force, if it moved.
    pub fn window(&mut self, ms: u64, busy: f64, rate: f64) -> Option<Change> {
        if rate >= ACTIVE_RATE {
            // Watched closely: its stalls count.
            let band = if rate <= FLOOR_BAND {
                &mut self.floor
            } else {
                &mut self.fast
            };
            band.watched(ms as f64);
        }
        self.changed(|p| {
            if busy >= BUSY_HIGH && rate >= f64::from(FLOOR) {
                let seen = p.load_cap.map_or(rate, |c| rate.min(f64::from(c)));
                p.load_cap = Some(((seen * LOAD_CUT).round() as u32).max(FLOOR));
            } else if busy < BUSY_LOW {
                if let Some(c) = p.load_cap {
                    let next = c.saturating_add(c / 4);
                    p.load_cap = (next < CEILING).then_some(next);
                }
            }
        })
    }

    /// How long the pacer holds a cut before raising the cap.
    pub fn hold_ms(&self) -> u64 {
        self.hold_ms
    }

    /// Whether this host's stalls are its own, not the rounds': after watching rounds at
    /// the floor long enough, stalls with rounds faster come no more than [`NOISE_RATIO`]
    /// times as often as at the floor, where no cap can help.
    pub fn noisy(&self) -> bool {
        self.floor.ms >= NOISE_EVIDENCE_MS
            && self.floor.stalls > 0.0
            && self.fast.per_s() <= NOISE_RATIO * self.floor.per_s()
    }

    /// A stall seen at `now_ms` while the core's rounds ran at `rate` a second: the cap in
    /// force, if it moved. A stall at the floor lifts the stalls' cap when it shows that
    /// the cut did not stop them ([`AutoPacer::noisy`]); a stall with rounds faster cuts
    /// unless the stalls are the host's.
    pub fn stall(&mut self, now_ms: u64, rate: f64) -> Option<Change> {
        if rate < ACTIVE_RATE {
            return None;
        }
        if self.last_cut_ms.is_some_and(|cut| now_ms < cut + SETTLE_MS) {
            // The same episode (the cut takes a moment).
            return None;
        }
        if rate <= FLOOR_BAND {
            self.floor.stalls += 1.0;
            return if self.noisy() {
                self.changed(|p| p.cap = None)
            } else {
                None
            };
        }
        self.fast.stalls += 1.0;
        if self.noisy() {
            return None;
        }
        if let Some(cut) = self.last_cut_ms {
            self.hold_ms = if now_ms < cut + 2 * self.hold_ms {
                (self.hold_ms * 2).min(HOLD_MAX_MS)
            } else {
                HOLD_MS
            };
        }
        self.last_cut_ms = Some(now_ms);
        self.last_step_ms = now_ms;
        self.changed(|p| {
            let seen = p.cap.map_or(rate, |c| rate.min(f64::from(c)));
            p.cap = Some(((seen / 2.0) as u32).max(FLOOR));
        })
    }

    /// Time passing (called often): the cap in force, if the stalls' cap rose and moved it.
    pub fn tick(&mut self, now_ms: u64) -> Option<Change> {
        let (Some(cap), Some(cut)) = (self.cap, self.last_cut_ms) else {
            return None;
        };
        if now_ms < cut + self.hold_ms || now_ms < self.last_step_ms + STEP_MS {
            return None;
        }
        self.last_step_ms = now_ms;
        self.changed(|p| {
            let next = cap.saturating_add(cap / 4);
            p.cap = (next < CEILING).then_some(next);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host that stalls above 2,000 rounds a second, and a core that would run 6,000:
    /// the pacer cuts to half of what it saw, rises after the hold, cuts again when it
    /// reaches the stalling rate, and holds longer each time.
    #[test]
    fn a_host_that_stalls_is_probed_less_and_less_often() {
        let mut p = AutoPacer::default();
        assert_eq!(p.cap(), None);
        // Below the floor a stall is not the rounds' doing.
        assert_eq!(p.stall(0, 800.0), None);
        assert_eq!(p.cap(), None);
        // Unpaced at 6,000 rounds a second: a stall cuts to 3,000, still stalling: 1,500.
        assert_eq!(p.stall(10_000, 6_000.0), Some(Some(3_000)));
        // The same episode: ignored.
        assert_eq!(p.stall(10_500, 3_000.0), None);
        assert_eq!(p.stall(11_100, 3_000.0), Some(Some(1_500)));
        assert_eq!(p.hold_ms(), 2 * HOLD_MS);
        // Held: nothing rises before the hold is over.
        assert_eq!(p.tick(11_100 + 2 * HOLD_MS - 1), None);
        let mut t = 11_100 + 2 * HOLD_MS;
        assert_eq!(p.tick(t), Some(Some(1_875)));
        assert_eq!(p.tick(t + STEP_MS - 1), None);
        t += STEP_MS;
        assert_eq!(p.tick(t), Some(Some(2_343)));
        // 2,343 stalls (within two holds of the cut): back to 1,171, and a longer hold.
        assert_eq!(p.stall(t + 100, 2_343.0), Some(Some(1_171)));
        assert_eq!(p.hold_ms(), 4 * HOLD_MS);
        // At the floor a stall changes nothing (no cap can help there).
        let mut p2 = p.clone();
        assert_eq!(p2.stall(t + 5_000, 1_171.0), Some(Some(FLOOR)));
        let hold = p2.hold_ms();
        assert_eq!(p2.stall(t + 10_000, 1_000.0), None);
        assert_eq!((p2.cap(), p2.hold_ms()), (Some(FLOOR), hold));
        // Faster, the hold grows, never past its bound.
        for i in 0..20 {
            p2.stall(t + 20_000 + i * 2_000, 2_000.0);
        }
        assert_eq!(p2.hold_ms(), HOLD_MAX_MS);
        assert_eq!(p2.cap(), Some(FLOOR));
    }

    /// A host whose stalls come as often with rounds at the floor as faster: the cut is
    /// taken back once the floor has been watched long enough, later stalls cut nothing,
    /// and stalls that grow frequent only with rounds fast still cut.
    #[test]
    fn stalls_as_frequent_at_the_floor_are_the_hosts_and_lift_the_cap() {
        let mut p = AutoPacer::default();
        let mut t = 2_000;
        assert_eq!(p.stall(t, 1_600.0), Some(Some(FLOOR)));
        // Rounds held at the floor; a stall before 5 s of it were watched: no verdict.
        for _ in 0..30 {
            t += 100;
            assert_eq!(p.window(100, 0.2, 1_000.0), None);
        }
        assert_eq!(p.stall(t, 1_000.0), None);
        assert!(!p.noisy());
        for _ in 0..30 {
            t += 100;
            p.window(100, 0.2, 1_000.0);
        }
        // 2 stalls in 6 s at the floor against 1 faster: the host's; the cap goes.
        assert_eq!(p.stall(t, 1_000.0), Some(None));
        assert!(p.noisy());
        assert_eq!(p.cap(), None);
        // Unpaced, stalls as often as at the floor: ignored.
        for i in 1..=100 {
            t += 100;
            assert_eq!(p.window(100, 0.2, 2_000.0), None);
            if i % 25 == 0 {
                assert_eq!(p.stall(t, 2_000.0), None, "at {i}");
            }
        }
        assert_eq!(p.cap(), None);
        // Now a stall in every window with rounds fast: far more often than at the floor.
        let mut cut = None;
        for i in 1..=20 {
            t += 100;
            p.window(100, 0.2, 2_000.0);
            if let Some(c) = p.stall(t, 2_000.0) {
                cut = Some((i, c));
                break;
            }
        }
        assert_eq!(cut, Some((2, Some(FLOOR))));
        // At the floor they stop: the evidence fades, and a stray stall there lifts
        // nothing.
        for _ in 0..250 {
            t += 100;
            p.window(100, 0.2, 1_000.0);
        }
        assert!(!p.noisy());
        assert_eq!(p.stall(t, 1_000.0), None);
        assert_eq!(p.cap(), Some(FLOOR));
    }

    /// A busy core caps its rounds a step at a time down to the floor; an idle one raises
    /// the cap until it is lifted; in between nothing moves; and the cap in force is the
    /// lower of the load's and the stalls'.
    #[test]
    fn a_busy_core_runs_fewer_rounds_and_an_idle_one_lifts_the_cap() {
        let mut p = AutoPacer::default();
        // Busy, but rounds too few to matter.
        assert_eq!(p.window(100, 0.95, 800.0), None);
        // Between the bounds: nothing.
        assert_eq!(p.window(100, 0.4, 5_000.0), None);
        assert_eq!(p.window(100, 0.9, 4_000.0), Some(Some(2_800)));
        assert_eq!(p.window(100, 0.9, 2_800.0), Some(Some(1_960)));
        assert_eq!(p.window(100, 0.8, 1_960.0), Some(Some(1_372)));
        assert_eq!(p.window(100, 0.8, 1_372.0), Some(Some(FLOOR)));
        assert_eq!(p.window(100, 0.99, 1_000.0), None);
        assert_eq!(p.window(100, 0.4, 1_000.0), None);
        // Idle: a quarter a window, lifted past the ceiling.
        let mut caps = vec![];
        while let Some(c) = p.window(100, 0.2, 100.0) {
            caps.push(c);
        }
        assert_eq!(caps.first(), Some(&Some(1_250)));
        assert_eq!(caps.last(), Some(&None));
        assert_eq!(p.cap(), None);
        // With a stall's cap: the lower one is in force, and easing the load's cap above
        // it moves nothing.
        assert_eq!(p.stall(0, 3_000.0), Some(Some(1_500)));
        assert_eq!(p.window(100, 0.9, 1_500.0), Some(Some(1_050)));
        assert_eq!(p.window(100, 0.1, 1_000.0), Some(Some(1_312)));
        assert_eq!(
            p.window(100, 0.1, 1_300.0),
            Some(Some(1_500)),
            "the stalls' cap binds"
        );
        assert_eq!(p.window(100, 0.1, 1_500.0), None);
        assert_eq!(p.cap(), Some(1_500));
    }

    /// On a host that stopped stalling the cap rises a quarter a step until it is lifted,
    /// and a stall long after starts again from the shortest hold.
    #[test]
    fn a_cap_rises_to_the_ceiling_and_is_lifted() {
        let mut p = AutoPacer::default();
        assert_eq!(p.stall(0, 2_400.0), Some(Some(1_200)));
        let mut t = HOLD_MS;
        let mut caps = Vec::new();
        while let Some(c) = p.tick(t) {
            caps.push(c);
            t += STEP_MS;
        }
        assert_eq!(caps.last(), Some(&None), "{caps:?}");
        assert!(caps.windows(2).all(|w| match (w[0], w[1]) {
            (Some(a), Some(b)) => b > a,
            (Some(a), None) => a + a / 4 >= CEILING,
            _ => false,
        }));
        assert_eq!(p.cap(), None);
        // Nothing more to do unpaced.
        assert_eq!(p.tick(t + HOLD_MAX_MS), None);
        // A stall long after: a fresh episode with the first hold.
        let later = t + 10 * HOLD_MAX_MS;
        assert_eq!(p.stall(later, 5_000.0), Some(Some(2_500)));
        assert_eq!(p.hold_ms(), HOLD_MS);
    }
}
