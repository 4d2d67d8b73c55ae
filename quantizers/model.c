/*
 * model.c - open and check a Llama-family model directory; materialise layers in fp32.
 *
 * DESIGN
 * qd_model_open() resolves every tensor the forward pass will read, once, into a table of
 * qd_st_entry pointers (per layer: two norms, seven weights, optional biases), checking name,
 * shape and dtype against what config.json implies. Nothing is converted at open time: the
 * entries point into the mmap'd shards, and qd_layer_weights_load() converts one layer to fp32
 * when it is needed. After a successful open every later step can trust the shapes, so the
 * forward pass does no further validation of weights.
 *
 * The forward pass itself is in forward.c.
 */
#include "model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "dtype.h"
#include "model_internal.h"
#include "ops.h"

static const char *const linear_names[QD_LINEAR_COUNT] = {
    [QD_LINEAR_Q] = "q_proj",       [QD_LINEAR_K] = "k_proj",   [QD_LINEAR_V] = "v_proj",
    [QD_LINEAR_O] = "o_proj",       [QD_LINEAR_GATE] = "gate_proj",
    [QD_LINEAR_UP] = "up_proj",     [QD_LINEAR_DOWN] = "down_proj",
};

const char *qd_linear_name(qd_linear_kind k) {
    if ((int)k < 0 || k >= QD_LINEAR_COUNT) return NULL;
    return linear_names[k];
}

qd_err qd_linear_path(char *buf, size_t len, int layer, qd_linear_kind k, qd_error *err) {
    const char *name = qd_linear_name(k);
    if (!name) return qd_error_set(err, QD_ERR_INVALID_ARG, "linear kind %d out of range", k);
    const char *block = k <= QD_LINEAR_O ? "self_attn" : "mlp";
    int n = snprintf(buf, len, "model.layers.%d.%s.%s", layer, block, name);
    if (n < 0 || (size_t)n >= len)
        return qd_error_set(err, QD_ERR_TOO_LARGE, "module path of layer %d %s too long",
                            layer, name);
    return QD_OK;
}

/* ---- checks at open time ---- */

static bool supported_dtype(qd_dtype t) {
    return t == QD_DTYPE_F32 || t == QD_DTYPE_F16 || t == QD_DTYPE_BF16;
}

/* Find `name` and check it is a float tensor of the given shape. When optional, a missing
 * tensor leaves *ret NULL and succeeds. */
static qd_err find_tensor(const qd_model *m, const char *name, int ndim, const int64_t *shape,
                          bool optional, const qd_st_entry **ret, qd_error *err) {
    char want[96], got[96];
    const qd_st_entry *e = qd_st_model_find(m->st, name);
    *ret = NULL;
    if (!e) {
        if (optional) return QD_OK;
        return qd_error_set(err, QD_ERR_NOT_FOUND,
                            "model %s: tensor '%s' is missing (config.json implies shape %s)",
                            m->dir, name, qd_shape_str(ndim, shape, want, sizeof want));
    }
    bool same = e->ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = e->shape[i] == shape[i];
    if (!same)
        return qd_error_set(err, QD_ERR_FORMAT,
                            "model %s: tensor '%s' has shape %s but config.json implies %s",
                            m->dir, name, qd_shape_str(e->ndim, e->shape, got, sizeof got),
                            qd_shape_str(ndim, shape, want, sizeof want));
    if (!supported_dtype(e->dtype))
        return qd_error_set(err, QD_ERR_UNSUPPORTED,
                            "model %s: tensor '%s' has dtype %s; the runtime reads F32, F16 "
                            "and BF16 weights",
                            m->dir, name, qd_dtype_name(e->dtype));
    *ret = e;
    return QD_OK;
}

static qd_err check_config(const qd_model *m, qd_error *err) {
    const qd_llama_config *c = &m->cfg;
    struct {
        const char *key;
        long long v, max;
    } dims[] = {
        {"hidden_size", c->hidden_size, QD_MODEL_MAX_DIM},
        {"intermediate_size", c->intermediate_size, QD_MODEL_MAX_DIM},
        {"num_hidden_layers", c->num_hidden_layers, QD_MODEL_MAX_LAYERS},
        {"num_attention_heads * head_dim", (long long)c->num_attention_heads * c->head_dim,
         QD_MODEL_MAX_DIM},
        {"num_key_value_heads", c->num_key_value_heads, QD_MODEL_MAX_DIM},
        {"vocab_size", c->vocab_size, QD_MODEL_MAX_VOCAB},
        {"max_position_embeddings", c->max_position_embeddings, QD_MODEL_MAX_DIM},
    };
    for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++)
        if (dims[i].v <= 0 || dims[i].v > dims[i].max)
            return qd_error_set(err, QD_ERR_UNSUPPORTED,
                                "model %s: %s = %lld is outside the runtime's range 1..%lld",
                                m->dir, dims[i].key, dims[i].v, dims[i].max);
    if (c->head_dim <= 0 || c->head_dim % 2 != 0)
        return qd_error_set(err, QD_ERR_CONFIG,
                            "model %s: head_dim %d must be positive and even for rotary "
                            "embeddings", m->dir, c->head_dim);
    if (c->num_attention_heads <= 0 || c->num_key_value_heads <= 0 ||
        c->num_attention_heads % c->num_key_value_heads != 0)
        return qd_error_set(err, QD_ERR_CONFIG,
                            "model %s: num_attention_heads %d is not a multiple of "
                            "num_key_value_heads %d", m->dir, c->num_attention_heads,
                            c->num_key_value_heads);
    if (!(c->rms_norm_eps >= 0) || !(c->rope_theta > 0))
        return qd_error_set(err, QD_ERR_CONFIG, "model %s: rms_norm_eps %g / rope_theta %g",
                            m->dir, c->rms_norm_eps, c->rope_theta);
    return QD_OK;
}

/* [n_out, n_in] of linear k as config.json implies it. */
static void linear_shape(const qd_llama_config *c, qd_linear_kind k, int64_t ret[2]) {
    int64_t hid = c->hidden_size, inter = c->intermediate_size;
    int64_t qdim = (int64_t)c->num_attention_heads * c->head_dim;
    int64_t kvdim = (int64_t)c->num_key_value_heads * c->head_dim;
    switch (k) {
    case QD_LINEAR_Q: ret[0] = qdim, ret[1] = hid; break;
    case QD_LINEAR_K:
    case QD_LINEAR_V: ret[0] = kvdim, ret[1] = hid; break;
    case QD_LINEAR_O: ret[0] = hid, ret[1] = qdim; break;
    case QD_LINEAR_GATE:
    case QD_LINEAR_UP: ret[0] = inter, ret[1] = hid; break;
    default: ret[0] = hid, ret[1] = inter; break;
    }
}

static qd_err resolve_layer(qd_model *m, int l, qd_error *err) {
    const qd_llama_config *c = &m->cfg;
    struct qd_model_layer *L = &m->layers[l];
    int64_t hid = c->hidden_size;
    int64_t shape[QD_LINEAR_COUNT][2];
    for (int k = 0; k < QD_LINEAR_COUNT; k++) linear_shape(c, (qd_linear_kind)k, shape[k]);
    char name[160], path[128];
    qd_err rc;

    snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", l);
    if ((rc = find_tensor(m, name, 1, &hid, false, &L->attn_norm, err))) return rc;
    snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", l);
    if ((rc = find_tensor(m, name, 1, &hid, false, &L->mlp_norm, err))) return rc;
    for (int k = 0; k < QD_LINEAR_COUNT; k++) {
        if ((rc = qd_linear_path(path, sizeof path, l, (qd_linear_kind)k, err))) return rc;
        snprintf(name, sizeof name, "%s.weight", path);
        L->w[k] = NULL;
        if (!(m->flags & QD_MODEL_OPEN_EXTERNAL_LINEARS) &&
            (rc = find_tensor(m, name, 2, shape[k], false, &L->w[k], err)))
            return rc;
        /* Which linears carry a bias is the config's call (Llama attention_bias: q/k/v/o,
         * Qwen2: q/k/v, Llama mlp_bias: gate/up/down); a bias tensor the config does not
         * announce is ignored, as transformers ignores it. */
        bool use_bias;
        if (k <= QD_LINEAR_V)
            use_bias = c->qkv_bias;
        else if (k == QD_LINEAR_O)
            use_bias = c->o_bias;
        else
            use_bias = c->mlp_bias;
        L->b[k] = NULL;
        if (use_bias) {
            snprintf(name, sizeof name, "%s.bias", path);
            if ((rc = find_tensor(m, name, 1, &shape[k][0], false, &L->b[k], err))) return rc;
        }
    }
    return QD_OK;
}

qd_err qd_model_open(const char *dir, qd_model **ret_model, qd_error *err) {
    return qd_model_open_ex(dir, 0, ret_model, err);
}

qd_err qd_model_open_ex(const char *dir, unsigned flags, qd_model **ret_model, qd_error *err) {
    qd_err rc;
    if (flags & ~(unsigned)QD_MODEL_OPEN_EXTERNAL_LINEARS)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "model %s: unknown open flags 0x%x", dir,
                            flags);
    qd_model *m = calloc(1, sizeof *m);
    if (!m) return qd_error_set(err, QD_ERR_NOMEM, "model %s: out of memory", dir);
    m->flags = flags;
    m->dir = strdup(dir);
    if (!m->dir) {
        rc = qd_error_set(err, QD_ERR_NOMEM, "model %s: out of memory", dir);
        goto fail;
    }
    if ((rc = qd_llama_config_load(dir, &m->cfg, err))) goto fail;
    if ((rc = check_config(m, err))) goto fail;
    if ((rc = qd_st_model_open(dir, &m->st, err))) goto fail;

    const qd_llama_config *c = &m->cfg;
    int64_t emb_shape[2] = {c->vocab_size, c->hidden_size};
    int64_t hid = c->hidden_size;
    if ((rc = find_tensor(m, "model.embed_tokens.weight", 2, emb_shape, false, &m->embed, err)))
        goto fail;
    if ((rc = find_tensor(m, "model.norm.weight", 1, &hid, false, &m->final_norm, err)))
        goto fail;
    if (c->tie_word_embeddings) {
        m->lm_head = m->embed;
    } else if ((rc = find_tensor(m, "lm_head.weight", 2, emb_shape, false, &m->lm_head, err))) {
        qd_error_prefix(err, "(tie_word_embeddings is false) ");
        goto fail;
    }
    m->layers = calloc((size_t)c->num_hidden_layers, sizeof *m->layers);
    if (!m->layers) {
        rc = qd_error_set(err, QD_ERR_NOMEM, "model %s: out of memory", dir);
        goto fail;
    }
    for (int l = 0; l < c->num_hidden_layers; l++)
        if ((rc = resolve_layer(m, l, err))) goto fail;

    m->rope.head_dim = c->head_dim;
    m->rope.theta = c->rope_theta;
    m->rope.type = c->rope_scaling.type;
    m->rope.factor = c->rope_scaling.factor;
    m->rope.low_freq_factor = c->rope_scaling.low_freq_factor;
    m->rope.high_freq_factor = c->rope_scaling.high_freq_factor;
    m->rope.original_max_position_embeddings = c->rope_scaling.original_max_position_embeddings;
    m->inv_freq = malloc((size_t)(c->head_dim / 2) * sizeof *m->inv_freq);
    if (!m->inv_freq) {
        rc = qd_error_set(err, QD_ERR_NOMEM, "model %s: out of memory", dir);
        goto fail;
    }
    qd_rope_inv_freq_ref(m->inv_freq, &m->rope);
    *ret_model = m;
    return QD_OK;
fail:
    qd_model_free(m);
    return rc;
}

void qd_model_free(qd_model *m) {
    if (!m) return;
    qd_st_model_close(m->st);
    free(m->layers);
    free(m->inv_freq);
    free(m->dir);
    free(m);
}

const qd_llama_config *qd_model_config(const qd_model *m) {
    return &m->cfg;
}

const qd_st_model *qd_model_weights(const qd_model *m) {
    return m->st;
}

bool qd_model_has_bias(const qd_model *m, qd_linear_kind k) {
    if ((int)k < 0 || k >= QD_LINEAR_COUNT || m->cfg.num_hidden_layers <= 0) return false;
    return m->layers[0].b[k] != NULL;
}

qd_err qd_model_check_tokens(const qd_model *m, const int32_t *tokens, int64_t n_seq,
                             int64_t seq_len, qd_error *err) {
    if (n_seq <= 0 || seq_len <= 0)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "token batch of %lld x %lld is empty",
                            (long long)n_seq, (long long)seq_len);
    if (seq_len > m->cfg.max_position_embeddings)
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "sequence length %lld exceeds the model's max_position_embeddings "
                            "%d", (long long)seq_len, m->cfg.max_position_embeddings);
    if (m->cfg.sliding_window > 0 && seq_len > m->cfg.sliding_window)
        return qd_error_set(err, QD_ERR_UNSUPPORTED,
                            "sequence length %lld exceeds the model's sliding_window %d (the "
                            "runtime implements full causal attention only)",
                            (long long)seq_len, m->cfg.sliding_window);
    for (int64_t s = 0; s < n_seq; s++)
        for (int64_t i = 0; i < seq_len; i++) {
            int32_t t = tokens[s * seq_len + i];
            if (t < 0 || t >= m->cfg.vocab_size)
                return qd_error_set(err, QD_ERR_INVALID_ARG,
                                    "token id %d at row %lld position %lld is outside the "
                                    "vocabulary [0, %d)", (int)t, (long long)s, (long long)i,
                                    m->cfg.vocab_size);
        }
    return QD_OK;
}

/* ---- materialising weights ---- */

void qd_model_release_pages(const void *data, size_t len) {
    /* Only whole pages inside the range: the neighbours' bytes stay mapped. The mapping is
     * read-only and private, so dropped pages are simply read again (from the page cache)
     * if they are touched later; nothing can be lost. */
    static long page;
    if (page <= 0) page = sysconf(_SC_PAGESIZE);
    if (page <= 0 || len < (size_t)page) return;
    uintptr_t a = (uintptr_t)data, e = a + len;
    uintptr_t a0 = (a + (uintptr_t)page - 1) / (uintptr_t)page * (uintptr_t)page;
    uintptr_t e0 = e / (uintptr_t)page * (uintptr_t)page;
    if (e0 > a0) madvise((void *)a0, e0 - a0, MADV_DONTNEED);
}

/* A new fp32 copy of a whole entry. */
static qd_err load_f32(const qd_st_entry *e, float **ret, qd_error *err) {
    int64_t n = 1;
    for (int i = 0; i < e->ndim; i++) n *= e->shape[i];
    float *p = malloc((size_t)(n > 0 ? n : 1) * sizeof *p);
    if (!p)
        return qd_error_set(err, QD_ERR_NOMEM, "no memory for an fp32 copy of '%s' (%lld values)",
                            e->name, (long long)n);
    qd_err rc = qd_convert(QD_DTYPE_F32, p, e->dtype, e->data, (size_t)n, err);
    if (rc) {
        free(p);
        qd_error_prefix(err, "%s: ", e->name);
        return rc;
    }
    /* the fp32 copy is what runs; the file's pages need not stay resident */
    qd_model_release_pages(e->data, (size_t)(e->end - e->begin));
    *ret = p;
    return QD_OK;
}

qd_err qd_model_rows_f32(const qd_st_entry *e, int64_t row0, int64_t n_rows, float *dst,
                         qd_error *err) {
    int64_t cols = e->shape[e->ndim - 1];
    size_t esz = qd_dtype_size(e->dtype);
    const unsigned char *src = (const unsigned char *)e->data + (size_t)(row0 * cols) * esz;
    qd_err rc = qd_convert(QD_DTYPE_F32, dst, e->dtype, src, (size_t)(n_rows * cols), err);
    if (rc) qd_error_prefix(err, "%s: ", e->name);
    return rc;
}

qd_err qd_layer_weights_load(const qd_model *m, int layer, qd_layer_weights *ret,
                             qd_error *err) {
    if (layer < 0 || layer >= m->cfg.num_hidden_layers)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "layer %d out of range (model has %d)",
                            layer, m->cfg.num_hidden_layers);
    const struct qd_model_layer *L = &m->layers[layer];
    qd_layer_weights w;
    memset(&w, 0, sizeof w);
    w.layer = layer;
    w.hidden = m->cfg.hidden_size;
    qd_err rc;
    if ((rc = load_f32(L->attn_norm, &w.attn_norm, err))) goto fail;
    if ((rc = load_f32(L->mlp_norm, &w.mlp_norm, err))) goto fail;
    for (int k = 0; k < QD_LINEAR_COUNT; k++) {
        int64_t shape[2];
        linear_shape(&m->cfg, (qd_linear_kind)k, shape);
        w.n_out[k] = shape[0];
        w.n_in[k] = shape[1];
        if (!L->w[k]) { /* QD_MODEL_OPEN_EXTERNAL_LINEARS: the on_weights hook fills it */
            w.w[k] = calloc((size_t)(shape[0] * shape[1]), sizeof *w.w[k]);
            if (!w.w[k]) {
                rc = qd_error_set(err, QD_ERR_NOMEM, "layer %d %s: no memory for [%lld, %lld]",
                                  layer, qd_linear_name((qd_linear_kind)k),
                                  (long long)shape[0], (long long)shape[1]);
                goto fail;
            }
        } else if ((rc = load_f32(L->w[k], &w.w[k], err))) {
            goto fail;
        }
        if (L->b[k] && (rc = load_f32(L->b[k], &w.b[k], err))) goto fail;
    }
    *ret = w;
    return QD_OK;
fail:
    qd_layer_weights_done(&w);
    return rc;
}

void qd_layer_weights_done(qd_layer_weights *w) {
    if (!w) return;
    free(w->attn_norm);
    free(w->mlp_norm);
    for (int k = 0; k < QD_LINEAR_COUNT; k++) {
        free(w->w[k]);
        free(w->b[k]);
    }
    memset(w, 0, sizeof *w);
}

qd_err qd_model_embed(const qd_model *m, const int32_t *tokens, int64_t n_tok, float *x,
                      qd_error *err) {
    int64_t hid = m->cfg.hidden_size;
    for (int64_t t = 0; t < n_tok; t++) {
        if (tokens[t] < 0 || tokens[t] >= m->cfg.vocab_size)
            return qd_error_set(err, QD_ERR_INVALID_ARG, "token id %d outside [0, %d)",
                                (int)tokens[t], m->cfg.vocab_size);
        qd_err rc = qd_model_rows_f32(m->embed, tokens[t], 1, x + t * hid, err);
        if (rc) return rc;
    }
    return QD_OK;
}
