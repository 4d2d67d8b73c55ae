/*
 * ops.h - the dense fp32 ops of the model runtime, in two versions.
 *
 *   qd_*_ref  kernels/ref/  plain C, single-threaded, double accumulation where it is cheap.
 *                           These define the result; they are written to be read.
 *   qd_*_cpu  kernels/cpu/  the fast versions: GEMM through cblas_sgemm (OpenBLAS, one thread
 *                           per call, the calls split across quantd's pthreads), attention and
 *                           the row ops threaded with pthreads.
 *
 * Conventions shared by every op:
 *   - matrices are row-major fp32;
 *   - a token batch holds T = n_seq * seq_len rows; sequence s owns rows [s*seq_len, (s+1)*seq_len)
 *     and the token in row t sits at position t % seq_len of its sequence;
 *   - a linear layer's weight is in the Hugging Face layout W [n_out, n_in], so y = x W^T + b.
 *
 * The cpu versions agree with ref within float rounding (the tolerances are stated and checked
 * in tests/runtime/test-kernels.c). Thread count: qd_cpu_set_threads(); by default every
 * online CPU is used.
 */
#ifndef QD_OPS_H
#define QD_OPS_H

#include <stdint.h>

#include "error.h"
#include "hf_config.h" /* qd_rope_type */

/* ---- rotary embedding parameters ---- */

/* Everything that decides the rotary frequencies (a subset of the model config). */
typedef struct qd_rope_spec {
    int head_dim;          /* even; pairs are (i, i + head_dim/2) (HF rotate_half) */
    double theta;          /* rope_theta */
    qd_rope_type type;     /* default, linear or llama3 scaling */
    double factor;         /* linear and llama3 */
    double low_freq_factor, high_freq_factor;   /* llama3 */
    int original_max_position_embeddings;       /* llama3 */
} qd_rope_spec;

/* inv_freq[i] = theta^(-2i/head_dim) for i < head_dim/2, then adjusted for the scaling type:
 * linear divides every frequency by factor (the same as dividing positions by it); llama3
 * follows transformers' _compute_llama3_parameters (long wavelengths divided by factor, short
 * ones kept, the band between interpolated smoothly).
 * inv_freq: [head_dim/2] */
void qd_rope_inv_freq_ref(double *inv_freq, const qd_rope_spec *spec);

/* cos_t/sin_t [n_pos, half]: cos(p * inv_freq[i]), sin(p * inv_freq[i]) for p < n_pos,
 * computed in double and rounded once. */
void qd_rope_table_ref(float *cos_t, float *sin_t, int64_t n_pos, int half,
                       const double *inv_freq);

/* Rotate n_heads heads of each of n_tok rows in place (HF rotate_half convention):
 *   x'[i]        = x[i] cos - x[i+half] sin
 *   x'[i + half] = x[i+half] cos + x[i] sin,     i < half = head_dim/2.
 * x: [n_tok, row_stride], heads contiguous from column 0, head h at columns h*head_dim...;
 * the row's position is t % seq_len. cos_t/sin_t as made by qd_rope_table_ref (>= seq_len
 * positions). */
void qd_rope_apply_ref(float *x, int64_t n_tok, int64_t row_stride, int64_t seq_len,
                       int n_heads, int head_dim, const float *cos_t, const float *sin_t);

/* ---- reference ops ---- */

/* y = x / sqrt(mean(x^2) + eps) * w per row. x, y: [n, d] (y may be x); w: [d]. */
void qd_rmsnorm_ref(float *y, const float *x, const float *w, int64_t n, int64_t d, double eps);

/* Numerically stable softmax of x[0..n-1] in place (n >= 1). */
void qd_softmax_ref(float *x, int64_t n);

/* out[i] = silu(gate[i]) * up[i], silu(g) = g / (1 + exp(-g)). out may alias gate or up. */
void qd_silu_mul_ref(float *out, const float *gate, const float *up, int64_t n);

/* y [m, n] = x [m, k] * W^T, W [n, k], plus bias [n] when bias is not NULL.
 * Accumulates each dot product in double. */
void qd_matmul_ref(float *y, const float *x, const float *w, const float *bias, int64_t m,
                   int64_t n, int64_t k);

/* Causal scaled-dot-product attention with grouped-query heads.
 *   q   [n_seq*seq_len, n_heads*head_dim]
 *   k,v [n_seq*seq_len, n_kv_heads*head_dim]
 *   out [n_seq*seq_len, n_heads*head_dim]   (must not alias q, k or v)
 * Query head h reads kv head h / (n_heads / n_kv_heads); query i of a sequence attends to keys
 * 0..i of the same sequence; scores are scaled by 1/sqrt(head_dim).
 * Fails only with QD_ERR_NOMEM (scratch of seq_len doubles) or QD_ERR_INVALID_ARG (heads not
 * divisible). */
qd_err qd_attention_ref(float *out, const float *q, const float *k, const float *v,
                        int64_t n_seq, int64_t seq_len, int n_heads, int n_kv_heads,
                        int head_dim, qd_error *err);

/* h [k, k] += x^T x for x [n, k] (all of h is written, it stays symmetric). */
void qd_xtx_accum_ref(float *h, const float *x, int64_t n, int64_t k);

/* ---- cpu ops (threads + BLAS) ---- */

/* Threads used by the cpu ops (OpenBLAS runs single-threaded inside them); n <= 0 means every
 * online CPU. Set it before running work, not while ops run on other threads. */
void qd_cpu_set_threads(int n);
int qd_cpu_threads(void);

/* Run fn(ctx, begin, end) over [0, n_items) split into at most n_threads contiguous ranges,
 * one thread each (the caller runs the first range). n_threads <= 0 means qd_cpu_threads().
 * If a thread cannot be started its range runs on the calling thread instead. */
void qd_cpu_parallel_for(int n_threads, int64_t n_items,
                         void (*fn)(void *ctx, int64_t begin, int64_t end), void *ctx);

/* Same contract as qd_matmul_ref; fp32 accumulation through single-threaded cblas_sgemm calls
 * on output tiles sized from (m, n) only, spread over threads: the bits do not depend on the
 * thread count. */
void qd_matmul_cpu(float *y, const float *x, const float *w, const float *bias, int64_t m,
                   int64_t n, int64_t k);

/* Same contract as qd_attention_ref; float accumulation, threaded over (sequence, head)
 * pairs, scratch of seq_len floats per thread (never a [seq_len, seq_len] matrix). */
qd_err qd_attention_cpu(float *out, const float *q, const float *k, const float *v,
                        int64_t n_seq, int64_t seq_len, int n_heads, int n_kv_heads,
                        int head_dim, qd_error *err);

/* Same contract as qd_rmsnorm_ref, threaded over rows. */
void qd_rmsnorm_cpu(float *y, const float *x, const float *w, int64_t n, int64_t d, double eps);

/* Same contract as qd_rope_apply_ref, threaded over rows. */
void qd_rope_apply_cpu(float *x, int64_t n_tok, int64_t row_stride, int64_t seq_len,
                       int n_heads, int head_dim, const float *cos_t, const float *sin_t);

/* Same contract as qd_silu_mul_ref, threaded. */
void qd_silu_mul_cpu(float *out, const float *gate, const float *up, int64_t n);

/* Same contract as qd_xtx_accum_ref, fp32 accumulation through cblas_sgemm on column blocks
 * of the upper triangle, split over threads, then mirrored. */
void qd_xtx_accum_cpu(float *h, const float *x, int64_t n, int64_t k);

#endif /* QD_OPS_H */
