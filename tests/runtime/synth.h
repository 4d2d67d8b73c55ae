/*
 * synth.h - write random Llama-family models of any size in the Hugging Face layout.
 *
 * A synthetic model is a directory with config.json and safetensors weights (one file or
 * shards + model.safetensors.index.json), F32, F16 or BF16, filled from a seed. It exists to
 * test and benchmark the runtime and the quantizers at sizes the bundled models do not reach
 * (up to billions of parameters) without downloading anything.
 *
 * DESIGN
 * Writing streams: the header of each shard is computed from the shapes alone, then every
 * tensor is generated and written in chunks of QD_SYNTH_CHUNK values, so memory stays at a
 * few MiB whatever the model size. Each tensor's values depend only on (seed, tensor name),
 * never on the dtype's write order or the sharding, so the same seed gives the same weights
 * for any shard size (and the same values before rounding for any dtype).
 *
 * Values: embeddings (and an untied lm_head) uniform with standard deviation 0.02; linear
 * weights uniform with standard deviation 1/sqrt(in_features), so activations keep their
 * scale through the layers; RMSNorm weights uniform in [0.9, 1.1]; biases uniform in
 * [-0.1, 0.1].
 */
#ifndef QD_SYNTH_H
#define QD_SYNTH_H

#include <stdbool.h>
#include <stdint.h>

#include "error.h"
#include "tensor.h"

typedef struct qd_synth_spec {
    const char *architecture;  /* "LlamaForCausalLM" (default when NULL), "Qwen2ForCausalLM" */
    int hidden_size;
    int intermediate_size;
    int num_hidden_layers;
    int num_attention_heads;
    int num_key_value_heads;
    int head_dim;              /* 0: hidden_size / num_attention_heads */
    int vocab_size;
    int max_position_embeddings;
    double rms_norm_eps;       /* 0: 1e-5 */
    double rope_theta;         /* 0: 10000 */
    bool tie_word_embeddings;
    bool qkv_bias;             /* q/k/v biases (Qwen2 always has them) */
    qd_dtype dtype;            /* F32, F16 or BF16 */
    uint64_t seed;
    uint64_t max_shard_bytes;  /* 0: one model.safetensors */
} qd_synth_spec;

/* Write the model into dir (created if missing; existing files of the same names are
 * replaced). Returns QD_ERR_INVALID_ARG for an impossible spec (naming the field), QD_ERR_IO
 * naming the file on a write failure. */
qd_err qd_synth_write(const char *dir, const qd_synth_spec *s, qd_error *err);

/* Parameter count of the spec (what qd_synth_write will write). */
int64_t qd_synth_param_count(const qd_synth_spec *s);

#endif /* QD_SYNTH_H */
