/*
 * fuzz-config.c - libFuzzer target for the daemon's YAML configuration loader.
 *
 * Parses the input as a config file and frees the result; a config that loads is also dumped
 * and parsed again, and must come back equal (the dump's quoting is the part most likely to
 * go wrong on odd strings). Crashes, leaks and sanitizer reports are the findings; a failed
 * round trip aborts. Built with replay.c, it replays tests/corpus/config/ on every test run.
 */
#include <stdio.h>
#include <stdlib.h>

#include "config.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    qd_config cfg = {0};
    qd_error err = {0};
    if (qd_config_parse((const char *)data, size, "fuzz.yaml", &cfg, &err) != QD_OK) {
        /* Every refusal must say something. */
        if (err.code == QD_OK || err.msg[0] == '\0') abort();
        return 0;
    }
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (f) {
        qd_config_dump(&cfg, f);
        fclose(f);
        qd_config again = {0};
        qd_error err2 = {0};
        if (qd_config_parse(text, len, "dump", &again, &err2) != QD_OK) {
            fprintf(stderr, "dump does not parse: %s\n%s\n", err2.msg, text);
            abort();
        }
        if (!qd_config_equal(&cfg, &again)) {
            fprintf(stderr, "dump does not read back equal:\n%s\n", text);
            abort();
        }
        qd_config_free(&again);
        free(text);
    }
    qd_config_free(&cfg);
    return 0;
}
