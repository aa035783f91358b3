#!/usr/bin/env bash
# On-demand scaling under small records (the resharding audit's repro, session y):
# 5,000 records/s of 100 B into an on-demand stream for 45 s. Prints the open shard count
# every 5 s and the loadgen's summary line. Usage: od-records.sh BIN_DIR PORT
set -euo pipefail
bin=$1; port=$2
d=$(mktemp -d)
cat >"$d/cfg.toml" <<'CFG'
on_demand_quiet_ms = 10000
CFG
"$bin/spate" serve --data-dir "$d/data" --listen 127.0.0.1:$port --metrics-listen off --cores 0 --config "$d/cfg.toml" >"$d/out" 2>"$d/err" &
srv=$!
trap 'kill $srv 2>/dev/null; wait $srv 2>/dev/null; rm -rf "$d"' EXIT
until grep -q listening "$d/out"; do sleep 0.1; done
S="$bin/spate --server 127.0.0.1:$port"
$S stream create od --mode on-demand --wait >/dev/null
"$bin/spate-loadgen" --server 127.0.0.1:$port --stream od --producers 2 --rate 5000 --size 100 \
  --keys 1000 --duration 45 --api put-records --json "$d/r.json" >"$d/lg.out" 2>&1 &
lg=$!
for t in $(seq 5 5 45); do
  sleep 5
  open=$($S stream describe od | python3 -c 'import json,sys; d=json.load(sys.stdin); print(sum(1 for s in d["shards"] if s.get("state","")=="open" or s.get("open") is True))')
  echo "t=${t}s open_shards=$open"
done
wait $lg || true
python3 -c 'import json; r=json.load(open("'"$d/r.json"'")); print("acked", r["records_acked"], "throttled", r["records_throttled"])'
$S stream describe od | python3 -c 'import json,sys; d=json.load(sys.stdin); print("last_scaling:", d.get("last_scaling"))'
