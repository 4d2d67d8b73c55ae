/*
 * gptq.c - GPTQ for one linear layer: Hessian accumulation and the blocked, error-compensating
 * quantization of the weight (gptq.h gives the contract).
 *
 * DESIGN
 * The algorithm is IST-DASLab/gptq and AutoGPTQ `fasterquant`, step for step:
 *
 *   1. Per-channel parameters (group_size <= 0) come from W AS GIVEN, before step 2: the
 *      references call find_params(W) before they zero the dead columns. (An explicit
 *      group_size == k is an ordinary group, measured after step 2, as in the references.)
 *   2. Dead columns (diag H == 0, an input that was never active): H[j][j] = 1, W[:, j] = 0.
 *   3. static_groups: one parameter set per contiguous group of G columns, from this W.
 *   4. act_order: perm = columns by decreasing diag(H) (after step 2); W and H are permuted.
 *      torch.argsort leaves the order of equal diagonals unspecified; quantd breaks ties by
 *      column index (a stable sort), so the result is reproducible.
 *   5. H += damp_percent * mean(diag H) * I; U = the upper Cholesky factor of H^-1.
 *   6. Columns in blocks of B (block_size). Inside a block, column j of every row:
 *        q = quant(w_j); e = (w_j - q) / U[j][j]; w_{j+1..i2-1} -= e * U[j][j+1..i2-1]
 *      and after the block the rest of the layer gets the block's errors in one GEMM:
 *        W[:, i2:] -= E[:, i1:i2] U[i1:i2, i2:]
 *   7. Group parameters (no static groups) are computed when column j starts a group
 *      (j % G == 0) from W[:, j:j+G] as it is at that moment in the FULL matrix, which has
 *      the trailing updates of earlier blocks but none of the current block's own updates.
 *      So when G < B, a group that starts inside a block is measured on partly stale
 *      columns. This is the references' behaviour (their find_params reads W, the block's
 *      updates go to the copy W1) and quantd keeps it, so results match theirs; it also means
 *      the result depends on B unless every group starts at a block boundary (B divides G).
 *   8. With act_order the codes go back to the original column order; without static groups
 *      g_idx[c] = (position of c in perm) / G and scales/zeros stay in group (processing)
 *      order; with static groups g_idx is c / G.
 *
 * Implementation choices (same result as the references up to float rounding):
 *   - U without forming H^-1. Let J reverse the index order. Factor J H J = L L^T (one
 *     Cholesky); then H = (J L J)(J L J)^T with J L J upper, so H^-1 = (J L^-1 J)^T (J L^-1 J)
 *     and, a Cholesky factor being unique, U = J L^-1 J. That is spotrf + strtri instead of
 *     the references' potrf + potri + potrf, half the flops, and it cannot fail after the
 *     first factorisation succeeds (the references' second Cholesky of a computed inverse can).
 *     J M J of a row-major k x k matrix is simply the flat array reversed. fp32 throughout,
 *     like the references (H and the factor are k*k floats; doubles would need twice that,
 *     6.6 GB for a 28672-wide down_proj).
 *   - Inside a block the rows are independent (every update of row r uses only row r and U),
 *     so rows are processed in parallel, each walking its columns in order; the group
 *     parameters a block needs are all read at block start, before the block changes
 *     anything, which is exactly the stale-column semantics of step 7.
 *   - The trailing update is qd_matmul_cpu (cblas_sgemm, threaded by the kernels) of the
 *     block's errors E [n, b] with U[i1:i2, i2:]^T, in column chunks, subtracted from W.
 *   - The result does not depend on the thread count: rows are independent, the Hessian's
 *     X^T X and the trailing GEMM are cut into fixed tiles (kernels/cpu/matmul.c), and the
 *     factorisation runs on OpenBLAS made single-threaded first (its parallel spotrf blocks
 *     the work by its own thread count, which OPENBLAS_NUM_THREADS or the machine sets).
 *   - Scales are rounded to the scale dtype before the codes are chosen (kernels/quant.h), and
 *     the error feedback uses the dequantized value of the stored scale, so what GPTQ
 *     compensates is what the engine will compute. (AutoGPTQ quantizes with the fp32 scale
 *     and re-derives the codes from the fp16 scale when packing, which can disagree.)
 *   - A Hessian that is not positive definite after damping is an error by default; with
 *     damp_auto_increment > 0 the damping grows as in GPTQModel (while it is below 1).
 */
#include "gptq.h"

#include <lapacke.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/cpu.h" /* qd_cpu_blas_init */
#include "ops.h"

/* Rows of a calibration batch scaled and multiplied per BLAS call (scratch: rows * k floats). */
#define QD_GPTQ_HESS_ROWS 512
/* Columns of the trailing update per GEMM call (scratch: n * cols floats). */
#define QD_GPTQ_UPDATE_COLS 1024
/* Below this many multiply-adds a block's column loop runs on the calling thread. */
#define QD_GPTQ_MIN_PARALLEL ((int64_t)1 << 16)

/* ---- Hessian ---- */

qd_err qd_gptq_hessian_init(qd_gptq_hessian *hs, int k, qd_error *err) {
    if (!hs) return qd_error_set(err, QD_ERR_INVALID_ARG, "gptq hessian: NULL");
    if (k < 1 || k > QD_GPTQ_MAX_K)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "gptq hessian: in_features %d outside "
                            "1..%d", k, QD_GPTQ_MAX_K);
    float *h = calloc((size_t)k * (size_t)k, sizeof *h);
    if (!h)
        return qd_error_set(err, QD_ERR_NOMEM, "gptq hessian: cannot allocate %d x %d floats",
                            k, k);
    hs->k = k;
    hs->h = h;
    hs->n = 0;
    return QD_OK;
}

void qd_gptq_hessian_done(qd_gptq_hessian *hs) {
    if (!hs) return;
    free(hs->h);
    memset(hs, 0, sizeof *hs);
}

qd_err qd_gptq_hessian_add(qd_gptq_hessian *hs, const float *x, int64_t n_tok, int64_t n_seq,
                           qd_error *err) {
    if (!hs || !hs->h)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "gptq hessian: not initialised");
    if (n_seq < 1)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "gptq hessian: a batch must hold at "
                            "least one sequence (got %lld)", (long long)n_seq);
    if (n_tok < 0 || (n_tok > 0 && !x))
        return qd_error_set(err, QD_ERR_INVALID_ARG, "gptq hessian: bad batch (%lld rows, x %s)",
                            (long long)n_tok, x ? "set" : "NULL");
    if (hs->n > INT64_MAX - n_seq)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "gptq hessian: sample count overflows");
    const int64_t k = hs->k;
    /* A NaN or Inf would poison all of H; find it before H changes. */
    for (int64_t t = 0; t < n_tok; t++)
        for (int64_t c = 0; c < k; c++)
            if (!isfinite(x[t * k + c]))
                return qd_error_set(err, QD_ERR_INVALID_ARG, "gptq hessian: non-finite input "
                                    "%g at row %lld, column %lld", (double)x[t * k + c],
                                    (long long)t, (long long)c);
    int64_t rows = n_tok < QD_GPTQ_HESS_ROWS ? n_tok : QD_GPTQ_HESS_ROWS;
    float *xs = NULL;
    if (rows > 0) {
        xs = malloc((size_t)rows * (size_t)k * sizeof *xs);
        if (!xs)
            return qd_error_set(err, QD_ERR_NOMEM, "gptq hessian: cannot allocate %lld x %lld "
                                "scratch", (long long)rows, (long long)k);
    }

    /* The reference's running update: H *= n / (n + b); n += b; x *= sqrt(2 / n); H += x^T x */
    int64_t n_new = hs->n + n_seq;
    float shrink = (float)((double)hs->n / (double)n_new);
    for (int64_t i = 0; i < k * k; i++) hs->h[i] *= shrink;
    hs->n = n_new;
    float sc = (float)sqrt(2.0 / (double)n_new);
    for (int64_t t0 = 0; t0 < n_tok; t0 += rows) {
        int64_t m = n_tok - t0 < rows ? n_tok - t0 : rows;
        const float *src = x + t0 * k;
        for (int64_t i = 0; i < m * k; i++) xs[i] = sc * src[i];
        qd_xtx_accum_cpu(hs->h, xs, m, k);
    }
    free(xs);
    return QD_OK;
}

/* ---- quantization rule (kernels/quant.h: the one definition GPTQ and RTN share) ---- */

/* The stored (scale, zero) of one row's group from its values v[0..len-1] (find_params). */
static qd_qparams group_params(const float *v, int64_t len, const qd_gptq_params *p) {
    return qd_quant_params(p->rule, p->bits, qd_qstats_of(v, len, 1), p->scale_dtype);
}

static void store_params(qd_qparams qp, float *ret_s, float *ret_z) {
    *ret_s = qp.scale;
    *ret_z = qp.zero;
}

/* ---- quantization ---- */

void qd_gptq_params_init(qd_gptq_params *p) {
    memset(p, 0, sizeof *p);
    p->bits = 4;
    p->group_size = 128;
    p->rule = QD_QRULE_SYM_HALF;
    p->scale_dtype = QD_DTYPE_F16;
    p->damp_percent = 0.01;
    p->damp_auto_increment = 0.0;
    p->act_order = false;
    p->static_groups = false;
    p->block_size = 128;
}

static qd_err check_args(const float *w, int n, int k, const qd_gptq_hessian *hs,
                         const qd_gptq_params *p, qd_qlinear *ret_q, qd_error *err) {
    if (!w || !hs || !p || !ret_q)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "gptq: NULL argument");
    if (n < 1 || k < 1 || k > QD_GPTQ_MAX_K)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "gptq: bad weight shape [%d, %d]", n, k);
    if (!hs->h || hs->k != k)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "gptq: the Hessian is for in_features %d "
                            "but the weight is [%d, %d]", hs->h ? hs->k : 0, n, k);
    if (hs->n < 1)
        return qd_error_set(err, QD_ERR_PRECONDITION, "gptq: no calibration batch was added "
                            "to the Hessian");
    if (p->bits < 2 || p->bits > 8)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "gptq: bits %d outside 2..8", p->bits);
    if (!qd_qrule_valid((int)p->rule))
        return qd_error_set(err, QD_ERR_INVALID_ARG, "gptq: unknown quantization rule %d",
                            (int)p->rule);
    if (p->scale_dtype != QD_DTYPE_F32 && p->scale_dtype != QD_DTYPE_F16 &&
        p->scale_dtype != QD_DTYPE_BF16)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "gptq: scale dtype %s is not F32, F16 or "
                            "BF16", qd_dtype_name(p->scale_dtype) ? qd_dtype_name(p->scale_dtype)
                                                                  : "(invalid)");
    if (p->group_size > 0 && k % p->group_size != 0)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "gptq: group_size %d does not divide "
                            "in_features %d", p->group_size, k);
    if (p->block_size < 1)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "gptq: block_size %d must be >= 1",
                            p->block_size);
    if (!isfinite(p->damp_percent) || p->damp_percent < 0)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "gptq: damp_percent %g must be >= 0",
                            p->damp_percent);
    if (!isfinite(p->damp_auto_increment) || p->damp_auto_increment < 0)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "gptq: damp_auto_increment %g must be "
                            ">= 0", p->damp_auto_increment);
    for (int64_t i = 0; i < (int64_t)n * k; i++)
        if (!isfinite(w[i]))
            return qd_error_set(err, QD_ERR_INVALID_ARG, "gptq: non-finite weight %g at [%lld, "
                                "%lld]", (double)w[i], (long long)(i / k), (long long)(i % k));
    const int64_t kk = k;
    for (int64_t i = 0; i < kk * kk; i++)
        if (!isfinite(hs->h[i]))
            return qd_error_set(err, QD_ERR_INVALID_ARG, "gptq: non-finite Hessian entry at "
                                "[%lld, %lld]", (long long)(i / kk), (long long)(i % kk));
    return QD_OK;
}

struct diag_key {
    float d;
    int col;
};

/* Decreasing diagonal, ties by increasing column: a total order, so qsort is deterministic. */
static int cmp_diag_desc(const void *a, const void *b) {
    const struct diag_key *x = a, *y = b;
    if (x->d != y->d) return x->d > y->d ? -1 : 1;
    return (x->col > y->col) - (x->col < y->col);
}

/*
 * ret_u [k, k] row-major: upper triangle = U, the upper Cholesky factor of (Hp + damp I)^-1,
 * Hp = H permuted by perm with dead diagonals set to 1 (the strict lower triangle is scratch).
 * Returns 0, or the LAPACK info of a failed factorisation (> 0: not positive definite).
 */
static int inverse_factor(const qd_gptq_hessian *hs, const int *perm, float damp, float *ret_u) {
    const int64_t k = hs->k;
    const float *h = hs->h;
    float *u = ret_u;
    /* u = J Hp J: element (a, b) of Hp lands at the mirrored flat position. */
    for (int64_t a = 0; a < k; a++) {
        const float *hrow = h + (int64_t)perm[a] * k;
        float *dst = u + (k - 1 - a) * k + (k - 1);
        for (int64_t b = 0; b < k; b++) dst[-b] = hrow[perm[b]];
        float *dd = u + (k - 1 - a) * k + (k - 1 - a);
        if (*dd == 0.0f) *dd = 1.0f;
        *dd += damp;
    }
    /* Symmetric, so row-major is column-major: LAPACK's 'U' factor R = U_cm^T U_cm is, seen
     * row-major, L L^T with L = U_cm^T lower; strtri inverts it in place to L^-1. OpenBLAS
     * single-threaded first, whoever accumulated H (see DESIGN). */
    qd_cpu_blas_init();
    lapack_int info = LAPACKE_spotrf(LAPACK_COL_MAJOR, 'U', (lapack_int)k, u, (lapack_int)k);
    if (info != 0) return (int)info;
    info = LAPACKE_strtri(LAPACK_COL_MAJOR, 'U', 'N', (lapack_int)k, u, (lapack_int)k);
    if (info != 0) return (int)info;
    /* U = J L^-1 J: reverse the flat array. */
    for (int64_t i = 0, j = k * k - 1; i < j; i++, j--) {
        float t = u[i];
        u[i] = u[j];
        u[j] = t;
    }
    return 0;
}

/* Everything the per-row block worker reads; the arrays are shared, rows are disjoint. */
struct block_ctx {
    int64_t n, k;
    int64_t i1, i2;           /* the block: processing positions [i1, i2) */
    int64_t g;                /* group size (k per channel) */
    int64_t n_groups;
    int mode;                 /* how a position finds its parameter set, enum below */
    const int *perm;          /* [k] processing position -> original column */
    const qd_gptq_params *p;
    float *wp;                /* [n, k] W in processing order, being updated */
    const float *u;           /* [k, k] upper factor of H^-1 (upper triangle) */
    float *e;                 /* [n, i2 - i1] the block's scaled errors */
    uint8_t *codes;           /* [n, k] original column order */
    float *scales, *zeros;    /* [n, n_groups] */
    float *dequant;           /* [n, k] original column order, or NULL */
    double *row_loss;         /* [n] */
};

enum { PARAMS_PER_CHANNEL, PARAMS_STATIC, PARAMS_DYNAMIC };

/* Parameter set of processing position j. */
static int64_t group_of(const struct block_ctx *c, int64_t j) {
    switch (c->mode) {
    case PARAMS_STATIC: return c->perm[j] / c->g;
    case PARAMS_DYNAMIC: return j / c->g;
    default: return 0;
    }
}

/* y[0..len-1] -= a * x[...]: unrolled so the compiler's straight-line (SLP) vectoriser turns
 * it into SIMD at -O2; each element still gets exactly one multiply and one subtract, so the
 * result is the plain loop's. */
static void sub_scaled(float *restrict y, const float *restrict x, float a, int64_t len) {
    int64_t i = 0;
    for (; i + 8 <= len; i += 8) {
        y[i + 0] -= a * x[i + 0];
        y[i + 1] -= a * x[i + 1];
        y[i + 2] -= a * x[i + 2];
        y[i + 3] -= a * x[i + 3];
        y[i + 4] -= a * x[i + 4];
        y[i + 5] -= a * x[i + 5];
        y[i + 6] -= a * x[i + 6];
        y[i + 7] -= a * x[i + 7];
    }
    for (; i < len; i++) y[i] -= a * x[i];
}

static void block_rows(void *arg, int64_t r0, int64_t r1) {
    const struct block_ctx *c = arg;
    const int64_t k = c->k, i1 = c->i1, i2 = c->i2, cnt = i2 - i1;
    for (int64_t r = r0; r < r1; r++) {
        float *wr = c->wp + r * k;
        float *sr = c->scales + r * c->n_groups, *zr = c->zeros + r * c->n_groups;
        /* Groups starting in this block, measured before the block changes the row. */
        if (c->mode == PARAMS_DYNAMIC)
            for (int64_t j = (i1 + c->g - 1) / c->g * c->g; j < i2; j += c->g)
                store_params(group_params(wr + j, c->g, c->p), &sr[j / c->g], &zr[j / c->g]);
        double loss = 0;
        for (int64_t j = i1; j < i2; j++) {
            int64_t gi = group_of(c, j);
            qd_qparams qp = {sr[gi], zr[gi]};
            float w = wr[j];
            uint8_t code = qd_quant_code(c->p->rule, c->p->bits, qp, w);
            float q = qd_quant_dequant(qp, code);
            const float *urow = c->u + j * k;
            float d = urow[j];
            float diff = w - q;
            float e = diff / d;
            loss += (double)diff * diff / ((double)d * d) / 2;
            sub_scaled(wr + j + 1, urow + j + 1, e, i2 - j - 1);
            c->e[r * cnt + (j - i1)] = e;
            int64_t col = c->perm[j];
            c->codes[r * k + col] = code;
            if (c->dequant) c->dequant[r * k + col] = q;
        }
        c->row_loss[r] += loss;
    }
}

struct sub_ctx {
    float *wp;
    const float *t;
    int64_t k, c0, cw;
};

/* wp[r, c0:c0+cw] -= t[r, 0:cw] */
static void sub_rows(void *arg, int64_t r0, int64_t r1) {
    const struct sub_ctx *c = arg;
    for (int64_t r = r0; r < r1; r++) {
        float *dst = c->wp + r * c->k + c->c0;
        const float *src = c->t + r * c->cw;
        for (int64_t i = 0; i < c->cw; i++) dst[i] -= src[i];
    }
}

/* W[:, i2:] -= E U[i1:i2, i2:], in column chunks through the cpu GEMM. ut: [k - i2, cnt]
 * scratch for U's slice transposed, tmp: [n, QD_GPTQ_UPDATE_COLS] scratch. */
static void trailing_update(const struct block_ctx *c, float *ut, float *tmp) {
    const int64_t k = c->k, i1 = c->i1, i2 = c->i2, cnt = i2 - i1;
    for (int64_t col = i2; col < k; col++)
        for (int64_t b = 0; b < cnt; b++) ut[(col - i2) * cnt + b] = c->u[(i1 + b) * k + col];
    for (int64_t c0 = i2; c0 < k; c0 += QD_GPTQ_UPDATE_COLS) {
        int64_t cw = k - c0 < QD_GPTQ_UPDATE_COLS ? k - c0 : QD_GPTQ_UPDATE_COLS;
        /* tmp [n, cw] = E [n, cnt] * (ut rows c0-i2 .. +cw) [cw, cnt]^T */
        qd_matmul_cpu(tmp, c->e, ut + (c0 - i2) * cnt, NULL, c->n, cw, cnt);
        struct sub_ctx s = {c->wp, tmp, k, c0, cw};
        int t = c->n * cw < QD_GPTQ_MIN_PARALLEL ? 1 : 0;
        qd_cpu_parallel_for(t, c->n, sub_rows, &s);
    }
}

qd_err qd_gptq_quantize(const float *w, int n, int k, const qd_gptq_hessian *hs,
                        const qd_gptq_params *p, qd_qlinear *ret_q, float *ret_dequant,
                        qd_gptq_stats *ret_stats, qd_error *err) {
    qd_err rc = check_args(w, n, k, hs, p, ret_q, err);
    if (rc != QD_OK) return rc;

    const int64_t nn = n, kk = k;
    const bool per_channel = p->group_size <= 0;
    const int64_t g = per_channel ? kk : p->group_size;
    const int64_t n_groups = kk / g;
    int mode = per_channel ? PARAMS_PER_CHANNEL
                           : p->static_groups ? PARAMS_STATIC : PARAMS_DYNAMIC;
    const int64_t bsz = p->block_size < k ? p->block_size : k;

    qd_qlinear q;
    memset(&q, 0, sizeof q);
    int *perm = NULL;
    bool *dead = NULL;
    struct diag_key *keys = NULL;
    float *wp = NULL, *u = NULL, *e = NULL, *ut = NULL, *tmp = NULL;
    double *row_loss = NULL;

    rc = qd_qlinear_alloc(&q, n, k, QD_QTYPE_INT, p->bits, (int)g, p->rule, err);
    if (rc != QD_OK) goto fail;
    perm = malloc((size_t)k * sizeof *perm);
    dead = malloc((size_t)k * sizeof *dead);
    wp = malloc((size_t)nn * (size_t)kk * sizeof *wp);
    u = malloc((size_t)kk * (size_t)kk * sizeof *u);
    e = malloc((size_t)nn * (size_t)bsz * sizeof *e);
    ut = malloc((size_t)kk * (size_t)bsz * sizeof *ut);
    /* tmp: the trailing update's product chunk, and a row segment for static groups */
    size_t tmp_len = (size_t)nn * (size_t)(kk < QD_GPTQ_UPDATE_COLS ? kk : QD_GPTQ_UPDATE_COLS);
    if (tmp_len < (size_t)kk) tmp_len = (size_t)kk;
    tmp = malloc(tmp_len * sizeof *tmp);
    row_loss = calloc((size_t)nn, sizeof *row_loss);
    if (mode == PARAMS_DYNAMIC && p->act_order) q.g_idx = malloc((size_t)k * sizeof *q.g_idx);
    if (!perm || !dead || !wp || !u || !e || !ut || !tmp || !row_loss ||
        (mode == PARAMS_DYNAMIC && p->act_order && !q.g_idx)) {
        rc = qd_error_set(err, QD_ERR_NOMEM, "gptq: cannot allocate the work buffers of a "
                          "[%d, %d] layer", n, k);
        goto fail;
    }

    /* 1. per channel: parameters from W as given (before dead columns are zeroed) */
    if (mode == PARAMS_PER_CHANNEL)
        for (int64_t r = 0; r < nn; r++)
            store_params(group_params(w + r * kk, kk, p), &q.scales[r], &q.zeros[r]);

    /* 2. dead columns */
    int n_dead = 0;
    double diag_sum = 0;
    for (int64_t j = 0; j < kk; j++) {
        float d = hs->h[j * kk + j];
        dead[j] = d == 0.0f;
        n_dead += dead[j];
        diag_sum += dead[j] ? 1.0 : (double)d;
    }

    /* 3. static groups: contiguous groups of the dead-zeroed, unpermuted W */
    if (mode == PARAMS_STATIC) {
        float *seg = tmp; /* g <= k floats */
        for (int64_t r = 0; r < nn; r++)
            for (int64_t gi = 0; gi < n_groups; gi++) {
                for (int64_t i = 0; i < g; i++) {
                    int64_t col = gi * g + i;
                    seg[i] = dead[col] ? 0.0f : w[r * kk + col];
                }
                store_params(group_params(seg, g, p), &q.scales[r * n_groups + gi],
                             &q.zeros[r * n_groups + gi]);
            }
    }

    /* 4. processing order */
    for (int j = 0; j < k; j++) perm[j] = j;
    if (p->act_order) {
        keys = malloc((size_t)k * sizeof *keys);
        if (!keys) {
            rc = qd_error_set(err, QD_ERR_NOMEM, "gptq: cannot allocate %d sort keys", k);
            goto fail;
        }
        for (int j = 0; j < k; j++) {
            keys[j].d = dead[j] ? 1.0f : hs->h[(int64_t)j * kk + j];
            keys[j].col = j;
        }
        qsort(keys, (size_t)k, sizeof *keys, cmp_diag_desc);
        for (int j = 0; j < k; j++) perm[j] = keys[j].col;
        free(keys);
        keys = NULL;
    }
    for (int64_t r = 0; r < nn; r++)
        for (int64_t j = 0; j < kk; j++) {
            int64_t col = perm[j];
            wp[r * kk + j] = dead[col] ? 0.0f : w[r * kk + col];
        }

    /* 5. damping and the factor of H^-1 */
    double damp_pct = p->damp_percent;
    double mean_diag = diag_sum / (double)kk;
    for (;;) {
        int info = inverse_factor(hs, perm, (float)(damp_pct * mean_diag), u);
        if (info == 0) break;
        if (p->damp_auto_increment > 0 && damp_pct + p->damp_auto_increment < 1.0) {
            damp_pct += p->damp_auto_increment;
            continue;
        }
        rc = qd_error_set(err, QD_ERR_PRECONDITION, "gptq: the [%d, %d] Hessian plus damping "
                          "%g * mean(diag) = %g is not positive definite (Cholesky failed); "
                          "raise damp_percent or set damp_auto_increment", k, k, damp_pct,
                          damp_pct * mean_diag);
        goto fail;
    }

    /* 6-7. the blocked column loop */
    struct block_ctx c = {
        .n = nn, .k = kk, .g = g, .n_groups = n_groups, .mode = mode, .perm = perm, .p = p,
        .wp = wp, .u = u, .e = e, .codes = q.codes, .scales = q.scales, .zeros = q.zeros,
        .dequant = ret_dequant, .row_loss = row_loss,
    };
    for (int64_t i1 = 0; i1 < kk; i1 += bsz) {
        c.i1 = i1;
        c.i2 = i1 + bsz < kk ? i1 + bsz : kk;
        int64_t cnt = c.i2 - i1;
        int t = nn * cnt * cnt < QD_GPTQ_MIN_PARALLEL ? 1 : 0;
        qd_cpu_parallel_for(t, nn, block_rows, &c);
        if (c.i2 < kk) trailing_update(&c, ut, tmp);
    }

    /* 8. g_idx of act-order groups: the group a column was quantized in */
    if (q.g_idx)
        for (int64_t j = 0; j < kk; j++) q.g_idx[perm[j]] = (int32_t)(j / g);

    if (ret_stats) {
        double loss = 0;
        for (int64_t r = 0; r < nn; r++) loss += row_loss[r];
        ret_stats->loss = loss;
        ret_stats->damp_percent = damp_pct;
        ret_stats->n_dead = n_dead;
    }
    *ret_q = q;
    rc = QD_OK;
    goto done;

fail:
    qd_qlinear_free(&q);
done:
    free(perm);
    free(dead);
    free(keys);
    free(wp);
    free(u);
    free(e);
    free(ut);
    free(tmp);
    free(row_loss);
    return rc;
}

/* ---- on a CUDA device ---- */

#ifdef QD_HAVE_CUDA
#include "qd_cuda.h"

/* Rows of a calibration batch uploaded per step (device scratch: rows * k floats). */
#define QD_GPTQ_DEV_ROWS 8192

qd_err qd_gptq_hessian_dev_init(qd_gptq_hessian_dev *hs, struct qd_cuda *c, int k,
                                qd_error *err) {
    if (!hs || !c) return qd_error_set(err, QD_ERR_INVALID_ARG, "gptq hessian: NULL");
    memset(hs, 0, sizeof *hs);
    if (k < 1 || k > QD_GPTQ_MAX_K)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "gptq hessian: in_features %d outside "
                            "1..%d", k, QD_GPTQ_MAX_K);
    size_t bytes = (size_t)k * (size_t)k * sizeof(float);
    void *h = NULL;
    qd_err rc = qd_cuda_alloc(c, bytes, &h, err);
    if (rc == QD_OK) rc = qd_cuda_fill(c, h, 0, bytes, err);
    if (rc != QD_OK) {
        qd_cuda_free(c, h);
        qd_error_prefix(err, "gptq hessian [%d, %d]: ", k, k);
        return rc;
    }
    hs->cuda = c;
    hs->k = k;
    hs->h = h;
    return QD_OK;
}

void qd_gptq_hessian_dev_done(qd_gptq_hessian_dev *hs) {
    if (!hs) return;
    if (hs->cuda) qd_cuda_free(hs->cuda, hs->h);
    memset(hs, 0, sizeof *hs);
}

qd_err qd_gptq_hessian_dev_add(qd_gptq_hessian_dev *hs, const float *x, int64_t n_tok,
                               int64_t n_seq, qd_error *err) {
    if (!hs || !hs->h)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "gptq hessian: not initialised");
    if (n_seq < 1)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "gptq hessian: a batch must hold at "
                            "least one sequence (got %lld)", (long long)n_seq);
    if (n_tok < 1 || !x)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "gptq hessian: bad batch (%lld rows, x %s)",
                            (long long)n_tok, x ? "set" : "NULL");
    if (hs->n > INT64_MAX - n_seq)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "gptq hessian: sample count overflows");
    const int64_t k = hs->k;
    for (int64_t i = 0; i < n_tok * k; i++)
        if (!isfinite(x[i]))
            return qd_error_set(err, QD_ERR_INVALID_ARG, "gptq hessian: non-finite input "
                                "%g at row %lld, column %lld", (double)x[i],
                                (long long)(i / k), (long long)(i % k));
    qd_cuda *c = hs->cuda;
    int64_t rows = n_tok < QD_GPTQ_DEV_ROWS ? n_tok : QD_GPTQ_DEV_ROWS;
    void *dx = NULL;
    qd_err rc = qd_cuda_alloc(c, (size_t)(rows * k) * sizeof(float), &dx, err);
    /* The first slice makes the running update (shrink, n += n_seq, scaled X^T X); the others
     * add their X^T X with the same factor 2 / n, which is what one call on the whole batch
     * computes up to the rounding of sqrt(2 / n)^2. */
    int64_t n_after = hs->n;
    float alpha = (float)(2.0 / (double)(hs->n + n_seq));
    for (int64_t t0 = 0; rc == QD_OK && t0 < n_tok; t0 += rows) {
        int64_t m = n_tok - t0 < rows ? n_tok - t0 : rows;
        rc = qd_cuda_upload(c, dx, x + t0 * k, (size_t)(m * k) * sizeof(float), err);
        if (rc == QD_OK && t0 == 0)
            rc = qd_gptq_hessian_add_cuda(c, hs->h, k, &n_after, dx, m, n_seq, err);
        else if (rc == QD_OK)
            rc = qd_xtx_accum_cuda(c, hs->h, dx, m, k, alpha, err);
        /* the host slice must stay valid until its upload ran */
        if (rc == QD_OK) rc = qd_cuda_sync(c, err);
    }
    qd_cuda_free(c, dx);
    if (rc != QD_OK) {
        qd_error_prefix(err, "gptq hessian: ");
        return rc; /* H is unusable now; the caller drops it with the job */
    }
    hs->n = n_after;
    return QD_OK;
}

qd_err qd_gptq_hessian_dev_add_dev(qd_gptq_hessian_dev *hs, const float *x_dev, int64_t n_tok,
                                   int64_t n_seq, qd_error *err) {
    if (!hs || !hs->h)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "gptq hessian: not initialised");
    if (n_seq < 1 || n_tok < 1 || !x_dev)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "gptq hessian: bad batch (%lld rows of "
                            "%lld sequences)", (long long)n_tok, (long long)n_seq);
    if (hs->n > INT64_MAX - n_seq)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "gptq hessian: sample count overflows");
    int64_t n_after = hs->n;
    qd_err rc = qd_gptq_hessian_add_cuda(hs->cuda, hs->h, hs->k, &n_after, x_dev, n_tok, n_seq,
                                         err);
    if (rc != QD_OK) {
        qd_error_prefix(err, "gptq hessian: ");
        return rc;
    }
    hs->n = n_after;
    return QD_OK;
}

qd_err qd_gptq_quantize_dev(const float *w, int n, int k, const qd_gptq_hessian_dev *hs,
                            const qd_gptq_params *p, qd_qlinear *ret_q, float *ret_dequant,
                            qd_gptq_stats *ret_stats, qd_error *err) {
    if (!w || !hs || !hs->h || !p || !ret_q)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "gptq: NULL argument");
    if (n < 1 || k < 1 || hs->k != k)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "gptq: the Hessian is for in_features %d "
                            "but the weight is [%d, %d]", hs->k, n, k);
    if (hs->n < 1)
        return qd_error_set(err, QD_ERR_PRECONDITION, "gptq: no calibration batch was added "
                            "to the Hessian");
    if (p->group_size > 0 && k % p->group_size != 0)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "gptq: group_size %d does not divide "
                            "in_features %d", p->group_size, k);
    qd_cuda *c = hs->cuda;
    const int64_t nn = n, kk = k;
    const int64_t g = p->group_size > 0 ? p->group_size : kk;
    const int64_t ng = kk / g;
    qd_qlinear q;
    memset(&q, 0, sizeof q);
    void *dw = NULL, *dcodes = NULL, *dscales = NULL, *dzeros = NULL, *ddeq = NULL;
    qd_err rc = qd_qlinear_alloc(&q, n, k, QD_QTYPE_INT, p->bits, (int)g, p->rule, err);
    bool g_idx = p->group_size > 0 && !p->static_groups && p->act_order;
    if (rc == QD_OK && g_idx) {
        q.g_idx = malloc((size_t)k * sizeof *q.g_idx);
        if (!q.g_idx) rc = qd_error_set(err, QD_ERR_NOMEM, "gptq: no memory for g_idx");
    }
    qd_cuda_gptq_opts o = {
        .bits = p->bits, .group_size = p->group_size, .rule = p->rule,
        .scale_dtype = p->scale_dtype, .damp_percent = p->damp_percent,
        .damp_auto_increment = p->damp_auto_increment, .act_order = p->act_order,
        .static_groups = p->static_groups, .block_size = p->block_size,
    };
    qd_cuda_gptq_stats st = {0};
    size_t wb = (size_t)(nn * kk) * sizeof(float), pb = (size_t)(nn * ng) * sizeof(float);
    if (rc == QD_OK &&
        ((rc = qd_cuda_alloc(c, wb, &dw, err)) ||
         (rc = qd_cuda_alloc(c, (size_t)(nn * kk), &dcodes, err)) ||
         (rc = qd_cuda_alloc(c, pb, &dscales, err)) ||
         (rc = qd_cuda_alloc(c, pb, &dzeros, err)) ||
         (ret_dequant && (rc = qd_cuda_alloc(c, wb, &ddeq, err))) ||
         (rc = qd_cuda_upload(c, dw, w, wb, err)) ||
         (rc = qd_gptq_quantize_cuda(c, dw, n, k, hs->h, &o, dcodes, dscales, dzeros, q.g_idx,
                                     ddeq, &st, err)) ||
         (rc = qd_cuda_download(c, q.codes, dcodes, (size_t)(nn * kk), err)) ||
         (rc = qd_cuda_download(c, q.scales, dscales, pb, err)) ||
         (rc = qd_cuda_download(c, q.zeros, dzeros, pb, err)) ||
         (ret_dequant && (rc = qd_cuda_download(c, ret_dequant, ddeq, wb, err)))))
        qd_error_prefix(err, "gptq [%d, %d] on %s: ", n, k, qd_cuda_info(c)->name);
    qd_cuda_free(c, dw);
    qd_cuda_free(c, dcodes);
    qd_cuda_free(c, dscales);
    qd_cuda_free(c, dzeros);
    qd_cuda_free(c, ddeq);
    if (rc != QD_OK) {
        qd_qlinear_free(&q);
        return rc;
    }
    if (ret_stats) {
        ret_stats->loss = st.loss;
        ret_stats->damp_percent = st.damp_percent;
        ret_stats->n_dead = st.n_dead;
    }
    *ret_q = q;
    return QD_OK;
}

#else /* !QD_HAVE_CUDA */

static qd_err no_cuda(qd_error *err) {
    return qd_error_set(err, QD_ERR_UNAVAILABLE, "gptq: this build has no CUDA backend");
}

qd_err qd_gptq_hessian_dev_init(qd_gptq_hessian_dev *hs, struct qd_cuda *c, int k,
                                qd_error *err) {
    (void)c;
    (void)k;
    if (hs) memset(hs, 0, sizeof *hs);
    return no_cuda(err);
}

void qd_gptq_hessian_dev_done(qd_gptq_hessian_dev *hs) {
    if (hs) memset(hs, 0, sizeof *hs);
}

qd_err qd_gptq_hessian_dev_add(qd_gptq_hessian_dev *hs, const float *x, int64_t n_tok,
                               int64_t n_seq, qd_error *err) {
    (void)hs;
    (void)x;
    (void)n_tok;
    (void)n_seq;
    return no_cuda(err);
}

qd_err qd_gptq_hessian_dev_add_dev(qd_gptq_hessian_dev *hs, const float *x_dev, int64_t n_tok,
                                   int64_t n_seq, qd_error *err) {
    (void)hs;
    (void)x_dev;
    (void)n_tok;
    (void)n_seq;
    return no_cuda(err);
}

qd_err qd_gptq_quantize_dev(const float *w, int n, int k, const qd_gptq_hessian_dev *hs,
                            const qd_gptq_params *p, qd_qlinear *ret_q, float *ret_dequant,
                            qd_gptq_stats *ret_stats, qd_error *err) {
    (void)w;
    (void)n;
    (void)k;
    (void)hs;
    (void)p;
    (void)ret_q;
    (void)ret_dequant;
    (void)ret_stats;
    return no_cuda(err);
}
#endif
