#!/usr/bin/env bash
# max1k2.sh OUT: max-1k twice on one engine, the first stream deleted in between (the second run writes recycled, already-written space)
out=/work/prof/$1
cd /work/main; t=target/release; bin=${BIN:-$t/spate}
data=$(mktemp -d /work/spate-one.XXXXXX)
RUST_LOG=spate_engine=debug,info taskset -c 0 $bin serve --data-dir $data --cores 0 --listen 127.0.0.1:7608 --metrics-listen 127.0.0.1:0 ${CONF:+--config $CONF} >$out.engine.log 2>&1 &
pid=$!
for i in $(seq 100); do grep -q "^listening" $out.engine.log 2>/dev/null && break; sleep 0.1; done
for s in x1 x2; do
taskset -c 1 $t/spate-loadgen --server 127.0.0.1:7608 --stream $s --create-shards 4 --limits off --producers 16 --rate 0 --size ${SIZE:-1024} --api put-batches --call-records 2000 --keys 10000 --duration ${DUR:-15} --warmup 3 --cores 1 --engine-pid $pid -q > $out.$s.txt 2>&1
echo "$s $(grep -E '^  MiB/s' $out.$s.txt) $(grep -E '^  ack ' $out.$s.txt | awk '{print "p50", $2, "p99", $4}') $(grep -E '^  used' $out.$s.txt | awk '{print "lg", $2, "engine", $3}') disk $(du -sm $data | cut -f1) MiB"
$t/spate stream delete $s --server 127.0.0.1:7608 >/dev/null
sleep 12
done
kill $pid; wait $pid
rm -rf $data
grep "store rounds" $out.engine.log | grep -o "rounds_per_s=[0-9]*\|direct_kib_per_round=[0-9]*\|write_us_per_round=[0-9]*\|sync_us_per_round=[0-9]*\|prewrite_mib=[0-9]*" | paste - - - - - | cut -c1-300
