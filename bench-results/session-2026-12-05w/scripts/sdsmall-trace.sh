#!/usr/bin/env bash
# sdsmall-trace.sh FROM TO: the suite's shard-density-small scenario (no lateness probe), with `perf trace` on the engine
# listing its io_uring_enter calls (and other syscalls) that took over 50 ms, with wall-clock times
cd /work/main
for i in $(seq $1 $2); do
  o=bench-results/session-2026-12-05w/sdsmall-trace-$i; mkdir -p $o; cp bench-results/session-2026-12-05v/full2/machine-limits.json $o/
  ( for k in $(seq 200); do pid=$(pgrep -f "spate serve" | head -1); [ -n "$pid" ] && break; sleep 0.05; done
    date -u +%T.%N > $o/trace-start.txt; cat /proc/uptime >> $o/trace-start.txt
    exec perf trace -p $pid --duration 50 -T -o $o/trace.txt ) &
  SKIP_LIMITS=1 SPATE_BENCH_DIR=/work SCENARIOS=shard-density-small benches/scripts/run-all.sh $o > $o/run.log 2>&1
  sleep 1; pkill -INT -f "perf trace -p" ; sleep 1
  echo "$i: $(grep -h 'note: at\|every step' $o/RESULTS.md | head -1) | worst: $(grep -a -o 'ack max (1s) *[0-9.]* ms' $o/run.log | awk '{print $4}' | sort -n | tail -1) ms | long syscalls: $(grep -c . $o/trace.txt)"
done
