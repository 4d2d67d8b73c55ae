/*
 * artifact.h - a quantization job's result as a model directory that engines load, and any
 * such directory read back for evaluation and inspection.
 *
 * An ARTIFACT is a Hugging Face model directory:
 *
 *   config.json                  the source config.json, byte for byte, plus one key,
 *                                "quantization_config" (the format's dict)
 *   <side config>                the format's own file when it has one (quantize_config.json
 *                                for GPTQ and DashInfer, hf_quant_config.json for ModelOpt)
 *   model.safetensors, or model-0000i-of-0000n.safetensors + model.safetensors.index.json
 *                                every decoder linear packed by the format under its module
 *                                path ("model.layers.3.self_attn.q_proj.qweight", ...); a
 *                                linear the spec keeps in float as "<path>.weight" in the
 *                                source dtype; every other tensor of the source (embeddings,
 *                                norms, lm_head, biases the format does not carry) in its
 *                                SOURCE dtype, except the norms a method folded scales into,
 *                                which hold the folded values (converted to the source dtype)
 *   everything else              copied unchanged: generation_config.json, tokenizer files
 *                                (tokenizer.bin, tokenizer.json, tokenizer_config.json,
 *                                special_tokens_map.json, tokenizer.model), LICENSE, ...
 *
 * Every shard's safetensors metadata holds "format": "pt" (transformers refuses other
 * values) and "quantd_format": the format's registry name.
 *
 * RECOGNITION (qd_artifact_detect) reads config.json's quantization_config:
 *
 *   quant_method          further keys                         format
 *   "awq"                 version "gemm" (or absent)            awq
 *   "gptq"                checkpoint_format (or GPTQModel's     gptq ("gptq" or absent),
 *                         "format") "gptq" / "gptq_v2"          gptq_v2
 *   "gptq", v1            shard metadata quantd_format          dashinfer
 *                         "dashinfer"
 *   "compressed-tensors"  format + config_groups                compressed-tensors
 *   "modelopt"            quant_algo (+ hf_quant_config.json    modelopt
 *                         for the group size)
 *
 * DashInfer's checkpoint IS GPTQ v1 (formats/dashinfer.c): its config and tensors are those of
 * format gptq, so nothing in config.json tells the two apart. quantd marks the ones it writes
 * in the safetensors metadata; an unmarked GPTQ v1 checkpoint is read as gptq, which decodes
 * the same tensors to the same weights. The format parameters are rebuilt from the config
 * (bits, group size, symmetry, act-order, activation scheme, ignore list), so an artifact
 * written by another tool in one of these layouts reads the same way.
 *
 * READING (qd_artifact_open) opens the model skeleton with QD_MODEL_OPEN_EXTERNAL_LINEARS
 * (config, embeddings, norms, lm_head, biases) and evaluates it through run-option hooks: per
 * layer, on_weights unpacks each linear through the format (tensors looked up in the open
 * safetensors shards) and writes its dequantized fp32 weight (times the activation pre-scale,
 * where the format carries one) into the layer; a linear stored as a float "<path>.weight" is
 * converted as it is. For formats that quantize activations, on_linear_input fake-quantizes
 * each linear group's input exactly as qd_job_perplexity() does for the in-memory result (per
 * token, or per tensor with the largest static input scale of a fused group). A float model
 * (no quantization_config) opens as a plain qd_model with no hooks.
 *
 * Errors name the file, the key or the tensor: a missing or mis-typed tensor is reported by
 * the format's unpack when the layer is first evaluated ("gptq: tensor
 * 'model.layers.0.self_attn.q_proj.qzeros' is missing").
 */
#ifndef QD_ARTIFACT_H
#define QD_ARTIFACT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "error.h"
#include "formats/format.h"
#include "job.h"
#include "model.h"
#include "spec.h"

/* Largest safetensors shard by default: 5 GB, huggingface_hub's "5GB" (decimal), as AutoAWQ,
 * AutoGPTQ and transformers' save_pretrained write. */
#define QD_ARTIFACT_SHARD_BYTES 5000000000ull

/* ---- writing --------------------------------------------------------------------------------- */

/*
 * The format and its parameters for a resolved spec (qd_spec_resolve) on a model whose
 * weights are model_dtype (F32, F16, BF16): the format registry name (awq; gptq's
 * qd_spec_gptq_checkpoint_format(), i.e. gptq or gptq_v2; compressed-tensors; modelopt;
 * dashinfer), int or fp8 weights, bits, group size (-1 per channel), symmetry, GPTQ act-order,
 * static groups, damping and true_sequential, fp8 per-tensor weight scales, the activation
 * scheme (smoothquant: int8 per token, int8 per tensor static for modelopt; fp8: fp8 per tensor
 * static or per token dynamic as the spec says; w4a8-awq: fp8 per tensor static), and the
 * ignore list (modules_to_not_convert, then "lm_head"). ret_params->ignore is allocated (its
 * strings are borrowed from spec): release it with qd_artifact_params_done(). Format "none" is
 * QD_ERR_INVALID_ARG (it writes nothing). The format's own check() is not run here.
 */
qd_err qd_artifact_format_params(const qd_spec *spec, qd_dtype model_dtype,
                                 const qd_format **ret_format, qd_format_params *ret_params,
                                 qd_error *err);
/* Free what qd_artifact_format_params() allocated; leaves *p zeroed. Accepts NULL. */
void qd_artifact_params_done(qd_format_params *p);

/*
 * Write r, the result of qd_job_quantize(m, spec, ...) on the model opened from
 * src_model_dir, as an artifact in out_dir (see the top of this file).
 *
 * First every linear is validated with the format's check() (spec, then each [n, k] shape),
 * and out_dir must not exist (QD_ERR_EXISTS). The directory is then built in a staging
 * directory beside it, "<out_dir>.staging-<pid>" (parents created as needed), every file
 * fsync'd, and renamed to out_dir at the end, the parent directory fsync'd; any failure
 * removes the staging directory, so either the complete artifact exists or nothing does.
 * max_shard_bytes: the largest safetensors shard (0: QD_ARTIFACT_SHARD_BYTES); a tensor
 * larger than that gets a shard of its own. A source whose config.json already has a
 * quantization_config is refused (QD_ERR_UNSUPPORTED).
 */
qd_err qd_artifact_write(const char *src_model_dir, const qd_model *m, const qd_spec *spec,
                         const qd_job_result *r, const char *out_dir, uint64_t max_shard_bytes,
                         qd_error *err);

/* ---- recognising ----------------------------------------------------------------------------- */

/* What config.json says a model directory holds. */
typedef struct qd_artifact_info {
    const qd_format *format;  /* NULL: no quantization_config (a float model) */
    qd_format_params params;  /* rebuilt from the config (dtype: config.json torch_dtype);
                                 params.ignore points into quantization_config */
    json_t *quantization_config; /* config.json's, owned (NULL for a float model) */
    json_t *side_config;      /* the format's side file when present, owned, else NULL */
} qd_artifact_info;

/*
 * Read dir/config.json (and the side file, and for GPTQ v1 the first shard's metadata) and
 * recognise the format as the table at the top says. A float model succeeds with format NULL.
 * Errors: QD_ERR_UNSUPPORTED for a quant_method or variant quantd does not read (naming it),
 * QD_ERR_CONFIG for a missing or mistyped key (naming it), the readers' errors.
 */
qd_err qd_artifact_detect(const char *dir, qd_artifact_info *ret, qd_error *err);
void qd_artifact_info_done(qd_artifact_info *info); /* accepts a zeroed struct */

/* One line for people: "gptq (gptq, 4-bit, group 32)", "compressed-tensors
 * (compressed-tensors, 8-bit, group -1)"; "float" for a float model. Truncated to len. */
const char *qd_artifact_describe(const qd_artifact_info *info, char *buf, size_t len);
/* The activation quantization the format implies ("none", "int8 per token (dynamic)", ...). */
const char *qd_artifact_act_name(qd_format_act act);

/* ---- reading --------------------------------------------------------------------------------- */

typedef struct qd_artifact qd_artifact;

/* Open an artifact, or a float model directory, for evaluation (see the top of this file). */
qd_err qd_artifact_open(const char *dir, qd_artifact **ret, qd_error *err);
void qd_artifact_free(qd_artifact *a); /* accepts NULL */

const qd_model *qd_artifact_model(const qd_artifact *a);
const qd_artifact_info *qd_artifact_get_info(const qd_artifact *a);

/* Set o's on_weights / hook_ctx and on_linear_input / linear_input_ctx to a's hooks (both
 * NULL for a float model); the other fields are left as they are. The hooks keep per-layer
 * state in a: one evaluation at a time per artifact. */
void qd_artifact_run_opts(qd_artifact *a, qd_run_opts *o);

/* Perplexity over tokens [n_seq, seq_len] (seq_len >= 2), like qd_job_perplexity(): base may
 * set threads, kernels and progress; its hooks are replaced by a's. */
qd_err qd_artifact_perplexity(qd_artifact *a, const int32_t *tokens, int64_t n_seq,
                              int64_t seq_len, const qd_run_opts *base, double *ret_ppl,
                              qd_error *err);

/* Unpack linear `kind` of `layer` as the evaluation does: *ret_q owns new arrays (free with
 * qd_qlinear_free); *ret_plain is set instead (codes NULL in *ret_q) when the artifact stores
 * the linear as a float weight. For tests and inspection. */
qd_err qd_artifact_unpack_linear(const qd_artifact *a, int layer, qd_linear_kind kind,
                                 qd_qlinear *ret_q, bool *ret_plain, qd_error *err);

#endif /* QD_ARTIFACT_H */
