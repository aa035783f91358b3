#!/usr/bin/env bash
# repeat: g1 engine, lh shape for D s, SIGTERM; on a hang dump state and stop
cd /work/main
for i in $(seq ${N:-20}); do
  data=$(mktemp -d /work/spate-one.XXXXXX)
  taskset -c 0 /work/bin-g1/spate serve --data-dir $data --cores 0 --listen 127.0.0.1:7621 --metrics-listen 127.0.0.1:7699 >$data.log 2>&1 &
  pid=$!
  for j in $(seq 100); do grep -q "listening" $data.log 2>/dev/null && break; sleep 0.1; done
  taskset -c 1 /work/bin-v0/spate-loadgen --server 127.0.0.1:7621 --stream s --create-shards 4 --limits off --producers 16 --rate 900000 --size 1024 --api put-batches --call-records 2000 --keys 10000 --duration ${D:-3} --warmup 1 --cores 1 -q > $data.out 2>&1
  kill $pid; for j in $(seq 100); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
  if kill -0 $pid 2>/dev/null; then
    echo "run $i HUNG pid $pid data $data"
    for t in /proc/$pid/task/*; do echo "== $(cat $t/comm) $(basename $t) $(cat $t/wchan)"; cat $t/stack; done
    for f in /proc/$pid/fd/*; do l=$(readlink $f); case $l in *io_uring*) echo "== fd $(basename $f) $l"; cat /proc/$pid/fdinfo/$(basename $f) | head -30;; esac; done
    tail -5 $data.log
    exit 0
  fi
  wait $pid 2>/dev/null; rm -rf $data $data.log $data.out
  echo "run $i ok"
done
