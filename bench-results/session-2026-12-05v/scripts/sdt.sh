#!/usr/bin/env bash
# sdt.sh SHARDS: shard-density's step (1,000 B, 4 producers, put-batches, calls <= 2,000) with the engine's
# metrics sampled every 100 ms (rounds, flush time, checkpoints, stalls, memory, waits) into $OUT (default /tmp/sdt.tsv).
shards=$1; out=${OUT:-/tmp/sdt.tsv}
cd /work/main; t=${BIN:-target/release}
data=$(mktemp -d /work/spate-one.XXXXXX)
taskset -c 0 $t/spate serve --data-dir $data --cores 0 --listen 127.0.0.1:7621 --metrics-listen 127.0.0.1:7699 ${CONF:+--config $CONF} >$data.log 2>&1 &
pid=$!
for i in $(seq 100); do grep -q "listening" $data.log 2>/dev/null && break; sleep 0.1; done
taskset -c 1 $t/spate-loadgen --server 127.0.0.1:7621 --stream s --create-shards $shards --limits kinesis --producers 4 --rate $((shards*1000)) --size 1000 --api put-batches --call-records 2000 --keys $((shards*4)) --key-mode per-shard --duration 10 --warmup 2 --cores 1 --engine-pid $pid -q > $data.out 2>&1 &
lg=$!
t0=$(date +%s.%N)
: > $out
while kill -0 $lg 2>/dev/null; do
  m=$(curl -s 127.0.0.1:7699/metrics)
  now=$(date +%s.%N)
  echo "$(echo "$now - $t0" | bc) $(echo "$m" | awk '/^spate_rounds_total/{r=$2} /^spate_flush_latency_sum/{f=$2} /^spate_checkpoints_total/{c=$2} /^spate_core_stalls_total/{s=$2} /^spate_store_memory_bytes/{mb+=$2} /^spate_append_waits_total/{w+=$2} /^spate_journal_bytes_total/{j=$2} /^PutRecords_Latency_count/{n+=$2} /^PutRecords_Latency_sum/{ls+=$2} END{print r,f,c,s,mb,w,j,n,ls}')" >> $out
  sleep 0.1
done
echo "$shards shards: $(grep -E '^  per second|^  ack |^  used' $data.out | tr '\n' ' ' | tr -s ' ')"
kill $pid; wait $pid 2>/dev/null; rm -rf $data $data.log $data.out
