/*
 * mock-call.c - the in-process test transport of mock-call.h: server.h's qd_call_* without
 * gRPC, driving a handler's steps synchronously and recording what it
 * did.
 *
 * DESIGN
 * One step at a time, like the real transport: the step function runs, the action it asked
 * for is looked at after it returns, and that action decides the next event. Actions are not
 * carried out inside qd_call_* (a send is packed and recorded there, because the message may
 * be freed when qd_call_send returns, but it "goes out" only after the step): so a step that
 * asks for two actions, or none, is caught instead of half-applied, as server.c's
 * apply_action does. Waiting never sleeps: a wait is answered with WAKE at the next step, so
 * a watch loops quickly until the drain the mock starts after drain_after steps ends it.
 *
 * qd_call_wake() may come from any thread (a service worker's notifier), so it only sets an
 * atomic flag; everything else is touched by the thread running qd_mock_call_run alone.
 */
#include "mock-call.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DEFAULT_MAX_MESSAGE ((uint64_t)4 << 20)
#define DEFAULT_DRAIN_AFTER 16

enum action { ACT_NONE, ACT_RECV, ACT_SEND, ACT_FINISH, ACT_WAIT };

/* A scripted client message. */
struct script_msg {
    uint8_t *data;
    size_t len;
};

struct qd_call {
    const qd_rpc_method *method;
    qd_mock_options opt;
    char *authorization;
    void *state;

    struct script_msg *script;
    size_t n_script, cap_script;
    size_t next_script;  /* the next one a recv delivers */
    bool eos_delivered;  /* END_OF_STREAM went to a step */

    bool ran;
    bool draining;
    atomic_bool wake_pending;

    /* The running step's action. */
    enum action act;
    size_t n_actions;
    int act_status;
    char act_details[QD_MOCK_DETAILS_MAX];
    qd_mock_message act_msg; /* packed send, or finish's reply */
    bool have_act_msg;

    qd_mock_result res;
};

/* ---- helpers --------------------------------------------------------------------------------- */

const char *qd_mock_status_name(int status) {
    static const char *const names[] = {
        "OK",                 "CANCELLED",          "UNKNOWN",        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",  "NOT_FOUND",          "ALREADY_EXISTS", "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",       "OUT_OF_RANGE",
        "UNIMPLEMENTED",      "INTERNAL",           "UNAVAILABLE",    "DATA_LOSS",
        "UNAUTHENTICATED",
    };
    if (status < 0 || status >= (int)(sizeof names / sizeof names[0])) return "?";
    return names[status];
}

static const char *event_name(qd_call_event ev) {
    switch (ev) {
    case QD_CALL_START: return "START";
    case QD_CALL_MESSAGE: return "MESSAGE";
    case QD_CALL_END_OF_STREAM: return "END_OF_STREAM";
    case QD_CALL_SENT: return "SENT";
    case QD_CALL_WAKE: return "WAKE";
    }
    return "?";
}

static const char *action_name(enum action a) {
    switch (a) {
    case ACT_NONE: return "none";
    case ACT_RECV: return "qd_call_recv";
    case ACT_SEND: return "qd_call_send";
    case ACT_FINISH: return "qd_call_finish";
    case ACT_WAIT: return "qd_call_wait";
    }
    return "?";
}

static const char *kind_name(qd_rpc_kind k) {
    switch (k) {
    case QD_RPC_UNARY: return "unary";
    case QD_RPC_CLIENT_STREAMING: return "client streaming";
    case QD_RPC_SERVER_STREAMING: return "server streaming";
    }
    return "?";
}

/* Record the first broken rule; later ones are consequences more often than not. */
static void violate(struct qd_call *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void violate(struct qd_call *c, const char *fmt, ...) {
    if (c->res.violation[0]) return;
    int n = snprintf(c->res.violation, sizeof c->res.violation, "%s: ", c->method->path);
    if (n < 0 || (size_t)n >= sizeof c->res.violation) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->res.violation + n, sizeof c->res.violation - (size_t)n, fmt, ap);
    va_end(ap);
}

static void message_free(qd_mock_message *m) {
    free(m->data);
    memset(m, 0, sizeof *m);
}

/* Pack msg as the transport would. A message that is incomplete (a NULL string, a missing
 * required field) or does not decode again is a broken rule: the real transport would send
 * bytes no client can read, or crash packing them. */
static bool pack_message(struct qd_call *c, const ProtobufCMessage *msg, qd_mock_message *out) {
    memset(out, 0, sizeof *out);
    if (!msg || !msg->descriptor) {
        violate(c, "a message without a descriptor");
        return false;
    }
    if (!protobuf_c_message_check(msg)) {
        violate(c, "%s is incomplete (a NULL string or sub-message where one is needed)",
                msg->descriptor->name);
        return false;
    }
    size_t n = protobuf_c_message_get_packed_size(msg);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf) {
        violate(c, "out of memory packing %s", msg->descriptor->name);
        return false;
    }
    size_t w = protobuf_c_message_pack(msg, buf);
    if (w != n) {
        free(buf);
        violate(c, "%s packs to %zu bytes, its packed size says %zu", msg->descriptor->name, w,
                n);
        return false;
    }
    ProtobufCMessage *back = protobuf_c_message_unpack(msg->descriptor, NULL, n, buf);
    if (!back) {
        free(buf);
        violate(c, "%s as sent (%zu bytes) does not decode", msg->descriptor->name, n);
        return false;
    }
    protobuf_c_message_free_unpacked(back, NULL);
    out->desc = msg->descriptor;
    out->data = buf;
    out->len = n;
    return true;
}

/* Note an action; false (and a broken rule) when the step already took one. */
static bool take_action(struct qd_call *c, enum action a) {
    c->n_actions++;
    if (c->n_actions > 1) {
        if (c->act == ACT_FINISH && (a == ACT_SEND || a == ACT_FINISH))
            violate(c, "%s after qd_call_finish in the same step", action_name(a));
        else
            violate(c, "a step took two actions: %s, then %s", action_name(c->act),
                    action_name(a));
        return false;
    }
    c->act = a;
    return true;
}

/* ---- server.h: actions and accessors --------------------------------------------------------- */

void qd_call_recv(struct qd_call *c) {
    if (!take_action(c, ACT_RECV)) return;
    if (c->method->kind != QD_RPC_CLIENT_STREAMING)
        violate(c, "qd_call_recv in a %s call", kind_name(c->method->kind));
    else if (c->eos_delivered)
        violate(c, "qd_call_recv after END_OF_STREAM");
}

void qd_call_send(struct qd_call *c, const ProtobufCMessage *msg) {
    if (!take_action(c, ACT_SEND)) return;
    if (c->method->kind != QD_RPC_SERVER_STREAMING) {
        violate(c, "qd_call_send in a %s call", kind_name(c->method->kind));
        return;
    }
    if (!pack_message(c, msg, &c->act_msg)) return;
    if (c->act_msg.len > c->opt.max_message_bytes) {
        /* As server.c: the call ends instead. */
        snprintf(c->act_details, sizeof c->act_details,
                 "the response (%zu bytes) exceeds limits.max_message_bytes (%llu)",
                 c->act_msg.len, (unsigned long long)c->opt.max_message_bytes);
        message_free(&c->act_msg);
        c->act = ACT_FINISH;
        c->act_status = 8; /* RESOURCE_EXHAUSTED */
        return;
    }
    c->have_act_msg = true;
}

void qd_call_finish(struct qd_call *c, int status, const char *details,
                    const ProtobufCMessage *msg) {
    if (!take_action(c, ACT_FINISH)) return;
    c->act_status = status;
    snprintf(c->act_details, sizeof c->act_details, "%s", details ? details : "");
    if (status == 0 && msg) {
        if (!pack_message(c, msg, &c->act_msg)) return;
        if (c->act_msg.len > c->opt.max_message_bytes) {
            snprintf(c->act_details, sizeof c->act_details,
                     "the response (%zu bytes) exceeds limits.max_message_bytes (%llu)",
                     c->act_msg.len, (unsigned long long)c->opt.max_message_bytes);
            message_free(&c->act_msg);
            c->act_status = 8;
            return;
        }
        c->have_act_msg = true;
    }
}

void qd_call_wait(struct qd_call *c, int64_t timeout_ms) {
    (void)timeout_ms; /* answered at once: time is not what a fuzzer should wait on */
    take_action(c, ACT_WAIT);
}

void qd_call_wake(struct qd_call *c) { atomic_store(&c->wake_pending, true); }
void *qd_call_state(struct qd_call *c) { return c->state; }
void qd_call_set_state(struct qd_call *c, void *state) { c->state = state; }
void *qd_call_app(struct qd_call *c) { return c->opt.app; }

bool qd_call_draining(struct qd_call *c) {
    if (c->draining) c->res.drained = true;
    return c->draining;
}

const char *qd_call_path(const struct qd_call *c) { return c->method->path; }

bool qd_call_metadata(const struct qd_call *c, const char *key, char *buf, size_t cap,
                      size_t *ret_len) {
    const char *v = strcmp(key, "authorization") == 0 ? c->authorization : NULL;
    *ret_len = 0;
    if (cap) buf[0] = '\0';
    if (!v) return false;
    size_t n = strlen(v);
    *ret_len = n;
    if (cap) {
        size_t k = n < cap ? n : cap - 1;
        memcpy(buf, v, k);
        buf[k] = '\0';
    }
    return true;
}

/* ---- the mock's own API ---------------------------------------------------------------------- */

qd_err qd_mock_call_new(const qd_rpc_method *m, const qd_mock_options *opt,
                        struct qd_call **ret, qd_error *err) {
    *ret = NULL;
    struct qd_call *c = calloc(1, sizeof *c);
    if (!c) return qd_error_set(err, QD_ERR_NOMEM, "mock call %s: out of memory", m->path);
    c->method = m;
    if (opt) c->opt = *opt;
    if (!c->opt.max_message_bytes) c->opt.max_message_bytes = DEFAULT_MAX_MESSAGE;
    if (!c->opt.drain_after) c->opt.drain_after = DEFAULT_DRAIN_AFTER;
    if (!c->opt.max_steps) c->opt.max_steps = 4 * c->opt.drain_after;
    if (c->opt.authorization) {
        c->authorization = strdup(c->opt.authorization);
        if (!c->authorization) {
            free(c);
            return qd_error_set(err, QD_ERR_NOMEM, "mock call %s: out of memory", m->path);
        }
    }
    c->opt.authorization = NULL; /* the copy is the one used */
    c->draining = c->opt.draining;
    atomic_init(&c->wake_pending, false);
    *ret = c;
    return QD_OK;
}

qd_err qd_mock_call_add_message(struct qd_call *c, const uint8_t *data, size_t len,
                                qd_error *err) {
    if (c->n_script == c->cap_script) {
        size_t ncap = c->cap_script ? c->cap_script * 2 : 8;
        struct script_msg *g = realloc(c->script, ncap * sizeof *g);
        if (!g) return qd_error_set(err, QD_ERR_NOMEM, "mock call: out of memory");
        c->script = g;
        c->cap_script = ncap;
    }
    uint8_t *copy = malloc(len ? len : 1);
    if (!copy) return qd_error_set(err, QD_ERR_NOMEM, "mock call: out of memory");
    if (len) memcpy(copy, data, len);
    c->script[c->n_script].data = copy;
    c->script[c->n_script].len = len;
    c->n_script++;
    return QD_OK;
}

/* A heap copy of exactly len bytes (at least one allocated, so an empty message is not
 * NULL: NULL means "no message"). */
static uint8_t *copy_msg(const struct script_msg *s) {
    uint8_t *p = malloc(s->len ? s->len : 1);
    if (p && s->len) memcpy(p, s->data, s->len);
    return p;
}

/* Check what a finish said and keep it. */
static void take_finish(struct qd_call *c) {
    qd_mock_result *r = &c->res;
    r->finished = true;
    r->status = c->act_status;
    memcpy(r->details, c->act_details, sizeof r->details);
    if (c->have_act_msg) {
        r->reply = c->act_msg;
        r->has_reply = true;
        memset(&c->act_msg, 0, sizeof c->act_msg);
        c->have_act_msg = false;
    }
    if (r->status < 0 || r->status > 16)
        violate(c, "finished with status %d, not a gRPC code", r->status);
    else if (r->status != 0 && !r->details[0])
        violate(c, "finished %s without details", qd_mock_status_name(r->status));
    else if (r->status == 0 && !r->has_reply && c->method->kind != QD_RPC_SERVER_STREAMING)
        violate(c, "finished OK without its response in a %s call",
                kind_name(c->method->kind));
}

void qd_mock_call_run(struct qd_call *c) {
    if (c->ran) return;
    c->ran = true;
    qd_mock_result *r = &c->res;
    qd_call_event ev = QD_CALL_START;
    const struct script_msg *in = NULL;
    if (c->method->kind != QD_RPC_CLIENT_STREAMING && c->n_script > 0) in = &c->script[0];
    for (;;) {
        if (r->n_steps >= c->opt.max_steps) {
            r->cancelled = true;
            break;
        }
        if (r->n_steps >= c->opt.drain_after) c->draining = true;
        r->n_steps++;
        uint8_t *msg = in ? copy_msg(in) : NULL;
        if (in && !msg) {
            violate(c, "out of memory copying a message");
            r->cancelled = true;
            break;
        }
        c->act = ACT_NONE;
        c->n_actions = 0;
        c->have_act_msg = false;
        c->method->step(c, ev, msg, in ? in->len : 0);
        free(msg);
        in = NULL;

        if (c->n_actions == 0)
            violate(c, "step %zu (%s) took no action", r->n_steps, event_name(ev));
        if (r->violation[0]) {
            /* The real transport would end the call INTERNAL here; there is nothing more
             * to learn from stepping on. */
            message_free(&c->act_msg);
            c->have_act_msg = false;
            if (c->act == ACT_FINISH) take_finish(c);
            r->cancelled = !r->finished;
            break;
        }
        if (c->act == ACT_FINISH) {
            take_finish(c);
            break;
        }
        if (c->act == ACT_SEND) {
            if (r->n_sent < QD_MOCK_MAX_KEPT) {
                r->sent[r->n_sent] = c->act_msg;
            } else {
                message_free(&c->act_msg);
            }
            memset(&c->act_msg, 0, sizeof c->act_msg);
            c->have_act_msg = false;
            r->n_sent++;
            ev = QD_CALL_SENT;
        } else if (c->act == ACT_RECV) {
            if (c->next_script < c->n_script) {
                in = &c->script[c->next_script++];
                r->n_recv_messages++;
                ev = QD_CALL_MESSAGE;
            } else {
                c->eos_delivered = true;
                ev = QD_CALL_END_OF_STREAM;
            }
        } else { /* ACT_WAIT */
            atomic_store(&c->wake_pending, false);
            ev = QD_CALL_WAKE;
        }
    }
    if (c->method->cleanup) c->method->cleanup(c);
    c->state = NULL;
}

const qd_mock_result *qd_mock_call_result(const struct qd_call *c) { return &c->res; }

void qd_mock_call_free(struct qd_call *c) {
    if (!c) return;
    for (size_t i = 0; i < c->n_script; i++) free(c->script[i].data);
    free(c->script);
    size_t kept = c->res.n_sent < QD_MOCK_MAX_KEPT ? c->res.n_sent : QD_MOCK_MAX_KEPT;
    for (size_t i = 0; i < kept; i++) message_free(&c->res.sent[i]);
    message_free(&c->res.reply);
    message_free(&c->act_msg);
    free(c->authorization);
    free(c);
}
