/*
 * fuzz-rpc.c - libFuzzer target for the request decoding of one RPC: the handler of the
 * method named by the compile definition QD_FUZZ_RPC ("/quantd.v1.Quantd/PutModel", ...),
 * run through the in-process transport of mock-call.h against a real service core on a
 * temporary data directory. One binary per method (tests/fuzz/rpc.cmake builds all of them);
 * built with replay.c, each replays its corpus tests/corpus/rpc-<name>/ on every test run.
 *
 * DESIGN
 * Input. For a unary or server-streaming method the whole input is the request message. For
 * a client-streaming one (PutModel) it is a sequence of messages, each a 2-byte little-endian
 * length and that many bytes (a short last one takes what is left); the stream then ends.
 * Every call carries a valid bearer token, so the handler behind the role check is what gets
 * fuzzed (the refusals themselves are checked once at start-up): an admin's, which sees
 * everything, for inputs of even length, and for odd ones a submit token's where the method
 * allows it, which the service shows only what it owns - so both sides of the ownership rules
 * see the same inputs.
 *
 * State. The service and the handlers' state (qd_rpc) are made once per process and kept
 * across inputs, as a running daemon keeps them (so PutModel can meet a bundle an earlier
 * input began); every RESET_EVERY inputs they are rebuilt on a fresh directory, so the data
 * directory stays small during a long run. Jobs never run: nothing but the PutModel target
 * uploads, so every Quantize names an unknown model and is refused before queueing.
 *
 * Oracles, after each input (a failure prints the reason and aborts, which libFuzzer and the
 * replay both report as a crash):
 *   - the transport contract (mock-call.h): one action per step, one finish with a gRPC
 *     status, details on every failure, nothing sent after the finish;
 *   - the call ended (no method may run on past a drain here: no job is running);
 *   - every message sent is the method's response type;
 *   - details carry no control characters (untrusted text is quoted before it is echoed);
 *   - a request this harness cannot decode either is INVALID_ARGUMENT "malformed ...";
 *   - what an empty server must answer: no job or artifact is ever found, lists are empty,
 *     GetServerInfo and Health answer, Health/Watch ends UNAVAILABLE on the drain.
 *
 * QD_FUZZ_TRACE=1 prints one line per call (status, details); QD_FUZZ_LOG=0..4 shows the
 * handlers' log lines from that level on; QD_FUZZ_ALLOW_CONTROL=1 skips the control character
 * oracle, to fuzz on past a finding of it that is not fixed yet.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "config.h"
#include "fsutil.h"
#include "fuzz.h"
#include "health.pb-c.h"
#include "mock-call.h"
#include "quantd.pb-c.h"
#include "rpc.h"
#include "service.h"

#ifndef QD_FUZZ_RPC
#error "define QD_FUZZ_RPC as the method's path, e.g. \"/quantd.v1.Quantd/PutModel\""
#endif

int LLVMFuzzerInitialize(int *argc, char ***argv);

#define ADMIN_TOKEN "quantd-fuzz-admin"
#define SUBMIT_TOKEN "quantd-fuzz-submit"
#define READ_TOKEN "quantd-fuzz-read"
/* Inputs between two rebuilds of the service on a fresh data directory. */
#define RESET_EVERY 4096
/* Messages taken from one client-streaming input. */
#define MAX_STREAM_MESSAGES 64
/* gRPC status codes used below (grpc/status.h). */
#define ST_OK 0
#define ST_INVALID_ARGUMENT 3
#define ST_PERMISSION_DENIED 7
#define ST_UNAVAILABLE 14
#define ST_UNAUTHENTICATED 16

/* What an empty server must answer, beyond the contract. */
enum expect {
    EXPECT_ANY,         /* no more than the contract (PutModel, StatModel) */
    EXPECT_NEVER_OK,    /* nothing to find: never OK, nothing streamed */
    EXPECT_EMPTY_LIST,  /* OK only with an empty page and no next token */
    EXPECT_OK,          /* always answers */
    EXPECT_HEALTH,      /* OK SERVING for "" and quantd.v1.Quantd, else NOT_FOUND */
    EXPECT_HEALTH_WATCH /* the status, NOT_SERVING on the drain, then UNAVAILABLE */
};

struct target {
    const char *path;
    const ProtobufCMessageDescriptor *request, *response;
    int role; /* qd_config_role needed; -1: open */
    enum expect expect;
};

static const struct target targets[] = {
    {"/quantd.v1.Quantd/PutModel", &quantd__v1__put_model_request__descriptor,
     &quantd__v1__put_model_response__descriptor, QD_ROLE_SUBMIT, EXPECT_ANY},
    {"/quantd.v1.Quantd/StatModel", &quantd__v1__stat_model_request__descriptor,
     &quantd__v1__stat_model_response__descriptor, QD_ROLE_READ, EXPECT_ANY},
    {"/quantd.v1.Quantd/Quantize", &quantd__v1__quantize_request__descriptor,
     &quantd__v1__quantize_response__descriptor, QD_ROLE_SUBMIT, EXPECT_NEVER_OK},
    {"/quantd.v1.Quantd/WatchJob", &quantd__v1__watch_job_request__descriptor,
     &quantd__v1__job_event__descriptor, QD_ROLE_READ, EXPECT_NEVER_OK},
    {"/quantd.v1.Quantd/GetJob", &quantd__v1__get_job_request__descriptor,
     &quantd__v1__get_job_response__descriptor, QD_ROLE_READ, EXPECT_NEVER_OK},
    {"/quantd.v1.Quantd/ListJobs", &quantd__v1__list_jobs_request__descriptor,
     &quantd__v1__list_jobs_response__descriptor, QD_ROLE_READ, EXPECT_EMPTY_LIST},
    {"/quantd.v1.Quantd/CancelJob", &quantd__v1__cancel_job_request__descriptor,
     &quantd__v1__cancel_job_response__descriptor, QD_ROLE_SUBMIT, EXPECT_NEVER_OK},
    {"/quantd.v1.Quantd/GetArtifact", &quantd__v1__get_artifact_request__descriptor,
     &quantd__v1__get_artifact_response__descriptor, QD_ROLE_READ, EXPECT_NEVER_OK},
    {"/quantd.v1.Quantd/ListArtifacts", &quantd__v1__list_artifacts_request__descriptor,
     &quantd__v1__list_artifacts_response__descriptor, QD_ROLE_READ, EXPECT_EMPTY_LIST},
    {"/quantd.v1.Quantd/DeleteArtifact", &quantd__v1__delete_artifact_request__descriptor,
     &quantd__v1__delete_artifact_response__descriptor, QD_ROLE_ADMIN, EXPECT_NEVER_OK},
    {"/quantd.v1.Quantd/GetServerInfo", &quantd__v1__get_server_info_request__descriptor,
     &quantd__v1__get_server_info_response__descriptor, QD_ROLE_READ, EXPECT_OK},
    {"/grpc.health.v1.Health/Check", &grpc__health__v1__health_check_request__descriptor,
     &grpc__health__v1__health_check_response__descriptor, -1, EXPECT_HEALTH},
    {"/grpc.health.v1.Health/Watch", &grpc__health__v1__health_check_request__descriptor,
     &grpc__health__v1__health_check_response__descriptor, -1, EXPECT_HEALTH_WATCH},
};
#define N_TARGETS (sizeof targets / sizeof targets[0])

static struct {
    bool ready;
    char tmp[4096];  /* this process's directory; data/N below it */
    unsigned generation;
    qd_config cfg;
    struct qd_service *svc;
    struct qd_rpc *rpc;
    const qd_rpc_method *method;
    const struct target *target;
    unsigned long inputs;
    bool trace;         /* QD_FUZZ_TRACE set: one line per call on stderr */
    bool allow_control; /* QD_FUZZ_ALLOW_CONTROL set: skip that oracle */
} g;

/* ---- failing --------------------------------------------------------------------------------- */

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "fuzz-rpc %s: ", QD_FUZZ_RPC);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    /* The abort skips the exit handler: do not leave the data directory behind. */
    if (g.tmp[0]) (void)qd_remove_tree(g.tmp, NULL);
    abort();
}

static void die_call(const qd_mock_result *r, const char *what) __attribute__((noreturn));
static void die_call(const qd_mock_result *r, const char *what) {
    die("%s (call: %s%s, status %d %s, details '%s', %zu sent, %zu steps%s)", what,
        r->finished ? "finished" : "not finished", r->cancelled ? ", cancelled" : "", r->status,
        qd_mock_status_name(r->status), r->details, r->n_sent, r->n_steps,
        r->drained ? ", drained" : "");
}

/* ---- set-up ---------------------------------------------------------------------------------- */

/* "ROLE:SHA256HEX:NAME" for token. */
static void token_entry(char *buf, size_t cap, const char *role, const char *token,
                        const char *name) {
    unsigned char d[32];
    unsigned int dl = 0;
    if (EVP_Digest(token, strlen(token), d, &dl, EVP_sha256(), NULL) != 1 || dl != sizeof d)
        die("cannot hash the test token");
    char hex[65];
    for (size_t i = 0; i < sizeof d; i++) snprintf(hex + 2 * i, 3, "%02x", d[i]);
    snprintf(buf, cap, "%s:%s:%s", role, hex, name);
}

static char *dup_or_die(const char *s) {
    char *d = strdup(s);
    if (!d) die("out of memory");
    return d;
}

/* A config on dir: the CPU worker the service always keeps, one queued job at most, and three
 * tokens (admin and submit for the fuzzed calls, read for the role check). */
static void make_config(const char *dir) {
    qd_error err = {0};
    memset(&g.cfg, 0, sizeof g.cfg);
    if (qd_config_init_defaults(&g.cfg, &err) != QD_OK) die("config: %s", qd_error_text(&err));
    free(g.cfg.data_dir);
    g.cfg.data_dir = dup_or_die(dir);
    g.cfg.workers.cpu = 1;
    g.cfg.workers.threads = 1;
    for (size_t i = 0; i < g.cfg.n_devices; i++) free(g.cfg.devices[i]);
    free(g.cfg.devices);
    g.cfg.devices = calloc(1, sizeof *g.cfg.devices);
    if (!g.cfg.devices) die("out of memory");
    g.cfg.devices[0] = dup_or_die("cpu");
    g.cfg.n_devices = 1;
    g.cfg.limits.max_queued_jobs = 1;
    g.cfg.auth.tokens = calloc(3, sizeof *g.cfg.auth.tokens);
    if (!g.cfg.auth.tokens) die("out of memory");
    char e[256];
    token_entry(e, sizeof e, "admin", ADMIN_TOKEN, "fuzz-admin");
    g.cfg.auth.tokens[0] = dup_or_die(e);
    token_entry(e, sizeof e, "submit", SUBMIT_TOKEN, "fuzz-submit");
    g.cfg.auth.tokens[1] = dup_or_die(e);
    token_entry(e, sizeof e, "read", READ_TOKEN, "fuzz-read");
    g.cfg.auth.tokens[2] = dup_or_die(e);
    g.cfg.auth.n_tokens = 3;
}

static void open_service(void) {
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/data%u", g.tmp, g.generation++);
    make_config(dir);
    qd_error err = {0};
    if (qd_service_open(&g.cfg, &g.svc, &err) != QD_OK)
        die("qd_service_open: %s", qd_error_text(&err));
    if (qd_rpc_create(g.svc, &g.cfg, &g.rpc, &err) != QD_OK)
        die("qd_rpc_create: %s", qd_error_text(&err));
}

static void close_service(void) {
    qd_rpc_free(g.rpc);
    g.rpc = NULL;
    qd_service_close(g.svc);
    g.svc = NULL;
    if (g.cfg.data_dir) (void)qd_remove_tree(g.cfg.data_dir, NULL);
    qd_config_free(&g.cfg);
}

static void at_exit(void) {
    if (!g.ready) return;
    close_service();
    (void)qd_remove_tree(g.tmp, NULL);
    g.ready = false;
}

/* ---- one call -------------------------------------------------------------------------------- */

/* Run one call of the target method with the given client messages; returns it (to free). */
static struct qd_call *call_with(const char *authorization, const uint8_t *const *msgs,
                                 const size_t *lens, size_t n) {
    qd_mock_options opt = {0};
    opt.app = g.rpc;
    opt.max_message_bytes = g.cfg.limits.max_message_bytes;
    opt.authorization = authorization;
    struct qd_call *call;
    qd_error err = {0};
    if (qd_mock_call_new(g.method, &opt, &call, &err) != QD_OK)
        die("mock call: %s", qd_error_text(&err));
    for (size_t i = 0; i < n; i++)
        if (qd_mock_call_add_message(call, msgs[i], lens[i], &err) != QD_OK)
            die("mock call: %s", qd_error_text(&err));
    qd_mock_call_run(call);
    return call;
}

static bool has_control(const char *s) {
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s == 0x7f) return true;
    return false;
}

/* The contract and the checks that hold for every call. */
static void check_common(const qd_mock_result *r) {
    if (r->violation[0]) die_call(r, r->violation);
    if (!r->finished) die_call(r, "the call never finished");
    if (!g.allow_control && has_control(r->details))
        die_call(r, "control characters in the details");
    size_t kept = r->n_sent < QD_MOCK_MAX_KEPT ? r->n_sent : QD_MOCK_MAX_KEPT;
    for (size_t i = 0; i < kept; i++)
        if (r->sent[i].desc != g.target->response)
            die_call(r, "a streamed message is not of the response type");
    if (r->has_reply && r->reply.desc != g.target->response)
        die_call(r, "the response is not of the response type");
}

static ProtobufCMessage *unpack(const ProtobufCMessageDescriptor *d, const qd_mock_message *m) {
    return protobuf_c_message_unpack(d, NULL, m->len, m->data);
}

static void check_health_status(const qd_mock_result *r, const qd_mock_message *m, int want) {
    Grpc__Health__V1__HealthCheckResponse *h =
        (void *)unpack(&grpc__health__v1__health_check_response__descriptor, m);
    if (!h) die_call(r, "a HealthCheckResponse does not decode");
    int got = (int)h->status;
    protobuf_c_message_free_unpacked(&h->base, NULL);
    if (got != want) die_call(r, "Health answered the wrong serving status");
}

/* What an empty server must answer to a request that decodes (req) or not (NULL). */
static void check_expectation(const qd_mock_result *r, const ProtobufCMessage *req) {
    if (!req) {
        if (r->status != ST_INVALID_ARGUMENT || strncmp(r->details, "malformed ", 10) != 0)
            die_call(r, "a request that does not decode was not refused as malformed");
        return;
    }
    switch (g.target->expect) {
    case EXPECT_ANY:
        break;
    case EXPECT_NEVER_OK:
        if (r->status == ST_OK || r->n_sent) die_call(r, "found something on an empty server");
        break;
    case EXPECT_EMPTY_LIST: {
        if (r->status != ST_OK) break;
        if (!r->has_reply) die_call(r, "a list without its response");
        ProtobufCMessage *m = unpack(g.target->response, &r->reply);
        if (!m) die_call(r, "the list response does not decode");
        bool empty;
        if (g.target->response == &quantd__v1__list_jobs_response__descriptor) {
            const Quantd__V1__ListJobsResponse *l = (const void *)m;
            empty = l->n_jobs == 0 && !l->next_page_token[0];
        } else {
            const Quantd__V1__ListArtifactsResponse *l = (const void *)m;
            empty = l->n_artifacts == 0 && !l->next_page_token[0];
        }
        protobuf_c_message_free_unpacked(m, NULL);
        if (!empty) die_call(r, "a list of an empty server is not empty");
        break;
    }
    case EXPECT_OK:
        if (r->status != ST_OK) die_call(r, "a request that decodes was refused");
        break;
    case EXPECT_HEALTH:
    case EXPECT_HEALTH_WATCH: {
        const Grpc__Health__V1__HealthCheckRequest *h = (const void *)req;
        bool known = !h->service[0] || strcmp(h->service, "quantd.v1.Quantd") == 0;
        if (g.target->expect == EXPECT_HEALTH) {
            if (r->status != (known ? ST_OK : 5 /* NOT_FOUND */))
                die_call(r, "Health/Check answered the wrong status");
            if (known)
                check_health_status(
                    r, &r->reply, GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);
            break;
        }
        if (r->status != ST_UNAVAILABLE || !r->drained || r->n_sent < 1)
            die_call(r, "Health/Watch did not stream until the drain");
        check_health_status(
            r, &r->sent[0],
            known ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
                  : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN);
        if (known && r->n_sent != 2)
            die_call(r, "Health/Watch of a served service sent other than SERVING, NOT_SERVING");
        break;
    }
    }
}

/* Split a client-streaming input into messages (see the header comment). */
static size_t split_stream(const uint8_t *data, size_t size, const uint8_t **msgs, size_t *lens) {
    size_t n = 0, off = 0;
    while (n < MAX_STREAM_MESSAGES && size - off >= 2) {
        size_t want = (size_t)data[off] | (size_t)data[off + 1] << 8;
        off += 2;
        size_t take = want < size - off ? want : size - off;
        msgs[n] = data + off;
        lens[n] = take;
        n++;
        off += take;
    }
    return n;
}

static void run_input(const uint8_t *data, size_t size) {
    static const uint8_t empty[1];
    if (!data) data = empty;
    const uint8_t *msgs[MAX_STREAM_MESSAGES] = {NULL};
    size_t lens[MAX_STREAM_MESSAGES] = {0};
    size_t n;
    if (g.method->kind == QD_RPC_CLIENT_STREAMING) {
        n = split_stream(data, size, msgs, lens);
    } else {
        msgs[0] = data;
        lens[0] = size;
        n = 1;
    }
    bool submit = (size & 1) && g.target->role >= 0 && g.target->role <= QD_ROLE_SUBMIT;
    struct qd_call *call =
        call_with(submit ? "Bearer " SUBMIT_TOKEN : "Bearer " ADMIN_TOKEN, msgs, lens, n);
    const qd_mock_result *r = qd_mock_call_result(call);
    if (g.trace)
        fprintf(stderr, "%s: %zu bytes, %zu message%s: %s '%s', %zu sent, %zu steps\n",
                QD_FUZZ_RPC, size, n, n == 1 ? "" : "s", qd_mock_status_name(r->status),
                r->details, r->n_sent, r->n_steps);
    check_common(r);
    if (n > 0) {
        /* The first message decides the answer when it does not decode. */
        ProtobufCMessage *req = protobuf_c_message_unpack(g.target->request, NULL, lens[0],
                                                          msgs[0]);
        if (g.method->kind != QD_RPC_CLIENT_STREAMING || !req) check_expectation(r, req);
        if (req) protobuf_c_message_free_unpacked(req, NULL);
    }
    qd_mock_call_free(call);
}

/* ---- start-up checks ------------------------------------------------------------------------- */

/* The calls whose answer is known whatever the fuzzer does: no message at all, and the role
 * check. A harness that got these wrong would fuzz nothing but the refusal. */
static void self_test(void) {
    static const uint8_t nothing[1];
    const uint8_t *empty_msg[1] = {nothing};
    size_t empty_len[1] = {0};

    /* No message: a unary or server-streaming call without its request, a client stream
     * that ends at once. */
    struct qd_call *c = call_with("Bearer " ADMIN_TOKEN, NULL, NULL, 0);
    const qd_mock_result *r = qd_mock_call_result(c);
    check_common(r);
    if (r->status != ST_INVALID_ARGUMENT) die_call(r, "a call without a request was not refused");
    qd_mock_call_free(c);

    /* An empty message (every field default) as the admin: past the role check. */
    c = call_with("Bearer " ADMIN_TOKEN, empty_msg, empty_len, 1);
    r = qd_mock_call_result(c);
    check_common(r);
    if (r->status == ST_UNAUTHENTICATED || r->status == ST_PERMISSION_DENIED)
        die_call(r, "the admin token was refused");
    qd_mock_call_free(c);

    /* The submit token: past the role check except for an admin's method. */
    c = call_with("Bearer " SUBMIT_TOKEN, empty_msg, empty_len, 1);
    r = qd_mock_call_result(c);
    check_common(r);
    if (r->status == ST_UNAUTHENTICATED ||
        (r->status == ST_PERMISSION_DENIED) != (g.target->role > QD_ROLE_SUBMIT))
        die_call(r, "the submit token was refused or let in wrongly");
    qd_mock_call_free(c);

    static const char *const bad[] = {NULL, "Bearer", "Bearer wrong-token", "Basic " ADMIN_TOKEN,
                                      ADMIN_TOKEN};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        c = call_with(bad[i], empty_msg, empty_len, 1);
        r = qd_mock_call_result(c);
        check_common(r);
        bool refused = r->status == ST_UNAUTHENTICATED;
        if (g.target->role >= 0 && !refused) die_call(r, "a call without a valid token got in");
        if (g.target->role < 0 && refused) die_call(r, "Health asked for a token");
        if (refused && strstr(r->details, ADMIN_TOKEN)) die_call(r, "the token was echoed");
        qd_mock_call_free(c);
    }

    c = call_with("Bearer " READ_TOKEN, empty_msg, empty_len, 1);
    r = qd_mock_call_result(c);
    check_common(r);
    if (g.target->role > QD_ROLE_READ) {
        const char *name = strrchr(QD_FUZZ_RPC, '/') + 1;
        if (r->status != ST_PERMISSION_DENIED || !strstr(r->details, name))
            die_call(r, "a read token was not denied a method that needs more");
    } else if (r->status == ST_UNAUTHENTICATED || r->status == ST_PERMISSION_DENIED) {
        die_call(r, "a read token was refused a method that needs no more");
    }
    qd_mock_call_free(c);
}

static void setup(void) {
    if (g.ready) return;
    size_t n;
    const qd_rpc_method *m = qd_rpc_methods(&n);
    /* Every method has a target here and in rpc.cmake: a new RPC fails this until it has. */
    for (size_t i = 0; i < n; i++) {
        size_t k = 0;
        while (k < N_TARGETS && strcmp(targets[k].path, m[i].path) != 0) k++;
        if (k == N_TARGETS)
            die("method %s has no fuzz target: add it to tests/fuzz/fuzz-rpc.c and rpc.cmake",
                m[i].path);
        if (strcmp(m[i].path, QD_FUZZ_RPC) == 0) {
            g.method = &m[i];
            g.target = &targets[k];
        }
    }
    if (!g.method) die("not in the method table (qd_rpc_methods)");

    const char *tmp = getenv("TMPDIR");
    snprintf(g.tmp, sizeof g.tmp, "%s/qd-fuzz-rpc-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(g.tmp)) die("cannot make a directory from %s", g.tmp);
    /* Quiet unless asked: QD_FUZZ_LOG=0..4 (error..debug). */
    g.trace = getenv("QD_FUZZ_TRACE") != NULL;
    g.allow_control = getenv("QD_FUZZ_ALLOW_CONTROL") != NULL;
    const char *lv = getenv("QD_FUZZ_LOG");
    qd_server_set_log_level(lv && lv[0] >= '0' && lv[0] <= '4' && !lv[1] ? lv[0] - '0' : 0);
    open_service();
    g.ready = true;
    atexit(at_exit);
    self_test();
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    setup();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    setup(); /* the replay program has no LLVMFuzzerInitialize */
    if (++g.inputs % RESET_EVERY == 0) {
        close_service();
        open_service();
    }
    run_input(data, size);
    return 0;
}
