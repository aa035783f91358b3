#!/usr/bin/env bash
# trace512.sh: shard-density's 512-shard step with io_uring tracepoints recorded for 2 s (from its 6th second)
cd /work/main; t=${BIN:-target/release}
data=$(mktemp -d /work/spate-one.XXXXXX)
taskset -c 0 $t/spate serve --data-dir $data --cores 0 --listen 127.0.0.1:7621 --metrics-listen 127.0.0.1:7699 >$data.log 2>&1 &
pid=$!
for i in $(seq 100); do grep -q "listening" $data.log 2>/dev/null && break; sleep 0.1; done
taskset -c 1 $t/spate-loadgen --server 127.0.0.1:7621 --stream s --create-shards ${SHARDS:-512} --limits kinesis --producers 4 --rate $((${SHARDS:-512}*1000)) --size 1000 --api put-batches --call-records 2000 --keys $((${SHARDS:-512}*4)) --key-mode per-shard --duration 10 --warmup 2 --cores 1 -q > $data.out 2>&1 &
lg=$!
sleep 6; perf record -e io_uring:io_uring_submit_req -e io_uring:io_uring_complete -e io_uring:io_uring_queue_async_work -a -o /work/s_sess/uring.data -- sleep 2 >/dev/null 2>&1
wait $lg; grep -E '^  per second|^  ack ' $data.out | tr '\n' ' '; echo
kill $pid; wait $pid 2>/dev/null; rm -rf $data $data.log $data.out
