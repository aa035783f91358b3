#!/usr/bin/env python3
"""The acknowledgement latency floor of this disk: the best open-loop ack latency any
group-commit engine could show on it, measured with nothing but the disk.

Runs back-to-back "rounds" (a 64 KiB O_DIRECT write into already-written blocks, then
fdatasync: the shape of a journal round) for SECONDS, optionally while fio writes in the
background the way an engine's background work does (256 KiB overwrites at BG_MB_S like
write-behind, plus 1 MiB writes into fallocated space at a quarter of that like pre-writing
free space). Then it computes what an open-loop producer would see: a record arriving while
round i is in flight is taken by round i+1 and acknowledged when that one completes, so its
latency is end(i+1) - arrival. Arrivals are sampled uniformly over the run (every 20 us).

Why this exists: fio's own percentiles are per operation, so one 900 ms stall among 100,000
syncs is invisible below p99.999; an open-loop producer sends records all through the stall,
and every one of them waits. On a shared VM disk such stalls come and go (MACHINE.md); this
figure is the yardstick the engine's ack tail is compared with (BENCHMARKS.md).

Usage: disk-floor.py DIR SECONDS BG_MB_S OUT.json   (BG_MB_S 0: no background writes)
"""
import json
import mmap
import os
import subprocess
import sys
import time

ROUND_BYTES = 64 << 10
FILE_BYTES = 256 << 20
STEP_NS = 20_000


def percentile(sorted_vals, q):
    if not sorted_vals:
        return 0.0
    i = min(len(sorted_vals) - 1, int(q / 100.0 * len(sorted_vals)))
    return sorted_vals[i]


def main():
    d, seconds, bg, out = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    path = os.path.join(d, "spate-floor-rounds.dat")
    bg_files = [os.path.join(d, "spate-floor-behind.dat"), os.path.join(d, "spate-floor-zeros.dat")]
    buf = mmap.mmap(-1, 1 << 20)  # page-aligned, as O_DIRECT needs
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o600)
    fio = None
    try:
        # Already-written blocks, as the engine's journal files are.
        for off in range(0, FILE_BYTES, 1 << 20):
            os.pwrite(fd, buf, off)
        os.fsync(fd)
        if bg > 0:
            # Lay the overwrite target out first, so fio's own layout is not in the run.
            subprocess.run(
                ["fio", "--name=layout", f"--filename={bg_files[0]}", "--size=2G", "--bs=1M",
                 "--rw=write", "--direct=1", "--ioengine=io_uring", "--output=/dev/null"],
                check=True)
            fio = subprocess.Popen(
                ["fio", "--ioengine=io_uring", "--direct=1", "--time_based",
                 f"--runtime={int(seconds) + 5}", "--output=/dev/null",
                 "--name=behind", f"--filename={bg_files[0]}", "--size=2G", "--bs=256k",
                 "--iodepth=4", "--rw=write", "--overwrite=1", f"--rate={int(bg)}m",
                 "--name=zeros", f"--filename={bg_files[1]}", "--size=4G", "--bs=1M",
                 "--iodepth=1", "--rw=write", "--overwrite=0", "--fallocate=native",
                 f"--rate={max(1, int(bg / 4))}m"])
            time.sleep(2.0)
        view = memoryview(buf)[:ROUND_BYTES]
        starts, ends = [], []
        off = 0
        t_end = time.perf_counter_ns() + int(seconds * 1e9)
        while True:
            s = time.perf_counter_ns()
            if s >= t_end:
                break
            os.pwrite(fd, view, off)
            os.fdatasync(fd)
            e = time.perf_counter_ns()
            starts.append(s)
            ends.append(e)
            off = (off + ROUND_BYTES) % FILE_BYTES
    finally:
        os.close(fd)
        if fio is not None:
            fio.terminate()
            fio.wait()
        for p in [path] + bg_files:
            try:
                os.remove(p)
            except FileNotFoundError:
                pass

    rounds = sorted((e - s) / 1e3 for s, e in zip(starts, ends))
    # Open-loop arrivals every STEP_NS from the first round's start to the second-last
    # round's end: one arriving in [start(i), start(i+1)) is acknowledged at end(i+1).
    lat = []
    for i in range(len(starts) - 1):
        t = starts[i] + (-(starts[i] - starts[0]) % STEP_NS)
        nxt, done = starts[i + 1], ends[i + 1]
        while t < nxt:
            lat.append((done - t) / 1e3)
            t += STEP_NS
    lat.sort()
    # Time the disk spent in rounds longer than 10 ms: an open-loop p99 within 10 ms needs
    # under 1 % of the run there.
    stalled = sum(max(0, (e - s) - 10_000_000) for s, e in zip(starts, ends)) / 1e9
    res = {
        "seconds": seconds,
        "background_mb_per_s": bg,
        "rounds": len(rounds),
        "round_us": {"p50": percentile(rounds, 50), "p99": percentile(rounds, 99),
                     "p999": percentile(rounds, 99.9), "max": rounds[-1] if rounds else 0.0},
        "open_loop_ack_us": {"p50": percentile(lat, 50), "p99": percentile(lat, 99),
                             "p999": percentile(lat, 99.9), "max": lat[-1] if lat else 0.0},
        "seconds_in_rounds_over_10ms": stalled,
    }
    json.dump(res, open(out, "w"), indent=2)
    r, o = res["round_us"], res["open_loop_ack_us"]
    what = f"under {bg:.0f} MB/s of background writes" if bg > 0 else "quiet"
    print(f"disk floor, {what}, {seconds:.0f} s: round (64 KiB write + fdatasync) p50 {r['p50']:.0f} us, "
          f"p99 {r['p99']:.0f} us, max {r['max'] / 1e3:.1f} ms; open-loop ack floor p50 {o['p50']:.0f} us, "
          f"p99 {o['p99']:.0f} us, p99.9 {o['p999']:.0f} us, max {o['max'] / 1e3:.1f} ms; "
          f"{stalled:.2f} s in rounds over 10 ms")


if __name__ == "__main__":
    main()
