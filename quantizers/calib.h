/*
 * calib.h - layer-by-layer calibration: what the quantizers (AWQ, GPTQ, SmoothQuant, ...) see.
 *
 * The driver runs a token batch through the model one decoder layer at a time and, in each
 * layer, hands every GROUP of linears that share an input to a callback together with that
 * input and the layer's fp32 weights, which the callback may change in place:
 *
 *   group      linears        input x                                   [T, n_in]
 *   QKV        q, k, v        input_layernorm(X)                        [T, hidden]
 *   O          o              attention output                          [T, heads * head_dim]
 *   GATE_UP    gate, up       post_attention_layernorm(h), h = X + attn [T, hidden]
 *   DOWN       down           silu(gate(.)) * up(.)                     [T, intermediate]
 *
 * Two ways to propagate (qd_calib_opts.propagate):
 *   QD_CALIB_PROPAGATE_MODIFIED (GPTQ, "true sequential"): the layer is computed step by
 *     step with the weights as the callbacks left them: the O input is computed with the q/k/v
 *     the QKV callback returned, the GATE_UP input with that o, and so on; the next layer's
 *     input is this layer's output with all modified weights. Norm weights changed by a
 *     callback are used from the next step on (the QKV input is recomputed after its callback).
 *   QD_CALIB_PROPAGATE_ORIGINAL (AWQ): the layer is first computed with its original weights,
 *     capturing all four inputs and the layer's output; the callbacks then run in group order
 *     on those float inputs; the next layer's input is the ORIGINAL output, whatever the
 *     callbacks did to the weights.
 * In both modes callbacks run in the order QKV, O, GATE_UP, DOWN, then layer_end.
 *
 * A callback that needs to measure a block's output error (AWQ's scale search) calls the
 * block functions of model.h on the captured input with candidate weights:
 *   qd_block_attention(m, w, in->x, in->n_seq, in->seq_len, y, NULL, ...)   for QKV
 *   qd_block_mlp(m, w, in->x, in->n_tok, y, NULL, ...)                      for GATE_UP
 *   qd_linear_forward(w, QD_LINEAR_O / QD_LINEAR_DOWN, in->x, in->n_tok, y, ...)
 * qd_layer_weights is a plain struct of pointers: to try candidate weights without touching
 * the layer's, copy the struct and point the linears being tried at your own buffers.
 * Statistics helpers below accumulate per-channel mean |x|, max |x| and X^T X.
 *
 * Memory: X [T, hidden] plus, while a layer runs, the group inputs (all four in ORIGINAL mode)
 * and O(chunk) scratch; weights are mmap'd and one layer is materialised at a time.
 *
 * On a device: when qd_calib_opts.run.kernels is a CUDA table (and no on_linear_input hook is
 * set) the layer runs on that device with its weights resident there (model_dev.h): X and
 * every group input stay in device memory, each layer's weights are uploaded once, and a
 * group's input is copied to the host only for its callback, which also gets the device copy
 * (qd_calib_input.x_dev) to run its own device work on without another upload. In MODIFIED
 * mode the arrays a group callback owns are uploaded again after it returns: its own linears
 * (weights and biases) and the norm in front of them (QKV: input_layernorm; GATE_UP:
 * post_attention_layernorm). A callback must not change other arrays in MODIFIED mode (they
 * would take effect on the host and not on the device). The op sequence and shapes are the
 * host's, so a device whose ops round as the CPU's gives the host's results exactly.
 */
#ifndef QD_CALIB_H
#define QD_CALIB_H

#include <stdint.h>

#include "error.h"
#include "model.h"

typedef enum qd_calib_group {
    QD_CALIB_QKV = 0,
    QD_CALIB_O,
    QD_CALIB_GATE_UP,
    QD_CALIB_DOWN,
    QD_CALIB_GROUP_COUNT
} qd_calib_group;

/* "qkv", "o", "gate_up", "down"; NULL out of range. */
const char *qd_calib_group_name(qd_calib_group g);
/* The linears that read the group's input, in module order; returns how many (1..3). */
int qd_calib_group_linears(qd_calib_group g, qd_linear_kind ret_kinds[3]);

typedef enum qd_calib_propagate {
    QD_CALIB_PROPAGATE_MODIFIED = 0,
    QD_CALIB_PROPAGATE_ORIGINAL,
} qd_calib_propagate;

struct qd_cuda;

/* What a group callback sees. All pointers are borrowed for the duration of the call. */
typedef struct qd_calib_input {
    int layer;
    qd_calib_group group;
    const float *x;           /* [n_tok, n_in] the group's input */
    int64_t n_tok, n_in;
    int64_t n_seq, seq_len;   /* n_tok = n_seq * seq_len */
    const float *layer_in;    /* [n_tok, hidden] the layer's input X */
    /* On a CUDA device (see "On a device" above): the same x in device memory, on that
     * device's context, valid for the call; NULL when the driver runs on the host. */
    const float *x_dev;
    struct qd_cuda *cuda;
} qd_calib_input;

typedef struct qd_calib_callbacks {
    void *ctx;
    /* Optional: the layer's weights were materialised (after qd_run_opts.on_weights), before
     * anything of the layer runs. x_in: [n_tok, hidden]. */
    qd_err (*layer_begin)(void *ctx, qd_layer_weights *w, const float *x_in, int64_t n_tok,
                          qd_error *err);
    /* Optional: a group's input is ready; w may be changed in place (any of its arrays). */
    qd_err (*group)(void *ctx, const qd_calib_input *in, qd_layer_weights *w, qd_error *err);
    /* Optional: the layer is done; x_out [n_tok, hidden] is the next layer's input. The
     * weights are freed when this returns (save what you need, e.g. quantized tensors). */
    qd_err (*layer_end)(void *ctx, qd_layer_weights *w, const float *x_out, int64_t n_tok,
                        qd_error *err);
} qd_calib_callbacks;

typedef struct qd_calib_opts {
    qd_run_opts run;              /* kernels, weight hook, progress (per layer) */
    qd_calib_propagate propagate;
    int n_layers;                 /* 0: all; otherwise stop after this many layers */
} qd_calib_opts;

/* Run the driver over tokens [n_seq, seq_len] (checked like qd_model_check_tokens). A
 * callback's failure stops the run and is returned with "layer N <group>: " prefixed. */
qd_err qd_calib_run(const qd_model *m, const int32_t *tokens, int64_t n_seq, int64_t seq_len,
                    const qd_calib_opts *o, const qd_calib_callbacks *cb, qd_error *err);

/* ---- statistics of a linear's input ---- */

typedef struct qd_act_stats {
    int64_t n_in;
    int64_t n_tok;     /* tokens seen */
    double *sum_abs;   /* [n_in] sum over tokens of |x| */
    float *max_abs;    /* [n_in] max over tokens of |x| */
} qd_act_stats;

qd_err qd_act_stats_init(qd_act_stats *s, int64_t n_in, qd_error *err);
void qd_act_stats_done(qd_act_stats *s); /* accepts a zeroed struct */
/* Add x [n_tok, n_in]. */
void qd_act_stats_add(qd_act_stats *s, const float *x, int64_t n_tok);
/* ret_mean [n_in] = sum_abs / n_tok (zeros when no token was seen). */
void qd_act_stats_mean_abs(const qd_act_stats *s, float *ret_mean);

/* h [n_in, n_in] += x^T x for x [n_tok, n_in] (fp32 accumulation: o->kernels' xtx_accum when
 * the table has one - redone on the cpu if it fails -, BLAS, or the double-accumulating
 * reference when o->use_ref). */
void qd_calib_xtx_add(float *h, const float *x, int64_t n_tok, int64_t n_in,
                      const qd_run_opts *o);

#endif /* QD_CALIB_H */
