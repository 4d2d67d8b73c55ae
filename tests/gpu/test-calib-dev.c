/*
 * test-calib-dev.c - the calibration driver with its layers on a CUDA device (calib.h, "On a
 * device") against the same run on the host, on the bundled babyllama model.
 *
 * A recording callback keeps a copy of every group input it is handed and of every layer
 * output; in MODIFIED mode it also replaces the group's linears by their round-to-nearest
 * fake-quantized weights and scales the norm in front of them, so the next steps must see
 * those changes on the device (the driver uploads them again) for the runs to agree. Checked:
 *   - every group input and layer output of the device run equals the host run's: bit for
 *     bit on the emulated device of the tests (a device whose ops are the CPU's, so any
 *     difference is the driver's bookkeeping), to a relative error of 1e-4 on a real GPU;
 *   - the device copy a callback gets (x_dev) holds exactly the host copy it gets (x);
 *   - both propagation modes, and the layer limit (n_layers).
 * Without the CUDA backend or a device every test reports skipped.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test.h"

#ifndef QD_HAVE_CUDA

QD_TEST(cuda_not_built) {
    qd_test_skip("quantd was built without the CUDA backend");
}

int main(void) {
    return qd_test_run();
}

#else

#include "calib.h"
#include "job.h"
#include "qd_cuda.h"
#include "rtn.h"
#include "runtime/rt-model.h"

#define BABY QD_SOURCE_DIR "/examples/models/babyllama"
#define BABY_CALIB QD_SOURCE_DIR "/examples/data/babyllama/calib.safetensors"
#define EMULATOR_NAME "quantd host emulator"
/* 20 rows of babyllama's 256 positions: two attention chunks (16 + 4 sequences of the
 * QD_FWD_CHUNK_TOKENS = 4096-token chunks) and two MLP chunks, so the chunk offsets count */
#define ROWS 20

static qd_model *model;
static int32_t *calib;
static int64_t c_rows, c_len;
static qd_job_device gpu;
static bool have_gpu, emulated;
static char skip_why[QD_ERROR_MSG_MAX];

#define NEED_GPU()                                                                           \
    do {                                                                                     \
        if (!have_gpu) {                                                                     \
            qd_test_skip(skip_why);                                                          \
            return;                                                                          \
        }                                                                                    \
    } while (0)

/* Everything a run showed its callbacks, in order. */
#define MAX_SEEN 512
struct record {
    bool modify;           /* MODIFIED mode: fake-quantize the group's linears */
    int n;
    float *seen[MAX_SEEN]; /* copies of group inputs and layer outputs */
    int64_t len[MAX_SEEN];
    int x_dev_mismatch;    /* callbacks whose x_dev did not hold x */
    int x_dev_missing;     /* callbacks on a device without x_dev */
    bool on_device;
};

static void keep(struct record *r, const float *x, int64_t n) {
    if (r->n >= MAX_SEEN) return;
    float *c = malloc((size_t)n * sizeof *c);
    if (!c) return;
    memcpy(c, x, (size_t)n * sizeof *c);
    r->seen[r->n] = c;
    r->len[r->n++] = n;
}

static void record_free(struct record *r) {
    for (int i = 0; i < r->n; i++) free(r->seen[i]);
    memset(r, 0, sizeof *r);
}

static qd_err on_group(void *ctx, const qd_calib_input *in, qd_layer_weights *w,
                       qd_error *err) {
    struct record *r = ctx;
    int64_t n = in->n_tok * in->n_in;
    keep(r, in->x, n);
    if (r->on_device && !in->x_dev) r->x_dev_missing++;
    if (in->x_dev) {
        float *back = malloc((size_t)n * sizeof *back);
        if (!back) return qd_error_set(err, QD_ERR_NOMEM, "test: x_dev copy");
        qd_err rc = qd_cuda_download(in->cuda, back, in->x_dev, (size_t)n * sizeof *back, err);
        if (rc == QD_OK && memcmp(back, in->x, (size_t)n * sizeof *back) != 0)
            r->x_dev_mismatch++;
        free(back);
        if (rc) return rc;
    }
    if (!r->modify) return QD_OK;
    qd_linear_kind kinds[3];
    int nk = qd_calib_group_linears(in->group, kinds);
    for (int i = 0; i < nk; i++) {
        qd_linear_kind k = kinds[i];
        qd_qlinear q = {0};
        qd_err rc = qd_rtn_quantize(w->w[k], (int)w->n_out[k], (int)w->n_in[k], 4, 32,
                                    QD_QRULE_ASYM_MINMAX, QD_DTYPE_F16, &q, err);
        if (rc) return rc;
        qd_qlinear_dequant(&q, w->w[k]);
        qd_qlinear_free(&q);
        if (w->b[k])
            for (int64_t o = 0; o < w->n_out[k]; o++) w->b[k][o] *= 0.5f;
    }
    float *norm = in->group == QD_CALIB_QKV       ? w->attn_norm
                  : in->group == QD_CALIB_GATE_UP ? w->mlp_norm
                                                  : NULL;
    if (norm)
        for (int64_t c = 0; c < w->hidden; c++) norm[c] *= 1.25f;
    return QD_OK;
}

static qd_err on_layer_end(void *ctx, qd_layer_weights *w, const float *x_out, int64_t n_tok,
                           qd_error *err) {
    (void)err;
    keep(ctx, x_out, n_tok * w->hidden);
    return QD_OK;
}

static qd_err run(bool on_device, qd_calib_propagate mode, int n_layers, struct record *r,
                  qd_error *err) {
    memset(r, 0, sizeof *r);
    r->modify = mode == QD_CALIB_PROPAGATE_MODIFIED;
    r->on_device = on_device;
    qd_calib_opts o = {.propagate = mode, .n_layers = n_layers};
    if (on_device) qd_job_device_run_opts(&gpu, &o.run);
    qd_calib_callbacks cb = {.ctx = r, .group = on_group, .layer_end = on_layer_end};
    return qd_calib_run(model, calib, ROWS, c_len, &o, &cb, err);
}

/* Largest |a - b| / max|b| over one recorded array. */
static double rel_diff(const float *a, const float *b, int64_t n) {
    double d = 0, m = 0;
    for (int64_t i = 0; i < n; i++) {
        d = fmax(d, fabs((double)a[i] - b[i]));
        m = fmax(m, fabs((double)b[i]));
    }
    return m > 0 ? d / m : d;
}

static void compare(qd_calib_propagate mode, int n_layers, int expect_seen) {
    struct record host, dev;
    qd_error err = {0};
    QD_REQUIRE(run(false, mode, n_layers, &host, &err) == QD_OK);
    qd_err rc = run(true, mode, n_layers, &dev, &err);
    QD_CHECK_MSG(rc == QD_OK, "device run: %s", qd_error_text(&err));
    QD_CHECK_EQ_INT(host.n, expect_seen);
    QD_CHECK_EQ_INT(dev.n, host.n);
    QD_CHECK_EQ_INT(dev.x_dev_missing, 0);
    QD_CHECK_EQ_INT(dev.x_dev_mismatch, 0);
    int differ = 0;
    double worst = 0;
    for (int i = 0; i < host.n && i < dev.n; i++) {
        QD_CHECK_EQ_INT((int)dev.len[i], (int)host.len[i]);
        if (dev.len[i] != host.len[i]) continue;
        if (memcmp(dev.seen[i], host.seen[i], (size_t)host.len[i] * sizeof(float)) != 0) {
            if (differ++ == 0) fprintf(stderr, "first difference: record %d\n", i);
        }
        worst = fmax(worst, rel_diff(dev.seen[i], host.seen[i], host.len[i]));
    }
    fprintf(stderr, "%s, %d records: %d differ, worst relative difference %.3g\n",
            mode == QD_CALIB_PROPAGATE_MODIFIED ? "modified" : "original", host.n, differ,
            worst);
    if (emulated)
        QD_CHECK_EQ_INT(differ, 0);
    else
        QD_CHECK_MSG(worst <= 1e-4, "device vs host: relative difference %.3g", worst);
    record_free(&host);
    record_free(&dev);
}

QD_TEST(original_mode_matches_host) {
    NEED_GPU();
    int layers = qd_model_config(model)->num_hidden_layers;
    compare(QD_CALIB_PROPAGATE_ORIGINAL, 0, layers * (QD_CALIB_GROUP_COUNT + 1));
}

QD_TEST(modified_mode_with_changed_weights_matches_host) {
    NEED_GPU();
    int layers = qd_model_config(model)->num_hidden_layers;
    compare(QD_CALIB_PROPAGATE_MODIFIED, 0, layers * (QD_CALIB_GROUP_COUNT + 1));
}

QD_TEST(layer_limit_on_the_device) {
    NEED_GPU();
    compare(QD_CALIB_PROPAGATE_MODIFIED, 2, 2 * (QD_CALIB_GROUP_COUNT + 1));
}

/* Changing the weights must matter: a run whose callback does not modify anything gives other
 * layer outputs than one that does (otherwise the comparisons above could not see a missing
 * upload). */
QD_TEST(modifying_callbacks_change_the_outputs) {
    NEED_GPU();
    struct record plain, mod;
    qd_error err = {0};
    QD_REQUIRE(run(true, QD_CALIB_PROPAGATE_ORIGINAL, 2, &plain, &err) == QD_OK);
    QD_REQUIRE(run(true, QD_CALIB_PROPAGATE_MODIFIED, 2, &mod, &err) == QD_OK);
    QD_REQUIRE(plain.n == mod.n && plain.n == 2 * (QD_CALIB_GROUP_COUNT + 1));
    /* layer 0's QKV input is the same (nothing changed before it), its O input is not */
    QD_CHECK(memcmp(plain.seen[0], mod.seen[0], (size_t)plain.len[0] * sizeof(float)) == 0);
    QD_CHECK(memcmp(plain.seen[1], mod.seen[1], (size_t)plain.len[1] * sizeof(float)) != 0);
    record_free(&plain);
    record_free(&mod);
}

int main(void) {
    qd_error err = {0};
    if (qd_job_device_open("cuda:0", &gpu, NULL, &err) == QD_OK) {
        have_gpu = true;
        emulated = strcmp(qd_cuda_info(gpu.cuda)->name, EMULATOR_NAME) == 0;
        fprintf(stderr, "device: %s%s\n", gpu.desc, emulated ? " (emulated: exact checks)" : "");
    } else {
        snprintf(skip_why, sizeof skip_why, "%s", err.msg);
    }
    if (have_gpu && (qd_model_open(BABY, &model, &err) != QD_OK ||
                     rt_load_tokens(BABY_CALIB, &calib, &c_rows, &c_len, &err) != QD_OK)) {
        fprintf(stderr, "setup: %s\n", qd_error_text(&err));
        return 1;
    }
    if (have_gpu && c_rows < ROWS) {
        fprintf(stderr, "setup: %s has %lld rows, the test needs %d\n", BABY_CALIB,
                (long long)c_rows, ROWS);
        return 1;
    }
    int rc = qd_test_run();
    free(calib);
    qd_model_free(model);
    qd_job_device_close(&gpu);
    return rc;
}

#endif
