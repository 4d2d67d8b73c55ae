/*
 * format_internal.h - helpers shared by the format packers in formats/; not a public header.
 *
 * What every packer needs the same way: appending named tensors to a qd_packed_list, storing
 * and loading fp16/bf16/fp32 scales, validating a qd_qlinear against the spec before packing
 * (codes in range, integer zeros, the symmetric zero, g_idx), fetching and shape-checking
 * tensors while unpacking (hostile input), and small jansson builders.
 *
 * The functions are `static inline` in this header so that each format file stays a single
 * translation unit of its own (the build lists one source per format family); unused ones
 * cost nothing.
 *
 * Conventions: index arithmetic is done in size_t (N * K exceeds INT_MAX for large layers);
 * data reached through an unpack lookup may sit at any alignment inside a mapped file, so it
 * is read with memcpy, never through a cast pointer.
 */
#ifndef QD_FORMAT_INTERNAL_H
#define QD_FORMAT_INTERNAL_H

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dtype.h"
#include "format.h"

/* Largest N or K a file may declare, and largest N * K: far above any real linear layer
 * (Llama-3 405B's largest is 53248 x 16384 = 0.87e9), small enough that no size computed
 * from them overflows. */
#define FMT_MAX_DIM (1 << 22)
#define FMT_MAX_ELEMS ((int64_t)1 << 34)

#define FMT_BIT(d) (1u << (unsigned)(d))
#define FMT_FLOATS (FMT_BIT(QD_DTYPE_F16) | FMT_BIT(QD_DTYPE_BF16) | FMT_BIT(QD_DTYPE_F32))

/* ---- small arithmetic ------------------------------------------------------------------------ */

/* Columns per group as the layout sees it: G, or k for per-channel (G <= 0 or G >= k). */
static inline int fmt_group(int group_size, int k) {
    return (group_size <= 0 || group_size >= k) ? k : group_size;
}

static inline int fmt_cdiv(int a, int b) {
    return (a + b - 1) / b;
}

/* The unsigned-domain zero of a symmetric b-bit format. */
static inline int fmt_sym_zero(int bits) {
    return 1 << (bits - 1);
}

/* Unaligned little-endian loads from unpack views. */
static inline uint32_t fmt_ld_u32(const void *base, size_t i) {
    uint32_t v;
    memcpy(&v, (const char *)base + i * 4, 4);
    return v;
}

static inline int32_t fmt_ld_i32(const void *base, size_t i) {
    int32_t v;
    memcpy(&v, (const char *)base + i * 4, 4);
    return v;
}

static inline int64_t fmt_ld_i64(const void *base, size_t i) {
    int64_t v;
    memcpy(&v, (const char *)base + i * 8, 8);
    return v;
}

/* ---- float storage --------------------------------------------------------------------------- */

/* Store v rounded to dt (F16, BF16 or F32; round to nearest even) at element i of buf.
 * Returns false when the stored value is not finite (overflow, NaN). */
static inline bool fmt_put_float(qd_dtype dt, void *buf, size_t i, float v) {
    switch (dt) {
    case QD_DTYPE_F16: {
        uint16_t h = qd_fp32_to_fp16(v);
        memcpy((char *)buf + i * 2, &h, 2);
        return isfinite(qd_fp16_to_fp32(h));
    }
    case QD_DTYPE_BF16: {
        uint16_t h = qd_fp32_to_bf16(v);
        memcpy((char *)buf + i * 2, &h, 2);
        return isfinite(qd_bf16_to_fp32(h));
    }
    case QD_DTYPE_F32:
        memcpy((char *)buf + i * 4, &v, 4);
        return isfinite(v);
    default:
        return false;
    }
}

/* Element i of a F16/BF16/F32 buffer, exactly, as fp32 (NaN for any other dtype). */
static inline float fmt_get_float(qd_dtype dt, const void *buf, size_t i) {
    uint16_t h;
    float f;
    switch (dt) {
    case QD_DTYPE_F16:
        memcpy(&h, (const char *)buf + i * 2, 2);
        return qd_fp16_to_fp32(h);
    case QD_DTYPE_BF16:
        memcpy(&h, (const char *)buf + i * 2, 2);
        return qd_bf16_to_fp32(h);
    case QD_DTYPE_F32:
        memcpy(&f, (const char *)buf + i * 4, 4);
        return f;
    default:
        return NAN;
    }
}

/* ---- building a packed list ------------------------------------------------------------------ */

/* buf = prefix + "." + suffix (or suffix alone for an empty prefix); false when too long. */
static inline bool fmt_join(char buf[QD_PACKED_NAME_MAX], const char *prefix,
                            const char *suffix) {
    size_t lp = prefix ? strlen(prefix) : 0, ls = strlen(suffix);
    size_t need = lp + (lp ? 1 : 0) + ls + 1;
    if (need > QD_PACKED_NAME_MAX) return false;
    char *o = buf;
    if (lp) {
        memcpy(o, prefix, lp);
        o += lp;
        *o++ = '.';
    }
    memcpy(o, suffix, ls + 1);
    return true;
}

/*
 * Append a zero-filled, owned tensor prefix.suffix of dtype dt and the given shape to l;
 * *ret_data points at its data (owned by l). Errors: QD_ERR_INVALID_ARG (name too long,
 * duplicate name, bad shape), QD_ERR_NOMEM. On error l is unchanged.
 */
static inline qd_err fmt_add(qd_packed_list *l, const char *fmt, const char *prefix,
                             const char *suffix, qd_dtype dt, int ndim, const int64_t *shape,
                             void **ret_data, qd_error *err) {
    qd_packed_tensor t;
    memset(&t, 0, sizeof t);
    if (!fmt_join(t.name, prefix, suffix))
        return qd_error_set(err, QD_ERR_INVALID_ARG, "%s: tensor name '%s.%s' is longer than %d "
                            "bytes", fmt, prefix ? prefix : "", suffix, QD_PACKED_NAME_MAX - 1);
    if (qd_packed_list_find(l, t.name))
        return qd_error_set(err, QD_ERR_INVALID_ARG, "%s: tensor '%s' is already in the list",
                            fmt, t.name);
    uint64_t nb = 0;
    if (ndim < 0 || ndim > QD_PACKED_MAX_DIMS || !qd_shape_nbytes(dt, ndim, shape, &nb) ||
        nb > (uint64_t)SIZE_MAX / 2)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "%s: tensor '%s' has an invalid shape",
                            fmt, t.name);
    if (l->n == l->cap) {
        int cap = l->cap ? l->cap * 2 : 16;
        qd_packed_tensor *items = realloc(l->items, (size_t)cap * sizeof *items);
        if (!items)
            return qd_error_set(err, QD_ERR_NOMEM, "%s: no memory for the tensor list", fmt);
        l->items = items;
        l->cap = cap;
    }
    t.data = calloc(1, nb ? (size_t)nb : 1);
    if (!t.data)
        return qd_error_set(err, QD_ERR_NOMEM, "%s: no memory for tensor '%s' (%llu bytes)",
                            fmt, t.name, (unsigned long long)nb);
    t.dtype = dt;
    t.ndim = ndim;
    for (int d = 0; d < ndim; d++) t.shape[d] = shape[d];
    t.nbytes = (size_t)nb;
    l->items[l->n++] = t;
    *ret_data = t.data;
    return QD_OK;
}

/* Drop (and free) every tensor appended after the first n0: a failed pack's cleanup. */
static inline void fmt_truncate(qd_packed_list *l, int n0) {
    while (l->n > n0) free(l->items[--l->n].data);
}

/* Append prefix.bias [n] in dt when q has a bias. */
static inline qd_err fmt_add_bias(qd_packed_list *l, const char *fmt, const char *prefix,
                                  qd_dtype dt, const qd_qlinear *q, qd_error *err) {
    if (!q->bias) return QD_OK;
    int64_t shape[1] = {q->n};
    void *d;
    qd_err rc = fmt_add(l, fmt, prefix, "bias", dt, 1, shape, &d, err);
    if (rc) return rc;
    for (int i = 0; i < q->n; i++)
        if (!fmt_put_float(dt, d, (size_t)i, q->bias[i]))
            return qd_error_set(err, QD_ERR_INVALID_ARG, "%s: layer '%s': bias[%d] = %g is not "
                                "finite in %s", fmt, prefix, i, (double)q->bias[i],
                                qd_dtype_name(dt));
    return QD_OK;
}

/* ---- checking a spec and a qlinear before packing -------------------------------------------- */

/* Spec sanity every format shares; QD_ERR_INVALID_ARG. */
static inline qd_err fmt_check_params(const char *fmt, const qd_format_params *p,
                                      qd_error *err) {
    if (!p) return qd_error_set(err, QD_ERR_INVALID_ARG, "%s: no format parameters", fmt);
    if (p->type != QD_QTYPE_INT && p->type != QD_QTYPE_FP8_E4M3)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "%s: unknown weight type %d", fmt,
                            (int)p->type);
    if (p->type == QD_QTYPE_INT && (p->bits < 2 || p->bits > 8))
        return qd_error_set(err, QD_ERR_INVALID_ARG, "%s: integer bits must be 2..8 (got %d)",
                            fmt, p->bits);
    if (p->type == QD_QTYPE_FP8_E4M3 && p->bits != 8)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "%s: fp8 e4m3 weights have 8 bits (got %d)",
                            fmt, p->bits);
    if ((int)p->act < 0 || p->act >= QD_FORMAT_ACT_COUNT)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "%s: unknown activation quantization %d",
                            fmt, (int)p->act);
    if (p->dtype != QD_DTYPE_F16 && p->dtype != QD_DTYPE_BF16 && p->dtype != QD_DTYPE_F32)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "%s: model dtype must be F16, BF16 or F32 "
                            "(got %s)", fmt, qd_dtype_name(p->dtype) ? qd_dtype_name(p->dtype)
                                                                     : "an unknown dtype");
    if (p->n_ignore < 0 || p->n_ignore > QD_FORMAT_MAX_IGNORE || (p->n_ignore && !p->ignore))
        return qd_error_set(err, QD_ERR_INVALID_ARG, "%s: ignore list of %d names is invalid",
                            fmt, p->n_ignore);
    for (int i = 0; i < p->n_ignore; i++) {
        json_t *js = p->ignore[i] ? json_string(p->ignore[i]) : NULL;
        if (!js)
            return qd_error_set(err, QD_ERR_INVALID_ARG, "%s: ignore[%d] is not a UTF-8 string",
                                fmt, i);
        json_decref(js);
    }
    return QD_OK;
}

/* Activation quantization with a stored per-tensor scale. */
static inline bool fmt_act_static(qd_format_act a) {
    return a == QD_FORMAT_ACT_INT8_TENSOR || a == QD_FORMAT_ACT_FP8_TENSOR;
}

/* What a format has tensors for, beyond codes/scales/zeros/bias (fmt_check_q flags). */
enum {
    FMT_TAKES_G_IDX = 1 << 0,     /* non-contiguous groups (act-order g_idx) */
    FMT_TAKES_PRE_SCALE = 1 << 1, /* an activation pre-scale [K] */
    FMT_TAKES_WS2 = 1 << 2,       /* a second-level weight scale (W4A8) */
};

/* True when column c's group is c / g for every column (g_idx NULL counts). */
static inline bool fmt_g_idx_sequential(const qd_qlinear *q, int g) {
    if (!q->g_idx) return true;
    for (int c = 0; c < q->k; c++)
        if (q->g_idx[c] != c / g) return false;
    return true;
}

/*
 * Validate q against the spec and the layout's needs before packing:
 *   - shape 1..FMT_MAX_DIM, arrays present, type / bits / groups as the spec says;
 *   - int: codes <= 2^b - 1; zeros integers in [zero_lo, zero_hi]; symmetric: all 2^(b-1);
 *   - scales finite; g_idx values in range, and non-contiguous groups only where the format
 *     and the spec (act_order without static groups) both allow them;
 *   - act_scale present exactly when the spec quantizes activations statically, finite > 0;
 *     weight_scale_2 and pre_scale only where the format stores them.
 * QD_ERR_INVALID_ARG naming the layer (prefix) and the element.
 */
static inline qd_err fmt_check_q(const char *fmt, const qd_format_params *p,
                                 const qd_qlinear *q, const char *prefix, int zero_lo,
                                 int zero_hi, unsigned takes, qd_error *err) {
    const char *lay = prefix && *prefix ? prefix : "(unnamed)";
    if (!q || !q->codes || !q->scales)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "%s: layer '%s' has no codes or scales",
                            fmt, lay);
    if (q->n < 1 || q->k < 1 || q->n > FMT_MAX_DIM || q->k > FMT_MAX_DIM)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "%s: layer '%s' has shape [%d, %d]", fmt,
                            lay, q->n, q->k);
    if (q->type != p->type || q->bits != p->bits)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "%s: layer '%s' is %s %d-bit but the spec "
                            "says %s %d-bit", fmt, lay, q->type == QD_QTYPE_INT ? "int" : "fp8",
                            q->bits, p->type == QD_QTYPE_INT ? "int" : "fp8", p->bits);
    int g = fmt_group(p->group_size, q->k);
    if (fmt_group(q->group_size, q->k) != g || q->n_groups != fmt_cdiv(q->k, g))
        return qd_error_set(err, QD_ERR_INVALID_ARG, "%s: layer '%s' has group_size %d "
                            "(%d groups) but the spec says %d", fmt, lay, q->group_size,
                            q->n_groups, p->group_size);
    size_t ng = (size_t)q->n_groups;
    if (q->type == QD_QTYPE_INT) {
        int qmax = (1 << q->bits) - 1;
        if (!q->zeros)
            return qd_error_set(err, QD_ERR_INVALID_ARG, "%s: layer '%s' has no zero points",
                                fmt, lay);
        size_t nk = (size_t)q->n * (size_t)q->k;
        for (size_t i = 0; i < nk; i++)
            if (q->codes[i] > qmax)
                return qd_error_set(err, QD_ERR_INVALID_ARG, "%s: layer '%s': code %d at row "
                                    "%zu column %zu exceeds %d-bit", fmt, lay, q->codes[i],
                                    i / (size_t)q->k, i % (size_t)q->k, q->bits);
        for (size_t i = 0; i < (size_t)q->n * ng; i++) {
            float z = q->zeros[i];
            if (!(z == floorf(z)))
                return qd_error_set(err, QD_ERR_INVALID_ARG, "%s: layer '%s': zero point %g at "
                                    "row %zu group %zu is not an integer (only DashInfer's "
                                    "InstantQuant keeps float zeros)", fmt, lay, (double)z,
                                    i / ng, i % ng);
            if (p->symmetric && z != (float)fmt_sym_zero(q->bits))
                return qd_error_set(err, QD_ERR_INVALID_ARG, "%s: layer '%s': zero point %g at "
                                    "row %zu group %zu, but a symmetric %d-bit layer has zero "
                                    "%d everywhere", fmt, lay, (double)z, i / ng, i % ng,
                                    q->bits, fmt_sym_zero(q->bits));
            if (z < (float)zero_lo || z > (float)zero_hi)
                return qd_error_set(err, QD_ERR_INVALID_ARG, "%s: layer '%s': zero point %g at "
                                    "row %zu group %zu is outside the %d..%d this format "
                                    "stores", fmt, lay, (double)z, i / ng, i % ng, zero_lo,
                                    zero_hi);
        }
    }
    for (size_t i = 0; i < (size_t)q->n * ng; i++)
        if (!isfinite(q->scales[i]))
            return qd_error_set(err, QD_ERR_INVALID_ARG, "%s: layer '%s': scale at row %zu "
                                "group %zu is not finite", fmt, lay, i / ng, i % ng);
    if (q->g_idx) {
        for (int c = 0; c < q->k; c++)
            if (q->g_idx[c] < 0 || q->g_idx[c] >= q->n_groups)
                return qd_error_set(err, QD_ERR_INVALID_ARG, "%s: layer '%s': g_idx[%d] = %d "
                                    "is outside 0..%d", fmt, lay, c, (int)q->g_idx[c],
                                    q->n_groups - 1);
        if (!fmt_g_idx_sequential(q, g)) {
            if (!(takes & FMT_TAKES_G_IDX))
                return qd_error_set(err, QD_ERR_INVALID_ARG, "%s: layer '%s' has act-order "
                                    "groups (g_idx) and the format has no g_idx tensor", fmt,
                                    lay);
            if (!p->act_order || p->static_groups)
                return qd_error_set(err, QD_ERR_INVALID_ARG, "%s: layer '%s' has act-order "
                                    "groups (g_idx) but the spec has no act-order without "
                                    "static groups", fmt, lay);
        }
    }
    if (fmt_act_static(p->act)) {
        if (!(q->act_scale > 0.0f) || !isfinite(q->act_scale))
            return qd_error_set(err, QD_ERR_INVALID_ARG, "%s: layer '%s': static activation "
                                "quantization needs a finite act_scale > 0 (got %g)", fmt, lay,
                                (double)q->act_scale);
    } else if (q->act_scale != 0.0f) {
        return qd_error_set(err, QD_ERR_INVALID_ARG, "%s: layer '%s' has an act_scale but the "
                            "spec quantizes no activations statically", fmt, lay);
    }
    if (q->weight_scale_2 != 0.0f && !(takes & FMT_TAKES_WS2))
        return qd_error_set(err, QD_ERR_INVALID_ARG, "%s: layer '%s' has a weight_scale_2 the "
                            "format has no tensor for", fmt, lay);
    if (q->pre_scale && !(takes & FMT_TAKES_PRE_SCALE))
        return qd_error_set(err, QD_ERR_INVALID_ARG, "%s: layer '%s' has a pre_scale the format "
                            "has no tensor for: fold it into the preceding norm or linear "
                            "first", fmt, lay);
    return QD_OK;
}

/* ---- reading tensors back -------------------------------------------------------------------- */

typedef struct fmt_src {
    const char *fmt;          /* format name, for messages */
    const char *prefix;       /* layer name */
    qd_format_lookup lookup;
    void *ctx;
} fmt_src;

static inline const char *fmt_dtypes_str(unsigned mask) {
    if (mask == FMT_FLOATS) return "F16/BF16/F32";
    for (int d = 0; d < QD_DTYPE_COUNT; d++)
        if (mask == FMT_BIT(d)) return qd_dtype_name((qd_dtype)d);
    return "one of its dtypes";
}

/*
 * Fetch prefix.suffix into *ret (a borrowed view). Absent: QD_ERR_NOT_FOUND when required,
 * else QD_OK with *ret_found = false. Present: the dtype must be in `dtypes` (FMT_BIT mask),
 * the view contiguous with data, ndim equal to `ndim` and each dim equal to shape[d] unless
 * shape[d] < 0 (any; read it from ret->shape). A scalar may be asked for as ndim 0, and then
 * shape [1] is accepted too (writers differ on squeezing per-tensor scales).
 */
static inline qd_err fmt_fetch(const fmt_src *s, const char *suffix, bool required,
                               unsigned dtypes, int ndim, const int64_t *shape, qd_tensor *ret,
                               bool *ret_found, qd_error *err) {
    char name[QD_PACKED_NAME_MAX];
    if (ret_found) *ret_found = false;
    if (!fmt_join(name, s->prefix, suffix))
        return qd_error_set(err, QD_ERR_INVALID_ARG, "%s: layer name '%s' is too long", s->fmt,
                            s->prefix);
    qd_tensor t;
    memset(&t, 0, sizeof t);
    if (!s->lookup(s->ctx, name, &t)) {
        if (required)
            return qd_error_set(err, QD_ERR_NOT_FOUND, "%s: tensor '%s' is missing", s->fmt,
                                name);
        return QD_OK;
    }
    if (t.ndim < 0 || t.ndim > QD_MAX_DIMS)
        return qd_error_set(err, QD_ERR_FORMAT, "%s: tensor '%s' has %d dimensions", s->fmt,
                            name, t.ndim);
    char got[96], want[96];
    qd_shape_str(t.ndim, t.shape, got, sizeof got);
    if ((int)t.dtype < 0 || t.dtype >= QD_DTYPE_COUNT || !(dtypes & FMT_BIT(t.dtype)))
        return qd_error_set(err, QD_ERR_FORMAT, "%s: tensor '%s' is %s, expected %s", s->fmt,
                            name, qd_dtype_name(t.dtype) ? qd_dtype_name(t.dtype) : "?",
                            fmt_dtypes_str(dtypes));
    bool ok = t.ndim == ndim;
    if (!ok && ndim == 0 && t.ndim == 1 && t.shape[0] == 1) ok = true; /* scalar as [1] */
    for (int d = 0; ok && d < ndim; d++)
        if (shape[d] >= 0 && t.shape[d] != shape[d]) ok = false;
    if (!ok) {
        char *o = want;
        size_t left = sizeof want;
        int w = snprintf(o, left, "[");
        for (int d = 0; d < ndim && w > 0 && (size_t)w < left; d++) {
            o += w;
            left -= (size_t)w;
            if (shape[d] >= 0)
                w = snprintf(o, left, "%s%lld", d ? ", " : "", (long long)shape[d]);
            else
                w = snprintf(o, left, "%s?", d ? ", " : "");
        }
        if (w > 0 && (size_t)w < left) snprintf(o + w, left - (size_t)w, "]");
        return qd_error_set(err, QD_ERR_FORMAT, "%s: tensor '%s' has shape %s, expected %s",
                            s->fmt, name, got, want);
    }
    if (!qd_tensor_is_contiguous(&t) || (qd_tensor_numel(&t) > 0 && !t.data))
        return qd_error_set(err, QD_ERR_FORMAT, "%s: tensor '%s' is not contiguous data", s->fmt,
                            name);
    *ret = t;
    if (ret_found) *ret_found = true;
    return QD_OK;
}

/* Check a dimension read from a file: 1..FMT_MAX_DIM. */
static inline qd_err fmt_check_dim(const fmt_src *s, const char *what, int64_t v,
                                   qd_error *err) {
    if (v < 1 || v > FMT_MAX_DIM)
        return qd_error_set(err, QD_ERR_FORMAT, "%s: layer '%s': %s %lld is outside 1..%d",
                            s->fmt, s->prefix, what, (long long)v, FMT_MAX_DIM);
    return QD_OK;
}

/* Start an unpacked layer: qd_qlinear_alloc into a zeroed *q (the caller frees it with
 * qd_qlinear_free on any later error). */
static inline qd_err fmt_new_q(const fmt_src *s, qd_qlinear *q, int n, int k, qd_qtype type,
                               int bits, int group_size, qd_qrule rule, qd_error *err) {
    memset(q, 0, sizeof *q);
    if ((int64_t)n * k > FMT_MAX_ELEMS)
        return qd_error_set(err, QD_ERR_FORMAT, "%s: layer '%s' of [%d, %d] is too large",
                            s->fmt, s->prefix, n, k);
    return qd_qlinear_alloc(q, n, k, type, bits, group_size, rule, err);
}

/*
 * Read prefix.<suffix> I32 [k] into q->g_idx: values must lie in 0..n_groups-1; when they are
 * column / group_size everywhere, q->g_idx stays NULL (the contiguous default).
 * Absent and not required: nothing to do.
 */
static inline qd_err fmt_read_g_idx(const fmt_src *s, const char *suffix, bool required,
                                    qd_qlinear *q, qd_error *err) {
    int64_t shape[1] = {q->k};
    qd_tensor t;
    bool found;
    qd_err rc = fmt_fetch(s, suffix, required, FMT_BIT(QD_DTYPE_I32), 1, shape, &t, &found, err);
    if (rc || !found) return rc;
    bool seq = true;
    for (int c = 0; c < q->k; c++) {
        int32_t v = fmt_ld_i32(t.data, (size_t)c);
        if (v < 0 || v >= q->n_groups)
            return qd_error_set(err, QD_ERR_FORMAT, "%s: tensor '%s.%s': value %d at %d is "
                                "outside 0..%d", s->fmt, s->prefix, suffix, (int)v, c,
                                q->n_groups - 1);
        if (v != c / q->group_size) seq = false;
    }
    if (seq) return QD_OK;
    q->g_idx = malloc((size_t)q->k * sizeof *q->g_idx);
    if (!q->g_idx) return qd_error_set(err, QD_ERR_NOMEM, "%s: no memory for g_idx", s->fmt);
    memcpy(q->g_idx, t.data, (size_t)q->k * sizeof *q->g_idx);
    return QD_OK;
}

/* Read the optional prefix.bias [n] (any float dtype) into q->bias. */
static inline qd_err fmt_read_bias(const fmt_src *s, qd_qlinear *q, qd_error *err) {
    int64_t shape[1] = {q->n};
    qd_tensor t;
    bool found;
    qd_err rc = fmt_fetch(s, "bias", false, FMT_FLOATS, 1, shape, &t, &found, err);
    if (rc || !found) return rc;
    q->bias = malloc((size_t)q->n * sizeof *q->bias);
    if (!q->bias) return qd_error_set(err, QD_ERR_NOMEM, "%s: no memory for bias", s->fmt);
    for (int i = 0; i < q->n; i++) q->bias[i] = fmt_get_float(t.dtype, t.data, (size_t)i);
    return QD_OK;
}

/* Read a scalar float tensor (shape [] or [1]) into *ret; absent and optional: *ret = 0. */
static inline qd_err fmt_read_scalar(const fmt_src *s, const char *suffix, bool required,
                                     float *ret, qd_error *err) {
    qd_tensor t;
    bool found;
    qd_err rc = fmt_fetch(s, suffix, required, FMT_FLOATS, 0, NULL, &t, &found, err);
    if (rc) return rc;
    *ret = found ? fmt_get_float(t.dtype, t.data, 0) : 0.0f;
    return QD_OK;
}

/* ---- json ------------------------------------------------------------------------------------ */

/* Set o[key] = v, stealing v; false when v is NULL or the set fails (out of memory). */
static inline bool fmt_jset(json_t *o, const char *key, json_t *v) {
    return v && json_object_set_new(o, key, v) == 0;
}

/* fmt_jset when ok (and o exists); otherwise only release v. Returns the new ok. For values
 * built before the chain of sets, which a short-circuited `ok && fmt_jset(...)` would leak. */
static inline bool fmt_jset_ok(bool ok, json_t *o, const char *key, json_t *v) {
    if (!ok || !o) {
        json_decref(v);
        return false;
    }
    return fmt_jset(o, key, v);
}

/* The spec's ignore list as a JSON array of strings (NULL on out of memory). */
static inline json_t *fmt_json_ignore(const qd_format_params *p) {
    json_t *a = json_array();
    for (int i = 0; a && i < p->n_ignore; i++) {
        if (json_array_append_new(a, json_string(p->ignore[i])) != 0) {
            json_decref(a);
            return NULL;
        }
    }
    return a;
}

/* Finish a builder: *ret = o when every set succeeded, else QD_ERR_NOMEM (o released). */
static inline qd_err fmt_json_done(const char *fmt, json_t *o, bool ok, json_t **ret,
                                   qd_error *err) {
    if (!o || !ok) {
        json_decref(o);
        return qd_error_set(err, QD_ERR_NOMEM, "%s: no memory for the quantization config",
                            fmt);
    }
    *ret = o;
    return QD_OK;
}

#endif /* QD_FORMAT_INTERNAL_H */
