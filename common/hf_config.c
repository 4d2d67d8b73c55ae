/*
 * hf_config.c - read a Llama-family config.json (see hf_config.h for what is accepted).
 *
 * DESIGN
 * The file is hostile input: every key is fetched through one of a few typed readers
 * (get_int, get_number, get_bool, get_string) that check the JSON type and range and name the
 * file and the key in the error. Each reader reports whether the key was absent, null or set,
 * because transformers gives absent and null different meanings for some keys (Mistral's
 * num_key_value_heads: absent means 8, null means "same as the heads").
 *
 * Architecture-dependent defaults and block semantics live in one table, arch_table[], so
 * adding a Llama-like architecture means adding one row (and, where it differs, a line in
 * parse_biases / parse_sliding_window). The result is filled into a local struct and copied
 * to *out only when everything validated, so a failed parse never leaves half a config.
 */
#include "hf_config.h"

#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fsutil.h"

#define CONFIG_MAX_BYTES (16u << 20) /* real configs are a few KB; refuse anything silly */

/* ---- architectures ---------------------------------------------------------------------- */

typedef enum arch_id { ARCH_LLAMA, ARCH_MISTRAL, ARCH_QWEN2 } arch_id;

static const struct arch_row {
    arch_id id;
    const char *name;       /* architectures[0] */
    const char *model_type; /* transformers' model_type */
    int kv_heads_default;   /* when num_key_value_heads is absent; 0 = num_attention_heads */
    int max_pos_default;
    int bos_default; /* -1 = none */
    int eos_default;
} arch_table[] = {
    {ARCH_LLAMA, "LlamaForCausalLM", "llama", 0, 2048, 1, 2},
    {ARCH_MISTRAL, "MistralForCausalLM", "mistral", 8, 4096 * 32, 1, 2},
    {ARCH_QWEN2, "Qwen2ForCausalLM", "qwen2", 32, 32768, -1, -1},
};

#define N_ARCH (sizeof arch_table / sizeof arch_table[0])

/* ---- typed key readers ------------------------------------------------------------------ */

typedef enum key_state { KEY_ABSENT, KEY_NULL, KEY_SET } key_state;

/* A short description of a JSON value for error messages ("the string \"128\"", "4096.5"). */
static const char *describe(const json_t *v, char *buf, size_t len) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "a list";
    case JSON_STRING:
        snprintf(buf, len, "the string \"%.40s\"", json_string_value(v));
        return buf;
    case JSON_INTEGER:
        snprintf(buf, len, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return buf;
    case JSON_REAL:
        snprintf(buf, len, "%.17g", json_real_value(v));
        return buf;
    case JSON_TRUE: return "true";
    case JSON_FALSE: return "false";
    case JSON_NULL: return "null";
    }
    return "an unknown value";
}

static key_state lookup(const json_t *obj, const char *key, json_t **v) {
    *v = json_object_get(obj, key);
    if (!*v) return KEY_ABSENT;
    return json_is_null(*v) ? KEY_NULL : KEY_SET;
}

/* A JSON integer in [min, max]. where prefixes the key in messages ("rope_scaling."). */
static qd_err check_int(const json_t *v, const char *label, const char *where, const char *key,
                        long long min, long long max, int *out, qd_error *err) {
    char d[96];
    if (!json_is_integer(v))
        return qd_error_set(err, QD_ERR_CONFIG, "%s: '%s%s' must be a JSON integer, got %s",
                            label, where, key, describe(v, d, sizeof d));
    json_int_t x = json_integer_value(v);
    if (x < min || x > max)
        return qd_error_set(err, QD_ERR_CONFIG,
                            "%s: '%s%s' is %" JSON_INTEGER_FORMAT ", must be in %lld..%lld",
                            label, where, key, x, min, max);
    *out = (int)x;
    return QD_OK;
}

static qd_err get_int(const json_t *obj, const char *label, const char *where, const char *key,
                      long long min, long long max, key_state *st, int *out, qd_error *err) {
    json_t *v;
    *st = lookup(obj, key, &v);
    if (*st != KEY_SET) return QD_OK;
    return check_int(v, label, where, key, min, max, out, err);
}

/* A required positive integer (a model dimension). */
static qd_err get_dim(const json_t *obj, const char *label, const char *key, int *out,
                      qd_error *err) {
    key_state st;
    qd_err rc = get_int(obj, label, "", key, 1, INT_MAX, &st, out, err);
    if (rc != QD_OK) return rc;
    if (st == KEY_ABSENT)
        return qd_error_set(err, QD_ERR_CONFIG, "%s: missing required key '%s'", label, key);
    if (st == KEY_NULL)
        return qd_error_set(err, QD_ERR_CONFIG, "%s: '%s' must be a JSON integer, got null",
                            label, key);
    return QD_OK;
}

/* A finite number (integer or real) > 0; absent/null leave *out unchanged. */
static qd_err get_positive(const json_t *obj, const char *label, const char *where,
                           const char *key, key_state *st, double *out, qd_error *err) {
    json_t *v;
    char d[96];
    *st = lookup(obj, key, &v);
    if (*st != KEY_SET) return QD_OK;
    if (!json_is_number(v))
        return qd_error_set(err, QD_ERR_CONFIG, "%s: '%s%s' must be a number, got %s", label,
                            where, key, describe(v, d, sizeof d));
    double x = json_number_value(v);
    if (!isfinite(x) || x <= 0)
        return qd_error_set(err, QD_ERR_CONFIG, "%s: '%s%s' is %g, must be > 0", label, where,
                            key, x);
    *out = x;
    return QD_OK;
}

/* true/false; absent or null leave *out unchanged (transformers' "None means default"). */
static qd_err get_bool(const json_t *obj, const char *label, const char *key, bool *out,
                       qd_error *err) {
    json_t *v;
    char d[96];
    if (lookup(obj, key, &v) != KEY_SET) return QD_OK;
    if (!json_is_boolean(v))
        return qd_error_set(err, QD_ERR_CONFIG, "%s: '%s' must be true or false, got %s", label,
                            key, describe(v, d, sizeof d));
    *out = json_is_true(v);
    return QD_OK;
}

/* A string; *out is NULL when absent or null. */
static qd_err get_string(const json_t *obj, const char *label, const char *where,
                         const char *key, const char **out, qd_error *err) {
    json_t *v;
    char d[96];
    *out = NULL;
    if (lookup(obj, key, &v) != KEY_SET) return QD_OK;
    if (!json_is_string(v))
        return qd_error_set(err, QD_ERR_CONFIG, "%s: '%s%s' must be a string, got %s", label,
                            where, key, describe(v, d, sizeof d));
    *out = json_string_value(v);
    return QD_OK;
}

/* ---- sections --------------------------------------------------------------------------- */

static qd_err parse_architecture(const json_t *root, const char *label,
                                 const struct arch_row **arch, qd_error *err) {
    json_t *v;
    char d[96];
    key_state st = lookup(root, "architectures", &v);
    if (st == KEY_ABSENT)
        return qd_error_set(err, QD_ERR_CONFIG, "%s: missing required key 'architectures'",
                            label);
    if (!json_is_array(v) || json_array_size(v) == 0)
        return qd_error_set(err, QD_ERR_CONFIG,
                            "%s: 'architectures' must be a non-empty list of class names, got %s",
                            label, json_is_array(v) ? "an empty list" : describe(v, d, sizeof d));
    json_t *first = json_array_get(v, 0);
    if (!json_is_string(first))
        return qd_error_set(err, QD_ERR_CONFIG,
                            "%s: 'architectures'[0] must be a string, got %s", label,
                            describe(first, d, sizeof d));
    const char *name = json_string_value(first);
    for (size_t i = 0; i < N_ARCH; i++) {
        if (strcmp(name, arch_table[i].name) == 0) {
            *arch = &arch_table[i];
            return QD_OK;
        }
    }
    char list[256] = "";
    size_t used = 0;
    for (size_t i = 0; i < N_ARCH && used < sizeof list; i++) {
        int n = snprintf(list + used, sizeof list - used, "%s%s", i ? ", " : "",
                         arch_table[i].name);
        if (n < 0) break;
        used += (size_t)n;
    }
    return qd_error_set(err, QD_ERR_UNSUPPORTED,
                        "%s: unsupported architecture '%.100s' (quantd supports %s)", label, name,
                        list);
}

/* rope_theta and the scaling block, from "rope_parameters" (new layout) or from top-level
 * rope_theta + "rope_scaling" (older layout). */
static qd_err parse_rope(const json_t *root, const char *label, qd_llama_config *c,
                         qd_error *err) {
    json_t *rp, *rs;
    char d[96];
    key_state st;
    const json_t *scaling = NULL;
    const char *where = "rope_scaling.";
    c->rope_theta = 10000.0;
    c->rope_scaling.type = QD_ROPE_DEFAULT;
    c->rope_scaling.factor = 1.0;

    if (lookup(root, "rope_parameters", &rp) == KEY_SET) {
        if (!json_is_object(rp))
            return qd_error_set(err, QD_ERR_CONFIG, "%s: 'rope_parameters' must be an object, "
                                "got %s", label, describe(rp, d, sizeof d));
        qd_err rc = get_positive(rp, label, "rope_parameters.", "rope_theta", &st,
                                 &c->rope_theta, err);
        if (rc != QD_OK) return rc;
        scaling = rp;
        where = "rope_parameters.";
    } else {
        qd_err rc = get_positive(root, label, "", "rope_theta", &st, &c->rope_theta, err);
        if (rc != QD_OK) return rc;
        if (lookup(root, "rope_scaling", &rs) == KEY_SET) {
            if (!json_is_object(rs))
                return qd_error_set(err, QD_ERR_CONFIG,
                                    "%s: 'rope_scaling' must be an object or null, got %s",
                                    label, describe(rs, d, sizeof d));
            scaling = rs;
        }
    }
    if (!scaling) return QD_OK;

    /* transformers: rope_scaling.get("rope_type", rope_scaling.get("type", "default")) */
    const char *type;
    const char *type_key = "rope_type";
    qd_err rc = get_string(scaling, label, where, "rope_type", &type, err);
    if (rc != QD_OK) return rc;
    if (!type) {
        type_key = "type";
        rc = get_string(scaling, label, where, "type", &type, err);
        if (rc != QD_OK) return rc;
    }
    if (!type || strcmp(type, "default") == 0) return QD_OK;

    const char *need[4] = {"factor", NULL, NULL, NULL};
    if (strcmp(type, "linear") == 0) {
        c->rope_scaling.type = QD_ROPE_LINEAR;
    } else if (strcmp(type, "llama3") == 0) {
        c->rope_scaling.type = QD_ROPE_LLAMA3;
        need[1] = "low_freq_factor";
        need[2] = "high_freq_factor";
        need[3] = "original_max_position_embeddings";
    } else {
        return qd_error_set(err, QD_ERR_UNSUPPORTED,
                            "%s: '%s%s' is '%.64s': quantd supports the RoPE types default, "
                            "linear and llama3", label, where, type_key, type);
    }
    for (int i = 0; i < 4 && need[i]; i++) {
        json_t *v;
        if (lookup(scaling, need[i], &v) != KEY_SET)
            return qd_error_set(err, QD_ERR_CONFIG, "%s: RoPE type '%s' needs '%s%s'", label,
                                type, where, need[i]);
    }
    double *dst[3] = {&c->rope_scaling.factor, &c->rope_scaling.low_freq_factor,
                      &c->rope_scaling.high_freq_factor};
    for (int i = 0; i < 3 && need[i]; i++) {
        rc = get_positive(scaling, label, where, need[i], &st, dst[i], err);
        if (rc != QD_OK) return rc;
    }
    if (c->rope_scaling.type == QD_ROPE_LLAMA3) {
        rc = get_int(scaling, label, where, "original_max_position_embeddings", 1, INT_MAX, &st,
                     &c->rope_scaling.original_max_position_embeddings, err);
        if (rc != QD_OK) return rc;
        /* the llama3 ramp divides by (high - low): equal or swapped factors have no meaning */
        if (!(c->rope_scaling.high_freq_factor > c->rope_scaling.low_freq_factor))
            return qd_error_set(err, QD_ERR_CONFIG,
                                "%s: '%shigh_freq_factor' (%g) must be greater than "
                                "'%slow_freq_factor' (%g)", label, where,
                                c->rope_scaling.high_freq_factor, where,
                                c->rope_scaling.low_freq_factor);
    }
    return QD_OK;
}

static qd_err parse_dtype(const json_t *root, const char *label, qd_llama_config *c,
                          qd_error *err) {
    static const struct {
        const char *name;
        qd_dtype dtype;
    } names[] = {{"float32", QD_DTYPE_F32}, {"float16", QD_DTYPE_F16},
                 {"bfloat16", QD_DTYPE_BF16}};
    const char *key = "dtype"; /* transformers >= 5 writes "dtype", older "torch_dtype" */
    const char *s;
    qd_err rc = get_string(root, label, "", key, &s, err);
    if (rc != QD_OK) return rc;
    if (!s) {
        key = "torch_dtype";
        rc = get_string(root, label, "", key, &s, err);
        if (rc != QD_OK) return rc;
    }
    c->torch_dtype = QD_DTYPE_F32;
    if (!s) return QD_OK;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (strcmp(s, names[i].name) == 0) {
            c->torch_dtype = names[i].dtype;
            return QD_OK;
        }
    }
    return qd_error_set(err, QD_ERR_UNSUPPORTED,
                        "%s: '%s' is '%.64s': quantd reads float32, float16 and bfloat16 models",
                        label, key, s);
}

/* bos_token_id / eos_token_id: an integer, a list of integers (the first one is *first), or
 * null (-1). ids (optional, max_ids entries) receives the whole list. */
static qd_err parse_token_ids(const json_t *root, const char *label, const char *key, int dflt,
                              int *first, int *ids, int *n_ids, int max_ids, qd_error *err) {
    json_t *v;
    char d[96];
    key_state st = lookup(root, key, &v);
    int n = 0;
    *first = -1;
    if (st == KEY_ABSENT) {
        *first = dflt;
        if (dflt >= 0 && ids) ids[n++] = dflt;
    } else if (json_is_integer(v)) {
        qd_err rc = check_int(v, label, "", key, 0, INT_MAX, first, err);
        if (rc != QD_OK) return rc;
        if (ids) ids[n++] = *first;
    } else if (json_is_array(v)) {
        size_t count = json_array_size(v);
        if (ids && count > (size_t)max_ids)
            return qd_error_set(err, QD_ERR_CONFIG,
                                "%s: '%s' lists %zu ids, quantd keeps at most %d", label, key,
                                count, max_ids);
        for (size_t i = 0; i < count; i++) {
            json_t *e = json_array_get(v, i);
            if (!json_is_integer(e) || json_integer_value(e) < 0 ||
                json_integer_value(e) > INT_MAX)
                return qd_error_set(err, QD_ERR_CONFIG,
                                    "%s: '%s'[%zu] must be a non-negative integer, got %s",
                                    label, key, i, describe(e, d, sizeof d));
            int x = (int)json_integer_value(e);
            if (i == 0) *first = x;
            if (ids) ids[n++] = x;
        }
    } else if (st != KEY_NULL) {
        return qd_error_set(err, QD_ERR_CONFIG,
                            "%s: '%s' must be an integer, a list of integers or null, got %s",
                            label, key, describe(v, d, sizeof d));
    }
    if (n_ids) *n_ids = n;
    return QD_OK;
}

static void parse_biases(const struct arch_row *arch, qd_llama_config *c) {
    switch (arch->id) {
    case ARCH_LLAMA: /* LlamaAttention: bias=config.attention_bias on q, k, v and o */
        c->qkv_bias = c->o_bias = c->attention_bias;
        break;
    case ARCH_QWEN2: /* Qwen2Attention: q/k/v bias=True, o_proj bias=False, whatever the keys */
        c->attention_bias = c->qkv_bias = true;
        c->o_bias = c->mlp_bias = false;
        break;
    case ARCH_MISTRAL: /* no biases anywhere; the keys are not read by MistralConfig */
        c->attention_bias = c->qkv_bias = c->o_bias = c->mlp_bias = false;
        break;
    }
}

static qd_err parse_sliding_window(const json_t *root, const char *label,
                                   const struct arch_row *arch, qd_llama_config *c,
                                   qd_error *err) {
    int window = 0, first_layer = 0;
    key_state st;
    qd_err rc;
    c->sliding_window = 0;
    c->sliding_window_first_layer = 0;
    if (arch->id == ARCH_LLAMA) return QD_OK; /* LlamaConfig has no window */
    if (arch->id == ARCH_QWEN2) {
        bool use = false;
        rc = get_bool(root, label, "use_sliding_window", &use, err);
        if (rc != QD_OK || !use) return rc;
        first_layer = 28;
        rc = get_int(root, label, "", "max_window_layers", 0, INT_MAX, &st, &first_layer, err);
        if (rc != QD_OK) return rc;
    }
    window = 4096;
    rc = get_int(root, label, "", "sliding_window", 1, INT_MAX, &st, &window, err);
    if (rc != QD_OK) return rc;
    if (st == KEY_NULL) return QD_OK;
    if (window < c->max_position_embeddings && first_layer < c->num_hidden_layers) {
        c->sliding_window = window;
        c->sliding_window_first_layer = first_layer;
    }
    return QD_OK;
}

/* ---- the parser ------------------------------------------------------------------------- */

static qd_err parse_root(const json_t *root, const char *label, qd_llama_config *c,
                         qd_error *err) {
    const struct arch_row *arch = NULL;
    key_state st;
    qd_err rc;
    char d[96];

    if (!json_is_object(root))
        return qd_error_set(err, QD_ERR_CONFIG, "%s: top level must be a JSON object, got %s",
                            label, describe(root, d, sizeof d));
    if ((rc = parse_architecture(root, label, &arch, err)) != QD_OK) return rc;
    snprintf(c->architecture, sizeof c->architecture, "%s", arch->name);

    const char *model_type;
    if ((rc = get_string(root, label, "", "model_type", &model_type, err)) != QD_OK) return rc;
    if (!model_type) model_type = arch->model_type;
    if (strlen(model_type) >= sizeof c->model_type)
        return qd_error_set(err, QD_ERR_CONFIG, "%s: 'model_type' '%.40s...' is too long", label,
                            model_type);
    snprintf(c->model_type, sizeof c->model_type, "%s", model_type);

    if ((rc = get_dim(root, label, "hidden_size", &c->hidden_size, err)) != QD_OK ||
        (rc = get_dim(root, label, "intermediate_size", &c->intermediate_size, err)) != QD_OK ||
        (rc = get_dim(root, label, "num_hidden_layers", &c->num_hidden_layers, err)) != QD_OK ||
        (rc = get_dim(root, label, "num_attention_heads", &c->num_attention_heads, err)) !=
            QD_OK ||
        (rc = get_dim(root, label, "vocab_size", &c->vocab_size, err)) != QD_OK)
        return rc;

    /* hidden_act: LlamaMLP is down(act(gate(x)) * up(x)); quantd implements act = silu */
    const char *act;
    if ((rc = get_string(root, label, "", "hidden_act", &act, err)) != QD_OK) return rc;
    if (act && strcmp(act, "silu") != 0)
        return qd_error_set(err, QD_ERR_CONFIG,
                            "%s: 'hidden_act' is '%.40s', quantd implements only 'silu'", label,
                            act);

    c->num_key_value_heads = arch->kv_heads_default;
    rc = get_int(root, label, "", "num_key_value_heads", 1, INT_MAX, &st,
                 &c->num_key_value_heads, err);
    if (rc != QD_OK) return rc;
    if (st == KEY_NULL || c->num_key_value_heads == 0)
        c->num_key_value_heads = c->num_attention_heads;
    if (c->num_attention_heads % c->num_key_value_heads != 0)
        return qd_error_set(err, QD_ERR_CONFIG,
                            "%s: 'num_attention_heads' (%d) is not a multiple of "
                            "'num_key_value_heads' (%d)%s", label, c->num_attention_heads,
                            c->num_key_value_heads,
                            st == KEY_ABSENT ? " (the architecture's default)" : "");

    rc = get_int(root, label, "", "head_dim", 1, INT_MAX, &st, &c->head_dim, err);
    if (rc != QD_OK) return rc;
    if (st != KEY_SET) {
        if (c->hidden_size % c->num_attention_heads != 0)
            return qd_error_set(err, QD_ERR_CONFIG,
                                "%s: 'hidden_size' (%d) is not a multiple of "
                                "'num_attention_heads' (%d) and there is no 'head_dim'", label,
                                c->hidden_size, c->num_attention_heads);
        c->head_dim = c->hidden_size / c->num_attention_heads;
    }
    if (c->head_dim % 2 != 0)
        return qd_error_set(err, QD_ERR_CONFIG,
                            "%s: 'head_dim' is %d: rotary embeddings need an even head_dim",
                            label, c->head_dim);
    if ((long long)c->head_dim * c->num_attention_heads > INT_MAX)
        return qd_error_set(err, QD_ERR_CONFIG,
                            "%s: 'head_dim' x 'num_attention_heads' (%d x %d) is too large",
                            label, c->head_dim, c->num_attention_heads);

    c->max_position_embeddings = arch->max_pos_default;
    rc = get_int(root, label, "", "max_position_embeddings", 1, INT_MAX, &st,
                 &c->max_position_embeddings, err);
    if (rc != QD_OK) return rc;

    c->rms_norm_eps = 1e-6;
    if ((rc = get_positive(root, label, "", "rms_norm_eps", &st, &c->rms_norm_eps, err)) !=
        QD_OK)
        return rc;
    if ((rc = parse_rope(root, label, c, err)) != QD_OK) return rc;

    c->tie_word_embeddings = false;
    c->attention_bias = c->mlp_bias = false;
    if ((rc = get_bool(root, label, "tie_word_embeddings", &c->tie_word_embeddings, err)) !=
            QD_OK ||
        (rc = get_bool(root, label, "attention_bias", &c->attention_bias, err)) != QD_OK ||
        (rc = get_bool(root, label, "mlp_bias", &c->mlp_bias, err)) != QD_OK)
        return rc;
    parse_biases(arch, c);

    if ((rc = parse_sliding_window(root, label, arch, c, err)) != QD_OK) return rc;
    if ((rc = parse_dtype(root, label, c, err)) != QD_OK) return rc;

    if ((rc = parse_token_ids(root, label, "bos_token_id", arch->bos_default, &c->bos_token_id,
                              NULL, NULL, 0, err)) != QD_OK ||
        (rc = parse_token_ids(root, label, "eos_token_id", arch->eos_default, &c->eos_token_id,
                              c->eos_token_ids, &c->n_eos_token_ids, QD_LLAMA_MAX_EOS, err)) !=
            QD_OK)
        return rc;

    if (qd_llama_config_param_count(c) < 0)
        return qd_error_set(err, QD_ERR_CONFIG,
                            "%s: the sizes imply more parameters than quantd can count", label);
    return QD_OK;
}

qd_err qd_llama_config_parse(const char *json, size_t len, const char *label,
                             qd_llama_config *out, qd_error *err) {
    json_error_t jerr;
    if (!label) label = "config.json";
    if (!json)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "%s: no JSON text given", label);
    /* Duplicate keys are refused: Python keeps the last one, which hides edits gone wrong. */
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
    if (!root)
        return qd_error_set(err, QD_ERR_FORMAT, "%s: not valid JSON: %s (line %d, column %d)",
                            label, jerr.text, jerr.line, jerr.column);
    qd_llama_config c;
    memset(&c, 0, sizeof c);
    qd_err rc = parse_root(root, label, &c, err);
    json_decref(root);
    if (rc == QD_OK) *out = c;
    return rc;
}

qd_err qd_llama_config_load(const char *path, qd_llama_config *out, qd_error *err) {
    char file[4096];
    char *buf;
    size_t len;
    qd_err rc;
    if (!path) return qd_error_set(err, QD_ERR_INVALID_ARG, "no config path given");
    if (qd_is_dir(path)) {
        if ((rc = qd_path_join(file, sizeof file, path, "config.json", err)) != QD_OK)
            return rc;
    } else {
        if (strlen(path) >= sizeof file)
            return qd_error_set(err, QD_ERR_TOO_LARGE, "%.64s...: path too long", path);
        snprintf(file, sizeof file, "%s", path);
    }
    if ((rc = qd_read_file(file, CONFIG_MAX_BYTES, &buf, &len, err)) != QD_OK) return rc;
    rc = qd_llama_config_parse(buf, len, file, out, err);
    free(buf);
    return rc;
}

/* ---- parameter count -------------------------------------------------------------------- */

/* acc += a * b, false on overflow */
static bool add_mul(long long *acc, long long a, long long b) {
    long long p;
    if (__builtin_mul_overflow(a, b, &p)) return false;
    return !__builtin_add_overflow(*acc, p, acc);
}

long long qd_llama_config_param_count(const qd_llama_config *c) {
    long long H = c->hidden_size, I = c->intermediate_size, V = c->vocab_size;
    long long q = (long long)c->num_attention_heads * c->head_dim;  /* q_proj out features */
    long long kv = (long long)c->num_key_value_heads * c->head_dim; /* k/v_proj out features */
    long long layer = 0, total = 0;
    bool ok = add_mul(&layer, H, q)       /* q_proj   [q, H] */
              && add_mul(&layer, 2 * H, kv) /* k, v   [kv, H] */
              && add_mul(&layer, q, H)      /* o_proj   [H, q] */
              && add_mul(&layer, 3 * H, I)  /* gate, up [I, H]; down [H, I] */
              && add_mul(&layer, 2, H);     /* input_layernorm, post_attention_layernorm */
    if (ok && c->qkv_bias) ok = add_mul(&layer, 1, q + 2 * kv);
    if (ok && c->o_bias) ok = add_mul(&layer, 1, H);
    if (ok && c->mlp_bias) ok = add_mul(&layer, 1, 2 * I + H);
    ok = ok && add_mul(&total, V, H)                    /* embed_tokens [V, H] */
         && add_mul(&total, c->num_hidden_layers, layer) /* decoder blocks */
         && add_mul(&total, 1, H)                        /* final norm */
         && (c->tie_word_embeddings || add_mul(&total, V, H)); /* lm_head [V, H] */
    return ok ? total : -1;
}
