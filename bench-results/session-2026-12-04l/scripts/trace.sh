#!/usr/bin/env bash
# trace.sh OUT SHARDS RATE: io_uring submissions by opcode over 5 s of steady load
out=/work/prof/$1; shards=$2; rate=$3
cd /work/main; t=target/release; bin=${BIN:-$t/spate}
data=$(mktemp -d /work/spate-one.XXXXXX)
RUST_LOG=${LOG:-info} taskset -c 0 $bin serve ${CONF:+--config $CONF} --data-dir $data --cores 0 --listen 127.0.0.1:7606 --metrics-listen 127.0.0.1:0 >$data.log 2>&1 &
pid=$!
for i in $(seq 100); do grep -q "listening" $data.log 2>/dev/null && break; sleep 0.1; done
lim=kinesis; [[ $shards -lt 1000 ]] && lim=off
warm=${WARM:-25}
taskset -c 1 $t/spate-loadgen --server 127.0.0.1:7606 --stream m --create-shards $shards --limits $lim --producers 64 --rate $rate --size 100 --api ${API:-put-records} --call-records 2000 --keys $(( shards > 64 ? shards : 64 )) --key-mode per-shard --duration 12 --warmup $warm --cores 1 --engine-pid $pid -q > $out.txt 2>&1 &
lg=$!
sleep $((warm + 2)); perf record -e io_uring:io_uring_submit_req -p $pid -o $out.tr.data -- sleep 5 >/dev/null 2>&1
wait $lg
kill $pid; wait $pid; cp $data.log $out.log; rm -rf $data $data.log
grep -E "^  ack |^  used|^  per second" $out.txt
perf script -i $out.tr.data 2>/dev/null | grep -o "opcode [A-Z_]*" | sort | uniq -c
