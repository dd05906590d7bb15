/* membarrier-cost: what one sys_membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) costs the caller,
 * with the process's other threads idle and with one of them running on another CPU (the kernel
 * then sends that CPU an IPI and waits for it). Upstream glommio issued one per executor sleep;
 * vendor/README.md, hunk 5, says why it is a fence now.
 *
 *   gcc -O2 -pthread bench/membarrier-cost.c -o /tmp/membarrier-cost && /tmp/membarrier-cost; /tmp/membarrier-cost peer
 *
 * Needs CPUs 0 and 1; bounded: 200,000 calls of each kind, then it exits. Written in C because
 * it is forty lines of raw syscalls with nothing to parse or keep. */
#define _GNU_SOURCE
#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <stdio.h>
#include <time.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
static volatile int stop;
static void* spin(void*a){cpu_set_t s;CPU_ZERO(&s);CPU_SET(1,&s);sched_setaffinity(0,sizeof s,&s);while(!stop);return 0;}
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
int main(int c,char**v){cpu_set_t s;CPU_ZERO(&s);CPU_SET(0,&s);sched_setaffinity(0,sizeof s,&s);
 syscall(SYS_membarrier,MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED,0);
 pthread_t t; if(c>1) pthread_create(&t,0,spin,0), usleep(100000);
 int n=200000; double a=now(); for(int i=0;i<n;i++) syscall(SYS_membarrier,MEMBARRIER_CMD_PRIVATE_EXPEDITED,0); double b=now();
 for(int i=0;i<n;i++) syscall(SYS_getppid); double d=now();
 printf("%s membarrier %.2f us, getppid %.2f us\n", c>1?"peer-running":"peer-idle",(b-a)/n*1e6,(d-b)/n*1e6); stop=1; return 0;}
