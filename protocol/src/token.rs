//! The shard iterator token: what a client holds between get-records calls.
//!
//! To the client it is opaque bytes; only the server decodes it. It names the stream
//! incarnation (so a token outlives neither a delete nor a re-create of its stream), the
//! shard, the next sequence number to read and when the iterator was issued (each
//! get-records answer issues a fresh one). A CRC32C catches corruption and casual edits; it
//! is not a MAC, so a client can forge a token for any shard it could read anyway.
//!
//! ```text
//! offset size field
//!  0     1    version        TOKEN_VERSION
//!  1     8    stream_id      the stream's incarnation id
//!  9     4    shard_id
//! 13     8    next_seq       sequence number of the next record to return
//! 21     8    issued_at_ms   ms since the epoch, server clock
//! 29     4    crc            CRC32C of bytes 0..29
//! ```
//! Integers are little-endian.

use crate::error::ErrorCode;

/// How long an iterator stays valid after it was issued (Kinesis: 5 minutes).
pub const ITERATOR_LIFETIME_MS: i64 = 300_000;
/// Encoded token length.
pub const ITERATOR_TOKEN_LEN: usize = 33;
/// Layout version of the token.
pub const TOKEN_VERSION: u8 = 1;
/// The longest token the wire accepts: room for a future layout without a protocol change.
pub const MAX_ITERATOR_TOKEN_BYTES: usize = 256;

/// A decoded shard iterator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IteratorToken {
    pub stream_id: u64,
    pub shard_id: u32,
    pub next_seq: u64,
    pub issued_at_ms: i64,
}

impl IteratorToken {
    pub fn encode(&self) -> [u8; ITERATOR_TOKEN_LEN] {
        let mut out = [0u8; ITERATOR_TOKEN_LEN];
        out[0] = TOKEN_VERSION;
        out[1..9].copy_from_slice(&self.stream_id.to_le_bytes());
        out[9..13].copy_from_slice(&self.shard_id.to_le_bytes());
        out[13..21].copy_from_slice(&self.next_seq.to_le_bytes());
        out[21..29].copy_from_slice(&self.issued_at_ms.to_le_bytes());
        let crc = crc32c::crc32c(&out[..29]);
        out[29..33].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes a token a client sent back. Any length, version or checksum mismatch is
    /// `InvalidIterator`; expiry is a separate check ([`IteratorToken::is_expired`]).
    pub fn decode(bytes: &[u8]) -> Result<IteratorToken, ErrorCode> {
        let bytes: &[u8; ITERATOR_TOKEN_LEN] =
            bytes.try_into().map_err(|_| ErrorCode::InvalidIterator)?;
        if bytes[0] != TOKEN_VERSION {
            return Err(ErrorCode::InvalidIterator);
        }
        let crc = u32::from_le_bytes([bytes[29], bytes[30], bytes[31], bytes[32]]);
        if crc32c::crc32c(&bytes[..29]) != crc {
            return Err(ErrorCode::InvalidIterator);
        }
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(b)
        };
        Ok(IteratorToken {
            stream_id: u64_at(1),
            shard_id: u32::from_le_bytes([bytes[9], bytes[10], bytes[11], bytes[12]]),
            next_seq: u64_at(13),
            issued_at_ms: u64_at(21) as i64,
        })
    }

    /// Whether the token has outlived `ITERATOR_LIFETIME_MS` at `now_ms`. A token issued in
    /// the future (clock step back) is not expired.
    pub fn is_expired(&self, now_ms: i64) -> bool {
        now_ms.saturating_sub(self.issued_at_ms) >= ITERATOR_LIFETIME_MS
    }

    /// Decodes and checks expiry in one step: the server's usual entry point.
    pub fn decode_live(bytes: &[u8], now_ms: i64) -> Result<IteratorToken, ErrorCode> {
        let token = IteratorToken::decode(bytes)?;
        if token.is_expired(now_ms) {
            return Err(ErrorCode::IteratorExpired);
        }
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SAMPLE: IteratorToken = IteratorToken {
        stream_id: 0x1122_3344_5566_7788,
        shard_id: 3,
        next_seq: 1000,
        issued_at_ms: 1_700_000_000_000,
    };

    #[test]
    fn golden_bytes() {
        let bytes = SAMPLE.encode();
        assert_eq!(bytes[0], 1);
        assert_eq!(
            &bytes[1..9],
            &[0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]
        );
        assert_eq!(&bytes[9..13], &[3, 0, 0, 0]);
        assert_eq!(&bytes[13..21], &1000u64.to_le_bytes());
        assert_eq!(&bytes[29..], &crc32c::crc32c(&bytes[..29]).to_le_bytes());
    }

    #[test]
    fn every_flipped_bit_and_truncation_is_invalid() {
        let bytes = SAMPLE.encode();
        assert_eq!(IteratorToken::decode(&bytes), Ok(SAMPLE));
        for byte in 0..bytes.len() {
            for bit in 0..8 {
                let mut bad = bytes;
                bad[byte] ^= 1 << bit;
                assert_eq!(IteratorToken::decode(&bad), Err(ErrorCode::InvalidIterator));
            }
        }
        for cut in 0..bytes.len() {
            assert_eq!(
                IteratorToken::decode(&bytes[..cut]),
                Err(ErrorCode::InvalidIterator)
            );
        }
        let mut long = bytes.to_vec();
        long.push(0);
        assert_eq!(
            IteratorToken::decode(&long),
            Err(ErrorCode::InvalidIterator)
        );
    }

    #[test]
    fn expiry() {
        let t = SAMPLE.issued_at_ms;
        assert!(!SAMPLE.is_expired(t));
        assert!(!SAMPLE.is_expired(t + ITERATOR_LIFETIME_MS - 1));
        assert!(SAMPLE.is_expired(t + ITERATOR_LIFETIME_MS));
        assert!(!SAMPLE.is_expired(t - 10_000));
        assert!(!SAMPLE.is_expired(i64::MIN));
        let old = IteratorToken {
            issued_at_ms: i64::MIN,
            ..SAMPLE
        };
        assert!(old.is_expired(i64::MAX));
        let bytes = SAMPLE.encode();
        assert_eq!(
            IteratorToken::decode_live(&bytes, t + ITERATOR_LIFETIME_MS),
            Err(ErrorCode::IteratorExpired)
        );
        assert_eq!(IteratorToken::decode_live(&bytes, t + 1), Ok(SAMPLE));
    }

    proptest! {
        #[test]
        fn round_trip(stream_id: u64, shard_id: u32, next_seq: u64, issued_at_ms: i64) {
            let token = IteratorToken { stream_id, shard_id, next_seq, issued_at_ms };
            prop_assert_eq!(IteratorToken::decode(&token.encode()), Ok(token));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = IteratorToken::decode(&bytes);
        }
    }
}
