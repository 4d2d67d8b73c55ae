/*
 * quant_cpu.c - round-to-nearest and FP8 e4m3 weight quantization on the CPU, threaded over
 * rows.
 *
 * DESIGN
 * Every row is independent: a thread takes a contiguous slice of rows and, per group, computes
 * the statistics, the parameters and the codes with the same inline rules as the reference
 * (quant.h), in the same order, so the results are bit-identical to kernels/ref/quant_ref.c
 * (tests/unit/test-quant.c checks it for every rule, width and group size). What differs is
 * only the shape of the code loop: the rule is fixed outside it, so after inlining each loop
 * is straight-line float code the compiler can vectorise, instead of a switch per element.
 * The per-tensor FP8 scale is a maximum, which does not depend on the order of reduction.
 */
#include "ops.h"
#include "quant.h"

/* Below this many weights a thread's start-up costs more than the work. */
#define QD_QUANT_MIN_PER_THREAD 65536

static int threads_for(int64_t elems, int n_threads) {
    int64_t t = elems / QD_QUANT_MIN_PER_THREAD;
    int n = n_threads > 0 ? n_threads : qd_cpu_threads();
    if (t < 1) return 1;
    return t < n ? (int)t : n;
}

/* codes[i] = code of x[i], i < len, with the rule fixed per loop. */
#define QD_CODE_LOOP(RULE)                                                                \
    for (int64_t i = 0; i < len; i++) codes[i] = qd_quant_code(RULE, bits, p, x[i])

static void group_codes(qd_qrule rule, int bits, qd_qparams p, const float *x, int64_t len,
                        uint8_t *codes) {
    switch (rule) {
    case QD_QRULE_ASYM_ZERO_IN_RANGE:
        QD_CODE_LOOP(QD_QRULE_ASYM_ZERO_IN_RANGE);
        break;
    case QD_QRULE_ASYM_MINMAX:
        QD_CODE_LOOP(QD_QRULE_ASYM_MINMAX);
        break;
    case QD_QRULE_SYM_HALF:
        QD_CODE_LOOP(QD_QRULE_SYM_HALF);
        break;
    case QD_QRULE_SYM_MAX:
        QD_CODE_LOOP(QD_QRULE_SYM_MAX);
        break;
    case QD_QRULE_ASYM_FLOAT_ZERO:
        QD_CODE_LOOP(QD_QRULE_ASYM_FLOAT_ZERO);
        break;
    case QD_QRULE_ASYM_ZERO_IN_RANGE_EPS:
        QD_CODE_LOOP(QD_QRULE_ASYM_ZERO_IN_RANGE_EPS);
        break;
    case QD_QRULE_SYM_HALF_EPS:
        QD_CODE_LOOP(QD_QRULE_SYM_HALF_EPS);
        break;
    case QD_QRULE_ASYM_FLOAT_ZERO_SIGNED:
        QD_CODE_LOOP(QD_QRULE_ASYM_FLOAT_ZERO_SIGNED);
        break;
    default:
        QD_CODE_LOOP(rule);
        break;
    }
}

#undef QD_CODE_LOOP

struct rtn_ctx {
    const float *w;
    int64_t k, group_size;
    int bits;
    qd_qrule rule;
    qd_dtype scale_dtype;
    uint8_t *codes;
    float *scales, *zeros;
};

static void rtn_rows(void *arg, int64_t begin, int64_t end) {
    const struct rtn_ctx *c = arg;
    int64_t k = c->k, gs = c->group_size, n_groups = k / gs;
    for (int64_t r = begin; r < end; r++) {
        for (int64_t g = 0; g < n_groups; g++) {
            const float *x = c->w + r * k + g * gs; /* [gs] */
            qd_qparams p =
                qd_quant_params(c->rule, c->bits, qd_qstats_of(x, gs, 1), c->scale_dtype);
            c->scales[r * n_groups + g] = p.scale;
            c->zeros[r * n_groups + g] = p.zero;
            group_codes(c->rule, c->bits, p, x, gs, c->codes + r * k + g * gs);
        }
    }
}

void qd_quant_rtn_cpu(const float *w, int64_t n, int64_t k, int bits, int64_t group_size,
                      qd_qrule rule, qd_dtype scale_dtype, uint8_t *codes, float *scales,
                      float *zeros, int n_threads) {
    struct rtn_ctx c = {w, k, group_size, bits, rule, scale_dtype, codes, scales, zeros};
    qd_cpu_parallel_for(threads_for(n * k, n_threads), n, rtn_rows, &c);
}

struct fp8_ctx {
    const float *w;
    int64_t k;
    bool per_channel;
    qd_dtype scale_dtype;
    float tensor_scale;
    uint8_t *codes;
    float *scales;
};

/* scales[r] = max |w[r, :]| (the per-tensor pass keeps row maxima there before reducing). */
static void fp8_row_amax(void *arg, int64_t begin, int64_t end) {
    const struct fp8_ctx *c = arg;
    for (int64_t r = begin; r < end; r++)
        c->scales[r] = qd_qstats_of(c->w + r * c->k, c->k, 1).amax;
}

static void fp8_rows(void *arg, int64_t begin, int64_t end) {
    const struct fp8_ctx *c = arg;
    for (int64_t r = begin; r < end; r++) {
        const float *x = c->w + r * c->k; /* [k] */
        float s = c->per_channel ? qd_fp8_scale(qd_qstats_of(x, c->k, 1).amax, c->scale_dtype)
                                 : c->tensor_scale;
        c->scales[r] = s;
        uint8_t *out = c->codes + r * c->k;
        for (int64_t i = 0; i < c->k; i++) out[i] = qd_fp8_code(s, x[i]);
    }
}

void qd_quant_fp8_cpu(const float *w, int64_t n, int64_t k, bool per_channel,
                      qd_dtype scale_dtype, uint8_t *codes, float *scales, int n_threads) {
    struct fp8_ctx c = {w, k, per_channel, scale_dtype, 0.0f, codes, scales};
    int nt = threads_for(n * k, n_threads);
    if (!per_channel) {
        qd_cpu_parallel_for(nt, n, fp8_row_amax, &c);
        float amax = 0.0f;
        for (int64_t r = 0; r < n; r++)
            if (scales[r] > amax) amax = scales[r];
        c.tensor_scale = qd_fp8_scale(amax, scale_dtype);
    }
    qd_cpu_parallel_for(nt, n, fp8_rows, &c);
}
