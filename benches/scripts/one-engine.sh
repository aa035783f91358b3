#!/usr/bin/env bash
# One engine, one load, repeated: for A/B runs of a single load shape (BENCHMARKS.md,
# "Storage v2 under load").
#
# Starts `spate serve --cores 0` pinned to CPU 0 on a fresh data directory with the store's
# per-10-s round statistics logged (RUST_LOG=spate_engine=debug), then runs
# `spate-loadgen ARGS --stream ab<i> --delete-after` pinned to CPU 1, RUNS times against the
# same engine (so later runs write into space the earlier ones freed), waiting PAUSE seconds
# between runs. Prints each run's summary table (pass -q to drop the progress lines) and the
# engine's "store rounds" lines.
#
# Usage: benches/scripts/one-engine.sh [loadgen args...]
#   e.g. benches/scripts/one-engine.sh --create-shards 1 --limits off --rate 20000 \
#          --size 1024 --api put-records --duration 15 --cores 1 -q
# Environment: RUNS (1), PAUSE (12), PORT (7500), ENGINE_CONFIG (a TOML for --config),
#   SPATE_BENCH_DIR (where the data directory goes; default /tmp).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
runs=${RUNS:-1}
pause=${PAUSE:-12}
port=${PORT:-7500}
cd "$root"
source benches/scripts/lib.sh
cargo build --release -q -p spate -p spate-loadgen
target=${CARGO_TARGET_DIR:-$root/target}/release
data=$(mktemp -d "${SPATE_BENCH_DIR:-/tmp}/spate-one.XXXXXX")
log="$data.engine.log"
config=()
[[ -n ${ENGINE_CONFIG:-} ]] && config=(--config "$ENGINE_CONFIG")
RUST_LOG=spate_engine=debug,info taskset -c 0 "$target/spate" serve "${config[@]}" \
    --data-dir "$data" --cores 0 --listen "127.0.0.1:$port" --metrics-listen 127.0.0.1:0 >"$log" 2>&1 &
engine_pid=$!
trap stop_engine EXIT
wait_for_engine "$engine_pid" "$log"
for i in $(seq "$runs"); do
    taskset -c 1 "$target/spate-loadgen" --server "127.0.0.1:$port" --stream "ab$i" \
        --delete-after --engine-pid "$engine_pid" "$@"
    if ((i < runs)); then sleep "$pause"; fi
done
stop_engine
grep 'store rounds' "$log" || true
echo "engine log: $log"
