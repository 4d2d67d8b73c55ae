/*
 * attention.c - reference causal attention with grouped-query heads.
 *
 * One (sequence, head, query) at a time: scores against keys 0..i in double, softmax in
 * double, weighted sum of values in double. Slow and obvious on purpose; memory is one row of
 * seq_len scores.
 */
#include <math.h>
#include <stdlib.h>

#include "ops.h"

qd_err qd_attention_ref(float *out, const float *q, const float *k, const float *v,
                        int64_t n_seq, int64_t seq_len, int n_heads, int n_kv_heads,
                        int head_dim, qd_error *err) {
    if (n_heads <= 0 || n_kv_heads <= 0 || n_heads % n_kv_heads != 0 || head_dim <= 0)
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "attention: %d query heads cannot share %d kv heads", n_heads,
                            n_kv_heads);
    double *p = malloc((size_t)seq_len * sizeof *p); /* [seq_len] scores of one query */
    double *acc = malloc((size_t)head_dim * sizeof *acc);
    if (!p || !acc) {
        free(p);
        free(acc);
        return qd_error_set(err, QD_ERR_NOMEM, "attention: no memory for %lld scores",
                            (long long)seq_len);
    }
    int64_t q_stride = (int64_t)n_heads * head_dim;
    int64_t kv_stride = (int64_t)n_kv_heads * head_dim;
    int group = n_heads / n_kv_heads;
    double scale = 1.0 / sqrt((double)head_dim);
    for (int64_t s = 0; s < n_seq; s++) {
        int64_t base = s * seq_len;
        for (int h = 0; h < n_heads; h++) {
            int kvh = h / group;
            for (int64_t i = 0; i < seq_len; i++) {
                const float *qi = q + (base + i) * q_stride + (int64_t)h * head_dim;
                double mx = -INFINITY;
                for (int64_t j = 0; j <= i; j++) {
                    const float *kj = k + (base + j) * kv_stride + (int64_t)kvh * head_dim;
                    double d = 0.0;
                    for (int c = 0; c < head_dim; c++) d += (double)qi[c] * kj[c];
                    p[j] = d * scale;
                    if (p[j] > mx) mx = p[j];
                }
                double sum = 0.0;
                for (int64_t j = 0; j <= i; j++) {
                    p[j] = exp(p[j] - mx);
                    sum += p[j];
                }
                for (int c = 0; c < head_dim; c++) acc[c] = 0.0;
                for (int64_t j = 0; j <= i; j++) {
                    const float *vj = v + (base + j) * kv_stride + (int64_t)kvh * head_dim;
                    double w = p[j] / sum;
                    for (int c = 0; c < head_dim; c++) acc[c] += w * vj[c];
                }
                float *oi = out + (base + i) * q_stride + (int64_t)h * head_dim;
                for (int c = 0; c < head_dim; c++) oi[c] = (float)acc[c];
            }
        }
    }
    free(p);
    free(acc);
    return QD_OK;
}
