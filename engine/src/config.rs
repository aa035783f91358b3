//! Engine configuration: an embedded default, overridable by a TOML file and flags.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::log::LogConfig;

/// The configuration `spate serve` runs with when given no `--config`.
pub const DEFAULT_CONFIG_TOML: &str = r#"
# Spate engine defaults. Every key is optional in a config file.
data_dir = "./spate-data"
listen = "127.0.0.1:7400"
# Engine cores; empty means every core this process may run on.
cores = []
segment_bytes = 268435456          # 256 MiB: full-size segment files (the spare pool's size)
segment_bytes_min = 1048576        # a shard's first segment; sizes double up to segment_bytes
segment_age_max_ms = 3600000       # roll a segment whose oldest record is this old
write_chunk_bytes_max = 262144      # largest staging buffer per shard (a round writes several at once)
index_interval_bytes = 65536        # a sparse-index entry every 64 KiB of log
read_chunk_bytes = 262144
round_bytes_max = 2097152           # bytes one group-commit round takes while the last one writes
spare_segments_per_core = 2         # zero-filled segment files kept ready per core
retention_check_interval_ms = 60000
verify_hash_keys = true             # check every record's MD5 falls in its shard's range
io_memory_bytes = 2097152           # glommio registered-buffer memory per executor
core_queue_depth = 1024             # bound of each core's request channel
max_frame_bytes = 10551360          # largest request frame (a 10 MiB batch plus headers)
max_connections_per_core = 10000
max_inflight_per_connection = 1024  # pipelined requests per connection before ServerBusy
max_buffered_bytes_per_core = 268435456  # request bytes held by in-flight requests, per core
"#;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    pub data_dir: PathBuf,
    pub listen: String,
    pub cores: Vec<usize>,
    pub segment_bytes: u64,
    pub segment_bytes_min: u64,
    pub segment_age_max_ms: i64,
    pub write_chunk_bytes_max: usize,
    pub index_interval_bytes: u64,
    pub read_chunk_bytes: usize,
    pub round_bytes_max: usize,
    pub spare_segments_per_core: usize,
    pub retention_check_interval_ms: u64,
    pub verify_hash_keys: bool,
    pub io_memory_bytes: usize,
    pub core_queue_depth: usize,
    pub max_frame_bytes: usize,
    pub max_connections_per_core: usize,
    pub max_inflight_per_connection: usize,
    pub max_buffered_bytes_per_core: usize,
}

impl Default for EngineConfig {
    /// The same values as `DEFAULT_CONFIG_TOML` (a test keeps them equal).
    fn default() -> Self {
        EngineConfig {
            data_dir: PathBuf::from("./spate-data"),
            listen: "127.0.0.1:7400".into(),
            cores: Vec::new(),
            segment_bytes: 256 << 20,
            segment_bytes_min: 1 << 20,
            segment_age_max_ms: 3_600_000,
            write_chunk_bytes_max: 256 << 10,
            index_interval_bytes: 64 << 10,
            read_chunk_bytes: 256 << 10,
            round_bytes_max: 2 << 20,
            spare_segments_per_core: 2,
            retention_check_interval_ms: 60_000,
            verify_hash_keys: true,
            io_memory_bytes: 2 << 20,
            core_queue_depth: 1024,
            max_frame_bytes: spate_protocol::DEFAULT_MAX_FRAME_BYTES,
            max_connections_per_core: 10_000,
            max_inflight_per_connection: 1024,
            max_buffered_bytes_per_core: 256 << 20,
        }
    }
}

impl EngineConfig {
    /// Parses a config file; keys it leaves out keep their defaults.
    pub fn from_toml(text: &str) -> Result<EngineConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    pub fn log_config(&self) -> LogConfig {
        LogConfig {
            segment_bytes: self.segment_bytes,
            segment_bytes_min: self.segment_bytes_min,
            segment_age_max_ms: self.segment_age_max_ms,
            write_chunk_bytes_max: self.write_chunk_bytes_max,
            index_interval_bytes: self.index_interval_bytes,
            read_chunk_bytes: self.read_chunk_bytes,
            round_bytes_max: self.round_bytes_max,
        }
    }

    /// Checks values the engine cannot run with; one line per problem.
    pub fn validate(&self) -> Result<(), String> {
        let block = crate::io::BLOCK_BYTES as u64;
        let min_segment =
            (spate_protocol::batch::MAX_BATCH_BYTES as u64 + 2 * block).next_multiple_of(block);
        if self.segment_bytes % block != 0 || self.segment_bytes < min_segment {
            return Err(format!(
                "segment_bytes = {} must be a multiple of 4096 and at least {} (one maximal batch)",
                self.segment_bytes, min_segment
            ));
        }
        if !self.segment_bytes_min.is_power_of_two()
            || self.segment_bytes_min < 64 << 10
            || self.segment_bytes_min > self.segment_bytes
        {
            return Err(format!(
                "segment_bytes_min = {} must be a power of two, at least 65536 and at most segment_bytes",
                self.segment_bytes_min
            ));
        }
        if self.segment_age_max_ms < 1000 {
            return Err("segment_age_max_ms must be at least 1000".into());
        }
        if self.write_chunk_bytes_max < 64 << 10
            || self.write_chunk_bytes_max % crate::io::BLOCK_BYTES != 0
        {
            return Err(
                "write_chunk_bytes_max must be a multiple of 4096 and at least 65536".into(),
            );
        }
        if self.index_interval_bytes == 0
            || self.read_chunk_bytes < 4096
            || self.core_queue_depth == 0
        {
            return Err("index_interval_bytes, read_chunk_bytes (>= 4096) and core_queue_depth must be positive".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_parses_and_validates() {
        let c = EngineConfig::from_toml(DEFAULT_CONFIG_TOML).unwrap();
        assert_eq!(c, EngineConfig::default());
        assert_eq!(c.listen, "127.0.0.1:7400");
        c.validate().unwrap();
    }

    #[test]
    fn file_overrides_some_keys() {
        let c = EngineConfig::from_toml("segment_bytes = 33554432\ncores = [1]").unwrap();
        assert_eq!(c.segment_bytes, 32 << 20);
        assert_eq!(c.cores, vec![1]);
        assert_eq!(c.index_interval_bytes, 65536);
        assert!(EngineConfig::from_toml("bogus = 1").is_err());
    }
}
