#!/usr/bin/env bash
# sd.sh SHARDS [CONF]: one shard-density step (1,000 B, kinesis limits, put-batches), store metrics and disk I/O
shards=$1; conf=${2:-/work/main/bench-results/session-2026-12-04q/scripts/def.toml}
a=($(cat /sys/block/vda/stat))
LIMITS=${LIMITS:-kinesis} MET='^spate_(rounds_total|round_syncs_total|journal_bytes_total|direct_bytes_total|checkpoints_total|append_waits_total|core_round_rate_cap|core_stalls_total|flush_latency_(sum|count))' bash /work/main/bench-results/session-2026-12-04n/scripts/lo.sh $conf $shards $((shards*1000)) put-batches ${SIZE:-1000} 2>&1 | grep -v '^#'
b=($(cat /sys/block/vda/stat))
echo "disk: writes $((b[4]-a[4])) sectors $((b[6]-a[6])) => $(( (b[6]-a[6])/2048 )) MiB"
