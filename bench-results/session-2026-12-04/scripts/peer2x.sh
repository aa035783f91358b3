#!/usr/bin/env bash
# peer2x.sh: peer-shape 1 producer twice on one engine (the first stream deleted: the second writes recycled space); debug log
cd /work/main; t=target/release; bin=${BIN:-$t/spate}
data=$(mktemp -d /work/spate-one.XXXXXX)
RUST_LOG=info,spate_engine=debug taskset -c 0 $bin serve --data-dir $data --cores 0 --listen 127.0.0.1:7641 --metrics-listen 127.0.0.1:0 >$data.log 2>&1 &
pid=$!
for i in $(seq 100); do grep -q "listening" $data.log 2>/dev/null && break; sleep 0.1; done
for s in a b; do
taskset -c 1 $t/spate-loadgen --server 127.0.0.1:7641 --stream $s --create-shards 1 --limits off --producers 1 --rate 0 --size 1000 --api put-records --call-records 100 --keys 1 --key-mode per-shard --duration ${DUR:-10} --warmup 3 --cores 1 --engine-pid $pid -q --delete-after > $data.out 2>&1
echo "$s: $(grep -E '^  MiB/s' $data.out) $(grep -E '^  ack ' $data.out | awk '{print "p50", $2, "p99", $4}') $(grep rounds_per_s $data.log | tail -1 | grep -o 'write_us_per_round=[0-9]*\|sync_us_per_round=[0-9]*\|prewrite_mib=[0-9]*' | tr '\n' ' ')"
sleep ${GAP:-12}
done
kill $pid; wait $pid; rm -rf $data $data.log $data.out
