/*
 * bench-gptq.c - wall time of GPTQ on one linear layer: the Hessian accumulation and
 * qd_gptq_quantize (inverse factor + blocked column loop) on random data.
 *
 *   bench-gptq [n k tokens threads]      defaults: 4096 4096 2048, every online CPU
 *
 * Prints one line per phase. The data is random (the timing does not depend on it beyond the
 * Hessian being positive definite, which damping guarantees here).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gptq.h"
#include "ops.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* A positive integer argument, or `def` when absent; -1 when malformed. */
static long arg_long(int argc, char **argv, int i, long def) {
    if (i >= argc) return def;
    char *end = NULL;
    long v = strtol(argv[i], &end, 10);
    if (end == argv[i] || *end != '\0' || v < 1 || v > (1L << 20)) return -1;
    return v;
}

static float rand_unit(uint64_t *s) { /* xorshift64*, uniform in [-1, 1) */
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return (float)((*s * 0x2545F4914F6CDD1Dull) >> 40) / (float)(1 << 23) - 1.0f;
}

int main(int argc, char **argv) {
    long n = arg_long(argc, argv, 1, 4096), k = arg_long(argc, argv, 2, 4096);
    long t = arg_long(argc, argv, 3, 2048), threads = arg_long(argc, argv, 4, 0);
    if (n < 0 || k < 0 || t < 0 || threads < 0 || k > QD_GPTQ_MAX_K) {
        fprintf(stderr, "usage: bench-gptq [n k tokens threads]\n");
        return 2;
    }
    if (threads > 0) qd_cpu_set_threads((int)threads);
    float *w = malloc((size_t)n * (size_t)k * sizeof *w);
    float *x = malloc((size_t)t * (size_t)k * sizeof *x);
    if (!w || !x) {
        fprintf(stderr, "bench-gptq: out of memory\n");
        return 1;
    }
    uint64_t s = 0x9E3779B97F4A7C15ull;
    for (size_t i = 0; i < (size_t)n * (size_t)k; i++) w[i] = 0.05f * rand_unit(&s);
    for (size_t i = 0; i < (size_t)t * (size_t)k; i++) x[i] = rand_unit(&s);

    qd_error err = {0};
    qd_gptq_hessian hs;
    qd_qlinear q;
    qd_gptq_stats st;
    qd_gptq_params p;
    qd_gptq_params_init(&p);
    if (qd_gptq_hessian_init(&hs, (int)k, &err) != QD_OK) goto fail;
    double t0 = now_s();
    if (qd_gptq_hessian_add(&hs, x, t, 1, &err) != QD_OK) goto fail;
    double t1 = now_s();
    if (qd_gptq_quantize(w, (int)n, (int)k, &hs, &p, &q, NULL, &st, &err) != QD_OK) goto fail;
    double t2 = now_s();
    printf("threads %d  W [%ld, %ld]  %ld tokens\n", qd_cpu_threads(), n, k, t);
    printf("hessian_add   %8.3f s\n", t1 - t0);
    printf("gptq_quantize %8.3f s  (4 bits, group 128, block 128, loss %.4g)\n", t2 - t1,
           st.loss);
    qd_qlinear_free(&q);
    qd_gptq_hessian_done(&hs);
    free(w);
    free(x);
    return 0;
fail:
    fprintf(stderr, "bench-gptq: %s\n", qd_error_text(&err));
    return 1;
}
