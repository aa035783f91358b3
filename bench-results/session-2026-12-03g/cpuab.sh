#!/usr/bin/env bash
# cpuab.sh BIN SHARDS RATE: engine BIN on CPU 0, many-shards load on CPU 1 for 25 s;
# prints the engine's user and system CPU (cores) over seconds 10..22 of the load, and acked/s.
bin=$1; s=$2; r=$3
cd /work/main; t=target/release
data=$(mktemp -d ${DIR:-/work}/spate-one.XXXXXX)
RUST_LOG=info taskset -c 0 $bin serve --data-dir $data --cores 0 --listen 127.0.0.1:7603 --metrics-listen 127.0.0.1:0 >$data.log 2>&1 &
pid=$!
for i in $(seq 100); do grep -q "^listening" $data.log 2>/dev/null && break; sleep 0.1; done
lim=kinesis; [[ $s -lt 1000 ]] && lim=off
taskset -c 1 $t/spate-loadgen --server 127.0.0.1:7603 --stream q --create-shards $s --limits $lim --producers 4 --rate $r --size 100 --api put-records --call-records 2000 --keys $s --key-mode per-shard --duration 22 --warmup 3 --cores 1 > $data.out 2>&1 &
lg=$!
sleep 10; a=($(cut -d' ' -f14,15 /proc/$pid/stat)); sleep 12; b=($(cut -d' ' -f14,15 /proc/$pid/stat))
wait $lg
hz=$(getconf CLK_TCK)
echo "user $(echo "scale=3; (${b[0]}-${a[0]})/$hz/12" | bc) sys $(echo "scale=3; (${b[1]}-${a[1]})/$hz/12" | bc) $(grep -E '^  per second' $data.out | awk '{print "acked/s", $3}') p99 $(grep -E '^  ack ' $data.out | awk '{print $4}')"
kill $pid; wait $pid; rm -rf $data $data.log $data.out
