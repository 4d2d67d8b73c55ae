/*
 * metrics.c - the Prometheus metrics endpoint: the exposition-format renderer and the HTTP
 * server (GNU libmicrohttpd) that serves it on metrics.listen.
 *
 * DESIGN
 *
 * The text is rendered fresh for every scrape from one qd_service_stats copy
 * (qd_service_stats_get takes it under the service's lock), so the numbers of one scrape are
 * consistent with each other, and nothing is cached between scrapes. qd_metrics_render is a
 * pure function of that copy and the version, which is what test-metrics checks.
 *
 * Format (Prometheus text exposition format 0.0.4): every family has a HELP and a TYPE line,
 * then its samples. Integers are written as integers; floating-point values with the fewest
 * digits that read back to the same double (so 0.25 is "0.25", not 0.25000000000000000), and
 * NaN/+Inf/-Inf by their exposition names. Label values escape backslash, double quote and
 * newline; HELP text escapes backslash and newline. Every method of the spec table has its
 * duration histogram from the start (zeros until a job of that method runs), so rate() and
 * histogram_quantile() see a series before its first increment instead of a gap.
 *
 * The server: libmicrohttpd with its own polling thread (MHD_USE_INTERNAL_POLLING_THREAD),
 * at most QD_METRICS_MAX_CONNECTIONS connections and QD_METRICS_CONNECTION_TIMEOUT_S seconds
 * per idle connection, so a slow or stuck client cannot hold the endpoint or the daemon. The
 * listening socket is made here, not by libmicrohttpd, so that a failed bind reports the
 * system's reason (address in use, not a local address, permission) next to the key and the
 * address; SO_REUSEADDR lets a restarted daemon take its port back at once, and there is no
 * SO_REUSEPORT, so a second daemon cannot share the port. The thread inherits the serve
 * command's blocked signals (it is started after they are blocked), so signals still reach
 * only the main thread. Requests: GET or HEAD /metrics is 200 with the text, any other path is
 * 404, another method on /metrics is 405 with an Allow header. The handler answers on its
 * first call, before any request body is read, so a body is never buffered.
 */
#include "metrics.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "spec.h"

#ifndef QD_VERSION
#define QD_VERSION "0.0.0"
#endif

/* Pending connections the kernel keeps for the listening socket. */
#define LISTEN_BACKLOG 16

struct qd_metrics {
    struct MHD_Daemon *mhd;
    struct qd_service *svc; /* borrowed */
    uint16_t port;
    char url[96]; /* "http://[ffff:...:ffff]:65535/metrics" fits */
};

/* ---- the text buffer ------------------------------------------------------------------------- */

/* A growing NUL-terminated string; oom is sticky, so the renderer checks once at the end. */
typedef struct text_buf {
    char *p;
    size_t len, cap;
    bool oom;
} text_buf;

static bool buf_reserve(text_buf *b, size_t extra) {
    if (b->oom) return false;
    if (b->len + extra + 1 <= b->cap) return true;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra + 1) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
        b->oom = true;
        return false;
    }
    b->p = p;
    b->cap = cap;
    return true;
}

static void buf_put(text_buf *b, const char *s, size_t n) {
    if (!buf_reserve(b, n)) return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void buf_puts(text_buf *b, const char *s) { buf_put(b, s, strlen(s)); }

__attribute__((format(printf, 2, 3))) static void buf_printf(text_buf *b, const char *fmt, ...) {
    char small[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->oom = true; /* an encoding error cannot happen with our formats; fail loudly */
        return;
    }
    if ((size_t)n < sizeof small) {
        buf_put(b, small, (size_t)n);
        return;
    }
    if (!buf_reserve(b, (size_t)n)) return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

/* s with the exposition format's escapes: backslash and newline always, the double quote in a
 * label value (in_label). */
static void buf_escaped(text_buf *b, const char *s, size_t n, bool in_label) {
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (ch == '\\') buf_put(b, "\\\\", 2);
        else if (ch == '\n') buf_put(b, "\\n", 2);
        else if (ch == '"' && in_label) buf_put(b, "\\\"", 2);
        else buf_put(b, &ch, 1);
    }
}

/* ---- numbers --------------------------------------------------------------------------------- */

/* v with the fewest significant digits that read back to the same double (at most 17, which
 * always do); NaN, +Inf and -Inf as the format names them. Both snprintf and strtod follow the
 * C locale here: the daemon never calls setlocale. */
static void format_double(double v, char *buf, size_t cap) {
    if (isnan(v)) {
        snprintf(buf, cap, "NaN");
        return;
    }
    if (isinf(v)) {
        snprintf(buf, cap, "%s", v > 0 ? "+Inf" : "-Inf");
        return;
    }
    /* A whole number as one ("60", not "6e+01"), while every such double is exact (2^53). */
    if (v == trunc(v) && fabs(v) < 9007199254740992.0) {
        snprintf(buf, cap, "%.0f", v);
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, cap, "%.*g", prec, v);
        if (strtod(buf, NULL) == v) return;
    }
}

/* ---- families and samples -------------------------------------------------------------------- */

static void family(text_buf *b, const char *name, const char *type, const char *help) {
    buf_printf(b, "# HELP %s ", name);
    buf_escaped(b, help, strlen(help), false);
    buf_printf(b, "\n# TYPE %s %s\n", name, type);
}

/* One label pair of a sample: ',' before all but the first. value need not be NUL-terminated
 * within n bytes. */
static void label(text_buf *b, bool first, const char *key, const char *value, size_t n) {
    buf_printf(b, "%s%s=\"", first ? "" : ",", key);
    buf_escaped(b, value, n, true);
    buf_put(b, "\"", 1);
}

/* name{k1="v1"[,k2="v2"]} value: k1 NULL for no labels, k2 NULL for one. */
static void sample(text_buf *b, const char *name, const char *k1, const char *v1,
                   const char *k2, const char *v2, const char *value) {
    buf_puts(b, name);
    if (k1) {
        buf_put(b, "{", 1);
        label(b, true, k1, v1, strlen(v1));
        if (k2) label(b, false, k2, v2, strlen(v2));
        buf_put(b, "}", 1);
    }
    buf_printf(b, " %s\n", value);
}

static void sample_u64(text_buf *b, const char *name, const char *k, const char *v, uint64_t n) {
    char num[32];
    snprintf(num, sizeof num, "%" PRIu64, n);
    sample(b, name, k, v, NULL, NULL, num);
}

/* A count that cannot be negative, shown as 0 if it somehow is (a gauge read as a counter by
 * mistake then never shows a drop below zero). */
static uint64_t non_negative(int n) { return n > 0 ? (uint64_t)n : 0; }

/* ---- the renderer ---------------------------------------------------------------------------- */

static void render_jobs(text_buf *b, const qd_service_stats *st) {
    family(b, "quantd_jobs", "gauge", "Jobs queued or running now, by state.");
    sample_u64(b, "quantd_jobs", "state", "queued", non_negative(st->n_jobs_queued));
    sample_u64(b, "quantd_jobs", "state", "running", non_negative(st->n_jobs_running));

    static const char *const finished[3] = {"succeeded", "failed", "cancelled"};
    family(b, "quantd_jobs_finished_total", "counter",
           "Jobs that ended since the daemon started, by final state.");
    for (int i = 0; i < 3; i++)
        sample_u64(b, "quantd_jobs_finished_total", "state", finished[i], st->jobs_finished[i]);
}

/* The duration histogram: per method, the cumulative buckets with the bounds of
 * qd_service_duration_bounds, then +Inf, _sum and _count. The +Inf bucket is written as the
 * count: by definition it holds every observation. */
static void render_durations(text_buf *b, const qd_service_stats *st) {
    family(b, "quantd_job_duration_seconds", "histogram",
           "Run time of jobs that ran (cache hits excluded), from start to end, by method.");
    char le[40], num[40];
    for (int m = 1; m < QD_SPEC_METHOD_COUNT; m++) {
        const char *method = qd_spec_method_name((qd_spec_method)m);
        if (!method) continue;
        for (int i = 0; i < QD_SERVICE_DURATION_BUCKETS - 1; i++) {
            format_double(qd_service_duration_bounds[i], le, sizeof le);
            snprintf(num, sizeof num, "%" PRIu64, st->duration_buckets[m][i]);
            sample(b, "quantd_job_duration_seconds_bucket", "method", method, "le", le, num);
        }
        snprintf(num, sizeof num, "%" PRIu64, st->duration_count[m]);
        sample(b, "quantd_job_duration_seconds_bucket", "method", method, "le", "+Inf", num);
        format_double(st->duration_sum[m], num, sizeof num);
        sample(b, "quantd_job_duration_seconds_sum", "method", method, NULL, NULL, num);
        sample_u64(b, "quantd_job_duration_seconds_count", "method", method,
                   st->duration_count[m]);
    }
}

static void render_cache(text_buf *b, const qd_service_stats *st) {
    family(b, "quantd_cache_requests_total", "counter",
           "Quantize requests by how the cache answered: hit (an artifact was held), "
           "miss (a new job was queued), join (a job of the same key was already live).");
    sample_u64(b, "quantd_cache_requests_total", "result", "hit", st->cache_hits);
    sample_u64(b, "quantd_cache_requests_total", "result", "miss", st->cache_misses);
    sample_u64(b, "quantd_cache_requests_total", "result", "join", st->cache_joins);

    family(b, "quantd_cache_bytes", "gauge", "Bytes of the artifacts held in the cache.");
    sample_u64(b, "quantd_cache_bytes", NULL, NULL, st->cache_bytes);
    family(b, "quantd_cache_artifacts", "gauge", "Artifacts held in the cache.");
    sample_u64(b, "quantd_cache_artifacts", NULL, NULL, non_negative(st->n_artifacts));
    family(b, "quantd_blob_bytes", "gauge",
           "Bytes of the uploaded model and calibration files held.");
    sample_u64(b, "quantd_blob_bytes", NULL, NULL, st->blob_bytes);
}

static void render_io(text_buf *b, const qd_service_stats *st) {
    family(b, "quantd_received_bytes_total", "counter",
           "Bytes of uploaded model and calibration files written since the daemon started.");
    sample_u64(b, "quantd_received_bytes_total", NULL, NULL, st->bytes_in);
    family(b, "quantd_sent_bytes_total", "counter",
           "Bytes of artifact files sent to clients since the daemon started.");
    sample_u64(b, "quantd_sent_bytes_total", NULL, NULL, st->bytes_out);
}

static void render_workers(text_buf *b, const qd_service_stats *st) {
    family(b, "quantd_worker_busy_seconds_total", "counter",
           "Seconds each worker spent running jobs since the daemon started.");
    int n = st->n_workers;
    int max = (int)(sizeof st->worker_name / sizeof st->worker_name[0]);
    if (n > max) n = max;
    char num[40];
    for (int i = 0; i < n; i++) {
        const char *name = st->worker_name[i];
        format_double(st->worker_busy_s[i], num, sizeof num);
        buf_puts(b, "quantd_worker_busy_seconds_total{");
        label(b, true, "worker", name, strnlen(name, sizeof st->worker_name[i]));
        buf_printf(b, "} %s\n", num);
    }
}

qd_err qd_metrics_render(const qd_service_stats *st, const char *version, char **ret,
                         size_t *ret_len, qd_error *err) {
    text_buf b = {0};
    family(&b, "quantd_up", "gauge", "1 while the daemon answers scrapes.");
    sample(&b, "quantd_up", NULL, NULL, NULL, NULL, "1");
    family(&b, "quantd_build_info", "gauge", "The daemon's version, as a label; always 1.");
    sample(&b, "quantd_build_info", "version", version ? version : "", NULL, NULL, "1");
    render_jobs(&b, st);
    render_durations(&b, st);
    render_cache(&b, st);
    render_io(&b, st);
    render_workers(&b, st);
    if (b.oom || !b.p) {
        free(b.p);
        return qd_error_set(err, QD_ERR_NOMEM, "metrics: out of memory rendering the text");
    }
    *ret = b.p;
    *ret_len = b.len;
    return QD_OK;
}

/* ---- the listen address ---------------------------------------------------------------------- */

#define LISTEN_EXPECTED "'IPV4:PORT', '[IPV6]:PORT' or 'localhost:PORT' (port 0..65535)"

static qd_err bad_listen(qd_error *err, const char *addr, const char *what) {
    return qd_error_set(err, QD_ERR_CONFIG, "metrics.listen: expected %s, got '%.200s'", what,
                        addr);
}

qd_err qd_metrics_parse_listen(const char *addr, struct sockaddr_storage *ret,
                               socklen_t *ret_len, qd_error *err) {
    char host[INET6_ADDRSTRLEN + 1];
    const char *host_start, *host_end, *port;
    bool v6 = addr[0] == '[';
    if (v6) {
        host_start = addr + 1;
        host_end = strchr(addr, ']');
        if (!host_end || host_end[1] != ':') return bad_listen(err, addr, LISTEN_EXPECTED);
        port = host_end + 2;
    } else {
        host_start = addr;
        host_end = strrchr(addr, ':');
        if (!host_end) return bad_listen(err, addr, LISTEN_EXPECTED);
        if (memchr(addr, ':', (size_t)(host_end - addr)))
            return bad_listen(err, addr, "an IPv6 address in brackets, such as '[::1]:7434'");
        port = host_end + 1;
    }
    size_t hl = (size_t)(host_end - host_start);
    if (hl == 0 || hl >= sizeof host) return bad_listen(err, addr, LISTEN_EXPECTED);
    memcpy(host, host_start, hl);
    host[hl] = '\0';

    /* The port: 1 to 5 digits, 0..65535 (0 = a free port). */
    size_t pl = strspn(port, "0123456789");
    if (pl == 0 || pl > 5 || port[pl] != '\0')
        return bad_listen(err, addr, "a port 0..65535 after the host (0 picks a free port)");
    unsigned long pn = 0;
    for (size_t i = 0; i < pl; i++) pn = pn * 10 + (unsigned long)(port[i] - '0');
    if (pn > 65535)
        return bad_listen(err, addr, "a port 0..65535 after the host (0 picks a free port)");

    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    if (v6) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)pn);
        if (inet_pton(AF_INET6, host, &s6->sin6_addr) != 1)
            return bad_listen(err, addr, "an IPv6 address in brackets (no zone), such as "
                                         "'[::1]:7434'");
        *ret_len = sizeof *s6;
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)pn);
        /* localhost is the loopback address itself: no resolver, no surprise from /etc/hosts. */
        if (strcmp(host, "localhost") == 0) snprintf(host, sizeof host, "127.0.0.1");
        if (inet_pton(AF_INET, host, &s4->sin_addr) != 1)
            return bad_listen(err, addr, "an IPv4 address or localhost before ':port' (host "
                                         "names are not resolved)");
        *ret_len = sizeof *s4;
    }
    *ret = ss;
    return QD_OK;
}

/* ---- the HTTP server ------------------------------------------------------------------------- */

/* Queue a plain-text answer. body is a static string; allow (may be NULL) is the Allow header
 * of a 405. */
static enum MHD_Result reply_text(struct MHD_Connection *conn, unsigned status,
                                  const char *body, const char *allow) {
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(body), (void *)body, MHD_RESPMEM_PERSISTENT);
    if (!r) return MHD_NO;
    enum MHD_Result ok = MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE,
                                                 "text/plain; charset=utf-8");
    if (ok == MHD_YES && allow) ok = MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, allow);
    if (ok == MHD_YES) ok = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return ok;
}

/* libmicrohttpd's request handler (its thread), called once with the headers, then with each
 * piece of a body, then once more with none. A refusal (404, 405) is answered at the first call,
 * without reading a body (libmicrohttpd then closes the connection). A scrape is answered at the
 * last call, once the request is complete, so the connection can be kept for the next scrape;
 * a body sent with it is read and dropped. */
static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **req_cls) {
    static int seen; /* the address marks a request whose headers were handled */
    (void)version;
    (void)upload_data;
    struct qd_metrics *m = cls;
    if (!*req_cls) {
        if (strcmp(url, "/metrics") != 0)
            return reply_text(conn, MHD_HTTP_NOT_FOUND,
                              "not found: the metrics are at /metrics\n", NULL);
        if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 &&
            strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
            return reply_text(conn, MHD_HTTP_METHOD_NOT_ALLOWED,
                              "method not allowed: /metrics answers GET and HEAD\n", "GET, HEAD");
        *req_cls = &seen;
        return MHD_YES;
    }
    if (*upload_data_size != 0) {
        *upload_data_size = 0;
        return MHD_YES;
    }

    qd_service_stats st;
    qd_service_stats_get(m->svc, &st);
    char *text = NULL;
    size_t len = 0;
    qd_error err = {0};
    if (qd_metrics_render(&st, QD_VERSION, &text, &len, &err) != QD_OK)
        return reply_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n", NULL);
    /* MUST_FREE: libmicrohttpd free()s text once the response is sent or dropped. */
    struct MHD_Response *r = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(text);
        return MHD_NO;
    }
    enum MHD_Result ok =
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, QD_METRICS_CONTENT_TYPE);
    if (ok == MHD_YES) ok = MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    if (ok == MHD_YES) ok = MHD_queue_response(conn, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    return ok;
}

/* A listening TCP socket on sa, non-blocking and close-on-exec. -1 with *ret_errno on failure. */
static int listen_socket(const struct sockaddr_storage *sa, socklen_t sl, int *ret_errno) {
    int fd = socket(sa->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        *ret_errno = errno;
        return -1;
    }
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(fd, (const struct sockaddr *)sa, sl) != 0 || listen(fd, LISTEN_BACKLOG) != 0) {
        *ret_errno = errno;
        close(fd);
        return -1;
    }
    return fd;
}

qd_err qd_metrics_start(struct qd_service *svc, const char *listen_addr, struct qd_metrics **ret,
                        qd_error *err) {
    struct sockaddr_storage sa;
    socklen_t sl = 0;
    qd_err rc = qd_metrics_parse_listen(listen_addr, &sa, &sl, err);
    if (rc != QD_OK) return rc;

    int e = 0;
    int fd = listen_socket(&sa, sl, &e);
    if (fd < 0)
        return qd_error_set(err, QD_ERR_UNAVAILABLE, "metrics.listen: cannot listen on %s: %s",
                            listen_addr, strerror(e));
    struct sockaddr_storage bound;
    socklen_t bl = sizeof bound;
    char host[INET6_ADDRSTRLEN];
    if (getsockname(fd, (struct sockaddr *)&bound, &bl) != 0) {
        e = errno;
        close(fd);
        return qd_error_set(err, QD_ERR_UNAVAILABLE, "metrics.listen: %s: cannot read the "
                            "bound address: %s", listen_addr, strerror(e));
    }
    uint16_t port;
    if (bound.ss_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&bound;
        port = ntohs(s6->sin6_port);
        inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof host);
    } else {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)&bound;
        port = ntohs(s4->sin_port);
        inet_ntop(AF_INET, &s4->sin_addr, host, sizeof host);
    }

    struct qd_metrics *m = calloc(1, sizeof *m);
    if (!m) {
        close(fd);
        return qd_error_set(err, QD_ERR_NOMEM, "metrics.listen: out of memory");
    }
    m->svc = svc;
    m->port = port;
    snprintf(m->url, sizeof m->url, bound.ss_family == AF_INET6 ? "http://[%s]:%u/metrics"
                                                                : "http://%s:%u/metrics",
             host, (unsigned)port);
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO;
    if (bound.ss_family == AF_INET6) flags |= MHD_USE_IPv6;
    m->mhd = MHD_start_daemon(flags, 0, NULL, NULL, on_request, m, MHD_OPTION_LISTEN_SOCKET, fd,
                              MHD_OPTION_CONNECTION_LIMIT, (unsigned)QD_METRICS_MAX_CONNECTIONS,
                              MHD_OPTION_CONNECTION_TIMEOUT,
                              (unsigned)QD_METRICS_CONNECTION_TIMEOUT_S, MHD_OPTION_END);
    if (!m->mhd) {
        /* Whether libmicrohttpd closes a socket it was given when it fails to start differs
         * between its versions; fd is left as it is rather than risk closing a descriptor
         * another thread has opened since. The daemon does not go on after this failure. */
        free(m);
        return qd_error_set(err, QD_ERR_INTERNAL, "metrics.listen: %s: the HTTP server did "
                            "not start", listen_addr);
    }
    *ret = m;
    return QD_OK;
}

const char *qd_metrics_url(const struct qd_metrics *m) { return m ? m->url : ""; }

uint16_t qd_metrics_port(const struct qd_metrics *m) { return m ? m->port : 0; }

void qd_metrics_stop(struct qd_metrics *m) {
    if (!m) return;
    /* Closes the listening socket and every connection, and joins the thread. */
    if (m->mhd) MHD_stop_daemon(m->mhd);
    free(m);
}
