/*
 * quant.cu - RTN group quantization, FP8 e4m3 weights, and one-pass quantize+pack into the
 * AutoAWQ GEMM, GPTQ (v1/v2) and compressed-tensors pack-quantized layouts, on the GPU.
 *
 * DESIGN
 * Every per-element decision is a QD_HD function shared with the CPU: the group statistics
 * feed qd_quant_params(), codes come from qd_quant_code(), FP8 from qd_fp8_scale() and
 * qd_fp8_code() (kernels/quant.h, common/dtype.h), and words from kernels/pack.h. The kernels
 * only decide who computes what, so codes, scales, zeros and words are bit-identical to
 * kernels/ref (the cross-backend test checks every rule and width).
 *
 *   RTN       groups of 4..128 weights (a power of two over 4): one thread per 4 weights,
 *             a float4 load kept in registers, lo/hi reduced over the group's lanes with
 *             shuffles (cuda_internal.cuh says why the order of the comparisons cannot change
 *             a parameter), every lane derives the same parameters and writes its 4 codes;
 *             each thread issues several independent loads before using any. Other groups
 *             (per channel, odd sizes): one warp per (row, group) striding through it, reading
 *             it a second time (from L1/L2) for the codes.
 *   ROWS      per-channel RTN and FP8: a block per row caches the row in shared memory (when
 *             it fits), so the codes pass does not read the weights again.
 *   FP8       per tensor: one warp per row for the row's amax, a one-block pass reduces the
 *             row maxima (a maximum does not depend on the order), then a codes pass.
 *   PACK      a block owns a tile of PACK_ROWS rows x one group (the "fused" path: the weights
 *             are read from device memory once): the block loads the tile into shared memory,
 *             each warp finds its rows' parameters and writes their codes into a shared byte
 *             tile; after a barrier the block turns the tile into the layout's words, so words
 *             along the output axis (AWQ) and along the input axis (GPTQ, compressed-tensors)
 *             come from the same tile. A group wider than PACK_MAX_FUSED_G columns does not
 *             fit: the RTN kernel finds the parameters first and the tile kernel (columns in
 *             chunks of PACK_CHUNK) reads them. Zero points and scale tensors are small (one
 *             value per group) and get their own kernels, one thread per output word or
 *             element, so the big writes are all coalesced.
 */
#include <math.h>

#include "cuda_internal.cuh"
#include "pack.h"
#include "pack_check.h"

#define PACK_ROWS 32         /* rows per tile: a multiple of 8 (an AWQ word spans 8 rows) */
#define PACK_CHUNK 128       /* columns per tile when the parameters come first */
#define PACK_MAX_FUSED_G 512 /* widest group the fused tile takes (80 KB of shared memory) */
#define PACK_PITCH_ALIGN 16  /* code rows padded to a multiple of every pf */

/* ---- RTN ---------------------------------------------------------------------------------- */

struct rtn_args {
    const float *w;       /* [n, ld] */
    int64_t n, k, ld, gs, ng;
    int bits;
    qd_qrule rule;
    qd_dtype sdt;
    const uint8_t *dead;  /* [k]: columns read as 0 where set (GPTQ static groups), or NULL */
    uint8_t *codes;       /* [n, k] or NULL */
    float *scales, *zeros; /* [n, ng] */
};

/* VEC: float4 loads and 4-byte code stores (gs % 4 == 0, ld % 4 == 0, aligned pointers). */
template <bool VEC>
__global__ void __launch_bounds__(QD_CUDA_THREADS) rtn_kernel(rtn_args a) {
    const int lane = threadIdx.x & 31;
    const int64_t n_warps = ((int64_t)gridDim.x * blockDim.x) >> 5;
    for (int64_t gi = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5; gi < a.n * a.ng;
         gi += n_warps) {
        const int64_t r = gi / a.ng, g = gi % a.ng;
        const float *x = a.w + r * a.ld + g * a.gs; /* [gs] */
        const uint8_t *dead = a.dead ? a.dead + g * a.gs : NULL;
        float lo = INFINITY, hi = -INFINITY; /* an empty lane never wins */
        if (VEC) {
            const float4 *x4 = (const float4 *)x;
            for (int64_t i = lane; i < a.gs / 4; i += 32) {
                float4 v = x4[i];
                lo = v.x < lo ? v.x : lo;
                hi = v.x > hi ? v.x : hi;
                lo = v.y < lo ? v.y : lo;
                hi = v.y > hi ? v.y : hi;
                lo = v.z < lo ? v.z : lo;
                hi = v.z > hi ? v.z : hi;
                lo = v.w < lo ? v.w : lo;
                hi = v.w > hi ? v.w : hi;
            }
        } else {
            for (int64_t i = lane; i < a.gs; i += 32) {
                float v = dead && dead[i] ? 0.0f : x[i];
                lo = v < lo ? v : lo;
                hi = v > hi ? v : hi;
            }
        }
        qd_qparams p = qd_quant_params(a.rule, a.bits, qd_warp_stats(lo, hi), a.sdt);
        if (lane == 0) {
            a.scales[gi] = p.scale;
            a.zeros[gi] = p.zero;
        }
        if (!a.codes) continue;
        uint8_t *out = a.codes + r * a.k + g * a.gs; /* [gs] */
        if (VEC) {
            const float4 *x4 = (const float4 *)x;
            uchar4 *o4 = (uchar4 *)out;
            for (int64_t i = lane; i < a.gs / 4; i += 32) {
                float4 v = x4[i];
                o4[i] = make_uchar4(qd_quant_code(a.rule, a.bits, p, v.x),
                                    qd_quant_code(a.rule, a.bits, p, v.y),
                                    qd_quant_code(a.rule, a.bits, p, v.z),
                                    qd_quant_code(a.rule, a.bits, p, v.w));
            }
        } else {
            for (int64_t i = lane; i < a.gs; i += 32)
                out[i] = qd_quant_code(a.rule, a.bits, p, dead && dead[i] ? 0.0f : x[i]);
        }
    }
}

/* Grid for warp-per-item kernels: enough blocks to fill the device, grid-stride beyond. */
static unsigned warp_blocks(const qd_cuda *c, int64_t items) {
    int64_t want = (items + QD_CUDA_THREADS / 32 - 1) / (QD_CUDA_THREADS / 32);
    int64_t cap = (int64_t)c->n_sm * 32;
    if (want > cap) want = cap;
    return want < 1 ? 1u : (unsigned)want;
}

static bool aligned16(const void *p) {
    return ((uintptr_t)p & 15u) == 0;
}

/*
 * Small groups (gs = 4 L, L a power of two <= 32): one thread per 4 consecutive weights, L
 * lanes per group, each lane's float4 kept in registers between the statistics and the codes
 * (the weights are read once). RTN_UNROLL independent float4s per thread are loaded before any
 * is used, so enough bytes are in flight to cover the memory latency. Needs ld == k.
 */
#define RTN_UNROLL 4

template <int L>
__global__ void __launch_bounds__(QD_CUDA_THREADS) rtn_small_kernel(rtn_args a) {
    const int64_t n_vec = a.n * a.k / 4; /* a group is never split: gs | k, so L | n_vec */
    const int64_t step = (int64_t)gridDim.x * blockDim.x;
    const float4 *w4 = (const float4 *)a.w;
    /* the loop bound is uniform over each warp (base steps by whole blocks), so every lane
     * reaches every shuffle */
    for (int64_t base = (int64_t)blockIdx.x * blockDim.x; base < n_vec;
         base += step * RTN_UNROLL) {
        float4 x[RTN_UNROLL];
#pragma unroll
        for (int u = 0; u < RTN_UNROLL; u++) {
            int64_t v = base + u * step + threadIdx.x;
            x[u] = v < n_vec ? w4[v] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
#pragma unroll
        for (int u = 0; u < RTN_UNROLL; u++) {
            const int64_t v = base + u * step + threadIdx.x;
            const bool valid = v < n_vec; /* whole groups are valid or not */
            float lo = INFINITY, hi = -INFINITY;
            if (valid) {
                lo = fminf(fminf(x[u].x, x[u].y), fminf(x[u].z, x[u].w));
                hi = fmaxf(fmaxf(x[u].x, x[u].y), fmaxf(x[u].z, x[u].w));
            }
#pragma unroll
            for (int o = L / 2; o > 0; o >>= 1) {
                float t = __shfl_xor_sync(QD_FULL_MASK, lo, o);
                lo = t < lo ? t : lo;
                t = __shfl_xor_sync(QD_FULL_MASK, hi, o);
                hi = t > hi ? t : hi;
            }
            if (!valid) continue;
            qd_qstats st;
            st.lo = lo;
            st.hi = hi;
            st.amax = fabsf(lo) > fabsf(hi) ? fabsf(lo) : fabsf(hi);
            qd_qparams p = qd_quant_params(a.rule, a.bits, st, a.sdt);
            if (v % L == 0) {
                a.scales[v / L] = p.scale;
                a.zeros[v / L] = p.zero;
            }
            if (a.codes)
                ((uchar4 *)a.codes)[v] = make_uchar4(qd_quant_code(a.rule, a.bits, p, x[u].x),
                                                     qd_quant_code(a.rule, a.bits, p, x[u].y),
                                                     qd_quant_code(a.rule, a.bits, p, x[u].z),
                                                     qd_quant_code(a.rule, a.bits, p, x[u].w));
        }
    }
}

/*
 * Whole rows (per-channel RTN, per-channel FP8) when a row fits in shared memory: a block per
 * row loads it once (float4 when aligned), reduces lo/hi over the block, and writes the codes
 * from shared memory, so the weights are read from device memory once. FP8 (a.bits == 0)
 * takes amax and qd_fp8_scale instead of a rule's parameters; a.zeros is unused there.
 */
__global__ void __launch_bounds__(QD_CUDA_THREADS) row_kernel(rtn_args a, bool vec) {
    extern __shared__ __align__(16) float row_smem[]; /* [k] */
    __shared__ float red_lo[QD_CUDA_THREADS / 32], red_hi[QD_CUDA_THREADS / 32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int64_t r = blockIdx.x; r < a.n; r += gridDim.x) {
        const float *x = a.w + r * a.ld; /* [k] */
        float lo = INFINITY, hi = -INFINITY;
        if (vec) {
            for (int64_t i = threadIdx.x; i < a.k / 4; i += blockDim.x) {
                float4 v = ((const float4 *)x)[i];
                ((float4 *)row_smem)[i] = v;
                lo = fminf(lo, fminf(fminf(v.x, v.y), fminf(v.z, v.w)));
                hi = fmaxf(hi, fmaxf(fmaxf(v.x, v.y), fmaxf(v.z, v.w)));
            }
        } else {
            for (int64_t i = threadIdx.x; i < a.k; i += blockDim.x) {
                float v = x[i];
                row_smem[i] = v;
                lo = v < lo ? v : lo;
                hi = v > hi ? v : hi;
            }
        }
        qd_qstats st = qd_warp_stats(lo, hi);
        if (lane == 0) {
            red_lo[warp] = st.lo;
            red_hi[warp] = st.hi;
        }
        __syncthreads();
        lo = lane < (int)(blockDim.x >> 5) ? red_lo[lane] : INFINITY;
        hi = lane < (int)(blockDim.x >> 5) ? red_hi[lane] : -INFINITY;
        st = qd_warp_stats(lo, hi); /* every warp reduces the same partials */
        qd_qparams p;
        if (a.bits == 0) {
            p.scale = qd_fp8_scale(st.amax, a.sdt);
            p.zero = 0.0f;
        } else {
            p = qd_quant_params(a.rule, a.bits, st, a.sdt);
        }
        if (threadIdx.x == 0) {
            a.scales[r] = p.scale;
            if (a.bits) a.zeros[r] = p.zero;
        }
        if (a.codes) {
            uint8_t *out = a.codes + r * a.k;
            if (vec) {
                for (int64_t i = threadIdx.x; i < a.k / 4; i += blockDim.x) {
                    float4 v = ((const float4 *)row_smem)[i];
                    uchar4 o;
                    if (a.bits == 0) {
                        o = make_uchar4(qd_fp8_code(p.scale, v.x), qd_fp8_code(p.scale, v.y),
                                        qd_fp8_code(p.scale, v.z), qd_fp8_code(p.scale, v.w));
                    } else {
                        o = make_uchar4(qd_quant_code(a.rule, a.bits, p, v.x),
                                        qd_quant_code(a.rule, a.bits, p, v.y),
                                        qd_quant_code(a.rule, a.bits, p, v.z),
                                        qd_quant_code(a.rule, a.bits, p, v.w));
                    }
                    ((uchar4 *)out)[i] = o;
                }
            } else {
                for (int64_t i = threadIdx.x; i < a.k; i += blockDim.x)
                    out[i] = a.bits == 0 ? qd_fp8_code(p.scale, row_smem[i])
                                         : qd_quant_code(a.rule, a.bits, p, row_smem[i]);
            }
        }
        __syncthreads(); /* row_smem and the partials are reused by the next row */
    }
}

/* Launch row_kernel when a row fits in shared memory; *ret_done false otherwise. */
static qd_err row_launch(qd_cuda *c, const rtn_args *a, bool *ret_done, qd_error *err) {
    qd_err rc = QD_OK;
    size_t smem = (size_t)a->k * sizeof(float);
    *ret_done = false;
    if (a->dead || a->ld != a->k || smem > c->smem_optin || a->n < 1) return QD_OK;
    bool vec = a->k % 4 == 0 && aligned16(a->w) && (!a->codes || aligned16(a->codes));
    int64_t cap = (int64_t)c->n_sm * 8;
    unsigned blocks = (unsigned)(a->n < cap ? a->n : cap);
    if (smem > 48 * 1024)
        QD_CU_TRY(c, err, cudaFuncSetAttribute(row_kernel,
                                               cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               (int)smem));
    row_kernel<<<blocks, QD_CUDA_THREADS, smem, c->stream>>>(*a, vec);
    QD_CU_LAUNCHED(c, err, "row_kernel");
    *ret_done = true;
    return QD_OK;
fail:
    return rc;
}

/* Launch the RTN kernel (no checks of the arguments; callers check). */
static qd_err rtn_launch(qd_cuda *c, const rtn_args *a, qd_error *err) {
    qd_err rc = QD_OK;
    bool vec = !a->dead && a->gs % 4 == 0 && a->ld % 4 == 0 && aligned16(a->w) &&
               (!a->codes || (a->k % 4 == 0 && aligned16(a->codes)));
    unsigned blocks = warp_blocks(c, a->n * a->ng);
    int lanes = (int)(a->gs / 4);
    if (a->gs == a->k && a->ng == 1) {
        bool done = false;
        if ((rc = row_launch(c, a, &done, err))) return rc;
        if (done) return QD_OK;
    }
    if (vec && a->ld == a->k && a->gs <= 128 && (lanes & (lanes - 1)) == 0) {
        int64_t threads = a->n * a->k / 4;
        int64_t want = (threads + QD_CUDA_THREADS - 1) / QD_CUDA_THREADS;
        int64_t cap = (int64_t)c->n_sm * 16;
        unsigned sb = (unsigned)(want < cap ? want : cap);
        switch (lanes) {
        case 1: rtn_small_kernel<1><<<sb, QD_CUDA_THREADS, 0, c->stream>>>(*a); break;
        case 2: rtn_small_kernel<2><<<sb, QD_CUDA_THREADS, 0, c->stream>>>(*a); break;
        case 4: rtn_small_kernel<4><<<sb, QD_CUDA_THREADS, 0, c->stream>>>(*a); break;
        case 8: rtn_small_kernel<8><<<sb, QD_CUDA_THREADS, 0, c->stream>>>(*a); break;
        case 16: rtn_small_kernel<16><<<sb, QD_CUDA_THREADS, 0, c->stream>>>(*a); break;
        default: rtn_small_kernel<32><<<sb, QD_CUDA_THREADS, 0, c->stream>>>(*a); break;
        }
        QD_CU_LAUNCHED(c, err, "rtn_small_kernel");
        return QD_OK;
    }
    if (vec)
        rtn_kernel<true><<<blocks, QD_CUDA_THREADS, 0, c->stream>>>(*a);
    else
        rtn_kernel<false><<<blocks, QD_CUDA_THREADS, 0, c->stream>>>(*a);
    QD_CU_LAUNCHED(c, err, "rtn_kernel");
    return QD_OK;
fail:
    return rc;
}

/* Shared argument checks of RTN and the packs. */
static qd_err check_rtn(int64_t n, int64_t k, int bits, int64_t group_size, qd_qrule rule,
                        qd_dtype sdt, const char *what, qd_error *err) {
    if (n < 1 || k < 1)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda %s: bad weight shape [%lld, %lld]",
                            what, (long long)n, (long long)k);
    if (bits < QD_QUANT_MIN_BITS || bits > QD_QUANT_MAX_BITS)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda %s: bits %d outside %d..%d", what,
                            bits, QD_QUANT_MIN_BITS, QD_QUANT_MAX_BITS);
    if (group_size < 1 || k % group_size != 0)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda %s: group_size %lld does not divide "
                            "in_features %lld", what, (long long)group_size, (long long)k);
    if (!qd_qrule_valid((int)rule))
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda %s: unknown quantization rule %d",
                            what, (int)rule);
    if (sdt != QD_DTYPE_F32 && sdt != QD_DTYPE_F16 && sdt != QD_DTYPE_BF16)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda %s: scale dtype %d is not F32, F16 "
                            "or BF16", what, (int)sdt);
    return QD_OK;
}

extern "C" qd_err qd_quant_rtn_cuda(qd_cuda *c, const float *w, int64_t n, int64_t k, int bits,
                                    int64_t group_size, qd_qrule rule, qd_dtype scale_dtype,
                                    uint8_t *codes, float *scales, float *zeros,
                                    qd_error *err) {
    qd_err rc = qd_cuda_usable(c, err);
    if (rc) return rc;
    if ((rc = check_rtn(n, k, bits, group_size, rule, scale_dtype, "rtn", err))) return rc;
    if (!w || !scales || !zeros)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda rtn: NULL buffer");
    rtn_args a = {w, n, k, k, group_size, k / group_size, bits, rule, scale_dtype, NULL,
                  codes, scales, zeros};
    return rtn_launch(c, &a, err);
}

/* Parameters only, with an optional dead-column mask and a row stride: GPTQ's per-channel and
 * static-group parameters (gptq.cu). */
qd_err qd_cuda_group_params_(qd_cuda *c, const float *w, int64_t n, int64_t k,
                                        int64_t ld, int64_t gs, const uint8_t *dead, int bits,
                                        qd_qrule rule, qd_dtype sdt, float *scales,
                                        float *zeros, qd_error *err) {
    rtn_args a = {w, n, k, ld, gs, k / gs, bits, rule, sdt, dead, NULL, scales, zeros};
    return rtn_launch(c, &a, err);
}

/* ---- FP8 ----------------------------------------------------------------------------------- */

/* amax[r] = max |w[r, :]|, or with per_channel the row's scale and codes directly. */
__global__ void __launch_bounds__(QD_CUDA_THREADS)
    fp8_rows_kernel(const float *w, int64_t n, int64_t k, bool per_channel, qd_dtype sdt,
                    uint8_t *codes, float *scales) {
    const int lane = threadIdx.x & 31;
    const int64_t n_warps = ((int64_t)gridDim.x * blockDim.x) >> 5;
    for (int64_t r = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5; r < n;
         r += n_warps) {
        const float *x = w + r * k; /* [k] */
        float m = 0.0f;
        for (int64_t i = lane; i < k; i += 32) m = fmaxf(m, fabsf(x[i]));
        m = qd_warp_max(m);
        if (!per_channel) {
            if (lane == 0) scales[r] = m;
            continue;
        }
        float s = qd_fp8_scale(m, sdt);
        if (lane == 0) scales[r] = s;
        for (int64_t i = lane; i < k; i += 32) codes[r * k + i] = qd_fp8_code(s, x[i]);
    }
}

/* *tensor_scale = qd_fp8_scale(max over amax[0..n-1]); one block. */
__global__ void __launch_bounds__(QD_CUDA_THREADS)
    fp8_tensor_scale_kernel(const float *amax, int64_t n, qd_dtype sdt, float *tensor_scale) {
    __shared__ float part[QD_CUDA_THREADS / 32];
    float m = 0.0f;
    for (int64_t r = threadIdx.x; r < n; r += blockDim.x) m = fmaxf(m, amax[r]);
    m = qd_warp_max(m);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = m;
    __syncthreads();
    if (threadIdx.x < 32) {
        m = threadIdx.x < blockDim.x / 32 ? part[threadIdx.x] : 0.0f;
        m = qd_warp_max(m);
        if (threadIdx.x == 0) *tensor_scale = qd_fp8_scale(m, sdt);
    }
}

__global__ void __launch_bounds__(QD_CUDA_THREADS)
    fp8_codes_kernel(const float *w, int64_t n, int64_t k, const float *tensor_scale,
                     uint8_t *codes, float *scales) {
    const float s = *tensor_scale;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n * k; i += stride) {
        codes[i] = qd_fp8_code(s, w[i]);
        if (i % k == 0) scales[i / k] = s;
    }
}

extern "C" qd_err qd_quant_fp8_cuda(qd_cuda *c, const float *w, int64_t n, int64_t k,
                                    bool per_channel, qd_dtype scale_dtype, uint8_t *codes,
                                    float *scales, qd_error *err) {
    qd_err rc = qd_cuda_usable(c, err);
    float *d_ts = NULL;
    if (rc) return rc;
    if (n < 1 || k < 1 || !w || !codes || !scales)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda fp8: bad arguments (shape [%lld, "
                            "%lld])", (long long)n, (long long)k);
    if (scale_dtype != QD_DTYPE_F32 && scale_dtype != QD_DTYPE_F16 &&
        scale_dtype != QD_DTYPE_BF16)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda fp8: scale dtype %d is not F32, F16 "
                            "or BF16", (int)scale_dtype);
    if (per_channel) {
        /* bits 0 selects FP8 in row_kernel */
        rtn_args ra = {w, n, k, k, k, 1, 0, QD_QRULE_COUNT, scale_dtype, NULL, codes, scales,
                       NULL};
        bool done = false;
        if ((rc = row_launch(c, &ra, &done, err))) return rc;
        if (done) return QD_OK;
    }
    fp8_rows_kernel<<<warp_blocks(c, n), QD_CUDA_THREADS, 0, c->stream>>>(
        w, n, k, per_channel, scale_dtype, codes, scales);
    QD_CU_LAUNCHED(c, err, "fp8_rows_kernel");
    if (!per_channel) {
        if ((rc = qd_cuda_scratch(c, sizeof(float), (void **)&d_ts, "the fp8 tensor scale",
                                  err)))
            goto fail;
        fp8_tensor_scale_kernel<<<1, QD_CUDA_THREADS, 0, c->stream>>>(scales, n, scale_dtype,
                                                                      d_ts);
        QD_CU_LAUNCHED(c, err, "fp8_tensor_scale_kernel");
        fp8_codes_kernel<<<qd_cuda_blocks(n * k, QD_CUDA_THREADS), QD_CUDA_THREADS, 0,
                           c->stream>>>(w, n, k, d_ts, codes, scales);
        QD_CU_LAUNCHED(c, err, "fp8_codes_kernel");
    }
    rc = QD_OK;
fail:
    qd_cuda_scratch_free(c, d_ts);
    return rc;
}

/* ---- quantize + pack ---------------------------------------------------------------------- */

enum { LAY_AWQ = 0, LAY_GPTQ, LAY_CT };
enum { SRC_FUSED = 0, SRC_PARAMS, SRC_CODES };

struct pack_args {
    const float *w;          /* [n, k] (FUSED, PARAMS) */
    const uint8_t *codes_in; /* [n, k] (CODES) */
    int64_t n, k, gs, ng;
    int bits;
    qd_qrule rule;
    qd_dtype sdt;
    int tc;                  /* columns per tile (FUSED: gs) */
    int pitch;               /* bytes per code row in shared memory */
    bool vec4;               /* FUSED: rows of w 16-byte aligned, tc % 4 == 0 */
    float *scales, *zeros;   /* [n, ng]: written (FUSED) or read (PARAMS) */
    uint8_t *codes_out;      /* [n, k] or NULL (FUSED, PARAMS) */
    uint32_t *qweight;
};

template <int LAYOUT, int SRC>
__global__ void __launch_bounds__(QD_CUDA_THREADS) pack_tile_kernel(pack_args a) {
    extern __shared__ __align__(16) unsigned char smem[];
    float *sw = (float *)smem; /* [PACK_ROWS, tc] weights (FUSED) */
    uint8_t *sc = smem + (SRC == SRC_FUSED ? (size_t)PACK_ROWS * a.tc * sizeof(float) : 0);
    const int64_t r0 = (int64_t)blockIdx.y * PACK_ROWS, c0 = (int64_t)blockIdx.x * a.tc;
    const int rows = (int)min((int64_t)PACK_ROWS, a.n - r0);
    const int cols = (int)min((int64_t)a.tc, a.k - c0);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int n_warps = blockDim.x >> 5;

    /* 0. (fused) the whole tile into shared memory at once, every thread loading, so all of
     *    the tile's bytes are in flight together; float4 when rows are 16-byte aligned */
    if (SRC == SRC_FUSED) {
        if (a.vec4) {
            const int c4 = cols / 4;
#pragma unroll 4
            for (int idx = threadIdx.x; idx < rows * c4; idx += blockDim.x) {
                int r = idx / c4, cc = idx % c4;
                ((float4 *)(sw + (size_t)r * a.tc))[cc] =
                    ((const float4 *)(a.w + (r0 + r) * a.k + c0))[cc];
            }
        } else {
#pragma unroll 4
            for (int idx = threadIdx.x; idx < rows * cols; idx += blockDim.x) {
                int r = idx / cols, cc = idx % cols;
                sw[(size_t)r * a.tc + cc] = a.w[(r0 + r) * a.k + c0 + cc];
            }
        }
        __syncthreads();
    }

    /* 1. codes of the tile into sc [PACK_ROWS, pitch], 0 past the tile's rows and columns
     *    (the padding compressed-tensors writes) */
    for (int r = warp; r < PACK_ROWS; r += n_warps) {
        uint8_t *crow = sc + (size_t)r * a.pitch;
        if (r >= rows) {
            for (int cc = lane; cc < a.pitch; cc += 32) crow[cc] = 0;
            continue;
        }
        const int64_t gr = r0 + r;
        if (SRC == SRC_FUSED) {
            const float *srow = sw + (size_t)r * a.tc;
            float lo = INFINITY, hi = -INFINITY;
            for (int cc = lane; cc < cols; cc += 32) {
                float v = srow[cc];
                lo = v < lo ? v : lo;
                hi = v > hi ? v : hi;
            }
            qd_qparams p = qd_quant_params(a.rule, a.bits, qd_warp_stats(lo, hi), a.sdt);
            if (lane == 0) {
                a.scales[gr * a.ng + blockIdx.x] = p.scale;
                a.zeros[gr * a.ng + blockIdx.x] = p.zero;
            }
            for (int cc = lane; cc < a.pitch; cc += 32)
                crow[cc] = cc < cols ? qd_quant_code(a.rule, a.bits, p, srow[cc]) : 0;
        } else if (SRC == SRC_PARAMS) {
            const float *wr = a.w + gr * a.k + c0;
            for (int cc = lane; cc < a.pitch; cc += 32) {
                uint8_t code = 0;
                if (cc < cols) {
                    int64_t g = (c0 + cc) / a.gs;
                    qd_qparams p;
                    p.scale = a.scales[gr * a.ng + g];
                    p.zero = a.zeros[gr * a.ng + g];
                    code = qd_quant_code(a.rule, a.bits, p, wr[cc]);
                }
                crow[cc] = code;
            }
        } else {
            const uint8_t *cr = a.codes_in + gr * a.k + c0;
            for (int cc = lane; cc < a.pitch; cc += 32) crow[cc] = cc < cols ? cr[cc] : 0;
        }
        if (SRC != SRC_CODES && a.codes_out) {
            __syncwarp();
            for (int cc = lane; cc < cols; cc += 32) a.codes_out[gr * a.k + c0 + cc] = crow[cc];
        }
    }
    __syncthreads();

    /* 2. words; consecutive threads write consecutive words of one output row */
    if (LAYOUT == LAY_AWQ) {
        /* qweight [K, N/8]: word (col, j) packs rows 8j..8j+7 of the column, interleaved */
        const int wpr = PACK_ROWS / 8;
        const int64_t nw = a.n / 8;
        for (int t = threadIdx.x; t < cols * wpr; t += blockDim.x) {
            int j = t % wpr, cc = t / wpr;
            if (8 * j >= rows) continue;
            a.qweight[(c0 + cc) * nw + r0 / 8 + j] =
                qd_pack_awq(sc + (size_t)(8 * j) * a.pitch + cc, a.pitch);
        }
    } else if (LAYOUT == LAY_GPTQ) {
        /* qweight [K/pf, N]: word (c/pf, row) packs pf consecutive columns of the row */
        const int pf = qd_pack_per_word(a.bits);
        const int nwc = cols / pf; /* cols is a multiple of pf (checked) */
        for (int t = threadIdx.x; t < nwc * PACK_ROWS; t += blockDim.x) {
            int row = t % PACK_ROWS, wc = t / PACK_ROWS;
            if (row >= rows) continue;
            a.qweight[(c0 / pf + wc) * a.n + r0 + row] =
                qd_pack_seq(sc + (size_t)row * a.pitch + wc * pf, 1, pf, a.bits);
        }
    } else {
        /* weight_packed [N, ceil(K/pf)]: the row's words, the last one padded with 0 */
        const int pf = qd_pack_per_word(a.bits);
        const int nwc = (cols + pf - 1) / pf;
        const int64_t wcn = (a.k + pf - 1) / pf;
        for (int t = threadIdx.x; t < rows * nwc; t += blockDim.x) {
            int wc = t % nwc, row = t / nwc;
            a.qweight[(r0 + row) * wcn + c0 / pf + wc] =
                qd_pack_seq(sc + (size_t)row * a.pitch + wc * pf, 1, pf, a.bits);
        }
    }
}

/* qzeros of each layout from zeros [n, ng] (integers in float), one thread per word. */
__global__ void __launch_bounds__(QD_CUDA_THREADS)
    pack_zeros_kernel(int layout, const float *zeros, int64_t n, int64_t ng, int bits, int off,
                      uint32_t *qzeros) {
    const int pf = qd_pack_per_word(bits);
    int64_t n_words;
    if (layout == LAY_AWQ)
        n_words = ng * (n / 8);
    else if (layout == LAY_GPTQ)
        n_words = ng * (n / pf);
    else
        n_words = (n + pf - 1) / pf * ng;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; t < n_words; t += stride) {
        uint32_t word = 0;
        if (layout == LAY_AWQ) {
            /* [NG, N/8]: word (g, j), nibble i = zero of row 8j + order(i), raw */
            int64_t nw = n / 8, g = t / nw, j = t % nw;
            for (int i = 0; i < 8; i++)
                word |= qd_pack_zero_field(zeros[(8 * j + qd_awq_order(i)) * ng + g], 0, 4)
                        << (4 * i);
        } else if (layout == LAY_GPTQ) {
            /* [NG, N/pf]: word (g, cw), field i = zero of row cw*pf + i, minus off */
            int64_t nw = n / pf, g = t / nw, cw = t % nw;
            for (int i = 0; i < pf; i++)
                word |= qd_pack_zero_field(zeros[(cw * pf + i) * ng + g], off, bits)
                        << (bits * i);
        } else {
            /* [ceil(N/pf), NG]: word (rw, g), field i = zero of row rw*pf + i, 0 past N */
            int64_t rw = t / ng, g = t % ng;
            for (int i = 0; i < pf; i++) {
                int64_t row = rw * pf + i;
                if (row < n) word |= qd_pack_zero_field(zeros[row * ng + g], 0, bits) << (bits * i);
            }
        }
        qzeros[t] = word;
    }
}

/* The layout's scale tensor from scales [n, ng]: transposed to [ng, n] (AWQ, GPTQ) or not
 * (compressed-tensors), stored in dt (F16, BF16 or F32). */
__global__ void __launch_bounds__(QD_CUDA_THREADS)
    pack_scales_kernel(const float *scales, int64_t n, int64_t ng, bool transpose, qd_dtype dt,
                       void *out) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; t < n * ng; t += stride) {
        /* t indexes the output; src is the [n, ng] element it holds */
        int64_t src = transpose ? (t % n) * ng + t / n : t;
        float v = scales[src];
        if (dt == QD_DTYPE_F16)
            ((uint16_t *)out)[t] = qd_fp32_to_fp16(v);
        else if (dt == QD_DTYPE_BF16)
            ((uint16_t *)out)[t] = qd_fp32_to_bf16(v);
        else
            ((float *)out)[t] = v;
    }
}

static int kernel_layout(qd_cuda_layout l) {
    if (l == QD_CUDA_LAYOUT_AWQ_GEMM) return LAY_AWQ;
    if (l == QD_CUDA_LAYOUT_CT_PACKED) return LAY_CT;
    return LAY_GPTQ;
}

typedef void (*pack_kernel_fn)(pack_args);

static pack_kernel_fn pack_kernel_for(int lay, int src) {
    static const pack_kernel_fn table[3][3] = {
        {pack_tile_kernel<LAY_AWQ, SRC_FUSED>, pack_tile_kernel<LAY_AWQ, SRC_PARAMS>,
         pack_tile_kernel<LAY_AWQ, SRC_CODES>},
        {pack_tile_kernel<LAY_GPTQ, SRC_FUSED>, pack_tile_kernel<LAY_GPTQ, SRC_PARAMS>,
         pack_tile_kernel<LAY_GPTQ, SRC_CODES>},
        {pack_tile_kernel<LAY_CT, SRC_FUSED>, pack_tile_kernel<LAY_CT, SRC_PARAMS>,
         pack_tile_kernel<LAY_CT, SRC_CODES>},
    };
    return table[lay][src];
}

/* The tile pass, then zeros and scale tensors. a->scales/zeros hold or receive [n, ng]. */
static qd_err pack_run(qd_cuda *c, pack_args *a, int src, qd_cuda_layout layout,
                       const qd_cuda_packed *out, qd_error *err) {
    qd_err rc = QD_OK;
    const int lay = kernel_layout(layout);
    a->tc = src == SRC_FUSED ? (int)a->gs : PACK_CHUNK;
    /* rows padded to a multiple of every pf, plus one bank (4 bytes), so the threads that
     * read one word each from consecutive rows hit distinct shared-memory banks */
    a->pitch = (a->tc + PACK_PITCH_ALIGN - 1) / PACK_PITCH_ALIGN * PACK_PITCH_ALIGN + 4;
    a->vec4 = src == SRC_FUSED && a->tc % 4 == 0 && a->k % 4 == 0 && aligned16(a->w);
    size_t smem = (size_t)PACK_ROWS * a->pitch +
                  (src == SRC_FUSED ? (size_t)PACK_ROWS * a->tc * sizeof(float) : 0);
    pack_kernel_fn fn = pack_kernel_for(lay, src);
    dim3 grid((unsigned)((a->k + a->tc - 1) / a->tc),
              (unsigned)((a->n + PACK_ROWS - 1) / PACK_ROWS));
    if (smem > 48 * 1024)
        QD_CU_TRY(c, err, cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               (int)smem));
    fn<<<grid, QD_CUDA_THREADS, smem, c->stream>>>(*a);
    QD_CU_LAUNCHED(c, err, "pack_tile_kernel");
    if (out->qzeros) {
        const int pf = qd_pack_per_word(a->bits);
        int64_t words = lay == LAY_AWQ    ? a->ng * (a->n / 8)
                        : lay == LAY_GPTQ ? a->ng * (a->n / pf)
                                          : (a->n + pf - 1) / pf * a->ng;
        int off = layout == QD_CUDA_LAYOUT_GPTQ_V1 ? 1 : 0;
        pack_zeros_kernel<<<qd_cuda_blocks(words, QD_CUDA_THREADS), QD_CUDA_THREADS, 0,
                            c->stream>>>(lay, a->zeros, a->n, a->ng, a->bits, off, out->qzeros);
        QD_CU_LAUNCHED(c, err, "pack_zeros_kernel");
    }
    if (out->scales) {
        bool transpose = lay != LAY_CT;
        qd_dtype dt = lay == LAY_CT ? a->sdt : QD_DTYPE_F16;
        pack_scales_kernel<<<qd_cuda_blocks(a->n * a->ng, QD_CUDA_THREADS), QD_CUDA_THREADS, 0,
                             c->stream>>>(a->scales, a->n, a->ng, transpose, dt, out->scales);
        QD_CU_LAUNCHED(c, err, "pack_scales_kernel");
    }
    return QD_OK;
fail:
    return rc;
}

extern "C" qd_err qd_quant_pack_cuda(qd_cuda *c, const float *w, int64_t n, int64_t k, int bits,
                                     int64_t group_size, qd_qrule rule, qd_dtype scale_dtype,
                                     qd_cuda_layout layout, const qd_cuda_packed *out,
                                     qd_error *err) {
    qd_err rc = qd_cuda_usable(c, err);
    float *sc_scratch = NULL, *z_scratch = NULL;
    pack_args a;
    int src;
    int64_t ng;
    if (rc) return rc;
    if ((rc = check_rtn(n, k, bits, group_size, rule, scale_dtype, "pack", err))) return rc;
    if ((rc = qd_cuda_check_layout(layout, n, k, bits, group_size, rule, scale_dtype,
                                     out, err)))
        return rc;
    if (!w) return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda pack: NULL weights");
    ng = k / group_size;
    memset(&a, 0, sizeof a);
    a.w = w;
    a.n = n;
    a.k = k;
    a.gs = group_size;
    a.ng = ng;
    a.bits = bits;
    a.rule = rule;
    a.sdt = scale_dtype;
    a.codes_out = out->codes;
    a.qweight = out->qweight;
    a.scales = out->scales_f32;
    a.zeros = out->zeros_f32;
    if (!a.scales &&
        (rc = qd_cuda_scratch(c, (size_t)(n * ng) * sizeof(float), (void **)&sc_scratch,
                              "pack scales", err)))
        goto fail;
    if (!a.zeros &&
        (rc = qd_cuda_scratch(c, (size_t)(n * ng) * sizeof(float), (void **)&z_scratch,
                              "pack zero points", err)))
        goto fail;
    if (!a.scales) a.scales = sc_scratch;
    if (!a.zeros) a.zeros = z_scratch;
    src = group_size <= PACK_MAX_FUSED_G ? SRC_FUSED : SRC_PARAMS;
    if (src == SRC_PARAMS) {
        rtn_args ra = {w, n, k, k, group_size, ng, bits, rule, scale_dtype, NULL, NULL,
                       a.scales, a.zeros};
        if ((rc = rtn_launch(c, &ra, err))) goto fail;
    }
    rc = pack_run(c, &a, src, layout, out, err);
fail:
    qd_cuda_scratch_free(c, sc_scratch);
    qd_cuda_scratch_free(c, z_scratch);
    return rc;
}

extern "C" qd_err qd_pack_codes_cuda(qd_cuda *c, const uint8_t *codes, const float *scales,
                                     const float *zeros, int64_t n, int64_t k, int bits,
                                     int64_t group_size, qd_qrule rule, qd_dtype scale_dtype,
                                     qd_cuda_layout layout, const qd_cuda_packed *out,
                                     qd_error *err) {
    qd_err rc = qd_cuda_usable(c, err);
    pack_args a;
    if (rc) return rc;
    if ((rc = check_rtn(n, k, bits, group_size, rule, scale_dtype, "pack", err))) return rc;
    if ((rc = qd_cuda_check_layout(layout, n, k, bits, group_size, rule, scale_dtype,
                                     out, err)))
        return rc;
    if (!codes || !scales || !zeros)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda pack: NULL codes or parameters");
    memset(&a, 0, sizeof a);
    a.codes_in = codes;
    a.n = n;
    a.k = k;
    a.gs = group_size;
    a.ng = k / group_size;
    a.bits = bits;
    a.rule = rule;
    a.sdt = scale_dtype;
    a.qweight = out->qweight;
    a.scales = (float *)scales; /* read only in this mode */
    a.zeros = (float *)zeros;
    return pack_run(c, &a, SRC_CODES, layout, out, err);
}
