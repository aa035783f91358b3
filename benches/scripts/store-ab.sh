#!/usr/bin/env bash
# Two store configurations, alternated on fresh engines: what each does to the ack tail,
# and what the store's debug log says about it (BENCHMARKS.md, "Storage v2 under load").
#
# For each of ROUNDS rounds and each of A and B: starts `spate serve --cores 0` pinned to
# CPU 0 on a fresh data directory with RUST_LOG=spate_engine=debug (slow rounds and
# checkpoints are logged), runs RUNS times the `shard-density` step of SHARDS shards
# (1,000 B records at 1,000 records/s per shard, Kinesis limits, `--api put-records`, open
# loop, 20 s after 2 s of warm-up; the load generator pinned to CPU 1), and prints each
# run's ack latency line, then the engine's count of rounds that took ≥ 20 ms and the
# bytes its checkpoints wrote. A fresh engine per round: a store's first seconds (new
# volumes, new journal files) are part of what is compared.
#
# Usage: benches/scripts/store-ab.sh
# Environment: A_CONFIG, B_CONFIG (TOML files for --config; empty: the defaults), A_NAME,
#   B_NAME, ROUNDS (3), RUNS (2), SHARDS (256), DURATION (20), PORT (7500),
#   SPATE_BENCH_DIR (where the data directories go; default /tmp).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
rounds=${ROUNDS:-3}
runs=${RUNS:-2}
shards=${SHARDS:-256}
duration=${DURATION:-20}
port=${PORT:-7500}
cd "$root"
source benches/scripts/lib.sh
cargo build --release -q -p spate -p spate-loadgen
target=${CARGO_TARGET_DIR:-$root/target}/release
trap stop_engine EXIT

one() { # name config
    local name=$1 config=$2 log cfg=()
    [[ -n $config ]] && cfg=(--config "$config")
    data=$(mktemp -d "${SPATE_BENCH_DIR:-/tmp}/spate-ab.XXXXXX")
    log="$data.engine.log"
    RUST_LOG=spate_engine=debug,info taskset -c 0 "$target/spate" serve "${cfg[@]}" \
        --data-dir "$data" --cores 0 --listen "127.0.0.1:$port" \
        --metrics-listen 127.0.0.1:0 >"$log" 2>&1 &
    engine_pid=$!
    wait_for_engine "$engine_pid" "$log"
    for i in $(seq "$runs"); do
        printf '%s run %d: ' "$name" "$i"
        taskset -c 1 "$target/spate-loadgen" --server "127.0.0.1:$port" --stream "ab$i" \
            --create-shards "$shards" --limits kinesis --delete-after --producers 4 \
            --rate $((shards * 1000)) --size 1000 --api put-records --call-records 2000 \
            --keys $((shards * 4)) --key-mode per-shard --duration "$duration" --warmup 2 \
            --cores 1 --engine-pid "$engine_pid" -q 2>&1 | grep -E '^ +ack ' | tr -s ' ' || true
    done
    stop_engine
    printf '%s engine: rounds >= 20 ms: %s; checkpoints: %s\n' "$name" \
        "$(grep -c 'slow round' "$log" || true)" \
        "$(grep 'DEBUG.*checkpoint' "$log" | grep -oE 'written_bytes=[0-9]+' | cut -d= -f2 |
            awk '{s += $1; n++} END {if (n) printf "%d, writing %.1f MB each on average", n, s / n / 1e6; else printf "none"}')"
    rm -f "$log"
}

echo "(ack columns: p50 p90 p99 p99.9 p99.99 max, ms)"
for r in $(seq "$rounds"); do
    one "${A_NAME:-A}" "${A_CONFIG:-}"
    one "${B_NAME:-B}" "${B_CONFIG:-}"
done
