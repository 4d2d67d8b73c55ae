/*
 * tensor.h - element types and tensor views.
 *
 * A qd_tensor describes n-dimensional data: element type, shape and strides (in elements,
 * row-major by default). It either BORROWS its data (a view into an mmap'd safetensors file,
 * a caller's buffer) or OWNS it (allocated by qd_tensor_alloc). Ownership is explicit in the
 * `owned` field: qd_tensor_free() frees only what the tensor owns, so calling it on a view is
 * harmless. Copying the struct copies the view, never the ownership: keep one owner.
 *
 *   shape  [d0, d1, ..., d(n-1)]   d(n-1) varies fastest when contiguous
 *   stride [s0, ..., s(n-1)]       element i0..i(n-1) lives at data + sum(ik*sk) * elem_size
 */
#ifndef QD_TENSOR_H
#define QD_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Element types. The string is the safetensors dtype name. */
#define QD_DTYPE_TABLE(X)            \
    X(F64, "F64", 8, 1)              \
    X(F32, "F32", 4, 1)              \
    X(F16, "F16", 2, 1)              \
    X(BF16, "BF16", 2, 1)            \
    X(F8_E4M3, "F8_E4M3", 1, 1)      \
    X(F8_E5M2, "F8_E5M2", 1, 1)      \
    X(I64, "I64", 8, 0)              \
    X(I32, "I32", 4, 0)              \
    X(I16, "I16", 2, 0)              \
    X(I8, "I8", 1, 0)                \
    X(U64, "U64", 8, 0)              \
    X(U32, "U32", 4, 0)              \
    X(U16, "U16", 2, 0)              \
    X(U8, "U8", 1, 0)                \
    X(BOOL, "BOOL", 1, 0)

typedef enum qd_dtype {
#define QD_DTYPE_ENUM_(id, name, size, is_float) QD_DTYPE_##id,
    QD_DTYPE_TABLE(QD_DTYPE_ENUM_)
#undef QD_DTYPE_ENUM_
    QD_DTYPE_COUNT
} qd_dtype;

/* safetensors name ("F32"); NULL for an invalid dtype. */
const char *qd_dtype_name(qd_dtype t);
/* Bytes per element; 0 for an invalid dtype. */
size_t qd_dtype_size(qd_dtype t);
bool qd_dtype_is_float(qd_dtype t);
/* Parse a safetensors name. Returns QD_DTYPE_COUNT for an unknown name. */
qd_dtype qd_dtype_from_name(const char *name);
/* Parse a Hugging Face torch_dtype ("float32", "bfloat16", "float16", "fp16", ...).
 * Returns QD_DTYPE_COUNT for an unknown name. */
qd_dtype qd_dtype_from_torch(const char *name);
/* The Hugging Face torch_dtype spelling ("float32"); NULL when there is none. */
const char *qd_dtype_torch_name(qd_dtype t);

#define QD_MAX_DIMS 8

typedef struct qd_tensor {
    qd_dtype dtype;
    int ndim;
    int64_t shape[QD_MAX_DIMS];
    int64_t stride[QD_MAX_DIMS]; /* in elements */
    void *data;                  /* first element */
    void *owned;                 /* non-NULL: the allocation this tensor owns (free with it) */
} qd_tensor;

/* A borrowed, contiguous view of data (not copied, not freed by qd_tensor_free).
 * ndim must be 0..QD_MAX_DIMS; a 0-d tensor has one element. */
qd_tensor qd_tensor_view(qd_dtype dtype, int ndim, const int64_t *shape, void *data);

/* Allocate an owned, contiguous, zero-filled tensor. Fails with QD_ERR_NOMEM, or
 * QD_ERR_INVALID_ARG for a bad dtype/shape or a byte size that overflows. */
qd_err qd_tensor_alloc(qd_tensor *out, qd_dtype dtype, int ndim, const int64_t *shape,
                       qd_error *err);

/* Free what t owns (if anything) and reset it to an empty view. Accepts NULL. */
void qd_tensor_free(qd_tensor *t);

/* Number of elements (product of the shape; 1 for 0-d). */
int64_t qd_tensor_numel(const qd_tensor *t);
/* Bytes of a contiguous tensor (numel * element size). */
size_t qd_tensor_nbytes(const qd_tensor *t);
bool qd_tensor_is_contiguous(const qd_tensor *t);

/* numel * elem_size for a shape, with overflow checks: false when it does not fit in
 * uint64 or a dimension is negative. */
bool qd_shape_nbytes(qd_dtype dtype, int ndim, const int64_t *shape, uint64_t *out_bytes);

/* "[128, 352]" into buf; returns buf. */
const char *qd_shape_str(int ndim, const int64_t *shape, char *buf, size_t len);

#ifdef __cplusplus
}
#endif

#endif /* QD_TENSOR_H */
