/*
 * qlinear.c - allocation, release and dequantization of a quantized linear layer (qlinear.h).
 *
 * Dequantization goes through the same inline formulas as the kernels (quant.h), so W' here is
 * bit for bit what a packer's engine computes from the stored codes, scales and zeros.
 */
#include "qlinear.h"

#include <stdlib.h>
#include <string.h>

qd_err qd_qlinear_alloc(qd_qlinear *q, int n, int k, qd_qtype type, int bits, int group_size,
                        qd_qrule rule, qd_error *err) {
    if (!q) return qd_error_set(err, QD_ERR_INVALID_ARG, "qlinear: no result struct given");
    if (n <= 0 || k <= 0)
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "qlinear: shape [%d, %d]: out and in features must be positive", n,
                            k);
    if (type == QD_QTYPE_INT) {
        if (bits < QD_QUANT_MIN_BITS || bits > QD_QUANT_MAX_BITS)
            return qd_error_set(err, QD_ERR_INVALID_ARG,
                                "qlinear: %d bits outside the supported %d..%d", bits,
                                QD_QUANT_MIN_BITS, QD_QUANT_MAX_BITS);
        if (!qd_qrule_valid((int)rule))
            return qd_error_set(err, QD_ERR_INVALID_ARG, "qlinear: unknown rule %d",
                                (int)rule);
    } else if (type == QD_QTYPE_FP8_E4M3) {
        if (bits != 8)
            return qd_error_set(err, QD_ERR_INVALID_ARG, "qlinear: fp8 with %d bits (must be 8)",
                                bits);
    } else {
        return qd_error_set(err, QD_ERR_INVALID_ARG, "qlinear: unknown type %d", (int)type);
    }
    if (group_size <= 0) group_size = k;
    if (group_size > k)
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "qlinear: group size %d larger than in_features %d", group_size, k);
    int n_groups = (k + group_size - 1) / group_size;

    size_t n_codes = (size_t)n * (size_t)k, n_params = (size_t)n * (size_t)n_groups;
    uint8_t *codes = calloc(n_codes, 1);
    float *scales = calloc(n_params, sizeof *scales);
    float *zeros = type == QD_QTYPE_INT ? calloc(n_params, sizeof *zeros) : NULL;
    if (!codes || !scales || (type == QD_QTYPE_INT && !zeros)) {
        free(codes);
        free(scales);
        free(zeros);
        return qd_error_set(err, QD_ERR_NOMEM, "qlinear: no memory for a [%d, %d] layer", n, k);
    }
    memset(q, 0, sizeof *q);
    q->n = n;
    q->k = k;
    q->type = type;
    q->bits = bits;
    q->group_size = group_size;
    q->n_groups = n_groups;
    q->rule = rule;
    q->codes = codes;
    q->scales = scales;
    q->zeros = zeros;
    return QD_OK;
}

void qd_qlinear_free(qd_qlinear *q) {
    if (!q) return;
    free(q->codes);
    free(q->scales);
    free(q->zeros);
    free(q->g_idx);
    free(q->pre_scale);
    free(q->bias);
    memset(q, 0, sizeof *q);
}

void qd_qlinear_dequant(const qd_qlinear *q, float *w) {
    for (int r = 0; r < q->n; r++) {
        const uint8_t *c = q->codes + (size_t)r * (size_t)q->k;       /* [k] */
        const float *s = q->scales + (size_t)r * (size_t)q->n_groups; /* [n_groups] */
        float *out = w + (size_t)r * (size_t)q->k;                     /* [k] */
        if (q->type == QD_QTYPE_FP8_E4M3) {
            for (int i = 0; i < q->k; i++)
                out[i] = qd_fp8_dequant(s[qd_qlinear_group(q, i)], c[i]);
            continue;
        }
        const float *z = q->zeros + (size_t)r * (size_t)q->n_groups; /* [n_groups] */
        for (int i = 0; i < q->k; i++) {
            int g = qd_qlinear_group(q, i);
            qd_qparams p = {s[g], z[g]};
            out[i] = qd_quant_dequant(p, c[i]);
        }
    }
}
