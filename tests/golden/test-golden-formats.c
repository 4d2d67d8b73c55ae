/*
 * test-golden-formats.c - the packed words of every artifact format, written out from the
 * layout rules of docs/formats.md, checked against quantd's packers (quantizers/formats/) and
 * fed to its unpackers.
 *
 * The expected words below were derived from the rules alone (word by word, nibble by
 * nibble), never produced by the code under test; a few are worked through in the comments.
 * The layers are tiny and hand-made so that every nibble of a word differs:
 *
 *   layer A  N=16 K=32 G=16, 4-bit: code[n][k] = (3n + k) % 16,
 *            asymmetric zero[n][g] = (5n + 7g + 1) % 16, scale[n][g] = (n+1)/8 + g/64
 *   layer B  N=8 K=16 G=8, 8-bit:  code[n][k] = (37n + 11k + 5) % 256,
 *            asymmetric zero[n][g] = (29n + 71g + 3) % 256
 *   layer C  N=12 K=20 G=10, 4-bit, layer A's formulas: both compressed-tensors tensors need
 *            padding (K to 24, N to 16)
 *   layer M  N=4 K=16 G=8, 4-bit symmetric (ModelOpt), layer A's codes
 *
 * Every scale is exactly representable in fp16 and bf16, so the expected scale bits are the
 * plain conversions of the formula. Configs are compared key by key, in order.
 */
#include <stdint.h>
#include <string.h>

#include <jansson.h>

#include "dtype.h"
#include "formats/format.h"
#include "qlinear.h"
#include "test.h"

/* ---- the layers ------------------------------------------------------------------------------ */

static int code_a(int n, int k) { return (n * 3 + k) % 16; }
static int zero_a(int n, int g) { return (n * 5 + g * 7 + 1) % 16; }
static float scale_a(int n, int g) { return (float)(n + 1) * 0.125f + (float)g * 0.015625f; }
static int code_b(int n, int k) { return (n * 37 + k * 11 + 5) % 256; }
static int zero_b(int n, int g) { return (n * 29 + g * 71 + 3) % 256; }

/* A layer [n, k] with codes/zeros/scales from the formulas; zero == NULL: symmetric. */
static int make_layer(qd_qlinear *q, int n, int k, int g, int bits, int (*code)(int, int),
                      int (*zero)(int, int)) {
    qd_error err = {0};
    qd_qrule rule = zero ? QD_QRULE_ASYM_ZERO_IN_RANGE : QD_QRULE_SYM_HALF;
    if (qd_qlinear_alloc(q, n, k, QD_QTYPE_INT, bits, g, rule, &err) != QD_OK) {
        fprintf(stderr, "qd_qlinear_alloc: %s\n", qd_error_text(&err));
        return 0;
    }
    for (int r = 0; r < n; r++) {
        for (int c = 0; c < k; c++)
            q->codes[(size_t)r * (size_t)k + (size_t)c] = (uint8_t)code(r, c);
        for (int gi = 0; gi < q->n_groups; gi++) {
            size_t i = (size_t)r * (size_t)q->n_groups + (size_t)gi;
            q->zeros[i] = zero ? (float)zero(r, gi) : (float)(1 << (bits - 1));
            q->scales[i] = scale_a(r, gi);
        }
    }
    return 1;
}

/* ---- expected words --------------------------------------------------------------------------
 *
 * AWQ qweight [K, N/8]: word (k, j) nibble i = code[8j + ORDER[i]][k], ORDER = 0,2,4,6,1,3,5,7.
 * Word (0, 0): channels 0..7 of column 0 have codes 0,3,6,9,c,f,2,5; nibbles 0..7 take
 * channels 0,2,4,6,1,3,5,7 = 0,6,c,2,3,9,f,5, so the word reads 0x5f932c60.
 */
static const uint32_t AWQ_QWEIGHT[64] = {
    0x5f932c60, 0xd71ba4e8, 0x60a43d71, 0xe82cb5f9,
    0x71b54e82, 0xf93dc60a, 0x82c65f93, 0x0a4ed71b,
    0x93d760a4, 0x1b5fe82c, 0xa4e871b5, 0x2c60f93d,
    0xb5f982c6, 0x3d710a4e, 0xc60a93d7, 0x4e821b5f,
    0xd71ba4e8, 0x5f932c60, 0xe82cb5f9, 0x60a43d71,
    0xf93dc60a, 0x71b54e82, 0x0a4ed71b, 0x82c65f93,
    0x1b5fe82c, 0x93d760a4, 0x2c60f93d, 0xa4e871b5,
    0x3d710a4e, 0xb5f982c6, 0x4e821b5f, 0xc60a93d7,
    0x5f932c60, 0xd71ba4e8, 0x60a43d71, 0xe82cb5f9,
    0x71b54e82, 0xf93dc60a, 0x82c65f93, 0x0a4ed71b,
    0x93d760a4, 0x1b5fe82c, 0xa4e871b5, 0x2c60f93d,
    0xb5f982c6, 0x3d710a4e, 0xc60a93d7, 0x4e821b5f,
    0xd71ba4e8, 0x5f932c60, 0xe82cb5f9, 0x60a43d71,
    0xf93dc60a, 0x71b54e82, 0x0a4ed71b, 0x82c65f93,
    0x1b5fe82c, 0x93d760a4, 0x2c60f93d, 0xa4e871b5,
    0x3d710a4e, 0xb5f982c6, 0x4e821b5f, 0xc60a93d7,
};
/* AWQ qzeros [K/G, N/8], same interleave, raw zeros. Word (0, 0): zeros of channels 0..7 in
 * group 0 are 1,6,b,0,5,a,f,4; in nibble order 1,b,5,f,6,0,a,4 -> 0x4a06f5b1. */
static const uint32_t AWQ_QZEROS[4] = {
    0x4a06f5b1, 0xc28e7d39, 0xb17d6c28, 0x39f5e4a0,
};
/* AWQ / GPTQ scales [K/G, N] fp16 (the transpose of qlinear's [N, n_groups]). */
static const uint16_t A_SCALES_F16[32] = {
    0x3000, 0x3400, 0x3600, 0x3800, 0x3900, 0x3a00, 0x3b00, 0x3c00,
    0x3c80, 0x3d00, 0x3d80, 0x3e00, 0x3e80, 0x3f00, 0x3f80, 0x4000,
    0x3080, 0x3440, 0x3640, 0x3820, 0x3920, 0x3a20, 0x3b20, 0x3c10,
    0x3c90, 0x3d10, 0x3d90, 0x3e10, 0x3e90, 0x3f10, 0x3f90, 0x4008,
};
/* GPTQ 4-bit qweight [K/8, N]: word (r, n) nibble j = code[n][8r + j] (along K, sequential).
 * Word (0, 0) holds codes 0..7 of row 0: 0x76543210. Word (0, 1): 3..a -> 0xa9876543. */
static const uint32_t GPTQ4_QWEIGHT[64] = {
    0x76543210, 0xa9876543, 0xdcba9876, 0x0fedcba9,
    0x3210fedc, 0x6543210f, 0x98765432, 0xcba98765,
    0xfedcba98, 0x210fedcb, 0x543210fe, 0x87654321,
    0xba987654, 0xedcba987, 0x10fedcba, 0x43210fed,
    0xfedcba98, 0x210fedcb, 0x543210fe, 0x87654321,
    0xba987654, 0xedcba987, 0x10fedcba, 0x43210fed,
    0x76543210, 0xa9876543, 0xdcba9876, 0x0fedcba9,
    0x3210fedc, 0x6543210f, 0x98765432, 0xcba98765,
    0x76543210, 0xa9876543, 0xdcba9876, 0x0fedcba9,
    0x3210fedc, 0x6543210f, 0x98765432, 0xcba98765,
    0xfedcba98, 0x210fedcb, 0x543210fe, 0x87654321,
    0xba987654, 0xedcba987, 0x10fedcba, 0x43210fed,
    0xfedcba98, 0x210fedcb, 0x543210fe, 0x87654321,
    0xba987654, 0xedcba987, 0x10fedcba, 0x43210fed,
    0x76543210, 0xa9876543, 0xdcba9876, 0x0fedcba9,
    0x3210fedc, 0x6543210f, 0x98765432, 0xcba98765,
};
/* GPTQ v2 qzeros [K/G, N/8]: word (g, c) nibble j = zero[8c + j][g], raw. Word (0, 0): zeros
 * 1,6,b,0,5,a,f,4 in order -> 0x4fa50b61. (v1 of a symmetric layer: 8 - 1 = 7 everywhere.) */
static const uint32_t GPTQ4_QZEROS_V2[4] = {
    0x4fa50b61, 0xc72d83e9, 0xb61c72d8, 0x3e94fa50,
};
/* GPTQ 8-bit qweight [K/4, N]: byte j of word (r, n) = code[n][4r + j]. Word (0, 0): codes
 * 5, 16, 27, 38 = 05 10 1b 26 -> 0x261b1005. */
static const uint32_t GPTQ8_QWEIGHT[32] = {
    0x261b1005, 0x4b40352a, 0x70655a4f, 0x958a7f74,
    0xbaafa499, 0xdfd4c9be, 0x04f9eee3, 0x291e1308,
    0x52473c31, 0x776c6156, 0x9c91867b, 0xc1b6aba0,
    0xe6dbd0c5, 0x0b00f5ea, 0x30251a0f, 0x554a3f34,
    0x7e73685d, 0xa3988d82, 0xc8bdb2a7, 0xede2d7cc,
    0x1207fcf1, 0x372c2116, 0x5c51463b, 0x81766b60,
    0xaa9f9489, 0xcfc4b9ae, 0xf4e9ded3, 0x190e03f8,
    0x3e33281d, 0x63584d42, 0x887d7267, 0xada2978c,
};
/* GPTQ v2 8-bit qzeros [K/G, N/4]: byte j of word (g, c) = zero[4c + j][g]. Word (0, 0): zeros
 * 3, 32, 61, 90 -> 0x5a3d2003. */
static const uint32_t GPTQ8_QZEROS_V2[4] = {
    0x5a3d2003, 0xceb19477, 0xa184674a, 0x15f8dbbe,
};
/* compressed-tensors weight_packed of layer A (symmetric) [N, K/8]: word (n, c) nibble i =
 * code[n][8c + i] (the code IS the signed value + 8). Equal to GPTQ's qweight transposed,
 * which a test checks on the literals themselves. */
static const uint32_t CT4_WEIGHT_PACKED_A[64] = {
    0x76543210, 0xfedcba98, 0x76543210, 0xfedcba98,
    0xa9876543, 0x210fedcb, 0xa9876543, 0x210fedcb,
    0xdcba9876, 0x543210fe, 0xdcba9876, 0x543210fe,
    0x0fedcba9, 0x87654321, 0x0fedcba9, 0x87654321,
    0x3210fedc, 0xba987654, 0x3210fedc, 0xba987654,
    0x6543210f, 0xedcba987, 0x6543210f, 0xedcba987,
    0x98765432, 0x10fedcba, 0x98765432, 0x10fedcba,
    0xcba98765, 0x43210fed, 0xcba98765, 0x43210fed,
    0xfedcba98, 0x76543210, 0xfedcba98, 0x76543210,
    0x210fedcb, 0xa9876543, 0x210fedcb, 0xa9876543,
    0x543210fe, 0xdcba9876, 0x543210fe, 0xdcba9876,
    0x87654321, 0x0fedcba9, 0x87654321, 0x0fedcba9,
    0xba987654, 0x3210fedc, 0xba987654, 0x3210fedc,
    0xedcba987, 0x6543210f, 0xedcba987, 0x6543210f,
    0x10fedcba, 0x98765432, 0x10fedcba, 0x98765432,
    0x43210fed, 0xcba98765, 0x43210fed, 0xcba98765,
};
/* compressed-tensors scales [N, K/G] of layer A, fp16 (not transposed). */
static const uint16_t A_SCALES_F16_NG[32] = {
    0x3000, 0x3080, 0x3400, 0x3440, 0x3600, 0x3640, 0x3800, 0x3820,
    0x3900, 0x3920, 0x3a00, 0x3a20, 0x3b00, 0x3b20, 0x3c00, 0x3c10,
    0x3c80, 0x3c90, 0x3d00, 0x3d10, 0x3d80, 0x3d90, 0x3e00, 0x3e10,
    0x3e80, 0x3e90, 0x3f00, 0x3f10, 0x3f80, 0x3f90, 0x4000, 0x4008,
};
/* compressed-tensors weight_packed of layer C [12, ceil(20/8) = 3]: the third word of each row
 * holds columns 16..19 and four zero nibbles: row 0 -> 0x00003210. */
static const uint32_t CTC_WEIGHT_PACKED[36] = {
    0x76543210, 0xfedcba98, 0x00003210,
    0xa9876543, 0x210fedcb, 0x00006543,
    0xdcba9876, 0x543210fe, 0x00009876,
    0x0fedcba9, 0x87654321, 0x0000cba9,
    0x3210fedc, 0xba987654, 0x0000fedc,
    0x6543210f, 0xedcba987, 0x0000210f,
    0x98765432, 0x10fedcba, 0x00005432,
    0xcba98765, 0x43210fed, 0x00008765,
    0xfedcba98, 0x76543210, 0x0000ba98,
    0x210fedcb, 0xa9876543, 0x0000edcb,
    0x543210fe, 0xdcba9876, 0x000010fe,
    0x87654321, 0x0fedcba9, 0x00004321,
};
/* compressed-tensors weight_zero_point of layer C [ceil(12/8) = 2, 2]: word (r, g) nibble i =
 * zero[8r + i][g], packed along N; row 1 holds channels 8..11 then zero nibbles: word (1, 0)
 * = zeros of channels 8..11 in group 0 = 9, e, 3, 8 -> 0x000083e9. */
static const uint32_t CTC_ZERO_POINT[4] = {
    0x4fa50b61, 0xb61c72d8,
    0x000083e9, 0x0000fa50,
};
/* Layer C's scales [12, 2] in bf16. */
static const uint16_t CTC_SCALES_BF16[24] = {
    0x3e00, 0x3e10, 0x3e80, 0x3e88, 0x3ec0, 0x3ec8, 0x3f00, 0x3f04,
    0x3f20, 0x3f24, 0x3f40, 0x3f44, 0x3f60, 0x3f64, 0x3f80, 0x3f82,
    0x3f90, 0x3f92, 0x3fa0, 0x3fa2, 0x3fb0, 0x3fb2, 0x3fc0, 0x3fc2,
};
/* compressed-tensors 8-bit weight_packed of layer B [8, 16/4]: byte i of word (n, c) =
 * code[n][4c + i]. Row 0 is GPTQ's column 0. */
static const uint32_t CT8_WEIGHT_PACKED[32] = {
    0x261b1005, 0x52473c31, 0x7e73685d, 0xaa9f9489,
    0x4b40352a, 0x776c6156, 0xa3988d82, 0xcfc4b9ae,
    0x70655a4f, 0x9c91867b, 0xc8bdb2a7, 0xf4e9ded3,
    0x958a7f74, 0xc1b6aba0, 0xede2d7cc, 0x190e03f8,
    0xbaafa499, 0xe6dbd0c5, 0x1207fcf1, 0x3e33281d,
    0xdfd4c9be, 0x0b00f5ea, 0x372c2116, 0x63584d42,
    0x04f9eee3, 0x30251a0f, 0x5c51463b, 0x887d7267,
    0x291e1308, 0x554a3f34, 0x81766b60, 0xada2978c,
};
/* ... and its weight_zero_point [8/4, 2]: byte i of word (r, g) = zero[4r + i][g]. */
static const uint32_t CT8_ZERO_POINT[4] = {
    0x5a3d2003, 0xa184674a, 0xceb19477, 0x15f8dbbe,
};
/* ModelOpt int4 weight [N/2, K] uint8: byte (i, k) = (s[2i][k] & 0xF) | (s[2i+1][k] & 0xF) << 4
 * with s = code - 8. Byte (0, 0): row 0 code 0 -> s = -8 -> 0x8; row 1 code 3 -> s = -5 ->
 * 0xb; byte 0xb8. */
static const uint8_t MO_W4_WEIGHT[32] = {
    0xb8, 0xc9, 0xda, 0xeb, 0xfc, 0x0d, 0x1e, 0x2f,
    0x30, 0x41, 0x52, 0x63, 0x74, 0x85, 0x96, 0xa7,
    0x1e, 0x2f, 0x30, 0x41, 0x52, 0x63, 0x74, 0x85,
    0x96, 0xa7, 0xb8, 0xc9, 0xda, 0xeb, 0xfc, 0x0d,
};
/* int8 weights (compressed-tensors int-quantized, ModelOpt SmoothQuant) of layer B's first
 * 4 rows and 8 columns: code - 128. */
static const int8_t I8_WEIGHT[32] = {
    -123, -112, -101, -90, -79, -68, -57, -46,
    -86, -75, -64, -53, -42, -31, -20, -9,
    -49, -38, -27, -16, -5, 6, 17, 28,
    -12, -1, 10, 21, 32, 43, 54, 65,
};

/* ---- helpers --------------------------------------------------------------------------------- */

/* The tensor called name with the given dtype and shape, or NULL (and a failed check). */
static const qd_packed_tensor *expect_tensor(const qd_packed_list *l, const char *name,
                                             qd_dtype dt, int ndim, const int64_t *shape) {
    const qd_packed_tensor *t = qd_packed_list_find(l, name);
    QD_CHECK_MSG(t != NULL, "tensor '%s' missing", name);
    if (!t) return NULL;
    int ok = t->dtype == dt && t->ndim == ndim;
    for (int d = 0; ok && d < ndim; d++) ok = t->shape[d] == shape[d];
    if (!ok) {
        char got[64], want[64];
        qd_shape_str(t->ndim, t->shape, got, sizeof got);
        qd_shape_str(ndim, shape, want, sizeof want);
        QD_FAIL_("tensor '%s' is %s %s, expected %s %s", name, qd_dtype_name(t->dtype), got,
                 qd_dtype_name(dt), want);
        return NULL;
    }
    return t;
}

/* Compare count elements of size esz, reporting the first difference as hex. */
static void expect_data(const qd_packed_list *l, const char *name, qd_dtype dt, int ndim,
                        const int64_t *shape, const void *want, size_t count) {
    const qd_packed_tensor *t = expect_tensor(l, name, dt, ndim, shape);
    if (!t) return;
    size_t esz = qd_dtype_size(dt);
    QD_CHECK_EQ_INT(t->nbytes, count * esz);
    if (t->nbytes != count * esz) return;
    for (size_t i = 0; i < count; i++) {
        uint64_t a = 0, b = 0;
        memcpy(&a, (const char *)t->data + i * esz, esz);
        memcpy(&b, (const char *)want + i * esz, esz);
        if (a != b) {
            QD_FAIL_("tensor '%s' element %zu: 0x%0*llx, expected 0x%0*llx", name, i,
                     (int)esz * 2, (unsigned long long)a, (int)esz * 2, (unsigned long long)b);
            return;
        }
    }
}

/* Element i of a float tensor, as fp32. */
static float float_at(const qd_packed_tensor *t, size_t i) {
    if (t->dtype == QD_DTYPE_F32) {
        float f;
        memcpy(&f, (const char *)t->data + i * 4, 4);
        return f;
    }
    uint16_t h;
    memcpy(&h, (const char *)t->data + i * 2, 2);
    return t->dtype == QD_DTYPE_F16 ? qd_fp16_to_fp32(h) : qd_bf16_to_fp32(h);
}

/* The list holds exactly these names (no extra tensors). */
static void expect_names(const qd_packed_list *l, const char *const *names, int count) {
    QD_CHECK_EQ_INT(l->n, count);
    for (int i = 0; i < count; i++)
        QD_CHECK_MSG(qd_packed_list_find(l, names[i]) != NULL, "tensor '%s' missing", names[i]);
}

/* Append a copy of literal data to a list (to feed an unpacker hand-made tensors). */
static void add_lit(qd_packed_list *l, const char *name, qd_dtype dt, int ndim,
                    const int64_t *shape, const void *data) {
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 8;
        l->items = realloc(l->items, (size_t)l->cap * sizeof *l->items);
    }
    qd_packed_tensor *t = &l->items[l->n++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->dtype = dt;
    t->ndim = ndim;
    size_t count = 1;
    for (int d = 0; d < ndim; d++) {
        t->shape[d] = shape[d];
        count *= (size_t)shape[d];
    }
    t->nbytes = count * qd_dtype_size(dt);
    t->data = malloc(t->nbytes ? t->nbytes : 1);
    memcpy(t->data, data, t->nbytes);
}

static int pack(const qd_format *f, const qd_format_params *p, const qd_qlinear *q,
                const char *prefix, qd_packed_list *l) {
    qd_error err = {0};
    qd_err rc = f->pack(p, q, prefix, l, &err);
    QD_CHECK_MSG(rc == QD_OK, "%s pack failed: %s", f->name, qd_error_text(&err));
    return rc == QD_OK;
}

/* Compare an unpacked layer with the formulas. */
static void expect_layer(const qd_qlinear *q, int n, int k, int g, int bits,
                         int (*code)(int, int), int (*zero)(int, int)) {
    QD_CHECK_EQ_INT(q->n, n);
    QD_CHECK_EQ_INT(q->k, k);
    QD_CHECK_EQ_INT(q->bits, bits);
    QD_CHECK_EQ_INT(q->group_size, g);
    QD_CHECK_EQ_INT(q->n_groups, k / g);
    if (q->n != n || q->k != k || q->n_groups != k / g) return;
    int bad = 0;
    for (int r = 0; r < n && bad < 3; r++) {
        for (int c = 0; c < k && bad < 3; c++)
            if (q->codes[(size_t)r * (size_t)k + (size_t)c] != code(r, c)) {
                QD_FAIL_("code [%d][%d] = %d, expected %d", r, c,
                         q->codes[(size_t)r * (size_t)k + (size_t)c], code(r, c));
                bad++;
            }
        for (int gi = 0; gi < k / g && bad < 3; gi++) {
            size_t i = (size_t)r * (size_t)(k / g) + (size_t)gi;
            float z = zero ? (float)zero(r, gi) : (float)(1 << (bits - 1));
            if (q->zeros[i] != z || q->scales[i] != scale_a(r, gi)) {
                QD_FAIL_("zero/scale [%d][%d] = %g/%g, expected %g/%g", r, gi,
                         (double)q->zeros[i], (double)q->scales[i], (double)z,
                         (double)scale_a(r, gi));
                bad++;
            }
        }
    }
}

/* got equals want, objects key by key IN ORDER, arrays element by element. */
static void expect_json_at(const json_t *got, const json_t *want, const char *path) {
    if (json_is_object(want)) {
        if (!json_is_object(got)) {
            QD_FAIL_("%s: expected an object", path);
            return;
        }
        QD_CHECK_MSG(json_object_size(got) == json_object_size(want),
                     "%s: %zu keys, expected %zu", path, json_object_size(got),
                     json_object_size(want));
        void *ig = json_object_iter((json_t *)got), *iw = json_object_iter((json_t *)want);
        for (; ig && iw; ig = json_object_iter_next((json_t *)got, ig),
                         iw = json_object_iter_next((json_t *)want, iw)) {
            const char *kg = json_object_iter_key(ig), *kw = json_object_iter_key(iw);
            char sub[256];
            snprintf(sub, sizeof sub, "%s.%s", path, kw);
            if (strcmp(kg, kw) != 0) {
                QD_FAIL_("%s: key '%s' where '%s' was expected", path, kg, kw);
                return;
            }
            expect_json_at(json_object_iter_value(ig), json_object_iter_value(iw), sub);
        }
        return;
    }
    if (json_is_array(want)) {
        if (!json_is_array(got) || json_array_size(got) != json_array_size(want)) {
            QD_FAIL_("%s: array differs in size or kind", path);
            return;
        }
        for (size_t i = 0; i < json_array_size(want); i++) {
            char sub[256];
            snprintf(sub, sizeof sub, "%s[%zu]", path, i);
            expect_json_at(json_array_get(got, i), json_array_get(want, i), sub);
        }
        return;
    }
    if (!json_equal((json_t *)got, (json_t *)want)) {
        char *a = json_dumps(got, JSON_ENCODE_ANY), *b = json_dumps(want, JSON_ENCODE_ANY);
        QD_FAIL_("%s: %s, expected %s", path, a ? a : "?", b ? b : "?");
        free(a);
        free(b);
    }
}

/* Build config (or side config) and compare it with want_text. */
static void expect_config(const qd_format *f, const qd_format_params *p, int side,
                          const char *want_text) {
    qd_error err = {0};
    json_t *got = NULL;
    qd_err rc = side ? f->side_config(p, &got, &err) : f->quantization_config(p, &got, &err);
    QD_CHECK_MSG(rc == QD_OK, "%s config failed: %s", f->name, qd_error_text(&err));
    json_error_t jerr;
    json_t *want = json_loads(want_text, 0, &jerr);
    QD_CHECK_MSG(want != NULL, "bad expected JSON: %s", jerr.text);
    if (got && want) expect_json_at(got, want, f->name);
    json_decref(got);
    json_decref(want);
}

/* Every object's keys are in sorted order (compressed-tensors writes with sort_keys). */
static void expect_sorted_keys(const json_t *o) {
    if (json_is_array(o))
        for (size_t i = 0; i < json_array_size(o); i++) expect_sorted_keys(json_array_get(o, i));
    if (!json_is_object(o)) return;
    const char *prev = NULL;
    for (void *it = json_object_iter((json_t *)o); it;
         it = json_object_iter_next((json_t *)o, it)) {
        const char *k = json_object_iter_key(it);
        QD_CHECK_MSG(!prev || strcmp(prev, k) < 0, "key '%s' after '%s'", k, prev);
        prev = k;
        expect_sorted_keys(json_object_iter_value(it));
    }
}

#define PFX "model.layers.0.mlp.up_proj"

/* ---- AWQ ------------------------------------------------------------------------------------- */

QD_TEST(awq_pack_words) {
    qd_qlinear q;
    QD_REQUIRE(make_layer(&q, 16, 32, 16, 4, code_a, zero_a));
    qd_format_params p;
    qd_format_params_init(&p);
    p.group_size = 16;
    p.symmetric = false;
    qd_packed_list l = {0};
    if (pack(&qd_format_awq, &p, &q, PFX, &l)) {
        const char *names[] = {PFX ".qweight", PFX ".qzeros", PFX ".scales"};
        expect_names(&l, names, 3);
        expect_data(&l, PFX ".qweight", QD_DTYPE_I32, 2, (int64_t[]){32, 2}, AWQ_QWEIGHT, 64);
        expect_data(&l, PFX ".qzeros", QD_DTYPE_I32, 2, (int64_t[]){2, 2}, AWQ_QZEROS, 4);
        expect_data(&l, PFX ".scales", QD_DTYPE_F16, 2, (int64_t[]){2, 16}, A_SCALES_F16, 32);
    }
    qd_packed_list_free(&l);
    qd_qlinear_free(&q);
}

QD_TEST(awq_unpack_words) {
    qd_packed_list l = {0};
    add_lit(&l, "x.qweight", QD_DTYPE_I32, 2, (int64_t[]){32, 2}, AWQ_QWEIGHT);
    add_lit(&l, "x.qzeros", QD_DTYPE_I32, 2, (int64_t[]){2, 2}, AWQ_QZEROS);
    add_lit(&l, "x.scales", QD_DTYPE_F16, 2, (int64_t[]){2, 16}, A_SCALES_F16);
    qd_format_params p;
    qd_format_params_init(&p);
    p.group_size = 16;
    p.symmetric = false;
    qd_qlinear q;
    qd_error err = {0};
    qd_err rc = qd_format_awq.unpack(&p, "x", qd_packed_list_lookup, &l, &q, &err);
    QD_CHECK_MSG(rc == QD_OK, "unpack: %s", qd_error_text(&err));
    if (rc == QD_OK) {
        expect_layer(&q, 16, 32, 16, 4, code_a, zero_a);
        QD_CHECK(q.g_idx == NULL && q.bias == NULL && q.pre_scale == NULL);
        qd_qlinear_free(&q);
    }
    qd_packed_list_free(&l);
}

/* ---- GPTQ ------------------------------------------------------------------------------------ */

QD_TEST(gptq_v1_4bit_words) {
    qd_qlinear q;
    QD_REQUIRE(make_layer(&q, 16, 32, 16, 4, code_a, NULL));
    q.bias = malloc(16 * sizeof *q.bias);
    for (int i = 0; i < 16; i++) q.bias[i] = (float)i * 0.5f - 4.0f;
    qd_format_params p;
    qd_format_params_init(&p);
    p.group_size = 16;
    qd_packed_list l = {0};
    if (pack(&qd_format_gptq, &p, &q, PFX, &l)) {
        const char *names[] = {PFX ".qweight", PFX ".qzeros", PFX ".scales", PFX ".g_idx",
                               PFX ".bias"};
        expect_names(&l, names, 5);
        expect_data(&l, PFX ".qweight", QD_DTYPE_I32, 2, (int64_t[]){4, 16}, GPTQ4_QWEIGHT, 64);
        /* v1: symmetric zero 8 stored as 7 in every nibble */
        static const uint32_t z[4] = {0x77777777, 0x77777777, 0x77777777, 0x77777777};
        expect_data(&l, PFX ".qzeros", QD_DTYPE_I32, 2, (int64_t[]){2, 2}, z, 4);
        expect_data(&l, PFX ".scales", QD_DTYPE_F16, 2, (int64_t[]){2, 16}, A_SCALES_F16, 32);
        int32_t g[32];
        for (int i = 0; i < 32; i++) g[i] = i < 16 ? 0 : 1;
        expect_data(&l, PFX ".g_idx", QD_DTYPE_I32, 1, (int64_t[]){32}, g, 32);
        /* bias fp16: -4.0 = 0xc400, -3.5 = 0xc300, 0.0 = 0x0000, 3.5 = 0x4300 */
        const qd_packed_tensor *b = expect_tensor(&l, PFX ".bias", QD_DTYPE_F16, 1,
                                                  (int64_t[]){16});
        if (b) {
            const uint16_t *h = b->data;
            QD_CHECK_EQ_INT(h[0], 0xc400);
            QD_CHECK_EQ_INT(h[1], 0xc300);
            QD_CHECK_EQ_INT(h[8], 0x0000);
            QD_CHECK_EQ_INT(h[15], 0x4300);
        }
    }
    qd_packed_list_free(&l);
    qd_qlinear_free(&q);
}

QD_TEST(gptq_v2_4bit_words) {
    qd_qlinear q;
    QD_REQUIRE(make_layer(&q, 16, 32, 16, 4, code_a, zero_a));
    qd_format_params p;
    qd_format_params_init(&p);
    p.group_size = 16;
    p.symmetric = false;
    qd_packed_list l = {0};
    if (pack(&qd_format_gptq_v2, &p, &q, "", &l)) {
        expect_data(&l, "qweight", QD_DTYPE_I32, 2, (int64_t[]){4, 16}, GPTQ4_QWEIGHT, 64);
        expect_data(&l, "qzeros", QD_DTYPE_I32, 2, (int64_t[]){2, 2}, GPTQ4_QZEROS_V2, 4);
        expect_data(&l, "scales", QD_DTYPE_F16, 2, (int64_t[]){2, 16}, A_SCALES_F16, 32);
    }
    qd_packed_list_free(&l);
    qd_qlinear_free(&q);
}

/* Act-order: columns keep their original order in qweight; only g_idx says the groups. */
QD_TEST(gptq_act_order_words) {
    qd_qlinear q;
    QD_REQUIRE(make_layer(&q, 16, 32, 16, 4, code_a, zero_a));
    /* groups alternate in pairs of columns: 0,0,1,1,0,0,1,1,... (16 columns each) */
    static const int32_t g_idx[32] = {0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1,
                                      0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1};
    q.g_idx = malloc(sizeof g_idx);
    memcpy(q.g_idx, g_idx, sizeof g_idx);
    qd_format_params p;
    qd_format_params_init(&p);
    p.group_size = 16;
    p.symmetric = false;
    p.act_order = true;
    qd_packed_list l = {0};
    if (pack(&qd_format_gptq_v2, &p, &q, PFX, &l)) {
        expect_data(&l, PFX ".qweight", QD_DTYPE_I32, 2, (int64_t[]){4, 16}, GPTQ4_QWEIGHT, 64);
        expect_data(&l, PFX ".qzeros", QD_DTYPE_I32, 2, (int64_t[]){2, 2}, GPTQ4_QZEROS_V2, 4);
        expect_data(&l, PFX ".g_idx", QD_DTYPE_I32, 1, (int64_t[]){32}, g_idx, 32);
        /* and back: the permuted g_idx survives */
        qd_qlinear u;
        qd_error err = {0};
        qd_err rc = qd_format_gptq_v2.unpack(&p, PFX, qd_packed_list_lookup, &l, &u, &err);
        QD_CHECK_MSG(rc == QD_OK, "unpack: %s", qd_error_text(&err));
        if (rc == QD_OK) {
            QD_CHECK(u.g_idx != NULL && memcmp(u.g_idx, g_idx, sizeof g_idx) == 0);
            qd_qlinear_free(&u);
        }
    }
    qd_packed_list_free(&l);
    qd_qlinear_free(&q);
}

QD_TEST(gptq_8bit_words) {
    qd_qlinear q;
    QD_REQUIRE(make_layer(&q, 8, 16, 8, 8, code_b, NULL));
    qd_format_params p;
    qd_format_params_init(&p);
    p.bits = 8;
    p.group_size = 8;
    qd_packed_list l = {0};
    if (pack(&qd_format_gptq, &p, &q, "", &l)) {
        expect_data(&l, "qweight", QD_DTYPE_I32, 2, (int64_t[]){4, 8}, GPTQ8_QWEIGHT, 32);
        /* v1: zero 128 stored as 127 = 0x7f in every byte */
        static const uint32_t z[4] = {0x7f7f7f7f, 0x7f7f7f7f, 0x7f7f7f7f, 0x7f7f7f7f};
        expect_data(&l, "qzeros", QD_DTYPE_I32, 2, (int64_t[]){2, 2}, z, 4);
    }
    qd_packed_list_free(&l);
    qd_qlinear_free(&q);

    QD_REQUIRE(make_layer(&q, 8, 16, 8, 8, code_b, zero_b));
    p.symmetric = false;
    if (pack(&qd_format_gptq_v2, &p, &q, "", &l)) {
        expect_data(&l, "qweight", QD_DTYPE_I32, 2, (int64_t[]){4, 8}, GPTQ8_QWEIGHT, 32);
        expect_data(&l, "qzeros", QD_DTYPE_I32, 2, (int64_t[]){2, 2}, GPTQ8_QZEROS_V2, 4);
    }
    qd_packed_list_free(&l);
    qd_qlinear_free(&q);
}

QD_TEST(gptq_unpack_words) {
    /* v1 4-bit: qzeros 0x77777777 read back as 7 + 1 = 8 */
    qd_packed_list l = {0};
    static const uint32_t z7[4] = {0x77777777, 0x77777777, 0x77777777, 0x77777777};
    add_lit(&l, "x.qweight", QD_DTYPE_I32, 2, (int64_t[]){4, 16}, GPTQ4_QWEIGHT);
    add_lit(&l, "x.qzeros", QD_DTYPE_I32, 2, (int64_t[]){2, 2}, z7);
    add_lit(&l, "x.scales", QD_DTYPE_F16, 2, (int64_t[]){2, 16}, A_SCALES_F16);
    qd_format_params p;
    qd_format_params_init(&p);
    p.group_size = 16;
    qd_qlinear q;
    qd_error err = {0};
    qd_err rc = qd_format_gptq.unpack(&p, "x", qd_packed_list_lookup, &l, &q, &err);
    QD_CHECK_MSG(rc == QD_OK, "unpack: %s", qd_error_text(&err));
    if (rc == QD_OK) {
        expect_layer(&q, 16, 32, 16, 4, code_a, NULL);
        qd_qlinear_free(&q);
    }
    /* the same zeros read as v2 are 7, not 8 */
    rc = qd_format_gptq_v2.unpack(&p, "x", qd_packed_list_lookup, &l, &q, &err);
    QD_CHECK_MSG(rc == QD_OK, "unpack: %s", qd_error_text(&err));
    if (rc == QD_OK) {
        QD_CHECK(q.zeros[0] == 7.0f && q.zeros[31] == 7.0f);
        qd_qlinear_free(&q);
    }
    qd_packed_list_free(&l);

    /* v2 8-bit */
    add_lit(&l, "y.qweight", QD_DTYPE_I32, 2, (int64_t[]){4, 8}, GPTQ8_QWEIGHT);
    add_lit(&l, "y.qzeros", QD_DTYPE_I32, 2, (int64_t[]){2, 2}, GPTQ8_QZEROS_V2);
    uint16_t s8[16];
    for (int g = 0; g < 2; g++)
        for (int n = 0; n < 8; n++) s8[g * 8 + n] = qd_fp32_to_fp16(scale_a(n, g));
    add_lit(&l, "y.scales", QD_DTYPE_F16, 2, (int64_t[]){2, 8}, s8);
    p.bits = 8;
    p.group_size = 8;
    p.symmetric = false;
    rc = qd_format_gptq_v2.unpack(&p, "y", qd_packed_list_lookup, &l, &q, &err);
    QD_CHECK_MSG(rc == QD_OK, "unpack: %s", qd_error_text(&err));
    if (rc == QD_OK) {
        expect_layer(&q, 8, 16, 8, 8, code_b, zero_b);
        qd_qlinear_free(&q);
    }
    qd_packed_list_free(&l);
}

/* ---- compressed-tensors ---------------------------------------------------------------------- */

/* The two independently derived literals agree: weight_packed == GPTQ qweight transposed. */
QD_TEST(ctensors_literals_match_gptq_transposed) {
    for (int n = 0; n < 16; n++)
        for (int c = 0; c < 4; c++)
            QD_CHECK_EQ_INT(CT4_WEIGHT_PACKED_A[n * 4 + c], GPTQ4_QWEIGHT[c * 16 + n]);
}

QD_TEST(ctensors_pack_sym_words) {
    qd_qlinear q;
    QD_REQUIRE(make_layer(&q, 16, 32, 16, 4, code_a, NULL));
    qd_format_params p;
    qd_format_params_init(&p);
    p.group_size = 16;
    qd_packed_list l = {0};
    if (pack(&qd_format_ctensors, &p, &q, PFX, &l)) {
        const char *names[] = {PFX ".weight_packed", PFX ".weight_scale", PFX ".weight_shape"};
        expect_names(&l, names, 3);
        expect_data(&l, PFX ".weight_packed", QD_DTYPE_I32, 2, (int64_t[]){16, 4},
                    CT4_WEIGHT_PACKED_A, 64);
        expect_data(&l, PFX ".weight_scale", QD_DTYPE_F16, 2, (int64_t[]){16, 2},
                    A_SCALES_F16_NG, 32);
        static const int64_t shape[2] = {16, 32};
        expect_data(&l, PFX ".weight_shape", QD_DTYPE_I64, 1, (int64_t[]){2}, shape, 2);
    }
    qd_packed_list_free(&l);
    qd_qlinear_free(&q);
}

QD_TEST(ctensors_pack_asym_padded_words) {
    qd_qlinear q;
    QD_REQUIRE(make_layer(&q, 12, 20, 10, 4, code_a, zero_a));
    qd_format_params p;
    qd_format_params_init(&p);
    p.group_size = 10;
    p.symmetric = false;
    p.dtype = QD_DTYPE_BF16;
    qd_packed_list l = {0};
    if (pack(&qd_format_ctensors, &p, &q, PFX, &l)) {
        const char *names[] = {PFX ".weight_packed", PFX ".weight_scale",
                               PFX ".weight_zero_point", PFX ".weight_shape"};
        expect_names(&l, names, 4);
        expect_data(&l, PFX ".weight_packed", QD_DTYPE_I32, 2, (int64_t[]){12, 3},
                    CTC_WEIGHT_PACKED, 36);
        expect_data(&l, PFX ".weight_zero_point", QD_DTYPE_I32, 2, (int64_t[]){2, 2},
                    CTC_ZERO_POINT, 4);
        expect_data(&l, PFX ".weight_scale", QD_DTYPE_BF16, 2, (int64_t[]){12, 2},
                    CTC_SCALES_BF16, 24);
        static const int64_t shape[2] = {12, 20};
        expect_data(&l, PFX ".weight_shape", QD_DTYPE_I64, 1, (int64_t[]){2}, shape, 2);
    }
    qd_packed_list_free(&l);
    qd_qlinear_free(&q);
}

QD_TEST(ctensors_unpack_asym_padded_words) {
    qd_packed_list l = {0};
    static const int64_t shape[2] = {12, 20};
    add_lit(&l, "x.weight_packed", QD_DTYPE_I32, 2, (int64_t[]){12, 3}, CTC_WEIGHT_PACKED);
    add_lit(&l, "x.weight_zero_point", QD_DTYPE_I32, 2, (int64_t[]){2, 2}, CTC_ZERO_POINT);
    add_lit(&l, "x.weight_scale", QD_DTYPE_BF16, 2, (int64_t[]){12, 2}, CTC_SCALES_BF16);
    add_lit(&l, "x.weight_shape", QD_DTYPE_I64, 1, (int64_t[]){2}, shape);
    qd_format_params p;
    qd_format_params_init(&p);
    p.group_size = 10;
    p.symmetric = false;
    qd_qlinear q;
    qd_error err = {0};
    qd_err rc = qd_format_ctensors.unpack(&p, "x", qd_packed_list_lookup, &l, &q, &err);
    QD_CHECK_MSG(rc == QD_OK, "unpack: %s", qd_error_text(&err));
    if (rc == QD_OK) {
        expect_layer(&q, 12, 20, 10, 4, code_a, zero_a);
        qd_qlinear_free(&q);
    }
    qd_packed_list_free(&l);
}

QD_TEST(ctensors_pack_8bit_words) {
    qd_qlinear q;
    QD_REQUIRE(make_layer(&q, 8, 16, 8, 8, code_b, zero_b));
    qd_format_params p;
    qd_format_params_init(&p);
    p.bits = 8;
    p.group_size = 8;
    p.symmetric = false;
    qd_packed_list l = {0};
    if (pack(&qd_format_ctensors, &p, &q, "", &l)) {
        expect_data(&l, "weight_packed", QD_DTYPE_I32, 2, (int64_t[]){8, 4}, CT8_WEIGHT_PACKED,
                    32);
        expect_data(&l, "weight_zero_point", QD_DTYPE_I32, 2, (int64_t[]){2, 2},
                    CT8_ZERO_POINT, 4);
    }
    qd_packed_list_free(&l);
    qd_qlinear_free(&q);
}

/* actorder "group" stores weight_g_idx; actorder "weight" (static groups) does not. */
QD_TEST(ctensors_actorder_g_idx) {
    qd_qlinear q;
    QD_REQUIRE(make_layer(&q, 16, 32, 16, 4, code_a, NULL));
    qd_format_params p;
    qd_format_params_init(&p);
    p.group_size = 16;
    p.act_order = true;
    qd_packed_list l = {0};
    if (pack(&qd_format_ctensors, &p, &q, "", &l)) {
        int32_t g[32];
        for (int i = 0; i < 32; i++) g[i] = i / 16;
        expect_data(&l, "weight_g_idx", QD_DTYPE_I32, 1, (int64_t[]){32}, g, 32);
    }
    qd_packed_list_free(&l);
    p.static_groups = true;
    if (pack(&qd_format_ctensors, &p, &q, "", &l))
        QD_CHECK(qd_packed_list_find(&l, "weight_g_idx") == NULL);
    qd_packed_list_free(&l);
    qd_qlinear_free(&q);
}

QD_TEST(ctensors_int_quantized_words) {
    qd_qlinear q;
    QD_REQUIRE(make_layer(&q, 4, 8, 8, 8, code_b, NULL));
    q.act_scale = 0.5f;
    qd_format_params p;
    qd_format_params_init(&p);
    p.bits = 8;
    p.group_size = -1;
    p.act = QD_FORMAT_ACT_INT8_TENSOR;
    p.dtype = QD_DTYPE_BF16;
    qd_packed_list l = {0};
    if (pack(&qd_format_ctensors, &p, &q, "", &l)) {
        const char *names[] = {"weight", "weight_scale", "input_scale"};
        expect_names(&l, names, 3);
        expect_data(&l, "weight", QD_DTYPE_I8, 2, (int64_t[]){4, 8}, I8_WEIGHT, 32);
        /* scale (n+1)/8 in bf16: 0.125 = 0x3e00, 0.25 = 0x3e80, 0.375 = 0x3ec0, 0.5 = 0x3f00 */
        static const uint16_t s[4] = {0x3e00, 0x3e80, 0x3ec0, 0x3f00};
        expect_data(&l, "weight_scale", QD_DTYPE_BF16, 2, (int64_t[]){4, 1}, s, 4);
        static const uint16_t in[1] = {0x3f00};
        expect_data(&l, "input_scale", QD_DTYPE_BF16, 1, (int64_t[]){1}, in, 1);
    }
    qd_packed_list_free(&l);
    /* dynamic per-token activations: no input_scale */
    q.act_scale = 0.0f;
    p.act = QD_FORMAT_ACT_INT8_TOKEN;
    if (pack(&qd_format_ctensors, &p, &q, "", &l)) {
        QD_CHECK_EQ_INT(l.n, 2);
        QD_CHECK(qd_packed_list_find(&l, "input_scale") == NULL);
    }
    qd_packed_list_free(&l);
    qd_qlinear_free(&q);
}

QD_TEST(ctensors_float_quantized_words) {
    qd_qlinear q;
    qd_error err = {0};
    QD_REQUIRE(qd_qlinear_alloc(&q, 2, 4, QD_QTYPE_FP8_E4M3, 8, -1, QD_QRULE_SYM_MAX, &err) ==
               QD_OK);
    /* e4m3 bytes: 0x38 = 1.0, 0xb8 = -1.0, 0x7e = 448, 0x01 = 2^-9, ... */
    static const uint8_t codes[8] = {0x38, 0xb8, 0x7e, 0x01, 0x00, 0x80, 0x40, 0xc0};
    memcpy(q.codes, codes, 8);
    q.scales[0] = q.scales[1] = 0.25f;
    q.act_scale = 2.0f;
    qd_format_params p;
    qd_format_params_init(&p);
    p.type = QD_QTYPE_FP8_E4M3;
    p.bits = 8;
    p.group_size = 0;
    p.weight_per_tensor = true;
    p.act = QD_FORMAT_ACT_FP8_TENSOR;
    qd_packed_list l = {0};
    if (pack(&qd_format_ctensors, &p, &q, "", &l)) {
        expect_data(&l, "weight", QD_DTYPE_F8_E4M3, 2, (int64_t[]){2, 4}, codes, 8);
        static const uint16_t s[1] = {0x3400}; /* 0.25 in fp16 */
        expect_data(&l, "weight_scale", QD_DTYPE_F16, 1, (int64_t[]){1}, s, 1);
        static const uint16_t in[1] = {0x4000}; /* 2.0 */
        expect_data(&l, "input_scale", QD_DTYPE_F16, 1, (int64_t[]){1}, in, 1);
    }
    qd_packed_list_free(&l);
    /* per channel: [N, 1]; dynamic: no input_scale */
    q.scales[1] = 0.5f;
    q.act_scale = 0.0f;
    p.weight_per_tensor = false;
    p.act = QD_FORMAT_ACT_FP8_TOKEN;
    if (pack(&qd_format_ctensors, &p, &q, "", &l)) {
        static const uint16_t s[2] = {0x3400, 0x3800};
        expect_data(&l, "weight_scale", QD_DTYPE_F16, 2, (int64_t[]){2, 1}, s, 2);
        QD_CHECK(qd_packed_list_find(&l, "input_scale") == NULL);
    }
    qd_packed_list_free(&l);
    /* per tensor with two different row scales is refused */
    p.weight_per_tensor = true;
    QD_CHECK(qd_format_ctensors.pack(&p, &q, "", &l, &err) == QD_ERR_INVALID_ARG);
    QD_CHECK_EQ_INT(l.n, 0);
    qd_packed_list_free(&l);
    qd_qlinear_free(&q);
}

/* ---- ModelOpt -------------------------------------------------------------------------------- */

QD_TEST(modelopt_w4_words) {
    qd_qlinear q;
    QD_REQUIRE(make_layer(&q, 4, 16, 8, 4, code_a, NULL));
    q.pre_scale = malloc(16 * sizeof *q.pre_scale);
    for (int i = 0; i < 16; i++) q.pre_scale[i] = 1.0f + (float)i * 0.25f;
    qd_format_params p;
    qd_format_params_init(&p);
    p.group_size = 8;
    qd_packed_list l = {0};
    if (pack(&qd_format_modelopt, &p, &q, PFX, &l)) {
        const char *names[] = {PFX ".weight", PFX ".weight_scale", PFX ".pre_quant_scale"};
        expect_names(&l, names, 3);
        expect_data(&l, PFX ".weight", QD_DTYPE_U8, 2, (int64_t[]){2, 16}, MO_W4_WEIGHT, 32);
        const qd_packed_tensor *s = expect_tensor(&l, PFX ".weight_scale", QD_DTYPE_F32, 2,
                                                  (int64_t[]){4, 2});
        for (int i = 0; s && i < 8; i++)
            QD_CHECK(float_at(s, (size_t)i) == scale_a(i / 2, i % 2));
        /* pre_quant_scale in the model dtype (fp16): 1.0 = 0x3c00, 1.25 = 0x3d00, 4.75 = 0x44c0 */
        const qd_packed_tensor *ps = expect_tensor(&l, PFX ".pre_quant_scale", QD_DTYPE_F16, 1,
                                                   (int64_t[]){16});
        if (ps) {
            const uint16_t *h = ps->data;
            QD_CHECK_EQ_INT(h[0], 0x3c00);
            QD_CHECK_EQ_INT(h[1], 0x3d00);
            QD_CHECK_EQ_INT(h[15], 0x44c0);
        }
    }
    qd_packed_list_free(&l);

    /* W4A8: fp8 static activations add two 0-d fp32 scalars */
    q.act_scale = 0.125f;
    q.weight_scale_2 = 0.0625f;
    p.act = QD_FORMAT_ACT_FP8_TENSOR;
    if (pack(&qd_format_modelopt, &p, &q, PFX, &l)) {
        expect_data(&l, PFX ".weight", QD_DTYPE_U8, 2, (int64_t[]){2, 16}, MO_W4_WEIGHT, 32);
        const qd_packed_tensor *a = expect_tensor(&l, PFX ".input_scale", QD_DTYPE_F32, 0, NULL);
        const qd_packed_tensor *w2 = expect_tensor(&l, PFX ".weight_scale_2", QD_DTYPE_F32, 0,
                                                   NULL);
        if (a) QD_CHECK(float_at(a, 0) == 0.125f);
        if (w2) QD_CHECK(float_at(w2, 0) == 0.0625f);
        QD_CHECK_EQ_INT(l.n, 5);
    }
    qd_packed_list_free(&l);
    qd_qlinear_free(&q);
}

QD_TEST(modelopt_w4_unpack_words) {
    qd_packed_list l = {0};
    float s[8];
    for (int i = 0; i < 8; i++) s[i] = scale_a(i / 2, i % 2);
    add_lit(&l, "x.weight", QD_DTYPE_U8, 2, (int64_t[]){2, 16}, MO_W4_WEIGHT);
    add_lit(&l, "x.weight_scale", QD_DTYPE_F32, 2, (int64_t[]){4, 2}, s);
    qd_format_params p;
    qd_format_params_init(&p);
    p.group_size = 8;
    qd_qlinear q;
    qd_error err = {0};
    qd_err rc = qd_format_modelopt.unpack(&p, "x", qd_packed_list_lookup, &l, &q, &err);
    QD_CHECK_MSG(rc == QD_OK, "unpack: %s", qd_error_text(&err));
    if (rc == QD_OK) {
        expect_layer(&q, 4, 16, 8, 4, code_a, NULL);
        qd_qlinear_free(&q);
    }
    qd_packed_list_free(&l);
}

QD_TEST(modelopt_smoothquant_words) {
    qd_qlinear q;
    QD_REQUIRE(make_layer(&q, 4, 8, 8, 8, code_b, NULL));
    q.act_scale = 0.03125f;
    qd_format_params p;
    qd_format_params_init(&p);
    p.bits = 8;
    p.group_size = -1;
    p.act = QD_FORMAT_ACT_INT8_TENSOR;
    qd_packed_list l = {0};
    if (pack(&qd_format_modelopt, &p, &q, "", &l)) {
        const char *names[] = {"weight", "weight_scale", "input_scale"};
        expect_names(&l, names, 3);
        expect_data(&l, "weight", QD_DTYPE_I8, 2, (int64_t[]){4, 8}, I8_WEIGHT, 32);
        static const float s[4] = {0.125f, 0.25f, 0.375f, 0.5f};
        expect_data(&l, "weight_scale", QD_DTYPE_F32, 1, (int64_t[]){4}, s, 4);
        static const float in[1] = {0.03125f};
        expect_data(&l, "input_scale", QD_DTYPE_F32, 0, NULL, in, 1);
    }
    qd_packed_list_free(&l);
    qd_qlinear_free(&q);
}

/* ---- DashInfer ------------------------------------------------------------------------------- */

QD_TEST(dashinfer_words_are_gptq_v1) {
    qd_qlinear q;
    QD_REQUIRE(make_layer(&q, 16, 32, 16, 4, code_a, NULL));
    qd_format_params p;
    qd_format_params_init(&p);
    p.group_size = 16;
    qd_packed_list l = {0};
    if (pack(&qd_format_dashinfer, &p, &q, PFX, &l)) {
        expect_data(&l, PFX ".qweight", QD_DTYPE_I32, 2, (int64_t[]){4, 16}, GPTQ4_QWEIGHT, 64);
        static const uint32_t z[4] = {0x77777777, 0x77777777, 0x77777777, 0x77777777};
        expect_data(&l, PFX ".qzeros", QD_DTYPE_I32, 2, (int64_t[]){2, 2}, z, 4);
        expect_data(&l, PFX ".scales", QD_DTYPE_F16, 2, (int64_t[]){2, 16}, A_SCALES_F16, 32);
    }
    qd_packed_list_free(&l);
    qd_qlinear_free(&q);
}

/* ---- configs --------------------------------------------------------------------------------- */

static const char *const IGNORE[] = {"model.layers.0.mlp.down_proj", "lm_head"};

QD_TEST(config_awq) {
    qd_format_params p;
    qd_format_params_init(&p);
    p.symmetric = false;
    expect_config(&qd_format_awq, &p, 0,
                  "{\"quant_method\": \"awq\", \"zero_point\": true, \"group_size\": 128,"
                  " \"bits\": 4, \"version\": \"gemm\", \"modules_to_not_convert\": null}");
    p.ignore = IGNORE + 1;
    p.n_ignore = 1;
    p.group_size = -1;
    expect_config(&qd_format_awq, &p, 0,
                  "{\"quant_method\": \"awq\", \"zero_point\": true, \"group_size\": -1,"
                  " \"bits\": 4, \"version\": \"gemm\","
                  " \"modules_to_not_convert\": [\"lm_head\"]}");
}

QD_TEST(config_gptq) {
    qd_format_params p;
    qd_format_params_init(&p);
    static const char *v1 =
        "{\"bits\": 4, \"group_size\": 128, \"damp_percent\": 0.01, \"desc_act\": false,"
        " \"static_groups\": false, \"sym\": true, \"true_sequential\": true,"
        " \"model_name_or_path\": null, \"model_file_base_name\": null,"
        " \"quant_method\": \"gptq\", \"checkpoint_format\": \"gptq\"}";
    expect_config(&qd_format_gptq, &p, 0, v1);
    expect_config(&qd_format_gptq, &p, 1, v1); /* quantize_config.json: the same dict */
    p.bits = 8;
    p.group_size = 32;
    p.symmetric = false;
    p.act_order = true;
    p.damp_percent = 0.05;
    p.true_sequential = false;
    expect_config(&qd_format_gptq_v2, &p, 0,
                  "{\"bits\": 8, \"group_size\": 32, \"damp_percent\": 0.05, \"desc_act\": true,"
                  " \"static_groups\": false, \"sym\": false, \"true_sequential\": false,"
                  " \"model_name_or_path\": null, \"model_file_base_name\": null,"
                  " \"quant_method\": \"gptq\", \"checkpoint_format\": \"gptq_v2\"}");
}

QD_TEST(config_dashinfer) {
    qd_format_params p;
    qd_format_params_init(&p);
    p.act_order = true; /* with static groups: written as desc_act false */
    p.static_groups = true;
    expect_config(&qd_format_dashinfer, &p, 0,
                  "{\"bits\": 4, \"group_size\": 128, \"damp_percent\": 0.01,"
                  " \"desc_act\": false, \"static_groups\": false, \"sym\": true,"
                  " \"true_sequential\": true, \"model_name_or_path\": null,"
                  " \"model_file_base_name\": null, \"quant_method\": \"gptq\","
                  " \"checkpoint_format\": \"gptq\"}");
}

QD_TEST(config_ctensors_w4a16) {
    qd_format_params p;
    qd_format_params_init(&p);
    p.ignore = IGNORE + 1;
    p.n_ignore = 1;
    p.act_order = true;
    const char *want =
        "{\"config_groups\": {\"group_0\": {\"format\": \"pack-quantized\","
        "   \"input_activations\": null, \"output_activations\": null,"
        "   \"targets\": [\"Linear\"],"
        "   \"weights\": {\"actorder\": \"group\", \"block_structure\": null, \"dynamic\": false,"
        "     \"group_size\": 128, \"num_bits\": 4, \"observer\": \"minmax\","
        "     \"observer_kwargs\": {}, \"strategy\": \"group\", \"symmetric\": true,"
        "     \"type\": \"int\"}}},"
        " \"format\": \"pack-quantized\", \"global_compression_ratio\": null,"
        " \"ignore\": [\"lm_head\"], \"kv_cache_scheme\": null,"
        " \"quant_method\": \"compressed-tensors\", \"quantization_status\": \"compressed\","
        " \"sparsity_config\": {}, \"transform_config\": {}, \"version\": \"0.12.2\"}";
    expect_config(&qd_format_ctensors, &p, 0, want);
    json_t *got = NULL;
    qd_error err = {0};
    QD_CHECK_OK(qd_format_ctensors.quantization_config(&p, &got, &err), &err);
    expect_sorted_keys(got);
    json_decref(got);
}

QD_TEST(config_ctensors_w8a8) {
    qd_format_params p;
    qd_format_params_init(&p);
    p.bits = 8;
    p.group_size = -1;
    p.act = QD_FORMAT_ACT_INT8_TOKEN;
    expect_config(&qd_format_ctensors, &p, 0,
        "{\"config_groups\": {\"group_0\": {\"format\": \"int-quantized\","
        "   \"input_activations\": {\"actorder\": null, \"block_structure\": null,"
        "     \"dynamic\": true, \"group_size\": null, \"num_bits\": 8, \"observer\": null,"
        "     \"observer_kwargs\": {}, \"strategy\": \"token\", \"symmetric\": true,"
        "     \"type\": \"int\"},"
        "   \"output_activations\": null, \"targets\": [\"Linear\"],"
        "   \"weights\": {\"actorder\": null, \"block_structure\": null, \"dynamic\": false,"
        "     \"group_size\": null, \"num_bits\": 8, \"observer\": \"minmax\","
        "     \"observer_kwargs\": {}, \"strategy\": \"channel\", \"symmetric\": true,"
        "     \"type\": \"int\"}}},"
        " \"format\": \"int-quantized\", \"global_compression_ratio\": null, \"ignore\": [],"
        " \"kv_cache_scheme\": null, \"quant_method\": \"compressed-tensors\","
        " \"quantization_status\": \"compressed\", \"sparsity_config\": {},"
        " \"transform_config\": {}, \"version\": \"0.12.2\"}");
}

QD_TEST(config_ctensors_fp8) {
    qd_format_params p;
    qd_format_params_init(&p);
    p.type = QD_QTYPE_FP8_E4M3;
    p.bits = 8;
    p.group_size = 0;
    p.weight_per_tensor = true;
    p.act = QD_FORMAT_ACT_FP8_TENSOR;
    expect_config(&qd_format_ctensors, &p, 0,
        "{\"config_groups\": {\"group_0\": {\"format\": \"float-quantized\","
        "   \"input_activations\": {\"actorder\": null, \"block_structure\": null,"
        "     \"dynamic\": false, \"group_size\": null, \"num_bits\": 8,"
        "     \"observer\": \"minmax\", \"observer_kwargs\": {}, \"strategy\": \"tensor\","
        "     \"symmetric\": true, \"type\": \"float\"},"
        "   \"output_activations\": null, \"targets\": [\"Linear\"],"
        "   \"weights\": {\"actorder\": null, \"block_structure\": null, \"dynamic\": false,"
        "     \"group_size\": null, \"num_bits\": 8, \"observer\": \"minmax\","
        "     \"observer_kwargs\": {}, \"strategy\": \"tensor\", \"symmetric\": true,"
        "     \"type\": \"float\"}}},"
        " \"format\": \"float-quantized\", \"global_compression_ratio\": null, \"ignore\": [],"
        " \"kv_cache_scheme\": null, \"quant_method\": \"compressed-tensors\","
        " \"quantization_status\": \"compressed\", \"sparsity_config\": {},"
        " \"transform_config\": {}, \"version\": \"0.12.2\"}");
}

QD_TEST(config_modelopt) {
    qd_format_params p;
    qd_format_params_init(&p);
    p.ignore = IGNORE;
    p.n_ignore = 2;
    /* exclude_modules / ignore come out sorted */
    expect_config(&qd_format_modelopt, &p, 0,
                  "{\"ignore\": [\"lm_head\", \"model.layers.0.mlp.down_proj\"],"
                  " \"quant_algo\": \"W4A16_AWQ\","
                  " \"producer\": {\"name\": \"modelopt\", \"version\": \"0.40.0\"},"
                  " \"quant_method\": \"modelopt\"}");
    expect_config(&qd_format_modelopt, &p, 1,
                  "{\"producer\": {\"name\": \"modelopt\", \"version\": \"0.40.0\"},"
                  " \"quantization\": {\"quant_algo\": \"W4A16_AWQ\","
                  "   \"kv_cache_quant_algo\": null, \"group_size\": 128,"
                  "   \"has_zero_point\": false, \"pre_quant_scale\": true,"
                  "   \"exclude_modules\": [\"lm_head\", \"model.layers.0.mlp.down_proj\"]}}");
    p.act = QD_FORMAT_ACT_FP8_TENSOR;
    p.group_size = 64;
    expect_config(&qd_format_modelopt, &p, 1,
                  "{\"producer\": {\"name\": \"modelopt\", \"version\": \"0.40.0\"},"
                  " \"quantization\": {\"quant_algo\": \"W4A8_AWQ\","
                  "   \"kv_cache_quant_algo\": null, \"group_size\": 64,"
                  "   \"has_zero_point\": false, \"pre_quant_scale\": true,"
                  "   \"exclude_modules\": [\"lm_head\", \"model.layers.0.mlp.down_proj\"]}}");
    p.bits = 8;
    p.group_size = -1;
    p.act = QD_FORMAT_ACT_INT8_TENSOR;
    p.n_ignore = 0;
    expect_config(&qd_format_modelopt, &p, 1,
                  "{\"producer\": {\"name\": \"modelopt\", \"version\": \"0.40.0\"},"
                  " \"quantization\": {\"quant_algo\": \"W8A8_SQ_PER_CHANNEL\","
                  "   \"kv_cache_quant_algo\": null, \"exclude_modules\": []}}");
    expect_config(&qd_format_modelopt, &p, 0,
                  "{\"ignore\": [], \"quant_algo\": \"W8A8_SQ_PER_CHANNEL\","
                  " \"producer\": {\"name\": \"modelopt\", \"version\": \"0.40.0\"},"
                  " \"quant_method\": \"modelopt\"}");
}

QD_TEST(registry) {
    int n;
    const qd_format *const *all = qd_format_all(&n);
    QD_CHECK_EQ_INT(n, 6);
    for (int i = 0; i < n; i++) QD_CHECK(qd_format_find(all[i]->name) == all[i]);
    QD_CHECK(qd_format_find("gptq") == &qd_format_gptq);
    QD_CHECK(qd_format_find("compressed-tensors") == &qd_format_ctensors);
    QD_CHECK(qd_format_find("nope") == NULL);
    QD_CHECK_EQ_STR(qd_format_modelopt.side_config_name, "hf_quant_config.json");
    QD_CHECK_EQ_STR(qd_format_dashinfer.quant_method, "gptq");
}

QD_TEST_MAIN()
