/*
 * attention.c - cpu causal attention with grouped-query heads.
 *
 * DESIGN
 * Work items are (sequence, query head) pairs, split across threads with qd_cpu_parallel_for.
 * A pair is processed in blocks of QBLOCK queries, each against all the keys it may see:
 *   S = scale * Q[i0:i1] K[0:i1]^T        one sgemm on strided views (no copies)
 *   P = causal softmax of each row of S   (keys past the query's position get weight 0)
 *   O[i0:i1] = P V[0:i1]                  one sgemm, written in place into out
 * Scratch per thread is one [QBLOCK, seq_len] block; no [seq_len, seq_len] matrix is formed.
 * OpenBLAS runs single-threaded inside these threads (see matmul.c). This file is compiled
 * with -O3 -ffast-math (kernels/CMakeLists.txt) so the softmax loops vectorise, expf
 * included; each pair is computed whole by one thread, so the result does not depend on the
 * thread count. Accumulation is in float; kernels/ref/attention.c accumulates in double.
 */
#include <cblas.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "cpu.h"
#include "ops.h"

struct attn_ctx {
    float *out;
    const float *q, *k, *v;
    int64_t seq_len;
    int n_heads, group, head_dim;
    int64_t q_stride, kv_stride;
    float scale;
    atomic_int failed; /* a thread could not allocate its scratch */
};

/* Queries per block: the score block [QBLOCK, seq_len] is the only scratch. */
#define QBLOCK 64

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
/* Built for baseline x86-64 and for AVX2/FMA machines (picked at load time), so the softmax
 * gets libmvec's 8-wide expf where the CPU has it. */
__attribute__((target_clones("arch=x86-64-v3", "default")))
#endif
static void attn_pairs(void *arg, int64_t begin, int64_t end) {
    struct attn_ctx *c = arg;
    int64_t L = c->seq_len;
    int d = c->head_dim;
    float *p = malloc((size_t)(QBLOCK * L) * sizeof *p); /* [QBLOCK, L] scores, then weights */
    if (!p) {
        atomic_store(&c->failed, 1);
        return;
    }
    for (int64_t item = begin; item < end; item++) {
        int64_t seq = item / c->n_heads;
        int h = (int)(item % c->n_heads);
        int kvh = h / c->group;
        int64_t base = seq * L;
        /* strided views of this head: row t of q/out at stride q_stride, of k/v at kv_stride */
        const float *qh = c->q + base * c->q_stride + (int64_t)h * d;
        const float *kh = c->k + base * c->kv_stride + (int64_t)kvh * d;
        const float *vh = c->v + base * c->kv_stride + (int64_t)kvh * d;
        float *oh = c->out + base * c->q_stride + (int64_t)h * d;
        for (int64_t i0 = 0; i0 < L; i0 += QBLOCK) {
            int64_t nb = L - i0 < QBLOCK ? L - i0 : QBLOCK;
            int64_t nk = i0 + nb; /* keys any query of the block may see */
            /* p [nb, nk] = scale * q[i0 : i0+nb] k[0 : nk]^T */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nb, (int)nk, d, c->scale,
                        qh + i0 * c->q_stride, (int)c->q_stride, kh, (int)c->kv_stride, 0.0f,
                        p, (int)nk);
            for (int64_t r = 0; r < nb; r++) {
                float *pr = p + r * nk;
                int64_t n = i0 + r + 1; /* causal: keys 0..i */
                float mx = pr[0];
                for (int64_t j = 1; j < n; j++) mx = pr[j] > mx ? pr[j] : mx;
                float sum = 0.0f;
                for (int64_t j = 0; j < n; j++) {
                    pr[j] = expf(pr[j] - mx);
                    sum += pr[j];
                }
                float inv = 1.0f / sum;
                for (int64_t j = 0; j < n; j++) pr[j] *= inv;
                for (int64_t j = n; j < nk; j++) pr[j] = 0.0f;
            }
            /* out[i0 : i0+nb] = p v[0 : nk] */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nb, d, (int)nk, 1.0f, p,
                        (int)nk, vh, (int)c->kv_stride, 0.0f, oh + i0 * c->q_stride,
                        (int)c->q_stride);
        }
    }
    free(p);
}

qd_err qd_attention_cpu(float *out, const float *q, const float *k, const float *v,
                        int64_t n_seq, int64_t seq_len, int n_heads, int n_kv_heads,
                        int head_dim, qd_error *err) {
    if (n_heads <= 0 || n_kv_heads <= 0 || n_heads % n_kv_heads != 0 || head_dim <= 0)
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "attention: %d query heads cannot share %d kv heads", n_heads,
                            n_kv_heads);
    if (n_seq <= 0 || seq_len <= 0) return QD_OK;
    struct attn_ctx c = {
        .out = out, .q = q, .k = k, .v = v, .seq_len = seq_len, .n_heads = n_heads,
        .group = n_heads / n_kv_heads, .head_dim = head_dim,
        .q_stride = (int64_t)n_heads * head_dim, .kv_stride = (int64_t)n_kv_heads * head_dim,
        .scale = (float)(1.0 / sqrt((double)head_dim)),
    };
    atomic_init(&c.failed, 0);
    qd_cpu_blas_init();
    qd_cpu_parallel_for(0, n_seq * n_heads, attn_pairs, &c);
    if (atomic_load(&c.failed))
        return qd_error_set(err, QD_ERR_NOMEM,
                            "attention: no memory for the scratch of a %lld-token head",
                            (long long)seq_len);
    return QD_OK;
}
