/*
 * metrics.h - the Prometheus metrics endpoint of `quantd serve`: an HTTP server (GNU
 * libmicrohttpd, on a thread of its own) that answers GET /metrics with the service's counters
 * in the Prometheus text exposition format 0.0.4, and the renderer that writes that text.
 *
 * Usage (cmd_serve.c):
 *     struct qd_metrics *m = NULL;
 *     if (cfg.metrics.listen && qd_metrics_start(svc, cfg.metrics.listen, &m, &err) != QD_OK)
 *         ... report qd_error_text(&err), exit ...
 *     ... qd_metrics_url(m) is "http://127.0.0.1:7434/metrics", with the port actually bound ...
 *     qd_metrics_stop(m);   before qd_service_close(svc)
 *
 * The renderer is a pure function of a qd_service_stats, so the text can be checked without
 * HTTP; docs/operations.md describes every metric.
 */
#ifndef QD_METRICS_H
#define QD_METRICS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "error.h"
#include "service.h"

/* The Content-Type of the exposition text. */
#define QD_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"
/* Connections served at once (a scraper or two and a person with curl), and how long an idle
 * or stalled connection is kept, in seconds. */
#define QD_METRICS_MAX_CONNECTIONS 8
#define QD_METRICS_CONNECTION_TIMEOUT_S 10

struct qd_metrics;

/*
 * Serve svc's counters on listen_addr until qd_metrics_stop(). listen_addr is
 * "IPV4:PORT", "[IPV6]:PORT" or "localhost:PORT" (127.0.0.1); port 0 takes a free port (see
 * qd_metrics_port). svc is borrowed and must outlive the endpoint. Errors name the key
 * metrics.listen and the address: QD_ERR_CONFIG for an address that does not parse,
 * QD_ERR_UNAVAILABLE for one that cannot be bound (with the system's reason), QD_ERR_NOMEM,
 * QD_ERR_INTERNAL when the HTTP server does not start. *ret is written only on success.
 */
qd_err qd_metrics_start(struct qd_service *svc, const char *listen_addr, struct qd_metrics **ret,
                        qd_error *err);
/* "http://127.0.0.1:PORT/metrics", "http://[::1]:PORT/metrics": the bound address and port.
 * Borrowed; valid until qd_metrics_stop(). */
const char *qd_metrics_url(const struct qd_metrics *m);
uint16_t qd_metrics_port(const struct qd_metrics *m);
/* Close the listening socket and every connection, join the server's thread, free m. After it
 * returns no request runs. Accepts NULL. */
void qd_metrics_stop(struct qd_metrics *m);

/*
 * The exposition text of st, every metric with its HELP and TYPE lines; version goes into
 * quantd_build_info's label. *ret is malloc'd and NUL-terminated (caller frees); *ret_len is
 * its length without the NUL. Fails only on allocation failure (QD_ERR_NOMEM); *ret and
 * *ret_len are written only on success.
 */
qd_err qd_metrics_render(const qd_service_stats *st, const char *version, char **ret,
                         size_t *ret_len, qd_error *err);

/* Parse a metrics.listen address (the forms of qd_metrics_start) into a socket address. Errors
 * are QD_ERR_CONFIG, "metrics.listen: expected ..., got '...'". */
qd_err qd_metrics_parse_listen(const char *addr, struct sockaddr_storage *ret,
                               socklen_t *ret_len, qd_error *err);

#endif /* QD_METRICS_H */
