//! TLS end to end: a server with rcgen-made certificates (in a temp dir, made at test time)
//! on port 0 with two cores, and the client library, a raw socket and a blocking rustls
//! client against it. Covers the round trip with shard-aware routing (every core's own
//! listener speaks TLS), a wrong CA, an expired certificate, a plaintext client on the TLS
//! port and the reverse, mutual TLS, the handshake timeout, the metrics endpoint over HTTPS
//! and startup errors. Every wait is on a condition with a bound, never a sleep.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use spate_client::{
    Client, ClientCert, ClientConfig, ClientError, Entry, Limits, Pem, Position, StreamConfig,
    TlsOptions,
};
use spate_engine::config::EngineConfig;
use spate_engine::server::Server;
use spate_protocol::{HelloRequest, Request};
use spate_tests::{test_config, wait_until};

/// A CA: its certificate (to sign with, and as PEM) and key.
struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        params.distinguished_name = names(name);
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// A leaf certificate and its key, as PEM: for a server (SANs 127.0.0.1 and
    /// localhost) or a client, valid now or long expired.
    fn issue(&self, cn: &str, server: bool, expired: bool) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let sans = if server {
            vec!["127.0.0.1".to_string(), "localhost".to_string()]
        } else {
            Vec::new()
        };
        let mut params = rcgen::CertificateParams::new(sans).unwrap();
        params.distinguished_name = names(cn);
        params.extended_key_usages = vec![if server {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        }];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn names(cn: &str) -> rcgen::DistinguishedName {
    let mut names = rcgen::DistinguishedName::new();
    names.push(rcgen::DnType::CommonName, cn);
    names
}

/// Every file a test needs, written into a temp dir.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
        };
        let ca = Ca::new("Spate test CA");
        let other = Ca::new("Unrelated CA");
        let client_ca = Ca::new("Spate client CA");
        pki.write("ca.pem", &ca.cert.pem());
        pki.write("other-ca.pem", &other.cert.pem());
        pki.write("client-ca.pem", &client_ca.cert.pem());
        pki.write_pair("server", ca.issue("spate-server", true, false));
        pki.write_pair("expired", ca.issue("spate-server", true, true));
        pki.write_pair("client", client_ca.issue("producer-7", false, false));
        pki.write_pair("stranger", other.issue("producer-7", false, false));
        pki
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.dir.path().join(name), text).unwrap();
    }

    fn write_pair(&self, name: &str, (cert, key): (String, String)) {
        self.write(&format!("{name}.pem"), &cert);
        self.write(&format!("{name}-key.pem"), &key);
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// TLS options trusting the CA in `ca_file`.
    fn trusting(&self, ca_file: &str) -> TlsOptions {
        TlsOptions::with_ca_file(self.path(ca_file))
    }

    /// As `trusting("ca.pem")`, presenting the client certificate `name`.
    fn presenting(&self, name: &str) -> TlsOptions {
        TlsOptions {
            client_cert: Some(ClientCert {
                chain: Pem::File(self.path(&format!("{name}.pem"))),
                key: Pem::File(self.path(&format!("{name}-key.pem"))),
            }),
            ..self.trusting("ca.pem")
        }
    }
}

/// A server on port 0 with two cores (both on CPU 0, so any machine runs it) and its data
/// in a temp dir; `tls` names the certificate pair and, for mutual TLS, the client CA.
struct Env {
    server: Option<Server>,
    _data: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
}

impl Env {
    fn start(pki: &Pki, cert: Option<&str>, client_ca: Option<&str>) -> Env {
        Env::start_with(pki, cert, client_ca, |c| c)
    }

    fn start_with(
        pki: &Pki,
        cert: Option<&str>,
        client_ca: Option<&str>,
        adjust: impl FnOnce(EngineConfig) -> EngineConfig,
    ) -> Env {
        let data = tempfile::tempdir().unwrap();
        let cfg = adjust(EngineConfig {
            listen: "127.0.0.1:0".into(),
            cores: vec![0, 0],
            tls_cert_file: cert.map(|c| pki.path(&format!("{c}.pem"))),
            tls_key_file: cert.map(|c| pki.path(&format!("{c}-key.pem"))),
            tls_client_ca_file: client_ca.map(|c| pki.path(c)),
            ..test_config(data.path())
        });
        let server = Server::start(cfg).expect("server starts");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        Env {
            server: Some(server),
            _data: data,
            rt,
        }
    }

    fn server(&self) -> &Server {
        self.server.as_ref().unwrap()
    }

    fn addr(&self) -> String {
        self.server().local_addr().to_string()
    }

    /// Connects with `tls` (`None`: plaintext), within a bound so a hang fails the test.
    fn connect(&self, tls: Option<TlsOptions>) -> Result<Client, ClientError> {
        let config = ClientConfig {
            tls,
            connect_timeout: Duration::from_secs(20),
            ..ClientConfig::default()
        };
        let addr = self.addr();
        self.rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(60), Client::connect_with(addr, config))
                .await
                .expect("connecting ends (an answer or an error), never hangs")
        })
    }

    /// Creates a stream, puts `n` records with distinct keys and reads every shard back:
    /// the records come back whole, each exactly once.
    fn round_trip(&self, client: &Client, stream: &str, shards: u32, n: usize) {
        self.rt.block_on(async {
            client
                .create_stream(stream, &StreamConfig::new(shards).limits(Limits::Off))
                .await
                .expect("create");
            let entries: Vec<Entry> = (0..n)
                .map(|i| Entry::new(format!("key-{i}"), format!("record {i} over tls")))
                .collect();
            let results = client.put_records(stream, entries).await;
            let mut expected: Vec<String> = Vec::new();
            for (i, r) in results.into_iter().enumerate() {
                r.unwrap_or_else(|e| panic!("record {i}: {e}"));
                expected.push(format!("record {i} over tls"));
            }
            let info = client.describe_stream(stream).await.expect("describe");
            let mut read: Vec<String> = Vec::new();
            for shard in &info.shards {
                let mut it = client
                    .get_iterator(stream, shard.id, Position::TrimHorizon)
                    .await
                    .expect("iterator");
                loop {
                    let got = client
                        .get_records(&it, 10_000, 10 << 20, 0)
                        .await
                        .expect("get records");
                    if got.records.is_empty() {
                        break;
                    }
                    read.extend(
                        got.records
                            .iter()
                            .map(|r| String::from_utf8(r.data.to_vec()).unwrap()),
                    );
                    it = got.next_iterator.expect("an open shard goes on");
                }
            }
            expected.sort();
            read.sort();
            assert_eq!(read, expected);
        });
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
        }
    }
}

/// The `Connect` error's reason; panics on anything else.
fn connect_reason(r: Result<Client, ClientError>) -> String {
    match r {
        Err(ClientError::Connect { reason, .. }) => reason,
        Err(other) => panic!("expected a Connect error, got {other:?}"),
        Ok(_) => panic!("expected a Connect error, the client connected"),
    }
}

#[test]
fn round_trip_over_tls_with_shard_aware_routing() {
    let pki = Pki::new();
    let env = Env::start(&pki, Some("server"), None);
    assert!(env.server().tls_enabled());
    let client = env.connect(Some(pki.trusting("ca.pem"))).expect("connects");
    assert!(client.config().shard_aware);
    assert_eq!(client.server_info().cores.len(), 2);
    env.round_trip(&client, "tls-roundtrip", 4, 400);
    // Shard-aware requests went to each core's own listener, over TLS: core 1 holds a
    // connection (with port 0 only core 0 takes the public address, and a core's address
    // the client cannot reach would have been replaced by the bootstrap connection).
    let stats = env.server().net_stats();
    assert!(
        stats[1].connections >= 1,
        "core 1's own (TLS) listener served the client: {stats:?}"
    );
    // And that listener refuses plaintext like the public one.
    let core1 = env.server().core_addrs()[1];
    let mut raw = TcpStream::connect(core1).unwrap();
    let closed = plaintext_hello_is_closed(&mut raw);
    assert!(closed, "core 1's listener speaks TLS only");
}

#[test]
fn large_records_cross_tls_whole_in_both_directions() {
    let pki = Pki::new();
    let env = Env::start(&pki, Some("server"), None);
    let client = env.connect(Some(pki.trusting("ca.pem"))).expect("connects");
    env.rt.block_on(async {
        client
            .create_stream("large", &StreamConfig::new(1).limits(Limits::Off))
            .await
            .expect("create");
        // Frames of many TLS records each way: 1 MiB records, a batch of several.
        let data: Vec<Vec<u8>> = (0..6u8)
            .map(|i| {
                (0..(1 << 20) - 64)
                    .map(|j| (j as u8) ^ i.wrapping_mul(37))
                    .collect()
            })
            .collect();
        let entries: Vec<Entry> = data
            .iter()
            .enumerate()
            .map(|(i, d)| Entry::new(format!("k{i}"), d.clone()))
            .collect();
        for r in client.put_records("large", entries).await {
            r.expect("stored");
        }
        let mut it = client
            .get_iterator("large", 0, Position::TrimHorizon)
            .await
            .expect("iterator");
        let mut read = Vec::new();
        while read.len() < data.len() {
            let got = client
                .get_records(&it, 10_000, 10 << 20, 0)
                .await
                .expect("get records");
            read.extend(got.records.iter().map(|r| r.data.to_vec()));
            it = got.next_iterator.expect("open shard");
        }
        assert!(read == data, "every byte came back as it was sent");
    });
}

#[test]
fn wrong_ca_is_refused_and_the_server_keeps_serving() {
    let pki = Pki::new();
    let env = Env::start(&pki, Some("server"), None);
    let reason = connect_reason(env.connect(Some(pki.trusting("other-ca.pem"))));
    assert!(reason.contains("UnknownIssuer"), "{reason}");
    // A misnamed server fails too (the certificate is for 127.0.0.1 and localhost).
    let misnamed = TlsOptions {
        server_name: Some("spate.example".into()),
        ..pki.trusting("ca.pem")
    };
    let reason = connect_reason(env.connect(Some(misnamed)));
    assert!(reason.contains("not valid for name"), "{reason}");
    // Others are served as before.
    let client = env.connect(Some(pki.trusting("ca.pem"))).expect("connects");
    env.round_trip(&client, "after-refusals", 2, 50);
}

#[test]
fn expired_certificate_is_refused_with_a_clear_error() {
    let pki = Pki::new();
    let env = Env::start(&pki, Some("expired"), None);
    let reason = connect_reason(env.connect(Some(pki.trusting("ca.pem"))));
    assert!(reason.contains("expired"), "{reason}");
}

/// Sends a plaintext Hello on `raw` and reads until the server closes; `true` when it does
/// (after at most a TLS alert) within a bound, `false` if it answered with a frame.
fn plaintext_hello_is_closed(raw: &mut TcpStream) -> bool {
    raw.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut hello = Vec::new();
    spate_protocol::encode_request(
        &mut hello,
        1,
        &Request::Hello(HelloRequest {
            client_name: "plaintext",
        }),
    );
    raw.write_all(&hello).unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match raw.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the server neither answered nor closed: {e}"),
        }
    }
    // Nothing, or a TLS alert record (content type 21): never a protocol frame.
    got.is_empty() || got[0] == 0x15
}

#[test]
fn plaintext_client_on_the_tls_port_fails_fast_and_the_server_stays_up() {
    let pki = Pki::new();
    let env = Env::start(&pki, Some("server"), None);
    let started = Instant::now();
    let err = env
        .connect(None)
        .expect_err("a plaintext client is refused");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "refused at once, not after a timeout: {:?}",
        started.elapsed()
    );
    assert!(err.to_string().contains("TLS"), "{err}");
    let mut raw = TcpStream::connect(env.server().local_addr()).unwrap();
    assert!(plaintext_hello_is_closed(&mut raw));
    // The failed handshakes hold nothing on the server.
    wait_until(
        "the refused connections are gone",
        Duration::from_secs(30),
        || env.server().net_stats().iter().all(|s| s.connections == 0),
    );
    let client = env.connect(Some(pki.trusting("ca.pem"))).expect("connects");
    env.round_trip(&client, "still-up", 1, 10);
}

#[test]
fn tls_client_on_a_plaintext_server_gets_a_clear_error() {
    let pki = Pki::new();
    let env = Env::start(&pki, None, None);
    assert!(!env.server().tls_enabled());
    let reason = connect_reason(env.connect(Some(pki.trusting("ca.pem"))));
    assert!(reason.contains("TLS"), "{reason}");
    // The plaintext server goes on serving plaintext clients.
    let client = env.connect(None).expect("connects");
    env.round_trip(&client, "plain", 2, 20);
}

#[test]
fn mutual_tls_requires_a_client_certificate_from_the_client_ca() {
    let pki = Pki::new();
    let env = Env::start(&pki, Some("server"), Some("client-ca.pem"));
    let reason = connect_reason(env.connect(Some(pki.trusting("ca.pem"))));
    assert!(reason.contains("CertificateRequired"), "{reason}");
    let err = env
        .connect(Some(pki.presenting("stranger")))
        .expect_err("a certificate from another CA is refused");
    assert!(
        matches!(err, ClientError::Connect { .. }),
        "refused at the handshake: {err}"
    );
    let client = env
        .connect(Some(pki.presenting("client")))
        .expect("a certificate from the client CA is accepted");
    env.round_trip(&client, "mutual", 2, 50);
    // The per-core connections presented it too.
    assert!(env.server().net_stats()[1].connections >= 1);
}

#[test]
fn a_handshake_that_never_finishes_is_closed_in_time() {
    let pki = Pki::new();
    let env = Env::start_with(&pki, Some("server"), None, |c| EngineConfig {
        tls_handshake_timeout_ms: 300,
        ..c
    });
    // One peer says nothing, another starts a ClientHello and stops. (The clock starts
    // before they connect: the server's cannot start earlier.)
    let started = Instant::now();
    let mut silent = TcpStream::connect(env.server().local_addr()).unwrap();
    let mut partial = TcpStream::connect(env.server().local_addr()).unwrap();
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    for peer in [&mut silent, &mut partial] {
        peer.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut sink = [0u8; 256];
        loop {
            match peer.read(&mut sink) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("the server did not close a stalled handshake: {e}"),
            }
        }
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300),
        "closed before its time: {waited:?}"
    );
    wait_until(
        "the stalled connections are gone",
        Duration::from_secs(30),
        || env.server().net_stats().iter().all(|s| s.connections == 0),
    );
}

#[test]
fn metrics_endpoint_answers_over_https() {
    let pki = Pki::new();
    let env = Env::start_with(&pki, Some("server"), None, |c| EngineConfig {
        metrics_listen: "127.0.0.1:0".into(),
        ..c
    });
    let addr = env.server().metrics_addr().expect("metrics on");
    let client = env.connect(Some(pki.trusting("ca.pem"))).expect("connects");
    assert_eq!(
        client.server_info().metrics_address.as_deref(),
        Some(addr.to_string().as_str())
    );
    env.round_trip(&client, "metered", 1, 5);

    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(pki.path("ca.pem")).unwrap();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&ca) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let session = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut https = rustls::StreamOwned::new(session, tcp);
    https
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: spate\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    https
        .read_to_string(&mut text)
        .expect("a whole answer, closed with close_notify");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("IncomingRecords"), "{text}");

    // Plain HTTP gets no answer.
    let mut plain = TcpStream::connect(addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    plain
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: spate\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let _ = plain.read_to_end(&mut got);
    assert!(
        !got.starts_with(b"HTTP"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
}

#[test]
fn shutdown_answers_in_flight_requests_over_tls_then_says_goodbye() {
    let pki = Pki::new();
    let mut env = Env::start(&pki, Some("server"), None);
    let client = env.connect(Some(pki.trusting("ca.pem"))).expect("connects");
    env.round_trip(&client, "goodbye", 1, 20);
    // A long-poll at the tip waits in the server until the shutdown answers it.
    let it = env
        .rt
        .block_on(client.get_iterator("goodbye", 0, Position::Latest))
        .expect("iterator");
    let poller = client.clone();
    let polling = env
        .rt
        .spawn(async move { poller.get_records(&it, 100, 1 << 20, 30_000).await });
    wait_until("the long-poll is parked", Duration::from_secs(30), || {
        env.server().net_stats().iter().any(|s| s.parked_reads == 1)
    });
    env.server.take().unwrap().shutdown();
    let answered = env
        .rt
        .block_on(polling)
        .unwrap()
        .expect("the long-poll is answered before the connection closes");
    assert!(answered.records.is_empty());
    let err = env
        .rt
        .block_on(client.list_streams())
        .expect_err("the server is gone");
    assert!(err.is_retryable(), "{err}");
}

#[test]
fn startup_errors_name_what_is_missing() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let base = EngineConfig {
        listen: "127.0.0.1:0".into(),
        ..test_config(data.path())
    };
    let required = Server::start(EngineConfig {
        plaintext: false,
        ..base.clone()
    })
    .expect_err("plaintext = false without a certificate");
    assert!(
        required.to_string().contains("plaintext = false"),
        "{required}"
    );
    let missing = Server::start(EngineConfig {
        tls_cert_file: Some(pki.path("nowhere.pem")),
        tls_key_file: Some(pki.path("server-key.pem")),
        ..base.clone()
    })
    .expect_err("a missing certificate file");
    assert!(missing.to_string().contains("nowhere.pem"), "{missing}");
    let mismatched = Server::start(EngineConfig {
        tls_cert_file: Some(pki.path("server.pem")),
        tls_key_file: Some(pki.path("client-key.pem")),
        ..base
    })
    .expect_err("a key that is not the certificate's");
    assert!(
        mismatched.to_string().contains("client-key.pem"),
        "{mismatched}"
    );
}

#[test]
fn a_client_certificate_names_its_principal_when_authentication_is_on() {
    let pki = Pki::new();
    let env = Env::start_with(&pki, Some("server"), Some("client-ca.pem"), |c| {
        EngineConfig { auth: true, ..c }
    });
    let root: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(env._data.path().join("root.credentials")).unwrap(),
    )
    .unwrap();
    let root = spate_client::Credentials::new(
        root["access_key_id"].as_str().unwrap(),
        root["secret"].as_str().unwrap(),
    );
    // Root authenticates by secret over the mutual-TLS connection of an unknown subject.
    let admin_cfg = ClientConfig {
        tls: Some(pki.presenting("client")),
        credentials: Some(root),
        ..ClientConfig::default()
    };
    let addr = env.addr();
    env.rt.block_on(async {
        let admin = Client::connect_with(addr.clone(), admin_cfg).await.unwrap();
        assert_eq!(admin.server_info().principal.as_deref(), Some("root"));
        admin
            .create_stream("certs", &StreamConfig::new(1).limits(Limits::Off))
            .await
            .unwrap();
        // Before the principal exists, the certificate alone is not enough.
        let none = Client::connect_with(
            addr.clone(),
            ClientConfig {
                tls: Some(pki.presenting("client")),
                ..ClientConfig::default()
            },
        )
        .await
        .unwrap_err();
        assert!(none.to_string().contains("only authenticated"), "{none}");
        admin.create_principal("producer-7").await.unwrap();
        admin
            .put_policy(
                "producer-7",
                "put",
                r#"{"Statement":[{"Effect":"Allow","Action":["spate:PutRecords","spate:DescribeStream"],"Resource":"certs"}]}"#,
            )
            .await
            .unwrap();
    });
    // The certificate's subject is the principal: no secret needed.
    let client = env
        .connect(Some(pki.presenting("client")))
        .expect("authenticated by its certificate");
    assert_eq!(
        client.server_info().principal.as_deref(),
        Some("producer-7")
    );
    env.rt.block_on(async {
        client
            .put_records("certs", vec![Entry::new("k", "v")])
            .await
            .remove(0)
            .expect("allowed");
        let e = client
            .create_stream("mine", &StreamConfig::new(1))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(spate_client::ErrorCode::AccessDenied), "{e}");
    });
}
