#!/usr/bin/env python3
"""Emulates a host that stops a VM when the VM flushes too often: the engine is stopped
(SIGSTOP, then SIGCONT) for --stall-ms in every 100 ms period in which it made more than
--above rounds a second (its `spate_rounds_total` metric, read every period).

Why: on some virtual machines the host emulates every guest I/O on the VM's CPU quota, and
stops the whole VM for 5-23 ms in a 100 ms period once the quota is spent (BENCHMARKS.md,
"Pacing rounds": ~2,600 flushes a second stalled, ~1,000 never). Hosts without that trait
cannot show what `round_rate_max = "auto"` does on one that has it; this script gives the
engine the same signal (its executor does not run for a while) in the same circumstance.
It stops only the engine, not the whole machine, and reads the rate a period late.

Prints one line per second (rounds a second, stalls made) and a summary at the end
(SIGTERM or SIGINT):
  stall-emulator: 12.0 s, 23,456 rounds (1,954/s), 31 stalls of 15 ms (0.47 s stopped)
"""

import argparse
import os
import signal
import sys
import time
import urllib.request


def rounds(url):
    with urllib.request.urlopen(url, timeout=1.0) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("spate_rounds_total "):
                return float(line.split()[1])
    return 0.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pid", type=int, required=True, help="the engine's process id")
    ap.add_argument("--metrics", default="127.0.0.1:7480", help="its metrics endpoint")
    ap.add_argument("--above", type=float, default=1500.0,
                    help="rounds a second over which a period ends in a stall")
    ap.add_argument("--stall-ms", type=float, default=15.0, help="how long a stall lasts")
    ap.add_argument("--period-ms", type=float, default=100.0)
    a = ap.parse_args()
    url = f"http://{a.metrics}/metrics"
    period = a.period_ms / 1000.0
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    start = time.monotonic()
    first = last = rounds(url)
    stalls = 0
    next_at = start + period
    second_at, second_rounds, second_stalls = start + 1.0, last, 0
    while not stop:
        time.sleep(max(0.0, next_at - time.monotonic()))
        next_at += period
        try:
            n = rounds(url)
        except OSError:
            break
        rate = (n - last) / period
        last = n
        if rate > a.above:
            try:
                os.kill(a.pid, signal.SIGSTOP)
                time.sleep(a.stall_ms / 1000.0)
            finally:
                os.kill(a.pid, signal.SIGCONT)
            stalls += 1
        now = time.monotonic()
        if now >= second_at:
            print(f"{now - start:6.1f} s  {n - second_rounds:7.0f} rounds/s  "
                  f"{stalls - second_stalls:3d} stalls", flush=True)
            second_at, second_rounds, second_stalls = now + 1.0, n, stalls
    took = time.monotonic() - start
    total = last - first
    print(f"stall-emulator: {took:.1f} s, {total:,.0f} rounds ({total / max(took, 1e-9):,.0f}/s), "
          f"{stalls} stalls of {a.stall_ms:g} ms ({stalls * a.stall_ms / 1000:.2f} s stopped)",
          flush=True)


if __name__ == "__main__":
    sys.exit(main())
