/*
 * test-spec.c - the job spec: the key table against the proto, defaults per method and format,
 * every validation error (code and the field named as the user wrote it), the model check,
 * the canonical text (a golden copy written out below) and its digest, equal digests for
 * equivalent specs and different digests for every field, the YAML loader and the flags.
 *
 * Expected values come from docs/spec.md and the references it cites, and golden digests were
 * computed outside quantd (sha256 of the literal text), never from the code under test.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <jansson.h>

#include "error.h"
#include "fsutil.h"
#include "spec.h"
#include "test.h"

#define DIG "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
#define DIG2 "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"

/* ---- helpers --------------------------------------------------------------------------------- */

static int argv_count(const char *const *argv) {
    int n = 0;
    while (argv[n]) n++;
    return n;
}

/* Parse flags (argv[0] is the command name) into a zeroed *s, then resolve. */
static qd_err from_flags(const char *const *argv, qd_spec *s, qd_spec_warnings *w,
                         qd_error *err) {
    int rest[64], n_rest = 0;
    qd_err rc = qd_spec_parse_args(argv_count(argv), (char *const *)argv, s, rest, &n_rest, err);
    if (rc == QD_OK) rc = qd_spec_resolve(s, w, err);
    return rc;
}
#define ARGV(...) ((const char *const[]){"quantize", __VA_ARGS__, NULL})

static qd_err from_yaml(const char *yaml, qd_spec *s, qd_error *err) {
    return qd_spec_parse_yaml(yaml, strlen(yaml), "test.yaml", s, err);
}

static void check_pieces_(const char *msg, const char *a, const char *b, const char *c,
                          const char *file, int line) {
    const char *pieces[] = {a, b, c};
    for (int i = 0; i < 3; i++) {
        if (pieces[i] && !strstr(msg, pieces[i])) {
            fprintf(stderr, "%s:%d: message \"%s\" lacks \"%s\"\n", file, line, msg, pieces[i]);
            qd_failed_checks_++;
        }
    }
}

static void check_code_(qd_err got, qd_err want, const char *msg, const char *file, int line) {
    if (got != want) {
        fprintf(stderr, "%s:%d: expected %s, got %s (%s)\n", file, line, qd_err_name(want),
                qd_err_name(got), msg);
        qd_failed_checks_++;
    }
}

/* Flags, then resolve, must fail with code and a message holding each non-NULL piece. */
static void expect_flags_fail_(const char *const *argv, qd_err code, const char *a,
                               const char *b, const char *c, const char *file, int line) {
    qd_spec s = {0};
    qd_error err = {0};
    qd_err rc = from_flags(argv, &s, NULL, &err);
    check_code_(rc, code, err.msg, file, line);
    check_pieces_(err.msg, a, b, c, file, line);
    qd_spec_free(&s);
}
#define EXPECT_FLAGS_FAIL(code, a, b, c, ...) \
    expect_flags_fail_(ARGV(__VA_ARGS__), code, a, b, c, __FILE__, __LINE__)

/* The spec s must fail validation (after defaults) with code and the pieces. */
static void expect_spec_fail_(qd_spec *s, qd_err code, const char *a, const char *b,
                              const char *file, int line) {
    qd_error err = {0};
    qd_err rc = qd_spec_resolve(s, NULL, &err);
    check_code_(rc, code, err.msg, file, line);
    check_pieces_(err.msg, a, b, NULL, file, line);
}
#define EXPECT_SPEC_FAIL(s, code, a, b) expect_spec_fail_(s, code, a, b, __FILE__, __LINE__)

/* The YAML must fail to parse with code and the pieces; the spec is left untouched. */
static void expect_yaml_fail_(const char *yaml, qd_err code, const char *a, const char *b,
                              const char *file, int line) {
    qd_spec s = {0};
    s.bits = 7; /* a marker: a failed parse must leave it */
    qd_error err = {0};
    qd_err rc = from_yaml(yaml, &s, &err);
    check_code_(rc, code, err.msg, file, line);
    check_pieces_(err.msg, a, b, NULL, file, line);
    if (s.bits != 7 || s.method != QD_SPEC_METHOD_UNSET) {
        fprintf(stderr, "%s:%d: a failed parse changed the spec\n", file, line);
        qd_failed_checks_++;
    }
    qd_spec_free(&s);
}
#define EXPECT_YAML_FAIL(yaml, code, a, b) expect_yaml_fail_(yaml, code, a, b, __FILE__, __LINE__)

/* Digest of a YAML spec; QD_CHECKs that it parses and resolves. */
static bool yaml_digest(const char *yaml, char hex[QD_SPEC_DIGEST_HEX]) {
    qd_spec s = {0};
    qd_error err = {0};
    qd_err rc = from_yaml(yaml, &s, &err);
    if (rc == QD_OK) rc = qd_spec_digest(&s, hex, &err);
    if (rc != QD_OK) fprintf(stderr, "spec failed: %s\n--\n%s\n--\n", err.msg, yaml);
    qd_spec_free(&s);
    return rc == QD_OK;
}

static char *canonical_of_yaml(const char *yaml) {
    qd_spec s = {0};
    qd_error err = {0};
    char *text = NULL;
    qd_err rc = from_yaml(yaml, &s, &err);
    if (rc == QD_OK) rc = qd_spec_canonical(&s, &text, NULL, &err);
    if (rc != QD_OK) fprintf(stderr, "canonical failed: %s\n", err.msg);
    qd_spec_free(&s);
    return text;
}

static char tmp_dir_path[256];

static void remove_tmp_dir(void) {
    qd_error err = {0};
    if (tmp_dir_path[0]) (void)qd_remove_tree(tmp_dir_path, &err);
}

/* A private directory for the files the tests write, removed at exit. */
static const char *tmp_dir(void) {
    if (!tmp_dir_path[0]) {
        const char *base = getenv("TMPDIR");
        snprintf(tmp_dir_path, sizeof tmp_dir_path, "%s/qd-test-spec-XXXXXX",
                 base && *base ? base : "/tmp");
        if (mkdtemp(tmp_dir_path)) atexit(remove_tmp_dir);
        else tmp_dir_path[0] = '\0';
    }
    return tmp_dir_path;
}

static bool write_tmp(const char *name, const char *text, char *path, size_t cap) {
    qd_error err = {0};
    if (qd_path_join(path, cap, tmp_dir(), name, &err) != QD_OK) return false;
    return qd_write_file_atomic(path, text, strlen(text), &err) == QD_OK;
}

/* ---- the key table --------------------------------------------------------------------------- */

QD_TEST(table_rows_follow_the_field_enum) {
    QD_CHECK_EQ_INT(qd_spec_key_count(), QD_SPEC_FIELD_COUNT);
    for (size_t i = 0; i < qd_spec_key_count(); i++) {
        const qd_spec_key *k = qd_spec_key_at(i);
        QD_REQUIRE(k);
        QD_CHECK_EQ_INT(k->field, i);
        QD_CHECK(qd_spec_key_find(k->name) == k);
        QD_CHECK(k->help && strlen(k->help) > 10);
        QD_CHECK(k->methods != 0);
        /* Flags and negative flags are unique across the table. */
        for (size_t j = 0; j < i; j++) {
            const qd_spec_key *o = qd_spec_key_at(j);
            QD_CHECK(strcmp(k->name, o->name) != 0);
            QD_CHECK(strcmp(k->flag, o->flag) != 0);
            if (k->neg_flag && o->neg_flag) QD_CHECK(strcmp(k->neg_flag, o->neg_flag) != 0);
        }
        QD_CHECK((k->neg_flag != NULL) ==
                 (k->type == QD_SPEC_KEY_TRI || k->type == QD_SPEC_KEY_BOOL));
    }
    QD_CHECK(qd_spec_key_at(qd_spec_key_count()) == NULL);
    QD_CHECK(qd_spec_key_find("awq.nope") == NULL);
}

/* The naming rule of docs/spec.md: a flag is the key's last part with '_' as '-', except the
 * documented spellings below. */
QD_TEST(flags_are_named_like_the_keys) {
    static const struct {
        const char *key, *flag, *neg;
    } exceptions[] = {
        {"symmetric", "sym", "asym"},
        {"calibration.path", "calib", NULL},
        {"calibration.digest", "calib-digest", NULL},
        {"calibration.rows", "calib-rows", NULL},
        {"calibration.seq_len", "calib-seq-len", NULL},
        {"fp8.weight_scale", "fp8-weight-scale", NULL},
        {"fp8.activation_scheme", "fp8-activation-scheme", NULL},
    };
    for (size_t i = 0; i < qd_spec_key_count(); i++) {
        const qd_spec_key *k = qd_spec_key_at(i);
        bool special = false;
        for (size_t e = 0; e < sizeof exceptions / sizeof exceptions[0]; e++) {
            if (strcmp(exceptions[e].key, k->name) != 0) continue;
            special = true;
            QD_CHECK_EQ_STR(k->flag, exceptions[e].flag);
            if (exceptions[e].neg) QD_CHECK_EQ_STR(k->neg_flag, exceptions[e].neg);
        }
        if (special) continue;
        const char *leaf = strrchr(k->name, '.');
        char want[64], neg[80];
        snprintf(want, sizeof want, "%s", leaf ? leaf + 1 : k->name);
        for (char *c = want; *c; c++)
            if (*c == '_') *c = '-';
        QD_CHECK_EQ_STR(k->flag, want);
        if (k->neg_flag) {
            snprintf(neg, sizeof neg, "no-%s", want);
            QD_CHECK_EQ_STR(k->neg_flag, neg);
        }
    }
}

/* The YAML keys are the proto's field names, and the enum values its numbers. Keys the wire
 * does not carry yet are listed here (docs/spec.md says so too). */
QD_TEST(names_and_numbers_match_the_proto) {
    char path[512], *proto = NULL;
    size_t len = 0;
    qd_error err = {0};
    snprintf(path, sizeof path, "%s/proto/quantd.proto", QD_SOURCE_DIR);
    QD_CHECK_OK(qd_read_file(path, 1 << 20, &proto, &len, &err), &err);
    QD_REQUIRE(proto);
    static const char *const not_on_wire[] = {"calibration.path"};
    for (size_t i = 0; i < qd_spec_key_count(); i++) {
        const qd_spec_key *k = qd_spec_key_at(i);
        bool skip = false;
        for (size_t j = 0; j < sizeof not_on_wire / sizeof not_on_wire[0]; j++)
            skip |= strcmp(not_on_wire[j], k->name) == 0;
        if (skip) continue;
        const char *leaf = strrchr(k->name, '.');
        char field[80];
        snprintf(field, sizeof field, " %s = ", leaf ? leaf + 1 : k->name);
        QD_CHECK_MSG(strstr(proto, field), "proto has no field '%s'", k->name);
    }
    /* METHOD_<NAME> = <value> and FORMAT_<NAME> = <value>, NAME = word upper-cased, - as _. */
    for (int m = 1; m < QD_SPEC_METHOD_COUNT; m++) {
        char want[80];
        const char *w = qd_spec_method_name((qd_spec_method)m);
        QD_REQUIRE(w);
        int o = snprintf(want, sizeof want, "METHOD_");
        for (; *w; w++) want[o++] = *w == '-' ? '_' : (char)toupper((unsigned char)*w);
        snprintf(want + o, sizeof want - (size_t)o, " = %d;", m);
        QD_CHECK_MSG(strstr(proto, want), "proto lacks '%s'", want);
        QD_CHECK_EQ_INT(qd_spec_method_from_name(qd_spec_method_name((qd_spec_method)m)), m);
    }
    for (int f = 1; f < QD_SPEC_FORMAT_NONE; f++) {
        char want[80];
        const char *w = qd_spec_format_name((qd_spec_format)f);
        QD_REQUIRE(w);
        int o = snprintf(want, sizeof want, "FORMAT_");
        for (; *w; w++) want[o++] = *w == '-' ? '_' : (char)toupper((unsigned char)*w);
        snprintf(want + o, sizeof want - (size_t)o, " = %d;", f);
        QD_CHECK_MSG(strstr(proto, want), "proto lacks '%s'", want);
        QD_CHECK_EQ_INT(qd_spec_format_from_name(qd_spec_format_name((qd_spec_format)f)), f);
    }
    QD_CHECK(strstr(proto, "FP8_SCALE_GRANULARITY_PER_TENSOR = 1;"));
    QD_CHECK(strstr(proto, "FP8_SCALE_GRANULARITY_PER_CHANNEL = 2;"));
    QD_CHECK(strstr(proto, "FP8_ACTIVATION_SCHEME_STATIC = 1;"));
    QD_CHECK(strstr(proto, "FP8_ACTIVATION_SCHEME_DYNAMIC = 2;"));
    QD_CHECK_EQ_INT(QD_SPEC_FP8_WEIGHT_SCALE_TENSOR, 1);
    QD_CHECK_EQ_INT(QD_SPEC_FP8_WEIGHT_SCALE_CHANNEL, 2);
    QD_CHECK_EQ_INT(QD_SPEC_FP8_ACTIVATION_STATIC, 1);
    QD_CHECK_EQ_INT(QD_SPEC_FP8_ACTIVATION_DYNAMIC, 2);
    QD_CHECK_EQ_STR(qd_spec_format_name(QD_SPEC_FORMAT_NONE), "none");
    QD_CHECK(qd_spec_method_name(QD_SPEC_METHOD_UNSET) == NULL);
    QD_CHECK(qd_spec_method_name(QD_SPEC_METHOD_COUNT) == NULL);
    QD_CHECK_EQ_INT(qd_spec_method_from_name("AWQ"), QD_SPEC_METHOD_UNSET);
    free(proto);
}

/* ---- defaults -------------------------------------------------------------------------------- */

static void resolve_flags_ok(const char *const *argv, qd_spec *s) {
    qd_error err = {0};
    QD_CHECK_OK(from_flags(argv, s, NULL, &err), &err);
}

QD_TEST(defaults_awq_on_autoawq) {
    qd_spec s = {0};
    resolve_flags_ok(ARGV("--method", "awq", "--format", "awq", "--calib-digest", DIG), &s);
    QD_CHECK_EQ_INT(s.bits, 4);
    QD_CHECK_EQ_INT(s.group_size, 128);
    QD_CHECK_EQ_INT(s.symmetric, QD_SPEC_FALSE); /* GEMM needs zero points */
    QD_CHECK_EQ_INT(s.calibration.rows, 128);    /* AutoAWQ max_calib_samples */
    QD_CHECK_EQ_INT(s.calibration.seq_len, 512); /* AutoAWQ max_calib_seq_len */
    QD_CHECK_EQ_INT(s.awq.duo_scaling, QD_SPEC_TRUE);
    QD_CHECK_EQ_INT(s.awq.n_grid, 20);
    QD_CHECK_EQ_INT(s.awq.apply_clip, QD_SPEC_TRUE);
    QD_CHECK(s.awq.max_shrink == 0.5);
    QD_CHECK_EQ_INT(s.awq.clip_n_grid, 20);
    QD_CHECK_EQ_INT(s.awq.n_sample_tokens, 512);
    QD_CHECK_EQ_INT(s.scale_dtype, QD_SPEC_SCALE_DTYPE_F16); /* AutoAWQ .half() */
    /* Nothing of the other methods is filled. */
    QD_CHECK(s.gptq.damp_percent == 0);
    QD_CHECK_EQ_INT(s.gptq.block_size, 0);
    QD_CHECK(!s.smoothquant.has_alpha);
    QD_CHECK_EQ_INT(s.fp8.weight_scale, QD_SPEC_FP8_WEIGHT_SCALE_UNSET);
    QD_CHECK_EQ_INT(s.source[QD_SPEC_F_BITS].origin, QD_SPEC_FROM_DEFAULT);
    QD_CHECK_EQ_INT(s.source[QD_SPEC_F_METHOD].origin, QD_SPEC_FROM_FLAG);
    QD_CHECK(qd_spec_needs_calibration(&s));
    QD_CHECK(qd_spec_gptq_checkpoint_format(&s) == NULL);
    qd_spec_free(&s);
}

QD_TEST(defaults_gptq) {
    qd_spec s = {0};
    resolve_flags_ok(ARGV("--method", "gptq", "--format", "gptq", "--calib-digest", DIG), &s);
    QD_CHECK_EQ_INT(s.bits, 4);
    QD_CHECK_EQ_INT(s.group_size, 128);
    QD_CHECK_EQ_INT(s.symmetric, QD_SPEC_TRUE);
    QD_CHECK(s.gptq.damp_percent == 0.01); /* AutoGPTQ / IST percdamp */
    QD_CHECK(!s.gptq.act_order);
    QD_CHECK(!s.gptq.static_groups);
    QD_CHECK_EQ_INT(s.gptq.true_sequential, QD_SPEC_TRUE);
    QD_CHECK_EQ_INT(s.gptq.block_size, 128);
    QD_CHECK(!s.gptq.mse);
    QD_CHECK_EQ_INT(s.calibration.rows, 128);     /* IST --nsamples */
    QD_CHECK_EQ_INT(s.calibration.seq_len, 2048); /* IST model.seqlen */
    QD_CHECK_EQ_INT(s.scale_dtype, QD_SPEC_SCALE_DTYPE_F16);
    QD_CHECK_EQ_STR(qd_spec_gptq_checkpoint_format(&s), "gptq");
    QD_CHECK_EQ_INT(s.awq.n_grid, 0);
    qd_spec_free(&s);

    /* 8 bits: per output channel. */
    resolve_flags_ok(ARGV("--method", "gptq", "--format", "gptq", "--bits", "8", "--calib-digest",
                          DIG),
                     &s);
    QD_CHECK_EQ_INT(s.group_size, -1);
    qd_spec_free(&s);
}

QD_TEST(defaults_rtn_smoothquant_fp8_w4a8) {
    qd_spec s = {0};
    resolve_flags_ok(ARGV("--method", "rtn", "--format", "none"), &s);
    QD_CHECK_EQ_INT(s.bits, 4);
    QD_CHECK_EQ_INT(s.group_size, 128);
    QD_CHECK_EQ_INT(s.symmetric, QD_SPEC_TRUE);
    QD_CHECK_EQ_INT(s.calibration.rows, 0); /* RTN reads no data */
    QD_CHECK_EQ_INT(s.scale_dtype, QD_SPEC_SCALE_DTYPE_F32);
    QD_CHECK(!qd_spec_needs_calibration(&s));
    qd_spec_free(&s);

    resolve_flags_ok(ARGV("--method", "smoothquant", "--format", "modelopt", "--calib-digest",
                          DIG),
                     &s);
    QD_CHECK_EQ_INT(s.bits, 8);
    QD_CHECK_EQ_INT(s.group_size, -1);
    QD_CHECK_EQ_INT(s.symmetric, QD_SPEC_TRUE);
    QD_CHECK(s.smoothquant.has_alpha && s.smoothquant.alpha == 0.5); /* smooth_lm default */
    QD_CHECK_EQ_INT(s.calibration.rows, 512);    /* generate_act_scales: 512 samples */
    QD_CHECK_EQ_INT(s.calibration.seq_len, 512); /* ... of up to 512 tokens */
    QD_CHECK_EQ_INT(s.scale_dtype, QD_SPEC_SCALE_DTYPE_F32);
    qd_spec_free(&s);

    /* FP8 on compressed-tensors: FP8_DYNAMIC, no calibration. */
    resolve_flags_ok(ARGV("--method", "fp8", "--format", "compressed-tensors"), &s);
    QD_CHECK_EQ_INT(s.bits, 8);
    QD_CHECK_EQ_INT(s.group_size, 0);
    QD_CHECK_EQ_INT(s.symmetric, QD_SPEC_TRUE);
    QD_CHECK_EQ_INT(s.fp8.weight_scale, QD_SPEC_FP8_WEIGHT_SCALE_CHANNEL);
    QD_CHECK_EQ_INT(s.fp8.activation_scheme, QD_SPEC_FP8_ACTIVATION_DYNAMIC);
    QD_CHECK_EQ_INT(s.calibration.rows, 0);
    QD_CHECK_EQ_INT(s.scale_dtype, QD_SPEC_SCALE_DTYPE_MODEL);
    QD_CHECK(!qd_spec_needs_calibration(&s));
    qd_spec_free(&s);

    /* FP8 static: per-tensor weights follow, and calibration is needed. */
    resolve_flags_ok(ARGV("--method", "fp8", "--format", "compressed-tensors",
                          "--fp8-activation-scheme", "static", "--calib-digest", DIG),
                     &s);
    QD_CHECK_EQ_INT(s.fp8.weight_scale, QD_SPEC_FP8_WEIGHT_SCALE_TENSOR);
    QD_CHECK_EQ_INT(s.fp8.activation_scheme, QD_SPEC_FP8_ACTIVATION_STATIC);
    QD_CHECK_EQ_INT(s.calibration.rows, 512);
    QD_CHECK(qd_spec_needs_calibration(&s));
    qd_spec_free(&s);
    /* quantd writes FP8 as compressed-tensors, not ModelOpt */
    EXPECT_FLAGS_FAIL(QD_ERR_UNSUPPORTED, "--format modelopt: cannot hold method fp8",
                      "compressed-tensors", NULL, "--method", "fp8", "--format", "modelopt",
                      "--calib-digest", DIG);

    /* One fp8 key given: the other follows its preset. */
    resolve_flags_ok(ARGV("--method", "fp8", "--format", "compressed-tensors",
                          "--fp8-activation-scheme", "static", "--calib-digest", DIG),
                     &s);
    QD_CHECK_EQ_INT(s.fp8.weight_scale, QD_SPEC_FP8_WEIGHT_SCALE_TENSOR);
    qd_spec_free(&s);
    resolve_flags_ok(ARGV("--method", "fp8", "--format", "compressed-tensors",
                          "--fp8-weight-scale", "channel"),
                     &s);
    QD_CHECK_EQ_INT(s.fp8.activation_scheme, QD_SPEC_FP8_ACTIVATION_DYNAMIC);
    qd_spec_free(&s);

    resolve_flags_ok(ARGV("--method", "w4a8-awq", "--format", "modelopt", "--calib-digest", DIG),
                     &s);
    QD_CHECK_EQ_INT(s.bits, 4);
    QD_CHECK_EQ_INT(s.group_size, 128);
    QD_CHECK_EQ_INT(s.symmetric, QD_SPEC_TRUE);
    QD_CHECK_EQ_INT(s.fp8.weight_scale, QD_SPEC_FP8_WEIGHT_SCALE_TENSOR);
    QD_CHECK_EQ_INT(s.fp8.activation_scheme, QD_SPEC_FP8_ACTIVATION_STATIC);
    QD_CHECK_EQ_INT(s.awq.n_grid, 20);
    QD_CHECK_EQ_INT(s.calibration.rows, 128);
    QD_CHECK_EQ_INT(s.scale_dtype, QD_SPEC_SCALE_DTYPE_F32);
    qd_spec_free(&s);
}

QD_TEST(symmetric_default_follows_the_format) {
    static const struct {
        const char *method, *format;
        qd_spec_tri want;
    } cases[] = {
        {"rtn", "awq", QD_SPEC_FALSE},
        {"rtn", "gptq", QD_SPEC_TRUE},
        {"rtn", "dashinfer", QD_SPEC_TRUE},
        {"rtn", "compressed-tensors", QD_SPEC_TRUE},
        {"awq", "compressed-tensors", QD_SPEC_FALSE},
        {"awq", "gptq", QD_SPEC_TRUE},
        {"awq", "modelopt", QD_SPEC_TRUE},
        {"awq", "none", QD_SPEC_FALSE},
        {"gptq", "none", QD_SPEC_TRUE},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        qd_spec s = {0};
        s.method = qd_spec_method_from_name(cases[i].method);
        s.format = qd_spec_format_from_name(cases[i].format);
        qd_spec_defaults(&s);
        QD_CHECK_MSG(s.symmetric == cases[i].want, "%s on %s: symmetric %d", cases[i].method,
                     cases[i].format, (int)s.symmetric);
        qd_spec_free(&s);
    }
}

QD_TEST(defaults_keep_set_values_and_are_idempotent) {
    qd_spec s = {0}, t = {0};
    qd_error err = {0};
    s.method = QD_SPEC_METHOD_AWQ;
    s.format = QD_SPEC_FORMAT_GPTQ;
    s.group_size = 64;
    s.symmetric = QD_SPEC_FALSE;
    s.awq.n_grid = 7;
    s.bits = 5; /* invalid, and must survive for validation to see */
    qd_spec_defaults(&s);
    QD_CHECK_EQ_INT(s.group_size, 64);
    QD_CHECK_EQ_INT(s.symmetric, QD_SPEC_FALSE);
    QD_CHECK_EQ_INT(s.awq.n_grid, 7);
    QD_CHECK_EQ_INT(s.bits, 5);
    QD_CHECK_EQ_INT(s.source[QD_SPEC_F_GROUP_SIZE].origin, QD_SPEC_FROM_CODE);
    QD_CHECK_OK(qd_spec_copy(&t, &s, &err), &err);
    qd_spec_defaults(&t);
    QD_CHECK(memcmp(&s, &t, sizeof s) == 0);
    qd_spec_free(&s);
    qd_spec_free(&t);

    /* No method: nothing method-dependent is filled, and validation says what is missing. */
    qd_spec_defaults(&s);
    QD_CHECK_EQ_INT(s.bits, 0);
    EXPECT_SPEC_FAIL(&s, QD_ERR_INVALID_ARG, "--method (method): required", "w4a8-awq");
    qd_spec_free(&s);
}

/* ---- validation ------------------------------------------------------------------------------ */

QD_TEST(method_and_format_errors) {
    EXPECT_FLAGS_FAIL(QD_ERR_INVALID_ARG, "--method (method): required", "rtn, awq", NULL,
                      "--format", "awq");
    EXPECT_FLAGS_FAIL(QD_ERR_INVALID_ARG, "--format (format): required", "compressed-tensors",
                      NULL, "--method", "rtn");
    EXPECT_FLAGS_FAIL(QD_ERR_INVALID_ARG, "--method: expected one of", "got 'awq4'", NULL,
                      "--method", "awq4");
    EXPECT_FLAGS_FAIL(QD_ERR_UNSUPPORTED, "--format awq: cannot hold method smoothquant",
                      "compressed-tensors, modelopt or none", NULL, "--method", "smoothquant",
                      "--format", "awq", "--calib-digest", DIG);
    EXPECT_FLAGS_FAIL(QD_ERR_UNSUPPORTED, "--format modelopt: cannot hold method rtn", "AWQ",
                      NULL, "--method", "rtn", "--format", "modelopt");
    EXPECT_FLAGS_FAIL(QD_ERR_UNSUPPORTED, "--format compressed-tensors: cannot hold method "
                      "w4a8-awq", "modelopt or none", NULL, "--method", "w4a8-awq", "--format",
                      "compressed-tensors", "--calib-digest", DIG);
    EXPECT_FLAGS_FAIL(QD_ERR_UNSUPPORTED, "--format dashinfer: cannot hold method fp8", NULL,
                      NULL, "--method", "fp8", "--format", "dashinfer");
    qd_spec s = {0};
    s.method = (qd_spec_method)42;
    s.format = QD_SPEC_FORMAT_NONE;
    EXPECT_SPEC_FAIL(&s, QD_ERR_INVALID_ARG, "spec.method 42: unknown method", NULL);
}

QD_TEST(bits_errors) {
    EXPECT_FLAGS_FAIL(QD_ERR_UNSUPPORTED, "--bits 8: format awq", "4-bit", NULL, "--method",
                      "awq", "--format", "awq", "--bits", "8", "--calib-digest", DIG);
    EXPECT_FLAGS_FAIL(QD_ERR_UNSUPPORTED, "--bits 3: GPTQ's 3-bit layout", "4 or 8 bits", NULL,
                      "--method", "gptq", "--format", "gptq", "--bits", "3", "--calib-digest",
                      DIG);
    EXPECT_FLAGS_FAIL(QD_ERR_UNSUPPORTED, "--bits 2:", "4 or 8 bits", NULL, "--method", "gptq",
                      "--format", "gptq", "--bits", "2", "--calib-digest", DIG);
    EXPECT_FLAGS_FAIL(QD_ERR_UNSUPPORTED, "--bits 5: method rtn quantizes weights to 4 or 8",
                      NULL, NULL, "--method", "rtn", "--format", "compressed-tensors", "--bits",
                      "5");
    EXPECT_FLAGS_FAIL(QD_ERR_UNSUPPORTED, "--bits 3:", "4 or 8 bits", NULL, "--method",
                      "awq", "--format", "awq", "--bits", "3", "--calib-digest", DIG);
    /* an in-memory report (format none) measures any width 2..8 of the integer methods */
    qd_spec none = {0};
    resolve_flags_ok(ARGV("--method", "awq", "--format", "none", "--bits", "3", "--calib-digest",
                          DIG),
                     &none);
    QD_CHECK_EQ_INT(none.bits, 3);
    qd_spec_free(&none);
    resolve_flags_ok(ARGV("--method", "gptq", "--format", "none", "--bits", "2",
                          "--calib-digest", DIG),
                     &none);
    qd_spec_free(&none);
    EXPECT_FLAGS_FAIL(QD_ERR_UNSUPPORTED, "--bits 3:", NULL, NULL, "--method", "smoothquant",
                      "--format", "none", "--bits", "3", "--calib-digest", DIG);
    EXPECT_FLAGS_FAIL(QD_ERR_INVALID_ARG, "--bits 64:", NULL, NULL, "--method", "rtn",
                      "--format", "none", "--bits", "64");
    EXPECT_FLAGS_FAIL(QD_ERR_UNSUPPORTED, "--bits 4: smoothquant is W8A8", NULL, NULL,
                      "--method", "smoothquant", "--format", "compressed-tensors", "--bits", "4",
                      "--calib-digest", DIG);
    EXPECT_FLAGS_FAIL(QD_ERR_UNSUPPORTED, "--bits 4: fp8 weights are 8-bit", NULL, NULL,
                      "--method", "fp8", "--format", "none", "--bits", "4");
    EXPECT_FLAGS_FAIL(QD_ERR_UNSUPPORTED, "--bits 8: w4a8-awq has int4 weights", NULL, NULL,
                      "--method", "w4a8-awq", "--format", "modelopt", "--bits", "8",
                      "--calib-digest", DIG);
    EXPECT_FLAGS_FAIL(QD_ERR_UNSUPPORTED, "--bits 8: ModelOpt", "W4A16_AWQ", NULL, "--method",
                      "awq", "--format", "modelopt", "--bits", "8", "--calib-digest", DIG);
    EXPECT_FLAGS_FAIL(QD_ERR_INVALID_ARG, "--bits: expected a positive integer", "got '0'",
                      "leave the key out", "--method", "rtn", "--bits", "0");
    EXPECT_FLAGS_FAIL(QD_ERR_INVALID_ARG, "--bits: expected a positive integer", "got '4x'",
                      NULL, "--bits", "4x");
    EXPECT_FLAGS_FAIL(QD_ERR_INVALID_ARG, "--bits: expected a positive integer",
                      "got '99999999999'", NULL, "--bits", "99999999999");
    /* Every method/format pair a method writes takes its default bits. */
    for (int m = 1; m < QD_SPEC_METHOD_COUNT; m++) {
        for (int f = 1; f < QD_SPEC_FORMAT_COUNT; f++) {
            qd_spec s = {0};
            qd_error err = {0};
            s.method = (qd_spec_method)m;
            s.format = (qd_spec_format)f;
            memcpy(s.calibration.digest, DIG, sizeof DIG);
            qd_spec_defaults(&s);
            if (!qd_spec_needs_calibration(&s)) s.calibration.digest[0] = '\0';
            qd_err rc = qd_spec_validate(&s, NULL, &err);
            QD_CHECK_MSG(rc == QD_OK || rc == QD_ERR_UNSUPPORTED, "%s on %s: %s",
                         qd_spec_method_name(s.method), qd_spec_format_name(s.format), err.msg);
            if (rc != QD_OK) QD_CHECK(strstr(err.msg, "cannot hold method"));
            qd_spec_free(&s);
        }
    }
}

QD_TEST(group_size_errors_and_warnings) {
    EXPECT_FLAGS_FAIL(QD_ERR_INVALID_ARG, "--group-size: expected -1 (per output channel) or a "
                      "positive integer", "got '0'", NULL, "--group-size", "0");
    EXPECT_FLAGS_FAIL(QD_ERR_INVALID_ARG, "--group-size:", "got '-2'", NULL, "--group-size",
                      "-2");
    qd_spec s = {0};
    s.method = QD_SPEC_METHOD_RTN;
    s.format = QD_SPEC_FORMAT_NONE;
    s.group_size = -2;
    EXPECT_SPEC_FAIL(&s, QD_ERR_INVALID_ARG, "spec.group_size -2: must be -1", NULL);
    s.group_size = (1 << 20) + 1;
    EXPECT_SPEC_FAIL(&s, QD_ERR_INVALID_ARG, "spec.group_size 1048577: must be -1", NULL);
    qd_spec_free(&s);
    EXPECT_FLAGS_FAIL(QD_ERR_INVALID_ARG, "--group-size 128: fp8 has no groups",
                      "--fp8-weight-scale", NULL, "--method", "fp8", "--format", "none",
                      "--group-size", "128");
    EXPECT_FLAGS_FAIL(QD_ERR_UNSUPPORTED, "--group-size 128: smoothquant", "must be -1", NULL,
                      "--method", "smoothquant", "--format", "compressed-tensors",
                      "--group-size", "128", "--calib-digest", DIG);
    EXPECT_FLAGS_FAIL(QD_ERR_UNSUPPORTED, "--group-size 32: ModelOpt", "64 or 128", NULL,
                      "--method", "awq", "--format", "modelopt", "--group-size", "32",
                      "--calib-digest", DIG);
    EXPECT_FLAGS_FAIL(QD_ERR_UNSUPPORTED, "--group-size 64: TensorRT-LLM's int4-weight, "
                      "fp8-activation kernels", "only group_size 128", NULL, "--method",
                      "w4a8-awq", "--format", "modelopt", "--group-size", "64", "--calib-digest",
                      DIG);
    EXPECT_FLAGS_FAIL(QD_ERR_UNSUPPORTED, "--group-size 32: DashInfer", NULL, NULL, "--method",
                      "rtn", "--format", "dashinfer", "--group-size", "32");

    /* Outside Marlin's set: allowed, with a warning. */
    qd_spec_warnings w = {0};
    qd_error err = {0};
    QD_CHECK_OK(from_flags(ARGV("--method", "rtn", "--format", "compressed-tensors",
                                "--group-size", "96"),
                           &s, &w, &err),
                &err);
    QD_CHECK_EQ_INT(w.n, 1);
    check_pieces_(w.msg[0], "--group-size 96", "Marlin", NULL, __FILE__, __LINE__);
    qd_spec_free(&s);
    memset(&w, 0, sizeof w);
    QD_CHECK_OK(from_flags(ARGV("--method", "rtn", "--format", "gptq", "--group-size", "64"), &s,
                           &w, &err),
                &err);
    QD_CHECK_EQ_INT(w.n, 0);
    qd_spec_free(&s);
    /* In memory nothing is served: no warning. */
    memset(&w, 0, sizeof w);
    QD_CHECK_OK(from_flags(ARGV("--method", "rtn", "--format", "none", "--group-size", "96"), &s,
                           &w, &err),
                &err);
    QD_CHECK_EQ_INT(w.n, 0);
    qd_spec_free(&s);
}

QD_TEST(symmetric_errors_and_warnings) {
    EXPECT_FLAGS_FAIL(QD_ERR_UNSUPPORTED, "--sym: AutoAWQ GEMM needs zero points", NULL, NULL,
                      "--method", "rtn", "--format", "awq", "--sym");
    EXPECT_FLAGS_FAIL(QD_ERR_UNSUPPORTED, "--asym: ModelOpt", "has_zero_point", NULL, "--method",
                      "awq", "--format", "modelopt", "--asym", "--calib-digest", DIG);
    EXPECT_FLAGS_FAIL(QD_ERR_UNSUPPORTED, "--asym: DashInfer reads GPTQ v1", NULL, NULL,
                      "--method", "gptq", "--format", "dashinfer", "--asym", "--calib-digest",
                      DIG);
    EXPECT_FLAGS_FAIL(QD_ERR_UNSUPPORTED, "--asym: smoothquant", NULL, NULL, "--method",
                      "smoothquant", "--format", "none", "--asym", "--calib-digest", DIG);
    EXPECT_FLAGS_FAIL(QD_ERR_UNSUPPORTED, "--asym: fp8 has no zero points", NULL, NULL,
                      "--method", "fp8", "--format", "none", "--asym");
    EXPECT_FLAGS_FAIL(QD_ERR_UNSUPPORTED, "--asym: ModelOpt's W4A8_AWQ", NULL, NULL, "--method",
                      "w4a8-awq", "--format", "modelopt", "--asym", "--calib-digest", DIG);
    /* The last of --sym/--asym wins. */
    EXPECT_FLAGS_FAIL(QD_ERR_UNSUPPORTED, "--sym:", NULL, NULL, "--method", "rtn", "--format",
                      "awq", "--asym", "--sym");

    /* Asymmetric GPTQ: allowed as gptq_v2, with a warning that says so. */
    qd_spec s = {0};
    qd_spec_warnings w = {0};
    qd_error err = {0};
    QD_CHECK_OK(from_flags(ARGV("--method", "gptq", "--format", "gptq", "--asym",
                                "--calib-digest", DIG),
                           &s, &w, &err),
                &err);
    QD_CHECK_EQ_STR(qd_spec_gptq_checkpoint_format(&s), "gptq_v2");
    QD_CHECK_EQ_INT(w.n, 1);
    check_pieces_(w.msg[0], "--asym", "gptq_v2", "Marlin", __FILE__, __LINE__);
    qd_spec_free(&s);
}

QD_TEST(calibration_errors) {
    EXPECT_FLAGS_FAIL(QD_ERR_INVALID_ARG, "calibration: method awq needs calibration data",
                      "--calib FILE", NULL, "--method", "awq", "--format", "awq");
    EXPECT_FLAGS_FAIL(QD_ERR_INVALID_ARG, "method gptq needs calibration data", NULL, NULL,
                      "--method", "gptq", "--format", "gptq");
    EXPECT_FLAGS_FAIL(QD_ERR_INVALID_ARG, "method smoothquant needs calibration data", NULL,
                      NULL, "--method", "smoothquant", "--format", "modelopt");
    EXPECT_FLAGS_FAIL(QD_ERR_INVALID_ARG, "method w4a8-awq needs calibration data", NULL, NULL,
                      "--method", "w4a8-awq", "--format", "modelopt");
    EXPECT_FLAGS_FAIL(QD_ERR_INVALID_ARG, "fp8 with static activation scales needs calibration",
                      "--fp8-activation-scheme dynamic", NULL, "--method", "fp8", "--format",
                      "compressed-tensors", "--fp8-activation-scheme", "static");
    EXPECT_FLAGS_FAIL(QD_ERR_INVALID_ARG, "--calib 'data.bin': rtn reads no calibration data",
                      NULL, NULL, "--method", "rtn", "--format", "none", "--calib", "data.bin");
    EXPECT_FLAGS_FAIL(QD_ERR_INVALID_ARG, "--calib-rows 5: rtn reads no calibration", NULL, NULL,
                      "--method", "rtn", "--format", "none", "--calib-rows", "5");
    EXPECT_FLAGS_FAIL(QD_ERR_INVALID_ARG, "--calib-digest '" DIG "': fp8 with dynamic", NULL,
                      NULL, "--method", "fp8", "--format", "compressed-tensors", "--calib-digest",
                      DIG);
    EXPECT_FLAGS_FAIL(QD_ERR_INVALID_ARG, "--calib-rows 2000000: must be 1..1048576", NULL, NULL,
                      "--method", "awq", "--format", "awq", "--calib-digest", DIG, "--calib-rows",
                      "2000000");
    EXPECT_FLAGS_FAIL(QD_ERR_INVALID_ARG, "--calib-seq-len 2000000: must be 1..", NULL, NULL,
                      "--method", "awq", "--format", "awq", "--calib-digest", DIG,
                      "--calib-seq-len", "2000000");
    EXPECT_FLAGS_FAIL(QD_ERR_INVALID_ARG, "--calib-digest: expected 64 lowercase hex digits",
                      "got 'ABC'", NULL, "--calib-digest", "ABC");
    EXPECT_FLAGS_FAIL(QD_ERR_INVALID_ARG, "--calib: expected a file path", NULL, NULL,
                      "--calib", "");
    qd_spec s = {0};
    s.method = QD_SPEC_METHOD_AWQ;
    s.format = QD_SPEC_FORMAT_AWQ;
    memcpy(s.calibration.digest, DIG, sizeof DIG);
    s.calibration.digest[3] = 'X';
    EXPECT_SPEC_FAIL(&s, QD_ERR_INVALID_ARG, "spec.calibration.digest '012X",
                     "64 lowercase hex");
    qd_spec_free(&s);
}

QD_TEST(module_list_errors) {
    EXPECT_FLAGS_FAIL(QD_ERR_INVALID_ARG, "--modules-to-not-convert: entry 2 'a b'",
                      "not a module name", NULL, "--method", "rtn", "--format", "none",
                      "--modules-to-not-convert", "lm_head,a b");
    EXPECT_FLAGS_FAIL(QD_ERR_INVALID_ARG, "entry 1 'a..b'", NULL, NULL, "--method", "rtn",
                      "--format", "none", "--modules-to-not-convert", "a..b");
    EXPECT_FLAGS_FAIL(QD_ERR_INVALID_ARG, "entry 1 '.a'", NULL, NULL, "--method", "rtn",
                      "--format", "none", "--modules-to-not-convert", ".a");
    EXPECT_FLAGS_FAIL(QD_ERR_INVALID_ARG, "entry 1 're:.*'", NULL, NULL, "--method", "rtn",
                      "--format", "none", "--modules-to-not-convert", "re:.*");
    EXPECT_FLAGS_FAIL(QD_ERR_INVALID_ARG, "--modules-to-not-convert: empty entry", NULL, NULL,
                      "--modules-to-not-convert", "a,,b");
}

QD_TEST(parameters_of_another_method_are_refused) {
    EXPECT_FLAGS_FAIL(QD_ERR_INVALID_ARG, "--damp-percent 0.05: a parameter of method gptq",
                      "the method is awq", NULL, "--method", "awq", "--format", "awq",
                      "--calib-digest", DIG, "--damp-percent", "0.05");
    EXPECT_FLAGS_FAIL(QD_ERR_INVALID_ARG, "--n-grid 10: a parameter of method awq or w4a8-awq",
                      "the method is gptq", NULL, "--method", "gptq", "--format", "gptq",
                      "--calib-digest", DIG, "--n-grid", "10");
    EXPECT_FLAGS_FAIL(QD_ERR_INVALID_ARG, "--alpha 0.3: a parameter of method smoothquant", NULL,
                      NULL, "--method", "rtn", "--format", "none", "--alpha", "0.3");
    EXPECT_FLAGS_FAIL(QD_ERR_INVALID_ARG, "--fp8-weight-scale tensor: a parameter of method fp8 "
                      "or w4a8-awq", NULL, NULL, "--method", "gptq", "--format", "gptq",
                      "--calib-digest", DIG, "--fp8-weight-scale", "tensor");
    EXPECT_FLAGS_FAIL(QD_ERR_INVALID_ARG, "--act-order: a parameter of method gptq", NULL, NULL,
                      "--method", "awq", "--format", "awq", "--calib-digest", DIG,
                      "--act-order");
    /* Written as false it is still given: the key does not belong there. */
    EXPECT_FLAGS_FAIL(QD_ERR_INVALID_ARG, "--no-mse: a parameter of method gptq", NULL, NULL,
                      "--method", "rtn", "--format", "none", "--no-mse");
    EXPECT_FLAGS_FAIL(QD_ERR_INVALID_ARG, "--no-apply-clip: a parameter of method awq", NULL,
                      NULL, "--method", "smoothquant", "--format", "modelopt", "--calib-digest",
                      DIG, "--no-apply-clip");
}

QD_TEST(parameter_range_errors) {
    EXPECT_FLAGS_FAIL(QD_ERR_INVALID_ARG, "--n-grid 5000: must be 1..1000", NULL, NULL,
                      "--method", "awq", "--format", "awq", "--calib-digest", DIG, "--n-grid",
                      "5000");
    EXPECT_FLAGS_FAIL(QD_ERR_INVALID_ARG, "--clip-n-grid 1001: must be 1..1000", NULL, NULL,
                      "--method", "awq", "--format", "awq", "--calib-digest", DIG,
                      "--clip-n-grid", "1001");
    EXPECT_FLAGS_FAIL(QD_ERR_INVALID_ARG, "--max-shrink 1.5: must be above 0 and below 1", NULL,
                      NULL, "--method", "awq", "--format", "awq", "--calib-digest", DIG,
                      "--max-shrink", "1.5");
    EXPECT_FLAGS_FAIL(QD_ERR_INVALID_ARG, "--max-shrink 0.01: with awq.clip_n_grid 20 (default)",
                      "--no-apply-clip", NULL, "--method", "awq", "--format", "awq",
                      "--calib-digest", DIG, "--max-shrink", "0.01");
    EXPECT_FLAGS_FAIL(QD_ERR_INVALID_ARG, "--n-sample-tokens 16777217: must be", NULL, NULL,
                      "--method", "awq", "--format", "awq", "--calib-digest", DIG,
                      "--n-sample-tokens", "16777217");
    EXPECT_FLAGS_FAIL(QD_ERR_INVALID_ARG, "--damp-percent 1: must be above 0 and below 1", NULL,
                      NULL, "--method", "gptq", "--format", "gptq", "--calib-digest", DIG,
                      "--damp-percent", "1");
    EXPECT_FLAGS_FAIL(QD_ERR_INVALID_ARG, "--damp-percent -0.1: must be above 0", NULL, NULL,
                      "--method", "gptq", "--format", "gptq", "--calib-digest", DIG,
                      "--damp-percent", "-0.1");
    EXPECT_FLAGS_FAIL(QD_ERR_INVALID_ARG, "--damp-percent: expected a number above 0",
                      "got '0'", NULL, "--damp-percent", "0");
    EXPECT_FLAGS_FAIL(QD_ERR_INVALID_ARG, "--damp-percent: expected a number", "got 'nan'", NULL,
                      "--damp-percent", "nan");
    EXPECT_FLAGS_FAIL(QD_ERR_INVALID_ARG, "--alpha: expected a number", "got '0x1p-1'", NULL,
                      "--alpha", "0x1p-1");
    EXPECT_FLAGS_FAIL(QD_ERR_INVALID_ARG, "--block-size 100000: must be 1..65536", NULL, NULL,
                      "--method", "gptq", "--format", "gptq", "--calib-digest", DIG,
                      "--block-size", "100000");
    EXPECT_FLAGS_FAIL(QD_ERR_INVALID_ARG, "--alpha 1.5: must be in [0, 1]", NULL, NULL,
                      "--method", "smoothquant", "--format", "modelopt", "--calib-digest", DIG,
                      "--alpha", "1.5");
    /* alpha 0 is a value, not "unset". */
    qd_spec s = {0};
    resolve_flags_ok(ARGV("--method", "smoothquant", "--format", "modelopt", "--calib-digest",
                          DIG, "--alpha", "0"),
                     &s);
    QD_CHECK(s.smoothquant.has_alpha && s.smoothquant.alpha == 0);
    qd_spec_free(&s);
}

QD_TEST(combination_errors) {
    EXPECT_FLAGS_FAIL(QD_ERR_UNSUPPORTED, "--act-order: DashInfer refuses desc_act",
                      "--static-groups", NULL, "--method", "gptq", "--format", "dashinfer",
                      "--calib-digest", DIG, "--act-order");
    EXPECT_FLAGS_FAIL(QD_ERR_UNSUPPORTED, "--act-order: AutoAWQ GEMM has no group index", NULL,
                      NULL, "--method", "gptq", "--format", "awq", "--calib-digest", DIG,
                      "--act-order");
    EXPECT_FLAGS_FAIL(QD_ERR_UNSUPPORTED,
                      "--act-order: compressed-tensors no longer loads actorder \"group\"", NULL,
                      NULL, "--method", "gptq", "--format", "compressed-tensors",
                      "--calib-digest", DIG, "--act-order");
    qd_spec s = {0};
    resolve_flags_ok(ARGV("--method", "gptq", "--format", "dashinfer", "--calib-digest", DIG,
                          "--act-order", "--static-groups"),
                     &s);
    qd_spec_free(&s);
    resolve_flags_ok(ARGV("--method", "gptq", "--format", "compressed-tensors", "--calib-digest",
                          DIG, "--act-order", "--static-groups"),
                     &s);
    qd_spec_free(&s);
    resolve_flags_ok(ARGV("--method", "gptq", "--format", "compressed-tensors", "--calib-digest",
                          DIG, "--act-order", "--group-size", "-1"),
                     &s);
    qd_spec_free(&s);
    resolve_flags_ok(ARGV("--method", "gptq", "--format", "gptq", "--calib-digest", DIG,
                          "--act-order"),
                     &s);
    qd_spec_free(&s);
    EXPECT_FLAGS_FAIL(QD_ERR_UNSUPPORTED, "--fp8-weight-scale channel: w4a8-awq", NULL, NULL,
                      "--method", "w4a8-awq", "--format", "modelopt", "--calib-digest", DIG,
                      "--fp8-weight-scale", "channel", "--fp8-activation-scheme", "static");
    EXPECT_FLAGS_FAIL(QD_ERR_UNSUPPORTED, "--fp8-activation-scheme dynamic: w4a8-awq", NULL,
                      NULL, "--method", "w4a8-awq", "--format", "modelopt", "--calib-digest",
                      DIG, "--fp8-activation-scheme", "dynamic");
    /* compressed-tensors holds any combination. */
    resolve_flags_ok(ARGV("--method", "fp8", "--format", "compressed-tensors",
                          "--fp8-weight-scale", "tensor", "--fp8-activation-scheme", "dynamic"),
                     &s);
    qd_spec_free(&s);
}

QD_TEST(validate_without_defaults_names_the_unset_field) {
    qd_spec s = {0};
    qd_error err = {0};
    s.method = QD_SPEC_METHOD_RTN;
    s.format = QD_SPEC_FORMAT_NONE;
    QD_CHECK_EQ_INT(qd_spec_validate(&s, NULL, &err), QD_ERR_INVALID_ARG);
    check_pieces_(err.msg, "--bits (bits): not set", NULL, NULL, __FILE__, __LINE__);
    qd_spec_free(&s);
}

/* ---- messages name the field as it was written ----------------------------------------------- */

QD_TEST(messages_follow_the_origin) {
    qd_spec s = {0};
    qd_error err = {0};
    /* YAML: file, line, key. */
    QD_CHECK_OK(from_yaml("method: rtn\nformat: awq\n\nsymmetric: true\n", &s, &err), &err);
    QD_CHECK_EQ_INT(qd_spec_resolve(&s, NULL, &err), QD_ERR_UNSUPPORTED);
    check_pieces_(err.msg, "test.yaml:4: symmetric true: AutoAWQ", NULL, NULL, __FILE__,
                  __LINE__);
    qd_spec_free(&s);
    /* Code: spec.<key>. */
    qd_error_clear(&err);
    s.method = QD_SPEC_METHOD_RTN;
    s.format = QD_SPEC_FORMAT_AWQ;
    s.symmetric = QD_SPEC_TRUE;
    QD_CHECK_EQ_INT(qd_spec_resolve(&s, NULL, &err), QD_ERR_UNSUPPORTED);
    check_pieces_(err.msg, "spec.symmetric true: AutoAWQ", NULL, NULL, __FILE__, __LINE__);
    qd_spec_free(&s);
    /* A default at fault: key, value, "(default)". */
    qd_error_clear(&err);
    s.method = QD_SPEC_METHOD_GPTQ;
    s.format = QD_SPEC_FORMAT_MODELOPT;
    QD_CHECK_EQ_INT(qd_spec_resolve(&s, NULL, &err), QD_ERR_UNSUPPORTED);
    check_pieces_(err.msg, "spec.format modelopt: cannot hold method gptq", NULL, NULL,
                  __FILE__, __LINE__);
    qd_spec_free(&s);
    qd_error_clear(&err);
    s.method = QD_SPEC_METHOD_AWQ;
    s.format = QD_SPEC_FORMAT_AWQ;
    memcpy(s.calibration.digest, DIG, sizeof DIG);
    s.awq.clip_n_grid = 1;
    QD_CHECK_EQ_INT(qd_spec_resolve(&s, NULL, &err), QD_ERR_INVALID_ARG);
    check_pieces_(err.msg, "awq.max_shrink 0.5 (default): with spec.awq.clip_n_grid 1", NULL,
                  NULL, __FILE__, __LINE__);
    qd_spec_free(&s);
}

/* ---- modules and the model ------------------------------------------------------------------- */

QD_TEST(module_patterns_match_whole_parts) {
    qd_spec s = {0};
    qd_error err = {0};
    QD_CHECK_OK(from_yaml("modules_to_not_convert: [down_proj, model.layers.1, layers.2.mlp, "
                          "lm_head]\n",
                          &s, &err),
                &err);
    QD_CHECK(qd_spec_module_excluded(&s, "model.layers.0.mlp.down_proj"));
    QD_CHECK(qd_spec_module_excluded(&s, "model.layers.1.self_attn.q_proj"));
    QD_CHECK(!qd_spec_module_excluded(&s, "model.layers.10.self_attn.q_proj"));
    QD_CHECK(!qd_spec_module_excluded(&s, "model.layers.11.mlp.up_proj"));
    QD_CHECK(qd_spec_module_excluded(&s, "model.layers.2.mlp.up_proj"));
    QD_CHECK(!qd_spec_module_excluded(&s, "model.layers.2.self_attn.o_proj"));
    QD_CHECK(qd_spec_module_excluded(&s, "lm_head"));
    QD_CHECK(!qd_spec_module_excluded(&s, "model.layers.0.mlp.up_proj"));
    QD_CHECK(!qd_spec_module_excluded(&s, "model.layers.0.mlp.xdown_proj"));
    QD_CHECK(!qd_spec_module_excluded(&s, "model.layers.0.mlp.down_proj_x"));
    QD_CHECK(!qd_spec_module_excluded(&s, "model.layers.0.mlp.down"));
    qd_spec_free(&s);
}

QD_TEST(check_model_group_divides_and_packing_fits) {
    qd_spec s = {0};
    qd_error err = {0};
    const qd_spec_linear ok_linears[] = {
        {"model.layers.0.self_attn.q_proj", 256, 256},
        {"model.layers.0.mlp.down_proj", 384, 256},
    };
    const qd_spec_linear bad_k[] = {
        {"model.layers.0.self_attn.q_proj", 288, 288},
        {"model.layers.0.mlp.down_proj", 352, 288},
    };
    /* group 96 divides 288 but not 352; the message names the flag, K and the layer. */
    QD_CHECK_OK(from_flags(ARGV("--method", "rtn", "--format", "compressed-tensors",
                                "--group-size", "96"),
                           &s, NULL, &err),
                &err);
    QD_CHECK_EQ_INT(qd_spec_check_model(&s, bad_k, 2, &err), QD_ERR_INVALID_ARG);
    QD_CHECK_EQ_STR(err.msg, "--group-size 96: does not divide in_features 352 of "
                             "model.layers.0.mlp.down_proj");
    /* Excluded linears are not checked. */
    qd_error_clear(&err);
    char *names[] = {"down_proj"};
    s.modules_to_not_convert = names;
    s.n_modules_to_not_convert = 1;
    QD_CHECK_OK(qd_spec_check_model(&s, bad_k, 2, &err), &err);
    s.modules_to_not_convert = NULL;
    s.n_modules_to_not_convert = 0;
    qd_spec_free(&s);

    /* Per channel divides everything; 128 divides 256 and 384. */
    QD_CHECK_OK(from_flags(ARGV("--method", "rtn", "--format", "none", "--group-size", "-1"), &s,
                           NULL, &err),
                &err);
    QD_CHECK_OK(qd_spec_check_model(&s, bad_k, 2, &err), &err);
    qd_spec_free(&s);
    QD_CHECK_OK(from_flags(ARGV("--method", "rtn", "--format", "awq"), &s, NULL, &err), &err);
    QD_CHECK_OK(qd_spec_check_model(&s, ok_linears, 2, &err), &err);
    /* AWQ packs 8 output channels per word. */
    const qd_spec_linear n100[] = {{"model.layers.3.self_attn.o_proj", 256, 100}};
    QD_CHECK_EQ_INT(qd_spec_check_model(&s, n100, 1, &err), QD_ERR_INVALID_ARG);
    check_pieces_(err.msg, "--format awq: out_features 100 of model.layers.3.self_attn.o_proj",
                  "multiple of 8", NULL, __FILE__, __LINE__);
    qd_spec_free(&s);
    /* A broken shape. */
    qd_error_clear(&err);
    QD_CHECK_OK(from_flags(ARGV("--method", "rtn", "--format", "none"), &s, NULL, &err), &err);
    const qd_spec_linear zero[] = {{"x.q_proj", 0, 8}};
    QD_CHECK_EQ_INT(qd_spec_check_model(&s, zero, 1, &err), QD_ERR_INVALID_ARG);
    check_pieces_(err.msg, "x.q_proj has in_features 0", NULL, NULL, __FILE__, __LINE__);
    qd_spec_free(&s);
    /* GPTQ 8-bit packs 4 values per word along K and along N (qzeros). */
    qd_error_clear(&err);
    QD_CHECK_OK(from_flags(ARGV("--method", "gptq", "--format", "gptq", "--bits", "8",
                                "--calib-digest", DIG),
                           &s, NULL, &err),
                &err);
    const qd_spec_linear k4[] = {{"a.up_proj", 36, 12}};
    const qd_spec_linear k_odd[] = {{"a.up_proj", 36, 10}};
    QD_CHECK_OK(qd_spec_check_model(&s, k4, 1, &err), &err);
    QD_CHECK_EQ_INT(qd_spec_check_model(&s, k_odd, 1, &err), QD_ERR_INVALID_ARG);
    check_pieces_(err.msg, "--format gptq", "out_features 10", "4 8-bit values", __FILE__,
                  __LINE__);
    qd_spec_free(&s);
    /* ModelOpt int4 pairs output rows. */
    qd_error_clear(&err);
    QD_CHECK_OK(from_flags(ARGV("--method", "awq", "--format", "modelopt", "--calib-digest", DIG),
                           &s, NULL, &err),
                &err);
    const qd_spec_linear n_odd[] = {{"a.o_proj", 256, 7}};
    QD_CHECK_EQ_INT(qd_spec_check_model(&s, n_odd, 1, &err), QD_ERR_INVALID_ARG);
    check_pieces_(err.msg, "out_features 7 of a.o_proj is odd", NULL, NULL, __FILE__, __LINE__);
    qd_spec_free(&s);
    /* FP8 has no groups and no packing. */
    qd_error_clear(&err);
    QD_CHECK_OK(from_flags(ARGV("--method", "fp8", "--format", "compressed-tensors"), &s, NULL,
                           &err),
                &err);
    QD_CHECK_OK(qd_spec_check_model(&s, n_odd, 1, &err), &err);
    qd_spec_free(&s);
}

/* ---- canonical text and digest --------------------------------------------------------------- */

/* The canonical text of the default AWQ spec. If this test fails, every cache key changed:
 * update the text only on purpose (and say so in the change). The digest is the sha256 of the
 * text, computed with Python's hashlib. */
static const char golden_awq[] =
    "{\"awq\":{\"apply_clip\":true,\"clip_n_grid\":20,\"duo_scaling\":true,\"max_shrink\":0.5,"
    "\"n_grid\":20,\"n_sample_tokens\":512},\"bits\":4,\"calibration\":{\"digest\":\"" DIG "\","
    "\"rows\":128,\"seq_len\":512},\"format\":\"awq\",\"group_size\":128,\"method\":\"awq\","
    "\"modules_to_not_convert\":[],\"numerics_version\":2,\"scale_dtype\":\"f16\","
    "\"symmetric\":false}";
static const char golden_awq_digest[] =
    "99311906ec1da377b7a780af8ed9f53d13a3d8a94cddd15130f22a8801b85e93";

QD_TEST(golden_canonical_text_of_the_default_awq_spec) {
    QD_CHECK_EQ_INT(QD_NUMERICS_VERSION, 2);
    char *text = canonical_of_yaml("method: awq\nformat: awq\ncalibration:\n  digest: " DIG "\n");
    QD_REQUIRE(text);
    QD_CHECK_EQ_STR(text, golden_awq);
    free(text);
    char hex[QD_SPEC_DIGEST_HEX];
    QD_REQUIRE(yaml_digest("method: awq\nformat: awq\ncalibration: {digest: " DIG "}\n", hex));
    QD_CHECK_EQ_STR(hex, golden_awq_digest);
}

QD_TEST(golden_canonical_text_of_gptq_and_fp8) {
    char *text = canonical_of_yaml("method: gptq\nformat: gptq\ncalibration.digest: " DIG "\n"
                                   "modules_to_not_convert: [model.layers.0.mlp.down_proj, "
                                   "lm_head, lm_head]\n");
    QD_REQUIRE(text);
    QD_CHECK_EQ_STR(text,
                    "{\"bits\":4,\"calibration\":{\"digest\":\"" DIG "\",\"rows\":128,"
                    "\"seq_len\":2048},\"format\":\"gptq\",\"gptq\":{\"act_order\":false,"
                    "\"block_size\":128,\"damp_percent\":0.01,\"mse\":false,"
                    "\"static_groups\":false,\"true_sequential\":true},\"group_size\":128,"
                    "\"method\":\"gptq\",\"modules_to_not_convert\":[\"lm_head\","
                    "\"model.layers.0.mlp.down_proj\"],\"numerics_version\":2,"
                    "\"scale_dtype\":\"f16\",\"symmetric\":true}");
    free(text);
    text = canonical_of_yaml("method: fp8\nformat: compressed-tensors\n");
    QD_REQUIRE(text);
    QD_CHECK_EQ_STR(text, "{\"bits\":8,\"format\":\"compressed-tensors\",\"fp8\":{"
                          "\"activation_scheme\":\"dynamic\",\"weight_scale\":\"channel\"},"
                          "\"method\":\"fp8\",\"modules_to_not_convert\":[],"
                          "\"numerics_version\":2,\"scale_dtype\":\"model\",\"symmetric\":true}");
    free(text);
    text = canonical_of_yaml("method: smoothquant\nformat: modelopt\ncalibration.digest: " DIG
                             "\nsmoothquant.alpha: 0.85\n");
    QD_REQUIRE(text);
    QD_CHECK(strstr(text, "\"smoothquant\":{\"alpha\":0.85}"));
    QD_CHECK(strstr(text, "\"group_size\":-1"));
    free(text);
}

/* Keys at every level of an object come in strictly increasing byte order. A tiny scanner:
 * the canonical text has no spaces and no escapes. */
static bool keys_sorted(const char *t) {
    char last[16][64];
    int depth = -1;
    bool in_array[16] = {false};
    for (const char *p = t; *p; p++) {
        if (*p == '{') {
            if (++depth >= 16) return false;
            last[depth][0] = '\0';
            in_array[depth] = false;
        } else if (*p == '[') {
            if (++depth >= 16) return false;
            in_array[depth] = true;
        } else if (*p == '}' || *p == ']') {
            depth--;
        } else if (*p == '"') {
            const char *end = strchr(p + 1, '"');
            if (!end) return false;
            bool is_key = end[1] == ':' && depth >= 0 && !in_array[depth];
            if (is_key) {
                char k[64];
                snprintf(k, sizeof k, "%.*s", (int)(end - p - 1), p + 1);
                if (last[depth][0] && strcmp(last[depth], k) >= 0) return false;
                snprintf(last[depth], sizeof last[depth], "%s", k);
            }
            p = end;
        }
    }
    return depth == -1;
}

QD_TEST(canonical_text_is_sorted_json_with_the_method_fields_only) {
    static const struct {
        const char *yaml;
        const char *must[4];
        const char *must_not[4];
    } cases[] = {
        {"method: awq\nformat: awq\ncalibration.digest: " DIG "\n",
         {"\"awq\":{", "\"calibration\":{", NULL},
         {"\"gptq\"", "\"fp8\"", "\"smoothquant\"", NULL}},
        {"method: awq\nformat: awq\ncalibration.digest: " DIG "\nawq.apply_clip: false\n",
         {"\"awq\":{\"apply_clip\":false,\"duo_scaling\":true,\"n_grid\":20}", NULL},
         {"max_shrink", "clip_n_grid", NULL}},
        {"method: w4a8-awq\nformat: modelopt\ncalibration.digest: " DIG "\n",
         {"\"awq\":{", "\"fp8\":{\"activation_scheme\":\"static\",\"weight_scale\":\"tensor\"}",
          "\"scale_dtype\":\"f32\"", NULL},
         {"\"gptq\"", NULL}},
        {"method: rtn\nformat: dashinfer\n",
         {"\"method\":\"rtn\"", "\"group_size\":128", NULL},
         {"calibration", "\"awq\"", NULL}},
        {"method: fp8\nformat: compressed-tensors\nfp8.activation_scheme: static\n"
         "calibration.digest: " DIG "\n",
         {"\"calibration\":{", "\"weight_scale\":\"tensor\"", NULL},
         {"group_size", NULL}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *text = canonical_of_yaml(cases[i].yaml);
        QD_REQUIRE(text);
        QD_CHECK_MSG(keys_sorted(text), "keys not sorted: %s", text);
        json_error_t je;
        json_t *j = json_loads(text, 0, &je);
        QD_CHECK_MSG(j != NULL, "not JSON: %s (%s)", text, je.text);
        json_decref(j);
        QD_CHECK(strchr(text, ' ') == NULL && strchr(text, '\n') == NULL);
        for (int k = 0; cases[i].must[k]; k++)
            QD_CHECK_MSG(strstr(text, cases[i].must[k]), "%s lacks %s", text, cases[i].must[k]);
        for (int k = 0; cases[i].must_not[k]; k++)
            QD_CHECK_MSG(!strstr(text, cases[i].must_not[k]), "%s has %s", text,
                         cases[i].must_not[k]);
        QD_CHECK(strstr(text, "\"numerics_version\":2,"));
        free(text);
    }
    QD_CHECK(!keys_sorted("{\"b\":1,\"a\":2}")); /* the scanner can fail */
}

QD_TEST(equivalent_specs_have_equal_digests) {
    char a[QD_SPEC_DIGEST_HEX], b[QD_SPEC_DIGEST_HEX];
    /* Every default spelled out, nested or dotted, in another order. */
    QD_REQUIRE(yaml_digest("method: awq\nformat: awq\ncalibration: {digest: " DIG "}\n", a));
    QD_REQUIRE(yaml_digest("format: awq\nawq:\n  n_sample_tokens: 512\n  clip_n_grid: 20\n"
                           "  max_shrink: 0.50\n  apply_clip: true\n  n_grid: 20\n"
                           "  duo_scaling: true\nsymmetric: false\ngroup_size: 128\nbits: 4\n"
                           "calibration.rows: 128\ncalibration.seq_len: 512\n"
                           "calibration.digest: " DIG "\nmodules_to_not_convert: []\n"
                           "method: awq\n",
                           b));
    QD_CHECK_EQ_STR(a, b);
    QD_CHECK_EQ_STR(a, golden_awq_digest);

    /* The same spec from flags and from code. */
    qd_spec s = {0};
    qd_error err = {0};
    char c[QD_SPEC_DIGEST_HEX];
    int rest[8], n_rest;
    const char *const *argv = ARGV("--method", "awq", "--format=awq", "--calib-digest", DIG);
    QD_CHECK_OK(qd_spec_parse_args(argv_count(argv), (char *const *)argv, &s, rest, &n_rest,
                                   &err),
                &err);
    QD_CHECK_OK(qd_spec_digest(&s, c, &err), &err);
    QD_CHECK_EQ_STR(c, a);
    qd_spec_free(&s);
    s.method = QD_SPEC_METHOD_AWQ;
    s.format = QD_SPEC_FORMAT_AWQ;
    memcpy(s.calibration.digest, DIG, sizeof DIG);
    QD_CHECK_OK(qd_spec_digest(&s, c, &err), &err);
    QD_CHECK_EQ_STR(c, a);
    /* The digest did not resolve the caller's spec. */
    QD_CHECK_EQ_INT(s.bits, 0);
    qd_spec_free(&s);

    /* A set of modules: order and repeats do not matter. */
    QD_REQUIRE(yaml_digest("method: rtn\nformat: none\nmodules_to_not_convert: [b, a, a]\n", a));
    QD_REQUIRE(yaml_digest("method: rtn\nformat: none\nmodules_to_not_convert: [a, b]\n", b));
    QD_CHECK_EQ_STR(a, b);
    /* The clip parameters without the clip search mean nothing. */
    QD_REQUIRE(yaml_digest("method: awq\nformat: awq\ncalibration.digest: " DIG "\n"
                           "awq: {apply_clip: false, max_shrink: 0.3}\n",
                           a));
    QD_REQUIRE(yaml_digest("method: awq\nformat: awq\ncalibration.digest: " DIG "\n"
                           "awq: {apply_clip: false, clip_n_grid: 7}\n",
                           b));
    QD_CHECK_EQ_STR(a, b);
    /* Numbers are values, not text. */
    QD_REQUIRE(yaml_digest("method: gptq\nformat: gptq\ncalibration.digest: " DIG "\n"
                           "gptq.damp_percent: 1e-2\n",
                           a));
    QD_REQUIRE(yaml_digest("method: gptq\nformat: gptq\ncalibration.digest: " DIG "\n"
                           "gptq.damp_percent: 0.010\n",
                           b));
    QD_CHECK_EQ_STR(a, b);
    /* The path is not in the digest: the data's digest is. */
    QD_REQUIRE(yaml_digest("method: awq\nformat: awq\ncalibration: {digest: " DIG
                           ", path: /a/data.bin}\n",
                           a));
    QD_REQUIRE(yaml_digest("method: awq\nformat: awq\ncalibration: {digest: " DIG
                           ", path: /b/other.bin}\n",
                           b));
    QD_CHECK_EQ_STR(a, b);
}

QD_TEST(every_field_changes_the_digest) {
#define AWQ_BASE "method: awq\nformat: awq\ncalibration.digest: " DIG "\n"
#define GPTQ_BASE "method: gptq\nformat: gptq\ncalibration.digest: " DIG "\n"
#define SQ_BASE "method: smoothquant\nformat: modelopt\ncalibration.digest: " DIG "\n"
#define RTN_BASE "method: rtn\nformat: gptq\n"
#define FP8_BASE "method: fp8\nformat: compressed-tensors\n"
    static const struct {
        qd_spec_field field;
        const char *a, *b;
    } cases[] = {
        {QD_SPEC_F_METHOD, "method: rtn\nformat: none\n", "method: fp8\nformat: none\n"},
        {QD_SPEC_F_FORMAT, RTN_BASE, "method: rtn\nformat: dashinfer\n"},
        {QD_SPEC_F_BITS, RTN_BASE "group_size: 128\n", RTN_BASE "group_size: 128\nbits: 8\n"},
        {QD_SPEC_F_GROUP_SIZE, RTN_BASE, RTN_BASE "group_size: 64\n"},
        {QD_SPEC_F_SYMMETRIC, "method: rtn\nformat: none\n",
         "method: rtn\nformat: none\nsymmetric: false\n"},
        {QD_SPEC_F_CALIB_DIGEST, AWQ_BASE,
         "method: awq\nformat: awq\ncalibration.digest: " DIG2 "\n"},
        {QD_SPEC_F_CALIB_ROWS, AWQ_BASE, AWQ_BASE "calibration.rows: 64\n"},
        {QD_SPEC_F_CALIB_SEQ_LEN, AWQ_BASE, AWQ_BASE "calibration.seq_len: 256\n"},
        {QD_SPEC_F_MODULES_TO_NOT_CONVERT, AWQ_BASE, AWQ_BASE "modules_to_not_convert: [x]\n"},
        {QD_SPEC_F_AWQ_DUO_SCALING, AWQ_BASE, AWQ_BASE "awq.duo_scaling: false\n"},
        {QD_SPEC_F_AWQ_N_GRID, AWQ_BASE, AWQ_BASE "awq.n_grid: 10\n"},
        {QD_SPEC_F_AWQ_APPLY_CLIP, AWQ_BASE, AWQ_BASE "awq.apply_clip: false\n"},
        {QD_SPEC_F_AWQ_MAX_SHRINK, AWQ_BASE, AWQ_BASE "awq.max_shrink: 0.4\n"},
        {QD_SPEC_F_AWQ_CLIP_N_GRID, AWQ_BASE, AWQ_BASE "awq.clip_n_grid: 10\n"},
        {QD_SPEC_F_AWQ_N_SAMPLE_TOKENS, AWQ_BASE, AWQ_BASE "awq.n_sample_tokens: 256\n"},
        {QD_SPEC_F_GPTQ_DAMP_PERCENT, GPTQ_BASE, GPTQ_BASE "gptq.damp_percent: 0.05\n"},
        {QD_SPEC_F_GPTQ_ACT_ORDER, GPTQ_BASE, GPTQ_BASE "gptq.act_order: true\n"},
        {QD_SPEC_F_GPTQ_STATIC_GROUPS, GPTQ_BASE, GPTQ_BASE "gptq.static_groups: true\n"},
        {QD_SPEC_F_GPTQ_TRUE_SEQUENTIAL, GPTQ_BASE, GPTQ_BASE "gptq.true_sequential: false\n"},
        {QD_SPEC_F_GPTQ_BLOCK_SIZE, GPTQ_BASE, GPTQ_BASE "gptq.block_size: 64\n"},
        {QD_SPEC_F_GPTQ_MSE, GPTQ_BASE, GPTQ_BASE "gptq.mse: true\n"},
        {QD_SPEC_F_SMOOTHQUANT_ALPHA, SQ_BASE, SQ_BASE "smoothquant.alpha: 0.8\n"},
        {QD_SPEC_F_FP8_WEIGHT_SCALE, FP8_BASE,
         FP8_BASE "fp8: {weight_scale: tensor, activation_scheme: dynamic}\n"},
        {QD_SPEC_F_FP8_ACTIVATION_SCHEME, FP8_BASE,
         FP8_BASE "fp8: {weight_scale: channel, activation_scheme: static}\n"
                  "calibration.digest: " DIG "\n"},
    };
    bool covered[QD_SPEC_FIELD_COUNT] = {false};
    covered[QD_SPEC_F_CALIB_PATH] = true; /* by design: the data's digest stands for it */
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char a[QD_SPEC_DIGEST_HEX], b[QD_SPEC_DIGEST_HEX];
        covered[cases[i].field] = true;
        QD_REQUIRE(yaml_digest(cases[i].a, a));
        QD_REQUIRE(yaml_digest(cases[i].b, b));
        QD_CHECK_MSG(strcmp(a, b) != 0, "changing %s left the digest as it was",
                     qd_spec_key_at(cases[i].field)->name);
        /* And the field really is set in the changed spec (not an accident of defaults). */
        qd_spec s = {0};
        qd_error err = {0};
        QD_CHECK_OK(from_yaml(cases[i].b, &s, &err), &err);
        QD_CHECK_EQ_INT(s.source[cases[i].field].origin, QD_SPEC_FROM_YAML);
        qd_spec_free(&s);
    }
    for (size_t f = 0; f < QD_SPEC_FIELD_COUNT; f++)
        QD_CHECK_MSG(covered[f], "no digest case for %s", qd_spec_key_at(f)->name);
#undef AWQ_BASE
#undef GPTQ_BASE
#undef SQ_BASE
#undef RTN_BASE
#undef FP8_BASE
}

QD_TEST(digest_needs_the_calibration_digest) {
    qd_spec s = {0};
    qd_error err = {0};
    char hex[QD_SPEC_DIGEST_HEX], *text = NULL;
    QD_CHECK_OK(from_yaml("method: awq\nformat: awq\ncalibration.path: /data/calib.bin\n", &s,
                          &err),
                &err);
    QD_CHECK_OK(qd_spec_resolve(&s, NULL, &err), &err); /* valid: the data is named */
    QD_CHECK_EQ_INT(qd_spec_digest(&s, hex, &err), QD_ERR_PRECONDITION);
    check_pieces_(err.msg, "calibration", "qd_spec_hash_calibration", NULL, __FILE__, __LINE__);
    qd_error_clear(&err);
    QD_CHECK_EQ_INT(qd_spec_canonical(&s, &text, NULL, &err), QD_ERR_PRECONDITION);
    QD_CHECK(text == NULL);
    qd_spec_free(&s);
    /* An invalid spec has no digest. */
    qd_error_clear(&err);
    QD_CHECK_OK(from_yaml("method: rtn\nformat: awq\nsymmetric: true\n", &s, &err), &err);
    QD_CHECK_EQ_INT(qd_spec_digest(&s, hex, &err), QD_ERR_UNSUPPORTED);
    qd_spec_free(&s);
}

QD_TEST(calibration_file_digest_is_the_bundle_digest) {
    char path[512], dir_path[512];
    QD_REQUIRE(tmp_dir()[0]);
    QD_REQUIRE(write_tmp("calib.bin", "hello\n", path, sizeof path));
    qd_spec s = {0};
    qd_error err = {0};
    QD_CHECK_OK(from_flags(ARGV("--method", "awq", "--format", "awq", "--calib", path), &s, NULL,
                           &err),
                &err);
    QD_CHECK_OK(qd_spec_hash_calibration(&s, &err), &err);
    /* sha256 of "<sha256(hello\n)>  6  calib.bin\n" (proto/quantd.proto's manifest rule),
     * computed with Python's hashlib. */
    QD_CHECK_EQ_STR(s.calibration.digest,
                    "7222e1b5a09ddd188de0311f9f6bdf17b748b42920b764a6d068273c2e258fc2");
    /* Idempotent: the digest now set matches. */
    QD_CHECK_OK(qd_spec_hash_calibration(&s, &err), &err);
    char hex[QD_SPEC_DIGEST_HEX];
    QD_CHECK_OK(qd_spec_digest(&s, hex, &err), &err);
    /* A digest that does not match the file. */
    memcpy(s.calibration.digest, DIG, sizeof DIG);
    s.source[QD_SPEC_F_CALIB_DIGEST].origin = QD_SPEC_FROM_FLAG;
    QD_CHECK_EQ_INT(qd_spec_hash_calibration(&s, &err), QD_ERR_INVALID_ARG);
    check_pieces_(err.msg, "--calib-digest '" DIG "': does not match --calib", NULL, NULL,
                  __FILE__, __LINE__);
    qd_spec_free(&s);
    /* Missing file, a directory. */
    qd_error_clear(&err);
    s.calibration.path = strdup("/nonexistent/quantd/calib.bin");
    QD_CHECK_EQ_INT(qd_spec_hash_calibration(&s, &err), QD_ERR_NOT_FOUND);
    check_pieces_(err.msg, "--calib '/nonexistent/quantd/calib.bin'", NULL, NULL, __FILE__,
                  __LINE__);
    qd_spec_free(&s);
    qd_error_clear(&err);
    snprintf(dir_path, sizeof dir_path, "%s", tmp_dir());
    s.calibration.path = strdup(dir_path);
    QD_CHECK_EQ_INT(qd_spec_hash_calibration(&s, &err), QD_ERR_INVALID_ARG);
    check_pieces_(err.msg, "not a regular file", NULL, NULL, __FILE__, __LINE__);
    qd_spec_free(&s);
    /* No path: nothing to do. */
    QD_CHECK_OK(qd_spec_hash_calibration(&s, &err), &err);
    unlink(path);
}

/* ---- YAML ------------------------------------------------------------------------------------ */

QD_TEST(yaml_sets_every_kind_of_value) {
    qd_spec s = {0};
    qd_error err = {0};
    const char *yaml = "# a GPTQ job\n"
                       "method: gptq\n"
                       "format: \"compressed-tensors\"\n"
                       "bits: 8\n"
                       "group_size: -1\n"
                       "symmetric: false\n"
                       "calibration:\n"
                       "  path: /data/c4.bin\n"
                       "  rows: 256\n"
                       "  seq_len: 1024\n"
                       "modules_to_not_convert:\n"
                       "  - lm_head\n"
                       "  - model.layers.0.mlp.down_proj\n"
                       "gptq:\n"
                       "  damp_percent: 0.05\n"
                       "  act_order: true\n"
                       "  static_groups: true\n"
                       "  true_sequential: false\n"
                       "  block_size: 64\n"
                       "  mse: true\n";
    QD_CHECK_OK(from_yaml(yaml, &s, &err), &err);
    QD_CHECK_EQ_INT(s.method, QD_SPEC_METHOD_GPTQ);
    QD_CHECK_EQ_INT(s.format, QD_SPEC_FORMAT_COMPRESSED_TENSORS);
    QD_CHECK_EQ_INT(s.bits, 8);
    QD_CHECK_EQ_INT(s.group_size, -1);
    QD_CHECK_EQ_INT(s.symmetric, QD_SPEC_FALSE);
    QD_CHECK_EQ_STR(s.calibration.path, "/data/c4.bin");
    QD_CHECK_EQ_INT(s.calibration.rows, 256);
    QD_CHECK_EQ_INT(s.calibration.seq_len, 1024);
    QD_REQUIRE(s.n_modules_to_not_convert == 2);
    QD_CHECK_EQ_STR(s.modules_to_not_convert[0], "lm_head");
    QD_CHECK_EQ_STR(s.modules_to_not_convert[1], "model.layers.0.mlp.down_proj");
    QD_CHECK(s.gptq.damp_percent == 0.05);
    QD_CHECK(s.gptq.act_order && s.gptq.static_groups && s.gptq.mse);
    QD_CHECK_EQ_INT(s.gptq.true_sequential, QD_SPEC_FALSE);
    QD_CHECK_EQ_INT(s.gptq.block_size, 64);
    QD_CHECK_EQ_INT(s.source[QD_SPEC_F_GPTQ_BLOCK_SIZE].origin, QD_SPEC_FROM_YAML);
    QD_CHECK_EQ_INT(s.source[QD_SPEC_F_GPTQ_BLOCK_SIZE].line, 19);
    QD_CHECK_EQ_INT(s.source[QD_SPEC_F_BITS].line, 4);
    QD_CHECK_EQ_STR(s.source_file, "test.yaml");
    QD_CHECK_OK(qd_spec_resolve(&s, NULL, &err), &err);
    qd_spec_free(&s);

    /* AWQ, SmoothQuant and FP8 keys, flow style. */
    QD_CHECK_OK(from_yaml("awq: {duo_scaling: false, n_grid: 10, apply_clip: true, "
                          "max_shrink: 0.25, clip_n_grid: 40, n_sample_tokens: 128}\n"
                          "smoothquant: {alpha: 0.75}\n"
                          "fp8: {weight_scale: tensor, activation_scheme: static}\n",
                          &s, &err),
                &err);
    QD_CHECK_EQ_INT(s.awq.duo_scaling, QD_SPEC_FALSE);
    QD_CHECK_EQ_INT(s.awq.n_grid, 10);
    QD_CHECK_EQ_INT(s.awq.apply_clip, QD_SPEC_TRUE);
    QD_CHECK(s.awq.max_shrink == 0.25);
    QD_CHECK_EQ_INT(s.awq.clip_n_grid, 40);
    QD_CHECK_EQ_INT(s.awq.n_sample_tokens, 128);
    QD_CHECK(s.smoothquant.has_alpha && s.smoothquant.alpha == 0.75);
    QD_CHECK_EQ_INT(s.fp8.weight_scale, QD_SPEC_FP8_WEIGHT_SCALE_TENSOR);
    QD_CHECK_EQ_INT(s.fp8.activation_scheme, QD_SPEC_FP8_ACTIVATION_STATIC);
    qd_spec_free(&s);

    /* Empty text, comments only, an empty section: nothing set. */
    QD_CHECK_OK(from_yaml("", &s, &err), &err);
    QD_CHECK_OK(from_yaml("# nothing\n", &s, &err), &err);
    QD_CHECK_OK(from_yaml("awq:\n  # n_grid: 10\n", &s, &err), &err);
    QD_CHECK_EQ_INT(s.awq.n_grid, 0);
    qd_spec_free(&s);
}

QD_TEST(yaml_layers_over_the_spec) {
    qd_spec s = {0};
    qd_error err = {0};
    s.method = QD_SPEC_METHOD_RTN;
    s.bits = 8;
    QD_CHECK_OK(from_yaml("bits: 4\nformat: none\n", &s, &err), &err);
    QD_CHECK_EQ_INT(s.method, QD_SPEC_METHOD_RTN);
    QD_CHECK_EQ_INT(s.bits, 4);
    QD_CHECK_EQ_INT(s.format, QD_SPEC_FORMAT_NONE);
    /* A list in the text replaces the list. */
    QD_CHECK_OK(from_yaml("modules_to_not_convert: [a, b]\n", &s, &err), &err);
    QD_CHECK_OK(from_yaml("modules_to_not_convert: [c]\n", &s, &err), &err);
    QD_REQUIRE(s.n_modules_to_not_convert == 1);
    QD_CHECK_EQ_STR(s.modules_to_not_convert[0], "c");
    qd_spec_free(&s);
}

QD_TEST(yaml_errors_name_key_and_line) {
    EXPECT_YAML_FAIL("method: awq\ngrup_size: 128\n", QD_ERR_INVALID_ARG,
                     "test.yaml:2: grup_size: unknown key", "did you mean 'group_size'?");
    EXPECT_YAML_FAIL("method: awq\n\nn_grid: 10\n", QD_ERR_INVALID_ARG,
                     "test.yaml:3: n_grid: unknown key", "did you mean 'awq.n_grid'?");
    EXPECT_YAML_FAIL("gptq:\n  n_grid: 10\n", QD_ERR_INVALID_ARG,
                     "test.yaml:2: gptq.n_grid: unknown key", "'awq.n_grid'");
    EXPECT_YAML_FAIL("awq:\n  foo: {bar: 1}\n", QD_ERR_INVALID_ARG,
                     "test.yaml:2: awq.foo: unknown key", NULL);
    EXPECT_YAML_FAIL("method: awq\nbits: four\n", QD_ERR_INVALID_ARG,
                     "test.yaml:2: bits: expected a positive integer, got 'four'", NULL);
    EXPECT_YAML_FAIL("bits: 0\n", QD_ERR_INVALID_ARG, "test.yaml:1: bits:",
                     "0 would mean the default");
    EXPECT_YAML_FAIL("bits: 4.0\n", QD_ERR_INVALID_ARG, "bits: expected a positive integer",
                     NULL);
    EXPECT_YAML_FAIL("bits: [4]\n", QD_ERR_INVALID_ARG,
                     "test.yaml:1: bits: expected a single value, found a list", NULL);
    EXPECT_YAML_FAIL("bits:\n", QD_ERR_INVALID_ARG, "bits: expected a positive integer",
                     "got ''");
    EXPECT_YAML_FAIL("symmetric: yes\n", QD_ERR_INVALID_ARG,
                     "symmetric: expected true or false, got 'yes'", NULL);
    EXPECT_YAML_FAIL("method: AWQ\n", QD_ERR_INVALID_ARG, "method: expected one of rtn, awq",
                     "w4a8-awq, got 'AWQ'");
    EXPECT_YAML_FAIL("format: gguf\n", QD_ERR_INVALID_ARG, "format: expected one of awq",
                     "got 'gguf'");
    EXPECT_YAML_FAIL("group_size: 0\n", QD_ERR_INVALID_ARG, "group_size: expected -1", NULL);
    EXPECT_YAML_FAIL("gptq:\n  damp_percent: lots\n", QD_ERR_INVALID_ARG,
                     "test.yaml:2: gptq.damp_percent: expected a number, got 'lots'", NULL);
    EXPECT_YAML_FAIL("fp8.weight_scale: row\n", QD_ERR_INVALID_ARG,
                     "fp8.weight_scale: expected one of tensor or channel", NULL);
    EXPECT_YAML_FAIL("calibration: {digest: abc}\n", QD_ERR_INVALID_ARG,
                     "calibration.digest: expected 64 lowercase hex digits", NULL);
    EXPECT_YAML_FAIL("modules_to_not_convert: lm_head\n", QD_ERR_INVALID_ARG,
                     "modules_to_not_convert: expected a list of module names", NULL);
    EXPECT_YAML_FAIL("modules_to_not_convert:\n  - a\n  - {b: 1}\n", QD_ERR_INVALID_ARG,
                     "test.yaml:3: modules_to_not_convert: item 2: expected a string", NULL);
    EXPECT_YAML_FAIL("bits: 4\nmethod: awq\nbits: 8\n", QD_ERR_INVALID_ARG,
                     "test.yaml:3: bits: duplicate key (first at line 1)", NULL);
    EXPECT_YAML_FAIL("awq: {n_grid: 10}\nawq.n_grid: 12\n", QD_ERR_INVALID_ARG,
                     "test.yaml:2: awq.n_grid: duplicate key (first at line 1)", NULL);
    EXPECT_YAML_FAIL("awq: {}\nawq: {}\n", QD_ERR_INVALID_ARG,
                     "test.yaml:2: awq: duplicate key (first at line 1)", NULL);
    EXPECT_YAML_FAIL("awq: 5\n", QD_ERR_INVALID_ARG, "awq: expected a mapping of awq keys",
                     "found '5'");
    EXPECT_YAML_FAIL("calibration.rows: 64\ncalibration:\n  rows: 32\n", QD_ERR_INVALID_ARG,
                     "test.yaml:3: calibration.rows: duplicate key (first at line 1)", NULL);
    EXPECT_YAML_FAIL("bits: &b 4\n", QD_ERR_INVALID_ARG, "test.yaml:1: bits: anchors are not "
                     "supported", NULL);
    EXPECT_YAML_FAIL("method: rtn\nbits: *b\n", QD_ERR_INVALID_ARG,
                     "test.yaml:2: bits: aliases are not supported", NULL);
    EXPECT_YAML_FAIL("bits: !!int 4\n", QD_ERR_INVALID_ARG, "bits: tags are not supported",
                     NULL);
    EXPECT_YAML_FAIL("- method\n- awq\n", QD_ERR_INVALID_ARG,
                     "the top level must be a mapping of keys, found a list", NULL);
    EXPECT_YAML_FAIL("method: awq\n---\nmethod: gptq\n", QD_ERR_INVALID_ARG,
                     "test.yaml:2: only one YAML document", NULL);
    EXPECT_YAML_FAIL("method: awq\nformat: \"awq\n", QD_ERR_FORMAT, "test.yaml:", "invalid YAML");
    EXPECT_YAML_FAIL("method: awq\n\tbits: 4\n", QD_ERR_FORMAT, "test.yaml:2", NULL);
    EXPECT_YAML_FAIL("calibration: {path: \"a\\0b\"}\n", QD_ERR_INVALID_ARG,
                     "calibration.path: contains a NUL character", NULL);
    EXPECT_YAML_FAIL("[1, 2]: x\n", QD_ERR_INVALID_ARG, "expected a key name, found a list",
                     NULL);
}

QD_TEST(yaml_file_loads_and_missing_file_is_named) {
    char path[512];
    QD_REQUIRE(tmp_dir()[0]);
    QD_REQUIRE(write_tmp("job.yaml", "method: rtn\nformat: none\ngroup_size: 96\n", path,
                         sizeof path));
    qd_spec s = {0};
    qd_error err = {0};
    QD_CHECK_OK(qd_spec_load_yaml(path, &s, &err), &err);
    QD_CHECK_EQ_INT(s.group_size, 96);
    QD_CHECK_OK(qd_spec_resolve(&s, NULL, &err), &err);
    const qd_spec_linear l[] = {{"model.layers.0.mlp.down_proj", 352, 64}};
    QD_CHECK_EQ_INT(qd_spec_check_model(&s, l, 1, &err), QD_ERR_INVALID_ARG);
    char want[600];
    snprintf(want, sizeof want, "%s:3: group_size 96: does not divide in_features 352", path);
    check_pieces_(err.msg, want, NULL, NULL, __FILE__, __LINE__);
    qd_spec_free(&s);
    qd_error_clear(&err);
    QD_CHECK_EQ_INT(qd_spec_load_yaml("/nonexistent/quantd/job.yaml", &s, &err),
                    QD_ERR_NOT_FOUND);
    check_pieces_(err.msg, "/nonexistent/quantd/job.yaml", NULL, NULL, __FILE__, __LINE__);
    unlink(path);
}

/* ---- flags ----------------------------------------------------------------------------------- */

QD_TEST(flags_set_every_key_and_leave_the_rest) {
    const char *const *argv =
        ARGV("-o", "out", "--method", "awq", "--format=awq", "--bits", "4", "--group-size", "64",
             "--asym", "--calib", "c4.bin", "--calib-rows", "64", "--calib-seq-len", "256",
             "--eval-data", "wiki.bin", "--modules-to-not-convert", "lm_head,mlp.down_proj",
             "--no-duo-scaling", "--n-grid", "10", "--apply-clip", "--max-shrink", "0.25",
             "--clip-n-grid", "40", "--n-sample-tokens=128", "model_dir", "--", "--bits", "8");
    int argc = argv_count(argv), rest[64], n_rest = -1;
    qd_spec s = {0};
    qd_error err = {0};
    QD_CHECK_OK(qd_spec_parse_args(argc, (char *const *)argv, &s, rest, &n_rest, &err), &err);
    QD_CHECK_EQ_INT(s.method, QD_SPEC_METHOD_AWQ);
    QD_CHECK_EQ_INT(s.format, QD_SPEC_FORMAT_AWQ);
    QD_CHECK_EQ_INT(s.bits, 4);
    QD_CHECK_EQ_INT(s.group_size, 64);
    QD_CHECK_EQ_INT(s.symmetric, QD_SPEC_FALSE);
    QD_CHECK_EQ_STR(s.calibration.path, "c4.bin");
    QD_CHECK_EQ_INT(s.calibration.rows, 64);
    QD_CHECK_EQ_INT(s.calibration.seq_len, 256);
    QD_REQUIRE(s.n_modules_to_not_convert == 2);
    QD_CHECK_EQ_STR(s.modules_to_not_convert[1], "mlp.down_proj");
    QD_CHECK_EQ_INT(s.awq.duo_scaling, QD_SPEC_FALSE);
    QD_CHECK_EQ_INT(s.awq.n_grid, 10);
    QD_CHECK_EQ_INT(s.awq.apply_clip, QD_SPEC_TRUE);
    QD_CHECK(s.awq.max_shrink == 0.25);
    QD_CHECK_EQ_INT(s.awq.clip_n_grid, 40);
    QD_CHECK_EQ_INT(s.awq.n_sample_tokens, 128);
    QD_CHECK_EQ_INT(s.source[QD_SPEC_F_SYMMETRIC].origin, QD_SPEC_FROM_FLAG);
    QD_CHECK_EQ_INT(s.source[QD_SPEC_F_SYMMETRIC].negated, 1);
    /* Left: -o out --eval-data wiki.bin model_dir -- --bits 8 */
    static const int want[] = {1, 2, 17, 18, 30, 31, 32, 33};
    QD_REQUIRE(n_rest == (int)(sizeof want / sizeof want[0]));
    for (int i = 0; i < n_rest; i++) QD_CHECK_EQ_INT(rest[i], want[i]);
    QD_CHECK_EQ_STR(argv[rest[4]], "model_dir");
    qd_spec_free(&s);

    /* GPTQ, SmoothQuant and FP8 flags. */
    const char *const *g = ARGV("--damp-percent", "0.05", "--act-order", "--static-groups",
                                "--no-true-sequential", "--block-size", "64", "--mse", "--alpha",
                                "0.8", "--fp8-weight-scale", "tensor", "--fp8-activation-scheme",
                                "static", "--calib-digest", DIG, "--sym");
    QD_CHECK_OK(qd_spec_parse_args(argv_count(g), (char *const *)g, &s, rest, &n_rest, &err),
                &err);
    QD_CHECK_EQ_INT(n_rest, 0);
    QD_CHECK(s.gptq.damp_percent == 0.05);
    QD_CHECK(s.gptq.act_order && s.gptq.static_groups && s.gptq.mse);
    QD_CHECK_EQ_INT(s.gptq.true_sequential, QD_SPEC_FALSE);
    QD_CHECK_EQ_INT(s.gptq.block_size, 64);
    QD_CHECK(s.smoothquant.alpha == 0.8);
    QD_CHECK_EQ_INT(s.fp8.weight_scale, QD_SPEC_FP8_WEIGHT_SCALE_TENSOR);
    QD_CHECK_EQ_INT(s.fp8.activation_scheme, QD_SPEC_FP8_ACTIVATION_STATIC);
    QD_CHECK_EQ_STR(s.calibration.digest, DIG);
    QD_CHECK_EQ_INT(s.symmetric, QD_SPEC_TRUE);
    qd_spec_free(&s);

    /* A negative value is a value: --group-size -1. */
    const char *const *neg = ARGV("--group-size", "-1");
    QD_CHECK_OK(qd_spec_parse_args(argv_count(neg), (char *const *)neg, &s, rest, &n_rest, &err),
                &err);
    QD_CHECK_EQ_INT(s.group_size, -1);
    QD_CHECK_EQ_INT(n_rest, 0);
    qd_spec_free(&s);
    /* Only argv[0]. */
    const char *const only[] = {"quantize", NULL};
    QD_CHECK_OK(qd_spec_parse_args(1, (char *const *)only, &s, rest, &n_rest, &err), &err);
    QD_CHECK_EQ_INT(n_rest, 0);
    qd_spec_free(&s);
}

QD_TEST(flag_errors_leave_everything_untouched) {
    static const struct {
        const char *argv[6];
        const char *piece;
    } cases[] = {
        {{"q", "--bits", NULL}, "--bits: needs a value (N)"},
        {{"q", "--act-order=true", NULL}, "--act-order: takes no value"},
        {{"q", "--sym=1", NULL}, "--sym: takes no value (use --sym or --asym)"},
        {{"q", "--spec", NULL}, "--spec: needs a file"},
        {{"q", "--spec", "a.yaml", "--spec=b.yaml", NULL}, "--spec: given twice"},
        {{"q", "--method", "magic", NULL}, "--method: expected one of"},
        {{"q", "--fp8-weight-scale", "row", NULL}, "--fp8-weight-scale: expected one of tensor"},
        {{"q", "--n-grid", "-3", NULL}, "--n-grid: expected a positive integer, got '-3'"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        qd_spec s = {0};
        qd_error err = {0};
        int rest[8] = {-7}, n_rest = -7;
        s.bits = 7;
        qd_err rc = qd_spec_parse_args(argv_count(cases[i].argv), (char *const *)cases[i].argv,
                                       &s, rest, &n_rest, &err);
        QD_CHECK_EQ_INT(rc, QD_ERR_INVALID_ARG);
        check_pieces_(err.msg, cases[i].piece, NULL, NULL, __FILE__, __LINE__);
        QD_CHECK_EQ_INT(s.bits, 7);
        QD_CHECK_EQ_INT(n_rest, -7);
        QD_CHECK_EQ_INT(rest[0], -7);
        qd_spec_free(&s);
    }
}

QD_TEST(flags_override_the_spec_file) {
    char path[512];
    QD_REQUIRE(tmp_dir()[0]);
    QD_REQUIRE(write_tmp("spec.yaml",
                         "method: gptq\nformat: gptq\nbits: 8\ngroup_size: 64\n"
                         "calibration: {digest: " DIG ", rows: 32}\n"
                         "modules_to_not_convert: [lm_head]\n"
                         "gptq: {damp_percent: 0.02, act_order: true}\n",
                         path, sizeof path));
    /* --spec anywhere, flags before or after it win. */
    const char *const *argv = ARGV("--bits", "4", "--spec", path, "--no-act-order",
                                   "--modules-to-not-convert", "a", "--modules-to-not-convert",
                                   "b,c", "out");
    int rest[16], n_rest = 0;
    qd_spec s = {0};
    qd_error err = {0};
    QD_CHECK_OK(qd_spec_parse_args(argv_count(argv), (char *const *)argv, &s, rest, &n_rest,
                                   &err),
                &err);
    QD_CHECK_EQ_INT(s.method, QD_SPEC_METHOD_GPTQ); /* from the file */
    QD_CHECK_EQ_INT(s.group_size, 64);
    QD_CHECK_EQ_INT(s.calibration.rows, 32);
    QD_CHECK(s.gptq.damp_percent == 0.02);
    QD_CHECK_EQ_INT(s.bits, 4);      /* the flag */
    QD_CHECK(!s.gptq.act_order);     /* the flag */
    QD_CHECK_EQ_INT(s.source[QD_SPEC_F_GROUP_SIZE].origin, QD_SPEC_FROM_YAML);
    QD_CHECK_EQ_INT(s.source[QD_SPEC_F_BITS].origin, QD_SPEC_FROM_FLAG);
    /* The first list flag replaced the file's list, the second added to it. */
    QD_REQUIRE(s.n_modules_to_not_convert == 3);
    QD_CHECK_EQ_STR(s.modules_to_not_convert[0], "a");
    QD_CHECK_EQ_STR(s.modules_to_not_convert[2], "c");
    QD_REQUIRE(n_rest == 1);
    QD_CHECK_EQ_STR(argv[rest[0]], "out");
    QD_CHECK_OK(qd_spec_resolve(&s, NULL, &err), &err);
    qd_spec_free(&s);

    /* An error in the file names the file and the line; a flag error names the flag. */
    QD_REQUIRE(write_tmp("bad.yaml", "method: gptq\nformat: gptq\nbits: three\n", path,
                         sizeof path));
    const char *const *bad = ARGV("--spec", path);
    QD_CHECK_EQ_INT(qd_spec_parse_args(argv_count(bad), (char *const *)bad, &s, rest, &n_rest,
                                       &err),
                    QD_ERR_INVALID_ARG);
    char want[600];
    snprintf(want, sizeof want, "%s:3: bits: expected a positive integer", path);
    check_pieces_(err.msg, want, NULL, NULL, __FILE__, __LINE__);
    qd_spec_free(&s);
    const char *const *missing = ARGV("--spec=/nonexistent/quantd/spec.yaml");
    qd_error_clear(&err);
    QD_CHECK_EQ_INT(qd_spec_parse_args(argv_count(missing), (char *const *)missing, &s, rest,
                                       &n_rest, &err),
                    QD_ERR_NOT_FOUND);
    qd_spec_free(&s);
    unlink(path);
}

/* ---- help, docs, copies ---------------------------------------------------------------------- */

QD_TEST(help_lists_every_flag_with_its_default) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    QD_REQUIRE(f);
    qd_spec_help(f);
    fclose(f);
    QD_REQUIRE(buf);
    for (size_t i = 0; i < qd_spec_key_count(); i++) {
        const qd_spec_key *k = qd_spec_key_at(i);
        char flag[80];
        snprintf(flag, sizeof flag, "--%s", k->flag);
        QD_CHECK_MSG(strstr(buf, flag), "help lacks %s", flag);
        QD_CHECK_MSG(strstr(buf, k->name), "help lacks %s", k->name);
        if (k->neg_flag) {
            snprintf(flag, sizeof flag, "--%s", k->neg_flag);
            QD_CHECK_MSG(strstr(buf, flag), "help lacks %s", flag);
        }
    }
    QD_CHECK(strstr(buf, "--spec FILE"));
    QD_CHECK(strstr(buf, "--n-grid N   (awq.n_grid)"));
    QD_CHECK(strstr(buf, "(gptq.damp_percent)\n      Dampening"));
    QD_CHECK(strstr(buf, "default: 0.01\n"));
    QD_CHECK(strstr(buf, "default: 0.5\n"));
    QD_CHECK(strstr(buf, "rtn 4, awq 4, gptq 4, smoothquant 8, fp8 8, w4a8-awq 4"));
    QD_CHECK(strstr(buf, "awq 128, gptq 128, smoothquant 512"));
    QD_CHECK(strstr(buf, "values: rtn, awq, gptq, smoothquant, fp8 or w4a8-awq"));
    free(buf);
}

QD_TEST(docs_describe_every_key_and_flag) {
    char path[512], *doc = NULL;
    size_t len = 0;
    qd_error err = {0};
    snprintf(path, sizeof path, "%s/docs/spec.md", QD_SOURCE_DIR);
    QD_CHECK_OK(qd_read_file(path, 1 << 20, &doc, &len, &err), &err);
    QD_REQUIRE(doc);
    for (size_t i = 0; i < qd_spec_key_count(); i++) {
        const qd_spec_key *k = qd_spec_key_at(i);
        char want[96];
        snprintf(want, sizeof want, "`%s`", k->name);
        QD_CHECK_MSG(strstr(doc, want), "docs/spec.md lacks %s", want);
        snprintf(want, sizeof want, "`--%s", k->flag);
        QD_CHECK_MSG(strstr(doc, want), "docs/spec.md lacks %s", want);
        if (k->neg_flag) {
            snprintf(want, sizeof want, "`--%s`", k->neg_flag);
            QD_CHECK_MSG(strstr(doc, want), "docs/spec.md lacks %s", want);
        }
    }
    for (int m = 1; m < QD_SPEC_METHOD_COUNT; m++) {
        char want[64];
        snprintf(want, sizeof want, "`%s`", qd_spec_method_name((qd_spec_method)m));
        QD_CHECK_MSG(strstr(doc, want), "docs/spec.md lacks %s", want);
    }
    QD_CHECK(strstr(doc, "QD_NUMERICS_VERSION"));
    free(doc);
}

QD_TEST(copy_is_deep_and_free_accepts_null) {
    qd_spec a = {0}, b = {0};
    qd_error err = {0};
    QD_CHECK_OK(from_yaml("method: awq\nformat: awq\ncalibration: {path: /x/c.bin, digest: " DIG
                          "}\nmodules_to_not_convert: [lm_head, x.y]\n",
                          &a, &err),
                &err);
    QD_CHECK_OK(qd_spec_copy(&b, &a, &err), &err);
    QD_REQUIRE(b.calibration.path && b.n_modules_to_not_convert == 2);
    QD_CHECK(b.calibration.path != a.calibration.path);
    QD_CHECK(b.modules_to_not_convert[0] != a.modules_to_not_convert[0]);
    QD_CHECK(b.source_file != a.source_file);
    QD_CHECK_EQ_STR(b.modules_to_not_convert[1], "x.y");
    qd_spec_free(&a); /* b must not depend on a */
    char hex[QD_SPEC_DIGEST_HEX];
    QD_CHECK_OK(qd_spec_digest(&b, hex, &err), &err);
    qd_spec_free(&b);
    qd_spec_free(NULL);
    QD_CHECK(b.calibration.path == NULL && b.n_modules_to_not_convert == 0);
}

QD_TEST_MAIN()
