/*
 * awq.c - AWQ on the calibration driver: scale search, folding, auto_clip, quantization,
 * and the W4A8 extras (awq.h gives the method and its sources).
 *
 * DESIGN
 * The driver runs each layer in ORIGINAL mode: the float layer is computed once, and the four
 * group callbacks then see the captured float inputs in the order QKV, O, GATE_UP, DOWN. A
 * group callback searches the group's scales against its own module output and folds them at
 * once. That is the same as AutoAWQ's order (search every group on the unmodified layer, then
 * apply all scales) because no search reads a weight that an earlier fold changed: the QKV
 * fold touches the norm and q/k/v columns, the O search reads only o_proj, the O fold divides
 * v_proj's rows, and so on down the layer. Clipping and quantization need the weights after
 * ALL folds (v_proj's rows change in the O fold, up_proj's in the DOWN fold), so they run in
 * layer_end. The group inputs are borrowed only for the duration of a callback, so each group
 * keeps what the clip search needs: the every-stride-th tokens of x / s (at most about
 * 2 * n_sample_tokens rows), plus max |x / s| over all tokens for W4A8's activation scale.
 *
 * Memory per group search: the group's candidate weights (<= 3 linears), the float and the
 * candidate module outputs ([T, hidden] each), and the block functions' own chunked scratch.
 *
 * Threads: the heavy work (block forwards and the clip search's products) goes through the
 * runtime's kernels (ops.h, qd_run_opts.use_ref picks the reference ones), which split their
 * work across the configured threads in pieces fixed by the problem size; every other loop
 * here (the loss and statistics sums included) is sequential and in a fixed order, so the
 * result is bit-identical for the same inputs and kernels whatever the thread count.
 *
 * On a CUDA device (qd_run_opts.kernels is the CUDA table) the block forwards of the QKV and
 * GATE_UP searches go through the table, the O and DOWN searches evaluate each candidate with
 * qd_awq_loss_cuda (fake quantization, GEMM and squared error on the device, x, w and the
 * float output uploaded once per search), and the clip search is qd_awq_clip_search_cuda. The
 * objectives agree with the CPU's to rounding, so a near-tie between two grid points may go
 * the other way; the folding, the final RTN and everything after are the CPU's code.
 */
#include "awq.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"
#include "rtn.h"
#ifdef QD_HAVE_CUDA
#include "model_dev.h"
#include "qd_cuda.h"
#endif

#define AWQ_MAX_GRID 1000

static const qd_run_opts default_run;

static const qd_run_opts *run_or_default(const qd_run_opts *o) {
    return o ? o : &default_run;
}

static void *alloc_floats(int64_t n) {
    return malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
}

static qd_err nomem(qd_error *err, const char *what, int64_t n) {
    return qd_error_set(err, QD_ERR_NOMEM, "AWQ: no memory for %s (%lld floats)", what,
                        (long long)n);
}

static qd_err matmul(const qd_run_opts *o, float *y, const float *x, const float *w,
                     int64_t m, int64_t n, int64_t k, qd_error *err) {
    if (o->kernels && o->kernels->matmul)
        return o->kernels->matmul(o->kernels->ctx, y, x, w, NULL, m, n, k, err);
    if (o->use_ref)
        qd_matmul_ref(y, x, w, NULL, m, n, k);
    else
        qd_matmul_cpu(y, x, w, NULL, m, n, k);
    return QD_OK;
}

#ifdef QD_HAVE_CUDA
/* The CUDA context of the run, or NULL when it is not on a CUDA device. */
static qd_cuda *run_cuda(const qd_run_opts *o) {
    return o->kernels && o->kernels->kind == QD_BACKEND_CUDA ? (qd_cuda *)o->kernels->ctx
                                                             : NULL;
}
#endif

/* Columns per quantization group of a k-wide linear. */
static int64_t group_cols(const qd_awq_params *p, int64_t k) {
    return p->group_size > 0 ? p->group_size : k;
}

/* ---- parameters ---- */

void qd_awq_params_default(qd_awq_params *p) {
    *p = (qd_awq_params){
        .bits = 4,
        .group_size = 128,
        .rule = QD_QRULE_ASYM_MINMAX,
        .scale_dtype = QD_DTYPE_F16,
        .duo_scaling = true,
        .n_grid = 20,
        .apply_clip = true,
        .clip_n_grid = 20,
        .max_shrink = 0.5,
        .n_sample_tokens = 512,
        .w4a8 = false,
    };
}

void qd_awq_params_w4a8(qd_awq_params *p) {
    qd_awq_params_default(p);
    p->rule = QD_QRULE_SYM_MAX;
    p->w4a8 = true;
}

qd_err qd_awq_params_check(const qd_awq_params *p, qd_error *err) {
    if (p->bits != 3 && p->bits != 4)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "AWQ: bits %d (3 or 4 supported)", p->bits);
    if (p->rule != QD_QRULE_ASYM_MINMAX && p->rule != QD_QRULE_SYM_MAX)
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "AWQ: rule %d (ASYM_MINMAX or SYM_MAX supported)", (int)p->rule);
    if (p->w4a8 && (p->bits != 4 || p->rule != QD_QRULE_SYM_MAX))
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "AWQ: W4A8 needs bits 4 and the SYM_MAX rule (got bits %d, rule %d)",
                            p->bits, (int)p->rule);
    if (p->scale_dtype != QD_DTYPE_F32 && p->scale_dtype != QD_DTYPE_F16 &&
        p->scale_dtype != QD_DTYPE_BF16)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "AWQ: scale dtype %s (F32, F16 or BF16)",
                            qd_dtype_name(p->scale_dtype));
    if (p->n_grid < 1 || p->n_grid > AWQ_MAX_GRID)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "AWQ: n_grid %d outside 1..%d", p->n_grid,
                            AWQ_MAX_GRID);
    if (p->clip_n_grid < 1 || p->clip_n_grid > AWQ_MAX_GRID)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "AWQ: clip_n_grid %d outside 1..%d",
                            p->clip_n_grid, AWQ_MAX_GRID);
    if (!(p->max_shrink >= 0.0 && p->max_shrink < 1.0))
        return qd_error_set(err, QD_ERR_INVALID_ARG, "AWQ: max_shrink %g outside [0, 1)",
                            p->max_shrink);
    if (p->n_sample_tokens < 1)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "AWQ: n_sample_tokens %d < 1",
                            p->n_sample_tokens);
    return QD_OK;
}

/* ---- scales ---- */

qd_err qd_awq_w_mean(const float *const *w, const int64_t *n_out, int n_lin, int64_t k,
                     int group_size, float *ret_w_mean, qd_error *err) {
    int64_t g = group_size > 0 ? group_size : k;
    double *acc = calloc((size_t)(k > 0 ? k : 1), sizeof *acc);
    if (!acc) return qd_error_set(err, QD_ERR_NOMEM, "AWQ: no memory for w_mean of %lld columns",
                                  (long long)k);
    int64_t rows = 0;
    for (int i = 0; i < n_lin; i++) {
        for (int64_t r = 0; r < n_out[i]; r++) {
            const float *row = w[i] + r * k;
            for (int64_t g0 = 0; g0 < k; g0 += g) {
                int64_t g1 = g0 + g < k ? g0 + g : k;
                float mx = 0.0f;
                for (int64_t j = g0; j < g1; j++) mx = fabsf(row[j]) > mx ? fabsf(row[j]) : mx;
                float den = mx + 1e-6f;
                for (int64_t j = g0; j < g1; j++) acc[j] += fabsf(row[j]) / den;
            }
        }
        rows += n_out[i];
    }
    for (int64_t c = 0; c < k; c++)
        ret_w_mean[c] = rows > 0 ? (float)(acc[c] / (double)rows) : 0.0f;
    free(acc);
    return QD_OK;
}

void qd_awq_scales(const float *x_mean, const float *w_mean, int64_t k, double ratio, bool duo,
                   float *ret_s) {
    /* NaN propagates through max/min as in torch: then every scale becomes 1 below */
    float mx = -INFINITY, mn = INFINITY;
    bool nan = false;
    for (int64_t c = 0; c < k; c++) {
        double v = pow((double)x_mean[c], ratio);
        if (duo) v /= pow((double)w_mean[c], 1.0 - ratio) + 1e-4;
        if (v < 1e-4) v = 1e-4;
        float s = (float)v;
        ret_s[c] = s;
        if (s != s) nan = true;
        if (s > mx) mx = s;
        if (s < mn) mn = s;
    }
    double norm = nan ? NAN : sqrt((double)mx * (double)mn);
    for (int64_t c = 0; c < k; c++) {
        float s = (float)((double)ret_s[c] / norm);
        ret_s[c] = isfinite(s) ? s : 1.0f; /* "avoid scaling values that overflow" */
    }
}

/* ---- fake quantization (the one definition: RTN's, quantizers/rtn.h) ---- */

/* *ret_q = round-to-nearest of w [n, k] with the params' rule (caller frees). */
static qd_err quantize(const float *w, int64_t n, int64_t k, const qd_awq_params *p,
                       qd_qlinear *ret_q, qd_error *err) {
    return qd_rtn_quantize(w, (int)n, (int)k, p->bits, (int)group_cols(p, k), p->rule,
                           p->scale_dtype, ret_q, err);
}

qd_err qd_awq_fake_quant(const float *w, int64_t n, int64_t k, const float *s,
                         const qd_awq_params *p, float *ret, qd_error *err) {
    for (int64_t r = 0; r < n; r++) {
        const float *src = w + r * k;
        float *dst = ret + r * k;
        if (s)
            for (int64_t c = 0; c < k; c++) dst[c] = src[c] * s[c];
        else if (dst != src)
            memcpy(dst, src, (size_t)k * sizeof(float));
    }
    qd_err rc = qd_rtn_fake_quant(ret, (int)n, (int)k, p->bits, (int)group_cols(p, k), p->rule,
                                  p->scale_dtype, err);
    if (rc) return rc;
    if (s)
        for (int64_t r = 0; r < n; r++)
            for (int64_t c = 0; c < k; c++) ret[r * k + c] /= s[c];
    return QD_OK;
}

/* ---- folding ---- */

/* The linear whose output rows feed group g; -1 where a norm does (QKV, GATE_UP). */
static int prev_linear(qd_calib_group g) {
    if (g == QD_CALIB_O) return QD_LINEAR_V;
    if (g == QD_CALIB_DOWN) return QD_LINEAR_UP;
    return -1;
}

bool qd_awq_can_fold(const qd_layer_weights *w, qd_calib_group g) {
    if ((int)g < 0 || g >= QD_CALIB_GROUP_COUNT) return false;
    if (g != QD_CALIB_O) return true;
    /* AutoAWQ: "v_proj -> o_proj only if v.weight.shape == o.weight.shape" (no GQA) */
    return w->n_out[QD_LINEAR_V] == w->n_out[QD_LINEAR_O] &&
           w->n_in[QD_LINEAR_V] == w->n_in[QD_LINEAR_O];
}

/* w [n, k] columns *= s */
static void scale_cols(float *w, int64_t n, int64_t k, const float *s) {
    for (int64_t r = 0; r < n; r++)
        for (int64_t c = 0; c < k; c++) w[r * k + c] *= s[c];
}

qd_err qd_awq_fold(qd_layer_weights *w, qd_calib_group g, const float *s, qd_error *err) {
    if ((int)g < 0 || g >= QD_CALIB_GROUP_COUNT)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "AWQ: unknown group %d", (int)g);
    if (!qd_awq_can_fold(w, g))
        return qd_error_set(err, QD_ERR_UNSUPPORTED,
                            "AWQ: cannot fold o_proj's scales into v_proj ([%lld, %lld] vs "
                            "o_proj [%lld, %lld]): shapes differ (grouped-query attention)",
                            (long long)w->n_out[QD_LINEAR_V], (long long)w->n_in[QD_LINEAR_V],
                            (long long)w->n_out[QD_LINEAR_O], (long long)w->n_in[QD_LINEAR_O]);
    qd_linear_kind kinds[3];
    int n_lin = qd_calib_group_linears(g, kinds);
    int64_t k = w->n_in[kinds[0]];
    float *norm = g == QD_CALIB_QKV ? w->attn_norm : g == QD_CALIB_GATE_UP ? w->mlp_norm : NULL;
    if (norm) /* scale_ln_fcs: LN.weight /= s (RMSNorm has no bias) */
        for (int64_t c = 0; c < k; c++) norm[c] /= s[c];
    int prev = prev_linear(g);
    if (prev >= 0) { /* scale_fc_fc: fc1 rows (and bias) /= s; n_out[prev] == k here */
        int64_t pk = w->n_in[prev];
        for (int64_t r = 0; r < k; r++) {
            for (int64_t c = 0; c < pk; c++) w->w[prev][r * pk + c] /= s[r];
            if (w->b[prev]) w->b[prev][r] /= s[r];
        }
    }
    for (int i = 0; i < n_lin; i++) scale_cols(w->w[kinds[i]], w->n_out[kinds[i]], k, s);
    return QD_OK;
}

/* ---- auto_clip ---- */

void qd_awq_clip_apply(float *w, int64_t n, int64_t k, int group_size, const float *max) {
    int64_t g = group_size > 0 ? group_size : k, ng = k / g;
    for (int64_t r = 0; r < n; r++)
        for (int64_t c = 0; c < k; c++) {
            float m = max[r * ng + c / g];
            float v = w[r * k + c];
            w[r * k + c] = v > m ? m : (v < -m ? -m : v);
        }
}

#ifdef QD_HAVE_CUDA
/* qd_awq_clip_search on the device: w, x uploaded, the bounds downloaded. */
static qd_err clip_search_cuda(qd_cuda *c, const float *w, int64_t n, int64_t k, const float *x,
                               int64_t n_tok, const qd_awq_params *p, float *ret_max,
                               qd_error *err) {
    int64_t g = group_cols(p, k), nb = n * (k / g);
    void *dw = NULL, *dx = NULL, *dm = NULL;
    qd_err rc;
    if ((rc = qd_cuda_alloc(c, (size_t)(n * k) * sizeof(float), &dw, err)) ||
        (rc = qd_cuda_alloc(c, (size_t)(n_tok * k) * sizeof(float), &dx, err)) ||
        (rc = qd_cuda_alloc(c, (size_t)nb * sizeof(float), &dm, err)) ||
        (rc = qd_cuda_upload(c, dw, w, (size_t)(n * k) * sizeof(float), err)) ||
        (rc = qd_cuda_upload(c, dx, x, (size_t)(n_tok * k) * sizeof(float), err)) ||
        (rc = qd_awq_clip_search_cuda(c, dw, n, k, dx, n_tok, p->bits, g, p->rule,
                                      p->scale_dtype, p->max_shrink, p->clip_n_grid, dm,
                                      err)) ||
        (rc = qd_cuda_download(c, ret_max, dm, (size_t)nb * sizeof(float), err)))
        qd_error_prefix(err, "AWQ clip [%lld, %lld]: ", (long long)n, (long long)k);
    qd_cuda_free(c, dw);
    qd_cuda_free(c, dx);
    qd_cuda_free(c, dm);
    return rc;
}
#endif

qd_err qd_awq_clip_search(const float *w, int64_t n, int64_t k, const float *x, int64_t n_tok,
                          const qd_awq_params *p, const qd_run_opts *o, float *ret_max,
                          qd_error *err) {
    o = run_or_default(o);
    int64_t g = group_cols(p, k);
    if (k % g != 0)
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "AWQ clip: group size %lld does not divide %lld input columns",
                            (long long)g, (long long)k);
    if (n_tok < 1)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "AWQ clip: no tokens");
#ifdef QD_HAVE_CUDA
    if (run_cuda(o)) return clip_search_cuda(run_cuda(o), w, n, k, x, n_tok, p, ret_max, err);
#endif
    qd_err rc = QD_OK;
    int64_t ng = k / g;
    /* AutoAWQ: range(int(max_shrink * n_grid)); shrink 0 (no clip) is always the first */
    int n_shrink = (int)(p->max_shrink * p->clip_n_grid);
    if (n_shrink < 1) n_shrink = 1;

    float *xg = alloc_floats(n_tok * g);     /* [n_tok, g] the group's input columns */
    float *blk = alloc_floats(n * g);        /* [n, g] clamped weights, then Q(.) - w */
    float *wg = alloc_floats(n * g);         /* [n, g] the group's original weights */
    float *e = alloc_floats(n_tok * n);      /* [n_tok, n] x_g (Q(.) - w)^T */
    float *omax = alloc_floats(n);
    double *best = malloc((size_t)n * sizeof *best);
    double *acc = malloc((size_t)n * sizeof *acc); /* [n] sum over tokens of e^2 */
    if (!xg || !blk || !wg || !e || !omax || !best || !acc) {
        rc = nomem(err, "the clip search", n_tok * (g + n) + 2 * n * g);
        goto done;
    }
    for (int64_t gi = 0; gi < ng && !rc; gi++) {
        int64_t c0 = gi * g;
        for (int64_t t = 0; t < n_tok; t++)
            memcpy(xg + t * g, x + t * k + c0, (size_t)g * sizeof(float));
        for (int64_t r = 0; r < n; r++) {
            const float *src = w + r * k + c0;
            float mx = 0.0f;
            for (int64_t j = 0; j < g; j++) {
                wg[r * g + j] = src[j];
                mx = fabsf(src[j]) > mx ? fabsf(src[j]) : mx;
            }
            omax[r] = mx;
            best[r] = 1e9; /* AutoAWQ's min_errs start */
            ret_max[r * ng + gi] = mx;
        }
        for (int i = 0; i < n_shrink; i++) {
            double f = 1.0 - (double)i / p->clip_n_grid;
            for (int64_t r = 0; r < n; r++) {
                float m = (float)(omax[r] * f);
                for (int64_t j = 0; j < g; j++) {
                    float v = wg[r * g + j];
                    blk[r * g + j] = v > m ? m : (v < -m ? -m : v);
                }
            }
            /* blk = Q(clamp(w)) - w: the objective compares with the unclipped weights */
            if ((rc = qd_awq_fake_quant(blk, n, g, NULL, p, blk, err))) break;
            for (int64_t j = 0; j < n * g; j++) blk[j] -= wg[j];
            if ((rc = matmul(o, e, xg, blk, n_tok, n, g, err))) break;
            for (int64_t r = 0; r < n; r++) acc[r] = 0.0;
            for (int64_t t = 0; t < n_tok; t++) /* row by row: e is [n_tok, n] */
                for (int64_t r = 0; r < n; r++) acc[r] += (double)e[t * n + r] * e[t * n + r];
            for (int64_t r = 0; r < n; r++) {
                double err_r = acc[r] / (double)n_tok;
                if (err_r < best[r]) {
                    best[r] = err_r;
                    ret_max[r * ng + gi] = (float)(omax[r] * f);
                }
            }
        }
    }
done:
    free(xg);
    free(blk);
    free(wg);
    free(e);
    free(omax);
    free(best);
    free(acc);
    return rc;
}

/* ---- scale search ---- */

/* The module whose output judges a group's scales. forward() computes it into y with the
 * group's linears replaced by cand[0..n_lin) (each [n_out[i], k]), or the original weights
 * when cand is NULL. */
struct search {
    const qd_awq_params *p;
    const qd_run_opts *o;
    int n_lin;
    const float *w[3];      /* [n_out[i], k] the group's linears */
    int64_t n_out[3];
    int64_t k;
    int64_t y_numel;        /* size of the module output */
    qd_err (*forward)(void *ctx, float *const *cand, float *y, qd_error *err);
    void *ctx;
    /* A single-linear module y = x W^T (+ bias): set, the candidates are evaluated on the
     * CUDA device of o (when there is one) by qd_awq_loss_cuda. */
    const float *x;         /* [n_tok, k] */
    int64_t n_tok;
    const float *bias;      /* [n_out[0]] or NULL */
    /* A block group (QKV, GATE_UP) whose input is on the device (qd_calib_input.x_dev): set,
     * the float output, the candidates and their outputs never leave the device. */
    const struct group_module *dev_block;
    /* x on the device (qd_calib_input.x_dev), for the single-linear loss; NULL: uploaded */
    const float *x_dev;
};

#ifdef QD_HAVE_CUDA
/* The device side of a single-linear search: x, W and the float output without its bias
 * (the candidates' outputs are compared without it) uploaded once, s per candidate. */
struct dev_loss {
    qd_cuda *c;
    void *x, *w, *y, *s;  /* x: owned copy, or NULL when the search's x_dev is used */
    const void *xs;       /* the input the loss reads */
};

static void dev_loss_close(struct dev_loss *d) {
    if (!d->c) return;
    qd_cuda_free(d->c, d->x);
    qd_cuda_free(d->c, d->w);
    qd_cuda_free(d->c, d->y);
    qd_cuda_free(d->c, d->s);
    memset(d, 0, sizeof *d);
}

/* y0: the float output computed on the host, or NULL when x is on the device (S->x_dev):
 * then the output is computed there and *ret_ref (optional otherwise) gets its sum of
 * squares, bias included, as search_scales' reference. */
static qd_err dev_loss_open(const struct search *S, const float *y0, struct dev_loss *d,
                            double *ret_ref, qd_error *err) {
    int64_t n = S->n_out[0], k = S->k;
    float *yr = NULL;
    void *bias = NULL;
    memset(d, 0, sizeof *d);
    d->c = run_cuda(S->o);
    if (y0 && S->bias) {
        yr = alloc_floats(S->y_numel);
        if (!yr) return nomem(err, "the scale search's reference output", S->y_numel);
        for (int64_t t = 0; t < S->n_tok; t++)
            for (int64_t r = 0; r < n; r++) yr[t * n + r] = y0[t * n + r] - S->bias[r];
    }
    qd_err rc = QD_OK;
    if (!S->x_dev &&
        (rc = qd_cuda_alloc(d->c, (size_t)(S->n_tok * k) * sizeof(float), &d->x, err)) == QD_OK)
        rc = qd_cuda_upload(d->c, d->x, S->x, (size_t)(S->n_tok * k) * sizeof(float), err);
    d->xs = S->x_dev ? (const void *)S->x_dev : d->x;
    if (rc || (rc = qd_cuda_alloc(d->c, (size_t)(n * k) * sizeof(float), &d->w, err)) ||
        (rc = qd_cuda_alloc(d->c, (size_t)S->y_numel * sizeof(float), &d->y, err)) ||
        (rc = qd_cuda_alloc(d->c, (size_t)k * sizeof(float), &d->s, err)) ||
        (rc = qd_cuda_upload(d->c, d->w, S->w[0], (size_t)(n * k) * sizeof(float), err)))
        goto done;
    if (y0) {
        rc = qd_cuda_upload(d->c, d->y, yr ? yr : y0, (size_t)S->y_numel * sizeof(float), err);
    } else { /* the reference with the bias, then the compared output without it */
        if (S->bias &&
            ((rc = qd_cuda_alloc(d->c, (size_t)n * sizeof(float), &bias, err)) ||
             (rc = qd_cuda_upload(d->c, bias, S->bias, (size_t)n * sizeof(float), err))))
            goto done;
        double ref = 0.0;
        if ((rc = qd_matmul_cuda(d->c, d->y, d->xs, d->w, bias, S->n_tok, n, k, err)) ||
            (rc = qd_sq_diff_cuda(d->c, d->y, NULL, S->y_numel, &ref, err)))
            goto done;
        if (ret_ref) *ret_ref = ref;
        if (bias) rc = qd_matmul_cuda(d->c, d->y, d->xs, d->w, NULL, S->n_tok, n, k, err);
    }
    if (rc == QD_OK) rc = qd_cuda_sync(d->c, err);
done:
    if (rc) {
        qd_error_prefix(err, "AWQ scale search: ");
        dev_loss_close(d);
    }
    if (bias) qd_cuda_free(run_cuda(S->o), bias);
    free(yr);
    return rc;
}

/* *ret_sse = || x Q(W * s)^T / s - y0 ||^2 (s NULL: Q(W)). */
static qd_err dev_loss_eval(const struct search *S, struct dev_loss *d, const float *s,
                            double *ret_sse, qd_error *err) {
    const qd_awq_params *p = S->p;
    qd_err rc = QD_OK;
    if (s) rc = qd_cuda_upload(d->c, d->s, s, (size_t)S->k * sizeof(float), err);
    if (rc == QD_OK)
        rc = qd_awq_loss_cuda(d->c, d->xs, S->n_tok, d->w, S->n_out[0], S->k, s ? d->s : NULL,
                              p->bits, group_cols(p, S->k), p->rule, p->scale_dtype, d->y,
                              ret_sse, err);
    if (rc) qd_error_prefix(err, "AWQ scale search: ");
    return rc;
}

/* The device side of a block search (QKV: the attention block, GATE_UP: the MLP block):
 * the layer's arrays the block reads, uploaded once; the group's linears as loaded (w) and
 * their candidates (cand); the float output y0, computed on the device. */
struct dev_block {
    qd_cuda *c;
    qd_dev_fwd f;
    qd_dev_layer d;
    float *cand[3], *s, *y0, *y;
    const float *x;     /* the group's input on the device (borrowed) */
    qd_calib_group g;
    qd_linear_kind kinds[3];
    int64_t n_seq, n_tok;
};

static void dev_block_close(struct dev_block *b) {
    if (!b->c) return;
    for (int i = 0; i < 3; i++) qd_cuda_free(b->c, b->cand[i]);
    qd_cuda_free(b->c, b->s);
    qd_cuda_free(b->c, b->y0);
    qd_cuda_free(b->c, b->y);
    qd_dev_layer_free(&b->f, &b->d);
    qd_dev_fwd_done(&b->f);
    memset(b, 0, sizeof *b);
}

/* y = the block with linears[i] replaced by lin[i] (device arrays). */
static qd_err dev_block_forward(struct dev_block *b, int n_lin, float *const *lin, float *y,
                                qd_error *err) {
    qd_dev_layer d = b->d;
    for (int i = 0; i < n_lin; i++) d.w[b->kinds[i]] = lin[i];
    if (b->g == QD_CALIB_QKV) return qd_dev_attention(&b->f, &d, b->x, b->n_seq, y, NULL, err);
    return qd_dev_mlp(&b->f, &d, b->x, b->n_tok, y, NULL, err);
}

static qd_err dev_block_open(const struct search *S, struct dev_block *b, double *ret_ref,
                             qd_error *err);

/* *ret_sse = || block(Q(W_i * s) / s) - y0 ||^2 (s NULL: Q(W_i)). */
static qd_err dev_block_eval(const struct search *S, struct dev_block *b, const float *s,
                             double *ret_sse, qd_error *err) {
    const qd_awq_params *p = S->p;
    qd_err rc = QD_OK;
    if (s) rc = qd_cuda_upload(b->c, b->s, s, (size_t)S->k * sizeof(float), err);
    for (int i = 0; i < S->n_lin && !rc; i++)
        rc = qd_awq_fake_quant_cuda(b->c, b->d.w[b->kinds[i]], S->n_out[i], S->k,
                                    s ? b->s : NULL, p->bits, group_cols(p, S->k), p->rule,
                                    p->scale_dtype, b->cand[i], err);
    if (!rc) rc = dev_block_forward(b, S->n_lin, b->cand, b->y, err);
    /* waits for the stream, so s may change once this returns */
    if (!rc) rc = qd_sq_diff_cuda(b->c, b->y, b->y0, S->y_numel, ret_sse, err);
    if (rc) qd_error_prefix(err, "AWQ scale search: ");
    return rc;
}
#endif

/* Sum of squared differences, in double. */
static double sq_diff(const float *a, const float *b, int64_t n) {
    double acc = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)a[i] - b[i];
        acc += d * d;
    }
    return acc;
}

static double rel(double sse, double ref) {
    if (ref > 0.0) return sse / ref;
    return sse > 0.0 ? INFINITY : 0.0;
}

/* x_mean [k] = mean |x| per column of x [n_tok, k]. */
static qd_err x_mean_of(const float *x, int64_t n_tok, int64_t k, float *ret, qd_error *err) {
    qd_act_stats st;
    qd_err rc = qd_act_stats_init(&st, k, err);
    if (rc) return rc;
    qd_act_stats_add(&st, x, n_tok);
    qd_act_stats_mean_abs(&st, ret);
    qd_act_stats_done(&st);
    return QD_OK;
}

/* Search the ratio grid; ret_s [k] gets the best scales. With scale false only the plain
 * round-to-nearest error is measured (the report's rel_err = rel_err_rtn, ret_s = 1). */
static qd_err search_scales(const struct search *S, const float *x_mean, bool scale,
                            float *ret_s, qd_awq_report *rep, qd_error *err) {
    const qd_awq_params *p = S->p;
    int64_t k = S->k, total = 0;
    for (int i = 0; i < S->n_lin; i++) total += S->n_out[i] * k;
    float *cand_buf = alloc_floats(total);
    float *y0 = alloc_floats(S->y_numel), *y = alloc_floats(S->y_numel);
    float *s = alloc_floats(k), *w_mean = alloc_floats(k);
    float *cand[3] = {NULL, NULL, NULL};
    qd_err rc = QD_OK;
#ifdef QD_HAVE_CUDA
    struct dev_loss dev = {0};
    struct dev_block blk = {0};
#endif
    if (!cand_buf || !y0 || !y || !s || !w_mean) {
        rc = nomem(err, "the scale search", total + 2 * S->y_numel + 2 * k);
        goto done;
    }
    int64_t off = 0;
    for (int i = 0; i < S->n_lin; i++) {
        cand[i] = cand_buf + off;
        off += S->n_out[i] * k;
    }

    double ref = 0.0;
#ifdef QD_HAVE_CUDA
    if (S->dev_block) {
        if ((rc = dev_block_open(S, &blk, &ref, err))) goto done;
    } else if (S->x && S->x_dev && run_cuda(S->o)) {
        if ((rc = dev_loss_open(S, NULL, &dev, &ref, err))) goto done;
    } else
#endif
    {
        if ((rc = S->forward(S->ctx, NULL, y0, err))) goto done;
        for (int64_t i = 0; i < S->y_numel; i++) ref += (double)y0[i] * y0[i];
#ifdef QD_HAVE_CUDA
        if (S->x && run_cuda(S->o) && (rc = dev_loss_open(S, y0, &dev, NULL, err))) goto done;
#endif
    }

    /* s = 1: the error plain round-to-nearest would leave (for the report) */
    double sse_rtn = 0.0;
#ifdef QD_HAVE_CUDA
    if (dev.c) {
        if ((rc = dev_loss_eval(S, &dev, NULL, &sse_rtn, err))) goto done;
    } else if (blk.c) {
        if ((rc = dev_block_eval(S, &blk, NULL, &sse_rtn, err))) goto done;
    } else
#endif
    {
        for (int i = 0; i < S->n_lin && !rc; i++)
            rc = qd_awq_fake_quant(S->w[i], S->n_out[i], k, NULL, p, cand[i], err);
        if (rc || (rc = S->forward(S->ctx, cand, y, err))) goto done;
        sse_rtn = sq_diff(y, y0, S->y_numel);
    }
    rep->rel_err_rtn = rel(sse_rtn, ref);
    rep->scaled = scale;
    rep->ratio_index = 0;
    rep->ratio = 0.0;
    rep->rel_err = rep->rel_err_rtn;
    if (!scale) {
        for (int64_t c = 0; c < k; c++) ret_s[c] = 1.0f;
        goto done;
    }

    if ((rc = qd_awq_w_mean(S->w, S->n_out, S->n_lin, k, p->group_size, w_mean, err)))
        goto done;
    double best = INFINITY;
    int best_i = -1;
    for (int gi = 0; gi < p->n_grid && !rc; gi++) {
        /* AutoAWQ divides a float32 arange by n_grid: the ratio is a float32 value */
        double ratio = (double)((float)gi / (float)p->n_grid);
        qd_awq_scales(x_mean, w_mean, k, ratio, p->duo_scaling, s);
        double sse = 0.0;
#ifdef QD_HAVE_CUDA
        if (dev.c) {
            if ((rc = dev_loss_eval(S, &dev, s, &sse, err))) break;
        } else if (blk.c) {
            if ((rc = dev_block_eval(S, &blk, s, &sse, err))) break;
        } else
#endif
        {
            for (int i = 0; i < S->n_lin && !rc; i++)
                rc = qd_awq_fake_quant(S->w[i], S->n_out[i], k, s, p, cand[i], err);
            if (rc || (rc = S->forward(S->ctx, cand, y, err))) break;
            sse = sq_diff(y, y0, S->y_numel);
        }
        /* AutoAWQ's loss: sum of squares / numel; the first of equal losses wins */
        double loss = sse / (double)S->y_numel;
        if (loss < best) {
            best = loss;
            best_i = gi;
            memcpy(ret_s, s, (size_t)k * sizeof(float));
        }
    }
    if (rc) goto done;
    if (best_i < 0) {
        rc = qd_error_set(err, QD_ERR_INTERNAL,
                          "AWQ scale search: no ratio gave a finite loss (non-finite "
                          "activations or weights?)");
        goto done;
    }
    rep->ratio_index = best_i;
    rep->ratio = (double)((float)best_i / (float)p->n_grid);
    rep->rel_err = rel(best * (double)S->y_numel, ref);
done:
#ifdef QD_HAVE_CUDA
    dev_loss_close(&dev);
    dev_block_close(&blk);
#endif
    free(cand_buf);
    free(y0);
    free(y);
    free(s);
    free(w_mean);
    return rc;
}

static int64_t gcd64(int64_t a, int64_t b) {
    while (b != 0) {
        int64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

int64_t qd_awq_clip_stride(int64_t n_tok, int64_t n_sample, int64_t seq_len) {
    int64_t stride = n_sample > 0 && n_tok / n_sample > 1 ? n_tok / n_sample : 1;
    /* AutoAWQ's stride, max(1, n_tok / n_sample), walks a stream of documents concatenated
     * and cut into blocks, so where a sampled token sits in its block is arbitrary. quantd's
     * rows are aligned sequences that all start at position 0 (BOS, the attention sink, whose
     * activations are far larger than the rest), and rows * seq_len is usually a power of
     * two: then the stride divides seq_len and the sample holds only seq_len / stride
     * positions, position 0 among them. For 128 x 512 tokens that is positions 0, 128, 256,
     * 384 - a quarter of the sample is BOS, and the clip bounds fitted to it lose to plain
     * round-to-nearest. A stride coprime with seq_len visits every position equally often
     * (position 0 at its true rate 1 / seq_len); raising it, not lowering it, keeps the
     * sample no larger than AutoAWQ's. */
    if (seq_len > 1)
        while (stride > 1 && gcd64(stride, seq_len) != 1) stride++;
    return stride;
}

/* Every stride-th token of x [n_tok, k] (stride: qd_awq_clip_stride; seq_len 0 when the
 * tokens are not rows of a sequence) divided by s (NULL: 1) into a new array [*ret_n, k]
 * (caller frees). */
static qd_err sample_scaled(const float *x, int64_t n_tok, int64_t seq_len, int64_t k,
                            const float *s, int n_sample, float **ret, int64_t *ret_n,
                            qd_error *err) {
    int64_t stride = qd_awq_clip_stride(n_tok, n_sample, seq_len);
    int64_t n_sub = (n_tok + stride - 1) / stride;
    float *sub = alloc_floats(n_sub * k);
    if (!sub) return nomem(err, "the clip search's tokens", n_sub * k);
    for (int64_t i = 0; i < n_sub; i++) {
        const float *src = x + i * stride * k;
        float *dst = sub + i * k;
        for (int64_t c = 0; c < k; c++) dst[c] = s ? src[c] / s[c] : src[c];
    }
    *ret = sub;
    *ret_n = n_sub;
    return QD_OK;
}

/* max |x / s| over x [n_tok, k] (s NULL: 1). */
static float amax_scaled(const float *x, int64_t n_tok, int64_t k, const float *s) {
    float m = 0.0f;
    for (int64_t t = 0; t < n_tok; t++)
        for (int64_t c = 0; c < k; c++) {
            float v = fabsf(s ? x[t * k + c] / s[c] : x[t * k + c]);
            m = v > m ? v : m;
        }
    return m;
}

/* ---- a standalone linear ---- */

struct linear_module {
    const qd_run_opts *o;
    const float *x;  /* [n_tok, k] */
    const float *w;  /* [n, k] */
    int64_t n_tok, n, k;
};

static qd_err linear_forward(void *ctx, float *const *cand, float *y, qd_error *err) {
    const struct linear_module *lm = ctx;
    return matmul(lm->o, y, lm->x, cand ? cand[0] : lm->w, lm->n_tok, lm->n, lm->k, err);
}

qd_err qd_awq_quantize_linear(const float *w, int64_t n, int64_t k, const float *x,
                              int64_t n_tok, const qd_awq_params *p, const qd_run_opts *o,
                              float *ret_s, qd_qlinear *ret_q, qd_awq_report *ret_rep,
                              qd_error *err) {
    o = run_or_default(o);
    qd_err rc = qd_awq_params_check(p, err);
    if (rc) return rc;
    if (n < 1 || k < 1 || n_tok < 1)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "AWQ: linear [%lld, %lld] on %lld tokens",
                            (long long)n, (long long)k, (long long)n_tok);
    if (k % group_cols(p, k) != 0)
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "AWQ: group size %d does not divide %lld input columns",
                            p->group_size, (long long)k);
    struct linear_module lm = {o, x, w, n_tok, n, k};
    struct search S = {.p = p, .o = o, .n_lin = 1, .w = {w}, .n_out = {n}, .k = k,
                       .y_numel = n_tok * n, .forward = linear_forward, .ctx = &lm,
                       .x = x, .n_tok = n_tok};
    qd_awq_report rep = {.layer = -1, .group = QD_CALIB_GROUP_COUNT, .n_in = k};
    float *x_mean = alloc_floats(k), *s = alloc_floats(k), *ws = alloc_floats(n * k);
    float *sub = NULL, *maxb = NULL;
    int64_t n_sub = 0;
    qd_qlinear q = {0};
    if (!x_mean || !s || !ws) {
        rc = nomem(err, "a linear", n * k + 2 * k);
        goto done;
    }
    if ((rc = x_mean_of(x, n_tok, k, x_mean, err))) goto done;
    if ((rc = search_scales(&S, x_mean, true, s, &rep, err))) goto done;
    for (int64_t r = 0; r < n; r++)
        for (int64_t c = 0; c < k; c++) ws[r * k + c] = w[r * k + c] * s[c];
    if (p->apply_clip) {
        rc = sample_scaled(x, n_tok, 0, k, s, p->n_sample_tokens, &sub, &n_sub, err);
        if (rc) goto done;
        maxb = alloc_floats(n * (k / group_cols(p, k)));
        if (!maxb) {
            rc = nomem(err, "clip bounds", n * (k / group_cols(p, k)));
            goto done;
        }
        if ((rc = qd_awq_clip_search(ws, n, k, sub, n_sub, p, o, maxb, err))) goto done;
        qd_awq_clip_apply(ws, n, k, p->group_size, maxb);
    }
    if ((rc = quantize(ws, n, k, p, &q, err))) goto done;
    memcpy(ret_s, s, (size_t)k * sizeof(float));
    *ret_q = q;
    if (ret_rep) *ret_rep = rep;
done:
    free(x_mean);
    free(s);
    free(ws);
    free(sub);
    free(maxb);
    return rc;
}

/* ---- the layer flow on the calibration driver ---- */

struct qd_awq {
    const qd_model *m;
    qd_awq_params p;
    qd_awq_sink sink;
    qd_run_opts run;
    /* the layer in progress */
    int layer;
    unsigned seen;                      /* bit g: group g done */
    float *s[QD_CALIB_GROUP_COUNT];     /* [n_in] the group's scales; NULL: unscaled */
    bool folded[QD_CALIB_GROUP_COUNT];  /* s folded (else o_proj keeps it as pre_scale) */
    float *sub[QD_CALIB_GROUP_COUNT];   /* [n_sub, n_in] sampled x / s for the clip search */
    int64_t n_sub[QD_CALIB_GROUP_COUNT];
    float amax[QD_CALIB_GROUP_COUNT];   /* max |x / s| over all tokens (W4A8) */
};

static void reset_layer(qd_awq *a) {
    for (int g = 0; g < QD_CALIB_GROUP_COUNT; g++) {
        free(a->s[g]);
        free(a->sub[g]);
        a->s[g] = a->sub[g] = NULL;
        a->n_sub[g] = 0;
        a->folded[g] = false;
        a->amax[g] = 0.0f;
    }
    a->seen = 0;
    a->layer = -1;
}

qd_err qd_awq_new(const qd_model *m, const qd_awq_params *params, const qd_awq_sink *sink,
                  const qd_run_opts *run, qd_awq **ret, qd_error *err) {
    qd_err rc = qd_awq_params_check(params, err);
    if (rc) return rc;
    if (!sink || !sink->linear)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "AWQ: no sink for the quantized linears");
    const qd_llama_config *c = qd_model_config(m);
    if (params->group_size > 0) {
        const struct {
            const char *what;
            int64_t k;
        } widths[] = {
            {"the hidden size (q/k/v/gate/up_proj inputs)", c->hidden_size},
            {"o_proj's input (heads * head_dim)", (int64_t)c->num_attention_heads * c->head_dim},
            {"the intermediate size (down_proj input)", c->intermediate_size},
        };
        for (size_t i = 0; i < sizeof widths / sizeof widths[0]; i++)
            if (widths[i].k % params->group_size != 0)
                return qd_error_set(err, QD_ERR_INVALID_ARG,
                                    "AWQ: group size %d does not divide %s, %lld",
                                    params->group_size, widths[i].what, (long long)widths[i].k);
    }
    qd_awq *a = calloc(1, sizeof *a);
    if (!a) return qd_error_set(err, QD_ERR_NOMEM, "AWQ: no memory for the context");
    a->m = m;
    a->p = *params;
    a->sink = *sink;
    if (run) a->run = *run;
    a->run.on_weights = NULL; /* the block evaluations only take the kernel choice */
    a->run.on_progress = NULL;
    a->layer = -1;
    *ret = a;
    return QD_OK;
}

void qd_awq_free(qd_awq *a) {
    if (!a) return;
    reset_layer(a);
    free(a);
}

struct group_module {
    qd_awq *a;
    const qd_calib_input *in;
    const qd_layer_weights *w;
    qd_linear_kind kinds[3];
    int n_lin;
};

static qd_err group_forward(void *ctx, float *const *cand, float *y, qd_error *err) {
    const struct group_module *gm = ctx;
    const qd_calib_input *in = gm->in;
    qd_layer_weights wc = *gm->w; /* the layer with the group's linears swapped */
    if (cand)
        for (int i = 0; i < gm->n_lin; i++) wc.w[gm->kinds[i]] = cand[i];
    switch (in->group) {
    case QD_CALIB_QKV:
        return qd_block_attention(gm->a->m, &wc, in->x, in->n_seq, in->seq_len, y, NULL,
                                  &gm->a->run, err);
    case QD_CALIB_GATE_UP:
        return qd_block_mlp(gm->a->m, &wc, in->x, in->n_tok, y, NULL, &gm->a->run, err);
    case QD_CALIB_O:
    case QD_CALIB_DOWN:
        return qd_linear_forward_ex(&wc, gm->kinds[0], in->x, in->n_tok, y, &gm->a->run, err);
    default:
        return qd_error_set(err, QD_ERR_INTERNAL, "AWQ: unknown group %d", (int)in->group);
    }
}

#ifdef QD_HAVE_CUDA
static qd_err dev_block_open(const struct search *S, struct dev_block *b, double *ret_ref,
                             qd_error *err) {
    const struct group_module *gm = S->dev_block;
    const qd_calib_input *in = gm->in;
    memset(b, 0, sizeof *b);
    b->c = in->cuda;
    b->x = in->x_dev;
    b->g = in->group;
    b->n_seq = in->n_seq;
    b->n_tok = in->n_tok;
    for (int i = 0; i < gm->n_lin; i++) b->kinds[i] = gm->kinds[i];
    /* the block reads its group's linears and the one after them (o_proj, down_proj) */
    qd_calib_group next = b->g == QD_CALIB_QKV ? QD_CALIB_O : QD_CALIB_DOWN;
    qd_err rc;
    if ((rc = qd_dev_fwd_init(&b->f, b->c, gm->a->m, in->seq_len, err)) ||
        (rc = qd_dev_layer_reserve(&b->f, gm->w, &b->d, err)) ||
        (rc = qd_dev_layer_refresh(&b->f, gm->w, b->g, &b->d, err)) ||
        (rc = qd_dev_layer_refresh(&b->f, gm->w, next, &b->d, err)))
        goto fail;
    for (int i = 0; i < S->n_lin && !rc; i++)
        rc = qd_cuda_alloc(b->c, (size_t)(S->n_out[i] * S->k) * sizeof(float),
                           (void **)&b->cand[i], err);
    if (rc || (rc = qd_cuda_alloc(b->c, (size_t)S->k * sizeof(float), (void **)&b->s, err)) ||
        (rc = qd_cuda_alloc(b->c, (size_t)S->y_numel * sizeof(float), (void **)&b->y0, err)) ||
        (rc = qd_cuda_alloc(b->c, (size_t)S->y_numel * sizeof(float), (void **)&b->y, err)))
        goto fail;
    float *orig[3] = {NULL, NULL, NULL};
    for (int i = 0; i < S->n_lin; i++) orig[i] = b->d.w[b->kinds[i]];
    if ((rc = dev_block_forward(b, S->n_lin, orig, b->y0, err)) ||
        (rc = qd_sq_diff_cuda(b->c, b->y0, NULL, S->y_numel, ret_ref, err)))
        goto fail;
    return QD_OK;
fail:
    qd_error_prefix(err, "AWQ scale search: ");
    dev_block_close(b);
    return rc;
}
#endif

static qd_err awq_group(void *ctx, const qd_calib_input *in, qd_layer_weights *w,
                        qd_error *err) {
    qd_awq *a = ctx;
    qd_calib_group g = in->group;
    if ((int)g < 0 || g >= QD_CALIB_GROUP_COUNT)
        return qd_error_set(err, QD_ERR_INTERNAL, "AWQ: unknown group %d", (int)g);
    if (g == QD_CALIB_QKV) {
        reset_layer(a);
        a->layer = in->layer;
    }
    if (a->layer != in->layer || a->seen != (1u << g) - 1u)
        return qd_error_set(err, QD_ERR_PRECONDITION,
                            "AWQ: group %s of layer %d out of order (the groups of a layer must "
                            "come in the order qkv, o, gate_up, down)",
                            qd_calib_group_name(g), in->layer);

    struct group_module gm = {.a = a, .in = in, .w = w};
    gm.n_lin = qd_calib_group_linears(g, gm.kinds);
    int64_t k = in->n_in;
    for (int i = 0; i < gm.n_lin; i++)
        if (w->n_in[gm.kinds[i]] != k)
            return qd_error_set(err, QD_ERR_INTERNAL,
                                "AWQ: %s input is %lld wide, %s has %lld input columns",
                                qd_calib_group_name(g), (long long)k,
                                qd_linear_name(gm.kinds[i]), (long long)w->n_in[gm.kinds[i]]);
    bool can_fold = qd_awq_can_fold(w, g);
    /* AutoAWQ leaves o_proj unscaled under GQA; W4A8 can carry its s as pre_quant_scale */
    bool scale = can_fold || a->p.w4a8;

    struct search S = {.p = &a->p, .o = &a->run, .n_lin = gm.n_lin, .k = k,
                       .forward = group_forward, .ctx = &gm};
    for (int i = 0; i < gm.n_lin; i++) {
        S.w[i] = w->w[gm.kinds[i]];
        S.n_out[i] = w->n_out[gm.kinds[i]];
    }
    S.y_numel = in->n_tok * (g == QD_CALIB_O || g == QD_CALIB_DOWN ? S.n_out[0] : w->hidden);
    if (g == QD_CALIB_O || g == QD_CALIB_DOWN) { /* one linear: the device loss can judge it */
        S.x = in->x;
        S.n_tok = in->n_tok;
        S.bias = w->b[gm.kinds[0]];
#ifdef QD_HAVE_CUDA
        if (in->x_dev && run_cuda(&a->run) == in->cuda) S.x_dev = in->x_dev;
#endif
    }
#ifdef QD_HAVE_CUDA
    else if (in->x_dev && run_cuda(&a->run) && run_cuda(&a->run) == in->cuda) {
        S.dev_block = &gm; /* the block's input is on the device: search there */
    }
#endif

    qd_awq_report rep = {.layer = in->layer, .group = g, .n_in = k};
    float *s = alloc_floats(k), *x_mean = alloc_floats(k);
    qd_err rc = QD_OK;
    if (!s || !x_mean) {
        rc = nomem(err, "scales", 2 * k);
        goto fail;
    }
    if ((rc = x_mean_of(in->x, in->n_tok, k, x_mean, err))) goto fail;
    if ((rc = search_scales(&S, x_mean, scale, s, &rep, err))) goto fail;
    if (scale) {
        if (can_fold) {
            if ((rc = qd_awq_fold(w, g, s, err))) goto fail;
        } else { /* W4A8 o_proj: W * s quantized, the activations take pre_scale = 1/s */
            scale_cols(w->w[QD_LINEAR_O], w->n_out[QD_LINEAR_O], k, s);
        }
        a->s[g] = s;
        a->folded[g] = can_fold;
        rep.folded = can_fold;
        rep.scales = s;
        s = NULL;
    }
    if (a->sink.report) a->sink.report(a->sink.ctx, &rep);
    if (a->p.w4a8) a->amax[g] = amax_scaled(in->x, in->n_tok, k, a->s[g]);
    if (a->p.apply_clip) { /* every group has a clipped linear (QKV: v_proj) */
        rc = sample_scaled(in->x, in->n_tok, in->seq_len, k, a->s[g], a->p.n_sample_tokens,
                           &a->sub[g], &a->n_sub[g], err);
        if (rc) goto fail;
    }
    a->seen |= 1u << g;
fail:
    free(s);
    free(x_mean);
    return rc;
}

static qd_calib_group group_of(qd_linear_kind k) {
    switch (k) {
    case QD_LINEAR_Q:
    case QD_LINEAR_K:
    case QD_LINEAR_V: return QD_CALIB_QKV;
    case QD_LINEAR_O: return QD_CALIB_O;
    case QD_LINEAR_GATE:
    case QD_LINEAR_UP: return QD_CALIB_GATE_UP;
    default: return QD_CALIB_DOWN;
    }
}

/* Clip (unless q/k), quantize one linear of the layer, attach its extras and replace the
 * layer's weight by the dequantized one. ret_dmax: max |dequantized W * s|. */
static qd_err finish_linear(qd_awq *a, qd_layer_weights *w, qd_linear_kind kind, qd_qlinear *q,
                            float *ret_dmax, qd_error *err) {
    qd_calib_group g = group_of(kind);
    int64_t n = w->n_out[kind], k = w->n_in[kind];
    float *wk = w->w[kind];
    const float *s = a->s[g];
    qd_err rc = QD_OK;
    /* AutoAWQ: "due to qk bmm, it is hard to clip precisely" - q/k are not clipped */
    if (a->p.apply_clip && kind != QD_LINEAR_Q && kind != QD_LINEAR_K) {
        int64_t nb = n * (k / group_cols(&a->p, k));
        float *maxb = alloc_floats(nb);
        if (!maxb) return nomem(err, "clip bounds", nb);
        rc = qd_awq_clip_search(wk, n, k, a->sub[g], a->n_sub[g], &a->p, &a->run, maxb, err);
        if (!rc) qd_awq_clip_apply(wk, n, k, a->p.group_size, maxb);
        free(maxb);
        if (rc) {
            qd_error_prefix(err, "%s: ", qd_linear_name(kind));
            return rc;
        }
    }
    if ((rc = quantize(wk, n, k, &a->p, q, err))) {
        qd_error_prefix(err, "%s: ", qd_linear_name(kind));
        return rc;
    }
    if (w->b[kind]) {
        q->bias = malloc((size_t)n * sizeof(float));
        if (!q->bias) return nomem(err, "a bias", n);
        memcpy(q->bias, w->b[kind], (size_t)n * sizeof(float));
    }
    bool pre = s && !a->folded[g];
    if (pre) {
        q->pre_scale = malloc((size_t)k * sizeof(float));
        if (!q->pre_scale) return nomem(err, "a pre_quant_scale", k);
        for (int64_t c = 0; c < k; c++) q->pre_scale[c] = 1.0f / s[c];
    }
    if (a->p.w4a8) q->act_scale = a->amax[g] / QD_AWQ_FP8_MAX;
    qd_qlinear_dequant(q, wk);
    float dmax = 0.0f;
    for (int64_t i = 0; i < n * k; i++) dmax = fabsf(wk[i]) > dmax ? fabsf(wk[i]) : dmax;
    *ret_dmax = dmax;
    /* the layer's weight is what the engine effectively multiplies the raw input by */
    if (pre)
        for (int64_t r = 0; r < n; r++)
            for (int64_t c = 0; c < k; c++) wk[r * k + c] *= q->pre_scale[c];
    return QD_OK;
}

static qd_err awq_layer_end(void *ctx, qd_layer_weights *w, const float *x_out, int64_t n_tok,
                            qd_error *err) {
    (void)x_out;
    (void)n_tok;
    qd_awq *a = ctx;
    if (a->layer != w->layer || a->seen != (1u << QD_CALIB_GROUP_COUNT) - 1u)
        return qd_error_set(err, QD_ERR_PRECONDITION,
                            "AWQ: layer %d ended before its four groups were searched",
                            w->layer);
    qd_qlinear q[QD_LINEAR_COUNT];
    float dmax[QD_LINEAR_COUNT] = {0};
    memset(q, 0, sizeof q);
    qd_err rc = QD_OK;
    for (int kind = 0; kind < QD_LINEAR_COUNT && !rc; kind++)
        rc = finish_linear(a, w, (qd_linear_kind)kind, &q[kind], &dmax[kind], err);
    if (!rc && a->p.w4a8) {
        /* ModelOpt's fusion: q/k/v and gate/up share the second-level scale (group max) */
        float qkv = fmaxf(dmax[QD_LINEAR_Q], fmaxf(dmax[QD_LINEAR_K], dmax[QD_LINEAR_V]));
        float gu = fmaxf(dmax[QD_LINEAR_GATE], dmax[QD_LINEAR_UP]);
        for (int kind = 0; kind < QD_LINEAR_COUNT; kind++) {
            qd_calib_group g = group_of((qd_linear_kind)kind);
            float m = g == QD_CALIB_QKV ? qkv : g == QD_CALIB_GATE_UP ? gu : dmax[kind];
            q[kind].weight_scale_2 = m / QD_AWQ_FP8_MAX;
        }
    }
    for (int kind = 0; kind < QD_LINEAR_COUNT && !rc; kind++) {
        rc = a->sink.linear(a->sink.ctx, w->layer, (qd_linear_kind)kind, &q[kind], err);
        if (rc) qd_error_prefix(err, "AWQ sink, %s: ", qd_linear_name((qd_linear_kind)kind));
    }
    if (!rc && a->sink.norms)
        rc = a->sink.norms(a->sink.ctx, w->layer, w->attn_norm, w->mlp_norm, w->hidden, err);
    for (int kind = 0; kind < QD_LINEAR_COUNT; kind++) qd_qlinear_free(&q[kind]);
    reset_layer(a);
    return rc;
}

void qd_awq_callbacks(qd_awq *a, qd_calib_callbacks *ret_cb) {
    *ret_cb = (qd_calib_callbacks){
        .ctx = a, .layer_begin = NULL, .group = awq_group, .layer_end = awq_layer_end};
}

qd_err qd_awq_run(const qd_model *m, const int32_t *tokens, int64_t n_seq, int64_t seq_len,
                  const qd_awq_params *params, const qd_awq_sink *sink,
                  const qd_calib_opts *o, qd_error *err) {
    qd_calib_opts co = {0};
    if (o) co = *o;
    co.propagate = QD_CALIB_PROPAGATE_ORIGINAL; /* AWQ propagates the float layer outputs */
    qd_awq *a = NULL;
    qd_err rc = qd_awq_new(m, params, sink, &co.run, &a, err);
    if (rc) return rc;
    qd_calib_callbacks cb;
    qd_awq_callbacks(a, &cb);
    rc = qd_calib_run(m, tokens, n_seq, seq_len, &co, &cb, err);
    qd_awq_free(a);
    return rc;
}
