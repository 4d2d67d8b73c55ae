/*
 * awq.cu - the heavy parts of AWQ's searches on the GPU (quantizers/awq.h describes the
 * method): the fake quantization Q(w * s) / s, the scale search's loss for one linear
 * (fake-quantize, GEMM, squared-error reduction), and auto_clip's search over shrink factors.
 *
 * DESIGN
 *   fake quant  one warp per (row, group), the statistics of the scaled values, quant.h's
 *               parameters and codes, the dequantized value divided back by s: the same
 *               float operations as qd_awq_fake_quant (w * s, RTN, / s), so bit-identical.
 *   loss        the fake-quantized weight into scratch, one cuBLAS SGEMM for x wq^T, and a
 *               two-stage reduction of (y - y_ref)^2 in double (per-block partials, then one
 *               block adds them in order): deterministic, one number back to the host.
 *   clip        per input group, every (shrink factor, row) pair at once: a warp per pair
 *               clamps the row's group to +-max|w| * f, fake-quantizes it and writes the
 *               difference to the unclipped weights; ONE GEMM multiplies the group's inputs
 *               by all n_shrink * n differences; a thread per column sums its squares over
 *               the tokens in order (double); a thread per row keeps the first smallest mean,
 *               as the CPU's loop does. The CPU's per-shrink GEMMs become one wide GEMM.
 * The GEMMs sum in a different order than OpenBLAS, so losses agree to float rounding and a
 * clip choice between two almost equal candidates can differ; the test checks that the
 * chosen bounds give the same output error.
 */
#include <limits.h>
#include <math.h>

#include "cuda_internal.cuh"

/* ---- fake quantization ---------------------------------------------------------------------- */

struct fq_args {
    const float *w;     /* [n, ld] */
    const float *s;     /* [k] column scales, or NULL */
    int64_t n, k, ld, gs, ng;
    int bits;
    qd_qrule rule;
    qd_dtype sdt;
    float *out;         /* [n, k] */
};

__global__ void __launch_bounds__(QD_CUDA_THREADS) fake_quant_kernel(fq_args a) {
    const int lane = threadIdx.x & 31;
    const int64_t n_warps = ((int64_t)gridDim.x * blockDim.x) >> 5;
    for (int64_t gi = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5; gi < a.n * a.ng;
         gi += n_warps) {
        const int64_t r = gi / a.ng, c0 = gi % a.ng * a.gs;
        const float *x = a.w + r * a.ld + c0;
        float lo = INFINITY, hi = -INFINITY;
        for (int64_t i = lane; i < a.gs; i += 32) {
            float v = a.s ? __fmul_rn(x[i], a.s[c0 + i]) : x[i];
            lo = v < lo ? v : lo;
            hi = v > hi ? v : hi;
        }
        qd_qparams p = qd_quant_params(a.rule, a.bits, qd_warp_stats(lo, hi), a.sdt);
        for (int64_t i = lane; i < a.gs; i += 32) {
            float v = a.s ? __fmul_rn(x[i], a.s[c0 + i]) : x[i];
            float q = qd_quant_dequant(p, qd_quant_code(a.rule, a.bits, p, v));
            a.out[r * a.k + c0 + i] = a.s ? __fdiv_rn(q, a.s[c0 + i]) : q;
        }
    }
}

static qd_err check_quant(int64_t n, int64_t k, int bits, int64_t gs, qd_qrule rule,
                          qd_dtype sdt, const char *what, qd_error *err) {
    if (n < 1 || k < 1 || bits < QD_QUANT_MIN_BITS || bits > QD_QUANT_MAX_BITS ||
        !qd_qrule_valid((int)rule) || gs < 1 || k % gs != 0 ||
        (sdt != QD_DTYPE_F32 && sdt != QD_DTYPE_F16 && sdt != QD_DTYPE_BF16))
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda awq %s: bad arguments ([%lld, %lld], "
                            "%d bits, group %lld, rule %d, scale dtype %d)", what, (long long)n,
                            (long long)k, bits, (long long)gs, (int)rule, (int)sdt);
    return QD_OK;
}

static unsigned group_blocks(const qd_cuda *c, int64_t groups) {
    int64_t want = (groups + QD_CUDA_THREADS / 32 - 1) / (QD_CUDA_THREADS / 32);
    int64_t cap = (int64_t)c->n_sm * 32;
    return (unsigned)(want < 1 ? 1 : want > cap ? cap : want);
}

extern "C" qd_err qd_awq_fake_quant_cuda(qd_cuda *c, const float *w, int64_t n, int64_t k,
                                         const float *s, int bits, int64_t group_size,
                                         qd_qrule rule, qd_dtype scale_dtype, float *ret,
                                         qd_error *err) {
    qd_err rc = qd_cuda_usable(c, err);
    if (rc) return rc;
    if ((rc = check_quant(n, k, bits, group_size, rule, scale_dtype, "fake quant", err)))
        return rc;
    fq_args a = {w, s, n, k, k, group_size, k / group_size, bits, rule, scale_dtype, ret};
    fake_quant_kernel<<<group_blocks(c, n * a.ng), QD_CUDA_THREADS, 0, c->stream>>>(a);
    QD_CU_LAUNCHED(c, err, "fake_quant_kernel");
    return QD_OK;
fail:
    return rc;
}

/* ---- the scale search's loss ----------------------------------------------------------------- */

#define SSE_BLOCKS 1024

/* partial[b] = sum over this block's share of (y - y_ref)^2 (y_ref NULL: 0), in double. */
__global__ void __launch_bounds__(QD_CUDA_THREADS)
    sse_partial_kernel(const float *y, const float *y_ref, int64_t n, double *partial) {
    __shared__ double part[QD_CUDA_THREADS / 32];
    double acc = 0.0;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        double d = (double)y[i] - (y_ref ? y_ref[i] : 0.0f);
        acc += d * d;
    }
    acc = qd_warp_sum_d(acc);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = acc;
    __syncthreads();
    if (threadIdx.x == 0) {
        double t = 0.0;
        for (int i = 0; i < (int)(blockDim.x >> 5); i++) t += part[i];
        partial[blockIdx.x] = t;
    }
}

/* *sum = partial[0] + ... + partial[n - 1] in order (one thread: n is small). */
__global__ void sum_in_order_kernel(const double *partial, int n, double *sum) {
    double t = 0.0;
    for (int i = 0; i < n; i++) t += partial[i];
    *sum = t;
}

extern "C" qd_err qd_awq_loss_cuda(qd_cuda *c, const float *x, int64_t n_tok, const float *w,
                                   int64_t n, int64_t k, const float *s, int bits,
                                   int64_t group_size, qd_qrule rule, qd_dtype scale_dtype,
                                   const float *y_ref, double *ret_sse, qd_error *err) {
    qd_err rc = qd_cuda_usable(c, err);
    float *wq = NULL, *y = NULL;
    double *partial = NULL;
    double sse = 0.0;
    unsigned blocks;
    if (rc) return rc;
    if (n_tok < 1)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda awq loss: no tokens");
    blocks = qd_cuda_blocks(n_tok * n, QD_CUDA_THREADS);
    if (blocks > SSE_BLOCKS) blocks = SSE_BLOCKS;
    if ((rc = qd_cuda_scratch(c, (size_t)(n * k) * sizeof(float), (void **)&wq,
                              "the fake-quantized weight", err)) ||
        (rc = qd_cuda_scratch(c, (size_t)(n_tok * n) * sizeof(float), (void **)&y,
                              "the candidate output", err)) ||
        (rc = qd_cuda_scratch(c, (blocks + 1) * sizeof(double), (void **)&partial,
                              "the loss partials", err)) ||
        (rc = qd_awq_fake_quant_cuda(c, w, n, k, s, bits, group_size, rule, scale_dtype, wq,
                                     err)) ||
        (rc = qd_matmul_cuda(c, y, x, wq, NULL, n_tok, n, k, err)))
        goto fail;
    sse_partial_kernel<<<blocks, QD_CUDA_THREADS, 0, c->stream>>>(y, y_ref, n_tok * n, partial);
    QD_CU_LAUNCHED(c, err, "sse_partial_kernel");
    sum_in_order_kernel<<<1, 1, 0, c->stream>>>(partial, (int)blocks, partial + blocks);
    QD_CU_LAUNCHED(c, err, "sum_in_order_kernel");
    QD_CU_TRY(c, err, cudaMemcpyAsync(&sse, partial + blocks, sizeof sse,
                                      cudaMemcpyDeviceToHost, c->stream));
    QD_CU_TRY(c, err, cudaStreamSynchronize(c->stream));
    *ret_sse = sse;
fail:
    qd_cuda_scratch_free(c, wq);
    qd_cuda_scratch_free(c, y);
    qd_cuda_scratch_free(c, partial);
    return rc;
}

extern "C" qd_err qd_sq_diff_cuda(qd_cuda *c, const float *a, const float *b, int64_t n,
                                  double *ret, qd_error *err) {
    qd_err rc = qd_cuda_usable(c, err);
    double *partial = NULL;
    double sum = 0.0;
    unsigned blocks;
    if (rc) return rc;
    *ret = 0.0;
    if (n <= 0) return QD_OK;
    blocks = qd_cuda_blocks(n, QD_CUDA_THREADS);
    if (blocks > SSE_BLOCKS) blocks = SSE_BLOCKS;
    if ((rc = qd_cuda_scratch(c, (blocks + 1) * sizeof(double), (void **)&partial,
                              "the squared-difference partials", err)))
        goto fail;
    sse_partial_kernel<<<blocks, QD_CUDA_THREADS, 0, c->stream>>>(a, b, n, partial);
    QD_CU_LAUNCHED(c, err, "sse_partial_kernel");
    sum_in_order_kernel<<<1, 1, 0, c->stream>>>(partial, (int)blocks, partial + blocks);
    QD_CU_LAUNCHED(c, err, "sum_in_order_kernel");
    QD_CU_TRY(c, err, cudaMemcpyAsync(&sum, partial + blocks, sizeof sum,
                                      cudaMemcpyDeviceToHost, c->stream));
    QD_CU_TRY(c, err, cudaStreamSynchronize(c->stream));
    *ret = sum;
fail:
    qd_cuda_scratch_free(c, partial);
    return rc;
}

/* ---- auto_clip ------------------------------------------------------------------------------- */

struct clip_args {
    const float *w;     /* [n, k] */
    int64_t n, k, c0, g;
    int n_shrink, n_grid;
    int bits;
    qd_qrule rule;
    qd_dtype sdt;
    float *diff;        /* [n_shrink * n, g]: Q(clamp(w_g, +-m)) - w_g */
    float *bound;       /* [n_shrink * n]: the m of each (shrink, row) */
};

/* One warp per (shrink i, row r): m = max|w_g| * (1 - i / n_grid) as the CPU rounds it. */
__global__ void __launch_bounds__(QD_CUDA_THREADS) clip_candidates_kernel(clip_args a) {
    const int lane = threadIdx.x & 31;
    const int64_t n_warps = ((int64_t)gridDim.x * blockDim.x) >> 5;
    for (int64_t id = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
         id < (int64_t)a.n_shrink * a.n; id += n_warps) {
        const int i = (int)(id / a.n);
        const int64_t r = id % a.n;
        const float *wg = a.w + r * a.k + a.c0; /* [g] */
        float mx = 0.0f;
        for (int64_t j = lane; j < a.g; j += 32) mx = fabsf(wg[j]) > mx ? fabsf(wg[j]) : mx;
        mx = qd_warp_max(mx);
        const double f = 1.0 - (double)i / a.n_grid;
        const float m = (float)(mx * f);
        float lo = INFINITY, hi = -INFINITY;
        for (int64_t j = lane; j < a.g; j += 32) {
            float v = wg[j];
            v = v > m ? m : (v < -m ? -m : v);
            lo = v < lo ? v : lo;
            hi = v > hi ? v : hi;
        }
        qd_qparams p = qd_quant_params(a.rule, a.bits, qd_warp_stats(lo, hi), a.sdt);
        for (int64_t j = lane; j < a.g; j += 32) {
            float v = wg[j];
            float cl = v > m ? m : (v < -m ? -m : v);
            float q = qd_quant_dequant(p, qd_quant_code(a.rule, a.bits, p, cl));
            a.diff[id * a.g + j] = __fsub_rn(q, v);
        }
        if (lane == 0) a.bound[id] = m;
    }
}

/* acc[col] = sum over tokens of e[t, col]^2, in token order (double). */
__global__ void col_sumsq_kernel(const float *e, int64_t n_tok, int64_t cols, double *acc) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t col = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; col < cols;
         col += stride) {
        double s = 0.0;
        for (int64_t t = 0; t < n_tok; t++) {
            double v = e[t * cols + col];
            s += v * v;
        }
        acc[col] = s;
    }
}

/* ret_max[r, gi] = the bound with the smallest mean error, the first on ties (the CPU's
 * strict < from a start of 1e9); shrink 0 (no clip) is the default. */
__global__ void clip_choose_kernel(const double *acc, const float *bound, int64_t n,
                                   int n_shrink, int64_t n_tok, int64_t ng, int64_t gi,
                                   float *ret_max) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t r = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; r < n; r += stride) {
        double best = 1e9;
        float m = bound[r];
        for (int i = 0; i < n_shrink; i++) {
            double e = acc[(int64_t)i * n + r] / (double)n_tok;
            if (e < best) {
                best = e;
                m = bound[(int64_t)i * n + r];
            }
        }
        ret_max[r * ng + gi] = m;
    }
}

extern "C" qd_err qd_awq_clip_search_cuda(qd_cuda *c, const float *w, int64_t n, int64_t k,
                                          const float *x, int64_t n_tok, int bits,
                                          int64_t group_size, qd_qrule rule,
                                          qd_dtype scale_dtype, double max_shrink,
                                          int clip_n_grid, float *ret_max, qd_error *err) {
    qd_err rc = qd_cuda_usable(c, err);
    float *diff = NULL, *bound = NULL, *e = NULL;
    double *acc = NULL;
    int n_shrink;
    int64_t ng, cols;
    const float alpha = 1.0f, beta = 0.0f;
    if (rc) return rc;
    if ((rc = check_quant(n, k, bits, group_size, rule, scale_dtype, "clip", err))) return rc;
    if (n_tok < 1 || clip_n_grid < 1 || !(max_shrink >= 0 && max_shrink < 1))
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda awq clip: %lld tokens, grid %d, "
                            "max_shrink %g", (long long)n_tok, clip_n_grid, max_shrink);
    /* AutoAWQ: range(int(max_shrink * n_grid)); shrink 0 (no clip) is always the first */
    n_shrink = (int)(max_shrink * clip_n_grid);
    if (n_shrink < 1) n_shrink = 1;
    ng = k / group_size;
    cols = (int64_t)n_shrink * n;
    if (cols > INT_MAX || n_tok > INT_MAX || group_size > INT_MAX)
        return qd_error_set(err, QD_ERR_UNSUPPORTED, "cuda awq clip: %lld candidates x %lld "
                            "tokens is beyond one GEMM", (long long)cols, (long long)n_tok);
    if ((rc = qd_cuda_scratch(c, (size_t)(cols * group_size) * sizeof(float), (void **)&diff,
                              "the clip candidates", err)) ||
        (rc = qd_cuda_scratch(c, (size_t)cols * sizeof(float), (void **)&bound,
                              "the clip bounds", err)) ||
        (rc = qd_cuda_scratch(c, (size_t)(n_tok * cols) * sizeof(float), (void **)&e,
                              "the clip errors", err)) ||
        (rc = qd_cuda_scratch(c, (size_t)cols * sizeof(double), (void **)&acc,
                              "the clip sums", err)))
        goto fail;
    for (int64_t gi = 0; gi < ng; gi++) {
        clip_args a = {w, n, k, gi * group_size, group_size, n_shrink, clip_n_grid, bits,
                       rule, scale_dtype, diff, bound};
        clip_candidates_kernel<<<group_blocks(c, cols), QD_CUDA_THREADS, 0, c->stream>>>(a);
        QD_CU_LAUNCHED(c, err, "clip_candidates_kernel");
        /* e [n_tok, cols] = x[:, c0:c0+g] diff^T (row-major, as qd_matmul_cuda reads it) */
        QD_CUBLAS_TRY(c, err, cublasSgemm(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)cols,
                                          (int)n_tok, (int)group_size, &alpha, diff,
                                          (int)group_size, x + gi * group_size, (int)k, &beta,
                                          e, (int)cols));
        col_sumsq_kernel<<<qd_cuda_blocks(cols, QD_CUDA_THREADS), QD_CUDA_THREADS, 0,
                           c->stream>>>(e, n_tok, cols, acc);
        QD_CU_LAUNCHED(c, err, "col_sumsq_kernel");
        clip_choose_kernel<<<qd_cuda_blocks(n, QD_CUDA_THREADS), QD_CUDA_THREADS, 0,
                             c->stream>>>(acc, bound, n, n_shrink, n_tok, ng, gi, ret_max);
        QD_CU_LAUNCHED(c, err, "clip_choose_kernel");
    }
    rc = QD_OK;
fail:
    qd_cuda_scratch_free(c, diff);
    qd_cuda_scratch_free(c, bound);
    qd_cuda_scratch_free(c, e);
    qd_cuda_scratch_free(c, acc);
    return rc;
}
