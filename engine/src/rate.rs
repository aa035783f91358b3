//! A shard's recent write rate: an exponentially weighted moving average over one-second
//! buckets. Placement of new shards reads it (children go to the cores writing least), and
//! so will on-demand scaling. Updated on the append path with plain arithmetic on the
//! shard's own core: no atomics.

/// Weight of the newest second (a ~5 s memory).
const ALPHA: f64 = 0.2;

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RateMeter {
    /// The second `bucket` counts.
    second: i64,
    bucket: u64,
    /// Average bytes per second up to (not including) `second`.
    average: f64,
}

impl RateMeter {
    /// Counts `bytes` written at `now_ms`.
    pub fn add(&mut self, bytes: u64, now_ms: i64) {
        let second = now_ms.div_euclid(1000);
        if second != self.second {
            self.average = self.average_at(second);
            self.second = second;
            self.bucket = 0;
        }
        self.bucket += bytes;
    }

    /// The average bytes per second as of `now_ms` (seconds without writes count as 0).
    pub fn per_second(&self, now_ms: i64) -> f64 {
        self.average_at(now_ms.div_euclid(1000))
    }

    fn average_at(&self, second: i64) -> f64 {
        let elapsed = second - self.second;
        if elapsed <= 0 {
            return self.average;
        }
        // The bucket closes, then each empty second decays the average.
        let closed = self.average * (1.0 - ALPHA) + ALPHA * self.bucket as f64;
        closed * (1.0 - ALPHA).powi((elapsed - 1).min(1000) as i32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_a_steady_rate_and_decays_when_quiet() {
        let mut m = RateMeter::default();
        for s in 0..60 {
            m.add(1000, s * 1000);
            m.add(1000, s * 1000 + 500);
        }
        let r = m.per_second(60_000);
        assert!((r - 2000.0).abs() < 10.0, "{r}");
        assert!(m.per_second(90_000) < 20.0);
        assert_eq!(RateMeter::default().per_second(5_000), 0.0);
    }
}
