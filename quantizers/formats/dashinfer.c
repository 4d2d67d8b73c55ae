/*
 * dashinfer.c - a checkpoint DashInfer (modelscope/dash-infer, "AllSpark") loads, docs/
 * formats.md section 5.
 *
 * DashInfer runs its InstantQuant itself while serializing an fp16/bf16 Hugging Face model;
 * the one pre-quantized Hugging Face input it accepts is GPTQ (GPTQSettings:
 * quant_method "gptq", desc_act false, zeros read back with +1, i.e. v1). Of the two ways to
 * hand it a quantd result (an fp16 checkpoint plus an InstantQuant config, which discards
 * quantd's quantization and lets DashInfer redo its own; or GPTQ-v1), this format is the
 * GPTQ-v1 one, because it carries quantd's codes and scales unchanged:
 *
 *   tensors   exactly formats/gptq.c's v1 layout (qweight, qzeros = z - 1, scales fp16,
 *             g_idx, bias) through qd_format_gptq's own methods;
 *   config    GPTQ's dict (quant_method "gptq", checkpoint_format "gptq") with desc_act
 *             false, the keys DashInfer reads being quant_method, bits, group_size, desc_act
 *             and sym.
 *
 * What DashInfer adds to GPTQ's rules:
 *   - 4-bit only (uint4, A16W4). Its 8-bit path casts the unpacked codes 0..255 to int8 for
 *     its kernel, so codes 128..255 wrap; quantd does not write it.
 *   - no act-order g_idx: desc_act true raises NotImplementedError. Act-order with static
 *     groups is fine (g_idx is k / G, the same tensors as without act-order) and is written
 *     with desc_act false.
 *   - symmetric only (as v1 GPTQ): a v1 zero of 0 underflows.
 *   - group sizes -1 (per channel), 32, 64, 128, 256, 512 (the sub-channel sizes GPTQSettings
 *     registers); check() enforces this, pack() does not (tests use tiny groups).
 * InstantQuant's own float (unrounded) zero points cannot be expressed here: a layer
 * quantized with QD_QRULE_ASYM_FLOAT_ZERO is refused by pack() (non-integer zero).
 */
#include "format_internal.h"

#define DI_NAME "dashinfer"

/* The GPTQ spec DashInfer's layer is written with: no desc_act. */
static qd_format_params di_gptq_params(const qd_format_params *p) {
    qd_format_params g = *p;
    g.act_order = false;
    g.static_groups = false;
    return g;
}

static qd_err di_layout(const qd_format_params *p, int n, int k, qd_error *err) {
    qd_err rc = fmt_check_params(DI_NAME, p, err);
    if (rc) return rc;
    if (p->type != QD_QTYPE_INT || p->bits != 4)
        return qd_error_set(err, QD_ERR_UNSUPPORTED, "dashinfer: DashInfer loads 4-bit GPTQ "
                            "(uint4, A16W4); its 8-bit GPTQ path wraps codes above 127, and "
                            "fp8 is not a GPTQ format");
    if (!p->symmetric)
        return qd_error_set(err, QD_ERR_UNSUPPORTED, "dashinfer: DashInfer reads GPTQ v1 zeros "
                            "(stored minus 1), where an asymmetric zero of 0 underflows; "
                            "write symmetric weights, or give DashInfer an fp16 model to "
                            "quantize itself");
    if (p->act_order && !p->static_groups)
        return qd_error_set(err, QD_ERR_UNSUPPORTED, "dashinfer: DashInfer refuses desc_act "
                            "(act-order g_idx); use static groups or no act-order");
    qd_format_params g = di_gptq_params(p);
    rc = qd_format_gptq.check(&g, n, k, err);
    if (rc) qd_error_prefix(err, "dashinfer (as GPTQ v1): ");
    return rc;
}

static qd_err di_check(const qd_format_params *p, int n, int k, qd_error *err) {
    qd_err rc = di_layout(p, n, k, err);
    if (rc) return rc;
    int gs = p->group_size;
    if (gs > 0 && gs != 32 && gs != 64 && gs != 128 && gs != 256 && gs != 512)
        return qd_error_set(err, QD_ERR_UNSUPPORTED, "dashinfer: group_size %d is not one "
                            "DashInfer takes (per channel, 32, 64, 128, 256, 512)", gs);
    return QD_OK;
}

static qd_err di_pack(const qd_format_params *p, const qd_qlinear *q, const char *prefix,
                      qd_packed_list *out, qd_error *err) {
    qd_err rc = di_layout(p, q ? q->n : 0, q ? q->k : 0, err);
    if (rc) return rc;
    /* without desc_act in the spec, GPTQ's pack refuses non-contiguous g_idx */
    qd_format_params g = di_gptq_params(p);
    rc = qd_format_gptq.pack(&g, q, prefix, out, err);
    if (rc) qd_error_prefix(err, "dashinfer (as GPTQ v1): ");
    return rc;
}

static qd_err di_unpack(const qd_format_params *p, const char *prefix, qd_format_lookup lookup,
                        void *ctx, qd_qlinear *ret_q, qd_error *err) {
    qd_err rc = di_layout(p, 0, 0, err);
    if (rc) return rc;
    qd_format_params g = di_gptq_params(p);
    qd_qlinear q;
    rc = qd_format_gptq.unpack(&g, prefix, lookup, ctx, &q, err);
    if (rc) {
        qd_error_prefix(err, "dashinfer (as GPTQ v1): ");
        return rc;
    }
    if (q.g_idx) { /* DashInfer ignores g_idx: a permuted one would be computed wrongly */
        qd_qlinear_free(&q);
        return qd_error_set(err, QD_ERR_FORMAT, "dashinfer: layer '%s' has act-order g_idx, "
                            "which DashInfer does not read", prefix ? prefix : "");
    }
    *ret_q = q;
    return QD_OK;
}

static qd_err di_config(const qd_format_params *p, json_t **ret, qd_error *err) {
    qd_err rc = di_check(p, 0, 0, err);
    if (rc) return rc;
    qd_format_params g = di_gptq_params(p);
    return qd_format_gptq.quantization_config(&g, ret, err);
}

const qd_format qd_format_dashinfer = {
    .name = DI_NAME,
    .quant_method = "gptq",
    .side_config_name = "quantize_config.json",
    .check = di_check,
    .pack = di_pack,
    .unpack = di_unpack,
    .quantization_config = di_config,
    .side_config = di_config,
};
