#!/usr/bin/env bash
# sdsmall-w.sh FROM TO: the suite's shard-density-small scenario, nothing watching it (e443885: the engine warns of rounds
# and executor wake-ups over 50 ms; run-all.sh keeps its metrics at the end)
cd /work/main
for i in $(seq $1 $2); do
  o=bench-results/session-2026-12-05w/sdsmall-w-$i; mkdir -p $o; cp bench-results/session-2026-12-05v/full2/machine-limits.json $o/
  SKIP_LIMITS=1 SPATE_BENCH_DIR=/work SCENARIOS=shard-density-small benches/scripts/run-all.sh $o > $o/run.log 2>&1
  m=$o/engine-shard-density-small.metrics
  echo "$i: $(grep -h 'note: at\|every step' $o/RESULTS.md | head -1) | worst 1 s max: $(grep -a -o 'ack max (1s) *[0-9.]* ms' $o/run.log | awk '{print $4}' | sort -n | tail -1) ms | flushes >50 ms: $(awk '/^spate_flush_latency_bucket\{le="50.0"\}/{a=$2} /^spate_flush_latency_count/{c=$2} END{print c-a}' $m) | stalls: $(awk '/^spate_core_stalls_total/{print $2}' $m) | warnings: $(grep -c 'over 50 ms' $o/engine-shard-density-small.log)"
done
