/*
 * test-formats-roundtrip.c - pack -> unpack of random layers through every format, the
 * engines' dequantization computed straight from the packed tensors, and the refusals
 * (check / pack / unpack) with their reasons.
 *
 * Round trip: for each format and a grid of specs (4 and 8 bits where the format has them,
 * several group sizes, per channel, with and without act-order, symmetric and asymmetric),
 * a random layer (fixed seed) whose scales are already rounded to the format's scale dtype
 * (the qlinear.h contract) must come back with identical codes, zeros, groups of every
 * column, scales, bias and extras, and qd_qlinear_dequant of both must agree bit for bit.
 * Independently of unpack, the test also dequantizes from the packed words with each engine's
 * formula (written here from docs/formats.md) and compares with the original's dequant.
 * One test takes the packed tensors through a real safetensors file, read back from a buffer
 * shifted by one byte so that every view the unpackers get is misaligned.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dtype.h"
#include "formats/format.h"
#include "fsutil.h"
#include "qlinear.h"
#include "safetensors.h"
#include "test.h"

/* ---- deterministic random numbers ------------------------------------------------------------ */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint32_t rnd(void) {
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    rng_state = x;
    return (uint32_t)(x >> 32);
}

static int rnd_int(int lo, int hi) { /* [lo, hi] */
    return lo + (int)(rnd() % (uint32_t)(hi - lo + 1));
}

static float rnd_float(float lo, float hi) {
    return lo + (hi - lo) * (float)(rnd() >> 8) / 16777216.0f;
}

/* v as the dtype stores it. */
static float round_to(qd_dtype dt, float v) {
    if (dt == QD_DTYPE_F16) return qd_fp16_to_fp32(qd_fp32_to_fp16(v));
    if (dt == QD_DTYPE_BF16) return qd_bf16_to_fp32(qd_fp32_to_bf16(v));
    return v;
}

/* ---- random layers --------------------------------------------------------------------------- */

typedef struct layer_opts {
    qd_dtype scale_dt; /* what the format stores weight scales in */
    qd_dtype extra_dt; /* bias / pre_scale / act_scale dtype */
    int zero_lo;       /* smallest zero the format stores */
    bool bias, pre_scale, ws2;
} layer_opts;

/* A random [n, k] layer for spec p: act-order g_idx from a random permutation (as GPTQ's
 * perm // G), scales and extras pre-rounded to the format's dtypes. */
static int rand_layer(qd_qlinear *q, const qd_format_params *p, int n, int k,
                      const layer_opts *o) {
    qd_error err = {0};
    qd_qrule rule = p->symmetric ? QD_QRULE_SYM_HALF : QD_QRULE_ASYM_ZERO_IN_RANGE;
    int g = p->group_size > 0 && p->group_size < k ? p->group_size : k;
    if (qd_qlinear_alloc(q, n, k, p->type, p->bits, g, rule, &err) != QD_OK) {
        fprintf(stderr, "alloc: %s\n", qd_error_text(&err));
        return 0;
    }
    size_t nk = (size_t)n * (size_t)k, np = (size_t)n * (size_t)q->n_groups;
    int qmax = (1 << p->bits) - 1;
    for (size_t i = 0; i < nk; i++) {
        if (p->type == QD_QTYPE_INT) {
            q->codes[i] = (uint8_t)rnd_int(0, qmax);
        } else {
            uint8_t c;
            do c = (uint8_t)rnd(); while ((c & 0x7F) == 0x7F); /* no NaN codes */
            q->codes[i] = c;
        }
    }
    float tensor_scale = round_to(o->scale_dt, rnd_float(0.001f, 0.1f));
    for (size_t i = 0; i < np; i++) {
        q->scales[i] = p->weight_per_tensor ? tensor_scale
                                            : round_to(o->scale_dt, rnd_float(0.001f, 0.1f));
        if (q->zeros)
            q->zeros[i] = p->symmetric ? (float)(1 << (p->bits - 1))
                                       : (float)rnd_int(o->zero_lo, qmax);
    }
    if (p->act_order && !p->static_groups && q->n_groups > 1) {
        int *perm = malloc((size_t)k * sizeof *perm);
        for (int i = 0; i < k; i++) perm[i] = i;
        for (int i = k - 1; i > 0; i--) {
            int j = rnd_int(0, i), t = perm[i];
            perm[i] = perm[j];
            perm[j] = t;
        }
        q->g_idx = malloc((size_t)k * sizeof *q->g_idx);
        for (int i = 0; i < k; i++) q->g_idx[perm[i]] = i / g;
        free(perm);
    }
    if (o->bias) {
        q->bias = malloc((size_t)n * sizeof *q->bias);
        for (int i = 0; i < n; i++) q->bias[i] = round_to(o->extra_dt, rnd_float(-1.0f, 1.0f));
    }
    if (o->pre_scale) {
        q->pre_scale = malloc((size_t)k * sizeof *q->pre_scale);
        for (int i = 0; i < k; i++)
            q->pre_scale[i] = round_to(o->extra_dt, rnd_float(0.5f, 2.0f));
    }
    if (p->act == QD_FORMAT_ACT_INT8_TENSOR || p->act == QD_FORMAT_ACT_FP8_TENSOR)
        q->act_scale = round_to(o->extra_dt, rnd_float(0.01f, 1.0f));
    if (o->ws2) q->weight_scale_2 = rnd_float(0.001f, 0.01f);
    return 1;
}

/* ---- comparisons ----------------------------------------------------------------------------- */

static int same_floats(const float *a, const float *b, size_t n) {
    if (!a || !b) return a == b;
    return memcmp(a, b, n * sizeof *a) == 0;
}

/* Unpacked u equals original q (groups compared per column, so an act-order g_idx that is
 * column / G comes back as NULL and still matches). */
static void expect_same(const char *what, const qd_qlinear *q, const qd_qlinear *u) {
    QD_CHECK_MSG(u->n == q->n && u->k == q->k && u->type == q->type && u->bits == q->bits &&
                     u->n_groups == q->n_groups,
                 "%s: shape/type differs: [%d, %d] %d-bit %d groups vs [%d, %d] %d-bit %d", what,
                 u->n, u->k, u->bits, u->n_groups, q->n, q->k, q->bits, q->n_groups);
    if (u->n != q->n || u->k != q->k || u->n_groups != q->n_groups) return;
    size_t nk = (size_t)q->n * (size_t)q->k, np = (size_t)q->n * (size_t)q->n_groups;
    QD_CHECK_MSG(memcmp(u->codes, q->codes, nk) == 0, "%s: codes differ", what);
    QD_CHECK_MSG(same_floats(u->scales, q->scales, np), "%s: scales differ", what);
    QD_CHECK_MSG(same_floats(u->zeros, q->zeros, np), "%s: zeros differ", what);
    int groups_ok = 1;
    for (int c = 0; c < q->k; c++)
        if (qd_qlinear_group(u, c) != qd_qlinear_group(q, c)) groups_ok = 0;
    QD_CHECK_MSG(groups_ok, "%s: column groups (g_idx) differ", what);
    QD_CHECK_MSG(same_floats(u->bias, q->bias, (size_t)q->n), "%s: bias differs", what);
    QD_CHECK_MSG(same_floats(u->pre_scale, q->pre_scale, (size_t)q->k), "%s: pre_scale differs",
                 what);
    QD_CHECK_MSG(u->act_scale == q->act_scale, "%s: act_scale %g vs %g", what,
                 (double)u->act_scale, (double)q->act_scale);
    QD_CHECK_MSG(u->weight_scale_2 == q->weight_scale_2, "%s: weight_scale_2 differs", what);

    float *wq = malloc(nk * sizeof *wq), *wu = malloc(nk * sizeof *wu);
    qd_qlinear_dequant(q, wq);
    qd_qlinear_dequant(u, wu);
    QD_CHECK_MSG(memcmp(wq, wu, nk * sizeof *wq) == 0, "%s: dequantized weights differ", what);
    free(wq);
    free(wu);
}

/* ---- engine-side dequantization from the packed tensors (docs/formats.md) -------------------- */

static const qd_packed_tensor *get(const qd_packed_list *l, const char *name) {
    const qd_packed_tensor *t = qd_packed_list_find(l, name);
    QD_CHECK_MSG(t != NULL, "tensor '%s' missing", name);
    return t;
}

static uint32_t u32_at(const qd_packed_tensor *t, size_t i) {
    uint32_t v;
    memcpy(&v, (const char *)t->data + 4 * i, 4);
    return v;
}

static float flt_at(const qd_packed_tensor *t, size_t i) {
    if (t->dtype == QD_DTYPE_F32) {
        float f;
        memcpy(&f, (const char *)t->data + 4 * i, 4);
        return f;
    }
    uint16_t h;
    memcpy(&h, (const char *)t->data + 2 * i, 2);
    return t->dtype == QD_DTYPE_F16 ? qd_fp16_to_fp32(h) : qd_bf16_to_fp32(h);
}

/* The b-bit field number f (0-based from the low bits) of word w. */
static int field(uint32_t w, int f, int b) {
    return (int)((w / (1u << (f * b))) % (1u << b));
}

/*
 * W [n, k] as the engine reading format `name` computes it (in fp32), from the packed list
 * alone. Returns 0 when the format has no formula here.
 */
static int engine_dequant(const char *name, const qd_format_params *p, const qd_packed_list *l,
                          int n, int k, float *w) {
    int b = p->bits, pf = 32 / b;
    int g = p->group_size > 0 && p->group_size < k ? p->group_size : k;
    if (!strcmp(name, "awq")) {
        /* channel c of word j sits in nibble [0,4,1,5,2,6,3,7][c % 8] */
        static const int rev[8] = {0, 4, 1, 5, 2, 6, 3, 7};
        const qd_packed_tensor *qw = get(l, "qweight"), *qz = get(l, "qzeros"),
                               *s = get(l, "scales");
        if (!qw || !qz || !s) return 0;
        for (int r = 0; r < n; r++)
            for (int c = 0; c < k; c++) {
                int gi = c / g;
                int q = field(u32_at(qw, (size_t)c * (size_t)(n / 8) + (size_t)(r / 8)),
                              rev[r % 8], 4);
                int z = field(u32_at(qz, (size_t)gi * (size_t)(n / 8) + (size_t)(r / 8)),
                              rev[r % 8], 4);
                w[(size_t)r * (size_t)k + (size_t)c] =
                    (float)(q - z) * flt_at(s, (size_t)gi * (size_t)n + (size_t)r);
            }
        return 1;
    }
    if (!strcmp(name, "gptq") || !strcmp(name, "gptq_v2") || !strcmp(name, "dashinfer")) {
        int off = strcmp(name, "gptq_v2") ? 1 : 0; /* vLLM: zero_offset = v2 ? 0 : 1 */
        const qd_packed_tensor *qw = get(l, "qweight"), *qz = get(l, "qzeros"),
                               *s = get(l, "scales"), *gx = get(l, "g_idx");
        if (!qw || !qz || !s || !gx) return 0;
        for (int r = 0; r < n; r++)
            for (int c = 0; c < k; c++) {
                int gi = (int)u32_at(gx, (size_t)c);
                int q = field(u32_at(qw, (size_t)(c / pf) * (size_t)n + (size_t)r), c % pf, b);
                int z = field(u32_at(qz, (size_t)gi * (size_t)(n / pf) + (size_t)(r / pf)),
                              r % pf, b) + off;
                w[(size_t)r * (size_t)k + (size_t)c] =
                    (float)(q - z) * flt_at(s, (size_t)gi * (size_t)n + (size_t)r);
            }
        return 1;
    }
    if (!strcmp(name, "compressed-tensors") && p->type == QD_QTYPE_INT &&
        p->act == QD_FORMAT_ACT_NONE) {
        int wc = (k + pf - 1) / pf, ng = (k + g - 1) / g;
        const qd_packed_tensor *wp = get(l, "weight_packed"), *s = get(l, "weight_scale");
        const qd_packed_tensor *zp = p->symmetric ? NULL : get(l, "weight_zero_point");
        const qd_packed_tensor *gx = qd_packed_list_find(l, "weight_g_idx");
        if (!wp || !s || (!p->symmetric && !zp)) return 0;
        for (int r = 0; r < n; r++)
            for (int c = 0; c < k; c++) {
                int gi = gx ? (int)u32_at(gx, (size_t)c) : c / g;
                /* signed value = field - 2^(b-1); zero likewise (0 when symmetric) */
                int q = field(u32_at(wp, (size_t)r * (size_t)wc + (size_t)(c / pf)), c % pf, b) -
                        (1 << (b - 1));
                int z = zp ? field(u32_at(zp, (size_t)(r / pf) * (size_t)ng + (size_t)gi),
                                   r % pf, b) - (1 << (b - 1))
                           : 0;
                w[(size_t)r * (size_t)k + (size_t)c] =
                    (float)(q - z) * flt_at(s, (size_t)r * (size_t)ng + (size_t)gi);
            }
        return 1;
    }
    if (!strcmp(name, "modelopt") && b == 4) {
        const qd_packed_tensor *wt = get(l, "weight"), *s = get(l, "weight_scale");
        if (!wt || !s) return 0;
        const int8_t *bytes = wt->data;
        int ng = k / g;
        for (int r = 0; r < n; r++)
            for (int c = 0; c < k; c++) {
                uint8_t byte = (uint8_t)bytes[(size_t)(r / 2) * (size_t)k + (size_t)c];
                int nib = r % 2 ? byte >> 4 : byte & 15;
                int q = nib < 8 ? nib : nib - 16; /* int4 two's complement */
                w[(size_t)r * (size_t)k + (size_t)c] =
                    (float)q * flt_at(s, (size_t)r * (size_t)ng + (size_t)(c / g));
            }
        return 1;
    }
    if ((!strcmp(name, "modelopt") && b == 8) ||
        (!strcmp(name, "compressed-tensors") && p->type == QD_QTYPE_INT)) {
        const qd_packed_tensor *wt = get(l, "weight"), *s = get(l, "weight_scale");
        if (!wt || !s) return 0;
        const int8_t *v = wt->data;
        for (int r = 0; r < n; r++)
            for (int c = 0; c < k; c++)
                w[(size_t)r * (size_t)k + (size_t)c] =
                    (float)v[(size_t)r * (size_t)k + (size_t)c] * flt_at(s, (size_t)r);
        return 1;
    }
    if (!strcmp(name, "compressed-tensors") && p->type == QD_QTYPE_FP8_E4M3) {
        const qd_packed_tensor *wt = get(l, "weight"), *s = get(l, "weight_scale");
        if (!wt || !s) return 0;
        const uint8_t *v = wt->data;
        for (int r = 0; r < n; r++)
            for (int c = 0; c < k; c++)
                w[(size_t)r * (size_t)k + (size_t)c] =
                    qd_e4m3_to_fp32(v[(size_t)r * (size_t)k + (size_t)c]) *
                    flt_at(s, p->weight_per_tensor ? 0 : (size_t)r);
        return 1;
    }
    return 0;
}

/* ---- the round trip -------------------------------------------------------------------------- */

static int n_roundtrips;

static void roundtrip(const qd_format *f, const qd_format_params *p, int n, int k,
                      const layer_opts *o) {
    char what[160];
    snprintf(what, sizeof what, "%s %s%d-bit G=%d %s%s act=%d dt=%s", f->name,
             p->type == QD_QTYPE_INT ? "int" : "fp", p->bits, p->group_size,
             p->symmetric ? "sym" : "asym",
             p->act_order ? (p->static_groups ? " act-order(static)" : " act-order") : "",
             (int)p->act, qd_dtype_name(p->dtype));
    qd_error err = {0};
    qd_err rc = f->check(p, n, k, &err);
    QD_CHECK_MSG(rc == QD_OK, "%s: check refused: %s", what, qd_error_text(&err));
    if (rc) return;
    qd_qlinear q, u;
    QD_REQUIRE(rand_layer(&q, p, n, k, o));
    qd_packed_list l = {0};
    rc = f->pack(p, &q, "", &l, &err);
    QD_CHECK_MSG(rc == QD_OK, "%s: pack: %s", what, qd_error_text(&err));
    if (rc == QD_OK) {
        rc = f->unpack(p, "", qd_packed_list_lookup, &l, &u, &err);
        QD_CHECK_MSG(rc == QD_OK, "%s: unpack: %s", what, qd_error_text(&err));
        if (rc == QD_OK) {
            expect_same(what, &q, &u);
            qd_qlinear_free(&u);
        }
        size_t nk = (size_t)n * (size_t)k;
        float *we = malloc(nk * sizeof *we), *wq = malloc(nk * sizeof *wq);
        if (engine_dequant(f->name, p, &l, n, k, we)) {
            qd_qlinear_dequant(&q, wq);
            size_t bad = 0;
            for (size_t i = 0; i < nk; i++) bad += we[i] != wq[i];
            QD_CHECK_MSG(bad == 0, "%s: engine dequant differs at %zu of %zu weights", what, bad,
                         nk);
        } else {
            QD_FAIL_("%s: no engine formula in the test", what);
        }
        free(we);
        free(wq);
        n_roundtrips++;
    }
    qd_packed_list_free(&l);
    qd_qlinear_free(&q);
}

#define N_ 64
#define K_ 256

static const int GROUPS[] = {32, 64, 128, -1};

/* act-order modes: 0 none, 1 act-order with g_idx, 2 act-order with static groups */
static void set_act_order(qd_format_params *p, int mode) {
    p->act_order = mode != 0;
    p->static_groups = mode == 2;
}

QD_TEST(roundtrip_awq) {
    layer_opts o = {QD_DTYPE_F16, QD_DTYPE_F16, 0, true, false, false};
    for (int gi = 0; gi < 4; gi++) {
        qd_format_params p;
        qd_format_params_init(&p);
        p.symmetric = false;
        p.group_size = GROUPS[gi];
        for (int ao = 0; ao <= 2; ao += 2) { /* AWQ has no g_idx: static groups only */
            set_act_order(&p, ao);
            roundtrip(&qd_format_awq, &p, N_, K_, &o);
        }
    }
}

QD_TEST(roundtrip_gptq) {
    static const int bits[] = {4, 8, 2};
    for (int bi = 0; bi < 3; bi++)
        for (int gi = 0; gi < 4; gi++)
            for (int ao = 0; ao < 3; ao++)
                for (int v2 = 0; v2 < 2; v2++)
                    for (int sym = 0; sym < 2; sym++) {
                        if (!v2 && !sym) continue; /* v1 is symmetric only */
                        qd_format_params p;
                        qd_format_params_init(&p);
                        p.bits = bits[bi];
                        p.group_size = GROUPS[gi];
                        p.symmetric = sym;
                        set_act_order(&p, ao);
                        layer_opts o = {QD_DTYPE_F16, QD_DTYPE_F16, 0, ao == 1, false, false};
                        roundtrip(v2 ? &qd_format_gptq_v2 : &qd_format_gptq, &p, N_, K_, &o);
                    }
    /* a group size that does not divide K: ceil(K / G) groups, the last one short */
    qd_format_params p;
    qd_format_params_init(&p);
    p.group_size = 96;
    layer_opts o = {QD_DTYPE_F16, QD_DTYPE_F16, 0, false, false, false};
    roundtrip(&qd_format_gptq, &p, N_, K_, &o);
}

QD_TEST(roundtrip_ctensors_pack) {
    static const qd_dtype dts[] = {QD_DTYPE_F16, QD_DTYPE_BF16, QD_DTYPE_F32};
    for (int bi = 0; bi < 2; bi++)
        for (int gi = 0; gi < 4; gi++)
            for (int ao = 0; ao < 3; ao++)
                for (int sym = 0; sym < 2; sym++) {
                    qd_format_params p;
                    qd_format_params_init(&p);
                    p.bits = bi ? 8 : 4;
                    p.group_size = GROUPS[gi];
                    p.symmetric = sym;
                    p.dtype = dts[(bi + gi + ao) % 3];
                    set_act_order(&p, ao);
                    layer_opts o = {p.dtype, p.dtype, 0, sym == 0, false, false};
                    roundtrip(&qd_format_ctensors, &p, N_, K_, &o);
                }
    /* N and K that need padding in weight_packed and weight_zero_point */
    qd_format_params p;
    qd_format_params_init(&p);
    p.group_size = 20;
    p.symmetric = false;
    layer_opts o = {QD_DTYPE_F16, QD_DTYPE_F16, 0, false, false, false};
    roundtrip(&qd_format_ctensors, &p, 20, 100, &o);
}

QD_TEST(roundtrip_ctensors_w8a8) {
    for (int dyn = 0; dyn < 2; dyn++) {
        qd_format_params p;
        qd_format_params_init(&p);
        p.bits = 8;
        p.group_size = -1;
        p.dtype = QD_DTYPE_BF16;
        p.act = dyn ? QD_FORMAT_ACT_INT8_TOKEN : QD_FORMAT_ACT_INT8_TENSOR;
        layer_opts o = {QD_DTYPE_BF16, QD_DTYPE_BF16, 0, true, false, false};
        roundtrip(&qd_format_ctensors, &p, N_, K_, &o);
        /* fp8 weights + fp8 activations, per tensor and per channel */
        p.type = QD_QTYPE_FP8_E4M3;
        p.act = dyn ? QD_FORMAT_ACT_FP8_TOKEN : QD_FORMAT_ACT_FP8_TENSOR;
        for (int pt = 0; pt < 2; pt++) {
            p.weight_per_tensor = pt;
            roundtrip(&qd_format_ctensors, &p, N_, K_, &o);
        }
    }
}

QD_TEST(roundtrip_modelopt) {
    for (int gi = 0; gi < 2; gi++)
        for (int a8 = 0; a8 < 2; a8++)
            for (int pre = 0; pre < 2; pre++) {
                qd_format_params p;
                qd_format_params_init(&p);
                p.group_size = gi ? 128 : 64;
                p.act = a8 ? QD_FORMAT_ACT_FP8_TENSOR : QD_FORMAT_ACT_NONE;
                p.dtype = pre ? QD_DTYPE_BF16 : QD_DTYPE_F16;
                layer_opts o = {QD_DTYPE_F32, p.dtype, 0, pre == 1, pre == 1, a8 == 1};
                roundtrip(&qd_format_modelopt, &p, N_, K_, &o);
            }
    qd_format_params p;
    qd_format_params_init(&p);
    p.bits = 8;
    p.group_size = -1;
    p.act = QD_FORMAT_ACT_INT8_TENSOR;
    layer_opts o = {QD_DTYPE_F32, QD_DTYPE_F16, 0, true, true, false};
    roundtrip(&qd_format_modelopt, &p, N_, K_, &o);
}

QD_TEST(roundtrip_dashinfer) {
    static const int groups[] = {32, 64, 128, -1};
    for (int gi = 0; gi < 4; gi++)
        for (int ao = 0; ao <= 2; ao += 2) {
            qd_format_params p;
            qd_format_params_init(&p);
            p.group_size = groups[gi];
            set_act_order(&p, ao);
            layer_opts o = {QD_DTYPE_F16, QD_DTYPE_F16, 0, gi == 0, false, false};
            roundtrip(&qd_format_dashinfer, &p, N_, K_, &o);
        }
}

/* Runs last (tests run in registration order): every grid above did its work. */
QD_TEST(roundtrip_count) {
    /* awq 8 + gptq 3*4*3*3 + 1 = 109 + ct 48 + 1 + w8a8 6 + modelopt 9 + dashinfer 8 */
    QD_CHECK_EQ_INT(n_roundtrips, 8 + 109 + 49 + 6 + 9 + 8);
}

/* ---- refusals -------------------------------------------------------------------------------- */

/* f->check(p, n, k) fails with code and a message containing needle. */
static void expect_refusal(const qd_format *f, const qd_format_params *p, int n, int k,
                           qd_err code, const char *needle) {
    qd_error err = {0};
    qd_err rc = f->check(p, n, k, &err);
    QD_CHECK_MSG(rc == code, "%s check: got %s (%s), expected %s", f->name, qd_err_name(rc),
                 qd_error_text(&err), qd_err_name(code));
    QD_CHECK_MSG(strstr(qd_error_text(&err), needle) != NULL, "%s: message '%s' lacks '%s'",
                 f->name, qd_error_text(&err), needle);
}

QD_TEST(check_refusals) {
    qd_format_params p;
    qd_format_params_init(&p); /* int4 sym G128 weight-only */
    expect_refusal(&qd_format_awq, &p, 0, 0, QD_ERR_UNSUPPORTED, "zero points");
    p.symmetric = false;
    QD_CHECK_EQ_INT(qd_format_awq.check(&p, 0, 0, NULL), QD_OK);
    expect_refusal(&qd_format_awq, &p, 12, 256, QD_ERR_UNSUPPORTED, "multiple of 8");
    expect_refusal(&qd_format_awq, &p, 16, 200, QD_ERR_UNSUPPORTED, "group_size 128");
    p.act_order = true;
    expect_refusal(&qd_format_awq, &p, 0, 0, QD_ERR_UNSUPPORTED, "g_idx");
    p.act_order = false;
    p.bits = 8;
    expect_refusal(&qd_format_awq, &p, 0, 0, QD_ERR_UNSUPPORTED, "4-bit");

    /* GPTQ v1 cannot hold asymmetric zeros: the answer is gptq_v2 */
    p.bits = 4;
    expect_refusal(&qd_format_gptq, &p, 0, 0, QD_ERR_UNSUPPORTED, "gptq_v2");
    QD_CHECK_EQ_INT(qd_format_gptq_v2.check(&p, 0, 0, NULL), QD_OK);
    p.bits = 3;
    expect_refusal(&qd_format_gptq_v2, &p, 0, 0, QD_ERR_UNSUPPORTED, "3-bit");
    p.bits = 9;
    expect_refusal(&qd_format_gptq_v2, &p, 0, 0, QD_ERR_INVALID_ARG, "2..8");
    p.bits = 4;
    expect_refusal(&qd_format_gptq_v2, &p, 20, 256, QD_ERR_UNSUPPORTED, "out_features 20");
    expect_refusal(&qd_format_gptq_v2, &p, 16, 20, QD_ERR_UNSUPPORTED, "in_features 20");
    p.act = QD_FORMAT_ACT_INT8_TOKEN;
    expect_refusal(&qd_format_gptq_v2, &p, 0, 0, QD_ERR_UNSUPPORTED, "weight-only");

    /* compressed-tensors */
    qd_format_params_init(&p);
    p.bits = 2;
    expect_refusal(&qd_format_ctensors, &p, 0, 0, QD_ERR_UNSUPPORTED, "4 or 8 bits");
    p.bits = 8;
    p.act = QD_FORMAT_ACT_INT8_TOKEN;
    expect_refusal(&qd_format_ctensors, &p, 0, 0, QD_ERR_UNSUPPORTED, "per output channel");
    p.group_size = -1;
    p.symmetric = false;
    expect_refusal(&qd_format_ctensors, &p, 0, 0, QD_ERR_UNSUPPORTED, "symmetric");
    p.symmetric = true;
    p.act = QD_FORMAT_ACT_FP8_TENSOR;
    expect_refusal(&qd_format_ctensors, &p, 0, 0, QD_ERR_UNSUPPORTED, "fp8 activations");
    p.type = QD_QTYPE_FP8_E4M3;
    p.symmetric = false;
    expect_refusal(&qd_format_ctensors, &p, 0, 0, QD_ERR_UNSUPPORTED, "fp8 weights are symmetric");
    p.symmetric = true;
    p.act = QD_FORMAT_ACT_NONE;
    expect_refusal(&qd_format_ctensors, &p, 0, 0, QD_ERR_UNSUPPORTED, "weight-only");
    qd_format_params_init(&p);
    p.symmetric = false;
    expect_refusal(&qd_format_ctensors, &p, 64, 200, QD_ERR_UNSUPPORTED, "rounds down");

    /* ModelOpt */
    qd_format_params_init(&p);
    p.group_size = 32;
    expect_refusal(&qd_format_modelopt, &p, 0, 0, QD_ERR_UNSUPPORTED, "64 and 128");
    p.group_size = 128;
    p.symmetric = false;
    expect_refusal(&qd_format_modelopt, &p, 0, 0, QD_ERR_UNSUPPORTED, "symmetric");
    p.symmetric = true;
    p.act = QD_FORMAT_ACT_INT8_TOKEN;
    expect_refusal(&qd_format_modelopt, &p, 0, 0, QD_ERR_UNSUPPORTED, "W4A8_AWQ");
    p.act = QD_FORMAT_ACT_NONE;
    expect_refusal(&qd_format_modelopt, &p, 15, 256, QD_ERR_UNSUPPORTED, "odd");
    p.group_size = -1;
    expect_refusal(&qd_format_modelopt, &p, 0, 0, QD_ERR_UNSUPPORTED, "block");
    p.bits = 8;
    expect_refusal(&qd_format_modelopt, &p, 0, 0, QD_ERR_UNSUPPORTED, "SmoothQuant");

    /* DashInfer */
    qd_format_params_init(&p);
    p.bits = 8;
    expect_refusal(&qd_format_dashinfer, &p, 0, 0, QD_ERR_UNSUPPORTED, "4-bit");
    p.bits = 4;
    p.act_order = true;
    expect_refusal(&qd_format_dashinfer, &p, 0, 0, QD_ERR_UNSUPPORTED, "desc_act");
    p.static_groups = true;
    QD_CHECK_EQ_INT(qd_format_dashinfer.check(&p, 0, 0, NULL), QD_OK);
    p.group_size = 16;
    expect_refusal(&qd_format_dashinfer, &p, 0, 0, QD_ERR_UNSUPPORTED, "group_size 16");
    p.group_size = 128;
    p.symmetric = false;
    expect_refusal(&qd_format_dashinfer, &p, 0, 0, QD_ERR_UNSUPPORTED, "underflows");

    /* malformed specs */
    qd_format_params_init(&p);
    p.dtype = QD_DTYPE_I32;
    expect_refusal(&qd_format_ctensors, &p, 0, 0, QD_ERR_INVALID_ARG, "model dtype");
    qd_format_params_init(&p);
    p.n_ignore = 1;
    expect_refusal(&qd_format_awq, &p, 0, 0, QD_ERR_INVALID_ARG, "ignore");
}

/* f->pack fails with code and needle, leaving the list as it was. */
static void expect_pack_refusal(const qd_format *f, const qd_format_params *p,
                                const qd_qlinear *q, qd_err code, const char *needle) {
    qd_packed_list l = {0};
    qd_error err = {0};
    qd_err rc = f->pack(p, q, "model.layers.3.mlp.down_proj", &l, &err);
    QD_CHECK_MSG(rc == code, "%s pack: got %s (%s), expected %s", f->name, qd_err_name(rc),
                 qd_error_text(&err), qd_err_name(code));
    QD_CHECK_MSG(strstr(qd_error_text(&err), needle) != NULL, "%s: message '%s' lacks '%s'",
                 f->name, qd_error_text(&err), needle);
    QD_CHECK_EQ_INT(l.n, 0);
    qd_packed_list_free(&l);
}

QD_TEST(pack_refusals) {
    qd_format_params p;
    qd_format_params_init(&p);
    p.group_size = 32;
    p.symmetric = false;
    layer_opts o = {QD_DTYPE_F16, QD_DTYPE_F16, 0, false, false, false};
    qd_qlinear q;
    QD_REQUIRE(rand_layer(&q, &p, 16, 64, &o));

    /* DashInfer-style float zero: only InstantQuant keeps those */
    float z0 = q.zeros[3];
    q.zeros[3] = 7.25f;
    expect_pack_refusal(&qd_format_awq, &p, &q, QD_ERR_INVALID_ARG, "not an integer");
    expect_pack_refusal(&qd_format_gptq_v2, &p, &q, QD_ERR_INVALID_ARG, "not an integer");
    q.zeros[3] = z0;

    /* code beyond 4 bits */
    uint8_t c0 = q.codes[5];
    q.codes[5] = 16;
    expect_pack_refusal(&qd_format_awq, &p, &q, QD_ERR_INVALID_ARG, "exceeds 4-bit");
    q.codes[5] = c0;

    /* a pre_scale AWQ has no tensor for */
    q.pre_scale = calloc(64, sizeof *q.pre_scale);
    expect_pack_refusal(&qd_format_awq, &p, &q, QD_ERR_INVALID_ARG, "fold it");
    free(q.pre_scale);
    q.pre_scale = NULL;

    /* act-order g_idx where the format (AWQ) or the spec (no act-order) has none */
    q.g_idx = malloc(64 * sizeof *q.g_idx);
    for (int c = 0; c < 64; c++) q.g_idx[c] = (c + 1) % 2;
    expect_pack_refusal(&qd_format_awq, &p, &q, QD_ERR_INVALID_ARG, "no g_idx tensor");
    expect_pack_refusal(&qd_format_gptq_v2, &p, &q, QD_ERR_INVALID_ARG, "no act-order");
    free(q.g_idx);
    q.g_idx = NULL;

    /* spec and layer disagree */
    p.group_size = 16;
    expect_pack_refusal(&qd_format_awq, &p, &q, QD_ERR_INVALID_ARG, "group_size");
    p.group_size = 32;

    /* symmetric formats need zero 2^(b-1) everywhere */
    qd_format_params s = p;
    s.symmetric = true;
    expect_pack_refusal(&qd_format_gptq, &s, &q, QD_ERR_INVALID_ARG, "symmetric");
    expect_pack_refusal(&qd_format_ctensors, &s, &q, QD_ERR_INVALID_ARG, "symmetric");

    /* static activations need act_scale; dynamic ones must not carry one */
    qd_qlinear_free(&q);
    qd_format_params_init(&p);
    p.bits = 8;
    p.group_size = -1;
    p.act = QD_FORMAT_ACT_INT8_TENSOR;
    QD_REQUIRE(rand_layer(&q, &p, 8, 32, &o));
    q.act_scale = 0.0f;
    expect_pack_refusal(&qd_format_ctensors, &p, &q, QD_ERR_INVALID_ARG, "act_scale");
    expect_pack_refusal(&qd_format_modelopt, &p, &q, QD_ERR_INVALID_ARG, "act_scale");
    p.act = QD_FORMAT_ACT_INT8_TOKEN;
    q.act_scale = 0.5f;
    expect_pack_refusal(&qd_format_ctensors, &p, &q, QD_ERR_INVALID_ARG, "act_scale");
    qd_qlinear_free(&q);

    /* W4A8 needs weight_scale_2 */
    qd_format_params_init(&p);
    p.act = QD_FORMAT_ACT_FP8_TENSOR;
    QD_REQUIRE(rand_layer(&q, &p, 8, 256, &o));
    expect_pack_refusal(&qd_format_modelopt, &p, &q, QD_ERR_INVALID_ARG, "weight_scale_2");
    qd_qlinear_free(&q);

    /* a failure after some tensors were appended leaves an existing list as it was */
    qd_format_params_init(&p);
    p.group_size = 32;
    QD_REQUIRE(rand_layer(&q, &p, 16, 64, &o));
    qd_packed_list l = {0};
    qd_error err = {0};
    QD_CHECK_OK(qd_format_gptq.pack(&p, &q, "a", &l, &err), &err);
    int n0 = l.n;
    q.scales[7] = 1e6f; /* overflows fp16 only when the scales are written */
    QD_CHECK_EQ_INT(qd_format_gptq.pack(&p, &q, "b", &l, &err), QD_ERR_INVALID_ARG);
    QD_CHECK(strstr(qd_error_text(&err), "overflows fp16") != NULL);
    QD_CHECK_EQ_INT(l.n, n0);
    QD_CHECK(qd_packed_list_find(&l, "b.qweight") == NULL);
    /* and a duplicate name is refused */
    q.scales[7] = 0.01f;
    qd_error_clear(&err);
    QD_CHECK_EQ_INT(qd_format_gptq.pack(&p, &q, "a", &l, &err), QD_ERR_INVALID_ARG);
    QD_CHECK_EQ_INT(l.n, n0);
    qd_packed_list_free(&l);
    qd_qlinear_free(&q);
}

/* ---- hostile tensors on unpack --------------------------------------------------------------- */

/* Pack a GPTQ v2 layer into l, then let the caller damage it. */
static int packed_gptq(qd_packed_list *l, qd_format_params *p) {
    qd_format_params_init(p);
    p->group_size = 32;
    p->symmetric = false;
    p->act_order = true;
    layer_opts o = {QD_DTYPE_F16, QD_DTYPE_F16, 0, false, false, false};
    qd_qlinear q;
    if (!rand_layer(&q, p, 16, 64, &o)) return 0;
    qd_error err = {0};
    qd_err rc = qd_format_gptq_v2.pack(p, &q, "x", l, &err);
    qd_qlinear_free(&q);
    return rc == QD_OK;
}

static void expect_unpack_refusal(const qd_format *f, const qd_format_params *p,
                                  qd_packed_list *l, qd_err code, const char *needle) {
    qd_qlinear q;
    memset(&q, 0xA5, sizeof q); /* must stay untouched */
    qd_error err = {0};
    qd_err rc = f->unpack(p, "x", qd_packed_list_lookup, l, &q, &err);
    QD_CHECK_MSG(rc == code, "%s unpack: got %s (%s), expected %s", f->name, qd_err_name(rc),
                 qd_error_text(&err), qd_err_name(code));
    QD_CHECK_MSG(strstr(qd_error_text(&err), needle) != NULL, "%s: message '%s' lacks '%s'",
                 f->name, qd_error_text(&err), needle);
    QD_CHECK(q.n == (int)0xA5A5A5A5);
    if (rc == QD_OK) qd_qlinear_free(&q);
}

QD_TEST(unpack_refusals) {
    qd_format_params p;
    qd_packed_list l = {0};
    QD_REQUIRE(packed_gptq(&l, &p));
    qd_packed_tensor *qz = (qd_packed_tensor *)qd_packed_list_find(&l, "x.qzeros");
    qd_packed_tensor *gx = (qd_packed_tensor *)qd_packed_list_find(&l, "x.g_idx");
    QD_REQUIRE(qz && gx);

    qz->dtype = QD_DTYPE_F32;
    expect_unpack_refusal(&qd_format_gptq_v2, &p, &l, QD_ERR_FORMAT, "expected I32");
    qz->dtype = QD_DTYPE_I32;
    qz->shape[0] = 1; /* claims 1 group where 2 are needed */
    expect_unpack_refusal(&qd_format_gptq_v2, &p, &l, QD_ERR_FORMAT, "x.qzeros' has shape [1, 2]");
    qz->shape[0] = 2;
    int32_t *g = gx->data;
    int32_t g0 = g[9];
    g[9] = 2; /* only groups 0 and 1 exist */
    expect_unpack_refusal(&qd_format_gptq_v2, &p, &l, QD_ERR_FORMAT, "outside 0..1");
    g[9] = -1;
    expect_unpack_refusal(&qd_format_gptq_v2, &p, &l, QD_ERR_FORMAT, "outside 0..1");
    g[9] = g0;
    /* DashInfer reads the same tensors but not a permuted g_idx */
    qd_format_params d;
    qd_format_params_init(&d);
    d.group_size = 32;
    expect_unpack_refusal(&qd_format_dashinfer, &d, &l, QD_ERR_FORMAT, "g_idx");
    /* act-order needs g_idx */
    snprintf(gx->name, sizeof gx->name, "x.g_idx_gone");
    expect_unpack_refusal(&qd_format_gptq_v2, &p, &l, QD_ERR_NOT_FOUND, "'x.g_idx' is missing");
    qd_packed_list_free(&l);

    /* an absent layer; and a spec the format cannot hold is refused before any lookup */
    qd_format_params a;
    qd_format_params_init(&a);
    a.symmetric = false;
    expect_unpack_refusal(&qd_format_awq, &a, &l, QD_ERR_NOT_FOUND, "'x.qweight' is missing");
    a.symmetric = true;
    expect_unpack_refusal(&qd_format_awq, &a, &l, QD_ERR_UNSUPPORTED, "zero points");

    /* compressed-tensors: weight_shape that disagrees with weight_packed */
    qd_format_params c;
    qd_format_params_init(&c);
    c.group_size = 32;
    layer_opts o = {QD_DTYPE_F16, QD_DTYPE_F16, 0, false, false, false};
    qd_qlinear q;
    QD_REQUIRE(rand_layer(&q, &c, 16, 64, &o));
    qd_error err = {0};
    QD_CHECK_OK(qd_format_ctensors.pack(&c, &q, "x", &l, &err), &err);
    qd_qlinear_free(&q);
    qd_packed_tensor *ws = (qd_packed_tensor *)qd_packed_list_find(&l, "x.weight_shape");
    QD_REQUIRE(ws);
    int64_t *shape = ws->data;
    shape[1] = 72;
    expect_unpack_refusal(&qd_format_ctensors, &c, &l, QD_ERR_FORMAT, "weight_packed");
    shape[1] = -5;
    expect_unpack_refusal(&qd_format_ctensors, &c, &l, QD_ERR_FORMAT, "outside 1..");
    shape[1] = 64;
    /* a spec whose group size does not match the stored scales */
    c.group_size = 16;
    expect_unpack_refusal(&qd_format_ctensors, &c, &l, QD_ERR_FORMAT, "weight_scale");
    qd_packed_list_free(&l);
}

/* v1 readers add 1 to every zero field: a field of all ones (what AutoGPTQ's z - 1 = -1
 * leaves behind) reads as 16, the value vLLM and DashInfer compute with. */
QD_TEST(gptq_v1_all_ones_zero_reads_16) {
    qd_format_params p;
    qd_format_params_init(&p);
    p.group_size = 32;
    layer_opts o = {QD_DTYPE_F16, QD_DTYPE_F16, 0, false, false, false};
    qd_qlinear q, u;
    QD_REQUIRE(rand_layer(&q, &p, 8, 64, &o));
    qd_packed_list l = {0};
    qd_error err = {0};
    QD_CHECK_OK(qd_format_gptq.pack(&p, &q, "", &l, &err), &err);
    qd_packed_tensor *qz = (qd_packed_tensor *)qd_packed_list_find(&l, "qzeros");
    QD_REQUIRE(qz);
    ((uint32_t *)qz->data)[0] = 0xFFFFFFF7u; /* channel 0: 7 -> 8; channels 1..7: 0xF -> 16 */
    QD_CHECK_OK(qd_format_gptq.unpack(&p, "", qd_packed_list_lookup, &l, &u, &err), &err);
    if (err.code == QD_OK) {
        QD_CHECK(u.zeros[0] == 8.0f);          /* row 0, group 0 */
        QD_CHECK(u.zeros[1 * 2 + 0] == 16.0f); /* row 1, group 0 */
        QD_CHECK(u.zeros[7 * 2 + 0] == 16.0f);
        QD_CHECK(u.zeros[7 * 2 + 1] == 8.0f);
        qd_qlinear_free(&u);
    }
    qd_packed_list_free(&l);
    qd_qlinear_free(&q);
}

/* ---- through a safetensors file -------------------------------------------------------------- */

static bool st_lookup(void *ctx, const char *name, qd_tensor *ret_view) {
    const qd_st_entry *e = qd_st_find((const qd_st_file *)ctx, name);
    if (!e) return false;
    *ret_view = qd_st_entry_view(e);
    return true;
}

QD_TEST(roundtrip_through_safetensors_misaligned) {
    char dir[256], path[300];
    const char *base = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/qd-fmt-XXXXXX", base && *base ? base : "/tmp");
    QD_REQUIRE(mkdtemp(dir) != NULL);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);

    /* a GPTQ act-order layer and a ModelOpt W4A8 layer (0-d scalars) in one file */
    qd_format_params pg, pm;
    qd_format_params_init(&pg);
    pg.group_size = 32;
    pg.symmetric = false;
    pg.act_order = true;
    qd_format_params_init(&pm);
    pm.act = QD_FORMAT_ACT_FP8_TENSOR;
    layer_opts og = {QD_DTYPE_F16, QD_DTYPE_F16, 0, true, false, false};
    layer_opts om = {QD_DTYPE_F32, QD_DTYPE_F16, 0, true, true, true};
    qd_qlinear qg, qm, u;
    QD_REQUIRE(rand_layer(&qg, &pg, 32, 128, &og));
    QD_REQUIRE(rand_layer(&qm, &pm, 32, 256, &om));
    qd_packed_list l = {0};
    qd_error err = {0};
    QD_CHECK_OK(qd_format_gptq_v2.pack(&pg, &qg, "model.layers.0.self_attn.q_proj", &l, &err),
                &err);
    QD_CHECK_OK(qd_format_modelopt.pack(&pm, &qm, "model.layers.0.mlp.down_proj", &l, &err),
                &err);
    qd_st_writer *w = qd_st_writer_new();
    QD_REQUIRE(w != NULL);
    for (int i = 0; i < l.n; i++)
        QD_CHECK_OK(qd_st_writer_add(w, l.items[i].name, l.items[i].dtype, l.items[i].ndim,
                                     l.items[i].shape, l.items[i].data, &err),
                    &err);
    QD_CHECK_OK(qd_st_write_file(w, path, &err), &err);
    qd_st_writer_free(w);
    qd_packed_list_free(&l);

    char *buf = NULL;
    size_t len = 0;
    QD_CHECK_OK(qd_read_file(path, (size_t)1 << 30, &buf, &len, &err), &err);
    char *shifted = malloc(len + 1);
    qd_st_file *f = NULL;
    if (buf && shifted) {
        memcpy(shifted + 1, buf, len);
        QD_CHECK_OK(qd_st_open_mem(shifted + 1, len, "shifted", &f, &err), &err);
    }
    if (f) {
        QD_CHECK_OK(qd_format_gptq_v2.unpack(&pg, "model.layers.0.self_attn.q_proj", st_lookup,
                                             f, &u, &err),
                    &err);
        if (err.code == QD_OK) {
            expect_same("gptq_v2 via safetensors", &qg, &u);
            qd_qlinear_free(&u);
        }
        QD_CHECK_OK(qd_format_modelopt.unpack(&pm, "model.layers.0.mlp.down_proj", st_lookup,
                                              f, &u, &err),
                    &err);
        if (err.code == QD_OK) {
            expect_same("modelopt W4A8 via safetensors", &qm, &u);
            qd_qlinear_free(&u);
        }
        qd_st_close(f);
    }
    free(shifted);
    free(buf);
    qd_qlinear_free(&qg);
    qd_qlinear_free(&qm);
    qd_error_clear(&err);
    QD_CHECK_OK(qd_remove_tree(dir, &err), &err);
}

QD_TEST_MAIN()
