/*
 * calib-bench.c - time and peak memory of one calibration batch (or one perplexity batch) on
 * a model directory, e.g. a synthetic 1B model from synth-llama.
 *
 *   calib-bench MODEL_DIR [--rows N] [--len L] [--layers K] [--threads T] [--hessian] [--nll]
 *
 * Tokens are random ids (seeded). The calibration callbacks accumulate what the quantizers
 * need per group: mean/max |x| per input channel, and with --hessian also X^T X (GPTQ), which
 * costs [n_in, n_in] floats per group. Prints the time per layer and the peak resident set.
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "calib.h"
#include "model.h"
#include "ops.h"

struct bench {
    bool hessian;
    double t0;
    qd_act_stats stats[QD_CALIB_GROUP_COUNT];
    float *h[QD_CALIB_GROUP_COUNT];
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static long peak_rss_mib(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss / 1024;
}

static qd_err on_group(void *ctx, const qd_calib_input *in, qd_layer_weights *w,
                       qd_error *err) {
    struct bench *b = ctx;
    qd_act_stats *s = &b->stats[in->group];
    qd_err rc;
    if (!s->sum_abs && (rc = qd_act_stats_init(s, in->n_in, err))) return rc;
    qd_act_stats_add(s, in->x, in->n_tok);
    if (b->hessian) {
        if (!b->h[in->group]) {
            b->h[in->group] = calloc((size_t)(in->n_in * in->n_in), sizeof(float));
            if (!b->h[in->group]) return qd_error_set(err, QD_ERR_NOMEM, "hessian");
        }
        memset(b->h[in->group], 0, sizeof(float) * (size_t)(in->n_in * in->n_in));
        qd_calib_xtx_add(b->h[in->group], in->x, in->n_tok, in->n_in, NULL);
    }
    return QD_OK;
}

static int on_progress(void *ctx, int layer, int n_layers) {
    struct bench *b = ctx;
    fprintf(stderr, "layer %d/%d  %.1f s  peak RSS %ld MiB\n", layer, n_layers,
            now_s() - b->t0, peak_rss_mib());
    return 0;
}

static int parse_int(const char *s, int *ret) {
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v <= 0 || v > INT_MAX) return -1;
    *ret = (int)v;
    return 0;
}

int main(int argc, char **argv) {
    const char *dir = NULL;
    int rows = 1, len = 512, layers = 0, threads = 0;
    bool nll_mode = false;
    struct bench b = {0};
    for (int i = 1; i < argc; i++) {
        int *field = NULL;
        if (strcmp(argv[i], "--rows") == 0) field = &rows;
        else if (strcmp(argv[i], "--len") == 0) field = &len;
        else if (strcmp(argv[i], "--layers") == 0) field = &layers;
        else if (strcmp(argv[i], "--threads") == 0) field = &threads;
        else if (strcmp(argv[i], "--hessian") == 0) b.hessian = true;
        else if (strcmp(argv[i], "--nll") == 0) nll_mode = true;
        else if (argv[i][0] != '-' && !dir) dir = argv[i];
        else {
            fprintf(stderr, "calib-bench: bad argument '%s'\n", argv[i]);
            return 2;
        }
        if (field && (i + 1 >= argc || parse_int(argv[++i], field))) {
            fprintf(stderr, "calib-bench: %s needs a positive integer\n", argv[i - 1]);
            return 2;
        }
    }
    if (!dir) {
        fprintf(stderr, "usage: calib-bench MODEL_DIR [--rows N] [--len L] [--layers K] "
                        "[--threads T] [--hessian] [--nll]\n");
        return 2;
    }
    qd_cpu_set_threads(threads);
    qd_error err = {0};
    qd_model *m = NULL;
    b.t0 = now_s();
    if (qd_model_open(dir, &m, &err)) {
        fprintf(stderr, "calib-bench: %s\n", qd_error_text(&err));
        return 1;
    }
    fprintf(stderr, "opened in %.2f s, peak RSS %ld MiB\n", now_s() - b.t0, peak_rss_mib());
    int vocab = qd_model_config(m)->vocab_size;
    int32_t *tok = malloc(sizeof(int32_t) * (size_t)rows * (size_t)len);
    if (!tok) return 1;
    uint64_t x = 12345;
    for (size_t i = 0; i < (size_t)rows * (size_t)len; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        tok[i] = (int32_t)((x >> 33) % (uint64_t)vocab);
    }
    b.t0 = now_s();
    int rc = 0;
    if (nll_mode) {
        double *nll = calloc((size_t)rows, sizeof *nll);
        qd_run_opts o = {.on_progress = on_progress, .progress_ctx = &b};
        if (!nll || qd_model_nll(m, tok, rows, len, &o, nll, &err)) rc = 1;
        else {
            double s = 0;
            for (int r = 0; r < rows; r++) s += nll[r];
            printf("perplexity %.4f\n", exp(s / ((double)rows * (len - 1))));
        }
        free(nll);
    } else {
        qd_calib_callbacks cb = {&b, NULL, on_group, NULL};
        qd_calib_opts o = {.run = {.on_progress = on_progress, .progress_ctx = &b},
                           .n_layers = layers};
        if (qd_calib_run(m, tok, rows, len, &o, &cb, &err)) rc = 1;
    }
    if (rc) fprintf(stderr, "calib-bench: %s\n", qd_error_text(&err));
    printf("%s: %d x %d tokens, %.2f s, peak RSS %ld MiB\n", nll_mode ? "nll" : "calibration",
           rows, len, now_s() - b.t0, peak_rss_mib());
    for (int g = 0; g < QD_CALIB_GROUP_COUNT; g++) {
        qd_act_stats_done(&b.stats[g]);
        free(b.h[g]);
    }
    free(tok);
    qd_model_free(m);
    return rc;
}
