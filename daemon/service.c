/*
 * service.c - the daemon's core without gRPC (service.h): bundles and their uploads, the job
 * queue and its CPU and GPU workers, per-job events and their watchers, and the artifact cache.
 *
 * DESIGN
 *
 * One mutex (svc->mu) guards everything shared: the store (not thread-safe), the in-memory
 * job table, the upload claims and the counters. It is never held while a job computes,
 * while files are hashed or while a caller waits: workers and RPC threads take it for short
 * sections only. Blob appends and their verification run outside it too (store.h allows it:
 * blobs touch no SQLite); an upload stream first CLAIMS the blob under the lock, so each blob
 * has one writer, and a second stream for the same file is refused.
 *
 * Jobs. Every QUEUED or RUNNING job, and the last FINISHED_KEEP finished ones, live in memory
 * (struct job) with their events; the store has the durable row. A job's state changes in
 * memory and in the store under the same lock, so the two never disagree for a reader:
 *
 *     Quantize --(cache hit)--------------------------------> SUCCEEDED (cache_hit, never runs)
 *     Quantize --(new key)--> QUEUED --worker_take()-------> RUNNING --finish()--> SUCCEEDED
 *                               |  ^                            |                 FAILED
 *                               |  +-----drain (requeue)--------+                 CANCELLED
 *                               +--cancel()--> CANCELLED        +--cancel flag, next layer
 *
 * A job row carries what a restart needs to run the job again: the resolved spec as its
 * canonical JSON (read back through the YAML spec parser, JSON being YAML flow syntax, and
 * checked to give the same spec digest), the server-side model path and the label. At open
 * the store re-queues interrupted jobs, and this file loads every QUEUED row into memory.
 *
 * A worker materialises the inputs of a job from the blob store: the model bundle becomes a
 * staging directory of symlinks (manifest names -> blob files), the calibration bundle's first
 * *.safetensors file is read in place. It then does exactly what `quantd quantize ... -o OUT`
 * does (qd_model_open, the spec checked against the model, the tokens cut to
 * calibration.rows x seq_len, qd_job_quantize, qd_artifact_write), so the artifact files are
 * byte-identical with the command's, writes into a staging directory, hashes the files
 * (outside the lock) and publishes them with their manifest.
 *
 * Events: an append-only array per job, seq = index + 1. Watchers wait on one condition
 * variable broadcast at every event; subscribers are called after the lock is dropped, under
 * a second mutex (sub_mu) that only the notifier and unsubscribe take, which is what lets
 * unsubscribe promise that fn is not running once it returns.
 *
 * Threads per job: the CPU kernels' thread count is process-wide (qd_cpu_set_threads), so it
 * is set at open, and a reloaded workers.threads is applied only while no job runs.
 *
 * GPU workers: `devices: [auto]` starts one worker per CUDA device found (a `cuda:N` entry one
 * on device N) beside the workers.cpu CPU workers; every worker takes the oldest queued job.
 * A GPU worker owns its device's context (qd_job_device: opened by the worker's thread, used
 * by no other) and runs the job with its kernel table, so the artifact is what the command's
 * `--device cuda:N` writes. A CUDA failure fails that job with the runtime's message; before
 * its next job the worker re-opens a context the failure left unusable (a device that cannot
 * be opened fails each job it takes with the reason, rather than stopping the worker).
 *
 * Owners (service.h). The rows live in the store (owners table, schema 3) and every check
 * asks it under mu, so a restart changes nothing and memory holds no second copy. A job's
 * submitter is written with its row, a joiner when it joins, an artifact's owners are copied
 * from its job at publish and again at finish (a joiner may arrive in between, and an
 * artifact another job published first must gain this job's owners too). Blobs: an upload
 * whose caller owns the blob (or sees all) writes as before; the first writer of a fresh
 * blob becomes the owner of its partial upload ("part"), which lets it resume; any other
 * writer's append makes that writer the part's only owner, so a part's owner has always sent
 * every byte of it. Completing the blob makes its part owner a blob owner. A caller that owns
 * neither the blob nor its part, while bytes of it are held, streams a PROOF: its chunks are
 * hashed in memory (struct proof) and never written, and a matching sha256 makes it an
 * owner. A proof of a blob still partial on disk ends with the caller owning it and seeing the
 * real held length, from which it resumes as an owner.
 */
#include "service.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/evp.h>

#include "artifact.h"
#include "backend.h"
#include "fsutil.h"
#include "job.h"
#include "model.h"
#include "ops.h"
#include "safetensors.h"
#include "tokenizer.h"
#include "yamlwalk.h"

#ifndef QD_VERSION
#define QD_VERSION "0.0.0"
#endif

/* Finished jobs whose events stay in memory; older ones answer a DONE made from their row. */
#define FINISHED_KEEP 128
/* Most files one manifest may list (Limits.max_manifest_files). */
#define MAX_MANIFEST_FILES 10000
/* Longest manifest name accepted. */
#define MAX_NAME_BYTES 1024
/* Longest label (quantd.proto: "at most 256 bytes"). */
#define MAX_LABEL_BYTES 256
/* Jobs per ListJobs page when the caller gives no limit, and the most it may ask. */
#define LIST_DEFAULT 100
#define LIST_MAX 1000
/* Deepest directory nesting read from a server-side model path. */
#define MODEL_DIR_DEPTH 8
/* Why a job's cancel flag is set: a CancelJob (the job ends CANCELLED) or a drain (the job
 * goes back to the queue for the next start). */
#define CANCEL_USER 1
#define CANCEL_DRAIN 2

/* Progress of a job, as fractions at the start of each stage. */
static const double STAGE_START[] = {
    [QD_STAGE_NONE] = 0.0,       [QD_STAGE_LOAD] = 0.0,  [QD_STAGE_PLAN] = 0.02,
    [QD_STAGE_CALIBRATE] = 0.03, [QD_STAGE_QUANTIZE] = 0.05, [QD_STAGE_PACK] = 0.90,
    [QD_STAGE_PUBLISH] = 0.97,
};


/* A caller's text inside an error message: cut, control characters escaped (the details go
 * back to the client and into the log as they are). buf: QD_YAML_EXCERPT_BUF bytes. */
static const char *quoted(const char *s, char *buf) {
    return qd_yaml_excerpt(s, strlen(s), buf, QD_YAML_EXCERPT_BUF);
}

/* Whether s has a byte that must not reach a message or a path unescaped. */
static bool has_control(const char *s, size_t *at) {
    for (size_t k = 0; s[k]; k++) {
        unsigned char c = (unsigned char)s[k];
        if (c < 0x20 || c == 0x7f) {
            *at = k;
            return true;
        }
    }
    return false;
}

/* ---- types --------------------------------------------------------------------------------- */

struct job {
    char id[QD_STORE_ID_LEN + 1];
    struct qd_store_key key;
    qd_job_state state;
    qd_job_stage stage;
    qd_job_progress_info progress;
    int64_t created_ms, started_ms, finished_ms;
    char error_code[32];
    char error_message[QD_ERROR_MSG_MAX];
    char artifact_id[QD_STORE_ID_LEN + 1];
    char device[64];
    char *model_path; /* NULL unless by path */
    char *label;      /* NULL when none */
    qd_spec spec;     /* resolved */
    char *spec_json;  /* canonical */
    qd_err load_code; /* the row could not be turned back into a job: fail it when taken */
    char load_error[QD_ERROR_MSG_MAX];
    atomic_int cancel; /* 0, CANCEL_USER, CANCEL_DRAIN */
    bool cancel_requested;
    uint32_t queued_reported; /* position in the last QUEUED event; UINT32_MAX = none yet */
    uint64_t finish_order;    /* for dropping the oldest finished job */
    qd_job_event *events;
    size_t n_events, cap_events;
};

struct claim {
    char sha256[QD_STORE_HEX_LEN + 1];
    const struct qd_upload *owner;
};

struct qd_subscription {
    struct qd_subscription *next;
    char job_id[QD_STORE_ID_LEN + 1];
    void (*fn)(void *ctx);
    void *ctx;
};

struct qd_service {
    pthread_mutex_t mu;
    pthread_cond_t work_cv;  /* a job was queued, or drain/close */
    pthread_cond_t event_cv; /* an event was appended (CLOCK_MONOTONIC) */
    pthread_cond_t idle_cv;  /* a job stopped running, or a waiter left (CLOCK_MONOTONIC) */
    struct qd_store *store;

    /* configuration (the reloadable parts change under mu) */
    char *data_dir;
    char **roots;
    size_t n_roots;
    char *calib_default;                             /* a token file, or NULL */
    char calib_default_digest[QD_STORE_HEX_LEN + 1]; /* "" = none */
    uint64_t chunk_bytes, max_message_bytes, max_upload_bytes, cache_max;
    int64_t max_queued;
    int threads_now, threads_wanted;

    char devices[8][160];
    int n_devices;
    pthread_t *workers;
    int n_workers, n_started;
    /* what each worker runs on: -1 the CPU, N cuda:N (its own context, opened by the worker) */
    struct worker_arg {
        struct qd_service *svc;
        int cuda_index;
        int index; /* in stats.worker_* */
    } *worker_args;

    struct job **jobs; /* creation order */
    size_t n_jobs, cap_jobs;
    uint64_t finish_counter;
    int n_running;
    bool draining, closing;
    int n_waiters;

    struct claim *claims;
    size_t n_claims, cap_claims;

    /* ids of jobs with new events, for the subscribers (notified after mu is dropped) */
    char (*pending)[QD_STORE_ID_LEN + 1];
    size_t n_pending, cap_pending;
    pthread_mutex_t sub_mu;
    struct qd_subscription *subs;

    qd_service_stats stats; /* the counters (under mu); the "now" fields are filled on read */
};

const double qd_service_duration_bounds[QD_SERVICE_DURATION_BUCKETS - 1] = {
    1, 5, 15, 60, 300, 900, 3600, 14400};

/* A proof that an upload's caller knows a blob it does not own: the bytes sent so far, hashed
 * and dropped. */
struct proof {
    EVP_MD_CTX *md; /* NULL until the first chunk */
    uint64_t got;
};

struct qd_upload {
    struct qd_service *svc;
    qd_bundle_kind kind;
    char digest[QD_STORE_HEX_LEN + 1];
    struct qd_store_file *files;
    size_t n_files;
    char owner[QD_STORE_OWNER_MAX]; /* the caller */
    bool all;
    struct proof *proofs;           /* [n_files] */
};

struct qd_download {
    struct qd_service *svc;
    char id[QD_STORE_ID_LEN + 1];
};

/* ---- small helpers ------------------------------------------------------------------------- */

int64_t qd_service_now_mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t now_unix_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void mono_deadline(struct timespec *ts, int64_t deadline_ms) {
    if (deadline_ms < 0) deadline_ms = 0;
    ts->tv_sec = (time_t)(deadline_ms / 1000);
    ts->tv_nsec = (long)(deadline_ms % 1000) * 1000000L;
}

static void copy_text(char *dst, size_t cap, const char *src) {
    snprintf(dst, cap, "%s", src ? src : "");
}

static char *dup_or_null(const char *s, bool *oom) {
    if (!s) return NULL;
    char *d = strdup(s);
    if (!d) *oom = true;
    return d;
}

static bool is_hex64(const char *p) {
    if (!p) return false;
    for (int i = 0; i < QD_STORE_HEX_LEN; i++)
        if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'a' && p[i] <= 'f'))) return false;
    return p[QD_STORE_HEX_LEN] == '\0';
}

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static enum qd_store_job_state to_store_state(qd_job_state s) {
    return (enum qd_store_job_state)((int)s - 1);
}

static qd_job_state from_store_state(enum qd_store_job_state s) {
    return (unsigned)s < QD_STORE_JOB_COUNT ? (qd_job_state)((int)s + 1) : QD_JOB_UNSPECIFIED;
}

static bool terminal(qd_job_state s) {
    return s == QD_JOB_SUCCEEDED || s == QD_JOB_FAILED || s == QD_JOB_CANCELLED;
}

static void lock(struct qd_service *svc) { pthread_mutex_lock(&svc->mu); }

/* Drop mu, then tell the subscribers of every job that got events while it was held. */
static void unlock(struct qd_service *svc) {
    if (svc->n_pending == 0) {
        pthread_mutex_unlock(&svc->mu);
        return;
    }
    char(*ids)[QD_STORE_ID_LEN + 1] = svc->pending;
    size_t n = svc->n_pending;
    svc->pending = NULL;
    svc->n_pending = svc->cap_pending = 0;
    pthread_mutex_unlock(&svc->mu);
    pthread_mutex_lock(&svc->sub_mu);
    for (size_t i = 0; i < n; i++) {
        if (i > 0 && strcmp(ids[i], ids[i - 1]) == 0) continue;
        for (struct qd_subscription *s = svc->subs; s; s = s->next)
            if (strcmp(s->job_id, ids[i]) == 0) s->fn(s->ctx);
    }
    pthread_mutex_unlock(&svc->sub_mu);
    free(ids);
}

/* ---- spec <-> canonical JSON --------------------------------------------------------------- */

/* Rebuild a resolved spec from its canonical JSON (as recorded with a job or an artifact). The
 * JSON goes through the YAML spec parser after the keys that parser does not take are
 * removed: numerics_version (which must be ours: the numbers would differ otherwise) and the
 * derived scale_dtype. */
static qd_err spec_from_json(const char *json, qd_spec *ret, qd_error *err) {
    json_error_t jerr;
    json_t *root = json_loads(json, 0, &jerr);
    if (!root || !json_is_object(root)) {
        json_decref(root);
        return qd_error_set(err, QD_ERR_CORRUPT, "recorded spec: not a JSON object (%s)",
                            jerr.text);
    }
    json_t *nv = json_object_get(root, "numerics_version");
    if (!json_is_integer(nv) || json_integer_value(nv) != QD_NUMERICS_VERSION) {
        json_decref(root);
        return qd_error_set(err, QD_ERR_UNSUPPORTED, "recorded spec: numerics_version %" PRId64
                            " is not this quantd's (%d); submit the job again",
                            json_is_integer(nv) ? (int64_t)json_integer_value(nv) : -1,
                            QD_NUMERICS_VERSION);
    }
    json_object_del(root, "numerics_version");
    json_object_del(root, "scale_dtype");
    char *text = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    if (!text) return qd_error_set(err, QD_ERR_NOMEM, "recorded spec: out of memory");
    qd_spec s = {0};
    qd_err rc = qd_spec_parse_yaml(text, strlen(text), "recorded spec", &s, err);
    free(text);
    if (rc == QD_OK) rc = qd_spec_resolve(&s, NULL, err);
    if (rc != QD_OK) {
        qd_spec_free(&s);
        return rc;
    }
    *ret = s;
    return QD_OK;
}

/* ---- events -------------------------------------------------------------------------------- */

static void note_pending(struct qd_service *svc, const char *id) {
    if (svc->n_pending && strcmp(svc->pending[svc->n_pending - 1], id) == 0) return;
    if (svc->n_pending == svc->cap_pending) {
        size_t cap = svc->cap_pending ? 2 * svc->cap_pending : 16;
        void *p = realloc(svc->pending, cap * sizeof *svc->pending);
        if (!p) return; /* a subscriber misses one wake-up; its next poll still sees it */
        svc->pending = p;
        svc->cap_pending = cap;
    }
    copy_text(svc->pending[svc->n_pending++], sizeof svc->pending[0], id);
}

/* Append an event of kind to j (mu held); the caller fills its payload before dropping mu.
 * NULL when out of memory (the event is lost; seq stays gapless). */
static qd_job_event *emit(struct qd_service *svc, struct job *j, qd_job_event_kind kind) {
    if (j->n_events == j->cap_events) {
        size_t cap = j->cap_events ? 2 * j->cap_events : 16;
        void *p = realloc(j->events, cap * sizeof *j->events);
        if (!p) return NULL;
        j->events = p;
        j->cap_events = cap;
    }
    qd_job_event *ev = &j->events[j->n_events++];
    memset(ev, 0, sizeof *ev);
    ev->seq = j->n_events;
    ev->time_ms = now_unix_ms();
    ev->progress = j->progress;
    ev->kind = kind;
    note_pending(svc, j->id);
    pthread_cond_broadcast(&svc->event_cv);
    return ev;
}

static void emit_stage(struct qd_service *svc, struct job *j, qd_job_stage stage) {
    j->stage = stage;
    if (j->progress.fraction < STAGE_START[stage]) j->progress.fraction = STAGE_START[stage];
    qd_job_event *ev = emit(svc, j, QD_EVENT_STAGE);
    if (ev) ev->stage = stage;
}

static void emit_done(struct qd_service *svc, struct job *j) {
    qd_job_event *ev = emit(svc, j, QD_EVENT_DONE);
    if (!ev) return;
    ev->done_state = j->state;
    copy_text(ev->error_code, sizeof ev->error_code, j->error_code);
    copy_text(ev->error_message, sizeof ev->error_message, j->error_message);
    copy_text(ev->artifact_id, sizeof ev->artifact_id, j->artifact_id);
}

/* Jobs ahead of j in the queue (mu held). */
static uint32_t queue_position(const struct qd_service *svc, const struct job *j) {
    uint32_t n = 0;
    for (size_t i = 0; i < svc->n_jobs && svc->jobs[i] != j; i++)
        if (svc->jobs[i]->state == QD_JOB_QUEUED) n++;
    return n;
}

/* A QUEUED event for every queued job whose position changed (mu held). */
static void update_queue_events(struct qd_service *svc) {
    uint32_t pos = 0;
    for (size_t i = 0; i < svc->n_jobs; i++) {
        struct job *j = svc->jobs[i];
        if (j->state != QD_JOB_QUEUED) continue;
        if (j->queued_reported != pos) {
            qd_job_event *ev = emit(svc, j, QD_EVENT_QUEUED);
            if (ev) ev->queued = pos;
            j->queued_reported = pos;
        }
        pos++;
    }
}

/* ---- the in-memory job table --------------------------------------------------------------- */

static void job_free(struct job *j) {
    if (!j) return;
    free(j->model_path);
    free(j->label);
    free(j->spec_json);
    qd_spec_free(&j->spec);
    free(j->events);
    free(j);
}

static struct job *find_job(const struct qd_service *svc, const char *id) {
    for (size_t i = 0; i < svc->n_jobs; i++)
        if (strcmp(svc->jobs[i]->id, id) == 0) return svc->jobs[i];
    return NULL;
}

static qd_err add_job(struct qd_service *svc, struct job *j, qd_error *err) {
    if (svc->n_jobs == svc->cap_jobs) {
        size_t cap = svc->cap_jobs ? 2 * svc->cap_jobs : 32;
        void *p = realloc(svc->jobs, cap * sizeof *svc->jobs);
        if (!p) return qd_error_set(err, QD_ERR_NOMEM, "job %s: out of memory", j->id);
        svc->jobs = p;
        svc->cap_jobs = cap;
    }
    svc->jobs[svc->n_jobs++] = j;
    return QD_OK;
}

/* Keep at most FINISHED_KEEP finished jobs in memory (mu held): drop the oldest finished. */
static void trim_finished(struct qd_service *svc) {
    for (;;) {
        size_t n_done = 0, oldest = SIZE_MAX;
        for (size_t i = 0; i < svc->n_jobs; i++) {
            struct job *j = svc->jobs[i];
            if (!terminal(j->state)) continue;
            n_done++;
            if (oldest == SIZE_MAX || j->finish_order < svc->jobs[oldest]->finish_order)
                oldest = i;
        }
        if (n_done <= FINISHED_KEEP) return;
        job_free(svc->jobs[oldest]);
        memmove(&svc->jobs[oldest], &svc->jobs[oldest + 1],
                (svc->n_jobs - oldest - 1) * sizeof *svc->jobs);
        svc->n_jobs--;
    }
}

/* The counters of a job that ended (mu held): by state and, for one that ran, its duration. */
static void count_finished(struct qd_service *svc, const struct job *j) {
    qd_service_stats *st = &svc->stats;
    st->jobs_finished[j->state == QD_JOB_SUCCEEDED ? 0 : j->state == QD_JOB_FAILED ? 1 : 2]++;
    int m = (int)j->spec.method;
    if (!j->started_ms || m <= 0 || m >= QD_SPEC_METHOD_COUNT) return;
    double secs = (double)(j->finished_ms - j->started_ms) / 1000.0;
    if (secs < 0) secs = 0;
    for (int b = 0; b < QD_SERVICE_DURATION_BUCKETS; b++)
        if (b == QD_SERVICE_DURATION_BUCKETS - 1 || secs <= qd_service_duration_bounds[b])
            st->duration_buckets[m][b]++;
    st->duration_sum[m] += secs;
    st->duration_count[m]++;
}

/* j reached a terminal state (mu held): the row, then memory, then the DONE event. */
static void finish_job(struct qd_service *svc, struct job *j, qd_job_state state,
                       const char *code, const char *message, const char *artifact_id) {
    qd_error serr = {0};
    if (qd_store_job_set_state_ex(svc->store, j->id, to_store_state(state), code, message,
                                  artifact_id, &serr) != QD_OK) {
        /* The row could not follow (disk full, ...): say so, the job still ends here. */
        if (state == QD_JOB_SUCCEEDED) {
            state = QD_JOB_FAILED;
            code = qd_err_name(serr.code);
            message = serr.msg;
            artifact_id = "";
        }
    }
    j->state = state;
    j->stage = QD_STAGE_NONE;
    j->finished_ms = now_unix_ms();
    copy_text(j->error_code, sizeof j->error_code, code);
    copy_text(j->error_message, sizeof j->error_message, message);
    copy_text(j->artifact_id, sizeof j->artifact_id, artifact_id);
    if (state == QD_JOB_SUCCEEDED) {
        j->progress.fraction = 1.0;
        j->progress.eta_unix_ms = 0;
    }
    /* Everyone the job answers owns its artifact: joiners that came after the publish, and
     * all of them when another job published the artifact first. */
    if (state == QD_JOB_SUCCEEDED && artifact_id && *artifact_id) {
        (void)qd_store_owner_copy(svc->store, QD_STORE_OWN_JOB, j->id, QD_STORE_OWN_ARTIFACT,
                                  artifact_id, NULL);
        (void)qd_store_owner_copy(svc->store, QD_STORE_OWN_JOB_JOINED, j->id,
                                  QD_STORE_OWN_ARTIFACT, artifact_id, NULL);
    }
    j->finish_order = ++svc->finish_counter;
    count_finished(svc, j);
    emit_done(svc, j);
    update_queue_events(svc);
    trim_finished(svc);
}

/* ---- snapshots ----------------------------------------------------------------------------- */

void qd_job_snapshot_free(qd_job_snapshot *j) {
    if (!j) return;
    free(j->model_path);
    free(j->label);
    qd_spec_free(&j->spec);
    memset(j, 0, sizeof *j);
}

void qd_artifact_entry_free(qd_artifact_entry *a) {
    if (!a) return;
    qd_spec_free(&a->spec);
    qd_store_files_free(a->files, a->n_files);
    memset(a, 0, sizeof *a);
}

void qd_bundle_status_free(qd_bundle_status *st) {
    if (!st) return;
    for (size_t i = 0; i < st->n_files; i++) free(st->files[i].name);
    free(st->files);
    memset(st, 0, sizeof *st);
}

/* The snapshot of an in-memory job (mu held). */
static qd_err snapshot_mem(const struct qd_service *svc, const struct job *j,
                           qd_job_snapshot *ret, qd_error *err) {
    qd_job_snapshot s;
    memset(&s, 0, sizeof s);
    copy_text(s.id, sizeof s.id, j->id);
    s.state = j->state;
    s.stage = j->stage;
    s.progress = j->progress;
    s.created_ms = j->created_ms;
    s.started_ms = j->started_ms;
    s.finished_ms = j->finished_ms;
    copy_text(s.error_code, sizeof s.error_code, j->error_code);
    copy_text(s.error_message, sizeof s.error_message, j->error_message);
    copy_text(s.artifact_id, sizeof s.artifact_id, j->artifact_id);
    copy_text(s.device, sizeof s.device, j->device);
    copy_text(s.model_digest, sizeof s.model_digest, j->key.model_digest);
    copy_text(s.spec_digest, sizeof s.spec_digest, j->key.spec_digest);
    s.cancel_requested = j->cancel_requested;
    s.queue_position = j->state == QD_JOB_QUEUED ? queue_position(svc, j) : 0;
    bool oom = false;
    s.model_path = dup_or_null(j->model_path, &oom);
    s.label = dup_or_null(j->label, &oom);
    qd_err rc = oom ? qd_error_set(err, QD_ERR_NOMEM, "job %s: out of memory", j->id) : QD_OK;
    if (rc == QD_OK && j->spec.method != QD_SPEC_METHOD_UNSET)
        rc = qd_spec_copy(&s.spec, &j->spec, err);
    if (rc != QD_OK) {
        qd_job_snapshot_free(&s);
        return rc;
    }
    *ret = s;
    return QD_OK;
}

/* The snapshot of a job known only by its row (mu held). */
static qd_err snapshot_row(struct qd_service *svc, const struct qd_store_job *row,
                           qd_job_snapshot *ret, qd_error *err) {
    struct qd_store_job_text t = {0};
    qd_err rc = qd_store_job_text_get(svc->store, row->id, &t, err);
    if (rc != QD_OK) return rc;
    qd_job_snapshot s;
    memset(&s, 0, sizeof s);
    copy_text(s.id, sizeof s.id, row->id);
    s.state = from_store_state(row->state);
    s.created_ms = row->created_ms;
    s.started_ms = row->started_ms;
    s.finished_ms = row->finished_ms;
    if (s.state == QD_JOB_SUCCEEDED) s.progress.fraction = 1.0;
    copy_text(s.error_code, sizeof s.error_code, row->error_code);
    if (!s.error_code[0] && row->error[0])
        copy_text(s.error_code, sizeof s.error_code,
                  qd_err_name(s.state == QD_JOB_CANCELLED ? QD_ERR_CANCELLED : QD_ERR_INTERNAL));
    copy_text(s.error_message, sizeof s.error_message, row->error);
    copy_text(s.artifact_id, sizeof s.artifact_id, row->artifact_id);
    if (row->started_ms && !row->cache_hit) copy_text(s.device, sizeof s.device, "cpu");
    s.cache_hit = row->cache_hit;
    copy_text(s.model_digest, sizeof s.model_digest, row->key.model_digest);
    copy_text(s.spec_digest, sizeof s.spec_digest, row->key.spec_digest);
    s.model_path = t.model_path;
    s.label = t.label;
    t.model_path = t.label = NULL;
    /* A spec recorded by an older numerics version no longer parses: leave it unset, the
     * digest still names it. */
    if (t.spec_json && t.spec_json[0]) {
        qd_error ignore = {0};
        if (spec_from_json(t.spec_json, &s.spec, &ignore) != QD_OK) memset(&s.spec, 0,
                                                                           sizeof s.spec);
    }
    qd_store_job_text_free(&t);
    *ret = s;
    return QD_OK;
}

static qd_err snapshot_by_id(struct qd_service *svc, const char *id, qd_job_snapshot *ret,
                             qd_error *err) {
    const struct job *j = find_job(svc, id);
    if (j) return snapshot_mem(svc, j, ret, err);
    struct qd_store_job row;
    qd_err rc = qd_store_job_get(svc->store, id, &row, err);
    if (rc == QD_OK) rc = snapshot_row(svc, &row, ret, err);
    return rc;
}

/* A job or artifact id: QD_STORE_ID_LEN lowercase hex digits. field names it in the message
 * ("job_id"), what in the explanation ("job"). */
static qd_err check_id(const char *field, const char *what, const char *id, qd_error *err) {
    if (!id) return qd_error_set(err, QD_ERR_INVALID_ARG, "%s: missing", field);
    size_t n = strnlen(id, QD_STORE_ID_LEN + 1);
    bool ok = n == QD_STORE_ID_LEN;
    for (size_t i = 0; ok && i < n; i++)
        ok = (id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f');
    char q[QD_YAML_EXCERPT_BUF];
    if (!ok)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "%s '%s': not %s id (%d lowercase hex "
                            "chars)", field, quoted(id, q), what, QD_STORE_ID_LEN);
    return QD_OK;
}

static qd_err check_job_id(const char *id, qd_error *err) {
    return check_id("job_id", "a job", id, err);
}

/* ---- owners -------------------------------------------------------------------------------- */

static bool sees_all(const qd_caller *who) { return !who || who->all; }

static const char *owner_of(const qd_caller *who) {
    return who && who->owner ? who->owner : "";
}

/* Whether who owns (kind, id) (mu held). A store that cannot answer answers no. */
static bool owns(struct qd_service *svc, const qd_caller *who, enum qd_store_owner_kind kind,
                 const char *id) {
    if (sees_all(who)) return true;
    bool has = false;
    qd_error e = {0};
    return qd_store_owner_has(svc->store, kind, id, owner_of(who), &has, &e) == QD_OK && has;
}

/* Whether who may see job id: it submitted or joined it (mu held). */
static bool sees_job(struct qd_service *svc, const qd_caller *who, const char *id) {
    return owns(svc, who, QD_STORE_OWN_JOB, id) || owns(svc, who, QD_STORE_OWN_JOB_JOINED, id);
}

/* The answer for a job who may not see: that of a missing one (qd_store_job_get's). */
static qd_err job_not_found(const char *id, qd_error *err) {
    return qd_error_set(err, QD_ERR_NOT_FOUND, "job %s: not found", id);
}

static qd_err artifact_not_found(const char *id, qd_error *err) {
    return qd_error_set(err, QD_ERR_NOT_FOUND, "artifact %s: not found", id);
}

/* Whether who may be told the truth about blob f and write it (mu held): it owns the blob,
 * or it is an upload no one has begun, or its own partial upload. Otherwise who must prove
 * it has the bytes (see DESIGN). An empty file proves nothing and is everyone's. */
static bool blob_real(struct qd_service *svc, const qd_caller *who,
                      const struct qd_store_file *f) {
    if (sees_all(who) || f->size == 0 || owns(svc, who, QD_STORE_OWN_BLOB, f->sha256))
        return true;
    uint64_t held = 0;
    bool complete = false;
    if (qd_store_blob_stat(svc->store, f->sha256, f->size, &held, &complete, NULL) != QD_OK)
        return false;
    if (complete) return false;
    return held == 0 || owns(svc, who, QD_STORE_OWN_PART, f->sha256);
}

/* Whether who owns every blob of a manifest (mu held). */
static bool owns_files(struct qd_service *svc, const qd_caller *who,
                       const struct qd_store_file *files, size_t n) {
    if (sees_all(who)) return true;
    for (size_t i = 0; i < n; i++)
        if (files[i].size > 0 && !owns(svc, who, QD_STORE_OWN_BLOB, files[i].sha256))
            return false;
    return true;
}

/* A bundle named in a request must be the caller's (mu held); another's is answered as a
 * missing one, in bundle_blobs' words. what names the field ("model_digest", ...). */
static qd_err check_bundle_owner(struct qd_service *svc, const qd_caller *who,
                                 const char *digest, const char *what, qd_error *err) {
    if (sees_all(who)) return QD_OK;
    struct qd_store_file *files = NULL;
    size_t n = 0;
    qd_error e = {0};
    qd_err rc = qd_store_model_files(svc->store, digest, &files, &n, &e);
    if (rc != QD_OK && rc != QD_ERR_NOT_FOUND) return qd_error_set(err, rc, "%s", e.msg);
    bool mine = rc == QD_OK && owns_files(svc, who, files, n);
    qd_store_files_free(files, n);
    if (!mine)
        return qd_error_set(err, QD_ERR_NOT_FOUND, "%s %s: no such bundle here; upload it "
                            "with PutModel", what, digest);
    return QD_OK;
}

/* ---- artifacts ----------------------------------------------------------------------------- */

/* The entry of artifact a (mu held): its manifest from the store, its spec from the recorded
 * JSON (or from the job that made it, for artifacts published before schema 2). */
static qd_err artifact_entry(struct qd_service *svc, const struct qd_store_artifact *a,
                             qd_artifact_entry *ret, qd_error *err) {
    qd_artifact_entry e;
    memset(&e, 0, sizeof e);
    copy_text(e.id, sizeof e.id, a->id);
    copy_text(e.model_digest, sizeof e.model_digest, a->key.model_digest);
    copy_text(e.spec_digest, sizeof e.spec_digest, a->key.spec_digest);
    copy_text(e.job_id, sizeof e.job_id, a->job_id);
    e.format = qd_spec_format_from_name(a->format);
    e.total_bytes = a->total_bytes;
    e.created_ms = a->created_ms;
    e.last_used_ms = a->last_used_ms;
    qd_err rc = qd_store_artifact_files(svc->store, a->id, &e.files, &e.n_files, err);
    char *json = NULL;
    if (rc == QD_OK) rc = qd_store_artifact_spec(svc->store, a->id, &json, err);
    if (rc == QD_OK && !json[0] && a->job_id[0]) {
        struct qd_store_job_text t = {0};
        if (qd_store_job_text_get(svc->store, a->job_id, &t, NULL) == QD_OK) {
            free(json);
            json = t.spec_json;
            t.spec_json = NULL;
        }
        qd_store_job_text_free(&t);
    }
    if (rc == QD_OK && json && json[0]) {
        qd_error ignore = {0};
        if (spec_from_json(json, &e.spec, &ignore) != QD_OK) memset(&e.spec, 0, sizeof e.spec);
    }
    free(json);
    if (rc != QD_OK) {
        qd_artifact_entry_free(&e);
        return rc;
    }
    *ret = e;
    return QD_OK;
}

static qd_err check_artifact_id(const char *id, qd_error *err) {
    return check_id("artifact_id", "an artifact", id, err);
}

qd_err qd_service_artifact_get(struct qd_service *svc, const qd_caller *who, const char *id,
                               qd_artifact_entry *ret, qd_error *err) {
    qd_err rc = check_artifact_id(id, err);
    if (rc != QD_OK) return rc;
    struct qd_store_artifact a;
    lock(svc);
    if (!owns(svc, who, QD_STORE_OWN_ARTIFACT, id)) rc = artifact_not_found(id, err);
    if (rc == QD_OK) rc = qd_store_artifact_get(svc->store, id, &a, err);
    if (rc == QD_OK) rc = artifact_entry(svc, &a, ret, err);
    unlock(svc);
    return rc;
}

qd_err qd_service_artifact_list(struct qd_service *svc, const qd_caller *who,
                                qd_artifact_entry **ret, size_t *ret_n, qd_error *err) {
    struct qd_store_artifact *arts = NULL;
    size_t n = 0;
    lock(svc);
    qd_err rc = qd_store_artifact_list(svc->store, &arts, &n, err);
    /* Only the caller's, in the same order. */
    size_t kept = 0;
    for (size_t i = 0; rc == QD_OK && i < n; i++)
        if (owns(svc, who, QD_STORE_OWN_ARTIFACT, arts[i].id)) arts[kept++] = arts[i];
    if (rc == QD_OK) n = kept;
    qd_artifact_entry *out = NULL;
    if (rc == QD_OK && n) {
        out = calloc(n, sizeof *out);
        if (!out) rc = qd_error_set(err, QD_ERR_NOMEM, "list artifacts: out of memory");
    }
    size_t done = 0;
    for (; rc == QD_OK && done < n; done++) rc = artifact_entry(svc, &arts[done], &out[done], err);
    unlock(svc);
    free(arts);
    if (rc != QD_OK) {
        for (size_t i = 0; i < done; i++) qd_artifact_entry_free(&out[i]);
        free(out);
        return rc;
    }
    *ret = out;
    *ret_n = n;
    return QD_OK;
}

qd_err qd_service_artifact_delete(struct qd_service *svc, const qd_caller *who, const char *id,
                                  qd_error *err) {
    qd_err rc = check_artifact_id(id, err);
    if (rc != QD_OK) return rc;
    lock(svc);
    if (!owns(svc, who, QD_STORE_OWN_ARTIFACT, id)) rc = artifact_not_found(id, err);
    if (rc == QD_OK) rc = qd_store_artifact_delete(svc->store, id, err);
    unlock(svc);
    return rc;
}

qd_err qd_service_download_open(struct qd_service *svc, const qd_caller *who, const char *id,
                                struct qd_download **ret, qd_artifact_entry *ret_art,
                                char *dir, size_t dir_len, qd_error *err) {
    qd_err rc = check_artifact_id(id, err);
    if (rc != QD_OK) return rc;
    struct qd_download *dl = calloc(1, sizeof *dl);
    if (!dl) return qd_error_set(err, QD_ERR_NOMEM, "artifact %s: out of memory", id);
    dl->svc = svc;
    copy_text(dl->id, sizeof dl->id, id);
    struct qd_store_artifact a;
    qd_artifact_entry e;
    memset(&e, 0, sizeof e);
    lock(svc);
    if (!owns(svc, who, QD_STORE_OWN_ARTIFACT, id)) rc = artifact_not_found(id, err);
    if (rc == QD_OK) rc = qd_store_artifact_pin(svc->store, id, err);
    bool pinned = rc == QD_OK;
    if (rc == QD_OK) rc = qd_store_artifact_get(svc->store, id, &a, err);
    if (rc == QD_OK && ret_art) rc = artifact_entry(svc, &a, &e, err);
    if (rc == QD_OK) rc = qd_store_artifact_dir(svc->store, id, dir, dir_len, err);
    if (rc != QD_OK && pinned) (void)qd_store_artifact_unpin(svc->store, id, NULL);
    unlock(svc);
    if (rc != QD_OK) {
        qd_artifact_entry_free(&e);
        free(dl);
        return rc;
    }
    if (ret_art) *ret_art = e;
    *ret = dl;
    return QD_OK;
}

void qd_service_download_close(struct qd_download *dl) {
    if (!dl) return;
    lock(dl->svc);
    (void)qd_store_artifact_unpin(dl->svc->store, dl->id, NULL);
    unlock(dl->svc);
    free(dl);
}

/* ---- manifests and uploads ----------------------------------------------------------------- */

/* The name rules the store does not state in these words: relative, no empty segment, no "."
 * or "..", no control characters, bounded. Errors name the entry. */
static qd_err check_name(size_t i, const char *name, qd_error *err) {
    if (!name || !*name)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "manifest.files[%zu].name: empty", i);
    size_t n = strlen(name);
    if (n > MAX_NAME_BYTES)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "manifest.files[%zu].name: longer than %d "
                            "bytes", i, MAX_NAME_BYTES);
    char q[QD_YAML_EXCERPT_BUF];
    if (name[0] == '/')
        return qd_error_set(err, QD_ERR_INVALID_ARG, "manifest.files[%zu].name '%s': an "
                            "absolute path; names are relative to the bundle", i,
                            quoted(name, q));
    for (size_t k = 0; k < n; k++) {
        unsigned char c = (unsigned char)name[k];
        if (c < 0x20 || c == 0x7f || c == '\\')
            return qd_error_set(err, QD_ERR_INVALID_ARG, "manifest.files[%zu].name '%s': "
                                "control character or backslash at byte %zu", i,
                                quoted(name, q), k);
    }
    const char *p = name;
    for (;;) {
        const char *slash = strchr(p, '/');
        size_t len = slash ? (size_t)(slash - p) : strlen(p);
        if (len == 0)
            return qd_error_set(err, QD_ERR_INVALID_ARG, "manifest.files[%zu].name '%s': "
                                "empty path segment", i, quoted(name, q));
        if ((len == 1 && p[0] == '.') || (len == 2 && p[0] == '.' && p[1] == '.'))
            return qd_error_set(err, QD_ERR_INVALID_ARG, "manifest.files[%zu].name '%s': "
                                "'.' and '..' segments are not allowed", i, quoted(name, q));
        if (!slash) break;
        p = slash + 1;
    }
    return QD_OK;
}

/* Every check of a manifest that needs no store, and its digest. limit_bytes 0: no size
 * limit (StatModel reports on any manifest). */
static qd_err check_manifest(const struct qd_store_file *files, size_t n_files,
                             uint64_t limit_bytes, char digest[QD_STORE_HEX_LEN + 1],
                             uint64_t *ret_total, qd_error *err) {
    if (!files || n_files == 0)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "manifest.files: empty; a bundle has at "
                            "least one file");
    if (n_files > MAX_MANIFEST_FILES)
        return qd_error_set(err, QD_ERR_TOO_LARGE, "manifest.files: %zu files; at most %d",
                            n_files, MAX_MANIFEST_FILES);
    uint64_t total = 0;
    for (size_t i = 0; i < n_files; i++) {
        qd_err rc = check_name(i, files[i].name, err);
        if (rc != QD_OK) return rc;
        if (!is_hex64(files[i].sha256))
            return qd_error_set(err, QD_ERR_INVALID_ARG, "manifest.files[%zu].sha256 of '%s': "
                                "not 64 lowercase hex chars", i, files[i].name);
        if (files[i].size > UINT64_MAX - total) total = UINT64_MAX;
        else total += files[i].size;
    }
    if (limit_bytes && total > limit_bytes)
        return qd_error_set(err, QD_ERR_TOO_LARGE, "manifest: the bundle holds %" PRIu64
                            " bytes, more than limits.max_upload_bytes (%" PRIu64 ")", total,
                            limit_bytes);
    qd_err rc = qd_store_manifest_digest(files, n_files, digest, err);
    if (rc == QD_OK && ret_total) *ret_total = total;
    return rc;
}

static qd_err copy_files(const struct qd_store_file *files, size_t n,
                         struct qd_store_file **ret, qd_error *err) {
    struct qd_store_file *c = calloc(n, sizeof *c);
    if (!c) return qd_error_set(err, QD_ERR_NOMEM, "manifest: out of memory");
    for (size_t i = 0; i < n; i++) {
        c[i] = files[i];
        if (!(c[i].name = strdup(files[i].name))) {
            qd_store_files_free(c, i);
            return qd_error_set(err, QD_ERR_NOMEM, "manifest: out of memory");
        }
    }
    *ret = c;
    return QD_OK;
}

/* What is held of each file of a manifest, as who may be told: a blob it would have to prove
 * shows as not held at all. */
static qd_err fill_status(struct qd_service *svc, const qd_caller *who, const char *digest,
                          int kind, const struct qd_store_file *files, size_t n,
                          qd_bundle_status *ret, qd_error *err) {
    qd_bundle_status st;
    memset(&st, 0, sizeof st);
    copy_text(st.digest, sizeof st.digest, digest);
    st.kind = kind == QD_BUNDLE_MODEL || kind == QD_BUNDLE_CALIBRATION ? (qd_bundle_kind)kind
                                                                       : QD_BUNDLE_UNSPECIFIED;
    st.files = calloc(n, sizeof *st.files);
    if (!st.files) return qd_error_set(err, QD_ERR_NOMEM, "bundle %s: out of memory", digest);
    st.n_files = n;
    st.complete = true;
    qd_err rc = QD_OK;
    for (size_t i = 0; rc == QD_OK && i < n; i++) {
        qd_file_status *f = &st.files[i];
        if (!(f->name = strdup(files[i].name))) {
            rc = qd_error_set(err, QD_ERR_NOMEM, "bundle %s: out of memory", digest);
            break;
        }
        f->size = files[i].size;
        copy_text(f->sha256, sizeof f->sha256, files[i].sha256);
        lock(svc);
        bool real = blob_real(svc, who, &files[i]);
        unlock(svc);
        if (real) rc = qd_store_blob_stat(svc->store, files[i].sha256, files[i].size,
                                          &f->held_bytes, &f->complete, err);
        if (rc != QD_OK) qd_error_prefix(err, "file '%s': ", files[i].name);
        st.held_bytes += f->held_bytes;
        st.total_bytes += f->size;
        st.complete = st.complete && f->complete;
    }
    if (rc != QD_OK) {
        qd_bundle_status_free(&st);
        return rc;
    }
    *ret = st;
    return QD_OK;
}

qd_err qd_service_upload_begin(struct qd_service *svc, const qd_caller *who,
                               qd_bundle_kind kind, const struct qd_store_file *files,
                               size_t n_files, const char *expected_digest,
                               struct qd_upload **ret, qd_error *err) {
    if (kind != QD_BUNDLE_MODEL && kind != QD_BUNDLE_CALIBRATION)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "kind: %d is not MODEL (1) or "
                            "CALIBRATION (2)", (int)kind);
    char q[QD_YAML_EXCERPT_BUF];
    if (expected_digest && *expected_digest && !is_hex64(expected_digest))
        return qd_error_set(err, QD_ERR_INVALID_ARG, "expected_digest '%s': not 64 "
                            "lowercase hex chars", quoted(expected_digest, q));
    lock(svc);
    uint64_t limit = svc->max_upload_bytes;
    unlock(svc);
    char digest[QD_STORE_HEX_LEN + 1];
    qd_err rc = check_manifest(files, n_files, limit, digest, NULL, err);
    if (rc != QD_OK) return rc;
    if (expected_digest && *expected_digest && strcmp(expected_digest, digest) != 0)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "expected_digest %s: the manifest's "
                            "digest is %s", expected_digest, digest);
    struct qd_upload *up = calloc(1, sizeof *up);
    if (!up) return qd_error_set(err, QD_ERR_NOMEM, "upload: out of memory");
    up->svc = svc;
    up->kind = kind;
    copy_text(up->digest, sizeof up->digest, digest);
    copy_text(up->owner, sizeof up->owner, owner_of(who));
    up->all = sees_all(who);
    up->n_files = n_files;
    rc = copy_files(files, n_files, &up->files, err);
    if (rc == QD_OK && !(up->proofs = calloc(n_files, sizeof *up->proofs)))
        rc = qd_error_set(err, QD_ERR_NOMEM, "upload: out of memory");
    if (rc == QD_OK) {
        lock(svc);
        rc = qd_store_model_register(svc->store, files, n_files, NULL, NULL, err);
        if (rc == QD_OK) rc = qd_store_model_set_kind(svc->store, digest, (int)kind, err);
        /* Who registered a manifest may ask about it by digest (StatModel). */
        if (rc == QD_OK)
            rc = qd_store_owner_add(svc->store, QD_STORE_OWN_BUNDLE, digest, up->owner, err);
        unlock(svc);
    }
    if (rc != QD_OK) {
        qd_store_files_free(up->files, up->files ? n_files : 0);
        free(up->proofs);
        free(up);
        return rc;
    }
    *ret = up;
    return QD_OK;
}

static struct claim *find_claim(struct qd_service *svc, const char *sha) {
    for (size_t i = 0; i < svc->n_claims; i++)
        if (strcmp(svc->claims[i].sha256, sha) == 0) return &svc->claims[i];
    return NULL;
}

static void release_claim(struct qd_service *svc, const struct qd_upload *up, const char *sha) {
    for (size_t i = 0; i < svc->n_claims; i++)
        if (svc->claims[i].owner == up && (!sha || strcmp(svc->claims[i].sha256, sha) == 0)) {
            svc->claims[i] = svc->claims[--svc->n_claims];
            i--;
        }
}

static void proof_reset(struct proof *pr) {
    EVP_MD_CTX_free(pr->md);
    pr->md = NULL;
    pr->got = 0;
}

/* A chunk of a blob the caller does not own (see DESIGN): hashed, not written. The offsets
 * and the messages are those of an upload, counted from 0; the last byte decides. */
static qd_err prove_chunk(struct qd_upload *up, size_t idx, uint64_t offset, const void *data,
                          size_t len, qd_error *err) {
    struct qd_service *svc = up->svc;
    const struct qd_store_file *f = &up->files[idx];
    struct proof *pr = &up->proofs[idx];
    if (offset != pr->got)
        return qd_error_set(err, QD_ERR_PRECONDITION, "file '%s': chunk at offset %" PRIu64
                            " but the server holds %" PRIu64 " bytes; resume at offset %" PRIu64,
                            f->name, offset, pr->got, pr->got);
    if (!pr->md) {
        pr->md = EVP_MD_CTX_new();
        if (!pr->md || EVP_DigestInit_ex(pr->md, EVP_sha256(), NULL) != 1) {
            proof_reset(pr);
            return qd_error_set(err, QD_ERR_NOMEM, "file '%s': cannot start a sha256", f->name);
        }
    }
    if (EVP_DigestUpdate(pr->md, data, len) != 1) {
        proof_reset(pr);
        return qd_error_set(err, QD_ERR_INTERNAL, "file '%s': sha256 update failed", f->name);
    }
    pr->got += len;
    lock(svc);
    svc->stats.bytes_in += len;
    unlock(svc);
    if (pr->got < f->size) return QD_OK;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;
    int ok = EVP_DigestFinal_ex(pr->md, md, &md_len);
    proof_reset(pr);
    char hex[QD_STORE_HEX_LEN + 1];
    for (unsigned int i = 0; ok == 1 && i < md_len && 2 * i + 1 < sizeof hex; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    if (ok != 1 || md_len != 32 || strcmp(hex, f->sha256) != 0)
        return qd_error_set(err, QD_ERR_CORRUPT, "file '%s': the %" PRIu64 " bytes received "
                            "do not have sha256 %s; its data was dropped, upload it again",
                            f->name, f->size, f->sha256);
    lock(svc);
    qd_err rc = qd_store_owner_add(svc->store, QD_STORE_OWN_BLOB, f->sha256, up->owner, err);
    unlock(svc);
    return rc;
}

qd_err qd_service_upload_chunk(struct qd_upload *up, int64_t file_index, const char *file_name,
                               uint64_t offset, const void *data, size_t len, qd_error *err) {
    struct qd_service *svc = up->svc;
    const struct qd_store_file *f = NULL;
    if (file_index >= 0) {
        if ((uint64_t)file_index >= up->n_files)
            return qd_error_set(err, QD_ERR_INVALID_ARG, "chunk.index %" PRId64 ": the manifest "
                                "has %zu files", file_index, up->n_files);
        f = &up->files[file_index];
    } else {
        for (size_t i = 0; file_name && i < up->n_files && !f; i++)
            if (strcmp(up->files[i].name, file_name) == 0) f = &up->files[i];
        char q[QD_YAML_EXCERPT_BUF];
        if (!f)
            return qd_error_set(err, QD_ERR_INVALID_ARG, "chunk.name '%s': not in the "
                                "manifest", file_name ? quoted(file_name, q) : "(none)");
    }
    lock(svc);
    uint64_t max_chunk = svc->chunk_bytes;
    unlock(svc);
    if (len == 0 || !data)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "chunk for '%s': no data", f->name);
    if (len > max_chunk)
        return qd_error_set(err, QD_ERR_TOO_LARGE, "chunk for '%s': %zu bytes, more than "
                            "limits.chunk_bytes (%" PRIu64 ")", f->name, len, max_chunk);
    if (offset > f->size || len > f->size - offset)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "chunk for '%s': bytes %" PRIu64 "..%"
                            PRIu64 " run past its size %" PRIu64, f->name, offset,
                            offset + (uint64_t)len, f->size);
    qd_caller who = {.owner = up->owner, .all = up->all};
    lock(svc);
    bool real = blob_real(svc, &who, f);
    unlock(svc);
    if (!real) return prove_chunk(up, (size_t)(f - up->files), offset, data, len, err);
    /* Claim the blob: one writer each. */
    lock(svc);
    struct claim *c = find_claim(svc, f->sha256);
    qd_err rc = QD_OK;
    if (c && c->owner != up) {
        rc = qd_error_set(err, QD_ERR_PRECONDITION, "file '%s': another PutModel stream is "
                          "uploading the same content now; retry later, resuming at the "
                          "offset StatModel gives", f->name);
    } else if (!c) {
        if (svc->n_claims == svc->cap_claims) {
            size_t cap = svc->cap_claims ? 2 * svc->cap_claims : 16;
            void *p = realloc(svc->claims, cap * sizeof *svc->claims);
            if (!p) rc = qd_error_set(err, QD_ERR_NOMEM, "file '%s': out of memory", f->name);
            else {
                svc->claims = p;
                svc->cap_claims = cap;
            }
        }
        if (rc == QD_OK) {
            c = &svc->claims[svc->n_claims++];
            copy_text(c->sha256, sizeof c->sha256, f->sha256);
            c->owner = up;
        }
    }
    unlock(svc);
    if (rc != QD_OK) return rc;

    uint64_t held = 0;
    bool complete = false;
    rc = qd_store_blob_begin(svc->store, f->sha256, f->size, &held, &complete, err);
    if (rc == QD_OK && complete)
        rc = qd_error_set(err, QD_ERR_EXISTS, "file '%s': already complete; skip it", f->name);
    else if (rc == QD_OK && offset != held)
        rc = qd_error_set(err, QD_ERR_PRECONDITION, "file '%s': chunk at offset %" PRIu64
                          " but the server holds %" PRIu64 " bytes; resume at offset %" PRIu64,
                          f->name, offset, held, held);
    if (rc == QD_OK) {
        /* The part's owner is whoever has sent all of it: the writer of a fresh one, or a
         * caller that owns the blob and so knows every byte (see DESIGN). */
        lock(svc);
        bool mine = false;
        qd_error oerr = {0};
        if (qd_store_owner_has(svc->store, QD_STORE_OWN_PART, f->sha256, up->owner, &mine,
                               &oerr) != QD_OK)
            mine = false;
        if (!mine || held == 0) {
            rc = qd_store_owner_remove(svc->store, QD_STORE_OWN_PART, f->sha256, NULL, err);
            if (rc == QD_OK)
                rc = qd_store_owner_add(svc->store, QD_STORE_OWN_PART, f->sha256, up->owner,
                                        err);
        }
        unlock(svc);
    }
    if (rc == QD_OK)
        rc = qd_store_blob_append(svc->store, f->sha256, f->size, offset, data, len, &held, err);
    if (rc == QD_OK) {
        lock(svc);
        svc->stats.bytes_in += len;
        unlock(svc);
    }
    if (rc == QD_OK && held == f->size) {
        rc = qd_store_blob_finish(svc->store, f->sha256, f->size, err);
        if (rc == QD_ERR_CORRUPT) {
            qd_error_clear(err);
            rc = qd_error_set(err, QD_ERR_CORRUPT, "file '%s': the %" PRIu64 " bytes received "
                              "do not have sha256 %s; its data was dropped, upload it again",
                              f->name, f->size, f->sha256);
        }
        lock(svc);
        /* Complete: its part owner sent every byte and owns the blob now; dropped: no one
         * has sent any of what is (not) there. */
        if (rc == QD_OK) {
            qd_error oerr = {0};
            if (qd_store_owner_add(svc->store, QD_STORE_OWN_BLOB, f->sha256, up->owner,
                                   &oerr) != QD_OK)
                rc = qd_error_set(err, oerr.code, "file '%s': %s", f->name, oerr.msg);
        }
        (void)qd_store_owner_remove(svc->store, QD_STORE_OWN_PART, f->sha256, NULL, NULL);
        release_claim(svc, up, f->sha256);
        unlock(svc);
    } else if (rc != QD_OK && rc != QD_ERR_PRECONDITION) {
        if (err && err->msg[0] && !strstr(err->msg, f->name))
            qd_error_prefix(err, "file '%s': ", f->name);
    }
    return rc;
}

qd_err qd_service_upload_status(struct qd_upload *up, qd_bundle_status *ret, qd_error *err) {
    qd_caller who = {.owner = up->owner, .all = up->all};
    return fill_status(up->svc, &who, up->digest, (int)up->kind, up->files, up->n_files, ret,
                       err);
}

void qd_service_upload_end(struct qd_upload *up) {
    if (!up) return;
    lock(up->svc);
    release_claim(up->svc, up, NULL);
    unlock(up->svc);
    for (size_t i = 0; up->proofs && i < up->n_files; i++) proof_reset(&up->proofs[i]);
    free(up->proofs);
    qd_store_files_free(up->files, up->n_files);
    free(up);
}

qd_err qd_service_bundle_stat(struct qd_service *svc, const qd_caller *who, const char *digest,
                              const struct qd_store_file *files, size_t n_files,
                              qd_bundle_status *ret, qd_error *err) {
    if ((digest && *digest) == (files != NULL))
        return qd_error_set(err, QD_ERR_INVALID_ARG, "StatModel: give exactly one of digest "
                            "and manifest");
    struct qd_store_file *own = NULL;
    size_t n = n_files;
    char hex[QD_STORE_HEX_LEN + 1];
    int kind = 0;
    qd_err rc = QD_OK;
    if (digest) {
        char q[QD_YAML_EXCERPT_BUF];
        if (!is_hex64(digest))
            return qd_error_set(err, QD_ERR_INVALID_ARG, "digest '%s': not 64 lowercase "
                                "hex chars", quoted(digest, q));
        copy_text(hex, sizeof hex, digest);
        lock(svc);
        rc = qd_store_model_files(svc->store, digest, &own, &n, err);
        if (rc == QD_OK) rc = qd_store_model_kind(svc->store, digest, &kind, err);
        /* Another's bundle is a missing one: the caller registered it, or owns its blobs. */
        if (rc == QD_OK && !owns(svc, who, QD_STORE_OWN_BUNDLE, digest) &&
            !owns_files(svc, who, own, n))
            rc = QD_ERR_NOT_FOUND;
        unlock(svc);
        if (rc == QD_ERR_NOT_FOUND) {
            qd_error_clear(err);
            rc = qd_error_set(err, QD_ERR_NOT_FOUND, "bundle %s: never uploaded here", digest);
        }
        files = own;
    } else {
        rc = check_manifest(files, n_files, 0, hex, NULL, err);
        if (rc == QD_OK) {
            lock(svc);
            /* The kind would say that someone registered it: not to a stranger. */
            if (qd_store_model_kind(svc->store, hex, &kind, NULL) != QD_OK ||
                (!owns(svc, who, QD_STORE_OWN_BUNDLE, hex) && !owns_files(svc, who, files, n)))
                kind = 0;
            unlock(svc);
        }
    }
    if (rc == QD_OK) rc = fill_status(svc, who, hex, kind, files, n, ret, err);
    qd_store_files_free(own, own ? n : 0);
    return rc;
}

/* ---- models by path ------------------------------------------------------------------------ */

/* Whether real (a realpath) is a configured root or below one (mu not needed: roots are
 * fixed at open). */
static bool under_root(const struct qd_service *svc, const char *real) {
    for (size_t i = 0; i < svc->n_roots; i++) {
        char root[PATH_MAX];
        if (!realpath(svc->roots[i], root)) continue;
        size_t n = strlen(root);
        if (strcmp(root, "/") == 0) return true;
        if (strncmp(real, root, n) == 0 && (real[n] == '\0' || real[n] == '/')) return true;
    }
    return false;
}

/* The realpath of a requested model directory, refused unless under a configured root. */
static qd_err resolve_model_path(const struct qd_service *svc, const char *path, char *real,
                                 qd_error *err) {
    if (svc->n_roots == 0)
        return qd_error_set(err, QD_ERR_PERMISSION, "model_path: this server reads no models "
                            "by path (model_roots is empty); upload the model with PutModel");
    char q[QD_YAML_EXCERPT_BUF];
    size_t at;
    if (!path || path[0] != '/')
        return qd_error_set(err, QD_ERR_INVALID_ARG, "model_path '%s': not an absolute "
                            "path", path ? quoted(path, q) : "");
    /* Refused before anything echoes it whole: the checks below quote the path in full. */
    if (has_control(path, &at))
        return qd_error_set(err, QD_ERR_INVALID_ARG, "model_path '%s': control character at "
                            "byte %zu", quoted(path, q), at);
    if (!realpath(path, real))
        return qd_error_set(err, errno == ENOENT ? QD_ERR_NOT_FOUND : QD_ERR_IO,
                            "model_path '%.200s': %s", path, strerror(errno));
    if (!under_root(svc, real))
        return qd_error_set(err, QD_ERR_PERMISSION, "model_path '%.200s': not under any of "
                            "the configured model_roots", path);
    if (!qd_is_dir(real))
        return qd_error_set(err, QD_ERR_INVALID_ARG, "model_path '%.200s': not a directory",
                            path);
    return QD_OK;
}

struct file_list {
    struct qd_store_file *files;
    size_t n, cap;
};

static int cmp_names(const void *a, const void *b) {
    return strcmp(((const struct qd_store_file *)a)->name, ((const struct qd_store_file *)b)->name);
}

/* Hash every file under dir/rel into l. Symlinks are followed (Hugging Face cache snapshots
 * are made of them) but must resolve under a model root, so a link cannot smuggle another
 * file of the server into an artifact. Hidden entries (".git", ".cache") are skipped: they
 * are not part of a model. */
static qd_err list_model_dir(const struct qd_service *svc, const char *dir, const char *rel,
                             int depth, struct file_list *l, qd_error *err) {
    char here[PATH_MAX], path[PATH_MAX], name[PATH_MAX], real[PATH_MAX];
    qd_err rc = QD_OK;
    if (*rel) rc = qd_path_join(here, sizeof here, dir, rel, err);
    else copy_text(here, sizeof here, dir); /* a realpath: shorter than PATH_MAX */
    if (rc != QD_OK) return rc;
    if (depth > MODEL_DIR_DEPTH)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "model_path: %s nested too deep", here);
    DIR *d = opendir(here);
    if (!d) return qd_error_set(err, QD_ERR_IO, "%s: cannot list: %s", here, strerror(errno));
    struct dirent *de;
    while (rc == QD_OK && (de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.') continue;
        if (*rel) rc = qd_path_join(name, sizeof name, rel, de->d_name, err);
        else if (snprintf(name, sizeof name, "%s", de->d_name) >= (int)sizeof name)
            rc = qd_error_set(err, QD_ERR_TOO_LARGE, "%s: name too long", here);
        if (rc == QD_OK) rc = qd_path_join(path, sizeof path, dir, name, err);
        if (rc != QD_OK) break;
        struct stat st;
        if (!realpath(path, real) || stat(real, &st) != 0) {
            rc = qd_error_set(err, QD_ERR_IO, "model_path: %s: %s", path, strerror(errno));
        } else if (!under_root(svc, real)) {
            rc = qd_error_set(err, QD_ERR_PERMISSION, "model_path: %s leads out of the "
                              "model_roots", path);
        } else if (S_ISDIR(st.st_mode)) {
            rc = list_model_dir(svc, dir, name, depth + 1, l, err);
        } else if (S_ISREG(st.st_mode)) {
            if (l->n == l->cap) {
                size_t cap = l->cap ? 2 * l->cap : 16;
                void *p = realloc(l->files, cap * sizeof *l->files);
                if (!p) {
                    rc = qd_error_set(err, QD_ERR_NOMEM, "model_path: out of memory");
                    break;
                }
                l->files = p;
                l->cap = cap;
            }
            struct qd_store_file *f = &l->files[l->n];
            memset(f, 0, sizeof *f);
            if (!(f->name = strdup(name))) {
                rc = qd_error_set(err, QD_ERR_NOMEM, "model_path: out of memory");
                break;
            }
            l->n++;
            rc = qd_store_hash_file(real, f->sha256, &f->size, err);
        }
        /* sockets, devices, fifos: not model files; skipped */
    }
    closedir(d);
    return rc;
}

/* The manifest digest of a server-side model directory (real: its realpath). Slow (it reads
 * every byte): never called with mu held. */
static qd_err model_dir_digest(const struct qd_service *svc, const char *real,
                               char digest[QD_STORE_HEX_LEN + 1], qd_error *err) {
    struct file_list l = {0};
    qd_err rc = list_model_dir(svc, real, "", 0, &l, err);
    if (rc == QD_OK && l.n == 0)
        rc = qd_error_set(err, QD_ERR_INVALID_ARG, "model_path '%s': no files", real);
    if (rc == QD_OK) {
        qsort(l.files, l.n, sizeof *l.files, cmp_names);
        rc = qd_store_manifest_digest(l.files, l.n, digest, err);
    }
    qd_store_files_free(l.files, l.n);
    return rc;
}

/* ---- materialising bundles ----------------------------------------------------------------- */

/* A complete bundle's files and blob paths (mu held). want_kind: the kind it must have.
 * what names it in messages ("model_digest", "spec.calibration.digest"). */
static qd_err bundle_blobs(struct qd_service *svc, const char *digest, qd_bundle_kind want_kind,
                           const char *what, struct qd_store_file **ret_files, size_t *ret_n,
                           char (**ret_paths)[PATH_MAX], qd_error *err) {
    struct qd_store_file *files = NULL;
    size_t n = 0;
    int kind = 0;
    qd_err rc = qd_store_model_files(svc->store, digest, &files, &n, err);
    if (rc == QD_ERR_NOT_FOUND) {
        qd_error_clear(err);
        return qd_error_set(err, QD_ERR_NOT_FOUND, "%s %s: no such bundle here; upload it "
                            "with PutModel", what, digest);
    }
    if (rc == QD_OK) rc = qd_store_model_kind(svc->store, digest, &kind, err);
    if (rc == QD_OK && kind != (int)want_kind && kind != 0)
        rc = qd_error_set(err, QD_ERR_INVALID_ARG, "%s %s: is a %s bundle, not a %s bundle",
                          what, digest, kind == QD_BUNDLE_MODEL ? "model" : "calibration",
                          want_kind == QD_BUNDLE_MODEL ? "model" : "calibration");
    char(*paths)[PATH_MAX] = NULL;
    if (rc == QD_OK && !(paths = calloc(n, sizeof *paths)))
        rc = qd_error_set(err, QD_ERR_NOMEM, "%s %s: out of memory", what, digest);
    for (size_t i = 0; rc == QD_OK && i < n; i++) {
        rc = qd_store_blob_path(svc->store, files[i].sha256, paths[i], sizeof paths[i], err);
        if (rc == QD_ERR_NOT_FOUND) {
            uint64_t held = 0;
            bool complete = false;
            (void)qd_store_blob_stat(svc->store, files[i].sha256, files[i].size, &held,
                                     &complete, NULL);
            qd_error_clear(err);
            rc = qd_error_set(err, QD_ERR_PRECONDITION, "%s %s: bundle incomplete: file '%s' "
                              "has %" PRIu64 " of %" PRIu64 " bytes; finish the upload first",
                              what, digest, files[i].name, held, files[i].size);
        }
    }
    if (rc != QD_OK) {
        free(paths);
        qd_store_files_free(files, n);
        return rc;
    }
    *ret_files = files;
    *ret_n = n;
    *ret_paths = paths;
    return QD_OK;
}

/* A fresh staging directory (mu taken here). */
static qd_err staging_dir(struct qd_service *svc, char *buf, size_t len, qd_error *err) {
    lock(svc);
    qd_err rc = qd_store_staging_new(svc->store, buf, len, err);
    unlock(svc);
    return rc;
}

/* The model bundle as a directory: a staging directory of symlinks named as the manifest
 * says, pointing at the blobs. */
static qd_err materialise_model(struct qd_service *svc, const char *digest, char *dir,
                                size_t dir_len, qd_error *err) {
    struct qd_store_file *files = NULL;
    size_t n = 0;
    char(*paths)[PATH_MAX] = NULL;
    lock(svc);
    qd_err rc = bundle_blobs(svc, digest, QD_BUNDLE_MODEL, "model_digest", &files, &n, &paths,
                             err);
    if (rc == QD_OK) rc = qd_store_staging_new(svc->store, dir, dir_len, err);
    unlock(svc);
    char link[PATH_MAX];
    for (size_t i = 0; rc == QD_OK && i < n; i++) {
        rc = qd_path_join(link, sizeof link, dir, files[i].name, err);
        char *slash = rc == QD_OK ? strrchr(link, '/') : NULL;
        if (slash && slash > link + strlen(dir)) {
            *slash = '\0';
            rc = qd_mkdir_p(link, 0755, err);
            *slash = '/';
        }
        if (rc == QD_OK && symlink(paths[i], link) != 0)
            rc = qd_error_set(err, QD_ERR_IO, "%s: cannot link: %s", link, strerror(errno));
    }
    free(paths);
    qd_store_files_free(files, n);
    return rc;
}

/* The calibration token file of a job: the first *.safetensors file (manifest order) of the
 * calibration bundle, or the configured calibration.default when the digest is its. */
static qd_err calibration_file(struct qd_service *svc, const char *digest, char *path,
                               size_t path_len, qd_error *err) {
    struct qd_store_file *files = NULL;
    size_t n = 0;
    char(*paths)[PATH_MAX] = NULL;
    char def_path[PATH_MAX] = "";
    lock(svc);
    qd_err rc = bundle_blobs(svc, digest, QD_BUNDLE_CALIBRATION, "spec.calibration.digest",
                             &files, &n, &paths, err);
    bool is_default = svc->calib_default && strcmp(digest, svc->calib_default_digest) == 0;
    if (is_default) copy_text(def_path, sizeof def_path, svc->calib_default);
    unlock(svc);
    if (rc == QD_ERR_NOT_FOUND && is_default) {
        /* The configured file: check it still is what its digest says. */
        qd_error_clear(err);
        qd_spec probe = {0};
        probe.calibration.path = def_path;
        rc = qd_spec_hash_calibration(&probe, err);
        if (rc == QD_OK && strcmp(probe.calibration.digest, digest) != 0)
            rc = qd_error_set(err, QD_ERR_PRECONDITION, "calibration.default %s changed since "
                              "the job was queued (digest %s, now %s)", def_path, digest,
                              probe.calibration.digest);
        if (rc == QD_OK) copy_text(path, path_len, def_path);
        return rc;
    }
    if (rc != QD_OK) return rc;
    size_t pick = n;
    for (size_t i = 0; i < n && pick == n; i++)
        if (ends_with(files[i].name, ".safetensors")) pick = i;
    if (pick == n)
        rc = qd_error_set(err, QD_ERR_INVALID_ARG, "spec.calibration.digest %s: the bundle has "
                          "no .safetensors file of input_ids", digest);
    else copy_text(path, path_len, paths[pick]);
    free(paths);
    qd_store_files_free(files, n);
    return rc;
}

/* The spec against the model's linears (group sizes dividing in_features, packing fits). */
static qd_err check_against_model(const qd_model *m, const qd_spec *spec, qd_error *err) {
    const qd_llama_config *c = qd_model_config(m);
    size_t n = (size_t)c->num_hidden_layers * QD_LINEAR_COUNT;
    qd_spec_linear *lin = calloc(n, sizeof *lin);
    char(*names)[96] = calloc(n, sizeof *names);
    qd_err rc = (!lin || !names) ? qd_error_set(err, QD_ERR_NOMEM, "out of memory") : QD_OK;
    qd_layer_weights w = {0};
    /* Every layer has the shapes of layer 0: the config says them once. */
    if (rc == QD_OK) rc = qd_layer_weights_load(m, 0, &w, err);
    for (size_t i = 0; rc == QD_OK && i < n; i++) {
        int layer = (int)(i / QD_LINEAR_COUNT);
        qd_linear_kind k = (qd_linear_kind)(i % QD_LINEAR_COUNT);
        rc = qd_linear_path(names[i], sizeof names[i], layer, k, err);
        lin[i].name = names[i];
        lin[i].in_features = w.n_in[k];
        lin[i].out_features = w.n_out[k];
    }
    qd_layer_weights_done(&w);
    if (rc == QD_OK) rc = qd_spec_check_model(spec, lin, n, err);
    free(lin);
    free(names);
    return rc;
}

/* ---- Quantize ------------------------------------------------------------------------------ */

/* Open the model (a bundle materialised for the purpose, or the path) and check the spec
 * against it. Slow-ish (mmap, a layer's shapes): no lock held. */
static qd_err check_spec_on_model(struct qd_service *svc, const char *digest, const char *real,
                                  const qd_spec *spec, qd_error *err) {
    char dir[PATH_MAX] = "";
    qd_err rc = real ? QD_OK : materialise_model(svc, digest, dir, sizeof dir, err);
    qd_model *m = NULL;
    if (rc == QD_OK) rc = qd_model_open(real ? real : dir, &m, err);
    if (rc == QD_OK) rc = check_against_model(m, spec, err);
    qd_model_free(m);
    if (dir[0]) (void)qd_remove_tree(dir, NULL);
    return rc;
}

static qd_err new_job(struct qd_service *svc, const struct qd_store_job *row, const qd_spec *spec,
                      const char *spec_json, const char *model_path, const char *label,
                      struct job **ret, qd_error *err) {
    struct job *j = calloc(1, sizeof *j);
    if (!j) return qd_error_set(err, QD_ERR_NOMEM, "job: out of memory");
    copy_text(j->id, sizeof j->id, row->id);
    j->key = row->key;
    j->state = from_store_state(row->state);
    j->created_ms = row->created_ms;
    j->queued_reported = UINT32_MAX;
    atomic_init(&j->cancel, 0);
    bool oom = false;
    j->model_path = dup_or_null(model_path, &oom);
    j->label = dup_or_null(label, &oom);
    j->spec_json = dup_or_null(spec_json, &oom);
    qd_err rc = oom ? qd_error_set(err, QD_ERR_NOMEM, "job %s: out of memory", j->id) : QD_OK;
    if (rc == QD_OK && spec) rc = qd_spec_copy(&j->spec, spec, err);
    if (rc == QD_OK) rc = add_job(svc, j, err);
    if (rc != QD_OK) {
        job_free(j);
        return rc;
    }
    *ret = j;
    return QD_OK;
}

static size_t n_in_state(const struct qd_service *svc, qd_job_state st) {
    size_t n = 0;
    for (size_t i = 0; i < svc->n_jobs; i++) n += svc->jobs[i]->state == st;
    return n;
}

static struct job *find_live_key(const struct qd_service *svc, const struct qd_store_key *k) {
    for (size_t i = 0; i < svc->n_jobs; i++) {
        struct job *j = svc->jobs[i];
        if ((j->state == QD_JOB_QUEUED || j->state == QD_JOB_RUNNING) &&
            atomic_load(&j->cancel) == 0 && strcmp(j->key.model_digest, k->model_digest) == 0 &&
            strcmp(j->key.spec_digest, k->spec_digest) == 0 &&
            strcmp(j->key.numerics_version, k->numerics_version) == 0)
            return j;
    }
    return NULL;
}

/* Answer from the cache or join a live job (mu held). *answered false: neither. The caller
 * becomes an owner of the artifact that answers it, or a joiner of the job it joins. */
static qd_err cache_or_join(struct qd_service *svc, const qd_caller *who,
                            const struct qd_store_key *key,
                            const char *spec_json, const char *model_path, const char *label,
                            bool *answered, qd_quantize_outcome *ret_outcome,
                            qd_job_snapshot *ret_job, qd_artifact_entry *ret_art,
                            qd_error *err) {
    *answered = false;
    struct qd_store_artifact a;
    qd_error look = {0};
    qd_err rc = qd_store_artifact_lookup(svc->store, key, &a, &look);
    if (rc == QD_OK) {
        struct qd_store_job_new nj = {.key = *key, .spec_json = spec_json,
                                      .model_path = model_path, .label = label,
                                      .cache_hit = true, .artifact_id = a.id,
                                      .owner = owner_of(who)};
        struct qd_store_job row;
        rc = qd_store_owner_add(svc->store, QD_STORE_OWN_ARTIFACT, a.id, owner_of(who), err);
        if (rc == QD_OK) rc = qd_store_job_add_ex(svc->store, &nj, &row, err);
        qd_artifact_entry e;
        memset(&e, 0, sizeof e);
        if (rc == QD_OK && ret_art) rc = artifact_entry(svc, &a, &e, err);
        if (rc == QD_OK && ret_job) rc = snapshot_row(svc, &row, ret_job, err);
        if (rc != QD_OK) {
            qd_artifact_entry_free(&e);
            return rc;
        }
        if (ret_art) *ret_art = e;
        *ret_outcome = QD_QUANTIZE_CACHE_HIT;
        svc->stats.cache_hits++;
        *answered = true;
        return QD_OK;
    }
    if (rc != QD_ERR_NOT_FOUND) return qd_error_set(err, look.code, "%s", look.msg);
    struct job *live = find_live_key(svc, key);
    if (live) {
        rc = qd_store_owner_add(svc->store, QD_STORE_OWN_JOB_JOINED, live->id, owner_of(who),
                                err);
        if (rc != QD_OK) return rc;
        if (ret_job) {
            rc = snapshot_mem(svc, live, ret_job, err);
            if (rc != QD_OK) return rc;
        }
        *ret_outcome = QD_QUANTIZE_JOINED;
        svc->stats.cache_joins++;
        *answered = true;
    }
    return QD_OK;
}

qd_err qd_service_quantize(struct qd_service *svc, const qd_quantize_request *req,
                           qd_quantize_outcome *ret_outcome, qd_job_snapshot *ret_job,
                           qd_artifact_entry *ret_art, qd_spec_warnings *warn, qd_error *err) {
    qd_quantize_outcome ignored_outcome;
    if (!ret_outcome) ret_outcome = &ignored_outcome;
    if (ret_job) memset(ret_job, 0, sizeof *ret_job);
    if (ret_art) memset(ret_art, 0, sizeof *ret_art);
    if (!req || !req->spec) return qd_error_set(err, QD_ERR_INVALID_ARG, "spec: missing");
    bool by_digest = req->model_digest && *req->model_digest;
    bool by_path = req->model_path && *req->model_path;
    if (by_digest == by_path)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "model: give exactly one of model_digest "
                            "and model_path");
    if (by_digest && !is_hex64(req->model_digest))
        return qd_error_set(err, QD_ERR_INVALID_ARG, "model_digest '%.80s': not 64 lowercase "
                            "hex chars", req->model_digest);
    if (req->label && strlen(req->label) > MAX_LABEL_BYTES)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "label: longer than %d bytes",
                            MAX_LABEL_BYTES);
    if (req->spec->calibration.path)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "spec.calibration.path: the service "
                            "reads no calibration files by path; upload the set (PutModel, "
                            "kind CALIBRATION) and give spec.calibration.digest");
    if (req->spec->format == QD_SPEC_FORMAT_NONE)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "spec.format: 'none' writes no artifact; "
                            "choose the format to produce");

    qd_spec spec = {0};
    char *json = NULL, real[PATH_MAX] = "";
    struct qd_store_key key;
    memset(&key, 0, sizeof key);
    qd_err rc = qd_spec_copy(&spec, req->spec, err);
    /* Defaults first (whether the method calibrates can depend on them), then the default
     * set for an empty digest, then the checks, which want a set named. */
    if (rc == QD_OK) qd_spec_defaults(&spec);
    if (rc == QD_OK && qd_spec_needs_calibration(&spec) && !spec.calibration.digest[0]) {
        lock(svc);
        copy_text(spec.calibration.digest, sizeof spec.calibration.digest,
                  svc->calib_default_digest);
        unlock(svc);
        if (!spec.calibration.digest[0])
            rc = qd_error_set(err, QD_ERR_PRECONDITION, "spec.calibration.digest: method %s "
                              "needs a calibration set: upload one (PutModel, kind "
                              "CALIBRATION) or set calibration.default",
                              qd_spec_method_name(spec.method));
    }
    if (rc == QD_OK) rc = qd_spec_resolve(&spec, warn, err);
    if (rc == QD_OK && qd_spec_needs_calibration(&spec)) {
        /* The set must be usable now: a job should fail at submit, not hours later. */
        lock(svc);
        bool is_default = svc->calib_default &&
                          strcmp(spec.calibration.digest, svc->calib_default_digest) == 0;
        struct qd_store_file *files = NULL;
        size_t n = 0;
        char(*paths)[PATH_MAX] = NULL;
        if (!is_default)
            rc = check_bundle_owner(svc, req->caller, spec.calibration.digest,
                                    "spec.calibration.digest", err);
        if (rc == QD_OK && !is_default)
            rc = bundle_blobs(svc, spec.calibration.digest, QD_BUNDLE_CALIBRATION,
                              "spec.calibration.digest", &files, &n, &paths, err);
        unlock(svc);
        free(paths);
        qd_store_files_free(files, n);
    }
    if (rc == QD_OK) rc = qd_spec_canonical(&spec, &json, NULL, err);
    if (rc == QD_OK) rc = qd_spec_digest(&spec, key.spec_digest, err);
    snprintf(key.numerics_version, sizeof key.numerics_version, "%d", QD_NUMERICS_VERSION);
    if (rc == QD_OK && by_path) {
        rc = resolve_model_path(svc, req->model_path, real, err);
        if (rc == QD_OK) rc = model_dir_digest(svc, real, key.model_digest, err);
    } else if (rc == QD_OK) {
        copy_text(key.model_digest, sizeof key.model_digest, req->model_digest);
    }
    const char *model_path = by_path ? req->model_path : NULL;
    bool answered = false;
    if (rc == QD_OK) {
        lock(svc);
        if (svc->draining || svc->closing)
            rc = qd_error_set(err, QD_ERR_UNAVAILABLE, "draining: the server is shutting "
                              "down; submit the job again after it restarts");
        /* Before the cache: the cache must not answer a digest the caller only quoted. */
        if (rc == QD_OK && by_digest)
            rc = check_bundle_owner(svc, req->caller, key.model_digest, "model_digest", err);
        if (rc == QD_OK)
            rc = cache_or_join(svc, req->caller, &key, json, model_path, req->label, &answered,
                               ret_outcome, ret_job, ret_art, err);
        /* A bundle that is not there or not complete fails now, with its own message. */
        if (rc == QD_OK && !answered && by_digest) {
            struct qd_store_file *files = NULL;
            size_t n = 0;
            char(*paths)[PATH_MAX] = NULL;
            rc = bundle_blobs(svc, key.model_digest, QD_BUNDLE_MODEL, "model_digest", &files,
                              &n, &paths, err);
            free(paths);
            qd_store_files_free(files, n);
        }
        unlock(svc);
    }
    if (rc == QD_OK && !answered) rc = check_spec_on_model(svc, key.model_digest,
                                                           by_path ? real : NULL, &spec, err);
    if (rc == QD_OK && !answered) {
        lock(svc);
        /* Again: an equal job may have been queued (or finished) while the model was read. */
        if (svc->draining || svc->closing)
            rc = qd_error_set(err, QD_ERR_UNAVAILABLE, "draining: the server is shutting "
                              "down; submit the job again after it restarts");
        if (rc == QD_OK)
            rc = cache_or_join(svc, req->caller, &key, json, model_path, req->label, &answered,
                               ret_outcome, ret_job, ret_art, err);
        if (rc == QD_OK && !answered && (int64_t)n_in_state(svc, QD_JOB_QUEUED) >= svc->max_queued)
            rc = qd_error_set(err, QD_ERR_TOO_LARGE, "limits.max_queued_jobs: %" PRId64 " jobs "
                              "are queued already; retry later", svc->max_queued);
        struct qd_store_job row;
        struct job *j = NULL;
        if (rc == QD_OK && !answered) {
            struct qd_store_job_new nj = {.key = key, .spec_json = json,
                                          .model_path = model_path, .label = req->label,
                                          .owner = owner_of(req->caller)};
            rc = qd_store_job_add_ex(svc->store, &nj, &row, err);
            if (rc == QD_OK) {
                rc = new_job(svc, &row, &spec, json, model_path, req->label, &j, err);
                /* Without its memory the row would never run: cancel it. */
                if (rc != QD_OK)
                    (void)qd_store_job_set_state_ex(svc->store, row.id, QD_STORE_JOB_CANCELLED,
                                                    qd_err_name(rc), err->msg, NULL, NULL);
            }
            if (rc == QD_OK) {
                update_queue_events(svc);
                pthread_cond_signal(&svc->work_cv);
                if (ret_job) rc = snapshot_mem(svc, j, ret_job, err);
                *ret_outcome = QD_QUANTIZE_QUEUED;
                svc->stats.cache_misses++;
            }
        }
        unlock(svc);
    }
    free(json);
    qd_spec_free(&spec);
    return rc;
}

/* ---- running a job ------------------------------------------------------------------------- */

/* What a worker keeps while a job runs; the progress callbacks see it. */
struct run {
    struct qd_service *svc;
    struct job *j;
    int n_layers;
    double *group_err;     /* [n_layers * QD_CALIB_GROUP_COUNT]; < 0 = not measured */
    int64_t quantize_start_ms, last_layer_ms, layer_ms_sum;
    int layers_done;
};

static void on_group_error(void *ctx, int layer, qd_calib_group g, double rel_err) {
    struct run *r = ctx;
    if (r->group_err && layer >= 0 && layer < r->n_layers && (int)g >= 0 &&
        g < QD_CALIB_GROUP_COUNT)
        r->group_err[(size_t)layer * QD_CALIB_GROUP_COUNT + g] = rel_err;
}

static int on_cancelled(void *ctx) {
    struct run *r = ctx;
    return atomic_load(&r->j->cancel) != 0;
}

static void on_stage(void *ctx, const char *stage) {
    (void)ctx; /* the worker reports its own stages, in the proto's terms */
    (void)stage;
}

/* A layer is done: its LAYER event with each linear's error (its group's), progress and ETA
 * from the mean layer time so far (packing taken as one more tenth). */
static void on_layer(void *ctx, int layer, int n_layers) {
    struct run *r = ctx;
    struct qd_service *svc = r->svc;
    struct job *j = r->j;
    int64_t t = qd_service_now_mono_ms();
    int64_t dur = t - r->last_layer_ms;
    r->last_layer_ms = t;
    r->layers_done++;
    r->layer_ms_sum += dur;

    qd_layer_event le;
    memset(&le, 0, sizeof le);
    le.index = (uint32_t)layer;
    le.count = (uint32_t)n_layers;
    le.duration_ms = dur;
    double sum = 0;
    int n_measured = 0;
    for (int g = 0; g < QD_CALIB_GROUP_COUNT; g++) {
        double e = r->group_err && layer < r->n_layers
                       ? r->group_err[(size_t)layer * QD_CALIB_GROUP_COUNT + g]
                       : -1;
        if (e >= 0) {
            sum += e;
            n_measured++;
        }
        qd_linear_kind kinds[3];
        int nk = qd_calib_group_linears((qd_calib_group)g, kinds);
        for (int k = 0; k < nk && le.n_modules < 8; k++) {
            char name[96];
            if (qd_linear_path(name, sizeof name, layer, kinds[k], NULL) != QD_OK) continue;
            if (qd_spec_module_excluded(&j->spec, name)) continue;
            copy_text(le.modules[le.n_modules].name, sizeof le.modules[0].name, name);
            le.modules[le.n_modules++].error = e;
        }
    }
    le.error = n_measured ? sum / n_measured : -1;

    lock(svc);
    double span = STAGE_START[QD_STAGE_PACK] - STAGE_START[QD_STAGE_QUANTIZE];
    double f = STAGE_START[QD_STAGE_QUANTIZE] +
               span * (n_layers > 0 ? (double)(layer + 1) / n_layers : 1.0);
    if (f > j->progress.fraction) j->progress.fraction = f;
    j->progress.layer = (uint32_t)(layer + 1);
    j->progress.layer_count = (uint32_t)n_layers;
    double mean = (double)r->layer_ms_sum / r->layers_done;
    int remaining = n_layers - (layer + 1);
    j->progress.eta_unix_ms = now_unix_ms() + (int64_t)(mean * (remaining + 0.1 * n_layers));
    qd_job_event *ev = emit(svc, j, QD_EVENT_LAYER);
    if (ev) ev->layer = le;
    unlock(svc);
}

static void set_stage(struct qd_service *svc, struct job *j, qd_job_stage stage) {
    lock(svc);
    emit_stage(svc, j, stage);
    unlock(svc);
}

/* Everything a job does between RUNNING and its end; returns its outcome in err (QD_OK with
 * artifact_id filled on success). No lock held on entry or exit. */
static qd_err run_job(struct qd_service *svc, struct job *j, const qd_job_device *dev,
                      char *artifact_id, qd_error *err) {
    const qd_spec *spec = &j->spec; /* immutable while the job lives */
    char model_dir[PATH_MAX] = "", staged[PATH_MAX] = "", out[PATH_MAX] = "";
    char real[PATH_MAX] = "", calib_path[PATH_MAX] = "";
    qd_model *m = NULL;
    int32_t *calib = NULL;
    int64_t c_rows = 0, c_len = 0;
    qd_job_result res = {0};
    bool have_res = false;
    struct qd_store_file *files = NULL;
    size_t n_files = 0;
    struct run r = {.svc = svc, .j = j};
    qd_err rc = j->load_code;
    if (rc != QD_OK) {
        qd_error_set(err, rc, "%s", j->load_error);
        goto done;
    }

    /* LOAD: the model as a directory. */
    set_stage(svc, j, QD_STAGE_LOAD);
    if (j->model_path) {
        char digest[QD_STORE_HEX_LEN + 1];
        rc = resolve_model_path(svc, j->model_path, real, err);
        if (rc == QD_OK) rc = model_dir_digest(svc, real, digest, err);
        if (rc == QD_OK && strcmp(digest, j->key.model_digest) != 0)
            rc = qd_error_set(err, QD_ERR_PRECONDITION, "model_path '%s': its files changed "
                              "since the job was queued (digest %s, now %s)", j->model_path,
                              j->key.model_digest, digest);
        if (rc == QD_OK) copy_text(model_dir, sizeof model_dir, real);
    } else {
        rc = materialise_model(svc, j->key.model_digest, staged, sizeof staged, err);
        if (rc == QD_OK) copy_text(model_dir, sizeof model_dir, staged);
    }
    if (rc == QD_OK) rc = qd_model_open(model_dir, &m, err);
    if (rc == QD_OK && on_cancelled(&r)) rc = qd_error_set(err, QD_ERR_CANCELLED, "cancelled");

    /* PLAN: the spec against the model's linears. */
    if (rc == QD_OK) {
        set_stage(svc, j, QD_STAGE_PLAN);
        rc = check_against_model(m, spec, err);
        r.n_layers = qd_model_config(m)->num_hidden_layers;
        r.group_err = malloc((size_t)r.n_layers * QD_CALIB_GROUP_COUNT * sizeof *r.group_err);
        if (rc == QD_OK && !r.group_err)
            rc = qd_error_set(err, QD_ERR_NOMEM, "job %s: out of memory", j->id);
        for (size_t i = 0; rc == QD_OK && i < (size_t)r.n_layers * QD_CALIB_GROUP_COUNT; i++)
            r.group_err[i] = -1;
        if (rc == QD_OK) {
            lock(svc);
            j->progress.layer_count = (uint32_t)r.n_layers;
            unlock(svc);
        }
    }

    /* CALIBRATE: the token set, cut as the spec says. */
    if (rc == QD_OK && qd_spec_needs_calibration(spec)) {
        set_stage(svc, j, QD_STAGE_CALIBRATE);
        rc = calibration_file(svc, spec->calibration.digest, calib_path, sizeof calib_path, err);
        if (rc == QD_OK)
            rc = qd_token_set_load(calib_path, spec->calibration.rows,
                                   spec->calibration.seq_len, &calib, &c_rows, &c_len, err);
        if (rc != QD_OK) qd_error_prefix(err, "calibration %.12s: ", spec->calibration.digest);
        if (rc == QD_OK) rc = qd_model_check_tokens(m, calib, c_rows, c_len, err);
    }
    if (rc == QD_OK && on_cancelled(&r)) rc = qd_error_set(err, QD_ERR_CANCELLED, "cancelled");

    /* QUANTIZE */
    if (rc == QD_OK) {
        set_stage(svc, j, QD_STAGE_QUANTIZE);
        r.quantize_start_ms = r.last_layer_ms = qd_service_now_mono_ms();
        qd_job_progress jp = {.ctx = &r, .stage = on_stage, .layer_done = on_layer,
                              .group_error = on_group_error, .cancelled = on_cancelled};
        qd_run_opts run = {0}; /* as the command: the kernels' process-wide thread count */
        qd_job_device_run_opts(dev, &run);
        rc = qd_job_quantize(m, spec, calib, c_rows, c_len, &jp, &run, &res, err);
        have_res = rc == QD_OK;
    }

    /* PACK: write into a fresh staging directory (qd_artifact_write wants to create it). */
    if (rc == QD_OK) {
        set_stage(svc, j, QD_STAGE_PACK);
        rc = staging_dir(svc, out, sizeof out, err);
        if (rc == QD_OK && rmdir(out) != 0)
            rc = qd_error_set(err, QD_ERR_IO, "%s: cannot remove: %s", out, strerror(errno));
        if (rc == QD_OK) rc = qd_artifact_write(model_dir, m, spec, &res, out, 0, err);
    }
    if (have_res) qd_job_result_free(&res);
    qd_model_free(m);
    m = NULL;

    /* PUBLISH: the manifest is hashed before the lock is taken. */
    if (rc == QD_OK) {
        set_stage(svc, j, QD_STAGE_PUBLISH);
        rc = qd_store_hash_tree(out, &files, &n_files, err);
    }
    if (rc == QD_OK) {
        lock(svc);
        struct qd_store_publish p = {.staging_dir = out, .key = &j->key,
                                     .format = qd_spec_format_name(spec->format),
                                     .job_id = j->id, .spec_json = j->spec_json,
                                     .files = files, .n_files = n_files};
        struct qd_store_artifact a;
        qd_error perr = {0};
        rc = qd_store_artifact_publish_ex(svc->store, &p, &a, &perr);
        if (rc == QD_ERR_EXISTS) /* made meanwhile (by a job queued before a restart) */
            rc = qd_store_artifact_lookup(svc->store, &j->key, &a, err);
        else if (rc != QD_OK)
            qd_error_set(err, rc, "%s", perr.msg);
        if (rc == QD_OK) {
            copy_text(artifact_id, QD_STORE_ID_LEN + 1, a.id);
            /* Held while the cache shrinks, so the artifact just made is not the one to go. */
            if (svc->cache_max && qd_store_artifact_pin(svc->store, a.id, NULL) == QD_OK) {
                (void)qd_store_evict(svc->store, svc->cache_max, NULL, NULL, NULL);
                (void)qd_store_artifact_unpin(svc->store, a.id, NULL);
            }
        }
        unlock(svc);
    }

done:
    qd_store_files_free(files, n_files);
    qd_model_free(m);
    free(calib);
    free(r.group_err);
    if (staged[0]) (void)qd_remove_tree(staged, NULL);
    if (out[0] && qd_is_dir(out)) (void)qd_remove_tree(out, NULL);
    return rc;
}

/* The oldest queued job (mu held), or NULL. */
static struct job *next_queued(struct qd_service *svc) {
    for (size_t i = 0; i < svc->n_jobs; i++)
        if (svc->jobs[i]->state == QD_JOB_QUEUED) return svc->jobs[i];
    return NULL;
}

/* A GPU worker's device: opened when the worker starts, and again before a job whenever an
 * earlier error left it unusable (or it never opened), so one failed job does not take the
 * worker with it. Returns the reason the device cannot be used now, or QD_OK. */
static qd_err worker_device(qd_job_device *dev, int cuda_index, qd_error *err) {
    if (cuda_index < 0) return QD_OK;
    if (dev->kind != QD_BACKEND_CUDA) {
        char name[32];
        snprintf(name, sizeof name, "cuda:%d", cuda_index);
        if (qd_job_device_open(name, dev, NULL, err) == QD_OK) return QD_OK;
        dev->kind = QD_BACKEND_CUDA; /* not open: the next job tries again */
        dev->index = cuda_index;
        snprintf(dev->name, sizeof dev->name, "cuda:%d", cuda_index);
        return err->code;
    }
    return qd_job_device_reopen(dev, err);
}

static void *worker_main(void *arg) {
    struct worker_arg *wa = arg;
    struct qd_service *svc = wa->svc;
    qd_job_device dev = {0};
    qd_error derr = {0};
    qd_err dev_rc = QD_OK;
    if (wa->cuda_index >= 0) {
        dev_rc = worker_device(&dev, wa->cuda_index, &derr);
        if (dev_rc != QD_OK) fprintf(stderr, "quantd: worker on cuda:%d: %s\n",
                                     wa->cuda_index, qd_error_text(&derr));
    } else {
        (void)qd_job_device_open("cpu", &dev, NULL, &derr);
    }
    lock(svc);
    for (;;) {
        if (svc->closing) break;
        struct job *j = svc->draining ? NULL : next_queued(svc);
        if (!j) {
            if (svc->n_pending) { /* notify subscribers before sleeping */
                unlock(svc);
                lock(svc);
                continue;
            }
            pthread_cond_wait(&svc->work_cv, &svc->mu);
            continue;
        }
        /* QUEUED -> RUNNING */
        qd_error serr = {0};
        if (qd_store_job_set_state(svc->store, j->id, QD_STORE_JOB_RUNNING, NULL, NULL,
                                   &serr) != QD_OK) {
            /* The row cannot move (disk full?): fail it in memory so the queue moves on. */
            j->state = QD_JOB_FAILED;
            j->finished_ms = now_unix_ms();
            copy_text(j->error_code, sizeof j->error_code, qd_err_name(serr.code));
            copy_text(j->error_message, sizeof j->error_message, serr.msg);
            j->finish_order = ++svc->finish_counter;
            count_finished(svc, j);
            emit_done(svc, j);
            update_queue_events(svc);
            continue;
        }
        if (svc->n_running == 0 && svc->threads_wanted != svc->threads_now) {
            qd_cpu_set_threads(svc->threads_wanted);
            svc->threads_now = svc->threads_wanted;
        }
        svc->n_running++;
        j->state = QD_JOB_RUNNING;
        j->started_ms = now_unix_ms();
        j->progress.fraction = 0;
        copy_text(j->device, sizeof j->device, dev.name[0] ? dev.name : "cpu");
        update_queue_events(svc);
        unlock(svc);

        char artifact_id[QD_STORE_ID_LEN + 1] = "";
        qd_error jerr = {0};
        qd_err rc;
        int64_t busy_from = qd_service_now_mono_ms();
        if (wa->cuda_index >= 0 && (dev_rc = worker_device(&dev, wa->cuda_index, &derr)))
            rc = qd_error_set(&jerr, dev_rc, "%s: %s", dev.name, qd_error_text(&derr));
        else
            rc = run_job(svc, j, &dev, artifact_id, &jerr);

        lock(svc);
        svc->stats.worker_busy_s[wa->index] +=
            (double)(qd_service_now_mono_ms() - busy_from) / 1000.0;
        int why = atomic_load(&j->cancel);
        if (rc == QD_OK) {
            finish_job(svc, j, QD_JOB_SUCCEEDED, "", "", artifact_id);
        } else if (rc == QD_ERR_CANCELLED && why == CANCEL_DRAIN) {
            /* Stopped by a drain: back in the queue for the next start, not failed. */
            qd_error rerr = {0};
            if (qd_store_job_requeue(svc->store, j->id, &rerr) == QD_OK) {
                j->state = QD_JOB_QUEUED;
                j->stage = QD_STAGE_NONE;
                atomic_store(&j->cancel, 0);
                j->started_ms = 0;
                j->device[0] = '\0';
                j->progress = (qd_job_progress_info){0};
                j->queued_reported = UINT32_MAX;
                update_queue_events(svc);
            } else {
                finish_job(svc, j, QD_JOB_FAILED, qd_err_name(rerr.code), rerr.msg, "");
            }
        } else if (rc == QD_ERR_CANCELLED && why == CANCEL_USER) {
            finish_job(svc, j, QD_JOB_CANCELLED, qd_err_name(QD_ERR_CANCELLED),
                       "cancelled by CancelJob", "");
        } else {
            finish_job(svc, j, QD_JOB_FAILED, qd_err_name(rc), qd_error_text(&jerr), "");
        }
        svc->n_running--;
        pthread_cond_broadcast(&svc->idle_cv);
    }
    unlock(svc);
    qd_job_device_close(&dev);
    return NULL;
}

/* ---- jobs: get, list, cancel --------------------------------------------------------------- */

qd_err qd_service_job_get(struct qd_service *svc, const qd_caller *who, const char *job_id,
                          qd_job_snapshot *ret, qd_error *err) {
    qd_err rc = check_job_id(job_id, err);
    if (rc != QD_OK) return rc;
    lock(svc);
    rc = sees_job(svc, who, job_id) ? snapshot_by_id(svc, job_id, ret, err)
                                    : job_not_found(job_id, err);
    unlock(svc);
    return rc;
}

qd_err qd_service_job_list(struct qd_service *svc, const qd_caller *who,
                           const qd_job_state *states, size_t n_states, const char *model_digest,
                           const char *page_after, size_t limit,
                           qd_job_snapshot **ret_jobs, size_t *ret_n, bool *ret_more,
                           qd_error *err) {
    unsigned mask = 0;
    for (size_t i = 0; i < n_states; i++) {
        if (states[i] < QD_JOB_QUEUED || states[i] > QD_JOB_CANCELLED)
            return qd_error_set(err, QD_ERR_INVALID_ARG, "states[%zu]: %d is not a job state",
                                i, (int)states[i]);
        mask |= 1u << to_store_state(states[i]);
    }
    char q[QD_YAML_EXCERPT_BUF];
    if (model_digest && *model_digest && !is_hex64(model_digest))
        return qd_error_set(err, QD_ERR_INVALID_ARG, "model_digest '%s': not 64 lowercase "
                            "hex chars", quoted(model_digest, q));
    if (page_after && *page_after) {
        qd_err rc = check_job_id(page_after, err);
        if (rc != QD_OK) {
            qd_error_prefix(err, "page token: ");
            return rc;
        }
    }
    if (limit == 0) limit = LIST_DEFAULT;
    if (limit > LIST_MAX) limit = LIST_MAX;
    struct qd_store_job *rows = NULL;
    size_t n = 0;
    bool more = false;
    lock(svc);
    qd_err rc = qd_store_job_query_owned(svc->store, sees_all(who) ? NULL : owner_of(who), mask,
                                         model_digest && *model_digest ? model_digest : NULL,
                                         page_after && *page_after ? page_after : NULL, limit,
                                         &rows, &n, &more, err);
    qd_job_snapshot *out = NULL;
    if (rc == QD_OK && n && !(out = calloc(n, sizeof *out)))
        rc = qd_error_set(err, QD_ERR_NOMEM, "list jobs: out of memory");
    size_t done = 0;
    for (; rc == QD_OK && done < n; done++) {
        const struct job *j = find_job(svc, rows[done].id);
        rc = j ? snapshot_mem(svc, j, &out[done], err)
               : snapshot_row(svc, &rows[done], &out[done], err);
    }
    unlock(svc);
    free(rows);
    if (rc != QD_OK) {
        for (size_t i = 0; i < done; i++) qd_job_snapshot_free(&out[i]);
        free(out);
        return rc;
    }
    *ret_jobs = out;
    *ret_n = n;
    if (ret_more) *ret_more = more;
    return QD_OK;
}

qd_err qd_service_job_cancel(struct qd_service *svc, const qd_caller *who, const char *job_id,
                             qd_job_snapshot *ret, qd_error *err) {
    qd_err rc = check_job_id(job_id, err);
    if (rc != QD_OK) return rc;
    lock(svc);
    if (!owns(svc, who, QD_STORE_OWN_JOB, job_id)) {
        rc = owns(svc, who, QD_STORE_OWN_JOB_JOINED, job_id)
                 ? qd_error_set(err, QD_ERR_PERMISSION, "job %s: joined, not submitted, by this "
                                "caller; only its submitter or an admin may cancel it", job_id)
                 : job_not_found(job_id, err);
        unlock(svc);
        return rc;
    }
    struct job *j = find_job(svc, job_id);
    struct qd_store_job row;
    if (!j) {
        /* Not in memory: finished long ago, or unknown. */
        rc = qd_store_job_get(svc->store, job_id, &row, err);
        qd_job_state st = rc == QD_OK ? from_store_state(row.state) : QD_JOB_UNSPECIFIED;
        if (rc == QD_OK && st != QD_JOB_CANCELLED)
            rc = qd_error_set(err, QD_ERR_PRECONDITION, "job %s: already %s; only queued or "
                              "running jobs can be cancelled", job_id,
                              qd_store_job_state_name(row.state));
        if (rc == QD_OK && ret) rc = snapshot_row(svc, &row, ret, err);
        unlock(svc);
        return rc;
    }
    switch (j->state) {
    case QD_JOB_QUEUED:
        atomic_store(&j->cancel, CANCEL_USER);
        j->cancel_requested = true;
        finish_job(svc, j, QD_JOB_CANCELLED, qd_err_name(QD_ERR_CANCELLED),
                   "cancelled by CancelJob while queued", "");
        j = find_job(svc, job_id); /* finish_job may have dropped it from memory */
        break;
    case QD_JOB_RUNNING:
        atomic_store(&j->cancel, CANCEL_USER);
        j->cancel_requested = true;
        break;
    case QD_JOB_CANCELLED:
        break; /* asked twice: the answer is the same (quantd.proto's CancelJob) */
    default:
        rc = qd_error_set(err, QD_ERR_PRECONDITION, "job %s: already %s; only queued or "
                          "running jobs can be cancelled", job_id,
                          j->state == QD_JOB_SUCCEEDED ? "succeeded" : "failed");
        break;
    }
    if (rc == QD_OK && ret) rc = snapshot_by_id(svc, job_id, ret, err);
    unlock(svc);
    return rc;
}

/* ---- events: watch and subscribe ----------------------------------------------------------- */

qd_err qd_service_watch_next(struct qd_service *svc, const qd_caller *who, const char *job_id,
                             uint64_t after_seq, int64_t timeout_ms, qd_job_event *ret,
                             qd_error *err) {
    qd_err rc = check_job_id(job_id, err);
    if (rc != QD_OK) return rc;
    int64_t deadline = qd_service_now_mono_ms() + (timeout_ms > 0 ? timeout_ms : 0);
    lock(svc);
    if (!sees_job(svc, who, job_id)) {
        rc = job_not_found(job_id, err);
        unlock(svc);
        return rc;
    }
    svc->n_waiters++;
    for (;;) {
        if (svc->closing) {
            rc = qd_error_set(err, QD_ERR_UNAVAILABLE, "the server is shutting down");
            break;
        }
        const struct job *j = find_job(svc, job_id);
        if (!j) {
            /* Finished long ago (its events are gone), or unknown: a DONE made from the row,
             * numbered after what the watcher saw. */
            struct qd_store_job row;
            rc = qd_store_job_get(svc->store, job_id, &row, err);
            if (rc == QD_OK && !terminal(from_store_state(row.state)))
                rc = qd_error_set(err, QD_ERR_INTERNAL, "job %s: %s but not in memory", job_id,
                                  qd_store_job_state_name(row.state));
            if (rc == QD_OK) {
                memset(ret, 0, sizeof *ret);
                ret->seq = after_seq + 1;
                ret->time_ms = row.finished_ms;
                ret->kind = QD_EVENT_DONE;
                ret->done_state = from_store_state(row.state);
                ret->progress.fraction = ret->done_state == QD_JOB_SUCCEEDED ? 1.0 : 0.0;
                copy_text(ret->error_code, sizeof ret->error_code, row.error_code);
                copy_text(ret->error_message, sizeof ret->error_message, row.error);
                copy_text(ret->artifact_id, sizeof ret->artifact_id, row.artifact_id);
            }
            break;
        }
        if (after_seq < j->n_events) {
            *ret = j->events[after_seq];
            break;
        }
        if (terminal(j->state) && j->n_events > 0 &&
            j->events[j->n_events - 1].kind == QD_EVENT_DONE) {
            /* Nothing follows DONE; asked past it (a watcher whose seq came from before a
             * restart), the outcome is what it needs: DONE again. */
            *ret = j->events[j->n_events - 1];
            break;
        }
        int64_t now = qd_service_now_mono_ms();
        if (now >= deadline) {
            rc = qd_error_set(err, QD_ERR_DEADLINE, "job %s: no event after seq %" PRIu64
                              " within %" PRId64 " ms", job_id, after_seq, timeout_ms);
            break;
        }
        struct timespec ts;
        mono_deadline(&ts, deadline);
        pthread_cond_timedwait(&svc->event_cv, &svc->mu, &ts);
    }
    svc->n_waiters--;
    if (svc->closing) pthread_cond_broadcast(&svc->idle_cv);
    unlock(svc);
    return rc;
}

struct qd_subscription *qd_service_subscribe(struct qd_service *svc, const char *job_id,
                                             void (*fn)(void *ctx), void *ctx, qd_error *err) {
    if (check_job_id(job_id, err) != QD_OK) return NULL;
    if (!fn) {
        qd_error_set(err, QD_ERR_INVALID_ARG, "subscribe: no function");
        return NULL;
    }
    struct qd_subscription *s = calloc(1, sizeof *s);
    if (!s) {
        qd_error_set(err, QD_ERR_NOMEM, "subscribe: out of memory");
        return NULL;
    }
    copy_text(s->job_id, sizeof s->job_id, job_id);
    s->fn = fn;
    s->ctx = ctx;
    pthread_mutex_lock(&svc->sub_mu);
    s->next = svc->subs;
    svc->subs = s;
    pthread_mutex_unlock(&svc->sub_mu);
    return s;
}

void qd_service_unsubscribe(struct qd_service *svc, struct qd_subscription *sub) {
    if (!sub) return;
    /* Notifications run under sub_mu: once it is ours, fn is not running. */
    pthread_mutex_lock(&svc->sub_mu);
    for (struct qd_subscription **p = &svc->subs; *p; p = &(*p)->next)
        if (*p == sub) {
            *p = sub->next;
            break;
        }
    pthread_mutex_unlock(&svc->sub_mu);
    free(sub);
}

/* ---- server information -------------------------------------------------------------------- */

qd_err qd_service_info_get(struct qd_service *svc, qd_service_info *ret, qd_error *err) {
    qd_service_info in;
    memset(&in, 0, sizeof in);
    copy_text(in.version, sizeof in.version, QD_VERSION);
    snprintf(in.engine_version, sizeof in.engine_version, "%d", QD_NUMERICS_VERSION);
    struct qd_store_artifact *arts = NULL;
    size_t n_arts = 0;
    lock(svc);
    in.n_workers = svc->n_workers;
    in.n_devices = svc->n_devices;
    memcpy(in.devices, svc->devices, sizeof in.devices);
    in.cache_limit = svc->cache_max;
    in.max_chunk_bytes = svc->chunk_bytes;
    in.max_message_bytes = svc->max_message_bytes;
    in.max_manifest_files = MAX_MANIFEST_FILES;
    in.max_bundle_bytes = svc->max_upload_bytes;
    in.max_queued_jobs = (uint32_t)svc->max_queued;
    in.n_jobs_queued = (int)n_in_state(svc, QD_JOB_QUEUED);
    in.n_jobs_running = (int)n_in_state(svc, QD_JOB_RUNNING);
    copy_text(in.default_calibration_digest, sizeof in.default_calibration_digest,
              svc->calib_default_digest);
    qd_err rc = qd_store_artifact_total(svc->store, &in.cache_bytes, err);
    if (rc == QD_OK) rc = qd_store_artifact_list(svc->store, &arts, &n_arts, err);
    unlock(svc);
    free(arts);
    in.n_artifacts = (int)n_arts;
    if (rc == QD_OK) rc = qd_store_blob_total(svc->store, &in.blob_bytes, err);
    if (rc == QD_OK) *ret = in;
    return rc;
}

void qd_service_stats_get(struct qd_service *svc, qd_service_stats *ret) {
    uint64_t cache_bytes = 0, blob_bytes = 0;
    struct qd_store_artifact *arts = NULL;
    size_t n_arts = 0;
    qd_error e = {0};
    lock(svc);
    *ret = svc->stats;
    ret->n_jobs_queued = (int)n_in_state(svc, QD_JOB_QUEUED);
    ret->n_jobs_running = (int)n_in_state(svc, QD_JOB_RUNNING);
    (void)qd_store_artifact_total(svc->store, &cache_bytes, &e);
    (void)qd_store_artifact_list(svc->store, &arts, &n_arts, &e);
    unlock(svc);
    free(arts);
    (void)qd_store_blob_total(svc->store, &blob_bytes, &e);
    ret->n_artifacts = (int)n_arts;
    ret->cache_bytes = cache_bytes;
    ret->blob_bytes = blob_bytes;
}

void qd_service_count_bytes_out(struct qd_service *svc, uint64_t n) {
    lock(svc);
    svc->stats.bytes_out += n;
    unlock(svc);
}

/* ---- lifecycle ----------------------------------------------------------------------------- */

/* The devices line of the info and the workers: workers.cpu CPU workers and, for `auto`,
 * one GPU worker per CUDA device found, for `cuda:N` one on device N when it is found. A
 * config whose GPUs are all missing still gets a CPU worker, and says so. Fills
 * svc->worker_args (NULL on no memory) and returns the number of workers. */
static int plan_devices(struct qd_service *svc, const qd_config *cfg) {
    bool want_cpu = false, want_all_gpus = false;
    for (size_t i = 0; i < cfg->n_devices; i++) {
        if (strcmp(cfg->devices[i], "cpu") == 0) want_cpu = true;
        else if (strcmp(cfg->devices[i], "auto") == 0) want_cpu = want_all_gpus = true;
    }
    qd_device_info found[8];
    const char *note = NULL;
    int n_found = qd_devices_list(found, 8, &note);
    int gpus[8], n_gpus = 0, n_wanted_gpus = 0;
    for (size_t i = 0; i < cfg->n_devices; i++)
        n_wanted_gpus += strncmp(cfg->devices[i], "cuda:", 5) == 0;
    for (int i = 0; i < n_found && n_gpus < 8; i++) {
        if (found[i].kind != QD_BACKEND_CUDA) continue;
        char name[32];
        snprintf(name, sizeof name, "cuda:%d", found[i].index);
        bool want = want_all_gpus;
        for (size_t d = 0; d < cfg->n_devices && !want; d++)
            want = strcmp(cfg->devices[d], name) == 0;
        if (want) gpus[n_gpus++] = i;
    }
    int n_cpu = want_cpu ? (int)cfg->workers.cpu : 0;
    bool fallback = false;
    if (n_cpu == 0 && n_gpus == 0) {
        fallback = true;
        n_cpu = 1;
    }
    svc->n_devices = 0;
    if (n_cpu > 0)
        snprintf(svc->devices[svc->n_devices++], sizeof svc->devices[0], "cpu (%d threads%s)",
                 qd_cpu_threads(), fallback ? "; jobs fall back to the CPU: no GPU worker" : "");
    for (int i = 0; i < n_gpus && svc->n_devices < 8; i++)
        snprintf(svc->devices[svc->n_devices++], sizeof svc->devices[0], "cuda:%d %.40s",
                 found[gpus[i]].index, found[gpus[i]].name);
    if ((want_all_gpus || n_wanted_gpus > 0) && n_gpus == 0 && svc->n_devices < 8 && !want_cpu)
        snprintf(svc->devices[svc->n_devices++], sizeof svc->devices[0],
                 "no GPU found: %.140s", note ? note : "CUDA not built in");
    svc->worker_args = calloc((size_t)(n_cpu + n_gpus), sizeof *svc->worker_args);
    if (!svc->worker_args) return 0;
    for (int i = 0; i < n_cpu + n_gpus; i++) {
        svc->worker_args[i].svc = svc;
        svc->worker_args[i].cuda_index = i < n_cpu ? -1 : found[gpus[i - n_cpu]].index;
        /* the counters keep 16 workers; more share the last slot */
        int k = i < 15 ? i : 15;
        svc->worker_args[i].index = k;
        if (i < n_cpu) snprintf(svc->stats.worker_name[k], sizeof svc->stats.worker_name[k],
                                i < 15 ? "cpu%d" : "cpu%d+", i);
        else snprintf(svc->stats.worker_name[k], sizeof svc->stats.worker_name[k], "cuda:%d",
                      svc->worker_args[i].cuda_index);
        svc->stats.n_workers = k + 1;
    }
    return n_cpu + n_gpus;
}

/* The digest of the configured default calibration file (hashes the file: no lock). */
static qd_err default_calibration(const char *path, char digest[QD_STORE_HEX_LEN + 1],
                                  qd_error *err) {
    digest[0] = '\0';
    if (!path) return QD_OK;
    qd_spec probe = {0};
    probe.calibration.path = (char *)path;
    qd_err rc = qd_spec_hash_calibration(&probe, err);
    if (rc != QD_OK) {
        qd_error_prefix(err, "calibration.default: ");
        return rc;
    }
    copy_text(digest, QD_STORE_HEX_LEN + 1, probe.calibration.digest);
    return QD_OK;
}

static void apply_reloadable(struct qd_service *svc, const qd_config *cfg) {
    svc->chunk_bytes = cfg->limits.chunk_bytes;
    svc->max_upload_bytes = cfg->limits.max_upload_bytes;
    svc->max_queued = cfg->limits.max_queued_jobs;
    svc->cache_max = cfg->cache.max_bytes;
    svc->threads_wanted = (int)cfg->workers.threads;
}

/* Load every QUEUED row into memory (at open, mu not yet shared). A row whose spec cannot be
 * rebuilt still loads, to fail with the reason when a worker takes it. */
static qd_err load_queue(struct qd_service *svc, qd_error *err) {
    struct qd_store_job *rows = NULL;
    size_t n = 0;
    qd_err rc = qd_store_job_list(svc->store, QD_STORE_JOB_QUEUED, &rows, &n, err);
    for (size_t i = 0; rc == QD_OK && i < n; i++) {
        struct qd_store_job_text t = {0};
        rc = qd_store_job_text_get(svc->store, rows[i].id, &t, err);
        if (rc != QD_OK) break;
        qd_spec spec = {0};
        qd_error lerr = {0};
        qd_err lrc;
        char digest[QD_SPEC_DIGEST_HEX] = "";
        if (!t.spec_json[0])
            lrc = qd_error_set(&lerr, QD_ERR_UNSUPPORTED, "queued by a quantd that did not "
                               "record specs; submit the job again");
        else lrc = spec_from_json(t.spec_json, &spec, &lerr);
        if (lrc == QD_OK) lrc = qd_spec_digest(&spec, digest, &lerr);
        if (lrc == QD_OK && strcmp(digest, rows[i].key.spec_digest) != 0)
            lrc = qd_error_set(&lerr, QD_ERR_CORRUPT, "the recorded spec gives digest %s, not "
                               "the job's %s", digest, rows[i].key.spec_digest);
        struct job *j = NULL;
        rc = new_job(svc, &rows[i], lrc == QD_OK ? &spec : NULL, t.spec_json, t.model_path,
                     t.label, &j, err);
        if (rc == QD_OK && lrc != QD_OK) {
            j->load_code = lrc;
            copy_text(j->load_error, sizeof j->load_error, lerr.msg);
        }
        qd_spec_free(&spec);
        qd_store_job_text_free(&t);
    }
    free(rows);
    if (rc == QD_OK) update_queue_events(svc);
    return rc;
}

static void free_service(struct qd_service *svc) {
    for (size_t i = 0; i < svc->n_jobs; i++) job_free(svc->jobs[i]);
    free(svc->jobs);
    for (size_t i = 0; i < svc->n_roots; i++) free(svc->roots[i]);
    free(svc->roots);
    while (svc->subs) {
        struct qd_subscription *s = svc->subs;
        svc->subs = s->next;
        free(s);
    }
    free(svc->claims);
    free(svc->pending);
    free(svc->workers);
    free(svc->worker_args);
    free(svc->calib_default);
    free(svc->data_dir);
    qd_store_close(svc->store);
    pthread_cond_destroy(&svc->work_cv);
    pthread_cond_destroy(&svc->event_cv);
    pthread_cond_destroy(&svc->idle_cv);
    pthread_mutex_destroy(&svc->mu);
    pthread_mutex_destroy(&svc->sub_mu);
    free(svc);
}

static void mono_cond_init(pthread_cond_t *c) {
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(c, &a);
    pthread_condattr_destroy(&a);
}

qd_err qd_service_open(const qd_config *cfg, struct qd_service **ret, qd_error *err) {
    if (!cfg || !cfg->data_dir || cfg->data_dir[0] != '/')
        return qd_error_set(err, QD_ERR_CONFIG, "data_dir: not set, or not absolute");
    struct qd_service *svc = calloc(1, sizeof *svc);
    if (!svc) return qd_error_set(err, QD_ERR_NOMEM, "service: out of memory");
    pthread_mutex_init(&svc->mu, NULL);
    pthread_mutex_init(&svc->sub_mu, NULL);
    pthread_cond_init(&svc->work_cv, NULL);
    mono_cond_init(&svc->event_cv);
    mono_cond_init(&svc->idle_cv);
    qd_err rc = QD_OK;
    bool oom = false;
    svc->data_dir = dup_or_null(cfg->data_dir, &oom);
    svc->calib_default = dup_or_null(cfg->calibration.default_path, &oom);
    if (cfg->n_model_roots && !(svc->roots = calloc(cfg->n_model_roots, sizeof *svc->roots)))
        oom = true;
    for (size_t i = 0; !oom && i < cfg->n_model_roots; i++, svc->n_roots++)
        svc->roots[i] = dup_or_null(cfg->model_roots[i], &oom);
    if (oom) rc = qd_error_set(err, QD_ERR_NOMEM, "service: out of memory");
    svc->max_message_bytes = cfg->limits.max_message_bytes;
    apply_reloadable(svc, cfg);
    if (rc == QD_OK) rc = default_calibration(svc->calib_default, svc->calib_default_digest, err);
    if (rc == QD_OK) rc = qd_store_open(svc->data_dir, &svc->store, err);
    if (rc == QD_OK) rc = load_queue(svc, err);
    if (rc != QD_OK) {
        free_service(svc);
        return rc;
    }
    /* Process-wide: set once here, and on reload only while no job runs. */
    qd_cpu_set_threads(svc->threads_wanted);
    svc->threads_now = svc->threads_wanted;
    svc->n_workers = plan_devices(svc, cfg);
    svc->workers = svc->worker_args ? calloc((size_t)svc->n_workers, sizeof *svc->workers)
                                    : NULL;
    if (!svc->workers) {
        free_service(svc);
        return qd_error_set(err, QD_ERR_NOMEM, "service: out of memory");
    }
    for (int i = 0; i < svc->n_workers; i++) {
        int e = pthread_create(&svc->workers[i], NULL, worker_main, &svc->worker_args[i]);
        if (e != 0) {
            rc = qd_error_set(err, QD_ERR_INTERNAL, "cannot start worker %d: %s", i,
                              strerror(e));
            break;
        }
        svc->n_started++;
    }
    if (rc != QD_OK) {
        qd_service_close(svc);
        return rc;
    }
    *ret = svc;
    return QD_OK;
}

qd_err qd_service_reload(struct qd_service *svc, const qd_config *cfg, qd_error *err) {
    if (!cfg) return qd_error_set(err, QD_ERR_INVALID_ARG, "reload: no config");
    lock(svc);
    apply_reloadable(svc, cfg);
    if (svc->n_running == 0 && svc->threads_wanted != svc->threads_now) {
        qd_cpu_set_threads(svc->threads_wanted);
        svc->threads_now = svc->threads_wanted;
    }
    /* A smaller cache applies now, not at the next publish. */
    qd_err rc = QD_OK;
    if (svc->cache_max) rc = qd_store_evict(svc->store, svc->cache_max, NULL, NULL, err);
    unlock(svc);
    return rc;
}

void qd_service_drain(struct qd_service *svc, int64_t deadline_ms) {
    if (!svc) return;
    lock(svc);
    svc->draining = true;
    pthread_cond_broadcast(&svc->work_cv);
    while (svc->n_running > 0 && qd_service_now_mono_ms() < deadline_ms) {
        struct timespec ts;
        mono_deadline(&ts, deadline_ms);
        pthread_cond_timedwait(&svc->idle_cv, &svc->mu, &ts);
    }
    /* Past the deadline: stop what still runs at its next layer; it goes back to the queue. */
    for (size_t i = 0; i < svc->n_jobs; i++)
        if (svc->jobs[i]->state == QD_JOB_RUNNING) {
            int expected = 0;
            atomic_compare_exchange_strong(&svc->jobs[i]->cancel, &expected, CANCEL_DRAIN);
        }
    while (svc->n_running > 0) pthread_cond_wait(&svc->idle_cv, &svc->mu);
    unlock(svc);
}

void qd_service_close(struct qd_service *svc) {
    if (!svc) return;
    qd_service_drain(svc, qd_service_now_mono_ms());
    lock(svc);
    svc->closing = true;
    pthread_cond_broadcast(&svc->work_cv);
    pthread_cond_broadcast(&svc->event_cv);
    while (svc->n_waiters > 0) pthread_cond_wait(&svc->idle_cv, &svc->mu);
    unlock(svc);
    for (int i = 0; i < svc->n_started; i++) pthread_join(svc->workers[i], NULL);
    free_service(svc);
}
