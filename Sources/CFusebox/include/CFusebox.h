#ifndef FUSEBOX_CFUSEBOX_H
#define FUSEBOX_CFUSEBOX_H

/* Small helpers from C for the breaker core. None of these names are public API. */

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

#endif
