/*
 * qd_cuda.h - the CUDA backend, callable from C: a device context (stream, cuBLAS and
 * cuSOLVER handles), device buffers, and every kernel quantd runs on the GPU.
 *
 * Usage
 *   qd_cuda *c;
 *   if (qd_cuda_open(0, &c, &err) != QD_OK) ... ("no CUDA device" when there is none)
 *   float *d_w;  qd_cuda_alloc(c, n * k * sizeof(float), (void **)&d_w, &err);
 *   qd_cuda_upload(c, d_w, w, n * k * sizeof(float), &err);
 *   qd_quant_rtn_cuda(c, d_w, n, k, 4, 128, QD_QRULE_ASYM_MINMAX, QD_DTYPE_F16, d_codes,
 *                     d_scales, d_zeros, &err);
 *   qd_cuda_download(c, codes, d_codes, n * k, &err);      (waits for the stream)
 *   qd_cuda_free(c, d_w);  qd_cuda_close(c);
 *
 * Conventions
 *   - Every pointer an op takes is DEVICE memory unless its comment says "host". Ops are
 *     queued on the context's stream and return at once; qd_cuda_download() and
 *     qd_cuda_sync() wait. Each op has the contract of its ref/cpu twin (ops.h, quant.h), with
 *     the same shapes and row-major layouts.
 *   - Every CUDA, cuBLAS and cuSOLVER call is checked. A failure returns QD_ERR_NOMEM when
 *     memory ran out (cudaErrorMemoryAllocation, CUBLAS_STATUS_ALLOC_FAILED, ...), else
 *     QD_ERR_DEVICE, with the operation and the library's error text in the message, and
 *     frees what the call had allocated. An error that leaves the device unusable (an illegal
 *     address in a kernel, ...) marks the context broken: every later call fails with
 *     QD_ERR_DEVICE, and the owner must close it (the process may need to exit before the
 *     device works again). Out of memory does not break the context.
 *   - Scratch memory of an op comes from the stream-ordered pool (cudaMallocAsync) and is
 *     released before the op returns; buffers from qd_cuda_alloc() are plain cudaMalloc.
 *   - One context is used by one thread at a time.
 *
 * Numerics (what the cross-backend test tests/gpu/test-cuda.c checks):
 *   - RTN/FP8 codes and scales, zero points and packed words are bit-identical to
 *     kernels/ref: the per-element rules are quant.h's and dtype.h's QD_HD functions, which
 *     use no contraction-prone expression, and nvcc builds them without fast-math.
 *   - RoPE is bit-identical (explicit round-to-nearest multiply and add, no FMA). RMSNorm and
 *     SiLU*up compute in double like ref and differ at most in the last float bit.
 *   - GEMMs are fp32 cuBLAS without TF32, or bf16/fp16 operands with fp32 accumulation; the
 *     attention accumulates in float (online softmax). Their tolerances are in the test.
 *   - GPTQ follows quantizers/gptq.c step for step; the in-block column updates use the
 *     same IEEE operations in the same order, so codes differ only where cuSOLVER's factor or
 *     cuBLAS's trailing GEMM round differently from LAPACK/OpenBLAS.
 */
#ifndef QD_CUDA_H
#define QD_CUDA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "error.h"
#include "quant.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- context ---------------------------------------------------------------------------- */

typedef struct qd_cuda qd_cuda;

/*
 * Open CUDA device `device` (0-based): select it, create a non-blocking stream and the cuBLAS
 * and cuSOLVER handles bound to it. *ret_ctx is written only on success; close it with
 * qd_cuda_close(). Errors: QD_ERR_UNAVAILABLE "no CUDA device" (none found, or the driver is
 * missing: the message carries the runtime's reason), QD_ERR_INVALID_ARG (device out of
 * range), QD_ERR_DEVICE / QD_ERR_NOMEM from the runtime and libraries.
 */
qd_err qd_cuda_open(int device, qd_cuda **ret_ctx, qd_error *err);
/* Wait for the stream, destroy the handles and the stream, free the context. Accepts NULL. */
void qd_cuda_close(qd_cuda *c);
/* The device behind the context (name, memory, compute capability). Borrowed. */
const qd_device_info *qd_cuda_info(const qd_cuda *c);
/* Multiprocessors on the device. */
int qd_cuda_sm_count(const qd_cuda *c);
/* Whether an earlier error left the device unusable (see the header comment). */
bool qd_cuda_broken(const qd_cuda *c);

/* ---- memory ----------------------------------------------------------------------------- */

/* *ret_ptr = nbytes of device memory (cudaMalloc; nbytes 0 gives NULL). QD_ERR_NOMEM when the
 * device has not that much free. The caller frees it with qd_cuda_free(). */
qd_err qd_cuda_alloc(qd_cuda *c, size_t nbytes, void **ret_ptr, qd_error *err);
/* Free a qd_cuda_alloc() buffer after the stream's queued work. Accepts NULL. */
void qd_cuda_free(qd_cuda *c, void *ptr);
/* Host -> device copy of nbytes, queued on the stream (src must stay valid until it ran;
 * qd_cuda_sync() makes sure). */
qd_err qd_cuda_upload(qd_cuda *c, void *dst, const void *src, size_t nbytes, qd_error *err);
/* Device -> host copy of nbytes; waits for the stream first, so every queued op's result is
 * there when it returns. Also reports a kernel failure that happened since the last wait. */
qd_err qd_cuda_download(qd_cuda *c, void *dst, const void *src, size_t nbytes, qd_error *err);
/* Device -> device copy of nbytes, queued. */
qd_err qd_cuda_copy(qd_cuda *c, void *dst, const void *src, size_t nbytes, qd_error *err);
/* Set nbytes of device memory to the byte value (memset), queued. */
qd_err qd_cuda_fill(qd_cuda *c, void *dst, int byte, size_t nbytes, qd_error *err);
/* Wait for every queued op; reports any failure that happened in them. */
qd_err qd_cuda_sync(qd_cuda *c, qd_error *err);

/* ---- quantization (kernels/quant.h rules) ------------------------------------------------ */

/*
 * RTN group quantization of w [n, k], same contract as qd_quant_rtn_ref: codes [n, k] (NULL:
 * not written, e.g. to compute only the parameters), scales and zeros [n, k / group_size].
 * bits 2..8, group_size divides k (k for per-channel), rule < QD_QRULE_COUNT, scale_dtype
 * F32/F16/BF16; anything else is QD_ERR_INVALID_ARG.
 */
qd_err qd_quant_rtn_cuda(qd_cuda *c, const float *w, int64_t n, int64_t k, int bits,
                         int64_t group_size, qd_qrule rule, qd_dtype scale_dtype,
                         uint8_t *codes, float *scales, float *zeros, qd_error *err);

/* FP8 e4m3 weights of w [n, k], same contract as qd_quant_fp8_ref: codes [n, k] (e4m3 bits),
 * scales [n] (per channel, or the tensor's scale repeated). */
qd_err qd_quant_fp8_cuda(qd_cuda *c, const float *w, int64_t n, int64_t k, bool per_channel,
                         qd_dtype scale_dtype, uint8_t *codes, float *scales, qd_error *err);

/* Packed layouts (kernels/pack.h; docs/formats.md sections 1-3). pf = 32 / bits. */
typedef enum qd_cuda_layout {
    QD_CUDA_LAYOUT_AWQ_GEMM = 0, /* 4-bit; qweight I32 [K, N/8], qzeros I32 [NG, N/8] raw,
                                  * scales F16 [NG, N]; N % 8 == 0 */
    QD_CUDA_LAYOUT_GPTQ_V1,      /* 2/4/8-bit; qweight I32 [K/pf, N], qzeros I32 [NG, N/pf]
                                  * holding zero - 1, scales F16 [NG, N]; symmetric rules only
                                  * (a zero of 0 cannot be stored); N, K, G multiples of pf */
    QD_CUDA_LAYOUT_GPTQ_V2,      /* as v1 with raw zeros; any integer-zero rule */
    QD_CUDA_LAYOUT_CT_PACKED,    /* compressed-tensors pack-quantized, 4/8-bit: weight_packed
                                  * I32 [N, ceil(K/pf)], weight_zero_point I32 [ceil(N/pf), NG],
                                  * weight_scale (scale_dtype) [N, NG]; G % pf == 0 unless
                                  * per-channel */
    QD_CUDA_LAYOUT_COUNT
} qd_cuda_layout;

/* Where a pack writes (device pointers; NULL: that output is not written). */
typedef struct qd_cuda_packed {
    uint32_t *qweight;  /* the layout's packed weight words (required) */
    uint32_t *qzeros;   /* the layout's packed zero points */
    void *scales;       /* the layout's scale tensor: F16 [NG, N] for AWQ and GPTQ, the
                         * scale dtype [N, NG] for compressed-tensors */
    uint8_t *codes;     /* [N, K] unsigned-domain codes */
    float *scales_f32;  /* [N, NG] the stored scales, as qd_quant_rtn_cuda gives them */
    float *zeros_f32;   /* [N, NG] the zero points */
} qd_cuda_packed;

/*
 * Quantize w [n, k] by RTN (as qd_quant_rtn_cuda) and pack it into `layout` in one pass over
 * the weights: a block loads a tile of rows x one group into shared memory, finds each row's
 * parameters, computes the codes and writes the packed words (when a group is wider than a
 * tile, a first pass finds the parameters and the second reads the weights once more). The
 * words equal what quantizers/formats/ writes for the same codes, bit for bit.
 * AWQ and GPTQ store F16 scales, so scale_dtype must be F16 there; integer zero points only
 * (not the DashInfer rules). QD_ERR_INVALID_ARG / QD_ERR_UNSUPPORTED name the constraint.
 */
qd_err qd_quant_pack_cuda(qd_cuda *c, const float *w, int64_t n, int64_t k, int bits,
                          int64_t group_size, qd_qrule rule, qd_dtype scale_dtype,
                          qd_cuda_layout layout, const qd_cuda_packed *out, qd_error *err);

/*
 * Pack codes that were already chosen (GPTQ's, AWQ's): codes [n, k], scales and zeros
 * [n, n_groups] in group order (n_groups = k / group_size, or 1 per channel) into `layout`.
 * out->codes, scales_f32 and zeros_f32 are ignored. scale_dtype is the dtype of the
 * compressed-tensors scale tensor (F16 for AWQ/GPTQ). Same words as qd_quant_pack_cuda.
 */
qd_err qd_pack_codes_cuda(qd_cuda *c, const uint8_t *codes, const float *scales,
                          const float *zeros, int64_t n, int64_t k, int bits,
                          int64_t group_size, qd_qrule rule, qd_dtype scale_dtype,
                          qd_cuda_layout layout, const qd_cuda_packed *out, qd_error *err);

/* ---- dense ops (ops.h contracts) --------------------------------------------------------- */

/* y [m, n] = x [m, k] W^T (+ bias [n]), W [n, k]; fp32 cuBLAS SGEMM, no TF32. */
qd_err qd_matmul_cuda(qd_cuda *c, float *y, const float *x, const float *w, const float *bias,
                      int64_t m, int64_t n, int64_t k, qd_error *err);
/* The same with x and w in dt (F16 or BF16) and fp32 accumulation and output
 * (cublasGemmEx, tensor cores). */
qd_err qd_matmul_lp_cuda(qd_cuda *c, float *y, const void *x, const void *w, qd_dtype dt,
                         const float *bias, int64_t m, int64_t n, int64_t k, qd_error *err);
/* dst = src converted elementwise (dtype.h rules: round to nearest even); F32 <-> F16, BF16,
 * and F32 -> F8_E4M3 (non-saturating, as qd_convert). */
qd_err qd_convert_cuda(qd_cuda *c, void *dst, qd_dtype dst_type, const void *src,
                       qd_dtype src_type, int64_t n, qd_error *err);
/* h [k, k] += alpha * x^T x for x [n, k] (cublasSsyrk on the upper triangle, then mirrored:
 * all of h is written). alpha 1 is qd_xtx_accum_ref's contract. */
qd_err qd_xtx_accum_cuda(qd_cuda *c, float *h, const float *x, int64_t n, int64_t k,
                         float alpha, qd_error *err);
qd_err qd_rmsnorm_cuda(qd_cuda *c, float *y, const float *x, const float *w, int64_t n,
                       int64_t d, double eps, qd_error *err);
/* cos_t/sin_t [>= seq_len, head_dim/2] on the device, as qd_rope_table_ref makes them. */
qd_err qd_rope_apply_cuda(qd_cuda *c, float *x, int64_t n_tok, int64_t row_stride,
                          int64_t seq_len, int n_heads, int head_dim, const float *cos_t,
                          const float *sin_t, qd_error *err);
qd_err qd_silu_mul_cuda(qd_cuda *c, float *out, const float *gate, const float *up, int64_t n,
                        qd_error *err);
/* Causal GQA attention, qd_attention_ref's contract; head_dim <= 256. */
qd_err qd_attention_cuda(qd_cuda *c, float *out, const float *q, const float *k,
                         const float *v, int64_t n_seq, int64_t seq_len, int n_heads,
                         int n_kv_heads, int head_dim, qd_error *err);
/* dst [n] = a + b elementwise (dst may be a or b). */
qd_err qd_add_cuda(qd_cuda *c, float *dst, const float *a, const float *b, int64_t n,
                   qd_error *err);
/* *ret (host) = sum of (a[i] - b[i])^2 over n elements (b NULL: of a[i]^2), in double, in a
 * fixed order (the same inputs give the same bits); waits for the stream. */
qd_err qd_sq_diff_cuda(qd_cuda *c, const float *a, const float *b, int64_t n, double *ret,
                       qd_error *err);
/* Activation statistics of x [n_tok, n_in]: sum_abs [n_in] (double) += sum over tokens of
 * |x|, max_abs [n_in] = max(max_abs, max |x|) (quantizers/calib.h qd_act_stats_add). */
qd_err qd_act_stats_add_cuda(qd_cuda *c, const float *x, int64_t n_tok, int64_t n_in,
                             double *sum_abs, float *max_abs, qd_error *err);

/* ---- GPTQ on one linear (quantizers/gptq.h's algorithm) ---------------------------------- */

/* The Hessian's running update (quantizers/gptq.c qd_gptq_hessian_add): with b = n_seq,
 * h *= n / (n + b); n += b; h += (sqrt(2 / n) x)^T (sqrt(2 / n) x). h [k, k] on the device,
 * *n_samples (host) the count so far, x [n_tok, k]. */
qd_err qd_gptq_hessian_add_cuda(qd_cuda *c, float *h, int64_t k, int64_t *n_samples,
                                const float *x, int64_t n_tok, int64_t n_seq, qd_error *err);

/* qd_gptq_params's fields (quantizers/gptq.h has the meaning of each). */
typedef struct qd_cuda_gptq_opts {
    int bits;
    int group_size;             /* <= 0: per output channel */
    qd_qrule rule;
    qd_dtype scale_dtype;
    double damp_percent;
    double damp_auto_increment;
    bool act_order;
    bool static_groups;
    int block_size;
} qd_cuda_gptq_opts;

typedef struct qd_cuda_gptq_stats {
    double loss;          /* as qd_gptq_stats.loss */
    double damp_percent;  /* the damping used */
    int n_dead;           /* columns whose Hessian diagonal was 0 */
} qd_cuda_gptq_stats;

/*
 * GPTQ of w [n, k] (device, not modified) with the Hessian h [k, k] (device, not modified),
 * the steps of quantizers/gptq.c: dead columns, static or per-channel parameters, act-order
 * permutation (sorted on the host like the CPU), damping, cusolverDnSpotrf + cusolverDnXtrtri
 * for the upper Cholesky factor of H^-1 (the CPU's reversed-order trick), then for each block
 * of block_size columns one warp per row walks the block's columns (quantize, error, in-block
 * update) and cuBLAS applies the block's errors to the columns after it.
 * Outputs (device unless noted): codes [n, k] in original column order; scales, zeros
 * [n, n_groups] in group order; ret_g_idx [k] (host, optional) written with act-order and
 * dynamic groups only (it is column / group_size otherwise); dequant [n, k] (optional) the
 * dequantized weight; ret_stats (host, optional). Waits for the device before returning.
 * Errors: QD_ERR_INVALID_ARG (parameters, a non-finite weight or Hessian entry, named),
 * QD_ERR_PRECONDITION (not positive definite after damping), QD_ERR_NOMEM, QD_ERR_DEVICE.
 */
qd_err qd_gptq_quantize_cuda(qd_cuda *c, const float *w, int n, int k, const float *h,
                             const qd_cuda_gptq_opts *o, uint8_t *codes, float *scales,
                             float *zeros, int32_t *ret_g_idx, float *dequant,
                             qd_cuda_gptq_stats *ret_stats, qd_error *err);

/* ---- AWQ's searches (quantizers/awq.h) --------------------------------------------------- */

/* ret [n, k] = Q(w * s) / s per group of group_size columns (s [k], or NULL for Q(w)), Q the
 * RTN rule (bits, rule, scale_dtype): bit-identical to qd_awq_fake_quant. ret may equal w. */
qd_err qd_awq_fake_quant_cuda(qd_cuda *c, const float *w, int64_t n, int64_t k, const float *s,
                              int bits, int64_t group_size, qd_qrule rule, qd_dtype scale_dtype,
                              float *ret, qd_error *err);
/* The scale search's objective for one linear and one candidate s: *ret_sse (host) = sum of
 * (x Q(w * s)^T / s - y_ref)^2 over x [n_tok, k], w [n, k], y_ref [n_tok, n] (the float
 * output), in double. Fake quantization, one SGEMM and a deterministic reduction; waits. */
qd_err qd_awq_loss_cuda(qd_cuda *c, const float *x, int64_t n_tok, const float *w, int64_t n,
                        int64_t k, const float *s, int bits, int64_t group_size, qd_qrule rule,
                        qd_dtype scale_dtype, const float *y_ref, double *ret_sse,
                        qd_error *err);
/* auto_clip for one linear, qd_awq_clip_search's contract: w [n, k] (already scaled), x
 * [n_tok, k] its input; ret_max [n, k / group_size] the chosen bounds, each
 * max|w_g| * (1 - i / clip_n_grid) for the i < max(1, max_shrink * clip_n_grid) with the
 * smallest mean over tokens of (x_g (Q(clamp(w_g)) - w_g))^2 (the first on ties). */
qd_err qd_awq_clip_search_cuda(qd_cuda *c, const float *w, int64_t n, int64_t k, const float *x,
                               int64_t n_tok, int bits, int64_t group_size, qd_qrule rule,
                               qd_dtype scale_dtype, double max_shrink, int clip_n_grid,
                               float *ret_max, qd_error *err);

/* ---- the backend table's CUDA entries ---------------------------------------------------- */

/* Fill *ret with the CUDA entries of the kernel table (backend.h), bound to c: each entry
 * takes host memory, stages it through device buffers and returns when the result is back. */
void qd_kernels_cuda(qd_cuda *c, qd_kernels *ret);

#ifdef __cplusplus
}
#endif

#endif /* QD_CUDA_H */
