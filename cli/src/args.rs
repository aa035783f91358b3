//! Command-line syntax (SPEC §5) and the parsers of its value formats.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use spate_client::{ClientCert, Credentials, EncryptionType, Limits, Pem, Position, TlsOptions};

/// Spate: a thread-per-core streaming ingestion engine.
#[derive(Debug, Parser)]
#[command(name = "spate", version)]
pub struct Cli {
    /// The server a client command talks to [default: 127.0.0.1:7400].
    #[arg(long, value_name = "HOST:PORT")]
    pub server: Option<String>,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub creds: CredArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// A secret file's secret, and the access key id it names if any: either the secret on its
/// first line, or the JSON object `auth principal create` prints and the server writes to
/// `root.credentials` (`access_key_id` and `secret`).
fn secret_file_contents(text: &str) -> Result<(String, Option<String>), String> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(trimmed)
            .map_err(|e| format!("not a JSON credentials object: {e}"))?;
        let field = |name: &str| v.get(name).and_then(|f| f.as_str()).map(str::to_owned);
        let secret = field("secret").ok_or("a JSON credentials object without \"secret\"")?;
        return Ok((secret, field("access_key_id")));
    }
    let first = text.lines().next().unwrap_or("").trim().to_string();
    Ok((first, None))
}

/// Who a client command authenticates as (before the command).
#[derive(Debug, Clone, Default, Args)]
pub struct CredArgs {
    /// The principal's access key id [default: SPATE_ACCESS_KEY_ID].
    #[arg(long, value_name = "ID")]
    pub access_key_id: Option<String>,
    /// A file holding the principal's secret (its first line), or the JSON credentials
    /// `auth principal create` prints (root.credentials too), which name the access key id
    /// [default: the secret itself in SPATE_SECRET].
    #[arg(long, value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
}

/// The credential flags after the command: the same as [`CredArgs`], global below it.
#[derive(Debug, Clone, Default, Args)]
pub struct CredAfterArgs {
    /// The principal's access key id [default: SPATE_ACCESS_KEY_ID].
    #[arg(long = "access-key-id", value_name = "ID", global = true)]
    pub access_key_id: Option<String>,
    /// A file holding the principal's secret (its first line), or the JSON credentials
    /// `auth principal create` prints (root.credentials too), which name the access key id
    /// [default: the secret itself in SPATE_SECRET].
    #[arg(long = "secret-file", value_name = "FILE", global = true)]
    pub secret_file: Option<PathBuf>,
}

/// Where a client command connects when neither `--server` says.
pub const DEFAULT_SERVER: &str = "127.0.0.1:7400";

/// `--server` and the TLS flags, also accepted after the command (`spate stream list
/// --server H:P --tls`); not global flags, so that `serve --help` does not list them.
#[derive(Debug, Clone, Default, Args)]
pub struct ServerArg {
    /// The server to talk to [default: 127.0.0.1:7400].
    // Global below its command: `spate stream list --server H:P` as well.
    #[arg(long = "server", value_name = "HOST:PORT", global = true)]
    pub server: Option<String>,
    #[command(flatten)]
    pub tls: TlsAfterArgs,
    #[command(flatten)]
    pub creds: CredAfterArgs,
}

/// How a client command speaks TLS (before the command).
#[derive(Debug, Clone, Default, Args)]
pub struct TlsArgs {
    /// Speak TLS to the server (also SPATE_TLS=1).
    #[arg(long)]
    pub tls: bool,
    /// CA certificates (PEM) the server's certificate must chain to; implies --tls
    /// [default: SPATE_CA, else the system's bundle].
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Client certificate chain (PEM) for a server that requires one; implies --tls.
    #[arg(long, value_name = "FILE", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// The name the server's certificate must carry [default: the host of --server].
    #[arg(long, value_name = "NAME")]
    pub tls_server_name: Option<String>,
}

/// The TLS flags after the command: the same as [`TlsArgs`], global below it.
#[derive(Debug, Clone, Default, Args)]
pub struct TlsAfterArgs {
    /// Speak TLS to the server (also SPATE_TLS=1).
    #[arg(long = "tls", global = true)]
    pub tls: bool,
    /// CA certificates (PEM) the server's certificate must chain to; implies --tls
    /// [default: SPATE_CA, else the system's bundle].
    #[arg(long = "ca", value_name = "FILE", global = true)]
    pub ca: Option<PathBuf>,
    /// Client certificate chain (PEM) for a server that requires one; implies --tls.
    #[arg(
        long = "client-cert",
        value_name = "FILE",
        global = true,
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long = "client-key",
        value_name = "FILE",
        global = true,
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,
    /// The name the server's certificate must carry [default: the host of --server].
    #[arg(long = "tls-server-name", value_name = "NAME", global = true)]
    pub tls_server_name: Option<String>,
}

impl Cli {
    /// The flags given after a client command (`serve` takes none).
    fn after(&self) -> Option<&ServerArg> {
        match &self.command {
            Command::Serve(_) => None,
            Command::Stream { server, .. }
            | Command::Put { server, .. }
            | Command::Read { server, .. }
            | Command::Top { server, .. }
            | Command::Consumer { server, .. }
            | Command::Subscribe { server, .. }
            | Command::Consume { server, .. }
            | Command::Group { server, .. }
            | Command::Auth { server, .. }
            | Command::Keys { server, .. }
            | Command::Audit { server, .. } => Some(server),
        }
    }

    /// What clap cannot say of a command line: flags that parse alone but not together
    /// (a command-line error, exit status 2, before anything is sent).
    pub fn check(&self) -> Result<(), String> {
        let by_sequence = |from: &Position| {
            matches!(
                from,
                Position::AtSequenceNumber { .. } | Position::AfterSequenceNumber { .. }
            )
        };
        match &self.command {
            Command::Read { args, .. } if args.shard.is_none() && by_sequence(&args.from) => {
                Err("--from at:SEQ and after:SEQ need --shard: sequence numbers are per shard".into())
            }
            Command::Consume { args, .. } if by_sequence(&args.from) => Err(
                "a group starts at --from oldest, latest or time:RFC3339 (its checkpoints say where each shard goes on)"
                    .into(),
            ),
            _ => Ok(()),
        }
    }

    /// The server a client command talks to: the flag after the command, else the one
    /// before it, else the default.
    pub fn server(&self) -> String {
        self.after()
            .and_then(|a| a.server.clone())
            .or_else(|| self.server.clone())
            .unwrap_or_else(|| DEFAULT_SERVER.to_string())
    }

    /// TLS for a client command, `None` for plaintext: the flags after the command, then
    /// those before it, then the environment (`SPATE_TLS=1` turns TLS on, `SPATE_CA` names
    /// its CA file unless `--ca` does). `--ca` and `--client-cert` imply `--tls`.
    pub fn tls(&self) -> Option<TlsOptions> {
        self.tls_with_env(|name| std::env::var(name).ok())
    }

    /// Who a client command authenticates as: `--access-key-id` and `--secret-file` (after
    /// the command, then before it), else SPATE_ACCESS_KEY_ID and SPATE_SECRET; `None`:
    /// unauthenticated.
    pub fn credentials(&self) -> Result<Option<Credentials>, String> {
        let after = self.after().map(|a| a.creds.clone()).unwrap_or_default();
        let flag_id = after
            .access_key_id
            .or_else(|| self.creds.access_key_id.clone());
        let (secret, file_id) = match after.secret_file.or_else(|| self.creds.secret_file.clone()) {
            Some(file) => {
                let text = std::fs::read_to_string(&file)
                    .map_err(|e| format!("cannot read the secret file {}: {e}", file.display()))?;
                let (secret, id) = secret_file_contents(&text)
                    .map_err(|why| format!("the secret file {}: {why}", file.display()))?;
                (Some(secret), id)
            }
            None => (std::env::var("SPATE_SECRET").ok(), None),
        };
        // The flag, then the credentials file's own id, then the environment.
        let id = flag_id
            .or(file_id)
            .or_else(|| std::env::var("SPATE_ACCESS_KEY_ID").ok());
        match (id, secret) {
            (Some(id), Some(secret)) if !secret.is_empty() => {
                Ok(Some(Credentials::new(id, secret)))
            }
            (Some(_), _) => {
                Err("--access-key-id needs a secret: --secret-file FILE, or the secret itself in SPATE_SECRET".into())
            }
            (None, Some(_)) if self.creds.secret_file.is_some() => {
                Err("--secret-file needs --access-key-id (or SPATE_ACCESS_KEY_ID)".into())
            }
            _ => Ok(None),
        }
    }

    fn tls_with_env(&self, env: impl Fn(&str) -> Option<String>) -> Option<TlsOptions> {
        let before = &self.tls;
        let after = self.after().map(|a| a.tls.clone()).unwrap_or_default();
        let ca = after.ca.or_else(|| before.ca.clone());
        let (cert, key) = match (&after.client_cert, &after.client_key) {
            (Some(c), Some(k)) => (Some(c.clone()), Some(k.clone())),
            _ => (before.client_cert.clone(), before.client_key.clone()),
        };
        let env_on = env("SPATE_TLS").is_some_and(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        });
        let on = after.tls || before.tls || ca.is_some() || cert.is_some() || env_on;
        if !on {
            return None;
        }
        let ca = ca.or_else(|| env("SPATE_CA").filter(|v| !v.is_empty()).map(PathBuf::from));
        Some(TlsOptions {
            ca: ca.map(Pem::File),
            server_name: after
                .tls_server_name
                .or_else(|| before.tls_server_name.clone()),
            client_cert: cert.zip(key).map(|(chain, key)| ClientCert {
                chain: Pem::File(chain),
                key: Pem::File(key),
            }),
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the engine until SIGTERM or SIGINT.
    Serve(ServeArgs),
    /// Create, list, describe, wait for, change and delete streams.
    Stream {
        #[command(subcommand)]
        command: StreamCommand,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Put records: DATA as one record, else one per line of standard input (or per
    /// `--delimiter`, or per `--file`). Prints `SHARD_ID SEQUENCE_NUMBER` per acknowledged
    /// record, in input order.
    Put {
        #[command(flatten)]
        args: PutArgs,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Read a stream (every shard, parents before children) or one shard: one JSON object
    /// per record per line, or the data alone (`--format text|raw`).
    Read {
        #[command(flatten)]
        args: ReadArgs,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Register, list, describe and deregister a stream's push consumers (each with its own
    /// read allowance per shard).
    Consumer {
        #[command(subcommand)]
        command: ConsumerCommand,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Records of one shard pushed to a registered consumer as they become durable, printed
    /// as `read` prints them; goes on until --limit records or the shard's end.
    Subscribe {
        #[command(flatten)]
        args: SubscribeArgs,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Read a stream as a member of a consumer group: the server leases shards to the
    /// group's members and keeps the group's checkpoints; prints records as `read` does and
    /// checkpoints each batch once printed; goes on until --limit records.
    Consume {
        #[command(flatten)]
        args: ConsumeArgs,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Consumer groups: describe (members, leases, checkpoints, lag), list, delete.
    Group {
        #[command(subcommand)]
        command: GroupCommand,
        #[command(flatten)]
        server: ServerArg,
    },
    /// A live view of the server's streams (rates, throttling, iterator age, latency) and
    /// engine, from its metrics endpoint.
    Top {
        #[command(flatten)]
        args: TopArgs,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Principals (who may connect) and their policies (what they may do).
    Auth {
        #[command(subcommand)]
        command: AuthCommand,
        #[command(flatten)]
        server: ServerArg,
    },
    /// The audit trail: its newest lines from the server, or a check of its files.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
        #[command(flatten)]
        server: ServerArg,
    },
    /// The keys of encryption at rest: rotate the data keys of every encrypted stream.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
        #[command(flatten)]
        server: ServerArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Re-read the server's key file and move to its current master key (the highest id:
    /// append a line for a new one first): every data key is re-wrapped under it (older
    /// master keys may then be removed from the file) and every encrypting stream gets a
    /// new data key. Prints {"master_key_id": N, "streams": M}.
    Rotate,
}

#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Create, list, enable, disable and delete principals.
    Principal {
        #[command(subcommand)]
        command: PrincipalCommand,
    },
    /// Put, get and delete a principal's named policies (IAM-like JSON documents).
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum PrincipalCommand {
    /// Create a principal; prints its name, access key id and secret as JSON (the secret
    /// is shown this once). It may do nothing until a policy is put.
    Create { name: String },
    /// Every principal (without secrets), as a JSON array.
    List,
    /// Let a disabled principal authenticate and act again.
    Enable { name: String },
    /// Refuse the principal: it cannot authenticate, and its open connections are denied
    /// everything.
    Disable { name: String },
    /// Delete a principal and its policies.
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Attach a policy document to PRINCIPAL as POLICY (replacing one of that name):
    /// {"Statement":[{"Effect":"Allow","Action":["spate:PutRecords"],"Resource":["clicks-*"]}]}
    Put {
        principal: String,
        policy: String,
        /// The document itself.
        #[arg(
            long,
            value_name = "JSON",
            conflicts_with = "file",
            required_unless_present = "file"
        )]
        document: Option<String>,
        /// A file holding the document ("-": standard input).
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
    },
    /// Print a policy document.
    Get { principal: String, policy: String },
    /// Remove a policy.
    Delete { principal: String, policy: String },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Print the newest lines of the audit trail (JSON, one per line); with --follow, keep
    /// printing new ones.
    Tail {
        /// How many of the newest lines to start with.
        #[arg(long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
        lines: u32,
        /// Keep printing new lines as the server writes them.
        #[arg(long)]
        follow: bool,
    },
    /// Check the audit files of a data directory (offline): every line's hash and the
    /// chain across lines and files; prints a JSON summary, exits 1 on damage.
    Verify {
        /// The server's data directory (its audit files are in `audit/` there).
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConsumerCommand {
    /// Register CONSUMER on stream NAME; prints its description as JSON.
    Register {
        /// Stream name.
        name: String,
        /// Consumer name (1..=128 characters of [a-zA-Z0-9_.-]).
        consumer: String,
    },
    /// The stream's consumers, as a JSON array.
    List {
        /// Stream name.
        name: String,
    },
    /// One consumer, as JSON.
    Describe {
        /// Stream name.
        name: String,
        /// Consumer name.
        consumer: String,
    },
    /// Remove CONSUMER; its subscriptions end.
    Deregister {
        /// Stream name.
        name: String,
        /// Consumer name.
        consumer: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// A group's members, leases, checkpoints and lag per shard, as one JSON object.
    Describe {
        /// Stream name.
        name: String,
        /// Consumer group name.
        group: String,
    },
    /// The stream's groups, one per line.
    List {
        /// Stream name.
        name: String,
    },
    /// Remove a group and its checkpoints.
    Delete {
        /// Stream name.
        name: String,
        /// Consumer group name.
        group: String,
    },
}

#[derive(Debug, Args)]
pub struct SubscribeArgs {
    /// Stream name.
    pub name: String,
    /// The registered consumer to read as.
    #[arg(long, value_name = "CONSUMER")]
    pub consumer: String,
    /// The shard to subscribe to.
    #[arg(long, value_name = "ID")]
    pub shard: u32,
    /// Where to start: oldest, latest, at:SEQ, after:SEQ or time:RFC3339.
    #[arg(long, value_name = "POSITION", value_parser = parse_from, default_value = "oldest")]
    pub from: Position,
    /// Stop after this many records.
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    pub format: Format,
    /// What follows each record with --format raw (escapes as for put).
    #[arg(long, value_name = "DELIMITER", value_parser = parse_delimiter, default_value = "\\n")]
    pub delimiter: Delimiter,
}

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// Stream name.
    pub name: String,
    /// The consumer group to join (created at --from if it does not exist).
    #[arg(long, value_name = "GROUP")]
    pub group: String,
    /// Where a new group starts: oldest, latest or time:RFC3339 (an existing group goes on
    /// after its checkpoints).
    #[arg(long, value_name = "POSITION", value_parser = parse_from, default_value = "oldest")]
    pub from: Position,
    /// This worker's id in the group (default: host, pid and a random suffix).
    #[arg(long, value_name = "ID")]
    pub worker: Option<String>,
    /// Stop after this many records (checkpointed), and leave the group.
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    #[arg(long, value_enum, default_value_t = Format::Json)]
    pub format: Format,
    #[arg(long, value_name = "DELIMITER", value_parser = parse_delimiter, default_value = "\\n")]
    pub delimiter: Delimiter,
}

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Print one frame (rates over one interval) and exit, without terminal control codes.
    #[arg(long)]
    pub once: bool,
    /// Seconds between refreshes.
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    pub interval: f64,
    /// The metrics endpoint to read (default: the one the server advertises).
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics: Option<String>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Directory holding the streams (overrides the config file).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to accept clients on (overrides the config file).
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<String>,
    /// CPUs to run engine cores on, e.g. `0-3,6` (overrides the config file).
    #[arg(long, value_name = "LIST", value_parser = parse_cores)]
    pub cores: Option<CoreList>,
    /// TOML configuration file; keys it leaves out keep their defaults.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where to answer `GET /metrics` (Prometheus text format); "off" for nowhere
    /// (overrides the config file; default 127.0.0.1:7480).
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_listen: Option<String>,
    /// PEM certificate chain (the server's first) to speak TLS with, with --tls-key: every
    /// listener and the metrics endpoint then speak TLS only (overrides the config file).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's PEM private key.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Mutual TLS: clients must present a certificate signed by a CA in FILE (PEM).
    #[arg(long, value_name = "FILE")]
    pub client_ca: Option<PathBuf>,
    /// Refuse to start without a TLS certificate (the config file's `plaintext = false`).
    #[arg(long)]
    pub tls_only: bool,
    /// Authentication and authorization (the config file's `auth`): `on` answers only
    /// authenticated principals, as their policies allow (default off).
    #[arg(long, value_enum, value_name = "on|off")]
    pub auth: Option<OnOff>,
    /// Master keys for encryption at rest, one per line `ID BASE64-OF-32-BYTES`, the
    /// highest id current (chmod 600); needed to create, write or read encrypted streams
    /// (overrides the config file's `key_file`).
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Log lines on standard error as text or as one JSON object each (RUST_LOG filters).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum StreamCommand {
    /// Create a stream.
    Create {
        /// Stream name.
        name: String,
        /// Number of shards (1..=65536; the server's `max_shards_per_stream` allows 10,000
        /// by default); with `--mode on-demand`, 4 unless given.
        #[arg(long, value_name = "N", required_unless_present = "mode", value_parser = clap::value_parser!(u32).range(1..=i64::from(spate_protocol::stream::MAX_SHARDS_PER_STREAM)))]
        shards: Option<u32>,
        /// Capacity mode: provisioned (the shards you choose) or on-demand (the engine
        /// splits and merges from the write rate it sees; starts at 4 shards).
        #[arg(long, value_enum)]
        mode: Option<ModeArg>,
        /// On-demand: the most write capacity the stream may scale to, in MiB/s (default:
        /// the server's `on_demand_max_write_mib_per_s`, 200).
        #[arg(long, value_name = "MIB", requires = "mode", value_parser = clap::value_parser!(u32).range(4..=1_000_000))]
        max_write_mib: Option<u32>,
        /// Retention window in hours (1..=8760).
        #[arg(long, value_name = "HOURS", default_value_t = 24, value_parser = hours_range())]
        retention: u32,
        /// Per-shard throughput limits.
        #[arg(long, value_enum, default_value_t = LimitsArg::Kinesis)]
        limits: LimitsArg,
        /// Per-record data limit in bytes (default 1 MiB = 1048576, at most 10 MiB = 10485760).
        #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u32).range(1..=spate_protocol::batch::MAX_RECORD_DATA_BYTES_CEILING as i64))]
        max_record_bytes: Option<u32>,
        /// Encryption at rest: aes-256-gcm seals the records under a data key of the
        /// stream, wrapped by a master key of the server (which needs --key-file).
        #[arg(long, value_name = "TYPE", default_value = "none", value_parser = encryption_parser(&["none", "aes-256-gcm"]))]
        encryption: EncryptionType,
        /// Wait until the stream is ACTIVE (the server answers a big create while its shards
        /// are still being made, with status CREATING).
        #[arg(long)]
        wait: bool,
    },
    /// Wait until a stream is ACTIVE, showing progress; fails if it disappears.
    Wait {
        /// Stream name.
        name: String,
        /// Give up after this many seconds (0: never).
        #[arg(long, value_name = "SECS", default_value_t = 600)]
        timeout: u64,
    },
    /// Print every stream name, one a line.
    List {
        /// Print a JSON array of names instead.
        #[arg(long)]
        json: bool,
    },
    /// Print a stream's settings and shards as one JSON object.
    Describe {
        /// Stream name.
        name: String,
    },
    /// Delete a stream and all its records.
    Delete {
        /// Stream name.
        name: String,
    },
    /// Change a stream's retention window.
    SetRetention {
        /// Stream name.
        name: String,
        /// The new retention window in hours (1..=8760); records older than it are deleted.
        #[arg(long, value_name = "HOURS", value_parser = hours_range())]
        hours: u32,
    },
    /// Split an open shard in two at a hash key (Kinesis' SplitShard); the shard closes and
    /// stays readable until retention removes its records. Provisioned streams only.
    Split {
        /// Stream name.
        name: String,
        /// The open shard to split.
        #[arg(long, value_name = "ID")]
        shard: u32,
        /// First hash key of the second new shard (decimal, above the shard's first key,
        /// at most its last); default: the middle of its range.
        #[arg(long, value_name = "HASH_KEY")]
        at: Option<u128>,
    },
    /// Merge two open shards whose hash-key ranges touch (Kinesis' MergeShards).
    /// Provisioned streams only.
    Merge {
        /// Stream name.
        name: String,
        /// The shard to merge (the new shard's parent).
        #[arg(long, value_name = "ID")]
        shard: u32,
        /// The adjacent shard (the new shard's adjacent parent).
        #[arg(long = "with", value_name = "ID")]
        with: u32,
    },
    /// Switch a stream between provisioned and on-demand capacity (Kinesis'
    /// UpdateStreamMode); on-demand brings it to at least 4 shards.
    UpdateMode {
        /// Stream name.
        name: String,
        #[arg(value_enum)]
        mode: ModeArg,
        /// On-demand: the most write capacity the stream may scale to, in MiB/s.
        #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u32).range(4..=1_000_000))]
        max_write_mib: Option<u32>,
    },
    /// Export the stream's metrics per shard too (Kinesis' enhanced shard-level
    /// monitoring), or stop: `spate top` then shows the busiest shards.
    ShardMetrics {
        /// Stream name.
        name: String,
        #[arg(value_enum)]
        state: OnOff,
    },
    /// Encrypt the records written to a stream from now on (Kinesis'
    /// StartStreamEncryption); records already stored stay as they are. The server needs
    /// master keys (`serve --key-file`).
    StartEncryption {
        /// Stream name.
        name: String,
        /// The encryption to start.
        #[arg(long, value_name = "TYPE", default_value = "aes-256-gcm", value_parser = encryption_parser(&["aes-256-gcm"]))]
        encryption: EncryptionType,
    },
    /// Store the records written to a stream from now on in the clear (Kinesis'
    /// StopStreamEncryption); sealed records stay readable while their keys are kept.
    StopEncryption {
        /// Stream name.
        name: String,
    },
    /// Change the number of open shards, with even hash-key ranges (Kinesis'
    /// UpdateShardCount, uniform scaling), by splits and merges. Provisioned streams only.
    Scale {
        /// Stream name.
        name: String,
        /// The open-shard count afterwards (1..=65536; the server's `max_shards_per_stream`
        /// allows 10,000 by default).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=i64::from(spate_protocol::stream::MAX_SHARDS_PER_STREAM)))]
        shards: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    Provisioned,
    OnDemand,
}

impl From<ModeArg> for spate_client::CapacityMode {
    fn from(m: ModeArg) -> spate_client::CapacityMode {
        match m {
            ModeArg::Provisioned => spate_client::CapacityMode::Provisioned,
            ModeArg::OnDemand => spate_client::CapacityMode::OnDemand,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LimitsArg {
    /// Kinesis' per-shard limits (1 MiB/s and 1,000 records/s in, 2 MiB/s out).
    Kinesis,
    /// No limits (benchmarks).
    Off,
}

impl From<LimitsArg> for Limits {
    fn from(l: LimitsArg) -> Limits {
        match l {
            LimitsArg::Kinesis => Limits::Kinesis,
            LimitsArg::Off => Limits::Off,
        }
    }
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("keying").required(true).args(["key", "key_field"])))]
pub struct PutArgs {
    /// Stream name.
    pub name: String,
    /// Partition key of every record.
    #[arg(long)]
    pub key: Option<String>,
    /// Standard input is JSON lines; each line is a record, its partition key the value of
    /// this top-level field (a string or a number).
    #[arg(long, value_name = "FIELD", conflicts_with_all = ["data", "file", "delimiter"])]
    pub key_field: Option<String>,
    /// Records in standard input end with this instead of a newline (escapes: \n, \r,
    /// \t, \0, \\, \xHH); the last one needs none. Without it a record is a line, and a
    /// CR before its newline (a CRLF file's) is not part of it.
    #[arg(long, value_name = "DELIMITER", value_parser = parse_delimiter, conflicts_with_all = ["data", "file"])]
    pub delimiter: Option<Delimiter>,
    /// A file whose whole content is one record; repeat for more records, sent in order.
    #[arg(long, value_name = "FILE", conflicts_with = "data")]
    pub file: Vec<PathBuf>,
    /// Route every record by this hash key (a decimal number below 2^128) instead of the
    /// MD5 of its partition key (Kinesis' ExplicitHashKey); the key is still stored.
    #[arg(long, value_name = "HASH_KEY")]
    pub explicit_hash_key: Option<u128>,
    /// The record's data; without it (and without --file), standard input is read.
    pub data: Option<String>,
}

/// How `read` prints a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One JSON object per line: shard, seq, key, ts_ms, data (base64).
    Json,
    /// The data decoded as UTF-8 (invalid bytes replaced), one record per line.
    Text,
    /// The data's bytes as stored, each record followed by --delimiter.
    Raw,
}

#[derive(Debug, Args)]
pub struct ReadArgs {
    /// Stream name.
    pub name: String,
    /// Read only this shard (default: every shard, parents before children).
    #[arg(long, value_name = "ID")]
    pub shard: Option<u32>,
    /// Where to start: oldest, latest, at:SEQ, after:SEQ (these two need --shard) or
    /// time:RFC3339 (time:YYYY-MM-DD: that day's midnight UTC).
    #[arg(long, value_name = "POSITION", value_parser = parse_from, default_value = "oldest")]
    pub from: Position,
    /// Stop after this many records.
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// Keep waiting for new records at the tip instead of stopping there; survives a server
    /// restart (reconnects and goes on after the last record printed).
    #[arg(long)]
    pub follow: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    pub format: Format,
    /// What follows each record with --format raw (escapes as for put).
    #[arg(long, value_name = "DELIMITER", value_parser = parse_delimiter, default_value = "\\n")]
    pub delimiter: Delimiter,
}

/// The bytes that end a record (put) or follow one (read --format raw).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delimiter(pub Vec<u8>);

/// Parses a delimiter with escapes: `\n`, `\r`, `\t`, `\0`, `\\` and `\xHH`.
pub fn parse_delimiter(text: &str) -> Result<Delimiter, String> {
    let mut out = Vec::new();
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        let e = bytes
            .next()
            .ok_or_else(|| format!("{text:?} ends with a lone backslash"))?;
        out.push(match e {
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'0' => 0,
            b'\\' => b'\\',
            b'x' => {
                let hex: Vec<u8> = bytes.by_ref().take(2).collect();
                std::str::from_utf8(&hex)
                    .ok()
                    .filter(|h| h.len() == 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("\\x in {text:?} needs two hex digits"))?
            }
            other => {
                return Err(format!(
                    "unknown escape \\{} in {text:?} (known: \\n \\r \\t \\0 \\\\ \\xHH)",
                    other as char
                ))
            }
        });
    }
    if out.is_empty() {
        return Err("the delimiter is empty".to_string());
    }
    Ok(Delimiter(out))
}

/// A list of CPU ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreList(pub Vec<usize>);

/// Parses `0-3,6` or `1`: ids and inclusive ranges, comma-separated, each id once.
pub fn parse_cores(text: &str) -> Result<CoreList, String> {
    let mut cores: Vec<usize> = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        let id = |s: &str| {
            s.trim()
                .parse::<usize>()
                .map_err(|_| format!("{s:?} is not a CPU id in core list {text:?}"))
        };
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (id(a)?, id(b)?),
            None => (id(part)?, id(part)?),
        };
        if lo > hi {
            return Err(format!(
                "range {part:?} runs backwards in core list {text:?}"
            ));
        }
        for c in lo..=hi {
            if cores.contains(&c) {
                return Err(format!("CPU {c} appears twice in core list {text:?}"));
            }
            cores.push(c);
        }
    }
    Ok(CoreList(cores))
}

/// An encryption type by its name (`none`, `aes-256-gcm`), one of `names`: listed in the
/// help and in the error for any other.
fn encryption_parser(
    names: &'static [&'static str],
) -> impl clap::builder::TypedValueParser<Value = EncryptionType> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(names).try_map(|name| name.parse::<EncryptionType>())
}

/// Retention hours as the engine takes them, checked before anything is sent.
fn hours_range() -> clap::builder::RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(
        i64::from(spate_protocol::stream::MIN_RETENTION_HOURS)
            ..=i64::from(spate_protocol::stream::MAX_RETENTION_HOURS),
    )
}

/// Parses a start position: `oldest`, `latest`, `at:SEQ`, `after:SEQ`, `time:RFC3339` (or
/// `time:YYYY-MM-DD`, that day's midnight UTC).
pub fn parse_from(text: &str) -> Result<Position, String> {
    let seq = |s: &str| {
        s.parse::<u64>()
            .map_err(|_| format!("{s:?} is not a sequence number"))
    };
    match text {
        "oldest" => return Ok(Position::TrimHorizon),
        "latest" => return Ok(Position::Latest),
        _ => {}
    }
    match text.split_once(':') {
        Some(("at", s)) => Ok(Position::AtSequenceNumber { seq: seq(s)? }),
        Some(("after", s)) => Ok(Position::AfterSequenceNumber { seq: seq(s)? }),
        Some(("time", t)) => Ok(Position::AtTimestamp {
            ts_ms: parse_rfc3339_ms(t)?,
        }),
        _ => Err(format!(
            "{text:?} is not oldest, latest, at:SEQ, after:SEQ or time:RFC3339"
        )),
    }
}

/// Milliseconds since the epoch of an RFC 3339 time such as `2026-11-25T20:00:00Z` or
/// `2026-11-25T21:00:00.250+01:00`, or of a date alone (`2026-11-25`: midnight UTC).
pub fn parse_rfc3339_ms(text: &str) -> Result<i64, String> {
    let date_only = time::format_description::parse_borrowed::<2>("[year]-[month]-[day]")
        .expect("a valid description");
    if let Ok(d) = time::Date::parse(text, &date_only) {
        let t = d.midnight().assume_utc();
        return Ok((t.unix_timestamp_nanos().div_euclid(1_000_000)) as i64);
    }
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|_| {
            format!(
                "{text:?} is not a time: give a date (2026-11-25, midnight UTC) or an RFC 3339 time with a zone (2026-11-25T20:00:00Z, 2026-11-25T21:00:00.250+01:00)"
            )
        })?;
    Ok((t.unix_timestamp_nanos().div_euclid(1_000_000)) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_file_is_a_first_line_or_json_credentials() {
        assert_eq!(
            secret_file_contents("s3cret\nignored\n").unwrap(),
            ("s3cret".to_string(), None)
        );
        let json = r#"{"name":"root","access_key_id":"SPAKROOT","secret":"abc"}"#;
        assert_eq!(
            secret_file_contents(&format!("  {json}\n")).unwrap(),
            ("abc".to_string(), Some("SPAKROOT".to_string()))
        );
        assert!(secret_file_contents(r#"{"access_key_id":"x"}"#)
            .unwrap_err()
            .contains("without \"secret\""));
        assert!(secret_file_contents("{not json")
            .unwrap_err()
            .contains("not a JSON credentials object"));
    }

    #[test]
    fn tls_flags_before_or_after_the_command_and_from_the_environment() {
        let parse = |line: &str| Cli::try_parse_from(line.split_whitespace()).unwrap();
        let no_env = |_: &str| None;
        assert_eq!(parse("spate stream list").tls_with_env(no_env), None);
        let before = parse("spate --tls --ca ca.pem stream list").tls_with_env(no_env);
        assert_eq!(before, Some(TlsOptions::with_ca_file("ca.pem")));
        let after = parse("spate stream list --ca ca.pem").tls_with_env(no_env);
        assert_eq!(
            after, before,
            "--ca implies --tls, and works after the command"
        );
        let nested = parse("spate stream create s --shards 1 --tls --tls-server-name db")
            .tls_with_env(no_env)
            .unwrap();
        assert_eq!(
            (nested.ca, nested.server_name.as_deref()),
            (None, Some("db"))
        );
        let mutual = parse("spate put s --key k --client-cert c.pem --client-key k.pem")
            .tls_with_env(no_env)
            .unwrap();
        assert_eq!(
            mutual.client_cert,
            Some(ClientCert {
                chain: Pem::File("c.pem".into()),
                key: Pem::File("k.pem".into())
            })
        );
        assert!(
            Cli::try_parse_from("spate put s --key k --client-cert c.pem".split_whitespace())
                .is_err()
        );
        let env = |name: &str| match name {
            "SPATE_TLS" => Some("1".to_string()),
            "SPATE_CA" => Some("env-ca.pem".to_string()),
            _ => None,
        };
        assert_eq!(
            parse("spate stream list").tls_with_env(env),
            Some(TlsOptions::with_ca_file("env-ca.pem"))
        );
        assert_eq!(
            parse("spate stream list --ca flag.pem").tls_with_env(env),
            Some(TlsOptions::with_ca_file("flag.pem")),
            "the flag wins over SPATE_CA"
        );
        let ca_only = |name: &str| (name == "SPATE_CA").then(|| "env-ca.pem".to_string());
        assert_eq!(
            parse("spate stream list").tls_with_env(ca_only),
            None,
            "SPATE_CA alone does not turn TLS on"
        );
        let serve =
            parse("spate serve --tls-cert c.pem --tls-key k.pem --client-ca ca.pem --tls-only");
        let Command::Serve(args) = &serve.command else {
            panic!("serve")
        };
        assert_eq!(
            args.tls_cert.as_deref(),
            Some(std::path::Path::new("c.pem"))
        );
        assert!(args.tls_only && args.client_ca.is_some());
        assert_eq!(args.key_file, None);
        assert_eq!(serve.tls_with_env(no_env), None);
    }

    #[test]
    fn encryption_flags_and_commands() {
        let parse = |line: &str| Cli::try_parse_from(line.split_whitespace());
        let create = |line: &str| match parse(line).map(|c| c.command) {
            Ok(Command::Stream {
                command:
                    StreamCommand::Create {
                        encryption, mode, ..
                    },
                ..
            }) => Ok((encryption, mode)),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e),
        };
        assert_eq!(
            create("spate stream create s --shards 2").unwrap(),
            (EncryptionType::None, None),
            "not encrypted unless asked"
        );
        assert_eq!(
            create("spate stream create s --shards 2 --encryption aes-256-gcm").unwrap(),
            (EncryptionType::Aes256Gcm, None)
        );
        assert_eq!(
            create("spate stream create s --mode on-demand --encryption aes-256-gcm").unwrap(),
            (EncryptionType::Aes256Gcm, Some(ModeArg::OnDemand))
        );
        assert_eq!(
            create("spate stream create s --shards 1 --encryption none").unwrap(),
            (EncryptionType::None, None)
        );
        let err = create("spate stream create s --shards 1 --encryption aes").unwrap_err();
        assert!(err.to_string().contains("aes-256-gcm"), "{err}");

        let cli = parse("spate stream start-encryption s").unwrap();
        assert!(matches!(
            cli.command,
            Command::Stream {
                command: StreamCommand::StartEncryption {
                    encryption: EncryptionType::Aes256Gcm,
                    ..
                },
                ..
            }
        ));
        assert!(parse("spate stream start-encryption s --encryption aes-256-gcm").is_ok());
        assert!(
            parse("spate stream start-encryption s --encryption none").is_err(),
            "stop-encryption stops it"
        );
        let cli = parse("spate stream stop-encryption s --server h:6").unwrap();
        assert_eq!(cli.server(), "h:6");
        assert!(matches!(
            cli.command,
            Command::Stream {
                command: StreamCommand::StopEncryption { .. },
                ..
            }
        ));
        assert!(parse("spate stream stop-encryption").is_err(), "a name");

        let cli = parse("spate keys rotate --server h:5").unwrap();
        assert_eq!(cli.server(), "h:5");
        assert!(matches!(
            cli.command,
            Command::Keys {
                command: KeysCommand::Rotate,
                ..
            }
        ));
        assert!(parse("spate keys").is_err(), "a keys subcommand");

        let serve = parse("spate serve --key-file /etc/spate/master.keys").unwrap();
        let Command::Serve(args) = &serve.command else {
            panic!("serve")
        };
        assert_eq!(
            args.key_file.as_deref(),
            Some(std::path::Path::new("/etc/spate/master.keys"))
        );
    }

    #[test]
    fn core_lists() {
        assert_eq!(parse_cores("1").unwrap(), CoreList(vec![1]));
        assert_eq!(parse_cores("0-3,6").unwrap(), CoreList(vec![0, 1, 2, 3, 6]));
        assert_eq!(parse_cores(" 2 , 0 ").unwrap(), CoreList(vec![2, 0]));
        for bad in ["", "a", "3-1", "1,1", "0-2,2", "-1", "1-"] {
            assert!(parse_cores(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn positions() {
        assert_eq!(parse_from("oldest").unwrap(), Position::TrimHorizon);
        assert_eq!(parse_from("latest").unwrap(), Position::Latest);
        assert_eq!(
            parse_from("at:17").unwrap(),
            Position::AtSequenceNumber { seq: 17 }
        );
        assert_eq!(
            parse_from("after:0").unwrap(),
            Position::AfterSequenceNumber { seq: 0 }
        );
        assert_eq!(
            parse_from("time:2026-11-25").unwrap(),
            Position::AtTimestamp {
                ts_ms: 1_795_564_800_000
            }
        );
        assert_eq!(
            parse_from("time:2026-11-25T20:00:00Z").unwrap(),
            Position::AtTimestamp {
                ts_ms: 1_795_636_800_000
            }
        );
        assert_eq!(
            parse_from("time:2026-11-25T21:00:00.250+01:00").unwrap(),
            Position::AtTimestamp {
                ts_ms: 1_795_636_800_250
            }
        );
        assert_eq!(
            parse_rfc3339_ms("1969-12-31T23:59:59.999Z").unwrap(),
            -1,
            "before the epoch rounds down"
        );
        for bad in ["", "first", "at:", "at:-1", "after:x", "time:yesterday"] {
            assert!(parse_from(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_command_line_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "spate", "--server", "h:1", "stream", "create", "s", "--shards", "3", "--limits", "off",
        ])
        .unwrap();
        assert_eq!(cli.server(), "h:1");
        assert!(matches!(
            cli.command,
            Command::Stream {
                command: StreamCommand::Create {
                    shards: Some(3),
                    mode: None,
                    retention: 24,
                    limits: LimitsArg::Off,
                    wait: false,
                    ..
                },
                ..
            }
        ));
        let cli =
            Cli::try_parse_from(["spate", "stream", "create", "s", "--mode", "on-demand"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Stream {
                command: StreamCommand::Create {
                    shards: None,
                    mode: Some(ModeArg::OnDemand),
                    ..
                },
                ..
            }
        ));
        assert!(
            Cli::try_parse_from(["spate", "stream", "create", "s"]).is_err(),
            "a provisioned stream needs --shards"
        );
        let cli =
            Cli::try_parse_from(["spate", "read", "s", "--shard", "1", "--from", "at:5"]).unwrap();
        assert_eq!(cli.server(), DEFAULT_SERVER);
        let Command::Read { args: r, .. } = cli.command else {
            panic!()
        };
        assert_eq!(r.from, Position::AtSequenceNumber { seq: 5 });
        assert_eq!(r.shard, Some(1));
        assert!(!r.follow && r.limit.is_none());
        assert_eq!(
            (r.format, r.delimiter),
            (Format::Json, Delimiter(b"\n".to_vec()))
        );
        // The whole stream, from the oldest record, as text; --server after the command.
        let cli = Cli::try_parse_from([
            "spate", "read", "s", "--follow", "--format", "text", "--server", "h:2",
        ])
        .unwrap();
        assert_eq!(cli.server(), "h:2");
        let Command::Read { args: r, .. } = cli.command else {
            panic!()
        };
        assert_eq!(
            (r.shard, r.from, r.format),
            (None, Position::TrimHorizon, Format::Text)
        );
        let cli =
            Cli::try_parse_from(["spate", "serve", "--cores", "0-1", "--listen", "x:1"]).unwrap();
        let Command::Serve(s) = cli.command else {
            panic!()
        };
        assert_eq!(s.cores, Some(CoreList(vec![0, 1])));
        assert!(
            Cli::try_parse_from(["spate", "read", "s", "--shard", "1", "--from", "nope"]).is_err()
        );
        // After a stream subcommand too.
        let cli = Cli::try_parse_from(["spate", "stream", "list", "--server", "h:3"]).unwrap();
        assert_eq!(cli.server(), "h:3");
        let cli = Cli::try_parse_from(["spate", "stream", "--server", "h:4", "list"]).unwrap();
        assert_eq!(cli.server(), "h:4");
        // serve takes no --server (it is not a client command).
        assert!(Cli::try_parse_from(["spate", "serve", "--server", "h:1"]).is_err());
    }

    #[test]
    fn put_takes_one_keying_and_one_source() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(["spate", "put", "s"].iter().chain(args)).map(|c| match c.command {
                Command::Put { args, .. } => args,
                _ => panic!(),
            })
        };
        let p = parse(&["--key", "k", "--file", "a", "--file", "b"]).unwrap();
        assert_eq!(p.file, vec![PathBuf::from("a"), PathBuf::from("b")]);
        let p = parse(&["--key-field", "user", "--delimiter", "\\0"]);
        assert!(p.is_err(), "--key-field takes JSON lines, not --delimiter");
        let p = parse(&["--key", "k", "--delimiter", "\\0"]).unwrap();
        assert_eq!(p.delimiter, Some(Delimiter(vec![0])));
        assert!(parse(&[]).is_err(), "a key or a key field is needed");
        assert!(parse(&["--key", "k", "--key-field", "f"]).is_err());
        assert!(parse(&["--key", "k", "--file", "a", "DATA"]).is_err());
        assert!(parse(&["--key-field", "f"]).is_ok());
    }

    #[test]
    fn delimiters() {
        let d = |t: &str| parse_delimiter(t).map(|d| d.0);
        assert_eq!(d("\\n").unwrap(), b"\n");
        assert_eq!(d(",").unwrap(), b",");
        assert_eq!(d("\\r\\n").unwrap(), b"\r\n");
        assert_eq!(d("\\x1e").unwrap(), [0x1e]);
        assert_eq!(d("\\\\").unwrap(), b"\\");
        for bad in ["", "\\", "\\q", "\\x1", "\\xzz"] {
            assert!(d(bad).is_err(), "{bad:?}");
        }
    }
}
