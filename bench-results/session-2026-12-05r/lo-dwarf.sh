#!/usr/bin/env bash
# lo.sh CONF SHARDS RATE [API] [SIZE]: one open-loop step of shard-density* (4 producers,
# 4 keys a shard, 10 s after 2 s; engine on CPU 0, load generator on CPU 1), then the
# engine's round metrics. Knobs: P= producers, K= keys, LIMITS=, BIN= binaries' directory,
# EXTRA= more load-generator flags, MET= metrics regex, Q= (empty: progress lines),
# DEBUG=1 (engine at RUST_LOG=spate_engine=debug: its "slow round" lines after),
# PERF=engine|loadgen|faults (5 s in: perf record -g of the engine for 2 s, of the load
# generator with DWARF call graphs, or perf stat page faults of the engine for 5 s;
# perf.data under PERF_OUT, default .).
conf=$1; shards=$2; rate=$3; api=${4:-put-records}; size=${5:-1000}
out=$(realpath "${PERF_OUT:-.}")
cd /work/main; t=${BIN:-target/release}
data=$(mktemp -d /work/spate-one.XXXXXX)
log=${DEBUG:+spate_engine=debug}
RUST_LOG=${log:-${RUST_LOG:-info}} taskset -c 0 $t/spate serve --data-dir $data --cores 0 --listen 127.0.0.1:7621 --metrics-listen 127.0.0.1:7699 --config $conf >$data.log 2>&1 &
pid=$!
for i in $(seq 100); do grep -q "listening" $data.log 2>/dev/null && break; sleep 0.1; done
taskset -c 1 $t/spate-loadgen --server 127.0.0.1:7621 --stream s --create-shards $shards --limits ${LIMITS:-off} --producers ${P:-4} ${EXTRA:-} --rate $rate --size $size --api $api --call-records 2000 --keys ${K:-$((shards*4))} --key-mode per-shard --duration 10 --warmup 2 --cores 1 --engine-pid $pid ${Q--q} > $data.out 2>&1 &
lg=$!
case ${PERF:-} in
  engine) sleep 5; perf record -F 499 --call-graph dwarf,16384 -p $pid -o $out/perf.data -- sleep 2 >/dev/null 2>&1 ;;
  loadgen) sleep 5; perf record -F 500 --call-graph dwarf,16384 -p $lg -o $out/perf.data -- sleep 2 >/dev/null 2>&1 ;;
  faults) sleep 6; perf stat -e page-faults -p $pid -- sleep 5 2>&1 | grep page-faults ;;
esac
wait $lg
grep -E '^  per second|^  ack |^  used' $data.out
curl -s 127.0.0.1:7699/metrics | grep -E "${MET:-^spate_(rounds_total|flush_seconds_total|flush_latency_(bucket|sum|count)|append_waits_total)}" | grep -v ' 0$'
kill $pid; wait $pid
[ -n "${DEBUG:-}" ] && grep "slow round" $data.log
rm -rf $data $data.log $data.out
