/*
 * mock-call.h - an in-process transport for the RPC handlers: every qd_call_* function of
 * server.h, so the handlers of daemon/rpc.c (library qd_handlers) run
 * without gRPC. Link it instead of server.c (qd_rpc); linking both is a duplicate symbol.
 *
 * A mock call holds what a real one holds - the method row, the app, the handler's state,
 * the client's metadata - plus a script of client messages, and records what the handler
 * did: the messages it sent (packed), its final status, details and response, and the first
 * rule of the step contract (server.h) it broke, if any. qd_mock_call_run() drives the steps
 * synchronously on the calling thread:
 *
 *     unary, server streaming   START with the first scripted message as the request
 *                               (no message scripted: msg NULL, "the call carried none")
 *     client streaming          START, then one MESSAGE per qd_call_recv() in script order,
 *                               then END_OF_STREAM
 *     qd_call_send()            -> SENT        qd_call_wait()  -> WAKE, at once (no sleep)
 *     qd_call_finish()          the call is over; the cleanup runs
 *
 * Each message handed to a step is a fresh heap copy of exactly its length, freed when the
 * step returns (the real transport's slice is gone then too), so a handler that reads past a
 * request or keeps a pointer into it shows up under ASan.
 *
 * Bounded: after drain_after steps the call sees the server draining (qd_call_draining()
 * true, as after qd_server_shutdown_begin), which must end every watch that is not following
 * a running job; after max_steps the call is cancelled as qd_server_shutdown_finish would:
 * no more steps, only the cleanup, and finished stays false.
 *
 * Contract rules checked (the first one broken is kept in qd_mock_result.violation):
 *   - each step takes exactly one action (the real transport ends such a call INTERNAL);
 *   - recv only in client streaming calls, and not after END_OF_STREAM was delivered;
 *   - send only in server streaming calls; every message sent is complete (no NULL string
 *     or missing sub-message) and decodes again with its own descriptor;
 *   - the status is a gRPC code (0..16); a non-OK status has details; an OK unary or client
 *     streaming call carries its response;
 *   - nothing after the finish (another finish, a send).
 */
#ifndef QD_MOCK_CALL_H
#define QD_MOCK_CALL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "error.h"
#include "server.h"

/* Messages kept per call; further sends are counted (n_sent) but not kept. */
#define QD_MOCK_MAX_KEPT 16
/* The real transport's bound on details (longer ones are cut). */
#define QD_MOCK_DETAILS_MAX 1024

typedef struct qd_mock_options {
    void *app;                  /* what qd_call_app() returns */
    uint64_t max_message_bytes; /* larger sends end the call RESOURCE_EXHAUSTED; 0: 4 MiB */
    const char *authorization;  /* the "authorization" metadata; NULL: not sent */
    bool draining;              /* the server drains from the first step */
    size_t drain_after;         /* steps before draining begins; 0: 16 */
    size_t max_steps;           /* steps before the call is cancelled; 0: 4 * drain_after */
} qd_mock_options;

/* A message the handler sent: its descriptor and packed bytes. */
typedef struct qd_mock_message {
    const ProtobufCMessageDescriptor *desc;
    uint8_t *data;
    size_t len;
} qd_mock_message;

typedef struct qd_mock_result {
    bool finished; /* the handler ended the call (with exactly one finish) */
    int status;    /* valid when finished */
    char details[QD_MOCK_DETAILS_MAX];
    bool has_reply;        /* finish(OK) carried a message: reply */
    qd_mock_message reply;
    qd_mock_message sent[QD_MOCK_MAX_KEPT]; /* the first messages of qd_call_send */
    size_t n_sent;         /* every qd_call_send that went out */
    size_t n_steps;
    size_t n_recv_messages; /* client messages delivered */
    bool drained;   /* the call saw the server draining */
    bool cancelled; /* max_steps passed, or a contract break stopped the steps */
    char violation[256]; /* "" when every rule held */
} qd_mock_result;

/* A call of method m (the row must outlive the call). opt may be NULL (all defaults). */
qd_err qd_mock_call_new(const qd_rpc_method *m, const qd_mock_options *opt,
                        struct qd_call **ret, qd_error *err);
/* Script one client message (copied). */
qd_err qd_mock_call_add_message(struct qd_call *call, const uint8_t *data, size_t len,
                                qd_error *err);
/* Run the steps to the end, then the method's cleanup (exactly once). Call once. */
void qd_mock_call_run(struct qd_call *call);
/* What happened; valid until qd_mock_call_free. */
const qd_mock_result *qd_mock_call_result(const struct qd_call *call);
/* Accepts NULL. */
void qd_mock_call_free(struct qd_call *call);

/* "OK", "INVALID_ARGUMENT", ... for messages; "?" outside 0..16. */
const char *qd_mock_status_name(int status);

#endif /* QD_MOCK_CALL_H */
