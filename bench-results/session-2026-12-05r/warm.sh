#!/usr/bin/env bash
# many-shards' step twice on one engine: the second run on a warm store (journal ring made, prewrite done)
cd /work/main; t=target/release
data=$(mktemp -d /work/spate-one.XXXXXX)
taskset -c 0 $t/spate serve --data-dir $data --cores 0 --listen 127.0.0.1:7621 --metrics-listen 127.0.0.1:7699 >$data.log 2>&1 &
pid=$!
for i in $(seq 100); do grep -q "listening" $data.log 2>/dev/null && break; sleep 0.1; done
for run in cold warm; do
  a=($(cat /sys/block/vda/stat))
  taskset -c 1 $t/spate-loadgen --server 127.0.0.1:7621 --stream s-$run --create-shards 10000 --limits kinesis --producers 64 --rate 1000000 --size 100 --api put-records --call-records 2000 --keys 10000 --key-mode per-shard --duration 10 --warmup 2 --cores 1 --engine-pid $pid --delete-after -q > $data.out 2>&1
  b=($(cat /sys/block/vda/stat))
  echo "$run: $(grep -E '^  per second|^  ack |^  used' $data.out | tr '\n' ' ' | tr -s ' ') writes $((b[4]-a[4])) MB $(( (b[6]-a[6])*512/1000000 )) flushes $((b[11]-a[11]))"
done
curl -s 127.0.0.1:7699/metrics | grep -E '^spate_(journal_bytes|direct_bytes|checkpoints)_total' | tr '\n' ' '; echo
kill $pid; wait $pid 2>/dev/null; rm -rf $data $data.log $data.out
