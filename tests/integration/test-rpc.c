/*
 * test-rpc.c - `quantd serve` end to end, driven by a raw gRPC C-core client: the daemon is
 * started on 127.0.0.1:0 with a temporary data directory and a small config, its port read
 * from the "quantd: listening on" line, and every check talks to it over the wire.
 *
 * What is checked: health (Check, and a Watch the client cancels), server info (the limits
 * of the config file), malformed and oversized requests, PutModel's refusals (sha256
 * mismatch, a chunk past the declared size, bad expected digests, a missing header),
 * Quantize's refusals (unknown model, invalid specs), unknown job ids; that the daemon still
 * answers after all of it; then the real path: the babyllama model and its calibration set
 * uploaded, Quantize RTN into format awq, WatchJob until DONE, GetArtifact with every file's
 * sha256 and the manifest digest recomputed here, a resumed download, a cache hit, delete.
 * Last, SIGHUP reloads the config (a valid file and an invalid one) and SIGTERM must end the
 * daemon with status 0 (under the sanitizer build that includes a clean leak check).
 *
 * Digests are computed here from the rules in proto/quantd.proto, not with quantd's code, so
 * the test can catch a server that gets them wrong.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/status.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <openssl/evp.h>

#include "error.h"
#include "fsutil.h"
#include "health.pb-c.h"
#include "quantd.pb-c.h"
#include "test.h"

#ifndef QD_QUANTD
#error "QD_QUANTD (the quantd binary) must be defined by the build"
#endif

#define MODEL_DIR QD_SOURCE_DIR "/examples/models/babyllama"
#define CALIB_DIR QD_SOURCE_DIR "/examples/data/babyllama"
#define MAX_MESSAGE (1u << 20) /* limits.max_message_bytes of the test config */
#define CHUNK (256u << 10)     /* limits.chunk_bytes of the test config */
#define CHUNK_RELOADED (128u << 10)

/* ---- the daemon ------------------------------------------------------------------------------ */

static struct {
    bool started, failed;
    pid_t pid;
    int err_fd;
    pthread_t reader;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    char *log; /* everything it wrote on stderr */
    size_t log_len, log_cap;
    bool eof;
    char dir[256], config[300], target[64];
    grpc_channel *ch;
    grpc_completion_queue *cq;
} D = {.mu = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};

static void *read_stderr(void *arg) {
    (void)arg;
    char buf[4096];
    for (;;) {
        ssize_t n = read(D.err_fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        pthread_mutex_lock(&D.mu);
        if (n <= 0) {
            D.eof = true;
            pthread_cond_broadcast(&D.cond);
            pthread_mutex_unlock(&D.mu);
            return NULL;
        }
        if (D.log_len + (size_t)n + 1 > D.log_cap) {
            size_t cap = (D.log_cap ? D.log_cap * 2 : 65536) + (size_t)n;
            char *p = realloc(D.log, cap);
            if (p) {
                D.log = p;
                D.log_cap = cap;
            }
        }
        if (D.log_len + (size_t)n + 1 <= D.log_cap) {
            memcpy(D.log + D.log_len, buf, (size_t)n);
            D.log_len += (size_t)n;
            D.log[D.log_len] = '\0';
        }
        pthread_cond_broadcast(&D.cond);
        pthread_mutex_unlock(&D.mu);
        fwrite(buf, 1, (size_t)n, stderr); /* the daemon's log, for a failing run */
    }
}

/* Wait up to seconds for text to appear in the daemon's stderr after offset `from`. Returns
 * a pointer into a copy-free view (valid while the log is not reallocated: use at once). */
static bool wait_log(const char *text, size_t from, int seconds) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += seconds;
    bool found = false;
    pthread_mutex_lock(&D.mu);
    for (;;) {
        if (D.log && D.log_len > from && strstr(D.log + from, text)) {
            found = true;
            break;
        }
        if (D.eof) break;
        if (pthread_cond_timedwait(&D.cond, &D.mu, &ts) == ETIMEDOUT) break;
    }
    pthread_mutex_unlock(&D.mu);
    return found;
}

static size_t log_mark(void) {
    pthread_mutex_lock(&D.mu);
    size_t n = D.log_len;
    pthread_mutex_unlock(&D.mu);
    return n;
}

static bool write_text(const char *path, const char *text) {
    qd_error err = {0};
    return qd_write_file_atomic(path, text, strlen(text), &err) == QD_OK;
}

static const char config_text[] = "log_level: debug\n"
                                  "workers:\n"
                                  "  cpu: 1\n"
                                  "  threads: 2\n"
                                  "limits:\n"
                                  "  max_message_bytes: 1MiB\n"
                                  "  chunk_bytes: 256KiB\n"
                                  "shutdown:\n"
                                  "  drain_seconds: 10s\n";

/* Start the daemon once; every test calls this first. */
static bool daemon_up(void) {
    if (D.started) return !D.failed;
    D.started = true;
    D.failed = true;
    const char *tmp = getenv("TMPDIR");
    snprintf(D.dir, sizeof D.dir, "%s/quantd-test-rpc-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(D.dir)) return false;
    snprintf(D.config, sizeof D.config, "%s/quantd.yaml", D.dir);
    if (!write_text(D.config, config_text)) return false;
    char data[300];
    snprintf(data, sizeof data, "%s/data", D.dir);

    int p[2];
    if (pipe(p) != 0) return false;
    D.pid = fork();
    if (D.pid < 0) return false;
    if (D.pid == 0) {
        dup2(p[1], STDERR_FILENO);
        close(p[0]);
        close(p[1]);
        setenv("XDG_STATE_HOME", D.dir, 1); /* never the user's own state directory */
        execl(QD_QUANTD, "quantd", "serve", "--config", D.config, "--data-dir", data,
              "--listen", "127.0.0.1:0", (char *)NULL);
        _exit(127);
    }
    close(p[1]);
    D.err_fd = p[0];
    if (pthread_create(&D.reader, NULL, read_stderr, NULL) != 0) return false;

    const char *key = "quantd: listening on 127.0.0.1:";
    if (!wait_log(key, 0, 30)) {
        fprintf(stderr, "the daemon did not say it was listening\n");
        kill(D.pid, SIGKILL);
        waitpid(D.pid, NULL, 0);
        return false;
    }
    pthread_mutex_lock(&D.mu);
    const char *at = strstr(D.log, key) + strlen(key);
    unsigned port = 0;
    while (*at >= '0' && *at <= '9') port = port * 10 + (unsigned)(*at++ - '0');
    pthread_mutex_unlock(&D.mu);
    if (port == 0 || port > 65535) return false;
    snprintf(D.target, sizeof D.target, "127.0.0.1:%u", port);

    grpc_init();
    grpc_channel_credentials *creds = grpc_insecure_credentials_create();
    grpc_arg arg = {.type = GRPC_ARG_INTEGER,
                    .key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH,
                    .value.integer = 8 << 20};
    grpc_channel_args args = {.num_args = 1, .args = &arg};
    D.ch = grpc_channel_create(D.target, creds, &args);
    grpc_channel_credentials_release(creds);
    D.cq = grpc_completion_queue_create_for_pluck(NULL);
    D.failed = false;
    return true;
}

/* ---- a blocking client ----------------------------------------------------------------------- */

struct result {
    grpc_status_code status;
    char details[1024];
    uint8_t *resp; /* the last response message */
    size_t resp_len;
    bool have_resp;
};

static void result_clear(struct result *r) {
    free(r->resp);
    memset(r, 0, sizeof *r);
}

static gpr_timespec in_seconds(int s) {
    return gpr_time_add(gpr_now(GPR_CLOCK_REALTIME), gpr_time_from_seconds(s, GPR_TIMESPAN));
}

static bool batch(grpc_call *call, grpc_op *ops, size_t n, void *tag) {
    if (grpc_call_start_batch(call, ops, n, tag, NULL) != GRPC_CALL_OK) return false;
    grpc_event ev = grpc_completion_queue_pluck(D.cq, tag, in_seconds(120), NULL);
    return ev.type == GRPC_OP_COMPLETE && ev.success;
}

static grpc_byte_buffer *raw_buffer(const void *data, size_t n) {
    grpc_slice s = grpc_slice_from_copied_buffer(data, n);
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    return bb;
}

static grpc_byte_buffer *pb_buffer(const ProtobufCMessage *m) {
    size_t n = protobuf_c_message_get_packed_size(m);
    grpc_slice s = grpc_slice_malloc(n);
    protobuf_c_message_pack(m, GRPC_SLICE_START_PTR(s));
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    return bb;
}

/* Take a received buffer into r->resp. */
static void take_message(struct result *r, grpc_byte_buffer *bb) {
    free(r->resp);
    r->resp = NULL;
    r->resp_len = 0;
    r->have_resp = bb != NULL;
    if (!bb) return;
    grpc_byte_buffer_reader rd;
    grpc_byte_buffer_reader_init(&rd, bb);
    grpc_slice s = grpc_byte_buffer_reader_readall(&rd);
    grpc_byte_buffer_reader_destroy(&rd);
    r->resp_len = GRPC_SLICE_LENGTH(s);
    r->resp = malloc(r->resp_len ? r->resp_len : 1);
    if (r->resp_len) memcpy(r->resp, GRPC_SLICE_START_PTR(s), r->resp_len);
    grpc_slice_unref(s);
    grpc_byte_buffer_destroy(bb);
}

static void take_details(struct result *r, grpc_slice d) {
    size_t n = GRPC_SLICE_LENGTH(d);
    if (n >= sizeof r->details) n = sizeof r->details - 1;
    memcpy(r->details, GRPC_SLICE_START_PTR(d), n);
    r->details[n] = '\0';
    grpc_slice_unref(d);
}

static grpc_call *new_call(const char *method, int seconds) {
    return grpc_channel_create_call(D.ch, NULL, GRPC_PROPAGATE_DEFAULTS, D.cq,
                                    grpc_slice_from_static_string(method), NULL,
                                    in_seconds(seconds), NULL);
}

/* One unary call with the request bytes given as they are. */
static void unary_raw(const char *method, grpc_byte_buffer *req, struct result *r) {
    result_clear(r);
    grpc_call *call = new_call(method, 30);
    grpc_metadata_array init_md, trail_md;
    grpc_metadata_array_init(&init_md);
    grpc_metadata_array_init(&trail_md);
    grpc_byte_buffer *resp = NULL;
    grpc_slice details = grpc_empty_slice();
    const char *error_string = NULL;
    grpc_op ops[6];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = req;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &init_md;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = &resp;
    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[5].data.recv_status_on_client.trailing_metadata = &trail_md;
    ops[5].data.recv_status_on_client.status = &r->status;
    ops[5].data.recv_status_on_client.status_details = &details;
    ops[5].data.recv_status_on_client.error_string = &error_string;
    if (!batch(call, ops, 6, (void *)1)) r->status = GRPC_STATUS_UNKNOWN;
    take_details(r, details);
    take_message(r, resp);
    gpr_free((void *)error_string);
    grpc_metadata_array_destroy(&init_md);
    grpc_metadata_array_destroy(&trail_md);
    grpc_byte_buffer_destroy(req);
    grpc_call_unref(call);
}

static void unary(const char *method, const ProtobufCMessage *req, struct result *r) {
    unary_raw(method, pb_buffer(req), r);
}

/* A client stream: RECV_STATUS posted first, so a server error is seen while sending. */
struct cstream {
    grpc_call *call;
    grpc_metadata_array init_md, trail_md;
    grpc_slice details;
    const char *error_string;
    grpc_status_code status;
    bool broken; /* a send failed: the server ended the call */
};

static void cs_begin(struct cstream *s, const char *method) {
    memset(s, 0, sizeof *s);
    s->call = new_call(method, 60);
    grpc_metadata_array_init(&s->init_md);
    grpc_metadata_array_init(&s->trail_md);
    s->details = grpc_empty_slice();
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    op.data.recv_status_on_client.trailing_metadata = &s->trail_md;
    op.data.recv_status_on_client.status = &s->status;
    op.data.recv_status_on_client.status_details = &s->details;
    op.data.recv_status_on_client.error_string = &s->error_string;
    grpc_call_start_batch(s->call, &op, 1, (void *)10, NULL);
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_SEND_INITIAL_METADATA;
    if (!batch(s->call, &op, 1, (void *)11)) s->broken = true;
}

/* Send one message (taking bb); false once the call is broken. */
static bool cs_send(struct cstream *s, grpc_byte_buffer *bb) {
    if (!s->broken) {
        grpc_op op;
        memset(&op, 0, sizeof op);
        op.op = GRPC_OP_SEND_MESSAGE;
        op.data.send_message.send_message = bb;
        if (!batch(s->call, &op, 1, (void *)12)) s->broken = true;
    }
    grpc_byte_buffer_destroy(bb);
    return !s->broken;
}

/* End a client stream: half-close and take the answer, or (half_close false) only wait for the
 * server to end the call by itself. */
static void cs_end(struct cstream *s, struct result *r, bool half_close) {
    result_clear(r);
    grpc_byte_buffer *resp = NULL;
    if (half_close) {
        grpc_op ops[3];
        memset(ops, 0, sizeof ops);
        ops[0].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
        ops[1].op = GRPC_OP_RECV_INITIAL_METADATA;
        ops[1].data.recv_initial_metadata.recv_initial_metadata = &s->init_md;
        ops[2].op = GRPC_OP_RECV_MESSAGE;
        ops[2].data.recv_message.recv_message = &resp;
        batch(s->call, ops, 3, (void *)13);
    } else {
        /* With only RECV_STATUS posted, the core (1.51) does not see the server's cancel until
         * the deadline; a pending RECV_INITIAL_METADATA lets the status through at once. */
        grpc_op op;
        memset(&op, 0, sizeof op);
        op.op = GRPC_OP_RECV_INITIAL_METADATA;
        op.data.recv_initial_metadata.recv_initial_metadata = &s->init_md;
        grpc_call_start_batch(s->call, &op, 1, (void *)14, NULL);
    }
    grpc_completion_queue_pluck(D.cq, (void *)10, in_seconds(120), NULL);
    r->status = s->status;
    take_details(r, s->details);
    take_message(r, resp);
    gpr_free((void *)s->error_string);
    grpc_metadata_array_destroy(&s->init_md);
    grpc_metadata_array_destroy(&s->trail_md);
    grpc_call_unref(s->call);
}

static void cs_finish(struct cstream *s, struct result *r) { cs_end(s, r, true); }

/* A server stream: on_msg is called for each message; returning false cancels the call. */
typedef bool (*msg_fn)(void *ctx, const uint8_t *msg, size_t len);

static void server_stream(const char *method, const ProtobufCMessage *req, int seconds,
                          msg_fn on_msg, void *ctx, struct result *r) {
    result_clear(r);
    grpc_call *call = new_call(method, seconds);
    grpc_metadata_array init_md, trail_md;
    grpc_metadata_array_init(&init_md);
    grpc_metadata_array_init(&trail_md);
    grpc_op ops[4];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = pb_buffer(req);
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &init_md;
    batch(call, ops, 4, (void *)20);
    grpc_byte_buffer_destroy(ops[1].data.send_message.send_message);
    for (;;) {
        grpc_byte_buffer *bb = NULL;
        memset(ops, 0, sizeof ops);
        ops[0].op = GRPC_OP_RECV_MESSAGE;
        ops[0].data.recv_message.recv_message = &bb;
        if (!batch(call, ops, 1, (void *)21) || !bb) break;
        take_message(r, bb);
        if (!on_msg(ctx, r->resp, r->resp_len)) {
            grpc_call_cancel(call, NULL);
            break;
        }
    }
    grpc_slice details = grpc_empty_slice();
    const char *error_string = NULL;
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[0].data.recv_status_on_client.trailing_metadata = &trail_md;
    ops[0].data.recv_status_on_client.status = &r->status;
    ops[0].data.recv_status_on_client.status_details = &details;
    ops[0].data.recv_status_on_client.error_string = &error_string;
    batch(call, ops, 1, (void *)22);
    take_details(r, details);
    gpr_free((void *)error_string);
    grpc_metadata_array_destroy(&init_md);
    grpc_metadata_array_destroy(&trail_md);
    grpc_call_unref(call);
}

#define CHECK_STATUS(r, want, text)                                                              \
    do {                                                                                         \
        QD_CHECK_MSG((r).status == (want), "status %d, want %d (%s): %s", (int)(r).status,       \
                     (int)(want), #want, (r).details);                                           \
        if ((text) != NULL)                                                                      \
            QD_CHECK_MSG(strstr((r).details, (text) ? (text) : "") != NULL,                      \
                         "details '%s' lack '%s'", (r).details, (text) ? (text) : "");           \
    } while (0)

/* ---- bundles: files, sha256s and the manifest digest, by the proto's rules ----------------- */

static void sha256_hex(const void *data, size_t n, char out[65]) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_Digest(data, n, md, &len, EVP_sha256(), NULL);
    for (unsigned i = 0; i < 32; i++) snprintf(out + 2 * i, 3, "%02x", md[i]);
}

struct bfile {
    char name[128];
    char *data;
    size_t size;
    char sha[65];
};

struct bundle {
    struct bfile f[8];
    size_t n;
    char digest[65];
};

static int cmp_bfile(const void *a, const void *b) {
    return strcmp(((const struct bfile *)a)->name, ((const struct bfile *)b)->name);
}

static void bundle_digest(struct bundle *b) {
    qsort(b->f, b->n, sizeof b->f[0], cmp_bfile); /* strcmp is memcmp order on names */
    char text[8 * 256];
    size_t len = 0;
    for (size_t i = 0; i < b->n; i++)
        len += (size_t)snprintf(text + len, sizeof text - len, "%s  %zu  %s\n", b->f[i].sha,
                                b->f[i].size, b->f[i].name);
    sha256_hex(text, len, b->digest);
}

static bool bundle_load(struct bundle *b, const char *dir, const char *const *names, size_t n) {
    memset(b, 0, sizeof *b);
    for (size_t i = 0; i < n; i++) {
        char path[512];
        qd_error err = {0};
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        snprintf(b->f[i].name, sizeof b->f[i].name, "%s", names[i]);
        if (qd_read_file(path, 64u << 20, &b->f[i].data, &b->f[i].size, &err) != QD_OK) {
            fprintf(stderr, "%s\n", qd_error_text(&err));
            return false;
        }
        sha256_hex(b->f[i].data, b->f[i].size, b->f[i].sha);
        b->n++;
    }
    bundle_digest(b);
    return true;
}

static void bundle_free(struct bundle *b) {
    for (size_t i = 0; i < b->n; i++) free(b->f[i].data);
    memset(b, 0, sizeof *b);
}

/* The PutModel header of b (sha of file 0 replaced by sha0 when given). */
static grpc_byte_buffer *header_buffer(const struct bundle *b, Quantd__V1__BundleKind kind,
                                       const char *expected, const char *sha0,
                                       uint64_t size0) {
    Quantd__V1__FileEntry e[8], *ep[8];
    for (size_t i = 0; i < b->n; i++) {
        quantd__v1__file_entry__init(&e[i]);
        e[i].name = (char *)b->f[i].name;
        e[i].size = i == 0 && size0 ? size0 : b->f[i].size;
        e[i].sha256 = (char *)(i == 0 && sha0 ? sha0 : b->f[i].sha);
        ep[i] = &e[i];
    }
    Quantd__V1__Manifest m = QUANTD__V1__MANIFEST__INIT;
    m.n_files = b->n;
    m.files = ep;
    Quantd__V1__PutModelHeader h = QUANTD__V1__PUT_MODEL_HEADER__INIT;
    h.manifest = &m;
    h.kind = kind;
    if (expected) h.expected_digest = (char *)expected;
    Quantd__V1__PutModelRequest req = QUANTD__V1__PUT_MODEL_REQUEST__INIT;
    req.msg_case = QUANTD__V1__PUT_MODEL_REQUEST__MSG_HEADER;
    req.header = &h;
    return pb_buffer(&req.base);
}

static grpc_byte_buffer *chunk_buffer(uint32_t index, uint64_t offset, const void *data,
                                      size_t len) {
    Quantd__V1__Chunk c = QUANTD__V1__CHUNK__INIT;
    c.file_case = QUANTD__V1__CHUNK__FILE_INDEX;
    c.index = index;
    c.offset = offset;
    c.data.data = (uint8_t *)data;
    c.data.len = len;
    Quantd__V1__PutModelRequest req = QUANTD__V1__PUT_MODEL_REQUEST__INIT;
    req.msg_case = QUANTD__V1__PUT_MODEL_REQUEST__MSG_CHUNK;
    req.chunk = &c;
    return pb_buffer(&req.base);
}

/* Upload every byte of b. */
static void put_bundle(const struct bundle *b, Quantd__V1__BundleKind kind, const char *expected,
                       struct result *r) {
    struct cstream s;
    cs_begin(&s, "/quantd.v1.Quantd/PutModel");
    bool ok = cs_send(&s, header_buffer(b, kind, expected, NULL, 0));
    for (size_t i = 0; ok && i < b->n; i++)
        for (size_t off = 0; ok && off < b->f[i].size; off += CHUNK) {
            size_t n = b->f[i].size - off < CHUNK ? b->f[i].size - off : CHUNK;
            ok = cs_send(&s, chunk_buffer((uint32_t)i, off, b->f[i].data + off, n));
        }
    cs_finish(&s, r);
}

/* ---- tests ----------------------------------------------------------------------------------- */

static bool count_message(void *ctx, const uint8_t *msg, size_t len) {
    (void)msg;
    (void)len;
    ++*(int *)ctx;
    return true;
}

static bool first_message(void *ctx, const uint8_t *msg, size_t len) {
    Grpc__Health__V1__HealthCheckResponse **out = ctx;
    *out = grpc__health__v1__health_check_response__unpack(NULL, len, msg);
    return false; /* cancel: a watch never ends by itself */
}

QD_TEST(health) {
    QD_REQUIRE(daemon_up());
    struct result r = {0};
    Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    const char *names[] = {"", "quantd.v1.Quantd"};
    for (size_t i = 0; i < 2; i++) {
        req.service = (char *)names[i];
        unary("/grpc.health.v1.Health/Check", &req.base, &r);
        CHECK_STATUS(r, GRPC_STATUS_OK, NULL);
        Grpc__Health__V1__HealthCheckResponse *h =
            grpc__health__v1__health_check_response__unpack(NULL, r.resp_len, r.resp);
        QD_REQUIRE(h != NULL);
        QD_CHECK_EQ_INT(h->status,
                        GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);
        grpc__health__v1__health_check_response__free_unpacked(h, NULL);
    }
    req.service = "no.such.Service";
    unary("/grpc.health.v1.Health/Check", &req.base, &r);
    CHECK_STATUS(r, GRPC_STATUS_NOT_FOUND, "no.such.Service");

    /* Watch: SERVING at once, then the client cancels; the server must clean up. */
    req.service = "";
    Grpc__Health__V1__HealthCheckResponse *first = NULL;
    server_stream("/grpc.health.v1.Health/Watch", &req.base, 10, first_message, &first, &r);
    QD_REQUIRE(first != NULL);
    QD_CHECK_EQ_INT(first->status,
                    GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);
    QD_CHECK_EQ_INT(r.status, GRPC_STATUS_CANCELLED);
    grpc__health__v1__health_check_response__free_unpacked(first, NULL);

    /* A watch that outlives its deadline: DEADLINE_EXCEEDED, and the server lets go of it. */
    int n = 0;
    server_stream("/grpc.health.v1.Health/Watch", &req.base, 1, count_message, &n, &r);
    QD_CHECK_EQ_INT(n, 1);
    QD_CHECK_EQ_INT(r.status, GRPC_STATUS_DEADLINE_EXCEEDED);
    result_clear(&r);
}

QD_TEST(server_info) {
    QD_REQUIRE(daemon_up());
    struct result r = {0};
    Quantd__V1__GetServerInfoRequest req = QUANTD__V1__GET_SERVER_INFO_REQUEST__INIT;
    unary("/quantd.v1.Quantd/GetServerInfo", &req.base, &r);
    CHECK_STATUS(r, GRPC_STATUS_OK, NULL);
    Quantd__V1__GetServerInfoResponse *info =
        quantd__v1__get_server_info_response__unpack(NULL, r.resp_len, r.resp);
    QD_REQUIRE(info != NULL);
    QD_CHECK(info->version[0] != '\0');
    QD_CHECK(info->engine_version[0] != '\0');
    QD_REQUIRE(info->limits != NULL);
    QD_CHECK_EQ_INT(info->limits->max_chunk_bytes, CHUNK); /* from the config file */
    QD_CHECK(info->n_devices >= 1);
    /* RTN into AutoAWQ at 4 bits is on the menu; 3-bit GPTQ is not (docs/spec.md). */
    bool rtn_awq = false, rtn_4 = false, gptq_3 = false;
    for (size_t i = 0; i < info->n_methods; i++) {
        const Quantd__V1__MethodSupport *m = info->methods[i];
        for (size_t k = 0; k < m->n_formats; k++)
            if (m->method == QUANTD__V1__METHOD__METHOD_RTN &&
                m->formats[k] == QUANTD__V1__FORMAT__FORMAT_AWQ)
                rtn_awq = true;
        for (size_t k = 0; k < m->n_bits; k++) {
            if (m->method == QUANTD__V1__METHOD__METHOD_RTN && m->bits[k] == 4) rtn_4 = true;
            if (m->method == QUANTD__V1__METHOD__METHOD_GPTQ && m->bits[k] == 3) gptq_3 = true;
        }
    }
    QD_CHECK(rtn_awq);
    QD_CHECK(rtn_4);
    QD_CHECK(!gptq_3);
    QD_CHECK_EQ_INT(info->n_formats, 5);
    quantd__v1__get_server_info_response__free_unpacked(info, NULL);
    result_clear(&r);
}

QD_TEST(malformed_and_oversized) {
    QD_REQUIRE(daemon_up());
    struct result r = {0};
    static const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff};
    unary_raw("/quantd.v1.Quantd/GetJob", raw_buffer(junk, sizeof junk), &r);
    CHECK_STATUS(r, GRPC_STATUS_INVALID_ARGUMENT, "malformed GetJobRequest");
    unary_raw("/quantd.v1.Quantd/Quantize", raw_buffer(junk, sizeof junk), &r);
    CHECK_STATUS(r, GRPC_STATUS_INVALID_ARGUMENT, "malformed QuantizeRequest");

    /* The first message of a client stream, malformed. */
    struct cstream s;
    cs_begin(&s, "/quantd.v1.Quantd/PutModel");
    cs_send(&s, raw_buffer(junk, sizeof junk));
    cs_finish(&s, &r);
    CHECK_STATUS(r, GRPC_STATUS_INVALID_ARGUMENT, "malformed PutModelRequest");

    /* A request above limits.max_message_bytes: refused by the transport. */
    size_t big = MAX_MESSAGE + 4096;
    char *id = malloc(big + 1);
    QD_REQUIRE(id != NULL);
    memset(id, 'a', big);
    id[big] = '\0';
    Quantd__V1__GetJobRequest req = QUANTD__V1__GET_JOB_REQUEST__INIT;
    req.job_id = id;
    unary("/quantd.v1.Quantd/GetJob", &req.base, &r);
    CHECK_STATUS(r, GRPC_STATUS_RESOURCE_EXHAUSTED, NULL);
    free(id);
    result_clear(&r);
}

QD_TEST(put_model_errors) {
    QD_REQUIRE(daemon_up());
    struct result r = {0};
    struct bundle b;
    const char *names[] = {"config.json"};
    QD_REQUIRE(bundle_load(&b, MODEL_DIR, names, 1));

    /* The declared sha256 is another content's: the file is refused, its bytes dropped. */
    char wrong[65];
    sha256_hex("not config.json", 15, wrong);
    struct cstream s;
    cs_begin(&s, "/quantd.v1.Quantd/PutModel");
    cs_send(&s, header_buffer(&b, QUANTD__V1__BUNDLE_KIND__BUNDLE_KIND_MODEL, NULL, wrong, 0));
    cs_send(&s, chunk_buffer(0, 0, b.f[0].data, b.f[0].size));
    cs_finish(&s, &r);
    QD_CHECK_MSG(r.status == GRPC_STATUS_DATA_LOSS || r.status == GRPC_STATUS_INVALID_ARGUMENT,
                 "sha256 mismatch: status %d: %s", (int)r.status, r.details);
    QD_CHECK_MSG(strstr(r.details, "config.json") != NULL, "details '%s' lack the file",
                 r.details);
    /* ... and nothing of it is held. */
    Quantd__V1__FileEntry fe = QUANTD__V1__FILE_ENTRY__INIT, *fep = &fe;
    fe.name = "config.json";
    fe.size = b.f[0].size;
    fe.sha256 = wrong;
    Quantd__V1__Manifest mf = QUANTD__V1__MANIFEST__INIT;
    mf.n_files = 1;
    mf.files = &fep;
    Quantd__V1__StatModelRequest sreq = QUANTD__V1__STAT_MODEL_REQUEST__INIT;
    sreq.key_case = QUANTD__V1__STAT_MODEL_REQUEST__KEY_MANIFEST;
    sreq.manifest = &mf;
    unary("/quantd.v1.Quantd/StatModel", &sreq.base, &r);
    CHECK_STATUS(r, GRPC_STATUS_OK, NULL);
    Quantd__V1__StatModelResponse *st =
        quantd__v1__stat_model_response__unpack(NULL, r.resp_len, r.resp);
    QD_REQUIRE(st && st->status && st->status->n_files == 1);
    QD_CHECK_EQ_INT(st->status->files[0]->held_bytes, 0);
    QD_CHECK(!st->status->files[0]->complete);
    QD_CHECK(!st->status->complete);
    quantd__v1__stat_model_response__free_unpacked(st, NULL);

    /* A chunk that starts past the declared size, and one that runs past it. */
    char sha100[65];
    sha256_hex(b.f[0].data, 100, sha100);
    cs_begin(&s, "/quantd.v1.Quantd/PutModel");
    cs_send(&s, header_buffer(&b, QUANTD__V1__BUNDLE_KIND__BUNDLE_KIND_MODEL, NULL, sha100, 100));
    cs_send(&s, chunk_buffer(0, 4096, b.f[0].data, 10));
    cs_finish(&s, &r);
    CHECK_STATUS(r, GRPC_STATUS_INVALID_ARGUMENT, "chunk.offset: 4096");
    QD_CHECK_MSG(strstr(r.details, "config.json"), "details '%s' lack the file", r.details);
    cs_begin(&s, "/quantd.v1.Quantd/PutModel");
    cs_send(&s, header_buffer(&b, QUANTD__V1__BUNDLE_KIND__BUNDLE_KIND_MODEL, NULL, sha100, 100));
    cs_send(&s, chunk_buffer(0, 0, b.f[0].data, b.f[0].size));
    cs_finish(&s, &r);
    CHECK_STATUS(r, GRPC_STATUS_INVALID_ARGUMENT, "offset");
    QD_CHECK_MSG(strstr(r.details, "declared size 100 of config.json"), "details: %s",
                 r.details);

    /* expected_digest: malformed, then well formed but not this manifest's. */
    cs_begin(&s, "/quantd.v1.Quantd/PutModel");
    cs_send(&s, header_buffer(&b, QUANTD__V1__BUNDLE_KIND__BUNDLE_KIND_MODEL, "abc", NULL, 0));
    cs_finish(&s, &r);
    CHECK_STATUS(r, GRPC_STATUS_INVALID_ARGUMENT, "expected_digest");
    char zeros[65];
    memset(zeros, '0', 64);
    zeros[64] = '\0';
    cs_begin(&s, "/quantd.v1.Quantd/PutModel");
    cs_send(&s, header_buffer(&b, QUANTD__V1__BUNDLE_KIND__BUNDLE_KIND_MODEL, zeros, NULL, 0));
    cs_finish(&s, &r);
    CHECK_STATUS(r, GRPC_STATUS_INVALID_ARGUMENT, b.digest); /* names the real digest */

    /* No kind; a chunk before any header; a stream with no message at all. */
    cs_begin(&s, "/quantd.v1.Quantd/PutModel");
    cs_send(&s, header_buffer(&b, QUANTD__V1__BUNDLE_KIND__BUNDLE_KIND_UNSPECIFIED, NULL, NULL, 0));
    cs_finish(&s, &r);
    CHECK_STATUS(r, GRPC_STATUS_INVALID_ARGUMENT, "header.kind");
    cs_begin(&s, "/quantd.v1.Quantd/PutModel");
    cs_send(&s, chunk_buffer(0, 0, b.f[0].data, 10));
    cs_finish(&s, &r);
    CHECK_STATUS(r, GRPC_STATUS_INVALID_ARGUMENT, "first message must be a header");
    cs_begin(&s, "/quantd.v1.Quantd/PutModel");
    cs_finish(&s, &r);
    CHECK_STATUS(r, GRPC_STATUS_INVALID_ARGUMENT, "before its header");
    bundle_free(&b);
    result_clear(&r);
}

static void fill_spec(Quantd__V1__QuantSpec *spec, Quantd__V1__Method method,
                      Quantd__V1__Format format, uint32_t bits, int32_t group) {
    quantd__v1__quant_spec__init(spec);
    spec->method = method;
    spec->format = format;
    spec->bits = bits;
    spec->group_size = group;
}

QD_TEST(quantize_and_job_errors) {
    QD_REQUIRE(daemon_up());
    struct result r = {0};
    char unknown[65];
    sha256_hex("no such model", 13, unknown);
    Quantd__V1__QuantSpec spec;
    fill_spec(&spec, QUANTD__V1__METHOD__METHOD_RTN, QUANTD__V1__FORMAT__FORMAT_AWQ, 0, 32);
    Quantd__V1__QuantizeRequest q = QUANTD__V1__QUANTIZE_REQUEST__INIT;
    q.model_case = QUANTD__V1__QUANTIZE_REQUEST__MODEL_MODEL_DIGEST;
    q.model_digest = unknown;
    q.spec = &spec;
    unary("/quantd.v1.Quantd/Quantize", &q.base, &r);
    CHECK_STATUS(r, GRPC_STATUS_NOT_FOUND, NULL);

    /* Invalid specs are refused before the model is even looked up, naming the field. */
    fill_spec(&spec, QUANTD__V1__METHOD__METHOD_RTN, QUANTD__V1__FORMAT__FORMAT_UNSPECIFIED, 0, 0);
    unary("/quantd.v1.Quantd/Quantize", &q.base, &r);
    CHECK_STATUS(r, GRPC_STATUS_INVALID_ARGUMENT, "spec.format");
    fill_spec(&spec, QUANTD__V1__METHOD__METHOD_UNSPECIFIED, QUANTD__V1__FORMAT__FORMAT_AWQ, 0, 0);
    unary("/quantd.v1.Quantd/Quantize", &q.base, &r);
    CHECK_STATUS(r, GRPC_STATUS_INVALID_ARGUMENT, "spec.method");
    Quantd__V1__GptqParams gp = QUANTD__V1__GPTQ_PARAMS__INIT;
    fill_spec(&spec, QUANTD__V1__METHOD__METHOD_RTN, QUANTD__V1__FORMAT__FORMAT_AWQ, 0, 0);
    spec.params_case = QUANTD__V1__QUANT_SPEC__PARAMS_GPTQ;
    spec.gptq = &gp;
    unary("/quantd.v1.Quantd/Quantize", &q.base, &r);
    CHECK_STATUS(r, GRPC_STATUS_INVALID_ARGUMENT, "spec.gptq");
    Quantd__V1__CalibrationSpec cs = QUANTD__V1__CALIBRATION_SPEC__INIT;
    fill_spec(&spec, QUANTD__V1__METHOD__METHOD_RTN, QUANTD__V1__FORMAT__FORMAT_AWQ, 0, 0);
    spec.calibration = &cs;
    unary("/quantd.v1.Quantd/Quantize", &q.base, &r);
    CHECK_STATUS(r, GRPC_STATUS_INVALID_ARGUMENT, "spec.calibration");
    q.spec = NULL;
    unary("/quantd.v1.Quantd/Quantize", &q.base, &r);
    CHECK_STATUS(r, GRPC_STATUS_INVALID_ARGUMENT, "spec: required");
    q.spec = &spec;
    q.model_case = QUANTD__V1__QUANTIZE_REQUEST__MODEL__NOT_SET;
    fill_spec(&spec, QUANTD__V1__METHOD__METHOD_RTN, QUANTD__V1__FORMAT__FORMAT_AWQ, 0, 0);
    unary("/quantd.v1.Quantd/Quantize", &q.base, &r);
    CHECK_STATUS(r, GRPC_STATUS_INVALID_ARGUMENT, "model");

    /* Unknown job ids. */
    char id[33];
    memset(id, '7', 32);
    id[32] = '\0';
    Quantd__V1__GetJobRequest g = QUANTD__V1__GET_JOB_REQUEST__INIT;
    g.job_id = id;
    unary("/quantd.v1.Quantd/GetJob", &g.base, &r);
    CHECK_STATUS(r, GRPC_STATUS_NOT_FOUND, NULL);
    Quantd__V1__CancelJobRequest c = QUANTD__V1__CANCEL_JOB_REQUEST__INIT;
    c.job_id = id;
    unary("/quantd.v1.Quantd/CancelJob", &c.base, &r);
    CHECK_STATUS(r, GRPC_STATUS_NOT_FOUND, NULL);
    g.job_id = "";
    unary("/quantd.v1.Quantd/GetJob", &g.base, &r);
    CHECK_STATUS(r, GRPC_STATUS_INVALID_ARGUMENT, "job_id");
    Quantd__V1__WatchJobRequest w = QUANTD__V1__WATCH_JOB_REQUEST__INIT;
    w.job_id = id;
    int n_msgs = 0;
    server_stream("/quantd.v1.Quantd/WatchJob", &w.base, 10, count_message, &n_msgs, &r);
    CHECK_STATUS(r, GRPC_STATUS_NOT_FOUND, NULL);
    Quantd__V1__GetArtifactRequest ga = QUANTD__V1__GET_ARTIFACT_REQUEST__INIT;
    ga.artifact_id = id;
    server_stream("/quantd.v1.Quantd/GetArtifact", &ga.base, 10, count_message, &n_msgs, &r);
    CHECK_STATUS(r, GRPC_STATUS_NOT_FOUND, NULL);
    QD_CHECK_EQ_INT(n_msgs, 0);
    result_clear(&r);
}

/* Bytes that are not the message a method expects, at every method: each call must end with
 * a status of its own (never INTERNAL or a dropped connection), and the daemon stay up. */
QD_TEST(junk_everywhere) {
    QD_REQUIRE(daemon_up());
    static const char *const paths[] = {
        "/quantd.v1.Quantd/StatModel",     "/quantd.v1.Quantd/Quantize",
        "/quantd.v1.Quantd/GetJob",        "/quantd.v1.Quantd/ListJobs",
        "/quantd.v1.Quantd/CancelJob",     "/quantd.v1.Quantd/ListArtifacts",
        "/quantd.v1.Quantd/DeleteArtifact", "/quantd.v1.Quantd/GetServerInfo",
        "/grpc.health.v1.Health/Check",    "/quantd.v1.Quantd/PutModel",
        "/quantd.v1.Quantd/WatchJob",      "/quantd.v1.Quantd/GetArtifact",
    };
    struct result r = {0};
    uint32_t seed = 12345;
    for (size_t p = 0; p < sizeof paths / sizeof paths[0]; p++) {
        for (int k = 0; k < 4; k++) {
            uint8_t junk[64];
            size_t n = 1 + k * 17;
            for (size_t i = 0; i < n; i++) {
                seed = seed * 1103515245u + 12345u;
                junk[i] = (uint8_t)(seed >> 24);
            }
            if (strstr(paths[p], "PutModel")) {
                struct cstream s;
                cs_begin(&s, paths[p]);
                cs_send(&s, raw_buffer(junk, n));
                cs_finish(&s, &r);
            } else if (strstr(paths[p], "WatchJob") || strstr(paths[p], "GetArtifact")) {
                grpc_call *call = new_call(paths[p], 10);
                grpc_metadata_array md, tmd;
                grpc_metadata_array_init(&md);
                grpc_metadata_array_init(&tmd);
                grpc_slice details = grpc_empty_slice();
                const char *es = NULL;
                grpc_op ops[5];
                memset(ops, 0, sizeof ops);
                ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
                ops[1].op = GRPC_OP_SEND_MESSAGE;
                ops[1].data.send_message.send_message = raw_buffer(junk, n);
                ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
                ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
                ops[3].data.recv_initial_metadata.recv_initial_metadata = &md;
                ops[4].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
                ops[4].data.recv_status_on_client.trailing_metadata = &tmd;
                ops[4].data.recv_status_on_client.status = &r.status;
                ops[4].data.recv_status_on_client.status_details = &details;
                ops[4].data.recv_status_on_client.error_string = &es;
                if (!batch(call, ops, 5, (void *)40)) r.status = GRPC_STATUS_UNKNOWN;
                grpc_byte_buffer_destroy(ops[1].data.send_message.send_message);
                take_details(&r, details);
                gpr_free((void *)es);
                grpc_metadata_array_destroy(&md);
                grpc_metadata_array_destroy(&tmd);
                grpc_call_unref(call);
            } else {
                unary_raw(paths[p], raw_buffer(junk, n), &r);
            }
            QD_CHECK_MSG(r.status != GRPC_STATUS_INTERNAL && r.status != GRPC_STATUS_UNKNOWN &&
                             r.status != GRPC_STATUS_UNAVAILABLE,
                         "%s, %zu junk bytes: status %d: %s", paths[p], n, (int)r.status,
                         r.details);
        }
    }
    /* Values the proto cannot hold: enum numbers beyond the last. */
    Quantd__V1__QuantSpec spec;
    fill_spec(&spec, (Quantd__V1__Method)99, QUANTD__V1__FORMAT__FORMAT_AWQ, 0, 0);
    Quantd__V1__QuantizeRequest q = QUANTD__V1__QUANTIZE_REQUEST__INIT;
    char digest[65];
    memset(digest, 'a', 64);
    digest[64] = '\0';
    q.model_case = QUANTD__V1__QUANTIZE_REQUEST__MODEL_MODEL_DIGEST;
    q.model_digest = digest;
    q.spec = &spec;
    unary("/quantd.v1.Quantd/Quantize", &q.base, &r);
    CHECK_STATUS(r, GRPC_STATUS_INVALID_ARGUMENT, "spec.method: unknown value 99");
    fill_spec(&spec, QUANTD__V1__METHOD__METHOD_RTN, (Quantd__V1__Format)7, 0, 0);
    unary("/quantd.v1.Quantd/Quantize", &q.base, &r);
    CHECK_STATUS(r, GRPC_STATUS_INVALID_ARGUMENT, "spec.format: unknown value 7");
    q.model_digest = "ABC";
    fill_spec(&spec, QUANTD__V1__METHOD__METHOD_RTN, QUANTD__V1__FORMAT__FORMAT_AWQ, 0, 0);
    unary("/quantd.v1.Quantd/Quantize", &q.base, &r);
    CHECK_STATUS(r, GRPC_STATUS_INVALID_ARGUMENT, "model_digest");
    result_clear(&r);
}

QD_TEST(still_healthy) {
    QD_REQUIRE(daemon_up());
    struct result r = {0};
    Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    unary("/grpc.health.v1.Health/Check", &req.base, &r);
    CHECK_STATUS(r, GRPC_STATUS_OK, NULL);
    QD_CHECK(r.have_resp);
    result_clear(&r);
}

/* ---- the real path --------------------------------------------------------------------------- */

struct watch {
    uint64_t last_seq;
    int n_stage, n_layer, n_done, bad_seq;
    Quantd__V1__JobState done_state;
    char artifact_id[64];
};

static bool on_event(void *ctx, const uint8_t *msg, size_t len) {
    struct watch *w = ctx;
    Quantd__V1__JobEvent *e = quantd__v1__job_event__unpack(NULL, len, msg);
    if (!e) {
        w->bad_seq++;
        return false;
    }
    if (e->event_case == QUANTD__V1__JOB_EVENT__EVENT_TICK) {
        if (e->seq != w->last_seq) w->bad_seq++;
    } else {
        if (e->seq != w->last_seq + 1) w->bad_seq++; /* numbered from 1, no gaps */
        w->last_seq = e->seq;
    }
    if (e->event_case == QUANTD__V1__JOB_EVENT__EVENT_STAGE) w->n_stage++;
    if (e->event_case == QUANTD__V1__JOB_EVENT__EVENT_LAYER) {
        w->n_layer++;
        if (e->layer->count != 5 || e->layer->index >= 5) w->bad_seq++; /* babyllama: 5 */
    }
    if (e->event_case == QUANTD__V1__JOB_EVENT__EVENT_DONE) {
        w->n_done++;
        w->done_state = e->done->state;
        snprintf(w->artifact_id, sizeof w->artifact_id, "%s", e->done->artifact_id);
    }
    quantd__v1__job_event__free_unpacked(e, NULL);
    return true;
}

struct download {
    Quantd__V1__Artifact *art;
    char *data[32];      /* per file index */
    uint64_t next[32];   /* next offset expected */
    uint64_t first[32];  /* offset of the first chunk seen; UINT64_MAX none */
    size_t max_chunk;
    int n_chunks, errors;
};

static bool on_artifact_msg(void *ctx, const uint8_t *msg, size_t len) {
    struct download *d = ctx;
    Quantd__V1__GetArtifactResponse *m = quantd__v1__get_artifact_response__unpack(NULL, len, msg);
    if (!m) {
        d->errors++;
        return false;
    }
    if (m->msg_case == QUANTD__V1__GET_ARTIFACT_RESPONSE__MSG_ARTIFACT) {
        if (d->art) d->errors++; /* the artifact comes first, once */
        d->art = m->artifact;
        m->artifact = NULL;
        m->msg_case = QUANTD__V1__GET_ARTIFACT_RESPONSE__MSG__NOT_SET;
        if (d->art->n_files > 32) d->errors++;
        for (size_t i = 0; i < 32; i++) d->first[i] = UINT64_MAX;
        for (size_t i = 0; i < d->art->n_files && i < 32; i++) {
            d->data[i] = calloc(1, d->art->files[i]->size + 1);
            d->next[i] = UINT64_MAX;
        }
    } else if (m->msg_case == QUANTD__V1__GET_ARTIFACT_RESPONSE__MSG_CHUNK && d->art) {
        const Quantd__V1__Chunk *c = m->chunk;
        size_t i = c->index;
        d->n_chunks++;
        if (c->file_case != QUANTD__V1__CHUNK__FILE_INDEX || i >= d->art->n_files || i >= 32 ||
            c->data.len == 0 || c->data.len > d->max_chunk) {
            d->errors++;
        } else {
            if (d->first[i] == UINT64_MAX) d->first[i] = d->next[i] = c->offset;
            if (c->offset != d->next[i] || c->offset + c->data.len > d->art->files[i]->size)
                d->errors++; /* contiguous, within the file */
            else
                memcpy(d->data[i] + c->offset, c->data.data, c->data.len);
            d->next[i] = c->offset + c->data.len;
        }
    } else {
        d->errors++;
    }
    quantd__v1__get_artifact_response__free_unpacked(m, NULL);
    return true;
}

static void download_free(struct download *d) {
    if (d->art) {
        for (size_t i = 0; i < d->art->n_files && i < 32; i++) free(d->data[i]);
        quantd__v1__artifact__free_unpacked(d->art, NULL);
    }
    memset(d, 0, sizeof *d);
}

static struct bundle model, calib;
static char job_id[64], artifact_id[64];

QD_TEST(quantize_end_to_end) {
    QD_REQUIRE(daemon_up());
    struct result r = {0};
    const char *mnames[] = {"LICENSE", "SOURCE.md", "config.json", "model.safetensors",
                            "tokenizer.bin"};
    const char *cnames[] = {"calib.safetensors"};
    QD_REQUIRE(bundle_load(&model, MODEL_DIR, mnames, 5));
    QD_REQUIRE(bundle_load(&calib, CALIB_DIR, cnames, 1));

    /* Upload both, with the digests computed here as expected_digest. */
    put_bundle(&model, QUANTD__V1__BUNDLE_KIND__BUNDLE_KIND_MODEL, model.digest, &r);
    CHECK_STATUS(r, GRPC_STATUS_OK, NULL);
    Quantd__V1__PutModelResponse *pr =
        quantd__v1__put_model_response__unpack(NULL, r.resp_len, r.resp);
    QD_REQUIRE(pr && pr->status);
    QD_CHECK_EQ_STR(pr->status->digest, model.digest);
    QD_CHECK(pr->status->complete);
    QD_CHECK_EQ_INT(pr->status->kind, QUANTD__V1__BUNDLE_KIND__BUNDLE_KIND_MODEL);
    QD_CHECK_EQ_INT(pr->status->n_files, 5);
    uint64_t total = 0;
    for (size_t i = 0; i < model.n; i++) total += model.f[i].size;
    QD_CHECK_EQ_INT(pr->status->total_bytes, total);
    QD_CHECK_EQ_INT(pr->status->held_bytes, total);
    for (size_t i = 0; i < pr->status->n_files && i < model.n; i++) {
        QD_CHECK_EQ_STR(pr->status->files[i]->name, model.f[i].name); /* manifest order */
        QD_CHECK(pr->status->files[i]->complete);
    }
    quantd__v1__put_model_response__free_unpacked(pr, NULL);
    put_bundle(&calib, QUANTD__V1__BUNDLE_KIND__BUNDLE_KIND_CALIBRATION, NULL, &r);
    CHECK_STATUS(r, GRPC_STATUS_OK, NULL);

    /* Uploading again is answered from the blob store (chunks of complete files skipped). */
    put_bundle(&model, QUANTD__V1__BUNDLE_KIND__BUNDLE_KIND_MODEL, model.digest, &r);
    CHECK_STATUS(r, GRPC_STATUS_OK, NULL);

    Quantd__V1__StatModelRequest sreq = QUANTD__V1__STAT_MODEL_REQUEST__INIT;
    sreq.key_case = QUANTD__V1__STAT_MODEL_REQUEST__KEY_DIGEST;
    sreq.digest = calib.digest;
    unary("/quantd.v1.Quantd/StatModel", &sreq.base, &r);
    CHECK_STATUS(r, GRPC_STATUS_OK, NULL);
    Quantd__V1__StatModelResponse *sr =
        quantd__v1__stat_model_response__unpack(NULL, r.resp_len, r.resp);
    QD_REQUIRE(sr && sr->status);
    QD_CHECK(sr->status->complete);
    QD_CHECK_EQ_INT(sr->status->kind, QUANTD__V1__BUNDLE_KIND__BUNDLE_KIND_CALIBRATION);
    quantd__v1__stat_model_response__free_unpacked(sr, NULL);

    /* A spec the model cannot take: group 96 does not divide 352 (the MLP's width). */
    Quantd__V1__QuantSpec spec;
    fill_spec(&spec, QUANTD__V1__METHOD__METHOD_RTN, QUANTD__V1__FORMAT__FORMAT_AWQ, 0, 96);
    Quantd__V1__QuantizeRequest q = QUANTD__V1__QUANTIZE_REQUEST__INIT;
    q.model_case = QUANTD__V1__QUANTIZE_REQUEST__MODEL_MODEL_DIGEST;
    q.model_digest = model.digest;
    q.spec = &spec;
    unary("/quantd.v1.Quantd/Quantize", &q.base, &r);
    CHECK_STATUS(r, GRPC_STATUS_INVALID_ARGUMENT, "group_size");
    fill_spec(&spec, QUANTD__V1__METHOD__METHOD_RTN, QUANTD__V1__FORMAT__FORMAT_AWQ, 5, 32);
    unary("/quantd.v1.Quantd/Quantize", &q.base, &r);
    CHECK_STATUS(r, GRPC_STATUS_INVALID_ARGUMENT, "spec.bits");

    /* The job. */
    fill_spec(&spec, QUANTD__V1__METHOD__METHOD_RTN, QUANTD__V1__FORMAT__FORMAT_AWQ, 0, 32);
    q.label = "test-rpc";
    unary("/quantd.v1.Quantd/Quantize", &q.base, &r);
    CHECK_STATUS(r, GRPC_STATUS_OK, NULL);
    Quantd__V1__QuantizeResponse *qr =
        quantd__v1__quantize_response__unpack(NULL, r.resp_len, r.resp);
    QD_REQUIRE(qr && qr->job);
    QD_CHECK_EQ_INT(qr->outcome, QUANTD__V1__QUANTIZE_OUTCOME__QUANTIZE_OUTCOME_QUEUED);
    QD_CHECK_EQ_STR(qr->job->model_digest, model.digest);
    QD_CHECK_EQ_STR(qr->job->label, "test-rpc");
    QD_REQUIRE(qr->job->spec);
    QD_CHECK_EQ_INT(qr->job->spec->bits, 4); /* resolved: the default filled in */
    QD_CHECK_EQ_INT(qr->job->spec->group_size, 32);
    QD_CHECK(qr->artifact == NULL);
    snprintf(job_id, sizeof job_id, "%s", qr->job->id);
    quantd__v1__quantize_response__free_unpacked(qr, NULL);
    QD_REQUIRE(job_id[0]);

    struct watch w = {0};
    Quantd__V1__WatchJobRequest wr = QUANTD__V1__WATCH_JOB_REQUEST__INIT;
    wr.job_id = job_id;
    server_stream("/quantd.v1.Quantd/WatchJob", &wr.base, 120, on_event, &w, &r);
    CHECK_STATUS(r, GRPC_STATUS_OK, NULL);
    QD_CHECK_EQ_INT(w.bad_seq, 0);
    QD_CHECK_EQ_INT(w.n_done, 1);
    QD_CHECK(w.n_stage >= 1);
    QD_CHECK_EQ_INT(w.done_state, QUANTD__V1__JOB_STATE__JOB_STATE_SUCCEEDED);
    QD_REQUIRE(w.artifact_id[0]);
    snprintf(artifact_id, sizeof artifact_id, "%s", w.artifact_id);

    /* Watching again from the last seq: nothing new, at most the outcome again, and the
     * stream ends at once. */
    struct watch w2 = {.last_seq = w.last_seq};
    wr.after_seq = w.last_seq;
    server_stream("/quantd.v1.Quantd/WatchJob", &wr.base, 20, on_event, &w2, &r);
    CHECK_STATUS(r, GRPC_STATUS_OK, NULL);
    QD_CHECK_EQ_INT(w2.n_stage + w2.n_layer, 0);
    QD_CHECK(w2.n_done <= 1);
    if (w2.n_done) QD_CHECK_EQ_INT(w2.done_state, QUANTD__V1__JOB_STATE__JOB_STATE_SUCCEEDED);

    Quantd__V1__GetJobRequest g = QUANTD__V1__GET_JOB_REQUEST__INIT;
    g.job_id = job_id;
    unary("/quantd.v1.Quantd/GetJob", &g.base, &r);
    CHECK_STATUS(r, GRPC_STATUS_OK, NULL);
    Quantd__V1__GetJobResponse *gr = quantd__v1__get_job_response__unpack(NULL, r.resp_len, r.resp);
    QD_REQUIRE(gr && gr->job);
    QD_CHECK_EQ_INT(gr->job->state, QUANTD__V1__JOB_STATE__JOB_STATE_SUCCEEDED);
    QD_CHECK_EQ_STR(gr->job->artifact_id, artifact_id);
    quantd__v1__get_job_response__free_unpacked(gr, NULL);

    /* A finished job cannot be cancelled. */
    Quantd__V1__CancelJobRequest c = QUANTD__V1__CANCEL_JOB_REQUEST__INIT;
    c.job_id = job_id;
    unary("/quantd.v1.Quantd/CancelJob", &c.base, &r);
    CHECK_STATUS(r, GRPC_STATUS_FAILED_PRECONDITION, NULL);

    Quantd__V1__ListJobsRequest lj = QUANTD__V1__LIST_JOBS_REQUEST__INIT;
    Quantd__V1__JobState ok_state = QUANTD__V1__JOB_STATE__JOB_STATE_SUCCEEDED;
    lj.n_states = 1;
    lj.states = &ok_state;
    unary("/quantd.v1.Quantd/ListJobs", &lj.base, &r);
    CHECK_STATUS(r, GRPC_STATUS_OK, NULL);
    Quantd__V1__ListJobsResponse *ljr =
        quantd__v1__list_jobs_response__unpack(NULL, r.resp_len, r.resp);
    QD_REQUIRE(ljr != NULL);
    QD_CHECK_EQ_INT(ljr->n_jobs, 1);
    if (ljr->n_jobs == 1) QD_CHECK_EQ_STR(ljr->jobs[0]->id, job_id);
    quantd__v1__list_jobs_response__free_unpacked(ljr, NULL);
    Quantd__V1__JobState no_state = QUANTD__V1__JOB_STATE__JOB_STATE_UNSPECIFIED;
    lj.states = &no_state;
    unary("/quantd.v1.Quantd/ListJobs", &lj.base, &r);
    CHECK_STATUS(r, GRPC_STATUS_INVALID_ARGUMENT, "states[0]");
    result_clear(&r);
}

QD_TEST(get_artifact) {
    QD_REQUIRE(daemon_up());
    QD_REQUIRE(artifact_id[0]);
    struct result r = {0};
    struct download d = {.max_chunk = CHUNK};
    Quantd__V1__GetArtifactRequest req = QUANTD__V1__GET_ARTIFACT_REQUEST__INIT;
    req.artifact_id = artifact_id;
    server_stream("/quantd.v1.Quantd/GetArtifact", &req.base, 60, on_artifact_msg, &d, &r);
    CHECK_STATUS(r, GRPC_STATUS_OK, NULL);
    QD_REQUIRE(d.art != NULL);
    QD_CHECK_EQ_INT(d.errors, 0);
    QD_CHECK_EQ_STR(d.art->id, artifact_id);
    QD_CHECK_EQ_STR(d.art->model_digest, model.digest);
    QD_CHECK_EQ_INT(d.art->format, QUANTD__V1__FORMAT__FORMAT_AWQ);
    QD_CHECK_EQ_STR(d.art->job_id, job_id);
    /* Every file whole, its sha256 as the manifest says; the manifest digest recomputed. */
    struct bundle got;
    memset(&got, 0, sizeof got);
    bool have_config = false, have_weights = false;
    uint64_t total = 0;
    for (size_t i = 0; i < d.art->n_files && i < 8; i++) {
        const Quantd__V1__FileEntry *f = d.art->files[i];
        char sha[65];
        uint64_t end = d.first[i] == UINT64_MAX ? 0 : d.next[i];
        QD_CHECK_MSG(end == f->size, "%s: %" PRIu64 " of %" PRIu64 " bytes received", f->name,
                     end, f->size);
        sha256_hex(d.data[i], f->size, sha);
        QD_CHECK_EQ_STR(sha, f->sha256);
        snprintf(got.f[i].name, sizeof got.f[i].name, "%s", f->name);
        memcpy(got.f[i].sha, f->sha256, 65);
        got.f[i].size = f->size;
        got.n++;
        total += f->size;
        if (strcmp(f->name, "config.json") == 0) {
            have_config = true;
            QD_CHECK(strstr(d.data[i], "quantization_config") != NULL);
            QD_CHECK(strstr(d.data[i], "\"awq\"") != NULL);
        }
        if (strstr(f->name, ".safetensors")) have_weights = true;
        if (i > 0) QD_CHECK(strcmp(d.art->files[i - 1]->name, f->name) < 0); /* sorted */
    }
    QD_CHECK(have_config);
    QD_CHECK(have_weights);
    QD_CHECK_EQ_INT(d.art->total_bytes, total);
    bundle_digest(&got);
    QD_CHECK_EQ_STR(d.art->manifest_digest, got.digest);
    QD_CHECK(d.n_chunks > 1);

    /* Resume: one file from the middle, in small chunks; the bytes must match. */
    size_t big = 0;
    for (size_t i = 1; i < d.art->n_files; i++)
        if (d.art->files[i]->size > d.art->files[big]->size) big = i;
    uint64_t size = d.art->files[big]->size, from = size / 2 + 3;
    char *whole = malloc(size + 1);
    QD_REQUIRE(whole != NULL);
    memcpy(whole, d.data[big], size);
    char *name = strdup(d.art->files[big]->name);
    download_free(&d);
    struct download d2 = {.max_chunk = 4096};
    req.n_files = 1;
    req.files = &name;
    req.start_file = name;
    req.start_offset = from;
    req.chunk_bytes = 4096;
    server_stream("/quantd.v1.Quantd/GetArtifact", &req.base, 60, on_artifact_msg, &d2, &r);
    CHECK_STATUS(r, GRPC_STATUS_OK, NULL);
    QD_REQUIRE(d2.art != NULL);
    QD_CHECK_EQ_INT(d2.errors, 0);
    QD_CHECK_EQ_INT(d2.first[big], from);
    QD_CHECK_EQ_INT(d2.next[big], size);
    QD_CHECK_EQ_INT(d2.n_chunks, (int)((size - from + 4095) / 4096));
    for (size_t i = 0; i < d2.art->n_files; i++)
        if (i != big) QD_CHECK_EQ_INT(d2.first[i], UINT64_MAX); /* only the file asked for */
    QD_CHECK(memcmp(d2.data[big] + from, whole + from, size - from) == 0);
    download_free(&d2);

    /* Refusals: past the end, a file the artifact lacks. */
    struct download d3 = {.max_chunk = CHUNK};
    req.start_offset = size + 1;
    server_stream("/quantd.v1.Quantd/GetArtifact", &req.base, 20, on_artifact_msg, &d3, &r);
    CHECK_STATUS(r, GRPC_STATUS_INVALID_ARGUMENT, "start_offset");
    download_free(&d3);
    char *missing = "no-such-file.bin";
    req.files = &missing;
    req.start_file = "";
    req.start_offset = 0;
    server_stream("/quantd.v1.Quantd/GetArtifact", &req.base, 20, on_artifact_msg, &d3, &r);
    CHECK_STATUS(r, GRPC_STATUS_INVALID_ARGUMENT, "files[0]");
    download_free(&d3);
    free(whole);
    free(name);
    result_clear(&r);
}

QD_TEST(cache_hit_and_delete) {
    QD_REQUIRE(daemon_up());
    QD_REQUIRE(artifact_id[0]);
    struct result r = {0};
    Quantd__V1__QuantSpec spec;
    fill_spec(&spec, QUANTD__V1__METHOD__METHOD_RTN, QUANTD__V1__FORMAT__FORMAT_AWQ, 4, 32);
    Quantd__V1__QuantizeRequest q = QUANTD__V1__QUANTIZE_REQUEST__INIT;
    q.model_case = QUANTD__V1__QUANTIZE_REQUEST__MODEL_MODEL_DIGEST;
    q.model_digest = model.digest;
    q.spec = &spec; /* bits 4 given this time: the same resolved spec, the same key */
    unary("/quantd.v1.Quantd/Quantize", &q.base, &r);
    CHECK_STATUS(r, GRPC_STATUS_OK, NULL);
    Quantd__V1__QuantizeResponse *qr =
        quantd__v1__quantize_response__unpack(NULL, r.resp_len, r.resp);
    QD_REQUIRE(qr && qr->job);
    QD_CHECK_EQ_INT(qr->outcome, QUANTD__V1__QUANTIZE_OUTCOME__QUANTIZE_OUTCOME_CACHE_HIT);
    QD_CHECK(qr->job->cache_hit);
    QD_CHECK(qr->artifact != NULL);
    if (qr->artifact) QD_CHECK_EQ_STR(qr->artifact->id, artifact_id);
    quantd__v1__quantize_response__free_unpacked(qr, NULL);

    Quantd__V1__ListArtifactsRequest la = QUANTD__V1__LIST_ARTIFACTS_REQUEST__INIT;
    la.model_digest = model.digest;
    unary("/quantd.v1.Quantd/ListArtifacts", &la.base, &r);
    CHECK_STATUS(r, GRPC_STATUS_OK, NULL);
    Quantd__V1__ListArtifactsResponse *lr =
        quantd__v1__list_artifacts_response__unpack(NULL, r.resp_len, r.resp);
    QD_REQUIRE(lr != NULL);
    QD_CHECK_EQ_INT(lr->n_artifacts, 1);
    QD_CHECK_EQ_STR(lr->next_page_token, "");
    quantd__v1__list_artifacts_response__free_unpacked(lr, NULL);
    la.page_token = "garbage";
    unary("/quantd.v1.Quantd/ListArtifacts", &la.base, &r);
    CHECK_STATUS(r, GRPC_STATUS_INVALID_ARGUMENT, "page_token");

    Quantd__V1__DeleteArtifactRequest del = QUANTD__V1__DELETE_ARTIFACT_REQUEST__INIT;
    del.artifact_id = artifact_id;
    unary("/quantd.v1.Quantd/DeleteArtifact", &del.base, &r);
    CHECK_STATUS(r, GRPC_STATUS_OK, NULL);
    struct download d = {.max_chunk = CHUNK};
    Quantd__V1__GetArtifactRequest ga = QUANTD__V1__GET_ARTIFACT_REQUEST__INIT;
    ga.artifact_id = artifact_id;
    server_stream("/quantd.v1.Quantd/GetArtifact", &ga.base, 20, on_artifact_msg, &d, &r);
    CHECK_STATUS(r, GRPC_STATUS_NOT_FOUND, NULL);
    download_free(&d);
    result_clear(&r);
}

static uint32_t chunk_limit(void) {
    struct result r = {0};
    Quantd__V1__GetServerInfoRequest req = QUANTD__V1__GET_SERVER_INFO_REQUEST__INIT;
    unary("/quantd.v1.Quantd/GetServerInfo", &req.base, &r);
    uint32_t v = 0;
    Quantd__V1__GetServerInfoResponse *info =
        r.status == GRPC_STATUS_OK
            ? quantd__v1__get_server_info_response__unpack(NULL, r.resp_len, r.resp)
            : NULL;
    if (info && info->limits) v = info->limits->max_chunk_bytes;
    if (info) quantd__v1__get_server_info_response__free_unpacked(info, NULL);
    result_clear(&r);
    return v;
}

QD_TEST(reload) {
    QD_REQUIRE(daemon_up());
    /* A valid file: the reloadable chunk size changes at once. */
    QD_REQUIRE(write_text(D.config, "log_level: debug\n"
                                    "workers: {cpu: 1, threads: 2}\n"
                                    "limits: {max_message_bytes: 1MiB, chunk_bytes: 128KiB}\n"
                                    "shutdown: {drain_seconds: 2s}\n"));
    size_t mark = log_mark();
    kill(D.pid, SIGHUP);
    QD_CHECK(wait_log("reloaded", mark, 20));
    QD_CHECK_EQ_INT(chunk_limit(), CHUNK_RELOADED);
    /* An invalid file: logged, the running configuration kept. */
    QD_REQUIRE(write_text(D.config, "limits: {chunk_bytes: lots}\n"));
    mark = log_mark();
    kill(D.pid, SIGHUP);
    QD_CHECK(wait_log("keeping the running configuration", mark, 20));
    QD_CHECK_EQ_INT(chunk_limit(), CHUNK_RELOADED);
}

/* Last: SIGTERM must drain and exit 0 (under ASan: no leaks either). Two calls are open when
 * it comes: a health watch, which must see NOT_SERVING and end, and an upload that stalls,
 * which the server must cancel when the drain deadline (2 s, from the reload) passes. */
QD_TEST(shutdown) {
    QD_REQUIRE(daemon_up());
    struct result r = {0};
    grpc_call *watch = new_call("/grpc.health.v1.Health/Watch", 60);
    grpc_metadata_array init_md, trail_md;
    grpc_metadata_array_init(&init_md);
    grpc_metadata_array_init(&trail_md);
    Grpc__Health__V1__HealthCheckRequest hreq = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    grpc_op ops[4];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = pb_buffer(&hreq.base);
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &init_md;
    QD_CHECK(batch(watch, ops, 4, (void *)30));
    grpc_byte_buffer_destroy(ops[1].data.send_message.send_message);
    int statuses[3] = {-1, -1, -1};
    for (int k = 0; k < 3; k++) {
        grpc_byte_buffer *bb = NULL;
        memset(ops, 0, sizeof ops);
        ops[0].op = GRPC_OP_RECV_MESSAGE;
        ops[0].data.recv_message.recv_message = &bb;
        if (k == 0) {
            QD_CHECK(batch(watch, ops, 1, (void *)31));
        } else {
            if (k == 1) { /* the stalled upload, then the signal */
                /* A file the server has never seen: a blob already held would complete the
                 * bundle at once, and the server could answer before the drain. */
                struct bundle b;
                char stall_dir[300], stall_path[320], text[96];
                snprintf(stall_dir, sizeof stall_dir, "%s/stall", D.dir);
                QD_REQUIRE(mkdir(stall_dir, 0700) == 0 || errno == EEXIST);
                snprintf(stall_path, sizeof stall_path, "%s/stall.bin", stall_dir);
                snprintf(text, sizeof text, "never uploaded before: %ld %ld\n", (long)getpid(),
                         (long)time(NULL));
                QD_REQUIRE(write_text(stall_path, text));
                const char *names[] = {"stall.bin"};
                QD_REQUIRE(bundle_load(&b, stall_dir, names, 1));
                struct cstream up;
                size_t mark = log_mark();
                cs_begin(&up, "/quantd.v1.Quantd/PutModel");
                QD_CHECK(cs_send(&up, header_buffer(&b, QUANTD__V1__BUNDLE_KIND__BUNDLE_KIND_MODEL,
                                                    b.digest, NULL, 0)));
                /* Sent is not received: the signal must come after the server took it. */
                QD_CHECK(wait_log(b.digest, mark, 20));
                mark = log_mark();
                kill(D.pid, SIGTERM);
                QD_CHECK(batch(watch, ops, 1, (void *)31));
                /* Never half-closed: a half-close would let the upload end normally, and the
                 * "cancelling" line is logged just before the cancel itself. */
                QD_CHECK(wait_log("cancelling 1 call", mark, 20));
                cs_end(&up, &r, false);
                QD_CHECK_MSG(r.status == GRPC_STATUS_UNAVAILABLE ||
                                 r.status == GRPC_STATUS_CANCELLED,
                             "stalled upload: status %d: %s", (int)r.status, r.details);
                bundle_free(&b);
            } else {
                batch(watch, ops, 1, (void *)31);
            }
        }
        if (!bb) break;
        take_message(&r, bb);
        Grpc__Health__V1__HealthCheckResponse *h =
            grpc__health__v1__health_check_response__unpack(NULL, r.resp_len, r.resp);
        if (h) statuses[k] = h->status;
        if (h) grpc__health__v1__health_check_response__free_unpacked(h, NULL);
    }
    QD_CHECK_EQ_INT(statuses[0], GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);
    QD_CHECK_EQ_INT(statuses[1],
                    GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING);
    QD_CHECK_EQ_INT(statuses[2], -1); /* then the stream ends */
    grpc_slice details = grpc_empty_slice();
    const char *error_string = NULL;
    grpc_status_code code = GRPC_STATUS_OK;
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[0].data.recv_status_on_client.trailing_metadata = &trail_md;
    ops[0].data.recv_status_on_client.status = &code;
    ops[0].data.recv_status_on_client.status_details = &details;
    ops[0].data.recv_status_on_client.error_string = &error_string;
    batch(watch, ops, 1, (void *)32);
    QD_CHECK_EQ_INT(code, GRPC_STATUS_UNAVAILABLE);
    grpc_slice_unref(details);
    gpr_free((void *)error_string);
    grpc_metadata_array_destroy(&init_md);
    grpc_metadata_array_destroy(&trail_md);
    grpc_call_unref(watch);
    result_clear(&r);

    grpc_channel_destroy(D.ch);
    grpc_completion_queue_shutdown(D.cq);
    /* A pluck queue is drained with pluck (next is for next queues only). */
    while (grpc_completion_queue_pluck(D.cq, NULL, in_seconds(5), NULL).type ==
           GRPC_OP_COMPLETE) {
    }
    grpc_completion_queue_destroy(D.cq);
    grpc_shutdown();
    int status = 0;
    pid_t got = 0;
    for (int i = 0; i < 300 && got == 0; i++) { /* 30 s */
        got = waitpid(D.pid, &status, WNOHANG);
        if (got == 0) usleep(100 * 1000);
    }
    if (got == 0) {
        kill(D.pid, SIGKILL);
        waitpid(D.pid, &status, 0);
        QD_CHECK_MSG(false, "the daemon did not stop within 30 s of SIGTERM");
    } else {
        QD_CHECK_MSG(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                     "the daemon ended with status 0x%x", status);
    }
    pthread_join(D.reader, NULL);
    close(D.err_fd);
    QD_CHECK(wait_log("stopped", 0, 1));
    bundle_free(&model);
    bundle_free(&calib);
    free(D.log);
    qd_error err = {0};
    qd_remove_tree(D.dir, &err);
}

QD_TEST_MAIN()
