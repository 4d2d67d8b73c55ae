/*
 * cmd_serve.c - `quantd serve [--config FILE] [--data-dir DIR] [--listen ADDR ...]`: the
 * daemon. Loads the configuration, opens the service core, serves quantd.v1 and the health
 * service over gRPC (and, with metrics.listen, Prometheus metrics over HTTP), and waits for
 * signals: SIGTERM/SIGINT drain and stop, SIGHUP reloads.
 *
 * DESIGN
 * Signals are blocked before the first thread exists (the service's workers, gRPC's own), so
 * every thread inherits the mask and only the main thread, in sigwait(), ever sees them: no
 * handler runs in an arbitrary thread, and the reload and the shutdown run as plain code.
 *
 * Shutdown: the server stops taking calls, the service lets running jobs go on until the
 * drain deadline (shutdown.drain_seconds) and cancels the rest (they are re-queued at the
 * next start), the server waits for open calls until the same deadline and cancels the rest,
 * and everything is freed, so a clean exit leaks nothing. The metrics endpoint starts after the
 * service opens and before the gRPC server listens, and stops after the drain, just before the
 * service closes: a scrape during the drain still sees the jobs finishing.
 *
 * Reload (nginx's discipline): the file is parsed into a new config; if that fails, the error
 * is logged and the running config stays. Immutable keys that changed are logged as waiting
 * for a restart. The command-line overrides are applied again on top of the new file.
 * The bearer tokens (auth.*, from the new file) and the TLS material (the files named by the
 * tls.* keys the daemon started with) are read and checked before anything is applied, so a
 * bad token file or certificate leaves the running ones in place.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "commands.h"
#include "config.h"
#include "metrics.h"
#include "rpc.h"
#include "sdnotify.h"
#include "server.h"
#include "service.h"

#ifndef QD_VERSION
#define QD_VERSION "0.0.0"
#endif

#define MAX_LISTEN 64

struct serve_args {
    const char *config;   /* NULL: the embedded defaults */
    const char *data_dir; /* NULL: as configured */
    const char *listen[MAX_LISTEN];
    size_t n_listen;      /* 0: as configured */
};

static void serve_usage(FILE *out) {
    fputs("usage: quantd serve [--config FILE] [--data-dir DIR] [--listen ADDR]...\n"
          "\n"
          "Run the quantd service in the foreground: gRPC services quantd.v1.Quantd (uploads,\n"
          "jobs, artifacts) and grpc.health.v1.Health, until SIGTERM or SIGINT.\n"
          "\n"
          "  --config FILE    YAML configuration ('quantd config keys' lists the keys); without\n"
          "                   it every key has its default: listen 127.0.0.1:7433, data_dir\n"
          "                   $STATE_DIRECTORY, else $XDG_STATE_HOME/quantd, else\n"
          "                   $HOME/.local/state/quantd\n"
          "  --data-dir DIR   keep the database, uploads and the artifact cache in DIR\n"
          "                   (overrides data_dir)\n"
          "  --listen ADDR    listen on ADDR: host:port, [v6]:port or unix:/absolute/path;\n"
          "                   repeat for several; replaces the configured list. Port 0 takes\n"
          "                   a free port.\n"
          "  -h, --help       show this help\n"
          "\n"
          "When every address is bound it prints, on stderr, one line per address with the\n"
          "port actually bound:\n"
          "  quantd: listening on ADDR\n"
          "then logs one line per event (\"quantd: LEVEL: ...\", job lines with the job id).\n"
          "\n"
          "Signals:\n"
          "  SIGTERM, SIGINT  stop taking calls; running jobs, uploads, downloads and the\n"
          "                   watches of running jobs go on for up to shutdown.drain_seconds,\n"
          "                   then what is left is cancelled (interrupted jobs run again at\n"
          "                   the next start); other watches end at once with UNAVAILABLE;\n"
          "                   exit 0\n"
          "  SIGHUP           reload the --config file: reloadable keys take effect at once,\n"
          "                   changed immutable keys are logged and wait for a restart; an\n"
          "                   invalid file is logged and the running configuration kept;\n"
          "                   the TLS files and the tokens are read again too, and kept as\n"
          "                   they were when the new ones do not load\n"
          "\n"
          "Under systemd (Type=notify, $NOTIFY_SOCKET set) quantd sends READY=1 once it\n"
          "listens, RELOADING=1/READY=1 around a reload, STOPPING=1 when it drains, and\n"
          "WATCHDOG=1 every half $WATCHDOG_USEC (WatchdogSec=).\n"
          "\n"
          "Metrics: with metrics.listen (host:port; 127.0.0.1:0 takes a free port) quantd\n"
          "serves Prometheus metrics over HTTP at /metrics and prints, before the listening\n"
          "lines:\n"
          "  quantd: metrics on http://HOST:PORT/metrics\n"
          "docs/operations.md describes the metrics.\n"
          "\n"
          "Security (docs/config.md has the keys):\n"
          "  tls.cert, tls.key     serve TLS on every TCP address; tls.client_ca also requires\n"
          "                        client certificates it signed (mutual TLS). Unix sockets\n"
          "                        stay plaintext. A plaintext address that is not loopback\n"
          "                        or unix is refused unless allow_insecure_remote is true.\n"
          "  auth.tokens,          bearer tokens as ROLE:SHA256HEX[:NAME] entries, ROLE read,\n"
          "  auth.token_file       submit or admin; the file holds one entry per line. Store\n"
          "                        the token's sha256, never the token; compute it with\n"
          "                          printf %s \"$TOKEN\" | sha256sum\n"
          "                        Clients send 'authorization: Bearer TOKEN'; the health\n"
          "                        service needs none. Without either key auth is off.\n"
          "  metrics.listen        plain HTTP without auth: an address that is not loopback\n"
          "                        is refused unless metrics.allow_remote is true.\n"
          "\n"
          "Exit status: 0 after a clean shutdown, 1 when the service cannot start, 2 for\n"
          "usage or configuration errors.\n",
          out);
}

__attribute__((format(printf, 1, 2))) static int serve_usage_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("quantd serve: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs("\n('quantd serve --help' shows the options)\n", stderr);
    va_end(ap);
    return 2;
}

/* Check a --listen address as the config checks its listen list, except that a TCP port 0
 * ("pick a free port", for tests and one-off runs) is accepted: the config key allows
 * 1..65535 only. */
static qd_err check_listen_arg(const char *v, qd_error *err) {
    const qd_config_key *k = qd_config_key_find("listen");
    if (!k || !k->check) return QD_OK;
    size_t n = strlen(v);
    if (strncmp(v, "unix:", 5) != 0 && n >= 2 && strcmp(v + n - 2, ":0") == 0 && n < 512) {
        char buf[512];
        snprintf(buf, sizeof buf, "%.*s:1", (int)(n - 2), v);
        return k->check(buf, err);
    }
    return k->check(v, err);
}

/* The value of an option: "--opt VALUE" or "--opt=VALUE". NULL if argv[*i] is not opt. */
static const char *opt_value(int argc, char **argv, int *i, const char *opt, bool *missing) {
    size_t n = strlen(opt);
    const char *a = argv[*i];
    if (strncmp(a, opt, n) != 0) return NULL;
    if (a[n] == '=') return a + n + 1;
    if (a[n] != '\0') return NULL;
    if (*i + 1 >= argc) {
        *missing = true;
        return NULL;
    }
    return argv[++*i];
}

/* ---- configuration --------------------------------------------------------------------------- */

static char *dup_str(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

/* Put the command-line overrides into c. */
static qd_err apply_overrides(const struct serve_args *a, qd_config *c, qd_error *err) {
    if (a->data_dir) {
        char *dir;
        if (a->data_dir[0] == '/') {
            dir = dup_str(a->data_dir);
        } else {
            char cwd[4096];
            if (!getcwd(cwd, sizeof cwd))
                return qd_error_set(err, QD_ERR_IO, "--data-dir %s: cannot read the current "
                                    "directory: %s", a->data_dir, strerror(errno));
            size_t n = strlen(cwd) + strlen(a->data_dir) + 2;
            dir = malloc(n);
            if (dir) snprintf(dir, n, "%s/%s", cwd, a->data_dir);
        }
        if (!dir) return qd_error_set(err, QD_ERR_NOMEM, "out of memory");
        free(c->data_dir);
        c->data_dir = dir;
    }
    if (a->n_listen) {
        char **l = calloc(a->n_listen, sizeof *l);
        if (!l) return qd_error_set(err, QD_ERR_NOMEM, "out of memory");
        for (size_t i = 0; i < a->n_listen; i++) {
            l[i] = dup_str(a->listen[i]);
            if (!l[i]) {
                for (size_t k = 0; k < i; k++) free(l[k]);
                free(l);
                return qd_error_set(err, QD_ERR_NOMEM, "out of memory");
            }
        }
        for (size_t i = 0; i < c->n_listen; i++) free(c->listen[i]);
        free(c->listen);
        c->listen = l;
        c->n_listen = a->n_listen;
    }
    return qd_config_validate(c, err);
}

/* The effective configuration: the file (or the defaults) with the overrides on top. On
 * failure *out is left zeroed. */
static qd_err load_config(const struct serve_args *a, qd_config *out, qd_error *err) {
    qd_config c = {0};
    qd_err rc = a->config ? qd_config_load(a->config, &c, err) : qd_config_init_defaults(&c, err);
    if (rc == QD_OK) rc = apply_overrides(a, &c, err);
    if (rc != QD_OK) {
        qd_config_free(&c);
        return rc;
    }
    *out = c;
    return QD_OK;
}

/* See the signal set-up in qd_cmd_serve: runs only in a thread that did not inherit the
 * blocked mask. pthread_kill is async-signal-safe; errno is preserved for that thread. */
static pthread_t main_thread;
static void forward_to_main(int sig) {
    int saved = errno;
    pthread_kill(main_thread, sig);
    errno = saved;
}

/* sd_notify(3) when systemd asked for it; a failure is logged, never fatal. */
static void notify(const char *state) {
    qd_error err = {0};
    if (qd_sd_notify(state, &err) != QD_OK)
        qd_server_log(QD_CONFIG_LOG_WARNING, "sd_notify: %s", qd_error_text(&err));
}

/* SIGHUP: read the file again; keep everything as it is if it is not valid. boot is the
 * config the process started with (its immutable keys are the ones in force); the reloadable
 * keys go to the service, the handlers, the logger and *drain_seconds. */
static void reload(const struct serve_args *a, const qd_config *boot, int64_t *drain_seconds,
                   struct qd_service *svc, struct qd_rpc *rpc, struct qd_server *srv) {
    if (!a->config) {
        qd_server_log(QD_CONFIG_LOG_NOTICE, "SIGHUP: no --config file, nothing to reload");
        return;
    }
    qd_error err = {0};
    qd_config next = {0};
    if (load_config(a, &next, &err) != QD_OK) {
        qd_server_log(QD_CONFIG_LOG_ERROR, "reload: %s; keeping the running configuration",
                      qd_error_text(&err));
        return;
    }
    struct qd_rpc_auth *auth = NULL;
    struct qd_server_tls *tls = NULL;
    qd_err rc = qd_rpc_auth_load(&next, &auth, &err);
    if (rc == QD_OK && boot->tls.cert)
        rc = qd_server_tls_load(boot->tls.cert, boot->tls.key, boot->tls.client_ca, &tls, &err);
    if (rc == QD_OK) rc = qd_service_reload(svc, &next, &err);
    if (rc != QD_OK) {
        qd_server_log(QD_CONFIG_LOG_ERROR, "reload: %s; keeping the running configuration",
                      qd_error_text(&err));
        qd_rpc_auth_free(auth);
        qd_server_tls_free(tls);
        qd_config_free(&next);
        return;
    }
    if (tls) qd_server_set_tls(srv, tls);
    const char *names[64];
    size_t n = qd_config_immutable_changes(boot, &next, names, sizeof names / sizeof names[0]);
    for (size_t i = 0; i < n && i < sizeof names / sizeof names[0]; i++)
        qd_server_log(QD_CONFIG_LOG_WARNING,
                      "reload: %s changed; it takes effect at the next restart", names[i]);
    qd_rpc_reload(rpc, &next, auth);
    qd_server_set_log_level(next.log_level);
    *drain_seconds = next.shutdown.drain_seconds;
    qd_config_free(&next);
    qd_server_log(QD_CONFIG_LOG_NOTICE, "reloaded %s", a->config);
}

/* ---- the command ----------------------------------------------------------------------------- */

static int parse_args(int argc, char **argv, struct serve_args *a, bool *help) {
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        bool missing = false;
        const char *v;
        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
            *help = true;
            return 0;
        }
        if ((v = opt_value(argc, argv, &i, "--config", &missing))) {
            if (a->config) return serve_usage_error("--config given twice");
            a->config = v;
        } else if ((v = opt_value(argc, argv, &i, "--data-dir", &missing))) {
            if (a->data_dir) return serve_usage_error("--data-dir given twice");
            if (!*v) return serve_usage_error("--data-dir: empty");
            a->data_dir = v;
        } else if ((v = opt_value(argc, argv, &i, "--listen", &missing))) {
            if (a->n_listen == MAX_LISTEN)
                return serve_usage_error("--listen: at most %d addresses", MAX_LISTEN);
            qd_error err = {0};
            if (check_listen_arg(v, &err) != QD_OK)
                return serve_usage_error("--listen %s: %s", v, qd_error_text(&err));
            a->listen[a->n_listen++] = v;
        } else if (missing) {
            return serve_usage_error("%s needs a value", arg);
        } else {
            return serve_usage_error("unknown argument '%s'", arg);
        }
    }
    return 0;
}

int qd_cmd_serve(int argc, char **argv) {
    struct serve_args a;
    memset(&a, 0, sizeof a);
    bool help = false;
    int rc_args = parse_args(argc, argv, &a, &help);
    if (rc_args != 0) return rc_args;
    if (help) {
        serve_usage(stdout);
        return 0;
    }

    /* Before any thread of ours exists: every thread inherits the mask, only sigwait() sees
     * them. One kind of thread predates main(): a threaded BLAS may start its pool from a
     * library constructor, with these signals unblocked, and the kernel may pick such a
     * thread for a process-directed signal. The handler covers that case: it forwards the
     * signal to the main thread, where it stays pending for sigwait(), instead of letting the
     * default action end the process. */
    main_thread = pthread_self();
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = forward_to_main;
    sigemptyset(&sa.sa_mask);
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN); /* a client gone mid-write is an error return, not a death */

    qd_error err = {0};
    qd_config cfg = {0};
    if (load_config(&a, &cfg, &err) != QD_OK) {
        fprintf(stderr, "quantd serve: %s\n", qd_error_text(&err));
        return 2;
    }
    qd_server_set_log_level(cfg.log_level);
    int64_t drain_seconds = cfg.shutdown.drain_seconds;

    int status = 1;
    struct qd_service *svc = NULL;
    struct qd_rpc *rpc = NULL;
    struct qd_server *srv = NULL;
    struct qd_metrics *metrics = NULL;
    if (qd_service_open(&cfg, &svc, &err) != QD_OK) {
        qd_server_log(QD_CONFIG_LOG_ERROR, "cannot open the service: %s", qd_error_text(&err));
        goto out;
    }
    if (qd_rpc_create(svc, &cfg, &rpc, &err) != QD_OK) {
        qd_server_log(QD_CONFIG_LOG_ERROR, "%s", qd_error_text(&err));
        goto out;
    }
    /* Before the gRPC server: a port already taken fails the start before any client is
     * served, and the line below is out before the "listening on" lines. */
    if (cfg.metrics.listen) {
        if (qd_metrics_start(svc, cfg.metrics.listen, &metrics, &err) != QD_OK) {
            qd_server_log(QD_CONFIG_LOG_ERROR, "%s", qd_error_text(&err));
            goto out;
        }
        fprintf(stderr, "quantd: metrics on %s\n", qd_metrics_url(metrics));
    }
    struct qd_server_tls *tls = NULL;
    if (cfg.tls.cert &&
        qd_server_tls_load(cfg.tls.cert, cfg.tls.key, cfg.tls.client_ca, &tls, &err) != QD_OK) {
        qd_server_log(QD_CONFIG_LOG_ERROR, "%s", qd_error_text(&err));
        goto out;
    }
    size_t n_methods;
    qd_server_options opt = {
        .listen = (const char *const *)cfg.listen,
        .n_listen = cfg.n_listen,
        .max_message_bytes = cfg.limits.max_message_bytes,
        .memory_quota = cfg.limits.memory_quota,
        .max_concurrent_streams = cfg.limits.max_concurrent_streams,
        .methods = qd_rpc_methods(&n_methods),
        .app = rpc,
        .tls = tls,
    };
    opt.n_methods = n_methods;
    if (qd_server_start(&opt, &srv, &err) != QD_OK) {
        qd_server_log(QD_CONFIG_LOG_ERROR, "%s", qd_error_text(&err));
        goto out;
    }
    for (size_t i = 0; i < qd_server_address_count(srv); i++)
        fprintf(stderr, "quantd: listening on %s\n", qd_server_address(srv, i));
    qd_server_log(QD_CONFIG_LOG_INFO, "quantd %s serving; data_dir %s", QD_VERSION,
                  cfg.data_dir);
    qd_server_log(QD_CONFIG_LOG_INFO, "transport: %s; auth: %s",
                  !cfg.tls.cert       ? "plaintext"
                  : cfg.tls.client_ca ? "mutual TLS on TCP addresses"
                                      : "TLS on TCP addresses",
                  cfg.auth.n_tokens || cfg.auth.token_file ? "bearer tokens" : "off");

    /* Under systemd (Type=notify): ready now; a watchdog ping at half the interval it asks
     * for, from this thread, which is the one that must stay responsive to signals. */
    notify("READY=1\nSTATUS=serving");
    uint64_t wd_usec = qd_sd_watchdog_usec();
    for (;;) {
        int sig = 0;
        if (wd_usec) {
            struct timespec ts = {.tv_sec = (time_t)(wd_usec / 2000000u),
                                  .tv_nsec = (long)((wd_usec / 2u) % 1000000u) * 1000L};
            sig = sigtimedwait(&sigs, NULL, &ts);
            if (sig < 0) {
                if (errno == EAGAIN) notify("WATCHDOG=1");
                continue;
            }
        } else if (sigwait(&sigs, &sig) != 0) {
            continue;
        }
        if (sig == SIGHUP) {
            notify("RELOADING=1");
            reload(&a, &cfg, &drain_seconds, svc, rpc, srv);
            notify("READY=1\nSTATUS=serving");
            continue;
        }
        notify("STOPPING=1\nSTATUS=draining");
        qd_server_log(QD_CONFIG_LOG_NOTICE, "%s: shutting down (drain up to %llds)",
                      sig == SIGINT ? "SIGINT" : "SIGTERM", (long long)drain_seconds);
        break;
    }
    int64_t deadline = qd_service_now_mono_ms() + drain_seconds * 1000;
    qd_server_shutdown_begin(srv);
    qd_service_drain(svc, deadline);
    qd_server_shutdown_finish(srv, deadline);
    status = 0;

out:
    qd_server_free(srv);
    qd_rpc_free(rpc);
    qd_metrics_stop(metrics); /* its handler reads the service: stop it first */
    qd_service_close(svc);
    if (status == 0) qd_server_log(QD_CONFIG_LOG_NOTICE, "stopped");
    qd_config_free(&cfg);
    return status;
}
