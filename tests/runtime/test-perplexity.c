/*
 * test-perplexity.c - perplexity of the bundled models against the independent float64
 * reference values (examples/data/README.md): fp32, bf16/f16 copies, and round-to-nearest
 * weights evaluated through the weight hook.
 */
#include <stdlib.h>
#include <string.h>

#include "fsutil.h"
#include "model.h"
#include "rt-model.h"
#include "test.h"

#define BABY QD_SOURCE_DIR "/examples/models/babyllama"
#define BABY_EVAL QD_SOURCE_DIR "/examples/data/babyllama/eval.safetensors"
#define STORIES QD_SOURCE_DIR "/examples/models/stories260k"
#define STORIES_EVAL QD_SOURCE_DIR "/examples/data/stories260k/eval.safetensors"

/* Perplexity of the first n_rows rows of a token set (all rows when n_rows <= 0). */
static double perplexity(const char *model_dir, const char *data, int64_t n_rows,
                         qd_error *err) {
    qd_model *m = NULL;
    int32_t *tok = NULL;
    int64_t rows = 0, len = 0;
    double ppl = -1.0;
    if (qd_model_open(model_dir, &m, err)) goto done;
    if (rt_load_tokens(data, &tok, &rows, &len, err)) goto done;
    if (n_rows > 0 && n_rows < rows) rows = n_rows;
    double *nll = calloc((size_t)rows, sizeof *nll);
    if (!nll) goto done;
    if (qd_model_nll(m, tok, rows, len, NULL, nll, err) == QD_OK) {
        double s = 0;
        for (int64_t r = 0; r < rows; r++) s += nll[r];
        ppl = exp(s / (double)(rows * (len - 1)));
    }
    free(nll);
done:
    free(tok);
    qd_model_free(m);
    return ppl;
}

QD_TEST(perplexity_babyllama_matches_reference) {
    qd_error err = {0};
    double ppl = perplexity(BABY, BABY_EVAL, 0, &err);
    QD_CHECK_MSG(ppl > 0, "%s", qd_error_text(&err));
    QD_CHECK_NEAR(ppl, 6.8898, 0.00005 * 6.8898);
}

QD_TEST(perplexity_stories260k_matches_reference) {
    qd_error err = {0};
    double ppl = perplexity(STORIES, STORIES_EVAL, 0, &err);
    QD_CHECK_MSG(ppl > 0, "%s", qd_error_text(&err));
    QD_CHECK_NEAR(ppl, 31.3962, 0.00005 * 31.3962);
}

QD_TEST(half_precision_copies_stay_close) {
    qd_error err = {0};
    char dir[64];
    QD_REQUIRE(rt_make_tmpdir("half", dir, sizeof dir, &err) == QD_OK);
    double ref = perplexity(BABY, BABY_EVAL, 0, &err);
    QD_REQUIRE(ref > 0);
    qd_dtype types[2] = {QD_DTYPE_BF16, QD_DTYPE_F16};
    for (int i = 0; i < 2; i++) {
        rt_copy_opts o = {.dtype = types[i], .n_shards = 1};
        QD_CHECK_OK(rt_copy_model(BABY, dir, &o, &err), &err);
        double ppl = perplexity(dir, BABY_EVAL, 0, &err);
        QD_CHECK_MSG(ppl > 0, "%s", qd_error_text(&err));
        QD_CHECK_MSG(fabs(ppl - ref) <= 0.005 * ref, "%s: %.5f vs fp32 %.5f",
                     qd_dtype_name(types[i]), ppl, ref);
        QD_CHECK(ppl != ref); /* the weights really were rounded */
    }
    qd_remove_tree(dir, NULL);
}

/* ---- evaluating replaced weights: round-to-nearest through the hook ---- */

/* The README's RTN (examples/data/README.md): per group of `group` input columns (or the whole
 * row when group <= 0), asymmetric with the range widened to include 0, or symmetric;
 * round-half-to-even; dequantized back to float in place. */
struct rtn {
    int bits, group;
    bool sym;
};

static void rtn_row(float *w, int64_t n, int bits, bool sym) {
    double lo = 0, hi = 0, amax = 0;
    for (int64_t i = 0; i < n; i++) {
        lo = w[i] < lo ? w[i] : lo;
        hi = w[i] > hi ? w[i] : hi;
        amax = fabs(w[i]) > amax ? fabs(w[i]) : amax;
    }
    if (sym) {
        double qmax = (1 << (bits - 1)) - 1, s = amax / qmax;
        if (s == 0) return;
        for (int64_t i = 0; i < n; i++) {
            double q = nearbyint(w[i] / s);
            q = q < -qmax - 1 ? -qmax - 1 : (q > qmax ? qmax : q);
            w[i] = (float)(q * s);
        }
    } else {
        double qmax = (1 << bits) - 1, s = (hi - lo) / qmax;
        if (s == 0) return;
        double z = nearbyint(-lo / s);
        for (int64_t i = 0; i < n; i++) {
            double q = nearbyint(w[i] / s) + z;
            q = q < 0 ? 0 : (q > qmax ? qmax : q);
            w[i] = (float)((q - z) * s);
        }
    }
}

static qd_err rtn_hook(void *ctx, qd_layer_weights *w, qd_error *err) {
    const struct rtn *r = ctx;
    for (int k = 0; k < QD_LINEAR_COUNT; k++) {
        int64_t g = r->group > 0 ? r->group : w->n_in[k];
        for (int64_t o = 0; o < w->n_out[k]; o++)
            for (int64_t c = 0; c < w->n_in[k]; c += g)
                rtn_row(w->w[k] + o * w->n_in[k] + c, g, r->bits, r->sym);
    }
    return QD_OK;
}

static double rtn_perplexity(const char *dir, const char *data, const struct rtn *r) {
    qd_error err = {0};
    qd_model *m = NULL;
    int32_t *tok = NULL;
    int64_t rows = 0, len = 0;
    double ppl = -1;
    if (qd_model_open(dir, &m, &err) || rt_load_tokens(data, &tok, &rows, &len, &err)) goto done;
    double *nll = calloc((size_t)rows, sizeof *nll);
    qd_run_opts o = {.on_weights = rtn_hook, .hook_ctx = (void *)r};
    if (nll && qd_model_nll(m, tok, rows, len, &o, nll, &err) == QD_OK) {
        double s = 0;
        for (int64_t i = 0; i < rows; i++) s += nll[i];
        ppl = exp(s / (double)(rows * (len - 1)));
    }
    free(nll);
done:
    if (ppl < 0) fprintf(stderr, "rtn: %s\n", qd_error_text(&err));
    free(tok);
    qd_model_free(m);
    return ppl;
}

QD_TEST(rtn_weights_through_the_hook_match_reference_perplexities) {
    /* reference values from examples/data/README.md; "a correct RTN reproduces them to about
     * 3 significant digits" (rounding ties may fall differently in float32 weights) */
    struct rtn w4g32 = {4, 32, false}, w4ch = {4, 0, false}, w3chs = {3, 0, true};
    double a = rtn_perplexity(BABY, BABY_EVAL, &w4g32);
    QD_CHECK_NEAR(a, 7.0383, 0.001 * 7.0383);
    double b = rtn_perplexity(STORIES, STORIES_EVAL, &w4ch);
    QD_CHECK_NEAR(b, 34.6363, 0.001 * 34.6363);
    double c = rtn_perplexity(BABY, BABY_EVAL, &w3chs);
    QD_CHECK_NEAR(c, 11.0086, 0.001 * 11.0086);
}

QD_TEST_MAIN()
