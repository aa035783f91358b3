#!/usr/bin/env bash
# Same-session A/B of one benchmark scenario: alternates variant A and variant B, ROUNDS
# times each (A B A B ...), every run on a fresh `spate serve` (new data directory) pinned to
# CPU 0 with the load generator pinned to CPU 1, so slow drifts of the machine (the disk's
# speed varies 4-8x between sessions and minute to minute) fall on both variants alike.
# Prints each run's headline figures and, per figure, both variants' medians and B/A.
#
# Usage: benches/scripts/ab.sh OUT_DIR
# Environment:
#   SCENARIO       the loadgen bench scenario (default max-1k)
#   ROUNDS         runs per variant (default 5)
#   DURATION       measured seconds per run (default 10)
#   A_CONFIG, B_CONFIG          TOML lines for each variant's `spate serve --config`
#   A_SERVE, B_SERVE            extra `spate serve` arguments
#   A_LOADGEN, B_LOADGEN        extra `spate-loadgen bench` arguments
#   A_NAME, B_NAME              labels (default A, B)
#   AUTH=A|B|AB    start that variant's engine with --auth on and run the load generator as
#                  its root principal (read from the fresh data directory)
#   SPATE_BENCH_DIR  where data directories go (default /tmp)
#   PORT           the engine's port (default 7600)
# Examples:
#   A_NAME=metrics-on B_NAME=metrics-off B_CONFIG='metrics = false' benches/scripts/ab.sh out/metrics
#   B_NAME=tls B_SERVE="--tls-cert s.pem --tls-key s-key.pem" B_LOADGEN="--tls --ca ca.pem" benches/scripts/ab.sh out/tls
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:?usage: ab.sh OUT_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
scenario=${SCENARIO:-max-1k}
rounds=${ROUNDS:-5}
duration=${DURATION:-10}
port=${PORT:-7600}
bench_dir=${SPATE_BENCH_DIR:-/tmp}
cd "$root"
source benches/scripts/lib.sh
cargo build --release -q -p spate -p spate-loadgen
target=${CARGO_TARGET_DIR:-$root/target}/release

trap stop_engine EXIT

run() {
    local variant=$1 round=$2
    local config_lines serve_args loadgen_args name
    if [[ $variant == A ]]; then
        config_lines=${A_CONFIG:-}; serve_args=${A_SERVE:-}; loadgen_args=${A_LOADGEN:-}; name=${A_NAME:-A}
    else
        config_lines=${B_CONFIG:-}; serve_args=${B_SERVE:-}; loadgen_args=${B_LOADGEN:-}; name=${B_NAME:-B}
    fi
    data=$(mktemp -d "$bench_dir/spate-ab.XXXXXX")
    local config=$out/$name.toml log=$out/$name-$round.engine.log
    printf '%s\n' "$config_lines" >"$config"
    local auth=()
    [[ ${AUTH:-} == *$variant* ]] && auth=(--auth on)
    # shellcheck disable=SC2086
    taskset -c 0 "$target/spate" serve --config "$config" --data-dir "$data" --cores 0 \
        --listen "127.0.0.1:$port" --metrics-listen 127.0.0.1:0 "${auth[@]}" $serve_args >"$log" 2>&1 &
    engine_pid=$!
    wait_for_engine "$engine_pid" "$log" || return 1
    local creds=()
    if ((${#auth[@]})); then
        python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["secret"])' \
            "$data/root.credentials" >"$data.secret"
        creds=(--access-key-id "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["access_key_id"])' "$data/root.credentials")" --secret-file "$data.secret")
    fi
    local dir=$out/$name-$round
    mkdir -p "$dir"
    # shellcheck disable=SC2086
    taskset -c 1 "$target/spate-loadgen" bench "$scenario" --server "127.0.0.1:$port" \
        --cores 1 --engine-pid "$engine_pid" --out "$dir" --duration "$duration" \
        "${creds[@]}" $loadgen_args >"$dir/loadgen.log" 2>&1 || { cat "$dir/loadgen.log" >&2; return 1; }
    rm -f "$data.secret"
    stop_engine
    python3 - "$dir/$scenario.json" "$name" "$round" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
f = d["figures"]
keys = [k for k in ("acked_mib_per_s", "acked_records_per_s", "engine_cores_used", "ack_p99_us") if k in f]
print(sys.argv[2], sys.argv[3], " ".join(f"{k}={f[k]:.4g}" for k in keys), flush=True)
EOF
}

for i in $(seq "$rounds"); do
    run A "$i"
    run B "$i"
done

python3 - "$out" "${A_NAME:-A}" "${B_NAME:-B}" "$scenario" "$rounds" <<'EOF'
import json, os, statistics, sys
out, a, b, scenario, rounds = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
def figures(name):
    runs = []
    for i in range(1, rounds + 1):
        p = os.path.join(out, f"{name}-{i}", f"{scenario}.json")
        runs.append(json.load(open(p))["figures"])
    return runs
fa, fb = figures(a), figures(b)
summary = {"scenario": scenario, "rounds": rounds, "variants": [a, b], "figures": {}}
for k in sorted(fa[0]):
    if not all(k in r for r in fa + fb):
        continue
    va, vb = [r[k] for r in fa], [r[k] for r in fb]
    ma, mb = statistics.median(va), statistics.median(vb)
    ratio = mb / ma if ma else float("nan")
    summary["figures"][k] = {a: va, b: vb, "median_" + a: ma, "median_" + b: mb, "ratio": ratio}
    print(f"{k:40s} {a} {ma:12.4g}  {b} {mb:12.4g}  {b}/{a} {ratio:.4f}")
# CPU per record: engine cores used per million records/s.
if all("engine_cores_used" in r and "acked_records_per_s" in r for r in fa + fb):
    ca = [r["engine_cores_used"] / r["acked_records_per_s"] * 1e9 for r in fa]
    cb = [r["engine_cores_used"] / r["acked_records_per_s"] * 1e9 for r in fb]
    ma, mb = statistics.median(ca), statistics.median(cb)
    summary["figures"]["engine_ns_per_record"] = {a: ca, b: cb, "ratio": mb / ma}
    print(f"{'engine_ns_per_record':40s} {a} {ma:12.4g}  {b} {mb:12.4g}  {b}/{a} {mb / ma:.4f}")
json.dump(summary, open(os.path.join(out, "ab.json"), "w"), indent=1)
EOF
echo "wrote $out/ab.json"
