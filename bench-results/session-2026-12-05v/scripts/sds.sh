#!/usr/bin/env bash
# sds.sh SHARDS [SIZE]: shard-density(-small)'s step alone on a fresh engine (Kinesis limits, 4 producers, put-batches); BIN=, CONF=
shards=$1; size=${2:-100}
cd /work/main; t=${BIN:-target/release}
data=$(mktemp -d /work/spate-one.XXXXXX)
taskset -c 0 $t/spate serve --data-dir $data --cores 0 --listen 127.0.0.1:7621 --metrics-listen 127.0.0.1:7699 ${CONF:+--config $CONF} >$data.log 2>&1 &
pid=$!
for i in $(seq 100); do grep -q "listening" $data.log 2>/dev/null && break; sleep 0.1; done
taskset -c 1 $t/spate-loadgen --server 127.0.0.1:7621 --stream s --create-shards $shards --limits kinesis --producers 4 --rate $((shards*1000)) --size $size --api put-batches --call-records 2000 --keys $((shards*4)) --key-mode per-shard --duration 10 --warmup 2 --cores 1 --engine-pid $pid -q > $data.out 2>&1
echo "$shards x $size B: $(grep -E '^  ack |^  used' $data.out | tr '\n' ' ' | tr -s ' ') $(curl -s 127.0.0.1:7699/metrics | grep -E '^spate_core_stalls_total' | tr '\n' ' ')"
kill $pid; wait $pid 2>/dev/null; rm -rf $data $data.log $data.out
