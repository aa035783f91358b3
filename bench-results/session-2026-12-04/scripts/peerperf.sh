#!/usr/bin/env bash
# peerperf.sh OUT [P]: perf record of the engine under peer-shape (P producers)
out=/work/prof/$1; p=${2:-1}
cd /work/main; t=target/release; bin=${BIN:-$t/spate}
data=$(mktemp -d /work/spate-one.XXXXXX)
RUST_LOG=info taskset -c 0 $bin serve --data-dir $data --cores 0 --listen 127.0.0.1:7622 --metrics-listen 127.0.0.1:0 >$data.log 2>&1 &
pid=$!
for i in $(seq 100); do grep -q "listening" $data.log 2>/dev/null && break; sleep 0.1; done
taskset -c 1 $t/spate-loadgen --server 127.0.0.1:7622 --stream s --create-shards $p --limits off --producers $p --rate 0 --size 1000 --api put-records --call-records 100 --keys $p --key-mode per-shard --duration 10 --warmup 3 --cores 1 --engine-pid $pid -q > $out.txt 2>&1 &
lg=$!
sleep 6; perf record ${PERFARGS:--F 1999 -g} -p $pid -o $out.perf.data -- sleep 4 >/dev/null 2>&1
wait $lg; kill $pid; wait $pid; rm -rf $data $data.log
