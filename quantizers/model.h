/*
 * model.h - the Llama-family model runtime: open a Hugging Face model directory, materialise
 * one decoder layer's weights in fp32, and run the forward pass on the CPU (or through a kernel
 * table, kernels/backend.h, e.g. CUDA's).
 *
 * Usage
 *   qd_model *m;
 *   qd_model_open("dir", &m, &err);                 config.json + (sharded) safetensors, checked
 *   qd_model_nll(m, tokens, n_seq, seq_len, &opts, nll, &err);    perplexity inputs
 *   qd_model_logits(m, tokens, n_seq, seq_len, &opts, logits, &err);
 *   qd_model_free(m);
 * The calibration driver (calib.h) and the quantizers build on the lower-level pieces below:
 * qd_layer_weights_load(), qd_layer_forward() and the block functions.
 *
 * DESIGN
 * Weights stay in the mmap'd safetensors files (any of F32, F16, BF16) for the life of the
 * model; a layer's weights are converted to fp32 only when that layer runs, into a
 * qd_layer_weights the caller owns, and freed after it. Once copied, the file pages of the
 * layer are dropped from the resident set (madvise), so a model larger than memory runs in
 * about one layer of fp32 weights plus one layer of file pages. The forward pass is layer-major: the
 * hidden state X [n_seq * seq_len, hidden] of the whole batch is the only activation that lives
 * from one layer to the next; each layer allocates its own activations and frees them. The
 * vocabulary projection is done in slices of the vocabulary (the lm_head rows converted one
 * slice at a time) with an online log-sum-exp, so neither an fp32 copy of a large lm_head nor a
 * [tokens, vocab] logits matrix is ever needed for perplexity.
 *
 * A hook (qd_run_opts.on_weights) sees every layer's fp32 weights after they are materialised
 * and may change them in place: this is how quantized (fake-quantized or dequantized) weights
 * are evaluated with the same forward pass.
 *
 * Numerics follow transformers' LlamaForCausalLM in fp32: RMSNorm, rotate_half RoPE (with
 * linear / llama3 scaling), grouped-query causal attention, SwiGLU MLP, optional q/k/v/o and
 * MLP biases, tied or separate lm_head.
 */
#ifndef QD_MODEL_H
#define QD_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "error.h"
#include "hf_config.h"
#include "safetensors.h"

/* Largest accepted sizes: a model beyond these is rejected at open time, so every product of
 * two sizes below fits in int64 and every BLAS dimension fits in int. */
#define QD_MODEL_MAX_DIM (1 << 20)    /* hidden, intermediate, heads * head_dim */
#define QD_MODEL_MAX_VOCAB (1 << 24)
#define QD_MODEL_MAX_LAYERS 4096

/* The seven linears of a decoder layer. */
typedef enum qd_linear_kind {
    QD_LINEAR_Q = 0,
    QD_LINEAR_K,
    QD_LINEAR_V,
    QD_LINEAR_O,
    QD_LINEAR_GATE,
    QD_LINEAR_UP,
    QD_LINEAR_DOWN,
    QD_LINEAR_COUNT
} qd_linear_kind;

/* "q_proj", ..., "down_proj"; NULL out of range. */
const char *qd_linear_name(qd_linear_kind k);
/* Module path of a linear, "model.layers.3.self_attn.q_proj" (append ".weight"/".bias").
 * Returns QD_ERR_TOO_LARGE if it does not fit in buf. */
qd_err qd_linear_path(char *buf, size_t len, int layer, qd_linear_kind k, qd_error *err);

/* One decoder layer's weights in fp32, owned by the struct (qd_layer_weights_done frees).
 * Every array is contiguous row-major; a linear's weight is W [n_out, n_in] (y = x W^T + b). */
typedef struct qd_layer_weights {
    int layer;
    int64_t hidden;
    float *attn_norm;                 /* [hidden] input_layernorm.weight */
    float *mlp_norm;                  /* [hidden] post_attention_layernorm.weight */
    float *w[QD_LINEAR_COUNT];        /* [n_out, n_in] */
    float *b[QD_LINEAR_COUNT];        /* [n_out], NULL when the linear has no bias */
    int64_t n_out[QD_LINEAR_COUNT];
    int64_t n_in[QD_LINEAR_COUNT];
} qd_layer_weights;

typedef struct qd_model qd_model;

/* Called with a layer's freshly materialised fp32 weights; may modify them in place (not
 * reallocate them). A failure stops the run and its error is returned. */
typedef qd_err (*qd_weights_hook)(void *ctx, qd_layer_weights *w, qd_error *err);

/* How to run. Zero-initialise for the defaults (cpu kernels, qd_cpu_threads() threads). */
typedef struct qd_run_opts {
    bool use_ref;               /* the reference kernels (slow; triage and tests) */
    /* Optional kernel table (kernels/backend.h), e.g. the CUDA one: matmul, attention,
     * rmsnorm, rope, silu_mul and X^T X go through it (a NULL entry: the cpu kernel), and the
     * quantizers run their per-linear steps on its device (job.h). NULL: today's kernels,
     * cpu or, with use_ref, ref. A failing entry (a device error) fails the run. */
    const qd_kernels *kernels;
    qd_weights_hook on_weights; /* optional, see above */
    void *hook_ctx;
    /* Optional progress callback, called after each layer of a batch (layer = n_layers for
     * the head). Returning non-zero cancels the run with QD_ERR_CANCELLED. */
    int (*on_progress)(void *ctx, int layer, int n_layers);
    void *progress_ctx;
    /* Optional: called with the input of each group of linears right before their GEMMs, on a
     * buffer only those linears read; it may change x in place (activation fake-quantization
     * when evaluating W8A8 / FP8). kind is the FIRST linear reading x: Q (the shared q/k/v
     * input), O, GATE (the shared gate/up input), DOWN. x: [n_tok, n_in]; called once per
     * token chunk. Leave it NULL for calibration, which must see float activations. A failure
     * stops the run and is returned. */
    qd_err (*on_linear_input)(void *ctx, int layer, qd_linear_kind kind, float *x,
                              int64_t n_tok, int64_t n_in, qd_error *err);
    void *linear_input_ctx;
    /* lm_head rows converted to fp32 per slice of the vocabulary; 0: as many as fit in
     * 64 MiB. (A memory/speed trade-off; results agree to rounding.) */
    int64_t head_slice_rows;
} qd_run_opts;

/* ---- open / inspect ---- */

/* Open a model directory: config.json (qd_llama_config_load) and model.safetensors or its
 * sharded index (qd_st_model_open). Every tensor the config implies is checked: present,
 * expected shape, float dtype F32/F16/BF16. Errors name the tensor and the expected vs found
 * shape (QD_ERR_FORMAT), a missing tensor (QD_ERR_NOT_FOUND), or an unsupported dtype
 * (QD_ERR_UNSUPPORTED). lm_head.weight is required unless tie_word_embeddings is set; biases
 * are required where the config says attention_bias / mlp_bias, and optional q/k/v biases are
 * picked up when present (Qwen2-style checkpoints). The caller frees with qd_model_free(). */
qd_err qd_model_open(const char *dir, qd_model **ret_model, qd_error *err);

/* Flags of qd_model_open_ex(). */
enum {
    /* The seven decoder linears' .weight tensors live elsewhere (a quantized artifact keeps
     * them packed): they are neither looked up nor checked, qd_layer_weights_load() hands out
     * zero-filled fp32 arrays of the shapes config.json implies, and the caller MUST fill
     * them from a qd_run_opts.on_weights hook. Everything else (embeddings, norms, lm_head,
     * the biases the config announces) is checked as by qd_model_open(). */
    QD_MODEL_OPEN_EXTERNAL_LINEARS = 1u << 0,
};

/* qd_model_open() with flags (QD_MODEL_OPEN_*; unknown bits are QD_ERR_INVALID_ARG). */
qd_err qd_model_open_ex(const char *dir, unsigned flags, qd_model **ret_model, qd_error *err);
void qd_model_free(qd_model *m); /* accepts NULL */

const qd_llama_config *qd_model_config(const qd_model *m);
/* The weights' storage (borrowed; valid until qd_model_free). */
const qd_st_model *qd_model_weights(const qd_model *m);
/* Whether the linear has a bias in this model. */
bool qd_model_has_bias(const qd_model *m, qd_linear_kind k);

/* Check that tokens [n_seq * seq_len] are in [0, vocab) and seq_len in
 * [1, max_position_embeddings]: QD_ERR_INVALID_ARG naming the row, position and id. */
qd_err qd_model_check_tokens(const qd_model *m, const int32_t *tokens, int64_t n_seq,
                             int64_t seq_len, qd_error *err);

/* ---- per-layer weights ---- */

/* Materialise layer `layer` in fp32 (allocates; free with qd_layer_weights_done). */
qd_err qd_layer_weights_load(const qd_model *m, int layer, qd_layer_weights *ret,
                             qd_error *err);
void qd_layer_weights_done(qd_layer_weights *w); /* frees; accepts a zeroed struct */

/* ---- forward pieces (all tensors fp32 row-major; T = n_seq * seq_len) ---- */

/* x [n_tok, hidden] = embed_tokens[tokens]. Tokens must be checked already. */
qd_err qd_model_embed(const qd_model *m, const int32_t *tokens, int64_t n_tok, float *x,
                      qd_error *err);

/* One linear: y [n_tok, n_out] = x [n_tok, n_in] W^T + b. With a kernel table whose matmul
 * fails (o->kernels, a device error) this falls back to the cpu kernel; code that must see
 * the failure calls qd_linear_forward_ex. */
void qd_linear_forward(const qd_layer_weights *w, qd_linear_kind k, const float *x,
                       int64_t n_tok, float *y, const qd_run_opts *o);
/* The same, returning the kernel table's error. */
qd_err qd_linear_forward_ex(const qd_layer_weights *w, qd_linear_kind k, const float *x,
                            int64_t n_tok, float *y, const qd_run_opts *o, qd_error *err);

/* The attention block on its normalised input: y [T, hidden] = o_proj(attn(q, k, v)) where
 * q/k/v = proj(xn), xn [T, hidden] = input_layernorm(x). No residual. When attn_out is not
 * NULL the attention output (o_proj's input, [T, n_heads * head_dim]) is stored there too. */
qd_err qd_block_attention(const qd_model *m, const qd_layer_weights *w, const float *xn,
                          int64_t n_seq, int64_t seq_len, float *y, float *attn_out,
                          const qd_run_opts *o, qd_error *err);

/* The MLP block on its normalised input: y [n_tok, hidden] = down(silu(gate(xn)) * up(xn)),
 * xn = post_attention_layernorm(h). No residual. When act is not NULL the down_proj input
 * silu(gate) * up [n_tok, intermediate] is stored there too. */
qd_err qd_block_mlp(const qd_model *m, const qd_layer_weights *w, const float *xn,
                    int64_t n_tok, float *y, float *act, const qd_run_opts *o, qd_error *err);

/* RMSNorm with the model's eps: y [n_tok, hidden] = rmsnorm(x) * weight ([hidden]). A failing
 * kernel-table entry falls back to the cpu kernel, as qd_linear_forward. */
void qd_model_rmsnorm(const qd_model *m, const float *x, const float *weight, int64_t n_tok,
                      float *y, const qd_run_opts *o);
/* The same, returning the kernel table's error. */
qd_err qd_model_rmsnorm_ex(const qd_model *m, const float *x, const float *weight,
                           int64_t n_tok, float *y, const qd_run_opts *o, qd_error *err);

/* A whole decoder layer: x_out = h + mlp(norm(h)), h = x_in + attn(norm(x_in)).
 * x_in, x_out [T, hidden]; x_out may equal x_in. */
qd_err qd_layer_forward(const qd_model *m, const qd_layer_weights *w, const float *x_in,
                        float *x_out, int64_t n_seq, int64_t seq_len, const qd_run_opts *o,
                        qd_error *err);

/* ---- whole model ---- */

/* Logits of every position: logits [n_seq * seq_len, vocab] (caller-allocated). Runs every
 * layer (with o->on_weights applied) then the final norm and lm_head. */
qd_err qd_model_logits(const qd_model *m, const int32_t *tokens, int64_t n_seq,
                       int64_t seq_len, const qd_run_opts *o, float *logits, qd_error *err);

/* Negative log-likelihood of each row: ret_nll[s] = sum over positions i < seq_len - 1 of
 * -log softmax(logits[s, i])[tokens[s, i + 1]], in nats. ret_nll: [n_seq]. Perplexity over
 * the batch is exp(sum(ret_nll) / (n_seq * (seq_len - 1))). */
qd_err qd_model_nll(const qd_model *m, const int32_t *tokens, int64_t n_seq, int64_t seq_len,
                    const qd_run_opts *o, double *ret_nll, qd_error *err);

#endif /* QD_MODEL_H */
