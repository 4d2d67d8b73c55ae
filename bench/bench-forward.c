/*
 * bench-forward.c - speed of the calibration forward pass (the pass AWQ, GPTQ, SmoothQuant and
 * static FP8 make over their calibration tokens) on a model directory.
 *
 *   bench-forward MODEL_DIR [--rows 8] [--len 128] [--layers 0] [--threads 0]
 *                 [--propagate original|modified] [--tsv]
 *
 * Runs qd_calib_run over rows x len random token ids (seeded) with no quantizer attached, so
 * what is timed is the driver itself: each layer's weights materialised in fp32, the layer's
 * forward pass, the group inputs captured. Prints:
 *   tokens/s       rows * len / the run's wall time
 *   GFLOP/s        2 * P * tokens / wall time, P = the parameters of the decoder linears that
 *                  ran (q, k, v, o, gate, up, down of each layer; the embedding does no
 *                  multiply and calibration never runs lm_head). Attention's own products
 *                  (QK^T, PV) are not in P; their count is printed apart.
 *   compute GFLOP/s the same over the time spent inside the layers only, without the weight
 *                  loading (bf16 -> fp32 of the next layer) between them
 *   peak RSS       the process's high-water mark (getrusage)
 * With --tsv every figure is one "key<TAB>value" line (bench/run reads those).
 *
 * DESIGN
 * The split between loading and computing comes from the driver's own callbacks: layer_begin
 * fires when a layer's weights are ready, layer_end when its forward pass is done, so the time
 * inside [layer_begin, layer_end] is computation and the rest (the embedding, the weight
 * conversion, freeing) is not. "original" propagation is AWQ's and SmoothQuant's (the layer
 * computed once on its original weights, all four group inputs captured); "modified" is
 * GPTQ's step-by-step order; with no quantizer attached both do the same products.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "calib.h"
#include "model.h"
#include "ops.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double peak_rss_mib(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return 0.0;
    return (double)ru.ru_maxrss / 1024.0; /* Linux reports KiB */
}

/* A decimal integer in [lo, hi], the whole string. */
static bool parse_long(const char *s, long lo, long hi, long *ret) {
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi) return false;
    *ret = v;
    return true;
}

/* What the callbacks measure. */
struct timing {
    double t_begin;      /* when the current layer's weights were ready */
    double compute_s;    /* sum over layers of layer_end - layer_begin */
    int64_t linear_params; /* sum of n_out * n_in of the linears that ran */
    int layers;
};

static qd_err on_layer_begin(void *ctx, qd_layer_weights *w, const float *x_in, int64_t n_tok,
                             qd_error *err) {
    struct timing *t = ctx;
    for (int k = 0; k < QD_LINEAR_COUNT; k++) t->linear_params += w->n_out[k] * w->n_in[k];
    t->t_begin = now_s();
    return QD_OK;
}

static qd_err on_layer_end(void *ctx, qd_layer_weights *w, const float *x_out, int64_t n_tok,
                           qd_error *err) {
    struct timing *t = ctx;
    t->compute_s += now_s() - t->t_begin;
    t->layers++;
    return QD_OK;
}

static void usage(void) {
    fprintf(stderr, "usage: bench-forward MODEL_DIR [--rows 8] [--len 128] [--layers 0]\n"
                    "         [--threads 0] [--propagate original|modified] [--tsv]\n"
                    "  rows, len in 1..65536; layers 0: all; threads 0: every online CPU\n");
}

int main(int argc, char **argv) {
    const char *dir = NULL;
    long rows = 8, len = 128, layers = 0, threads = 0;
    bool tsv = false;
    qd_calib_propagate prop = QD_CALIB_PROPAGATE_ORIGINAL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool ok = true;
        if (strcmp(a, "--tsv") == 0) {
            tsv = true;
            continue;
        }
        if (a[0] != '-' && !dir) {
            dir = a;
            continue;
        }
        if (!v) ok = false;
        else if (strcmp(a, "--rows") == 0) ok = parse_long(v, 1, 65536, &rows);
        else if (strcmp(a, "--len") == 0) ok = parse_long(v, 1, 65536, &len);
        else if (strcmp(a, "--layers") == 0) ok = parse_long(v, 0, QD_MODEL_MAX_LAYERS, &layers);
        else if (strcmp(a, "--threads") == 0) ok = parse_long(v, 0, 256, &threads);
        else if (strcmp(a, "--propagate") == 0) {
            if (strcmp(v, "original") == 0) prop = QD_CALIB_PROPAGATE_ORIGINAL;
            else if (strcmp(v, "modified") == 0) prop = QD_CALIB_PROPAGATE_MODIFIED;
            else ok = false;
        } else ok = false;
        if (!ok) {
            usage();
            return 2;
        }
        i++;
    }
    if (!dir) {
        usage();
        return 2;
    }
    if (threads > 0) qd_cpu_set_threads((int)threads);

    qd_error err = {0};
    qd_model *m = NULL;
    double t0 = now_s();
    if (qd_model_open(dir, &m, &err) != QD_OK) {
        fprintf(stderr, "bench-forward: %s\n", qd_error_text(&err));
        return 1;
    }
    double open_s = now_s() - t0;
    const qd_llama_config *c = qd_model_config(m);
    size_t n_tok = (size_t)rows * (size_t)len;
    int32_t *tok = malloc(n_tok * sizeof *tok);
    if (!tok) {
        fprintf(stderr, "bench-forward: out of memory for %zu token ids\n", n_tok);
        qd_model_free(m);
        return 1;
    }
    uint64_t x = 12345;
    for (size_t i = 0; i < n_tok; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        tok[i] = (int32_t)((x >> 33) % (uint64_t)c->vocab_size);
    }

    struct timing t = {0};
    qd_calib_callbacks cb = {.ctx = &t, .layer_begin = on_layer_begin, .layer_end = on_layer_end};
    qd_calib_opts co = {.propagate = prop, .n_layers = (int)layers};
    t0 = now_s();
    qd_err rc = qd_calib_run(m, tok, rows, len, &co, &cb, &err);
    double run_s = now_s() - t0;
    free(tok);
    if (rc != QD_OK) {
        fprintf(stderr, "bench-forward: %s: %s\n", dir, qd_error_text(&err));
        qd_model_free(m);
        return 1;
    }

    /* causal attention: query i meets keys 0..i, QK^T and PV each 2 flops per pair and dim */
    double pairs = (double)len * (double)(len + 1) / 2.0 * (double)rows;
    double attn_flop = 4.0 * pairs * (double)c->num_attention_heads * (double)c->head_dim *
                       (double)t.layers;
    double lin_flop = 2.0 * (double)t.linear_params * (double)n_tok;
    double gflops = run_s > 0 ? lin_flop / run_s / 1e9 : 0.0;
    double compute_gflops = t.compute_s > 0 ? lin_flop / t.compute_s / 1e9 : 0.0;
    if (tsv) {
        printf("rows\t%ld\nlen\t%ld\ntokens\t%zu\nlayers\t%d\nthreads\t%d\n", rows, len, n_tok,
               t.layers, qd_cpu_threads());
        printf("linear_params\t%lld\n", (long long)t.linear_params);
        printf("open_s\t%.4f\nrun_s\t%.4f\ncompute_s\t%.4f\n", open_s, run_s, t.compute_s);
        printf("tokens_per_s\t%.2f\n", run_s > 0 ? (double)n_tok / run_s : 0.0);
        printf("gflops\t%.3f\ncompute_gflops\t%.3f\n", gflops, compute_gflops);
        printf("attention_gflop\t%.3f\n", attn_flop / 1e9);
        printf("peak_rss_mib\t%.1f\n", peak_rss_mib());
    } else {
        printf("bench-forward: %s, %d of %d layers, %ld x %ld tokens, %d threads\n", dir,
               t.layers, c->num_hidden_layers, rows, len, qd_cpu_threads());
        printf("opened in %.3f s\n", open_s);
        printf("calibration pass: %.3f s (%.3f s inside the layers, %.3f s loading weights)\n",
               run_s, t.compute_s, run_s - t.compute_s);
        printf("tokens/s: %.1f\n", run_s > 0 ? (double)n_tok / run_s : 0.0);
        printf("linear GFLOP: %.2f (2 x %lld params x %zu tokens); attention adds %.2f\n",
               lin_flop / 1e9, (long long)t.linear_params, n_tok, attn_flop / 1e9);
        printf("GFLOP/s: %.2f over the pass, %.2f inside the layers\n", gflops, compute_gflops);
        printf("peak RSS: %.0f MiB\n", peak_rss_mib());
    }
    qd_model_free(m);
    return 0;
}
