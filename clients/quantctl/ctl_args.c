/*
 * ctl_args.c - what quantctl's subcommands share to read their arguments: options with a
 * value ("--opt VALUE" or "--opt=VALUE"), --help, integers and rates checked in full (no
 * silent wrap-around or trailing junk), and connecting with the global options.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "quantctl.h"

int qd_ctl_opt(const char *cmd, int argc, char **argv, int *i, const char *name,
               const char *alias, const char **ret_value) {
    const char *a = argv[*i];
    size_t n = strlen(name);
    if (strncmp(a, name, n) == 0 && a[n] == '=') {
        *ret_value = a + n + 1;
        return 1;
    }
    if (strcmp(a, name) != 0 && !(alias && strcmp(a, alias) == 0)) return 0;
    if (*i + 1 >= argc) {
        qd_ctl_usage_error(cmd, "option '%s' needs a value", a);
        return -1;
    }
    *i += 1;
    *ret_value = argv[*i];
    return 1;
}

bool qd_ctl_wants_help(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0) break;
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) return true;
    }
    return false;
}

qd_err qd_ctl_parse_u64(const char *what, const char *text, uint64_t min, uint64_t max,
                        uint64_t *ret, qd_error *err) {
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || text[0] == '-' || text[0] == '+' ||
        v < min || v > max)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "%s '%s': expected an integer in %llu..%llu",
                            what, text, (unsigned long long)min, (unsigned long long)max);
    *ret = v;
    return QD_OK;
}

qd_err qd_ctl_parse_rate(const char *text, double *ret, qd_error *err) {
    char *end = NULL;
    errno = 0;
    double v = strtod(text, &end);
    double mult = 1;
    if (end && *end) {
        if (strcmp(end, "K") == 0 || strcmp(end, "k") == 0) mult = 1024.0;
        else if (strcmp(end, "M") == 0 || strcmp(end, "m") == 0) mult = 1024.0 * 1024.0;
        else if (strcmp(end, "G") == 0 || strcmp(end, "g") == 0) mult = 1024.0 * 1024.0 * 1024.0;
        else end = NULL;
    }
    if (errno != 0 || !end || end == text || !(v > 0) || !isfinite(v))
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "--limit-rate '%s': expected bytes per second > 0, optionally with "
                            "K, M or G",
                            text);
    *ret = v * mult;
    return QD_OK;
}

int qd_ctl_open(const qd_ctl_opts *o, struct qd_ctl_conn **ret) {
    qd_ctl_error err = {0};
    if (qd_ctl_connect(o, ret, &err) != QD_OK) return qd_ctl_fail(&err);
    return QD_CTL_EXIT_OK;
}

