/*
 * format.h - the interface every artifact format implements: check a spec, pack one quantized
 * linear layer into named tensors, read them back, and say what goes into config.json.
 *
 * A FORMAT is a const table of methods (qd_format), one per on-disk layout that engines load:
 *
 *   name                 quant_method          layouts (docs/formats.md section)
 *   "awq"                awq                   AutoAWQ GEMM, 4-bit, zero points (1)
 *   "gptq"               gptq                  AutoGPTQ v1 (zeros stored minus 1), symmetric (2)
 *   "gptq_v2"            gptq                  GPTQModel v2 (raw zeros), sym or asym (2)
 *   "compressed-tensors" compressed-tensors    pack-quantized (int weight-only), int-quantized
 *                                              (int8 W8A8), float-quantized (fp8 W8A8) (3)
 *   "modelopt"           modelopt              W4A16_AWQ, W4A8_AWQ, W8A8_SQ_PER_CHANNEL, HF
 *                                              "unified" tensor names (4)
 *   "dashinfer"          gptq                  the GPTQ-v1 input DashInfer converts itself (5)
 *
 * Within compressed-tensors and modelopt the variant follows from the spec the way the
 * reference exporters choose it (weight type, bits, activation quantization), so a caller
 * names only the family.
 *
 * Usage, per model:
 *
 *   const qd_format *f = qd_format_find("gptq");
 *   f->check(&params, 0, 0, err);                       spec alone, before any work
 *   for each quantized linear q with name prefix "model.layers.i.self_attn.q_proj":
 *       f->check(&params, q.n, q.k, err);               optional: refuse a layer early
 *       f->pack(&params, &q, prefix, &list, err);       appends prefix.qweight, ...
 *   f->quantization_config(&params, &cfg, err);         config.json "quantization_config"
 *   if (f->side_config_name) f->side_config(&params, &side, err);   e.g. hf_quant_config.json
 *   ... write list's tensors (qd_st_writer_add), then qd_packed_list_free(&list).
 *
 * Reading back (quantd eval, round-trip tests): f->unpack(&params, prefix, lookup, ctx, &q,
 * err) fetches the tensors through a caller's lookup function (a safetensors model, or a
 * qd_packed_list via qd_packed_list_lookup) and rebuilds the qd_qlinear.
 *
 * DESIGN. The packer's input is a qd_qlinear (qlinear.h): unsigned-domain codes [N, K] one per
 * byte, float scales/zeros [N, n_groups], optional g_idx, pre_scale, act_scale,
 * weight_scale_2, bias. Every format's convention (AWQ's raw zeros in interleaved nibbles,
 * GPTQ's z - 1, compressed-tensors' +2^(b-1) offset, ModelOpt's signed nibbles paired along
 * the output rows) is a rewrite of the same (code, zero, scale) triple, so pack and unpack are
 * exact inverses: unpack(pack(q)) has the same codes, zeros and g_idx, and scales equal after
 * the format's scale dtype rounding (fp16 for AWQ/GPTQ, the model dtype for
 * compressed-tensors, fp32 for ModelOpt's weight scales). Quantizers already round scales to
 * the target dtype (qlinear.h), so in practice packing is lossless.
 *
 * Two kinds of checks, kept apart on purpose:
 *   - check() answers "would the engines that read this format accept this spec / layer":
 *     bits, symmetry, act-order, activation quantization, group sizes the kernels take, and
 *     with n, k > 0 the layer's shape (AWQ's N % 8, ...). Its message says what to use
 *     instead where there is an answer.
 *   - pack() enforces only what the LAYOUT needs (the bits fit, N and K divide the packing,
 *     integer zeros in range, the symmetric zero 2^(b-1), ...), so the golden tests can use
 *     tiny layers (G = 8) that no engine would be given. pack() also refuses a qlinear that
 *     disagrees with the spec (bits, group size, missing act_scale, a pre_scale the format has
 *     no tensor for).
 * unpack() treats tensors as hostile: every dtype, shape and index is checked and a failure
 * is QD_ERR_FORMAT naming the tensor. Scale-like tensors are accepted in F16, BF16 or F32
 * (each converts exactly to fp32); packed words and g_idx must have the exact dtype.
 *
 * Dequantization. unpack() yields the integers and scales the engine's kernel uses, rewritten
 * to the unsigned-domain (code - zero) * scale of qlinear.h; e.g. a GPTQ v1 zero nibble z'
 * reads back as z' + 1, as vLLM and DashInfer add it, so a corrupt nibble 0xF reads as 16,
 * not as 0. What is not modelled: kernels that compute in fp16/bf16 round the product
 * differently from qd_qlinear_dequant's fp32, and TensorRT-LLM's W4A8 path divides the group
 * scales by weight_scale_2 in its own dtype before use. The tensors do not record how the
 * scales were chosen, so an unpacked layer's `rule` is the format's usual one (AWQ
 * ASYM_MINMAX; GPTQ and compressed-tensors SYM_HALF or ASYM_ZERO_IN_RANGE; ModelOpt SYM_MAX);
 * dequantization does not depend on it.
 */
#ifndef QD_FORMAT_H
#define QD_FORMAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "error.h"
#include "qlinear.h"
#include "quant.h"
#include "tensor.h"

/* ---- the spec a format is asked to hold ------------------------------------------------------ */

/* How activations are quantized at inference (weights are described by qd_format_params). */
typedef enum qd_format_act {
    QD_FORMAT_ACT_NONE = 0,     /* weight-only (W4A16, W8A16) */
    QD_FORMAT_ACT_INT8_TOKEN,   /* int8, symmetric, per token, dynamic: no stored scale */
    QD_FORMAT_ACT_INT8_TENSOR,  /* int8, symmetric, per tensor, static: qlinear.act_scale stored */
    QD_FORMAT_ACT_FP8_TOKEN,    /* fp8 e4m3, per token, dynamic: no stored scale */
    QD_FORMAT_ACT_FP8_TENSOR,   /* fp8 e4m3, per tensor, static: qlinear.act_scale stored */
    QD_FORMAT_ACT_COUNT
} qd_format_act;

#define QD_FORMAT_MAX_IGNORE 4096 /* modules listed as left unquantized */

typedef struct qd_format_params {
    qd_qtype type;          /* weights: QD_QTYPE_INT or QD_QTYPE_FP8_E4M3 */
    int bits;               /* int: 2..8; fp8: 8 */
    int group_size;         /* > 0: input columns per group; <= 0: one group per output row */
    bool symmetric;         /* every zero point is 2^(bits-1) (int only; fp8 is symmetric) */
    bool act_order;         /* GPTQ desc_act: columns quantized by decreasing Hessian diagonal */
    bool static_groups;     /* with act_order: groups stay contiguous (g_idx[k] = k / G) */
    bool weight_per_tensor; /* fp8 weights: one scale for the whole tensor (else per row) */
    qd_format_act act;       /* activation quantization */
    qd_dtype dtype;         /* model dtype (F16, BF16, F32): bias, and the scales of the
                               formats whose scales follow the model (compressed-tensors,
                               ModelOpt's pre_quant_scale) */
    double damp_percent;    /* GPTQ: the dampening used (written to the config only) */
    bool true_sequential;   /* GPTQ: sub-layer order used (config only) */
    const char *const *ignore; /* names of modules left unquantized ("lm_head"), n_ignore of
                                  them; borrowed (config only) */
    int n_ignore;
} qd_format_params;

/* Defaults: int4, group 128, symmetric, weight-only, F16, damp 0.01, true_sequential, no
 * ignore list. */
static inline void qd_format_params_init(qd_format_params *p) {
    memset(p, 0, sizeof *p);
    p->type = QD_QTYPE_INT;
    p->bits = 4;
    p->group_size = 128;
    p->symmetric = true;
    p->act = QD_FORMAT_ACT_NONE;
    p->dtype = QD_DTYPE_F16;
    p->damp_percent = 0.01;
    p->true_sequential = true;
}

/* ---- packed tensors -------------------------------------------------------------------------- */

#define QD_PACKED_NAME_MAX 256
#define QD_PACKED_MAX_DIMS 4

/* One tensor of an artifact: "<prefix>.<suffix>", contiguous, little-endian element bytes
 * (int32 words as the host stores them; quantd targets little-endian hosts only). */
typedef struct qd_packed_tensor {
    char name[QD_PACKED_NAME_MAX];
    qd_dtype dtype;
    int ndim;                            /* 0..QD_PACKED_MAX_DIMS (0: a scalar) */
    int64_t shape[QD_PACKED_MAX_DIMS];
    void *data;                          /* owned by the list */
    size_t nbytes;
} qd_packed_tensor;

/* A growable list of packed tensors; zero-initialise it (`qd_packed_list l = {0};`). */
typedef struct qd_packed_list {
    qd_packed_tensor *items; /* [n], owned */
    int n, cap;
} qd_packed_list;

/* Free every tensor's data and the array; leaves *l zeroed. Accepts NULL. */
static inline void qd_packed_list_free(qd_packed_list *l) {
    if (!l) return;
    for (int i = 0; i < l->n; i++) free(l->items[i].data);
    free(l->items);
    memset(l, 0, sizeof *l);
}

/* The tensor called name, or NULL. Borrowed: valid until the list changes. */
static inline const qd_packed_tensor *qd_packed_list_find(const qd_packed_list *l,
                                                         const char *name) {
    for (int i = 0; i < l->n; i++)
        if (strcmp(l->items[i].name, name) == 0) return &l->items[i];
    return NULL;
}

/*
 * How unpack() reaches tensors: fill *ret_view with a borrowed view of the tensor called name
 * (valid until unpack returns) and return true, or return false when there is none.
 * A qd_st_model lookup wraps qd_st_model_find + qd_st_entry_view.
 */
typedef bool (*qd_format_lookup)(void *ctx, const char *name, qd_tensor *ret_view);

/* A qd_format_lookup over a qd_packed_list (ctx = the list). */
static inline bool qd_packed_list_lookup(void *ctx, const char *name, qd_tensor *ret_view) {
    const qd_packed_tensor *t = qd_packed_list_find((const qd_packed_list *)ctx, name);
    if (!t) return false;
    *ret_view = qd_tensor_view(t->dtype, t->ndim, t->shape, t->data);
    return true;
}

/* ---- the method table ------------------------------------------------------------------------ */

typedef struct qd_format {
    const char *name;             /* "awq", "gptq", ...: stable, user-facing */
    const char *quant_method;     /* config.json quantization_config.quant_method */
    const char *side_config_name; /* file written next to config.json, or NULL */

    /* Can the format hold this spec (n = k = 0) or, with n, k > 0, this [n, k] layer too?
     * QD_OK, or QD_ERR_UNSUPPORTED with the reason (QD_ERR_INVALID_ARG for a malformed spec
     * such as bits 0 or an unknown dtype). */
    qd_err (*check)(const qd_format_params *p, int n, int k, qd_error *err);

    /* Append the layer's tensors, named prefix + "." + suffix (just the suffix when prefix is
     * ""), to *out. Runs the LAYOUT part of check(p, q->n, q->k) (not the engines' lists of
     * group sizes and the like, see above), then validates q against p. On failure *out is
     * as it was (nothing appended). q is not modified. */
    qd_err (*pack)(const qd_format_params *p, const qd_qlinear *q, const char *prefix,
                   qd_packed_list *out, qd_error *err);

    /* Rebuild the layer called prefix from tensors found through lookup(ctx, name). On success
     * *ret_q owns new arrays (caller frees with qd_qlinear_free); on failure *ret_q is not
     * written. Errors: QD_ERR_NOT_FOUND for a missing required tensor, QD_ERR_FORMAT for a
     * tensor of the wrong dtype/shape or an out-of-range value, QD_ERR_NOMEM, and check()'s. */
    qd_err (*unpack)(const qd_format_params *p, const char *prefix, qd_format_lookup lookup,
                     void *ctx, qd_qlinear *ret_q, qd_error *err);

    /* config.json "quantization_config" for a model packed with p: a new object the caller
     * releases with json_decref. Errors: check()'s, QD_ERR_NOMEM. */
    qd_err (*quantization_config)(const qd_format_params *p, json_t **ret, qd_error *err);

    /* (optional, with side_config_name) the content of the side file, same contract. */
    qd_err (*side_config)(const qd_format_params *p, json_t **ret, qd_error *err);
} qd_format;

/* The formats, one object each (defined in formats/<family>.c). */
extern const qd_format qd_format_awq;       /* formats/awq.c */
extern const qd_format qd_format_gptq;      /* formats/gptq.c */
extern const qd_format qd_format_gptq_v2;   /* formats/gptq.c */
extern const qd_format qd_format_ctensors;  /* formats/ctensors.c */
extern const qd_format qd_format_modelopt;  /* formats/modelopt.c */
extern const qd_format qd_format_dashinfer; /* formats/dashinfer.c */

/* Every format, in a fixed order; ret_n (optional) gets the count. */
static inline const qd_format *const *qd_format_all(int *ret_n) {
    static const qd_format *const all[] = {
        &qd_format_awq,      &qd_format_gptq,     &qd_format_gptq_v2,
        &qd_format_ctensors, &qd_format_modelopt, &qd_format_dashinfer,
    };
    if (ret_n) *ret_n = (int)(sizeof all / sizeof all[0]);
    return all;
}

/* The format called name, or NULL. */
static inline const qd_format *qd_format_find(const char *name) {
    int n;
    const qd_format *const *all = qd_format_all(&n);
    for (int i = 0; name && i < n; i++)
        if (strcmp(all[i]->name, name) == 0) return all[i];
    return NULL;
}

#endif /* QD_FORMAT_H */
