#!/usr/bin/env bash
# pause.sh SHARDS RUNS: shard-density-small's step (100 B, 1,000 records/s a shard) on a fresh engine RUNS times;
# per run: the worst 1 s ack max from the load generator, and the engine's flush_latency buckets over 25 ms. BIN=, CONF=
shards=${1:-32}; runs=${2:-4}
cd /work/main; t=${BIN:-target/release}
for r in $(seq $runs); do
data=$(mktemp -d /work/spate-one.XXXXXX)
taskset -c 0 $t/spate serve --data-dir $data --cores 0 --listen 127.0.0.1:7621 --metrics-listen 127.0.0.1:7699 ${CONF:+--config $CONF} >$data.log 2>&1 &
pid=$!
for i in $(seq 100); do grep -q "listening" $data.log 2>/dev/null && break; sleep 0.1; done
taskset -c 1 $t/spate-loadgen --server 127.0.0.1:7621 --stream s --create-shards $shards --limits kinesis --producers 4 --rate $((shards*1000)) --size 100 --api put-batches --call-records 2000 --keys $((shards*4)) --key-mode per-shard --duration 10 --warmup 2 --cores 1 --engine-pid $pid > $data.out 2>&1
worst=$(grep 'ack max (1s)' $data.out | sed 's/.*\[ *\([0-9.]*\)s.*ack max (1s) *\([0-9.]*\) ms.*/\2 @\1s/' | sort -n | tail -1)
flush=$(curl -s 127.0.0.1:7699/metrics | grep -E '^spate_flush_latency_bucket' | grep -E 'le="(10.0|25.0|50.0|100.0|250.0|\+Inf)"' | sed 's/.*le="\([^"]*\)"} \([0-9]*\)$/\1:\2/' | tr '\n' ' ')
stalls=$(curl -s 127.0.0.1:7699/metrics | grep -E '^spate_core_stalls' | awk '{print $2}')
echo "run $r: ack $(grep -E '^  ack ' $data.out | tr -s ' ') | worst 1s max $worst | flush cum $flush | stalls $stalls"
kill $pid; wait $pid 2>/dev/null; rm -rf $data $data.log $data.out
done
