/*
 * gptq.c - the GPTQ format written by AutoGPTQ (checkpoint_format "gptq", here "gptq") and
 * GPTQModel ("gptq_v2"), docs/formats.md section 2; read by vLLM (gptq, gptq_marlin),
 * transformers and DashInfer (formats/dashinfer.c builds on this file's table).
 *
 * Per linear <prefix> with W [N, K], b-bit codes q[n, k] (b = 2, 4 or 8; pf = 32 / b values
 * per word), group size G, NG = ceil(K / G) groups, integer zeros z[n, g]:
 *
 *   qweight  I32 [K / pf, N]   word (r, n) bits [b*j, b*j + b) = q[n, pf*r + j]   (along K)
 *   qzeros   I32 [NG, N / pf]  word (g, c) bits [b*j, ...)     = z[pf*c + j, g] - off
 *   scales   F16 [NG, N]       scales[g, n] = s[n, g]
 *   g_idx    I32 [K]           group of each input column (always written)
 *   bias     F16 [N]           when the layer has one
 *
 * Both axes pack SEQUENTIALLY (value j in bits b*j), unlike AWQ's interleave. off = 1 in v1
 * (AutoGPTQ's "zeros -= 1"; readers add the 1 back) and 0 in v2. Columns stay in their
 * original order under act-order; g_idx says which group (row of scales/qzeros) each column
 * uses, and with static groups it is simply k / G.
 *
 * v1 cannot store a zero of 0: z - 1 = -1 sets every bit of the word above it (the bug that
 * made GPTQModel introduce v2). So "gptq" takes symmetric layers only (zero 2^(b-1): every
 * qzeros word of a 4-bit layer is 0x77777777), and pack() refuses any zero below 1; asymmetric
 * layers go to "gptq_v2". Reading v1 back adds the 1 to each field as vLLM and DashInfer do, so
 * a field of all ones reads as 2^b, which is what those kernels compute with.
 *
 * 3-bit GPTQ spreads values across word boundaries (10 + 1 + 10 + 1 + 10 per 3 words);
 * quantd does not write it.
 */
#include "format_internal.h"

typedef struct gptq_variant {
    const char *name;              /* format name, for messages */
    const char *checkpoint_format; /* config value */
    int zero_off;                  /* subtracted from each zero when packing */
} gptq_variant;

static const gptq_variant GPTQ_V1 = {"gptq", "gptq", 1};
static const gptq_variant GPTQ_V2 = {"gptq_v2", "gptq_v2", 0};

static qd_err gptq_layout(const gptq_variant *v, const qd_format_params *p, int n, int k,
                          qd_error *err) {
    qd_err rc = fmt_check_params(v->name, p, err);
    if (rc) return rc;
    if (p->type != QD_QTYPE_INT)
        return qd_error_set(err, QD_ERR_UNSUPPORTED, "%s: GPTQ holds integer weights only; "
                            "write fp8 weights as compressed-tensors", v->name);
    if (p->bits == 3)
        return qd_error_set(err, QD_ERR_UNSUPPORTED, "%s: 3-bit GPTQ uses a cross-word layout "
                            "quantd does not write; use 4 or 8 bits", v->name);
    if (p->bits != 2 && p->bits != 4 && p->bits != 8)
        return qd_error_set(err, QD_ERR_UNSUPPORTED, "%s: GPTQ packs 2, 4 or 8 bits (got %d)",
                            v->name, p->bits);
    if (!p->symmetric && v->zero_off)
        return qd_error_set(err, QD_ERR_UNSUPPORTED, "%s: checkpoint_format 'gptq' (v1) stores "
                            "zero - 1, so an asymmetric zero of 0 underflows; write "
                            "asymmetric GPTQ as gptq_v2 (checkpoint_format 'gptq_v2'), or use "
                            "awq or compressed-tensors", v->name);
    if (p->act != QD_FORMAT_ACT_NONE)
        return qd_error_set(err, QD_ERR_UNSUPPORTED, "%s: weight-only format; activation "
                            "quantization needs compressed-tensors or modelopt", v->name);
    int pf = 32 / p->bits;
    if (n > 0 && n % pf != 0)
        return qd_error_set(err, QD_ERR_UNSUPPORTED, "%s: out_features %d is not a multiple of "
                            "%d (qzeros packs %d zero points per int32)", v->name, n, pf, pf);
    if (k > 0 && k % pf != 0)
        return qd_error_set(err, QD_ERR_UNSUPPORTED, "%s: in_features %d is not a multiple of "
                            "%d (qweight packs %d input columns per int32)", v->name, k, pf, pf);
    return QD_OK;
}

static qd_err gptq_pack_tensors(const gptq_variant *v, const qd_qlinear *q, const char *prefix,
                                qd_packed_list *out, qd_error *err) {
    const int b = q->bits, pf = 32 / b;
    const uint32_t mask = (1u << b) - 1;
    const size_t n = (size_t)q->n, k = (size_t)q->k, ng = (size_t)q->n_groups;
    const size_t rows = k / (size_t)pf, zc = n / (size_t)pf;
    const int g = fmt_group(q->group_size, q->k);
    int64_t shape[2];
    void *d;
    qd_err rc;

    shape[0] = (int64_t)rows;
    shape[1] = q->n;
    if ((rc = fmt_add(out, v->name, prefix, "qweight", QD_DTYPE_I32, 2, shape, &d, err)))
        return rc;
    uint32_t *qw = d;
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < n; c++) {
            uint32_t w = 0;
            for (int j = 0; j < pf; j++)
                w |= (uint32_t)q->codes[c * k + r * (size_t)pf + (size_t)j] << (b * j);
            qw[r * n + c] = w;
        }

    shape[0] = (int64_t)ng;
    shape[1] = (int64_t)zc;
    if ((rc = fmt_add(out, v->name, prefix, "qzeros", QD_DTYPE_I32, 2, shape, &d, err)))
        return rc;
    uint32_t *qz = d;
    for (size_t gi = 0; gi < ng; gi++)
        for (size_t c = 0; c < zc; c++) {
            uint32_t w = 0;
            for (int j = 0; j < pf; j++) {
                int z = (int)q->zeros[(c * (size_t)pf + (size_t)j) * ng + gi] - v->zero_off;
                w |= ((uint32_t)z & mask) << (b * j);
            }
            qz[gi * zc + c] = w;
        }

    shape[1] = q->n;
    if ((rc = fmt_add(out, v->name, prefix, "scales", QD_DTYPE_F16, 2, shape, &d, err)))
        return rc;
    for (size_t gi = 0; gi < ng; gi++)
        for (size_t c = 0; c < n; c++)
            if (!fmt_put_float(QD_DTYPE_F16, d, gi * n + c, q->scales[c * ng + gi]))
                return qd_error_set(err, QD_ERR_INVALID_ARG, "%s: layer '%s': scale %g at row "
                                    "%zu group %zu overflows fp16", v->name, prefix,
                                    (double)q->scales[c * ng + gi], c, gi);

    shape[0] = q->k;
    if ((rc = fmt_add(out, v->name, prefix, "g_idx", QD_DTYPE_I32, 1, shape, &d, err)))
        return rc;
    int32_t *gx = d;
    for (int c = 0; c < q->k; c++) gx[c] = q->g_idx ? q->g_idx[c] : c / g;

    return fmt_add_bias(out, v->name, prefix, QD_DTYPE_F16, q, err);
}

static qd_err gptq_pack_variant(const gptq_variant *v, const qd_format_params *p,
                                const qd_qlinear *q, const char *prefix, qd_packed_list *out,
                                qd_error *err) {
    if (!prefix) prefix = "";
    qd_err rc = gptq_layout(v, p, q ? q->n : 0, q ? q->k : 0, err);
    if (rc) return rc;
    /* v1 stores z - 1 in b bits: 1..2^b - 1 survive (0 would underflow, see above) */
    int zlo = v->zero_off, zhi = (1 << p->bits) - 1;
    if ((rc = fmt_check_q(v->name, p, q, prefix, zlo, zhi, FMT_TAKES_G_IDX, err))) return rc;
    int n0 = out->n;
    rc = gptq_pack_tensors(v, q, prefix, out, err);
    if (rc) fmt_truncate(out, n0);
    return rc;
}

static qd_err gptq_unpack_into(const gptq_variant *v, const fmt_src *s,
                               const qd_format_params *p, qd_qlinear *q, qd_error *err) {
    qd_err rc = gptq_layout(v, p, 0, 0, err);
    if (rc) return rc;
    const int b = p->bits, pf = 32 / b;
    const uint32_t mask = (1u << b) - 1;
    int64_t any2[2] = {-1, -1};
    qd_tensor tw, tz, ts;
    if ((rc = fmt_fetch(s, "qweight", true, FMT_BIT(QD_DTYPE_I32), 2, any2, &tw, NULL, err)))
        return rc;
    if ((rc = fmt_check_dim(s, "qweight rows", tw.shape[0], err)) ||
        (rc = fmt_check_dim(s, "out_features (qweight columns)", tw.shape[1], err)))
        return rc;
    int64_t k64 = tw.shape[0] * pf;
    if ((rc = fmt_check_dim(s, "in_features", k64, err))) return rc;
    int k = (int)k64, n = (int)tw.shape[1];
    if ((rc = gptq_layout(v, p, n, k, err))) return rc;
    qd_qrule rule = p->symmetric ? QD_QRULE_SYM_HALF : QD_QRULE_ASYM_ZERO_IN_RANGE;
    if ((rc = fmt_new_q(s, q, n, k, QD_QTYPE_INT, b, fmt_group(p->group_size, k), rule, err)))
        return rc;
    const size_t nn = (size_t)n, kk = (size_t)k, ng = (size_t)q->n_groups;
    const size_t rows = kk / (size_t)pf, zc = nn / (size_t)pf;

    int64_t zshape[2] = {(int64_t)ng, (int64_t)zc}, sshape[2] = {(int64_t)ng, n};
    if ((rc = fmt_fetch(s, "qzeros", true, FMT_BIT(QD_DTYPE_I32), 2, zshape, &tz, NULL, err)) ||
        (rc = fmt_fetch(s, "scales", true, FMT_FLOATS, 2, sshape, &ts, NULL, err)))
        return rc;
    /* g_idx is always written by AutoGPTQ/GPTQModel, but only act-order needs it */
    if ((rc = fmt_read_g_idx(s, "g_idx", p->act_order && !p->static_groups, q, err))) return rc;

    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < nn; c++) {
            uint32_t w = fmt_ld_u32(tw.data, r * nn + c);
            for (int j = 0; j < pf; j++)
                q->codes[c * kk + r * (size_t)pf + (size_t)j] = (uint8_t)(w >> (b * j) & mask);
        }
    for (size_t gi = 0; gi < ng; gi++)
        for (size_t c = 0; c < zc; c++) {
            uint32_t w = fmt_ld_u32(tz.data, gi * zc + c);
            for (int j = 0; j < pf; j++)
                q->zeros[(c * (size_t)pf + (size_t)j) * ng + gi] =
                    (float)((w >> (b * j) & mask) + (uint32_t)v->zero_off);
        }
    for (size_t gi = 0; gi < ng; gi++)
        for (size_t c = 0; c < nn; c++)
            q->scales[c * ng + gi] = fmt_get_float(ts.dtype, ts.data, gi * nn + c);
    return fmt_read_bias(s, q, err);
}

static qd_err gptq_unpack_variant(const gptq_variant *v, const qd_format_params *p,
                                  const char *prefix, qd_format_lookup lookup, void *ctx,
                                  qd_qlinear *ret_q, qd_error *err) {
    fmt_src s = {v->name, prefix ? prefix : "", lookup, ctx};
    qd_qlinear q;
    memset(&q, 0, sizeof q);
    qd_err rc = gptq_unpack_into(v, &s, p, &q, err);
    if (rc) {
        qd_qlinear_free(&q);
        return rc;
    }
    *ret_q = q;
    return QD_OK;
}

/* AutoGPTQ's BaseQuantizeConfig.to_dict, in its key order (also quantize_config.json). */
static qd_err gptq_config_variant(const gptq_variant *v, const qd_format_params *p,
                                  json_t **ret, qd_error *err) {
    qd_err rc = gptq_layout(v, p, 0, 0, err);
    if (rc) return rc;
    json_t *o = json_object();
    bool ok = o != NULL;
    ok = ok && fmt_jset(o, "bits", json_integer(p->bits));
    ok = ok && fmt_jset(o, "group_size", json_integer(p->group_size > 0 ? p->group_size : -1));
    ok = ok && fmt_jset(o, "damp_percent", json_real(p->damp_percent));
    ok = ok && fmt_jset(o, "desc_act", json_boolean(p->act_order));
    ok = ok && fmt_jset(o, "static_groups", json_boolean(p->act_order && p->static_groups));
    ok = ok && fmt_jset(o, "sym", json_boolean(p->symmetric));
    ok = ok && fmt_jset(o, "true_sequential", json_boolean(p->true_sequential));
    ok = ok && fmt_jset(o, "model_name_or_path", json_null());
    ok = ok && fmt_jset(o, "model_file_base_name", json_null());
    ok = ok && fmt_jset(o, "quant_method", json_string("gptq"));
    ok = ok && fmt_jset(o, "checkpoint_format", json_string(v->checkpoint_format));
    return fmt_json_done(v->name, o, ok, ret, err);
}

/* ---- the two tables ---- */

static qd_err gptq_v1_check(const qd_format_params *p, int n, int k, qd_error *err) {
    return gptq_layout(&GPTQ_V1, p, n, k, err);
}
static qd_err gptq_v1_pack(const qd_format_params *p, const qd_qlinear *q, const char *prefix,
                           qd_packed_list *out, qd_error *err) {
    return gptq_pack_variant(&GPTQ_V1, p, q, prefix, out, err);
}
static qd_err gptq_v1_unpack(const qd_format_params *p, const char *prefix,
                             qd_format_lookup lookup, void *ctx, qd_qlinear *ret_q,
                             qd_error *err) {
    return gptq_unpack_variant(&GPTQ_V1, p, prefix, lookup, ctx, ret_q, err);
}
static qd_err gptq_v1_config(const qd_format_params *p, json_t **ret, qd_error *err) {
    return gptq_config_variant(&GPTQ_V1, p, ret, err);
}

static qd_err gptq_v2_check(const qd_format_params *p, int n, int k, qd_error *err) {
    return gptq_layout(&GPTQ_V2, p, n, k, err);
}
static qd_err gptq_v2_pack(const qd_format_params *p, const qd_qlinear *q, const char *prefix,
                           qd_packed_list *out, qd_error *err) {
    return gptq_pack_variant(&GPTQ_V2, p, q, prefix, out, err);
}
static qd_err gptq_v2_unpack(const qd_format_params *p, const char *prefix,
                             qd_format_lookup lookup, void *ctx, qd_qlinear *ret_q,
                             qd_error *err) {
    return gptq_unpack_variant(&GPTQ_V2, p, prefix, lookup, ctx, ret_q, err);
}
static qd_err gptq_v2_config(const qd_format_params *p, json_t **ret, qd_error *err) {
    return gptq_config_variant(&GPTQ_V2, p, ret, err);
}

/* AutoGPTQ writes the same dict to quantize_config.json and config.json. */
const qd_format qd_format_gptq = {
    .name = "gptq",
    .quant_method = "gptq",
    .side_config_name = "quantize_config.json",
    .check = gptq_v1_check,
    .pack = gptq_v1_pack,
    .unpack = gptq_v1_unpack,
    .quantization_config = gptq_v1_config,
    .side_config = gptq_v1_config,
};

const qd_format qd_format_gptq_v2 = {
    .name = "gptq_v2",
    .quant_method = "gptq",
    .side_config_name = "quantize_config.json",
    .check = gptq_v2_check,
    .pack = gptq_v2_pack,
    .unpack = gptq_v2_unpack,
    .quantization_config = gptq_v2_config,
    .side_config = gptq_v2_config,
};
