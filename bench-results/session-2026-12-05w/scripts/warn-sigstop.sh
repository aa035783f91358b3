#!/usr/bin/env bash
# warn-sigstop.sh: the engine's two 50 ms warnings (e443885) under load: a 4-shard stream at 4,000 records/s, the engine
# stopped with SIGSTOP for 200 ms; prints the warnings it logged (expected: a stalled round and a late executor, ~200 ms each)
cd /work/main; d=$(mktemp -d /work/x.XXXX)
taskset -c 0 target/release/spate serve --data-dir $d --cores 0 --listen 127.0.0.1:7621 --metrics-listen 127.0.0.1:7699 > $d.log 2>&1 & pid=$!
sleep 1
(taskset -c 1 target/release/spate-loadgen --server 127.0.0.1:7621 --stream s --create-shards 4 --producers 2 --rate 4000 --size 100 --api put-batches --duration 4 --warmup 1 --cores 1 -q > /dev/null 2>&1 &)
sleep 2.5; kill -STOP $pid; sleep 0.2; kill -CONT $pid; sleep 3
grep "over 50 ms" $d.log | cut -c1-300
kill $pid; wait $pid; rm -rf $d $d.log
