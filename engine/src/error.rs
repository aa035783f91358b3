//! The engine's error type: what a caller (the server, the CLI, a test) can be told.
//! The server converts it to a wire `ErrorCode` in one place.

use spate_protocol::batch::BatchError;

use crate::store::StoreError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error("stream {0:?} does not exist")]
    UnknownStream(String),
    /// Kinesis answers ResourceNotFound for a stream that is not (or no longer) ACTIVE.
    #[error("stream {stream:?} is {status}: not readable or writable until it is ACTIVE")]
    NotActive {
        stream: String,
        status: &'static str,
    },
    #[error("stream {0:?} already exists")]
    StreamExists(String),
    #[error("stream {stream:?} has no shard {shard}")]
    UnknownShard { stream: String, shard: u32 },
    /// Split or merged: the shard takes no more writes; its keys belong to its children
    /// in shard-map version `map_version`.
    #[error("shard {shard} is closed (split or merged; shard-map version {map_version}): send its records to the shards that now own their keys")]
    ShardClosed { shard: u32, map_version: u64 },
    #[error("stream {stream:?} has no registered consumer {consumer:?}")]
    UnknownConsumer { stream: String, consumer: String },
    #[error("stream {stream:?} already has a consumer {consumer:?}")]
    ConsumerExists { stream: String, consumer: String },
    #[error("stream {stream:?} has no consumer group {group:?}")]
    UnknownGroup { stream: String, group: String },
    /// The worker does not hold the lease it names.
    #[error("lease lost: {0}")]
    LeaseLost(String),
    #[error("a newer subscription of this consumer to this shard took over")]
    SubscriptionReplaced,
    #[error("principal {0:?} does not exist")]
    UnknownPrincipal(String),
    #[error("principal {0:?} exists already")]
    PrincipalExists(String),
    #[error("principal {principal:?} has no policy {policy:?}")]
    UnknownPolicy { principal: String, policy: String },
    /// The message names the principal, the action and the resource.
    #[error("{0}")]
    AccessDenied(String),
    #[error("{0}")]
    AuthenticationRequired(String),
    #[error("authentication failed: {0}")]
    AuthenticationFailed(String),
    /// The message says what is wrong; the error code (InvalidArgument) says the kind, so
    /// the message does not repeat it (the client prints "CODE: message").
    #[error("{0}")]
    InvalidArgument(String),
    #[error("invalid batch: {0}")]
    InvalidBatch(#[from] BatchError),
    #[error("write limit of the shard reached; retry after {retry_after_ms} ms")]
    Throttled { retry_after_ms: u32 },
    #[error("read limit of the shard reached; retry after {retry_after_ms} ms")]
    ReadThrottled { retry_after_ms: u32 },
    #[error("limit exceeded: {0}")]
    LimitExceeded(String),
    #[error("no space left on the data directory's device")]
    StorageFull,
    /// A bound on held work is reached; nothing was done.
    #[error("server busy: {0}")]
    Busy(String),
    #[error("storage I/O error: {0}")]
    Io(String),
    #[error("shard refuses writes after a failed flush: {0}")]
    Poisoned(String),
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// Encryption at rest: no key file, or a master key missing or wrong.
    #[error("encryption key unavailable: {0}")]
    KeyUnavailable(String),
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// The core holding the request stopped before answering: it may or may not have been
    /// done (a put retried blindly could be stored twice).
    #[error(
        "the core running the request stopped before answering; it may or may not have been done"
    )]
    OutcomeUnknown,
    #[error("{0}")]
    Startup(String),
}

impl EngineError {
    /// Whether the same request may succeed later without change.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            EngineError::Throttled { .. }
                | EngineError::ReadThrottled { .. }
                | EngineError::StorageFull
                | EngineError::Busy(_)
                | EngineError::ShuttingDown
        )
    }
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Poisoned(m) => EngineError::Poisoned(m),
            StoreError::StorageFull => EngineError::StorageFull,
            StoreError::Io(m) => EngineError::Io(m),
            StoreError::Corrupt(m) => EngineError::Corrupt(m),
            StoreError::BatchTooLarge(n) => EngineError::InvalidBatch(BatchError::BatchTooLarge(n)),
            StoreError::UnknownShard(k) => EngineError::UnknownShard {
                stream: format!("#{}", k.stream_id),
                shard: k.shard_id,
            },
            StoreError::ShuttingDown => EngineError::ShuttingDown,
        }
    }
}

impl From<std::io::Error> for EngineError {
    fn from(e: std::io::Error) -> Self {
        EngineError::from(StoreError::from(e))
    }
}
