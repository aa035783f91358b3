#!/usr/bin/env bash
# bab.sh BIN SCENARIO OUT: one `spate-loadgen bench SCENARIO` against a fresh engine BIN (CPU 0), loadgen on CPU 1
bin=$1; scen=$2; out=$3
cd /work/main; t=target/release
mkdir -p $out; cp /work/runs/k0/machine-limits.json $out/ 2>/dev/null
data=$(mktemp -d /work/spate-one.XXXXXX)
RUST_LOG=info taskset -c 0 $bin serve --data-dir $data --cores 0 --listen 127.0.0.1:7631 --metrics-listen 127.0.0.1:0 ${CONF:+--config $CONF} >$out/engine-$scen.log 2>&1 &
pid=$!
for i in $(seq 100); do grep -q "listening" $out/engine-$scen.log 2>/dev/null && break; sleep 0.1; done
taskset -c 1 $t/spate-loadgen bench $scen --server 127.0.0.1:7631 --cores 1 --engine-pid $pid --out $out > $out/$scen.txt 2>&1
kill $pid; wait $pid; rm -rf $data
