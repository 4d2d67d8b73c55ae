/*
 * store.h - quantd's persistent state: the cache index (SQLite), the content-addressed blob
 * store, model manifests, the artifact registry with LRU eviction, and the job table.
 *
 * This is the whole interface the daemon uses, kept narrow so that the cache index can later
 * move out of SQLite (design.md, "Scale beyond one machine"). No SQLite type crosses it.
 *
 * On disk, under data_dir/:
 *
 *   quantd.db                     SQLite, WAL; schema versioned by PRAGMA user_version
 *   blobs/sha256/ab/cdef...       complete, verified blobs, named by their sha256 (the first
 *                                 two hex chars are the directory, the other 62 the file)
 *   staging/uploads/<sha>.part    a blob being uploaded: its length is the durable prefix
 *   staging/<anything else>       scratch (job outputs before publish): removed on open
 *   artifacts/<id>/               published artifacts, each with a row in quantd.db
 *
 * Usage:
 *     struct qd_store *s = NULL;
 *     qd_error err = {0};
 *     if (qd_store_open(data_dir, &s, &err) != QD_OK) { report qd_error_text(&err); }
 *     ...
 *     qd_store_close(s);
 *
 * Threads: a qd_store is NOT thread-safe. The daemon calls it from one thread (or under one
 * lock); workers reach it only through the daemon.
 *
 * Exception: the blob functions (qd_store_blob_*, qd_store_hash_file) touch no SQLite and no
 * mutable state of the qd_store, only files named by the sha256. They may run without the
 * daemon's lock as long as each blob has one writer at a time (the daemon lets one upload
 * stream hold a blob while it appends and finishes it).
 *
 * Digests (sha256 of blobs, model/manifest digests, spec digests) are 64 lowercase hex chars;
 * every function that takes one checks it (QD_ERR_INVALID_ARG naming the field otherwise).
 *
 * Schema history (PRAGMA user_version):
 *   1  models, model_files, artifacts, jobs
 *   2  models.kind; jobs.{spec_json, model_path, label, error_code, cache_hit}: what a job
 *      needs to run again after a restart and to be shown; artifacts.spec_json; the
 *      artifact_files table (each artifact file's name, size and sha256, computed once)
 *   3  owners: who may see each job, artifact, bundle and blob (see "owners" below); rows
 *      that predate it get the owner "" (the owner of every call while auth is off)
 */
#ifndef QD_STORE_H
#define QD_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

#define QD_STORE_HEX_LEN 64           /* a sha256 in hex */
#define QD_STORE_ID_LEN 32            /* artifact and job ids: 16 random bytes in hex */
#define QD_STORE_VERSION_MAX 64       /* numerics version, with its NUL */
#define QD_STORE_FORMAT_MAX 48        /* artifact format registry name, with its NUL */
#define QD_STORE_SCHEMA_VERSION 3     /* PRAGMA user_version this code writes */
#define QD_STORE_OWNER_MAX 128        /* longest owner name, with its NUL */

struct qd_store;

/* ---- open / close ------------------------------------------------------------------------ */

/* What qd_store_open found and repaired (for the daemon's startup log). */
struct qd_store_recovery {
    int n_jobs_requeued;        /* RUNNING jobs put back in the queue */
    int n_jobs_failed;          /* RUNNING jobs failed: interrupted too many times */
    int n_staging_removed;      /* staging entries removed (job scratch, stray files) */
    int n_orphans_removed;      /* artifacts/<id> without a row, rows without a directory */
    int n_uploads_resumable;    /* staging/uploads/<sha>.part kept for resumption */
};

/* Create data_dir/{blobs/sha256,artifacts,staging/uploads} if missing, open (or create)
 * quantd.db, migrate it, check it (PRAGMA quick_check), clean staging and recover jobs.
 * A database whose schema is newer than this code is refused (QD_ERR_UNSUPPORTED); a failed
 * check is QD_ERR_CORRUPT. *ret_store is set only on success. */
qd_err qd_store_open(const char *data_dir, struct qd_store **ret_store, qd_error *err);
/* Close; accepts NULL. Returns NULL. */
struct qd_store *qd_store_close(struct qd_store *s);
/* What the last qd_store_open recovered. */
const struct qd_store_recovery *qd_store_recovery(const struct qd_store *s);
/* The data directory the store was opened on. */
const char *qd_store_data_dir(const struct qd_store *s);
/* PRAGMA integrity_check (full, slow on a big db); QD_ERR_CORRUPT with its first line. */
qd_err qd_store_integrity_check(struct qd_store *s, qd_error *err);
/* Replace the wall clock (ms since the epoch) used for created/last_used/job times. For
 * tests; NULL restores the real clock. */
void qd_store_set_clock(struct qd_store *s, int64_t (*now_ms)(void *ctx), void *ctx);

/* ---- blobs: content-addressed, resumable uploads ------------------------------------------
 * An upload is named by its expected (sha256, size). Chunks come at increasing, contiguous
 * offsets; each append is fdatasync'd before it returns, so the held length it reports is
 * durable and a restarted daemon resumes from it. finish() hashes what is on disk: a
 * mismatch is QD_ERR_CORRUPT and the partial data is removed; a match is renamed into
 * blobs/sha256/. A blob already complete counts as complete at once. */

/* How much of a blob is held: complete blobs report held = size. */
qd_err qd_store_blob_stat(struct qd_store *s, const char *sha256, uint64_t size,
                          uint64_t *ret_held, bool *ret_complete, qd_error *err);
/* Start or resume an upload: creates the part file if missing; answers the offset to resume
 * at (and complete = true, held = size, when the blob is already there). */
qd_err qd_store_blob_begin(struct qd_store *s, const char *sha256, uint64_t size,
                           uint64_t *ret_held, bool *ret_complete, qd_error *err);
/* Append len bytes at offset, which must equal the held length (QD_ERR_PRECONDITION
 * naming both otherwise). offset + len past size is QD_ERR_INVALID_ARG naming the offset.
 * A complete blob refuses chunks with QD_ERR_EXISTS. ret_held may be NULL. */
qd_err qd_store_blob_append(struct qd_store *s, const char *sha256, uint64_t size,
                            uint64_t offset, const void *data, size_t len,
                            uint64_t *ret_held, qd_error *err);
/* Verify and publish a fully held upload (QD_ERR_PRECONDITION if bytes are missing). */
qd_err qd_store_blob_finish(struct qd_store *s, const char *sha256, uint64_t size,
                            qd_error *err);
/* The path of a complete blob (QD_ERR_NOT_FOUND if it is not complete). */
qd_err qd_store_blob_path(struct qd_store *s, const char *sha256, char *buf, size_t len,
                          qd_error *err);
/* Open a complete blob read-only; the caller closes *ret_fd. */
qd_err qd_store_blob_open(struct qd_store *s, const char *sha256, int *ret_fd,
                          uint64_t *ret_size, qd_error *err);
/* Bytes held in blobs/ (complete blobs; uploads in progress are not counted). */
qd_err qd_store_blob_total(struct qd_store *s, uint64_t *ret_bytes, qd_error *err);
/* sha256 (lowercase hex) and size of the regular file at path, streamed. */
qd_err qd_store_hash_file(const char *path, char ret_hex[QD_STORE_HEX_LEN + 1],
                          uint64_t *ret_size, qd_error *err);

/* ---- model manifests ----------------------------------------------------------------------
 * A bundle (model or calibration set) is named by its manifest digest: the rule in
 * quantd.proto's header comment ("<sha256>  <size>  <name>\n" per file, sorted by name in
 * memcmp order, sha256 of the text). */
struct qd_store_file {
    char *name;                          /* relative '/'-separated path */
    uint64_t size;
    char sha256[QD_STORE_HEX_LEN + 1];
};

/* Check a manifest (names, order, uniqueness, digests) and compute its digest into ret_hex
 * (65 bytes). Errors name the entry. */
qd_err qd_store_manifest_digest(const struct qd_store_file *files, size_t n_files,
                                char ret_hex[QD_STORE_HEX_LEN + 1], qd_error *err);
/* Record a manifest under its digest. If expect_digest is not NULL it must match the
 * computed one (QD_ERR_INVALID_ARG otherwise). Registering the same manifest again is OK. */
qd_err qd_store_model_register(struct qd_store *s, const struct qd_store_file *files,
                               size_t n_files, const char *expect_digest,
                               char ret_digest[QD_STORE_HEX_LEN + 1], qd_error *err);
/* A registered manifest's files, sorted; free with qd_store_files_free(). */
qd_err qd_store_model_files(struct qd_store *s, const char *digest,
                            struct qd_store_file **ret_files, size_t *ret_n, qd_error *err);
/* Free an array from qd_store_model_files (accepts NULL). */
void qd_store_files_free(struct qd_store_file *files, size_t n_files);
/* What a bundle holds, as the first upload said (quantd.v1.BundleKind: 1 model, 2
 * calibration; 0 unknown). set_kind records kind only while none is recorded, so the first
 * upload decides; QD_ERR_NOT_FOUND for a manifest never registered. */
qd_err qd_store_model_set_kind(struct qd_store *s, const char *digest, int kind,
                               qd_error *err);
qd_err qd_store_model_kind(struct qd_store *s, const char *digest, int *ret_kind,
                           qd_error *err);

/* ---- artifacts and the cache --------------------------------------------------------------
 * The cache key is (model digest, spec digest, numerics version); at most one artifact per
 * key. An artifact is listed only once its directory is complete: publish fsyncs the staging
 * directory, renames it to artifacts/<id>/, and only then inserts the row.
 * Pins are held by running jobs and open downloads. They live in memory: after a restart
 * nothing runs and nothing downloads, so persisted pins could only leak. */
struct qd_store_key {
    char model_digest[QD_STORE_HEX_LEN + 1];
    char spec_digest[QD_STORE_HEX_LEN + 1];
    char numerics_version[QD_STORE_VERSION_MAX];  /* non-empty, printable, no '/' */
};

struct qd_store_artifact {
    char id[QD_STORE_ID_LEN + 1];
    struct qd_store_key key;
    char format[QD_STORE_FORMAT_MAX];
    char job_id[QD_STORE_ID_LEN + 1];    /* "" if none */
    uint64_t total_bytes;                /* sum of its regular files */
    int64_t created_ms;
    int64_t last_used_ms;
};

/* Make a fresh scratch directory under staging/ for a job's output; path into buf. */
qd_err qd_store_staging_new(struct qd_store *s, char *buf, size_t len, qd_error *err);
/* Publish staging_dir (a directory directly under data_dir/staging) as the artifact of key.
 * QD_ERR_EXISTS if the key already has one (the staging dir is left to the caller). */
qd_err qd_store_artifact_publish(struct qd_store *s, const char *staging_dir,
                                 const struct qd_store_key *key, const char *format,
                                 const char *job_id, struct qd_store_artifact *ret_art,
                                 qd_error *err);
/* Publish with what schema 2 records besides: the spec that made the artifact (its canonical
 * JSON, may be NULL) and the artifact's files with their sha256, sorted by name. files NULL:
 * the store hashes the directory itself (under the caller's lock: slow for big artifacts, so
 * the daemon hashes before it takes the lock). A given list must name exactly the regular
 * files of staging_dir with their sizes (QD_ERR_INVALID_ARG otherwise); the sha256s are
 * trusted. Schema 3: every owner of the job (submitter and joiners) and p->owner become
 * owners of the artifact, in the row's transaction. */
struct qd_store_publish {
    const char *staging_dir;
    const struct qd_store_key *key;
    const char *format;
    const char *job_id;                  /* NULL or "" if none */
    const char *spec_json;               /* NULL or "" if none */
    const struct qd_store_file *files;   /* NULL: hash staging_dir */
    size_t n_files;
    const char *owner;                   /* schema 3: an owner besides the job's (NULL: none) */
};
qd_err qd_store_artifact_publish_ex(struct qd_store *s, const struct qd_store_publish *p,
                                    struct qd_store_artifact *ret_art, qd_error *err);
/* Every regular file of a directory tree, sorted by name ('/'-separated paths relative to
 * dir), with sizes and sha256s; free with qd_store_files_free. Anything but regular files
 * and directories is refused (QD_ERR_INVALID_ARG naming it). */
qd_err qd_store_hash_tree(const char *dir, struct qd_store_file **ret_files, size_t *ret_n,
                          qd_error *err);
/* An artifact's files, sorted by name, with sha256; free with qd_store_files_free. Artifacts
 * published before schema 2 have no recorded list: it is computed and recorded on first use. */
qd_err qd_store_artifact_files(struct qd_store *s, const char *id,
                               struct qd_store_file **ret_files, size_t *ret_n, qd_error *err);
/* The canonical spec JSON recorded at publish (malloc'd; "" when none was recorded). */
qd_err qd_store_artifact_spec(struct qd_store *s, const char *id, char **ret_json,
                              qd_error *err);
/* The artifact of a cache key (QD_ERR_NOT_FOUND if none); a hit sets last_used to now. */
qd_err qd_store_artifact_lookup(struct qd_store *s, const struct qd_store_key *key,
                                struct qd_store_artifact *ret_art, qd_error *err);
/* By id, without touching last_used. */
qd_err qd_store_artifact_get(struct qd_store *s, const char *id,
                             struct qd_store_artifact *ret_art, qd_error *err);
/* The directory of an artifact (artifacts/<id>) into buf. */
qd_err qd_store_artifact_dir(struct qd_store *s, const char *id, char *buf, size_t len,
                             qd_error *err);
/* Every artifact, oldest first; free(*ret_arts). */
qd_err qd_store_artifact_list(struct qd_store *s, struct qd_store_artifact **ret_arts,
                              size_t *ret_n, qd_error *err);
/* Delete an artifact (QD_ERR_PRECONDITION while pinned), with its owner rows. The row goes
 * first, so a crash midway leaves only an orphan directory, which the next open removes. */
qd_err qd_store_artifact_delete(struct qd_store *s, const char *id, qd_error *err);
/* Hold an artifact against eviction and deletion (counted); pin also sets last_used. */
qd_err qd_store_artifact_pin(struct qd_store *s, const char *id, qd_error *err);
qd_err qd_store_artifact_unpin(struct qd_store *s, const char *id, qd_error *err);
/* Sum of total_bytes over all artifacts. */
qd_err qd_store_artifact_total(struct qd_store *s, uint64_t *ret_total, qd_error *err);
/* Evict unpinned artifacts, least recently used first, until the total is <= limit_bytes.
 * Pinned ones are skipped; if they alone exceed the limit the total stays above it (not an
 * error: *ret_total tells). Out-params may be NULL. */
qd_err qd_store_evict(struct qd_store *s, uint64_t limit_bytes, int *ret_n_evicted,
                      uint64_t *ret_total, qd_error *err);

/* ---- jobs ---------------------------------------------------------------------------------
 *
 *   QUEUED --start--> RUNNING --finish--> SUCCEEDED | FAILED | CANCELLED
 *     |  ^               |
 *     |  +---requeue-----+        (the daemon stopped it: a drain at shutdown)
 *     +----cancel--------+--> CANCELLED
 *
 *   A request the cache answered is recorded as a job born SUCCEEDED (cache_hit).
 *
 *   At open, RUNNING jobs (a restart interrupted them) go back to QUEUED, or to FAILED with
 *   "interrupted by a restart" once they have started QD_STORE_JOB_MAX_ATTEMPTS times (so a
 *   job that crashes the daemon cannot crash it forever).
 */
#define QD_STORE_JOB_MAX_ATTEMPTS 3
#define QD_STORE_JOB_ERROR_MAX 512

enum qd_store_job_state {
    QD_STORE_JOB_QUEUED,
    QD_STORE_JOB_RUNNING,
    QD_STORE_JOB_SUCCEEDED,
    QD_STORE_JOB_FAILED,
    QD_STORE_JOB_CANCELLED,
    QD_STORE_JOB_COUNT
};

#define QD_STORE_JOB_CODE_MAX 32

struct qd_store_job {
    char id[QD_STORE_ID_LEN + 1];
    struct qd_store_key key;
    enum qd_store_job_state state;
    int attempts;                        /* times it entered RUNNING */
    bool cache_hit;                      /* answered from the cache: born SUCCEEDED */
    char error_code[QD_STORE_JOB_CODE_MAX]; /* FAILED/CANCELLED: qd_err_name(); may be "" */
    char error[QD_STORE_JOB_ERROR_MAX];  /* FAILED/CANCELLED: why; "" otherwise */
    char artifact_id[QD_STORE_ID_LEN + 1];
    int64_t created_ms;
    int64_t started_ms;                  /* 0 until RUNNING */
    int64_t finished_ms;                 /* 0 until terminal */
};

/* "queued", "running", ...; NULL for an out-of-range value. */
const char *qd_store_job_state_name(enum qd_store_job_state st);
/* Add a QUEUED job for key; fills ret_job (id assigned here). */
qd_err qd_store_job_add(struct qd_store *s, const struct qd_store_key *key,
                        struct qd_store_job *ret_job, qd_error *err);
qd_err qd_store_job_get(struct qd_store *s, const char *id, struct qd_store_job *ret_job,
                        qd_error *err);
/* Move a job along the diagram above (QD_ERR_PRECONDITION for any other transition).
 * error is kept for FAILED/CANCELLED, artifact_id for SUCCEEDED (required there). */
qd_err qd_store_job_set_state(struct qd_store *s, const char *id,
                              enum qd_store_job_state state, const char *error,
                              const char *artifact_id, qd_error *err);
/* Jobs in one state, oldest first (the queue order for QUEUED); free(*ret_jobs). */
qd_err qd_store_job_list(struct qd_store *s, enum qd_store_job_state state,
                         struct qd_store_job **ret_jobs, size_t *ret_n, qd_error *err);

/* ---- jobs, schema 2: what a job needs to run again after a restart ----------------------- */

/* A new job. spec_json: the resolved spec's canonical JSON (required); model_path: the
 * server-side directory of a by-path request (NULL otherwise); label: free text (NULL for
 * none). cache_hit: record a request the cache answered, born SUCCEEDED with artifact_id
 * (it never runs); otherwise the job is QUEUED. */
struct qd_store_job_new {
    struct qd_store_key key;
    const char *spec_json;
    const char *model_path;
    const char *label;
    bool cache_hit;
    const char *artifact_id;
    const char *owner;                   /* schema 3: the submitter (NULL = ""), recorded in
                                            the row's transaction */
};
qd_err qd_store_job_add_ex(struct qd_store *s, const struct qd_store_job_new *nj,
                           struct qd_store_job *ret_job, qd_error *err);
/* The texts of a job (each malloc'd; model_path and label NULL when the job has none;
 * spec_json "" for a job added before schema 2). Free with qd_store_job_text_free. */
struct qd_store_job_text {
    char *spec_json;
    char *model_path;
    char *label;
};
qd_err qd_store_job_text_get(struct qd_store *s, const char *id, struct qd_store_job_text *ret,
                             qd_error *err);
void qd_store_job_text_free(struct qd_store_job_text *t); /* accepts a zeroed struct */
/* qd_store_job_set_state with the error's code (qd_err_name(); NULL = ""), kept like error. */
qd_err qd_store_job_set_state_ex(struct qd_store *s, const char *id,
                                 enum qd_store_job_state state, const char *error_code,
                                 const char *error, const char *artifact_id, qd_error *err);
/* RUNNING -> QUEUED for a job the daemon stopped itself (a drain at shutdown): started_ms is
 * cleared and the start is not counted as an attempt, so jobs drained at every restart are
 * never failed as crash loops. QD_ERR_PRECONDITION unless RUNNING. */
qd_err qd_store_job_requeue(struct qd_store *s, const char *id, qd_error *err);
/* A page of jobs, newest first (created_ms, then insertion order). state_mask: bit (1 << st)
 * for each state wanted (0 = all); model_digest: filter (NULL = any); after_id: start after
 * this job (NULL = from the newest; QD_ERR_NOT_FOUND if it does not exist); at most limit
 * (>= 1) jobs into *ret_jobs (free()); *ret_more says whether more follow. */
qd_err qd_store_job_query(struct qd_store *s, unsigned state_mask, const char *model_digest,
                          const char *after_id, size_t limit, struct qd_store_job **ret_jobs,
                          size_t *ret_n, bool *ret_more, qd_error *err);

/* qd_store_job_query restricted to the jobs owner may see: those it submitted or joined
 * (owner NULL: every job). An after_id it may not see is QD_ERR_NOT_FOUND, as a missing one. */
qd_err qd_store_job_query_owned(struct qd_store *s, const char *owner, unsigned state_mask,
                                const char *model_digest, const char *after_id, size_t limit,
                                struct qd_store_job **ret_jobs, size_t *ret_n, bool *ret_more,
                                qd_error *err);

/* ---- owners (schema 3) -------------------------------------------------------------------
 * Rows (kind, id, owner): the store records and answers, the daemon decides what they mean
 * (service.c). An owner is any printable text of at most QD_STORE_OWNER_MAX - 1 bytes; ""
 * is the owner of every call while authentication is off, and of every row that predates
 * schema 3. Adding a row twice is not an error. */
enum qd_store_owner_kind {
    QD_STORE_OWN_JOB,        /* job id: who submitted it (one) */
    QD_STORE_OWN_JOB_JOINED, /* job id: who joined it (a Quantize answered JOINED) */
    QD_STORE_OWN_ARTIFACT,   /* artifact id: whose jobs made it or were answered by it */
    QD_STORE_OWN_BUNDLE,     /* manifest digest: who registered it (PutModel) */
    QD_STORE_OWN_BLOB,       /* sha256: who sent the blob's bytes, or proved it knows them */
    QD_STORE_OWN_PART,       /* sha256: who wrote every byte of the upload in progress */
    QD_STORE_OWN_COUNT
};

/* "job", "job-joined", "artifact", "bundle", "blob", "part"; NULL out of range. */
const char *qd_store_owner_kind_name(enum qd_store_owner_kind kind);
qd_err qd_store_owner_add(struct qd_store *s, enum qd_store_owner_kind kind, const char *id,
                          const char *owner, qd_error *err);
/* Whether (kind, id, owner) is recorded. */
qd_err qd_store_owner_has(struct qd_store *s, enum qd_store_owner_kind kind, const char *id,
                          const char *owner, bool *ret, qd_error *err);
/* The owners of (kind, id), sorted; free with qd_store_owners_free. None is *ret_n == 0. */
qd_err qd_store_owner_list(struct qd_store *s, enum qd_store_owner_kind kind, const char *id,
                           char ***ret_owners, size_t *ret_n, qd_error *err);
void qd_store_owners_free(char **owners, size_t n); /* accepts NULL */
/* Remove owner's row of (kind, id); owner NULL: every owner's. Nothing to remove is OK. */
qd_err qd_store_owner_remove(struct qd_store *s, enum qd_store_owner_kind kind, const char *id,
                             const char *owner, qd_error *err);
/* Make every owner of (from_kind, from_id) an owner of (to_kind, to_id). */
qd_err qd_store_owner_copy(struct qd_store *s, enum qd_store_owner_kind from_kind,
                           const char *from_id, enum qd_store_owner_kind to_kind,
                           const char *to_id, qd_error *err);

#endif /* QD_STORE_H */
