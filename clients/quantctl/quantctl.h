/*
 * quantctl.h - what quantctl's files share: exit statuses, the global options, the gRPC client
 * module (ctl_rpc.c), bundles and manifests (ctl_bundle.c), the spec on the wire
 * (ctl_spec.c), progress and output (ctl_output.c), the transfers and the job watcher that
 * several subcommands reuse (ctl_transfer.c, ctl_watch.c), argument helpers (ctl_args.c),
 * and the subcommands themselves (cmd_*.c, dispatched from main.c).
 *
 * DESIGN
 * quantctl is a blocking client: one channel, one pluck completion queue, one call at a time.
 * Every grpc_* call lives in ctl_rpc.c, behind four helpers (unary, client-streaming upload,
 * server stream with a callback, connect); the rest of quantctl sees protobuf-c messages
 * only. A failure is a qd_ctl_error: the qd_error says what went wrong, exit_status says whose
 * fault it was (the server refused: 3, the server could not be reached: 4, anything local: 1),
 * so every subcommand ends with one `return qd_ctl_fail(&err)`.
 */
#ifndef QD_QUANTCTL_H
#define QD_QUANTCTL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>
#include <protobuf-c/protobuf-c.h>

#include "error.h"
#include "quantd.pb-c.h"
#include "spec.h"

/* ---- exit statuses and errors ---------------------------------------------------------------- */

enum qd_ctl_exit {
    QD_CTL_EXIT_OK = 0,
    QD_CTL_EXIT_FAILED = 1,      /* the job failed or was cancelled; a local file error */
    QD_CTL_EXIT_USAGE = 2,       /* bad command line */
    QD_CTL_EXIT_REFUSED = 3,     /* the server answered with an error status */
    QD_CTL_EXIT_UNREACHABLE = 4, /* no connection to the server, or it was lost */
};

/* A failure and whose fault it was. Zero-initialise. */
typedef struct qd_ctl_error {
    qd_error e;      /* what: "PutModel: FAILED_PRECONDITION: model.safetensors: ..." */
    int exit_status; /* enum qd_ctl_exit; 0 until set (a local error then counts as 1) */
    int grpc_code;   /* the status the server answered; 0 when the failure is not the server's */
} qd_ctl_error;

/* Record a local failure (exit status 1) unless err already holds one. Returns code. */
qd_err qd_ctl_error_local(qd_ctl_error *err, qd_err code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Print "quantctl: <message>" on stderr and return the exit status err stands for. */
int qd_ctl_fail(const qd_ctl_error *err);
/* Print "quantctl <cmd>: <message>" and return QD_CTL_EXIT_USAGE. */
int qd_ctl_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- global options -------------------------------------------------------------------------- */

#define QD_CTL_DEFAULT_SERVER "127.0.0.1:7433"
#define QD_CTL_DEFAULT_TIMEOUT_S 30.0

typedef struct qd_ctl_opts {
    const char *server; /* host:port or unix:/path */
    double timeout_s;   /* unary calls, and connecting */
    bool json;          /* one JSON object per result on stdout */
    bool quiet;         /* no progress; only results */
    bool progress;      /* draw progress on stderr (a TTY and not quiet) */
    const char *token;  /* bearer token sent with every call; NULL = none */
    const char *tls_ca; /* PEM roots the server's certificate must chain to; set = TLS */
    const char *tls_cert, *tls_key;  /* client certificate and key (mutual TLS); set = TLS */
    const char *tls_server_name;     /* name checked in the server's certificate (tests) */
} qd_ctl_opts;

/* ---- the gRPC client (ctl_rpc.c) ------------------------------------------------------------ */

/* The quantd.v1.Quantd methods quantctl calls. */
typedef enum qd_ctl_method {
    QD_CTL_PUT_MODEL,
    QD_CTL_STAT_MODEL,
    QD_CTL_QUANTIZE,
    QD_CTL_WATCH_JOB,
    QD_CTL_GET_JOB,
    QD_CTL_LIST_JOBS,
    QD_CTL_CANCEL_JOB,
    QD_CTL_GET_ARTIFACT,
    QD_CTL_LIST_ARTIFACTS,
    QD_CTL_DELETE_ARTIFACT,
    QD_CTL_GET_SERVER_INFO,
    QD_CTL_HEALTH_CHECK, /* grpc.health.v1.Health/Check: no token needed */
    QD_CTL_METHOD_COUNT
} qd_ctl_method;

/* "PutModel", ...: the method's name in messages. */
const char *qd_ctl_method_name(qd_ctl_method m);
/* "FAILED_PRECONDITION", ...; "UNKNOWN_STATUS" out of range. */
const char *qd_ctl_status_name(int grpc_code);

/* Call grpc_init / grpc_shutdown once each, around everything else. */
void qd_ctl_rpc_init(void);
void qd_ctl_rpc_shutdown(void);

struct qd_ctl_conn;
/* Open a channel to o->server and wait (up to o->timeout_s) until it is connected: TLS when
 * any o->tls_* is set (mutual with tls_cert/tls_key), the bearer token o->token on every call.
 * A refused or timed-out connection (a failed TLS handshake included) is exit status 4,
 * naming the target; an unreadable certificate file is 1. */
qd_err qd_ctl_connect(const qd_ctl_opts *o, struct qd_ctl_conn **ret, qd_ctl_error *err);
/* Accepts NULL. */
void qd_ctl_close(struct qd_ctl_conn *c);

/* One unary call with the connection's timeout as deadline. *ret (the response) is freed by
 * the caller with protobuf_c_message_free_unpacked(*ret, NULL). */
qd_err qd_ctl_unary(struct qd_ctl_conn *c, qd_ctl_method m, const ProtobufCMessage *req,
                    const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **ret,
                    qd_ctl_error *err);

/* A client-streaming call: open, send messages one at a time (each waits for the previous
 * one, which is HTTP/2 flow control's backpressure), then finish for the response. When send
 * fails the call is over and err holds the server's status. Always free. */
struct qd_ctl_upload;
qd_err qd_ctl_upload_open(struct qd_ctl_conn *c, qd_ctl_method m, struct qd_ctl_upload **ret,
                          qd_ctl_error *err);
qd_err qd_ctl_upload_send(struct qd_ctl_upload *up, const ProtobufCMessage *msg,
                          qd_ctl_error *err);
qd_err qd_ctl_upload_finish(struct qd_ctl_upload *up, const ProtobufCMessageDescriptor *resp_desc,
                            ProtobufCMessage **ret, qd_ctl_error *err);
/* Cancels the call if it has not finished. Accepts NULL. */
void qd_ctl_upload_free(struct qd_ctl_upload *up);

/* Called for each message of a server stream; msg is freed after it returns. Return QD_OK to
 * go on; anything else cancels the call, and qd_ctl_server_stream returns that code (the
 * callback fills err itself). */
typedef qd_err (*qd_ctl_stream_fn)(void *ctx, const ProtobufCMessage *msg, qd_ctl_error *err);
/* A server-streaming call without a deadline: send req, hand every response to fn, until the
 * server ends the stream. */
qd_err qd_ctl_server_stream(struct qd_ctl_conn *c, qd_ctl_method m, const ProtobufCMessage *req,
                            const ProtobufCMessageDescriptor *resp_desc, qd_ctl_stream_fn fn,
                            void *ctx, qd_ctl_error *err);

/* ---- bundles and manifests (ctl_bundle.c) --------------------------------------------------- */

#define QD_CTL_HEX 65 /* 64 lowercase hex digits and a NUL */

/* One file of a bundle or an artifact. */
typedef struct qd_ctl_file {
    char *name;               /* relative, '/'-separated */
    char *path;               /* local path (NULL for entries that only describe) */
    uint64_t size;
    char sha256[QD_CTL_HEX];  /* "" until hashed */
} qd_ctl_file;

/* A bundle: files sorted by name (memcmp order), their manifest digest. Owns everything. */
typedef struct qd_ctl_bundle {
    qd_ctl_file *files;
    size_t n_files;
    uint64_t total_bytes;
    char digest[QD_CTL_HEX];
} qd_ctl_bundle;

/* Called while hashing: bytes hashed so far of total. */
typedef void (*qd_ctl_hash_fn)(void *ctx, uint64_t done, uint64_t total);

/* Whether name obeys the manifest rules of proto/quantd.proto (relative, '/'-separated,
 * non-empty components, none "." or "..", no NUL, CR, LF or backslash). QD_ERR_INVALID_ARG
 * naming what names it (what, e.g. "file") otherwise. */
qd_err qd_ctl_check_name(const char *name, const char *what, qd_error *err);
/* A directory: every regular file under it, recursively (symbolic links to regular files
 * count; other links, sockets and devices do not), named relative to it. A regular file: a
 * one-file bundle holding it under its base name. Sorted; sizes read, nothing hashed yet. */
qd_err qd_ctl_bundle_scan(const char *path, qd_ctl_bundle *ret, qd_error *err);
/* sha256 of every file (a file whose size changed since the scan is an error), then the
 * manifest digest. fn (may be NULL) sees the progress. */
qd_err qd_ctl_bundle_hash(qd_ctl_bundle *b, qd_ctl_hash_fn fn, void *ctx, qd_error *err);
/* Accepts a zeroed bundle; zeroes it. */
void qd_ctl_bundle_free(qd_ctl_bundle *b);
/* The manifest digest of files (sorted by name, sha256 set): the sha256 of the lines
 * "<sha256>  <size>  <name>\n". */
qd_err qd_ctl_manifest_digest(const qd_ctl_file *files, size_t n, char hex[QD_CTL_HEX],
                              qd_error *err);
/* sha256 of the file at path as lowercase hex, and its size. fn (may be NULL) sees progress
 * as base + bytes read, of total. */
qd_err qd_ctl_sha256_file(const char *path, char hex[QD_CTL_HEX], uint64_t *ret_size,
                          qd_ctl_hash_fn fn, void *ctx, uint64_t base, uint64_t total,
                          qd_error *err);
/* Whether s is 64 lowercase hex digits. */
bool qd_ctl_is_digest(const char *s);

/* ---- the spec on the wire (ctl_spec.c) ------------------------------------------------------- */

/* A QuantSpec message and the sub-messages it points to, in one block (no heap). */
typedef struct qd_ctl_spec_msg {
    Quantd__V1__QuantSpec spec;
    Quantd__V1__CalibrationSpec calibration;
    Quantd__V1__AwqParams awq;
    Quantd__V1__GptqParams gptq;
    Quantd__V1__SmoothQuantParams smoothquant;
    Quantd__V1__Fp8Params fp8;
} qd_ctl_spec_msg;

/* The QuantSpec for s, as the user wrote it: unset fields stay zero/absent (the server fills
 * its defaults), set ones are sent. with_calibration: send a CalibrationSpec (rows, seq_len,
 * digest) - for methods that calibrate only, as the proto asks. Borrows s's strings: keep s
 * alive while m is used. */
void qd_ctl_spec_to_proto(const qd_spec *s, bool with_calibration, qd_ctl_spec_msg *m);

/* ---- output (ctl_output.c) ------------------------------------------------------------------- */

/* Seconds on the monotonic clock. */
double qd_ctl_now(void);
/* "3.6 MiB", "812 B". */
void qd_ctl_format_bytes(uint64_t n, char *buf, size_t cap);
/* "queued", "running", "succeeded", "failed", "cancelled"; "unknown". */
const char *qd_ctl_job_state_word(int state);
/* "load", "plan", "calibrate", "quantize", "pack", "publish"; "-" for none. */
const char *qd_ctl_stage_word(int stage);
/* "awq", "gptq", ...; "unspecified". */
const char *qd_ctl_format_word(int format);
/* "rtn", "awq", ...; "unspecified". */
const char *qd_ctl_method_word(int method);

/* A progress line on stderr, redrawn in place at most 10 times a second; drawn only when
 * opts->progress. */
typedef struct qd_ctl_progress {
    bool on;
    double t0;       /* when the current transfer started */
    double last;     /* last redraw */
    bool drawn;      /* a line is on the screen */
} qd_ctl_progress;

void qd_ctl_progress_init(qd_ctl_progress *p, const qd_ctl_opts *o);
/* "<what>  [=====>    ]  12.0 MiB / 40.0 MiB  310.2 MiB/s"; force redraws now. */
void qd_ctl_progress_bytes(qd_ctl_progress *p, const char *what, uint64_t done, uint64_t total,
                           bool force);
/* "[=====>    ] <text>" with fraction in [0, 1]. */
void qd_ctl_progress_fraction(qd_ctl_progress *p, double fraction, const char *text, bool force);
/* Erase the line (before printing something else on the terminal). */
void qd_ctl_progress_clear(qd_ctl_progress *p);

/* Any protobuf-c message as a JSON object: proto field names, enums by value name, 64-bit
 * integers as numbers, bytes as their length ("<n bytes>"), oneof members only when set. New
 * reference; NULL on allocation failure. */
json_t *qd_ctl_proto_json(const ProtobufCMessage *m);
/* Print j compactly on one line of stdout and release it. Accepts NULL (prints nothing). */
void qd_ctl_json_emit(json_t *j);

/* ---- transfers (ctl_transfer.c) -------------------------------------------------------------- */

/* What an upload did. */
typedef struct qd_ctl_put_report {
    uint64_t total_bytes;  /* of the bundle */
    uint64_t held_before;  /* the server held this much when we started (resumed/deduplicated) */
    uint64_t sent_bytes;   /* chunk bytes sent */
    uint32_t n_resumed;    /* files resumed from a non-zero offset */
    double seconds;        /* hashing excluded */
    bool already_complete; /* nothing to send: the server held the whole bundle */
    bool held_all;         /* ...every byte at the start, whatever kind it came as */
} qd_ctl_put_report;

/* Upload bundle b (hashed) as kind: StatModel by manifest, then PutModel with only what the
 * server lacks, each file from its held_bytes. Retries while another stream uploads the same
 * files (FAILED_PRECONDITION) as long as the server keeps making progress. rate_limit: bytes
 * per second, 0 = none. Resumed files are reported on stderr unless quiet. dry_run: only the
 * StatModel (rep says what the server holds; nothing is sent). */
qd_err qd_ctl_put_bundle(struct qd_ctl_conn *c, const qd_ctl_opts *o, const qd_ctl_bundle *b,
                         Quantd__V1__BundleKind kind, double rate_limit, bool dry_run,
                         qd_ctl_put_report *rep, qd_ctl_error *err);

/* What a download did. */
typedef struct qd_ctl_fetch_report {
    uint32_t n_files;
    uint64_t total_bytes;    /* of the artifact */
    uint64_t received_bytes; /* chunk bytes received */
    uint64_t resumed_bytes;  /* already on disk from an earlier, interrupted fetch */
    double seconds;          /* the download; verification excluded */
    double verify_seconds;
    char manifest_digest[QD_CTL_HEX];
} qd_ctl_fetch_report;

/* Download artifact id into dir: into "<dir>.partial" (resuming what an interrupted fetch
 * left there), verify every file's sha256 and the manifest digest against the artifact's
 * manifest, then rename to dir. dir must not exist. rate_limit: bytes per second, 0 = none. */
qd_err qd_ctl_fetch_artifact(struct qd_ctl_conn *c, const qd_ctl_opts *o, const char *id,
                             const char *dir, double rate_limit, qd_ctl_fetch_report *rep,
                             qd_ctl_error *err);

/* ---- watching a job (ctl_watch.c) ------------------------------------------------------------ */

/* How a watched job ended. */
typedef struct qd_ctl_watch_result {
    int state;                 /* Quantd__V1__JobState: terminal, or 0 if the stream broke */
    char artifact_id[128];
    char error_code[32];
    char error_message[QD_ERROR_MSG_MAX];
    uint64_t last_seq;
    uint32_t n_layers;         /* LayerDone events seen */
    json_t *layers;            /* array of {index, count, error, duration_ms}; owned */
} qd_ctl_watch_result;

/* Follow job_id's events from after_seq until its terminal event. Layers are printed as they
 * arrive (stdout; one JSON object each with events_json), progress goes to stderr. */
qd_err qd_ctl_watch_job(struct qd_ctl_conn *c, const qd_ctl_opts *o, const char *job_id,
                        uint64_t after_seq, bool events_json, qd_ctl_watch_result *res,
                        qd_ctl_error *err);
void qd_ctl_watch_result_done(qd_ctl_watch_result *res);

/* ---- subcommands (cmd_*.c); each returns the process exit status --------------------------- */

/* Whether argv[*i] is option name (or alias; may be NULL), given as "NAME VALUE" or
 * "NAME=VALUE". 1: it is, *ret_value gets the value and *i moves onto the last argument used;
 * 0: it is not; -1: its value is missing (a usage error was printed for cmd). */
int qd_ctl_opt(const char *cmd, int argc, char **argv, int *i, const char *name,
               const char *alias, const char **ret_value);
/* Whether "-h" or "--help" is among argv[1..]. */
bool qd_ctl_wants_help(int argc, char **argv);
/* A decimal integer in [min, max], the whole text. QD_ERR_INVALID_ARG naming what otherwise. */
qd_err qd_ctl_parse_u64(const char *what, const char *text, uint64_t min, uint64_t max,
                        uint64_t *ret, qd_error *err);

/* Connect with o's server and timeout; on failure print the error. Returns an exit status. */
int qd_ctl_open(const qd_ctl_opts *o, struct qd_ctl_conn **ret);
/* Parse a "--limit-rate" value: bytes per second, with an optional K, M or G (powers of 1024)
 * suffix. */
qd_err qd_ctl_parse_rate(const char *text, double *ret, qd_error *err);

/* Scan and hash a bundle (a directory or one file), with progress on stderr. */
qd_err qd_ctl_bundle_load(const qd_ctl_opts *o, const char *path, qd_ctl_bundle *ret,
                          qd_ctl_error *err);
/* An upload's or a download's report: as JSON fields added to obj, or as a line on stdout. */
void qd_ctl_put_report_json(json_t *obj, const qd_ctl_bundle *b, const qd_ctl_put_report *r);
void qd_ctl_put_report_print(const char *what, const qd_ctl_bundle *b,
                             const qd_ctl_put_report *r);
void qd_ctl_fetch_report_json(json_t *obj, const qd_ctl_fetch_report *r);
void qd_ctl_fetch_report_print(const char *id, const char *dir, const qd_ctl_fetch_report *r);

int qd_ctl_cmd_put(const qd_ctl_opts *o, int argc, char **argv);
int qd_ctl_cmd_quantize(const qd_ctl_opts *o, int argc, char **argv);
int qd_ctl_cmd_status(const qd_ctl_opts *o, int argc, char **argv);
int qd_ctl_cmd_watch(const qd_ctl_opts *o, int argc, char **argv);
int qd_ctl_cmd_fetch(const qd_ctl_opts *o, int argc, char **argv);
int qd_ctl_cmd_ls(const qd_ctl_opts *o, int argc, char **argv);
int qd_ctl_cmd_cancel(const qd_ctl_opts *o, int argc, char **argv);
int qd_ctl_cmd_rm(const qd_ctl_opts *o, int argc, char **argv);
int qd_ctl_cmd_info(const qd_ctl_opts *o, int argc, char **argv);
int qd_ctl_cmd_health(const qd_ctl_opts *o, int argc, char **argv);

#endif /* QD_QUANTCTL_H */
