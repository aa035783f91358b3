#!/usr/bin/env bash
# m100.sh CONF: max-100b's load for 10 s against a fresh engine; the engine's round metrics after
conf=$1
cd /work/main; t=target/release
data=$(mktemp -d /work/spate-one.XXXXXX)
taskset -c 0 $t/spate serve --data-dir $data --cores 0 --listen 127.0.0.1:7621 --metrics-listen 127.0.0.1:7699 --config $conf >$data.log 2>&1 &
pid=$!
for i in $(seq 100); do grep -q "listening" $data.log 2>/dev/null && break; sleep 0.1; done
taskset -c 1 $t/spate-loadgen --server 127.0.0.1:7621 --stream s --create-shards 4 --limits off --producers 64 --rate 0 --size ${SIZE:-100} --api put-batches --call-records 2000 --keys 10000 --duration 10 --warmup 2 --cores 1 --engine-pid $pid -q > $data.out 2>&1
echo "$conf: $(grep -E '^  per second' $data.out) $(grep -E '^  used' $data.out)"
curl -s 127.0.0.1:7699/metrics | grep -E "^spate_(rounds|round_syncs|flush_seconds|journal_bytes|direct_bytes)_total"
kill $pid; wait $pid; rm -rf $data $data.log $data.out
