/*
 * test-calib.c - the calibration driver: each group's input is what the layer really feeds
 * that linear (recomputed here from the weights with the reference ops), MODIFIED mode
 * propagates the callbacks' weights and ORIGINAL mode does not, errors stop the run, and the
 * activation statistics.
 */
#include <stdlib.h>
#include <string.h>

#include "calib.h"
#include "model.h"
#include "ops.h"
#include "rt-model.h"
#include "rt-util.h"
#include "test.h"

#define BABY QD_SOURCE_DIR "/examples/models/babyllama"
#define BABY_EVAL QD_SOURCE_DIR "/examples/data/babyllama/eval.safetensors"

enum { NSEQ = 2, LEN = 32, T = NSEQ * LEN, HID = 128, QDIM = 128, INTER = 352 };

static int32_t *tokens(void) {
    qd_error err = {0};
    int32_t *all = NULL, *out = malloc(sizeof(int32_t) * T);
    int64_t rows, len;
    if (!out || rt_load_tokens(BABY_EVAL, &all, &rows, &len, &err)) {
        free(out);
        return NULL;
    }
    for (int s = 0; s < NSEQ; s++) memcpy(out + s * LEN, all + s * len, sizeof(int32_t) * LEN);
    free(all);
    return out;
}

static qd_model *open_baby(void) {
    qd_error err = {0};
    qd_model *m = NULL;
    if (qd_model_open(BABY, &m, &err)) fprintf(stderr, "%s\n", qd_error_text(&err));
    return m;
}

/* |a - b| <= tol * max|b| + 1e-6 over n values */
static bool close_to(const float *a, const float *b, int64_t n, double tol) {
    return rt_max_abs_diff(a, b, n) <= tol * rt_max_abs(b, n) + 1e-6;
}

/* ---- group inputs are the layer's real intermediate values ---- */

struct capture {
    const qd_model *m;
    int check_layer;
    int n_begin, n_end, n_group[QD_CALIB_GROUP_COUNT];
    int order_ok;
    float x_in[T * HID], xq[T * HID], att[T * QDIM], xg[T * HID], act[T * INTER];
    float last_out[T * HID];
    int checks_failed;
};

static qd_err cap_begin(void *ctx, qd_layer_weights *w, const float *x_in, int64_t n_tok,
                        qd_error *err) {
    struct capture *c = ctx;
    c->n_begin++;
    if (w->layer == c->check_layer) memcpy(c->x_in, x_in, sizeof(float) * (size_t)n_tok * HID);
    return QD_OK;
}

static qd_err cap_group(void *ctx, const qd_calib_input *in, qd_layer_weights *w,
                        qd_error *err) {
    struct capture *c = ctx;
    /* groups come in order within each layer */
    c->order_ok += c->n_group[in->group] == w->layer &&
                   (in->group == QD_CALIB_QKV || c->n_group[in->group - 1] == w->layer + 1);
    c->n_group[in->group]++;
    if (in->n_tok != T || in->n_seq != NSEQ || in->seq_len != LEN) c->checks_failed++;
    if (w->layer != c->check_layer) return QD_OK;
    float *dst[QD_CALIB_GROUP_COUNT] = {c->xq, c->att, c->xg, c->act};
    int64_t n_in[QD_CALIB_GROUP_COUNT] = {HID, QDIM, HID, INTER};
    if (in->n_in != n_in[in->group]) c->checks_failed++;
    memcpy(dst[in->group], in->x, sizeof(float) * (size_t)(T * in->n_in));
    if (memcmp(in->layer_in, c->x_in, sizeof(float) * T * HID) != 0) c->checks_failed++;
    return QD_OK;
}

static qd_err cap_end(void *ctx, qd_layer_weights *w, const float *x_out, int64_t n_tok,
                      qd_error *err) {
    struct capture *c = ctx;
    c->n_end++;
    memcpy(c->last_out, x_out, sizeof(float) * (size_t)n_tok * HID);
    if (w->layer != c->check_layer) return QD_OK;

    /* recompute the chain from the layer input with the reference ops */
    static float xq[T * HID], att[T * QDIM], y[T * HID], h[T * HID], xg[T * HID];
    static float gate[T * INTER], up[T * INTER], act[T * INTER], out[T * HID];
    qd_rmsnorm_ref(xq, c->x_in, w->attn_norm, T, HID, 1e-5);
    QD_CHECK_MSG(memcmp(xq, c->xq, sizeof xq) == 0, "QKV input is not input_layernorm(x)");
    qd_run_opts ref = {.use_ref = true};
    QD_CHECK_OK(qd_block_attention(c->m, w, xq, NSEQ, LEN, y, att, &ref, err), err);
    QD_CHECK_MSG(close_to(c->att, att, T * QDIM, 1e-5), "O input is not the attention output");
    /* the block output is o_proj of the attention output */
    qd_matmul_ref(h, att, w->w[QD_LINEAR_O], NULL, T, HID, QDIM);
    QD_CHECK(close_to(y, h, T * HID, 1e-6));
    for (int i = 0; i < T * HID; i++) h[i] = c->x_in[i] + y[i];
    qd_rmsnorm_ref(xg, h, w->mlp_norm, T, HID, 1e-5);
    QD_CHECK_MSG(close_to(c->xg, xg, T * HID, 1e-5), "GATE_UP input is not the MLP's norm");
    qd_matmul_ref(gate, c->xg, w->w[QD_LINEAR_GATE], NULL, T, INTER, HID);
    qd_matmul_ref(up, c->xg, w->w[QD_LINEAR_UP], NULL, T, INTER, HID);
    qd_silu_mul_ref(act, gate, up, T * INTER);
    QD_CHECK_MSG(close_to(c->act, act, T * INTER, 1e-5), "DOWN input is not silu(gate) * up");
    qd_matmul_ref(y, c->act, w->w[QD_LINEAR_DOWN], NULL, T, HID, INTER);
    for (int i = 0; i < T * HID; i++) out[i] = h[i] + y[i];
    QD_CHECK_MSG(close_to(x_out, out, T * HID, 1e-5), "layer output is not h + mlp(h)");
    /* the MLP block function gives the same output from the GATE_UP input */
    QD_CHECK_OK(qd_block_mlp(c->m, w, c->xg, T, y, NULL, NULL, err), err);
    for (int i = 0; i < T * HID; i++) y[i] += h[i];
    QD_CHECK(close_to(y, x_out, T * HID, 1e-5));
    return QD_OK;
}

static void run_capture(qd_calib_propagate mode) {
    qd_model *m = open_baby();
    int32_t *tok = tokens();
    QD_REQUIRE(m && tok);
    struct capture *c = calloc(1, sizeof *c);
    QD_REQUIRE(c);
    c->m = m;
    c->check_layer = 1;
    qd_calib_callbacks cb = {c, cap_begin, cap_group, cap_end};
    qd_calib_opts o = {.propagate = mode};
    qd_error err = {0};
    QD_CHECK_OK(qd_calib_run(m, tok, NSEQ, LEN, &o, &cb, &err), &err);
    QD_CHECK_EQ_INT(c->n_begin, 5);
    QD_CHECK_EQ_INT(c->n_end, 5);
    for (int g = 0; g < QD_CALIB_GROUP_COUNT; g++) QD_CHECK_EQ_INT(c->n_group[g], 5);
    QD_CHECK_EQ_INT(c->order_ok, 20);
    QD_CHECK_EQ_INT(c->checks_failed, 0);

    /* the last layer's output equals the plain forward pass, layer by layer */
    float *x = malloc(sizeof(float) * T * HID);
    QD_REQUIRE(x);
    QD_CHECK_OK(qd_model_embed(m, tok, T, x, &err), &err);
    for (int l = 0; l < 5; l++) {
        qd_layer_weights w;
        QD_REQUIRE(qd_layer_weights_load(m, l, &w, &err) == QD_OK);
        QD_CHECK_OK(qd_layer_forward(m, &w, x, x, NSEQ, LEN, NULL, &err), &err);
        qd_layer_weights_done(&w);
    }
    QD_CHECK(close_to(c->last_out, x, T * HID, 1e-5));
    free(x);
    free(c);
    free(tok);
    qd_model_free(m);
}

QD_TEST(group_inputs_modified_mode) {
    run_capture(QD_CALIB_PROPAGATE_MODIFIED);
}

QD_TEST(group_inputs_original_mode) {
    run_capture(QD_CALIB_PROPAGATE_ORIGINAL);
}

/* ---- propagation of modified weights ---- */

struct destroy {
    int o_input_nonzero, layers_identity, layers_seen;
    float x_in[T * HID], x_out_last[T * HID];
};

static qd_err d_begin(void *ctx, qd_layer_weights *w, const float *x_in, int64_t n_tok,
                      qd_error *err) {
    struct destroy *d = ctx;
    memcpy(d->x_in, x_in, sizeof(float) * (size_t)n_tok * HID);
    return QD_OK;
}

/* QKV: zero v_proj (then attention outputs zeros); DOWN: zero down_proj. With no biases the
 * layer becomes the identity when the changes propagate. */
static qd_err d_group(void *ctx, const qd_calib_input *in, qd_layer_weights *w, qd_error *err) {
    struct destroy *d = ctx;
    if (in->group == QD_CALIB_QKV)
        memset(w->w[QD_LINEAR_V], 0, sizeof(float) * (size_t)(w->n_out[QD_LINEAR_V] * HID));
    if (in->group == QD_CALIB_O) d->o_input_nonzero += rt_max_abs(in->x, T * QDIM) > 0;
    if (in->group == QD_CALIB_DOWN)
        memset(w->w[QD_LINEAR_DOWN], 0, sizeof(float) * (size_t)(HID * INTER));
    return QD_OK;
}

static qd_err d_end(void *ctx, qd_layer_weights *w, const float *x_out, int64_t n_tok,
                    qd_error *err) {
    struct destroy *d = ctx;
    d->layers_seen++;
    d->layers_identity += memcmp(x_out, d->x_in, sizeof(float) * (size_t)n_tok * HID) == 0;
    memcpy(d->x_out_last, x_out, sizeof(float) * (size_t)n_tok * HID);
    return QD_OK;
}

QD_TEST(modified_mode_propagates_callback_weights) {
    qd_model *m = open_baby();
    int32_t *tok = tokens();
    QD_REQUIRE(m && tok);
    struct destroy *d = calloc(1, sizeof *d);
    QD_REQUIRE(d);
    qd_calib_callbacks cb = {d, d_begin, d_group, d_end};
    qd_calib_opts o = {.propagate = QD_CALIB_PROPAGATE_MODIFIED};
    qd_error err = {0};
    QD_CHECK_OK(qd_calib_run(m, tok, NSEQ, LEN, &o, &cb, &err), &err);
    QD_CHECK_EQ_INT(d->layers_seen, 5);
    QD_CHECK_EQ_INT(d->o_input_nonzero, 0); /* O input computed with the zeroed v_proj */
    QD_CHECK_EQ_INT(d->layers_identity, 5); /* every layer passed its input through */
    free(d);
    free(tok);
    qd_model_free(m);
}

QD_TEST(original_mode_propagates_float_outputs) {
    qd_model *m = open_baby();
    int32_t *tok = tokens();
    QD_REQUIRE(m && tok);
    struct destroy *d = calloc(1, sizeof *d);
    float *want = malloc(sizeof(float) * T * HID);
    QD_REQUIRE(d && want);
    qd_calib_callbacks cb = {d, d_begin, d_group, d_end};
    qd_calib_opts o = {.propagate = QD_CALIB_PROPAGATE_ORIGINAL};
    qd_error err = {0};
    QD_CHECK_OK(qd_calib_run(m, tok, NSEQ, LEN, &o, &cb, &err), &err);
    QD_CHECK_EQ_INT(d->o_input_nonzero, 5); /* inputs come from the float weights */
    QD_CHECK_EQ_INT(d->layers_identity, 0);
    /* and so does the propagated state: the same as a run whose callbacks change nothing */
    memcpy(want, d->x_out_last, sizeof(float) * T * HID);
    qd_calib_callbacks none = {d, d_begin, NULL, d_end};
    QD_CHECK_OK(qd_calib_run(m, tok, NSEQ, LEN, &o, &none, &err), &err);
    QD_CHECK(memcmp(want, d->x_out_last, sizeof(float) * T * HID) == 0);
    free(want);
    free(d);
    free(tok);
    qd_model_free(m);
}

/* ---- control ---- */

static int g_ends;

static qd_err fail_down_of_layer1(void *ctx, const qd_calib_input *in, qd_layer_weights *w,
                                  qd_error *err) {
    if (in->layer == 1 && in->group == QD_CALIB_DOWN)
        return qd_error_set(err, QD_ERR_NOMEM, "callback ran out");
    return QD_OK;
}

static qd_err count_end(void *ctx, qd_layer_weights *w, const float *x_out, int64_t n_tok,
                        qd_error *err) {
    g_ends++;
    return QD_OK;
}

QD_TEST(callback_errors_and_layer_limit) {
    qd_model *m = open_baby();
    int32_t *tok = tokens();
    QD_REQUIRE(m && tok);
    qd_calib_callbacks cb = {NULL, NULL, fail_down_of_layer1, count_end};
    qd_calib_opts o = {0};
    qd_error err = {0};
    g_ends = 0;
    QD_CHECK_EQ_INT(qd_calib_run(m, tok, NSEQ, LEN, &o, &cb, &err), QD_ERR_NOMEM);
    QD_CHECK_MSG(strstr(err.msg, "layer 1 down: callback ran out") != NULL, "%s", err.msg);
    QD_CHECK_EQ_INT(g_ends, 1);

    qd_calib_callbacks cb2 = {NULL, NULL, NULL, count_end};
    qd_calib_opts two = {.n_layers = 2};
    g_ends = 0;
    QD_CHECK_OK(qd_calib_run(m, tok, NSEQ, LEN, &two, &cb2, &err), &err);
    QD_CHECK_EQ_INT(g_ends, 2);

    qd_error e3 = {0};
    tok[5] = 999;
    QD_CHECK_EQ_INT(qd_calib_run(m, tok, NSEQ, LEN, &two, &cb2, &e3), QD_ERR_INVALID_ARG);
    QD_CHECK(strstr(e3.msg, "999") != NULL);
    free(tok);
    qd_model_free(m);
}

/* ---- statistics ---- */

QD_TEST(activation_statistics) {
    qd_error err = {0};
    qd_act_stats s;
    QD_REQUIRE(qd_act_stats_init(&s, 2, &err) == QD_OK);
    float x1[4] = {1, -2, 3, 4}, x2[2] = {-7, 0.5f};
    qd_act_stats_add(&s, x1, 2);
    qd_act_stats_add(&s, x2, 1);
    float mean[2];
    qd_act_stats_mean_abs(&s, mean);
    QD_CHECK_EQ_INT(s.n_tok, 3);
    QD_CHECK_NEAR(mean[0], 11.0 / 3, 1e-6);
    QD_CHECK_NEAR(mean[1], 6.5 / 3, 1e-6);
    QD_CHECK_NEAR(s.max_abs[0], 7, 0);
    QD_CHECK_NEAR(s.max_abs[1], 4, 0);
    qd_act_stats_done(&s);
    QD_CHECK_EQ_INT(qd_act_stats_init(&s, 0, &err), QD_ERR_INVALID_ARG);

    float h[4] = {0}, hr[4] = {0};
    qd_calib_xtx_add(h, x1, 2, 2, NULL);
    qd_run_opts ref = {.use_ref = true};
    qd_calib_xtx_add(hr, x1, 2, 2, &ref);
    float want[4] = {1 + 9, -2 + 12, -2 + 12, 4 + 16};
    for (int i = 0; i < 4; i++) {
        QD_CHECK_NEAR(h[i], want[i], 1e-5);
        QD_CHECK_NEAR(hr[i], want[i], 0);
    }
}

QD_TEST(group_tables) {
    qd_linear_kind k[3];
    QD_CHECK_EQ_INT(qd_calib_group_linears(QD_CALIB_QKV, k), 3);
    QD_CHECK(k[0] == QD_LINEAR_Q && k[2] == QD_LINEAR_V);
    QD_CHECK_EQ_INT(qd_calib_group_linears(QD_CALIB_GATE_UP, k), 2);
    QD_CHECK(k[1] == QD_LINEAR_UP);
    QD_CHECK_EQ_INT(qd_calib_group_linears(QD_CALIB_DOWN, k), 1);
    QD_CHECK(k[0] == QD_LINEAR_DOWN);
    QD_CHECK_EQ_STR(qd_calib_group_name(QD_CALIB_GATE_UP), "gate_up");
    QD_CHECK(qd_calib_group_name(QD_CALIB_GROUP_COUNT) == NULL);
    char buf[64];
    qd_error err = {0};
    QD_CHECK_OK(qd_linear_path(buf, sizeof buf, 12, QD_LINEAR_DOWN, &err), &err);
    QD_CHECK_EQ_STR(buf, "model.layers.12.mlp.down_proj");
    QD_CHECK_OK(qd_linear_path(buf, sizeof buf, 0, QD_LINEAR_K, &err), &err);
    QD_CHECK_EQ_STR(buf, "model.layers.0.self_attn.k_proj");
    QD_CHECK_EQ_INT(qd_linear_path(buf, 10, 0, QD_LINEAR_K, &err), QD_ERR_TOO_LARGE);
}

QD_TEST_MAIN()
