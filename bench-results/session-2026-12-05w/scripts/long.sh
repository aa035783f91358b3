#!/usr/bin/env bash
# long.sh SHARDS SECONDS OUTDIR: one long shard-density-small-shaped step (100 B, 1,000 records/s a shard, put-batches), non-quiet;
# with a 1 ms sleep probe on each CPU (gapprobe.py), the engine's debug lateness probe, and its flush histogram at the end. BIN=, CONF=
shards=$1; secs=$2; out=$3; mkdir -p $out
cd /work/main; t=${BIN:-target/release}; here=bench-results/session-2026-12-05w/scripts
data=$(mktemp -d /work/spate-one.XXXXXX)
RUST_LOG=info,spate_engine::runtime=debug taskset -c 0 $t/spate serve --data-dir $data --cores 0 --listen 127.0.0.1:7621 --metrics-listen 127.0.0.1:7699 ${CONF:+--config $CONF} >$out/engine.log 2>&1 &
pid=$!
for i in $(seq 100); do grep -q "listening" $out/engine.log 2>/dev/null && break; sleep 0.1; done
taskset -c 0 python3 $here/gapprobe.py $((secs+5)) > $out/gap0.txt &
taskset -c 1 python3 $here/gapprobe.py $((secs+5)) > $out/gap1.txt &
(while kill -0 $pid 2>/dev/null; do echo "$(date +%H:%M:%S.%N | cut -c1-12) $(grep -E '^(vda|nvme0n1|sda) ' /proc/diskstats 2>/dev/null | awk '{print $4, $8, $12}')" ; sleep 0.1; done) > $out/diskstats.txt 2>&1 &
date -u +%T.%N > $out/start.txt
taskset -c 1 $t/spate-loadgen --server 127.0.0.1:7621 --stream s --create-shards $shards --limits kinesis --producers 4 --rate $((shards*1000)) --size 100 --api put-batches --call-records 2000 --keys $((shards*4)) --key-mode per-shard --duration $secs --warmup 2 --cores 1 --engine-pid $pid > $out/loadgen.txt 2>&1
curl -s 127.0.0.1:7699/metrics > $out/metrics.txt
kill $pid; wait $pid 2>/dev/null; wait
rm -rf $data
grep -E '^  ack ' $out/loadgen.txt
awk '/ack max \(1s\)/{for(i=1;i<=NF;i++) if($i=="max"&&$(i+1)=="(1s)") if($(i+2)+0>30) print}' $out/loadgen.txt | cut -c1-120
cat $out/gap0.txt $out/gap1.txt | tail -6
grep -E 'flush_latency_bucket\{le="(10.0|25.0|100.0|\+Inf)' $out/metrics.txt
grep lateness $out/engine.log | grep -o 'late_10ms=[0-9]* late_max_us=[0-9]*' | sort -t= -k3 -n | tail -3
