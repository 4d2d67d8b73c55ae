/*
 * gptq.h - GPTQ on one linear layer: the Hessian of its calibration inputs, then the
 * error-compensating column-by-column quantization of its weight (Frantar et al., "GPTQ",
 * as implemented by IST-DASLab/gptq gptq.py and AutoGPTQ auto_gptq/quantization/gptq.py).
 *
 * Usage, per linear W [n, k] (n = out_features, k = in_features):
 *
 *   qd_gptq_hessian h;
 *   qd_gptq_hessian_init(&h, k, err);
 *   for each calibration batch x [n_tok, k] holding n_seq sequences:
 *       qd_gptq_hessian_add(&h, x, n_tok, n_seq, err);
 *   qd_gptq_params p;
 *   qd_gptq_params_init(&p);            (then set bits, group_size, rule, act_order, ...)
 *   qd_gptq_quantize(w, n, k, &h, &p, &q, w_dequant, &stats, err);
 *   qd_gptq_hessian_done(&h);
 *
 * The layers of a decoder block are quantized in the "true sequential" order ([k, v, q], [o],
 * [up, gate], [down] for Llama) with each Hessian gathered from inputs computed with the
 * already-quantized weights; that ordering is the calibration driver's job (calib.h,
 * QD_CALIB_PROPAGATE_MODIFIED), not this module's.
 */
#ifndef QD_GPTQ_H
#define QD_GPTQ_H

#include <stdbool.h>
#include <stdint.h>

#include "error.h"
#include "qlinear.h"
#include "quant.h"
#include "tensor.h"

/* Largest in_features accepted: the Hessian is k * k floats (16 GiB at this bound). */
#define QD_GPTQ_MAX_K 65536

/* ---- Hessian ---- */

/*
 * H = (2 / n) * sum over every token row x of x^T x, kept with the reference's running update
 * (per batch of b sequences: H *= n / (n + b); n += b; x *= sqrt(2 / n); H += x^T x).
 * n counts what the caller says a batch holds: sequences, as IST-DASLab and AutoGPTQ do, or
 * tokens, as GPTQModel does. Only the scale of H differs, and that changes nothing: the
 * GPTQ updates use ratios of entries of H^-1, and damping is relative to mean(diag H).
 */
typedef struct qd_gptq_hessian {
    int k;         /* in_features */
    float *h;      /* [k, k] row-major, symmetric (both triangles written) */
    int64_t n;     /* sequences (or tokens) added so far */
} qd_gptq_hessian;

/* Zeroed [k, k] Hessian. QD_ERR_INVALID_ARG for k outside 1..QD_GPTQ_MAX_K, QD_ERR_NOMEM. */
qd_err qd_gptq_hessian_init(qd_gptq_hessian *hs, int k, qd_error *err);
/* Frees h; accepts a zeroed or already-freed struct and leaves it zeroed. */
void qd_gptq_hessian_done(qd_gptq_hessian *hs);
/*
 * Add a batch x [n_tok, k] (row-major fp32) that holds n_seq sequences (n_seq >= 1; pass
 * n_tok to count tokens). The product goes through the cpu kernels (BLAS sgemm, threaded).
 * Errors: QD_ERR_INVALID_ARG (n_seq < 1, n_tok < 0, a non-finite input value - named by row
 * and column), QD_ERR_NOMEM. On error H and n are unchanged.
 */
qd_err qd_gptq_hessian_add(qd_gptq_hessian *hs, const float *x, int64_t n_tok, int64_t n_seq,
                           qd_error *err);

/* ---- quantization ---- */

typedef struct qd_gptq_params {
    int bits;                   /* 2..8 */
    int group_size;             /* columns per group, must divide k; <= 0: per output channel */
    qd_qrule rule;              /* QD_QRULE_SYM_HALF (sym) or QD_QRULE_ASYM_ZERO_IN_RANGE
                                 * (asym) are the references' find_params; any rule of
                                 * kernels/quant.h is accepted (e.g. for an AWQ-format target) */
    qd_dtype scale_dtype;       /* QD_DTYPE_F32/F16/BF16: scales are rounded to it before the
                                 * codes are chosen (GPTQ checkpoints store fp16) */
    double damp_percent;        /* H += damp_percent * mean(diag H) * I before inverting */
    double damp_auto_increment; /* 0: a Hessian that is not positive definite after damping is
                                 * an error; > 0: retry with damp_percent += this while it is
                                 * below 1 (GPTQModel's damp_auto_increment) */
    bool act_order;             /* desc_act: columns in order of decreasing diag(H) */
    bool static_groups;         /* group parameters fixed up front from W before any update,
                                 * one set per contiguous group, so g_idx stays sequential
                                 * even with act_order (ignored per channel) */
    int block_size;             /* lazy-batch width (columns per trailing GEMM), >= 1 */
} qd_gptq_params;

/* Defaults: 4 bits, group 128, SYM_HALF, F16 scales, damp 0.01 and block 128 (IST-DASLab and
 * AutoGPTQ), no auto-increment, act_order and static_groups off. */
void qd_gptq_params_init(qd_gptq_params *p);

typedef struct qd_gptq_stats {
    double loss;          /* sum over all weights of (w - q)^2 / U[j][j]^2 / 2, U the upper
                           * Cholesky factor of the damped H^-1 and w the error-updated weight
                           * when its column j is quantized (the references' "error") */
    double damp_percent;  /* the damping that was used (differs from the parameter only after
                           * an auto-increment) */
    int n_dead;           /* columns whose Hessian diagonal was 0 (never-active inputs) */
} qd_gptq_stats;

/*
 * Quantize w [n, k] (row-major fp32, not modified) with the Hessian hs (hs->k == k, at least
 * one batch added). On success *ret_q holds the layer (allocated here; free with
 * qd_qlinear_free): codes in original column order; scales/zeros [n, n_groups] in GROUP order,
 * which with act_order and no static groups is processing order, with g_idx [k] saying which
 * group each column belongs to (g_idx is NULL whenever it would be column / group_size).
 * ret_dequant [n, k] (optional) receives the dequantized weight exactly as the error feedback
 * used it (equal to qd_qlinear_dequant of *ret_q); ret_stats (optional) the loss.
 * Deterministic: the same inputs and thread count give bit-identical results.
 *
 * Errors (nothing is written to the ret_ arguments): QD_ERR_INVALID_ARG (a parameter out of
 * range, a group size that does not divide k, hs->k != k, a non-finite weight or Hessian
 * entry), QD_ERR_PRECONDITION (no calibration batch added; H + damping not positive definite,
 * naming the damping tried - raise damp_percent or set damp_auto_increment), QD_ERR_NOMEM.
 */
qd_err qd_gptq_quantize(const float *w, int n, int k, const qd_gptq_hessian *hs,
                        const qd_gptq_params *p, qd_qlinear *ret_q, float *ret_dequant,
                        qd_gptq_stats *ret_stats, qd_error *err);

/* ---- on a CUDA device ----
 *
 * The same two steps with the Hessian kept on a CUDA device (kernels/cuda/qd_cuda.h): the
 * running update by cuBLAS, the quantization by qd_gptq_quantize_cuda, which follows
 * qd_gptq_quantize step for step (codes differ only where cuSOLVER's factor and cuBLAS's GEMMs
 * round differently from LAPACK and OpenBLAS). Inputs and outputs are host memory; only the
 * Hessian, and during qd_gptq_quantize_dev the layer's working buffers, live on the device.
 * Without the CUDA backend in the build every call fails with QD_ERR_UNAVAILABLE. Device
 * errors come back as QD_ERR_DEVICE / QD_ERR_NOMEM with the runtime's message; the buffers
 * a call allocated are freed before it returns.
 */
struct qd_cuda;

typedef struct qd_gptq_hessian_dev {
    struct qd_cuda *cuda; /* borrowed */
    int k;
    float *h;             /* [k, k] on the device */
    int64_t n;
} qd_gptq_hessian_dev;

/* Zeroed [k, k] Hessian on the device of c. Errors as qd_gptq_hessian_init, QD_ERR_NOMEM when
 * the device lacks the memory. */
qd_err qd_gptq_hessian_dev_init(qd_gptq_hessian_dev *hs, struct qd_cuda *c, int k,
                                qd_error *err);
void qd_gptq_hessian_dev_done(qd_gptq_hessian_dev *hs); /* accepts a zeroed struct */
/* qd_gptq_hessian_add with x [n_tok, k] on the host (checked for non-finite values there). */
qd_err qd_gptq_hessian_dev_add(qd_gptq_hessian_dev *hs, const float *x, int64_t n_tok,
                               int64_t n_seq, qd_error *err);
/* The same with x [n_tok, k] already on the Hessian's device (calib.h's x_dev): one update
 * over the whole batch, checked for non-finite values on the device. */
qd_err qd_gptq_hessian_dev_add_dev(qd_gptq_hessian_dev *hs, const float *x_dev, int64_t n_tok,
                                   int64_t n_seq, qd_error *err);
/* qd_gptq_quantize's contract with the device Hessian: w [n, k] and the results on the host. */
qd_err qd_gptq_quantize_dev(const float *w, int n, int k, const qd_gptq_hessian_dev *hs,
                            const qd_gptq_params *p, qd_qlinear *ret_q, float *ret_dequant,
                            qd_gptq_stats *ret_stats, qd_error *err);

#endif /* QD_GPTQ_H */
