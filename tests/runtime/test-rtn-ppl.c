/*
 * test-rtn-ppl.c - RTN through the real quantizer reproduces the reference perplexities of the
 * bundled models (examples/data/README.md, "Reference perplexities").
 *
 * The table was made by an independent float64 implementation: every linear inside the decoder
 * blocks (q/k/v/o, gate/up/down; not embeddings, norms or lm_head) rounded to nearest and
 * dequantized, with "asym" = QD_QRULE_ASYM_ZERO_IN_RANGE (range widened to include 0, integer
 * zero) and "sym" = QD_QRULE_SYM_MAX (absmax / (2^(b-1) - 1)). Here each linear goes through
 * qd_rtn_quantize (scale dtype F32) and its dequantized codes replace the layer's weights
 * through the model runtime's weight hook before the eval set is scored. The README says a
 * correct RTN reproduces the table to about 3 digits (fp32 vs float64 can put a rare tie on
 * the other side); the check is 0.1% relative.
 */
#include <limits.h>
#include <stdlib.h>

#include "model.h"
#include "rt-model.h"
#include "rtn.h"
#include "test.h"

#define BABY QD_SOURCE_DIR "/examples/models/babyllama"
#define BABY_EVAL QD_SOURCE_DIR "/examples/data/babyllama/eval.safetensors"
#define STORIES QD_SOURCE_DIR "/examples/models/stories260k"
#define STORIES_EVAL QD_SOURCE_DIR "/examples/data/stories260k/eval.safetensors"

/* One column of the table. */
typedef struct rtn_column {
    const char *name;
    int bits;
    int group_size; /* -1: per output channel */
    qd_qrule rule;
    double ppl;     /* the reference value */
} rtn_column;

#define ASYM QD_QRULE_ASYM_ZERO_IN_RANGE
#define SYM QD_QRULE_SYM_MAX

static const rtn_column baby_columns[] = {
    {"w8 ch asym", 8, -1, ASYM, 6.8913},   {"w4 g32 asym", 4, 32, ASYM, 7.0383},
    {"w4 g32 sym", 4, 32, SYM, 7.2142},    {"w4 ch asym", 4, -1, ASYM, 7.2615},
    {"w4 ch sym", 4, -1, SYM, 7.5883},     {"w3 g32 asym", 3, 32, ASYM, 7.7489},
    {"w3 ch asym", 3, -1, ASYM, 9.1177},   {"w3 ch sym", 3, -1, SYM, 11.0086},
};

static const rtn_column stories_columns[] = {
    {"w8 ch asym", 8, -1, ASYM, 31.4284},  {"w4 ch asym", 4, -1, ASYM, 34.6363},
    {"w4 ch sym", 4, -1, SYM, 36.8315},    {"w3 ch asym", 3, -1, ASYM, 75.0232},
    {"w3 ch sym", 3, -1, SYM, 132.0107},
};

/* The weight hook: every linear of the layer replaced by its RTN dequantization. */
struct hook_ctx {
    const rtn_column *col;
    int layers_seen;
    long linears_changed;
};

static qd_err rtn_hook(void *arg, qd_layer_weights *w, qd_error *err) {
    struct hook_ctx *h = arg;
    for (int k = 0; k < QD_LINEAR_COUNT; k++) {
        if (w->n_out[k] > INT_MAX || w->n_in[k] > INT_MAX)
            return qd_error_set(err, QD_ERR_TOO_LARGE, "layer %d %s: too large", w->layer,
                                qd_linear_name((qd_linear_kind)k));
        int n = (int)w->n_out[k], in = (int)w->n_in[k];
        float before = w->w[k][0];
        qd_err rc = qd_rtn_fake_quant(w->w[k], n, in, h->col->bits, h->col->group_size,
                                      h->col->rule, QD_DTYPE_F32, err);
        if (rc) {
            qd_error_prefix(err, "layer %d %s: ", w->layer, qd_linear_name((qd_linear_kind)k));
            return rc;
        }
        if (w->w[k][0] != before) h->linears_changed++;
    }
    h->layers_seen++;
    return QD_OK;
}

static void check_model(const char *label, const char *dir, const char *data,
                        const rtn_column *cols, int n_cols) {
    qd_error err = {0};
    qd_model *m = NULL;
    int32_t *tok = NULL;
    int64_t rows = 0, len = 0;
    double *nll = NULL;
    QD_CHECK_OK(qd_model_open(dir, &m, &err), &err);
    QD_CHECK_OK(rt_load_tokens(data, &tok, &rows, &len, &err), &err);
    if (m && tok) nll = calloc((size_t)rows, sizeof *nll);
    if (!nll) goto done;
    int n_layers = qd_model_config(m)->num_hidden_layers;
    for (int c = 0; c < n_cols; c++) {
        struct hook_ctx h = {&cols[c], 0, 0};
        qd_run_opts o = {.on_weights = rtn_hook, .hook_ctx = &h};
        qd_error_clear(&err);
        if (qd_model_nll(m, tok, rows, len, &o, nll, &err) != QD_OK) {
            QD_FAIL_("%s %s: %s", label, cols[c].name, qd_error_text(&err));
            continue;
        }
        double s = 0;
        for (int64_t r = 0; r < rows; r++) s += nll[r];
        double ppl = exp(s / (double)(rows * (len - 1)));
        printf("%-12s %-12s perplexity %9.4f  reference %9.4f\n", label, cols[c].name, ppl,
               cols[c].ppl);
        QD_CHECK_MSG(fabs(ppl - cols[c].ppl) <= 0.001 * cols[c].ppl,
                     "%s %s: perplexity %.4f, reference %.4f", label, cols[c].name, ppl,
                     cols[c].ppl);
        /* the hook really ran on every layer and changed weights */
        QD_CHECK_EQ_INT(h.layers_seen, n_layers);
        QD_CHECK(h.linears_changed > 0);
    }
done:
    free(nll);
    free(tok);
    qd_model_free(m);
}

QD_TEST(rtn_babyllama_matches_reference_perplexities) {
    check_model("babyllama", BABY, BABY_EVAL, baby_columns,
                (int)(sizeof baby_columns / sizeof baby_columns[0]));
}

QD_TEST(rtn_stories260k_matches_reference_perplexities) {
    check_model("stories260k", STORIES, STORIES_EVAL, stories_columns,
                (int)(sizeof stories_columns / sizeof stories_columns[0]));
}

QD_TEST_MAIN()
