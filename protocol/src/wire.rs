//! Field-level codec shared by every message: fixed little-endian integers, LEB128 lengths,
//! length-prefixed strings and bytes, presence-tagged options, and the typed error any
//! payload decoder returns.
//!
//! Decoding reads untrusted bytes, so every read is bounds-checked and fails with a
//! [`DecodeError`]; nothing allocates in proportion to a length or count the input claims
//! until the input is known to hold that many bytes. Decoded strings and byte fields borrow
//! from the frame buffer.

use crate::batch::{get_varint, put_varint, BatchError};
use crate::error::ErrorCode;

/// Why a payload could not be decoded. Each variant maps to a wire [`ErrorCode`] via
/// [`DecodeError::code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("payload ends inside {field}")]
    Truncated { field: &'static str },
    #[error("{0} bytes left over after the message")]
    TrailingBytes(usize),
    #[error("malformed {field}: {reason}")]
    Malformed {
        field: &'static str,
        reason: &'static str,
    },
    #[error("invalid {field}: {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
    #[error("unknown opcode {0}")]
    UnknownOpcode(u16),
    #[error("unknown error code {0}")]
    UnknownErrorCode(u16),
    #[error("expected a {expected} frame")]
    WrongDirection { expected: &'static str },
    #[error("batch: {0}")]
    Batch(#[from] BatchError),
}

impl DecodeError {
    /// The wire code a server answers with when a request fails to decode.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::Truncated { .. }
            | DecodeError::TrailingBytes(_)
            | DecodeError::Malformed { .. }
            | DecodeError::UnknownErrorCode(_)
            | DecodeError::WrongDirection { .. } => ErrorCode::MalformedFrame,
            DecodeError::Invalid { .. } => ErrorCode::InvalidArgument,
            DecodeError::UnknownOpcode(_) => ErrorCode::UnknownOpcode,
            DecodeError::Batch(e) => ErrorCode::from(e.clone()),
        }
    }
}

impl From<DecodeError> for ErrorCode {
    fn from(e: DecodeError) -> ErrorCode {
        e.code()
    }
}

pub(crate) fn put_u8(out: &mut Vec<u8>, v: u8) {
    out.push(v);
}
pub(crate) fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}
pub(crate) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}
pub(crate) fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}
pub(crate) fn put_i64(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&v.to_le_bytes());
}
pub(crate) fn put_u128(out: &mut Vec<u8>, v: u128) {
    out.extend_from_slice(&v.to_le_bytes());
}
pub(crate) fn put_bool(out: &mut Vec<u8>, v: bool) {
    out.push(u8::from(v));
}

/// A varint length, then the bytes. Lengths above `u32::MAX` cannot occur: frames are
/// bounded by a u32 length.
pub(crate) fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).expect("field longer than a frame can carry");
    put_varint(out, len);
    out.extend_from_slice(bytes);
}

pub(crate) fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

/// Presence byte (0 or 1), then the value when present.
pub(crate) fn put_option<T: Copy>(out: &mut Vec<u8>, v: Option<T>, put: fn(&mut Vec<u8>, T)) {
    match v {
        Some(v) => {
            out.push(1);
            put(out, v);
        }
        None => out.push(0),
    }
}

pub(crate) fn put_count(out: &mut Vec<u8>, n: usize) {
    put_varint(out, u32::try_from(n).expect("count fits a u32"));
}

/// A bounds-checked cursor over an untrusted payload.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The next `len` bytes, or `Truncated` if the payload is shorter.
    pub(crate) fn take(
        &mut self,
        len: usize,
        field: &'static str,
    ) -> Result<&'a [u8], DecodeError> {
        if len > self.remaining() {
            return Err(DecodeError::Truncated { field });
        }
        let out = &self.buf[self.pos..self.pos + len];
        self.pos += len;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }
    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }
    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }
    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }
    pub(crate) fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.array(field)?))
    }
    pub(crate) fn u128(&mut self, field: &'static str) -> Result<u128, DecodeError> {
        Ok(u128::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn bool(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Malformed {
                field,
                reason: "boolean is neither 0 nor 1",
            }),
        }
    }

    pub(crate) fn varint(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        if self.remaining() == 0 {
            return Err(DecodeError::Truncated { field });
        }
        get_varint(self.buf, &mut self.pos).ok_or(DecodeError::Malformed {
            field,
            reason: "bad or truncated varint",
        })
    }

    /// A varint-prefixed byte field of at most `max_len` bytes. The bound is checked before
    /// the bytes are looked at, so an oversized field is `Invalid` whatever follows it.
    pub(crate) fn bytes(
        &mut self,
        max_len: usize,
        field: &'static str,
    ) -> Result<&'a [u8], DecodeError> {
        let len = self.varint(field)? as usize;
        if len > max_len {
            return Err(DecodeError::Invalid {
                field,
                reason: "too long",
            });
        }
        self.take(len, field)
    }

    pub(crate) fn str(
        &mut self,
        max_len: usize,
        field: &'static str,
    ) -> Result<&'a str, DecodeError> {
        let bytes = self.bytes(max_len, field)?;
        std::str::from_utf8(bytes).map_err(|_| DecodeError::Malformed {
            field,
            reason: "not UTF-8",
        })
    }

    /// A presence byte; `true` when a value follows.
    pub(crate) fn present(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Malformed {
                field,
                reason: "presence byte is neither 0 nor 1",
            }),
        }
    }

    pub(crate) fn option<T>(
        &mut self,
        field: &'static str,
        get: fn(&mut Reader<'a>, &'static str) -> Result<T, DecodeError>,
    ) -> Result<Option<T>, DecodeError> {
        if self.present(field)? {
            get(self, field).map(Some)
        } else {
            Ok(None)
        }
    }

    /// A field added at the end of a message after the message was released: `None` when
    /// the payload ends before it (a peer built before the field sends nothing there),
    /// else the field as `get` reads it. Only for a message's last field(s): a payload that
    /// ends early anywhere else is still `Truncated`.
    pub(crate) fn trailing<T>(
        &mut self,
        field: &'static str,
        get: fn(&mut Reader<'a>, &'static str) -> Result<T, DecodeError>,
    ) -> Result<Option<T>, DecodeError> {
        if self.remaining() == 0 {
            Ok(None)
        } else {
            get(self, field).map(Some)
        }
    }

    /// A varint element count, checked against `max` and against what the rest of the
    /// payload can hold at `min_item_bytes` each, so the caller may loop without trusting it.
    pub(crate) fn count(
        &mut self,
        max: usize,
        min_item_bytes: usize,
        field: &'static str,
    ) -> Result<usize, DecodeError> {
        let n = self.varint(field)? as usize;
        if n > max {
            return Err(DecodeError::Invalid {
                field,
                reason: "too many elements",
            });
        }
        if n.saturating_mul(min_item_bytes.max(1)) > self.remaining() {
            return Err(DecodeError::Truncated { field });
        }
        Ok(n)
    }

    /// The next `len` bytes without consuming them (`Truncated` if they are not there).
    pub(crate) fn peek(&self, len: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if len > self.remaining() {
            return Err(DecodeError::Truncated { field });
        }
        Ok(&self.buf[self.pos..self.pos + len])
    }

    /// Everything left: for the field that ends a payload (a batch).
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let out = &self.buf[self.pos..];
        self.pos = self.buf.len();
        out
    }

    /// Fails if bytes are left over: a payload is exactly one message.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_reads_what_writers_write() {
        let mut out = Vec::new();
        put_u8(&mut out, 7);
        put_u16(&mut out, 0x1234);
        put_u32(&mut out, 0xdead_beef);
        put_u64(&mut out, u64::MAX - 1);
        put_i64(&mut out, -5);
        put_u128(&mut out, u128::MAX / 3);
        put_bool(&mut out, true);
        put_str(&mut out, "héllo");
        put_option(&mut out, Some(9u32), put_u32);
        put_option(&mut out, None::<u32>, put_u32);
        put_count(&mut out, 300);
        let mut r = Reader::new(&out);
        assert_eq!(r.u8("a"), Ok(7));
        assert_eq!(r.u16("a"), Ok(0x1234));
        assert_eq!(r.u32("a"), Ok(0xdead_beef));
        assert_eq!(r.u64("a"), Ok(u64::MAX - 1));
        assert_eq!(r.i64("a"), Ok(-5));
        assert_eq!(r.u128("a"), Ok(u128::MAX / 3));
        assert_eq!(r.bool("a"), Ok(true));
        assert_eq!(r.str(16, "a"), Ok("héllo"));
        assert_eq!(r.option("a", Reader::u32), Ok(Some(9)));
        assert_eq!(r.option("a", Reader::u32), Ok(None));
        assert_eq!(r.varint("a"), Ok(300));
        assert_eq!(
            r.trailing("a", Reader::u32),
            Ok(None),
            "nothing left: absent"
        );
        r.finish().unwrap();
        let mut r = Reader::new(&[7, 0, 0, 0, 9]);
        assert_eq!(r.trailing("a", Reader::u32), Ok(Some(7)));
        assert!(matches!(
            r.trailing("a", Reader::u32),
            Err(DecodeError::Truncated { .. })
        ));
    }

    #[test]
    fn claimed_lengths_are_checked_before_use() {
        // A string claiming 4 GiB in a 6-byte payload.
        let mut out = Vec::new();
        put_varint(&mut out, u32::MAX);
        out.push(b'x');
        assert!(matches!(
            Reader::new(&out).str(usize::MAX, "s"),
            Err(DecodeError::Truncated { .. })
        ));
        assert!(matches!(
            Reader::new(&out).str(10, "s"),
            Err(DecodeError::Invalid { .. })
        ));
        // A count claiming a million elements of 8 bytes in a tiny payload.
        let mut out = Vec::new();
        put_varint(&mut out, 1_000_000);
        assert!(matches!(
            Reader::new(&out).count(usize::MAX, 8, "n"),
            Err(DecodeError::Truncated { .. })
        ));
        assert!(matches!(
            Reader::new(&[2u8]).bool("b"),
            Err(DecodeError::Malformed { .. })
        ));
        assert!(matches!(
            Reader::new(&[5, b'a']).str(9, "s"),
            Err(DecodeError::Truncated { .. })
        ));
        assert!(matches!(
            Reader::new(&[0xff, 0xfe]).str(9, "s"),
            Err(DecodeError::Malformed { .. })
        ));
        assert!(matches!(
            Reader::new(&[1, 0xff]).str(9, "s"),
            Err(DecodeError::Malformed { .. })
        ));
        assert_eq!(
            Reader::new(&[1]).finish(),
            Err(DecodeError::TrailingBytes(1))
        );
    }
}
