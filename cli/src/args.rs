//! Command-line syntax (SPEC §5) and the parsers of its value formats.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use spate_client::{Limits, Position};

/// Spate: a thread-per-core streaming ingestion engine.
#[derive(Debug, Parser)]
#[command(name = "spate", version)]
pub struct Cli {
    /// The server a client command talks to.
    #[arg(
        long,
        global = true,
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:7400"
    )]
    pub server: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the engine until SIGTERM or SIGINT.
    Serve(ServeArgs),
    /// Create, list, describe and delete streams.
    Stream {
        #[command(subcommand)]
        command: StreamCommand,
    },
    /// Put records: DATA as one record, or one record per line of standard input. Prints
    /// `SHARD_ID SEQUENCE_NUMBER` per acknowledged record, in input order.
    Put(PutArgs),
    /// Read a shard: one JSON object per record per line.
    Read(ReadArgs),
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
}

#[derive(Debug, Subcommand)]
pub enum StreamCommand {
    /// Create a stream.
    Create {
        name: String,
        /// Number of shards (1..=65536).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=i64::from(spate_protocol::stream::MAX_SHARDS_PER_STREAM)))]
        shards: u32,
        /// Retention window in hours (1..=8760).
        #[arg(long, value_name = "HOURS", default_value_t = 24, value_parser = hours_range())]
        retention: u32,
        /// Per-shard throughput limits.
        #[arg(long, value_enum, default_value_t = LimitsArg::Kinesis)]
        limits: LimitsArg,
        /// Per-record data limit in bytes (default 1 MiB = 1048576, at most 10 MiB = 10485760).
        #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u32).range(1..=spate_protocol::batch::MAX_RECORD_DATA_BYTES_CEILING as i64))]
        max_record_bytes: Option<u32>,
    },
    /// Print every stream name, one a line.
    List {
        /// Print a JSON array of names instead.
        #[arg(long)]
        json: bool,
    },
    /// Print a stream's settings and shards as one JSON object.
    Describe { name: String },
    /// Delete a stream and all its records.
    Delete { name: String },
    /// Change a stream's retention window.
    SetRetention {
        name: String,
        /// New retention window in hours (1..=8760); records older than it are deleted.
        #[arg(long, value_name = "HOURS", value_parser = hours_range())]
        hours: u32,
    },
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
pub struct PutArgs {
    /// Stream name.
    pub name: String,
    /// Partition key of every record.
    #[arg(long)]
    pub key: String,
    /// The record's data; without it, each line of standard input is a record.
    pub data: Option<String>,
}

#[derive(Debug, Args)]
pub struct ReadArgs {
    /// Stream name.
    pub name: String,
    /// Shard id.
    #[arg(long, value_name = "ID")]
    pub shard: u32,
    /// Where to start: oldest, latest, at:SEQ, after:SEQ or time:RFC3339 (time:YYYY-MM-DD: that
    /// day's midnight UTC).
    #[arg(long, value_name = "POSITION", value_parser = parse_from)]
    pub from: Position,
    /// Stop after this many records.
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// Keep waiting for new records at the tip instead of stopping there.
    #[arg(long)]
    pub follow: bool,
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
        assert_eq!(cli.server, "h:1");
        assert!(matches!(
            cli.command,
            Command::Stream {
                command: StreamCommand::Create {
                    shards: 3,
                    retention: 24,
                    limits: LimitsArg::Off,
                    ..
                }
            }
        ));
        let cli =
            Cli::try_parse_from(["spate", "read", "s", "--shard", "1", "--from", "at:5"]).unwrap();
        assert_eq!(cli.server, "127.0.0.1:7400");
        let Command::Read(r) = cli.command else {
            panic!()
        };
        assert_eq!(r.from, Position::AtSequenceNumber { seq: 5 });
        assert!(!r.follow && r.limit.is_none());
        let cli =
            Cli::try_parse_from(["spate", "serve", "--cores", "0-1", "--listen", "x:1"]).unwrap();
        let Command::Serve(s) = cli.command else {
            panic!()
        };
        assert_eq!(s.cores, Some(CoreList(vec![0, 1])));
        assert!(
            Cli::try_parse_from(["spate", "read", "s", "--shard", "1", "--from", "nope"]).is_err()
        );
    }
}
