/*
 * calib.c - the layer-by-layer calibration driver and activation statistics.
 *
 * DESIGN
 * One decoder layer at a time over the whole batch (calib.h gives the contract). Per layer:
 *
 *   load fp32 weights -> on_weights hook -> layer_begin
 *   MODIFIED:  xq = norm1(X)  -> cb(QKV, xq) -> xq = norm1(X) -> att = attn(xq)
 *              -> cb(O, att) -> h = X + o(att) -> xg = norm2(h) -> cb(GATE_UP, xg)
 *              -> xg = norm2(h) -> act = silu(gate(xg)) * up(xg) -> cb(DOWN, act)
 *              -> X = h + down(act)
 *   ORIGINAL:  the same chain without callbacks, every input kept, X' = layer output;
 *              then cb(QKV), cb(O), cb(GATE_UP), cb(DOWN) on the kept inputs; X = X'
 *   -> layer_end(X) -> free weights
 *
 * Buffers live for one layer: [T, hidden] x3 (xq/xg share one in MODIFIED mode),
 * [T, heads * head_dim] and [T, intermediate]. The block functions chunk their own scratch.
 */
#include "calib.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model_internal.h"
#include "ops.h"
#ifdef QD_HAVE_CUDA
#include "model_dev.h"
#endif

static const char *const group_names[QD_CALIB_GROUP_COUNT] = {"qkv", "o", "gate_up", "down"};

const char *qd_calib_group_name(qd_calib_group g) {
    if ((int)g < 0 || g >= QD_CALIB_GROUP_COUNT) return NULL;
    return group_names[g];
}

int qd_calib_group_linears(qd_calib_group g, qd_linear_kind ret_kinds[3]) {
    switch (g) {
    case QD_CALIB_QKV:
        ret_kinds[0] = QD_LINEAR_Q;
        ret_kinds[1] = QD_LINEAR_K;
        ret_kinds[2] = QD_LINEAR_V;
        return 3;
    case QD_CALIB_O: ret_kinds[0] = QD_LINEAR_O; return 1;
    case QD_CALIB_GATE_UP:
        ret_kinds[0] = QD_LINEAR_GATE;
        ret_kinds[1] = QD_LINEAR_UP;
        return 2;
    case QD_CALIB_DOWN: ret_kinds[0] = QD_LINEAR_DOWN; return 1;
    default: return 0;
    }
}

/* ---- the driver ---- */

struct layer_bufs {
    float *xq;  /* [T, hidden] QKV input */
    float *att; /* [T, qdim]   O input */
    float *h;   /* [T, hidden] residual after attention */
    float *xg;  /* [T, hidden] GATE_UP input (== xq in MODIFIED mode) */
    float *act; /* [T, inter]  DOWN input */
    float *y;   /* [T, hidden] block outputs */
};

struct run {
    const qd_model *m;
    const qd_calib_opts *o;
    const qd_calib_callbacks *cb;
    int64_t n_seq, seq_len, T;
    float *x; /* [T, hidden] the hidden state between layers */
    struct qd_cuda *cuda; /* the device the layers run on; NULL: the host */
};

static qd_err call_group_at(struct run *r, qd_layer_weights *w, qd_calib_group g,
                            const float *x, const float *x_dev, int64_t n_in, qd_error *err) {
    if (!r->cb || !r->cb->group) return QD_OK;
    qd_calib_input in = {
        .layer = w->layer, .group = g, .x = x, .n_tok = r->T, .n_in = n_in,
        .n_seq = r->n_seq, .seq_len = r->seq_len, .layer_in = r->x,
        .x_dev = x_dev, .cuda = x_dev ? r->cuda : NULL,
    };
    qd_err rc = r->cb->group(r->cb->ctx, &in, w, err);
    if (rc) qd_error_prefix(err, "%s: ", qd_calib_group_name(g));
    return rc;
}

static qd_err call_group(struct run *r, qd_layer_weights *w, qd_calib_group g, const float *x,
                         int64_t n_in, qd_error *err) {
    return call_group_at(r, w, g, x, NULL, n_in, err);
}

static void add_into(float *dst, const float *a, const float *b, int64_t n) {
    for (int64_t i = 0; i < n; i++) dst[i] = a[i] + b[i];
}

static qd_err layer_modified(struct run *r, qd_layer_weights *w, struct layer_bufs *b,
                             qd_error *err) {
    const qd_run_opts *o = &r->o->run;
    const qd_llama_config *c = qd_model_config(r->m);
    int64_t T = r->T, hid = c->hidden_size;
    int64_t qdim = (int64_t)c->num_attention_heads * c->head_dim;
    qd_err rc;

    if ((rc = qd_model_rmsnorm_ex(r->m, r->x, w->attn_norm, T, b->xq, o, err)) ||
        (rc = call_group(r, w, QD_CALIB_QKV, b->xq, hid, err)) ||
        /* the norm may have changed */
        (rc = qd_model_rmsnorm_ex(r->m, r->x, w->attn_norm, T, b->xq, o, err)) ||
        (rc = qd_block_attention_ex(r->m, w, b->xq, r->n_seq, r->seq_len, NULL, b->att, o,
                                    err)) ||
        (rc = call_group(r, w, QD_CALIB_O, b->att, qdim, err)) ||
        (rc = qd_linear_forward_ex(w, QD_LINEAR_O, b->att, T, b->y, o, err)))
        return rc;
    add_into(b->h, r->x, b->y, T * hid);

    if ((rc = qd_model_rmsnorm_ex(r->m, b->h, w->mlp_norm, T, b->xg, o, err)) ||
        (rc = call_group(r, w, QD_CALIB_GATE_UP, b->xg, hid, err)) ||
        (rc = qd_model_rmsnorm_ex(r->m, b->h, w->mlp_norm, T, b->xg, o, err)) ||
        (rc = qd_block_mlp_ex(r->m, w, b->xg, T, NULL, b->act, o, err)) ||
        (rc = call_group(r, w, QD_CALIB_DOWN, b->act, c->intermediate_size, err)) ||
        (rc = qd_linear_forward_ex(w, QD_LINEAR_DOWN, b->act, T, b->y, o, err)))
        return rc;
    add_into(r->x, b->h, b->y, T * hid);
    return QD_OK;
}

static qd_err layer_original(struct run *r, qd_layer_weights *w, struct layer_bufs *b,
                             qd_error *err) {
    const qd_run_opts *o = &r->o->run;
    const qd_llama_config *c = qd_model_config(r->m);
    int64_t T = r->T, hid = c->hidden_size;
    int64_t qdim = (int64_t)c->num_attention_heads * c->head_dim;
    qd_err rc;

    /* Float pass with the weights as loaded; every group input is kept. */
    if ((rc = qd_model_rmsnorm_ex(r->m, r->x, w->attn_norm, T, b->xq, o, err)) ||
        (rc = qd_block_attention_ex(r->m, w, b->xq, r->n_seq, r->seq_len, NULL, b->att, o,
                                    err)) ||
        (rc = qd_linear_forward_ex(w, QD_LINEAR_O, b->att, T, b->y, o, err)))
        return rc;
    add_into(b->h, r->x, b->y, T * hid);
    if ((rc = qd_model_rmsnorm_ex(r->m, b->h, w->mlp_norm, T, b->xg, o, err)) ||
        (rc = qd_block_mlp_ex(r->m, w, b->xg, T, b->y, b->act, o, err)))
        return rc;
    add_into(b->h, b->h, b->y, T * hid); /* h is now the layer's float output */

    if ((rc = call_group(r, w, QD_CALIB_QKV, b->xq, hid, err))) return rc;
    if ((rc = call_group(r, w, QD_CALIB_O, b->att, qdim, err))) return rc;
    if ((rc = call_group(r, w, QD_CALIB_GATE_UP, b->xg, hid, err))) return rc;
    if ((rc = call_group(r, w, QD_CALIB_DOWN, b->act, c->intermediate_size, err))) return rc;
    memcpy(r->x, b->h, (size_t)(T * hid) * sizeof(float));
    return QD_OK;
}

static void free_bufs(struct layer_bufs *b) {
    free(b->xq);
    free(b->att);
    free(b->h);
    if (b->xg != b->xq) free(b->xg);
    free(b->act);
    free(b->y);
    memset(b, 0, sizeof *b);
}

/* on_device: the layer runs on a device, the host keeps only the callbacks' inputs. */
static qd_err alloc_bufs(const qd_model *m, int64_t T, bool separate_xg, bool on_device,
                         struct layer_bufs *b, qd_error *err) {
    const qd_llama_config *c = qd_model_config(m);
    int64_t hid = c->hidden_size, inter = c->intermediate_size;
    int64_t qdim = (int64_t)c->num_attention_heads * c->head_dim;
    memset(b, 0, sizeof *b);
    b->xq = malloc((size_t)(T * hid) * sizeof(float));
    b->att = malloc((size_t)(T * qdim) * sizeof(float));
    b->h = on_device ? NULL : malloc((size_t)(T * hid) * sizeof(float));
    b->xg = separate_xg ? malloc((size_t)(T * hid) * sizeof(float)) : b->xq;
    b->act = malloc((size_t)(T * inter) * sizeof(float));
    b->y = on_device ? NULL : malloc((size_t)(T * hid) * sizeof(float));
    if (!b->xq || !b->att || (!on_device && (!b->h || !b->y)) || !b->xg || !b->act) {
        free_bufs(b);
        return qd_error_set(err, QD_ERR_NOMEM,
                            "calibration: no memory for the activations of one layer "
                            "(%lld tokens)", (long long)T);
    }
    return QD_OK;
}

/* ---- the layer on a CUDA device (calib.h, "On a device") ---- */

#ifdef QD_HAVE_CUDA
struct dev_run {
    qd_dev_fwd f;
    qd_dev_layer d;
    float *x;                          /* [T, hidden] X */
    float *xq, *att, *h, *xg, *act, *y; /* as struct layer_bufs; xg == xq in MODIFIED mode */
};

static void dev_free(struct dev_run *D) {
    qd_cuda *c = D->f.c;
    if (c) {
        qd_cuda_free(c, D->x);
        qd_cuda_free(c, D->xq);
        qd_cuda_free(c, D->att);
        qd_cuda_free(c, D->h);
        if (D->xg != D->xq) qd_cuda_free(c, D->xg);
        qd_cuda_free(c, D->act);
        qd_cuda_free(c, D->y);
        qd_dev_layer_free(&D->f, &D->d);
    }
    qd_dev_fwd_done(&D->f);
    memset(D, 0, sizeof *D);
}

static qd_err dev_alloc(struct run *r, bool separate_xg, struct dev_run *D, qd_error *err) {
    const qd_llama_config *c = qd_model_config(r->m);
    int64_t T = r->T, hid = c->hidden_size;
    int64_t qdim = (int64_t)c->num_attention_heads * c->head_dim;
    memset(D, 0, sizeof *D);
    qd_err rc = qd_dev_fwd_init(&D->f, r->cuda, r->m, r->seq_len, err);
    if (rc) return rc;
    struct {
        float **p;
        int64_t n;
    } bufs[] = {
        {&D->x, T * hid}, {&D->xq, T * hid}, {&D->att, T * qdim}, {&D->h, T * hid},
        {&D->act, T * c->intermediate_size}, {&D->y, T * hid},
        {separate_xg ? &D->xg : NULL, T * hid},
    };
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0] && !rc; i++)
        if (bufs[i].p)
            rc = qd_cuda_alloc(r->cuda, (size_t)bufs[i].n * sizeof(float), (void **)bufs[i].p,
                               err);
    if (!separate_xg) D->xg = D->xq;
    if (rc) {
        qd_error_prefix(err, "calibration activations of %lld tokens on the device: ",
                        (long long)T);
        dev_free(D);
    }
    return rc;
}

/* A group input to the host for its callback (only when there is a callback to see it). */
static qd_err dev_to_host(struct run *r, float *host, const float *dev, int64_t n,
                          qd_error *err) {
    if (!r->cb || !r->cb->group) return QD_OK;
    return qd_cuda_download(r->cuda, host, dev, (size_t)n * sizeof(float), err);
}

/* After a MODIFIED-mode callback: the arrays it owns, to the device again. */
static qd_err dev_refresh(struct run *r, struct dev_run *D, const qd_layer_weights *w,
                          qd_calib_group g, qd_error *err) {
    if (!r->cb || !r->cb->group) return QD_OK;
    return qd_dev_layer_refresh(&D->f, w, g, &D->d, err);
}

static qd_err layer_modified_dev(struct run *r, struct dev_run *D, qd_layer_weights *w,
                                 struct layer_bufs *b, qd_error *err) {
    const qd_llama_config *c = qd_model_config(r->m);
    int64_t T = r->T, hid = c->hidden_size, inter = c->intermediate_size;
    int64_t qdim = (int64_t)c->num_attention_heads * c->head_dim;
    qd_dev_fwd *f = &D->f;
    qd_err rc;
    if ((rc = qd_dev_rmsnorm(f, D->xq, D->x, D->d.attn_norm, T, err)) ||
        (rc = dev_to_host(r, b->xq, D->xq, T * hid, err)) ||
        (rc = call_group_at(r, w, QD_CALIB_QKV, b->xq, D->xq, hid, err)) ||
        (rc = dev_refresh(r, D, w, QD_CALIB_QKV, err)) ||
        /* the norm may have changed */
        (rc = qd_dev_rmsnorm(f, D->xq, D->x, D->d.attn_norm, T, err)) ||
        (rc = qd_dev_attention(f, &D->d, D->xq, r->n_seq, NULL, D->att, err)) ||
        (rc = dev_to_host(r, b->att, D->att, T * qdim, err)) ||
        (rc = call_group_at(r, w, QD_CALIB_O, b->att, D->att, qdim, err)) ||
        (rc = dev_refresh(r, D, w, QD_CALIB_O, err)) ||
        (rc = qd_dev_linear(f, &D->d, QD_LINEAR_O, D->att, T, D->y, err)) ||
        (rc = qd_add_cuda(r->cuda, D->h, D->x, D->y, T * hid, err)))
        return rc;
    if ((rc = qd_dev_rmsnorm(f, D->xg, D->h, D->d.mlp_norm, T, err)) ||
        (rc = dev_to_host(r, b->xg, D->xg, T * hid, err)) ||
        (rc = call_group_at(r, w, QD_CALIB_GATE_UP, b->xg, D->xg, hid, err)) ||
        (rc = dev_refresh(r, D, w, QD_CALIB_GATE_UP, err)) ||
        (rc = qd_dev_rmsnorm(f, D->xg, D->h, D->d.mlp_norm, T, err)) ||
        (rc = qd_dev_mlp(f, &D->d, D->xg, T, NULL, D->act, err)) ||
        (rc = dev_to_host(r, b->act, D->act, T * inter, err)) ||
        (rc = call_group_at(r, w, QD_CALIB_DOWN, b->act, D->act, inter, err)) ||
        (rc = dev_refresh(r, D, w, QD_CALIB_DOWN, err)) ||
        (rc = qd_dev_linear(f, &D->d, QD_LINEAR_DOWN, D->act, T, D->y, err)) ||
        (rc = qd_add_cuda(r->cuda, D->x, D->h, D->y, T * hid, err)))
        return rc;
    return QD_OK;
}

static qd_err layer_original_dev(struct run *r, struct dev_run *D, qd_layer_weights *w,
                                 struct layer_bufs *b, qd_error *err) {
    const qd_llama_config *c = qd_model_config(r->m);
    int64_t T = r->T, hid = c->hidden_size, inter = c->intermediate_size;
    int64_t qdim = (int64_t)c->num_attention_heads * c->head_dim;
    qd_dev_fwd *f = &D->f;
    qd_err rc;
    /* Float pass with the weights as loaded; every group input is kept. */
    if ((rc = qd_dev_rmsnorm(f, D->xq, D->x, D->d.attn_norm, T, err)) ||
        (rc = qd_dev_attention(f, &D->d, D->xq, r->n_seq, NULL, D->att, err)) ||
        (rc = qd_dev_linear(f, &D->d, QD_LINEAR_O, D->att, T, D->y, err)) ||
        (rc = qd_add_cuda(r->cuda, D->h, D->x, D->y, T * hid, err)) ||
        (rc = qd_dev_rmsnorm(f, D->xg, D->h, D->d.mlp_norm, T, err)) ||
        (rc = qd_dev_mlp(f, &D->d, D->xg, T, D->y, D->act, err)) ||
        (rc = qd_add_cuda(r->cuda, D->h, D->h, D->y, T * hid, err)) ||
        (rc = dev_to_host(r, b->xq, D->xq, T * hid, err)) ||
        (rc = dev_to_host(r, b->att, D->att, T * qdim, err)) ||
        (rc = dev_to_host(r, b->xg, D->xg, T * hid, err)) ||
        (rc = dev_to_host(r, b->act, D->act, T * inter, err)))
        return rc;
    if ((rc = call_group_at(r, w, QD_CALIB_QKV, b->xq, D->xq, hid, err)) ||
        (rc = call_group_at(r, w, QD_CALIB_O, b->att, D->att, qdim, err)) ||
        (rc = call_group_at(r, w, QD_CALIB_GATE_UP, b->xg, D->xg, hid, err)) ||
        (rc = call_group_at(r, w, QD_CALIB_DOWN, b->act, D->act, inter, err)))
        return rc;
    float *t = D->x; /* X = the float output */
    D->x = D->h;
    D->h = t;
    return QD_OK;
}

/* One layer on the device: weights up, the layer, X back to the host (layer_end's x_out,
 * the next layer_begin's x_in, the callbacks' layer_in). */
static qd_err layer_dev(struct run *r, struct dev_run *D, bool original, qd_layer_weights *w,
                        struct layer_bufs *b, qd_error *err) {
    int64_t n = r->T * qd_model_config(r->m)->hidden_size;
    qd_err rc = qd_dev_layer_upload(&D->f, w, &D->d, err);
    if (!rc) rc = original ? layer_original_dev(r, D, w, b, err)
                           : layer_modified_dev(r, D, w, b, err);
    if (!rc) rc = qd_cuda_download(r->cuda, r->x, D->x, (size_t)n * sizeof(float), err);
    /* the host weights are freed after this layer: nothing queued may still read them */
    if (rc == QD_OK) return qd_cuda_sync(r->cuda, err);
    qd_error ignore = {0};
    qd_cuda_sync(r->cuda, &ignore);
    return rc;
}

/* The CUDA context of the run's kernel table, when the layers can run there. */
static struct qd_cuda *run_device(const qd_calib_opts *o) {
    const qd_kernels *t = o->run.kernels;
    if (!t || t->kind != QD_BACKEND_CUDA || o->run.use_ref || o->run.on_linear_input)
        return NULL;
    return (struct qd_cuda *)t->ctx;
}
#endif

qd_err qd_calib_run(const qd_model *m, const int32_t *tokens, int64_t n_seq, int64_t seq_len,
                    const qd_calib_opts *o, const qd_calib_callbacks *cb, qd_error *err) {
    static const qd_calib_opts default_opts;
    if (!o) o = &default_opts;
    qd_err rc = qd_model_check_tokens(m, tokens, n_seq, seq_len, err);
    if (rc) return rc;
    const qd_llama_config *c = qd_model_config(m);
    int n_layers = c->num_hidden_layers;
    if (o->n_layers > 0 && o->n_layers < n_layers) n_layers = o->n_layers;
    struct run r = {.m = m, .o = o, .cb = cb, .n_seq = n_seq, .seq_len = seq_len,
                    .T = n_seq * seq_len};
    bool original = o->propagate == QD_CALIB_PROPAGATE_ORIGINAL;
    struct layer_bufs b;

    r.x = malloc((size_t)(r.T * c->hidden_size) * sizeof(float));
    if (!r.x)
        return qd_error_set(err, QD_ERR_NOMEM, "calibration: no memory for %lld hidden states",
                            (long long)r.T);
    if ((rc = qd_model_embed(m, tokens, r.T, r.x, err))) goto done_x;
#ifdef QD_HAVE_CUDA
    struct dev_run D = {0};
    r.cuda = run_device(o);
    if (r.cuda) {
        /* activations that do not fit on the device: the layers run on the host, the
         * kernel table still puts each op on the device */
        qd_error why = {0};
        rc = dev_alloc(&r, original, &D, &why);
        if (rc == QD_OK) {
            rc = qd_cuda_upload(r.cuda, D.x, r.x,
                                (size_t)(r.T * c->hidden_size) * sizeof(float), err);
        } else if (rc == QD_ERR_NOMEM) {
            r.cuda = NULL;
            rc = QD_OK;
        } else if (err) {
            *err = why;
        }
        if (rc) goto done_dev;
    }
#endif
    if ((rc = alloc_bufs(m, r.T, original, r.cuda != NULL, &b, err))) goto done_dev;

    for (int l = 0; l < n_layers && !rc; l++) {
        qd_layer_weights w;
        if ((rc = qd_layer_weights_load(m, l, &w, err))) break;
        if (o->run.on_weights) rc = o->run.on_weights(o->run.hook_ctx, &w, err);
        if (!rc && cb && cb->layer_begin) rc = cb->layer_begin(cb->ctx, &w, r.x, r.T, err);
#ifdef QD_HAVE_CUDA
        if (!rc && r.cuda)
            rc = layer_dev(&r, &D, original, &w, &b, err);
        else
#endif
        if (!rc) rc = original ? layer_original(&r, &w, &b, err) : layer_modified(&r, &w, &b, err);
        if (!rc && cb && cb->layer_end) rc = cb->layer_end(cb->ctx, &w, r.x, r.T, err);
        qd_layer_weights_done(&w);
        if (rc) {
            qd_error_prefix(err, "layer %d ", l);
            break;
        }
        if (o->run.on_progress && o->run.on_progress(o->run.progress_ctx, l + 1, n_layers))
            rc = qd_error_set(err, QD_ERR_CANCELLED, "calibration cancelled after layer %d",
                              l + 1);
    }
    free_bufs(&b);
done_dev:
#ifdef QD_HAVE_CUDA
    dev_free(&D);
#endif
done_x:
    free(r.x);
    return rc;
}

/* ---- statistics ---- */

qd_err qd_act_stats_init(qd_act_stats *s, int64_t n_in, qd_error *err) {
    memset(s, 0, sizeof *s);
    if (n_in <= 0)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "activation statistics of %lld channels",
                            (long long)n_in);
    s->sum_abs = calloc((size_t)n_in, sizeof *s->sum_abs);
    s->max_abs = calloc((size_t)n_in, sizeof *s->max_abs);
    if (!s->sum_abs || !s->max_abs) {
        qd_act_stats_done(s);
        return qd_error_set(err, QD_ERR_NOMEM, "no memory for statistics of %lld channels",
                            (long long)n_in);
    }
    s->n_in = n_in;
    return QD_OK;
}

void qd_act_stats_done(qd_act_stats *s) {
    if (!s) return;
    free(s->sum_abs);
    free(s->max_abs);
    memset(s, 0, sizeof *s);
}

void qd_act_stats_add(qd_act_stats *s, const float *x, int64_t n_tok) {
    for (int64_t t = 0; t < n_tok; t++) {
        const float *xt = x + t * s->n_in;
        for (int64_t i = 0; i < s->n_in; i++) {
            float a = fabsf(xt[i]);
            s->sum_abs[i] += a;
            if (a > s->max_abs[i]) s->max_abs[i] = a;
        }
    }
    s->n_tok += n_tok;
}

void qd_act_stats_mean_abs(const qd_act_stats *s, float *ret_mean) {
    for (int64_t i = 0; i < s->n_in; i++)
        ret_mean[i] = s->n_tok > 0 ? (float)(s->sum_abs[i] / (double)s->n_tok) : 0.0f;
}

void qd_calib_xtx_add(float *h, const float *x, int64_t n_tok, int64_t n_in,
                      const qd_run_opts *o) {
    const qd_kernels *t = o ? o->kernels : NULL;
    qd_error ignore = {0};
    /* a failing table entry (a device error) leaves h as it was: redo it on the cpu */
    if (t && t->xtx_accum && t->xtx_accum(t->ctx, h, x, n_tok, n_in, &ignore) == QD_OK) return;
    if (t && t->xtx_accum)
        qd_xtx_accum_cpu(h, x, n_tok, n_in);
    else if (o && o->use_ref)
        qd_xtx_accum_ref(h, x, n_tok, n_in);
    else
        qd_xtx_accum_cpu(h, x, n_tok, n_in);
}
