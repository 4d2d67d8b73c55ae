/*
 * table.cu - the CUDA entries of the kernel table (backend.h): each takes host memory, copies
 * the inputs into stream-ordered device scratch, runs the op of qd_cuda.h, copies the outputs
 * back and frees the scratch, so a caller written against the table runs unchanged on ref,
 * cpu or cuda. Work that keeps its data on the device calls qd_cuda.h directly instead.
 */
#include <string.h>

#include "cuda_internal.cuh"

/* *dev = device copy of nbytes of host (NULL host or 0 bytes: NULL). */
static qd_err stage_in(qd_cuda *c, const void *host, size_t nbytes, void **dev,
                       const char *what, qd_error *err) {
    qd_err rc;
    *dev = NULL;
    if (!host || nbytes == 0) return QD_OK;
    if ((rc = qd_cuda_scratch(c, nbytes, dev, what, err))) return rc;
    return qd_cuda_upload(c, *dev, host, nbytes, err);
}

static qd_err stage_out(qd_cuda *c, void *host, const void *dev, size_t nbytes, qd_error *err) {
    if (!host || nbytes == 0) return QD_OK;
    return qd_cuda_download(c, host, dev, nbytes, err);
}

/* Free up to four scratch buffers and wait, so the host arrays are no longer read. */
static qd_err finish(qd_cuda *c, qd_err rc, void *a, void *b, void *d, void *e, qd_error *err) {
    qd_cuda_scratch_free(c, a);
    qd_cuda_scratch_free(c, b);
    qd_cuda_scratch_free(c, d);
    qd_cuda_scratch_free(c, e);
    qd_err s = c->broken ? QD_OK : qd_cuda_sync(c, rc ? NULL : err);
    return rc ? rc : s;
}

static qd_err t_quant_rtn(void *ctx, const float *w, int64_t n, int64_t k, int bits,
                          int64_t group_size, qd_qrule rule, qd_dtype scale_dtype,
                          uint8_t *codes, float *scales, float *zeros, qd_error *err) {
    qd_cuda *c = (qd_cuda *)ctx;
    void *dw = NULL, *dc = NULL, *ds = NULL, *dz = NULL;
    size_t nk = (size_t)(n * k), np = group_size > 0 ? (size_t)(n * (k / group_size)) : 0;
    qd_err rc = qd_cuda_usable(c, err);
    if (rc) return rc;
    if ((rc = stage_in(c, w, nk * sizeof(float), &dw, "rtn weights", err)) ||
        (rc = qd_cuda_scratch(c, nk, &dc, "rtn codes", err)) ||
        (rc = qd_cuda_scratch(c, np * sizeof(float), &ds, "rtn scales", err)) ||
        (rc = qd_cuda_scratch(c, np * sizeof(float), &dz, "rtn zeros", err)) ||
        (rc = qd_quant_rtn_cuda(c, (const float *)dw, n, k, bits, group_size, rule,
                                scale_dtype, (uint8_t *)dc, (float *)ds, (float *)dz, err)) ||
        (rc = stage_out(c, codes, dc, nk, err)) ||
        (rc = stage_out(c, scales, ds, np * sizeof(float), err)) ||
        (rc = stage_out(c, zeros, dz, np * sizeof(float), err)))
        return finish(c, rc, dw, dc, ds, dz, err);
    return finish(c, QD_OK, dw, dc, ds, dz, err);
}

static qd_err t_quant_fp8(void *ctx, const float *w, int64_t n, int64_t k, bool per_channel,
                          qd_dtype scale_dtype, uint8_t *codes, float *scales, qd_error *err) {
    qd_cuda *c = (qd_cuda *)ctx;
    void *dw = NULL, *dc = NULL, *ds = NULL;
    size_t nk = (size_t)(n * k);
    qd_err rc = qd_cuda_usable(c, err);
    if (rc) return rc;
    if ((rc = stage_in(c, w, nk * sizeof(float), &dw, "fp8 weights", err)) ||
        (rc = qd_cuda_scratch(c, nk, &dc, "fp8 codes", err)) ||
        (rc = qd_cuda_scratch(c, (size_t)n * sizeof(float), &ds, "fp8 scales", err)) ||
        (rc = qd_quant_fp8_cuda(c, (const float *)dw, n, k, per_channel, scale_dtype,
                                (uint8_t *)dc, (float *)ds, err)) ||
        (rc = stage_out(c, codes, dc, nk, err)) ||
        (rc = stage_out(c, scales, ds, (size_t)n * sizeof(float), err)))
        return finish(c, rc, dw, dc, ds, NULL, err);
    return finish(c, QD_OK, dw, dc, ds, NULL, err);
}

static qd_err t_matmul(void *ctx, float *y, const float *x, const float *w, const float *bias,
                       int64_t m, int64_t n, int64_t k, qd_error *err) {
    qd_cuda *c = (qd_cuda *)ctx;
    void *dy = NULL, *dx = NULL, *dw = NULL, *db = NULL;
    qd_err rc = qd_cuda_usable(c, err);
    if (rc) return rc;
    if ((rc = stage_in(c, x, (size_t)(m * k) * sizeof(float), &dx, "matmul x", err)) ||
        (rc = stage_in(c, w, (size_t)(n * k) * sizeof(float), &dw, "matmul w", err)) ||
        (rc = stage_in(c, bias, (size_t)n * sizeof(float), &db, "matmul bias", err)) ||
        (rc = qd_cuda_scratch(c, (size_t)(m * n) * sizeof(float), &dy, "matmul y", err)) ||
        (rc = qd_matmul_cuda(c, (float *)dy, (const float *)dx, (const float *)dw,
                             (const float *)db, m, n, k, err)) ||
        (rc = stage_out(c, y, dy, (size_t)(m * n) * sizeof(float), err)))
        return finish(c, rc, dy, dx, dw, db, err);
    return finish(c, QD_OK, dy, dx, dw, db, err);
}

static qd_err t_xtx_accum(void *ctx, float *h, const float *x, int64_t n, int64_t k,
                          qd_error *err) {
    qd_cuda *c = (qd_cuda *)ctx;
    void *dh = NULL, *dx = NULL;
    size_t hb = (size_t)(k * k) * sizeof(float);
    qd_err rc = qd_cuda_usable(c, err);
    if (rc) return rc;
    if ((rc = stage_in(c, h, hb, &dh, "xtx h", err)) ||
        (rc = stage_in(c, x, (size_t)(n * k) * sizeof(float), &dx, "xtx x", err)) ||
        (rc = qd_xtx_accum_cuda(c, (float *)dh, (const float *)dx, n, k, 1.0f, err)) ||
        (rc = stage_out(c, h, dh, hb, err)))
        return finish(c, rc, dh, dx, NULL, NULL, err);
    return finish(c, QD_OK, dh, dx, NULL, NULL, err);
}

static qd_err t_rmsnorm(void *ctx, float *y, const float *x, const float *w, int64_t n,
                        int64_t d, double eps, qd_error *err) {
    qd_cuda *c = (qd_cuda *)ctx;
    void *dx = NULL, *dw = NULL;
    size_t xb = (size_t)(n * d) * sizeof(float);
    qd_err rc = qd_cuda_usable(c, err);
    if (rc) return rc;
    /* in place on the device copy, so y may alias x on the host as the contract allows */
    if ((rc = stage_in(c, x, xb, &dx, "rmsnorm x", err)) ||
        (rc = stage_in(c, w, (size_t)d * sizeof(float), &dw, "rmsnorm w", err)) ||
        (rc = qd_rmsnorm_cuda(c, (float *)dx, (const float *)dx, (const float *)dw, n, d, eps,
                              err)) ||
        (rc = stage_out(c, y, dx, xb, err)))
        return finish(c, rc, dx, dw, NULL, NULL, err);
    return finish(c, QD_OK, dx, dw, NULL, NULL, err);
}

static qd_err t_rope_apply(void *ctx, float *x, int64_t n_tok, int64_t row_stride,
                           int64_t seq_len, int n_heads, int head_dim, const float *cos_t,
                           const float *sin_t, qd_error *err) {
    qd_cuda *c = (qd_cuda *)ctx;
    void *dx = NULL, *dc = NULL, *ds = NULL;
    size_t xb = (size_t)(n_tok * row_stride) * sizeof(float);
    size_t tb = (size_t)(seq_len * (head_dim / 2)) * sizeof(float);
    qd_err rc = qd_cuda_usable(c, err);
    if (rc) return rc;
    if ((rc = stage_in(c, x, xb, &dx, "rope x", err)) ||
        (rc = stage_in(c, cos_t, tb, &dc, "rope cos", err)) ||
        (rc = stage_in(c, sin_t, tb, &ds, "rope sin", err)) ||
        (rc = qd_rope_apply_cuda(c, (float *)dx, n_tok, row_stride, seq_len, n_heads, head_dim,
                                 (const float *)dc, (const float *)ds, err)) ||
        (rc = stage_out(c, x, dx, xb, err)))
        return finish(c, rc, dx, dc, ds, NULL, err);
    return finish(c, QD_OK, dx, dc, ds, NULL, err);
}

static qd_err t_silu_mul(void *ctx, float *out, const float *gate, const float *up, int64_t n,
                         qd_error *err) {
    qd_cuda *c = (qd_cuda *)ctx;
    void *dg = NULL, *du = NULL;
    size_t b = (size_t)n * sizeof(float);
    qd_err rc = qd_cuda_usable(c, err);
    if (rc) return rc;
    if ((rc = stage_in(c, gate, b, &dg, "silu gate", err)) ||
        (rc = stage_in(c, up, b, &du, "silu up", err)) ||
        (rc = qd_silu_mul_cuda(c, (float *)dg, (const float *)dg, (const float *)du, n, err)) ||
        (rc = stage_out(c, out, dg, b, err)))
        return finish(c, rc, dg, du, NULL, NULL, err);
    return finish(c, QD_OK, dg, du, NULL, NULL, err);
}

static qd_err t_attention(void *ctx, float *out, const float *q, const float *k, const float *v,
                          int64_t n_seq, int64_t seq_len, int n_heads, int n_kv_heads,
                          int head_dim, qd_error *err) {
    qd_cuda *c = (qd_cuda *)ctx;
    void *dout = NULL, *dq = NULL, *dk = NULL, *dv = NULL;
    int64_t rows = n_seq * seq_len;
    size_t qb = (size_t)(rows * n_heads * head_dim) * sizeof(float);
    size_t kb = n_kv_heads > 0 ? (size_t)(rows * n_kv_heads * head_dim) * sizeof(float) : 0;
    qd_err rc = qd_cuda_usable(c, err);
    if (rc) return rc;
    if ((rc = stage_in(c, q, qb, &dq, "attention q", err)) ||
        (rc = stage_in(c, k, kb, &dk, "attention k", err)) ||
        (rc = stage_in(c, v, kb, &dv, "attention v", err)) ||
        (rc = qd_cuda_scratch(c, qb, &dout, "attention out", err)) ||
        (rc = qd_attention_cuda(c, (float *)dout, (const float *)dq, (const float *)dk,
                                (const float *)dv, n_seq, seq_len, n_heads, n_kv_heads,
                                head_dim, err)) ||
        (rc = stage_out(c, out, dout, qb, err)))
        return finish(c, rc, dout, dq, dk, dv, err);
    return finish(c, QD_OK, dout, dq, dk, dv, err);
}

extern "C" void qd_kernels_cuda(qd_cuda *c, qd_kernels *ret) {
    memset(ret, 0, sizeof *ret);
    ret->kind = QD_BACKEND_CUDA;
    ret->name = "cuda";
    ret->ctx = c;
    ret->quant_rtn = t_quant_rtn;
    ret->quant_fp8 = t_quant_fp8;
    ret->matmul = t_matmul;
    ret->xtx_accum = t_xtx_accum;
    ret->rmsnorm = t_rmsnorm;
    ret->rope_apply = t_rope_apply;
    ret->silu_mul = t_silu_mul;
    ret->attention = t_attention;
}
