#!/usr/bin/env bash
# What counting (the metrics) costs, measured inside one engine process: `spate serve` with
# `metrics_toggle_ms` switches counting on and off every period (wall-clock aligned) while
# `spate-loadgen bench max-1k` (or SCENARIO) runs against it for DURATION seconds; at
# shutdown the engine logs, over adjacent (on, off) pairs of busy periods (each period in
# one pair), the mean of on/off executor CPU per record and of on/off records per second,
# each with its standard error. Pairing cancels the machine's drifts (the disk's speed moves
# minute to minute), which made separate runs too noisy to resolve 1 % (BENCHMARKS.md,
# "Metrics cost"). Engine on CPU 0, load generator on CPU 1.
#
# RUNS runs on fresh data directories (a run writes ~0.4 GB/s and retention keeps at least an
# hour, so one long run would fill the disk), combined at the end (pairs-weighted means).
#
# Usage: benches/scripts/metrics-toggle.sh OUT_DIR
# Environment: SCENARIO (max-1k), DURATION (100), RUNS (3), PERIOD_MS (1000), PORT (7600),
#              SPATE_BENCH_DIR (/tmp), CALIBRATE (set: A/A)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:?usage: metrics-toggle.sh OUT_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
scenario=${SCENARIO:-max-1k}
duration=${DURATION:-100}
runs=${RUNS:-3}
period=${PERIOD_MS:-1000}
port=${PORT:-7600}
cd "$root"
source benches/scripts/lib.sh
cargo build --release -q -p spate -p spate-loadgen
target=${CARGO_TARGET_DIR:-$root/target}/release
trap stop_engine EXIT
printf 'metrics_toggle_ms = %s\n' "$period" >"$out/engine.toml"
# CALIBRATE=1: an A/A run (the same phases, counting on in both): what the method reads
# when nothing changes.
[[ -n ${CALIBRATE:-} ]] && printf 'metrics_toggle_calibrate = true\n' >>"$out/engine.toml"
for run in $(seq "$runs"); do
    data=$(mktemp -d "${SPATE_BENCH_DIR:-/tmp}/spate-toggle.XXXXXX")
    dir=$out/run-$run
    mkdir -p "$dir"
    log=$dir/engine.log
    taskset -c 0 "$target/spate" serve --config "$out/engine.toml" --data-dir "$data" --cores 0 \
        --listen "127.0.0.1:$port" --metrics-listen 127.0.0.1:0 >"$log" 2>&1 &
    engine_pid=$!
    wait_for_engine "$engine_pid" "$log"
    taskset -c 1 "$target/spate-loadgen" bench "$scenario" --server "127.0.0.1:$port" --cores 1 \
        --engine-pid "$engine_pid" --out "$dir" --duration "$duration" >"$dir/loadgen.log" 2>&1 \
        || { cat "$dir/loadgen.log" >&2; exit 1; }
    stop_engine
    grep 'metrics toggle' "$log" || { echo "no toggle summary in $log" >&2; exit 1; }
done
python3 - "$out" "$runs" <<'PY'
import json, math, re, sys
out, runs = sys.argv[1], int(sys.argv[2])
pat = re.compile(r"CPU per record ([0-9.]+) ± ([0-9.]+), throughput on/off ([0-9.]+) ± ([0-9.]+).*pairs=(\d+)")
rows = []
for i in range(1, runs + 1):
    for line in open(f"{out}/run-{i}/engine.log"):
        m = pat.search(line)
        if m:
            c, cse, t, tse, n = m.groups()
            rows.append((float(c), float(cse), float(t), float(tse), int(n)))
n = sum(r[4] for r in rows)
def combine(k):
    mean = sum(r[k] * r[4] for r in rows) / n
    se = math.sqrt(sum((r[4] * r[k + 1]) ** 2 for r in rows)) / n
    return mean, se
(c, cse), (t, tse) = combine(0), combine(2)
print(f"{n} pairs in {len(rows)} runs: executor CPU per record on/off {c:.4f} ± {cse:.4f}, "
      f"throughput on/off {t:.4f} ± {tse:.4f} (± standard error)")
json.dump({"runs": rows, "pairs": n, "cpu_ratio": [c, cse], "throughput_ratio": [t, tse]},
          open(f"{out}/toggle.json", "w"), indent=1)
PY
