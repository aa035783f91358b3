//! The client commands: `stream …`, `put`, `read`, `keys …`. Each runs on a
//! single-threaded tokio runtime with one [`Client`].
//!
//! Confirmations of changes go to standard error, results to standard output.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Serialize;
use spate_client::{
    Client, ClientConfig, ClientError, Credentials, Entry, ErrorCode, Limits, Position,
    ReadOptions, Records, RetryPolicy, ShardReader, ShardState, StreamConfig, StreamInfo,
    StreamStatus, TlsOptions,
};
use tokio::sync::mpsc;

use crate::args::{
    AuditCommand, AuthCommand, Command, ConsumeArgs, ConsumerCommand, Delimiter, Format,
    GroupCommand, KeysCommand, PolicyCommand, PrincipalCommand, PutArgs, ReadArgs, StreamCommand,
    SubscribeArgs,
};

/// Records `put` sends in one call: one full batch.
const PUT_CHUNK_RECORDS: usize = 500;
/// Bytes `put` gathers for one call before sending.
const PUT_CHUNK_BYTES: usize = 4 << 20;
/// Records read ahead of the sender; bounds memory when standard input is fast.
const PUT_QUEUE_RECORDS: usize = 4 * PUT_CHUNK_RECORDS;
/// Long-poll wait of each read with `--follow`.
const FOLLOW_WAIT_MS: u32 = 5_000;
/// How often `stream wait` (and `create --wait`) says it is still waiting.
const WAIT_PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Runs a client command against `server`, over TLS with `tls`, authenticated as `creds`.
pub fn run(
    server: &str,
    tls: Option<TlsOptions>,
    creds: Option<Credentials>,
    command: Command,
) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    // A follower says when the server goes away and waits for it itself (`next_answer`);
    // the client's own retries would hide it.
    let follow = matches!(&command, Command::Read { args, .. } if args.follow);
    let config = ClientConfig {
        retry: if follow {
            RetryPolicy::none()
        } else {
            RetryPolicy::default()
        },
        tls,
        credentials: creds,
        ..ClientConfig::default()
    };
    runtime.block_on(async {
        let client = Client::connect_with(server, config)
            .await
            .map_err(|e| e.to_string())?;
        match command {
            Command::Stream { command, .. } => stream(&client, command).await,
            Command::Put { args, .. } => put(&client, args).await,
            Command::Read { args, .. } => read(&client, server, args).await,
            Command::Top { args, .. } => crate::top::run(&client, server, args).await,
            Command::Consumer { command, .. } => consumer(&client, command).await,
            Command::Subscribe { args, .. } => subscribe(&client, args).await,
            Command::Consume { args, .. } => consume(&client, args).await,
            Command::Group { command, .. } => group(&client, command).await,
            Command::Auth { command, .. } => auth(&client, command).await,
            Command::Audit { command, .. } => audit(&client, command).await,
            Command::Keys { command, .. } => keys(&client, command).await,
            Command::Serve(_) => unreachable!("serve is not a client command"),
        }
    })
}

fn err(e: ClientError) -> String {
    e.to_string()
}

/// A change's error; when the answer did not come, says how to learn whether it happened.
fn change_err(name: &str) -> impl Fn(ClientError) -> String + '_ {
    move |e| {
        match e {
        ClientError::Timeout { .. } | ClientError::ConnectionLost { .. } => format!(
            "{e}; the change may still be made: `spate stream describe {name}` shows the stream's state"
        ),
        e => e.to_string(),
    }
    }
}

/// A server's complaint about a request field, in the words of the flag that set it.
fn as_flags(message: String) -> String {
    [
        ("invalid new_starting_hash_key", "invalid --at"),
        ("invalid adjacent_shard_id", "invalid --with"),
        ("invalid shard_id", "invalid --shard"),
    ]
    .iter()
    .fold(message, |m, (field, flag)| m.replace(field, flag))
}

/// A failed write to standard output. A reader that went away (`spate read s | head`) ends
/// the command at once and quietly, with the status of a process that SIGPIPE ended (141),
/// as `cat` and other Unix filters do; any other failure is an error.
fn io_err(e: std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(141);
    }
    format!("cannot write to stdout: {e}")
}

/// One line of a result on standard output (`println!` would panic on a closed pipe).
fn print_line(line: impl std::fmt::Display) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(io_err)
}

async fn stream(client: &Client, command: StreamCommand) -> Result<(), String> {
    match command {
        StreamCommand::Create {
            name,
            shards,
            mode,
            max_write_mib,
            retention,
            limits,
            max_record_bytes,
            encryption,
            wait,
        } => {
            let on_demand = mode == Some(crate::args::ModeArg::OnDemand);
            let shards = shards.unwrap_or(4);
            let config = StreamConfig {
                shards,
                retention_hours: retention,
                limits: limits.into(),
                max_record_data_bytes: max_record_bytes,
                encryption,
            };
            let (_, status) = client
                .start_create_stream(&name, &config)
                .await
                .map_err(change_err(&name))?;
            // Said only when encrypted, so the plain confirmation reads as it always did.
            let sealed = if encryption.is_encrypted() {
                format!(", encrypted ({encryption})")
            } else {
                String::new()
            };
            let shard_count = plural(u64::from(shards), "shard");
            if status == StreamStatus::Active {
                eprintln!("created stream {name} with {shard_count}{sealed}");
            } else if wait {
                eprintln!("creating stream {name} with {shard_count}{sealed} ...");
                wait_active(client, &name, None, true).await?;
                eprintln!("created stream {name} with {shard_count}{sealed}");
            } else {
                eprintln!(
                    "creating stream {name} with {shard_count}{sealed} (status CREATING); `spate stream wait {name}` waits until it is ACTIVE"
                );
            }
            if on_demand {
                // A second request: if it fails, the stream stays provisioned (it says so).
                if status != StreamStatus::Active && !wait {
                    wait_active(client, &name, None, true).await?;
                }
                client
                    .update_stream_mode(&name, spate_client::CapacityMode::OnDemand, max_write_mib)
                    .await
                    .map_err(|e| {
                        format!("stream {name} was created, but stays provisioned: {e}")
                    })?;
                eprintln!("stream {name} is on-demand");
            }
        }
        StreamCommand::UpdateMode {
            name,
            mode,
            max_write_mib,
        } => {
            client
                .update_stream_mode(&name, mode.into(), max_write_mib)
                .await
                .map_err(change_err(&name))?;
            let mode: spate_client::CapacityMode = mode.into();
            eprintln!("stream {name} is {}", mode.name());
        }
        StreamCommand::ShardMetrics { name, state } => {
            let on = state == crate::args::OnOff::On;
            client
                .set_shard_level_metrics(&name, on)
                .await
                .map_err(change_err(&name))?;
            eprintln!(
                "shard-level metrics of {name} are {}",
                if on { "on" } else { "off" }
            );
        }
        StreamCommand::StartEncryption { name, encryption } => {
            client
                .start_stream_encryption(&name)
                .await
                .map_err(change_err(&name))?;
            eprintln!("stream {name}: records written from now on are encrypted ({encryption})");
        }
        StreamCommand::StopEncryption { name } => {
            client
                .stop_stream_encryption(&name)
                .await
                .map_err(change_err(&name))?;
            eprintln!(
                "stream {name}: records written from now on are stored in the clear (encrypted ones stay readable while their keys are kept)"
            );
        }
        StreamCommand::Wait { name, timeout } => {
            let timeout = (timeout > 0).then(|| Duration::from_secs(timeout));
            wait_active(client, &name, timeout, false).await?;
            eprintln!("stream {name} is ACTIVE");
        }
        StreamCommand::List { json } => {
            let names = client.list_streams().await.map_err(err)?;
            let mut out = std::io::stdout().lock();
            if json {
                let array = serde_json::to_string(&names)
                    .map_err(|e| format!("cannot encode the list: {e}"))?;
                writeln!(out, "{array}").map_err(io_err)?;
            } else {
                for name in names {
                    writeln!(out, "{name}").map_err(io_err)?;
                }
            }
            out.flush().map_err(io_err)?;
        }
        StreamCommand::Describe { name } => {
            let info = client.describe_stream(&name).await.map_err(err)?;
            let json = serde_json::to_string(&Description::from(&info))
                .map_err(|e| format!("cannot encode the description: {e}"))?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{json}")
                .and_then(|()| out.flush())
                .map_err(io_err)?;
        }
        StreamCommand::Delete { name } => {
            client
                .delete_stream(&name)
                .await
                .map_err(change_err(&name))?;
            eprintln!("deleted stream {name}");
        }
        StreamCommand::SetRetention { name, hours } => {
            let info = client.describe_stream(&name).await.map_err(err)?;
            let was = info.retention_hours;
            if hours > was {
                client
                    .increase_retention(&name, hours)
                    .await
                    .map_err(change_err(&name))?;
            } else if hours < was {
                client
                    .decrease_retention(&name, hours)
                    .await
                    .map_err(change_err(&name))?;
            }
            if hours == was {
                eprintln!("retention of stream {name} is already {hours} h");
            } else {
                eprintln!("retention of stream {name}: {was} h -> {hours} h");
            }
        }
        StreamCommand::Split { name, shard, at } => {
            let at = match at {
                Some(at) => at,
                None => {
                    let info = client.describe_stream(&name).await.map_err(err)?;
                    let s = info
                        .shards
                        .iter()
                        .find(|s| s.id == shard)
                        .ok_or_else(|| format!("stream {name} has no shard {shard}"))?;
                    if s.hash_key_start == s.hash_key_end {
                        return Err(format!(
                            "shard {shard} of {name} holds a single hash key ({}): it cannot be split",
                            s.hash_key_start
                        ));
                    }
                    // The upper middle: the first child gets the lower half, rounded up.
                    s.hash_key_start + (s.hash_key_end - s.hash_key_start) / 2 + 1
                }
            };
            let started = Instant::now();
            let r = client
                .split_shard(&name, shard, at)
                .await
                .map_err(|e| as_flags(change_err(&name)(e)))?;
            print_reshard(
                &format!("split shard {shard} of {name} at {at}"),
                &r,
                started,
            )?;
        }
        StreamCommand::Merge { name, shard, with } => {
            let started = Instant::now();
            let r = client
                .merge_shards(&name, shard, with)
                .await
                .map_err(|e| as_flags(change_err(&name)(e)))?;
            print_reshard(
                &format!("merged shards {shard} and {with} of {name}"),
                &r,
                started,
            )?;
        }
        StreamCommand::Scale { name, shards } => {
            let started = Instant::now();
            let r = client
                .update_shard_count(&name, shards)
                .await
                .map_err(change_err(&name))?;
            print_reshard(
                &format!("scaled {name} to {shards} open shards"),
                &r,
                started,
            )?;
        }
    }
    Ok(())
}

/// A reshard's outcome: what it did on stderr, and on stdout one JSON object with the new
/// shard-map version and the shards it opened.
/// `n` and `noun`, plural unless one: "1 shard", "4 shards".
fn plural(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Shard ids for people: runs of consecutive ids as `a-b` ("1-1000, 1003"), so that a
/// scale to a thousand shards is one short line (standard output's JSON lists each id).
fn id_runs(ids: &[u32]) -> String {
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for &id in ids {
        match runs.last_mut() {
            Some((_, end)) if end.checked_add(1) == Some(id) => *end = id,
            _ => runs.push((id, id)),
        }
    }
    runs.iter()
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_reshard(what: &str, r: &spate_client::Reshard, started: Instant) -> Result<(), String> {
    if r.new_shards.is_empty() {
        eprintln!("{what}: nothing to change");
    } else {
        eprintln!(
            "{what}: new {} {}, shard-map version {} ({} ms)",
            if r.new_shards.len() == 1 {
                "shard"
            } else {
                "shards"
            },
            id_runs(&r.new_shards),
            r.map_version,
            started.elapsed().as_millis()
        );
    }
    let json = serde_json::json!({
        "map_version": r.map_version,
        "new_shards": r.new_shards,
    });
    let mut out = std::io::stdout().lock();
    writeln!(out, "{json}")
        .and_then(|()| out.flush())
        .map_err(io_err)
}

/// Describes `name` until it is ACTIVE, saying every few seconds that it is still waiting.
/// `created`: the stream was just created here (so a disappearance is a create undone).
async fn wait_active(
    client: &Client,
    name: &str,
    timeout: Option<Duration>,
    created: bool,
) -> Result<(), String> {
    let start = Instant::now();
    let mut said = start;
    let mut pause = Duration::from_millis(50);
    loop {
        let info = match client.describe_stream(name).await {
            Ok(info) => info,
            Err(e) if e.code() == Some(ErrorCode::UnknownStream) && created => {
                return Err(format!(
                    "stream {name} no longer exists: its create failed and was undone (the server's log says why)"
                ))
            }
            Err(e) if e.code() == Some(ErrorCode::UnknownStream) => {
                return Err(format!("stream {name} does not exist"))
            }
            Err(e) => return Err(e.to_string()),
        };
        if info.status == StreamStatus::Active {
            return Ok(());
        }
        let waited = start.elapsed();
        if timeout.is_some_and(|t| waited >= t) {
            return Err(format!(
                "stream {name} is still {} after {} s",
                info.status.name(),
                waited.as_secs()
            ));
        }
        if said.elapsed() >= WAIT_PROGRESS_EVERY {
            eprintln!(
                "stream {name}: {} for {} s ({} shards)",
                info.status.name(),
                waited.as_secs(),
                info.shards.len()
            );
            said = Instant::now();
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

/// `stream describe`'s JSON object (SPEC §5); fields in this order.
#[derive(Debug, Serialize)]
struct Description {
    name: String,
    retention_hours: u32,
    limits: serde_json::Value,
    /// CREATING, ACTIVE, UPDATING or DELETING.
    status: &'static str,
    /// `provisioned` or `on-demand`.
    mode: &'static str,
    /// Raised by every split, merge and scale.
    map_version: u64,
    /// On-demand: the last scaling decision (when, what and why), or null.
    last_scaling: Option<String>,
    /// On-demand: the most write capacity the engine may scale to, MiB/s; null when
    /// provisioned.
    max_write_mib_per_s: Option<u32>,
    /// Per-shard metrics exported (`stream shard-metrics NAME on`).
    shard_level_metrics: bool,
    /// `none` or `aes-256-gcm`: how records written from now on are kept at rest.
    encryption: &'static str,
    /// Data keys (key epochs) the stream has had, the current one included; all are kept.
    key_epochs: u32,
    /// The master key the current data key is wrapped under, or null when not encrypted.
    master_key_id: Option<u32>,
    /// RFC 3339, UTC, and the same in ms since the epoch.
    created: String,
    created_ms: i64,
    max_record_bytes: u32,
    /// Sums over the shards below.
    records: u64,
    bytes: u64,
    disk_bytes: u64,
    shards: Vec<ShardJson>,
}

#[derive(Debug, Serialize)]
struct ShardJson {
    id: u32,
    state: &'static str,
    /// Decimal: a u128 does not fit a JSON number that every reader parses exactly.
    hash_key_start: String,
    hash_key_end: String,
    parent: Option<u32>,
    adjacent_parent: Option<u32>,
    core: u16,
    first_seq: Option<u64>,
    last_seq: Option<u64>,
    /// Records retained, the bytes they take, and the disk the shard holds.
    records: u64,
    bytes: u64,
    disk_bytes: u64,
}

/// `ms` since the epoch as RFC 3339 UTC with milliseconds.
fn rfc3339(ms: i64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

impl From<&StreamInfo> for Description {
    fn from(info: &StreamInfo) -> Description {
        let limits = match info.limits {
            Limits::Kinesis => serde_json::json!("kinesis"),
            Limits::Off => serde_json::json!("off"),
            Limits::Custom {
                write_bytes_per_s,
                write_records_per_s,
                read_bytes_per_s,
            } => serde_json::json!({
                "write_bytes_per_s": write_bytes_per_s,
                "write_records_per_s": write_records_per_s,
                "read_bytes_per_s": read_bytes_per_s,
            }),
        };
        let shards: Vec<ShardJson> = info
            .shards
            .iter()
            .map(|s| ShardJson {
                id: s.id,
                state: match s.state {
                    ShardState::Open => "open",
                    ShardState::Closed => "closed",
                    ShardState::Damaged => "damaged",
                },
                hash_key_start: s.hash_key_start.to_string(),
                hash_key_end: s.hash_key_end.to_string(),
                parent: s.parent,
                adjacent_parent: s.adjacent_parent,
                core: s.core,
                first_seq: s.first_seq,
                last_seq: s.last_seq,
                records: s.records,
                bytes: s.bytes,
                disk_bytes: s.disk_bytes,
            })
            .collect();
        Description {
            name: info.name.clone(),
            retention_hours: info.retention_hours,
            limits,
            status: info.status.name(),
            mode: info.mode.name(),
            map_version: info.map_version,
            last_scaling: info.last_scaling.clone(),
            max_write_mib_per_s: info.max_write_mib_per_s,
            shard_level_metrics: info.shard_level_metrics,
            encryption: info.encryption.name(),
            key_epochs: info.key_epochs,
            master_key_id: info.master_key_id,
            created: rfc3339(info.created_ms),
            created_ms: info.created_ms,
            max_record_bytes: info.max_record_data_bytes,
            records: shards.iter().map(|s| s.records).sum(),
            bytes: shards.iter().map(|s| s.bytes).sum(),
            disk_bytes: shards.iter().map(|s| s.disk_bytes).sum(),
            shards,
        }
    }
}

/// One record for `put`: its key and data, or why it could not be made.
type PutItem = Result<(String, Vec<u8>), String>;

/// `put`: one record from DATA, one per `--file`, or standard input split by newlines (or
/// `--delimiter`), keyed by `--key` or by each JSON line's `--key-field`. Sent in chunks of
/// what has arrived (at most one batch's worth), each acknowledged before the next is sent,
/// so the output and every shard keep input order. Throttled records are retried by the
/// client.
async fn put(client: &Client, args: PutArgs) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    let PutArgs {
        name,
        key,
        key_field,
        delimiter,
        file,
        explicit_hash_key,
        data,
    } = args;
    let entry = |key: String, data: Vec<u8>| {
        let e = Entry::new(key, data);
        match explicit_hash_key {
            Some(h) => e.with_explicit_hash_key(h),
            None => e,
        }
    };
    if let Some(data) = data {
        let key = key.expect("clap requires --key without --key-field");
        let entries = vec![entry(key, data.into_bytes())];
        return put_chunk(client, &name, entries, &mut out).await;
    }
    let (tx, mut rx) = mpsc::channel::<PutItem>(PUT_QUEUE_RECORDS);
    // Input is read on its own thread: blocking reads must not stall the runtime.
    std::thread::spawn(move || {
        if file.is_empty() {
            read_stdin(tx, delimiter, key, key_field)
        } else {
            read_files(tx, &file, key.expect("clap requires --key with --file"))
        }
    });
    while let Some(first) = rx.recv().await {
        let mut bytes = 0;
        let mut entries = Vec::new();
        let mut next = Some(first);
        while let Some(item) = next.take() {
            let (key, data) = match item {
                Ok(record) => record,
                Err(e) => {
                    // What came before the bad input is still sent, then the error told.
                    put_chunk(client, &name, entries, &mut out).await?;
                    return Err(e);
                }
            };
            bytes += data.len();
            entries.push(entry(key, data));
            if entries.len() < PUT_CHUNK_RECORDS && bytes < PUT_CHUNK_BYTES {
                next = rx.try_recv().ok();
            }
        }
        put_chunk(client, &name, entries, &mut out).await?;
    }
    Ok(())
}

/// Sends each file's whole content as one record, in order.
fn read_files(tx: mpsc::Sender<PutItem>, files: &[PathBuf], key: String) {
    for path in files {
        let item = std::fs::read(path)
            .map(|data| (key.clone(), data))
            .map_err(|e| format!("cannot read {}: {e}", path.display()));
        let failed = item.is_err();
        if tx.blocking_send(item).is_err() || failed {
            return;
        }
    }
}

/// Sends standard input's records until its end: split at `delimiter` (default: lines,
/// without their `\n` or `\r\n`), keyed by `key` or by each JSON line's `key_field`.
fn read_stdin(
    tx: mpsc::Sender<PutItem>,
    delimiter: Option<Delimiter>,
    key: Option<String>,
    key_field: Option<String>,
) {
    let lines = delimiter.is_none();
    let delimiter = delimiter.map_or_else(|| b"\n".to_vec(), |d| d.0);
    let mut input = std::io::stdin().lock();
    let mut number = 0u64;
    loop {
        let record = match read_until_delimiter(&mut input, &delimiter) {
            Ok(None) => return,
            Ok(Some(mut record)) => {
                if lines && record.last() == Some(&b'\r') {
                    record.pop();
                }
                record
            }
            Err(e) => {
                let _ = tx.blocking_send(Err(format!("cannot read standard input: {e}")));
                return;
            }
        };
        number += 1;
        // A blank line in JSON lines is no record (a trailing newline, a spacer).
        if key_field.is_some() && record.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let item = match (&key, &key_field) {
            (Some(key), _) => Ok((key.clone(), record)),
            (None, Some(field)) => key_of(&record, field)
                .map(|key| (key, record))
                .map_err(|why| format!("record {number} of standard input: {why}")),
            (None, None) => unreachable!("clap requires --key or --key-field"),
        };
        let failed = item.is_err();
        if tx.blocking_send(item).is_err() || failed {
            return;
        }
    }
}

/// The next record of `input` up to (not including) `delimiter`; `None` at the end. The last
/// record needs no delimiter; an empty input has no record.
fn read_until_delimiter(
    input: &mut impl BufRead,
    delimiter: &[u8],
) -> std::io::Result<Option<Vec<u8>>> {
    let last = *delimiter.last().expect("a delimiter is never empty");
    let mut record = Vec::new();
    loop {
        let n = input.read_until(last, &mut record)?;
        if n == 0 {
            return Ok((!record.is_empty()).then_some(record));
        }
        if record.ends_with(delimiter) {
            record.truncate(record.len() - delimiter.len());
            return Ok(Some(record));
        }
        if record.last() != Some(&last) {
            return Ok(Some(record)); // the end of input
        }
    }
}

/// The partition key a JSON line carries in its top-level `field`: a string as is, a
/// number as written.
fn key_of(line: &[u8], field: &str) -> Result<String, String> {
    let value: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| format!("not a JSON object: {e}"))?;
    match value.get(field) {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(serde_json::Value::Number(n)) => Ok(n.to_string()),
        Some(other) => Err(format!(
            "field {field:?} is {other}, not a string or a number"
        )),
        None if value.is_object() => Err(format!("no field {field:?}")),
        None => Err("not a JSON object".to_string()),
    }
}

/// Puts `entries`, prints the acknowledged ones in order, stops at the first failure.
async fn put_chunk(
    client: &Client,
    stream: &str,
    entries: Vec<Entry>,
    out: &mut impl Write,
) -> Result<(), String> {
    if entries.is_empty() {
        return Ok(());
    }
    let results = client.put_records(stream, entries).await;
    let mut failure = None;
    for result in results {
        match result {
            Ok(r) => writeln!(out, "{} {}", r.shard_id, r.seq).map_err(io_err)?,
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    out.flush().map_err(io_err)?;
    failure.map_or(Ok(()), |e| Err(e.to_string()))
}

/// `read`'s JSON line per record (SPEC §5); fields in this order.
#[derive(Debug, Serialize)]
struct RecordJson<'a> {
    shard: u32,
    seq: u64,
    key: &'a str,
    ts_ms: i64,
    data: String,
}

/// Writes records in the chosen format and counts them against `--limit`.
struct Printer<W: Write> {
    out: W,
    format: Format,
    delimiter: Vec<u8>,
    printed: u64,
    limit: u64,
}

impl<W: Write> Printer<W> {
    fn done(&self) -> bool {
        self.printed >= self.limit
    }

    fn left(&self) -> u64 {
        self.limit - self.printed
    }

    /// Prints what `limit` leaves of `answer`.
    fn print(&mut self, shard: u32, answer: &Records) -> Result<(), String> {
        self.print_records(shard, &answer.records)
    }

    /// Prints what `limit` leaves of `records`.
    fn print_records(
        &mut self,
        shard: u32,
        records: &[spate_client::Record],
    ) -> Result<(), String> {
        for r in records.iter().take(self.left() as usize) {
            match self.format {
                Format::Json => {
                    let line = RecordJson {
                        shard,
                        seq: r.seq,
                        key: &r.key,
                        ts_ms: r.ts_ms,
                        data: base64::engine::general_purpose::STANDARD.encode(&r.data),
                    };
                    let json = serde_json::to_string(&line).map_err(|e| e.to_string())?;
                    writeln!(self.out, "{json}").map_err(io_err)?;
                }
                Format::Text => {
                    writeln!(self.out, "{}", String::from_utf8_lossy(&r.data)).map_err(io_err)?
                }
                Format::Raw => self
                    .out
                    .write_all(&r.data)
                    .and_then(|()| self.out.write_all(&self.delimiter))
                    .map_err(io_err)?,
            }
            self.printed += 1;
        }
        self.out.flush().map_err(io_err)
    }
}

/// `read`: one shard (`--shard`) or every shard of the stream, parents before children,
/// from `--from`; stops at the tip (an empty answer with nothing behind it) unless
/// `--follow`, and after `--limit` records.
async fn read(client: &Client, server: &str, args: ReadArgs) -> Result<(), String> {
    let mut printer = Printer {
        out: std::io::stdout().lock(),
        format: args.format,
        delimiter: args.delimiter.0.clone(),
        printed: 0,
        limit: args.limit.unwrap_or(u64::MAX),
    };
    if printer.done() {
        return Ok(());
    }
    let shards = match args.shard {
        Some(id) => vec![id],
        None => {
            let info = client.describe_stream(&args.name).await.map_err(err)?;
            lineage_order(&info)
        }
    };
    if args.follow && args.shard.is_none() {
        return follow_all(client, server, &args, shards, &mut printer).await;
    }
    for shard in shards {
        let mut reader = open_reader(client, &args, shard, printer.left()).await?;
        loop {
            reader.set_options(read_options(&args, printer.left()));
            let Some(answer) = next_answer(&mut reader, server, args.follow).await? else {
                break; // a closed shard, fully read
            };
            printer.print(shard, &answer)?;
            if printer.done() {
                return Ok(());
            }
            // An empty answer without a long-poll wait: the reader is at the tip.
            if answer.records.is_empty() && !args.follow {
                break;
            }
        }
    }
    Ok(())
}

/// The stream's shards, each after its parents (ids ascending otherwise).
fn lineage_order(info: &StreamInfo) -> Vec<u32> {
    let mut left: Vec<&spate_client::ShardDescription> = info.shards.iter().collect();
    left.sort_by_key(|s| s.id);
    let mut order: Vec<u32> = Vec::with_capacity(left.len());
    while !left.is_empty() {
        let ready = |s: &&spate_client::ShardDescription| {
            [s.parent, s.adjacent_parent]
                .into_iter()
                .flatten()
                .all(|p| order.contains(&p) || !info.shards.iter().any(|x| x.id == p))
        };
        let (now, later): (Vec<&spate_client::ShardDescription>, Vec<_>) =
            left.into_iter().partition(ready);
        if now.is_empty() {
            // A cycle cannot happen; if the description were inconsistent, read the rest by id.
            order.extend(later.iter().map(|s| s.id));
            break;
        }
        order.extend(now.iter().map(|s| s.id));
        left = later;
    }
    order
}

fn read_options(args: &ReadArgs, left: u64) -> ReadOptions {
    ReadOptions {
        max_records: left.min(10_000) as u32,
        wait_ms: if args.follow { FOLLOW_WAIT_MS } else { 0 },
        ..ReadOptions::default()
    }
}

async fn open_reader(
    client: &Client,
    args: &ReadArgs,
    shard: u32,
    left: u64,
) -> Result<ShardReader, String> {
    client
        .shard_reader(&args.name, shard, args.from, read_options(args, left))
        .await
        .map_err(err)
}

/// The reader's next answer. Following, a server that goes away (shutting down, restarting,
/// unreachable) is waited for, said once on standard error, and the reader goes on after
/// the last record it returned once the server is back.
async fn next_answer(
    reader: &mut ShardReader,
    server: &str,
    follow: bool,
) -> Result<Option<Records>, String> {
    if !follow {
        return reader.next().await.map_err(err);
    }
    let mut away = Away::new(server);
    loop {
        let asked = Instant::now();
        match reader.next().await {
            Ok(answer) => {
                away.back(&format!(
                    "; shard {} goes on where it stopped",
                    reader.shard_id()
                ));
                // A long-poll that came back empty at once (the server's bound of parked
                // reads, or its shutdown) is not asked again at once.
                if answer.as_ref().is_some_and(|a| a.records.is_empty())
                    && asked.elapsed() < Duration::from_millis(100)
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                return Ok(answer);
            }
            Err(e) => away.wait_out(e).await?,
        }
    }
}

/// Why the server is not there, when that is what `e` says (it is shutting down, or cannot
/// be reached); `None` for answers of a server that is there (throttling, busy).
fn gone(e: &ClientError) -> Option<String> {
    match e {
        ClientError::Server {
            code: ErrorCode::ShuttingDown,
            ..
        } => Some("the server is shutting down".to_string()),
        ClientError::Server { .. } => None,
        e => Some(e.to_string()),
    }
}

/// A server that went away, as a follower waits for it: busy (throttled) answers are waited
/// out as the server says; a server gone (shutting down, restarting, unreachable) is said
/// once on standard error, asked again with backoff, and said again when it is back.
struct Away<'a> {
    server: &'a str,
    lost_since: Option<Instant>,
    pause: Duration,
}

impl<'a> Away<'a> {
    fn new(server: &'a str) -> Away<'a> {
        Away {
            server,
            lost_since: None,
            pause: Duration::from_millis(100),
        }
    }

    /// An answer came: says so if the server had been gone.
    fn back(&mut self, how: &str) {
        if let Some(since) = self.lost_since.take() {
            eprintln!(
                "spate: {} is back after {:.1} s{how}",
                self.server,
                since.elapsed().as_secs_f64()
            );
        }
    }

    /// Waits before the next try after `e`, or answers it when it is not a passing one.
    async fn wait_out(&mut self, e: ClientError) -> Result<(), String> {
        if !e.is_retryable() {
            return Err(err(e));
        }
        match gone(&e) {
            None => {
                let hint = u64::from(e.retry_after_ms().max(100));
                tokio::time::sleep(Duration::from_millis(hint)).await;
            }
            Some(why) => {
                if self.lost_since.is_none() {
                    eprintln!("spate: {why}; waiting for {} to come back", self.server);
                    self.lost_since = Some(Instant::now());
                }
                tokio::time::sleep(self.pause).await;
                self.pause = (self.pause * 2).min(Duration::from_secs(2));
            }
        }
        Ok(())
    }
}

/// Runs `op` until it answers, waiting out a server that is busy (as it says) or gone (a
/// restart: said once on standard error, and again when it is back): `read --follow` goes
/// on across a restart at any moment, also between a parent's end and its children's start
/// (it exited there).
async fn while_away<T, Fut>(server: &str, mut op: impl FnMut() -> Fut) -> Result<T, String>
where
    Fut: std::future::Future<Output = spate_client::Result<T>>,
{
    let mut away = Away::new(server);
    loop {
        match op().await {
            Ok(v) => {
                away.back("");
                return Ok(v);
            }
            Err(e) => away.wait_out(e).await?,
        }
    }
}

/// What a shard's follower tells the printer.
enum Followed {
    Records(u32, Records),
    /// The shard is closed and read to its end; the shards that took over its keys.
    Ended(u32, Vec<u32>),
    Failed(String),
}

/// `read --follow` of a whole stream: one follower per shard at a time, a child started
/// once its parents have ended (children a split or merge makes while following are found
/// as their parents end), records printed as they come.
async fn follow_all(
    client: &Client,
    server: &str,
    args: &ReadArgs,
    mut shards: Vec<u32>,
    printer: &mut Printer<impl Write>,
) -> Result<(), String> {
    let mut info = client.describe_stream(&args.name).await.map_err(err)?;
    if args.from == Position::Latest {
        // From now on: the open shards (a closed one has nothing new to give).
        shards.retain(|id| {
            info.shards
                .iter()
                .any(|s| s.id == *id && s.state == spate_client::ShardState::Open)
        });
    }
    let (tx, mut rx) = mpsc::channel::<Followed>(64);
    let mut started: Vec<u32> = Vec::new();
    let mut ended: Vec<u32> = Vec::new();
    loop {
        let mut ready = Vec::new();
        for &id in &shards {
            let parents: Vec<u32> = info
                .shards
                .iter()
                .find(|s| s.id == id)
                .map(|s| {
                    [s.parent, s.adjacent_parent]
                        .into_iter()
                        .flatten()
                        .filter(|p| shards.contains(p))
                        .collect()
                })
                .unwrap_or_default();
            if !started.contains(&id) && parents.iter().all(|p| ended.contains(p)) {
                ready.push(id);
            }
        }
        for id in ready {
            started.push(id);
            // A child starts where its keys begin (its first record), or, reading from a
            // time, at that time as its parents did (its records before it are older).
            let from = if shards_at_start_contains(&info, id, &started)
                || matches!(args.from, Position::AtTimestamp { .. })
            {
                args.from
            } else {
                Position::TrimHorizon
            };
            let options = read_options(args, printer.left());
            let reader = while_away(server, || {
                client.shard_reader(&args.name, id, from, options)
            })
            .await?;
            tokio::spawn(follow_one(reader, server.to_string(), tx.clone()));
        }
        match rx.recv().await {
            Some(Followed::Records(id, answer)) => {
                printer.print(id, &answer)?;
                if printer.done() {
                    return Ok(());
                }
            }
            Some(Followed::Ended(id, children)) => {
                ended.push(id);
                let new: Vec<u32> = children
                    .into_iter()
                    .filter(|c| !shards.contains(c))
                    .collect();
                if !new.is_empty() {
                    info = while_away(server, || client.describe_stream(&args.name)).await?;
                    shards.extend(new);
                }
            }
            Some(Followed::Failed(e)) => return Err(e),
            None => return Ok(()),
        }
        if ended.len() == shards.len() {
            return Ok(());
        }
    }
}

/// Whether `id` is read from `--from` (a shard whose parents are not being read: the
/// stream's roots, or every open shard for LATEST) rather than from its beginning (a
/// child reached through its parents).
fn shards_at_start_contains(info: &StreamInfo, id: u32, started: &[u32]) -> bool {
    info.shards.iter().find(|s| s.id == id).is_none_or(|s| {
        [s.parent, s.adjacent_parent]
            .into_iter()
            .flatten()
            .all(|p| !started.contains(&p))
    })
}

async fn follow_one(mut reader: ShardReader, server: String, tx: mpsc::Sender<Followed>) {
    let id = reader.shard_id();
    let mut children = Vec::new();
    loop {
        let msg = match next_answer(&mut reader, &server, true).await {
            Ok(Some(answer)) => {
                if answer.next_iterator.is_none() {
                    children = answer.child_shards.clone();
                }
                if answer.records.is_empty() {
                    continue;
                }
                Followed::Records(id, answer)
            }
            Ok(None) => Followed::Ended(id, std::mem::take(&mut children)),
            Err(e) => Followed::Failed(format!("shard {id}: {e}")),
        };
        let last = !matches!(msg, Followed::Records(..));
        if tx.send(msg).await.is_err() || last {
            return;
        }
    }
}

#[derive(Serialize)]
struct ConsumerJson<'a> {
    stream: &'a str,
    name: &'a str,
    consumer_id: u64,
    created: String,
}

fn consumer_json<'a>(stream: &'a str, c: &'a spate_client::ConsumerInfo) -> ConsumerJson<'a> {
    ConsumerJson {
        stream,
        name: &c.name,
        consumer_id: c.consumer_id,
        created: rfc3339(c.created_ms),
    }
}

fn print_json(value: &impl Serialize) -> Result<(), String> {
    let json = serde_json::to_string(value).map_err(|e| format!("cannot encode: {e}"))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{json}")
        .and_then(|()| out.flush())
        .map_err(io_err)
}

/// `consumer register|list|describe|deregister`.
async fn consumer(client: &Client, command: ConsumerCommand) -> Result<(), String> {
    match command {
        ConsumerCommand::Register { name, consumer } => {
            let c = client
                .register_consumer(&name, &consumer)
                .await
                .map_err(err)?;
            print_json(&consumer_json(&name, &c))?;
            eprintln!("registered consumer {consumer} on {name}");
        }
        ConsumerCommand::List { name } => {
            let list = client.list_consumers(&name).await.map_err(err)?;
            let json: Vec<ConsumerJson> = list.iter().map(|c| consumer_json(&name, c)).collect();
            print_json(&json)?;
        }
        ConsumerCommand::Describe { name, consumer } => {
            let c = client
                .describe_consumer(&name, &consumer)
                .await
                .map_err(err)?;
            print_json(&consumer_json(&name, &c))?;
        }
        ConsumerCommand::Deregister { name, consumer } => {
            client
                .deregister_consumer(&name, &consumer)
                .await
                .map_err(err)?;
            eprintln!("deregistered consumer {consumer} from {name}");
        }
    }
    Ok(())
}

/// `subscribe`: one shard's records pushed to a registered consumer.
async fn subscribe(client: &Client, args: SubscribeArgs) -> Result<(), String> {
    let mut printer = Printer {
        out: std::io::stdout().lock(),
        format: args.format,
        delimiter: args.delimiter.0.clone(),
        printed: 0,
        limit: args.limit.unwrap_or(u64::MAX),
    };
    if printer.done() {
        return Ok(());
    }
    let mut sub = client
        .subscribe(
            &args.name,
            &args.consumer,
            args.shard,
            args.from,
            spate_client::SubscribeOptions::default(),
        )
        .await
        .map_err(err)?;
    while let Some(event) = sub.next().await.map_err(err)? {
        printer.print_records(args.shard, &event.records)?;
        if printer.done() {
            break;
        }
        if event.ended {
            eprintln!(
                "shard {} is closed and read to its end; its keys went to {:?}",
                args.shard, event.child_shards
            );
        }
    }
    Ok(())
}

/// How long a stopped `consume` waits to leave its group.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The first SIGINT or SIGTERM from now on: its name and the exit status a shell gives a
/// process it ended (128 + the signal's number).
fn stop_signal() -> Result<impl std::future::Future<Output = (&'static str, i32)>, String> {
    use tokio::signal::unix::{signal, SignalKind};
    let handler = |kind| signal(kind).map_err(|e| format!("cannot install a signal handler: {e}"));
    let (mut int, mut term) = (
        handler(SignalKind::interrupt())?,
        handler(SignalKind::terminate())?,
    );
    Ok(async move {
        tokio::select! {
            _ = int.recv() => ("SIGINT", 130),
            _ = term.recv() => ("SIGTERM", 143),
        }
    })
}

/// `consume --group`: a member of a consumer group; checkpoints each batch once printed.
async fn consume(client: &Client, args: ConsumeArgs) -> Result<(), String> {
    let mut printer = Printer {
        out: std::io::stdout().lock(),
        format: args.format,
        delimiter: args.delimiter.0.clone(),
        printed: 0,
        limit: args.limit.unwrap_or(u64::MAX),
    };
    if printer.done() {
        return Ok(());
    }
    let mut options = spate_client::GroupOptions {
        start: args.from,
        ..Default::default()
    };
    if let Some(w) = args.worker {
        options.worker = w;
    }
    // Ctrl-C or SIGTERM: leave the group, so that its other members take this worker's
    // shards at once instead of after the lease timeout (what was printed is checkpointed;
    // a batch not yet printed comes again to whoever takes its shard). Caught from before
    // the join, so that one sent once the join is announced is not missed.
    let stop = stop_signal()?;
    tokio::pin!(stop);
    let mut worker = spate_client::GroupWorker::join(client, &args.name, &args.group, options)
        .await
        .map_err(err)?;
    eprintln!(
        "joined group {} on {} as {}",
        args.group,
        args.name,
        worker.worker()
    );
    loop {
        let event = tokio::select! {
            event = worker.next() => event,
            (signal, status) = &mut stop => {
                // A server that does not answer in time leaves the leases to its timeout.
                let left = tokio::time::timeout(LEAVE_TIMEOUT, worker.leave()).await;
                match left {
                    Ok(Ok(())) => eprintln!(
                        "spate: stopped by {signal}; left group {}, whose other members take its shards now",
                        args.group
                    ),
                    Ok(Err(e)) => eprintln!(
                        "spate: stopped by {signal}; could not leave group {} ({e}): its shards move after the lease timeout",
                        args.group
                    ),
                    Err(_) => eprintln!(
                        "spate: stopped by {signal}; leaving group {} took over {} s: its shards move after the lease timeout",
                        args.group,
                        LEAVE_TIMEOUT.as_secs()
                    ),
                }
                std::process::exit(status);
            }
        };
        let Some(event) = event else {
            break;
        };
        match event.map_err(err)? {
            spate_client::GroupEvent::Records {
                shard_id, records, ..
            } => {
                let take = records.len().min(printer.left() as usize);
                printer.print_records(shard_id, &records[..take])?;
                if let Some(last) = records[..take].last() {
                    match worker.checkpoint(shard_id, last.seq).await {
                        Ok(()) => {}
                        // The lease moved: what was printed may come again elsewhere.
                        Err(e) if e.code() == Some(ErrorCode::LeaseLost) => {}
                        Err(e) => return Err(err(e)),
                    }
                }
                if printer.done() {
                    break;
                }
            }
            spate_client::GroupEvent::ShardEnded { shard_id } => {
                match worker.checkpoint_shard_end(shard_id).await {
                    Ok(()) => {}
                    Err(e) if e.code() == Some(ErrorCode::LeaseLost) => {}
                    Err(e) => return Err(err(e)),
                }
            }
            spate_client::GroupEvent::LeaseLost { shard_id } => {
                eprintln!("shard {shard_id} moved to another member of the group");
            }
        }
    }
    worker.leave().await.map_err(err)
}

#[derive(Serialize)]
struct GroupJson<'a> {
    stream: &'a str,
    group: &'a str,
    start: String,
    created: String,
    lease_timeout_ms: u32,
    members: Vec<MemberJson<'a>>,
    shards: Vec<GroupShardJson<'a>>,
}

#[derive(Serialize)]
struct MemberJson<'a> {
    worker: &'a str,
    idle_ms: u64,
    leases: u32,
}

#[derive(Serialize)]
struct GroupShardJson<'a> {
    id: u32,
    owner: Option<&'a str>,
    /// "after:SEQ", "shard_end" or null.
    checkpoint: Option<String>,
    next_seq: u64,
    lag_records: u64,
}

/// `group describe|list|delete`.
async fn group(client: &Client, command: GroupCommand) -> Result<(), String> {
    match command {
        GroupCommand::Describe { name, group } => {
            let g = client.describe_group(&name, &group).await.map_err(err)?;
            let start = match g.start {
                Position::TrimHorizon => "oldest".to_string(),
                Position::Latest => "latest".to_string(),
                Position::AtTimestamp { ts_ms } => format!("time:{}", rfc3339(ts_ms)),
                other => format!("{other:?}"),
            };
            let json = GroupJson {
                stream: &name,
                group: &g.group,
                start,
                created: rfc3339(g.created_ms),
                lease_timeout_ms: g.lease_timeout_ms,
                members: g
                    .members
                    .iter()
                    .map(|m| MemberJson {
                        worker: &m.worker,
                        idle_ms: m.idle_ms,
                        leases: m.leases,
                    })
                    .collect(),
                shards: g
                    .shards
                    .iter()
                    .map(|s| GroupShardJson {
                        id: s.shard_id,
                        owner: s.owner.as_deref(),
                        checkpoint: match s.checkpoint {
                            spate_client::Checkpoint::None => None,
                            spate_client::Checkpoint::After { seq } => Some(format!("after:{seq}")),
                            spate_client::Checkpoint::ShardEnd => Some("shard_end".into()),
                        },
                        next_seq: s.next_seq,
                        lag_records: s.lag_records,
                    })
                    .collect(),
            };
            print_json(&json)?;
        }
        GroupCommand::List { name } => {
            let groups = client.list_groups(&name).await.map_err(err)?;
            let mut out = std::io::stdout().lock();
            for g in groups {
                writeln!(out, "{g}").map_err(io_err)?;
            }
            out.flush().map_err(io_err)?;
        }
        GroupCommand::Delete { name, group } => {
            client.delete_group(&name, &group).await.map_err(err)?;
            eprintln!("deleted group {group} of {name}");
        }
    }
    Ok(())
}

/// `auth principal ...` and `auth policy ...`.
async fn auth(client: &Client, command: AuthCommand) -> Result<(), String> {
    match command {
        AuthCommand::Principal { command } => match command {
            PrincipalCommand::Create { name } => {
                let p = client.create_principal(&name).await.map_err(err)?;
                let json = serde_json::json!({
                    "name": p.name,
                    "access_key_id": p.access_key_id,
                    "secret": p.secret,
                });
                print_line(json)?;
                eprintln!(
                    "principal {name} created; its secret is shown this once (it may do nothing until `spate auth policy put {name} ...`)"
                );
            }
            PrincipalCommand::List => {
                let list = client.list_principals().await.map_err(err)?;
                let json: Vec<serde_json::Value> = list
                    .iter()
                    .map(|p| {
                        serde_json::json!({
                            "name": p.name,
                            "access_key_id": p.access_key_id,
                            "enabled": p.enabled,
                            "created_ms": p.created_ms,
                            "policies": p.policies,
                        })
                    })
                    .collect();
                print_line(serde_json::Value::Array(json))?;
            }
            PrincipalCommand::Enable { name } => {
                client
                    .set_principal_enabled(&name, true)
                    .await
                    .map_err(err)?;
                eprintln!("principal {name} enabled");
            }
            PrincipalCommand::Disable { name } => {
                client
                    .set_principal_enabled(&name, false)
                    .await
                    .map_err(err)?;
                eprintln!("principal {name} disabled");
            }
            PrincipalCommand::Delete { name } => {
                client.delete_principal(&name).await.map_err(err)?;
                eprintln!("principal {name} deleted");
            }
        },
        AuthCommand::Policy { command } => match command {
            PolicyCommand::Put {
                principal,
                policy,
                document,
                file,
            } => {
                let document = match (document, file) {
                    (Some(d), _) => d,
                    (None, Some(f)) if f.as_os_str() == "-" => {
                        let mut text = String::new();
                        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                            .map_err(|e| format!("cannot read standard input: {e}"))?;
                        text
                    }
                    (None, Some(f)) => std::fs::read_to_string(&f)
                        .map_err(|e| format!("cannot read {}: {e}", f.display()))?,
                    (None, None) => unreachable!("clap requires one"),
                };
                client
                    .put_policy(&principal, &policy, &document)
                    .await
                    .map_err(err)?;
                eprintln!("policy {policy} of {principal} stored");
            }
            PolicyCommand::Get { principal, policy } => {
                print_line(client.get_policy(&principal, &policy).await.map_err(err)?)?;
            }
            PolicyCommand::Delete { principal, policy } => {
                client
                    .delete_policy(&principal, &policy)
                    .await
                    .map_err(err)?;
                eprintln!("policy {policy} of {principal} deleted");
            }
        },
    }
    Ok(())
}

/// `keys rotate`: one JSON object on stdout, what it did on stderr.
async fn keys(client: &Client, command: KeysCommand) -> Result<(), String> {
    let KeysCommand::Rotate = command;
    let r = client.rotate_keys().await.map_err(|e| match e {
        ClientError::Timeout { .. } | ClientError::ConnectionLost { .. } => format!(
            "{e}; the rotation may still be made: `spate stream describe NAME` shows a stream's master_key_id"
        ),
        e => e.to_string(),
    })?;
    let json = serde_json::json!({
        "master_key_id": r.master_key_id,
        "streams": r.streams,
    });
    let mut out = std::io::stdout().lock();
    writeln!(out, "{json}")
        .and_then(|()| out.flush())
        .map_err(io_err)?;
    eprintln!(
        "{} encrypted stream(s) now seal new records under a new data key, wrapped by master key {}",
        r.streams, r.master_key_id
    );
    Ok(())
}

/// `audit tail [--follow]`.
async fn audit(client: &Client, command: AuditCommand) -> Result<(), String> {
    let AuditCommand::Tail { lines, follow } = command else {
        unreachable!("verify runs offline")
    };
    let (first, mut next) = client.read_audit(0, lines, 0).await.map_err(err)?;
    let mut out = std::io::stdout().lock();
    for l in first {
        writeln!(out, "{l}").map_err(|e| e.to_string())?;
    }
    out.flush().map_err(|e| e.to_string())?;
    drop(out);
    if !follow {
        return Ok(());
    }
    loop {
        let (more, n) = client
            .read_audit(next, 1000, FOLLOW_WAIT_MS)
            .await
            .map_err(err)?;
        next = n;
        let mut out = std::io::stdout().lock();
        for l in more {
            writeln!(out, "{l}").map_err(|e| e.to_string())?;
        }
        out.flush().map_err(|e| e.to_string())?;
    }
}

/// `audit verify --data-dir DIR`: offline.
pub fn audit_verify(data_dir: &std::path::Path) -> Result<(), String> {
    let dir = data_dir.join(spate_engine::audit::AUDIT_DIR);
    let report = spate_engine::audit::verify_dir(&dir).map_err(|why| {
        format!(
            "the audit trail in {} fails verification: {why}",
            dir.display()
        )
    })?;
    print_line(serde_json::to_string(&report).map_err(|e| e.to_string())?)?;
    if !report.torn_tails.is_empty() {
        eprintln!(
            "note: {} file(s) end in a line cut short by a crash (never acknowledged): {}",
            report.torn_tails.len(),
            report.torn_tails.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{id_runs, plural};

    #[test]
    fn shard_ids_print_as_runs_and_counts_agree_with_their_noun() {
        assert_eq!(id_runs(&[]), "");
        assert_eq!(id_runs(&[4]), "4");
        assert_eq!(id_runs(&[1, 2]), "1-2");
        let scaled: Vec<u32> = (5..=1004).chain([1010, 1011, 7]).collect();
        assert_eq!(id_runs(&scaled), "5-1004, 1010-1011, 7");
        assert_eq!(id_runs(&[u32::MAX - 1, u32::MAX]), "4294967294-4294967295");
        assert_eq!(plural(1, "shard"), "1 shard");
        assert_eq!(plural(0, "shard"), "0 shards");
        assert_eq!(plural(4, "shard"), "4 shards");
    }
}
