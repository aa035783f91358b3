//! The client commands: `stream …`, `put`, `read`. Each runs on a single-threaded tokio
//! runtime with one [`Client`].

use std::io::{BufRead, Write};

use base64::Engine as _;
use serde::Serialize;
use spate_client::{
    Client, ClientError, Entry, Limits, ReadOptions, ShardState, StreamConfig, StreamInfo,
};
use tokio::sync::mpsc;

use crate::args::{Command, PutArgs, ReadArgs, StreamCommand};

/// Records `put` sends in one call: one full batch (all records share a key, so a shard).
const PUT_CHUNK_RECORDS: usize = 500;
/// Bytes `put` gathers for one call before sending.
const PUT_CHUNK_BYTES: usize = 4 << 20;
/// Lines read ahead of the sender; bounds memory when standard input is fast.
const PUT_QUEUE_LINES: usize = 4 * PUT_CHUNK_RECORDS;
/// Long-poll wait of each read with `--follow`.
const FOLLOW_WAIT_MS: u32 = 5_000;

pub fn run(server: &str, command: Command) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async {
        let client = Client::connect(server).await.map_err(|e| e.to_string())?;
        match command {
            Command::Stream { command } => stream(&client, command).await,
            Command::Put(args) => put(&client, args).await,
            Command::Read(args) => read(&client, args).await,
            Command::Serve(_) => unreachable!("serve is not a client command"),
        }
    })
}

fn err(e: ClientError) -> String {
    e.to_string()
}

fn io_err(e: std::io::Error) -> String {
    format!("cannot write to stdout: {e}")
}

async fn stream(client: &Client, command: StreamCommand) -> Result<(), String> {
    match command {
        StreamCommand::Create {
            name,
            shards,
            retention,
            limits,
            max_record_bytes,
        } => {
            let config = StreamConfig {
                shards,
                retention_hours: retention,
                limits: limits.into(),
                max_record_data_bytes: max_record_bytes,
            };
            client.create_stream(&name, &config).await.map_err(err)?;
            eprintln!("created stream {name} with {shards} shards");
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
            client.delete_stream(&name).await.map_err(err)?;
            eprintln!("deleted stream {name}");
        }
        StreamCommand::SetRetention { name, hours } => {
            let info = client.describe_stream(&name).await.map_err(err)?;
            let was = info.retention_hours;
            if hours > was {
                client.increase_retention(&name, hours).await.map_err(err)?;
            } else if hours < was {
                client.decrease_retention(&name, hours).await.map_err(err)?;
            }
            // Confirmed like create and delete (stderr: stdout stays for data).
            if hours == was {
                eprintln!("retention of stream {name} is already {hours} h");
            } else {
                eprintln!("retention of stream {name}: {was} h -> {hours} h");
            }
        }
    }
    Ok(())
}

/// `stream describe`'s JSON object (SPEC §5); fields in this order.
#[derive(Debug, Serialize)]
struct Description {
    name: String,
    retention_hours: u32,
    limits: serde_json::Value,
    /// CREATING, ACTIVE, UPDATING or DELETING.
    status: &'static str,
    /// Every stream is provisioned (on-demand mode is not built yet).
    mode: &'static str,
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
        Description {
            name: info.name.clone(),
            retention_hours: info.retention_hours,
            limits,
            status: info.status.name(),
            mode: "provisioned",
            shards: info
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
                })
                .collect(),
        }
    }
}

/// `put`: one record from DATA, or one per standard-input line, sent in chunks of what has
/// arrived (at most one batch), each acknowledged before the next is sent, so the output
/// and the shard keep input order. Throttled records are retried by the client.
async fn put(client: &Client, args: PutArgs) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    if let Some(data) = args.data {
        let entries = vec![Entry::new(args.key, data.into_bytes())];
        return put_chunk(client, &args.name, entries, &mut out).await;
    }
    let (tx, mut rx) = mpsc::channel::<Result<Vec<u8>, String>>(PUT_QUEUE_LINES);
    // Standard input is read on its own thread: blocking reads must not stall the runtime.
    std::thread::spawn(move || read_lines(tx));
    while let Some(first) = rx.recv().await {
        let mut bytes = 0;
        let mut entries = Vec::new();
        let mut next = Some(first);
        while let Some(line) = next.take() {
            let line = line?;
            bytes += line.len();
            entries.push(Entry::new(args.key.clone(), line));
            if entries.len() < PUT_CHUNK_RECORDS && bytes < PUT_CHUNK_BYTES {
                next = rx.try_recv().ok();
            }
        }
        put_chunk(client, &args.name, entries, &mut out).await?;
    }
    Ok(())
}

/// Sends standard input's lines (without their `\n` or `\r\n`) until its end.
fn read_lines(tx: mpsc::Sender<Result<Vec<u8>, String>>) {
    let mut stdin = std::io::stdin().lock();
    loop {
        let mut line = Vec::new();
        match stdin.read_until(b'\n', &mut line) {
            Ok(0) => return,
            Ok(_) => {
                if line.last() == Some(&b'\n') {
                    line.pop();
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                }
                if tx.blocking_send(Ok(line)).is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = tx.blocking_send(Err(format!("cannot read standard input: {e}")));
                return;
            }
        }
    }
}

/// Puts `entries`, prints the acknowledged ones in order, stops at the first failure.
async fn put_chunk(
    client: &Client,
    stream: &str,
    entries: Vec<Entry>,
    out: &mut impl Write,
) -> Result<(), String> {
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

/// `read`: follows the shard from `--from`; stops at the tip (an empty answer with nothing
/// behind it) unless `--follow`, and after `--limit` records.
async fn read(client: &Client, args: ReadArgs) -> Result<(), String> {
    let limit = args.limit.unwrap_or(u64::MAX);
    let options = |printed: u64| ReadOptions {
        max_records: (limit - printed).min(10_000) as u32,
        wait_ms: if args.follow { FOLLOW_WAIT_MS } else { 0 },
        ..ReadOptions::default()
    };
    if limit == 0 {
        return Ok(());
    }
    let mut reader = client
        .shard_reader(&args.name, args.shard, args.from, options(0))
        .await
        .map_err(err)?;
    let mut out = std::io::stdout().lock();
    let mut printed = 0u64;
    while printed < limit {
        reader.set_options(options(printed));
        let Some(answer) = reader.next().await.map_err(err)? else {
            break; // a closed shard, fully read
        };
        for r in answer.records.iter().take((limit - printed) as usize) {
            let line = RecordJson {
                shard: args.shard,
                seq: r.seq,
                key: &r.key,
                ts_ms: r.ts_ms,
                data: base64::engine::general_purpose::STANDARD.encode(&r.data),
            };
            let json = serde_json::to_string(&line).map_err(|e| e.to_string())?;
            writeln!(out, "{json}").map_err(io_err)?;
            printed += 1;
        }
        out.flush().map_err(io_err)?;
        // An empty answer without a long-poll wait: the reader is at the tip.
        if answer.records.is_empty() && !args.follow {
            break;
        }
    }
    Ok(())
}
