#!/usr/bin/env bash
# Measures this machine's own limits, the yardstick for every Spate figure (SPEC §6):
#   1. fio sequential O_DIRECT write, 64 KiB blocks, queue depth 32, into an already-written
#      file (io_uring);
#   2. fio 64 KiB write + fdatasync at queue depth 1 (the fsync floor: p50/p99/p99.9);
#   3. iperf3 single-stream loopback bandwidth.
# Usage: benches/scripts/machine-limits.sh [DIR] [OUT.json]   (DIR: on the disk to measure)
# Needs fio and iperf3; installs them with apt-get when missing (as root on Debian/Ubuntu).
set -euo pipefail
if ! command -v fio >/dev/null || ! command -v iperf3 >/dev/null; then
    if command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fio iperf3 >/dev/null
    else
        echo "machine-limits.sh: needs fio and iperf3 (apt-get install fio iperf3)" >&2
        exit 2
    fi
fi
dir=${1:-${SPATE_BENCH_DIR:-/tmp}}
out=${2:-machine-limits.json}
file="$dir/spate-fio.dat"
trap 'rm -f "$file"' EXIT

fio --name=seqwrite --filename="$file" --size=4G --bs=64k --iodepth=32 --rw=write --direct=1 \
    --ioengine=io_uring --overwrite=1 --time_based --runtime=15 --output-format=json >/tmp/fio-seq.json
fio --name=fsync --filename="$file" --size=1G --bs=64k --iodepth=1 --rw=write --direct=1 \
    --ioengine=io_uring --fdatasync=1 --overwrite=1 --time_based --runtime=10 --output-format=json >/tmp/fio-sync.json

iperf3 -s -1 -p 5299 >/dev/null 2>&1 &
sleep 0.5
iperf3 -c 127.0.0.1 -p 5299 -t 8 -J >/tmp/iperf.json
wait || true

python3 - "$out" <<'PY'
import json, sys
seq = json.load(open("/tmp/fio-seq.json"))["jobs"][0]["write"]
sync = json.load(open("/tmp/fio-sync.json"))["jobs"][0]["sync"]["lat_ns"]["percentile"]
ip = json.load(open("/tmp/iperf.json"))["end"]["sum_received"]["bits_per_second"] / 8
res = {
    "fio_seq_write_64k_qd32_bytes_per_s": seq["bw_bytes"],
    "fio_fdatasync_64k_qd1_us": {k: sync[v] / 1000 for k, v in
        [("p50", "50.000000"), ("p99", "99.000000"), ("p999", "99.900000")]},
    "iperf3_loopback_bytes_per_s": ip,
}
json.dump(res, open(sys.argv[1], "w"), indent=2)
print(f"fio seq write 64 KiB QD32 (already written): {seq['bw_bytes']/1e9:.2f} GB/s")
print("fio fdatasync after 64 KiB write, QD1: p50 {p50:.0f} us, p99 {p99:.0f} us, p99.9 {p999:.0f} us".format(**res["fio_fdatasync_64k_qd1_us"]))
print(f"iperf3 loopback, 1 stream: {ip/1e9:.2f} GB/s")
PY
