//! The wire error codes: the one vocabulary in which the engine tells a client why a request
//! failed.
//!
//! Codes are grouped by range, so a client can tell the kind of failure from the number alone:
//!
//! | range | kind |
//! |---|---|
//! | 0 | success |
//! | 1xx | the request or its frame could not be understood |
//! | 2xx | a stream or shard does not exist, already exists or is elsewhere |
//! | 3xx | a record or batch was refused |
//! | 4xx | throttling, busy or over a limit |
//! | 5xx | an iterator is expired or invalid |
//! | 6xx | the server or its storage failed (encryption keys included) |
//! | 7xx | authentication and authorization |
//!
//! A code's number is never changed or reused once released: old clients keep interpreting
//! it, and the test `codes_are_pinned` fails if one moves. New codes take the next free number
//! of their range. Engine errors (`thiserror` enums in the engine) convert to these codes at
//! one boundary, the connection handler; batch and decode errors convert here.

use crate::batch::{BatchError, MAX_RECORDS_PER_BATCH};

macro_rules! error_codes {
    ($( $(#[doc = $doc:literal])* $name:ident = $value:literal, )*) => {
        /// Why a request failed, as carried in an error response (`0` is success).
        #[repr(u16)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum ErrorCode {
            $( $(#[doc = $doc])* $name = $value, )*
        }

        impl ErrorCode {
            /// Every code, in declaration order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name),*];

            /// The code for a number read off the wire; `None` for a number this build
            /// does not know.
            pub fn from_u16(value: u16) -> Option<ErrorCode> {
                match value {
                    $( $value => Some(ErrorCode::$name), )*
                    _ => None,
                }
            }

            /// The code's name, as printed in logs and by the CLI.
            pub fn name(self) -> &'static str {
                match self {
                    $( ErrorCode::$name => stringify!($name), )*
                }
            }
        }
    };
}

error_codes! {
    /// Success; never sent in an error response.
    Ok = 0,

    // 1xx: the request or its frame.
    /// The frame or its payload could not be decoded (bad field, trailing bytes, bad flags).
    MalformedFrame = 100,
    /// The frame's protocol version (or a batch's layout version) is not supported.
    UnsupportedVersion = 101,
    /// The frame is longer than the receiver's maximum frame size.
    FrameTooLarge = 102,
    /// The opcode is not one this server implements.
    UnknownOpcode = 103,
    /// A field decoded but its value is out of range (stream name, retention, limits ...).
    InvalidArgument = 104,

    // 2xx: streams and shards.
    /// No stream has this name.
    UnknownStream = 200,
    /// A stream with this name already exists.
    StreamExists = 201,
    /// The stream has no shard with this id.
    UnknownShard = 202,
    /// The shard was split or merged and takes no more writes; the error carries the stream's
    /// new shard-map version: describe the stream (until it shows at least that version) and
    /// send the records to the children that now own their hash keys.
    ShardClosed = 203,
    /// The stream has no registered consumer with this name.
    UnknownConsumer = 204,
    /// A consumer with this name is already registered on the stream.
    ConsumerExists = 205,
    /// The stream has no consumer group with this name.
    UnknownGroup = 206,
    /// The worker does not hold the shard's lease (it expired or moved): its checkpoint was
    /// not stored; stop reading the shard and heartbeat for the current leases.
    LeaseLost = 207,
    /// A newer subscription of the same consumer to the same shard took over this one.
    SubscriptionReplaced = 208,
    /// The server has no principal with this name.
    UnknownPrincipal = 209,
    /// A principal with this name exists already.
    PrincipalExists = 210,
    /// The principal has no policy with this name.
    UnknownPolicy = 211,

    // 3xx: records and batches.
    /// A record's data exceeds the stream's per-record limit.
    RecordTooLarge = 300,
    /// A batch exceeds 500 records or 10 MiB.
    BatchTooLarge = 301,
    /// A batch or one of its records is malformed (key length, UTF-8, framing).
    InvalidRecord = 302,
    /// A batch's header or records checksum does not match its bytes.
    ChecksumMismatch = 303,
    /// A record's hash key lies outside the range of the shard the batch was sent to.
    WrongShard = 304,

    // 4xx: throttling, busy, limits.
    /// The shard's write limit is exhausted; retry after `retry_after_ms`.
    Throttled = 400,
    /// The shard's read limit is exhausted; retry after `retry_after_ms`.
    ReadThrottled = 401,
    /// The server's in-flight or memory bound is reached; retry after `retry_after_ms`.
    ServerBusy = 402,
    /// The server's connection bound is reached; retry later, ideally on an open connection.
    TooManyConnections = 403,
    /// An account-wide limit (streams, shards) would be exceeded; not retryable as is.
    LimitExceeded = 404,

    // 5xx: iterators.
    /// The iterator is older than its lifetime (5 minutes); open a new one.
    IteratorExpired = 500,
    /// The iterator token is corrupt, forged or belongs to a deleted stream.
    InvalidIterator = 501,

    // 6xx: server and storage.
    /// An unexpected server failure (a bug); the message says more.
    Internal = 600,
    /// The disk is full; the write was not stored. Retry once space returns.
    StorageFull = 601,
    /// An I/O error failed this request; the shard still serves what it can.
    StorageIo = 602,
    /// A flush failed and the shard refuses writes until restarted and recovered.
    ShardPoisoned = 603,
    /// The server is shutting down and did not do the request; retry on a restarted server.
    ShuttingDown = 604,
    /// The request reached the server, but the core running it stopped before answering: it
    /// may or may not have been done. Not retryable as is: a put sent again may be stored
    /// twice (read the shard to find out).
    OutcomeUnknown = 605,
    /// Stored data is damaged (a checksum fails, a file of the shard is missing or
    /// unreadable); the message names the shard and the damaged sequence range, and where
    /// reading can go on. The rest of the shard, and every other shard, is still served.
    Corrupt = 606,
    /// Encryption at rest: no key file is configured, or the master key a stream's data key
    /// is wrapped under is missing or wrong; nothing was written or served.
    KeyUnavailable = 607,

    // 7xx: security.
    /// The request needs an authenticated connection (the server has authentication on):
    /// authenticate after Hello, or connect with a client certificate that maps to a
    /// principal.
    AuthenticationRequired = 700,
    /// Authentication failed: an unknown access key, a wrong secret, a disabled principal
    /// or a challenge used twice. The server closes the connection after answering.
    AuthenticationFailed = 701,
    /// The principal's policies do not allow the action on the resource; the message names
    /// both.
    AccessDenied = 702,
}

impl ErrorCode {
    /// Whether the same request, sent again unchanged after a pause (`retry_after_ms` when
    /// the response carries one), may succeed. Codes that need a changed request (a new
    /// iterator, a smaller record) or an operator (a poisoned shard) are not retryable.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::Throttled
                | ErrorCode::ReadThrottled
                | ErrorCode::ServerBusy
                | ErrorCode::TooManyConnections
                | ErrorCode::StorageFull
                | ErrorCode::ShuttingDown
        )
    }

    /// The code as sent on the wire.
    pub fn as_u16(self) -> u16 {
        self as u16
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.as_u16())
    }
}

impl From<BatchError> for ErrorCode {
    fn from(e: BatchError) -> ErrorCode {
        match e {
            BatchError::HeaderCrc | BatchError::RecordsCrc => ErrorCode::ChecksumMismatch,
            BatchError::BatchTooLarge(_) => ErrorCode::BatchTooLarge,
            BatchError::RecordCount(n) if n > MAX_RECORDS_PER_BATCH => ErrorCode::BatchTooLarge,
            BatchError::RecordTooLarge { .. } => ErrorCode::RecordTooLarge,
            BatchError::WrongShard { .. } => ErrorCode::WrongShard,
            BatchError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            BatchError::Truncated { .. }
            | BatchError::BadMagic(_)
            | BatchError::LengthMismatch { .. }
            | BatchError::CountMismatch { .. }
            | BatchError::RecordCount(_)
            | BatchError::KeyLength { .. }
            | BatchError::KeyNotUtf8 { .. }
            | BatchError::BadVarint { .. }
            | BatchError::BadAttrs { .. }
            | BatchError::Reserved => ErrorCode::InvalidRecord,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// The released numbers. Changing a line here means breaking deployed clients: add a
    /// new code instead.
    const PINNED: &[(ErrorCode, u16)] = &[
        (ErrorCode::Ok, 0),
        (ErrorCode::MalformedFrame, 100),
        (ErrorCode::UnsupportedVersion, 101),
        (ErrorCode::FrameTooLarge, 102),
        (ErrorCode::UnknownOpcode, 103),
        (ErrorCode::InvalidArgument, 104),
        (ErrorCode::UnknownStream, 200),
        (ErrorCode::StreamExists, 201),
        (ErrorCode::UnknownShard, 202),
        (ErrorCode::ShardClosed, 203),
        (ErrorCode::UnknownConsumer, 204),
        (ErrorCode::ConsumerExists, 205),
        (ErrorCode::UnknownGroup, 206),
        (ErrorCode::LeaseLost, 207),
        (ErrorCode::SubscriptionReplaced, 208),
        (ErrorCode::UnknownPrincipal, 209),
        (ErrorCode::PrincipalExists, 210),
        (ErrorCode::UnknownPolicy, 211),
        (ErrorCode::RecordTooLarge, 300),
        (ErrorCode::BatchTooLarge, 301),
        (ErrorCode::InvalidRecord, 302),
        (ErrorCode::ChecksumMismatch, 303),
        (ErrorCode::WrongShard, 304),
        (ErrorCode::Throttled, 400),
        (ErrorCode::ReadThrottled, 401),
        (ErrorCode::ServerBusy, 402),
        (ErrorCode::TooManyConnections, 403),
        (ErrorCode::LimitExceeded, 404),
        (ErrorCode::IteratorExpired, 500),
        (ErrorCode::InvalidIterator, 501),
        (ErrorCode::Internal, 600),
        (ErrorCode::StorageFull, 601),
        (ErrorCode::StorageIo, 602),
        (ErrorCode::ShardPoisoned, 603),
        (ErrorCode::ShuttingDown, 604),
        (ErrorCode::OutcomeUnknown, 605),
        (ErrorCode::Corrupt, 606),
        (ErrorCode::KeyUnavailable, 607),
        (ErrorCode::AuthenticationRequired, 700),
        (ErrorCode::AuthenticationFailed, 701),
        (ErrorCode::AccessDenied, 702),
    ];

    #[test]
    fn codes_are_unique_and_round_trip() {
        let mut seen = HashSet::new();
        let mut names = HashSet::new();
        for &code in ErrorCode::ALL {
            assert!(seen.insert(code.as_u16()), "{code} is used twice");
            assert!(names.insert(code.name()), "{code} name is used twice");
            assert_eq!(ErrorCode::from_u16(code.as_u16()), Some(code));
        }
        for v in 0..=u16::MAX {
            if let Some(code) = ErrorCode::from_u16(v) {
                assert_eq!(code.as_u16(), v);
            } else {
                assert!(!seen.contains(&v));
            }
        }
    }

    #[test]
    fn codes_are_pinned() {
        assert_eq!(
            PINNED.len(),
            ErrorCode::ALL.len(),
            "a new code needs a pinned number"
        );
        for &(code, value) in PINNED {
            assert_eq!(code.as_u16(), value, "{} moved", code.name());
        }
    }

    #[test]
    fn codes_sit_in_their_range() {
        for &code in ErrorCode::ALL {
            let range = code.as_u16() / 100;
            assert!(range <= 7, "{code} outside the known ranges");
        }
        assert!(ErrorCode::Throttled.is_retryable());
        assert!(ErrorCode::ServerBusy.is_retryable());
        assert!(ErrorCode::StorageFull.is_retryable());
        assert!(ErrorCode::ShuttingDown.is_retryable());
        assert!(!ErrorCode::ShardPoisoned.is_retryable());
        assert!(!ErrorCode::OutcomeUnknown.is_retryable());
        assert!(!ErrorCode::IteratorExpired.is_retryable());
        assert!(
            !ErrorCode::KeyUnavailable.is_retryable(),
            "an operator must supply the key"
        );
        assert!(!ErrorCode::Ok.is_retryable());
    }

    #[test]
    fn batch_errors_map_sensibly() {
        assert_eq!(
            ErrorCode::from(BatchError::RecordsCrc),
            ErrorCode::ChecksumMismatch
        );
        assert_eq!(
            ErrorCode::from(BatchError::HeaderCrc),
            ErrorCode::ChecksumMismatch
        );
        assert_eq!(
            ErrorCode::from(BatchError::RecordCount(501)),
            ErrorCode::BatchTooLarge
        );
        assert_eq!(
            ErrorCode::from(BatchError::RecordCount(0)),
            ErrorCode::InvalidRecord
        );
        assert_eq!(
            ErrorCode::from(BatchError::RecordTooLarge {
                index: 0,
                len: 2,
                max: 1
            }),
            ErrorCode::RecordTooLarge
        );
        assert_eq!(
            ErrorCode::from(BatchError::WrongShard { index: 3 }),
            ErrorCode::WrongShard
        );
        assert_eq!(
            ErrorCode::from(BatchError::KeyNotUtf8 { index: 0 }),
            ErrorCode::InvalidRecord
        );
    }
}
