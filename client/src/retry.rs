//! Backoff for requests the server refused without applying them (throttled, busy).
//!
//! The delay before attempt `n` (counting from 0 since the last progress) is the larger of
//! the server's `retry_after_ms` hint and `backoff_base * 2^n` capped at `backoff_max`, plus
//! up to a quarter of it as random jitter, so producers throttled together do not come back
//! together. A request that makes progress (a throttled batch of which a prefix was stored)
//! starts counting again from 0: a producer writing faster than its shard's limit keeps
//! going at the limit's pace and only gives up when the shard admits nothing at all for
//! `max_attempts` attempts in a row.

use std::time::Duration;

use rand::Rng;

/// How the client retries refused requests; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// First backoff step.
    pub backoff_base: Duration,
    /// Longest backoff step (the server's hint may exceed it).
    pub backoff_max: Duration,
    /// Attempts in a row without progress after which the error is returned.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    /// 10 ms doubling to 2 s, giving up after 20 attempts without progress (about 30 s).
    fn default() -> Self {
        RetryPolicy {
            backoff_base: Duration::from_millis(10),
            backoff_max: Duration::from_secs(2),
            max_attempts: 20,
        }
    }
}

impl RetryPolicy {
    /// Never retry.
    pub fn none() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 0,
            ..RetryPolicy::default()
        }
    }

    /// The pause before retry number `attempt` (0-based), given the server's hint.
    pub fn delay(&self, attempt: u32, retry_after_ms: u32) -> Duration {
        let step = self
            .backoff_base
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.backoff_max);
        let base = step.max(Duration::from_millis(u64::from(retry_after_ms)));
        let jitter_ms = (base.as_millis() as u64 / 4).max(1);
        base + Duration::from_millis(rand::thread_rng().gen_range(0..jitter_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_are_capped_and_honour_the_hint() {
        let p = RetryPolicy::default();
        let d0 = p.delay(0, 0);
        assert!(d0 >= Duration::from_millis(10) && d0 < Duration::from_millis(13));
        let d3 = p.delay(3, 0);
        assert!(d3 >= Duration::from_millis(80) && d3 < Duration::from_millis(101));
        let d30 = p.delay(30, 0);
        assert!(d30 >= Duration::from_secs(2) && d30 <= Duration::from_millis(2500));
        let hinted = p.delay(0, 700);
        assert!(hinted >= Duration::from_millis(700) && hinted <= Duration::from_millis(875));
    }
}
