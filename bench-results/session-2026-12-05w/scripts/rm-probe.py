#!/usr/bin/env python3
# rm-probe.py SECONDS: 64 KiB write + fdatasync back to back on a fresh file in /work for SECONDS; prints round p50/p99/max and the time of each round over 20 ms
import os, sys, time
secs = float(sys.argv[1]); path = "/work/rm-probe.dat"
fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
buf = os.urandom(65536); lat = []; slow = []
os.ftruncate(fd, 0); t0 = time.time(); off = 0
while time.time() - t0 < secs:
    a = time.perf_counter(); os.pwrite(fd, buf, off % (256 << 20)); os.fdatasync(fd); d = (time.perf_counter() - a) * 1000
    off += 65536; lat.append(d)
    if d > 20: slow.append((round(time.time() - t0, 2), round(d, 1)))
os.close(fd); os.unlink(path); lat.sort()
print(f"rounds {len(lat)} p50 {lat[len(lat)//2]:.2f} ms p99 {lat[int(len(lat)*0.99)]:.2f} ms max {lat[-1]:.1f} ms; over 20 ms: {slow[:12]}{' ...' if len(slow) > 12 else ''} ({len(slow)} in all)")
