//! The shard iterator token: what a client holds between get-records calls.
//!
//! To the client it is opaque bytes; only the server decodes it. It names the stream
//! incarnation (so a token outlives neither a delete nor a re-create of its stream), the
//! shard, the next sequence number to read and when the iterator was issued (each
//! get-records answer issues a fresh one). It is authenticated with HMAC-SHA256 under a
//! secret only the server holds ([`TokenKey`], kept in its data directory): a client can
//! neither forge a token for another position nor make one live longer.
//!
//! ```text
//! offset size field
//!  0     1    version        TOKEN_VERSION
//!  1     8    stream_id      the stream's incarnation id
//!  9     4    shard_id
//! 13     8    next_seq       sequence number of the next record to return
//! 21     8    issued_at_ms   ms since the epoch, server clock
//! 29    32    mac            HMAC-SHA256(key, bytes 0..29)
//! ```
//! Integers are little-endian.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::ErrorCode;

/// How long an iterator stays valid after it was issued (Kinesis: 5 minutes).
pub const ITERATOR_LIFETIME_MS: i64 = 300_000;
/// Encoded token length.
pub const ITERATOR_TOKEN_LEN: usize = 61;
/// Layout version of the token (1 was CRC32C-checked, not authenticated).
pub const TOKEN_VERSION: u8 = 2;
/// The longest token the wire accepts: room for a future layout without a protocol change.
pub const MAX_ITERATOR_TOKEN_BYTES: usize = 256;
/// Bytes of a [`TokenKey`].
pub const TOKEN_KEY_LEN: usize = 32;
const BODY_LEN: usize = 29;

/// The server's secret for authenticating iterator tokens.
#[derive(Clone)]
pub struct TokenKey([u8; TOKEN_KEY_LEN]);

impl TokenKey {
    pub fn new(bytes: [u8; TOKEN_KEY_LEN]) -> TokenKey {
        TokenKey(bytes)
    }

    fn mac(&self, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(body);
        mac
    }
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

/// A decoded shard iterator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IteratorToken {
    pub stream_id: u64,
    pub shard_id: u32,
    pub next_seq: u64,
    pub issued_at_ms: i64,
}

impl IteratorToken {
    pub fn encode(&self, key: &TokenKey) -> [u8; ITERATOR_TOKEN_LEN] {
        let mut out = [0u8; ITERATOR_TOKEN_LEN];
        out[0] = TOKEN_VERSION;
        out[1..9].copy_from_slice(&self.stream_id.to_le_bytes());
        out[9..13].copy_from_slice(&self.shard_id.to_le_bytes());
        out[13..21].copy_from_slice(&self.next_seq.to_le_bytes());
        out[21..29].copy_from_slice(&self.issued_at_ms.to_le_bytes());
        let tag = key.mac(&out[..BODY_LEN]).finalize().into_bytes();
        out[BODY_LEN..].copy_from_slice(&tag);
        out
    }

    /// Decodes a token a client sent back. Any length, version or MAC mismatch (a forged,
    /// altered or foreign token) is `InvalidIterator`; expiry is a separate check
    /// ([`IteratorToken::is_expired`]).
    pub fn decode(bytes: &[u8], key: &TokenKey) -> Result<IteratorToken, ErrorCode> {
        let bytes: &[u8; ITERATOR_TOKEN_LEN] =
            bytes.try_into().map_err(|_| ErrorCode::InvalidIterator)?;
        if bytes[0] != TOKEN_VERSION {
            return Err(ErrorCode::InvalidIterator);
        }
        key.mac(&bytes[..BODY_LEN])
            .verify_slice(&bytes[BODY_LEN..])
            .map_err(|_| ErrorCode::InvalidIterator)?;
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
    pub fn decode_live(
        bytes: &[u8],
        key: &TokenKey,
        now_ms: i64,
    ) -> Result<IteratorToken, ErrorCode> {
        let token = IteratorToken::decode(bytes, key)?;
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

    fn key() -> TokenKey {
        TokenKey::new([7; TOKEN_KEY_LEN])
    }

    #[test]
    fn golden_bytes() {
        let bytes = SAMPLE.encode(&key());
        assert_eq!(bytes[0], 2);
        assert_eq!(
            &bytes[1..9],
            &[0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]
        );
        assert_eq!(&bytes[9..13], &[3, 0, 0, 0]);
        assert_eq!(&bytes[13..21], &1000u64.to_le_bytes());
        assert_eq!(&bytes[21..29], &1_700_000_000_000i64.to_le_bytes());
        let mut mac = Hmac::<Sha256>::new_from_slice(&[7; 32]).unwrap();
        mac.update(&bytes[..29]);
        assert_eq!(&bytes[29..], &mac.finalize().into_bytes()[..]);
    }

    #[test]
    fn every_flipped_bit_and_truncation_is_invalid() {
        let bytes = SAMPLE.encode(&key());
        assert_eq!(IteratorToken::decode(&bytes, &key()), Ok(SAMPLE));
        for byte in 0..bytes.len() {
            for bit in 0..8 {
                let mut bad = bytes;
                bad[byte] ^= 1 << bit;
                assert_eq!(
                    IteratorToken::decode(&bad, &key()),
                    Err(ErrorCode::InvalidIterator)
                );
            }
        }
        for cut in 0..bytes.len() {
            assert_eq!(
                IteratorToken::decode(&bytes[..cut], &key()),
                Err(ErrorCode::InvalidIterator)
            );
        }
        let mut long = bytes.to_vec();
        long.push(0);
        assert_eq!(
            IteratorToken::decode(&long, &key()),
            Err(ErrorCode::InvalidIterator)
        );
    }

    #[test]
    fn a_token_made_without_the_key_is_refused() {
        // Forged: the right layout with a MAC under another key (or a recomputed CRC, as
        // version 1 allowed), for another position or a later issue time.
        let forged = IteratorToken {
            next_seq: 0,
            issued_at_ms: i64::MAX,
            ..SAMPLE
        }
        .encode(&TokenKey::new([8; TOKEN_KEY_LEN]));
        assert_eq!(
            IteratorToken::decode(&forged, &key()),
            Err(ErrorCode::InvalidIterator)
        );
        let mut v1 = SAMPLE.encode(&key());
        v1[0] = 1;
        assert_eq!(
            IteratorToken::decode(&v1, &key()),
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
        let bytes = SAMPLE.encode(&key());
        assert_eq!(
            IteratorToken::decode_live(&bytes, &key(), t + ITERATOR_LIFETIME_MS),
            Err(ErrorCode::IteratorExpired)
        );
        assert_eq!(
            IteratorToken::decode_live(&bytes, &key(), t + 1),
            Ok(SAMPLE)
        );
    }

    proptest! {
        #[test]
        fn round_trip(stream_id: u64, shard_id: u32, next_seq: u64, issued_at_ms: i64) {
            let token = IteratorToken { stream_id, shard_id, next_seq, issued_at_ms };
            prop_assert_eq!(IteratorToken::decode(&token.encode(&key()), &key()), Ok(token));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = IteratorToken::decode(&bytes, &key());
        }
    }
}
