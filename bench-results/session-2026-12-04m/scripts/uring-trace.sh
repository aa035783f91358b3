#!/usr/bin/env bash
# uring-trace.sh CONF: one closed-loop producer of 100 x 1000 B calls against a fresh engine
# (CONF: e.g. scripts/ds0.toml); 0.3 s of io_uring and scheduler tracepoints, then per kind
# of data write (opcode, punted to io-wq or issued inline, size) how long it took from
# submission to completion, and every io_uring opcode the engine submitted.
conf=$1
cd /work/main; t=target/release
data=$(mktemp -d /work/spate-one.XXXXXX)
taskset -c 0 $t/spate serve --data-dir $data --cores 0 --listen 127.0.0.1:7621 --metrics-listen 127.0.0.1:0 --config $conf >$data.log 2>&1 &
pid=$!
for i in $(seq 100); do grep -q listening $data.log && break; sleep 0.1; done
taskset -c 1 $t/spate-loadgen --server 127.0.0.1:7621 --stream s --create-shards 1 --limits off --producers 1 --rate 0 --size 1000 --api put-records --call-records 100 --keys 1 --key-mode per-shard --duration 8 --warmup 1 --cores 1 -q >/dev/null 2>&1 &
lg=$!
sleep 4
perf record -a -e io_uring:io_uring_submit_req -e io_uring:io_uring_complete -e io_uring:io_uring_queue_async_work -e sched:sched_wakeup -e sched:sched_switch -o /work/prof/trace.data -- sleep 0.3 >/dev/null 2>&1
wait $lg; kill $pid; wait $pid; rm -rf $data $data.log
perf script -i /work/prof/trace.data -F tid,time,event,trace 2>/dev/null >/work/prof/trace.txt
python3 - <<'PY'
import re, collections
sub, asy, durs = {}, set(), collections.defaultdict(list)
for line in open('/work/prof/trace.txt'):
    m = re.match(r'\s*(\d+)\s+([\d.]+):\s+(\S+):\s+(.*)', line)
    if not m:
        continue
    _, t, ev, rest = m.groups(); t = float(t)
    if ev == 'io_uring:io_uring_submit_req':
        req = re.search(r'req (\S+),', rest).group(1); op = re.search(r'opcode (\S+),', rest).group(1)
        if op.startswith('WRITE') or op == 'FSYNC':
            sub[req] = (t, op); asy.discard(req)
    elif ev == 'io_uring:io_uring_queue_async_work':
        asy.add(re.search(r'request (\S+),', rest).group(1))
    elif ev == 'io_uring:io_uring_complete':
        req = re.search(r'req (\S+),', rest).group(1); res = int(re.search(r'result (-?\d+)', rest).group(1))
        if req in sub:
            t0, op = sub.pop(req)
            if res >= 4096 or op == 'FSYNC':
                durs[(op, 'io-wq' if req in asy else 'inline', res)].append((t - t0) * 1e6)
for k, v in sorted(durs.items(), key=lambda kv: -len(kv[1]))[:10]:
    v.sort(); print(k, len(v), 'p50 %.0f us' % v[len(v) // 2], 'p90 %.0f us' % v[int(len(v) * .9)])
PY
grep io_uring_submit_req /work/prof/trace.txt | grep -o "opcode [A-Z_]*" | sort | uniq -c | sort -rn
