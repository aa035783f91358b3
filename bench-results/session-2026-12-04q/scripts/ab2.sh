#!/usr/bin/env bash
# ab2.sh TAG: the density and peer scenarios alternated between the default
# (round_rate_max = "auto") and round_rate_max = 1000, twice, reusing ab/limits' machine
# limits, into bench-results/session-2026-12-04q/TAG/{auto,rr1000}-N.
cd /work/main
B=bench-results/session-2026-12-04q; T=${1:-ab2}
S=${SCEN:-"shard-density-small shard-density peer-shape"}
for i in ${RUNS:-1 2}; do
  for c in auto rr1000; do
    d=$B/$T/$c-$i; mkdir -p $d; cp $B/ab/limits/machine-limits.json $B/ab/limits/max-1k.json $d/
    conf=$B/scripts/def.toml; [ $c = rr1000 ] && conf=$B/scripts/rr1000.toml
    SKIP_LIMITS=1 SPATE_BENCH_DIR=/work ENGINE_CONFIG=$conf SCENARIOS="$S" benches/scripts/run-all.sh $d
  done
done
