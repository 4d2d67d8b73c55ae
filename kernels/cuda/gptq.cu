/*
 * gptq.cu - GPTQ for one linear layer on the GPU: the Hessian's running update, and the
 * blocked, error-compensating quantization of quantizers/gptq.c (whose DESIGN comment states
 * the algorithm; the numbered steps below are its steps).
 *
 * DESIGN
 * The host does what is small and order-sensitive, exactly as the CPU does it: it reads the
 * Hessian's diagonal, finds the dead columns, sums the diagonal in double in column order for
 * the damping, and sorts the act-order permutation with the same total order (decreasing
 * diagonal, ties by column). So the damping value and the permutation are bit-identical to
 * the CPU's. The device does the rest:
 *
 *   prep      u = J Hp J (Hp: H permuted, dead diagonals 1, plus damping), one thread per
 *             element, written straight into the mirrored position.
 *   factor    cusolverDnSpotrf ('U', column-major = the CPU's LAPACK call on the same array),
 *             cusolverDnXtrtri (its inverse), then the flat array reversed: U = J L^-1 J, the
 *             upper Cholesky factor of (Hp + damp I)^-1 (see quantizers/gptq.c for why).
 *             A factorisation that fails retries with more damping when damp_auto_increment
 *             is set, as on the CPU.
 *   block     one warp per row walks the block's columns in order. The row's block segment
 *             lives in registers (lane l holds columns i1 + l + 32 t); column j's value is
 *             shuffled from its owner, every lane derives the same code, q and error e, and
 *             each lane updates its own later columns with w -= e * U[j][c]. The operations
 *             are ref's, one IEEE rounding each (__fmul_rn/__fsub_rn keep nvcc from fusing
 *             them), so given the same U and W this is the CPU's arithmetic bit for bit.
 *             Dynamic group parameters are measured at block start from the row as it is
 *             then, which is the CPU's (and the references') stale-column semantics.
 *   trailing  W[:, i2:] -= E U[i1:i2, i2:] as one cublasSgemm (alpha -1, beta 1) on the
 *             row-major W read column-major.
 *
 * So codes can differ from the CPU's only through the factor (cuSOLVER vs LAPACK rounding) and
 * the trailing GEMM (cuBLAS vs OpenBLAS summation order); an error fed back through a
 * slightly different U can then flip a later code of the same row. The cross-backend test
 * reports the fraction of identical codes and checks that both layers' output errors agree.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.cuh"

#define GPTQ_WARPS 8          /* rows per block of the column loop */
#define GPTQ_MAX_BLOCK 256    /* widest lazy-batch block a warp keeps in registers */
#define GPTQ_HESS_ROWS 4096   /* calibration rows scaled per cuBLAS call */

enum { PARAMS_PER_CHANNEL, PARAMS_STATIC, PARAMS_DYNAMIC };

/* ---- small kernels -------------------------------------------------------------------------- */

/* *first = smallest index i < n with x[i] not finite (left at ~0 when none). */
__global__ void first_nonfinite_kernel(const float *x, int64_t n, unsigned long long *first) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        if (!isfinite(x[i])) atomicMin(first, (unsigned long long)i);
}

__global__ void scale_kernel(float *x, int64_t n, float s) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        x[i] = x[i] * s;
}

__global__ void scaled_copy_kernel(float *dst, const float *src, int64_t n, float s) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        dst[i] = s * src[i];
}

/* wp [n, k] = W with its columns in processing order, dead columns 0. */
__global__ void gather_kernel(float *wp, const float *w, int64_t n, int64_t k, const int *perm,
                              const uint8_t *dead) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n * k; i += stride) {
        int64_t r = i / k, col = perm[i % k];
        wp[i] = dead[col] ? 0.0f : w[r * k + col];
    }
}

/* u = J Hp J + damping on the diagonal (quantizers/gptq.c inverse_factor's first loop). */
__global__ void prep_kernel(float *u, const float *h, int64_t k, const int *perm, float damp) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < k * k; i += stride) {
        int64_t a = i / k, b = i % k;
        float v = h[(int64_t)perm[a] * k + perm[b]];
        if (a == b) {
            if (v == 0.0f) v = 1.0f;
            v = v + damp;
        }
        u[(k - 1 - a) * k + (k - 1 - b)] = v;
    }
}

/* Reverse the flat array u [len] in place. */
__global__ void reverse_kernel(float *u, int64_t len) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < len / 2; i += stride) {
        float t = u[i];
        u[i] = u[len - 1 - i];
        u[len - 1 - i] = t;
    }
}

/* ---- the column loop of one block --------------------------------------------------------- */

struct block_args {
    int64_t n, k, i1, i2, g, ng;
    int mode;
    int bits;
    qd_qrule rule;
    qd_dtype sdt;
    const int *perm;       /* [k] processing position -> original column */
    const float *wp;       /* [n, k] W in processing order (read) */
    const float *u;        /* [k, k] upper factor of H^-1 */
    float *e;              /* [n, i2 - i1] the block's scaled errors */
    uint8_t *codes;        /* [n, k] original column order */
    float *scales, *zeros; /* [n, ng] */
    float *dequant;        /* [n, k] original order, or NULL */
    double *row_loss;      /* [n] */
};

/* NT = ceil((i2 - i1) / 32) values of the row's block segment per lane. */
template <int NT>
__global__ void __launch_bounds__(GPTQ_WARPS * 32) gptq_block_kernel(block_args a) {
    const int lane = threadIdx.x & 31;
    const int64_t r = (int64_t)blockIdx.x * GPTQ_WARPS + (threadIdx.x >> 5);
    if (r >= a.n) return; /* the whole warp */
    const int64_t k = a.k, i1 = a.i1, i2 = a.i2, cnt = i2 - i1;
    const float *wr = a.wp + r * k; /* [k] */
    float *sr = a.scales + r * a.ng, *zr = a.zeros + r * a.ng;

    /* groups starting in this block, measured before the block changes the row (step 7) */
    if (a.mode == PARAMS_DYNAMIC) {
        for (int64_t j = (i1 + a.g - 1) / a.g * a.g; j < i2; j += a.g) {
            float lo = INFINITY, hi = -INFINITY;
            for (int64_t c = j + lane; c < j + a.g; c += 32) {
                float v = wr[c];
                lo = v < lo ? v : lo;
                hi = v > hi ? v : hi;
            }
            qd_qparams p = qd_quant_params(a.rule, a.bits, qd_warp_stats(lo, hi), a.sdt);
            if (lane == 0) {
                sr[j / a.g] = p.scale;
                zr[j / a.g] = p.zero;
            }
        }
        __syncwarp(); /* lane 0's parameters are visible to the warp */
    }

    float seg[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) {
        int64_t c = i1 + lane + 32 * t;
        seg[t] = c < i2 ? wr[c] : 0.0f;
    }
    double loss = 0.0;
    for (int64_t jj = 0; jj < cnt; jj++) {
        const int64_t j = i1 + jj;
        const int owner = (int)(jj & 31), tsel = (int)(jj >> 5);
        float mine = 0.0f;
#pragma unroll
        for (int t = 0; t < NT; t++)
            if (t == tsel) mine = seg[t]; /* constant indices keep seg in registers */
        const float w = __shfl_sync(QD_FULL_MASK, mine, owner);
        int64_t gi = a.mode == PARAMS_STATIC    ? a.perm[j] / a.g
                     : a.mode == PARAMS_DYNAMIC ? j / a.g
                                                : 0;
        qd_qparams qp;
        qp.scale = sr[gi];
        qp.zero = zr[gi];
        const uint8_t code = qd_quant_code(a.rule, a.bits, qp, w);
        const float q = qd_quant_dequant(qp, code);
        const float *urow = a.u + j * k; /* [k] */
        const float d = urow[j];
        const float diff = __fsub_rn(w, q);
        const float e = __fdiv_rn(diff, d);
#pragma unroll
        for (int t = 0; t < NT; t++) {
            int64_t c = i1 + lane + 32 * t;
            if (c > j && c < i2) seg[t] = __fsub_rn(seg[t], __fmul_rn(e, urow[c]));
        }
        if (lane == 0) {
            loss += (double)diff * diff / ((double)d * d) / 2;
            a.e[r * cnt + jj] = e;
            int64_t col = a.perm[j];
            a.codes[r * k + col] = code;
            if (a.dequant) a.dequant[r * k + col] = q;
        }
    }
    if (lane == 0) a.row_loss[r] += loss;
}

typedef void (*block_kernel_fn)(block_args);

static block_kernel_fn block_kernel_for(int nt) {
    switch (nt) {
    case 1: return gptq_block_kernel<1>;
    case 2: return gptq_block_kernel<2>;
    case 3: return gptq_block_kernel<3>;
    case 4: return gptq_block_kernel<4>;
    case 5: return gptq_block_kernel<5>;
    case 6: return gptq_block_kernel<6>;
    case 7: return gptq_block_kernel<7>;
    default: return gptq_block_kernel<8>;
    }
}

/* ---- host helpers --------------------------------------------------------------------------- */

/* QD_ERR_INVALID_ARG naming the first non-finite element of x [rows, cols], if any. */
static qd_err check_finite(qd_cuda *c, const float *x, int64_t rows, int64_t cols,
                           const char *what, qd_error *err) {
    qd_err rc = QD_OK;
    unsigned long long *d_first = NULL, first = ~0ull;
    if ((rc = qd_cuda_scratch(c, sizeof *d_first, (void **)&d_first, "a finiteness check",
                              err)))
        return rc;
    QD_CU_TRY(c, err, cudaMemsetAsync(d_first, 0xFF, sizeof *d_first, c->stream));
    first_nonfinite_kernel<<<qd_cuda_blocks(rows * cols, QD_CUDA_THREADS), QD_CUDA_THREADS, 0,
                             c->stream>>>(x, rows * cols, d_first);
    QD_CU_LAUNCHED(c, err, "first_nonfinite_kernel");
    QD_CU_TRY(c, err, cudaMemcpyAsync(&first, d_first, sizeof first, cudaMemcpyDeviceToHost,
                                      c->stream));
    QD_CU_TRY(c, err, cudaStreamSynchronize(c->stream));
    if (first != ~0ull)
        rc = qd_error_set(err, QD_ERR_INVALID_ARG, "%s at [%lld, %lld] is not finite", what,
                          (long long)(first / (unsigned long long)cols),
                          (long long)(first % (unsigned long long)cols));
fail:
    qd_cuda_scratch_free(c, d_first);
    return rc;
}

extern "C" qd_err qd_gptq_hessian_add_cuda(qd_cuda *c, float *h, int64_t k, int64_t *n_samples,
                                           const float *x, int64_t n_tok, int64_t n_seq,
                                           qd_error *err) {
    qd_err rc = qd_cuda_usable(c, err);
    float *xs = NULL;
    int64_t n_new, rows;
    float shrink, sc;
    if (rc) return rc;
    if (!h || !n_samples || k < 1 || n_seq < 1 || n_tok < 0 || (n_tok > 0 && !x) ||
        *n_samples < 0 || *n_samples > INT64_MAX - n_seq)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda gptq hessian: bad batch (%lld "
                            "rows, %lld sequences)", (long long)n_tok, (long long)n_seq);
    if (n_tok > 0 && (rc = check_finite(c, x, n_tok, k, "cuda gptq hessian: input", err)))
        return rc;
    n_new = *n_samples + n_seq;
    shrink = (float)((double)*n_samples / (double)n_new);
    sc = (float)sqrt(2.0 / (double)n_new);
    rows = n_tok < GPTQ_HESS_ROWS ? n_tok : GPTQ_HESS_ROWS;
    if ((rc = qd_cuda_scratch(c, (size_t)(rows * k) * sizeof(float), (void **)&xs,
                              "the scaled calibration rows", err)))
        goto fail;
    scale_kernel<<<qd_cuda_blocks(k * k, QD_CUDA_THREADS), QD_CUDA_THREADS, 0, c->stream>>>(
        h, k * k, shrink);
    QD_CU_LAUNCHED(c, err, "scale_kernel");
    for (int64_t t0 = 0; t0 < n_tok; t0 += rows) {
        int64_t m = n_tok - t0 < rows ? n_tok - t0 : rows;
        scaled_copy_kernel<<<qd_cuda_blocks(m * k, QD_CUDA_THREADS), QD_CUDA_THREADS, 0,
                             c->stream>>>(xs, x + t0 * k, m * k, sc);
        QD_CU_LAUNCHED(c, err, "scaled_copy_kernel");
        if ((rc = qd_xtx_accum_cuda(c, h, xs, m, k, 1.0f, err))) goto fail;
    }
    QD_CU_TRY(c, err, cudaStreamSynchronize(c->stream));
    *n_samples = n_new;
fail:
    qd_cuda_scratch_free(c, xs);
    return rc;
}

struct diag_key {
    float d;
    int col;
};

/* Decreasing diagonal, ties by increasing column (quantizers/gptq.c cmp_diag_desc). */
static int cmp_diag_desc(const void *pa, const void *pb) {
    const diag_key *x = (const diag_key *)pa, *y = (const diag_key *)pb;
    if (x->d != y->d) return x->d > y->d ? -1 : 1;
    return (x->col > y->col) - (x->col < y->col);
}

static qd_err check_opts(int n, int k, const qd_cuda_gptq_opts *o, qd_error *err) {
    if (!o) return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda gptq: no options");
    if (n < 1 || k < 1)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda gptq: bad weight shape [%d, %d]", n,
                            k);
    if (o->bits < 2 || o->bits > 8)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda gptq: bits %d outside 2..8", o->bits);
    if (!qd_qrule_valid((int)o->rule))
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda gptq: unknown quantization rule %d",
                            (int)o->rule);
    if (o->scale_dtype != QD_DTYPE_F32 && o->scale_dtype != QD_DTYPE_F16 &&
        o->scale_dtype != QD_DTYPE_BF16)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda gptq: scale dtype %d is not F32, "
                            "F16 or BF16", (int)o->scale_dtype);
    if (o->group_size > 0 && k % o->group_size != 0)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda gptq: group_size %d does not divide "
                            "in_features %d", o->group_size, k);
    if (o->block_size < 1)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda gptq: block_size %d must be >= 1",
                            o->block_size);
    if (o->block_size > GPTQ_MAX_BLOCK && k > GPTQ_MAX_BLOCK)
        return qd_error_set(err, QD_ERR_UNSUPPORTED, "cuda gptq: block_size %d is above the %d "
                            "columns a warp keeps in registers", o->block_size, GPTQ_MAX_BLOCK);
    if (!isfinite(o->damp_percent) || o->damp_percent < 0)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda gptq: damp_percent %g must be >= 0",
                            o->damp_percent);
    if (!isfinite(o->damp_auto_increment) || o->damp_auto_increment < 0)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda gptq: damp_auto_increment %g must "
                            "be >= 0", o->damp_auto_increment);
    return QD_OK;
}

/* The upper factor of (Hp + damp I)^-1 into u, or *ret_info != 0 when a factorisation
 * failed (not positive definite). work/lwork: potrf workspace; tw/tw_bytes, htw/htw_bytes:
 * trtri's device and host workspaces; d_info: one int. */
static qd_err inverse_factor(qd_cuda *c, const float *h, int64_t k, const int *d_perm, float damp,
                             float *u, float *work, int lwork, void *tw, size_t tw_bytes,
                             void *htw, size_t htw_bytes, int *d_info, int *ret_info,
                             qd_error *err) {
    qd_err rc = QD_OK;
    int info = 0;
    prep_kernel<<<qd_cuda_blocks(k * k, QD_CUDA_THREADS), QD_CUDA_THREADS, 0, c->stream>>>(
        u, h, k, d_perm, damp);
    QD_CU_LAUNCHED(c, err, "prep_kernel");
    QD_CUSOLVER_TRY(c, err, cusolverDnSpotrf(c->solver, CUBLAS_FILL_MODE_UPPER, (int)k, u,
                                             (int)k, work, lwork, d_info));
    QD_CU_TRY(c, err, cudaMemcpyAsync(&info, d_info, sizeof info, cudaMemcpyDeviceToHost,
                                      c->stream));
    QD_CU_TRY(c, err, cudaStreamSynchronize(c->stream));
    if (info != 0) {
        *ret_info = info;
        return QD_OK;
    }
    QD_CUSOLVER_TRY(c, err, cusolverDnXtrtri(c->solver, CUBLAS_FILL_MODE_UPPER,
                                             CUBLAS_DIAG_NON_UNIT, k, CUDA_R_32F, u, k, tw,
                                             tw_bytes, htw, htw_bytes, d_info));
    QD_CU_TRY(c, err, cudaMemcpyAsync(&info, d_info, sizeof info, cudaMemcpyDeviceToHost,
                                      c->stream));
    QD_CU_TRY(c, err, cudaStreamSynchronize(c->stream));
    if (info != 0) {
        *ret_info = info;
        return QD_OK;
    }
    reverse_kernel<<<qd_cuda_blocks(k * k / 2, QD_CUDA_THREADS), QD_CUDA_THREADS, 0,
                     c->stream>>>(u, k * k);
    QD_CU_LAUNCHED(c, err, "reverse_kernel");
    *ret_info = 0;
    return QD_OK;
fail:
    return rc;
}

extern "C" qd_err qd_gptq_quantize_cuda(qd_cuda *c, const float *w, int n, int k,
                                        const float *h, const qd_cuda_gptq_opts *o,
                                        uint8_t *codes, float *scales, float *zeros,
                                        int32_t *ret_g_idx, float *dequant,
                                        qd_cuda_gptq_stats *ret_stats, qd_error *err) {
    qd_err rc = qd_cuda_usable(c, err);
    /* host */
    float *diag = NULL;
    int *perm = NULL;
    uint8_t *dead = NULL;
    diag_key *keys = NULL;
    double *row_loss_h = NULL;
    void *htw = NULL;
    /* device scratch */
    int *d_perm = NULL, *d_info = NULL;
    uint8_t *d_dead = NULL;
    float *wp = NULL, *u = NULL, *e = NULL, *work = NULL;
    double *row_loss = NULL;
    void *tw = NULL;
    int lwork = 0, n_dead = 0, info = 0;
    size_t tw_bytes = 0, htw_bytes = 0;
    int64_t nn = n, kk = k, g, n_groups, bsz;
    int mode;
    double diag_sum = 0.0, damp_pct, mean_diag, loss = 0.0;
    block_args ba;
    block_kernel_fn bfn;

    if (rc) return rc;
    if ((rc = check_opts(n, k, o, err))) return rc;
    if (!w || !h || !codes || !scales || !zeros)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda gptq: NULL buffer");
    g = o->group_size > 0 ? o->group_size : kk;
    n_groups = kk / g;
    mode = o->group_size <= 0 ? PARAMS_PER_CHANNEL
           : o->static_groups ? PARAMS_STATIC
                              : PARAMS_DYNAMIC;
    bsz = o->block_size < k ? o->block_size : kk;
    if ((rc = check_finite(c, w, nn, kk, "cuda gptq: weight", err))) return rc;
    if ((rc = check_finite(c, h, kk, kk, "cuda gptq: Hessian entry", err))) return rc;

    diag = (float *)malloc((size_t)k * sizeof *diag);
    perm = (int *)malloc((size_t)k * sizeof *perm);
    dead = (uint8_t *)malloc((size_t)k);
    row_loss_h = (double *)malloc((size_t)n * sizeof *row_loss_h);
    if (!diag || !perm || !dead || !row_loss_h) {
        rc = qd_error_set(err, QD_ERR_NOMEM, "cuda gptq: no host memory for a [%d, %d] layer",
                          n, k);
        goto fail;
    }
    if ((rc = qd_cuda_scratch(c, (size_t)k * sizeof(int), (void **)&d_perm, "gptq perm", err)) ||
        (rc = qd_cuda_scratch(c, sizeof(int), (void **)&d_info, "gptq info", err)) ||
        (rc = qd_cuda_scratch(c, (size_t)k, (void **)&d_dead, "gptq dead columns", err)) ||
        (rc = qd_cuda_scratch(c, (size_t)(nn * kk) * sizeof(float), (void **)&wp,
                              "gptq working weight", err)) ||
        (rc = qd_cuda_scratch(c, (size_t)(kk * kk) * sizeof(float), (void **)&u,
                              "gptq inverse factor", err)) ||
        (rc = qd_cuda_scratch(c, (size_t)(nn * bsz) * sizeof(float), (void **)&e,
                              "gptq block errors", err)) ||
        (rc = qd_cuda_scratch(c, (size_t)n * sizeof(double), (void **)&row_loss,
                              "gptq row losses", err)))
        goto fail;

    /* 2. dead columns and the damping base, on the host from the diagonal */
    QD_CU_TRY(c, err, cudaMemcpy2DAsync(diag, sizeof(float), h, (size_t)(k + 1) * sizeof(float),
                                        sizeof(float), (size_t)k, cudaMemcpyDeviceToHost,
                                        c->stream));
    QD_CU_TRY(c, err, cudaStreamSynchronize(c->stream));
    for (int j = 0; j < k; j++) {
        dead[j] = diag[j] == 0.0f;
        n_dead += dead[j];
        diag_sum += dead[j] ? 1.0 : (double)diag[j];
    }

    /* 4. processing order (host sort, the CPU's total order) */
    for (int j = 0; j < k; j++) perm[j] = j;
    if (o->act_order) {
        keys = (diag_key *)malloc((size_t)k * sizeof *keys);
        if (!keys) {
            rc = qd_error_set(err, QD_ERR_NOMEM, "cuda gptq: no memory for %d sort keys", k);
            goto fail;
        }
        for (int j = 0; j < k; j++) {
            keys[j].d = dead[j] ? 1.0f : diag[j];
            keys[j].col = j;
        }
        qsort(keys, (size_t)k, sizeof *keys, cmp_diag_desc);
        for (int j = 0; j < k; j++) perm[j] = keys[j].col;
    }
    QD_CU_TRY(c, err, cudaMemcpyAsync(d_perm, perm, (size_t)k * sizeof(int),
                                      cudaMemcpyHostToDevice, c->stream));
    QD_CU_TRY(c, err, cudaMemcpyAsync(d_dead, dead, (size_t)k, cudaMemcpyHostToDevice,
                                      c->stream));
    QD_CU_TRY(c, err, cudaMemsetAsync(row_loss, 0, (size_t)n * sizeof(double), c->stream));

    /* 1. per channel: parameters from W as given; 3. static groups: from W with dead
     * columns zeroed, unpermuted */
    if (mode == PARAMS_PER_CHANNEL &&
        (rc = qd_cuda_group_params_(c, w, nn, kk, kk, kk, NULL, o->bits, o->rule,
                                    o->scale_dtype, scales, zeros, err)))
        goto fail;
    if (mode == PARAMS_STATIC &&
        (rc = qd_cuda_group_params_(c, w, nn, kk, kk, g, d_dead, o->bits, o->rule,
                                    o->scale_dtype, scales, zeros, err)))
        goto fail;
    gather_kernel<<<qd_cuda_blocks(nn * kk, QD_CUDA_THREADS), QD_CUDA_THREADS, 0, c->stream>>>(
        wp, w, nn, kk, d_perm, d_dead);
    QD_CU_LAUNCHED(c, err, "gather_kernel");

    /* 5. damping and the factor of H^-1 (u doubles as the workspace-size query's matrix) */
    QD_CUSOLVER_TRY(c, err, cusolverDnSpotrf_bufferSize(c->solver, CUBLAS_FILL_MODE_UPPER, k, u,
                                                        k, &lwork));
    QD_CUSOLVER_TRY(c, err, cusolverDnXtrtri_bufferSize(c->solver, CUBLAS_FILL_MODE_UPPER,
                                                        CUBLAS_DIAG_NON_UNIT, kk, CUDA_R_32F,
                                                        u, kk, &tw_bytes, &htw_bytes));
    if ((rc = qd_cuda_scratch(c, (size_t)lwork * sizeof(float), (void **)&work,
                              "the Cholesky workspace", err)) ||
        (rc = qd_cuda_scratch(c, tw_bytes, &tw, "the triangular inverse workspace", err)))
        goto fail;
    if (htw_bytes) {
        htw = malloc(htw_bytes);
        if (!htw) {
            rc = qd_error_set(err, QD_ERR_NOMEM, "cuda gptq: no host memory for cuSOLVER");
            goto fail;
        }
    }
    damp_pct = o->damp_percent;
    mean_diag = diag_sum / (double)kk;
    for (;;) {
        if ((rc = inverse_factor(c, h, kk, d_perm, (float)(damp_pct * mean_diag), u, work,
                                 lwork, tw, tw_bytes, htw, htw_bytes, d_info, &info, err)))
            goto fail;
        if (info == 0) break;
        if (o->damp_auto_increment > 0 && damp_pct + o->damp_auto_increment < 1.0) {
            damp_pct += o->damp_auto_increment;
            continue;
        }
        rc = qd_error_set(err, QD_ERR_PRECONDITION, "cuda gptq: the [%d, %d] Hessian plus "
                          "damping %g * mean(diag) = %g is not positive definite (Cholesky "
                          "failed, info %d); raise damp_percent or set damp_auto_increment",
                          k, k, damp_pct, damp_pct * mean_diag, info);
        goto fail;
    }

    /* 6-7. the blocked column loop */
    memset(&ba, 0, sizeof ba);
    ba.n = nn;
    ba.k = kk;
    ba.g = g;
    ba.ng = n_groups;
    ba.mode = mode;
    ba.bits = o->bits;
    ba.rule = o->rule;
    ba.sdt = o->scale_dtype;
    ba.perm = d_perm;
    ba.wp = wp;
    ba.u = u;
    ba.e = e;
    ba.codes = codes;
    ba.scales = scales;
    ba.zeros = zeros;
    ba.dequant = dequant;
    ba.row_loss = row_loss;
    bfn = block_kernel_for((int)((bsz + 31) / 32));
    for (int64_t i1 = 0; i1 < kk; i1 += bsz) {
        const float alpha = -1.0f, beta = 1.0f;
        ba.i1 = i1;
        ba.i2 = i1 + bsz < kk ? i1 + bsz : kk;
        int64_t cnt = ba.i2 - i1;
        bfn<<<(unsigned)((nn + GPTQ_WARPS - 1) / GPTQ_WARPS), GPTQ_WARPS * 32, 0, c->stream>>>(
            ba);
        QD_CU_LAUNCHED(c, err, "gptq_block_kernel");
        if (ba.i2 < kk)
            /* column-major: W^T[i2:, :] -= U[i1:i2, i2:]^T E^T */
            QD_CUBLAS_TRY(c, err, cublasSgemm(c->blas, CUBLAS_OP_N, CUBLAS_OP_N,
                                              (int)(kk - ba.i2), n, (int)cnt, &alpha,
                                              u + i1 * kk + ba.i2, k, e, (int)cnt, &beta,
                                              wp + ba.i2, k));
    }

    /* 8. g_idx of act-order groups; the loss in row order, as the CPU sums it */
    QD_CU_TRY(c, err, cudaMemcpyAsync(row_loss_h, row_loss, (size_t)n * sizeof(double),
                                      cudaMemcpyDeviceToHost, c->stream));
    QD_CU_TRY(c, err, cudaStreamSynchronize(c->stream));
    for (int r = 0; r < n; r++) loss += row_loss_h[r];
    if (ret_g_idx && mode == PARAMS_DYNAMIC && o->act_order)
        for (int64_t j = 0; j < kk; j++) ret_g_idx[perm[j]] = (int32_t)(j / g);
    if (ret_stats) {
        ret_stats->loss = loss;
        ret_stats->damp_percent = damp_pct;
        ret_stats->n_dead = n_dead;
    }
    rc = QD_OK;
fail:
    qd_cuda_scratch_free(c, d_perm);
    qd_cuda_scratch_free(c, d_info);
    qd_cuda_scratch_free(c, d_dead);
    qd_cuda_scratch_free(c, wp);
    qd_cuda_scratch_free(c, u);
    qd_cuda_scratch_free(c, e);
    qd_cuda_scratch_free(c, row_loss);
    qd_cuda_scratch_free(c, work);
    qd_cuda_scratch_free(c, tw);
    if (!c->broken) (void)cudaStreamSynchronize(c->stream); /* host buffers outlive the work */
    free(diag);
    free(perm);
    free(dead);
    free(keys);
    free(row_loss_h);
    free(htw);
    return rc;
}
