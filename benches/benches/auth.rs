//! What authorization costs the request path, and what authentication costs a connection:
//!
//! - `auth/decision-cache-hit`: the per-request check with authorization on — a look-up
//!   of (action, stream) in the connection's `DecisionCache` (what every request pays once
//!   its first one on that stream was decided);
//! - `auth/decide`: a miss, evaluated on core 0 — the principal's policies against the
//!   action and stream (once per connection, stream and action, and after every change);
//! - `auth/scram-verify` and `auth/client-proof`: the server's and the client's work per
//!   connection authenticated (the client's key derivation, PBKDF2 with 4096 iterations, is
//!   measured apart: a client does it once per secret and salt).
//!
//! `cargo bench -p spate-benches --bench auth`; BENCHMARKS.md, "Security", has the figures.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use spate_engine::auth::{AuthStore, Decision, DecisionCache};
use spate_protocol::scram;

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

const STREAMS: [&str; 8] = [
    "clicks-eu",
    "clicks-us",
    "clicks-ap",
    "orders",
    "payments",
    "iot-1",
    "iot-2",
    "audit",
];

fn store() -> AuthStore {
    let mut s = AuthStore::from_bytes(std::path::Path::new("/nonexistent"), None).unwrap();
    let mut rng = rand_core();
    s.create_principal("app", 0, &mut rng).unwrap();
    s.put_policy(
        "app",
        "writer",
        r#"{"Statement":[{"Effect":"Allow","Action":["spate:PutRecord*","spate:DescribeStream","spate:Get*"],"Resource":["clicks-*","orders","iot-?"]}]}"#,
    )
    .unwrap();
    s.put_policy(
        "app",
        "guard",
        r#"{"Statement":[{"Effect":"Deny","Action":"spate:*","Resource":["payments","audit*"]}]}"#,
    )
    .unwrap();
    s
}

/// A deterministic random source (the store draws key ids and secrets from it).
fn rand_core() -> impl rand::RngCore {
    use rand::SeedableRng;
    rand::rngs::StdRng::seed_from_u64(7)
}

fn decisions(c: &mut Criterion) {
    let store = store();
    let mut g = c.benchmark_group("auth");
    let mut cache = DecisionCache::default();
    for s in STREAMS {
        for a in [
            "spate:PutRecords",
            "spate:GetRecords",
            "spate:DescribeStream",
        ] {
            let d = store.decide("app", a, s);
            cache.insert(0, a, s, d);
        }
    }
    let mut i = 0usize;
    g.bench_function("decision-cache-hit", |b| {
        b.iter(|| {
            i = (i + 1) % STREAMS.len();
            let d = cache.get(0, "spate:PutRecords", std::hint::black_box(STREAMS[i]));
            assert!(d.is_some());
            d
        })
    });
    g.bench_function("decide", |b| {
        b.iter(|| {
            i = (i + 1) % STREAMS.len();
            let d = store.decide("app", "spate:PutRecords", std::hint::black_box(STREAMS[i]));
            std::hint::black_box(d == Decision::Allow)
        })
    });
    let creds = scram::derive(b"secret-of-forty-characters-0123456789abc", [3; 16], 4096);
    let message = scram::auth_message("SPAKABCDEFGHIJKLMNOP", &[1; 32], &[2; 32], &[3; 16], 4096);
    let keys =
        scram::ClientKeys::derive(b"secret-of-forty-characters-0123456789abc", [3; 16], 4096);
    let proof = keys.proof(&message);
    g.bench_function("scram-verify", |b| {
        b.iter(|| scram::verify(&creds, std::hint::black_box(&message), &proof.proof).unwrap())
    });
    g.bench_function("client-proof", |b| {
        b.iter(|| keys.proof(std::hint::black_box(&message)))
    });
    g.sample_size(10);
    g.bench_function("client-key-derivation-pbkdf2-4096", |b| {
        b.iter(|| {
            scram::ClientKeys::derive(
                std::hint::black_box(b"secret-of-forty-characters-0123456789abc"),
                [3; 16],
                4096,
            )
        })
    });
    g.finish();
}

criterion_group! { name = benches; config = config(); targets = decisions }
criterion_main!(benches);
