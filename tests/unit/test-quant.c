/*
 * test-quant.c - the per-element quantization rules (kernels/quant.h), the RTN / FP8 kernels
 * (ref and cpu), qd_qlinear and the RTN method (quantizers/rtn.h).
 *
 * The hand cases below were worked out on paper from each reference's formulas (the comments
 * show the arithmetic); the values are dyadic so every step is exact in fp32 and the expected
 * ties really are ties. The other tests check properties a wrong rule would break: codes in
 * range, round-trip error within half a step inside the clipped range, every e4m3 value
 * surviving FP8 quantization at scale 1, and the threaded kernels matching the reference bit
 * for bit.
 */
#include <float.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dtype.h"
#include "qlinear.h"
#include "quant.h"
#include "rtn.h"
#include "test.h"

/* ---- helpers ---------------------------------------------------------------------------- */

static uint32_t rng_state = 12345u;

static uint32_t rng_next(void) { /* xorshift32: deterministic, no libc rand() */
    uint32_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    rng_state = x;
    return x;
}

/* Uniform in [a, b). */
static float rng_uniform(float a, float b) {
    return a + (b - a) * (float)(rng_next() >> 8) * (1.0f / 16777216.0f);
}

/* A matrix [n, k] whose rows exercise the rules' corners: ordinary, one-signed, all-zero,
 * constant, on a dyadic grid (exact ties), tiny (eps clamps), and with outliers. */
static float *make_weights(int n, int k) {
    float *w = malloc((size_t)n * (size_t)k * sizeof *w);
    if (!w) return NULL;
    for (int r = 0; r < n; r++) {
        float *x = w + (size_t)r * (size_t)k;
        float c = rng_uniform(-1.0f, 1.0f);
        for (int i = 0; i < k; i++) {
            switch (r % 8) {
            case 0: x[i] = rng_uniform(-1.0f, 1.0f); break;
            case 1: x[i] = rng_uniform(0.0f, 2.0f); break;
            case 2: x[i] = rng_uniform(-0.5f, 0.0f); break;
            case 3: x[i] = 0.0f; break;
            case 4: x[i] = c; break;
            case 5: x[i] = (float)((int)(rng_next() % 65) - 32) / 16.0f; break;
            case 6: x[i] = rng_uniform(-1.0f, 1.0f) * 1e-7f; break;
            default:
                x[i] = rng_uniform(-0.05f, 0.05f);
                if (rng_next() % 97 == 0) x[i] *= 300.0f;
                break;
            }
        }
    }
    return w;
}

static const char *rule_name(qd_qrule r) {
    static const char *names[QD_QRULE_COUNT] = {
        "ASYM_ZERO_IN_RANGE", "ASYM_MINMAX", "SYM_HALF", "SYM_MAX", "ASYM_FLOAT_ZERO",
        "ASYM_ZERO_IN_RANGE_EPS", "SYM_HALF_EPS", "ASYM_FLOAT_ZERO_SIGNED"};
    return (int)r >= 0 && r < QD_QRULE_COUNT ? names[r] : "?";
}

static bool same_bits(float a, float b) {
    return memcmp(&a, &b, sizeof a) == 0;
}

/* ---- hand-computed cases ---------------------------------------------------------------- */

#define HC_MAX 8

typedef struct hand_case {
    const char *what;
    qd_qrule rule;
    int bits;
    qd_dtype dt;
    int n;
    float w[HC_MAX];
    float scale, zero; /* stored scale, unsigned-domain zero */
    int codes[HC_MAX];
} hand_case;

static const hand_case hand_cases[] = {
    /* GPTQ asym, 4 bits: lo' = -1.5, hi' = 2.25, s = 3.75/15 = 0.25, z = round(6) = 6;
     * w/s = -6 -3 0 .75 1.5 2.5 6 9 -> round (1.5 -> 2 up, 2.5 -> 2 down) + 6. */
    {"gptq asym", QD_QRULE_ASYM_ZERO_IN_RANGE, 4, QD_DTYPE_F32, 8,
     {-1.5f, -0.75f, 0.0f, 0.1875f, 0.375f, 0.625f, 1.5f, 2.25f}, 0.25f, 6.0f,
     {0, 3, 6, 7, 8, 8, 12, 15}},
    /* zero at a tie: -lo/s = 0.625/0.25 = 2.5 -> z = 2; 3.125/0.25 = 12.5 -> 12 -> 14. */
    {"gptq asym zero tie", QD_QRULE_ASYM_ZERO_IN_RANGE, 4, QD_DTYPE_F32, 4,
     {-0.625f, 0.0f, 1.125f, 3.125f}, 0.25f, 2.0f, {0, 2, 6, 14}},
    /* z = 5: w/s = 1.5 -> round(1.5) + 5 = 7 (compare the compressed-tensors case). */
    {"gptq asym odd zero", QD_QRULE_ASYM_ZERO_IN_RANGE, 4, QD_DTYPE_F32, 4,
     {-1.25f, 0.375f, 2.5f, 0.0f}, 0.25f, 5.0f, {0, 7, 15, 5}},
    /* 0 forced in: lo' = 0, hi' = 1; F16 scale: fp16(1/15) = 1092 * 2^-14 = 273/4096, codes
     * with it: 0.5 * 4096/273 = 7.50 -> 8 (the fp32 scale would give 7.4999998 -> 7),
     * 1 -> 15.004 -> 15, 0.25 -> 3.75 -> 4. */
    {"gptq asym f16 scale", QD_QRULE_ASYM_ZERO_IN_RANGE, 4, QD_DTYPE_F16, 4,
     {0.0f, 0.5f, 1.0f, 0.25f}, 273.0f / 4096.0f, 0.0f, {0, 8, 15, 4}},
    /* BF16: bf16(1/15) = 137/2048; 0.5 * 2048/137 = 7.47 -> 7, 1 -> 14.9 -> 15, 0.25 -> 4. */
    {"gptq asym bf16 scale", QD_QRULE_ASYM_ZERO_IN_RANGE, 4, QD_DTYPE_BF16, 4,
     {0.0f, 0.5f, 1.0f, 0.25f}, 137.0f / 2048.0f, 0.0f, {0, 7, 15, 4}},
    /* all zero -> [-1, 1]: s = fp32(2/15), z = round(1 / s) = round(7.4999995) = 7. */
    {"gptq asym all zero", QD_QRULE_ASYM_ZERO_IN_RANGE, 4, QD_DTYPE_F32, 3, {0, 0, 0},
     2.0f / 15.0f, 7.0f, {7, 7, 7}},

    /* compressed-tensors asym, same z = 5 group: zs = round(-8 + 5) = -3;
     * round(w/s + zs): -5-3 = -8 -> 0, 1.5-3 = -1.5 -> -2 -> 6 (GPTQ: 7), 10-3 = 7 -> 15. */
    {"ct asym odd zero", QD_QRULE_ASYM_ZERO_IN_RANGE_EPS, 4, QD_DTYPE_F32, 4,
     {-1.25f, 0.375f, 2.5f, 0.0f}, 0.25f, 5.0f, {0, 6, 15, 5}},
    /* zs = -2: -6-2 = -8, -3-2 = -5, -2, .75-2 = -1.25 -> -1, 1.5-2 = -.5 -> 0,
     * 2.5-2 = .5 -> 0, 4, 7; + 8. */
    {"ct asym", QD_QRULE_ASYM_ZERO_IN_RANGE_EPS, 4, QD_DTYPE_F32, 8,
     {-1.5f, -0.75f, 0.0f, 0.1875f, 0.375f, 0.625f, 1.5f, 2.25f}, 0.25f, 6.0f,
     {0, 3, 6, 7, 8, 8, 12, 15}},
    /* all zero: s = max(0, eps) = 2^-23, zs = clamp(-8 - 0) = -8 -> z = 0, codes 0. */
    {"ct asym all zero", QD_QRULE_ASYM_ZERO_IN_RANGE_EPS, 4, QD_DTYPE_F32, 3, {0, 0, 0},
     FLT_EPSILON, 0.0f, {0, 0, 0}},

    /* AutoAWQ, 0 not forced in: lo = 0.5, hi = 4.25, s = 0.25, z = clamp(-round(2)) = 0;
     * w/s = 2, 4, 9.5 -> 10 (tie up to even), 17 -> clamp 15. */
    {"awq", QD_QRULE_ASYM_MINMAX, 4, QD_DTYPE_F32, 4, {0.5f, 1.0f, 2.375f, 4.25f}, 0.25f,
     0.0f, {2, 4, 10, 15}},
    /* lo = -0.625: z = -round(-2.5) = 2; -2.5 -> -2 + 2 = 0; 12.5 -> 12 + 2 = 14. */
    {"awq zero tie", QD_QRULE_ASYM_MINMAX, 4, QD_DTYPE_F32, 4,
     {-0.625f, 0.0f, 1.125f, 3.125f}, 0.25f, 2.0f, {0, 2, 6, 14}},
    /* constant 0.5: s = 1e-5 / 15, z = clamp(-round(0.5 / s)) = 0, codes clamp to 15. */
    {"awq constant", QD_QRULE_ASYM_MINMAX, 4, QD_DTYPE_F32, 3, {0.5f, 0.5f, 0.5f},
     1e-5f / 15.0f, 0.0f, {15, 15, 15}},
    /* F16 scale: range 1, stored s = fp16(1/15) = 273/4096; the zero comes from it (AutoAWQ
     * computes in fp16): -lo/s = 0.2333069 * 4096/273 = 3.50046 -> 4 (with the fp32 scale
     * 3.4996 -> 3); codes: -3.50046 -> -4 + 4 = 0, 11.503 -> 12 + 4 -> clamp 15, 0 -> 4. */
    {"awq f16 scale zero", QD_QRULE_ASYM_MINMAX, 4, QD_DTYPE_F16, 3,
     {-0.233306884765625f, 0.766693115234375f, 0.0f}, 273.0f / 4096.0f, 4.0f, {0, 15, 4}},
    {"awq all zero", QD_QRULE_ASYM_MINMAX, 4, QD_DTYPE_F32, 2, {0, 0}, 1e-5f / 15.0f, 0.0f,
     {0, 0}},

    /* GPTQ sym: amax 1.875, s = 2 * 1.875 / 15 = 0.25, z = 8; w/s = -7.5 -> -8, -1.5 -> -2,
     * 0, 2.5 -> 2, 4, 7.5 -> 8 -> 16 -> clamp 15. */
    {"gptq sym", QD_QRULE_SYM_HALF, 4, QD_DTYPE_F32, 6,
     {-1.875f, -0.375f, 0.0f, 0.625f, 1.0f, 1.875f}, 0.25f, 8.0f, {0, 6, 8, 10, 12, 15}},
    /* no negative value: xmin stays 0 (reference quirk), s = 3.75 / 15 = 0.25, z = 8:
     * 0 -> 8, 2 -> 10, 6 -> 14, 15 -> 23 -> clamp 15. */
    {"gptq sym non-negative", QD_QRULE_SYM_HALF, 4, QD_DTYPE_F32, 4,
     {0.0f, 0.5f, 1.5f, 3.75f}, 0.25f, 8.0f, {8, 10, 14, 15}},
    {"gptq sym all zero", QD_QRULE_SYM_HALF, 4, QD_DTYPE_F32, 2, {0, 0}, 2.0f / 15.0f, 8.0f,
     {8, 8}},

    /* compressed-tensors sym: s = 1.875 / 7.5 = 0.25; round(w/s) clamp [-8, 7] + 8. */
    {"ct sym", QD_QRULE_SYM_HALF_EPS, 4, QD_DTYPE_F32, 6,
     {-1.875f, -0.375f, 0.0f, 0.625f, 1.0f, 1.875f}, 0.25f, 8.0f, {0, 6, 8, 10, 12, 15}},
    /* no quirk: amax 3.75, s = 0.5: 0, 1, 3, 7.5 -> 8 -> 7; + 8. */
    {"ct sym non-negative", QD_QRULE_SYM_HALF_EPS, 4, QD_DTYPE_F32, 4,
     {0.0f, 0.5f, 1.5f, 3.75f}, 0.5f, 8.0f, {8, 9, 11, 15}},
    {"ct sym all zero", QD_QRULE_SYM_HALF_EPS, 4, QD_DTYPE_F32, 2, {0, 0}, FLT_EPSILON, 8.0f,
     {8, 8}},

    /* absmax / 7: amax 1.75, s = 0.25; w/s = -7, -1.5 -> -2, 2.5 -> 2, 7, 0; + 8. */
    {"sym max", QD_QRULE_SYM_MAX, 4, QD_DTYPE_F32, 5,
     {-1.75f, -0.375f, 0.625f, 1.75f, 0.0f}, 0.25f, 8.0f, {1, 6, 10, 15, 8}},
    /* 8 bits: amax 63.5, s = 63.5 / 127 = 0.5; 2.5 -> 2, -127, 1.5 -> 2; + 128. */
    {"sym max 8 bits", QD_QRULE_SYM_MAX, 8, QD_DTYPE_F32, 3, {1.25f, -63.5f, 0.75f}, 0.5f,
     128.0f, {130, 1, 130}},
    /* ModelOpt: zero amax -> maxbound, s = 1. */
    {"sym max all zero", QD_QRULE_SYM_MAX, 4, QD_DTYPE_F32, 2, {0, 0}, 1.0f, 8.0f, {8, 8}},

    /* DashInfer uint4: lo = -0.5625, hi = 3.1875, s = 0.25, z = 0.5625 / 0.25 = 2.25 (not
     * rounded); round(clamp(w/s + z)): 0, 15, 2.25 -> 2, 2.5 -> 2, 3.5 -> 4. */
    {"dashinfer uint", QD_QRULE_ASYM_FLOAT_ZERO, 4, QD_DTYPE_F32, 5,
     {-0.5625f, 3.1875f, 0.0f, 0.0625f, 0.3125f}, 0.25f, 2.25f, {0, 15, 2, 2, 4}},
    /* constant 0.5: s = 0 -> 1, z = -0.5, code round(0.5 - 0.5) = 0: (0 + 0.5) * 1 = 0.5. */
    {"dashinfer constant", QD_QRULE_ASYM_FLOAT_ZERO, 4, QD_DTYPE_F32, 3, {0.5f, 0.5f, 0.5f},
     1.0f, -0.5f, {0, 0, 0}},
    /* BF16 zero: z = 0.56640625 / 0.25 = 2.265625, a bf16 value, kept. */
    {"dashinfer uint bf16 zero", QD_QRULE_ASYM_FLOAT_ZERO, 4, QD_DTYPE_BF16, 2,
     {-0.56640625f, 3.18359375f}, 0.25f, 2.265625f, {0, 15}},
    /* int4: zs = -8 + 2.265625 = -5.734375, bf16 step 1/32 there: -183.5/32 -> -184/32 =
     * -5.75 (tie to even), so z = 2.25; codes: -2.265625 - 5.75 -> clamp -8 -> 0, 15. */
    {"dashinfer int bf16 zero", QD_QRULE_ASYM_FLOAT_ZERO_SIGNED, 4, QD_DTYPE_BF16, 2,
     {-0.56640625f, 3.18359375f}, 0.25f, 2.25f, {0, 15}},
    /* int8: range 255/16, s = 1/16; zs = -128 + 16.5 = -111.5, z = 16.5;
     * w/s + zs: -16.5 - 111.5 = -128, 0 - 111.5 -> -112, 1 - 111.5 = -110.5 -> -110,
     * 238.5 - 111.5 = 127; + 128. */
    {"dashinfer int8", QD_QRULE_ASYM_FLOAT_ZERO_SIGNED, 8, QD_DTYPE_F32, 4,
     {-1.03125f, 0.0f, 0.0625f, 14.90625f}, 0.0625f, 16.5f, {0, 16, 18, 255}},
};

QD_TEST(hand_computed_cases_of_every_rule) {
    bool seen[QD_QRULE_COUNT] = {false};
    for (size_t t = 0; t < sizeof hand_cases / sizeof hand_cases[0]; t++) {
        const hand_case *h = &hand_cases[t];
        seen[h->rule] = true;
        uint8_t codes[2][HC_MAX];
        float scale[2], zero[2];
        qd_quant_rtn_ref(h->w, 1, h->n, h->bits, h->n, h->rule, h->dt, codes[0], &scale[0],
                         &zero[0]);
        qd_quant_rtn_cpu(h->w, 1, h->n, h->bits, h->n, h->rule, h->dt, codes[1], &scale[1],
                         &zero[1], 2);
        for (int b = 0; b < 2; b++) {
            QD_CHECK_MSG(same_bits(scale[b], h->scale), "%s (%s): scale %.9g, expected %.9g",
                         h->what, b ? "cpu" : "ref", (double)scale[b], (double)h->scale);
            QD_CHECK_MSG(same_bits(zero[b], h->zero), "%s (%s): zero %.9g, expected %.9g",
                         h->what, b ? "cpu" : "ref", (double)zero[b], (double)h->zero);
            for (int i = 0; i < h->n; i++)
                QD_CHECK_MSG(codes[b][i] == h->codes[i], "%s (%s): w[%d] = %g: code %d, "
                             "expected %d", h->what, b ? "cpu" : "ref", i, (double)h->w[i],
                             codes[b][i], h->codes[i]);
        }
    }
    for (int r = 0; r < QD_QRULE_COUNT; r++)
        QD_CHECK_MSG(seen[r], "no hand case for rule %s", rule_name((qd_qrule)r));
}

/* The same group under GPTQ and compressed-tensors: the references group the rounding
 * differently (round(w/s) + z vs round(w/s + zs)), and with an odd zero a tie lands apart. */
QD_TEST(gptq_and_compressed_tensors_differ_on_an_odd_zero_tie) {
    qd_qstats st = {-1.25f, 2.5f, 2.5f};
    qd_qparams g = qd_quant_params(QD_QRULE_ASYM_ZERO_IN_RANGE, 4, st, QD_DTYPE_F32);
    qd_qparams c = qd_quant_params(QD_QRULE_ASYM_ZERO_IN_RANGE_EPS, 4, st, QD_DTYPE_F32);
    QD_CHECK(same_bits(g.scale, c.scale) && same_bits(g.zero, c.zero));
    QD_CHECK_EQ_INT(qd_quant_code(QD_QRULE_ASYM_ZERO_IN_RANGE, 4, g, 0.375f), 7);
    QD_CHECK_EQ_INT(qd_quant_code(QD_QRULE_ASYM_ZERO_IN_RANGE_EPS, 4, c, 0.375f), 6);
}

QD_TEST(dequant_is_code_minus_zero_times_scale) {
    qd_qparams p = {0.25f, 2.25f};
    QD_CHECK(qd_quant_dequant(p, 2) == -0.0625f);
    QD_CHECK(qd_quant_dequant(p, 15) == 3.1875f);
    qd_qparams q = {0.5f, 8.0f};
    QD_CHECK(qd_quant_dequant(q, 0) == -4.0f);
    QD_CHECK(qd_quant_dequant(q, 15) == 3.5f);
}

QD_TEST(scale_storage_keeps_scales_positive_and_finite) {
    /* 1e-9 is below half of fp16's smallest subnormal 2^-24: stored as 2^-24, not 0. */
    QD_CHECK(qd_quant_store_scale(1e-9f, QD_DTYPE_F16) == 0x1p-24f);
    QD_CHECK(qd_quant_store_scale(1e6f, QD_DTYPE_F16) == 65504.0f);
    QD_CHECK(qd_quant_store_scale(0.0f, QD_DTYPE_F32) == 0x1p-149f);
    QD_CHECK(qd_quant_store_scale(0.1f, QD_DTYPE_F32) == 0.1f);
    QD_CHECK(qd_quant_store_scale(0.1f, QD_DTYPE_BF16) == 0.10009765625f);
    /* a group of tiny weights in fp16: the scale stays usable and codes stay in range */
    float w[4] = {1e-9f, -2e-9f, 3e-9f, 0.0f};
    uint8_t codes[4];
    float s, z;
    qd_quant_rtn_ref(w, 1, 4, 4, 4, QD_QRULE_ASYM_ZERO_IN_RANGE, QD_DTYPE_F16, codes, &s, &z);
    QD_CHECK(s == 0x1p-24f);
    for (int i = 0; i < 4; i++) QD_CHECK(codes[i] <= 15);
}

/* ---- properties over random data --------------------------------------------------------- */

QD_TEST(codes_in_range_and_round_trip_within_half_a_step) {
    const int n = 40, k = 256;
    float *w = make_weights(n, k);
    uint8_t *codes = malloc((size_t)n * k);
    float *scales = malloc((size_t)n * k * sizeof *scales);
    float *zeros = malloc((size_t)n * k * sizeof *zeros);
    QD_REQUIRE(w && codes && scales && zeros);
    const int groups[3] = {32, 128, 256};
    const qd_dtype dts[3] = {QD_DTYPE_F32, QD_DTYPE_F16, QD_DTYPE_BF16};
    long inside = 0, clipped = 0;
    for (int rule = 0; rule < QD_QRULE_COUNT; rule++)
        for (int bits = 2; bits <= 8; bits++)
            for (int gi = 0; gi < 3; gi++)
                for (int di = 0; di < 3; di++) {
                    int gs = groups[gi], ng = k / gs, off = 1 << (bits - 1);
                    qd_quant_rtn_ref(w, n, k, bits, gs, (qd_qrule)rule, dts[di], codes, scales,
                                     zeros);
                    int bad = 0;
                    for (int r = 0; r < n && bad < 3; r++)
                        for (int c = 0; c < k && bad < 3; c++) {
                            int was = bad, g = r * ng + c / gs, q = codes[r * k + c];
                            qd_qparams p = {scales[g], zeros[g]};
                            float x = w[r * k + c], y = qd_quant_dequant(p, q);
                            int qmax = (1 << bits) - 1;
                            if (qd_qrule_symmetric((qd_qrule)rule) && p.zero != (float)off)
                                bad++; /* sym: zero is 2^(b-1), codes q - 2^(b-1) signed */
                            if (q > qmax) bad++;
                            if (rule == QD_QRULE_SYM_MAX && q == 0) bad++; /* |w| <= amax */
                            /* the range the codes can reach; inside it the error is at most
                             * half a step (plus float rounding of w / s) */
                            float lo = qd_quant_dequant(p, 0), hi = qd_quant_dequant(p, qmax);
                            float tol = p.scale * 0.5f * (1.0f + 1e-5f) + 1e-30f;
                            if (x >= lo && x <= hi) {
                                inside++;
                                if (!(fabsf(x - y) <= tol)) bad++;
                            } else {
                                clipped++;
                                if (q != (x < lo ? 0 : qmax)) bad++;
                            }
                            if (bad > was)
                                QD_FAIL_("%s b%d g%d %s: w[%d,%d] = %.9g code %d s %.9g "
                                         "z %.9g -> %.9g", rule_name((qd_qrule)rule), bits, gs,
                                         qd_dtype_name(dts[di]), r, c, (double)x, q,
                                         (double)p.scale, (double)p.zero, (double)y);
                        }
                }
    QD_CHECK(inside > 0 && clipped > 0); /* both branches were exercised */
    free(w);
    free(codes);
    free(scales);
    free(zeros);
}

/* The asymmetric rules that force 0 into the range never clip with an fp32 scale: the whole
 * group lies inside the reachable range, the extremes included. */
QD_TEST(asymmetric_zero_in_range_rules_cover_the_group) {
    const int n = 40, k = 128;
    float *w = make_weights(n, k);
    uint8_t *codes = malloc((size_t)n * k);
    float *scales = malloc((size_t)n * sizeof *scales), *zeros = malloc((size_t)n * sizeof *zeros);
    QD_REQUIRE(w && codes && scales && zeros);
    const qd_qrule rules[2] = {QD_QRULE_ASYM_ZERO_IN_RANGE, QD_QRULE_ASYM_ZERO_IN_RANGE_EPS};
    for (int ri = 0; ri < 2; ri++)
        for (int bits = 2; bits <= 8; bits++) {
            qd_quant_rtn_ref(w, n, k, bits, k, rules[ri], QD_DTYPE_F32, codes, scales, zeros);
            int bad = 0;
            for (int r = 0; r < n; r++)
                for (int c = 0; c < k; c++) {
                    qd_qparams p = {scales[r], zeros[r]};
                    float x = w[r * k + c];
                    float err = fabsf(x - qd_quant_dequant(p, codes[r * k + c]));
                    /* a tiny group's eps-clamped scale is far larger than its values */
                    if (!(err <= p.scale * 0.5f * (1.0f + 1e-5f))) bad++;
                }
            QD_CHECK_MSG(bad == 0, "%s %d bits: %d weights off by more than s/2",
                         rule_name(rules[ri]), bits, bad);
        }
    free(w);
    free(codes);
    free(scales);
    free(zeros);
}

/* ---- FP8 ---------------------------------------------------------------------------------- */

QD_TEST(fp8_round_trip_of_every_e4m3_value) {
    /* scale 1: every finite e4m3 value must come back as itself (both zeros included) */
    int n_finite = 0;
    float row[256];
    for (int b = 0; b < 256; b++) {
        if ((b & 0x7F) == 0x7F) continue; /* NaN */
        float v = qd_e4m3_to_fp32((uint8_t)b);
        QD_CHECK_EQ_INT(qd_fp8_code(1.0f, v), b);
        row[n_finite++] = v;
    }
    QD_CHECK_EQ_INT(n_finite, 254);
    /* through the method: the row's amax is 448, so the per-channel scale is exactly 1 */
    qd_error err = {0};
    qd_qlinear q = {0};
    QD_REQUIRE(qd_fp8_quantize(row, 1, n_finite, true, QD_DTYPE_F32, &q, &err) == QD_OK);
    QD_CHECK(q.scales[0] == 1.0f && q.type == QD_QTYPE_FP8_E4M3 && q.zeros == NULL);
    float back[256];
    qd_qlinear_dequant(&q, back);
    for (int i = 0; i < n_finite; i++) {
        QD_CHECK_MSG(same_bits(back[i], row[i]), "e4m3 %.9g came back as %.9g",
                     (double)row[i], (double)back[i]);
        QD_CHECK_EQ_INT(qd_e4m3_to_fp32(q.codes[i]) == row[i], 1);
    }
    qd_qlinear_free(&q);
}

QD_TEST(fp8_scales_saturation_and_degenerate_rows) {
    /* row 0: amax 896 -> s = 2; row 1: all zero -> s = eps, codes +0 */
    float w[2][4] = {{896.0f, -1.0f, 3.0f, -896.0f}, {0, 0, 0, 0}};
    uint8_t codes[8];
    float s[2];
    qd_quant_fp8_ref(&w[0][0], 2, 4, true, QD_DTYPE_F32, codes, s);
    QD_CHECK(s[0] == 2.0f && s[1] == FLT_EPSILON);
    QD_CHECK_EQ_INT(codes[0], 0x7E);      /* 448 */
    QD_CHECK_EQ_INT(codes[1], 0xB0);      /* -0.5 = -1.0 * 2^-1: S.0110.000 */
    QD_CHECK_EQ_INT(codes[2], 0x3C);      /* 1.5 = 1.1b * 2^0: 0.0111.100 */
    QD_CHECK_EQ_INT(codes[3], 0xFE);      /* -448 */
    for (int i = 4; i < 8; i++) QD_CHECK_EQ_INT(codes[i], 0);
    /* per tensor: one scale (896 / 448 = 2) in every row */
    qd_quant_fp8_ref(&w[0][0], 2, 4, false, QD_DTYPE_F32, codes, s);
    QD_CHECK(s[0] == 2.0f && s[1] == 2.0f);
    /* saturating: past the range the code is +-448, never NaN */
    QD_CHECK_EQ_INT(qd_fp8_code(1.0f, 1000.0f), 0x7E);
    QD_CHECK_EQ_INT(qd_fp8_code(1.0f, -1e30f), 0xFE);
    /* scale dtype: 3 / 448 in bf16 */
    QD_CHECK(qd_fp8_scale(3.0f, QD_DTYPE_BF16) ==
             qd_bf16_to_fp32(qd_fp32_to_bf16(3.0f / 448.0f)));
}

/* ---- cpu == ref ------------------------------------------------------------------------- */

QD_TEST(cpu_matches_ref_bit_for_bit) {
    const int n = 300, k = 512;
    float *w = make_weights(n, k);
    size_t nk = (size_t)n * k;
    uint8_t *c0 = malloc(nk), *c1 = malloc(nk);
    float *s0 = malloc(nk * sizeof(float)), *s1 = malloc(nk * sizeof(float));
    float *z0 = malloc(nk * sizeof(float)), *z1 = malloc(nk * sizeof(float));
    QD_REQUIRE(w && c0 && c1 && s0 && s1 && z0 && z1);
    const int groups[3] = {32, 128, -1};
    const qd_dtype dts[3] = {QD_DTYPE_F32, QD_DTYPE_F16, QD_DTYPE_BF16};
    for (int rule = 0; rule < QD_QRULE_COUNT; rule++)
        for (int bits = 2; bits <= 8; bits++)
            for (int gi = 0; gi < 3; gi++) {
                int gs = groups[gi] > 0 ? groups[gi] : k;
                size_t np = (size_t)n * (size_t)(k / gs);
                qd_dtype dt = dts[(bits + gi + rule) % 3]; /* every dtype meets every rule */
                /* fill with different garbage so an unwritten element shows */
                memset(c0, 0xAA, nk);
                memset(c1, 0x55, nk);
                memset(s0, 0xAA, np * sizeof(float));
                memset(s1, 0x55, np * sizeof(float));
                memset(z0, 0xAA, np * sizeof(float));
                memset(z1, 0x55, np * sizeof(float));
                qd_quant_rtn_ref(w, n, k, bits, gs, (qd_qrule)rule, dt, c0, s0, z0);
                qd_quant_rtn_cpu(w, n, k, bits, gs, (qd_qrule)rule, dt, c1, s1, z1, 3);
                QD_CHECK_MSG(memcmp(c0, c1, nk) == 0 &&
                                 memcmp(s0, s1, np * sizeof(float)) == 0 &&
                                 memcmp(z0, z1, np * sizeof(float)) == 0,
                             "cpu != ref: %s, %d bits, group %d, %s", rule_name((qd_qrule)rule),
                             bits, groups[gi], qd_dtype_name(dt));
            }
    for (int pc = 0; pc < 2; pc++) {
        memset(c0, 0xAA, nk);
        memset(c1, 0x55, nk);
        qd_quant_fp8_ref(w, n, k, pc, QD_DTYPE_BF16, c0, s0);
        qd_quant_fp8_cpu(w, n, k, pc, QD_DTYPE_BF16, c1, s1, 3);
        QD_CHECK_MSG(memcmp(c0, c1, nk) == 0 && memcmp(s0, s1, (size_t)n * sizeof(float)) == 0,
                     "fp8 cpu != ref (%s)", pc ? "per channel" : "per tensor");
    }
    free(w);
    free(c0);
    free(c1);
    free(s0);
    free(s1);
    free(z0);
    free(z1);
}

/* ---- the method: qd_rtn_* and qd_qlinear ------------------------------------------------ */

QD_TEST(rtn_quantize_fills_the_qlinear) {
    const int n = 6, k = 64;
    float *w = make_weights(n, k);
    QD_REQUIRE(w);
    qd_error err = {0};
    qd_qlinear q = {0};
    QD_CHECK_OK(qd_rtn_quantize(w, n, k, 4, 16, QD_QRULE_ASYM_MINMAX, QD_DTYPE_F16, &q, &err),
                &err);
    QD_REQUIRE(q.codes);
    QD_CHECK(q.n == n && q.k == k && q.bits == 4 && q.group_size == 16 && q.n_groups == 4);
    QD_CHECK(q.type == QD_QTYPE_INT && q.rule == QD_QRULE_ASYM_MINMAX && !q.g_idx);
    uint8_t codes[6 * 64];
    float s[6 * 4], z[6 * 4];
    qd_quant_rtn_ref(w, n, k, 4, 16, QD_QRULE_ASYM_MINMAX, QD_DTYPE_F16, codes, s, z);
    QD_CHECK(memcmp(codes, q.codes, sizeof codes) == 0);
    QD_CHECK(memcmp(s, q.scales, sizeof s) == 0 && memcmp(z, q.zeros, sizeof z) == 0);
    /* the fake-quantized weights are the dequantized codes */
    float deq[6 * 64], fake[6 * 64];
    qd_qlinear_dequant(&q, deq);
    memcpy(fake, w, sizeof fake);
    QD_CHECK_OK(qd_rtn_fake_quant(fake, n, k, 4, 16, QD_QRULE_ASYM_MINMAX, QD_DTYPE_F16, &err),
                &err);
    QD_CHECK(memcmp(deq, fake, sizeof deq) == 0);
    for (int i = 0; i < n * k; i++) {
        qd_qparams p = {s[i / 16], z[i / 16]};
        if (!same_bits(deq[i], qd_quant_dequant(p, codes[i]))) {
            QD_FAIL_("dequant[%d] %.9g", i, (double)deq[i]);
            break;
        }
    }
    qd_qlinear_free(&q);
    QD_CHECK(q.codes == NULL && q.scales == NULL && q.n == 0);
    qd_qlinear_free(&q); /* twice is harmless */
    qd_qlinear_free(NULL);
    free(w);
}

QD_TEST(per_channel_is_one_group_of_k) {
    float w[2][6] = {{-1.5f, 0.25f, 2.25f, 0, 0, 1}, {0, 0, 0, 0, 0, 0}};
    qd_error err = {0};
    for (int gs = -1; gs <= 0; gs++) {
        qd_qlinear q = {0};
        QD_CHECK_OK(qd_rtn_quantize(&w[0][0], 2, 6, 4, gs, QD_QRULE_ASYM_ZERO_IN_RANGE,
                                    QD_DTYPE_F32, &q, &err),
                    &err);
        QD_REQUIRE(q.codes);
        QD_CHECK(q.group_size == 6 && q.n_groups == 1);
        QD_CHECK(q.scales[0] == 0.25f && q.zeros[0] == 6.0f); /* range [-1.5, 2.25] */
        QD_CHECK(q.scales[1] == 2.0f / 15.0f && q.zeros[1] == 7.0f); /* all zero */
        qd_qlinear_free(&q);
    }
}

QD_TEST(qlinear_dequant_follows_g_idx) {
    qd_error err = {0};
    qd_qlinear q = {0};
    QD_REQUIRE(qd_qlinear_alloc(&q, 1, 4, QD_QTYPE_INT, 4, 2, QD_QRULE_SYM_HALF, &err) == 0);
    QD_CHECK(q.n_groups == 2 && q.zeros && q.scales && q.codes);
    q.scales[0] = 1.0f;
    q.scales[1] = 0.5f;
    q.zeros[0] = 8.0f;
    q.zeros[1] = 8.0f;
    for (int i = 0; i < 4; i++) q.codes[i] = 10;
    q.g_idx = malloc(4 * sizeof *q.g_idx);
    QD_REQUIRE(q.g_idx);
    const int32_t gi[4] = {1, 0, 1, 0}; /* act-order: columns interleave the two groups */
    memcpy(q.g_idx, gi, sizeof gi);
    float w[4];
    qd_qlinear_dequant(&q, w);
    QD_CHECK(w[0] == 1.0f && w[1] == 2.0f && w[2] == 1.0f && w[3] == 2.0f);
    qd_qlinear_free(&q); /* frees g_idx too (ASan would report a leak) */
}

QD_TEST(qlinear_alloc_rejects_bad_shapes) {
    qd_error err = {0};
    qd_qlinear q = {0};
    QD_CHECK(qd_qlinear_alloc(&q, 0, 4, QD_QTYPE_INT, 4, 2, QD_QRULE_SYM_MAX, &err) ==
             QD_ERR_INVALID_ARG);
    qd_error_clear(&err);
    QD_CHECK(qd_qlinear_alloc(&q, 2, 4, QD_QTYPE_INT, 9, 2, QD_QRULE_SYM_MAX, &err) ==
             QD_ERR_INVALID_ARG);
    qd_error_clear(&err);
    QD_CHECK(qd_qlinear_alloc(&q, 2, 4, QD_QTYPE_FP8_E4M3, 4, 4, QD_QRULE_COUNT, &err) ==
             QD_ERR_INVALID_ARG);
    qd_error_clear(&err);
    QD_CHECK(qd_qlinear_alloc(&q, 2, 4, QD_QTYPE_INT, 4, 8, QD_QRULE_SYM_MAX, &err) ==
             QD_ERR_INVALID_ARG);
    QD_CHECK(q.codes == NULL);
    /* a group size that does not divide k is allowed here (padded formats): ceil */
    qd_error_clear(&err);
    QD_CHECK(qd_qlinear_alloc(&q, 2, 10, QD_QTYPE_INT, 4, 4, QD_QRULE_SYM_MAX, &err) == QD_OK);
    QD_CHECK(q.n_groups == 3);
    qd_qlinear_free(&q);
}

/* Message of the error a call returns, for the checks below. */
static const char *fail_text(qd_err rc, qd_err want, const qd_error *err) {
    return rc == want ? err->msg : "(wrong code)";
}

QD_TEST(rtn_validation_errors_name_the_problem) {
    float w[4 * 8];
    for (int i = 0; i < 32; i++) w[i] = (float)i / 8.0f - 2.0f;
    qd_qlinear q = {0};
    qd_error err = {0};
    qd_err rc;

    rc = qd_rtn_quantize(w, 4, 8, 4, 3, QD_QRULE_SYM_MAX, QD_DTYPE_F32, &q, &err);
    QD_CHECK(strstr(fail_text(rc, QD_ERR_INVALID_ARG, &err), "group size 3") &&
             strstr(err.msg, "in_features 8"));
    qd_error_clear(&err);
    rc = qd_rtn_quantize(w, 4, 8, 4, 16, QD_QRULE_SYM_MAX, QD_DTYPE_F32, &q, &err);
    QD_CHECK(strstr(fail_text(rc, QD_ERR_INVALID_ARG, &err), "group size 16"));
    for (int bits = 1; bits <= 9; bits += 8) {
        qd_error_clear(&err);
        rc = qd_rtn_quantize(w, 4, 8, bits, 4, QD_QRULE_SYM_MAX, QD_DTYPE_F32, &q, &err);
        QD_CHECK(strstr(fail_text(rc, QD_ERR_INVALID_ARG, &err), "bits"));
    }
    qd_error_clear(&err);
    rc = qd_rtn_quantize(w, 0, 8, 4, 4, QD_QRULE_SYM_MAX, QD_DTYPE_F32, &q, &err);
    QD_CHECK(strstr(fail_text(rc, QD_ERR_INVALID_ARG, &err), "[0, 8]"));
    qd_error_clear(&err);
    rc = qd_rtn_quantize(w, 4, -8, 4, 4, QD_QRULE_SYM_MAX, QD_DTYPE_F32, &q, &err);
    QD_CHECK(strstr(fail_text(rc, QD_ERR_INVALID_ARG, &err), "[4, -8]"));
    qd_error_clear(&err);
    rc = qd_rtn_quantize(w, 4, 8, 4, 4, QD_QRULE_COUNT, QD_DTYPE_F32, &q, &err);
    QD_CHECK(strstr(fail_text(rc, QD_ERR_INVALID_ARG, &err), "rule"));
    qd_error_clear(&err);
    rc = qd_rtn_quantize(w, 4, 8, 4, 4, QD_QRULE_SYM_MAX, QD_DTYPE_I32, &q, &err);
    QD_CHECK(strstr(fail_text(rc, QD_ERR_INVALID_ARG, &err), "I32"));
    qd_error_clear(&err);
    w[13] = NAN;
    rc = qd_rtn_quantize(w, 4, 8, 4, 4, QD_QRULE_SYM_MAX, QD_DTYPE_F32, &q, &err);
    QD_CHECK(strstr(fail_text(rc, QD_ERR_INVALID_ARG, &err), "[1, 5]"));
    qd_error_clear(&err);
    rc = qd_fp8_quantize(w, 4, 8, true, QD_DTYPE_F32, &q, &err);
    QD_CHECK(strstr(fail_text(rc, QD_ERR_INVALID_ARG, &err), "not finite"));
    QD_CHECK(q.codes == NULL); /* never written on failure */
    w[13] = 0.0f;
    float before[32];
    memcpy(before, w, sizeof before);
    qd_error_clear(&err);
    QD_CHECK(qd_rtn_fake_quant(w, 4, 8, 4, 5, QD_QRULE_SYM_MAX, QD_DTYPE_F32, &err) ==
             QD_ERR_INVALID_ARG);
    QD_CHECK(memcmp(before, w, sizeof before) == 0);
}

QD_TEST(rules_of_the_target_formats) {
    struct {
        const char *format;
        bool sym;
        int bits;
        qd_err rc;
        qd_qrule rule;
    } cases[] = {
        {"awq", false, 4, QD_OK, QD_QRULE_ASYM_MINMAX},
        {"awq", true, 4, QD_ERR_UNSUPPORTED, QD_QRULE_COUNT},
        {"gptq", false, 4, QD_OK, QD_QRULE_ASYM_ZERO_IN_RANGE},
        {"gptq", true, 8, QD_OK, QD_QRULE_SYM_HALF},
        {"compressed-tensors", false, 4, QD_OK, QD_QRULE_ASYM_ZERO_IN_RANGE_EPS},
        {"compressed-tensors", true, 4, QD_OK, QD_QRULE_SYM_HALF_EPS},
        {"modelopt", true, 4, QD_OK, QD_QRULE_SYM_MAX},
        {"modelopt", false, 4, QD_ERR_UNSUPPORTED, QD_QRULE_COUNT},
        {"gptq_v2", false, 4, QD_OK, QD_QRULE_ASYM_ZERO_IN_RANGE},
        {"dashinfer", true, 4, QD_OK, QD_QRULE_SYM_HALF},
        {"instant_quant", false, 8, QD_OK, QD_QRULE_ASYM_FLOAT_ZERO_SIGNED},
        {"instant_quant", false, 4, QD_OK, QD_QRULE_ASYM_FLOAT_ZERO},
        {"instant_quant", false, 3, QD_ERR_UNSUPPORTED, QD_QRULE_COUNT},
        {"instant_quant", true, 8, QD_ERR_UNSUPPORTED, QD_QRULE_COUNT},
        {"exl2", false, 4, QD_ERR_UNSUPPORTED, QD_QRULE_COUNT},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        qd_error err = {0};
        qd_qrule r = QD_QRULE_COUNT;
        qd_err rc = qd_rtn_rule_for_format(cases[i].format, cases[i].sym, cases[i].bits, &r,
                                           &err);
        QD_CHECK_MSG(rc == cases[i].rc && r == cases[i].rule, "%s sym=%d %d bits: rc %d rule %s",
                     cases[i].format, cases[i].sym, cases[i].bits, (int)rc, rule_name(r));
        if (rc) QD_CHECK(strstr(err.msg, cases[i].format) != NULL);
    }
}

QD_TEST(rtn_linear_picks_the_rule_and_the_a8w8_recipe) {
    const int n = 4, k = 32;
    float *w = make_weights(n, k);
    QD_REQUIRE(w);
    qd_error err = {0};
    qd_qlinear q = {0};
    qd_rtn_opts o = {.format = "gptq", .symmetric = true, .bits = 4, .group_size = 16,
                     .scale_dtype = QD_DTYPE_F16};
    QD_CHECK_OK(qd_rtn_linear(w, n, k, &o, &q, &err), &err);
    QD_CHECK(q.rule == QD_QRULE_SYM_HALF && q.group_size == 16 && q.bits == 4);
    qd_qlinear_free(&q);

    /* the reference kernels give the same result */
    qd_qlinear r = {0};
    o.use_ref = true;
    QD_CHECK_OK(qd_rtn_linear(w, n, k, &o, &r, &err), &err);
    o.use_ref = false;
    QD_CHECK_OK(qd_rtn_linear(w, n, k, &o, &q, &err), &err);
    QD_CHECK(q.codes && r.codes && memcmp(q.codes, r.codes, (size_t)n * k) == 0);
    qd_qlinear_free(&q);
    qd_qlinear_free(&r);

    /* A8W8: int8 per channel whatever bits/group_size say */
    const char *formats[3] = {"compressed-tensors", "modelopt", "instant_quant"};
    const qd_qrule rules[3] = {QD_QRULE_SYM_HALF_EPS, QD_QRULE_SYM_MAX,
                               QD_QRULE_ASYM_FLOAT_ZERO_SIGNED};
    for (int i = 0; i < 3; i++) {
        qd_rtn_opts a = {.format = formats[i], .a8w8 = true, .bits = 4, .group_size = 8,
                         .scale_dtype = QD_DTYPE_F32};
        QD_CHECK_OK(qd_rtn_linear(w, n, k, &a, &q, &err), &err);
        QD_CHECK_MSG(q.rule == rules[i] && q.bits == 8 && q.group_size == k && q.n_groups == 1,
                     "a8w8 %s", formats[i]);
        qd_qlinear_free(&q);
    }
    const char *no_a8w8[3] = {"gptq", "awq", "dashinfer"};
    for (int i = 0; i < 3; i++) {
        qd_rtn_opts g = {.format = no_a8w8[i], .a8w8 = true, .scale_dtype = QD_DTYPE_F32};
        QD_CHECK(qd_rtn_linear(w, n, k, &g, &q, &err) == QD_ERR_UNSUPPORTED);
    }
    free(w);
}

QD_TEST_MAIN()
