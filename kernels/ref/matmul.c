/*
 * matmul.c - reference linear layer y = x W^T + b and the Gram matrix x^T x.
 *
 * W is in the Hugging Face Linear layout [n_out, n_in], so each output is a dot product of two
 * contiguous rows. Dot products are accumulated in double: this file defines the result the
 * BLAS versions are compared against.
 */
#include "ops.h"

void qd_matmul_ref(float *y, const float *x, const float *w, const float *bias, int64_t m,
                   int64_t n, int64_t k) {
    for (int64_t i = 0; i < m; i++) {
        const float *xi = x + i * k; /* [k] */
        for (int64_t j = 0; j < n; j++) {
            const float *wj = w + j * k; /* [k] */
            double acc = bias ? (double)bias[j] : 0.0;
            for (int64_t p = 0; p < k; p++) acc += (double)xi[p] * wj[p];
            y[i * n + j] = (float)acc;
        }
    }
}

void qd_xtx_accum_ref(float *h, const float *x, int64_t n, int64_t k) {
    for (int64_t a = 0; a < k; a++) {
        for (int64_t b = a; b < k; b++) {
            double acc = 0.0;
            for (int64_t t = 0; t < n; t++) acc += (double)x[t * k + a] * x[t * k + b];
            float v = (float)((double)h[a * k + b] + acc);
            h[a * k + b] = v;
            h[b * k + a] = v;
        }
    }
}
