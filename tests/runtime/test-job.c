/*
 * test-job.c - whole jobs on the bundled models through qd_job_quantize, checked against the
 * reference perplexities of examples/data/README.md (an independent float64 implementation)
 * and against each other: calibrated methods must beat round-to-nearest at the same settings.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "job.h"
#include "rt-model.h"
#include "test.h"

#define BABY QD_SOURCE_DIR "/examples/models/babyllama"
#define BABY_CALIB QD_SOURCE_DIR "/examples/data/babyllama/calib.safetensors"
#define BABY_EVAL QD_SOURCE_DIR "/examples/data/babyllama/eval.safetensors"

static qd_model *model;
static int32_t *calib, *eval;
static int64_t c_rows, c_len, e_rows, e_len;

/* A spec for method m, resolved; bits/group/sym as given. */
static qd_err make_spec(qd_spec *s, qd_spec_method m, qd_spec_format f, int bits, int group,
                        bool sym, qd_error *err) {
    memset(s, 0, sizeof *s);
    s->method = m;
    s->format = f;
    s->bits = (uint32_t)bits;
    s->group_size = group;
    s->symmetric = sym ? QD_SPEC_TRUE : QD_SPEC_FALSE;
    if (m != QD_SPEC_METHOD_RTN) /* the tokens are passed directly; name them for the spec */
        memset(s->calibration.digest, 'a', QD_SPEC_DIGEST_HEX - 1);
    qd_err rc = qd_spec_resolve(s, NULL, err);
    if (rc != QD_OK) fprintf(stderr, "spec: %s\n", qd_error_text(err));
    return rc;
}

/* Perplexity of the model quantized by spec (calibrated on the first n_calib rows). */
static double ppl_of(qd_spec *s, int n_calib, qd_job_result *keep) {
    qd_error err = {0};
    qd_job_result r = {0};
    double ppl = -1;
    const int32_t *c = n_calib ? calib : NULL;
    if (qd_job_quantize(model, s, c, n_calib, c_len, NULL, NULL, &r, &err) != QD_OK) {
        fprintf(stderr, "job: %s\n", qd_error_text(&err));
        return -1;
    }
    if (qd_job_perplexity(model, &r, eval, e_rows, e_len, NULL, &ppl, &err) != QD_OK)
        fprintf(stderr, "eval: %s\n", qd_error_text(&err));
    if (keep) *keep = r;
    else qd_job_result_free(&r);
    return ppl;
}

QD_TEST(rtn_reproduces_reference_table) {
    /* examples/data/README.md: babyllama w4 g32 asym 7.0383, w4 ch sym 7.5883, w3 ch asym
     * 9.1177 (format none = the table's conventions) */
    static const struct {
        int bits, group;
        bool sym;
        double ref;
    } rows[] = {{4, 32, false, 7.0383}, {4, -1, true, 7.5883}, {3, -1, false, 9.1177}};
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        qd_spec s;
        qd_error err = {0};
        QD_REQUIRE(make_spec(&s, QD_SPEC_METHOD_RTN, QD_SPEC_FORMAT_NONE, rows[i].bits,
                             rows[i].group, rows[i].sym, &err) == QD_OK);
        double p = ppl_of(&s, 0, NULL);
        QD_CHECK_MSG(fabs(p - rows[i].ref) < 1e-3 * rows[i].ref, "rtn w%d g%d %s: %.4f vs %.4f",
                     rows[i].bits, rows[i].group, rows[i].sym ? "sym" : "asym", p, rows[i].ref);
        qd_spec_free(&s);
    }
}

/* RTN has no calibration inputs: each group reports its weights' own error, which must equal
 * ||W_q - W||^2 / ||W||^2 recomputed here from the stored codes and the source weights. */
QD_TEST(rtn_reports_weight_error) {
    qd_spec s;
    qd_error err = {0};
    QD_REQUIRE(make_spec(&s, QD_SPEC_METHOD_RTN, QD_SPEC_FORMAT_NONE, 4, 32, false, &err) ==
               QD_OK);
    qd_job_result r = {0};
    QD_REQUIRE(qd_job_quantize(model, &s, NULL, 0, 0, NULL, NULL, &r, &err) == QD_OK);
    for (int i = 0; i < r.n_layers * QD_CALIB_GROUP_COUNT; i++)
        QD_CHECK_MSG(r.rel_err[i] > 0 && r.rel_err[i] < 0.1, "group %d error %g", i,
                     r.rel_err[i]);
    const int layer = 1;
    qd_layer_weights w = {0};
    QD_REQUIRE(qd_layer_weights_load(model, layer, &w, &err) == QD_OK);
    const qd_qlinear *q = &r.q[layer * QD_LINEAR_COUNT + QD_LINEAR_DOWN];
    size_t len = (size_t)q->n * (size_t)q->k;
    float *deq = malloc(len * sizeof *deq);
    QD_REQUIRE(deq);
    qd_qlinear_dequant(q, deq);
    double num = 0, den = 0;
    for (size_t e = 0; e < len; e++) {
        double o = w.w[QD_LINEAR_DOWN][e], d = (double)deq[e] - o;
        num += d * d;
        den += o * o;
    }
    double got = r.rel_err[layer * QD_CALIB_GROUP_COUNT + QD_CALIB_DOWN];
    QD_CHECK_MSG(fabs(got - num / den) <= 1e-12 + 1e-9 * (num / den), "down error %.12g vs %.12g",
                 got, num / den);
    free(deq);
    qd_layer_weights_done(&w);
    qd_job_result_free(&r);
    qd_spec_free(&s);
}

QD_TEST(gptq_reports_every_group) {
    qd_spec s;
    qd_error err = {0};
    QD_REQUIRE(make_spec(&s, QD_SPEC_METHOD_GPTQ, QD_SPEC_FORMAT_NONE, 4, 32, false, &err) ==
               QD_OK);
    qd_job_result r = {0};
    QD_REQUIRE(qd_job_quantize(model, &s, calib, 4, c_len, NULL, NULL, &r, &err) == QD_OK);
    for (int i = 0; i < r.n_layers * QD_CALIB_GROUP_COUNT; i++)
        QD_CHECK_MSG(r.rel_err[i] > 0 && r.rel_err[i] < 0.5, "group %d error %g", i,
                     r.rel_err[i]);
    qd_job_result_free(&r);
    qd_spec_free(&s);
}

QD_TEST(gptq_beats_rtn_and_closes_the_gap_at_w3) {
    qd_spec rtn, gptq;
    qd_error err = {0};
    const double fp = 6.8898;
    for (int bits = 3; bits <= 4; bits++) {
        QD_REQUIRE(make_spec(&rtn, QD_SPEC_METHOD_RTN, QD_SPEC_FORMAT_NONE, bits, 32, false,
                             &err) == QD_OK);
        QD_REQUIRE(make_spec(&gptq, QD_SPEC_METHOD_GPTQ, QD_SPEC_FORMAT_NONE, bits, 32, false,
                             &err) == QD_OK);
        double pr = ppl_of(&rtn, 0, NULL), pg = ppl_of(&gptq, (int)c_rows, NULL);
        printf("    w%d g32 asym: rtn %.4f gptq %.4f (fp %.4f)\n", bits, pr, pg, fp);
        QD_CHECK_MSG(pg > 0 && pg < pr, "w%d: gptq %.4f not below rtn %.4f", bits, pg, pr);
        if (bits == 3)
            QD_CHECK_MSG(pr - pg >= (pr - fp) / 3, "w3: gptq closes %.0f%% of rtn's gap",
                         100 * (pr - pg) / (pr - fp));
        qd_spec_free(&rtn);
        qd_spec_free(&gptq);
    }
}

QD_TEST(awq_beats_rtn) {
    qd_spec rtn, awq;
    qd_error err = {0};
    for (int bits = 3; bits <= 4; bits++) {
        /* AWQ (AutoAWQ's min/max rule) against the reference table's RTN */
        QD_REQUIRE(make_spec(&rtn, QD_SPEC_METHOD_RTN, QD_SPEC_FORMAT_NONE, bits, 32, false,
                             &err) == QD_OK);
        QD_REQUIRE(make_spec(&awq, QD_SPEC_METHOD_AWQ, QD_SPEC_FORMAT_NONE, bits, 32, false,
                             &err) == QD_OK);
        double pr = ppl_of(&rtn, 0, NULL), pa = ppl_of(&awq, 32, NULL);
        printf("    w%d g32 asym: rtn %.4f awq %.4f\n", bits, pr, pa);
        QD_CHECK_MSG(pa > 0 && pa < pr, "w%d: awq %.4f not below rtn %.4f", bits, pa, pr);
        qd_spec_free(&rtn);
        qd_spec_free(&awq);
    }
}

QD_TEST(w8a8_and_fp8_stay_close_to_float) {
    qd_spec s;
    qd_error err = {0};
    memset(&s, 0, sizeof s);
    s.method = QD_SPEC_METHOD_SMOOTHQUANT;
    s.format = QD_SPEC_FORMAT_NONE;
    memset(s.calibration.digest, 'a', QD_SPEC_DIGEST_HEX - 1);
    QD_REQUIRE(qd_spec_resolve(&s, NULL, &err) == QD_OK);
    double p = ppl_of(&s, 8, NULL);
    printf("    smoothquant w8a8 (per-token activations): %.4f\n", p);
    QD_CHECK(p > 6.8898 && p < 6.8898 * 1.01);
    qd_spec_free(&s);
    memset(&s, 0, sizeof s);
    s.method = QD_SPEC_METHOD_FP8;
    s.format = QD_SPEC_FORMAT_NONE;
    memset(s.calibration.digest, 'a', QD_SPEC_DIGEST_HEX - 1);
    s.fp8.weight_scale = QD_SPEC_FP8_WEIGHT_SCALE_TENSOR;
    s.fp8.activation_scheme = QD_SPEC_FP8_ACTIVATION_STATIC;
    QD_REQUIRE(qd_spec_resolve(&s, NULL, &err) == QD_OK);
    p = ppl_of(&s, 8, NULL);
    printf("    fp8 static: %.4f\n", p);
    QD_CHECK(p > 6.8898 && p < 6.8898 * 1.01);
    qd_spec_free(&s);
}

QD_TEST(missing_calibration_is_an_error) {
    qd_spec s;
    qd_error err = {0};
    QD_REQUIRE(make_spec(&s, QD_SPEC_METHOD_GPTQ, QD_SPEC_FORMAT_NONE, 4, 32, true, &err) ==
               QD_OK);
    qd_job_result r = {0};
    QD_CHECK_EQ_INT(qd_job_quantize(model, &s, NULL, 0, 0, NULL, NULL, &r, &err),
                    QD_ERR_INVALID_ARG);
    QD_CHECK(strstr(err.msg, "calib") != NULL);
    QD_CHECK(r.q == NULL);
    qd_spec_free(&s);
}

QD_TEST(deterministic) {
    qd_spec s;
    qd_error err = {0};
    QD_REQUIRE(make_spec(&s, QD_SPEC_METHOD_GPTQ, QD_SPEC_FORMAT_NONE, 4, 32, true, &err) ==
               QD_OK);
    qd_job_result a = {0}, b = {0};
    QD_REQUIRE(qd_job_quantize(model, &s, calib, 4, c_len, NULL, NULL, &a, &err) == QD_OK);
    QD_REQUIRE(qd_job_quantize(model, &s, calib, 4, c_len, NULL, NULL, &b, &err) == QD_OK);
    int same = 1;
    for (int i = 0; i < a.n_layers * QD_LINEAR_COUNT; i++) {
        const qd_qlinear *x = &a.q[i], *y = &b.q[i];
        same &= memcmp(x->codes, y->codes, (size_t)x->n * (size_t)x->k) == 0;
        same &= memcmp(x->scales, y->scales, (size_t)x->n * (size_t)x->n_groups * 4) == 0;
    }
    QD_CHECK_MSG(same, "two runs of the same job differ");
    qd_job_result_free(&a);
    qd_job_result_free(&b);
    qd_spec_free(&s);
}

int main(void) {
    qd_error err = {0};
    if (qd_model_open(BABY, &model, &err) != QD_OK ||
        rt_load_tokens(BABY_CALIB, &calib, &c_rows, &c_len, &err) != QD_OK ||
        rt_load_tokens(BABY_EVAL, &eval, &e_rows, &e_len, &err) != QD_OK) {
        fprintf(stderr, "setup: %s\n", qd_error_text(&err));
        return 1;
    }
    int rc = qd_test_run();
    free(calib);
    free(eval);
    qd_model_free(model);
    return rc;
}
