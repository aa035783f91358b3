#!/usr/bin/env bash
# pp.sh RATE [extra loadgen args]: Producer::send on 8 shards, 1 KiB, open loop at RATE; prints ack percentiles
rate=$1; shift
cd /work/main; t=target/release; bin=${BIN:-$t/spate}
data=$(mktemp -d /work/spate-one.XXXXXX)
RUST_LOG=${LOG:-info} taskset -c 0 $bin serve --data-dir $data --cores 0 --listen 127.0.0.1:7611 --metrics-listen 127.0.0.1:0 >$data.log 2>&1 &
pid=$!
for i in $(seq 100); do grep -q "listening" $data.log 2>/dev/null && break; sleep 0.1; done
taskset -c 1 ${LG:-$t/spate-loadgen} --server 127.0.0.1:7611 --stream p --create-shards 8 --limits off --producers 4 --rate $rate --size 1024 --keys 10000 --duration ${DUR:-15} --warmup ${WARM:-3} --cores 1 --engine-pid $pid -q "$@" > $data.out 2>&1
echo "$* : $(grep -E '^  ack ' $data.out | awk '{print "p50", $2, "p99", $4, "p99.9", $5}') $(grep -E '^  used' $data.out | awk '{print "lg", $2, "engine", $3}') acked/s $(grep -E "^  per second" $data.out | awk "{print \$3}")"
kill $pid; wait $pid; [[ -n ${KEEP:-} ]] && cp $data.out /work/prof/pp.out && cp $data.log /work/prof/pp.log; rm -rf $data $data.log $data.out
