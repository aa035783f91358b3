//! Spate's wire format: a pure codec with no I/O and no runtime.
//!
//! `batch` is the record batch a producer builds, the engine stores and a consumer reads;
//! `routing` maps partition keys to shards.

pub mod batch;
pub mod routing;
