/*
 * job.c - one quantization job in process: method dispatch, result collection, evaluation.
 *
 * DESIGN
 * Every method ends in the same place: a qd_qlinear per decoder linear (or the float weight of
 * a linear the spec keeps), the norm weights a method folded scales into, and a relative output
 * error per group of linears. The methods that own a calibration context (AWQ, SmoothQuant,
 * FP8) report through their sinks; RTN and GPTQ are driven here. GPTQ runs the calibration
 * driver in its sequential mode: the group callback accumulates one Hessian per group (the
 * linears of a group share an input), quantizes each linear, and writes the dequantized weights
 * back so the rest of the layer, and the next layers, see the quantized model.
 *
 * On a CUDA device (qd_job_device, run->kernels the CUDA table) the same flow runs with the
 * forward passes going through the table, the GPTQ Hessian and quantization on the device
 * (gptq.h's _dev functions), and RTN / FP8 through the table's kernels, whose codes equal the
 * CPU's bit for bit; nothing else changes, so everything after the job (packing, the
 * artifact) is the CPU's code.
 */
#include "job.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "awq.h"
#include "gptq.h"
#include "rtn.h"
#ifdef QD_HAVE_CUDA
#include "qd_cuda.h"
#endif

#define LIN(r, layer, kind) ((size_t)(layer) * QD_LINEAR_COUNT + (size_t)(kind))

/* ---- result bookkeeping ---- */

static qd_err result_init(qd_job_result *r, const qd_model *m, qd_error *err) {
    const qd_llama_config *c = qd_model_config(m);
    memset(r, 0, sizeof *r);
    r->n_layers = c->num_hidden_layers;
    r->hidden = c->hidden_size;
    size_t nl = (size_t)r->n_layers * QD_LINEAR_COUNT;
    size_t ng = (size_t)r->n_layers * QD_CALIB_GROUP_COUNT;
    r->q = calloc(nl, sizeof *r->q);
    r->keep = calloc(nl, sizeof *r->keep);
    r->rel_err = malloc(ng * sizeof *r->rel_err);
    if (!r->q || !r->keep || !r->rel_err) {
        qd_job_result_free(r);
        return qd_error_set(err, QD_ERR_NOMEM, "job result: out of memory");
    }
    for (size_t i = 0; i < ng; i++) r->rel_err[i] = -1.0;
    return QD_OK;
}

void qd_job_result_free(qd_job_result *r) {
    if (!r) return;
    size_t nl = (size_t)r->n_layers * QD_LINEAR_COUNT;
    for (size_t i = 0; r->q && i < nl; i++) qd_qlinear_free(&r->q[i]);
    for (size_t i = 0; r->keep && i < nl; i++) free(r->keep[i]);
    free(r->q);
    free(r->keep);
    free(r->attn_norm);
    free(r->mlp_norm);
    free(r->rel_err);
    qd_act_fq_done(&r->act);
    memset(r, 0, sizeof *r);
}

struct job {
    const qd_model *m;
    const qd_spec *spec;
    const qd_job_progress *p;
    qd_job_result *r;
    qd_run_opts run;
    qd_qrule rule;
    qd_dtype scale_dtype;
    int bits, group_size;
    qd_gptq_params gptq;
    float *orig;        /* scratch: a linear's weight before quantization (GPTQ error) */
    size_t orig_len;
};

static void set_group_error(struct job *j, int layer, qd_calib_group g, double e) {
    j->r->rel_err[(size_t)layer * QD_CALIB_GROUP_COUNT + g] = e;
    if (j->p && j->p->group_error) j->p->group_error(j->p->ctx, layer, g, e);
}

static qd_err check_cancel(struct job *j, qd_error *err) {
    if (j->p && j->p->cancelled && j->p->cancelled(j->p->ctx))
        return qd_error_set(err, QD_ERR_CANCELLED, "job cancelled");
    return QD_OK;
}

static bool excluded(struct job *j, int layer, qd_linear_kind k) {
    char name[128];
    qd_error ignore = {0};
    if (qd_linear_path(name, sizeof name, layer, k, &ignore) != QD_OK) return false;
    return qd_spec_module_excluded(j->spec, name);
}

/* Keep linear k of w in float (an excluded module). */
static qd_err keep_float(struct job *j, const qd_layer_weights *w, qd_linear_kind k,
                         qd_error *err) {
    size_t n = (size_t)(w->n_out[k] * w->n_in[k]);
    float *copy = malloc(n * sizeof *copy);
    if (!copy) return qd_error_set(err, QD_ERR_NOMEM, "layer %d %s: out of memory", w->layer,
                                   qd_linear_name(k));
    memcpy(copy, w->w[k], n * sizeof *copy);
    free(j->r->keep[LIN(j->r, w->layer, k)]);
    j->r->keep[LIN(j->r, w->layer, k)] = copy;
    return QD_OK;
}

/* Copy the bias of linear k into q (formats store it beside the codes). */
static qd_err attach_bias(const qd_layer_weights *w, qd_linear_kind k, qd_qlinear *q,
                          qd_error *err) {
    if (!w->b[k] || q->bias) return QD_OK;
    q->bias = malloc((size_t)w->n_out[k] * sizeof *q->bias);
    if (!q->bias) return qd_error_set(err, QD_ERR_NOMEM, "bias: out of memory");
    memcpy(q->bias, w->b[k], (size_t)w->n_out[k] * sizeof *q->bias);
    return QD_OK;
}

/* *ret = sum ||x (W' - W)^T||^2 / sum ||x W^T||^2 over the linears of a group, with W the
 * original weights (orig, concatenated in group order) and W' the layer's current ones; -1 when
 * the host lacks the memory (the error is then reported as not measured). */
static qd_err group_rel_err(struct job *j, const qd_calib_input *in, const qd_layer_weights *w,
                            const qd_linear_kind *kinds, int n_kinds, const float *orig,
                            double *ret, qd_error *err) {
    double num = 0, den = 0;
    int64_t T = in->n_tok;
    const float *wo = orig;
    *ret = -1.0;
    for (int i = 0; i < n_kinds; i++) {
        qd_linear_kind k = kinds[i];
        int64_t n_out = w->n_out[k];
        float *ya = malloc((size_t)(T * n_out) * sizeof *ya);
        float *yb = malloc((size_t)(T * n_out) * sizeof *yb);
        if (!ya || !yb) {
            free(ya);
            free(yb);
            return QD_OK;
        }
        qd_layer_weights tmp = *w;
        tmp.w[k] = (float *)wo;
        tmp.b[k] = NULL;
        qd_err rc = qd_linear_forward_ex(&tmp, k, in->x, T, ya, &j->run, err);
        tmp.w[k] = w->w[k];
        if (rc == QD_OK) rc = qd_linear_forward_ex(&tmp, k, in->x, T, yb, &j->run, err);
        if (rc != QD_OK) {
            free(ya);
            free(yb);
            return rc;
        }
        /* per linear, then added: the order the device version sums in */
        double num_k = 0, den_k = 0;
        for (int64_t t = 0; t < T * n_out; t++) {
            double d = (double)yb[t] - ya[t];
            num_k += d * d;
            den_k += (double)ya[t] * ya[t];
        }
        num += num_k;
        den += den_k;
        free(ya);
        free(yb);
        wo += n_out * w->n_in[k];
    }
    *ret = den > 0 ? num / den : 0.0;
    return QD_OK;
}

/* The job's CUDA context when it runs on a CUDA device, else NULL. */
static struct qd_cuda *job_cuda(const struct job *j) {
    const qd_kernels *t = j->run.kernels;
    return t && t->kind == QD_BACKEND_CUDA ? (struct qd_cuda *)t->ctx : NULL;
}

#ifdef QD_HAVE_CUDA
/* group_rel_err with the group's input on the device (in->x_dev): the same GEMMs and sums
 * there. QD_ERR_NOMEM when the two outputs do not fit: the caller measures on the host. */
static qd_err group_rel_err_dev(const qd_calib_input *in, const qd_layer_weights *w,
                                const qd_linear_kind *kinds, int n_kinds, const float *orig,
                                double *ret, qd_error *err) {
    qd_cuda *c = in->cuda;
    int64_t T = in->n_tok, max_w = 0, max_y = 0;
    for (int i = 0; i < n_kinds; i++) {
        int64_t nw = w->n_out[kinds[i]] * w->n_in[kinds[i]], ny = T * w->n_out[kinds[i]];
        max_w = nw > max_w ? nw : max_w;
        max_y = ny > max_y ? ny : max_y;
    }
    float *wa = NULL, *wb = NULL, *ya = NULL, *yb = NULL;
    double num = 0, den = 0;
    const float *wo = orig;
    qd_err rc;
    if ((rc = qd_cuda_alloc(c, (size_t)max_w * sizeof(float), (void **)&wa, err)) ||
        (rc = qd_cuda_alloc(c, (size_t)max_w * sizeof(float), (void **)&wb, err)) ||
        (rc = qd_cuda_alloc(c, (size_t)max_y * sizeof(float), (void **)&ya, err)) ||
        (rc = qd_cuda_alloc(c, (size_t)max_y * sizeof(float), (void **)&yb, err)))
        goto done;
    for (int i = 0; i < n_kinds && !rc; i++) {
        qd_linear_kind k = kinds[i];
        int64_t n_out = w->n_out[k], n_in = w->n_in[k];
        size_t wbytes = (size_t)(n_out * n_in) * sizeof(float);
        double num_k = 0, den_k = 0;
        if ((rc = qd_cuda_upload(c, wa, wo, wbytes, err)) ||
            (rc = qd_cuda_upload(c, wb, w->w[k], wbytes, err)) ||
            (rc = qd_matmul_cuda(c, ya, in->x_dev, wa, NULL, T, n_out, n_in, err)) ||
            (rc = qd_matmul_cuda(c, yb, in->x_dev, wb, NULL, T, n_out, n_in, err)) ||
            (rc = qd_sq_diff_cuda(c, yb, ya, T * n_out, &num_k, err)) ||
            (rc = qd_sq_diff_cuda(c, ya, NULL, T * n_out, &den_k, err)))
            break;
        num += num_k;
        den += den_k;
        wo += n_out * n_in;
    }
    if (rc == QD_OK) *ret = den > 0 ? num / den : 0.0;
done:
    qd_cuda_free(c, wa);
    qd_cuda_free(c, wb);
    qd_cuda_free(c, ya);
    qd_cuda_free(c, yb);
    return rc;
}
#endif

static qd_err save_orig(struct job *j, const qd_layer_weights *w, const qd_linear_kind *kinds,
                        int n, qd_error *err) {
    size_t need = 0;
    for (int i = 0; i < n; i++) need += (size_t)(w->n_out[kinds[i]] * w->n_in[kinds[i]]);
    if (need > j->orig_len) {
        float *p = realloc(j->orig, need * sizeof *p);
        if (!p) return qd_error_set(err, QD_ERR_NOMEM, "out of memory");
        j->orig = p;
        j->orig_len = need;
    }
    float *o = j->orig;
    for (int i = 0; i < n; i++) {
        size_t len = (size_t)(w->n_out[kinds[i]] * w->n_in[kinds[i]]);
        memcpy(o, w->w[kinds[i]], len * sizeof *o);
        o += len;
    }
    return QD_OK;
}

/* ---- RTN and FP8 per linear ---- */

/* RTN / FP8 of one linear through the CUDA table: the same checks and allocation as
 * qd_rtn_quantize / qd_fp8_quantize, the kernels of the device (bit-identical codes). */
static qd_err quantize_linear_table(struct job *j, const float *w, int n, int k, qd_qlinear *out,
                                    qd_error *err) {
    const qd_kernels *t = j->run.kernels;
    bool fp8 = j->spec->method == QD_SPEC_METHOD_FP8;
    int gs = j->group_size > 0 ? j->group_size : k;
    if (k % gs != 0)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "RTN: group size %d does not divide "
                            "in_features %d (remainder %d)", gs, k, k % gs);
    for (int64_t i = 0; i < (int64_t)n * k; i++)
        if (!isfinite(w[i]))
            return qd_error_set(err, QD_ERR_INVALID_ARG, "RTN: weight [%lld, %lld] is not "
                                "finite (%g)", (long long)(i / k), (long long)(i % k),
                                (double)w[i]);
    qd_qlinear q;
    qd_err rc = fp8 ? qd_qlinear_alloc(&q, n, k, QD_QTYPE_FP8_E4M3, 8, k, QD_QRULE_COUNT, err)
                    : qd_qlinear_alloc(&q, n, k, QD_QTYPE_INT, j->bits, gs, j->rule, err);
    if (rc) return rc;
    if (fp8)
        rc = t->quant_fp8(t->ctx, w, n, k,
                          j->spec->fp8.weight_scale == QD_SPEC_FP8_WEIGHT_SCALE_CHANNEL,
                          j->scale_dtype, q.codes, q.scales, err);
    else
        rc = t->quant_rtn(t->ctx, w, n, k, j->bits, gs, j->rule, j->scale_dtype, q.codes,
                          q.scales, q.zeros, err);
    if (rc) {
        qd_qlinear_free(&q);
        return rc;
    }
    *out = q;
    return QD_OK;
}

static qd_err quantize_linear_rtn(struct job *j, qd_layer_weights *w, qd_linear_kind k,
                                  qd_error *err) {
    qd_qlinear *q = &j->r->q[LIN(j->r, w->layer, k)];
    int n = (int)w->n_out[k], kk = (int)w->n_in[k];
    qd_err rc;
    if (job_cuda(j) && j->run.kernels->quant_rtn && j->run.kernels->quant_fp8)
        rc = quantize_linear_table(j, w->w[k], n, kk, q, err);
    else if (j->spec->method == QD_SPEC_METHOD_FP8)
        rc = qd_fp8_quantize(w->w[k], n, kk,
                             j->spec->fp8.weight_scale == QD_SPEC_FP8_WEIGHT_SCALE_CHANNEL,
                             j->scale_dtype, q, err);
    else
        rc = qd_rtn_quantize(w->w[k], n, kk, j->bits, j->group_size, j->rule, j->scale_dtype,
                             q, err);
    if (rc == QD_OK) rc = attach_bias(w, k, q, err);
    if (rc == QD_OK) qd_qlinear_dequant(q, w->w[k]);
    return rc;
}

/* The group's Hessian and each linear's GPTQ on the job's CUDA device. */
static qd_err gptq_group_dev(struct job *j, const qd_calib_input *in, qd_layer_weights *w,
                             const qd_linear_kind *kinds, int n, qd_error *err) {
    qd_gptq_hessian_dev hs = {0};
    qd_err rc = qd_gptq_hessian_dev_init(&hs, job_cuda(j), (int)in->n_in, err);
    if (rc == QD_OK && in->x_dev && in->cuda == job_cuda(j))
        rc = qd_gptq_hessian_dev_add_dev(&hs, in->x_dev, in->n_tok, in->n_seq, err);
    else if (rc == QD_OK)
        rc = qd_gptq_hessian_dev_add(&hs, in->x, in->n_tok, in->n_seq, err);
    for (int i = 0; rc == QD_OK && i < n; i++) {
        qd_linear_kind k = kinds[i];
        if (excluded(j, w->layer, k)) {
            rc = keep_float(j, w, k, err);
            continue;
        }
        qd_qlinear *q = &j->r->q[LIN(j->r, w->layer, k)];
        rc = qd_gptq_quantize_dev(w->w[k], (int)w->n_out[k], (int)w->n_in[k], &hs, &j->gptq, q,
                                  w->w[k], NULL, err);
        if (rc == QD_OK) rc = attach_bias(w, k, q, err);
        if (rc != QD_OK) qd_error_prefix(err, "%s: ", qd_linear_name(k));
    }
    qd_gptq_hessian_dev_done(&hs);
    return rc;
}

static qd_err gptq_group(void *ctx, const qd_calib_input *in, qd_layer_weights *w,
                         qd_error *err) {
    struct job *j = ctx;
    qd_linear_kind kinds[3];
    int n = qd_calib_group_linears(in->group, kinds);
    qd_err rc = save_orig(j, w, kinds, n, err);
    if (rc == QD_OK && job_cuda(j)) {
        rc = gptq_group_dev(j, in, w, kinds, n, err);
    } else if (rc == QD_OK) {
        qd_gptq_hessian hs = {0};
        rc = qd_gptq_hessian_init(&hs, (int)in->n_in, err);
        if (rc == QD_OK) rc = qd_gptq_hessian_add(&hs, in->x, in->n_tok, in->n_seq, err);
        for (int i = 0; rc == QD_OK && i < n; i++) {
            qd_linear_kind k = kinds[i];
            if (excluded(j, w->layer, k)) {
                rc = keep_float(j, w, k, err);
                continue;
            }
            qd_qlinear *q = &j->r->q[LIN(j->r, w->layer, k)];
            rc = qd_gptq_quantize(w->w[k], (int)w->n_out[k], (int)w->n_in[k], &hs, &j->gptq, q,
                                  w->w[k], NULL, err);
            if (rc == QD_OK) rc = attach_bias(w, k, q, err);
            if (rc != QD_OK) qd_error_prefix(err, "%s: ", qd_linear_name(k));
        }
        qd_gptq_hessian_done(&hs);
    }
    double e = -1.0;
    bool measured = false;
#ifdef QD_HAVE_CUDA
    if (rc == QD_OK && in->x_dev && in->cuda == job_cuda(j)) {
        qd_error why = {0};
        qd_err r2 = group_rel_err_dev(in, w, kinds, n, j->orig, &e, &why);
        if (r2 == QD_OK) {
            measured = true;
        } else if (r2 != QD_ERR_NOMEM) { /* a device error; out of memory: on the host */
            rc = r2;
            if (err) *err = why;
        }
    }
#endif
    if (rc == QD_OK && !measured) rc = group_rel_err(j, in, w, kinds, n, j->orig, &e, err);
    if (rc == QD_OK) set_group_error(j, w->layer, in->group, e);
    return rc;
}

static qd_err layer_end_progress(void *ctx, qd_layer_weights *w, const float *x_out,
                                 int64_t n_tok, qd_error *err) {
    struct job *j = ctx;
    if (j->p && j->p->layer_done) j->p->layer_done(j->p->ctx, w->layer, j->r->n_layers);
    return check_cancel(j, err);
}

/* RTN / dynamic FP8: layer by layer, no forward pass. With no calibration inputs a group's
 * error is its weights' own (X = I in quantd.proto's LayerDone): ||W_q - W||^2 / ||W||^2 over
 * the group's quantized linears, summed in double; a group with none stays unmeasured. */
static qd_err run_weights_only(struct job *j, qd_error *err) {
    for (int l = 0; l < j->r->n_layers; l++) {
        qd_layer_weights w = {0};
        qd_err rc = qd_layer_weights_load(j->m, l, &w, err);
        for (int g = 0; rc == QD_OK && g < QD_CALIB_GROUP_COUNT; g++) {
            qd_linear_kind kinds[3];
            int nk = qd_calib_group_linears((qd_calib_group)g, kinds);
            double num = 0.0, den = 0.0;
            bool measured = false;
            rc = save_orig(j, &w, kinds, nk, err);
            const float *orig = j->orig;
            for (int i = 0; rc == QD_OK && i < nk; i++) {
                qd_linear_kind k = kinds[i];
                size_t len = (size_t)w.n_out[k] * (size_t)w.n_in[k];
                if (excluded(j, l, k)) {
                    rc = keep_float(j, &w, k, err);
                } else {
                    rc = quantize_linear_rtn(j, &w, k, err);
                    for (size_t e = 0; rc == QD_OK && e < len; e++) {
                        double d = (double)w.w[k][e] - (double)orig[e];
                        num += d * d;
                        den += (double)orig[e] * (double)orig[e];
                    }
                    measured = true;
                }
                orig += len;
            }
            if (rc == QD_OK && measured) set_group_error(j, l, (qd_calib_group)g,
                                                         den > 0.0 ? num / den : 0.0);
        }
        qd_layer_weights_done(&w);
        if (rc != QD_OK) {
            qd_error_prefix(err, "layer %d: ", l);
            return rc;
        }
        if (j->p && j->p->layer_done) j->p->layer_done(j->p->ctx, l, j->r->n_layers);
        if ((rc = check_cancel(j, err))) return rc;
    }
    return QD_OK;
}

/* ---- sinks of the methods that own a calibration context ---- */

static qd_err sink_linear(void *ctx, int layer, qd_linear_kind kind, qd_qlinear *q,
                          qd_error *err) {
    struct job *j = ctx;
    qd_qlinear *dst = &j->r->q[LIN(j->r, layer, kind)];
    qd_qlinear_free(dst);
    *dst = *q;
    memset(q, 0, sizeof *q);
    if (j->r->act_mode == QD_ACT_QUANT_INT8_TENSOR || j->r->act_mode == QD_ACT_QUANT_FP8_TENSOR)
        return qd_act_fq_set(&j->r->act, layer, kind, dst->act_scale, err);
    return QD_OK;
}

static qd_err sink_norms(void *ctx, int layer, const float *attn_norm, const float *mlp_norm,
                         int64_t hidden, qd_error *err) {
    struct job *j = ctx;
    qd_job_result *r = j->r;
    size_t n = (size_t)r->n_layers * (size_t)hidden;
    if (!r->attn_norm) r->attn_norm = malloc(n * sizeof *r->attn_norm);
    if (!r->mlp_norm) r->mlp_norm = malloc(n * sizeof *r->mlp_norm);
    if (!r->attn_norm || !r->mlp_norm)
        return qd_error_set(err, QD_ERR_NOMEM, "folded norms: out of memory");
    memcpy(r->attn_norm + (size_t)layer * hidden, attn_norm, (size_t)hidden * sizeof(float));
    memcpy(r->mlp_norm + (size_t)layer * hidden, mlp_norm, (size_t)hidden * sizeof(float));
    if (j->p && j->p->layer_done) j->p->layer_done(j->p->ctx, layer, r->n_layers);
    return check_cancel(j, err);
}

static void awq_report(void *ctx, const qd_awq_report *rep) {
    set_group_error(ctx, rep->layer, rep->group, rep->rel_err);
}

static void w8a8_report(void *ctx, const qd_w8a8_report *rep) {
    set_group_error(ctx, rep->layer, rep->group, rep->rel_err);
}

/* ---- dispatch ---- */

qd_err qd_job_rule(const qd_model *m, const qd_spec *spec, qd_qrule *ret_rule,
                   qd_dtype *ret_scale_dtype, qd_error *err) {
    bool sym = spec->symmetric == QD_SPEC_TRUE;
    switch (spec->scale_dtype) {
    case QD_SPEC_SCALE_DTYPE_F16: *ret_scale_dtype = QD_DTYPE_F16; break;
    case QD_SPEC_SCALE_DTYPE_F32: *ret_scale_dtype = QD_DTYPE_F32; break;
    default: *ret_scale_dtype = qd_model_config(m)->torch_dtype; break;
    }
    if (spec->method == QD_SPEC_METHOD_FP8) { /* e4m3 codes: no integer rule */
        *ret_rule = QD_QRULE_COUNT;
        return QD_OK;
    }
    if (spec->format == QD_SPEC_FORMAT_NONE || spec->format == QD_SPEC_FORMAT_UNSET) {
        /* AWQ searches with AutoAWQ's rule; the others use the reference tables'
         * conventions (examples/data/README.md) */
        if (spec->method == QD_SPEC_METHOD_AWQ || spec->method == QD_SPEC_METHOD_W4A8_AWQ)
            *ret_rule = sym ? QD_QRULE_SYM_MAX : QD_QRULE_ASYM_MINMAX;
        else
            *ret_rule = sym ? QD_QRULE_SYM_MAX : QD_QRULE_ASYM_ZERO_IN_RANGE;
        return QD_OK;
    }
    return qd_rtn_rule_for_format(qd_spec_format_name(spec->format), sym, (int)spec->bits,
                                  ret_rule, err);
}

static qd_act_quant act_mode_of(const qd_spec *s) {
    switch (s->method) {
    case QD_SPEC_METHOD_SMOOTHQUANT:
        return s->format == QD_SPEC_FORMAT_MODELOPT ? QD_ACT_QUANT_INT8_TENSOR
                                                    : QD_ACT_QUANT_INT8_TOKEN;
    case QD_SPEC_METHOD_FP8:
        return s->fp8.activation_scheme == QD_SPEC_FP8_ACTIVATION_STATIC ? QD_ACT_QUANT_FP8_TENSOR
                                                                         : QD_ACT_QUANT_FP8_TOKEN;
    case QD_SPEC_METHOD_W4A8_AWQ: return QD_ACT_QUANT_FP8_TENSOR;
    default: return QD_ACT_QUANT_NONE;
    }
}

static qd_err run_awq(struct job *j, const int32_t *calib, int64_t n_seq, int64_t seq_len,
                      const qd_calib_opts *co, qd_error *err) {
    const qd_spec *s = j->spec;
    qd_awq_params p;
    if (s->method == QD_SPEC_METHOD_W4A8_AWQ) qd_awq_params_w4a8(&p);
    else qd_awq_params_default(&p);
    p.bits = (int)s->bits;
    p.group_size = j->group_size;
    p.rule = j->rule;
    p.scale_dtype = j->scale_dtype;
    p.duo_scaling = s->awq.duo_scaling != QD_SPEC_FALSE;
    if (s->awq.n_grid) p.n_grid = (int)s->awq.n_grid;
    p.apply_clip = s->awq.apply_clip != QD_SPEC_FALSE;
    if (s->awq.clip_n_grid) p.clip_n_grid = (int)s->awq.clip_n_grid;
    if (s->awq.max_shrink > 0) p.max_shrink = s->awq.max_shrink;
    if (s->awq.n_sample_tokens) p.n_sample_tokens = (int)s->awq.n_sample_tokens;
    qd_awq_sink sink = {.ctx = j, .linear = sink_linear, .norms = sink_norms,
                        .report = awq_report};
    return qd_awq_run(j->m, calib, n_seq, seq_len, &p, &sink, co, err);
}

static qd_err run_w8a8(struct job *j, const int32_t *calib, int64_t n_seq, int64_t seq_len,
                       const qd_calib_opts *co, qd_error *err) {
    const qd_spec *s = j->spec;
    qd_w8a8 *ctx = NULL;
    qd_w8a8_sink sink = {.ctx = j, .linear = sink_linear, .norms = sink_norms,
                         .report = w8a8_report};
    qd_err rc;
    if (s->method == QD_SPEC_METHOD_SMOOTHQUANT) {
        qd_sq_params p;
        qd_sq_params_default(&p);
        if (s->smoothquant.has_alpha) p.alpha = (float)s->smoothquant.alpha;
        p.rule = j->rule;
        p.scale_dtype = j->scale_dtype;
        p.static_act = j->r->act_mode == QD_ACT_QUANT_INT8_TENSOR;
        rc = qd_smoothquant_new(&p, &sink, &co->run, &ctx, err);
    } else {
        qd_fp8_params p;
        qd_fp8_params_default(&p);
        p.weight_per_channel = s->fp8.weight_scale == QD_SPEC_FP8_WEIGHT_SCALE_CHANNEL;
        p.static_act = s->fp8.activation_scheme == QD_SPEC_FP8_ACTIVATION_STATIC;
        p.scale_dtype = j->scale_dtype;
        rc = qd_fp8_calib_new(&p, &sink, &co->run, &ctx, err);
    }
    if (rc != QD_OK) return rc;
    qd_calib_callbacks cb;
    qd_w8a8_callbacks(ctx, &cb);
    qd_calib_opts o = *co;
    o.propagate = QD_CALIB_PROPAGATE_ORIGINAL;
    rc = qd_calib_run(j->m, calib, n_seq, seq_len, &o, &cb, err);
    qd_w8a8_free(ctx);
    return rc;
}

/* The folding methods quantize all seven linears of a layer together; a module kept in float
 * would lose the scales folded into it, so they refuse exclusions inside the decoder. */
static qd_err refuse_exclusions(struct job *j, qd_error *err) {
    for (int l = 0; l < j->r->n_layers; l++)
        for (int k = 0; k < QD_LINEAR_COUNT; k++)
            if (excluded(j, l, (qd_linear_kind)k))
                return qd_error_set(err, QD_ERR_UNSUPPORTED,
                                    "modules_to_not_convert: %s folds scales across a layer's "
                                    "linears and cannot keep layer %d %s in float",
                                    qd_spec_method_name(j->spec->method), l,
                                    qd_linear_name((qd_linear_kind)k));
    return QD_OK;
}

qd_err qd_job_quantize(const qd_model *m, const qd_spec *spec, const int32_t *calib,
                       int64_t n_seq, int64_t seq_len, const qd_job_progress *p,
                       const qd_run_opts *run, qd_job_result *res, qd_error *err) {
    struct job j = {.m = m, .spec = spec, .p = p, .r = res};
    if (run) j.run = *run;
    j.run.on_weights = NULL;
    j.run.on_linear_input = NULL;
    qd_err rc = result_init(res, m, err);
    if (rc != QD_OK) return rc;
    j.bits = (int)spec->bits;
    j.group_size = spec->group_size > 0 ? spec->group_size : 0;
    rc = qd_job_rule(m, spec, &j.rule, &j.scale_dtype, err);
    res->act_mode = act_mode_of(spec);
    if (rc == QD_OK && (res->act_mode == QD_ACT_QUANT_INT8_TENSOR ||
                        res->act_mode == QD_ACT_QUANT_FP8_TENSOR))
        rc = qd_act_fq_init(&res->act, res->act_mode, res->n_layers, err);
    if (rc == QD_OK && qd_spec_needs_calibration(spec) && !calib)
        rc = qd_error_set(err, QD_ERR_INVALID_ARG, "--calib: method %s needs calibration data",
                          qd_spec_method_name(spec->method));
    if (rc != QD_OK) {
        qd_job_result_free(res);
        return rc;
    }
    if (p && p->stage) p->stage(p->ctx, calib ? "calibrate+quantize" : "quantize");

    qd_calib_opts co = {.run = j.run, .propagate = QD_CALIB_PROPAGATE_MODIFIED};
    qd_calib_callbacks cb = {.ctx = &j, .layer_end = layer_end_progress};
    switch (spec->method) {
    case QD_SPEC_METHOD_RTN: /* reads no calibration data (the spec refuses it) */
        rc = run_weights_only(&j, err);
        break;
    case QD_SPEC_METHOD_FP8:
        if (!calib && spec->fp8.activation_scheme != QD_SPEC_FP8_ACTIVATION_STATIC) {
            rc = run_weights_only(&j, err);
            break;
        }
        if ((rc = refuse_exclusions(&j, err)) == QD_OK)
            rc = run_w8a8(&j, calib, n_seq, seq_len, &co, err);
        break;
    case QD_SPEC_METHOD_GPTQ:
        if (spec->gptq.true_sequential == QD_SPEC_FALSE) {
            rc = qd_error_set(err, QD_ERR_UNSUPPORTED,
                              "gptq.true_sequential false: quantd always quantizes a layer's "
                              "groups in order, each on the inputs of the quantized ones");
            break;
        }
        if (spec->gptq.mse) {
            rc = qd_error_set(err, QD_ERR_UNSUPPORTED, "gptq.mse: the MSE range search is not "
                                                      "implemented; leave it false");
            break;
        }
        qd_gptq_params_init(&j.gptq);
        j.gptq.bits = j.bits;
        j.gptq.group_size = j.group_size;
        j.gptq.rule = j.rule;
        j.gptq.scale_dtype = j.scale_dtype;
        if (spec->gptq.damp_percent > 0) j.gptq.damp_percent = spec->gptq.damp_percent;
        j.gptq.act_order = spec->gptq.act_order;
        j.gptq.static_groups = spec->gptq.static_groups;
        if (spec->gptq.block_size) j.gptq.block_size = (int)spec->gptq.block_size;
        cb.group = gptq_group;
        rc = qd_calib_run(m, calib, n_seq, seq_len, &co, &cb, err);
        break;
    case QD_SPEC_METHOD_AWQ:
    case QD_SPEC_METHOD_W4A8_AWQ:
        if ((rc = refuse_exclusions(&j, err)) == QD_OK)
            rc = run_awq(&j, calib, n_seq, seq_len, &co, err);
        break;
    case QD_SPEC_METHOD_SMOOTHQUANT:
        if ((rc = refuse_exclusions(&j, err)) == QD_OK)
            rc = run_w8a8(&j, calib, n_seq, seq_len, &co, err);
        break;
    default:
        rc = qd_error_set(err, QD_ERR_INVALID_ARG, "--method: not set");
        break;
    }
    free(j.orig);
    if (rc != QD_OK) qd_job_result_free(res);
    return rc;
}

/* ---- evaluation ---- */

static qd_err apply_result(void *ctx, qd_layer_weights *w, qd_error *err) {
    const qd_job_result *r = ctx;
    int l = w->layer;
    for (int k = 0; k < QD_LINEAR_COUNT; k++) {
        const qd_qlinear *q = &r->q[LIN(r, l, k)];
        const float *keep = r->keep[LIN(r, l, k)];
        size_t n = (size_t)(w->n_out[k] * w->n_in[k]);
        if (q->codes) {
            if (q->n != w->n_out[k] || q->k != w->n_in[k])
                return qd_error_set(err, QD_ERR_INTERNAL, "layer %d %s: result shape differs",
                                    l, qd_linear_name((qd_linear_kind)k));
            qd_qlinear_dequant(q, w->w[k]);
            /* an unfolded smoothing factor multiplies the activations: y = (x * pre) W'^T,
             * i.e. the float weight W'[:, c] * pre[c] */
            if (q->pre_scale)
                for (int64_t row = 0; row < w->n_out[k]; row++)
                    for (int64_t c = 0; c < w->n_in[k]; c++)
                        w->w[k][row * w->n_in[k] + c] *= q->pre_scale[c];
            if (q->bias && w->b[k])
                memcpy(w->b[k], q->bias, (size_t)w->n_out[k] * sizeof(float));
        } else if (keep) {
            memcpy(w->w[k], keep, n * sizeof(float));
        }
    }
    if (r->attn_norm) memcpy(w->attn_norm, r->attn_norm + (size_t)l * r->hidden,
                             (size_t)r->hidden * sizeof(float));
    if (r->mlp_norm) memcpy(w->mlp_norm, r->mlp_norm + (size_t)l * r->hidden,
                            (size_t)r->hidden * sizeof(float));
    return QD_OK;
}

/* Whether every linear reading the input of kind's group is kept in float (the engine then
 * runs that group on float activations). */
static bool group_kept(const qd_job_result *r, int layer, qd_linear_kind kind) {
    static const qd_calib_group group_of[QD_LINEAR_COUNT] = {
        QD_CALIB_QKV, QD_CALIB_QKV, QD_CALIB_QKV, QD_CALIB_O,
        QD_CALIB_GATE_UP, QD_CALIB_GATE_UP, QD_CALIB_DOWN};
    qd_linear_kind kinds[3];
    int n = qd_calib_group_linears(group_of[kind], kinds);
    for (int i = 0; i < n; i++)
        if (r->q[LIN(r, layer, kinds[i])].codes) return false;
    return true;
}

/* Activation fake-quantization of a group's input as the engine applies it: to x * pre_scale
 * when the linear carries an unfolded smoothing factor (the weights were given pre folded in
 * by apply_result, so the result is divided back), to x otherwise. */
static qd_err act_quant(void *ctx, int layer, qd_linear_kind kind, float *x, int64_t n_tok,
                        int64_t n_in, qd_error *err) {
    const qd_job_result *r = ctx;
    if (group_kept(r, layer, kind)) return QD_OK;
    const float *pre = r->q[LIN(r, layer, kind)].pre_scale;
    if (pre)
        for (int64_t t = 0; t < n_tok; t++)
            for (int64_t c = 0; c < n_in; c++) x[t * n_in + c] *= pre[c];
    qd_err rc = QD_OK;
    if (r->act_mode == QD_ACT_QUANT_INT8_TENSOR || r->act_mode == QD_ACT_QUANT_FP8_TENSOR)
        rc = qd_act_fq_apply((void *)&r->act, layer, kind, x, n_tok, n_in, err);
    else
        qd_act_fake_quant(r->act_mode, 0.0f, x, n_tok, n_in);
    if (pre)
        for (int64_t t = 0; t < n_tok; t++)
            for (int64_t c = 0; c < n_in; c++) x[t * n_in + c] /= pre[c];
    return rc;
}

qd_err qd_job_perplexity(const qd_model *m, const qd_job_result *r, const int32_t *tokens,
                         int64_t n_seq, int64_t seq_len, const qd_run_opts *base, double *ppl,
                         qd_error *err) {
    qd_run_opts o = {0};
    if (base) o = *base;
    o.on_weights = NULL;
    o.on_linear_input = NULL;
    if (r) {
        o.on_weights = apply_result;
        o.hook_ctx = (void *)r;
        if (r->act_mode != QD_ACT_QUANT_NONE) {
            o.on_linear_input = act_quant;
            o.linear_input_ctx = (void *)r;
        }
    }
    if (seq_len < 2) return qd_error_set(err, QD_ERR_INVALID_ARG, "evaluation rows need >= 2 tokens");
    double *nll = malloc((size_t)n_seq * sizeof *nll);
    if (!nll) return qd_error_set(err, QD_ERR_NOMEM, "out of memory");
    qd_err rc = qd_model_nll(m, tokens, n_seq, seq_len, &o, nll, err);
    if (rc == QD_OK) {
        double sum = 0;
        for (int64_t i = 0; i < n_seq; i++) sum += nll[i];
        *ppl = exp(sum / ((double)n_seq * (double)(seq_len - 1)));
    }
    free(nll);
    return rc;
}

/* ---- devices ---- */

qd_err qd_job_device_parse(const char *text, int *ret_index, qd_error *err) {
    if (!text || strcmp(text, "cpu") == 0) {
        *ret_index = -1;
        return QD_OK;
    }
    if (strcmp(text, "auto") == 0) {
        *ret_index = -2;
        return QD_OK;
    }
    if (strncmp(text, "cuda:", 5) == 0 && text[5] >= '0' && text[5] <= '9') {
        char *end;
        errno = 0;
        long v = strtol(text + 5, &end, 10);
        if (errno == 0 && *end == '\0' && v >= 0 && v < 1024) {
            *ret_index = (int)v;
            return QD_OK;
        }
    }
    return qd_error_set(err, QD_ERR_INVALID_ARG, "--device '%s': expected cpu, cuda:N or auto",
                        text);
}

static void device_cpu(qd_job_device *d) {
    memset(d, 0, sizeof *d);
    d->kind = QD_BACKEND_CPU;
    snprintf(d->name, sizeof d->name, "cpu");
    snprintf(d->desc, sizeof d->desc, "cpu");
}

#ifdef QD_HAVE_CUDA
static qd_err device_cuda(qd_job_device *d, int index, qd_error *err) {
    qd_cuda *c = NULL;
    qd_err rc = qd_cuda_open(index, &c, err);
    if (rc != QD_OK) {
        qd_error_prefix(err, "cuda:%d: ", index);
        return rc;
    }
    memset(d, 0, sizeof *d);
    d->kind = QD_BACKEND_CUDA;
    d->index = index;
    d->cuda = c;
    qd_kernels_cuda(c, &d->table);
    const qd_device_info *info = qd_cuda_info(c);
    snprintf(d->name, sizeof d->name, "cuda:%d", index);
    snprintf(d->desc, sizeof d->desc, "cuda:%d (%.100s, %zu MiB)", index, info->name,
             info->memory_bytes >> 20);
    return QD_OK;
}
#else
static qd_err device_cuda(qd_job_device *d, int index, qd_error *err) {
    (void)d;
    return qd_error_set(err, QD_ERR_UNAVAILABLE, "cuda:%d: this build of quantd has no CUDA "
                        "backend", index);
}
#endif

qd_err qd_job_device_open(const char *text, qd_job_device *ret, const char **ret_note,
                          qd_error *err) {
    int index = -1;
    qd_err rc = qd_job_device_parse(text, &index, err);
    if (ret_note) *ret_note = NULL;
    if (rc != QD_OK) return rc;
    if (index == -1) {
        device_cpu(ret);
        return QD_OK;
    }
    if (index >= 0) return device_cuda(ret, index, err);
    /* auto: cuda:0 when it opens, the CPU otherwise */
    qd_error why = {0};
    if (device_cuda(ret, 0, &why) == QD_OK) return QD_OK;
    static _Thread_local char note[sizeof why.msg];
    memcpy(note, why.msg, sizeof note);
    if (ret_note) *ret_note = note;
    device_cpu(ret);
    return QD_OK;
}

void qd_job_device_close(qd_job_device *d) {
    if (!d) return;
#ifdef QD_HAVE_CUDA
    qd_cuda_close(d->cuda);
#endif
    memset(d, 0, sizeof *d);
}

bool qd_job_device_broken(const qd_job_device *d) {
#ifdef QD_HAVE_CUDA
    return d && d->cuda && qd_cuda_broken(d->cuda);
#else
    (void)d;
    return false;
#endif
}

qd_err qd_job_device_reopen(qd_job_device *d, qd_error *err) {
    if (d->kind != QD_BACKEND_CUDA || (d->cuda && !qd_job_device_broken(d))) return QD_OK;
    int index = d->index;
    qd_job_device_close(d);
    /* until it opens again the device stays CUDA without a context (run_opts refuses it) */
    d->kind = QD_BACKEND_CUDA;
    d->index = index;
    snprintf(d->name, sizeof d->name, "cuda:%d", index);
    snprintf(d->desc, sizeof d->desc, "cuda:%d (not open)", index);
    return device_cuda(d, index, err);
}

void qd_job_device_run_opts(const qd_job_device *d, qd_run_opts *o) {
    o->kernels = d && d->kind == QD_BACKEND_CUDA && d->cuda ? &d->table : NULL;
}
