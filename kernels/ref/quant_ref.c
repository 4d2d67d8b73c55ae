/*
 * quant_ref.c - reference round-to-nearest and FP8 e4m3 weight quantization: the plain loops
 * that define the result of every other backend (kernels/cpu/quant_cpu.c, CUDA). The
 * numerics live in quant.h's rules; this file only walks rows and groups in order.
 */
#include "quant.h"

void qd_quant_rtn_ref(const float *w, int64_t n, int64_t k, int bits, int64_t group_size,
                      qd_qrule rule, qd_dtype scale_dtype, uint8_t *codes, float *scales,
                      float *zeros) {
    int64_t n_groups = k / group_size;
    for (int64_t r = 0; r < n; r++) {
        for (int64_t g = 0; g < n_groups; g++) {
            const float *x = w + r * k + g * group_size; /* [group_size] */
            qd_qparams p = qd_quant_params(rule, bits, qd_qstats_of(x, group_size, 1),
                                           scale_dtype);
            scales[r * n_groups + g] = p.scale;
            zeros[r * n_groups + g] = p.zero;
            for (int64_t i = 0; i < group_size; i++)
                codes[r * k + g * group_size + i] = qd_quant_code(rule, bits, p, x[i]);
        }
    }
}

void qd_quant_fp8_ref(const float *w, int64_t n, int64_t k, bool per_channel,
                      qd_dtype scale_dtype, uint8_t *codes, float *scales) {
    float tensor_scale = 0.0f;
    if (!per_channel) {
        /* rows in order, so the statistics equal one pass over the whole tensor */
        float amax = 0.0f;
        for (int64_t r = 0; r < n; r++) {
            float a = qd_qstats_of(w + r * k, k, 1).amax;
            if (a > amax) amax = a;
        }
        tensor_scale = qd_fp8_scale(amax, scale_dtype);
    }
    for (int64_t r = 0; r < n; r++) {
        const float *x = w + r * k; /* [k] */
        float s = per_channel ? qd_fp8_scale(qd_qstats_of(x, k, 1).amax, scale_dtype)
                              : tensor_scale;
        scales[r] = s;
        for (int64_t i = 0; i < k; i++) codes[r * k + i] = qd_fp8_code(s, x[i]);
    }
}
