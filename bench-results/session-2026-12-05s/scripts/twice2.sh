#!/usr/bin/env bash
# twice2.sh: shard-density's disk pattern at 512 shards, in fio: "journal" 2 MB O_DSYNC
# writes at queue depth 1 (one PutBatches call a round) at RATE MB/s, beside "write-behind"
# 256 KiB O_DIRECT writes at queue depth 4, sequential or random over 8 GiB, at RATE MB/s.
dir=${DIR:-/work}; f=$dir/spate-twice
py=$(mktemp); cat > $py <<'PY'
import json, sys
j = json.load(sys.stdin)["jobs"]
a, b = j[0]["write"], j[1]["write"]
p = a["clat_ns"]["percentile"]
print(f"{sys.argv[1]}: journal {a['bw_bytes']/1e6:.0f} MB/s (2 MB O_DSYNC write p50 {p['50.000000']/1e6:.2f} p99 {p['99.000000']/1e6:.2f} ms), write-behind {b['bw_bytes']/1e6:.0f} MB/s")
PY
fio --name=prep --filename=$f.j:$f.w --size=16G --bs=1M --rw=write --direct=1 --ioengine=io_uring --iodepth=8 >/dev/null
for r in ${RATES:-250 450}; do
  for pat in write randwrite; do
    fio --output-format=json --ioengine=io_uring --direct=1 --time_based --runtime=10 --overwrite=1 --size=8G \
      --name=journal --filename=$f.j --bs=2m --iodepth=1 --rw=write --sync=dsync --rate=${r}m \
      --name=behind --filename=$f.w --bs=256k --iodepth=4 --rw=$pat --rate=${r}m | python3 $py "$r MB/s each, write-behind $pat"
  done
done
rm -f $f.j $f.w $py
