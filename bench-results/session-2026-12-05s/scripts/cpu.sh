#!/usr/bin/env bash
# cpu.sh DELAY SECS: per-CPU busy / iowait / idle over SECS after DELAY
sleep $1; a=$(grep '^cpu[0-9]' /proc/stat); sleep $2; b=$(grep '^cpu[0-9]' /proc/stat)
paste <(echo "$a") <(echo "$b") | awk '{n=NF/2; t0=0;t1=0; for(i=2;i<=n;i++){t0+=$i; t1+=$(i+n)}; d=t1-t0; idle=($(5+n)-$5)/d*100; iow=($(6+n)-$6)/d*100; printf "%s busy %.0f%% iowait %.0f%% idle %.0f%%\n",$1,100-idle-iow,iow,idle}'
