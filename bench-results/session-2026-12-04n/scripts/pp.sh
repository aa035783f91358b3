#!/usr/bin/env bash
# pp.sh API: producer-path's closed-loop run (8 shards, 4 producers, 1 KiB, 10,000 keys, 10 s)
api=$1; here=$(cd "$(dirname "$0")" && pwd)
cd /work/main; t=${BIN:-target/release}
data=$(mktemp -d /work/spate-one.XXXXXX)
taskset -c 0 $t/spate serve --data-dir $data --cores 0 --listen 127.0.0.1:7621 --metrics-listen 127.0.0.1:7699 --config ${CONF:-$here/def.toml} >$data.log 2>&1 &
pid=$!
for i in $(seq 100); do grep -q "listening" $data.log 2>/dev/null && break; sleep 0.1; done
taskset -c 1 $t/spate-loadgen --server 127.0.0.1:7621 --stream s --create-shards 8 --limits off --producers 4 --rate 0 --size 1024 --api $api --call-records 2000 --keys 10000 --duration 10 --warmup 2 --cores 1 --engine-pid $pid -q > $data.out 2>&1
grep -E '^  per second|^  ack |^  used' $data.out
kill $pid; wait $pid; rm -rf $data $data.log $data.out
