/* error.c - the error table's accessors and the first-error-wins message buffer. */
#include "error.h"

#include <stdio.h>
#include <string.h>

static const struct {
    const char *name;
    const char *msg;
    int grpc;
} error_table[QD_ERR_COUNT] = {
#define QD_ERR_ROW_(name, msg, grpc) {#name, msg, grpc},
    QD_ERROR_TABLE(QD_ERR_ROW_)
#undef QD_ERR_ROW_
};

const char *qd_err_name(qd_err code) {
    if ((unsigned)code >= QD_ERR_COUNT) return "UNKNOWN";
    return error_table[code].name;
}

const char *qd_err_str(qd_err code) {
    if ((unsigned)code >= QD_ERR_COUNT) return "unknown error";
    return error_table[code].msg;
}

int qd_err_grpc_status(qd_err code) {
    if ((unsigned)code >= QD_ERR_COUNT) return 2; /* UNKNOWN */
    return error_table[code].grpc;
}

qd_err qd_error_vset(qd_error *e, qd_err code, const char *fmt, va_list ap) {
    if (!e || e->code != QD_OK || code == QD_OK) return code;
    e->code = code;
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    return code;
}

qd_err qd_error_set(qd_error *e, qd_err code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    qd_error_vset(e, code, fmt, ap);
    va_end(ap);
    return code;
}

void qd_error_prefix(qd_error *e, const char *fmt, ...) {
    if (!e || e->code == QD_OK) return;
    char head[QD_ERROR_MSG_MAX];
    char old[QD_ERROR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(head, sizeof head, fmt, ap);
    va_end(ap);
    memcpy(old, e->msg, sizeof old);
    size_t hl = strlen(head);
    if (hl >= sizeof e->msg) hl = sizeof e->msg - 1;
    memcpy(e->msg, head, hl);
    size_t ol = strnlen(old, sizeof old);
    if (ol > sizeof e->msg - 1 - hl) ol = sizeof e->msg - 1 - hl;
    memcpy(e->msg + hl, old, ol);
    e->msg[hl + ol] = '\0';
}

void qd_error_clear(qd_error *e) {
    if (!e) return;
    e->code = QD_OK;
    e->msg[0] = '\0';
}

const char *qd_error_text(const qd_error *e) {
    if (!e) return "";
    if (e->msg[0]) return e->msg;
    return qd_err_str(e->code);
}
