#!/usr/bin/env bash
# pp.sh API: producer-path's closed-loop shape (8 shards, 4 producers, 1 KiB, 10,000 keys,
# 10 s after 2 s; engine on CPU 0, load generator on CPU 1). BIN= binaries' directory,
# PERF=io counts the load generator's syscalls for 2 s, MET=1 prints the engine's round metrics after the run, LG= load generator binary (default $BIN/spate-loadgen), PERF=loadgen (5 s in, 2 s of perf
# record into $PERF_OUT/perf.data), EXTRA= more load-generator flags.
cd /work/main; t=${BIN:-target/release}; lg=${LG:-$t/spate-loadgen}
data=$(mktemp -d /work/spate-one.XXXXXX)
taskset -c 0 $t/spate serve --data-dir $data --cores 0 --listen 127.0.0.1:7621 --metrics-listen 127.0.0.1:7699 >$data.log 2>&1 &
pid=$!
for i in $(seq 100); do grep -q "listening" $data.log 2>/dev/null && break; sleep 0.1; done
taskset -c 1 $lg --server 127.0.0.1:7621 --stream s --create-shards 8 --limits off --producers 4 --rate ${RATE:-0} --size 1024 --api $1 --call-records 2000 --keys 10000 --duration 10 --warmup 2 --cores 1 --engine-pid $pid ${EXTRA:-} -q > $data.out 2>&1 &
l=$!
case ${PERF:-} in
  io) sleep 5; perf stat -e "syscalls:sys_enter_sendto,syscalls:sys_enter_write,syscalls:sys_enter_writev,syscalls:sys_enter_recvfrom,syscalls:sys_enter_read,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_futex,syscalls:sys_enter_sendmsg" -p $l -- sleep 2 2>&1 >/dev/null | grep syscalls >&2 ;;
  stat) sleep 5; perf stat -e page-faults,cache-misses -p $l -- sleep 2 2>${PERF_OUT:-.}/stat.txt >/dev/null ;;
  loadgen) sleep 5; perf record -F 1500 --call-graph dwarf,16384 -p $l -o ${PERF_OUT:-.}/perf.data -- sleep 2 >/dev/null 2>&1 ;;
esac
wait $l
grep -E '^  per second|^  ack |^  used' $data.out | tr '\n' ' ' | tr -s ' '; echo
[ -n "${MET:-}" ] && { curl -s 127.0.0.1:7699/metrics | grep -E '^spate_(rounds_total|round_syncs_total|flush_latency_(sum|count|bucket)|flush_seconds|journal_bytes|inplace_bytes|direct)' | tr '\n' ' '; echo; }
kill $pid; wait $pid 2>/dev/null; rm -rf $data $data.log $data.out
