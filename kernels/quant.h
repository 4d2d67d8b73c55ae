/*
 * quant.h - per-element quantization rules shared by every backend (C and nvcc), and the RTN /
 * FP8 kernels built on them.
 *
 * Each quantized format computes a group's scale and zero point its own way; these rules are
 * the single definition of each, used by RTN, GPTQ, AWQ and the CUDA kernels alike, so no two
 * code paths can disagree (see docs/formats.md, section 8 "Zero points" and "Symmetric int4
 * scale"). All codes are in the UNSIGNED domain [0, qmax], qmax = 2^bits - 1, with the zero
 * point in the same domain; dequant = (code - zero) * scale. A rule whose reference works in
 * the signed domain [-2^(b-1), 2^(b-1) - 1] computes there and adds 2^(b-1) at the end.
 *
 *   QD_QRULE_...             reference           scale s                zero      degenerate
 *   ASYM_ZERO_IN_RANGE       GPTQ asym           (hi' - lo') / qmax     round     0 -> [-1, 1]
 *   ASYM_ZERO_IN_RANGE_EPS   compr.-tensors asym same, >= fp32 eps      round     eps clamp
 *   ASYM_MINMAX              AutoAWQ             max(hi-lo, 1e-5)/qmax  round     1e-5 clamp
 *   SYM_HALF                 GPTQ sym            2 absmax / qmax        2^(b-1)   0 -> [-1, 1]
 *   SYM_HALF_EPS             compr.-tensors sym  2 absmax / qmax        2^(b-1)   eps clamp
 *   SYM_MAX                  ModelOpt, SmoothQ.  absmax / (2^(b-1)-1)   2^(b-1)   0 -> s = 1
 *   ASYM_FLOAT_ZERO          DashInfer uint4/8   (hi - lo) / qmax       float     s 0 -> 1
 *   ASYM_FLOAT_ZERO_SIGNED   DashInfer int4/8    (hi - lo) / qmax       float     s 0 -> 1
 * with lo' = min(lo, 0), hi' = max(hi, 0) (0 forced into the range). Each rule's exact
 * formulas, and the source followed, are in the comment above its case in qd_quant_params().
 *
 * Codes:
 *   integer zero, unsigned reference (GPTQ, AutoAWQ, ModelOpt):
 *       code = clamp(round(w / s) + z, 0, qmax)
 *   compressed-tensors (signed domain, zs = z - 2^(b-1)):
 *       code = clamp(round(w / s + zs), -2^(b-1), 2^(b-1) - 1) + 2^(b-1)
 *   DashInfer (zero not rounded; round after clamping):
 *       code = round(clamp(w / s + z, 0, qmax))                       (unsigned formats)
 *       code = round(clamp(w / s + zs, -2^(b-1), 2^(b-1) - 1)) + 2^(b-1)   (signed formats)
 * round() is round-half-to-even (rintf under the default rounding mode), as torch.round in
 * every reference. The groupings above are not cosmetic: w/s + z rounds once more in float
 * than round(w/s) + z, so near a tie the two give different codes, and each format's engine
 * was matched to its own reference.
 *
 * Scale storage. Every reference computes the scale in fp32 (AutoAWQ in fp16) and stores it in
 * fp16/bf16/fp32. quantd rounds the scale to the target's scale dtype FIRST and computes the
 * codes with the rounded scale, so that dequantizing (code - zero) * scale with the stored
 * values is exactly what the engine computes. The zero point is derived as its reference
 * derives it: from the fp32 scale (GPTQ, compressed-tensors, DashInfer), or from the stored
 * scale for AutoAWQ, whose whole computation runs in the layer's fp16. DashInfer's float zero
 * is stored in the model dtype too, so it is rounded to the scale dtype in its own domain.
 * A scale that rounds to 0 in its dtype (a range below the dtype's smallest subnormal) is
 * stored as that smallest subnormal, and one that overflows as the largest finite value, so
 * the stored parameters always dequantize to finite numbers.
 *
 * Arithmetic. fp32 only, one IEEE operation per step (no fused multiply-add can form: the
 * build uses ISO C without FP contraction, and no expression here is a product plus a sum),
 * rintf / fminf / fmaxf / fabsf only, the fp16/bf16/e4m3 conversions of dtype.h (integer
 * code). So the C compiler and nvcc produce the same bits. Signed zeros are normalised
 * (z + 0.0f), so a stored zero point never differs by the sign of 0 between backends.
 *
 * Inputs must be finite (the drivers check); a NaN weight would still give a defined code.
 */
#ifndef QD_QUANT_H
#define QD_QUANT_H

#include <float.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>

#include "dtype.h" /* QD_HD, fp16/bf16/e4m3 conversions */

typedef enum qd_qtype {
    QD_QTYPE_INT = 0,
    QD_QTYPE_FP8_E4M3,
} qd_qtype;

typedef enum qd_qrule {
    QD_QRULE_ASYM_ZERO_IN_RANGE = 0, /* GPTQ asymmetric (AutoGPTQ, IST gptq) */
    QD_QRULE_ASYM_MINMAX,            /* AutoAWQ (zero_point=True) */
    QD_QRULE_SYM_HALF,               /* GPTQ symmetric: absmax/7.5 for int4 */
    QD_QRULE_SYM_MAX,                /* ModelOpt / SmoothQuant / AutoAWQ-sym: absmax/7 */
    QD_QRULE_ASYM_FLOAT_ZERO,        /* DashInfer InstantQuant, unsigned formats (uint8/uint4) */
    QD_QRULE_ASYM_ZERO_IN_RANGE_EPS, /* compressed-tensors asymmetric */
    QD_QRULE_SYM_HALF_EPS,           /* compressed-tensors symmetric */
    QD_QRULE_ASYM_FLOAT_ZERO_SIGNED, /* DashInfer InstantQuant, signed formats (int8/int4) */
    QD_QRULE_COUNT
} qd_qrule;

/* A group's statistics: lo = min w, hi = max w, amax = max |w| (= max(-lo, hi)). */
typedef struct qd_qstats {
    float lo, hi, amax;
} qd_qstats;

/* The stored parameters of one group: scale already rounded to the scale dtype, zero in the
 * unsigned domain (an integer for every rule but the DashInfer ones). */
typedef struct qd_qparams {
    float scale;
    float zero;
} qd_qparams;

#define QD_QUANT_MIN_BITS 2
#define QD_QUANT_MAX_BITS 8
#define QD_FP8_E4M3_MAX 448.0f

/* ---- statistics ------------------------------------------------------------------------- */

/* Statistics of the n >= 1 values x[0], x[stride], ... (a group of a row when stride is 1).
 * Comparisons, not fminf/fmaxf, so the result (the sign of a zero included) depends only on
 * the order of the values, which every backend keeps. */
static inline QD_HD qd_qstats qd_qstats_of(const float *x, int64_t n, int64_t stride) {
    qd_qstats st;
    st.lo = x[0];
    st.hi = x[0];
    for (int64_t i = 1; i < n; i++) {
        float v = x[i * stride];
        if (v < st.lo) st.lo = v;
        if (v > st.hi) st.hi = v;
    }
    st.amax = fabsf(st.lo) > fabsf(st.hi) ? fabsf(st.lo) : fabsf(st.hi);
    return st;
}

/* ---- rounding to the storage dtype ---------------------------------------------------------- */

/* v rounded (to nearest even) to F16 or BF16 and widened back; any other dtype: v unchanged. */
static inline QD_HD float qd_quant_round_to(float v, qd_dtype dt) {
    if (dt == QD_DTYPE_F16) return qd_fp16_to_fp32(qd_fp32_to_fp16(v));
    if (dt == QD_DTYPE_BF16) return qd_bf16_to_fp32(qd_fp32_to_bf16(v));
    return v;
}

/* A positive scale as stored in dt: rounded, then kept in [smallest subnormal, largest finite]
 * of the dtype (see the header comment). */
static inline QD_HD float qd_quant_store_scale(float s, qd_dtype dt) {
    float r = qd_quant_round_to(s, dt);
    float tiny, huge;
    if (dt == QD_DTYPE_F16) {
        tiny = qd_fp32_from_bits(0x33800000u); /* 2^-24 */
        huge = 65504.0f;
    } else if (dt == QD_DTYPE_BF16) {
        tiny = qd_fp32_from_bits(0x00010000u); /* 2^-133 */
        huge = qd_fp32_from_bits(0x7F7F0000u);
    } else {
        tiny = qd_fp32_from_bits(0x00000001u); /* 2^-149 */
        huge = FLT_MAX;
    }
    if (!(r >= tiny)) return tiny; /* 0, a negative or NaN value */
    if (r > huge) return huge;
    return r;
}

/* ---- the rules --------------------------------------------------------------------------- */

static inline QD_HD bool qd_qrule_valid(int rule) {
    return rule >= 0 && rule < (int)QD_QRULE_COUNT;
}

/* Whether the rule computes codes in the signed domain (the zero is offset by 2^(b-1)). */
static inline QD_HD bool qd_qrule_signed(qd_qrule rule) {
    return rule == QD_QRULE_ASYM_ZERO_IN_RANGE_EPS || rule == QD_QRULE_SYM_HALF_EPS ||
           rule == QD_QRULE_ASYM_FLOAT_ZERO_SIGNED;
}

/* Whether the zero point is a float rather than an integer (DashInfer). */
static inline QD_HD bool qd_qrule_float_zero(qd_qrule rule) {
    return rule == QD_QRULE_ASYM_FLOAT_ZERO || rule == QD_QRULE_ASYM_FLOAT_ZERO_SIGNED;
}

/* Whether the rule is symmetric (zero fixed at 2^(b-1)). */
static inline QD_HD bool qd_qrule_symmetric(qd_qrule rule) {
    return rule == QD_QRULE_SYM_HALF || rule == QD_QRULE_SYM_HALF_EPS ||
           rule == QD_QRULE_SYM_MAX;
}

static inline QD_HD float qd_quant_clampf(float v, float lo, float hi) {
    return fminf(fmaxf(v, lo), hi);
}

/*
 * (scale, zero) of a group with statistics st, for `bits` in [2, 8]; the scale is stored in
 * scale_dtype (F32, F16 or BF16; see the header comment for the order of rounding).
 */
static inline QD_HD qd_qparams qd_quant_params(qd_qrule rule, int bits, qd_qstats st,
                                               qd_dtype scale_dtype) {
    const float qmax = (float)((1 << bits) - 1);
    const float off = (float)(1 << (bits - 1)); /* 2^(b-1): the signed offset */
    qd_qparams p;
    float lo0 = fminf(st.lo, 0.0f), hi0 = fmaxf(st.hi, 0.0f); /* 0 forced into the range */
    float s, z;
    switch (rule) {
    case QD_QRULE_ASYM_ZERO_IN_RANGE:
    default:
        /* AutoGPTQ auto_gptq/quantization/quantizer.py Quantizer.find_params (= IST-DASLab
         * gptq quant.py), sym=False: xmin = min(min, 0), xmax = max(max, 0); both 0 ->
         * [-1, 1]; scale = (xmax - xmin) / maxq; zero = round(-xmin / scale), fp32. */
        if (lo0 == 0.0f && hi0 == 0.0f) {
            lo0 = -1.0f;
            hi0 = 1.0f;
        }
        s = (hi0 - lo0) / qmax;
        z = qd_quant_clampf(rintf(-lo0 / s), 0.0f, qmax); /* the clamp never binds */
        p.scale = qd_quant_store_scale(s, scale_dtype);
        break;
    case QD_QRULE_ASYM_ZERO_IN_RANGE_EPS:
        /* compressed-tensors quantization/utils/helpers.py calculate_qparams, asymmetric:
         * min/max forced through 0; scales = (max - min) / bit_range clamped to
         * >= finfo(float32).eps; zero = round(clamp(bit_min - min / scale, bit_min, bit_max))
         * in the signed domain (bit_min = -2^(b-1)). */
        s = fmaxf((hi0 - lo0) / qmax, FLT_EPSILON);
        z = rintf(qd_quant_clampf(-off - lo0 / s, -off, off - 1.0f)) + off;
        p.scale = qd_quant_store_scale(s, scale_dtype);
        break;
    case QD_QRULE_ASYM_MINMAX:
        /* AutoAWQ awq/quantize/quantizer.py pseudo_quantize_tensor, zero_point=True:
         * scales = (max - min).clamp(min=1e-5) / (2^b - 1); zeros = (-round(min / scales))
         * .clamp(0, 2^b - 1). 0 is not forced into the range. AutoAWQ runs in the layer's fp16,
         * so its zero comes from the fp16 scale: here, from the stored one. */
        s = fmaxf(st.hi - st.lo, 1e-5f) / qmax;
        p.scale = qd_quant_store_scale(s, scale_dtype);
        z = qd_quant_clampf(-rintf(st.lo / p.scale), 0.0f, qmax);
        break;
    case QD_QRULE_SYM_HALF: {
        /* AutoGPTQ Quantizer.find_params, sym=True: xmax = max(|xmin|, xmax) and xmin = -xmax
         * ONLY where xmin < 0, so a group with no negative value keeps xmin = 0 and gets
         * scale = xmax / maxq (a quirk of the reference, kept: such a group clips its top
         * half); both 0 -> [-1, 1]; zero = (maxq + 1) / 2. */
        float xmax = fmaxf(fabsf(lo0), hi0);
        float xmin = lo0 < 0.0f ? -xmax : 0.0f;
        if (xmin == 0.0f && xmax == 0.0f) {
            xmin = -1.0f;
            xmax = 1.0f;
        }
        s = (xmax - xmin) / qmax;
        z = off;
        p.scale = qd_quant_store_scale(s, scale_dtype);
        break;
    }
    case QD_QRULE_SYM_HALF_EPS:
        /* compressed-tensors calculate_qparams, symmetric: scale = max(|min|, |max|) /
         * (bit_range / 2), clamped to >= finfo(float32).eps; zero 0 (signed). bit_range / 2 =
         * (2^b - 1) / 2 is exact in fp32. */
        s = fmaxf(st.amax / (qmax * 0.5f), FLT_EPSILON);
        z = off;
        p.scale = qd_quant_store_scale(s, scale_dtype);
        break;
    case QD_QRULE_SYM_MAX:
        /* ModelOpt TensorQuantizer: scale = amax / maxbound, maxbound = 2^(b-1) - 1 (7, 127),
         * a zero amax replaced by maxbound (scale 1); codes clamp(round(w / s), -2^(b-1),
         * 2^(b-1) - 1). The same scale as SmoothQuant's fake quant (absmax / 127) and the
         * reference perplexity table's "sym"; AutoAWQ's zero_point=False differs only in
         * clamping amax to >= 1e-5. */
        s = st.amax > 0.0f ? st.amax / (off - 1.0f) : 1.0f;
        z = off;
        p.scale = qd_quant_store_scale(s, scale_dtype);
        break;
    case QD_QRULE_ASYM_FLOAT_ZERO:
    case QD_QRULE_ASYM_FLOAT_ZERO_SIGNED: {
        /* DashInfer python/pyhie/allspark/model/quantization_utils.py
         * quantize_gemm_weight_a16w8_torch / _a16w4_torch: fmax, fmin of the group in fp32
         * (not forced through 0); scale = (fmax - fmin) / (qmax - qmin), 1 where 0;
         * zero = qmin - fmin / scale, NOT rounded; both stored in the model dtype. qmin is 0
         * for uint8/uint4 and -2^(b-1) for int8/int4; the zero is rounded to the dtype in
         * that domain, then moved to the unsigned one (exact for fp16/bf16; for fp32 the
         * offset can round it by half an ulp of 2^b, and the codes use the moved value). */
        bool sgn = rule == QD_QRULE_ASYM_FLOAT_ZERO_SIGNED;
        float qmin = sgn ? -off : 0.0f;
        s = (st.hi - st.lo) / qmax;
        if (s == 0.0f) s = 1.0f;
        z = qd_quant_round_to(qmin - st.lo / s, scale_dtype);
        if (sgn) z = z + off;
        p.scale = qd_quant_store_scale(s, scale_dtype);
        break;
    }
    }
    p.zero = z + 0.0f; /* -0 -> +0 */
    return p;
}

/* The unsigned-domain code of w in a group with stored parameters p. */
static inline QD_HD uint8_t qd_quant_code(qd_qrule rule, int bits, qd_qparams p, float w) {
    const float qmax = (float)((1 << bits) - 1);
    const float off = (float)(1 << (bits - 1));
    float c;
    switch (rule) {
    case QD_QRULE_ASYM_ZERO_IN_RANGE_EPS:
    case QD_QRULE_SYM_HALF_EPS:
        /* compressed-tensors forward.py _quantize: round(x / scale + zero_point), clamped to
         * [q_min, q_max], signed domain. */
        c = qd_quant_clampf(rintf(w / p.scale + (p.zero - off)), -off, off - 1.0f) + off;
        break;
    case QD_QRULE_ASYM_FLOAT_ZERO:
        /* DashInfer: round(clamp(w / scale + zero, qmin, qmax)). */
        c = rintf(qd_quant_clampf(w / p.scale + p.zero, 0.0f, qmax));
        break;
    case QD_QRULE_ASYM_FLOAT_ZERO_SIGNED:
        c = rintf(qd_quant_clampf(w / p.scale + (p.zero - off), -off, off - 1.0f)) + off;
        break;
    default:
        /* GPTQ quantize(), AutoAWQ, ModelOpt: clamp(round(w / scale) + zero, 0, maxq). */
        c = qd_quant_clampf(rintf(w / p.scale) + p.zero, 0.0f, qmax);
        break;
    }
    return (uint8_t)c;
}

/* (code - zero) * scale: what the engine computes. */
static inline QD_HD float qd_quant_dequant(qd_qparams p, int code) {
    return ((float)code - p.zero) * p.scale;
}

/* ---- FP8 e4m3 --------------------------------------------------------------------------- */

/*
 * The FP8 weight scale of a group (tensor or row) with max |w| = amax: amax / 448, clamped to
 * >= fp32 eps as compressed-tensors' calculate_qparams does (FP8 range +-448; an all-zero
 * group gets scale eps and codes 0), then stored in scale_dtype.
 */
static inline QD_HD float qd_fp8_scale(float amax, qd_dtype scale_dtype) {
    return qd_quant_store_scale(fmaxf(amax / QD_FP8_E4M3_MAX, FLT_EPSILON), scale_dtype);
}

/* e4m3 bits of w / scale, saturating to +-448 (compressed-tensors clamps to the fp8 range
 * before the cast; torch's cast itself would give NaN past 464). */
static inline QD_HD uint8_t qd_fp8_code(float scale, float w) {
    return qd_fp32_to_e4m3_sat(w / scale);
}

static inline QD_HD float qd_fp8_dequant(float scale, uint8_t code) {
    return qd_e4m3_to_fp32(code) * scale;
}

/* ---- kernels (host) ---------------------------------------------------------------------- */

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Round-to-nearest quantization of w [n, k] (row-major fp32, finite) in groups of group_size
 * consecutive columns of a row (group_size divides k; k for per-channel):
 *   codes  [n, k]                     unsigned-domain codes
 *   scales [n, k / group_size]        stored scales (rounded to scale_dtype)
 *   zeros  [n, k / group_size]        unsigned-domain zero points
 * bits in [2, 8], rule < QD_QRULE_COUNT, scale_dtype F32/F16/BF16; the caller checks these
 * (quantizers/rtn.c does). _ref is the plain loop that defines the result; _cpu splits the rows
 * over n_threads threads (<= 0: qd_cpu_threads()) and gives identical bits.
 */
void qd_quant_rtn_ref(const float *w, int64_t n, int64_t k, int bits, int64_t group_size,
                      qd_qrule rule, qd_dtype scale_dtype, uint8_t *codes, float *scales,
                      float *zeros);
void qd_quant_rtn_cpu(const float *w, int64_t n, int64_t k, int bits, int64_t group_size,
                      qd_qrule rule, qd_dtype scale_dtype, uint8_t *codes, float *scales,
                      float *zeros, int n_threads);

/*
 * FP8 e4m3 quantization of w [n, k]: codes [n, k] (e4m3 bits), scales [n] (per_channel: the
 * row's amax / 448; per tensor: the tensor's, repeated in every row). Same contract and
 * backends as above.
 */
void qd_quant_fp8_ref(const float *w, int64_t n, int64_t k, bool per_channel,
                      qd_dtype scale_dtype, uint8_t *codes, float *scales);
void qd_quant_fp8_cpu(const float *w, int64_t n, int64_t k, bool per_channel,
                      qd_dtype scale_dtype, uint8_t *codes, float *scales, int n_threads);

#ifdef __cplusplus
}
#endif

#endif /* QD_QUANT_H */
