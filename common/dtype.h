/*
 * dtype.h - conversions between quantd's floating-point element types.
 *
 * The scalar conversions below (fp32 <-> fp16, bf16, fp8 e4m3) are `static inline QD_HD`, so
 * the same source is compiled by the C compiler for the CPU paths and by nvcc for the CUDA
 * kernels. The bulk converters qd_convert()/qd_tensor_convert() (dtype.c) are host-only and
 * build on them.
 *
 * Numerics. Every narrowing conversion rounds to nearest, ties to even (the IEEE 754 default),
 * including into and out of the subnormal range; a result too small for the smallest
 * subnormal becomes a zero of the input's sign. Zero, infinity and NaN keep their sign. A NaN
 * input gives a quiet NaN (the payload is not preserved exactly, but a NaN never turns into an
 * infinity or a number). Overflow depends on the format:
 *   - fp16 (IEEE binary16) and bf16: a magnitude that rounds above the largest finite value
 *     (65504, resp. 0x1.fep127) becomes +-Inf; so 65520 -> Inf but 65519.99 -> 65504.
 *   - fp8 e4m3 ("e4m3fn": bias 7, subnormals down to 2^-9, largest finite 448, 0x7F/0xFF are
 *     NaN, no infinities): qd_fp32_to_e4m3() matches PyTorch's torch.float8_e4m3fn
 *     conversion (c10::detail::fp8e4m3fn_from_fp32_value): a magnitude that rounds above 448
 *     (anything above 464; 464 itself ties to 448) and +-Inf become NaN with the input's
 *     sign. qd_fp32_to_e4m3_sat() clamps to [-448, 448] first (Inf -> +-448), which is the
 *     "satfinite" behaviour quantizers want after scaling.
 * Widening conversions (fp16, bf16, e4m3 -> fp32) are exact.
 *
 * DESIGN. Only integer operations on the bit patterns are used: no libm, no lookup tables,
 * no float arithmetic, so the result cannot depend on the compiler's FP contraction, the
 * rounding mode, flush-to-zero settings or the device: the CPU and the GPU agree bit for bit.
 * One helper rounds a finite fp32 magnitude to a format with a given mantissa width and
 * exponent bias (qd_dtype_round_fp32_); each encoder only adds its own overflow and NaN rules.
 */
#ifndef QD_DTYPE_H
#define QD_DTYPE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "error.h"
#include "tensor.h"

#if defined(__CUDACC__)
#define QD_HD __host__ __device__
#else
#define QD_HD
#endif

/* ---- bit access ---------------------------------------------------------------------------- */

static inline QD_HD uint32_t qd_fp32_bits(float f) {
#if defined(__CUDA_ARCH__)
    return __float_as_uint(f);
#else
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
#endif
}

static inline QD_HD float qd_fp32_from_bits(uint32_t u) {
#if defined(__CUDA_ARCH__)
    return __uint_as_float(u);
#else
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
#endif
}

/* ---- shared helpers (internal; the trailing underscore marks them private) ----------------- */

/*
 * Round a finite, non-negative fp32 value (its bits, a < 0x7F800000) to a binary format with
 * `mbits` stored mantissa bits and exponent `bias`, round to nearest even. Returns the
 * magnitude encoding (exponent field << mbits | mantissa) WITHOUT an upper limit: a value
 * beyond the format's range gives an encoding at or past its Inf/NaN codes, which the caller
 * maps. The hidden bit is kept in the rounded significand q and the exponent field is added as
 * (e - 1) << mbits, so a mantissa carry (q reaching 2 << mbits) steps the exponent, and a
 * subnormal result (exponent field 0) that rounds up to 1 << mbits becomes the smallest
 * normal, without special cases.
 */
static inline QD_HD uint32_t qd_dtype_round_fp32_(uint32_t a, int mbits, int bias) {
    int e = (int)(a >> 23);
    uint32_t m = a & 0x7FFFFFu;
    if (e == 0)
        e = 1; /* fp32 subnormal: same scale as exponent 1, no hidden bit */
    else
        m |= 0x800000u;
    int et = e - 127 + bias; /* exponent field in the target format if it is normal there */
    int shift = 23 - mbits;
    if (et < 1) {
        shift += 1 - et; /* subnormal in the target: scale is fixed at exponent field 1 */
        et = 1;
    }
    /* m < 2^24, so with shift >= 25 the value is below half the smallest step: +0. */
    if (shift >= 25) return 0;
    uint32_t q = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1u);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u))) q++;
    return ((uint32_t)(et - 1) << mbits) + q;
}

/*
 * fp32 bits of a finite magnitude encoding `mag` of a format with `mbits` mantissa bits and
 * exponent `bias`, for formats whose values are all normal in fp32 (fp16, e4m3). Exact.
 */
static inline QD_HD uint32_t qd_dtype_widen_(uint32_t mag, int mbits, int bias) {
    uint32_t mmask = (1u << mbits) - 1u;
    int e = (int)(mag >> mbits);
    uint32_t m = mag & mmask;
    if (e == 0) {
        if (m == 0) return 0;
        /* subnormal: normalise; at most mbits steps */
        e = 1;
        while (!(m & (1u << mbits))) {
            m <<= 1;
            e--;
        }
        m &= mmask;
    }
    return ((uint32_t)(e - bias + 127) << 23) | (m << (23 - mbits));
}

/* ---- fp16 (IEEE binary16: 1 sign, 5 exponent bits, bias 15, 10 mantissa bits) --------------- */

static inline QD_HD uint16_t qd_fp32_to_fp16(float f) {
    uint32_t u = qd_fp32_bits(f);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t a = u & 0x7FFFFFFFu;
    if (a > 0x7F800000u) /* NaN: force the quiet bit, keep the top payload bits */
        return (uint16_t)(sign | 0x7E00u | ((a >> 13) & 0x01FFu));
    if (a == 0x7F800000u) return (uint16_t)(sign | 0x7C00u);
    uint32_t r = qd_dtype_round_fp32_(a, 10, 15);
    if (r > 0x7C00u) r = 0x7C00u; /* rounds past 65504: Inf */
    return (uint16_t)(sign | r);
}

static inline QD_HD float qd_fp16_to_fp32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t mag = h & 0x7FFFu;
    if (mag >= 0x7C00u) { /* Inf, or NaN made quiet */
        uint32_t m = (mag & 0x03FFu) << 13;
        return qd_fp32_from_bits(sign | 0x7F800000u | m | (m ? 0x00400000u : 0u));
    }
    return qd_fp32_from_bits(sign | qd_dtype_widen_(mag, 10, 15));
}

/* ---- bf16 (the top half of an fp32: 1 sign, 8 exponent bits, bias 127, 7 mantissa bits) ---- */

static inline QD_HD uint16_t qd_fp32_to_bf16(float f) {
    uint32_t u = qd_fp32_bits(f);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t a = u & 0x7FFFFFFFu;
    if (a > 0x7F800000u) /* NaN: plain truncation could drop every payload bit (-> Inf) */
        return (uint16_t)(sign | 0x7FC0u | ((a >> 16) & 0x003Fu));
    if (a == 0x7F800000u) return (uint16_t)(sign | 0x7F80u);
    uint32_t r = qd_dtype_round_fp32_(a, 7, 127);
    if (r > 0x7F80u) r = 0x7F80u; /* cannot happen from a finite fp32, kept for symmetry */
    return (uint16_t)(sign | r);
}

/* Exact: bf16 is a truncated fp32, subnormals included. */
static inline QD_HD float qd_bf16_to_fp32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) u |= 0x00400000u; /* NaN: make it quiet */
    return qd_fp32_from_bits(u);
}

/* ---- fp8 e4m3fn (1 sign, 4 exponent bits, bias 7, 3 mantissa bits; S.1111.111 = NaN) ------ */

/*
 * Non-saturating, as torch's .to(torch.float8_e4m3fn). Followed: PyTorch
 * c10/util/Float8_e4m3fn.h, fp8e4m3fn_from_fp32_value(): magnitudes >= 480.0f (the first
 * value past the format, which includes Inf and NaN) give S.1111.111 (NaN); smaller ones are
 * rounded to nearest even, so those in (464, 480) round onto the NaN code as well, and 464
 * (the midpoint 448..480) ties down to 448 (mantissa 110 is even). Hence: |x| > 464 -> NaN.
 */
static inline QD_HD uint8_t qd_fp32_to_e4m3(float f) {
    uint32_t u = qd_fp32_bits(f);
    uint32_t sign = (u >> 24) & 0x80u;
    uint32_t a = u & 0x7FFFFFFFu;
    if (a >= 0x7F800000u) return (uint8_t)(sign | 0x7Fu); /* Inf, NaN: NaN */
    uint32_t r = qd_dtype_round_fp32_(a, 3, 7);
    if (r > 0x7Fu) r = 0x7Fu; /* rounds past 448: NaN */
    return (uint8_t)(sign | r);
}

/* Saturating: finite values and Inf are clamped to [-448, 448] before rounding; NaN -> NaN. */
static inline QD_HD uint8_t qd_fp32_to_e4m3_sat(float f) {
    uint32_t u = qd_fp32_bits(f);
    uint32_t sign = (u >> 24) & 0x80u;
    uint32_t a = u & 0x7FFFFFFFu;
    if (a > 0x7F800000u) return (uint8_t)(sign | 0x7Fu);
    if (a > 0x43E00000u) a = 0x43E00000u; /* 448.0f; Inf compares above it too */
    return (uint8_t)(sign | qd_dtype_round_fp32_(a, 3, 7));
}

static inline QD_HD float qd_e4m3_to_fp32(uint8_t b) {
    uint32_t sign = (uint32_t)(b & 0x80u) << 24;
    uint32_t mag = b & 0x7Fu;
    if (mag == 0x7Fu) return qd_fp32_from_bits(sign | 0x7FC00000u);
    return qd_fp32_from_bits(sign | qd_dtype_widen_(mag, 3, 7));
}

/* ---- bulk conversion (host, dtype.c) ------------------------------------------------------- */

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Convert n elements from src (src_type) to dst (dst_type); both contiguous. Supported
 * dtypes: F64, F32, F16, BF16, F8_E4M3; anything else (integers, F8_E5M2) fails with
 * QD_ERR_UNSUPPORTED. Values go through fp32: F64 is first rounded to float by C's
 * conversion (nearest even), so F64 -> F16/BF16/F8 can round twice. F8_E4M3 is written
 * non-saturating (out-of-range -> NaN), like torch's .to(). The same dtype is a plain copy
 * (bits unchanged, overlap allowed); otherwise dst and src must not overlap.
 * Fails with QD_ERR_INVALID_ARG for a NULL buffer when n > 0 or a byte size past SIZE_MAX.
 */
qd_err qd_convert(qd_dtype dst_type, void *dst, qd_dtype src_type, const void *src, size_t n,
                  qd_error *err);

/*
 * Convert a whole contiguous tensor (view or owned) into a newly allocated, owned, contiguous
 * tensor of dst_type with the same shape; the caller frees it with qd_tensor_free(). *out is
 * written only on success. Errors: those of qd_convert() and qd_tensor_alloc(), and
 * QD_ERR_UNSUPPORTED for a non-contiguous src.
 */
qd_err qd_tensor_convert(const qd_tensor *src, qd_dtype dst_type, qd_tensor *out,
                         qd_error *err);

#ifdef __cplusplus
}
#endif

#endif /* QD_DTYPE_H */
