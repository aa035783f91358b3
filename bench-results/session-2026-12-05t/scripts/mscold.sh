#!/usr/bin/env bash
# mscold.sh: many-shards' 10,000-shard run as the suite makes it (fresh data directory, 64 producers,
# 1 M records/s of 100 B, put-records, 5 s warm-up + 15 s), then the engine's round and wait metrics.
# BIN= binaries, CONF= engine config, D= measured seconds (15), PERF_OUT=FILE: perf record of the
# engine for 4 s from the 8th second (PA= perf's sampling arguments, default -F 999 -g).
cd /work/main; t=${BIN:-target/release}
data=$(mktemp -d /work/spate-one.XXXXXX)
taskset -c 0 $t/spate serve --data-dir $data --cores 0 --listen 127.0.0.1:7621 --metrics-listen 127.0.0.1:7699 ${CONF:+--config $CONF} >$data.log 2>&1 &
pid=$!
for i in $(seq 100); do grep -q "listening" $data.log 2>/dev/null && break; sleep 0.1; done
taskset -c 1 $t/spate-loadgen --server 127.0.0.1:7621 --stream s --create-shards 10000 --limits kinesis --producers 64 --rate 1000000 --size 100 --api put-records --call-records 2000 --keys 10000 --key-mode per-shard --duration ${D:-15} --warmup 5 --cores 1 --engine-pid $pid -q > $data.out 2>&1 &
lg=$!
[ -n "${PERF_OUT:-}" ] && { sleep 8; perf record ${PA:--F 999 -g} -p $pid -o $PERF_OUT -- sleep 4 >/dev/null 2>&1; }
wait $lg
echo "$(grep -E '^  per second|^  ack |^  used' $data.out | tr '\n' ' ' | tr -s ' ')"
curl -s 127.0.0.1:7699/metrics | grep -E '^spate_(rounds_total|round_syncs_total|journal_bytes_total|direct_bytes_total|append_waits|flush_latency_(sum|count)|store_memory_bytes)' | tr '\n' ' '; echo
du -sh $data | cut -f1
kill $pid; wait $pid 2>/dev/null; rm -rf $data $data.log $data.out
