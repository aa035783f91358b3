#!/usr/bin/env python3
# nsrec.py DIR_A CORES_A RATE_A DIR_B CORES_B RATE_B [N]: two perf profiles (DIR/perf.data, as
# session p's pp.sh PERF=loadgen PERF_OUT=DIR records them) as nanoseconds of the load generator's core
# per record, symbol by symbol (share x cores / records per second), largest differences first.
import sys,subprocess
def load(d, cores, rate):
    out=subprocess.run(f"perf report -i {d}/perf.data --no-children --sort symbol --stdio -g none 2>/dev/null",shell=True,capture_output=True,text=True).stdout
    m={}; ns=cores/rate*1e9
    for l in out.splitlines():
        l=l.strip()
        if not l or l[0]=='#' or '%' not in l.split()[0]: continue
        p=float(l.split()[0].rstrip('%')); s=' '.join(l.split()[2:])[:90]
        m[s]=m.get(s,0)+p*ns/100
    return m,ns
a,na=load(sys.argv[1],float(sys.argv[2]),float(sys.argv[3])); b,nb=load(sys.argv[4],float(sys.argv[5]),float(sys.argv[6]))
print('total ns/rec %.0f %.0f'%(na,nb))
keys=set(a)|set(b)
rows=sorted(keys,key=lambda k: -(a.get(k,0)-b.get(k,0)))
n=int(sys.argv[7]) if len(sys.argv)>7 else 30
for k in rows[:n]: print(f"{a.get(k,0):7.0f} {b.get(k,0):7.0f} {a.get(k,0)-b.get(k,0):+7.0f}  {k}")
print('...')
for k in rows[-n//2:]: print(f"{a.get(k,0):7.0f} {b.get(k,0):7.0f} {a.get(k,0)-b.get(k,0):+7.0f}  {k}")
