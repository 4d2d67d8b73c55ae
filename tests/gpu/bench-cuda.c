/*
 * bench-cuda.c - throughput of the CUDA backend's kernels on the device at hand, each against
 * the ceiling that bounds it, measured on the same device in the same run: device memory
 * bandwidth (a large device-to-device copy, bytes read + written) for the memory-bound
 * kernels, and cuBLAS's own GEMM rate (8192^3, fp32 and bf16 operands) for the GEMM-bound ones.
 *
 *   bench-cuda            every kernel at LLM sizes (a 8192 x 8192 weight, 8192 tokens of a
 *                         4096-wide model, ...), plus GPTQ on one [4096, 4096] layer on the
 *                         GPU and, for comparison, on the CPU backend
 *   bench-cuda --no-cpu   without the CPU GPTQ
 *
 * Timing: inputs are random (never zeros), the device is synchronised before and after each
 * batch of repetitions and timed with the host's monotonic clock, after two warm-up runs; a
 * batch lasts >= 20 ms and the median of five batches is reported. Bytes are the fewest the
 * kernel must move (each input read once, each output written once); FLOPs are the useful
 * ones (2mnk for a GEMM, half of that for the causal attention's and X^T X's triangles).
 */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifndef QD_HAVE_CUDA

int main(void) {
    printf("bench-cuda: quantd was built without the CUDA backend\n");
    return 77;
}

#else

#include "awq.h"
#include "gptq.h"
#include "ops.h"
#include "qd_cuda.h"

static qd_cuda *g_c;
static qd_error g_err;

static void die(const char *what) {
    fprintf(stderr, "bench-cuda: %s: %s\n", what, qd_error_text(&g_err));
    exit(1);
}

static void ok(qd_err rc, const char *what) {
    if (rc != QD_OK) die(what);
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static uint64_t g_rng = 0x1234567ull;

static float frand(void) {
    g_rng ^= g_rng >> 12;
    g_rng ^= g_rng << 25;
    g_rng ^= g_rng >> 27;
    return (float)((double)((g_rng * 0x2545F4914F6CDD1Dull) >> 11) / (double)(1ull << 52) - 1.0);
}

/* A device buffer of n floats, uniform in [-scale, scale). */
static float *dev_random(int64_t n, float scale) {
    float *h = malloc((size_t)n * sizeof *h);
    if (!h) {
        fprintf(stderr, "bench-cuda: out of host memory\n");
        exit(1);
    }
    for (int64_t i = 0; i < n; i++) h[i] = frand() * scale;
    void *d = NULL;
    ok(qd_cuda_alloc(g_c, (size_t)n * sizeof *h, &d, &g_err), "alloc");
    ok(qd_cuda_upload(g_c, d, h, (size_t)n * sizeof *h, &g_err), "upload");
    ok(qd_cuda_sync(g_c, &g_err), "sync");
    free(h);
    return d;
}

static void *dev_alloc(size_t nbytes) {
    void *d = NULL;
    ok(qd_cuda_alloc(g_c, nbytes, &d, &g_err), "alloc");
    return d;
}

typedef qd_err (*op_fn)(void *arg);

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median seconds per run of fn (see the header comment). */
static double time_op(op_fn fn, void *arg, const char *what) {
    for (int i = 0; i < 2; i++) ok(fn(arg), what);
    ok(qd_cuda_sync(g_c, &g_err), what);
    double t0 = now_s();
    ok(fn(arg), what);
    ok(qd_cuda_sync(g_c, &g_err), what);
    double one = now_s() - t0;
    int reps = one > 0.02 ? 1 : (int)(0.02 / (one > 1e-6 ? one : 1e-6)) + 1;
    double t[5];
    for (int b = 0; b < 5; b++) {
        double s = now_s();
        for (int r = 0; r < reps; r++) ok(fn(arg), what);
        ok(qd_cuda_sync(g_c, &g_err), what);
        t[b] = (now_s() - s) / reps;
    }
    qsort(t, 5, sizeof t[0], cmp_double);
    return t[2];
}

/* ---- the result table ------------------------------------------------------------------------ */

#define MAX_RESULTS 40

static struct result {
    char op[40];
    char size[32];
    double ms;
    double rate;       /* GB/s or TFLOP/s */
    const char *unit;
    double ceiling;    /* the same unit's measured ceiling, 0 for none */
} g_res[MAX_RESULTS];
static int g_n_res;

static void record(const char *op, const char *size, double sec, double amount, bool flops,
                   double ceiling) {
    if (g_n_res == MAX_RESULTS) return;
    struct result *r = &g_res[g_n_res++];
    snprintf(r->op, sizeof r->op, "%s", op);
    snprintf(r->size, sizeof r->size, "%s", size);
    r->ms = sec * 1e3;
    r->rate = flops ? amount / sec / 1e12 : amount / sec / 1e9;
    r->unit = flops ? "TFLOP/s" : "GB/s";
    r->ceiling = ceiling;
    printf("  %-34s %-18s %9.3f ms %9.1f %s\n", r->op, r->size, r->ms, r->rate, r->unit);
    fflush(stdout);
}

/* ---- the ops, as op_fn closures -------------------------------------------------------------- */

struct copy_arg {
    void *dst;
    const void *src;
    size_t n;
};
static qd_err run_copy(void *p) {
    struct copy_arg *a = p;
    return qd_cuda_copy(g_c, a->dst, a->src, a->n, &g_err);
}

struct mm_arg {
    float *y;
    const void *x, *w;
    qd_dtype dt; /* F32: qd_matmul_cuda */
    int64_t m, n, k;
};
static qd_err run_mm(void *p) {
    struct mm_arg *a = p;
    if (a->dt == QD_DTYPE_F32)
        return qd_matmul_cuda(g_c, a->y, a->x, a->w, NULL, a->m, a->n, a->k, &g_err);
    return qd_matmul_lp_cuda(g_c, a->y, a->x, a->w, a->dt, NULL, a->m, a->n, a->k, &g_err);
}

struct rtn_arg {
    const float *w;
    int64_t n, k, gs;
    uint8_t *codes;
    float *s, *z;
};
static qd_err run_rtn(void *p) {
    struct rtn_arg *a = p;
    return qd_quant_rtn_cuda(g_c, a->w, a->n, a->k, 4, a->gs, QD_QRULE_ASYM_MINMAX, QD_DTYPE_F16,
                             a->codes, a->s, a->z, &g_err);
}

struct pack_arg {
    const float *w;
    int64_t n, k;
    qd_qrule rule;
    qd_dtype sdt;
    qd_cuda_layout layout;
    qd_cuda_packed out;
};
static qd_err run_pack(void *p) {
    struct pack_arg *a = p;
    return qd_quant_pack_cuda(g_c, a->w, a->n, a->k, 4, 128, a->rule, a->sdt, a->layout, &a->out,
                              &g_err);
}

struct fp8_arg {
    const float *w;
    int64_t n, k;
    bool per_channel;
    uint8_t *codes;
    float *s;
};
static qd_err run_fp8(void *p) {
    struct fp8_arg *a = p;
    return qd_quant_fp8_cuda(g_c, a->w, a->n, a->k, a->per_channel, QD_DTYPE_BF16, a->codes, a->s,
                             &g_err);
}

struct xtx_arg {
    float *h;
    const float *x;
    int64_t n, k;
};
static qd_err run_xtx(void *p) {
    struct xtx_arg *a = p;
    return qd_xtx_accum_cuda(g_c, a->h, a->x, a->n, a->k, 1e-6f, &g_err);
}

struct row_arg {
    float *y;
    const float *x, *w, *u;
    int64_t n, d;
};
static qd_err run_rmsnorm(void *p) {
    struct row_arg *a = p;
    return qd_rmsnorm_cuda(g_c, a->y, a->x, a->w, a->n, a->d, 1e-5, &g_err);
}
static qd_err run_silu(void *p) {
    struct row_arg *a = p;
    return qd_silu_mul_cuda(g_c, a->y, a->x, a->u, a->n * a->d, &g_err);
}
static qd_err run_stats(void *p) {
    struct row_arg *a = p;
    return qd_act_stats_add_cuda(g_c, a->x, a->n, a->d, (double *)a->y, (float *)a->u, &g_err);
}

struct rope_arg {
    float *x;
    const float *cs, *sn;
    int64_t n_tok, seq_len;
    int heads, hd;
};
static qd_err run_rope(void *p) {
    struct rope_arg *a = p;
    return qd_rope_apply_cuda(g_c, a->x, a->n_tok, (int64_t)a->heads * a->hd, a->seq_len, a->heads,
                              a->hd, a->cs, a->sn, &g_err);
}

struct att_arg {
    float *out;
    const float *q, *k, *v;
    int64_t n_seq, seq_len;
    int heads, kv, hd;
};
static qd_err run_att(void *p) {
    struct att_arg *a = p;
    return qd_attention_cuda(g_c, a->out, a->q, a->k, a->v, a->n_seq, a->seq_len, a->heads, a->kv,
                             a->hd, &g_err);
}

struct hess_arg {
    float *h;
    const float *x;
    int64_t k, n_tok;
};
static qd_err run_hess(void *p) {
    struct hess_arg *a = p;
    int64_t n_samples = 0; /* every run is a first batch: h is scaled by 0, then accumulated */
    return qd_gptq_hessian_add_cuda(g_c, a->h, a->k, &n_samples, a->x, a->n_tok, 8, &g_err);
}

struct awq_arg {
    const float *x, *w, *s, *y_ref;
    float *max;
    int64_t n, k, n_tok;
};
static qd_err run_awq_loss(void *p) {
    struct awq_arg *a = p;
    double sse;
    return qd_awq_loss_cuda(g_c, a->x, a->n_tok, a->w, a->n, a->k, a->s, 4, 128,
                            QD_QRULE_ASYM_MINMAX, QD_DTYPE_F16, a->y_ref, &sse, &g_err);
}
static qd_err run_awq_clip(void *p) {
    struct awq_arg *a = p;
    return qd_awq_clip_search_cuda(g_c, a->w, a->n, a->k, a->x, a->n_tok, 4, 128,
                                   QD_QRULE_ASYM_MINMAX, QD_DTYPE_F16, 0.5, 20, a->max, &g_err);
}

/* ---- main ------------------------------------------------------------------------------------ */

int main(int argc, char **argv) {
    bool cpu = !(argc > 1 && strcmp(argv[1], "--no-cpu") == 0);
    if (qd_cuda_open(0, &g_c, &g_err) != QD_OK) {
        printf("bench-cuda: %s\n", qd_error_text(&g_err));
        return 77;
    }
    const qd_device_info *di = qd_cuda_info(g_c);
    printf("device: %s, %.1f GiB, sm_%d, %d SMs\n", di->name,
           (double)di->memory_bytes / (1u << 30), di->compute_capability, qd_cuda_sm_count(g_c));

    /* ceilings */
    double bw, gemm32, gemm16;
    {
        size_t nb = (size_t)2 << 30;
        struct copy_arg a = {dev_alloc(nb), dev_alloc(nb), nb};
        ok(qd_cuda_fill(g_c, (void *)a.src, 0x3C, nb, &g_err), "fill");
        double t = time_op(run_copy, &a, "copy");
        record("ceiling: device copy (r+w)", "2 GiB", t, 2.0 * (double)nb, false, 0);
        bw = 2.0 * (double)nb / t / 1e9;
        qd_cuda_free(g_c, a.dst);
        qd_cuda_free(g_c, (void *)a.src);
    }
    {
        const int64_t s = 8192;
        float *x = dev_random(s * s, 1.0f), *w = dev_random(s * s, 1.0f);
        float *y = dev_alloc((size_t)(s * s) * 4);
        struct mm_arg a = {y, x, w, QD_DTYPE_F32, s, s, s};
        double t = time_op(run_mm, &a, "sgemm");
        record("ceiling: cuBLAS SGEMM fp32", "8192^3", t, 2.0 * s * s * s, true, 0);
        gemm32 = 2.0 * s * s * s / t / 1e12;
        uint16_t *xb = dev_alloc((size_t)(s * s) * 2), *wb = dev_alloc((size_t)(s * s) * 2);
        ok(qd_convert_cuda(g_c, xb, QD_DTYPE_BF16, x, QD_DTYPE_F32, s * s, &g_err), "convert");
        ok(qd_convert_cuda(g_c, wb, QD_DTYPE_BF16, w, QD_DTYPE_F32, s * s, &g_err), "convert");
        struct mm_arg b = {y, xb, wb, QD_DTYPE_BF16, s, s, s};
        t = time_op(run_mm, &b, "gemm bf16");
        record("ceiling: cuBLAS GEMM bf16->fp32", "8192^3", t, 2.0 * s * s * s, true, 0);
        gemm16 = 2.0 * s * s * s / t / 1e12;
        qd_cuda_free(g_c, x);
        qd_cuda_free(g_c, w);
        qd_cuda_free(g_c, y);
        qd_cuda_free(g_c, xb);
        qd_cuda_free(g_c, wb);
    }

    /* quantization of one 8192 x 8192 weight (256 MiB of fp32) */
    {
        const int64_t n = 8192, k = 8192, nk = n * k, ng = k / 128;
        float *w = dev_random(nk, 0.05f);
        uint8_t *codes = dev_alloc((size_t)nk);
        float *s = dev_alloc((size_t)(n * ng) * 4), *z = dev_alloc((size_t)(n * ng) * 4);
        struct rtn_arg r = {w, n, k, 128, codes, s, z};
        double t = time_op(run_rtn, &r, "rtn");
        record("rtn int4 g128 (codes+params)", "8192x8192", t, 5.0 * nk + 8.0 * n * ng, false, bw);
        r.gs = k;
        t = time_op(run_rtn, &r, "rtn per-channel");
        record("rtn int4 per-channel", "8192x8192", t, 5.0 * nk, false, bw);
        uint32_t *qw = dev_alloc((size_t)nk / 2), *qz = dev_alloc((size_t)(n * ng) / 2);
        uint16_t *sc = dev_alloc((size_t)(n * ng) * 2);
        static const struct {
            const char *name;
            qd_cuda_layout layout;
            qd_qrule rule;
        } packs[3] = {{"pack awq gemm int4 g128", QD_CUDA_LAYOUT_AWQ_GEMM, QD_QRULE_ASYM_MINMAX},
                      {"pack gptq_v2 int4 g128", QD_CUDA_LAYOUT_GPTQ_V2,
                       QD_QRULE_ASYM_ZERO_IN_RANGE},
                      {"pack compressed-tensors int4 g128", QD_CUDA_LAYOUT_CT_PACKED,
                       QD_QRULE_ASYM_ZERO_IN_RANGE_EPS}};
        for (int i = 0; i < 3; i++) {
            struct pack_arg pa = {w, n, k, packs[i].rule, QD_DTYPE_F16, packs[i].layout,
                                  {.qweight = qw, .qzeros = qz, .scales = sc}};
            t = time_op(run_pack, &pa, packs[i].name);
            /* weights read once, words written, zeros and scales (small) */
            record(packs[i].name, "8192x8192", t, 4.0 * nk + 0.5 * nk + 3.0 * n * ng, false, bw);
        }
        struct fp8_arg f = {w, n, k, true, codes, s};
        t = time_op(run_fp8, &f, "fp8");
        record("fp8 e4m3 per-channel", "8192x8192", t, 5.0 * nk, false, bw);
        f.per_channel = false;
        t = time_op(run_fp8, &f, "fp8 tensor");
        /* two passes over the weights: the tensor's amax, then the codes */
        record("fp8 e4m3 per-tensor (2 reads)", "8192x8192", t, 9.0 * nk, false, bw);
        qd_cuda_free(g_c, w);
        qd_cuda_free(g_c, codes);
        qd_cuda_free(g_c, s);
        qd_cuda_free(g_c, z);
        qd_cuda_free(g_c, qw);
        qd_cuda_free(g_c, qz);
        qd_cuda_free(g_c, sc);
    }

    /* the runtime's ops on 8192 tokens of a 4096-wide model */
    {
        const int64_t t_ = 8192, d = 4096, f = 14336;
        float *x = dev_random(t_ * d, 1.0f), *wq = dev_random(d * d, 0.02f);
        float *y = dev_alloc((size_t)(t_ * f) * 4);
        struct mm_arg a = {y, x, wq, QD_DTYPE_F32, t_, d, d};
        double t = time_op(run_mm, &a, "matmul");
        record("matmul fp32 x W^T", "8192x4096x4096", t, 2.0 * t_ * d * d, true, gemm32);
        uint16_t *xb = dev_alloc((size_t)(t_ * d) * 2), *wb = dev_alloc((size_t)(d * d) * 2);
        ok(qd_convert_cuda(g_c, xb, QD_DTYPE_BF16, x, QD_DTYPE_F32, t_ * d, &g_err), "convert");
        ok(qd_convert_cuda(g_c, wb, QD_DTYPE_BF16, wq, QD_DTYPE_F32, d * d, &g_err), "convert");
        struct mm_arg b = {y, xb, wb, QD_DTYPE_BF16, t_, d, d};
        t = time_op(run_mm, &b, "matmul bf16");
        record("matmul bf16 operands, fp32 acc", "8192x4096x4096", t, 2.0 * t_ * d * d, true,
               gemm16);
        float *h = dev_alloc((size_t)(d * d) * 4);
        ok(qd_cuda_fill(g_c, h, 0, (size_t)(d * d) * 4, &g_err), "fill");
        struct xtx_arg xa = {h, x, t_, d};
        t = time_op(run_xtx, &xa, "xtx");
        record("X^T X (syrk + mirror)", "8192x4096", t, 1.0 * t_ * d * d, true, gemm32);
        struct hess_arg ha = {h, x, d, t_};
        t = time_op(run_hess, &ha, "hessian");
        record("gptq hessian add (scale+syrk)", "8192x4096", t, 1.0 * t_ * d * d, true, gemm32);
        float *nw = dev_random(d, 1.0f), *up = dev_random(t_ * f, 1.0f);
        struct row_arg ra = {y, x, nw, NULL, t_, d};
        t = time_op(run_rmsnorm, &ra, "rmsnorm");
        record("rmsnorm", "8192x4096", t, 8.0 * t_ * d, false, bw);
        float *gate = dev_random(t_ * f, 1.0f);
        struct row_arg sa = {y, gate, NULL, up, t_, f};
        t = time_op(run_silu, &sa, "silu");
        record("silu(gate) * up", "8192x14336", t, 12.0 * t_ * f, false, bw);
        double *sum = dev_alloc((size_t)d * 8);
        float *mx = dev_alloc((size_t)d * 4);
        ok(qd_cuda_fill(g_c, sum, 0, (size_t)d * 8, &g_err), "fill");
        ok(qd_cuda_fill(g_c, mx, 0, (size_t)d * 4, &g_err), "fill");
        struct row_arg st = {(float *)sum, x, NULL, mx, t_, d};
        t = time_op(run_stats, &st, "act stats");
        record("activation stats (mean|x|, max|x|)", "8192x4096", t, 4.0 * t_ * d, false, bw);
        const int64_t seq = 2048, n_seq = t_ / seq;
        float *kk = dev_random(t_ * 1024, 1.0f), *vv = dev_random(t_ * 1024, 1.0f);
        struct att_arg at = {y, x, kk, vv, n_seq, seq, 32, 8, 128};
        t = time_op(run_att, &at, "attention");
        double att_flops = 4.0 * n_seq * 32 * 128 * (double)seq * (double)(seq + 1) / 2.0;
        record("attention causal GQA 32/8 hd128", "4 x 2048 tokens", t, att_flops, true, 0);
        /* real rotations (norm-preserving), so repeating the op keeps x finite */
        double inv_freq[64];
        qd_rope_spec spec = {.head_dim = 128, .theta = 500000.0, .type = QD_ROPE_DEFAULT};
        qd_rope_inv_freq_ref(inv_freq, &spec);
        float *hcs = malloc((size_t)(seq * 64) * 4), *hsn = malloc((size_t)(seq * 64) * 4);
        if (!hcs || !hsn) die("host memory");
        qd_rope_table_ref(hcs, hsn, seq, 64, inv_freq);
        float *cs = dev_alloc((size_t)(seq * 64) * 4), *sn = dev_alloc((size_t)(seq * 64) * 4);
        ok(qd_cuda_upload(g_c, cs, hcs, (size_t)(seq * 64) * 4, &g_err), "upload");
        ok(qd_cuda_upload(g_c, sn, hsn, (size_t)(seq * 64) * 4, &g_err), "upload");
        ok(qd_cuda_sync(g_c, &g_err), "sync");
        free(hcs);
        free(hsn);
        struct rope_arg ro = {x, cs, sn, t_, seq, 32, 128};
        t = time_op(run_rope, &ro, "rope");
        record("rope (32 heads x 128)", "8192x4096", t, 8.0 * t_ * d, false, bw);
        qd_cuda_free(g_c, x);
        qd_cuda_free(g_c, wq);
        qd_cuda_free(g_c, y);
        qd_cuda_free(g_c, xb);
        qd_cuda_free(g_c, wb);
        qd_cuda_free(g_c, h);
        qd_cuda_free(g_c, nw);
        qd_cuda_free(g_c, up);
        qd_cuda_free(g_c, gate);
        qd_cuda_free(g_c, sum);
        qd_cuda_free(g_c, mx);
        qd_cuda_free(g_c, cs);
        qd_cuda_free(g_c, sn);
        qd_cuda_free(g_c, kk);
        qd_cuda_free(g_c, vv);
    }

    /* GPTQ on one [4096, 4096] layer, 4-bit g128, the CPU's defaults */
    {
        const int n = 4096, k = 4096;
        const int64_t nk = (int64_t)n * k, n_tok = 2048;
        float *hw = malloc((size_t)nk * 4), *hx = malloc((size_t)(n_tok * k) * 4);
        if (!hw || !hx) die("host memory");
        for (int64_t i = 0; i < nk; i++) hw[i] = frand() * 0.05f;
        for (int64_t i = 0; i < n_tok * k; i++) hx[i] = frand();
        qd_gptq_hessian hs = {0};
        ok(qd_gptq_hessian_init(&hs, k, &g_err), "hessian");
        ok(qd_gptq_hessian_add(&hs, hx, n_tok, 1, &g_err), "hessian");
        float *dw = dev_alloc((size_t)nk * 4), *dh = dev_alloc((size_t)k * k * 4);
        ok(qd_cuda_upload(g_c, dw, hw, (size_t)nk * 4, &g_err), "upload");
        ok(qd_cuda_upload(g_c, dh, hs.h, (size_t)k * k * 4, &g_err), "upload");
        uint8_t *codes = dev_alloc((size_t)nk);
        float *s = dev_alloc((size_t)n * 32 * 4), *z = dev_alloc((size_t)n * 32 * 4);
        qd_gptq_params p;
        qd_gptq_params_init(&p);
        qd_cuda_gptq_opts o = {.bits = p.bits, .group_size = p.group_size, .rule = p.rule,
                               .scale_dtype = p.scale_dtype, .damp_percent = p.damp_percent,
                               .block_size = p.block_size};
        ok(qd_gptq_quantize_cuda(g_c, dw, n, k, dh, &o, codes, s, z, NULL, NULL, NULL, &g_err),
           "gptq warm-up");
        double t[3];
        for (int i = 0; i < 3; i++) {
            double s0 = now_s();
            ok(qd_gptq_quantize_cuda(g_c, dw, n, k, dh, &o, codes, s, z, NULL, NULL, NULL,
                                     &g_err),
               "gptq");
            t[i] = now_s() - s0;
        }
        qsort(t, 3, sizeof t[0], cmp_double);
        record("gptq 4-bit g128 B128 (GPU)", "4096x4096", t[1], 0, false, 0);
        g_res[g_n_res - 1].unit = "";
        if (cpu) {
            qd_qlinear q = {0};
            double s0 = now_s();
            ok(qd_gptq_quantize(hw, n, k, &hs, &p, &q, NULL, NULL, &g_err), "cpu gptq");
            double tc = now_s() - s0;
            record("gptq 4-bit g128 B128 (CPU backend)", "4096x4096", tc, 0, false, 0);
            g_res[g_n_res - 1].unit = "";
            qd_qlinear_free(&q);
        }
        qd_gptq_hessian_done(&hs);
        free(hw);
        free(hx);
        qd_cuda_free(g_c, dw);
        qd_cuda_free(g_c, dh);
        qd_cuda_free(g_c, codes);
        qd_cuda_free(g_c, s);
        qd_cuda_free(g_c, z);
    }

    /* AWQ on one [4096, 4096] linear: a scale-search step (4096 tokens) and auto_clip (512
     * sampled tokens, 10 shrink factors), 4-bit g128 AutoAWQ */
    {
        const int64_t n = 4096, k = 4096, n_tok = 4096, n_clip = 512, ng = k / 128;
        float *w = dev_random(n * k, 0.05f), *x = dev_random(n_tok * k, 1.0f);
        float *yr = dev_alloc((size_t)(n_tok * n) * 4), *s = dev_random(k, 0.5f);
        float *mx = dev_alloc((size_t)(n * ng) * 4);
        ok(qd_matmul_cuda(g_c, yr, x, w, NULL, n_tok, n, k, &g_err), "matmul");
        struct awq_arg la = {x, w, s, yr, mx, n, k, n_tok};
        double t = time_op(run_awq_loss, &la, "awq loss");
        record("awq scale-search step (fq+gemm+sse)", "4096x4096x4096", t, 2.0 * n_tok * n * k,
               true, gemm32);
        la.n_tok = n_clip;
        t = time_op(run_awq_clip, &la, "awq clip");
        record("awq auto_clip search (10 shrinks)", "4096x4096, 512 tok", t,
               2.0 * 10 * n_clip * n * k, true, gemm32);
        if (cpu) {
            float *hw = malloc((size_t)(n * k) * 4), *hx = malloc((size_t)(n_clip * k) * 4);
            float *hm = malloc((size_t)(n * ng) * 4);
            if (!hw || !hx || !hm) die("host memory");
            ok(qd_cuda_download(g_c, hw, w, (size_t)(n * k) * 4, &g_err), "download");
            ok(qd_cuda_download(g_c, hx, x, (size_t)(n_clip * k) * 4, &g_err), "download");
            qd_awq_params p;
            qd_awq_params_default(&p);
            double s0 = now_s();
            ok(qd_awq_clip_search(hw, n, k, hx, n_clip, &p, NULL, hm, &g_err), "cpu clip");
            record("awq auto_clip search (CPU backend)", "4096x4096, 512 tok", now_s() - s0,
                   2.0 * 10 * n_clip * n * k, true, 0);
            free(hw);
            free(hx);
            free(hm);
        }
        qd_cuda_free(g_c, w);
        qd_cuda_free(g_c, x);
        qd_cuda_free(g_c, yr);
        qd_cuda_free(g_c, s);
        qd_cuda_free(g_c, mx);
    }

    printf("\n%-36s %-18s %10s %12s %8s\n", "op", "size", "ms", "achieved", "of ceil");
    for (int i = 0; i < g_n_res; i++) {
        const struct result *r = &g_res[i];
        char rate[32] = "", frac[16] = "";
        if (r->unit[0]) snprintf(rate, sizeof rate, "%.1f %s", r->rate, r->unit);
        if (r->ceiling > 0) snprintf(frac, sizeof frac, "%.0f%%", 100.0 * r->rate / r->ceiling);
        printf("%-36s %-18s %10.3f %12s %8s\n", r->op, r->size, r->ms, rate, frac);
    }
    printf("ceilings: copy %.0f GB/s, SGEMM %.1f TFLOP/s, bf16 GEMM %.1f TFLOP/s\n", bw, gemm32,
           gemm16);
    qd_cuda_close(g_c);
    return 0;
}

#endif /* QD_HAVE_CUDA */
