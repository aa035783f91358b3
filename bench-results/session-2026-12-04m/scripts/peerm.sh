#!/usr/bin/env bash
# peerm.sh CONF P: peer-shape with P producers; prints the engine's round metrics after
p=${2:-1}; conf=$1
cd /work/main; t=target/release; bin=${BIN:-$t/spate}
data=$(mktemp -d /work/spate-one.XXXXXX)
taskset -c 0 $bin serve --data-dir $data --cores 0 --listen 127.0.0.1:7621 --metrics-listen 127.0.0.1:7699 --config $conf >$data.log 2>&1 &
pid=$!
for i in $(seq 100); do grep -q "listening" $data.log 2>/dev/null && break; sleep 0.1; done
taskset -c 1 $t/spate-loadgen --server 127.0.0.1:7621 --stream s --create-shards $p --limits off --producers $p --rate 0 --size 1000 --api put-records --call-records 100 --keys $p --key-mode per-shard --duration ${DUR:-10} --warmup 3 --cores 1 --engine-pid $pid -q > $data.out 2>&1
echo "$conf P=$p: $(grep -E '^  MiB/s' $data.out) $(grep -E '^  ack ' $data.out | awk '{print "p50", $2, "p99", $4}') $(grep -E '^  used' $data.out | awk '{print "lg", $2, "engine", $3}')"
curl -s 127.0.0.1:7699/metrics | grep -E "^spate_(rounds|round_syncs|flush_seconds|flush_latency_(sum|count)|journal_bytes|direct_bytes)" 
kill $pid; wait $pid; rm -rf $data $data.log $data.out
