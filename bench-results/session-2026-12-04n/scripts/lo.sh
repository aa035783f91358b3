#!/usr/bin/env bash
# lo.sh CONF SHARDS RATE [API] [SIZE]: one open-loop step of shard-density* (4 producers, 4 keys a shard; P=, K=, LIMITS=, BIN=, EXTRA=, MET=); the engine's round metrics after
conf=$1; shards=$2; rate=$3; api=${4:-put-records}; size=${5:-1000}
cd /work/main; t=${BIN:-target/release}
data=$(mktemp -d /work/spate-one.XXXXXX)
taskset -c 0 $t/spate serve --data-dir $data --cores 0 --listen 127.0.0.1:7621 --metrics-listen 127.0.0.1:7699 --config $conf >$data.log 2>&1 &
pid=$!
for i in $(seq 100); do grep -q "listening" $data.log 2>/dev/null && break; sleep 0.1; done
taskset -c 1 $t/spate-loadgen --server 127.0.0.1:7621 --stream s --create-shards $shards --limits ${LIMITS:-off} --producers ${P:-4} ${EXTRA:-} --rate $rate --size $size --api $api --call-records 2000 --keys ${K:-$((shards*4))} --key-mode per-shard --duration 10 --warmup 2 --cores 1 --engine-pid $pid ${Q--q} > $data.out 2>&1
grep -E '^  per second|^  ack |^  used' $data.out
curl -s 127.0.0.1:7699/metrics | grep -E "${MET:-^spate_(rounds_total|flush_seconds_total|flush_latency_(bucket|sum|count)|append_waits_total)}" | grep -v ' 0$'
kill $pid; wait $pid; rm -rf $data $data.log $data.out
