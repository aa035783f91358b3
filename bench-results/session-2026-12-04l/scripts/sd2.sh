#!/usr/bin/env bash
# sd2.sh OUT N:CIF...: session 03j's sd.sh with a calls-in-flight count per step (N shards, CIF calls in flight per producer) against one fresh engine; the first step FIRST s long
out=/work/prof/$1; shift
cd /work/main; t=target/release; bin=${BIN:-$t/spate}
data=$(mktemp -d /work/spate-one.XXXXXX)
RUST_LOG=spate_engine=debug,info taskset -c 0 $bin serve --data-dir $data --cores 0 --listen 127.0.0.1:7606 --metrics-listen 127.0.0.1:0 ${CONF:+--config $CONF} >$out.engine.log 2>&1 &
pid=$!
for i in $(seq 100); do grep -q "listening" $out.engine.log 2>/dev/null && break; sleep 0.1; done
i=0; for step in "$@"; do i=$((i+1)); n=${step%:*}; cif=${step#*:}; d=${DUR:-10}; [[ $i == 1 && -n ${FIRST:-} ]] && d=$FIRST
taskset -c 1 $t/spate-loadgen --server 127.0.0.1:7606 --stream s$i --create-shards $n --limits kinesis --producers ${PROD:-4} --rate $((n*1000)) --size ${SIZE:-1000} --api put-records --call-records 2000 --calls-in-flight $cif --keys $((4*n)) --key-mode per-shard --duration $d --warmup 2 --cores 1 --engine-pid $pid ${VERIFY:+--verify} -q > $out.$i.txt 2>&1
echo "$n/$cif: $(grep -E '^  ack ' $out.$i.txt | awk '{print "p50", $2, "p99", $4, "p99.9", $5}') $(grep -E '^  used' $out.$i.txt | awk '{print "lg", $2, "engine", $3}') $(grep -E '^  per second' $out.$i.txt | awk '{print "acked/s", $3}') $(grep -iE 'lost|reorder' $out.$i.txt | head -2 | tr '\n' ' ')"
done
kill $pid; wait $pid
rm -rf $data
