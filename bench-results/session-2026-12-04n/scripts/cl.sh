#!/usr/bin/env bash
# cl.sh CONF PRODUCERS CALLREC [loadgen args]: closed loop, one shard per producer, 1,000 B records (BIN=); the round metrics after
conf=$1; p=$2; cr=$3; shift 3
cd /work/main; t=${BIN:-target/release}
data=$(mktemp -d /work/spate-one.XXXXXX)
taskset -c 0 $t/spate serve --data-dir $data --cores 0 --listen 127.0.0.1:7621 --metrics-listen 127.0.0.1:7699 --config $conf >$data.log 2>&1 &
pid=$!
for i in $(seq 100); do grep -q "listening" $data.log 2>/dev/null && break; sleep 0.1; done
taskset -c 1 $t/spate-loadgen --server 127.0.0.1:7621 --stream s --create-shards $p --limits off --producers $p --size 1000 --api put-records --call-records $cr --keys $((p*4)) --key-mode per-shard --duration 8 --warmup 2 --cores 1 --engine-pid $pid "$@" > $data.out 2>&1
grep -E '^  per second|^  ack |^  used|^ +[a-z]' $data.out | head -20
curl -s 127.0.0.1:7699/metrics | grep -E "^spate_(rounds_total|flush_seconds_total|flush_latency_(sum|count))" 
kill $pid; wait $pid; rm -rf $data $data.log $data.out
