#!/usr/bin/env bash
# peer1-lat.sh: peer-shape's one producer (session w's peer1-conf.sh) plus the engine's own request latency and flush latency sums: where a call's time goes. CONF=, P=, BIN=
cd /work/main; t=${BIN:-target/release}; p=${P:-1}
data=$(mktemp -d /work/spate-one.XXXXXX)
taskset -c 0 $t/spate serve --data-dir $data --cores 0 --listen 127.0.0.1:7621 --metrics-listen 127.0.0.1:7699 ${CONF:+--config $CONF} >$data.log 2>&1 &
pid=$!
for i in $(seq 100); do grep -q "listening" $data.log 2>/dev/null && break; sleep 0.1; done
taskset -c 1 $t/spate-loadgen --server 127.0.0.1:7621 --stream s --create-shards $p --limits off --producers $p --rate 0 --size 1000 --api put-batches --call-records 100 --keys $((p*4)) --key-mode per-shard --duration ${DUR:-10} --warmup 2 --cores 1 --engine-pid $pid -q > $data.out 2>&1
echo "$p producer(s): $(grep -E '^  per second|^  ack |^  used' $data.out | tr '\n' ' ' | tr -s ' ')"
curl -s 127.0.0.1:7699/metrics | grep -E '^spate_(rounds_total|core_round_rate_cap|core_stalls_total|flush_latency_sum|flush_latency_count|round_syncs_total)|_Latency_(sum|count)|latency_(sum|count)' | grep -v ' 0$'
kill $pid; wait $pid 2>/dev/null; rm -rf $data $data.log $data.out
