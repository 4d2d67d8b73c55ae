/*
 * threads.c - the cpu backend's thread count and its parallel-for.
 *
 * DESIGN
 * The work quantd parallelises is coarse (a layer's rows, a batch's (sequence, head) pairs),
 * so a parallel-for that starts its threads per call is enough: thread creation costs tens of
 * microseconds against milliseconds of work per call, and there is no pool to shut down, no
 * state shared between calls, nothing to leak when a job fails. The thread count is one
 * process-wide setting. OpenBLAS itself runs single-threaded, inside these threads (see
 * matmul.c), so the two never compete for the cores.
 *
 * The ranges follow the thread count, so a result must never depend on them: every caller
 * makes each item's result independent of which range holds it and of the order ranges run
 * in (rows written by one thread, GEMM tiles fixed by the problem size, no partial sums
 * merged per range, no float atomics). That is what keeps a job's bytes the same on any
 * number of threads (tests/unit/test-determinism.c).
 */
#include <cblas.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "cpu.h"
#include "ops.h"

#define QD_CPU_MAX_THREADS 256

static int g_threads; /* 0 until set: every online CPU */

static int online_cpus(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1) return 1;
    if (n > QD_CPU_MAX_THREADS) return QD_CPU_MAX_THREADS;
    return (int)n;
}

void qd_cpu_set_threads(int n) {
    if (n <= 0) n = online_cpus();
    if (n > QD_CPU_MAX_THREADS) n = QD_CPU_MAX_THREADS;
    g_threads = n;
}

int qd_cpu_threads(void) {
    return g_threads > 0 ? g_threads : online_cpus();
}

static pthread_once_t blas_once = PTHREAD_ONCE_INIT;

static void blas_single_thread(void) {
    openblas_set_num_threads(1);
}

void qd_cpu_blas_init(void) {
    pthread_once(&blas_once, blas_single_thread);
}

struct range_task {
    void (*fn)(void *ctx, int64_t begin, int64_t end);
    void *ctx;
    int64_t begin, end;
};

static void *range_main(void *arg) {
    struct range_task *t = arg;
    t->fn(t->ctx, t->begin, t->end);
    return NULL;
}

void qd_cpu_parallel_for(int n_threads, int64_t n_items,
                         void (*fn)(void *ctx, int64_t begin, int64_t end), void *ctx) {
    if (n_items <= 0) return;
    if (n_threads <= 0) n_threads = qd_cpu_threads();
    if (n_threads > QD_CPU_MAX_THREADS) n_threads = QD_CPU_MAX_THREADS;
    if ((int64_t)n_threads > n_items) n_threads = (int)n_items;
    if (n_threads <= 1) {
        fn(ctx, 0, n_items);
        return;
    }
    struct range_task tasks[QD_CPU_MAX_THREADS];
    pthread_t tids[QD_CPU_MAX_THREADS];
    int started[QD_CPU_MAX_THREADS];
    for (int i = 0; i < n_threads; i++) {
        tasks[i].fn = fn;
        tasks[i].ctx = ctx;
        tasks[i].begin = n_items * i / n_threads;
        tasks[i].end = n_items * (i + 1) / n_threads;
        started[i] = 0;
    }
    for (int i = 1; i < n_threads; i++)
        started[i] = pthread_create(&tids[i], NULL, range_main, &tasks[i]) == 0;
    range_main(&tasks[0]);
    for (int i = 1; i < n_threads; i++) {
        if (started[i])
            pthread_join(tids[i], NULL);
        else
            range_main(&tasks[i]); /* could not start a thread: do its share here */
    }
}
