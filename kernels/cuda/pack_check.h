/*
 * pack_check.h - what each packed layout of qd_cuda.h accepts: the argument checks of
 * qd_quant_pack_cuda / qd_pack_codes_cuda, shared by the CUDA module (quant.cu) and the host
 * emulator of the tests (tests/gpu/emu-module.c), so both refuse the same calls with the same
 * words. Plain C, compiled by the C compiler and by nvcc.
 */
#ifndef QD_CUDA_PACK_CHECK_H
#define QD_CUDA_PACK_CHECK_H

#include <stdint.h>

#include "error.h"
#include "qd_cuda.h"
#include "quant.h"

static inline const char *qd_cuda_layout_name(qd_cuda_layout l) {
    switch (l) {
    case QD_CUDA_LAYOUT_AWQ_GEMM: return "awq";
    case QD_CUDA_LAYOUT_GPTQ_V1: return "gptq";
    case QD_CUDA_LAYOUT_GPTQ_V2: return "gptq_v2";
    case QD_CUDA_LAYOUT_CT_PACKED: return "compressed-tensors";
    default: return "unknown layout";
    }
}

/* What each layout's words need (the format packers check the same, see qd_cuda.h). */
static inline qd_err qd_cuda_check_layout(qd_cuda_layout layout, int64_t n, int64_t k,
                                         int bits, int64_t gs, qd_qrule rule, qd_dtype sdt,
                                         const qd_cuda_packed *out, qd_error *err) {
    const char *name = qd_cuda_layout_name(layout);
    if ((int)layout < 0 || layout >= QD_CUDA_LAYOUT_COUNT)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda pack: unknown layout %d",
                            (int)layout);
    if (!out || !out->qweight)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda pack %s: no qweight buffer", name);
    if (qd_qrule_float_zero(rule))
        return qd_error_set(err, QD_ERR_UNSUPPORTED, "cuda pack %s: rule %d has float zero "
                            "points, which packed integer layouts cannot store", name,
                            (int)rule);
    const int64_t pf = bits == 2 || bits == 4 || bits == 8 ? 32 / bits : 0;
    switch (layout) {
    case QD_CUDA_LAYOUT_AWQ_GEMM:
        if (bits != 4)
            return qd_error_set(err, QD_ERR_UNSUPPORTED, "cuda pack awq: 4-bit only (got %d)",
                                bits);
        if (n % 8 != 0)
            return qd_error_set(err, QD_ERR_UNSUPPORTED, "cuda pack awq: out_features %lld is "
                                "not a multiple of 8", (long long)n);
        break;
    case QD_CUDA_LAYOUT_GPTQ_V1:
    case QD_CUDA_LAYOUT_GPTQ_V2:
        if (!pf)
            return qd_error_set(err, QD_ERR_UNSUPPORTED, "cuda pack %s: 2, 4 or 8 bits (got "
                                "%d)", name, bits);
        if (n % pf != 0 || k % pf != 0 || gs % pf != 0)
            return qd_error_set(err, QD_ERR_UNSUPPORTED, "cuda pack %s: out_features %lld, "
                                "in_features %lld and group_size %lld must be multiples of %lld",
                                name, (long long)n, (long long)k, (long long)gs, (long long)pf);
        if (layout == QD_CUDA_LAYOUT_GPTQ_V1 && !qd_qrule_symmetric(rule))
            return qd_error_set(err, QD_ERR_UNSUPPORTED, "cuda pack gptq: v1 stores zero - 1, "
                                "so only symmetric rules (zero 2^(b-1)) fit; use gptq_v2");
        break;
    default:
        if (bits != 4 && bits != 8)
            return qd_error_set(err, QD_ERR_UNSUPPORTED, "cuda pack compressed-tensors: 4 or 8 "
                                "bits (got %d)", bits);
        if (gs != k && gs % pf != 0)
            return qd_error_set(err, QD_ERR_UNSUPPORTED, "cuda pack compressed-tensors: "
                                "group_size %lld is not a multiple of %lld", (long long)gs,
                                (long long)pf);
        break;
    }
    if (layout != QD_CUDA_LAYOUT_CT_PACKED && sdt != QD_DTYPE_F16)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda pack %s: the format stores F16 "
                            "scales, so the scale dtype must be F16", name);
    return QD_OK;
}

#endif /* QD_CUDA_PACK_CHECK_H */
