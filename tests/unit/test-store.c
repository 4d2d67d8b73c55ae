/*
 * test-store.c - the store: migrations (schema 1 and schema 2 databases open and migrate to
 * the current schema, keeping their rows; schema 3's owners: "" for every older row),
 * resumable verified blob uploads, the manifest digest rule, the artifact registry and its
 * cache key, artifact manifests, startup cleanup, LRU eviction with pins, job recovery, and
 * what schema 2 records for jobs (spec, path, label, codes, re-queue, paging), and owners
 * (add, query, copy into a published artifact, gone with it; job pages per owner). Each test works
 * in its own fresh data directory; "restarts" are a close and a reopen of the store, which is
 * what a daemon killed between two calls sees.
 */
#include <limits.h>
#include <stdarg.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fsutil.h"
#include "store.h"
#include "test.h"

/* Computed outside quantd with sha256sum (see each use). */
#define SHA_EMPTY "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
#define SHA_HELLO "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
#define SHA_X "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"
/* printf '{}\n' | sha256sum, printf '0123456789' | sha256sum */
#define SHA_BRACES "ca3d163bab055381827226140568f3bef7eaac187cebd76878e0b63e9e442356"
#define SHA_DIGITS "84d89877f0d4041efb6bf91a16f0248f2fd573e6af05c19f96bedb9f882f7882"
/* printf 'abcdefghij' | sha256sum */
#define SHA_ABC "72399361da6a7754fec986dca5b7cbaf1c810a28ded4abaf56b2106d06cb78b0"

#define DIGEST_A "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
#define DIGEST_B "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
#define DIGEST_C "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc"

/* snprintf whose truncation empties the result (so a test path can never silently be cut). */
static void fmt_path(char *buf, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void fmt_path(char *buf, size_t len, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, len, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= len) buf[0] = '\0';
}

static int64_t fake_now;
static int64_t fake_clock(void *ctx) {
    (void)ctx;
    return fake_now;
}

static void make_dir(char *buf, size_t len) {
    const char *tmp = getenv("TMPDIR");
    fmt_path(buf, len, "%s/qd-store-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(buf)) buf[0] = '\0';
}

static void remove_dir(const char *dir) { (void)qd_remove_tree(dir, NULL); }

static int write_text(const char *dir, const char *name, const char *text) {
    char path[PATH_MAX];
    fmt_path(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t n = strlen(text);
    int ok = fwrite(text, 1, n, f) == n;
    return fclose(f) == 0 && ok ? 0 : -1;
}

static struct qd_store_key key_of(const char *model, const char *spec, const char *ver) {
    struct qd_store_key k;
    memset(&k, 0, sizeof k);
    fmt_path(k.model_digest, sizeof k.model_digest, "%s", model);
    fmt_path(k.spec_digest, sizeof k.spec_digest, "%s", spec);
    fmt_path(k.numerics_version, sizeof k.numerics_version, "%s", ver);
    return k;
}

static int64_t db_user_version(const char *dir) {
    char path[PATH_MAX];
    fmt_path(path, sizeof path, "%s/quantd.db", dir);
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int64_t v = -1;
    if (sqlite3_open(path, &db) == SQLITE_OK &&
        sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

static void check_integrity(struct qd_store *s) {
    qd_error err = {0};
    QD_CHECK_OK(qd_store_integrity_check(s, &err), &err);
}

/* Publish a directory holding one file of n_bytes under key (model, DIGEST_B, "v1"). */
static int publish_sized(struct qd_store *s, const char *model, size_t n_bytes,
                         struct qd_store_artifact *ret) {
    qd_error err = {0};
    char dir[PATH_MAX];
    if (qd_store_staging_new(s, dir, sizeof dir, &err) != QD_OK) return -1;
    char *text = malloc(n_bytes + 1);
    if (!text) return -1;
    memset(text, 'w', n_bytes);
    text[n_bytes] = '\0';
    int rc = write_text(dir, "model.safetensors", text);
    free(text);
    struct qd_store_key k = key_of(model, DIGEST_B, "v1");
    if (rc == 0 && qd_store_artifact_publish(s, dir, &k, "awq", NULL, ret, &err) != QD_OK) {
        fprintf(stderr, "publish: %s\n", qd_error_text(&err));
        rc = -1;
    }
    return rc;
}

QD_TEST(migrations_fresh_and_reopen) {
    char dir[PATH_MAX];
    make_dir(dir, sizeof dir);
    QD_REQUIRE(dir[0]);
    qd_error err = {0};
    struct qd_store *s = NULL;
    QD_CHECK_OK(qd_store_open(dir, &s, &err), &err);
    QD_REQUIRE(s);
    char path[PATH_MAX];
    const char *subs[] = {"blobs/sha256", "artifacts", "staging", "staging/uploads"};
    for (size_t i = 0; i < 4; i++) {
        fmt_path(path, sizeof path, "%s/%s", dir, subs[i]);
        QD_CHECK_MSG(qd_is_dir(path), "%s missing", path);
    }
    check_integrity(s);
    s = qd_store_close(s);
    QD_CHECK_EQ_INT(db_user_version(dir), QD_STORE_SCHEMA_VERSION);
    /* WAL is persistent in the file header: a plain connection sees it. */
    fmt_path(path, sizeof path, "%s/quantd.db", dir);
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    QD_REQUIRE(sqlite3_open(path, &db) == SQLITE_OK);
    QD_CHECK(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, NULL) == SQLITE_OK);
    QD_CHECK(st && sqlite3_step(st) == SQLITE_ROW &&
             strcmp((const char *)sqlite3_column_text(st, 0), "wal") == 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    /* Reopening migrates nothing and keeps the data. */
    QD_CHECK_OK(qd_store_open(dir, &s, &err), &err);
    QD_REQUIRE(s);
    struct qd_store_job j;
    struct qd_store_key k = key_of(DIGEST_A, DIGEST_B, "v1");
    QD_CHECK_OK(qd_store_job_add(s, &k, &j, &err), &err);
    s = qd_store_close(s);
    QD_CHECK_OK(qd_store_open(dir, &s, &err), &err);
    QD_REQUIRE(s);
    struct qd_store_job j2;
    QD_CHECK_OK(qd_store_job_get(s, j.id, &j2, &err), &err);
    QD_CHECK_EQ_STR(j2.key.spec_digest, DIGEST_B);
    QD_CHECK_EQ_INT(db_user_version(dir), QD_STORE_SCHEMA_VERSION);
    qd_store_close(s);
    remove_dir(dir);
}

QD_TEST(newer_schema_refused) {
    char dir[PATH_MAX];
    make_dir(dir, sizeof dir);
    QD_REQUIRE(dir[0]);
    qd_error err = {0};
    struct qd_store *s = NULL;
    QD_CHECK_OK(qd_store_open(dir, &s, &err), &err);
    s = qd_store_close(s);
    char path[PATH_MAX];
    fmt_path(path, sizeof path, "%s/quantd.db", dir);
    sqlite3 *db = NULL;
    QD_REQUIRE(sqlite3_open(path, &db) == SQLITE_OK);
    QD_CHECK(sqlite3_exec(db, "PRAGMA user_version = 99", NULL, NULL, NULL) == SQLITE_OK);
    sqlite3_close(db);
    QD_CHECK_EQ_INT(qd_store_open(dir, &s, &err), QD_ERR_UNSUPPORTED);
    QD_CHECK(s == NULL);
    QD_CHECK_MSG(strstr(err.msg, "99") && strstr(err.msg, "newer"), "message: %s", err.msg);
    QD_CHECK_EQ_INT(db_user_version(dir), 99); /* untouched */
    remove_dir(dir);
}

QD_TEST(upload_resume_after_restart) {
    char dir[PATH_MAX];
    make_dir(dir, sizeof dir);
    QD_REQUIRE(dir[0]);
    qd_error err = {0};
    struct qd_store *s = NULL;
    QD_CHECK_OK(qd_store_open(dir, &s, &err), &err);
    QD_REQUIRE(s);
    uint64_t held = 99;
    bool complete = true;
    QD_CHECK_OK(qd_store_blob_begin(s, SHA_ABC, 10, &held, &complete, &err), &err);
    QD_CHECK_EQ_INT(held, 0);
    QD_CHECK(!complete);
    QD_CHECK_OK(qd_store_blob_append(s, SHA_ABC, 10, 0, "abcd", 4, &held, &err), &err);
    QD_CHECK_EQ_INT(held, 4);
    s = qd_store_close(s); /* the daemon dies here */

    QD_CHECK_OK(qd_store_open(dir, &s, &err), &err);
    QD_REQUIRE(s);
    QD_CHECK_EQ_INT(qd_store_recovery(s)->n_uploads_resumable, 1);
    QD_CHECK_OK(qd_store_blob_stat(s, SHA_ABC, 10, &held, &complete, &err), &err);
    QD_CHECK_EQ_INT(held, 4);
    QD_CHECK(!complete);
    QD_CHECK_OK(qd_store_blob_begin(s, SHA_ABC, 10, &held, &complete, &err), &err);
    QD_CHECK_EQ_INT(held, 4);
    /* Not the durable offset: refused, nothing written. */
    QD_CHECK_EQ_INT(qd_store_blob_append(s, SHA_ABC, 10, 2, "cdef", 4, &held, &err),
                    QD_ERR_PRECONDITION);
    qd_error_clear(&err);
    /* Past the declared size: refused naming the offset. */
    QD_CHECK_EQ_INT(qd_store_blob_append(s, SHA_ABC, 10, 4, "efghijk", 7, &held, &err),
                    QD_ERR_INVALID_ARG);
    QD_CHECK_MSG(strstr(err.msg, "offset 4"), "message: %s", err.msg);
    qd_error_clear(&err);
    /* Finishing early is refused. */
    QD_CHECK_EQ_INT(qd_store_blob_finish(s, SHA_ABC, 10, &err), QD_ERR_PRECONDITION);
    qd_error_clear(&err);
    QD_CHECK_OK(qd_store_blob_stat(s, SHA_ABC, 10, &held, &complete, &err), &err);
    QD_CHECK_EQ_INT(held, 4);
    QD_CHECK_OK(qd_store_blob_append(s, SHA_ABC, 10, 4, "efghij", 6, &held, &err), &err);
    QD_CHECK_EQ_INT(held, 10);
    QD_CHECK_EQ_INT(qd_store_blob_append(s, SHA_ABC, 10, 10, "k", 1, NULL, &err),
                    QD_ERR_INVALID_ARG);
    QD_CHECK_MSG(strstr(err.msg, "offset 10"), "message: %s", err.msg);
    qd_error_clear(&err);
    QD_CHECK_OK(qd_store_blob_finish(s, SHA_ABC, 10, &err), &err);

    char path[PATH_MAX], want[PATH_MAX];
    QD_CHECK_OK(qd_store_blob_path(s, SHA_ABC, path, sizeof path, &err), &err);
    fmt_path(want, sizeof want, "%s/blobs/sha256/72/%s", dir, &SHA_ABC[2]);
    QD_CHECK_EQ_STR(path, want);
    char *data = NULL;
    size_t len = 0;
    QD_CHECK_OK(qd_read_file(want, 100, &data, &len, &err), &err);
    QD_CHECK(data && len == 10 && memcmp(data, "abcdefghij", 10) == 0);
    free(data);
    fmt_path(path, sizeof path, "%s/staging/uploads/%s.part", dir, SHA_ABC);
    QD_CHECK(!qd_is_file(path));
    QD_CHECK_OK(qd_store_blob_stat(s, SHA_ABC, 10, &held, &complete, &err), &err);
    QD_CHECK(complete && held == 10);
    QD_CHECK_OK(qd_store_blob_begin(s, SHA_ABC, 10, &held, &complete, &err), &err);
    QD_CHECK(complete && held == 10);
    QD_CHECK_EQ_INT(qd_store_blob_append(s, SHA_ABC, 10, 0, "a", 1, NULL, &err),
                    QD_ERR_EXISTS);
    qd_error_clear(&err);
    int fd = -1;
    uint64_t size = 0;
    QD_CHECK_OK(qd_store_blob_open(s, SHA_ABC, &fd, &size, &err), &err);
    QD_CHECK_EQ_INT(size, 10);
    if (fd >= 0) close(fd);
    /* An empty blob is complete at begin + finish. */
    QD_CHECK_OK(qd_store_blob_begin(s, SHA_EMPTY, 0, &held, &complete, &err), &err);
    QD_CHECK_OK(qd_store_blob_finish(s, SHA_EMPTY, 0, &err), &err);
    QD_CHECK_OK(qd_store_blob_stat(s, SHA_EMPTY, 0, &held, &complete, &err), &err);
    QD_CHECK(complete);
    /* Malformed digests never reach the filesystem. */
    QD_CHECK_EQ_INT(qd_store_blob_begin(s, "../../etc/passwd", 1, &held, &complete, &err),
                    QD_ERR_INVALID_ARG);
    qd_error_clear(&err);
    check_integrity(s);
    qd_store_close(s);
    remove_dir(dir);
}

QD_TEST(upload_wrong_digest_is_corrupt) {
    char dir[PATH_MAX];
    make_dir(dir, sizeof dir);
    QD_REQUIRE(dir[0]);
    qd_error err = {0};
    struct qd_store *s = NULL;
    QD_CHECK_OK(qd_store_open(dir, &s, &err), &err);
    QD_REQUIRE(s);
    uint64_t held;
    bool complete;
    /* Announced as "hello\n" (6 bytes), sent as "abcdef". */
    QD_CHECK_OK(qd_store_blob_begin(s, SHA_HELLO, 6, &held, &complete, &err), &err);
    QD_CHECK_OK(qd_store_blob_append(s, SHA_HELLO, 6, 0, "abcdef", 6, &held, &err), &err);
    QD_CHECK_EQ_INT(qd_store_blob_finish(s, SHA_HELLO, 6, &err), QD_ERR_CORRUPT);
    QD_CHECK_MSG(strstr(err.msg, SHA_HELLO), "message: %s", err.msg);
    qd_error_clear(&err);
    char path[PATH_MAX];
    QD_CHECK_EQ_INT(qd_store_blob_path(s, SHA_HELLO, path, sizeof path, &err),
                    QD_ERR_NOT_FOUND);
    qd_error_clear(&err);
    QD_CHECK_OK(qd_store_blob_stat(s, SHA_HELLO, 6, &held, &complete, &err), &err);
    QD_CHECK(!complete && held == 0);
    fmt_path(path, sizeof path, "%s/staging/uploads/%s.part", dir, SHA_HELLO);
    QD_CHECK(!qd_is_file(path));
    /* The right bytes afterwards go through. */
    QD_CHECK_OK(qd_store_blob_begin(s, SHA_HELLO, 6, &held, &complete, &err), &err);
    QD_CHECK_OK(qd_store_blob_append(s, SHA_HELLO, 6, 0, "hello\n", 6, &held, &err), &err);
    QD_CHECK_OK(qd_store_blob_finish(s, SHA_HELLO, 6, &err), &err);
    check_integrity(s);
    qd_store_close(s);
    remove_dir(dir);
}

QD_TEST(manifest_digest_rule) {
    /* printf '%s  0  B.txt\n%s  6  a.txt\n%s  1234567  b/w.bin\n' $E $H $X | sha256sum
     * with E, H, X the three sha256s below: "B" sorts before "a" in memcmp order. */
    static const char *const expect =
        "89d40197b919c74cd724f49188a5ea9c46a3283a91a60e278eb760c93b0b628c";
    struct qd_store_file files[3] = {
        {.name = (char *)"B.txt", .size = 0, .sha256 = SHA_EMPTY},
        {.name = (char *)"a.txt", .size = 6, .sha256 = SHA_HELLO},
        {.name = (char *)"b/w.bin", .size = 1234567, .sha256 = SHA_X},
    };
    qd_error err = {0};
    char hex[QD_STORE_HEX_LEN + 1] = "";
    QD_CHECK_OK(qd_store_manifest_digest(files, 3, hex, &err), &err);
    QD_CHECK_EQ_STR(hex, expect);

    /* Unsorted, duplicate, bad names and bad digests are refused, naming the entry. */
    struct qd_store_file bad[2] = {files[1], files[0]};
    QD_CHECK_EQ_INT(qd_store_manifest_digest(bad, 2, hex, &err), QD_ERR_INVALID_ARG);
    QD_CHECK_MSG(strstr(err.msg, "files[1]"), "message: %s", err.msg);
    qd_error_clear(&err);
    bad[0] = files[0];
    bad[1] = files[0];
    QD_CHECK_EQ_INT(qd_store_manifest_digest(bad, 2, hex, &err), QD_ERR_INVALID_ARG);
    qd_error_clear(&err);
    const char *bad_names[] = {"", "/abs", "a//b", "a/", "../x", "a/./b", "a\\b", "a\nb"};
    for (size_t i = 0; i < sizeof bad_names / sizeof bad_names[0]; i++) {
        struct qd_store_file f = files[1];
        f.name = (char *)bad_names[i];
        QD_CHECK_MSG(qd_store_manifest_digest(&f, 1, hex, &err) == QD_ERR_INVALID_ARG,
                     "name '%s' accepted", bad_names[i]);
        qd_error_clear(&err);
    }
    struct qd_store_file upper = files[1];
    upper.sha256[0] = 'A';
    QD_CHECK_EQ_INT(qd_store_manifest_digest(&upper, 1, hex, &err), QD_ERR_INVALID_ARG);
    qd_error_clear(&err);

    char dir[PATH_MAX];
    make_dir(dir, sizeof dir);
    QD_REQUIRE(dir[0]);
    struct qd_store *s = NULL;
    QD_CHECK_OK(qd_store_open(dir, &s, &err), &err);
    QD_REQUIRE(s);
    QD_CHECK_EQ_INT(qd_store_model_register(s, files, 3, DIGEST_A, hex, &err),
                    QD_ERR_INVALID_ARG);
    qd_error_clear(&err);
    QD_CHECK_OK(qd_store_model_register(s, files, 3, expect, hex, &err), &err);
    QD_CHECK_EQ_STR(hex, expect);
    QD_CHECK_OK(qd_store_model_register(s, files, 3, NULL, hex, &err), &err); /* again: ok */
    struct qd_store_file *got = NULL;
    size_t n = 0;
    QD_CHECK_OK(qd_store_model_files(s, expect, &got, &n, &err), &err);
    QD_CHECK_EQ_INT(n, 3);
    if (n == 3) {
        QD_CHECK_EQ_STR(got[2].name, "b/w.bin");
        QD_CHECK_EQ_INT(got[2].size, 1234567);
        QD_CHECK_EQ_STR(got[1].sha256, SHA_HELLO);
    }
    qd_store_files_free(got, n);
    QD_CHECK_EQ_INT(qd_store_model_files(s, DIGEST_C, &got, &n, &err), QD_ERR_NOT_FOUND);
    qd_error_clear(&err);
    check_integrity(s);
    qd_store_close(s);
    remove_dir(dir);
}

QD_TEST(publish_lookup_list_delete) {
    char dir[PATH_MAX];
    make_dir(dir, sizeof dir);
    QD_REQUIRE(dir[0]);
    qd_error err = {0};
    struct qd_store *s = NULL;
    QD_CHECK_OK(qd_store_open(dir, &s, &err), &err);
    QD_REQUIRE(s);
    qd_store_set_clock(s, fake_clock, NULL);
    fake_now = 1000;

    char stage[PATH_MAX], sub[PATH_MAX];
    QD_CHECK_OK(qd_store_staging_new(s, stage, sizeof stage, &err), &err);
    QD_CHECK(write_text(stage, "config.json", "{}\n") == 0);        /* 3 bytes */
    fmt_path(sub, sizeof sub, "%s/tok", stage);
    QD_CHECK(mkdir(sub, 0755) == 0);
    QD_CHECK(write_text(sub, "tokenizer.json", "0123456789") == 0);  /* 10 bytes */
    struct qd_store_key k = key_of(DIGEST_A, DIGEST_B, "v1");
    struct qd_store_artifact a;
    /* Not a staging dir: refused before anything moves. */
    QD_CHECK_EQ_INT(qd_store_artifact_publish(s, dir, &k, "awq", NULL, &a, &err),
                    QD_ERR_INVALID_ARG);
    qd_error_clear(&err);
    QD_CHECK_OK(qd_store_artifact_publish(s, stage, &k, "awq", NULL, &a, &err), &err);
    QD_CHECK_EQ_INT(a.total_bytes, 13);
    QD_CHECK_EQ_INT(a.created_ms, 1000);
    QD_CHECK(!qd_is_dir(stage));
    char adir[PATH_MAX], path[PATH_MAX];
    QD_CHECK_OK(qd_store_artifact_dir(s, a.id, adir, sizeof adir, &err), &err);
    fmt_path(path, sizeof path, "%s/tok/tokenizer.json", adir);
    QD_CHECK(qd_is_file(path));

    /* Same key again: EXISTS, and the second output stays where it was. */
    char stage2[PATH_MAX];
    QD_CHECK_OK(qd_store_staging_new(s, stage2, sizeof stage2, &err), &err);
    QD_CHECK(write_text(stage2, "x", "x") == 0);
    QD_CHECK_EQ_INT(qd_store_artifact_publish(s, stage2, &k, "awq", NULL, NULL, &err),
                    QD_ERR_EXISTS);
    qd_error_clear(&err);
    QD_CHECK(qd_is_dir(stage2));

    fake_now = 5000;
    struct qd_store_artifact hit;
    QD_CHECK_OK(qd_store_artifact_lookup(s, &k, &hit, &err), &err);
    QD_CHECK_EQ_STR(hit.id, a.id);
    QD_CHECK_EQ_INT(hit.last_used_ms, 5000);
    QD_CHECK_EQ_STR(hit.format, "awq");
    struct qd_store_artifact got;
    QD_CHECK_OK(qd_store_artifact_get(s, a.id, &got, &err), &err);
    QD_CHECK_EQ_INT(got.last_used_ms, 5000);
    QD_CHECK_EQ_INT(got.created_ms, 1000);
    /* Another numerics version is another key. */
    struct qd_store_key k2 = key_of(DIGEST_A, DIGEST_B, "v2");
    QD_CHECK_EQ_INT(qd_store_artifact_lookup(s, &k2, &hit, &err), QD_ERR_NOT_FOUND);
    qd_error_clear(&err);

    struct qd_store_artifact *list = NULL;
    size_t n = 0;
    QD_CHECK_OK(qd_store_artifact_list(s, &list, &n, &err), &err);
    QD_CHECK_EQ_INT(n, 1);
    if (n == 1) QD_CHECK_EQ_STR(list[0].id, a.id);
    free(list);

    QD_CHECK_OK(qd_store_artifact_delete(s, a.id, &err), &err);
    QD_CHECK(!qd_is_dir(adir));
    QD_CHECK_EQ_INT(qd_store_artifact_lookup(s, &k, &hit, &err), QD_ERR_NOT_FOUND);
    qd_error_clear(&err);
    QD_CHECK_EQ_INT(qd_store_artifact_delete(s, a.id, &err), QD_ERR_NOT_FOUND);
    qd_error_clear(&err);
    /* Now the key is free for the second output. */
    QD_CHECK_OK(qd_store_artifact_publish(s, stage2, &k, "gptq", NULL, &a, &err), &err);
    QD_CHECK_EQ_INT(a.total_bytes, 1);
    check_integrity(s);
    qd_store_close(s);
    remove_dir(dir);
}

QD_TEST(open_cleans_staging_and_orphans) {
    char dir[PATH_MAX];
    make_dir(dir, sizeof dir);
    QD_REQUIRE(dir[0]);
    qd_error err = {0};
    struct qd_store *s = NULL;
    QD_CHECK_OK(qd_store_open(dir, &s, &err), &err);
    QD_REQUIRE(s);
    struct qd_store_artifact kept;
    QD_CHECK(publish_sized(s, DIGEST_A, 5, &kept) == 0);
    char stage[PATH_MAX], path[PATH_MAX], orphan[PATH_MAX], part[PATH_MAX], junk[PATH_MAX];
    QD_CHECK_OK(qd_store_staging_new(s, stage, sizeof stage, &err), &err);
    QD_CHECK(write_text(stage, "model.safetensors", "half") == 0);
    uint64_t held;
    bool complete;
    QD_CHECK_OK(qd_store_blob_begin(s, SHA_ABC, 10, &held, &complete, &err), &err);
    QD_CHECK_OK(qd_store_blob_append(s, SHA_ABC, 10, 0, "abc", 3, &held, &err), &err);
    s = qd_store_close(s);
    /* What a crash between rename and insert leaves: a directory with no row. */
    fmt_path(orphan, sizeof orphan, "%s/artifacts/0123456789abcdef0123456789abcdef", dir);
    QD_CHECK(mkdir(orphan, 0755) == 0);
    QD_CHECK(write_text(orphan, "config.json", "{}") == 0);
    fmt_path(junk, sizeof junk, "%s/staging/uploads", dir);
    QD_CHECK(write_text(junk, "notablob.tmp", "zz") == 0);
    fmt_path(junk, sizeof junk, "%s/staging/uploads/notablob.tmp", dir);

    QD_CHECK_OK(qd_store_open(dir, &s, &err), &err);
    QD_REQUIRE(s);
    const struct qd_store_recovery *r = qd_store_recovery(s);
    QD_CHECK(!qd_is_dir(stage));
    QD_CHECK(!qd_is_dir(orphan));
    QD_CHECK(!qd_is_file(junk));
    fmt_path(part, sizeof part, "%s/staging/uploads/%s.part", dir, SHA_ABC);
    QD_CHECK(qd_is_file(part));
    QD_CHECK_EQ_INT(r->n_staging_removed, 2);
    QD_CHECK_EQ_INT(r->n_orphans_removed, 1);
    QD_CHECK_EQ_INT(r->n_uploads_resumable, 1);
    QD_CHECK_OK(qd_store_blob_stat(s, SHA_ABC, 10, &held, &complete, &err), &err);
    QD_CHECK_EQ_INT(held, 3);
    struct qd_store_artifact *list = NULL;
    size_t n = 0;
    QD_CHECK_OK(qd_store_artifact_list(s, &list, &n, &err), &err);
    QD_CHECK_EQ_INT(n, 1);
    if (n == 1) QD_CHECK_EQ_STR(list[0].id, kept.id);
    free(list);
    s = qd_store_close(s);

    /* A row whose directory is gone is dropped, never listed. */
    fmt_path(path, sizeof path, "%s/artifacts/%s", dir, kept.id);
    QD_CHECK_OK(qd_remove_tree(path, &err), &err);
    QD_CHECK_OK(qd_store_open(dir, &s, &err), &err);
    QD_REQUIRE(s);
    QD_CHECK_EQ_INT(qd_store_recovery(s)->n_orphans_removed, 1);
    QD_CHECK_OK(qd_store_artifact_list(s, &list, &n, &err), &err);
    QD_CHECK_EQ_INT(n, 0);
    free(list);
    check_integrity(s);
    qd_store_close(s);
    remove_dir(dir);
}

QD_TEST(lru_eviction_respects_pins) {
    char dir[PATH_MAX];
    make_dir(dir, sizeof dir);
    QD_REQUIRE(dir[0]);
    qd_error err = {0};
    struct qd_store *s = NULL;
    QD_CHECK_OK(qd_store_open(dir, &s, &err), &err);
    QD_REQUIRE(s);
    qd_store_set_clock(s, fake_clock, NULL);
    struct qd_store_artifact a, b, c, tmp;
    fake_now = 100;
    QD_CHECK(publish_sized(s, DIGEST_A, 100, &a) == 0);
    fake_now = 200;
    QD_CHECK(publish_sized(s, DIGEST_B, 100, &b) == 0);
    fake_now = 300;
    QD_CHECK(publish_sized(s, DIGEST_C, 100, &c) == 0);
    /* A is used again, so it becomes the most recent: LRU order is now B, C, A. */
    fake_now = 400;
    struct qd_store_key ka = key_of(DIGEST_A, DIGEST_B, "v1");
    QD_CHECK_OK(qd_store_artifact_lookup(s, &ka, &tmp, &err), &err);
    uint64_t total = 0;
    QD_CHECK_OK(qd_store_artifact_total(s, &total, &err), &err);
    QD_CHECK_EQ_INT(total, 300);
    /* B is held by a download: C goes instead, and nothing more than needed. */
    QD_CHECK_OK(qd_store_artifact_pin(s, b.id, &err), &err);
    QD_CHECK_OK(qd_store_artifact_pin(s, b.id, &err), &err); /* two holders */
    QD_CHECK_EQ_INT(qd_store_artifact_delete(s, b.id, &err), QD_ERR_PRECONDITION);
    qd_error_clear(&err);
    int n_ev = -1;
    QD_CHECK_OK(qd_store_evict(s, 200, &n_ev, &total, &err), &err);
    QD_CHECK_EQ_INT(n_ev, 1);
    QD_CHECK_EQ_INT(total, 200);
    QD_CHECK_EQ_INT(qd_store_artifact_get(s, c.id, &tmp, &err), QD_ERR_NOT_FOUND);
    qd_error_clear(&err);
    QD_CHECK_OK(qd_store_artifact_get(s, a.id, &tmp, &err), &err);
    QD_CHECK_OK(qd_store_artifact_get(s, b.id, &tmp, &err), &err);
    /* Below what the pins hold: everything unpinned goes, the pinned one stays. */
    QD_CHECK_OK(qd_store_evict(s, 50, &n_ev, &total, &err), &err);
    QD_CHECK_EQ_INT(n_ev, 1);
    QD_CHECK_EQ_INT(total, 100);
    QD_CHECK_OK(qd_store_artifact_get(s, b.id, &tmp, &err), &err);
    QD_CHECK_OK(qd_store_artifact_unpin(s, b.id, &err), &err);
    QD_CHECK_OK(qd_store_evict(s, 50, &n_ev, &total, &err), &err);
    QD_CHECK_EQ_INT(n_ev, 0); /* still one holder */
    QD_CHECK_OK(qd_store_artifact_unpin(s, b.id, &err), &err);
    QD_CHECK_EQ_INT(qd_store_artifact_unpin(s, b.id, &err), QD_ERR_PRECONDITION);
    qd_error_clear(&err);
    QD_CHECK_OK(qd_store_evict(s, 50, &n_ev, &total, &err), &err);
    QD_CHECK_EQ_INT(n_ev, 1);
    QD_CHECK_EQ_INT(total, 0);
    char adir[PATH_MAX];
    QD_CHECK_OK(qd_store_artifact_dir(s, b.id, adir, sizeof adir, &err), &err);
    QD_CHECK(!qd_is_dir(adir));
    check_integrity(s);
    qd_store_close(s);
    remove_dir(dir);
}

QD_TEST(job_states_and_recovery) {
    char dir[PATH_MAX];
    make_dir(dir, sizeof dir);
    QD_REQUIRE(dir[0]);
    qd_error err = {0};
    struct qd_store *s = NULL;
    QD_CHECK_OK(qd_store_open(dir, &s, &err), &err);
    QD_REQUIRE(s);
    struct qd_store_key k = key_of(DIGEST_A, DIGEST_B, "v1");
    struct qd_store_job run, done, queued, crashy, j;
    QD_CHECK_OK(qd_store_job_add(s, &k, &run, &err), &err);
    QD_CHECK_OK(qd_store_job_add(s, &k, &done, &err), &err);
    QD_CHECK_OK(qd_store_job_add(s, &k, &queued, &err), &err);
    QD_CHECK_OK(qd_store_job_add(s, &k, &crashy, &err), &err);
    QD_CHECK_OK(qd_store_job_set_state(s, run.id, QD_STORE_JOB_RUNNING, NULL, NULL, &err), &err);
    QD_CHECK_OK(qd_store_job_set_state(s, done.id, QD_STORE_JOB_RUNNING, NULL, NULL, &err),
                &err);
    /* SUCCEEDED needs an artifact id. */
    QD_CHECK_EQ_INT(qd_store_job_set_state(s, done.id, QD_STORE_JOB_SUCCEEDED, NULL, NULL,
                                           &err), QD_ERR_INVALID_ARG);
    qd_error_clear(&err);
    QD_CHECK_OK(qd_store_job_set_state(s, done.id, QD_STORE_JOB_SUCCEEDED, NULL,
                                       "0123456789abcdef0123456789abcdef", &err), &err);
    QD_CHECK_EQ_INT(qd_store_job_set_state(s, done.id, QD_STORE_JOB_RUNNING, NULL, NULL, &err),
                    QD_ERR_PRECONDITION);
    qd_error_clear(&err);
    QD_CHECK_EQ_INT(qd_store_job_set_state(s, queued.id, QD_STORE_JOB_FAILED, "x", NULL, &err),
                    QD_ERR_PRECONDITION);
    qd_error_clear(&err);

    /* crashy takes the daemon down each time it runs. */
    for (int round = 1; round <= QD_STORE_JOB_MAX_ATTEMPTS; round++) {
        QD_CHECK_OK(qd_store_job_set_state(s, crashy.id, QD_STORE_JOB_RUNNING, NULL, NULL,
                                           &err), &err);
        s = qd_store_close(s); /* kill -9 */
        QD_CHECK_OK(qd_store_open(dir, &s, &err), &err);
        QD_REQUIRE(s);
        QD_CHECK_OK(qd_store_job_get(s, crashy.id, &j, &err), &err);
        QD_CHECK_EQ_INT(j.attempts, round);
        if (round < QD_STORE_JOB_MAX_ATTEMPTS) {
            QD_CHECK_EQ_INT(j.state, QD_STORE_JOB_QUEUED);
            QD_CHECK_EQ_INT(j.started_ms, 0);
        } else {
            QD_CHECK_EQ_INT(j.state, QD_STORE_JOB_FAILED);
            QD_CHECK_MSG(strstr(j.error, "interrupted by a restart"), "error: %s", j.error);
            QD_CHECK(j.finished_ms > 0);
            QD_CHECK_EQ_INT(qd_store_recovery(s)->n_jobs_failed, 1);
        }
    }
    /* run was interrupted once in the first round: re-queued there, queued since. */
    QD_CHECK_OK(qd_store_job_get(s, run.id, &j, &err), &err);
    QD_CHECK_EQ_INT(j.state, QD_STORE_JOB_QUEUED);
    QD_CHECK_EQ_INT(j.attempts, 1);
    QD_CHECK_OK(qd_store_job_get(s, done.id, &j, &err), &err);
    QD_CHECK_EQ_INT(j.state, QD_STORE_JOB_SUCCEEDED);
    QD_CHECK_EQ_STR(j.artifact_id, "0123456789abcdef0123456789abcdef");
    QD_CHECK(j.finished_ms >= j.started_ms && j.started_ms > 0);

    struct qd_store_job *list = NULL;
    size_t n = 0;
    QD_CHECK_OK(qd_store_job_list(s, QD_STORE_JOB_QUEUED, &list, &n, &err), &err);
    QD_CHECK_EQ_INT(n, 2);
    free(list);
    QD_CHECK_OK(qd_store_job_set_state(s, queued.id, QD_STORE_JOB_CANCELLED, "by alice", NULL,
                                       &err), &err);
    QD_CHECK_OK(qd_store_job_get(s, queued.id, &j, &err), &err);
    QD_CHECK_EQ_STR(j.error, "by alice");
    QD_CHECK_EQ_STR(qd_store_job_state_name(j.state), "cancelled");
    check_integrity(s);
    qd_store_close(s);
    remove_dir(dir);
}

/* Schema 1, as quantd 0.1 wrote it: the fixture the migration must carry forward. */
static const char SCHEMA_V1[] =
    "CREATE TABLE models (digest TEXT PRIMARY KEY, created_ms INTEGER NOT NULL);"
    "CREATE TABLE model_files (model_digest TEXT NOT NULL REFERENCES models(digest) ON DELETE "
    "  CASCADE, idx INTEGER NOT NULL, name TEXT NOT NULL, size INTEGER NOT NULL CHECK (size >= "
    "  0), sha256 TEXT NOT NULL, PRIMARY KEY (model_digest, idx));"
    "CREATE TABLE artifacts (id TEXT PRIMARY KEY, model_digest TEXT NOT NULL, spec_digest TEXT "
    "  NOT NULL, numerics_version TEXT NOT NULL, format TEXT NOT NULL, job_id TEXT NOT NULL "
    "  DEFAULT '', total_bytes INTEGER NOT NULL CHECK (total_bytes >= 0), created_ms INTEGER "
    "  NOT NULL, last_used_ms INTEGER NOT NULL, state TEXT NOT NULL DEFAULT 'ready' CHECK "
    "  (state IN ('ready')), UNIQUE (model_digest, spec_digest, numerics_version));"
    "CREATE INDEX artifacts_lru ON artifacts(last_used_ms, created_ms, id);"
    "CREATE TABLE jobs (id TEXT PRIMARY KEY, model_digest TEXT NOT NULL, spec_digest TEXT NOT "
    "  NULL, numerics_version TEXT NOT NULL, state TEXT NOT NULL CHECK (state IN ('queued', "
    "  'running','succeeded','failed','cancelled')), attempts INTEGER NOT NULL DEFAULT 0, "
    "  error TEXT NOT NULL DEFAULT '', artifact_id TEXT NOT NULL DEFAULT '', created_ms INTEGER "
    "  NOT NULL, started_ms INTEGER NOT NULL DEFAULT 0, finished_ms INTEGER NOT NULL DEFAULT 0);"
    "CREATE INDEX jobs_state ON jobs(state, created_ms);"
    "INSERT INTO models VALUES ('" DIGEST_C "', 5);"
    "INSERT INTO jobs(id, model_digest, spec_digest, numerics_version, state, created_ms) "
    "  VALUES ('00000000000000000000000000000001', '" DIGEST_A "', '" DIGEST_B "', '1', "
    "  'queued', 7);"
    "INSERT INTO artifacts(id, model_digest, spec_digest, numerics_version, format, "
    "  total_bytes, created_ms, last_used_ms) VALUES ('0000000000000000000000000000000a', '"
    DIGEST_A "', '" DIGEST_B "', '1', 'awq', 13, 8, 8);"
    "PRAGMA user_version = 1;";

QD_TEST(schema_1_database_migrates) {
    char dir[PATH_MAX], path[PATH_MAX], adir[PATH_MAX];
    make_dir(dir, sizeof dir);
    QD_REQUIRE(dir[0]);
    fmt_path(path, sizeof path, "%s/quantd.db", dir);
    sqlite3 *db = NULL;
    QD_REQUIRE(sqlite3_open(path, &db) == SQLITE_OK);
    QD_CHECK(sqlite3_exec(db, SCHEMA_V1, NULL, NULL, NULL) == SQLITE_OK);
    sqlite3_close(db);
    /* The artifact's directory, as schema 1 left it (no manifest recorded). */
    fmt_path(adir, sizeof adir, "%s/artifacts/0000000000000000000000000000000a", dir);
    QD_REQUIRE(qd_mkdir_p(adir, 0755, NULL) == QD_OK);
    QD_CHECK(write_text(adir, "config.json", "{}\n") == 0);
    QD_CHECK(write_text(adir, "z.bin", "0123456789") == 0);
    QD_CHECK_EQ_INT(db_user_version(dir), 1);

    qd_error err = {0};
    struct qd_store *s = NULL;
    QD_CHECK_OK(qd_store_open(dir, &s, &err), &err);
    QD_REQUIRE(s);
    QD_CHECK_EQ_INT(db_user_version(dir), QD_STORE_SCHEMA_VERSION);
    check_integrity(s);
    /* The old job: still queued, with empty schema 2 fields. */
    struct qd_store_job j;
    QD_CHECK_OK(qd_store_job_get(s, "00000000000000000000000000000001", &j, &err), &err);
    QD_CHECK_EQ_INT(j.state, QD_STORE_JOB_QUEUED);
    QD_CHECK_EQ_INT(j.created_ms, 7);
    QD_CHECK(!j.cache_hit);
    QD_CHECK_EQ_STR(j.error_code, "");
    struct qd_store_job_text t = {0};
    QD_CHECK_OK(qd_store_job_text_get(s, j.id, &t, &err), &err);
    QD_CHECK_EQ_STR(t.spec_json, "");
    QD_CHECK(t.model_path == NULL && t.label == NULL);
    qd_store_job_text_free(&t);
    /* The old model has no kind yet; the first to say one wins. */
    int kind = -1;
    QD_CHECK_OK(qd_store_model_kind(s, DIGEST_C, &kind, &err), &err);
    QD_CHECK_EQ_INT(kind, 0);
    QD_CHECK_OK(qd_store_model_set_kind(s, DIGEST_C, 2, &err), &err);
    QD_CHECK_OK(qd_store_model_set_kind(s, DIGEST_C, 1, &err), &err);
    QD_CHECK_OK(qd_store_model_kind(s, DIGEST_C, &kind, &err), &err);
    QD_CHECK_EQ_INT(kind, 2);
    QD_CHECK_EQ_INT(qd_store_model_set_kind(s, DIGEST_A, 1, &err), QD_ERR_NOT_FOUND);
    qd_error_clear(&err);
    /* The old artifact's manifest is computed on first use, then recorded. */
    struct qd_store_file *files = NULL;
    size_t n = 0;
    QD_CHECK_OK(qd_store_artifact_files(s, "0000000000000000000000000000000a", &files, &n,
                                        &err), &err);
    QD_CHECK_EQ_INT(n, 2);
    if (n == 2) {
        QD_CHECK_EQ_STR(files[0].name, "config.json");
        QD_CHECK_EQ_STR(files[0].sha256, SHA_BRACES);
        QD_CHECK_EQ_STR(files[1].name, "z.bin");
        QD_CHECK_EQ_STR(files[1].sha256, SHA_DIGITS);
        QD_CHECK_EQ_INT(files[1].size, 10);
    }
    qd_store_files_free(files, n);
    QD_REQUIRE(write_text(adir, "z.bin", "changed!!!") == 0); /* recorded: not re-hashed */
    QD_CHECK_OK(qd_store_artifact_files(s, "0000000000000000000000000000000a", &files, &n,
                                        &err), &err);
    if (n == 2) QD_CHECK_EQ_STR(files[1].sha256, SHA_DIGITS);
    qd_store_files_free(files, n);
    char *json = NULL;
    QD_CHECK_OK(qd_store_artifact_spec(s, "0000000000000000000000000000000a", &json, &err),
                &err);
    QD_CHECK_EQ_STR(json, "");
    free(json);
    qd_store_close(s);
    remove_dir(dir);
}

/* Schema 2 on top of schema 1, as quantd 0.2 wrote it, with rows of every kind. */
static const char SCHEMA_V2_UP[] =
    "ALTER TABLE models ADD COLUMN kind INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE jobs ADD COLUMN spec_json TEXT NOT NULL DEFAULT '';"
    "ALTER TABLE jobs ADD COLUMN model_path TEXT;"
    "ALTER TABLE jobs ADD COLUMN label TEXT;"
    "ALTER TABLE jobs ADD COLUMN error_code TEXT NOT NULL DEFAULT '';"
    "ALTER TABLE jobs ADD COLUMN cache_hit INTEGER NOT NULL DEFAULT 0;"
    "CREATE INDEX jobs_created ON jobs(created_ms);"
    "ALTER TABLE artifacts ADD COLUMN spec_json TEXT NOT NULL DEFAULT '';"
    "CREATE TABLE artifact_files (artifact_id TEXT NOT NULL REFERENCES artifacts(id) ON DELETE "
    "  CASCADE, idx INTEGER NOT NULL, name TEXT NOT NULL, size INTEGER NOT NULL CHECK (size >= "
    "  0), sha256 TEXT NOT NULL, PRIMARY KEY (artifact_id, idx));"
    "UPDATE models SET kind = 1;"
    "INSERT INTO model_files VALUES ('" DIGEST_C "', 0, 'config.json', 3, '" SHA_BRACES "');"
    "INSERT INTO jobs(id, model_digest, spec_digest, numerics_version, state, created_ms, "
    "  spec_json, label) VALUES ('00000000000000000000000000000002', '" DIGEST_C "', '"
    DIGEST_B "', '1', 'succeeded', 9, '{\"bits\":4}', 'two');"
    "INSERT INTO artifact_files VALUES ('0000000000000000000000000000000a', 0, 'config.json', 3, "
    "  '" SHA_BRACES "');"
    "PRAGMA user_version = 2;";

/* The owners of (kind, id), joined with ',' (for comparing with an expected list). */
static void owners_of(struct qd_store *s, enum qd_store_owner_kind kind, const char *id,
                      char *buf, size_t len) {
    char **o = NULL;
    size_t n = 0;
    qd_error err = {0};
    buf[0] = '\0';
    QD_CHECK_OK(qd_store_owner_list(s, kind, id, &o, &n, &err), &err);
    size_t at = 0;
    for (size_t i = 0; i < n && at < len; i++) {
        int w = snprintf(buf + at, len - at, "%s%s", i ? "," : "", o[i]);
        if (w < 0) break;
        at += (size_t)w;
    }
    qd_store_owners_free(o, n);
}

QD_TEST(schema_2_database_migrates_with_owners) {
    char dir[PATH_MAX], path[PATH_MAX], adir[PATH_MAX], got[256];
    make_dir(dir, sizeof dir);
    QD_REQUIRE(dir[0]);
    fmt_path(path, sizeof path, "%s/quantd.db", dir);
    sqlite3 *db = NULL;
    QD_REQUIRE(sqlite3_open(path, &db) == SQLITE_OK);
    QD_CHECK(sqlite3_exec(db, SCHEMA_V1, NULL, NULL, NULL) == SQLITE_OK);
    QD_CHECK(sqlite3_exec(db, SCHEMA_V2_UP, NULL, NULL, NULL) == SQLITE_OK);
    sqlite3_close(db);
    fmt_path(adir, sizeof adir, "%s/artifacts/0000000000000000000000000000000a", dir);
    QD_REQUIRE(qd_mkdir_p(adir, 0755, NULL) == QD_OK);
    QD_CHECK(write_text(adir, "config.json", "{}\n") == 0);
    QD_CHECK_EQ_INT(db_user_version(dir), 2);

    qd_error err = {0};
    struct qd_store *s = NULL;
    QD_CHECK_OK(qd_store_open(dir, &s, &err), &err);
    QD_REQUIRE(s);
    QD_CHECK_EQ_INT(db_user_version(dir), 3);
    check_integrity(s);
    /* Every row is still there, as it was. */
    struct qd_store_job j;
    QD_CHECK_OK(qd_store_job_get(s, "00000000000000000000000000000002", &j, &err), &err);
    QD_CHECK_EQ_STR(qd_store_job_state_name(j.state), "succeeded");
    QD_CHECK_EQ_INT(j.created_ms, 9);
    struct qd_store_job_text t = {0};
    QD_CHECK_OK(qd_store_job_text_get(s, j.id, &t, &err), &err);
    QD_CHECK_EQ_STR(t.spec_json, "{\"bits\":4}");
    QD_CHECK(t.label && strcmp(t.label, "two") == 0);
    qd_store_job_text_free(&t);
    QD_CHECK_OK(qd_store_job_get(s, "00000000000000000000000000000001", &j, &err), &err);
    QD_CHECK_EQ_INT(j.state, QD_STORE_JOB_QUEUED);
    int kind = -1;
    QD_CHECK_OK(qd_store_model_kind(s, DIGEST_C, &kind, &err), &err);
    QD_CHECK_EQ_INT(kind, 1);
    struct qd_store_file *files = NULL;
    size_t n = 0;
    QD_CHECK_OK(qd_store_model_files(s, DIGEST_C, &files, &n, &err), &err);
    QD_CHECK_EQ_INT(n, 1);
    qd_store_files_free(files, n);
    QD_CHECK_OK(qd_store_artifact_files(s, "0000000000000000000000000000000a", &files, &n,
                                        &err), &err);
    QD_CHECK_EQ_INT(n, 1);
    if (n == 1) QD_CHECK_EQ_STR(files[0].sha256, SHA_BRACES);
    qd_store_files_free(files, n);
    /* ... and belongs to "" alone: the owner of every call while auth is off. */
    bool has = false;
    QD_CHECK_OK(qd_store_owner_has(s, QD_STORE_OWN_JOB, "00000000000000000000000000000001", "",
                                   &has, &err), &err);
    QD_CHECK(has);
    char **o = NULL;
    n = 0;
    QD_CHECK_OK(qd_store_owner_list(s, QD_STORE_OWN_JOB, "00000000000000000000000000000002", &o,
                                    &n, &err), &err);
    QD_CHECK_EQ_INT(n, 1);
    if (n == 1) QD_CHECK_EQ_STR(o[0], "");
    qd_store_owners_free(o, n);
    QD_CHECK_OK(qd_store_owner_has(s, QD_STORE_OWN_ARTIFACT, "0000000000000000000000000000000a",
                                   "", &has, &err), &err);
    QD_CHECK(has);
    QD_CHECK_OK(qd_store_owner_has(s, QD_STORE_OWN_BUNDLE, DIGEST_C, "", &has, &err), &err);
    QD_CHECK(has);
    QD_CHECK_OK(qd_store_owner_has(s, QD_STORE_OWN_BLOB, SHA_BRACES, "", &has, &err), &err);
    QD_CHECK(has);
    QD_CHECK_OK(qd_store_owner_has(s, QD_STORE_OWN_BLOB, SHA_BRACES, "alice", &has, &err), &err);
    QD_CHECK(!has);

    /* A job of alice's after the migration: pages per owner see only their own. */
    struct qd_store_job_new nj = {.key = key_of(DIGEST_A, DIGEST_B, "1"), .spec_json = "{}",
                                  .owner = "alice"};
    struct qd_store_job aj;
    QD_CHECK_OK(qd_store_job_add_ex(s, &nj, &aj, &err), &err);
    owners_of(s, QD_STORE_OWN_JOB, aj.id, got, sizeof got);
    QD_CHECK_EQ_STR(got, "alice");
    struct qd_store_job *rows = NULL;
    bool more = true;
    QD_CHECK_OK(qd_store_job_query_owned(s, "alice", 0, NULL, NULL, 10, &rows, &n, &more, &err),
                &err);
    QD_CHECK_EQ_INT(n, 1);
    if (n == 1) QD_CHECK_EQ_STR(rows[0].id, aj.id);
    QD_CHECK(!more);
    free(rows);
    QD_CHECK_OK(qd_store_job_query_owned(s, "", 0, NULL, NULL, 10, &rows, &n, &more, &err), &err);
    QD_CHECK_EQ_INT(n, 2); /* the two old ones */
    free(rows);
    QD_CHECK_OK(qd_store_job_query_owned(s, NULL, 0, NULL, NULL, 10, &rows, &n, &more, &err),
                &err);
    QD_CHECK_EQ_INT(n, 3);
    free(rows);
    /* Another owner's job as a page token is as unknown as a missing one. */
    QD_CHECK_EQ_INT(qd_store_job_query_owned(s, "alice", 0, NULL,
                                             "00000000000000000000000000000002", 10, &rows, &n,
                                             &more, &err), QD_ERR_NOT_FOUND);
    qd_error_clear(&err);
    QD_CHECK_OK(qd_store_job_query_owned(s, NULL, 0, NULL, "00000000000000000000000000000002", 10,
                                         &rows, &n, &more, &err), &err);
    QD_CHECK_EQ_INT(n, 1); /* job 1 is older */
    free(rows);
    check_integrity(s);
    qd_store_close(s);
    /* Reopening migrates nothing more. */
    QD_CHECK_OK(qd_store_open(dir, &s, &err), &err);
    QD_REQUIRE(s);
    owners_of(s, QD_STORE_OWN_JOB, aj.id, got, sizeof got);
    QD_CHECK_EQ_STR(got, "alice");
    qd_store_close(s);
    remove_dir(dir);
}

QD_TEST(owners_add_query_copy_and_delete) {
    char dir[PATH_MAX], got[256];
    make_dir(dir, sizeof dir);
    QD_REQUIRE(dir[0]);
    qd_error err = {0};
    struct qd_store *s = NULL;
    QD_CHECK_OK(qd_store_open(dir, &s, &err), &err);
    QD_REQUIRE(s);
    /* A set per (kind, id): adding twice keeps one row; kinds do not mix. */
    QD_CHECK_OK(qd_store_owner_add(s, QD_STORE_OWN_BLOB, SHA_HELLO, "bob", &err), &err);
    QD_CHECK_OK(qd_store_owner_add(s, QD_STORE_OWN_BLOB, SHA_HELLO, "alice", &err), &err);
    QD_CHECK_OK(qd_store_owner_add(s, QD_STORE_OWN_BLOB, SHA_HELLO, "bob", &err), &err);
    owners_of(s, QD_STORE_OWN_BLOB, SHA_HELLO, got, sizeof got);
    QD_CHECK_EQ_STR(got, "alice,bob");
    owners_of(s, QD_STORE_OWN_PART, SHA_HELLO, got, sizeof got);
    QD_CHECK_EQ_STR(got, "");
    bool has = true;
    QD_CHECK_OK(qd_store_owner_has(s, QD_STORE_OWN_BUNDLE, SHA_HELLO, "bob", &has, &err), &err);
    QD_CHECK(!has);
    QD_CHECK_OK(qd_store_owner_has(s, QD_STORE_OWN_BLOB, SHA_HELLO, "Bob", &has, &err), &err);
    QD_CHECK(!has);
    QD_CHECK_OK(qd_store_owner_remove(s, QD_STORE_OWN_BLOB, SHA_HELLO, "alice", &err), &err);
    owners_of(s, QD_STORE_OWN_BLOB, SHA_HELLO, got, sizeof got);
    QD_CHECK_EQ_STR(got, "bob");
    QD_CHECK_OK(qd_store_owner_add(s, QD_STORE_OWN_BLOB, SHA_HELLO, "carol", &err), &err);
    QD_CHECK_OK(qd_store_owner_remove(s, QD_STORE_OWN_BLOB, SHA_HELLO, NULL, &err), &err);
    owners_of(s, QD_STORE_OWN_BLOB, SHA_HELLO, got, sizeof got);
    QD_CHECK_EQ_STR(got, "");
    /* Bad arguments name what is wrong. */
    QD_CHECK_EQ_INT(qd_store_owner_add(s, QD_STORE_OWN_COUNT, SHA_HELLO, "x", &err),
                    QD_ERR_INVALID_ARG);
    qd_error_clear(&err);
    QD_CHECK_EQ_INT(qd_store_owner_add(s, QD_STORE_OWN_BLOB, "../x", "x", &err),
                    QD_ERR_INVALID_ARG);
    qd_error_clear(&err);
    QD_CHECK_EQ_INT(qd_store_owner_add(s, QD_STORE_OWN_BLOB, SHA_HELLO, "a\nb", &err),
                    QD_ERR_INVALID_ARG);
    QD_CHECK_MSG(strstr(err.msg, "control character"), "message: %s", err.msg);
    qd_error_clear(&err);

    /* A job's submitter and joiners own the artifact it publishes, with p->owner. */
    struct qd_store_job_new nj = {.key = key_of(DIGEST_A, DIGEST_B, "1"), .spec_json = "{}",
                                  .owner = "alice"};
    struct qd_store_job job;
    QD_CHECK_OK(qd_store_job_add_ex(s, &nj, &job, &err), &err);
    QD_CHECK_OK(qd_store_owner_add(s, QD_STORE_OWN_JOB_JOINED, job.id, "bob", &err), &err);
    owners_of(s, QD_STORE_OWN_JOB, job.id, got, sizeof got);
    QD_CHECK_EQ_STR(got, "alice");
    char stage[PATH_MAX];
    QD_CHECK_OK(qd_store_staging_new(s, stage, sizeof stage, &err), &err);
    QD_CHECK(write_text(stage, "config.json", "{}\n") == 0);
    struct qd_store_publish p = {.staging_dir = stage, .key = &nj.key, .format = "awq",
                                 .job_id = job.id, .owner = "carol"};
    struct qd_store_artifact a;
    QD_CHECK_OK(qd_store_artifact_publish_ex(s, &p, &a, &err), &err);
    owners_of(s, QD_STORE_OWN_ARTIFACT, a.id, got, sizeof got);
    QD_CHECK_EQ_STR(got, "alice,bob,carol");
    /* Copying is a union: dave joins later and is added once, however often it is copied. */
    QD_CHECK_OK(qd_store_owner_add(s, QD_STORE_OWN_JOB_JOINED, job.id, "dave", &err), &err);
    for (int i = 0; i < 2; i++)
        QD_CHECK_OK(qd_store_owner_copy(s, QD_STORE_OWN_JOB_JOINED, job.id,
                                        QD_STORE_OWN_ARTIFACT, a.id, &err), &err);
    owners_of(s, QD_STORE_OWN_ARTIFACT, a.id, got, sizeof got);
    QD_CHECK_EQ_STR(got, "alice,bob,carol,dave");
    /* A job added without an owner belongs to "". */
    struct qd_store_job anon;
    QD_CHECK_OK(qd_store_job_add(s, &nj.key, &anon, &err), &err);
    QD_CHECK_OK(qd_store_owner_has(s, QD_STORE_OWN_JOB, anon.id, "", &has, &err), &err);
    QD_CHECK(has);
    /* The joiner sees the job in its pages; a stranger sees none. */
    struct qd_store_job *rows = NULL;
    size_t n = 0;
    QD_CHECK_OK(qd_store_job_query_owned(s, "bob", 0, NULL, NULL, 10, &rows, &n, NULL, &err),
                &err);
    QD_CHECK_EQ_INT(n, 1);
    free(rows);
    QD_CHECK_OK(qd_store_job_query_owned(s, "eve", 0, NULL, NULL, 10, &rows, &n, NULL, &err),
                &err);
    QD_CHECK_EQ_INT(n, 0);
    free(rows);
    /* Deleting the artifact deletes its owners; the job keeps its own. */
    QD_CHECK_OK(qd_store_artifact_delete(s, a.id, &err), &err);
    owners_of(s, QD_STORE_OWN_ARTIFACT, a.id, got, sizeof got);
    QD_CHECK_EQ_STR(got, "");
    owners_of(s, QD_STORE_OWN_JOB_JOINED, job.id, got, sizeof got);
    QD_CHECK_EQ_STR(got, "bob,dave");
    check_integrity(s);
    qd_store_close(s);
    remove_dir(dir);
}

QD_TEST(publish_with_manifest_and_spec) {
    char dir[PATH_MAX];
    make_dir(dir, sizeof dir);
    QD_REQUIRE(dir[0]);
    qd_error err = {0};
    struct qd_store *s = NULL;
    QD_CHECK_OK(qd_store_open(dir, &s, &err), &err);
    QD_REQUIRE(s);
    char stage[PATH_MAX], sub[PATH_MAX];
    QD_CHECK_OK(qd_store_staging_new(s, stage, sizeof stage, &err), &err);
    QD_CHECK(write_text(stage, "config.json", "{}\n") == 0);
    fmt_path(sub, sizeof sub, "%s/tok", stage);
    QD_CHECK(mkdir(sub, 0755) == 0);
    QD_CHECK(write_text(sub, "t.json", "0123456789") == 0);

    struct qd_store_file *files = NULL;
    size_t n = 0;
    QD_CHECK_OK(qd_store_hash_tree(stage, &files, &n, &err), &err);
    QD_REQUIRE(n == 2);
    QD_CHECK_EQ_STR(files[0].name, "config.json");
    QD_CHECK_EQ_STR(files[1].name, "tok/t.json");
    QD_CHECK_EQ_STR(files[1].sha256, SHA_DIGITS);

    struct qd_store_key k = key_of(DIGEST_A, DIGEST_B, "1");
    struct qd_store_publish p = {.staging_dir = stage, .key = &k, .format = "gptq",
                                 .spec_json = "{\"bits\":4}", .files = files, .n_files = 1};
    struct qd_store_artifact a;
    /* A list that leaves a file out, or gets a size wrong, is refused; nothing moves. */
    QD_CHECK_EQ_INT(qd_store_artifact_publish_ex(s, &p, &a, &err), QD_ERR_INVALID_ARG);
    QD_CHECK_MSG(strstr(err.msg, "holds 2 files but 1 are listed"), "message: %s", err.msg);
    QD_CHECK(qd_is_dir(stage));
    qd_error_clear(&err);
    p.n_files = 2;
    files[0].size++;
    QD_CHECK_EQ_INT(qd_store_artifact_publish_ex(s, &p, &a, &err), QD_ERR_INVALID_ARG);
    QD_CHECK_MSG(strstr(err.msg, "config.json"), "message: %s", err.msg);
    qd_error_clear(&err);
    files[0].size--;
    QD_CHECK(qd_is_dir(stage));
    QD_CHECK_OK(qd_store_artifact_publish_ex(s, &p, &a, &err), &err);
    QD_CHECK_EQ_INT(a.total_bytes, 13);
    struct qd_store_file *got = NULL;
    size_t n_got = 0;
    QD_CHECK_OK(qd_store_artifact_files(s, a.id, &got, &n_got, &err), &err);
    QD_CHECK_EQ_INT(n_got, 2);
    if (n_got == 2) QD_CHECK_EQ_STR(got[1].name, "tok/t.json");
    qd_store_files_free(got, n_got);
    char *json = NULL;
    QD_CHECK_OK(qd_store_artifact_spec(s, a.id, &json, &err), &err);
    QD_CHECK_EQ_STR(json, "{\"bits\":4}");
    free(json);
    /* Deleting the artifact drops its manifest with it. */
    QD_CHECK_OK(qd_store_artifact_delete(s, a.id, &err), &err);
    QD_CHECK_EQ_INT(qd_store_artifact_files(s, a.id, &got, &n_got, &err), QD_ERR_NOT_FOUND);
    qd_error_clear(&err);
    qd_store_files_free(files, n);
    check_integrity(s);
    qd_store_close(s);
    remove_dir(dir);
}

QD_TEST(job_texts_codes_requeue_and_pages) {
    char dir[PATH_MAX];
    make_dir(dir, sizeof dir);
    QD_REQUIRE(dir[0]);
    qd_error err = {0};
    struct qd_store *s = NULL;
    QD_CHECK_OK(qd_store_open(dir, &s, &err), &err);
    QD_REQUIRE(s);
    qd_store_set_clock(s, fake_clock, NULL);
    struct qd_store_job jobs[5];
    for (int i = 0; i < 5; i++) {
        fake_now = 100 + i;
        struct qd_store_job_new nj = {.key = key_of(i < 3 ? DIGEST_A : DIGEST_C, DIGEST_B, "1"),
                                      .spec_json = "{\"method\":\"rtn\"}",
                                      .model_path = i == 1 ? "/models/x" : NULL,
                                      .label = i == 2 ? "nightly" : NULL,
                                      .cache_hit = i == 4,
                                      .artifact_id = "0123456789abcdef0123456789abcdef"};
        QD_CHECK_OK(qd_store_job_add_ex(s, &nj, &jobs[i], &err), &err);
    }
    QD_CHECK_EQ_INT(jobs[4].state, QD_STORE_JOB_SUCCEEDED);
    QD_CHECK(jobs[4].cache_hit);
    QD_CHECK_EQ_INT(jobs[3].state, QD_STORE_JOB_QUEUED);
    struct qd_store_job_new bad = {.key = key_of(DIGEST_A, DIGEST_B, "1"), .spec_json = NULL};
    QD_CHECK_EQ_INT(qd_store_job_add_ex(s, &bad, NULL, &err), QD_ERR_INVALID_ARG);
    qd_error_clear(&err);

    struct qd_store_job_text t = {0};
    QD_CHECK_OK(qd_store_job_text_get(s, jobs[1].id, &t, &err), &err);
    QD_CHECK_EQ_STR(t.model_path, "/models/x");
    QD_CHECK(t.label == NULL);
    QD_CHECK_EQ_STR(t.spec_json, "{\"method\":\"rtn\"}");
    qd_store_job_text_free(&t);
    QD_CHECK_OK(qd_store_job_text_get(s, jobs[2].id, &t, &err), &err);
    QD_CHECK_EQ_STR(t.label, "nightly");
    qd_store_job_text_free(&t);

    /* Codes travel with errors. */
    struct qd_store_job j;
    QD_CHECK_OK(qd_store_job_set_state(s, jobs[0].id, QD_STORE_JOB_RUNNING, NULL, NULL, &err),
                &err);
    QD_CHECK_OK(qd_store_job_set_state_ex(s, jobs[0].id, QD_STORE_JOB_FAILED, "FORMAT",
                                          "model.safetensors: bad", NULL, &err), &err);
    QD_CHECK_OK(qd_store_job_get(s, jobs[0].id, &j, &err), &err);
    QD_CHECK_EQ_STR(j.error_code, "FORMAT");
    QD_CHECK_EQ_STR(j.error, "model.safetensors: bad");

    /* A drained job goes back to the queue without using up an attempt. */
    QD_CHECK_OK(qd_store_job_set_state(s, jobs[1].id, QD_STORE_JOB_RUNNING, NULL, NULL, &err),
                &err);
    QD_CHECK_OK(qd_store_job_requeue(s, jobs[1].id, &err), &err);
    QD_CHECK_OK(qd_store_job_get(s, jobs[1].id, &j, &err), &err);
    QD_CHECK_EQ_INT(j.state, QD_STORE_JOB_QUEUED);
    QD_CHECK_EQ_INT(j.attempts, 0);
    QD_CHECK_EQ_INT(j.started_ms, 0);
    QD_CHECK_EQ_INT(qd_store_job_requeue(s, jobs[1].id, &err), QD_ERR_PRECONDITION);
    qd_error_clear(&err);

    /* Pages, newest first. */
    struct qd_store_job *page = NULL;
    size_t n = 0;
    bool more = false;
    QD_CHECK_OK(qd_store_job_query(s, 0, NULL, NULL, 2, &page, &n, &more, &err), &err);
    QD_CHECK_EQ_INT(n, 2);
    QD_CHECK(more);
    if (n == 2) {
        QD_CHECK_EQ_STR(page[0].id, jobs[4].id);
        QD_CHECK_EQ_STR(page[1].id, jobs[3].id);
    }
    free(page);
    QD_CHECK_OK(qd_store_job_query(s, 0, NULL, jobs[3].id, 10, &page, &n, &more, &err), &err);
    QD_CHECK_EQ_INT(n, 3);
    QD_CHECK(!more);
    if (n == 3) QD_CHECK_EQ_STR(page[2].id, jobs[0].id);
    free(page);
    QD_CHECK_OK(qd_store_job_query(s, 1u << QD_STORE_JOB_QUEUED, DIGEST_A, NULL, 10, &page, &n,
                                   &more, &err), &err);
    QD_CHECK_EQ_INT(n, 2); /* jobs 1 and 2 */
    if (n == 2) {
        QD_CHECK_EQ_STR(page[0].id, jobs[2].id);
        QD_CHECK_EQ_STR(page[1].id, jobs[1].id);
    }
    free(page);
    QD_CHECK_EQ_INT(qd_store_job_query(s, 0, NULL, "ffffffffffffffffffffffffffffffff", 10,
                                       &page, &n, &more, &err), QD_ERR_NOT_FOUND);
    qd_error_clear(&err);
    check_integrity(s);
    qd_store_close(s);
    remove_dir(dir);
}

QD_TEST_MAIN()
