/*
 * test-artifact.c - job results written as artifact directories and read back, on the bundled
 * babyllama model.
 *
 * For each format a real job (qd_job_quantize: RTN without calibration, AWQ / GPTQ /
 * SmoothQuant / FP8 on 8 short rows of the calibration set) is written with small shards, and
 * the directory is checked against what the engines read: config.json is the source's plus a
 * quantization_config with exactly the reference exporter's keys, the side config where the
 * format has one, an index listing every tensor of the shards, embeddings and norms in the
 * source dtype (F32) and values, tokenizer.bin byte-identical, every linear unpacked from the
 * files dequantizing to exactly the in-memory result, and the perplexity of the reopened
 * artifact equal to qd_job_perplexity() of the result. Then the failure paths: an existing
 * output directory, a failure while writing, a spec the format refuses, corrupted artifacts
 * (missing tensor, wrong dtype), an unknown quant_method.
 *
 * ModelOpt's int4 groups (64 or 128) do not divide babyllama's intermediate size 352, so its
 * int4 cases run on a copy of babyllama whose MLP is cut to its first 256 channels.
 */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "artifact.h"
#include "dtype.h"
#include "error.h"
#include "fsutil.h"
#include "job.h"
#include "safetensors.h"
#include "spec.h"
#include "test.h"
#include "tokenizer.h"

#define BABY QD_SOURCE_DIR "/examples/models/babyllama"
#define CALIB QD_SOURCE_DIR "/examples/data/babyllama/calib.safetensors"
#define EVAL QD_SOURCE_DIR "/examples/data/babyllama/eval.safetensors"

enum { CALIB_ROWS = 8, CALIB_LEN = 64, EVAL_ROWS = 4, EVAL_LEN = 64 };
#define SMALL_SHARD 400000u /* bytes: babyllama's ~3.7 MB splits into several shards */

/* ---- helpers ---- */

/* The first rows x len tokens of a token set (caller frees), or NULL. */
static int32_t *load_tokens(const char *path, int64_t rows, int64_t len) {
    qd_error err = {0};
    int32_t *t = NULL;
    int64_t got_rows = 0, got_len = 0;
    if (qd_token_set_load(path, rows, len, &t, &got_rows, &got_len, &err) != QD_OK) {
        fprintf(stderr, "%s\n", qd_error_text(&err));
        return NULL;
    }
    if (got_rows != rows || got_len != len) {
        free(t);
        return NULL;
    }
    return t;
}

/* A fresh directory name under the working directory (the directory is not created). */
static void tmp_name(const char *tag, char *buf, size_t len) {
    static int seq;
    snprintf(buf, len, "qd-art-%s-%ld-%d", tag, (long)getpid(), seq++);
    qd_remove_tree(buf, NULL);
}

/* Whether any entry of the working directory starts with prefix. */
static bool any_entry_with_prefix(const char *prefix) {
    DIR *d = opendir(".");
    bool found = false;
    struct dirent *de;
    while (d && !found && (de = readdir(d)) != NULL)
        found = strncmp(de->d_name, prefix, strlen(prefix)) == 0;
    if (d) closedir(d);
    return found;
}

static bool same_file(const char *a, const char *b) {
    char *x = NULL, *y = NULL;
    size_t lx = 0, ly = 0;
    bool same = qd_read_file(a, 1u << 24, &x, &lx, NULL) == QD_OK &&
                qd_read_file(b, 1u << 24, &y, &ly, NULL) == QD_OK && lx == ly &&
                memcmp(x, y, lx) == 0;
    free(x);
    free(y);
    return same;
}

static json_t *load_json(const char *dir, const char *name) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return json_load_file(path, 0, NULL);
}

/* A spec from flags, resolved. */
static qd_err spec_of(const char *const *flags, qd_spec *s, qd_error *err) {
    const char *argv[32] = {"quantize"};
    int argc = 1;
    while (flags[argc - 1] && argc < 31) {
        argv[argc] = flags[argc - 1];
        argc++;
    }
    memset(s, 0, sizeof *s);
    qd_err rc = qd_spec_parse_args(argc, (char *const *)argv, s, NULL, NULL, err);
    if (!rc) rc = qd_spec_resolve(s, NULL, err);
    return rc;
}

/* Copy of babyllama with the MLP cut to its first `inter` channels (gate/up rows, down
 * columns), for the group sizes ModelOpt takes. */
static qd_err make_cut_model(const char *dst, int inter, qd_error *err) {
    qd_st_model *st = NULL;
    qd_st_writer *w = qd_st_writer_new();
    float *cols[8] = {0};
    int n_cols = 0;
    char *cfg = NULL, path[512];
    size_t len;
    qd_err rc = qd_mkdir_p(dst, 0755, err);
    if (!rc) rc = qd_st_model_open(BABY, &st, err);
    for (size_t i = 0; !rc && st && i < qd_st_model_count(st); i++) {
        const qd_st_entry *e = qd_st_model_get(st, i);
        int64_t shape[2] = {e->shape[0], e->ndim > 1 ? e->shape[1] : 0};
        if (strstr(e->name, "gate_proj.weight") || strstr(e->name, "up_proj.weight")) {
            shape[0] = inter; /* the first rows: a prefix of the data */
            rc = qd_st_writer_add(w, e->name, e->dtype, 2, shape, e->data, err);
        } else if (strstr(e->name, "down_proj.weight")) {
            float *c = malloc((size_t)(e->shape[0] * inter) * sizeof *c);
            const float *src = e->data;
            if (!c || n_cols == 8) {
                free(c);
                rc = qd_error_set(err, QD_ERR_NOMEM, "cut model");
                break;
            }
            for (int64_t r = 0; r < e->shape[0]; r++)
                memcpy(c + r * inter, src + r * e->shape[1], (size_t)inter * sizeof *c);
            cols[n_cols++] = c;
            shape[1] = inter;
            rc = qd_st_writer_add(w, e->name, e->dtype, 2, shape, c, err);
        } else {
            rc = qd_st_writer_add(w, e->name, e->dtype, e->ndim, e->shape, e->data, err);
        }
    }
    if (!rc) rc = qd_st_write_model(w, dst, 0, NULL, err);
    if (!rc) rc = qd_read_file(BABY "/config.json", 1 << 20, &cfg, &len, err);
    if (!rc) {
        char *p = strstr(cfg, "\"intermediate_size\": 352");
        if (!p) {
            rc = qd_error_set(err, QD_ERR_FORMAT, "babyllama config changed");
        } else {
            memcpy(p, "\"intermediate_size\": 256", 24);
            snprintf(path, sizeof path, "%s/config.json", dst);
            rc = qd_write_file_atomic(path, cfg, len, err);
        }
    }
    if (!rc) {
        snprintf(path, sizeof path, "%s/tokenizer.bin", dst);
        rc = qd_copy_file(BABY "/tokenizer.bin", path, err);
    }
    free(cfg);
    for (int i = 0; i < n_cols; i++) free(cols[i]);
    qd_st_writer_free(w);
    qd_st_model_close(st);
    return rc;
}

/* ---- the engine's computation, modelled independently of artifact.c ---- */

/* y = fq(x * pre_scale) W'^T + b with W' the dequantized codes; a module kept in float reads
 * float activations; a fused input's static scale is the largest of its linears'. */
static qd_err ref_weights(void *ctx, qd_layer_weights *w, qd_error *err) {
    const qd_job_result *r = ctx;
    (void)err;
    for (int k = 0; k < QD_LINEAR_COUNT; k++) {
        const qd_qlinear *q = &r->q[w->layer * QD_LINEAR_COUNT + k];
        const float *keep = r->keep[w->layer * QD_LINEAR_COUNT + k];
        if (q->codes) qd_qlinear_dequant(q, w->w[k]);
        else memcpy(w->w[k], keep, (size_t)(w->n_out[k] * w->n_in[k]) * sizeof(float));
        if (q->codes && q->bias && w->b[k])
            memcpy(w->b[k], q->bias, (size_t)w->n_out[k] * sizeof(float));
    }
    if (r->attn_norm)
        memcpy(w->attn_norm, r->attn_norm + w->layer * r->hidden, (size_t)r->hidden * 4);
    if (r->mlp_norm)
        memcpy(w->mlp_norm, r->mlp_norm + w->layer * r->hidden, (size_t)r->hidden * 4);
    return QD_OK;
}

static qd_err ref_input(void *ctx, int layer, qd_linear_kind kind, float *x, int64_t n_tok,
                        int64_t n_in, qd_error *err) {
    const qd_job_result *r = ctx;
    (void)err;
    int n = kind == QD_LINEAR_Q ? 3 : kind == QD_LINEAR_GATE ? 2 : 1;
    const qd_qlinear *q = &r->q[layer * QD_LINEAR_COUNT + kind];
    float scale = 0.0f;
    bool any = false;
    for (int i = 0; i < n; i++) {
        any = any || q[i].codes != NULL;
        if (q[i].act_scale > scale) scale = q[i].act_scale;
    }
    if (!any) return QD_OK;
    if (q->pre_scale)
        for (int64_t t = 0; t < n_tok; t++)
            for (int64_t c = 0; c < n_in; c++) x[t * n_in + c] *= q->pre_scale[c];
    qd_act_fake_quant(r->act_mode, scale, x, n_tok, n_in);
    return QD_OK;
}

static qd_err ref_perplexity(const qd_model *m, const qd_job_result *r, const int32_t *tok,
                             double *ppl, qd_error *err) {
    qd_run_opts o = {.on_weights = ref_weights, .hook_ctx = (void *)r,
                     .on_linear_input = ref_input, .linear_input_ctx = (void *)r};
    double nll[EVAL_ROWS], sum = 0;
    qd_err rc = qd_model_nll(m, tok, EVAL_ROWS, EVAL_LEN, &o, nll, err);
    for (int i = 0; i < EVAL_ROWS; i++) sum += nll[i];
    if (!rc) *ppl = exp(sum / (EVAL_ROWS * (EVAL_LEN - 1.0)));
    return rc;
}

/* ---- one format, end to end ---- */

typedef struct art_case {
    const char *tag;
    const char *src;             /* model directory */
    const char *flags[16];       /* spec flags, NULL-terminated */
    const char *format;          /* registry name expected */
    const char *const *keys;     /* quantization_config keys, exactly, NULL-terminated */
    const char *key, *value;     /* one string value to check in quantization_config */
    const char *side;            /* side config file, or NULL */
    qd_format_act act;
    /* the perplexity to compare with: qd_job_perplexity(), to the last bit (EXACT) or to 4
     * significant digits (JOB); or this file's model of the engine (ENGINE, 4 digits) */
    enum { REF_EXACT, REF_JOB, REF_ENGINE } ref;
} art_case;

static const char *const AWQ_KEYS[] = {"quant_method", "zero_point", "group_size", "bits",
                                       "version", "modules_to_not_convert", NULL};
static const char *const GPTQ_KEYS[] = {"bits", "group_size", "damp_percent", "desc_act",
                                        "static_groups", "sym", "true_sequential",
                                        "model_name_or_path", "model_file_base_name",
                                        "quant_method", "checkpoint_format", NULL};
static const char *const CT_KEYS[] = {"config_groups", "format", "global_compression_ratio",
                                      "ignore", "kv_cache_scheme", "quant_method",
                                      "quantization_status", "sparsity_config",
                                      "transform_config", "version", NULL};
static const char *const MO_KEYS[] = {"ignore", "quant_algo", "producer", "quant_method", NULL};

static void check_keys(const json_t *qc, const char *const *keys, const char *tag) {
    size_t n = 0;
    for (; keys[n]; n++)
        QD_CHECK_MSG(json_object_get(qc, keys[n]) != NULL, "%s: key %s missing", tag, keys[n]);
    QD_CHECK_MSG(json_object_size(qc) == n, "%s: %zu keys, expected %zu", tag,
                 json_object_size(qc), n);
}

/* Every key of the source config.json is kept with its value. */
static void check_config_kept(const char *src, const json_t *cfg, const char *tag) {
    json_t *orig = load_json(src, "config.json");
    QD_REQUIRE(orig);
    const char *k;
    json_t *v;
    json_object_foreach(orig, k, v)
        QD_CHECK_MSG(json_equal(v, json_object_get(cfg, k)), "%s: config key %s changed", tag,
                     k);
    QD_CHECK(json_object_size(cfg) == json_object_size(orig) + 1);
    json_decref(orig);
}

/* index.json lists every tensor of the shards (and no other); the source's non-linear tensors
 * are in their dtype with their values (norms: the result's folded ones when it has them). */
static void check_tensors(const char *src, const char *out, const qd_job_result *r,
                          const char *tag) {
    json_t *index = load_json(out, "model.safetensors.index.json");
    QD_REQUIRE(index);
    json_t *map = json_object_get(index, "weight_map");
    qd_error err = {0};
    qd_st_model *a = NULL, *s = NULL;
    QD_CHECK_OK(qd_st_model_open(out, &a, &err), &err);
    QD_CHECK_OK(qd_st_model_open(src, &s, &err), &err);
    if (!a || !s || !json_is_object(map)) goto done;
    QD_CHECK(qd_st_model_shard_count(a) > 1);
    QD_CHECK_EQ_INT(json_object_size(map), qd_st_model_count(a));
    for (size_t i = 0; i < qd_st_model_count(a); i++)
        QD_CHECK_MSG(json_object_get(map, qd_st_model_get(a, i)->name), "%s: %s not in index",
                     tag, qd_st_model_get(a, i)->name);
    for (size_t i = 0; i < qd_st_model_count(s); i++) {
        const qd_st_entry *e = qd_st_model_get(s, i);
        int layer = -1;
        char lin[32] = "";
        if (sscanf(e->name, "model.layers.%d.%*[a-z_].%31[a-z_].weight", &layer, lin) == 2 &&
            strstr(lin, "_proj")) {
            /* a quantized linear keeps no float weight (ModelOpt/compressed-tensors W8A8 call
             * their int8 tensor "weight": not F32); one kept in float has the source's */
            int k = 0;
            while (k < QD_LINEAR_COUNT && strcmp(qd_linear_name((qd_linear_kind)k), lin)) k++;
            const float *keep = k < QD_LINEAR_COUNT ? r->keep[layer * QD_LINEAR_COUNT + k] : NULL;
            const qd_st_entry *x = qd_st_model_find(a, e->name);
            if (keep)
                QD_CHECK_MSG(x && x->dtype == QD_DTYPE_F32 &&
                                 memcmp(x->data, e->data, (size_t)(e->end - e->begin)) == 0,
                             "%s: %s not kept as it was", tag, e->name);
            else
                QD_CHECK_MSG(!x || x->dtype != QD_DTYPE_F32, "%s: %s still float", tag,
                             e->name);
            continue;
        }
        const qd_st_entry *x = qd_st_model_find(a, e->name);
        QD_CHECK_MSG(x != NULL, "%s: %s missing", tag, e->name);
        if (!x) continue;
        QD_CHECK_MSG(x->dtype == e->dtype && x->dtype == QD_DTYPE_F32, "%s: %s is %s", tag,
                     e->name, qd_dtype_name(x->dtype));
        QD_CHECK(x->ndim == e->ndim && x->end - x->begin == e->end - e->begin);
        const float *want = e->data;
        bool in_layer = sscanf(e->name, "model.layers.%d.", &layer) == 1;
        bool attn = in_layer && strstr(e->name, ".input_layernorm.weight");
        bool mlp = in_layer && strstr(e->name, ".post_attention_layernorm.weight");
        if (attn && r->attn_norm) want = r->attn_norm + layer * r->hidden;
        if (mlp && r->mlp_norm) want = r->mlp_norm + layer * r->hidden;
        QD_CHECK_MSG(memcmp(x->data, want, (size_t)(e->end - e->begin)) == 0,
                     "%s: %s values differ", tag, e->name);
    }
    QD_CHECK_EQ_STR(qd_st_metadata(qd_st_model_shard(a, 0), "format"), "pt");
done:
    qd_st_model_close(a);
    qd_st_model_close(s);
    json_decref(index);
}

/* Every linear read back from the files dequantizes to exactly the result's weights. */
static void check_linears(const qd_artifact *art, const qd_job_result *r, const char *tag) {
    qd_error err = {0};
    for (int l = 0; l < r->n_layers; l++)
        for (int k = 0; k < QD_LINEAR_COUNT; k++) {
            const qd_qlinear *want = &r->q[l * QD_LINEAR_COUNT + k];
            qd_qlinear got;
            bool plain = false;
            memset(&got, 0, sizeof got);
            QD_CHECK_OK(qd_artifact_unpack_linear(art, l, (qd_linear_kind)k, &got, &plain, &err),
                        &err);
            QD_CHECK(plain == (want->codes == NULL));
            if (got.codes && want->codes && got.n == want->n && got.k == want->k) {
                size_t n = (size_t)want->n * (size_t)want->k;
                float *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b);
                if (a && b) {
                    qd_qlinear_dequant(&got, a);
                    qd_qlinear_dequant(want, b);
                    QD_CHECK_MSG(memcmp(a, b, n * sizeof *a) == 0, "%s: layer %d %s differs",
                                 tag, l, qd_linear_name((qd_linear_kind)k));
                }
                free(a);
                free(b);
                QD_CHECK(got.act_scale == want->act_scale);
                QD_CHECK(got.weight_scale_2 == want->weight_scale_2);
                QD_CHECK((got.pre_scale == NULL) == (want->pre_scale == NULL));
                if (got.pre_scale && want->pre_scale)
                    QD_CHECK(memcmp(got.pre_scale, want->pre_scale,
                                    (size_t)want->k * sizeof(float)) == 0);
            }
            qd_qlinear_free(&got);
        }
}

static void run_case(const art_case *c) {
    qd_error err = {0};
    qd_spec spec;
    qd_model *m = NULL;
    qd_job_result res;
    memset(&res, 0, sizeof res);
    qd_artifact *art = NULL;
    char out[128];
    tmp_name(c->tag, out, sizeof out);
    int32_t *calib = load_tokens(CALIB, CALIB_ROWS, CALIB_LEN);
    int32_t *eval = load_tokens(EVAL, EVAL_ROWS, EVAL_LEN);
    QD_REQUIRE(calib && eval);
    QD_CHECK_OK(spec_of(c->flags, &spec, &err), &err);
    QD_CHECK_OK(qd_model_open(c->src, &m, &err), &err);
    if (!m || err.code) goto done;
    bool needs = qd_spec_needs_calibration(&spec);
    QD_CHECK_OK(qd_job_quantize(m, &spec, needs ? calib : NULL, CALIB_ROWS, CALIB_LEN, NULL,
                                NULL, &res, &err),
                &err);
    if (err.code) goto done;
    QD_CHECK_OK(qd_artifact_write(c->src, m, &spec, &res, out, SMALL_SHARD, &err), &err);
    if (err.code) goto done;

    /* files */
    json_t *cfg = load_json(out, "config.json");
    QD_CHECK(cfg != NULL);
    json_t *qc = cfg ? json_object_get(cfg, "quantization_config") : NULL;
    QD_CHECK_MSG(json_is_object(qc), "%s: no quantization_config", c->tag);
    if (json_is_object(qc)) {
        check_keys(qc, c->keys, c->tag);
        QD_CHECK_EQ_STR(json_string_value(json_object_get(qc, c->key)), c->value);
        check_config_kept(c->src, cfg, c->tag);
    }
    if (c->side) {
        json_t *side = load_json(out, c->side);
        QD_CHECK_MSG(side != NULL, "%s: no %s", c->tag, c->side);
        /* AutoGPTQ writes the same dict to both files */
        if (side && strcmp(c->side, "quantize_config.json") == 0) QD_CHECK(json_equal(side, qc));
        json_decref(side);
    }
    json_decref(cfg);
    char a[256], b[256];
    snprintf(a, sizeof a, "%s/tokenizer.bin", c->src);
    snprintf(b, sizeof b, "%s/tokenizer.bin", out);
    QD_CHECK_MSG(same_file(a, b), "%s: tokenizer.bin differs", c->tag);
    snprintf(b, sizeof b, "%s/model.safetensors", out);
    QD_CHECK(!qd_is_file(b)); /* sharded: no single file (none copied from the source) */
    check_tensors(c->src, out, &res, c->tag);

    /* recognised as written, every linear read back exactly, same perplexity */
    QD_CHECK_OK(qd_artifact_open(out, &art, &err), &err);
    if (!art) goto done;
    const qd_artifact_info *info = qd_artifact_get_info(art);
    QD_CHECK_MSG(info->format && strcmp(info->format->name, c->format) == 0, "%s: read as %s",
                 c->tag, info->format ? info->format->name : "float");
    QD_CHECK_EQ_INT(info->params.act, c->act);
    QD_CHECK_EQ_INT(info->params.bits, spec.method == QD_SPEC_METHOD_FP8 ? 8 : (int)spec.bits);
    check_linears(art, &res, c->tag);
    double p_mem = 0, p_art = 0, p_ref = 0;
    QD_CHECK_OK(qd_job_perplexity(m, &res, eval, EVAL_ROWS, EVAL_LEN, NULL, &p_mem, &err),
                &err);
    QD_CHECK_OK(qd_artifact_perplexity(art, eval, EVAL_ROWS, EVAL_LEN, NULL, &p_art, &err),
                &err);
    p_ref = p_mem;
    if (c->ref == REF_ENGINE) QD_CHECK_OK(ref_perplexity(m, &res, eval, &p_ref, &err), &err);
    printf("  %-11s %-18s ppl in memory %.6f, engine model %.6f, artifact %.6f\n", c->tag,
           c->format, p_mem, p_ref, p_art);
    QD_CHECK(isfinite(p_art) && p_art > 1.0);
    QD_CHECK_NEAR(p_art / p_ref, 1.0, 5e-5); /* 4 significant digits */
    if (c->ref == REF_EXACT)
        QD_CHECK_MSG(p_art == p_mem, "%s: %.17g != %.17g", c->tag, p_art, p_mem);
done:
    qd_artifact_free(art);
    qd_job_result_free(&res);
    qd_model_free(m);
    qd_spec_free(&spec);
    qd_remove_tree(out, NULL);
    free(calib);
    free(eval);
}

QD_TEST(awq_w4_g32_asym) {
    art_case c = {"awq", BABY,
                  {"--calib", CALIB, "--method", "awq", "--format", "awq", "--bits", "4",
                   "--group-size", "32", "--asym", NULL},
                  "awq", AWQ_KEYS, "version", "gemm", NULL, QD_FORMAT_ACT_NONE, REF_EXACT};
    run_case(&c);
}

QD_TEST(gptq_w4_g32_sym_v1) {
    art_case c = {"gptq", BABY,
                  {"--calib", CALIB, "--method", "gptq", "--format", "gptq", "--bits", "4",
                   "--group-size", "32", "--sym", NULL},
                  "gptq", GPTQ_KEYS, "checkpoint_format", "gptq", "quantize_config.json",
                  QD_FORMAT_ACT_NONE, REF_EXACT};
    run_case(&c);
}

QD_TEST(gptq_asym_act_order_is_v2) {
    art_case c = {"gptq-v2", BABY,
                  {"--calib", CALIB, "--method", "gptq", "--format", "gptq", "--bits", "4",
                   "--group-size", "32", "--asym", "--act-order", NULL},
                  "gptq_v2", GPTQ_KEYS, "checkpoint_format", "gptq_v2", "quantize_config.json",
                  QD_FORMAT_ACT_NONE, REF_EXACT};
    run_case(&c);
}

QD_TEST(compressed_tensors_w4a16_asym) {
    art_case c = {"ct-w4a16", BABY,
                  {"--method", "rtn", "--format", "compressed-tensors", "--bits", "4",
                   "--group-size", "32", "--asym", NULL},
                  "compressed-tensors", CT_KEYS, "format", "pack-quantized", NULL,
                  QD_FORMAT_ACT_NONE, REF_EXACT};
    run_case(&c);
}

QD_TEST(compressed_tensors_w8a16) {
    art_case c = {"ct-w8a16", BABY,
                  {"--method", "rtn", "--format", "compressed-tensors", "--bits", "8",
                   "--group-size", "-1", "--sym", NULL},
                  "compressed-tensors", CT_KEYS, "format", "pack-quantized", NULL,
                  QD_FORMAT_ACT_NONE, REF_EXACT};
    run_case(&c);
}

QD_TEST(smoothquant_int_quantized) {
    art_case c = {"ct-w8a8", BABY,
                  {"--calib", CALIB, "--method", "smoothquant", "--format",
                   "compressed-tensors", NULL},
                  "compressed-tensors", CT_KEYS, "format", "int-quantized", NULL,
                  QD_FORMAT_ACT_INT8_TOKEN, REF_EXACT};
    run_case(&c);
}

QD_TEST(fp8_float_quantized_static) {
    art_case c = {"ct-fp8", BABY,
                  {"--calib", CALIB, "--method", "fp8", "--format", "compressed-tensors",
                   "--fp8-weight-scale", "tensor", "--fp8-activation-scheme", "static", NULL},
                  "compressed-tensors", CT_KEYS, "format", "float-quantized", NULL,
                  QD_FORMAT_ACT_FP8_TENSOR, REF_EXACT};
    run_case(&c);
}

/* An engine runs a module left in float on float activations; qd_job_perplexity() quantizes
 * the input of every linear group, so the comparison is with this file's engine model. */
QD_TEST(fp8_float_quantized_dynamic_excluding_a_module) {
    art_case c = {"ct-fp8-dyn", BABY,
                  {"--method", "fp8", "--format", "compressed-tensors", "--fp8-weight-scale",
                   "channel", "--fp8-activation-scheme", "dynamic", "--modules-to-not-convert",
                   "layers.1.self_attn", NULL},
                  "compressed-tensors", CT_KEYS, "format", "float-quantized", NULL,
                  QD_FORMAT_ACT_FP8_TOKEN, REF_ENGINE};
    run_case(&c);
}

QD_TEST(modelopt_w4a16_awq) {
    char cut[128];
    qd_error err = {0};
    tmp_name("cut", cut, sizeof cut);
    QD_CHECK_OK(make_cut_model(cut, 256, &err), &err);
    art_case c = {"mo-w4a16", cut,
                  {"--calib", CALIB, "--method", "awq", "--format", "modelopt", "--bits", "4",
                   "--group-size", "64", NULL},
                  "modelopt", MO_KEYS, "quant_algo", "W4A16_AWQ", "hf_quant_config.json",
                  QD_FORMAT_ACT_NONE, REF_EXACT};
    if (!err.code) run_case(&c);
    qd_remove_tree(cut, NULL);
}

/* o_proj keeps a pre_quant_scale (grouped-query attention: it cannot be folded into v_proj).
 * The engine multiplies the activations by it before their fp8 quantization; the artifact's
 * evaluation does that, qd_job_perplexity() does not apply the pre-scale at all, so the
 * comparison is with this file's engine model. */
QD_TEST(modelopt_w4a8_awq) {
    char cut[128];
    qd_error err = {0};
    tmp_name("cut", cut, sizeof cut);
    QD_CHECK_OK(make_cut_model(cut, 256, &err), &err);
    art_case c = {"mo-w4a8", cut,
                  {"--calib", CALIB, "--method", "w4a8-awq", "--format", "modelopt",
                   "--group-size", "128", NULL},
                  "modelopt", MO_KEYS, "quant_algo", "W4A8_AWQ", "hf_quant_config.json",
                  QD_FORMAT_ACT_FP8_TENSOR, REF_ENGINE};
    if (!err.code) run_case(&c);
    qd_remove_tree(cut, NULL);
}

QD_TEST(modelopt_int8_smoothquant) {
    art_case c = {"mo-sq", BABY,
                  {"--calib", CALIB, "--method", "smoothquant", "--format", "modelopt", NULL},
                  "modelopt", MO_KEYS, "quant_algo", "W8A8_SQ_PER_CHANNEL",
                  "hf_quant_config.json", QD_FORMAT_ACT_INT8_TENSOR, REF_EXACT};
    run_case(&c);
}

QD_TEST(dashinfer_w4_per_channel) {
    art_case c = {"dashinfer", BABY,
                  {"--method", "rtn", "--format", "dashinfer", "--bits", "4", "--group-size",
                   "-1", NULL},
                  "dashinfer", GPTQ_KEYS, "checkpoint_format", "gptq", "quantize_config.json",
                  QD_FORMAT_ACT_NONE, REF_EXACT};
    run_case(&c);
}

/* ---- failure paths ---- */

/* An RTN result for flags on babyllama (no calibration needed). */
static qd_err rtn_result(const char *const *flags, qd_spec *spec, qd_model **m,
                         qd_job_result *res, qd_error *err) {
    memset(res, 0, sizeof *res);
    *m = NULL;
    qd_err rc = spec_of(flags, spec, err);
    if (!rc) rc = qd_model_open(BABY, m, err);
    if (!rc) rc = qd_job_quantize(*m, spec, NULL, 0, 0, NULL, NULL, res, err);
    return rc;
}

static const char *const GPTQ_RTN[] = {"--method", "rtn",      "--format", "gptq", "--bits",
                                       "4",        "--group-size", "32",   "--sym",  NULL};

QD_TEST(existing_out_dir_is_refused_and_left_alone) {
    qd_error err = {0};
    qd_spec spec;
    qd_model *m;
    qd_job_result res;
    char out[128], marker[160], prefix[160];
    tmp_name("exists", out, sizeof out);
    QD_REQUIRE(rtn_result(GPTQ_RTN, &spec, &m, &res, &err) == QD_OK);
    QD_CHECK_OK(qd_mkdir_p(out, 0755, &err), &err);
    snprintf(marker, sizeof marker, "%s/keep.txt", out);
    QD_CHECK_OK(qd_write_file_atomic(marker, "x", 1, &err), &err);
    qd_err rc = qd_artifact_write(BABY, m, &spec, &res, out, 0, &err);
    QD_CHECK_EQ_INT(rc, QD_ERR_EXISTS);
    QD_CHECK(strstr(qd_error_text(&err), out) != NULL);
    QD_CHECK(qd_is_file(marker));
    snprintf(marker, sizeof marker, "%s/config.json", out);
    QD_CHECK(!qd_is_file(marker));
    snprintf(prefix, sizeof prefix, "%s.staging", out);
    QD_CHECK(!any_entry_with_prefix(prefix));
    /* with a trailing slash too */
    qd_error_clear(&err);
    snprintf(prefix, sizeof prefix, "%s/", out);
    QD_CHECK_EQ_INT(qd_artifact_write(BABY, m, &spec, &res, prefix, 0, &err), QD_ERR_EXISTS);
    qd_remove_tree(out, NULL);
    qd_job_result_free(&res);
    qd_model_free(m);
    qd_spec_free(&spec);
}

QD_TEST(failure_while_writing_leaves_nothing) {
    qd_error err = {0};
    qd_spec spec;
    qd_model *m;
    qd_job_result res;
    char out[128], prefix[160];
    tmp_name("fail", out, sizeof out);
    QD_REQUIRE(rtn_result(GPTQ_RTN, &spec, &m, &res, &err) == QD_OK);
    /* a code out of the 4-bit range: found by the packer, after the staging directory exists */
    res.q[3 * QD_LINEAR_COUNT + QD_LINEAR_UP].codes[5] = 200;
    qd_err rc = qd_artifact_write(BABY, m, &spec, &res, out, SMALL_SHARD, &err);
    QD_CHECK(rc != QD_OK);
    QD_CHECK_MSG(strstr(qd_error_text(&err), "model.layers.3.mlp.up_proj") != NULL, "%s",
                 qd_error_text(&err));
    QD_CHECK(!qd_is_dir(out));
    snprintf(prefix, sizeof prefix, "%s.staging", out);
    QD_CHECK(!any_entry_with_prefix(prefix));
    qd_job_result_free(&res);
    qd_model_free(m);
    qd_spec_free(&spec);
}

QD_TEST(format_check_failure_creates_nothing) {
    qd_error err = {0};
    qd_spec spec;
    qd_model *m;
    qd_job_result res;
    char out[128], prefix[160];
    tmp_name("check", out, sizeof out);
    /* TensorRT-LLM's int4 kernels take groups 64 and 128: quantize for compressed-tensors with
     * group 32, then ask for ModelOpt (whose spec validation would have refused it) */
    static const char *const ct[] = {"--method", "rtn", "--format", "compressed-tensors",
                                     "--bits", "4", "--group-size", "32", "--sym", NULL};
    QD_REQUIRE(rtn_result(ct, &spec, &m, &res, &err) == QD_OK);
    spec.format = QD_SPEC_FORMAT_MODELOPT;
    qd_err rc = qd_artifact_write(BABY, m, &spec, &res, out, 0, &err);
    QD_CHECK_EQ_INT(rc, QD_ERR_UNSUPPORTED);
    QD_CHECK_MSG(strstr(qd_error_text(&err), "(got 32)") != NULL, "%s",
                 qd_error_text(&err));
    QD_CHECK(!qd_is_dir(out));
    snprintf(prefix, sizeof prefix, "%s.staging", out);
    QD_CHECK(!any_entry_with_prefix(prefix));
    /* format none writes nothing */
    qd_error_clear(&err);
    spec.format = QD_SPEC_FORMAT_NONE;
    QD_CHECK_EQ_INT(qd_artifact_write(BABY, m, &spec, &res, out, 0, &err), QD_ERR_INVALID_ARG);
    QD_CHECK(!qd_is_dir(out));
    qd_job_result_free(&res);
    qd_model_free(m);
    qd_spec_free(&spec);
}

/* Rewrite dir/model.safetensors without `drop`, and with `retype` relabelled as dtype. */
static qd_err corrupt(const char *dir, const char *drop, const char *retype, qd_dtype dtype,
                      qd_error *err) {
    char path[256];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    qd_st_file *f = NULL;
    qd_st_writer *w = qd_st_writer_new();
    qd_err rc = qd_st_open(path, &f, err);
    for (size_t i = 0; !rc && i < qd_st_count(f); i++) {
        const qd_st_entry *e = qd_st_get(f, i);
        if (drop && strcmp(e->name, drop) == 0) continue;
        qd_dtype dt = retype && strcmp(e->name, retype) == 0 ? dtype : e->dtype;
        rc = qd_st_writer_add(w, e->name, dt, e->ndim, e->shape, e->data, err);
    }
    /* the data stays mapped until the write is done; the rename replaces the file */
    if (!rc) rc = qd_st_write_file(w, path, err);
    qd_st_writer_free(w);
    qd_st_close(f);
    return rc;
}

static void expect_corrupt(const char *out, const char *drop, const char *retype,
                           qd_dtype dtype, qd_err want, const char *name) {
    qd_error err = {0};
    QD_REQUIRE(corrupt(out, drop, retype, dtype, &err) == QD_OK);
    qd_artifact *a = NULL;
    QD_CHECK_OK(qd_artifact_open(out, &a, &err), &err);
    if (!a) return;
    int32_t *eval = load_tokens(EVAL, 1, 16);
    double ppl;
    qd_err rc = qd_artifact_perplexity(a, eval, 1, 16, NULL, &ppl, &err);
    QD_CHECK_EQ_INT(rc, want);
    QD_CHECK_MSG(strstr(qd_error_text(&err), name) != NULL, "error '%s' does not name %s",
                 qd_error_text(&err), name);
    free(eval);
    qd_artifact_free(a);
}

QD_TEST(corrupted_artifact_names_the_tensor) {
    qd_error err = {0};
    qd_spec spec;
    qd_model *m;
    qd_job_result res;
    char out[128];
    tmp_name("corrupt", out, sizeof out);
    QD_REQUIRE(rtn_result(GPTQ_RTN, &spec, &m, &res, &err) == QD_OK);
    QD_CHECK_OK(qd_artifact_write(BABY, m, &spec, &res, out, 0, &err), &err);
    /* cumulative: each corruption sits in an earlier layer than the one before */
    expect_corrupt(out, NULL, "model.layers.4.self_attn.o_proj.scales", QD_DTYPE_I16,
                   QD_ERR_FORMAT, "model.layers.4.self_attn.o_proj.scales");
    expect_corrupt(out, "model.layers.2.mlp.up_proj.qzeros", NULL, QD_DTYPE_COUNT,
                   QD_ERR_NOT_FOUND, "model.layers.2.mlp.up_proj.qzeros");
    expect_corrupt(out, NULL, "model.layers.0.self_attn.k_proj.qweight", QD_DTYPE_F32,
                   QD_ERR_FORMAT, "model.layers.0.self_attn.k_proj.qweight");
    qd_remove_tree(out, NULL);
    qd_job_result_free(&res);
    qd_model_free(m);
    qd_spec_free(&spec);
}

/* Replace quantization_config in dir/config.json by the JSON text qc. */
static void set_qc(const char *dir, const char *qc) {
    char path[256];
    json_t *cfg = load_json(dir, "config.json");
    QD_REQUIRE(cfg);
    json_object_set_new(cfg, "quantization_config", json_loads(qc, 0, NULL));
    snprintf(path, sizeof path, "%s/config.json", dir);
    QD_CHECK(json_dump_file(cfg, path, JSON_INDENT(2)) == 0);
    json_decref(cfg);
}

/* The keys other writers use (AutoAWQ's legacy w_bit / q_group_size, GPTQModel's "format",
 * no side file) read the same tensors the same way. */
QD_TEST(config_spellings_of_other_writers) {
    static const char *const awq[] = {"--method", "rtn", "--format", "awq", "--bits", "4",
                                      "--group-size", "32", "--asym", NULL};
    static const struct {
        const char *const *flags;
        const char *qc, *side, *format;
    } cases[] = {
        {awq, "{\"quant_method\": \"awq\", \"w_bit\": 4, \"q_group_size\": 32, "
              "\"zero_point\": true, \"version\": \"GEMM\"}", NULL, "awq"},
        {GPTQ_RTN, "{\"quant_method\": \"gptq\", \"format\": \"gptq\", \"bits\": 4, "
                   "\"group_size\": 32, \"sym\": true, \"desc_act\": false}",
         "quantize_config.json", "gptq"},
    };
    int32_t *eval = load_tokens(EVAL, 2, 32);
    QD_REQUIRE(eval);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        qd_error err = {0};
        qd_spec spec;
        qd_model *m;
        qd_job_result res;
        char out[128], side[192];
        tmp_name("alias", out, sizeof out);
        if (rtn_result(cases[i].flags, &spec, &m, &res, &err) != QD_OK) {
            QD_CHECK_MSG(0, "%s", qd_error_text(&err));
            continue;
        }
        QD_CHECK_OK(qd_artifact_write(BABY, m, &spec, &res, out, 0, &err), &err);
        set_qc(out, cases[i].qc);
        if (cases[i].side) {
            snprintf(side, sizeof side, "%s/%s", out, cases[i].side);
            QD_CHECK(unlink(side) == 0);
        }
        qd_artifact *a = NULL;
        double p_mem = 0, p_art = -1;
        QD_CHECK_OK(qd_artifact_open(out, &a, &err), &err);
        if (a) {
            QD_CHECK_EQ_STR(qd_artifact_get_info(a)->format->name, cases[i].format);
            QD_CHECK_EQ_INT(qd_artifact_get_info(a)->params.group_size, 32);
            QD_CHECK_OK(qd_artifact_perplexity(a, eval, 2, 32, NULL, &p_art, &err), &err);
            QD_CHECK_OK(qd_job_perplexity(m, &res, eval, 2, 32, NULL, &p_mem, &err), &err);
            QD_CHECK(p_art == p_mem);
        }
        qd_artifact_free(a);
        qd_remove_tree(out, NULL);
        qd_job_result_free(&res);
        qd_model_free(m);
        qd_spec_free(&spec);
    }
    free(eval);
}

QD_TEST(float_model_and_unknown_quant_method) {
    qd_error err = {0};
    qd_artifact *a = NULL;
    qd_model *m = NULL;
    QD_REQUIRE(qd_artifact_open(BABY, &a, &err) == QD_OK);
    QD_CHECK(qd_artifact_get_info(a)->format == NULL);
    char buf[64];
    QD_CHECK_EQ_STR(qd_artifact_describe(qd_artifact_get_info(a), buf, sizeof buf), "float");
    int32_t *eval = load_tokens(EVAL, 2, 32);
    double p1 = 0, p2 = -1;
    QD_CHECK_OK(qd_artifact_perplexity(a, eval, 2, 32, NULL, &p1, &err), &err);
    QD_CHECK_OK(qd_model_open(BABY, &m, &err), &err);
    if (m) QD_CHECK_OK(qd_job_perplexity(m, NULL, eval, 2, 32, NULL, &p2, &err), &err);
    QD_CHECK(p1 == p2);
    qd_model_free(m);
    qd_artifact_free(a);
    free(eval);

    /* a quant_method quantd does not read */
    char dir[128], path[192];
    tmp_name("bnb", dir, sizeof dir);
    QD_REQUIRE(qd_mkdir_p(dir, 0755, &err) == QD_OK);
    json_t *cfg = load_json(BABY, "config.json");
    QD_REQUIRE(cfg);
    json_object_set_new(cfg, "quantization_config",
                        json_pack("{s:s,s:b}", "quant_method", "bitsandbytes", "load_in_4bit", 1));
    snprintf(path, sizeof path, "%s/config.json", dir);
    QD_REQUIRE(json_dump_file(cfg, path, 0) == 0);
    json_decref(cfg);
    qd_artifact_info info;
    qd_err rc = qd_artifact_detect(dir, &info, &err);
    QD_CHECK_EQ_INT(rc, QD_ERR_UNSUPPORTED);
    QD_CHECK(strstr(qd_error_text(&err), "bitsandbytes") != NULL);
    /* ... and a gptq config without bits */
    qd_error_clear(&err);
    cfg = load_json(BABY, "config.json");
    json_object_set_new(cfg, "quantization_config",
                        json_pack("{s:s,s:i}", "quant_method", "gptq", "group_size", 128));
    QD_REQUIRE(json_dump_file(cfg, path, 0) == 0);
    json_decref(cfg);
    rc = qd_artifact_detect(dir, &info, &err);
    QD_CHECK_EQ_INT(rc, QD_ERR_CONFIG);
    QD_CHECK(strstr(qd_error_text(&err), "'bits'") != NULL);
    qd_remove_tree(dir, NULL);
}

QD_TEST(format_params_from_spec) {
    qd_error err = {0};
    qd_spec s;
    const qd_format *f = NULL;
    qd_format_params p;
    static const char *const sq[] = {"--calib",  CALIB,      "--method",
                                     "smoothquant", "--format", "modelopt",
                                     "--modules-to-not-convert", "down_proj", NULL};
    QD_REQUIRE(spec_of(sq, &s, &err) == QD_OK);
    QD_REQUIRE(qd_artifact_format_params(&s, QD_DTYPE_BF16, &f, &p, &err) == QD_OK);
    QD_CHECK_EQ_STR(f->name, "modelopt");
    QD_CHECK_EQ_INT(p.act, QD_FORMAT_ACT_INT8_TENSOR);
    QD_CHECK_EQ_INT(p.bits, 8);
    QD_CHECK_EQ_INT(p.dtype, QD_DTYPE_BF16);
    QD_CHECK_EQ_INT(p.n_ignore, 2);
    if (p.n_ignore == 2) {
        QD_CHECK_EQ_STR(p.ignore[0], "down_proj");
        QD_CHECK_EQ_STR(p.ignore[1], "lm_head");
    }
    qd_artifact_params_done(&p);
    qd_spec_free(&s);

    static const char *const w4a8[] = {"--calib",  CALIB,      "--method",
                                       "w4a8-awq", "--format", "modelopt", NULL};
    QD_REQUIRE(spec_of(w4a8, &s, &err) == QD_OK);
    QD_REQUIRE(qd_artifact_format_params(&s, QD_DTYPE_F16, &f, &p, &err) == QD_OK);
    QD_CHECK_EQ_INT(p.act, QD_FORMAT_ACT_FP8_TENSOR);
    QD_CHECK_EQ_INT(p.bits, 4);
    QD_CHECK(p.symmetric);
    qd_artifact_params_done(&p);
    qd_spec_free(&s);

    static const char *const fp8[] = {"--method", "fp8", "--format", "compressed-tensors",
                                      NULL};
    QD_REQUIRE(spec_of(fp8, &s, &err) == QD_OK); /* default: per channel, dynamic */
    QD_REQUIRE(qd_artifact_format_params(&s, QD_DTYPE_F16, &f, &p, &err) == QD_OK);
    QD_CHECK_EQ_INT(p.type, QD_QTYPE_FP8_E4M3);
    QD_CHECK_EQ_INT(p.act, QD_FORMAT_ACT_FP8_TOKEN);
    QD_CHECK(!p.weight_per_tensor);
    qd_artifact_params_done(&p);
    qd_spec_free(&s);

    static const char *const gq[] = {"--calib",  CALIB,       "--method",        "gptq",
                                     "--format", "gptq",      "--asym",          "--act-order",
                                     "--static-groups", NULL};
    QD_REQUIRE(spec_of(gq, &s, &err) == QD_OK);
    QD_REQUIRE(qd_artifact_format_params(&s, QD_DTYPE_F16, &f, &p, &err) == QD_OK);
    QD_CHECK_EQ_STR(f->name, "gptq_v2");
    QD_CHECK(p.act_order && p.static_groups && !p.symmetric);
    QD_CHECK_EQ_INT(p.group_size, 128);
    qd_artifact_params_done(&p);
    qd_spec_free(&s);
}

QD_TEST_MAIN()
