#!/usr/bin/env bash
# ab.sh: the machine's limits once, then the density and peer scenarios alternated between
# the default (round_rate_max = "auto") and round_rate_max = 1000, twice, each into its own
# directory under bench-results/session-2026-12-04q/ab/.
cd /work/main
B=bench-results/session-2026-12-04q
S=${SCEN:-"shard-density-small shard-density many-shards peer-shape"}
SPATE_BENCH_DIR=/work SCENARIOS=max-1k benches/scripts/run-all.sh $B/ab/limits
for i in 1 2; do
  for c in auto rr1000; do
    d=$B/ab/$c-$i; mkdir -p $d; cp $B/ab/limits/machine-limits.json $B/ab/limits/max-1k.json $d/
    conf=$B/scripts/def.toml; [ $c = rr1000 ] && conf=$B/scripts/rr1000.toml
    SKIP_LIMITS=1 SPATE_BENCH_DIR=/work ENGINE_CONFIG=$conf SCENARIOS="$S" benches/scripts/run-all.sh $d
  done
done
