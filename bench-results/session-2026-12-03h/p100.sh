#!/usr/bin/env bash
# p100.sh OUT RATE: engine (spate-h0) profile under max-100b's shape at a fixed rate.
out=/work/prof/$1; rate=$2
data=$(mktemp -d /work/spate-one.XXXXXX)
RUST_LOG=info taskset -c 0 ${BIN:-/work/ab/spate-h0} serve --data-dir $data --cores 0 --listen 127.0.0.1:7607 --metrics-listen 127.0.0.1:0 >$data.log 2>&1 &
pid=$!
for i in $(seq 100); do grep -q "^listening" $data.log 2>/dev/null && break; sleep 0.1; done
( sleep 7; perf record -F 499 --call-graph dwarf,16384 -p $pid -o $out.perf.data -- sleep 6 >/dev/null 2>&1 ) &
taskset -c 1 /work/main/target/release/spate-loadgen --server 127.0.0.1:7607 --stream m --create-shards 4 --limits off --producers 64 --rate $rate --size 100 --api put-batches --call-records 2000 --keys 10000 --duration 12 --warmup 3 --cores 1 --engine-pid $pid -q > $out.txt 2>&1
sleep 1; kill $pid; wait $pid 2>/dev/null; rm -rf $data $data.log
grep -E "per second|used|ack " $out.txt
