//! The audit trail: every control-plane call, every authentication and every denial, one
//! JSON line each, durable before the call is answered, hash-chained so that an edited,
//! removed or reordered line is found by [`verify_dir`] (`spate audit verify`).
//!
//! Files: `<data>/audit/audit-<first seq, 20 digits>.jsonl`, appended with an fdatasync
//! per group of lines (calls arriving while a write is under way share the next one), a
//! new file once one passes `audit_max_file_bytes` (nothing is ever deleted here; archive
//! old files as you would any log). A line:
//!
//! ```text
//! {"seq":7,"time":"2026-12-03T01:02:03.456Z","time_ms":...,"principal":"ops",
//!  "source":"10.0.0.5:53122","action":"spate:CreateStream","resource":"clicks",
//!  "params":{"shards":4},"result":"ok","error":null,"request_id":42,
//!  "prev":"<hash of line 6>","hash":"<SHA-256 of this line up to the hash field, hex>"}
//! ```
//!
//! Refusals (`AccessDenied`, `AuthenticationRequired`, `AuthenticationFailed`) are one line
//! each up to `audit_refusal_lines_per_s` a second (a bucket of one second's worth); past
//! it they are counted into one `spate:Refusals` line a second (how many, from when to
//! when, by source address, principal, action and result), so that a client refused
//! hundreds of thousands of times a second cannot fill the disk with lines. Calls that
//! were done are never folded.
//!
//! The chain starts at 64 zeros and runs across files. What it cannot show is lines cut
//! from the very end of the newest file (verify reports the last sequence number, which an
//! operator can compare with a copy shipped elsewhere). A line cut short by a crash while
//! it was written (never acknowledged) is reported as a torn tail, not as tampering; the
//! engine continues the chain in a new file.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::io::Storage;
use crate::notify::{Notify, TaskLock};

/// The audit trail's directory under the data directory.
pub const AUDIT_DIR: &str = "audit";
/// Lines the core keeps in memory for `audit tail`.
pub const RECENT_LINES: usize = 10_000;
const GENESIS: [u8; 32] = [0; 32];

/// One audited call.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    pub time_ms: i64,
    /// Who made it (`None`: an unauthenticated connection).
    pub principal: Option<String>,
    /// The peer's address.
    pub source: Option<String>,
    /// `spate:CreateStream`, `spate:Authenticate`, ...
    pub action: String,
    /// The stream (or principal) it is about; `*` for none.
    pub resource: String,
    pub params: serde_json::Value,
    /// `ok`, or the error code's name.
    pub result: String,
    pub error: Option<String>,
    /// The request's correlation id on its connection.
    pub request_id: u64,
}

#[derive(Serialize)]
struct Body<'a> {
    seq: u64,
    time: String,
    time_ms: i64,
    principal: Option<&'a str>,
    source: Option<&'a str>,
    action: &'a str,
    resource: &'a str,
    params: &'a serde_json::Value,
    result: &'a str,
    error: Option<&'a str>,
    request_id: u64,
    prev: String,
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The line for `event` as number `seq` after a line hashed `prev`, and its hash.
fn encode_line(event: &AuditEvent, seq: u64, prev: &[u8; 32]) -> (String, [u8; 32]) {
    let body = Body {
        seq,
        time: crate::clock::rfc3339_ms(event.time_ms),
        time_ms: event.time_ms,
        principal: event.principal.as_deref(),
        source: event.source.as_deref(),
        action: &event.action,
        resource: &event.resource,
        params: &event.params,
        result: &event.result,
        error: event.error.as_deref(),
        request_id: event.request_id,
        prev: hex(prev),
    };
    let mut line = serde_json::to_string(&body).expect("an audit line serializes");
    let hash: [u8; 32] = Sha256::digest(line.as_bytes()).into();
    line.pop(); // the closing brace
    line.push_str(",\"hash\":\"");
    line.push_str(&hex(&hash));
    line.push_str("\"}\n");
    (line, hash)
}

/// What one checked line says.
struct Checked {
    seq: u64,
    prev: [u8; 32],
    hash: [u8; 32],
}

/// Checks one line (without its newline) against its own hash.
fn check_line(line: &str) -> Result<Checked, String> {
    const TAIL: usize = ",\"hash\":\"".len() + 64 + "\"}".len();
    if line.len() < TAIL || !line.ends_with("\"}") {
        return Err("no hash at the end".into());
    }
    let (head, tail) = line.split_at(line.len() - TAIL);
    let hash = tail
        .strip_prefix(",\"hash\":\"")
        .and_then(|t| t.strip_suffix("\"}"))
        .and_then(unhex)
        .ok_or("no hash at the end")?;
    let body = format!("{head}}}");
    let computed: [u8; 32] = Sha256::digest(body.as_bytes()).into();
    if computed != hash {
        return Err("its hash does not match its contents (edited)".into());
    }
    let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| format!("not JSON: {e}"))?;
    let seq = v["seq"].as_u64().ok_or("no seq")?;
    let prev = v["prev"].as_str().and_then(unhex).ok_or("no prev")?;
    Ok(Checked { seq, prev, hash })
}

/// The audit files of `dir`, oldest first.
fn audit_files(names: &[String]) -> Vec<String> {
    let mut files: Vec<String> = names
        .iter()
        .filter(|n| n.starts_with("audit-") && n.ends_with(".jsonl"))
        .cloned()
        .collect();
    files.sort();
    files
}

/// What [`verify_dir`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub files: usize,
    pub lines: u64,
    /// The newest line's sequence number and hash (compare with a copy kept elsewhere).
    pub last_seq: Option<u64>,
    pub last_hash: Option<String>,
    /// Files ending in a line cut short by a crash (never acknowledged).
    pub torn_tails: Vec<String>,
}

/// Verifies the audit trail in `dir` (`<data>/audit`): every line's hash, and the chain
/// across lines and files. The error names the file and line that break it.
pub fn verify_dir(dir: &Path) -> Result<VerifyReport, String> {
    let names = crate::io::list_dir_blocking(dir)
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let files = audit_files(&names);
    if files.is_empty() {
        return Err(format!("{} holds no audit files", dir.display()));
    }
    let mut report = VerifyReport {
        files: files.len(),
        lines: 0,
        last_seq: None,
        last_hash: None,
        torn_tails: Vec::new(),
    };
    let mut prev = GENESIS;
    let mut next_seq = 1u64;
    for name in &files {
        let path = dir.join(name);
        let bytes =
            std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut rest = &bytes[..];
        let mut line_no = 0u64;
        while !rest.is_empty() {
            line_no += 1;
            let Some(end) = rest.iter().position(|&b| b == b'\n') else {
                report.torn_tails.push(name.clone());
                break;
            };
            let line = std::str::from_utf8(&rest[..end])
                .map_err(|_| format!("{name} line {line_no}: not UTF-8"))?;
            rest = &rest[end + 1..];
            let c = check_line(line).map_err(|why| format!("{name} line {line_no}: {why}"))?;
            if c.seq != next_seq {
                return Err(format!(
                    "{name} line {line_no}: sequence number {} where {next_seq} belongs (a line removed, added or moved)",
                    c.seq
                ));
            }
            if c.prev != prev {
                return Err(format!(
                    "{name} line {line_no}: does not follow the line before it (removed, reordered or replaced)"
                ));
            }
            prev = c.hash;
            next_seq += 1;
            report.lines += 1;
            report.last_seq = Some(c.seq);
            report.last_hash = Some(hex(&c.hash));
        }
    }
    Ok(report)
}

/// The writer's position in the chain.
struct State {
    next_seq: u64,
    prev: [u8; 32],
    file: PathBuf,
    file_len: u64,
    /// Bumped for every file started, so a file begun after a failed write never reuses
    /// the failed one's name.
    attempt: u64,
    /// Lines encoded and not yet written: their bytes, and each one's number, text and hash.
    pending: Vec<u8>,
    pending_lines: Vec<(u64, Rc<str>, [u8; 32])>,
}

/// Whether an audit line's result is a refusal for security (subject to the budget).
fn is_refusal(result: &str) -> bool {
    matches!(
        result,
        "AccessDenied" | "AuthenticationRequired" | "AuthenticationFailed"
    )
}

/// Distinct values a summary counts one by one (per field); the rest count as `other`.
const SUMMARY_KEYS_MAX: usize = 32;

/// Refusals past the budget, waiting for their summary line.
#[derive(Debug, Default)]
struct Folded {
    count: u64,
    first_ms: i64,
    last_ms: i64,
    by_source: std::collections::BTreeMap<String, u64>,
    by_principal: std::collections::BTreeMap<String, u64>,
    by_action: std::collections::BTreeMap<String, u64>,
    by_result: std::collections::BTreeMap<String, u64>,
}

fn count_into(map: &mut std::collections::BTreeMap<String, u64>, key: &str) {
    if let Some(n) = map.get_mut(key) {
        *n += 1;
    } else if map.len() < SUMMARY_KEYS_MAX {
        map.insert(key.to_owned(), 1);
    } else {
        *map.entry("other".into()).or_default() += 1;
    }
}

/// The refusal budget: a bucket of `per_s` lines refilled at `per_s` a second.
#[derive(Debug)]
struct RefusalBudget {
    per_s: f64,
    tokens: f64,
    at: std::time::Instant,
    folded: Option<Folded>,
}

impl RefusalBudget {
    fn new(per_s: u32) -> RefusalBudget {
        RefusalBudget {
            per_s: f64::from(per_s),
            tokens: f64::from(per_s),
            at: std::time::Instant::now(),
            folded: None,
        }
    }

    /// Takes a line's worth of budget, if there is one.
    fn admit(&mut self, now: std::time::Instant) -> bool {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now.max(self.at);
        self.tokens = (self.tokens + dt * self.per_s).min(self.per_s);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn fold(&mut self, e: &AuditEvent) {
        let f = self.folded.get_or_insert_with(|| Folded {
            first_ms: e.time_ms,
            ..Folded::default()
        });
        f.count += 1;
        f.first_ms = f.first_ms.min(e.time_ms);
        f.last_ms = f.last_ms.max(e.time_ms);
        // By host: a client's many connections count together.
        let source = e.source.as_deref().map_or("unknown".to_string(), |s| {
            s.parse::<std::net::SocketAddr>()
                .map_or_else(|_| s.to_owned(), |a| a.ip().to_string())
        });
        count_into(&mut f.by_source, &source);
        count_into(
            &mut f.by_principal,
            e.principal.as_deref().unwrap_or("(unauthenticated)"),
        );
        count_into(&mut f.by_action, &e.action);
        count_into(&mut f.by_result, &e.result);
    }

    /// Puts back refusals whose summary could not be written (with any folded since).
    fn refold(&mut self, f: Folded) {
        let Some(now) = self.folded.as_mut() else {
            self.folded = Some(f);
            return;
        };
        now.count += f.count;
        now.first_ms = now.first_ms.min(f.first_ms);
        now.last_ms = now.last_ms.max(f.last_ms);
        for (into, from) in [
            (&mut now.by_source, f.by_source),
            (&mut now.by_principal, f.by_principal),
            (&mut now.by_action, f.by_action),
            (&mut now.by_result, f.by_result),
        ] {
            for (k, n) in from {
                *into.entry(k).or_default() += n;
            }
        }
    }
}

impl Folded {
    /// The summary line of these refusals.
    fn summary(&self, now_ms: i64) -> AuditEvent {
        let f = self;
        AuditEvent {
            time_ms: now_ms,
            principal: None,
            source: None,
            action: "spate:Refusals".into(),
            resource: "*".into(),
            params: serde_json::json!({
                "refusals": f.count,
                "first_time_ms": f.first_ms,
                "last_time_ms": f.last_ms,
                "by_source": f.by_source,
                "by_principal": f.by_principal,
                "by_action": f.by_action,
                "by_result": f.by_result,
            }),
            result: "summary".into(),
            error: Some(format!(
                "{} refusals past audit_refusal_lines_per_s, counted here instead of one line each",
                f.count
            )),
            request_id: 0,
        }
    }
}

/// Core 0's audit trail writer; see the module docs.
pub struct AuditLog {
    dir: PathBuf,
    max_file_bytes: u64,
    refusals: RefCell<RefusalBudget>,
    st: RefCell<State>,
    writer: TaskLock,
    /// The last durable line's sequence number and hash.
    durable: Cell<u64>,
    durable_hash: Cell<[u8; 32]>,
    /// Lines numbered below this that are not durable were lost with a failed write.
    lost_before: Cell<u64>,
    /// The newest durable lines, for `audit tail`.
    recent: RefCell<VecDeque<(u64, Rc<str>)>>,
    /// Woken when lines become durable.
    pub appended: Notify,
}

impl AuditLog {
    /// Opens the trail in `<data_dir>/audit`, continuing its chain. A torn last line (a
    /// crash in the middle of a write) is left where it is and the chain goes on in a new
    /// file.
    pub async fn open<S: Storage>(
        storage: &S,
        data_dir: &Path,
        max_file_bytes: u64,
        refusal_lines_per_s: u32,
    ) -> std::io::Result<AuditLog> {
        let dir = data_dir.join(AUDIT_DIR);
        storage.create_dir_all(&dir).await?;
        let files = audit_files(&storage.list_dir(&dir).await?);
        let attempt = files
            .iter()
            .filter_map(|n| attempt_of(n))
            .max()
            .map_or(0, |a| a + 1);
        let mut next_seq = 1;
        let mut prev = GENESIS;
        let mut recent = VecDeque::new();
        let mut current = None;
        if let Some(last) = files.last() {
            let path = dir.join(last);
            let bytes = storage.read_small(&path).await?.unwrap_or_default();
            let mut rest = &bytes[..];
            let mut torn = false;
            while !rest.is_empty() {
                let Some(end) = rest.iter().position(|&b| b == b'\n') else {
                    torn = true;
                    break;
                };
                let text = String::from_utf8_lossy(&rest[..end]).into_owned();
                rest = &rest[end + 1..];
                let c = check_line(&text).map_err(|why| {
                    std::io::Error::other(format!(
                        "the audit trail {} is damaged: {why} (see spate audit verify)",
                        path.display()
                    ))
                })?;
                next_seq = c.seq + 1;
                prev = c.hash;
                recent.push_back((c.seq, Rc::<str>::from(text)));
                if recent.len() > RECENT_LINES {
                    recent.pop_front();
                }
            }
            if !torn {
                current = Some((path, bytes.len() as u64));
            }
        }
        let (file, file_len) =
            current.unwrap_or_else(|| (dir.join(file_name(next_seq, attempt)), 0));
        Ok(AuditLog {
            dir,
            max_file_bytes: max_file_bytes.max(4096),
            refusals: RefCell::new(RefusalBudget::new(refusal_lines_per_s.max(1))),
            st: RefCell::new(State {
                next_seq,
                prev,
                file,
                file_len,
                attempt: attempt + 1,
                pending: Vec::new(),
                pending_lines: Vec::new(),
            }),
            writer: TaskLock::new(),
            durable: Cell::new(next_seq - 1),
            durable_hash: Cell::new(prev),
            lost_before: Cell::new(0),
            recent: RefCell::new(recent),
            appended: Notify::new(),
        })
    }

    /// Appends `event` as [`append`](Self::append) does, unless it is a refusal past the
    /// refusal budget: that is counted into the next summary line and `None` answered at
    /// once. Refusals folded earlier get their summary line first.
    pub async fn record<S: Storage>(
        &self,
        storage: &S,
        event: &AuditEvent,
    ) -> std::io::Result<Option<u64>> {
        if is_refusal(&event.result) {
            let mut budget = self.refusals.borrow_mut();
            if !budget.admit(std::time::Instant::now()) {
                budget.fold(event);
                return Ok(None);
            }
        }
        self.flush_refusals(storage, event.time_ms).await?;
        self.append(storage, event).await.map(Some)
    }

    /// Writes the summary line of the refusals folded since the last one, if any (core 0
    /// calls this once a second, so a summary is never more than a second late).
    pub async fn flush_refusals<S: Storage>(
        &self,
        storage: &S,
        now_ms: i64,
    ) -> std::io::Result<()> {
        let Some(folded) = self.refusals.borrow_mut().folded.take() else {
            return Ok(());
        };
        match self.append(storage, &folded.summary(now_ms)).await {
            Ok(_) => Ok(()),
            // Counted again in the next summary rather than lost with this write.
            Err(e) => {
                self.refusals.borrow_mut().refold(folded);
                Err(e)
            }
        }
    }

    /// Appends `event` and returns once it is durable (sharing the fdatasync with every
    /// line appended meanwhile). Answers its sequence number.
    pub async fn append<S: Storage>(
        &self,
        storage: &S,
        event: &AuditEvent,
    ) -> std::io::Result<u64> {
        let seq = {
            let mut st = self.st.borrow_mut();
            let seq = st.next_seq;
            let (line, hash) = encode_line(event, seq, &st.prev);
            st.pending.extend_from_slice(line.as_bytes());
            st.pending_lines
                .push((seq, Rc::from(line.trim_end_matches('\n')), hash));
            st.prev = hash;
            st.next_seq += 1;
            seq
        };
        let _writer = self.writer.lock().await;
        if self.durable.get() >= seq {
            return Ok(seq);
        }
        if seq < self.lost_before.get() {
            return Err(std::io::Error::other(
                "the audit trail's write failed (see the server's log)",
            ));
        }
        let (file, bytes, lines) = {
            let mut st = self.st.borrow_mut();
            if st.file_len >= self.max_file_bytes {
                st.file = self.dir.join(file_name(seq, st.attempt));
                st.attempt += 1;
                st.file_len = 0;
            }
            (
                st.file.clone(),
                std::mem::take(&mut st.pending),
                std::mem::take(&mut st.pending_lines),
            )
        };
        match storage.append_durable(&file, &bytes).await {
            Ok(len) => {
                self.st.borrow_mut().file_len = len;
                let (last, _, hash) = *lines.last().expect("this call's line at least");
                let mut recent = self.recent.borrow_mut();
                recent.extend(lines.into_iter().map(|(s, l, _)| (s, l)));
                while recent.len() > RECENT_LINES {
                    recent.pop_front();
                }
                self.durable.set(last);
                self.durable_hash.set(hash);
                self.appended.notify_all();
                Ok(seq)
            }
            Err(e) => {
                // Nothing of this write is acknowledged, nor anything chained after it
                // meanwhile. The chain goes back to the last durable line and on in a new
                // file (the failed one may hold part of the write).
                let mut st = self.st.borrow_mut();
                self.lost_before.set(st.next_seq);
                st.pending.clear();
                st.pending_lines.clear();
                st.next_seq = self.durable.get() + 1;
                st.prev = self.durable_hash.get();
                st.file = self.dir.join(file_name(st.next_seq, st.attempt));
                st.attempt += 1;
                st.file_len = 0;
                Err(e)
            }
        }
    }

    /// The last durable line's sequence number (0: none yet).
    pub fn last_seq(&self) -> u64 {
        self.durable.get()
    }

    /// Up to `max` durable lines from `from_seq` on (from the oldest kept in memory if it
    /// is older), and the sequence number to ask for next.
    pub fn read(&self, from_seq: u64, max: usize) -> (Vec<Rc<str>>, u64) {
        let recent = self.recent.borrow();
        let mut next = from_seq;
        let lines = recent
            .iter()
            .filter(|(s, _)| *s >= from_seq)
            .take(max)
            .map(|(s, l)| {
                next = s + 1;
                l.clone()
            })
            .collect();
        (lines, next)
    }
}

fn file_name(first_seq: u64, attempt: u64) -> String {
    format!("audit-{first_seq:020}-{attempt:06}.jsonl")
}

fn attempt_of(name: &str) -> Option<u64> {
    name.strip_suffix(".jsonl")?
        .rsplit('-')
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::SimStorage;

    fn event(i: u64) -> AuditEvent {
        AuditEvent {
            time_ms: 1_764_720_000_000 + i as i64,
            principal: Some("ops".into()),
            source: Some("127.0.0.1:5000".into()),
            action: "spate:CreateStream".into(),
            resource: format!("s{i}"),
            params: serde_json::json!({ "shards": i }),
            result: "ok".into(),
            error: None,
            request_id: i,
        }
    }

    /// Writes `n` lines through the simulated disk, in files of `max` bytes, and copies
    /// them into a real directory for `verify_dir`.
    fn trail(n: u64, max: u64) -> (tempfile::TempDir, Vec<PathBuf>) {
        let tmp = tempfile::tempdir().unwrap();
        let files = glommio::LocalExecutorBuilder::default()
            .spawn({
                let out = tmp.path().to_path_buf();
                move || async move {
                    let storage = SimStorage::new(1);
                    let data = Path::new("/data");
                    storage.create_dir_all(data).await.unwrap();
                    let log = Rc::new(AuditLog::open(&storage, data, max, 100).await.unwrap());
                    // Concurrent appends share writes and still chain in order.
                    let tasks: Vec<_> = (0..n)
                        .map(|i| {
                            let (log, storage) = (log.clone(), storage.clone());
                            glommio::spawn_local(async move {
                                log.append(&storage, &event(i)).await.unwrap()
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await;
                    }
                    assert_eq!(log.last_seq(), n);
                    let (lines, next) = log.read(n - 1, 10);
                    assert_eq!((lines.len(), next), (2, n + 1));
                    // Reopening continues the chain.
                    let log = AuditLog::open(&storage, data, max, 100).await.unwrap();
                    log.append(&storage, &event(n)).await.unwrap();
                    let mut files = Vec::new();
                    for name in storage.list_dir(&data.join(AUDIT_DIR)).await.unwrap() {
                        let bytes = storage
                            .read_small(&data.join(AUDIT_DIR).join(&name))
                            .await
                            .unwrap()
                            .unwrap();
                        let p = out.join(&name);
                        std::fs::write(&p, bytes).unwrap();
                        files.push(p);
                    }
                    files
                }
            })
            .unwrap()
            .join()
            .unwrap();
        (tmp, files)
    }

    #[test]
    fn the_chain_verifies_across_files_and_restarts() {
        let (dir, files) = trail(40, 4096);
        assert!(files.len() > 1, "{files:?}");
        let r = verify_dir(dir.path()).unwrap();
        assert_eq!(r.lines, 41);
        assert_eq!(r.last_seq, Some(41));
        assert!(r.torn_tails.is_empty());
    }

    fn lines_of(p: &Path) -> Vec<String> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn write_lines(p: &Path, lines: &[String]) {
        std::fs::write(
            p,
            lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
        )
        .unwrap();
    }

    #[test]
    fn edited_removed_and_reordered_lines_fail_verify() {
        let (dir, files) = trail(10, 1 << 20);
        let f = &files[0];
        let original = lines_of(f);
        // Edited: a parameter changed.
        let mut edited = original.clone();
        edited[3] = edited[3].replace("\"shards\":3", "\"shards\":9");
        write_lines(f, &edited);
        let e = verify_dir(dir.path()).unwrap_err();
        assert!(e.contains("line 4") && e.contains("edited"), "{e}");
        // Removed.
        let mut removed = original.clone();
        removed.remove(5);
        write_lines(f, &removed);
        let e = verify_dir(dir.path()).unwrap_err();
        assert!(e.contains("line 6"), "{e}");
        // Reordered.
        let mut swapped = original.clone();
        swapped.swap(2, 7);
        write_lines(f, &swapped);
        assert!(verify_dir(dir.path()).is_err());
        // Edited and given a fresh hash: the next line no longer follows it.
        let mut rehashed = original.clone();
        let line = rehashed[3].replace("\"shards\":3", "\"shards\":9");
        let head = &line[..line.len() - (",\"hash\":\"".len() + 64 + 2)];
        let body = format!("{head}}}");
        let hash: [u8; 32] = Sha256::digest(body.as_bytes()).into();
        rehashed[3] = format!("{head},\"hash\":\"{}\"}}", hex(&hash));
        write_lines(f, &rehashed);
        let e = verify_dir(dir.path()).unwrap_err();
        assert!(e.contains("line 5") && e.contains("follow"), "{e}");
        write_lines(f, &original);
        assert_eq!(verify_dir(dir.path()).unwrap().lines, 11);
        // A torn last line (a crash mid-write) is reported, not called tampering.
        let mut torn = std::fs::read(f).unwrap();
        torn.extend_from_slice(b"{\"seq\":12,\"ti");
        std::fs::write(f, torn).unwrap();
        let r = verify_dir(dir.path()).unwrap();
        assert_eq!(r.torn_tails.len(), 1);
    }
}
