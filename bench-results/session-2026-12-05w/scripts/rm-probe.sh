#!/usr/bin/env bash
# rm-probe.sh: what removing 4 GiB does to fdatasync on the data directory's file system (BENCHMARKS.md, session w):
# 64 KiB write + fdatasync rounds (rm-probe.py) quiet, then while `rm -rf` removes 4 GiB, then right after the same
# removal followed by lib.sh's settle_disk. Run from the repository root; uses /work.
set -euo pipefail
here=bench-results/session-2026-12-05w/scripts
make4g() { mkdir -p /work/rmtest; for i in 1 2 3 4; do dd if=/dev/urandom of=/work/rmtest/f$i bs=1M count=1024 oflag=direct status=none; done; sync; sleep 2; }
make4g
echo "quiet:"; python3 $here/rm-probe.py 8
echo "while rm -rf of 4 GiB:"; (sleep 1; rm -rf /work/rmtest) & python3 $here/rm-probe.py 10; wait
make4g
source benches/scripts/lib.sh
data=/work/rmtest; s=$(date +%s.%N); stop_engine; echo "removal + settle_disk: $(python3 -c "print(round($(date +%s.%N)-$s,2))") s"
echo "right after:"; python3 $here/rm-probe.py 5
