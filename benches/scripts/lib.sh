# Shared by the benchmark scripts (sourced, not run).

# The engine a script runs now and its data directory (set them when starting one).
engine_pid=
data=

# stop_engine: stops the engine in `engine_pid` (SIGTERM, then waits) and removes `data`;
# a no-op when there is none. Scripts call it between runs and from their EXIT trap.
stop_engine() {
    if [[ -n $engine_pid ]]; then
        kill -TERM "$engine_pid" 2>/dev/null || true
        wait "$engine_pid" 2>/dev/null || true
        engine_pid=
    fi
    if [[ -n $data ]]; then
        rm -rf "$data"
        data=
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
