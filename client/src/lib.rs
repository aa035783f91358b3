//! Spate's client library: a shard-aware, pipelined client on tokio.
//!
//! ```no_run
//! # async fn demo() -> Result<(), spate_client::ClientError> {
//! use spate_client::{Client, Entry, Position, StreamConfig};
//! let client = Client::connect("127.0.0.1:7400").await?;
//! client.create_stream("clicks", &StreamConfig::new(4)).await?;
//! let results = client
//!     .put_records("clicks", vec![Entry::new("user-1", "hello"), Entry::new("user-2", "world")])
//!     .await;
//! let first = results[0].clone()?;
//! let it = client.get_iterator("clicks", first.shard_id, Position::TrimHorizon).await?;
//! let records = client.get_records(&it, 100, 1 << 20, 0).await?;
//! # let _ = records; Ok(()) }
//! ```
//!
//! # Concurrency model
//!
//! A [`Client`] is a cheap handle (clones share everything) usable from any number of
//! tasks. It holds one connection to the address it was given (the *bootstrap*
//! connection, which carries the hello and stream administration) and, opened on first
//! use, one connection per engine core at the address the core advertised in its hello.
//! A request about a shard (puts, iterators, reads) goes to the connection of the core
//! that owns the shard, so the engine never forwards it between cores; when a core's
//! address cannot be reached, the bootstrap connection carries the request and the server
//! forwards it.
//!
//! Each connection is pipelined: many requests are outstanding at once, written back to
//! back by a writer task, and a reader task hands each response, whatever order it comes
//! in, to the request waiting on its correlation id. A connection that breaks fails every
//! request outstanding on it with [`ClientError::ConnectionLost`] (retryable, though the
//! request may have been applied); the next request opens a new connection.
//!
//! # Ordering guarantees
//!
//! Within a shard, records are stored in the order the engine receives their batches. The
//! client keeps a partition key's acknowledged records in the order they were given:
//! [`Client::put_records`] and the [`Producer`] keep exactly one batch per shard in flight,
//! and retry a batch's refused (throttled) tail before sending anything later for that
//! shard. The engine admits a prefix of a batch and refuses the rest, never a subset, so a
//! retry cannot reorder. After a final failure, `put_records` fails the rest of that
//! shard's records without sending them; a `Producer` reports the failure on each record's
//! [`SendHandle`] and goes on. Records of different shards are in flight concurrently.
//!
//! Retries are automatic only where the server said the request was not applied
//! (`Throttled`, `ServerBusy`, `StorageFull`, ... see [`ClientError::is_safe_to_retry`]),
//! with the backoff of [`RetryPolicy`]. A lost connection or a timeout is returned to the
//! caller, because resending a put could store it twice.
//!
//! # Bounds
//!
//! | what | bound |
//! |---|---|
//! | outstanding requests per connection | [`ClientConfig::max_in_flight_per_connection`] (1024); past it a request waits |
//! | connections | one bootstrap, plus one per engine core |
//! | a batch | 500 records and 10 MiB (the protocol's); a record is checked against the stream's data limit before it is sent |
//! | producer buffering | [`ProducerConfig::queued_records_max_per_shard`] records per shard and [`ProducerConfig::buffered_bytes_max`] bytes in all; past them `send` waits |
//! | producer batches in flight | one per shard |
//! | a response frame | `DEFAULT_MAX_FRAME_BYTES` (10 MiB, one record's framing and 64 KiB) |
//! | waiting for a response | [`ClientConfig::request_timeout`] plus any long-poll wait |
//!
//! # TLS
//!
//! With [`ClientConfig::tls`] every connection the client opens speaks TLS (rustls with the
//! ring provider, through tokio-rustls), verified against the CAs of [`TlsOptions::ca`]
//! and the server name of the address given (or [`TlsOptions::server_name`]); a
//! [`ClientCert`] answers a server that requires client certificates. A failed handshake
//! is a [`ClientError::Connect`] carrying rustls' reason.

mod admin;
mod auth;
mod client;
mod connection;
mod consumer;
mod error;
mod group;
mod producer;
mod put;
mod reader;
mod retry;
mod routing;

pub use admin::{NewPrincipal, PrincipalInfo};
pub use auth::Credentials;
pub use client::{
    Client, ClientCert, ClientConfig, Pem, Position, Record, Records, Reshard, ServerInfo,
    ShardIterator, StreamConfig, StreamInfo, TlsOptions,
};
pub use connection::DEFAULT_MAX_IN_FLIGHT;
pub use consumer::{ConsumerInfo, SubscribeOptions, Subscription, SubscriptionEvent};
pub use error::{ClientError, Result};
pub use group::{
    Checkpointer, GroupEvent, GroupInfo, GroupMemberInfo, GroupOptions, GroupShardInfo,
    GroupWorker, Heartbeat,
};
pub use producer::{Producer, ProducerConfig, SendHandle};
pub use put::{Entry, PutResult};
pub use reader::{ReadOptions, ShardReader, StreamReader};
pub use retry::RetryPolicy;
pub use routing::{ShardMap, ShardRoute};
pub use spate_protocol::consumer::{Checkpoint, Lease};
pub use spate_protocol::{
    CapacityMode, EncryptionType, ErrorCode, Limits, PutBatchResponse, Rejection,
    RotateKeysResponse, ShardDescription, ShardState, StreamStatus,
};
