/*
 * hf_config.h - the Hugging Face config.json of a Llama-family model.
 *
 * Accepted architectures (the same decoder block): LlamaForCausalLM, MistralForCausalLM,
 * Qwen2ForCausalLM (q/k/v bias). Anything else is QD_ERR_UNSUPPORTED naming the
 * architecture. Missing required keys, wrong JSON types and impossible values (heads not
 * dividing hidden size, kv heads not dividing heads, non-positive sizes, hidden_act other than
 * silu) are QD_ERR_CONFIG naming the key.
 *
 * Defaults follow transformers' LlamaConfig: num_key_value_heads = num_attention_heads,
 * head_dim = hidden_size / num_attention_heads, rms_norm_eps 1e-6, rope_theta 10000,
 * max_position_embeddings 2048, tie_word_embeddings false, torch_dtype float32.
 */
#ifndef QD_HF_CONFIG_H
#define QD_HF_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include "error.h"
#include "tensor.h"

typedef enum qd_rope_type {
    QD_ROPE_DEFAULT = 0, /* no rope_scaling */
    QD_ROPE_LLAMA3,      /* rope_type "llama3": factor, low/high_freq_factor, original_max */
    QD_ROPE_LINEAR,      /* rope_type "linear": positions divided by factor */
} qd_rope_type;

typedef struct qd_llama_config {
    char architecture[64]; /* "LlamaForCausalLM" */
    char model_type[32];   /* "llama", "mistral", "qwen2" */
    int hidden_size;
    int intermediate_size;
    int num_hidden_layers;
    int num_attention_heads;
    int num_key_value_heads;
    int head_dim;
    int vocab_size;
    int max_position_embeddings;
    double rms_norm_eps;
    double rope_theta;
    struct {
        qd_rope_type type;
        double factor;
        double low_freq_factor;
        double high_freq_factor;
        int original_max_position_embeddings;
    } rope_scaling;
    bool tie_word_embeddings;
    bool attention_bias; /* q/k/v (and o for Llama) carry a bias; true for Qwen2's q/k/v */
    bool mlp_bias;
    qd_dtype torch_dtype;  /* F32, F16 or BF16 */
    int bos_token_id;      /* -1 when absent */
    int eos_token_id;      /* -1 when absent (first one if a list) */
} qd_llama_config;

/* Parse config.json text. label names the source in errors. */
qd_err qd_llama_config_parse(const char *json, size_t len, const char *label,
                             qd_llama_config *out, qd_error *err);
/* Read and parse a file (a directory is taken to mean DIR/config.json). */
qd_err qd_llama_config_load(const char *path, qd_llama_config *out, qd_error *err);

/* Parameter count implied by the config (embeddings, decoder blocks, final norm, and lm_head
 * unless tied). */
long long qd_llama_config_param_count(const qd_llama_config *c);

#endif /* QD_HF_CONFIG_H */
