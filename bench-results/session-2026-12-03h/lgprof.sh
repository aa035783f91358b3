#!/usr/bin/env bash
# lgprof.sh OUT: profile the load generator in producer-path's closed loop (Producer::send)
out=/work/prof/$1
cd /work/main; t=target/release
data=$(mktemp -d /work/spate-one.XXXXXX)
RUST_LOG=info taskset -c 0 $t/spate serve --data-dir $data --cores 0 --listen 127.0.0.1:7604 --metrics-listen 127.0.0.1:0 >$data.log 2>&1 &
pid=$!
for i in $(seq 100); do grep -q "^listening" $data.log 2>/dev/null && break; sleep 0.1; done
taskset -c 1 $t/spate-loadgen --server 127.0.0.1:7604 --stream p --create-shards 8 --limits off --producers 4 --rate 0 --size 1024 --keys 10000 --duration 12 --warmup 3 --cores 1 -q > $out.txt 2>&1 &
lg=$!
sleep 6; perf record -F 499 --call-graph dwarf,16384 -p $lg -o $out.perf.data -- sleep 5 >/dev/null 2>&1
wait $lg
kill $pid; wait $pid; rm -rf $data $data.log
tail -8 $out.txt
