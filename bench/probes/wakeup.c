/*
 * How long waking a sleeping thread takes on this machine: two processes bounce one byte over
 * two pipes (two wake-ups per round trip), after the parent has slept GAP microseconds.
 *
 *   cc -O2 -o /tmp/wakeup bench/probes/wakeup.c && /tmp/wakeup 10000 && /tmp/wakeup 1000 && /tmp/wakeup 0
 *
 * Prints the median and 90th percentile of 300 round trips. docs/switch.md, "Latency".
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define ROUNDS 300

static double now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    int gap = argc > 1 ? atoi(argv[1]) : 10000;
    int there[2], back[2];
    char c = 0;
    double rtt[ROUNDS];
    if (pipe(there) || pipe(back)) return 1;
    pid_t child = fork();
    if (child < 0) return 1;
    if (child == 0) {
        close(there[1]);
        while (read(there[0], &c, 1) == 1)
            if (write(back[1], &c, 1) != 1) break;
        _exit(0);
    }
    close(there[0]);
    for (int i = 0; i < ROUNDS; i++) {
        if (gap) usleep(gap);
        double t0 = now_us();
        if (write(there[1], &c, 1) != 1 || read(back[0], &c, 1) != 1) return 1;
        rtt[i] = now_us() - t0;
    }
    close(there[1]);
    waitpid(child, NULL, 0);
    qsort(rtt, ROUNDS, sizeof rtt[0], cmp);
    printf("after %d us asleep: pipe round trip (two wake-ups) median %.1f us, p90 %.1f us\n", gap,
           rtt[ROUNDS / 2], rtt[ROUNDS * 9 / 10]);
    return 0;
}
