#ifndef FUSEBOX_CFUSEBOX_H
#define FUSEBOX_CFUSEBOX_H

/* Small helpers from C for the breaker core and the test kit. None of these names are public API. */

/* The CPU the calling thread runs on (glibc reads it from rseq where the kernel offers it, else the vDSO), for
   per-CPU lanes and counters; 0 where unknown. Declared here: <sched.h> exposes it only under _GNU_SOURCE. */
#ifdef __linux__
extern int sched_getcpu(void);
static inline int fusebox_current_cpu(void) {
    int cpu = sched_getcpu();
    return cpu < 0 ? 0 : cpu;
}
#else
static inline int fusebox_current_cpu(void) { return 0; }
#endif

/* A pipe whose two ends are closed on exec, made atomically (no child spawned meanwhile by another thread can
   inherit it), for the test kit's watchdogs; -1 with errno on failure. pipe2 is declared here for the same reason
   as sched_getcpu. */
#ifdef __linux__
extern int pipe2(int pipefd[2], int flags);
static inline int fusebox_pipe_cloexec(int ends[2]) { return pipe2(ends, 02000000 /* O_CLOEXEC */); }
#else
#include <unistd.h>
#include <fcntl.h>
static inline int fusebox_pipe_cloexec(int ends[2]) {
    if (pipe(ends) != 0) return -1;
    fcntl(ends[0], F_SETFD, FD_CLOEXEC);
    fcntl(ends[1], F_SETFD, FD_CLOEXEC);
    return 0;
}
#endif

#endif
