/*
 * dtype.c - bulk conversion between the floating-point element types (F64, F32, F16, BF16,
 * F8_E4M3), built on the scalar conversions in dtype.h.
 *
 * DESIGN. Every conversion goes through fp32: a chunk of the source is widened into a small
 * float buffer on the stack, then narrowed into the destination. That keeps one loop per
 * dtype on each side (5 + 5) instead of one per pair (25), and each loop has no per-element
 * dtype switch. Elements are read and written with memcpy, so src and dst need no alignment
 * (safetensors data in an mmap is only guaranteed byte-aligned at arbitrary offsets).
 */
#include "dtype.h"

#include <stdint.h>
#include <string.h>

/* Elements per chunk: 1 KiB of floats, small enough for any stack, big enough to amortise. */
#define CONVERT_CHUNK 256

static bool convert_supported(qd_dtype t) {
    switch (t) {
    case QD_DTYPE_F64:
    case QD_DTYPE_F32:
    case QD_DTYPE_F16:
    case QD_DTYPE_BF16:
    case QD_DTYPE_F8_E4M3:
        return true;
    default:
        return false;
    }
}

static const char *dtype_label(qd_dtype t) {
    const char *name = qd_dtype_name(t);
    return name ? name : "(invalid dtype)";
}

/* n elements of type t at src (byte-addressed, unaligned) -> fp32 in out. */
static void load_fp32(float *out, qd_dtype t, const unsigned char *src, size_t n) {
    switch (t) {
    case QD_DTYPE_F64:
        for (size_t i = 0; i < n; i++) {
            double d;
            memcpy(&d, src + i * sizeof d, sizeof d);
            out[i] = (float)d;
        }
        break;
    case QD_DTYPE_F32:
        memcpy(out, src, n * sizeof *out);
        break;
    case QD_DTYPE_F16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, src + i * sizeof h, sizeof h);
            out[i] = qd_fp16_to_fp32(h);
        }
        break;
    case QD_DTYPE_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, src + i * sizeof h, sizeof h);
            out[i] = qd_bf16_to_fp32(h);
        }
        break;
    case QD_DTYPE_F8_E4M3:
        for (size_t i = 0; i < n; i++) out[i] = qd_e4m3_to_fp32(src[i]);
        break;
    default: /* rejected by qd_convert before any data is touched */
        break;
    }
}

/* fp32 in `in` -> n elements of type t at dst (byte-addressed, unaligned). */
static void store_fp32(unsigned char *dst, qd_dtype t, const float *in, size_t n) {
    switch (t) {
    case QD_DTYPE_F64:
        for (size_t i = 0; i < n; i++) {
            double d = (double)in[i];
            memcpy(dst + i * sizeof d, &d, sizeof d);
        }
        break;
    case QD_DTYPE_F32:
        memcpy(dst, in, n * sizeof *in);
        break;
    case QD_DTYPE_F16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h = qd_fp32_to_fp16(in[i]);
            memcpy(dst + i * sizeof h, &h, sizeof h);
        }
        break;
    case QD_DTYPE_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h = qd_fp32_to_bf16(in[i]);
            memcpy(dst + i * sizeof h, &h, sizeof h);
        }
        break;
    case QD_DTYPE_F8_E4M3:
        for (size_t i = 0; i < n; i++) dst[i] = qd_fp32_to_e4m3(in[i]);
        break;
    default:
        break;
    }
}

qd_err qd_convert(qd_dtype dst_type, void *dst, qd_dtype src_type, const void *src, size_t n,
                  qd_error *err) {
    if (!convert_supported(src_type) || !convert_supported(dst_type))
        return qd_error_set(err, QD_ERR_UNSUPPORTED,
                            "convert %s -> %s: only F64, F32, F16, BF16 and F8_E4M3 are "
                            "supported", dtype_label(src_type), dtype_label(dst_type));
    size_t src_size = qd_dtype_size(src_type), dst_size = qd_dtype_size(dst_type);
    size_t max_size = src_size > dst_size ? src_size : dst_size;
    if (n > SIZE_MAX / max_size)
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "convert %s -> %s: %zu elements overflow the address space",
                            dtype_label(src_type), dtype_label(dst_type), n);
    if (n == 0) return QD_OK;
    if (!dst || !src)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "convert %s -> %s: NULL %s buffer",
                            dtype_label(src_type), dtype_label(dst_type),
                            dst ? "source" : "destination");

    if (src_type == dst_type) {
        memmove(dst, src, n * src_size);
        return QD_OK;
    }

    const unsigned char *s = src;
    unsigned char *d = dst;
    float buf[CONVERT_CHUNK];
    while (n > 0) {
        size_t k = n < CONVERT_CHUNK ? n : CONVERT_CHUNK;
        load_fp32(buf, src_type, s, k);
        store_fp32(d, dst_type, buf, k);
        s += k * src_size;
        d += k * dst_size;
        n -= k;
    }
    return QD_OK;
}

qd_err qd_tensor_convert(const qd_tensor *src, qd_dtype dst_type, qd_tensor *out,
                         qd_error *err) {
    if (!src || !out)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "tensor_convert: NULL tensor");
    if (!convert_supported(src->dtype) || !convert_supported(dst_type))
        return qd_error_set(err, QD_ERR_UNSUPPORTED,
                            "tensor_convert %s -> %s: only F64, F32, F16, BF16 and F8_E4M3 "
                            "are supported", dtype_label(src->dtype), dtype_label(dst_type));
    if (src->ndim < 0 || src->ndim > QD_MAX_DIMS)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "tensor_convert: ndim %d out of range 0..%d",
                            src->ndim, QD_MAX_DIMS);
    if (!qd_tensor_is_contiguous(src)) {
        char shape[128];
        return qd_error_set(err, QD_ERR_UNSUPPORTED,
                            "tensor_convert %s -> %s: tensor %s is not contiguous",
                            dtype_label(src->dtype), dtype_label(dst_type),
                            qd_shape_str(src->ndim, src->shape, shape, sizeof shape));
    }

    /* qd_tensor_alloc validates the shape (ndim range, negative dims, byte-size overflow). */
    qd_tensor t;
    qd_err rc = qd_tensor_alloc(&t, dst_type, src->ndim, src->shape, err);
    if (rc != QD_OK) return rc;
    rc = qd_convert(dst_type, t.data, src->dtype, src->data, (size_t)qd_tensor_numel(&t), err);
    if (rc != QD_OK) {
        qd_tensor_free(&t);
        return rc;
    }
    *out = t;
    return QD_OK;
}
