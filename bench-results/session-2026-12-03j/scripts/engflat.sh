#!/usr/bin/env bash
# engcg.sh OUT: call-graph profile of the engine under many-shards at 1M offered (put-batches)
out=/work/prof/$1
cd /work/main; t=target/release; bin=${BIN:-$t/spate}
data=$(mktemp -d /work/spate-one.XXXXXX)
RUST_LOG=info taskset -c 0 $bin serve --data-dir $data --cores 0 --listen 127.0.0.1:7605 --metrics-listen 127.0.0.1:0 >$data.log 2>&1 &
pid=$!
for i in $(seq 100); do grep -q "^listening" $data.log 2>/dev/null && break; sleep 0.1; done
taskset -c 1 $t/spate-loadgen --server 127.0.0.1:7605 --stream m --create-shards ${SHARDS:-10000} --limits kinesis --producers 64 --rate ${RATE:-1000000} --size 100 --api put-batches --call-records 2000 --keys ${SHARDS:-10000} --key-mode per-shard --duration 15 --warmup 5 --cores 1 --engine-pid $pid -q > $out.txt 2>&1 &
lg=$!
sleep 12; perf record -F 999 -p $pid -o $out.perf.data -- sleep 4 >/dev/null 2>&1
wait $lg
kill $pid; wait $pid; rm -rf $data $data.log
tail -8 $out.txt
