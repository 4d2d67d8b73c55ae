/*
 * ctl_spec.c - a job spec parsed from quantctl's flags (the same parser as `quantd quantize`,
 * quantizers/spec.h) as the quantd.v1.QuantSpec message.
 *
 * The message carries what the user set and nothing else: an unset field is zero on the wire,
 * which the server reads as "its default", and the fields whose false or zero is a real choice
 * (symmetric, duo_scaling, apply_clip, true_sequential, alpha) go in their one-field oneofs
 * only when set. So the server resolves the defaults, once, and its spec digest is the one
 * `quantd quantize` computes for the same flags.
 */
#include <string.h>

#include "quantctl.h"

/* Values of qd_spec's enums equal the proto's (spec.h says so); these catch a drift. */
_Static_assert((int)QD_SPEC_METHOD_W4A8_AWQ == (int)QUANTD__V1__METHOD__METHOD_W4A8_AWQ,
               "method numbers");
_Static_assert((int)QD_SPEC_FORMAT_DASHINFER == (int)QUANTD__V1__FORMAT__FORMAT_DASHINFER,
               "format numbers");
_Static_assert((int)QD_SPEC_FP8_WEIGHT_SCALE_CHANNEL ==
                   (int)QUANTD__V1__FP8_SCALE_GRANULARITY__FP8_SCALE_GRANULARITY_PER_CHANNEL,
               "fp8 weight scale numbers");
_Static_assert((int)QD_SPEC_FP8_ACTIVATION_DYNAMIC ==
                   (int)QUANTD__V1__FP8_ACTIVATION_SCHEME__FP8_ACTIVATION_SCHEME_DYNAMIC,
               "fp8 activation numbers");

void qd_ctl_spec_to_proto(const qd_spec *s, bool with_calibration, qd_ctl_spec_msg *m) {
    static const Quantd__V1__QuantSpec spec_init = QUANTD__V1__QUANT_SPEC__INIT;
    static const Quantd__V1__CalibrationSpec calib_init = QUANTD__V1__CALIBRATION_SPEC__INIT;
    static const Quantd__V1__AwqParams awq_init = QUANTD__V1__AWQ_PARAMS__INIT;
    static const Quantd__V1__GptqParams gptq_init = QUANTD__V1__GPTQ_PARAMS__INIT;
    static const Quantd__V1__SmoothQuantParams sq_init = QUANTD__V1__SMOOTH_QUANT_PARAMS__INIT;
    static const Quantd__V1__Fp8Params fp8_init = QUANTD__V1__FP8_PARAMS__INIT;
    m->spec = spec_init;
    m->calibration = calib_init;
    m->awq = awq_init;
    m->gptq = gptq_init;
    m->smoothquant = sq_init;
    m->fp8 = fp8_init;

    Quantd__V1__QuantSpec *q = &m->spec;
    q->method = (Quantd__V1__Method)s->method;
    /* "none" (an in-memory report) has no wire value; the server refuses UNSPECIFIED. */
    q->format = s->format == QD_SPEC_FORMAT_NONE ? QUANTD__V1__FORMAT__FORMAT_UNSPECIFIED
                                                 : (Quantd__V1__Format)s->format;
    q->bits = s->bits;
    q->group_size = s->group_size;
    if (s->symmetric != QD_SPEC_UNSET) {
        q->symmetric_opt_case = QUANTD__V1__QUANT_SPEC__SYMMETRIC_OPT_SYMMETRIC;
        q->symmetric = s->symmetric == QD_SPEC_TRUE;
    }
    q->n_modules_to_not_convert = s->n_modules_to_not_convert;
    q->modules_to_not_convert = s->modules_to_not_convert;

    if (with_calibration) {
        m->calibration.digest = (char *)s->calibration.digest;
        m->calibration.rows = s->calibration.rows;
        m->calibration.seq_len = s->calibration.seq_len;
        q->calibration = &m->calibration;
    }

    switch (s->method) {
    case QD_SPEC_METHOD_AWQ:
    case QD_SPEC_METHOD_W4A8_AWQ: {
        Quantd__V1__AwqParams *a = &m->awq;
        if (s->awq.duo_scaling != QD_SPEC_UNSET) {
            a->duo_scaling_opt_case = QUANTD__V1__AWQ_PARAMS__DUO_SCALING_OPT_DUO_SCALING;
            a->duo_scaling = s->awq.duo_scaling == QD_SPEC_TRUE;
        }
        if (s->awq.apply_clip != QD_SPEC_UNSET) {
            a->apply_clip_opt_case = QUANTD__V1__AWQ_PARAMS__APPLY_CLIP_OPT_APPLY_CLIP;
            a->apply_clip = s->awq.apply_clip == QD_SPEC_TRUE;
        }
        a->n_grid = s->awq.n_grid;
        a->max_shrink = s->awq.max_shrink;
        a->clip_n_grid = s->awq.clip_n_grid;
        a->n_sample_tokens = s->awq.n_sample_tokens;
        q->params_case = QUANTD__V1__QUANT_SPEC__PARAMS_AWQ;
        q->awq = a;
        break;
    }
    case QD_SPEC_METHOD_GPTQ: {
        Quantd__V1__GptqParams *g = &m->gptq;
        g->damp_percent = s->gptq.damp_percent;
        g->act_order = s->gptq.act_order;
        g->static_groups = s->gptq.static_groups;
        if (s->gptq.true_sequential != QD_SPEC_UNSET) {
            g->true_sequential_opt_case =
                QUANTD__V1__GPTQ_PARAMS__TRUE_SEQUENTIAL_OPT_TRUE_SEQUENTIAL;
            g->true_sequential = s->gptq.true_sequential == QD_SPEC_TRUE;
        }
        g->block_size = s->gptq.block_size;
        g->mse = s->gptq.mse;
        q->params_case = QUANTD__V1__QUANT_SPEC__PARAMS_GPTQ;
        q->gptq = g;
        break;
    }
    case QD_SPEC_METHOD_SMOOTHQUANT:
        if (s->smoothquant.has_alpha) {
            m->smoothquant.alpha_opt_case = QUANTD__V1__SMOOTH_QUANT_PARAMS__ALPHA_OPT_ALPHA;
            m->smoothquant.alpha = s->smoothquant.alpha;
        }
        q->params_case = QUANTD__V1__QUANT_SPEC__PARAMS_SMOOTHQUANT;
        q->smoothquant = &m->smoothquant;
        break;
    case QD_SPEC_METHOD_FP8:
        m->fp8.weight_scale = (Quantd__V1__Fp8ScaleGranularity)s->fp8.weight_scale;
        m->fp8.activation_scheme = (Quantd__V1__Fp8ActivationScheme)s->fp8.activation_scheme;
        q->params_case = QUANTD__V1__QUANT_SPEC__PARAMS_FP8;
        q->fp8 = &m->fp8;
        break;
    default:
        /* RTN has no parameters message. */
        break;
    }
}
