//! Engine configuration: an embedded default, overridable by a TOML file and flags.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::store::{RoundSync, StoreConfig};

/// `round_rate_max`: how many group-commit rounds a second each core may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RoundRate {
    /// Back to back until the host shows it stalls the engine at that rate, then at most a
    /// rate it takes (`crate::pacer`).
    #[default]
    Auto,
    /// At most this many a second on average, always (0: back to back).
    Fixed(u32),
}

impl RoundRate {
    /// The rate rounds start paced to (0: unpaced; "auto" starts unpaced).
    pub fn fixed(self) -> u32 {
        match self {
            RoundRate::Auto => 0,
            RoundRate::Fixed(rate) => rate,
        }
    }
}

impl Serialize for RoundRate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            RoundRate::Auto => s.serialize_str("auto"),
            RoundRate::Fixed(rate) => s.serialize_u32(*rate),
        }
    }
}

impl<'de> Deserialize<'de> for RoundRate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Rate(u32),
            Name(String),
        }
        match Repr::deserialize(d) {
            Ok(Repr::Rate(rate)) => Ok(RoundRate::Fixed(rate)),
            Ok(Repr::Name(name)) if name == "auto" => Ok(RoundRate::Auto),
            _ => Err(serde::de::Error::custom(
                "round_rate_max must be \"auto\" or a whole number of rounds a second (0: unpaced)",
            )),
        }
    }
}

/// The configuration `spate serve` runs with when given no `--config`.
pub const DEFAULT_CONFIG_TOML: &str = r#"
# Spate engine defaults. Every key is optional in a config file.
data_dir = "./spate-data"
listen = "127.0.0.1:7400"
# Engine cores; empty means every core this process may run on.
cores = []
extent_bytes_min = 1048576          # a shard's log is a list of extents, 1 MiB ...
extent_bytes_max = 16777216         # ... growing to 16 MiB while the shard is busy (holds a 10 MiB batch)
volume_bytes = 1073741824           # pre-written volume files extents are allocated from, per store
journal_file_bytes = 67108864       # journal ring: files of 64 MiB ...
journal_files = 8                   # ... of which at most this many exist per store
checkpoint_bytes = 134217728        # a checkpoint every 128 MiB of journal and in-place writes (bounds replay at start)
checkpoint_interval_ms = 10000      # and at least this often when one is owed (freed extents)
checkpoint_deferred = true          # a checkpoint records the state of one interval before, which write-behind has written (no burst; replay up to 3x checkpoint_bytes); false: the state at its start
direct_write_bytes_min = 65536      # a shard putting 64 KiB into one round is written in place, not journaled
write_behind_bytes = 262144         # a shard's journaled bytes are written to its extent in pieces this large
prewrite_bytes = 1073741824         # free volume space kept written (zeros) ahead of allocation, so extents are overwrites; 0: off
memory_bytes_max = 268435456        # journaled bytes not yet written behind, per store, before appends wait
segment_age_max_ms = 3600000        # close an extent whose oldest record is this old (retention granularity)
write_chunk_bytes_max = 262144      # largest staging buffer, and journal buffer after a round's first (which is as large as the round before, up to round_bytes_max)
index_interval_bytes = 65536        # a sparse-index entry every 64 KiB of log
read_chunk_bytes = 262144
round_bytes_max = 8388608           # bytes one group-commit round takes while the last one writes
round_rate_max = "auto"             # group-commit rounds a second per core at most: "auto" (back to back until the host stalls the engine, then at most a rate it takes), a number (a fixed cap, on average), or 0 (back to back); see tuning/README.md
round_sync = "dsync"                # how a round becomes durable: "dsync" (a file written once in the round: one O_DSYNC write, durable as it completes; two rounds in flight) or "fdatasync" (write, then fdatasync each file written); see tuning/README.md
background_shares = 100             # CPU shares of background work (write-behind, checkpoints) vs 1000 for requests
retention_check_interval_ms = 60000
verify_hash_keys = true             # check every record's MD5 falls in its shard's range
io_memory_bytes = 134217728         # I/O buffer memory per executor, allocated at start and reused by staging, journal and write-behind buffers (past it: malloc); registered with io_uring if memlock allows 3x this
io_uring_coop_taskrun = true        # completions that need an executor's thread (sockets, I/O finished on another CPU) run when it next enters the kernel, not by an interrupt (IPI) while it runs; false: upstream glommio's ring (see tuning/README.md)
core_queue_depth = 1024             # bound of each core's request channel
max_frame_bytes = 10551639          # largest request frame (a 10 MiB batch, a record's framing and headers)
max_connections_per_core = 10000
max_inflight_per_connection = 1024  # pipelined requests per connection before ServerBusy
max_buffered_bytes_per_core = 268435456  # request frame bytes held (arriving or in flight), per core
max_connection_bytes = 33554432     # per connection: request bytes in flight + answers not yet read; past it the socket is not read
write_stall_timeout_ms = 30000      # close a connection that reads none of its answers for this long
idle_timeout_ms = 600000            # close a connection with nothing in flight that says nothing for this long
frame_timeout_ms = 30000            # a started frame must arrive whole within this
keepalive_ms = 60000                # TCP keepalive idle time (0: off)
max_parked_reads_per_core = 10000   # long-polls waiting at once per core; past it they answer at once
max_streams = 10000                 # quotas: streams on this node ...
max_shards_per_stream = 10000       # ... shards in one stream (at most 10,000) ...
max_shards = 100000                 # ... and open shards on this node (each costs ~1 KiB idle); past them LimitExceeded
metrics_listen = "127.0.0.1:7480"  # HTTP GET /metrics, Prometheus text format ("" or "off": none)
metrics = true                      # count per-stream and engine metrics (false: nothing is counted)
create_answer_ms = 1000             # a create answers when its stream is ACTIVE or after this long with CREATING (0: at once)
on_demand_check_ms = 1000           # how often core 0 looks at on-demand streams' write rates
on_demand_scale_out_percent = 80    # an on-demand stream splits its hottest shards when its write rate stays above this share of capacity ...
on_demand_scale_out_after_ms = 3000 # ... for this long, or at once when it throttles
on_demand_scale_in_percent = 25     # it merges its coldest neighbours when the rate stays below this share ...
on_demand_quiet_ms = 900000         # ... for this long (and it has more than 4 shards)
on_demand_peak_window_days = 30     # capacity goes up to twice the peak write rate seen in this window
on_demand_max_write_mib_per_s = 200 # and at most this much per stream
max_consumers_per_stream = 20       # registered (push) consumers per stream, each with its own read allowance per shard
subscription_heartbeat_ms = 5000    # a subscription with nothing to push sends an empty event this often
max_subscription_credit_bytes = 16777216  # most bytes a subscriber may have granted and not consumed (what the server holds for it)
group_lease_timeout_ms = 6000       # a consumer-group worker silent this long loses its leases (workers heartbeat at a third of it)
auth = false                        # true: every request needs an authenticated principal whose policies allow it
audit = true                        # record control-plane calls, authentications and denials in <data-dir>/audit
audit_max_file_bytes = 16777216     # the audit trail starts a new file past this size (none is ever deleted)
audit_refusal_lines_per_s = 100     # refused requests get a line each up to this rate; past it, one summary line a second
# TLS (rustls): with a certificate every listener, the metrics endpoint included, speaks TLS only.
# tls_cert_file = "server.pem"      # PEM certificate chain, the server's own first
# tls_key_file = "server-key.pem"   # its PEM private key (PKCS#8, PKCS#1 or SEC1)
# tls_client_ca_file = "ca.pem"     # mutual TLS: clients must present a certificate signed by one of these CAs
plaintext = true                    # false: refuse to start without tls_cert_file and tls_key_file
tls_handshake_timeout_ms = 10000    # a TLS handshake must complete within this, or the connection is closed
metrics_toggle_ms = 0               # benchmarking only: > 0 switches counting on and off every this many ms and logs, at shutdown, what it cost
metrics_toggle_calibrate = false    # ... true: the same phases, counting left on in both (an A/A run)
# Encryption at rest: master keys, one per line "ID BASE64-OF-32-BYTES", the highest id current (chmod 600).
# key_file = "master.keys"          # needed to create or read streams with --encryption aes-256-gcm
"#;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    pub data_dir: PathBuf,
    pub listen: String,
    pub cores: Vec<usize>,
    pub extent_bytes_min: u64,
    pub extent_bytes_max: u64,
    pub volume_bytes: u64,
    pub journal_file_bytes: u64,
    pub journal_files: u32,
    pub checkpoint_bytes: u64,
    pub checkpoint_interval_ms: i64,
    pub checkpoint_deferred: bool,
    pub direct_write_bytes_min: usize,
    pub write_behind_bytes: usize,
    pub prewrite_bytes: u64,
    pub memory_bytes_max: usize,
    pub segment_age_max_ms: i64,
    pub write_chunk_bytes_max: usize,
    pub index_interval_bytes: u64,
    pub read_chunk_bytes: usize,
    pub round_bytes_max: usize,
    pub round_rate_max: RoundRate,
    pub round_sync: RoundSync,
    pub background_shares: usize,
    pub retention_check_interval_ms: u64,
    pub verify_hash_keys: bool,
    pub io_memory_bytes: usize,
    /// Set up each executor's main io_uring with `IORING_SETUP_COOP_TASKRUN` (vendored
    /// glommio's patch; Linux 5.19+, a plain ring on older kernels).
    pub io_uring_coop_taskrun: bool,
    pub core_queue_depth: usize,
    pub max_frame_bytes: usize,
    pub max_connections_per_core: usize,
    pub max_inflight_per_connection: usize,
    pub max_buffered_bytes_per_core: usize,
    pub max_connection_bytes: usize,
    pub write_stall_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub frame_timeout_ms: u64,
    pub keepalive_ms: u64,
    pub max_parked_reads_per_core: usize,
    pub max_streams: u32,
    pub max_shards_per_stream: u32,
    pub max_shards: u64,
    pub create_answer_ms: u64,
    pub on_demand_check_ms: u64,
    pub on_demand_scale_out_percent: u32,
    pub on_demand_scale_out_after_ms: u64,
    pub on_demand_scale_in_percent: u32,
    pub on_demand_quiet_ms: u64,
    pub on_demand_peak_window_days: u32,
    pub on_demand_max_write_mib_per_s: u32,
    pub max_consumers_per_stream: u32,
    pub subscription_heartbeat_ms: u64,
    pub max_subscription_credit_bytes: u64,
    pub group_lease_timeout_ms: u64,
    /// Every request needs an authenticated principal whose policies allow it.
    pub auth: bool,
    /// Record control-plane calls, authentications and denials (`crate::audit`).
    pub audit: bool,
    pub audit_max_file_bytes: u64,
    /// Refusals (denied, unauthenticated) recorded one line each up to this many a
    /// second; past it counted into one summary line a second (`crate::audit`).
    pub audit_refusal_lines_per_s: u32,
    pub metrics_listen: String,
    pub metrics: bool,
    /// PEM certificate chain (the server's own certificate first). With `tls_key_file`,
    /// every listener speaks TLS only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`'s first certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<PathBuf>,
    /// PEM certificate authorities for mutual TLS: when set, a client must present a
    /// certificate signed by one of them, or its handshake fails.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_client_ca_file: Option<PathBuf>,
    /// Whether the server may run without TLS. `false` makes a missing certificate a
    /// startup error (with one, every listener speaks TLS only whatever this says).
    pub plaintext: bool,
    /// How long a TLS handshake may take before the connection is closed.
    pub tls_handshake_timeout_ms: u64,
    /// Benchmarking only (issue 11's paired measurement): when > 0, counting is switched
    /// on and off every this many ms (wall-clock aligned, the same on every core), and each
    /// core logs at shutdown the records per second and CPU per record of both phases.
    pub metrics_toggle_ms: u64,
    /// With `metrics_toggle_ms`: record the phases but leave counting on in both (an A/A
    /// run, which shows what the paired method itself reads when nothing changes).
    pub metrics_toggle_calibrate: bool,
    /// Master keys for encryption at rest (`crate::crypto::FileKeyProvider`): needed to
    /// create, write or read an encrypted stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

impl Default for EngineConfig {
    /// The same values as `DEFAULT_CONFIG_TOML` (a test keeps them equal).
    fn default() -> Self {
        EngineConfig {
            data_dir: PathBuf::from("./spate-data"),
            listen: "127.0.0.1:7400".into(),
            cores: Vec::new(),
            extent_bytes_min: 1 << 20,
            extent_bytes_max: 16 << 20,
            volume_bytes: 1 << 30,
            journal_file_bytes: 64 << 20,
            journal_files: 8,
            checkpoint_bytes: 128 << 20,
            checkpoint_interval_ms: 10_000,
            checkpoint_deferred: true,
            direct_write_bytes_min: 64 << 10,
            write_behind_bytes: 256 << 10,
            prewrite_bytes: 1 << 30,
            memory_bytes_max: 256 << 20,
            segment_age_max_ms: 3_600_000,
            write_chunk_bytes_max: 256 << 10,
            index_interval_bytes: 64 << 10,
            read_chunk_bytes: 256 << 10,
            round_bytes_max: 8 << 20,
            round_rate_max: RoundRate::Auto,
            round_sync: RoundSync::Dsync,
            background_shares: 100,
            retention_check_interval_ms: 60_000,
            verify_hash_keys: true,
            io_memory_bytes: spate_tuning::preflight::IO_MEMORY_DEFAULT_BYTES as usize,
            io_uring_coop_taskrun: true,
            core_queue_depth: 1024,
            max_frame_bytes: spate_protocol::DEFAULT_MAX_FRAME_BYTES,
            max_connections_per_core: 10_000,
            max_inflight_per_connection: 1024,
            max_buffered_bytes_per_core: 256 << 20,
            max_connection_bytes: 32 << 20,
            write_stall_timeout_ms: 30_000,
            idle_timeout_ms: 600_000,
            frame_timeout_ms: 30_000,
            keepalive_ms: 60_000,
            max_parked_reads_per_core: 10_000,
            max_streams: 10_000,
            max_shards_per_stream: 10_000,
            max_shards: 100_000,
            create_answer_ms: 1_000,
            on_demand_check_ms: 1_000,
            on_demand_scale_out_percent: 80,
            on_demand_scale_out_after_ms: 3_000,
            on_demand_scale_in_percent: 25,
            on_demand_quiet_ms: 900_000,
            on_demand_peak_window_days: 30,
            on_demand_max_write_mib_per_s: 200,
            max_consumers_per_stream: 20,
            subscription_heartbeat_ms: 5_000,
            max_subscription_credit_bytes: 16 << 20,
            group_lease_timeout_ms: 6_000,
            auth: false,
            audit: true,
            audit_max_file_bytes: 16 << 20,
            audit_refusal_lines_per_s: 100,
            metrics_listen: "127.0.0.1:7480".into(),
            metrics: true,
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
            plaintext: true,
            tls_handshake_timeout_ms: 10_000,
            metrics_toggle_ms: 0,
            metrics_toggle_calibrate: false,
            key_file: None,
        }
    }
}

impl EngineConfig {
    /// Parses a config file; keys it leaves out keep their defaults.
    pub fn from_toml(text: &str) -> Result<EngineConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// A configuration with small files (64 MiB volumes, 16 MiB journal files, 64 KiB first
    /// extents) and a 4 MiB I/O buffer pool per core, for tests and trials, so a fresh data
    /// directory takes its first write at once; everything else is the default.
    pub fn small(data_dir: impl Into<PathBuf>) -> EngineConfig {
        EngineConfig {
            data_dir: data_dir.into(),
            extent_bytes_min: 64 << 10,
            volume_bytes: 64 << 20,
            journal_file_bytes: 16 << 20,
            journal_files: 3,
            checkpoint_bytes: 8 << 20,
            // A 16 MiB journal file holds a 10 MiB batch and two rounds of 2 MiB.
            round_bytes_max: 2 << 20,
            checkpoint_interval_ms: 1000,
            // Tests run many servers at once: no fixed metrics port, and a small I/O buffer
            // pool each (what outgrows it comes from malloc, as in a busy default server).
            metrics_listen: String::new(),
            io_memory_bytes: 4 << 20,
            ..EngineConfig::default()
        }
    }

    /// Whether the listeners speak TLS (a certificate and its key are configured).
    pub fn tls_enabled(&self) -> bool {
        self.tls_cert_file.is_some()
    }

    /// The tunables of store `index` (its files live in `<data_dir>/store-<index>`).
    pub fn store_config(&self, index: u32) -> StoreConfig {
        StoreConfig {
            index,
            dir: self.data_dir.join(format!("store-{index}")),
            extent_bytes_min: self.extent_bytes_min,
            extent_bytes_max: self.extent_bytes_max,
            volume_bytes: self.volume_bytes,
            journal_file_bytes: self.journal_file_bytes,
            journal_files: self.journal_files,
            checkpoint_bytes: self.checkpoint_bytes,
            checkpoint_interval_ms: self.checkpoint_interval_ms,
            checkpoint_deferred: self.checkpoint_deferred,
            direct_write_bytes_min: self.direct_write_bytes_min,
            write_behind_bytes: self.write_behind_bytes,
            prewrite_bytes: self.prewrite_bytes,
            memory_bytes_max: self.memory_bytes_max,
            segment_age_max_ms: self.segment_age_max_ms,
            index_interval_bytes: self.index_interval_bytes,
            read_chunk_bytes: self.read_chunk_bytes,
            round_bytes_max: self.round_bytes_max,
            round_rate_max: self.round_rate_max.fixed(),
            round_sync: self.round_sync,
            write_chunk_bytes_max: self.write_chunk_bytes_max,
        }
    }

    /// Descriptors `cores` cores may hold open: every allowed connection and listener, and
    /// per store its journal ring, a volume per `volume_bytes` of a few GiB of data (each
    /// data file twice with O_DSYNC rounds), the manifest and some headroom for transient
    /// files.
    pub fn open_files_needed(&self, cores: usize) -> u64 {
        let cores = cores as u64;
        let connections = (self.max_connections_per_core as u64 + 2) * cores;
        let data_files = u64::from(self.journal_files) + 56;
        let per_store = match self.round_sync {
            RoundSync::Fdatasync => data_files + 8,
            RoundSync::Dsync => 2 * data_files + 8,
        };
        connections + per_store * cores + 64
    }

    /// Checks values the engine cannot run with; one line per problem.
    pub fn validate(&self) -> Result<(), String> {
        let block = crate::io::BLOCK_BYTES as u64;
        let min_extent =
            (spate_protocol::batch::MAX_BATCH_BYTES as u64 + block).next_power_of_two();
        if self.extent_bytes_max < min_extent {
            return Err(format!(
                "extent_bytes_max = {} must be at least {min_extent} (one maximal batch and the extent header)",
                self.extent_bytes_max
            ));
        }
        if self.journal_file_bytes
            < spate_protocol::batch::MAX_BATCH_BYTES as u64
                + 2 * self.round_bytes_max as u64
                + 2 * block
        {
            return Err(
                "journal_file_bytes must hold a maximal batch (10 MiB) and two full rounds \
                 (2 × round_bytes_max)"
                    .into(),
            );
        }
        if self.segment_age_max_ms < 1000 {
            return Err("segment_age_max_ms must be at least 1000".into());
        }
        if let RoundRate::Fixed(rate @ 1..10) = self.round_rate_max {
            return Err(format!(
                "round_rate_max = {rate} must be \"auto\", 0 (unpaced) or at least 10 (every acknowledgement may wait 1/round_rate_max s)"
            ));
        }
        if self.core_queue_depth == 0 || self.background_shares == 0 {
            return Err("core_queue_depth and background_shares must be positive".into());
        }
        if self.max_buffered_bytes_per_core < self.max_frame_bytes {
            return Err("max_buffered_bytes_per_core must hold one maximal frame".into());
        }
        if self.max_connection_bytes < self.max_frame_bytes {
            return Err("max_connection_bytes must hold one maximal frame".into());
        }
        // One key at a time, named with its value and the rule it breaks.
        let check = |ok: bool, key: &str, value: &dyn std::fmt::Display, rule: &str| {
            if ok {
                Ok(())
            } else {
                Err(format!("{key} = {value}: it must be {rule}"))
            }
        };
        for (key, value) in [
            ("write_stall_timeout_ms", self.write_stall_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("frame_timeout_ms", self.frame_timeout_ms),
        ] {
            check(value > 0, key, &value, "positive")?;
        }
        if self.max_shards_per_stream == 0
            || self.max_shards_per_stream > crate::catalog::MAX_SHARDS_PER_STREAM
        {
            return Err(format!(
                "max_shards_per_stream must be 1..={}",
                crate::catalog::MAX_SHARDS_PER_STREAM
            ));
        }
        if self.memory_bytes_max < 2 * spate_protocol::batch::MAX_BATCH_BYTES {
            return Err("memory_bytes_max must hold two maximal batches".into());
        }
        check(
            self.on_demand_check_ms > 0,
            "on_demand_check_ms",
            &self.on_demand_check_ms,
            "positive",
        )?;
        check(
            self.on_demand_peak_window_days > 0,
            "on_demand_peak_window_days",
            &self.on_demand_peak_window_days,
            "positive",
        )?;
        check(
            (4..=1_000_000).contains(&self.on_demand_max_write_mib_per_s),
            "on_demand_max_write_mib_per_s",
            &self.on_demand_max_write_mib_per_s,
            "4..=1000000",
        )?;
        check(
            (1..=100).contains(&self.on_demand_scale_out_percent),
            "on_demand_scale_out_percent",
            &self.on_demand_scale_out_percent,
            "1..=100",
        )?;
        check(
            self.on_demand_scale_in_percent < self.on_demand_scale_out_percent,
            "on_demand_scale_in_percent",
            &self.on_demand_scale_in_percent,
            "below on_demand_scale_out_percent",
        )?;
        check(
            (1..=u64::from(spate_protocol::read::MAX_WAIT_MS))
                .contains(&self.subscription_heartbeat_ms),
            "subscription_heartbeat_ms",
            &self.subscription_heartbeat_ms,
            "1..=30000",
        )?;
        check(
            self.max_subscription_credit_bytes >= 1 << 20,
            "max_subscription_credit_bytes",
            &self.max_subscription_credit_bytes,
            "at least 1048576 (1 MiB)",
        )?;
        check(
            (300..=3_600_000).contains(&self.group_lease_timeout_ms),
            "group_lease_timeout_ms",
            &self.group_lease_timeout_ms,
            "300..=3600000",
        )?;
        check(
            (1..=1_000_000).contains(&self.audit_refusal_lines_per_s),
            "audit_refusal_lines_per_s",
            &self.audit_refusal_lines_per_s,
            "1..=1000000",
        )?;
        self.validate_tls()?;
        self.store_config(0).validate()
    }

    /// The TLS keys make sense together (the files themselves are read at start, where a
    /// missing or invalid one is an error naming it).
    fn validate_tls(&self) -> Result<(), String> {
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(_), None) => return Err("tls_cert_file needs tls_key_file".into()),
            (None, Some(_)) => return Err("tls_key_file needs tls_cert_file".into()),
            _ => {}
        }
        if self.tls_client_ca_file.is_some() && !self.tls_enabled() {
            return Err(
                "tls_client_ca_file (mutual TLS) needs tls_cert_file and tls_key_file".into(),
            );
        }
        if !self.plaintext && !self.tls_enabled() {
            return Err(
                "plaintext = false: TLS is required, but tls_cert_file and tls_key_file are not set"
                    .into(),
            );
        }
        if self.tls_handshake_timeout_ms == 0 {
            return Err("tls_handshake_timeout_ms must be positive".into());
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
    fn a_bad_value_is_named_with_its_key_and_rule() {
        let refused = |toml: &str| {
            EngineConfig::from_toml(toml)
                .unwrap()
                .validate()
                .unwrap_err()
        };
        assert_eq!(
            refused("group_lease_timeout_ms = 10"),
            "group_lease_timeout_ms = 10: it must be 300..=3600000"
        );
        assert_eq!(
            refused("on_demand_scale_out_percent = 150"),
            "on_demand_scale_out_percent = 150: it must be 1..=100"
        );
        assert_eq!(
            refused("idle_timeout_ms = 0"),
            "idle_timeout_ms = 0: it must be positive"
        );
        // "off" turns the metrics endpoint off in a file as on the command line.
        EngineConfig::from_toml("metrics_listen = \"off\"")
            .unwrap()
            .validate()
            .unwrap();
    }

    #[test]
    fn file_overrides_some_keys() {
        let c = EngineConfig::from_toml("volume_bytes = 33554432\ncores = [1]").unwrap();
        assert_eq!(c.volume_bytes, 32 << 20);
        assert_eq!(c.cores, vec![1]);
        assert_eq!(c.index_interval_bytes, 65536);
        assert!(EngineConfig::from_toml("bogus = 1").is_err());
    }

    #[test]
    fn round_rate_max_is_auto_off_or_at_least_ten() {
        assert_eq!(
            EngineConfig::from_toml(DEFAULT_CONFIG_TOML)
                .unwrap()
                .round_rate_max,
            RoundRate::Auto
        );
        let c = EngineConfig::from_toml("round_rate_max = \"auto\"").unwrap();
        assert_eq!(c.round_rate_max, RoundRate::Auto);
        assert_eq!(c.store_config(0).round_rate_max, 0, "auto starts unpaced");
        for bad in ["\"fast\"", "-1", "1.5"] {
            let e = EngineConfig::from_toml(&format!("round_rate_max = {bad}")).unwrap_err();
            assert!(e.contains("round_rate_max must be"), "{bad}: {e}");
        }
        for (rate, ok) in [(0, true), (5, false), (10, true), (1000, true)] {
            let c = EngineConfig::from_toml(&format!("round_rate_max = {rate}")).unwrap();
            assert_eq!(c.round_rate_max, RoundRate::Fixed(rate));
            assert_eq!(c.store_config(0).round_rate_max, rate);
            let r = c.validate();
            assert_eq!(r.is_ok(), ok, "{rate}: {r:?}");
            if let Err(e) = r {
                assert!(e.contains("round_rate_max = 5"), "{e}");
            }
        }
    }

    #[test]
    fn round_sync_is_fdatasync_or_dsync() {
        let default = EngineConfig::from_toml("").unwrap();
        assert_eq!(default.round_sync, RoundSync::Dsync);
        assert_eq!(default.store_config(0).round_sync, RoundSync::Dsync);
        let c = EngineConfig::from_toml("round_sync = \"fdatasync\"").unwrap();
        assert_eq!(c.store_config(3).round_sync, RoundSync::Fdatasync);
        assert!(c.open_files_needed(1) < default.open_files_needed(1));
        let e = EngineConfig::from_toml("round_sync = \"fsync\"").unwrap_err();
        assert!(e.contains("fdatasync") && e.contains("dsync"), "{e}");
    }

    #[test]
    fn tls_keys_are_checked_together() {
        let c = EngineConfig::from_toml(
            "tls_cert_file = \"c.pem\"\ntls_key_file = \"k.pem\"\nplaintext = false",
        )
        .unwrap();
        assert!(c.tls_enabled());
        assert_eq!(
            c.tls_cert_file.as_deref(),
            Some(std::path::Path::new("c.pem"))
        );
        c.validate().unwrap();
        let only_cert = EngineConfig {
            tls_key_file: None,
            ..c.clone()
        };
        assert!(only_cert.validate().unwrap_err().contains("tls_key_file"));
        let only_key = EngineConfig {
            tls_cert_file: None,
            ..c.clone()
        };
        assert!(only_key.validate().unwrap_err().contains("tls_cert_file"));
        let ca_alone = EngineConfig {
            tls_client_ca_file: Some("ca.pem".into()),
            ..EngineConfig::default()
        };
        assert!(ca_alone.validate().unwrap_err().contains("mutual TLS"));
        let required = EngineConfig {
            plaintext: false,
            ..EngineConfig::default()
        };
        assert!(required
            .validate()
            .unwrap_err()
            .contains("plaintext = false"));
        assert!(!EngineConfig::default().tls_enabled());
        let no_time = EngineConfig {
            tls_handshake_timeout_ms: 0,
            ..c
        };
        assert!(no_time.validate().is_err());
    }
}
