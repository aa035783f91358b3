#!/usr/bin/env bash
# lgab2.sh LGBIN API RATE: fresh engine (spate-h0) on CPU 0, LGBIN on CPU 1, 8 shards, 1 KiB, 4 producers;
# prints acked/s, loadgen cores, engine cores, ack p99.
lg=$1; api=$2; rate=$3
data=$(mktemp -d /work/spate-one.XXXXXX)
RUST_LOG=info taskset -c 0 /work/ab/spate-h0 serve --data-dir $data --cores 0 --listen 127.0.0.1:7605 --metrics-listen 127.0.0.1:0 >$data.log 2>&1 &
pid=$!
for i in $(seq 100); do grep -q "^listening" $data.log 2>/dev/null && break; sleep 0.1; done
a=""; [[ $api != producer ]] && a="--api $api"
taskset -c 1 $lg --server 127.0.0.1:7605 --stream p --create-shards 8 --limits off --producers 4 --rate $rate --size 1024 --keys 10000 --duration 12 --warmup 3 --cores 1 --engine-pid $pid $a -q > $data.out 2>&1
echo "$(grep -E '^  per second' $data.out | awk '{print "acked/s", $3}') $(grep -E '^  used' $data.out | awk '{print "lg", $2, "eng", $3}') p99 $(grep -E '^  ack ' $data.out | awk '{print $4}')"
kill $pid; wait $pid 2>/dev/null; rm -rf $data $data.log $data.out
