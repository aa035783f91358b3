//! Per-shard throughput limits (SPEC §3), accounted on the shard's own core.
//!
//! Token buckets hold one second of allowance, as Kinesis does, refilled continuously.
//! A batch that does not fit entirely is admitted up to the longest prefix that does; the
//! rest is refused with a retry hint. Admitting a prefix (never a subset) keeps each
//! partition key's records in order when the producer retries the remainder.

use serde::{Deserialize, Serialize};

/// A stream's limits mode.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub enum Limits {
    /// Kinesis defaults: in 1 MiB/s and 1,000 records/s, out 2 MiB/s, per shard.
    Kinesis,
    /// No limits (benchmarks, trusted producers).
    Off,
    Custom {
        write_bytes_per_s: u64,
        write_records_per_s: u64,
        read_bytes_per_s: u64,
    },
}

pub const KINESIS_WRITE_BYTES_PER_S: u64 = 1 << 20;
pub const KINESIS_WRITE_RECORDS_PER_S: u64 = 1000;
pub const KINESIS_READ_BYTES_PER_S: u64 = 2 << 20;

impl Limits {
    /// (write bytes/s, write records/s, read bytes/s), or `None` when off.
    pub fn rates(&self) -> Option<(u64, u64, u64)> {
        match *self {
            Limits::Kinesis => Some((
                KINESIS_WRITE_BYTES_PER_S,
                KINESIS_WRITE_RECORDS_PER_S,
                KINESIS_READ_BYTES_PER_S,
            )),
            Limits::Off => None,
            Limits::Custom {
                write_bytes_per_s,
                write_records_per_s,
                read_bytes_per_s,
            } => Some((write_bytes_per_s, write_records_per_s, read_bytes_per_s)),
        }
    }
}

/// A token bucket in integer milli-units: `rate` units per second, one second of burst.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate_per_s: u64,
    /// Milli-units available.
    tokens_milli: u64,
    last_ms: i64,
}

impl TokenBucket {
    pub fn new(rate_per_s: u64, now_ms: i64) -> TokenBucket {
        assert!(rate_per_s > 0, "a bucket with no rate admits nothing");
        TokenBucket {
            rate_per_s,
            tokens_milli: rate_per_s * 1000,
            last_ms: now_ms,
        }
    }

    fn refill(&mut self, now_ms: i64) {
        let elapsed_ms = (now_ms - self.last_ms).max(0) as u64;
        if elapsed_ms > 0 {
            let cap = self.rate_per_s * 1000;
            self.tokens_milli =
                (self.tokens_milli + elapsed_ms.saturating_mul(self.rate_per_s)).min(cap);
            self.last_ms = now_ms;
        }
    }

    /// Units a full bucket holds (one second's worth).
    pub fn capacity(&self) -> u64 {
        self.rate_per_s
    }

    pub fn available(&mut self, now_ms: i64) -> u64 {
        self.refill(now_ms);
        self.tokens_milli / 1000
    }

    pub fn take(&mut self, units: u64) {
        self.tokens_milli = self.tokens_milli.saturating_sub(units * 1000);
    }

    /// Milliseconds until `units` are available (at least 1). Requests larger than the
    /// burst are told when the bucket will be full.
    pub fn wait_ms(&self, units: u64) -> u32 {
        let want = (units * 1000).min(self.rate_per_s * 1000);
        let deficit = want.saturating_sub(self.tokens_milli);
        deficit
            .div_ceil(self.rate_per_s)
            .clamp(1, u64::from(u32::MAX)) as u32
    }
}

/// The outcome of admitting a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    pub records: u32,
    pub bytes: u64,
    /// When some records were refused: how long until the first of them would fit.
    pub retry_after_ms: Option<u32>,
}

/// A shard's write allowance: bytes (key + data) and records.
#[derive(Debug, Clone)]
pub struct WriteLimiter {
    bytes: TokenBucket,
    records: TokenBucket,
}

impl WriteLimiter {
    pub fn new(bytes_per_s: u64, records_per_s: u64, now_ms: i64) -> WriteLimiter {
        WriteLimiter {
            bytes: TokenBucket::new(bytes_per_s, now_ms),
            records: TokenBucket::new(records_per_s, now_ms),
        }
    }

    /// Admits the longest prefix of records (given as their key + data sizes) that fits.
    pub fn admit(&mut self, record_sizes: impl Iterator<Item = u64>, now_ms: i64) -> Admission {
        let mut bytes_left = self.bytes.available(now_ms);
        let mut records_left = self.records.available(now_ms);
        let mut out = Admission {
            records: 0,
            bytes: 0,
            retry_after_ms: None,
        };
        let mut refused: Option<u64> = None;
        for size in record_sizes {
            // A record larger than the whole bucket (1 MiB of data plus its key, under the
            // 1 MiB/s default) is admitted when the bucket is full; counting it at the
            // bucket's size keeps it from being throttled forever.
            let size = size.min(self.bytes.capacity());
            if records_left == 0 || size > bytes_left {
                refused = Some(size);
                break;
            }
            bytes_left -= size;
            records_left -= 1;
            out.records += 1;
            out.bytes += size;
        }
        self.bytes.take(out.bytes);
        self.records.take(u64::from(out.records));
        if let Some(size) = refused {
            let record_wait = if records_left == 0 {
                self.records.wait_ms(1)
            } else {
                0
            };
            let byte_wait = if size > bytes_left {
                self.bytes.wait_ms(size)
            } else {
                0
            };
            out.retry_after_ms = Some(record_wait.max(byte_wait).max(1));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills_at_its_rate_and_caps_at_one_second() {
        let mut b = TokenBucket::new(1000, 0);
        assert_eq!(b.available(0), 1000);
        b.take(1000);
        assert_eq!(b.available(0), 0);
        assert_eq!(b.available(500), 500);
        assert_eq!(b.available(10_000), 1000);
        b.take(1000);
        assert_eq!(b.wait_ms(10), 10);
    }

    #[test]
    fn admits_a_prefix_and_hints_retry() {
        let mut w = WriteLimiter::new(1 << 20, 1000, 0);
        let a = w.admit(std::iter::repeat_n(100, 1500), 0);
        assert_eq!(a.records, 1000);
        assert!(a.retry_after_ms.is_some());
        // After 100 ms, 100 more records fit.
        let a = w.admit(std::iter::repeat_n(100, 500), 100);
        assert_eq!(a.records, 100);
        // Bytes bind for large records: 1 MiB/s means ~10 records of 100 KiB per 1 s.
        let mut w = WriteLimiter::new(1 << 20, 1000, 0);
        let a = w.admit(std::iter::repeat_n(100 << 10, 20), 0);
        assert_eq!(a.records, 10);
        let retry = a.retry_after_ms.unwrap();
        // 24 KiB left, 100 KiB needed, 1 MiB/s: 76 KiB take ~75 ms.
        assert!((70..=80).contains(&retry), "retry {retry}");
    }

    #[test]
    fn a_record_as_large_as_the_limit_is_admitted_when_the_bucket_is_full() {
        let mut w = WriteLimiter::new(1 << 20, 1000, 0);
        let big = (1 << 20) + 10; // 1 MiB of data plus a 10-byte key
        assert_eq!(w.admit(std::iter::once(big), 0).records, 1);
        let again = w.admit(std::iter::once(big), 0);
        assert_eq!(again.records, 0);
        let retry = again.retry_after_ms.unwrap();
        assert!((990..=1000).contains(&retry), "retry {retry}");
        assert_eq!(w.admit(std::iter::once(big), 1000).records, 1);
    }

    #[test]
    fn sustained_rate_matches_the_limit() {
        // Offer 2x the record limit for 10 simulated seconds in 10 ms steps.
        let mut w = WriteLimiter::new(1 << 20, 1000, 0);
        let mut accepted = 0u64;
        for step in 1..=1000 {
            accepted += u64::from(w.admit(std::iter::repeat_n(10, 20), step * 10).records);
        }
        // One second of burst plus ten seconds at 1,000/s.
        assert!((10_000..=11_000).contains(&accepted), "accepted {accepted}");
    }
}
