# Shared by the benchmark scripts (sourced, not run).

# The engine a script runs now and its data directory (set them when starting one).
engine_pid=
data=

# stop_engine: stops the engine in `engine_pid` (SIGTERM, then waits) and removes `data`,
# then waits for the disk to settle (`settle_disk`); a no-op when there is none. Scripts
# call it between runs and from their EXIT trap.
stop_engine() {
    if [[ -n $engine_pid ]]; then
        kill -TERM "$engine_pid" 2>/dev/null || true
        wait "$engine_pid" 2>/dev/null || true
        engine_pid=
    fi
    if [[ -n $data ]]; then
        local parent
        parent=$(dirname "$data")
        rm -rf "$data"
        data=
        settle_disk "$parent"
    fi
}

# settle_disk DIR: after a large deletion, waits (at most 60 s) until the block device under
# DIR has finished what the deletion set off: the file system's commit (`sync -f`) and, on a
# file system mounted with `discard`, the discards it issues then. Until they finish, every
# fdatasync on the device waits behind them: on the development VM, 64 KiB write +
# fdatasync rounds took up to 136 ms for ~2 s after an `rm -rf` of 4 GiB (BENCHMARKS.md,
# session w), which the next scenario's first steps then measured. Quiet on success; says
# how long it waited when that was over a second.
settle_disk() {
    local dir=$1 src dev last= now same=0 start=$SECONDS
    src=$(df --output=source "$dir" 2>/dev/null | tail -n 1) || return 0
    dev=$(basename "$(readlink -f "$src")")
    sync -f "$dir" 2>/dev/null || sync
    while ((SECONDS - start < 60)); do
        # /proc/diskstats: $12 I/Os in flight, $15 discards completed, $8 writes completed.
        now=$(awk -v d="$dev" '$3 == d { print $12, $15, $8 }' /proc/diskstats)
        [[ -z $now ]] && return 0
        if [[ $now == "$last" && ${now%% *} == 0 ]]; then
            ((++same >= 10)) && break
        else
            same=0
        fi
        last=$now
        sleep 0.1
    done
    if ((SECONDS - start > 1)); then
        echo "the disk ($dev) settled $((SECONDS - start)) s after removing a data directory" >&2
    fi
}

# wait_for_engine PID LOG: waits until the `spate serve` with PID has printed "listening on"
# to LOG (it is ready); fails, with the log's last lines, if it exits or takes over 60 s.
wait_for_engine() {
    local pid=$1 log=$2
    for _ in $(seq 600); do
        grep -q '^listening on' "$log" && return 0
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "the engine exited: $(tail -n 3 "$log")" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "the engine did not start within 60 s" >&2
    return 1
}
