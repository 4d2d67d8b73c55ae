/*
 * test-gptq.c - GPTQ (quantizers/gptq.c) against an independent textbook implementation, and
 * its properties: block-size invariance, lower output error than RTN on correlated inputs,
 * act-order / static-group bookkeeping, dead columns, damping, argument errors.
 *
 * The textbook version below is the unblocked OBQ form of GPTQ in double precision: it keeps
 * the full inverse Hessian and, after quantizing column j, eliminates j from it
 * (Hinv -= Hinv[:, j] Hinv[j, :] / Hinv[j][j]). It shares nothing with gptq.c but the
 * per-group quantization rule (kernels/quant.h), so agreement checks the Cholesky-factor
 * shortcut, the lazy block updates, the permutation and the group bookkeeping at once.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gptq.h"
#include "qlinear.h"
#include "quant.h"
#include "test.h"

/* ---- deterministic data ---- */

static uint64_t rng_state;

static uint64_t rng_next(void) {
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double rng_unit(void) { /* (0, 1) */
    return ((double)(rng_next() >> 11) + 0.5) / 9007199254740992.0;
}

static double rng_gauss(void) {
    double u = rng_unit(), v = rng_unit();
    return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}

/* x [t, k] = z [t, k] a [k, k], z and a Gaussian (a scaled by 1/sqrt(k)): strongly correlated
 * channels; then the channels in `loud` (n_loud of them) are multiplied by 8. */
static float *make_inputs(int t, int k, const int *loud, int n_loud) {
    double *a = malloc((size_t)k * k * sizeof *a);
    double *z = malloc((size_t)k * sizeof *z);
    float *x = malloc((size_t)t * k * sizeof *x);
    for (int i = 0; i < k * k; i++) a[i] = rng_gauss() / sqrt((double)k);
    for (int r = 0; r < t; r++) {
        for (int i = 0; i < k; i++) z[i] = rng_gauss();
        for (int c = 0; c < k; c++) {
            double s = 0;
            for (int i = 0; i < k; i++) s += z[i] * a[i * k + c];
            x[r * k + c] = (float)s;
        }
        for (int i = 0; i < n_loud; i++) x[r * k + loud[i]] *= 8.0f;
    }
    free(a);
    free(z);
    return x;
}

static float *make_weights(int n, int k) {
    float *w = malloc((size_t)n * k * sizeof *w);
    for (int i = 0; i < n * k; i++) w[i] = (float)(0.05 * rng_gauss());
    w[3] = 0.4f; /* an outlier or two, as real layers have */
    w[n * k / 2 + 1] = -0.3f;
    return w;
}

static void hessian_from(qd_gptq_hessian *hs, const float *x, int t, int k) {
    qd_error err = {0};
    QD_CHECK_OK(qd_gptq_hessian_init(hs, k, &err), &err);
    /* two batches, so the running update is exercised */
    int t1 = t / 3;
    QD_CHECK_OK(qd_gptq_hessian_add(hs, x, t1, 1, &err), &err);
    QD_CHECK_OK(qd_gptq_hessian_add(hs, x + (size_t)t1 * k, t - t1, 2, &err), &err);
}

/* ---- the quantization rule (the one definition GPTQ and RTN share) ---- */

static void rule_params(const float *v, int len, int bits, qd_qrule rule, qd_dtype sd,
                        float *s, float *z) {
    qd_qparams qp = qd_quant_params(rule, bits, qd_qstats_of(v, len, 1), sd);
    *s = qp.scale;
    *z = qp.zero;
}

static int rule_code(float w, float s, float z, int bits, qd_qrule rule) {
    qd_qparams qp = {s, z};
    return qd_quant_code(rule, bits, qp, w);
}

static float rule_dequant(int code, float s, float z) {
    qd_qparams qp = {s, z};
    return qd_quant_dequant(qp, code);
}

/* ---- textbook GPTQ (unblocked, double) ---- */

struct tb_opts {
    int bits, g; /* g <= 0: per channel */
    qd_qrule rule;
    qd_dtype sd;
    double damp;
    bool act_order, static_groups;
    bool stale; /* group parameters from W before any update (what B >= k gives) */
};

/* codes [n, k], dq [n, k] (original column order), *loss. */
static void textbook(const float *w, int n, int k, const float *h, const struct tb_opts *o,
                     uint8_t *codes, float *dq, double *loss) {
    int g = o->g > 0 ? o->g : k, ng = k / g;
    double *hd = malloc((size_t)k * k * sizeof *hd);
    double *hinv = calloc((size_t)k * k, sizeof *hinv);
    double *wd = malloc((size_t)n * k * sizeof *wd);
    float *w0 = malloc((size_t)n * k * sizeof *w0); /* permuted, dead-zeroed, before updates */
    float *s = malloc((size_t)n * ng * sizeof *s), *z = malloc((size_t)n * ng * sizeof *z);
    int *perm = malloc((size_t)k * sizeof *perm);
    bool *dead = calloc((size_t)k, sizeof *dead), *used = calloc((size_t)k, sizeof *used);
    float *seg = malloc((size_t)k * sizeof *seg);

    for (int j = 0; j < k; j++) dead[j] = h[j * k + j] == 0.0f;
    if (o->g <= 0) /* per channel: from W as given */
        for (int r = 0; r < n; r++)
            rule_params(w + r * k, k, o->bits, o->rule, o->sd, &s[r], &z[r]);
    if (o->g > 0 && o->static_groups)
        for (int r = 0; r < n; r++)
            for (int gi = 0; gi < ng; gi++) {
                for (int i = 0; i < g; i++)
                    seg[i] = dead[gi * g + i] ? 0.0f : w[r * k + gi * g + i];
                rule_params(seg, g, o->bits, o->rule, o->sd, &s[r * ng + gi], &z[r * ng + gi]);
            }
    /* selection sort on the diagonal: largest first, lowest column on ties */
    for (int j = 0; j < k; j++) {
        int best = -1;
        for (int c = 0; c < k; c++) {
            if (used[c]) continue;
            double dc = dead[c] ? 1.0 : h[c * k + c];
            double db = best < 0 ? 0 : dead[best] ? 1.0 : h[best * k + best];
            if (best < 0 || (o->act_order && dc > db)) best = c;
        }
        used[best] = true;
        perm[j] = best;
    }
    for (int a = 0; a < k; a++)
        for (int b = 0; b < k; b++) hd[a * k + b] = h[perm[a] * k + perm[b]];
    double mean = 0;
    for (int a = 0; a < k; a++) {
        if (hd[a * k + a] == 0) hd[a * k + a] = 1;
        mean += hd[a * k + a] / k;
    }
    for (int a = 0; a < k; a++) hd[a * k + a] += o->damp * mean;
    for (int r = 0; r < n; r++)
        for (int j = 0; j < k; j++) {
            int c = perm[j];
            w0[r * k + j] = dead[c] ? 0.0f : w[r * k + c];
            wd[r * k + j] = w0[r * k + j];
        }
    /* inverse by Gauss-Jordan (H is positive definite, no pivoting needed) */
    for (int a = 0; a < k; a++) hinv[a * k + a] = 1;
    for (int p = 0; p < k; p++) {
        double piv = hd[p * k + p];
        for (int c = 0; c < k; c++) {
            hd[p * k + c] /= piv;
            hinv[p * k + c] /= piv;
        }
        for (int r = 0; r < k; r++) {
            if (r == p) continue;
            double f = hd[r * k + p];
            for (int c = 0; c < k; c++) {
                hd[r * k + c] -= f * hd[p * k + c];
                hinv[r * k + c] -= f * hinv[p * k + c];
            }
        }
    }
    *loss = 0;
    for (int j = 0; j < k; j++) {
        for (int r = 0; r < n; r++) {
            int gi = o->g <= 0 ? 0 : o->static_groups ? perm[j] / g : j / g;
            float *sr = s + r * ng, *zr = z + r * ng;
            if (o->g > 0 && !o->static_groups && j % g == 0) {
                for (int i = 0; i < g; i++)
                    seg[i] = o->stale ? w0[r * k + j + i] : (float)wd[r * k + j + i];
                rule_params(seg, g, o->bits, o->rule, o->sd, &sr[gi], &zr[gi]);
            }
            float x = (float)wd[r * k + j];
            int code = rule_code(x, sr[gi], zr[gi], o->bits, o->rule);
            float q = rule_dequant(code, sr[gi], zr[gi]);
            double d = hinv[j * k + j];
            double e = ((double)x - q) / d;
            *loss += ((double)x - q) * ((double)x - q) / d / 2;
            for (int c = j + 1; c < k; c++) wd[r * k + c] -= e * hinv[j * k + c];
            codes[r * k + perm[j]] = (uint8_t)code;
            dq[r * k + perm[j]] = q;
        }
        /* remove column j from the inverse (OBS elimination) */
        double d = hinv[j * k + j];
        for (int a = j + 1; a < k; a++)
            for (int b = j + 1; b < k; b++)
                hinv[a * k + b] -= hinv[a * k + j] * hinv[j * k + b] / d;
    }
    free(hd);
    free(hinv);
    free(wd);
    free(w0);
    free(s);
    free(z);
    free(perm);
    free(dead);
    free(used);
    free(seg);
}

/* ---- RTN with the same rule, and error measures ---- */

static void rtn(const float *w, int n, int k, int bits, int g, qd_qrule rule, qd_dtype sd,
                uint8_t *codes, float *dq) {
    if (g <= 0) g = k;
    for (int r = 0; r < n; r++)
        for (int c0 = 0; c0 < k; c0 += g) {
            float s, z;
            rule_params(w + r * k + c0, g, bits, rule, sd, &s, &z);
            for (int c = c0; c < c0 + g; c++) {
                int code = rule_code(w[r * k + c], s, z, bits, rule);
                if (codes) codes[r * k + c] = (uint8_t)code;
                dq[r * k + c] = rule_dequant(code, s, z);
            }
        }
}

/* sum over tokens and outputs of (x (w - q)^T)^2 */
static double output_error(const float *x, int t, const float *w, const float *q, int n,
                           int k) {
    double total = 0;
    for (int r = 0; r < n; r++) {
        for (int i = 0; i < t; i++) {
            double s = 0;
            for (int c = 0; c < k; c++)
                s += (double)x[i * k + c] * ((double)w[r * k + c] - q[r * k + c]);
            total += s * s;
        }
    }
    return total;
}

static int count_equal(const uint8_t *a, const uint8_t *b, int len) {
    int eq = 0;
    for (int i = 0; i < len; i++) eq += a[i] == b[i];
    return eq;
}

static qd_gptq_params params(int bits, int g, qd_qrule rule) {
    qd_gptq_params p;
    qd_gptq_params_init(&p);
    p.bits = bits;
    p.group_size = g;
    p.rule = rule;
    p.scale_dtype = QD_DTYPE_F32;
    return p;
}

/* ---- tests ---- */

/* (1) tiny layers: same codes as the textbook algorithm, for every bookkeeping variant */
QD_TEST(matches_textbook) {
    rng_state = 1;
    const int n = 4, k = 8, t = 64;
    int loud[1] = {5};
    float *x = make_inputs(t, k, loud, 1);
    float *w = make_weights(n, k);
    qd_gptq_hessian hs;
    hessian_from(&hs, x, t, k);

    struct {
        int bits, g;
        qd_qrule rule;
        bool act, stat;
        int block;
    } cases[] = {
        {4, -1, QD_QRULE_SYM_HALF, false, false, 128},
        {3, -1, QD_QRULE_ASYM_ZERO_IN_RANGE, false, false, 128},
        {4, -1, QD_QRULE_ASYM_ZERO_IN_RANGE, true, false, 128},
        {3, 4, QD_QRULE_SYM_HALF, false, false, 1},   /* fresh group parameters */
        {3, 4, QD_QRULE_SYM_HALF, false, false, 128}, /* stale: measured before updates */
        {4, 2, QD_QRULE_ASYM_ZERO_IN_RANGE, true, false, 1},
        {4, 2, QD_QRULE_ASYM_ZERO_IN_RANGE, true, true, 3},
        {2, 4, QD_QRULE_SYM_HALF, true, true, 128},
    };
    int n_differ_from_rtn = 0;
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        qd_gptq_params p = params(cases[ci].bits, cases[ci].g, cases[ci].rule);
        p.act_order = cases[ci].act;
        p.static_groups = cases[ci].stat;
        p.block_size = cases[ci].block;
        qd_qlinear q;
        float dq[32];
        qd_gptq_stats st;
        qd_error err = {0};
        QD_CHECK_OK(qd_gptq_quantize(w, n, k, &hs, &p, &q, dq, &st, &err), &err);
        struct tb_opts o = {cases[ci].bits, cases[ci].g, cases[ci].rule, QD_DTYPE_F32,
                            p.damp_percent, cases[ci].act, cases[ci].stat,
                            cases[ci].block >= k};
        uint8_t tb_codes[32], rtn_codes[32];
        float tb_dq[32], rtn_dq[32];
        double tb_loss;
        textbook(w, n, k, hs.h, &o, tb_codes, tb_dq, &tb_loss);
        rtn(w, n, k, cases[ci].bits, cases[ci].g, cases[ci].rule, QD_DTYPE_F32, rtn_codes,
            rtn_dq);
        n_differ_from_rtn += count_equal(tb_codes, rtn_codes, n * k) < n * k;
        QD_CHECK_MSG(memcmp(q.codes, tb_codes, sizeof tb_codes) == 0,
                     "case %zu: codes differ from the textbook algorithm", ci);
        for (int i = 0; i < n * k; i++)
            QD_CHECK_MSG(fabsf(dq[i] - tb_dq[i]) <= 1e-5f * (1 + fabsf(tb_dq[i])),
                         "case %zu: dequant[%d] %g vs textbook %g", ci, i, dq[i], tb_dq[i]);
        QD_CHECK_MSG(fabs(st.loss - tb_loss) <= 1e-3 * tb_loss + 1e-9,
                     "case %zu: loss %g vs textbook %g", ci, st.loss, tb_loss);
        qd_qlinear_free(&q);
    }
    /* the comparison means something only if GPTQ is not RTN on these inputs */
    QD_CHECK(n_differ_from_rtn >= 6);
    qd_gptq_hessian_done(&hs);
    free(x);
    free(w);
}

/* (2) the lazy block updates are exact: the block size changes only float rounding, as long
 * as every group starts at a block boundary (per channel, or G a multiple of every B) */
QD_TEST(block_size_invariance) {
    rng_state = 2;
    const int n = 32, k = 256, t = 384;
    int loud[3] = {7, 100, 201};
    float *x = make_inputs(t, k, loud, 3);
    float *w = make_weights(n, k);
    qd_gptq_hessian hs;
    hessian_from(&hs, x, t, k);
    int groups[2] = {-1, 128};
    for (int gi = 0; gi < 2; gi++) {
        int blocks[4] = {128, 4, 1, 32};
        uint8_t *ref_codes = NULL;
        float *ref_dq = malloc((size_t)n * k * sizeof *ref_dq);
        float *dq = malloc((size_t)n * k * sizeof *dq);
        double ref_err = 0;
        for (int bi = 0; bi < 4; bi++) {
            qd_gptq_params p = params(4, groups[gi], QD_QRULE_ASYM_ZERO_IN_RANGE);
            p.block_size = blocks[bi];
            p.act_order = gi == 1;
            qd_qlinear q;
            qd_error err = {0};
            QD_CHECK_OK(qd_gptq_quantize(w, n, k, &hs, &p, &q, bi ? dq : ref_dq, NULL, &err),
                        &err);
            if (bi == 0) {
                ref_codes = q.codes;
                q.codes = NULL;
                ref_err = output_error(x, t, w, ref_dq, n, k);
            } else {
                int eq = count_equal(ref_codes, q.codes, n * k);
                QD_CHECK_MSG(eq * 1000 >= n * k * 999, "G %d block %d: %d of %d codes equal",
                             groups[gi], blocks[bi], eq, n * k);
                double e2 = output_error(x, t, w, dq, n, k);
                QD_CHECK_MSG(fabs(e2 - ref_err) <= 0.01 * ref_err,
                             "G %d block %d: output error %g vs %g", groups[gi], blocks[bi],
                             e2, ref_err);
            }
            qd_qlinear_free(&q);
        }
        free(ref_codes);
        free(ref_dq);
        free(dq);
    }
    qd_gptq_hessian_done(&hs);
    free(x);
    free(w);
}

/* (3) what GPTQ is for: on correlated inputs its output error is well below RTN's */
QD_TEST(beats_rtn_on_correlated_inputs) {
    rng_state = 3;
    const int n = 48, k = 128, t = 512;
    int loud[4] = {3, 40, 77, 120};
    float *x = make_inputs(t, k, loud, 4);
    float *w = make_weights(n, k);
    qd_gptq_hessian hs;
    hessian_from(&hs, x, t, k);
    float *dq = malloc((size_t)n * k * sizeof *dq), *rq = malloc((size_t)n * k * sizeof *rq);
    int bits[2] = {3, 4}, groups[2] = {32, -1};
    qd_qrule rules[2] = {QD_QRULE_SYM_HALF, QD_QRULE_ASYM_ZERO_IN_RANGE};
    for (int bi = 0; bi < 2; bi++)
        for (int gi = 0; gi < 2; gi++)
            for (int ri = 0; ri < 2; ri++)
                for (int act = 0; act < 2; act++) {
                    qd_gptq_params p = params(bits[bi], groups[gi], rules[ri]);
                    p.scale_dtype = QD_DTYPE_F16;
                    p.act_order = act;
                    qd_qlinear q;
                    qd_error err = {0};
                    QD_CHECK_OK(qd_gptq_quantize(w, n, k, &hs, &p, &q, dq, NULL, &err), &err);
                    rtn(w, n, k, bits[bi], groups[gi], rules[ri], QD_DTYPE_F16, NULL, rq);
                    double eg = output_error(x, t, w, dq, n, k);
                    double er = output_error(x, t, w, rq, n, k);
                    QD_CHECK_MSG(eg < 0.6 * er, "bits %d G %d rule %d act %d: GPTQ error %g, "
                                 "RTN %g", bits[bi], groups[gi], (int)rules[ri], act, eg, er);
                    qd_qlinear_free(&q);
                }
    free(dq);
    free(rq);
    qd_gptq_hessian_done(&hs);
    free(x);
    free(w);
}

/* (4) act-order and static groups: g_idx, group order of the scales, and the dequantized
 * weights the error feedback used are what qd_qlinear_dequant computes */
QD_TEST(act_order_and_static_groups) {
    rng_state = 4;
    const int n = 16, k = 64, t = 256, g = 16;
    int loud[5] = {9, 17, 33, 50, 61};
    float *x = make_inputs(t, k, loud, 5);
    float *w = make_weights(n, k);
    qd_gptq_hessian hs;
    hessian_from(&hs, x, t, k);
    /* expected processing order: decreasing diag(H), by selection */
    int perm[64], pos[64];
    bool used[64] = {false};
    for (int j = 0; j < k; j++) {
        int best = -1;
        for (int c = 0; c < k; c++)
            if (!used[c] && (best < 0 || hs.h[c * k + c] > hs.h[best * k + best])) best = c;
        used[best] = true;
        perm[j] = best;
        pos[best] = j;
    }
    QD_CHECK(perm[0] != 0 || perm[1] != 1); /* the order is not the identity */
    float *dq = malloc((size_t)n * k * sizeof *dq), *dq2 = malloc((size_t)n * k * sizeof *dq2);
    uint8_t *plain_codes = NULL;
    for (int mode = 0; mode < 3; mode++) { /* plain, act-order, act-order + static */
        qd_gptq_params p = params(4, g, QD_QRULE_ASYM_ZERO_IN_RANGE);
        p.act_order = mode > 0;
        p.static_groups = mode == 2;
        p.scale_dtype = QD_DTYPE_BF16;
        qd_qlinear q;
        qd_error err = {0};
        QD_CHECK_OK(qd_gptq_quantize(w, n, k, &hs, &p, &q, dq, NULL, &err), &err);
        QD_CHECK_EQ_INT(q.n_groups, k / g);
        QD_CHECK_EQ_INT(q.group_size, g);
        if (mode == 1) {
            QD_REQUIRE(q.g_idx != NULL);
            int count[4] = {0};
            for (int c = 0; c < k; c++) {
                QD_CHECK_EQ_INT(q.g_idx[c], pos[c] / g);
                if (q.g_idx[c] >= 0 && q.g_idx[c] < 4) count[q.g_idx[c]]++;
            }
            for (int gi = 0; gi < 4; gi++) QD_CHECK_EQ_INT(count[gi], g);
        } else {
            for (int c = 0; c < k; c++) QD_CHECK_EQ_INT(qd_qlinear_group(&q, c), c / g);
        }
        if (mode == 2) { /* static: parameters of the contiguous groups of W itself */
            for (int r = 0; r < n; r++)
                for (int gi = 0; gi < k / g; gi++) {
                    float s, z;
                    rule_params(w + r * k + gi * g, g, 4, QD_QRULE_ASYM_ZERO_IN_RANGE,
                                QD_DTYPE_BF16, &s, &z);
                    QD_CHECK(q.scales[r * q.n_groups + gi] == s);
                    QD_CHECK(q.zeros[r * q.n_groups + gi] == z);
                }
        }
        for (int i = 0; i < n * k; i++) QD_CHECK(q.codes[i] <= 15);
        qd_qlinear_dequant(&q, dq2);
        QD_CHECK_MSG(memcmp(dq, dq2, (size_t)n * k * sizeof *dq) == 0,
                     "mode %d: the dequantized weights differ from qd_qlinear_dequant", mode);
        if (mode == 0) {
            plain_codes = q.codes;
            q.codes = NULL;
        } else {
            QD_CHECK(count_equal(plain_codes, q.codes, n * k) < n * k);
        }
        qd_qlinear_free(&q);
    }
    /* per channel with act-order: one group, no g_idx */
    qd_gptq_params p = params(4, -1, QD_QRULE_SYM_HALF);
    p.act_order = true;
    qd_qlinear q;
    qd_error err = {0};
    QD_CHECK_OK(qd_gptq_quantize(w, n, k, &hs, &p, &q, dq, NULL, &err), &err);
    QD_CHECK(q.g_idx == NULL);
    QD_CHECK_EQ_INT(q.n_groups, 1);
    qd_qlinear_dequant(&q, dq2);
    QD_CHECK(memcmp(dq, dq2, (size_t)n * k * sizeof *dq) == 0);
    qd_qlinear_free(&q);

    free(plain_codes);
    free(dq);
    free(dq2);

    /* equal diagonals keep their column order (torch leaves it unspecified; quantd is
     * stable): diag 3 4 4 3 5 4 3 3 -> order 4, 1, 2, 5, 0, 3, 6, 7 -> groups of two */
    qd_gptq_hessian ht;
    QD_CHECK_OK(qd_gptq_hessian_init(&ht, 8, &err), &err);
    const float diag[8] = {3, 4, 4, 3, 5, 4, 3, 3};
    for (int a = 0; a < 8; a++)
        for (int b = 0; b < 8; b++) ht.h[a * 8 + b] = a == b ? diag[a] : 0.3f;
    ht.n = 1;
    p = params(4, 2, QD_QRULE_SYM_HALF);
    p.act_order = true;
    QD_CHECK_OK(qd_gptq_quantize(w, n, 8, &ht, &p, &q, NULL, NULL, &err), &err);
    const int32_t want[8] = {2, 0, 1, 2, 0, 1, 3, 3};
    QD_REQUIRE(q.g_idx != NULL);
    for (int c = 0; c < 8; c++) QD_CHECK_EQ_INT(q.g_idx[c], want[c]);
    qd_qlinear_free(&q);
    qd_gptq_hessian_done(&ht);
    qd_gptq_hessian_done(&hs);
    free(x);
    free(w);
}

/* (5) inputs that are never active: their columns are zeroed and decoupled, their Hessian
 * diagonal counts as 1 (in the damping's mean and in the act-order sort: the inputs are small
 * here, diagonals well below 1, so the dead columns sort first), and per-channel parameters
 * still see their weights (the references measure W before zeroing it) */
QD_TEST(dead_columns) {
    rng_state = 5;
    const int n = 6, k = 16, t = 96;
    float *x = make_inputs(t, k, NULL, 0);
    for (int i = 0; i < t * k; i++) x[i] *= 0.05f;
    for (int i = 0; i < t; i++) x[i * k + 4] = x[i * k + 11] = 0.0f;
    float *w = make_weights(n, k);
    w[0 * k + 4] = 0.9f; /* a dead column holding the row's largest weight */
    qd_gptq_hessian hs;
    hessian_from(&hs, x, t, k);
    for (int a = 0; a < k; a++) QD_CHECK(a == 4 || a == 11 || hs.h[a * k + a] < 0.5f);
    for (int mode = 0; mode < 5; mode++) {
        /* per channel; groups of 8 (stale); act-order groups; per channel without damping;
         * act-order static groups */
        int g = mode == 0 || mode == 3 ? -1 : 8;
        qd_gptq_params p = params(4, g, QD_QRULE_ASYM_ZERO_IN_RANGE);
        p.act_order = mode == 2 || mode == 4;
        p.static_groups = mode == 4;
        p.block_size = mode == 1 ? 128 : 4; /* 4 divides G: fresh parameters */
        p.damp_percent = mode == 3 ? 0.0 : 0.01;
        qd_qlinear q;
        float dq[96];
        qd_gptq_stats st;
        qd_error err = {0};
        QD_CHECK_OK(qd_gptq_quantize(w, n, k, &hs, &p, &q, dq, &st, &err), &err);
        QD_REQUIRE(q.codes != NULL);
        QD_CHECK_EQ_INT(st.n_dead, 2);
        for (int r = 0; r < n; r++) {
            QD_CHECK(dq[r * k + 4] == 0.0f);
            QD_CHECK(dq[r * k + 11] == 0.0f);
            for (int c = 0; c < k; c++) QD_CHECK(isfinite(dq[r * k + c]));
        }
        if (mode == 2) { /* the dead columns (diagonal 1) are quantized first */
            QD_REQUIRE(q.g_idx != NULL);
            QD_CHECK_EQ_INT(q.g_idx[4], 0);
            QD_CHECK_EQ_INT(q.g_idx[11], 0);
        }
        float s0, z0;
        if (mode == 0 || mode == 3) { /* per-channel range includes the dead weight */
            rule_params(w, k, 4, QD_QRULE_ASYM_ZERO_IN_RANGE, QD_DTYPE_F32, &s0, &z0);
        } else { /* groups are measured on the zeroed W (static, or stale with block 128) */
            float seg[8];
            memcpy(seg, w, sizeof seg);
            seg[4] = 0.0f;
            rule_params(seg, 8, 4, QD_QRULE_ASYM_ZERO_IN_RANGE, QD_DTYPE_F32, &s0, &z0);
        }
        if (mode != 2) QD_CHECK(q.scales[0] == s0);
        uint8_t tb_codes[96];
        float tb_dq[96];
        double tb_loss;
        struct tb_opts o = {4, g, QD_QRULE_ASYM_ZERO_IN_RANGE, QD_DTYPE_F32, p.damp_percent,
                            p.act_order, p.static_groups, p.block_size >= k};
        textbook(w, n, k, hs.h, &o, tb_codes, tb_dq, &tb_loss);
        QD_CHECK_MSG(memcmp(q.codes, tb_codes, sizeof tb_codes) == 0,
                     "mode %d: codes differ from the textbook algorithm", mode);
        QD_CHECK_MSG(fabs(st.loss - tb_loss) <= 1e-3 * tb_loss,
                     "mode %d: loss %g vs textbook %g", mode, st.loss, tb_loss);
        qd_qlinear_free(&q);
    }
    qd_gptq_hessian_done(&hs);
    free(x);
    free(w);
}

/* (6) damping: huge damping turns GPTQ into RTN; an indefinite Hessian fails clearly, or is
 * rescued by the GPTQModel-style auto-increment at the first damping that works */
QD_TEST(damping) {
    rng_state = 6;
    const int n = 32, k = 64, t = 256;
    int loud[2] = {2, 30};
    float *x = make_inputs(t, k, loud, 2);
    float *w = make_weights(n, k);
    qd_gptq_hessian hs;
    hessian_from(&hs, x, t, k);
    uint8_t *rc = malloc((size_t)n * k);
    float *rq = malloc((size_t)n * k * sizeof *rq), *dq = malloc((size_t)n * k * sizeof *dq);
    /* asymmetric: SYM_HALF puts a group's most negative weight exactly on a rounding tie
     * (-7.5 steps), which any perturbation, however small, decides */
    rtn(w, n, k, 4, 16, QD_QRULE_ASYM_ZERO_IN_RANGE, QD_DTYPE_F32, rc, rq);
    double err_small = 0, err_huge = 0;
    for (int i = 0; i < 2; i++) {
        qd_gptq_params p = params(4, 16, QD_QRULE_ASYM_ZERO_IN_RANGE);
        p.damp_percent = i == 0 ? 0.01 : 1e5;
        qd_qlinear q;
        qd_error err = {0};
        QD_CHECK_OK(qd_gptq_quantize(w, n, k, &hs, &p, &q, dq, NULL, &err), &err);
        int eq = count_equal(q.codes, rc, n * k);
        if (i == 0) {
            err_small = output_error(x, t, w, dq, n, k);
            QD_CHECK(eq < n * k * 9 / 10); /* real compensation happens */
        } else {
            err_huge = output_error(x, t, w, dq, n, k);
            QD_CHECK_MSG(eq * 1000 >= n * k * 998, "%d of %d codes equal RTN's", eq, n * k);
        }
        qd_qlinear_free(&q);
    }
    QD_CHECK(err_small < 0.7 * err_huge);

    /* H = [[1, 1.2], [1.2, 1]]: eigenvalues -0.2 and 2.2, mean diagonal 1, so the damping
     * must exceed 0.2: 0.01 fails, and steps of 0.05 first succeed at 0.01 + 4 * 0.05. */
    qd_gptq_hessian h2;
    qd_error err = {0};
    QD_CHECK_OK(qd_gptq_hessian_init(&h2, 2, &err), &err);
    h2.h[0] = h2.h[3] = 1.0f;
    h2.h[1] = h2.h[2] = 1.2f;
    h2.n = 1;
    float w2[4] = {0.5f, -0.25f, 0.125f, 1.0f};
    qd_gptq_params p = params(4, -1, QD_QRULE_SYM_HALF);
    qd_qlinear q;
    memset(&q, 0xA5, sizeof q);
    qd_qlinear untouched = q;
    QD_CHECK_EQ_INT(qd_gptq_quantize(w2, 2, 2, &h2, &p, &q, NULL, NULL, &err),
                    QD_ERR_PRECONDITION);
    QD_CHECK(strstr(err.msg, "not positive definite") != NULL);
    QD_CHECK(strstr(err.msg, "damp") != NULL);
    QD_CHECK(memcmp(&q, &untouched, sizeof q) == 0);
    p.damp_auto_increment = 0.05;
    qd_gptq_stats st = {0};
    qd_error_clear(&err);
    QD_CHECK_OK(qd_gptq_quantize(w2, 2, 2, &h2, &p, &q, NULL, &st, &err), &err);
    QD_CHECK_NEAR(st.damp_percent, 0.21, 1e-9);
    qd_qlinear_free(&q);
    /* never positive definite below damp 1: still an error */
    h2.h[1] = h2.h[2] = 3.0f;
    qd_error_clear(&err);
    QD_CHECK_EQ_INT(qd_gptq_quantize(w2, 2, 2, &h2, &p, &q, NULL, &st, &err),
                    QD_ERR_PRECONDITION);
    qd_gptq_hessian_done(&h2);

    free(rc);
    free(rq);
    free(dq);
    qd_gptq_hessian_done(&hs);
    free(x);
    free(w);
}

/* (7) argument errors name the problem and leave the outputs alone */
QD_TEST(errors) {
    rng_state = 7;
    const int n = 4, k = 48, t = 64;
    float *x = make_inputs(t, k, NULL, 0);
    float *w = make_weights(n, k);
    qd_gptq_hessian hs;
    hessian_from(&hs, x, t, k);
    qd_qlinear q;
    qd_error err = {0};

    qd_gptq_params p = params(4, 32, QD_QRULE_SYM_HALF);
    QD_CHECK_EQ_INT(qd_gptq_quantize(w, n, k, &hs, &p, &q, NULL, NULL, &err),
                    QD_ERR_INVALID_ARG);
    QD_CHECK(strstr(err.msg, "group_size 32") && strstr(err.msg, "48"));

    qd_error_clear(&err);
    p = params(4, 16, QD_QRULE_SYM_HALF);
    QD_CHECK_EQ_INT(qd_gptq_quantize(w, n / 2, k * 2, &hs, &p, &q, NULL, NULL, &err),
                    QD_ERR_INVALID_ARG);
    QD_CHECK(strstr(err.msg, "in_features 48") && strstr(err.msg, "[2, 96]"));

    qd_error_clear(&err);
    p.bits = 9;
    QD_CHECK_EQ_INT(qd_gptq_quantize(w, n, k, &hs, &p, &q, NULL, NULL, &err),
                    QD_ERR_INVALID_ARG);
    QD_CHECK(strstr(err.msg, "bits 9") != NULL);

    qd_error_clear(&err);
    p = params(4, 16, QD_QRULE_SYM_HALF);
    p.block_size = 0;
    QD_CHECK_EQ_INT(qd_gptq_quantize(w, n, k, &hs, &p, &q, NULL, NULL, &err),
                    QD_ERR_INVALID_ARG);
    qd_error_clear(&err);
    p.block_size = 128;
    p.damp_percent = -0.1;
    QD_CHECK_EQ_INT(qd_gptq_quantize(w, n, k, &hs, &p, &q, NULL, NULL, &err),
                    QD_ERR_INVALID_ARG);

    qd_error_clear(&err);
    p = params(4, 16, QD_QRULE_SYM_HALF);
    w[5] = NAN;
    QD_CHECK_EQ_INT(qd_gptq_quantize(w, n, k, &hs, &p, &q, NULL, NULL, &err),
                    QD_ERR_INVALID_ARG);
    QD_CHECK(strstr(err.msg, "[0, 5]") != NULL);
    w[5] = 0.0f;

    /* no calibration data */
    qd_gptq_hessian empty;
    qd_error_clear(&err);
    QD_CHECK_OK(qd_gptq_hessian_init(&empty, k, &err), &err);
    QD_CHECK_EQ_INT(qd_gptq_quantize(w, n, k, &empty, &p, &q, NULL, NULL, &err),
                    QD_ERR_PRECONDITION);

    /* Hessian accumulation errors leave H as it was */
    float *before = malloc((size_t)k * k * sizeof *before);
    memcpy(before, hs.h, (size_t)k * k * sizeof *before);
    int64_t n_before = hs.n;
    qd_error_clear(&err);
    QD_CHECK_EQ_INT(qd_gptq_hessian_add(&hs, x, t, 0, &err), QD_ERR_INVALID_ARG);
    x[17 * k + 3] = INFINITY;
    qd_error_clear(&err);
    QD_CHECK_EQ_INT(qd_gptq_hessian_add(&hs, x, t, 1, &err), QD_ERR_INVALID_ARG);
    QD_CHECK(strstr(err.msg, "row 17, column 3") != NULL);
    QD_CHECK(memcmp(before, hs.h, (size_t)k * k * sizeof *before) == 0);
    QD_CHECK_EQ_INT(hs.n, n_before);
    qd_error_clear(&err);
    QD_CHECK_EQ_INT(qd_gptq_hessian_init(&empty, 0, &err), QD_ERR_INVALID_ARG);

    free(before);
    qd_gptq_hessian_done(&empty);
    qd_gptq_hessian_done(&hs);
    free(x);
    free(w);
}

/* The Hessian is (2 / n) sum x^T x with n counted as the caller says; counting tokens
 * instead of sequences rescales H and leaves the result alone. Same inputs, same bits. */
QD_TEST(hessian_and_determinism) {
    rng_state = 8;
    const int n = 8, k = 24, t = 90;
    float *x = make_inputs(t, k, NULL, 0);
    float *w = make_weights(n, k);
    qd_gptq_hessian hs, ht;
    qd_error err = {0};
    QD_CHECK_OK(qd_gptq_hessian_init(&hs, k, &err), &err);
    QD_CHECK_OK(qd_gptq_hessian_init(&ht, k, &err), &err);
    /* batches of 30, 40 and 20 rows holding 3, 4 and 2 sequences of 10 tokens */
    int rows[3] = {30, 40, 20}, r0 = 0;
    for (int b = 0; b < 3; b++) {
        QD_CHECK_OK(qd_gptq_hessian_add(&hs, x + r0 * k, rows[b], rows[b] / 10, &err), &err);
        QD_CHECK_OK(qd_gptq_hessian_add(&ht, x + r0 * k, rows[b], rows[b], &err), &err);
        r0 += rows[b];
    }
    QD_CHECK_EQ_INT(hs.n, 9);
    QD_CHECK_EQ_INT(ht.n, 90);
    for (int a = 0; a < k; a++)
        for (int b = 0; b < k; b++) {
            double s = 0;
            for (int i = 0; i < t; i++) s += (double)x[i * k + a] * x[i * k + b];
            QD_CHECK_NEAR(hs.h[a * k + b], 2.0 * s / 9, 1e-5 * (1 + fabs(2.0 * s / 9)));
            QD_CHECK_NEAR(ht.h[a * k + b], 2.0 * s / 90, 1e-5 * (1 + fabs(2.0 * s / 90)));
            QD_CHECK(hs.h[a * k + b] == hs.h[b * k + a]);
        }
    qd_gptq_params p = params(4, 8, QD_QRULE_ASYM_ZERO_IN_RANGE);
    p.act_order = true;
    qd_qlinear q1, q2, q3;
    float d1[192], d2[192];
    QD_CHECK_OK(qd_gptq_quantize(w, n, k, &hs, &p, &q1, d1, NULL, &err), &err);
    QD_CHECK_OK(qd_gptq_quantize(w, n, k, &hs, &p, &q2, d2, NULL, &err), &err);
    QD_CHECK_OK(qd_gptq_quantize(w, n, k, &ht, &p, &q3, NULL, NULL, &err), &err);
    QD_CHECK(memcmp(q1.codes, q2.codes, (size_t)n * k) == 0);
    QD_CHECK(memcmp(q1.scales, q2.scales, (size_t)n * q1.n_groups * sizeof(float)) == 0);
    QD_CHECK(memcmp(d1, d2, sizeof d1) == 0);
    QD_CHECK(memcmp(q1.g_idx, q3.g_idx, (size_t)k * sizeof(int32_t)) == 0);
    QD_CHECK(count_equal(q1.codes, q3.codes, n * k) >= n * k - 1);
    qd_qlinear_free(&q1);
    qd_qlinear_free(&q2);
    qd_qlinear_free(&q3);
    qd_gptq_hessian_done(&hs);
    qd_gptq_hessian_done(&ht);
    free(x);
    free(w);
}

QD_TEST_MAIN()
