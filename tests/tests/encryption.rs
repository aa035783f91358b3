//! Encryption at rest end to end, on a server in a process of its own: an encrypted stream
//! written at full speed and killed with SIGKILL comes back whole; no file under the data
//! directory holds its records in clear (while a plaintext stream's do show up, so the
//! search is real); a master-key rotation keeps old data readable and lets the old key be
//! retired; encryption started on a live stream covers the data written after it; and a
//! wrong or missing master key stops the server with an error naming the stream.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use spate_client::{Client, EncryptionType, ErrorCode, Limits, Position, StreamConfig};
use spate_tests::{runtime, ChildServer};

const BIN: &str = env!("CARGO_BIN_EXE_test_server");

/// Writes a key file with these `(id, key byte)` lines, mode 0600.
fn write_keys(path: &Path, keys: &[(u32, u8)]) {
    use base64::Engine as _;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    for (id, b) in keys {
        let line = base64::engine::general_purpose::STANDARD.encode([*b; 32]);
        writeln!(f, "{id} {line}").unwrap();
    }
}

/// A data directory, and a directory holding a key file with master key 1 (both deleted
/// when dropped).
fn data_and_keys() -> (tempfile::TempDir, tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("master.keys");
    write_keys(&key_file, &[(1, 0x11)]);
    (dir, keys, key_file)
}

fn start(dir: &Path, key_file: &Path) -> ChildServer {
    ChildServer::start(
        BIN,
        dir,
        &format!("key_file = {:?}", key_file.to_str().unwrap()),
        false,
    )
}

/// Every file under `dir` that holds `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if std::fs::read(&p)
                .unwrap()
                .windows(needle.len())
                .any(|w| w == needle)
            {
                found.push(p);
            }
        }
    }
    found
}

/// Records by (shard, seq): their data.
type Records = BTreeMap<(u32, u64), Vec<u8>>;

/// Every record of a stream's shards.
async fn read_all(client: &Client, stream: &str) -> Records {
    let info = client.describe_stream(stream).await.unwrap();
    let mut out = BTreeMap::new();
    for sh in &info.shards {
        let mut it = client
            .get_iterator(stream, sh.id, Position::TrimHorizon)
            .await
            .unwrap();
        loop {
            let r = client.get_records(&it, 10_000, 8 << 20, 0).await.unwrap();
            let n = r.records.len();
            for rec in r.records {
                assert!(out.insert((sh.id, rec.seq), rec.data.to_vec()).is_none());
            }
            match r.next_iterator {
                Some(next) if n > 0 => it = next,
                _ => break,
            }
        }
    }
    out
}

#[test]
fn an_encrypted_stream_survives_sigkill_rotation_and_restarts_and_is_never_on_disk_in_clear() {
    let (dir, _keys, key_file) = data_and_keys();
    let rt = runtime();
    let mut server = start(dir.path(), &key_file);
    let addr = server.addr.to_string();
    let acked: Arc<Mutex<Records>> = Arc::default();
    rt.block_on(async {
        let c = Client::connect(&addr).await.unwrap();
        let config = StreamConfig::new(4).limits(Limits::Off);
        c.create_stream("sec", &config.encryption(EncryptionType::Aes256Gcm))
            .await
            .unwrap();
        c.create_stream("plain", &config).await.unwrap();
        let d = c.describe_stream("sec").await.unwrap();
        assert_eq!(d.encryption, EncryptionType::Aes256Gcm);
        assert_eq!((d.key_epochs, d.master_key_id), (1, Some(1)));
        assert_eq!(
            c.describe_stream("plain").await.unwrap().encryption,
            EncryptionType::None
        );
        for i in 0..50 {
            c.put_record("plain", &format!("k{i}"), format!("CLEARTEXT-{i}"), None)
                .await
                .unwrap();
        }
        // Producers write until the server is killed under them.
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for p in 0..8 {
            let (c, acked, stop) = (c.clone(), acked.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let data = format!("TOPSECRET-{p}-{i}-{}", "x".repeat((i % 3000) as usize));
                    match c
                        .put_record("sec", &format!("dev-{p}-{i}"), data.clone(), None)
                        .await
                    {
                        Ok(r) => {
                            acked
                                .lock()
                                .unwrap()
                                .insert((r.shard_id, r.seq), data.into_bytes());
                        }
                        Err(_) => return,
                    }
                    i += 1;
                }
            }));
        }
        spate_tests::wait_until("records acknowledged", Duration::from_secs(60), || {
            acked.lock().unwrap().len() >= 2000
        });
        // SIGKILL in the middle of ingest.
        unsafe {
            libc::kill(server.child.id() as i32, libc::SIGKILL);
        }
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
    });
    let _ = server.child.wait();
    let acked = acked.lock().unwrap().clone();
    server = start(dir.path(), &key_file);
    let addr = server.addr.to_string();
    rt.block_on(async {
        let c = Client::connect(&addr).await.unwrap();
        let got = read_all(&c, "sec").await;
        for (at, data) in &acked {
            assert_eq!(
                got.get(at),
                Some(data),
                "acknowledged record {at:?} after SIGKILL"
            );
        }
        // A new data key for this run (a batch the kill cut may be on disk).
        let d = c.describe_stream("sec").await.unwrap();
        assert_eq!((d.key_epochs, d.master_key_id), (2, Some(1)));
        // Rotation: a new master key, appended; new data under it, old data readable.
        write_keys(&key_file, &[(1, 0x11), (2, 0x22)]);
        let r = c.rotate_keys().await.unwrap();
        assert_eq!((r.master_key_id, r.streams), (2, 1));
        let d = c.describe_stream("sec").await.unwrap();
        assert_eq!((d.key_epochs, d.master_key_id), (3, Some(2)));
        c.put_record("sec", "after-rotation", "TOPSECRET-rotated", None)
            .await
            .unwrap();
        let got = read_all(&c, "sec").await;
        assert!(got.len() > acked.len());
        assert!(got.values().any(|d| d == b"TOPSECRET-rotated"));
        // Key 1 retired without a restart: nothing is wrapped under it any more.
        write_keys(&key_file, &[(2, 0x22)]);
        assert_eq!(c.rotate_keys().await.unwrap().master_key_id, 2);
        // Dropping a key still in use is refused; the keys in memory stay as they were.
        write_keys(&key_file, &[(3, 0x33)]);
        let e = c.rotate_keys().await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::KeyUnavailable), "{e}");
        c.put_record("sec", "after-refusal", "TOPSECRET-refused", None)
            .await
            .unwrap();
    });
    server.stop();
    // Every data key was re-wrapped under key 2: key 1 can be retired.
    write_keys(&key_file, &[(2, 0x22)]);
    let server = start(dir.path(), &key_file);
    let addr = server.addr.to_string();
    rt.block_on(async {
        let c = Client::connect(&addr).await.unwrap();
        let got = read_all(&c, "sec").await;
        for (at, data) in &acked {
            assert_eq!(
                got.get(at),
                Some(data),
                "record {at:?} after retiring key 1"
            );
        }
        assert_eq!(read_all(&c, "plain").await.len(), 50);
    });
    server.stop();
    assert!(
        files_holding(dir.path(), b"TOPSECRET-").is_empty(),
        "an encrypted stream's records are in clear in {:?}",
        files_holding(dir.path(), b"TOPSECRET-")
    );
    assert!(
        !files_holding(dir.path(), b"CLEARTEXT-").is_empty(),
        "the search finds a plaintext stream's records"
    );
}

#[test]
fn a_wrong_or_missing_master_key_stops_the_server_naming_the_stream() {
    let (dir, _keys, key_file) = data_and_keys();
    let server = start(dir.path(), &key_file);
    let addr = server.addr.to_string();
    runtime().block_on(async {
        let c = Client::connect(&addr).await.unwrap();
        c.create_stream(
            "vault",
            &StreamConfig::new(1)
                .limits(Limits::Off)
                .encryption(EncryptionType::Aes256Gcm),
        )
        .await
        .unwrap();
        c.put_record("vault", "k", "SECRET", None).await.unwrap();
    });
    server.stop();
    let fails = |overrides: String| {
        let out = std::process::Command::new(BIN)
            .arg(dir.path())
            .arg(overrides)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "the server started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // Same id, other bytes: the data key does not unwrap.
    write_keys(&key_file, &[(1, 0x99)]);
    let why = fails(format!("key_file = {:?}", key_file.to_str().unwrap()));
    assert!(
        why.contains("stream vault") && why.contains("does not unwrap"),
        "{why}"
    );
    // Another id only: the master key is unknown.
    write_keys(&key_file, &[(7, 0x11)]);
    let why = fails(format!("key_file = {:?}", key_file.to_str().unwrap()));
    assert!(
        why.contains("stream vault") && why.contains("master key 1"),
        "{why}"
    );
    // No key file at all.
    let why = fails(String::new());
    assert!(
        why.contains("stream vault") && why.contains("--key-file"),
        "{why}"
    );
    assert_eq!(
        why.matches("encryption key unavailable").count(),
        1,
        "said once: {why}"
    );
    // The right key again: everything is there.
    write_keys(&key_file, &[(1, 0x11)]);
    let server = start(dir.path(), &key_file);
    let addr = server.addr.to_string();
    runtime().block_on(async {
        let c = Client::connect(&addr).await.unwrap();
        let got = read_all(&c, "vault").await;
        assert_eq!(
            got.into_values().collect::<Vec<_>>(),
            vec![b"SECRET".to_vec()]
        );
    });
    server.stop();
}

#[test]
fn encryption_started_on_a_live_stream_covers_what_is_written_after_it() {
    let (dir, _keys, key_file) = data_and_keys();
    let server = start(dir.path(), &key_file);
    let addr = server.addr.to_string();
    runtime().block_on(async {
        let c = Client::connect(&addr).await.unwrap();
        c.create_stream("live", &StreamConfig::new(2).limits(Limits::Off))
            .await
            .unwrap();
        for i in 0..20 {
            c.put_record("live", &format!("k{i}"), format!("BEFORE-{i}"), None)
                .await
                .unwrap();
        }
        c.start_stream_encryption("live").await.unwrap();
        let d = c.describe_stream("live").await.unwrap();
        assert_eq!(d.encryption, EncryptionType::Aes256Gcm);
        for i in 0..20 {
            c.put_record("live", &format!("k{i}"), format!("DURING-{i}"), None)
                .await
                .unwrap();
        }
        c.stop_stream_encryption("live").await.unwrap();
        let d = c.describe_stream("live").await.unwrap();
        assert_eq!((d.encryption, d.key_epochs), (EncryptionType::None, 1));
        for i in 0..20 {
            c.put_record("live", &format!("k{i}"), format!("AFTER-{i}"), None)
                .await
                .unwrap();
        }
        let got: Vec<String> = read_all(&c, "live")
            .await
            .into_values()
            .map(|d| String::from_utf8(d).unwrap())
            .collect();
        for phase in ["BEFORE-", "DURING-", "AFTER-"] {
            assert_eq!(got.iter().filter(|d| d.starts_with(phase)).count(), 20);
        }
    });
    server.stop();
    assert!(files_holding(dir.path(), b"DURING-").is_empty());
    assert!(!files_holding(dir.path(), b"BEFORE-").is_empty());
    assert!(!files_holding(dir.path(), b"AFTER-").is_empty());
    // Without a key file: encryption is refused with KeyUnavailable, nothing is created.
    let other = tempfile::tempdir().unwrap();
    let server = ChildServer::start(BIN, other.path(), "", false);
    let addr = server.addr.to_string();
    runtime().block_on(async {
        let c = Client::connect(&addr).await.unwrap();
        let e = c
            .create_stream(
                "x",
                &StreamConfig::new(1).encryption(EncryptionType::Aes256Gcm),
            )
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::KeyUnavailable), "{e}");
        assert!(c.list_streams().await.unwrap().is_empty());
        c.create_stream("y", &StreamConfig::new(1)).await.unwrap();
        let e = c.start_stream_encryption("y").await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::KeyUnavailable), "{e}");
        let e = c.rotate_keys().await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::KeyUnavailable), "{e}");
    });
    server.stop();
}
