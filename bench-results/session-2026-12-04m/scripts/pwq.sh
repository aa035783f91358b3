#!/usr/bin/env bash
# pwq.sh Q P: peer-shape P producers, ds0 config, prewrite credit Q/4 of round bytes
export SPATE_PW_Q=$1
cd /work/main; bin=/work/prof/spate-pwq; t=target/release
data=$(mktemp -d /work/spate-one.XXXXXX)
taskset -c 0 $bin serve --data-dir $data --cores 0 --listen 127.0.0.1:7621 --metrics-listen 127.0.0.1:0 --config bench-results/session-2026-12-04m/scripts/ds0.toml >$data.log 2>&1 &
pid=$!
for i in $(seq 100); do grep -q "listening" $data.log 2>/dev/null && break; sleep 0.1; done
taskset -c 1 $t/spate-loadgen --server 127.0.0.1:7621 --stream s --create-shards $2 --limits off --producers $2 --rate 0 --size 1000 --api put-records --call-records 100 --keys $2 --key-mode per-shard --duration 15 --warmup 3 --cores 1 --engine-pid $pid -q > $data.out 2>&1
echo "Q=$1 P=$2: $(grep -E '^  MiB/s' $data.out) $(grep -E '^  ack ' $data.out | awk '{print "p50", $2, "p99", $4}') $(grep -E '^  used' $data.out | awk '{print "lg", $2, "engine", $3}')"
kill $pid; wait $pid; rm -rf $data $data.log $data.out
