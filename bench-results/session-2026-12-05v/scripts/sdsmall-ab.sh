#!/usr/bin/env bash
# sdsmall-ab.sh: the suite's shard-density-small scenario, alternated with io_uring_coop_taskrun on and off (machine limits reused from full2)
cd /work/main
for i in 1 2; do for c in on off; do
  echo "io_uring_coop_taskrun = $([ $c = on ] && echo true || echo false)" > /tmp/coop-$c.toml
  o=bench-results/session-2026-12-05v/sdsmall-$c-$i; mkdir -p $o; cp bench-results/session-2026-12-05v/full2/machine-limits.json $o/
  ENGINE_CONFIG=/tmp/coop-$c.toml SKIP_LIMITS=1 SPATE_BENCH_DIR=/work SCENARIOS=shard-density-small benches/scripts/run-all.sh $o > $o/run.log 2>&1
  echo "$c $i: $(grep -h 'note: at\|every step' $o/RESULTS.md | head -1) $(awk '/^### `shard-density-small`/{f=1} f&&/^\| [0-9]/{split($0,a,"|"); printf "[%s: p99 %s max %s] ", a[3], a[9], a[12]}' $o/RESULTS.md)"
done; done
