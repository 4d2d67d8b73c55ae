/*
 * test-hf-config.c - the Llama-family config.json reader.
 *
 * The bundled models are the ground truth for the happy path: the parameter count implied by
 * their config.json must equal the number of elements actually stored in model.safetensors
 * (summed here from the file's JSON header, read directly with jansson so this test does not
 * depend on quantd's safetensors reader), and the per-tensor shapes must match the dimensions
 * the config gives. Synthetic configs, built as jansson objects and edited one key at a time,
 * cover the defaults of each architecture, RoPE scaling, and every refusal.
 */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fsutil.h"
#include "hf_config.h"
#include "test.h"

/* ---- helpers ---------------------------------------------------------------------------- */

/* A small, complete Llama config. Tests edit it and parse the dump. */
static json_t *base_config(const char *arch) {
    json_t *o = json_object();
    json_t *a = json_array();
    json_array_append_new(a, json_string(arch));
    json_object_set_new(o, "architectures", a);
    json_object_set_new(o, "hidden_size", json_integer(256));
    json_object_set_new(o, "intermediate_size", json_integer(688));
    json_object_set_new(o, "num_hidden_layers", json_integer(3));
    json_object_set_new(o, "num_attention_heads", json_integer(8));
    json_object_set_new(o, "vocab_size", json_integer(1000));
    return o;
}

/* Parse o (and release it). */
static qd_err parse_obj(json_t *o, qd_llama_config *c, qd_error *e) {
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (!s) return QD_ERR_NOMEM;
    qd_err rc = qd_llama_config_parse(s, strlen(s), "test/config.json", c, e);
    free(s);
    return rc;
}

/* Parse o, expect failure with code; the message must name the file and needle. */
static void expect_error(json_t *o, qd_err code, const char *needle, const char *what) {
    qd_llama_config c;
    memset(&c, 0x5a, sizeof c);
    qd_llama_config before = c;
    qd_error e = {0};
    qd_err rc = parse_obj(o, &c, &e);
    QD_CHECK_MSG(rc == code, "%s: got %s (%s), want %s", what, qd_err_name(rc), e.msg,
                 qd_err_name(code));
    QD_CHECK_MSG(strstr(e.msg, "test/config.json") != NULL, "%s: message lacks the file: %s",
                 what, e.msg);
    QD_CHECK_MSG(strstr(e.msg, needle) != NULL, "%s: message lacks '%s': %s", what, needle,
                 e.msg);
    QD_CHECK_MSG(memcmp(&c, &before, sizeof c) == 0, "%s: *out written on failure", what);
}

/* Sum of numel over the tensors of a safetensors file, from its header alone; also returns
 * the header so the caller can look at shapes. */
static long long safetensors_numel(const char *path, json_t **header) {
    char *buf;
    size_t len;
    qd_error e = {0};
    *header = NULL;
    if (qd_read_file(path, 64u << 20, &buf, &len, &e) != QD_OK || len < 8) return -1;
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | (unsigned char)buf[i];
    if (n > len - 8) {
        free(buf);
        return -1;
    }
    json_error_t jerr;
    json_t *h = json_loadb(buf + 8, (size_t)n, 0, &jerr);
    free(buf);
    if (!h) return -1;
    long long total = 0;
    const char *name;
    json_t *t;
    json_object_foreach(h, name, t) {
        if (strcmp(name, "__metadata__") == 0) continue;
        long long numel = 1;
        size_t i;
        json_t *d;
        json_array_foreach(json_object_get(t, "shape"), i, d) numel *= json_integer_value(d);
        total += numel;
    }
    *header = h;
    return total;
}

/* shape of a tensor as "[a, b]" from a safetensors header */
static const char *shape_of(json_t *h, const char *name, char *buf, size_t len) {
    json_t *s = json_object_get(json_object_get(h, name), "shape");
    size_t i, used = 0;
    json_t *d;
    buf[0] = '\0';
    if (!s) return "(missing)";
    used += (size_t)snprintf(buf, len, "[");
    json_array_foreach(s, i, d) {
        used += (size_t)snprintf(buf + used, len - used, "%s%lld", i ? ", " : "",
                                 (long long)json_integer_value(d));
    }
    snprintf(buf + used, len - used, "]");
    return buf;
}

static void expect_shape(json_t *h, const char *name, long long d0, long long d1) {
    char want[64], got[64];
    if (d1 >= 0)
        snprintf(want, sizeof want, "[%lld, %lld]", d0, d1);
    else
        snprintf(want, sizeof want, "[%lld]", d0);
    QD_CHECK_MSG(strcmp(shape_of(h, name, got, sizeof got), want) == 0, "%s: %s, config says %s",
                 name, got, want);
}

/* The config of a bundled model against its weights. */
static void check_bundled(const char *model) {
    char dir[512], st[600];
    qd_error e = {0};
    qd_llama_config c;
    snprintf(dir, sizeof dir, "%s/examples/models/%s", QD_SOURCE_DIR, model);
    snprintf(st, sizeof st, "%s/model.safetensors", dir);
    QD_CHECK_OK(qd_llama_config_load(dir, &c, &e), &e); /* a directory means DIR/config.json */
    QD_REQUIRE(e.code == QD_OK);

    json_t *h;
    long long stored = safetensors_numel(st, &h);
    QD_REQUIRE(stored > 0);
    QD_CHECK_EQ_INT(qd_llama_config_param_count(&c), stored);

    long long H = c.hidden_size, I = c.intermediate_size;
    long long q = (long long)c.num_attention_heads * c.head_dim;
    long long kv = (long long)c.num_key_value_heads * c.head_dim;
    expect_shape(h, "model.embed_tokens.weight", c.vocab_size, H);
    expect_shape(h, "model.norm.weight", H, -1);
    for (int l = 0; l < c.num_hidden_layers; l++) {
        char n[128];
        snprintf(n, sizeof n, "model.layers.%d.self_attn.q_proj.weight", l);
        expect_shape(h, n, q, H);
        snprintf(n, sizeof n, "model.layers.%d.self_attn.k_proj.weight", l);
        expect_shape(h, n, kv, H);
        snprintf(n, sizeof n, "model.layers.%d.self_attn.v_proj.weight", l);
        expect_shape(h, n, kv, H);
        snprintf(n, sizeof n, "model.layers.%d.self_attn.o_proj.weight", l);
        expect_shape(h, n, H, q);
        snprintf(n, sizeof n, "model.layers.%d.mlp.gate_proj.weight", l);
        expect_shape(h, n, I, H);
        snprintf(n, sizeof n, "model.layers.%d.mlp.up_proj.weight", l);
        expect_shape(h, n, I, H);
        snprintf(n, sizeof n, "model.layers.%d.mlp.down_proj.weight", l);
        expect_shape(h, n, H, I);
        snprintf(n, sizeof n, "model.layers.%d.input_layernorm.weight", l);
        expect_shape(h, n, H, -1);
    }
    /* tied: no lm_head in the file */
    QD_CHECK(c.tie_word_embeddings == (json_object_get(h, "lm_head.weight") == NULL));
    /* no layer beyond num_hidden_layers */
    char n[128];
    snprintf(n, sizeof n, "model.layers.%d.mlp.up_proj.weight", c.num_hidden_layers);
    QD_CHECK(json_object_get(h, n) == NULL);
    json_decref(h);
}

/* ---- the bundled models ----------------------------------------------------------------- */

QD_TEST(babyllama_fields) {
    qd_error e = {0};
    qd_llama_config c;
    QD_CHECK_OK(qd_llama_config_load(QD_SOURCE_DIR "/examples/models/babyllama/config.json", &c,
                                     &e), &e);
    QD_REQUIRE(e.code == QD_OK);
    QD_CHECK_EQ_STR(c.architecture, "LlamaForCausalLM");
    QD_CHECK_EQ_STR(c.model_type, "llama");
    QD_CHECK_EQ_INT(c.hidden_size, 128);
    QD_CHECK_EQ_INT(c.intermediate_size, 352);
    QD_CHECK_EQ_INT(c.num_hidden_layers, 5);
    QD_CHECK_EQ_INT(c.num_attention_heads, 8);
    QD_CHECK_EQ_INT(c.num_key_value_heads, 4);
    QD_CHECK_EQ_INT(c.head_dim, 16);
    QD_CHECK_EQ_INT(c.vocab_size, 105);
    QD_CHECK_EQ_INT(c.max_position_embeddings, 256);
    QD_CHECK_NEAR(c.rms_norm_eps, 1e-5, 1e-12);
    QD_CHECK_NEAR(c.rope_theta, 10000.0, 0);
    QD_CHECK_EQ_INT(c.rope_scaling.type, QD_ROPE_DEFAULT);
    QD_CHECK(c.tie_word_embeddings);
    QD_CHECK(!c.attention_bias && !c.qkv_bias && !c.o_bias && !c.mlp_bias);
    QD_CHECK_EQ_INT(c.torch_dtype, QD_DTYPE_F32);
    QD_CHECK_EQ_INT(c.bos_token_id, 1);
    QD_CHECK_EQ_INT(c.eos_token_id, 2);
    QD_CHECK_EQ_INT(c.n_eos_token_ids, 1);
    QD_CHECK_EQ_INT(c.sliding_window, 0);
}

QD_TEST(babyllama_param_count_matches_weights) { check_bundled("babyllama"); }
QD_TEST(stories260k_param_count_matches_weights) { check_bundled("stories260k"); }

QD_TEST(missing_file_names_the_path) {
    qd_error e = {0};
    qd_llama_config c;
    QD_CHECK_EQ_INT(qd_llama_config_load("/nonexistent-qd/model", &c, &e), QD_ERR_NOT_FOUND);
    QD_CHECK(strstr(e.msg, "/nonexistent-qd/model") != NULL);
}

/* ---- architectures and their defaults --------------------------------------------------- */

QD_TEST(llama_defaults) {
    qd_error e = {0};
    qd_llama_config c;
    QD_CHECK_OK(parse_obj(base_config("LlamaForCausalLM"), &c, &e), &e);
    QD_REQUIRE(e.code == QD_OK);
    QD_CHECK_EQ_STR(c.model_type, "llama");
    QD_CHECK_EQ_INT(c.num_key_value_heads, 8); /* = heads */
    QD_CHECK_EQ_INT(c.head_dim, 32);           /* 256 / 8 */
    QD_CHECK_EQ_INT(c.max_position_embeddings, 2048);
    QD_CHECK_NEAR(c.rms_norm_eps, 1e-6, 1e-15);
    QD_CHECK_NEAR(c.rope_theta, 10000.0, 0);
    QD_CHECK_EQ_INT(c.rope_scaling.type, QD_ROPE_DEFAULT);
    QD_CHECK_NEAR(c.rope_scaling.factor, 1.0, 0);
    QD_CHECK(!c.tie_word_embeddings);
    QD_CHECK(!c.qkv_bias && !c.o_bias && !c.mlp_bias);
    QD_CHECK_EQ_INT(c.torch_dtype, QD_DTYPE_F32);
    QD_CHECK_EQ_INT(c.bos_token_id, 1);
    QD_CHECK_EQ_INT(c.eos_token_id, 2);
    QD_CHECK_EQ_INT(c.sliding_window, 0);
    /* embed + lm_head + 3 x (4 x 256^2 attention + 3 x 256 x 688 MLP + 2 norms) + norm */
    QD_CHECK_EQ_INT(qd_llama_config_param_count(&c),
                    2LL * 1000 * 256 + 3LL * (4 * 256 * 256 + 3 * 256 * 688 + 2 * 256) + 256);
}

QD_TEST(mistral_defaults_and_sliding_window) {
    qd_error e = {0};
    qd_llama_config c;
    json_t *o = base_config("MistralForCausalLM");
    json_object_set_new(o, "num_attention_heads", json_integer(32));
    json_object_set_new(o, "attention_bias", json_true()); /* not read by MistralConfig */
    QD_CHECK_OK(parse_obj(o, &c, &e), &e);
    QD_CHECK_EQ_STR(c.model_type, "mistral");
    QD_CHECK_EQ_INT(c.num_key_value_heads, 8); /* MistralConfig's default, not = heads */
    QD_CHECK_EQ_INT(c.head_dim, 8);
    QD_CHECK_EQ_INT(c.max_position_embeddings, 131072);
    QD_CHECK_EQ_INT(c.sliding_window, 4096);
    QD_CHECK_EQ_INT(c.sliding_window_first_layer, 0);
    QD_CHECK(!c.qkv_bias && !c.o_bias);
    QD_CHECK_EQ_INT(c.bos_token_id, 1);

    /* null kv heads means "= heads"; null window means none */
    o = base_config("MistralForCausalLM");
    json_object_set_new(o, "num_key_value_heads", json_null());
    json_object_set_new(o, "sliding_window", json_null());
    QD_CHECK_OK(parse_obj(o, &c, &e), &e);
    QD_CHECK_EQ_INT(c.num_key_value_heads, 8);
    QD_CHECK_EQ_INT(c.sliding_window, 0);

    /* a window as long as the context is no window */
    o = base_config("MistralForCausalLM");
    json_object_set_new(o, "max_position_embeddings", json_integer(4096));
    QD_CHECK_OK(parse_obj(o, &c, &e), &e);
    QD_CHECK_EQ_INT(c.sliding_window, 0);
    o = base_config("MistralForCausalLM");
    json_object_set_new(o, "max_position_embeddings", json_integer(4096));
    json_object_set_new(o, "sliding_window", json_integer(1024));
    QD_CHECK_OK(parse_obj(o, &c, &e), &e);
    QD_CHECK_EQ_INT(c.sliding_window, 1024);

    /* the absent-key default of 8 kv heads must divide the heads */
    o = base_config("MistralForCausalLM");
    json_object_set_new(o, "num_attention_heads", json_integer(4));
    expect_error(o, QD_ERR_CONFIG, "num_key_value_heads", "mistral default kv heads");
}

QD_TEST(qwen2_biases_and_defaults) {
    qd_error e = {0};
    qd_llama_config c, plain;
    json_t *o = base_config("Qwen2ForCausalLM");
    json_object_set_new(o, "num_key_value_heads", json_integer(2));
    json_object_set_new(o, "sliding_window", json_integer(64)); /* ignored without use_... */
    QD_CHECK_OK(parse_obj(o, &c, &e), &e);
    QD_REQUIRE(e.code == QD_OK);
    QD_CHECK_EQ_STR(c.model_type, "qwen2");
    QD_CHECK(c.qkv_bias && c.attention_bias);
    QD_CHECK(!c.o_bias && !c.mlp_bias);
    QD_CHECK_EQ_INT(c.max_position_embeddings, 32768);
    QD_CHECK_EQ_INT(c.bos_token_id, -1);
    QD_CHECK_EQ_INT(c.eos_token_id, -1);
    QD_CHECK_EQ_INT(c.n_eos_token_ids, 0);
    QD_CHECK_EQ_INT(c.sliding_window, 0);
    /* the q/k/v biases are exactly what separates it from the same Llama */
    o = base_config("LlamaForCausalLM");
    json_object_set_new(o, "num_key_value_heads", json_integer(2));
    QD_CHECK_OK(parse_obj(o, &plain, &e), &e);
    QD_CHECK_EQ_INT(qd_llama_config_param_count(&c) - qd_llama_config_param_count(&plain),
                    3LL * (256 + 2 * 2 * 32));

    /* absent kv heads: Qwen2Config's 32, which 8 heads cannot use */
    expect_error(base_config("Qwen2ForCausalLM"), QD_ERR_CONFIG, "num_key_value_heads",
                 "qwen2 default kv heads");

    o = base_config("Qwen2ForCausalLM");
    json_object_set_new(o, "num_key_value_heads", json_integer(8));
    json_object_set_new(o, "use_sliding_window", json_true());
    json_object_set_new(o, "max_window_layers", json_integer(1));
    QD_CHECK_OK(parse_obj(o, &c, &e), &e);
    QD_CHECK_EQ_INT(c.sliding_window, 4096);
    QD_CHECK_EQ_INT(c.sliding_window_first_layer, 1);
    /* default max_window_layers 28 >= 3 layers: no layer slides */
    o = base_config("Qwen2ForCausalLM");
    json_object_set_new(o, "num_key_value_heads", json_integer(8));
    json_object_set_new(o, "use_sliding_window", json_true());
    QD_CHECK_OK(parse_obj(o, &c, &e), &e);
    QD_CHECK_EQ_INT(c.sliding_window, 0);
}

QD_TEST(llama_biases_count) {
    qd_error e = {0};
    qd_llama_config plain, att, mlp, untied;
    QD_CHECK_OK(parse_obj(base_config("LlamaForCausalLM"), &plain, &e), &e);
    json_t *o = base_config("LlamaForCausalLM");
    json_object_set_new(o, "attention_bias", json_true());
    QD_CHECK_OK(parse_obj(o, &att, &e), &e);
    QD_CHECK(att.qkv_bias && att.o_bias && att.attention_bias && !att.mlp_bias);
    /* q, k, v (3 x 256) and o (256) per layer */
    QD_CHECK_EQ_INT(qd_llama_config_param_count(&att) - qd_llama_config_param_count(&plain),
                    3LL * 4 * 256);
    o = base_config("LlamaForCausalLM");
    json_object_set_new(o, "mlp_bias", json_true());
    QD_CHECK_OK(parse_obj(o, &mlp, &e), &e);
    QD_CHECK(mlp.mlp_bias && !mlp.qkv_bias);
    QD_CHECK_EQ_INT(qd_llama_config_param_count(&mlp) - qd_llama_config_param_count(&plain),
                    3LL * (2 * 688 + 256));
    o = base_config("LlamaForCausalLM");
    json_object_set_new(o, "tie_word_embeddings", json_true());
    QD_CHECK_OK(parse_obj(o, &untied, &e), &e);
    QD_CHECK_EQ_INT(qd_llama_config_param_count(&plain) - qd_llama_config_param_count(&untied),
                    1000LL * 256);
}

QD_TEST(explicit_head_dim_and_gqa) {
    qd_error e = {0};
    qd_llama_config c;
    json_t *o = base_config("LlamaForCausalLM");
    json_object_set_new(o, "hidden_size", json_integer(100)); /* 100 % 8 != 0: fine with hd */
    json_object_set_new(o, "head_dim", json_integer(16));
    json_object_set_new(o, "num_key_value_heads", json_integer(2));
    QD_CHECK_OK(parse_obj(o, &c, &e), &e);
    QD_CHECK_EQ_INT(c.head_dim, 16);
    QD_CHECK_EQ_INT(c.num_key_value_heads, 2);
    /* q 100->128, k/v 100->32, o 128->100, MLP 3 x 100 x 688, 2 norms */
    long long layer = 100 * 128 + 2 * 100 * 32 + 128 * 100 + 3 * 100 * 688 + 2 * 100;
    QD_CHECK_EQ_INT(qd_llama_config_param_count(&c), 2LL * 1000 * 100 + 3 * layer + 100);
}

QD_TEST(dtype_and_token_ids) {
    qd_error e = {0};
    qd_llama_config c;
    json_t *o = base_config("LlamaForCausalLM");
    json_object_set_new(o, "torch_dtype", json_string("float16"));
    QD_CHECK_OK(parse_obj(o, &c, &e), &e);
    QD_CHECK_EQ_INT(c.torch_dtype, QD_DTYPE_F16);
    o = base_config("LlamaForCausalLM");
    json_object_set_new(o, "torch_dtype", json_string("float16"));
    json_object_set_new(o, "dtype", json_string("bfloat16")); /* the newer key wins */
    QD_CHECK_OK(parse_obj(o, &c, &e), &e);
    QD_CHECK_EQ_INT(c.torch_dtype, QD_DTYPE_BF16);

    o = base_config("LlamaForCausalLM");
    json_t *eos = json_array();
    json_array_append_new(eos, json_integer(128001));
    json_array_append_new(eos, json_integer(128008));
    json_array_append_new(eos, json_integer(128009));
    json_object_set_new(o, "eos_token_id", eos);
    json_object_set_new(o, "bos_token_id", json_integer(128000));
    QD_CHECK_OK(parse_obj(o, &c, &e), &e);
    QD_CHECK_EQ_INT(c.bos_token_id, 128000);
    QD_CHECK_EQ_INT(c.eos_token_id, 128001);
    QD_CHECK_EQ_INT(c.n_eos_token_ids, 3);
    QD_CHECK_EQ_INT(c.eos_token_ids[2], 128009);

    o = base_config("LlamaForCausalLM");
    json_object_set_new(o, "bos_token_id", json_null());
    json_object_set_new(o, "eos_token_id", json_null());
    QD_CHECK_OK(parse_obj(o, &c, &e), &e);
    QD_CHECK_EQ_INT(c.bos_token_id, -1);
    QD_CHECK_EQ_INT(c.eos_token_id, -1);
    QD_CHECK_EQ_INT(c.n_eos_token_ids, 0);
}

/* ---- RoPE ------------------------------------------------------------------------------- */

static json_t *llama3_scaling(void) {
    json_t *s = json_object();
    json_object_set_new(s, "rope_type", json_string("llama3"));
    json_object_set_new(s, "factor", json_real(8.0));
    json_object_set_new(s, "low_freq_factor", json_real(1.0));
    json_object_set_new(s, "high_freq_factor", json_real(4.0));
    json_object_set_new(s, "original_max_position_embeddings", json_integer(8192));
    return s;
}

QD_TEST(rope_llama3) {
    qd_error e = {0};
    qd_llama_config c;
    json_t *o = base_config("LlamaForCausalLM");
    json_object_set_new(o, "rope_theta", json_real(500000.0));
    json_object_set_new(o, "max_position_embeddings", json_integer(131072));
    json_object_set_new(o, "rope_scaling", llama3_scaling());
    QD_CHECK_OK(parse_obj(o, &c, &e), &e);
    QD_CHECK_EQ_INT(c.rope_scaling.type, QD_ROPE_LLAMA3);
    QD_CHECK_NEAR(c.rope_theta, 500000.0, 0);
    QD_CHECK_NEAR(c.rope_scaling.factor, 8.0, 0);
    QD_CHECK_NEAR(c.rope_scaling.low_freq_factor, 1.0, 0);
    QD_CHECK_NEAR(c.rope_scaling.high_freq_factor, 4.0, 0);
    QD_CHECK_EQ_INT(c.rope_scaling.original_max_position_embeddings, 8192);
    QD_CHECK_EQ_INT(c.max_position_embeddings, 131072);

    /* transformers >= 5 layout: one rope_parameters object, theta inside */
    o = base_config("LlamaForCausalLM");
    json_t *rp = llama3_scaling();
    json_object_set_new(rp, "rope_theta", json_real(250000.0));
    json_object_set_new(o, "rope_parameters", rp);
    json_object_set_new(o, "rope_theta", json_real(1.0)); /* stale key, ignored */
    QD_CHECK_OK(parse_obj(o, &c, &e), &e);
    QD_CHECK_EQ_INT(c.rope_scaling.type, QD_ROPE_LLAMA3);
    QD_CHECK_NEAR(c.rope_theta, 250000.0, 0);
    QD_CHECK_EQ_INT(c.rope_scaling.original_max_position_embeddings, 8192);

    /* a llama3 block missing a key; and a swapped ramp */
    o = base_config("LlamaForCausalLM");
    json_t *s = llama3_scaling();
    json_object_del(s, "high_freq_factor");
    json_object_set_new(o, "rope_scaling", s);
    expect_error(o, QD_ERR_CONFIG, "high_freq_factor", "llama3 without high_freq_factor");
    o = base_config("LlamaForCausalLM");
    s = llama3_scaling();
    json_object_set_new(s, "high_freq_factor", json_real(0.5));
    json_object_set_new(o, "rope_scaling", s);
    expect_error(o, QD_ERR_CONFIG, "high_freq_factor", "llama3 high <= low");
    o = base_config("LlamaForCausalLM");
    s = llama3_scaling();
    json_object_set_new(s, "original_max_position_embeddings", json_real(8192.0));
    json_object_set_new(o, "rope_scaling", s);
    expect_error(o, QD_ERR_CONFIG, "original_max_position_embeddings", "llama3 real int");
}

QD_TEST(rope_linear_legacy_type_key) {
    qd_error e = {0};
    qd_llama_config c;
    json_t *o = base_config("LlamaForCausalLM");
    json_t *s = json_object();
    json_object_set_new(s, "type", json_string("linear"));
    json_object_set_new(s, "factor", json_integer(4)); /* an integer is a fine number */
    json_object_set_new(o, "rope_scaling", s);
    QD_CHECK_OK(parse_obj(o, &c, &e), &e);
    QD_CHECK_EQ_INT(c.rope_scaling.type, QD_ROPE_LINEAR);
    QD_CHECK_NEAR(c.rope_scaling.factor, 4.0, 0);

    o = base_config("LlamaForCausalLM");
    s = json_object();
    json_object_set_new(s, "rope_type", json_string("default"));
    json_object_set_new(o, "rope_scaling", s);
    QD_CHECK_OK(parse_obj(o, &c, &e), &e);
    QD_CHECK_EQ_INT(c.rope_scaling.type, QD_ROPE_DEFAULT);

    o = base_config("LlamaForCausalLM");
    json_object_set_new(o, "rope_scaling", json_null());
    QD_CHECK_OK(parse_obj(o, &c, &e), &e);
    QD_CHECK_EQ_INT(c.rope_scaling.type, QD_ROPE_DEFAULT);
}

QD_TEST(rope_refused_types) {
    static const char *types[] = {"yarn", "dynamic", "longrope", "su"};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        json_t *o = base_config("LlamaForCausalLM");
        json_t *s = json_object();
        json_object_set_new(s, "rope_type", json_string(types[i]));
        json_object_set_new(s, "factor", json_real(4.0));
        json_object_set_new(o, "rope_scaling", s);
        expect_error(o, QD_ERR_UNSUPPORTED, types[i], types[i]);
    }
    json_t *o = base_config("LlamaForCausalLM");
    json_t *s = json_object();
    json_object_set_new(s, "type", json_string("yarn")); /* legacy key, same refusal */
    json_object_set_new(o, "rope_scaling", s);
    expect_error(o, QD_ERR_UNSUPPORTED, "yarn", "legacy type yarn");
    o = base_config("LlamaForCausalLM");
    s = json_object();
    json_object_set_new(s, "rope_type", json_string("linear")); /* factor missing */
    json_object_set_new(o, "rope_scaling", s);
    expect_error(o, QD_ERR_CONFIG, "factor", "linear without factor");
}

/* ---- refusals --------------------------------------------------------------------------- */

QD_TEST(refused_architecture) {
    json_t *o = base_config("GPT2LMHeadModel");
    qd_llama_config c;
    qd_error e = {0};
    QD_CHECK_EQ_INT(parse_obj(o, &c, &e), QD_ERR_UNSUPPORTED);
    QD_CHECK(strstr(e.msg, "unsupported architecture 'GPT2LMHeadModel'") != NULL);
    QD_CHECK(strstr(e.msg, "LlamaForCausalLM") && strstr(e.msg, "MistralForCausalLM") &&
             strstr(e.msg, "Qwen2ForCausalLM"));
    QD_CHECK(strstr(e.msg, "test/config.json") != NULL);

    o = base_config("LlamaForCausalLM");
    json_object_set_new(o, "architectures", json_string("LlamaForCausalLM"));
    expect_error(o, QD_ERR_CONFIG, "architectures", "architectures as a string");
    o = base_config("LlamaForCausalLM");
    json_object_set_new(o, "architectures", json_array());
    expect_error(o, QD_ERR_CONFIG, "architectures", "empty architectures");
    o = base_config("LlamaForCausalLM");
    json_object_del(o, "architectures");
    expect_error(o, QD_ERR_CONFIG, "architectures", "no architectures");
    o = base_config("LlamaForCausalLM");
    json_t *a = json_array();
    json_array_append_new(a, json_integer(1));
    json_object_set_new(o, "architectures", a);
    expect_error(o, QD_ERR_CONFIG, "architectures", "architectures[0] not a string");
}

QD_TEST(missing_required_keys) {
    static const char *keys[] = {"hidden_size", "intermediate_size", "num_hidden_layers",
                                 "num_attention_heads", "vocab_size"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        json_t *o = base_config("LlamaForCausalLM");
        json_object_del(o, keys[i]);
        expect_error(o, QD_ERR_CONFIG, keys[i], keys[i]);
        o = base_config("LlamaForCausalLM");
        json_object_set_new(o, keys[i], json_null());
        expect_error(o, QD_ERR_CONFIG, keys[i], keys[i]);
    }
}

/* One bad value per key; the error must name the key. */
QD_TEST(bad_key_types_and_values) {
    static const struct {
        const char *key;
        const char *json; /* the value, as JSON text */
        qd_err code;
    } cases[] = {
        {"hidden_size", "4096.5", QD_ERR_CONFIG},
        {"hidden_size", "256.0", QD_ERR_CONFIG},
        {"hidden_size", "\"256\"", QD_ERR_CONFIG},
        {"hidden_size", "0", QD_ERR_CONFIG},
        {"hidden_size", "-256", QD_ERR_CONFIG},
        {"hidden_size", "4294967552", QD_ERR_CONFIG}, /* does not fit an int */
        {"hidden_size", "100", QD_ERR_CONFIG},        /* 100 % 8 heads, no head_dim */
        {"intermediate_size", "true", QD_ERR_CONFIG},
        {"num_hidden_layers", "[3]", QD_ERR_CONFIG},
        {"num_attention_heads", "{}", QD_ERR_CONFIG},
        {"vocab_size", "1e3", QD_ERR_CONFIG},
        {"num_key_value_heads", "3", QD_ERR_CONFIG}, /* 8 % 3 */
        {"num_key_value_heads", "0", QD_ERR_CONFIG},
        {"num_key_value_heads", "2.0", QD_ERR_CONFIG},
        {"head_dim", "0", QD_ERR_CONFIG},
        {"head_dim", "31", QD_ERR_CONFIG}, /* odd: no rotary pairs */
        {"head_dim", "\"32\"", QD_ERR_CONFIG},
        {"max_position_embeddings", "2048.5", QD_ERR_CONFIG},
        {"max_position_embeddings", "-1", QD_ERR_CONFIG},
        {"rms_norm_eps", "\"1e-5\"", QD_ERR_CONFIG},
        {"rms_norm_eps", "0", QD_ERR_CONFIG},
        {"rms_norm_eps", "-1e-6", QD_ERR_CONFIG},
        {"rope_theta", "-10000", QD_ERR_CONFIG},
        {"rope_theta", "\"10000\"", QD_ERR_CONFIG},
        {"rope_scaling", "8", QD_ERR_CONFIG},
        {"rope_scaling", "\"llama3\"", QD_ERR_CONFIG},
        {"rope_parameters", "[]", QD_ERR_CONFIG},
        {"tie_word_embeddings", "\"true\"", QD_ERR_CONFIG},
        {"tie_word_embeddings", "1", QD_ERR_CONFIG},
        {"attention_bias", "0", QD_ERR_CONFIG},
        {"mlp_bias", "\"no\"", QD_ERR_CONFIG},
        {"hidden_act", "\"gelu\"", QD_ERR_CONFIG},
        {"hidden_act", "7", QD_ERR_CONFIG},
        {"torch_dtype", "\"float64\"", QD_ERR_UNSUPPORTED},
        {"torch_dtype", "\"int8\"", QD_ERR_UNSUPPORTED},
        {"torch_dtype", "32", QD_ERR_CONFIG},
        {"dtype", "\"float8_e4m3fn\"", QD_ERR_UNSUPPORTED},
        {"bos_token_id", "\"1\"", QD_ERR_CONFIG},
        {"bos_token_id", "1.0", QD_ERR_CONFIG},
        {"bos_token_id", "-1", QD_ERR_CONFIG},
        {"eos_token_id", "[2, \"x\"]", QD_ERR_CONFIG},
        {"eos_token_id", "[2, -5]", QD_ERR_CONFIG},
        {"eos_token_id", "{\"id\": 2}", QD_ERR_CONFIG},
        {"eos_token_id", "[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17]", QD_ERR_CONFIG},
        {"model_type", "5", QD_ERR_CONFIG},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_error_t jerr;
        json_t *v = json_loads(cases[i].json, JSON_DECODE_ANY, &jerr);
        QD_REQUIRE(v != NULL);
        json_t *o = base_config("LlamaForCausalLM");
        json_object_set_new(o, cases[i].key, v);
        char what[128];
        snprintf(what, sizeof what, "%s = %s", cases[i].key, cases[i].json);
        /* the divisibility errors name the pair of keys; all name the key that was set */
        expect_error(o, cases[i].code, cases[i].key, what);
    }
    /* Mistral's sliding_window is an integer key too */
    json_t *o = base_config("MistralForCausalLM");
    json_object_set_new(o, "sliding_window", json_real(4096.0));
    expect_error(o, QD_ERR_CONFIG, "sliding_window", "sliding_window real");
}

QD_TEST(not_json_or_not_an_object) {
    static const struct {
        const char *text;
        qd_err code;
    } cases[] = {
        {"", QD_ERR_FORMAT},
        {"{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 25", QD_ERR_FORMAT},
        {"{\"hidden_size\": 1, \"hidden_size\": 2}", QD_ERR_FORMAT}, /* duplicate key */
        {"[1, 2]", QD_ERR_CONFIG},
        {"42", QD_ERR_CONFIG},
        {"\"LlamaForCausalLM\"", QD_ERR_CONFIG},
        {"null", QD_ERR_CONFIG},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        qd_llama_config c;
        qd_error e = {0};
        qd_err rc = qd_llama_config_parse(cases[i].text, strlen(cases[i].text),
                                          "test/config.json", &c, &e);
        QD_CHECK_MSG(rc == cases[i].code, "'%s': got %s (%s)", cases[i].text, qd_err_name(rc),
                     e.msg);
        QD_CHECK_MSG(strstr(e.msg, "test/config.json") != NULL, "'%s': %s", cases[i].text,
                     e.msg);
    }
    /* every strict prefix of a valid config fails cleanly (truncated file) */
    json_t *o = base_config("LlamaForCausalLM");
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    QD_REQUIRE(s != NULL);
    size_t n = strlen(s);
    int ok = 0;
    for (size_t cut = 0; cut < n; cut++) {
        qd_llama_config c;
        qd_error e = {0};
        if (qd_llama_config_parse(s, cut, "test/config.json", &c, &e) == QD_ERR_FORMAT) ok++;
    }
    QD_CHECK_EQ_INT(ok, n);
    free(s);
}

QD_TEST_MAIN()
