#!/usr/bin/env bash
# perf1.sh OUT ARGS...: a fresh engine on CPU 0, `spate-loadgen ARGS` on CPU 1; after 5 s,
# 8 s of `perf record` of PERF_OF=engine (default) or PERF_OF=loadgen (NOPERF=1: none).
# BIN= / LG= pick the engine / load generator binaries (A/B runs); LOG= the engine's RUST_LOG.
out=/work/prof/$1; shift
cd /work/main; t=target/release; bin=${BIN:-$t/spate}; lgbin=${LG:-$t/spate-loadgen}
data=$(mktemp -d /work/spate-one.XXXXXX)
RUST_LOG=${LOG:-info} taskset -c 0 $bin serve ${CONF:+--config $CONF} --data-dir $data --cores 0 --listen 127.0.0.1:7631 --metrics-listen 127.0.0.1:0 >$out.log 2>&1 &
pid=$!
for i in $(seq 100); do grep -q "listening" $out.log 2>/dev/null && break; sleep 0.1; done
taskset -c 1 $lgbin --server 127.0.0.1:7631 --stream s --engine-pid $pid --cores 1 -q "$@" > $out.txt 2>&1 &
lg=$!
target=$pid; [[ ${PERF_OF:-engine} == loadgen ]] && target=$lg
sleep 5; [[ -z ${NOPERF:-} ]] && perf record -F ${FREQ:-1999} ${CG:-} -p $target -o $out.perf.data -- sleep 8 >/dev/null 2>&1
wait $lg; kill $pid; wait $pid; rm -rf $data
grep -E '^  per second|^  ack |^  used' $out.txt
