#!/usr/bin/env bash
# calls.sh: one-record calls, closed loop (P producers, CIF calls in flight each, 8 shards, 1 KiB, put-batches):
# the engine's per-call capacity. BIN=, P= (64), CIF= (1), PERF_OUT= (perf record of the engine, 3 s from 4 s in), RES=1 (reschedule IPIs to CPU 0 a second).
cd /work/main; t=${BIN:-target/release}
data=$(mktemp -d /work/spate-one.XXXXXX)
taskset -c 0 $t/spate serve --data-dir $data --cores 0 --listen 127.0.0.1:7621 --metrics-listen 127.0.0.1:7699 ${CONF:+--config $CONF} >$data.log 2>&1 &
pid=$!
for i in $(seq 100); do grep -q "listening" $data.log 2>/dev/null && break; sleep 0.1; done
taskset -c 1 ${LG:-$t/spate-loadgen} --server 127.0.0.1:7621 --stream s --create-shards 8 --limits off --producers ${P:-64} --calls-in-flight ${CIF:-1} --rate 0 --size 1024 --api put-batches --call-records 1 --keys 1000 --duration 8 --warmup 2 --cores 1 --engine-pid $pid -q > $data.out 2>&1 &
lg=$!
sleep 4
[ -n "${PERF_OUT:-}" ] && perf record ${PA:--F 1999} -p $pid -o $PERF_OUT -- sleep 3 >/dev/null 2>&1
[ -n "${RES:-}" ] && { a=$(awk '/^ *RES:/{print $2}' /proc/interrupts); sleep 3; b=$(awk '/^ *RES:/{print $2}' /proc/interrupts); echo "RES/s $(( (b-a)/3 ))"; }
wait $lg
grep -E '^  per second|^  ack |^  used' $data.out | tr '\n' ' ' | tr -s ' '; echo
curl -s 127.0.0.1:7699/metrics | grep -E '^spate_rounds_total' | tr '\n' ' '; echo
kill $pid; wait $pid 2>/dev/null; rm -rf $data $data.log $data.out
