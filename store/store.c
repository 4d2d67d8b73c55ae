/*
 * store.c - the SQLite side of the store: opening and migrating quantd.db, startup recovery,
 * model manifests, the artifact registry with its cache key and LRU eviction, and jobs.
 *
 * DESIGN
 * Durability. quantd.db runs in WAL mode with synchronous=FULL. NORMAL would be safe against
 * corruption but may forget the last transactions on power loss; here every transaction is
 * a fact a client was told (a job accepted, an artifact published), writes are few (a handful
 * per job), so the extra fsync per commit costs nothing that matters. foreign_keys=ON and a
 * busy_timeout cover a second process (quantctl admin, sqlite3) reading the database.
 *
 * Migrations. MIGRATIONS[i] takes the schema from user_version i to i + 1, each in one
 * transaction that also sets user_version, so a crash mid-migration leaves the old version.
 * A database whose user_version exceeds the table is refused: an older quantd must not
 * write a schema it does not understand.
 *
 * Nothing partial is listed. Publish: fsync every file and directory of the staging dir,
 * rename it to artifacts/<id>, fsync artifacts/, and only then insert the row. Delete: the
 * row first, then the directory. So a crash leaves at worst a directory without a row, and
 * open removes those (and rows whose directory vanished), before anyone can list them.
 *
 * Startup (qd_store_open): mkdirs, open, migrate, PRAGMA quick_check, clean staging/ (all of
 * it but staging/uploads/<sha>.part, which are resumable uploads), drop orphan artifacts,
 * recover jobs left RUNNING (re-queue, or fail after QD_STORE_JOB_MAX_ATTEMPTS starts).
 *
 * Pins (jobs and downloads holding an artifact) are an in-memory counted list: they
 * describe this process's live work, which a restart ends anyway.
 *
 * Schema 2 adds what the daemon needs to run a job again after a restart (the spec's
 * canonical JSON, the server-side model path) and to show it (label, error code, whether the
 * cache answered it), the kind of each bundle, and each artifact's file list with sha256s.
 * The artifact's file list is written in the same transaction as its row, so a listed
 * artifact always has its manifest; artifacts published under schema 1 get theirs the first
 * time someone asks (qd_store_artifact_files).
 *
 * Schema 3 adds one table, owners (kind, id, owner), rather than an owner column per table:
 * artifacts, bundles and blobs have sets of owners (whoever's job made an artifact or was
 * answered by it; whoever sent a blob's bytes), and blobs have no table of their own. Rows are
 * written in the transaction of what they describe (a job's submitter with the job, an
 * artifact's owners, copied from its job, with the artifact) and go with it (artifact
 * delete). The migration gives every existing row the owner "", which is what every call
 * owns while authentication is off; what owners mean is the daemon's business.
 */
#include "store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/rand.h>
#include <sqlite3.h>

#include "fsutil.h"

struct pin {
    char id[QD_STORE_ID_LEN + 1];
    int count;
};

struct qd_store {
    char *data_dir;
    char db_path[PATH_MAX];
    sqlite3 *db;
    struct qd_store_recovery recovery;
    int64_t (*now_ms)(void *ctx);
    void *now_ctx;
    struct pin *pins;
    size_t n_pins, cap_pins;
};

static const char *const MIGRATIONS[] = {
    /* 0 -> 1: the first schema. */
    "CREATE TABLE models ("
    "  digest TEXT PRIMARY KEY,"
    "  created_ms INTEGER NOT NULL"
    ");"
    "CREATE TABLE model_files ("
    "  model_digest TEXT NOT NULL REFERENCES models(digest) ON DELETE CASCADE,"
    "  idx INTEGER NOT NULL,"
    "  name TEXT NOT NULL,"
    "  size INTEGER NOT NULL CHECK (size >= 0),"
    "  sha256 TEXT NOT NULL,"
    "  PRIMARY KEY (model_digest, idx)"
    ");"
    "CREATE TABLE artifacts ("
    "  id TEXT PRIMARY KEY,"
    "  model_digest TEXT NOT NULL,"
    "  spec_digest TEXT NOT NULL,"
    "  numerics_version TEXT NOT NULL,"
    "  format TEXT NOT NULL,"
    "  job_id TEXT NOT NULL DEFAULT '',"
    "  total_bytes INTEGER NOT NULL CHECK (total_bytes >= 0),"
    "  created_ms INTEGER NOT NULL,"
    "  last_used_ms INTEGER NOT NULL,"
    "  state TEXT NOT NULL DEFAULT 'ready' CHECK (state IN ('ready')),"
    "  UNIQUE (model_digest, spec_digest, numerics_version)"
    ");"
    "CREATE INDEX artifacts_lru ON artifacts(last_used_ms, created_ms, id);"
    "CREATE TABLE jobs ("
    "  id TEXT PRIMARY KEY,"
    "  model_digest TEXT NOT NULL,"
    "  spec_digest TEXT NOT NULL,"
    "  numerics_version TEXT NOT NULL,"
    "  state TEXT NOT NULL CHECK (state IN"
    "    ('queued','running','succeeded','failed','cancelled')),"
    "  attempts INTEGER NOT NULL DEFAULT 0,"
    "  error TEXT NOT NULL DEFAULT '',"
    "  artifact_id TEXT NOT NULL DEFAULT '',"
    "  created_ms INTEGER NOT NULL,"
    "  started_ms INTEGER NOT NULL DEFAULT 0,"
    "  finished_ms INTEGER NOT NULL DEFAULT 0"
    ");"
    "CREATE INDEX jobs_state ON jobs(state, created_ms);",
    /* 1 -> 2: jobs that can run again after a restart, bundle kinds, artifact manifests. */
    "ALTER TABLE models ADD COLUMN kind INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE jobs ADD COLUMN spec_json TEXT NOT NULL DEFAULT '';"
    "ALTER TABLE jobs ADD COLUMN model_path TEXT;"
    "ALTER TABLE jobs ADD COLUMN label TEXT;"
    "ALTER TABLE jobs ADD COLUMN error_code TEXT NOT NULL DEFAULT '';"
    "ALTER TABLE jobs ADD COLUMN cache_hit INTEGER NOT NULL DEFAULT 0;"
    "CREATE INDEX jobs_created ON jobs(created_ms);"
    "ALTER TABLE artifacts ADD COLUMN spec_json TEXT NOT NULL DEFAULT '';"
    "CREATE TABLE artifact_files ("
    "  artifact_id TEXT NOT NULL REFERENCES artifacts(id) ON DELETE CASCADE,"
    "  idx INTEGER NOT NULL,"
    "  name TEXT NOT NULL,"
    "  size INTEGER NOT NULL CHECK (size >= 0),"
    "  sha256 TEXT NOT NULL,"
    "  PRIMARY KEY (artifact_id, idx)"
    ");",
    /* 2 -> 3: owners. Every row that predates it belongs to the owner "" (auth off). */
    "CREATE TABLE owners ("
    "  kind TEXT NOT NULL,"
    "  id TEXT NOT NULL,"
    "  owner TEXT NOT NULL,"
    "  PRIMARY KEY (kind, id, owner)"
    ") WITHOUT ROWID;"
    "CREATE INDEX owners_by_owner ON owners(owner, kind, id);"
    "INSERT OR IGNORE INTO owners(kind, id, owner) SELECT 'job', id, '' FROM jobs;"
    "INSERT OR IGNORE INTO owners(kind, id, owner) SELECT 'artifact', id, '' FROM artifacts;"
    "INSERT OR IGNORE INTO owners(kind, id, owner) SELECT 'bundle', digest, '' FROM models;"
    "INSERT OR IGNORE INTO owners(kind, id, owner) SELECT 'blob', sha256, '' FROM model_files;",
};
#define N_MIGRATIONS ((int)(sizeof MIGRATIONS / sizeof MIGRATIONS[0]))
_Static_assert(N_MIGRATIONS == QD_STORE_SCHEMA_VERSION, "schema version = migration count");

static const char *const JOB_STATE_NAMES[QD_STORE_JOB_COUNT] = {
    [QD_STORE_JOB_QUEUED] = "queued",       [QD_STORE_JOB_RUNNING] = "running",
    [QD_STORE_JOB_SUCCEEDED] = "succeeded", [QD_STORE_JOB_FAILED] = "failed",
    [QD_STORE_JOB_CANCELLED] = "cancelled",
};

/* ---- small helpers ----------------------------------------------------------------------- */

static int64_t real_now_ms(void *ctx) {
    (void)ctx;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t now_ms(struct qd_store *s) { return s->now_ms(s->now_ctx); }

static bool is_hex64(const char *p) {
    if (!p) return false;
    for (int i = 0; i < QD_STORE_HEX_LEN; i++)
        if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'a' && p[i] <= 'f'))) return false;
    return p[QD_STORE_HEX_LEN] == '\0';
}

/* Ids are ours (32 lowercase hex), so they are safe as directory names. */
static bool is_id(const char *p) {
    if (!p) return false;
    for (int i = 0; i < QD_STORE_ID_LEN; i++)
        if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'a' && p[i] <= 'f'))) return false;
    return p[QD_STORE_ID_LEN] == '\0';
}

static qd_err check_id(const char *what, const char *id, qd_error *err) {
    if (!is_id(id))
        return qd_error_set(err, QD_ERR_INVALID_ARG, "%s id '%.80s' is not %d lowercase hex "
                            "chars", what, id ? id : "(null)", QD_STORE_ID_LEN);
    return QD_OK;
}

static qd_err new_id(char out[QD_STORE_ID_LEN + 1], qd_error *err) {
    static const char digits[] = "0123456789abcdef";
    unsigned char raw[QD_STORE_ID_LEN / 2];
    if (RAND_bytes(raw, (int)sizeof raw) != 1)
        return qd_error_set(err, QD_ERR_INTERNAL, "cannot draw random bytes for an id");
    for (size_t i = 0; i < sizeof raw; i++) {
        out[2 * i] = digits[raw[i] >> 4];
        out[2 * i + 1] = digits[raw[i] & 15];
    }
    out[QD_STORE_ID_LEN] = '\0';
    return QD_OK;
}

static qd_err check_key(const struct qd_store_key *k, qd_error *err) {
    if (!k) return qd_error_set(err, QD_ERR_INVALID_ARG, "cache key missing");
    if (!is_hex64(k->model_digest))
        return qd_error_set(err, QD_ERR_INVALID_ARG, "model_digest '%.80s' is not 64 "
                            "lowercase hex chars", k->model_digest);
    if (!is_hex64(k->spec_digest))
        return qd_error_set(err, QD_ERR_INVALID_ARG, "spec_digest '%.80s' is not 64 "
                            "lowercase hex chars", k->spec_digest);
    size_t n = strnlen(k->numerics_version, QD_STORE_VERSION_MAX);
    if (n == 0 || n == QD_STORE_VERSION_MAX)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "numerics_version is empty or longer "
                            "than %d chars", QD_STORE_VERSION_MAX - 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)k->numerics_version[i];
        if (c <= ' ' || c >= 0x7f || c == '/')
            return qd_error_set(err, QD_ERR_INVALID_ARG, "numerics_version '%s' has a "
                                "character that is not printable ASCII", k->numerics_version);
    }
    return QD_OK;
}

/* An owner name: printable, shorter than QD_STORE_OWNER_MAX ("" is allowed). */
static qd_err check_owner(const char *owner, qd_error *err) {
    if (!owner) return qd_error_set(err, QD_ERR_INVALID_ARG, "owner missing");
    size_t n = strnlen(owner, QD_STORE_OWNER_MAX);
    if (n == QD_STORE_OWNER_MAX)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "owner '%.40s...': longer than %d bytes",
                            owner, QD_STORE_OWNER_MAX - 1);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)owner[i] < 0x20 || owner[i] == 0x7f)
            return qd_error_set(err, QD_ERR_INVALID_ARG, "owner '%.40s': a control character "
                                "at byte %zu", owner, i);
    return QD_OK;
}

static void copy_str(char *dst, size_t cap, const unsigned char *src) {
    snprintf(dst, cap, "%s", src ? (const char *)src : "");
}

static qd_err db_error(struct qd_store *s, const char *what, qd_error *err) {
    int code = sqlite3_extended_errcode(s->db);
    qd_err c = QD_ERR_IO;
    if ((code & 0xff) == SQLITE_CORRUPT || (code & 0xff) == SQLITE_NOTADB) c = QD_ERR_CORRUPT;
    else if ((code & 0xff) == SQLITE_BUSY || (code & 0xff) == SQLITE_LOCKED)
        c = QD_ERR_UNAVAILABLE;
    else if ((code & 0xff) == SQLITE_NOMEM) c = QD_ERR_NOMEM;
    else if ((code & 0xff) == SQLITE_FULL) c = QD_ERR_TOO_LARGE;
    return qd_error_set(err, c, "%s: %s: %s", s->db_path, what, sqlite3_errmsg(s->db));
}

static qd_err exec(struct qd_store *s, const char *sql, qd_error *err) {
    if (sqlite3_exec(s->db, sql, NULL, NULL, NULL) != SQLITE_OK) return db_error(s, sql, err);
    return QD_OK;
}

static qd_err prepare(struct qd_store *s, const char *sql, sqlite3_stmt **st, qd_error *err) {
    if (sqlite3_prepare_v2(s->db, sql, -1, st, NULL) != SQLITE_OK) {
        *st = NULL;
        return db_error(s, "prepare", err);
    }
    return QD_OK;
}

static void rollback(struct qd_store *s) {
    if (!sqlite3_get_autocommit(s->db)) (void)sqlite3_exec(s->db, "ROLLBACK", 0, 0, 0);
}

static qd_err pragma_int(struct qd_store *s, const char *sql, int64_t *out, qd_error *err) {
    sqlite3_stmt *st;
    qd_err rc = prepare(s, sql, &st, err);
    if (rc != QD_OK) return rc;
    if (sqlite3_step(st) == SQLITE_ROW) *out = sqlite3_column_int64(st, 0);
    else rc = db_error(s, sql, err);
    sqlite3_finalize(st);
    return rc;
}

/* ---- open: migrations, checks, cleanup, recovery ----------------------------------------- */

static qd_err migrate(struct qd_store *s, qd_error *err) {
    int64_t v = 0;
    qd_err rc = pragma_int(s, "PRAGMA user_version", &v, err);
    if (rc != QD_OK) return rc;
    if (v > N_MIGRATIONS || v < 0)
        return qd_error_set(err, QD_ERR_UNSUPPORTED, "%s: schema version %" PRId64 " is newer "
                            "than this quantd understands (%d); refusing to open it (use the "
                            "newer quantd, or another data_dir)", s->db_path, v, N_MIGRATIONS);
    for (int i = (int)v; i < N_MIGRATIONS; i++) {
        char set[64];
        snprintf(set, sizeof set, "PRAGMA user_version = %d", i + 1);
        rc = exec(s, "BEGIN IMMEDIATE", err);
        if (rc == QD_OK) rc = exec(s, MIGRATIONS[i], err);
        if (rc == QD_OK) rc = exec(s, set, err);
        if (rc == QD_OK) rc = exec(s, "COMMIT", err);
        if (rc != QD_OK) {
            rollback(s);
            qd_error_prefix(err, "migration %d -> %d: ", i, i + 1);
            return rc;
        }
    }
    return QD_OK;
}

static qd_err check_db(struct qd_store *s, const char *pragma, qd_error *err) {
    sqlite3_stmt *st;
    qd_err rc = prepare(s, pragma, &st, err);
    if (rc != QD_OK) return rc;
    int r = sqlite3_step(st);
    if (r != SQLITE_ROW) {
        rc = db_error(s, pragma, err);
    } else {
        const char *res = (const char *)sqlite3_column_text(st, 0);
        if (!res || strcmp(res, "ok") != 0)
            rc = qd_error_set(err, QD_ERR_CORRUPT, "%s: %s: %s", s->db_path, pragma,
                              res ? res : "(no answer)");
    }
    sqlite3_finalize(st);
    return rc;
}

qd_err qd_store_integrity_check(struct qd_store *s, qd_error *err) {
    return check_db(s, "PRAGMA integrity_check", err);
}

static bool is_part_name(const char *name) {
    size_t n = strlen(name);
    if (n != QD_STORE_HEX_LEN + 5 || strcmp(name + QD_STORE_HEX_LEN, ".part") != 0) return false;
    char hex[QD_STORE_HEX_LEN + 1];
    memcpy(hex, name, QD_STORE_HEX_LEN);
    hex[QD_STORE_HEX_LEN] = '\0';
    return is_hex64(hex);
}

/* Remove everything in dir for which keep(name) is false (keep may be NULL: remove all). */
static qd_err clean_dir(const char *dir, bool (*keep)(const char *), int *n_kept,
                        int *n_removed, qd_error *err) {
    DIR *d = opendir(dir);
    if (!d) return qd_error_set(err, QD_ERR_IO, "%s: cannot list: %s", dir, strerror(errno));
    qd_err rc = QD_OK;
    struct dirent *de;
    char path[PATH_MAX];
    while (rc == QD_OK && (de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
        rc = qd_path_join(path, sizeof path, dir, de->d_name, err);
        if (rc != QD_OK) break;
        if (keep && keep(de->d_name) && qd_is_file(path)) {
            if (n_kept) (*n_kept)++;
            continue;
        }
        rc = qd_remove_tree(path, err);
        if (rc == QD_OK && n_removed) (*n_removed)++;
    }
    closedir(d);
    if (rc == QD_OK) rc = qd_fsync_dir(dir, err);
    return rc;
}

static bool keep_uploads(const char *name) { return strcmp(name, "uploads") == 0; }

static qd_err clean_staging(struct qd_store *s, qd_error *err) {
    char staging[PATH_MAX], uploads[PATH_MAX];
    qd_err rc = qd_path_join(staging, sizeof staging, s->data_dir, "staging", err);
    if (rc == QD_OK) rc = qd_path_join(uploads, sizeof uploads, staging, "uploads", err);
    /* staging/uploads itself is a directory: keep it by removing everything else first. */
    if (rc == QD_OK) {
        DIR *d = opendir(staging);
        if (!d)
            return qd_error_set(err, QD_ERR_IO, "%s: cannot list: %s", staging,
                                strerror(errno));
        struct dirent *de;
        char path[PATH_MAX];
        while (rc == QD_OK && (de = readdir(d)) != NULL) {
            if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
            if (keep_uploads(de->d_name)) continue;
            rc = qd_path_join(path, sizeof path, staging, de->d_name, err);
            if (rc == QD_OK) rc = qd_remove_tree(path, err);
            if (rc == QD_OK) s->recovery.n_staging_removed++;
        }
        closedir(d);
    }
    if (rc == QD_OK && !qd_is_dir(uploads)) {
        rc = qd_remove_tree(uploads, err);
        if (rc == QD_OK) rc = qd_mkdir_p(uploads, 0755, err);
    }
    if (rc == QD_OK)
        rc = clean_dir(uploads, is_part_name, &s->recovery.n_uploads_resumable,
                       &s->recovery.n_staging_removed, err);
    if (rc == QD_OK) rc = qd_fsync_dir(staging, err);
    return rc;
}

static qd_err artifact_row_exists(struct qd_store *s, const char *id, bool *ret,
                                  qd_error *err) {
    sqlite3_stmt *st;
    qd_err rc = prepare(s, "SELECT 1 FROM artifacts WHERE id = ?1", &st, err);
    if (rc != QD_OK) return rc;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    int r = sqlite3_step(st);
    if (r == SQLITE_ROW) *ret = true;
    else if (r == SQLITE_DONE) *ret = false;
    else rc = db_error(s, "look up artifact", err);
    sqlite3_finalize(st);
    return rc;
}

/* Directories without a row (a crash between rename and insert, or mid-delete), and rows
 * without a directory (lost by hand): neither may be listed or served. */
static qd_err clean_orphans(struct qd_store *s, qd_error *err) {
    char dir[PATH_MAX], path[PATH_MAX];
    qd_err rc = qd_path_join(dir, sizeof dir, s->data_dir, "artifacts", err);
    if (rc != QD_OK) return rc;
    DIR *d = opendir(dir);
    if (!d) return qd_error_set(err, QD_ERR_IO, "%s: cannot list: %s", dir, strerror(errno));
    struct dirent *de;
    while (rc == QD_OK && (de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
        bool exists = false;
        if (is_id(de->d_name)) rc = artifact_row_exists(s, de->d_name, &exists, err);
        if (rc != QD_OK || exists) continue;
        rc = qd_path_join(path, sizeof path, dir, de->d_name, err);
        if (rc == QD_OK) rc = qd_remove_tree(path, err);
        if (rc == QD_OK) s->recovery.n_orphans_removed++;
    }
    closedir(d);
    if (rc != QD_OK) return rc;

    sqlite3_stmt *st;
    rc = prepare(s, "SELECT id FROM artifacts", &st, err);
    if (rc != QD_OK) return rc;
    char (*gone)[QD_STORE_ID_LEN + 1] = NULL;
    size_t n_gone = 0;
    int r;
    while (rc == QD_OK && (r = sqlite3_step(st)) == SQLITE_ROW) {
        const char *id = (const char *)sqlite3_column_text(st, 0);
        rc = qd_path_join(path, sizeof path, dir, id ? id : "", err);
        if (rc != QD_OK || (id && is_id(id) && qd_is_dir(path))) continue;
        void *p = realloc(gone, (n_gone + 1) * sizeof *gone);
        if (!p) {
            rc = qd_error_set(err, QD_ERR_NOMEM, "cannot list orphan artifact rows");
            break;
        }
        gone = p;
        copy_str(gone[n_gone++], sizeof gone[0], (const unsigned char *)id);
    }
    if (rc == QD_OK && r != SQLITE_DONE) rc = db_error(s, "list artifacts", err);
    sqlite3_finalize(st);
    for (size_t i = 0; rc == QD_OK && i < n_gone; i++) {
        rc = prepare(s, "DELETE FROM artifacts WHERE id = ?1", &st, err);
        if (rc != QD_OK) break;
        sqlite3_bind_text(st, 1, gone[i], -1, SQLITE_STATIC);
        if (sqlite3_step(st) != SQLITE_DONE) rc = db_error(s, "delete orphan row", err);
        sqlite3_finalize(st);
        if (rc == QD_OK) rc = qd_store_owner_remove(s, QD_STORE_OWN_ARTIFACT, gone[i], NULL, err);
        if (rc == QD_OK) s->recovery.n_orphans_removed++;
    }
    free(gone);
    if (rc == QD_OK) rc = qd_fsync_dir(dir, err);
    return rc;
}

static qd_err recover_jobs(struct qd_store *s, qd_error *err) {
    sqlite3_stmt *st = NULL;
    qd_err rc = exec(s, "BEGIN IMMEDIATE", err);
    if (rc == QD_OK)
        rc = prepare(s, "UPDATE jobs SET state = 'failed', finished_ms = ?1, error = "
                        "'interrupted by a restart ' || attempts || ' times', "
                        "error_code = 'INTERNAL' "
                        "WHERE state = 'running' AND attempts >= ?2", &st, err);
    if (rc == QD_OK) {
        sqlite3_bind_int64(st, 1, now_ms(s));
        sqlite3_bind_int(st, 2, QD_STORE_JOB_MAX_ATTEMPTS);
        if (sqlite3_step(st) != SQLITE_DONE) rc = db_error(s, "fail interrupted jobs", err);
        else s->recovery.n_jobs_failed = sqlite3_changes(s->db);
    }
    sqlite3_finalize(st);
    st = NULL;
    if (rc == QD_OK)
        rc = prepare(s, "UPDATE jobs SET state = 'queued', started_ms = 0 "
                        "WHERE state = 'running'", &st, err);
    if (rc == QD_OK) {
        if (sqlite3_step(st) != SQLITE_DONE) rc = db_error(s, "re-queue jobs", err);
        else s->recovery.n_jobs_requeued = sqlite3_changes(s->db);
    }
    sqlite3_finalize(st);
    if (rc == QD_OK) rc = exec(s, "COMMIT", err);
    if (rc != QD_OK) rollback(s);
    return rc;
}

qd_err qd_store_open(const char *data_dir, struct qd_store **ret_store, qd_error *err) {
    static const char *const subdirs[] = {"blobs/sha256", "artifacts", "staging/uploads"};
    if (!data_dir || !*data_dir)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "store: data_dir is empty");
    struct qd_store *s = calloc(1, sizeof *s);
    if (!s || !(s->data_dir = strdup(data_dir))) {
        free(s);
        return qd_error_set(err, QD_ERR_NOMEM, "store: out of memory");
    }
    s->now_ms = real_now_ms;
    qd_err rc = qd_mkdir_p(data_dir, 0755, err);
    char path[PATH_MAX];
    for (size_t i = 0; rc == QD_OK && i < sizeof subdirs / sizeof subdirs[0]; i++) {
        rc = qd_path_join(path, sizeof path, data_dir, subdirs[i], err);
        if (rc == QD_OK) rc = qd_mkdir_p(path, 0755, err);
    }
    if (rc == QD_OK) rc = qd_path_join(s->db_path, sizeof s->db_path, data_dir, "quantd.db", err);
    if (rc != QD_OK) goto fail;
    if (sqlite3_open_v2(s->db_path, &s->db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                        NULL) != SQLITE_OK) {
        rc = qd_error_set(err, QD_ERR_IO, "%s: cannot open: %s", s->db_path,
                          s->db ? sqlite3_errmsg(s->db) : "out of memory");
        goto fail;
    }
    sqlite3_busy_timeout(s->db, 5000);
    char mode[16] = "";
    sqlite3_stmt *st;
    rc = prepare(s, "PRAGMA journal_mode = WAL", &st, err);
    if (rc != QD_OK) goto fail;
    if (sqlite3_step(st) == SQLITE_ROW) copy_str(mode, sizeof mode, sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    if (strcmp(mode, "wal") != 0) {
        rc = db_error(s, "cannot switch to WAL mode", err);
        goto fail;
    }
    rc = exec(s, "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON", err);
    if (rc == QD_OK) rc = check_db(s, "PRAGMA quick_check", err);
    if (rc == QD_OK) rc = migrate(s, err);
    if (rc == QD_OK) rc = clean_staging(s, err);
    if (rc == QD_OK) rc = clean_orphans(s, err);
    if (rc == QD_OK) rc = recover_jobs(s, err);
    if (rc != QD_OK) goto fail;
    *ret_store = s;
    return QD_OK;
fail:
    qd_store_close(s);
    return rc;
}

struct qd_store *qd_store_close(struct qd_store *s) {
    if (!s) return NULL;
    if (s->db) sqlite3_close(s->db);
    free(s->pins);
    free(s->data_dir);
    free(s);
    return NULL;
}

const struct qd_store_recovery *qd_store_recovery(const struct qd_store *s) {
    return &s->recovery;
}

const char *qd_store_data_dir(const struct qd_store *s) { return s->data_dir; }

void qd_store_set_clock(struct qd_store *s, int64_t (*fn)(void *ctx), void *ctx) {
    s->now_ms = fn ? fn : real_now_ms;
    s->now_ctx = fn ? ctx : NULL;
}

/* ---- models ------------------------------------------------------------------------------ */

qd_err qd_store_model_register(struct qd_store *s, const struct qd_store_file *files,
                               size_t n_files, const char *expect_digest,
                               char ret_digest[QD_STORE_HEX_LEN + 1], qd_error *err) {
    char digest[QD_STORE_HEX_LEN + 1];
    qd_err rc = qd_store_manifest_digest(files, n_files, digest, err);
    if (rc != QD_OK) return rc;
    if (expect_digest && strcmp(expect_digest, digest) != 0)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "manifest digest '%.80s' does not match "
                            "its files, which give %s", expect_digest, digest);
    sqlite3_stmt *st = NULL;
    rc = exec(s, "BEGIN IMMEDIATE", err);
    if (rc == QD_OK)
        rc = prepare(s, "INSERT INTO models(digest, created_ms) VALUES (?1, ?2) "
                        "ON CONFLICT(digest) DO NOTHING", &st, err);
    if (rc == QD_OK) {
        sqlite3_bind_text(st, 1, digest, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, now_ms(s));
        if (sqlite3_step(st) != SQLITE_DONE) rc = db_error(s, "insert model", err);
    }
    bool fresh = rc == QD_OK && sqlite3_changes(s->db) == 1;
    sqlite3_finalize(st);
    st = NULL;
    if (rc == QD_OK && fresh)
        rc = prepare(s, "INSERT INTO model_files(model_digest, idx, name, size, sha256) "
                        "VALUES (?1, ?2, ?3, ?4, ?5)", &st, err);
    for (size_t i = 0; rc == QD_OK && fresh && i < n_files; i++) {
        if (files[i].size > (uint64_t)INT64_MAX) {
            rc = qd_error_set(err, QD_ERR_INVALID_ARG, "manifest: files[%zu] '%s' size too "
                              "large", i, files[i].name);
            break;
        }
        sqlite3_reset(st);
        sqlite3_bind_text(st, 1, digest, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, (int64_t)i);
        sqlite3_bind_text(st, 3, files[i].name, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 4, (int64_t)files[i].size);
        sqlite3_bind_text(st, 5, files[i].sha256, -1, SQLITE_STATIC);
        if (sqlite3_step(st) != SQLITE_DONE) rc = db_error(s, "insert model file", err);
    }
    sqlite3_finalize(st);
    if (rc == QD_OK) rc = exec(s, "COMMIT", err);
    if (rc != QD_OK) {
        rollback(s);
        return rc;
    }
    if (ret_digest) memcpy(ret_digest, digest, sizeof digest);
    return QD_OK;
}

void qd_store_files_free(struct qd_store_file *files, size_t n_files) {
    if (!files) return;
    for (size_t i = 0; i < n_files; i++) free(files[i].name);
    free(files);
}

/* The (name, size, sha256) rows `sql` selects for key (?1), in its order: a model's manifest or
 * an artifact's file list; what names the owner in messages. No rows is *ret_n == 0. */
static qd_err read_file_list(struct qd_store *s, const char *sql, const char *key,
                             const char *what, struct qd_store_file **ret_files, size_t *ret_n,
                             qd_error *err) {
    sqlite3_stmt *st;
    qd_err rc = prepare(s, sql, &st, err);
    if (rc != QD_OK) return rc;
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    struct qd_store_file *files = NULL;
    size_t n = 0;
    int r;
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        void *np = realloc(files, (n + 1) * sizeof *files);
        if (!np) break;
        files = np;
        memset(&files[n], 0, sizeof files[n]);
        const char *name = (const char *)sqlite3_column_text(st, 0);
        files[n].name = strdup(name ? name : "");
        files[n].size = (uint64_t)sqlite3_column_int64(st, 1);
        copy_str(files[n].sha256, sizeof files[n].sha256, sqlite3_column_text(st, 2));
        if (!files[n++].name) break;
    }
    if (r == SQLITE_ROW) rc = qd_error_set(err, QD_ERR_NOMEM, "%s %s: out of memory", what, key);
    else if (r != SQLITE_DONE) rc = db_error(s, "list files", err);
    sqlite3_finalize(st);
    if (rc != QD_OK) {
        qd_store_files_free(files, n);
        return rc;
    }
    *ret_files = files;
    *ret_n = n;
    return QD_OK;
}

qd_err qd_store_model_files(struct qd_store *s, const char *digest,
                            struct qd_store_file **ret_files, size_t *ret_n, qd_error *err) {
    if (!is_hex64(digest))
        return qd_error_set(err, QD_ERR_INVALID_ARG, "model digest '%.80s' is not 64 "
                            "lowercase hex chars", digest ? digest : "(null)");
    struct qd_store_file *files = NULL;
    size_t n = 0;
    qd_err rc = read_file_list(s, "SELECT name, size, sha256 FROM model_files WHERE "
                                  "model_digest = ?1 ORDER BY idx", digest, "model", &files, &n,
                               err);
    if (rc != QD_OK) return rc;
    if (n == 0) {
        free(files);
        return qd_error_set(err, QD_ERR_NOT_FOUND, "model %s: not registered", digest);
    }
    *ret_files = files;
    *ret_n = n;
    return QD_OK;
}

qd_err qd_store_model_set_kind(struct qd_store *s, const char *digest, int kind,
                               qd_error *err) {
    if (!is_hex64(digest))
        return qd_error_set(err, QD_ERR_INVALID_ARG, "model digest '%.80s' is not 64 "
                            "lowercase hex chars", digest ? digest : "(null)");
    sqlite3_stmt *st;
    qd_err rc = prepare(s, "UPDATE models SET kind = ?1 WHERE digest = ?2 AND kind = 0", &st,
                        err);
    if (rc != QD_OK) return rc;
    sqlite3_bind_int(st, 1, kind);
    sqlite3_bind_text(st, 2, digest, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE) rc = db_error(s, "set model kind", err);
    sqlite3_finalize(st);
    int have = 0;
    /* Not changed: either a kind is already recorded (fine) or there is no such row. */
    if (rc == QD_OK) rc = qd_store_model_kind(s, digest, &have, err);
    return rc;
}

qd_err qd_store_model_kind(struct qd_store *s, const char *digest, int *ret_kind,
                           qd_error *err) {
    if (!is_hex64(digest))
        return qd_error_set(err, QD_ERR_INVALID_ARG, "model digest '%.80s' is not 64 "
                            "lowercase hex chars", digest ? digest : "(null)");
    sqlite3_stmt *st;
    qd_err rc = prepare(s, "SELECT kind FROM models WHERE digest = ?1", &st, err);
    if (rc != QD_OK) return rc;
    sqlite3_bind_text(st, 1, digest, -1, SQLITE_STATIC);
    int r = sqlite3_step(st);
    if (r == SQLITE_ROW) *ret_kind = sqlite3_column_int(st, 0);
    else if (r == SQLITE_DONE)
        rc = qd_error_set(err, QD_ERR_NOT_FOUND, "model %s: not registered", digest);
    else rc = db_error(s, "look up model kind", err);
    sqlite3_finalize(st);
    return rc;
}

/* ---- artifacts --------------------------------------------------------------------------- */

#define ART_COLS "id, model_digest, spec_digest, numerics_version, format, job_id, " \
                 "total_bytes, created_ms, last_used_ms"

static void read_artifact(sqlite3_stmt *st, struct qd_store_artifact *a) {
    memset(a, 0, sizeof *a);
    copy_str(a->id, sizeof a->id, sqlite3_column_text(st, 0));
    copy_str(a->key.model_digest, sizeof a->key.model_digest, sqlite3_column_text(st, 1));
    copy_str(a->key.spec_digest, sizeof a->key.spec_digest, sqlite3_column_text(st, 2));
    copy_str(a->key.numerics_version, sizeof a->key.numerics_version,
             sqlite3_column_text(st, 3));
    copy_str(a->format, sizeof a->format, sqlite3_column_text(st, 4));
    copy_str(a->job_id, sizeof a->job_id, sqlite3_column_text(st, 5));
    a->total_bytes = (uint64_t)sqlite3_column_int64(st, 6);
    a->created_ms = sqlite3_column_int64(st, 7);
    a->last_used_ms = sqlite3_column_int64(st, 8);
}

static void bind_key(sqlite3_stmt *st, int first, const struct qd_store_key *k) {
    sqlite3_bind_text(st, first, k->model_digest, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, first + 1, k->spec_digest, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, first + 2, k->numerics_version, -1, SQLITE_STATIC);
}

qd_err qd_store_artifact_dir(struct qd_store *s, const char *id, char *buf, size_t len,
                             qd_error *err) {
    qd_err rc = check_id("artifact", id, err);
    if (rc != QD_OK) return rc;
    int n = snprintf(buf, len, "%s/artifacts/%s", s->data_dir, id);
    if (n < 0 || (size_t)n >= len)
        return qd_error_set(err, QD_ERR_TOO_LARGE, "artifact %s: path too long", id);
    return QD_OK;
}

qd_err qd_store_staging_new(struct qd_store *s, char *buf, size_t len, qd_error *err) {
    char id[QD_STORE_ID_LEN + 1];
    qd_err rc = new_id(id, err);
    if (rc != QD_OK) return rc;
    int n = snprintf(buf, len, "%s/staging/job-%s", s->data_dir, id);
    if (n < 0 || (size_t)n >= len)
        return qd_error_set(err, QD_ERR_TOO_LARGE, "staging path too long");
    if (mkdir(buf, 0755) != 0)
        return qd_error_set(err, QD_ERR_IO, "%s: cannot create: %s", buf, strerror(errno));
    return QD_OK;
}

/* fsync every file and directory under path, counting the regular files and summing their
 * sizes. Anything but regular files and directories (a symlink could point out of the store)
 * is refused. */
static qd_err sync_tree(const char *path, int depth, uint64_t *total, size_t *n_files,
                        qd_error *err) {
    struct stat st;
    if (lstat(path, &st) != 0)
        return qd_error_set(err, QD_ERR_IO, "%s: %s", path, strerror(errno));
    if (depth > 16) return qd_error_set(err, QD_ERR_INVALID_ARG, "%s: nested too deep", path);
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        if (!d) return qd_error_set(err, QD_ERR_IO, "%s: cannot list: %s", path, strerror(errno));
        struct dirent *de;
        qd_err rc = QD_OK;
        char child[PATH_MAX];
        while (rc == QD_OK && (de = readdir(d)) != NULL) {
            if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
            rc = qd_path_join(child, sizeof child, path, de->d_name, err);
            if (rc == QD_OK) rc = sync_tree(child, depth + 1, total, n_files, err);
        }
        closedir(d);
        if (rc != QD_OK) return rc;
    } else if (S_ISREG(st.st_mode)) {
        *total += (uint64_t)st.st_size;
        (*n_files)++;
    } else {
        return qd_error_set(err, QD_ERR_INVALID_ARG, "%s: not a regular file or directory",
                            path);
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return qd_error_set(err, QD_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    int r = fsync(fd);
    int e = errno;
    close(fd);
    if (r != 0 && e != EINVAL)
        return qd_error_set(err, QD_ERR_IO, "%s: fsync: %s", path, strerror(e));
    return QD_OK;
}

/* staging_dir must be data_dir/staging/<one component>, and not the uploads directory. */
static qd_err check_staging_dir(struct qd_store *s, const char *dir, qd_error *err) {
    char prefix[PATH_MAX];
    qd_err rc = qd_path_join(prefix, sizeof prefix, s->data_dir, "staging/", err);
    if (rc != QD_OK) return rc;
    size_t n = strlen(prefix);
    const char *leaf = dir ? dir + n : NULL;
    if (!dir || strncmp(dir, prefix, n) != 0 || !*leaf || strchr(leaf, '/') ||
        strcmp(leaf, ".") == 0 || strcmp(leaf, "..") == 0 || strcmp(leaf, "uploads") == 0 ||
        !qd_is_dir(dir))
        return qd_error_set(err, QD_ERR_INVALID_ARG, "publish: '%.200s' is not a directory "
                            "directly under %s", dir ? dir : "(null)", prefix);
    return QD_OK;
}

/* files must list regular files of dir, with their sizes: names valid, sorted and unique
 * (the manifest rules), each a regular file of that size. That the directory holds no other
 * file is checked by publish's walk (sync_tree counts them). */
static qd_err check_listed(const char *dir, const struct qd_store_file *files, size_t n,
                           qd_error *err) {
    char hex[QD_STORE_HEX_LEN + 1], path[PATH_MAX];
    qd_err rc = qd_store_manifest_digest(files, n, hex, err);
    for (size_t i = 0; rc == QD_OK && i < n; i++) {
        struct stat st;
        rc = qd_path_join(path, sizeof path, dir, files[i].name, err);
        if (rc == QD_OK && (lstat(path, &st) != 0 || !S_ISREG(st.st_mode) ||
                            (uint64_t)st.st_size != files[i].size))
            rc = qd_error_set(err, QD_ERR_INVALID_ARG, "publish: listed file '%s' is not a "
                              "regular file of %" PRIu64 " bytes in %s", files[i].name,
                              files[i].size, dir);
    }
    if (rc != QD_OK) qd_error_prefix(err, "publish: ");
    return rc;
}

static qd_err insert_files(struct qd_store *s, const char *id, const struct qd_store_file *files,
                           size_t n, qd_error *err) {
    sqlite3_stmt *st;
    qd_err rc = prepare(s, "INSERT INTO artifact_files(artifact_id, idx, name, size, sha256) "
                           "VALUES (?1, ?2, ?3, ?4, ?5)", &st, err);
    for (size_t i = 0; rc == QD_OK && i < n; i++) {
        if (files[i].size > (uint64_t)INT64_MAX) {
            rc = qd_error_set(err, QD_ERR_TOO_LARGE, "artifact %s: file '%s' too large", id,
                              files[i].name);
            break;
        }
        sqlite3_reset(st);
        sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, (int64_t)i);
        sqlite3_bind_text(st, 3, files[i].name, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 4, (int64_t)files[i].size);
        sqlite3_bind_text(st, 5, files[i].sha256, -1, SQLITE_STATIC);
        if (sqlite3_step(st) != SQLITE_DONE) rc = db_error(s, "insert artifact file", err);
    }
    if (st) sqlite3_finalize(st);
    return rc;
}

qd_err qd_store_artifact_publish(struct qd_store *s, const char *staging_dir,
                                 const struct qd_store_key *key, const char *format,
                                 const char *job_id, struct qd_store_artifact *ret_art,
                                 qd_error *err) {
    struct qd_store_publish p = {.staging_dir = staging_dir, .key = key, .format = format,
                                 .job_id = job_id};
    return qd_store_artifact_publish_ex(s, &p, ret_art, err);
}

qd_err qd_store_artifact_publish_ex(struct qd_store *s, const struct qd_store_publish *p,
                                    struct qd_store_artifact *ret_art, qd_error *err) {
    const char *staging_dir = p->staging_dir, *format = p->format, *job_id = p->job_id;
    const struct qd_store_key *key = p->key;
    qd_err rc = check_key(key, err);
    if (rc == QD_OK) rc = check_staging_dir(s, staging_dir, err);
    if (rc != QD_OK) return rc;
    if (!format || !*format || strlen(format) >= QD_STORE_FORMAT_MAX)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "publish: format is empty or too long");
    if (!job_id) job_id = "";
    if (*job_id) {
        rc = check_id("job", job_id, err);
        if (rc != QD_OK) return rc;
    }
    if (p->owner && (rc = check_owner(p->owner, err)) != QD_OK) return rc;
    struct qd_store_artifact a;
    if (qd_store_artifact_lookup(s, key, &a, NULL) == QD_OK)
        return qd_error_set(err, QD_ERR_EXISTS, "publish: the cache key (%s, %s, %s) already "
                            "has artifact %s", key->model_digest, key->spec_digest,
                            key->numerics_version, a.id);
    /* The manifest first: the directory must be exactly what the list says. */
    struct qd_store_file *own = NULL;
    size_t n_files = p->n_files;
    const struct qd_store_file *files = p->files;
    if (files) {
        rc = check_listed(staging_dir, files, n_files, err);
    } else {
        rc = qd_store_hash_tree(staging_dir, &own, &n_files, err);
        files = own;
    }
    if (rc != QD_OK) goto done;
    memset(&a, 0, sizeof a);
    a.key = *key;
    snprintf(a.format, sizeof a.format, "%s", format);
    snprintf(a.job_id, sizeof a.job_id, "%s", job_id);
    uint64_t total = 0;
    size_t found = 0;
    rc = sync_tree(staging_dir, 0, &total, &found, err);
    if (rc == QD_OK && found != n_files)
        rc = qd_error_set(err, QD_ERR_INVALID_ARG, "publish: %s holds %zu files but %zu are "
                          "listed", staging_dir, found, n_files);
    if (rc == QD_OK && total > (uint64_t)INT64_MAX)
        rc = qd_error_set(err, QD_ERR_TOO_LARGE, "publish: %s too large", staging_dir);
    if (rc == QD_OK) rc = new_id(a.id, err);
    char dest[PATH_MAX];
    if (rc == QD_OK) rc = qd_store_artifact_dir(s, a.id, dest, sizeof dest, err);
    if (rc != QD_OK) goto done;
    a.total_bytes = total;
    a.created_ms = a.last_used_ms = now_ms(s);
    if (rename(staging_dir, dest) != 0) {
        rc = qd_error_set(err, QD_ERR_IO, "publish: cannot rename %s to %s: %s",
                          staging_dir, dest, strerror(errno));
        goto done;
    }
    /* Both parents (staging/ and artifacts/) are synced, so the rename is durable before
     * the row that lists it. */
    char parent[PATH_MAX];
    rc = qd_path_join(parent, sizeof parent, s->data_dir, "artifacts", err);
    if (rc == QD_OK) rc = qd_fsync_dir(parent, err);
    if (rc == QD_OK) rc = qd_path_join(parent, sizeof parent, s->data_dir, "staging", err);
    if (rc == QD_OK) rc = qd_fsync_dir(parent, err);
    sqlite3_stmt *st = NULL;
    if (rc == QD_OK) rc = exec(s, "BEGIN IMMEDIATE", err);
    if (rc == QD_OK)
        rc = prepare(s, "INSERT INTO artifacts(" ART_COLS ", spec_json) VALUES "
                        "(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)", &st, err);
    if (rc == QD_OK) {
        sqlite3_bind_text(st, 1, a.id, -1, SQLITE_STATIC);
        bind_key(st, 2, key);
        sqlite3_bind_text(st, 5, a.format, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 6, a.job_id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 7, (int64_t)total);
        sqlite3_bind_int64(st, 8, a.created_ms);
        sqlite3_bind_int64(st, 9, a.last_used_ms);
        sqlite3_bind_text(st, 10, p->spec_json ? p->spec_json : "", -1, SQLITE_STATIC);
        if (sqlite3_step(st) != SQLITE_DONE) rc = db_error(s, "insert artifact", err);
    }
    sqlite3_finalize(st);
    if (rc == QD_OK) rc = insert_files(s, a.id, files, n_files, err);
    if (rc == QD_OK && *job_id)
        rc = qd_store_owner_copy(s, QD_STORE_OWN_JOB, job_id, QD_STORE_OWN_ARTIFACT, a.id, err);
    if (rc == QD_OK && *job_id)
        rc = qd_store_owner_copy(s, QD_STORE_OWN_JOB_JOINED, job_id, QD_STORE_OWN_ARTIFACT,
                                 a.id, err);
    if (rc == QD_OK && p->owner)
        rc = qd_store_owner_add(s, QD_STORE_OWN_ARTIFACT, a.id, p->owner, err);
    if (rc == QD_OK) rc = exec(s, "COMMIT", err);
    if (rc != QD_OK) {
        rollback(s);
        /* Put the output back where the caller left it; failing that, drop it (an
         * unlisted directory would be removed at the next open anyway). */
        if (rename(dest, staging_dir) != 0) (void)qd_remove_tree(dest, NULL);
        goto done;
    }
    if (ret_art) *ret_art = a;
done:
    qd_store_files_free(own, own ? n_files : 0);
    return rc;
}

qd_err qd_store_artifact_files(struct qd_store *s, const char *id,
                               struct qd_store_file **ret_files, size_t *ret_n, qd_error *err) {
    struct qd_store_artifact a;
    qd_err rc = qd_store_artifact_get(s, id, &a, err);
    struct qd_store_file *files = NULL;
    size_t n = 0;
    if (rc == QD_OK)
        rc = read_file_list(s, "SELECT name, size, sha256 FROM artifact_files WHERE "
                            "artifact_id = ?1 ORDER BY idx", id, "artifact", &files, &n, err);
    if (rc != QD_OK) return rc;
    if (n == 0) {
        /* Published under schema 1: hash it now, once. */
        char dir[PATH_MAX];
        free(files);
        files = NULL;
        rc = qd_store_artifact_dir(s, id, dir, sizeof dir, err);
        if (rc == QD_OK) rc = qd_store_hash_tree(dir, &files, &n, err);
        if (rc == QD_OK) rc = exec(s, "BEGIN IMMEDIATE", err);
        if (rc == QD_OK) rc = insert_files(s, id, files, n, err);
        if (rc == QD_OK) rc = exec(s, "COMMIT", err);
        if (rc != QD_OK) {
            rollback(s);
            qd_store_files_free(files, n);
            return rc;
        }
    }
    *ret_files = files;
    *ret_n = n;
    return QD_OK;
}

qd_err qd_store_artifact_spec(struct qd_store *s, const char *id, char **ret_json,
                              qd_error *err) {
    qd_err rc = check_id("artifact", id, err);
    sqlite3_stmt *st;
    if (rc == QD_OK) rc = prepare(s, "SELECT spec_json FROM artifacts WHERE id = ?1", &st, err);
    if (rc != QD_OK) return rc;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    int r = sqlite3_step(st);
    char *json = NULL;
    if (r == SQLITE_ROW) {
        const char *t = (const char *)sqlite3_column_text(st, 0);
        if (!(json = strdup(t ? t : "")))
            rc = qd_error_set(err, QD_ERR_NOMEM, "artifact %s: out of memory", id);
    } else if (r == SQLITE_DONE) {
        rc = qd_error_set(err, QD_ERR_NOT_FOUND, "artifact %s: not found", id);
    } else {
        rc = db_error(s, "look up artifact", err);
    }
    sqlite3_finalize(st);
    if (rc == QD_OK) *ret_json = json;
    return rc;
}

static qd_err get_one(struct qd_store *s, sqlite3_stmt *st, const char *what,
                      struct qd_store_artifact *ret_art, qd_error *err) {
    int r = sqlite3_step(st);
    qd_err rc = QD_OK;
    if (r == SQLITE_ROW) read_artifact(st, ret_art);
    else if (r == SQLITE_DONE) rc = qd_error_set(err, QD_ERR_NOT_FOUND, "artifact %s: not found",
                                                 what);
    else rc = db_error(s, "look up artifact", err);
    sqlite3_finalize(st);
    return rc;
}

static qd_err touch(struct qd_store *s, const char *id, int64_t *ret_when, qd_error *err) {
    sqlite3_stmt *st;
    qd_err rc = prepare(s, "UPDATE artifacts SET last_used_ms = ?1 WHERE id = ?2", &st, err);
    if (rc != QD_OK) return rc;
    int64_t t = now_ms(s);
    sqlite3_bind_int64(st, 1, t);
    sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE) rc = db_error(s, "touch artifact", err);
    else if (sqlite3_changes(s->db) != 1)
        rc = qd_error_set(err, QD_ERR_NOT_FOUND, "artifact %s: not found", id);
    sqlite3_finalize(st);
    if (rc == QD_OK && ret_when) *ret_when = t;
    return rc;
}

qd_err qd_store_artifact_lookup(struct qd_store *s, const struct qd_store_key *key,
                                struct qd_store_artifact *ret_art, qd_error *err) {
    qd_err rc = check_key(key, err);
    sqlite3_stmt *st;
    if (rc == QD_OK)
        rc = prepare(s, "SELECT " ART_COLS " FROM artifacts WHERE model_digest = ?1 AND "
                        "spec_digest = ?2 AND numerics_version = ?3", &st, err);
    if (rc != QD_OK) return rc;
    bind_key(st, 1, key);
    struct qd_store_artifact a;
    rc = get_one(s, st, "for this cache key", &a, err);
    if (rc == QD_OK) rc = touch(s, a.id, &a.last_used_ms, err);
    if (rc == QD_OK && ret_art) *ret_art = a;
    return rc;
}

qd_err qd_store_artifact_get(struct qd_store *s, const char *id,
                             struct qd_store_artifact *ret_art, qd_error *err) {
    qd_err rc = check_id("artifact", id, err);
    sqlite3_stmt *st;
    if (rc == QD_OK)
        rc = prepare(s, "SELECT " ART_COLS " FROM artifacts WHERE id = ?1", &st, err);
    if (rc != QD_OK) return rc;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    return get_one(s, st, id, ret_art, err);
}

qd_err qd_store_artifact_list(struct qd_store *s, struct qd_store_artifact **ret_arts,
                              size_t *ret_n, qd_error *err) {
    sqlite3_stmt *st;
    qd_err rc = prepare(s, "SELECT " ART_COLS " FROM artifacts ORDER BY created_ms, id", &st,
                        err);
    if (rc != QD_OK) return rc;
    struct qd_store_artifact *arts = NULL;
    size_t n = 0;
    int r;
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        void *p = realloc(arts, (n + 1) * sizeof *arts);
        if (!p) break;
        arts = p;
        read_artifact(st, &arts[n++]);
    }
    if (r == SQLITE_ROW) rc = qd_error_set(err, QD_ERR_NOMEM, "list artifacts: out of memory");
    else if (r != SQLITE_DONE) rc = db_error(s, "list artifacts", err);
    sqlite3_finalize(st);
    if (rc != QD_OK) {
        free(arts);
        return rc;
    }
    *ret_arts = arts;
    *ret_n = n;
    return QD_OK;
}

static struct pin *find_pin(struct qd_store *s, const char *id) {
    for (size_t i = 0; i < s->n_pins; i++)
        if (strcmp(s->pins[i].id, id) == 0) return &s->pins[i];
    return NULL;
}

qd_err qd_store_artifact_delete(struct qd_store *s, const char *id, qd_error *err) {
    qd_err rc = check_id("artifact", id, err);
    if (rc != QD_OK) return rc;
    struct pin *p = find_pin(s, id);
    if (p)
        return qd_error_set(err, QD_ERR_PRECONDITION, "artifact %s: held by %d job(s) or "
                            "download(s); not deleted", id, p->count);
    sqlite3_stmt *st;
    rc = prepare(s, "DELETE FROM artifacts WHERE id = ?1", &st, err);
    if (rc != QD_OK) return rc;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    rc = exec(s, "BEGIN IMMEDIATE", err);
    if (rc == QD_OK && sqlite3_step(st) != SQLITE_DONE) rc = db_error(s, "delete artifact", err);
    else if (rc == QD_OK && sqlite3_changes(s->db) != 1)
        rc = qd_error_set(err, QD_ERR_NOT_FOUND, "artifact %s: not found", id);
    sqlite3_finalize(st);
    if (rc == QD_OK) rc = qd_store_owner_remove(s, QD_STORE_OWN_ARTIFACT, id, NULL, err);
    if (rc == QD_OK) rc = exec(s, "COMMIT", err);
    if (rc != QD_OK) {
        rollback(s);
        return rc;
    }
    char dir[PATH_MAX];
    if (rc == QD_OK) rc = qd_store_artifact_dir(s, id, dir, sizeof dir, err);
    if (rc == QD_OK) rc = qd_remove_tree(dir, err);
    if (rc == QD_OK) rc = qd_fsync_dir(dir, err);
    return rc;
}

qd_err qd_store_artifact_pin(struct qd_store *s, const char *id, qd_error *err) {
    qd_err rc = check_id("artifact", id, err);
    if (rc == QD_OK) rc = touch(s, id, NULL, err);
    if (rc != QD_OK) return rc;
    struct pin *p = find_pin(s, id);
    if (p) {
        p->count++;
        return QD_OK;
    }
    if (s->n_pins == s->cap_pins) {
        size_t cap = s->cap_pins ? 2 * s->cap_pins : 8;
        void *np = realloc(s->pins, cap * sizeof *s->pins);
        if (!np) return qd_error_set(err, QD_ERR_NOMEM, "artifact %s: cannot pin", id);
        s->pins = np;
        s->cap_pins = cap;
    }
    p = &s->pins[s->n_pins++];
    snprintf(p->id, sizeof p->id, "%s", id);
    p->count = 1;
    return QD_OK;
}

qd_err qd_store_artifact_unpin(struct qd_store *s, const char *id, qd_error *err) {
    qd_err rc = check_id("artifact", id, err);
    if (rc != QD_OK) return rc;
    struct pin *p = find_pin(s, id);
    if (!p) return qd_error_set(err, QD_ERR_PRECONDITION, "artifact %s: not pinned", id);
    if (--p->count == 0) *p = s->pins[--s->n_pins];
    return QD_OK;
}

qd_err qd_store_artifact_total(struct qd_store *s, uint64_t *ret_total, qd_error *err) {
    int64_t t = 0;
    qd_err rc = pragma_int(s, "SELECT COALESCE(SUM(total_bytes), 0) FROM artifacts", &t, err);
    if (rc == QD_OK) *ret_total = (uint64_t)t;
    return rc;
}

qd_err qd_store_evict(struct qd_store *s, uint64_t limit_bytes, int *ret_n_evicted,
                      uint64_t *ret_total, qd_error *err) {
    uint64_t total = 0;
    int n_evicted = 0;
    qd_err rc = qd_store_artifact_total(s, &total, err);
    /* Gather candidates first: deleting while a SELECT is open on the same table is legal
     * in SQLite but hard to reason about. */
    struct qd_store_artifact *arts = NULL;
    size_t n = 0;
    if (rc == QD_OK && total > limit_bytes) {
        sqlite3_stmt *st;
        rc = prepare(s, "SELECT " ART_COLS " FROM artifacts "
                        "ORDER BY last_used_ms, created_ms, id", &st, err);
        int r = SQLITE_DONE;
        while (rc == QD_OK && (r = sqlite3_step(st)) == SQLITE_ROW) {
            void *p = realloc(arts, (n + 1) * sizeof *arts);
            if (!p) break;
            arts = p;
            read_artifact(st, &arts[n++]);
        }
        if (rc == QD_OK && r == SQLITE_ROW)
            rc = qd_error_set(err, QD_ERR_NOMEM, "evict: out of memory");
        else if (rc == QD_OK && r != SQLITE_DONE) rc = db_error(s, "evict", err);
        sqlite3_finalize(st);
    }
    for (size_t i = 0; rc == QD_OK && i < n && total > limit_bytes; i++) {
        if (find_pin(s, arts[i].id)) continue;
        rc = qd_store_artifact_delete(s, arts[i].id, err);
        if (rc == QD_OK) {
            total -= arts[i].total_bytes;
            n_evicted++;
        }
    }
    free(arts);
    if (ret_n_evicted) *ret_n_evicted = n_evicted;
    if (ret_total) *ret_total = total;
    return rc;
}

/* ---- jobs -------------------------------------------------------------------------------- */

const char *qd_store_job_state_name(enum qd_store_job_state st) {
    return (unsigned)st < QD_STORE_JOB_COUNT ? JOB_STATE_NAMES[st] : NULL;
}

static enum qd_store_job_state parse_state(const unsigned char *t) {
    for (int i = 0; i < QD_STORE_JOB_COUNT; i++)
        if (t && strcmp((const char *)t, JOB_STATE_NAMES[i]) == 0)
            return (enum qd_store_job_state)i;
    return QD_STORE_JOB_COUNT;
}

#define JOB_COLS "id, model_digest, spec_digest, numerics_version, state, attempts, error, " \
                 "artifact_id, created_ms, started_ms, finished_ms, cache_hit, error_code"

static void read_job(sqlite3_stmt *st, struct qd_store_job *j) {
    memset(j, 0, sizeof *j);
    copy_str(j->id, sizeof j->id, sqlite3_column_text(st, 0));
    copy_str(j->key.model_digest, sizeof j->key.model_digest, sqlite3_column_text(st, 1));
    copy_str(j->key.spec_digest, sizeof j->key.spec_digest, sqlite3_column_text(st, 2));
    copy_str(j->key.numerics_version, sizeof j->key.numerics_version,
             sqlite3_column_text(st, 3));
    j->state = parse_state(sqlite3_column_text(st, 4));
    j->attempts = sqlite3_column_int(st, 5);
    copy_str(j->error, sizeof j->error, sqlite3_column_text(st, 6));
    copy_str(j->artifact_id, sizeof j->artifact_id, sqlite3_column_text(st, 7));
    j->created_ms = sqlite3_column_int64(st, 8);
    j->started_ms = sqlite3_column_int64(st, 9);
    j->finished_ms = sqlite3_column_int64(st, 10);
    j->cache_hit = sqlite3_column_int(st, 11) != 0;
    copy_str(j->error_code, sizeof j->error_code, sqlite3_column_text(st, 12));
}

qd_err qd_store_job_add(struct qd_store *s, const struct qd_store_key *key,
                        struct qd_store_job *ret_job, qd_error *err) {
    if (!key) return qd_error_set(err, QD_ERR_INVALID_ARG, "cache key missing");
    struct qd_store_job_new nj = {.key = *key, .spec_json = ""};
    return qd_store_job_add_ex(s, &nj, ret_job, err);
}

qd_err qd_store_job_add_ex(struct qd_store *s, const struct qd_store_job_new *nj,
                           struct qd_store_job *ret_job, qd_error *err) {
    struct qd_store_job j;
    memset(&j, 0, sizeof j);
    qd_err rc = check_key(&nj->key, err);
    if (rc == QD_OK && !nj->spec_json)
        rc = qd_error_set(err, QD_ERR_INVALID_ARG, "job: spec_json missing");
    if (rc == QD_OK && nj->cache_hit) rc = check_id("artifact", nj->artifact_id, err);
    if (rc == QD_OK && nj->owner) rc = check_owner(nj->owner, err);
    if (rc == QD_OK) rc = new_id(j.id, err);
    sqlite3_stmt *st;
    if (rc == QD_OK)
        rc = prepare(s, "INSERT INTO jobs(id, model_digest, spec_digest, numerics_version, "
                        "state, created_ms, spec_json, model_path, label, cache_hit, "
                        "artifact_id, started_ms, finished_ms) "
                        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?12)",
                     &st, err);
    if (rc != QD_OK) return rc;
    j.key = nj->key;
    j.state = nj->cache_hit ? QD_STORE_JOB_SUCCEEDED : QD_STORE_JOB_QUEUED;
    j.created_ms = now_ms(s);
    j.cache_hit = nj->cache_hit;
    if (nj->cache_hit) {
        snprintf(j.artifact_id, sizeof j.artifact_id, "%s", nj->artifact_id);
        j.started_ms = j.finished_ms = j.created_ms;
    }
    sqlite3_bind_text(st, 1, j.id, -1, SQLITE_STATIC);
    bind_key(st, 2, &nj->key);
    sqlite3_bind_text(st, 5, qd_store_job_state_name(j.state), -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 6, j.created_ms);
    sqlite3_bind_text(st, 7, nj->spec_json, -1, SQLITE_TRANSIENT);
    if (nj->model_path) sqlite3_bind_text(st, 8, nj->model_path, -1, SQLITE_TRANSIENT);
    else sqlite3_bind_null(st, 8);
    if (nj->label) sqlite3_bind_text(st, 9, nj->label, -1, SQLITE_TRANSIENT);
    else sqlite3_bind_null(st, 9);
    sqlite3_bind_int(st, 10, nj->cache_hit ? 1 : 0);
    sqlite3_bind_text(st, 11, j.artifact_id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 12, j.started_ms);
    rc = exec(s, "BEGIN IMMEDIATE", err);
    if (rc == QD_OK && sqlite3_step(st) != SQLITE_DONE) rc = db_error(s, "insert job", err);
    sqlite3_finalize(st);
    if (rc == QD_OK)
        rc = qd_store_owner_add(s, QD_STORE_OWN_JOB, j.id, nj->owner ? nj->owner : "", err);
    if (rc == QD_OK) rc = exec(s, "COMMIT", err);
    if (rc != QD_OK) {
        rollback(s);
        return rc;
    }
    if (ret_job) *ret_job = j;
    return rc;
}

static qd_err dup_column(sqlite3_stmt *st, int col, bool null_ok, char **out) {
    if (null_ok && sqlite3_column_type(st, col) == SQLITE_NULL) {
        *out = NULL;
        return QD_OK;
    }
    const char *t = (const char *)sqlite3_column_text(st, col);
    *out = strdup(t ? t : "");
    return *out ? QD_OK : QD_ERR_NOMEM;
}

qd_err qd_store_job_text_get(struct qd_store *s, const char *id, struct qd_store_job_text *ret,
                             qd_error *err) {
    qd_err rc = check_id("job", id, err);
    sqlite3_stmt *st;
    if (rc == QD_OK)
        rc = prepare(s, "SELECT spec_json, model_path, label FROM jobs WHERE id = ?1", &st,
                     err);
    if (rc != QD_OK) return rc;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    struct qd_store_job_text t = {0};
    int r = sqlite3_step(st);
    if (r == SQLITE_ROW) {
        if (dup_column(st, 0, false, &t.spec_json) != QD_OK ||
            dup_column(st, 1, true, &t.model_path) != QD_OK ||
            dup_column(st, 2, true, &t.label) != QD_OK)
            rc = qd_error_set(err, QD_ERR_NOMEM, "job %s: out of memory", id);
    } else if (r == SQLITE_DONE) {
        rc = qd_error_set(err, QD_ERR_NOT_FOUND, "job %s: not found", id);
    } else {
        rc = db_error(s, "look up job", err);
    }
    sqlite3_finalize(st);
    if (rc != QD_OK) {
        qd_store_job_text_free(&t);
        return rc;
    }
    *ret = t;
    return QD_OK;
}

void qd_store_job_text_free(struct qd_store_job_text *t) {
    if (!t) return;
    free(t->spec_json);
    free(t->model_path);
    free(t->label);
    memset(t, 0, sizeof *t);
}

qd_err qd_store_job_get(struct qd_store *s, const char *id, struct qd_store_job *ret_job,
                        qd_error *err) {
    qd_err rc = check_id("job", id, err);
    sqlite3_stmt *st;
    if (rc == QD_OK) rc = prepare(s, "SELECT " JOB_COLS " FROM jobs WHERE id = ?1", &st, err);
    if (rc != QD_OK) return rc;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    int r = sqlite3_step(st);
    if (r == SQLITE_ROW) read_job(st, ret_job);
    else if (r == SQLITE_DONE) rc = qd_error_set(err, QD_ERR_NOT_FOUND, "job %s: not found", id);
    else rc = db_error(s, "look up job", err);
    sqlite3_finalize(st);
    return rc;
}

static bool transition_ok(enum qd_store_job_state from, enum qd_store_job_state to) {
    switch (from) {
    case QD_STORE_JOB_QUEUED: return to == QD_STORE_JOB_RUNNING || to == QD_STORE_JOB_CANCELLED;
    case QD_STORE_JOB_RUNNING:
        return to == QD_STORE_JOB_SUCCEEDED || to == QD_STORE_JOB_FAILED ||
               to == QD_STORE_JOB_CANCELLED;
    default: return false;
    }
}

qd_err qd_store_job_set_state(struct qd_store *s, const char *id,
                              enum qd_store_job_state state, const char *error,
                              const char *artifact_id, qd_error *err) {
    return qd_store_job_set_state_ex(s, id, state, NULL, error, artifact_id, err);
}

qd_err qd_store_job_set_state_ex(struct qd_store *s, const char *id,
                                 enum qd_store_job_state state, const char *error_code,
                                 const char *error, const char *artifact_id, qd_error *err) {
    struct qd_store_job j;
    qd_err rc = qd_store_job_get(s, id, &j, err);
    if (rc != QD_OK) return rc;
    if ((unsigned)state >= QD_STORE_JOB_COUNT || !transition_ok(j.state, state))
        return qd_error_set(err, QD_ERR_PRECONDITION, "job %s: cannot go from %s to %s", id,
                            qd_store_job_state_name(j.state) ? qd_store_job_state_name(j.state)
                                                             : "?",
                            qd_store_job_state_name(state) ? qd_store_job_state_name(state)
                                                           : "?");
    if (state == QD_STORE_JOB_SUCCEEDED) {
        rc = check_id("artifact", artifact_id, err);
        if (rc != QD_OK) return rc;
    } else {
        artifact_id = "";
    }
    if (state != QD_STORE_JOB_FAILED && state != QD_STORE_JOB_CANCELLED) error = error_code = "";
    if (!error_code) error_code = "";
    if (strlen(error_code) >= QD_STORE_JOB_CODE_MAX)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "job %s: error code '%.40s' too long", id,
                            error_code);
    int64_t t = now_ms(s);
    sqlite3_stmt *st;
    /* The WHERE on the old state makes the transition a compare-and-set. */
    rc = prepare(s, "UPDATE jobs SET state = ?1, error = ?2, artifact_id = ?3, "
                    "attempts = attempts + (?1 = 'running'), "
                    "started_ms = CASE WHEN ?1 = 'running' THEN ?4 ELSE started_ms END, "
                    "finished_ms = CASE WHEN ?1 IN ('succeeded','failed','cancelled') "
                    "  THEN ?4 ELSE finished_ms END, "
                    "error_code = ?7 "
                    "WHERE id = ?5 AND state = ?6", &st, err);
    if (rc != QD_OK) return rc;
    sqlite3_bind_text(st, 1, qd_store_job_state_name(state), -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, error ? error : "", -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 3, artifact_id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, t);
    sqlite3_bind_text(st, 5, id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, qd_store_job_state_name(j.state), -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 7, error_code, -1, SQLITE_TRANSIENT);
    if (sqlite3_step(st) != SQLITE_DONE) rc = db_error(s, "update job", err);
    else if (sqlite3_changes(s->db) != 1)
        rc = qd_error_set(err, QD_ERR_PRECONDITION, "job %s: changed state meanwhile", id);
    sqlite3_finalize(st);
    return rc;
}

qd_err qd_store_job_list(struct qd_store *s, enum qd_store_job_state state,
                         struct qd_store_job **ret_jobs, size_t *ret_n, qd_error *err) {
    if ((unsigned)state >= QD_STORE_JOB_COUNT)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "job state %d out of range", (int)state);
    sqlite3_stmt *st;
    qd_err rc = prepare(s, "SELECT " JOB_COLS " FROM jobs WHERE state = ?1 "
                           "ORDER BY created_ms, rowid", &st, err);
    if (rc != QD_OK) return rc;
    sqlite3_bind_text(st, 1, qd_store_job_state_name(state), -1, SQLITE_STATIC);
    struct qd_store_job *jobs = NULL;
    size_t n = 0;
    int r;
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        void *p = realloc(jobs, (n + 1) * sizeof *jobs);
        if (!p) break;
        jobs = p;
        read_job(st, &jobs[n++]);
    }
    if (r == SQLITE_ROW) rc = qd_error_set(err, QD_ERR_NOMEM, "list jobs: out of memory");
    else if (r != SQLITE_DONE) rc = db_error(s, "list jobs", err);
    sqlite3_finalize(st);
    if (rc != QD_OK) {
        free(jobs);
        return rc;
    }
    *ret_jobs = jobs;
    *ret_n = n;
    return QD_OK;
}

qd_err qd_store_job_requeue(struct qd_store *s, const char *id, qd_error *err) {
    qd_err rc = check_id("job", id, err);
    sqlite3_stmt *st;
    if (rc == QD_OK)
        rc = prepare(s, "UPDATE jobs SET state = 'queued', started_ms = 0, "
                        "attempts = MAX(attempts - 1, 0) WHERE id = ?1 AND state = 'running'",
                     &st, err);
    if (rc != QD_OK) return rc;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE) rc = db_error(s, "re-queue job", err);
    else if (sqlite3_changes(s->db) != 1)
        rc = qd_error_set(err, QD_ERR_PRECONDITION, "job %s: not running, cannot re-queue", id);
    sqlite3_finalize(st);
    return rc;
}

qd_err qd_store_job_query(struct qd_store *s, unsigned state_mask, const char *model_digest,
                          const char *after_id, size_t limit, struct qd_store_job **ret_jobs,
                          size_t *ret_n, bool *ret_more, qd_error *err) {
    return qd_store_job_query_owned(s, NULL, state_mask, model_digest, after_id, limit, ret_jobs,
                                    ret_n, ret_more, err);
}

/* The jobs an owner may see (?N holds the owner, or NULL for all). */
#define JOB_SEEN(n) "(?" #n " IS NULL OR id IN (SELECT id FROM owners WHERE owner = ?" #n \
                    " AND kind IN ('job', 'job-joined')))"

qd_err qd_store_job_query_owned(struct qd_store *s, const char *owner, unsigned state_mask,
                                const char *model_digest, const char *after_id, size_t limit,
                                struct qd_store_job **ret_jobs, size_t *ret_n, bool *ret_more,
                                qd_error *err) {
    if (owner) {
        qd_err orc = check_owner(owner, err);
        if (orc != QD_OK) return orc;
    }
    if (limit == 0 || limit > 100000)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "job list: limit %zu out of range 1..100000",
                            limit);
    if (model_digest && !is_hex64(model_digest))
        return qd_error_set(err, QD_ERR_INVALID_ARG, "model_digest '%.80s' is not 64 lowercase "
                            "hex chars", model_digest);
    int64_t after_created = INT64_MAX, after_rowid = INT64_MAX;
    sqlite3_stmt *st;
    qd_err rc = QD_OK;
    if (after_id) {
        rc = check_id("job", after_id, err);
        if (rc == QD_OK)
            rc = prepare(s, "SELECT created_ms, rowid FROM jobs WHERE id = ?1 AND " JOB_SEEN(2),
                         &st, err);
        if (rc != QD_OK) return rc;
        sqlite3_bind_text(st, 1, after_id, -1, SQLITE_STATIC);
        if (owner) sqlite3_bind_text(st, 2, owner, -1, SQLITE_STATIC);
        else sqlite3_bind_null(st, 2);
        int r = sqlite3_step(st);
        if (r == SQLITE_ROW) {
            after_created = sqlite3_column_int64(st, 0);
            after_rowid = sqlite3_column_int64(st, 1);
        } else if (r == SQLITE_DONE) {
            rc = qd_error_set(err, QD_ERR_NOT_FOUND, "job %s: not found (page token)", after_id);
        } else {
            rc = db_error(s, "look up job", err);
        }
        sqlite3_finalize(st);
        if (rc != QD_OK) return rc;
    }
    /* States as a set of names: ?1 .. ?5 hold a name, or NULL when not wanted. */
    rc = prepare(s, "SELECT " JOB_COLS " FROM jobs "
                    "WHERE (?6 IS NULL OR model_digest = ?6) "
                    "AND (?9 = 0 OR state IN (?1, ?2, ?3, ?4, ?5)) "
                    "AND (created_ms < ?7 OR (created_ms = ?7 AND rowid < ?8)) "
                    "AND " JOB_SEEN(11) " "
                    "ORDER BY created_ms DESC, rowid DESC LIMIT ?10", &st, err);
    if (rc != QD_OK) return rc;
    for (int i = 0; i < QD_STORE_JOB_COUNT; i++) {
        if (state_mask & (1u << i))
            sqlite3_bind_text(st, i + 1, JOB_STATE_NAMES[i], -1, SQLITE_STATIC);
        else
            sqlite3_bind_null(st, i + 1);
    }
    if (model_digest) sqlite3_bind_text(st, 6, model_digest, -1, SQLITE_STATIC);
    else sqlite3_bind_null(st, 6);
    sqlite3_bind_int64(st, 7, after_created);
    sqlite3_bind_int64(st, 8, after_rowid);
    sqlite3_bind_int(st, 9, state_mask ? 1 : 0);
    sqlite3_bind_int64(st, 10, (int64_t)limit + 1); /* one more tells whether more follow */
    if (owner) sqlite3_bind_text(st, 11, owner, -1, SQLITE_STATIC);
    else sqlite3_bind_null(st, 11);
    struct qd_store_job *jobs = NULL;
    size_t n = 0;
    bool more = false;
    int r;
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == limit) {
            more = true;
            continue;
        }
        void *p = realloc(jobs, (n + 1) * sizeof *jobs);
        if (!p) break;
        jobs = p;
        read_job(st, &jobs[n++]);
    }
    if (r == SQLITE_ROW) rc = qd_error_set(err, QD_ERR_NOMEM, "list jobs: out of memory");
    else if (r != SQLITE_DONE) rc = db_error(s, "list jobs", err);
    sqlite3_finalize(st);
    if (rc != QD_OK) {
        free(jobs);
        return rc;
    }
    *ret_jobs = jobs;
    *ret_n = n;
    if (ret_more) *ret_more = more;
    return QD_OK;
}

/* ---- owners ------------------------------------------------------------------------------ */

static const char *const OWNER_KINDS[QD_STORE_OWN_COUNT] = {
    [QD_STORE_OWN_JOB] = "job",           [QD_STORE_OWN_JOB_JOINED] = "job-joined",
    [QD_STORE_OWN_ARTIFACT] = "artifact", [QD_STORE_OWN_BUNDLE] = "bundle",
    [QD_STORE_OWN_BLOB] = "blob",         [QD_STORE_OWN_PART] = "part",
};

const char *qd_store_owner_kind_name(enum qd_store_owner_kind kind) {
    return (unsigned)kind < QD_STORE_OWN_COUNT ? OWNER_KINDS[kind] : NULL;
}

/* The kind and the id of an owner row: ids are job/artifact ids or sha256s, so at most 64
 * lowercase hex chars. */
static qd_err check_owned(enum qd_store_owner_kind kind, const char *id, qd_error *err) {
    if ((unsigned)kind >= QD_STORE_OWN_COUNT)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "owner kind %d out of range", (int)kind);
    size_t n = id ? strnlen(id, QD_STORE_HEX_LEN + 1) : 0;
    bool ok = n > 0 && n <= QD_STORE_HEX_LEN;
    for (size_t i = 0; ok && i < n; i++)
        ok = (id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f');
    if (!ok)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "%s id '%.80s': not an id or a digest",
                            OWNER_KINDS[kind], id ? id : "(null)");
    return QD_OK;
}

/* Prepare sql and bind ?1 kind, ?2 id and ?3 owner (NULL binds NULL). */
static qd_err owner_stmt(struct qd_store *s, const char *sql, enum qd_store_owner_kind kind,
                         const char *id, const char *owner, bool owner_null_ok,
                         sqlite3_stmt **ret, qd_error *err) {
    qd_err rc = check_owned(kind, id, err);
    if (rc == QD_OK && (owner || !owner_null_ok)) rc = check_owner(owner, err);
    if (rc == QD_OK) rc = prepare(s, sql, ret, err);
    if (rc != QD_OK) return rc;
    sqlite3_bind_text(*ret, 1, OWNER_KINDS[kind], -1, SQLITE_STATIC);
    sqlite3_bind_text(*ret, 2, id, -1, SQLITE_STATIC);
    /* A statement without ?3 (a list) ignores the binding. */
    if (owner) sqlite3_bind_text(*ret, 3, owner, -1, SQLITE_STATIC);
    else if (sqlite3_bind_parameter_count(*ret) >= 3) sqlite3_bind_null(*ret, 3);
    return QD_OK;
}

qd_err qd_store_owner_add(struct qd_store *s, enum qd_store_owner_kind kind, const char *id,
                          const char *owner, qd_error *err) {
    sqlite3_stmt *st;
    qd_err rc = owner_stmt(s, "INSERT OR IGNORE INTO owners(kind, id, owner) VALUES (?1, ?2, ?3)",
                           kind, id, owner, false, &st, err);
    if (rc != QD_OK) return rc;
    if (sqlite3_step(st) != SQLITE_DONE) rc = db_error(s, "add owner", err);
    sqlite3_finalize(st);
    return rc;
}

qd_err qd_store_owner_has(struct qd_store *s, enum qd_store_owner_kind kind, const char *id,
                          const char *owner, bool *ret, qd_error *err) {
    sqlite3_stmt *st;
    qd_err rc = owner_stmt(s, "SELECT 1 FROM owners WHERE kind = ?1 AND id = ?2 AND owner = ?3",
                           kind, id, owner, false, &st, err);
    if (rc != QD_OK) return rc;
    int r = sqlite3_step(st);
    if (r == SQLITE_ROW || r == SQLITE_DONE) *ret = r == SQLITE_ROW;
    else rc = db_error(s, "look up owner", err);
    sqlite3_finalize(st);
    return rc;
}

void qd_store_owners_free(char **owners, size_t n) {
    if (!owners) return;
    for (size_t i = 0; i < n; i++) free(owners[i]);
    free(owners);
}

qd_err qd_store_owner_list(struct qd_store *s, enum qd_store_owner_kind kind, const char *id,
                           char ***ret_owners, size_t *ret_n, qd_error *err) {
    sqlite3_stmt *st;
    qd_err rc = owner_stmt(s, "SELECT owner FROM owners WHERE kind = ?1 AND id = ?2 ORDER BY owner",
                           kind, id, NULL, true, &st, err);
    if (rc != QD_OK) return rc;
    char **out = NULL;
    size_t n = 0;
    int r;
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        void *p = realloc(out, (n + 1) * sizeof *out);
        if (!p) break;
        out = p;
        const char *o = (const char *)sqlite3_column_text(st, 0);
        if (!(out[n] = strdup(o ? o : ""))) break;
        n++;
    }
    if (r == SQLITE_ROW) rc = qd_error_set(err, QD_ERR_NOMEM, "%s %s: owners: out of memory",
                                           OWNER_KINDS[kind], id);
    else if (r != SQLITE_DONE) rc = db_error(s, "list owners", err);
    sqlite3_finalize(st);
    if (rc != QD_OK) {
        qd_store_owners_free(out, n);
        return rc;
    }
    *ret_owners = out;
    *ret_n = n;
    return QD_OK;
}

qd_err qd_store_owner_remove(struct qd_store *s, enum qd_store_owner_kind kind, const char *id,
                             const char *owner, qd_error *err) {
    sqlite3_stmt *st;
    qd_err rc = owner_stmt(s, "DELETE FROM owners WHERE kind = ?1 AND id = ?2 "
                              "AND (?3 IS NULL OR owner = ?3)",
                           kind, id, owner, true, &st, err);
    if (rc != QD_OK) return rc;
    if (sqlite3_step(st) != SQLITE_DONE) rc = db_error(s, "remove owner", err);
    sqlite3_finalize(st);
    return rc;
}

qd_err qd_store_owner_copy(struct qd_store *s, enum qd_store_owner_kind from_kind,
                           const char *from_id, enum qd_store_owner_kind to_kind,
                           const char *to_id, qd_error *err) {
    qd_err rc = check_owned(from_kind, from_id, err);
    if (rc == QD_OK) rc = check_owned(to_kind, to_id, err);
    sqlite3_stmt *st;
    if (rc == QD_OK)
        rc = prepare(s, "INSERT OR IGNORE INTO owners(kind, id, owner) "
                        "SELECT ?3, ?4, owner FROM owners WHERE kind = ?1 AND id = ?2", &st, err);
    if (rc != QD_OK) return rc;
    sqlite3_bind_text(st, 1, OWNER_KINDS[from_kind], -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, from_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, OWNER_KINDS[to_kind], -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, to_id, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE) rc = db_error(s, "copy owners", err);
    sqlite3_finalize(st);
    return rc;
}
