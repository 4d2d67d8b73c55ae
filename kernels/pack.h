/*
 * pack.h - how unsigned-domain codes and zero points become the 32-bit words of each packed
 * weight format, as `static inline QD_HD` helpers built by the C compiler and by nvcc alike.
 *
 * A word holds pf = 32 / bits fields; field i sits in bits [bits*i, bits*i + bits). Which
 * value goes into which field is the whole difference between the layouts (docs/formats.md
 * sections 1-3; quantizers/formats/ writes the same words on the CPU):
 *
 *   AutoAWQ GEMM (4-bit)   fields along the OUTPUT axis, interleaved: field i holds channel
 *                          qd_awq_order(i) of the word's 8, ORDER = [0, 2, 4, 6, 1, 3, 5, 7]
 *                          (channel c sits in field [0, 4, 1, 5, 2, 6, 3, 7][c]);
 *                          zero points raw.
 *   GPTQ v1 / v2           qweight fields along the INPUT axis, sequential; qzeros along the
 *                          output axis, sequential, each field zero - off (off 1 in v1, 0 in
 *                          v2), masked to the field width.
 *   compressed-tensors     weight_packed fields along the input axis, sequential, the row
 *   pack-quantized         padded with 0 fields; weight_zero_point along the output axis,
 *                          sequential, padded with 0.
 *
 * The helpers read `count` values at a stride, so one definition serves codes held row-major
 * [N, K] (stride 1 along K, stride K along N) and tiles in shared memory. Fields past `count`
 * are 0, which is the padding compressed-tensors writes. The format packers in
 * quantizers/formats/ compute the same words with their own loops; they may switch to these
 * helpers (the CUDA backend's golden test checks that both give identical words).
 */
#ifndef QD_PACK_H
#define QD_PACK_H

#include <stdint.h>

#include "dtype.h" /* QD_HD */

/* Values per 32-bit word for a field width that divides 32 (2, 4, 8). */
static inline QD_HD int qd_pack_per_word(int bits) {
    return 32 / bits;
}

/* The channel (of the word's 8) that AutoAWQ GEMM stores in nibble i:
 * [0, 2, 4, 6, 1, 3, 5, 7][i], i.e. (i >> 2) | ((i & 3) << 1). */
static inline QD_HD int qd_awq_order(int i) {
    return (i >> 2) | ((i & 3) << 1);
}

/* Fields i < count of a sequential word: v[i * stride] in bits [bits*i, ...). The values must
 * already fit in `bits` (codes do). */
static inline QD_HD uint32_t qd_pack_seq(const uint8_t *v, int64_t stride, int count,
                                         int bits) {
    uint32_t w = 0;
    for (int i = 0; i < count; i++) w |= (uint32_t)v[i * stride] << (bits * i);
    return w;
}

/* An AutoAWQ GEMM word: nibble i = v[qd_awq_order(i) * stride], 8 values. */
static inline QD_HD uint32_t qd_pack_awq(const uint8_t *v, int64_t stride) {
    uint32_t w = 0;
    for (int i = 0; i < 8; i++) w |= (uint32_t)v[qd_awq_order(i) * stride] << (4 * i);
    return w;
}

/* One zero-point field: the integer zero z (exact in a float, in [0, 2^bits - 1]) minus off,
 * masked to the field width (GPTQ v1 stores z - 1; a zero of 0 would wrap, which is why v1
 * takes symmetric layers only). */
static inline QD_HD uint32_t qd_pack_zero_field(float z, int off, int bits) {
    return ((uint32_t)((int)z - off)) & ((1u << bits) - 1u);
}

#endif /* QD_PACK_H */
