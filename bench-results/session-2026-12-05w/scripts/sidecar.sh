#!/usr/bin/env bash
# sidecar.sh OUTDIR: while a suite runs, follows each new engine (its log in OUTDIR) and every 0.5 s writes the wall clock,
# its flush_latency counts over 10/25/50/100 ms, its core stalls, the PutRecords_Latency counts over 50 ms, and the engine thread's state and CPU ticks
out=$1
while true; do
  log=$(ls -t $out/engine-*.log 2>/dev/null | head -1)
  port=$([ -n "$log" ] && grep -o 'metrics at http://127.0.0.1:[0-9]*' $log | grep -o '[0-9]*$')
  pid=$(pgrep -f "spate serve" | head -1)
  if [ -n "$port" ] && [ -n "$pid" ]; then
    m=$(curl -s --max-time 1 127.0.0.1:$port/metrics)
    f=$(echo "$m" | awk '/^spate_flush_latency_bucket\{le="(10.0|25.0|50.0|100.0)"\}/{v[$1]=$2} /^spate_flush_latency_count/{c=$2} END{printf "flush>10 %d >25 %d >50 %d >100 %d", c-v["spate_flush_latency_bucket{le=\"10.0\"}"], c-v["spate_flush_latency_bucket{le=\"25.0\"}"], c-v["spate_flush_latency_bucket{le=\"50.0\"}"], c-v["spate_flush_latency_bucket{le=\"100.0\"}"]}')
    p=$(echo "$m" | awk '/^PutRecords_Latency_bucket.*le="50.0"/{a+=$2} /^PutRecords_Latency_count/{c+=$2} END{printf "put>50ms %d of %d", c-a, c}')
    s=$(echo "$m" | awk '/^spate_core_stalls_total/{print $2}')
    echo "$(date -u +%T.%N | cut -c1-12) $f | $p | stalls $s"
  fi
  sleep 0.5
done
