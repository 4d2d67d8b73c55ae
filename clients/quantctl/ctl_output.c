/*
 * ctl_output.c - how quantctl talks to people and to scripts: errors and exit statuses, the
 * words for enum values, the progress line on stderr (drawn only on a terminal), and any
 * protobuf-c message as JSON for --json.
 *
 * The JSON form is generic: it walks the message's protobuf-c descriptor, so every field the
 * proto gains later shows up without a change here. Field names are the proto's (snake_case),
 * enum values their proto names ("JOB_STATE_SUCCEEDED"), oneof members appear only when set.
 */
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "quantctl.h"

/* ---- errors --------------------------------------------------------------------------------- */

qd_err qd_ctl_error_local(qd_ctl_error *err, qd_err code, const char *fmt, ...) {
    if (err->e.code != QD_OK) return code;
    va_list ap;
    va_start(ap, fmt);
    qd_error_vset(&err->e, code, fmt, ap);
    va_end(ap);
    if (!err->exit_status) err->exit_status = QD_CTL_EXIT_FAILED;
    return code;
}

int qd_ctl_fail(const qd_ctl_error *err) {
    fprintf(stderr, "quantctl: %s\n", qd_error_text(&err->e));
    return err->exit_status ? err->exit_status : QD_CTL_EXIT_FAILED;
}

int qd_ctl_usage_error(const char *cmd, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "quantctl %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, " (see quantctl %s --help)\n", cmd);
    va_end(ap);
    return QD_CTL_EXIT_USAGE;
}

/* ---- words ---------------------------------------------------------------------------------- */

double qd_ctl_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void qd_ctl_format_bytes(uint64_t n, char *buf, size_t cap) {
    static const char *const units[] = {"KiB", "MiB", "GiB", "TiB"};
    if (n < 1024) {
        snprintf(buf, cap, "%u B", (unsigned)n);
        return;
    }
    double v = (double)n / 1024.0;
    size_t u = 0;
    while (v >= 1024.0 && u + 1 < sizeof units / sizeof units[0]) {
        v /= 1024.0;
        u++;
    }
    snprintf(buf, cap, "%.1f %s", v, units[u]);
}

const char *qd_ctl_job_state_word(int state) {
    static const char *const w[] = {"unknown", "queued", "running", "succeeded", "failed",
                                    "cancelled"};
    return state >= 0 && (size_t)state < sizeof w / sizeof w[0] ? w[state] : "unknown";
}

const char *qd_ctl_stage_word(int stage) {
    static const char *const w[] = {"-", "load", "plan", "calibrate", "quantize", "pack",
                                    "publish"};
    return stage >= 0 && (size_t)stage < sizeof w / sizeof w[0] ? w[stage] : "-";
}

const char *qd_ctl_format_word(int format) {
    const char *n = format >= 1 && format <= 5 ? qd_spec_format_name((qd_spec_format)format) : NULL;
    return n ? n : "unspecified";
}

const char *qd_ctl_method_word(int method) {
    const char *n = method >= 1 && method < QD_SPEC_METHOD_COUNT
                        ? qd_spec_method_name((qd_spec_method)method)
                        : NULL;
    return n ? n : "unspecified";
}

/* ---- progress ------------------------------------------------------------------------------- */

#define BAR_WIDTH 24

void qd_ctl_progress_init(qd_ctl_progress *p, const qd_ctl_opts *o) {
    memset(p, 0, sizeof *p);
    p->on = o->progress;
    p->t0 = qd_ctl_now();
}

static void draw_bar(char *bar, double fraction) {
    if (!(fraction >= 0)) fraction = 0;
    if (fraction > 1) fraction = 1;
    int full = (int)(fraction * BAR_WIDTH + 0.5);
    for (int i = 0; i < BAR_WIDTH; i++) bar[i] = i < full ? '=' : ' ';
    if (full > 0 && full < BAR_WIDTH) bar[full - 1] = '>';
    bar[BAR_WIDTH] = '\0';
}

void qd_ctl_progress_fraction(qd_ctl_progress *p, double fraction, const char *text, bool force) {
    if (!p->on) return;
    double now = qd_ctl_now();
    if (!force && p->drawn && now - p->last < 0.1) return;
    p->last = now;
    char bar[BAR_WIDTH + 1];
    draw_bar(bar, fraction);
    /* \r and "erase to end of line": the line is redrawn in place. */
    fprintf(stderr, "\r\033[K[%s] %3.0f%%  %s", bar, 100.0 * (fraction > 1 ? 1 : fraction), text);
    fflush(stderr);
    p->drawn = true;
}

void qd_ctl_progress_bytes(qd_ctl_progress *p, const char *what, uint64_t done, uint64_t total,
                           bool force) {
    if (!p->on) return;
    double now = qd_ctl_now();
    if (!force && p->drawn && now - p->last < 0.1) return;
    double el = now - p->t0;
    char d[32], t[32], text[160];
    qd_ctl_format_bytes(done, d, sizeof d);
    qd_ctl_format_bytes(total, t, sizeof t);
    snprintf(text, sizeof text, "%s  %s / %s  %.1f MiB/s", what, d, t,
             el > 0 ? (double)done / el / (1024.0 * 1024.0) : 0.0);
    qd_ctl_progress_fraction(p, total ? (double)done / (double)total : 1.0, text, true);
}

void qd_ctl_progress_clear(qd_ctl_progress *p) {
    if (!p->on || !p->drawn) return;
    fprintf(stderr, "\r\033[K");
    fflush(stderr);
    p->drawn = false;
}

/* ---- protobuf-c message -> JSON ------------------------------------------------------------- */

static size_t element_size(ProtobufCType t) {
    switch (t) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_FLOAT:
    case PROTOBUF_C_TYPE_ENUM: return 4;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
    case PROTOBUF_C_TYPE_DOUBLE: return 8;
    case PROTOBUF_C_TYPE_BOOL: return sizeof(protobuf_c_boolean);
    case PROTOBUF_C_TYPE_STRING:
    case PROTOBUF_C_TYPE_MESSAGE: return sizeof(void *);
    case PROTOBUF_C_TYPE_BYTES: return sizeof(ProtobufCBinaryData);
    }
    return 0;
}

static json_t *string_json(const char *s) {
    json_t *j = json_string(s ? s : "");
    /* Not UTF-8 (jansson refuses it): say so rather than drop the field. */
    return j ? j : json_string("<not UTF-8>");
}

static json_t *value_json(const ProtobufCFieldDescriptor *f, const void *p) {
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32: return json_integer(*(const int32_t *)p);
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32: return json_integer(*(const uint32_t *)p);
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64: return json_integer(*(const int64_t *)p);
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64: return json_integer((json_int_t) * (const uint64_t *)p);
    case PROTOBUF_C_TYPE_FLOAT:
    case PROTOBUF_C_TYPE_DOUBLE: {
        double d = f->type == PROTOBUF_C_TYPE_FLOAT ? *(const float *)p : *(const double *)p;
        return isfinite(d) ? json_real(d) : json_null();
    }
    case PROTOBUF_C_TYPE_BOOL: return json_boolean(*(const protobuf_c_boolean *)p);
    case PROTOBUF_C_TYPE_ENUM: {
        int v = *(const int *)p;
        const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(f->descriptor, v);
        return ev ? json_string(ev->name) : json_integer(v);
    }
    case PROTOBUF_C_TYPE_STRING: return string_json(*(char *const *)p);
    case PROTOBUF_C_TYPE_BYTES: {
        char text[48];
        snprintf(text, sizeof text, "<%zu bytes>", ((const ProtobufCBinaryData *)p)->len);
        return json_string(text);
    }
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessage *m = *(const ProtobufCMessage *const *)p;
        return m ? qd_ctl_proto_json(m) : json_null();
    }
    }
    return json_null();
}

json_t *qd_ctl_proto_json(const ProtobufCMessage *m) {
    const ProtobufCMessageDescriptor *d = m->descriptor;
    json_t *obj = json_object();
    if (!obj) return NULL;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        const char *base = (const char *)m;
        const void *member = base + f->offset;
        json_t *v = NULL;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = *(const size_t *)(base + f->quantifier_offset);
            const char *arr = *(const char *const *)member;
            size_t es = element_size(f->type);
            v = json_array();
            for (size_t k = 0; v && k < n; k++)
                json_array_append_new(v, value_json(f, arr + k * es));
        } else {
            if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
                if (*(const uint32_t *)(base + f->quantifier_offset) != f->id) continue;
            } else if (f->label == PROTOBUF_C_LABEL_OPTIONAL && f->quantifier_offset &&
                       f->type != PROTOBUF_C_TYPE_MESSAGE && f->type != PROTOBUF_C_TYPE_STRING) {
                if (!*(const protobuf_c_boolean *)(base + f->quantifier_offset)) continue;
            } else if (f->type == PROTOBUF_C_TYPE_MESSAGE && !*(const void *const *)member) {
                continue; /* an absent sub-message */
            }
            v = value_json(f, member);
        }
        if (v) json_object_set_new(obj, f->name, v);
    }
    return obj;
}

void qd_ctl_json_emit(json_t *j) {
    if (!j) return;
    char *text = json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(10));
    if (text) {
        fputs(text, stdout);
        fputc('\n', stdout);
        fflush(stdout);
        free(text);
    }
    json_decref(j);
}
