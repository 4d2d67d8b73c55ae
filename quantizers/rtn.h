/*
 * rtn.h - round-to-nearest (RTN / InstantQuant) and FP8 e4m3 quantization of one linear layer.
 *
 * Usage
 *   qd_qlinear q = {0};
 *   qd_rtn_quantize(w, n, k, 4, 128, QD_QRULE_ASYM_MINMAX, QD_DTYPE_F16, &q, &err);
 *   ... hand q to a packer ...
 *   qd_qlinear_free(&q);
 * or, from a quantization spec, qd_rtn_linear() with the target format's name and the
 * symmetric flag: it picks the rule the format's reference tool uses (qd_rtn_rule_for_format)
 * and, for the A8W8 recipe, int8 per-channel weights in that format's W8A8 convention.
 *
 * Weights are fp32 [n, k] row-major (n = out_features, k = in_features, the Hugging Face
 * layout), as the model runtime materialises them. No calibration data is used. The rules
 * themselves (scale, zero point, rounding, degenerate groups) are in kernels/quant.h.
 *
 * Every function validates its arguments and fails with QD_ERR_INVALID_ARG naming the problem
 * (the caller prefixes the tensor name with qd_error_prefix). `out` is written only on
 * success; it must not hold arrays (a fresh or freed qd_qlinear), it is not freed first.
 */
#ifndef QD_RTN_H
#define QD_RTN_H

#include <stdbool.h>

#include "error.h"
#include "qlinear.h"
#include "tensor.h"

/*
 * RTN with an explicit rule. bits in 2..8; group_size <= 0 means per-channel (one group of
 * k), otherwise it must divide k; scale_dtype F32, F16 or BF16 (the dtype the target stores
 * scales in: see quant.h for why the scale is rounded before the codes are computed). Every
 * weight must be finite. Runs on the cpu kernels (threads over rows).
 */
qd_err qd_rtn_quantize(const float *w, int n, int k, int bits, int group_size, qd_qrule rule,
                       qd_dtype scale_dtype, qd_qlinear *out, qd_error *err);

/*
 * FP8 e4m3 weights: s = amax / 448 per output channel (per_channel) or per tensor, codes
 * = e4m3(w / s) saturating at +-448. The result has type QD_QTYPE_FP8_E4M3, bits 8,
 * group_size k, zeros NULL and rule QD_QRULE_COUNT (no integer rule); a per-tensor scale is
 * repeated in every row's scales[r].
 */
qd_err qd_fp8_quantize(const float *w, int n, int k, bool per_channel, qd_dtype scale_dtype,
                       qd_qlinear *out, qd_error *err);

/*
 * The rule a target format's reference tool uses, by the format's name (formats/format.h):
 *   "awq"                 asymmetric: ASYM_MINMAX (AutoAWQ). Symmetric is rejected: the
 *                         AutoAWQ GEMM layout always carries zero points (zero_point=True).
 *   "gptq", "gptq_v2"     ASYM_ZERO_IN_RANGE / SYM_HALF (AutoGPTQ).
 *   "dashinfer"           the same: quantd hands DashInfer a GPTQ-v1 checkpoint.
 *   "compressed-tensors"  ASYM_ZERO_IN_RANGE_EPS / SYM_HALF_EPS (llm-compressor).
 *   "modelopt"            symmetric only: SYM_MAX (has_zero_point is false in ModelOpt).
 *   "instant_quant"       DashInfer's own InstantQuant (what DashInfer computes when given an
 *                         fp16 model and an instant_quant config; used to evaluate it):
 *                         asymmetric only, a float zero; 8 bits -> int8,
 *                         ASYM_FLOAT_ZERO_SIGNED; 4 bits -> uint4, ASYM_FLOAT_ZERO.
 * Whether the format can hold the result (bits, symmetry, group size) is the format's own
 * check (qd_format.check); this only names the rule. Unknown names and the combinations
 * above that have no rule fail with QD_ERR_UNSUPPORTED.
 */
qd_err qd_rtn_rule_for_format(const char *format, bool symmetric, int bits,
                              qd_qrule *ret_rule, qd_error *err);

/* A per-linear RTN request, as a quantization spec states it. */
typedef struct qd_rtn_opts {
    const char *format;    /* target format name, see qd_rtn_rule_for_format */
    bool symmetric;
    int bits;              /* 2..8 (ignored for a8w8) */
    int group_size;        /* <= 0: per-channel (ignored for a8w8) */
    qd_dtype scale_dtype;  /* F32, F16 or BF16: what the format stores scales in */
    /* A8W8 recipe: weights int8 per output channel, in the format's W8A8 convention
     * (compressed-tensors INT8_W8A8: SYM_HALF_EPS, absmax/127.5; modelopt INT8 SmoothQuant:
     * SYM_MAX, absmax/127; instant_quant A8W8: ASYM_FLOAT_ZERO_SIGNED). Activations are
     * quantized per token at run time by the engine. symmetric is ignored. */
    bool a8w8;
    bool use_ref;          /* the reference kernels (slow; triage and tests) */
} qd_rtn_opts;

/* Quantize one linear as o says (see qd_rtn_opts). Errors as qd_rtn_quantize and
 * qd_rtn_rule_for_format. */
qd_err qd_rtn_linear(const float *w, int n, int k, const qd_rtn_opts *o, qd_qlinear *out,
                     qd_error *err);

/* w [n, k] replaced in place by its RTN dequantization (codes, scales and zeros computed as by
 * qd_rtn_quantize, then (code - zero) * scale): how RTN weights are evaluated. w is unchanged
 * on failure. */
qd_err qd_rtn_fake_quant(float *w, int n, int k, int bits, int group_size, qd_qrule rule,
                         qd_dtype scale_dtype, qd_error *err);

#endif /* QD_RTN_H */
