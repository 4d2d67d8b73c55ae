/*
 * test-quantctl.c - the parts of quantctl that need no server: bundle scanning and the
 * manifest digest (the test vector of proto/README.md, and agreement with the spec's own
 * calibration digest), the name rules, the spec as a QuantSpec message (packed and read back),
 * the generic message-to-JSON form, and the --limit-rate parser.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fsutil.h"
#include "quantctl.h"
#include "test.h"

static char tmp_root[224];

static const char *tmpdir(void) {
    if (!tmp_root[0]) {
        const char *base = getenv("TMPDIR");
        snprintf(tmp_root, sizeof tmp_root, "%s/test-quantctl-XXXXXX",
                 base && base[0] == '/' && strlen(base) < 190 ? base : "/tmp");
        if (!mkdtemp(tmp_root)) tmp_root[0] = '\0';
    }
    return tmp_root;
}

static int write_file(const char *dir, const char *name, const char *text) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    char *slash = strrchr(path, '/');
    *slash = '\0';
    qd_error e = {0};
    if (qd_mkdir_p(path, 0755, &e) != QD_OK) return -1;
    *slash = '/';
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    fputs(text, f);
    return fclose(f);
}

/* The manifest test vector of proto/README.md: "{}" in config.json and an empty empty.bin. */
QD_TEST(manifest_digest_test_vector) {
    char dir[256];
    snprintf(dir, sizeof dir, "%s/vector", tmpdir());
    QD_REQUIRE(write_file(dir, "config.json", "{}") == 0);
    QD_REQUIRE(write_file(dir, "empty.bin", "") == 0);
    qd_ctl_bundle b = {0};
    qd_error e = {0};
    QD_CHECK_OK(qd_ctl_bundle_scan(dir, &b, &e), &e);
    QD_REQUIRE(b.n_files == 2);
    QD_CHECK_OK(qd_ctl_bundle_hash(&b, NULL, NULL, &e), &e);
    QD_CHECK_EQ_STR(b.files[0].name, "config.json");
    QD_CHECK_EQ_STR(b.files[0].sha256,
                    "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a");
    QD_CHECK_EQ_INT(b.files[1].size, 0);
    QD_CHECK_EQ_STR(b.digest, "4cba42fcc7a34c95a1b05fafd306f9943432c6edd6b15c775ab33c6f04782c14");
    QD_CHECK_EQ_INT(b.total_bytes, 2);
    qd_ctl_bundle_free(&b);
}

/* Names relative to the directory, nested ones with '/', sorted as bytes (Z < a < a/b), links
 * to files followed, links to directories not. */
QD_TEST(scan_names_and_order) {
    char dir[256], link[PATH_MAX], target[PATH_MAX];
    snprintf(dir, sizeof dir, "%s/order", tmpdir());
    QD_REQUIRE(write_file(dir, "a.txt", "a") == 0);
    QD_REQUIRE(write_file(dir, "Z.txt", "zz") == 0);
    QD_REQUIRE(write_file(dir, "a/b.txt", "bbb") == 0);
    QD_REQUIRE(write_file(dir, ".hidden/x", "") == 0);
    snprintf(link, sizeof link, "%s/link.bin", dir);
    snprintf(target, sizeof target, "%s/a.txt", dir);
    QD_REQUIRE(symlink(target, link) == 0);
    snprintf(link, sizeof link, "%s/loop", dir);
    QD_REQUIRE(symlink(dir, link) == 0);
    char with_slash[PATH_MAX + 2];
    snprintf(with_slash, sizeof with_slash, "%s/", dir);
    qd_ctl_bundle b = {0};
    qd_error e = {0};
    QD_CHECK_OK(qd_ctl_bundle_scan(with_slash, &b, &e), &e);
    QD_REQUIRE(b.n_files == 5);
    QD_CHECK_EQ_STR(b.files[0].name, ".hidden/x");
    QD_CHECK_EQ_STR(b.files[1].name, "Z.txt");
    QD_CHECK_EQ_STR(b.files[2].name, "a.txt");
    QD_CHECK_EQ_STR(b.files[3].name, "a/b.txt");
    QD_CHECK_EQ_STR(b.files[4].name, "link.bin");
    QD_CHECK_EQ_INT(b.files[4].size, 1);
    QD_CHECK_EQ_INT(b.total_bytes, 1 + 2 + 3 + 0 + 1);

    /* The digest follows the rule: recompute it from the lines by hand. */
    QD_CHECK_OK(qd_ctl_bundle_hash(&b, NULL, NULL, &e), &e);
    char lines[2048] = "", path[PATH_MAX + 16], hex[QD_CTL_HEX];
    size_t used = 0;
    for (size_t i = 0; i < b.n_files && used < sizeof lines; i++)
        used += (size_t)snprintf(lines + used, sizeof lines - used, "%s  %llu  %s\n",
                                 b.files[i].sha256, (unsigned long long)b.files[i].size,
                                 b.files[i].name);
    QD_REQUIRE(used < sizeof lines);
    snprintf(path, sizeof path, "%s/lines", tmpdir());
    QD_REQUIRE(write_file(tmpdir(), "lines", lines) == 0);
    QD_CHECK_OK(qd_ctl_sha256_file(path, hex, NULL, NULL, NULL, 0, 0, &e), &e);
    QD_CHECK_EQ_STR(b.digest, hex);
    qd_ctl_bundle_free(&b);
}

/* A --calib FILE uploaded as a one-file bundle has the digest the spec computes locally. */
QD_TEST(calibration_bundle_matches_spec_digest) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/examples/data/babyllama/calib.safetensors", QD_SOURCE_DIR);
    qd_ctl_bundle b = {0};
    qd_error e = {0};
    QD_CHECK_OK(qd_ctl_bundle_scan(path, &b, &e), &e);
    QD_REQUIRE(b.n_files == 1);
    QD_CHECK_EQ_STR(b.files[0].name, "calib.safetensors");
    QD_CHECK_OK(qd_ctl_bundle_hash(&b, NULL, NULL, &e), &e);
    qd_spec s = {0};
    s.method = QD_SPEC_METHOD_AWQ;
    s.calibration.path = strdup(path);
    QD_CHECK_OK(qd_spec_hash_calibration(&s, &e), &e);
    QD_CHECK_EQ_STR(b.digest, s.calibration.digest);
    qd_spec_free(&s);
    qd_ctl_bundle_free(&b);
}

QD_TEST(name_rules) {
    static const char *const bad[] = {"", "/abs", "a//b", "a/", "../x", "a/../b", "a/./b", ".",
                                      "x\\y", "a\nb", "a\rb"};
    static const char *const good[] = {"a", "a/b.c", ".hidden", "..x", "x..",
                                       "a/b/c/d.safetensors"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        qd_error e = {0};
        QD_CHECK_MSG(qd_ctl_check_name(bad[i], "file", &e) == QD_ERR_INVALID_ARG,
                     "'%s' should be refused", bad[i]);
    }
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        qd_error e = {0};
        QD_CHECK_MSG(qd_ctl_check_name(good[i], "file", &e) == QD_OK, "'%s' refused: %s",
                     good[i], qd_error_text(&e));
    }
    QD_CHECK(qd_ctl_is_digest("4cba42fcc7a34c95a1b05fafd306f9943432c6edd6b15c775ab33c6f04782c14"));
    QD_CHECK(!qd_ctl_is_digest("4CBA42fcc7a34c95a1b05fafd306f9943432c6edd6b15c775ab33c6f04782c14"));
    QD_CHECK(!qd_ctl_is_digest("4cba42"));
}

/* Flags -> qd_spec -> QuantSpec -> bytes -> QuantSpec: what was set arrives, what was not set
 * stays absent (zero or an unset oneof). */
static Quantd__V1__QuantSpec *roundtrip(const char *const *args, int n, bool with_calib,
                                        qd_spec *s) {
    char *argv[32];
    argv[0] = (char *)"quantize";
    for (int i = 0; i < n; i++) argv[i + 1] = (char *)args[i];
    qd_error e = {0};
    if (qd_spec_parse_args(n + 1, argv, s, NULL, NULL, &e) != QD_OK) {
        fprintf(stderr, "parse: %s\n", qd_error_text(&e));
        return NULL;
    }
    qd_ctl_spec_msg m;
    qd_ctl_spec_to_proto(s, with_calib, &m);
    size_t len = protobuf_c_message_get_packed_size(&m.spec.base);
    uint8_t *buf = malloc(len ? len : 1);
    protobuf_c_message_pack(&m.spec.base, buf);
    Quantd__V1__QuantSpec *q = quantd__v1__quant_spec__unpack(NULL, len, buf);
    free(buf);
    return q;
}

QD_TEST(spec_awq_to_proto) {
    static const char *const args[] = {"--method", "awq", "--format", "awq", "--bits", "4",
                                       "--group-size", "32", "--asym", "--calib-rows", "8",
                                       "--n-grid", "10", "--no-apply-clip",
                                       "--modules-to-not-convert", "lm_head,down_proj"};
    qd_spec s = {0};
    Quantd__V1__QuantSpec *q = roundtrip(args, (int)(sizeof args / sizeof args[0]), true, &s);
    QD_REQUIRE(q != NULL);
    QD_CHECK_EQ_INT(q->method, QUANTD__V1__METHOD__METHOD_AWQ);
    QD_CHECK_EQ_INT(q->format, QUANTD__V1__FORMAT__FORMAT_AWQ);
    QD_CHECK_EQ_INT(q->bits, 4);
    QD_CHECK_EQ_INT(q->group_size, 32);
    QD_CHECK_EQ_INT(q->symmetric_opt_case, QUANTD__V1__QUANT_SPEC__SYMMETRIC_OPT_SYMMETRIC);
    QD_CHECK_EQ_INT(q->symmetric, 0);
    QD_REQUIRE(q->calibration != NULL);
    QD_CHECK_EQ_INT(q->calibration->rows, 8);
    QD_CHECK_EQ_INT(q->calibration->seq_len, 0);
    QD_CHECK_EQ_STR(q->calibration->digest, "");
    QD_REQUIRE(q->params_case == QUANTD__V1__QUANT_SPEC__PARAMS_AWQ);
    QD_CHECK_EQ_INT(q->awq->n_grid, 10);
    QD_CHECK_EQ_INT(q->awq->apply_clip_opt_case,
                    QUANTD__V1__AWQ_PARAMS__APPLY_CLIP_OPT_APPLY_CLIP);
    QD_CHECK_EQ_INT(q->awq->apply_clip, 0);
    QD_CHECK_EQ_INT(q->awq->duo_scaling_opt_case, QUANTD__V1__AWQ_PARAMS__DUO_SCALING_OPT__NOT_SET);
    QD_REQUIRE(q->n_modules_to_not_convert == 2);
    QD_CHECK_EQ_STR(q->modules_to_not_convert[0], "lm_head");
    QD_CHECK_EQ_STR(q->modules_to_not_convert[1], "down_proj");
    quantd__v1__quant_spec__free_unpacked(q, NULL);
    qd_spec_free(&s);
}

QD_TEST(spec_defaults_stay_unset) {
    static const char *const rtn[] = {"--method", "rtn", "--format", "gptq"};
    qd_spec s = {0};
    Quantd__V1__QuantSpec *q = roundtrip(rtn, 4, false, &s);
    QD_REQUIRE(q != NULL);
    QD_CHECK_EQ_INT(q->method, QUANTD__V1__METHOD__METHOD_RTN);
    QD_CHECK_EQ_INT(q->format, QUANTD__V1__FORMAT__FORMAT_GPTQ);
    QD_CHECK_EQ_INT(q->bits, 0);
    QD_CHECK_EQ_INT(q->group_size, 0);
    QD_CHECK_EQ_INT(q->symmetric_opt_case, QUANTD__V1__QUANT_SPEC__SYMMETRIC_OPT__NOT_SET);
    QD_CHECK(q->calibration == NULL);
    QD_CHECK_EQ_INT(q->params_case, QUANTD__V1__QUANT_SPEC__PARAMS__NOT_SET);
    quantd__v1__quant_spec__free_unpacked(q, NULL);
    qd_spec_free(&s);

    /* Zero and false are real choices for these: they travel, in their oneofs. */
    static const char *const sq[] = {"--method", "smoothquant", "--format", "compressed-tensors",
                                     "--alpha", "0", "--group-size", "-1", "--sym"};
    qd_spec s2 = {0};
    q = roundtrip(sq, 9, true, &s2);
    QD_REQUIRE(q != NULL);
    QD_REQUIRE(q->params_case == QUANTD__V1__QUANT_SPEC__PARAMS_SMOOTHQUANT);
    QD_CHECK_EQ_INT(q->smoothquant->alpha_opt_case,
                    QUANTD__V1__SMOOTH_QUANT_PARAMS__ALPHA_OPT_ALPHA);
    QD_CHECK_NEAR(q->smoothquant->alpha, 0.0, 0.0);
    QD_CHECK_EQ_INT(q->group_size, -1);
    QD_CHECK_EQ_INT(q->symmetric, 1);
    quantd__v1__quant_spec__free_unpacked(q, NULL);
    qd_spec_free(&s2);

    static const char *const gptq[] = {
        "--method", "gptq", "--format", "gptq", "--no-true-sequential", "--act-order",
        "--damp-percent", "0.05", "--calib-digest",
        "4cba42fcc7a34c95a1b05fafd306f9943432c6edd6b15c775ab33c6f04782c14"};
    qd_spec s3 = {0};
    q = roundtrip(gptq, 10, true, &s3);
    QD_REQUIRE(q != NULL);
    QD_REQUIRE(q->params_case == QUANTD__V1__QUANT_SPEC__PARAMS_GPTQ);
    QD_CHECK_EQ_INT(q->gptq->true_sequential_opt_case,
                    QUANTD__V1__GPTQ_PARAMS__TRUE_SEQUENTIAL_OPT_TRUE_SEQUENTIAL);
    QD_CHECK_EQ_INT(q->gptq->true_sequential, 0);
    QD_CHECK_EQ_INT(q->gptq->act_order, 1);
    QD_CHECK_EQ_INT(q->gptq->static_groups, 0);
    QD_CHECK_NEAR(q->gptq->damp_percent, 0.05, 1e-15);
    QD_REQUIRE(q->calibration != NULL);
    QD_CHECK_EQ_STR(q->calibration->digest,
                    "4cba42fcc7a34c95a1b05fafd306f9943432c6edd6b15c775ab33c6f04782c14");
    quantd__v1__quant_spec__free_unpacked(q, NULL);
    qd_spec_free(&s3);

    static const char *const fp8[] = {"--method", "fp8", "--format", "compressed-tensors",
                                      "--fp8-weight-scale", "tensor", "--fp8-activation-scheme",
                                      "static"};
    qd_spec s4 = {0};
    q = roundtrip(fp8, 8, true, &s4);
    QD_REQUIRE(q != NULL);
    QD_REQUIRE(q->params_case == QUANTD__V1__QUANT_SPEC__PARAMS_FP8);
    QD_CHECK_EQ_INT(q->fp8->weight_scale,
                    QUANTD__V1__FP8_SCALE_GRANULARITY__FP8_SCALE_GRANULARITY_PER_TENSOR);
    QD_CHECK_EQ_INT(q->fp8->activation_scheme,
                    QUANTD__V1__FP8_ACTIVATION_SCHEME__FP8_ACTIVATION_SCHEME_STATIC);
    quantd__v1__quant_spec__free_unpacked(q, NULL);
    qd_spec_free(&s4);
}

QD_TEST(proto_json) {
    Quantd__V1__Progress prog = QUANTD__V1__PROGRESS__INIT;
    prog.fraction = 0.5;
    prog.layer = 2;
    prog.layer_count = 4;
    prog.eta_unix_ms = 1700000000123;
    Quantd__V1__LayerDone__Module mod = QUANTD__V1__LAYER_DONE__MODULE__INIT;
    mod.name = (char *)"model.layers.1.mlp.down_proj";
    mod.error = 0.25;
    Quantd__V1__LayerDone__Module *mods[1] = {&mod};
    Quantd__V1__LayerDone layer = QUANTD__V1__LAYER_DONE__INIT;
    layer.index = 1;
    layer.count = 4;
    layer.n_modules = 1;
    layer.modules = mods;
    Quantd__V1__JobEvent ev = QUANTD__V1__JOB_EVENT__INIT;
    ev.job_id = (char *)"j1";
    ev.seq = 7;
    ev.progress = &prog;
    ev.event_case = QUANTD__V1__JOB_EVENT__EVENT_LAYER;
    ev.layer = &layer;
    json_t *j = qd_ctl_proto_json(&ev.base);
    QD_REQUIRE(j != NULL);
    QD_CHECK_EQ_STR(json_string_value(json_object_get(j, "job_id")), "j1");
    QD_CHECK_EQ_INT(json_integer_value(json_object_get(j, "seq")), 7);
    QD_CHECK(json_object_get(j, "done") == NULL);  /* other oneof members absent */
    QD_CHECK(json_object_get(j, "tick") == NULL);
    json_t *l = json_object_get(j, "layer");
    QD_CHECK_EQ_INT(json_integer_value(json_object_get(l, "count")), 4);
    json_t *m0 = json_array_get(json_object_get(l, "modules"), 0);
    QD_CHECK_EQ_STR(json_string_value(json_object_get(m0, "name")), "model.layers.1.mlp.down_proj");
    QD_CHECK_NEAR(json_real_value(json_object_get(m0, "error")), 0.25, 0);
    json_t *p = json_object_get(j, "progress");
    QD_CHECK_EQ_INT(json_integer_value(json_object_get(p, "eta_unix_ms")), 1700000000123);
    json_decref(j);

    /* Enums by name, repeated enums, the QUEUED member with value 0 present. */
    Quantd__V1__JobEvent q = QUANTD__V1__JOB_EVENT__INIT;
    q.event_case = QUANTD__V1__JOB_EVENT__EVENT_QUEUED;
    q.queued = 0;
    j = qd_ctl_proto_json(&q.base);
    QD_CHECK(json_is_integer(json_object_get(j, "queued")));
    QD_CHECK(json_object_get(j, "progress") == NULL); /* absent sub-message */
    json_decref(j);
    Quantd__V1__Format formats[2] = {QUANTD__V1__FORMAT__FORMAT_AWQ,
                                     QUANTD__V1__FORMAT__FORMAT_MODELOPT};
    Quantd__V1__MethodSupport ms = QUANTD__V1__METHOD_SUPPORT__INIT;
    ms.method = QUANTD__V1__METHOD__METHOD_GPTQ;
    ms.n_formats = 2;
    ms.formats = formats;
    j = qd_ctl_proto_json(&ms.base);
    QD_CHECK_EQ_STR(json_string_value(json_object_get(j, "method")), "METHOD_GPTQ");
    QD_CHECK_EQ_STR(json_string_value(json_array_get(json_object_get(j, "formats"), 1)),
                    "FORMAT_MODELOPT");
    QD_CHECK_EQ_INT(json_array_size(json_object_get(j, "bits")), 0);
    json_decref(j);
}

QD_TEST(limit_rate) {
    double r = 0;
    qd_error e = {0};
    QD_CHECK_OK(qd_ctl_parse_rate("10M", &r, &e), &e);
    QD_CHECK_NEAR(r, 10.0 * 1024 * 1024, 0);
    QD_CHECK_OK(qd_ctl_parse_rate("1.5K", &r, &e), &e);
    QD_CHECK_NEAR(r, 1536, 0);
    QD_CHECK_OK(qd_ctl_parse_rate("4096", &r, &e), &e);
    QD_CHECK_NEAR(r, 4096, 0);
    QD_CHECK(qd_ctl_parse_rate("0", &r, &e) == QD_ERR_INVALID_ARG);
    QD_CHECK(qd_ctl_parse_rate("5X", &r, &e) == QD_ERR_INVALID_ARG);
    QD_CHECK(qd_ctl_parse_rate("-1M", &r, &e) == QD_ERR_INVALID_ARG);
    QD_CHECK(qd_ctl_parse_rate("", &r, &e) == QD_ERR_INVALID_ARG);
    uint64_t v = 0;
    QD_CHECK(qd_ctl_parse_u64("--limit", "12", 1, 100, &v, &e) == QD_OK && v == 12);
    QD_CHECK(qd_ctl_parse_u64("--limit", "0", 1, 100, &v, &e) == QD_ERR_INVALID_ARG);
    QD_CHECK(qd_ctl_parse_u64("--limit", "12x", 1, 100, &v, &e) == QD_ERR_INVALID_ARG);
    QD_CHECK(qd_ctl_parse_u64("--limit", "-3", 0, 100, &v, &e) == QD_ERR_INVALID_ARG);
}

/* Runs last (tests run in registration order): the temporary tree goes. */
QD_TEST(zz_cleanup) {
    qd_error e = {0};
    if (tmp_root[0]) QD_CHECK_OK(qd_remove_tree(tmp_root, &e), &e);
}

QD_TEST_MAIN()
