/*
 * rt-model.c - see rt-model.h.
 */
#include "rt-model.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dtype.h"
#include "fsutil.h"
#include "safetensors.h"
#include "tokenizer.h"

qd_err rt_make_tmpdir(const char *tag, char *buf, size_t len, qd_error *err) {
    int n = snprintf(buf, len, "qd-rt-%s-XXXXXX", tag);
    if (n < 0 || (size_t)n >= len) return qd_error_set(err, QD_ERR_TOO_LARGE, "tmpdir name");
    if (!mkdtemp(buf)) return qd_error_set(err, QD_ERR_IO, "mkdtemp %s failed", buf);
    return QD_OK;
}

static qd_err copy_config(const char *src, const char *dst, const rt_copy_opts *o,
                          qd_error *err) {
    char in[1024], out[1024];
    qd_err rc;
    if ((rc = qd_path_join(in, sizeof in, src, "config.json", err))) return rc;
    if ((rc = qd_path_join(out, sizeof out, dst, "config.json", err))) return rc;
    json_error_t jerr;
    json_t *root = json_load_file(in, 0, &jerr);
    if (!root) return qd_error_set(err, QD_ERR_FORMAT, "%s: %s", in, jerr.text);
    for (int i = 0; i < o->n_patch; i++) {
        json_t *v = o->patch[i].is_bool ? json_boolean(o->patch[i].value)
                                        : json_integer(o->patch[i].value);
        json_object_set_new(root, o->patch[i].key, v);
    }
    int bad = json_dump_file(root, out, JSON_INDENT(2));
    json_decref(root);
    if (bad) return qd_error_set(err, QD_ERR_IO, "cannot write %s", out);
    return QD_OK;
}

qd_err rt_copy_model(const char *src, const char *dst, const rt_copy_opts *o, qd_error *err) {
    qd_st_model *sm = NULL;
    qd_st_writer *w = NULL;
    size_t n = 0;
    void **bufs = NULL;
    qd_err rc = qd_st_model_open(src, &sm, err);
    if (rc) return rc;
    n = qd_st_model_count(sm);
    bufs = calloc(n ? n : 1, sizeof *bufs);
    w = qd_st_writer_new();
    if (!bufs || !w) {
        rc = qd_error_set(err, QD_ERR_NOMEM, "copy model");
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        const qd_st_entry *e = qd_st_model_get(sm, i);
        if (o->skip && strcmp(e->name, o->skip) == 0) continue;
        int64_t numel = 1;
        for (int d = 0; d < e->ndim; d++) numel *= e->shape[d];
        qd_dtype to = e->dtype;
        if (o->dtype != QD_DTYPE_COUNT && qd_dtype_is_float(e->dtype)) to = o->dtype;
        const void *data = e->data;
        if (o->as_i32 && strcmp(e->name, o->as_i32) == 0 && e->dtype == QD_DTYPE_F32) {
            to = QD_DTYPE_I32; /* same bytes, a dtype the runtime must refuse */
        } else if (to != e->dtype) {
            bufs[i] = malloc((size_t)(numel > 0 ? numel : 1) * qd_dtype_size(to));
            if (!bufs[i]) {
                rc = qd_error_set(err, QD_ERR_NOMEM, "copy model");
                goto done;
            }
            if ((rc = qd_convert(to, bufs[i], e->dtype, e->data, (size_t)numel, err))) goto done;
            data = bufs[i];
        }
        if ((rc = qd_st_writer_add(w, e->name, to, e->ndim, e->shape, data, err))) goto done;
    }
    if (o->n_shards > 1)
        rc = qd_st_write_model_shards(w, dst, o->n_shards, err);
    else
        rc = qd_st_write_model(w, dst, 0, NULL, err);
    if (!rc) rc = copy_config(src, dst, o, err);
done:
    for (size_t i = 0; bufs && i < n; i++) free(bufs[i]);
    free(bufs);
    qd_st_writer_free(w);
    qd_st_model_close(sm);
    return rc;
}

qd_err rt_load_tokens(const char *path, int32_t **ret, int64_t *rows, int64_t *seq_len,
                      qd_error *err) {
    return qd_token_set_load(path, 0, 0, ret, rows, seq_len, err);
}
