/*
 * spec.c - the job spec: the key table, defaults, validation, the model check, the canonical
 * text and its digest, the YAML and command-line front ends, and the help text.
 *
 * DESIGN
 *
 * One static table, spec_keys[], has a row per key: its YAML name (the proto field path), its
 * flag, its type and the methods that use it. The YAML loader, the flag parser, the help text
 * and the "parameter of another method" check all walk that table, so a key cannot exist in
 * one front end and not the other. The values themselves live in plain struct fields (the
 * daemon fills them from the request without any text), reached from the table by a switch on
 * the field id.
 *
 * Unset is zero, as on the wire. qd_spec_defaults() fills what is unset from the method and
 * the format and never touches what is set, so a bad value always reaches qd_spec_validate().
 * Text front ends refuse an explicit 0 where 0 means "unset" (--bits 0 would otherwise turn
 * into the default without a word).
 *
 * Every field remembers where its value came from (qd_spec_source): a flag, a YAML line, the
 * defaults, or code. Messages use it to name the field the way the user wrote it, so one
 * validator serves the CLI ("--group-size 96: ..."), spec files ("job.yaml:4: group_size 96:
 * ...") and the RPC layer ("spec.group_size 96: ...").
 *
 * The canonical text is written by hand rather than through a JSON library so that its bytes
 * are fixed by this file alone: keys in sorted order (the tests check it), integers in
 * decimal, reals in the shortest form that reads back to the same double, only the fields the
 * method uses (so a stray default of another method cannot split the cache), and
 * modules_to_not_convert sorted and deduplicated (the order of a set means nothing). Changing
 * any of that changes every digest and empties the cache: the golden test in test-spec
 * exists to make that a deliberate act.
 *
 * The YAML loader is common/yamlwalk.c, shared with daemon/config.c: anchors, aliases and
 * tags are refused, every error carries the line of the node at fault, and the only nesting
 * accepted is that of the key names (one level: "awq.n_grid"). It parses into a copy and
 * swaps it in on success.
 */
#include "spec.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <openssl/evp.h>
#include <yaml.h>

#include "fsutil.h"
#include "yamlwalk.h"

/* Spec files are written by hand; anything bigger is a mistake. */
#define SPEC_FILE_MAX ((size_t)1 << 20)
/* Caps on what a client controls. Far above any real use: they bound memory and loops. */
#define MODULES_MAX 1024
#define MODULE_NAME_MAX 256
#define GROUP_SIZE_MAX (1 << 20)
#define GRID_MAX 1000
#define SAMPLE_TOKENS_MAX (1u << 24)
#define BLOCK_SIZE_MAX 65536
#define CALIB_ROWS_MAX (1u << 20)
#define CALIB_SEQ_LEN_MAX (1u << 20)
#define CALIB_PATH_MAX 4096
/* How much of a user's text a message quotes. */
#define EXCERPT_BUF QD_YAML_EXCERPT_BUF
/* A field reference with its value: "job.yaml:12: calibration.path '...'" and the like. */
#define REF_MAX 320

/* ---- names ----------------------------------------------------------------------------------- */

/* Word i names enum value i + 1 (0 is UNSET in every enum here). */
static const char *const method_words[] = {"rtn",  "awq", "gptq", "smoothquant",
                                           "fp8",  "w4a8-awq", NULL};
static const char *const format_words[] = {"awq",       "gptq", "compressed-tensors", "modelopt",
                                           "dashinfer", "none", NULL};
static const char *const weight_scale_words[] = {"tensor", "channel", NULL};
static const char *const activation_words[] = {"static", "dynamic", NULL};
static const char *const scale_dtype_words[] = {"model", "f16", "f32", NULL};

static size_t n_words(const char *const *w) {
    size_t n = 0;
    while (w[n]) n++;
    return n;
}

static const char *word_of(const char *const *words, int v) {
    return v >= 1 && (size_t)v <= n_words(words) ? words[v - 1] : NULL;
}

static int word_value(const char *const *words, const char *name) {
    for (size_t i = 0; name && words[i]; i++)
        if (strcmp(words[i], name) == 0) return (int)i + 1;
    return 0;
}

const char *qd_spec_method_name(qd_spec_method m) { return word_of(method_words, (int)m); }
const char *qd_spec_format_name(qd_spec_format f) { return word_of(format_words, (int)f); }
const char *qd_spec_scale_dtype_name(qd_spec_scale_dtype d) {
    return word_of(scale_dtype_words, (int)d);
}
qd_spec_method qd_spec_method_from_name(const char *name) {
    return (qd_spec_method)word_value(method_words, name);
}
qd_spec_format qd_spec_format_from_name(const char *name) {
    return (qd_spec_format)word_value(format_words, name);
}

/* Write "a, b or c" for the words whose bit is in mask (bit i+1 for word i) into buf. */
static const char *words_text(const char *const *words, unsigned mask, char *buf, size_t cap) {
    size_t o = 0, total = 0, done = 0;
    for (size_t i = 0; words[i]; i++) total += (mask >> (i + 1)) & 1u;
    buf[0] = '\0';
    for (size_t i = 0; words[i] && o < cap; i++) {
        if (!((mask >> (i + 1)) & 1u)) continue;
        const char *sep = done == 0 ? "" : done + 1 == total ? " or " : ", ";
        o += (size_t)snprintf(buf + o, cap - o, "%s%s", sep, words[i]);
        done++;
    }
    return buf;
}

/* ---- the key table --------------------------------------------------------------------------- */

#define M_(m) (1u << QD_SPEC_METHOD_##m)
#define M_ALL (M_(RTN) | M_(AWQ) | M_(GPTQ) | M_(SMOOTHQUANT) | M_(FP8) | M_(W4A8_AWQ))
#define M_CALIB (M_ALL & ~M_(RTN))
#define M_AWQS (M_(AWQ) | M_(W4A8_AWQ))
#define M_FP8S (M_(FP8) | M_(W4A8_AWQ))
#define M_GROUPED (M_ALL & ~M_(FP8))
#define ALL_WORDS_MASK (~0u)

#define KEY_(id, name_, flag_, neg_, type_, words_, methods_, arg_, help_)                    \
    {.field = QD_SPEC_F_##id, .name = name_, .flag = flag_, .neg_flag = neg_,               \
     .type = QD_SPEC_KEY_##type_, .words = words_, .methods = methods_, .arg = arg_,        \
     .help = help_}

/* In qd_spec_field order (test-spec checks). */
static const qd_spec_key spec_keys[] = {
    KEY_(METHOD, "method", "method", NULL, ENUM, method_words, M_ALL, "M",
         "Quantization method (required)."),
    KEY_(FORMAT, "format", "format", NULL, ENUM, format_words, M_ALL, "F",
         "Artifact format; none keeps the result in memory for a report (required)."),
    KEY_(BITS, "bits", "bits", NULL, UINT, NULL, M_ALL, "N", "Weight bits."),
    KEY_(GROUP_SIZE, "group_size", "group-size", NULL, GROUP, NULL, M_GROUPED, "G",
         "Input channels per scale group; -1 = one group per output channel."),
    KEY_(SYMMETRIC, "symmetric", "sym", "asym", TRI, NULL, M_ALL, NULL,
         "Symmetric codes, no zero points (--asym: codes with zero points)."),
    KEY_(MODULES_TO_NOT_CONVERT, "modules_to_not_convert", "modules-to-not-convert", NULL, LIST,
         NULL, M_ALL, "A,B",
         "Modules kept unquantized: names, or runs of whole dot-separated parts of names."),
    KEY_(CALIB_PATH, "calibration.path", "calib", NULL, PATH, NULL, M_CALIB, "FILE",
         "Calibration data file (command line and spec files; the server takes a digest)."),
    KEY_(CALIB_DIGEST, "calibration.digest", "calib-digest", NULL, DIGEST, NULL, M_CALIB, "HEX",
         "Bundle digest of the calibration data (computed from --calib FILE if not given)."),
    KEY_(CALIB_ROWS, "calibration.rows", "calib-rows", NULL, UINT, NULL, M_CALIB, "N",
         "Calibration samples used, the first ones in file order."),
    KEY_(CALIB_SEQ_LEN, "calibration.seq_len", "calib-seq-len", NULL, UINT, NULL, M_CALIB, "N",
         "Tokens per calibration sample, at most."),
    KEY_(AWQ_DUO_SCALING, "awq.duo_scaling", "duo-scaling", "no-duo-scaling", TRI, NULL, M_AWQS,
         NULL, "Scale candidates from mean |x| and mean |w| (AutoAWQ); off: mean |x| only."),
    KEY_(AWQ_N_GRID, "awq.n_grid", "n-grid", NULL, UINT, NULL, M_AWQS, "N",
         "Scale exponents tried: i / n_grid for i = 0 .. n_grid - 1."),
    KEY_(AWQ_APPLY_CLIP, "awq.apply_clip", "apply-clip", "no-apply-clip", TRI, NULL, M_AWQS, NULL,
         "Search a clipping range for every group after scaling."),
    KEY_(AWQ_MAX_SHRINK, "awq.max_shrink", "max-shrink", NULL, REAL, NULL, M_AWQS, "X",
         "Clip search: largest fraction of a group's range cut off, in (0, 1)."),
    KEY_(AWQ_CLIP_N_GRID, "awq.clip_n_grid", "clip-n-grid", NULL, UINT, NULL, M_AWQS, "N",
         "Clip search: the range shrinks in steps of 1 / clip_n_grid."),
    KEY_(AWQ_N_SAMPLE_TOKENS, "awq.n_sample_tokens", "n-sample-tokens", NULL, UINT, NULL, M_AWQS,
         "N", "Clip search: calibration tokens used, evenly strided."),
    KEY_(GPTQ_DAMP_PERCENT, "gptq.damp_percent", "damp-percent", NULL, REAL, NULL, M_(GPTQ), "X",
         "Dampening added to diag(H), as a fraction of its mean, in (0, 1)."),
    KEY_(GPTQ_ACT_ORDER, "gptq.act_order", "act-order", "no-act-order", BOOL, NULL, M_(GPTQ),
         NULL, "Quantize columns in order of decreasing diag(H) (desc_act)."),
    KEY_(GPTQ_STATIC_GROUPS, "gptq.static_groups", "static-groups", "no-static-groups", BOOL,
         NULL, M_(GPTQ), NULL,
         "Fix group parameters before reordering, so group indices stay sequential."),
    KEY_(GPTQ_TRUE_SEQUENTIAL, "gptq.true_sequential", "true-sequential", "no-true-sequential",
         TRI, NULL, M_(GPTQ), NULL,
         "Quantize a layer's linears in order, each seeing the earlier ones quantized."),
    KEY_(GPTQ_BLOCK_SIZE, "gptq.block_size", "block-size", NULL, UINT, NULL, M_(GPTQ), "N",
         "Columns per lazy batch update."),
    KEY_(GPTQ_MSE, "gptq.mse", "mse", "no-mse", BOOL, NULL, M_(GPTQ), NULL,
         "Shrink each group's range to minimise the error in the 2.4-norm (grid of 100)."),
    KEY_(SMOOTHQUANT_ALPHA, "smoothquant.alpha", "alpha", NULL, REAL, NULL, M_(SMOOTHQUANT), "X",
         "Migration strength in [0, 1]: s = max|x|^alpha / max|w|^(1 - alpha)."),
    KEY_(FP8_WEIGHT_SCALE, "fp8.weight_scale", "fp8-weight-scale", NULL, ENUM,
         weight_scale_words, M_FP8S, "G", "FP8 weight scales: one per tensor or per channel."),
    KEY_(FP8_ACTIVATION_SCHEME, "fp8.activation_scheme", "fp8-activation-scheme", NULL, ENUM,
         activation_words, M_FP8S, "S",
         "FP8 activation scales: static per tensor (calibrated) or dynamic per token."),
};

#define N_KEYS (sizeof spec_keys / sizeof spec_keys[0])
_Static_assert(N_KEYS == QD_SPEC_FIELD_COUNT, "one row per qd_spec_field");

size_t qd_spec_key_count(void) { return N_KEYS; }
const qd_spec_key *qd_spec_key_at(size_t i) { return i < N_KEYS ? &spec_keys[i] : NULL; }
const qd_spec_key *qd_spec_key_find(const char *name) {
    for (size_t i = 0; name && i < N_KEYS; i++)
        if (strcmp(spec_keys[i].name, name) == 0) return &spec_keys[i];
    return NULL;
}

static const qd_spec_key *key_of(qd_spec_field f) { return &spec_keys[f]; }

/* ---- field access ---------------------------------------------------------------------------- */

static int enum_get(const qd_spec *s, qd_spec_field f) {
    switch (f) {
    case QD_SPEC_F_METHOD: return (int)s->method;
    case QD_SPEC_F_FORMAT: return (int)s->format;
    case QD_SPEC_F_FP8_WEIGHT_SCALE: return (int)s->fp8.weight_scale;
    case QD_SPEC_F_FP8_ACTIVATION_SCHEME: return (int)s->fp8.activation_scheme;
    default: return 0;
    }
}

static void enum_set(qd_spec *s, qd_spec_field f, int v) {
    switch (f) {
    case QD_SPEC_F_METHOD: s->method = (qd_spec_method)v; break;
    case QD_SPEC_F_FORMAT: s->format = (qd_spec_format)v; break;
    case QD_SPEC_F_FP8_WEIGHT_SCALE: s->fp8.weight_scale = (qd_spec_fp8_weight_scale)v; break;
    case QD_SPEC_F_FP8_ACTIVATION_SCHEME:
        s->fp8.activation_scheme = (qd_spec_fp8_activation)v;
        break;
    default: break;
    }
}

static uint32_t *uint_ptr(qd_spec *s, qd_spec_field f) {
    switch (f) {
    case QD_SPEC_F_BITS: return &s->bits;
    case QD_SPEC_F_CALIB_ROWS: return &s->calibration.rows;
    case QD_SPEC_F_CALIB_SEQ_LEN: return &s->calibration.seq_len;
    case QD_SPEC_F_AWQ_N_GRID: return &s->awq.n_grid;
    case QD_SPEC_F_AWQ_CLIP_N_GRID: return &s->awq.clip_n_grid;
    case QD_SPEC_F_AWQ_N_SAMPLE_TOKENS: return &s->awq.n_sample_tokens;
    case QD_SPEC_F_GPTQ_BLOCK_SIZE: return &s->gptq.block_size;
    default: return NULL;
    }
}

static qd_spec_tri *tri_ptr(qd_spec *s, qd_spec_field f) {
    switch (f) {
    case QD_SPEC_F_SYMMETRIC: return &s->symmetric;
    case QD_SPEC_F_AWQ_DUO_SCALING: return &s->awq.duo_scaling;
    case QD_SPEC_F_AWQ_APPLY_CLIP: return &s->awq.apply_clip;
    case QD_SPEC_F_GPTQ_TRUE_SEQUENTIAL: return &s->gptq.true_sequential;
    default: return NULL;
    }
}

static bool *bool_ptr(qd_spec *s, qd_spec_field f) {
    switch (f) {
    case QD_SPEC_F_GPTQ_ACT_ORDER: return &s->gptq.act_order;
    case QD_SPEC_F_GPTQ_STATIC_GROUPS: return &s->gptq.static_groups;
    case QD_SPEC_F_GPTQ_MSE: return &s->gptq.mse;
    default: return NULL;
    }
}

static double *real_ptr(qd_spec *s, qd_spec_field f) {
    switch (f) {
    case QD_SPEC_F_AWQ_MAX_SHRINK: return &s->awq.max_shrink;
    case QD_SPEC_F_GPTQ_DAMP_PERCENT: return &s->gptq.damp_percent;
    case QD_SPEC_F_SMOOTHQUANT_ALPHA: return &s->smoothquant.alpha;
    default: return NULL;
    }
}

/* Read-only views of the same fields (the cast only serves the shared switch). */
static uint32_t get_uint(const qd_spec *s, qd_spec_field f) { return *uint_ptr((qd_spec *)s, f); }
static qd_spec_tri get_tri(const qd_spec *s, qd_spec_field f) { return *tri_ptr((qd_spec *)s, f); }
static bool get_bool(const qd_spec *s, qd_spec_field f) { return *bool_ptr((qd_spec *)s, f); }
static double get_real(const qd_spec *s, qd_spec_field f) { return *real_ptr((qd_spec *)s, f); }

/* Whether the field holds a value (its unset state is zero, except alpha's flag). */
static bool has_value(const qd_spec *s, qd_spec_field f) {
    switch (key_of(f)->type) {
    case QD_SPEC_KEY_ENUM: return enum_get(s, f) != 0;
    case QD_SPEC_KEY_UINT: return get_uint(s, f) != 0;
    case QD_SPEC_KEY_GROUP: return s->group_size != 0;
    case QD_SPEC_KEY_TRI: return get_tri(s, f) != QD_SPEC_UNSET;
    case QD_SPEC_KEY_BOOL: return get_bool(s, f);
    case QD_SPEC_KEY_REAL:
        return f == QD_SPEC_F_SMOOTHQUANT_ALPHA ? s->smoothquant.has_alpha : get_real(s, f) != 0;
    case QD_SPEC_KEY_PATH: return s->calibration.path != NULL;
    case QD_SPEC_KEY_DIGEST: return s->calibration.digest[0] != '\0';
    case QD_SPEC_KEY_LIST: return s->n_modules_to_not_convert > 0;
    }
    return false;
}

/* Whether the user asked for the field: written in text (even as false), or holding a value. */
static bool given(const qd_spec *s, qd_spec_field f) {
    uint8_t o = s->source[f].origin;
    return o == QD_SPEC_FROM_FLAG || o == QD_SPEC_FROM_YAML || has_value(s, f);
}

static void mark(qd_spec *s, qd_spec_field f, qd_spec_origin o) {
    s->source[f].origin = (uint8_t)o;
    s->source[f].negated = 0;
    s->source[f].line = 0;
}

/* ---- messages -------------------------------------------------------------------------------- */

/* s quoted for a message (see qd_yaml_excerpt). */
static const char *excerpt(const char *s, char *buf, size_t cap) {
    return qd_yaml_excerpt(s, strlen(s), buf, cap);
}

/* The shortest decimal text that reads back as exactly v ("0.01", "0.5", "1e-05"). */
static void real_text(double v, char *buf, size_t cap) {
    if (v == 0) v = 0; /* -0 and 0 mean the same: write both as 0 */
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, cap, "%.*g", p, v);
        if (strtod(buf, NULL) == v) break;
    }
}

static bool is_hex_digest(const char *d);

/* The field's value as text. */
static const char *value_text(const qd_spec *s, qd_spec_field f, char *buf, size_t cap) {
    const qd_spec_key *k = key_of(f);
    char q[EXCERPT_BUF];
    switch (k->type) {
    case QD_SPEC_KEY_ENUM: {
        const char *w = word_of(k->words, enum_get(s, f));
        if (w) snprintf(buf, cap, "%s", w);
        else snprintf(buf, cap, "%d", enum_get(s, f));
        break;
    }
    case QD_SPEC_KEY_UINT: snprintf(buf, cap, "%" PRIu32, get_uint(s, f)); break;
    case QD_SPEC_KEY_GROUP: snprintf(buf, cap, "%" PRId32, s->group_size); break;
    case QD_SPEC_KEY_TRI:
        snprintf(buf, cap, "%s", get_tri(s, f) == QD_SPEC_TRUE    ? "true"
                                 : get_tri(s, f) == QD_SPEC_FALSE ? "false"
                                                                  : "unset");
        break;
    case QD_SPEC_KEY_BOOL: snprintf(buf, cap, "%s", get_bool(s, f) ? "true" : "false"); break;
    case QD_SPEC_KEY_REAL: real_text(get_real(s, f), buf, cap); break;
    case QD_SPEC_KEY_PATH:
        snprintf(buf, cap, "'%s'",
                 s->calibration.path ? excerpt(s->calibration.path, q, sizeof q) : "");
        break;
    case QD_SPEC_KEY_DIGEST: /* a well-formed digest is quoted whole: it is what to compare */
        snprintf(buf, cap, "'%s'",
                 is_hex_digest(s->calibration.digest) ? s->calibration.digest
                                                      : excerpt(s->calibration.digest, q,
                                                                sizeof q));
        break;
    case QD_SPEC_KEY_LIST: buf[0] = '\0'; break;
    }
    return buf;
}

/*
 * The field as the user wrote it, with its value: "--group-size 96", "--asym",
 * "job.yaml:4: group_size 96", "group_size 128 (default)", "spec.group_size 96".
 */
static const char *ref(const qd_spec *s, qd_spec_field f, char *buf, size_t cap) {
    const qd_spec_key *k = key_of(f);
    const qd_spec_source *src = &s->source[f];
    char v[EXCERPT_BUF + 8];
    value_text(s, f, v, sizeof v);
    const char *sp = v[0] ? " " : "";
    bool flagword = k->type == QD_SPEC_KEY_TRI || k->type == QD_SPEC_KEY_BOOL;
    switch (src->origin) {
    case QD_SPEC_FROM_FLAG:
        if (flagword) snprintf(buf, cap, "--%s", src->negated ? k->neg_flag : k->flag);
        else snprintf(buf, cap, "--%s%s%s", k->flag, sp, v);
        break;
    case QD_SPEC_FROM_YAML:
        snprintf(buf, cap, "%s:%" PRIu32 ": %s%s%s", s->source_file ? s->source_file : "spec",
                 src->line, k->name, sp, v);
        break;
    case QD_SPEC_FROM_DEFAULT: snprintf(buf, cap, "%s%s%s (default)", k->name, sp, v); break;
    default: snprintf(buf, cap, "spec.%s%s%s", k->name, sp, v); break;
    }
    return buf;
}

/* How to set a key: "--bits (bits)", for messages about a missing field. */
static const char *how(qd_spec_field f, char *buf, size_t cap) {
    const qd_spec_key *k = key_of(f);
    snprintf(buf, cap, "--%s (%s)", k->flag, k->name);
    return buf;
}

__attribute__((format(printf, 2, 3))) static void warn_add(qd_spec_warnings *w, const char *fmt,
                                                           ...) {
    if (!w || w->n >= QD_SPEC_WARN_MAX) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->msg[w->n], sizeof w->msg[w->n], fmt, ap);
    va_end(ap);
    w->n++;
}

/* ---- life cycle ------------------------------------------------------------------------------ */

static void free_list(char **items, size_t n) {
    for (size_t i = 0; items && i < n; i++) free(items[i]);
    free(items);
}

void qd_spec_free(qd_spec *s) {
    if (!s) return;
    free(s->calibration.path);
    free_list(s->modules_to_not_convert, s->n_modules_to_not_convert);
    free(s->source_file);
    memset(s, 0, sizeof *s);
}

static char *dup_or_null(const char *p, bool *oom) {
    if (!p) return NULL;
    char *d = strdup(p);
    if (!d) *oom = true;
    return d;
}

qd_err qd_spec_copy(qd_spec *dst, const qd_spec *src, qd_error *err) {
    bool oom = false;
    *dst = *src;
    dst->calibration.path = dup_or_null(src->calibration.path, &oom);
    dst->source_file = dup_or_null(src->source_file, &oom);
    dst->modules_to_not_convert = NULL;
    dst->n_modules_to_not_convert = 0;
    if (!oom && src->n_modules_to_not_convert > 0) {
        dst->modules_to_not_convert =
            calloc(src->n_modules_to_not_convert, sizeof *dst->modules_to_not_convert);
        if (!dst->modules_to_not_convert) oom = true;
        for (size_t i = 0; !oom && i < src->n_modules_to_not_convert; i++) {
            dst->modules_to_not_convert[i] = dup_or_null(src->modules_to_not_convert[i], &oom);
            dst->n_modules_to_not_convert = i + 1;
        }
    }
    if (oom) {
        qd_spec_free(dst);
        return qd_error_set(err, QD_ERR_NOMEM, "spec: out of memory");
    }
    return QD_OK;
}

/* ---- what each method and format holds ------------------------------------------------------- */

static bool method_valid(qd_spec_method m) {
    return m > QD_SPEC_METHOD_UNSET && m < QD_SPEC_METHOD_COUNT;
}
static bool format_valid(qd_spec_format f) {
    return f > QD_SPEC_FORMAT_UNSET && f < QD_SPEC_FORMAT_COUNT;
}

/* Methods each format can hold (bit 1 << method). */
static unsigned format_methods(qd_spec_format f) {
    switch (f) {
    case QD_SPEC_FORMAT_AWQ:
    case QD_SPEC_FORMAT_GPTQ:
    case QD_SPEC_FORMAT_DASHINFER: return M_(RTN) | M_(AWQ) | M_(GPTQ);
    case QD_SPEC_FORMAT_COMPRESSED_TENSORS:
        return M_(RTN) | M_(AWQ) | M_(GPTQ) | M_(SMOOTHQUANT) | M_(FP8);
    /* quantd's ModelOpt packer writes W4A16_AWQ, W4A8_AWQ and INT8 SmoothQuant; FP8 weights
     * go to compressed-tensors (float-quantized), which vLLM and TensorRT-LLM both read. */
    case QD_SPEC_FORMAT_MODELOPT: return M_(AWQ) | M_(SMOOTHQUANT) | M_(W4A8_AWQ);
    case QD_SPEC_FORMAT_NONE: return M_ALL;
    default: return 0;
    }
}

/* Why format f cannot hold method m (only called when it cannot). */
static const char *format_refusal(qd_spec_format f, qd_spec_method m) {
    if (f == QD_SPEC_FORMAT_MODELOPT && m == QD_SPEC_METHOD_FP8)
        return "quantd writes FP8 checkpoints as compressed-tensors float-quantized";
    if (f == QD_SPEC_FORMAT_MODELOPT)
        return "ModelOpt's int4 weights come from AWQ (W4A16_AWQ, W4A8_AWQ)";
    if (f == QD_SPEC_FORMAT_COMPRESSED_TENSORS)
        return "compressed-tensors has no int4-weight, fp8-activation scheme";
    if (m == QD_SPEC_METHOD_SMOOTHQUANT || m == QD_SPEC_METHOD_FP8 ||
        m == QD_SPEC_METHOD_W4A8_AWQ)
        return "it holds int weights with fp16 activations only";
    return "unsupported";
}

/* Weight bits a method quantizes to (bit 1 << bits). */
static uint32_t method_bits(qd_spec_method m) {
    switch (m) {
    case QD_SPEC_METHOD_RTN:
    case QD_SPEC_METHOD_AWQ:
    case QD_SPEC_METHOD_GPTQ: return (1u << 4) | (1u << 8);
    case QD_SPEC_METHOD_SMOOTHQUANT:
    case QD_SPEC_METHOD_FP8: return 1u << 8;
    case QD_SPEC_METHOD_W4A8_AWQ: return 1u << 4;
    default: return 0;
    }
}

static uint32_t default_bits(qd_spec_method m) {
    return m == QD_SPEC_METHOD_SMOOTHQUANT || m == QD_SPEC_METHOD_FP8 ? 8 : 4;
}

/* Methods whose weights are always symmetric. */
#define M_SYM_ONLY (M_(SMOOTHQUANT) | M_(FP8) | M_(W4A8_AWQ))

static qd_spec_tri default_symmetric(qd_spec_method m, qd_spec_format f) {
    if ((M_SYM_ONLY >> m) & 1u) return QD_SPEC_TRUE;
    switch (f) {
    case QD_SPEC_FORMAT_AWQ: return QD_SPEC_FALSE;
    case QD_SPEC_FORMAT_GPTQ:
    case QD_SPEC_FORMAT_MODELOPT:
    case QD_SPEC_FORMAT_DASHINFER: return QD_SPEC_TRUE;
    default: return m == QD_SPEC_METHOD_AWQ ? QD_SPEC_FALSE : QD_SPEC_TRUE;
    }
}

static qd_spec_scale_dtype default_scale_dtype(qd_spec_format f) {
    switch (f) {
    case QD_SPEC_FORMAT_AWQ:
    case QD_SPEC_FORMAT_GPTQ:
    case QD_SPEC_FORMAT_DASHINFER: return QD_SPEC_SCALE_DTYPE_F16;
    case QD_SPEC_FORMAT_COMPRESSED_TENSORS: return QD_SPEC_SCALE_DTYPE_MODEL;
    case QD_SPEC_FORMAT_MODELOPT:
    case QD_SPEC_FORMAT_NONE: return QD_SPEC_SCALE_DTYPE_F32;
    default: return QD_SPEC_SCALE_DTYPE_UNSET;
    }
}

/* Calibration defaults: samples and tokens per sample, from each method's reference. */
static void default_calibration(qd_spec_method m, uint32_t *rows, uint32_t *seq_len) {
    switch (m) {
    case QD_SPEC_METHOD_GPTQ: *rows = 128, *seq_len = 2048; break;
    case QD_SPEC_METHOD_SMOOTHQUANT:
    case QD_SPEC_METHOD_FP8: *rows = 512, *seq_len = 512; break;
    default: *rows = 128, *seq_len = 512; break;
    }
}

bool qd_spec_needs_calibration(const qd_spec *s) {
    switch (s->method) {
    case QD_SPEC_METHOD_AWQ:
    case QD_SPEC_METHOD_GPTQ:
    case QD_SPEC_METHOD_SMOOTHQUANT:
    case QD_SPEC_METHOD_W4A8_AWQ: return true;
    case QD_SPEC_METHOD_FP8:
        return s->fp8.activation_scheme != QD_SPEC_FP8_ACTIVATION_DYNAMIC;
    default: return false;
    }
}

const char *qd_spec_gptq_checkpoint_format(const qd_spec *s) {
    if (s->format != QD_SPEC_FORMAT_GPTQ) return NULL;
    return s->symmetric == QD_SPEC_FALSE ? "gptq_v2" : "gptq";
}

/* ---- defaults -------------------------------------------------------------------------------- */

#define SET_DEFAULT_(field_id, lvalue, value)                                                 \
    do {                                                                                      \
        if (!has_value(s, QD_SPEC_F_##field_id)) {                                            \
            (lvalue) = (value);                                                               \
            mark(s, QD_SPEC_F_##field_id, QD_SPEC_FROM_DEFAULT);                              \
        }                                                                                     \
    } while (0)

static void fp8_defaults(qd_spec *s) {
    qd_spec_fp8 *p = &s->fp8;
    if (s->method == QD_SPEC_METHOD_W4A8_AWQ) {
        /* ModelOpt's W4A8_AWQ: fp8 per-tensor second-level weight scale, static inputs. */
        SET_DEFAULT_(FP8_WEIGHT_SCALE, p->weight_scale, QD_SPEC_FP8_WEIGHT_SCALE_TENSOR);
        SET_DEFAULT_(FP8_ACTIVATION_SCHEME, p->activation_scheme, QD_SPEC_FP8_ACTIVATION_STATIC);
        return;
    }
    /* The two presets every FP8 writer has: per-tensor weights with static activations
     * (llm-compressor FP8, ModelOpt FP8) and per-channel weights with dynamic per-token
     * activations (FP8_DYNAMIC, FP8_PER_CHANNEL_PER_TOKEN). One key given picks its pair. */
    if (p->weight_scale == QD_SPEC_FP8_WEIGHT_SCALE_UNSET &&
        p->activation_scheme == QD_SPEC_FP8_ACTIVATION_UNSET) {
        bool modelopt = s->format == QD_SPEC_FORMAT_MODELOPT;
        SET_DEFAULT_(FP8_WEIGHT_SCALE, p->weight_scale,
                     modelopt ? QD_SPEC_FP8_WEIGHT_SCALE_TENSOR : QD_SPEC_FP8_WEIGHT_SCALE_CHANNEL);
        SET_DEFAULT_(FP8_ACTIVATION_SCHEME, p->activation_scheme,
                     modelopt ? QD_SPEC_FP8_ACTIVATION_STATIC : QD_SPEC_FP8_ACTIVATION_DYNAMIC);
    } else if (p->weight_scale == QD_SPEC_FP8_WEIGHT_SCALE_UNSET) {
        SET_DEFAULT_(FP8_WEIGHT_SCALE, p->weight_scale,
                     p->activation_scheme == QD_SPEC_FP8_ACTIVATION_STATIC
                         ? QD_SPEC_FP8_WEIGHT_SCALE_TENSOR
                         : QD_SPEC_FP8_WEIGHT_SCALE_CHANNEL);
    } else if (p->activation_scheme == QD_SPEC_FP8_ACTIVATION_UNSET) {
        SET_DEFAULT_(FP8_ACTIVATION_SCHEME, p->activation_scheme,
                     p->weight_scale == QD_SPEC_FP8_WEIGHT_SCALE_TENSOR
                         ? QD_SPEC_FP8_ACTIVATION_STATIC
                         : QD_SPEC_FP8_ACTIVATION_DYNAMIC);
    }
}

void qd_spec_defaults(qd_spec *s) {
    qd_spec_method m = s->method;
    if (s->scale_dtype == QD_SPEC_SCALE_DTYPE_UNSET)
        s->scale_dtype = default_scale_dtype(s->format);
    if (!method_valid(m)) return;
    unsigned mb = 1u << m;

    SET_DEFAULT_(BITS, s->bits, default_bits(m));
    if (mb & M_GROUPED)
        SET_DEFAULT_(GROUP_SIZE, s->group_size,
                     s->bits == 8 || m == QD_SPEC_METHOD_SMOOTHQUANT ? -1 : 128);
    SET_DEFAULT_(SYMMETRIC, s->symmetric, default_symmetric(m, s->format));
    if (mb & M_FP8S) fp8_defaults(s);
    if (qd_spec_needs_calibration(s)) {
        uint32_t rows, seq_len;
        default_calibration(m, &rows, &seq_len);
        SET_DEFAULT_(CALIB_ROWS, s->calibration.rows, rows);
        SET_DEFAULT_(CALIB_SEQ_LEN, s->calibration.seq_len, seq_len);
    }
    if (mb & M_AWQS) {
        SET_DEFAULT_(AWQ_DUO_SCALING, s->awq.duo_scaling, QD_SPEC_TRUE);
        SET_DEFAULT_(AWQ_N_GRID, s->awq.n_grid, 20);
        SET_DEFAULT_(AWQ_APPLY_CLIP, s->awq.apply_clip, QD_SPEC_TRUE);
        SET_DEFAULT_(AWQ_MAX_SHRINK, s->awq.max_shrink, 0.5);
        SET_DEFAULT_(AWQ_CLIP_N_GRID, s->awq.clip_n_grid, 20);
        SET_DEFAULT_(AWQ_N_SAMPLE_TOKENS, s->awq.n_sample_tokens, 512);
    }
    if (m == QD_SPEC_METHOD_GPTQ) {
        SET_DEFAULT_(GPTQ_DAMP_PERCENT, s->gptq.damp_percent, 0.01);
        SET_DEFAULT_(GPTQ_TRUE_SEQUENTIAL, s->gptq.true_sequential, QD_SPEC_TRUE);
        SET_DEFAULT_(GPTQ_BLOCK_SIZE, s->gptq.block_size, 128);
    }
    if (m == QD_SPEC_METHOD_SMOOTHQUANT && !s->smoothquant.has_alpha) {
        s->smoothquant.alpha = 0.5;
        s->smoothquant.has_alpha = true;
        mark(s, QD_SPEC_F_SMOOTHQUANT_ALPHA, QD_SPEC_FROM_DEFAULT);
    }
}

/* ---- validation ------------------------------------------------------------------------------ */

static bool is_hex_digest(const char *d) {
    size_t n = 0;
    for (; d[n]; n++)
        if (!((d[n] >= '0' && d[n] <= '9') || (d[n] >= 'a' && d[n] <= 'f'))) return false;
    return n == 64;
}

/* A module pattern: dot-separated parts of [A-Za-z0-9_-], none empty. */
static bool module_pattern_ok(const char *p) {
    size_t n = strlen(p);
    if (n == 0 || n > MODULE_NAME_MAX || p[0] == '.' || p[n - 1] == '.') return false;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (c == '.' && p[i + 1] == '.') return false;
        if (!(c == '.' || c == '_' || c == '-' || (c >= '0' && c <= '9') ||
              (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')))
            return false;
    }
    return true;
}

/* Fail with "<field ref>: <message>". */
__attribute__((format(printf, 5, 6))) static qd_err fail_field(qd_error *err, qd_err code,
                                                               const qd_spec *s, qd_spec_field f,
                                                               const char *fmt, ...) {
    char r[REF_MAX], msg[QD_ERROR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return qd_error_set(err, code, "%s: %s", ref(s, f, r, sizeof r), msg);
}

/* A field that qd_spec_defaults() should have filled is still unset. */
static qd_err not_set(qd_error *err, qd_spec_field f) {
    char h[128];
    return qd_error_set(err, QD_ERR_INVALID_ARG, "%s: not set (qd_spec_defaults() fills it)",
                        how(f, h, sizeof h));
}

static qd_err check_method_format(const qd_spec *s, qd_error *err) {
    char list[160], h[128];
    if (!given(s, QD_SPEC_F_METHOD))
        return qd_error_set(err, QD_ERR_INVALID_ARG, "%s: required: one of %s",
                            how(QD_SPEC_F_METHOD, h, sizeof h),
                            words_text(method_words, ALL_WORDS_MASK, list, sizeof list));
    if (!method_valid(s->method))
        return fail_field(err, QD_ERR_INVALID_ARG, s, QD_SPEC_F_METHOD, "unknown method");
    if (!given(s, QD_SPEC_F_FORMAT))
        return qd_error_set(err, QD_ERR_INVALID_ARG, "%s: required: one of %s",
                            how(QD_SPEC_F_FORMAT, h, sizeof h),
                            words_text(format_words, ALL_WORDS_MASK, list, sizeof list));
    if (!format_valid(s->format))
        return fail_field(err, QD_ERR_INVALID_ARG, s, QD_SPEC_F_FORMAT, "unknown format");
    if (!((format_methods(s->format) >> s->method) & 1u)) {
        unsigned fm = 0;
        for (int f = 1; f < QD_SPEC_FORMAT_COUNT; f++)
            if ((format_methods((qd_spec_format)f) >> s->method) & 1u) fm |= 1u << f;
        return fail_field(err, QD_ERR_UNSUPPORTED, s, QD_SPEC_F_FORMAT,
                          "cannot hold method %s (%s); %s writes %s",
                          qd_spec_method_name(s->method), format_refusal(s->format, s->method),
                          qd_spec_method_name(s->method),
                          words_text(format_words, fm, list, sizeof list));
    }
    return QD_OK;
}

static qd_err check_bits(const qd_spec *s, qd_error *err) {
    const qd_spec_field F = QD_SPEC_F_BITS;
    uint32_t b = s->bits;
    qd_spec_method m = s->method;
    if (b == 0) return not_set(err, F);
    /* An in-memory report (format none) writes no layout, so any integer width 2..8 of the
     * integer methods can be measured (w3 is where AWQ and GPTQ show most against RTN). */
    if (s->format == QD_SPEC_FORMAT_NONE && b >= 2 && b <= 8 &&
        (m == QD_SPEC_METHOD_RTN || m == QD_SPEC_METHOD_AWQ || m == QD_SPEC_METHOD_GPTQ))
        return QD_OK;
    if (b < 32 && ((method_bits(m) >> b) & 1u)) {
        /* Formats that narrow the method's bits. */
        if (s->format == QD_SPEC_FORMAT_AWQ && b != 4)
            return fail_field(err, QD_ERR_UNSUPPORTED, s, F,
                              "format awq (AutoAWQ GEMM) holds only 4-bit weights");
        if (s->format == QD_SPEC_FORMAT_MODELOPT && m == QD_SPEC_METHOD_AWQ && b != 4)
            return fail_field(err, QD_ERR_UNSUPPORTED, s, F,
                              "ModelOpt holds AWQ weights as int4 only (W4A16_AWQ)");
        return QD_OK;
    }
    if (m == QD_SPEC_METHOD_GPTQ && b == 3)
        return fail_field(err, QD_ERR_UNSUPPORTED, s, F,
                          "GPTQ's 3-bit layout spreads 10+1+10+1+10 values over three words and "
                          "vLLM's Marlin kernels do not read it; quantd writes GPTQ with 4 or 8 "
                          "bits");
    if (m == QD_SPEC_METHOD_GPTQ && b == 2)
        return fail_field(err, QD_ERR_UNSUPPORTED, s, F,
                          "2-bit GPTQ loses too much to be served and vLLM's Marlin kernels take "
                          "4 and 8 bits only; quantd writes GPTQ with 4 or 8 bits");
    switch (m) {
    case QD_SPEC_METHOD_SMOOTHQUANT:
        return fail_field(err, QD_ERR_UNSUPPORTED, s, F,
                          "smoothquant is W8A8: int8 weights, so bits must be 8");
    case QD_SPEC_METHOD_FP8:
        return fail_field(err, QD_ERR_UNSUPPORTED, s, F,
                          "fp8 weights are 8-bit e4m3, so bits must be 8");
    case QD_SPEC_METHOD_W4A8_AWQ:
        return fail_field(err, QD_ERR_UNSUPPORTED, s, F,
                          "w4a8-awq has int4 weights, so bits must be 4");
    default:
        return fail_field(err, b < 32 ? QD_ERR_UNSUPPORTED : QD_ERR_INVALID_ARG, s, F,
                          "method %s quantizes weights to 4 or 8 bits",
                          qd_spec_method_name(m));
    }
}

/* Group sizes vLLM's Marlin kernels take (utils/marlin_utils.py). */
static bool marlin_group(int32_t g) { return g == -1 || g == 32 || g == 64 || g == 128; }

static qd_err check_group(const qd_spec *s, qd_spec_warnings *warn, qd_error *err) {
    const qd_spec_field F = QD_SPEC_F_GROUP_SIZE;
    int32_t g = s->group_size;
    if (s->method == QD_SPEC_METHOD_FP8) {
        if (given(s, F))
            return fail_field(err, QD_ERR_INVALID_ARG, s, F,
                              "fp8 has no groups; --fp8-weight-scale (fp8.weight_scale) picks "
                              "per-tensor or per-channel scales");
        return QD_OK;
    }
    if (g == 0) return not_set(err, F);
    if (g < -1 || g > GROUP_SIZE_MAX)
        return fail_field(err, QD_ERR_INVALID_ARG, s, F,
                          "must be -1 (one group per output channel) or 1..%d", GROUP_SIZE_MAX);
    switch (s->format) {
    case QD_SPEC_FORMAT_MODELOPT:
        if (s->method == QD_SPEC_METHOD_SMOOTHQUANT) break;
        if (s->method == QD_SPEC_METHOD_W4A8_AWQ && g != 128)
            return fail_field(err, QD_ERR_UNSUPPORTED, s, F,
                              "TensorRT-LLM's int4-weight, fp8-activation kernels take only "
                              "group_size 128");
        if (g != 64 && g != 128)
            return fail_field(err, QD_ERR_UNSUPPORTED, s, F,
                              "ModelOpt int4 AWQ checkpoints run on TensorRT-LLM's groupwise "
                              "kernels, which take group_size 64 or 128");
        break;
    case QD_SPEC_FORMAT_DASHINFER:
        if (g != -1 && g != 64 && g != 128 && g != 256 && g != 512)
            return fail_field(err, QD_ERR_UNSUPPORTED, s, F,
                              "DashInfer takes group_size -1, 64, 128, 256 or 512");
        break;
    case QD_SPEC_FORMAT_AWQ:
    case QD_SPEC_FORMAT_GPTQ:
    case QD_SPEC_FORMAT_COMPRESSED_TENSORS:
        if (!marlin_group(g)) {
            char r[REF_MAX];
            warn_add(warn,
                     "%s: vLLM's Marlin kernels take group_size -1, 32, 64 or 128; this "
                     "checkpoint loads, but vLLM serves it with a slower kernel or not at all",
                     ref(s, F, r, sizeof r));
        }
        break;
    default: break;
    }
    if (s->method == QD_SPEC_METHOD_SMOOTHQUANT && g != -1)
        return fail_field(err, QD_ERR_UNSUPPORTED, s, F,
                          "smoothquant scales int8 weights per output channel: group_size must "
                          "be -1");
    return QD_OK;
}

static qd_err check_symmetric(const qd_spec *s, qd_spec_warnings *warn, qd_error *err) {
    const qd_spec_field F = QD_SPEC_F_SYMMETRIC;
    qd_spec_tri sym = s->symmetric;
    if (sym == QD_SPEC_UNSET) return not_set(err, F);
    if (sym != QD_SPEC_TRUE && sym != QD_SPEC_FALSE)
        return fail_field(err, QD_ERR_INVALID_ARG, s, F, "not a tri-state value");
    if (sym == QD_SPEC_FALSE) {
        switch (s->method) {
        case QD_SPEC_METHOD_SMOOTHQUANT:
            return fail_field(err, QD_ERR_UNSUPPORTED, s, F,
                              "smoothquant's int8 weights are symmetric (no zero points)");
        case QD_SPEC_METHOD_FP8:
            return fail_field(err, QD_ERR_UNSUPPORTED, s, F, "fp8 has no zero points");
        case QD_SPEC_METHOD_W4A8_AWQ:
            return fail_field(err, QD_ERR_UNSUPPORTED, s, F,
                              "ModelOpt's W4A8_AWQ stores no zero points");
        default: break;
        }
        if (s->format == QD_SPEC_FORMAT_MODELOPT)
            return fail_field(err, QD_ERR_UNSUPPORTED, s, F,
                              "ModelOpt's int4 AWQ stores no zero points (has_zero_point false)");
        if (s->format == QD_SPEC_FORMAT_DASHINFER)
            return fail_field(err, QD_ERR_UNSUPPORTED, s, F,
                              "DashInfer reads GPTQ v1, which stores zero - 1 and so cannot hold "
                              "a zero point of 0; quantd writes it symmetric only");
        if (s->format == QD_SPEC_FORMAT_GPTQ) {
            char r[REF_MAX];
            warn_add(warn,
                     "%s: asymmetric GPTQ is written as checkpoint_format gptq_v2 (raw zero "
                     "points; v1's zero - 1 wraps a zero point of 0): vLLM serves it with its "
                     "gptq kernel, not Marlin, and AutoGPTQ does not read v2",
                     ref(s, F, r, sizeof r));
        }
    } else if (s->format == QD_SPEC_FORMAT_AWQ) {
        return fail_field(err, QD_ERR_UNSUPPORTED, s, F,
                          "AutoAWQ GEMM needs zero points (WQLinear_GEMM.from_linear requires "
                          "them); use --asym, or format gptq or compressed-tensors");
    }
    return QD_OK;
}

static qd_err check_calibration(const qd_spec *s, qd_error *err) {
    static const qd_spec_field fields[] = {QD_SPEC_F_CALIB_PATH, QD_SPEC_F_CALIB_DIGEST,
                                           QD_SPEC_F_CALIB_ROWS, QD_SPEC_F_CALIB_SEQ_LEN};
    const qd_spec_calibration *c = &s->calibration;
    bool need = qd_spec_needs_calibration(s);
    bool fp8 = s->method == QD_SPEC_METHOD_FP8;
    if (!need) {
        for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
            if (given(s, fields[i]))
                return fail_field(err, QD_ERR_INVALID_ARG, s, fields[i],
                                  "%s reads no calibration data",
                                  fp8 ? "fp8 with dynamic activation scales"
                                      : qd_spec_method_name(s->method));
        return QD_OK;
    }
    if (!c->path && !c->digest[0])
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "calibration: method %s%s needs calibration data: give --calib FILE "
                            "(calibration.path) or --calib-digest (calibration.digest)%s",
                            qd_spec_method_name(s->method),
                            fp8 ? " with static activation scales" : "",
                            fp8 ? ", or --fp8-activation-scheme dynamic" : "");
    if (c->path && (c->path[0] == '\0' || strlen(c->path) >= CALIB_PATH_MAX))
        return fail_field(err, QD_ERR_INVALID_ARG, s, QD_SPEC_F_CALIB_PATH,
                          "expected a file path of 1..%d bytes", CALIB_PATH_MAX - 1);
    if (c->digest[0] && !is_hex_digest(c->digest))
        return fail_field(err, QD_ERR_INVALID_ARG, s, QD_SPEC_F_CALIB_DIGEST,
                          "expected 64 lowercase hex digits");
    if (c->rows == 0) return not_set(err, QD_SPEC_F_CALIB_ROWS);
    if (c->rows > CALIB_ROWS_MAX)
        return fail_field(err, QD_ERR_INVALID_ARG, s, QD_SPEC_F_CALIB_ROWS, "must be 1..%u",
                          CALIB_ROWS_MAX);
    if (c->seq_len == 0) return not_set(err, QD_SPEC_F_CALIB_SEQ_LEN);
    if (c->seq_len > CALIB_SEQ_LEN_MAX)
        return fail_field(err, QD_ERR_INVALID_ARG, s, QD_SPEC_F_CALIB_SEQ_LEN, "must be 1..%u",
                          CALIB_SEQ_LEN_MAX);
    return QD_OK;
}

static qd_err check_modules(const qd_spec *s, qd_error *err) {
    const qd_spec_field F = QD_SPEC_F_MODULES_TO_NOT_CONVERT;
    char q[EXCERPT_BUF];
    if (s->n_modules_to_not_convert > MODULES_MAX)
        return fail_field(err, QD_ERR_INVALID_ARG, s, F, "more than %d entries", MODULES_MAX);
    for (size_t i = 0; i < s->n_modules_to_not_convert; i++) {
        const char *p = s->modules_to_not_convert[i];
        if (!p || !module_pattern_ok(p))
            return fail_field(err, QD_ERR_INVALID_ARG, s, F,
                              "entry %zu '%s' is not a module name (dot-separated parts of "
                              "letters, digits, '_' and '-', at most %d bytes)",
                              i + 1, p ? excerpt(p, q, sizeof q) : "", MODULE_NAME_MAX);
    }
    return QD_OK;
}

/* Every per-method key the method does not use must be unset. */
static qd_err check_foreign_keys(const qd_spec *s, qd_error *err) {
    char list[96];
    for (size_t i = 0; i < N_KEYS; i++) {
        const qd_spec_key *k = &spec_keys[i];
        /* Common keys and calibration have their own checks with better messages. */
        if (k->methods == M_ALL || k->methods == M_CALIB || k->methods == M_GROUPED) continue;
        if (((k->methods >> s->method) & 1u) || !given(s, k->field)) continue;
        return fail_field(err, QD_ERR_INVALID_ARG, s, k->field,
                          "a parameter of method %s, but the method is %s",
                          words_text(method_words, k->methods, list, sizeof list),
                          qd_spec_method_name(s->method));
    }
    return QD_OK;
}

static qd_err check_uint_range(const qd_spec *s, qd_spec_field f, uint32_t max, qd_error *err) {
    uint32_t v = get_uint(s, f);
    if (v == 0) return not_set(err, f);
    if (v > max)
        return fail_field(err, QD_ERR_INVALID_ARG, s, f, "must be 1..%" PRIu32, max);
    return QD_OK;
}

/* A real in the open interval (0, 1). */
static qd_err check_unit_open(const qd_spec *s, qd_spec_field f, qd_error *err) {
    double v = get_real(s, f);
    if (v == 0) return not_set(err, f);
    if (!isfinite(v) || v <= 0 || v >= 1)
        return fail_field(err, QD_ERR_INVALID_ARG, s, f, "must be above 0 and below 1");
    return QD_OK;
}

static qd_err check_awq(const qd_spec *s, qd_error *err) {
    const qd_spec_awq *a = &s->awq;
    qd_err rc;
    if (a->duo_scaling == QD_SPEC_UNSET) return not_set(err, QD_SPEC_F_AWQ_DUO_SCALING);
    if (a->apply_clip == QD_SPEC_UNSET) return not_set(err, QD_SPEC_F_AWQ_APPLY_CLIP);
    if ((rc = check_uint_range(s, QD_SPEC_F_AWQ_N_GRID, GRID_MAX, err)) != QD_OK) return rc;
    if ((rc = check_unit_open(s, QD_SPEC_F_AWQ_MAX_SHRINK, err)) != QD_OK) return rc;
    if ((rc = check_uint_range(s, QD_SPEC_F_AWQ_CLIP_N_GRID, GRID_MAX, err)) != QD_OK) return rc;
    if ((rc = check_uint_range(s, QD_SPEC_F_AWQ_N_SAMPLE_TOKENS, SAMPLE_TOKENS_MAX, err)) != QD_OK)
        return rc;
    /* The clip search tries shrink factors 1 - i / clip_n_grid for i < max_shrink *
     * clip_n_grid: below one step it would try nothing but the full range. */
    if (a->apply_clip == QD_SPEC_TRUE && a->max_shrink * a->clip_n_grid < 1) {
        char other[REF_MAX];
        ref(s, QD_SPEC_F_AWQ_CLIP_N_GRID, other, sizeof other);
        return fail_field(err, QD_ERR_INVALID_ARG, s, QD_SPEC_F_AWQ_MAX_SHRINK,
                          "with %s the clip search would try no shrink at all; raise either, or "
                          "turn the search off with --no-apply-clip",
                          other);
    }
    return QD_OK;
}

static qd_err check_gptq(const qd_spec *s, qd_error *err) {
    const qd_spec_gptq *g = &s->gptq;
    qd_err rc;
    if ((rc = check_unit_open(s, QD_SPEC_F_GPTQ_DAMP_PERCENT, err)) != QD_OK) return rc;
    if (g->true_sequential == QD_SPEC_UNSET) return not_set(err, QD_SPEC_F_GPTQ_TRUE_SEQUENTIAL);
    if ((rc = check_uint_range(s, QD_SPEC_F_GPTQ_BLOCK_SIZE, BLOCK_SIZE_MAX, err)) != QD_OK)
        return rc;
    if (g->act_order && !g->static_groups) {
        if (s->format == QD_SPEC_FORMAT_DASHINFER)
            return fail_field(err, QD_ERR_UNSUPPORTED, s, QD_SPEC_F_GPTQ_ACT_ORDER,
                              "DashInfer refuses desc_act checkpoints; add --static-groups "
                              "(gptq.static_groups), which keeps group indices sequential");
        if (s->format == QD_SPEC_FORMAT_AWQ)
            return fail_field(err, QD_ERR_UNSUPPORTED, s, QD_SPEC_F_GPTQ_ACT_ORDER,
                              "AutoAWQ GEMM has no group index (g_idx); add --static-groups "
                              "(gptq.static_groups), which keeps groups contiguous");
        /* compressed-tensors' QuantizationArgs refuses actorder "group" (and its alias
         * "dynamic") since its 2026-08-27 removal: the non-contiguous groups of weight_g_idx
         * no longer load. Per-channel weights have no groups, so act-order stays valid there. */
        if (s->format == QD_SPEC_FORMAT_COMPRESSED_TENSORS && s->group_size != -1)
            return fail_field(err, QD_ERR_UNSUPPORTED, s, QD_SPEC_F_GPTQ_ACT_ORDER,
                              "compressed-tensors no longer loads actorder \"group\" "
                              "(non-contiguous groups, weight_g_idx); add --static-groups "
                              "(gptq.static_groups), written as actorder \"weight\"");
    }
    return QD_OK;
}

static qd_err check_fp8(const qd_spec *s, qd_error *err) {
    const qd_spec_fp8 *p = &s->fp8;
    if (p->weight_scale == QD_SPEC_FP8_WEIGHT_SCALE_UNSET)
        return not_set(err, QD_SPEC_F_FP8_WEIGHT_SCALE);
    if (p->activation_scheme == QD_SPEC_FP8_ACTIVATION_UNSET)
        return not_set(err, QD_SPEC_F_FP8_ACTIVATION_SCHEME);
    if (!word_of(weight_scale_words, (int)p->weight_scale))
        return fail_field(err, QD_ERR_INVALID_ARG, s, QD_SPEC_F_FP8_WEIGHT_SCALE,
                          "unknown granularity");
    if (!word_of(activation_words, (int)p->activation_scheme))
        return fail_field(err, QD_ERR_INVALID_ARG, s, QD_SPEC_F_FP8_ACTIVATION_SCHEME,
                          "unknown scheme");
    bool tensor_static = p->weight_scale == QD_SPEC_FP8_WEIGHT_SCALE_TENSOR &&
                         p->activation_scheme == QD_SPEC_FP8_ACTIVATION_STATIC;
    if (s->method == QD_SPEC_METHOD_W4A8_AWQ && !tensor_static) {
        qd_spec_field f = p->weight_scale != QD_SPEC_FP8_WEIGHT_SCALE_TENSOR
                              ? QD_SPEC_F_FP8_WEIGHT_SCALE
                              : QD_SPEC_F_FP8_ACTIVATION_SCHEME;
        return fail_field(err, QD_ERR_UNSUPPORTED, s, f,
                          "w4a8-awq has ModelOpt's fixed fp8 part: a per-tensor weight scale "
                          "and static activation scales");
    }
    return QD_OK;
}

qd_err qd_spec_validate(const qd_spec *s, qd_spec_warnings *warn, qd_error *err) {
    qd_err rc;
    if ((rc = check_method_format(s, err)) != QD_OK) return rc;
    if ((rc = check_bits(s, err)) != QD_OK) return rc;
    if ((rc = check_group(s, warn, err)) != QD_OK) return rc;
    if ((rc = check_symmetric(s, warn, err)) != QD_OK) return rc;
    if ((rc = check_foreign_keys(s, err)) != QD_OK) return rc;
    if ((rc = check_calibration(s, err)) != QD_OK) return rc;
    if ((rc = check_modules(s, err)) != QD_OK) return rc;
    unsigned mb = 1u << s->method;
    if ((mb & M_AWQS) && (rc = check_awq(s, err)) != QD_OK) return rc;
    if (s->method == QD_SPEC_METHOD_GPTQ && (rc = check_gptq(s, err)) != QD_OK) return rc;
    if (s->method == QD_SPEC_METHOD_SMOOTHQUANT) {
        double a = s->smoothquant.alpha;
        if (!s->smoothquant.has_alpha) return not_set(err, QD_SPEC_F_SMOOTHQUANT_ALPHA);
        if (!isfinite(a) || a < 0 || a > 1)
            return fail_field(err, QD_ERR_INVALID_ARG, s, QD_SPEC_F_SMOOTHQUANT_ALPHA,
                              "must be in [0, 1]");
    }
    if ((mb & M_FP8S) && (rc = check_fp8(s, err)) != QD_OK) return rc;
    if (!qd_spec_scale_dtype_name(s->scale_dtype))
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "spec.scale_dtype: not set (qd_spec_defaults() fills it)");
    return QD_OK;
}

qd_err qd_spec_resolve(qd_spec *s, qd_spec_warnings *warn, qd_error *err) {
    qd_spec_defaults(s);
    return qd_spec_validate(s, warn, err);
}

/* ---- modules and the model ------------------------------------------------------------------- */

/* Whether pattern equals a run of whole dot-separated parts of name. */
static bool pattern_matches(const char *pattern, const char *name) {
    size_t pl = strlen(pattern);
    if (pl == 0) return false;
    for (const char *p = name; *p;) {
        if (strncmp(p, pattern, pl) == 0 && (p[pl] == '\0' || p[pl] == '.')) return true;
        p = strchr(p, '.');
        if (!p) break;
        p++;
    }
    return false;
}

bool qd_spec_module_excluded(const qd_spec *s, const char *name) {
    for (size_t i = 0; name && i < s->n_modules_to_not_convert; i++)
        if (s->modules_to_not_convert[i] && pattern_matches(s->modules_to_not_convert[i], name))
            return true;
    return false;
}

qd_err qd_spec_check_model(const qd_spec *s, const qd_spec_linear *linears, size_t n,
                           qd_error *err) {
    char r[REF_MAX], q[EXCERPT_BUF];
    for (size_t i = 0; i < n; i++) {
        const qd_spec_linear *l = &linears[i];
        const char *name = l->name ? excerpt(l->name, q, sizeof q) : "(unnamed)";
        if (l->name && qd_spec_module_excluded(s, l->name)) continue;
        if (l->in_features <= 0 || l->out_features <= 0)
            return qd_error_set(err, QD_ERR_INVALID_ARG,
                                "model: %s has in_features %" PRId64 " and out_features %" PRId64,
                                name, l->in_features, l->out_features);
        if (s->method != QD_SPEC_METHOD_FP8 && s->group_size > 0 &&
            l->in_features % s->group_size != 0)
            return qd_error_set(err, QD_ERR_INVALID_ARG,
                                "%s: does not divide in_features %" PRId64 " of %s",
                                ref(s, QD_SPEC_F_GROUP_SIZE, r, sizeof r), l->in_features, name);
        int64_t per_word = s->bits > 0 && s->bits <= 32 ? 32 / (int64_t)s->bits : 1;
        switch (s->format) {
        case QD_SPEC_FORMAT_AWQ:
            if (l->out_features % 8 != 0)
                return qd_error_set(err, QD_ERR_INVALID_ARG,
                                    "%s: out_features %" PRId64 " of %s is not a multiple of 8 "
                                    "(AutoAWQ GEMM packs 8 output channels per int32)",
                                    ref(s, QD_SPEC_F_FORMAT, r, sizeof r), l->out_features,
                                    name);
            break;
        case QD_SPEC_FORMAT_GPTQ:
        case QD_SPEC_FORMAT_DASHINFER:
            if (l->in_features % per_word != 0 || l->out_features % per_word != 0)
                return qd_error_set(err, QD_ERR_INVALID_ARG,
                                    "%s: %s has in_features %" PRId64 " and out_features %" PRId64
                                    "; GPTQ packs %" PRId64 " %u-bit values per int32 along both "
                                    "(qweight along in_features, qzeros along out_features)",
                                    ref(s, QD_SPEC_F_FORMAT, r, sizeof r), name, l->in_features,
                                    l->out_features, per_word, (unsigned)s->bits);
            break;
        case QD_SPEC_FORMAT_MODELOPT:
            if (s->bits == 4 && l->out_features % 2 != 0)
                return qd_error_set(err, QD_ERR_INVALID_ARG,
                                    "%s: out_features %" PRId64 " of %s is odd (ModelOpt packs "
                                    "two output rows of int4 per byte)",
                                    ref(s, QD_SPEC_F_FORMAT, r, sizeof r), l->out_features,
                                    name);
            break;
        default: break;
        }
    }
    return QD_OK;
}

/* ---- canonical text -------------------------------------------------------------------------- */

/* A growing NUL-terminated string; oom is sticky. */
typedef struct sbuf {
    char *p;
    size_t len, cap;
    bool oom;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_str(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

/* A JSON string. Every string written here (words, hex, validated module names) is plain
 * printable ASCII, but escape anyway so the text stays JSON whatever happens upstream. */
static void sb_json_string(sbuf *b, const char *s) {
    sb_put(b, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            sb_put(b, e, 2);
        } else if (c < 0x20) {
            char e[8];
            snprintf(e, sizeof e, "\\u%04x", c);
            sb_str(b, e);
        } else {
            sb_put(b, (const char *)&c, 1);
        }
    }
    sb_put(b, "\"", 1);
}

/* Keys of one object go through key() in sorted order; *first tracks the comma. */
static void key(sbuf *b, bool *first, const char *name) {
    if (!*first) sb_put(b, ",", 1);
    *first = false;
    sb_json_string(b, name);
    sb_put(b, ":", 1);
}

static void kv_str(sbuf *b, bool *first, const char *name, const char *v) {
    key(b, first, name);
    sb_json_string(b, v);
}

static void kv_uint(sbuf *b, bool *first, const char *name, uint32_t v) {
    char t[16];
    snprintf(t, sizeof t, "%" PRIu32, v);
    key(b, first, name);
    sb_str(b, t);
}

static void kv_bool(sbuf *b, bool *first, const char *name, bool v) {
    key(b, first, name);
    sb_str(b, v ? "true" : "false");
}

static void kv_real(sbuf *b, bool *first, const char *name, double v) {
    char t[40];
    real_text(v, t, sizeof t);
    /* %g follows LC_NUMERIC; JSON wants a point whatever the locale. */
    for (char *c = t; *c; c++)
        if (*c == ',') *c = '.';
    key(b, first, name);
    sb_str(b, t);
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Write s (resolved and valid) as canonical JSON. */
static void write_canonical(sbuf *b, const qd_spec *s) {
    unsigned mb = 1u << s->method;
    bool first = true, f2;
    sb_put(b, "{", 1);
    if (mb & M_AWQS) {
        const qd_spec_awq *a = &s->awq;
        bool clip = a->apply_clip == QD_SPEC_TRUE;
        key(b, &first, "awq");
        sb_put(b, "{", 1);
        f2 = true;
        /* The clip parameters mean nothing without the clip search: leave them out. */
        kv_bool(b, &f2, "apply_clip", clip);
        if (clip) kv_uint(b, &f2, "clip_n_grid", a->clip_n_grid);
        kv_bool(b, &f2, "duo_scaling", a->duo_scaling == QD_SPEC_TRUE);
        if (clip) kv_real(b, &f2, "max_shrink", a->max_shrink);
        kv_uint(b, &f2, "n_grid", a->n_grid);
        if (clip) kv_uint(b, &f2, "n_sample_tokens", a->n_sample_tokens);
        sb_put(b, "}", 1);
    }
    kv_uint(b, &first, "bits", s->bits);
    if (qd_spec_needs_calibration(s)) {
        key(b, &first, "calibration");
        sb_put(b, "{", 1);
        f2 = true;
        kv_str(b, &f2, "digest", s->calibration.digest);
        kv_uint(b, &f2, "rows", s->calibration.rows);
        kv_uint(b, &f2, "seq_len", s->calibration.seq_len);
        sb_put(b, "}", 1);
    }
    kv_str(b, &first, "format", qd_spec_format_name(s->format));
    if (mb & M_FP8S) {
        key(b, &first, "fp8");
        sb_put(b, "{", 1);
        f2 = true;
        kv_str(b, &f2, "activation_scheme",
               word_of(activation_words, (int)s->fp8.activation_scheme));
        kv_str(b, &f2, "weight_scale", word_of(weight_scale_words, (int)s->fp8.weight_scale));
        sb_put(b, "}", 1);
    }
    if (s->method == QD_SPEC_METHOD_GPTQ) {
        const qd_spec_gptq *g = &s->gptq;
        key(b, &first, "gptq");
        sb_put(b, "{", 1);
        f2 = true;
        kv_bool(b, &f2, "act_order", g->act_order);
        kv_uint(b, &f2, "block_size", g->block_size);
        kv_real(b, &f2, "damp_percent", g->damp_percent);
        kv_bool(b, &f2, "mse", g->mse);
        kv_bool(b, &f2, "static_groups", g->static_groups);
        kv_bool(b, &f2, "true_sequential", g->true_sequential == QD_SPEC_TRUE);
        sb_put(b, "}", 1);
    }
    if (mb & M_GROUPED) {
        char t[16];
        snprintf(t, sizeof t, "%" PRId32, s->group_size);
        key(b, &first, "group_size");
        sb_str(b, t);
    }
    kv_str(b, &first, "method", qd_spec_method_name(s->method));

    key(b, &first, "modules_to_not_convert");
    sb_put(b, "[", 1);
    size_t n = s->n_modules_to_not_convert;
    const char **sorted = n ? malloc(n * sizeof *sorted) : NULL;
    if (n && !sorted) {
        b->oom = true;
    } else {
        for (size_t i = 0; i < n; i++) sorted[i] = s->modules_to_not_convert[i];
        if (n) qsort(sorted, n, sizeof *sorted, cmp_str);
        for (size_t i = 0; i < n; i++) {
            if (i > 0 && strcmp(sorted[i], sorted[i - 1]) == 0) continue; /* a set */
            if (i > 0) sb_put(b, ",", 1);
            sb_json_string(b, sorted[i]);
        }
    }
    free(sorted);
    sb_put(b, "]", 1);

    kv_uint(b, &first, "numerics_version", QD_NUMERICS_VERSION);
    kv_str(b, &first, "scale_dtype", qd_spec_scale_dtype_name(s->scale_dtype));
    if (s->method == QD_SPEC_METHOD_SMOOTHQUANT) {
        key(b, &first, "smoothquant");
        sb_put(b, "{", 1);
        f2 = true;
        kv_real(b, &f2, "alpha", s->smoothquant.alpha);
        sb_put(b, "}", 1);
    }
    kv_bool(b, &first, "symmetric", s->symmetric == QD_SPEC_TRUE);
    sb_put(b, "}", 1);
}

qd_err qd_spec_canonical(const qd_spec *s, char **out, size_t *len, qd_error *err) {
    qd_spec r = {0};
    qd_err rc = qd_spec_copy(&r, s, err);
    if (rc != QD_OK) return rc;
    rc = qd_spec_resolve(&r, NULL, err);
    if (rc == QD_OK && qd_spec_needs_calibration(&r) && !r.calibration.digest[0])
        rc = qd_error_set(err, QD_ERR_PRECONDITION,
                          "calibration: the spec digest names the calibration data by its "
                          "digest, and %s has none yet (qd_spec_hash_calibration() computes it)",
                          r.calibration.path ? "--calib FILE" : "the spec");
    if (rc == QD_OK) {
        sbuf b = {0};
        write_canonical(&b, &r);
        if (b.oom) {
            free(b.p);
            rc = qd_error_set(err, QD_ERR_NOMEM, "spec: out of memory");
        } else {
            *out = b.p;
            if (len) *len = b.len;
        }
    }
    qd_spec_free(&r);
    return rc;
}

static void to_hex(const unsigned char *md, size_t n, char *hex) {
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        hex[2 * i] = digits[md[i] >> 4];
        hex[2 * i + 1] = digits[md[i] & 15];
    }
    hex[2 * n] = '\0';
}

static qd_err sha256_hex(const void *data, size_t len, char hex[QD_SPEC_DIGEST_HEX],
                         qd_error *err) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (!EVP_Digest(data, len, md, &n, EVP_sha256(), NULL) || n != 32)
        return qd_error_set(err, QD_ERR_INTERNAL, "spec: sha256 failed");
    to_hex(md, n, hex);
    return QD_OK;
}

qd_err qd_spec_digest(const qd_spec *s, char hex[QD_SPEC_DIGEST_HEX], qd_error *err) {
    char *text = NULL;
    size_t len = 0;
    qd_err rc = qd_spec_canonical(s, &text, &len, err);
    if (rc != QD_OK) return rc;
    rc = sha256_hex(text, len, hex, err);
    free(text);
    return rc;
}

/* sha256 and size of the file at path (a regular file). */
static qd_err hash_file(const char *path, char hex[QD_SPEC_DIGEST_HEX], uint64_t *size,
                        qd_error *err) {
    char q[EXCERPT_BUF];
    FILE *f = fopen(path, "rbe");
    if (!f)
        return qd_error_set(err, errno == ENOENT ? QD_ERR_NOT_FOUND : QD_ERR_IO,
                            "--calib '%s': %s", excerpt(path, q, sizeof q), strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return qd_error_set(err, QD_ERR_INVALID_ARG, "--calib '%s': not a regular file",
                            excerpt(path, q, sizeof q));
    }
    /* On the heap: worker threads may run on small stacks. */
    enum { CHUNK = 1 << 16 };
    unsigned char *buf = malloc(CHUNK);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    qd_err rc = QD_OK;
    uint64_t total = 0;
    if (!buf || !ctx || !EVP_DigestInit_ex(ctx, EVP_sha256(), NULL)) {
        rc = qd_error_set(err, QD_ERR_NOMEM, "--calib: cannot start sha256");
    } else {
        size_t got;
        while ((got = fread(buf, 1, CHUNK, f)) > 0) {
            if (!EVP_DigestUpdate(ctx, buf, got)) break;
            total += got;
        }
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned int n = 0;
        if (ferror(f))
            rc = qd_error_set(err, QD_ERR_IO, "--calib '%s': read error",
                              excerpt(path, q, sizeof q));
        else if (got > 0 || !EVP_DigestFinal_ex(ctx, md, &n) || n != 32)
            rc = qd_error_set(err, QD_ERR_INTERNAL, "--calib: sha256 failed");
        else
            to_hex(md, n, hex);
    }
    EVP_MD_CTX_free(ctx);
    free(buf);
    fclose(f);
    if (rc == QD_OK) *size = total;
    return rc;
}

qd_err qd_spec_hash_calibration(qd_spec *s, qd_error *err) {
    const char *path = s->calibration.path;
    char q[EXCERPT_BUF], file_hex[QD_SPEC_DIGEST_HEX], hex[QD_SPEC_DIGEST_HEX];
    if (!path) return QD_OK;
    const char *slash = strrchr(path, '/');
    const char *name = slash ? slash + 1 : path;
    /* The bundle's file name, under the manifest rules of proto/quantd.proto. */
    if (name[0] == '\0' || strcmp(name, ".") == 0 || strcmp(name, "..") == 0 ||
        strpbrk(name, "\r\n\\"))
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "--calib '%s': the file name cannot name a bundle file",
                            excerpt(path, q, sizeof q));
    uint64_t size = 0;
    qd_err rc = hash_file(path, file_hex, &size, err);
    if (rc != QD_OK) return rc;
    /* One manifest line: "<sha256>  <size>  <name>\n"; the bundle digest is its sha256. */
    sbuf line = {0};
    char num[24];
    snprintf(num, sizeof num, "%" PRIu64, size);
    sb_str(&line, file_hex);
    sb_str(&line, "  ");
    sb_str(&line, num);
    sb_str(&line, "  ");
    sb_str(&line, name);
    sb_str(&line, "\n");
    if (line.oom) rc = qd_error_set(err, QD_ERR_NOMEM, "--calib: out of memory");
    else rc = sha256_hex(line.p, line.len, hex, err);
    free(line.p);
    if (rc != QD_OK) return rc;
    if (s->calibration.digest[0] && strcmp(s->calibration.digest, hex) != 0) {
        char r[REF_MAX];
        return qd_error_set(err, QD_ERR_INVALID_ARG, "%s: does not match --calib '%s' (%s)",
                            ref(s, QD_SPEC_F_CALIB_DIGEST, r, sizeof r),
                            excerpt(path, q, sizeof q), hex);
    }
    memcpy(s->calibration.digest, hex, sizeof hex);
    return QD_OK;
}

/* ---- one value from text (YAML and flags) ---------------------------------------------------- */

typedef struct pval {
    int e;
    uint32_t u;
    int32_t g;
    bool b;
    double d;
} pval;

__attribute__((format(printf, 3, 4))) static qd_err expected(qd_error *e, const char *text,
                                                             const char *fmt, ...) {
    char what[256], q[EXCERPT_BUF];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return qd_error_set(e, QD_ERR_INVALID_ARG, "expected %s, got '%s'", what,
                        excerpt(text, q, sizeof q));
}

/* Decimal digits only (no sign, no space), into *out; false if empty or above max. */
static bool parse_digits(const char *t, uint64_t max, uint64_t *out) {
    uint64_t v = 0;
    if (!*t) return false;
    for (; *t; t++) {
        if (*t < '0' || *t > '9') return false;
        unsigned d = (unsigned)(*t - '0');
        if (v > (max - d) / 10) return false;
        v = v * 10 + d;
    }
    *out = v;
    return true;
}

/* Parse a scalar value of k (not LIST, PATH or DIGEST). Messages say "expected ..., got '...'";
 * the caller puts the place in front. */
static qd_err parse_scalar(const qd_spec_key *k, const char *text, pval *v, qd_error *e) {
    char list[160];
    uint64_t u;
    switch (k->type) {
    case QD_SPEC_KEY_ENUM:
        if ((v->e = word_value(k->words, text)) != 0) return QD_OK;
        return expected(e, text, "one of %s", words_text(k->words, ALL_WORDS_MASK, list,
                                                          sizeof list));
    case QD_SPEC_KEY_UINT:
        if (!parse_digits(text, UINT32_MAX, &u))
            return expected(e, text, "a positive integer");
        if (u == 0)
            return expected(e, text, "a positive integer (0 would mean the default: leave the "
                                     "key out)");
        v->u = (uint32_t)u;
        return QD_OK;
    case QD_SPEC_KEY_GROUP:
        if (strcmp(text, "-1") == 0) {
            v->g = -1;
            return QD_OK;
        }
        if (!parse_digits(text, INT32_MAX, &u) || u == 0)
            return expected(e, text, "-1 (per output channel) or a positive integer");
        v->g = (int32_t)u;
        return QD_OK;
    case QD_SPEC_KEY_TRI:
    case QD_SPEC_KEY_BOOL:
        if (strcmp(text, "true") == 0) v->b = true;
        else if (strcmp(text, "false") == 0) v->b = false;
        else return expected(e, text, "true or false");
        return QD_OK;
    case QD_SPEC_KEY_REAL: {
        /* A plain decimal: strtod alone would also take "inf", "nan", hex and spaces. */
        const char *c = text;
        if (*c == '-' || *c == '+') c++;
        bool digit = false, ok = *c != '\0';
        for (; *c && ok; c++) {
            if (*c >= '0' && *c <= '9') digit = true;
            else if (!(*c == '.' || *c == 'e' || *c == 'E' || *c == '-' || *c == '+')) ok = false;
        }
        char *end = NULL;
        errno = 0;
        double d = ok && digit ? strtod(text, &end) : 0;
        if (!ok || !digit || !end || *end != '\0' || errno == ERANGE || !isfinite(d))
            return expected(e, text, "a number");
        if (d == 0 && k->field != QD_SPEC_F_SMOOTHQUANT_ALPHA)
            return expected(e, text, "a number above 0 (0 would mean the default: leave the "
                                     "key out)");
        v->d = d;
        return QD_OK;
    }
    default: return qd_error_set(e, QD_ERR_INTERNAL, "%s: not a scalar key", k->name);
    }
}

/* Set field k of s from text (scalars, PATH, DIGEST; LIST items go through list_add). */
static qd_err set_from_text(qd_spec *s, const qd_spec_key *k, const char *text, qd_error *e) {
    pval v = {0};
    qd_err rc;
    switch (k->type) {
    case QD_SPEC_KEY_PATH: {
        if (text[0] == '\0' || strlen(text) >= CALIB_PATH_MAX)
            return expected(e, text, "a file path of 1..%d bytes", CALIB_PATH_MAX - 1);
        char *p = strdup(text);
        if (!p) return qd_error_set(e, QD_ERR_NOMEM, "out of memory");
        free(s->calibration.path);
        s->calibration.path = p;
        return QD_OK;
    }
    case QD_SPEC_KEY_DIGEST:
        if (!is_hex_digest(text)) return expected(e, text, "64 lowercase hex digits");
        memcpy(s->calibration.digest, text, QD_SPEC_DIGEST_HEX);
        return QD_OK;
    case QD_SPEC_KEY_LIST: return qd_error_set(e, QD_ERR_INTERNAL, "%s: a list", k->name);
    default: break;
    }
    if ((rc = parse_scalar(k, text, &v, e)) != QD_OK) return rc;
    switch (k->type) {
    case QD_SPEC_KEY_ENUM: enum_set(s, k->field, v.e); break;
    case QD_SPEC_KEY_UINT: *uint_ptr(s, k->field) = v.u; break;
    case QD_SPEC_KEY_GROUP: s->group_size = v.g; break;
    case QD_SPEC_KEY_TRI: *tri_ptr(s, k->field) = v.b ? QD_SPEC_TRUE : QD_SPEC_FALSE; break;
    case QD_SPEC_KEY_BOOL: *bool_ptr(s, k->field) = v.b; break;
    case QD_SPEC_KEY_REAL:
        *real_ptr(s, k->field) = v.d;
        if (k->field == QD_SPEC_F_SMOOTHQUANT_ALPHA) s->smoothquant.has_alpha = true;
        break;
    default: break;
    }
    return QD_OK;
}

/* Append one module pattern to s's list. */
static qd_err list_add(qd_spec *s, const char *item, qd_error *e) {
    if (s->n_modules_to_not_convert >= MODULES_MAX)
        return qd_error_set(e, QD_ERR_INVALID_ARG, "more than %d entries", MODULES_MAX);
    if (strlen(item) > MODULE_NAME_MAX)
        return expected(e, item, "a module name of at most %d bytes", MODULE_NAME_MAX);
    char **grown = realloc(s->modules_to_not_convert,
                           (s->n_modules_to_not_convert + 1) * sizeof *grown);
    if (!grown) return qd_error_set(e, QD_ERR_NOMEM, "out of memory");
    s->modules_to_not_convert = grown;
    if (!(grown[s->n_modules_to_not_convert] = strdup(item)))
        return qd_error_set(e, QD_ERR_NOMEM, "out of memory");
    s->n_modules_to_not_convert++;
    return QD_OK;
}

static void list_clear(qd_spec *s) {
    free_list(s->modules_to_not_convert, s->n_modules_to_not_convert);
    s->modules_to_not_convert = NULL;
    s->n_modules_to_not_convert = 0;
}

/* ---- YAML ------------------------------------------------------------------------------------ */

/* One module pattern of modules_to_not_convert (ctx: the spec being built). */
static qd_err yitem(qd_yaml_walk *w, const char *text, size_t n, const yaml_mark_t *mark,
                    void *ctx) {
    const char *name = key_of(QD_SPEC_F_MODULES_TO_NOT_CONVERT)->name;
    qd_error e = {0};
    if (list_add(ctx, text, &e) == QD_OK) return QD_OK;
    if (e.code == QD_ERR_NOMEM)
        return qd_error_set(qd_yaml_err(w), QD_ERR_NOMEM, "%s: out of memory", name);
    return qd_yaml_fail(w, mark, name, "item %zu: %s", n, e.msg);
}

/* Set key f of the spec being built (ctx) to the value whose first event is ev; kmark is where
 * the key was written, which the field remembers for later messages. */
static qd_err yvalue(qd_yaml_walk *w, size_t f, const yaml_mark_t *kmark, const yaml_event_t *ev,
                     void *ctx) {
    qd_spec *s = ctx;
    const qd_spec_key *k = key_of((qd_spec_field)f);
    const char *text = NULL;
    qd_err rc;
    if (k->type == QD_SPEC_KEY_LIST) {
        list_clear(s);
        rc = qd_yaml_items(w, ev, k->name, "a list of module names", yitem, s);
    } else if ((rc = qd_yaml_scalar(w, ev, k->name, "a single value", &text)) == QD_OK) {
        qd_error e = {0};
        if ((rc = set_from_text(s, k, text, &e)) != QD_OK)
            rc = qd_yaml_value_error(w, &ev->start_mark, k->name, rc, &e);
    }
    if (rc != QD_OK) return rc;
    s->source[f].origin = QD_SPEC_FROM_YAML;
    s->source[f].negated = 0;
    s->source[f].line = (uint32_t)kmark->line + 1;
    return QD_OK;
}

qd_err qd_spec_parse_yaml(const char *yaml, size_t len, const char *label, qd_spec *s,
                          qd_error *err) {
    qd_error e = {0};
    qd_spec tmp = {0};
    size_t seen[N_KEYS] = {0}; /* line where this text set each key; 0 = not set */
    if (!label) label = "spec";
    qd_yaml_opts o = {.label = label, .table = spec_keys, .stride = sizeof spec_keys[0],
                      .name_offset = offsetof(qd_spec_key, name), .count = N_KEYS,
                      .lines = seen, .fail_code = QD_ERR_INVALID_ARG,
                      .syntax_code = QD_ERR_FORMAT, .name_sections = true, .on_key = yvalue,
                      .ctx = &tmp};
    qd_err rc = qd_spec_copy(&tmp, s, &e);
    if (rc == QD_OK) rc = qd_yaml_walk_text(&o, yaml, len, &e);
    if (rc == QD_OK) {
        /* Lines of an earlier file would now be read against this file's name. */
        for (size_t i = 0; i < QD_SPEC_FIELD_COUNT; i++)
            if (!seen[i] && tmp.source[i].origin == QD_SPEC_FROM_YAML)
                mark(&tmp, (qd_spec_field)i, QD_SPEC_FROM_CODE);
        char *l = strdup(label);
        if (!l) rc = qd_error_set(&e, QD_ERR_NOMEM, "%s: out of memory", label);
        else {
            free(tmp.source_file);
            tmp.source_file = l;
        }
    }
    if (rc != QD_OK) {
        qd_spec_free(&tmp);
        return qd_error_set(err, rc, "%s", e.msg);
    }
    qd_spec_free(s);
    *s = tmp;
    return QD_OK;
}

qd_err qd_spec_load_yaml(const char *path, qd_spec *s, qd_error *err) {
    char *buf = NULL;
    size_t len = 0;
    qd_err rc = qd_read_file(path, SPEC_FILE_MAX, &buf, &len, err);
    if (rc != QD_OK) return rc;
    rc = qd_spec_parse_yaml(buf, len, path, s, err);
    free(buf);
    return rc;
}

/* ---- command line ---------------------------------------------------------------------------- */

/* What argument arg is: a spec key's flag (*neg set for its negative spelling), "--spec"
 * (*is_spec), or neither (NULL, *is_spec false). *value points after '=' when there is one. */
static const qd_spec_key *flag_lookup(const char *arg, bool *neg, bool *is_spec,
                                      const char **value) {
    *neg = false;
    *is_spec = false;
    *value = NULL;
    if (strncmp(arg, "--", 2) != 0 || arg[2] == '\0') return NULL;
    const char *name = arg + 2, *eq = strchr(name, '=');
    size_t n = eq ? (size_t)(eq - name) : strlen(name);
    if (eq) *value = eq + 1;
    if (n == 4 && strncmp(name, "spec", 4) == 0) {
        *is_spec = true;
        return NULL;
    }
    for (size_t i = 0; i < N_KEYS; i++) {
        const qd_spec_key *k = &spec_keys[i];
        if (strlen(k->flag) == n && strncmp(k->flag, name, n) == 0) return k;
        if (k->neg_flag && strlen(k->neg_flag) == n && strncmp(k->neg_flag, name, n) == 0) {
            *neg = true;
            return k;
        }
    }
    return NULL;
}

static bool takes_value(const qd_spec_key *k) {
    return k->type != QD_SPEC_KEY_TRI && k->type != QD_SPEC_KEY_BOOL;
}

/* Apply one flag (with its value, if it takes one) to s. */
static qd_err apply_flag(qd_spec *s, const qd_spec_key *k, bool neg, const char *value,
                         bool *list_replaced, qd_error *err) {
    qd_error e = {0};
    qd_err rc = QD_OK;
    switch (k->type) {
    case QD_SPEC_KEY_TRI: *tri_ptr(s, k->field) = neg ? QD_SPEC_FALSE : QD_SPEC_TRUE; break;
    case QD_SPEC_KEY_BOOL: *bool_ptr(s, k->field) = !neg; break;
    case QD_SPEC_KEY_LIST: {
        if (!*list_replaced) list_clear(s);
        *list_replaced = true;
        /* Comma-separated; module names have no commas. */
        const char *p = value;
        for (;;) {
            const char *comma = strchr(p, ',');
            size_t n = comma ? (size_t)(comma - p) : strlen(p);
            char item[MODULE_NAME_MAX + 2];
            if (n == 0) {
                rc = qd_error_set(&e, QD_ERR_INVALID_ARG, "empty entry in '%s'", value);
                break;
            }
            if (n > MODULE_NAME_MAX) n = MODULE_NAME_MAX + 1; /* list_add refuses it */
            memcpy(item, p, n);
            item[n] = '\0';
            if ((rc = list_add(s, item, &e)) != QD_OK) break;
            if (!comma) break;
            p = comma + 1;
        }
        break;
    }
    default: rc = set_from_text(s, k, value, &e); break;
    }
    if (rc != QD_OK)
        return qd_error_set(err, rc, "--%s: %s", neg ? k->neg_flag : k->flag, e.msg);
    s->source[k->field].origin = QD_SPEC_FROM_FLAG;
    s->source[k->field].negated = neg;
    s->source[k->field].line = 0;
    return QD_OK;
}

qd_err qd_spec_parse_args(int argc, char *const *argv, qd_spec *s, int *rest, int *n_rest,
                          qd_error *err) {
    const char *spec_path = NULL;
    int *left = NULL, n_left = 0;
    bool neg, is_spec, list_replaced = false;
    const char *value;
    qd_spec tmp = {0};
    qd_err rc = QD_OK;

    /* Pass 1: the spec file, wherever it is. Known flags' values are skipped so that a value
     * is never taken for a flag. */
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0) break;
        const qd_spec_key *k = flag_lookup(argv[i], &neg, &is_spec, &value);
        if (is_spec) {
            if (spec_path)
                return qd_error_set(err, QD_ERR_INVALID_ARG, "--spec: given twice");
            if (!value) {
                if (i + 1 >= argc)
                    return qd_error_set(err, QD_ERR_INVALID_ARG, "--spec: needs a file");
                value = argv[++i];
            }
            spec_path = value;
        } else if (k && takes_value(k) && !value) {
            i++;
        }
    }

    if (argc > 1 && !(left = malloc((size_t)argc * sizeof *left)))
        return qd_error_set(err, QD_ERR_NOMEM, "out of memory");
    if ((rc = qd_spec_copy(&tmp, s, err)) != QD_OK) goto out;
    if (spec_path && (rc = qd_spec_load_yaml(spec_path, &tmp, err)) != QD_OK) goto out;

    /* Pass 2: the flags, in order, over the file. */
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0) {
            while (i < argc) left[n_left++] = i++;
            break;
        }
        const qd_spec_key *k = flag_lookup(argv[i], &neg, &is_spec, &value);
        if (is_spec) {
            if (!value) i++;
            continue;
        }
        if (!k) {
            left[n_left++] = i;
            continue;
        }
        const char *spelled = neg ? k->neg_flag : k->flag;
        if (!takes_value(k) && value) {
            rc = qd_error_set(err, QD_ERR_INVALID_ARG, "--%s: takes no value (use --%s%s%s)",
                              spelled, k->flag, k->neg_flag ? " or --" : "",
                              k->neg_flag ? k->neg_flag : "");
            goto out;
        }
        if (takes_value(k) && !value) {
            if (i + 1 >= argc) {
                rc = qd_error_set(err, QD_ERR_INVALID_ARG, "--%s: needs a value (%s)", spelled,
                                  k->arg);
                goto out;
            }
            value = argv[++i];
        }
        if ((rc = apply_flag(&tmp, k, neg, value, &list_replaced, err)) != QD_OK) goto out;
    }

out:
    if (rc == QD_OK) {
        qd_spec_free(s);
        *s = tmp;
        if (rest && n_left > 0) memcpy(rest, left, (size_t)n_left * sizeof *left);
        if (n_rest) *n_rest = n_left;
    } else {
        qd_spec_free(&tmp);
    }
    free(left);
    return rc;
}

/* ---- help ------------------------------------------------------------------------------------ */

/* The default of key k for every method that uses it, from qd_spec_defaults() itself:
 * "20", or "rtn 128, awq 128, ..., smoothquant -1" when they differ. Format none. */
static void default_summary(const qd_spec_key *k, char *buf, size_t cap) {
    char vals[QD_SPEC_METHOD_COUNT][48];
    int methods[QD_SPEC_METHOD_COUNT], n = 0;
    bool same = true;
    for (int m = 1; m < QD_SPEC_METHOD_COUNT; m++) {
        if (!((k->methods >> m) & 1u)) continue;
        qd_spec s = {0};
        s.method = (qd_spec_method)m;
        s.format = QD_SPEC_FORMAT_NONE;
        qd_spec_defaults(&s);
        if (!has_value(&s, k->field) && k->type != QD_SPEC_KEY_BOOL)
            snprintf(vals[n], sizeof vals[n], "none");
        else value_text(&s, k->field, vals[n], sizeof vals[n]);
        if (n > 0 && strcmp(vals[n], vals[0]) != 0) same = false;
        methods[n++] = m;
    }
    size_t o = 0;
    buf[0] = '\0';
    if (n == 0) return;
    if (same) {
        snprintf(buf, cap, "%s", vals[0]);
        return;
    }
    for (int i = 0; i < n && o < cap; i++)
        o += (size_t)snprintf(buf + o, cap - o, "%s%s %s", i ? ", " : "",
                              qd_spec_method_name((qd_spec_method)methods[i]), vals[i]);
}

/* Format-dependent defaults, which the per-method summary (format none) cannot show. */
static const char *default_note(qd_spec_field f) {
    switch (f) {
    case QD_SPEC_F_SYMMETRIC:
        return "for format none and compressed-tensors; format awq: false;\n"
               "         gptq, modelopt, dashinfer: true";
    case QD_SPEC_F_FP8_WEIGHT_SCALE:
    case QD_SPEC_F_FP8_ACTIVATION_SCHEME:
        return "for format none and compressed-tensors; modelopt: tensor + static;\n"
               "         given one of the two fp8 keys, the other follows: tensor with static,\n"
               "         channel with dynamic";
    case QD_SPEC_F_CALIB_ROWS:
    case QD_SPEC_F_CALIB_SEQ_LEN: return "fp8: with static activation scales only";
    default: return NULL;
    }
}

void qd_spec_help(FILE *out) {
    char list[160], def[256], flag[64];
    fputs("Quantization spec. Each flag has a key of the same name in a YAML spec file\n"
          "(given with --spec FILE; flags override the file). docs/spec.md has the details.\n"
          "\n"
          "  --spec FILE\n"
          "      YAML spec file; the flags below, given too, override its keys.\n",
          out);
    char section[32] = "";
    for (size_t i = 0; i < N_KEYS; i++) {
        const qd_spec_key *k = &spec_keys[i];
        const char *dot = strchr(k->name, '.');
        int slen = dot ? (int)(dot - k->name) : 0;
        /* A heading where a section's keys begin ("awq.*"); the common keys have none. */
        if (slen > 0 && (strncmp(section, k->name, (size_t)slen) != 0 ||
                         section[slen] != '\0')) {
            snprintf(section, sizeof section, "%.*s", slen, k->name);
            fprintf(out, "\n%s keys (method %s):\n", section,
                    words_text(method_words, k->methods, list, sizeof list));
        }
        if (k->neg_flag) snprintf(flag, sizeof flag, "--%s, --%s", k->flag, k->neg_flag);
        else snprintf(flag, sizeof flag, "--%s %s", k->flag, k->arg);
        fprintf(out, "  %s   (%s)\n      %s\n", flag, k->name, k->help);
        if (k->type == QD_SPEC_KEY_ENUM)
            fprintf(out, "      values: %s\n",
                    words_text(k->words, ALL_WORDS_MASK, list, sizeof list));
        if (k->field == QD_SPEC_F_METHOD || k->field == QD_SPEC_F_FORMAT) continue;
        default_summary(k, def, sizeof def);
        fprintf(out, "      default: %s\n", def[0] ? def : "none");
        const char *note = default_note(k->field);
        if (note) fprintf(out, "        (%s)\n", note);
    }
    fputs("\nWhat each format holds:\n", out);
    for (int f = 1; f < QD_SPEC_FORMAT_COUNT; f++) {
        unsigned ms = format_methods((qd_spec_format)f);
        const char *sd = qd_spec_scale_dtype_name(default_scale_dtype((qd_spec_format)f));
        fprintf(out, "  %-19s methods %s; scales %s\n", format_words[f - 1],
                words_text(method_words, ms, list, sizeof list), sd ? sd : "-");
    }
}
