//! Stream administration messages: create, delete, list, describe, the retention
//! changes, resharding, and encryption at rest (start, stop, rotate the keys). Also the
//! rules for stream names and the ranges of stream settings, which both the client (before
//! sending) and the server (on decoding) apply.
//!
//! ```text
//! limits:            tag u8: 0 Kinesis | 1 Off | 2 Custom, then for Custom
//!                    write_bytes_per_s u64, write_records_per_s u64, read_bytes_per_s u64
//!
//! CreateStream       req:  name str, shard_count u32, retention_hours u32, limits,
//!                          max_record_data_bytes opt<u32>, encryption u8 (0 none,
//!                          1 aes-256-gcm; absent, as a client from before it sends: none)
//!                    resp: stream_id u64, status u8 (as below)
//! DeleteStream       req:  name str                       resp: (empty)
//! ListStreams        req:  exclusive_start_name opt<str>, limit u32
//!                    resp: has_more bool, count varint, count × name str
//! DescribeStream     req:  name str
//!                    resp: name str, stream_id u64, status u8 (0 creating, 1 active,
//!                          2 updating, 3 deleting), retention_hours u32, limits,
//!                          max_record_data_bytes u32, created_ms i64, count varint,
//!                          count × shard
//! shard:             id u32, state u8 (0 open, 1 closed, 2 damaged), hash_key_start u128,
//!                    hash_key_end u128, parent opt<u32>, adjacent_parent opt<u32>, core u16,
//!                    first_seq opt<u64>, last_seq opt<u64>, records u64, bytes u64,
//!                    disk_bytes u64
//! Increase/DecreaseRetention  req: name str, retention_hours u32    resp: (empty)
//! SplitShard         req:  name str, shard_id u32, new_starting_hash_key u128
//! MergeShards        req:  name str, shard_id u32, adjacent_shard_id u32
//! UpdateShardCount   req:  name str, target_shard_count u32, scaling u8 (0 uniform)
//!                    resp (all three): map_version u64, count varint, count × shard id u32
//!                          (the shards the change opened)
//! UpdateStreamMode   req:  name str, mode u8 (0 provisioned, 1 on-demand),
//!                          max_write_mib_per_s opt<u32> (on-demand: the stream's ceiling;
//!                          absent: the server's default)              resp: (empty)
//! Start/StopStreamEncryption  req: name str, encryption u8 (Start: 1 aes-256-gcm, 0 is
//!                          refused; Stop: the type being stopped)     resp: (empty)
//! RotateKeys         req:  (empty)
//!                    resp: master_key_id u32, streams u32
//! ```
//! A description ends, after its shards, with `mode u8` (0 provisioned, 1 on-demand),
//! `map_version u64` (raised by every split, merge and scale: a client whose routing
//! table is older than the version a `ShardClosed` error names describes the stream
//! again), `last_scaling opt<str>` (on-demand: the last scaling decision, for people),
//! `shard_level_metrics bool`, `encryption u8`, `key_epochs u32` (data keys the stream
//! keeps), `master_key_id opt<u32>` (the master key its current data key is wrapped
//! under: present exactly when `encryption` is not none) and `max_write_mib_per_s
//! opt<u32>` (the write-capacity ceiling of an on-demand stream; a later addition, so a
//! description may end before it).
//!
//! Encryption at rest (Kinesis' `EncryptionType`, with the server's key file in place of
//! KMS): an encrypted stream's records are sealed with AES-256-GCM under a *data key* of
//! the stream, stored only wrapped under a *master key* of the server. Starting
//! encryption on a live stream encrypts what is written from then on; stopping it writes
//! in the clear from then on, and what was sealed stays readable while its data key is
//! kept (`key_epochs`). RotateKeys wraps a new data key of every encrypted stream under
//! the server's current master key. A server without the master key it needs answers
//! `KeyUnavailable`.
//! `str` is a varint length and UTF-8; `opt<T>` is a presence byte (0 or 1) and `T`.

use crate::batch::MAX_RECORD_DATA_BYTES_CEILING;
use crate::message::Payload;
use crate::wire::{
    put_bool, put_count, put_i64, put_option, put_str, put_u128, put_u16, put_u32, put_u64, put_u8,
    DecodeError, Reader,
};

/// Stream names are 1..=128 bytes of `[a-zA-Z0-9_.-]` (Kinesis' rule), not `.` or `..`.
pub const MAX_STREAM_NAME_BYTES: usize = 128;
/// Shortest retention window: one hour.
pub const MIN_RETENTION_HOURS: u32 = 1;
/// Longest retention window: 365 days.
pub const MAX_RETENTION_HOURS: u32 = 8760;
/// Retention when the user names none.
pub const DEFAULT_RETENTION_HOURS: u32 = 24;
/// Most shards a stream may be created with. The engine may enforce a lower limit of its
/// own (answered with `LimitExceeded`); this bound only keeps messages bounded.
pub const MAX_SHARDS_PER_STREAM: u32 = 65_536;
/// Most shards a description may list: open shards plus closed parents still in retention.
/// At ≤ 61 bytes a shard this keeps a description under 8 MiB, within one frame.
pub const MAX_SHARDS_DESCRIBED: usize = 2 * MAX_SHARDS_PER_STREAM as usize;
/// Most names one list-streams call returns.
pub const MAX_LIST_STREAMS_LIMIT: u32 = 10_000;

/// Whether `name` is a valid stream name: 1..=128 bytes of `[a-zA-Z0-9_.-]`, and not `.`
/// or `..` (Kinesis allows those, but a name must be safe to use as a directory name).
pub fn is_valid_stream_name(name: &str) -> bool {
    (1..=MAX_STREAM_NAME_BYTES).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Whether `hours` is a valid retention window.
pub fn is_valid_retention_hours(hours: u32) -> bool {
    (MIN_RETENTION_HOURS..=MAX_RETENTION_HOURS).contains(&hours)
}

pub(crate) fn put_stream_name(out: &mut Vec<u8>, name: &str) {
    put_str(out, name);
}

/// A stream name, validated: every request and response naming a stream goes through here.
pub(crate) fn get_stream_name<'a>(r: &mut Reader<'a>) -> Result<&'a str, DecodeError> {
    let name = r.str(MAX_STREAM_NAME_BYTES, "stream name")?;
    if !is_valid_stream_name(name) {
        return Err(DecodeError::Invalid {
            field: "stream name",
            reason: "must be 1..=128 characters of [a-zA-Z0-9_.-], not . or ..",
        });
    }
    Ok(name)
}

fn get_retention_hours(r: &mut Reader<'_>) -> Result<u32, DecodeError> {
    let hours = r.u32("retention_hours")?;
    if !is_valid_retention_hours(hours) {
        return Err(DecodeError::Invalid {
            field: "retention_hours",
            reason: "not in 1..=8760",
        });
    }
    Ok(hours)
}

fn get_max_record_data_bytes(r: &mut Reader<'_>, field: &'static str) -> Result<u32, DecodeError> {
    let bytes = r.u32(field)?;
    if bytes == 0 || bytes as usize > MAX_RECORD_DATA_BYTES_CEILING {
        return Err(DecodeError::Invalid {
            field,
            reason: "not in 1..=10 MiB",
        });
    }
    Ok(bytes)
}

/// A stream's per-shard throughput limits: one type for the wire, the engine's token
/// buckets and its catalog (archived with rkyv: variants and fields keep their order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Limits {
    /// Kinesis' per-shard defaults (1 MiB/s and 1,000 records/s in, 2 MiB/s out).
    Kinesis,
    /// No limits: for benchmarks.
    Off,
    /// Per-shard limits of the user's choosing; each in `1..=MAX_LIMIT_RATE`.
    Custom {
        write_bytes_per_s: u64,
        write_records_per_s: u64,
        read_bytes_per_s: u64,
    },
}

/// Kinesis' write limit per shard: 1 MiB/s ...
pub const KINESIS_WRITE_BYTES_PER_S: u64 = 1 << 20;
/// ... and 1,000 records/s.
pub const KINESIS_WRITE_RECORDS_PER_S: u64 = 1000;
/// Kinesis' shared read limit per shard: 2 MiB/s.
pub const KINESIS_READ_BYTES_PER_S: u64 = 2 << 20;
/// The largest custom rate (bytes or records per second): 1 TiB/s, far past any disk, and
/// small enough that a second of it in thousandths fits any arithmetic on it.
pub const MAX_LIMIT_RATE: u64 = 1 << 40;

const LIMITS_KINESIS: u8 = 0;
const LIMITS_OFF: u8 = 1;
const LIMITS_CUSTOM: u8 = 2;

impl Limits {
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            Limits::Kinesis => put_u8(out, LIMITS_KINESIS),
            Limits::Off => put_u8(out, LIMITS_OFF),
            Limits::Custom {
                write_bytes_per_s,
                write_records_per_s,
                read_bytes_per_s,
            } => {
                put_u8(out, LIMITS_CUSTOM);
                put_u64(out, write_bytes_per_s);
                put_u64(out, write_records_per_s);
                put_u64(out, read_bytes_per_s);
            }
        }
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Limits, DecodeError> {
        match r.u8("limits")? {
            LIMITS_KINESIS => Ok(Limits::Kinesis),
            LIMITS_OFF => Ok(Limits::Off),
            LIMITS_CUSTOM => {
                let limits = Limits::Custom {
                    write_bytes_per_s: r.u64("write_bytes_per_s")?,
                    write_records_per_s: r.u64("write_records_per_s")?,
                    read_bytes_per_s: r.u64("read_bytes_per_s")?,
                };
                if !limits.is_valid() {
                    return Err(DecodeError::Invalid {
                        field: "limits",
                        reason: "each rate must be 1..=2^40 per second",
                    });
                }
                Ok(limits)
            }
            _ => Err(DecodeError::Malformed {
                field: "limits",
                reason: "unknown tag",
            }),
        }
    }

    /// Custom rates must be in `1..=MAX_LIMIT_RATE`: a zero rate would refuse every request.
    pub fn is_valid(&self) -> bool {
        match self.rates() {
            None => true,
            Some((wb, wr, rb)) => [wb, wr, rb]
                .iter()
                .all(|r| (1..=MAX_LIMIT_RATE).contains(r)),
        }
    }

    /// (write bytes/s, write records/s, read bytes/s), or `None` when off.
    pub fn rates(&self) -> Option<(u64, u64, u64)> {
        match *self {
            Limits::Kinesis => Some((
                KINESIS_WRITE_BYTES_PER_S,
                KINESIS_WRITE_RECORDS_PER_S,
                KINESIS_READ_BYTES_PER_S,
            )),
            Limits::Off => None,
            Limits::Custom {
                write_bytes_per_s,
                write_records_per_s,
                read_bytes_per_s,
            } => Some((write_bytes_per_s, write_records_per_s, read_bytes_per_s)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreateStreamRequest<'a> {
    pub name: &'a str,
    pub shard_count: u32,
    pub retention_hours: u32,
    pub limits: Limits,
    /// The stream's per-record data limit; `None`: 1 MiB. At most 10 MiB.
    pub max_record_data_bytes: Option<u32>,
    /// How its records are kept at rest. Last on the wire and optional there: a request
    /// from a client that predates it decodes as `None`.
    pub encryption: EncryptionType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreateStreamResponse {
    /// The new stream's incarnation id (a re-created stream gets a new one).
    pub stream_id: u64,
    /// `Active`, or `Creating` when the server answered before every shard was made (a big
    /// stream); describe shows when it is active.
    pub status: StreamStatus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeleteStreamRequest<'a> {
    pub name: &'a str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DescribeStreamRequest<'a> {
    pub name: &'a str,
}

/// Increase- and decrease-retention requests share this body; the opcode says which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionRequest<'a> {
    pub name: &'a str,
    pub retention_hours: u32,
}

/// Names in ascending order, starting after `exclusive_start_name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListStreamsRequest<'a> {
    pub exclusive_start_name: Option<&'a str>,
    /// 1..=MAX_LIST_STREAMS_LIMIT names.
    pub limit: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListStreamsResponse<'a> {
    pub names: Vec<&'a str>,
    /// More names follow the last one: ask again starting after it.
    pub has_more: bool,
}

/// A stream's status, as Kinesis names them. A control operation runs start to finish
/// before the next on the same server, so the others are seen only while one runs.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamStatus {
    /// Its shards are being opened: not yet readable or writable.
    Creating = 0,
    Active = 1,
    /// A change (retention) is being applied: readable and writable.
    Updating = 2,
    /// Being deleted: no longer readable or writable.
    Deleting = 3,
}

impl StreamStatus {
    pub fn name(self) -> &'static str {
        match self {
            StreamStatus::Creating => "CREATING",
            StreamStatus::Active => "ACTIVE",
            StreamStatus::Updating => "UPDATING",
            StreamStatus::Deleting => "DELETING",
        }
    }
}

/// A shard's state: one type for the wire and the engine's catalog (archived with rkyv).
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum ShardState {
    /// Takes writes.
    Open = 0,
    /// Split or merged: read-only until its records leave the retention window.
    Closed = 1,
    /// Its stored data cannot be read (its store failed to open at start: the server's log
    /// names the file); reads and writes answer Corrupt until it is repaired. Only in
    /// DescribeStream answers, never in the catalog.
    Damaged = 2,
}

/// How a stream's shard count is chosen: by its owner (provisioned), or by the engine from
/// the write rate it observes (on-demand). One type for the wire and the catalog.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum CapacityMode {
    Provisioned = 0,
    OnDemand = 1,
}

impl CapacityMode {
    pub fn name(self) -> &'static str {
        match self {
            CapacityMode::Provisioned => "provisioned",
            CapacityMode::OnDemand => "on-demand",
        }
    }
}

/// How a stream's records are kept at rest (Kinesis' `EncryptionType`, with the server's
/// key file in place of KMS). One type for the wire and the engine's catalog (archived
/// with rkyv: variants keep their order).
#[repr(u8)]
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub enum EncryptionType {
    /// In the clear.
    #[default]
    None = 0,
    /// Sealed with AES-256-GCM under a data key of the stream, which is stored only wrapped
    /// under a master key of the server.
    Aes256Gcm = 1,
}

impl EncryptionType {
    /// Every type, in wire order.
    pub const ALL: [EncryptionType; 2] = [EncryptionType::None, EncryptionType::Aes256Gcm];

    /// The name the CLI and JSON use: `none` or `aes-256-gcm`.
    pub fn name(self) -> &'static str {
        match self {
            EncryptionType::None => "none",
            EncryptionType::Aes256Gcm => "aes-256-gcm",
        }
    }

    /// Whether records written under this type are sealed.
    pub fn is_encrypted(self) -> bool {
        self != EncryptionType::None
    }

    /// The type for a name as [`EncryptionType::name`] gives it (ASCII case ignored).
    pub fn from_name(name: &str) -> Option<EncryptionType> {
        EncryptionType::ALL
            .into_iter()
            .find(|e| e.name().eq_ignore_ascii_case(name))
    }

    fn decode(r: &mut Reader<'_>, field: &'static str) -> Result<EncryptionType, DecodeError> {
        match r.u8(field)? {
            0 => Ok(EncryptionType::None),
            1 => Ok(EncryptionType::Aes256Gcm),
            // A type a newer peer knows and this server does not: a value it cannot honour,
            // not a garbled frame.
            _ => Err(DecodeError::Invalid {
                field,
                reason: "unknown encryption type (known: 0 none, 1 aes-256-gcm)",
            }),
        }
    }
}

impl std::fmt::Display for EncryptionType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for EncryptionType {
    type Err = String;

    fn from_str(s: &str) -> Result<EncryptionType, String> {
        EncryptionType::from_name(s)
            .ok_or_else(|| format!("unknown encryption {s:?}: none or aes-256-gcm"))
    }
}

/// Start or stop encrypting a stream's new records (Kinesis' Start/StopStreamEncryption);
/// the opcode says which. Start needs a type other than `None` (refused on decoding);
/// Stop names the type being stopped, as Kinesis' does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamEncryptionRequest<'a> {
    pub name: &'a str,
    pub encryption: EncryptionType,
}

impl StreamEncryptionRequest<'_> {
    /// The check a start request gets beyond its fields' own.
    pub(crate) fn check_start(self) -> Result<Self, DecodeError> {
        if self.encryption.is_encrypted() {
            Ok(self)
        } else {
            Err(DecodeError::Invalid {
                field: "encryption",
                reason: "encryption must be aes-256-gcm",
            })
        }
    }
}

/// The answer to RotateKeys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotateKeysResponse {
    /// The master key new data keys are wrapped under from now on (the key file's current).
    pub master_key_id: u32,
    /// Encrypted streams that got a new data key.
    pub streams: u32,
}

/// Split an open shard at a hash key: the parent's keys below it go to one child, the rest
/// to the other (Kinesis' SplitShard).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitShardRequest<'a> {
    pub name: &'a str,
    pub shard_id: u32,
    /// The first hash key of the second child: above the parent's first key, at most its
    /// last.
    pub new_starting_hash_key: u128,
}

/// Merge two open shards whose hash-key ranges touch (Kinesis' MergeShards).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MergeShardsRequest<'a> {
    pub name: &'a str,
    pub shard_id: u32,
    pub adjacent_shard_id: u32,
}

/// Change the number of open shards to `target_shard_count` with even hash-key ranges
/// (Kinesis' UpdateShardCount with UNIFORM_SCALING), by splits and merges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdateShardCountRequest<'a> {
    pub name: &'a str,
    pub target_shard_count: u32,
}

/// Switch a stream between provisioned and on-demand capacity (Kinesis'
/// UpdateStreamMode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdateStreamModeRequest<'a> {
    pub name: &'a str,
    pub mode: CapacityMode,
    /// On-demand: the most write capacity the stream may scale to, in MiB/s (4..=1,000,000);
    /// `None`: the server's `on_demand_max_write_mib_per_s`.
    pub max_write_mib_per_s: Option<u32>,
}

/// The answer to a split, merge or scale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReshardResponse {
    /// The stream's shard-map version after the change.
    pub map_version: u64,
    /// The shards the change opened, in hash-key order.
    pub new_shards: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardDescription {
    pub id: u32,
    pub state: ShardState,
    /// Inclusive bounds of the shard's hash-key range.
    pub hash_key_start: u128,
    pub hash_key_end: u128,
    /// The shard this one was split from, or the first of the two it was merged from.
    pub parent: Option<u32>,
    /// The second parent of a merge (Kinesis' adjacent parent).
    pub adjacent_parent: Option<u32>,
    /// The engine core that owns the shard (see the hello response for its address).
    pub core: u16,
    /// First and last retained sequence numbers; `None` while the shard holds no record.
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Records retained (durable, not yet past retention).
    pub records: u64,
    /// Bytes those records take in the shard's extents (batch framing included).
    pub bytes: u64,
    /// Disk the shard's extents hold (allocated, used or not).
    pub disk_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamDescription<'a> {
    pub name: &'a str,
    pub stream_id: u64,
    pub status: StreamStatus,
    pub retention_hours: u32,
    pub limits: Limits,
    pub max_record_data_bytes: u32,
    /// When the stream was created (ms since the epoch).
    pub created_ms: i64,
    pub shards: Vec<ShardDescription>,
    pub mode: CapacityMode,
    /// Raised by every split, merge and scale.
    pub map_version: u64,
    /// On-demand: the last scaling decision (when, what and why), for people.
    pub last_scaling: Option<&'a str>,
    /// Per-shard metrics are exported (Kinesis' enhanced shard-level monitoring).
    pub shard_level_metrics: bool,
    /// How records written from now on are kept at rest.
    pub encryption: EncryptionType,
    /// Data keys (key epochs) the stream has had, the current one included: one per start
    /// of encryption, engine start and rotation, all kept (0 for a stream never encrypted).
    pub key_epochs: u32,
    /// The master key the current data key is wrapped under; `None` exactly when
    /// `encryption` is `None`.
    pub master_key_id: Option<u32>,
    /// On-demand: the most write capacity the engine may scale the stream to, in MiB/s
    /// (its own ceiling, else the server's); `None` exactly when provisioned.
    pub max_write_mib_per_s: Option<u32>,
}

impl<'a> Payload<'a> for CreateStreamRequest<'a> {
    fn encode_payload(&self, out: &mut Vec<u8>) {
        put_stream_name(out, self.name);
        put_u32(out, self.shard_count);
        put_u32(out, self.retention_hours);
        self.limits.encode(out);
        put_option(out, self.max_record_data_bytes, put_u32);
        put_u8(out, self.encryption as u8);
    }

    fn decode_payload(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let name = get_stream_name(r)?;
        let shard_count = r.u32("shard_count")?;
        if shard_count == 0 || shard_count > MAX_SHARDS_PER_STREAM {
            return Err(DecodeError::Invalid {
                field: "shard_count",
                reason: "not in 1..=65536",
            });
        }
        let retention_hours = get_retention_hours(r)?;
        let limits = Limits::decode(r)?;
        let max_record_data_bytes = if r.present("max_record_data_bytes")? {
            Some(get_max_record_data_bytes(r, "max_record_data_bytes")?)
        } else {
            None
        };
        let encryption = r
            .trailing("encryption", EncryptionType::decode)?
            .unwrap_or(EncryptionType::None);
        Ok(CreateStreamRequest {
            name,
            shard_count,
            retention_hours,
            limits,
            max_record_data_bytes,
            encryption,
        })
    }
}

impl<'a> Payload<'a> for CreateStreamResponse {
    fn encode_payload(&self, out: &mut Vec<u8>) {
        put_u64(out, self.stream_id);
        put_u8(out, self.status as u8);
    }

    fn decode_payload(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        Ok(CreateStreamResponse {
            stream_id: r.u64("stream_id")?,
            status: get_stream_status(r)?,
        })
    }
}

impl<'a> Payload<'a> for DeleteStreamRequest<'a> {
    fn encode_payload(&self, out: &mut Vec<u8>) {
        put_stream_name(out, self.name);
    }

    fn decode_payload(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        Ok(DeleteStreamRequest {
            name: get_stream_name(r)?,
        })
    }
}

impl<'a> Payload<'a> for DescribeStreamRequest<'a> {
    fn encode_payload(&self, out: &mut Vec<u8>) {
        put_stream_name(out, self.name);
    }

    fn decode_payload(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        Ok(DescribeStreamRequest {
            name: get_stream_name(r)?,
        })
    }
}

impl<'a> Payload<'a> for RetentionRequest<'a> {
    fn encode_payload(&self, out: &mut Vec<u8>) {
        put_stream_name(out, self.name);
        put_u32(out, self.retention_hours);
    }

    fn decode_payload(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        Ok(RetentionRequest {
            name: get_stream_name(r)?,
            retention_hours: get_retention_hours(r)?,
        })
    }
}

impl<'a> Payload<'a> for ListStreamsRequest<'a> {
    fn encode_payload(&self, out: &mut Vec<u8>) {
        match self.exclusive_start_name {
            Some(name) => {
                put_u8(out, 1);
                put_stream_name(out, name);
            }
            None => put_u8(out, 0),
        }
        put_u32(out, self.limit);
    }

    fn decode_payload(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let exclusive_start_name = if r.present("exclusive_start_name")? {
            Some(get_stream_name(r)?)
        } else {
            None
        };
        let limit = r.u32("limit")?;
        if limit == 0 || limit > MAX_LIST_STREAMS_LIMIT {
            return Err(DecodeError::Invalid {
                field: "limit",
                reason: "not in 1..=10000",
            });
        }
        Ok(ListStreamsRequest {
            exclusive_start_name,
            limit,
        })
    }
}

impl<'a> Payload<'a> for ListStreamsResponse<'a> {
    fn encode_payload(&self, out: &mut Vec<u8>) {
        put_bool(out, self.has_more);
        put_count(out, self.names.len());
        for name in &self.names {
            put_stream_name(out, name);
        }
    }

    fn decode_payload(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let has_more = r.bool("has_more")?;
        // A name takes at least two bytes: its length and one character.
        let count = r.count(MAX_LIST_STREAMS_LIMIT as usize, 2, "names")?;
        let mut names = Vec::new();
        for _ in 0..count {
            names.push(get_stream_name(r)?);
        }
        Ok(ListStreamsResponse { names, has_more })
    }
}

/// Smallest encoded shard: id, state, two hash keys, two absent parents, core, two absent
/// sequence numbers.
const MIN_SHARD_BYTES: usize = 4 + 1 + 16 + 16 + 1 + 1 + 2 + 1 + 1 + 3 * 8;

fn get_stream_status(r: &mut Reader<'_>) -> Result<StreamStatus, DecodeError> {
    Ok(match r.u8("stream status")? {
        0 => StreamStatus::Creating,
        1 => StreamStatus::Active,
        2 => StreamStatus::Updating,
        3 => StreamStatus::Deleting,
        _ => {
            return Err(DecodeError::Malformed {
                field: "stream status",
                reason: "unknown",
            })
        }
    })
}

impl ShardDescription {
    fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, self.id);
        put_u8(out, self.state as u8);
        put_u128(out, self.hash_key_start);
        put_u128(out, self.hash_key_end);
        put_option(out, self.parent, put_u32);
        put_option(out, self.adjacent_parent, put_u32);
        put_u16(out, self.core);
        put_option(out, self.first_seq, put_u64);
        put_option(out, self.last_seq, put_u64);
        put_u64(out, self.records);
        put_u64(out, self.bytes);
        put_u64(out, self.disk_bytes);
    }

    fn decode(r: &mut Reader<'_>) -> Result<ShardDescription, DecodeError> {
        let id = r.u32("shard id")?;
        let state = match r.u8("shard state")? {
            0 => ShardState::Open,
            1 => ShardState::Closed,
            2 => ShardState::Damaged,
            _ => {
                return Err(DecodeError::Malformed {
                    field: "shard state",
                    reason: "unknown",
                })
            }
        };
        let hash_key_start = r.u128("hash_key_start")?;
        let hash_key_end = r.u128("hash_key_end")?;
        if hash_key_start > hash_key_end {
            return Err(DecodeError::Malformed {
                field: "hash_key_end",
                reason: "below start",
            });
        }
        Ok(ShardDescription {
            id,
            state,
            hash_key_start,
            hash_key_end,
            parent: r.option("parent", Reader::u32)?,
            adjacent_parent: r.option("adjacent_parent", Reader::u32)?,
            core: r.u16("core")?,
            first_seq: r.option("first_seq", Reader::u64)?,
            last_seq: r.option("last_seq", Reader::u64)?,
            records: r.u64("records")?,
            bytes: r.u64("bytes")?,
            disk_bytes: r.u64("disk_bytes")?,
        })
    }

    /// Whether `hash_key` falls in this shard's inclusive range.
    pub fn contains(&self, hash_key: u128) -> bool {
        (self.hash_key_start..=self.hash_key_end).contains(&hash_key)
    }
}

impl StreamDescription<'_> {
    /// The open shard whose range holds `hash_key`: where a record with that key goes.
    pub fn shard_for(&self, hash_key: u128) -> Option<&ShardDescription> {
        self.shards
            .iter()
            .find(|s| s.state == ShardState::Open && s.contains(hash_key))
    }
}

impl<'a> Payload<'a> for StreamDescription<'a> {
    fn encode_payload(&self, out: &mut Vec<u8>) {
        put_stream_name(out, self.name);
        put_u64(out, self.stream_id);
        put_u8(out, self.status as u8);
        put_u32(out, self.retention_hours);
        self.limits.encode(out);
        put_u32(out, self.max_record_data_bytes);
        put_i64(out, self.created_ms);
        put_count(out, self.shards.len());
        for shard in &self.shards {
            shard.encode(out);
        }
        put_u8(out, self.mode as u8);
        put_u64(out, self.map_version);
        match self.last_scaling {
            Some(text) => {
                put_u8(out, 1);
                put_str(out, text);
            }
            None => put_u8(out, 0),
        }
        put_bool(out, self.shard_level_metrics);
        put_u8(out, self.encryption as u8);
        put_u32(out, self.key_epochs);
        put_option(out, self.master_key_id, put_u32);
        put_option(out, self.max_write_mib_per_s, put_u32);
    }

    fn decode_payload(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let name = get_stream_name(r)?;
        let stream_id = r.u64("stream_id")?;
        let status = get_stream_status(r)?;
        let retention_hours = get_retention_hours(r)?;
        let limits = Limits::decode(r)?;
        let max_record_data_bytes = get_max_record_data_bytes(r, "max_record_data_bytes")?;
        let created_ms = r.i64("created_ms")?;
        let count = r.count(MAX_SHARDS_DESCRIBED, MIN_SHARD_BYTES, "shards")?;
        let mut shards = Vec::new();
        for _ in 0..count {
            shards.push(ShardDescription::decode(r)?);
        }
        let mode = get_capacity_mode(r)?;
        let map_version = r.u64("map_version")?;
        let last_scaling = if r.present("last_scaling")? {
            Some(r.str(4096, "last_scaling")?)
        } else {
            None
        };
        let shard_level_metrics = r.bool("shard_level_metrics")?;
        let encryption = EncryptionType::decode(r, "encryption")?;
        let key_epochs = r.u32("key_epochs")?;
        let master_key_id = r.option("master_key_id", Reader::u32)?;
        // Added later: a server from before it ends the description here.
        let max_write_mib_per_s = r
            .trailing("max_write_mib_per_s", |r, f| r.option(f, Reader::u32))?
            .flatten();
        if max_write_mib_per_s
            .is_some_and(|m| mode != CapacityMode::OnDemand || !(4..=1_000_000).contains(&m))
        {
            return Err(DecodeError::Malformed {
                field: "max_write_mib_per_s",
                reason: "only when on-demand, in 4..=1000000",
            });
        }
        // A sealing stream has a current data key, wrapped under some master key; a stream
        // in the clear has no current one (older keys may remain: `key_epochs`).
        if encryption.is_encrypted() != master_key_id.is_some()
            || (encryption.is_encrypted() && key_epochs == 0)
        {
            return Err(DecodeError::Malformed {
                field: "master_key_id",
                reason: "present exactly when encrypted, with at least one key epoch",
            });
        }
        Ok(StreamDescription {
            name,
            stream_id,
            status,
            retention_hours,
            limits,
            max_record_data_bytes,
            created_ms,
            shards,
            mode,
            map_version,
            last_scaling,
            shard_level_metrics,
            encryption,
            key_epochs,
            master_key_id,
            max_write_mib_per_s,
        })
    }
}

fn get_capacity_mode(r: &mut Reader<'_>) -> Result<CapacityMode, DecodeError> {
    match r.u8("mode")? {
        0 => Ok(CapacityMode::Provisioned),
        1 => Ok(CapacityMode::OnDemand),
        _ => Err(DecodeError::Malformed {
            field: "mode",
            reason: "unknown",
        }),
    }
}

impl<'a> Payload<'a> for SplitShardRequest<'a> {
    fn encode_payload(&self, out: &mut Vec<u8>) {
        put_stream_name(out, self.name);
        put_u32(out, self.shard_id);
        put_u128(out, self.new_starting_hash_key);
    }

    fn decode_payload(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let name = get_stream_name(r)?;
        let shard_id = r.u32("shard_id")?;
        let new_starting_hash_key = r.u128("new_starting_hash_key")?;
        if new_starting_hash_key == 0 {
            return Err(DecodeError::Invalid {
                field: "new_starting_hash_key",
                reason: "0 leaves the first child empty",
            });
        }
        Ok(SplitShardRequest {
            name,
            shard_id,
            new_starting_hash_key,
        })
    }
}

impl<'a> Payload<'a> for MergeShardsRequest<'a> {
    fn encode_payload(&self, out: &mut Vec<u8>) {
        put_stream_name(out, self.name);
        put_u32(out, self.shard_id);
        put_u32(out, self.adjacent_shard_id);
    }

    fn decode_payload(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let name = get_stream_name(r)?;
        let shard_id = r.u32("shard_id")?;
        let adjacent_shard_id = r.u32("adjacent_shard_id")?;
        if shard_id == adjacent_shard_id {
            return Err(DecodeError::Invalid {
                field: "adjacent_shard_id",
                reason: "a shard cannot merge with itself",
            });
        }
        Ok(MergeShardsRequest {
            name,
            shard_id,
            adjacent_shard_id,
        })
    }
}

impl<'a> Payload<'a> for UpdateShardCountRequest<'a> {
    fn encode_payload(&self, out: &mut Vec<u8>) {
        put_stream_name(out, self.name);
        put_u32(out, self.target_shard_count);
        put_u8(out, 0);
    }

    fn decode_payload(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let name = get_stream_name(r)?;
        let target_shard_count = r.u32("target_shard_count")?;
        if target_shard_count == 0 || target_shard_count > MAX_SHARDS_PER_STREAM {
            return Err(DecodeError::Invalid {
                field: "target_shard_count",
                reason: "not in 1..=65536",
            });
        }
        if r.u8("scaling")? != 0 {
            return Err(DecodeError::Invalid {
                field: "scaling",
                reason: "only 0 (uniform scaling) is known",
            });
        }
        Ok(UpdateShardCountRequest {
            name,
            target_shard_count,
        })
    }
}

impl<'a> Payload<'a> for UpdateStreamModeRequest<'a> {
    fn encode_payload(&self, out: &mut Vec<u8>) {
        put_stream_name(out, self.name);
        put_u8(out, self.mode as u8);
        put_option(out, self.max_write_mib_per_s, put_u32);
    }

    fn decode_payload(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let name = get_stream_name(r)?;
        let mode = get_capacity_mode(r)?;
        let max_write_mib_per_s = r.option("max_write_mib_per_s", Reader::u32)?;
        if max_write_mib_per_s.is_some_and(|m| !(4..=1_000_000).contains(&m)) {
            return Err(DecodeError::Invalid {
                field: "max_write_mib_per_s",
                reason: "not in 4..=1000000",
            });
        }
        Ok(UpdateStreamModeRequest {
            name,
            mode,
            max_write_mib_per_s,
        })
    }
}

impl<'a> Payload<'a> for ReshardResponse {
    fn encode_payload(&self, out: &mut Vec<u8>) {
        put_u64(out, self.map_version);
        put_count(out, self.new_shards.len());
        for id in &self.new_shards {
            put_u32(out, *id);
        }
    }

    fn decode_payload(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let map_version = r.u64("map_version")?;
        let count = r.count(MAX_SHARDS_PER_STREAM as usize, 4, "new_shards")?;
        let mut new_shards = Vec::with_capacity(count);
        for _ in 0..count {
            new_shards.push(r.u32("shard id")?);
        }
        Ok(ReshardResponse {
            map_version,
            new_shards,
        })
    }
}

impl<'a> Payload<'a> for StreamEncryptionRequest<'a> {
    fn encode_payload(&self, out: &mut Vec<u8>) {
        put_stream_name(out, self.name);
        put_u8(out, self.encryption as u8);
    }

    fn decode_payload(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        Ok(StreamEncryptionRequest {
            name: get_stream_name(r)?,
            encryption: EncryptionType::decode(r, "encryption")?,
        })
    }
}

impl<'a> Payload<'a> for RotateKeysResponse {
    fn encode_payload(&self, out: &mut Vec<u8>) {
        put_u32(out, self.master_key_id);
        put_u32(out, self.streams);
    }

    fn decode_payload(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        Ok(RotateKeysResponse {
            master_key_id: r.u32("master_key_id")?,
            streams: r.u32("streams")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::testkit::{check_request, check_request_with_added_tail, check_response};
    use crate::message::{Request, Response};
    use crate::routing::even_range;
    use proptest::prelude::*;

    fn custom() -> Limits {
        Limits::Custom {
            write_bytes_per_s: 1 << 20,
            write_records_per_s: 1000,
            read_bytes_per_s: 2 << 20,
        }
    }

    fn shard(id: u32, n: u32) -> ShardDescription {
        let (hash_key_start, hash_key_end) = even_range(id, n);
        ShardDescription {
            id,
            state: ShardState::Open,
            hash_key_start,
            hash_key_end,
            parent: None,
            adjacent_parent: None,
            core: (id % 2) as u16,
            first_seq: None,
            last_seq: None,
            records: 0,
            bytes: 0,
            disk_bytes: 0,
        }
    }

    /// A create request's checks: its encryption byte is a field added after release, so
    /// the payload without it decodes too, as an unencrypted stream's.
    fn check_create(req: CreateStreamRequest<'_>) -> Vec<u8> {
        let older = CreateStreamRequest {
            encryption: EncryptionType::None,
            ..req
        };
        check_request_with_added_tail(
            &Request::CreateStream(req),
            &Request::CreateStream(older),
            1,
        )
    }

    /// `check_response` for a description, whose last field (`max_write_mib_per_s`: one
    /// byte absent, five present) came later: a server from before ends without it.
    fn check_description(d: StreamDescription<'_>) -> Vec<u8> {
        let added = if d.max_write_mib_per_s.is_some() {
            5
        } else {
            1
        };
        let older = StreamDescription {
            max_write_mib_per_s: None,
            ..d.clone()
        };
        crate::message::testkit::check_response_with_added_tail(
            &Response::DescribeStream(d),
            &Response::DescribeStream(older),
            added,
        )
    }

    fn description() -> StreamDescription<'static> {
        let mut closed = shard(0, 1);
        closed.state = ShardState::Closed;
        closed.id = 9;
        closed.first_seq = Some(0);
        closed.last_seq = Some(41);
        let mut child = shard(1, 2);
        child.parent = Some(9);
        child.adjacent_parent = Some(8);
        child.first_seq = Some(42);
        child.last_seq = Some(u64::MAX);
        child.records = u64::MAX;
        child.bytes = 1 << 40;
        child.disk_bytes = u64::MAX;
        StreamDescription {
            name: "orders.v2",
            stream_id: 77,
            status: StreamStatus::Updating,
            retention_hours: 24,
            limits: custom(),
            max_record_data_bytes: 1 << 20,
            created_ms: -1,
            shards: vec![closed, shard(0, 2), child],
            mode: CapacityMode::OnDemand,
            map_version: 3,
            last_scaling: Some("4 -> 8 open shards: writes were throttled"),
            shard_level_metrics: true,
            encryption: EncryptionType::Aes256Gcm,
            key_epochs: 3,
            master_key_id: Some(u32::MAX),
            max_write_mib_per_s: Some(200),
        }
    }

    #[test]
    fn requests_round_trip_and_truncate_cleanly() {
        for limits in [Limits::Kinesis, Limits::Off, custom()] {
            for max_record_data_bytes in [None, Some(1), Some(10 << 20)] {
                for encryption in EncryptionType::ALL {
                    check_create(CreateStreamRequest {
                        name: "a",
                        shard_count: 4,
                        retention_hours: MAX_RETENTION_HOURS,
                        limits,
                        max_record_data_bytes,
                        encryption,
                    });
                }
            }
        }
        check_request(&Request::DeleteStream(DeleteStreamRequest {
            name: "x-y_z.1",
        }));
        check_request(&Request::DescribeStream(DescribeStreamRequest {
            name: "S",
        }));
        let retention = RetentionRequest {
            name: "s",
            retention_hours: 48,
        };
        check_request(&Request::IncreaseRetention(retention));
        check_request(&Request::DecreaseRetention(retention));
        check_request(&Request::ListStreams(ListStreamsRequest {
            exclusive_start_name: None,
            limit: 1,
        }));
        check_request(&Request::SplitShard(SplitShardRequest {
            name: "s",
            shard_id: u32::MAX,
            new_starting_hash_key: u128::MAX,
        }));
        check_request(&Request::MergeShards(MergeShardsRequest {
            name: "s",
            shard_id: 0,
            adjacent_shard_id: 1,
        }));
        check_request(&Request::UpdateShardCount(UpdateShardCountRequest {
            name: "s",
            target_shard_count: MAX_SHARDS_PER_STREAM,
        }));
        for mode in [CapacityMode::Provisioned, CapacityMode::OnDemand] {
            for max_write_mib_per_s in [None, Some(4), Some(1_000_000)] {
                check_request(&Request::UpdateStreamMode(UpdateStreamModeRequest {
                    name: "s",
                    mode,
                    max_write_mib_per_s,
                }));
            }
        }
        check_request(&Request::ListStreams(ListStreamsRequest {
            exclusive_start_name: Some("m"),
            limit: MAX_LIST_STREAMS_LIMIT,
        }));
    }

    #[test]
    fn responses_round_trip_and_truncate_cleanly() {
        for status in [StreamStatus::Active, StreamStatus::Creating] {
            check_response(&Response::CreateStream(CreateStreamResponse {
                stream_id: u64::MAX,
                status,
            }));
        }
        check_response(&Response::IncreaseRetention);
        check_response(&Response::DecreaseRetention);
        check_response(&Response::ListStreams(ListStreamsResponse {
            names: vec![],
            has_more: false,
        }));
        check_response(&Response::ListStreams(ListStreamsResponse {
            names: vec!["a", "b.c", "d-e"],
            has_more: true,
        }));
        check_description(description());
        let mut plain = description();
        plain.encryption = EncryptionType::None;
        plain.master_key_id = None;
        check_description(plain.clone());
        plain.key_epochs = 0;
        check_description(plain);
        for new_shards in [vec![], vec![7], (0..100).collect()] {
            let r = ReshardResponse {
                map_version: u64::MAX,
                new_shards,
            };
            check_response(&Response::SplitShard(r.clone()));
            check_response(&Response::MergeShards(r.clone()));
            check_response(&Response::UpdateShardCount(r));
        }
    }

    #[test]
    fn golden_enhanced_monitoring() {
        let out = check_request(&Request::EnableEnhancedMonitoring(DescribeStreamRequest {
            name: "s",
        }));
        #[rustfmt::skip]
        let expected = [
            18, 0, 0, 0,  1,  0,  23, 0,  1, 0, 0, 0, 0, 0xee, 0xff, 0xc0,
            1, b's',  // name
        ];
        assert_eq!(out, expected);
        check_request(&Request::DisableEnhancedMonitoring(DescribeStreamRequest {
            name: "s",
        }));
        check_response(&Response::EnableEnhancedMonitoring);
        check_response(&Response::DisableEnhancedMonitoring);
    }

    #[test]
    fn golden_reshard_messages() {
        let out = check_request(&Request::SplitShard(SplitShardRequest {
            name: "s",
            shard_id: 2,
            new_starting_hash_key: 1 << 127,
        }));
        #[rustfmt::skip]
        let expected = [
            38, 0, 0, 0,  1,  0,  16, 0,  1, 0, 0, 0, 0, 0xee, 0xff, 0xc0,
            1, b's',                                  // name
            2, 0, 0, 0,                               // shard_id
            0, 0, 0, 0, 0, 0, 0, 0,                   // new_starting_hash_key (u128 LE)
            0, 0, 0, 0, 0, 0, 0, 0x80,
        ];
        assert_eq!(out, expected);
        let out = check_request(&Request::MergeShards(MergeShardsRequest {
            name: "s",
            shard_id: 2,
            adjacent_shard_id: 3,
        }));
        #[rustfmt::skip]
        let expected = [
            26, 0, 0, 0,  1,  0,  17, 0,  1, 0, 0, 0, 0, 0xee, 0xff, 0xc0,
            1, b's',        // name
            2, 0, 0, 0,     // shard_id
            3, 0, 0, 0,     // adjacent_shard_id
        ];
        assert_eq!(out, expected);
        let out = check_request(&Request::UpdateShardCount(UpdateShardCountRequest {
            name: "s",
            target_shard_count: 8,
        }));
        #[rustfmt::skip]
        let expected = [
            23, 0, 0, 0,  1,  0,  18, 0,  1, 0, 0, 0, 0, 0xee, 0xff, 0xc0,
            1, b's',        // name
            8, 0, 0, 0,     // target_shard_count
            0,              // scaling: uniform
        ];
        assert_eq!(out, expected);
        let out = check_request(&Request::UpdateStreamMode(UpdateStreamModeRequest {
            name: "s",
            mode: CapacityMode::OnDemand,
            max_write_mib_per_s: Some(200),
        }));
        #[rustfmt::skip]
        let expected = [
            24, 0, 0, 0,  1,  0,  19, 0,  1, 0, 0, 0, 0, 0xee, 0xff, 0xc0,
            1, b's',        // name
            1,              // mode: on-demand
            1, 200, 0, 0, 0 // max_write_mib_per_s: 200
        ];
        assert_eq!(out, expected);
        check_response(&Response::UpdateStreamMode);
        let out = check_response(&Response::MergeShards(ReshardResponse {
            map_version: 3,
            new_shards: vec![6],
        }));
        #[rustfmt::skip]
        let expected = [
            29, 0, 0, 0,  1,  1,  17, 0,  42, 0, 0, 0, 0, 0, 0, 0,
            3, 0, 0, 0, 0, 0, 0, 0, // map_version
            1,                      // one new shard:
            6, 0, 0, 0,             //   6
        ];
        assert_eq!(out, expected);
    }

    #[test]
    fn reshard_requests_are_range_checked() {
        let mut payload = Vec::new();
        SplitShardRequest {
            name: "s",
            shard_id: 0,
            new_starting_hash_key: 0,
        }
        .encode_payload(&mut payload);
        assert!(Request::decode(16, &payload).is_err(), "split at 0");
        let mut payload = Vec::new();
        MergeShardsRequest {
            name: "s",
            shard_id: 1,
            adjacent_shard_id: 1,
        }
        .encode_payload(&mut payload);
        assert!(Request::decode(17, &payload).is_err(), "merge with itself");
        for target in [0, MAX_SHARDS_PER_STREAM + 1] {
            let mut payload = Vec::new();
            UpdateShardCountRequest {
                name: "s",
                target_shard_count: target,
            }
            .encode_payload(&mut payload);
            assert!(Request::decode(18, &payload).is_err(), "{target}");
        }
        let mut payload = Vec::new();
        UpdateShardCountRequest {
            name: "s",
            target_shard_count: 2,
        }
        .encode_payload(&mut payload);
        *payload.last_mut().unwrap() = 1;
        assert!(Request::decode(18, &payload).is_err(), "unknown scaling");
        let mut payload = Vec::new();
        UpdateStreamModeRequest {
            name: "s",
            mode: CapacityMode::OnDemand,
            max_write_mib_per_s: Some(3),
        }
        .encode_payload(&mut payload);
        assert!(Request::decode(19, &payload).is_err(), "below 4 MiB/s");
    }

    #[test]
    fn golden_create_stream_request() {
        let out = check_create(CreateStreamRequest {
            name: "s",
            shard_count: 2,
            retention_hours: 24,
            limits: Limits::Off,
            max_record_data_bytes: None,
            encryption: EncryptionType::Aes256Gcm,
        });
        #[rustfmt::skip]
        let expected = [
            29, 0, 0, 0,  1,  0,  10, 0,  1, 0, 0, 0, 0, 0xee, 0xff, 0xc0,
            1, b's',        // name
            2, 0, 0, 0,     // shard_count
            24, 0, 0, 0,    // retention_hours
            1,              // limits: Off
            0,              // max_record_data_bytes: absent
            1,              // encryption: aes-256-gcm
        ];
        assert_eq!(out, expected);
        // A client from before encryption sends the same without the last byte.
        let older = &expected[16..expected.len() - 1];
        let Ok(Request::CreateStream(req)) = Request::decode(10, older) else {
            panic!("an older client's create decodes")
        };
        assert_eq!(req.encryption, EncryptionType::None);
    }

    #[test]
    fn golden_encryption_messages() {
        let out = check_request(&Request::StartStreamEncryption(StreamEncryptionRequest {
            name: "s",
            encryption: EncryptionType::Aes256Gcm,
        }));
        #[rustfmt::skip]
        let expected = [
            19, 0, 0, 0,  1,  0,  25, 0,  1, 0, 0, 0, 0, 0xee, 0xff, 0xc0,
            1, b's',        // name
            1,              // encryption: aes-256-gcm
        ];
        assert_eq!(out, expected);
        let out = check_request(&Request::StopStreamEncryption(StreamEncryptionRequest {
            name: "s",
            encryption: EncryptionType::Aes256Gcm,
        }));
        assert_eq!(out[6..8], [26, 0], "opcode 26, same body");
        assert_eq!(out[16..], expected[16..]);
        check_response(&Response::StartStreamEncryption);
        check_response(&Response::StopStreamEncryption);
        let out = check_request(&Request::RotateKeys);
        assert_eq!(
            out,
            [16, 0, 0, 0, 1, 0, 71, 0, 1, 0, 0, 0, 0, 0xee, 0xff, 0xc0]
        );
        let out = check_response(&Response::RotateKeys(RotateKeysResponse {
            master_key_id: 7,
            streams: 0x0102,
        }));
        #[rustfmt::skip]
        let expected = [
            24, 0, 0, 0,  1,  1,  71, 0,  42, 0, 0, 0, 0, 0, 0, 0,
            7, 0, 0, 0,     // master_key_id
            2, 1, 0, 0,     // streams
        ];
        assert_eq!(out, expected);
    }

    #[test]
    fn golden_description_tail() {
        let mut d = description();
        d.shards.clear();
        d.last_scaling = None;
        d.key_epochs = 2;
        d.master_key_id = Some(5);
        let out = check_description(d);
        #[rustfmt::skip]
        let tail = [
            1,              // mode: on-demand
            3, 0, 0, 0, 0, 0, 0, 0, // map_version
            0,              // last_scaling: absent
            1,              // shard_level_metrics
            1,              // encryption: aes-256-gcm
            2, 0, 0, 0,     // key_epochs
            1, 5, 0, 0, 0,  // master_key_id: 5
            1, 200, 0, 0, 0, // max_write_mib_per_s: 200
        ];
        assert_eq!(out[out.len() - tail.len()..], tail);
        // Provisioned: absent; present only when on-demand, in range. A description from a
        // server before the field ends without it.
        let mut d = description();
        d.mode = CapacityMode::Provisioned;
        d.max_write_mib_per_s = None;
        let out = check_description(d);
        assert_eq!(out[out.len() - 1], 0);
        let mut older = Vec::new();
        let mut d = description();
        d.max_write_mib_per_s = None;
        d.encode_payload(&mut older);
        older.pop(); // an absent option is one byte: a description that ends before it
        let decoded =
            crate::message::Response::decode(crate::frame::Opcode::DescribeStream.as_u16(), &older)
                .unwrap();
        assert!(matches!(
            decoded,
            crate::message::Response::DescribeStream(StreamDescription {
                max_write_mib_per_s: None,
                ..
            })
        ));
        for (mode, ceiling) in [
            (CapacityMode::Provisioned, Some(200)),
            (CapacityMode::OnDemand, Some(3)),
        ] {
            let mut d = description();
            d.mode = mode;
            d.max_write_mib_per_s = ceiling;
            let mut payload = Vec::new();
            d.encode_payload(&mut payload);
            assert!(
                crate::message::Response::decode(
                    crate::frame::Opcode::DescribeStream.as_u16(),
                    &payload
                )
                .is_err(),
                "{mode:?} {ceiling:?}"
            );
        }
    }

    #[test]
    fn encryption_is_checked() {
        // Start needs a type that encrypts; Stop names any.
        let mut payload = Vec::new();
        StreamEncryptionRequest {
            name: "s",
            encryption: EncryptionType::None,
        }
        .encode_payload(&mut payload);
        let err = Request::decode(25, &payload).unwrap_err();
        assert_eq!(err.code(), crate::ErrorCode::InvalidArgument);
        assert_eq!(
            err.to_string(),
            "invalid encryption: encryption must be aes-256-gcm"
        );
        assert!(Request::decode(26, &payload).is_ok());
        // An unknown type is a value the server cannot honour.
        *payload.last_mut().unwrap() = 2;
        for opcode in [25, 26] {
            let err = Request::decode(opcode, &payload).unwrap_err();
            assert_eq!(err.code(), crate::ErrorCode::InvalidArgument, "{opcode}");
        }
        let mut payload = Vec::new();
        CreateStreamRequest {
            name: "s",
            shard_count: 1,
            retention_hours: 1,
            limits: Limits::Kinesis,
            max_record_data_bytes: None,
            encryption: EncryptionType::None,
        }
        .encode_payload(&mut payload);
        *payload.last_mut().unwrap() = 0xff;
        let err = Request::decode(10, &payload).unwrap_err();
        assert_eq!(err.code(), crate::ErrorCode::InvalidArgument);
        *payload.last_mut().unwrap() = 0;
        payload.push(0);
        assert_eq!(
            Request::decode(10, &payload),
            Err(DecodeError::TrailingBytes(1)),
            "a byte past the tail"
        );
        // A description says a master key exactly when it encrypts.
        let bad = [
            (EncryptionType::Aes256Gcm, 1, None),
            (EncryptionType::Aes256Gcm, 0, Some(1)),
            (EncryptionType::None, 1, Some(1)),
        ];
        for (encryption, key_epochs, master_key_id) in bad {
            let mut d = description();
            d.encryption = encryption;
            d.key_epochs = key_epochs;
            d.master_key_id = master_key_id;
            let mut payload = Vec::new();
            d.encode_payload(&mut payload);
            assert!(
                Response::decode(13, &payload).is_err(),
                "{encryption} {key_epochs} {master_key_id:?}"
            );
        }
        // Names, both ways.
        for e in EncryptionType::ALL {
            assert_eq!(e.name().parse::<EncryptionType>(), Ok(e));
            assert_eq!(e.to_string(), e.name());
        }
        assert_eq!("AES-256-GCM".parse(), Ok(EncryptionType::Aes256Gcm));
        assert!("aes".parse::<EncryptionType>().is_err());
        assert_eq!(EncryptionType::default(), EncryptionType::None);
    }

    #[test]
    fn golden_create_stream_response() {
        let out = check_response(&Response::CreateStream(CreateStreamResponse {
            stream_id: 9,
            status: StreamStatus::Creating,
        }));
        #[rustfmt::skip]
        let expected = [
            25, 0, 0, 0,  1,  1,  10, 0,  42, 0, 0, 0, 0, 0, 0, 0,
            9, 0, 0, 0, 0, 0, 0, 0, // stream_id
            0,                      // status: CREATING
        ];
        assert_eq!(out, expected);
    }

    #[test]
    fn stream_names_are_validated() {
        assert!(is_valid_stream_name("a"));
        assert!(is_valid_stream_name(&"z".repeat(128)));
        assert!(!is_valid_stream_name(""));
        assert!(!is_valid_stream_name(&"z".repeat(129)));
        assert!(!is_valid_stream_name("a b"));
        assert!(!is_valid_stream_name("a/b"));
        assert!(!is_valid_stream_name("ä"));
        assert!(!is_valid_stream_name("."));
        assert!(!is_valid_stream_name(".."));
        assert!(is_valid_stream_name("..."));
        for bad in ["", "a b", "é"] {
            let mut payload = Vec::new();
            DeleteStreamRequest { name: bad }.encode_payload(&mut payload);
            let err = Request::decode(11, &payload).unwrap_err();
            assert_eq!(err.code(), crate::ErrorCode::InvalidArgument, "{bad:?}");
        }
    }

    #[test]
    fn settings_are_range_checked() {
        let ok = CreateStreamRequest {
            name: "s",
            shard_count: 1,
            retention_hours: 1,
            limits: Limits::Kinesis,
            max_record_data_bytes: None,
            encryption: EncryptionType::Aes256Gcm,
        };
        let bad = [
            CreateStreamRequest {
                shard_count: 0,
                ..ok
            },
            CreateStreamRequest {
                shard_count: MAX_SHARDS_PER_STREAM + 1,
                ..ok
            },
            CreateStreamRequest {
                retention_hours: 0,
                ..ok
            },
            CreateStreamRequest {
                retention_hours: 8761,
                ..ok
            },
            CreateStreamRequest {
                max_record_data_bytes: Some(0),
                ..ok
            },
            CreateStreamRequest {
                max_record_data_bytes: Some((10 << 20) + 1),
                ..ok
            },
            CreateStreamRequest {
                limits: Limits::Custom {
                    write_bytes_per_s: 1,
                    write_records_per_s: 0,
                    read_bytes_per_s: 1,
                },
                ..ok
            },
            CreateStreamRequest {
                limits: Limits::Custom {
                    write_bytes_per_s: u64::MAX,
                    write_records_per_s: 1,
                    read_bytes_per_s: 1,
                },
                ..ok
            },
            CreateStreamRequest {
                limits: Limits::Custom {
                    write_bytes_per_s: 1,
                    write_records_per_s: 1,
                    read_bytes_per_s: crate::stream::MAX_LIMIT_RATE + 1,
                },
                ..ok
            },
        ];
        for req in bad {
            let mut payload = Vec::new();
            req.encode_payload(&mut payload);
            let err = Request::decode(10, &payload).unwrap_err();
            assert_eq!(err.code(), crate::ErrorCode::InvalidArgument, "{req:?}");
        }
        let mut payload = Vec::new();
        ListStreamsRequest {
            exclusive_start_name: None,
            limit: 0,
        }
        .encode_payload(&mut payload);
        assert!(Request::decode(12, &payload).is_err());
    }

    #[test]
    fn shard_lookup() {
        let d = description();
        assert_eq!(d.shard_for(0).map(|s| s.id), Some(0));
        assert_eq!(d.shard_for(u128::MAX).map(|s| s.id), Some(1));
    }

    fn arb_limits() -> impl Strategy<Value = Limits> {
        prop_oneof![
            Just(Limits::Kinesis),
            Just(Limits::Off),
            (1..=MAX_LIMIT_RATE, 1..=MAX_LIMIT_RATE, 1..=MAX_LIMIT_RATE).prop_map(|(a, b, c)| {
                Limits::Custom {
                    write_bytes_per_s: a,
                    write_records_per_s: b,
                    read_bytes_per_s: c,
                }
            }),
        ]
    }

    fn arb_shard() -> impl Strategy<Value = ShardDescription> {
        (
            any::<u32>(),
            0u8..3,
            any::<(u128, u128)>(),
            any::<(Option<u32>, Option<u32>)>(),
            any::<u16>(),
            any::<(Option<u64>, Option<u64>)>(),
            any::<(u64, u64, u64)>(),
        )
            .prop_map(
                |(
                    id,
                    state,
                    (a, b),
                    (parent, adjacent_parent),
                    core,
                    (first_seq, last_seq),
                    (records, bytes, disk_bytes),
                )| {
                    ShardDescription {
                        id,
                        state: match state {
                            0 => ShardState::Open,
                            1 => ShardState::Closed,
                            _ => ShardState::Damaged,
                        },
                        hash_key_start: a.min(b),
                        hash_key_end: a.max(b),
                        parent,
                        adjacent_parent,
                        core,
                        first_seq,
                        last_seq,
                        records,
                        bytes,
                        disk_bytes,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn create_requests_round_trip(
            name in "[a-zA-Z0-9_.-]{1,128}".prop_filter("valid", |n| is_valid_stream_name(n)),
            shard_count in 1..=MAX_SHARDS_PER_STREAM,
            retention_hours in MIN_RETENTION_HOURS..=MAX_RETENTION_HOURS,
            limits in arb_limits(),
            max_record_data_bytes in proptest::option::of(1..=MAX_RECORD_DATA_BYTES_CEILING as u32),
            encrypted: bool,
        ) {
            let encryption = EncryptionType::ALL[usize::from(encrypted)];
            check_create(CreateStreamRequest {
                name: &name, shard_count, retention_hours, limits, max_record_data_bytes, encryption,
            });
        }

        #[test]
        fn descriptions_round_trip(
            name in "[a-zA-Z0-9_.-]{1,20}".prop_filter("valid", |n| is_valid_stream_name(n)),
            stream_id: u64,
            status in 0u8..4,
            retention_hours in MIN_RETENTION_HOURS..=MAX_RETENTION_HOURS,
            limits in arb_limits(),
            max_record_data_bytes in 1..=MAX_RECORD_DATA_BYTES_CEILING as u32,
            created_ms: i64,
            shards in proptest::collection::vec(arb_shard(), 0..8),
            on_demand: bool,
            map_version: u64,
            key_epochs: u32,
            master_key_id: Option<u32>,
        ) {
            // Consistent as a server sends it: a master key exactly when encrypting.
            let (encryption, key_epochs) = match master_key_id {
                Some(_) => (EncryptionType::Aes256Gcm, key_epochs.max(1)),
                None => (EncryptionType::None, key_epochs),
            };
            let status = [
                StreamStatus::Creating,
                StreamStatus::Active,
                StreamStatus::Updating,
                StreamStatus::Deleting,
            ][status as usize];
            check_description(StreamDescription {
                name: &name, stream_id, status, retention_hours, limits, max_record_data_bytes, created_ms, shards,
                mode: if on_demand { CapacityMode::OnDemand } else { CapacityMode::Provisioned }, map_version, last_scaling: None, shard_level_metrics: false,
                encryption, key_epochs, master_key_id,
                max_write_mib_per_s: on_demand.then_some(200),
            });
        }

        #[test]
        fn lists_round_trip(names in proptest::collection::vec("[a-z0-9]{1,12}", 0..30), has_more: bool) {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            check_response(&Response::ListStreams(ListStreamsResponse { names, has_more }));
        }
    }
}
