#!/usr/bin/env bash
# pause2.sh "STEPS": shard-density-small's steps against ONE engine, each stream deleted after its step (as the suite runs them);
# per step: the worst 1 s ack max (with the wall clock of that second) and the engine's flush_latency count over 25 ms so far. BIN=, CONF=, KEEP=dir
steps=${1:-"8 16 32 64 128 256"}
cd /work/main; t=${BIN:-target/release}
data=$(mktemp -d /work/spate-one.XXXXXX)
taskset -c 0 $t/spate serve --data-dir $data --cores 0 --listen 127.0.0.1:7621 --metrics-listen 127.0.0.1:7699 ${CONF:+--config $CONF} >$data.log 2>&1 &
pid=$!
for i in $(seq 100); do grep -q "listening" $data.log 2>/dev/null && break; sleep 0.1; done
n=0
for shards in $steps; do n=$((n+1))
start=$(date +%s.%N)
taskset -c 1 $t/spate-loadgen --server 127.0.0.1:7621 --stream s$n --create-shards $shards --limits kinesis --delete-after --producers 4 --rate $((shards*1000)) --size 100 --api put-batches --call-records 2000 --keys $((shards*4)) --key-mode per-shard --duration 10 --warmup 2 --cores 1 --engine-pid $pid > $data.out.$n 2>&1
worst=$(grep 'ack max (1s)' $data.out.$n | sed 's/.*\[ *\([0-9.]*\)s.*ack max (1s) *\([0-9.]*\) ms.*/\2 \1/' | sort -n | tail -1)
at=$(python3 -c "import sys,datetime;w='$worst'.split();print(datetime.datetime.utcfromtimestamp($start+float(w[1])).strftime('%H:%M:%S') if len(w)>1 else '-')")
over=$(curl -s 127.0.0.1:7699/metrics | awk '/^spate_flush_latency_bucket\{le="25.0"\}/{a=$2} /^spate_flush_latency_count/{c=$2} END{print c-a}')
echo "step $n ($shards shards): ack $(grep -E '^  ack ' $data.out.$n | tr -s ' ' | cut -d' ' -f3-) | worst 1s max ${worst%% *} ms in the second ending $at | flushes >25ms so far: $over"
done
kill $pid; wait $pid 2>/dev/null
[ -n "$KEEP" ] && cp $data.log $data.out.* $KEEP/ 
rm -rf $data $data.log $data.out.*
