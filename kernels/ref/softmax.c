/*
 * softmax.c - reference softmax and the SwiGLU gate (silu(gate) * up).
 */
#include <math.h>

#include "ops.h"

void qd_softmax_ref(float *x, int64_t n) {
    /* Subtract the max so exp() never overflows; sum in double. */
    float mx = x[0];
    for (int64_t i = 1; i < n; i++)
        if (x[i] > mx) mx = x[i];
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) sum += exp((double)x[i] - mx);
    for (int64_t i = 0; i < n; i++) x[i] = (float)(exp((double)x[i] - mx) / sum);
}

void qd_silu_mul_ref(float *out, const float *gate, const float *up, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        double g = gate[i];
        out[i] = (float)(g / (1.0 + exp(-g)) * up[i]);
    }
}
