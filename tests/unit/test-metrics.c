/*
 * test-metrics.c - the Prometheus endpoint (daemon/metrics.h): the renderer on counters with
 * known numbers (exact sample lines, cumulative histogram buckets whose +Inf equals _count,
 * HELP/TYPE before every family, label escaping, number formatting), the listen-address
 * parser, and the HTTP server over a real socket on a service opened in a temporary directory
 * (200 with the exposition Content-Type, HEAD, 404, 405 with Allow, a taken port named in the
 * error, nothing listening after stop).
 *
 * The expected bucket counts are computed here from a list of observed durations, not copied
 * from the renderer's output, so a renderer that shifts buckets, drops +Inf or writes
 * per-bucket instead of cumulative counts fails.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "config.h"
#include "fsutil.h"
#include "metrics.h"
#include "service.h"
#include "spec.h"
#include "test.h"

/* ---- helpers --------------------------------------------------------------------------------- */

static bool has_line(const char *text, const char *line) {
    size_t n = strlen(line);
    for (const char *p = text; (p = strstr(p, line)) != NULL; p++)
        if ((p == text || p[-1] == '\n') && p[n] == '\n') return true;
    return false;
}

#define CHECK_LINE(text, line) QD_CHECK_MSG(has_line(text, line), "missing line: %s", line)

/* The value of the sample line that starts with "prefix " (name and labels), or NAN. */
static double sample_value(const char *text, const char *prefix) {
    size_t n = strlen(prefix);
    for (const char *p = text; (p = strstr(p, prefix)) != NULL; p++) {
        if ((p == text || p[-1] == '\n') && p[n] == ' ') {
            const char *v = p + n + 1;
            if (strncmp(v, "+Inf", 4) == 0) return INFINITY;
            return strtod(v, NULL);
        }
    }
    return NAN;
}

/* The family a sample name belongs to: histogram samples drop _bucket/_sum/_count. */
static void family_of(const char *name, size_t n, const char *text, char *out, size_t cap) {
    static const char *const suffixes[] = {"_bucket", "_sum", "_count"};
    snprintf(out, cap, "%.*s", (int)n, name);
    for (size_t i = 0; i < 3; i++) {
        size_t sl = strlen(suffixes[i]);
        if (n <= sl || strcmp(out + n - sl, suffixes[i]) != 0) continue;
        char type_line[256];
        snprintf(type_line, sizeof type_line, "# TYPE %.*s histogram", (int)(n - sl), name);
        if (has_line(text, type_line)) out[n - sl] = '\0';
    }
}

/* Every sample's family has "# HELP" then "# TYPE" lines before its first sample, no family
 * is declared twice, every value is a number, and the text ends with a newline. */
static void check_structure(const char *text) {
    size_t len = strlen(text);
    QD_REQUIRE(len > 0 && text[len - 1] == '\n');
    char declared[64][96];
    int n_declared = 0;
    char last_help[96] = "";
    for (const char *l = text; *l;) {
        const char *e = strchr(l, '\n');
        size_t n = (size_t)(e - l);
        if (strncmp(l, "# HELP ", 7) == 0) {
            size_t nl = strcspn(l + 7, " \n");
            snprintf(last_help, sizeof last_help, "%.*s", (int)nl, l + 7);
            for (int i = 0; i < n_declared; i++)
                QD_CHECK_MSG(strcmp(declared[i], last_help) != 0, "%s declared twice",
                             last_help);
        } else if (strncmp(l, "# TYPE ", 7) == 0) {
            size_t nl = strcspn(l + 7, " \n");
            char name[96];
            snprintf(name, sizeof name, "%.*s", (int)nl, l + 7);
            QD_CHECK_MSG(strcmp(name, last_help) == 0, "TYPE %s without its HELP first", name);
            const char *type = l + 7 + nl + 1;
            size_t tl = n - 7 - nl - 1;
            QD_CHECK_MSG((tl == 5 && strncmp(type, "gauge", 5) == 0) ||
                             (tl == 7 && strncmp(type, "counter", 7) == 0) ||
                             (tl == 9 && strncmp(type, "histogram", 9) == 0),
                         "%s: type '%.*s'", name, (int)tl, type);
            if (n_declared < 64) snprintf(declared[n_declared++], sizeof declared[0], "%s", name);
        } else {
            QD_CHECK_MSG(l[0] != '#', "stray comment: %.*s", (int)n, l);
            size_t nl = strcspn(l, "{ ");
            char fam[96];
            family_of(l, nl, text, fam, sizeof fam);
            bool found = false;
            for (int i = 0; i < n_declared; i++) found = found || strcmp(declared[i], fam) == 0;
            QD_CHECK_MSG(found, "sample before its family's TYPE: %.*s", (int)n, l);
            QD_CHECK_MSG(strncmp(fam, "quantd_", 7) == 0, "not quantd_: %s", fam);
            /* The value: after the last space; a number, +Inf or NaN. */
            const char *sp = l + n;
            while (sp > l && sp[-1] != ' ') sp--;
            char *end;
            errno = 0;
            double v = strtod(sp, &end);
            QD_CHECK_MSG(sp > l && end == l + n && errno == 0 && !isnan(v),
                         "value of '%.*s' is not a number", (int)n, l);
        }
        l = e + 1;
    }
}

/* Counters with known numbers. Durations go through the test's own bucketing. */
static const double RTN_SECONDS[] = {0.5, 1.0, 3.0, 3.0, 100.0, 0.25};
static const double AWQ_SECONDS[] = {20000.0};

static void observe(qd_service_stats *st, qd_spec_method m, const double *secs, size_t n) {
    for (size_t k = 0; k < n; k++) {
        for (int b = 0; b < QD_SERVICE_DURATION_BUCKETS; b++)
            if (b == QD_SERVICE_DURATION_BUCKETS - 1 || secs[k] <= qd_service_duration_bounds[b])
                st->duration_buckets[m][b]++;
        st->duration_sum[m] += secs[k];
        st->duration_count[m]++;
    }
}

static qd_service_stats known_stats(void) {
    qd_service_stats st;
    memset(&st, 0, sizeof st);
    st.n_jobs_queued = 3;
    st.n_jobs_running = 1;
    st.n_artifacts = 9;
    st.cache_bytes = UINT64_C(1) << 40;
    st.blob_bytes = 17;
    st.jobs_finished[0] = 7;
    st.jobs_finished[1] = 2;
    st.jobs_finished[2] = 1;
    st.cache_hits = 5;
    st.cache_misses = 4;
    st.cache_joins = 1;
    st.bytes_in = UINT64_C(123456789012);
    st.bytes_out = UINT64_C(18446744073709551615); /* a counter near wrapping stays exact */
    observe(&st, QD_SPEC_METHOD_RTN, RTN_SECONDS, sizeof RTN_SECONDS / sizeof RTN_SECONDS[0]);
    observe(&st, QD_SPEC_METHOD_AWQ, AWQ_SECONDS, 1);
    st.n_workers = 3;
    snprintf(st.worker_name[0], sizeof st.worker_name[0], "cpu0");
    snprintf(st.worker_name[1], sizeof st.worker_name[1], "cuda:0");
    snprintf(st.worker_name[2], sizeof st.worker_name[2], "w\"x\\y\nz");
    st.worker_busy_s[0] = 12.25;
    st.worker_busy_s[1] = 0.1;
    st.worker_busy_s[2] = 1.0 / 3.0;
    return st;
}

static char *render(const qd_service_stats *st, const char *version) {
    char *text = NULL;
    size_t len = 0;
    qd_error err = {0};
    QD_CHECK_OK(qd_metrics_render(st, version, &text, &len, &err), &err);
    if (text) QD_CHECK_EQ_INT(strlen(text), len);
    return text;
}

/* ---- the renderer ---------------------------------------------------------------------------- */

QD_TEST(render_writes_every_metric_exactly) {
    qd_service_stats st = known_stats();
    char *t = render(&st, "1.2.3");
    QD_REQUIRE(t != NULL);
    check_structure(t);
    CHECK_LINE(t, "# TYPE quantd_up gauge");
    CHECK_LINE(t, "quantd_up 1");
    CHECK_LINE(t, "quantd_build_info{version=\"1.2.3\"} 1");
    CHECK_LINE(t, "# TYPE quantd_jobs gauge");
    CHECK_LINE(t, "quantd_jobs{state=\"queued\"} 3");
    CHECK_LINE(t, "quantd_jobs{state=\"running\"} 1");
    CHECK_LINE(t, "# TYPE quantd_jobs_finished_total counter");
    CHECK_LINE(t, "quantd_jobs_finished_total{state=\"succeeded\"} 7");
    CHECK_LINE(t, "quantd_jobs_finished_total{state=\"failed\"} 2");
    CHECK_LINE(t, "quantd_jobs_finished_total{state=\"cancelled\"} 1");
    CHECK_LINE(t, "# TYPE quantd_cache_requests_total counter");
    CHECK_LINE(t, "quantd_cache_requests_total{result=\"hit\"} 5");
    CHECK_LINE(t, "quantd_cache_requests_total{result=\"miss\"} 4");
    CHECK_LINE(t, "quantd_cache_requests_total{result=\"join\"} 1");
    CHECK_LINE(t, "# TYPE quantd_cache_bytes gauge");
    CHECK_LINE(t, "quantd_cache_bytes 1099511627776");
    CHECK_LINE(t, "# TYPE quantd_cache_artifacts gauge");
    CHECK_LINE(t, "quantd_cache_artifacts 9");
    CHECK_LINE(t, "# TYPE quantd_blob_bytes gauge");
    CHECK_LINE(t, "quantd_blob_bytes 17");
    CHECK_LINE(t, "# TYPE quantd_received_bytes_total counter");
    CHECK_LINE(t, "quantd_received_bytes_total 123456789012");
    CHECK_LINE(t, "# TYPE quantd_sent_bytes_total counter");
    CHECK_LINE(t, "quantd_sent_bytes_total 18446744073709551615");
    CHECK_LINE(t, "# TYPE quantd_worker_busy_seconds_total counter");
    CHECK_LINE(t, "quantd_worker_busy_seconds_total{worker=\"cpu0\"} 12.25");
    CHECK_LINE(t, "quantd_worker_busy_seconds_total{worker=\"cuda:0\"} 0.1");
    CHECK_LINE(t, "# TYPE quantd_job_duration_seconds histogram");
    /* 0.5+1+3+3+100+0.25 */
    CHECK_LINE(t, "quantd_job_duration_seconds_sum{method=\"rtn\"} 107.75");
    CHECK_LINE(t, "quantd_job_duration_seconds_count{method=\"rtn\"} 6");
    CHECK_LINE(t, "quantd_job_duration_seconds_sum{method=\"awq\"} 20000");
    free(t);
}

QD_TEST(histogram_buckets_are_cumulative_and_end_at_count) {
    qd_service_stats st = known_stats();
    char *t = render(&st, "1");
    QD_REQUIRE(t != NULL);
    /* Every method of the spec table has a histogram, from the first scrape. */
    for (int m = 1; m < QD_SPEC_METHOD_COUNT; m++) {
        const char *method = qd_spec_method_name((qd_spec_method)m);
        QD_REQUIRE(method != NULL);
        const double *obs = m == QD_SPEC_METHOD_RTN ? RTN_SECONDS
                            : m == QD_SPEC_METHOD_AWQ ? AWQ_SECONDS : NULL;
        size_t n_obs = m == QD_SPEC_METHOD_RTN   ? sizeof RTN_SECONDS / sizeof RTN_SECONDS[0]
                       : m == QD_SPEC_METHOD_AWQ ? 1 : 0;
        double prev = 0;
        for (int b = 0; b < QD_SERVICE_DURATION_BUCKETS; b++) {
            bool inf = b == QD_SERVICE_DURATION_BUCKETS - 1;
            char prefix[160], le[32];
            if (inf) snprintf(le, sizeof le, "+Inf");
            else snprintf(le, sizeof le, "%.0f", qd_service_duration_bounds[b]);
            snprintf(prefix, sizeof prefix,
                     "quantd_job_duration_seconds_bucket{method=\"%s\",le=\"%s\"}", method, le);
            double got = sample_value(t, prefix);
            /* The expectation: observations <= the bound (all of them for +Inf). */
            size_t want = 0;
            for (size_t k = 0; k < n_obs; k++)
                want += inf || obs[k] <= qd_service_duration_bounds[b];
            QD_CHECK_MSG(got == (double)want, "%s: %g, want %zu", prefix, got, want);
            QD_CHECK_MSG(got >= prev, "%s: %g after %g: not cumulative", prefix, got, prev);
            prev = got;
        }
        char prefix[160];
        snprintf(prefix, sizeof prefix, "quantd_job_duration_seconds_count{method=\"%s\"}",
                 method);
        QD_CHECK_MSG(sample_value(t, prefix) == prev, "%s: +Inf bucket %g != _count", method,
                     prev);
        QD_CHECK_MSG(prev == (double)n_obs, "%s: count %g, want %zu", method, prev, n_obs);
    }
    /* Spot checks in the exact text: the bounds are whole numbers written as such. */
    CHECK_LINE(t, "quantd_job_duration_seconds_bucket{method=\"rtn\",le=\"1\"} 3");
    CHECK_LINE(t, "quantd_job_duration_seconds_bucket{method=\"rtn\",le=\"5\"} 5");
    CHECK_LINE(t, "quantd_job_duration_seconds_bucket{method=\"rtn\",le=\"60\"} 5");
    CHECK_LINE(t, "quantd_job_duration_seconds_bucket{method=\"rtn\",le=\"300\"} 6");
    CHECK_LINE(t, "quantd_job_duration_seconds_bucket{method=\"awq\",le=\"14400\"} 0");
    CHECK_LINE(t, "quantd_job_duration_seconds_bucket{method=\"awq\",le=\"+Inf\"} 1");
    CHECK_LINE(t, "quantd_job_duration_seconds_bucket{method=\"gptq\",le=\"+Inf\"} 0");
    QD_CHECK(strstr(t, "e+") == NULL); /* no exponent anywhere in these numbers */
    free(t);
}

QD_TEST(label_values_and_numbers_are_escaped_and_exact) {
    qd_service_stats st = known_stats();
    char *t = render(&st, "v\"1\\2\n3");
    QD_REQUIRE(t != NULL);
    check_structure(t);
    /* Backslash, double quote and newline are escaped; nothing else is touched. */
    CHECK_LINE(t, "quantd_build_info{version=\"v\\\"1\\\\2\\n3\"} 1");
    /* 1/3 reads back to the very same double. */
    const char *p = strstr(t, "quantd_worker_busy_seconds_total{worker=\"w\\\"x\\\\y\\nz\"} ");
    QD_REQUIRE(p != NULL);
    p = strchr(p, '}') + 2;
    char *end;
    double v = strtod(p, &end);
    QD_CHECK(*end == '\n');
    QD_CHECK_MSG(v == 1.0 / 3.0, "1/3 written as %.*s", (int)(end - p), p);
    /* No raw newline inside a sample line: every line is a comment or has a value. */
    free(t);

    /* Non-finite values and integers beyond 2^53. */
    memset(&st, 0, sizeof st);
    st.n_workers = 2;
    snprintf(st.worker_name[0], sizeof st.worker_name[0], "a");
    snprintf(st.worker_name[1], sizeof st.worker_name[1], "b");
    st.worker_busy_s[0] = INFINITY;
    st.worker_busy_s[1] = 1e300;
    t = render(&st, "");
    QD_REQUIRE(t != NULL);
    CHECK_LINE(t, "quantd_worker_busy_seconds_total{worker=\"a\"} +Inf");
    CHECK_LINE(t, "quantd_worker_busy_seconds_total{worker=\"b\"} 1e+300");
    CHECK_LINE(t, "quantd_build_info{version=\"\"} 1");
    CHECK_LINE(t, "quantd_jobs{state=\"queued\"} 0");
    free(t);
}

QD_TEST(workers_beyond_the_table_are_not_read) {
    qd_service_stats st;
    memset(&st, 0, sizeof st);
    int max = (int)(sizeof st.worker_name / sizeof st.worker_name[0]);
    st.n_workers = max + 5;
    for (int i = 0; i < max; i++) {
        snprintf(st.worker_name[i], sizeof st.worker_name[i], "cpu%d", i);
        st.worker_busy_s[i] = i;
    }
    /* A name that fills its slot with no NUL is read only up to the slot's end. */
    memset(st.worker_name[max - 1], 'x', sizeof st.worker_name[max - 1]);
    char *t = render(&st, "1");
    QD_REQUIRE(t != NULL);
    size_t n = 0;
    for (const char *p = t; (p = strstr(p, "\nquantd_worker_busy_seconds_total{")) != NULL; p++)
        n++;
    QD_CHECK_EQ_INT(n, max);
    CHECK_LINE(t, "quantd_worker_busy_seconds_total{worker=\"cpu3\"} 3");
    char want[96];
    snprintf(want, sizeof want, "quantd_worker_busy_seconds_total{worker=\"%.*s\"} %d",
             (int)sizeof st.worker_name[0], "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", max - 1);
    CHECK_LINE(t, want);
    free(t);
}

/* ---- the listen address ---------------------------------------------------------------------- */

QD_TEST(listen_addresses) {
    struct sockaddr_storage ss;
    socklen_t sl = 0;
    qd_error err = {0};
    QD_CHECK_OK(qd_metrics_parse_listen("127.0.0.1:0", &ss, &sl, &err), &err);
    QD_CHECK_EQ_INT(ss.ss_family, AF_INET);
    QD_CHECK_EQ_INT(sl, sizeof(struct sockaddr_in));
    QD_CHECK_EQ_INT(ntohs(((struct sockaddr_in *)&ss)->sin_port), 0);

    QD_CHECK_OK(qd_metrics_parse_listen("localhost:9100", &ss, &sl, &err), &err);
    QD_CHECK_EQ_INT(ss.ss_family, AF_INET);
    QD_CHECK_EQ_INT(ntohs(((struct sockaddr_in *)&ss)->sin_port), 9100);
    QD_CHECK_EQ_INT(ntohl(((struct sockaddr_in *)&ss)->sin_addr.s_addr), 0x7f000001);

    QD_CHECK_OK(qd_metrics_parse_listen("0.0.0.0:65535", &ss, &sl, &err), &err);
    QD_CHECK_EQ_INT(ntohs(((struct sockaddr_in *)&ss)->sin_port), 65535);

    QD_CHECK_OK(qd_metrics_parse_listen("[::1]:80", &ss, &sl, &err), &err);
    QD_CHECK_EQ_INT(ss.ss_family, AF_INET6);
    QD_CHECK_EQ_INT(sl, sizeof(struct sockaddr_in6));
    QD_CHECK_EQ_INT(ntohs(((struct sockaddr_in6 *)&ss)->sin6_port), 80);
    QD_CHECK(IN6_IS_ADDR_LOOPBACK(&((struct sockaddr_in6 *)&ss)->sin6_addr));

    static const char *const bad[] = {
        "127.0.0.1",       "127.0.0.1:",      "127.0.0.1:65536", "127.0.0.1:-1",
        "127.0.0.1:80x",   "127.0.0.1:123456", "example.com:80", "::1:80",
        "[::1]80",         "[]:80",           "[::1%lo]:80",     ":80",
        "unix:/run/m.sock", "256.0.0.1:80",   "",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        qd_error e = {0};
        qd_err rc = qd_metrics_parse_listen(bad[i], &ss, &sl, &e);
        QD_CHECK_MSG(rc == QD_ERR_CONFIG, "'%s' accepted", bad[i]);
        QD_CHECK_MSG(strstr(e.msg, "metrics.listen") != NULL, "'%s': %s", bad[i], e.msg);
    }
}

/* ---- the HTTP server ------------------------------------------------------------------------- */

/* One request over a fresh connection ("Connection: close"); the whole answer into buf. */
static size_t http(uint16_t port, const char *request, char *buf, size_t cap) {
    buf[0] = '\0';
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return 0;
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    size_t n = 0;
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
        write(fd, request, strlen(request)) == (ssize_t)strlen(request)) {
        for (;;) {
            ssize_t r = read(fd, buf + n, cap - 1 - n);
            if (r <= 0) break;
            n += (size_t)r;
            if (n == cap - 1) break;
        }
    }
    buf[n] = '\0';
    close(fd);
    return n;
}

static bool header_is(const char *resp, const char *name, const char *value) {
    char want[256];
    snprintf(want, sizeof want, "\r\n%s: %s\r\n", name, value);
    const char *end = strstr(resp, "\r\n\r\n");
    const char *p = strstr(resp, want);
    return p && end && p < end + 2;
}

static const char *body_of(const char *resp) {
    const char *p = strstr(resp, "\r\n\r\n");
    return p ? p + 4 : "";
}

QD_TEST(http_endpoint_serves_refuses_and_stops) {
    char dir[PATH_MAX], data[PATH_MAX + 8];
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/qd-metrics-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    QD_REQUIRE(mkdtemp(dir) != NULL);
    snprintf(data, sizeof data, "%s/data", dir);
    qd_config cfg;
    qd_error err = {0};
    QD_REQUIRE(qd_config_init_defaults(&cfg, &err) == QD_OK);
    free(cfg.data_dir);
    cfg.data_dir = strdup(data);
    cfg.workers.cpu = 1;
    struct qd_service *svc = NULL;
    QD_CHECK_OK(qd_service_open(&cfg, &svc, &err), &err);
    QD_REQUIRE(svc != NULL);

    struct qd_metrics *m = NULL;
    QD_CHECK_OK(qd_metrics_start(svc, "127.0.0.1:0", &m, &err), &err);
    QD_REQUIRE(m != NULL);
    uint16_t port = qd_metrics_port(m);
    QD_CHECK(port != 0);
    char url[96];
    snprintf(url, sizeof url, "http://127.0.0.1:%u/metrics", (unsigned)port);
    QD_CHECK_EQ_STR(qd_metrics_url(m), url);

    static char resp[1 << 16];
    http(port, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", resp,
         sizeof resp);
    QD_CHECK_MSG(strncmp(resp, "HTTP/1.1 200 ", 13) == 0, "GET /metrics: %.80s", resp);
    QD_CHECK(header_is(resp, "Content-Type", "text/plain; version=0.0.4; charset=utf-8"));
    const char *body = body_of(resp);
    check_structure(body);
    CHECK_LINE(body, "quantd_up 1");
    CHECK_LINE(body, "quantd_jobs{state=\"queued\"} 0");
    CHECK_LINE(body, "quantd_cache_artifacts 0");
    /* The service's one CPU worker, idle so far. */
    CHECK_LINE(body, "quantd_worker_busy_seconds_total{worker=\"cpu0\"} 0");

    /* HEAD: the same headers, no body. */
    http(port, "HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", resp,
         sizeof resp);
    QD_CHECK_MSG(strncmp(resp, "HTTP/1.1 200 ", 13) == 0, "HEAD: %.80s", resp);
    QD_CHECK(header_is(resp, "Content-Type", "text/plain; version=0.0.4; charset=utf-8"));
    QD_CHECK_EQ_INT(strlen(body_of(resp)), 0);

    http(port, "GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", resp, sizeof resp);
    QD_CHECK_MSG(strncmp(resp, "HTTP/1.1 404 ", 13) == 0, "GET /nope: %.80s", resp);
    http(port, "GET /metricsx HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", resp,
         sizeof resp);
    QD_CHECK_MSG(strncmp(resp, "HTTP/1.1 404 ", 13) == 0, "GET /metricsx: %.80s", resp);
    http(port,
         "POST /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 3\r\n\r\n"
         "abc",
         resp, sizeof resp);
    QD_CHECK_MSG(strncmp(resp, "HTTP/1.1 405 ", 13) == 0, "POST: %.80s", resp);
    QD_CHECK(header_is(resp, "Allow", "GET, HEAD"));
    /* A query string is not part of the path. */
    http(port, "GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", resp,
         sizeof resp);
    QD_CHECK_MSG(strncmp(resp, "HTTP/1.1 200 ", 13) == 0, "GET /metrics?x=1: %.80s", resp);

    /* Two scrapes on one kept-alive connection: both answered. */
    size_t n = http(port,
                    "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
                    "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                    resp, sizeof resp);
    size_t n_ok = 0;
    for (const char *p = resp; (p = strstr(p, "HTTP/1.1 200 ")) != NULL; p++) n_ok++;
    QD_CHECK_MSG(n_ok == 2, "keep-alive: %zu answers in %zu bytes", n_ok, n);

    /* The port is taken: the error names the key, the address and the reason. */
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%u", (unsigned)port);
    struct qd_metrics *m2 = NULL;
    qd_error e2 = {0};
    QD_CHECK_EQ_INT(qd_metrics_start(svc, addr, &m2, &e2), QD_ERR_UNAVAILABLE);
    QD_CHECK(m2 == NULL);
    QD_CHECK_MSG(strstr(e2.msg, "metrics.listen") && strstr(e2.msg, addr) &&
                     strstr(e2.msg, strerror(EADDRINUSE)),
                 "%s", e2.msg);
    qd_error e3 = {0};
    QD_CHECK_EQ_INT(qd_metrics_start(svc, "example.com:80", &m2, &e3), QD_ERR_CONFIG);
    QD_CHECK(m2 == NULL);

    /* After stop nothing listens on the port. */
    qd_metrics_stop(m);
    QD_CHECK_EQ_INT(http(port, "GET /metrics HTTP/1.1\r\n\r\n", resp, sizeof resp), 0);
    qd_metrics_stop(NULL);

    qd_service_drain(svc, qd_service_now_mono_ms());
    qd_service_close(svc);
    qd_config_free(&cfg);
    qd_error rm = {0};
    qd_remove_tree(dir, &rm);
}

QD_TEST_MAIN()
