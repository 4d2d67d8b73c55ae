/*
 * service.h - the daemon's core without gRPC: bundles (uploaded models and calibration sets),
 * the job queue and its workers, job events, and the artifact cache.
 *
 * The RPC layer (rpc.c) turns each request into one call here and each answer back into
 * protobuf; nothing in this interface knows gRPC or protobuf-c. All functions are
 * thread-safe: the service owns the store (store/store.h, not thread-safe) behind one mutex
 * and never holds it while a job computes or while a caller waits.
 *
 * Lifecycle:
 *     struct qd_service *svc;
 *     qd_service_open(&cfg, &svc, &err);   store opened and recovered, workers started
 *     ... RPCs call in from any thread ...
 *     qd_service_drain(svc, deadline_ms);  no new jobs; running ones finish or are cancelled
 *     qd_service_close(svc);               workers joined, store closed
 *
 * Jobs: Quantize looks the cache key (model digest, spec digest, numerics version) up: an
 * artifact answers at once (CACHE_HIT); a QUEUED or RUNNING job with the same key is shared
 * (JOINED); otherwise a job is queued (QUEUED) and persisted with everything needed to run it
 * again after a restart. A worker (one per configured CPU worker; GPU workers later) takes
 * the oldest queued job, materialises the model and calibration set from the blob store,
 * runs qd_job_quantize, writes the artifact into a staging directory with qd_artifact_write
 * and publishes it. Cancellation is seen at the next layer boundary.
 *
 * Events: every job keeps an in-memory, append-only list of events with seq = 1, 2, ...
 * (a restart starts a new list, beginning with a QUEUED event). Watchers read them with
 * qd_service_watch_next (blocking, with a timeout) or register a notifier.
 *
 * Owners. Every function that reads or acts on jobs, artifacts or bundles takes the caller
 * (qd_caller): who it is (recorded as the owner of what the call makes) and whether it sees
 * everything (an admin token, or authentication off; a NULL caller is that too, with owner
 * ""). Anyone else sees only its own:
 *   - a job is its submitter's, and visible to those who joined it (Quantize JOINED); only
 *     the submitter (or an all-seeing caller) may cancel it;
 *   - an artifact is the set of owners of the jobs that made it or that the cache answered
 *     with it;
 *   - a blob is the set of callers that sent its bytes: a caller that does not own a blob the
 *     server holds is told it holds nothing of it, sends every byte, and those bytes are
 *     hashed (not stored) and must have the blob's sha256; then it owns the blob. So a
 *     digest quoted without the bytes buys nothing;
 *   - a bundle is the caller's when every file's blob is (StatModel by digest also answers
 *     whoever registered the manifest with PutModel, showing each file as that caller holds
 *     it). Server-side model paths and the configured default calibration are everyone's.
 * What another owner has is answered exactly as what does not exist (NOT_FOUND with the same
 * message), so ids and digests cannot be probed.
 */
#ifndef QD_SERVICE_H
#define QD_SERVICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "error.h"
#include "spec.h"
#include "store.h"

struct qd_service;

/* Who makes a call (see "Owners" above). */
typedef struct qd_caller {
    const char *owner; /* the token's name, "token:" + 12 hex of its hash, or "" (auth off);
                          NULL = "" */
    bool all;          /* sees and may act on everything: an admin, or authentication off */
} qd_caller;

/* ---- lifecycle ------------------------------------------------------------------------------- */

/* Open the store under cfg->data_dir (recovering interrupted jobs), start the workers the
 * config asks for. cfg is copied where needed; the caller may free it afterwards. */
qd_err qd_service_open(const qd_config *cfg, struct qd_service **ret, qd_error *err);
/* Apply the reloadable keys of a new config (limits, cache size). */
qd_err qd_service_reload(struct qd_service *svc, const qd_config *cfg, qd_error *err);
/* Stop accepting Quantize (QD_ERR_UNAVAILABLE "draining") and wait until no job runs or
 * deadline_ms (CLOCK_MONOTONIC ms, see qd_service_now_mono_ms) passes; then cancel what still
 * runs. Running jobs that are cancelled this way are re-queued at the next start, not failed. */
void qd_service_drain(struct qd_service *svc, int64_t deadline_ms);
/* Join the workers, close the store. Accepts NULL. */
void qd_service_close(struct qd_service *svc);
int64_t qd_service_now_mono_ms(void);

/* ---- server information ---------------------------------------------------------------------- */

typedef struct qd_service_info {
    char version[64];
    int n_workers;             /* CPU workers (+ GPU workers later) */
    char devices[8][160];      /* "cpu (2 threads)", "cuda:0 NVIDIA H100 80GB HBM3" */
    int n_devices;
    uint64_t cache_bytes;      /* artifacts held */
    uint64_t cache_limit;      /* 0 = unlimited */
    int n_artifacts;
    int n_jobs_queued, n_jobs_running;
    uint64_t blob_bytes;       /* uploaded bundle files held */
    uint64_t max_chunk_bytes;  /* limits.chunk_bytes */
    uint64_t max_message_bytes;
    uint32_t max_manifest_files;
    uint64_t max_bundle_bytes; /* limits.max_upload_bytes */
    uint32_t max_queued_jobs;
    char engine_version[16];   /* QD_NUMERICS_VERSION as text */
    char default_calibration_digest[QD_STORE_HEX_LEN + 1]; /* "" = none */
} qd_service_info;

qd_err qd_service_info_get(struct qd_service *svc, qd_service_info *ret, qd_error *err);

/* ---- bundles: uploads and their status -------------------------------------------------------- */

typedef enum qd_bundle_kind {
    QD_BUNDLE_UNSPECIFIED = 0,
    QD_BUNDLE_MODEL = 1,
    QD_BUNDLE_CALIBRATION = 2,
} qd_bundle_kind;

typedef struct qd_file_status {
    char *name;
    uint64_t size;
    char sha256[QD_STORE_HEX_LEN + 1];
    uint64_t held_bytes;  /* durable contiguous prefix */
    bool complete;        /* held == size and sha256 verified */
} qd_file_status;

typedef struct qd_bundle_status {
    char digest[QD_STORE_HEX_LEN + 1];
    qd_bundle_kind kind;  /* UNSPECIFIED if never uploaded */
    bool complete;
    qd_file_status *files; /* manifest order (sorted by name) */
    size_t n_files;
    uint64_t held_bytes, total_bytes;
} qd_bundle_status;
void qd_bundle_status_free(qd_bundle_status *st); /* accepts a zeroed struct */

/* One PutModel stream. Begin checks the manifest (names, sizes, digests, limits: errors name
 * the entry, e.g. "manifest.files[3].sha256: ..."), registers it, and answers what is held.
 * Chunks name a file by its index in the sorted manifest or by name; offset must equal the
 * file's held bytes (QD_ERR_PRECONDITION naming both: the client resumes from StatModel), and
 * offset + len must not pass the declared size (QD_ERR_INVALID_ARG naming the file). A file
 * whose last byte arrives is verified at once (QD_ERR_CORRUPT naming the file when the sha256
 * differs; its bytes are dropped). Chunks for a file already complete are QD_ERR_EXISTS.
 * Uploads of the same file from two streams at once: the second gets QD_ERR_PRECONDITION. */
struct qd_upload;
qd_err qd_service_upload_begin(struct qd_service *svc, const qd_caller *who,
                               qd_bundle_kind kind, const struct qd_store_file *files,
                               size_t n_files, const char *expected_digest,
                               struct qd_upload **ret, qd_error *err);
/* file_index < 0: use file_name. */
qd_err qd_service_upload_chunk(struct qd_upload *up, int64_t file_index, const char *file_name,
                               uint64_t offset, const void *data, size_t len, qd_error *err);
/* The bundle's status now (the stream may end with files incomplete: that is allowed). */
qd_err qd_service_upload_status(struct qd_upload *up, qd_bundle_status *ret, qd_error *err);
/* End the stream (normally or not); accepts NULL. */
void qd_service_upload_end(struct qd_upload *up);

/* StatModel: by digest (QD_ERR_NOT_FOUND if never registered) or by a manifest (always
 * answers; blobs already held count, whichever bundle brought them). Exactly one of the two. */
qd_err qd_service_bundle_stat(struct qd_service *svc, const qd_caller *who, const char *digest,
                              const struct qd_store_file *files, size_t n_files,
                              qd_bundle_status *ret, qd_error *err);

/* ---- jobs -------------------------------------------------------------------------------------- */

typedef enum qd_job_state {
    QD_JOB_UNSPECIFIED = 0,
    QD_JOB_QUEUED = 1,
    QD_JOB_RUNNING = 2,
    QD_JOB_SUCCEEDED = 3,
    QD_JOB_FAILED = 4,
    QD_JOB_CANCELLED = 5,
} qd_job_state; /* numbers equal quantd.v1.JobState */

typedef enum qd_job_stage {
    QD_STAGE_NONE = 0,
    QD_STAGE_LOAD = 1,
    QD_STAGE_PLAN = 2,
    QD_STAGE_CALIBRATE = 3,
    QD_STAGE_QUANTIZE = 4,
    QD_STAGE_PACK = 5,
    QD_STAGE_PUBLISH = 6,
} qd_job_stage; /* numbers equal quantd.v1.Stage */

typedef struct qd_job_progress_info {
    double fraction;      /* 0..1, never decreasing */
    uint32_t layer, layer_count;
    int64_t eta_unix_ms;  /* 0 = unknown */
} qd_job_progress_info;

/* A job as seen at one moment (quantd.v1.Job). Owns spec and its strings. */
typedef struct qd_job_snapshot {
    char id[QD_STORE_ID_LEN + 1];
    qd_job_state state;
    qd_job_stage stage;
    qd_job_progress_info progress;
    int64_t created_ms, started_ms, finished_ms; /* unix ms; 0 = not yet */
    char error_code[32];                         /* qd_err_name(), "" when none */
    char error_message[QD_ERROR_MSG_MAX];
    char artifact_id[QD_STORE_ID_LEN + 1];
    char device[64];                             /* "cpu", "cuda:0"; "" while queued */
    bool cache_hit;
    char model_digest[QD_STORE_HEX_LEN + 1];
    char *model_path;                            /* NULL unless requested by path */
    qd_spec spec;                                /* resolved */
    char spec_digest[QD_STORE_HEX_LEN + 1];
    char *label;                                 /* NULL when none */
    bool cancel_requested;
    uint32_t queue_position;
} qd_job_snapshot;
void qd_job_snapshot_free(qd_job_snapshot *j); /* accepts a zeroed struct */

/* An artifact of the cache (quantd.v1.Artifact). Owns its arrays. */
typedef struct qd_artifact_entry {
    char id[QD_STORE_ID_LEN + 1];
    char model_digest[QD_STORE_HEX_LEN + 1];
    char spec_digest[QD_STORE_HEX_LEN + 1];
    qd_spec_format format;
    qd_spec spec;                       /* resolved, as the job that made it */
    struct qd_store_file *files;        /* sorted by name, with sha256 */
    size_t n_files;
    uint64_t total_bytes;
    int64_t created_ms, last_used_ms;
    char job_id[QD_STORE_ID_LEN + 1];
} qd_artifact_entry;
void qd_artifact_entry_free(qd_artifact_entry *a); /* accepts a zeroed struct */

typedef enum qd_quantize_outcome {
    QD_QUANTIZE_QUEUED = 1,
    QD_QUANTIZE_JOINED = 2,
    QD_QUANTIZE_CACHE_HIT = 3,
} qd_quantize_outcome; /* numbers equal quantd.v1.QuantizeOutcome */

typedef struct qd_quantize_request {
    const char *model_digest; /* exactly one of model_digest and model_path */
    const char *model_path;   /* server-side directory (absolute) */
    const qd_spec *spec;      /* as the client sent it; resolved by the service */
    const char *label;        /* may be NULL */
    const qd_caller *caller;  /* NULL: sees all, owner "" */
} qd_quantize_request;

/* Validate (spec errors name the field: "spec.bits: ..."; an unknown or incomplete model
 * bundle is QD_ERR_NOT_FOUND / QD_ERR_PRECONDITION; the spec is also checked against the
 * model's config before queueing, so a job fails at submit rather than at run time where it
 * can), then answer from the cache, join, or queue. warn (may be NULL) gets the spec's
 * warnings. On CACHE_HIT *ret_art is filled (else left zeroed). */
qd_err qd_service_quantize(struct qd_service *svc, const qd_quantize_request *req,
                           qd_quantize_outcome *ret_outcome, qd_job_snapshot *ret_job,
                           qd_artifact_entry *ret_art, qd_spec_warnings *warn, qd_error *err);

qd_err qd_service_job_get(struct qd_service *svc, const qd_caller *who, const char *job_id,
                          qd_job_snapshot *ret, qd_error *err);
/* Newest first. states: filter (n_states 0 = all); model_digest: filter (NULL = any).
 * Paging: start after the job with id page_after (NULL = first page); at most limit jobs;
 * *ret_more says whether more follow. Free each snapshot, then the array. */
qd_err qd_service_job_list(struct qd_service *svc, const qd_caller *who,
                           const qd_job_state *states, size_t n_states, const char *model_digest,
                           const char *page_after, size_t limit,
                           qd_job_snapshot **ret_jobs, size_t *ret_n, bool *ret_more,
                           qd_error *err);
/* Queued: cancelled at once. Running: cancel_requested set, stops at the next layer.
 * Terminal: QD_ERR_PRECONDITION naming the state. A job the caller only joined:
 * QD_ERR_PERMISSION (its submitter's work is not a joiner's to stop). */
qd_err qd_service_job_cancel(struct qd_service *svc, const qd_caller *who, const char *job_id,
                             qd_job_snapshot *ret, qd_error *err);

/* ---- job events ------------------------------------------------------------------------------ */

typedef enum qd_job_event_kind {
    QD_EVENT_QUEUED = 1,  /* queued = jobs ahead */
    QD_EVENT_STAGE,       /* stage */
    QD_EVENT_LAYER,       /* layer */
    QD_EVENT_TICK,        /* progress refresh only */
    QD_EVENT_DONE,        /* state, error, artifact id: the last event */
} qd_job_event_kind;

typedef struct qd_layer_event {
    uint32_t index, count;
    double error;                 /* over the layer's groups; < 0 when not measured */
    struct {
        char name[96];            /* "model.layers.3.self_attn.q_proj" */
        double error;             /* < 0 when not measured */
    } modules[8];
    int n_modules;
    int64_t duration_ms;
} qd_layer_event;

typedef struct qd_job_event {
    uint64_t seq;
    int64_t time_ms;
    qd_job_progress_info progress;
    qd_job_event_kind kind;
    uint32_t queued;              /* QUEUED */
    qd_job_stage stage;           /* STAGE */
    qd_layer_event layer;         /* LAYER */
    qd_job_state done_state;      /* DONE */
    char error_code[32];          /* DONE, when failed or cancelled */
    char error_message[QD_ERROR_MSG_MAX];
    char artifact_id[QD_STORE_ID_LEN + 1];
} qd_job_event;

/* The first event with seq > after_seq. Waits up to timeout_ms (0: do not wait) for one to
 * arrive; none by then is QD_ERR_DEADLINE (the caller may send a tick and wait again). An
 * unknown job is QD_ERR_NOT_FOUND. After the DONE event there are no more. */
qd_err qd_service_watch_next(struct qd_service *svc, const qd_caller *who, const char *job_id,
                             uint64_t after_seq, int64_t timeout_ms, qd_job_event *ret,
                             qd_error *err);
/* Call fn(ctx) (from a worker thread, with no service lock held) whenever job_id gets a new
 * event, until qd_service_unsubscribe. fn must be quick and must not call back into the
 * service. Returns a handle (NULL with *err on failure). */
struct qd_subscription;
struct qd_subscription *qd_service_subscribe(struct qd_service *svc, const char *job_id,
                                             void (*fn)(void *ctx), void *ctx, qd_error *err);
/* After it returns, fn is not running and will not be called again. Accepts NULL. */
void qd_service_unsubscribe(struct qd_service *svc, struct qd_subscription *sub);

/* ---- counters (for the metrics endpoint) ---------------------------------------------------- */

/* Upper bounds, in seconds, of the job duration histogram's buckets (the last is +Inf). */
#define QD_SERVICE_DURATION_BUCKETS 9
extern const double qd_service_duration_bounds[QD_SERVICE_DURATION_BUCKETS - 1];

typedef struct qd_service_stats {
    /* now */
    int n_jobs_queued, n_jobs_running;
    int n_artifacts;
    uint64_t cache_bytes, blob_bytes;
    /* since the daemon started */
    uint64_t jobs_finished[3];              /* succeeded, failed, cancelled */
    uint64_t cache_hits;                    /* Quantize answered from the cache */
    uint64_t cache_misses;                  /* Quantize that queued a new job */
    uint64_t cache_joins;                   /* Quantize that joined a live job */
    uint64_t bytes_in;                      /* upload chunk bytes written */
    uint64_t bytes_out;                     /* artifact bytes sent (qd_service_count_bytes_out) */
    /* jobs that ran (not cache hits), by method: duration histogram of started..finished */
    uint64_t duration_buckets[QD_SPEC_METHOD_COUNT][QD_SERVICE_DURATION_BUCKETS]; /* cumulative */
    double duration_sum[QD_SPEC_METHOD_COUNT];
    uint64_t duration_count[QD_SPEC_METHOD_COUNT];
    /* per worker: its name ("cpu0", "cuda:0") and seconds spent running jobs */
    int n_workers;
    char worker_name[16][16];
    double worker_busy_s[16];
} qd_service_stats;

/* A consistent copy of the counters. */
void qd_service_stats_get(struct qd_service *svc, qd_service_stats *ret);
/* Artifact bytes sent to a client (counted by the transport that sends them). */
void qd_service_count_bytes_out(struct qd_service *svc, uint64_t n);

/* ---- artifacts ------------------------------------------------------------------------------- */

qd_err qd_service_artifact_get(struct qd_service *svc, const qd_caller *who, const char *id,
                               qd_artifact_entry *ret, qd_error *err);
/* Oldest first; free each entry, then the array. */
qd_err qd_service_artifact_list(struct qd_service *svc, const qd_caller *who,
                                qd_artifact_entry **ret, size_t *ret_n, qd_error *err);
/* QD_ERR_PRECONDITION while a job or a download holds it. */
qd_err qd_service_artifact_delete(struct qd_service *svc, const qd_caller *who, const char *id,
                                  qd_error *err);

/* A download: pins the artifact (no eviction or deletion until closed) and gives its
 * directory. Files are read with plain open/read on dir/name. */
struct qd_download;
qd_err qd_service_download_open(struct qd_service *svc, const qd_caller *who, const char *id,
                                struct qd_download **ret, qd_artifact_entry *ret_art,
                                char *dir, size_t dir_len, qd_error *err);
void qd_service_download_close(struct qd_download *dl); /* accepts NULL */

#endif /* QD_SERVICE_H */
