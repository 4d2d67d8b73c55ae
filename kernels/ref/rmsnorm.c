/*
 * rmsnorm.c - reference RMSNorm (Llama's input_layernorm / post_attention_layernorm / norm).
 *
 * y = x / sqrt(mean(x^2) + eps) * w. The mean of squares is summed in double: for hidden sizes
 * in the thousands a float sum loses digits the rest of the layer then amplifies.
 */
#include <math.h>

#include "ops.h"

void qd_rmsnorm_ref(float *y, const float *x, const float *w, int64_t n, int64_t d, double eps) {
    for (int64_t r = 0; r < n; r++) {
        const float *xr = x + r * d; /* [d] */
        float *yr = y + r * d;       /* [d], may be xr */
        double ss = 0.0;
        for (int64_t i = 0; i < d; i++) ss += (double)xr[i] * xr[i];
        double inv = 1.0 / sqrt(ss / (double)d + eps);
        for (int64_t i = 0; i < d; i++) yr[i] = (float)((double)xr[i] * inv * w[i]);
    }
}
