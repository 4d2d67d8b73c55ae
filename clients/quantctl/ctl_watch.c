/*
 * ctl_watch.c - following a job's events (WatchJob) until it ends: each finished layer with
 * its error as it arrives, a progress line with the stage, layer i/n and the ETA, and how the
 * job ended. Used by `quantctl watch` and by `quantctl quantize`.
 *
 * Events are numbered without gaps, so a stream that ends before the job's last event (the
 * server restarted, a proxy dropped it) is simply opened again after the last seq seen.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "quantctl.h"

#define REWATCH_MAX 5 /* streams in a row that end early without a new event */

typedef struct watch_ctx {
    const qd_ctl_opts *o;
    const char *job_id;
    bool events_json;
    qd_ctl_watch_result *res;
    qd_ctl_progress prog;
    int stage;
    double fraction;
    uint32_t layer, layer_count;
    int64_t eta_unix_ms;
    uint32_t queued;
    bool got_event;
} watch_ctx;

static int64_t unix_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static bool terminal(int state) {
    return state == QUANTD__V1__JOB_STATE__JOB_STATE_SUCCEEDED ||
           state == QUANTD__V1__JOB_STATE__JOB_STATE_FAILED ||
           state == QUANTD__V1__JOB_STATE__JOB_STATE_CANCELLED;
}

static void take_progress(watch_ctx *w, const Quantd__V1__Progress *p) {
    if (!p) return;
    if (p->fraction > w->fraction) w->fraction = p->fraction;
    w->layer = p->layer;
    if (p->layer_count) w->layer_count = p->layer_count;
    w->eta_unix_ms = p->eta_unix_ms;
}

static void draw(watch_ctx *w, bool force) {
    char text[200];
    if (w->stage == 0) {
        snprintf(text, sizeof text, "job %s: queued, %u ahead", w->job_id, w->queued);
    } else {
        char eta[48] = "";
        if (w->eta_unix_ms > 0) {
            int64_t left = (w->eta_unix_ms - unix_ms()) / 1000;
            snprintf(eta, sizeof eta, ", eta %" PRId64 " s", left > 0 ? left : 0);
        }
        if (w->layer_count)
            snprintf(text, sizeof text, "job %s: %s, layer %u/%u%s", w->job_id,
                     qd_ctl_stage_word(w->stage), w->layer, w->layer_count, eta);
        else
            snprintf(text, sizeof text, "job %s: %s%s", w->job_id, qd_ctl_stage_word(w->stage),
                     eta);
    }
    qd_ctl_progress_fraction(&w->prog, w->fraction, text, force);
}

/* "model.layers.3.self_attn.q_proj" -> "q_proj". */
static const char *short_name(const char *name) {
    const char *dot = strrchr(name, '.');
    return dot ? dot + 1 : name;
}

static void print_layer(watch_ctx *w, const Quantd__V1__LayerDone *l) {
    json_t *j = json_pack("{s:i, s:i, s:f, s:I}", "index", (int)l->index, "count", (int)l->count,
                          "error", l->error, "duration_ms", (json_int_t)l->duration_ms);
    json_t *mods = json_object();
    for (size_t i = 0; j && mods && i < l->n_modules; i++)
        json_object_set_new(mods, l->modules[i]->name, json_real(l->modules[i]->error));
    if (j && mods) json_object_set(j, "modules", mods);
    json_decref(mods);
    if (j && w->res->layers) json_array_append_new(w->res->layers, j);
    else json_decref(j);
    w->res->n_layers++;
    if (w->o->json) return;
    qd_ctl_progress_clear(&w->prog);
    /* Layers count from 1 for people; the wire counts from 0. */
    printf("layer %u/%u  error ", l->index + 1, l->count);
    if (l->error >= 0) printf("%.3e", l->error);
    else printf("-");
    printf("  (%.1f s)", (double)l->duration_ms / 1000.0);
    for (size_t i = 0; i < l->n_modules; i++) {
        printf("  %s ", short_name(l->modules[i]->name));
        if (l->modules[i]->error >= 0) printf("%.2e", l->modules[i]->error);
        else printf("-");
    }
    printf("\n");
    fflush(stdout);
}

static void finish(watch_ctx *w, int state, const Quantd__V1__JobError *e, const char *artifact) {
    qd_ctl_watch_result *r = w->res;
    r->state = state;
    snprintf(r->artifact_id, sizeof r->artifact_id, "%s", artifact ? artifact : "");
    snprintf(r->error_code, sizeof r->error_code, "%s", e && e->code ? e->code : "");
    snprintf(r->error_message, sizeof r->error_message, "%s", e && e->message ? e->message : "");
}

static qd_err on_event(void *ctx, const ProtobufCMessage *msg, qd_ctl_error *err) {
    watch_ctx *w = ctx;
    const Quantd__V1__JobEvent *ev = (const void *)msg;
    (void)err;
    w->got_event = true;
    if (ev->seq > w->res->last_seq) w->res->last_seq = ev->seq;
    take_progress(w, ev->progress);
    if (w->events_json) qd_ctl_json_emit(qd_ctl_proto_json(msg));
    switch (ev->event_case) {
    case QUANTD__V1__JOB_EVENT__EVENT_QUEUED:
        w->queued = ev->queued;
        w->stage = 0;
        break;
    case QUANTD__V1__JOB_EVENT__EVENT_STAGE:
        w->stage = ev->stage;
        break;
    case QUANTD__V1__JOB_EVENT__EVENT_LAYER:
        w->stage = QUANTD__V1__STAGE__STAGE_QUANTIZE;
        if (ev->layer) print_layer(w, ev->layer);
        break;
    case QUANTD__V1__JOB_EVENT__EVENT_DONE:
        if (ev->done) finish(w, ev->done->state, ev->done->error, ev->done->artifact_id);
        break;
    case QUANTD__V1__JOB_EVENT__EVENT_SNAPSHOT:
        if (ev->snapshot) {
            const Quantd__V1__Job *j = ev->snapshot;
            w->stage = j->stage;
            w->queued = j->queue_position;
            take_progress(w, j->progress);
            if (terminal(j->state)) finish(w, j->state, j->error, j->artifact_id);
        }
        break;
    default: /* tick: progress only */
        break;
    }
    if (!w->events_json && !w->res->state)
        draw(w, ev->event_case != QUANTD__V1__JOB_EVENT__EVENT_TICK);
    return QD_OK;
}

qd_err qd_ctl_watch_job(struct qd_ctl_conn *c, const qd_ctl_opts *o, const char *job_id,
                        uint64_t after_seq, bool events_json, qd_ctl_watch_result *res,
                        qd_ctl_error *err) {
    memset(res, 0, sizeof *res);
    res->layers = json_array();
    res->last_seq = after_seq;
    watch_ctx w = {.o = o, .job_id = job_id, .events_json = events_json, .res = res};
    qd_ctl_progress_init(&w.prog, o);
    qd_err rc = QD_OK;
    for (int quiet_streams = 0; rc == QD_OK && !res->state;) {
        Quantd__V1__WatchJobRequest req = QUANTD__V1__WATCH_JOB_REQUEST__INIT;
        req.job_id = (char *)job_id;
        req.after_seq = res->last_seq;
        w.got_event = false;
        rc = qd_ctl_server_stream(c, QD_CTL_WATCH_JOB, &req.base,
                                  &quantd__v1__job_event__descriptor, on_event, &w, err);
        if (rc != QD_OK || res->state) break;
        /* The stream ended before the job did: watch again from the last event seen. */
        quiet_streams = w.got_event ? 0 : quiet_streams + 1;
        if (quiet_streams >= REWATCH_MAX) {
            qd_error_set(&err->e, QD_ERR_INTERNAL,
                         "WatchJob: the server ends the stream of job %s before the job ends",
                         job_id);
            err->exit_status = QD_CTL_EXIT_REFUSED;
            rc = QD_ERR_INTERNAL;
        }
    }
    qd_ctl_progress_clear(&w.prog);
    return rc;
}

void qd_ctl_watch_result_done(qd_ctl_watch_result *res) {
    if (!res) return;
    json_decref(res->layers);
    res->layers = NULL;
}
