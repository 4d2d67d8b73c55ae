/*
 * backend.h - the compute backends quantd can run on, and the devices behind them.
 *
 * `ref` (plain C) defines every numeric result; `cpu` (threads + BLAS) and `cuda` must agree
 * with it. This header lists which backends this build and this machine offer, and holds the
 * kernel table: one qd_kernels per backend, one entry per op, so a caller (and the
 * cross-backend test) runs the same op on any backend through the same signature.
 *
 * DESIGN
 * The table's entries take HOST memory and return when the result is there: for ref and cpu
 * they are the ops of ops.h / quant.h; the CUDA entries (kernels/cuda/qd_cuda.h,
 * qd_kernels_cuda) stage the data through device buffers of their context. Code that keeps
 * data on the GPU across many ops calls qd_cuda.h's device-pointer ops directly. A NULL entry
 * means the backend does not have the op; the caller falls back to the cpu table.
 */
#ifndef QD_BACKEND_H
#define QD_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "quant.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum qd_backend_kind {
    QD_BACKEND_REF = 0,
    QD_BACKEND_CPU,
    QD_BACKEND_CUDA,
    QD_BACKEND_COUNT
} qd_backend_kind;

typedef struct qd_device_info {
    qd_backend_kind kind;
    int index;              /* cuda:N; 0 for the CPU */
    char name[256];         /* "NVIDIA H100 80GB HBM3", "cpu (2 threads)" */
    size_t memory_bytes;    /* device memory; 0 when unknown */
    int compute_capability; /* 90 for sm_90; 0 for the CPU */
} qd_device_info;

const char *qd_backend_name(qd_backend_kind k);
/* Whether this binary was built with the CUDA backend. */
bool qd_backend_cuda_built(void);
/* Fill up to max devices (the CPU first, then each CUDA device found at run time).
 * Returns the number written. When the CUDA runtime finds no device, *cuda_note (optional)
 * points to a static text saying why. */
int qd_devices_list(qd_device_info *out, int max, const char **cuda_note);

/* ---- the kernel table -------------------------------------------------------------------- */

/* One backend's ops on host memory. `ctx` is the backend's state (the qd_cuda context for
 * CUDA, NULL for ref and cpu) and is passed back as each entry's first argument. Contracts:
 * those of the ops with the same name in quant.h and ops.h; every entry returns QD_OK or an
 * error (the cpu and ref ones fail only where their op can: attention's scratch). */
typedef struct qd_kernels {
    qd_backend_kind kind;
    const char *name;
    void *ctx;
    qd_err (*quant_rtn)(void *ctx, const float *w, int64_t n, int64_t k, int bits,
                        int64_t group_size, qd_qrule rule, qd_dtype scale_dtype,
                        uint8_t *codes, float *scales, float *zeros, qd_error *err);
    qd_err (*quant_fp8)(void *ctx, const float *w, int64_t n, int64_t k, bool per_channel,
                        qd_dtype scale_dtype, uint8_t *codes, float *scales, qd_error *err);
    qd_err (*matmul)(void *ctx, float *y, const float *x, const float *w, const float *bias,
                     int64_t m, int64_t n, int64_t k, qd_error *err);
    qd_err (*xtx_accum)(void *ctx, float *h, const float *x, int64_t n, int64_t k,
                        qd_error *err);
    qd_err (*rmsnorm)(void *ctx, float *y, const float *x, const float *w, int64_t n,
                      int64_t d, double eps, qd_error *err);
    qd_err (*rope_apply)(void *ctx, float *x, int64_t n_tok, int64_t row_stride,
                         int64_t seq_len, int n_heads, int head_dim, const float *cos_t,
                         const float *sin_t, qd_error *err);
    qd_err (*silu_mul)(void *ctx, float *out, const float *gate, const float *up, int64_t n,
                       qd_error *err);
    qd_err (*attention)(void *ctx, float *out, const float *q, const float *k, const float *v,
                        int64_t n_seq, int64_t seq_len, int n_heads, int n_kv_heads,
                        int head_dim, qd_error *err);
} qd_kernels;

/* The reference table (kernels/ref) and the cpu table (kernels/cpu; the cpu's RTN/FP8 use
 * qd_cpu_threads() threads). The CUDA table is qd_kernels_cuda() in kernels/cuda/qd_cuda.h. */
void qd_kernels_ref(qd_kernels *ret);
void qd_kernels_cpu(qd_kernels *ret);

#ifdef __cplusplus
}
#endif

#endif /* QD_BACKEND_H */
