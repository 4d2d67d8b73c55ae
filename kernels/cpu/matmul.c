/*
 * matmul.c - the cpu linear layer and Gram matrix: OpenBLAS single-threaded per call, the
 * work split across quantd's own threads.
 *
 * DESIGN
 * y = x W^T is cblas_sgemm with W transposed in place (W is [n_out, n_in] row-major, which is
 * W^T column-major, so nothing is copied). Threads: OpenBLAS's own pool spins (sched_yield)
 * for a while after each call, and it would then fight quantd's threaded attention and row
 * ops for the same cores. So OpenBLAS is set to one thread once, and each call is split into
 * qd_cpu_threads() contiguous blocks of rows of x (or of rows of W when x has few rows), one
 * single-threaded sgemm per block on quantd's threads. Blocks write disjoint parts of y, so the
 * result does not depend on scheduling; it does depend on the thread count (an element's dot
 * product can be blocked differently by the BLAS kernel for a different m), which is why
 * bitwise comparisons in the tests hold the thread count fixed.
 *
 * BLAS dimensions are int: the callers' shape validation (QD_MODEL_MAX_DIM) keeps n and k far
 * below INT_MAX; m is cut into slices of at most 2^30 rows.
 */
#include <cblas.h>
#include <string.h>

#include "cpu.h"
#include "ops.h"

#define QD_BLAS_MAX_ROWS ((int64_t)1 << 30)
/* Below this many multiply-adds a call runs on the calling thread alone. */
#define QD_GEMM_MIN_PARALLEL ((int64_t)1 << 18)
/* Column block of the Gram matrix handled as one work item. */
#define QD_XTX_BLOCK 128

/* y [m, n] (row stride ldy) = x [m, k] W [n, k]^T, single-threaded BLAS. */
static void sgemm_rows(float *y, int64_t ldy, const float *x, const float *w, int64_t m,
                       int64_t n, int64_t k) {
    for (int64_t r = 0; r < m; r += QD_BLAS_MAX_ROWS) {
        int64_t mm = m - r < QD_BLAS_MAX_ROWS ? m - r : QD_BLAS_MAX_ROWS;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)mm, (int)n, (int)k, 1.0f,
                    x + r * k, (int)k, w, (int)k, 0.0f, y + r * ldy, (int)ldy);
    }
}

struct gemm_ctx {
    float *y;
    const float *x, *w, *bias;
    int64_t m, n, k;
    int by_rows; /* split rows of x (else rows of W, i.e. columns of y) */
};

static void gemm_part(void *arg, int64_t b, int64_t e) {
    struct gemm_ctx *c = arg;
    int64_t r0 = 0, r1 = c->m, c0 = 0, c1 = c->n;
    if (c->by_rows) {
        r0 = b;
        r1 = e;
    } else {
        c0 = b;
        c1 = e;
    }
    if (c->k > 0) {
        sgemm_rows(c->y + r0 * c->n + c0, c->n, c->x + r0 * c->k, c->w + c0 * c->k, r1 - r0,
                   c1 - c0, c->k);
    } else {
        for (int64_t i = r0; i < r1; i++)
            memset(c->y + i * c->n + c0, 0, (size_t)(c1 - c0) * sizeof(float));
    }
    if (c->bias)
        for (int64_t i = r0; i < r1; i++)
            for (int64_t j = c0; j < c1; j++) c->y[i * c->n + j] += c->bias[j];
}

void qd_matmul_cpu(float *y, const float *x, const float *w, const float *bias, int64_t m,
                   int64_t n, int64_t k) {
    if (m <= 0 || n <= 0) return;
    qd_cpu_blas_init();
    struct gemm_ctx c = {y, x, w, bias, m, n, k, 1};
    int t = qd_cpu_threads();
    if (m * n * (k > 0 ? k : 1) < QD_GEMM_MIN_PARALLEL) t = 1;
    int64_t items = m;
    if (m < 4 * (int64_t)t && n >= 64 * (int64_t)t) {
        c.by_rows = 0; /* few rows (a short batch): split the outputs instead */
        items = n;
    }
    qd_cpu_parallel_for(t, items, gemm_part, &c);
}

struct xtx_ctx {
    float *h;
    const float *x;
    int64_t n, k, n_blocks;
};

/* Column block b of the upper triangle: h[0:c1, c0:c1] += x[:, 0:c1]^T x[:, c0:c1]. The work
 * of block b grows with b, so items are dealt out zig-zag (0, last, 1, last-1, ...) and each
 * thread's contiguous range of items holds a balanced mix. */
static void xtx_part(void *arg, int64_t b, int64_t e) {
    struct xtx_ctx *c = arg;
    for (int64_t i = b; i < e; i++) {
        int64_t blk = i % 2 == 0 ? i / 2 : c->n_blocks - 1 - i / 2;
        int64_t c0 = blk * QD_XTX_BLOCK;
        int64_t c1 = c0 + QD_XTX_BLOCK < c->k ? c0 + QD_XTX_BLOCK : c->k;
        for (int64_t r = 0; r < c->n; r += QD_BLAS_MAX_ROWS) {
            int64_t nn = c->n - r < QD_BLAS_MAX_ROWS ? c->n - r : QD_BLAS_MAX_ROWS;
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)c1, (int)(c1 - c0),
                        (int)nn, 1.0f, c->x + r * c->k, (int)c->k, c->x + r * c->k + c0,
                        (int)c->k, 1.0f, c->h + c0, (int)c->k);
        }
    }
}

void qd_xtx_accum_cpu(float *h, const float *x, int64_t n, int64_t k) {
    if (n <= 0 || k <= 0) return;
    qd_cpu_blas_init();
    struct xtx_ctx c = {h, x, n, k, (k + QD_XTX_BLOCK - 1) / QD_XTX_BLOCK};
    int t = n * k * k < QD_GEMM_MIN_PARALLEL ? 1 : qd_cpu_threads();
    qd_cpu_parallel_for(t, c.n_blocks, xtx_part, &c);
    /* the upper triangle (and diagonal blocks) are current; mirror them down */
    for (int64_t a = 0; a < k; a++)
        for (int64_t b = a + 1; b < k; b++) h[b * k + a] = h[a * k + b];
}
