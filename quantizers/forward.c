/*
 * forward.c - the Llama-family forward pass (CPU, or a kernel table): blocks, layers, logits, NLL.
 *
 * DESIGN
 * Layer-major over the whole batch (see model.h): run_layers() keeps X [T, hidden] and, per
 * layer, materialises the fp32 weights, lets the hook see them, runs qd_layer_forward() and
 * frees them. Inside a layer the work is cut into chunks of whole sequences of about
 * QD_FWD_CHUNK_TOKENS tokens (every op of a decoder layer is independent across sequences), so
 * a layer's activations cost O(chunk) memory beyond X however large the batch is; the MLP is
 * chunked the same way over tokens. The chunks are large enough that each GEMM still has
 * thousands of rows.
 *
 * The head (final norm, lm_head, log-softmax) walks the vocabulary in slices of at most
 * QD_HEAD_SLICE_ELEMS weights converted to fp32, and tokens in chunks, so its scratch is
 * bounded too. Log-sum-exp is merged across slices online, in double:
 *   m' = max(m, max_slice), s' = s * exp(m - m') + sum_slice exp(l - m').
 *
 * Kernels: o->kernels (a backend table, kernels/backend.h) runs the ops it has; without one,
 * o->use_ref picks kernels/ref, otherwise kernels/cpu (OpenBLAS + pthreads). The table takes
 * host memory: with CUDA's every op stages its operands to the device and back, so the
 * activations stay on the host between ops (docs/cuda.md says what a device-resident runtime
 * would gain). Every op of the table can fail (a device error, device memory); the failure
 * stops the pass and is returned.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model_internal.h"
#include "ops.h"

#define QD_HEAD_SLICE_ELEMS ((int64_t)16 << 20) /* lm_head values per fp32 slice (64 MiB) */
#define QD_HEAD_TOKEN_CHUNK 512

static const qd_run_opts default_opts;

static const qd_run_opts *opts_or_default(const qd_run_opts *o) {
    return o ? o : &default_opts;
}

/* ---- kernel dispatch ----
 * o->kernels (a backend table, e.g. CUDA's) first, where it has the op; otherwise exactly the
 * calls made before the table existed, so a CPU run is bit-identical with or without it. */

static const qd_kernels *table_of(const qd_run_opts *o) {
    return o->kernels;
}

static qd_err k_matmul(const qd_run_opts *o, float *y, const float *x, const float *w,
                       const float *b, int64_t m, int64_t n, int64_t k, qd_error *err) {
    const qd_kernels *t = table_of(o);
    if (t && t->matmul) return t->matmul(t->ctx, y, x, w, b, m, n, k, err);
    if (o->use_ref)
        qd_matmul_ref(y, x, w, b, m, n, k);
    else
        qd_matmul_cpu(y, x, w, b, m, n, k);
    return QD_OK;
}

static qd_err k_rmsnorm(const qd_run_opts *o, float *y, const float *x, const float *w,
                        int64_t n, int64_t d, double eps, qd_error *err) {
    const qd_kernels *t = table_of(o);
    if (t && t->rmsnorm) return t->rmsnorm(t->ctx, y, x, w, n, d, eps, err);
    if (o->use_ref)
        qd_rmsnorm_ref(y, x, w, n, d, eps);
    else
        qd_rmsnorm_cpu(y, x, w, n, d, eps);
    return QD_OK;
}

static qd_err k_rope(const qd_run_opts *o, float *x, int64_t n_tok, int64_t stride,
                     int64_t seq_len, int n_heads, int head_dim, const float *cos_t,
                     const float *sin_t, qd_error *err) {
    const qd_kernels *t = table_of(o);
    if (t && t->rope_apply)
        return t->rope_apply(t->ctx, x, n_tok, stride, seq_len, n_heads, head_dim, cos_t, sin_t,
                             err);
    if (o->use_ref)
        qd_rope_apply_ref(x, n_tok, stride, seq_len, n_heads, head_dim, cos_t, sin_t);
    else
        qd_rope_apply_cpu(x, n_tok, stride, seq_len, n_heads, head_dim, cos_t, sin_t);
    return QD_OK;
}

static qd_err k_attention(const qd_run_opts *o, float *out, const float *q, const float *k,
                          const float *v, int64_t n_seq, int64_t seq_len, int n_heads,
                          int n_kv_heads, int head_dim, qd_error *err) {
    const qd_kernels *t = table_of(o);
    if (t && t->attention)
        return t->attention(t->ctx, out, q, k, v, n_seq, seq_len, n_heads, n_kv_heads,
                            head_dim, err);
    if (o->use_ref)
        return qd_attention_ref(out, q, k, v, n_seq, seq_len, n_heads, n_kv_heads, head_dim,
                                err);
    return qd_attention_cpu(out, q, k, v, n_seq, seq_len, n_heads, n_kv_heads, head_dim, err);
}

static qd_err k_silu_mul(const qd_run_opts *o, float *out, const float *gate, const float *up,
                         int64_t n, qd_error *err) {
    const qd_kernels *t = table_of(o);
    if (t && t->silu_mul) return t->silu_mul(t->ctx, out, gate, up, n, err);
    if (o->use_ref)
        qd_silu_mul_ref(out, gate, up, n);
    else
        qd_silu_mul_cpu(out, gate, up, n);
    return QD_OK;
}

static void *alloc_floats(int64_t n) {
    return malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
}

static qd_err nomem(qd_error *err, const char *what, int64_t n) {
    return qd_error_set(err, QD_ERR_NOMEM, "forward pass: no memory for %s (%lld floats)", what,
                        (long long)n);
}

/* ---- blocks ---- */

qd_err qd_linear_forward_ex(const qd_layer_weights *w, qd_linear_kind k, const float *x,
                            int64_t n_tok, float *y, const qd_run_opts *o, qd_error *err) {
    return k_matmul(opts_or_default(o), y, x, w->w[k], w->b[k], n_tok, w->n_out[k], w->n_in[k],
                    err);
}

/* The void forms cannot report a device failure: they redo the op with the cpu kernel, so
 * their result is right either way (the caller's next fallible call sees a broken device). */
void qd_linear_forward(const qd_layer_weights *w, qd_linear_kind k, const float *x,
                       int64_t n_tok, float *y, const qd_run_opts *o) {
    qd_error ignore = {0};
    if (qd_linear_forward_ex(w, k, x, n_tok, y, o, &ignore) != QD_OK)
        qd_matmul_cpu(y, x, w->w[k], w->b[k], n_tok, w->n_out[k], w->n_in[k]);
}

qd_err qd_model_rmsnorm_ex(const qd_model *m, const float *x, const float *weight,
                           int64_t n_tok, float *y, const qd_run_opts *o, qd_error *err) {
    return k_rmsnorm(opts_or_default(o), y, x, weight, n_tok, m->cfg.hidden_size,
                     m->cfg.rms_norm_eps, err);
}

void qd_model_rmsnorm(const qd_model *m, const float *x, const float *weight, int64_t n_tok,
                      float *y, const qd_run_opts *o) {
    qd_error ignore = {0};
    if (qd_model_rmsnorm_ex(m, x, weight, n_tok, y, o, &ignore) != QD_OK)
        qd_rmsnorm_cpu(y, x, weight, n_tok, m->cfg.hidden_size, m->cfg.rms_norm_eps);
}

/* The activation hook of qd_run_opts, if any, on a linear group's input. */
static qd_err input_hook(const qd_run_opts *o, const qd_layer_weights *w, qd_linear_kind kind,
                         float *x, int64_t n_tok, int64_t n_in, qd_error *err) {
    if (!o->on_linear_input) return QD_OK;
    return o->on_linear_input(o->linear_input_ctx, w->layer, kind, x, n_tok, n_in, err);
}

/* Attention block on n_seq whole sequences; scratch sized by the caller's chunk. */
static qd_err attention_chunk(const qd_model *m, const qd_layer_weights *w, const float *xn,
                              int64_t n_seq, int64_t seq_len, float *y, float *attn_out,
                              const float *cos_t, const float *sin_t, float *scratch,
                              const qd_run_opts *o, qd_error *err) {
    const qd_llama_config *c = &m->cfg;
    int64_t T = n_seq * seq_len;
    int64_t qdim = (int64_t)c->num_attention_heads * c->head_dim;
    int64_t kvdim = (int64_t)c->num_key_value_heads * c->head_dim;
    float *q = scratch;          /* [T, qdim] */
    float *k = q + T * qdim;     /* [T, kvdim] */
    float *v = k + T * kvdim;    /* [T, kvdim] */
    float *att = attn_out ? attn_out : v + T * kvdim; /* [T, qdim] */

    qd_err rc;
    if ((rc = k_matmul(o, q, xn, w->w[QD_LINEAR_Q], w->b[QD_LINEAR_Q], T, qdim, c->hidden_size,
                       err)) ||
        (rc = k_matmul(o, k, xn, w->w[QD_LINEAR_K], w->b[QD_LINEAR_K], T, kvdim,
                       c->hidden_size, err)) ||
        (rc = k_matmul(o, v, xn, w->w[QD_LINEAR_V], w->b[QD_LINEAR_V], T, kvdim,
                       c->hidden_size, err)) ||
        (rc = k_rope(o, q, T, qdim, seq_len, c->num_attention_heads, c->head_dim, cos_t, sin_t,
                     err)) ||
        (rc = k_rope(o, k, T, kvdim, seq_len, c->num_key_value_heads, c->head_dim, cos_t,
                     sin_t, err)) ||
        (rc = k_attention(o, att, q, k, v, n_seq, seq_len, c->num_attention_heads,
                          c->num_key_value_heads, c->head_dim, err)))
        return rc;
    if (y) {
        if ((rc = input_hook(o, w, QD_LINEAR_O, att, T, qdim, err))) return rc;
        rc = k_matmul(o, y, att, w->w[QD_LINEAR_O], w->b[QD_LINEAR_O], T, c->hidden_size, qdim,
                      err);
    }
    return rc;
}

/* cos/sin tables for positions 0..seq_len-1: one allocation, [2, seq_len, head_dim/2]. */
static qd_err rope_tables(const qd_model *m, int64_t seq_len, float **ret, qd_error *err) {
    int half = m->cfg.head_dim / 2;
    float *t = alloc_floats(2 * seq_len * half);
    if (!t) return nomem(err, "rotary tables", 2 * seq_len * half);
    qd_rope_table_ref(t, t + seq_len * half, seq_len, half, m->inv_freq);
    *ret = t;
    return QD_OK;
}

qd_err qd_block_attention_ex(const qd_model *m, const qd_layer_weights *w, const float *xn,
                             int64_t n_seq, int64_t seq_len, float *y, float *attn_out,
                             const qd_run_opts *o, qd_error *err) {
    o = opts_or_default(o);
    const qd_llama_config *c = &m->cfg;
    if (seq_len <= 0 || seq_len > c->max_position_embeddings)
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "sequence length %lld outside 1..max_position_embeddings (%d)",
                            (long long)seq_len, c->max_position_embeddings);
    int64_t half = c->head_dim / 2;
    int64_t hid = c->hidden_size;
    int64_t qdim = (int64_t)c->num_attention_heads * c->head_dim;
    int64_t kvdim = (int64_t)c->num_key_value_heads * c->head_dim;
    int64_t per_chunk = qd_fwd_seqs_per_chunk(seq_len);
    if (per_chunk > n_seq) per_chunk = n_seq;
    int64_t ct = per_chunk * seq_len;
    float *tabs = NULL;
    qd_err rc = rope_tables(m, seq_len, &tabs, err);
    if (rc) return rc;
    int64_t n_scratch = ct * (2 * qdim + 2 * kvdim);
    float *scratch = alloc_floats(n_scratch);
    if (!scratch) {
        free(tabs);
        return nomem(err, "attention activations", n_scratch);
    }
    for (int64_t s0 = 0; s0 < n_seq && !rc; s0 += per_chunk) {
        int64_t ns = n_seq - s0 < per_chunk ? n_seq - s0 : per_chunk;
        int64_t t0 = s0 * seq_len;
        rc = attention_chunk(m, w, xn + t0 * hid, ns, seq_len, y ? y + t0 * hid : NULL,
                             attn_out ? attn_out + t0 * qdim : NULL, tabs,
                             tabs + seq_len * half, scratch, o, err);
    }
    free(scratch);
    free(tabs);
    return rc;
}

qd_err qd_block_attention(const qd_model *m, const qd_layer_weights *w, const float *xn,
                          int64_t n_seq, int64_t seq_len, float *y, float *attn_out,
                          const qd_run_opts *o, qd_error *err) {
    if (!y) return qd_error_set(err, QD_ERR_INVALID_ARG, "attention block: no output buffer");
    return qd_block_attention_ex(m, w, xn, n_seq, seq_len, y, attn_out, o, err);
}

qd_err qd_block_mlp_ex(const qd_model *m, const qd_layer_weights *w, const float *xn,
                       int64_t n_tok, float *y, float *act, const qd_run_opts *o,
                       qd_error *err) {
    o = opts_or_default(o);
    int64_t hid = m->cfg.hidden_size, inter = m->cfg.intermediate_size;
    int64_t chunk = n_tok < QD_FWD_CHUNK_TOKENS ? n_tok : QD_FWD_CHUNK_TOKENS;
    float *gate = alloc_floats(2 * chunk * inter); /* gate [chunk, inter], up [chunk, inter] */
    if (!gate) return nomem(err, "MLP activations", 2 * chunk * inter);
    float *up = gate + chunk * inter;
    for (int64_t t0 = 0; t0 < n_tok; t0 += chunk) {
        int64_t nt = n_tok - t0 < chunk ? n_tok - t0 : chunk;
        const float *x = xn + t0 * hid;
        float *a = act ? act + t0 * inter : gate; /* silu(gate) * up, written over gate */
        qd_err rc;
        if ((rc = k_matmul(o, gate, x, w->w[QD_LINEAR_GATE], w->b[QD_LINEAR_GATE], nt, inter,
                           hid, err)) ||
            (rc = k_matmul(o, up, x, w->w[QD_LINEAR_UP], w->b[QD_LINEAR_UP], nt, inter, hid,
                           err)) ||
            (rc = k_silu_mul(o, a, gate, up, nt * inter, err)) ||
            (y && ((rc = input_hook(o, w, QD_LINEAR_DOWN, a, nt, inter, err)) ||
                   (rc = k_matmul(o, y + t0 * hid, a, w->w[QD_LINEAR_DOWN],
                                  w->b[QD_LINEAR_DOWN], nt, hid, inter, err))))) {
            free(gate);
            return rc;
        }
    }
    free(gate);
    return QD_OK;
}

qd_err qd_block_mlp(const qd_model *m, const qd_layer_weights *w, const float *xn,
                    int64_t n_tok, float *y, float *act, const qd_run_opts *o, qd_error *err) {
    if (!y) return qd_error_set(err, QD_ERR_INVALID_ARG, "MLP block: no output buffer");
    return qd_block_mlp_ex(m, w, xn, n_tok, y, act, o, err);
}

qd_err qd_layer_forward(const qd_model *m, const qd_layer_weights *w, const float *x_in,
                        float *x_out, int64_t n_seq, int64_t seq_len, const qd_run_opts *o,
                        qd_error *err) {
    o = opts_or_default(o);
    int64_t hid = m->cfg.hidden_size;
    int64_t per_chunk = qd_fwd_seqs_per_chunk(seq_len);
    if (per_chunk > n_seq) per_chunk = n_seq;
    int64_t ct = per_chunk * seq_len;
    float *xn = alloc_floats(2 * ct * hid); /* normalised input [ct, hid], block output */
    if (!xn) return nomem(err, "layer activations", 2 * ct * hid);
    float *y = xn + ct * hid;
    qd_err rc = QD_OK;
    for (int64_t s0 = 0; s0 < n_seq && !rc; s0 += per_chunk) {
        int64_t ns = n_seq - s0 < per_chunk ? n_seq - s0 : per_chunk;
        int64_t nt = ns * seq_len;
        const float *xi = x_in + s0 * seq_len * hid;
        float *xo = x_out + s0 * seq_len * hid;
        if ((rc = k_rmsnorm(o, xn, xi, w->attn_norm, nt, hid, m->cfg.rms_norm_eps, err)))
            break;
        if ((rc = input_hook(o, w, QD_LINEAR_Q, xn, nt, hid, err))) break;
        rc = qd_block_attention_ex(m, w, xn, ns, seq_len, y, NULL, o, err);
        if (rc) break;
        for (int64_t i = 0; i < nt * hid; i++) xo[i] = xi[i] + y[i]; /* h */
        if ((rc = k_rmsnorm(o, xn, xo, w->mlp_norm, nt, hid, m->cfg.rms_norm_eps, err)))
            break;
        if ((rc = input_hook(o, w, QD_LINEAR_GATE, xn, nt, hid, err))) break;
        rc = qd_block_mlp_ex(m, w, xn, nt, y, NULL, o, err);
        if (rc) break;
        for (int64_t i = 0; i < nt * hid; i++) xo[i] += y[i];
    }
    free(xn);
    return rc;
}

/* ---- whole model ---- */

static qd_err progress(const qd_run_opts *o, int layer, int n_layers, qd_error *err) {
    if (o->on_progress && o->on_progress(o->progress_ctx, layer, n_layers))
        return qd_error_set(err, QD_ERR_CANCELLED, "cancelled after layer %d of %d", layer,
                            n_layers);
    return QD_OK;
}

/* Embed tokens and run every decoder layer. On success *ret_x is X [T, hidden] after the last
 * layer (before the final norm); the caller frees it. */
static qd_err run_layers(const qd_model *m, const int32_t *tokens, int64_t n_seq,
                         int64_t seq_len, const qd_run_opts *o, float **ret_x, qd_error *err) {
    qd_err rc = qd_model_check_tokens(m, tokens, n_seq, seq_len, err);
    if (rc) return rc;
    int64_t T = n_seq * seq_len;
    float *x = alloc_floats(T * m->cfg.hidden_size); /* [T, hidden] */
    if (!x) return nomem(err, "the hidden state", T * m->cfg.hidden_size);
    if ((rc = qd_model_embed(m, tokens, T, x, err))) goto fail;
    int n_layers = m->cfg.num_hidden_layers;
    for (int l = 0; l < n_layers; l++) {
        qd_layer_weights w;
        if ((rc = qd_layer_weights_load(m, l, &w, err))) goto fail;
        if (o->on_weights) rc = o->on_weights(o->hook_ctx, &w, err);
        if (!rc) rc = qd_layer_forward(m, &w, x, x, n_seq, seq_len, o, err);
        qd_layer_weights_done(&w);
        if (rc) {
            qd_error_prefix(err, "layer %d: ", l);
            goto fail;
        }
        if ((rc = progress(o, l + 1, n_layers, err))) goto fail;
    }
    *ret_x = x;
    return QD_OK;
fail:
    free(x);
    return rc;
}

/* What to do with each [n_tok, n_voc] block of logits (tokens t0.., vocabulary v0..). */
struct head_sink {
    void (*fn)(struct head_sink *s, const float *logits, int64_t t0, int64_t n_tok, int64_t v0,
               int64_t n_voc);
};

/* Final norm in place on x [T, hidden], then stream logits blocks to the sink. */
static qd_err run_head(const qd_model *m, float *x, int64_t T, const qd_run_opts *o,
                       struct head_sink *sink, qd_error *err) {
    int64_t hid = m->cfg.hidden_size, vocab = m->cfg.vocab_size;
    float *norm_w = alloc_floats(hid);
    if (!norm_w) return nomem(err, "the final norm", hid);
    qd_err rc = qd_model_rows_f32(m->final_norm, 0, 1, norm_w, err);
    if (rc) {
        free(norm_w);
        return rc;
    }
    rc = k_rmsnorm(o, x, x, norm_w, T, hid, m->cfg.rms_norm_eps, err);
    free(norm_w);
    if (rc) return rc;

    int64_t slice = o->head_slice_rows > 0 ? o->head_slice_rows : QD_HEAD_SLICE_ELEMS / hid;
    if (slice < 1) slice = 1;
    if (slice > vocab) slice = vocab;
    int64_t tchunk = T < QD_HEAD_TOKEN_CHUNK ? T : QD_HEAD_TOKEN_CHUNK;
    float *wbuf = alloc_floats(slice * hid);        /* lm_head rows [slice, hid] */
    float *logits = alloc_floats(tchunk * slice);   /* [tchunk, slice] */
    if (!wbuf || !logits) {
        free(wbuf);
        free(logits);
        return nomem(err, "the vocabulary projection", slice * (hid + tchunk));
    }
    for (int64_t v0 = 0; v0 < vocab && !rc; v0 += slice) {
        int64_t nv = vocab - v0 < slice ? vocab - v0 : slice;
        if ((rc = qd_model_rows_f32(m->lm_head, v0, nv, wbuf, err))) break;
        size_t esz = qd_dtype_size(m->lm_head->dtype);
        qd_model_release_pages((const unsigned char *)m->lm_head->data + (size_t)(v0 * hid) * esz,
                               (size_t)(nv * hid) * esz);
        for (int64_t t0 = 0; t0 < T; t0 += tchunk) {
            int64_t nt = T - t0 < tchunk ? T - t0 : tchunk;
            if ((rc = k_matmul(o, logits, x + t0 * hid, wbuf, NULL, nt, nv, hid, err))) break;
            sink->fn(sink, logits, t0, nt, v0, nv);
        }
    }
    free(wbuf);
    free(logits);
    return rc;
}

struct logits_sink {
    struct head_sink base;
    float *out; /* [T, vocab] */
    int64_t vocab;
};

static void logits_copy(struct head_sink *s, const float *logits, int64_t t0, int64_t n_tok,
                        int64_t v0, int64_t n_voc) {
    struct logits_sink *ls = (struct logits_sink *)s;
    for (int64_t t = 0; t < n_tok; t++)
        memcpy(ls->out + (t0 + t) * ls->vocab + v0, logits + t * n_voc,
               (size_t)n_voc * sizeof(float));
}

qd_err qd_model_logits(const qd_model *m, const int32_t *tokens, int64_t n_seq,
                       int64_t seq_len, const qd_run_opts *o, float *logits, qd_error *err) {
    o = opts_or_default(o);
    float *x = NULL;
    qd_err rc = run_layers(m, tokens, n_seq, seq_len, o, &x, err);
    if (rc) return rc;
    struct logits_sink sink = {{logits_copy}, logits, m->cfg.vocab_size};
    rc = run_head(m, x, n_seq * seq_len, o, &sink.base, err);
    free(x);
    if (!rc) rc = progress(o, m->cfg.num_hidden_layers, m->cfg.num_hidden_layers, err);
    return rc;
}

/* Online log-sum-exp per token, and the logit of the token that follows it. */
struct nll_sink {
    struct head_sink base;
    const int32_t *tokens; /* [T] */
    int64_t seq_len;
    double *mx, *sum, *target; /* [T] each */
    /* the block being merged (set per call, read by the worker threads) */
    const float *logits;
    int64_t t0, v0, n_voc;
};

static void nll_rows(void *arg, int64_t begin, int64_t end) {
    struct nll_sink *ns = arg;
    int64_t n_voc = ns->n_voc, v0 = ns->v0;
    for (int64_t t = begin; t < end; t++) {
        int64_t tok = ns->t0 + t;
        if (tok % ns->seq_len == ns->seq_len - 1) continue; /* last position predicts nothing */
        const float *l = ns->logits + t * n_voc;
        float smax = l[0];
        for (int64_t j = 1; j < n_voc; j++) smax = l[j] > smax ? l[j] : smax;
        double acc = 0.0;
        for (int64_t j = 0; j < n_voc; j++) acc += exp((double)l[j] - smax);
        double m_old = ns->mx[tok];
        if (smax > m_old) {
            ns->sum[tok] = ns->sum[tok] * exp(m_old - smax) + acc;
            ns->mx[tok] = smax;
        } else {
            ns->sum[tok] += acc * exp((double)smax - m_old);
        }
        int64_t next = ns->tokens[tok + 1];
        if (next >= v0 && next < v0 + n_voc) ns->target[tok] = l[next - v0];
    }
}

static void nll_accum(struct head_sink *s, const float *logits, int64_t t0, int64_t n_tok,
                      int64_t v0, int64_t n_voc) {
    struct nll_sink *ns = (struct nll_sink *)s;
    ns->logits = logits;
    ns->t0 = t0;
    ns->v0 = v0;
    ns->n_voc = n_voc;
    /* each token's state is touched by one thread only; the exp()s dominate for big
     * vocabularies, so they are spread over the cores */
    int threads = n_tok * n_voc < 65536 ? 1 : 0;
    qd_cpu_parallel_for(threads, n_tok, nll_rows, ns);
}

qd_err qd_model_nll(const qd_model *m, const int32_t *tokens, int64_t n_seq, int64_t seq_len,
                    const qd_run_opts *o, double *ret_nll, qd_error *err) {
    o = opts_or_default(o);
    int64_t T = n_seq * seq_len;
    float *x = NULL;
    qd_err rc = run_layers(m, tokens, n_seq, seq_len, o, &x, err);
    if (rc) return rc;
    double *state = malloc((size_t)(3 * T) * sizeof *state);
    if (!state) {
        free(x);
        return qd_error_set(err, QD_ERR_NOMEM, "no memory for the NLL of %lld tokens",
                            (long long)T);
    }
    struct nll_sink sink = {.base = {nll_accum}, .tokens = tokens, .seq_len = seq_len,
                            .mx = state, .sum = state + T, .target = state + 2 * T};
    for (int64_t t = 0; t < T; t++) {
        sink.mx[t] = -INFINITY;
        sink.sum[t] = 0.0;
        sink.target[t] = 0.0;
    }
    rc = run_head(m, x, T, o, &sink.base, err);
    free(x);
    if (!rc) {
        for (int64_t s = 0; s < n_seq; s++) {
            double acc = 0.0;
            for (int64_t i = 0; i + 1 < seq_len; i++) {
                int64_t t = s * seq_len + i;
                acc += sink.mx[t] + log(sink.sum[t]) - sink.target[t];
            }
            ret_nll[s] = acc;
        }
        rc = progress(o, m->cfg.num_hidden_layers, m->cfg.num_hidden_layers, err);
    }
    free(state);
    return rc;
}
