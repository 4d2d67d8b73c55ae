/*
 * cmd_convert.c - `quantd convert MODEL_DIR -o OUT_DIR`: rewrite a model's weights.
 *
 * Converts every floating-point tensor to the requested dtype (f32, f16, bf16; integer tensors
 * are copied unchanged), writes them as one file or N shards with an index, copies the other
 * files of the directory (tokenizer, generation config, licence), and rewrites config.json's
 * torch_dtype. The output is built in a staging directory beside OUT_DIR and renamed into place
 * at the end, so an interrupted run never leaves a half-written OUT_DIR.
 *
 * With --dequantize the input is a quantized artifact (any format quantd reads): every packed
 * linear is unpacked and dequantized exactly as `quantd eval` does (quantizers/artifact.h)
 * and written as a plain <prefix>.weight, multiplied column by column by its activation
 * pre-scale where the format keeps one unfolded (ModelOpt's pre_quant_scale), so the output is
 * a float model with the weights the engine computes with. The packed tensors of those
 * linears, quantization_config and the format's side config are dropped; activation
 * quantization (static input scales) is not represented in a float model.
 */
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "artifact.h"
#include "commands.h"
#include "dtype.h"
#include "fsutil.h"
#include "hf_config.h"
#include "model.h"
#include "qlinear.h"
#include "safetensors.h"

static void convert_usage(FILE *out) {
    fprintf(out,
            "usage: quantd convert MODEL_DIR -o OUT_DIR [--dtype f32|f16|bf16] [--shards N]\n"
            "                      [--dequantize]\n"
            "\n"
            "Rewrite a Hugging Face model directory's weights:\n"
            "  -o, --output DIR   where to write (must not exist; built in a staging directory\n"
            "                     and renamed into place when complete)\n"
            "  --dtype T          dtype of the floating-point tensors: f32, f16 or bf16\n"
            "                     (default: keep each tensor's dtype)\n"
            "  --shards N         write N shards + model.safetensors.index.json (default 1:\n"
            "                     a single model.safetensors)\n"
            "  --dequantize       MODEL_DIR is a quantized artifact: write each packed linear\n"
            "                     as a float <prefix>.weight, dequantized as `quantd eval`\n"
            "                     does (times its pre_quant_scale where the format keeps one);\n"
            "                     quantization_config and the side config are dropped\n"
            "Other files (tokenizer, generation_config.json, LICENSE, ...) are copied;\n"
            "config.json gets the new torch_dtype.\n");
}

static bool is_weight_file(const char *name) {
    size_t l = strlen(name);
    return (l > 12 && strcmp(name + l - 12, ".safetensors") == 0) ||
           strcmp(name, "model.safetensors.index.json") == 0;
}

/* The quantization side configs formats write beside config.json (dropped by --dequantize). */
static bool is_quant_side_config(const char *name) {
    return strcmp(name, "quantize_config.json") == 0 ||
           strcmp(name, "hf_quant_config.json") == 0;
}

/* Copy every regular file of src except weights and config.json (and, when dequantizing, the
 * quantization side configs) into dst. */
static qd_err copy_side_files(const char *src, const char *dst, bool dequantize, qd_error *err) {
    DIR *d = opendir(src);
    if (!d) return qd_error_set(err, QD_ERR_IO, "%s: %s", src, strerror(errno));
    struct dirent *de;
    qd_err rc = QD_OK;
    while (rc == QD_OK && (de = readdir(d)) != NULL) {
        char from[PATH_MAX], to[PATH_MAX];
        if (de->d_name[0] == '.' || is_weight_file(de->d_name) ||
            strcmp(de->d_name, "config.json") == 0 ||
            (dequantize && is_quant_side_config(de->d_name)))
            continue;
        rc = qd_path_join(from, sizeof from, src, de->d_name, err);
        if (rc == QD_OK && !qd_is_file(from)) continue;
        if (rc == QD_OK) rc = qd_path_join(to, sizeof to, dst, de->d_name, err);
        if (rc == QD_OK) rc = qd_copy_file(from, to, err);
    }
    closedir(d);
    return rc;
}

/* config.json with torch_dtype (and the newer "dtype" key, if present) set to dtype. */
static qd_err write_config(const char *src_dir, const char *dst_dir, qd_dtype dtype,
                           bool dequantize, qd_error *err) {
    char from[PATH_MAX], to[PATH_MAX];
    qd_err rc = qd_path_join(from, sizeof from, src_dir, "config.json", err);
    if (rc == QD_OK) rc = qd_path_join(to, sizeof to, dst_dir, "config.json", err);
    if (rc != QD_OK) return rc;
    json_error_t jerr;
    json_t *root = json_load_file(from, JSON_REJECT_DUPLICATES, &jerr);
    if (!root || !json_is_object(root)) {
        json_decref(root);
        return qd_error_set(err, QD_ERR_FORMAT, "%s: line %d: %s", from, jerr.line, jerr.text);
    }
    if (dequantize) json_object_del(root, "quantization_config");
    if (dtype != QD_DTYPE_COUNT) {
        const char *name = qd_dtype_torch_name(dtype);
        json_object_set_new(root, "torch_dtype", json_string(name));
        if (json_object_get(root, "dtype")) json_object_set_new(root, "dtype", json_string(name));
    }
    char *text = json_dumps(root, JSON_INDENT(2));
    json_decref(root);
    if (!text) return qd_error_set(err, QD_ERR_NOMEM, "%s: cannot serialise", to);
    size_t len = strlen(text);
    char *with_nl = realloc(text, len + 2);
    if (!with_nl) {
        free(text);
        return qd_error_set(err, QD_ERR_NOMEM, "%s: cannot serialise", to);
    }
    with_nl[len] = '\n';
    rc = qd_write_file_atomic(to, with_nl, len + 1, err);
    free(with_nl);
    return rc;
}

/* Convert (or borrow) every tensor of m into w. Converted buffers are kept in bufs until the
 * write, because the writer borrows its data. */
static bool skipped(const char *name, char **skip_prefixes, size_t n_skip) {
    for (size_t j = 0; j < n_skip; j++) {
        size_t l = strlen(skip_prefixes[j]);
        /* A packed linear's own tensors, except its bias, which stays as it is. */
        if (strncmp(name, skip_prefixes[j], l) == 0 && name[l] == '.' &&
            strcmp(name + l, ".bias") != 0)
            return true;
    }
    return false;
}

static qd_err collect_tensors(qd_st_model *m, qd_dtype dtype, qd_st_writer *w, void ***bufs,
                              char **skip_prefixes, size_t n_skip, qd_error *err) {
    size_t n = qd_st_model_count(m);
    *bufs = calloc(n ? n : 1, sizeof **bufs);
    if (!*bufs) return qd_error_set(err, QD_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        const qd_st_entry *e = qd_st_model_get(m, i);
        if (skipped(e->name, skip_prefixes, n_skip)) continue;
        const void *data = e->data;
        qd_dtype out_type = e->dtype;
        if (dtype != QD_DTYPE_COUNT && qd_dtype_is_float(e->dtype) && e->dtype != dtype) {
            uint64_t bytes;
            if (!qd_shape_nbytes(dtype, e->ndim, e->shape, &bytes) || bytes > SIZE_MAX)
                return qd_error_set(err, QD_ERR_TOO_LARGE, "tensor '%s' too large", e->name);
            uint64_t numel = bytes / qd_dtype_size(dtype);
            void *buf = malloc(bytes ? (size_t)bytes : 1);
            if (!buf) return qd_error_set(err, QD_ERR_NOMEM, "tensor '%s': out of memory", e->name);
            (*bufs)[i] = buf;
            qd_err rc = qd_convert(dtype, buf, e->dtype, e->data, (size_t)numel, err);
            if (rc != QD_OK) {
                qd_error_prefix(err, "tensor '%s': ", e->name);
                return rc;
            }
            data = buf;
            out_type = dtype;
        }
        qd_err rc = qd_st_writer_add(w, e->name, out_type, e->ndim, e->shape, data, err);
        if (rc != QD_OK) return rc;
    }
    return QD_OK;
}

/* The dequantized linears of an artifact: names ("<prefix>.weight") and fp32 [n, k] data,
 * kept until the write (the writer borrows), and the prefixes whose packed tensors to drop. */
typedef struct deq_set {
    char **prefixes;
    char **names;
    void **data; /* f32, or converted to the output dtype */
    qd_dtype *dtypes;
    int64_t (*shapes)[2];
    size_t n;
} deq_set;

static void deq_set_free(deq_set *d) {
    for (size_t i = 0; i < d->n; i++) {
        free(d->prefixes[i]);
        free(d->names[i]);
        free(d->data[i]);
    }
    free(d->prefixes);
    free(d->names);
    free(d->data);
    free(d->dtypes);
    free(d->shapes);
    memset(d, 0, sizeof *d);
}

/* Unpack and dequantize every packed linear of the artifact at src. */
static qd_err dequantize_linears(const char *src, qd_dtype dtype, deq_set *d, qd_error *err) {
    qd_artifact *a = NULL;
    qd_err rc = qd_artifact_open(src, &a, err);
    if (rc != QD_OK) return rc;
    const qd_model *m = qd_artifact_model(a);
    int n_layers = qd_model_config(m)->num_hidden_layers;
    size_t cap = (size_t)n_layers * QD_LINEAR_COUNT;
    d->prefixes = calloc(cap ? cap : 1, sizeof *d->prefixes);
    d->names = calloc(cap ? cap : 1, sizeof *d->names);
    d->data = calloc(cap ? cap : 1, sizeof *d->data);
    d->dtypes = calloc(cap ? cap : 1, sizeof *d->dtypes);
    d->shapes = calloc(cap ? cap : 1, sizeof *d->shapes);
    if (!d->prefixes || !d->names || !d->data || !d->dtypes || !d->shapes)
        rc = qd_error_set(err, QD_ERR_NOMEM, "out of memory");
    for (int l = 0; rc == QD_OK && l < n_layers; l++) {
        for (int kind = 0; rc == QD_OK && kind < QD_LINEAR_COUNT; kind++) {
            qd_qlinear q = {0};
            bool plain = false;
            rc = qd_artifact_unpack_linear(a, l, (qd_linear_kind)kind, &q, &plain, err);
            if (rc != QD_OK || plain || !q.codes) {
                qd_qlinear_free(&q);
                continue;
            }
            char prefix[256], name[272];
            rc = qd_linear_path(prefix, sizeof prefix, l, (qd_linear_kind)kind, err);
            size_t numel = (size_t)q.n * (size_t)q.k;
            float *w = rc == QD_OK ? malloc(numel * sizeof *w) : NULL;
            if (rc == QD_OK && !w) rc = qd_error_set(err, QD_ERR_NOMEM, "%s: out of memory", prefix);
            if (rc == QD_OK) {
                qd_qlinear_dequant(&q, w);
                if (q.pre_scale)
                    for (size_t r = 0; r < (size_t)q.n; r++)
                        for (size_t c = 0; c < (size_t)q.k; c++)
                            w[r * (size_t)q.k + c] *= q.pre_scale[c];
            }
            /* w is f32; data is what gets written (w itself, or w converted). */
            qd_dtype out_type = (dtype == QD_DTYPE_COUNT) ? QD_DTYPE_F32 : dtype;
            void *data = w;
            if (rc == QD_OK && out_type != QD_DTYPE_F32) {
                data = malloc(numel * qd_dtype_size(out_type));
                if (!data) rc = qd_error_set(err, QD_ERR_NOMEM, "%s: out of memory", prefix);
                if (rc == QD_OK) rc = qd_convert(out_type, data, QD_DTYPE_F32, w, numel, err);
                free(w);
            }
            if (rc == QD_OK) {
                snprintf(name, sizeof name, "%s.weight", prefix);
                size_t i = d->n++;
                d->data[i] = data; /* owned by d from here on */
                d->prefixes[i] = strdup(prefix);
                d->names[i] = strdup(name);
                d->dtypes[i] = out_type;
                d->shapes[i][0] = q.n;
                d->shapes[i][1] = q.k;
                if (!d->prefixes[i] || !d->names[i])
                    rc = qd_error_set(err, QD_ERR_NOMEM, "out of memory");
            } else {
                free(data);
            }
            qd_qlinear_free(&q);
        }
    }
    qd_artifact_free(a);
    return rc;
}

static int convert(const char *src, const char *out, qd_dtype dtype, int shards,
                   bool dequantize) {
    qd_error err = {0};
    qd_llama_config cfg;
    qd_st_model *m = NULL;
    qd_st_writer *w = NULL;
    void **bufs = NULL;
    deq_set deq = {0};
    char staging[PATH_MAX];
    int staged = 0;
    qd_err rc;

    if (qd_is_dir(out) || qd_is_file(out)) {
        fprintf(stderr, "quantd convert: %s already exists; choose a new output path\n", out);
        return 1;
    }
    rc = qd_llama_config_load(src, &cfg, &err);
    if (rc == QD_OK) rc = qd_st_model_open(src, &m, &err);
    if (rc == QD_OK && dequantize) {
        rc = dequantize_linears(src, dtype, &deq, &err);
        if (rc == QD_OK && deq.n == 0)
            rc = qd_error_set(&err, QD_ERR_INVALID_ARG,
                              "--dequantize: %s holds no packed linear (a float model?)", src);
    }
    if (rc == QD_OK && shards > (int)qd_st_model_count(m))
        rc = qd_error_set(&err, QD_ERR_INVALID_ARG, "--shards %d: the model has only %zu tensors",
                          shards, qd_st_model_count(m));
    if (rc == QD_OK) {
        int n = snprintf(staging, sizeof staging, "%s.staging-%ld", out, (long)getpid());
        if (n < 0 || (size_t)n >= sizeof staging)
            rc = qd_error_set(&err, QD_ERR_TOO_LARGE, "%s: path too long", out);
    }
    if (rc == QD_OK) rc = qd_remove_tree(staging, &err);
    if (rc == QD_OK) rc = qd_mkdir_p(staging, 0755, &err);
    if (rc == QD_OK) staged = 1;
    if (rc == QD_OK && !(w = qd_st_writer_new()))
        rc = qd_error_set(&err, QD_ERR_NOMEM, "out of memory");
    if (rc == QD_OK) rc = collect_tensors(m, dtype, w, &bufs, deq.prefixes, deq.n, &err);
    for (size_t i = 0; rc == QD_OK && i < deq.n; i++)
        rc = qd_st_writer_add(w, deq.names[i], deq.dtypes[i], 2, deq.shapes[i], deq.data[i],
                              &err);
    if (rc == QD_OK && shards > 1) rc = qd_st_write_model_shards(w, staging, shards, &err);
    if (rc == QD_OK && shards <= 1) rc = qd_st_write_model(w, staging, 0, NULL, &err);
    if (rc == QD_OK) rc = write_config(src, staging, dtype, dequantize, &err);
    if (rc == QD_OK) rc = copy_side_files(src, staging, dequantize, &err);
    if (rc == QD_OK) rc = qd_fsync_dir(staging, &err);
    if (rc == QD_OK && rename(staging, out) != 0)
        rc = qd_error_set(&err, QD_ERR_IO, "%s: rename failed: %s", out, strerror(errno));
    if (rc == QD_OK) {
        staged = 0;
        rc = qd_fsync_dir(out, &err);
    }

    size_t deq_n = deq.n;
    if (bufs)
        for (size_t i = 0; i < qd_st_model_count(m); i++) free(bufs[i]);
    free(bufs);
    deq_set_free(&deq);
    qd_st_writer_free(w);
    qd_st_model_close(m);
    if (staged) {
        qd_error ignore = {0};
        qd_remove_tree(staging, &ignore);
    }
    if (rc != QD_OK) {
        fprintf(stderr, "quantd convert: %s\n", qd_error_text(&err));
        return 1;
    }
    printf("wrote %s (%s, %d shard%s", out,
           dtype == QD_DTYPE_COUNT ? "dtypes kept" : qd_dtype_torch_name(dtype),
           shards > 1 ? shards : 1, shards > 1 ? "s" : "");
    if (dequantize) printf(", %zu linears dequantized", deq_n);
    printf(")\n");
    return 0;
}

int qd_cmd_convert(int argc, char **argv) {
    const char *src = NULL, *out = NULL;
    qd_dtype dtype = QD_DTYPE_COUNT;
    int shards = 1;
    bool dequantize = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            convert_usage(stdout);
            return 0;
        } else if (strcmp(a, "-o") == 0 || strcmp(a, "--output") == 0) {
            if (++i >= argc) goto missing;
            out = argv[i];
        } else if (strcmp(a, "--dtype") == 0) {
            if (++i >= argc) goto missing;
            /* The short names the help gives, then torch's spellings (float32, bf16, ...). */
            if (strcmp(argv[i], "f32") == 0) dtype = QD_DTYPE_F32;
            else if (strcmp(argv[i], "f16") == 0) dtype = QD_DTYPE_F16;
            else dtype = qd_dtype_from_torch(argv[i]);
            if (dtype != QD_DTYPE_F32 && dtype != QD_DTYPE_F16 && dtype != QD_DTYPE_BF16) {
                fprintf(stderr, "quantd convert: --dtype '%s': expected f32, f16 or bf16\n",
                        argv[i]);
                return 2;
            }
        } else if (strcmp(a, "--dequantize") == 0) {
            dequantize = true;
        } else if (strcmp(a, "--shards") == 0) {
            if (++i >= argc) goto missing;
            char *end;
            errno = 0;
            long v = strtol(argv[i], &end, 10);
            if (errno || end == argv[i] || *end || v < 1 || v > 99999) {
                fprintf(stderr, "quantd convert: --shards '%s': expected 1..99999\n", argv[i]);
                return 2;
            }
            shards = (int)v;
        } else if (a[0] == '-') {
            fprintf(stderr, "quantd convert: unknown option '%s'\n", a);
            convert_usage(stderr);
            return 2;
        } else if (!src) {
            src = a;
        } else {
            fprintf(stderr, "quantd convert: unexpected argument '%s'\n", a);
            return 2;
        }
        continue;
    missing:
        fprintf(stderr, "quantd convert: option '%s' needs a value\n", a);
        return 2;
    }
    if (!src || !out) {
        convert_usage(stderr);
        return 2;
    }
    return convert(src, out, dtype, shards, dequantize);
}
