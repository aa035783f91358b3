//! Spate's engine: thread-per-core shards on direct-I/O segment logs.
//!
//! Codemap (see ARCHITECTURE.md for the data flow):
//! - `io`: the storage interface and its io_uring (glommio `DmaFile`) implementation;
//!   `sim`: the simulated, fault-injecting disk used by tests.
//! - `store`: the shards' logs of one store: journal, extents in shared volumes, group
//!   commit with one flush per round, write-behind, checkpoints, recovery, retention.
//! - `limits`: per-shard token buckets.
//! - `catalog`: streams, shards, placement; persisted atomically with rkyv.
//! - `fanout`: registered consumers and consumer groups (leases, checkpoints), core 0's.
//! - `runtime`: one pinned glommio executor per core, the shards it owns, and the bounded
//!   channels other threads and cores use to reach them; `engine`: the handle callers use.

// The storage traits return `!Send` futures by design (thread-per-core); the lint that
// warns about `async fn` in public traits is about `Send` bounds we deliberately do not want.
#![allow(async_fn_in_trait)]

pub mod audit;
pub mod auth;
pub mod catalog;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod engine;
pub mod error;
pub mod fanout;
pub mod io;
pub mod keyring;
pub mod limits;
pub mod metrics;
pub mod notify;
pub mod pacer;
pub mod rate;
pub mod runtime;
#[cfg(test)]
mod runtime_tests;
pub mod server;
pub(crate) mod shard_table;
pub mod sim;
pub mod store;

pub use engine::Engine;
pub use error::EngineError;
