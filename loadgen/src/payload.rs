//! What the load generator writes: partition keys and JSON-ish record data that carry what
//! the consumers and `--verify` need.
//!
//! Every record's data starts with a fixed-width header, then clickstream-like text up to
//! the record's size:
//!
//! ```text
//! {"r":"RRRRRRRR","k":"KKKKKKKK","n":"NNNNNNNN","t":"TTTTTTTTTTTT","d":"...padding..."}
//! 0     6              21             36             51               70            size
//! ```
//!
//! all numbers in lower-case hex, fixed width: `r` the run id (32 bits; records of other
//! runs in the same stream are ignored), `k` the key index (32 bits), `n` the key's
//! per-key counter (32 bits, 0, 1, 2, ... in the order the key's records were sent), `t`
//! the nanoseconds from the start of the run at which the record was due (open loop) or
//! sent (closed loop), 48 bits. Fixed offsets make decoding a few loads, so readers keep up
//! with the producers.
//!
//! The header fixes the smallest record at [`HEADER_BYTES`] + 2 = 72 bytes.

use bytes::{Bytes, BytesMut};

/// Bytes before the padding.
pub const HEADER_BYTES: usize = 70;
/// The smallest record the load generator writes: the header and the closing `"}`.
pub const MIN_RECORD_BYTES: usize = HEADER_BYTES + 2;
/// The largest: the protocol's default per-record limit.
pub const MAX_RECORD_BYTES: usize = 1 << 20;

const R_AT: usize = 6;
const K_AT: usize = 21;
const N_AT: usize = 36;
const T_AT: usize = 51;
const T_MAX: u64 = (1 << 48) - 1;

/// What a record's header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub run: u32,
    pub key: u32,
    pub counter: u32,
    /// Nanoseconds from the run's start at which the record was due (or sent).
    pub origin_ns: u64,
}

/// Why a record's data is not one of ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    TooShort,
    Malformed,
}

/// A fast, seedable pseudo-random generator (SplitMix64); good enough for choosing keys,
/// sizes and padding, and reproducible from `--seed`.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform in `0..n` (n > 0), by multiply-shift (bias below 2^-32 for n < 2^32).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// SplitMix64's finaliser: a bijection on u64 that scatters bits.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The partition key of key index `idx`: device-like, distinct per index.
pub fn key_name(idx: u64) -> String {
    format!("dev-{:04x}-{idx}", mix(idx) & 0xffff)
}

/// Clickstream-like text without `"` or `\`, which record padding is cut from.
#[derive(Debug, Clone)]
pub struct PaddingPool {
    text: Vec<u8>,
    window: usize,
}

impl PaddingPool {
    /// A pool from which any `len <= max_len` bytes can be cut at many offsets.
    pub fn new(max_len: usize, seed: u64) -> PaddingPool {
        const WORDS: &[&str] = &[
            "page=/products/",
            "page=/cart",
            "page=/search?q=",
            "ref=email",
            "ref=ads",
            "ua=Mozilla/5.0",
            "event=click",
            "event=view",
            "event=scroll",
            "sku=",
            "lang=en",
            "lang=de",
            "screen=1920x1080",
            "session=",
            "os=android",
            "os=ios",
            "button=buy",
        ];
        let window = 64 << 10;
        let mut rng = Rng::new(seed);
        let mut text = Vec::with_capacity(max_len + window + 64);
        while text.len() < max_len + window {
            text.extend_from_slice(WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes());
            let n = rng.below(100_000);
            text.extend_from_slice(n.to_string().as_bytes());
            text.push(b'&');
        }
        PaddingPool { text, window }
    }

    /// `len` bytes of padding starting at a random offset.
    pub fn cut(&self, len: usize, rng: &mut Rng) -> &[u8] {
        assert!(
            len + self.window <= self.text.len(),
            "padding of {len} bytes"
        );
        let at = rng.below(self.window as u64) as usize;
        &self.text[at..at + len]
    }
}

/// Writes records into large shared buffers, so a record's `Bytes` costs no allocation of
/// its own (a buffer is freed once every record cut from it has been sent and dropped).
#[derive(Debug)]
pub struct RecordWriter {
    arena: BytesMut,
    chunk_bytes: usize,
}

impl RecordWriter {
    pub fn new(record_bytes_max: usize) -> RecordWriter {
        let chunk_bytes = (record_bytes_max * 16).max(1 << 20);
        RecordWriter {
            arena: BytesMut::with_capacity(chunk_bytes),
            chunk_bytes,
        }
    }

    /// A record of exactly `size` bytes (at least [`MIN_RECORD_BYTES`]) carrying `header`.
    pub fn write(
        &mut self,
        header: &Header,
        size: usize,
        pool: &PaddingPool,
        rng: &mut Rng,
    ) -> Bytes {
        assert!(size >= MIN_RECORD_BYTES, "record of {size} bytes");
        if self.arena.capacity() - self.arena.len() < size {
            self.arena = BytesMut::with_capacity(self.chunk_bytes.max(size));
        }
        self.arena.extend_from_slice(&header_bytes(header));
        self.arena
            .extend_from_slice(pool.cut(size - MIN_RECORD_BYTES, rng));
        self.arena.extend_from_slice(b"\"}");
        self.arena.split().freeze()
    }
}

/// A record of `size` bytes carrying `header` in `out` (resized to it): for a sender that
/// copies the record at once (the client's `Producer`), one buffer serves every record.
pub fn write_record_into(
    out: &mut Vec<u8>,
    header: &Header,
    size: usize,
    pool: &PaddingPool,
    rng: &mut Rng,
) {
    out.resize(size, 0);
    fill_record(header, out, pool, rng);
}

/// The record header's bytes.
fn header_bytes(header: &Header) -> [u8; HEADER_BYTES] {
    assert!(
        header.origin_ns <= T_MAX,
        "run too long for the header's clock"
    );
    let mut head = [0u8; HEADER_BYTES];
    head.copy_from_slice(
        br#"{"r":"00000000","k":"00000000","n":"00000000","t":"000000000000","d":""#,
    );
    head[R_AT..R_AT + 8].copy_from_slice(&hex8(header.run));
    head[K_AT..K_AT + 8].copy_from_slice(&hex8(header.key));
    head[N_AT..N_AT + 8].copy_from_slice(&hex8(header.counter));
    head[T_AT..T_AT + 4].copy_from_slice(&hex8((header.origin_ns >> 32) as u32)[4..]);
    head[T_AT + 4..T_AT + 12].copy_from_slice(&hex8(header.origin_ns as u32));
    head
}

/// `v` as 8 lower-case hex digits, all at once (every record's header has 36 of them: digit
/// by digit they were a tenth of the load generator's CPU at millions of records a second).
fn hex8(v: u32) -> [u8; 8] {
    // One nibble per byte, the most significant in the highest byte.
    let mut x = u64::from(v);
    x = (x & 0xffff_0000) << 16 | (x & 0xffff);
    x = (x & 0x0000_ff00_0000_ff00) << 8 | (x & 0x0000_00ff_0000_00ff);
    x = (x & 0x00f0_00f0_00f0_00f0) << 4 | (x & 0x000f_000f_000f_000f);
    // 1 in each byte whose nibble is 10 or more ('a' is 39 past '9' + 1).
    let letters = ((x + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
    (x + 0x3030_3030_3030_3030 + letters * 39).to_be_bytes()
}

/// Writes a record carrying `header` into `out` (its whole length, at least
/// [`MIN_RECORD_BYTES`]): the header, padding cut from `pool`, the closing `"}`. For
/// records generated straight into a batch (`BatchBuilder::push_with`).
pub fn fill_record(header: &Header, out: &mut [u8], pool: &PaddingPool, rng: &mut Rng) {
    let size = out.len();
    assert!(size >= MIN_RECORD_BYTES, "record of {size} bytes");
    out[..HEADER_BYTES].copy_from_slice(&header_bytes(header));
    out[HEADER_BYTES..size - 2].copy_from_slice(pool.cut(size - MIN_RECORD_BYTES, rng));
    out[size - 2..].copy_from_slice(b"\"}");
}

#[cfg(test)]
fn put_hex(out: &mut [u8], mut v: u64) {
    for b in out.iter_mut().rev() {
        *b = b"0123456789abcdef"[(v & 0xf) as usize];
        v >>= 4;
    }
    debug_assert_eq!(v, 0, "value wider than its field");
}

fn get_hex(field: &[u8]) -> Option<u64> {
    field.iter().try_fold(0u64, |acc, &b| {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        Some(acc << 4 | u64::from(d))
    })
}

/// Reads a record's header; the data is untrusted (it may be another program's record).
pub fn decode(data: &[u8]) -> Result<Header, DecodeError> {
    if data.len() < MIN_RECORD_BYTES {
        return Err(DecodeError::TooShort);
    }
    let shape = data.starts_with(br#"{"r":""#)
        && &data[R_AT + 8..K_AT] == br#"","k":""#
        && &data[K_AT + 8..N_AT] == br#"","n":""#
        && &data[N_AT + 8..T_AT] == br#"","t":""#
        && &data[T_AT + 12..HEADER_BYTES] == br#"","d":""#
        && data.ends_with(b"\"}");
    let field = |at: usize, len: usize| get_hex(&data[at..at + len]);
    match (
        shape,
        field(R_AT, 8),
        field(K_AT, 8),
        field(N_AT, 8),
        field(T_AT, 12),
    ) {
        (true, Some(run), Some(key), Some(counter), Some(origin_ns)) => Ok(Header {
            run: run as u32,
            key: key as u32,
            counter: counter as u32,
            origin_ns,
        }),
        _ => Err(DecodeError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex8_writes_every_value_as_put_hex_does() {
        let mut rng = Rng::new(7);
        let mut values = vec![0u32, 1, 9, 10, 15, 16, 0xabcdef01, 0x9a9a9a9a, u32::MAX];
        values.extend((0..10_000).map(|_| rng.below(u64::from(u32::MAX) + 1) as u32));
        for v in values {
            let mut want = [0u8; 8];
            put_hex(&mut want, u64::from(v));
            assert_eq!(hex8(v), want, "{v:#x}");
            assert_eq!(get_hex(&hex8(v)), Some(u64::from(v)));
        }
    }

    #[test]
    fn records_round_trip_at_every_size() {
        let pool = PaddingPool::new(4096, 7);
        let mut rng = Rng::new(1);
        let mut w = RecordWriter::new(4096);
        for size in [MIN_RECORD_BYTES, 100, 1024, 4096] {
            let h = Header {
                run: 0xdead_beef,
                key: 123_456,
                counter: u32::MAX,
                origin_ns: T_MAX,
            };
            let data = w.write(&h, size, &pool, &mut rng);
            assert_eq!(data.len(), size);
            assert_eq!(decode(&data), Ok(h));
            let text = std::str::from_utf8(&data).unwrap();
            assert!(text.starts_with(r#"{"r":"deadbeef","k":"0001e240","n":"ffffffff""#));
            assert!(!text[HEADER_BYTES..size - 2].contains(['"', '\\']));
        }
    }

    #[test]
    fn a_record_filled_in_place_is_the_record_written() {
        let pool = PaddingPool::new(4096, 7);
        let mut w = RecordWriter::new(4096);
        // One reused buffer, sizes going up and down.
        let mut reused = Vec::new();
        for size in [MIN_RECORD_BYTES, 100, 4096, 1024] {
            let h = Header {
                run: 3,
                key: 9,
                counter: size as u32,
                origin_ns: 12345,
            };
            let written = w.write(&h, size, &pool, &mut Rng::new(5));
            let mut filled = vec![0u8; size];
            fill_record(&h, &mut filled, &pool, &mut Rng::new(5));
            assert_eq!(&written[..], &filled[..]);
            assert_eq!(decode(&filled).unwrap(), h);
            write_record_into(&mut reused, &h, size, &pool, &mut Rng::new(5));
            assert_eq!(reused, filled);
        }
    }

    #[test]
    fn foreign_or_damaged_data_is_refused() {
        assert_eq!(decode(b"hello"), Err(DecodeError::TooShort));
        let pool = PaddingPool::new(200, 7);
        let mut rng = Rng::new(1);
        let h = Header {
            run: 1,
            key: 2,
            counter: 3,
            origin_ns: 4,
        };
        let good = RecordWriter::new(200)
            .write(&h, 200, &pool, &mut rng)
            .to_vec();
        for at in [0, R_AT, K_AT + 3, N_AT + 7, T_AT + 11, 69, 199] {
            let mut bad = good.clone();
            bad[at] = b'x';
            assert_eq!(
                decode(&bad),
                Err(DecodeError::Malformed),
                "byte {at} damaged"
            );
        }
    }

    #[test]
    fn rng_is_reproducible_and_bounded() {
        let (mut a, mut b) = (Rng::new(42), Rng::new(42));
        for _ in 0..1000 {
            let x = a.below(10);
            assert_eq!(x, b.below(10));
            assert!(x < 10);
        }
        assert_ne!(key_name(1), key_name(2));
    }
}
