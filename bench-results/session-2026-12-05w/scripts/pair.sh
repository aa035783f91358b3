#!/usr/bin/env bash
# pair.sh N: the suite's shard-density then shard-density-small (as the full suite orders them), N times, machine limits
# reused from this session's full run; since a3b3962 the scripts wait for the disk to settle after each data directory's removal
cd /work/main
for i in $(seq ${1:-1}); do
  o=bench-results/session-2026-12-05w/pair-$i; mkdir -p $o; cp bench-results/session-2026-12-05w/full/machine-limits.json $o/
  SKIP_LIMITS=1 SPATE_BENCH_DIR=/work SCENARIOS="shard-density shard-density-small" benches/scripts/run-all.sh $o > $o/run.log 2>&1
  m=$o/engine-shard-density-small.metrics
  echo "$i: shard-density $(grep -h 'largest_ok_shards' -m1 $o/RESULTS.md) | shard-density-small: $(awk '/^### `shard-density-small`/{f=1} f&&/note: at|every step/' $o/RESULTS.md | head -1) | worst second $(grep -a -o 'ack max (1s) *[0-9.]* ms' $o/run.log | tail -200 | awk '{print $4}' | sort -n | tail -1) ms | flushes >50 ms: $(awk '/^spate_flush_latency_bucket\{le="50.0"\}/{a=$2} /^spate_flush_latency_count/{c=$2} END{print c-a}' $m) | $(grep -a 'settled' $o/run.log | tr '\n' ' ')"
done
