/*
 * replay.c - run a fuzz target over every file of its corpus without libFuzzer.
 *
 * Built with each fuzz-<name>.c into fuzz-<name>-replay; the corpus directory comes from
 * $QD_FUZZ_CORPUS or argv[1]. Each input must return without crashing (ASan/UBSan abort the
 * process in the sanitizer build). An empty or missing corpus is a failure: a replay that
 * replays nothing proves nothing.
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "fsutil.h"
#include "fuzz.h"

static int replay_dir(const char *dir, int *count) {
    DIR *d = opendir(dir);
    if (!d) {
        fprintf(stderr, "replay: cannot open corpus %s\n", dir);
        return 1;
    }
    struct dirent *de;
    int rc = 0;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.') continue;
        char path[4096];
        qd_error err = {0};
        if (qd_path_join(path, sizeof path, dir, de->d_name, &err) != QD_OK) continue;
        if (qd_is_dir(path)) {
            rc |= replay_dir(path, count);
            continue;
        }
        char *buf;
        size_t len;
        if (qd_read_file(path, (size_t)64 << 20, &buf, &len, &err) != QD_OK) {
            fprintf(stderr, "replay: %s\n", qd_error_text(&err));
            rc = 1;
            continue;
        }
        LLVMFuzzerTestOneInput((const uint8_t *)buf, len);
        free(buf);
        (*count)++;
    }
    closedir(d);
    return rc;
}

int main(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : getenv("QD_FUZZ_CORPUS");
    if (!dir) {
        fprintf(stderr, "usage: %s CORPUS_DIR (or set QD_FUZZ_CORPUS)\n", argv[0]);
        return 2;
    }
    int count = 0;
    int rc = replay_dir(dir, &count);
    if (count == 0) {
        fprintf(stderr, "replay: no inputs in %s\n", dir);
        return 1;
    }
    printf("replayed %d inputs from %s\n", count, dir);
    return rc;
}
