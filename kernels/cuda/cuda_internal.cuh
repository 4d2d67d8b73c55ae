/*
 * cuda_internal.cuh - what the .cu files of kernels/cuda share and nothing outside them sees:
 * the context's fields, the error helpers every checked call goes through, stream-ordered
 * scratch, and small device helpers (warp reductions, grid sizes).
 *
 * DESIGN
 * Error handling is one pattern everywhere: a function declares every resource it may hold
 * before its first check, each call is wrapped in QD_CU_TRY (runtime), QD_CUBLAS_TRY or
 * QD_CUSOLVER_TRY, which record the first error in the qd_error (operation, library text,
 * file:line) and `goto fail`, and `fail:` frees whatever was allocated. A kernel launch is
 * followed by QD_CU_LAUNCHED, which reads cudaGetLastError (launch configuration errors);
 * faults inside a kernel surface at the next synchronising call and are reported there.
 * Non-sticky runtime errors (out of memory, invalid value) are cleared from the runtime's
 * last-error slot so they do not reappear at the next launch check; sticky ones mark the
 * context broken (qd_cuda_broken), and every entry point refuses a broken context.
 */
#ifndef QD_CUDA_INTERNAL_CUH
#define QD_CUDA_INTERNAL_CUH

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>
#include <stdint.h>

#include "qd_cuda.h"

struct qd_cuda {
    int device;
    cudaStream_t stream;
    cublasHandle_t blas;
    cusolverDnHandle_t solver;
    qd_device_info info;
    int n_sm;
    size_t smem_optin;  /* largest dynamic shared memory a block may opt in to */
    bool broken;        /* a sticky error happened: refuse further work */
};

/* Record a CUDA runtime error: QD_ERR_NOMEM for allocation failures, else QD_ERR_DEVICE;
 * marks the context broken for sticky errors and clears non-sticky ones. Returns the code. */
qd_err qd_cuda_err_rt(qd_cuda *c, qd_error *err, cudaError_t e, const char *op,
                      const char *file, int line);
qd_err qd_cuda_err_blas(qd_cuda *c, qd_error *err, cublasStatus_t s, const char *op,
                        const char *file, int line);
qd_err qd_cuda_err_solver(qd_cuda *c, qd_error *err, cusolverStatus_t s, const char *op,
                          const char *file, int line);
/* QD_ERR_DEVICE when c is NULL or broken, else QD_OK: the first line of every entry point. */
qd_err qd_cuda_usable(const qd_cuda *c, qd_error *err);

/* The caller declares `qd_err rc` and a `fail:` label. */
#define QD_CU_TRY(c, err, call)                                                         \
    do {                                                                                \
        cudaError_t e_ = (call);                                                        \
        if (e_ != cudaSuccess) {                                                        \
            rc = qd_cuda_err_rt((c), (err), e_, #call, __FILE__, __LINE__);              \
            goto fail;                                                                  \
        }                                                                               \
    } while (0)

#define QD_CU_LAUNCHED(c, err, what)                                                    \
    do {                                                                                \
        cudaError_t e_ = cudaGetLastError();                                            \
        if (e_ != cudaSuccess) {                                                        \
            rc = qd_cuda_err_rt((c), (err), e_, "launch of " what, __FILE__, __LINE__);  \
            goto fail;                                                                  \
        }                                                                               \
    } while (0)

#define QD_CUBLAS_TRY(c, err, call)                                                     \
    do {                                                                                \
        cublasStatus_t s_ = (call);                                                     \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                              \
            rc = qd_cuda_err_blas((c), (err), s_, #call, __FILE__, __LINE__);            \
            goto fail;                                                                  \
        }                                                                               \
    } while (0)

#define QD_CUSOLVER_TRY(c, err, call)                                                   \
    do {                                                                                \
        cusolverStatus_t s_ = (call);                                                   \
        if (s_ != CUSOLVER_STATUS_SUCCESS) {                                            \
            rc = qd_cuda_err_solver((c), (err), s_, #call, __FILE__, __LINE__);          \
            goto fail;                                                                  \
        }                                                                               \
    } while (0)

/* Stream-ordered scratch: *ret = nbytes (NULL for 0). Freed with qd_cuda_scratch_free, which
 * accepts NULL and never fails (a failure to free is recorded nowhere: the pool reclaims it
 * at the context's end). */
qd_err qd_cuda_scratch(qd_cuda *c, size_t nbytes, void **ret, const char *what,
                       qd_error *err);
void qd_cuda_scratch_free(qd_cuda *c, void *p);

/* RTN parameters only (quant.cu), for GPTQ: w [n, ld] row stride ld, groups of gs of the
 * first k columns, columns with dead[col] set read as 0 (dead [k] or NULL); scales, zeros
 * [n, k / gs]. No argument checks. */
qd_err qd_cuda_group_params_(qd_cuda *c, const float *w, int64_t n, int64_t k, int64_t ld,
                             int64_t gs, const uint8_t *dead, int bits, qd_qrule rule,
                             qd_dtype sdt, float *scales, float *zeros, qd_error *err);

/* ---- launch helpers ---------------------------------------------------------------------- */

#define QD_CUDA_THREADS 256
/* Largest grid.x used by grid-stride kernels (plenty of blocks for any device). */
#define QD_CUDA_MAX_BLOCKS 65535

static inline unsigned qd_cuda_blocks(int64_t items, int threads) {
    int64_t b = (items + threads - 1) / threads;
    if (b < 1) b = 1;
    if (b > QD_CUDA_MAX_BLOCKS) b = QD_CUDA_MAX_BLOCKS;
    return (unsigned)b;
}

/* ---- device helpers ---------------------------------------------------------------------- */

#define QD_FULL_MASK 0xFFFFFFFFu

/* Minimum / maximum over the warp by comparisons (as qd_qstats_of), result in every lane. */
static __device__ __forceinline__ float qd_warp_min(float v) {
    for (int o = 16; o > 0; o >>= 1) {
        float t = __shfl_xor_sync(QD_FULL_MASK, v, o);
        if (t < v) v = t;
    }
    return v;
}

static __device__ __forceinline__ float qd_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) {
        float t = __shfl_xor_sync(QD_FULL_MASK, v, o);
        if (t > v) v = t;
    }
    return v;
}

static __device__ __forceinline__ float qd_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(QD_FULL_MASK, v, o);
    return v;
}

static __device__ __forceinline__ double qd_warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(QD_FULL_MASK, v, o);
    return v;
}

/* Group statistics of a warp's strided share: lo/hi over lanes' partial lo/hi. The order of
 * comparisons differs from qd_qstats_of's left-to-right scan only for values that compare
 * equal, i.e. +0 and -0, and no rule of quant.h depends on the sign of a zero lo or hi (every
 * use goes through fminf/fmaxf with 0, a difference, a product whose zero is normalised, or
 * fabsf), so the parameters are bit-identical. */
static __device__ __forceinline__ qd_qstats qd_warp_stats(float lo, float hi) {
    qd_qstats st;
    st.lo = qd_warp_min(lo);
    st.hi = qd_warp_max(hi);
    st.amax = fabsf(st.lo) > fabsf(st.hi) ? fabsf(st.lo) : fabsf(st.hi);
    return st;
}

#endif /* QD_CUDA_INTERNAL_CUH */
