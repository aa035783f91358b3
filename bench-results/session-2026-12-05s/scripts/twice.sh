#!/usr/bin/env bash
# twice.sh: can this disk take an ingest rate written twice? For each RATE (MB/s): a
# "journal" job (512 KiB O_DSYNC writes at queue depth 1, RATE MB/s) beside a
# "write-behind" job (256 KiB plain O_DIRECT writes, queue depth 4, RATE MB/s) into
# already-written files; prints each job's bandwidth and the journal writes' latency
# (p50/p99/p99.9 ms). First: fio's plain sequential write and durable write, same session.
dir=${DIR:-/work}; f=$dir/spate-twice
py=$(mktemp); cat > $py <<'PY'
import json, sys
j = json.load(sys.stdin)["jobs"]
if len(j) == 1:
    w = j[0]["write"]
    print(f"{sys.argv[1]}: {w['bw_bytes']/1e9:.2f} GB/s")
else:
    a, b = j[0]["write"], j[1]["write"]
    p = a["clat_ns"]["percentile"]
    print(f"{sys.argv[1]} MB/s each: journal {a['bw_bytes']/1e6:.0f} MB/s (write latency p50 {p['50.000000']/1e6:.2f} p99 {p['99.000000']/1e6:.2f} p99.9 {p['99.900000']/1e6:.2f} ms), write-behind {b['bw_bytes']/1e6:.0f} MB/s")
PY
fio --name=prep --filename=$f.j:$f.w --size=8G --bs=1M --rw=write --direct=1 --ioengine=io_uring --iodepth=8 >/dev/null
fio --name=seq --filename=$f.w --size=4G --bs=64k --iodepth=32 --rw=write --direct=1 --ioengine=io_uring --overwrite=1 --time_based --runtime=10 --output-format=json | python3 $py "seq write 64 KiB QD32"
fio --name=durable --filename=$f.w --size=4G --bs=1M --iodepth=1 --rw=write --direct=1 --ioengine=io_uring --fdatasync=1 --overwrite=1 --time_based --runtime=10 --output-format=json | python3 $py "durable 1 MiB + fdatasync QD1"
for r in ${RATES:-250 500 750}; do
  fio --output-format=json --ioengine=io_uring --direct=1 --time_based --runtime=10 --overwrite=1 --size=4G \
    --name=journal --filename=$f.j --bs=512k --iodepth=1 --rw=write --sync=dsync --rate=${r}m \
    --name=behind --filename=$f.w --bs=256k --iodepth=4 --rw=write --rate=${r}m | python3 $py $r
done
rm -f $f.j $f.w $py
