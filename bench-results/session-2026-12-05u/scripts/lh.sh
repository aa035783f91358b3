#!/usr/bin/env bash
# lh.sh: latency-half's shape (4 shards, 16 producers, put-batches, 1 KiB, open loop at RATE), then the engine's round metrics.
cd /work/main; t=${BIN:-target/release}
data=$(mktemp -d /work/spate-one.XXXXXX)
taskset -c 0 $t/spate serve --data-dir $data --cores 0 --listen 127.0.0.1:7621 --metrics-listen 127.0.0.1:7699 ${CONF:+--config $CONF} >$data.log 2>&1 &
pid=$!
for i in $(seq 100); do grep -q "listening" $data.log 2>/dev/null && break; sleep 0.1; done
taskset -c 1 $t/spate-loadgen --server 127.0.0.1:7621 --stream s --create-shards 4 --limits off --producers 16 --rate ${RATE:-900000} --size 1024 --api put-batches --call-records 2000 --keys 10000 --duration 10 --warmup 2 --cores 1 --engine-pid $pid ${EXTRA:-} -q > $data.out 2>&1
grep -E '^  per second|^  ack |^  used' $data.out | tr '\n' ' ' | tr -s ' '; echo
curl -s 127.0.0.1:7699/metrics | grep -E '^spate_(rounds_total|flush_latency_(sum|count)|journal_bytes_total|direct_bytes_total|append_waits_total|core_round_rate_cap|core_stalls_total|checkpoints_total|round_syncs_total|direct_writes_total)' | tr '\n' ' '; echo
kill $pid; wait $pid 2>/dev/null; rm -rf $data $data.log $data.out
