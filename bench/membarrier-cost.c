/* membarrier-cost: what one sys_membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) costs the caller,
 * with the process's other threads idle and with one of them running on another CPU (the kernel
 * then sends that CPU an IPI and waits for it). Upstream glommio issued one per executor sleep;
 * vendor/README.md, hunk 5, says why it is a fence now.
 *
 *   gcc -O2 -pthread bench/membarrier-cost.c -o /tmp/membarrier-cost && /tmp/membarrier-cost; /tmp/membarrier-cost peer
 *
 * Needs CPUs 0 and 1; bounded: 200,000 calls of each kind, then it exits. Written in C because
 * it is a page of raw syscalls with nothing to parse or keep. */
#define _GNU_SOURCE
#include <linux/membarrier.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

enum { CALLS = 200000 };
static volatile int stop;

static void pin(int cpu) {
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpu, &s);
    sched_setaffinity(0, sizeof s, &s);
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* The peer: a thread of this process kept running on CPU 1, which each barrier must interrupt. */
static void *spin(void *unused) {
    (void)unused;
    pin(1);
    while (!stop) {
    }
    return NULL;
}

/* Microseconds per call of `syscall(nr, a, 0)`, over CALLS calls. */
static double per_call(long nr, int a) {
    double t = now();
    for (int i = 0; i < CALLS; i++)
        syscall(nr, a, 0);
    return (now() - t) / CALLS * 1e6;
}

int main(int argc, char **argv) {
    (void)argv;
    int with_peer = argc > 1;
    pin(0);
    if (syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0) < 0) {
        perror("membarrier register");
        return 1;
    }
    pthread_t peer;
    if (with_peer) {
        pthread_create(&peer, NULL, spin, NULL);
        usleep(100000); /* let it reach CPU 1 */
    }
    double barrier = per_call(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED);
    double bare = per_call(SYS_getppid, 0);
    printf("%s membarrier %.2f us, getppid %.2f us\n", with_peer ? "peer-running" : "peer-idle", barrier, bare);
    stop = 1;
    if (with_peer)
        pthread_join(peer, NULL);
    return 0;
}
