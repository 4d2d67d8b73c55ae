/*
 * smoothquant.c - SmoothQuant W8A8 and FP8 e4m3 as calibration-driver callbacks, and the
 * activation fake quantization used to evaluate them (smoothquant.h gives the formulas).
 *
 * DESIGN
 * One context type serves both methods; they differ only in how a group is smoothed (FP8: not
 * at all), how a weight is quantized and which activation quantizer the static scale and the
 * error measurement use. Per group callback:
 *
 *   act = channel max |x|  ->  (QKV, GATE_UP and SmoothQuant only) s, fold into norm and W
 *   ->  quantize every linear of the group from the (folded) fp32 weight
 *   ->  act_scale from max |x / s|  ->  [error of the group's outputs]  ->  sink, in order
 *
 * and layer_end hands the folded norms to the sink. The layer's weights keep the FOLDED FLOAT
 * values: folding is exact in real arithmetic, so whatever the driver computes next from them
 * is the float model's value (up to rounding) and the scales of later layers match the
 * reference's, which collects all act_scales on the float model first (smoothquant.h,
 * PROPAGATION). The error measurement walks the calibration tokens in chunks of ERR_CHUNK rows
 * and one linear at a time, so its scratch is one dequantized weight plus a few chunk buffers,
 * whatever the number of tokens.
 */
#include "smoothquant.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dtype.h"
#include "ops.h"
#include "rtn.h"

/* Calibration tokens per chunk of the error measurement. */
#define ERR_CHUNK 256

/* Lower bounds of the reference smooth.py: weight maxima and factors are clamped to 1e-5. */
#define SQ_MIN_W 1e-5
#define SQ_MIN_S 1e-5
/* The reference fake_quant.py clamps a token's absmax to 1e-5 before dividing by 127; the same
 * bound keeps a static scale of an all-zero input positive. */
#define ACT_MIN_AMAX 1e-5f
#define FP8_MAX 448.0f
#define INT8_MAX_CODE 127.0f

typedef enum w8a8_method { METHOD_SMOOTHQUANT, METHOD_FP8 } w8a8_method;

struct qd_w8a8 {
    w8a8_method method;
    qd_sq_params sq;
    qd_fp8_params fp8;
    qd_w8a8_sink sink;
    qd_run_opts run;
};

/* ---- parameters ---- */

void qd_sq_params_default(qd_sq_params *p) {
    memset(p, 0, sizeof *p);
    p->alpha = 0.5f;
    p->rule = QD_QRULE_SYM_MAX;
    p->scale_dtype = QD_DTYPE_F32;
    p->static_act = false;
}

void qd_fp8_params_default(qd_fp8_params *p) {
    memset(p, 0, sizeof *p);
    p->weight_per_channel = false;
    p->static_act = true;
    p->scale_dtype = QD_DTYPE_F32;
}

static bool scale_dtype_ok(qd_dtype t) {
    return t == QD_DTYPE_F32 || t == QD_DTYPE_F16 || t == QD_DTYPE_BF16;
}

static qd_err check_common(const char *what, qd_dtype scale_dtype, const qd_w8a8_sink *sink,
                           qd_w8a8 **ret, qd_error *err) {
    if (!ret) return qd_error_set(err, QD_ERR_INVALID_ARG, "%s: no result pointer", what);
    if (!scale_dtype_ok(scale_dtype))
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "%s: scale dtype %s is not one of F32, F16, BF16", what,
                            qd_dtype_name(scale_dtype));
    if (!sink || !sink->linear)
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "%s: the sink has no linear callback (the results would be lost)",
                            what);
    return QD_OK;
}

static qd_err new_ctx(w8a8_method method, const qd_w8a8_sink *sink, const qd_run_opts *run,
                      qd_w8a8 **ret, qd_error *err) {
    qd_w8a8 *c = calloc(1, sizeof *c);
    if (!c) return qd_error_set(err, QD_ERR_NOMEM, "no memory for a W8A8 context");
    c->method = method;
    c->sink = *sink;
    if (run) c->run = *run;
    *ret = c;
    return QD_OK;
}

qd_err qd_smoothquant_new(const qd_sq_params *p, const qd_w8a8_sink *sink,
                          const qd_run_opts *run, qd_w8a8 **ret, qd_error *err) {
    if (!p) return qd_error_set(err, QD_ERR_INVALID_ARG, "smoothquant: no parameters");
    qd_err rc = check_common("smoothquant", p->scale_dtype, sink, ret, err);
    if (rc) return rc;
    /* Written so that NaN fails too. */
    if (!(p->alpha >= 0.0f && p->alpha <= 1.0f))
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "smoothquant: alpha %g outside [0, 1]", (double)p->alpha);
    if (!qd_qrule_valid((int)p->rule) || !qd_qrule_symmetric(p->rule))
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "smoothquant: weight rule %d is not a symmetric rule (W8A8 int8 "
                            "weights have no zero point)", (int)p->rule);
    qd_w8a8 *c = NULL;
    if ((rc = new_ctx(METHOD_SMOOTHQUANT, sink, run, &c, err))) return rc;
    c->sq = *p;
    *ret = c;
    return QD_OK;
}

qd_err qd_fp8_calib_new(const qd_fp8_params *p, const qd_w8a8_sink *sink,
                        const qd_run_opts *run, qd_w8a8 **ret, qd_error *err) {
    if (!p) return qd_error_set(err, QD_ERR_INVALID_ARG, "fp8: no parameters");
    qd_err rc = check_common("fp8", p->scale_dtype, sink, ret, err);
    if (rc) return rc;
    qd_w8a8 *c = NULL;
    if ((rc = new_ctx(METHOD_FP8, sink, run, &c, err))) return rc;
    c->fp8 = *p;
    *ret = c;
    return QD_OK;
}

void qd_w8a8_free(qd_w8a8 *c) {
    free(c);
}

/* ---- the SmoothQuant math ---- */

void qd_channel_amax(const float *x, int64_t n_tok, int64_t n_in, float *ret_amax) {
    for (int64_t j = 0; j < n_in; j++) ret_amax[j] = 0.0f;
    for (int64_t t = 0; t < n_tok; t++) {
        const float *xt = x + t * n_in;
        for (int64_t j = 0; j < n_in; j++) {
            float a = fabsf(xt[j]);
            if (a > ret_amax[j]) ret_amax[j] = a;
        }
    }
}

void qd_sq_scales(const float *act_amax, const float *const *ws, const int64_t *n_out, int n_w,
                  int64_t n_in, float alpha, float *ret_s) {
    /* w[j]: max over every row of every linear of the group (the reference concatenates the
     * per-linear column maxima and takes the max). Kept in ret_s until s replaces it. */
    for (int64_t j = 0; j < n_in; j++) ret_s[j] = 0.0f;
    for (int i = 0; i < n_w; i++)
        for (int64_t n = 0; n < n_out[i]; n++) {
            const float *row = ws[i] + n * n_in;
            for (int64_t j = 0; j < n_in; j++) {
                float a = fabsf(row[j]);
                if (a > ret_s[j]) ret_s[j] = a;
            }
        }
    /* Double for the powers: s is then the correctly rounded value of the formula. */
    for (int64_t j = 0; j < n_in; j++) {
        double w = ret_s[j] > SQ_MIN_W ? ret_s[j] : SQ_MIN_W;
        double s = pow((double)act_amax[j], alpha) / pow(w, 1.0 - alpha);
        ret_s[j] = (float)(s > SQ_MIN_S ? s : SQ_MIN_S);
    }
}

void qd_sq_fold(const float *s, float *norm, float *const *ws, const int64_t *n_out, int n_w,
                int64_t n_in) {
    if (norm)
        for (int64_t j = 0; j < n_in; j++) norm[j] /= s[j];
    for (int i = 0; i < n_w; i++)
        for (int64_t n = 0; n < n_out[i]; n++) {
            float *row = ws[i] + n * n_in;
            for (int64_t j = 0; j < n_in; j++) row[j] *= s[j];
        }
}

/* ---- activation fake quantization ---- */

static float row_amax(const float *x, int64_t n) {
    float m = 0.0f;
    for (int64_t j = 0; j < n; j++) {
        float a = fabsf(x[j]);
        if (a > m) m = a;
    }
    return m;
}

/* x' = round(x / s) * s with the code clamped to [lo, hi]; rintf rounds half to even in the
 * default rounding mode, as torch.round. */
static void fq_int(float *x, int64_t n, float s, float lo, float hi) {
    for (int64_t j = 0; j < n; j++) {
        float q = rintf(x[j] / s);
        q = q < lo ? lo : (q > hi ? hi : q);
        x[j] = q * s;
    }
}

static void fq_fp8(float *x, int64_t n, float s) {
    for (int64_t j = 0; j < n; j++) x[j] = qd_e4m3_to_fp32(qd_fp32_to_e4m3_sat(x[j] / s)) * s;
}

void qd_act_fake_quant(qd_act_quant mode, float scale, float *x, int64_t n_tok, int64_t n_in) {
    bool tensor = mode == QD_ACT_QUANT_INT8_TENSOR || mode == QD_ACT_QUANT_FP8_TENSOR;
    if (tensor && !(scale > 0.0f && isfinite(scale))) return;
    for (int64_t t = 0; t < n_tok; t++) {
        float *xt = x + t * n_in;
        float s;
        switch (mode) {
        case QD_ACT_QUANT_INT8_TOKEN: {
            float a = row_amax(xt, n_in);
            s = (a > ACT_MIN_AMAX ? a : ACT_MIN_AMAX) / INT8_MAX_CODE;
            /* |x / s| <= 127 by construction: the clamp never acts (the reference has none) */
            fq_int(xt, n_in, s, -INT8_MAX_CODE, INT8_MAX_CODE);
            break;
        }
        case QD_ACT_QUANT_INT8_TENSOR: fq_int(xt, n_in, scale, -128.0f, 127.0f); break;
        case QD_ACT_QUANT_FP8_TOKEN: {
            /* vLLM's per-token fp8 kernels bound the scale below by 1 / (448 * 512). */
            s = row_amax(xt, n_in) / FP8_MAX;
            if (s < 1.0f / (FP8_MAX * 512.0f)) s = 1.0f / (FP8_MAX * 512.0f);
            fq_fp8(xt, n_in, s);
            break;
        }
        case QD_ACT_QUANT_FP8_TENSOR: fq_fp8(xt, n_in, scale); break;
        default: return;
        }
    }
}

qd_err qd_act_fq_init(qd_act_fq *t, qd_act_quant mode, int n_layers, qd_error *err) {
    memset(t, 0, sizeof *t);
    if ((int)mode < 0 || mode >= QD_ACT_QUANT_COUNT)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "activation quantization mode %d unknown",
                            (int)mode);
    if (n_layers <= 0 || n_layers > QD_MODEL_MAX_LAYERS)
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "activation quantization table for %d layers", n_layers);
    t->scale = calloc((size_t)n_layers * QD_LINEAR_COUNT, sizeof *t->scale);
    if (!t->scale)
        return qd_error_set(err, QD_ERR_NOMEM, "no memory for %d layers of activation scales",
                            n_layers);
    t->mode = mode;
    t->n_layers = n_layers;
    return QD_OK;
}

void qd_act_fq_done(qd_act_fq *t) {
    if (!t) return;
    free(t->scale);
    memset(t, 0, sizeof *t);
}

qd_err qd_act_fq_set(qd_act_fq *t, int layer, qd_linear_kind kind, float act_scale,
                     qd_error *err) {
    if (layer < 0 || layer >= t->n_layers || (int)kind < 0 || kind >= QD_LINEAR_COUNT)
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "activation scale for layer %d linear %d: out of range (%d layers)",
                            layer, (int)kind, t->n_layers);
    t->scale[(size_t)layer * QD_LINEAR_COUNT + kind] = act_scale;
    return QD_OK;
}

qd_err qd_act_fq_apply(void *ctx, int layer, qd_linear_kind kind, float *x, int64_t n_tok,
                       int64_t n_in, qd_error *err) {
    const qd_act_fq *t = ctx;
    qd_calib_group g;
    switch (kind) {
    case QD_LINEAR_Q: g = QD_CALIB_QKV; break;
    case QD_LINEAR_O: g = QD_CALIB_O; break;
    case QD_LINEAR_GATE: g = QD_CALIB_GATE_UP; break;
    case QD_LINEAR_DOWN: g = QD_CALIB_DOWN; break;
    default:
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "activation quantization: %s does not start a group of linears",
                            qd_linear_name(kind) ? qd_linear_name(kind) : "unknown linear");
    }
    if (layer < 0 || layer >= t->n_layers)
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "activation quantization: layer %d outside 0..%d", layer,
                            t->n_layers - 1);
    float scale = 0.0f;
    if (t->mode == QD_ACT_QUANT_INT8_TENSOR || t->mode == QD_ACT_QUANT_FP8_TENSOR) {
        /* One quantizer for the fused GEMM: the largest of the shards' scales (vLLM). */
        qd_linear_kind kinds[3];
        int n = qd_calib_group_linears(g, kinds);
        for (int i = 0; i < n; i++) {
            float s = t->scale[(size_t)layer * QD_LINEAR_COUNT + kinds[i]];
            if (s > scale) scale = s;
        }
        if (!(scale > 0.0f && isfinite(scale)))
            return qd_error_set(err, QD_ERR_PRECONDITION,
                                "activation quantization: no static scale for the input of "
                                "layer %d %s", layer, qd_linear_name(kind));
    }
    qd_act_fake_quant(t->mode, scale, x, n_tok, n_in);
    return QD_OK;
}

/* ---- the group callback ---- */

static void matmul(const qd_w8a8 *c, float *y, const float *x, const float *w,
                   const float *bias, int64_t m, int64_t n, int64_t k) {
    if (c->run.use_ref)
        qd_matmul_ref(y, x, w, bias, m, n, k);
    else
        qd_matmul_cpu(y, x, w, bias, m, n, k);
}

/* The activation quantizer the artifact implies, and the per-tensor act_scale of a linear
 * whose (smoothed) input has max |x| = amax. */
static qd_act_quant act_mode(const qd_w8a8 *c) {
    if (c->method == METHOD_SMOOTHQUANT)
        return c->sq.static_act ? QD_ACT_QUANT_INT8_TENSOR : QD_ACT_QUANT_INT8_TOKEN;
    return c->fp8.static_act ? QD_ACT_QUANT_FP8_TENSOR : QD_ACT_QUANT_FP8_TOKEN;
}

static float static_act_scale(const qd_w8a8 *c, float amax) {
    bool is_static = c->method == METHOD_SMOOTHQUANT ? c->sq.static_act : c->fp8.static_act;
    if (!is_static) return 0.0f;
    float a = amax > ACT_MIN_AMAX ? amax : ACT_MIN_AMAX;
    return a / (c->method == METHOD_SMOOTHQUANT ? INT8_MAX_CODE : FP8_MAX);
}

/* rel_err of the group (smoothquant.h, QUALITY REPORT). s: [n_in] or NULL. */
static qd_err group_rel_err(const qd_w8a8 *c, const qd_calib_input *in, const float *s,
                            const qd_layer_weights *w, const qd_linear_kind *kinds, int n_k,
                            const qd_qlinear *q, double *ret, qd_error *err) {
    int64_t n_in = in->n_in, T = in->n_tok, max_out = 0;
    for (int i = 0; i < n_k; i++)
        if (w->n_out[kinds[i]] > max_out) max_out = w->n_out[kinds[i]];
    int64_t ch = T < ERR_CHUNK ? T : ERR_CHUNK;
    float *xs = malloc((size_t)(ch * n_in) * sizeof(float));
    float *xq = malloc((size_t)(ch * n_in) * sizeof(float));
    float *y = malloc((size_t)(ch * max_out) * sizeof(float));
    float *yq = malloc((size_t)(ch * max_out) * sizeof(float));
    float *wd = malloc((size_t)(max_out * n_in) * sizeof(float));
    qd_err rc = QD_OK;
    if (!xs || !xq || !y || !yq || !wd) {
        rc = qd_error_set(err, QD_ERR_NOMEM,
                          "no memory to measure the quantization error (%lld x %lld weight)",
                          (long long)max_out, (long long)n_in);
        goto done;
    }
    double num = 0.0, den = 0.0;
    for (int i = 0; i < n_k; i++) {
        qd_linear_kind k = kinds[i];
        int64_t n_out = w->n_out[k];
        qd_qlinear_dequant(&q[i], wd);
        for (int64_t t0 = 0; t0 < T; t0 += ch) {
            int64_t nt = T - t0 < ch ? T - t0 : ch;
            const float *x = in->x + t0 * n_in;
            for (int64_t t = 0; t < nt; t++)
                for (int64_t j = 0; j < n_in; j++)
                    xs[t * n_in + j] = s ? x[t * n_in + j] / s[j] : x[t * n_in + j];
            memcpy(xq, xs, (size_t)(nt * n_in) * sizeof(float));
            qd_act_fake_quant(act_mode(c), q[i].act_scale, xq, nt, n_in);
            matmul(c, y, xs, w->w[k], w->b[k], nt, n_out, n_in);
            matmul(c, yq, xq, wd, w->b[k], nt, n_out, n_in);
            for (int64_t e = 0; e < nt * n_out; e++) {
                double d = (double)yq[e] - (double)y[e];
                num += d * d;
                den += (double)y[e] * (double)y[e];
            }
        }
    }
    *ret = den > 0.0 ? num / den : 0.0;
done:
    free(xs);
    free(xq);
    free(y);
    free(yq);
    free(wd);
    return rc;
}

/* Quantize linear k of the layer (its current, possibly folded, weights) into *q. */
static qd_err quantize_linear(const qd_w8a8 *c, const qd_layer_weights *w, qd_linear_kind k,
                              qd_qlinear *q, qd_error *err) {
    int n = (int)w->n_out[k], kk = (int)w->n_in[k];
    qd_err rc;
    if (c->method == METHOD_SMOOTHQUANT)
        rc = qd_rtn_quantize(w->w[k], n, kk, 8, kk, c->sq.rule, c->sq.scale_dtype, q, err);
    else
        rc = qd_fp8_quantize(w->w[k], n, kk, c->fp8.weight_per_channel, c->fp8.scale_dtype, q,
                             err);
    if (rc) {
        qd_error_prefix(err, "%s: ", qd_linear_name(k));
        return rc;
    }
    if (w->b[k] && !q->bias) {
        q->bias = malloc((size_t)n * sizeof(float));
        if (!q->bias)
            return qd_error_set(err, QD_ERR_NOMEM, "%s: no memory for the bias copy",
                                qd_linear_name(k));
        memcpy(q->bias, w->b[k], (size_t)n * sizeof(float));
    }
    return QD_OK;
}

static qd_err on_group(void *ctx, const qd_calib_input *in, qd_layer_weights *w, qd_error *err) {
    qd_w8a8 *c = ctx;
    qd_linear_kind kinds[3];
    int n_k = qd_calib_group_linears(in->group, kinds);
    int64_t n_in = in->n_in;
    if (n_k <= 0) return qd_error_set(err, QD_ERR_INVALID_ARG, "unknown group %d", in->group);
    for (int i = 0; i < n_k; i++)
        if (w->n_in[kinds[i]] != n_in || !w->w[kinds[i]])
            return qd_error_set(err, QD_ERR_INVALID_ARG,
                                "%s reads %lld inputs but the group input has %lld",
                                qd_linear_name(kinds[i]), (long long)w->n_in[kinds[i]],
                                (long long)n_in);

    /* Only the groups fed by a norm are smoothed: the factors fold into that norm. */
    float *norm = NULL;
    bool smooth = c->method == METHOD_SMOOTHQUANT &&
                  (in->group == QD_CALIB_QKV || in->group == QD_CALIB_GATE_UP);
    if (smooth) {
        norm = in->group == QD_CALIB_QKV ? w->attn_norm : w->mlp_norm;
        if (!norm || n_in != w->hidden)
            return qd_error_set(err, QD_ERR_INVALID_ARG,
                                "no norm of %lld weights to fold the smoothing of %lld inputs "
                                "into", (long long)w->hidden, (long long)n_in);
    }

    qd_qlinear q[3];
    memset(q, 0, sizeof q);
    qd_w8a8_report rep = {.layer = in->layer, .group = in->group, .s_min = 1.0f, .s_max = 1.0f};
    float *act = malloc((size_t)n_in * sizeof(float));
    float *s = smooth ? malloc((size_t)n_in * sizeof(float)) : NULL;
    qd_err rc = QD_OK;
    if (!act || (smooth && !s)) {
        rc = qd_error_set(err, QD_ERR_NOMEM, "no memory for %lld channel statistics",
                          (long long)n_in);
        goto done;
    }

    qd_channel_amax(in->x, in->n_tok, n_in, act);
    rep.act_amax = 0.0f;
    for (int64_t j = 0; j < n_in; j++)
        if (act[j] > rep.act_amax) rep.act_amax = act[j];
    rep.act_amax_smooth = rep.act_amax;
    if (smooth) {
        const float *ws[3];
        float *wm[3];
        int64_t n_out[3];
        for (int i = 0; i < n_k; i++) {
            ws[i] = wm[i] = w->w[kinds[i]];
            n_out[i] = w->n_out[kinds[i]];
        }
        qd_sq_scales(act, ws, n_out, n_k, n_in, c->sq.alpha, s);
        qd_sq_fold(s, norm, wm, n_out, n_k, n_in);
        /* x / s is monotone in |x|, so its max is the channel max divided by s. */
        rep.act_amax_smooth = 0.0f;
        rep.s_min = rep.s_max = s[0];
        for (int64_t j = 0; j < n_in; j++) {
            float a = act[j] / s[j];
            if (a > rep.act_amax_smooth) rep.act_amax_smooth = a;
            if (s[j] < rep.s_min) rep.s_min = s[j];
            if (s[j] > rep.s_max) rep.s_max = s[j];
        }
    }

    /* q/k/v (gate/up) read the same tensor: one static scale, kept by every linear. */
    float act_scale = static_act_scale(c, rep.act_amax_smooth);
    for (int i = 0; i < n_k && !rc; i++) {
        rc = quantize_linear(c, w, kinds[i], &q[i], err);
        q[i].act_scale = act_scale;
    }
    if (rc) goto done;
    if (c->sink.report) {
        if ((rc = group_rel_err(c, in, s, w, kinds, n_k, q, &rep.rel_err, err))) goto done;
    }
    for (int i = 0; i < n_k && !rc; i++) {
        rc = c->sink.linear(c->sink.ctx, in->layer, kinds[i], &q[i], err);
        qd_qlinear_free(&q[i]);
    }
    if (!rc && c->sink.report) c->sink.report(c->sink.ctx, &rep);
done:
    for (int i = 0; i < n_k; i++) qd_qlinear_free(&q[i]);
    free(act);
    free(s);
    return rc;
}

static qd_err on_layer_end(void *ctx, qd_layer_weights *w, const float *x_out, int64_t n_tok,
                           qd_error *err) {
    qd_w8a8 *c = ctx;
    if (!c->sink.norms) return QD_OK;
    return c->sink.norms(c->sink.ctx, w->layer, w->attn_norm, w->mlp_norm, w->hidden, err);
}

void qd_w8a8_callbacks(qd_w8a8 *c, qd_calib_callbacks *ret_cb) {
    memset(ret_cb, 0, sizeof *ret_cb);
    ret_cb->ctx = c;
    ret_cb->group = on_group;
    ret_cb->layer_end = on_layer_end;
}
