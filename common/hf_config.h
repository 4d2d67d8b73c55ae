/*
 * hf_config.h - the Hugging Face config.json of a Llama-family model.
 *
 * Accepted architectures (the same decoder block): LlamaForCausalLM, MistralForCausalLM,
 * Qwen2ForCausalLM (q/k/v bias). The first entry of `architectures` decides; anything else is
 * QD_ERR_UNSUPPORTED naming the architecture, as is a rope_scaling type other than default,
 * linear and llama3, and a torch_dtype other than float32/float16/bfloat16. Missing required
 * keys, wrong JSON types and impossible values (heads not dividing hidden size, kv heads not
 * dividing heads, non-positive sizes, hidden_act other than silu) are QD_ERR_CONFIG naming the
 * key and the file; text that is not JSON at all is QD_ERR_FORMAT.
 *
 * Required keys: hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
 * vocab_size (transformers would silently default them to a 7B model's; quantd refuses).
 * Integer keys must be JSON integers (4096.0 and 4096.5 are both refused).
 *
 * Defaults follow transformers' config class of the architecture when a key is absent:
 *
 *   key                        Llama        Mistral      Qwen2
 *   num_key_value_heads        heads        8            32        (null: heads)
 *   head_dim                   hidden_size / num_attention_heads (null: the same)
 *   max_position_embeddings    2048         131072       32768
 *   rms_norm_eps               1e-6         1e-6         1e-6
 *   rope_theta                 10000        10000        10000
 *   tie_word_embeddings        false        false        false
 *   bos_token_id / eos         1 / 2        1 / 2        none / none   (null: none = -1)
 *   sliding window             none         4096         only with use_sliding_window
 *   torch_dtype ("dtype")      float32      float32      float32
 *
 * Biases: Llama's attention_bias puts a bias on q, k, v AND o_proj, mlp_bias on gate, up and
 * down. Qwen2 always has q/k/v biases and never an o_proj or MLP bias (its config carries no
 * key for it). Mistral has no biases. The runtime reads qkv_bias / o_bias / mlp_bias, never the
 * config keys.
 *
 * RoPE: newer configs (transformers >= 5) put rope_theta and the scaling keys in one
 * "rope_parameters" object; older ones use top-level rope_theta plus a "rope_scaling" object
 * whose type is "rope_type" (or legacy "type"). Both are read; rope_parameters wins.
 */
#ifndef QD_HF_CONFIG_H
#define QD_HF_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include "error.h"
#include "tensor.h"

/* Most eos ids kept from an eos_token_id list (Llama 3.1 has 3). A longer list is an error. */
#define QD_LLAMA_MAX_EOS 16

typedef enum qd_rope_type {
    QD_ROPE_DEFAULT = 0, /* no rope_scaling (or rope_type "default") */
    QD_ROPE_LLAMA3,      /* rope_type "llama3": factor, low/high_freq_factor, original_max */
    QD_ROPE_LINEAR,      /* rope_type "linear": positions divided by factor */
} qd_rope_type;

typedef struct qd_llama_config {
    char architecture[64]; /* "LlamaForCausalLM" */
    char model_type[32];   /* "llama", "mistral", "qwen2" (the config's, else the arch's) */
    int hidden_size;
    int intermediate_size;
    int num_hidden_layers;
    int num_attention_heads;
    int num_key_value_heads; /* divides num_attention_heads */
    int head_dim;            /* even (rotary pairs) */
    int vocab_size;
    int max_position_embeddings;
    double rms_norm_eps;
    double rope_theta;
    struct {
        qd_rope_type type;
        double factor;           /* 1 for DEFAULT */
        double low_freq_factor;  /* LLAMA3 only, else 0 */
        double high_freq_factor; /* LLAMA3 only (> low_freq_factor), else 0 */
        int original_max_position_embeddings; /* LLAMA3 only, else 0 */
    } rope_scaling;
    bool tie_word_embeddings; /* no lm_head.weight: the output projection is embed_tokens */
    bool attention_bias; /* q/k/v carry a bias (same as qkv_bias; kept for older callers) */
    bool qkv_bias;       /* q_proj, k_proj, v_proj have .bias (Llama attention_bias, Qwen2) */
    bool o_bias;         /* o_proj has .bias (Llama attention_bias only; never Qwen2) */
    bool mlp_bias;       /* gate/up/down_proj have .bias (Llama mlp_bias only) */
    /* Sliding-window attention: 0 = none (full causal attention). Otherwise layers with index
     * >= sliding_window_first_layer let a query at position p see keys p-sliding_window+1 .. p
     * (transformers' mask). Recorded only when the window is smaller than
     * max_position_embeddings; a runtime without the window must refuse sequences longer than
     * it. Mistral: sliding_window (default 4096, null = none), every layer. Qwen2: only when
     * use_sliding_window is true, layers >= max_window_layers (default 28). */
    int sliding_window;
    int sliding_window_first_layer;
    qd_dtype torch_dtype;  /* F32, F16 or BF16 */
    int bos_token_id;      /* -1 when none (first one if a list) */
    int eos_token_id;      /* -1 when none (first one if a list) */
    int n_eos_token_ids;   /* every eos id of the list (0 when none) */
    int eos_token_ids[QD_LLAMA_MAX_EOS];
} qd_llama_config;

/* Parse config.json text (need not be NUL-terminated). label names the source in errors. On
 * failure *out is left untouched. */
qd_err qd_llama_config_parse(const char *json, size_t len, const char *label,
                             qd_llama_config *out, qd_error *err);
/* Read and parse a file (a directory is taken to mean DIR/config.json). */
qd_err qd_llama_config_load(const char *path, qd_llama_config *out, qd_error *err);

/* Parameter count implied by the config: embeddings V*H; per layer q (H -> heads*hd),
 * k and v (H -> kv*hd), o (heads*hd -> H), gate and up (H -> I), down (I -> H), the two
 * RMSNorm weights (H each) and the biases that are present; the final norm (H); lm_head V*H
 * unless tied. -1 if the count does not fit in a long long. */
long long qd_llama_config_param_count(const qd_llama_config *c);

#endif /* QD_HF_CONFIG_H */
