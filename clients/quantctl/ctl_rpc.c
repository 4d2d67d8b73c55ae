/*
 * ctl_rpc.c - quantctl's gRPC client: the only file of quantctl that calls grpc_*.
 *
 * DESIGN
 * One channel and one completion queue created for pluck: every batch gets its own tag (an
 * address inside the call's context) and is plucked right after it starts, or at the latest
 * when the call ends, so the client is a plain blocking program. The gRPC C core's contracts
 * (its 1.51 header comments; breaking one makes a call hang) shape every call here:
 *   - each call issues RECV_INITIAL_METADATA exactly once, in a batch of its own, started
 *     before any RECV_MESSAGE (without it RECV_MESSAGE never completes, not even at the
 *     deadline);
 *   - RECV_STATUS_ON_CLIENT always succeeds, so it gets its own batch and tag: a failed send
 *     is seen as a failed SEND_MESSAGE, and the server's status from the status batch;
 *   - at most one op of a type is in flight per call: one SEND_MESSAGE at a time, which also
 *     gives the upload HTTP/2 flow control's backpressure;
 *   - error_string of RECV_STATUS_ON_CLIENT is written only on failure: it starts NULL;
 *   - a call's context is released only after every tag posted for it came back.
 * Unary calls carry the connection's timeout as deadline; streams have none (a watch or a
 * large transfer may legitimately run for hours) and end when the server or the connection
 * does.
 *
 * Security: with a CA or a client certificate given the channel is TLS (the C core's
 * grpc_ssl_credentials), and a bearer token goes out as "authorization: Bearer TOKEN" in the
 * initial metadata of every call. gRPC cannot tell a failed handshake from an absent server,
 * so both are "cannot reach" (exit 4); the message then points at the certificates.
 *
 * Whose fault: a call that fails with UNAVAILABLE while the channel is no longer connected
 * means the server went away (exit status 4); any other status is the server's answer
 * (exit status 3).
 */
#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/log.h>
#include <grpc/support/time.h>
#include <stdlib.h>
#include <string.h>

#include "fsutil.h"
#include "quantctl.h"

/* Certificates and keys are small; a bigger file is the wrong file. */
#define PEM_MAX ((size_t)1 << 20)

/* Hand-kept table: the C core has no code generation (method paths and streaming kinds). */
static const struct {
    const char *path;
    const char *name;
} methods[QD_CTL_METHOD_COUNT] = {
    [QD_CTL_PUT_MODEL] = {"/quantd.v1.Quantd/PutModel", "PutModel"},
    [QD_CTL_STAT_MODEL] = {"/quantd.v1.Quantd/StatModel", "StatModel"},
    [QD_CTL_QUANTIZE] = {"/quantd.v1.Quantd/Quantize", "Quantize"},
    [QD_CTL_WATCH_JOB] = {"/quantd.v1.Quantd/WatchJob", "WatchJob"},
    [QD_CTL_GET_JOB] = {"/quantd.v1.Quantd/GetJob", "GetJob"},
    [QD_CTL_LIST_JOBS] = {"/quantd.v1.Quantd/ListJobs", "ListJobs"},
    [QD_CTL_CANCEL_JOB] = {"/quantd.v1.Quantd/CancelJob", "CancelJob"},
    [QD_CTL_GET_ARTIFACT] = {"/quantd.v1.Quantd/GetArtifact", "GetArtifact"},
    [QD_CTL_LIST_ARTIFACTS] = {"/quantd.v1.Quantd/ListArtifacts", "ListArtifacts"},
    [QD_CTL_DELETE_ARTIFACT] = {"/quantd.v1.Quantd/DeleteArtifact", "DeleteArtifact"},
    [QD_CTL_GET_SERVER_INFO] = {"/quantd.v1.Quantd/GetServerInfo", "GetServerInfo"},
    [QD_CTL_HEALTH_CHECK] = {"/grpc.health.v1.Health/Check", "Health/Check"},
};

const char *qd_ctl_method_name(qd_ctl_method m) {
    return (unsigned)m < QD_CTL_METHOD_COUNT ? methods[m].name : "?";
}

const char *qd_ctl_status_name(int code) {
    static const char *const names[] = {
        "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
        "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
        "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
        "UNAUTHENTICATED",
    };
    if (code < 0 || (size_t)code >= sizeof names / sizeof names[0]) return "UNKNOWN_STATUS";
    return names[code];
}

/* The quantd error code closest to a gRPC status (for callers that test the code). */
static qd_err err_of_status(int code) {
    switch (code) {
    case GRPC_STATUS_OK: return QD_OK;
    case GRPC_STATUS_CANCELLED: return QD_ERR_CANCELLED;
    case GRPC_STATUS_INVALID_ARGUMENT: return QD_ERR_INVALID_ARG;
    case GRPC_STATUS_DEADLINE_EXCEEDED: return QD_ERR_DEADLINE;
    case GRPC_STATUS_NOT_FOUND: return QD_ERR_NOT_FOUND;
    case GRPC_STATUS_ALREADY_EXISTS: return QD_ERR_EXISTS;
    case GRPC_STATUS_PERMISSION_DENIED: return QD_ERR_PERMISSION;
    case GRPC_STATUS_RESOURCE_EXHAUSTED: return QD_ERR_TOO_LARGE;
    case GRPC_STATUS_FAILED_PRECONDITION: return QD_ERR_PRECONDITION;
    case GRPC_STATUS_UNAVAILABLE: return QD_ERR_UNAVAILABLE;
    case GRPC_STATUS_DATA_LOSS: return QD_ERR_CORRUPT;
    case GRPC_STATUS_UNAUTHENTICATED: return QD_ERR_UNAUTHENTICATED;
    default: return QD_ERR_INTERNAL;
    }
}

/* gRPC's own log lines would interleave with quantctl's output; QUANTCTL_GRPC_LOG=1 keeps
 * them for debugging. */
static void quiet_log(gpr_log_func_args *args) { (void)args; }

void qd_ctl_rpc_init(void) {
    const char *v = getenv("QUANTCTL_GRPC_LOG");
    if (!v || strcmp(v, "1") != 0) gpr_set_log_function(quiet_log);
    grpc_init();
}

void qd_ctl_rpc_shutdown(void) { grpc_shutdown(); }

struct qd_ctl_conn {
    grpc_channel *ch;
    grpc_completion_queue *cq;
    double timeout_s;
    char target[256];
    char tag_connect; /* its address is the tag of connectivity watches */
    char *auth;       /* "Bearer TOKEN", or NULL */
    bool tls;
};

static gpr_timespec deadline_after(double seconds) {
    if (seconds <= 0) return gpr_inf_future(GPR_CLOCK_REALTIME);
    return gpr_time_add(gpr_now(GPR_CLOCK_REALTIME),
                        gpr_time_from_millis((int64_t)(seconds * 1000.0), GPR_TIMESPAN));
}

static grpc_event pluck(struct qd_ctl_conn *c, void *tag) {
    return grpc_completion_queue_pluck(c->cq, tag, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
}

/* Loopback and Unix-socket targets never go through an HTTP proxy, whatever the environment's
 * http_proxy says (gRPC would otherwise try it). */
static bool is_local_target(const char *t) {
    return strncmp(t, "unix:", 5) == 0 || strncmp(t, "127.", 4) == 0 ||
           strncmp(t, "localhost", 9) == 0 || strncmp(t, "[::1]", 5) == 0 ||
           strncmp(t, "ipv4:127.", 9) == 0;
}

/* Read a PEM file for an option; on failure the message names the option and the file. */
static qd_err read_pem(const char *opt, const char *path, char **out, qd_ctl_error *err) {
    size_t len;
    qd_error e = {0};
    qd_err rc = qd_read_file(path, PEM_MAX, out, &len, &e);
    if (rc != QD_OK) return qd_ctl_error_local(err, rc, "%s: %s", opt, e.msg);
    return QD_OK;
}

/* The channel credentials o asks for: insecure, or TLS with its roots and client pair. */
static qd_err make_creds(const qd_ctl_opts *o, grpc_channel_credentials **ret,
                         qd_ctl_error *err) {
    *ret = NULL;
    if (!o->tls_ca && !o->tls_cert && !o->tls_key) {
        *ret = grpc_insecure_credentials_create();
        return QD_OK;
    }
    if (!o->tls_cert != !o->tls_key)
        return qd_ctl_error_local(err, QD_ERR_INVALID_ARG,
                                  "--tls-cert and --tls-key go together");
    char *ca = NULL, *cert = NULL, *key = NULL;
    qd_err rc = QD_OK;
    if (o->tls_ca) rc = read_pem("--tls-ca", o->tls_ca, &ca, err);
    if (rc == QD_OK && o->tls_cert) rc = read_pem("--tls-cert", o->tls_cert, &cert, err);
    if (rc == QD_OK && o->tls_key) rc = read_pem("--tls-key", o->tls_key, &key, err);
    if (rc == QD_OK) {
        /* NULL roots: the core's default roots (GRPC_DEFAULT_SSL_ROOTS_FILE_PATH). */
        grpc_ssl_pem_key_cert_pair pair = {.private_key = key, .cert_chain = cert};
        *ret = grpc_ssl_credentials_create(ca, cert ? &pair : NULL, NULL, NULL);
        if (!*ret)
            rc = qd_ctl_error_local(err, QD_ERR_INVALID_ARG,
                                    "the gRPC core refused the TLS certificates given");
    }
    free(ca);
    free(cert);
    if (key) {
        memset(key, 0, strlen(key)); /* a secret: not left in freed memory */
        free(key);
    }
    return rc;
}

qd_err qd_ctl_connect(const qd_ctl_opts *o, struct qd_ctl_conn **ret, qd_ctl_error *err) {
    const char *target = o->server;
    double timeout_s = o->timeout_s;
    *ret = NULL;
    struct qd_ctl_conn *c = calloc(1, sizeof *c);
    if (!c) return qd_ctl_error_local(err, QD_ERR_NOMEM, "out of memory");
    snprintf(c->target, sizeof c->target, "%s", target);
    c->timeout_s = timeout_s;
    if (o->token) {
        size_t n = strlen(o->token) + sizeof "Bearer ";
        c->auth = malloc(n);
        if (!c->auth) {
            qd_ctl_close(c);
            return qd_ctl_error_local(err, QD_ERR_NOMEM, "out of memory");
        }
        snprintf(c->auth, n, "Bearer %s", o->token);
    }
    grpc_channel_credentials *creds;
    qd_err rc = make_creds(o, &creds, err);
    if (rc != QD_OK) {
        qd_ctl_close(c);
        return rc;
    }
    c->tls = o->tls_ca || o->tls_cert;

    /* Responses carry chunks of up to the server's limits.max_message_bytes (256 MiB at
     * most), above gRPC's 4 MiB default. */
    grpc_arg args[3];
    size_t n_args = 0;
    args[n_args].type = GRPC_ARG_INTEGER;
    args[n_args].key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
    args[n_args++].value.integer = 257 * 1024 * 1024;
    if (is_local_target(target)) {
        args[n_args].type = GRPC_ARG_INTEGER;
        args[n_args].key = (char *)GRPC_ARG_ENABLE_HTTP_PROXY;
        args[n_args++].value.integer = 0;
    }
    if (c->tls && o->tls_server_name) {
        args[n_args].type = GRPC_ARG_STRING;
        args[n_args].key = (char *)GRPC_SSL_TARGET_NAME_OVERRIDE_ARG;
        args[n_args++].value.string = (char *)o->tls_server_name;
    }
    grpc_channel_args cargs = {.num_args = n_args, .args = args};
    c->ch = grpc_channel_create(target, creds, &cargs);
    grpc_channel_credentials_release(creds);
    c->cq = grpc_completion_queue_create_for_pluck(NULL);
    if (!c->ch || !c->cq) {
        qd_ctl_close(c);
        return qd_ctl_error_local(err, QD_ERR_INTERNAL, "%s: cannot create a gRPC channel",
                                  target);
    }

    /* Connect now, so that an absent server is told apart from a server's refusal. */
    gpr_timespec deadline = deadline_after(timeout_s > 0 ? timeout_s : QD_CTL_DEFAULT_TIMEOUT_S);
    grpc_connectivity_state s = grpc_channel_check_connectivity_state(c->ch, 1);
    while (s != GRPC_CHANNEL_READY) {
        if (s == GRPC_CHANNEL_TRANSIENT_FAILURE || s == GRPC_CHANNEL_SHUTDOWN) {
            qd_error_set(&err->e, QD_ERR_UNAVAILABLE,
                         "cannot reach the server at %s: connection failed%s", target,
                         c->tls ? " (or the TLS handshake: check --tls-ca, --tls-cert and "
                                  "--tls-key)"
                                : "");
            qd_ctl_close(c);
            err->exit_status = QD_CTL_EXIT_UNREACHABLE;
            return QD_ERR_UNAVAILABLE;
        }
        grpc_channel_watch_connectivity_state(c->ch, s, deadline, c->cq, &c->tag_connect);
        grpc_event ev = pluck(c, &c->tag_connect);
        if (!ev.success) {
            qd_ctl_close(c);
            qd_error_set(&err->e, QD_ERR_UNAVAILABLE,
                         "cannot reach the server at %s: no connection within %.0f s", target,
                         timeout_s > 0 ? timeout_s : QD_CTL_DEFAULT_TIMEOUT_S);
            err->exit_status = QD_CTL_EXIT_UNREACHABLE;
            return QD_ERR_UNAVAILABLE;
        }
        s = grpc_channel_check_connectivity_state(c->ch, 0);
    }
    *ret = c;
    return QD_OK;
}

void qd_ctl_close(struct qd_ctl_conn *c) {
    if (!c) return;
    if (c->ch) grpc_channel_destroy(c->ch);
    if (c->cq) {
        grpc_completion_queue_shutdown(c->cq);
        /* Every tag was plucked already, so this returns the shutdown event at once. */
        while (grpc_completion_queue_pluck(c->cq, NULL, gpr_inf_future(GPR_CLOCK_REALTIME), NULL)
                   .type != GRPC_QUEUE_SHUTDOWN) {
        }
        grpc_completion_queue_destroy(c->cq);
    }
    if (c->auth) {
        memset(c->auth, 0, strlen(c->auth));
        free(c->auth);
    }
    free(c);
}

/* ---- messages ------------------------------------------------------------------------------- */

static grpc_byte_buffer *pack_message(const ProtobufCMessage *m) {
    size_t n = protobuf_c_message_get_packed_size(m);
    grpc_slice s = grpc_slice_malloc(n); /* aborts on out-of-memory, as all of gRPC does */
    protobuf_c_message_pack(m, GRPC_SLICE_START_PTR(s));
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    return bb;
}

/* NULL when the bytes are not a valid message of type d. */
static ProtobufCMessage *unpack_message(grpc_byte_buffer *bb,
                                        const ProtobufCMessageDescriptor *d) {
    grpc_byte_buffer_reader r;
    if (!grpc_byte_buffer_reader_init(&r, bb)) return NULL;
    grpc_slice s = grpc_byte_buffer_reader_readall(&r);
    grpc_byte_buffer_reader_destroy(&r);
    ProtobufCMessage *m =
        protobuf_c_message_unpack(d, NULL, GRPC_SLICE_LENGTH(s), GRPC_SLICE_START_PTR(s));
    grpc_slice_unref(s);
    return m;
}

/* ---- one call's status ---------------------------------------------------------------------- */

/* The receive side every call has: initial metadata, status, trailing metadata. */
typedef struct call_state {
    struct qd_ctl_conn *c;
    qd_ctl_method m;
    grpc_call *call;
    grpc_metadata_array md_initial, md_trailing;
    grpc_status_code status;
    grpc_slice details;
    const char *error_string; /* written by the core only on failure: starts NULL */
    bool md_pending, status_pending;
    char tag_md, tag_status, tag_send, tag_recv; /* their addresses are the batches' tags */
} call_state;

static qd_err call_start(struct qd_ctl_conn *c, qd_ctl_method m, double timeout_s,
                         call_state *cs, qd_ctl_error *err) {
    memset(cs, 0, sizeof *cs);
    cs->c = c;
    cs->m = m;
    cs->details = grpc_empty_slice();
    grpc_metadata_array_init(&cs->md_initial);
    grpc_metadata_array_init(&cs->md_trailing);
    cs->call = grpc_channel_create_call(c->ch, NULL, GRPC_PROPAGATE_DEFAULTS, c->cq,
                                        grpc_slice_from_static_string(methods[m].path), NULL,
                                        deadline_after(timeout_s), NULL);
    if (!cs->call)
        return qd_ctl_error_local(err, QD_ERR_INTERNAL, "%s: cannot create the call",
                                  methods[m].name);

    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    op.data.recv_status_on_client.trailing_metadata = &cs->md_trailing;
    op.data.recv_status_on_client.status = &cs->status;
    op.data.recv_status_on_client.status_details = &cs->details;
    op.data.recv_status_on_client.error_string = &cs->error_string;
    if (grpc_call_start_batch(cs->call, &op, 1, &cs->tag_status, NULL) != GRPC_CALL_OK)
        return qd_ctl_error_local(err, QD_ERR_INTERNAL, "%s: cannot start the call",
                                  methods[m].name);
    cs->status_pending = true;

    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_INITIAL_METADATA;
    op.data.recv_initial_metadata.recv_initial_metadata = &cs->md_initial;
    if (grpc_call_start_batch(cs->call, &op, 1, &cs->tag_md, NULL) != GRPC_CALL_OK)
        return qd_ctl_error_local(err, QD_ERR_INTERNAL, "%s: cannot start the call",
                                  methods[m].name);
    cs->md_pending = true;
    return QD_OK;
}

/* Wait for the call to end (cancelling it first if cancel) and collect its status. */
static void call_wait(call_state *cs, bool cancel) {
    if (cancel && (cs->md_pending || cs->status_pending)) grpc_call_cancel(cs->call, NULL);
    if (cs->md_pending) {
        pluck(cs->c, &cs->tag_md);
        cs->md_pending = false;
    }
    if (cs->status_pending) {
        pluck(cs->c, &cs->tag_status);
        cs->status_pending = false;
    }
}

/* Fill err from the call's status (not OK). */
static qd_err call_status_error(call_state *cs, qd_ctl_error *err) {
    char details[QD_ERROR_MSG_MAX];
    size_t n = GRPC_SLICE_LENGTH(cs->details);
    if (n >= sizeof details) n = sizeof details - 1;
    memcpy(details, GRPC_SLICE_START_PTR(cs->details), n);
    details[n] = '\0';
    if (n == 0 && cs->error_string) snprintf(details, sizeof details, "%s", cs->error_string);
    int code = (int)cs->status;
    bool gone = code == GRPC_STATUS_UNAVAILABLE &&
                grpc_channel_check_connectivity_state(cs->c->ch, 0) != GRPC_CHANNEL_READY;
    qd_err rc = err_of_status(code);
    if (gone) {
        qd_error_set(&err->e, QD_ERR_UNAVAILABLE, "%s: lost the connection to %s: %s",
                     methods[cs->m].name, cs->c->target, details);
        if (!err->exit_status) err->exit_status = QD_CTL_EXIT_UNREACHABLE;
        return QD_ERR_UNAVAILABLE;
    }
    qd_error_set(&err->e, rc, "%s: %s: %s", methods[cs->m].name, qd_ctl_status_name(code),
                 details);
    if (!err->exit_status) {
        err->exit_status = QD_CTL_EXIT_REFUSED;
        err->grpc_code = code;
    }
    return rc;
}

static void call_done(call_state *cs) {
    call_wait(cs, true);
    grpc_metadata_array_destroy(&cs->md_initial);
    grpc_metadata_array_destroy(&cs->md_trailing);
    grpc_slice_unref(cs->details);
    gpr_free((void *)cs->error_string);
    if (cs->call) grpc_call_unref(cs->call);
    cs->call = NULL;
    cs->error_string = NULL;
    cs->details = grpc_empty_slice();
}

/* Send one message (with the initial metadata and/or the half-close when asked). false when
 * the call is over: its status then tells why. */
static bool call_send(call_state *cs, bool initial_md, const ProtobufCMessage *msg, bool close) {
    grpc_op ops[3];
    size_t n = 0;
    memset(ops, 0, sizeof ops);
    grpc_byte_buffer *bb = msg ? pack_message(msg) : NULL;
    grpc_metadata md;
    memset(&md, 0, sizeof md);
    if (initial_md) {
        ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
        if (cs->c->auth) {
            /* The batch is plucked below, so the slices outlive it. */
            md.key = grpc_slice_from_static_string("authorization");
            md.value = grpc_slice_from_static_string(cs->c->auth);
            ops[n].data.send_initial_metadata.count = 1;
            ops[n].data.send_initial_metadata.metadata = &md;
        }
        n++;
    }
    if (bb) {
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n++].data.send_message.send_message = bb;
    }
    if (close) ops[n++].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    bool ok = false;
    if (grpc_call_start_batch(cs->call, ops, n, &cs->tag_send, NULL) == GRPC_CALL_OK)
        ok = pluck(cs->c, &cs->tag_send).success != 0;
    if (bb) grpc_byte_buffer_destroy(bb);
    return ok;
}

/* Receive one message: *ret NULL at the end of the stream. false when the receive failed. */
static bool call_recv(call_state *cs, grpc_byte_buffer **ret) {
    grpc_op op;
    memset(&op, 0, sizeof op);
    *ret = NULL;
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = ret;
    if (grpc_call_start_batch(cs->call, &op, 1, &cs->tag_recv, NULL) != GRPC_CALL_OK) return false;
    return pluck(cs->c, &cs->tag_recv).success != 0;
}

/* ---- unary ---------------------------------------------------------------------------------- */

qd_err qd_ctl_unary(struct qd_ctl_conn *c, qd_ctl_method m, const ProtobufCMessage *req,
                    const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **ret,
                    qd_ctl_error *err) {
    call_state cs;
    qd_err rc = call_start(c, m, c->timeout_s, &cs, err);
    grpc_byte_buffer *bb = NULL;
    if (rc == QD_OK) {
        bool sent = call_send(&cs, true, req, true);
        bool got = sent && call_recv(&cs, &bb);
        call_wait(&cs, false);
        if (cs.status != GRPC_STATUS_OK) {
            rc = call_status_error(&cs, err);
        } else if (!got || !bb) {
            rc = qd_ctl_error_local(err, QD_ERR_INTERNAL, "%s: the server sent no response",
                                    methods[m].name);
        } else {
            ProtobufCMessage *msg = unpack_message(bb, resp_desc);
            if (!msg)
                rc = qd_ctl_error_local(err, QD_ERR_FORMAT, "%s: malformed response message",
                                        methods[m].name);
            else
                *ret = msg;
        }
    }
    if (bb) grpc_byte_buffer_destroy(bb);
    call_done(&cs);
    return rc;
}

/* ---- client stream (upload) ----------------------------------------------------------------- */

struct qd_ctl_upload {
    call_state cs;
    bool started; /* initial metadata sent */
    bool over;    /* the call ended (status collected) */
};

qd_err qd_ctl_upload_open(struct qd_ctl_conn *c, qd_ctl_method m, struct qd_ctl_upload **ret,
                          qd_ctl_error *err) {
    struct qd_ctl_upload *up = calloc(1, sizeof *up);
    if (!up) return qd_ctl_error_local(err, QD_ERR_NOMEM, "out of memory");
    /* The status batch starts first, so a server error is seen while still sending. */
    qd_err rc = call_start(c, m, 0, &up->cs, err);
    if (rc != QD_OK) {
        qd_ctl_upload_free(up);
        return rc;
    }
    *ret = up;
    return QD_OK;
}

/* The send failed: the call is over; its status says why. */
static qd_err upload_ended(struct qd_ctl_upload *up, qd_ctl_error *err) {
    call_wait(&up->cs, false);
    up->over = true;
    if (up->cs.status == GRPC_STATUS_OK)
        return qd_ctl_error_local(err, QD_ERR_INTERNAL, "%s: the server ended the call early",
                                  methods[up->cs.m].name);
    return call_status_error(&up->cs, err);
}

qd_err qd_ctl_upload_send(struct qd_ctl_upload *up, const ProtobufCMessage *msg,
                          qd_ctl_error *err) {
    if (up->over)
        return qd_ctl_error_local(err, QD_ERR_INTERNAL, "%s: send after the call ended",
                                  methods[up->cs.m].name);
    bool first = !up->started;
    up->started = true;
    if (!call_send(&up->cs, first, msg, false)) return upload_ended(up, err);
    /* A send completes once the transport took the message, so a server that refused the
     * stream (another client uploads the same file) is heard only through the status batch:
     * look at it without waiting, and stop sending what would be dropped anyway. */
    grpc_event ev = grpc_completion_queue_pluck(up->cs.c->cq, &up->cs.tag_status,
                                                gpr_inf_past(GPR_CLOCK_REALTIME), NULL);
    if (ev.type == GRPC_OP_COMPLETE) {
        up->cs.status_pending = false;
        return upload_ended(up, err);
    }
    return QD_OK;
}

qd_err qd_ctl_upload_finish(struct qd_ctl_upload *up, const ProtobufCMessageDescriptor *resp_desc,
                            ProtobufCMessage **ret, qd_ctl_error *err) {
    if (up->over)
        return qd_ctl_error_local(err, QD_ERR_INTERNAL, "%s: finish after the call ended",
                                  methods[up->cs.m].name);
    bool first = !up->started;
    up->started = true;
    grpc_byte_buffer *bb = NULL;
    bool closed = call_send(&up->cs, first, NULL, true);
    bool got = closed && call_recv(&up->cs, &bb);
    call_wait(&up->cs, false);
    up->over = true;
    qd_err rc = QD_OK;
    if (up->cs.status != GRPC_STATUS_OK) {
        rc = call_status_error(&up->cs, err);
    } else if (!got || !bb) {
        rc = qd_ctl_error_local(err, QD_ERR_INTERNAL, "%s: the server sent no response",
                                methods[up->cs.m].name);
    } else {
        ProtobufCMessage *msg = unpack_message(bb, resp_desc);
        if (!msg)
            rc = qd_ctl_error_local(err, QD_ERR_FORMAT, "%s: malformed response message",
                                    methods[up->cs.m].name);
        else
            *ret = msg;
    }
    if (bb) grpc_byte_buffer_destroy(bb);
    return rc;
}

void qd_ctl_upload_free(struct qd_ctl_upload *up) {
    if (!up) return;
    call_done(&up->cs);
    free(up);
}

/* ---- server stream -------------------------------------------------------------------------- */

qd_err qd_ctl_server_stream(struct qd_ctl_conn *c, qd_ctl_method m, const ProtobufCMessage *req,
                            const ProtobufCMessageDescriptor *resp_desc, qd_ctl_stream_fn fn,
                            void *ctx, qd_ctl_error *err) {
    call_state cs;
    qd_err rc = call_start(c, m, 0, &cs, err);
    if (rc == QD_OK && call_send(&cs, true, req, true)) {
        for (;;) {
            grpc_byte_buffer *bb = NULL;
            if (!call_recv(&cs, &bb) || !bb) break; /* the end, or the call failed */
            ProtobufCMessage *msg = unpack_message(bb, resp_desc);
            grpc_byte_buffer_destroy(bb);
            if (!msg) {
                rc = qd_ctl_error_local(err, QD_ERR_FORMAT, "%s: malformed message in the stream",
                                        methods[m].name);
                break;
            }
            rc = fn(ctx, msg, err);
            protobuf_c_message_free_unpacked(msg, NULL);
            if (rc != QD_OK) break;
        }
    }
    if (rc == QD_OK) {
        call_wait(&cs, false);
        if (cs.status != GRPC_STATUS_OK) rc = call_status_error(&cs, err);
    }
    call_done(&cs); /* cancels the call if we stopped reading early */
    return rc;
}
