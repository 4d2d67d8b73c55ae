/*
 * awq.c - the AutoAWQ "GEMM" format (quant_method "awq", version "gemm"), docs/formats.md
 * section 1; read by vLLM (awq, awq_marlin) and transformers.
 *
 * Per linear <prefix> with W [N, K], group size G, 4-bit codes q[n, k] and integer zeros
 * z[n, g] (unsigned domain, dequant (q - z) * s):
 *
 *   qweight  I32 [K, N/8]   word (k, j) nibble i = q[8j + ORDER[i], k]
 *   qzeros   I32 [K/G, N/8] word (g, j) nibble i = z[8j + ORDER[i], g]   (raw, no offset)
 *   scales   F16 [K/G, N]   scales[g, n] = s[n, g]
 *   bias     F16 [N]        when the layer has one
 *
 * with ORDER = [0, 2, 4, 6, 1, 3, 5, 7]: the words are packed along the OUTPUT axis and
 * nibble i holds channel ORDER[i] of its 8 (equivalently channel c sits in nibble
 * [0, 4, 1, 5, 2, 6, 3, 7][c], AutoAWQ's AWQ_REVERSE_ORDER). Per-channel layers are written
 * with one group (K/G = 1) and group_size -1 in the config, as AutoAWQ's WQLinear_GEMM does.
 *
 * The format has zero points by construction (AutoAWQ's from_linear asserts zeros exist), so
 * a symmetric spec is refused rather than written with constant zeros: it belongs in gptq or
 * compressed-tensors, whose symmetric types (uint4b8) select faster kernels.
 */
#include "format_internal.h"

#define AWQ_NAME "awq"

/* Nibble i of a word holds channel AWQ_ORDER[i] of its group of 8. */
static const int AWQ_ORDER[8] = {0, 2, 4, 6, 1, 3, 5, 7};

/* What the layout needs (pack runs this); the engines add nothing beyond it. */
static qd_err awq_layout(const qd_format_params *p, int n, int k, qd_error *err) {
    qd_err rc = fmt_check_params(AWQ_NAME, p, err);
    if (rc) return rc;
    if (p->type != QD_QTYPE_INT)
        return qd_error_set(err, QD_ERR_UNSUPPORTED, "awq: AutoAWQ GEMM holds integer weights "
                            "only; write fp8 weights as compressed-tensors");
    if (p->bits != 4)
        return qd_error_set(err, QD_ERR_UNSUPPORTED, "awq: AutoAWQ GEMM packs 4-bit weights "
                            "only (got %d-bit); use gptq or compressed-tensors", p->bits);
    if (p->symmetric)
        return qd_error_set(err, QD_ERR_UNSUPPORTED, "awq: AutoAWQ GEMM needs zero points "
                            "(zero_point=true) and symmetric weights have none; write "
                            "symmetric int4 as gptq or compressed-tensors");
    if (p->act_order && !p->static_groups)
        return qd_error_set(err, QD_ERR_UNSUPPORTED, "awq: act-order without static groups "
                            "needs a g_idx tensor, which AutoAWQ GEMM lacks; use static groups "
                            "or gptq_v2");
    if (p->act != QD_FORMAT_ACT_NONE)
        return qd_error_set(err, QD_ERR_UNSUPPORTED, "awq: weight-only format; activation "
                            "quantization needs compressed-tensors or modelopt");
    if (n > 0 && n % 8 != 0)
        return qd_error_set(err, QD_ERR_UNSUPPORTED, "awq: out_features %d is not a multiple "
                            "of 8 (qweight packs 8 output channels per int32)", n);
    if (k > 0 && p->group_size > 0 && k % p->group_size != 0)
        return qd_error_set(err, QD_ERR_UNSUPPORTED, "awq: in_features %d is not a multiple "
                            "of group_size %d", k, p->group_size);
    return QD_OK;
}

static qd_err awq_check(const qd_format_params *p, int n, int k, qd_error *err) {
    return awq_layout(p, n, k, err);
}

static qd_err awq_pack_tensors(const qd_qlinear *q, const char *prefix, qd_packed_list *out,
                               qd_error *err) {
    const size_t n = (size_t)q->n, k = (size_t)q->k, ng = (size_t)q->n_groups;
    const size_t nw = n / 8;
    int64_t shape[2];
    void *d;
    qd_err rc;

    /* qweight [K, N/8]: row k of the word matrix packs column k of every output row */
    shape[0] = q->k;
    shape[1] = (int64_t)nw;
    if ((rc = fmt_add(out, AWQ_NAME, prefix, "qweight", QD_DTYPE_I32, 2, shape, &d, err)))
        return rc;
    uint32_t *qw = d;
    for (size_t r = 0; r < k; r++)
        for (size_t j = 0; j < nw; j++) {
            uint32_t w = 0;
            for (int i = 0; i < 8; i++)
                w |= (uint32_t)q->codes[(8 * j + (size_t)AWQ_ORDER[i]) * k + r] << (4 * i);
            qw[r * nw + j] = w;
        }

    /* qzeros [K/G, N/8], same interleave, raw zeros */
    shape[0] = (int64_t)ng;
    if ((rc = fmt_add(out, AWQ_NAME, prefix, "qzeros", QD_DTYPE_I32, 2, shape, &d, err)))
        return rc;
    uint32_t *qz = d;
    for (size_t g = 0; g < ng; g++)
        for (size_t j = 0; j < nw; j++) {
            uint32_t w = 0;
            for (int i = 0; i < 8; i++)
                w |= (uint32_t)q->zeros[(8 * j + (size_t)AWQ_ORDER[i]) * ng + g] << (4 * i);
            qz[g * nw + j] = w;
        }

    /* scales [K/G, N] fp16: the transpose of qlinear's [N, n_groups] */
    shape[1] = q->n;
    if ((rc = fmt_add(out, AWQ_NAME, prefix, "scales", QD_DTYPE_F16, 2, shape, &d, err)))
        return rc;
    for (size_t g = 0; g < ng; g++)
        for (size_t c = 0; c < n; c++)
            if (!fmt_put_float(QD_DTYPE_F16, d, g * n + c, q->scales[c * ng + g]))
                return qd_error_set(err, QD_ERR_INVALID_ARG, "awq: layer '%s': scale %g at row "
                                    "%zu group %zu overflows fp16", prefix,
                                    (double)q->scales[c * ng + g], c, g);

    return fmt_add_bias(out, AWQ_NAME, prefix, QD_DTYPE_F16, q, err);
}

static qd_err awq_pack(const qd_format_params *p, const qd_qlinear *q, const char *prefix,
                       qd_packed_list *out, qd_error *err) {
    if (!prefix) prefix = "";
    qd_err rc = awq_layout(p, q ? q->n : 0, q ? q->k : 0, err);
    if (rc) return rc;
    if ((rc = fmt_check_q(AWQ_NAME, p, q, prefix, 0, 15, 0, err))) return rc;
    int n0 = out->n;
    rc = awq_pack_tensors(q, prefix, out, err);
    if (rc) fmt_truncate(out, n0);
    return rc;
}

static qd_err awq_unpack_into(const fmt_src *s, const qd_format_params *p, qd_qlinear *q,
                              qd_error *err) {
    int64_t any2[2] = {-1, -1};
    qd_tensor tw, tz, ts;
    qd_err rc = awq_layout(p, 0, 0, err);
    if (rc) return rc;
    if ((rc = fmt_fetch(s, "qweight", true, FMT_BIT(QD_DTYPE_I32), 2, any2, &tw, NULL, err)))
        return rc;
    if ((rc = fmt_check_dim(s, "in_features (qweight rows)", tw.shape[0], err)) ||
        (rc = fmt_check_dim(s, "out_features / 8 (qweight columns)", tw.shape[1], err)))
        return rc;
    int k = (int)tw.shape[0], n = (int)tw.shape[1] * 8;
    if ((rc = fmt_check_dim(s, "out_features", n, err)) || (rc = awq_layout(p, n, k, err)))
        return rc;
    int g = fmt_group(p->group_size, k);
    if ((rc = fmt_new_q(s, q, n, k, QD_QTYPE_INT, 4, g, QD_QRULE_ASYM_MINMAX, err))) return rc;
    const size_t nw = (size_t)n / 8, ng = (size_t)q->n_groups, kk = (size_t)k;

    int64_t zshape[2] = {(int64_t)ng, (int64_t)nw}, sshape[2] = {(int64_t)ng, n};
    if ((rc = fmt_fetch(s, "qzeros", true, FMT_BIT(QD_DTYPE_I32), 2, zshape, &tz, NULL, err)) ||
        (rc = fmt_fetch(s, "scales", true, FMT_FLOATS, 2, sshape, &ts, NULL, err)))
        return rc;

    for (size_t r = 0; r < kk; r++)
        for (size_t j = 0; j < nw; j++) {
            uint32_t w = fmt_ld_u32(tw.data, r * nw + j);
            for (int i = 0; i < 8; i++)
                q->codes[(8 * j + (size_t)AWQ_ORDER[i]) * kk + r] = (uint8_t)(w >> (4 * i) & 15);
        }
    for (size_t gi = 0; gi < ng; gi++)
        for (size_t j = 0; j < nw; j++) {
            uint32_t w = fmt_ld_u32(tz.data, gi * nw + j);
            for (int i = 0; i < 8; i++)
                q->zeros[(8 * j + (size_t)AWQ_ORDER[i]) * ng + gi] = (float)(w >> (4 * i) & 15);
        }
    for (size_t gi = 0; gi < ng; gi++)
        for (size_t c = 0; c < (size_t)n; c++)
            q->scales[c * ng + gi] = fmt_get_float(ts.dtype, ts.data, gi * (size_t)n + c);
    return fmt_read_bias(s, q, err);
}

static qd_err awq_unpack(const qd_format_params *p, const char *prefix,
                         qd_format_lookup lookup, void *ctx, qd_qlinear *ret_q, qd_error *err) {
    fmt_src s = {AWQ_NAME, prefix ? prefix : "", lookup, ctx};
    qd_qlinear q;
    memset(&q, 0, sizeof q);
    qd_err rc = awq_unpack_into(&s, p, &q, err);
    if (rc) {
        qd_qlinear_free(&q);
        return rc;
    }
    *ret_q = q;
    return QD_OK;
}

/* AwqConfig.to_transformers_dict, in its key order. */
static qd_err awq_config(const qd_format_params *p, json_t **ret, qd_error *err) {
    qd_err rc = awq_check(p, 0, 0, err);
    if (rc) return rc;
    json_t *o = json_object();
    bool ok = o != NULL;
    ok = ok && fmt_jset(o, "quant_method", json_string("awq"));
    ok = ok && fmt_jset(o, "zero_point", json_true());
    ok = ok && fmt_jset(o, "group_size", json_integer(p->group_size > 0 ? p->group_size : -1));
    ok = ok && fmt_jset(o, "bits", json_integer(p->bits));
    ok = ok && fmt_jset(o, "version", json_string("gemm"));
    ok = ok && fmt_jset(o, "modules_to_not_convert",
                        p->n_ignore ? fmt_json_ignore(p) : json_null());
    return fmt_json_done(AWQ_NAME, o, ok, ret, err);
}

const qd_format qd_format_awq = {
    .name = AWQ_NAME,
    .quant_method = "awq",
    .side_config_name = NULL,
    .check = awq_check,
    .pack = awq_pack,
    .unpack = awq_unpack,
    .quantization_config = awq_config,
    .side_config = NULL,
};
