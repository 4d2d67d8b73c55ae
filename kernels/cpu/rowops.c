/*
 * rowops.c - the cheap per-row ops (RMSNorm, RoPE, SwiGLU gate), threaded over rows.
 *
 * Each thread runs the reference op on its slice of rows, so these are bit-identical to ref:
 * the ops are memory-bound and the reference arithmetic costs nothing worth optimising.
 */
#include "ops.h"

/* Below this many elements a thread's start-up costs more than the work. */
#define QD_ROWOPS_MIN_PER_THREAD 16384

static int threads_for(int64_t elems) {
    int64_t t = elems / QD_ROWOPS_MIN_PER_THREAD;
    int n = qd_cpu_threads();
    if (t < 1) return 1;
    return t < n ? (int)t : n;
}

struct rms_ctx {
    float *y;
    const float *x, *w;
    int64_t d;
    double eps;
};

static void rms_rows(void *arg, int64_t begin, int64_t end) {
    struct rms_ctx *c = arg;
    qd_rmsnorm_ref(c->y + begin * c->d, c->x + begin * c->d, c->w, end - begin, c->d, c->eps);
}

void qd_rmsnorm_cpu(float *y, const float *x, const float *w, int64_t n, int64_t d, double eps) {
    struct rms_ctx c = {y, x, w, d, eps};
    qd_cpu_parallel_for(threads_for(n * d), n, rms_rows, &c);
}

struct rope_ctx {
    float *x;
    int64_t row_stride, seq_len;
    int n_heads, head_dim;
    const float *cos_t, *sin_t;
};

static void rope_rows(void *arg, int64_t begin, int64_t end) {
    struct rope_ctx *c = arg;
    int half = c->head_dim / 2;
    /* Rows are rotated one at a time so each keeps its own position t % seq_len. */
    for (int64_t t = begin; t < end; t++) {
        int64_t pos = t % c->seq_len;
        qd_rope_apply_ref(c->x + t * c->row_stride, 1, c->row_stride, 1, c->n_heads,
                          c->head_dim, c->cos_t + pos * half, c->sin_t + pos * half);
    }
}

void qd_rope_apply_cpu(float *x, int64_t n_tok, int64_t row_stride, int64_t seq_len,
                       int n_heads, int head_dim, const float *cos_t, const float *sin_t) {
    struct rope_ctx c = {x, row_stride, seq_len, n_heads, head_dim, cos_t, sin_t};
    qd_cpu_parallel_for(threads_for(n_tok * n_heads * head_dim), n_tok, rope_rows, &c);
}

struct silu_ctx {
    float *out;
    const float *gate, *up;
};

static void silu_range(void *arg, int64_t begin, int64_t end) {
    struct silu_ctx *c = arg;
    qd_silu_mul_ref(c->out + begin, c->gate + begin, c->up + begin, end - begin);
}

void qd_silu_mul_cpu(float *out, const float *gate, const float *up, int64_t n) {
    struct silu_ctx c = {out, gate, up};
    qd_cpu_parallel_for(threads_for(n), n, silu_range, &c);
}
