#!/usr/bin/env bash
# ps.sh P: peer-shape's closed loop with P producers (P shards, one key each, put_records of
# 100 records of 1,000 B; 10 s after 2 s; engine on CPU 0, load generator on CPU 1), then the
# engine's round count, pacing cap and stalls. CONF= engine config; STALL="ARGS" runs
# stall-emulator.py against the engine with those arguments meanwhile.
cd /work/main; t=${BIN:-target/release}; p=${1:-4}
data=$(mktemp -d /work/spate-one.XXXXXX)
taskset -c 0 $t/spate serve --data-dir $data --cores 0 --listen 127.0.0.1:7621 --metrics-listen 127.0.0.1:7699 ${CONF:+--config $CONF} >$data.log 2>&1 &
pid=$!
for i in $(seq 100); do grep -q "listening" $data.log 2>/dev/null && break; sleep 0.1; done
if [ -n "${STALL:-}" ]; then
  taskset -c 1 python3 benches/scripts/stall-emulator.py --pid $pid --metrics 127.0.0.1:7699 $STALL > $data.stall 2>&1 &
  st=$!
fi
taskset -c 1 $t/spate-loadgen --server 127.0.0.1:7621 --stream s --create-shards $p --limits off --producers $p --rate 0 --size 1000 --api put-records --call-records 100 --keys $p --key-mode per-shard --duration ${DUR:-10} --warmup 2 --cores 1 --engine-pid $pid -q > $data.out 2>&1
grep -E '^  per second|^  ack |^  used' $data.out | tr '\n' ' ' | tr -s ' '; echo
curl -s 127.0.0.1:7699/metrics | grep -E "^spate_(rounds_total|round_syncs_total|journal_bytes_total|direct_bytes_total|checkpoints_total|core_round_rate_cap|core_stalls_total|flush_latency_(sum|count)|append_waits_total)" | tr "\n" " "; echo
[ -n "${STALL:-}" ] && { kill $st; wait $st 2>/dev/null; tail -3 $data.stall; }
grep -E "stalled|stalls as often|eased" $data.log | tail -8
kill $pid; wait $pid 2>/dev/null; rm -rf $data $data.log $data.out $data.stall
