//! `spate-loadgen`: Spate's load generator.
//!
//! It simulates many devices writing to a stream through the client library (`--keys`
//! partition keys, `--producers` producers each with its own connection), optionally with
//! consumers following every shard from the tip (polling, pushed to registered consumers,
//! or the workers of a consumer group), and reports throughput, ack and
//! end-to-end latency percentiles (HdrHistogram), throttling, errors and both programs' CPU
//! use as one JSON object (SPEC §5). With `--verify` it reads every shard back after the
//! run and checks that no acknowledged record was lost, duplicated or reordered.
//!
//! Open loop (`--rate R > 0`) measures latency from when each record was due, so a stall
//! shows in the tail instead of hiding (see [`schedule`]); closed loop (`--rate 0`) sends
//! as fast as acknowledgements allow.
//!
//! Modules: [`config`] (a run's parameters), [`runner`] (the run itself and its progress
//! lines), [`consumers`] (polling, push and consumer-group consumers), [`schedule`],
//! [`payload`] (what a record carries), [`keys`], [`stats`] (histograms, CPU), [`verify`],
//! [`report`] (the JSON and the summary table), [`bench`](mod@bench) (named scenarios),
//! [`catchup`] (timed backlog reads for `catch-up`), [`summary`] (markdown from the
//! scenarios' JSON), [`plot`] (SVG percentile plot), [`cpus`] (CPU lists and pinning).
//!
//! The binary is a thin wrapper; tests call [`run_blocking`] or [`runner::run`] directly.

pub mod bench;
pub mod catchup;
pub mod config;
pub mod consumers;
pub mod cpus;
pub mod keys;
pub mod payload;
pub mod plot;
pub mod report;
pub mod runner;
pub mod schedule;
pub mod stats;
pub mod summary;
pub mod verify;

pub use config::{
    client_config, Api, ConsumerMode, KeyMode, LimitsArg, RateStep, ReshardOp, ReshardStep,
    RunConfig, SizeSpec, TlsConfig,
};
pub use report::Report;
pub use runner::{run, run_blocking};

/// Why a run could not be done: one line for stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(String);

impl Error {
    pub fn new(message: impl Into<String>) -> Error {
        Error(message.into())
    }

    pub fn message(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // One line, whatever the cause said.
        f.write_str(&self.0.replace('\n', " "))
    }
}

impl std::error::Error for Error {}
