/*
 * ops.cu - the model runtime's dense ops on the GPU (ops.h contracts): GEMMs through cuBLAS,
 * X^T X, RMSNorm, rotary embedding, SiLU*up, causal grouped-query attention, dtype
 * conversion, and the per-channel activation statistics of calibration.
 *
 * DESIGN
 *   GEMM     quantd's row-major y [m, n] = x [m, k] W^T is, read column-major, y^T = W x^T:
 *            one cublasSgemm with W transposed (lda k) and x as is (ldb k), ldc n. The bias
 *            is broadcast into y first and the GEMM adds to it (beta 1). fp32 without TF32;
 *            bf16/fp16 operands go through cublasGemmEx with fp32 compute and output.
 *   X^T X    cublasSsyrk fills one triangle (column-major upper = row-major lower), a small
 *            kernel mirrors it, so all of h is written as the contract says.
 *   RMSNorm  one block per row; the sum of squares in double like ref.
 *   RoPE     one thread per rotated pair; __fmul_rn/__fadd_rn/__fsub_rn spell ref's float
 *            operations exactly (no FMA), so the result is bit-identical.
 *   SiLU     double arithmetic like ref, rounded once.
 *   Attention one block per (8 consecutive queries, head, sequence), a warp per query; the
 *            block streams the keys it needs through shared memory in tiles of 32 and each
 *            warp keeps an online softmax (running max and sum, fp32) and its output row in
 *            registers, so nothing of size seq_len^2 exists. Lane j scores key j of the tile
 *            (the K tile row pitch is head_dim + 1 so those reads hit distinct banks).
 *   Stats    blocks own 256 channels x a chunk of tokens; sums go to per-chunk partials in
 *            double and a second pass adds the chunks in order (deterministic), maxima of
 *            |x| >= 0 go straight to max_abs with an integer atomicMax on the float bits (for
 *            non-negative floats the integer order is the float order).
 */
#include <limits.h>
#include <math.h>

#include "cuda_internal.cuh"

static qd_err check_int_dims(int64_t a, int64_t b, int64_t c, const char *what,
                             qd_error *err) {
    if (a < 0 || b < 0 || c < 0 || a > INT_MAX || b > INT_MAX || c > INT_MAX)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda %s: dimensions %lld x %lld x %lld "
                            "outside cuBLAS's int range", what, (long long)a, (long long)b,
                            (long long)c);
    return QD_OK;
}

/* ---- GEMM ---------------------------------------------------------------------------------- */

/* y [m, n] = bias broadcast over the rows. */
__global__ void bias_rows_kernel(float *y, const float *bias, int64_t m, int64_t n) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < m * n; i += stride)
        y[i] = bias[i % n];
}

/* Bias into y (beta 1 after) or nothing (beta 0). */
static qd_err prepare_bias(qd_cuda *c, float *y, const float *bias, int64_t m, int64_t n,
                           float *beta, qd_error *err) {
    qd_err rc = QD_OK;
    *beta = 0.0f;
    if (!bias) return QD_OK;
    bias_rows_kernel<<<qd_cuda_blocks(m * n, QD_CUDA_THREADS), QD_CUDA_THREADS, 0,
                       c->stream>>>(y, bias, m, n);
    QD_CU_LAUNCHED(c, err, "bias_rows_kernel");
    *beta = 1.0f;
    return QD_OK;
fail:
    return rc;
}

extern "C" qd_err qd_matmul_cuda(qd_cuda *c, float *y, const float *x, const float *w,
                                 const float *bias, int64_t m, int64_t n, int64_t k,
                                 qd_error *err) {
    qd_err rc = qd_cuda_usable(c, err);
    const float alpha = 1.0f;
    float beta = 0.0f;
    if (rc) return rc;
    if ((rc = check_int_dims(m, n, k, "matmul", err))) return rc;
    if (m == 0 || n == 0) return QD_OK;
    if ((rc = prepare_bias(c, y, bias, m, n, &beta, err))) return rc;
    QD_CUBLAS_TRY(c, err, cublasSgemm(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)n, (int)m, (int)k,
                                      &alpha, w, (int)k, x, (int)k, &beta, y, (int)n));
    return QD_OK;
fail:
    return rc;
}

extern "C" qd_err qd_matmul_lp_cuda(qd_cuda *c, float *y, const void *x, const void *w,
                                    qd_dtype dt, const float *bias, int64_t m, int64_t n,
                                    int64_t k, qd_error *err) {
    qd_err rc = qd_cuda_usable(c, err);
    const float alpha = 1.0f;
    float beta = 0.0f;
    cudaDataType_t t;
    if (rc) return rc;
    if (dt == QD_DTYPE_BF16)
        t = CUDA_R_16BF;
    else if (dt == QD_DTYPE_F16)
        t = CUDA_R_16F;
    else
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda matmul: operand dtype %d is not F16 "
                            "or BF16", (int)dt);
    if ((rc = check_int_dims(m, n, k, "matmul", err))) return rc;
    if (m == 0 || n == 0) return QD_OK;
    if ((rc = prepare_bias(c, y, bias, m, n, &beta, err))) return rc;
    QD_CUBLAS_TRY(c, err, cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)n, (int)m,
                                       (int)k, &alpha, w, t, (int)k, x, t, (int)k, &beta, y,
                                       CUDA_R_32F, (int)n, CUBLAS_COMPUTE_32F,
                                       CUBLAS_GEMM_DEFAULT));
    return QD_OK;
fail:
    return rc;
}

/* ---- conversion ---------------------------------------------------------------------------- */

static __device__ float load_as_f32(const void *p, qd_dtype t, int64_t i) {
    if (t == QD_DTYPE_F16) return qd_fp16_to_fp32(((const uint16_t *)p)[i]);
    if (t == QD_DTYPE_BF16) return qd_bf16_to_fp32(((const uint16_t *)p)[i]);
    return ((const float *)p)[i];
}

__global__ void convert_kernel(void *dst, qd_dtype dt, const void *src, qd_dtype st,
                               int64_t n) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        float v = load_as_f32(src, st, i);
        if (dt == QD_DTYPE_F16)
            ((uint16_t *)dst)[i] = qd_fp32_to_fp16(v);
        else if (dt == QD_DTYPE_BF16)
            ((uint16_t *)dst)[i] = qd_fp32_to_bf16(v);
        else if (dt == QD_DTYPE_F8_E4M3)
            ((uint8_t *)dst)[i] = qd_fp32_to_e4m3(v);
        else
            ((float *)dst)[i] = v;
    }
}

extern "C" qd_err qd_convert_cuda(qd_cuda *c, void *dst, qd_dtype dst_type, const void *src,
                                  qd_dtype src_type, int64_t n, qd_error *err) {
    qd_err rc = qd_cuda_usable(c, err);
    if (rc) return rc;
    bool src_ok = src_type == QD_DTYPE_F32 || src_type == QD_DTYPE_F16 ||
                  src_type == QD_DTYPE_BF16;
    bool dst_ok = dst_type == QD_DTYPE_F32 || dst_type == QD_DTYPE_F16 ||
                  dst_type == QD_DTYPE_BF16 || dst_type == QD_DTYPE_F8_E4M3;
    if (!src_ok || !dst_ok || n < 0)
        return qd_error_set(err, QD_ERR_UNSUPPORTED, "cuda convert: %s -> %s is not supported",
                            qd_dtype_name(src_type) ? qd_dtype_name(src_type) : "?",
                            qd_dtype_name(dst_type) ? qd_dtype_name(dst_type) : "?");
    if (n == 0) return QD_OK;
    convert_kernel<<<qd_cuda_blocks(n, QD_CUDA_THREADS), QD_CUDA_THREADS, 0, c->stream>>>(
        dst, dst_type, src, src_type, n);
    QD_CU_LAUNCHED(c, err, "convert_kernel");
    return QD_OK;
fail:
    return rc;
}

/* ---- X^T X --------------------------------------------------------------------------------- */

/* h [k, k] row-major: the upper triangle from the lower (which cuBLAS wrote). */
__global__ void mirror_lower_kernel(float *h, int64_t k) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < k * k; i += stride) {
        int64_t a = i / k, b = i % k;
        if (b > a) h[i] = h[b * k + a];
    }
}

extern "C" qd_err qd_xtx_accum_cuda(qd_cuda *c, float *h, const float *x, int64_t n, int64_t k,
                                    float alpha, qd_error *err) {
    qd_err rc = qd_cuda_usable(c, err);
    const float beta = 1.0f;
    if (rc) return rc;
    if ((rc = check_int_dims(n, k, 0, "xtx", err))) return rc;
    if (n == 0 || k == 0) return QD_OK;
    /* column-major: C (k x k) += alpha A A^T with A = x^T (k x n, lda k) */
    QD_CUBLAS_TRY(c, err, cublasSsyrk(c->blas, CUBLAS_FILL_MODE_UPPER, CUBLAS_OP_N, (int)k,
                                      (int)n, &alpha, x, (int)k, &beta, h, (int)k));
    mirror_lower_kernel<<<qd_cuda_blocks(k * k, QD_CUDA_THREADS), QD_CUDA_THREADS, 0,
                          c->stream>>>(h, k);
    QD_CU_LAUNCHED(c, err, "mirror_lower_kernel");
    return QD_OK;
fail:
    return rc;
}

/* ---- row ops ------------------------------------------------------------------------------- */

__global__ void __launch_bounds__(QD_CUDA_THREADS)
    rmsnorm_kernel(float *y, const float *x, const float *w, int64_t n, int64_t d, double eps) {
    __shared__ double part[QD_CUDA_THREADS / 32];
    __shared__ double inv_s;
    for (int64_t r = blockIdx.x; r < n; r += gridDim.x) {
        const float *xr = x + r * d; /* [d] */
        float *yr = y + r * d;       /* [d], may be xr */
        double ss = 0.0;
        for (int64_t i = threadIdx.x; i < d; i += blockDim.x) ss += (double)xr[i] * xr[i];
        ss = qd_warp_sum_d(ss);
        if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = ss;
        __syncthreads();
        if (threadIdx.x == 0) {
            double t = 0.0;
            for (int i = 0; i < (int)(blockDim.x >> 5); i++) t += part[i];
            inv_s = 1.0 / sqrt(t / (double)d + eps);
        }
        __syncthreads();
        const double inv = inv_s;
        for (int64_t i = threadIdx.x; i < d; i += blockDim.x)
            yr[i] = (float)((double)xr[i] * inv * w[i]);
        __syncthreads(); /* part/inv_s are reused by the next row */
    }
}

extern "C" qd_err qd_rmsnorm_cuda(qd_cuda *c, float *y, const float *x, const float *w,
                                  int64_t n, int64_t d, double eps, qd_error *err) {
    qd_err rc = qd_cuda_usable(c, err);
    if (rc) return rc;
    if (n < 0 || d < 1)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda rmsnorm: bad shape [%lld, %lld]",
                            (long long)n, (long long)d);
    if (n == 0) return QD_OK;
    rmsnorm_kernel<<<(unsigned)(n < QD_CUDA_MAX_BLOCKS ? n : QD_CUDA_MAX_BLOCKS),
                     QD_CUDA_THREADS, 0, c->stream>>>(y, x, w, n, d, eps);
    QD_CU_LAUNCHED(c, err, "rmsnorm_kernel");
    return QD_OK;
fail:
    return rc;
}

__global__ void rope_kernel(float *x, int64_t n_tok, int64_t row_stride, int64_t seq_len,
                            int n_heads, int head_dim, const float *cos_t, const float *sin_t) {
    const int half = head_dim / 2;
    const int64_t per_tok = (int64_t)n_heads * half;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t id = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; id < n_tok * per_tok;
         id += stride) {
        int64_t t = id / per_tok;
        int h = (int)(id % per_tok / half), i = (int)(id % half);
        int64_t pos = t % seq_len;
        float cs = cos_t[pos * half + i], sn = sin_t[pos * half + i];
        float *v = x + t * row_stride + (int64_t)h * head_dim;
        float a = v[i], b = v[i + half];
        v[i] = __fsub_rn(__fmul_rn(a, cs), __fmul_rn(b, sn));
        v[i + half] = __fadd_rn(__fmul_rn(b, cs), __fmul_rn(a, sn));
    }
}

extern "C" qd_err qd_rope_apply_cuda(qd_cuda *c, float *x, int64_t n_tok, int64_t row_stride,
                                     int64_t seq_len, int n_heads, int head_dim,
                                     const float *cos_t, const float *sin_t, qd_error *err) {
    qd_err rc = qd_cuda_usable(c, err);
    if (rc) return rc;
    if (n_tok < 0 || seq_len < 1 || n_heads < 0 || head_dim < 2 || head_dim % 2 != 0 ||
        row_stride < (int64_t)n_heads * head_dim)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda rope: bad shape (%lld tokens, "
                            "stride %lld, %d heads of %d)", (long long)n_tok,
                            (long long)row_stride, n_heads, head_dim);
    int64_t items = n_tok * n_heads * (head_dim / 2);
    if (items == 0) return QD_OK;
    rope_kernel<<<qd_cuda_blocks(items, QD_CUDA_THREADS), QD_CUDA_THREADS, 0, c->stream>>>(
        x, n_tok, row_stride, seq_len, n_heads, head_dim, cos_t, sin_t);
    QD_CU_LAUNCHED(c, err, "rope_kernel");
    return QD_OK;
fail:
    return rc;
}

__global__ void silu_mul_kernel(float *out, const float *gate, const float *up, int64_t n) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        double g = gate[i];
        out[i] = (float)(g / (1.0 + exp(-g)) * up[i]);
    }
}

extern "C" qd_err qd_silu_mul_cuda(qd_cuda *c, float *out, const float *gate, const float *up,
                                   int64_t n, qd_error *err) {
    qd_err rc = qd_cuda_usable(c, err);
    if (rc) return rc;
    if (n <= 0) return QD_OK;
    silu_mul_kernel<<<qd_cuda_blocks(n, QD_CUDA_THREADS), QD_CUDA_THREADS, 0, c->stream>>>(
        out, gate, up, n);
    QD_CU_LAUNCHED(c, err, "silu_mul_kernel");
    return QD_OK;
fail:
    return rc;
}

__global__ void add_kernel(float *dst, const float *a, const float *b, int64_t n) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        dst[i] = a[i] + b[i];
}

extern "C" qd_err qd_add_cuda(qd_cuda *c, float *dst, const float *a, const float *b, int64_t n,
                              qd_error *err) {
    qd_err rc = qd_cuda_usable(c, err);
    if (rc) return rc;
    if (n <= 0) return QD_OK;
    add_kernel<<<qd_cuda_blocks(n, QD_CUDA_THREADS), QD_CUDA_THREADS, 0, c->stream>>>(dst, a, b,
                                                                                      n);
    QD_CU_LAUNCHED(c, err, "add_kernel");
    return QD_OK;
fail:
    return rc;
}

/* ---- attention ----------------------------------------------------------------------------- */

#define ATT_WARPS 8  /* queries per block */
#define ATT_TILE 32  /* keys per shared-memory tile (one per lane) */
#define ATT_MAX_HEAD_DIM 256

struct att_args {
    float *out;
    const float *q, *k, *v;
    int64_t seq_len;
    int n_heads, group, head_dim;
    int64_t q_stride, kv_stride;
    float scale;
};

/* NC = ceil(head_dim / 32): output columns lane + 32 t, t < NC, live in registers. */
template <int NC>
__global__ void __launch_bounds__(ATT_WARPS * 32) attention_kernel(att_args a) {
    extern __shared__ __align__(16) float att_smem[];
    const int hd = a.head_dim, kp = hd + 1; /* K tile pitch: conflict-free column reads */
    float *sk = att_smem;                   /* [ATT_TILE, kp] */
    float *sv = sk + ATT_TILE * kp;         /* [ATT_TILE, hd] */
    float *sq = sv + ATT_TILE * hd;         /* [ATT_WARPS, hd] */
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int h = blockIdx.y, kvh = h / a.group;
    const int64_t base = (int64_t)blockIdx.z * a.seq_len; /* the sequence's first row */
    const int64_t i0 = (int64_t)blockIdx.x * ATT_WARPS, i = i0 + warp;
    const bool active = i < a.seq_len;
    const int64_t last = min(i0 + ATT_WARPS - 1, a.seq_len - 1); /* last key the block needs */

    if (active)
        for (int cc = lane; cc < hd; cc += 32)
            sq[warp * hd + cc] = a.q[(base + i) * a.q_stride + (int64_t)h * hd + cc];
    float m = -INFINITY, l = 0.0f, acc[NC];
#pragma unroll
    for (int t = 0; t < NC; t++) acc[t] = 0.0f;

    for (int64_t j0 = 0; j0 <= last; j0 += ATT_TILE) {
        __syncthreads(); /* the previous tile is consumed (and sq is written, first time) */
        int nload = (int)min((int64_t)ATT_TILE, last - j0 + 1);
        for (int idx = threadIdx.x; idx < nload * hd; idx += blockDim.x) {
            int jj = idx / hd, cc = idx % hd;
            int64_t row = (base + j0 + jj) * a.kv_stride + (int64_t)kvh * hd + cc;
            sk[jj * kp + cc] = a.k[row];
            sv[jj * hd + cc] = a.v[row];
        }
        __syncthreads();
        if (!active || j0 > i) continue; /* warp-uniform */
        const int nj = (int)min((int64_t)ATT_TILE, i - j0 + 1); /* keys j0..i of this tile */
        float s = -INFINITY;
        if (lane < nj) {
            float d = 0.0f;
            const float *qr = sq + warp * hd, *kr = sk + lane * kp;
            for (int cc = 0; cc < hd; cc++) d += qr[cc] * kr[cc];
            s = d * a.scale;
        }
        float m_new = fmaxf(m, qd_warp_max(s));
        float p = lane < nj ? expf(s - m_new) : 0.0f;
        float corr = expf(m - m_new); /* 0 on the first tile (m = -inf) */
        l = l * corr + qd_warp_sum(p);
#pragma unroll
        for (int t = 0; t < NC; t++) acc[t] *= corr;
        for (int jj = 0; jj < nj; jj++) {
            float pj = __shfl_sync(QD_FULL_MASK, p, jj);
            const float *vr = sv + jj * hd;
#pragma unroll
            for (int t = 0; t < NC; t++) {
                int cc = lane + 32 * t;
                if (cc < hd) acc[t] += pj * vr[cc];
            }
        }
        m = m_new;
    }
    if (!active) return;
    float *o = a.out + (base + i) * a.q_stride + (int64_t)h * hd;
    const float inv = 1.0f / l;
#pragma unroll
    for (int t = 0; t < NC; t++) {
        int cc = lane + 32 * t;
        if (cc < hd) o[cc] = acc[t] * inv;
    }
}

typedef void (*att_kernel_fn)(att_args);

static att_kernel_fn att_kernel_for(int nc) {
    switch (nc) {
    case 1: return attention_kernel<1>;
    case 2: return attention_kernel<2>;
    case 3: return attention_kernel<3>;
    case 4: return attention_kernel<4>;
    case 5: return attention_kernel<5>;
    case 6: return attention_kernel<6>;
    case 7: return attention_kernel<7>;
    default: return attention_kernel<8>;
    }
}

extern "C" qd_err qd_attention_cuda(qd_cuda *c, float *out, const float *q, const float *k,
                                    const float *v, int64_t n_seq, int64_t seq_len,
                                    int n_heads, int n_kv_heads, int head_dim, qd_error *err) {
    qd_err rc = qd_cuda_usable(c, err);
    att_args a;
    att_kernel_fn fn;
    size_t smem;
    dim3 grid;
    if (rc) return rc;
    if (n_heads <= 0 || n_kv_heads <= 0 || n_heads % n_kv_heads != 0 || head_dim <= 0)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda attention: %d query heads cannot "
                            "share %d kv heads", n_heads, n_kv_heads);
    if (head_dim > ATT_MAX_HEAD_DIM || n_heads > 65535 || n_seq > 65535 || n_seq < 0 ||
        seq_len < 0)
        return qd_error_set(err, QD_ERR_UNSUPPORTED, "cuda attention: head_dim %d (max %d), "
                            "%d heads, %lld sequences is beyond this kernel", head_dim,
                            ATT_MAX_HEAD_DIM, n_heads, (long long)n_seq);
    if (n_seq == 0 || seq_len == 0) return QD_OK;
    a.out = out;
    a.q = q;
    a.k = k;
    a.v = v;
    a.seq_len = seq_len;
    a.n_heads = n_heads;
    a.group = n_heads / n_kv_heads;
    a.head_dim = head_dim;
    a.q_stride = (int64_t)n_heads * head_dim;
    a.kv_stride = (int64_t)n_kv_heads * head_dim;
    a.scale = (float)(1.0 / sqrt((double)head_dim));
    fn = att_kernel_for((head_dim + 31) / 32);
    smem = sizeof(float) * ((size_t)ATT_TILE * (head_dim + 1) + (size_t)ATT_TILE * head_dim +
                            (size_t)ATT_WARPS * head_dim);
    grid = dim3((unsigned)((seq_len + ATT_WARPS - 1) / ATT_WARPS), (unsigned)n_heads,
                (unsigned)n_seq);
    if (smem > 48 * 1024)
        QD_CU_TRY(c, err, cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               (int)smem));
    fn<<<grid, ATT_WARPS * 32, smem, c->stream>>>(a);
    QD_CU_LAUNCHED(c, err, "attention_kernel");
    return QD_OK;
fail:
    return rc;
}

/* ---- activation statistics ------------------------------------------------------------------ */

#define STATS_COLS 256
#define STATS_MAX_CHUNKS 128

/* partial[ch, col] = sum over the chunk's tokens of |x[t, col]|; max_abs[col] raised. */
__global__ void __launch_bounds__(STATS_COLS)
    act_stats_kernel(const float *x, int64_t n_tok, int64_t n_in, int64_t chunk,
                     double *partial, float *max_abs) {
    const int64_t col = (int64_t)blockIdx.x * STATS_COLS + threadIdx.x;
    const int64_t t0 = (int64_t)blockIdx.y * chunk, t1 = min(t0 + chunk, n_tok);
    if (col >= n_in) return;
    double s = 0.0;
    float m = 0.0f;
    for (int64_t t = t0; t < t1; t++) {
        float v = fabsf(x[t * n_in + col]);
        s += v;
        m = fmaxf(m, v);
    }
    partial[blockIdx.y * n_in + col] = s;
    atomicMax((int *)&max_abs[col], __float_as_int(m)); /* m >= 0: int order = float order */
}

__global__ void act_stats_sum_kernel(const double *partial, int64_t n_chunks, int64_t n_in,
                                     double *sum_abs) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t col = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; col < n_in;
         col += stride) {
        double s = sum_abs[col];
        for (int64_t ch = 0; ch < n_chunks; ch++) s += partial[ch * n_in + col];
        sum_abs[col] = s;
    }
}

extern "C" qd_err qd_act_stats_add_cuda(qd_cuda *c, const float *x, int64_t n_tok, int64_t n_in,
                                        double *sum_abs, float *max_abs, qd_error *err) {
    qd_err rc = qd_cuda_usable(c, err);
    double *partial = NULL;
    int64_t n_chunks, chunk;
    if (rc) return rc;
    if (n_tok < 0 || n_in < 1)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda act stats: bad shape [%lld, %lld]",
                            (long long)n_tok, (long long)n_in);
    if (n_tok == 0) return QD_OK;
    n_chunks = (n_tok + 31) / 32;
    if (n_chunks > STATS_MAX_CHUNKS) n_chunks = STATS_MAX_CHUNKS;
    chunk = (n_tok + n_chunks - 1) / n_chunks;
    n_chunks = (n_tok + chunk - 1) / chunk;
    if ((rc = qd_cuda_scratch(c, (size_t)(n_chunks * n_in) * sizeof(double), (void **)&partial,
                              "activation statistics", err)))
        goto fail;
    act_stats_kernel<<<dim3((unsigned)((n_in + STATS_COLS - 1) / STATS_COLS), (unsigned)n_chunks),
                       STATS_COLS, 0, c->stream>>>(x, n_tok, n_in, chunk, partial, max_abs);
    QD_CU_LAUNCHED(c, err, "act_stats_kernel");
    act_stats_sum_kernel<<<qd_cuda_blocks(n_in, QD_CUDA_THREADS), QD_CUDA_THREADS, 0,
                           c->stream>>>(partial, n_chunks, n_in, sum_abs);
    QD_CU_LAUNCHED(c, err, "act_stats_sum_kernel");
fail:
    qd_cuda_scratch_free(c, partial);
    return rc;
}
