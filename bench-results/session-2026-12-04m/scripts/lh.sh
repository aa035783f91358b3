#!/usr/bin/env bash
# lh.sh CONF RATE: latency-half's load (16 producers, put-batches of 2,000 x 1 KiB, open loop) for 15 s; round metrics after
conf=$1; rate=$2
cd /work/main; t=target/release
data=$(mktemp -d /work/spate-one.XXXXXX)
taskset -c 0 $t/spate serve --data-dir $data --cores 0 --listen 127.0.0.1:7621 --metrics-listen 127.0.0.1:7699 --config $conf >$data.log 2>&1 &
pid=$!
for i in $(seq 100); do grep -q "listening" $data.log 2>/dev/null && break; sleep 0.1; done
taskset -c 1 $t/spate-loadgen --server 127.0.0.1:7621 --stream s --create-shards 4 --limits off --producers 16 --rate $rate --size 1024 --api put-batches --call-records 2000 --keys 10000 --duration 15 --warmup 3 --cores 1 --engine-pid $pid -q > $data.out 2>&1
grep -E '^  per second|^  ack |^  used' $data.out
curl -s 127.0.0.1:7699/metrics | grep -E "^spate_(rounds_total|flush_seconds_total|flush_latency_(bucket|sum|count)|append_waits_total)" | grep -v ' 0$'
kill $pid; wait $pid; rm -rf $data $data.log $data.out
