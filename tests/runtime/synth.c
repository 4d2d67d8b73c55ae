/*
 * synth.c - the synthetic model writer (see synth.h for what it writes and why).
 */
#include "synth.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dtype.h"
#include "fsutil.h"

#define QD_SYNTH_CHUNK (1 << 20) /* values generated and written per step */

enum synth_init { INIT_EMBED, INIT_LINEAR, INIT_NORM, INIT_BIAS };

struct synth_tensor {
    char name[96];
    int ndim;
    int64_t shape[2];
    enum synth_init init;
    int64_t fan_in;   /* INIT_LINEAR */
    uint64_t nbytes;
    int shard;        /* 0-based */
    uint64_t begin;   /* offset in its shard's data section */
};

struct synth_plan {
    struct synth_tensor *t;
    int n, cap;
    int n_shards;
};

static bool is_qwen2(const qd_synth_spec *s) {
    return s->architecture && strcmp(s->architecture, "Qwen2ForCausalLM") == 0;
}

static int head_dim_of(const qd_synth_spec *s) {
    return s->head_dim > 0 ? s->head_dim
                           : (s->num_attention_heads > 0 ? s->hidden_size / s->num_attention_heads
                                                         : 0);
}

/* q/k/v biases; o_proj bias (Llama's attention_bias covers o too, Qwen2's does not) */
static bool has_qkv_bias(const qd_synth_spec *s) {
    return is_qwen2(s) || s->qkv_bias;
}
static bool has_o_bias(const qd_synth_spec *s) {
    return !is_qwen2(s) && s->qkv_bias;
}

static qd_err check_spec(const qd_synth_spec *s, qd_error *err) {
    struct {
        const char *name;
        long long v;
    } f[] = {
        {"hidden_size", s->hidden_size}, {"intermediate_size", s->intermediate_size},
        {"num_hidden_layers", s->num_hidden_layers},
        {"num_attention_heads", s->num_attention_heads},
        {"num_key_value_heads", s->num_key_value_heads}, {"head_dim", head_dim_of(s)},
        {"vocab_size", s->vocab_size}, {"max_position_embeddings", s->max_position_embeddings},
    };
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        if (f[i].v <= 0 || f[i].v > (1 << 24))
            return qd_error_set(err, QD_ERR_INVALID_ARG, "synthetic model: %s = %lld",
                                f[i].name, f[i].v);
    if (s->num_attention_heads % s->num_key_value_heads != 0)
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "synthetic model: %d heads are not a multiple of %d kv heads",
                            s->num_attention_heads, s->num_key_value_heads);
    if (head_dim_of(s) % 2 != 0)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "synthetic model: head_dim %d is odd",
                            head_dim_of(s));
    if (s->dtype != QD_DTYPE_F32 && s->dtype != QD_DTYPE_F16 && s->dtype != QD_DTYPE_BF16)
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "synthetic model: dtype %s (F32, F16 or BF16)",
                            qd_dtype_name(s->dtype) ? qd_dtype_name(s->dtype) : "?");
    if (s->architecture && strcmp(s->architecture, "LlamaForCausalLM") != 0 && !is_qwen2(s))
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "synthetic model: architecture %s (Llama or Qwen2 only)",
                            s->architecture);
    return QD_OK;
}

static qd_err add(struct synth_plan *p, enum synth_init init, int64_t d0, int64_t d1,
                  qd_error *err, const char *fmt, ...) __attribute__((format(printf, 6, 7)));

static qd_err add(struct synth_plan *p, enum synth_init init, int64_t d0, int64_t d1,
                  qd_error *err, const char *fmt, ...) {
    if (p->n == p->cap) {
        int cap = p->cap ? 2 * p->cap : 64;
        struct synth_tensor *t = realloc(p->t, (size_t)cap * sizeof *t);
        if (!t) return qd_error_set(err, QD_ERR_NOMEM, "synthetic model: out of memory");
        p->t = t;
        p->cap = cap;
    }
    struct synth_tensor *t = &p->t[p->n++];
    memset(t, 0, sizeof *t);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->name, sizeof t->name, fmt, ap);
    va_end(ap);
    t->init = init;
    t->ndim = d1 > 0 ? 2 : 1;
    t->shape[0] = d0;
    t->shape[1] = d1;
    t->fan_in = d1;
    return QD_OK;
}

/* Every tensor of the model, in the order transformers saves them. */
static qd_err make_plan(const qd_synth_spec *s, struct synth_plan *p, qd_error *err) {
    int64_t h = s->hidden_size, inter = s->intermediate_size;
    int64_t qd = (int64_t)s->num_attention_heads * head_dim_of(s);
    int64_t kvd = (int64_t)s->num_key_value_heads * head_dim_of(s);
    qd_err rc;
    if ((rc = add(p, INIT_EMBED, s->vocab_size, h, err, "model.embed_tokens.weight")))
        return rc;
    for (int l = 0; l < s->num_hidden_layers; l++) {
        const char *pre = "model.layers";
        rc = add(p, INIT_NORM, h, 0, err, "%s.%d.input_layernorm.weight", pre, l);
        if (!rc) rc = add(p, INIT_LINEAR, qd, h, err, "%s.%d.self_attn.q_proj.weight", pre, l);
        if (!rc && has_qkv_bias(s))
            rc = add(p, INIT_BIAS, qd, 0, err, "%s.%d.self_attn.q_proj.bias", pre, l);
        if (!rc) rc = add(p, INIT_LINEAR, kvd, h, err, "%s.%d.self_attn.k_proj.weight", pre, l);
        if (!rc && has_qkv_bias(s))
            rc = add(p, INIT_BIAS, kvd, 0, err, "%s.%d.self_attn.k_proj.bias", pre, l);
        if (!rc) rc = add(p, INIT_LINEAR, kvd, h, err, "%s.%d.self_attn.v_proj.weight", pre, l);
        if (!rc && has_qkv_bias(s))
            rc = add(p, INIT_BIAS, kvd, 0, err, "%s.%d.self_attn.v_proj.bias", pre, l);
        if (!rc) rc = add(p, INIT_LINEAR, h, qd, err, "%s.%d.self_attn.o_proj.weight", pre, l);
        if (!rc && has_o_bias(s))
            rc = add(p, INIT_BIAS, h, 0, err, "%s.%d.self_attn.o_proj.bias", pre, l);
        if (!rc) rc = add(p, INIT_NORM, h, 0, err, "%s.%d.post_attention_layernorm.weight", pre, l);
        if (!rc) rc = add(p, INIT_LINEAR, inter, h, err, "%s.%d.mlp.gate_proj.weight", pre, l);
        if (!rc) rc = add(p, INIT_LINEAR, inter, h, err, "%s.%d.mlp.up_proj.weight", pre, l);
        if (!rc) rc = add(p, INIT_LINEAR, h, inter, err, "%s.%d.mlp.down_proj.weight", pre, l);
        if (rc) return rc;
    }
    if ((rc = add(p, INIT_NORM, h, 0, err, "model.norm.weight"))) return rc;
    if (!s->tie_word_embeddings &&
        (rc = add(p, INIT_EMBED, s->vocab_size, h, err, "lm_head.weight")))
        return rc;

    /* Shards: greedy in order, like qd_st_write_model. */
    size_t esz = qd_dtype_size(s->dtype);
    int shard = 0;
    uint64_t cur = 0;
    for (int i = 0; i < p->n; i++) {
        struct synth_tensor *t = &p->t[i];
        t->nbytes = (uint64_t)t->shape[0] * (uint64_t)(t->ndim == 2 ? t->shape[1] : 1) * esz;
        if (s->max_shard_bytes && cur > 0 && cur + t->nbytes > s->max_shard_bytes) {
            shard++;
            cur = 0;
        }
        t->shard = shard;
        t->begin = cur;
        cur += t->nbytes;
    }
    p->n_shards = shard + 1;
    if (p->n_shards > 99999)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "synthetic model: %d shards", p->n_shards);
    return QD_OK;
}

int64_t qd_synth_param_count(const qd_synth_spec *s) {
    qd_error err = {0};
    struct synth_plan p = {0};
    int64_t n = -1;
    if (check_spec(s, &err) == QD_OK && make_plan(s, &p, &err) == QD_OK) {
        n = 0;
        for (int i = 0; i < p.n; i++)
            n += p.t[i].shape[0] * (p.t[i].ndim == 2 ? p.t[i].shape[1] : 1);
    }
    free(p.t);
    return n;
}

/* ---- values ---- */

static uint64_t mix(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint64_t name_hash(const char *s) {
    uint64_t h = 0xCBF29CE484222325ull; /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001B3ull;
    return h;
}

/* Fill dst with n values of t, continuing the tensor's stream in *state. */
static void gen_values(const struct synth_tensor *t, uint64_t *state, float *dst, int64_t n) {
    double lo, hi;
    switch (t->init) {
    case INIT_EMBED: lo = -0.02 * sqrt(3.0), hi = 0.02 * sqrt(3.0); break;
    case INIT_LINEAR: hi = sqrt(3.0 / (double)t->fan_in), lo = -hi; break;
    case INIT_NORM: lo = 0.9, hi = 1.1; break;
    default: lo = -0.1, hi = 0.1; break;
    }
    for (int64_t i = 0; i < n; i++) {
        double u = (double)(mix(state) >> 11) / 9007199254740992.0; /* [0, 1) */
        dst[i] = (float)(lo + (hi - lo) * u);
    }
}

/* ---- files ---- */

static void shard_name(char *buf, size_t len, int shard, int n_shards) {
    if (n_shards == 1)
        snprintf(buf, len, "model.safetensors");
    else
        snprintf(buf, len, "model-%05d-of-%05d.safetensors", shard + 1, n_shards);
}

static json_t *shard_header(const qd_synth_spec *s, const struct synth_plan *p, int shard) {
    json_t *root = json_object();
    json_t *meta = json_object();
    if (!root || !meta) {
        json_decref(root);
        json_decref(meta);
        return NULL;
    }
    json_object_set_new(meta, "format", json_string("pt"));
    json_object_set_new(root, "__metadata__", meta);
    for (int i = 0; i < p->n; i++) {
        const struct synth_tensor *t = &p->t[i];
        if (t->shard != shard) continue;
        json_t *shape = json_array();
        for (int d = 0; d < t->ndim; d++) json_array_append_new(shape, json_integer(t->shape[d]));
        json_t *e = json_pack("{s:s, s:o, s:[I, I]}", "dtype", qd_dtype_name(s->dtype), "shape",
                              shape, "data_offsets", (json_int_t)t->begin,
                              (json_int_t)(t->begin + t->nbytes));
        if (!e) {
            json_decref(root);
            return NULL;
        }
        json_object_set_new(root, t->name, e);
    }
    return root;
}

static qd_err write_shard(const char *dir, const qd_synth_spec *s, const struct synth_plan *p,
                          int shard, float *vals, void *bytes, qd_error *err) {
    char name[64], path[4096], tmp[4200];
    shard_name(name, sizeof name, shard, p->n_shards);
    qd_err rc = qd_path_join(path, sizeof path, dir, name, err);
    if (rc) return rc;
    snprintf(tmp, sizeof tmp, "%s.tmp", path);

    json_t *hdr = shard_header(s, p, shard);
    char *text = hdr ? json_dumps(hdr, JSON_COMPACT) : NULL;
    json_decref(hdr);
    if (!text) return qd_error_set(err, QD_ERR_NOMEM, "%s: cannot build the header", path);
    size_t hlen = strlen(text);
    size_t padded = (hlen + 8 + 7) / 8 * 8 - 8; /* data section starts 8-byte aligned */
    unsigned char lenbuf[8];
    for (int i = 0; i < 8; i++) lenbuf[i] = (unsigned char)((uint64_t)padded >> (8 * i));

    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        free(text);
        return qd_error_set(err, QD_ERR_IO, "cannot create %s: %s", tmp, strerror(errno));
    }
    static const char spaces[8] = "        ";
    rc = qd_write_all(fd, lenbuf, 8, tmp, err);
    if (!rc) rc = qd_write_all(fd, text, hlen, tmp, err);
    if (!rc) rc = qd_write_all(fd, spaces, padded - hlen, tmp, err);
    free(text);
    size_t esz = qd_dtype_size(s->dtype);
    for (int i = 0; i < p->n && !rc; i++) {
        const struct synth_tensor *t = &p->t[i];
        if (t->shard != shard) continue;
        uint64_t state = s->seed ^ name_hash(t->name);
        int64_t total = (int64_t)(t->nbytes / esz);
        for (int64_t done = 0; done < total && !rc; done += QD_SYNTH_CHUNK) {
            int64_t n = total - done < QD_SYNTH_CHUNK ? total - done : QD_SYNTH_CHUNK;
            gen_values(t, &state, vals, n);
            rc = qd_convert(s->dtype, bytes, QD_DTYPE_F32, vals, (size_t)n, err);
            if (!rc) rc = qd_write_all(fd, bytes, (size_t)n * esz, tmp, err);
        }
    }
    if (!rc && fsync(fd) != 0)
        rc = qd_error_set(err, QD_ERR_IO, "fsync %s: %s", tmp, strerror(errno));
    if (close(fd) != 0 && !rc)
        rc = qd_error_set(err, QD_ERR_IO, "close %s: %s", tmp, strerror(errno));
    if (!rc && rename(tmp, path) != 0)
        rc = qd_error_set(err, QD_ERR_IO, "rename %s: %s", tmp, strerror(errno));
    if (rc) unlink(tmp);
    return rc;
}

static qd_err write_json(const char *dir, const char *file, json_t *root, qd_error *err) {
    char path[4096];
    qd_err rc = qd_path_join(path, sizeof path, dir, file, err);
    if (rc) return rc;
    char *text = json_dumps(root, JSON_INDENT(2));
    if (!text) return qd_error_set(err, QD_ERR_NOMEM, "%s: cannot serialise", path);
    rc = qd_write_file_atomic(path, text, strlen(text), err);
    free(text);
    return rc;
}

static qd_err write_index(const char *dir, const qd_synth_spec *s, const struct synth_plan *p,
                          qd_error *err) {
    uint64_t total = 0;
    json_t *map = json_object();
    for (int i = 0; i < p->n; i++) {
        char name[64];
        shard_name(name, sizeof name, p->t[i].shard, p->n_shards);
        json_object_set_new(map, p->t[i].name, json_string(name));
        total += p->t[i].nbytes;
    }
    json_t *root = json_pack("{s:{s:I}, s:o}", "metadata", "total_size", (json_int_t)total,
                             "weight_map", map);
    if (!root) return qd_error_set(err, QD_ERR_NOMEM, "%s: cannot build the index", dir);
    qd_err rc = write_json(dir, "model.safetensors.index.json", root, err);
    json_decref(root);
    (void)s;
    return rc;
}

static qd_err write_config(const char *dir, const qd_synth_spec *s, qd_error *err) {
    const char *arch = s->architecture ? s->architecture : "LlamaForCausalLM";
    json_t *root = json_pack(
        "{s:[s], s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:f, s:f, s:s, s:b, s:i, s:i, "
        "s:s}",
        "architectures", arch, "model_type", is_qwen2(s) ? "qwen2" : "llama", "hidden_size",
        s->hidden_size, "intermediate_size", s->intermediate_size, "num_hidden_layers",
        s->num_hidden_layers, "num_attention_heads", s->num_attention_heads,
        "num_key_value_heads", s->num_key_value_heads, "head_dim", head_dim_of(s), "vocab_size",
        s->vocab_size, "max_position_embeddings", s->max_position_embeddings, "rms_norm_eps",
        s->rms_norm_eps > 0 ? s->rms_norm_eps : 1e-5, "rope_theta",
        s->rope_theta > 0 ? s->rope_theta : 10000.0, "hidden_act", "silu",
        "tie_word_embeddings", s->tie_word_embeddings, "bos_token_id", 1, "eos_token_id", 2,
        "torch_dtype", qd_dtype_torch_name(s->dtype));
    if (!root) return qd_error_set(err, QD_ERR_NOMEM, "%s: cannot build config.json", dir);
    if (!is_qwen2(s)) {
        json_object_set_new(root, "attention_bias", json_boolean(s->qkv_bias));
        json_object_set_new(root, "mlp_bias", json_false());
    }
    qd_err rc = write_json(dir, "config.json", root, err);
    json_decref(root);
    return rc;
}

qd_err qd_synth_write(const char *dir, const qd_synth_spec *s, qd_error *err) {
    struct synth_plan p = {0};
    float *vals = NULL;
    void *bytes = NULL;
    qd_err rc = check_spec(s, err);
    if (!rc) rc = make_plan(s, &p, err);
    if (!rc) rc = qd_mkdir_p(dir, 0755, err);
    if (rc) goto done;
    vals = malloc(QD_SYNTH_CHUNK * sizeof *vals);
    bytes = malloc(QD_SYNTH_CHUNK * sizeof(float));
    if (!vals || !bytes) {
        rc = qd_error_set(err, QD_ERR_NOMEM, "synthetic model: out of memory");
        goto done;
    }
    /* a stale single file or index of an earlier model would shadow or contradict this one */
    char stale[4096];
    const char *other = p.n_shards > 1 ? "model.safetensors" : "model.safetensors.index.json";
    if (qd_path_join(stale, sizeof stale, dir, other, NULL) == QD_OK) unlink(stale);
    for (int sh = 0; sh < p.n_shards && !rc; sh++)
        rc = write_shard(dir, s, &p, sh, vals, bytes, err);
    /* the index last: an index on disk implies complete shards */
    if (!rc && p.n_shards > 1) rc = write_index(dir, s, &p, err);
    if (!rc) rc = write_config(dir, s, err);
done:
    free(vals);
    free(bytes);
    free(p.t);
    return rc;
}
