/*
 * test-service.c - the service core in process (daemon/service.h), on the bundled babyllama:
 * resumable uploads and their refusals, RTN and AWQ jobs whose artifacts must equal, byte for
 * byte, what `quantd quantize ... -o OUT` writes (done here with the same calls), the cache
 * (CACHE_HIT) and joining (JOINED), cancelling a queued and a running job, requests by
 * server-side path under model_roots, the default calibration set, events in order ending in
 * DONE, a close/reopen with jobs queued and running that run again, and owners: two callers
 * see only their own jobs, artifacts and bundles, a digest quoted without the bytes buys
 * nothing, bytes sent again (and checked) do, and admin or no authentication sees all.
 *
 * Each test uses a fresh data directory. Jobs are kept small (AWQ on 8 x 32 tokens); the one
 * job meant to be slow (so that others queue behind it) is cancelled at a layer boundary.
 */
#include <dirent.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "artifact.h"
#include "config.h"
#include "fsutil.h"
#include "job.h"
#include "model.h"
#include "safetensors.h"
#include "service.h"
#include "spec.h"
#include "store.h"
#include "test.h"
#include "tokenizer.h"

#define MODEL_DIR QD_SOURCE_DIR "/examples/models/babyllama"
#define MODELS_ROOT QD_SOURCE_DIR "/examples/models"
#define CALIB_FILE QD_SOURCE_DIR "/examples/data/babyllama/calib.safetensors"
#define CALIB_DIR QD_SOURCE_DIR "/examples/data/babyllama"
#define N_LAYERS 5

/* ---- helpers --------------------------------------------------------------------------------- */

static void fmt(char *buf, size_t len, const char *f, ...) __attribute__((format(printf, 3, 4)));
static void fmt(char *buf, size_t len, const char *f, ...) {
    va_list ap;
    va_start(ap, f);
    int n = vsnprintf(buf, len, f, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= len) buf[0] = '\0';
}

static void make_dir(char *buf, size_t len) {
    const char *tmp = getenv("TMPDIR");
    fmt(buf, len, "%s/qd-service-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(buf)) buf[0] = '\0';
}

/* A config on data_dir: one CPU worker, no model roots, no default calibration. */
static qd_config config_on(const char *data_dir) {
    qd_config c;
    qd_error err = {0};
    if (qd_config_init_defaults(&c, &err) != QD_OK) memset(&c, 0, sizeof c);
    free(c.data_dir);
    c.data_dir = strdup(data_dir);
    c.workers.cpu = 1;
    return c;
}

static void add_root(qd_config *c, const char *root) {
    char **p = realloc(c->model_roots, (c->n_model_roots + 1) * sizeof *p);
    if (!p) return;
    c->model_roots = p;
    c->model_roots[c->n_model_roots++] = strdup(root);
}

static int cmp_file(const void *a, const void *b) {
    return strcmp(((const struct qd_store_file *)a)->name,
                  ((const struct qd_store_file *)b)->name);
}

/* The manifest of the named files of dir (sorted). */
static int manifest_of(const char *dir, const char *const *names, size_t n,
                       struct qd_store_file **ret) {
    struct qd_store_file *f = calloc(n, sizeof *f);
    if (!f) return -1;
    for (size_t i = 0; i < n; i++) {
        char path[PATH_MAX];
        qd_error err = {0};
        fmt(path, sizeof path, "%s/%s", dir, names[i]);
        f[i].name = strdup(names[i]);
        if (!f[i].name || qd_store_hash_file(path, f[i].sha256, &f[i].size, &err) != QD_OK) {
            qd_store_files_free(f, n);
            return -1;
        }
    }
    qsort(f, n, sizeof *f, cmp_file);
    *ret = f;
    return 0;
}

static const char *const MODEL_FILES[] = {"LICENSE", "SOURCE.md", "config.json",
                                          "model.safetensors", "tokenizer.bin"};
#define N_MODEL_FILES (sizeof MODEL_FILES / sizeof MODEL_FILES[0])

/* Upload the named files of dir as one bundle, as caller who, in chunks of at most 256 KiB. */
static int upload_as(struct qd_service *svc, const qd_caller *who, const char *dir,
                     const char *const *names, size_t n, qd_bundle_kind kind,
                     char digest[QD_STORE_HEX_LEN + 1]) {
    struct qd_store_file *files = NULL;
    if (manifest_of(dir, names, n, &files) != 0) return -1;
    qd_error err = {0};
    struct qd_upload *up = NULL;
    qd_bundle_status st = {0};
    int rc = qd_service_upload_begin(svc, who, kind, files, n, NULL, &up, &err) == QD_OK &&
                     qd_service_upload_status(up, &st, &err) == QD_OK
                 ? 0
                 : -1;
    if (rc) fprintf(stderr, "upload_begin: %s\n", qd_error_text(&err));
    enum { CHUNK = 256 << 10 };
    char *buf = malloc(CHUNK);
    /* As a client does: skip what is complete, resume the rest at the held offset. */
    for (size_t i = 0; rc == 0 && i < n && buf; i++) {
        char path[PATH_MAX];
        if (st.files[i].complete) continue;
        fmt(path, sizeof path, "%s/%s", dir, files[i].name);
        FILE *fp = fopen(path, "rb");
        uint64_t off = st.files[i].held_bytes;
        if (fp && fseek(fp, (long)off, SEEK_SET) != 0) rc = -1;
        size_t got;
        while (rc == 0 && fp && (got = fread(buf, 1, CHUNK, fp)) > 0) {
            if (qd_service_upload_chunk(up, (int64_t)i, NULL, off, buf, got, &err) != QD_OK) {
                fprintf(stderr, "upload_chunk %s: %s\n", files[i].name, qd_error_text(&err));
                rc = -1;
            }
            off += got;
        }
        if (!fp) rc = -1;
        else fclose(fp);
    }
    free(buf);
    qd_bundle_status_free(&st);
    if (rc == 0 && qd_service_upload_status(up, &st, &err) == QD_OK && st.complete)
        memcpy(digest, st.digest, QD_STORE_HEX_LEN + 1);
    else rc = -1;
    qd_bundle_status_free(&st);
    qd_service_upload_end(up);
    qd_store_files_free(files, n);
    return rc;
}

static int upload(struct qd_service *svc, const char *dir, const char *const *names, size_t n,
                  qd_bundle_kind kind, char digest[QD_STORE_HEX_LEN + 1]) {
    return upload_as(svc, NULL, dir, names, n, kind, digest);
}

static int upload_model(struct qd_service *svc, char digest[QD_STORE_HEX_LEN + 1]) {
    return upload(svc, MODEL_DIR, MODEL_FILES, N_MODEL_FILES, QD_BUNDLE_MODEL, digest);
}

static int upload_calib(struct qd_service *svc, char digest[QD_STORE_HEX_LEN + 1]) {
    static const char *const names[] = {"calib.safetensors"};
    return upload(svc, CALIB_DIR, names, 1, QD_BUNDLE_CALIBRATION, digest);
}

static qd_spec rtn_spec(void) {
    qd_spec s = {0};
    s.method = QD_SPEC_METHOD_RTN;
    s.format = QD_SPEC_FORMAT_GPTQ;
    s.group_size = 32;
    return s;
}

static qd_spec awq_spec(const char *calib_digest, uint32_t rows, uint32_t seq_len) {
    qd_spec s = {0};
    s.method = QD_SPEC_METHOD_AWQ;
    s.format = QD_SPEC_FORMAT_AWQ;
    s.group_size = 32;
    s.calibration.rows = rows;
    s.calibration.seq_len = seq_len;
    if (calib_digest) snprintf(s.calibration.digest, sizeof s.calibration.digest, "%s",
                               calib_digest);
    return s;
}

static qd_err submit(struct qd_service *svc, const char *digest, const char *path,
                     const qd_spec *spec, qd_quantize_outcome *outcome, qd_job_snapshot *job,
                     qd_artifact_entry *art, qd_error *err) {
    qd_quantize_request req = {.model_digest = digest, .model_path = path, .spec = spec,
                               .label = "test"};
    return qd_service_quantize(svc, &req, outcome, job, art, NULL, err);
}

/* Every event of a job up to its DONE (at most cap), checking seq runs 1, 2, ... */
static size_t watch_all(struct qd_service *svc, const char *id, qd_job_event *evs, size_t cap) {
    size_t n = 0;
    uint64_t after = 0;
    for (int waited = 0; n < cap && waited < 600;) {
        qd_job_event ev;
        qd_error err = {0};
        qd_err rc = qd_service_watch_next(svc, NULL, id, after, 500, &ev, &err);
        if (rc == QD_ERR_DEADLINE) {
            waited++;
            continue;
        }
        QD_CHECK_OK(rc, &err);
        if (rc != QD_OK) break;
        QD_CHECK_EQ_INT(ev.seq, after + 1);
        after = ev.seq;
        evs[n++] = ev;
        if (ev.kind == QD_EVENT_DONE) break;
    }
    return n;
}

/* Wait for the first event of kind (and stage, for STAGE events) after seq 0. */
static bool wait_event(struct qd_service *svc, const char *id, qd_job_event_kind kind,
                       qd_job_stage stage) {
    uint64_t after = 0;
    for (int waited = 0; waited < 600;) {
        qd_job_event ev;
        qd_error err = {0};
        qd_err rc = qd_service_watch_next(svc, NULL, id, after, 500, &ev, &err);
        if (rc == QD_ERR_DEADLINE) {
            waited++;
            continue;
        }
        if (rc != QD_OK) return false;
        after = ev.seq;
        if (ev.kind == kind && (kind != QD_EVENT_STAGE || ev.stage == stage)) return true;
        if (ev.kind == QD_EVENT_DONE) return false;
    }
    return false;
}

static qd_job_event *events_buf(void) { return calloc(256, sizeof(qd_job_event)); }

/* What `quantd quantize MODEL_DIR ... [--calib CALIB_FILE] -o out` writes, by its calls. */
static int reference_artifact(const qd_spec *want, bool calibrated, const char *out) {
    qd_spec spec = {0};
    qd_error err = {0};
    qd_model *m = NULL;
    qd_job_result res = {0};
    int32_t *tok = NULL;
    int64_t rows = 0, len = 0;
    int rc = -1;
    if (qd_spec_copy(&spec, want, &err) != QD_OK) return -1;
    spec.calibration.digest[0] = '\0';
    if (calibrated) spec.calibration.path = strdup(CALIB_FILE);
    if (qd_spec_resolve(&spec, NULL, &err) != QD_OK || qd_model_open(MODEL_DIR, &m, &err))
        goto done;
    if (calibrated) {
        if (qd_token_set_load(CALIB_FILE, spec.calibration.rows, spec.calibration.seq_len, &tok,
                              &rows, &len, &err) != QD_OK)
            goto done;
        if (!tok || qd_spec_hash_calibration(&spec, &err) != QD_OK) goto done;
    }
    qd_run_opts run = {0};
    if (qd_job_quantize(m, &spec, tok, rows, len, NULL, &run, &res, &err) != QD_OK) goto done;
    rc = qd_artifact_write(MODEL_DIR, m, &spec, &res, out, 0, &err) == QD_OK ? 0 : -1;
    qd_job_result_free(&res);
done:
    if (rc) fprintf(stderr, "reference: %s\n", qd_error_text(&err));
    free(tok);
    qd_model_free(m);
    qd_spec_free(&spec);
    return rc;
}

static bool same_bytes(const char *a, const char *b) {
    char *x = NULL, *y = NULL;
    size_t nx = 0, ny = 0;
    qd_error err = {0};
    bool same = qd_read_file(a, (size_t)1 << 30, &x, &nx, &err) == QD_OK &&
                qd_read_file(b, (size_t)1 << 30, &y, &ny, &err) == QD_OK && nx == ny &&
                memcmp(x, y, nx) == 0;
    free(x);
    free(y);
    return same;
}

static size_t count_files(const char *dir) {
    DIR *d = opendir(dir);
    size_t n = 0;
    struct dirent *de;
    while (d && (de = readdir(d)) != NULL) n += de->d_name[0] != '.';
    if (d) closedir(d);
    return n;
}

/* The service's artifact id against a reference built here: same files, same bytes. */
static void check_matches_reference(struct qd_service *svc, const char *artifact_id,
                                    const qd_spec *spec, bool calibrated, const char *tmp) {
    char ref[PATH_MAX], dir[PATH_MAX], a[PATH_MAX], b[PATH_MAX];
    fmt(ref, sizeof ref, "%s/reference", tmp);
    QD_REQUIRE(reference_artifact(spec, calibrated, ref) == 0);
    qd_error err = {0};
    struct qd_download *dl = NULL;
    qd_artifact_entry e = {0};
    QD_CHECK_OK(qd_service_download_open(svc, NULL, artifact_id, &dl, &e, dir, sizeof dir, &err),
                &err);
    QD_REQUIRE(dl);
    QD_CHECK_EQ_INT(e.n_files, count_files(ref));
    QD_CHECK(e.n_files >= 3);
    uint64_t total = 0;
    for (size_t i = 0; i < e.n_files; i++) {
        fmt(a, sizeof a, "%s/%s", dir, e.files[i].name);
        fmt(b, sizeof b, "%s/%s", ref, e.files[i].name);
        QD_CHECK_MSG(same_bytes(a, b), "artifact file %s differs from quantd quantize's",
                     e.files[i].name);
        char sha[QD_STORE_HEX_LEN + 1];
        uint64_t size = 0;
        QD_CHECK_OK(qd_store_hash_file(b, sha, &size, &err), &err);
        QD_CHECK_EQ_STR(e.files[i].sha256, sha);
        QD_CHECK_EQ_INT(e.files[i].size, size);
        total += size;
        if (i) QD_CHECK(strcmp(e.files[i - 1].name, e.files[i].name) < 0);
    }
    QD_CHECK_EQ_INT(e.total_bytes, total);
    QD_CHECK_EQ_INT(e.format, spec->format);
    QD_CHECK_EQ_INT(e.spec.method, spec->method);
    /* Pinned by the download: it cannot be deleted now. */
    QD_CHECK_EQ_INT(qd_service_artifact_delete(svc, NULL, artifact_id, &err),
                    QD_ERR_PRECONDITION);
    qd_error_clear(&err);
    qd_service_download_close(dl);
    qd_artifact_entry_free(&e);
    (void)qd_remove_tree(ref, NULL);
}

/* ---- uploads ------------------------------------------------------------------------------- */

QD_TEST(uploads_resume_and_refuse) {
    char tmp[PATH_MAX], data[PATH_MAX];
    make_dir(tmp, sizeof tmp);
    QD_REQUIRE(tmp[0]);
    fmt(data, sizeof data, "%s/data", tmp);
    qd_config cfg = config_on(data);
    cfg.limits.max_upload_bytes = 4 << 20;
    qd_error err = {0};
    struct qd_service *svc = NULL;
    QD_CHECK_OK(qd_service_open(&cfg, &svc, &err), &err);
    QD_REQUIRE(svc);

    struct qd_store_file *files = NULL;
    QD_REQUIRE(manifest_of(MODEL_DIR, MODEL_FILES, N_MODEL_FILES, &files) == 0);
    size_t cfg_i = 2; /* config.json, in manifest order */
    QD_CHECK_EQ_STR(files[cfg_i].name, "config.json");
    char *text = NULL;
    size_t text_len = 0;
    QD_REQUIRE(qd_read_file(MODEL_DIR "/config.json", 1 << 20, &text, &text_len, &err) ==
               QD_OK);

    /* Unknown digest; a manifest is always answered. */
    qd_bundle_status st = {0};
    QD_CHECK_EQ_INT(qd_service_bundle_stat(svc, NULL, "0123456789abcdef0123456789abcdef0123456789ab"
                                                "cdef0123456789abcdef", NULL, 0, &st, &err),
                    QD_ERR_NOT_FOUND);
    qd_error_clear(&err);
    QD_CHECK_OK(qd_service_bundle_stat(svc, NULL, NULL, files, N_MODEL_FILES, &st, &err), &err);
    QD_CHECK_EQ_INT(st.kind, QD_BUNDLE_UNSPECIFIED);
    QD_CHECK(!st.complete);
    QD_CHECK_EQ_INT(st.held_bytes, 0);
    qd_bundle_status_free(&st);

    /* First stream: 100 bytes of config.json, then it ends. */
    struct qd_upload *up = NULL;
    QD_CHECK_OK(qd_service_upload_begin(svc, NULL, QD_BUNDLE_MODEL, files, N_MODEL_FILES, NULL, &up,
                                        &err), &err);
    QD_REQUIRE(up);
    QD_CHECK_OK(qd_service_upload_chunk(up, -1, "config.json", 0, text, 100, &err), &err);
    /* A second stream on the same file meanwhile is refused. */
    struct qd_upload *up2 = NULL;
    QD_CHECK_OK(qd_service_upload_begin(svc, NULL, QD_BUNDLE_MODEL, files, N_MODEL_FILES, NULL,
                                        &up2, &err), &err);
    QD_CHECK_EQ_INT(qd_service_upload_chunk(up2, (int64_t)cfg_i, NULL, 100, text + 100, 10,
                                            &err), QD_ERR_PRECONDITION);
    QD_CHECK_MSG(strstr(err.msg, "config.json"), "message: %s", err.msg);
    qd_error_clear(&err);
    qd_service_upload_end(up2);
    qd_service_upload_end(up);

    /* The status holds the durable prefix; resuming elsewhere is refused, naming both. */
    QD_CHECK_OK(qd_service_upload_begin(svc, NULL, QD_BUNDLE_MODEL, files, N_MODEL_FILES, NULL, &up,
                                        &err), &err);
    QD_CHECK_OK(qd_service_upload_status(up, &st, &err), &err);
    QD_CHECK_EQ_INT(st.files[cfg_i].held_bytes, 100);
    QD_CHECK_EQ_INT(st.held_bytes, 100);
    QD_CHECK_EQ_INT(st.kind, QD_BUNDLE_MODEL);
    qd_bundle_status_free(&st);
    QD_CHECK_EQ_INT(qd_service_upload_chunk(up, (int64_t)cfg_i, NULL, 0, text, 50, &err),
                    QD_ERR_PRECONDITION);
    QD_CHECK_MSG(strstr(err.msg, "config.json") && strstr(err.msg, "100"), "message: %s",
                 err.msg);
    qd_error_clear(&err);
    /* Past the declared size. */
    QD_CHECK_EQ_INT(qd_service_upload_chunk(up, (int64_t)cfg_i, NULL, 100, text,
                                            text_len - 99, &err), QD_ERR_INVALID_ARG);
    QD_CHECK_MSG(strstr(err.msg, "config.json"), "message: %s", err.msg);
    qd_error_clear(&err);
    QD_CHECK_EQ_INT(qd_service_upload_chunk(up, 99, NULL, 0, text, 1, &err), QD_ERR_INVALID_ARG);
    qd_error_clear(&err);
    /* Resume at 100 and finish. */
    QD_CHECK_OK(qd_service_upload_chunk(up, (int64_t)cfg_i, NULL, 100, text + 100,
                                        text_len - 100, &err), &err);
    QD_CHECK_OK(qd_service_upload_status(up, &st, &err), &err);
    QD_CHECK(st.files[cfg_i].complete);
    QD_CHECK_EQ_INT(st.files[cfg_i].held_bytes, text_len);
    QD_CHECK(!st.complete);
    qd_bundle_status_free(&st);
    QD_CHECK_EQ_INT(qd_service_upload_chunk(up, (int64_t)cfg_i, NULL, 0, text, 10, &err),
                    QD_ERR_EXISTS);
    qd_error_clear(&err);
    qd_service_upload_end(up);

    /* A file whose bytes do not hash to its declared sha256: CORRUPT, bytes dropped. */
    struct qd_store_file bad = files[cfg_i];
    memcpy(bad.sha256, files[0].sha256, sizeof bad.sha256); /* LICENSE's */
    bad.size = text_len;
    QD_CHECK_OK(qd_service_upload_begin(svc, NULL, QD_BUNDLE_MODEL, &bad, 1, NULL, &up, &err),
                &err);
    QD_CHECK_EQ_INT(qd_service_upload_chunk(up, 0, NULL, 0, text, text_len, &err),
                    QD_ERR_CORRUPT);
    QD_CHECK_MSG(strstr(err.msg, "config.json"), "message: %s", err.msg);
    qd_error_clear(&err);
    QD_CHECK_OK(qd_service_upload_status(up, &st, &err), &err);
    QD_CHECK_EQ_INT(st.files[0].held_bytes, 0);
    qd_bundle_status_free(&st);
    qd_service_upload_end(up);

    /* Names, kinds, digests and sizes refused at the header. */
    const char *bad_names[] = {"../x", "/etc/passwd", "a//b", "a/./b", "a/", ""};
    for (size_t i = 0; i < sizeof bad_names / sizeof bad_names[0]; i++) {
        struct qd_store_file f = files[cfg_i];
        f.name = (char *)bad_names[i];
        QD_CHECK_EQ_INT(qd_service_upload_begin(svc, NULL, QD_BUNDLE_MODEL, &f, 1, NULL, &up, &err),
                        QD_ERR_INVALID_ARG);
        QD_CHECK_MSG(strstr(err.msg, "files[0].name"), "'%s': %s", bad_names[i], err.msg);
        qd_error_clear(&err);
    }
    QD_CHECK_EQ_INT(qd_service_upload_begin(svc, NULL, QD_BUNDLE_UNSPECIFIED, files, N_MODEL_FILES,
                                            NULL, &up, &err), QD_ERR_INVALID_ARG);
    qd_error_clear(&err);
    QD_CHECK_EQ_INT(qd_service_upload_begin(svc, NULL, QD_BUNDLE_MODEL, files, N_MODEL_FILES,
                                            files[0].sha256, &up, &err), QD_ERR_INVALID_ARG);
    qd_error_clear(&err);
    struct qd_store_file big = files[cfg_i];
    big.size = (uint64_t)5 << 20; /* above max_upload_bytes (4 MiB) */
    QD_CHECK_EQ_INT(qd_service_upload_begin(svc, NULL, QD_BUNDLE_MODEL, &big, 1, NULL, &up, &err),
                    QD_ERR_TOO_LARGE);
    qd_error_clear(&err);

    /* The whole bundle, then by digest it is complete. */
    char digest[QD_STORE_HEX_LEN + 1] = "";
    QD_CHECK(upload_model(svc, digest) == 0);
    QD_CHECK_OK(qd_service_bundle_stat(svc, NULL, digest, NULL, 0, &st, &err), &err);
    QD_CHECK(st.complete);
    QD_CHECK_EQ_INT(st.n_files, N_MODEL_FILES);
    QD_CHECK_EQ_INT(st.kind, QD_BUNDLE_MODEL);
    QD_CHECK_EQ_INT(st.held_bytes, st.total_bytes);
    qd_bundle_status_free(&st);
    qd_service_info info;
    QD_CHECK_OK(qd_service_info_get(svc, &info, &err), &err);
    QD_CHECK(info.blob_bytes >= st.total_bytes && info.blob_bytes > 3000000);
    QD_CHECK_EQ_INT(info.max_bundle_bytes, 4 << 20);

    free(text);
    qd_store_files_free(files, N_MODEL_FILES);
    qd_service_close(svc);
    qd_config_free(&cfg);
    (void)qd_remove_tree(tmp, NULL);
}

/* devices naming only a GPU this machine does not have (or that has no GPU worker yet): the
 * jobs still run, on the CPU, and the server info says so. */
QD_TEST(gpu_only_devices_fall_back_to_cpu) {
    char tmp[PATH_MAX], data[PATH_MAX];
    make_dir(tmp, sizeof tmp);
    QD_REQUIRE(tmp[0]);
    fmt(data, sizeof data, "%s/data", tmp);
    qd_config cfg = config_on(data);
    cfg.workers.cpu = 0;
    free(cfg.devices[0]);
    cfg.devices[0] = strdup("cuda:0");
    qd_error err = {0};
    struct qd_service *svc = NULL;
    QD_CHECK_OK(qd_service_open(&cfg, &svc, &err), &err);
    QD_REQUIRE(svc);
    qd_service_info info;
    QD_CHECK_OK(qd_service_info_get(svc, &info, &err), &err);
    QD_CHECK_EQ_INT(info.n_workers, 1);
    QD_CHECK(info.n_devices >= 1);
    QD_CHECK_MSG(strncmp(info.devices[0], "cpu", 3) == 0 && strstr(info.devices[0], "fall back"),
                 "devices[0]: %s", info.devices[0]);
    char digest[QD_STORE_HEX_LEN + 1];
    QD_REQUIRE(upload_model(svc, digest) == 0);
    qd_spec spec = rtn_spec();
    qd_quantize_outcome out = 0;
    qd_job_snapshot job = {0};
    QD_CHECK_OK(submit(svc, digest, NULL, &spec, &out, &job, NULL, &err), &err);
    qd_job_event *evs = events_buf();
    QD_REQUIRE(evs);
    size_t n = watch_all(svc, job.id, evs, 256);
    QD_CHECK(n >= 1 && evs[n - 1].kind == QD_EVENT_DONE &&
             evs[n - 1].done_state == QD_JOB_SUCCEEDED);
    free(evs);
    qd_job_snapshot_free(&job);
    qd_service_close(svc);
    qd_config_free(&cfg);
    (void)qd_remove_tree(tmp, NULL);
}

/* ---- jobs ---------------------------------------------------------------------------------- */

/* RTN by digest: events in order, the artifact equals the command's, then a cache hit, and
 * the same model by path (same files, same digest) hits too. */
QD_TEST(rtn_job_events_artifact_and_cache) {
    char tmp[PATH_MAX], data[PATH_MAX];
    make_dir(tmp, sizeof tmp);
    QD_REQUIRE(tmp[0]);
    fmt(data, sizeof data, "%s/data", tmp);
    qd_config cfg = config_on(data);
    add_root(&cfg, MODELS_ROOT);
    qd_error err = {0};
    struct qd_service *svc = NULL;
    QD_CHECK_OK(qd_service_open(&cfg, &svc, &err), &err);
    QD_REQUIRE(svc);
    char digest[QD_STORE_HEX_LEN + 1];
    QD_REQUIRE(upload_model(svc, digest) == 0);

    qd_spec spec = rtn_spec();
    qd_quantize_outcome out = 0;
    qd_job_snapshot job = {0};
    qd_artifact_entry art = {0};
    QD_CHECK_OK(submit(svc, digest, NULL, &spec, &out, &job, &art, &err), &err);
    QD_CHECK_EQ_INT(out, QD_QUANTIZE_QUEUED);
    QD_CHECK(job.state == QD_JOB_QUEUED || job.state == QD_JOB_RUNNING);
    QD_CHECK_EQ_STR(job.model_digest, digest);
    QD_CHECK_EQ_INT(job.spec.bits, 4); /* resolved */
    QD_CHECK_EQ_STR(job.label, "test");
    char spec_digest[QD_SPEC_DIGEST_HEX];
    qd_spec resolved = rtn_spec();
    QD_CHECK_OK(qd_spec_digest(&resolved, spec_digest, &err), &err);
    QD_CHECK_EQ_STR(job.spec_digest, spec_digest);

    qd_job_event *evs = events_buf();
    QD_REQUIRE(evs);
    size_t n = watch_all(svc, job.id, evs, 256);
    QD_REQUIRE(n >= 2);
    QD_CHECK_EQ_INT(evs[0].kind, QD_EVENT_QUEUED);
    QD_CHECK_EQ_INT(evs[n - 1].kind, QD_EVENT_DONE);
    QD_CHECK_EQ_INT(evs[n - 1].done_state, QD_JOB_SUCCEEDED);
    QD_CHECK(evs[n - 1].artifact_id[0]);
    /* Stages in order, no calibration for RTN, one LAYER per decoder layer in order. */
    int last_stage = 0, n_layers = 0;
    double last_fraction = 0;
    for (size_t i = 0; i < n; i++) {
        QD_CHECK(evs[i].progress.fraction >= last_fraction);
        last_fraction = evs[i].progress.fraction;
        if (evs[i].kind == QD_EVENT_STAGE) {
            QD_CHECK((int)evs[i].stage > last_stage);
            QD_CHECK(evs[i].stage != QD_STAGE_CALIBRATE);
            last_stage = (int)evs[i].stage;
        }
        if (evs[i].kind == QD_EVENT_LAYER) {
            QD_CHECK_EQ_INT(last_stage, QD_STAGE_QUANTIZE);
            QD_CHECK_EQ_INT(evs[i].layer.index, n_layers);
            QD_CHECK_EQ_INT(evs[i].layer.count, N_LAYERS);
            QD_CHECK_EQ_INT(evs[i].layer.n_modules, 7);
            char want[96];
            fmt(want, sizeof want, "model.layers.%d.self_attn.q_proj", n_layers);
            QD_CHECK_EQ_STR(evs[i].layer.modules[0].name, want);
            QD_CHECK_EQ_INT(evs[i].progress.layer, n_layers + 1);
            n_layers++;
        }
    }
    QD_CHECK_EQ_INT(n_layers, N_LAYERS);
    QD_CHECK_EQ_INT(last_stage, QD_STAGE_PUBLISH);
    QD_CHECK_NEAR(evs[n - 1].progress.fraction, 1.0, 1e-12);
    char artifact_id[QD_STORE_ID_LEN + 1];
    memcpy(artifact_id, evs[n - 1].artifact_id, sizeof artifact_id);

    qd_job_snapshot got = {0};
    QD_CHECK_OK(qd_service_job_get(svc, NULL, job.id, &got, &err), &err);
    QD_CHECK_EQ_INT(got.state, QD_JOB_SUCCEEDED);
    QD_CHECK_EQ_STR(got.artifact_id, artifact_id);
    QD_CHECK_EQ_STR(got.device, "cpu");
    QD_CHECK(got.finished_ms >= got.started_ms && got.started_ms >= got.created_ms);
    qd_job_snapshot_free(&got);

    check_matches_reference(svc, artifact_id, &spec, false, tmp);

    /* The same request again: the cache answers, nothing runs. */
    qd_job_snapshot hit = {0};
    qd_artifact_entry hit_art = {0};
    QD_CHECK_OK(submit(svc, digest, NULL, &spec, &out, &hit, &hit_art, &err), &err);
    QD_CHECK_EQ_INT(out, QD_QUANTIZE_CACHE_HIT);
    QD_CHECK_EQ_INT(hit.state, QD_JOB_SUCCEEDED);
    QD_CHECK(hit.cache_hit);
    QD_CHECK_EQ_STR(hit.artifact_id, artifact_id);
    QD_CHECK_EQ_STR(hit_art.id, artifact_id);
    QD_CHECK(strcmp(hit.id, job.id) != 0);
    /* Its one event is DONE. */
    qd_job_event ev;
    QD_CHECK_OK(qd_service_watch_next(svc, NULL, hit.id, 0, 0, &ev, &err), &err);
    QD_CHECK_EQ_INT(ev.kind, QD_EVENT_DONE);
    QD_CHECK_EQ_STR(ev.artifact_id, artifact_id);

    /* By path: the directory's digest is the uploaded bundle's, so the cache answers too. */
    qd_job_snapshot by_path = {0};
    QD_CHECK_OK(submit(svc, NULL, MODEL_DIR, &spec, &out, &by_path, NULL, &err), &err);
    QD_CHECK_EQ_INT(out, QD_QUANTIZE_CACHE_HIT);
    QD_CHECK_EQ_STR(by_path.model_digest, digest);
    QD_CHECK_EQ_STR(by_path.model_path, MODEL_DIR);
    char by_path_id[QD_STORE_ID_LEN + 1];
    memcpy(by_path_id, by_path.id, sizeof by_path_id);
    qd_job_snapshot_free(&by_path);
    /* Outside the roots, or escaping them: refused. */
    QD_CHECK_EQ_INT(submit(svc, NULL, CALIB_DIR, &spec, &out, NULL, NULL, &err),
                    QD_ERR_PERMISSION);
    qd_error_clear(&err);
    QD_CHECK_EQ_INT(submit(svc, NULL, MODELS_ROOT "/../data/babyllama", &spec, &out, NULL, NULL,
                           &err), QD_ERR_PERMISSION);
    qd_error_clear(&err);
    QD_CHECK_EQ_INT(submit(svc, NULL, "relative/dir", &spec, &out, NULL, NULL, &err),
                    QD_ERR_INVALID_ARG);
    qd_error_clear(&err);

    /* Listing: newest first; the filter by state. */
    qd_job_snapshot *list = NULL;
    size_t n_list = 0;
    bool more = true;
    QD_CHECK_OK(qd_service_job_list(svc, NULL, NULL, 0, NULL, NULL, 2, &list, &n_list, &more, &err),
                &err);
    QD_CHECK_EQ_INT(n_list, 2);
    QD_CHECK(more);
    if (n_list == 2) {
        QD_CHECK_EQ_STR(list[0].id, by_path_id);
        QD_CHECK_EQ_STR(list[1].id, hit.id);
        /* Next page after the second: the first job, and nothing more. */
        qd_job_snapshot *page = NULL;
        size_t n_page = 0;
        QD_CHECK_OK(qd_service_job_list(svc, NULL, NULL, 0, NULL, list[1].id, 10, &page, &n_page,
                                        &more, &err), &err);
        QD_CHECK_EQ_INT(n_page, 1);
        QD_CHECK(!more);
        if (n_page == 1) QD_CHECK_EQ_STR(page[0].id, job.id);
        for (size_t i = 0; i < n_page; i++) qd_job_snapshot_free(&page[i]);
        free(page);
    }
    for (size_t i = 0; i < n_list; i++) qd_job_snapshot_free(&list[i]);
    free(list);
    qd_job_state want = QD_JOB_FAILED;
    QD_CHECK_OK(qd_service_job_list(svc, NULL, &want, 1, NULL, NULL, 0, &list, &n_list, &more,
                                    &err), &err);
    QD_CHECK_EQ_INT(n_list, 0);
    free(list);

    /* Not found, malformed, terminal cancels. */
    QD_CHECK_EQ_INT(qd_service_job_get(svc, NULL, "0123456789abcdef0123456789abcdef", &got, &err),
                    QD_ERR_NOT_FOUND);
    qd_error_clear(&err);
    QD_CHECK_EQ_INT(qd_service_job_get(svc, NULL, "nope", &got, &err), QD_ERR_INVALID_ARG);
    qd_error_clear(&err);
    QD_CHECK_EQ_INT(qd_service_job_cancel(svc, NULL, job.id, &got, &err), QD_ERR_PRECONDITION);
    QD_CHECK_MSG(strstr(err.msg, "succeeded"), "message: %s", err.msg);
    qd_error_clear(&err);

    qd_service_info info;
    QD_CHECK_OK(qd_service_info_get(svc, &info, &err), &err);
    QD_CHECK_EQ_INT(info.n_artifacts, 1);
    QD_CHECK_EQ_INT(info.n_jobs_queued, 0);
    QD_CHECK(info.cache_bytes > 0);
    char engine[16];
    fmt(engine, sizeof engine, "%d", QD_NUMERICS_VERSION);
    QD_CHECK_EQ_STR(info.engine_version, engine);
    QD_CHECK(info.n_workers >= 1 && info.n_devices >= 1);

    free(evs);
    qd_job_snapshot_free(&job);
    qd_job_snapshot_free(&hit);
    qd_artifact_entry_free(&art);
    qd_artifact_entry_free(&hit_art);
    qd_service_close(svc);
    qd_config_free(&cfg);
    (void)qd_remove_tree(tmp, NULL);
}

/* AWQ with an uploaded calibration set: calibrated stage, measured errors, and the artifact
 * of `quantd quantize --calib FILE --calib-rows 8 --calib-seq-len 32`. The default
 * calibration set stands in for an empty digest. */
QD_TEST(awq_job_matches_cli_and_default_calibration) {
    char tmp[PATH_MAX], data[PATH_MAX];
    make_dir(tmp, sizeof tmp);
    QD_REQUIRE(tmp[0]);
    fmt(data, sizeof data, "%s/data", tmp);
    qd_config cfg = config_on(data);
    qd_error err = {0};
    struct qd_service *svc = NULL;
    QD_CHECK_OK(qd_service_open(&cfg, &svc, &err), &err);
    QD_REQUIRE(svc);
    char model[QD_STORE_HEX_LEN + 1], calib[QD_STORE_HEX_LEN + 1];
    QD_REQUIRE(upload_model(svc, model) == 0);

    /* No set given, no default: refused before queueing. */
    qd_spec spec = awq_spec(NULL, 8, 32);
    qd_quantize_outcome out = 0;
    qd_job_snapshot job = {0};
    QD_CHECK_EQ_INT(submit(svc, model, NULL, &spec, &out, &job, NULL, &err), QD_ERR_PRECONDITION);
    QD_CHECK_EQ_STR(err.msg, "spec.calibration.digest: method awq needs a calibration set: "
                             "upload one (PutModel, kind CALIBRATION) or set "
                             "calibration.default");
    qd_error_clear(&err);
    /* A model bundle is not a calibration set. */
    spec = awq_spec(model, 8, 32);
    QD_CHECK_EQ_INT(submit(svc, model, NULL, &spec, &out, &job, NULL, &err), QD_ERR_INVALID_ARG);
    qd_error_clear(&err);
    /* A spec that does not fit the model fails at submit, naming the field. */
    QD_REQUIRE(upload_calib(svc, calib) == 0);
    spec = awq_spec(calib, 8, 32);
    spec.group_size = 96;
    QD_CHECK(submit(svc, model, NULL, &spec, &out, &job, NULL, &err) != QD_OK);
    QD_CHECK_MSG(strstr(err.msg, "group_size"), "message: %s", err.msg);
    qd_error_clear(&err);

    spec = awq_spec(calib, 8, 32);
    QD_CHECK_OK(submit(svc, model, NULL, &spec, &out, &job, NULL, &err), &err);
    QD_CHECK_EQ_INT(out, QD_QUANTIZE_QUEUED);
    QD_CHECK_EQ_STR(job.spec.calibration.digest, calib);
    qd_job_event *evs = events_buf();
    QD_REQUIRE(evs);
    size_t n = watch_all(svc, job.id, evs, 256);
    QD_REQUIRE(n >= 1);
    QD_CHECK_EQ_INT(evs[n - 1].kind, QD_EVENT_DONE);
    QD_CHECK_MSG(evs[n - 1].done_state == QD_JOB_SUCCEEDED, "job: %s %s", evs[n - 1].error_code,
                 evs[n - 1].error_message);
    bool calibrated = false;
    int n_layers = 0;
    for (size_t i = 0; i < n; i++) {
        if (evs[i].kind == QD_EVENT_STAGE && evs[i].stage == QD_STAGE_CALIBRATE)
            calibrated = true;
        if (evs[i].kind == QD_EVENT_LAYER) {
            n_layers++;
            QD_CHECK(evs[i].layer.error > 0 && evs[i].layer.error < 1);
            QD_CHECK(evs[i].layer.modules[0].error > 0);
            QD_CHECK(evs[i].progress.eta_unix_ms > 0);
        }
    }
    QD_CHECK(calibrated);
    QD_CHECK_EQ_INT(n_layers, N_LAYERS);
    check_matches_reference(svc, evs[n - 1].artifact_id, &spec, true, tmp);
    qd_job_snapshot_free(&job);
    qd_service_close(svc);

    /* With calibration.default set to the same file, "" resolves to the same digest: the
     * same cache key, answered at once. */
    free(cfg.calibration.default_path);
    cfg.calibration.default_path = strdup(CALIB_FILE);
    QD_CHECK_OK(qd_service_open(&cfg, &svc, &err), &err);
    QD_REQUIRE(svc);
    qd_service_info info;
    QD_CHECK_OK(qd_service_info_get(svc, &info, &err), &err);
    QD_CHECK_EQ_STR(info.default_calibration_digest, calib);
    spec = awq_spec(NULL, 8, 32);
    QD_CHECK_OK(submit(svc, model, NULL, &spec, &out, &job, NULL, &err), &err);
    QD_CHECK_EQ_INT(out, QD_QUANTIZE_CACHE_HIT);
    QD_CHECK_EQ_STR(job.spec.calibration.digest, calib);
    qd_job_snapshot_free(&job);

    free(evs);
    qd_service_close(svc);
    qd_config_free(&cfg);
    (void)qd_remove_tree(tmp, NULL);
}

struct racer {
    struct qd_service *svc;
    const char *model;
    qd_err rc;
    qd_quantize_outcome out;
    qd_job_snapshot job;
    qd_error err;
};

static void *race_submit(void *arg) {
    struct racer *r = arg;
    qd_spec spec = rtn_spec();
    r->rc = submit(r->svc, r->model, NULL, &spec, &r->out, &r->job, NULL, &r->err);
    return NULL;
}

/* A slow job X holds the only worker: equal requests, even at once, make one job (QUEUED, then
 * JOINED), the queue limit holds, a queued job is cancelled at once, and X itself stops at its
 * next layer when cancelled. */
QD_TEST(join_and_cancel) {
    char tmp[PATH_MAX], data[PATH_MAX];
    make_dir(tmp, sizeof tmp);
    QD_REQUIRE(tmp[0]);
    fmt(data, sizeof data, "%s/data", tmp);
    qd_config cfg = config_on(data);
    cfg.limits.max_queued_jobs = 2;
    qd_error err = {0};
    struct qd_service *svc = NULL;
    QD_CHECK_OK(qd_service_open(&cfg, &svc, &err), &err);
    QD_REQUIRE(svc);
    char model[QD_STORE_HEX_LEN + 1], calib[QD_STORE_HEX_LEN + 1];
    QD_REQUIRE(upload_model(svc, model) == 0);
    QD_REQUIRE(upload_calib(svc, calib) == 0);

    qd_spec slow = awq_spec(calib, 32, 256);
    qd_quantize_outcome out = 0;
    qd_job_snapshot x = {0}, y1 = {0}, y2 = {0}, z = {0}, c = {0};
    QD_CHECK_OK(submit(svc, model, NULL, &slow, &out, &x, NULL, &err), &err);
    QD_REQUIRE(wait_event(svc, x.id, QD_EVENT_STAGE, QD_STAGE_QUANTIZE));

    /* Two equal requests at once: one job, queued once and joined once. */
    struct racer r1 = {.svc = svc, .model = model}, r2 = {.svc = svc, .model = model};
    pthread_t t1, t2;
    QD_REQUIRE(pthread_create(&t1, NULL, race_submit, &r1) == 0);
    QD_REQUIRE(pthread_create(&t2, NULL, race_submit, &r2) == 0);
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    QD_CHECK_MSG(r1.rc == QD_OK && r2.rc == QD_OK, "submit: %s / %s", r1.err.msg, r2.err.msg);
    QD_CHECK((r1.out == QD_QUANTIZE_QUEUED && r2.out == QD_QUANTIZE_JOINED) ||
             (r1.out == QD_QUANTIZE_JOINED && r2.out == QD_QUANTIZE_QUEUED));
    QD_CHECK_EQ_STR(r1.job.id, r2.job.id);
    qd_spec rtn = rtn_spec();
    QD_CHECK_OK(submit(svc, model, NULL, &rtn, &out, &y1, NULL, &err), &err);
    QD_CHECK_EQ_INT(out, QD_QUANTIZE_JOINED);
    QD_CHECK_EQ_STR(y1.id, r1.job.id);
    QD_CHECK_EQ_INT(y1.queue_position, 0);
    QD_CHECK_EQ_INT(y1.state, QD_JOB_QUEUED);
    QD_CHECK_OK(submit(svc, model, NULL, &rtn, &out, &y2, NULL, &err), &err);
    QD_CHECK_EQ_INT(out, QD_QUANTIZE_JOINED);
    QD_CHECK_EQ_STR(y2.id, y1.id);
    qd_job_snapshot_free(&r1.job);
    qd_job_snapshot_free(&r2.job);

    qd_spec other = rtn_spec();
    other.bits = 8;
    QD_CHECK_OK(submit(svc, model, NULL, &other, &out, &z, NULL, &err), &err);
    QD_CHECK_EQ_INT(out, QD_QUANTIZE_QUEUED);
    QD_CHECK_EQ_INT(z.queue_position, 1);
    /* limits.max_queued_jobs (2) reached: a third queued job is refused. */
    qd_spec third = rtn_spec();
    third.group_size = -1;
    QD_CHECK_EQ_INT(submit(svc, model, NULL, &third, &out, NULL, NULL, &err), QD_ERR_TOO_LARGE);
    QD_CHECK_MSG(strstr(err.msg, "limits.max_queued_jobs"), "message: %s", err.msg);
    qd_error_clear(&err);
    QD_CHECK_OK(qd_service_job_cancel(svc, NULL, z.id, &c, &err), &err);
    QD_CHECK_EQ_INT(c.state, QD_JOB_CANCELLED);
    QD_CHECK_EQ_STR(c.error_code, "CANCELLED");
    qd_job_snapshot_free(&c);
    /* Asked again: the same answer. */
    QD_CHECK_OK(qd_service_job_cancel(svc, NULL, z.id, &c, &err), &err);
    QD_CHECK_EQ_INT(c.state, QD_JOB_CANCELLED);
    qd_job_snapshot_free(&c);
    qd_job_event ev;
    QD_CHECK_OK(qd_service_watch_next(svc, NULL, z.id, 1, 0, &ev, &err), &err);
    QD_CHECK_EQ_INT(ev.kind, QD_EVENT_DONE);
    QD_CHECK_EQ_INT(ev.done_state, QD_JOB_CANCELLED);

    /* The running one: the reply may still say RUNNING, with cancel_requested. */
    QD_CHECK_OK(qd_service_job_cancel(svc, NULL, x.id, &c, &err), &err);
    QD_CHECK(c.cancel_requested);
    QD_CHECK(c.state == QD_JOB_RUNNING || c.state == QD_JOB_CANCELLED);
    qd_job_snapshot_free(&c);
    qd_job_event *evs = events_buf();
    QD_REQUIRE(evs);
    size_t n = watch_all(svc, x.id, evs, 256);
    QD_REQUIRE(n >= 1);
    QD_CHECK_EQ_INT(evs[n - 1].done_state, QD_JOB_CANCELLED);
    QD_CHECK_EQ_STR(evs[n - 1].error_code, "CANCELLED");
    int layers = 0;
    for (size_t i = 0; i < n; i++) layers += evs[i].kind == QD_EVENT_LAYER;
    QD_CHECK(layers < N_LAYERS);

    /* Y then runs, and saw its queue position drop to 0 before it started. */
    n = watch_all(svc, y1.id, evs, 256);
    QD_REQUIRE(n >= 1);
    QD_CHECK_EQ_INT(evs[n - 1].done_state, QD_JOB_SUCCEEDED);
    QD_CHECK_EQ_INT(evs[0].kind, QD_EVENT_QUEUED);

    free(evs);
    qd_job_snapshot_free(&x);
    qd_job_snapshot_free(&y1);
    qd_job_snapshot_free(&y2);
    qd_job_snapshot_free(&z);
    qd_service_close(svc);
    qd_config_free(&cfg);
    (void)qd_remove_tree(tmp, NULL);
}

/* Close with X running and Y queued; reopen: both are queued again (X not failed), the new
 * event lists start with QUEUED, X runs again, and Y, once X is out of the way, succeeds. */
QD_TEST(restart_reruns_queued_and_running_jobs) {
    char tmp[PATH_MAX], data[PATH_MAX];
    make_dir(tmp, sizeof tmp);
    QD_REQUIRE(tmp[0]);
    fmt(data, sizeof data, "%s/data", tmp);
    qd_config cfg = config_on(data);
    qd_error err = {0};
    struct qd_service *svc = NULL;
    QD_CHECK_OK(qd_service_open(&cfg, &svc, &err), &err);
    QD_REQUIRE(svc);
    char model[QD_STORE_HEX_LEN + 1], calib[QD_STORE_HEX_LEN + 1];
    QD_REQUIRE(upload_model(svc, model) == 0);
    QD_REQUIRE(upload_calib(svc, calib) == 0);
    qd_spec slow = awq_spec(calib, 32, 256), rtn = rtn_spec();
    qd_quantize_outcome out = 0;
    qd_job_snapshot x = {0}, y = {0}, got = {0};
    QD_CHECK_OK(submit(svc, model, NULL, &slow, &out, &x, NULL, &err), &err);
    QD_REQUIRE(wait_event(svc, x.id, QD_EVENT_STAGE, QD_STAGE_QUANTIZE));
    QD_CHECK_OK(submit(svc, model, NULL, &rtn, &out, &y, NULL, &err), &err);
    QD_CHECK_EQ_INT(out, QD_QUANTIZE_QUEUED);

    /* A drain refuses new work. */
    qd_service_drain(svc, qd_service_now_mono_ms());
    qd_spec other = rtn_spec();
    other.bits = 8;
    QD_CHECK_EQ_INT(submit(svc, model, NULL, &other, &out, NULL, NULL, &err),
                    QD_ERR_UNAVAILABLE);
    qd_error_clear(&err);
    QD_CHECK_OK(qd_service_job_get(svc, NULL, x.id, &got, &err), &err);
    QD_CHECK_EQ_INT(got.state, QD_JOB_QUEUED); /* drained, not failed */
    qd_job_snapshot_free(&got);
    qd_service_close(svc);

    QD_CHECK_OK(qd_service_open(&cfg, &svc, &err), &err);
    QD_REQUIRE(svc);
    QD_CHECK_OK(qd_service_job_get(svc, NULL, y.id, &got, &err), &err);
    QD_CHECK_EQ_INT(got.state, QD_JOB_QUEUED);
    QD_CHECK_EQ_STR(got.label, "test");
    QD_CHECK_EQ_INT(got.spec.method, QD_SPEC_METHOD_RTN);
    QD_CHECK_EQ_STR(got.spec_digest, y.spec_digest);
    qd_job_snapshot_free(&got);
    qd_job_event ev;
    QD_CHECK_OK(qd_service_watch_next(svc, NULL, y.id, 0, 0, &ev, &err), &err);
    QD_CHECK_EQ_INT(ev.seq, 1);
    QD_CHECK_EQ_INT(ev.kind, QD_EVENT_QUEUED);
    QD_CHECK(wait_event(svc, x.id, QD_EVENT_STAGE, QD_STAGE_QUANTIZE));
    QD_CHECK_OK(qd_service_job_cancel(svc, NULL, x.id, &got, &err), &err);
    qd_job_snapshot_free(&got);
    qd_job_event *evs = events_buf();
    QD_REQUIRE(evs);
    size_t n = watch_all(svc, y.id, evs, 256);
    QD_REQUIRE(n >= 1);
    QD_CHECK_EQ_INT(evs[n - 1].done_state, QD_JOB_SUCCEEDED);
    qd_service_close(svc);

    /* A third start finds nothing to do; finished jobs answer from their rows. */
    QD_CHECK_OK(qd_service_open(&cfg, &svc, &err), &err);
    QD_REQUIRE(svc);
    QD_CHECK_OK(qd_service_job_get(svc, NULL, y.id, &got, &err), &err);
    QD_CHECK_EQ_INT(got.state, QD_JOB_SUCCEEDED);
    QD_CHECK_EQ_INT(got.spec.group_size, 32);
    qd_job_snapshot_free(&got);
    QD_CHECK_OK(qd_service_watch_next(svc, NULL, x.id, 7, 0, &ev, &err), &err);
    QD_CHECK_EQ_INT(ev.kind, QD_EVENT_DONE);
    QD_CHECK_EQ_INT(ev.seq, 8);
    QD_CHECK_EQ_INT(ev.done_state, QD_JOB_CANCELLED);

    free(evs);
    qd_job_snapshot_free(&x);
    qd_job_snapshot_free(&y);
    qd_service_close(svc);
    qd_config_free(&cfg);
    (void)qd_remove_tree(tmp, NULL);
}

/* ---- owners -------------------------------------------------------------------------------- */

/* The number of jobs and artifacts who sees. */
static size_t n_jobs_seen(struct qd_service *svc, const qd_caller *who) {
    qd_job_snapshot *jobs = NULL;
    size_t n = 0;
    qd_error err = {0};
    QD_CHECK_OK(qd_service_job_list(svc, who, NULL, 0, NULL, NULL, 100, &jobs, &n, NULL, &err),
                &err);
    for (size_t i = 0; i < n; i++) qd_job_snapshot_free(&jobs[i]);
    free(jobs);
    return n;
}

static size_t n_artifacts_seen(struct qd_service *svc, const qd_caller *who, const char *id) {
    qd_artifact_entry *arts = NULL;
    size_t n = 0;
    qd_error err = {0};
    QD_CHECK_OK(qd_service_artifact_list(svc, who, &arts, &n, &err), &err);
    for (size_t i = 0; i < n; i++) {
        if (id) QD_CHECK_EQ_STR(arts[i].id, id);
        qd_artifact_entry_free(&arts[i]);
    }
    free(arts);
    return n;
}

/* err's message with every occurrence of id replaced by "ID" (to compare two refusals). */
static void generic(const qd_error *err, const char *id, char *buf, size_t len) {
    const char *m = err->msg, *hit;
    size_t at = 0, n = strlen(id);
    buf[0] = '\0';
    while (at + 3 < len && (hit = strstr(m, id)) != NULL) {
        at += (size_t)snprintf(buf + at, len - at, "%.*sID", (int)(hit - m), m);
        m = hit + n;
    }
    if (at < len) snprintf(buf + at, len - at, "%s", m);
}

#define MISSING_JOB "0123456789abcdef0123456789abcdef"

QD_TEST(owners_see_only_their_own) {
    char tmp[PATH_MAX], data[PATH_MAX], a_msg[512], b_msg[512];
    make_dir(tmp, sizeof tmp);
    QD_REQUIRE(tmp[0]);
    fmt(data, sizeof data, "%s/data", tmp);
    qd_config cfg = config_on(data);
    qd_error err = {0};
    struct qd_service *svc = NULL;
    QD_CHECK_OK(qd_service_open(&cfg, &svc, &err), &err);
    QD_REQUIRE(svc);
    const qd_caller alice = {.owner = "alice"}, bob = {.owner = "bob"};
    const qd_caller admin = {.owner = "ops", .all = true};

    /* Alice uploads and quantizes. */
    char digest[QD_STORE_HEX_LEN + 1];
    QD_REQUIRE(upload_as(svc, &alice, MODEL_DIR, MODEL_FILES, N_MODEL_FILES, QD_BUNDLE_MODEL,
                         digest) == 0);
    qd_spec spec = rtn_spec();
    qd_quantize_request req = {.model_digest = digest, .spec = &spec, .caller = &alice};
    qd_quantize_outcome out = 0;
    qd_job_snapshot job = {0}, other = {0};
    QD_CHECK_OK(qd_service_quantize(svc, &req, &out, &job, NULL, NULL, &err), &err);
    QD_CHECK_EQ_INT(out, QD_QUANTIZE_QUEUED);
    qd_job_event *evs = events_buf();
    QD_REQUIRE(evs);
    size_t n = watch_all(svc, job.id, evs, 256);
    QD_REQUIRE(n >= 1 && evs[n - 1].done_state == QD_JOB_SUCCEEDED);
    char art_id[QD_STORE_ID_LEN + 1];
    fmt(art_id, sizeof art_id, "%s", evs[n - 1].artifact_id);
    free(evs);
    qd_job_event ev;
    QD_CHECK_OK(qd_service_watch_next(svc, &alice, job.id, 0, 0, &ev, &err), &err);

    /* Bob sees none of it, and is answered as for what does not exist. */
    QD_CHECK_EQ_INT(qd_service_job_get(svc, &bob, job.id, &other, &err), QD_ERR_NOT_FOUND);
    generic(&err, job.id, b_msg, sizeof b_msg);
    qd_error_clear(&err);
    QD_CHECK_EQ_INT(qd_service_job_get(svc, &bob, MISSING_JOB, &other, &err), QD_ERR_NOT_FOUND);
    generic(&err, MISSING_JOB, a_msg, sizeof a_msg);
    qd_error_clear(&err);
    QD_CHECK_EQ_STR(b_msg, a_msg);
    QD_CHECK_EQ_INT(qd_service_job_cancel(svc, &bob, job.id, &other, &err), QD_ERR_NOT_FOUND);
    qd_error_clear(&err);
    QD_CHECK_EQ_INT(qd_service_watch_next(svc, &bob, job.id, 0, 0, &ev, &err), QD_ERR_NOT_FOUND);
    qd_error_clear(&err);
    QD_CHECK_EQ_INT(n_jobs_seen(svc, &bob), 0);
    qd_artifact_entry e = {0};
    QD_CHECK_EQ_INT(qd_service_artifact_get(svc, &bob, art_id, &e, &err), QD_ERR_NOT_FOUND);
    QD_CHECK_MSG(strstr(err.msg, "not found"), "message: %s", err.msg);
    qd_error_clear(&err);
    struct qd_download *dl = NULL;
    char adir[PATH_MAX];
    QD_CHECK_EQ_INT(qd_service_download_open(svc, &bob, art_id, &dl, &e, adir, sizeof adir,
                                             &err), QD_ERR_NOT_FOUND);
    qd_error_clear(&err);
    QD_CHECK_EQ_INT(n_artifacts_seen(svc, &bob, NULL), 0);
    qd_bundle_status st = {0};
    QD_CHECK_EQ_INT(qd_service_bundle_stat(svc, &bob, digest, NULL, 0, &st, &err),
                    QD_ERR_NOT_FOUND);
    QD_CHECK_MSG(strstr(err.msg, "never uploaded here"), "message: %s", err.msg);
    qd_error_clear(&err);
    /* Quoting Alice's digest buys nothing: not even the cache's answer. */
    qd_quantize_request breq = {.model_digest = digest, .spec = &spec, .caller = &bob};
    QD_CHECK_EQ_INT(qd_service_quantize(svc, &breq, &out, &other, NULL, NULL, &err),
                    QD_ERR_NOT_FOUND);
    QD_CHECK_MSG(strstr(err.msg, "no such bundle"), "message: %s", err.msg);
    qd_error_clear(&err);

    /* Bob's view of the manifest: nothing held. Bytes that are not the file's are refused
     * and change nothing, for him or for Alice. */
    struct qd_store_file *files = NULL;
    QD_REQUIRE(manifest_of(MODEL_DIR, MODEL_FILES, N_MODEL_FILES, &files) == 0);
    QD_CHECK_OK(qd_service_bundle_stat(svc, &bob, NULL, files, N_MODEL_FILES, &st, &err), &err);
    QD_CHECK(!st.complete);
    QD_CHECK_EQ_INT(st.held_bytes, 0);
    QD_CHECK_EQ_INT(st.kind, QD_BUNDLE_UNSPECIFIED);
    qd_bundle_status_free(&st);
    QD_CHECK_OK(qd_service_bundle_stat(svc, &alice, NULL, files, N_MODEL_FILES, &st, &err), &err);
    QD_CHECK(st.complete);
    QD_CHECK_EQ_INT(st.kind, QD_BUNDLE_MODEL);
    qd_bundle_status_free(&st);
    size_t cfg_i = 0;
    while (cfg_i < N_MODEL_FILES && strcmp(files[cfg_i].name, "config.json") != 0) cfg_i++;
    QD_REQUIRE(cfg_i < N_MODEL_FILES);
    struct qd_upload *up = NULL;
    QD_CHECK_OK(qd_service_upload_begin(svc, &bob, QD_BUNDLE_MODEL, files, N_MODEL_FILES, NULL,
                                        &up, &err), &err);
    QD_REQUIRE(up);
    char *junk = calloc(1, files[cfg_i].size);
    QD_REQUIRE(junk);
    QD_CHECK_EQ_INT(qd_service_upload_chunk(up, (int64_t)cfg_i, NULL, 1, junk, 1, &err),
                    QD_ERR_PRECONDITION);
    QD_CHECK_MSG(strstr(err.msg, "resume at offset 0"), "message: %s", err.msg);
    qd_error_clear(&err);
    QD_CHECK_EQ_INT(qd_service_upload_chunk(up, (int64_t)cfg_i, NULL, 0, junk,
                                            (size_t)files[cfg_i].size, &err), QD_ERR_CORRUPT);
    qd_error_clear(&err);
    free(junk);
    QD_CHECK_OK(qd_service_upload_status(up, &st, &err), &err);
    QD_CHECK(!st.complete);
    QD_CHECK_EQ_INT(st.files[cfg_i].held_bytes, 0);
    qd_bundle_status_free(&st);
    qd_service_upload_end(up);
    QD_CHECK_EQ_INT(qd_service_quantize(svc, &breq, &out, &other, NULL, NULL, &err),
                    QD_ERR_NOT_FOUND);
    qd_error_clear(&err);
    QD_CHECK_OK(qd_service_bundle_stat(svc, &alice, digest, NULL, 0, &st, &err), &err);
    QD_CHECK(st.complete);
    qd_bundle_status_free(&st);

    /* The right bytes: Bob owns the bundle, and the cache answers him with Alice's artifact,
     * which he now owns too; her job stays hers. */
    char bdigest[QD_STORE_HEX_LEN + 1];
    QD_REQUIRE(upload_as(svc, &bob, MODEL_DIR, MODEL_FILES, N_MODEL_FILES, QD_BUNDLE_MODEL,
                         bdigest) == 0);
    QD_CHECK_EQ_STR(bdigest, digest);
    QD_CHECK_OK(qd_service_bundle_stat(svc, &bob, digest, NULL, 0, &st, &err), &err);
    QD_CHECK(st.complete);
    qd_bundle_status_free(&st);
    qd_artifact_entry hit = {0};
    QD_CHECK_OK(qd_service_quantize(svc, &breq, &out, &other, &hit, NULL, &err), &err);
    QD_CHECK_EQ_INT(out, QD_QUANTIZE_CACHE_HIT);
    QD_CHECK_EQ_STR(hit.id, art_id);
    qd_artifact_entry_free(&hit);
    QD_CHECK_EQ_INT(n_artifacts_seen(svc, &bob, art_id), 1);
    QD_CHECK_OK(qd_service_artifact_get(svc, &bob, art_id, &e, &err), &err);
    qd_artifact_entry_free(&e);
    QD_CHECK_EQ_INT(n_jobs_seen(svc, &bob), 1);
    QD_CHECK_OK(qd_service_job_get(svc, &bob, other.id, &job, &err), &err);
    qd_job_snapshot_free(&job);
    QD_CHECK_EQ_INT(n_jobs_seen(svc, &alice), 1);
    QD_CHECK_EQ_INT(qd_service_job_get(svc, &alice, other.id, &job, &err), QD_ERR_NOT_FOUND);
    qd_error_clear(&err);
    QD_CHECK_EQ_INT(n_artifacts_seen(svc, &alice, art_id), 1);
    /* An admin, and a daemon without authentication (NULL), see everything. */
    QD_CHECK_EQ_INT(n_jobs_seen(svc, &admin), 2);
    QD_CHECK_EQ_INT(n_jobs_seen(svc, NULL), 2);
    QD_CHECK_EQ_INT(n_artifacts_seen(svc, &admin, art_id), 1);
    QD_CHECK_OK(qd_service_job_get(svc, &admin, other.id, &job, &err), &err);
    qd_job_snapshot_free(&job);
    QD_CHECK_OK(qd_service_bundle_stat(svc, NULL, digest, NULL, 0, &st, &err), &err);
    qd_bundle_status_free(&st);
    /* A stranger still sees nothing. */
    const qd_caller carol = {.owner = "carol"};
    QD_CHECK_EQ_INT(n_jobs_seen(svc, &carol), 0);
    QD_CHECK_EQ_INT(n_artifacts_seen(svc, &carol, NULL), 0);

    qd_job_snapshot_free(&other);
    qd_store_files_free(files, N_MODEL_FILES);
    qd_service_close(svc);
    qd_config_free(&cfg);
    (void)qd_remove_tree(tmp, NULL);
}

QD_TEST_MAIN()
