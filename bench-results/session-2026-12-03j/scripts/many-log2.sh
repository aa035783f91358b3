#!/usr/bin/env bash
# Profile the engine under many-shards load. Usage: many.sh OUTPREFIX [SHARDS] [RATE]
set -euo pipefail
out=/work/prof/$1; shards=${2:-10000}; rate=${3:-1000000}
cd /work/main
t=target/release; bin=${BIN:-$t/spate}
data=$(mktemp -d /work/spate-one.XXXXXX)
RUST_LOG=spate_engine=debug,info taskset -c 0 $bin serve --data-dir $data --cores 0 --listen 127.0.0.1:7600 --metrics-listen 127.0.0.1:0 >$out.engine.log 2>&1 &
pid=$!
for i in $(seq 100); do grep -q "listening\|serving" $out.engine.log 2>/dev/null && break; sleep 0.1; done
sleep 0.5

taskset -c 1 $t/spate-loadgen --server 127.0.0.1:7600 --stream m --create-shards $shards --limits ${LIMITS:-kinesis} --producers ${PRODUCERS:-4} --rate $rate --size 100 --api put-records --call-records 2000 --keys $shards --key-mode per-shard --duration ${DUR:-10} --warmup ${WARM:-3} --cores 1 --engine-pid $pid -q > $out.loadgen.txt 2>&1 || true
sleep 1
kill $pid; wait $pid || true
rm -rf $data
grep 'store rounds' $out.engine.log | tail -3
cat $out.loadgen.txt | tail -30
