//! Host tuning and checks for Spate.
//!
//! Spate runs one glommio executor per core on io_uring with direct I/O, so the host decides a
//! large part of its tail latency: interrupts and timer ticks on engine cores, CPU frequency
//! ramps, huge-page compaction, a block scheduler in front of NVMe. This crate gives operators
//! and the engine the same knowledge of the host:
//!
//! - [`check`]: `spate-tune check` (`tuning/check`), one verdict per item with the exact fix;
//! - [`apply`]: `spate-tune apply` (`tuning/apply`), the idempotent plan that applies the fixes
//!   for a given core layout, with a dry run;
//! - [`preflight`]: what the engine runs at start so a missing io_uring, too little locked
//!   memory or a data directory without `O_DIRECT` ends in one line naming the fix, not a panic
//!   inside the runtime.
//!
//! All host reads go through [`host::Host`] (a root prefix), and all parsing in [`parse`] is
//! pure, so tests run the real decision logic against sample `/proc` and `/sys` trees. Nothing
//! here runs on an engine core or holds state between calls.

pub mod apply;
pub mod check;
pub mod cpus;
pub mod host;
pub mod irqs;
pub mod parse;
pub mod preflight;
pub mod probe;
pub mod storage;

pub use cpus::CpuSet;
pub use preflight::{preflight, PreflightError, PreflightReport, MEMLOCK_PER_EXECUTOR_BYTES};
