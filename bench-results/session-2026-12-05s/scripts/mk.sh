#!/usr/bin/env bash
# mk.sh: one closed-loop run of max-1k's shape (4 shards, 16 producers, put-batches, 1 KiB,
# 2,000 records a call, 10,000 keys, 10 s after 2 s; engine on CPU 0, load generator on
# CPU 1). Prints the load generator's "per second", "ack" (ms: p50 p90 p99 p99.9 p99.99 max)
# and "used" (cores: load generator, engine) lines on one line.
# Knobs: EXTRA= more load-generator flags, SIZE= record bytes, CONF= engine config (default: none, the built-in defaults), BIN= binaries'
# directory, P= producers, API=, PERF=engine|loadgen (5 s in: perf record --call-graph dwarf
# for 2 s into $PERF_OUT/perf.data), AS= a user to run the engine as (with ulimit -l $ML KiB,
# default 8192: a memlock too low to register the I/O buffers), MET=1 (round metrics after).
here=$(cd "$(dirname "$0")" && pwd)  # session p copy: also prints the disk bytes written (vda) during the measured part
cd /work/main; t=${BIN:-target/release}
data=$(mktemp -d /work/spate-one.XXXXXX)
conf=${CONF:+--config $CONF}
if [ -n "${AS:-}" ]; then
  chown "$AS" $data; touch $data.log; chown "$AS" $data.log
  su "$AS" -c "ulimit -l ${ML:-8192}; exec taskset -c 0 $t/spate serve --data-dir $data --cores 0 --listen 127.0.0.1:7621 --metrics-listen 127.0.0.1:7699 $conf" >$data.log 2>&1 &
else
  taskset -c 0 $t/spate serve --data-dir $data --cores 0 --listen 127.0.0.1:7621 --metrics-listen 127.0.0.1:7699 $conf >$data.log 2>&1 &
fi
for i in $(seq 100); do grep -q "listening" $data.log 2>/dev/null && break; sleep 0.1; done
pid=$(pgrep -f "spate serve --data-dir $data" | tail -1)
taskset -c 1 $t/spate-loadgen --server 127.0.0.1:7621 --stream s --create-shards 4 --limits off --producers ${P:-16} --rate ${RATE:-0} --size ${SIZE:-1024} --api ${API:-put-batches} --call-records 2000 --keys 10000 --duration 10 --warmup 2 --cores 1 --engine-pid $pid ${EXTRA:-} -q > $data.out 2>&1 &
lg=$!
sleep 2; w0=$(awk '{print $7}' /sys/block/vda/stat); t0=$(date +%s.%N)
case ${PERF:-} in
  engine) sleep 5; perf record -F 1500 --call-graph dwarf,16384 -p $pid -o ${PERF_OUT:-.}/perf.data -- sleep 2 >/dev/null 2>&1 ;;
  loadgen) sleep 5; perf record -F 1500 --call-graph dwarf,16384 -p $lg -o ${PERF_OUT:-.}/perf.data -- sleep 2 >/dev/null 2>&1 ;;
esac
wait $lg
w1=$(awk '{print $7}' /sys/block/vda/stat); t1=$(date +%s.%N)
grep -E '^  per second|^  ack |^  used' $data.out | tr '\n' ' ' | tr -s ' '; echo " disk $(( (w1-w0)*512/1000000 )) MB in $(echo "$t1 - $t0" | bc) s"
# MET=1: the engine's round counters after the run (rounds, syncs, seconds in syncs, sync latency).
[ -n "${MET:-}" ] && curl -s 127.0.0.1:7699/metrics | grep -E "$MET" | grep -v " 0$"
kill $pid; wait $pid 2>/dev/null; sleep 0.5; [ -n "${KEEPLOG:-}" ] && cp $data.log $KEEPLOG; rm -rf $data $data.log $data.out
