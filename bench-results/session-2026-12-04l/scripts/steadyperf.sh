#!/usr/bin/env bash
# steadyperf.sh OUT SHARDS RATE: 64 producers of 100 B records through put-records (API=),
# one key per shard, WARM s (25) of warm-up; then, by MODE:
#   cpu (default): 8 s of `perf record` of the engine (FREQ=, CG= for call graphs);
#   uring: io_uring submissions of the engine by opcode over 5 s;
#   block: block-layer requests (whole machine) by size over 5 s.
out=/work/prof/$1; shards=$2; rate=$3; mode=${MODE:-cpu}
cd /work/main; t=target/release; bin=${BIN:-$t/spate}
data=$(mktemp -d /work/spate-one.XXXXXX)
RUST_LOG=${LOG:-info} taskset -c 0 $bin serve ${CONF:+--config $CONF} --data-dir $data --cores 0 --listen 127.0.0.1:7605 --metrics-listen 127.0.0.1:0 >$data.log 2>&1 &
pid=$!
for i in $(seq 100); do grep -q "listening" $data.log 2>/dev/null && break; sleep 0.1; done
lim=kinesis; [[ $shards -lt 1000 ]] && lim=off
warm=${WARM:-25}
taskset -c 1 $t/spate-loadgen --server 127.0.0.1:7605 --stream m --create-shards $shards --limits $lim --producers 64 --rate $rate --size 100 --api ${API:-put-records} --call-records 2000 --keys $(( shards > 64 ? shards : 64 )) --key-mode per-shard --duration 12 --warmup $warm --cores 1 --engine-pid $pid -q > $out.txt 2>&1 &
lg=$!
sleep $((warm + 2))
case $mode in
  cpu) perf record -F ${FREQ:-1999} ${CG:-} -p $pid -o $out.perf.data -- sleep 8 ;;
  uring) perf record -e io_uring:io_uring_submit_req -p $pid -o $out.perf.data -- sleep 5 ;;
  block) perf record -e block:block_rq_issue -a -o $out.perf.data -- sleep 5 ;;
esac >/dev/null 2>&1
wait $lg
kill $pid; wait $pid; cp $data.log $out.log; rm -rf $data $data.log
grep -E "^  ack |^  used|^  per second" $out.txt
case $mode in
  uring) perf script -i $out.perf.data 2>/dev/null | grep -o "opcode [A-Z_]*" | sort | uniq -c ;;
  block) perf script -i $out.perf.data 2>/dev/null | grep -o "[0-9]* + [0-9]*" | awk '{print $3*512}' | sort -n | uniq -c | sort -rn | head -15 ;;
esac
