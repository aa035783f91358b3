//! The `spate` binary end to end: `serve` in a child process on port 0 and a temp dir, and
//! every client command against it, checking the exact output formats of SPEC §5, exit
//! statuses, signals and a restart on the same data directory. Every wait is on a
//! condition (a line printed, a process exiting), bounded by a watchdog.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;
use spate_protocol::routing::{even_range, hash_key};

const SPATE: &str = env!("CARGO_BIN_EXE_spate");
/// Longest any child process may take before the test kills it and fails.
const WATCHDOG: Duration = Duration::from_secs(120);

/// A `spate serve` child process.
struct Serve {
    child: Option<Child>,
    _stdout: BufReader<ChildStdout>,
    addr: String,
    /// Whether the line said the server speaks TLS (`listening on ADDR (tls)`).
    tls: bool,
    stderr_path: std::path::PathBuf,
}

impl Serve {
    fn start(data_dir: &Path, log_dir: &Path) -> Serve {
        Serve::start_with(data_dir, log_dir, "127.0.0.1:0", &[])
    }

    /// `serve` on `listen` with `extra` arguments.
    fn start_with(data_dir: &Path, log_dir: &Path, listen: &str, extra: &[&str]) -> Serve {
        let stderr_path = log_dir.join(format!("serve-{}.log", unique()));
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let mut child = Command::new(SPATE)
            .args([
                "serve",
                "--listen",
                listen,
                "--metrics-listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(data_dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn spate serve");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let Some(addr) = line.strip_prefix("listening on ") else {
            let _ = child.kill();
            panic!(
                "serve printed {line:?}; stderr: {}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        };
        let (addr, tls) = match addr.trim_end().strip_suffix(" (tls)") {
            Some(addr) => (addr.to_string(), true),
            None => (addr.trim_end().to_string(), false),
        };
        assert!(line.ends_with('\n'), "one whole line: {line:?}");
        let parsed: std::net::SocketAddr = addr.parse().expect("HOST:PORT");
        assert_eq!(parsed.ip().to_string(), "127.0.0.1");
        assert_ne!(parsed.port(), 0, "the bound port, not the requested 0");
        Serve {
            child: Some(child),
            _stdout: stdout,
            addr,
            tls,
            stderr_path,
        }
    }

    /// What the server logged so far.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Sends `signal` and waits for the process to exit.
    fn stop(mut self, signal: i32) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
        let rc = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill");
        let status = wait_with_watchdog(&mut child);
        assert!(
            status.success(),
            "serve exited with {status}; stderr: {}",
            std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
        );
        status
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn unique() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Waits for `child` to exit, polling its status; kills it and fails past the watchdog.
fn wait_with_watchdog(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + WATCHDOG;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("child {} did not exit within {WATCHDOG:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs `spate --server ADDR ARGS`, feeding `stdin`; returns its output.
fn spate(addr: &str, args: &[&str], stdin: &[u8]) -> Output {
    spate_env(addr, args, stdin, &[])
}

/// As `spate`, with `env` set in its environment.
fn spate_env(addr: &str, args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(SPATE)
        .arg("--server")
        .arg(addr)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn spate");
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        stdout.read_to_end(&mut v).unwrap();
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        stderr.read_to_end(&mut v).unwrap();
        v
    });
    let status = wait_with_watchdog(&mut child);
    writer.join().unwrap();
    Output {
        status,
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    }
}

/// Runs a command that must succeed; returns its stdout.
fn ok(addr: &str, args: &[&str], stdin: &[u8]) -> String {
    let out = spate(addr, args, stdin);
    assert!(
        out.status.success(),
        "spate {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a command that must fail with a one-line reason containing `needle`.
fn fails(addr: &str, args: &[&str], stdin: &[u8], needle: &str) -> Output {
    let out = spate(addr, args, stdin);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "spate {args:?} succeeded");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    assert!(stderr.starts_with("spate: "), "{stderr:?}");
    assert!(stderr.contains(needle), "{stderr:?} lacks {needle:?}");
    out
}

fn shard_of(key: &str, shards: u32) -> u32 {
    let h = hash_key(key.as_bytes());
    (0..shards)
        .find(|&s| {
            let (lo, hi) = even_range(s, shards);
            (lo..=hi).contains(&h)
        })
        .unwrap()
}

/// `read` output: (shard, seq, key, ts_ms, data) per line, checking each line's shape.
fn parse_read(stdout: &str) -> Vec<(u64, u64, String, i64, Vec<u8>)> {
    stdout
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap();
            let obj = v.as_object().unwrap();
            let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
            keys.sort_unstable();
            assert_eq!(keys, ["data", "key", "seq", "shard", "ts_ms"], "{line}");
            let data = base64::engine::general_purpose::STANDARD
                .decode(v["data"].as_str().unwrap())
                .unwrap();
            (
                v["shard"].as_u64().unwrap(),
                v["seq"].as_u64().unwrap(),
                v["key"].as_str().unwrap().to_string(),
                v["ts_ms"].as_i64().unwrap(),
                data,
            )
        })
        .collect()
}

fn rfc3339(ts_ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ts_ms) * 1_000_000).unwrap();
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn check_description(json: &str, name: &str, shards: u32, limits: &str) -> Value {
    let v: Value = serde_json::from_str(json.trim_end()).unwrap();
    assert_eq!(json.lines().count(), 1, "one JSON object on one line");
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "bytes",
            "created",
            "created_ms",
            "disk_bytes",
            "encryption",
            "key_epochs",
            "last_scaling",
            "limits",
            "map_version",
            "master_key_id",
            "max_record_bytes",
            "max_write_mib_per_s",
            "mode",
            "name",
            "records",
            "retention_hours",
            "shard_level_metrics",
            "shards",
            "status"
        ]
    );
    let created_ms = v["created_ms"].as_i64().unwrap();
    let now_ms = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
    assert!(
        (now_ms - 600_000..=now_ms + 1000).contains(&created_ms),
        "{created_ms}"
    );
    assert_eq!(v["created"], rfc3339(created_ms));
    assert_eq!(v["max_record_bytes"], 1 << 20);
    assert_eq!(v["name"], name);
    assert_eq!(v["status"], "ACTIVE");
    assert_eq!(v["mode"], "provisioned");
    assert_eq!(v["max_write_mib_per_s"], Value::Null);
    assert_eq!(v["retention_hours"], 24);
    assert_eq!(v["limits"], limits);
    assert_eq!(v["encryption"], "none");
    assert_eq!(v["key_epochs"], 0);
    assert!(v["master_key_id"].is_null());
    let list = v["shards"].as_array().unwrap();
    assert_eq!(list.len(), shards as usize);
    for (i, s) in list.iter().enumerate() {
        let mut keys: Vec<&str> = s.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "adjacent_parent",
                "bytes",
                "core",
                "disk_bytes",
                "first_seq",
                "hash_key_end",
                "hash_key_start",
                "id",
                "last_seq",
                "parent",
                "records",
                "state"
            ]
        );
        let (lo, hi) = even_range(i as u32, shards);
        assert_eq!(s["id"], i);
        assert_eq!(s["state"], "open");
        assert_eq!(s["hash_key_start"], lo.to_string());
        assert_eq!(s["hash_key_end"], hi.to_string());
        assert!(s["parent"].is_null());
        assert!(s["core"].is_u64());
    }
    v
}

#[test]
fn serve_streams_put_read_follow_delete_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let server = Serve::start(&data, dir.path());
    let addr = server.addr.clone();
    let a = addr.as_str();

    // Streams.
    assert_eq!(
        ok(
            a,
            &["stream", "create", "clicks", "--shards", "2", "--limits", "off", "--wait"],
            b""
        ),
        ""
    );
    assert_eq!(
        ok(
            a,
            &["stream", "create", "other", "--shards", "1", "--wait"],
            b""
        ),
        ""
    );
    assert_eq!(ok(a, &["stream", "list"], b""), "clicks\nother\n");
    assert_eq!(
        ok(a, &["stream", "list", "--json"], b""),
        "[\"clicks\",\"other\"]\n"
    );
    let d = check_description(
        &ok(a, &["stream", "describe", "clicks"], b""),
        "clicks",
        2,
        "off",
    );
    assert!(d["shards"][0]["first_seq"].is_null() && d["shards"][0]["last_seq"].is_null());
    check_description(
        &ok(a, &["stream", "describe", "other"], b""),
        "other",
        1,
        "kinesis",
    );
    fails(
        a,
        &["stream", "create", "clicks", "--shards", "1"],
        b"",
        "StreamExists",
    );

    // Put: one record from DATA, then one per stdin line, in order.
    let shard = shard_of("user-1", 2);
    assert_eq!(
        ok(a, &["put", "clicks", "--key", "user-1", "hello"], b""),
        format!("{shard} 0\n")
    );
    let lines = ok(a, &["put", "clicks", "--key", "user-1"], b"a\nb\r\n\nlast");
    assert_eq!(
        lines,
        (1..=4)
            .map(|s| format!("{shard} {s}\n"))
            .collect::<String>(),
        "one line per record, in input order"
    );
    let d = check_description(
        &ok(a, &["stream", "describe", "clicks"], b""),
        "clicks",
        2,
        "off",
    );
    assert_eq!(d["shards"][shard as usize]["first_seq"], 0);
    assert_eq!(d["shards"][shard as usize]["last_seq"], 4);
    // Counts: five records, their bytes (data, keys and framing) and the disk they hold.
    assert_eq!(d["shards"][shard as usize]["records"], 5);
    assert_eq!(d["records"], 5);
    let bytes = d["shards"][shard as usize]["bytes"].as_u64().unwrap();
    assert!((5 * 6..64 << 10).contains(&bytes), "{bytes}");
    assert!(d["disk_bytes"].as_u64().unwrap() >= bytes);

    // Read from every position.
    let s = shard.to_string();
    let read = |from: &str, extra: &[&str]| {
        let mut args = vec!["read", "clicks", "--shard", s.as_str(), "--from", from];
        args.extend_from_slice(extra);
        parse_read(&ok(a, &args, b""))
    };
    let all = read("oldest", &[]);
    let datas: Vec<&[u8]> = all.iter().map(|r| r.4.as_slice()).collect();
    assert_eq!(datas, [&b"hello"[..], b"a", b"b", b"", b"last"]);
    for (i, r) in all.iter().enumerate() {
        assert_eq!(
            (r.0, r.1, r.2.as_str()),
            (u64::from(shard), i as u64, "user-1")
        );
        assert!(r.3 > 1_600_000_000_000, "ts_ms is ms since the epoch");
    }
    assert!(read("latest", &[]).is_empty(), "nothing after the tip");
    let seqs =
        |rs: Vec<(u64, u64, String, i64, Vec<u8>)>| rs.iter().map(|r| r.1).collect::<Vec<_>>();
    assert_eq!(seqs(read("at:2", &[])), [2, 3, 4]);
    assert_eq!(seqs(read("after:2", &[])), [3, 4]);
    assert_eq!(seqs(read("oldest", &["--limit", "2"])), [0, 1]);
    assert_eq!(seqs(read("at:1", &["--limit", "1"])), [1]);
    let ts = all[1].3;
    let expected: Vec<u64> = all.iter().filter(|r| r.3 >= ts).map(|r| r.1).collect();
    assert_eq!(seqs(read(&format!("time:{}", rfc3339(ts)), &[])), expected);
    assert_eq!(
        seqs(read("time:2000-01-01T00:00:00Z", &[])),
        [0, 1, 2, 3, 4]
    );
    let other_shard = (1 - shard).to_string();
    assert_eq!(
        ok(
            a,
            &[
                "read",
                "clicks",
                "--shard",
                &other_shard,
                "--from",
                "oldest"
            ],
            b""
        ),
        ""
    );

    // Follow: the existing records, then one put after they were printed.
    let mut follower = Command::new(SPATE)
        .args([
            "--server", a, "read", "clicks", "--shard", &s, "--from", "oldest", "--follow",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = follower.id();
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        // Kills a stuck follower so the reads below fail instead of hanging. It is told when
        // the follower has been reaped, so it never signals a reused pid.
        if finished.recv_timeout(WATCHDOG).is_err() {
            // SAFETY: kill(2) on our child, which is not reaped before `done` is sent.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    });
    let mut followed = BufReader::new(follower.stdout.take().unwrap());
    let mut next_line = || {
        let mut line = String::new();
        followed.read_line(&mut line).unwrap();
        line
    };
    for i in 0..5 {
        assert_eq!(parse_read(&next_line())[0].1, i);
    }
    assert_eq!(
        ok(a, &["put", "clicks", "--key", "user-1", "new"], b""),
        format!("{shard} 5\n")
    );
    let new = parse_read(&next_line());
    assert_eq!((new[0].1, new[0].4.as_slice()), (5, &b"new"[..]));
    follower.kill().unwrap();
    let _ = done.send(());
    watchdog.join().unwrap();
    follower.wait().unwrap();
    // --follow with --limit stops by itself.
    assert_eq!(seqs(read("after:4", &["--follow", "--limit", "1"])), [5]);

    // Errors: one line, non-zero.
    fails(
        a,
        &["read", "nope", "--shard", "0", "--from", "oldest"],
        b"",
        "UnknownStream",
    );
    fails(a, &["stream", "describe", "nope"], b"", "UnknownStream");
    fails(a, &["put", "nope", "--key", "k", "v"], b"", "UnknownStream");
    fails(
        a,
        &["read", "clicks", "--shard", "7", "--from", "oldest"],
        b"",
        "UnknownShard",
    );

    // Out-of-range settings are refused before anything is sent, naming the value.
    fails(
        a,
        &[
            "stream",
            "create",
            "big",
            "--shards",
            "1",
            "--max-record-bytes",
            "20000000",
        ],
        b"",
        "20000000 is not in 1..=10485760",
    );
    // The largest limit a stream may choose takes a record of exactly that much data, even
    // under the longest key; a byte more is refused before it is sent.
    ok(
        a,
        &[
            "stream",
            "create",
            "huge",
            "--shards",
            "1",
            "--limits",
            "off",
            "--max-record-bytes",
            "10485760",
            "--wait",
        ],
        b"",
    );
    let blob: Vec<u8> = (0..10u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
    let blob_file = dir.path().join("blob");
    std::fs::write(&blob_file, &blob).unwrap();
    let long_key = "k".repeat(256);
    let blob_path = blob_file.to_str().unwrap();
    assert_eq!(
        ok(
            a,
            &["put", "huge", "--key", &long_key, "--file", blob_path],
            b""
        ),
        "0 0\n"
    );
    let back = spate(
        a,
        &[
            "read",
            "huge",
            "--format",
            "raw",
            "--delimiter",
            "\\n",
            "--limit",
            "1",
        ],
        b"",
    );
    assert!(back.status.success());
    assert_eq!(back.stdout.len(), blob.len() + 1);
    assert!(
        back.stdout[..blob.len()] == blob[..],
        "the record came back changed"
    );
    std::fs::write(&blob_file, [&blob[..], b"+"].concat()).unwrap();
    fails(
        a,
        &["put", "huge", "--key", "k", "--file", blob_path],
        b"",
        "record data of 10485761 bytes exceeds the stream's limit of 10485760",
    );
    assert_eq!(ok(a, &["stream", "delete", "huge"], b""), "");
    // --explicit-hash-key routes by that hash key, whatever the partition key's MD5.
    ok(
        a,
        &[
            "stream", "create", "hk", "--shards", "2", "--limits", "off", "--wait",
        ],
        b"",
    );
    let max = u128::MAX.to_string();
    for (hash, shard) in [("0", "0"), (max.as_str(), "1")] {
        let out = ok(
            a,
            &["put", "hk", "--key", "same", "--explicit-hash-key", hash],
            b"one\ntwo\n",
        );
        assert_eq!(out, format!("{shard} 0\n{shard} 1\n"));
    }
    fails(
        a,
        &[
            "put",
            "hk",
            "--key",
            "k",
            "--explicit-hash-key",
            "340282366920938463463374607431768211456",
            "x",
        ],
        b"",
        "--explicit-hash-key",
    );
    assert_eq!(ok(a, &["stream", "delete", "hk"], b""), "");
    fails(
        a,
        &["stream", "set-retention", "other", "--hours", "9000"],
        b"",
        "9000 is not in 1..=8760",
    );

    // A position past the end: the code names the kind once, the message the numbers.
    let out = fails(
        a,
        &["read", "clicks", "--shard", "0", "--from", "at:999999"],
        b"",
        "InvalidArgument (104): sequence number 999999 is not in the shard",
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("invalid argument"));
    // At the next sequence number (where a reader that read everything stands): nothing
    // yet, and not an error; after it is past the end.
    let d: Value = serde_json::from_str(&ok(a, &["stream", "describe", "clicks"], b"")).unwrap();
    let next = d["shards"][0]["last_seq"].as_u64().map_or(0, |s| s + 1);
    let at_next = format!("at:{next}");
    assert_eq!(
        ok(
            a,
            &["read", "clicks", "--shard", "0", "--from", &at_next],
            b""
        ),
        ""
    );
    fails(
        a,
        &[
            "read",
            "clicks",
            "--shard",
            "0",
            "--from",
            &format!("after:{next}"),
        ],
        b"",
        &format!("not written yet (the next is {next})"),
    );

    // Retention: confirmed on stderr, visible in describe.
    let out = spate(
        a,
        &["stream", "set-retention", "other", "--hours", "48"],
        b"",
    );
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "retention of stream other: 24 h -> 48 h\n"
    );
    let v: Value =
        serde_json::from_str(ok(a, &["stream", "describe", "other"], b"").trim_end()).unwrap();
    assert_eq!(v["retention_hours"], 48);
    fails(
        a,
        &["stream", "set-retention", "other", "--hours", "0"],
        b"",
        "",
    );

    // Delete.
    assert_eq!(ok(a, &["stream", "delete", "other"], b""), "");
    assert_eq!(ok(a, &["stream", "list"], b""), "clicks\n");
    fails(a, &["stream", "delete", "other"], b"", "UnknownStream");

    // SIGTERM: a clean exit; a restart on the same directory serves the same records.
    server.stop(libc::SIGTERM);
    let server = Serve::start(&data, dir.path());
    let a = server.addr.as_str();
    assert_eq!(ok(a, &["stream", "list"], b""), "clicks\n");
    let again = parse_read(&ok(
        a,
        &["read", "clicks", "--shard", &s, "--from", "oldest"],
        b"",
    ));
    let mut expected = all.clone();
    expected.push(new[0].clone());
    assert_eq!(again, expected);
    server.stop(libc::SIGINT);
}

#[test]
fn put_prints_what_was_acknowledged_then_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let server = Serve::start(dir.path(), dir.path());
    let a = server.addr.as_str();
    ok(
        a,
        &[
            "stream", "create", "s", "--shards", "1", "--limits", "off", "--wait",
        ],
        b"",
    );
    let mut input = b"first\n".to_vec();
    input.extend(std::iter::repeat_n(b'x', (1 << 20) + 1));
    input.extend_from_slice(b"\nnever\n");
    let out = fails(a, &["put", "s", "--key", "k"], &input, "RecordTooLarge");
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "0 0\n");
    let stored = parse_read(&ok(
        a,
        &["read", "s", "--shard", "0", "--from", "oldest"],
        b"",
    ));
    assert_eq!(
        stored.len(),
        1,
        "nothing after the failed record was stored"
    );
    assert_eq!(stored[0].4, b"first");
    // A Kinesis-limited stream throttles a burst; put retries until every line is in.
    ok(
        a,
        &["stream", "create", "limited", "--shards", "1", "--wait"],
        b"",
    );
    let lines: String = (0..1500).map(|i| format!("{i}\n")).collect();
    let out = ok(a, &["put", "limited", "--key", "k"], lines.as_bytes());
    let expected: String = (0..1500).map(|i| format!("0 {i}\n")).collect();
    assert_eq!(out, expected);
    server.stop(libc::SIGTERM);
}

#[test]
fn failures_are_one_line_and_non_zero() {
    // Nothing listens on port 1.
    fails(
        "127.0.0.1:1",
        &["stream", "list"],
        b"",
        "cannot connect to 127.0.0.1:1",
    );
    // A command-line error: one line, status 2.
    let out = fails(
        "127.0.0.1:1",
        &["read", "s", "--shard", "0", "--from", "yesterday"],
        b"",
        "--from",
    );
    assert_eq!(out.status.code(), Some(2));
    let out = fails("127.0.0.1:1", &["stream", "create", "s"], b"", "--shards");
    assert_eq!(out.status.code(), Some(2));
    // Flags that parse alone but not together are command-line errors too, found before
    // anything is sent.
    let out = fails(
        "127.0.0.1:1",
        &["read", "s", "--from", "at:1"],
        b"",
        "need --shard",
    );
    assert_eq!(out.status.code(), Some(2));
    let out = fails(
        "127.0.0.1:1",
        &["consume", "s", "--group", "g", "--from", "after:5"],
        b"",
        "a group starts at --from oldest, latest or time",
    );
    assert_eq!(out.status.code(), Some(2));
    // A command with its subcommand missing prints its full help (what there is to run)
    // on stderr, status 2.
    for (args, lists) in [(vec![], "serve"), (vec!["stream"], "set-retention")] {
        let out = Command::new(SPATE).args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(
            stderr.contains("Usage:") && stderr.contains("Commands:") && stderr.contains(lists),
            "{args:?}: {stderr}"
        );
    }
    // Startup errors of serve end with one `spate:` line (logs may precede it).
    let dir = tempfile::tempdir().unwrap();
    for args in [
        vec!["--listen", "127.0.0.1:0", "--cores", "9999"],
        vec!["--listen", "not-an-address"],
        vec![
            "--listen",
            "127.0.0.1:0",
            "--config",
            "/nonexistent/spate.toml",
        ],
    ] {
        let out = Command::new(SPATE)
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.path())
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?} printed {:?}", out.stdout);
        let last = stderr.lines().last().unwrap_or_default();
        assert!(last.starts_with("spate: "), "{args:?}: {stderr}");
    }
    // A core's own port (the listen port + 1 + its index) that is taken is named as such.
    // (Another test may take a port between the look and the bind: look again.)
    let (listen, port, _taken) = (0..20)
        .find_map(|_| {
            let listen = free_listen_addr();
            let port: u16 = listen.rsplit(':').next().unwrap().parse().unwrap();
            let taken = std::net::TcpListener::bind(("127.0.0.1", port + 1)).ok()?;
            Some((listen, port, taken))
        })
        .expect("a free pair of ports");
    let out = Command::new(SPATE)
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path())
        .args([
            "--listen",
            &listen,
            "--cores",
            "0",
            "--metrics-listen",
            "off",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(&format!(
            "spate: cannot start: cannot listen on 127.0.0.1:{} (core 0's own port",
            port + 1
        )),
        "{stderr}"
    );
    // --help goes to stdout with status 0.
    let out = Command::new(SPATE).arg("--help").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("serve"));
}

/// A server whose standard error was closed (`spate serve 2>&1 >log | head -1`) goes on
/// serving, dropping the log lines it cannot write, and still stops cleanly on SIGTERM (a
/// failed log write used to panic a core and leave the process hung, deaf to SIGTERM).
#[test]
fn a_server_whose_stderr_is_gone_serves_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(SPATE)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader of its standard error goes away before the server has started.
    drop(child.stderr.take());
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let addr = line
        .trim_end()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{line:?}"))
        .to_string();
    // Requests log (stream created, …): every such line now fails to be written.
    ok(
        &addr,
        &[
            "stream", "create", "s", "--shards", "1", "--limits", "off", "--wait",
        ],
        b"",
    );
    assert_eq!(
        ok(&addr, &["put", "s", "--key", "k"], b"a\nb\n"),
        "0 0\n0 1\n"
    );
    // SAFETY: kill(2) on our child, not yet reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let status = wait_with_watchdog(&mut child);
    assert!(status.success(), "{status:?}");
}

/// A reader that stops early (`spate read s | head -1`, `spate --help | head`) ends the
/// command quietly: status 141 (what SIGPIPE gives `cat`), nothing on standard error — not
/// a panic, not a `spate:` error line.
#[test]
fn a_reader_that_stops_early_ends_the_command_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let server = Serve::start(&dir.path().join("data"), dir.path());
    let addr = server.addr.clone();
    ok(
        &addr,
        &[
            "stream", "create", "s", "--shards", "1", "--limits", "off", "--wait",
        ],
        b"",
    );
    // ~300 KB of `read` output: more than a pipe holds, so the writer meets the closed end.
    let lines: String = (0..3000).map(|i| format!("record {i:060}\n")).collect();
    ok(&addr, &["put", "s", "--key", "k"], lines.as_bytes());
    let mut child = Command::new(SPATE)
        .args(["--server", &addr, "read", "s"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert!(first.contains("\"seq\""), "{first}");
    drop(stdout);
    let mut stderr = child.stderr.take().unwrap();
    let status = wait_with_watchdog(&mut child);
    let mut err = String::new();
    stderr.read_to_string(&mut err).unwrap();
    assert_eq!(status.code(), Some(141), "stderr: {err}");
    assert!(err.is_empty(), "stderr: {err}");
    // Help to a reader that has gone: status 0, no panic.
    let mut child = Command::new(SPATE)
        .arg("--help")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let mut stderr = child.stderr.take().unwrap();
    let status = wait_with_watchdog(&mut child);
    let mut err = String::new();
    stderr.read_to_string(&mut err).unwrap();
    assert!(status.success(), "stderr: {err}");
    assert!(err.is_empty(), "stderr: {err}");
}

/// Durability end to end (issue 3): a client writes continuously to a `spate serve` process
/// that is killed with SIGKILL at a random moment; after a restart every acknowledged record
/// is read back exactly once, at the sequence number it was acknowledged with, in order per
/// shard and per key. Repeated on the same data directory.
#[test]
fn sigkill_of_the_server_loses_no_acknowledged_record() {
    use spate_client::{Client, Entry, Position, StreamConfig};
    use std::collections::BTreeMap;

    const SHARDS: u32 = 4;
    const KEYS: u64 = 32;
    let dir = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("durability test seed {seed}");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // (shard, seq) -> (key, counter) of every acknowledged record.
    let mut acked: BTreeMap<(u32, u64), (String, u64)> = BTreeMap::new();
    let mut counters = vec![0u64; KEYS as usize];
    let mut rng = seed | 1;
    for round in 0..3 {
        let serve = Serve::start(dir.path(), logs.path());
        let addr = serve.addr.clone();
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let kill_after = 200 + (rng % 2000) as usize;
        let pid = serve.child.as_ref().unwrap().id();
        let before = acked.len();
        rt.block_on(async {
            let client = Client::connect(addr.as_str()).await.expect("connect");
            if round == 0 {
                let cfg = StreamConfig::new(SHARDS).limits(spate_client::Limits::Off);
                client.create_stream("dur", &cfg).await.expect("create");
            }
            let mut killed = false;
            'writing: loop {
                let entries: Vec<(u64, u64, Entry)> = (0..64)
                    .map(|i| {
                        let k = (i * 7 + acked.len() as u64) % KEYS;
                        let c = counters[k as usize];
                        counters[k as usize] += 1;
                        (k, c, Entry::new(format!("device-{k}"), format!("{k}:{c}")))
                    })
                    .collect();
                let sent: Vec<Entry> = entries.iter().map(|e| e.2.clone()).collect();
                let results = client.put_records("dur", sent).await;
                for ((k, c, _), r) in entries.iter().zip(results) {
                    match r {
                        Ok(put) => {
                            let prev =
                                acked.insert((put.shard_id, put.seq), (format!("device-{k}"), *c));
                            assert!(prev.is_none(), "seed {seed}: seq acknowledged twice");
                        }
                        Err(_) if killed => break 'writing,
                        Err(e) => panic!("seed {seed}: put failed before the kill: {e}"),
                    }
                }
                if !killed && acked.len() - before >= kill_after {
                    // SAFETY: kill(2) on our own child, not yet reaped.
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                    killed = true;
                }
            }
        });
        drop(serve);
    }
    // Records whose acknowledgement was lost with the connection may be stored or not;
    // every acknowledged one must be there, exactly once, where it was acknowledged.
    let serve = Serve::start(dir.path(), logs.path());
    let addr = serve.addr.clone();
    rt.block_on(async {
        let client = Client::connect(addr.as_str())
            .await
            .expect("connect after restart");
        for shard in 0..SHARDS {
            let mut it = client
                .get_iterator("dur", shard, Position::TrimHorizon)
                .await
                .unwrap();
            let mut seqs = Vec::new();
            let mut last_counter: BTreeMap<String, u64> = BTreeMap::new();
            loop {
                let r = client
                    .get_records(&it, 10_000, 4 << 20, 0)
                    .await
                    .expect("read back");
                if r.records.is_empty() {
                    break;
                }
                for rec in &r.records {
                    seqs.push(rec.seq);
                    let data = String::from_utf8(rec.data.to_vec()).unwrap();
                    let counter: u64 = data.split(':').nth(1).unwrap().parse().unwrap();
                    if let Some(prev) = last_counter.insert(rec.key.clone(), counter) {
                        assert!(counter > prev, "seed {seed}: key {} out of order", rec.key);
                    }
                    if let Some((key, c)) = acked.get(&(shard, rec.seq)) {
                        assert_eq!(
                            (&rec.key, *c),
                            (key, counter),
                            "seed {seed}: seq {} holds other data",
                            rec.seq
                        );
                    }
                }
                it = r.next_iterator.expect("open shard");
            }
            let n = seqs.len() as u64;
            assert_eq!(
                seqs,
                (0..n).collect::<Vec<_>>(),
                "seed {seed}: shard {shard} not dense/once"
            );
            for ((s, seq), _) in acked.range((shard, 0)..=(shard, u64::MAX)) {
                assert!(
                    *seq < n,
                    "seed {seed}: acknowledged seq {seq} of shard {s} lost"
                );
            }
        }
    });
    serve.stop(libc::SIGTERM);
}

/// The command line as users of aws kinesis, kcat or rpk expect it (issue 12): creates
/// that answer CREATING and the commands that wait for ACTIVE, put from files, with a
/// delimiter and keyed by a JSON field, read of a whole stream in every format, describe's
/// counts, and per-command help.
#[test]
fn creates_wait_puts_take_files_and_fields_reads_take_streams_and_formats() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("spate.toml");
    // Every create answers before its shards are open.
    std::fs::write(&config, "create_answer_ms = 0\n").unwrap();
    let config = config.to_str().unwrap();
    let server = Serve::start_with(
        &dir.path().join("data"),
        dir.path(),
        "127.0.0.1:0",
        &["--config", config, "--log-format", "json"],
    );
    let a = server.addr.as_str();

    // CREATING at once, then `stream wait`; `create --wait` waits by itself.
    let out = spate(
        a,
        &["stream", "create", "s", "--shards", "3", "--limits", "off"],
        b"",
    );
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "creating stream s with 3 shards (status CREATING); `spate stream wait s` waits until it is ACTIVE\n"
    );
    let out = spate(a, &["stream", "wait", "s"], b"");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stderr), "stream s is ACTIVE\n");
    let out = spate(
        a,
        &["stream", "create", "t", "--shards", "2", "--wait"],
        b"",
    );
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "creating stream t with 2 shards ...\ncreated stream t with 2 shards\n"
    );
    let d: Value = serde_json::from_str(&ok(a, &["stream", "describe", "t"], b"")).unwrap();
    assert_eq!(d["status"], "ACTIVE");
    fails(
        a,
        &["stream", "wait", "nope"],
        b"",
        "stream nope does not exist",
    );

    // put --file: one record per file, binary and multi-line as they are.
    let f1 = dir.path().join("one.bin");
    let f2 = dir.path().join("two.txt");
    std::fs::write(&f1, b"line1\nline2\x00bin\xff").unwrap();
    std::fs::write(&f2, b"second").unwrap();
    let k = shard_of("k", 3);
    assert_eq!(
        ok(
            a,
            &[
                "put",
                "s",
                "--key",
                "k",
                "--file",
                f1.to_str().unwrap(),
                "--file",
                f2.to_str().unwrap()
            ],
            b""
        ),
        format!("{k} 0\n{k} 1\n")
    );
    fails(
        a,
        &["put", "s", "--key", "k", "--file", "/nonexistent/x"],
        b"",
        "cannot read /nonexistent/x",
    );
    // --delimiter: records end with NUL instead of a newline.
    assert_eq!(
        ok(
            a,
            &["put", "s", "--key", "k", "--delimiter", "\\0"],
            b"a\nb\0c\0"
        ),
        format!("{k} 2\n{k} 3\n")
    );
    // --key-field: JSON lines, each keyed by its field (a string, or a number as written).
    let (u1, seven) = (shard_of("u1", 3), shard_of("7", 3));
    let out = ok(
        a,
        &["put", "s", "--key-field", "user"],
        b"{\"user\":\"u1\",\"x\":1}\n{\"user\":7}\n",
    );
    let acks: Vec<(u32, u64)> = out
        .lines()
        .map(|l| {
            let (s, q) = l.split_once(' ').unwrap();
            (s.parse().unwrap(), q.parse().unwrap())
        })
        .collect();
    assert_eq!(acks.len(), 2);
    assert_eq!((acks[0].0, acks[1].0), (u1, seven));
    let out = fails(
        a,
        &["put", "s", "--key-field", "user"],
        b"{\"user\":\"u1\"}\n{\"x\":1}\n",
        "record 2 of standard input: no field \"user\"",
    );
    assert_eq!(
        out.stdout.len(),
        4,
        "the record before the bad one was put: {out:?}"
    );

    // read without --shard: every shard, each in order, shards in id order.
    let all = parse_read(&ok(a, &["read", "s"], b""));
    assert_eq!(all.len(), 7);
    let shards: Vec<u64> = all.iter().map(|r| r.0).collect();
    assert!(shards.windows(2).all(|w| w[0] <= w[1]), "{shards:?}");
    let of_k: Vec<&[u8]> = all
        .iter()
        .filter(|r| r.0 == u64::from(k) && r.2 == "k")
        .map(|r| r.4.as_slice())
        .collect();
    assert_eq!(
        of_k,
        [&b"line1\nline2\x00bin\xff"[..], b"second", b"a\nb", b"c"]
    );
    fails(
        a,
        &["read", "s", "--from", "at:1"],
        b"",
        "at:SEQ and after:SEQ need --shard",
    );
    // --format text and raw print the data alone.
    let ks = k.to_string();
    let shard_k: Vec<_> = all.iter().filter(|r| r.0 == u64::from(k)).collect();
    let text: String = shard_k
        .iter()
        .map(|r| format!("{}\n", String::from_utf8_lossy(&r.4)))
        .collect();
    assert_eq!(
        ok(a, &["read", "s", "--shard", &ks, "--format", "text"], b""),
        text
    );
    let raw = spate(
        a,
        &[
            "read",
            "s",
            "--shard",
            &ks,
            "--format",
            "raw",
            "--delimiter",
            "\\x1e",
        ],
        b"",
    );
    assert!(raw.status.success());
    let expected: Vec<u8> = shard_k
        .iter()
        .flat_map(|r| [r.4.clone(), vec![0x1e]].concat())
        .collect();
    assert_eq!(raw.stdout, expected);
    // --follow of the whole stream (with --limit, so that it ends): every record, once.
    let mut followed = parse_read(&ok(a, &["read", "s", "--follow", "--limit", "7"], b""));
    followed.sort_by_key(|r| (r.0, r.1));
    let mut sorted = all.clone();
    sorted.sort_by_key(|r| (r.0, r.1));
    assert_eq!(followed, sorted);

    // describe counts what was put.
    let d: Value = serde_json::from_str(&ok(a, &["stream", "describe", "s"], b"")).unwrap();
    assert_eq!(d["records"], 7);
    assert_eq!(d["shards"][k as usize]["records"], shard_k.len());
    assert_eq!(d["max_record_bytes"], 1 << 20);

    // Each command's help shows its own flags, each described; serve's has no --server.
    let help = |args: &[&str]| {
        let out = Command::new(SPATE)
            .args(args)
            .arg("--help")
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let serve = help(&["serve"]);
    assert!(!serve.contains("--server"), "{serve}");
    assert!(serve.contains("--data-dir <DIR>"));
    let put = help(&["put"]);
    for flag in [
        "--key <KEY>",
        "--key-field <FIELD>",
        "--delimiter <DELIMITER>",
        "--file <FILE>",
        "--server <HOST:PORT>",
    ] {
        let line = put
            .lines()
            .find(|l| l.contains(flag))
            .unwrap_or_else(|| panic!("{flag}: {put}"));
        assert!(
            line.trim().len() > flag.len() + 4,
            "{flag} has a description: {line:?}"
        );
    }
    // `top --once`: one frame from the metrics endpoint the server advertises.
    let frame = ok(a, &["top", "--once", "--interval", "0.2"], b"");
    let header = frame
        .lines()
        .find(|l| l.starts_with("STREAM"))
        .expect(&frame);
    assert!(
        header.contains("IN rec/s") && header.contains("PUT p99 ms"),
        "{frame}"
    );
    let row: Vec<&str> = frame
        .lines()
        .find(|l| l.starts_with("s "))
        .unwrap_or_else(|| panic!("no row for stream s: {frame}"))
        .split_whitespace()
        .collect();
    assert_eq!(row.last(), Some(&"7"), "7 records put into s: {frame}");
    assert!(frame.contains("ENGINE  cores"), "{frame}");
    assert!(frame.contains("CORES   core 0 "), "{frame}");
    assert!(
        frame.contains("WAITS   appends waiting/s  round "),
        "{frame}"
    );
    assert!(!frame.contains('\x1b'), "no terminal codes with --once");
    let retention = help(&["stream", "set-retention"]);
    assert!(
        retention.contains("The new retention window in hours"),
        "{retention}"
    );
    assert!(help(&["stream", "create"]).contains("--wait"));

    // JSON logs: every line one object; control operations at info; an error answered to
    // a client once, with the request id, peer, operation and stream.
    let log = server.log();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    let message = |v: &Value| {
        v["fields"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        lines
            .iter()
            .any(|v| message(v) == "create stream t with 2 shards: done" && v["level"] == "INFO"),
        "{log}"
    );
    let unknown: Vec<&Value> = lines
        .iter()
        .filter(|v| v["fields"]["stream"] == "nope" && v["fields"]["op"] == "DescribeStream")
        .collect();
    assert!(!unknown.is_empty(), "{log}");
    let f = &unknown[0]["fields"];
    assert!(
        f["request_id"].is_u64() && f["peer"].as_str().is_some_and(|p| p.contains("127.0.0.1")),
        "{f}"
    );
    // Values as people write them, not Rust's debug text (`Some(…)`, `[…]`).
    assert!(
        f["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{f}"
    );
    let listening = lines
        .iter()
        .find(|v| message(v) == "listening")
        .unwrap_or_else(|| panic!("{log}"));
    let cores = listening["fields"]["cores"].as_str().unwrap_or_default();
    assert!(
        cores.starts_with("127.0.0.1:") && !cores.contains('['),
        "{listening}"
    );
    assert!(f["code"].as_str().unwrap().contains("UnknownStream"), "{f}");
    server.stop(libc::SIGTERM);
}

/// A port P such that P and the 16 after it are free now (a restarted server must come
/// back on the same address, with its cores on P+1.. as before). Taken below the kernel's
/// ephemeral range, which port-0 binds and outgoing connections of other tests draw from.
fn free_listen_addr() -> String {
    let ephemeral_low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let (lo, hi) = (10_000u16, ephemeral_low.saturating_sub(32).max(10_100));
    let mut x = u64::from(std::process::id()) ^ (unique() << 32);
    for _ in 0..200 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let p = lo + ((x >> 33) % u64::from(hi - lo)) as u16;
        if (0..=16).all(|i| std::net::TcpListener::bind(("127.0.0.1", p + i)).is_ok()) {
            return format!("127.0.0.1:{p}");
        }
    }
    panic!("no free port range below {ephemeral_low}");
}

/// SIGTERM with a producer, a follower and its long-poll in flight (issue 12): nothing in
/// flight is reset (each request is answered, or told ShuttingDown, and nothing is applied
/// after the shutdown began), the producer and the follower reconnect to the restarted
/// server by themselves and go on, every acknowledged record is stored, and the follower
/// prints every record exactly once.
#[test]
fn sigterm_drains_and_producers_and_followers_go_on_after_a_restart() {
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let listen = free_listen_addr();
    let server = Serve::start_with(&data, dir.path(), &listen, &[]);
    let a = server.addr.clone();
    ok(
        &a,
        &[
            "stream", "create", "s", "--shards", "2", "--limits", "off", "--wait",
        ],
        b"",
    );

    // The follower: the whole stream, long-polling at the tip.
    let follower_log = dir.path().join("follower.log");
    let mut follower = Command::new(SPATE)
        .args(["--server", &a, "read", "s", "--follow"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&follower_log).unwrap())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let (seen_tx, seen) = std::sync::mpsc::channel::<()>();
    let reader = {
        let lines = lines.clone();
        let mut out = BufReader::new(follower.stdout.take().unwrap());
        std::thread::spawn(move || loop {
            let mut line = String::new();
            if out.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            lines.lock().unwrap().push(line);
            let _ = seen_tx.send(());
        })
    };
    let wait_for = |n: usize| {
        let deadline = Instant::now() + WATCHDOG;
        while lines.lock().unwrap().len() < n {
            assert!(
                Instant::now() < deadline,
                "the follower printed {} of {n}; it said: {}",
                lines.lock().unwrap().len(),
                std::fs::read_to_string(&follower_log).unwrap_or_default()
            );
            let _ = seen.recv_timeout(Duration::from_millis(100));
        }
    };

    // The producer: JSON lines keyed by a field, fed without pause until told to stop.
    let mut producer = Command::new(SPATE)
        .args(["--server", &a, "put", "s", "--key-field", "k"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent = Arc::new(Mutex::new(Vec::<String>::new()));
    let feeder = {
        let mut input = producer.stdin.take().unwrap();
        let (stop, sent) = (stop.clone(), sent.clone());
        std::thread::spawn(move || {
            for i in 0u64.. {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    return; // closing stdin ends the producer
                }
                let line = format!("{{\"k\":\"key-{}\",\"i\":{i}}}", i % 10);
                if writeln!(input, "{line}")
                    .and_then(|()| input.flush())
                    .is_err()
                {
                    return;
                }
                sent.lock().unwrap().push(line);
                if i % 20 == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        })
    };
    let mut producer_out = producer.stdout.take().unwrap();
    let mut producer_err = producer.stderr.take().unwrap();
    let acks_reader = std::thread::spawn(move || {
        let mut s = String::new();
        producer_out.read_to_string(&mut s).unwrap();
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        producer_err.read_to_string(&mut s).unwrap();
        s
    });

    // SIGTERM while both run; the server drains and exits 0; it comes back on the same
    // address and both go on by themselves.
    wait_for(200);
    server.stop(libc::SIGTERM);
    // Down until the follower has noticed (its next read finds nobody) and said so.
    let deadline = Instant::now() + WATCHDOG;
    while !std::fs::read_to_string(&follower_log)
        .unwrap()
        .contains("waiting for")
    {
        assert!(
            Instant::now() < deadline,
            "the follower never said the server went away"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let server = Serve::start_with(&data, dir.path(), &listen, &[]);
    assert_eq!(server.addr, a);
    let before = lines.lock().unwrap().len();
    wait_for(before + 200);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    feeder.join().unwrap();
    let status = wait_with_watchdog(&mut producer);
    let acks = acks_reader.join().unwrap();
    let producer_stderr = err_reader.join().unwrap();
    assert!(status.success(), "the producer failed: {producer_stderr}");

    // Every acknowledged record is stored, with its data, and the follower printed every
    // record of the stream exactly once.
    let all = parse_read(&ok(&a, &["read", "s"], b""));
    let stored: std::collections::HashMap<(u64, u64), Vec<u8>> =
        all.iter().map(|r| ((r.0, r.1), r.4.clone())).collect();
    let sent = sent.lock().unwrap().clone();
    let acks: Vec<(u64, u64)> = acks
        .lines()
        .map(|l| {
            let (s, q) = l.split_once(' ').unwrap();
            (s.parse().unwrap(), q.parse().unwrap())
        })
        .collect();
    assert!(acks.len() >= 400, "{} acks", acks.len());
    for (j, ack) in acks.iter().enumerate() {
        assert_eq!(
            stored.get(ack),
            Some(&sent[j].as_bytes().to_vec()),
            "ack {j}"
        );
    }
    assert_eq!(
        stored.len(),
        acks.len(),
        "nothing but what was acknowledged"
    );
    wait_for(all.len());
    let mut followed = parse_read(&lines.lock().unwrap().concat());
    followed.sort_by_key(|r| (r.0, r.1));
    let mut expected = all.clone();
    expected.sort_by_key(|r| (r.0, r.1));
    assert_eq!(followed, expected, "each record once, none missing");
    let said = std::fs::read_to_string(&follower_log).unwrap();
    assert!(
        said.contains("waiting for") && said.contains("is back"),
        "{said}"
    );
    assert!(!said.to_lowercase().contains("reset"), "{said}");
    assert!(server.log().contains("recovery done"), "{}", server.log());
    follower.kill().unwrap();
    follower.wait().unwrap();
    reader.join().unwrap();
    server.stop(libc::SIGTERM);
}

/// Resharding from the command line (issue 8): split at the middle, scale, merge; describe
/// shows states, lineage and the shard-map version; `read NAME` gives every record, parents
/// before children; `read NAME --follow` goes on into the children of a split made while it
/// follows.
#[test]
fn split_merge_scale_and_a_follower_that_crosses_a_split() {
    let dir = tempfile::tempdir().unwrap();
    let server = Serve::start(&dir.path().join("data"), dir.path());
    let a = server.addr.as_str();
    ok(
        a,
        &[
            "stream", "create", "r", "--shards", "1", "--limits", "off", "--wait",
        ],
        b"",
    );
    let lines: String = (0..10).map(|i| format!("old-{i}\n")).collect();
    ok(a, &["put", "r", "--key", "k1"], lines.as_bytes());

    // A follower of the whole stream, started before the split.
    let mut follower = Command::new(SPATE)
        .args(["--server", a, "read", "r", "--from", "oldest", "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = follower.id();
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if finished.recv_timeout(WATCHDOG).is_err() {
            // SAFETY: kill(2) on our child, which is not reaped before `done` is sent.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    });
    let mut followed = BufReader::new(follower.stdout.take().unwrap());
    let mut next_line = || {
        let mut line = String::new();
        followed.read_line(&mut line).unwrap();
        parse_read(&line).remove(0)
    };
    for i in 0..10 {
        assert_eq!(next_line().1, i);
    }

    let out: Value =
        serde_json::from_str(&ok(a, &["stream", "split", "r", "--shard", "0"], b"")).unwrap();
    assert_eq!(out["map_version"], 2);
    assert_eq!(out["new_shards"], serde_json::json!([1, 2]));
    let d: Value = serde_json::from_str(&ok(a, &["stream", "describe", "r"], b"")).unwrap();
    assert_eq!(d["map_version"], 2);
    assert_eq!(d["mode"], "provisioned");
    let shards = d["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 3);
    assert_eq!(shards[0]["state"], "closed");
    assert_eq!(shards[0]["last_seq"], 9);
    assert_eq!(shards[1]["parent"], 0);
    assert_eq!(shards[1]["hash_key_end"], ((1u128 << 127) - 1).to_string());
    assert_eq!(shards[2]["hash_key_start"], (1u128 << 127).to_string());

    // New records go to the children; the follower finds them there.
    let child = if hash_key(b"k1") < (1 << 127) { 1 } else { 2 };
    assert_eq!(
        ok(a, &["put", "r", "--key", "k1", "new"], b""),
        format!("{child} 0\n")
    );
    let new = next_line();
    assert_eq!((new.0, new.1, new.4.as_slice()), (child, 0, &b"new"[..]));
    follower.kill().unwrap();
    let _ = done.send(());
    watchdog.join().unwrap();
    follower.wait().unwrap();

    // Scale to 4, then merge the first two; read gives everything, parents first.
    let out: Value =
        serde_json::from_str(&ok(a, &["stream", "scale", "r", "--shards", "4"], b"")).unwrap();
    assert_eq!(out["new_shards"].as_array().unwrap().len(), 4);
    let d: Value = serde_json::from_str(&ok(a, &["stream", "describe", "r"], b"")).unwrap();
    let open: Vec<u64> = d["shards"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["state"] == "open")
        .map(|s| s["id"].as_u64().unwrap())
        .collect();
    assert_eq!(open.len(), 4);
    let out: Value = serde_json::from_str(&ok(
        a,
        &[
            "stream",
            "merge",
            "r",
            "--shard",
            &open[0].to_string(),
            "--with",
            &open[1].to_string(),
        ],
        b"",
    ))
    .unwrap();
    assert_eq!(out["map_version"], 4);
    fails(
        a,
        &["stream", "merge", "r", "--shard", "0", "--with", "1"],
        b"",
        "closed",
    );
    fails(
        a,
        &["stream", "split", "r", "--shard", "99"],
        b"",
        "no shard 99",
    );
    let all = parse_read(&ok(a, &["read", "r"], b""));
    let data: Vec<&[u8]> = all.iter().map(|r| r.4.as_slice()).collect();
    assert_eq!(data.len(), 11);
    assert_eq!(data[10], b"new", "the parent's records come first");

    // A shard of one hash key cannot be split: said in those words, not as a key of 0.
    ok(
        a,
        &[
            "stream", "create", "one", "--shards", "1", "--limits", "off", "--wait",
        ],
        b"",
    );
    let max = u128::MAX.to_string();
    ok(
        a,
        &["stream", "split", "one", "--shard", "0", "--at", &max],
        b"",
    );
    fails(
        a,
        &["stream", "split", "one", "--shard", "2"],
        b"",
        "shard 2 of one holds a single hash key",
    );
    // The server's complaint names the flag.
    fails(
        a,
        &["stream", "split", "one", "--shard", "1", "--at", "0"],
        b"",
        "invalid --at: 0",
    );

    // --follow from a time reads the children from that time too, as their parents.
    ok(
        a,
        &[
            "stream", "create", "tf", "--shards", "1", "--limits", "off", "--wait",
        ],
        b"",
    );
    ok(a, &["put", "tf", "--key", "k1", "parent"], b"");
    ok(a, &["stream", "split", "tf", "--shard", "0"], b"");
    ok(a, &["put", "tf", "--key", "k1", "child-old"], b"");
    let ts_of = |data: &[u8]| {
        parse_read(&ok(a, &["read", "tf"], b""))
            .into_iter()
            .filter(|r| r.4 == data)
            .map(|r| r.3)
            .next_back()
            .unwrap()
    };
    let old_ts = ts_of(b"child-old");
    // The first record stamped after it (the clock may not have moved for the next put).
    let mut t = old_ts;
    while t <= old_ts {
        ok(a, &["put", "tf", "--key", "k1", "child-new"], b"");
        t = ts_of(b"child-new");
    }
    let from = format!("time:{}", rfc3339(t));
    let followed = parse_read(&ok(
        a,
        &["read", "tf", "--from", &from, "--follow", "--limit", "1"],
        b"",
    ));
    assert_eq!(followed[0].4, b"child-new", "{followed:?}");
    assert_eq!(followed[0].3, t);
    server.stop(libc::SIGTERM);
}

#[test]
fn consumers_subscriptions_and_a_group_that_resumes_after_its_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let server = Serve::start(&dir.path().join("data"), dir.path());
    let a = server.addr.as_str();
    ok(
        a,
        &[
            "stream", "create", "f", "--shards", "2", "--limits", "off", "--wait",
        ],
        b"",
    );
    ok(a, &["stream", "shard-metrics", "f", "on"], b"");
    let d: Value = serde_json::from_str(&ok(a, &["stream", "describe", "f"], b"")).unwrap();
    assert_eq!(d["shard_level_metrics"], true);
    // Keys k0..k9 spread over both shards, four records each.
    for k in 0..10 {
        let lines: String = (0..4).map(|j| format!("r-{}\n", k + 10 * j)).collect();
        ok(
            a,
            &["put", "f", "--key", &format!("k{k}")],
            lines.as_bytes(),
        );
    }

    // Consumers: register, list, describe, subscribe, deregister.
    let c: Value =
        serde_json::from_str(&ok(a, &["consumer", "register", "f", "billing"], b"")).unwrap();
    assert_eq!(c["name"], "billing");
    assert!(c["consumer_id"].as_u64().unwrap() > 0);
    fails(
        a,
        &["consumer", "register", "f", "billing"],
        b"",
        "ConsumerExists",
    );
    let list: Value = serde_json::from_str(&ok(a, &["consumer", "list", "f"], b"")).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    let d: Value =
        serde_json::from_str(&ok(a, &["consumer", "describe", "f", "billing"], b"")).unwrap();
    assert_eq!(d["consumer_id"], c["consumer_id"]);
    let shard0 = (0..40)
        .filter(|i| shard_of(&format!("k{}", i % 10), 2) == 0)
        .count();
    let pushed = ok(
        a,
        &[
            "subscribe",
            "f",
            "--consumer",
            "billing",
            "--shard",
            "0",
            "--limit",
            &shard0.to_string(),
        ],
        b"",
    );
    let pushed = parse_read(&pushed);
    assert_eq!(pushed.len(), shard0);
    assert!(pushed.windows(2).all(|w| w[0].1 < w[1].1), "in order");
    ok(a, &["consumer", "deregister", "f", "billing"], b"");
    fails(
        a,
        &["subscribe", "f", "--consumer", "billing", "--shard", "0"],
        b"",
        "UnknownConsumer",
    );

    // A group: the first member takes 25 records and checkpoints them; the second member
    // of the same group goes on with the other 15, none again.
    let first = ok(
        a,
        &[
            "consume", "f", "--group", "etl", "--limit", "25", "--format", "text",
        ],
        b"",
    );
    let second = ok(
        a,
        &[
            "consume", "f", "--group", "etl", "--limit", "15", "--format", "text",
        ],
        b"",
    );
    let mut all: Vec<&str> = first.lines().chain(second.lines()).collect();
    assert_eq!(first.lines().count(), 25);
    assert_eq!(second.lines().count(), 15);
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 40, "every record once across the two members");
    let g: Value = serde_json::from_str(&ok(a, &["group", "describe", "f", "etl"], b"")).unwrap();
    assert_eq!(g["group"], "etl");
    assert_eq!(g["start"], "oldest");
    assert_eq!(g["members"].as_array().unwrap().len(), 0, "both left");
    let shards = g["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 2);
    for s in shards {
        assert_eq!(s["lag_records"], 0, "{s}");
        assert!(
            s["checkpoint"].as_str().unwrap().starts_with("after:"),
            "{s}"
        );
    }
    assert_eq!(ok(a, &["group", "list", "f"], b""), "etl\n");
    // Shard-level metrics: `top` lists the stream's shards.
    let frame = ok(a, &["top", "--once", "--interval", "0.2"], b"");
    let table = frame
        .split("BUSIEST SHARDS")
        .nth(1)
        .unwrap_or_else(|| panic!("no busiest shards: {frame}"));
    for shard in ["0", "1"] {
        assert!(
            table.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.first() == Some(&"f") && f.get(1) == Some(&shard)
            }),
            "no row for shard {shard}: {frame}"
        );
    }
    // A member stopped by SIGTERM (or Ctrl-C) leaves the group on its way out, so that its
    // shards go to the others at once rather than after the lease timeout.
    let mut member = Command::new(SPATE)
        .args(["--server", a, "consume", "f", "--group", "etl"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = BufReader::new(member.stderr.take().unwrap());
    let mut line = String::new();
    said.read_line(&mut line).unwrap();
    assert!(line.starts_with("joined group etl on f as "), "{line:?}");
    let members = || {
        let g: Value =
            serde_json::from_str(&ok(a, &["group", "describe", "f", "etl"], b"")).unwrap();
        g["members"].as_array().unwrap().len()
    };
    assert_eq!(members(), 1);
    // SAFETY: kill(2) on our child, not yet reaped.
    unsafe { libc::kill(member.id() as libc::pid_t, libc::SIGTERM) };
    let status = wait_with_watchdog(&mut member);
    let mut rest = String::new();
    said.read_to_string(&mut rest).unwrap();
    assert_eq!(status.code(), Some(143), "{rest}");
    assert!(
        rest.contains("stopped by SIGTERM; left group etl"),
        "{rest:?}"
    );
    assert_eq!(members(), 0, "it left");
    ok(a, &["group", "delete", "f", "etl"], b"");
    fails(a, &["group", "describe", "f", "etl"], b"", "UnknownGroup");
    fails(
        a,
        &["consume", "f", "--group", "g", "--from", "at:3"],
        b"",
        "a group starts at --from oldest, latest or time",
    );
    server.stop(libc::SIGTERM);
}

/// A CA and a server certificate for 127.0.0.1 and localhost signed by it, made with rcgen,
/// and a second, unrelated CA: written as PEM into `dir` (ca.pem, server.pem,
/// server-key.pem, other-ca.pem).
fn write_test_pki(dir: &Path) {
    // Distinct names: a verifier finds a certificate's issuer by name.
    let ca_params = |name: &str| {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        p
    };
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca_params("Spate CLI test CA").self_signed(&ca_key).unwrap();
    let other_key = rcgen::KeyPair::generate().unwrap();
    let other = ca_params("Unrelated CA").self_signed(&other_key).unwrap();
    let server_key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let server = params.signed_by(&server_key, &ca, &ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("other-ca.pem"), other.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), server.pem()).unwrap();
    std::fs::write(dir.join("server-key.pem"), server_key.serialize_pem()).unwrap();
}

#[test]
fn serve_and_client_commands_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    write_test_pki(dir.path());
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let (ca, cert, key) = (path("ca.pem"), path("server.pem"), path("server-key.pem"));
    let data = dir.path().join("data");
    let serve = Serve::start_with(
        &data,
        dir.path(),
        "127.0.0.1:0",
        &["--tls-cert", &cert, "--tls-key", &key, "--tls-only"],
    );
    assert!(serve.tls, "the start line says tls");
    let a = serve.addr.as_str();
    // `spate --server A --tls --ca CA ARGS`: the flags before the command.
    let run = |rest: &[&str], stdin: &[u8]| {
        let mut args = vec!["--tls", "--ca", ca.as_str()];
        args.extend_from_slice(rest);
        ok(a, &args, stdin)
    };
    run(
        &["stream", "create", "secure", "--shards", "2", "--wait"],
        b"",
    );
    let put = run(
        &["put", "secure", "--key", "device-1"],
        b"one\ntwo\nthree\n",
    );
    assert_eq!(put.lines().count(), 3, "{put}");
    let read = run(&["read", "secure", "--format", "text"], b"");
    assert_eq!(read, "one\ntwo\nthree\n");
    // The flags work after the command too, and from the environment.
    let described = ok(
        a,
        &["stream", "describe", "secure", "--tls", "--ca", &ca],
        b"",
    );
    check_description(&described, "secure", 2, "kinesis");
    let env = spate_env(
        a,
        &["stream", "list"],
        b"",
        &[("SPATE_TLS", "1"), ("SPATE_CA", ca.as_str())],
    );
    assert!(
        env.status.success(),
        "{}",
        String::from_utf8_lossy(&env.stderr)
    );
    assert_eq!(String::from_utf8(env.stdout).unwrap(), "secure\n");
    // `top` reads the metrics endpoint over HTTPS.
    let frame = run(&["top", "--once", "--interval", "0.2"], b"");
    assert!(frame.contains("(metrics https://"), "{frame}");
    assert!(
        frame.lines().any(|l| l.starts_with("secure ")),
        "no row for the stream: {frame}"
    );
    // Plaintext, or TLS with the wrong CA: one clear line, non-zero.
    fails(a, &["stream", "list"], b"", "TLS");
    fails(
        a,
        &["--tls", "--ca", &path("other-ca.pem"), "stream", "list"],
        b"",
        "UnknownIssuer",
    );
    fails(
        a,
        &["--tls", "--ca", &path("missing.pem"), "stream", "list"],
        b"",
        "missing.pem",
    );
    serve.stop(libc::SIGTERM);
    // --tls-only without a certificate refuses to start, saying why.
    let out = Command::new(SPATE)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
            "--tls-only",
            "--data-dir",
        ])
        .arg(dir.path().join("data-2"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("plaintext = false"), "{stderr}");
}

#[test]
fn auth_principals_policies_and_the_audit_trail_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let serve = Serve::start_with(&data, dir.path(), "127.0.0.1:0", &["--auth", "on"]);
    let a = serve.addr.clone();
    let root: Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("root.credentials")).unwrap())
            .unwrap();
    let root_secret = dir.path().join("root.secret");
    std::fs::write(
        &root_secret,
        format!("{}\n", root["secret"].as_str().unwrap()),
    )
    .unwrap();
    let root_id = root["access_key_id"].as_str().unwrap().to_string();
    let as_root = |rest: &[&str], stdin: &[u8]| {
        let mut args = vec![
            "--access-key-id",
            root_id.as_str(),
            "--secret-file",
            root_secret.to_str().unwrap(),
        ];
        args.extend_from_slice(rest);
        ok(&a, &args, stdin)
    };
    // Without credentials: one clear line.
    fails(&a, &["stream", "list"], b"", "only authenticated clients");
    // The credentials file the server wrote serves as a secret file as it is: it names
    // the access key id too.
    let root_file = data.join("root.credentials");
    assert_eq!(
        ok(
            &a,
            &[
                "--secret-file",
                root_file.to_str().unwrap(),
                "stream",
                "list"
            ],
            b""
        ),
        ""
    );
    as_root(
        &["stream", "create", "clicks", "--shards", "1", "--wait"],
        b"",
    );
    let created: Value =
        serde_json::from_str(&as_root(&["auth", "principal", "create", "app"], b"")).unwrap();
    let app_id = created["access_key_id"].as_str().unwrap().to_string();
    let app_secret = created["secret"].as_str().unwrap().to_string();
    assert!(app_id.starts_with("SPAK"), "{created}");
    let doc = r#"{"Statement":[{"Effect":"Allow","Action":["spate:PutRecord*","spate:DescribeStream"],"Resource":"clicks"}]}"#;
    fails(
        &a,
        &["auth", "policy", "put", "app", "writer"],
        b"",
        "--document",
    );
    as_root(
        &["auth", "policy", "put", "app", "writer", "--file", "-"],
        doc.as_bytes(),
    );
    let got = as_root(&["auth", "policy", "get", "app", "writer"], b"");
    assert_eq!(got.trim(), doc);
    let list: Value = serde_json::from_str(&as_root(&["auth", "principal", "list"], b"")).unwrap();
    let app = list
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "app")
        .unwrap();
    assert_eq!(app["policies"], serde_json::json!(["writer"]));
    assert_eq!(app["enabled"], true);
    // The app may put (credentials from the environment), not create.
    let env = [
        ("SPATE_ACCESS_KEY_ID", app_id.as_str()),
        ("SPATE_SECRET", app_secret.as_str()),
    ];
    let put = spate_env(&a, &["put", "clicks", "--key", "k", "hello"], b"", &env);
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    let create = spate_env(
        &a,
        &["stream", "create", "other", "--shards", "1"],
        b"",
        &env,
    );
    assert!(!create.status.success());
    let stderr = String::from_utf8_lossy(&create.stderr);
    assert!(
        stderr.contains("AccessDenied") && stderr.contains("spate:CreateStream"),
        "{stderr}"
    );
    as_root(&["auth", "principal", "disable", "app"], b"");
    let put = spate_env(&a, &["put", "clicks", "--key", "k", "again"], b"", &env);
    assert!(!put.status.success());
    assert!(String::from_utf8_lossy(&put.stderr).contains("AuthenticationFailed"));
    // The trail: the newest lines, then offline verification of the files.
    let tail = as_root(&["audit", "tail", "--lines", "1000"], b"");
    let lines: Vec<Value> = tail
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for action in [
        "spate:CreateStream",
        "spate:CreatePrincipal",
        "spate:PutPolicy",
        "spate:UpdatePrincipal",
    ] {
        assert!(
            lines
                .iter()
                .any(|l| l["action"] == action && l["result"] == "ok"),
            "{action} in {tail}"
        );
    }
    assert!(lines
        .iter()
        .any(|l| l["action"] == "spate:CreateStream" && l["result"] == "AccessDenied"));
    as_root(&["auth", "principal", "delete", "app"], b"");
    serve.stop(libc::SIGTERM);
    // Nothing the server wrote is for other users: the data dir it made is 0700 and every
    // file and directory in it its user's only (principals' keys, the trail, the records).
    fn private(path: &Path) {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{} has mode {mode:o}", path.display());
        if path.is_dir() {
            for e in std::fs::read_dir(path).unwrap() {
                private(&e.unwrap().path());
            }
        }
    }
    private(&data);
    for name in ["auth.bin", "catalog.bin", "audit"] {
        assert!(data.join(name).exists(), "{name}");
    }
    let out = Command::new(SPATE)
        .args(["audit", "verify", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["lines"].as_u64().unwrap() >= lines.len() as u64);
    // An edited line fails verification.
    let audit_dir = data.join("audit");
    let file = std::fs::read_dir(&audit_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replacen("\"clicks\"", "\"klicks\"", 1)).unwrap();
    let out = Command::new(SPATE)
        .args(["audit", "verify", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("fails verification"));
}

/// Writes a key file of `(id, key byte)` master keys, readable by its owner only.
fn write_key_file(path: &Path, keys: &[(u32, u8)]) {
    use std::os::unix::fs::PermissionsExt;
    let text: String = keys
        .iter()
        .map(|&(id, byte)| {
            let key = base64::engine::general_purpose::STANDARD.encode([byte; 32]);
            format!("{id} {key}\n")
        })
        .collect();
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Encryption at rest from the command line: a server without master keys refuses an
/// encrypted stream in one line; with `--key-file`, encrypted streams (provisioned and
/// on-demand) take and give back records, describe says how they are kept, stop and start
/// change it for new records, `keys rotate` moves to a master key appended to the file,
/// and a restart reads everything back.
#[test]
fn encrypted_streams_start_stop_rotate_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let describe = |a: &str, name: &str| -> Value {
        serde_json::from_str(ok(a, &["stream", "describe", name], b"").trim_end()).unwrap()
    };
    let kept = |d: &Value| {
        (
            d["encryption"].as_str().unwrap().to_string(),
            d["key_epochs"].as_u64().unwrap(),
            d["master_key_id"].as_u64(),
        )
    };
    let text = |a: &str, name: &str| ok(a, &["read", name, "--format", "text"], b"");

    let serve = Serve::start(&data, dir.path());
    let a = serve.addr.clone();
    let sealed = [
        "stream",
        "create",
        "sealed",
        "--shards",
        "2",
        "--encryption",
        "aes-256-gcm",
    ];
    fails(&a, &sealed, b"", "KeyUnavailable");
    ok(&a, &["stream", "create", "plain", "--shards", "1"], b"");
    fails(
        &a,
        &["stream", "start-encryption", "plain"],
        b"",
        "KeyUnavailable",
    );
    fails(&a, &["keys", "rotate"], b"", "KeyUnavailable");
    serve.stop(libc::SIGTERM);

    let keys = dir.path().join("master.keys");
    write_key_file(&keys, &[(1, 0x11)]);
    let key_flag = ["--key-file", keys.to_str().unwrap()];
    let serve = Serve::start_with(&data, dir.path(), "127.0.0.1:0", &key_flag);
    let a = serve.addr.clone();
    let out = spate(&a, &sealed, b"");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("encrypted (aes-256-gcm)"), "{said}");
    ok(&a, &["put", "sealed", "--key", "k"], b"one\ntwo\n");
    assert_eq!(text(&a, "sealed"), "one\ntwo\n");
    assert_eq!(
        kept(&describe(&a, "sealed")),
        ("aes-256-gcm".into(), 1, Some(1))
    );
    assert_eq!(kept(&describe(&a, "plain")), ("none".into(), 0, None));
    ok(
        &a,
        &[
            "stream",
            "create",
            "elastic",
            "--mode",
            "on-demand",
            "--encryption",
            "aes-256-gcm",
        ],
        b"",
    );
    let d = describe(&a, "elastic");
    assert_eq!(
        (d["mode"].as_str(), d["encryption"].as_str()),
        (Some("on-demand"), Some("aes-256-gcm"))
    );
    // Its write ceiling: the server's default (200 MiB/s) until one is set.
    assert_eq!(d["max_write_mib_per_s"], 200);
    ok(
        &a,
        &[
            "stream",
            "update-mode",
            "elastic",
            "on-demand",
            "--max-write-mib",
            "64",
        ],
        b"",
    );
    assert_eq!(describe(&a, "elastic")["max_write_mib_per_s"], 64);

    // Stop: new records in the clear, the sealed ones still read; start: a new data key.
    ok(&a, &["stream", "stop-encryption", "sealed"], b"");
    assert_eq!(kept(&describe(&a, "sealed")), ("none".into(), 1, None));
    ok(&a, &["put", "sealed", "--key", "k"], b"three\n");
    ok(&a, &["stream", "start-encryption", "sealed"], b"");
    assert_eq!(
        kept(&describe(&a, "sealed")),
        ("aes-256-gcm".into(), 2, Some(1))
    );
    ok(&a, &["put", "sealed", "--key", "k"], b"four\n");
    assert_eq!(text(&a, "sealed"), "one\ntwo\nthree\nfour\n");
    let out = spate(
        &a,
        &[
            "stream",
            "start-encryption",
            "plain",
            "--encryption",
            "none",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(2), "a command-line error");

    // Rotate onto a master key appended to the file: one JSON object.
    write_key_file(&keys, &[(1, 0x11), (2, 0x22)]);
    let rotated: Value = serde_json::from_str(ok(&a, &["keys", "rotate"], b"").trim_end()).unwrap();
    assert_eq!(
        rotated,
        serde_json::json!({"master_key_id": 2, "streams": 2})
    );
    let (encryption, epochs, master) = kept(&describe(&a, "sealed"));
    assert_eq!((encryption.as_str(), master), ("aes-256-gcm", Some(2)));
    assert!(epochs >= 3, "a new data key: {epochs}");
    serve.stop(libc::SIGTERM);

    // A restart with the same keys reads every record, sealed or not.
    let serve = Serve::start_with(&data, dir.path(), "127.0.0.1:0", &key_flag);
    let a = serve.addr.clone();
    assert_eq!(text(&a, "sealed"), "one\ntwo\nthree\nfour\n");
    assert_eq!(kept(&describe(&a, "sealed")).2, Some(2));
    assert_eq!(kept(&describe(&a, "plain")), ("none".into(), 0, None));
    serve.stop(libc::SIGTERM);
}
