/*
 * main.c - quantctl, the command-line client of quantd: global options, the subcommand table,
 * and the small argument helpers the subcommands share.
 *
 *   quantctl put PATH                    upload a model directory or a calibration file
 *   quantctl quantize MODEL_DIR ...      upload what the server lacks, quantize, watch, fetch
 *   quantctl status JOB | watch JOB      one job
 *   quantctl fetch ARTIFACT -o DIR       download and verify an artifact
 *   quantctl ls [jobs|artifacts]         listings
 *   quantctl cancel JOB | rm ARTIFACT    stop a job, delete an artifact
 *   quantctl info                        what the server runs and holds
 *
 * Global options may come before or after the subcommand; they are taken out of argv before
 * the subcommand parses the rest, so a subcommand never sees them. The helpers the
 * subcommands share to parse their own arguments are in ctl_args.c.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fsutil.h"
#include "quantctl.h"

#ifndef QD_VERSION
#define QD_VERSION "0.0.0"
#endif

static const struct {
    const char *name;
    int (*fn)(const qd_ctl_opts *, int, char **);
    const char *args;
    const char *summary;
} commands[] = {
    {"put", qd_ctl_cmd_put, "PATH", "upload a model directory or a calibration file"},
    {"quantize", qd_ctl_cmd_quantize, "MODEL_DIR ...",
     "upload what the server lacks, quantize, watch, fetch"},
    {"status", qd_ctl_cmd_status, "JOB", "show a job"},
    {"watch", qd_ctl_cmd_watch, "JOB", "follow a job until it ends"},
    {"fetch", qd_ctl_cmd_fetch, "ARTIFACT -o DIR", "download an artifact, verify its sha256s"},
    {"ls", qd_ctl_cmd_ls, "[artifacts|jobs]", "list the artifacts (default) or the jobs"},
    {"cancel", qd_ctl_cmd_cancel, "JOB", "cancel a queued or running job"},
    {"rm", qd_ctl_cmd_rm, "ARTIFACT", "delete an artifact from the server's cache"},
    {"info", qd_ctl_cmd_info, "", "the server's version, devices, methods, cache, limits"},
    {"health", qd_ctl_cmd_health, "", "whether the server serves (grpc.health.v1, no token)"},
};

static void usage(FILE *out) {
    fprintf(out, "usage: quantctl [--server ADDR] [--timeout SECONDS] [--json] [--quiet]\n"
                 "                [--token TOKEN | --token-file FILE] [--tls-ca FILE]\n"
                 "                [--tls-cert FILE --tls-key FILE] [--tls-server-name NAME]\n"
                 "                <command> [arguments]\n\n"
                 "The command-line client of a quantd server.\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        char head[64];
        snprintf(head, sizeof head, "%s %s", commands[i].name, commands[i].args);
        fprintf(out, "  %-28s %s\n", head, commands[i].summary);
    }
    fprintf(out,
            "\n"
            "global options (before or after the command):\n"
            "  --server ADDR      host:port or unix:/path; default $QUANTD_SERVER, else\n"
            "                     " QD_CTL_DEFAULT_SERVER "\n"
            "  --timeout SECONDS  deadline of connecting and of each request/response call\n"
            "                     (default 30); streams (uploads, downloads, watching) have none\n"
            "  --json             results as JSON on stdout, one object per line\n"
            "  -q, --quiet        nothing on stderr but errors\n"
            "  --version          print quantctl's version\n"
            "  --token TOKEN      bearer token sent with every call; default $QUANTD_TOKEN\n"
            "                     (prefer --token-file or the variable: argv is visible to\n"
            "                     other users of the machine)\n"
            "  --token-file FILE  read the token from FILE's first line\n"
            "  --tls-ca FILE      connect with TLS; the server's certificate must chain to the\n"
            "                     PEM CAs in FILE\n"
            "  --tls-cert FILE    client certificate (PEM) for mutual TLS; with --tls-key\n"
            "  --tls-key FILE     its private key (PEM)\n"
            "  --tls-server-name NAME  the name the server's certificate must carry, when it\n"
            "                     is not the host of --server\n"
            "\n"
            "Progress (transfer rates, a job's layer i/n and ETA) is drawn on stderr, and only\n"
            "when stderr is a terminal.\n"
            "\n"
            "'quantctl <command> --help' describes each command.\n"
            "\n"
            "exit status: 0 ok; 1 the job failed or was cancelled, or a local error (a file\n"
            "could not be read or written, a download did not verify); 2 usage; 3 the server\n"
            "refused the request (its gRPC status is printed); 4 the server could not be\n"
            "reached or the connection was lost.\n");
}

/* ---- main ----------------------------------------------------------------------------------- */

/* The token of --token-file: its first line, without the line end. NULL (after printing why)
 * when it cannot be read or is empty. */
static char *read_token_file(const char *path) {
    char *buf;
    size_t len;
    qd_error err = {0};
    if (qd_read_file(path, 64 * 1024, &buf, &len, &err) != QD_OK) {
        fprintf(stderr, "quantctl: --token-file: %s\n", err.msg);
        return NULL;
    }
    buf[strcspn(buf, "\r\n")] = '\0';
    if (!buf[0]) {
        fprintf(stderr, "quantctl: --token-file %s: the first line is empty\n", path);
        free(buf);
        return NULL;
    }
    return buf;
}

/* Global options that take a value, and where each goes. */
enum global_opt { G_SERVER, G_TIMEOUT, G_TOKEN, G_TOKEN_FILE, G_CA, G_CERT, G_KEY, G_NAME };
static const char *const global_opts[] = {
    [G_SERVER] = "--server",     [G_TIMEOUT] = "--timeout",   [G_TOKEN] = "--token",
    [G_TOKEN_FILE] = "--token-file", [G_CA] = "--tls-ca",      [G_CERT] = "--tls-cert",
    [G_KEY] = "--tls-key",       [G_NAME] = "--tls-server-name",
};
#define N_GLOBAL_OPTS (sizeof global_opts / sizeof global_opts[0])

/* Which global option with a value argv[*i] is (-1 if none); *value gets it. */
static int global_opt(int argc, char **argv, int *i, const char **value, bool *missing) {
    const char *a = argv[*i];
    for (size_t k = 0; k < N_GLOBAL_OPTS; k++) {
        size_t n = strlen(global_opts[k]);
        if (strncmp(a, global_opts[k], n) != 0) continue;
        if (a[n] == '=') {
            *value = a + n + 1;
            return (int)k;
        }
        if (a[n] != '\0') continue;
        if (*i + 1 >= argc) {
            *missing = true;
            return (int)k;
        }
        *value = argv[++*i];
        return (int)k;
    }
    return -1;
}

static int parse_timeout(const char *text, double *ret) {
    char *end = NULL;
    errno = 0;
    double v = strtod(text, &end);
    if (errno != 0 || end == text || *end != '\0' || !(v > 0) || v > 86400.0 * 365) {
        fprintf(stderr, "quantctl: --timeout '%s': expected seconds > 0\n", text);
        return -1;
    }
    *ret = v;
    return 0;
}

int main(int argc, char **argv) {
    qd_ctl_opts o = {.timeout_s = QD_CTL_DEFAULT_TIMEOUT_S};
    const char *env = getenv("QUANTD_SERVER");
    o.server = env && env[0] ? env : QD_CTL_DEFAULT_SERVER;

    /* Take the global options out; what is left is "<command> args...". */
    char **rest = calloc((size_t)argc + 1, sizeof *rest);
    if (!rest) {
        fprintf(stderr, "quantctl: out of memory\n");
        return QD_CTL_EXIT_FAILED;
    }
    int n = 0;
    bool dashdash = false, version = false;
    const char *token_file = NULL;
    char *token_buf = NULL;
    const char *env_token = getenv("QUANTD_TOKEN");
    if (env_token && env_token[0]) o.token = env_token;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        bool missing = false;
        int g = dashdash ? -1 : global_opt(argc, argv, &i, &v, &missing);
        if (missing) {
            fprintf(stderr, "quantctl: option '%s' needs a value\n", a);
            goto usage_fail;
        }
        if (g >= 0 && !v[0]) {
            fprintf(stderr, "quantctl: %s: empty value\n", global_opts[g]);
            goto usage_fail;
        }
        if (dashdash) {
            rest[n++] = argv[i];
        } else if (strcmp(a, "--") == 0) {
            dashdash = true;
            rest[n++] = argv[i];
        } else if (g == G_SERVER) {
            o.server = v;
        } else if (g == G_TIMEOUT) {
            if (parse_timeout(v, &o.timeout_s) != 0) goto usage_fail;
        } else if (g == G_TOKEN) {
            o.token = v;
        } else if (g == G_TOKEN_FILE) {
            token_file = v;
        } else if (g == G_CA) {
            o.tls_ca = v;
        } else if (g == G_CERT) {
            o.tls_cert = v;
        } else if (g == G_KEY) {
            o.tls_key = v;
        } else if (g == G_NAME) {
            o.tls_server_name = v;
        } else if (strcmp(a, "--json") == 0) {
            o.json = true;
        } else if (strcmp(a, "-q") == 0 || strcmp(a, "--quiet") == 0) {
            o.quiet = true;
        } else if (strcmp(a, "--version") == 0 && n == 0) {
            version = true;
        } else {
            rest[n++] = argv[i];
        }
    }
    if (!o.tls_cert != !o.tls_key) {
        fprintf(stderr, "quantctl: --tls-cert and --tls-key go together\n");
        goto usage_fail;
    }
    if (token_file) {
        if (!(token_buf = read_token_file(token_file))) {
            free(rest);
            return QD_CTL_EXIT_FAILED;
        }
        o.token = token_buf;
    }
    o.progress = !o.quiet && !o.json && isatty(STDERR_FILENO);
    if (version) {
        printf("quantctl %s\n", QD_VERSION);
        free(token_buf);
        free(rest);
        return QD_CTL_EXIT_OK;
    }
    if (n == 0 || strcmp(rest[0], "--help") == 0 || strcmp(rest[0], "-h") == 0 ||
        strcmp(rest[0], "help") == 0) {
        usage(n == 0 ? stderr : stdout);
        free(token_buf);
        free(rest);
        return n == 0 ? QD_CTL_EXIT_USAGE : QD_CTL_EXIT_OK;
    }
    for (size_t k = 0; k < sizeof commands / sizeof commands[0]; k++) {
        if (strcmp(rest[0], commands[k].name) != 0) continue;
        qd_ctl_rpc_init();
        int status = commands[k].fn(&o, n, rest);
        qd_ctl_rpc_shutdown();
        free(token_buf);
        free(rest);
        return status;
    }
    fprintf(stderr, "quantctl: unknown command '%s'\n\n", rest[0]);
    usage(stderr);
usage_fail:
    free(token_buf);
    free(rest);
    return QD_CTL_EXIT_USAGE;
}
