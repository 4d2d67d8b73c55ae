/*
 * bench-quant.c - throughput of each quantization method, and of each artifact format's
 * packing, on one synthetic linear layer, next to the machine's memory bandwidth measured in
 * the same run. It reports; it never asserts.
 *
 *   bench-quant [--n 4096] [--k 4096] [--tokens 2048] [--awq-tokens 0] [--reps 3]
 *               [--threads 0] [--methods rtn,iq,pack,fp8,smoothquant,awq,gptq] [--tsv]
 *
 * Output: a header (shape, threads, memcpy bandwidth), then one table row per method and
 * setting:
 *   time       wall clock (CLOCK_MONOTONIC) of the fastest of --reps runs, all phases included
 *   GB/s       n * k * 4 bytes of fp32 weights / time: the weights as the quantizers read them
 *              (pack rows: n * k bytes, the one-byte codes a packer reads)
 *   bf16 GB/s  n * k * 2 bytes / time: the same rate counted in a bf16 checkpoint's bytes
 *   of copy    GB/s as a percentage of the memcpy rate: 100% means the step goes through the
 *              weights as fast as the machine can copy them
 *   phases     the same run broken down (AWQ's and GPTQ's searches apart from the quantization)
 * With --tsv the header is "key<TAB>value" lines and each row is
 *   row<TAB>method<TAB>settings<TAB>time s<TAB>GB/s<TAB>of copy %<TAB>phases
 * (bench/run reads those).
 *
 * DESIGN
 * Everything runs on the cpu kernels with the thread count they use by default (every online
 * CPU; --threads overrides it), and the memcpy reference is split over those same threads, so
 * the ratio compares like with like. The memcpy rate counts the bytes copied (a 512 MiB buffer
 * read once and written once in that time); the read + write traffic is twice that and is
 * printed too. Buffers are touched before any timing so page faults are not measured.
 *
 * The layer is deterministic (a seeded xorshift): W [n, k] uniform in +-0.02, x [tokens, k]
 * uniform in +-1 with eight input channels 30 times larger, the outliers that give SmoothQuant
 * and AWQ something to act on. The timings do not depend on the values beyond that.
 *
 * What each row's time covers (one call per linear, as the quantizers run it):
 *   rtn          qd_rtn_quantize: int4 groups of 128 with AutoAWQ's asymmetric rule and fp16
 *                scales; int8 per output channel, absmax / 127, fp32 scales
 *   iq           the same call with DashInfer InstantQuant's rules (a float zero point):
 *                uint4 groups of 128, int8 per output channel
 *   pack         format->pack of an already quantized layer (the codes are made first, with
 *                the format's own rule, outside the timing): int4 groups of 128 in each format
 *                (AutoAWQ, GPTQ v1, GPTQ v2, compressed-tensors, ModelOpt, DashInfer), then
 *                compressed-tensors' int8 per-channel W8A8 and fp8 W8A8 layouts. The packed
 *                tensors are freed between runs, outside the timing.
 *   fp8          qd_fp8_quantize, e4m3 with one per-tensor scale (the compressed-tensors preset)
 *   smoothquant  smooth: per-channel max |x| over the tokens, qd_sq_scales, qd_sq_fold into W;
 *                quant: qd_rtn_quantize int8 per output channel, absmax / 127. (W is restored
 *                from a copy between runs, outside the timing.)
 *   awq          qd_awq_quantize_linear with AutoAWQ's defaults (grid 20, clip on) on the
 *                first --awq-tokens tokens (0, the default: all of them). That one call does
 *                the scale search, auto_clip and the final quantization; to split it, the
 *                final quantization (qd_rtn_quantize of W * s with the same settings) and the
 *                clip search (qd_awq_clip_search on the same sampled tokens) are also timed
 *                alone, right after, on the same data (the clip only in the first run).
 *                search = total - quant, derived; clip is part of search.
 *   gptq         hessian: qd_gptq_hessian_init + qd_gptq_hessian_add of all tokens;
 *                quant: qd_gptq_quantize (damping, inverse factor, blocked column loop),
 *                int4 groups of 128, symmetric, block 128.
 * AWQ's scale search runs 22 forward GEMMs of [tokens, k] x [k, n] (the float output, plain RTN,
 * then 20 ratios), so its time grows with the token count, while the clip search always works on
 * 512 sampled tokens. On two cores the default run (2048 tokens everywhere) takes a few minutes,
 * most of it AWQ; --awq-tokens shortens that.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "awq.h"
#include "error.h"
#include "formats/format.h"
#include "gptq.h"
#include "ops.h"
#include "qlinear.h"
#include "rtn.h"
#include "smoothquant.h"

#define GROUP 128               /* group size of the int4 methods */
#define COPY_BYTES (512u << 20) /* the memcpy reference buffer */
#define N_OUTLIERS 8
#define MAX_PHASES 3

/* ---- small helpers ---- */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static float rand_unit(uint64_t *s) { /* xorshift64*, uniform in [-1, 1) */
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return (float)((*s * 0x2545F4914F6CDD1Dull) >> 40) / (float)(1 << 23) - 1.0f;
}

static float *alloc_floats(size_t count) {
    return malloc(count * sizeof(float));
}

/* ---- options ---- */

enum { M_RTN, M_IQ, M_PACK, M_FP8, M_SQ, M_AWQ, M_GPTQ, M_COUNT };
static const char *const method_names[M_COUNT] = {"rtn", "iq",  "pack", "fp8",
                                                  "smoothquant", "awq", "gptq"};

typedef struct opts {
    long n, k, tokens, awq_tokens, reps, threads;
    bool run[M_COUNT];
    bool tsv;
} opts;

/* A decimal integer in [lo, hi], the whole string. */
static bool parse_long(const char *s, long lo, long hi, long *ret) {
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi) return false;
    *ret = v;
    return true;
}

/* A comma-separated list of method names. */
static bool parse_methods(const char *s, bool *run) {
    for (int m = 0; m < M_COUNT; m++) run[m] = false;
    while (*s) {
        const char *comma = strchr(s, ',');
        size_t len = comma ? (size_t)(comma - s) : strlen(s);
        int found = -1;
        for (int m = 0; m < M_COUNT; m++)
            if (strlen(method_names[m]) == len && strncmp(s, method_names[m], len) == 0)
                found = m;
        if (found < 0) return false;
        run[found] = true;
        s += len;
        if (*s == ',') s++;
    }
    for (int m = 0; m < M_COUNT; m++)
        if (run[m]) return true;
    return false; /* an empty list */
}

static void usage(void) {
    fprintf(stderr,
            "usage: bench-quant [--n 4096] [--k 4096] [--tokens 2048] [--awq-tokens 0]\n"
            "                   [--reps 3] [--threads 0] [--tsv]\n"
            "                   [--methods rtn,iq,pack,fp8,smoothquant,awq,gptq]\n"
            "  n, k in 1..65536 (n a multiple of 8, k of %d); tokens in 1..1048576;\n"
            "  reps in 1..100; awq-tokens 0: all the tokens; threads 0: every online CPU\n",
            GROUP);
}

static bool parse_opts(int argc, char **argv, opts *o) {
    *o = (opts){.n = 4096, .k = 4096, .tokens = 2048, .reps = 3};
    for (int m = 0; m < M_COUNT; m++) o->run[m] = true;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--tsv") == 0) {
            o->tsv = true;
            continue;
        }
        if (!v) return false;
        i++;
        bool ok;
        if (strcmp(a, "--n") == 0) ok = parse_long(v, 1, 65536, &o->n);
        else if (strcmp(a, "--k") == 0) ok = parse_long(v, 1, 65536, &o->k);
        else if (strcmp(a, "--tokens") == 0) ok = parse_long(v, 1, 1L << 20, &o->tokens);
        else if (strcmp(a, "--awq-tokens") == 0) {
            ok = parse_long(v, 0, 1L << 20, &o->awq_tokens);
        } else if (strcmp(a, "--reps") == 0) ok = parse_long(v, 1, 100, &o->reps);
        else if (strcmp(a, "--threads") == 0) ok = parse_long(v, 0, 256, &o->threads);
        else if (strcmp(a, "--methods") == 0) ok = parse_methods(v, o->run);
        else ok = false;
        if (!ok) return false;
    }
    /* every format packs 8 output rows or 8 input columns to a word: keep both divisible */
    if (o->k % GROUP != 0 || o->n % 8 != 0 || o->k > QD_GPTQ_MAX_K) return false;
    /* AWQ takes the first rows of the same x: never more tokens than there are */
    if (o->awq_tokens == 0 || o->awq_tokens > o->tokens) o->awq_tokens = o->tokens;
    return true;
}

/* ---- the layer ---- */

typedef struct layer {
    long n, k, tokens;
    float *w; /* [n, k] */
    float *x; /* [tokens, k] */
} layer;

static bool layer_init(layer *L, const opts *o) {
    L->n = o->n;
    L->k = o->k;
    L->tokens = o->tokens;
    L->w = alloc_floats((size_t)L->n * (size_t)L->k);
    L->x = alloc_floats((size_t)L->tokens * (size_t)L->k);
    if (!L->w || !L->x) return false;
    uint64_t s = 0x9E3779B97F4A7C15ull;
    for (size_t i = 0; i < (size_t)L->n * (size_t)L->k; i++) L->w[i] = 0.02f * rand_unit(&s);
    for (size_t i = 0; i < (size_t)L->tokens * (size_t)L->k; i++) L->x[i] = rand_unit(&s);
    /* outlier channels, spread over the row by a stride coprime with common widths */
    for (int j = 0; j < N_OUTLIERS; j++) {
        size_t c = ((size_t)j * 997u + 13u) % (size_t)L->k;
        for (long t = 0; t < L->tokens; t++) L->x[(size_t)t * (size_t)L->k + c] *= 30.0f;
    }
    return true;
}

/* ---- the memcpy reference ---- */

typedef struct copy_job {
    char *dst;
    const char *src;
    size_t bytes, chunk;
} copy_job;

static void copy_range(void *ctx, int64_t begin, int64_t end) {
    const copy_job *j = ctx;
    size_t b = (size_t)begin * j->chunk, e = (size_t)end * j->chunk;
    if (e > j->bytes) e = j->bytes;
    if (b < e) memcpy(j->dst + b, j->src + b, e - b);
}

/* Best of 3 copies of COPY_BYTES over the kernels' threads: bytes copied per second. */
static double memcpy_rate(void) {
    char *src = malloc(COPY_BYTES), *dst = malloc(COPY_BYTES);
    double best = 0.0;
    if (src && dst) {
        memset(src, 1, COPY_BYTES);
        memset(dst, 2, COPY_BYTES);
        /* one contiguous range per thread: each thread streams its own part of the buffer */
        int nt = qd_cpu_threads();
        copy_job j = {dst, src, COPY_BYTES, (COPY_BYTES + (size_t)nt - 1) / (size_t)nt};
        for (int r = 0; r < 3; r++) {
            double t0 = now_s();
            qd_cpu_parallel_for(nt, nt, copy_range, &j);
            double dt = now_s() - t0;
            if (dt > 0 && (double)COPY_BYTES / dt > best) best = (double)COPY_BYTES / dt;
        }
    }
    free(src);
    free(dst);
    return best;
}

/* ---- one run of each method ---- */

typedef struct run_time {
    double total;
    int n_phase;
    const char *phase[MAX_PHASES];
    double t[MAX_PHASES];
    bool part[MAX_PHASES]; /* part of the phase before it (printed in parentheses) */
} run_time;

static void add_phase(run_time *rt, const char *name, double t, bool part) {
    rt->phase[rt->n_phase] = name;
    rt->part[rt->n_phase] = part;
    rt->t[rt->n_phase++] = t;
}

/* One RTN call with the given layout and rule (the rtn and iq rows). */
typedef struct rtn_case {
    const char *settings;
    int bits, group_size; /* group_size 0: per output channel */
    qd_qrule rule;
    qd_dtype scale_dtype;
} rtn_case;

static const rtn_case rtn_cases[] = {
    {"int4 g128 asym, fp16 scales", 4, GROUP, QD_QRULE_ASYM_MINMAX, QD_DTYPE_F16},
    {"int8 per-channel sym", 8, 0, QD_QRULE_SYM_MAX, QD_DTYPE_F32},
};
static const rtn_case iq_cases[] = {
    {"uint4 g128, float zero", 4, GROUP, QD_QRULE_ASYM_FLOAT_ZERO, QD_DTYPE_F16},
    {"int8 per-channel, float zero", 8, 0, QD_QRULE_ASYM_FLOAT_ZERO_SIGNED, QD_DTYPE_F16},
};
#define N_RTN_CASES ((int)(sizeof rtn_cases / sizeof rtn_cases[0]))
#define N_IQ_CASES ((int)(sizeof iq_cases / sizeof iq_cases[0]))

static qd_err run_rtn(const layer *L, const rtn_case *c, run_time *rt, qd_error *err) {
    qd_qlinear q = {0};
    double t0 = now_s();
    qd_err rc = qd_rtn_quantize(L->w, (int)L->n, (int)L->k, c->bits, c->group_size, c->rule,
                                c->scale_dtype, &q, err);
    rt->total = now_s() - t0;
    qd_qlinear_free(&q);
    return rc;
}

/* One format's packing: the layout and the quantization that feeds it. */
typedef struct pack_case {
    const char *format;   /* qd_format name */
    const char *settings;
    qd_qtype type;
    int bits, group_size; /* group_size -1: per output channel */
    bool symmetric;
    qd_format_act act;
    qd_dtype model_dtype; /* bias / scale dtype of the formats that follow the model */
    qd_dtype scale_dtype; /* what the format stores the weight scales in */
} pack_case;

static const pack_case pack_cases[] = {
    {"awq", "awq int4 g128 asym", QD_QTYPE_INT, 4, GROUP, false, QD_FORMAT_ACT_NONE,
     QD_DTYPE_F16, QD_DTYPE_F16},
    {"gptq", "gptq v1 int4 g128 sym", QD_QTYPE_INT, 4, GROUP, true, QD_FORMAT_ACT_NONE,
     QD_DTYPE_BF16, QD_DTYPE_F16},
    {"gptq_v2", "gptq v2 int4 g128 sym", QD_QTYPE_INT, 4, GROUP, true, QD_FORMAT_ACT_NONE,
     QD_DTYPE_BF16, QD_DTYPE_F16},
    {"compressed-tensors", "ct int4 g128 sym", QD_QTYPE_INT, 4, GROUP, true,
     QD_FORMAT_ACT_NONE, QD_DTYPE_BF16, QD_DTYPE_BF16},
    {"modelopt", "modelopt int4 g128", QD_QTYPE_INT, 4, GROUP, true, QD_FORMAT_ACT_NONE,
     QD_DTYPE_BF16, QD_DTYPE_F32},
    {"dashinfer", "dashinfer int4 g128 sym", QD_QTYPE_INT, 4, GROUP, true, QD_FORMAT_ACT_NONE,
     QD_DTYPE_BF16, QD_DTYPE_F16},
    {"compressed-tensors", "ct int8 ch W8A8", QD_QTYPE_INT, 8, -1, true,
     QD_FORMAT_ACT_INT8_TOKEN, QD_DTYPE_BF16, QD_DTYPE_BF16},
    {"compressed-tensors", "ct fp8 tensor W8A8", QD_QTYPE_FP8_E4M3, 8, -1, true,
     QD_FORMAT_ACT_FP8_TOKEN, QD_DTYPE_BF16, QD_DTYPE_BF16},
};
#define N_PACK_CASES ((int)(sizeof pack_cases / sizeof pack_cases[0]))

/* Quantize W for case c with the format's rule (untimed) into *q, and check that the format
 * takes the layer. */
static qd_err pack_prepare(const layer *L, const pack_case *c, const qd_format **ret_f,
                           qd_format_params *ret_p, qd_qlinear *q, qd_error *err) {
    const qd_format *f = qd_format_find(c->format);
    if (!f) return qd_error_set(err, QD_ERR_NOT_FOUND, "format '%s' is not built", c->format);
    qd_format_params p;
    qd_format_params_init(&p);
    p.type = c->type;
    p.bits = c->bits;
    p.group_size = c->group_size;
    p.symmetric = c->symmetric;
    p.act = c->act;
    p.dtype = c->model_dtype;
    p.weight_per_tensor = c->type == QD_QTYPE_FP8_E4M3;
    qd_err rc = f->check(&p, (int)L->n, (int)L->k, err);
    if (rc) return rc;
    if (c->type == QD_QTYPE_FP8_E4M3) {
        rc = qd_fp8_quantize(L->w, (int)L->n, (int)L->k, false, c->scale_dtype, q, err);
    } else {
        qd_qrule rule;
        if (c->act == QD_FORMAT_ACT_NONE)
            rc = qd_rtn_rule_for_format(c->format, c->symmetric, c->bits, &rule, err);
        else
            rule = QD_QRULE_SYM_HALF_EPS; /* compressed-tensors INT8_W8A8 (rtn.h) */
        if (!rc)
            rc = qd_rtn_quantize(L->w, (int)L->n, (int)L->k, c->bits,
                                 c->group_size > 0 ? c->group_size : 0, rule, c->scale_dtype, q,
                                 err);
    }
    if (rc) return rc;
    *ret_f = f;
    *ret_p = p;
    return QD_OK;
}

static qd_err run_pack(const qd_format *f, const qd_format_params *p, const qd_qlinear *q,
                       run_time *rt, qd_error *err) {
    qd_packed_list out = {0};
    double t0 = now_s();
    qd_err rc = f->pack(p, q, "model.layers.0.mlp.down_proj", &out, err);
    rt->total = now_s() - t0;
    qd_packed_list_free(&out);
    return rc;
}

static qd_err run_fp8(const layer *L, run_time *rt, qd_error *err) {
    qd_qlinear q = {0};
    double t0 = now_s();
    qd_err rc = qd_fp8_quantize(L->w, (int)L->n, (int)L->k, false, QD_DTYPE_F32, &q, err);
    rt->total = now_s() - t0;
    qd_qlinear_free(&q);
    return rc;
}

/* scratch: [n, k] (W, smoothed in place) + [k] + [k] */
static qd_err run_sq(const layer *L, float *scratch, run_time *rt, qd_error *err) {
    size_t nk = (size_t)L->n * (size_t)L->k;
    float *ws = scratch, *amax = scratch + nk, *s = amax + L->k;
    memcpy(ws, L->w, nk * sizeof(float)); /* fold works in place: start from W each run */
    const float *wc[1] = {ws};
    float *wm[1] = {ws};
    int64_t n_out[1] = {L->n};
    qd_qlinear q = {0};
    double t0 = now_s();
    qd_channel_amax(L->x, L->tokens, L->k, amax);
    qd_sq_scales(amax, wc, n_out, 1, L->k, 0.5f, s);
    qd_sq_fold(s, NULL, wm, n_out, 1, L->k);
    double t1 = now_s();
    qd_err rc = qd_rtn_quantize(ws, (int)L->n, (int)L->k, 8, 0, QD_QRULE_SYM_MAX,
                                QD_DTYPE_F32, &q, err);
    double t2 = now_s();
    qd_qlinear_free(&q);
    rt->total = t2 - t0;
    add_phase(rt, "smooth", t1 - t0, false);
    add_phase(rt, "quant", t2 - t1, false);
    return rc;
}

/* The clip search's tokens as qd_awq_quantize_linear samples them: every stride-th row of x,
 * divided by s. */
static float *awq_sample(const layer *L, long n_tok, const float *s, int n_sample,
                         int64_t *ret_n) {
    int64_t stride = n_tok / n_sample > 1 ? n_tok / n_sample : 1;
    int64_t n_sub = (n_tok + stride - 1) / stride;
    float *sub = alloc_floats((size_t)n_sub * (size_t)L->k);
    if (!sub) return NULL;
    for (int64_t i = 0; i < n_sub; i++)
        for (long c = 0; c < L->k; c++)
            sub[i * L->k + c] = L->x[i * stride * L->k + c] / s[c];
    *ret_n = n_sub;
    return sub;
}

/* scratch: [n, k] (W * s) + [k] (s) + [n, k / GROUP] (clip bounds). The clip search is timed
 * alone only while *clip_s < 0 (the first run): it costs as much again as the clip inside the
 * call, and its time does not vary between runs more than the rest does. */
static qd_err run_awq(const layer *L, long n_tok, float *scratch, double *clip_s, run_time *rt,
                      qd_error *err) {
    size_t nk = (size_t)L->n * (size_t)L->k;
    float *ws = scratch, *s = scratch + nk, *maxb = s + L->k;
    qd_awq_params p;
    qd_awq_params_default(&p);
    qd_qlinear q = {0};
    double t0 = now_s();
    qd_err rc = qd_awq_quantize_linear(L->w, L->n, L->k, L->x, n_tok, &p, NULL, s, &q, NULL,
                                       err);
    double total = now_s() - t0;
    qd_qlinear_free(&q);
    if (rc) return rc;

    /* the final quantization alone, on W * s (the product is not timed) */
    for (size_t r = 0; r < (size_t)L->n; r++)
        for (size_t c = 0; c < (size_t)L->k; c++)
            ws[r * (size_t)L->k + c] = L->w[r * (size_t)L->k + c] * s[c];
    t0 = now_s();
    rc = qd_rtn_quantize(ws, (int)L->n, (int)L->k, p.bits, p.group_size, p.rule, p.scale_dtype,
                         &q, err);
    double quant = now_s() - t0;
    qd_qlinear_free(&q);
    if (rc) return rc;

    /* the clip search alone, on the same sampled, scaled tokens (unclipped W * s) */
    if (*clip_s < 0.0) {
        int64_t n_sub = 0;
        float *sub = awq_sample(L, n_tok, s, p.n_sample_tokens, &n_sub);
        if (!sub) return qd_error_set(err, QD_ERR_NOMEM, "bench-quant: AWQ clip tokens");
        t0 = now_s();
        rc = qd_awq_clip_search(ws, L->n, L->k, sub, n_sub, &p, NULL, maxb, err);
        *clip_s = now_s() - t0;
        free(sub);
        if (rc) return rc;
    }

    rt->total = total;
    add_phase(rt, "search", total - quant, false);
    add_phase(rt, "clip", *clip_s, true);
    add_phase(rt, "quant", quant, false);
    return QD_OK;
}

static qd_err run_gptq(const layer *L, run_time *rt, qd_error *err) {
    qd_gptq_hessian hs = {0};
    qd_gptq_params p;
    qd_gptq_params_init(&p); /* 4 bits, group 128, SYM_HALF, fp16 scales, block 128 */
    qd_qlinear q = {0};
    double t0 = now_s(), t1 = t0;
    qd_err rc = qd_gptq_hessian_init(&hs, (int)L->k, err);
    if (!rc) rc = qd_gptq_hessian_add(&hs, L->x, L->tokens, 1, err);
    if (!rc) {
        t1 = now_s();
        rc = qd_gptq_quantize(L->w, (int)L->n, (int)L->k, &hs, &p, &q, NULL, NULL, err);
    }
    double t2 = now_s();
    qd_qlinear_free(&q);
    qd_gptq_hessian_done(&hs);
    rt->total = t2 - t0;
    add_phase(rt, "hessian", t1 - t0, false);
    add_phase(rt, "quant", t2 - t1, false);
    return rc;
}

/* ---- output ---- */

typedef struct report {
    bool tsv;
    double n_weights; /* n * k */
    double copy_rate; /* bytes copied per second */
} report;

/* A row's rates: the quantizers read 4-byte fp32 weights; a packer reads the 1-byte codes
 * (qlinear.h), so its GB/s, and its share of memcpy, count those (bf16 does not apply). */
static void print_row(const report *R, const char *method, const char *settings,
                      const run_time *best, bool codes) {
    double bytes_per_weight = codes ? 1.0 : 4.0;
    double gbs = R->n_weights * bytes_per_weight / best->total / 1e9;
    double of_copy = 100.0 * gbs / (R->copy_rate / 1e9);
    if (R->tsv) {
        printf("row\t%s\t%s\t%.6f\t%.4f\t%.3f\t", method, settings, best->total, gbs, of_copy);
        for (int i = 0; i < best->n_phase; i++)
            printf("%s%s %.3f s", i ? ", " : "", best->phase[i], best->t[i]);
        printf("\n");
    } else {
        char bf16[16] = "-";
        if (!codes) snprintf(bf16, sizeof bf16, "%.3g", gbs / 2.0);
        printf("%-12s %-30s %9.3f %9.3g %9s %8.3g%%", method, settings, best->total, gbs, bf16,
               of_copy);
        for (int i = 0; i < best->n_phase; i++) {
            if (best->part[i]) printf(" (%s %.3f s)", best->phase[i], best->t[i]);
            else printf("%s%s %.3f s", i ? " " : "   ", best->phase[i], best->t[i]);
        }
        printf("\n");
    }
    fflush(stdout);
}

static void print_skip(const report *R, const char *method, const char *settings,
                       const char *why) {
    if (R->tsv) printf("skip\t%s\t%s\t%s\n", method, settings, why);
    else printf("%-12s %-30s skipped: %s\n", method, settings, why);
    fflush(stdout);
}

/* ---- main ---- */

/* Run one method (all its rows) reps times each and print the best of each row. */
static qd_err bench_method(int m, const opts *o, const layer *L, float *scratch,
                           const report *R, qd_error *err) {
    qd_err rc = QD_OK;
    char settings[64];
    if (m == M_RTN || m == M_IQ) {
        const rtn_case *cases = m == M_RTN ? rtn_cases : iq_cases;
        int n_cases = m == M_RTN ? N_RTN_CASES : N_IQ_CASES;
        for (int c = 0; c < n_cases && !rc; c++) {
            run_time best = {0};
            for (long r = 0; r < o->reps && !rc; r++) {
                run_time rt = {0};
                rc = run_rtn(L, &cases[c], &rt, err);
                if (!rc && (r == 0 || rt.total < best.total)) best = rt;
            }
            if (!rc) print_row(R, method_names[m], cases[c].settings, &best, false);
        }
        return rc;
    }
    if (m == M_PACK) {
        for (int c = 0; c < N_PACK_CASES && !rc; c++) {
            const qd_format *f = NULL;
            qd_format_params p;
            qd_qlinear q = {0};
            qd_error why = {0};
            /* a format that refuses this layer is reported, not fatal */
            if (pack_prepare(L, &pack_cases[c], &f, &p, &q, &why) != QD_OK) {
                print_skip(R, method_names[m], pack_cases[c].settings, qd_error_text(&why));
                qd_qlinear_free(&q);
                continue;
            }
            run_time best = {0};
            for (long r = 0; r < o->reps && !rc; r++) {
                run_time rt = {0};
                rc = run_pack(f, &p, &q, &rt, err);
                if (!rc && (r == 0 || rt.total < best.total)) best = rt;
            }
            qd_qlinear_free(&q);
            if (rc) qd_error_prefix(err, "pack %s: ", pack_cases[c].format);
            else print_row(R, method_names[m], pack_cases[c].settings, &best, true);
        }
        return rc;
    }
    run_time best = {0};
    double clip_s = -1.0; /* AWQ: the clip search's time, measured on the first run */
    for (long r = 0; r < o->reps && !rc; r++) {
        run_time rt = {0};
        switch (m) {
        case M_FP8: rc = run_fp8(L, &rt, err); break;
        case M_SQ: rc = run_sq(L, scratch, &rt, err); break;
        case M_AWQ: rc = run_awq(L, o->awq_tokens, scratch, &clip_s, &rt, err); break;
        default: rc = run_gptq(L, &rt, err); break;
        }
        if (!rc && (r == 0 || rt.total < best.total)) best = rt;
    }
    if (rc) return rc;
    switch (m) {
    case M_FP8: snprintf(settings, sizeof settings, "e4m3, per-tensor scale"); break;
    case M_SQ: snprintf(settings, sizeof settings, "int8 per-channel, alpha 0.5"); break;
    case M_AWQ:
        snprintf(settings, sizeof settings, "int4 g%d asym, %ld tok", GROUP, o->awq_tokens);
        break;
    default:
        snprintf(settings, sizeof settings, "int4 g%d sym, %ld tok", GROUP, o->tokens);
        break;
    }
    print_row(R, method_names[m], settings, &best, false);
    return QD_OK;
}

int main(int argc, char **argv) {
    opts o;
    if (!parse_opts(argc, argv, &o)) {
        usage();
        return 2;
    }
    if (o.threads > 0) qd_cpu_set_threads((int)o.threads);

    layer L = {0};
    size_t nk = (size_t)o.n * (size_t)o.k;
    /* one scratch buffer big enough for SmoothQuant's and AWQ's needs */
    size_t scratch_len = nk + 2 * (size_t)o.k + nk / GROUP;
    float *scratch = alloc_floats(scratch_len);
    if (!scratch || !layer_init(&L, &o)) {
        fprintf(stderr, "bench-quant: out of memory for a [%ld, %ld] layer on %ld tokens\n",
                o.n, o.k, o.tokens);
        free(scratch);
        free(L.w);
        free(L.x);
        return 1;
    }
    memset(scratch, 0, scratch_len * sizeof(float));

    report R = {.tsv = o.tsv, .n_weights = (double)nk, .copy_rate = memcpy_rate()};
    if (R.copy_rate <= 0.0) {
        fprintf(stderr, "bench-quant: could not allocate the %u MiB memcpy buffers\n",
                COPY_BYTES >> 20);
        free(scratch);
        free(L.w);
        free(L.x);
        return 1;
    }
    if (o.tsv) {
        printf("n\t%ld\nk\t%ld\ntokens\t%ld\nawq_tokens\t%ld\nreps\t%ld\nthreads\t%d\n", o.n,
               o.k, o.tokens, o.awq_tokens, o.reps, qd_cpu_threads());
        printf("memcpy_gbs\t%.3f\n", R.copy_rate / 1e9);
    } else {
        printf("bench-quant: W [%ld, %ld] fp32 (%.1f MiB), x [%ld, %ld] with %d outlier "
               "channels\n", o.n, o.k, R.n_weights * 4.0 / (1 << 20), o.tokens, o.k, N_OUTLIERS);
        printf("threads %d (cpu kernels); time = best of %ld runs, wall clock\n",
               qd_cpu_threads(), o.reps);
        printf("memcpy %u MiB, best of 3: %.2f GB/s copied (%.2f GB/s read + write)\n",
               COPY_BYTES >> 20, R.copy_rate / 1e9, 2.0 * R.copy_rate / 1e9);
        if (o.run[M_AWQ])
            printf("awq: scale search on %ld of the %ld tokens, clip search on at most 512 of "
                   "them (clip timed alone once)\n", o.awq_tokens, o.tokens);
        printf("\n%-12s %-30s %9s %9s %9s %9s   %s\n", "method", "settings", "time s", "GB/s",
               "bf16 GB/s", "of copy", "phases (of the best run)");
    }

    qd_error err = {0};
    qd_err rc = QD_OK;
    for (int m = 0; m < M_COUNT && !rc; m++)
        if (o.run[m]) rc = bench_method(m, &o, &L, scratch, &R, &err);
    if (rc) fprintf(stderr, "bench-quant: %s\n", qd_error_text(&err));
    free(scratch);
    free(L.w);
    free(L.x);
    return rc ? 1 : 0;
}
