#!/usr/bin/env bash
# lh shape, then SIGTERM and see whether the engine exits within 10 s
cd /work/main; t=$BIN
data=$(mktemp -d /work/spate-one.XXXXXX)
taskset -c 0 $t/spate serve --data-dir $data --cores 0 --listen 127.0.0.1:7621 --metrics-listen 127.0.0.1:7699 >$data.log 2>&1 &
pid=$!
for i in $(seq 100); do grep -q "listening" $data.log 2>/dev/null && break; sleep 0.1; done
taskset -c 1 $t/spate-loadgen --server 127.0.0.1:7621 --stream s --create-shards 4 --limits off --producers 16 --rate ${RATE:-900000} --size 1024 --api put-batches --call-records 2000 --keys 10000 --duration ${D:-4} --warmup 1 --cores 1 --engine-pid $pid -q > $data.out 2>&1
grep -E '^  ack ' $data.out | tr -s ' '
kill $pid; for i in $(seq 100); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
if kill -0 $pid 2>/dev/null; then echo "HUNG $pid"; for t in /proc/$pid/task/*; do echo "  $(cat $t/comm) $(cat $t/wchan)"; done; tail -3 $data.log; kill -9 $pid; fi
wait $pid 2>/dev/null; rm -rf $data $data.log $data.out
