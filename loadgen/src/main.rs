//! `spate-loadgen`: the command line around the `spate_loadgen` library.
//!
//! ```text
//! spate-loadgen --server HOST:PORT [--tls [--ca FILE]] --stream NAME
//!               [--create-shards N [--limits kinesis|off] [--encryption none|aes-256-gcm]]
//!               --producers P --rate R --size BYTES --keys K --duration SECS [--consumers C]
//!               [--consumer-mode poll|push|group] [--crash-worker-at SECS] [--cores LIST]
//!               [--json FILE] [--plot FILE] [--verify] [--reshard AT:OP ...]
//!               [--rate-step AT:RATE ...] [--on-demand] [--timeline]
//!               [more options: --help]
//! spate-loadgen bench NAME [--server HOST:PORT] [--tls [--ca FILE]] [--cores LIST] [--out DIR] [--quick]
//!               [--duration SECS] [--shards N] [--rate R] [--catch-up-mib MIB] ...
//! spate-loadgen plot REPORT.json OUT.svg
//! spate-loadgen summarize DIR [--output FILE]
//! ```
//!
//! A run prints one progress line a second on stderr (rates and latencies of the last
//! second, totals so far; `--quiet` drops them), then the summary table on stdout
//! ([`spate_loadgen::Report::summary_table`]: counts, rates, ack and end-to-end latency
//! percentiles in ms, verify, CPU) — on stderr instead with `--json -`, which keeps stdout
//! for the JSON. Warnings and the reason of a failure go to stderr. `--json FILE` writes the
//! report (SPEC §5), `--plot FILE` its latency plot (what `plot` draws from the JSON).
//!
//! Exit status 0 on success; 1 with a one-line reason on stderr when the run could not be
//! done, a record failed (other than by throttling) or `--verify` found a problem; 2 for a
//! malformed command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use spate_client::EncryptionType;
use spate_loadgen::bench::{self, BenchOptions};
use spate_loadgen::cpus::parse_cpu_list;
use spate_loadgen::{
    Api, ConsumerMode, KeyMode, LimitsArg, RateStep, ReshardStep, RunConfig, SizeSpec, TlsConfig,
};

#[derive(Parser, Debug)]
#[command(
    name = "spate-loadgen",
    version,
    about = "Load generator for Spate: open- or closed-loop producers, tip-following consumers, \
             --verify, JSON reports and named benchmark scenarios",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(flatten)]
    run: RunArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a named benchmark scenario (see `bench --list`) and write its JSON.
    Bench(Box<BenchArgs>),
    /// Draw the latency percentiles of a report (or bench result) as an SVG (a run's
    /// `--plot FILE` draws the same without a JSON file).
    Plot { report: PathBuf, out: PathBuf },
    /// Write a markdown section from a directory of bench results and machine limits.
    Summarize {
        dir: PathBuf,
        /// Where to write the markdown (default: DIR/RESULTS.md).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

/// TLS to the server.
#[derive(Args, Debug, Clone, Default)]
struct TlsArgs {
    /// Speak TLS on every connection (the server name is the host of --server).
    #[arg(long)]
    tls: bool,
    /// CA certificates (PEM) the server's certificate must chain to; implies --tls
    /// [default: the system's bundle].
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Authenticate as this principal (with --secret-file) [default: SPATE_ACCESS_KEY_ID].
    #[arg(long, value_name = "ID")]
    access_key_id: Option<String>,
    /// A file holding the principal's secret (its first line) [default: SPATE_SECRET].
    #[arg(long, value_name = "FILE", requires = "access_key_id")]
    secret_file: Option<PathBuf>,
}

impl TlsArgs {
    /// Hands the credentials to every client of this process and of the processes it
    /// starts (benchmarks' runs), as SPATE_ACCESS_KEY_ID and SPATE_SECRET. Called first
    /// thing in `main`, before any thread exists.
    fn export_credentials(&self) -> Result<(), String> {
        let Some(id) = &self.access_key_id else {
            return Ok(());
        };
        let file = self
            .secret_file
            .as_ref()
            .ok_or("--access-key-id needs --secret-file")?;
        let secret = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read the secret file {}: {e}", file.display()))?;
        let secret = secret.lines().next().unwrap_or("").trim().to_string();
        // No other thread exists yet (main calls this before starting any), so nothing
        // reads the environment concurrently.
        std::env::set_var("SPATE_ACCESS_KEY_ID", id);
        std::env::set_var("SPATE_SECRET", secret);
        Ok(())
    }

    fn config(self) -> Option<TlsConfig> {
        (self.tls || self.ca.is_some()).then_some(TlsConfig { ca: self.ca })
    }
}

/// `none` or `aes-256-gcm`, listed in the help and in the error for anything else.
fn encryption_parser() -> impl clap::builder::TypedValueParser<Value = EncryptionType> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(["none", "aes-256-gcm"])
        .try_map(|name| name.parse::<EncryptionType>())
}

#[derive(Args, Debug)]
struct RunArgs {
    /// The server's address.
    #[arg(long, required = true, value_name = "HOST:PORT")]
    server: Option<String>,
    #[command(flatten)]
    tls: TlsArgs,
    /// The stream to write to.
    #[arg(long, required = true, value_name = "NAME")]
    stream: Option<String>,
    /// Create the stream with N shards first (it must not exist yet).
    #[arg(long, value_name = "N")]
    create_shards: Option<u32>,
    /// Limits of a created stream.
    #[arg(long, value_enum, default_value = "kinesis")]
    limits: LimitsArg,
    /// Encryption at rest of a created stream: none, or aes-256-gcm (the server needs
    /// --key-file).
    #[arg(long, value_name = "TYPE", default_value = "none", value_parser = encryption_parser())]
    encryption: EncryptionType,
    /// Delete the created stream after the run.
    #[arg(long)]
    delete_after: bool,
    /// Concurrent producers, each with its own connection.
    #[arg(long, default_value_t = 1, value_name = "P")]
    producers: usize,
    /// Records per second over all producers, due at fixed times (open loop); 0 sends as
    /// fast as acknowledgements allow (closed loop).
    #[arg(long, default_value_t = 0.0, value_name = "R")]
    rate: f64,
    /// Record data size: BYTES, or MIN-MAX for a uniform spread (at least 72).
    #[arg(long, default_value = "1024", value_parser = SizeSpec::parse, value_name = "BYTES")]
    size: SizeSpec,
    /// Client call: `producer` (Producer::send per record, batched per shard by the
    /// client), `producer-callback` (the same, settled by callbacks), `put-records` (one
    /// PutRecords call of every record due so far at a time) or `put-batches` (the same
    /// calls, records generated into their shard's batch).
    #[arg(long, value_enum, default_value = "producer")]
    api: Api,
    /// `--api put-records` and `put-batches`: most records per call.
    #[arg(long, default_value_t = 2000, value_name = "N")]
    call_records: usize,
    /// `--api put-records`: calls each producer keeps in flight at once on its connection
    /// (1: one at a time, each taking every record due meanwhile; more: a record due while
    /// that many are in flight waits for one to come back).
    #[arg(long, default_value_t = 1, value_name = "N")]
    calls_in_flight: usize,
    /// `--api put-batches`, closed loop: build N calls' batches at the start and send them
    /// over and over instead of generating every record (0: generate every record). Measures
    /// the engine's ingest past what one load-generator core can generate; the records
    /// repeat, so it cannot be combined with `--verify` or consumers.
    #[arg(long, default_value_t = 0, value_name = "N")]
    prebuilt_calls: usize,
    /// Distinct partition keys (devices).
    #[arg(long, default_value_t = 1000, value_name = "K")]
    keys: u32,
    /// How producers pick keys: at random, or spread evenly over the shards.
    #[arg(long, value_enum, default_value = "random")]
    key_mode: KeyMode,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    duration: f64,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 0.0, value_name = "SECS")]
    warmup: f64,
    /// Consumers (end-to-end latency): with --consumer-mode poll or push each follows every
    /// shard from the tip; with group they are one consumer group's workers.
    #[arg(long, default_value_t = 0, value_name = "C")]
    consumers: usize,
    /// How the consumers read: `poll` (long-polling GetRecords per shard), `push`
    /// (registered consumers loadgen-0.., each subscribed to every shard), `group` (the
    /// workers of one consumer group, each batch counted once and checkpointed).
    #[arg(long, value_enum, default_value = "poll", value_name = "MODE")]
    consumer_mode: ConsumerMode,
    /// --consumer-mode group: drop the first worker SECS after the start (warm-up
    /// included) without leaving the group, and report how long its shards take to be
    /// read again by the others (`group.failover`).
    #[arg(long, value_name = "SECS")]
    crash_worker_at: Option<f64>,
    /// Closed loop: stop producing once MIB MiB (key and data) were sent; the measured
    /// window ends when the last producer stopped (e.g. to fill a backlog).
    #[arg(long, value_name = "MIB")]
    stop_after_mib: Option<f64>,
    /// Pin the load generator's threads to these CPUs (e.g. 1 or 2-3); default: unpinned.
    #[arg(long, value_parser = parse_cpus, value_name = "LIST")]
    cores: Option<CpuList>,
    /// Write the JSON report to FILE ("-" for stdout; the summary table then goes to stderr).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write the latency-by-percentile plot to FILE (SVG) at the end of the run: the same
    /// picture `spate-loadgen plot REPORT.json FILE` draws, no --json needed.
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// Read every shard back after the run: report lost, duplicated, reordered records.
    #[arg(long)]
    verify: bool,
    /// Producer linger: how long a batch waits for more records.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    linger_ms: u64,
    /// A producer's batch is sent once it holds this many bytes (at most 500 records).
    #[arg(long, default_value_t = 256 << 10, value_name = "BYTES")]
    batch_bytes: usize,
    /// Records a producer may have outstanding.
    #[arg(long, default_value_t = 20_000, value_name = "N")]
    inflight: usize,
    /// Client retries of throttled or busy puts (0: count them as throttled / errors).
    #[arg(long, default_value_t = 0, value_name = "N")]
    retries: u32,
    /// Consumers' long-poll wait.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    read_wait_ms: u32,
    /// Spin instead of sleeping when the next record is due this soon (0: never spin).
    #[arg(long, default_value_t = 1000, value_name = "US")]
    spin_us: u64,
    /// Seed of key, size and padding choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also report this process's CPU use (the engine's pid).
    #[arg(long, value_name = "PID", value_parser = parse_pid)]
    engine_pid: Option<u32>,
    /// Change the shards during the run, AT seconds after it starts (warm-up included):
    /// `AT:count=N` (UpdateShardCount), `AT:split=ID` (at the middle of its range),
    /// `AT:merge=A+B`, or `AT:merge` (the two shards the previous step opened). Repeatable,
    /// in time order; each is timed, with the ack latency around it reported apart.
    #[arg(long, value_parser = ReshardStep::parse, value_name = "AT:OP")]
    reshard: Vec<ReshardStep>,
    /// Open loop: offer RATE records/s from AT seconds after the start (warm-up included)
    /// until the next step. Repeatable, in time order; --rate holds until the first.
    #[arg(long, value_parser = RateStep::parse, value_name = "AT:RATE")]
    rate_step: Vec<RateStep>,
    /// Switch the created stream (--create-shards) to on-demand capacity before the run:
    /// the engine splits and merges its shards from the write rate it sees.
    #[arg(long)]
    on_demand: bool,
    /// Keep one sample a second in the report (`timeline`: due, sent, acked, throttled,
    /// errors, open shards, map version) and every on-demand scaling decision seen
    /// (`scalings`).
    #[arg(long)]
    timeline: bool,
    /// No progress lines on stderr. (A line a second: /s rates and `(1s)` latencies in ms
    /// over the last second, `total` counts since the start, the load generator's CPU.)
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// Scenario name.
    #[arg(required_unless_present = "list")]
    name: Option<String>,
    /// List the scenarios.
    #[arg(long)]
    list: bool,
    #[arg(long, default_value = "127.0.0.1:7400", value_name = "HOST:PORT")]
    server: String,
    #[command(flatten)]
    tls: TlsArgs,
    /// Pin the load generator's threads to these CPUs.
    #[arg(long, value_parser = parse_cpus, value_name = "LIST")]
    cores: Option<CpuList>,
    /// Directory for NAME.json.
    #[arg(long, default_value = "bench-results", value_name = "DIR")]
    out: PathBuf,
    #[arg(long, value_name = "PID", value_parser = parse_pid)]
    engine_pid: Option<u32>,
    /// Override each run's measured seconds.
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// latency-half: take max-1k's rate from this report (default: OUT/max-1k.json, else
    /// measure it first).
    #[arg(long, value_name = "FILE")]
    max_report: Option<PathBuf>,
    /// fan-out: the stream's shards (default 2).
    #[arg(long, value_name = "N")]
    shards: Option<u32>,
    /// fan-out, group-failover: the producers' open-loop rate in records/s (defaults:
    /// 2,000 and 2,000).
    #[arg(long, value_name = "R")]
    rate: Option<f64>,
    /// catch-up: MiB of 1 KiB records in the shard the unlimited consumer reads back
    /// (default 256; the limited run's backlog is what 2 consumers read in --duration).
    #[arg(long, value_name = "MIB")]
    catch_up_mib: Option<f64>,
    /// Tiny runs (about a second each): checks the scenario works, measures nothing.
    #[arg(long)]
    quick: bool,
    /// Encryption at rest of the streams the scenarios create (`aes-256-gcm` needs a server
    /// started with --key-file).
    #[arg(long, value_name = "TYPE", default_value = "none", value_parser = encryption_parser())]
    encryption: EncryptionType,
    #[arg(long, short)]
    quiet: bool,
}

/// A parsed `--cores` list (a newtype, so clap takes the list as one value).
#[derive(Debug, Clone)]
struct CpuList(Vec<usize>);

fn parse_cpus(text: &str) -> Result<CpuList, String> {
    parse_cpu_list(text).map(CpuList)
}

/// `--engine-pid`: a running process (a wrong one gave a report with no engine CPU, silently).
fn parse_pid(text: &str) -> Result<u32, String> {
    let pid: u32 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a process id"))?;
    if !std::path::Path::new(&format!("/proc/{pid}/stat")).exists() {
        return Err(format!("no process {pid} (is the engine running?)"));
    }
    Ok(pid)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .log_internal_errors(false)
        .init();
    let cli = Cli::parse();
    let creds = match &cli.command {
        Some(Command::Bench(b)) => b.tls.export_credentials(),
        _ => cli.run.tls.export_credentials(),
    };
    if let Err(why) = creds {
        eprintln!("spate-loadgen: {why}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        None => run(cli.run),
        Some(Command::Bench(b)) => run_bench(*b),
        Some(Command::Plot { report, out }) => {
            spate_loadgen::plot::plot_file(&report, &out).map_err(|e| e.to_string())
        }
        Some(Command::Summarize { dir, output }) => {
            let output = output.unwrap_or_else(|| dir.join("RESULTS.md"));
            spate_loadgen::summary::summarize_dir(&dir, &output).map_err(|e| e.to_string())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("spate-loadgen: {}", why.replace('\n', " "));
            // A command line that cannot run (flags that parse alone but not together, an
            // unknown scenario, a --json file that cannot be written): status 2, before
            // anything was sent.
            if why.starts_with(USAGE) {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// How a command-line error's message starts (it exits with status 2).
const USAGE: &str = "invalid command line: ";

/// `--json FILE` is writable (opened, created if missing, but not emptied: a report
/// already there stays until this run's replaces it): found out before the run, not after.
fn check_json_path(path: Option<&std::path::Path>) -> Result<(), String> {
    match path {
        Some(p) if p.as_os_str() != "-" => std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(p)
            .map(drop)
            .map_err(|e| format!("{USAGE}cannot write --json {}: {e}", p.display())),
        _ => Ok(()),
    }
}

fn run(a: RunArgs) -> Result<(), String> {
    let cfg = RunConfig {
        create_shards: a.create_shards,
        limits: a.limits,
        encryption: a.encryption,
        delete_after: a.delete_after,
        producers: a.producers,
        rate: a.rate,
        size: a.size,
        api: a.api,
        call_records: a.call_records,
        calls_in_flight: a.calls_in_flight,
        prebuilt_calls: a.prebuilt_calls,
        keys: a.keys,
        key_mode: a.key_mode,
        duration_s: a.duration,
        warmup_s: a.warmup,
        consumers: a.consumers,
        consumer_mode: a.consumer_mode,
        crash_worker_at_s: a.crash_worker_at,
        stop_after_mib: a.stop_after_mib,
        cores: a.cores.map(|c| c.0),
        verify: a.verify,
        linger_ms: a.linger_ms,
        batch_bytes: a.batch_bytes,
        inflight: a.inflight,
        retries: a.retries,
        read_wait_ms: a.read_wait_ms,
        spin_us: a.spin_us,
        seed: a.seed,
        progress: !a.quiet,
        engine_pid: a.engine_pid,
        reshards: a.reshard,
        rate_steps: a.rate_step,
        on_demand: a.on_demand,
        timeline: a.timeline,
        tls: a.tls.config(),
        ..RunConfig::new(
            a.server.expect("clap requires --server"),
            a.stream.expect("clap requires --stream"),
        )
    };
    cfg.validate().map_err(|e| format!("{USAGE}{e}"))?;
    check_json_path(a.json.as_deref())?;
    let report = spate_loadgen::run_blocking(&cfg).map_err(|e| e.to_string())?;
    let json_on_stdout = a.json.as_ref().is_some_and(|p| p.as_os_str() == "-");
    if json_on_stdout {
        eprint!("{}", report.summary_table());
    } else {
        print!("{}", report.summary_table());
    }
    if let Some(path) = &a.json {
        let json = serde_json::to_string_pretty(&report).expect("a report serialises");
        if json_on_stdout {
            println!("{json}");
        } else {
            std::fs::write(path, json + "\n")
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
    }
    let plotted = match &a.plot {
        Some(path) => spate_loadgen::plot::plot_report(&report, path),
        None => Ok(()),
    };
    match (report.failure(), plotted) {
        (Some(why), Err(e)) => {
            eprintln!("spate-loadgen: {e}");
            Err(why)
        }
        (Some(why), Ok(())) => Err(why),
        (None, plotted) => plotted.map_err(|e| e.to_string()),
    }
}

fn run_bench(b: BenchArgs) -> Result<(), String> {
    if b.list {
        for s in bench::SCENARIOS {
            println!("{:<14} {}", s.name, s.description);
        }
        return Ok(());
    }
    let name = b.name.expect("clap requires a name");
    if !bench::SCENARIOS.iter().any(|s| s.name == name) {
        let names: Vec<&str> = bench::SCENARIOS.iter().map(|s| s.name).collect();
        return Err(format!(
            "{USAGE}no scenario {name:?}; scenarios: {}",
            names.join(", ")
        ));
    }
    let opts = BenchOptions {
        server: b.server,
        cores: b.cores.map(|c| c.0),
        out_dir: b.out,
        engine_pid: b.engine_pid,
        duration_s: b.duration,
        max_report: b.max_report,
        shards: b.shards,
        rate: b.rate,
        catch_up_mib: b.catch_up_mib,
        quick: b.quick,
        progress: !b.quiet,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        tls: b.tls.config(),
        encryption: b.encryption,
    };
    let result = bench::run_and_write(&name, &opts).map_err(|e| e.to_string())?;
    for line in result.headline_lines() {
        eprintln!("{line}");
    }
    match result.failure() {
        Some(why) => Err(why),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn spec_command_line_parses() {
        let cli = Cli::try_parse_from(
            "spate-loadgen --server 127.0.0.1:7400 --stream s --create-shards 2 --producers 4 \
             --rate 1000 --size 1024 --keys 100 --duration 5 --consumers 2 --cores 1-2 \
             --json r.json --verify"
                .split_whitespace(),
        )
        .unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.run.cores.unwrap().0, vec![1, 2]);
        assert_eq!(cli.run.create_shards, Some(2));
        assert_eq!(cli.run.encryption, EncryptionType::None, "the default");
        assert!(cli.run.verify);
        assert!(cli.run.reshard.is_empty());
        assert_eq!(cli.run.consumer_mode, ConsumerMode::Poll, "the default");
        let cli = Cli::try_parse_from(
            "spate-loadgen --server h:1 --stream s --consumers 4 --consumer-mode group \
             --crash-worker-at 10"
                .split_whitespace(),
        )
        .unwrap();
        assert_eq!(cli.run.consumer_mode, ConsumerMode::Group);
        assert_eq!(cli.run.crash_worker_at, Some(10.0));
        assert!(Cli::try_parse_from(
            "spate-loadgen --server h:1 --stream s --consumer-mode fan".split_whitespace()
        )
        .is_err());
        let cli = Cli::try_parse_from(
            "spate-loadgen bench catch-up --catch-up-mib 64 --rate 500 --shards 4"
                .split_whitespace(),
        )
        .unwrap();
        match cli.command {
            Some(Command::Bench(b)) => {
                assert_eq!(
                    (b.catch_up_mib, b.rate, b.shards),
                    (Some(64.0), Some(500.0), Some(4))
                );
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from(
            "spate-loadgen --server h:1 --stream s --reshard 3:count=8 --reshard 6:merge=8+9"
                .split_whitespace(),
        )
        .unwrap();
        let steps: Vec<String> = cli.run.reshard.iter().map(|s| s.to_string()).collect();
        assert_eq!(steps, ["3:count=8", "6:merge=8+9"]);
        let cli = Cli::try_parse_from(
            "spate-loadgen --server h:1 --stream s --create-shards 4 --on-demand --rate 1024 \
             --rate-step 10:16384 --rate-step 100:1024 --timeline"
                .split_whitespace(),
        )
        .unwrap();
        let steps: Vec<String> = cli.run.rate_step.iter().map(|s| s.to_string()).collect();
        assert_eq!(steps, ["10:16384", "100:1024"]);
        assert!(cli.run.on_demand && cli.run.timeline);
        let cli = Cli::try_parse_from(
            "spate-loadgen --server h:1 --stream s --create-shards 4 --encryption aes-256-gcm"
                .split_whitespace(),
        )
        .unwrap();
        assert_eq!(cli.run.encryption, EncryptionType::Aes256Gcm);
        assert!(Cli::try_parse_from(
            "spate-loadgen --server h:1 --stream s --create-shards 4 --encryption aes"
                .split_whitespace()
        )
        .is_err());
        assert!(Cli::try_parse_from(
            "spate-loadgen --server h:1 --stream s --rate-step 10".split_whitespace()
        )
        .is_err());
        assert!(Cli::try_parse_from(
            "spate-loadgen --server h:1 --stream s --reshard 3:grow".split_whitespace()
        )
        .is_err());
        let cli =
            Cli::try_parse_from(["spate-loadgen", "bench", "max-1k", "--cores", "1"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Bench(_))));
        let cli =
            Cli::try_parse_from("spate-loadgen bench max-1k --tls --ca ca.pem".split_whitespace())
                .unwrap();
        match cli.command {
            Some(Command::Bench(b)) => assert_eq!(
                b.tls.config(),
                Some(TlsConfig {
                    ca: Some("ca.pem".into())
                })
            ),
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from("spate-loadgen --server h:1 --stream s".split_whitespace())
            .unwrap();
        assert_eq!(cli.run.tls.clone().config(), None, "plaintext unless asked");
        let cli =
            Cli::try_parse_from("spate-loadgen --server h:1 --stream s --tls".split_whitespace())
                .unwrap();
        assert_eq!(cli.run.tls.clone().config(), Some(TlsConfig { ca: None }));
        assert!(
            Cli::try_parse_from(["spate-loadgen", "--stream", "s"]).is_err(),
            "--server is required"
        );
        assert!(Cli::try_parse_from(["spate-loadgen", "plot", "a.json", "b.svg"]).is_ok());
    }

    #[test]
    fn plot_option_and_subcommand_parse() {
        let cli = Cli::try_parse_from([
            "spate-loadgen",
            "--server",
            "127.0.0.1:7400",
            "--stream",
            "s",
            "--plot",
            "out.svg",
        ])
        .unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.run.plot, Some(PathBuf::from("out.svg")));
        assert_eq!(cli.run.json, None, "--plot needs no --json");
        let cli = Cli::try_parse_from(
            "spate-loadgen --server h:1 --stream s --json r.json --plot r.svg".split_whitespace(),
        )
        .unwrap();
        assert_eq!(
            (cli.run.json, cli.run.plot),
            (Some("r.json".into()), Some("r.svg".into()))
        );
        let cli =
            Cli::try_parse_from(["spate-loadgen", "--server", "h:1", "--stream", "s"]).unwrap();
        assert_eq!(cli.run.plot, None);
        assert!(
            Cli::try_parse_from([
                "spate-loadgen",
                "--server",
                "h:1",
                "--stream",
                "s",
                "--plot"
            ])
            .is_err(),
            "--plot takes a file"
        );
        // The subcommand is still there.
        let cli = Cli::try_parse_from(["spate-loadgen", "plot", "r.json", "r.svg"]).unwrap();
        match cli.command {
            Some(Command::Plot { report, out }) => {
                assert_eq!((report, out), ("r.json".into(), "r.svg".into()));
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["spate-loadgen", "plot", "r.json"]).is_err());
    }
}
