/*
 * context.cu - the CUDA context (device, stream, cuBLAS and cuSOLVER handles), device
 * buffers and copies, and the error helpers every CUDA call of the backend goes through.
 *
 * DESIGN
 * One context per device per worker. The stream is non-blocking, so quantd's work never
 * serialises with the legacy default stream of other libraries in the process; both handles
 * are bound to it, so a cuBLAS or cuSOLVER call is ordered with the kernels around it without
 * extra synchronisation. Scratch memory comes from the device's default memory pool through
 * cudaMallocAsync on the same stream: allocation and release are ordered with the work, cost
 * no device-wide synchronisation, and the pool keeps freed blocks for the next op. Its release
 * threshold is left at the default, so memory a job stops using goes back to the device at the
 * next synchronisation.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.cuh"

/* ---- errors ------------------------------------------------------------------------------ */

/* Errors after which the context (the CUDA context of the process) cannot be trusted. */
static bool sticky(cudaError_t e) {
    switch (e) {
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
    case cudaErrorIllegalInstruction:
    case cudaErrorMisalignedAddress:
    case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc:
    case cudaErrorHardwareStackError:
    case cudaErrorAssert:
    case cudaErrorLaunchTimeout:
    case cudaErrorECCUncorrectable:
    case cudaErrorUnknown:
        return true;
    default:
        return false;
    }
}

/* "file.cu:123" without the directories. */
static const char *base_name(const char *path) {
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

qd_err qd_cuda_err_rt(qd_cuda *c, qd_error *err, cudaError_t e, const char *op,
                                 const char *file, int line) {
    qd_err code = e == cudaErrorMemoryAllocation ? QD_ERR_NOMEM : QD_ERR_DEVICE;
    if (sticky(e)) {
        if (c) c->broken = true;
    } else {
        (void)cudaGetLastError(); /* a non-sticky error must not fail the next launch check */
    }
    return qd_error_set(err, code, "cuda: %s failed: %s (%s) [%s:%d]%s", op,
                        cudaGetErrorString(e), cudaGetErrorName(e), base_name(file), line,
                        sticky(e) ? "; the device is unusable until the process restarts" : "");
}

qd_err qd_cuda_err_blas(qd_cuda *c, qd_error *err, cublasStatus_t s, const char *op,
                                   const char *file, int line) {
    (void)c;
    qd_err code = s == CUBLAS_STATUS_ALLOC_FAILED ? QD_ERR_NOMEM : QD_ERR_DEVICE;
    (void)cudaGetLastError();
    return qd_error_set(err, code, "cuda: %s failed: %s [%s:%d]", op, cublasGetStatusString(s),
                        base_name(file), line);
}

static const char *solver_text(cusolverStatus_t s) {
    switch (s) {
    case CUSOLVER_STATUS_NOT_INITIALIZED: return "cuSOLVER not initialised";
    case CUSOLVER_STATUS_ALLOC_FAILED: return "cuSOLVER could not allocate memory";
    case CUSOLVER_STATUS_INVALID_VALUE: return "invalid value";
    case CUSOLVER_STATUS_ARCH_MISMATCH: return "not supported by this device";
    case CUSOLVER_STATUS_EXECUTION_FAILED: return "execution failed on the device";
    case CUSOLVER_STATUS_INTERNAL_ERROR: return "cuSOLVER internal error";
    case CUSOLVER_STATUS_NOT_SUPPORTED: return "not supported";
    default: return "cuSOLVER error";
    }
}

qd_err qd_cuda_err_solver(qd_cuda *c, qd_error *err, cusolverStatus_t s,
                                     const char *op, const char *file, int line) {
    (void)c;
    qd_err code = s == CUSOLVER_STATUS_ALLOC_FAILED ? QD_ERR_NOMEM : QD_ERR_DEVICE;
    (void)cudaGetLastError();
    return qd_error_set(err, code, "cuda: %s failed: %s (status %d) [%s:%d]", op,
                        solver_text(s), (int)s, base_name(file), line);
}

qd_err qd_cuda_usable(const qd_cuda *c, qd_error *err) {
    if (!c) return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda: no context");
    if (c->broken)
        return qd_error_set(err, QD_ERR_DEVICE, "cuda: device %d had an unrecoverable error "
                            "earlier; close the context", c->device);
    return QD_OK;
}

/* ---- context ----------------------------------------------------------------------------- */

extern "C" qd_err qd_cuda_open(int device, qd_cuda **ret_ctx, qd_error *err) {
    qd_err rc = QD_OK;
    qd_cuda *c = NULL;
    int count = 0;
    cudaDeviceProp p;
    int optin = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0) {
        const char *why = e != cudaSuccess ? cudaGetErrorString(e) : "the runtime found none";
        (void)cudaGetLastError();
        return qd_error_set(err, QD_ERR_UNAVAILABLE, "cuda: no CUDA device (%s)", why);
    }
    if (device < 0 || device >= count)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda: device %d does not exist (%d "
                            "device%s)", device, count, count == 1 ? "" : "s");
    c = (qd_cuda *)calloc(1, sizeof *c);
    if (!c) return qd_error_set(err, QD_ERR_NOMEM, "cuda: no memory for a context");
    c->device = device;
    QD_CU_TRY(c, err, cudaSetDevice(device));
    QD_CU_TRY(c, err, cudaGetDeviceProperties(&p, device));
    QD_CU_TRY(c, err, cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin,
                                             device));
    c->info.kind = QD_BACKEND_CUDA;
    c->info.index = device;
    snprintf(c->info.name, sizeof c->info.name, "%s", p.name);
    c->info.memory_bytes = p.totalGlobalMem;
    c->info.compute_capability = p.major * 10 + p.minor;
    c->n_sm = p.multiProcessorCount;
    c->smem_optin = (size_t)optin;
    QD_CU_TRY(c, err, cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
    QD_CUBLAS_TRY(c, err, cublasCreate(&c->blas));
    QD_CUBLAS_TRY(c, err, cublasSetStream(c->blas, c->stream));
    /* fp32 GEMMs stay fp32: no TF32 tensor-core shortcut (it would loosen every tolerance) */
    QD_CUBLAS_TRY(c, err, cublasSetMathMode(c->blas, CUBLAS_DEFAULT_MATH));
    QD_CUSOLVER_TRY(c, err, cusolverDnCreate(&c->solver));
    QD_CUSOLVER_TRY(c, err, cusolverDnSetStream(c->solver, c->stream));
    *ret_ctx = c;
    return QD_OK;

fail:
    qd_cuda_close(c);
    return rc;
}

extern "C" void qd_cuda_close(qd_cuda *c) {
    if (!c) return;
    (void)cudaSetDevice(c->device);
    if (c->stream) (void)cudaStreamSynchronize(c->stream);
    if (c->solver) (void)cusolverDnDestroy(c->solver);
    if (c->blas) (void)cublasDestroy(c->blas);
    if (c->stream) (void)cudaStreamDestroy(c->stream);
    (void)cudaGetLastError();
    free(c);
}

extern "C" const qd_device_info *qd_cuda_info(const qd_cuda *c) {
    return &c->info;
}

extern "C" int qd_cuda_sm_count(const qd_cuda *c) {
    return c->n_sm;
}

extern "C" bool qd_cuda_broken(const qd_cuda *c) {
    return c->broken;
}

/* ---- memory ------------------------------------------------------------------------------ */

extern "C" qd_err qd_cuda_alloc(qd_cuda *c, size_t nbytes, void **ret_ptr, qd_error *err) {
    qd_err rc = qd_cuda_usable(c, err);
    void *p = NULL;
    if (rc) return rc;
    if (nbytes == 0) {
        *ret_ptr = NULL;
        return QD_OK;
    }
    {
        cudaError_t e = cudaMalloc(&p, nbytes);
        if (e != cudaSuccess) {
            char op[96];
            snprintf(op, sizeof op, "cudaMalloc of %zu bytes", nbytes);
            return qd_cuda_err_rt(c, err, e, op, __FILE__, __LINE__);
        }
    }
    *ret_ptr = p;
    return QD_OK;
}

extern "C" void qd_cuda_free(qd_cuda *c, void *ptr) {
    if (!c || !ptr) return;
    /* cudaFree waits for the device; the stream's work on ptr is done by then */
    if (cudaFree(ptr) != cudaSuccess) (void)cudaGetLastError();
}

extern "C" qd_err qd_cuda_upload(qd_cuda *c, void *dst, const void *src, size_t nbytes,
                                 qd_error *err) {
    qd_err rc = qd_cuda_usable(c, err);
    if (rc || nbytes == 0) return rc;
    QD_CU_TRY(c, err, cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyHostToDevice, c->stream));
    return QD_OK;
fail:
    return rc;
}

extern "C" qd_err qd_cuda_download(qd_cuda *c, void *dst, const void *src, size_t nbytes,
                                   qd_error *err) {
    qd_err rc = qd_cuda_sync(c, err);
    if (rc || nbytes == 0) return rc;
    QD_CU_TRY(c, err, cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToHost, c->stream));
    QD_CU_TRY(c, err, cudaStreamSynchronize(c->stream));
    return QD_OK;
fail:
    return rc;
}

extern "C" qd_err qd_cuda_copy(qd_cuda *c, void *dst, const void *src, size_t nbytes,
                               qd_error *err) {
    qd_err rc = qd_cuda_usable(c, err);
    if (rc || nbytes == 0) return rc;
    QD_CU_TRY(c, err, cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToDevice, c->stream));
    return QD_OK;
fail:
    return rc;
}

extern "C" qd_err qd_cuda_fill(qd_cuda *c, void *dst, int byte, size_t nbytes, qd_error *err) {
    qd_err rc = qd_cuda_usable(c, err);
    if (rc || nbytes == 0) return rc;
    QD_CU_TRY(c, err, cudaMemsetAsync(dst, byte, nbytes, c->stream));
    return QD_OK;
fail:
    return rc;
}

extern "C" qd_err qd_cuda_sync(qd_cuda *c, qd_error *err) {
    qd_err rc = qd_cuda_usable(c, err);
    if (rc) return rc;
    QD_CU_TRY(c, err, cudaStreamSynchronize(c->stream));
    return QD_OK;
fail:
    return rc;
}

qd_err qd_cuda_scratch(qd_cuda *c, size_t nbytes, void **ret, const char *what,
                                  qd_error *err) {
    void *p = NULL;
    *ret = NULL;
    if (nbytes == 0) return QD_OK;
    cudaError_t e = cudaMallocAsync(&p, nbytes, c->stream);
    if (e != cudaSuccess) {
        char op[160];
        snprintf(op, sizeof op, "cudaMallocAsync of %zu bytes for %s", nbytes, what);
        return qd_cuda_err_rt(c, err, e, op, __FILE__, __LINE__);
    }
    *ret = p;
    return QD_OK;
}

void qd_cuda_scratch_free(qd_cuda *c, void *p) {
    if (!p) return;
    if (cudaFreeAsync(p, c->stream) != cudaSuccess) (void)cudaGetLastError();
}
