#!/usr/bin/env bash
# max1k.sh OUT: the max-1k run against a fresh engine (debug log); CONF= config file
out=/work/prof/$1
cd /work/main; t=target/release; bin=${BIN:-$t/spate}
data=$(mktemp -d /work/spate-one.XXXXXX)
RUST_LOG=spate_engine=debug,info taskset -c 0 $bin serve --data-dir $data --cores 0 --listen 127.0.0.1:7608 --metrics-listen 127.0.0.1:0 ${CONF:+--config $CONF} >$out.engine.log 2>&1 &
pid=$!
for i in $(seq 100); do grep -q "^listening" $out.engine.log 2>/dev/null && break; sleep 0.1; done
taskset -c 1 $t/spate-loadgen --server 127.0.0.1:7608 --stream x --create-shards 4 --limits off --producers 16 --rate 0 --size ${SIZE:-1024} --api put-batches --call-records 2000 --keys 10000 --duration ${DUR:-15} --warmup 3 --cores 1 --engine-pid $pid -q > $out.txt 2>&1
echo "$(grep -E '^  MiB/s' $out.txt) $(grep -E '^  ack ' $out.txt | awk '{print "p50", $2, "p99", $4}') $(grep -E '^  used' $out.txt | awk '{print "lg", $2, "engine", $3}')"
kill $pid; wait $pid
rm -rf $data
grep "store rounds" $out.engine.log | grep -o "rounds_per_s=[0-9]*\|appends_per_round=[0-9.]*\|journal_kib_per_round=[0-9]*\|direct_kib_per_round=[0-9]*\|syncs_per_round=[0-9.]*\|write_us_per_round=[0-9]*\|sync_us_per_round=[0-9]*\|write_behind_mib=[0-9]* fill_mib=[0-9]* prewrite_mib=[0-9]*\|waits.*tail=[0-9]*" | paste - - - - - - - - - | cut -c1-300
