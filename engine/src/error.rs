//! The engine's error type: what a caller (the server, the CLI, a test) can be told.
//! The server converts it to a wire `ErrorCode` in one place.

use spate_protocol::batch::BatchError;

use crate::log::LogError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error("stream {0:?} does not exist")]
    UnknownStream(String),
    #[error("stream {0:?} already exists")]
    StreamExists(String),
    #[error("stream {stream:?} has no shard {shard}")]
    UnknownShard { stream: String, shard: u32 },
    #[error("invalid argument: {0}")]
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
    #[error("storage I/O error: {0}")]
    Io(String),
    #[error("shard refuses writes after a failed flush: {0}")]
    Poisoned(String),
    #[error("corrupt data: {0}")]
    Corrupt(String),
    #[error("the engine is shutting down")]
    ShuttingDown,
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
                | EngineError::ShuttingDown
        )
    }
}

impl From<LogError> for EngineError {
    fn from(e: LogError) -> Self {
        match e {
            LogError::Poisoned(m) => EngineError::Poisoned(m),
            LogError::StorageFull => EngineError::StorageFull,
            LogError::Io(m) => EngineError::Io(m),
            e @ LogError::Corrupt { .. } => EngineError::Corrupt(e.to_string()),
            LogError::BatchTooLarge(n) => EngineError::InvalidBatch(BatchError::BatchTooLarge(n)),
        }
    }
}

impl From<std::io::Error> for EngineError {
    fn from(e: std::io::Error) -> Self {
        EngineError::from(LogError::from(e))
    }
}
