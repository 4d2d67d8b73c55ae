/*
 * rtn.c - the RTN / InstantQuant and FP8 methods: argument checks, the choice of rule for a
 * target format, and the call into the quantization kernels (kernels/quant.h).
 *
 * DESIGN
 * The numerics are entirely in kernels/: quant.h's inline rules, walked by the reference loop
 * (ref/quant_ref.c) or the threaded one (cpu/quant_cpu.c), which agree bit for bit. This file
 * only decides WHAT to compute: the rule a format's own tool uses (so an artifact's codes are
 * the ones that tool would have written, degenerate groups included) and the shape of the
 * groups, and it rejects what the kernels must never see (bad widths, group sizes that do not
 * divide the row, non-finite weights).
 */
#include "rtn.h"

#include <math.h>
#include <string.h>

#include "ops.h"
#include "quant.h"

/* ---- checks ---------------------------------------------------------------------------- */

static qd_err check_shape(const float *w, int n, int k, const qd_qlinear *out, qd_error *err) {
    if (!w || !out) return qd_error_set(err, QD_ERR_INVALID_ARG, "RTN: no weights or no result");
    if (n <= 0 || k <= 0)
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "RTN: weight shape [%d, %d]: out and in features must be positive",
                            n, k);
    return QD_OK;
}

static qd_err check_scale_dtype(qd_dtype dt, qd_error *err) {
    if (dt == QD_DTYPE_F32 || dt == QD_DTYPE_F16 || dt == QD_DTYPE_BF16) return QD_OK;
    const char *name = qd_dtype_name(dt);
    return qd_error_set(err, QD_ERR_INVALID_ARG,
                        "RTN: scale dtype %s not supported (F32, F16 or BF16)",
                        name ? name : "(invalid)");
}

/* Every weight finite: a NaN or Inf would poison its group's scale silently. */
static qd_err check_finite(const float *w, int n, int k, qd_error *err) {
    for (int r = 0; r < n; r++) {
        const float *x = w + (size_t)r * (size_t)k;
        for (int c = 0; c < k; c++)
            if (!isfinite(x[c]))
                return qd_error_set(err, QD_ERR_INVALID_ARG,
                                    "RTN: weight [%d, %d] is not finite (%g)", r, c,
                                    (double)x[c]);
    }
    return QD_OK;
}

/* ---- RTN ------------------------------------------------------------------------------- */

static qd_err rtn_quantize(const float *w, int n, int k, int bits, int group_size,
                           qd_qrule rule, qd_dtype scale_dtype, bool use_ref, qd_qlinear *out,
                           qd_error *err) {
    qd_err rc = check_shape(w, n, k, out, err);
    if (rc) return rc;
    if (bits < QD_QUANT_MIN_BITS || bits > QD_QUANT_MAX_BITS)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "RTN: %d bits outside the supported %d..%d",
                            bits, QD_QUANT_MIN_BITS, QD_QUANT_MAX_BITS);
    if (!qd_qrule_valid((int)rule))
        return qd_error_set(err, QD_ERR_INVALID_ARG, "RTN: unknown quantization rule %d",
                            (int)rule);
    if ((rc = check_scale_dtype(scale_dtype, err))) return rc;
    int gs = group_size <= 0 ? k : group_size;
    if (k % gs != 0)
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "RTN: group size %d does not divide in_features %d (remainder %d)",
                            gs, k, k % gs);
    if ((rc = check_finite(w, n, k, err))) return rc;

    qd_qlinear q;
    if ((rc = qd_qlinear_alloc(&q, n, k, QD_QTYPE_INT, bits, gs, rule, err))) return rc;
    if (use_ref)
        qd_quant_rtn_ref(w, n, k, bits, gs, rule, scale_dtype, q.codes, q.scales, q.zeros);
    else
        qd_quant_rtn_cpu(w, n, k, bits, gs, rule, scale_dtype, q.codes, q.scales, q.zeros, 0);
    *out = q;
    return QD_OK;
}

qd_err qd_rtn_quantize(const float *w, int n, int k, int bits, int group_size, qd_qrule rule,
                       qd_dtype scale_dtype, qd_qlinear *out, qd_error *err) {
    return rtn_quantize(w, n, k, bits, group_size, rule, scale_dtype, false, out, err);
}

qd_err qd_fp8_quantize(const float *w, int n, int k, bool per_channel, qd_dtype scale_dtype,
                       qd_qlinear *out, qd_error *err) {
    qd_err rc = check_shape(w, n, k, out, err);
    if (rc) return rc;
    if ((rc = check_scale_dtype(scale_dtype, err))) return rc;
    if ((rc = check_finite(w, n, k, err))) return rc;
    qd_qlinear q;
    if ((rc = qd_qlinear_alloc(&q, n, k, QD_QTYPE_FP8_E4M3, 8, k, QD_QRULE_COUNT, err)))
        return rc;
    qd_quant_fp8_cpu(w, n, k, per_channel, scale_dtype, q.codes, q.scales, 0);
    *out = q;
    return QD_OK;
}

/* ---- rules of the target formats ------------------------------------------------------- */

qd_err qd_rtn_rule_for_format(const char *format, bool symmetric, int bits,
                              qd_qrule *ret_rule, qd_error *err) {
    if (!format || !ret_rule)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "RTN: no target format given");
    qd_qrule rule = QD_QRULE_COUNT;
    if (strcmp(format, "awq") == 0) {
        /* AutoAWQ's GEMM layer asserts zeros is not None: only zero_point=True is packed. */
        if (symmetric)
            return qd_error_set(err, QD_ERR_UNSUPPORTED,
                                "RTN: format awq stores zero points: symmetric quantization "
                                "is not supported (use asymmetric)");
        rule = QD_QRULE_ASYM_MINMAX;
    } else if (strcmp(format, "gptq") == 0 || strcmp(format, "gptq_v2") == 0 ||
               strcmp(format, "dashinfer") == 0) {
        /* dashinfer: quantd hands DashInfer a GPTQ-v1 checkpoint (formats/dashinfer.c) */
        rule = symmetric ? QD_QRULE_SYM_HALF : QD_QRULE_ASYM_ZERO_IN_RANGE;
    } else if (strcmp(format, "compressed-tensors") == 0) {
        rule = symmetric ? QD_QRULE_SYM_HALF_EPS : QD_QRULE_ASYM_ZERO_IN_RANGE_EPS;
    } else if (strcmp(format, "modelopt") == 0) {
        if (!symmetric)
            return qd_error_set(err, QD_ERR_UNSUPPORTED,
                                "RTN: format modelopt has no zero points: asymmetric "
                                "quantization is not supported (use symmetric)");
        rule = QD_QRULE_SYM_MAX;
    } else if (strcmp(format, "instant_quant") == 0) {
        if (symmetric)
            return qd_error_set(err, QD_ERR_UNSUPPORTED,
                                "RTN: instant_quant quantizes weights with a float zero "
                                "point: symmetric quantization is not supported");
        if (bits == 8)
            rule = QD_QRULE_ASYM_FLOAT_ZERO_SIGNED; /* weight_format int8 */
        else if (bits == 4)
            rule = QD_QRULE_ASYM_FLOAT_ZERO; /* weight_format uint4 */
        else
            return qd_error_set(err, QD_ERR_UNSUPPORTED,
                                "RTN: instant_quant takes 4 or 8 bits, not %d", bits);
    } else {
        return qd_error_set(err, QD_ERR_UNSUPPORTED,
                            "RTN: unknown target format '%s' (awq, gptq, gptq_v2, "
                            "compressed-tensors, modelopt, dashinfer or instant_quant)",
                            format);
    }
    *ret_rule = rule;
    return QD_OK;
}

/* The W8A8 weight rule of a format (int8, per output channel). */
static qd_err a8w8_rule(const char *format, qd_qrule *ret_rule, qd_error *err) {
    if (format && strcmp(format, "compressed-tensors") == 0) {
        *ret_rule = QD_QRULE_SYM_HALF_EPS; /* preset INT8_W8A8: int8 channel symmetric */
        return QD_OK;
    }
    if (format && strcmp(format, "modelopt") == 0) {
        *ret_rule = QD_QRULE_SYM_MAX; /* INT8 SmoothQuant: row amax / 127 */
        return QD_OK;
    }
    if (format && strcmp(format, "instant_quant") == 0) {
        *ret_rule = QD_QRULE_ASYM_FLOAT_ZERO_SIGNED; /* DashInfer A8W8: int8, float zero */
        return QD_OK;
    }
    return qd_error_set(err, QD_ERR_UNSUPPORTED,
                        "RTN: format '%s' has no A8W8 layout (compressed-tensors, modelopt or "
                        "instant_quant)",
                        format ? format : "(none)");
}

qd_err qd_rtn_linear(const float *w, int n, int k, const qd_rtn_opts *o, qd_qlinear *out,
                     qd_error *err) {
    if (!o) return qd_error_set(err, QD_ERR_INVALID_ARG, "RTN: no options given");
    qd_qrule rule = QD_QRULE_COUNT;
    qd_err rc;
    if (o->a8w8) {
        if ((rc = a8w8_rule(o->format, &rule, err))) return rc;
        return rtn_quantize(w, n, k, 8, -1, rule, o->scale_dtype, o->use_ref, out, err);
    }
    if ((rc = qd_rtn_rule_for_format(o->format, o->symmetric, o->bits, &rule, err))) return rc;
    return rtn_quantize(w, n, k, o->bits, o->group_size, rule, o->scale_dtype, o->use_ref, out,
                        err);
}

qd_err qd_rtn_fake_quant(float *w, int n, int k, int bits, int group_size, qd_qrule rule,
                         qd_dtype scale_dtype, qd_error *err) {
    qd_qlinear q;
    qd_err rc = qd_rtn_quantize(w, n, k, bits, group_size, rule, scale_dtype, &q, err);
    if (rc) return rc;
    qd_qlinear_dequant(&q, w);
    qd_qlinear_free(&q);
    return QD_OK;
}
