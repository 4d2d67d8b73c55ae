/*
 * test-dtype.c - fp16/bf16/fp8-e4m3 conversions and the bulk converters, checked against the
 * formats' definitions.
 *
 * DESIGN. The reference never calls the code under test. A format is described by its field
 * widths and bias; an encoding's value is computed from its sign, exponent and mantissa fields
 * with ldexp in double. Rounding is checked where it is decided: at the exact midpoint between
 * every pair of neighbouring finite encodings (exact in double, and representable in fp32, which
 * the test asserts), one fp32 step below it, one above it, and on it (ties to even). A sweep
 * over fp32 bit patterns compares the encoders with a nearest-even search over the table of
 * defined values. Every loop over all 2^16 / 2^8 encodings is cheap (well under a second).
 */
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <string.h>

#include "dtype.h"
#include "error.h"
#include "tensor.h"
#include "test.h"

/* ---- format descriptions (the definition) -------------------------------------------------- */

typedef struct fmt {
    const char *name;
    int ebits, mbits, bias;
    int ieee;             /* 1: exponent all ones = Inf/NaN; 0: e4m3fn, only S.1111.111 = NaN */
    uint32_t max_finite;  /* largest finite magnitude encoding */
    uint32_t overflow;    /* what a magnitude rounding past max_finite (and Inf) encodes to */
    uint32_t quiet_bit;   /* the NaN quiet bit of the encoding; 0 when the format has none */
    float (*decode)(uint32_t code);
    uint32_t (*encode)(float f);
} fmt;

static float dec_fp16(uint32_t c) { return qd_fp16_to_fp32((uint16_t)c); }
static float dec_bf16(uint32_t c) { return qd_bf16_to_fp32((uint16_t)c); }
static float dec_e4m3(uint32_t c) { return qd_e4m3_to_fp32((uint8_t)c); }
static uint32_t enc_fp16(float f) { return qd_fp32_to_fp16(f); }
static uint32_t enc_bf16(float f) { return qd_fp32_to_bf16(f); }
static uint32_t enc_e4m3(float f) { return qd_fp32_to_e4m3(f); }
static uint32_t enc_e4m3_sat(float f) { return qd_fp32_to_e4m3_sat(f); }

static const fmt FP16 = {"fp16", 5, 10, 15, 1, 0x7BFF, 0x7C00, 0x0200, dec_fp16, enc_fp16};
static const fmt BF16 = {"bf16", 8, 7, 127, 1, 0x7F7F, 0x7F80, 0x0040, dec_bf16, enc_bf16};
/* torch.float8_e4m3fn: past the range (and Inf) is NaN */
static const fmt E4M3 = {"e4m3", 4, 3, 7, 0, 0x7E, 0x7F, 0, dec_e4m3, enc_e4m3};
/* saturating: past the range (and Inf) is +-448 */
static const fmt E4M3_SAT = {"e4m3_sat", 4, 3, 7, 0, 0x7E, 0x7E, 0, dec_e4m3, enc_e4m3_sat};

static const fmt *const ALL_FMTS[] = {&FP16, &BF16, &E4M3, &E4M3_SAT};
#define N_FMTS (sizeof ALL_FMTS / sizeof ALL_FMTS[0])

static uint32_t fmt_nbits(const fmt *f) { return (uint32_t)(1 + f->ebits + f->mbits); }
static uint32_t fmt_sign(const fmt *f) { return 1u << (f->ebits + f->mbits); }

static int fmt_is_nan(const fmt *f, uint32_t code) {
    uint32_t mag = code & (fmt_sign(f) - 1u);
    uint32_t emask = (1u << f->ebits) - 1u, mmask = (1u << f->mbits) - 1u;
    uint32_t e = mag >> f->mbits, m = mag & mmask;
    return f->ieee ? (e == emask && m != 0) : (e == emask && m == mmask);
}

/* The value of an encoding, from its fields. NaN carries the encoding's sign. */
static double fmt_value(const fmt *f, uint32_t code) {
    uint32_t emask = (1u << f->ebits) - 1u, mmask = (1u << f->mbits) - 1u;
    int neg = (code & fmt_sign(f)) != 0;
    uint32_t e = (code >> f->mbits) & emask, m = code & mmask;
    double v;
    if (fmt_is_nan(f, code))
        v = NAN;
    else if (f->ieee && e == emask)
        v = INFINITY;
    else if (e == 0)
        v = ldexp((double)m, 1 - f->bias - f->mbits);
    else
        v = ldexp((double)((1u << f->mbits) | m), (int)e - f->bias - f->mbits);
    return copysign(v, neg ? -1.0 : 1.0);
}

/* The value one step past max_finite (2^16 for fp16, 480 for e4m3): where overflow begins. */
static double fmt_past_max(const fmt *f) {
    int e = (int)(f->max_finite >> f->mbits);
    return fmt_value(f, f->max_finite) + ldexp(1.0, e - f->bias - f->mbits);
}

static uint32_t fp32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float fp32_from(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Report only the first few mismatches of a loop, then the count, so a broken converter does
 * not print 65536 lines. */
#define MAX_REPORTS 6

static void mismatch(int *bad, const char *fmt_str, ...) __attribute__((format(printf, 2, 3)));
static void mismatch(int *bad, const char *fmt_str, ...) {
    if (*bad < MAX_REPORTS) {
        va_list ap;
        va_start(ap, fmt_str);
        fputs("  mismatch: ", stderr);
        vfprintf(stderr, fmt_str, ap);
        fputc('\n', stderr);
        va_end(ap);
    }
    (*bad)++;
}

/* ---- decode ------------------------------------------------------------------------------- */

QD_TEST(decode_all_encodings) {
    for (size_t fi = 0; fi < N_FMTS; fi++) {
        const fmt *f = ALL_FMTS[fi];
        int bad = 0;
        for (uint32_t c = 0; c < (1u << fmt_nbits(f)); c++) {
            double want = fmt_value(f, c);
            float got = f->decode(c);
            uint32_t gb = fp32_bits(got);
            if (isnan(want)) {
                if (!isnan(got) || !(gb & 0x00400000u) || !signbit(got) != !signbit(want))
                    mismatch(&bad, "%s decode 0x%X: want %sNaN (quiet), got 0x%08X", f->name,
                             c, signbit(want) ? "-" : "+", gb);
            } else if ((double)got != want || !signbit(got) != !signbit(want)) {
                mismatch(&bad, "%s decode 0x%X: want %.17g, got %.17g", f->name, c, want,
                         (double)got);
            }
        }
        QD_CHECK_MSG(bad == 0, "%s: %d decode mismatches", f->name, bad);
    }
}

/* A few values anyone can check by hand, so the definition above is itself pinned down. */
QD_TEST(decode_known_values) {
    QD_CHECK(qd_fp16_to_fp32(0x3C00) == 1.0f);
    QD_CHECK(qd_fp16_to_fp32(0xC000) == -2.0f);
    QD_CHECK(qd_fp16_to_fp32(0x7BFF) == 65504.0f);
    QD_CHECK(qd_fp16_to_fp32(0x0001) == ldexpf(1.0f, -24));
    QD_CHECK(qd_fp16_to_fp32(0x0400) == ldexpf(1.0f, -14));
    QD_CHECK(qd_fp16_to_fp32(0xFC00) == -INFINITY);
    QD_CHECK(qd_bf16_to_fp32(0x3F80) == 1.0f);
    QD_CHECK(qd_bf16_to_fp32(0x7F7F) == ldexpf(255.0f, 120));
    QD_CHECK(qd_bf16_to_fp32(0x0001) == ldexpf(1.0f, -133));
    QD_CHECK(qd_e4m3_to_fp32(0x38) == 1.0f);
    QD_CHECK(qd_e4m3_to_fp32(0x7E) == 448.0f);
    QD_CHECK(qd_e4m3_to_fp32(0xFE) == -448.0f);
    QD_CHECK(qd_e4m3_to_fp32(0x08) == ldexpf(1.0f, -6));
    QD_CHECK(qd_e4m3_to_fp32(0x01) == ldexpf(1.0f, -9));
    QD_CHECK(qd_e4m3_to_fp32(0x78) == 256.0f); /* exponent 1111 is finite in e4m3fn */
    QD_CHECK(isnan(qd_e4m3_to_fp32(0x7F)) && !signbit(qd_e4m3_to_fp32(0x7F)));
    QD_CHECK(isnan(qd_e4m3_to_fp32(0xFF)) && signbit(qd_e4m3_to_fp32(0xFF)));
    QD_CHECK(signbit(qd_e4m3_to_fp32(0x80)) && qd_e4m3_to_fp32(0x80) == 0.0f);
}

/* ---- encode ------------------------------------------------------------------------------- */

QD_TEST(encode_round_trips_every_encoding) {
    for (size_t fi = 0; fi < N_FMTS; fi++) {
        const fmt *f = ALL_FMTS[fi];
        int bad = 0;
        for (uint32_t c = 0; c < (1u << fmt_nbits(f)); c++) {
            if (fmt_is_nan(f, c)) continue;
            double v = fmt_value(f, c);
            float x = (float)v;
            QD_REQUIRE((double)x == v || isinf(v)); /* every value is exact in fp32 */
            uint32_t got = f->encode(x);
            uint32_t want = c;
            if (isinf(v)) want = f->overflow | (c & fmt_sign(f));
            if (got != want)
                mismatch(&bad, "%s encode(%.17g) = 0x%X, want 0x%X", f->name, v, got, want);
        }
        QD_CHECK_MSG(bad == 0, "%s: %d round-trip mismatches", f->name, bad);
    }
}

/* Neighbours a < b: below the midpoint -> a, above -> b, on it -> the even encoding. Also the
 * midpoint between max_finite and the first value past it, where overflow begins. */
QD_TEST(encode_midpoints_round_to_nearest_even) {
    for (size_t fi = 0; fi < N_FMTS; fi++) {
        const fmt *f = ALL_FMTS[fi];
        int bad = 0, n_checked = 0;
        for (uint32_t a = 0; a <= f->max_finite; a++) {
            for (int neg = 0; neg < 2; neg++) {
                uint32_t s = neg ? fmt_sign(f) : 0;
                double va = fmt_value(f, a | s);
                int top = a == f->max_finite;
                double vb = top ? copysign(fmt_past_max(f), va) : fmt_value(f, (a + 1) | s);
                uint32_t code_b = top ? (f->overflow | s) : ((a + 1) | s);
                double mid = (va + vb) / 2; /* exact: both have few significant bits */
                float mf = (float)mid;
                QD_REQUIRE((double)mf == mid); /* the midpoint is an fp32 value */
                float below = nextafterf(mf, (float)va), above = nextafterf(mf, (float)vb);
                QD_REQUIRE(fabs((double)below) > fabs(va) && fabs((double)above) < fabs(vb));
                /* the even of two neighbours; past the top, the virtual next code a + 1 */
                uint32_t code_tie = (a & 1u) ? code_b : (a | s);
                uint32_t r_below = f->encode(below), r_mid = f->encode(mf);
                uint32_t r_above = f->encode(above);
                if (r_below != (a | s))
                    mismatch(&bad, "%s: encode(%.9g) = 0x%X, want 0x%X", f->name,
                             (double)below, r_below, a | s);
                if (r_mid != code_tie)
                    mismatch(&bad, "%s: encode(midpoint %.9g) = 0x%X, want 0x%X", f->name,
                             (double)mf, r_mid, code_tie);
                if (r_above != code_b)
                    mismatch(&bad, "%s: encode(%.9g) = 0x%X, want 0x%X", f->name,
                             (double)above, r_above, code_b);
                n_checked++;
            }
        }
        QD_CHECK_MSG(bad == 0, "%s: %d midpoint mismatches", f->name, bad);
        QD_CHECK_EQ_INT(n_checked, 2 * (f->max_finite + 1));
    }
}

/* Nearest-even by search over the defined values: the largest k with value(k) <= x, then the
 * midpoint decides. x is finite and >= 0; vals[k] = value(k) for k = 0..max_finite. */
static uint32_t ref_round(const fmt *f, const double *vals, double x) {
    double past = fmt_past_max(f);
    if (x >= past) return f->overflow;
    uint32_t lo = 0, hi = f->max_finite; /* invariant: vals[lo] <= x */
    while (lo < hi) {
        uint32_t m = lo + (hi - lo + 1) / 2;
        if (vals[m] <= x)
            lo = m;
        else
            hi = m - 1;
    }
    if (vals[lo] == x) return lo;
    double next = lo == f->max_finite ? past : vals[lo + 1];
    uint32_t code_next = lo == f->max_finite ? f->overflow : lo + 1;
    double mid = (vals[lo] + next) / 2;
    if (x < mid) return lo;
    if (x > mid) return code_next;
    return (lo & 1u) ? code_next : lo;
}

QD_TEST(encode_fp32_sweep_matches_nearest_even) {
    static double vals[0x8000];
    for (size_t fi = 0; fi < N_FMTS; fi++) {
        const fmt *f = ALL_FMTS[fi];
        QD_REQUIRE(f->max_finite < sizeof vals / sizeof vals[0]);
        for (uint32_t k = 0; k <= f->max_finite; k++) vals[k] = fmt_value(f, k);
        int bad = 0;
        /* a prime stride visits every exponent and scattered mantissas, sign bit included */
        for (uint64_t u = 0; u <= 0xFFFFFFFFu; u += 8191) {
            float x = fp32_from((uint32_t)u);
            uint32_t got = f->encode(x);
            uint32_t s = (u >> 31) ? fmt_sign(f) : 0;
            if (isnan(x)) {
                if (!fmt_is_nan(f, got) || (got & fmt_sign(f)) != s)
                    mismatch(&bad, "%s: encode(NaN 0x%08X) = 0x%X", f->name, (unsigned)u, got);
                continue;
            }
            uint32_t want = s | (isinf(x) ? f->overflow : ref_round(f, vals, fabs((double)x)));
            if (got != want)
                mismatch(&bad, "%s: encode(%.9g = 0x%08X) = 0x%X, want 0x%X", f->name,
                         (double)x, (unsigned)u, got, want);
        }
        QD_CHECK_MSG(bad == 0, "%s: %d sweep mismatches", f->name, bad);
    }
}

QD_TEST(encode_overflow_fp16) {
    QD_CHECK_EQ_INT(qd_fp32_to_fp16(65504.0f), 0x7BFF);
    QD_CHECK_EQ_INT(qd_fp32_to_fp16(65519.99f), 0x7BFF);
    QD_CHECK_EQ_INT(qd_fp32_to_fp16(65520.0f), 0x7C00); /* tie; 65504 is odd: up to Inf */
    QD_CHECK_EQ_INT(qd_fp32_to_fp16(-65520.0f), 0xFC00);
    QD_CHECK_EQ_INT(qd_fp32_to_fp16(FLT_MAX), 0x7C00);
    QD_CHECK_EQ_INT(qd_fp32_to_fp16(INFINITY), 0x7C00);
    QD_CHECK_EQ_INT(qd_fp32_to_fp16(-INFINITY), 0xFC00);
}

QD_TEST(encode_overflow_bf16) {
    float max = ldexpf(255.0f, 120);                  /* 0x7F7F */
    float mid = fp32_from(0x7F7F8000u);               /* halfway to 2^128 */
    QD_CHECK_EQ_INT(qd_fp32_to_bf16(max), 0x7F7F);
    QD_CHECK_EQ_INT(qd_fp32_to_bf16(nextafterf(mid, 0.0f)), 0x7F7F);
    QD_CHECK_EQ_INT(qd_fp32_to_bf16(mid), 0x7F80);    /* tie; 0x7F7F is odd: up to Inf */
    QD_CHECK_EQ_INT(qd_fp32_to_bf16(-mid), 0xFF80);
    QD_CHECK_EQ_INT(qd_fp32_to_bf16(FLT_MAX), 0x7F80);
    QD_CHECK_EQ_INT(qd_fp32_to_bf16(INFINITY), 0x7F80);
    QD_CHECK_EQ_INT(qd_fp32_to_bf16(-INFINITY), 0xFF80);
}

/* torch.float8_e4m3fn: 448 is the largest finite; 464 ties down to it (mantissa 110 is even);
 * anything above 464 rounds onto S.1111.111, which is NaN, as do 480+ and Inf. */
QD_TEST(encode_overflow_e4m3) {
    float above464 = nextafterf(464.0f, INFINITY);
    QD_CHECK_EQ_INT(qd_fp32_to_e4m3(448.0f), 0x7E);
    QD_CHECK_EQ_INT(qd_fp32_to_e4m3(464.0f), 0x7E);
    QD_CHECK_EQ_INT(qd_fp32_to_e4m3(-464.0f), 0xFE);
    QD_CHECK_EQ_INT(qd_fp32_to_e4m3(above464), 0x7F);
    QD_CHECK_EQ_INT(qd_fp32_to_e4m3(-above464), 0xFF);
    QD_CHECK_EQ_INT(qd_fp32_to_e4m3(479.99f), 0x7F);
    QD_CHECK_EQ_INT(qd_fp32_to_e4m3(480.0f), 0x7F);
    QD_CHECK_EQ_INT(qd_fp32_to_e4m3(1e30f), 0x7F);
    QD_CHECK_EQ_INT(qd_fp32_to_e4m3(INFINITY), 0x7F);
    QD_CHECK_EQ_INT(qd_fp32_to_e4m3(-INFINITY), 0xFF);

    QD_CHECK_EQ_INT(qd_fp32_to_e4m3_sat(464.0f), 0x7E);
    QD_CHECK_EQ_INT(qd_fp32_to_e4m3_sat(above464), 0x7E);
    QD_CHECK_EQ_INT(qd_fp32_to_e4m3_sat(480.0f), 0x7E);
    QD_CHECK_EQ_INT(qd_fp32_to_e4m3_sat(FLT_MAX), 0x7E);
    QD_CHECK_EQ_INT(qd_fp32_to_e4m3_sat(-1e30f), 0xFE);
    QD_CHECK_EQ_INT(qd_fp32_to_e4m3_sat(INFINITY), 0x7E);
    QD_CHECK_EQ_INT(qd_fp32_to_e4m3_sat(-INFINITY), 0xFE);
    /* in range, saturating and non-saturating agree */
    QD_CHECK_EQ_INT(qd_fp32_to_e4m3_sat(-0.3f), qd_fp32_to_e4m3(-0.3f));
    /* 200 = 1.5625 * 2^7, a tie between 1.5 and 1.625: even, 1.5 * 2^7 = 0 1110 100 */
    QD_CHECK_EQ_INT(qd_fp32_to_e4m3_sat(200.0f), 0x74);
}

/* The bottom: half the smallest subnormal ties to zero, anything below is a signed zero,
 * anything above is the smallest subnormal. */
QD_TEST(encode_underflow_and_subnormals) {
    for (size_t fi = 0; fi < N_FMTS; fi++) {
        const fmt *f = ALL_FMTS[fi];
        uint32_t sgn = fmt_sign(f);
        float tiny = ldexpf(1.0f, 1 - f->bias - f->mbits); /* smallest subnormal */
        float half = tiny / 2;
        QD_CHECK_EQ_INT(f->encode(tiny), 1);
        QD_CHECK_EQ_INT(f->encode(-tiny), sgn | 1);
        QD_CHECK_EQ_INT(f->encode(half), 0);
        QD_CHECK_EQ_INT(f->encode(-half), sgn);
        QD_CHECK_EQ_INT(f->encode(nextafterf(half, 1.0f)), 1);
        QD_CHECK_EQ_INT(f->encode(-nextafterf(half, 1.0f)), sgn | 1);
        QD_CHECK_EQ_INT(f->encode(nextafterf(half, 0.0f)), 0);
        QD_CHECK_EQ_INT(f->encode(fp32_from(0x00000001u)), 0); /* fp32's smallest subnormal */
        QD_CHECK_EQ_INT(f->encode(fp32_from(0x80000001u)), sgn);
        QD_CHECK_EQ_INT(f->encode(0.0f), 0);
        QD_CHECK_EQ_INT(f->encode(-0.0f), sgn);
        QD_CHECK_EQ_INT(f->encode(3 * tiny), 3);
        QD_CHECK_EQ_INT(f->encode(2.5f * tiny), 2); /* tie between 2 and 3: even */
        QD_CHECK_EQ_INT(f->encode(3.5f * tiny), 4);
    }
    /* the largest subnormal rounding up into the smallest normal */
    QD_CHECK_EQ_INT(qd_fp32_to_fp16(ldexpf(1023.75f, -24)), 0x0400);
    QD_CHECK_EQ_INT(qd_fp32_to_e4m3(ldexpf(7.75f, -9)), 0x08);
    QD_CHECK_EQ_INT(qd_fp32_to_bf16(fp32_from(0x007FFFFFu)), 0x0080);
    QD_CHECK_EQ_INT(qd_fp32_to_bf16(FLT_MIN), 0x0080);
}

QD_TEST(encode_known_values) {
    QD_CHECK_EQ_INT(qd_fp32_to_fp16(1.0f), 0x3C00);
    QD_CHECK_EQ_INT(qd_fp32_to_fp16(0.1f), 0x2E66);
    QD_CHECK_EQ_INT(qd_fp32_to_fp16(-3.140625f), 0xC248);
    QD_CHECK_EQ_INT(qd_fp32_to_bf16(1.0f), 0x3F80);
    QD_CHECK_EQ_INT(qd_fp32_to_bf16(0.1f), 0x3DCD);  /* 0x3DCCCCCD: low half > 0x8000, up */
    QD_CHECK_EQ_INT(qd_fp32_to_bf16(fp32_from(0x3F808000u)), 0x3F80); /* tie, even: down */
    QD_CHECK_EQ_INT(qd_fp32_to_bf16(fp32_from(0x3F818000u)), 0x3F82); /* tie, odd: up */
    QD_CHECK_EQ_INT(qd_fp32_to_e4m3(1.0f), 0x38);
    QD_CHECK_EQ_INT(qd_fp32_to_e4m3(0.1f), 0x1D);    /* 1.6 * 2^-4 -> 1.625 * 2^-4 */
    QD_CHECK_EQ_INT(qd_fp32_to_e4m3(-2.0f), 0xC0);
}

QD_TEST(encode_nan) {
    static const uint32_t nans[] = {0x7FC00000u, 0x7F800001u, 0x7FFFFFFFu, 0x7F802000u,
                                    0x7F810000u, 0x7FA00000u, 0xFFC00000u, 0xFF800001u};
    for (size_t fi = 0; fi < N_FMTS; fi++) {
        const fmt *f = ALL_FMTS[fi];
        for (size_t i = 0; i < sizeof nans / sizeof nans[0]; i++) {
            uint32_t got = f->encode(fp32_from(nans[i]));
            QD_CHECK_MSG(fmt_is_nan(f, got), "%s: encode(NaN 0x%08X) = 0x%X is not NaN",
                         f->name, nans[i], got);
            QD_CHECK_MSG(!(got & fmt_sign(f)) == !(nans[i] >> 31),
                         "%s: encode(NaN 0x%08X) = 0x%X lost the sign", f->name, nans[i], got);
            QD_CHECK_MSG(!f->quiet_bit || (got & f->quiet_bit),
                         "%s: encode(NaN 0x%08X) = 0x%X is not quiet", f->name, nans[i], got);
        }
    }
}

/* ---- bulk conversion ---------------------------------------------------------------------- */

static const qd_dtype FLOAT_TYPES[] = {QD_DTYPE_F64, QD_DTYPE_F32, QD_DTYPE_F16, QD_DTYPE_BF16,
                                       QD_DTYPE_F8_E4M3};
#define N_FLOAT_TYPES (sizeof FLOAT_TYPES / sizeof FLOAT_TYPES[0])

/* Element i of a buffer of type t, as fp32 bits (F64 rounded by C's conversion). */
static float elem_fp32(qd_dtype t, const unsigned char *p, size_t i) {
    switch (t) {
    case QD_DTYPE_F64: {
        double d;
        memcpy(&d, p + 8 * i, 8);
        return (float)d;
    }
    case QD_DTYPE_F32: {
        float f;
        memcpy(&f, p + 4 * i, 4);
        return f;
    }
    case QD_DTYPE_F16:
    case QD_DTYPE_BF16: {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        return t == QD_DTYPE_F16 ? qd_fp16_to_fp32(h) : qd_bf16_to_fp32(h);
    }
    default:
        return qd_e4m3_to_fp32(p[i]);
    }
}

/* Element i as raw bits (zero-extended). */
static uint64_t elem_bits(qd_dtype t, const unsigned char *p, size_t i) {
    size_t sz = qd_dtype_size(t);
    uint64_t v = 0;
    for (size_t k = 0; k < sz; k++) v |= (uint64_t)p[sz * i + k] << (8 * k); /* little endian */
    return v;
}

/* Is every value of `narrow` exactly representable in `wide`? */
static int dtype_contains(qd_dtype wide, qd_dtype narrow) {
    if (wide == narrow || wide == QD_DTYPE_F64) return 1;
    if (wide == QD_DTYPE_F32) return narrow != QD_DTYPE_F64;
    if (wide == QD_DTYPE_F16 || wide == QD_DTYPE_BF16) return narrow == QD_DTYPE_F8_E4M3;
    return 0;
}

/* Deterministic F64 inputs: specials first, then values spread over many magnitudes. More
 * than one 256-element chunk of the converter, with a partial last chunk. */
#define BULK_N 700
static void bulk_inputs(double *x) {
    static const double specials[] = {
        0.0, -0.0, 1.0, -1.0, 0.1, -0.1, 65504.0, 65519.0, 65520.0, 448.0, 464.0, 465.0,
        480.0, -500.0, 5.9604644775390625e-08, 2.98023223876953125e-08, 0.001953125,
        0.0009765625, 1e-8, 1e-40, 1e-45, 1e38, 3.4e38, -3.4028234663852886e38, 1e300,
        -1e-300, 3.141592653589793, -2.718281828459045, 1.00048828125, 255.99, 1e5};
    size_t ns = sizeof specials / sizeof specials[0];
    for (size_t i = 0; i < ns; i++) x[i] = specials[i];
    x[ns] = INFINITY;
    x[ns + 1] = -INFINITY;
    x[ns + 2] = NAN;
    x[ns + 3] = -NAN;
    uint64_t s = 0x9E3779B97F4A7C15ull;
    for (size_t i = ns + 4; i < BULK_N; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull; /* 64-bit LCG */
        double mant = (double)(s >> 11) / 9007199254740992.0;    /* [0, 1) */
        int e = (int)((s >> 3) % 80) - 40;                       /* 2^-40 .. 2^39 */
        x[i] = ldexp(1.0 + mant, e) * ((s & 1) ? -1.0 : 1.0);
    }
}

QD_TEST(convert_all_pairs) {
    static double x[BULK_N];
    static unsigned char src[N_FLOAT_TYPES][BULK_N * 8 + 1];
    static unsigned char dst[BULK_N * 8 + 2], back[BULK_N * 8]; /* dst: +1 offset, +1 guard */
    qd_error err = {0};
    bulk_inputs(x);
    /* Each source array from the F64 inputs; the +1 offset makes them unaligned on purpose. */
    for (size_t si = 0; si < N_FLOAT_TYPES; si++)
        QD_CHECK_OK(qd_convert(FLOAT_TYPES[si], src[si] + 1, QD_DTYPE_F64, x, BULK_N, &err),
                    &err);
    for (size_t si = 0; si < N_FLOAT_TYPES; si++) {
        for (size_t di = 0; di < N_FLOAT_TYPES; di++) {
            qd_dtype st = FLOAT_TYPES[si], dt = FLOAT_TYPES[di];
            const unsigned char *s = src[si] + 1;
            memset(dst, 0xA5, sizeof dst);
            QD_CHECK_OK(qd_convert(dt, dst + 1, st, s, BULK_N, &err), &err);
            int bad = 0;
            for (size_t i = 0; i < BULK_N; i++) {
                /* dst = encode_dt(decode_st(src)), each side checked above on its own */
                float v = elem_fp32(st, s, i), got = elem_fp32(dt, dst + 1, i);
                uint64_t want_bits, got_bits = elem_bits(dt, dst + 1, i);
                switch (dt) {
                case QD_DTYPE_F64: {
                    double d = (double)v;
                    memcpy(&want_bits, &d, 8);
                    break;
                }
                case QD_DTYPE_F32: want_bits = fp32_bits(v); break;
                case QD_DTYPE_F16: want_bits = qd_fp32_to_fp16(v); break;
                case QD_DTYPE_BF16: want_bits = qd_fp32_to_bf16(v); break;
                default: want_bits = qd_fp32_to_e4m3(v); break;
                }
                int ok = isnan(v) ? (isnan(got) && !signbit(got) == !signbit(v))
                                  : got_bits == want_bits;
                if (st == dt) ok = elem_bits(st, s, i) == got_bits; /* a copy: bits kept */
                if (!ok)
                    mismatch(&bad, "%s -> %s [%zu]: %.9g gave 0x%llX, want 0x%llX",
                             qd_dtype_name(st), qd_dtype_name(dt), i, (double)v,
                             (unsigned long long)got_bits, (unsigned long long)want_bits);
            }
            QD_CHECK_MSG(dst[0] == 0xA5 && dst[1 + BULK_N * qd_dtype_size(dt)] == 0xA5,
                         "%s -> %s wrote outside the buffer", qd_dtype_name(st),
                         qd_dtype_name(dt));
            /* widening and back is the identity */
            if (dtype_contains(dt, st)) {
                QD_CHECK_OK(qd_convert(st, back, dt, dst + 1, BULK_N, &err), &err);
                for (size_t i = 0; i < BULK_N; i++) {
                    float v = elem_fp32(st, s, i);
                    int ok = isnan(v) ? isnan(elem_fp32(st, back, i))
                                      : elem_bits(st, back, i) == elem_bits(st, s, i);
                    if (!ok)
                        mismatch(&bad, "%s -> %s -> %s [%zu]: 0x%llX came back as 0x%llX",
                                 qd_dtype_name(st), qd_dtype_name(dt), qd_dtype_name(st), i,
                                 (unsigned long long)elem_bits(st, s, i),
                                 (unsigned long long)elem_bits(st, back, i));
                }
            }
            QD_CHECK_MSG(bad == 0, "%s -> %s: %d mismatches", qd_dtype_name(st),
                         qd_dtype_name(dt), bad);
        }
    }
}

/* Known answers, independent of the scalar functions. */
QD_TEST(convert_known_values) {
    const float in[] = {1.0f, -2.0f, 0.1f, 65520.0f, 448.0f, -0.0f, INFINITY, NAN};
    const uint16_t want_f16[] = {0x3C00, 0xC000, 0x2E66, 0x7C00, 0x5F00, 0x8000, 0x7C00};
    const uint16_t want_bf16[] = {0x3F80, 0xC000, 0x3DCD, 0x4780, 0x43E0, 0x8000, 0x7F80};
    const uint8_t want_e4m3[] = {0x38, 0xC0, 0x1D, 0x7F, 0x7E, 0x80, 0x7F};
    uint16_t h[8], b[8];
    uint8_t e[8];
    double d[8];
    qd_error err = {0};
    QD_CHECK_OK(qd_convert(QD_DTYPE_F16, h, QD_DTYPE_F32, in, 8, &err), &err);
    QD_CHECK_OK(qd_convert(QD_DTYPE_BF16, b, QD_DTYPE_F32, in, 8, &err), &err);
    QD_CHECK_OK(qd_convert(QD_DTYPE_F8_E4M3, e, QD_DTYPE_F32, in, 8, &err), &err);
    QD_CHECK_OK(qd_convert(QD_DTYPE_F64, d, QD_DTYPE_F32, in, 8, &err), &err);
    for (int i = 0; i < 7; i++) {
        QD_CHECK_EQ_INT(h[i], want_f16[i]);
        QD_CHECK_EQ_INT(b[i], want_bf16[i]);
        QD_CHECK_EQ_INT(e[i], want_e4m3[i]);
        QD_CHECK(d[i] == (double)in[i] && !signbit(d[i]) == !signbit(in[i]));
    }
    QD_CHECK((h[7] & 0x7C00) == 0x7C00 && (h[7] & 0x03FF) != 0);
    QD_CHECK((b[7] & 0x7F80) == 0x7F80 && (b[7] & 0x007F) != 0);
    QD_CHECK_EQ_INT(e[7], 0x7F);
    QD_CHECK(isnan(d[7]));

    /* F64 goes through fp32: 1 + 2^-11 + 2^-40 becomes the fp16 tie 1 + 2^-11 first, which
     * then rounds to even (1.0), although the double itself is above the midpoint. */
    double x = 1.0 + ldexp(1.0, -11) + ldexp(1.0, -40);
    float f;
    QD_CHECK_OK(qd_convert(QD_DTYPE_F16, h, QD_DTYPE_F64, &x, 1, &err), &err);
    QD_CHECK_EQ_INT(h[0], 0x3C00);
    QD_CHECK_OK(qd_convert(QD_DTYPE_F32, &f, QD_DTYPE_F64, &x, 1, &err), &err);
    QD_CHECK(f == 1.0f + ldexpf(1.0f, -11));
    /* F8 is written non-saturating, like torch's .to() */
    x = 1000.0;
    QD_CHECK_OK(qd_convert(QD_DTYPE_F8_E4M3, e, QD_DTYPE_F64, &x, 1, &err), &err);
    QD_CHECK_EQ_INT(e[0], 0x7F);
}

QD_TEST(convert_errors) {
    float f[4] = {1, 2, 3, 4};
    int32_t i32[4] = {0};
    qd_error err = {0};
    QD_CHECK_EQ_INT(qd_convert(QD_DTYPE_I32, i32, QD_DTYPE_F32, f, 4, &err),
                    QD_ERR_UNSUPPORTED);
    QD_CHECK_EQ_INT(err.code, QD_ERR_UNSUPPORTED);
    QD_CHECK(strstr(err.msg, "I32") != NULL);
    QD_CHECK_EQ_INT(i32[0], 0); /* nothing written */
    qd_error_clear(&err);
    QD_CHECK_EQ_INT(qd_convert(QD_DTYPE_F32, f, QD_DTYPE_U8, i32, 4, &err), QD_ERR_UNSUPPORTED);
    QD_CHECK(strstr(err.msg, "U8") != NULL);
    QD_CHECK(f[0] == 1.0f);
    qd_error_clear(&err);
    /* not even a same-type copy for a dtype outside the set */
    QD_CHECK_EQ_INT(qd_convert(QD_DTYPE_I32, i32, QD_DTYPE_I32, i32, 4, &err),
                    QD_ERR_UNSUPPORTED);
    qd_error_clear(&err);
    QD_CHECK_EQ_INT(qd_convert(QD_DTYPE_F8_E5M2, i32, QD_DTYPE_F32, f, 4, &err),
                    QD_ERR_UNSUPPORTED);
    qd_error_clear(&err);
    QD_CHECK_EQ_INT(qd_convert(QD_DTYPE_COUNT, i32, QD_DTYPE_F32, f, 4, &err),
                    QD_ERR_UNSUPPORTED);
    QD_CHECK_EQ_INT(qd_convert((qd_dtype)-1, i32, QD_DTYPE_F32, f, 4, NULL),
                    QD_ERR_UNSUPPORTED);
    qd_error_clear(&err);
    QD_CHECK_EQ_INT(qd_convert(QD_DTYPE_F16, NULL, QD_DTYPE_F32, f, 4, &err),
                    QD_ERR_INVALID_ARG);
    qd_error_clear(&err);
    QD_CHECK_EQ_INT(qd_convert(QD_DTYPE_F16, i32, QD_DTYPE_F32, NULL, 4, &err),
                    QD_ERR_INVALID_ARG);
    qd_error_clear(&err);
    QD_CHECK_EQ_INT(qd_convert(QD_DTYPE_F64, i32, QD_DTYPE_F32, f, SIZE_MAX / 4, &err),
                    QD_ERR_INVALID_ARG);
    qd_error_clear(&err);
    QD_CHECK_OK(qd_convert(QD_DTYPE_F16, NULL, QD_DTYPE_F32, NULL, 0, &err), &err);
}

QD_TEST(convert_same_type_keeps_bits) {
    uint32_t in[3] = {0x7F800001u, 0xFFC12345u, 0x80000000u}, out[3] = {0};
    qd_error err = {0};
    QD_CHECK_OK(qd_convert(QD_DTYPE_F32, out, QD_DTYPE_F32, in, 3, &err), &err);
    QD_CHECK(memcmp(in, out, sizeof in) == 0);
    /* overlapping same-type copy is allowed */
    uint16_t h[4] = {1, 2, 3, 4};
    QD_CHECK_OK(qd_convert(QD_DTYPE_F16, h + 1, QD_DTYPE_F16, h, 3, &err), &err);
    QD_CHECK(h[0] == 1 && h[1] == 1 && h[2] == 2 && h[3] == 3);
}

QD_TEST(tensor_convert) {
    float data[6] = {1.0f, -0.5f, 0.1f, 70000.0f, -0.0f, 3.0f};
    int64_t shape[2] = {2, 3};
    qd_tensor src = qd_tensor_view(QD_DTYPE_F32, 2, shape, data);
    qd_tensor out;
    qd_error err = {0};
    QD_CHECK_OK(qd_tensor_convert(&src, QD_DTYPE_F16, &out, &err), &err);
    QD_REQUIRE(out.data != NULL);
    QD_CHECK(out.owned != NULL);
    QD_CHECK_EQ_INT(out.dtype, QD_DTYPE_F16);
    QD_CHECK_EQ_INT(out.ndim, 2);
    QD_CHECK_EQ_INT(out.shape[0], 2);
    QD_CHECK_EQ_INT(out.shape[1], 3);
    QD_CHECK(qd_tensor_is_contiguous(&out));
    const uint16_t want[6] = {0x3C00, 0xB800, 0x2E66, 0x7C00, 0x8000, 0x4200};
    const uint16_t *h = out.data;
    for (int i = 0; i < 6; i++) QD_CHECK_EQ_INT(h[i], want[i]);

    /* and back to F32: the values fp16 holds exactly */
    qd_tensor back;
    QD_CHECK_OK(qd_tensor_convert(&out, QD_DTYPE_F32, &back, &err), &err);
    const float *fb = back.data;
    QD_CHECK(fb[0] == 1.0f && fb[1] == -0.5f && fb[5] == 3.0f && isinf(fb[3]));
    QD_CHECK(fb[2] == 0.0999755859375f && signbit(fb[4]));
    qd_tensor_free(&back);
    qd_tensor_free(&out);

    /* 0-d: one element */
    qd_tensor scalar = qd_tensor_view(QD_DTYPE_F32, 0, NULL, data);
    QD_CHECK_OK(qd_tensor_convert(&scalar, QD_DTYPE_BF16, &out, &err), &err);
    QD_CHECK_EQ_INT(*(const uint16_t *)out.data, 0x3F80);
    qd_tensor_free(&out);

    /* errors leave *out alone */
    qd_tensor sentinel;
    memset(&sentinel, 0x5A, sizeof sentinel);
    out = sentinel;
    qd_tensor tr = src; /* a transposed view: shape [3, 2], strides [1, 3] */
    tr.shape[0] = 3;
    tr.shape[1] = 2;
    tr.stride[0] = 1;
    tr.stride[1] = 3;
    QD_CHECK_EQ_INT(qd_tensor_convert(&tr, QD_DTYPE_F16, &out, &err), QD_ERR_UNSUPPORTED);
    QD_CHECK(strstr(err.msg, "contiguous") != NULL);
    QD_CHECK(memcmp(&out, &sentinel, sizeof out) == 0);
    qd_error_clear(&err);
    QD_CHECK_EQ_INT(qd_tensor_convert(&src, QD_DTYPE_I8, &out, &err), QD_ERR_UNSUPPORTED);
    QD_CHECK(memcmp(&out, &sentinel, sizeof out) == 0);
    qd_error_clear(&err);
    qd_tensor nodata = qd_tensor_view(QD_DTYPE_F32, 2, shape, NULL);
    QD_CHECK_EQ_INT(qd_tensor_convert(&nodata, QD_DTYPE_F16, &out, &err), QD_ERR_INVALID_ARG);
    QD_CHECK(memcmp(&out, &sentinel, sizeof out) == 0);
}

QD_TEST_MAIN()
