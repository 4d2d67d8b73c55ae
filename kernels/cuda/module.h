/*
 * module.h - the function table between quantd and its CUDA module, libquantd-cuda.so: the
 * one symbol the module exports, the table it returns, and the two device-discovery calls
 * backend.c makes (implemented by kernels/cuda_loader.c).
 *
 * DESIGN
 * The CUDA backend (the .cu files of kernels/cuda, cuBLAS, cuSOLVER, the CUDA runtime) is a
 * module that quantd loads with dlopen() the first time something asks for a GPU, and only
 * when the NVIDIA driver (libcuda.so.1) is present. A process that never asks (`quantd --version`,
 * `quantd config check`, every CPU job) maps none of the CUDA libraries and runs none of
 * their initialisers; a host without a driver never loads them at all.
 *
 * The module is built with hidden visibility and without exporting the static libraries it
 * contains, so its only dynamic symbol is QD_CUDA_MODULE_SYMBOL: a function returning a
 * pointer to a constant qd_cuda_module. Every other qd_cuda_* name inside the module is
 * local to it, and the loader (kernels/cuda_loader.c, linked into quantd) defines the same
 * qd_cuda.h functions as forwarders through the table, so the rest of quantd and the GPU
 * tests call qd_cuda.h exactly as before.
 *
 * Compatibility: the loader accepts a table only when `abi` equals QD_CUDA_MODULE_ABI and
 * `size` is at least the size it was compiled with. Bump QD_CUDA_MODULE_ABI, and the number
 * in QD_CUDA_MODULE_SYMBOL with it, whenever an entry's signature changes or a structure
 * passed through the table changes its layout (qd_device_info, qd_kernels, qd_error,
 * qd_cuda_packed, qd_cuda_gptq_opts, qd_cuda_gptq_stats). Entries are only ever appended.
 */
#ifndef QD_CUDA_MODULE_H
#define QD_CUDA_MODULE_H

#include <stdint.h>

#include "qd_cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

#define QD_CUDA_MODULE_ABI 1u
/* The exported entry point (dlsym name) and the module's file name. */
#define QD_CUDA_MODULE_SYMBOL "qd_cuda_module_v1"
#define QD_CUDA_MODULE_FILE "libquantd-cuda.so"
/* The environment variable naming the module file to load instead of searching for it. */
#define QD_CUDA_MODULE_ENV "QUANTD_CUDA_MODULE"

typedef struct qd_cuda_module {
    uint32_t abi;   /* QD_CUDA_MODULE_ABI of the module's build */
    uint32_t size;  /* sizeof(qd_cuda_module) of the module's build */

    /* device discovery (backend.c's qd_devices_list) */
    int (*device_count)(const char **note);
    int (*device_info)(int index, qd_device_info *out);

    /* qd_cuda.h, in its order */
    qd_err (*open)(int device, qd_cuda **ret_ctx, qd_error *err);
    void (*close)(qd_cuda *c);
    const qd_device_info *(*info)(const qd_cuda *c);
    int (*sm_count)(const qd_cuda *c);
    bool (*broken)(const qd_cuda *c);
    qd_err (*alloc)(qd_cuda *c, size_t nbytes, void **ret_ptr, qd_error *err);
    void (*free)(qd_cuda *c, void *ptr);
    qd_err (*upload)(qd_cuda *c, void *dst, const void *src, size_t nbytes, qd_error *err);
    qd_err (*download)(qd_cuda *c, void *dst, const void *src, size_t nbytes, qd_error *err);
    qd_err (*copy)(qd_cuda *c, void *dst, const void *src, size_t nbytes, qd_error *err);
    qd_err (*fill)(qd_cuda *c, void *dst, int byte, size_t nbytes, qd_error *err);
    qd_err (*sync)(qd_cuda *c, qd_error *err);

    qd_err (*quant_rtn)(qd_cuda *c, const float *w, int64_t n, int64_t k, int bits,
                        int64_t group_size, qd_qrule rule, qd_dtype scale_dtype,
                        uint8_t *codes, float *scales, float *zeros, qd_error *err);
    qd_err (*quant_fp8)(qd_cuda *c, const float *w, int64_t n, int64_t k, bool per_channel,
                        qd_dtype scale_dtype, uint8_t *codes, float *scales, qd_error *err);
    qd_err (*quant_pack)(qd_cuda *c, const float *w, int64_t n, int64_t k, int bits,
                         int64_t group_size, qd_qrule rule, qd_dtype scale_dtype,
                         qd_cuda_layout layout, const qd_cuda_packed *out, qd_error *err);
    qd_err (*pack_codes)(qd_cuda *c, const uint8_t *codes, const float *scales,
                         const float *zeros, int64_t n, int64_t k, int bits,
                         int64_t group_size, qd_qrule rule, qd_dtype scale_dtype,
                         qd_cuda_layout layout, const qd_cuda_packed *out, qd_error *err);

    qd_err (*matmul)(qd_cuda *c, float *y, const float *x, const float *w, const float *bias,
                     int64_t m, int64_t n, int64_t k, qd_error *err);
    qd_err (*matmul_lp)(qd_cuda *c, float *y, const void *x, const void *w, qd_dtype dt,
                        const float *bias, int64_t m, int64_t n, int64_t k, qd_error *err);
    qd_err (*convert)(qd_cuda *c, void *dst, qd_dtype dst_type, const void *src,
                      qd_dtype src_type, int64_t n, qd_error *err);
    qd_err (*xtx_accum)(qd_cuda *c, float *h, const float *x, int64_t n, int64_t k,
                        float alpha, qd_error *err);
    qd_err (*rmsnorm)(qd_cuda *c, float *y, const float *x, const float *w, int64_t n,
                      int64_t d, double eps, qd_error *err);
    qd_err (*rope_apply)(qd_cuda *c, float *x, int64_t n_tok, int64_t row_stride,
                         int64_t seq_len, int n_heads, int head_dim, const float *cos_t,
                         const float *sin_t, qd_error *err);
    qd_err (*silu_mul)(qd_cuda *c, float *out, const float *gate, const float *up, int64_t n,
                       qd_error *err);
    qd_err (*attention)(qd_cuda *c, float *out, const float *q, const float *k,
                        const float *v, int64_t n_seq, int64_t seq_len, int n_heads,
                        int n_kv_heads, int head_dim, qd_error *err);
    qd_err (*act_stats_add)(qd_cuda *c, const float *x, int64_t n_tok, int64_t n_in,
                            double *sum_abs, float *max_abs, qd_error *err);

    qd_err (*gptq_hessian_add)(qd_cuda *c, float *h, int64_t k, int64_t *n_samples,
                               const float *x, int64_t n_tok, int64_t n_seq, qd_error *err);
    qd_err (*gptq_quantize)(qd_cuda *c, const float *w, int n, int k, const float *h,
                            const qd_cuda_gptq_opts *o, uint8_t *codes, float *scales,
                            float *zeros, int32_t *ret_g_idx, float *dequant,
                            qd_cuda_gptq_stats *ret_stats, qd_error *err);

    qd_err (*awq_fake_quant)(qd_cuda *c, const float *w, int64_t n, int64_t k, const float *s,
                             int bits, int64_t group_size, qd_qrule rule,
                             qd_dtype scale_dtype, float *ret, qd_error *err);
    qd_err (*awq_loss)(qd_cuda *c, const float *x, int64_t n_tok, const float *w, int64_t n,
                       int64_t k, const float *s, int bits, int64_t group_size, qd_qrule rule,
                       qd_dtype scale_dtype, const float *y_ref, double *ret_sse,
                       qd_error *err);
    qd_err (*awq_clip_search)(qd_cuda *c, const float *w, int64_t n, int64_t k,
                              const float *x, int64_t n_tok, int bits, int64_t group_size,
                              qd_qrule rule, qd_dtype scale_dtype, double max_shrink,
                              int clip_n_grid, float *ret_max, qd_error *err);

    void (*kernels)(qd_cuda *c, qd_kernels *ret);

    /* appended after the first release of the table */
    qd_err (*add)(qd_cuda *c, float *dst, const float *a, const float *b, int64_t n,
                  qd_error *err);
    qd_err (*sq_diff)(qd_cuda *c, const float *a, const float *b, int64_t n, double *ret,
                      qd_error *err);
} qd_cuda_module;

/* The type of the module's entry point (QD_CUDA_MODULE_SYMBOL). */
typedef const qd_cuda_module *(*qd_cuda_module_fn)(void);

/* The entry point itself, defined in kernels/cuda/module.cu; the only exported symbol. */
__attribute__((visibility("default"))) const qd_cuda_module *qd_cuda_module_v1(void);

/*
 * Device discovery for backend.c, implemented by the loader: the number of CUDA devices
 * (0 when there is no driver, the module cannot be loaded, or the runtime finds none), with
 * *note (optional; static text) saying why when it is 0, "ok" otherwise. The first call loads
 * the module (once per process, thread-safe).
 */
int qd_cuda_device_count(const char **note);
/* Fill *out for device `index`; 0 on success, -1 when it cannot be read. */
int qd_cuda_device_info(int index, qd_device_info *out);

#ifdef __cplusplus
}
#endif

#endif /* QD_CUDA_MODULE_H */
