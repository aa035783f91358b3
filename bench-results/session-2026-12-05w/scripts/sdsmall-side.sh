#!/usr/bin/env bash
# sdsmall-side.sh FROM TO: the suite's shard-density-small scenario with only sidecar.sh scraping the engine's metrics every 0.5 s
cd /work/main
for i in $(seq $1 $2); do
  o=bench-results/session-2026-12-05w/sdsmall-side-$i; mkdir -p $o; cp bench-results/session-2026-12-05v/full2/machine-limits.json $o/
  (bench-results/session-2026-12-05w/scripts/sidecar.sh $o > $o/sidecar.txt 2>&1 &) ; SKIP_LIMITS=1 SPATE_BENCH_DIR=/work SCENARIOS=shard-density-small benches/scripts/run-all.sh $o > $o/run.log 2>&1
  pkill -f sidecar.sh; echo "$i: $(grep -h 'note: at\|every step' $o/RESULTS.md | head -1) worst: $(grep -a -o "ack max (1s) *[0-9.]* ms" $o/run.log | awk "{print \$4}" | sort -n | tail -1) ms"
done
