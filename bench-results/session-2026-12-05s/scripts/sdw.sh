#!/usr/bin/env bash
# sdw.sh SHARDS: shard-density's step twice on one engine (the second on a warm store: journal ring made, space recycled); metrics after each. P= producers (4), CIF= calls in flight each (1), MET= metrics regex, RUST_LOG=, KEEPLOG= (copy of the engine log)
shards=$1
cd /work/main; t=${BIN:-target/release}
data=$(mktemp -d /work/spate-one.XXXXXX)
RUST_LOG=${RUST_LOG:-info} taskset -c 0 $t/spate serve --data-dir $data --cores 0 --listen 127.0.0.1:7621 --metrics-listen 127.0.0.1:7699 ${CONF:+--config $CONF} >$data.log 2>&1 &
pid=$!
for i in $(seq 100); do grep -q "listening" $data.log 2>/dev/null && break; sleep 0.1; done
for run in cold warm; do
  taskset -c 1 $t/spate-loadgen --server 127.0.0.1:7621 --stream s-$run --create-shards $shards --limits kinesis --producers ${P:-4} --calls-in-flight ${CIF:-1} --rate $((shards*1000)) --size 1000 --api put-batches --call-records 2000 --keys $((shards*4)) --key-mode per-shard --duration 10 --warmup 2 --cores 1 --engine-pid $pid --delete-after -q > $data.out 2>&1
  echo "$run: $(grep -E '^  per second|^  ack |^  used' $data.out | tr '\n' ' ' | tr -s ' ')"
  curl -s 127.0.0.1:7699/metrics | grep -E "${MET:-^spate_(rounds_total|checkpoints_total|append_waits_total)}" | grep -v ' 0$' | tr '\n' ' '; echo
done
kill $pid; wait $pid 2>/dev/null; [ -n "${KEEPLOG:-}" ] && cp $data.log $KEEPLOG; rm -rf $data $data.log $data.out
