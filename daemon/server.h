/*
 * server.h - quantd's gRPC transport: the one module that calls the gRPC C core on the server
 * side. It listens, accepts calls of a method table, moves messages, and runs each call's
 * handler as a small state machine; it knows nothing of quantd's messages (rpc.c does).
 *
 * A handler is a step function. The transport calls it once per event of the call, never
 * concurrently for one call and never on a completion-queue thread, so a step may block on
 * disk or on the service's lock without stalling other calls. Each step ends with exactly
 * one action:
 *
 *     qd_call_recv()    read the next client message        -> MESSAGE or END_OF_STREAM
 *     qd_call_send()    send one message                    -> SENT
 *     qd_call_wait()    sleep until a timeout or a wake-up  -> WAKE
 *     qd_call_finish()  send the status (and a last message); no more steps
 *
 *     START --recv--> MESSAGE ... END_OF_STREAM --finish-->       (client streaming)
 *     START --send--> SENT --wait--> WAKE --send--> ... --finish-->  (server streaming)
 *     START --finish-->                                          (unary)
 *
 * When the call ends for any reason (finished, cancelled by the client, deadline passed, the
 * server shut down), the method's cleanup runs exactly once, on a pool thread, after the last
 * step: that is where a handler frees its state and lets go of what it holds. A call that
 * dies while its handler waits gets no more steps, only the cleanup.
 *
 * Lifecycle:
 *     qd_server_start(&opt, &srv, &err);   bind every address, serve
 *     ... qd_server_address(srv, i) ...   the addresses as bound (port 0 -> the real port)
 *     qd_server_shutdown_begin(srv);       refuse new calls, wake waiting handlers
 *     qd_server_shutdown_finish(srv, deadline_ms);  let calls finish, then cancel the rest
 *     qd_server_free(srv);
 *
 * Transport security: with opt.tls (from qd_server_tls_load) every TCP address serves TLS,
 * and mutual TLS when a client CA was given (a client without a certificate signed by it
 * fails the handshake). Unix sockets stay plaintext: their file mode is their guard. The
 * certificate is read through a fetcher the core asks at each new connection, so
 * qd_server_set_tls() (SIGHUP) changes it for new connections without a restart.
 */
#ifndef QD_SERVER_H
#define QD_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "error.h"
#include "log.h"

struct qd_server;
struct qd_call;

/* How a method streams (fixes how the transport registers and drives it). */
typedef enum qd_rpc_kind {
    QD_RPC_UNARY,            /* one request, one response */
    QD_RPC_CLIENT_STREAMING, /* many requests, one response */
    QD_RPC_SERVER_STREAMING, /* one request, many responses */
} qd_rpc_kind;

/* Why a step runs. */
typedef enum qd_call_event {
    QD_CALL_START,         /* first step. Unary and server streaming: msg is the request
                              (NULL if the client sent none); client streaming: no msg */
    QD_CALL_MESSAGE,       /* qd_call_recv() got a message: msg, len */
    QD_CALL_END_OF_STREAM, /* qd_call_recv() found the client's end of stream */
    QD_CALL_SENT,          /* qd_call_send()'s message went out */
    QD_CALL_WAKE,          /* qd_call_wait() ended: timeout, qd_call_wake(), or draining */
} qd_call_event;

typedef void (*qd_call_step_fn)(struct qd_call *call, qd_call_event ev, const uint8_t *msg,
                                size_t len);

/* One row of the method table. */
typedef struct qd_rpc_method {
    const char *path;  /* "/quantd.v1.Quantd/PutModel" */
    qd_rpc_kind kind;
    qd_call_step_fn step;
    void (*cleanup)(struct qd_call *call); /* may be NULL; see the header comment */
} qd_rpc_method;

/* A server certificate, its key and the optional client CA, read and checked. */
struct qd_server_tls;

typedef struct qd_server_options {
    const char *const *listen; /* "host:port", "[v6]:port", "unix:/path" */
    size_t n_listen;
    uint64_t max_message_bytes;     /* largest message received or sent */
    uint64_t memory_quota;          /* the core's resource quota */
    int64_t max_concurrent_streams; /* per connection */
    const qd_rpc_method *methods;
    size_t n_methods;
    void *app;          /* handed to handlers by qd_call_app() */
    int n_cq_threads;   /* completion-queue threads; 0 = default (2) */
    int n_pool_threads; /* threads that run steps; 0 = default (4) */
    struct qd_server_tls *tls; /* NULL: plaintext; else taken by qd_server_start (always) */
} qd_server_options;

/* ---- TLS material ---------------------------------------------------------------------------- */

/* Read the PEM files: cert (a chain, the server's first) and key must be set, client_ca may be
 * NULL (no client certificates). Checks that each parses and that the key matches the
 * certificate; errors name the file. */
qd_err qd_server_tls_load(const char *cert, const char *key, const char *client_ca,
                          struct qd_server_tls **ret, qd_error *err);
/* Accepts NULL. */
void qd_server_tls_free(struct qd_server_tls *tls);
/* Use tls for the connections accepted from now on (taken; freed at once if the server was
 * started without TLS). Whether a client certificate is required stays as at start. */
void qd_server_set_tls(struct qd_server *srv, struct qd_server_tls *tls);

/* ---- lifecycle ------------------------------------------------------------------------------- */

/* Initialise gRPC, bind every address, start serving. Errors name the address that failed.
 * Block the signals the process waits for before calling this: gRPC starts threads here. */
qd_err qd_server_start(const qd_server_options *opt, struct qd_server **ret, qd_error *err);
/* Addresses as bound, in the order of opt->listen: a TCP port 0 is replaced by the port
 * chosen. Borrowed. */
size_t qd_server_address_count(const struct qd_server *srv);
const char *qd_server_address(const struct qd_server *srv, size_t i);
/* Refuse new calls; let running ones go on; wake every waiting handler (qd_call_draining()
 * is then true). Idempotent. */
void qd_server_shutdown_begin(struct qd_server *srv);
/* Wait until every call ended or deadline_ms (CLOCK_MONOTONIC ms) passed, then cancel what
 * is left and wait for it. Calls qd_server_shutdown_begin() if needed. */
void qd_server_shutdown_finish(struct qd_server *srv, int64_t deadline_ms);
/* Shut down at once if still serving, release everything, gRPC included. Accepts NULL. */
void qd_server_free(struct qd_server *srv);

/* ---- inside a step: exactly one action ------------------------------------------------------- */

/* Read the next message (client streaming). */
void qd_call_recv(struct qd_call *call);
/* Pack msg and send it (server streaming). msg may be freed when this returns. A message
 * above max_message_bytes ends the call with RESOURCE_EXHAUSTED instead. */
void qd_call_send(struct qd_call *call, const ProtobufCMessage *msg);
/* End the call with a gRPC status (grpc/status.h numbers) and details; with status 0 (OK),
 * msg (may be NULL) goes out first. msg and details may be freed when this returns. */
void qd_call_finish(struct qd_call *call, int status, const char *details,
                    const ProtobufCMessage *msg);
/* Sleep until timeout_ms passes (< 0: no timeout), qd_call_wake(), or the server drains. */
void qd_call_wait(struct qd_call *call, int64_t timeout_ms);

/* ---- from anywhere ------------------------------------------------------------------------ */

/* Wake the call's handler if it waits, or make its next qd_call_wait() return at once. Safe
 * from any thread until the method's cleanup has returned; quick, takes no service lock. */
void qd_call_wake(struct qd_call *call);
/* The handler's own per-call state (NULL at START). */
void *qd_call_state(struct qd_call *call);
void qd_call_set_state(struct qd_call *call, void *state);
/* opt->app of the server. */
void *qd_call_app(struct qd_call *call);
/* Whether the server has begun shutting down. */
bool qd_call_draining(struct qd_call *call);
/* The method's path, for messages. */
const char *qd_call_path(const struct qd_call *call);
/* The value of the client's request metadata key (lowercase, "authorization"): false when
 * absent. Copies it NUL-terminated into buf; *ret_len is its full length, so a value that
 * did not fit shows as *ret_len >= cap. */
bool qd_call_metadata(const struct qd_call *call, const char *key, char *buf, size_t cap,
                      size_t *ret_len);

#endif /* QD_SERVER_H */
