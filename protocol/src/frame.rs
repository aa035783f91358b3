//! Framing: the 16-byte header every message travels in, the opcodes, and the streaming
//! frame decoder a connection runs over its receive buffer.
//!
//! ```text
//! offset size field           meaning
//!  0     4    frame_len       total frame bytes, this field and the header included
//!  4     1    version         PROTOCOL_VERSION
//!  5     1    flags           bit 0 RESPONSE, bit 1 ERROR (payload is an error body);
//!                             bits 2..8 reserved, 0
//!  6     2    opcode          the operation; a response or error echoes the request's
//!  8     8    correlation_id  chosen by the client, echoed by the response
//! 16     ...  payload         frame_len - 16 bytes: the message for (opcode, direction)
//! ```
//! All integers are little-endian. The first five bytes (length and version) keep this
//! meaning in every future version, so a peer can always tell an unsupported version apart
//! from garbage and answer it.
//!
//! The decoder is stateless: the caller keeps a receive buffer, calls [`decode_frame`] on
//! the unread part, and on `Ok(None)` reads more. It learns the frame length from the first
//! bytes ([`peek_header`]), so it can reserve room for a large frame at once and refuse an
//! oversized one before buffering it. After a [`FrameError`] the byte stream can no longer
//! be trusted to be in step: the server answers with an error frame (correlation id 0,
//! opcode 0) and closes the connection. A frame with an unknown opcode is well framed: that
//! is a [`crate::DecodeError`] for that request only, and the connection goes on.

use crate::batch::MAX_BATCH_BYTES;
use crate::error::ErrorCode;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u8 = 1;
/// Fixed frame header length; the payload starts here.
pub const FRAME_HEADER_LEN: usize = 16;
/// A frame big enough for the largest batch (10 MiB of records plus its header) with
/// 64 KiB to spare for the request's other fields. Also bounds a get-records response,
/// whose batches the server caps at 10 MiB.
pub const DEFAULT_MAX_FRAME_BYTES: usize = MAX_BATCH_BYTES + 64 * 1024;

/// Flag: the frame is a response (clear: a request).
pub const FLAG_RESPONSE: u8 = 1 << 0;
/// Flag: the response is an error; its payload is an error body. Only with `FLAG_RESPONSE`.
pub const FLAG_ERROR: u8 = 1 << 1;
/// Flag: more responses follow for this correlation id (a subscription's events). Only with
/// `FLAG_RESPONSE` and without `FLAG_ERROR`: an error always ends the exchange.
pub const FLAG_MORE: u8 = 1 << 2;
const FLAGS_KNOWN: u8 = FLAG_RESPONSE | FLAG_ERROR | FLAG_MORE;

macro_rules! opcodes {
    ($( $(#[doc = $doc:literal])* $name:ident = $value:literal, )*) => {
        /// What a frame asks for (or answers). Numbers are never reused.
        #[repr(u16)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Opcode {
            $( $(#[doc = $doc])* $name = $value, )*
        }

        impl Opcode {
            /// Every opcode, in declaration order.
            pub const ALL: &'static [Opcode] = &[$(Opcode::$name),*];

            /// `None` for a number this build does not implement.
            pub fn from_u16(value: u16) -> Option<Opcode> {
                match value {
                    $( $value => Some(Opcode::$name), )*
                    _ => None,
                }
            }

            pub fn name(self) -> &'static str {
                match self {
                    $( Opcode::$name => stringify!($name), )*
                }
            }
        }
    };
}

opcodes! {
    /// Protocol version and the engine's cores with their addresses.
    Hello = 1,
    /// The server's challenge for a principal's access key (authentication, first step).
    AuthChallenge = 2,
    /// The client's proof of its secret (authentication, second step).
    Authenticate = 3,
    /// Create a stream.
    CreateStream = 10,
    /// Delete a stream and all its records.
    DeleteStream = 11,
    /// List stream names, paginated.
    ListStreams = 12,
    /// A stream's settings and shards.
    DescribeStream = 13,
    /// Raise a stream's retention window.
    IncreaseRetention = 14,
    /// Lower a stream's retention window.
    DecreaseRetention = 15,
    /// Split an open shard in two at a hash key.
    SplitShard = 16,
    /// Merge two adjacent open shards into one.
    MergeShards = 17,
    /// Change a stream's open-shard count (uniform scaling).
    UpdateShardCount = 18,
    /// Switch a stream between provisioned and on-demand capacity.
    UpdateStreamMode = 19,
    /// Export a stream's per-shard metrics (Kinesis' EnableEnhancedMonitoring).
    EnableEnhancedMonitoring = 23,
    /// Stop exporting them.
    DisableEnhancedMonitoring = 24,
    /// Encrypt a stream's records from now on (Kinesis' StartStreamEncryption).
    StartStreamEncryption = 25,
    /// Write a stream's records in the clear from now on (Kinesis' StopStreamEncryption).
    StopStreamEncryption = 26,
    /// Put one record, routed by the server.
    PutRecord = 20,
    /// Put a batch to one shard.
    PutBatch = 21,
    /// Put a batch to each of several shards.
    PutBatches = 22,
    /// Open a shard iterator.
    GetIterator = 30,
    /// Read records at an iterator.
    GetRecords = 31,
    /// Register a push consumer on a stream.
    RegisterConsumer = 40,
    /// Remove a push consumer (its subscriptions end).
    DeregisterConsumer = 41,
    /// A stream's registered consumers.
    ListConsumers = 42,
    /// One registered consumer.
    DescribeConsumer = 43,
    /// Push a shard's records to a registered consumer as they become durable.
    SubscribeToShard = 44,
    /// Grant a subscription more bytes.
    SubscribeCredit = 45,
    /// A consumer-group worker joins, renews its leases, or leaves.
    GroupHeartbeat = 50,
    /// Store a group's checkpoint of a leased shard durably.
    Checkpoint = 51,
    /// A group's members, leases, checkpoints and lag.
    DescribeGroup = 52,
    /// Remove a group and its checkpoints.
    DeleteGroup = 53,
    /// A stream's consumer groups.
    ListGroups = 54,
    /// Create a principal (answers its access key id and secret, shown once).
    CreatePrincipal = 60,
    /// Every principal, without credentials.
    ListPrincipals = 61,
    /// Enable or disable a principal.
    UpdatePrincipal = 62,
    /// Delete a principal.
    DeletePrincipal = 63,
    /// Attach (or replace) a named policy of a principal.
    PutPolicy = 64,
    /// One policy document of a principal.
    GetPolicy = 65,
    /// Remove a policy of a principal.
    DeletePolicy = 66,
    /// The audit trail's newest lines.
    ReadAudit = 70,
    /// Wrap new data keys of every encrypted stream under the current master key.
    RotateKeys = 71,
}

impl Opcode {
    pub fn as_u16(self) -> u16 {
        self as u16
    }
}

/// The decoded fixed header of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Total frame bytes, header included.
    pub frame_len: u32,
    pub version: u8,
    pub flags: u8,
    /// Raw opcode: unknown values are the request decoder's business, not the framer's.
    pub opcode: u16,
    pub correlation_id: u64,
}

impl FrameHeader {
    pub fn is_response(&self) -> bool {
        self.flags & FLAG_RESPONSE != 0
    }

    pub fn is_error(&self) -> bool {
        self.flags & FLAG_ERROR != 0
    }

    /// More responses follow for this correlation id.
    pub fn has_more(&self) -> bool {
        self.flags & FLAG_MORE != 0
    }

    pub fn payload_len(&self) -> usize {
        (self.frame_len as usize).saturating_sub(FRAME_HEADER_LEN)
    }

    /// Writes the header as the first 16 bytes of `out`.
    pub fn encode_into(&self, out: &mut [u8; FRAME_HEADER_LEN]) {
        out[0..4].copy_from_slice(&self.frame_len.to_le_bytes());
        out[4] = self.version;
        out[5] = self.flags;
        out[6..8].copy_from_slice(&self.opcode.to_le_bytes());
        out[8..16].copy_from_slice(&self.correlation_id.to_le_bytes());
    }
}

/// One whole frame, borrowed from the receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub header: FrameHeader,
    pub payload: &'a [u8],
}

impl Frame<'_> {
    /// Bytes the frame occupies in the buffer: consume this many after handling it.
    pub fn encoded_len(&self) -> usize {
        self.header.frame_len as usize
    }
}

/// Why a byte stream is not a frame. The stream is out of step afterwards: answer (see
/// [`FrameError::code`]) and close.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    #[error("frame length {0} is shorter than the header")]
    TooSmall(u32),
    #[error("frame of {len} bytes exceeds the maximum of {max_bytes}")]
    TooLarge { len: u32, max_bytes: usize },
    #[error("unknown frame flags {0:#04x}")]
    BadFlags(u8),
}

impl FrameError {
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            FrameError::TooSmall(_) | FrameError::BadFlags(_) => ErrorCode::MalformedFrame,
            FrameError::TooLarge { .. } => ErrorCode::FrameTooLarge,
        }
    }
}

impl From<FrameError> for ErrorCode {
    fn from(e: FrameError) -> ErrorCode {
        e.code()
    }
}

/// Reads and checks the header at the start of `buf` without needing the payload.
/// `Ok(None)`: fewer than 16 bytes yet. Version and length are checked as soon as the first
/// five bytes are in, so an oversized or foreign stream is refused before it is buffered.
pub fn peek_header(buf: &[u8], max_frame_bytes: usize) -> Result<Option<FrameHeader>, FrameError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let version = buf[4];
    if version != PROTOCOL_VERSION {
        return Err(FrameError::UnsupportedVersion(version));
    }
    let frame_len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if (frame_len as usize) < FRAME_HEADER_LEN {
        return Err(FrameError::TooSmall(frame_len));
    }
    if frame_len as usize > max_frame_bytes {
        return Err(FrameError::TooLarge {
            len: frame_len,
            max_bytes: max_frame_bytes,
        });
    }
    if buf.len() < FRAME_HEADER_LEN {
        return Ok(None);
    }
    let flags = buf[5];
    let error_without_response = flags & FLAG_ERROR != 0 && flags & FLAG_RESPONSE == 0;
    let more_out_of_place =
        flags & FLAG_MORE != 0 && (flags & FLAG_RESPONSE == 0 || flags & FLAG_ERROR != 0);
    if flags & !FLAGS_KNOWN != 0 || error_without_response || more_out_of_place {
        return Err(FrameError::BadFlags(flags));
    }
    let mut correlation_id = [0u8; 8];
    correlation_id.copy_from_slice(&buf[8..16]);
    Ok(Some(FrameHeader {
        frame_len,
        version,
        flags,
        opcode: u16::from_le_bytes([buf[6], buf[7]]),
        correlation_id: u64::from_le_bytes(correlation_id),
    }))
}

/// The frame at the start of `buf`, if all of it has arrived. `Ok(None)`: read more (the
/// header, once in, tells how much: [`peek_header`]). On success, consume
/// [`Frame::encoded_len`] bytes after handling the frame.
pub fn decode_frame(buf: &[u8], max_frame_bytes: usize) -> Result<Option<Frame<'_>>, FrameError> {
    let Some(header) = peek_header(buf, max_frame_bytes)? else {
        return Ok(None);
    };
    let len = header.frame_len as usize;
    if buf.len() < len {
        return Ok(None);
    }
    Ok(Some(Frame {
        header,
        payload: &buf[FRAME_HEADER_LEN..len],
    }))
}

/// Appends a header with a zero length; `finish_frame` patches the length in once the
/// payload is written. Returns the frame's start offset in `out`.
pub(crate) fn begin_frame(out: &mut Vec<u8>, flags: u8, opcode: u16, correlation_id: u64) -> usize {
    let start = out.len();
    let mut header = [0u8; FRAME_HEADER_LEN];
    FrameHeader {
        frame_len: 0,
        version: PROTOCOL_VERSION,
        flags,
        opcode,
        correlation_id,
    }
    .encode_into(&mut header);
    out.extend_from_slice(&header);
    start
}

/// Patches the length of the frame begun at `start`, counting `tail_len` more bytes the
/// caller sends after `out` without copying them into it (a batch, by vectored write).
pub(crate) fn finish_frame(out: &mut [u8], start: usize, tail_len: usize) {
    let len = out.len() - start + tail_len;
    let len = u32::try_from(len).expect("frame longer than 4 GiB");
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let start = begin_frame(
            &mut out,
            flags,
            Opcode::PutBatch.as_u16(),
            0x0102_0304_0506_0708,
        );
        out.extend_from_slice(payload);
        finish_frame(&mut out, start, 0);
        out
    }

    #[test]
    fn golden_header() {
        let frame = sample(FLAG_RESPONSE, b"xy");
        assert_eq!(
            frame,
            [18, 0, 0, 0, 1, 1, 21, 0, 8, 7, 6, 5, 4, 3, 2, 1, b'x', b'y'],
            "length 18, version 1, flags RESPONSE, opcode 21, correlation id LE, payload"
        );
    }

    #[test]
    fn whole_frames_decode_and_prefixes_ask_for_more() {
        let frame = sample(0, b"payload");
        let mut buf = frame.clone();
        buf.extend_from_slice(b"next frame's bytes");
        let decoded = decode_frame(&buf, DEFAULT_MAX_FRAME_BYTES)
            .unwrap()
            .unwrap();
        assert_eq!(decoded.payload, b"payload");
        assert_eq!(decoded.encoded_len(), frame.len());
        assert_eq!(decoded.header.opcode, Opcode::PutBatch.as_u16());
        assert!(!decoded.header.is_response());
        for cut in 0..frame.len() {
            assert_eq!(
                decode_frame(&frame[..cut], DEFAULT_MAX_FRAME_BYTES),
                Ok(None),
                "cut {cut}"
            );
        }
        assert!(peek_header(&frame[..16], DEFAULT_MAX_FRAME_BYTES)
            .unwrap()
            .is_some());
    }

    #[test]
    fn bad_frames_are_refused_early() {
        let mut frame = sample(0, b"");
        frame[0..4].copy_from_slice(&(64u32 * 1024 * 1024).to_le_bytes());
        assert_eq!(
            decode_frame(&frame[..5], DEFAULT_MAX_FRAME_BYTES),
            Err(FrameError::TooLarge {
                len: 64 << 20,
                max_bytes: DEFAULT_MAX_FRAME_BYTES
            })
        );
        assert_eq!(
            decode_frame(&frame, 15).unwrap_err().code(),
            ErrorCode::FrameTooLarge
        );
        frame[0..4].copy_from_slice(&15u32.to_le_bytes());
        assert_eq!(
            decode_frame(&frame[..5], 100),
            Err(FrameError::TooSmall(15))
        );
        let mut frame = sample(0, b"");
        frame[4] = 2;
        assert_eq!(
            decode_frame(&frame[..5], 100),
            Err(FrameError::UnsupportedVersion(2))
        );
        for flags in [FLAG_ERROR, 4, 0x80] {
            let frame = sample(flags, b"");
            assert_eq!(decode_frame(&frame, 100), Err(FrameError::BadFlags(flags)));
        }
        // An HTTP request on the port is refused from its first five bytes.
        assert!(decode_frame(b"GET / HTTP/1.1\r\n", DEFAULT_MAX_FRAME_BYTES).is_err());
    }

    #[test]
    fn opcodes_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for &op in Opcode::ALL {
            assert!(seen.insert(op.as_u16()), "{} reused", op.name());
            assert_eq!(Opcode::from_u16(op.as_u16()), Some(op));
        }
        assert_eq!(Opcode::from_u16(0), None);
    }
}
