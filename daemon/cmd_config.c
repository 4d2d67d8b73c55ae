/*
 * cmd_config.c - `quantd config`: check a config file, print the effective configuration, or
 * list the keys (as text, or as the markdown reference that docs/config.md is).
 *
 *   quantd config check FILE         "FILE: ok" (exit 0), or the error (exit 1)
 *   quantd config dump [FILE]        the defaults, or FILE applied to them, as commented YAML
 *   quantd config keys [--markdown]  the key table
 */
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "commands.h"
#include "config.h"

static void usage(FILE *out) {
    fputs("usage: quantd config check FILE\n"
          "       quantd config dump [FILE]\n"
          "       quantd config keys [--markdown]\n"
          "\n"
          "  check FILE       validate FILE; prints 'FILE: ok' or the first error\n"
          "  dump [FILE]      print the effective configuration (the defaults, or FILE\n"
          "                   applied to them) as YAML, every key with a comment\n"
          "  keys             list every key with its type, default and range\n"
          "  keys --markdown  the same as the reference document (docs/config.md)\n",
          out);
}

__attribute__((format(printf, 1, 2))) static int usage_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("quantd config: ", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\n\n", stderr);
    usage(stderr);
    return 2;
}

static bool is_help(const char *a) { return strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0; }

/* Exit status after writing to stdout: a write error (full disk, closed pipe) is a failure. */
static int finish_stdout(void) {
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fputs("quantd config: cannot write to standard output\n", stderr);
        return 1;
    }
    return 0;
}

static int cmd_check(const char *path) {
    qd_config cfg = {0};
    qd_error err = {0};
    if (qd_config_load(path, &cfg, &err) != QD_OK) {
        fprintf(stderr, "%s\n", qd_error_text(&err));
        return 1;
    }
    qd_config_free(&cfg);
    printf("%s: ok\n", path);
    return finish_stdout();
}

static int cmd_dump(const char *path) {
    qd_config cfg = {0};
    qd_error err = {0};
    qd_err rc = path ? qd_config_load(path, &cfg, &err)
                     : qd_config_parse("", 0, "defaults", &cfg, &err);
    if (rc != QD_OK) {
        fprintf(stderr, "%s\n", qd_error_text(&err));
        return 1;
    }
    qd_config_dump(&cfg, stdout);
    qd_config_free(&cfg);
    return finish_stdout();
}

int qd_cmd_config(int argc, char **argv) {
    if (argc < 2) return usage_error("%s", "missing subcommand");
    for (int i = 1; i < argc; i++) {
        if (is_help(argv[i])) {
            usage(stdout);
            return finish_stdout();
        }
    }
    const char *sub = argv[1];
    /* Every argument after the subcommand is a FILE or --markdown; other dashes are typos. */
    for (int i = 2; i < argc; i++)
        if (argv[i][0] == '-' && strcmp(argv[i], "--markdown") != 0)
            return usage_error("unknown option '%s'", argv[i]);

    if (strcmp(sub, "check") == 0) {
        if (argc != 3) return usage_error("%s", "check takes exactly one FILE");
        return cmd_check(argv[2]);
    }
    if (strcmp(sub, "dump") == 0) {
        if (argc > 3) return usage_error("%s", "dump takes at most one FILE");
        if (argc == 3 && strcmp(argv[2], "--markdown") == 0)
            return usage_error("%s", "--markdown goes with keys");
        return cmd_dump(argc == 3 ? argv[2] : NULL);
    }
    if (strcmp(sub, "keys") == 0) {
        if (argc > 3 || (argc == 3 && strcmp(argv[2], "--markdown") != 0))
            return usage_error("%s", "keys takes only --markdown");
        if (argc == 3) qd_config_write_markdown(stdout);
        else qd_config_write_keys(stdout);
        return finish_stdout();
    }
    return usage_error("unknown subcommand '%s'", sub);
}
