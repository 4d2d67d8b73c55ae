/*
 * modelopt.c - NVIDIA ModelOpt's Hugging Face "unified" checkpoint (export_hf_checkpoint;
 * config.json quant_method "modelopt" plus hf_quant_config.json), docs/formats.md section 4;
 * read by TensorRT-LLM.
 *
 * The spec picks the algorithm as ModelOpt's quantization formats name it:
 *
 *   int4 symmetric groups, weight-only          W4A16_AWQ
 *   int4 symmetric groups + fp8 static acts     W4A8_AWQ
 *   int8 symmetric per channel + int8 static    W8A8_SQ_PER_CHANNEL (SmoothQuant)
 *
 * Tensors per linear <prefix> (W [N, K], NG = K / G, dt = the model dtype):
 *
 *   W4A16_AWQ / W4A8_AWQ
 *     weight           U8  [N/2, K]  byte (i, k) = (s[2i, k] & 0xF) | (s[2i+1, k] & 0xF) << 4,
 *                                    s = q - 8 the signed code: PAIRS OF OUTPUT ROWS
 *                                    (pack_int4_in_uint8); TensorRT-LLM views it as int8
 *     weight_scale     F32 [N, NG]   per-group amax / 7
 *     pre_quant_scale  dt  [K]       the activations are multiplied by it (qlinear pre_scale);
 *                                    all ones when the AWQ scales were fused into the
 *                                    preceding norm, because hf_quant_config.json says
 *                                    "pre_quant_scale": true and TensorRT-LLM's AWQ linears
 *                                    then load a prequant_scaling_factor for every linear
 *     input_scale      F32 []        W4A8 only: activation amax / 448
 *     weight_scale_2   F32 []        W4A8 only: weight amax / 448
 *   W8A8_SQ_PER_CHANNEL
 *     weight           I8  [N, K]    s = q - 128
 *     weight_scale     F32 [N]       row amax / 127
 *     input_scale      F32 []        activation amax / 127
 *     pre_quant_scale  dt  [K]       when not fused
 *   bias dt [N] when present.
 *
 * dtypes and shapes follow ModelOpt 0.40 (quant_utils.get_scaling_factor returns fp32 scales;
 * the per-tensor input_scale and weight_scale_2 are squeezed to 0-d; pre_quant_scale is kept
 * in the weight dtype). A reader also accepts [1] for the scalars and any float dtype.
 *
 * Configs: hf_quant_config.json is get_quant_config()'s dict (producer, then quantization
 * with quant_algo, kv_cache_quant_algo, [group_size, has_zero_point, pre_quant_scale,]
 * exclude_modules sorted); config.json's quantization_config is its
 * convert_hf_quant_config_format() rewrite (ignore, quant_algo, producer, quant_method).
 * quantd writes no KV-cache quantization, so kv_cache_quant_algo is null and config.json has
 * no kv_cache_scheme.
 */
#include "format_internal.h"

#define MO_NAME "modelopt"
#define MO_PRODUCER_VERSION "0.40.0" /* the ModelOpt release whose export this follows */

typedef enum mo_algo {
    MO_W4A16_AWQ = 0,
    MO_W4A8_AWQ,
    MO_W8A8_SQ,
} mo_algo;

static const char *const MO_ALGO_NAMES[] = {"W4A16_AWQ", "W4A8_AWQ", "W8A8_SQ_PER_CHANNEL"};

static qd_err mo_layout(const qd_format_params *p, int n, int k, mo_algo *ret_algo,
                        qd_error *err) {
    qd_err rc = fmt_check_params(MO_NAME, p, err);
    if (rc) return rc;
    if (p->type != QD_QTYPE_INT)
        return qd_error_set(err, QD_ERR_UNSUPPORTED, "modelopt: quantd writes ModelOpt int4 "
                            "AWQ and int8 SmoothQuant; write fp8 weights as "
                            "compressed-tensors");
    if (!p->symmetric)
        return qd_error_set(err, QD_ERR_UNSUPPORTED, "modelopt: ModelOpt int4/int8 weights are "
                            "symmetric (has_zero_point false); write asymmetric int4 as awq, "
                            "gptq_v2 or compressed-tensors");
    if (p->act_order && !p->static_groups)
        return qd_error_set(err, QD_ERR_UNSUPPORTED, "modelopt: act-order without static groups "
                            "needs g_idx, which ModelOpt checkpoints lack");
    mo_algo algo;
    if (p->bits == 4) {
        if (p->act == QD_FORMAT_ACT_NONE)
            algo = MO_W4A16_AWQ;
        else if (p->act == QD_FORMAT_ACT_FP8_TENSOR)
            algo = MO_W4A8_AWQ;
        else
            return qd_error_set(err, QD_ERR_UNSUPPORTED, "modelopt: int4 weights go with no "
                                "activation quantization (W4A16_AWQ) or static per-tensor fp8 "
                                "activations (W4A8_AWQ)");
        if (p->group_size <= 0)
            return qd_error_set(err, QD_ERR_UNSUPPORTED, "modelopt: int4 AWQ weights are "
                                "block-quantized; per-channel is not written (give a group "
                                "size)");
        if (n > 0 && n % 2 != 0)
            return qd_error_set(err, QD_ERR_UNSUPPORTED, "modelopt: out_features %d is odd (the "
                                "int4 weight packs pairs of output rows per byte)", n);
        if (k > 0 && k % p->group_size != 0)
            return qd_error_set(err, QD_ERR_UNSUPPORTED, "modelopt: in_features %d is not a "
                                "multiple of group_size %d", k, p->group_size);
    } else if (p->bits == 8) {
        if (p->act != QD_FORMAT_ACT_INT8_TENSOR)
            return qd_error_set(err, QD_ERR_UNSUPPORTED, "modelopt: int8 weights are written as "
                                "SmoothQuant W8A8 with static per-tensor int8 activations");
        if (p->group_size > 0)
            return qd_error_set(err, QD_ERR_UNSUPPORTED, "modelopt: SmoothQuant int8 weights are "
                                "per output channel; group_size %d is not", p->group_size);
        algo = MO_W8A8_SQ;
    } else {
        return qd_error_set(err, QD_ERR_UNSUPPORTED, "modelopt: %d-bit weights have no ModelOpt "
                            "algorithm here (int4 AWQ or int8 SmoothQuant)", p->bits);
    }
    *ret_algo = algo;
    return QD_OK;
}

static qd_err mo_check(const qd_format_params *p, int n, int k, qd_error *err) {
    mo_algo algo;
    qd_err rc = mo_layout(p, n, k, &algo, err);
    if (rc) return rc;
    /* TensorRT-LLM's groupwise int4 GEMM (fpA_intB) is built for these group sizes */
    if (algo != MO_W8A8_SQ && p->group_size != 64 && p->group_size != 128)
        return qd_error_set(err, QD_ERR_UNSUPPORTED, "modelopt: TensorRT-LLM's int4 AWQ GEMM "
                            "takes group sizes 64 and 128 (got %d)", p->group_size);
    return QD_OK;
}

static qd_err mo_put(qd_dtype dt, void *d, size_t i, float v, const char *prefix,
                     const char *what, qd_error *err) {
    if (!fmt_put_float(dt, d, i, v))
        return qd_error_set(err, QD_ERR_INVALID_ARG, "modelopt: layer '%s': %s %g is not finite "
                            "in %s", prefix, what, (double)v, qd_dtype_name(dt));
    return QD_OK;
}

/* A 0-d F32 tensor. */
static qd_err mo_add_scalar(qd_packed_list *out, const char *prefix, const char *suffix,
                            float v, qd_error *err) {
    void *d;
    qd_err rc = fmt_add(out, MO_NAME, prefix, suffix, QD_DTYPE_F32, 0, NULL, &d, err);
    if (rc) return rc;
    return mo_put(QD_DTYPE_F32, d, 0, v, prefix, suffix, err);
}

static qd_err mo_pack_tensors(const qd_format_params *p, mo_algo algo, const qd_qlinear *q,
                              const char *prefix, qd_packed_list *out, qd_error *err) {
    const size_t n = (size_t)q->n, k = (size_t)q->k, ng = (size_t)q->n_groups;
    int64_t shape[2];
    void *d;
    qd_err rc;

    if (algo == MO_W8A8_SQ) {
        shape[0] = q->n;
        shape[1] = q->k;
        if ((rc = fmt_add(out, MO_NAME, prefix, "weight", QD_DTYPE_I8, 2, shape, &d, err)))
            return rc;
        int8_t *w = d;
        for (size_t i = 0; i < n * k; i++) w[i] = (int8_t)((int)q->codes[i] - 128);
        if ((rc = fmt_add(out, MO_NAME, prefix, "weight_scale", QD_DTYPE_F32, 1, shape, &d,
                          err)))
            return rc;
        for (size_t r = 0; r < n; r++)
            if ((rc = mo_put(QD_DTYPE_F32, d, r, q->scales[r], prefix, "weight scale", err)))
                return rc;
    } else {
        shape[0] = q->n / 2;
        shape[1] = q->k;
        if ((rc = fmt_add(out, MO_NAME, prefix, "weight", QD_DTYPE_U8, 2, shape, &d, err)))
            return rc;
        uint8_t *w = d;
        for (size_t i = 0; i < n / 2; i++)
            for (size_t c = 0; c < k; c++) {
                /* signed code s = q - 8 in two's complement nibbles, row 2i low */
                unsigned lo = (unsigned)((int)q->codes[(2 * i) * k + c] - 8) & 0xFu;
                unsigned hi = (unsigned)((int)q->codes[(2 * i + 1) * k + c] - 8) & 0xFu;
                w[i * k + c] = (uint8_t)(lo | hi << 4);
            }
        shape[0] = q->n;
        shape[1] = (int64_t)ng;
        if ((rc = fmt_add(out, MO_NAME, prefix, "weight_scale", QD_DTYPE_F32, 2, shape, &d,
                          err)))
            return rc;
        for (size_t i = 0; i < n * ng; i++)
            if ((rc = mo_put(QD_DTYPE_F32, d, i, q->scales[i], prefix, "weight scale", err)))
                return rc;
    }

    if (q->pre_scale || algo == MO_W4A16_AWQ || algo == MO_W4A8_AWQ) {
        shape[0] = q->k;
        if ((rc = fmt_add(out, MO_NAME, prefix, "pre_quant_scale", p->dtype, 1, shape, &d, err)))
            return rc;
        for (size_t c = 0; c < k; c++)
            if ((rc = mo_put(p->dtype, d, c, q->pre_scale ? q->pre_scale[c] : 1.0f, prefix,
                             "pre_quant_scale", err)))
                return rc;
    }
    if (algo != MO_W4A16_AWQ &&
        (rc = mo_add_scalar(out, prefix, "input_scale", q->act_scale, err)))
        return rc;
    if (algo == MO_W4A8_AWQ &&
        (rc = mo_add_scalar(out, prefix, "weight_scale_2", q->weight_scale_2, err)))
        return rc;
    return fmt_add_bias(out, MO_NAME, prefix, p->dtype, q, err);
}

static qd_err mo_pack(const qd_format_params *p, const qd_qlinear *q, const char *prefix,
                      qd_packed_list *out, qd_error *err) {
    if (!prefix) prefix = "";
    mo_algo algo;
    qd_err rc = mo_layout(p, q ? q->n : 0, q ? q->k : 0, &algo, err);
    if (rc) return rc;
    unsigned takes = FMT_TAKES_PRE_SCALE | (algo == MO_W4A8_AWQ ? FMT_TAKES_WS2 : 0u);
    if ((rc = fmt_check_q(MO_NAME, p, q, prefix, 0, (1 << p->bits) - 1, takes, err))) return rc;
    if (algo == MO_W4A8_AWQ && (!(q->weight_scale_2 > 0.0f) || !isfinite(q->weight_scale_2)))
        return qd_error_set(err, QD_ERR_INVALID_ARG, "modelopt: layer '%s': W4A8_AWQ needs a "
                            "finite weight_scale_2 > 0 (got %g)", prefix,
                            (double)q->weight_scale_2);
    int n0 = out->n;
    rc = mo_pack_tensors(p, algo, q, prefix, out, err);
    if (rc) fmt_truncate(out, n0);
    return rc;
}

static qd_err mo_unpack_into(const fmt_src *s, const qd_format_params *p, qd_qlinear *q,
                             qd_error *err) {
    mo_algo algo;
    qd_err rc = mo_layout(p, 0, 0, &algo, err);
    if (rc) return rc;
    int64_t any2[2] = {-1, -1};
    qd_tensor tw, ts, tp;
    bool found;
    qd_dtype wdt = algo == MO_W8A8_SQ ? QD_DTYPE_I8 : QD_DTYPE_U8;
    if ((rc = fmt_fetch(s, "weight", true, FMT_BIT(wdt), 2, any2, &tw, NULL, err))) return rc;
    int64_t n64 = algo == MO_W8A8_SQ ? tw.shape[0] : tw.shape[0] * 2;
    if ((rc = fmt_check_dim(s, "out_features", n64, err)) ||
        (rc = fmt_check_dim(s, "in_features (weight columns)", tw.shape[1], err)))
        return rc;
    int n = (int)n64, k = (int)tw.shape[1];
    if ((rc = mo_layout(p, n, k, &algo, err))) return rc;
    int g = algo == MO_W8A8_SQ ? k : fmt_group(p->group_size, k);
    if ((rc = fmt_new_q(s, q, n, k, QD_QTYPE_INT, p->bits, g, QD_QRULE_SYM_MAX, err))) return rc;
    const size_t nn = (size_t)n, kk = (size_t)k, ng = (size_t)q->n_groups;
    const uint8_t *w = tw.data;

    if (algo == MO_W8A8_SQ) {
        for (size_t i = 0; i < nn * kk; i++) q->codes[i] = (uint8_t)((int)(int8_t)w[i] + 128);
        int64_t sshape[1] = {n};
        if ((rc = fmt_fetch(s, "weight_scale", true, FMT_FLOATS, 1, sshape, &ts, NULL, err)))
            return rc;
    } else {
        for (size_t i = 0; i < nn / 2; i++)
            for (size_t c = 0; c < kk; c++) {
                uint8_t b = w[i * kk + c];
                int lo = b & 0xF, hi = b >> 4;
                /* sign-extend each nibble, then back to the unsigned domain */
                q->codes[(2 * i) * kk + c] = (uint8_t)((lo >= 8 ? lo - 16 : lo) + 8);
                q->codes[(2 * i + 1) * kk + c] = (uint8_t)((hi >= 8 ? hi - 16 : hi) + 8);
            }
        int64_t sshape[2] = {n, (int64_t)ng};
        if ((rc = fmt_fetch(s, "weight_scale", true, FMT_FLOATS, 2, sshape, &ts, NULL, err)))
            return rc;
    }
    for (size_t i = 0; i < nn * ng; i++) {
        q->scales[i] = fmt_get_float(ts.dtype, ts.data, i);
        q->zeros[i] = (float)fmt_sym_zero(p->bits);
    }

    int64_t pshape[1] = {k};
    if ((rc = fmt_fetch(s, "pre_quant_scale", false, FMT_FLOATS, 1, pshape, &tp, &found, err)))
        return rc;
    /* All ones is what the writer stores for scales fused into the norm: the same as none. */
    bool ones = true;
    for (size_t c = 0; found && ones && c < kk; c++)
        ones = fmt_get_float(tp.dtype, tp.data, c) == 1.0f;
    if (found && !ones) {
        q->pre_scale = malloc(kk * sizeof *q->pre_scale);
        if (!q->pre_scale)
            return qd_error_set(err, QD_ERR_NOMEM, "modelopt: no memory for pre_quant_scale");
        for (size_t c = 0; c < kk; c++) q->pre_scale[c] = fmt_get_float(tp.dtype, tp.data, c);
    }
    if (algo != MO_W4A16_AWQ &&
        (rc = fmt_read_scalar(s, "input_scale", true, &q->act_scale, err)))
        return rc;
    if (algo == MO_W4A8_AWQ &&
        (rc = fmt_read_scalar(s, "weight_scale_2", true, &q->weight_scale_2, err)))
        return rc;
    return fmt_read_bias(s, q, err);
}

static qd_err mo_unpack(const qd_format_params *p, const char *prefix, qd_format_lookup lookup,
                        void *ctx, qd_qlinear *ret_q, qd_error *err) {
    fmt_src s = {MO_NAME, prefix ? prefix : "", lookup, ctx};
    qd_qlinear q;
    memset(&q, 0, sizeof q);
    qd_err rc = mo_unpack_into(&s, p, &q, err);
    if (rc) {
        qd_qlinear_free(&q);
        return rc;
    }
    *ret_q = q;
    return QD_OK;
}

/* ---- configs ---- */

static int mo_strcmp(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* exclude_modules: the ignore list sorted (Python's sorted() on str is code-point order, which
 * strcmp on UTF-8 reproduces). */
static json_t *mo_exclude(const qd_format_params *p) {
    const char **names = malloc((size_t)(p->n_ignore ? p->n_ignore : 1) * sizeof *names);
    if (!names) return NULL;
    for (int i = 0; i < p->n_ignore; i++) names[i] = p->ignore[i];
    qsort(names, (size_t)p->n_ignore, sizeof *names, mo_strcmp);
    json_t *a = json_array();
    for (int i = 0; a && i < p->n_ignore; i++)
        if (json_array_append_new(a, json_string(names[i])) != 0) {
            json_decref(a);
            a = NULL;
        }
    free(names);
    return a;
}

static json_t *mo_producer(void) {
    json_t *o = json_object();
    if (!o) return NULL;
    if (!fmt_jset(o, "name", json_string("modelopt")) ||
        !fmt_jset(o, "version", json_string(MO_PRODUCER_VERSION))) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* config.json quantization_config (convert_hf_quant_config_format's key order). */
static qd_err mo_config(const qd_format_params *p, json_t **ret, qd_error *err) {
    mo_algo algo;
    qd_err rc = mo_layout(p, 0, 0, &algo, err);
    if (rc) return rc;
    json_t *o = json_object();
    bool ok = o != NULL;
    ok = ok && fmt_jset(o, "ignore", mo_exclude(p));
    ok = ok && fmt_jset(o, "quant_algo", json_string(MO_ALGO_NAMES[algo]));
    ok = ok && fmt_jset(o, "producer", mo_producer());
    ok = ok && fmt_jset(o, "quant_method", json_string("modelopt"));
    return fmt_json_done(MO_NAME, o, ok, ret, err);
}

/* hf_quant_config.json (get_quant_config / process_layer_quant_config's key order). */
static qd_err mo_side_config(const qd_format_params *p, json_t **ret, qd_error *err) {
    mo_algo algo;
    qd_err rc = mo_layout(p, 0, 0, &algo, err);
    if (rc) return rc;
    json_t *o = json_object(), *qz = json_object();
    bool ok = o && qz;
    ok = ok && fmt_jset(o, "producer", mo_producer());
    ok = ok && fmt_jset(qz, "quant_algo", json_string(MO_ALGO_NAMES[algo]));
    ok = ok && fmt_jset(qz, "kv_cache_quant_algo", json_null());
    if (algo != MO_W8A8_SQ) {
        ok = ok && fmt_jset(qz, "group_size", json_integer(p->group_size));
        ok = ok && fmt_jset(qz, "has_zero_point", json_false());
        ok = ok && fmt_jset(qz, "pre_quant_scale", json_true());
    }
    ok = ok && fmt_jset(qz, "exclude_modules", mo_exclude(p));
    ok = fmt_jset_ok(ok, o, "quantization", qz);
    return fmt_json_done(MO_NAME, o, ok, ret, err);
}

const qd_format qd_format_modelopt = {
    .name = MO_NAME,
    .quant_method = "modelopt",
    .side_config_name = "hf_quant_config.json",
    .check = mo_check,
    .pack = mo_pack,
    .unpack = mo_unpack,
    .quantization_config = mo_config,
    .side_config = mo_side_config,
};
