/*
 * backend.c - backend names, device discovery (CPU always; CUDA when built and present) and
 * the ref and cpu kernel tables (the CUDA table is in kernels/cuda/table.cu). CUDA devices are
 * counted through the loader (cuda_loader.c), which loads the CUDA module on that first call
 * only; without a driver or the module the note says why.
 */
#include "backend.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "ops.h"

#ifdef QD_HAVE_CUDA
#include "cuda/module.h" /* qd_cuda_device_count, qd_cuda_device_info (cuda_loader.c) */
#endif

const char *qd_backend_name(qd_backend_kind k) {
    switch (k) {
    case QD_BACKEND_REF: return "ref";
    case QD_BACKEND_CPU: return "cpu";
    case QD_BACKEND_CUDA: return "cuda";
    default: return "unknown";
    }
}

bool qd_backend_cuda_built(void) {
#ifdef QD_HAVE_CUDA
    return true;
#else
    return false;
#endif
}

int qd_devices_list(qd_device_info *out, int max, const char **cuda_note) {
    int n = 0;
    if (cuda_note) *cuda_note = "built without CUDA";
    if (max <= 0) return 0;
    memset(&out[0], 0, sizeof out[0]);
    out[0].kind = QD_BACKEND_CPU;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    snprintf(out[0].name, sizeof out[0].name, "cpu (%ld threads)", cpus > 0 ? cpus : 1);
    n = 1;
#ifdef QD_HAVE_CUDA
    const char *note = NULL;
    int count = qd_cuda_device_count(&note);
    if (cuda_note) *cuda_note = note;
    for (int i = 0; i < count && n < max; i++)
        if (qd_cuda_device_info(i, &out[n]) == 0) n++;
#endif
    return n;
}

/* ---- the ref and cpu kernel tables ---------------------------------------------------------- */

static qd_err ref_quant_rtn(void *ctx, const float *w, int64_t n, int64_t k, int bits,
                            int64_t group_size, qd_qrule rule, qd_dtype scale_dtype,
                            uint8_t *codes, float *scales, float *zeros, qd_error *err) {
    (void)ctx;
    (void)err;
    qd_quant_rtn_ref(w, n, k, bits, group_size, rule, scale_dtype, codes, scales, zeros);
    return QD_OK;
}

static qd_err cpu_quant_rtn(void *ctx, const float *w, int64_t n, int64_t k, int bits,
                            int64_t group_size, qd_qrule rule, qd_dtype scale_dtype,
                            uint8_t *codes, float *scales, float *zeros, qd_error *err) {
    (void)ctx;
    (void)err;
    qd_quant_rtn_cpu(w, n, k, bits, group_size, rule, scale_dtype, codes, scales, zeros, 0);
    return QD_OK;
}

static qd_err ref_quant_fp8(void *ctx, const float *w, int64_t n, int64_t k, bool per_channel,
                            qd_dtype scale_dtype, uint8_t *codes, float *scales,
                            qd_error *err) {
    (void)ctx;
    (void)err;
    qd_quant_fp8_ref(w, n, k, per_channel, scale_dtype, codes, scales);
    return QD_OK;
}

static qd_err cpu_quant_fp8(void *ctx, const float *w, int64_t n, int64_t k, bool per_channel,
                            qd_dtype scale_dtype, uint8_t *codes, float *scales,
                            qd_error *err) {
    (void)ctx;
    (void)err;
    qd_quant_fp8_cpu(w, n, k, per_channel, scale_dtype, codes, scales, 0);
    return QD_OK;
}

static qd_err ref_matmul(void *ctx, float *y, const float *x, const float *w, const float *bias,
                         int64_t m, int64_t n, int64_t k, qd_error *err) {
    (void)ctx;
    (void)err;
    qd_matmul_ref(y, x, w, bias, m, n, k);
    return QD_OK;
}

static qd_err cpu_matmul(void *ctx, float *y, const float *x, const float *w, const float *bias,
                         int64_t m, int64_t n, int64_t k, qd_error *err) {
    (void)ctx;
    (void)err;
    qd_matmul_cpu(y, x, w, bias, m, n, k);
    return QD_OK;
}

static qd_err ref_xtx_accum(void *ctx, float *h, const float *x, int64_t n, int64_t k,
                            qd_error *err) {
    (void)ctx;
    (void)err;
    qd_xtx_accum_ref(h, x, n, k);
    return QD_OK;
}

static qd_err cpu_xtx_accum(void *ctx, float *h, const float *x, int64_t n, int64_t k,
                            qd_error *err) {
    (void)ctx;
    (void)err;
    qd_xtx_accum_cpu(h, x, n, k);
    return QD_OK;
}

static qd_err ref_rmsnorm(void *ctx, float *y, const float *x, const float *w, int64_t n,
                          int64_t d, double eps, qd_error *err) {
    (void)ctx;
    (void)err;
    qd_rmsnorm_ref(y, x, w, n, d, eps);
    return QD_OK;
}

static qd_err cpu_rmsnorm(void *ctx, float *y, const float *x, const float *w, int64_t n,
                          int64_t d, double eps, qd_error *err) {
    (void)ctx;
    (void)err;
    qd_rmsnorm_cpu(y, x, w, n, d, eps);
    return QD_OK;
}

static qd_err ref_rope_apply(void *ctx, float *x, int64_t n_tok, int64_t row_stride,
                             int64_t seq_len, int n_heads, int head_dim, const float *cos_t,
                             const float *sin_t, qd_error *err) {
    (void)ctx;
    (void)err;
    qd_rope_apply_ref(x, n_tok, row_stride, seq_len, n_heads, head_dim, cos_t, sin_t);
    return QD_OK;
}

static qd_err cpu_rope_apply(void *ctx, float *x, int64_t n_tok, int64_t row_stride,
                             int64_t seq_len, int n_heads, int head_dim, const float *cos_t,
                             const float *sin_t, qd_error *err) {
    (void)ctx;
    (void)err;
    qd_rope_apply_cpu(x, n_tok, row_stride, seq_len, n_heads, head_dim, cos_t, sin_t);
    return QD_OK;
}

static qd_err ref_silu_mul(void *ctx, float *out, const float *gate, const float *up,
                           int64_t n, qd_error *err) {
    (void)ctx;
    (void)err;
    qd_silu_mul_ref(out, gate, up, n);
    return QD_OK;
}

static qd_err cpu_silu_mul(void *ctx, float *out, const float *gate, const float *up,
                           int64_t n, qd_error *err) {
    (void)ctx;
    (void)err;
    qd_silu_mul_cpu(out, gate, up, n);
    return QD_OK;
}

static qd_err ref_attention(void *ctx, float *out, const float *q, const float *k,
                            const float *v, int64_t n_seq, int64_t seq_len, int n_heads,
                            int n_kv_heads, int head_dim, qd_error *err) {
    (void)ctx;
    return qd_attention_ref(out, q, k, v, n_seq, seq_len, n_heads, n_kv_heads, head_dim, err);
}

static qd_err cpu_attention(void *ctx, float *out, const float *q, const float *k,
                            const float *v, int64_t n_seq, int64_t seq_len, int n_heads,
                            int n_kv_heads, int head_dim, qd_error *err) {
    (void)ctx;
    return qd_attention_cpu(out, q, k, v, n_seq, seq_len, n_heads, n_kv_heads, head_dim, err);
}

void qd_kernels_ref(qd_kernels *ret) {
    memset(ret, 0, sizeof *ret);
    ret->kind = QD_BACKEND_REF;
    ret->name = "ref";
    ret->quant_rtn = ref_quant_rtn;
    ret->quant_fp8 = ref_quant_fp8;
    ret->matmul = ref_matmul;
    ret->xtx_accum = ref_xtx_accum;
    ret->rmsnorm = ref_rmsnorm;
    ret->rope_apply = ref_rope_apply;
    ret->silu_mul = ref_silu_mul;
    ret->attention = ref_attention;
}

void qd_kernels_cpu(qd_kernels *ret) {
    memset(ret, 0, sizeof *ret);
    ret->kind = QD_BACKEND_CPU;
    ret->name = "cpu";
    ret->quant_rtn = cpu_quant_rtn;
    ret->quant_fp8 = cpu_quant_fp8;
    ret->matmul = cpu_matmul;
    ret->xtx_accum = cpu_xtx_accum;
    ret->rmsnorm = cpu_rmsnorm;
    ret->rope_apply = cpu_rope_apply;
    ret->silu_mul = cpu_silu_mul;
    ret->attention = cpu_attention;
}
