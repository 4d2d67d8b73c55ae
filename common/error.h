/*
 * error.h - quantd's one table of error codes.
 *
 * Every fallible function in quantd returns a qd_err and, where the caller passes one, fills a
 * qd_error with a message naming the thing that failed (the file, the tensor, the key, the
 * field). The first error wins: qd_error_set() does not overwrite a message already there, so
 * the innermost, most precise cause reaches the user (curl's error-buffer discipline).
 *
 * Each code maps to one gRPC status (numbers from grpc/status.h; this header stays free of
 * gRPC so every module can use it). Add a code by adding one line to QD_ERROR_TABLE.
 */
#ifndef QD_ERROR_H
#define QD_ERROR_H

#include <stdarg.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/*        name           message                              gRPC status */
#define QD_ERROR_TABLE(X)                                                               \
    X(OK,              "success",                             0  /* OK */)              \
    X(INVALID_ARG,     "invalid argument",                    3  /* INVALID_ARGUMENT */)\
    X(FORMAT,          "malformed input file",                3  /* INVALID_ARGUMENT */)\
    X(CONFIG,          "invalid configuration",               3  /* INVALID_ARGUMENT */)\
    X(UNSUPPORTED,     "unsupported",                         3  /* INVALID_ARGUMENT */)\
    X(NOT_FOUND,       "not found",                           5  /* NOT_FOUND */)       \
    X(EXISTS,          "already exists",                      6  /* ALREADY_EXISTS */)  \
    X(PERMISSION,      "permission denied",                   7  /* PERMISSION_DENIED */)\
    X(NOMEM,           "out of memory",                       8  /* RESOURCE_EXHAUSTED */)\
    X(TOO_LARGE,       "size limit exceeded",                 8  /* RESOURCE_EXHAUSTED */)\
    X(PRECONDITION,    "failed precondition",                 9  /* FAILED_PRECONDITION */)\
    X(CANCELLED,       "cancelled",                           1  /* CANCELLED */)       \
    X(DEADLINE,        "deadline exceeded",                   4  /* DEADLINE_EXCEEDED */)\
    X(IO,              "I/O error",                           13 /* INTERNAL */)        \
    X(DEVICE,          "device error",                        13 /* INTERNAL */)        \
    X(INTERNAL,        "internal error",                      13 /* INTERNAL */)        \
    X(UNAVAILABLE,     "service unavailable",                 14 /* UNAVAILABLE */)     \
    X(CORRUPT,         "data corrupted",                      15 /* DATA_LOSS */)       \
    X(UNAUTHENTICATED, "unauthenticated",                     16 /* UNAUTHENTICATED */)

typedef enum qd_err {
#define QD_ERR_ENUM_(name, msg, grpc) QD_ERR_##name,
    QD_ERROR_TABLE(QD_ERR_ENUM_)
#undef QD_ERR_ENUM_
    QD_ERR_COUNT
} qd_err;

#define QD_OK QD_ERR_OK

/* "INVALID_ARG", "FORMAT", ...; "UNKNOWN" for an out-of-range code. */
const char *qd_err_name(qd_err code);
/* Short fixed text of the code ("malformed input file"). */
const char *qd_err_str(qd_err code);
/* The gRPC status code the daemon answers with. */
int qd_err_grpc_status(qd_err code);

#define QD_ERROR_MSG_MAX 512

/* An error with its message. Zero-initialise (`qd_error e = {0};`) before use. */
typedef struct qd_error {
    qd_err code;
    char msg[QD_ERROR_MSG_MAX];
} qd_error;

/* Record code and a printf-style message in e (which may be NULL), unless e already holds an
 * error. Always returns code, so `return qd_error_set(e, QD_ERR_FORMAT, "...")` reads well. */
qd_err qd_error_set(qd_error *e, qd_err code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
qd_err qd_error_vset(qd_error *e, qd_err code, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));
/* Prefix an existing message with context ("model.safetensors: " + msg). No-op if e is NULL
 * or holds no error. */
void qd_error_prefix(qd_error *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Clear e back to QD_OK. */
void qd_error_clear(qd_error *e);
/* The message if one was set, else the code's fixed text. */
const char *qd_error_text(const qd_error *e);

#ifdef __cplusplus
}
#endif

#endif /* QD_ERROR_H */
