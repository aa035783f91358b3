//! Per-shard throughput limits (SPEC §3), accounted on the shard's own core.
//!
//! Token buckets hold one second of allowance, as Kinesis does, refilled continuously.
//! A batch that does not fit entirely is admitted up to the longest prefix that does; the
//! rest is refused with a retry hint. Admitting a prefix (never a subset) keeps each
//! partition key's records in order when the producer retries the remainder.

pub use spate_protocol::stream::{
    Limits, KINESIS_READ_BYTES_PER_S, KINESIS_WRITE_BYTES_PER_S, KINESIS_WRITE_RECORDS_PER_S,
    MAX_LIMIT_RATE,
};

/// A token bucket in integer milli-units: `rate` units per second, one second of burst.
///
/// The balance may go below zero: a request larger than the whole bucket (a 10 MiB record
/// under 1 MiB/s, a 10 MiB read under 2 MiB/s) is let through when the bucket is full and
/// leaves a debt that refills at the rate, so the average never exceeds it. Rates are
/// clamped to `MAX_LIMIT_RATE` and all arithmetic saturates: a catalog written before
/// ranges were checked cannot overflow it.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate_per_s: u64,
    /// Milli-units available; negative is a debt.
    tokens_milli: i64,
    last_ms: i64,
}

impl TokenBucket {
    pub fn new(rate_per_s: u64, now_ms: i64) -> TokenBucket {
        let rate_per_s = rate_per_s.clamp(1, MAX_LIMIT_RATE);
        TokenBucket {
            rate_per_s,
            tokens_milli: Self::cap_milli(rate_per_s),
            last_ms: now_ms,
        }
    }

    fn cap_milli(rate_per_s: u64) -> i64 {
        (rate_per_s * 1000) as i64
    }

    fn refill(&mut self, now_ms: i64) {
        let elapsed_ms = now_ms.saturating_sub(self.last_ms).max(0) as u64;
        if elapsed_ms > 0 {
            let gained = elapsed_ms
                .saturating_mul(self.rate_per_s)
                .min(i64::MAX as u64) as i64;
            self.tokens_milli = self
                .tokens_milli
                .saturating_add(gained)
                .min(Self::cap_milli(self.rate_per_s));
            self.last_ms = now_ms;
        }
    }

    /// Units a full bucket holds (one second's worth).
    pub fn capacity(&self) -> u64 {
        self.rate_per_s
    }

    /// Whole units available now (0 while in debt).
    pub fn available(&mut self, now_ms: i64) -> u64 {
        self.refill(now_ms);
        (self.tokens_milli.max(0) / 1000) as u64
    }

    /// Whether the bucket is full (it holds a whole second).
    pub fn is_full(&mut self, now_ms: i64) -> bool {
        self.refill(now_ms);
        self.tokens_milli >= Self::cap_milli(self.rate_per_s)
    }

    /// Takes `units`, going into debt if there are not that many.
    pub fn take(&mut self, units: u64) {
        let milli = units.saturating_mul(1000).min(i64::MAX as u64) as i64;
        self.tokens_milli = self.tokens_milli.saturating_sub(milli);
    }

    /// Milliseconds until `units` are available (at least 1). A request larger than the
    /// bucket is told when the bucket will be full.
    pub fn wait_ms(&self, units: u64) -> u32 {
        let want = units.min(self.rate_per_s) * 1000;
        let deficit = (want as i128 - i128::from(self.tokens_milli)).max(0) as u128;
        deficit
            .div_ceil(u128::from(self.rate_per_s))
            .clamp(1, u128::from(u32::MAX)) as u32
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

/// A refused rest comes back when this share of a second's allowance (or all of it) fits.
const RETRY_SHARE_DIVISOR: u64 = 4;

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
    /// The refused rest is told to come back (`retry_after_ms`) when a useful share of it
    /// fits: all of it, or a quarter of a second's allowance when it is larger (and at
    /// least its first record). Told only when its first record would fit, a client sending
    /// faster than the limit resent its whole rest every few milliseconds for a handful of
    /// records each time: `spate put` of 5,000 records into one shard had 80,876 records
    /// refused for the 5,000 stored.
    pub fn admit(&mut self, record_sizes: impl Iterator<Item = u64>, now_ms: i64) -> Admission {
        let mut bytes_left = self.bytes.available(now_ms);
        let mut records_left = self.records.available(now_ms);
        let mut out = Admission {
            records: 0,
            bytes: 0,
            retry_after_ms: None,
        };
        let mut refused: Option<u64> = None;
        let full = self.bytes.is_full(now_ms);
        let mut record_sizes = record_sizes;
        for size in record_sizes.by_ref() {
            // A record larger than the whole bucket (1 MiB of data plus its key, under the
            // 1 MiB/s default) goes first into a full bucket and leaves a debt.
            let as_debt = out.records == 0 && full && size > self.bytes.capacity();
            if records_left == 0 || (size > bytes_left && !as_debt) {
                refused = Some(size);
                break;
            }
            let size_left = size.min(bytes_left);
            bytes_left -= size_left;
            records_left -= 1;
            out.records += 1;
            out.bytes = out.bytes.saturating_add(size);
        }
        self.bytes.take(out.bytes);
        self.records.take(u64::from(out.records));
        if let Some(size) = refused {
            let (rest_records, rest_bytes) =
                record_sizes.fold((1u64, size), |(n, b), s| (n + 1, b.saturating_add(s)));
            let share = |capacity: u64| (capacity / RETRY_SHARE_DIVISOR).max(1);
            let records = rest_records.min(share(self.records.capacity()));
            let bytes = rest_bytes.min(share(self.bytes.capacity()).max(size));
            let record_wait = self.records.wait_ms(records);
            let byte_wait = self.bytes.wait_ms(bytes);
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
        // 500 refused: back when a quarter second's 250 fit.
        assert_eq!(a.retry_after_ms, Some(250));
        // After 100 ms, 100 more records fit (a client may come back early).
        let a = w.admit(std::iter::repeat_n(100, 500), 100);
        assert_eq!(a.records, 100);
        // A rest smaller than a quarter second's allowance: back when all of it fits.
        let a = w.admit(std::iter::repeat_n(100, 50), 100);
        assert_eq!((a.records, a.retry_after_ms), (0, Some(50)));
        // Bytes bind for large records: 1 MiB/s means ~10 records of 100 KiB per 1 s.
        let mut w = WriteLimiter::new(1 << 20, 1000, 0);
        let a = w.admit(std::iter::repeat_n(100 << 10, 20), 0);
        assert_eq!(a.records, 10);
        let retry = a.retry_after_ms.unwrap();
        // 24 KiB left, 256 KiB wanted (a quarter of 1 MiB/s): 232 KiB take ~227 ms.
        assert!((220..=235).contains(&retry), "retry {retry}");
        // One refused record larger than that quarter: back when it fits.
        let mut w = WriteLimiter::new(1 << 20, 1000, 0);
        let a = w.admit([900 << 10, 500 << 10].into_iter(), 0);
        assert_eq!(a.records, 1);
        let retry = a.retry_after_ms.unwrap();
        // 124 KiB left, 500 KiB needed: 376 KiB take ~367 ms.
        assert!((360..=372).contains(&retry), "retry {retry}");
    }

    /// A client sending faster than the limit that comes back when told (what the client
    /// library does) stores at the limit's rate and resends little: here under one refused
    /// record per stored one (told when its first refused record would fit: 58).
    #[test]
    fn a_client_that_follows_the_hint_stores_at_the_limit_and_resends_little() {
        let mut w = WriteLimiter::new(1 << 20, 1000, 0);
        let (mut now, mut pending, mut offered) = (0i64, 0u64, 0u64);
        let (mut stored, mut refused) = (0u64, 0u64);
        while now < 20_000 {
            // 500 new records (100 B) whenever the last call's rest is done with: 2x the limit.
            if pending == 0 {
                pending = 500;
                offered += 500;
            }
            let a = w.admit(std::iter::repeat_n(100, pending as usize), now);
            stored += u64::from(a.records);
            pending -= u64::from(a.records);
            refused += pending;
            now += a.retry_after_ms.map_or(250, i64::from);
        }
        assert!(offered > stored);
        // One second of burst, then 1,000 records/s.
        assert!((20_000..=21_500).contains(&stored), "stored {stored}");
        assert!(refused <= stored, "{refused} refused for {stored} stored");
    }

    #[test]
    fn records_larger_than_a_second_leave_a_debt_the_average_honours() {
        // 10 MiB records under 1 MiB/s: one goes into a full bucket, the next waits ~10 s.
        let mut w = WriteLimiter::new(1 << 20, 1000, 0);
        let big = 10 << 20;
        assert_eq!(w.admit(std::iter::once(big), 0).records, 1);
        let again = w.admit(std::iter::once(big), 0);
        assert_eq!(again.records, 0);
        let retry = again.retry_after_ms.unwrap();
        assert!((10_000..=10_300).contains(&retry), "retry {retry}");
        // Offered every 10 ms for 100 simulated seconds: the average stays at 1 MiB/s.
        let mut w = WriteLimiter::new(1 << 20, 1000, 0);
        let mut bytes = 0u64;
        for step in 0..10_000 {
            bytes += w.admit(std::iter::once(big), step * 10).bytes;
        }
        let mib = bytes >> 20;
        assert!((90..=112).contains(&mib), "{mib} MiB in 100 s");
        // Reads: a 10 MiB answer under 2 MiB/s leaves ~5 s of debt.
        let mut r = TokenBucket::new(2 << 20, 0);
        assert!(r.available(0) > 0);
        r.take(10 << 20);
        assert_eq!(r.available(4000), 0);
        assert!(r.available(5100) > 0);
    }

    #[test]
    fn extreme_rates_neither_overflow_nor_panic() {
        for rate in [1, MAX_LIMIT_RATE, MAX_LIMIT_RATE + 1, u64::MAX] {
            let mut w = WriteLimiter::new(rate, rate, i64::MIN / 2);
            let a = w.admit([u64::MAX, 1, u64::MAX].into_iter(), i64::MAX / 2);
            assert!(a.records <= 3);
            let mut b = TokenBucket::new(rate, 0);
            b.take(u64::MAX);
            b.take(u64::MAX);
            assert_eq!(b.available(1), 0);
            assert!(b.wait_ms(u64::MAX) >= 1);
            let mut b = TokenBucket::new(rate, 0);
            b.take(b.capacity());
            b.take(10 << 20);
            assert!(b.available(i64::MAX) > 0, "a debt is repaid");
        }
    }

    #[test]
    fn a_record_as_large_as_the_limit_is_admitted_when_the_bucket_is_full() {
        let mut w = WriteLimiter::new(1 << 20, 1000, 0);
        let big = (1 << 20) + 10; // 1 MiB of data plus a 10-byte key
        assert_eq!(w.admit(std::iter::once(big), 0).records, 1);
        let again = w.admit(std::iter::once(big), 0);
        assert_eq!(again.records, 0);
        let retry = again.retry_after_ms.unwrap();
        // A full second, and the 10 bytes of debt past it.
        assert!((990..=1010).contains(&retry), "retry {retry}");
        assert_eq!(w.admit(std::iter::once(big), retry.into()).records, 1);
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
