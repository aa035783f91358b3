#!/usr/bin/env bash
# Runs Spate's load-generator benchmark suite in one session (SPEC §6):
#   1. measures the machine's own limits (machine-limits.sh: fio + iperf3);
#   2. for each scenario, starts a fresh `spate serve` (new data directory) pinned to the
#      engine core(s), runs `spate-loadgen bench NAME` pinned to the other core(s), and
#      stops the engine;
#   3. writes OUT/RESULTS.md (a markdown section for BENCHMARKS.md: figures, ratios to the
#      machine's limits, exact commands), one JSON per scenario and an SVG latency plot each.
#
# Usage: benches/scripts/run-all.sh [OUT_DIR]            (default: bench-results)
# Environment:
#   SPATE_BENCH_DIR  a directory on the disk to measure; also holds the engine's data (/tmp)
#   ENGINE_CORES     CPUs for the engine (default 0)
#   LOADGEN_CORES    CPUs for the load generator (default: 1)
#   SCENARIOS        which scenarios, in order (default: all fifteen)
#   DURATION         override every run's measured seconds
#   QUICK=1          tiny runs: checks the suite works, measures nothing
#   SKIP_LIMITS=1    reuse OUT_DIR/machine-limits.json instead of measuring again
#   PORT             the engine's port (default 7400; the cores also use PORT+1...)
#   ENGINE_CONFIG    a TOML file for `spate serve --config` (default: the embedded defaults)
#   ON_DEMAND_QUIET_MS  on_demand_quiet_ms of the engine serving the on-demand scenario
#                    (default 10000, so its scale-in shows within the scenario's 60 s; empty:
#                    the engine's 15 minutes, and the scenario reports no scale-in). Written,
#                    after ENGINE_CONFIG's lines, to OUT/engine-on-demand.toml.
#   DISK_IRQ_CPUS    e.g. 0: deliver the data disk's interrupts to these CPUs (the engine's)
#                    during the run and restore them after (root). By default the kernel may
#                    put them on the load generator's core, which then does the engine's
#                    I/O-completion work.
# Needs fio and iperf3 (machine-limits.sh), taskset (util-linux), curl and cargo.
# Besides RESULTS.md, OUT holds each scenario's engine log (engine-SCENARIO.log) and its
# metrics as the scenario left them (engine-SCENARIO.metrics).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-bench-results}
mkdir -p "$out"
out=$(cd "$out" && pwd)
bench_dir=${SPATE_BENCH_DIR:-/tmp}
engine_cores=${ENGINE_CORES:-0}
loadgen_cores=${LOADGEN_CORES:-1}
port=${PORT:-7400}
scenarios=${SCENARIOS:-max-1k max-100b latency-half shard-limit shard-density shard-density-small many-shards peer-shape producer-path fan-out catch-up group-failover control-churn reshard on-demand}
on_demand_quiet_ms=${ON_DEMAND_QUIET_MS-10000}

cd "$root"
source benches/scripts/lib.sh
cargo build --release -p spate -p spate-loadgen
target=${CARGO_TARGET_DIR:-$root/target}/release
spate=$target/spate
loadgen=$target/spate-loadgen

if [[ -z ${SKIP_LIMITS:-} || ! -f $out/machine-limits.json ]]; then
    echo "== machine limits"
    "$root/benches/scripts/machine-limits.sh" "$bench_dir" "$out/machine-limits.json"
    # Its 4 GiB fio file was just removed: the first scenario starts on a settled disk.
    settle_disk "$bench_dir"
fi

irq_saved=()
restore_irqs() {
    local entry
    for entry in "${irq_saved[@]}"; do
        echo "${entry#*=}" >"/proc/irq/${entry%%=*}/smp_affinity_list" 2>/dev/null || true
    done
}
if [[ -n ${DISK_IRQ_CPUS:-} ]]; then
    # The block device under SPATE_BENCH_DIR, its virtio name, and that device's IRQs.
    dev=$(basename "$(df --output=source "$bench_dir" | tail -n 1)")
    dev=${dev%%[0-9]*}
    virtio=$(basename "$(readlink -f "/sys/block/$dev/device")")
    for irq in $(awk -v v="$virtio-" 'index($NF, v) == 1 { sub(":", "", $1); print $1 }' /proc/interrupts); do
        irq_saved+=("$irq=$(cat "/proc/irq/$irq/smp_affinity_list")")
        echo "$DISK_IRQ_CPUS" >"/proc/irq/$irq/smp_affinity_list"
        echo "disk IRQ $irq ($virtio) now on CPU(s) $DISK_IRQ_CPUS"
    done
fi

trap 'stop_engine; restore_irqs' EXIT

start_engine() {
    local log=$1 scenario=$2
    data=$(mktemp -d "$bench_dir/spate-bench.XXXXXX")
    local config=()
    [[ -n ${ENGINE_CONFIG:-} ]] && config=(--config "$ENGINE_CONFIG")
    if [[ $scenario == on-demand && -n $on_demand_quiet_ms ]]; then
        # The scale-in waits on_demand_quiet_ms (15 minutes by default) below 25 % of capacity.
        local file=$out/engine-on-demand.toml
        if [[ -n ${ENGINE_CONFIG:-} ]]; then
            grep -v '^[[:space:]]*on_demand_quiet_ms[[:space:]]*=' "$ENGINE_CONFIG" >"$file"
        else
            : >"$file"
        fi
        echo "on_demand_quiet_ms = $on_demand_quiet_ms" >>"$file"
        config=(--config "$file")
    fi
    taskset -c "$engine_cores" "$spate" serve "${config[@]}" --data-dir "$data" \
        --listen "127.0.0.1:$port" --cores "$engine_cores" --metrics-listen 127.0.0.1:0 >"$log" 2>&1 &
    engine_pid=$!
    wait_for_engine "$engine_pid" "$log"
}

failed=()
for s in $scenarios; do
    echo "== $s"
    start_engine "$out/engine-$s.log" "$s"
    extra=()
    [[ -n ${DURATION:-} ]] && extra+=(--duration "$DURATION")
    [[ -n ${QUICK:-} ]] && extra+=(--quick)
    if ! taskset -c "$loadgen_cores" "$loadgen" bench "$s" --server "127.0.0.1:$port" \
        --cores "$loadgen_cores" --engine-pid "$engine_pid" --out "$out" "${extra[@]}"; then
        failed+=("$s")
    fi
    # The engine's metrics as the scenario left them (its flush latencies, its cores'
    # stalls): where a pause a step saw came from, without watching the run.
    metrics_url=$(grep -o 'metrics at http://[^ ]*' "$out/engine-$s.log" | head -n 1 | cut -d' ' -f3) || true
    [[ -n $metrics_url ]] && curl -s --max-time 5 "$metrics_url" >"$out/engine-$s.metrics" || true
    stop_engine
    if [[ -f $out/$s.json ]]; then
        "$loadgen" plot "$out/$s.json" "$out/$s.svg" || true
    fi
done

"$loadgen" summarize "$out" --output "$out/RESULTS.md"
echo "wrote $out/RESULTS.md"
if ((${#failed[@]})); then
    echo "scenarios that failed: ${failed[*]}" >&2
    exit 1
fi
