/*
 * test-kernels.c - the runtime's dense ops: the reference against values worked out by hand,
 * and the cpu versions against the reference on random inputs.
 *
 * Tolerances (cpu vs ref): GEMM and attention accumulate in float on the cpu and in double in
 * ref, so they may differ by a few float ulps of the accumulated magnitude; the bound used is
 * 1e-5 relative to the largest |output| (plus 1e-6 absolute), about 100 float ulps, which a
 * wrong index or a missed term exceeds by orders of magnitude. The row ops (RMSNorm, RoPE,
 * SwiGLU) run the reference arithmetic per row and must be bit-identical.
 */
#include <stdlib.h>
#include <string.h>

#include "ops.h"
#include "rt-util.h"
#include "test.h"

static float *fmalloc(int64_t n) {
    return malloc((size_t)n * sizeof(float));
}

/* ---- reference against hand-computed values ---- */

QD_TEST(rmsnorm_ref_by_hand) {
    /* x = [3, 4]: mean square 12.5, 1/rms = 0.28284271; w = [1, 2]. */
    float x[2] = {3, 4}, w[2] = {1, 2}, y[2];
    qd_rmsnorm_ref(y, x, w, 1, 2, 0.0);
    QD_CHECK_NEAR(y[0], 0.84852814, 1e-6);
    QD_CHECK_NEAR(y[1], 2.26274170, 1e-6);
    /* eps enters under the root: mean square 0 + eps 4 -> x / 2 */
    float z[2] = {0, 0}, x2[2] = {1, -1}, y2[2];
    qd_rmsnorm_ref(y2, z, w, 1, 2, 4.0);
    QD_CHECK_NEAR(y2[0], 0.0, 0);
    qd_rmsnorm_ref(y2, x2, w, 1, 2, 3.0); /* mean square 1 + 3 = 4 -> 1/2 */
    QD_CHECK_NEAR(y2[0], 0.5, 1e-7);
    QD_CHECK_NEAR(y2[1], -1.0, 1e-7);
}

QD_TEST(softmax_and_silu_ref_by_hand) {
    float x[3] = {0.0f, logf(2.0f), logf(3.0f)};
    qd_softmax_ref(x, 3);
    QD_CHECK_NEAR(x[0], 1.0 / 6, 1e-7);
    QD_CHECK_NEAR(x[1], 2.0 / 6, 1e-7);
    QD_CHECK_NEAR(x[2], 3.0 / 6, 1e-7);
    float big[2] = {1000.0f, 1000.0f}; /* no overflow */
    qd_softmax_ref(big, 2);
    QD_CHECK_NEAR(big[0], 0.5, 1e-7);

    float g[3] = {1.0f, 0.0f, -2.0f}, u[3] = {2.0f, 5.0f, 1.0f}, o[3];
    qd_silu_mul_ref(o, g, u, 3);
    QD_CHECK_NEAR(o[0], 2.0 / (1.0 + exp(-1.0)), 1e-6);
    QD_CHECK_NEAR(o[1], 0.0, 0);
    QD_CHECK_NEAR(o[2], -2.0 / (1.0 + exp(2.0)), 1e-6);
}

QD_TEST(matmul_ref_layout) {
    /* x [2, 3], W [2, 3] (HF layout: row j is output j), y = x W^T + b */
    float x[6] = {1, 2, 3, 4, 5, 6};
    float w[6] = {1, 0, -1, 0.5f, 0.5f, 0.5f};
    float b[2] = {10, 20};
    float y[4];
    qd_matmul_ref(y, x, w, b, 2, 2, 3);
    QD_CHECK_NEAR(y[0], 1 - 3 + 10, 0);
    QD_CHECK_NEAR(y[1], 3 + 20, 0);
    QD_CHECK_NEAR(y[2], 4 - 6 + 10, 0);
    QD_CHECK_NEAR(y[3], 7.5 + 20, 0);
    qd_matmul_ref(y, x, w, NULL, 2, 2, 3);
    QD_CHECK_NEAR(y[3], 7.5, 0);
}

QD_TEST(rope_inv_freq) {
    double f[64];
    qd_rope_spec s = {.head_dim = 8, .theta = 10000.0, .type = QD_ROPE_DEFAULT};
    qd_rope_inv_freq_ref(f, &s);
    QD_CHECK_NEAR(f[0], 1.0, 0);
    QD_CHECK_NEAR(f[1], 0.1, 1e-15);   /* 10000^(-2/8) */
    QD_CHECK_NEAR(f[3], 1e-3, 1e-17);  /* 10000^(-6/8) */
    s.type = QD_ROPE_LINEAR;
    s.factor = 4.0;
    qd_rope_inv_freq_ref(f, &s);
    QD_CHECK_NEAR(f[1], 0.025, 1e-15);

    /* Llama 3.1's settings; expected values computed independently from transformers'
     * formula: i = 28 is in the high-frequency band (kept), i = 30 in the smoothed band,
     * i = 35 in the low band (divided by 8). */
    qd_rope_spec l3 = {.head_dim = 128, .theta = 500000.0, .type = QD_ROPE_LLAMA3,
                       .factor = 8.0, .low_freq_factor = 1.0, .high_freq_factor = 4.0,
                       .original_max_position_embeddings = 8192};
    qd_rope_inv_freq_ref(f, &l3);
    QD_CHECK_NEAR(f[0], 1.0, 1e-15);
    QD_CHECK_NEAR(f[28], 0.0032114459947525913, 1e-15);
    QD_CHECK_NEAR(f[30], 0.0013718935677611381, 1e-15);
    QD_CHECK_NEAR(f[35], 9.556212353964683e-05, 1e-17);
    QD_CHECK_NEAR(f[63], 3.068925988914511e-07, 1e-19);
}

QD_TEST(rope_apply_pairs_halves) {
    /* head_dim 8: element i pairs with i + 4 (rotate_half), not with i + 1 (interleaved). */
    enum { D = 8, HALF = 4, NPOS = 3 };
    double f[HALF];
    qd_rope_spec s = {.head_dim = D, .theta = 10000.0, .type = QD_ROPE_DEFAULT};
    qd_rope_inv_freq_ref(f, &s);
    float cs[NPOS * HALF], sn[NPOS * HALF];
    qd_rope_table_ref(cs, sn, NPOS, HALF, f);
    QD_CHECK_NEAR(cs[0], 1.0, 0);          /* position 0 */
    QD_CHECK_NEAR(sn[2 * HALF + 1], sin(2 * 0.1), 1e-7);

    /* 3 rows of one sequence (positions 0, 1, 2), 2 heads; x = e_1 in head 0, e_6 in head 1 */
    float x[3 * 2 * D];
    memset(x, 0, sizeof x);
    for (int t = 0; t < 3; t++) {
        x[t * 2 * D + 1] = 1.0f;
        x[t * 2 * D + D + 6] = 1.0f;
    }
    qd_rope_apply_ref(x, 3, 2 * D, 3, 2, D, cs, sn);
    /* position 0 unchanged */
    QD_CHECK_NEAR(x[1], 1.0, 0);
    QD_CHECK_NEAR(x[5], 0.0, 0);
    /* position 2, head 0: e_1 -> cos(0.2) e_1 + sin(0.2) e_5 */
    const float *r2 = x + 2 * 2 * D;
    QD_CHECK_NEAR(r2[1], cos(0.2), 1e-7);
    QD_CHECK_NEAR(r2[5], sin(0.2), 1e-7);
    QD_CHECK_NEAR(r2[2], 0.0, 0);
    /* position 2, head 1: e_6 (second half, i = 2) -> cos(a) e_6 - ... first half gets -sin */
    double a = 2 * 0.01; /* inv_freq[2] = 10000^(-4/8) */
    QD_CHECK_NEAR(r2[D + 6], cos(a), 1e-7);
    QD_CHECK_NEAR(r2[D + 2], -sin(a), 1e-7);
    /* positions restart in each sequence: seq_len 1 -> every row at position 0 */
    float y[2 * D] = {0};
    y[1] = 1.0f;
    y[D + 1] = 1.0f;
    qd_rope_apply_ref(y, 2, D, 1, 1, D, cs, sn);
    QD_CHECK_NEAR(y[D + 1], 1.0, 0);
}

QD_TEST(attention_ref_by_hand) {
    /* One sequence of 2 tokens, 1 head, head_dim 2 (scale 1/sqrt 2). */
    float q[4] = {0, 0, 1, 1};
    float k[4] = {1, 1, 0, 0};
    float v[4] = {2, 4, 6, 8};
    float o[4];
    qd_error err = {0};
    QD_CHECK_OK(qd_attention_ref(o, q, k, v, 1, 2, 1, 1, 2, &err), &err);
    /* token 0 sees only itself */
    QD_CHECK_NEAR(o[0], 2, 1e-6);
    QD_CHECK_NEAR(o[1], 4, 1e-6);
    /* token 1: scores (q1.k0, q1.k1) / sqrt 2 = (sqrt 2, 0) */
    double p0 = exp(sqrt(2.0)) / (exp(sqrt(2.0)) + 1.0);
    QD_CHECK_NEAR(o[2], p0 * 2 + (1 - p0) * 6, 1e-6);
    QD_CHECK_NEAR(o[3], p0 * 4 + (1 - p0) * 8, 1e-6);

    /* GQA: 4 query heads on 2 kv heads; heads 0,1 read kv 0 and heads 2,3 read kv 1. With one
     * token every head returns its kv head's value. */
    float q4[4 * 2] = {0}, k2[2 * 2] = {0}, v2[2 * 2] = {1, 1, 7, 7}, o4[4 * 2];
    QD_CHECK_OK(qd_attention_ref(o4, q4, k2, v2, 1, 1, 4, 2, 2, &err), &err);
    float want[8] = {1, 1, 1, 1, 7, 7, 7, 7};
    for (int i = 0; i < 8; i++) QD_CHECK_NEAR(o4[i], want[i], 0);

    QD_CHECK_EQ_INT(qd_attention_ref(o4, q4, k2, v2, 1, 1, 3, 2, 2, &err), QD_ERR_INVALID_ARG);
}

QD_TEST(attention_is_causal_per_sequence) {
    enum { NSEQ = 2, L = 5, H = 2, KV = 1, D = 4 };
    uint64_t rng = 11;
    float q[NSEQ * L * H * D], k[NSEQ * L * KV * D], v[NSEQ * L * KV * D];
    float o1[NSEQ * L * H * D], o2[NSEQ * L * H * D];
    rt_fill(q, NSEQ * L * H * D, 1.0f, &rng);
    rt_fill(k, NSEQ * L * KV * D, 1.0f, &rng);
    rt_fill(v, NSEQ * L * KV * D, 1.0f, &rng);
    qd_error err = {0};
    QD_CHECK_OK(qd_attention_ref(o1, q, k, v, NSEQ, L, H, KV, D, &err), &err);
    /* change the last key/value of sequence 0: only its last row may change, and nothing of
     * sequence 1 */
    k[(L - 1) * D] += 3.0f;
    v[(L - 1) * D + 1] -= 2.0f;
    QD_CHECK_OK(qd_attention_ref(o2, q, k, v, NSEQ, L, H, KV, D, &err), &err);
    QD_CHECK(memcmp(o1, o2, (L - 1) * H * D * sizeof(float)) == 0);
    QD_CHECK(memcmp(o1 + (L - 1) * H * D, o2 + (L - 1) * H * D, H * D * sizeof(float)) != 0);
    QD_CHECK(memcmp(o1 + L * H * D, o2 + L * H * D, L * H * D * sizeof(float)) == 0);
}

QD_TEST(xtx_ref_by_hand) {
    float x[4] = {1, 2, 3, 4}; /* [2, 2] */
    float h[4] = {1, 0, 0, 1};
    qd_xtx_accum_ref(h, x, 2, 2);
    QD_CHECK_NEAR(h[0], 1 + 1 + 9, 0);
    QD_CHECK_NEAR(h[1], 2 + 12, 0);
    QD_CHECK_NEAR(h[2], 2 + 12, 0);
    QD_CHECK_NEAR(h[3], 1 + 4 + 16, 0);
}

/* ---- cpu against ref ---- */

static int64_t g_seen[1000];

static void mark(void *ctx, int64_t b, int64_t e) {
    (void)ctx;
    for (int64_t i = b; i < e; i++) g_seen[i]++;
}

QD_TEST(parallel_for_covers_each_item_once) {
    int counts[] = {1, 2, 3, 7, 64};
    for (size_t c = 0; c < sizeof counts / sizeof counts[0]; c++) {
        memset(g_seen, 0, sizeof g_seen);
        qd_cpu_parallel_for(counts[c], 1000, mark, NULL);
        int bad = 0;
        for (int i = 0; i < 1000; i++) bad += g_seen[i] != 1;
        QD_CHECK_EQ_INT(bad, 0);
    }
    memset(g_seen, 0, sizeof g_seen);
    qd_cpu_parallel_for(8, 3, mark, NULL); /* more threads than items */
    QD_CHECK(g_seen[0] == 1 && g_seen[1] == 1 && g_seen[2] == 1 && g_seen[3] == 0);
}

static void check_matmul(int64_t m, int64_t n, int64_t k, bool bias, uint64_t seed) {
    uint64_t rng = seed;
    float *x = fmalloc(m * k), *w = fmalloc(n * k), *b = fmalloc(n);
    float *y0 = fmalloc(m * n), *y1 = fmalloc(m * n);
    rt_fill(x, m * k, 1.0f, &rng);
    rt_fill(w, n * k, 0.1f, &rng);
    rt_fill(b, n, 1.0f, &rng);
    qd_matmul_ref(y0, x, w, bias ? b : NULL, m, n, k);
    qd_matmul_cpu(y1, x, w, bias ? b : NULL, m, n, k);
    double tol = 1e-5 * rt_max_abs(y0, m * n) + 1e-6;
    QD_CHECK_MSG(rt_max_abs_diff(y0, y1, m * n) <= tol, "matmul %lldx%lldx%lld: %g > %g",
                 (long long)m, (long long)n, (long long)k, rt_max_abs_diff(y0, y1, m * n), tol);
    free(x);
    free(w);
    free(b);
    free(y0);
    free(y1);
}

QD_TEST(matmul_cpu_matches_ref) {
    check_matmul(1, 1, 1, false, 1);
    check_matmul(37, 53, 129, true, 2);
    check_matmul(64, 96, 352, false, 3);
    check_matmul(5, 300, 17, true, 4);
}

static void check_attention(int64_t n_seq, int64_t L, int H, int KV, int D, uint64_t seed) {
    uint64_t rng = seed;
    int64_t T = n_seq * L;
    float *q = fmalloc(T * H * D), *k = fmalloc(T * KV * D), *v = fmalloc(T * KV * D);
    float *o0 = fmalloc(T * H * D), *o1 = fmalloc(T * H * D);
    rt_fill(q, T * H * D, 2.0f, &rng);
    rt_fill(k, T * KV * D, 2.0f, &rng);
    rt_fill(v, T * KV * D, 1.0f, &rng);
    qd_error err = {0};
    QD_CHECK_OK(qd_attention_ref(o0, q, k, v, n_seq, L, H, KV, D, &err), &err);
    QD_CHECK_OK(qd_attention_cpu(o1, q, k, v, n_seq, L, H, KV, D, &err), &err);
    double tol = 1e-5 * rt_max_abs(o0, T * H * D) + 1e-6;
    double d = rt_max_abs_diff(o0, o1, T * H * D);
    QD_CHECK_MSG(d <= tol, "attention seq %lld x %lld, %d/%d heads of %d: %g > %g",
                 (long long)n_seq, (long long)L, H, KV, D, d, tol);
    free(q);
    free(k);
    free(v);
    free(o0);
    free(o1);
}

QD_TEST(attention_cpu_matches_ref) {
    check_attention(1, 1, 1, 1, 2, 5);
    check_attention(3, 17, 4, 2, 8, 6);
    check_attention(2, 64, 8, 4, 16, 7);
    check_attention(5, 9, 6, 1, 10, 8); /* multi-query */
    qd_error err = {0};
    float z = 0;
    QD_CHECK_EQ_INT(qd_attention_cpu(&z, &z, &z, &z, 1, 1, 4, 3, 2, &err), QD_ERR_INVALID_ARG);
}

QD_TEST(attention_cpu_thread_counts_agree) {
    enum { NSEQ = 3, L = 21, H = 4, KV = 2, D = 8 };
    int64_t T = NSEQ * L;
    uint64_t rng = 99;
    float *q = fmalloc(T * H * D), *k = fmalloc(T * KV * D), *v = fmalloc(T * KV * D);
    float *o1 = fmalloc(T * H * D), *o3 = fmalloc(T * H * D);
    rt_fill(q, T * H * D, 1.0f, &rng);
    rt_fill(k, T * KV * D, 1.0f, &rng);
    rt_fill(v, T * KV * D, 1.0f, &rng);
    qd_error err = {0};
    int saved = qd_cpu_threads();
    qd_cpu_set_threads(1);
    QD_CHECK_OK(qd_attention_cpu(o1, q, k, v, NSEQ, L, H, KV, D, &err), &err);
    qd_cpu_set_threads(3);
    QD_CHECK_OK(qd_attention_cpu(o3, q, k, v, NSEQ, L, H, KV, D, &err), &err);
    qd_cpu_set_threads(saved);
    /* each (sequence, head) is computed by one thread in a fixed order: identical bits */
    QD_CHECK(memcmp(o1, o3, (size_t)(T * H * D) * sizeof(float)) == 0);
    free(q);
    free(k);
    free(v);
    free(o1);
    free(o3);
}

QD_TEST(row_ops_cpu_bit_identical) {
    enum { N = 301, D = 96, H = 3, HD = 32 };
    uint64_t rng = 21;
    float *x = fmalloc(N * D), *w = fmalloc(D), *y0 = fmalloc(N * D), *y1 = fmalloc(N * D);
    rt_fill(x, N * D, 3.0f, &rng);
    rt_fill(w, D, 1.0f, &rng);
    qd_rmsnorm_ref(y0, x, w, N, D, 1e-5);
    qd_rmsnorm_cpu(y1, x, w, N, D, 1e-5);
    QD_CHECK(memcmp(y0, y1, sizeof(float) * N * D) == 0);

    double f[HD / 2];
    qd_rope_spec s = {.head_dim = HD, .theta = 10000.0};
    qd_rope_inv_freq_ref(f, &s);
    float *cs = fmalloc(50 * HD / 2), *sn = fmalloc(50 * HD / 2);
    qd_rope_table_ref(cs, sn, 50, HD / 2, f);
    memcpy(y0, x, sizeof(float) * N * D);
    memcpy(y1, x, sizeof(float) * N * D);
    qd_rope_apply_ref(y0, N, D, 50, H, HD, cs, sn);
    qd_rope_apply_cpu(y1, N, D, 50, H, HD, cs, sn);
    QD_CHECK(memcmp(y0, y1, sizeof(float) * N * D) == 0);
    QD_CHECK(memcmp(y0, x, sizeof(float) * N * D) != 0);

    qd_silu_mul_ref(y0, x, w, D);
    qd_silu_mul_cpu(y1, x, w, D);
    QD_CHECK(memcmp(y0, y1, sizeof(float) * D) == 0);
    float *big = fmalloc(N * D);
    qd_silu_mul_ref(big, x, y1, N * D);
    qd_silu_mul_cpu(y0, x, y1, N * D);
    QD_CHECK(memcmp(big, y0, sizeof(float) * N * D) == 0);
    free(big);
    free(cs);
    free(sn);
    free(x);
    free(w);
    free(y0);
    free(y1);
}

QD_TEST(xtx_cpu_matches_ref) {
    enum { N = 77, K = 40 };
    uint64_t rng = 5;
    float *x = fmalloc(N * K), *h0 = fmalloc(K * K), *h1 = fmalloc(K * K);
    rt_fill(x, N * K, 1.0f, &rng);
    rt_fill(h0, K * K, 0.0f, &rng); /* zeros */
    for (int i = 0; i < K; i++) h0[i * K + i] = 1.0f;
    memcpy(h1, h0, sizeof(float) * K * K);
    qd_xtx_accum_ref(h0, x, N, K);
    qd_xtx_accum_cpu(h1, x, N, K);
    QD_CHECK(rt_max_abs_diff(h0, h1, K * K) <= 1e-5 * rt_max_abs(h0, K * K));
    int asym = 0;
    for (int a = 0; a < K; a++)
        for (int b = 0; b < K; b++) asym += h1[a * K + b] != h1[b * K + a];
    QD_CHECK_EQ_INT(asym, 0);
    free(x);
    free(h0);
    free(h1);
}

QD_TEST_MAIN()
