#!/usr/bin/env bash
# sdsmall-diag.sh N: the suite's shard-density-small scenario N times with glommio's stall detector reporting task queues that run past the preemption timer (SPATE_DEBUG_STALLS=0; diagnostic build)
# (runs 0-2 ran without the sidecar and the RUST_LOG; SPATE_DEBUG_STALLS needs the diagnostic build, not committed: glommio::LocalExecutorBuilder::detect_stalls with a threshold of that many ms past the preemption timer)
cd /work/main
for i in $(seq ${FROM:-1} ${1:-2}); do
  o=bench-results/session-2026-12-05w/sdsmall-diag-$i; mkdir -p $o; cp bench-results/session-2026-12-05v/full2/machine-limits.json $o/
  (bench-results/session-2026-12-05w/scripts/sidecar.sh $o > $o/sidecar.txt 2>&1 &) ; RUST_LOG=info,spate_engine::runtime=debug SPATE_DEBUG_STALLS=${STALL_MS:-0} SKIP_LIMITS=1 SPATE_BENCH_DIR=/work SCENARIOS=shard-density-small benches/scripts/run-all.sh $o > $o/run.log 2>&1
  pkill -f sidecar.sh; echo "$i: $(grep -h 'note: at\|every step' $o/RESULTS.md | head -1) stall reports: $(grep -c 'stall-detector' $o/engine-shard-density-small.log)"
done
