// fdatasync-cost: the CPU one small group commit costs the committing thread, when the file
// grows with each commit (as the embedded edit log does) and when it overwrites space
// preallocated with written zeros (the file's size, so its inode, no longer changes).
//
//   gcc -O2 -Wall -Wextra bench/fdatasync-cost.c -o /tmp/fdatasync-cost
//   cd DATA_DIR && taskset -c 0 /tmp/fdatasync-cost grow      # or: prealloc
//
// Each of 2,000 commits writes 160 bytes (5 records of 32) after the last and fdatasyncs, then
// sleeps 2 ms, as the log writer sleeps out its commit window. Prints the CPU (user + system,
// getrusage) and the wall time per commit, the sleep left out. It writes f.log in the current
// directory and removes it.
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

enum { COMMITS = 2000, BYTES = 160, SLEEP_US = 2000 };

static double cpu_seconds(void) {
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return r.ru_utime.tv_sec + r.ru_utime.tv_usec / 1e6 + r.ru_stime.tv_sec + r.ru_stime.tv_usec / 1e6;
}

static double wall_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static int fail(const char *what) {
    perror(what);
    unlink("f.log");
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 2 || (strcmp(argv[1], "grow") != 0 && strcmp(argv[1], "prealloc") != 0)) {
        fprintf(stderr, "usage: fdatasync-cost grow|prealloc\n");
        return 2;
    }
    int prealloc = strcmp(argv[1], "prealloc") == 0;
    unlink("f.log");
    int fd = open("f.log", O_CREAT | O_RDWR, 0644);
    if (fd < 0) return fail("open f.log");
    if (prealloc) {
        // Written zeros, not fallocate: unwritten extents would change (and dirty the inode)
        // on every first write into them.
        size_t size = (size_t)COMMITS * BYTES + 4096;
        char *zeros = calloc(1, size);
        if (zeros == NULL || write(fd, zeros, size) != (ssize_t)size || fdatasync(fd) != 0) return fail("preallocate");
        free(zeros);
    }
    char record[BYTES];
    memset(record, 7, sizeof record);
    double cpu0 = cpu_seconds(), wall0 = wall_seconds();
    for (int i = 0; i < COMMITS; i++) {
        if (pwrite(fd, record, BYTES, (off_t)i * BYTES) != BYTES) return fail("pwrite");
        if (fdatasync(fd) != 0) return fail("fdatasync");
        usleep(SLEEP_US);
    }
    double cpu1 = cpu_seconds(), wall1 = wall_seconds();
    printf("%s: cpu per commit %.1f us, wall per commit %.1f us\n", argv[1], (cpu1 - cpu0) / COMMITS * 1e6,
           ((wall1 - wall0) / COMMITS - SLEEP_US / 1e6) * 1e6);
    close(fd);
    unlink("f.log");
    return 0;
}
