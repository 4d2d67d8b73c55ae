/*
 * smoothquant.h - the W8A8 methods, whose activations are quantized too: SmoothQuant (int8
 * weights per output channel, int8 activations) and FP8 e4m3 (weights per tensor or per
 * channel, activations static per tensor or dynamic per token). Both run as callbacks of the
 * layer-by-layer calibration driver (calib.h). This header also holds the activation fake
 * quantization an evaluation applies to each linear's input.
 *
 * SmoothQuant (docs/formats.md section 6; quantd follows the reference mit-han-lab/smoothquant
 * smooth.py, NOT llm-compressor's SmoothQuantModifier, which uses (max - min) as the activation
 * range and 2 * max|W| as the weight term). For the two groups whose input comes from a norm:
 *
 *   group     norm                        linears
 *   QKV       input_layernorm             q, k, v
 *   GATE_UP   post_attention_layernorm    gate, up
 *
 *   act[j] = max over calibration tokens of |x[t, j]|         (x: the group's input)
 *   w[j]   = max(max over the group's linears and rows of |W[n, j]|, 1e-5)
 *   s[j]   = max(act[j]^alpha / w[j]^(1 - alpha), 1e-5)
 *   norm[j] /= s[j],  W[n, j] *= s[j]  for every linear of the group
 *
 * so the linears see x / s and compute (x / s)(W s)^T = x W^T: the float function does not
 * change, and the quantization range moves from the activations to the weights:
 *   max_t |x[t, j] / s[j]|  = (act[j] w[j])^(1 - alpha)
 *   max_n |W[n, j] s[j]|    = (act[j] w[j])^alpha          (when neither clamp acts)
 * o_proj and down_proj are not smoothed (their inputs do not come from a norm). Then all seven
 * linears are quantized to int8 per output channel, s_n = max_k |W[n, k]| / 127
 * (QD_QRULE_SYM_MAX: the reference and ModelOpt; compressed-tensors' INT8_W8A8 convention,
 * absmax / 127.5, is QD_QRULE_SYM_HALF_EPS and can be chosen instead).
 *
 * Activations: per-token dynamic by default (the reference's fake_quant.py and the
 * compressed-tensors INT8_W8A8 preset: no act_scale stored); with static_act each linear
 * records act_scale = max over calibration tokens of |its smoothed input| / 127, the per-tensor
 * activation_scaling_factor of ModelOpt's INT8 SmoothQuant (docs/formats.md section 4).
 *
 * FP8 e4m3 (docs/formats.md sections 3 and 4): weights through qd_fp8_quantize (s = amax / 448
 * per tensor, or per output channel, codes saturating). With static activations every linear
 * records act_scale = max over calibration tokens of |its input| / 448. q/k/v (and gate/up) are
 * one fused GEMM in the engines, but the checkpoints (compressed-tensors "FP8" preset) store
 * one input_scale per linear: vLLM loads each shard's scale as written and takes the MAX over
 * the fused group (and, for per-tensor weights, requantizes the shards' weights to the group's
 * largest weight_scale). So each linear keeps its OWN input_scale and weight_scale here. Since
 * q/k/v read the very same tensor, their input scales are equal anyway, and the engine's max
 * is a no-op for them; the weights' requantization is the engine's own rounding. Dynamic
 * activations (compressed-tensors FP8_DYNAMIC: per-channel weights, per-token activations)
 * store act_scale 0.
 *
 * PROPAGATION. The reference computes act_scales on the float model first and smooths and
 * quantizes afterwards. Run these callbacks with QD_CALIB_PROPAGATE_ORIGINAL: every layer's
 * captured inputs are then exactly the float model's activations, which is what the reference
 * collected, layer by layer instead of in one pass (a layer's scales depend only on its own
 * inputs). QD_CALIB_PROPAGATE_MODIFIED gives the same result up to float rounding, because the
 * callbacks only FOLD the smoothing factors into the layer (an exact re-parametrisation); they
 * never write the quantized weights back, so later layers still see float activations. The
 * quantized weights leave through the sink only.
 *
 * QUALITY REPORT. For every group the callbacks measure, on the calibration input, the
 * relative error of the group's linear outputs
 *   rel_err = sum ||fq(x') Wq^T - x' W'^T||^2 / sum ||x' W'^T||^2     (plus biases)
 * over the group's linears and tokens, where x' = x / s and W' = W s (x, W for unsmoothed
 * groups), Wq is the dequantized weight and fq the activation fake quantization the artifact
 * implies (per-token int8 or fp8, or static per-tensor with the recorded act_scale).
 */
#ifndef QD_SMOOTHQUANT_H
#define QD_SMOOTHQUANT_H

#include <stdbool.h>
#include <stdint.h>

#include "calib.h"
#include "error.h"
#include "model.h"
#include "qlinear.h"
#include "quant.h"
#include "tensor.h"

/* ---- what the callbacks hand back ---- */

/* Quality of one group of one layer (see QUALITY REPORT above). */
typedef struct qd_w8a8_report {
    int layer;
    qd_calib_group group;
    double rel_err;        /* relative squared error of the group's outputs */
    float act_amax;        /* max |x| of the group's input as captured */
    float act_amax_smooth; /* max |x / s| (== act_amax when the group is not smoothed) */
    float s_min, s_max;    /* range of the smoothing factors (1, 1 when not smoothed) */
} qd_w8a8_report;

/* Where the results go. linear is required, the others are optional. */
typedef struct qd_w8a8_sink {
    void *ctx;
    /* One quantized linear, in module order q, k, v, o, gate, up, down of each layer. The sink
     * may take the result over by copying *q and zeroing it (a qd_qlinear owns its arrays);
     * whatever is left in *q is freed when this returns. q->bias holds a copy of the bias. */
    qd_err (*linear)(void *ctx, int layer, qd_linear_kind kind, qd_qlinear *q, qd_error *err);
    /* The layer's norm weights as the artifact must store them (smoothing folded in; FP8 leaves
     * them as they were): attn_norm, mlp_norm [hidden], borrowed. After the seven linears. */
    qd_err (*norms)(void *ctx, int layer, const float *attn_norm, const float *mlp_norm,
                    int64_t hidden, qd_error *err);
    /* One report per group, after that group's linears (the error is measured only when this
     * is set: it costs about one more forward pass of the layer's linears). */
    void (*report)(void *ctx, const qd_w8a8_report *r);
} qd_w8a8_sink;

/* ---- parameters ---- */

typedef struct qd_sq_params {
    float alpha;          /* migration strength in [0, 1] */
    qd_qrule rule;        /* a symmetric rule: SYM_MAX (absmax/127), SYM_HALF_EPS (/127.5) */
    qd_dtype scale_dtype; /* weight scale storage: F32, F16 or BF16 (codes use the rounded s) */
    bool static_act;      /* record act_scale = amax / 127 per linear (ModelOpt INT8-SQ) */
} qd_sq_params;

typedef struct qd_fp8_params {
    bool weight_per_channel; /* weight_scale [N] instead of one per tensor */
    bool static_act;         /* record act_scale = amax / 448 per linear; else dynamic */
    qd_dtype scale_dtype;    /* F32, F16 or BF16 */
} qd_fp8_params;

/* alpha 0.5 (the reference smooth_lm default; its README uses 0.8-0.9 for larger Llama and
 * Mistral models), SYM_MAX, F32 scales, dynamic activations. */
void qd_sq_params_default(qd_sq_params *p);
/* Per-tensor weights, static activations (the compressed-tensors "FP8" preset), F32 scales. */
void qd_fp8_params_default(qd_fp8_params *p);

/* ---- the calibration contexts ---- */

typedef struct qd_w8a8 qd_w8a8;

/* A SmoothQuant context; run opts (optional, copied) choose the kernels of the error
 * measurement. Fails with QD_ERR_INVALID_ARG for alpha outside [0, 1], an asymmetric rule,
 * a scale dtype other than F32/F16/BF16 or a sink without a linear callback. */
qd_err qd_smoothquant_new(const qd_sq_params *p, const qd_w8a8_sink *sink,
                          const qd_run_opts *run, qd_w8a8 **ret, qd_error *err);
/* An FP8 context; same conventions. */
qd_err qd_fp8_calib_new(const qd_fp8_params *p, const qd_w8a8_sink *sink,
                        const qd_run_opts *run, qd_w8a8 **ret, qd_error *err);
void qd_w8a8_free(qd_w8a8 *c); /* accepts NULL */
/* The callbacks for qd_calib_run (ctx = c). Use QD_CALIB_PROPAGATE_ORIGINAL. */
void qd_w8a8_callbacks(qd_w8a8 *c, qd_calib_callbacks *ret_cb);

/* ---- the SmoothQuant math, exposed for tests and other methods ---- */

/* Per-channel max |x| of x [n_tok, n_in] into ret_amax [n_in]. */
void qd_channel_amax(const float *x, int64_t n_tok, int64_t n_in, float *ret_amax);

/* The smoothing factors ret_s [n_in] of the formulas above, for the n_w linears ws[i]
 * [n_out[i], n_in] that read one input with per-channel maxima act_amax [n_in]. */
void qd_sq_scales(const float *act_amax, const float *const *ws, const int64_t *n_out, int n_w,
                  int64_t n_in, float alpha, float *ret_s);

/* Fold s [n_in]: norm[j] /= s[j] (norm may be NULL), ws[i][n, j] *= s[j]. */
void qd_sq_fold(const float *s, float *norm, float *const *ws, const int64_t *n_out, int n_w,
                int64_t n_in);

/* ---- activation fake quantization (evaluation) ---- */

typedef enum qd_act_quant {
    QD_ACT_QUANT_NONE = 0,
    QD_ACT_QUANT_INT8_TOKEN,  /* s_t = max(max_j |x[t, j]|, 1e-5) / 127, x' = round(x/s) s */
    QD_ACT_QUANT_INT8_TENSOR, /* given s: x' = clamp(round(x / s), -128, 127) s */
    QD_ACT_QUANT_FP8_TOKEN,   /* s_t = max(max_j |x[t, j]| / 448, 1 / (448 * 512)),
                                 x' = e4m3_sat(x / s) s */
    QD_ACT_QUANT_FP8_TENSOR,  /* given s: x' = e4m3_sat(x / s) s (clamped to +-448) */
    QD_ACT_QUANT_COUNT
} qd_act_quant;

/* Fake-quantize x [n_tok, n_in] in place. scale is used by the TENSOR modes only (a scale
 * <= 0 or not finite leaves x unchanged: there is nothing to quantize with). round() is
 * half to even, as torch.round. The INT8_TOKEN scale is the reference SmoothQuant's
 * (fake_quant.py, absmax clamped to 1e-5 before /127); FP8_TOKEN's lower bound is vLLM's. */
void qd_act_fake_quant(qd_act_quant mode, float scale, float *x, int64_t n_tok, int64_t n_in);

/* The activation quantization of a whole model for evaluation: the mode and, for the static
 * modes, every linear's act_scale as the sink received it. */
typedef struct qd_act_fq {
    qd_act_quant mode;
    int n_layers;
    float *scale; /* [n_layers * QD_LINEAR_COUNT], row = layer */
} qd_act_fq;

qd_err qd_act_fq_init(qd_act_fq *t, qd_act_quant mode, int n_layers, qd_error *err);
void qd_act_fq_done(qd_act_fq *t); /* accepts a zeroed struct */
/* Record a linear's act_scale (a sink calls this with q->act_scale). */
qd_err qd_act_fq_set(qd_act_fq *t, int layer, qd_linear_kind kind, float act_scale,
                     qd_error *err);

/*
 * The per-input hook the evaluation calls (ctx = a qd_act_fq): fake-quantize x [n_tok, n_in],
 * the input of the linears of `layer` that read it, in place, right before their GEMMs. kind
 * names the FIRST linear reading x: QD_LINEAR_Q for the shared q/k/v input, QD_LINEAR_O,
 * QD_LINEAR_GATE for the shared gate/up input, QD_LINEAR_DOWN. A fused group is quantized ONCE
 * with the largest of its linears' static scales, as vLLM does at load. Fails with
 * QD_ERR_INVALID_ARG for a layer or kind out of range and QD_ERR_PRECONDITION for a static
 * mode with no scale recorded for that input.
 */
qd_err qd_act_fq_apply(void *ctx, int layer, qd_linear_kind kind, float *x, int64_t n_tok,
                       int64_t n_in, qd_error *err);

#endif /* QD_SMOOTHQUANT_H */
