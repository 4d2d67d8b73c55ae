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
};

static void usage(FILE *out) {
    fprintf(out, "usage: quantctl [--server ADDR] [--timeout SECONDS] [--json] [--quiet]\n"
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
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        bool takes_value = strcmp(a, "--server") == 0 || strcmp(a, "--timeout") == 0;
        if (!dashdash && takes_value) {
            if (i + 1 >= argc) {
                fprintf(stderr, "quantctl: option '%s' needs a value\n", a);
                goto usage_fail;
            }
            v = argv[++i];
        } else if (!dashdash && strncmp(a, "--server=", 9) == 0) {
            v = a + 9;
        } else if (!dashdash && strncmp(a, "--timeout=", 10) == 0) {
            v = a + 10;
        }
        if (dashdash) {
            rest[n++] = argv[i];
        } else if (strcmp(a, "--") == 0) {
            dashdash = true;
            rest[n++] = argv[i];
        } else if (v && a[2] == 's') {
            if (!v[0]) {
                fprintf(stderr, "quantctl: --server: empty address\n");
                goto usage_fail;
            }
            o.server = v;
        } else if (v) {
            if (parse_timeout(v, &o.timeout_s) != 0) goto usage_fail;
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
    o.progress = !o.quiet && !o.json && isatty(STDERR_FILENO);
    if (version) {
        printf("quantctl %s\n", QD_VERSION);
        free(rest);
        return QD_CTL_EXIT_OK;
    }
    if (n == 0 || strcmp(rest[0], "--help") == 0 || strcmp(rest[0], "-h") == 0 ||
        strcmp(rest[0], "help") == 0) {
        usage(n == 0 ? stderr : stdout);
        free(rest);
        return n == 0 ? QD_CTL_EXIT_USAGE : QD_CTL_EXIT_OK;
    }
    for (size_t k = 0; k < sizeof commands / sizeof commands[0]; k++) {
        if (strcmp(rest[0], commands[k].name) != 0) continue;
        qd_ctl_rpc_init();
        int status = commands[k].fn(&o, n, rest);
        qd_ctl_rpc_shutdown();
        free(rest);
        return status;
    }
    fprintf(stderr, "quantctl: unknown command '%s'\n\n", rest[0]);
    usage(stderr);
usage_fail:
    free(rest);
    return QD_CTL_EXIT_USAGE;
}
