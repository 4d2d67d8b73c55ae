/*
 * test-model.c - the model runtime on the bundled models: sharded copies give identical
 * logits, NLL equals the log-softmax of the logits (also across vocabulary slices), reference
 * vs cpu kernels, the weight hook, and clean errors on bad models and bad tokens.
 * (Perplexities against the reference values are in test-perplexity.c.)
 */
#include <stdlib.h>
#include <string.h>

#include "fsutil.h"
#include "model.h"
#include "rt-model.h"
#include "rt-util.h"
#include "test.h"

#define BABY QD_SOURCE_DIR "/examples/models/babyllama"
#define BABY_EVAL QD_SOURCE_DIR "/examples/data/babyllama/eval.safetensors"
#define STORIES QD_SOURCE_DIR "/examples/models/stories260k"
#define STORIES_EVAL QD_SOURCE_DIR "/examples/data/stories260k/eval.safetensors"

/* The first n_rows rows of the eval set, cut to len tokens each. */
static int32_t *eval_prefix(const char *data, int64_t n_rows, int64_t len) {
    qd_error err = {0};
    int32_t *tok = NULL, *out = NULL;
    int64_t rows, full;
    if (rt_load_tokens(data, &tok, &rows, &full, &err)) return NULL;
    if (rows >= n_rows && full >= len && (out = malloc((size_t)(n_rows * len) * 4)))
        for (int64_t r = 0; r < n_rows; r++)
            memcpy(out + r * len, tok + r * full, (size_t)len * 4);
    free(tok);
    return out;
}

static float *logits_of(const char *dir, const int32_t *tok, int64_t rows, int64_t len,
                        const qd_run_opts *o, qd_error *err) {
    qd_model *m = NULL;
    if (qd_model_open(dir, &m, err)) return NULL;
    int64_t vocab = qd_model_config(m)->vocab_size;
    float *lg = malloc((size_t)(rows * len * vocab) * sizeof *lg);
    if (lg && qd_model_logits(m, tok, rows, len, o, lg, err)) {
        free(lg);
        lg = NULL;
    }
    qd_model_free(m);
    return lg;
}

QD_TEST(one_file_and_three_shards_give_identical_logits) {
    enum { ROWS = 3, LEN = 64, VOCAB = 105 };
    qd_error err = {0};
    char one[64], three[64];
    QD_REQUIRE(rt_make_tmpdir("one", one, sizeof one, &err) == QD_OK);
    QD_REQUIRE(rt_make_tmpdir("three", three, sizeof three, &err) == QD_OK);
    rt_copy_opts o1 = {.dtype = QD_DTYPE_COUNT, .n_shards = 1};
    rt_copy_opts o3 = {.dtype = QD_DTYPE_COUNT, .n_shards = 3};
    QD_CHECK_OK(rt_copy_model(BABY, one, &o1, &err), &err);
    QD_CHECK_OK(rt_copy_model(BABY, three, &o3, &err), &err);
    char idx[128];
    snprintf(idx, sizeof idx, "%s/model.safetensors.index.json", three);
    QD_CHECK(qd_is_file(idx));
    int32_t *tok = eval_prefix(BABY_EVAL, ROWS, LEN);
    QD_REQUIRE(tok);
    float *a = logits_of(one, tok, ROWS, LEN, NULL, &err);
    float *b = logits_of(three, tok, ROWS, LEN, NULL, &err);
    QD_CHECK_MSG(a && b, "%s", qd_error_text(&err));
    if (a && b) QD_CHECK(memcmp(a, b, sizeof(float) * ROWS * LEN * VOCAB) == 0);
    free(a);
    free(b);
    free(tok);
    qd_remove_tree(one, NULL);
    qd_remove_tree(three, NULL);
}

QD_TEST(nll_equals_log_softmax_of_logits) {
    enum { ROWS = 2, LEN = 50 };
    qd_error err = {0};
    int32_t *tok = eval_prefix(STORIES_EVAL, ROWS, LEN);
    QD_REQUIRE(tok);
    qd_model *m = NULL;
    QD_REQUIRE(qd_model_open(STORIES, &m, &err) == QD_OK);
    int64_t V = qd_model_config(m)->vocab_size;
    float *lg = malloc(sizeof(float) * ROWS * LEN * (size_t)V);
    QD_REQUIRE(lg);
    QD_CHECK_OK(qd_model_logits(m, tok, ROWS, LEN, NULL, lg, &err), &err);
    double want[ROWS] = {0};
    for (int r = 0; r < ROWS; r++)
        for (int i = 0; i + 1 < LEN; i++) {
            const float *l = lg + ((int64_t)r * LEN + i) * V;
            double mx = l[0], s = 0;
            for (int64_t j = 1; j < V; j++) mx = l[j] > mx ? l[j] : mx;
            for (int64_t j = 0; j < V; j++) s += exp(l[j] - mx);
            want[r] += mx + log(s) - l[tok[r * LEN + i + 1]];
        }
    /* one slice of the vocabulary, and 512 = 73 slices of 7 rows + 1: the online
     * log-sum-exp must merge slices exactly */
    int64_t slices[2] = {0, 7};
    for (int k = 0; k < 2; k++) {
        qd_run_opts o = {.head_slice_rows = slices[k]};
        double got[ROWS];
        QD_CHECK_OK(qd_model_nll(m, tok, ROWS, LEN, &o, got, &err), &err);
        for (int r = 0; r < ROWS; r++) QD_CHECK_NEAR(got[r], want[r], 1e-5 * want[r]);
    }
    free(lg);
    free(tok);
    qd_model_free(m);
}

QD_TEST(reference_kernels_agree_with_cpu) {
    enum { ROWS = 2, LEN = 40, VOCAB = 105 };
    qd_error err = {0};
    int32_t *tok = eval_prefix(BABY_EVAL, ROWS, LEN);
    QD_REQUIRE(tok);
    qd_run_opts ref = {.use_ref = true};
    float *a = logits_of(BABY, tok, ROWS, LEN, NULL, &err);
    float *b = logits_of(BABY, tok, ROWS, LEN, &ref, &err);
    QD_REQUIRE(a && b);
    double d = rt_max_abs_diff(a, b, ROWS * LEN * VOCAB);
    QD_CHECK_MSG(d <= 1e-4 * rt_max_abs(b, ROWS * LEN * VOCAB), "cpu vs ref logits: %g", d);
    free(a);
    free(b);
    free(tok);
}

/* Weight hook: zero o_proj and down_proj, so every layer adds nothing to the residual stream
 * and the logits are lm_head(norm(embedding)), which this test computes on its own. */
struct hook_log {
    int calls, order_ok;
};

static qd_err zero_block_outputs(void *ctx, qd_layer_weights *w, qd_error *err) {
    struct hook_log *h = ctx;
    h->order_ok += w->layer == h->calls;
    h->calls++;
    memset(w->w[QD_LINEAR_O], 0, sizeof(float) * (size_t)(w->n_out[QD_LINEAR_O] *
                                                           w->n_in[QD_LINEAR_O]));
    memset(w->w[QD_LINEAR_DOWN], 0, sizeof(float) * (size_t)(w->n_out[QD_LINEAR_DOWN] *
                                                              w->n_in[QD_LINEAR_DOWN]));
    return QD_OK;
}

static qd_err failing_hook(void *ctx, qd_layer_weights *w, qd_error *err) {
    (void)ctx;
    if (w->layer == 2) return qd_error_set(err, QD_ERR_CANCELLED, "hook says stop");
    return QD_OK;
}

QD_TEST(weight_hook_replaces_weights) {
    enum { LEN = 9, H = 128, V = 105 };
    qd_error err = {0};
    qd_model *m = NULL;
    QD_REQUIRE(qd_model_open(BABY, &m, &err) == QD_OK);
    int32_t tok[LEN] = {1, 20, 33, 4, 50, 61, 7, 104, 0};
    struct hook_log log = {0, 0};
    qd_run_opts o = {.on_weights = zero_block_outputs, .hook_ctx = &log};
    float *lg = malloc(sizeof(float) * LEN * V);
    float *emb = malloc(sizeof(float) * V * H);
    QD_REQUIRE(lg && emb);
    QD_CHECK_OK(qd_model_logits(m, tok, 1, LEN, &o, lg, &err), &err);
    QD_CHECK_EQ_INT(log.calls, 5);
    QD_CHECK_EQ_INT(log.order_ok, 5);
    /* independent computation: e = E[tok]; x = e / rms(e) * norm; logit_v = x . E[v] */
    for (int32_t v = 0; v < V; v++)
        QD_CHECK_OK(qd_model_embed(m, &v, 1, emb + v * H, &err), &err);
    const qd_st_entry *nw = qd_st_model_find(qd_model_weights(m), "model.norm.weight");
    QD_REQUIRE(nw && nw->dtype == QD_DTYPE_F32);
    float norm[H];
    memcpy(norm, nw->data, sizeof norm);
    double worst = 0;
    for (int t = 0; t < LEN; t++) {
        const float *e = emb + tok[t] * H;
        double ss = 0;
        for (int i = 0; i < H; i++) ss += (double)e[i] * e[i];
        double inv = 1.0 / sqrt(ss / H + 1e-5);
        for (int v = 0; v < V; v++) {
            double acc = 0;
            for (int i = 0; i < H; i++) acc += e[i] * inv * norm[i] * emb[v * H + i];
            double d = fabs(acc - lg[t * V + v]);
            worst = d > worst ? d : worst;
        }
    }
    QD_CHECK_MSG(worst < 1e-3, "logits with zeroed blocks differ by %g", worst);

    /* a failing hook stops the run with its own error */
    qd_error e2 = {0};
    qd_run_opts f = {.on_weights = failing_hook};
    QD_CHECK_EQ_INT(qd_model_logits(m, tok, 1, LEN, &f, lg, &e2), QD_ERR_CANCELLED);
    QD_CHECK(strstr(e2.msg, "layer 2") && strstr(e2.msg, "hook says stop"));
    free(lg);
    free(emb);
    qd_model_free(m);
}

/* The activation hook sees each group's input once per layer in module order; zeroing the
 * o_proj and down_proj inputs must give the same logits as zeroing those weights (babyllama
 * has no biases). */
struct input_log {
    int calls[QD_LINEAR_COUNT];
    int order_ok;
    int last;
};

static qd_err zero_o_down_inputs(void *ctx, int layer, qd_linear_kind kind, float *x,
                                 int64_t n_tok, int64_t n_in, qd_error *err) {
    struct input_log *h = ctx;
    static const qd_linear_kind order[4] = {QD_LINEAR_Q, QD_LINEAR_O, QD_LINEAR_GATE,
                                            QD_LINEAR_DOWN};
    h->order_ok += kind == order[h->last % 4] && layer == h->last / 4;
    h->last++;
    h->calls[kind]++;
    if (kind == QD_LINEAR_O || kind == QD_LINEAR_DOWN)
        memset(x, 0, sizeof(float) * (size_t)(n_tok * n_in));
    return QD_OK;
}

QD_TEST(activation_hook_sees_group_inputs) {
    enum { LEN = 9, V = 105 };
    qd_error err = {0};
    qd_model *m = NULL;
    QD_REQUIRE(qd_model_open(BABY, &m, &err) == QD_OK);
    int32_t tok[LEN] = {1, 20, 33, 4, 50, 61, 7, 104, 0};
    struct input_log log = {{0}, 0, 0};
    struct hook_log wlog = {0, 0};
    qd_run_opts a = {.on_linear_input = zero_o_down_inputs, .linear_input_ctx = &log};
    qd_run_opts w = {.on_weights = zero_block_outputs, .hook_ctx = &wlog};
    float *la = malloc(sizeof(float) * LEN * V), *lw = malloc(sizeof(float) * LEN * V);
    QD_REQUIRE(la && lw);
    QD_CHECK_OK(qd_model_logits(m, tok, 1, LEN, &a, la, &err), &err);
    QD_CHECK_OK(qd_model_logits(m, tok, 1, LEN, &w, lw, &err), &err);
    QD_CHECK_EQ_INT(log.calls[QD_LINEAR_Q], 5);
    QD_CHECK_EQ_INT(log.calls[QD_LINEAR_O], 5);
    QD_CHECK_EQ_INT(log.calls[QD_LINEAR_GATE], 5);
    QD_CHECK_EQ_INT(log.calls[QD_LINEAR_DOWN], 5);
    QD_CHECK_EQ_INT(log.order_ok, 20);
    int same = 1;
    for (int i = 0; i < LEN * V; i++) same &= la[i] == lw[i];
    QD_CHECK_MSG(same, "zeroed inputs and zeroed weights give different logits");
    free(la);
    free(lw);
    qd_model_free(m);
}

/* ---- errors ---- */

static qd_err open_copy(const rt_copy_opts *o, char *dir, size_t len, qd_error *err) {
    qd_error e = {0};
    if (rt_make_tmpdir("bad", dir, len, &e) || rt_copy_model(BABY, dir, o, &e)) {
        fprintf(stderr, "setup failed: %s\n", qd_error_text(&e));
        return QD_ERR_INTERNAL;
    }
    qd_model *m = NULL;
    qd_err rc = qd_model_open(dir, &m, err);
    qd_model_free(m);
    qd_remove_tree(dir, NULL);
    return rc;
}

QD_TEST(config_disagreeing_with_tensors_is_an_error) {
    char dir[64];
    qd_error err = {0};
    rt_copy_opts o = {.dtype = QD_DTYPE_COUNT, .n_patch = 1};
    o.patch[0].key = "intermediate_size";
    o.patch[0].value = 353;
    QD_CHECK_EQ_INT(open_copy(&o, dir, sizeof dir, &err), QD_ERR_FORMAT);
    QD_CHECK_MSG(strstr(err.msg, "model.layers.0.mlp.gate_proj.weight") &&
                 strstr(err.msg, "[352, 128]") && strstr(err.msg, "[353, 128]"),
                 "message: %s", err.msg);

    qd_error e2 = {0};
    rt_copy_opts o2 = {.dtype = QD_DTYPE_COUNT, .n_patch = 1};
    o2.patch[0].key = "vocab_size";
    o2.patch[0].value = 100;
    QD_CHECK_EQ_INT(open_copy(&o2, dir, sizeof dir, &e2), QD_ERR_FORMAT);
    QD_CHECK_MSG(strstr(e2.msg, "model.embed_tokens.weight") && strstr(e2.msg, "[105, 128]"),
                 "message: %s", e2.msg);
}

QD_TEST(missing_tensor_is_an_error) {
    char dir[64];
    qd_error err = {0};
    rt_copy_opts o = {.dtype = QD_DTYPE_COUNT, .skip = "model.layers.3.mlp.up_proj.weight"};
    QD_CHECK_EQ_INT(open_copy(&o, dir, sizeof dir, &err), QD_ERR_NOT_FOUND);
    QD_CHECK_MSG(strstr(err.msg, "model.layers.3.mlp.up_proj.weight") &&
                 strstr(err.msg, "missing"), "message: %s", err.msg);

    /* untied embeddings need lm_head.weight */
    qd_error e2 = {0};
    rt_copy_opts o2 = {.dtype = QD_DTYPE_COUNT, .n_patch = 1};
    o2.patch[0].key = "tie_word_embeddings";
    o2.patch[0].value = 0;
    o2.patch[0].is_bool = true;
    QD_CHECK_EQ_INT(open_copy(&o2, dir, sizeof dir, &e2), QD_ERR_NOT_FOUND);
    QD_CHECK_MSG(strstr(e2.msg, "lm_head.weight"), "message: %s", e2.msg);

    /* attention_bias announces q/k/v/o biases the file does not have */
    qd_error e3 = {0};
    rt_copy_opts o3 = {.dtype = QD_DTYPE_COUNT, .n_patch = 1};
    o3.patch[0].key = "attention_bias";
    o3.patch[0].value = 1;
    o3.patch[0].is_bool = true;
    QD_CHECK_EQ_INT(open_copy(&o3, dir, sizeof dir, &e3), QD_ERR_NOT_FOUND);
    QD_CHECK_MSG(strstr(e3.msg, "model.layers.0.self_attn.q_proj.bias"), "message: %s",
                 e3.msg);
}

QD_TEST(unsupported_dtype_is_an_error) {
    char dir[64];
    qd_error err = {0};
    rt_copy_opts o = {.dtype = QD_DTYPE_COUNT,
                      .as_i32 = "model.layers.1.post_attention_layernorm.weight"};
    QD_CHECK_EQ_INT(open_copy(&o, dir, sizeof dir, &err), QD_ERR_UNSUPPORTED);
    QD_CHECK_MSG(strstr(err.msg, "model.layers.1.post_attention_layernorm.weight") &&
                 strstr(err.msg, "I32"), "message: %s", err.msg);
}

QD_TEST(bad_tokens_are_errors) {
    qd_error err = {0};
    qd_model *m = NULL;
    QD_REQUIRE(qd_model_open(BABY, &m, &err) == QD_OK);
    double nll[2];
    int32_t tok[8] = {1, 5, 6, 7, 1, 5, 105, 7};
    QD_CHECK_EQ_INT(qd_model_nll(m, tok, 2, 4, NULL, nll, &err), QD_ERR_INVALID_ARG);
    QD_CHECK_MSG(strstr(err.msg, "105") && strstr(err.msg, "row 1") &&
                 strstr(err.msg, "position 2"), "message: %s", err.msg);
    qd_error e2 = {0};
    tok[6] = -3;
    QD_CHECK_EQ_INT(qd_model_nll(m, tok, 2, 4, NULL, nll, &e2), QD_ERR_INVALID_ARG);
    QD_CHECK(strstr(e2.msg, "-3") != NULL);

    /* 257 positions on a 256-position model */
    int32_t *lng = calloc(257, sizeof *lng);
    QD_REQUIRE(lng);
    qd_error e3 = {0};
    QD_CHECK_EQ_INT(qd_model_nll(m, lng, 1, 257, NULL, nll, &e3), QD_ERR_INVALID_ARG);
    QD_CHECK_MSG(strstr(e3.msg, "257") && strstr(e3.msg, "max_position_embeddings"),
                 "message: %s", e3.msg);
    /* exactly 256 is fine */
    qd_error e4 = {0};
    QD_CHECK_OK(qd_model_nll(m, lng, 1, 256, NULL, nll, &e4), &e4);
    QD_CHECK(nll[0] > 0);
    free(lng);
    qd_model_free(m);
}

/* on_weights for a model opened with QD_MODEL_OPEN_EXTERNAL_LINEARS: the linears from a fully
 * opened copy of the same model (ctx). */
static qd_err linears_from(void *ctx, qd_layer_weights *w, qd_error *err) {
    qd_layer_weights full;
    qd_err rc = qd_layer_weights_load(ctx, w->layer, &full, err);
    if (rc) return rc;
    for (int k = 0; k < QD_LINEAR_COUNT; k++) {
        bool zero = true; /* what the skeleton hands out before the hook */
        for (int64_t i = 0; i < w->n_out[k] * w->n_in[k]; i++) zero = zero && w->w[k][i] == 0;
        if (!zero || w->n_out[k] != full.n_out[k] || w->n_in[k] != full.n_in[k])
            rc = qd_error_set(err, QD_ERR_INTERNAL, "layer %d %s: not a zeroed [%lld, %lld]",
                              w->layer, qd_linear_name((qd_linear_kind)k),
                              (long long)full.n_out[k], (long long)full.n_in[k]);
        else
            memcpy(w->w[k], full.w[k], (size_t)(w->n_out[k] * w->n_in[k]) * sizeof(float));
    }
    qd_layer_weights_done(&full);
    return rc;
}

QD_TEST(external_linears_open_without_them_and_come_from_the_hook) {
    enum { ROWS = 2, LEN = 40, VOCAB = 105 };
    char dir[64];
    qd_error err = {0};
    QD_REQUIRE(rt_make_tmpdir("ext", dir, sizeof dir, &err) == QD_OK);
    /* a linear's weight missing: a plain open refuses, an external-linears open does not */
    rt_copy_opts o = {.dtype = QD_DTYPE_COUNT, .skip = "model.layers.2.self_attn.v_proj.weight"};
    QD_CHECK_OK(rt_copy_model(BABY, dir, &o, &err), &err);
    qd_model *m = NULL, *full = NULL;
    QD_CHECK_EQ_INT(qd_model_open(dir, &m, &err), QD_ERR_NOT_FOUND);
    qd_error_clear(&err);
    QD_CHECK_OK(qd_model_open_ex(dir, QD_MODEL_OPEN_EXTERNAL_LINEARS, &m, &err), &err);
    QD_CHECK_OK(qd_model_open(BABY, &full, &err), &err);
    int32_t *tok = eval_prefix(BABY_EVAL, ROWS, LEN);
    float *a = malloc(sizeof(float) * ROWS * LEN * VOCAB);
    float *b = malloc(sizeof(float) * ROWS * LEN * VOCAB);
    if (m && full && tok && a && b) {
        qd_run_opts hook = {.on_weights = linears_from, .hook_ctx = full};
        QD_CHECK_OK(qd_model_logits(m, tok, ROWS, LEN, &hook, a, &err), &err);
        QD_CHECK_OK(qd_model_logits(full, tok, ROWS, LEN, NULL, b, &err), &err);
        QD_CHECK(memcmp(a, b, sizeof(float) * ROWS * LEN * VOCAB) == 0);
        /* without the hook the linears stay zero: other logits */
        QD_CHECK_OK(qd_model_logits(m, tok, ROWS, LEN, NULL, a, &err), &err);
        QD_CHECK(memcmp(a, b, sizeof(float) * ROWS * LEN * VOCAB) != 0);
    }
    free(a);
    free(b);
    free(tok);
    qd_model_free(m);
    qd_model_free(full);
    m = NULL;

    /* everything else is still checked: a missing norm is an error */
    qd_remove_tree(dir, NULL);
    QD_REQUIRE(rt_make_tmpdir("ext", dir, sizeof dir, &err) == QD_OK);
    rt_copy_opts o2 = {.dtype = QD_DTYPE_COUNT,
                       .skip = "model.layers.1.post_attention_layernorm.weight"};
    QD_CHECK_OK(rt_copy_model(BABY, dir, &o2, &err), &err);
    QD_CHECK_EQ_INT(qd_model_open_ex(dir, QD_MODEL_OPEN_EXTERNAL_LINEARS, &m, &err),
                    QD_ERR_NOT_FOUND);
    QD_CHECK(strstr(err.msg, "post_attention_layernorm") != NULL);
    qd_error_clear(&err);
    QD_CHECK_EQ_INT(qd_model_open_ex(BABY, 1u << 7, &m, &err), QD_ERR_INVALID_ARG);
    QD_CHECK(m == NULL);
    qd_remove_tree(dir, NULL);
}

QD_TEST(missing_model_directory_is_an_error) {
    qd_error err = {0};
    qd_model *m = NULL;
    QD_CHECK(qd_model_open("no-such-model-dir", &m, &err) != QD_OK);
    QD_CHECK(m == NULL);
    QD_CHECK(strstr(err.msg, "no-such-model-dir") != NULL);
}

QD_TEST_MAIN()
