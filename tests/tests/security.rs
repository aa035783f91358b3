//! Authentication, authorization and the audit trail end to end (port 0, temp dirs): a
//! matrix of principals × actions × streams — allowed, denied by no policy, explicit deny
//! over allow, unauthenticated, wrong secret, unknown key, replayed proof, disabled
//! principal, a policy removed under an open connection — then every control call in the
//! audit trail once, the trail verified, and principals surviving a restart.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use spate_client::{
    Client, ClientConfig, ClientError, Credentials, Entry, ErrorCode, Limits, Position,
    StreamConfig,
};
use spate_engine::config::EngineConfig;
use spate_engine::server::Server;
use spate_protocol::auth::{AuthChallengeRequest, AuthenticateRequest};
use spate_protocol::scram;
use spate_protocol::{
    decode_frame, decode_response, encode_request, ListStreamsRequest, Request, Response,
};
use spate_tests::{runtime, test_config};

fn start(dir: &std::path::Path) -> Server {
    Server::start(EngineConfig {
        listen: "127.0.0.1:0".into(),
        auth: true,
        ..test_config(dir)
    })
    .expect("server starts")
}

fn root_credentials(dir: &std::path::Path) -> Credentials {
    let text = std::fs::read_to_string(dir.join("root.credentials")).expect("root credentials");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.join("root.credentials"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o077, 0, "only the server's user may read it");
    Credentials::new(
        v["access_key_id"].as_str().unwrap(),
        v["secret"].as_str().unwrap(),
    )
}

async fn connect(addr: &str, creds: &Credentials) -> Result<Client, ClientError> {
    Client::connect_with(
        addr,
        ClientConfig {
            credentials: Some(creds.clone()),
            ..ClientConfig::default()
        },
    )
    .await
}

fn code(e: &ClientError) -> Option<ErrorCode> {
    e.code()
}

/// One request on a raw connection; answers the response frame's bytes.
fn raw_call(s: &mut TcpStream, id: u64, req: &Request<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    encode_request(&mut out, id, req);
    s.write_all(&out).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut frame = len.to_vec();
    frame.resize(u32::from_le_bytes(len) as usize, 0);
    s.read_exact(&mut frame[4..]).unwrap();
    frame
}

/// The error code of a response frame (`None`: a success).
fn error_of(frame: &[u8]) -> Option<ErrorCode> {
    let f = decode_frame(frame, usize::MAX).unwrap().unwrap();
    match decode_response(&f).unwrap() {
        Ok(_) => None,
        Err(e) => Some(e.code),
    }
}

#[test]
fn principals_policies_and_the_audit_trail() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let addr = server.local_addr().to_string();
    let root = root_credentials(dir.path());
    let rt = runtime();
    let (writer_creds, reader_creds) = rt.block_on(async {
        // Unauthenticated: the client says so at connect.
        let e = Client::connect(addr.clone()).await.unwrap_err();
        assert!(e.to_string().contains("only authenticated"), "{e}");
        let admin = connect(&addr, &root).await.unwrap();
        assert_eq!(admin.server_info().principal.as_deref(), Some("root"));
        for s in ["clicks-a", "clicks-b", "secret-x"] {
            admin
                .create_stream(s, &StreamConfig::new(2).limits(Limits::Off))
                .await
                .unwrap();
        }
        let writer = admin.create_principal("writer").await.unwrap();
        let reader = admin.create_principal("reader").await.unwrap();
        let e = admin.create_principal("writer").await.unwrap_err();
        assert_eq!(code(&e), Some(ErrorCode::PrincipalExists));
        admin
            .put_policy(
                "writer",
                "put-clicks",
                r#"{"Statement":[{"Effect":"Allow","Action":["spate:PutRecord*","spate:DescribeStream"],"Resource":"clicks-*"}]}"#,
            )
            .await
            .unwrap();
        admin
            .put_policy(
                "reader",
                "read-all-but-secrets",
                r#"{"Statement":[
                    {"Effect":"Allow","Action":["spate:Get*","spate:DescribeStream","spate:ListStreams"],"Resource":"*"},
                    {"Effect":"Deny","Action":"spate:*","Resource":"secret*"}]}"#,
            )
            .await
            .unwrap();
        let e = admin
            .put_policy("reader", "bad", r#"{"Statement":[{"Effect":"Allow","Action":"spate:Fly","Resource":"*"}]}"#)
            .await
            .unwrap_err();
        assert_eq!(code(&e), Some(ErrorCode::InvalidArgument), "{e}");
        let writer_creds = Credentials::new(&writer.access_key_id, &writer.secret);
        let reader_creds = Credentials::new(&reader.access_key_id, &reader.secret);

        // Allowed, and denied by no policy.
        let w = connect(&addr, &writer_creds).await.unwrap();
        w.put_records("clicks-a", vec![Entry::new("k", b"v".to_vec())])
            .await
            .remove(0)
            .unwrap();
        w.put_records("secret-x", vec![Entry::new("k", b"v".to_vec())])
            .await
            .remove(0)
            .unwrap_err();
        let e = w
            .create_stream("mine", &StreamConfig::new(1))
            .await
            .unwrap_err();
        assert_eq!(code(&e), Some(ErrorCode::AccessDenied));
        assert!(
            e.to_string().contains("spate:CreateStream") && e.to_string().contains("writer"),
            "{e}"
        );
        let e = w.create_principal("mallory").await.unwrap_err();
        assert_eq!(code(&e), Some(ErrorCode::AccessDenied));
        let e = w.read_audit(0, 10, 0).await.unwrap_err();
        assert_eq!(code(&e), Some(ErrorCode::AccessDenied));

        // Explicit deny over allow.
        let r = connect(&addr, &reader_creds).await.unwrap();
        let mut reader = r
            .shard_reader("clicks-a", 0, Position::TrimHorizon, Default::default())
            .await
            .unwrap();
        reader.next().await.unwrap();
        let e = r
            .shard_reader("secret-x", 0, Position::TrimHorizon, Default::default())
            .await
            .unwrap_err();
        assert_eq!(code(&e), Some(ErrorCode::AccessDenied));
        assert!(e.to_string().contains("a policy denies it"), "{e}");
        let e = r
            .put_records("clicks-a", vec![Entry::new("k", b"v".to_vec())])
            .await
            .remove(0)
            .unwrap_err();
        assert_eq!(code(&e), Some(ErrorCode::AccessDenied));

        // Wrong secret, unknown key.
        let e = connect(&addr, &Credentials::new(&writer.access_key_id, "not-it"))
            .await
            .unwrap_err();
        assert_eq!(code(&e), Some(ErrorCode::AuthenticationFailed), "{e}");
        let e = connect(&addr, &Credentials::new("SPAKNOSUCHKEY0000000", "x"))
            .await
            .unwrap_err();
        assert_eq!(code(&e), Some(ErrorCode::AuthenticationFailed), "{e}");

        // Disabled: the open connection is denied at once, a new one cannot authenticate;
        // enabled again, both work.
        admin.set_principal_enabled("writer", false).await.unwrap();
        let e = w
            .put_records("clicks-a", vec![Entry::new("k", b"v".to_vec())])
            .await
            .remove(0)
            .unwrap_err();
        assert_eq!(code(&e), Some(ErrorCode::AccessDenied));
        assert!(e.to_string().contains("disabled"), "{e}");
        let e = connect(&addr, &writer_creds).await.unwrap_err();
        assert_eq!(code(&e), Some(ErrorCode::AuthenticationFailed));
        admin.set_principal_enabled("writer", true).await.unwrap();
        w.put_records("clicks-b", vec![Entry::new("k", b"v".to_vec())])
            .await
            .remove(0)
            .unwrap();

        // A policy removed under an open connection: denied from the next request on.
        admin.delete_policy("writer", "put-clicks").await.unwrap();
        let e = w
            .put_records("clicks-a", vec![Entry::new("k", b"v".to_vec())])
            .await
            .remove(0)
            .unwrap_err();
        assert_eq!(code(&e), Some(ErrorCode::AccessDenied));
        let e = admin.get_policy("writer", "put-clicks").await.unwrap_err();
        assert_eq!(code(&e), Some(ErrorCode::UnknownPolicy));
        let list = admin.list_principals().await.unwrap();
        let names: Vec<&str> = list.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["reader", "root", "writer"]);
        (writer_creds, reader_creds)
    });

    // On the wire: unauthenticated requests, a proof without a challenge, a proof replayed
    // on another connection.
    let mut a = TcpStream::connect(&addr).unwrap();
    a.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let list = Request::ListStreams(ListStreamsRequest {
        exclusive_start_name: None,
        limit: 10,
    });
    assert_eq!(
        error_of(&raw_call(&mut a, 1, &list)),
        Some(ErrorCode::AuthenticationRequired)
    );
    let proof_for = |s: &mut TcpStream, creds: &Credentials| -> [u8; 32] {
        let client_nonce = [9u8; 32];
        let frame = raw_call(
            s,
            2,
            &Request::AuthChallenge(AuthChallengeRequest {
                access_key_id: &creds.access_key_id,
                client_nonce,
            }),
        );
        let f = decode_frame(&frame, usize::MAX).unwrap().unwrap();
        let Ok(Response::AuthChallenge(ch)) = decode_response(&f).unwrap() else {
            panic!("a challenge")
        };
        let msg = scram::auth_message(
            &creds.access_key_id,
            &client_nonce,
            &ch.server_nonce,
            &ch.salt,
            ch.iterations,
        );
        scram::client_proof(creds.secret.as_bytes(), ch.salt, ch.iterations, &msg).proof
    };
    let proof = proof_for(&mut a, &reader_creds);
    let ok = raw_call(
        &mut a,
        3,
        &Request::Authenticate(AuthenticateRequest { proof }),
    );
    assert_eq!(error_of(&ok), None);
    assert_eq!(error_of(&raw_call(&mut a, 4, &list)), None);
    // The same proof again on this connection: its challenge is used up.
    let again = raw_call(
        &mut a,
        5,
        &Request::Authenticate(AuthenticateRequest { proof }),
    );
    assert_eq!(error_of(&again), Some(ErrorCode::AuthenticationFailed));
    // On a new connection, under a new challenge: refused, and the connection with it.
    let mut b = TcpStream::connect(&addr).unwrap();
    b.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = proof_for(&mut b, &reader_creds);
    let replay = raw_call(
        &mut b,
        6,
        &Request::Authenticate(AuthenticateRequest { proof }),
    );
    assert_eq!(error_of(&replay), Some(ErrorCode::AuthenticationFailed));
    assert_eq!(
        error_of(&raw_call(&mut b, 7, &list)),
        Some(ErrorCode::AuthenticationFailed)
    );
    drop((a, b));

    // The audit trail: every control call once, denials and failed authentications too.
    let lines: Vec<serde_json::Value> = rt.block_on(async {
        let admin = connect(&addr, &root).await.unwrap();
        let (lines, next) = admin.read_audit(1, 1000, 0).await.unwrap();
        assert_eq!(next, lines.len() as u64 + 1);
        lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    });
    let count = |action: &str, resource: &str, result: &str| {
        lines
            .iter()
            .filter(|l| l["action"] == action && l["resource"] == resource && l["result"] == result)
            .count()
    };
    assert_eq!(count("spate:CreateStream", "clicks-a", "ok"), 1);
    assert_eq!(count("spate:CreatePrincipal", "writer", "ok"), 1);
    assert_eq!(
        count("spate:CreatePrincipal", "writer", "PrincipalExists"),
        1
    );
    assert_eq!(count("spate:PutPolicy", "writer", "ok"), 1);
    assert_eq!(count("spate:UpdatePrincipal", "writer", "ok"), 2);
    assert_eq!(count("spate:DeletePolicy", "writer", "ok"), 1);
    assert_eq!(count("spate:CreateStream", "mine", "AccessDenied"), 1);
    // (Which call of a put or an iterator is refused first — the routing's describe or the
    // call itself — is the client's business; each principal's refusal is there.)
    for who in ["writer", "reader"] {
        assert!(
            lines.iter().any(|l| l["principal"] == who
                && l["resource"] == "secret-x"
                && l["result"] == "AccessDenied"),
            "{who}'s denial on secret-x"
        );
    }
    assert_eq!(count("spate:ListStreams", "*", "AuthenticationRequired"), 1);
    assert!(count("spate:Authenticate", "*", "AuthenticationFailed") >= 4);
    let denied = lines
        .iter()
        .find(|l| l["action"] == "spate:CreateStream" && l["resource"] == "mine")
        .unwrap();
    assert_eq!(denied["principal"], "writer");
    assert!(denied["source"].as_str().unwrap().starts_with("127.0.0.1:"));
    // Nothing secret in it.
    assert!(!lines
        .iter()
        .any(|l| l.to_string().contains(&reader_creds.secret)));
    assert!(!lines
        .iter()
        .any(|l| l.to_string().contains(&writer_creds.secret)));
    server.shutdown();
    let report = spate_engine::audit::verify_dir(&dir.path().join("audit")).unwrap();
    assert_eq!(report.lines, lines.len() as u64);

    // Principals, policies and the chain survive a restart.
    let server = start(dir.path());
    let addr = server.local_addr().to_string();
    rt.block_on(async {
        let r = connect(&addr, &reader_creds).await.unwrap();
        assert_eq!(r.server_info().principal.as_deref(), Some("reader"));
        let e = r
            .create_stream("nope", &StreamConfig::new(1))
            .await
            .unwrap_err();
        assert_eq!(code(&e), Some(ErrorCode::AccessDenied));
    });
    server.shutdown();
    let after = spate_engine::audit::verify_dir(&dir.path().join("audit")).unwrap();
    assert!(after.lines > report.lines);
}

/// A group worker whose reads are refused for a while (its principal's policy) reports the
/// refusal, and once reads are allowed again its reader starts over after the last record it
/// delivered: nothing lost, nothing repeated.
#[test]
fn a_group_reader_refused_for_a_while_resumes_where_it_stopped() {
    use spate_client::{GroupEvent, GroupOptions, GroupWorker, ReadOptions};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(EngineConfig {
        listen: "127.0.0.1:0".into(),
        auth: true,
        group_lease_timeout_ms: 1_500,
        ..test_config(dir.path())
    })
    .expect("server starts");
    let addr = server.local_addr().to_string();
    let root = root_credentials(dir.path());
    runtime().block_on(async {
        let admin = connect(&addr, &root).await.unwrap();
        admin
            .create_stream("jobs", &StreamConfig::new(1).limits(Limits::Off))
            .await
            .unwrap();
        let put = |from: u64| {
            let admin = admin.clone();
            async move {
                let entries: Vec<Entry> = (from..from + 50)
                    .map(|i| Entry::new("k", i.to_string()))
                    .collect();
                for r in admin.put_records("jobs", entries).await {
                    r.unwrap();
                }
            }
        };
        put(0).await;
        let w = admin.create_principal("worker").await.unwrap();
        admin
            .put_policy(
                "worker",
                "all",
                r#"{"Statement":[{"Effect":"Allow","Action":"spate:*","Resource":"*"}]}"#,
            )
            .await
            .unwrap();
        let client = connect(&addr, &Credentials::new(&w.access_key_id, &w.secret))
            .await
            .unwrap();
        let mut worker = GroupWorker::join(
            &client,
            "jobs",
            "g",
            GroupOptions {
                worker: "w".into(),
                read: ReadOptions {
                    wait_ms: 200,
                    ..ReadOptions::default()
                },
                ..GroupOptions::default()
            },
        )
        .await
        .unwrap();
        let mut seen: Vec<u64> = Vec::new();
        let mut refused = 0;
        fn numbers(records: &[spate_client::Record]) -> Vec<u64> {
            records
                .iter()
                .map(|r| std::str::from_utf8(&r.data).unwrap().parse().unwrap())
                .collect()
        }
        async fn next(worker: &mut GroupWorker) -> Result<GroupEvent, ClientError> {
            tokio::time::timeout(Duration::from_secs(20), worker.next())
                .await
                .expect("an event in time")
                .expect("the worker runs")
        }
        while seen.len() < 50 {
            if let Ok(GroupEvent::Records { records, .. }) = next(&mut worker).await {
                seen.extend(numbers(&records));
            }
        }
        // Reads refused: the worker says so (a long-poll authorized before the change ends
        // first; the next read is refused).
        admin
            .put_policy(
                "worker",
                "no-reads",
                r#"{"Statement":[{"Effect":"Deny","Action":"spate:GetRecords","Resource":"*"}]}"#,
            )
            .await
            .unwrap();
        while refused == 0 {
            match next(&mut worker).await {
                Err(e) => {
                    assert_eq!(e.code(), Some(ErrorCode::AccessDenied), "{e}");
                    refused += 1;
                }
                Ok(GroupEvent::Records { records, .. }) => seen.extend(numbers(&records)),
                Ok(_) => {}
            }
        }
        assert_eq!(seen.len(), 50, "nothing new was written yet");
        // Written while the reader is stopped, then allowed again: the reader starts over
        // after its last record, at the next heartbeat.
        put(50).await;
        admin.delete_policy("worker", "no-reads").await.unwrap();
        while seen.len() < 100 {
            match next(&mut worker).await {
                Ok(GroupEvent::Records { records, .. }) => seen.extend(numbers(&records)),
                Ok(_) => {}
                // A read refused before the policy change reached it.
                Err(e) => assert_eq!(e.code(), Some(ErrorCode::AccessDenied), "{e}"),
            }
        }
        assert_eq!(
            seen,
            (0..100).collect::<Vec<_>>(),
            "in order, none lost or repeated"
        );
    });
    server.shutdown();
}

/// Access taken away reaches what is already under way: a connection of a principal that
/// was deleted and made again (a new secret, which that connection never proved) is
/// refused; an open subscription and a long-poll waiting for records end refused instead
/// of delivering what arrives after the principal was disabled; a refused read's audit line
/// names its stream.
#[test]
fn revoked_access_reaches_open_connections_subscriptions_and_long_polls() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let addr = server.local_addr().to_string();
    let root = root_credentials(dir.path());
    runtime().block_on(async {
        let admin = connect(&addr, &root).await.unwrap();
        admin
            .create_stream("s", &StreamConfig::new(1).limits(Limits::Off))
            .await
            .unwrap();
        admin.register_consumer("s", "c").await.unwrap();
        let policy =
            r#"{"Statement":[{"Effect":"Allow","Action":"spate:*","Resource":["s","*"]}]}"#;
        let grant = |name: &'static str| {
            let admin = admin.clone();
            async move {
                let p = admin.create_principal(name).await.unwrap();
                admin.put_policy(name, "all", policy).await.unwrap();
                Credentials::new(&p.access_key_id, &p.secret)
            }
        };

        // Deleted and made again: the old login is not the new principal.
        let old = connect(&addr, &grant("alice").await).await.unwrap();
        old.describe_stream("s").await.unwrap();
        admin.delete_principal("alice").await.unwrap();
        let fresh = grant("alice").await;
        let e = old.describe_stream("s").await.unwrap_err();
        assert_eq!(code(&e), Some(ErrorCode::AccessDenied), "{e}");
        assert!(e.to_string().contains("was deleted"), "{e}");
        let new = connect(&addr, &fresh).await.unwrap();
        new.describe_stream("s").await.unwrap();

        // A subscription open when its principal is disabled gets nothing put after.
        let mut sub = new
            .subscribe("s", "c", 0, Position::Latest, Default::default())
            .await
            .unwrap();
        let started = sub.next().await.unwrap().unwrap();
        assert!(started.records.is_empty());
        // A long-poll waiting at the tip, on its own connection.
        let poller = connect(&addr, &fresh).await.unwrap();
        let it = poller.get_iterator("s", 0, Position::Latest).await.unwrap();
        let poll = tokio::spawn({
            let poller = poller.clone();
            async move { poller.get_records(&it, 100, 1 << 20, 20_000).await }
        });
        admin.set_principal_enabled("alice", false).await.unwrap();
        admin
            .put_records("s", vec![Entry::new("k", b"after".to_vec())])
            .await
            .remove(0)
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "no refusal within 60 s"
            );
            let next = tokio::time::timeout(Duration::from_secs(30), sub.next())
                .await
                .expect("an event or the refusal within 30 s");
            match next {
                Ok(Some(event)) => assert!(
                    event.records.is_empty(),
                    "a disabled principal's subscription delivered {:?}",
                    event.records
                ),
                Ok(None) => panic!("the subscription ended without its refusal"),
                Err(e) => {
                    assert_eq!(code(&e), Some(ErrorCode::AccessDenied), "{e}");
                    break;
                }
            }
        }
        let e = tokio::time::timeout(Duration::from_secs(30), poll)
            .await
            .expect("the long-poll answers")
            .unwrap()
            .unwrap_err();
        assert_eq!(code(&e), Some(ErrorCode::AccessDenied), "{e}");

        // The refused reads' audit lines name the stream.
        let (lines, _) = admin.read_audit(1, 10_000, 0).await.unwrap();
        let refused_reads = lines
            .iter()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|l| l["action"] == "spate:GetRecords" && l["result"] == "AccessDenied")
            .map(|l| l["resource"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>();
        assert_eq!(refused_reads, ["s"]);
    });
    server.shutdown();
}

/// Refusals past `audit_refusal_lines_per_s` are counted into a summary line, not written
/// one line each: a client that is refused over and over cannot fill the disk (it wrote
/// 45 MB of lines a second before), and the trail still says who was refused and how often.
#[test]
fn refusals_past_the_audit_budget_are_summarized() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(EngineConfig {
        listen: "127.0.0.1:0".into(),
        auth: true,
        audit_refusal_lines_per_s: 5,
        ..test_config(dir.path())
    })
    .expect("server starts");
    let addr = server.local_addr().to_string();
    let root = root_credentials(dir.path());
    let mut raw = TcpStream::connect(&addr).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let list = Request::ListStreams(ListStreamsRequest {
        exclusive_start_name: None,
        limit: 10,
    });
    let refusals = 200;
    for i in 0..refusals {
        assert_eq!(
            error_of(&raw_call(&mut raw, i, &list)),
            Some(ErrorCode::AuthenticationRequired)
        );
    }
    runtime().block_on(async {
        let admin = connect(&addr, &root).await.unwrap();
        // The summary is written within a second of the refusals it counts.
        let mut from = 1;
        let mut lines: Vec<serde_json::Value> = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let summarized = loop {
            assert!(
                std::time::Instant::now() < deadline,
                "not every refusal was accounted for within 60 s: {lines:?}"
            );
            let (more, next) = admin.read_audit(from, 10_000, 2_000).await.unwrap();
            from = next;
            lines.extend(more.iter().map(|l| serde_json::from_str(l).unwrap()));
            let summarized: u64 = lines
                .iter()
                .filter(|l| l["action"] == "spate:Refusals")
                .map(|l| l["params"]["refusals"].as_u64().unwrap())
                .sum();
            let single = lines
                .iter()
                .filter(|l| l["result"] == "AuthenticationRequired")
                .count() as u64;
            if summarized + single == refusals {
                break summarized;
            }
        };
        let single = refusals - summarized;
        // The bucket holds a second's worth; the refusals took well under a few seconds.
        assert!((5..=60).contains(&single), "{single} refusals had lines");
        let summary = lines
            .iter()
            .find(|l| l["action"] == "spate:Refusals")
            .unwrap();
        assert_eq!(summary["result"], "summary");
        let params = &summary["params"];
        assert!(
            params["by_source"]["127.0.0.1"].as_u64().unwrap() > 0,
            "{summary}"
        );
        assert!(
            params["by_principal"]["(unauthenticated)"]
                .as_u64()
                .unwrap()
                > 0
        );
        assert!(params["by_action"]["spate:ListStreams"].as_u64().unwrap() > 0);
        assert!(
            params["by_result"]["AuthenticationRequired"]
                .as_u64()
                .unwrap()
                > 0
        );
    });
    server.shutdown();
    // The chain, summaries included, verifies.
    spate_engine::audit::verify_dir(&dir.path().join("audit")).unwrap();
}

/// With authentication off, principals and policies cannot be made: made while anyone may
/// connect, they could be anyone's, and the first start with authentication on would then
/// make no root (one principal exists), leaving their maker the only administrator.
#[test]
fn principals_are_not_made_while_authentication_is_off() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(EngineConfig {
        listen: "127.0.0.1:0".into(),
        ..test_config(dir.path())
    })
    .expect("server starts");
    let addr = server.local_addr().to_string();
    runtime().block_on(async {
        let open = Client::connect(addr.clone()).await.unwrap();
        let e = open.create_principal("mallory").await.unwrap_err();
        assert_eq!(code(&e), Some(ErrorCode::InvalidArgument), "{e}");
        assert!(e.to_string().contains("authentication is off"), "{e}");
        let e = open
            .put_policy(
                "root",
                "all",
                r#"{"Statement":[{"Effect":"Allow","Action":"spate:*","Resource":"*"}]}"#,
            )
            .await
            .unwrap_err();
        assert_eq!(code(&e), Some(ErrorCode::InvalidArgument), "{e}");
        assert!(open.list_principals().await.unwrap().is_empty());
    });
    server.shutdown();
    // The first start with authentication on makes root.
    let server = start(dir.path());
    root_credentials(dir.path());
    server.shutdown();
}
