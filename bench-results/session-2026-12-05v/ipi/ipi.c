// ipi.c: what an interruption costs a busy vCPU. A thread on CPU 0 spins reading the TSC and
// records gaps > 500 ns; a thread on CPU 1 sends it IPIs with membarrier(PRIVATE_EXPEDITED) at a
// given rate (0: none). Prints gaps per second and their mean/median length.
#define _GNU_SOURCE
#include <linux/membarrier.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <x86intrin.h>
static volatile int stop;
static int rate;
static void pin(int c){cpu_set_t s;CPU_ZERO(&s);CPU_SET(c,&s);pthread_setaffinity_np(pthread_self(),sizeof s,&s);}
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
static void*sender(void*a){pin(1);if(!rate)return 0;double t=now(),dt=1.0/rate;while(!stop){while(now()<t)if(stop)return 0;syscall(__NR_membarrier,MEMBARRIER_CMD_PRIVATE_EXPEDITED,0,0);t+=dt;}return 0;}
static int cmp(const void*a,const void*b){unsigned long x=*(unsigned long*)a,y=*(unsigned long*)b;return x<y?-1:x>y;}
int main(int c,char**v){rate=atoi(v[1]);double secs=atof(v[2]);
 syscall(__NR_membarrier,MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED,0,0);
 pin(0);pthread_t th;pthread_create(&th,0,sender,0);
 double t0=now();unsigned long c0=__rdtsc();usleep(100000);double t1=now();unsigned long c1=__rdtsc();double ghz=(c1-c0)/(t1-t0)/1e9;
 static unsigned long gaps[10000000];long n=0;unsigned long total=0;
 unsigned long start=__rdtsc(),prev=start,end=start+(unsigned long)(secs*ghz*1e9);
 while(prev<end){unsigned long x=__rdtsc();unsigned long d=x-prev;if(d>ghz*500&&n<10000000){gaps[n++]=d;total+=d;}prev=x;}
 stop=1;pthread_join(th,0);
 qsort(gaps,n,sizeof gaps[0],cmp);
 printf("rate %d: %.0f gaps/s, mean %.1f us, p50 %.1f us, p90 %.1f us, lost %.1f%% of the core\n",rate,n/secs,n?total/ghz/1e3/n:0,n?gaps[n/2]/ghz/1e3:0,n?gaps[n*9/10]/ghz/1e3:0,100.0*total/ghz/1e9/secs);
}
