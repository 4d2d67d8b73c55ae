/*
 * cmd_jobs.c - the small subcommands, one request each: `status`, `watch`, `cancel` (jobs),
 * `ls` (jobs or artifacts, every page), `rm` (an artifact) and `info` (the server).
 *
 * Each prints a human form on stdout, or with --json the response message itself as one JSON
 * object (ctl_output.c's generic form), so scripts read exactly the proto's fields.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "health.pb-c.h"
#include "quantctl.h"

#define LS_PAGE 100

/* One positional argument (a job or artifact id) and no options. */
static int one_id(const char *cmd, int argc, char **argv, const char **ret) {
    const char *id = NULL;
    for (int i = 1; i < argc; i++) {
        if (argv[i][0] == '-' && argv[i][1])
            return qd_ctl_usage_error(cmd, "unknown option '%s'", argv[i]);
        if (id) return qd_ctl_usage_error(cmd, "unexpected argument '%s'", argv[i]);
        id = argv[i];
    }
    if (!id || !id[0]) return qd_ctl_usage_error(cmd, "no id given");
    *ret = id;
    return QD_CTL_EXIT_OK;
}

/* Connect, make one unary call, close. *ret is the response (caller frees). */
static int call_once(const qd_ctl_opts *o, qd_ctl_method m, const ProtobufCMessage *req,
                     const ProtobufCMessageDescriptor *d, ProtobufCMessage **ret) {
    struct qd_ctl_conn *c = NULL;
    int status = qd_ctl_open(o, &c);
    if (status != QD_CTL_EXIT_OK) return status;
    qd_ctl_error err = {0};
    if (qd_ctl_unary(c, m, req, d, ret, &err) != QD_OK) status = qd_ctl_fail(&err);
    qd_ctl_close(c);
    return status;
}

static void format_time(int64_t ms, char *buf, size_t cap) {
    if (ms <= 0) {
        snprintf(buf, cap, "-");
        return;
    }
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    if (!localtime_r(&t, &tm) || strftime(buf, cap, "%Y-%m-%d %H:%M:%S", &tm) == 0)
        snprintf(buf, cap, "%" PRId64, ms);
}

static bool job_ended(int state) {
    return state == QUANTD__V1__JOB_STATE__JOB_STATE_FAILED ||
           state == QUANTD__V1__JOB_STATE__JOB_STATE_CANCELLED;
}

/* "running: quantize, layer 2/5, 40%" / "queued, 3 ahead" / "succeeded". */
static void job_state_text(const Quantd__V1__Job *j, char *buf, size_t cap) {
    const Quantd__V1__Progress *p = j->progress;
    if (j->state == QUANTD__V1__JOB_STATE__JOB_STATE_QUEUED)
        snprintf(buf, cap, "queued, %u ahead", j->queue_position);
    else if (j->state == QUANTD__V1__JOB_STATE__JOB_STATE_RUNNING && p && p->layer_count)
        snprintf(buf, cap, "running: %s, layer %u/%u, %.0f%%%s", qd_ctl_stage_word(j->stage),
                 p->layer, p->layer_count, 100.0 * p->fraction,
                 j->cancel_requested ? ", cancel requested" : "");
    else if (j->state == QUANTD__V1__JOB_STATE__JOB_STATE_RUNNING)
        snprintf(buf, cap, "running: %s%s", qd_ctl_stage_word(j->stage),
                 j->cancel_requested ? ", cancel requested" : "");
    else
        snprintf(buf, cap, "%s", qd_ctl_job_state_word(j->state));
}

static void print_job(const Quantd__V1__Job *j) {
    char text[160], t1[32], t2[32], t3[32];
    job_state_text(j, text, sizeof text);
    printf("job:       %s\n", j->id);
    printf("state:     %s\n", text);
    if (j->label && j->label[0]) printf("label:     %s\n", j->label);
    if (j->model_path && j->model_path[0])
        printf("model:     %s (%s)\n", j->model_path, j->model_digest);
    else
        printf("model:     %s\n", j->model_digest);
    if (j->spec) {
        const Quantd__V1__QuantSpec *s = j->spec;
        printf("spec:      %s, format %s, %u bits, group size %d  (%s)\n",
               qd_ctl_method_word(s->method), qd_ctl_format_word(s->format), s->bits,
               s->group_size, j->spec_digest);
    }
    if (j->device && j->device[0]) printf("device:    %s\n", j->device);
    format_time(j->created_ms, t1, sizeof t1);
    format_time(j->started_ms, t2, sizeof t2);
    format_time(j->finished_ms, t3, sizeof t3);
    printf("times:     created %s, started %s, finished %s\n", t1, t2, t3);
    if (j->cache_hit) printf("cache hit: answered from the cache, no job ran\n");
    if (j->artifact_id && j->artifact_id[0]) printf("artifact:  %s\n", j->artifact_id);
    if (j->error && ((j->error->code && j->error->code[0]) ||
                     (j->error->message && j->error->message[0])))
        printf("error:     %s: %s\n", j->error->code, j->error->message);
}

/* ---- status, watch, cancel ------------------------------------------------------------------ */

int qd_ctl_cmd_status(const qd_ctl_opts *o, int argc, char **argv) {
    if (qd_ctl_wants_help(argc, argv)) {
        printf("usage: quantctl status JOB\n\n"
               "Show a job: state, stage and progress, model, spec, times, artifact, error.\n"
               "Exit status 1 when the job failed or was cancelled.\n");
        return QD_CTL_EXIT_OK;
    }
    const char *id = NULL;
    int status = one_id("status", argc, argv, &id);
    if (status != QD_CTL_EXIT_OK) return status;
    Quantd__V1__GetJobRequest req = QUANTD__V1__GET_JOB_REQUEST__INIT;
    req.job_id = (char *)id;
    ProtobufCMessage *resp = NULL;
    status = call_once(o, QD_CTL_GET_JOB, &req.base, &quantd__v1__get_job_response__descriptor,
                       &resp);
    if (status != QD_CTL_EXIT_OK) return status;
    const Quantd__V1__Job *j = ((const Quantd__V1__GetJobResponse *)resp)->job;
    if (!j) {
        fprintf(stderr, "quantctl: GetJob: the answer holds no job\n");
        status = QD_CTL_EXIT_REFUSED;
    } else {
        if (o->json) qd_ctl_json_emit(qd_ctl_proto_json(&j->base));
        else print_job(j);
        if (job_ended(j->state)) status = QD_CTL_EXIT_FAILED;
    }
    protobuf_c_message_free_unpacked(resp, NULL);
    return status;
}

int qd_ctl_cmd_watch(const qd_ctl_opts *o, int argc, char **argv) {
    if (qd_ctl_wants_help(argc, argv)) {
        printf("usage: quantctl watch JOB [--after SEQ]\n\n"
               "Follow a job until it ends: each layer's error on stdout as it finishes,\n"
               "progress on stderr when it is a terminal. With --json every event is one JSON\n"
               "object on stdout. A stream the server ends before the job's last event is\n"
               "opened again after the last event seen.\n\n"
               "  --after SEQ   start after event SEQ (default 0: from the job's start)\n\n"
               "Exit status 0 when the job succeeded, 1 when it failed or was cancelled.\n");
        return QD_CTL_EXIT_OK;
    }
    const char *id = NULL, *v = NULL;
    uint64_t after = 0;
    for (int i = 1; i < argc; i++) {
        int r;
        if ((r = qd_ctl_opt("watch", argc, argv, &i, "--after", NULL, &v)) != 0) {
            qd_error e = {0};
            if (r < 0) return QD_CTL_EXIT_USAGE;
            if (qd_ctl_parse_u64("--after", v, 0, UINT64_MAX, &after, &e) != QD_OK)
                return qd_ctl_usage_error("watch", "%s", qd_error_text(&e));
        } else if (argv[i][0] == '-' && argv[i][1]) {
            return qd_ctl_usage_error("watch", "unknown option '%s'", argv[i]);
        } else if (!id) {
            id = argv[i];
        } else {
            return qd_ctl_usage_error("watch", "unexpected argument '%s'", argv[i]);
        }
    }
    if (!id || !id[0]) return qd_ctl_usage_error("watch", "no JOB given");
    struct qd_ctl_conn *c = NULL;
    int status = qd_ctl_open(o, &c);
    if (status != QD_CTL_EXIT_OK) return status;
    qd_ctl_error err = {0};
    qd_ctl_watch_result res;
    if (qd_ctl_watch_job(c, o, id, after, o->json, &res, &err) != QD_OK) {
        status = qd_ctl_fail(&err);
    } else {
        if (!o->json) {
            printf("job %s: %s", id, qd_ctl_job_state_word(res.state));
            if (res.artifact_id[0]) printf("; artifact %s", res.artifact_id);
            if (res.error_code[0] || res.error_message[0])
                printf(": %s: %s", res.error_code, res.error_message);
            printf("\n");
        }
        if (res.state != QUANTD__V1__JOB_STATE__JOB_STATE_SUCCEEDED) status = QD_CTL_EXIT_FAILED;
    }
    qd_ctl_watch_result_done(&res);
    qd_ctl_close(c);
    return status;
}

int qd_ctl_cmd_cancel(const qd_ctl_opts *o, int argc, char **argv) {
    if (qd_ctl_wants_help(argc, argv)) {
        printf("usage: quantctl cancel JOB\n\n"
               "Cancel a job. A queued job is cancelled at once; a running one stops at its\n"
               "next layer boundary (the job then shows \"cancel requested\"; `quantctl watch\n"
               "JOB` waits for the end). Cancelling a cancelled job is no error; a job that\n"
               "succeeded or failed cannot be cancelled (the server refuses: exit status 3).\n");
        return QD_CTL_EXIT_OK;
    }
    const char *id = NULL;
    int status = one_id("cancel", argc, argv, &id);
    if (status != QD_CTL_EXIT_OK) return status;
    Quantd__V1__CancelJobRequest req = QUANTD__V1__CANCEL_JOB_REQUEST__INIT;
    req.job_id = (char *)id;
    ProtobufCMessage *resp = NULL;
    status = call_once(o, QD_CTL_CANCEL_JOB, &req.base,
                       &quantd__v1__cancel_job_response__descriptor, &resp);
    if (status != QD_CTL_EXIT_OK) return status;
    const Quantd__V1__Job *j = ((const Quantd__V1__CancelJobResponse *)resp)->job;
    if (o->json) {
        qd_ctl_json_emit(j ? qd_ctl_proto_json(&j->base) : json_object());
    } else if (j) {
        char text[160];
        job_state_text(j, text, sizeof text);
        printf("job %s: %s\n", j->id, text);
    }
    protobuf_c_message_free_unpacked(resp, NULL);
    return status;
}

/* ---- ls ------------------------------------------------------------------------------------- */

static void ls_usage(FILE *out) {
    fprintf(out,
            "usage: quantctl ls [artifacts] [--model DIGEST] [--format F] [--limit N]\n"
            "       quantctl ls jobs [--state S]... [--model DIGEST] [--limit N]\n"
            "\n"
            "List the artifacts in the server's cache (most recently used first), or the jobs\n"
            "(newest first). Every page is fetched.\n"
            "\n"
            "  --model DIGEST  only those of this model\n"
            "  --format F      artifacts of this format only (awq, gptq, compressed-tensors,\n"
            "                  modelopt, dashinfer)\n"
            "  --state S       jobs in this state (queued, running, succeeded, failed,\n"
            "                  cancelled); repeat for several\n"
            "  --limit N       at most N entries\n"
            "\n"
            "With --json: one object, {\"artifacts\": [...]} or {\"jobs\": [...]}, with each\n"
            "entry as the proto's Artifact or Job.\n");
}

static int state_from_word(const char *w) {
    for (int s = 1; s <= 5; s++)
        if (strcmp(qd_ctl_job_state_word(s), w) == 0) return s;
    return 0;
}

typedef struct ls_opts {
    bool jobs;
    const char *model;
    int format;
    Quantd__V1__JobState states[8];
    size_t n_states;
    uint64_t limit;
} ls_opts;

static int ls_parse(int argc, char **argv, ls_opts *l) {
    bool kind_given = false;
    for (int i = 1; i < argc; i++) {
        const char *v = NULL;
        int r;
        if ((r = qd_ctl_opt("ls", argc, argv, &i, "--model", NULL, &v)) != 0) {
            if (r < 0) return QD_CTL_EXIT_USAGE;
            if (!qd_ctl_is_digest(v))
                return qd_ctl_usage_error("ls", "--model '%s': expected 64 lowercase hex digits",
                                          v);
            l->model = v;
        } else if ((r = qd_ctl_opt("ls", argc, argv, &i, "--format", NULL, &v)) != 0) {
            if (r < 0) return QD_CTL_EXIT_USAGE;
            qd_spec_format f = qd_spec_format_from_name(v);
            if (f == QD_SPEC_FORMAT_UNSET || f == QD_SPEC_FORMAT_NONE)
                return qd_ctl_usage_error("ls", "--format '%s': not an artifact format", v);
            l->format = (int)f;
        } else if ((r = qd_ctl_opt("ls", argc, argv, &i, "--state", NULL, &v)) != 0) {
            if (r < 0) return QD_CTL_EXIT_USAGE;
            int s = state_from_word(v);
            if (!s) return qd_ctl_usage_error("ls", "--state '%s': not a job state", v);
            if (l->n_states == sizeof l->states / sizeof l->states[0])
                return qd_ctl_usage_error("ls", "too many --state options");
            l->states[l->n_states++] = (Quantd__V1__JobState)s;
        } else if ((r = qd_ctl_opt("ls", argc, argv, &i, "--limit", NULL, &v)) != 0) {
            qd_error e = {0};
            if (r < 0) return QD_CTL_EXIT_USAGE;
            if (qd_ctl_parse_u64("--limit", v, 1, UINT32_MAX, &l->limit, &e) != QD_OK)
                return qd_ctl_usage_error("ls", "%s", qd_error_text(&e));
        } else if (argv[i][0] == '-' && argv[i][1]) {
            return qd_ctl_usage_error("ls", "unknown option '%s'", argv[i]);
        } else if (!kind_given && (strcmp(argv[i], "jobs") == 0 ||
                                   strcmp(argv[i], "artifacts") == 0)) {
            kind_given = true;
            l->jobs = argv[i][0] == 'j';
        } else {
            return qd_ctl_usage_error("ls", "unexpected argument '%s'", argv[i]);
        }
    }
    if (l->jobs && l->format) return qd_ctl_usage_error("ls", "--format lists artifacts only");
    if (!l->jobs && l->n_states) return qd_ctl_usage_error("ls", "--state lists jobs only");
    return QD_CTL_EXIT_OK;
}

/* One page. Returns the next page token (malloc'd, "" at the end) or NULL on failure. */
static char *ls_page(struct qd_ctl_conn *c, const ls_opts *l, const char *token, json_t *out,
                     uint64_t *n_listed, qd_ctl_error *err) {
    ProtobufCMessage *resp = NULL;
    uint32_t page = l->limit && l->limit - *n_listed < LS_PAGE ? (uint32_t)(l->limit - *n_listed)
                                                               : LS_PAGE;
    if (l->jobs) {
        Quantd__V1__ListJobsRequest req = QUANTD__V1__LIST_JOBS_REQUEST__INIT;
        req.n_states = l->n_states;
        req.states = (Quantd__V1__JobState *)l->states;
        req.model_digest = (char *)(l->model ? l->model : "");
        req.page_size = page;
        req.page_token = (char *)token;
        if (qd_ctl_unary(c, QD_CTL_LIST_JOBS, &req.base,
                         &quantd__v1__list_jobs_response__descriptor, &resp, err) != QD_OK)
            return NULL;
    } else {
        Quantd__V1__ListArtifactsRequest req = QUANTD__V1__LIST_ARTIFACTS_REQUEST__INIT;
        req.model_digest = (char *)(l->model ? l->model : "");
        req.format = (Quantd__V1__Format)l->format;
        req.page_size = page;
        req.page_token = (char *)token;
        if (qd_ctl_unary(c, QD_CTL_LIST_ARTIFACTS, &req.base,
                         &quantd__v1__list_artifacts_response__descriptor, &resp, err) != QD_OK)
            return NULL;
    }
    const char *next = "";
    if (l->jobs) {
        const Quantd__V1__ListJobsResponse *r = (const void *)resp;
        for (size_t i = 0; i < r->n_jobs && (!l->limit || *n_listed < l->limit);
             i++, (*n_listed)++) {
            const Quantd__V1__Job *j = r->jobs[i];
            if (out) {
                json_array_append_new(out, qd_ctl_proto_json(&j->base));
                continue;
            }
            char text[160];
            job_state_text(j, text, sizeof text);
            const Quantd__V1__QuantSpec *s = j->spec;
            printf("%-32s  %-32s  %-11s  %-18s  %.12s  %-32s  %s\n", j->id, text,
                   s ? qd_ctl_method_word(s->method) : "-", s ? qd_ctl_format_word(s->format) : "-",
                   j->model_digest ? j->model_digest : "", j->artifact_id[0] ? j->artifact_id : "-",
                   j->label ? j->label : "");
        }
        next = r->next_page_token ? r->next_page_token : "";
    } else {
        const Quantd__V1__ListArtifactsResponse *r = (const void *)resp;
        for (size_t i = 0; i < r->n_artifacts && (!l->limit || *n_listed < l->limit);
             i++, (*n_listed)++) {
            const Quantd__V1__Artifact *a = r->artifacts[i];
            if (out) {
                json_array_append_new(out, qd_ctl_proto_json(&a->base));
                continue;
            }
            char size[32], used[32];
            qd_ctl_format_bytes(a->total_bytes, size, sizeof size);
            format_time(a->last_used_ms, used, sizeof used);
            printf("%-32s  %-18s  %10s  %.12s  %.12s  %s\n", a->id, qd_ctl_format_word(a->format),
                   size, a->model_digest, a->spec_digest, used);
        }
        next = r->next_page_token ? r->next_page_token : "";
    }
    char *ret = strdup(l->limit && *n_listed >= l->limit ? "" : next);
    protobuf_c_message_free_unpacked(resp, NULL);
    if (!ret) qd_ctl_error_local(err, QD_ERR_NOMEM, "out of memory");
    return ret;
}

int qd_ctl_cmd_ls(const qd_ctl_opts *o, int argc, char **argv) {
    if (qd_ctl_wants_help(argc, argv)) {
        ls_usage(stdout);
        return QD_CTL_EXIT_OK;
    }
    ls_opts l = {0};
    int status = ls_parse(argc, argv, &l);
    if (status != QD_CTL_EXIT_OK) return status;
    struct qd_ctl_conn *c = NULL;
    status = qd_ctl_open(o, &c);
    if (status != QD_CTL_EXIT_OK) return status;
    json_t *arr = o->json ? json_array() : NULL;
    if (!o->json) {
        if (l.jobs)
            printf("%-32s  %-32s  %-11s  %-18s  %-12s  %-32s  %s\n", "JOB", "STATE", "METHOD",
                   "FORMAT", "MODEL", "ARTIFACT", "LABEL");
        else
            printf("%-32s  %-18s  %10s  %-12s  %-12s  %s\n", "ARTIFACT", "FORMAT", "SIZE", "MODEL",
                   "SPEC", "LAST USED");
    }
    qd_ctl_error err = {0};
    uint64_t n = 0;
    char *token = strdup("");
    /* Bounded: a server that keeps answering the same token would otherwise loop forever. */
    for (int pages = 0; token && pages < 100000; pages++) {
        char *next = ls_page(c, &l, token, arr, &n, &err);
        bool same = next && next[0] && strcmp(next, token) == 0;
        free(token);
        token = next;
        if (!token || !token[0] || same) break;
    }
    if (!token) {
        status = err.e.code != QD_OK ? qd_ctl_fail(&err) : QD_CTL_EXIT_FAILED;
    } else if (o->json) {
        json_t *j = json_object();
        if (j) json_object_set(j, l.jobs ? "jobs" : "artifacts", arr);
        qd_ctl_json_emit(j);
    }
    free(token);
    json_decref(arr);
    qd_ctl_close(c);
    return status;
}

/* ---- rm, info ------------------------------------------------------------------------------- */

int qd_ctl_cmd_rm(const qd_ctl_opts *o, int argc, char **argv) {
    if (qd_ctl_wants_help(argc, argv)) {
        printf("usage: quantctl rm ARTIFACT\n\n"
               "Delete an artifact from the server's cache. It is gone from listings and from\n"
               "the cache at once; its files go when the last open download ends. The next\n"
               "equal request runs a job again.\n");
        return QD_CTL_EXIT_OK;
    }
    const char *id = NULL;
    int status = one_id("rm", argc, argv, &id);
    if (status != QD_CTL_EXIT_OK) return status;
    Quantd__V1__DeleteArtifactRequest req = QUANTD__V1__DELETE_ARTIFACT_REQUEST__INIT;
    req.artifact_id = (char *)id;
    ProtobufCMessage *resp = NULL;
    status = call_once(o, QD_CTL_DELETE_ARTIFACT, &req.base,
                       &quantd__v1__delete_artifact_response__descriptor, &resp);
    if (status != QD_CTL_EXIT_OK) return status;
    protobuf_c_message_free_unpacked(resp, NULL);
    if (o->json) qd_ctl_json_emit(json_pack("{s:s, s:b}", "artifact_id", id, "deleted", 1));
    else printf("artifact %s: deleted\n", id);
    return QD_CTL_EXIT_OK;
}

static void print_info(const qd_ctl_opts *o, const Quantd__V1__GetServerInfoResponse *r) {
    char a[32], b[32], c[32];
    printf("server:    quantd %s (engine %s) at %s\n", r->version, r->engine_version, o->server);
    for (size_t i = 0; i < r->n_devices; i++) {
        const Quantd__V1__Device *d = r->devices[i];
        qd_ctl_format_bytes(d->memory_bytes, a, sizeof a);
        printf("device:    %s  %s  %s  %s\n", d->name, d->description, a,
               d->job_id && d->job_id[0] ? d->job_id : "idle");
    }
    for (size_t i = 0; i < r->n_methods; i++) {
        const Quantd__V1__MethodSupport *m = r->methods[i];
        printf("method:    %-12s formats", qd_ctl_method_word(m->method));
        for (size_t k = 0; k < m->n_formats; k++)
            printf("%s%s", k ? ", " : " ", qd_ctl_format_word(m->formats[k]));
        printf("; bits");
        for (size_t k = 0; k < m->n_bits; k++) printf("%s%u", k ? ", " : " ", m->bits[k]);
        printf("\n");
    }
    if (r->cache) {
        qd_ctl_format_bytes(r->cache->artifact_bytes, a, sizeof a);
        qd_ctl_format_bytes(r->cache->artifact_limit_bytes, b, sizeof b);
        qd_ctl_format_bytes(r->cache->blob_bytes, c, sizeof c);
        printf("cache:     %u artifacts, %s of %s; uploads %s\n", r->cache->artifact_count, a,
               r->cache->artifact_limit_bytes ? b : "unlimited", c);
    }
    printf("jobs:      %u queued, %u running\n", r->queued_jobs, r->running_jobs);
    if (r->limits) {
        qd_ctl_format_bytes(r->limits->max_chunk_bytes, a, sizeof a);
        qd_ctl_format_bytes(r->limits->max_bundle_bytes, b, sizeof b);
        printf("limits:    chunk %s, %u files per manifest, bundle %s, %u queued jobs\n", a,
               r->limits->max_manifest_files, b, r->limits->max_queued_jobs);
    }
    printf("calibration: %s\n", r->default_calibration_digest && r->default_calibration_digest[0]
                                    ? r->default_calibration_digest
                                    : "no default set");
}

int qd_ctl_cmd_info(const qd_ctl_opts *o, int argc, char **argv) {
    if (qd_ctl_wants_help(argc, argv)) {
        printf("usage: quantctl info\n\n"
               "The server's version and engine (numerics) version, its devices, the methods\n"
               "with the formats and bit widths each accepts, the cache's usage, the queue,\n"
               "its limits and its default calibration set.\n");
        return QD_CTL_EXIT_OK;
    }
    if (argc > 1) return qd_ctl_usage_error("info", "unexpected argument '%s'", argv[1]);
    Quantd__V1__GetServerInfoRequest req = QUANTD__V1__GET_SERVER_INFO_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    int status = call_once(o, QD_CTL_GET_SERVER_INFO, &req.base,
                           &quantd__v1__get_server_info_response__descriptor, &resp);
    if (status != QD_CTL_EXIT_OK) return status;
    if (o->json) qd_ctl_json_emit(qd_ctl_proto_json(resp));
    else print_info(o, (const Quantd__V1__GetServerInfoResponse *)resp);
    protobuf_c_message_free_unpacked(resp, NULL);
    return QD_CTL_EXIT_OK;
}

int qd_ctl_cmd_health(const qd_ctl_opts *o, int argc, char **argv) {
    if (qd_ctl_wants_help(argc, argv)) {
        printf("usage: quantctl health\n\n"
               "Ask the server's grpc.health.v1 service whether it serves (as load balancers\n"
               "and probes do; no token is needed). Prints SERVING or NOT_SERVING; exit\n"
               "status 0 only for SERVING.\n");
        return QD_CTL_EXIT_OK;
    }
    if (argc > 1) return qd_ctl_usage_error("health", "unexpected argument '%s'", argv[1]);
    Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    req.service = (char *)"";
    ProtobufCMessage *resp = NULL;
    int status = call_once(o, QD_CTL_HEALTH_CHECK, &req.base,
                           &grpc__health__v1__health_check_response__descriptor, &resp);
    if (status != QD_CTL_EXIT_OK) return status;
    const Grpc__Health__V1__HealthCheckResponse *r = (const void *)resp;
    const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(
        &grpc__health__v1__health_check_response__serving_status__descriptor, (int)r->status);
    const char *word = v ? v->name : "UNKNOWN";
    bool serving = r->status == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
    if (o->json) qd_ctl_json_emit(json_pack("{s:s}", "status", word));
    else printf("%s\n", word);
    protobuf_c_message_free_unpacked(resp, NULL);
    return serving ? QD_CTL_EXIT_OK : QD_CTL_EXIT_FAILED;
}
