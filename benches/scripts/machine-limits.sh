#!/usr/bin/env bash
# Measures this machine's own limits, the yardstick for every Spate figure (SPEC §6):
#   1. fio sequential O_DIRECT write, 64 KiB blocks, queue depth 32, into an already-written
#      file (io_uring);
#   2. fio 64 KiB write + fdatasync at queue depth 1 (the fsync floor: p50/p99/p99.9);
#   3. fio durable write: 1 MiB O_DIRECT writes each followed by fdatasync, queue depth 1,
#      into an already-written file ("fio durable" in SPEC §6);
#   3b. the same with 100 KiB writes (one `peer-shape` call's bytes: what a store that
#      flushes each call can do for one closed-loop producer);
#   4. fio sequential O_DIRECT read, 1 MiB blocks, queue depth 8 (the replay yardstick);
#   5. iperf3 single-stream loopback bandwidth;
#   6. disk-floor.py: back-to-back 64 KiB write + fdatasync rounds, quiet (10 s) and under
#      FLOOR_BG_MB_S (190) of fio background writes shaped like an engine's write-behind and
#      pre-writing (30 s): the open-loop acknowledgement floor any group commit could reach;
#   7. vm-stalls.py: 64 KiB write + fdatasync back to back, at 2,000/s and at 1,000/s (8 s
#      each), with a sleeping probe on another CPU: whether the host stalls this machine past
#      some flush rate (a VM's I/O emulation charged to its CPU quota; see round_rate_max).
# Usage: benches/scripts/machine-limits.sh [DIR] [OUT.json]   (DIR: on the disk to measure)
# Needs fio, iperf3 and taskset (util-linux); installs them with apt-get when missing (as root on Debian/Ubuntu).
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
fio --name=durable --filename="$file" --size=4G --bs=1M --iodepth=1 --rw=write --direct=1 \
    --ioengine=io_uring --fdatasync=1 --overwrite=1 --time_based --runtime=10 --output-format=json >/tmp/fio-durable.json
fio --name=durable100k --filename="$file" --size=4G --bs=100k --iodepth=1 --rw=write --direct=1 \
    --ioengine=io_uring --fdatasync=1 --overwrite=1 --time_based --runtime=10 --output-format=json >/tmp/fio-durable100k.json
fio --name=seqread --filename="$file" --size=4G --bs=1M --iodepth=8 --rw=read --direct=1 \
    --ioengine=io_uring --time_based --runtime=10 --output-format=json >/tmp/fio-read.json

iperf3 -s -1 -p 5299 >/dev/null 2>&1 &
sleep 0.5
iperf3 -c 127.0.0.1 -p 5299 -t 8 -J >/tmp/iperf.json
wait || true

here=$(cd "$(dirname "$0")" && pwd)
python3 "$here/disk-floor.py" "$dir" 10 0 /tmp/floor-quiet.json
python3 "$here/disk-floor.py" "$dir" 30 "${FLOOR_BG_MB_S:-190}" /tmp/floor-loaded.json
python3 "$here/vm-stalls.py" "$dir" 8 /tmp/vm-stalls.json

python3 - "$out" <<'PY'
import json, sys
seq = json.load(open("/tmp/fio-seq.json"))["jobs"][0]["write"]
sync = json.load(open("/tmp/fio-sync.json"))["jobs"][0]["sync"]["lat_ns"]["percentile"]
durable = json.load(open("/tmp/fio-durable.json"))["jobs"][0]["write"]["bw_bytes"]
durable100k = json.load(open("/tmp/fio-durable100k.json"))["jobs"][0]["write"]["bw_bytes"]
read = json.load(open("/tmp/fio-read.json"))["jobs"][0]["read"]["bw_bytes"]
ip = json.load(open("/tmp/iperf.json"))["end"]["sum_received"]["bits_per_second"] / 8
res = {
    "fio_seq_write_64k_qd32_bytes_per_s": seq["bw_bytes"],
    "fio_fdatasync_64k_qd1_us": {k: sync[v] / 1000 for k, v in
        [("p50", "50.000000"), ("p99", "99.000000"), ("p999", "99.900000")]},
    "fio_durable_write_1m_qd1_bytes_per_s": durable,
    "fio_durable_write_100k_qd1_bytes_per_s": durable100k,
    "fio_seq_read_1m_qd8_bytes_per_s": read,
    "iperf3_loopback_bytes_per_s": ip,
    "disk_floor_quiet": json.load(open("/tmp/floor-quiet.json")),
    "disk_floor_loaded": json.load(open("/tmp/floor-loaded.json")),
    "vm_stalls": json.load(open("/tmp/vm-stalls.json")),
}
json.dump(res, open(sys.argv[1], "w"), indent=2)
print(f"fio seq write 64 KiB QD32 (already written): {seq['bw_bytes']/1e9:.2f} GB/s")
print("fio fdatasync after 64 KiB write, QD1: p50 {p50:.0f} us, p99 {p99:.0f} us, p99.9 {p999:.0f} us".format(**res["fio_fdatasync_64k_qd1_us"]))
print(f"fio durable write 1 MiB + fdatasync QD1 (already written): {durable/1e9:.3f} GB/s")
print(f"fio durable write 100 KiB + fdatasync QD1 (peer-shape's call): {durable100k/1e9:.3f} GB/s")
print(f"fio sequential read 1 MiB QD8 O_DIRECT: {read/1e9:.2f} GB/s")
print(f"iperf3 loopback, 1 stream: {ip/1e9:.2f} GB/s")
PY
