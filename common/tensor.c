/* tensor.c - dtype table and tensor views. */
#include "tensor.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const struct {
    const char *name;
    size_t size;
    bool is_float;
} dtype_table[QD_DTYPE_COUNT] = {
#define QD_DTYPE_ROW_(id, name, size, is_float) {name, size, is_float},
    QD_DTYPE_TABLE(QD_DTYPE_ROW_)
#undef QD_DTYPE_ROW_
};

const char *qd_dtype_name(qd_dtype t) {
    return (unsigned)t < QD_DTYPE_COUNT ? dtype_table[t].name : NULL;
}

size_t qd_dtype_size(qd_dtype t) {
    return (unsigned)t < QD_DTYPE_COUNT ? dtype_table[t].size : 0;
}

bool qd_dtype_is_float(qd_dtype t) {
    return (unsigned)t < QD_DTYPE_COUNT && dtype_table[t].is_float;
}

qd_dtype qd_dtype_from_name(const char *name) {
    if (!name) return QD_DTYPE_COUNT;
    for (int i = 0; i < QD_DTYPE_COUNT; i++)
        if (strcmp(name, dtype_table[i].name) == 0) return (qd_dtype)i;
    return QD_DTYPE_COUNT;
}

static const struct {
    const char *torch;
    qd_dtype dtype;
} torch_names[] = {
    /* the first spelling of each dtype is the canonical one */
    {"float32", QD_DTYPE_F32}, {"float", QD_DTYPE_F32},    {"fp32", QD_DTYPE_F32},
    {"float16", QD_DTYPE_F16}, {"half", QD_DTYPE_F16},     {"fp16", QD_DTYPE_F16},
    {"bfloat16", QD_DTYPE_BF16}, {"bf16", QD_DTYPE_BF16},  {"float64", QD_DTYPE_F64},
    {"float8_e4m3fn", QD_DTYPE_F8_E4M3}, {"float8_e5m2", QD_DTYPE_F8_E5M2},
    {"int64", QD_DTYPE_I64},   {"int32", QD_DTYPE_I32},    {"int16", QD_DTYPE_I16},
    {"int8", QD_DTYPE_I8},     {"uint8", QD_DTYPE_U8},     {"bool", QD_DTYPE_BOOL},
};

qd_dtype qd_dtype_from_torch(const char *name) {
    if (!name) return QD_DTYPE_COUNT;
    if (strncmp(name, "torch.", 6) == 0) name += 6;
    for (size_t i = 0; i < sizeof torch_names / sizeof torch_names[0]; i++)
        if (strcasecmp(name, torch_names[i].torch) == 0) return torch_names[i].dtype;
    return QD_DTYPE_COUNT;
}

const char *qd_dtype_torch_name(qd_dtype t) {
    for (size_t i = 0; i < sizeof torch_names / sizeof torch_names[0]; i++)
        if (torch_names[i].dtype == t) return torch_names[i].torch;
    return NULL;
}

static void set_contiguous_strides(qd_tensor *t) {
    int64_t s = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        t->stride[i] = s;
        s *= t->shape[i];
    }
}

qd_tensor qd_tensor_view(qd_dtype dtype, int ndim, const int64_t *shape, void *data) {
    qd_tensor t;
    memset(&t, 0, sizeof t);
    t.dtype = dtype;
    t.ndim = ndim < 0 ? 0 : (ndim > QD_MAX_DIMS ? QD_MAX_DIMS : ndim);
    for (int i = 0; i < t.ndim; i++) t.shape[i] = shape[i];
    set_contiguous_strides(&t);
    t.data = data;
    return t;
}

bool qd_shape_nbytes(qd_dtype dtype, int ndim, const int64_t *shape, uint64_t *out_bytes) {
    uint64_t n = qd_dtype_size(dtype);
    if (n == 0 || ndim < 0 || ndim > QD_MAX_DIMS) return false;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return false;
        uint64_t d = (uint64_t)shape[i];
        if (d != 0 && n > UINT64_MAX / d) return false;
        n *= d;
    }
    *out_bytes = n;
    return true;
}

qd_err qd_tensor_alloc(qd_tensor *out, qd_dtype dtype, int ndim, const int64_t *shape,
                       qd_error *err) {
    uint64_t bytes;
    memset(out, 0, sizeof *out);
    if (!qd_shape_nbytes(dtype, ndim, shape, &bytes) || bytes > SIZE_MAX)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "tensor_alloc: invalid dtype or shape");
    void *p = calloc(1, bytes ? (size_t)bytes : 1);
    if (!p)
        return qd_error_set(err, QD_ERR_NOMEM, "tensor_alloc: cannot allocate %llu bytes",
                            (unsigned long long)bytes);
    *out = qd_tensor_view(dtype, ndim, shape, p);
    out->owned = p;
    return QD_OK;
}

void qd_tensor_free(qd_tensor *t) {
    if (!t) return;
    free(t->owned);
    memset(t, 0, sizeof *t);
}

int64_t qd_tensor_numel(const qd_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

size_t qd_tensor_nbytes(const qd_tensor *t) {
    return (size_t)qd_tensor_numel(t) * qd_dtype_size(t->dtype);
}

bool qd_tensor_is_contiguous(const qd_tensor *t) {
    int64_t s = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        if (t->shape[i] != 1 && t->stride[i] != s) return false;
        s *= t->shape[i];
    }
    return true;
}

const char *qd_shape_str(int ndim, const int64_t *shape, char *buf, size_t len) {
    size_t off = 0;
    if (len == 0) return buf;
    buf[0] = '\0';
    off += (size_t)snprintf(buf + off, len - off, "[");
    for (int i = 0; i < ndim && off < len; i++)
        off += (size_t)snprintf(buf + off, len - off, "%s%lld", i ? ", " : "",
                                (long long)shape[i]);
    if (off < len) snprintf(buf + off, len - off, "]");
    return buf;
}
