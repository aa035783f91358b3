#!/usr/bin/env bash
# loperf.sh CONF SHARDS RATE [API] [SIZE]: lo.sh's load; perf record of the engine for 2 s, 5 s in (P=, LIMITS=, BIN=, PERF_OUT=)
conf=$1; shards=$2; rate=$3; api=${4:-put-records}; size=${5:-1000}
cd /work/main; t=${BIN:-target/release}
data=$(mktemp -d /work/spate-one.XXXXXX)
taskset -c 0 $t/spate serve --data-dir $data --cores 0 --listen 127.0.0.1:7621 --metrics-listen 127.0.0.1:7699 --config $conf >$data.log 2>&1 &
pid=$!
for i in $(seq 100); do grep -q "listening" $data.log 2>/dev/null && break; sleep 0.1; done
taskset -c 1 $t/spate-loadgen --server 127.0.0.1:7621 --stream s --create-shards $shards --limits ${LIMITS:-off} --producers ${P:-4} --rate $rate --size $size --api $api --call-records 2000 --keys $((shards*4)) --key-mode per-shard --duration 10 --warmup 2 --cores 1 --engine-pid $pid -q > $data.out 2>&1 &
lg=$!
sleep 5
perf record -F 999 -g -p $pid -o ${PERF_OUT:-/work/sx}/perf.data -- sleep 2 2>/dev/null >/dev/null
wait $lg
grep -E '^  per second|^  ack |^  used' $data.out
kill $pid; wait $pid; rm -rf $data $data.log $data.out
