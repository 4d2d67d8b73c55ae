/*
 * model_dev.h - the decoder layer on a CUDA device: one layer's weights resident in device
 * memory, and the blocks of forward.c on device pointers (builds with the CUDA backend only).
 *
 * Usage (calib.c's device mode, awq.c's block searches)
 *   qd_dev_fwd f;     qd_dev_fwd_init(&f, cuda, model, seq_len, &err);   rotary tables, scratch
 *   qd_dev_layer d = {0};
 *   qd_dev_layer_upload(&f, &w, &d, &err);         all of a layer's arrays, one allocation
 *   qd_dev_rmsnorm(&f, xn, x, d.attn_norm, n_tok, &err);
 *   qd_dev_attention(&f, &d, xn, n_seq, y, att, &err);
 *   qd_dev_mlp(&f, &d, xn, n_tok, y, act, &err);
 *   qd_dev_layer_free(&f, &d);  qd_dev_fwd_done(&f);
 *
 * DESIGN
 * These are forward.c's blocks with every operand in device memory, so a layer's weights
 * cross the bus once and the activations not at all. They make the same calls with the same
 * shapes in the same order as forward.c (chunks of whole sequences of about
 * QD_FWD_CHUNK_TOKENS tokens for attention, QD_FWD_CHUNK_TOKENS tokens for the MLP, one GEMM
 * per linear per chunk), so an op that rounds by call shape rounds the same way in both, and
 * a device whose ops are the CPU's gives bit-identical results (the emulated device of the
 * tests does exactly that). A qd_dev_layer is a plain struct of device pointers: to evaluate
 * candidate weights, copy it and point the linears being tried at other device buffers, as
 * with qd_layer_weights.
 * Ops are queued on the context's stream; a failure (device error, out of memory) is returned
 * with the step named, and the caller frees what it holds.
 */
#ifndef QD_MODEL_DEV_H
#define QD_MODEL_DEV_H

#include <stdint.h>

#include "error.h"
#include "model.h"
#include "qd_cuda.h"

/* One decoder layer in device memory (qd_layer_weights' layout; every pointer a device one). */
typedef struct qd_dev_layer {
    int layer;
    float *attn_norm, *mlp_norm;  /* [hidden] */
    float *w[QD_LINEAR_COUNT];    /* [n_out, n_in] */
    float *b[QD_LINEAR_COUNT];    /* [n_out] or NULL */
    int64_t n_out[QD_LINEAR_COUNT];
    int64_t n_in[QD_LINEAR_COUNT];
    void *block;                  /* the one allocation behind the arrays (owned) */
    size_t block_bytes;
} qd_dev_layer;

/* The forward workspace of one model and sequence length on one device. */
typedef struct qd_dev_fwd {
    qd_cuda *c;
    const qd_model *m;
    int64_t seq_len;
    float *rope;        /* device [2, seq_len, head_dim / 2]: cos then sin */
    float *scratch;     /* device, the larger of an attention chunk's and an MLP chunk's */
    int64_t scratch_n;  /* floats */
} qd_dev_fwd;

/* Allocate the workspace for batches of sequences of seq_len tokens. */
qd_err qd_dev_fwd_init(qd_dev_fwd *f, qd_cuda *c, const qd_model *m, int64_t seq_len,
                       qd_error *err);
void qd_dev_fwd_done(qd_dev_fwd *f); /* accepts a zeroed struct */

/* Point d's arrays into a device block sized for w (allocated the first time, or again when
 * the layer's sizes differ) without copying anything. */
qd_err qd_dev_layer_reserve(qd_dev_fwd *f, const qd_layer_weights *w, qd_dev_layer *d,
                            qd_error *err);
/* qd_dev_layer_reserve, then copy every array of w to the device. */
qd_err qd_dev_layer_upload(qd_dev_fwd *f, const qd_layer_weights *w, qd_dev_layer *d,
                           qd_error *err);
/* Copy the arrays a calibration group's callback owns (calib.h) from w again: QKV the
 * input norm and q/k/v, O o_proj, GATE_UP the post-attention norm and gate/up, DOWN down_proj
 * (weights and biases). group is a qd_calib_group. */
qd_err qd_dev_layer_refresh(qd_dev_fwd *f, const qd_layer_weights *w, int group,
                            qd_dev_layer *d, qd_error *err);
void qd_dev_layer_free(qd_dev_fwd *f, qd_dev_layer *d); /* accepts a zeroed struct */

/* forward.c's blocks on device pointers; T = n_seq * seq_len. */
qd_err qd_dev_rmsnorm(qd_dev_fwd *f, float *y, const float *x, const float *weight,
                      int64_t n_tok, qd_error *err);
/* y [n_tok, n_out] = x W^T + b for linear k of d. */
qd_err qd_dev_linear(qd_dev_fwd *f, const qd_dev_layer *d, qd_linear_kind k, const float *x,
                     int64_t n_tok, float *y, qd_error *err);
/* y [T, hidden] = o_proj(attn(xn)) when y is not NULL; attn_out [T, heads * head_dim] (o's
 * input) when not NULL. At least one of them. */
qd_err qd_dev_attention(qd_dev_fwd *f, const qd_dev_layer *d, const float *xn, int64_t n_seq,
                        float *y, float *attn_out, qd_error *err);
/* y [n_tok, hidden] = down(silu(gate(xn)) * up(xn)) when y is not NULL; act [n_tok,
 * intermediate] (down's input) when not NULL. At least one of them. */
qd_err qd_dev_mlp(qd_dev_fwd *f, const qd_dev_layer *d, const float *xn, int64_t n_tok,
                  float *y, float *act, qd_error *err);

#endif /* QD_MODEL_DEV_H */
