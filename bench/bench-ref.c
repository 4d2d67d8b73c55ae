/*
 * bench-ref.c - the machine's own limits, measured in the same run as the benchmarks that are
 * compared with them: memory copy bandwidth and single-precision GEMM throughput.
 *
 *   bench-ref [--mib 1024] [--gemm 2048] [--reps 3] [--tsv]
 *
 * Prints four figures (the best of --reps runs each):
 *   memcpy_1t    GB/s copied by one thread, memcpy() of a --mib MiB buffer
 *   memcpy       GB/s copied by every online CPU, each memcpy()-ing its own contiguous part
 *                (the split quantd's cpu kernels use, qd_cpu_parallel_for)
 *   sgemm_1t     GFLOP/s of cblas_sgemm on square --gemm matrices with OpenBLAS on one thread
 *   sgemm        the same with OpenBLAS's own threading over every online CPU
 * With --tsv each figure is one "name<TAB>value" line (bench/run reads those); otherwise the
 * lines are for people.
 *
 * DESIGN
 * GB/s counts the bytes copied (each byte is read once and written once, so the memory traffic
 * is twice that); it is the rate the per-method benches compare a quantizer's pass over the
 * weights with. Buffers are written before timing so page faults are not measured. GFLOP/s
 * counts 2 * n^3 flops per n x n x n product (multiply and add). The GEMM rates bound what the
 * calibration forward pass can reach: it is made of [tokens, k] x [k, n] products, run by
 * quantd as single-threaded OpenBLAS calls split over its own threads, and its achieved
 * GFLOP/s is printed next to these. OpenBLAS's thread count is set here explicitly in both
 * cases, so the OPENBLAS_NUM_THREADS environment does not change what is measured.
 */
#include <cblas.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ops.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* A decimal integer in [lo, hi], the whole string. */
static bool parse_long(const char *s, long lo, long hi, long *ret) {
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi) return false;
    *ret = v;
    return true;
}

/* ---- memory copy ---- */

typedef struct copy_job {
    char *dst;
    const char *src;
    size_t bytes, chunk;
} copy_job;

static void copy_range(void *ctx, int64_t begin, int64_t end) {
    const copy_job *j = ctx;
    size_t b = (size_t)begin * j->chunk, e = (size_t)end * j->chunk;
    if (e > j->bytes) e = j->bytes;
    if (b < e) memcpy(j->dst + b, j->src + b, e - b);
}

/* Best bytes copied per second over reps copies of bytes, split over n_threads contiguous
 * ranges (1: a plain memcpy on this thread). */
static double copy_rate(char *dst, const char *src, size_t bytes, int n_threads, long reps) {
    copy_job j = {dst, src, bytes, (bytes + (size_t)n_threads - 1) / (size_t)n_threads};
    double best = 0.0;
    for (long r = 0; r < reps; r++) {
        double t0 = now_s();
        qd_cpu_parallel_for(n_threads, n_threads, copy_range, &j);
        double dt = now_s() - t0;
        if (dt > 0 && (double)bytes / dt > best) best = (double)bytes / dt;
    }
    return best;
}

/* ---- GEMM ---- */

/* Best GFLOP/s of C = A B on n x n fp32 matrices over reps runs, OpenBLAS on n_threads. One
 * untimed run first: OpenBLAS starts its threads and sizes its buffers on the first call. */
static double sgemm_rate(const float *a, const float *b, float *c, int n, int n_threads,
                         long reps) {
    openblas_set_num_threads(n_threads);
    double best = 0.0, flops = 2.0 * (double)n * (double)n * (double)n;
    for (long r = -1; r < reps; r++) {
        double t0 = now_s();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f,
                    c, n);
        double dt = now_s() - t0;
        if (r >= 0 && dt > 0 && flops / dt > best) best = flops / dt;
    }
    return best / 1e9;
}

static void usage(void) {
    fprintf(stderr, "usage: bench-ref [--mib 1024] [--gemm 2048] [--reps 3] [--tsv]\n"
                    "  mib in 16..65536 (each of the two copy buffers); gemm in 64..16384;\n"
                    "  reps in 1..100\n");
}

int main(int argc, char **argv) {
    long mib = 1024, n = 2048, reps = 3;
    bool tsv = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool ok = true;
        if (strcmp(a, "--tsv") == 0) {
            tsv = true;
            continue;
        }
        if (!v) ok = false;
        else if (strcmp(a, "--mib") == 0) ok = parse_long(v, 16, 65536, &mib);
        else if (strcmp(a, "--gemm") == 0) ok = parse_long(v, 64, 16384, &n);
        else if (strcmp(a, "--reps") == 0) ok = parse_long(v, 1, 100, &reps);
        else ok = false;
        if (!ok) {
            usage();
            return 2;
        }
        i++;
    }

    int n_cpu = qd_cpu_threads();
    size_t bytes = (size_t)mib << 20;
    char *src = malloc(bytes), *dst = malloc(bytes);
    size_t nn = (size_t)n * (size_t)n;
    float *a = malloc(nn * sizeof *a), *b = malloc(nn * sizeof *b), *c = malloc(nn * sizeof *c);
    if (!src || !dst || !a || !b || !c) {
        fprintf(stderr, "bench-ref: out of memory for two %ld MiB buffers and three %ld x %ld "
                        "matrices\n", mib, n, n);
        free(src);
        free(dst);
        free(a);
        free(b);
        free(c);
        return 1;
    }
    memset(src, 1, bytes);
    memset(dst, 2, bytes);
    for (size_t i = 0; i < nn; i++) { /* values in [-1, 1): no denormals, no overflow */
        a[i] = (float)((i * 7919u) % 2001u) / 1000.0f - 1.0f;
        b[i] = (float)((i * 104729u) % 2001u) / 1000.0f - 1.0f;
        c[i] = 0.0f;
    }

    double m1 = copy_rate(dst, src, bytes, 1, reps) / 1e9;
    double mall = copy_rate(dst, src, bytes, n_cpu, reps) / 1e9;
    double g1 = sgemm_rate(a, b, c, (int)n, 1, reps);
    double gall = sgemm_rate(a, b, c, (int)n, n_cpu, reps);

    if (tsv) {
        printf("cpus\t%d\n", n_cpu);
        printf("memcpy_mib\t%ld\n", mib);
        printf("memcpy_1t_gbs\t%.3f\n", m1);
        printf("memcpy_gbs\t%.3f\n", mall);
        printf("gemm_n\t%ld\n", n);
        printf("sgemm_1t_gflops\t%.2f\n", g1);
        printf("sgemm_gflops\t%.2f\n", gall);
        printf("blas\t%s\n", openblas_get_corename());
    } else {
        printf("bench-ref: %d online CPUs, OpenBLAS core %s, best of %ld runs\n", n_cpu,
               openblas_get_corename(), reps);
        printf("memcpy %ld MiB, 1 thread:      %8.2f GB/s copied (%.2f GB/s read + write)\n",
               mib, m1, 2 * m1);
        printf("memcpy %ld MiB, %d threads:     %8.2f GB/s copied (%.2f GB/s read + write)\n",
               mib, n_cpu, mall, 2 * mall);
        printf("cblas_sgemm %ld^3, 1 thread:  %8.2f GFLOP/s\n", n, g1);
        printf("cblas_sgemm %ld^3, %d threads: %8.2f GFLOP/s\n", n, n_cpu, gall);
    }
    free(src);
    free(dst);
    free(a);
    free(b);
    free(c);
    return 0;
}
