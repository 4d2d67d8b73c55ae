/*
 * st-dump.c - list or copy safetensors files with quantd's reader and writer.
 *
 *   st-dump FILE_OR_MODEL_DIR
 *       One line per tensor, in file order (a model directory: shard order, then header
 *       order), four tab-separated fields:
 *           name <TAB> dtype <TAB> [d0, d1, ...] <TAB> sha256 of the tensor's bytes (hex)
 *       A tab, newline or backslash in a name is written as \t, \n, \\.
 *
 *   st-dump --copy SRC DST [--dtype F32|F16|BF16] [--shards N]
 *       Write a copy of SRC (file or model directory) with quantd's writer, metadata
 *       included. --dtype converts the floating-point tensors (F64, F32, F16, BF16) to that
 *       dtype; other tensors are copied as they are. Without --shards DST is a file; with
 *       --shards N, DST is a model directory (created if needed) split into exactly N shards
 *       (N = 1: DST/model.safetensors).
 *
 * The Python interop test uses both directions: it checks the listing against what the
 * reference implementation computes, and loads the copies with the reference reader.
 * Exit status: 0 success, 1 an error (message on stderr), 2 bad usage.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "dtype.h"
#include "fsutil.h"
#include "safetensors.h"

/* Either one file or a model directory, with the entries in order. */
typedef struct source {
    qd_st_file *file;
    qd_st_model *model;
} source;

static qd_err source_open(source *s, const char *path, qd_error *err) {
    memset(s, 0, sizeof *s);
    if (qd_is_dir(path)) return qd_st_model_open(path, &s->model, err);
    return qd_st_open(path, &s->file, err);
}

static size_t source_count(const source *s) {
    return s->model ? qd_st_model_count(s->model) : qd_st_count(s->file);
}

static const qd_st_entry *source_get(const source *s, size_t i) {
    return s->model ? qd_st_model_get(s->model, i) : qd_st_get(s->file, i);
}

/* Metadata comes from the single file, or from a model's first shard. */
static const qd_st_file *source_meta(const source *s) {
    return s->model ? qd_st_model_shard(s->model, 0) : s->file;
}

static void source_close(source *s) {
    qd_st_close(s->file);
    qd_st_model_close(s->model);
}

/* sha256 of len bytes as 64 hex digits into hex[65]. */
static qd_err sha256_hex(const void *data, size_t len, char hex[65], qd_error *err) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1 &&
             EVP_DigestUpdate(ctx, data, len) == 1 && EVP_DigestFinal_ex(ctx, md, &md_len) == 1 &&
             md_len == 32;
    EVP_MD_CTX_free(ctx);
    if (!ok) return qd_error_set(err, QD_ERR_INTERNAL, "sha256 failed");
    for (unsigned i = 0; i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", md[i]);
    return QD_OK;
}

static void print_name(const char *s) {
    for (; *s; s++) {
        if (*s == '\t') fputs("\\t", stdout);
        else if (*s == '\n') fputs("\\n", stdout);
        else if (*s == '\\') fputs("\\\\", stdout);
        else putchar(*s);
    }
}

static qd_err dump(const char *path, qd_error *err) {
    source s;
    qd_err rc = source_open(&s, path, err);
    if (rc != QD_OK) return rc;
    for (size_t i = 0; i < source_count(&s) && rc == QD_OK; i++) {
        const qd_st_entry *e = source_get(&s, i);
        char hex[65], shape[256];
        rc = sha256_hex(e->data, (size_t)(e->end - e->begin), hex, err);
        if (rc != QD_OK) break;
        print_name(e->name);
        printf("\t%s\t%s\t%s\n", qd_dtype_name(e->dtype),
               qd_shape_str(e->ndim, e->shape, shape, sizeof shape), hex);
    }
    source_close(&s);
    if (rc == QD_OK && (fflush(stdout) != 0 || ferror(stdout)))
        rc = qd_error_set(err, QD_ERR_IO, "stdout: write failed");
    return rc;
}

static int is_float(qd_dtype t) {
    return t == QD_DTYPE_F64 || t == QD_DTYPE_F32 || t == QD_DTYPE_F16 || t == QD_DTYPE_BF16;
}

/* Copy src to dst (a file, or a directory of n_shards shards when n_shards > 0). */
static qd_err copy(const char *src, const char *dst, qd_dtype to, int n_shards, qd_error *err) {
    source s;
    qd_err rc = source_open(&s, src, err);
    if (rc != QD_OK) return rc;
    size_t n = source_count(&s);
    void **bufs = calloc(n ? n : 1, sizeof *bufs); /* converted copies, freed at the end */
    qd_st_writer *w = qd_st_writer_new();
    if (!bufs || !w) rc = qd_error_set(err, QD_ERR_NOMEM, "out of memory");
    const qd_st_file *meta = source_meta(&s);
    for (size_t i = 0; rc == QD_OK && i < qd_st_metadata_count(meta); i++) {
        const char *v;
        const char *k = qd_st_metadata_get(meta, i, &v);
        rc = qd_st_writer_set_metadata(w, k, v, err);
    }
    for (size_t i = 0; rc == QD_OK && i < n; i++) {
        const qd_st_entry *e = source_get(&s, i);
        const void *data = e->data;
        qd_dtype dt = e->dtype;
        if (to != QD_DTYPE_COUNT && is_float(dt) && dt != to) {
            size_t numel = (size_t)(e->end - e->begin) / qd_dtype_size(dt);
            bufs[i] = malloc(numel ? numel * qd_dtype_size(to) : 1);
            if (!bufs[i]) {
                rc = qd_error_set(err, QD_ERR_NOMEM, "tensor '%s': out of memory", e->name);
                break;
            }
            rc = qd_convert(to, bufs[i], dt, data, numel, err);
            data = bufs[i];
            dt = to;
        }
        if (rc == QD_OK) rc = qd_st_writer_add(w, e->name, dt, e->ndim, e->shape, data, err);
    }
    if (rc == QD_OK && n_shards > 0) {
        rc = qd_mkdir_p(dst, 0755, err);
        if (rc == QD_OK) rc = qd_st_write_model_shards(w, dst, n_shards, err);
    } else if (rc == QD_OK) {
        rc = qd_st_write_file(w, dst, err);
    }
    qd_st_writer_free(w);
    for (size_t i = 0; bufs && i < n; i++) free(bufs[i]);
    free(bufs);
    source_close(&s);
    return rc;
}

/* A whole decimal argument in [1, INT_MAX]. */
static int parse_count(const char *s, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < 1 || v > INT_MAX) return -1;
    *out = (int)v;
    return 0;
}

static int usage(void) {
    fprintf(stderr, "usage: st-dump FILE_OR_MODEL_DIR\n"
                    "       st-dump --copy SRC DST [--dtype F32|F16|BF16] [--shards N]\n");
    return 2;
}

int main(int argc, char **argv) {
    qd_error err = {0};
    qd_err rc;
    if (argc == 2 && argv[1][0] != '-') {
        rc = dump(argv[1], &err);
    } else if (argc >= 4 && strcmp(argv[1], "--copy") == 0) {
        qd_dtype to = QD_DTYPE_COUNT;
        int shards = 0;
        for (int i = 4; i < argc; i += 2) {
            if (i + 1 >= argc) return usage();
            if (strcmp(argv[i], "--dtype") == 0) {
                to = qd_dtype_from_name(argv[i + 1]);
                if (to != QD_DTYPE_F32 && to != QD_DTYPE_F16 && to != QD_DTYPE_BF16)
                    return usage();
            } else if (strcmp(argv[i], "--shards") == 0) {
                if (parse_count(argv[i + 1], &shards) != 0) return usage();
            } else {
                return usage();
            }
        }
        rc = copy(argv[2], argv[3], to, shards, &err);
    } else {
        return usage();
    }
    if (rc != QD_OK) {
        fprintf(stderr, "st-dump: %s: %s\n", qd_err_name(rc), qd_error_text(&err));
        return 1;
    }
    return 0;
}
