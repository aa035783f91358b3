//! Shared helpers for Spate's end-to-end tests (the `spate` test binary) and the crash
//! writer child process.

use std::path::Path;

use spate_engine::config::EngineConfig;
use spate_protocol::batch::{BatchBuilder, BatchHeader, RecordIter};

/// A configuration small enough for tests: small extents, volumes and journal files, so that
/// rolls, checkpoints, retention and recovery all happen within a few megabytes.
pub fn test_config(data_dir: &Path) -> EngineConfig {
    EngineConfig {
        segment_age_max_ms: 1000,
        retention_check_interval_ms: 3_600_000,
        // Wire-level tests put right after a create: it answers once the stream is ACTIVE.
        create_answer_ms: 3_600_000,
        ..EngineConfig::small(data_dir)
    }
}

/// A two-worker tokio runtime for a test's clients.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// `base` with the keys of a TOML fragment laid over it (`""` changes nothing).
pub fn config_with(base: EngineConfig, toml_fragment: &str) -> EngineConfig {
    let mut table = toml::Value::try_from(&base).expect("config serialises");
    let over: toml::Table = toml::from_str(toml_fragment).expect("override TOML parses");
    for (k, v) in over {
        table.as_table_mut().expect("a table").insert(k, v);
    }
    table.try_into().expect("overridden config is valid")
}

/// A `test_server` child process; stopped cleanly (stdin closed) when dropped.
pub struct ChildServer {
    pub child: std::process::Child,
    pub addr: std::net::SocketAddr,
}

impl ChildServer {
    /// Starts `bin` (the `test_server` binary) on `dir` with TOML overrides, on the test
    /// configuration or, with `default_config`, the embedded default one.
    pub fn start(
        bin: impl AsRef<std::ffi::OsStr>,
        dir: &Path,
        overrides: &str,
        default_config: bool,
    ) -> ChildServer {
        use std::io::BufRead;
        let mut cmd = std::process::Command::new(bin);
        cmd.arg(dir).arg(overrides);
        if default_config {
            cmd.arg("default");
        }
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("test_server starts");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("test_server prints its address");
        let addr = line
            .trim()
            .strip_prefix("LISTEN ")
            .unwrap_or_else(|| panic!("test_server said {line:?}"))
            .parse()
            .expect("an address");
        ChildServer { child, addr }
    }

    /// Shuts the server down cleanly and waits for it.
    pub fn stop(mut self) {
        drop(self.child.stdin.take());
        assert!(
            self.child.wait().expect("wait").success(),
            "test_server failed"
        );
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// Resident memory of a process in bytes (`/proc/<pid>/statm`).
pub fn rss_bytes(pid: u32) -> u64 {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).expect("statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages");
    // SAFETY: sysconf has no preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64
}

/// Polls `cond` every 10 ms until it holds; panics with `what` after `limit`.
pub fn wait_until(what: &str, limit: std::time::Duration, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting until {what}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// A batch of `n` records whose data encodes `(tag, i)` so a reader can check identity.
pub fn tagged_batch(key: &str, tag: u64, n: u32, data_bytes: usize) -> Vec<u8> {
    let mut b = BatchBuilder::new();
    for i in 0..n {
        let mut data = format!("{tag}:{i}:").into_bytes();
        data.resize(data_bytes.max(data.len()), b'x');
        b.push(key.as_bytes(), &data, None).expect("valid record");
    }
    b.finish()
}

/// Decodes a read's concatenated batches into `(seq, key, data)` for `start_seq..end_seq`.
pub fn records(bytes: &[u8], start_seq: u64, end_seq: u64) -> Vec<(u64, Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let h = spate_protocol::batch::verify_stored(
            &bytes[pos..pos
                + BatchHeader::decode(&bytes[pos..])
                    .expect("header")
                    .batch_len as usize],
        )
        .expect("stored batch verifies");
        let batch = &bytes[pos..pos + h.batch_len as usize];
        for (i, r) in RecordIter::new(batch, h.record_count).enumerate() {
            let seq = h.base_seq + i as u64;
            if (start_seq..end_seq).contains(&seq) {
                let r = r.expect("record");
                out.push((seq, r.key.to_vec(), r.data.to_vec()));
            }
        }
        pos += h.batch_len as usize;
    }
    out
}

pub use spate_protocol::routing::key_for_shard;

/// CRC32C, as the wire and the disk use it (for tests that forge checksummed bytes).
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// A minimal blocking client speaking the wire protocol directly (std sockets), so server
/// tests do not depend on the client library and can send malformed bytes on purpose.
#[derive(Debug)]
pub struct WireClient {
    pub stream: std::net::TcpStream,
    buf: Vec<u8>,
    next_cid: u64,
}

/// A response frame, owned.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub header: spate_protocol::FrameHeader,
    pub frame: Vec<u8>,
}

impl RawResponse {
    /// Decodes the response (borrowing from `self`).
    pub fn reply(&self) -> spate_protocol::message::Reply<'_> {
        let frame = spate_protocol::decode_frame(&self.frame, usize::MAX)
            .expect("frame")
            .expect("whole frame");
        spate_protocol::decode_response(&frame).expect("decodable response")
    }
}

impl WireClient {
    pub fn connect(addr: impl std::net::ToSocketAddrs) -> WireClient {
        let stream = std::net::TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        // A generous bound so a broken server fails the test instead of hanging it.
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(60)))
            .expect("timeout");
        WireClient {
            stream,
            buf: Vec::new(),
            next_cid: 1,
        }
    }

    /// Sends a request; returns its correlation id.
    pub fn send(&mut self, req: &spate_protocol::Request<'_>) -> u64 {
        use std::io::Write;
        let cid = self.next_cid;
        self.next_cid += 1;
        let mut out = Vec::new();
        spate_protocol::encode_request(&mut out, cid, req);
        self.stream.write_all(&out).expect("send");
        cid
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        self.stream.write_all(bytes)
    }

    /// Receives the next response frame; `None` when the server closed the connection.
    pub fn recv(&mut self) -> Option<RawResponse> {
        use std::io::Read;
        loop {
            if let Ok(Some(f)) = spate_protocol::decode_frame(&self.buf, usize::MAX) {
                let len = f.encoded_len();
                let header = f.header;
                let frame: Vec<u8> = self.buf.drain(..len).collect();
                return Some(RawResponse { header, frame });
            }
            if let Err(e) = spate_protocol::decode_frame(&self.buf, usize::MAX) {
                panic!(
                    "undecodable response frame: {e} in {:?}",
                    &self.buf[..self.buf.len().min(64)]
                );
            }
            let mut chunk = [0u8; 65536];
            let n = match self.stream.read(&mut chunk) {
                Ok(n) => n,
                // glommio's executors use signals; a blocking read here may see one.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
                Err(e) => panic!("reading a response: {e}"),
            };
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends and waits for the answer (no other request outstanding).
    pub fn call(&mut self, req: &spate_protocol::Request<'_>) -> RawResponse {
        let cid = self.send(req);
        let r = self.recv().expect("response");
        assert_eq!(r.header.correlation_id, cid);
        r
    }
}
