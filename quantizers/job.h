/*
 * job.h - one quantization job, in process: a model, a resolved spec, calibration tokens ->
 * every decoder linear quantized, with a quality report.
 *
 * This is the engine the `quantd quantize` command and (later) the daemon's workers run. It
 * dispatches on the spec's method:
 *   rtn          every linear by round-to-nearest (calibration optional: only measures error)
 *   gptq         qd_calib_run, sequential (each group sees the already quantized groups and
 *                layers before it), one Hessian per group of linears sharing an input
 *   awq          qd_awq_run (scale search, folding, clip search); w4a8-awq the same with the
 *                W4A8 parameters
 *   smoothquant  qd_smoothquant (smoothing folded into the norms, int8 per channel)
 *   fp8          qd_fp8 calibration (static activation scales) or per-linear when dynamic
 * The rule that picks scales and zero points comes from the target format (kernels/quant.h);
 * format "none" uses the reference tables' conventions (asymmetric: zero in range, symmetric:
 * absmax / (2^(b-1) - 1)).
 *
 * The result keeps, per layer and linear, the qd_qlinear (or, for a module the spec excludes,
 * the float weight), the norm weights a method folded scales into, and the relative output
 * error of each group on the calibration inputs. qd_job_perplexity() evaluates the model with
 * the result's dequantized weights (and activation quantization, for W8A8 / FP8 / W4A8).
 */
#ifndef QD_JOB_H
#define QD_JOB_H

#include <stdbool.h>
#include <stdint.h>

#include "calib.h"
#include "error.h"
#include "model.h"
#include "qlinear.h"
#include "smoothquant.h"
#include "spec.h"

typedef struct qd_job_progress {
    void *ctx;
    /* Optional. A stage starts: "quantize", "calibrate", ... */
    void (*stage)(void *ctx, const char *stage);
    /* Optional. A layer is done (0-based), of n_layers. */
    void (*layer_done)(void *ctx, int layer, int n_layers);
    /* Optional. A group's relative output error is known. */
    void (*group_error)(void *ctx, int layer, qd_calib_group g, double rel_err);
    /* Optional. Non-zero: stop at the next layer with QD_ERR_CANCELLED. */
    int (*cancelled)(void *ctx);
} qd_job_progress;

typedef struct qd_job_result {
    int n_layers;
    int64_t hidden;
    qd_qlinear *q;         /* [n_layers * QD_LINEAR_COUNT]; codes NULL for a kept linear */
    float **keep;          /* [n_layers * QD_LINEAR_COUNT]: float weight of a linear the spec
                              excludes (NULL otherwise) */
    float *attn_norm;      /* [n_layers * hidden] folded norms, or NULL when unchanged */
    float *mlp_norm;
    double *rel_err;       /* [n_layers * QD_CALIB_GROUP_COUNT]; < 0 when not measured */
    qd_act_quant act_mode; /* activation quantization the target implies (evaluation) */
    qd_act_fq act;         /* its static scales, when act_mode is a TENSOR mode */
} qd_job_result;

/* Run the job. spec must be resolved (qd_spec_resolve). calib [n_seq, seq_len] may be NULL
 * when the method needs no calibration. On failure *res holds nothing. */
qd_err qd_job_quantize(const qd_model *m, const qd_spec *spec, const int32_t *calib,
                       int64_t n_seq, int64_t seq_len, const qd_job_progress *p,
                       const qd_run_opts *run, qd_job_result *res, qd_error *err);
void qd_job_result_free(qd_job_result *r); /* accepts a zeroed struct */

/* Perplexity over tokens [n_seq, seq_len] with r's weights (r NULL: the float model).
 * base may set threads/kernels/progress; its weight and input hooks are replaced. */
qd_err qd_job_perplexity(const qd_model *m, const qd_job_result *r, const int32_t *tokens,
                         int64_t n_seq, int64_t seq_len, const qd_run_opts *base, double *ppl,
                         qd_error *err);

/* The rule and scale dtype the spec's method and format imply for weight codes. */
qd_err qd_job_rule(const qd_model *m, const qd_spec *spec, qd_qrule *ret_rule,
                   qd_dtype *ret_scale_dtype, qd_error *err);

/* ---- the device a job runs on ----
 *
 * "cpu" (the default): the cpu kernels, exactly as without a device. "cuda:N": a CUDA context
 * on device N and its kernel table (kernels/cuda/qd_cuda.h); qd_job_device_run_opts() points a
 * qd_run_opts at it, and qd_job_quantize() then runs the forward passes through the table,
 * GPTQ per linear with the CUDA GPTQ, AWQ's clip search and single-linear scale-search loss
 * with the CUDA searches, and RTN / FP8 with the CUDA kernels (integer codes identical to the
 * CPU's). "auto": cuda:0 when the build has CUDA and a device answers, else cpu. A device
 * belongs to one thread at a time. */
typedef struct qd_job_device {
    qd_backend_kind kind;    /* QD_BACKEND_CPU or QD_BACKEND_CUDA */
    int index;               /* N of cuda:N; 0 for the CPU */
    struct qd_cuda *cuda;    /* the context (CUDA), NULL for the CPU */
    qd_kernels table;        /* the CUDA kernel table, bound to cuda */
    char name[32];           /* "cpu", "cuda:0" */
    char desc[160];          /* "cuda:0 (NVIDIA H100 80GB HBM3, 79 GiB)" */
} qd_job_device;

/* Parse "cpu", "cuda:N" or "auto": *ret_index is N, -1 for cpu, -2 for auto. Anything else is
 * QD_ERR_INVALID_ARG naming the text. */
qd_err qd_job_device_parse(const char *text, int *ret_index, qd_error *err);
/* Open the device text names (qd_job_device_parse). "auto" never fails for want of a GPU: it
 * opens the CPU and *ret_note (optional) says why (otherwise NULL). cuda:N fails with the
 * runtime's reason: QD_ERR_UNAVAILABLE (no CUDA backend or device), QD_ERR_INVALID_ARG (N out
 * of range), QD_ERR_DEVICE / QD_ERR_NOMEM. */
qd_err qd_job_device_open(const char *text, qd_job_device *ret, const char **ret_note,
                          qd_error *err);
/* Close it (the CUDA context and everything it held). Accepts a zeroed struct. */
void qd_job_device_close(qd_job_device *d);
/* Whether an earlier error left the device unusable; qd_job_device_reopen then closes and
 * opens the same device again (QD_OK and nothing done for a usable device or the CPU). */
bool qd_job_device_broken(const qd_job_device *d);
qd_err qd_job_device_reopen(qd_job_device *d, qd_error *err);
/* o->kernels = the device's table (NULL for the CPU). */
void qd_job_device_run_opts(const qd_job_device *d, qd_run_opts *o);

#endif /* QD_JOB_H */
