#!/usr/bin/env bash
# steady.sh BIN SHARDS RATE: many-shards load after a 45 s warm-up (the journal ring grown), 30 s measured;
# prints ack p50/p99/p99.9 and engine/loadgen CPU.
bin=$1; shards=$2; rate=$3
cd /work/main; t=target/release
data=$(mktemp -d /work/spate-one.XXXXXX)
RUST_LOG=info taskset -c 0 $bin serve --data-dir $data --cores 0 --listen 127.0.0.1:7601 --metrics-listen 127.0.0.1:0 >$data.log 2>&1 &
pid=$!
for i in $(seq 100); do grep -q "listening" $data.log 2>/dev/null && break; sleep 0.1; done
lim=kinesis; [[ $shards -lt 1000 ]] && lim=off
taskset -c 1 $t/spate-loadgen --server 127.0.0.1:7601 --stream m --create-shards $shards --limits $lim --producers ${PRODUCERS:-4} --rate $rate --size 100 --api ${API:-put-records} --call-records 2000 --keys $(( shards > ${PRODUCERS:-4} ? shards : ${PRODUCERS:-4} )) --key-mode per-shard --duration ${DUR:-30} --warmup ${WARM:-45} --cores 1 --engine-pid $pid --json $data.json -q > $data.out 2>&1
echo "$(grep -E '^  ack ' $data.out | awk '{print "p50", $2, "p99", $4, "p99.9", $5}') $(grep -E '^  used' $data.out | awk '{print "lg", $2, "engine", $3}') acked/s $(grep -E "^  per second" $data.out | awk "{print \$3}") win/s $(python3 -c "import json,sys;print(round(json.load(open(sys.argv[1]))[\"acks_in_window_per_s\"]))" $data.json)"
kill $pid; wait $pid; [[ -n ${KEEP:-} ]] && cp $data.out /work/prof/last.out && cp $data.log /work/prof/last.log; rm -rf $data $data.log $data.out $data.json
