/*
 * test-determinism.c - a quantization job gives the same bytes whatever the CPU thread count.
 *
 * The artifact cache is keyed by (model digest, spec digest, numerics version) and nothing
 * else, so the thread count must not reach the result. Each case runs the whole job, through
 * qd_job_quantize as `quantd quantize` does, on the bundled babyllama model with 1 and then 3
 * threads (odd on purpose: 3 does not divide the tile or row counts evenly) and requires every
 * output to be bitwise equal: each linear's codes, scales, zeros, g_idx, pre_scale, bias,
 * act_scale and weight_scale_2, the kept float weights, the folded norms, the static
 * activation scales and the per-group errors of the report.
 *
 * The calibration batch (8 sequences of 128 tokens) is big enough that every GEMM of the
 * forward pass is above the kernels' threshold for threading and spans several output tiles,
 * so a kernel whose split follows the thread count (one row slice per thread, as
 * kernels/cpu/matmul.c once did) gives different bits here.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "job.h"
#include "model.h"
#include "ops.h"
#include "safetensors.h"
#include "spec.h"
#include "test.h"
#include "tokenizer.h"

#define BABY QD_SOURCE_DIR "/examples/models/babyllama"
#define BABY_CALIB QD_SOURCE_DIR "/examples/data/babyllama/calib.safetensors"
#define N_SEQ 8
#define SEQ_LEN 128
/* The thread count compared with one thread. */
#ifndef QD_TEST_THREADS
#define QD_TEST_THREADS 3
#endif

/* ---- helpers ---- */

/* The first n_rows x seq_len tokens of the file's input_ids, or NULL. */
static int32_t *load_tokens(const char *path, int64_t n_rows, int64_t seq_len) {
    qd_error err = {0};
    int32_t *t = NULL;
    int64_t got_rows = 0, got_len = 0;
    if (qd_token_set_load(path, n_rows, seq_len, &t, &got_rows, &got_len, &err) != QD_OK) {
        fprintf(stderr, "%s\n", qd_error_text(&err));
        return NULL;
    }
    if (got_rows != n_rows || got_len != seq_len) {
        free(t);
        return NULL;
    }
    return t;
}

/* Run the job the YAML spec describes (plus the calibration keys) on `threads` threads; QD_OK
 * or the job's error. */
static qd_err run_job(const qd_model *m, const char *yaml, const int32_t *tok, int threads,
                      qd_job_result *res, qd_error *err) {
    char text[1024];
    int len = snprintf(text, sizeof text, "%scalibration: {path: \"%s\", rows: %d, seq_len: %d}\n",
                       yaml, BABY_CALIB, N_SEQ, SEQ_LEN);
    if (len < 0 || (size_t)len >= sizeof text)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "test spec too long");
    qd_spec spec = {0};
    qd_spec_warnings warn = {0};
    qd_err rc = qd_spec_parse_yaml(text, (size_t)len, "test", &spec, err);
    if (rc == QD_OK) rc = qd_spec_resolve(&spec, &warn, err);
    if (rc == QD_OK) {
        qd_cpu_set_threads(threads);
        rc = qd_job_quantize(m, &spec, tok, N_SEQ, SEQ_LEN, NULL, NULL, res, err);
    }
    qd_spec_free(&spec);
    return rc;
}

/* Bitwise equality of two optional arrays of n elements of elem bytes; on a difference the
 * message names the job, the place (where) and the first element that differs. */
static int same_bytes(const void *a, const void *b, size_t n, size_t elem, const char *method,
                      const char *where, const char *what) {
    if (!a && !b) return 1;
    if (!a || !b) {
        QD_FAIL_("%s: %s: %s present with one thread count only", method, where, what);
        return 0;
    }
    if (memcmp(a, b, n * elem) == 0) return 1;
    size_t first = 0;
    while (first < n && memcmp((const char *)a + first * elem, (const char *)b + first * elem,
                               elem) == 0)
        first++;
    QD_FAIL_("%s: %s: %s differ between 1 and %d threads (first at element %zu of %zu)",
             method, where, what, QD_TEST_THREADS, first, n);
    return 0;
}

/* The outputs of one linear; returns the number that differ. */
static int compare_linear(const qd_qlinear *p, const qd_qlinear *q, const float *keep_p,
                          const float *keep_q, const char *method, const char *where) {
    if (p->n != q->n || p->k != q->k || p->n_groups != q->n_groups || p->type != q->type ||
        p->bits != q->bits || p->rule != q->rule) {
        QD_FAIL_("%s: %s: shape or type differs between 1 and %d threads", method, where,
                 QD_TEST_THREADS);
        return 1;
    }
    size_t nk = (size_t)p->n * (size_t)p->k, ng = (size_t)p->n * (size_t)p->n_groups;
    const size_t f = sizeof(float);
    int bad = 0;
    bad += !same_bytes(p->codes, q->codes, nk, 1, method, where, "codes");
    bad += !same_bytes(p->scales, q->scales, ng, f, method, where, "scales");
    bad += !same_bytes(p->zeros, q->zeros, ng, f, method, where, "zeros");
    bad += !same_bytes(p->g_idx, q->g_idx, (size_t)p->k, sizeof(int32_t), method, where,
                       "g_idx");
    bad += !same_bytes(p->pre_scale, q->pre_scale, (size_t)p->k, f, method, where, "pre_scale");
    bad += !same_bytes(p->bias, q->bias, (size_t)p->n, f, method, where, "bias");
    bad += !same_bytes(&p->act_scale, &q->act_scale, 1, f, method, where, "act_scale");
    bad += !same_bytes(&p->weight_scale_2, &q->weight_scale_2, 1, f, method, where,
                       "weight_scale_2");
    bad += !same_bytes(keep_p, keep_q, nk, f, method, where, "kept float weight");
    return bad;
}

/* Every output of two results of the same job is bitwise equal; returns the differences. */
static int compare_results(const qd_job_result *a, const qd_job_result *b, const char *method) {
    QD_CHECK_EQ_INT(a->n_layers, b->n_layers);
    QD_CHECK_EQ_INT(a->hidden, b->hidden);
    QD_CHECK_EQ_INT(a->act_mode, b->act_mode);
    QD_CHECK_EQ_INT(a->act.n_layers, b->act.n_layers);
    if (a->n_layers != b->n_layers || a->hidden != b->hidden ||
        a->act.n_layers != b->act.n_layers)
        return 1;
    int bad = 0;
    const size_t h = (size_t)a->hidden, f = sizeof(float);
    char where[96];
    for (int l = 0; l < a->n_layers; l++) {
        for (int k = 0; k < QD_LINEAR_COUNT; k++) {
            int i = l * QD_LINEAR_COUNT + k;
            snprintf(where, sizeof where, "layer %d %s", l, qd_linear_name((qd_linear_kind)k));
            bad += compare_linear(&a->q[i], &b->q[i], a->keep[i], b->keep[i], method, where);
        }
        snprintf(where, sizeof where, "layer %d", l);
        bad += !same_bytes(a->attn_norm ? a->attn_norm + l * h : NULL,
                           b->attn_norm ? b->attn_norm + l * h : NULL, h, f, method, where,
                           "folded input_layernorm");
        bad += !same_bytes(a->mlp_norm ? a->mlp_norm + l * h : NULL,
                           b->mlp_norm ? b->mlp_norm + l * h : NULL, h, f, method, where,
                           "folded post_attention_layernorm");
        bad += !same_bytes(a->rel_err + l * QD_CALIB_GROUP_COUNT,
                           b->rel_err + l * QD_CALIB_GROUP_COUNT, QD_CALIB_GROUP_COUNT,
                           sizeof(double), method, where, "reported group errors");
    }
    bad += !same_bytes(a->act.scale, b->act.scale, (size_t)a->act.n_layers * QD_LINEAR_COUNT, f,
                       method, "model", "static activation scales");
    return bad;
}

/* The job of yaml on 1 and on QD_TEST_THREADS threads gives bitwise equal results, and it
 * quantized every linear (a job that silently did nothing would be deterministic too). */
static void check_thread_counts(const char *method, const char *yaml) {
    qd_error err = {0};
    qd_model *m = NULL;
    int32_t *tok = load_tokens(BABY_CALIB, N_SEQ, SEQ_LEN);
    int saved = qd_cpu_threads();
    if (qd_model_open(BABY, &m, &err) != QD_OK) fprintf(stderr, "%s\n", qd_error_text(&err));
    QD_REQUIRE(m && tok);
    qd_job_result r1 = {0}, rn = {0};
    QD_CHECK_OK(run_job(m, yaml, tok, 1, &r1, &err), &err);
    QD_CHECK_OK(run_job(m, yaml, tok, QD_TEST_THREADS, &rn, &err), &err);
    qd_cpu_set_threads(saved);
    if (r1.q && rn.q) {
        int n_codes = 0;
        for (int i = 0; i < r1.n_layers * QD_LINEAR_COUNT; i++) n_codes += r1.q[i].codes != NULL;
        QD_CHECK_MSG(n_codes == r1.n_layers * QD_LINEAR_COUNT, "%s: %d of %d linears quantized",
                     method, n_codes, r1.n_layers * QD_LINEAR_COUNT);
        int bad = compare_results(&r1, &rn, method);
        QD_CHECK_MSG(bad == 0, "%s: %d outputs differ between 1 and %d threads", method, bad,
                     QD_TEST_THREADS);
    }
    qd_job_result_free(&r1);
    qd_job_result_free(&rn);
    free(tok);
    qd_model_free(m);
}

/* ---- the methods that calibrate (RTN reads no activations and is per row) ---- */

QD_TEST(gptq_is_thread_count_independent) {
    check_thread_counts("gptq", "method: gptq\nformat: gptq\nbits: 4\ngroup_size: 32\n");
}

QD_TEST(gptq_act_order_is_thread_count_independent) {
    check_thread_counts("gptq act_order", "method: gptq\nformat: gptq\nbits: 4\n"
                                          "group_size: 32\ngptq: {act_order: true}\n");
}

QD_TEST(awq_is_thread_count_independent) {
    /* a coarse grid keeps the search short; every candidate still runs the forward GEMMs */
    check_thread_counts("awq", "method: awq\nformat: awq\nbits: 4\ngroup_size: 32\n"
                               "awq: {n_grid: 4, clip_n_grid: 4}\n");
}

QD_TEST(smoothquant_is_thread_count_independent) {
    check_thread_counts("smoothquant", "method: smoothquant\nformat: compressed-tensors\n");
}

QD_TEST(fp8_static_is_thread_count_independent) {
    check_thread_counts("fp8 static", "method: fp8\nformat: compressed-tensors\n"
                                      "fp8: {activation_scheme: static}\n");
}

QD_TEST_MAIN()
