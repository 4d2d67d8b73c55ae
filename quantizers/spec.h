/*
 * spec.h - the job spec: what a quantization job is asked to do (method, bits, groups, target
 * format, calibration data, per-method parameters), its defaults, its validation, its
 * canonical text and digest (the spec half of the cache key), and its two text front ends:
 * a YAML file and command-line flags.
 *
 * One set of names everywhere. The YAML keys are the field names of message QuantSpec in
 * proto/quantd.proto (nested messages are nested mappings: `awq: {n_grid: 20}`, or the dotted
 * `awq.n_grid: 20`); a flag is the key's last part with '_' written '-' (`--n-grid`), except
 * where docs/spec.md says otherwise (--sym/--asym, --calib for calibration.path, --calib-*
 * for the calibration keys, --fp8-* for the fp8 keys). qd_spec_key_at() lists the keys.
 *
 * Usage (the CLI; the daemon fills the struct from the request instead of parsing text):
 *
 *     qd_spec spec = {0};
 *     qd_error err = {0};
 *     int *rest = malloc(argc * sizeof *rest), n_rest;   (room for argc indices)
 *     if (qd_spec_parse_args(argc, argv, &spec, rest, &n_rest, &err) != QD_OK ||
 *         qd_spec_resolve(&spec, &warnings, &err) != QD_OK ||
 *         qd_spec_check_model(&spec, linears, n_linears, &err) != QD_OK) { report err }
 *     qd_spec_hash_calibration(&spec, &err);      (a --calib FILE becomes a digest)
 *     qd_spec_digest(&spec, hex, &err);
 *     ...
 *     qd_spec_free(&spec);
 *
 * Unset is zero. A zero-initialised spec has every field unset (as on the wire, where 0 means
 * "server default"); qd_spec_defaults() fills them from the method and the format. method and
 * format have no default. Errors name the field as the user wrote it: "--group-size 96: ...",
 * "job.yaml:4: group_size 96: ...", or "spec.group_size 96: ..." for a field set by code.
 */
#ifndef QD_SPEC_H
#define QD_SPEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Version of quantd's numerics (kernels, rounding, search order). Bump it when the same spec
 * on the same model would give different bytes: it is part of the canonical text, so every
 * cached artifact made before the change stops matching.
 *   1  first release
 *   2  the cpu GEMM is cut into fixed tiles instead of one slice per thread, so results no
 *      longer depend on the thread count (and differ from version 1's on every count) */
#define QD_NUMERICS_VERSION 2

/* Values match proto enum Method. */
typedef enum qd_spec_method {
    QD_SPEC_METHOD_UNSET = 0,
    QD_SPEC_METHOD_RTN = 1,         /* "rtn" */
    QD_SPEC_METHOD_AWQ = 2,         /* "awq" */
    QD_SPEC_METHOD_GPTQ = 3,        /* "gptq" */
    QD_SPEC_METHOD_SMOOTHQUANT = 4, /* "smoothquant" */
    QD_SPEC_METHOD_FP8 = 5,         /* "fp8" */
    QD_SPEC_METHOD_W4A8_AWQ = 6,    /* "w4a8-awq" */
    QD_SPEC_METHOD_COUNT
} qd_spec_method;

/* Values 1..5 match proto enum Format; NONE (in memory, a report only) is quantd's own and has
 * no wire value. */
typedef enum qd_spec_format {
    QD_SPEC_FORMAT_UNSET = 0,
    QD_SPEC_FORMAT_AWQ = 1,                /* "awq": AutoAWQ GEMM */
    QD_SPEC_FORMAT_GPTQ = 2,               /* "gptq": GPTQ v1 (v2 when asymmetric) */
    QD_SPEC_FORMAT_COMPRESSED_TENSORS = 3, /* "compressed-tensors" */
    QD_SPEC_FORMAT_MODELOPT = 4,           /* "modelopt" */
    QD_SPEC_FORMAT_DASHINFER = 5,          /* "dashinfer" */
    QD_SPEC_FORMAT_NONE = 6,               /* "none" */
    QD_SPEC_FORMAT_COUNT
} qd_spec_format;

/* A bool with an "unset" state, for the fields whose default depends on method or format. */
typedef enum qd_spec_tri { QD_SPEC_UNSET = 0, QD_SPEC_FALSE = 1, QD_SPEC_TRUE = 2 } qd_spec_tri;

/* Values match proto enum Fp8ScaleGranularity. */
typedef enum qd_spec_fp8_weight_scale {
    QD_SPEC_FP8_WEIGHT_SCALE_UNSET = 0,
    QD_SPEC_FP8_WEIGHT_SCALE_TENSOR = 1,  /* "tensor" */
    QD_SPEC_FP8_WEIGHT_SCALE_CHANNEL = 2, /* "channel" */
} qd_spec_fp8_weight_scale;

/* Values match proto enum Fp8ActivationScheme. */
typedef enum qd_spec_fp8_activation {
    QD_SPEC_FP8_ACTIVATION_UNSET = 0,
    QD_SPEC_FP8_ACTIVATION_STATIC = 1,  /* "static": per-tensor scales from calibration */
    QD_SPEC_FP8_ACTIVATION_DYNAMIC = 2, /* "dynamic": per-token scales at run time */
} qd_spec_fp8_activation;

/* The dtype the format stores scales in. Derived from the format, not a key. */
typedef enum qd_spec_scale_dtype {
    QD_SPEC_SCALE_DTYPE_UNSET = 0,
    QD_SPEC_SCALE_DTYPE_MODEL = 1, /* "model": the model's weight dtype */
    QD_SPEC_SCALE_DTYPE_F16 = 2,   /* "f16" */
    QD_SPEC_SCALE_DTYPE_F32 = 3,   /* "f32" */
} qd_spec_scale_dtype;

/* Every key, in table order (qd_spec_key_at(i)->field == i). */
typedef enum qd_spec_field {
    QD_SPEC_F_METHOD,
    QD_SPEC_F_FORMAT,
    QD_SPEC_F_BITS,
    QD_SPEC_F_GROUP_SIZE,
    QD_SPEC_F_SYMMETRIC,
    QD_SPEC_F_MODULES_TO_NOT_CONVERT,
    QD_SPEC_F_CALIB_PATH,
    QD_SPEC_F_CALIB_DIGEST,
    QD_SPEC_F_CALIB_ROWS,
    QD_SPEC_F_CALIB_SEQ_LEN,
    QD_SPEC_F_AWQ_DUO_SCALING,
    QD_SPEC_F_AWQ_N_GRID,
    QD_SPEC_F_AWQ_APPLY_CLIP,
    QD_SPEC_F_AWQ_MAX_SHRINK,
    QD_SPEC_F_AWQ_CLIP_N_GRID,
    QD_SPEC_F_AWQ_N_SAMPLE_TOKENS,
    QD_SPEC_F_GPTQ_DAMP_PERCENT,
    QD_SPEC_F_GPTQ_ACT_ORDER,
    QD_SPEC_F_GPTQ_STATIC_GROUPS,
    QD_SPEC_F_GPTQ_TRUE_SEQUENTIAL,
    QD_SPEC_F_GPTQ_BLOCK_SIZE,
    QD_SPEC_F_GPTQ_MSE,
    QD_SPEC_F_SMOOTHQUANT_ALPHA,
    QD_SPEC_F_FP8_WEIGHT_SCALE,
    QD_SPEC_F_FP8_ACTIVATION_SCHEME,
    QD_SPEC_FIELD_COUNT
} qd_spec_field;

/* Where a field's value came from, for messages. */
typedef enum qd_spec_origin {
    QD_SPEC_FROM_CODE = 0, /* set by the caller (the RPC layer, a test), or never set */
    QD_SPEC_FROM_DEFAULT,  /* filled by qd_spec_defaults() */
    QD_SPEC_FROM_FLAG,     /* a command-line flag */
    QD_SPEC_FROM_YAML,     /* a YAML file (source_file, line) */
} qd_spec_origin;

typedef struct qd_spec_source {
    uint8_t origin;  /* qd_spec_origin */
    uint8_t negated; /* FLAG: given in its negative spelling (--asym, --no-apply-clip) */
    uint32_t line;   /* YAML: 1-based line of the key */
} qd_spec_source;

#define QD_SPEC_DIGEST_HEX 65 /* 64 lowercase hex digits and a NUL */

typedef struct qd_spec_calibration {
    char *path;                       /* file to read (CLI and YAML only); NULL = none */
    char digest[QD_SPEC_DIGEST_HEX];  /* bundle digest of the data; "" = not known yet */
    uint32_t rows;                    /* samples used, the first ones; 0 = default */
    uint32_t seq_len;                 /* tokens per sample at most; 0 = default */
} qd_spec_calibration;

/* AWQ and W4A8-AWQ. 0 / UNSET = default. */
typedef struct qd_spec_awq {
    qd_spec_tri duo_scaling;  /* scales from mean |x| and mean |w| (AutoAWQ), not |x| only */
    uint32_t n_grid;          /* scale exponents tried: ratio i/n_grid, i < n_grid */
    qd_spec_tri apply_clip;   /* clip search after scaling */
    double max_shrink;        /* clip: largest fraction of the range cut, in (0, 1) */
    uint32_t clip_n_grid;     /* clip: grid steps; max_shrink * clip_n_grid shrinks tried */
    uint32_t n_sample_tokens; /* clip: tokens sampled (evenly strided) per group */
} qd_spec_awq;

/* GPTQ. 0 / UNSET = default; the plain bools default to false. */
typedef struct qd_spec_gptq {
    double damp_percent;         /* H += damp_percent * mean(diag H) * I, in (0, 1) */
    bool act_order;              /* columns by decreasing diag H (desc_act) */
    bool static_groups;          /* group parameters fixed before reordering */
    qd_spec_tri true_sequential; /* sub-groups of a layer quantized in order */
    uint32_t block_size;         /* columns per lazy batch update */
    bool mse;                    /* shrink each group's range to minimise |q(x) - x|^2.4 */
} qd_spec_gptq;

typedef struct qd_spec_smoothquant {
    bool has_alpha; /* alpha given (0 is a valid alpha) */
    double alpha;   /* migration strength in [0, 1] */
} qd_spec_smoothquant;

/* FP8, and the fixed FP8 half of W4A8-AWQ. */
typedef struct qd_spec_fp8 {
    qd_spec_fp8_weight_scale weight_scale;
    qd_spec_fp8_activation activation_scheme;
} qd_spec_fp8;

/*
 * A job spec. Owns its strings and list: copy with qd_spec_copy(), release with
 * qd_spec_free(). Fields a method does not use stay unset; setting one is an error.
 */
typedef struct qd_spec {
    qd_spec_method method; /* required */
    qd_spec_format format; /* required */
    uint32_t bits;         /* weight bits; 0 = default */
    int32_t group_size;    /* input channels per group, -1 = per output channel; 0 = default
                              (fp8 has no groups: stays 0) */
    qd_spec_tri symmetric; /* symmetric codes (no zero points) */
    qd_spec_calibration calibration;
    char **modules_to_not_convert; /* module names, or dot-separated runs of a name's parts */
    size_t n_modules_to_not_convert;
    qd_spec_awq awq;
    qd_spec_gptq gptq;
    qd_spec_smoothquant smoothquant;
    qd_spec_fp8 fp8;
    qd_spec_scale_dtype scale_dtype; /* derived from the format by qd_spec_defaults() */

    qd_spec_source source[QD_SPEC_FIELD_COUNT]; /* for messages; zero = set by code */
    char *source_file;                          /* label of the YAML file read, or NULL */
} qd_spec;

/* ---- names ----------------------------------------------------------------------------------- */

/* "awq", "compressed-tensors", ...; NULL when out of range or unset. */
const char *qd_spec_method_name(qd_spec_method m);
const char *qd_spec_format_name(qd_spec_format f);
const char *qd_spec_scale_dtype_name(qd_spec_scale_dtype d);
/* The word's value, or UNSET for an unknown word. */
qd_spec_method qd_spec_method_from_name(const char *name);
qd_spec_format qd_spec_format_from_name(const char *name);

/* How a key's value is written. */
typedef enum qd_spec_key_type {
    QD_SPEC_KEY_ENUM,   /* one of words */
    QD_SPEC_KEY_UINT,   /* decimal, 1..UINT32_MAX (0 is refused in text: it means "default") */
    QD_SPEC_KEY_GROUP,  /* decimal, -1 or positive */
    QD_SPEC_KEY_TRI,    /* true or false */
    QD_SPEC_KEY_BOOL,   /* true or false */
    QD_SPEC_KEY_REAL,   /* decimal number */
    QD_SPEC_KEY_PATH,   /* file path */
    QD_SPEC_KEY_DIGEST, /* 64 lowercase hex digits */
    QD_SPEC_KEY_LIST,   /* YAML list of strings; flag: comma-separated, repeatable */
} qd_spec_key_type;

/* One row of the key table. Borrowed, static. */
typedef struct qd_spec_key {
    qd_spec_field field;
    const char *name;         /* YAML key, dotted: "awq.n_grid" */
    const char *flag;         /* flag without "--": "n-grid" */
    const char *neg_flag;     /* TRI/BOOL: the false spelling ("no-apply-clip", "asym") */
    qd_spec_key_type type;
    const char *const *words; /* ENUM: accepted words, NULL-terminated */
    unsigned methods;         /* bit (1 << method) for each method that uses the key */
    const char *arg;          /* placeholder in help: "N", "FILE" */
    const char *help;         /* one line */
} qd_spec_key;

size_t qd_spec_key_count(void);
/* Row i, or NULL. */
const qd_spec_key *qd_spec_key_at(size_t i);
/* The row for a YAML key ("awq.n_grid") or NULL. */
const qd_spec_key *qd_spec_key_find(const char *name);

/* ---- life cycle ------------------------------------------------------------------------------ */

/* Free what s owns and zero it. Accepts NULL and half-built specs. */
void qd_spec_free(qd_spec *s);
/* Deep copy of src into *dst (whose old contents are not freed: pass a zeroed or freed spec).
 * QD_ERR_NOMEM leaves *dst zeroed. */
qd_err qd_spec_copy(qd_spec *dst, const qd_spec *src, qd_error *err);

/* ---- defaults and validation ----------------------------------------------------------------- */

/*
 * Fill every unset field that the method uses from the method and the format (docs/spec.md
 * gives each default and where it comes from), and scale_dtype from the format. Fields whose
 * default needs the method or format stay unset while those are unset. Idempotent. Set fields
 * are never changed, so an invalid value survives for qd_spec_validate() to report.
 */
void qd_spec_defaults(qd_spec *s);

#define QD_SPEC_WARN_MAX 8
#define QD_SPEC_WARN_LEN 320

/* Things that are allowed but worth telling the user (a slower kernel, a less common
 * checkpoint flavour). Zero-initialise. */
typedef struct qd_spec_warnings {
    size_t n;
    char msg[QD_SPEC_WARN_MAX][QD_SPEC_WARN_LEN];
} qd_spec_warnings;

/*
 * Check a spec after qd_spec_defaults(): every value in its range, and every combination the
 * method and the format can hold. The first problem found fails with a message naming the
 * field (QD_ERR_INVALID_ARG for a value that is wrong on its own or a missing required field,
 * QD_ERR_UNSUPPORTED for a value that this method or format cannot hold). warn may be NULL.
 */
qd_err qd_spec_validate(const qd_spec *s, qd_spec_warnings *warn, qd_error *err);

/* qd_spec_defaults() then qd_spec_validate(). */
qd_err qd_spec_resolve(qd_spec *s, qd_spec_warnings *warn, qd_error *err);

/* Whether the method reads calibration data (with the fp8 activation scheme as now set). */
bool qd_spec_needs_calibration(const qd_spec *s);
/* "gptq" or "gptq_v2" (asymmetric) for format gptq; NULL for other formats. */
const char *qd_spec_gptq_checkpoint_format(const qd_spec *s);
/* Whether the linear named name ("model.layers.0.mlp.down_proj") is kept unquantized: some
 * modules_to_not_convert entry equals a run of whole dot-separated parts of name
 * ("down_proj", "mlp.down_proj", "model.layers.0", "layers.0.mlp"). */
bool qd_spec_module_excluded(const qd_spec *s, const char *name);

/* One linear of the model, for qd_spec_check_model(). */
typedef struct qd_spec_linear {
    const char *name;     /* "model.layers.0.mlp.down_proj" */
    int64_t in_features;  /* K */
    int64_t out_features; /* N */
} qd_spec_linear;

/*
 * Check a resolved spec against the model's linears (those modules_to_not_convert excludes
 * are skipped): group_size divides every in_features, and the format's packing fits the
 * shapes. QD_ERR_INVALID_ARG naming the field, the layer and the size:
 * "--group-size 96: does not divide in_features 352 of model.layers.0.mlp.down_proj".
 */
qd_err qd_spec_check_model(const qd_spec *s, const qd_spec_linear *linears, size_t n,
                           qd_error *err);

/* ---- canonical text and digest --------------------------------------------------------------- */

/*
 * Compute calibration.digest from calibration.path when the spec has a path: the bundle
 * digest (proto/quantd.proto) of a one-file bundle holding the file under its base name, so a
 * file given to the CLI and the same file uploaded as a calibration bundle get the same
 * digest. A digest already set must match (QD_ERR_INVALID_ARG otherwise). No-op without path.
 */
qd_err qd_spec_hash_calibration(qd_spec *s, qd_error *err);

/*
 * The canonical text of s: compact JSON, keys sorted, every field the method uses present
 * after defaults, none it does not use, numbers in their shortest exact form, the module list
 * sorted and without duplicates, plus "numerics_version". Specs that mean the same thing give
 * the same text. s is resolved on a copy (s itself is not changed); a method that calibrates
 * needs calibration.digest (QD_ERR_PRECONDITION: see qd_spec_hash_calibration). *out is
 * malloc'd and NUL-terminated (caller frees); *len excludes the NUL (len may be NULL).
 */
qd_err qd_spec_canonical(const qd_spec *s, char **out, size_t *len, qd_error *err);

/* sha256 of the canonical text, as 64 lowercase hex digits: the spec digest. */
qd_err qd_spec_digest(const qd_spec *s, char hex[QD_SPEC_DIGEST_HEX], qd_error *err);

/* ---- text front ends ------------------------------------------------------------------------- */

/*
 * Apply a YAML spec of len bytes (need not be NUL-terminated) over *s: the keys the text sets
 * replace those fields, the others keep their values. label names the input in messages
 * ("job.yaml:3: bits: expected an integer, got 'four'"). Unknown keys, keys given twice,
 * values of the wrong type, anchors, aliases and tags are errors naming the key and the line
 * (QD_ERR_INVALID_ARG; QD_ERR_FORMAT when the text is not YAML). On failure *s is untouched.
 */
qd_err qd_spec_parse_yaml(const char *yaml, size_t len, const char *label, qd_spec *s,
                          qd_error *err);
/* qd_spec_parse_yaml() of the file at path (at most 1 MiB), labelled with path. */
qd_err qd_spec_load_yaml(const char *path, qd_spec *s, qd_error *err);

/*
 * Apply command-line flags over *s. argv[0] is the program or command name and is skipped.
 * `--spec FILE` (anywhere, once) is applied first; the other flags then override it. Flags
 * take their value as the next argument or after '=' (`--bits 4`, `--bits=4`); true/false
 * keys are set by the flag and cleared by its negative (`--sym`/`--asym`,
 * `--apply-clip`/`--no-apply-clip`). The first --modules-to-not-convert replaces the list,
 * later ones add to it. Arguments it does not know (other flags with their values, positional
 * arguments, everything after "--") are left: their indices go to rest (room for argc
 * entries), in order, and their number to *n_rest (either may be NULL to drop them). On
 * failure nothing is written.
 */
qd_err qd_spec_parse_args(int argc, char *const *argv, qd_spec *s, int *rest, int *n_rest,
                          qd_error *err);

/* Every flag with its YAML key, what it accepts and its default for each method
 * (`quantd quantize --help`). */
void qd_spec_help(FILE *out);

#ifdef __cplusplus
}
#endif

#endif /* QD_SPEC_H */
