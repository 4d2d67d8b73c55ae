/*
 * awq.h - AWQ, activation-aware weight quantization (AutoAWQ's algorithm), on the
 * layer-by-layer calibration driver; also what ModelOpt / TensorRT-LLM W4A8-AWQ needs.
 *
 * Usage (the job driver)
 *   qd_awq_params p;
 *   qd_awq_params_default(&p);               AutoAWQ: w4, g128, min/max zero point, fp16 scales
 *   p.group_size = 32;                       ... or qd_awq_params_w4a8(&p)
 *   qd_awq_sink sink = {ctx, my_linear, my_norms, my_report};
 *   qd_awq_run(model, tokens, n_seq, seq_len, &p, &sink, &calib_opts, &err);
 * or, to drive qd_calib_run() yourself (propagate MUST be QD_CALIB_PROPAGATE_ORIGINAL):
 *   qd_awq *a;  qd_awq_new(model, &p, &sink, &calib_opts.run, &a, &err);
 *   qd_calib_callbacks cb;  qd_awq_callbacks(a, &cb);
 *   qd_calib_run(model, tokens, n_seq, seq_len, &calib_opts, &cb, &err);  qd_awq_free(a);
 *
 * Per decoder layer (formats.md section 6, AutoAWQ awq/quantize/quantizer.py):
 *   group    scales folded into                       objective (module output)
 *   QKV      input_layernorm /= s, q/k/v cols *= s     attention block (o_proj float)
 *   O        v_proj rows /= s, o_proj cols *= s        o_proj   - only if v and o have the
 *                                                                 same shape (no GQA)
 *   GATE_UP  post_attention_layernorm /= s, gate/up    MLP block (down_proj float)
 *   DOWN     up_proj rows /= s, down_proj cols *= s    down_proj
 * For each group: x_mean = mean |x| per input channel; for ratio r = i / n_grid, i < n_grid,
 *   s = max(x_mean^r / (w_mean^(1-r) + 1e-4), 1e-4)   (duo_scaling; else s = max(x_mean^r, 1e-4))
 *   s /= sqrt(max(s) * min(s));  inf/nan -> 1
 * where w_mean[c] = mean over the rows of the group's linears of |w| / (group max |w| + 1e-6);
 * the loss is the mean squared difference between the module's float output and its output
 * with every linear of the group replaced by Q(W * s) / s, on the ORIGINAL captured input. The
 * best ratio's s is folded. After the four groups (at the end of the layer) every linear but
 * q/k is clipped (auto_clip, below) on its scaled input x / s, then quantized with the rule;
 * the layer's weights are replaced by the dequantized values.
 *
 * auto_clip: per (output row, input group) of the scaled weight, the bound
 * m = max|w_g| * (1 - i / clip_n_grid), i < max_shrink * clip_n_grid, that minimises the mean
 * over sampled tokens of (x_g . (Q(clamp(w_g, -m, m)) - w_g))^2; the symmetric clamp is used
 * even for asymmetric rules (as AutoAWQ). Tokens: every stride-th, stride =
 * max(1, n_tok / n_sample_tokens) as AutoAWQ, raised to the next value coprime with the
 * calibration sequence length (qd_awq_clip_stride): quantd's calibration rows are aligned
 * sequences starting with BOS, and a stride dividing seq_len would sample only a few
 * positions, position 0 (the attention sink) heavily over-represented among them.
 *
 * W4A8 (ModelOpt W4A8_AWQ, formats.md section 4): symmetric int4 absmax/7 groups
 * (QD_QRULE_SYM_MAX); act_scale = max |x / s| over all calibration tokens / 448 and
 * weight_scale_2 = max |dequantized W| / 448, both per tensor; q/k/v and gate/up share one
 * input, so they share act_scale, and weight_scale_2 is set to the group max as ModelOpt's
 * fusion does. pre_quant_scale: quantd folds s wherever AutoAWQ folds (the folded norm weights
 * reach the artifact), which is exact, so those linears carry no pre_scale (a packer writes
 * ones). Where it cannot fold - o_proj under grouped-query attention, which AutoAWQ leaves
 * unscaled - W4A8 searches s for o_proj alone and keeps it unfolded: the codes quantize
 * W_o * s and pre_scale = 1/s multiplies the activations (ModelOpt's pre_quant_scale). Since
 * one s is searched per group, fused groups already share it: ModelOpt's averaging and
 * re-smoothing of pre_quant_scale across q/k/v is the identity here.
 *
 * Numerics: the search runs in fp32 on quantd's runtime (AutoAWQ runs the module in fp16);
 * the fake quantization is exactly the final one (qd_rtn_quantize, the same rule and scale
 * dtype), so the search sees the weights the engine will see. Results are
 * bit-identical for the same inputs, kernels and thread count.
 */
#ifndef QD_AWQ_H
#define QD_AWQ_H

#include <stdbool.h>
#include <stdint.h>

#include "calib.h"
#include "error.h"
#include "model.h"
#include "qlinear.h"
#include "quant.h"
#include "tensor.h"

/* fp8 e4m3's largest finite value: the denominator of W4A8's per-tensor scales. */
#define QD_AWQ_FP8_MAX 448.0f

typedef struct qd_awq_params {
    int bits;              /* 4 or 3 (W4A8: 4) */
    int group_size;        /* input columns per group; <= 0: one group per row */
    qd_qrule rule;         /* QD_QRULE_ASYM_MINMAX (AutoAWQ), QD_QRULE_SYM_MAX (W4A8) */
    qd_dtype scale_dtype;  /* F16 (AutoAWQ), BF16 or F32: the stored scales are rounded to it */
    bool duo_scaling;      /* s from x and w (AutoAWQ, llm-compressor) or x only (llm-awq) */
    int n_grid;            /* ratios i / n_grid, i = 0 .. n_grid - 1 (20) */
    bool apply_clip;       /* auto_clip (true) */
    int clip_n_grid;       /* 20 */
    double max_shrink;     /* 0.5: shrink factors 1, 0.95, ..., 0.55 */
    int n_sample_tokens;   /* tokens for the clip search, by stride (512) */
    bool w4a8;             /* fill act_scale / weight_scale_2 / pre_scale for ModelOpt W4A8 */
} qd_awq_params;

/* AutoAWQ's defaults: bits 4, group 128, ASYM_MINMAX, fp16 scales, duo scaling, n_grid 20,
 * clip on (20, 0.5, 512 tokens), not W4A8. */
void qd_awq_params_default(qd_awq_params *p);
/* The defaults with W4A8: SYM_MAX int4, w4a8 true. */
void qd_awq_params_w4a8(qd_awq_params *p);
/* QD_ERR_INVALID_ARG naming the field: bits not 3/4 (W4A8: not 4), rule not ASYM_MINMAX or
 * SYM_MAX (W4A8: not SYM_MAX), scale dtype not F32/F16/BF16, n_grid or clip_n_grid outside
 * 1..1000, max_shrink outside [0, 1), n_sample_tokens < 1. */
qd_err qd_awq_params_check(const qd_awq_params *p, qd_error *err);

/* What the search found for one group (given to the sink as soon as the group is done). */
typedef struct qd_awq_report {
    int layer;
    qd_calib_group group;
    bool scaled;          /* false: left unscaled (O under GQA, AutoAWQ mode): s = 1 */
    bool folded;          /* scaled and folded into the preceding op (else kept as pre_scale) */
    int ratio_index;      /* the best i of ratio i / n_grid (0 when not scaled) */
    double ratio;
    double rel_err;       /* ||y_q - y||^2 / ||y||^2 of the module output, chosen s, no clip */
    double rel_err_rtn;   /* the same with s = 1: plain round-to-nearest */
    const float *scales;  /* [n_in] the chosen s (borrowed for the call); NULL if not scaled */
    int64_t n_in;
} qd_awq_report;

/* Where the results go. */
typedef struct qd_awq_sink {
    void *ctx;
    /* Required. One quantized linear, called for the seven linears of each layer in
     * qd_linear_kind order at the layer's end. q->bias holds the (possibly folded) bias. The
     * sink may keep the arrays (copy *q, then zero it); whatever is left in *q is freed with
     * qd_qlinear_free() after the call. */
    qd_err (*linear)(void *ctx, int layer, qd_linear_kind kind, qd_qlinear *q, qd_error *err);
    /* Optional. The layer's input_layernorm and post_attention_layernorm weights with the
     * scales folded in ([hidden] each, borrowed), after the linears. They replace the source
     * model's norm weights in the artifact. */
    qd_err (*norms)(void *ctx, int layer, const float *attn_norm, const float *mlp_norm,
                    int64_t hidden, qd_error *err);
    /* Optional. Per group, as soon as its scale search is done. */
    void (*report)(void *ctx, const qd_awq_report *r);
} qd_awq_sink;

typedef struct qd_awq qd_awq;

/* A calibration context for model m. params and sink are copied; run picks the kernels of the
 * block evaluations (NULL: defaults; its hooks are not used). Fails with QD_ERR_INVALID_ARG
 * for bad params, a missing sink->linear, or a group size that does not divide a linear's
 * input width (naming it); QD_ERR_NOMEM. The caller frees with qd_awq_free(). */
qd_err qd_awq_new(const qd_model *m, const qd_awq_params *params, const qd_awq_sink *sink,
                  const qd_run_opts *run, qd_awq **ret, qd_error *err);
void qd_awq_free(qd_awq *a); /* accepts NULL */
/* The group and layer_end callbacks for qd_calib_run (ctx = a). */
void qd_awq_callbacks(qd_awq *a, qd_calib_callbacks *ret_cb);

/* The whole method: qd_awq_new + qd_calib_run with propagate forced to ORIGINAL + free.
 * o: the driver's options (NULL: defaults). */
qd_err qd_awq_run(const qd_model *m, const int32_t *tokens, int64_t n_seq, int64_t seq_len,
                  const qd_awq_params *params, const qd_awq_sink *sink,
                  const qd_calib_opts *o, qd_error *err);

/* ---- the pieces (used by the layer flow above; exposed for standalone linears and tests) ---- */

/* w_mean [k] of the linears w[i] ([n_out[i], k] each, n_lin of them) for the duo scaling:
 * mean over all rows of |w| / (max |w| of its group of group_size columns + 1e-6). */
qd_err qd_awq_w_mean(const float *const *w, const int64_t *n_out, int n_lin, int64_t k,
                     int group_size, float *ret_w_mean, qd_error *err);

/* The normalised scales ret_s [k] for ratio r (formula above; w_mean unused and may be NULL
 * when !duo). */
void qd_awq_scales(const float *x_mean, const float *w_mean, int64_t k, double ratio, bool duo,
                   float *ret_s);

/* ret [n, k] = Q(w * s) / s for w [n, k] with the params' rule, bits, group size and scale
 * dtype (s NULL: Q(w)); Q is RTN's (qd_rtn_fake_quant). ret may equal w. Errors as
 * qd_rtn_quantize (a non-finite weight, a group size that does not divide k). */
qd_err qd_awq_fake_quant(const float *w, int64_t n, int64_t k, const float *s,
                         const qd_awq_params *p, float *ret, qd_error *err);

/* Fold s ([n_in] of group g) into w as in the table above. QD_ERR_UNSUPPORTED for O when
 * v_proj and o_proj differ in shape. */
bool qd_awq_can_fold(const qd_layer_weights *w, qd_calib_group g);
qd_err qd_awq_fold(qd_layer_weights *w, qd_calib_group g, const float *s, qd_error *err);

/* auto_clip for one linear: w [n, k] (already scaled), x [n_tok, k] its (scaled) input, used
 * as is (subsample before calling). ret_max [n, n_groups] the chosen bounds. o: kernels. */
qd_err qd_awq_clip_search(const float *w, int64_t n, int64_t k, const float *x, int64_t n_tok,
                          const qd_awq_params *p, const qd_run_opts *o, float *ret_max,
                          qd_error *err);
/* The clip search's token stride for n_tok tokens that are rows of seq_len tokens (seq_len
 * <= 1: unstructured, AutoAWQ's max(1, n_tok / n_sample) as is): the smallest stride >=
 * max(1, n_tok / n_sample) that is 1 or coprime with seq_len. */
int64_t qd_awq_clip_stride(int64_t n_tok, int64_t n_sample, int64_t seq_len);
/* w [n, k] = clamp(w, -max, max) per (row, group); max [n, n_groups]. */
void qd_awq_clip_apply(float *w, int64_t n, int64_t k, int group_size, const float *max);

/* AWQ for one standalone linear y = x w^T: the scale search (objective: the linear's output),
 * then w * s, auto_clip on x / s, and the quantization. x [n_tok, k], w [n, k] (unchanged).
 * ret_s [k]: the chosen s, which the caller must fold into the input (x / s) or store as a
 * pre_scale; *ret_q: the quantized w * s (caller frees with qd_qlinear_free); ret_rep
 * (optional): the search's report (scales NULL, layer -1). */
qd_err qd_awq_quantize_linear(const float *w, int64_t n, int64_t k, const float *x,
                              int64_t n_tok, const qd_awq_params *p, const qd_run_opts *o,
                              float *ret_s, qd_qlinear *ret_q, qd_awq_report *ret_rep,
                              qd_error *err);

#endif /* QD_AWQ_H */
