#!/usr/bin/env python3
"""Miss rate of an LRU set-associative key cache under uniform random lookups of 10,000
keys (random set placement), two ways over 16,384 sets against four ways over 8,192 (both
32,768 slots, the engine's key-hash cache). Cold misses (the first 10,000 lookups' worth)
are included; subtract ~2.5 % for the steady state. Used for BENCHMARKS.md, "Codec".

Usage: python3 keycache-sim.py
"""
import collections
import random


def sim(nkeys, sets, ways, n=400_000, seed=1):
    rng = random.Random(seed)
    set_of = [rng.randrange(sets) for _ in range(nkeys)]
    cache = collections.defaultdict(list)
    miss = 0
    for _ in range(n):
        k = rng.randrange(nkeys)
        s = cache[set_of[k]]
        if k in s:
            s.remove(k)
            s.insert(0, k)
        else:
            miss += 1
            s.insert(0, k)
            del s[ways:]
    return miss / n


if __name__ == "__main__":
    print("2-way, 16384 sets:", round(sim(10_000, 16_384, 2), 4))
    print("4-way,  8192 sets:", round(sim(10_000, 8_192, 4), 4))
