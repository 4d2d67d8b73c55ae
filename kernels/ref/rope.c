/*
 * rope.c - reference rotary position embedding, Hugging Face rotate_half convention.
 *
 * DESIGN
 * A head vector of head_dim values is split in halves; element i of the first half and element
 * i of the second half form one rotated pair, turned by the angle pos * inv_freq[i]. (Meta's
 * original checkpoints pair adjacent elements instead; HF conversion permutes q/k rows so that
 * this convention holds, and quantd reads HF checkpoints.)
 *
 * inv_freq follows transformers' rope initialisation functions:
 *   default  inv_freq[i] = theta^(-2i/d)
 *   linear   inv_freq[i] / factor              (positions divided by factor)
 *   llama3   wavelength w = 2 pi / inv_freq[i]; with L = original_max_position_embeddings,
 *            w > L/low_freq_factor  -> inv_freq / factor
 *            w < L/high_freq_factor -> inv_freq
 *            otherwise smooth = (L/w - low) / (high - low),
 *                      (1 - smooth) * inv_freq / factor + smooth * inv_freq
 */
#include <math.h>

#include "ops.h"

void qd_rope_inv_freq_ref(double *inv_freq, const qd_rope_spec *spec) {
    int half = spec->head_dim / 2;
    for (int i = 0; i < half; i++) {
        double f = 1.0 / pow(spec->theta, (double)(2 * i) / (double)spec->head_dim);
        if (spec->type == QD_ROPE_LINEAR && spec->factor > 0) {
            f /= spec->factor;
        } else if (spec->type == QD_ROPE_LLAMA3 && spec->factor > 0) {
            double old_len = (double)spec->original_max_position_embeddings;
            double low_wavelen = old_len / spec->low_freq_factor;
            double high_wavelen = old_len / spec->high_freq_factor;
            double wavelen = 2.0 * M_PI / f;
            if (wavelen > low_wavelen) {
                f = f / spec->factor;
            } else if (wavelen >= high_wavelen) {
                /* medium band: neither shorter than high_wavelen nor longer than low_wavelen */
                double smooth = (old_len / wavelen - spec->low_freq_factor) /
                                (spec->high_freq_factor - spec->low_freq_factor);
                f = (1.0 - smooth) * f / spec->factor + smooth * f;
            }
        }
        inv_freq[i] = f;
    }
}

void qd_rope_table_ref(float *cos_t, float *sin_t, int64_t n_pos, int half,
                       const double *inv_freq) {
    for (int64_t p = 0; p < n_pos; p++) {
        for (int i = 0; i < half; i++) {
            double a = (double)p * inv_freq[i];
            cos_t[p * half + i] = (float)cos(a);
            sin_t[p * half + i] = (float)sin(a);
        }
    }
}

void qd_rope_apply_ref(float *x, int64_t n_tok, int64_t row_stride, int64_t seq_len,
                       int n_heads, int head_dim, const float *cos_t, const float *sin_t) {
    int half = head_dim / 2;
    for (int64_t t = 0; t < n_tok; t++) {
        int64_t pos = t % seq_len;
        const float *c = cos_t + pos * half; /* [half] */
        const float *s = sin_t + pos * half; /* [half] */
        for (int h = 0; h < n_heads; h++) {
            float *v = x + t * row_stride + (int64_t)h * head_dim; /* [head_dim] */
            for (int i = 0; i < half; i++) {
                float a = v[i], b = v[i + half];
                v[i] = a * c[i] - b * s[i];
                v[i + half] = b * c[i] + a * s[i];
            }
        }
    }
}
