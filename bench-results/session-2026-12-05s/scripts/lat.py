import re,collections
sub={}; byop=collections.defaultdict(collections.Counter); lat=collections.defaultdict(list)
for line in open('/work/s_sess/uring.txt'):
    m=re.search(r'\] (\d+\.\d+):\s+io_uring:(\w+): .*?req(?:uest)? (0x[0-9a-f]+)',line)
    if not m: continue
    t=float(m.group(1)); ev,req=m.group(2),m.group(3)
    if ev=='io_uring_submit_req':
        sub[req]=(t,re.search(r'opcode (\w+)',line).group(1))
    elif ev=='io_uring_complete' and req in sub:
        t0,op=sub.pop(req)
        if op.startswith('WRITE') or op=='FSYNC':
            res=int(re.search(r'result (-?\d+)',line).group(1))
            b = 4096 if res<=4096 else 16384 if res<=16384 else 65536 if res<=65536 else 131072 if res<=131072 else 262144 if res<=262144 else 1048576 if res<=1048576 else 10**9
            byop[op][b]+=1
            lat[(op, b>262144)].append((t-t0)*1000)
for op,c in byop.items():
    print(op, dict(sorted(c.items())))
for k,v in sorted(lat.items()):
    v.sort(); n=len(v)
    print(k, f"n={n} p50 {v[n//2]:.2f} p90 {v[int(n*.9)]:.2f} p99 {v[int(n*.99)]:.2f} ms")
