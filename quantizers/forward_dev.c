/*
 * forward_dev.c - forward.c's blocks on a CUDA device, with a layer's weights resident there
 * (model_dev.h has the contract and says why every call mirrors forward.c's).
 */
#include "model_dev.h"

#include <stdlib.h>
#include <string.h>

#include "calib.h"
#include "model_internal.h"

static int64_t qdim_of(const qd_llama_config *c) {
    return (int64_t)c->num_attention_heads * c->head_dim;
}

static int64_t kvdim_of(const qd_llama_config *c) {
    return (int64_t)c->num_key_value_heads * c->head_dim;
}

/* Tokens of the largest attention chunk (qd_dev_attention) for this sequence length. */
static int64_t attention_chunk_tokens(int64_t seq_len) {
    return qd_fwd_seqs_per_chunk(seq_len) * seq_len;
}

qd_err qd_dev_fwd_init(qd_dev_fwd *f, qd_cuda *c, const qd_model *m, int64_t seq_len,
                       qd_error *err) {
    memset(f, 0, sizeof *f);
    const qd_llama_config *cfg = &m->cfg;
    if (seq_len <= 0 || seq_len > cfg->max_position_embeddings)
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "sequence length %lld outside 1..max_position_embeddings (%d)",
                            (long long)seq_len, cfg->max_position_embeddings);
    f->c = c;
    f->m = m;
    f->seq_len = seq_len;
    int64_t half = cfg->head_dim / 2;
    int64_t ct = attention_chunk_tokens(seq_len);
    int64_t att_n = ct * (2 * qdim_of(cfg) + 2 * kvdim_of(cfg));
    int64_t mlp_n = 2 * (int64_t)QD_FWD_CHUNK_TOKENS * cfg->intermediate_size;
    f->scratch_n = att_n > mlp_n ? att_n : mlp_n;
    float *tab = malloc((size_t)(2 * seq_len * half) * sizeof *tab);
    if (!tab)
        return qd_error_set(err, QD_ERR_NOMEM, "forward pass: no memory for rotary tables");
    qd_rope_table_ref(tab, tab + seq_len * half, seq_len, (int)half, m->inv_freq);
    qd_err rc;
    if ((rc = qd_cuda_alloc(c, (size_t)(2 * seq_len * half) * sizeof(float),
                            (void **)&f->rope, err)) ||
        (rc = qd_cuda_upload(c, f->rope, tab, (size_t)(2 * seq_len * half) * sizeof(float),
                             err)) ||
        (rc = qd_cuda_alloc(c, (size_t)f->scratch_n * sizeof(float), (void **)&f->scratch,
                            err)) ||
        (rc = qd_cuda_sync(c, err))) { /* tab is read by the queued upload */
        qd_error_prefix(err, "device forward pass: ");
        qd_dev_fwd_done(f);
    }
    free(tab);
    return rc;
}

void qd_dev_fwd_done(qd_dev_fwd *f) {
    if (!f || !f->c) return;
    qd_cuda_free(f->c, f->rope);
    qd_cuda_free(f->c, f->scratch);
    memset(f, 0, sizeof *f);
}

/* ---- a layer's weights ---- */

static size_t layer_floats(const qd_layer_weights *w) {
    size_t n = 2 * (size_t)w->hidden;
    for (int k = 0; k < QD_LINEAR_COUNT; k++) {
        n += (size_t)w->n_out[k] * (size_t)w->n_in[k];
        if (w->b[k]) n += (size_t)w->n_out[k];
    }
    return n;
}

static qd_err put(qd_dev_fwd *f, float *dst, const float *src, int64_t n, qd_error *err) {
    return qd_cuda_upload(f->c, dst, src, (size_t)n * sizeof(float), err);
}

qd_err qd_dev_layer_reserve(qd_dev_fwd *f, const qd_layer_weights *w, qd_dev_layer *d,
                            qd_error *err) {
    size_t bytes = layer_floats(w) * sizeof(float);
    qd_err rc = QD_OK;
    if (!d->block || d->block_bytes != bytes) {
        qd_dev_layer_free(f, d);
        if ((rc = qd_cuda_alloc(f->c, bytes, &d->block, err))) {
            qd_error_prefix(err, "layer %d weights on the device: ", w->layer);
            return rc;
        }
        d->block_bytes = bytes;
    }
    float *p = d->block;
    d->layer = w->layer;
    d->attn_norm = p;
    p += w->hidden;
    d->mlp_norm = p;
    p += w->hidden;
    for (int k = 0; k < QD_LINEAR_COUNT; k++) {
        d->n_out[k] = w->n_out[k];
        d->n_in[k] = w->n_in[k];
        d->w[k] = p;
        p += w->n_out[k] * w->n_in[k];
        d->b[k] = NULL;
        if (w->b[k]) {
            d->b[k] = p;
            p += w->n_out[k];
        }
    }
    return QD_OK;
}

qd_err qd_dev_layer_upload(qd_dev_fwd *f, const qd_layer_weights *w, qd_dev_layer *d,
                           qd_error *err) {
    qd_err rc = qd_dev_layer_reserve(f, w, d, err);
    for (int g = 0; g < QD_CALIB_GROUP_COUNT && !rc; g++)
        rc = qd_dev_layer_refresh(f, w, g, d, err);
    return rc;
}

qd_err qd_dev_layer_refresh(qd_dev_fwd *f, const qd_layer_weights *w, int group,
                            qd_dev_layer *d, qd_error *err) {
    qd_linear_kind kinds[3];
    int n = qd_calib_group_linears((qd_calib_group)group, kinds);
    qd_err rc = QD_OK;
    if (group == QD_CALIB_QKV) rc = put(f, d->attn_norm, w->attn_norm, w->hidden, err);
    if (group == QD_CALIB_GATE_UP) rc = put(f, d->mlp_norm, w->mlp_norm, w->hidden, err);
    for (int i = 0; i < n && !rc; i++) {
        qd_linear_kind k = kinds[i];
        rc = put(f, d->w[k], w->w[k], w->n_out[k] * w->n_in[k], err);
        if (!rc && w->b[k]) rc = put(f, d->b[k], w->b[k], w->n_out[k], err);
    }
    if (rc) qd_error_prefix(err, "layer %d %s weights to the device: ", w->layer,
                            qd_calib_group_name((qd_calib_group)group));
    return rc;
}

void qd_dev_layer_free(qd_dev_fwd *f, qd_dev_layer *d) {
    if (!d) return;
    if (f && f->c) qd_cuda_free(f->c, d->block);
    memset(d, 0, sizeof *d);
}

/* ---- blocks ---- */

qd_err qd_dev_rmsnorm(qd_dev_fwd *f, float *y, const float *x, const float *weight,
                      int64_t n_tok, qd_error *err) {
    const qd_llama_config *c = &f->m->cfg;
    return qd_rmsnorm_cuda(f->c, y, x, weight, n_tok, c->hidden_size, c->rms_norm_eps, err);
}

qd_err qd_dev_linear(qd_dev_fwd *f, const qd_dev_layer *d, qd_linear_kind k, const float *x,
                     int64_t n_tok, float *y, qd_error *err) {
    return qd_matmul_cuda(f->c, y, x, d->w[k], d->b[k], n_tok, d->n_out[k], d->n_in[k], err);
}

qd_err qd_dev_attention(qd_dev_fwd *f, const qd_dev_layer *d, const float *xn, int64_t n_seq,
                        float *y, float *attn_out, qd_error *err) {
    const qd_llama_config *c = &f->m->cfg;
    if (!y && !attn_out)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "device attention block: no output");
    int64_t seq_len = f->seq_len, hid = c->hidden_size, half = c->head_dim / 2;
    int64_t qdim = qdim_of(c), kvdim = kvdim_of(c);
    int64_t per_chunk = qd_fwd_seqs_per_chunk(seq_len);
    if (per_chunk > n_seq) per_chunk = n_seq;
    const float *cos_t = f->rope, *sin_t = f->rope + seq_len * half;
    qd_cuda *cu = f->c;
    qd_err rc = QD_OK;
    for (int64_t s0 = 0; s0 < n_seq && !rc; s0 += per_chunk) {
        int64_t ns = n_seq - s0 < per_chunk ? n_seq - s0 : per_chunk;
        int64_t T = ns * seq_len, t0 = s0 * seq_len;
        const float *x = xn + t0 * hid;
        float *q = f->scratch, *k = q + T * qdim, *v = k + T * kvdim;
        float *att = attn_out ? attn_out + t0 * qdim : v + T * kvdim;
        if ((rc = qd_dev_linear(f, d, QD_LINEAR_Q, x, T, q, err)) ||
            (rc = qd_dev_linear(f, d, QD_LINEAR_K, x, T, k, err)) ||
            (rc = qd_dev_linear(f, d, QD_LINEAR_V, x, T, v, err)) ||
            (rc = qd_rope_apply_cuda(cu, q, T, qdim, seq_len, c->num_attention_heads,
                                     c->head_dim, cos_t, sin_t, err)) ||
            (rc = qd_rope_apply_cuda(cu, k, T, kvdim, seq_len, c->num_key_value_heads,
                                     c->head_dim, cos_t, sin_t, err)) ||
            (rc = qd_attention_cuda(cu, att, q, k, v, ns, seq_len, c->num_attention_heads,
                                    c->num_key_value_heads, c->head_dim, err)))
            break;
        if (y) rc = qd_dev_linear(f, d, QD_LINEAR_O, att, T, y + t0 * hid, err);
    }
    if (rc) qd_error_prefix(err, "attention block on the device: ");
    return rc;
}

qd_err qd_dev_mlp(qd_dev_fwd *f, const qd_dev_layer *d, const float *xn, int64_t n_tok,
                  float *y, float *act, qd_error *err) {
    const qd_llama_config *c = &f->m->cfg;
    if (!y && !act) return qd_error_set(err, QD_ERR_INVALID_ARG, "device MLP block: no output");
    int64_t hid = c->hidden_size, inter = c->intermediate_size;
    int64_t chunk = n_tok < QD_FWD_CHUNK_TOKENS ? n_tok : QD_FWD_CHUNK_TOKENS;
    float *gate = f->scratch, *up = gate + chunk * inter;
    qd_err rc = QD_OK;
    for (int64_t t0 = 0; t0 < n_tok && !rc; t0 += chunk) {
        int64_t nt = n_tok - t0 < chunk ? n_tok - t0 : chunk;
        const float *x = xn + t0 * hid;
        float *a = act ? act + t0 * inter : gate; /* silu(gate) * up, written over gate */
        if ((rc = qd_dev_linear(f, d, QD_LINEAR_GATE, x, nt, gate, err)) ||
            (rc = qd_dev_linear(f, d, QD_LINEAR_UP, x, nt, up, err)) ||
            (rc = qd_silu_mul_cuda(f->c, a, gate, up, nt * inter, err)))
            break;
        if (y) rc = qd_dev_linear(f, d, QD_LINEAR_DOWN, a, nt, y + t0 * hid, err);
    }
    if (rc) qd_error_prefix(err, "MLP block on the device: ");
    return rc;
}
