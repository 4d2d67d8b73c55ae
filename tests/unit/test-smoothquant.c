/*
 * test-smoothquant.c - SmoothQuant W8A8 and FP8 (quantizers/smoothquant.h): the smoothing
 * factors, the fold and the range identity on hand-made groups; int8 and fp8 codes, scales and
 * static activation scales through the calibration callbacks; the activation fake quantizers;
 * and, end to end on the bundled babyllama model, the perplexity of the quantized weights, plus
 * the W8A8 perplexity with the activation quantizer applied where the runtime hook would call it.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "calib.h"
#include "dtype.h"
#include "model.h"
#include "ops.h"
#include "qlinear.h"
#include "rtn.h"
#include "safetensors.h"
#include "smoothquant.h"
#include "test.h"
#include "tokenizer.h"

#define BABY QD_SOURCE_DIR "/examples/models/babyllama"
#define BABY_CALIB QD_SOURCE_DIR "/examples/data/babyllama/calib.safetensors"
#define BABY_EVAL QD_SOURCE_DIR "/examples/data/babyllama/eval.safetensors"
#define BABY_FP32_PPL 6.8898 /* examples/data/README.md, independent float64 reference */

/* ---- helpers ---- */

static double rel_diff_max(const float *a, const float *b, int64_t n) {
    double d = 0, m = 0;
    for (int64_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - (double)b[i]);
        d = e > d ? e : d;
        m = fabs((double)b[i]) > m ? fabs((double)b[i]) : m;
    }
    return m > 0 ? d / m : d;
}

/* A sink that keeps the last result of each linear and counts the calls. */
struct keep {
    qd_qlinear q[QD_LINEAR_COUNT];
    int n_linear, n_norms, n_report;
    qd_linear_kind order[16];
    qd_w8a8_report rep[QD_CALIB_GROUP_COUNT];
};

static qd_err keep_linear(void *ctx, int layer, qd_linear_kind kind, qd_qlinear *q,
                          qd_error *err) {
    struct keep *k = ctx;
    qd_qlinear_free(&k->q[kind]);
    k->q[kind] = *q;
    memset(q, 0, sizeof *q); /* taken over */
    if (k->n_linear < 16) k->order[k->n_linear] = kind;
    k->n_linear++;
    return QD_OK;
}

static void keep_report(void *ctx, const qd_w8a8_report *r) {
    struct keep *k = ctx;
    k->rep[r->group] = *r;
    k->n_report++;
}

static void keep_done(struct keep *k) {
    for (int i = 0; i < QD_LINEAR_COUNT; i++) qd_qlinear_free(&k->q[i]);
}

/* A synthetic layer: only the linears a test fills are set. */
struct fake_layer {
    qd_layer_weights w;
    float attn_norm[8], mlp_norm[8];
};

static void fake_set(struct fake_layer *f, qd_linear_kind k, float *w, int64_t n_out,
                     int64_t n_in) {
    f->w.w[k] = w;
    f->w.n_out[k] = n_out;
    f->w.n_in[k] = n_in;
}

/* Run one group callback of a W8A8 context on input x [n_tok, n_in]. */
static qd_err run_group(qd_w8a8 *c, struct fake_layer *f, qd_calib_group g, const float *x,
                        int64_t n_tok, int64_t n_in, qd_error *err) {
    qd_calib_callbacks cb;
    qd_w8a8_callbacks(c, &cb);
    qd_calib_input in = {.layer = 0, .group = g, .x = x, .n_tok = n_tok, .n_in = n_in,
                         .n_seq = 1, .seq_len = n_tok, .layer_in = x};
    return cb.group(cb.ctx, &in, &f->w, err);
}

/* ---- (1) the smoothing factors, the fold, and the range identity ---- */

/* Two linears reading 5 channels (like gate/up). Column maxima over both: 1, 4, 0.25, 2, 0
 * (channel 4 is all zeros: w clamps to 1e-5). */
enum { SK = 5, SN1 = 2, SN2 = 3 };
static const float W1[SN1 * SK] = {
    1.0f,  -4.0f, 0.125f, 0.5f,  0.0f,
    -0.5f, 2.0f,  -0.25f, -2.0f, 0.0f,
};
static const float W2[SN2 * SK] = {
    0.25f, 1.0f,  0.25f,   1.0f,  0.0f,
    -1.0f, -3.0f, 0.0625f, 1.5f,  0.0f,
    0.75f, 0.5f,  -0.125f, -1.0f, 0.0f,
};
static const float WMAX[SK] = {1.0f, 4.0f, 0.25f, 2.0f, 0.0f};
/* Channel maxima of the activations: channel 3 is never active (s clamps to 1e-5). */
static const float ACT[SK] = {16.0f, 1.0f, 4.0f, 0.0f, 1e-4f};
/* Four tokens whose channel maxima are ACT, with mixed signs. */
static const float X4[4 * SK] = {
    -16.0f, 0.5f,  1.0f,  0.0f, 1e-4f,
    3.0f,   -1.0f, -4.0f, 0.0f, -5e-5f,
    8.0f,   0.25f, 2.0f,  0.0f, 0.0f,
    -2.0f,  1.0f,  4.0f,  0.0f, -1e-4f,
};

QD_TEST(smoothing_factors_match_the_formula) {
    float w1[SN1 * SK], w2[SN2 * SK], s[SK];
    memcpy(w1, W1, sizeof w1);
    memcpy(w2, W2, sizeof w2);
    const float *ws[2] = {w1, w2};
    int64_t n_out[2] = {SN1, SN2};
    /* alpha 0.5: s = sqrt(act / w): 4, 1/2, 4; 0 -> clamp 1e-5; sqrt(1e-4 / 1e-5) = sqrt(10) */
    qd_sq_scales(ACT, ws, n_out, 2, SK, 0.5f, s);
    const float want05[SK] = {4.0f, 0.5f, 4.0f, 1e-5f, 3.16227766f};
    for (int j = 0; j < SK; j++) QD_CHECK_NEAR(s[j], want05[j], 1e-6 * want05[j]);
    /* alpha 0.75: 16^.75 = 8; 1 / 4^.25 = 0.70710678; 4^.75 / .25^.25 = 2.82842712 / 0.70710678
     * = 4; clamp; (1e-4)^.75 / (1e-5)^.25 = 1e-3 / 0.0562341325 = 0.0177827941 */
    qd_sq_scales(ACT, ws, n_out, 2, SK, 0.75f, s);
    const float want075[SK] = {8.0f, 0.70710678f, 4.0f, 1e-5f, 0.0177827941f};
    for (int j = 0; j < SK; j++) QD_CHECK_NEAR(s[j], want075[j], 1e-6 * want075[j]);
    /* alpha 0 and 1: s = 1 / w (all migrated to the activations' side), s = act */
    qd_sq_scales(ACT, ws, n_out, 2, SK, 1.0f, s);
    for (int j = 0; j < SK; j++) QD_CHECK_NEAR(s[j], ACT[j] > 1e-5f ? ACT[j] : 1e-5f, 1e-9);
    qd_sq_scales(ACT, ws, n_out, 2, SK, 0.0f, s);
    for (int j = 0; j < 4; j++) QD_CHECK_NEAR(s[j], 1.0 / WMAX[j], 1e-6 / WMAX[j]);
}

QD_TEST(fold_moves_range_from_activations_to_weights) {
    const float alphas[4] = {0.25f, 0.5f, 0.75f, 0.85f};
    for (int a = 0; a < 4; a++) {
        float w1[SN1 * SK], w2[SN2 * SK], s[SK];
        float norm[SK] = {1.0f, 2.0f, 3.0f, 4.0f, 5.0f};
        memcpy(w1, W1, sizeof w1);
        memcpy(w2, W2, sizeof w2);
        const float *wc[2] = {w1, w2};
        float *wm[2] = {w1, w2};
        int64_t n_out[2] = {SN1, SN2};
        float act[SK];
        qd_channel_amax(X4, 4, SK, act);
        for (int j = 0; j < SK; j++) QD_CHECK_EQ_INT(act[j] == ACT[j], 1);
        qd_sq_scales(act, wc, n_out, 2, SK, alphas[a], s);
        qd_sq_fold(s, norm, wm, n_out, 2, SK);
        /* the fold, element by element */
        for (int j = 0; j < SK; j++) QD_CHECK_NEAR(norm[j], (j + 1.0) / s[j], 1e-6 * norm[j]);
        for (int i = 0; i < SN1 * SK; i++) QD_CHECK(w1[i] == W1[i] * s[i % SK]);
        for (int i = 0; i < SN2 * SK; i++) QD_CHECK(w2[i] == W2[i] * s[i % SK]);
        /* Derivation: s = act^a / w^(1-a), so act / s = act^(1-a) w^(1-a) and w s = act^a w^a:
         * max |X / s| = (act w)^(1 - a), max |W s| = (act w)^a (channels 0..2, no clamp). */
        for (int j = 0; j < 3; j++) {
            double xmax = 0, wmax = 0;
            for (int t = 0; t < 4; t++) xmax = fmax(xmax, fabs(X4[t * SK + j] / s[j]));
            for (int n = 0; n < SN1; n++) wmax = fmax(wmax, fabs(w1[n * SK + j]));
            for (int n = 0; n < SN2; n++) wmax = fmax(wmax, fabs(w2[n * SK + j]));
            double p = (double)ACT[j] * WMAX[j];
            QD_CHECK_NEAR(xmax, pow(p, 1.0 - alphas[a]), 1e-5 * xmax);
            QD_CHECK_NEAR(wmax, pow(p, alphas[a]), 1e-5 * wmax);
            /* the product of the two ranges is invariant */
            QD_CHECK_NEAR(xmax * wmax, p, 1e-5 * p);
        }
    }
}

QD_TEST(fold_keeps_the_float_function) {
    /* y = rmsnorm(X) * norm W^T before and after the fold, for both linears */
    float w1[SN1 * SK], w2[SN2 * SK], s[SK];
    float norm[SK] = {1.0f, -0.5f, 2.0f, 0.75f, 1.25f};
    float xn[4 * SK], y_ref[4 * SN2], y[4 * SN2];
    memcpy(w1, W1, sizeof w1);
    memcpy(w2, W2, sizeof w2);
    const float *wc[2] = {w1, w2};
    float *wm[2] = {w1, w2};
    const float *orig[2] = {W1, W2};
    int64_t n_out[2] = {SN1, SN2};
    float act[SK];
    qd_rmsnorm_ref(xn, X4, norm, 4, SK, 1e-6);
    qd_channel_amax(xn, 4, SK, act);
    qd_sq_scales(act, wc, n_out, 2, SK, 0.5f, s);
    qd_sq_fold(s, norm, wm, n_out, 2, SK);
    for (int i = 0; i < 2; i++) {
        qd_rmsnorm_ref(xn, X4, (const float[SK]){1.0f, -0.5f, 2.0f, 0.75f, 1.25f}, 4, SK, 1e-6);
        qd_matmul_ref(y_ref, xn, orig[i], NULL, 4, n_out[i], SK);
        qd_rmsnorm_ref(xn, X4, norm, 4, SK, 1e-6);
        qd_matmul_ref(y, xn, wm[i], NULL, 4, n_out[i], SK);
        QD_CHECK(rel_diff_max(y, y_ref, 4 * n_out[i]) < 1e-6);
    }
    /* and the fold did something */
    QD_CHECK(fabs(s[0] - 1.0f) > 0.1);
}

/* The same through the callbacks on a real layer of babyllama inside qd_calib_run: after the
 * QKV and GATE_UP callbacks, the layer (folded norms and weights, still float) computes the same
 * output as the original. */
struct fold_check {
    qd_w8a8 *c;
    qd_calib_callbacks inner;
    const qd_model *m;
    int64_t n_seq, seq_len;
    float *x_in, *y0, *y1;
    float attn_norm0[128];
    double worst;
    int n_layers, n_changed;
};

static qd_err fc_begin(void *ctx, qd_layer_weights *w, const float *x_in, int64_t n_tok,
                       qd_error *err) {
    struct fold_check *f = ctx;
    memcpy(f->x_in, x_in, sizeof(float) * (size_t)(n_tok * w->hidden));
    memcpy(f->attn_norm0, w->attn_norm, sizeof f->attn_norm0);
    return qd_layer_forward(f->m, w, x_in, f->y0, f->n_seq, f->seq_len, NULL, err);
}

static qd_err fc_group(void *ctx, const qd_calib_input *in, qd_layer_weights *w,
                       qd_error *err) {
    struct fold_check *f = ctx;
    return f->inner.group(f->inner.ctx, in, w, err);
}

static qd_err fc_end(void *ctx, qd_layer_weights *w, const float *x_out, int64_t n_tok,
                     qd_error *err) {
    struct fold_check *f = ctx;
    qd_err rc = qd_layer_forward(f->m, w, f->x_in, f->y1, f->n_seq, f->seq_len, NULL, err);
    if (rc) return rc;
    double d = rel_diff_max(f->y1, f->y0, n_tok * w->hidden);
    f->worst = d > f->worst ? d : f->worst;
    /* ORIGINAL propagation: the driver's next input is the original layer's output */
    d = rel_diff_max(x_out, f->y0, n_tok * w->hidden);
    f->worst = d > f->worst ? d : f->worst;
    f->n_changed += memcmp(f->attn_norm0, w->attn_norm, sizeof f->attn_norm0) != 0;
    f->n_layers++;
    return f->inner.layer_end(f->inner.ctx, w, x_out, n_tok, err);
}

/* input_ids rows [0, n_rows) of a token-set file into a new array (NULL on failure). */
static int32_t *load_rows(const char *path, int64_t n_rows, int64_t *ret_len) {
    qd_error err = {0};
    int32_t *t = NULL;
    int64_t got_rows = 0;
    if (qd_token_set_load(path, n_rows, 0, &t, &got_rows, ret_len, &err) != QD_OK) {
        fprintf(stderr, "%s\n", qd_error_text(&err));
        return NULL;
    }
    if (got_rows != n_rows) {
        free(t);
        return NULL;
    }
    return t;
}

static qd_model *open_baby(void) {
    qd_error err = {0};
    qd_model *m = NULL;
    if (qd_model_open(BABY, &m, &err)) fprintf(stderr, "%s\n", qd_error_text(&err));
    return m;
}

static qd_err discard_linear(void *ctx, int layer, qd_linear_kind kind, qd_qlinear *q,
                             qd_error *err) {
    return QD_OK;
}

QD_TEST(callbacks_fold_without_changing_the_layer) {
    qd_error err = {0};
    qd_model *m = open_baby();
    QD_REQUIRE(m);
    enum { NSEQ = 2, LEN = 64, TOK = NSEQ * LEN };
    int64_t len = 0;
    int32_t *all = load_rows(BABY_CALIB, NSEQ, &len);
    int32_t tok[TOK];
    static float x_in[TOK * 128], y0[TOK * 128], y1[TOK * 128];
    QD_REQUIRE(all && len >= LEN);
    for (int s = 0; s < NSEQ; s++) memcpy(tok + s * LEN, all + s * len, sizeof(int32_t) * LEN);
    free(all);

    qd_sq_params p;
    qd_sq_params_default(&p);
    qd_w8a8_sink sink = {.linear = discard_linear};
    struct fold_check f = {.m = m, .n_seq = NSEQ, .seq_len = LEN, .x_in = x_in, .y0 = y0,
                           .y1 = y1};
    QD_REQUIRE(qd_smoothquant_new(&p, &sink, NULL, &f.c, &err) == QD_OK);
    qd_w8a8_callbacks(f.c, &f.inner);
    qd_calib_callbacks cb = {.ctx = &f, .layer_begin = fc_begin, .group = fc_group,
                             .layer_end = fc_end};
    qd_calib_opts o = {.propagate = QD_CALIB_PROPAGATE_ORIGINAL, .n_layers = 3};
    QD_CHECK_OK(qd_calib_run(m, tok, NSEQ, LEN, &o, &cb, &err), &err);
    QD_CHECK_EQ_INT(f.n_layers, 3);
    QD_CHECK_EQ_INT(f.n_changed, 3);
    QD_CHECK_MSG(f.worst < 2e-5, "folded layer differs from the original by %g", f.worst);
    qd_w8a8_free(f.c);
    qd_model_free(m);
}

/* ---- (2) int8 per-channel codes ---- */

/* Rows chosen so the scales are exact (absmax 127 -> s = 1, absmax 254 -> s = 2) and several
 * values fall exactly half-way between codes: round half to even. Codes are stored unsigned
 * (signed + 128, zero 128). */
static const float WO[2 * 5] = {
    127.0f, -2.5f, 3.5f,  0.5f, -64.0f, /* s = 1: 127, -2, 4, 0, -64 */
    254.0f, 5.0f,  -7.0f, 3.0f, -1.0f,  /* s = 2: 127, 2, -4, 2, 0 (-0.5 -> -0) */
};
static const uint8_t WO_CODES[2 * 5] = {255, 126, 132, 128, 64, 255, 130, 124, 130, 128};

QD_TEST(int8_codes_and_scales_by_hand) {
    qd_error err = {0};
    float wo[10];
    memcpy(wo, WO, sizeof wo);
    struct fake_layer f;
    memset(&f, 0, sizeof f);
    fake_set(&f, QD_LINEAR_O, wo, 2, 5);
    /* the O input's max |x| is 63.5 -> static act scale 63.5 / 127 = 0.5 */
    const float x[2 * 5] = {1, -63.5f, 2, 0, 0.25f, -3, 4, 5, 6, 7};
    for (int st = 0; st < 2; st++) {
        struct keep k = {0};
        qd_sq_params p;
        qd_sq_params_default(&p);
        p.static_act = st;
        qd_w8a8_sink sink = {.ctx = &k, .linear = keep_linear, .report = keep_report};
        qd_w8a8 *c = NULL;
        QD_REQUIRE(qd_smoothquant_new(&p, &sink, NULL, &c, &err) == QD_OK);
        QD_CHECK_OK(run_group(c, &f, QD_CALIB_O, x, 2, 5, &err), &err);
        const qd_qlinear *q = &k.q[QD_LINEAR_O];
        QD_REQUIRE(k.n_linear == 1 && q->codes);
        QD_CHECK_EQ_INT(q->type, QD_QTYPE_INT);
        QD_CHECK_EQ_INT(q->bits, 8);
        QD_CHECK_EQ_INT(q->n_groups, 1);
        QD_CHECK_EQ_INT(q->rule, QD_QRULE_SYM_MAX);
        for (int i = 0; i < 10; i++) QD_CHECK_EQ_INT(q->codes[i], WO_CODES[i]);
        QD_CHECK(q->scales[0] == 1.0f && q->scales[1] == 2.0f);
        QD_CHECK(q->zeros[0] == 128.0f && q->zeros[1] == 128.0f);
        QD_CHECK(q->act_scale == (st ? 0.5f : 0.0f));
        /* o_proj is not smoothed: its weights are untouched */
        QD_CHECK(memcmp(wo, WO, sizeof wo) == 0);
        /* the report: the error is small, not zero, and the group is unsmoothed */
        QD_CHECK_EQ_INT(k.n_report, 1);
        QD_CHECK(k.rep[QD_CALIB_O].rel_err > 0 && k.rep[QD_CALIB_O].rel_err < 1e-2);
        QD_CHECK(k.rep[QD_CALIB_O].act_amax == 63.5f);
        QD_CHECK(k.rep[QD_CALIB_O].s_min == 1.0f && k.rep[QD_CALIB_O].s_max == 1.0f);
        keep_done(&k);
        qd_w8a8_free(c);
    }
}

QD_TEST(int8_qkv_with_unit_smoothing) {
    /* When every channel's activation max equals its weight max, alpha 0.5 gives s = 1 exactly,
     * the fold changes nothing and the codes are the hand-computed ones. v's row has absmax 1:
     * s = 1/127, every code 127. */
    qd_error err = {0};
    float q[5], k[5], v[5], x[5];
    memcpy(q, WO, sizeof q);
    memcpy(k, WO + 5, sizeof k);
    for (int j = 0; j < 5; j++) v[j] = 1.0f;
    /* column maxima over q, k, v: 254, 5, 7, 3, 64; x reaches them with mixed signs */
    const float xv[5] = {254.0f, -5.0f, 7.0f, 3.0f, -64.0f};
    memcpy(x, xv, sizeof x);
    struct fake_layer f;
    memset(&f, 0, sizeof f);
    f.w.hidden = 5;
    f.w.attn_norm = f.attn_norm;
    for (int j = 0; j < 5; j++) f.attn_norm[j] = 1.0f + (float)j;
    fake_set(&f, QD_LINEAR_Q, q, 1, 5);
    fake_set(&f, QD_LINEAR_K, k, 1, 5);
    fake_set(&f, QD_LINEAR_V, v, 1, 5);
    struct keep kp = {0};
    qd_sq_params p;
    qd_sq_params_default(&p);
    p.static_act = true;
    qd_w8a8_sink sink = {.ctx = &kp, .linear = keep_linear, .report = keep_report};
    qd_w8a8 *c = NULL;
    QD_REQUIRE(qd_smoothquant_new(&p, &sink, NULL, &c, &err) == QD_OK);
    QD_CHECK_OK(run_group(c, &f, QD_CALIB_QKV, x, 1, 5, &err), &err);
    QD_REQUIRE(kp.n_linear == 3);
    QD_CHECK(kp.order[0] == QD_LINEAR_Q && kp.order[1] == QD_LINEAR_K &&
             kp.order[2] == QD_LINEAR_V);
    for (int j = 0; j < 5; j++) {
        QD_CHECK_EQ_INT(kp.q[QD_LINEAR_Q].codes[j], WO_CODES[j]);
        QD_CHECK_EQ_INT(kp.q[QD_LINEAR_K].codes[j], WO_CODES[5 + j]);
        QD_CHECK_EQ_INT(kp.q[QD_LINEAR_V].codes[j], 255);
        QD_CHECK(f.attn_norm[j] == 1.0f + (float)j); /* s = 1 */
    }
    QD_CHECK(kp.q[QD_LINEAR_Q].scales[0] == 1.0f && kp.q[QD_LINEAR_K].scales[0] == 2.0f);
    QD_CHECK(kp.q[QD_LINEAR_V].scales[0] == 1.0f / 127.0f);
    /* every linear of the group records the static scale of the shared input: 254 / 127 */
    for (int i = QD_LINEAR_Q; i <= QD_LINEAR_V; i++) QD_CHECK(kp.q[i].act_scale == 2.0f);
    QD_CHECK(kp.rep[QD_CALIB_QKV].s_min == 1.0f && kp.rep[QD_CALIB_QKV].s_max == 1.0f);
    keep_done(&kp);
    qd_w8a8_free(c);
}

QD_TEST(smoothing_in_the_callback_folds_norm_and_weights) {
    /* the gate/up group of the hand-made 5-channel example: the callback's fold is exactly
     * qd_sq_scales + qd_sq_fold, the codes are those of the folded weights, and the outlier
     * channel's activation range shrinks */
    qd_error err = {0};
    float w1[SN1 * SK], w2[SN2 * SK];
    memcpy(w1, W1, sizeof w1);
    memcpy(w2, W2, sizeof w2);
    struct fake_layer f;
    memset(&f, 0, sizeof f);
    f.w.hidden = SK;
    f.w.mlp_norm = f.mlp_norm;
    for (int j = 0; j < SK; j++) f.mlp_norm[j] = 2.0f;
    fake_set(&f, QD_LINEAR_GATE, w1, SN1, SK);
    fake_set(&f, QD_LINEAR_UP, w2, SN2, SK);
    struct keep kp = {0};
    qd_sq_params p;
    qd_sq_params_default(&p);
    qd_w8a8_sink sink = {.ctx = &kp, .linear = keep_linear, .report = keep_report};
    qd_w8a8 *c = NULL;
    QD_REQUIRE(qd_smoothquant_new(&p, &sink, NULL, &c, &err) == QD_OK);
    QD_CHECK_OK(run_group(c, &f, QD_CALIB_GATE_UP, X4, 4, SK, &err), &err);
    const float s[SK] = {4.0f, 0.5f, 4.0f, 1e-5f, 3.16227766f}; /* see the first test */
    for (int j = 0; j < SK; j++) QD_CHECK_NEAR(f.mlp_norm[j], 2.0 / s[j], 1e-6 * f.mlp_norm[j]);
    for (int i = 0; i < SN1 * SK; i++) QD_CHECK_NEAR(w1[i], W1[i] * s[i % SK], 1e-6);
    for (int i = 0; i < SN2 * SK; i++) QD_CHECK_NEAR(w2[i], W2[i] * s[i % SK], 1e-6);
    /* codes of the folded gate row 0: [4, -2, 0.5, 5e-6, 0], absmax 4 -> s = 4/127:
     * 127, -63.5 -> -64 (even), 15.875 -> 16, 0, 0 */
    const qd_qlinear *g = &kp.q[QD_LINEAR_GATE];
    QD_REQUIRE(g->codes);
    const int want[5] = {127, -64, 16, 0, 0};
    for (int j = 0; j < 5; j++) QD_CHECK_EQ_INT(g->codes[j], want[j] + 128);
    QD_CHECK_NEAR(g->scales[0], 4.0 / 127.0, 1e-7);
    QD_CHECK(kp.rep[QD_CALIB_GATE_UP].act_amax == 16.0f);
    /* max |x / s| = max(16/4, 1/.5, 4/4, 0, 1e-4/3.16) = 4 */
    QD_CHECK_NEAR(kp.rep[QD_CALIB_GATE_UP].act_amax_smooth, 4.0, 1e-6);
    QD_CHECK(kp.rep[QD_CALIB_GATE_UP].s_min == 1e-5f);
    QD_CHECK_NEAR(kp.rep[QD_CALIB_GATE_UP].s_max, 4.0, 1e-6);
    keep_done(&kp);
    qd_w8a8_free(c);
}

QD_TEST(smoothing_lowers_w8a8_error_with_outlier_channels) {
    /* 64 channels, 3 of them with activations 40x larger (the situation SmoothQuant is for).
     * The report's W8A8 error (per-token int8 activations) with alpha 0.5 must be well below
     * the error without smoothing, computed here independently: per-channel int8 weights
     * (qd_rtn_quantize) and per-token fake-quantized activations of the original tensors. */
    enum { K = 64, N = 48, T = 96 };
    static float w[N * K], w0[N * K], x[T * K], xq[T * K], wd[N * K], y[T * N], yq[T * N];
    uint32_t r = 12345;
    for (int i = 0; i < N * K; i++) {
        r = r * 1664525u + 1013904223u;
        w[i] = w0[i] = ((float)(r >> 8) / 16777216.0f - 0.5f) * 0.2f;
    }
    for (int t = 0; t < T; t++)
        for (int j = 0; j < K; j++) {
            r = r * 1664525u + 1013904223u;
            float v = (float)(r >> 8) / 16777216.0f - 0.5f;
            x[t * K + j] = (j == 5 || j == 17 || j == 40) ? 40.0f * v : v;
        }
    struct fake_layer f;
    memset(&f, 0, sizeof f);
    float norm[K];
    for (int j = 0; j < K; j++) norm[j] = 1.0f;
    f.w.hidden = K;
    f.w.mlp_norm = norm;
    float up[K]; /* a second, tiny linear of the group */
    for (int j = 0; j < K; j++) up[j] = 0.01f;
    fake_set(&f, QD_LINEAR_GATE, w, N, K);
    fake_set(&f, QD_LINEAR_UP, up, 1, K);

    qd_error err = {0};
    struct keep kp = {0};
    qd_sq_params p;
    qd_sq_params_default(&p);
    qd_w8a8_sink sink = {.ctx = &kp, .linear = keep_linear, .report = keep_report};
    qd_w8a8 *c = NULL;
    QD_REQUIRE(qd_smoothquant_new(&p, &sink, NULL, &c, &err) == QD_OK);
    QD_CHECK_OK(run_group(c, &f, QD_CALIB_GATE_UP, x, T, K, &err), &err);
    double sq_err = kp.rep[QD_CALIB_GATE_UP].rel_err;

    /* no smoothing: gate only (the tiny up row adds little either way) */
    qd_qlinear q = {0};
    QD_REQUIRE(qd_rtn_quantize(w0, N, K, 8, K, QD_QRULE_SYM_MAX, QD_DTYPE_F32, &q, &err) ==
               QD_OK);
    qd_qlinear_dequant(&q, wd);
    memcpy(xq, x, sizeof xq);
    qd_act_fake_quant(QD_ACT_QUANT_INT8_TOKEN, 0, xq, T, K);
    qd_matmul_ref(y, x, w0, NULL, T, N, K);
    qd_matmul_ref(yq, xq, wd, NULL, T, N, K);
    double num = 0, den = 0;
    for (int i = 0; i < T * N; i++) {
        num += ((double)yq[i] - y[i]) * ((double)yq[i] - y[i]);
        den += (double)y[i] * y[i];
    }
    double plain_err = num / den;
    printf("  outliers: W8A8 relative error %.3e without smoothing, %.3e with (alpha 0.5)\n",
           plain_err, sq_err);
    QD_CHECK(sq_err > 0);
    QD_CHECK(sq_err < 0.5 * plain_err);
    qd_qlinear_free(&q);
    keep_done(&kp);
    qd_w8a8_free(c);
}

QD_TEST(parameters_are_checked) {
    qd_error err = {0};
    qd_w8a8 *c = NULL;
    qd_sq_params p;
    qd_w8a8_sink sink = {.linear = discard_linear};
    qd_sq_params_default(&p);
    QD_CHECK(p.alpha == 0.5f && p.rule == QD_QRULE_SYM_MAX && !p.static_act);
    p.alpha = 1.5f;
    QD_CHECK_EQ_INT(qd_smoothquant_new(&p, &sink, NULL, &c, &err), QD_ERR_INVALID_ARG);
    QD_CHECK(strstr(err.msg, "alpha") != NULL);
    qd_error_clear(&err);
    p.alpha = NAN;
    QD_CHECK_EQ_INT(qd_smoothquant_new(&p, &sink, NULL, &c, &err), QD_ERR_INVALID_ARG);
    qd_error_clear(&err);
    qd_sq_params_default(&p);
    p.rule = QD_QRULE_ASYM_MINMAX;
    QD_CHECK_EQ_INT(qd_smoothquant_new(&p, &sink, NULL, &c, &err), QD_ERR_INVALID_ARG);
    qd_error_clear(&err);
    qd_sq_params_default(&p);
    p.scale_dtype = QD_DTYPE_I32;
    QD_CHECK_EQ_INT(qd_smoothquant_new(&p, &sink, NULL, &c, &err), QD_ERR_INVALID_ARG);
    qd_error_clear(&err);
    qd_sq_params_default(&p);
    qd_w8a8_sink empty = {0};
    QD_CHECK_EQ_INT(qd_smoothquant_new(&p, &empty, NULL, &c, &err), QD_ERR_INVALID_ARG);
    QD_CHECK(strstr(err.msg, "sink") != NULL);
    qd_error_clear(&err);
    /* a group to smooth without its norm: nothing to fold into */
    QD_REQUIRE(qd_smoothquant_new(&p, &sink, NULL, &c, &err) == QD_OK);
    float wq[2] = {1, 2};
    const float x[2] = {3, 4};
    struct fake_layer f;
    memset(&f, 0, sizeof f);
    f.w.hidden = 2;
    fake_set(&f, QD_LINEAR_GATE, wq, 1, 2);
    fake_set(&f, QD_LINEAR_UP, wq, 1, 2);
    QD_CHECK_EQ_INT(run_group(c, &f, QD_CALIB_GATE_UP, x, 1, 2, &err), QD_ERR_INVALID_ARG);
    QD_CHECK(strstr(err.msg, "norm") != NULL);
    qd_error_clear(&err);
    qd_w8a8_free(c);
    c = NULL;
    qd_fp8_params fp;
    qd_fp8_params_default(&fp);
    QD_CHECK(!fp.weight_per_channel && fp.static_act);
    fp.scale_dtype = QD_DTYPE_F8_E4M3;
    QD_CHECK_EQ_INT(qd_fp8_calib_new(&fp, &sink, NULL, &c, &err), QD_ERR_INVALID_ARG);
    QD_CHECK(c == NULL);
    qd_w8a8_free(NULL);
}

/* ---- (3) FP8 ---- */

/* Row 0 reaches 448 (per tensor: s = 1); row 1's absmax is 224 (per channel: s = 0.5).
 * e4m3 bits: 448 = 1.75 * 2^8 -> 0x7E; 1 -> 0x38; -0.5 -> 0xB0; 3.25 = 1.625 * 2 -> 0x45;
 * 224 -> 0x76; -112 -> 0xEE; 0.5 -> 0x30; 0 -> 0x00; and divided by 0.5: -224 -> 0xF6,
 * 1 -> 0x38. */
static const float WF[2 * 4] = {448.0f, 1.0f, -0.5f, 3.25f, 224.0f, -112.0f, 0.5f, 0.0f};

QD_TEST(fp8_scales_and_codes_by_hand) {
    qd_error err = {0};
    const uint8_t per_tensor[8] = {0x7E, 0x38, 0xB0, 0x45, 0x76, 0xEE, 0x30, 0x00};
    const uint8_t per_channel[8] = {0x7E, 0x38, 0xB0, 0x45, 0x7E, 0xF6, 0x38, 0x00};
    /* The O input's max |x| is 224: static scale 224 / 448 = 0.5; per token, row 0 gets the
     * same and row 1 gets 7/448 = 1/64. Every x / s is exact in e4m3 but 2.2 / 0.5 = 4.4,
     * which becomes 4.5: the only error is 0.05 on channel 3 of token 0, and the weights are
     * exact in both layouts, so the report's error is (0.05 * W[n, 3])^2 summed over n. */
    const float x[2 * 4] = {3, -224, 1, 2.2f, 0, 5, -6, 7};
    double num = 0, den = 0;
    for (int n = 0; n < 2; n++) {
        double dx = 2.25 - (double)2.2f;
        num += dx * WF[n * 4 + 3] * dx * WF[n * 4 + 3];
        for (int t = 0; t < 2; t++) {
            double y = 0;
            for (int j = 0; j < 4; j++) y += (double)x[t * 4 + j] * WF[n * 4 + j];
            den += y * y;
        }
    }
    for (int pc = 0; pc < 2; pc++) {
        float w[8];
        memcpy(w, WF, sizeof w);
        struct fake_layer f;
        memset(&f, 0, sizeof f);
        fake_set(&f, QD_LINEAR_O, w, 2, 4);
        struct keep k = {0};
        qd_fp8_params p;
        qd_fp8_params_default(&p);
        p.weight_per_channel = pc;
        p.static_act = !pc;
        qd_w8a8_sink sink = {.ctx = &k, .linear = keep_linear, .report = keep_report};
        qd_w8a8 *c = NULL;
        QD_REQUIRE(qd_fp8_calib_new(&p, &sink, NULL, &c, &err) == QD_OK);
        QD_CHECK_OK(run_group(c, &f, QD_CALIB_O, x, 2, 4, &err), &err);
        const qd_qlinear *q = &k.q[QD_LINEAR_O];
        QD_REQUIRE(q->codes);
        QD_CHECK_EQ_INT(q->type, QD_QTYPE_FP8_E4M3);
        const uint8_t *want = pc ? per_channel : per_tensor;
        for (int i = 0; i < 8; i++) QD_CHECK_EQ_INT(q->codes[i], want[i]);
        QD_CHECK(q->scales[0] == 1.0f);
        QD_CHECK(q->scales[q->n_groups] == (pc ? 0.5f : 1.0f));
        QD_CHECK(q->act_scale == (pc ? 0.0f : 0.5f));
        QD_CHECK_NEAR(k.rep[QD_CALIB_O].rel_err, num / den, 1e-3 * num / den);
        keep_done(&k);
        qd_w8a8_free(c);
    }
}

QD_TEST(fp8_round_trip_of_every_e4m3_value) {
    /* one row holding every finite e4m3 value (both zeros too): the absmax is 448, so s = 1 and
     * each code must come back as the bits it was made from */
    qd_error err = {0};
    float w[254];
    uint8_t bits[254];
    int n = 0;
    for (int b = 0; b < 256; b++) {
        if ((b & 0x7F) == 0x7F) continue; /* NaN */
        bits[n] = (uint8_t)b;
        w[n++] = qd_e4m3_to_fp32((uint8_t)b);
    }
    QD_REQUIRE(n == 254);
    float xin[254];
    for (int j = 0; j < 254; j++) xin[j] = 1.0f;
    struct fake_layer f;
    memset(&f, 0, sizeof f);
    fake_set(&f, QD_LINEAR_DOWN, w, 1, 254);
    struct keep k = {0};
    qd_fp8_params p;
    qd_fp8_params_default(&p);
    qd_w8a8_sink sink = {.ctx = &k, .linear = keep_linear};
    qd_w8a8 *c = NULL;
    QD_REQUIRE(qd_fp8_calib_new(&p, &sink, NULL, &c, &err) == QD_OK);
    QD_CHECK_OK(run_group(c, &f, QD_CALIB_DOWN, xin, 1, 254, &err), &err);
    const qd_qlinear *q = &k.q[QD_LINEAR_DOWN];
    QD_REQUIRE(q->codes);
    QD_CHECK(q->scales[0] == 1.0f);
    float back[254];
    qd_qlinear_dequant(q, back);
    int bad = 0;
    for (int j = 0; j < 254; j++) bad += q->codes[j] != bits[j] || back[j] != w[j];
    QD_CHECK_EQ_INT(bad, 0);
    QD_CHECK(q->act_scale == 1.0f / 448.0f);
    keep_done(&k);
    qd_w8a8_free(c);
}

QD_TEST(fp8_static_scale_is_shared_by_the_fused_group) {
    /* q/k/v read one tensor: each keeps its own input scale, and they are equal (amax / 448);
     * FP8 does not smooth, so the norm is untouched */
    qd_error err = {0};
    float q[4] = {1, 2, 3, 4}, kw[8] = {1, 0, 0, 1, -1, 0, 0, -8}, v[4] = {0.5f, 0, 0, 0};
    const float x[2 * 4] = {1, -896, 3, 4, 5, 6, 7, 8}; /* amax 896 -> 2 */
    struct fake_layer f;
    memset(&f, 0, sizeof f);
    f.w.hidden = 4;
    f.w.attn_norm = f.attn_norm;
    for (int j = 0; j < 4; j++) f.attn_norm[j] = 3.0f;
    fake_set(&f, QD_LINEAR_Q, q, 1, 4);
    fake_set(&f, QD_LINEAR_K, kw, 2, 4);
    fake_set(&f, QD_LINEAR_V, v, 1, 4);
    struct keep k = {0};
    qd_fp8_params p;
    qd_fp8_params_default(&p);
    qd_w8a8_sink sink = {.ctx = &k, .linear = keep_linear};
    qd_w8a8 *c = NULL;
    QD_REQUIRE(qd_fp8_calib_new(&p, &sink, NULL, &c, &err) == QD_OK);
    QD_CHECK_OK(run_group(c, &f, QD_CALIB_QKV, x, 2, 4, &err), &err);
    QD_CHECK_EQ_INT(k.n_linear, 3);
    for (int i = QD_LINEAR_Q; i <= QD_LINEAR_V; i++) QD_CHECK(k.q[i].act_scale == 2.0f);
    /* each linear its own per-tensor weight scale: 4/448, 8/448, 0.5/448 */
    QD_CHECK(k.q[QD_LINEAR_Q].scales[0] == 4.0f / 448.0f);
    QD_CHECK(k.q[QD_LINEAR_K].scales[0] == 8.0f / 448.0f);
    QD_CHECK(k.q[QD_LINEAR_V].scales[0] == 0.5f / 448.0f);
    for (int j = 0; j < 4; j++) QD_CHECK(f.attn_norm[j] == 3.0f);
    keep_done(&k);
    qd_w8a8_free(c);
}

/* ---- activation fake quantization ---- */

QD_TEST(activation_fake_quant_by_hand) {
    /* INT8_TOKEN: row absmax 127 -> s = 1: 127, -63.5 -> -64, 0.5 -> 0, 1.5 -> 2; a zero row
     * stays zero; row absmax 254 -> s = 2: 5 -> 2.5 -> 2 -> 4 */
    float a[3 * 4] = {127, -63.5f, 0.5f, 1.5f, 0, 0, 0, 0, 254, 5, -3, 1};
    qd_act_fake_quant(QD_ACT_QUANT_INT8_TOKEN, 0, a, 3, 4);
    const float wa[12] = {127, -64, 0, 2, 0, 0, 0, 0, 254, 4, -4, 0};
    for (int i = 0; i < 12; i++) QD_CHECK(a[i] == wa[i]);
    /* INT8_TENSOR s = 0.5: 100 -> 200 -> clamp 127 -> 63.5; -70 -> -140 -> -128 -> -64;
     * 0.25 -> 0.5 -> 0; 0.75 -> 1.5 -> 2 -> 1 */
    float b[4] = {100, -70, 0.25f, 0.75f};
    qd_act_fake_quant(QD_ACT_QUANT_INT8_TENSOR, 0.5f, b, 1, 4);
    QD_CHECK(b[0] == 63.5f && b[1] == -64.0f && b[2] == 0.0f && b[3] == 1.0f);
    /* FP8_TENSOR s = 2: 1000 -> 500 -> 448 -> 896; 3 -> 1.5 (exact) -> 3; 2.125 -> 1.0625,
     * half-way between 1 and 1.125 -> 1 (even) -> 2 */
    float c[3] = {1000, 3, 2.125f};
    qd_act_fake_quant(QD_ACT_QUANT_FP8_TENSOR, 2.0f, c, 1, 3);
    QD_CHECK(c[0] == 896.0f && c[1] == 3.0f && c[2] == 2.0f);
    /* FP8_TOKEN: absmax 448 -> s = 1: -17 sits between 16 and 18 (step 2) -> 16 (even) */
    float d[3] = {448, -17, 0.3f};
    qd_act_fake_quant(QD_ACT_QUANT_FP8_TOKEN, 0, d, 1, 3);
    QD_CHECK(d[0] == 448.0f && d[1] == -16.0f);
    QD_CHECK(d[2] == qd_e4m3_to_fp32(qd_fp32_to_e4m3(0.3f)));
    /* no usable scale: unchanged */
    float e[2] = {1.3f, -2.7f};
    qd_act_fake_quant(QD_ACT_QUANT_INT8_TENSOR, 0.0f, e, 1, 2);
    qd_act_fake_quant(QD_ACT_QUANT_NONE, 1.0f, e, 1, 2);
    QD_CHECK(e[0] == 1.3f && e[1] == -2.7f);
}

QD_TEST(activation_hook_uses_the_fused_max_scale) {
    qd_error err = {0};
    qd_act_fq t;
    QD_REQUIRE(qd_act_fq_init(&t, QD_ACT_QUANT_INT8_TENSOR, 2, &err) == QD_OK);
    QD_CHECK_OK(qd_act_fq_set(&t, 1, QD_LINEAR_Q, 0.5f, &err), &err);
    QD_CHECK_OK(qd_act_fq_set(&t, 1, QD_LINEAR_K, 1.0f, &err), &err);
    QD_CHECK_OK(qd_act_fq_set(&t, 1, QD_LINEAR_V, 0.25f, &err), &err);
    /* the q/k/v input is quantized once with s = 1 (the max): 100 stays, 200 -> 127 */
    float x[3] = {100, 200, -0.5f};
    QD_CHECK_OK(qd_act_fq_apply(&t, 1, QD_LINEAR_Q, x, 1, 3, &err), &err);
    QD_CHECK(x[0] == 100.0f && x[1] == 127.0f && x[2] == 0.0f);
    /* no scale recorded for layer 0, k_proj does not start a group, layer out of range */
    QD_CHECK_EQ_INT(qd_act_fq_apply(&t, 0, QD_LINEAR_O, x, 1, 3, &err), QD_ERR_PRECONDITION);
    qd_error_clear(&err);
    QD_CHECK_EQ_INT(qd_act_fq_apply(&t, 1, QD_LINEAR_K, x, 1, 3, &err), QD_ERR_INVALID_ARG);
    qd_error_clear(&err);
    QD_CHECK_EQ_INT(qd_act_fq_apply(&t, 2, QD_LINEAR_O, x, 1, 3, &err), QD_ERR_INVALID_ARG);
    qd_error_clear(&err);
    QD_CHECK_EQ_INT(qd_act_fq_set(&t, 2, QD_LINEAR_O, 1.0f, &err), QD_ERR_INVALID_ARG);
    qd_error_clear(&err);
    qd_act_fq_done(&t);
    /* dynamic modes need no table entries */
    QD_REQUIRE(qd_act_fq_init(&t, QD_ACT_QUANT_INT8_TOKEN, 1, &err) == QD_OK);
    float y[2] = {127, 0.5f};
    QD_CHECK_OK(qd_act_fq_apply(&t, 0, QD_LINEAR_DOWN, y, 1, 2, &err), &err);
    QD_CHECK(y[0] == 127.0f && y[1] == 0.0f);
    qd_act_fq_done(&t);
    qd_act_fq_done(&t); /* twice is fine */
}

/* ---- (4) end to end on babyllama ---- */

enum { BL = 5, HID = 128 };

/* Everything a sink receives for the whole model. */
struct model_store {
    qd_qlinear q[BL][QD_LINEAR_COUNT];
    float attn_norm[BL][HID], mlp_norm[BL][HID];
    int n_linear, n_norms;
    qd_act_fq act;
    double worst_err[QD_CALIB_GROUP_COUNT];
};

static qd_err store_linear(void *ctx, int layer, qd_linear_kind kind, qd_qlinear *q,
                           qd_error *err) {
    struct model_store *s = ctx;
    if (layer < 0 || layer >= BL)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "layer %d out of range", layer);
    s->q[layer][kind] = *q;
    memset(q, 0, sizeof *q);
    s->n_linear++;
    return qd_act_fq_set(&s->act, layer, kind, s->q[layer][kind].act_scale, err);
}

static qd_err store_norms(void *ctx, int layer, const float *attn_norm, const float *mlp_norm,
                          int64_t hidden, qd_error *err) {
    struct model_store *s = ctx;
    if (hidden != HID)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "hidden %lld", (long long)hidden);
    memcpy(s->attn_norm[layer], attn_norm, sizeof s->attn_norm[layer]);
    memcpy(s->mlp_norm[layer], mlp_norm, sizeof s->mlp_norm[layer]);
    s->n_norms++;
    return QD_OK;
}

static void store_report(void *ctx, const qd_w8a8_report *r) {
    struct model_store *s = ctx;
    if (r->rel_err > s->worst_err[r->group]) s->worst_err[r->group] = r->rel_err;
}

static void store_done(struct model_store *s) {
    for (int l = 0; l < BL; l++)
        for (int k = 0; k < QD_LINEAR_COUNT; k++) qd_qlinear_free(&s->q[l][k]);
    qd_act_fq_done(&s->act);
}

/* on_weights: the stored norms and the dequantized linears replace the layer's weights */
static qd_err replace_weights(void *ctx, qd_layer_weights *w, qd_error *err) {
    struct model_store *s = ctx;
    for (int k = 0; k < QD_LINEAR_COUNT; k++) {
        const qd_qlinear *q = &s->q[w->layer][k];
        if (!q->codes || q->n != w->n_out[k] || q->k != w->n_in[k])
            return qd_error_set(err, QD_ERR_PRECONDITION, "layer %d %s: no quantized weight",
                                w->layer, qd_linear_name(k));
        qd_qlinear_dequant(q, w->w[k]);
    }
    memcpy(w->attn_norm, s->attn_norm[w->layer], sizeof s->attn_norm[w->layer]);
    memcpy(w->mlp_norm, s->mlp_norm[w->layer], sizeof s->mlp_norm[w->layer]);
    return QD_OK;
}

static double ppl_of(const double *nll, int64_t n_seq, int64_t seq_len) {
    double s = 0;
    for (int64_t r = 0; r < n_seq; r++) s += nll[r];
    return exp(s / (double)(n_seq * (seq_len - 1)));
}

/* A tensor of the model converted to fp32 (caller frees), or NULL. */
static float *model_tensor_f32(const qd_model *m, const char *name, int64_t n) {
    qd_error err = {0};
    const qd_st_entry *e = qd_st_model_find(qd_model_weights(m), name);
    float *out = malloc((size_t)n * sizeof *out);
    if (!e || !out || qd_convert(QD_DTYPE_F32, out, e->dtype, e->data, (size_t)n, &err)) {
        free(out);
        return NULL;
    }
    return out;
}

/*
 * Perplexity with quantized weights AND activations: the model's forward pass rebuilt from
 * model.h's pieces, calling qd_act_fq_apply exactly where the proposed runtime hook
 * (qd_run_opts.on_linear_input) would: on the q/k/v input after input_layernorm, on o_proj's
 * input, on the gate/up input after post_attention_layernorm, and on down_proj's input.
 * The attention and MLP blocks are run for their inner activation and the o_proj / down_proj
 * GEMMs redone on the quantized copy. Returns -1 on failure.
 */
static double w8a8_perplexity(const qd_model *m, struct model_store *s, const int32_t *tok,
                              int64_t n_seq, int64_t seq_len) {
    const qd_llama_config *cfg = qd_model_config(m);
    int64_t T = n_seq * seq_len, V = cfg->vocab_size, inter = cfg->intermediate_size;
    int64_t qdim = (int64_t)cfg->num_attention_heads * cfg->head_dim;
    float *x = malloc(sizeof(float) * (size_t)(T * HID));
    float *xn = malloc(sizeof(float) * (size_t)(T * HID));
    float *h = malloc(sizeof(float) * (size_t)(T * HID));
    float *y = malloc(sizeof(float) * (size_t)(T * HID));
    float *att = malloc(sizeof(float) * (size_t)(T * qdim));
    float *act = malloc(sizeof(float) * (size_t)(T * inter));
    float *logits = malloc(sizeof(float) * (size_t)V);
    float *fnorm = model_tensor_f32(m, "model.norm.weight", HID);
    float *head = model_tensor_f32(m, cfg->tie_word_embeddings ? "model.embed_tokens.weight"
                                                               : "lm_head.weight", V * HID);
    double ppl = -1, nll = 0;
    qd_error err = {0};
    qd_err rc = QD_OK;
    if (!x || !xn || !h || !y || !att || !act || !logits || !fnorm || !head) goto done;
    if ((rc = qd_model_embed(m, tok, T, x, &err))) goto done;
    for (int l = 0; l < cfg->num_hidden_layers && !rc; l++) {
        qd_layer_weights w;
        if ((rc = qd_layer_weights_load(m, l, &w, &err))) break;
        rc = replace_weights(s, &w, &err);
        if (!rc) {
            qd_model_rmsnorm(m, x, w.attn_norm, T, xn, NULL);
            rc = qd_act_fq_apply(&s->act, l, QD_LINEAR_Q, xn, T, HID, &err);
        }
        if (!rc) rc = qd_block_attention(m, &w, xn, n_seq, seq_len, y, att, NULL, &err);
        if (!rc) rc = qd_act_fq_apply(&s->act, l, QD_LINEAR_O, att, T, qdim, &err);
        if (!rc) {
            qd_linear_forward(&w, QD_LINEAR_O, att, T, y, NULL);
            for (int64_t i = 0; i < T * HID; i++) h[i] = x[i] + y[i];
            qd_model_rmsnorm(m, h, w.mlp_norm, T, xn, NULL);
            rc = qd_act_fq_apply(&s->act, l, QD_LINEAR_GATE, xn, T, HID, &err);
        }
        if (!rc) rc = qd_block_mlp(m, &w, xn, T, y, act, NULL, &err);
        if (!rc) rc = qd_act_fq_apply(&s->act, l, QD_LINEAR_DOWN, act, T, inter, &err);
        if (!rc) {
            qd_linear_forward(&w, QD_LINEAR_DOWN, act, T, y, NULL);
            for (int64_t i = 0; i < T * HID; i++) x[i] = h[i] + y[i];
        }
        qd_layer_weights_done(&w);
    }
    if (rc) goto done;
    qd_model_rmsnorm(m, x, fnorm, T, xn, NULL);
    for (int64_t t = 0; t < T; t++) {
        if (t % seq_len == seq_len - 1) continue; /* the last position predicts nothing */
        qd_matmul_cpu(logits, xn + t * HID, head, NULL, 1, V, HID);
        double mx = logits[0], z = 0;
        for (int64_t v = 1; v < V; v++) mx = logits[v] > mx ? logits[v] : mx;
        for (int64_t v = 0; v < V; v++) z += exp((double)logits[v] - mx);
        nll += mx + log(z) - logits[tok[t + 1]];
    }
    ppl = exp(nll / (double)(n_seq * (seq_len - 1)));
done:
    if (rc) fprintf(stderr, "w8a8 perplexity: %s\n", qd_error_text(&err));
    free(x);
    free(xn);
    free(h);
    free(y);
    free(att);
    free(act);
    free(logits);
    free(fnorm);
    free(head);
    return ppl;
}

struct e2e {
    qd_model *m;
    int32_t *calib, *eval;
    int64_t calib_len, eval_len;
    double fp32_ppl;
};

enum { CALIB_ROWS = 8, EVAL_ROWS = 32 };

static bool e2e_open(struct e2e *e) {
    memset(e, 0, sizeof *e);
    e->m = open_baby();
    e->calib = load_rows(BABY_CALIB, CALIB_ROWS, &e->calib_len);
    e->eval = load_rows(BABY_EVAL, EVAL_ROWS, &e->eval_len);
    return e->m && e->calib && e->eval;
}

static void e2e_close(struct e2e *e) {
    free(e->calib);
    free(e->eval);
    qd_model_free(e->m);
}

/* Calibrate with ctx c (its sink writes into s), then return the weights-only perplexity. */
static double calibrate_and_eval(struct e2e *e, qd_w8a8 *c, struct model_store *s) {
    qd_error err = {0};
    qd_calib_callbacks cb;
    qd_w8a8_callbacks(c, &cb);
    qd_calib_opts o = {.propagate = QD_CALIB_PROPAGATE_ORIGINAL};
    if (qd_calib_run(e->m, e->calib, CALIB_ROWS, e->calib_len, &o, &cb, &err)) {
        fprintf(stderr, "calibration: %s\n", qd_error_text(&err));
        return -1;
    }
    if (s->n_linear != BL * QD_LINEAR_COUNT || s->n_norms != BL) return -1;
    double nll[EVAL_ROWS];
    qd_run_opts ro = {.on_weights = replace_weights, .hook_ctx = s};
    if (qd_model_nll(e->m, e->eval, EVAL_ROWS, e->eval_len, &ro, nll, &err)) {
        fprintf(stderr, "eval: %s\n", qd_error_text(&err));
        return -1;
    }
    return ppl_of(nll, EVAL_ROWS, e->eval_len);
}

/* PROPAGATION (smoothquant.h): the callbacks never write quantized weights back, so MODIFIED
 * propagation sees the float model too and must give the same smoothing (hence the same folded
 * norms) as ORIGINAL, up to float rounding, and almost always the same codes. */
QD_TEST(modified_propagation_gives_the_same_smoothing) {
    qd_error err = {0};
    struct e2e e;
    QD_REQUIRE(e2e_open(&e));
    struct model_store *s[2] = {calloc(1, sizeof **s), calloc(1, sizeof **s)};
    QD_REQUIRE(s[0] && s[1]);
    enum { ROWS = 2, LEN = 64 };
    int32_t tok[ROWS * LEN];
    for (int r = 0; r < ROWS; r++)
        memcpy(tok + r * LEN, e.calib + r * e.calib_len, sizeof(int32_t) * LEN);
    for (int i = 0; i < 2; i++) {
        QD_REQUIRE(qd_act_fq_init(&s[i]->act, QD_ACT_QUANT_INT8_TOKEN, BL, &err) == QD_OK);
        qd_sq_params p;
        qd_sq_params_default(&p);
        qd_w8a8_sink sink = {.ctx = s[i], .linear = store_linear, .norms = store_norms};
        qd_w8a8 *c = NULL;
        QD_REQUIRE(qd_smoothquant_new(&p, &sink, NULL, &c, &err) == QD_OK);
        qd_calib_callbacks cb;
        qd_w8a8_callbacks(c, &cb);
        qd_calib_opts o = {.propagate = i ? QD_CALIB_PROPAGATE_MODIFIED
                                          : QD_CALIB_PROPAGATE_ORIGINAL};
        QD_CHECK_OK(qd_calib_run(e.m, tok, ROWS, LEN, &o, &cb, &err), &err);
        qd_w8a8_free(c);
    }
    QD_REQUIRE(s[0]->n_norms == BL && s[1]->n_norms == BL);
    double worst = 0;
    int64_t differ = 0, total = 0;
    for (int l = 0; l < BL; l++) {
        worst = fmax(worst, rel_diff_max(s[1]->attn_norm[l], s[0]->attn_norm[l], HID));
        worst = fmax(worst, rel_diff_max(s[1]->mlp_norm[l], s[0]->mlp_norm[l], HID));
        for (int k = 0; k < QD_LINEAR_COUNT; k++) {
            const qd_qlinear *a = &s[0]->q[l][k], *b = &s[1]->q[l][k];
            QD_REQUIRE(a->codes && b->codes && a->n == b->n && a->k == b->k);
            for (int64_t i = 0; i < (int64_t)a->n * a->k; i++) differ += a->codes[i] != b->codes[i];
            total += (int64_t)a->n * a->k;
        }
    }
    QD_CHECK_MSG(worst < 1e-4, "folded norms differ by %g between the modes", worst);
    QD_CHECK_MSG(differ <= total / 1000, "%lld of %lld codes differ", (long long)differ,
                 (long long)total);
    for (int i = 0; i < 2; i++) {
        store_done(s[i]);
        free(s[i]);
    }
    e2e_close(&e);
}

QD_TEST(end_to_end_babyllama_perplexity) {
    qd_error err = {0};
    struct e2e e;
    QD_REQUIRE(e2e_open(&e));
    double nll[EVAL_ROWS];
    QD_CHECK_OK(qd_model_nll(e.m, e.eval, EVAL_ROWS, e.eval_len, NULL, nll, &err), &err);
    double fp32 = ppl_of(nll, EVAL_ROWS, e.eval_len);
    QD_CHECK_NEAR(fp32, BABY_FP32_PPL, 0.00005 * BABY_FP32_PPL);
    printf("  babyllama eval perplexity: fp32 %.4f (reference %.4f)\n", fp32, BABY_FP32_PPL);

    /* SmoothQuant W8 (alpha 0.5), static activation scales recorded */
    struct model_store *s = calloc(1, sizeof *s);
    QD_REQUIRE(s);
    QD_REQUIRE(qd_act_fq_init(&s->act, QD_ACT_QUANT_INT8_TENSOR, BL, &err) == QD_OK);
    qd_sq_params p;
    qd_sq_params_default(&p);
    p.static_act = true;
    qd_w8a8_sink sink = {.ctx = s, .linear = store_linear, .norms = store_norms,
                         .report = store_report};
    qd_w8a8 *c = NULL;
    QD_REQUIRE(qd_smoothquant_new(&p, &sink, NULL, &c, &err) == QD_OK);
    double sq = calibrate_and_eval(&e, c, s);
    QD_CHECK_MSG(fabs(sq - fp32) <= 0.005 * fp32, "smoothquant w8 ppl %.4f vs fp32 %.4f", sq,
                 fp32);
    QD_CHECK(sq != fp32); /* the weights really were quantized */
    /* the norms were smoothed, the weights are int8 per channel with a static act scale */
    QD_CHECK(s->q[0][QD_LINEAR_Q].bits == 8 && s->q[0][QD_LINEAR_Q].n_groups == 1);
    QD_CHECK(s->q[2][QD_LINEAR_DOWN].act_scale > 0);
    for (int g = 0; g < QD_CALIB_GROUP_COUNT; g++)
        QD_CHECK(s->worst_err[g] > 0 && s->worst_err[g] < 0.05);
    double sq_static = w8a8_perplexity(e.m, s, e.eval, EVAL_ROWS, e.eval_len);
    s->act.mode = QD_ACT_QUANT_INT8_TOKEN;
    double sq_token = w8a8_perplexity(e.m, s, e.eval, EVAL_ROWS, e.eval_len);
    printf("  smoothquant (alpha 0.5): W8 %.4f (%+.3f%%), W8A8 per-token %.4f, "
           "W8A8 static %.4f; worst group errors qkv %.2e o %.2e gate_up %.2e down %.2e\n",
           sq, 100 * (sq / fp32 - 1), sq_token, sq_static, s->worst_err[0], s->worst_err[1],
           s->worst_err[2], s->worst_err[3]);
    QD_CHECK(sq_token > 0 && fabs(sq_token - fp32) <= 0.02 * fp32);
    QD_CHECK(sq_static > 0 && fabs(sq_static - fp32) <= 0.05 * fp32);
    QD_CHECK(sq_token != sq); /* activation quantization did something */
    store_done(s);
    qd_w8a8_free(c);

    /* FP8: per-tensor weights with static activations, per-channel with dynamic ones */
    for (int pc = 0; pc < 2; pc++) {
        memset(s, 0, sizeof *s);
        qd_act_quant mode = pc ? QD_ACT_QUANT_FP8_TOKEN : QD_ACT_QUANT_FP8_TENSOR;
        QD_REQUIRE(qd_act_fq_init(&s->act, mode, BL, &err) == QD_OK);
        qd_fp8_params fp;
        qd_fp8_params_default(&fp);
        fp.weight_per_channel = pc;
        fp.static_act = !pc;
        QD_REQUIRE(qd_fp8_calib_new(&fp, &sink, NULL, &c, &err) == QD_OK);
        double f8 = calibrate_and_eval(&e, c, s);
        QD_CHECK_MSG(fabs(f8 - fp32) <= 0.005 * fp32, "fp8 ppl %.4f vs fp32 %.4f", f8, fp32);
        QD_CHECK(f8 != fp32);
        QD_CHECK(s->q[1][QD_LINEAR_GATE].type == QD_QTYPE_FP8_E4M3);
        QD_CHECK((s->q[1][QD_LINEAR_GATE].act_scale > 0) == !pc);
        double f8a = w8a8_perplexity(e.m, s, e.eval, EVAL_ROWS, e.eval_len);
        printf("  fp8 %s weights: W8 %.4f (%+.3f%%), W8A8 %s %.4f\n",
               pc ? "per-channel" : "per-tensor", f8, 100 * (f8 / fp32 - 1),
               pc ? "per-token" : "static", f8a);
        QD_CHECK(f8a > 0 && fabs(f8a - fp32) <= 0.02 * fp32);
        store_done(s);
        qd_w8a8_free(c);
    }
    free(s);
    e2e_close(&e);
}

QD_TEST_MAIN()
