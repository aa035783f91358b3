#!/usr/bin/env bash
# warm2.sh: many-shards' step on a warm store: a cold run (6 s, not reported), then the measured run.
# LG= the load generator binary (default $BIN/spate-loadgen), BIN= binaries, RATE= records/s (default 1,000,000), CONF= engine config, MET= metrics regex,
# PERF_OUT=FILE: perf record of the engine for 4 s from the measured run's 5th second into FILE
# (PA= perf's sampling arguments, default -F 1999).
cd /work/main; t=${BIN:-target/release}
data=$(mktemp -d /work/spate-one.XXXXXX)
taskset -c 0 $t/spate serve --data-dir $data --cores 0 --listen 127.0.0.1:7621 --metrics-listen 127.0.0.1:7699 ${CONF:+--config $CONF} >$data.log 2>&1 &
pid=$!
for i in $(seq 100); do grep -q "listening" $data.log 2>/dev/null && break; sleep 0.1; done
for run in cold warm; do
  d=10; [ $run = cold ] && d=6
  taskset -c 1 ${LG:-$t/spate-loadgen} --server 127.0.0.1:7621 --stream s-$run --create-shards 10000 --limits kinesis --producers 64 --rate ${RATE:-1000000} --size 100 --api put-records --call-records 2000 --keys 10000 --key-mode per-shard --duration $d --warmup 2 --cores 1 --engine-pid $pid --delete-after -q > $data.out 2>&1 &
  lg=$!
  [ $run = warm ] && [ -n "${PERF_OUT:-}" ] && { sleep 5; perf record ${PA:--F 1999} -p $pid -o $PERF_OUT -- sleep 4 >/dev/null 2>&1; }
  wait $lg
  [ $run = warm ] && echo "$(grep -E '^  per second|^  ack |^  used' $data.out | tr '\n' ' ' | tr -s ' ')"
done
[ -n "${MET:-}" ] && curl -s 127.0.0.1:7699/metrics | grep -E "$MET" | tr '\n' ' ' && echo
kill $pid; wait $pid 2>/dev/null; rm -rf $data $data.log $data.out
