/*
 * ctensors.c - compressed-tensors (quant_method "compressed-tensors", as llm-compressor writes
 * it), docs/formats.md section 3; read by vLLM (CompressedTensorsWNA16, W8A8Int8, W8A8Fp8).
 *
 * The spec picks the compression format the way llm-compressor's
 * _get_quant_compression_format does:
 *
 *   int weights, weight-only          pack-quantized   (W4A16, W8A16; sym or asym)
 *   int8 weights + int8 activations   int-quantized    (W8A8, symmetric per channel)
 *   fp8 weights + fp8 activations     float-quantized  (FP8, FP8_DYNAMIC)
 *
 * Tensors per linear <prefix> (W [N, K], b-bit, pf = 32 / b, NG = ceil(K / G) groups, dt =
 * the model dtype):
 *
 *   pack-quantized
 *     weight_packed      I32 [N, ceil(K/pf)]  word (n, c) bits [b*i, ...) = q[n, pf*c + i];
 *                                             K padded with 0 fields
 *     weight_scale       dt  [N, NG]          ([N, 1] per channel)
 *     weight_zero_point  I32 [ceil(N/pf), NG] asymmetric only; word (r, g) bits [b*i, ...)
 *                                             = z[pf*r + i, g], packed along N, N padded with 0
 *     weight_shape       I64 [2]              = [N, K]
 *     weight_g_idx       I32 [K]              actorder "group" only
 *   int-quantized: weight I8 [N, K] = q - 128, weight_scale dt [N, 1], input_scale dt [1]
 *   float-quantized: weight F8_E4M3 [N, K], weight_scale dt [1] (per tensor) or [N, 1],
 *     input_scale dt [1]
 *   input_scale only for static (per-tensor) activations; bias dt [N] when present.
 *
 * Code domain: compressed-tensors quantizes to the signed range [-2^(b-1), 2^(b-1) - 1] and
 * packs value + 2^(b-1), zero points likewise; a signed value plus 2^(b-1) is exactly
 * qlinear's unsigned code, so the packed fields ARE the unsigned codes and zeros (and a
 * symmetric layer's fields equal GPTQ's uint4b8 codes).
 *
 * Config: ModelCompressor.update_config's dict, built in sort_keys order, with the
 * QuantizationArgs fields of compressed-tensors 0.12.2 (the version whose layout this file
 * follows; it goes into "version"). Asymmetric group layers need K % G == 0 because the
 * zero-point shape is computed with floor division (compression_param_info) while the scale
 * shape uses ceil.
 */
#include "format_internal.h"

#define CT_NAME "compressed-tensors"
#define CT_VERSION "0.12.2"

typedef enum ct_kind {
    CT_PACK = 0,
    CT_INT,
    CT_FLOAT,
} ct_kind;

static const char *const CT_FORMAT_NAMES[] = {"pack-quantized", "int-quantized",
                                              "float-quantized"};

/* Which compression format the spec maps to; QD_ERR_UNSUPPORTED when none. */
static qd_err ct_kind_of(const qd_format_params *p, ct_kind *ret, qd_error *err) {
    if (p->type == QD_QTYPE_INT) {
        if (p->act == QD_FORMAT_ACT_NONE) {
            *ret = CT_PACK;
            return QD_OK;
        }
        if (p->act == QD_FORMAT_ACT_INT8_TOKEN || p->act == QD_FORMAT_ACT_INT8_TENSOR) {
            *ret = CT_INT;
            return QD_OK;
        }
        return qd_error_set(err, QD_ERR_UNSUPPORTED, "compressed-tensors: int weights with fp8 "
                            "activations have no compressed-tensors scheme vLLM reads; use "
                            "modelopt (W4A8_AWQ) or fp8 weights");
    }
    if (p->act == QD_FORMAT_ACT_FP8_TOKEN || p->act == QD_FORMAT_ACT_FP8_TENSOR) {
        *ret = CT_FLOAT;
        return QD_OK;
    }
    return qd_error_set(err, QD_ERR_UNSUPPORTED, "compressed-tensors: fp8 weights are written "
                        "with fp8 activations (float-quantized); weight-only or int8 "
                        "activations have no float-quantized scheme");
}

static qd_err ct_layout(const qd_format_params *p, int n, int k, ct_kind *ret_kind,
                        qd_error *err) {
    (void)n;
    qd_err rc = fmt_check_params(CT_NAME, p, err);
    if (rc) return rc;
    ct_kind kind = CT_PACK;
    if ((rc = ct_kind_of(p, &kind, err))) return rc;
    if (p->weight_per_tensor && kind != CT_FLOAT)
        return qd_error_set(err, QD_ERR_UNSUPPORTED, "compressed-tensors: per-tensor weight "
                            "scales are written for fp8 weights only");
    switch (kind) {
    case CT_PACK:
        if (p->bits != 4 && p->bits != 8)
            return qd_error_set(err, QD_ERR_UNSUPPORTED, "compressed-tensors: pack-quantized "
                                "weights are 4 or 8 bits for vLLM's WNA16 kernels (got %d)",
                                p->bits);
        if (!p->symmetric && p->group_size > 0 && k > 0 && k % p->group_size != 0)
            return qd_error_set(err, QD_ERR_UNSUPPORTED, "compressed-tensors: asymmetric "
                                "groups need in_features %% group_size == 0 (in_features %d, "
                                "group_size %d): the zero-point shape rounds down", k,
                                p->group_size);
        break;
    case CT_INT:
        if (p->bits != 8)
            return qd_error_set(err, QD_ERR_UNSUPPORTED, "compressed-tensors: int-quantized "
                                "(W8A8) weights are 8-bit (got %d); weight-only %d-bit is "
                                "pack-quantized", p->bits, p->bits);
        if (!p->symmetric)
            return qd_error_set(err, QD_ERR_UNSUPPORTED, "compressed-tensors: int-quantized "
                                "weights must be symmetric (vLLM's int8 W8A8 kernels have no "
                                "weight zero point)");
        if (p->group_size > 0)
            return qd_error_set(err, QD_ERR_UNSUPPORTED, "compressed-tensors: int-quantized "
                                "weights are per output channel; group_size %d is not",
                                p->group_size);
        break;
    case CT_FLOAT:
        if (!p->symmetric)
            return qd_error_set(err, QD_ERR_UNSUPPORTED, "compressed-tensors: fp8 weights are "
                                "symmetric (no zero point)");
        if (p->group_size > 0)
            return qd_error_set(err, QD_ERR_UNSUPPORTED, "compressed-tensors: fp8 weights are "
                                "per tensor or per output channel; group_size %d is not",
                                p->group_size);
        break;
    }
    *ret_kind = kind;
    return QD_OK;
}

static qd_err ct_check(const qd_format_params *p, int n, int k, qd_error *err) {
    ct_kind kind = CT_PACK;
    return ct_layout(p, n, k, &kind, err);
}

/* Config-level strategy and actorder. */
static bool ct_group_strategy(const qd_format_params *p) {
    return p->group_size > 0;
}

/* actorder "group": non-contiguous groups, stored as weight_g_idx. */
static bool ct_actorder_group(const qd_format_params *p) {
    return ct_group_strategy(p) && p->act_order && !p->static_groups;
}

static qd_err ct_put_scale(qd_dtype dt, void *d, size_t i, float v, const char *prefix,
                           const char *what, qd_error *err) {
    if (!fmt_put_float(dt, d, i, v))
        return qd_error_set(err, QD_ERR_INVALID_ARG, "compressed-tensors: layer '%s': %s %g "
                            "overflows %s", prefix, what, (double)v, qd_dtype_name(dt));
    return QD_OK;
}

static qd_err ct_pack_packed(const qd_format_params *p, const qd_qlinear *q,
                             const char *prefix, qd_packed_list *out, qd_error *err) {
    const int b = q->bits, pf = 32 / b;
    const size_t n = (size_t)q->n, k = (size_t)q->k, ng = (size_t)q->n_groups;
    const size_t wc = (k + (size_t)pf - 1) / (size_t)pf, zr = (n + (size_t)pf - 1) / (size_t)pf;
    int64_t shape[2];
    void *d;
    qd_err rc;

    shape[0] = q->n;
    shape[1] = (int64_t)wc;
    if ((rc = fmt_add(out, CT_NAME, prefix, "weight_packed", QD_DTYPE_I32, 2, shape, &d, err)))
        return rc;
    uint32_t *wp = d;
    for (size_t r = 0; r < n; r++)
        for (size_t c = 0; c < wc; c++) {
            uint32_t w = 0;
            for (int i = 0; i < pf; i++) {
                size_t col = c * (size_t)pf + (size_t)i;
                if (col < k) w |= (uint32_t)q->codes[r * k + col] << (b * i);
            }
            wp[r * wc + c] = w;
        }

    shape[1] = (int64_t)ng;
    if ((rc = fmt_add(out, CT_NAME, prefix, "weight_scale", p->dtype, 2, shape, &d, err)))
        return rc;
    for (size_t i = 0; i < n * ng; i++)
        if ((rc = ct_put_scale(p->dtype, d, i, q->scales[i], prefix, "weight scale", err)))
            return rc;

    if (!p->symmetric) {
        shape[0] = (int64_t)zr;
        if ((rc = fmt_add(out, CT_NAME, prefix, "weight_zero_point", QD_DTYPE_I32, 2, shape, &d,
                          err)))
            return rc;
        uint32_t *zp = d;
        for (size_t r = 0; r < zr; r++)
            for (size_t gi = 0; gi < ng; gi++) {
                uint32_t w = 0;
                for (int i = 0; i < pf; i++) {
                    size_t row = r * (size_t)pf + (size_t)i;
                    if (row < n) w |= (uint32_t)q->zeros[row * ng + gi] << (b * i);
                }
                zp[r * ng + gi] = w;
            }
    }

    shape[0] = 2;
    if ((rc = fmt_add(out, CT_NAME, prefix, "weight_shape", QD_DTYPE_I64, 1, shape, &d, err)))
        return rc;
    int64_t ws[2] = {q->n, q->k};
    memcpy(d, ws, sizeof ws);

    if (ct_actorder_group(p)) {
        shape[0] = q->k;
        if ((rc = fmt_add(out, CT_NAME, prefix, "weight_g_idx", QD_DTYPE_I32, 1, shape, &d, err)))
            return rc;
        int32_t *gx = d;
        int g = fmt_group(q->group_size, q->k);
        for (int c = 0; c < q->k; c++) gx[c] = q->g_idx ? q->g_idx[c] : c / g;
    }
    return QD_OK;
}

/* int-/float-quantized: weight [N, K] unpacked, per-channel or per-tensor scale, input_scale. */
static qd_err ct_pack_naive(const qd_format_params *p, ct_kind kind, const qd_qlinear *q,
                            const char *prefix, qd_packed_list *out, qd_error *err) {
    const size_t n = (size_t)q->n, k = (size_t)q->k;
    int64_t shape[2] = {q->n, q->k};
    void *d;
    qd_err rc;
    qd_dtype wdt = kind == CT_INT ? QD_DTYPE_I8 : QD_DTYPE_F8_E4M3;
    if ((rc = fmt_add(out, CT_NAME, prefix, "weight", wdt, 2, shape, &d, err))) return rc;
    if (kind == CT_INT) {
        int8_t *w = d;
        for (size_t i = 0; i < n * k; i++) w[i] = (int8_t)((int)q->codes[i] - 128);
    } else {
        memcpy(d, q->codes, n * k);
    }

    bool per_tensor = kind == CT_FLOAT && p->weight_per_tensor;
    if (per_tensor) {
        for (size_t r = 1; r < n; r++)
            if (q->scales[r] != q->scales[0])
                return qd_error_set(err, QD_ERR_INVALID_ARG, "compressed-tensors: layer '%s': "
                                    "per-tensor fp8 weights need one scale, but row %zu has %g "
                                    "and row 0 %g", prefix, r, (double)q->scales[r],
                                    (double)q->scales[0]);
        shape[0] = 1;
        if ((rc = fmt_add(out, CT_NAME, prefix, "weight_scale", p->dtype, 1, shape, &d, err)))
            return rc;
        if ((rc = ct_put_scale(p->dtype, d, 0, q->scales[0], prefix, "weight scale", err)))
            return rc;
    } else {
        shape[1] = 1;
        if ((rc = fmt_add(out, CT_NAME, prefix, "weight_scale", p->dtype, 2, shape, &d, err)))
            return rc;
        for (size_t r = 0; r < n; r++)
            if ((rc = ct_put_scale(p->dtype, d, r, q->scales[r], prefix, "weight scale", err)))
                return rc;
    }

    if (fmt_act_static(p->act)) {
        shape[0] = 1;
        if ((rc = fmt_add(out, CT_NAME, prefix, "input_scale", p->dtype, 1, shape, &d, err)))
            return rc;
        if ((rc = ct_put_scale(p->dtype, d, 0, q->act_scale, prefix, "input scale", err)))
            return rc;
    }
    return QD_OK;
}

static qd_err ct_pack(const qd_format_params *p, const qd_qlinear *q, const char *prefix,
                      qd_packed_list *out, qd_error *err) {
    if (!prefix) prefix = "";
    ct_kind kind = CT_PACK;
    qd_err rc = ct_layout(p, q ? q->n : 0, q ? q->k : 0, &kind, err);
    if (rc) return rc;
    int qmax = (1 << p->bits) - 1;
    if ((rc = fmt_check_q(CT_NAME, p, q, prefix, 0, qmax,
                          ct_actorder_group(p) ? FMT_TAKES_G_IDX : 0u, err)))
        return rc;
    int n0 = out->n;
    rc = kind == CT_PACK ? ct_pack_packed(p, q, prefix, out, err)
                         : ct_pack_naive(p, kind, q, prefix, out, err);
    if (!rc) rc = fmt_add_bias(out, CT_NAME, prefix, p->dtype, q, err);
    if (rc) fmt_truncate(out, n0);
    return rc;
}

static qd_err ct_unpack_packed(const fmt_src *s, const qd_format_params *p, qd_qlinear *q,
                               qd_error *err) {
    const int b = p->bits, pf = 32 / b;
    int64_t two[1] = {2};
    qd_tensor tsh, tw, ts, tz;
    qd_err rc = fmt_fetch(s, "weight_shape", true,
                          FMT_BIT(QD_DTYPE_I64) | FMT_BIT(QD_DTYPE_I32), 1, two, &tsh, NULL,
                          err);
    if (rc) return rc;
    int64_t n64 = tsh.dtype == QD_DTYPE_I64 ? fmt_ld_i64(tsh.data, 0) : fmt_ld_i32(tsh.data, 0);
    int64_t k64 = tsh.dtype == QD_DTYPE_I64 ? fmt_ld_i64(tsh.data, 1) : fmt_ld_i32(tsh.data, 1);
    if ((rc = fmt_check_dim(s, "out_features (weight_shape[0])", n64, err)) ||
        (rc = fmt_check_dim(s, "in_features (weight_shape[1])", k64, err)))
        return rc;
    int n = (int)n64, k = (int)k64;
    ct_kind kind = CT_PACK;
    if ((rc = ct_layout(p, n, k, &kind, err))) return rc;
    const int g = fmt_group(p->group_size, k);
    const size_t nn = (size_t)n, kk = (size_t)k, ng = (size_t)fmt_cdiv(k, g);
    const size_t wc = (kk + (size_t)pf - 1) / (size_t)pf, zr = (nn + (size_t)pf - 1) / (size_t)pf;
    const uint32_t mask = (1u << b) - 1;

    /* weight_shape is only a claim: check it against the data before allocating for it */
    int64_t wshape[2] = {n, (int64_t)wc}, sshape[2] = {n, (int64_t)ng};
    int64_t zshape[2] = {(int64_t)zr, (int64_t)ng};
    if ((rc = fmt_fetch(s, "weight_packed", true, FMT_BIT(QD_DTYPE_I32), 2, wshape, &tw, NULL,
                        err)) ||
        (rc = fmt_fetch(s, "weight_scale", true, FMT_FLOATS, 2, sshape, &ts, NULL, err)) ||
        (!p->symmetric && (rc = fmt_fetch(s, "weight_zero_point", true, FMT_BIT(QD_DTYPE_I32),
                                          2, zshape, &tz, NULL, err))))
        return rc;
    qd_qrule rule = p->symmetric ? QD_QRULE_SYM_HALF : QD_QRULE_ASYM_ZERO_IN_RANGE;
    if ((rc = fmt_new_q(s, q, n, k, QD_QTYPE_INT, b, g, rule, err))) return rc;
    for (size_t r = 0; r < nn; r++)
        for (size_t c = 0; c < wc; c++) {
            uint32_t w = fmt_ld_u32(tw.data, r * wc + c);
            for (int i = 0; i < pf; i++) {
                size_t col = c * (size_t)pf + (size_t)i;
                if (col < kk) q->codes[r * kk + col] = (uint8_t)(w >> (b * i) & mask);
            }
        }
    for (size_t i = 0; i < nn * ng; i++) q->scales[i] = fmt_get_float(ts.dtype, ts.data, i);
    if (p->symmetric) {
        for (size_t i = 0; i < nn * ng; i++) q->zeros[i] = (float)fmt_sym_zero(b);
    } else {
        for (size_t r = 0; r < zr; r++)
            for (size_t gi = 0; gi < ng; gi++) {
                uint32_t w = fmt_ld_u32(tz.data, r * ng + gi);
                for (int i = 0; i < pf; i++) {
                    size_t row = r * (size_t)pf + (size_t)i;
                    if (row < nn) q->zeros[row * ng + gi] = (float)(w >> (b * i) & mask);
                }
            }
    }
    return fmt_read_g_idx(s, "weight_g_idx", ct_actorder_group(p), q, err);
}

static qd_err ct_unpack_naive(const fmt_src *s, const qd_format_params *p, ct_kind kind,
                              qd_qlinear *q, qd_error *err) {
    qd_dtype wdt = kind == CT_INT ? QD_DTYPE_I8 : QD_DTYPE_F8_E4M3;
    int64_t any2[2] = {-1, -1};
    qd_tensor tw, ts;
    qd_err rc = fmt_fetch(s, "weight", true, FMT_BIT(wdt), 2, any2, &tw, NULL, err);
    if (rc) return rc;
    if ((rc = fmt_check_dim(s, "out_features (weight rows)", tw.shape[0], err)) ||
        (rc = fmt_check_dim(s, "in_features (weight columns)", tw.shape[1], err)))
        return rc;
    int n = (int)tw.shape[0], k = (int)tw.shape[1];
    qd_qtype type = kind == CT_INT ? QD_QTYPE_INT : QD_QTYPE_FP8_E4M3;
    if ((rc = fmt_new_q(s, q, n, k, type, 8, k, QD_QRULE_SYM_HALF, err))) return rc;
    const size_t nn = (size_t)n, kk = (size_t)k;
    const uint8_t *w = tw.data;
    if (kind == CT_INT) {
        for (size_t i = 0; i < nn * kk; i++) q->codes[i] = (uint8_t)((int)(int8_t)w[i] + 128);
        for (size_t r = 0; r < nn; r++) q->zeros[r] = 128.0f;
    } else {
        memcpy(q->codes, w, nn * kk);
    }
    bool per_tensor = kind == CT_FLOAT && p->weight_per_tensor;
    int64_t sshape[2] = {per_tensor ? 1 : n, 1};
    if ((rc = fmt_fetch(s, "weight_scale", true, FMT_FLOATS, per_tensor ? 1 : 2, sshape, &ts,
                        NULL, err)))
        return rc;
    for (size_t r = 0; r < nn; r++)
        q->scales[r] = fmt_get_float(ts.dtype, ts.data, per_tensor ? 0 : r);
    if (fmt_act_static(p->act))
        return fmt_read_scalar(s, "input_scale", true, &q->act_scale, err);
    return QD_OK;
}

static qd_err ct_unpack(const qd_format_params *p, const char *prefix, qd_format_lookup lookup,
                        void *ctx, qd_qlinear *ret_q, qd_error *err) {
    fmt_src s = {CT_NAME, prefix ? prefix : "", lookup, ctx};
    qd_qlinear q;
    memset(&q, 0, sizeof q);
    ct_kind kind = CT_PACK;
    qd_err rc = ct_layout(p, 0, 0, &kind, err);
    if (!rc)
        rc = kind == CT_PACK ? ct_unpack_packed(&s, p, &q, err)
                             : ct_unpack_naive(&s, p, kind, &q, err);
    if (!rc) rc = fmt_read_bias(&s, &q, err);
    if (rc) {
        qd_qlinear_free(&q);
        return rc;
    }
    *ret_q = q;
    return QD_OK;
}

/* ---- config ---- */

/* A QuantizationArgs dump, keys sorted. */
static json_t *ct_args(int bits, const char *type, bool symmetric, const char *strategy,
                       int group_size, bool dynamic, const char *actorder) {
    json_t *o = json_object();
    bool ok = o != NULL;
    ok = ok && fmt_jset(o, "actorder", actorder ? json_string(actorder) : json_null());
    ok = ok && fmt_jset(o, "block_structure", json_null());
    ok = ok && fmt_jset(o, "dynamic", json_boolean(dynamic));
    ok = ok && fmt_jset(o, "group_size", group_size > 0 ? json_integer(group_size) : json_null());
    ok = ok && fmt_jset(o, "num_bits", json_integer(bits));
    /* static quantization defaults to the minmax observer; dynamic has none */
    ok = ok && fmt_jset(o, "observer", dynamic ? json_null() : json_string("minmax"));
    ok = ok && fmt_jset(o, "observer_kwargs", json_object());
    ok = ok && fmt_jset(o, "strategy", json_string(strategy));
    ok = ok && fmt_jset(o, "symmetric", json_boolean(symmetric));
    ok = ok && fmt_jset(o, "type", json_string(type));
    if (!ok) {
        json_decref(o);
        return NULL;
    }
    return o;
}

static qd_err ct_config(const qd_format_params *p, json_t **ret, qd_error *err) {
    ct_kind kind = CT_PACK;
    qd_err rc = ct_layout(p, 0, 0, &kind, err);
    if (rc) return rc;
    const char *fmt = CT_FORMAT_NAMES[kind];
    const char *wtype = p->type == QD_QTYPE_INT ? "int" : "float";
    const char *strategy = ct_group_strategy(p) ? "group"
                           : (kind == CT_FLOAT && p->weight_per_tensor) ? "tensor"
                                                                        : "channel";
    const char *actorder = NULL;
    if (ct_group_strategy(p) && p->act_order) actorder = p->static_groups ? "weight" : "group";

    json_t *weights = ct_args(p->bits, wtype, p->symmetric, strategy, p->group_size, false,
                              actorder);
    json_t *input = NULL;
    if (p->act != QD_FORMAT_ACT_NONE) {
        bool dyn = !fmt_act_static(p->act);
        const char *atype = (p->act == QD_FORMAT_ACT_FP8_TOKEN || p->act == QD_FORMAT_ACT_FP8_TENSOR)
                                ? "float" : "int";
        input = ct_args(8, atype, true, dyn ? "token" : "tensor", 0, dyn, NULL);
    }

    json_t *group = json_object(), *groups = json_object(), *o = json_object();
    json_t *targets = json_array();
    bool ok = group && groups && o && targets && weights && (p->act == QD_FORMAT_ACT_NONE || input);
    ok = ok && json_array_append_new(targets, json_string("Linear")) == 0;
    ok = ok && fmt_jset(group, "format", json_string(fmt));
    /* from here each pre-built value is handed over or, after a failure, released */
    ok = fmt_jset_ok(ok, group, "input_activations", input ? input : json_null());
    ok = ok && fmt_jset(group, "output_activations", json_null());
    ok = fmt_jset_ok(ok, group, "targets", targets);
    ok = fmt_jset_ok(ok, group, "weights", weights);
    ok = fmt_jset_ok(ok, groups, "group_0", group);
    ok = fmt_jset_ok(ok, o, "config_groups", groups);
    ok = ok && fmt_jset(o, "format", json_string(fmt));
    ok = ok && fmt_jset(o, "global_compression_ratio", json_null());
    ok = ok && fmt_jset(o, "ignore", fmt_json_ignore(p));
    ok = ok && fmt_jset(o, "kv_cache_scheme", json_null());
    ok = ok && fmt_jset(o, "quant_method", json_string("compressed-tensors"));
    ok = ok && fmt_jset(o, "quantization_status", json_string("compressed"));
    ok = ok && fmt_jset(o, "sparsity_config", json_object());
    ok = ok && fmt_jset(o, "transform_config", json_object());
    ok = ok && fmt_jset(o, "version", json_string(CT_VERSION));
    return fmt_json_done(CT_NAME, o, ok, ret, err);
}

const qd_format qd_format_ctensors = {
    .name = CT_NAME,
    .quant_method = "compressed-tensors",
    .side_config_name = NULL,
    .check = ct_check,
    .pack = ct_pack,
    .unpack = ct_unpack,
    .quantization_config = ct_config,
    .side_config = NULL,
};
