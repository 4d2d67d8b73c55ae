/*
 * qlinear.h - the result of quantizing one linear layer, in a form every packer consumes.
 *
 * A Hugging Face Linear has weight W [N, K] (N = out_features, K = in_features). Quantized,
 * it becomes integer (or fp8) codes plus per-group parameters:
 *
 *   int:  W'[n, k] = (codes[n, k] - zeros[n, g]) * scales[n, g]      g = group of column k
 *   fp8:  W'[n, k] = e4m3_to_f32(codes[n, k]) * scales[n, g]
 *
 * CODES are always stored one per byte, [N, K], row-major, in the UNSIGNED domain
 * [0, 2^bits - 1]: a symmetric signed code q in [-2^(b-1), 2^(b-1) - 1] is stored as
 * q + 2^(b-1) with zero 2^(b-1). So every integer format's convention (AWQ's raw zeros, GPTQ's
 * z - 1, compressed-tensors' +8 offset, ModelOpt's signed nibbles) is a rewrite of the same
 * (code, zero) pair done by its packer. ZEROS are floats so DashInfer's unrounded zero fits;
 * for every other rule they hold integers exactly.
 *
 * GROUPS: group g covers columns [g*G, (g+1)*G) unless g_idx is set (GPTQ act-order without
 * static groups), in which case column k belongs to group g_idx[k]. Per-channel quantization is
 * G = K (one group). scales/zeros are [N, n_groups] row-major.
 *
 * SCALES hold exactly the value the target format stores (already rounded to its scale dtype,
 * e.g. fp16 for AutoAWQ), so dequantizing here equals what the engine computes.
 *
 * EXTRAS a format may carry: pre_scale [K] (AWQ/SmoothQuant smoothing factor the ACTIVATIONS
 * are multiplied by when it is not folded into a preceding op: ModelOpt's pre_quant_scale),
 * act_scale (static per-tensor activation scale, FP8/W4A8/INT8-SQ; 0 = none/dynamic),
 * weight_scale_2 (W4A8's second-level per-tensor fp8 weight scale; 0 = none), bias [N].
 *
 * Ownership: a qd_qlinear owns every array it points to; qd_qlinear_free() frees them.
 */
#ifndef QD_QLINEAR_H
#define QD_QLINEAR_H

#include <stdbool.h>
#include <stdint.h>

#include "error.h"
#include "quant.h"

typedef struct qd_qlinear {
    int n, k;          /* out_features, in_features */
    qd_qtype type;     /* QD_QTYPE_INT or QD_QTYPE_FP8_E4M3 */
    int bits;          /* int: 2..8; fp8: 8 */
    int group_size;    /* columns per group; == k for per-channel */
    int n_groups;      /* ceil(k / group_size) */
    qd_qrule rule;     /* how scales/zeros were chosen (kernels/quant.h) */
    uint8_t *codes;    /* [n, k] unsigned-domain codes (int) or e4m3 bits (fp8) */
    float *scales;     /* [n, n_groups] */
    float *zeros;      /* [n, n_groups] unsigned-domain zero points; NULL for fp8 */
    int32_t *g_idx;    /* [k] group of each column, or NULL for column / group_size */
    float *pre_scale;  /* [k] activation multiplier, or NULL */
    float act_scale;   /* static per-tensor activation scale, 0 if none */
    float weight_scale_2; /* W4A8 per-tensor second-level scale, 0 if none */
    float *bias;       /* [n] or NULL */
} qd_qlinear;

/* Allocate codes/scales/(zeros for int) for an [n, k] layer; everything else NULL/0.
 * group_size <= 0 means per-channel (k). */
qd_err qd_qlinear_alloc(qd_qlinear *q, int n, int k, qd_qtype type, int bits, int group_size,
                        qd_qrule rule, qd_error *err);
void qd_qlinear_free(qd_qlinear *q); /* accepts NULL; leaves *q zeroed */
/* Group of column c. */
static inline int qd_qlinear_group(const qd_qlinear *q, int c) {
    return q->g_idx ? q->g_idx[c] : c / q->group_size;
}
/* W' [n, k] fp32 from codes and parameters, by the formulas above. */
void qd_qlinear_dequant(const qd_qlinear *q, float *w);

#endif /* QD_QLINEAR_H */
