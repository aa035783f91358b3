#!/usr/bin/env python3
"""Whether this machine stops for I/O it is asked to do: the flush rate a virtual machine's
host tolerates before it stalls the guest.

For each rate in RATES (flushes a second; 0: back to back), runs a loop of 64 KiB O_DIRECT
write + fdatasync on CPU 0 for SECONDS while a probe on CPU 1 sleeps 0.5 ms at a time and
counts how late it wakes. On bare metal the probe never notices. On the development VM
(Firecracker) ~2,600 flushes a second made the host stop both vCPUs for 5-23 ms in most
100 ms periods (its emulation of each I/O is charged to the VM's CPU quota), ~1,000 never:
that is why the engine caps its group-commit rounds (`round_rate_max`, BENCHMARKS.md
"Pacing rounds"). Two CPU burners do not trigger it; the I/O rate does.

Usage: vm-stalls.py DIR SECONDS OUT.json [RATES]   (RATES: comma-separated, default 0,2000,1000)
Writes {"runs": [{"rate_target", "flushes_per_s", "probe_gaps_over_5ms", "probe_gap_max_ms",
"probe_seconds"}...]}.
"""
import json
import mmap
import os
import subprocess
import sys
import time

ROUND_BYTES = 64 << 10
FILE_BYTES = 64 << 20


def writer(path, rate, seconds):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o644)
    try:
        buf = mmap.mmap(-1, ROUND_BYTES)
        buf.write(b"v" * ROUND_BYTES)
        zero = mmap.mmap(-1, 1 << 20)
        for off in range(0, FILE_BYTES, 1 << 20):
            os.pwrite(fd, zero, off)
        os.fsync(fd)
        interval = 1.0 / rate if rate > 0 else 0.0
        end = time.monotonic() + seconds
        nxt = time.monotonic()
        n, off = 0, 0
        while time.monotonic() < end:
            os.pwrite(fd, buf, off)
            os.fdatasync(fd)
            n += 1
            off = (off + ROUND_BYTES) % FILE_BYTES
            if interval:
                nxt += interval
                d = nxt - time.monotonic()
                if d > 0:
                    time.sleep(d)
                else:
                    nxt = time.monotonic()
        return n / seconds
    finally:
        os.close(fd)
        os.unlink(path)


def probe(seconds):
    end = time.monotonic() + seconds
    gaps = []
    while time.monotonic() < end:
        t = time.monotonic()
        time.sleep(0.0005)
        late = time.monotonic() - t - 0.0005
        if late > 0.005:
            gaps.append(late)
    print(json.dumps({"gaps": len(gaps), "max_ms": max(gaps, default=0.0) * 1e3}))


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "--probe":
        probe(float(sys.argv[2]))
        return
    directory, seconds, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    rates = [int(r) for r in (sys.argv[4] if len(sys.argv) > 4 else "0,2000,1000").split(",")]
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        sys.exit("vm-stalls.py: needs two CPUs (the writer on one, the probe on another)")
    runs = []
    for rate in rates:
        os.sched_setaffinity(0, {cpus[0]})
        # The probe starts after the writer's file is ready and stops before it does.
        probe_s = max(seconds - 2.0, 1.0)
        p = subprocess.Popen(
            ["taskset", "-c", str(cpus[1]), sys.executable, __file__, "--probe", str(probe_s)],
            stdout=subprocess.PIPE,
        )
        got = writer(os.path.join(directory, "spate-vm-stalls.dat"), rate, seconds)
        seen = json.loads(p.communicate()[0])
        runs.append({
            "rate_target": rate,
            "flushes_per_s": round(got, 1),
            "probe_seconds": probe_s,
            "probe_gaps_over_5ms": seen["gaps"],
            "probe_gap_max_ms": round(seen["max_ms"], 2),
        })
        print(f"vm-stalls: {got:.0f} flushes/s -> {seen['gaps']} probe gaps > 5 ms "
              f"in {probe_s:.0f} s (max {seen['max_ms']:.1f} ms)")
    os.sched_setaffinity(0, set(cpus))
    json.dump({"runs": runs}, open(out, "w"), indent=2)


if __name__ == "__main__":
    main()
