#!/usr/bin/env python3
# gapprobe.py SECONDS: sleeps 1 ms at a time on this CPU and prints each wake-up over 20 ms late, with the wall clock
import sys, time
end = time.time() + float(sys.argv[1])
worst = 0.0
while time.time() < end:
    a = time.perf_counter(); time.sleep(0.001); late = (time.perf_counter() - a - 0.001) * 1000
    worst = max(worst, late)
    if late > 20:
        print(f"{time.strftime('%H:%M:%S', time.gmtime())}.{int(time.time()*1000)%1000:03d} late {late:.1f} ms", flush=True)
print(f"worst {worst:.1f} ms", flush=True)
