//! The client's error type: what a caller is told when a request, or one record of a batch,
//! did not succeed.
//!
//! Every variant says whether the same request may succeed if sent again
//! ([`ClientError::is_retryable`]) and, where the server answered, carries the wire
//! [`ErrorCode`]. Errors the client detects itself map to the code the server would have
//! used (an invalid record is `InvalidRecord` whether the client or the engine spots it).

use spate_protocol::ErrorCode;

/// Why a request (or one record of a batch) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error (or rejected this record of a batch).
    #[error("{code}: {message}")]
    Server {
        code: ErrorCode,
        /// The server's hint when to retry (throttling, busy); 0 when it gave none.
        retry_after_ms: u32,
        message: String,
    },
    /// The shard was split or merged and takes no more writes: describe the stream again
    /// (until its shard-map version is at least `shard_map_version`) and send the records
    /// to the shards that own their keys now. `put_records` and the `Producer` do this
    /// themselves.
    #[error("{}: {message}", ErrorCode::ShardClosed)]
    ShardClosed {
        shard_map_version: u64,
        message: String,
    },
    /// The client refused the request before sending it (bad name, key or record size).
    /// `code` is what the server would have answered.
    #[error("{code}: {message}")]
    Invalid { code: ErrorCode, message: String },
    /// No connection could be opened to the address: refused, unreachable, timed out, or
    /// its TLS handshake failed (the reason is rustls', e.g. "invalid peer certificate:
    /// UnknownIssuer"). Nothing was sent on it.
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    /// The client's own configuration cannot be used (a TLS file missing or invalid, a
    /// bad server name); sending again will not help.
    #[error("invalid client configuration: {message}")]
    Config { message: String },
    /// The connection broke while the request was in flight or being sent. The request may
    /// or may not have been applied (a put may have been stored); it is safe to send again
    /// only when duplicates are acceptable. A new request opens a new connection.
    #[error("connection to {addr} lost: {reason}")]
    ConnectionLost { addr: String, reason: String },
    /// No response within the request timeout. As with `ConnectionLost`, the request may
    /// have been applied.
    #[error("no response from {addr} within {timeout_ms} ms")]
    Timeout { addr: String, timeout_ms: u64 },
    /// The server's bytes broke the protocol (undecodable frame, unexpected response) or a
    /// record batch failed its end-to-end check (checksum).
    #[error("protocol error: {message}")]
    Protocol { code: ErrorCode, message: String },
    /// The producer or client was closed before the request completed.
    #[error("closed before the request completed")]
    Closed,
}

impl ClientError {
    /// The wire code: the server's, or the one matching a client-side check. `None` for
    /// transport failures (connect, connection lost, timeout, closed).
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. }
            | ClientError::Invalid { code, .. }
            | ClientError::Protocol { code, .. } => Some(*code),
            ClientError::ShardClosed { .. } => Some(ErrorCode::ShardClosed),
            ClientError::Connect { .. }
            | ClientError::ConnectionLost { .. }
            | ClientError::Timeout { .. }
            | ClientError::Config { .. }
            | ClientError::Closed => None,
        }
    }

    /// Whether sending the same request again, after a pause, may succeed. Transport
    /// failures are retryable; see [`ClientError::is_safe_to_retry`] for which of them
    /// may duplicate a put.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Server { code, .. } => code.is_retryable(),
            ClientError::Connect { .. }
            | ClientError::ConnectionLost { .. }
            | ClientError::Timeout { .. } => true,
            ClientError::Invalid { .. }
            | ClientError::Protocol { .. }
            | ClientError::ShardClosed { .. }
            | ClientError::Config { .. }
            | ClientError::Closed => false,
        }
    }

    /// Whether the request is known not to have been applied and may be sent again without
    /// risking a duplicate: a retryable error answered by the server, or a failed connect.
    /// This is what the client's own retries (puts and reads) are limited to.
    pub fn is_safe_to_retry(&self) -> bool {
        match self {
            ClientError::Server { code, .. } => code.is_retryable(),
            ClientError::Connect { .. } => true,
            _ => false,
        }
    }

    /// The server's retry hint in milliseconds (0 when none).
    pub fn retry_after_ms(&self) -> u32 {
        match self {
            ClientError::Server { retry_after_ms, .. } => *retry_after_ms,
            _ => 0,
        }
    }

    /// The error of a record not sent because an earlier record of its shard failed with
    /// `self`: the same kind and code, a message saying so.
    pub(crate) fn skipped_after(&self, shard_id: u32) -> ClientError {
        let why = |m: &str| format!("not sent: an earlier record of shard {shard_id} failed: {m}");
        match self {
            ClientError::Server {
                code,
                retry_after_ms,
                message,
            } => ClientError::Server {
                code: *code,
                retry_after_ms: *retry_after_ms,
                message: why(message),
            },
            ClientError::Invalid { code, message } => ClientError::Invalid {
                code: *code,
                message: why(message),
            },
            ClientError::Protocol { code, message } => ClientError::Protocol {
                code: *code,
                message: why(message),
            },
            other => other.clone(),
        }
    }

    /// The error a server answered (a whole request's, or one shard's of a put-batches).
    pub(crate) fn from_wire(
        code: ErrorCode,
        retry_after_ms: u32,
        message: &str,
        shard_map_version: u64,
    ) -> ClientError {
        if code == ErrorCode::ShardClosed {
            return ClientError::ShardClosed {
                shard_map_version,
                message: message.to_string(),
            };
        }
        ClientError::Server {
            code,
            retry_after_ms,
            message: message.to_string(),
        }
    }

    pub(crate) fn invalid(code: ErrorCode, message: impl Into<String>) -> ClientError {
        ClientError::Invalid {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn protocol(message: impl Into<String>) -> ClientError {
        ClientError::Protocol {
            code: ErrorCode::MalformedFrame,
            message: message.into(),
        }
    }
}

/// The client's result type.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_classes() {
        let throttled = ClientError::Server {
            code: ErrorCode::Throttled,
            retry_after_ms: 7,
            message: "slow down".into(),
        };
        assert!(throttled.is_retryable() && throttled.is_safe_to_retry());
        assert_eq!(throttled.retry_after_ms(), 7);
        assert_eq!(throttled.code(), Some(ErrorCode::Throttled));
        assert_eq!(throttled.to_string(), "Throttled (400): slow down");
        let lost = ClientError::ConnectionLost {
            addr: "a".into(),
            reason: "b".into(),
        };
        assert!(lost.is_retryable() && !lost.is_safe_to_retry());
        assert_eq!(lost.code(), None);
        let unknown = ClientError::Server {
            code: ErrorCode::UnknownStream,
            retry_after_ms: 0,
            message: String::new(),
        };
        assert!(!unknown.is_retryable() && !unknown.is_safe_to_retry());
        assert!(!ClientError::invalid(ErrorCode::InvalidRecord, "x").is_retryable());
        // A missing master key needs an operator: never retried, whatever the request.
        let no_key = ClientError::from_wire(ErrorCode::KeyUnavailable, 0, "no key file", 0);
        assert!(!no_key.is_retryable() && !no_key.is_safe_to_retry());
        assert_eq!(no_key.code(), Some(ErrorCode::KeyUnavailable));
        assert_eq!(no_key.to_string(), "KeyUnavailable (607): no key file");
    }
}
