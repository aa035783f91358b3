//! Fuzz smoke: the libFuzzer targets' properties (`spate_protocol::fuzzing`), run under
//! `cargo test` on a fixed budget of mutated valid frames, so CI checks every decoder
//! against hostile input on every change without a nightly toolchain.
//!
//! Deterministic: a fixed seed drives a tiny inline PRNG (no `rand` dependency). A failure
//! prints the seed, the iteration and the input; rerun one case with
//! `SPATE_FUZZ_SEED=<seed> cargo test -p spate-protocol --test fuzz_smoke`, and widen the
//! search with `SPATE_FUZZ_ITERATIONS=<n>`.

use spate_protocol::auth::*;
use spate_protocol::batch::{stamp, BatchBuilder};
use spate_protocol::consumer::*;
use spate_protocol::fuzzing;
use spate_protocol::*;
use std::panic::{catch_unwind, AssertUnwindSafe};

const DEFAULT_SEED: u64 = 0x5eed_5a7e_0000_0001;
const DEFAULT_ITERATIONS: u64 = 20_000;

/// SplitMix64: tiny, fast, and good enough to drive mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0); the modulo bias is irrelevant here.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => {
            let v = v.trim();
            let parsed = match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => v.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("{name}={v} is not a number"))
        }
        Err(_) => default,
    }
}

fn producer_batch() -> Vec<u8> {
    let mut b = BatchBuilder::new();
    b.push(b"device-1", b"hello", None).unwrap();
    b.push(b"device-2", b"", Some(1 << 100)).unwrap();
    b.push("κλειδί".as_bytes(), &[7u8; 40], None).unwrap();
    b.finish()
}

fn one_record_batch() -> Vec<u8> {
    let mut b = BatchBuilder::new();
    b.push(b"k", b"v", None).unwrap();
    b.finish()
}

fn stored_batch(base_seq: u64, n: u32) -> Vec<u8> {
    let mut b = BatchBuilder::new();
    for i in 0..n {
        b.push(format!("key-{i}").as_bytes(), &[i as u8; 3], None)
            .unwrap();
    }
    let mut batch = b.finish();
    stamp(&mut batch, base_seq, 1_700_000_000_000, 42);
    batch
}

/// Valid frames of every message kind: the seeds the mutations start from.
fn frame_corpus() -> Vec<Vec<u8>> {
    let batch = producer_batch();
    let one = one_record_batch();
    let token = IteratorToken {
        stream_id: 1,
        shard_id: 2,
        next_seq: 3,
        issued_at_ms: 4,
    }
    .encode(&spate_protocol::TokenKey::new([0x5a; 32]));
    let custom = Limits::Custom {
        write_bytes_per_s: 1,
        write_records_per_s: 2,
        read_bytes_per_s: 3,
    };
    let requests = [
        Request::Hello(HelloRequest {
            client_name: "smoke",
        }),
        Request::CreateStream(CreateStreamRequest {
            name: "orders",
            shard_count: 4,
            retention_hours: 24,
            limits: custom,
            max_record_data_bytes: Some(1 << 20),
            encryption: EncryptionType::Aes256Gcm,
        }),
        Request::CreateStream(CreateStreamRequest {
            name: "plain",
            shard_count: 1,
            retention_hours: 24,
            limits: Limits::Kinesis,
            max_record_data_bytes: None,
            encryption: EncryptionType::None,
        }),
        Request::StartStreamEncryption(StreamEncryptionRequest {
            name: "orders",
            encryption: EncryptionType::Aes256Gcm,
        }),
        Request::StopStreamEncryption(StreamEncryptionRequest {
            name: "orders",
            encryption: EncryptionType::Aes256Gcm,
        }),
        Request::RotateKeys,
        Request::DeleteStream(DeleteStreamRequest { name: "orders" }),
        Request::ListStreams(ListStreamsRequest {
            exclusive_start_name: Some("a"),
            limit: 10,
        }),
        Request::DescribeStream(DescribeStreamRequest { name: "orders" }),
        Request::EnableEnhancedMonitoring(DescribeStreamRequest { name: "orders" }),
        Request::IncreaseRetention(RetentionRequest {
            name: "orders",
            retention_hours: 48,
        }),
        Request::SplitShard(SplitShardRequest {
            name: "orders",
            shard_id: 3,
            new_starting_hash_key: 1 << 127,
        }),
        Request::MergeShards(MergeShardsRequest {
            name: "orders",
            shard_id: 4,
            adjacent_shard_id: 5,
        }),
        Request::UpdateShardCount(UpdateShardCountRequest {
            name: "orders",
            target_shard_count: 64,
        }),
        Request::UpdateStreamMode(UpdateStreamModeRequest {
            name: "orders",
            mode: CapacityMode::OnDemand,
            max_write_mib_per_s: Some(64),
        }),
        Request::DecreaseRetention(RetentionRequest {
            name: "orders",
            retention_hours: 2,
        }),
        Request::PutRecord(PutRecordRequest {
            stream: "orders",
            batch: &one,
        }),
        Request::PutBatch(PutBatchRequest {
            stream: "orders",
            shard_id: 1,
            batch: &batch,
        }),
        Request::PutBatches(PutBatchesRequest {
            stream: "orders",
            batches: vec![
                ShardBatch {
                    shard_id: 1,
                    batch: &batch,
                },
                ShardBatch {
                    shard_id: 0,
                    batch: &one,
                },
            ],
        }),
        Request::GetIterator(GetIteratorRequest {
            stream: "orders",
            shard_id: 1,
            position: IteratorPosition::AtTimestamp {
                ts_ms: 1_700_000_000_000,
            },
        }),
        Request::GetIterator(GetIteratorRequest {
            stream: "orders",
            shard_id: 1,
            position: IteratorPosition::AfterSequenceNumber { seq: 9 },
        }),
        Request::GetRecords(GetRecordsRequest {
            iterator: &token,
            max_records: 100,
            max_bytes: 1 << 20,
            wait_ms: 500,
        }),
        Request::RegisterConsumer(ConsumerRequest {
            stream: "orders",
            consumer: "billing",
        }),
        Request::ListConsumers(StreamRequest { stream: "orders" }),
        Request::SubscribeToShard(SubscribeRequest {
            stream: "orders",
            consumer: "billing",
            shard_id: 2,
            position: IteratorPosition::AtSequenceNumber { seq: 4 },
            credit_bytes: 1 << 20,
        }),
        Request::SubscribeCredit(CreditRequest {
            subscription: 7,
            bytes: 65536,
        }),
        Request::GroupHeartbeat(GroupHeartbeatRequest {
            stream: "orders",
            group: "etl",
            worker: "host-1:99",
            start: IteratorPosition::AtTimestamp { ts_ms: 5 },
            leave: true,
        }),
        Request::Checkpoint(CheckpointRequest {
            stream: "orders",
            group: "etl",
            worker: "host-1:99",
            shard_id: 3,
            epoch: 2,
            checkpoint: Checkpoint::After { seq: 77 },
        }),
        Request::DescribeGroup(GroupRequest {
            stream: "orders",
            group: "etl",
        }),
        Request::AuthChallenge(AuthChallengeRequest {
            access_key_id: "SPAKABCDEFGHIJKLMNOP",
            client_nonce: [3; 32],
        }),
        Request::Authenticate(AuthenticateRequest { proof: [4; 32] }),
        Request::CreatePrincipal(PrincipalRequest { name: "svc.clicks" }),
        Request::ListPrincipals,
        Request::UpdatePrincipal(UpdatePrincipalRequest {
            name: "svc.clicks",
            enabled: false,
        }),
        Request::PutPolicy(PutPolicyRequest {
            principal: "svc.clicks",
            policy: "writer",
            document: r#"{"Statement":[{"Effect":"Allow","Action":"spate:PutRecords","Resource":"clicks-*"}]}"#,
        }),
        Request::GetPolicy(PolicyRequest {
            principal: "svc.clicks",
            policy: "writer",
        }),
        Request::ReadAudit(ReadAuditRequest {
            from_seq: 0,
            max_lines: 20,
            wait_ms: 1000,
        }),
    ];
    let shard = ShardDescription {
        id: 1,
        state: ShardState::Closed,
        hash_key_start: 0,
        hash_key_end: u128::MAX,
        parent: Some(0),
        adjacent_parent: None,
        core: 1,
        first_seq: Some(0),
        last_seq: Some(10),
        records: 11,
        bytes: 4096,
        disk_bytes: 1 << 24,
    };
    let responses = [
        Response::Hello(HelloResponse {
            protocol_version: PROTOCOL_VERSION,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES as u32,
            cores: vec![
                CoreInfo {
                    core_id: 0,
                    address: "127.0.0.1:7000",
                },
                CoreInfo {
                    core_id: 1,
                    address: "127.0.0.1:7001",
                },
            ],
            metrics_address: Some("127.0.0.1:7480"),
            auth_required: true,
            principal: Some("svc"),
        }),
        Response::CreateStream(CreateStreamResponse {
            stream_id: 7,
            status: spate_protocol::StreamStatus::Active,
        }),
        Response::DeleteStream,
        Response::ListStreams(ListStreamsResponse {
            names: vec!["a", "b"],
            has_more: true,
        }),
        Response::DescribeStream(StreamDescription {
            name: "orders",
            stream_id: 7,
            status: spate_protocol::StreamStatus::Active,
            retention_hours: 24,
            limits: Limits::Kinesis,
            max_record_data_bytes: 1 << 20,
            created_ms: 1_764_000_000_000,
            shards: vec![
                shard,
                ShardDescription {
                    id: 2,
                    state: ShardState::Open,
                    ..shard
                },
            ],
            mode: CapacityMode::Provisioned,
            map_version: 1,
            last_scaling: None,
            shard_level_metrics: false,
            encryption: EncryptionType::Aes256Gcm,
            key_epochs: 2,
            master_key_id: Some(3),
            max_write_mib_per_s: None,
        }),
        Response::StartStreamEncryption,
        Response::StopStreamEncryption,
        Response::RotateKeys(RotateKeysResponse {
            master_key_id: 4,
            streams: 12,
        }),
        Response::IncreaseRetention,
        Response::SplitShard(ReshardResponse {
            map_version: 2,
            new_shards: vec![4, 5],
        }),
        Response::UpdateShardCount(ReshardResponse {
            map_version: 9,
            new_shards: (10..74).collect(),
        }),
        Response::PutRecord(PutRecordResponse {
            shard_id: 1,
            seq: 5,
        }),
        Response::PutBatch(PutBatchResponse {
            shard_id: 1,
            base_seq: 5,
            accepted: 2,
            rejected: Some(Rejection {
                code: ErrorCode::Throttled,
                retry_after_ms: 100,
            }),
        }),
        Response::GetIterator(GetIteratorResponse { iterator: &token }),
        Response::PutBatches(PutBatchesResponse {
            outcomes: vec![
                ShardOutcome::Stored(PutBatchResponse {
                    shard_id: 1,
                    base_seq: 5,
                    accepted: 2,
                    rejected: None,
                }),
                ShardOutcome::Failed(ShardFailure {
                    shard_id: 0,
                    code: ErrorCode::WrongShard,
                    retry_after_ms: 0,
                    message: "no",
                    shard_map_version: 0,
                }),
            ],
        }),
        Response::ListConsumers(ListConsumersResponse {
            consumers: vec![ConsumerDescription {
                name: "billing",
                consumer_id: 3,
                created_ms: 1_700_000_000_000,
            }],
        }),
        Response::GroupHeartbeat(GroupHeartbeatResponse {
            lease_timeout_ms: 6000,
            start: IteratorPosition::Latest,
            leases: vec![Lease {
                shard_id: 1,
                epoch: 4,
                checkpoint: Checkpoint::After { seq: 9 },
            }],
        }),
        Response::DescribeGroup(GroupDescription {
            group: "etl",
            start: IteratorPosition::TrimHorizon,
            created_ms: 1,
            lease_timeout_ms: 6000,
            members: vec![GroupMember {
                worker: "w1",
                idle_ms: 100,
                leases: 1,
            }],
            shards: vec![GroupShard {
                shard_id: 1,
                owner: Some("w1"),
                epoch: 4,
                checkpoint: Checkpoint::ShardEnd,
                next_seq: 10,
                lag_records: 0,
            }],
        }),
        Response::ListGroups(ListGroupsResponse {
            groups: vec!["etl", "audit"],
        }),
        Response::AuthChallenge(AuthChallengeResponse {
            server_nonce: [5; 32],
            salt: [6; 16],
            iterations: 4096,
        }),
        Response::Authenticate(AuthenticateResponse {
            principal: "svc.clicks",
            server_signature: [7; 32],
        }),
        Response::CreatePrincipal(PrincipalCreated {
            name: "svc.clicks",
            access_key_id: "SPAKABCDEFGHIJKLMNOP",
            secret: "c2VjcmV0",
        }),
        Response::ListPrincipals(ListPrincipalsResponse {
            principals: vec![PrincipalInfo {
                name: "svc.clicks",
                access_key_id: "SPAKABCDEFGHIJKLMNOP",
                enabled: true,
                created_ms: 1_700_000_000_000,
                policies: vec!["writer", "reader"],
            }],
        }),
        Response::GetPolicy(PolicyDocument {
            document: r#"{"Statement":[]}"#,
        }),
        Response::ReadAudit(ReadAuditResponse {
            next_seq: 9,
            lines: vec![r#"{"seq":8,"action":"spate:CreateStream"}"#],
        }),
    ];
    let mut corpus = Vec::new();
    for (i, request) in requests.iter().enumerate() {
        let mut out = Vec::new();
        encode_request(&mut out, i as u64, request);
        corpus.push(out);
    }
    for (i, response) in responses.iter().enumerate() {
        let mut out = Vec::new();
        encode_response(&mut out, i as u64, response);
        corpus.push(out);
    }
    let a = stored_batch(10, 3);
    let b = stored_batch(13, 2);
    let head = GetRecordsHead {
        start_seq: 11,
        end_seq: 15,
        millis_behind_latest: 3,
        next_iterator: Some(&token),
        child_shards: Default::default(),
    };
    let mut out = Vec::new();
    encode_get_records_response(&mut out, 99, &head, [&a[..], &b[..]]);
    corpus.push(out);
    let children = ShardIds::encode(&[4, 5]);
    let event = consumer::SubscribeEventHead {
        start_seq: 10,
        continuation_seq: 15,
        millis_behind_latest: 0,
        ended: true,
        child_shards: ShardIds::from_bytes(&children).unwrap(),
    };
    let mut out = Vec::new();
    consumer::encode_subscribe_event_head(&mut out, 98, &event, 2, a.len() + b.len(), true);
    out.extend_from_slice(&a);
    out.extend_from_slice(&b);
    corpus.push(out);
    let mut out = Vec::new();
    let error = ErrorResponse {
        code: ErrorCode::Throttled,
        retry_after_ms: 20,
        message: "slow down",
        shard_map_version: 0,
    };
    encode_error(&mut out, Opcode::PutBatch.as_u16(), 5, &error);
    corpus.push(out);
    let mut out = Vec::new();
    let error = ErrorResponse {
        code: ErrorCode::KeyUnavailable,
        retry_after_ms: 0,
        message: "stream orders: master key 3 is not in the key file",
        shard_map_version: 0,
    };
    encode_error(&mut out, Opcode::GetRecords.as_u16(), 6, &error);
    corpus.push(out);
    let mut out = Vec::new();
    let error = ErrorResponse {
        code: ErrorCode::ShardClosed,
        retry_after_ms: 0,
        message: "shard 3 is closed",
        shard_map_version: 4,
    };
    encode_error(&mut out, Opcode::PutBatch.as_u16(), 5, &error);
    corpus.push(out);
    corpus
}

fn batch_corpus() -> Vec<Vec<u8>> {
    let token = IteratorToken {
        stream_id: 9,
        shard_id: 8,
        next_seq: 7,
        issued_at_ms: 6,
    }
    .encode(&spate_protocol::TokenKey::new([0x5a; 32]));
    vec![
        producer_batch(),
        one_record_batch(),
        stored_batch(100, 5),
        token.to_vec(),
    ]
}

const INTERESTING_U32: [u32; 9] = [0, 1, 15, 16, 63, 64, 0x7fff_ffff, 0xffff_ffff, 10 << 20];
const INTERESTING_U8: [u8; 6] = [0, 1, 0x7f, 0x80, 0xfe, 0xff];

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, other: &[u8]) {
    let len = input.len();
    match rng.below(9) {
        0 if len > 0 => {
            let at = rng.below(len);
            input[at] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let at = rng.below(len);
            input[at] = INTERESTING_U8[rng.below(INTERESTING_U8.len())];
        }
        2 => input.truncate(rng.below(len + 1)),
        3 => {
            let at = rng.below(len + 1);
            let n = 1 + rng.below(8);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            input.splice(at..at, bytes);
        }
        4 if len > 0 => {
            let at = rng.below(len);
            let end = (at + 1 + rng.below(16)).min(len);
            input.drain(at..end);
        }
        5 if len > 0 => {
            let at = rng.below(len);
            let end = (at + 1 + rng.below(32)).min(len);
            let copy = input[at..end].to_vec();
            let to = rng.below(len + 1);
            input.splice(to..to, copy);
        }
        6 if len >= 4 => {
            let at = rng.below(len - 3);
            let v = INTERESTING_U32[rng.below(INTERESTING_U32.len())];
            input[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
        7 => {
            // Splice: our head, another input's tail.
            let cut = rng.below(len + 1);
            let from = rng.below(other.len() + 1);
            input.truncate(cut);
            input.extend_from_slice(&other[from..]);
        }
        _ => {
            let at = rng.below(len + 1);
            input.insert(at, rng.next() as u8);
        }
    }
}

/// Makes a mutated frame well framed again (length and version right), so the mutation
/// reaches the message decoders instead of stopping at the framer.
fn refit_frame(input: &mut [u8]) {
    if input.len() >= FRAME_HEADER_LEN {
        let len = input.len() as u32;
        input[0..4].copy_from_slice(&len.to_le_bytes());
        input[4] = PROTOCOL_VERSION;
        input[5] &= FLAG_RESPONSE | FLAG_ERROR;
    }
}

/// Runs one target on one input; returns whether the input decoded. A panic is reported
/// with everything needed to replay it.
fn run_case(
    seed: u64,
    iteration: u64,
    target: &str,
    input: &[u8],
    check: fn(&[u8]) -> bool,
) -> bool {
    match catch_unwind(AssertUnwindSafe(|| check(input))) {
        Ok(decoded) => decoded,
        Err(_) => panic!(
            "fuzz smoke failed: target {target}, seed {seed:#x}, iteration {iteration}, \
             input ({} bytes) {input:02x?}",
            input.len()
        ),
    }
}

#[test]
fn mutated_inputs_never_break_a_decoder() {
    let seed = env_u64("SPATE_FUZZ_SEED", DEFAULT_SEED);
    let iterations = env_u64("SPATE_FUZZ_ITERATIONS", DEFAULT_ITERATIONS);
    let frames = frame_corpus();
    let batches = batch_corpus();
    // Payload seeds for the request/response targets: opcode, then the frame's payload.
    let payloads: Vec<Vec<u8>> = frames
        .iter()
        .map(|f| [&f[6..8], &f[FRAME_HEADER_LEN..]].concat())
        .collect();

    // The unmutated corpus must pass too, and decode as what it is.
    for frame in &frames {
        assert!(run_case(seed, 0, "frame", frame, fuzzing::frame));
    }
    for batch in &batches {
        assert!(run_case(seed, 0, "batch", batch, fuzzing::batch));
    }

    // How many mutated inputs still decoded, per target: a guard against mutations that
    // never get past the first check (which would make this test vacuous).
    let mut decoded = [0u64; 4];

    let mut rng = Rng(seed);
    for iteration in 1..=iterations {
        let rounds = 1 + rng.below(4);

        let mut frame = frames[rng.below(frames.len())].clone();
        let other = &frames[rng.below(frames.len())];
        for _ in 0..rounds {
            mutate(&mut rng, &mut frame, other);
        }
        if rng.chance(2) {
            refit_frame(&mut frame);
        }
        decoded[0] += u64::from(run_case(seed, iteration, "frame", &frame, fuzzing::frame));

        let mut payload = payloads[rng.below(payloads.len())].clone();
        let other = &payloads[rng.below(payloads.len())];
        for _ in 0..rounds {
            mutate(&mut rng, &mut payload, other);
        }
        decoded[1] += u64::from(run_case(
            seed,
            iteration,
            "request",
            &payload,
            fuzzing::request,
        ));
        decoded[2] += u64::from(run_case(
            seed,
            iteration,
            "response",
            &payload,
            fuzzing::response,
        ));

        let mut batch = batches[rng.below(batches.len())].clone();
        let other = &batches[rng.below(batches.len())];
        for _ in 0..rounds {
            mutate(&mut rng, &mut batch, other);
        }
        decoded[3] += u64::from(run_case(seed, iteration, "batch", &batch, fuzzing::batch));
    }
    println!(
        "fuzz smoke: seed {seed:#x}, {iterations} iterations; decoded frame {} request {} \
         response {} batch {}",
        decoded[0], decoded[1], decoded[2], decoded[3]
    );
    for (target, n) in ["frame", "request", "response", "batch"]
        .iter()
        .zip(decoded)
    {
        assert!(
            n * 100 >= iterations,
            "only {n} of {iterations} {target} inputs decoded"
        );
    }
}

#[test]
fn the_prng_is_deterministic() {
    let mut a = Rng(1);
    let mut b = Rng(1);
    let xs: Vec<u64> = (0..4).map(|_| a.next()).collect();
    let ys: Vec<u64> = (0..4).map(|_| b.next()).collect();
    assert_eq!(xs, ys);
    assert_ne!(xs[0], xs[1]);
}
