/*
 * bench-tokens.c - a calibration token set of random ids, for benchmarks on generated models
 * (which have weights but no tokenizer and no text).
 *
 *   bench-tokens -o FILE --rows N --len L --vocab V [--seed S]
 *
 * Writes FILE as safetensors with one tensor, input_ids I32 [N, L], the layout
 * `quantd quantize --calib` reads. Ids are uniform in [0, V) from a seeded 64-bit LCG, so the
 * same arguments always give the same file. The quantizers' cost depends on the token count,
 * not on which ids they are, so random ids time a job as well as real text does.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "safetensors.h"

/* A decimal integer in [lo, hi], the whole string. */
static bool parse_ll(const char *s, long long lo, long long hi, long long *ret) {
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi) return false;
    *ret = v;
    return true;
}

static void usage(void) {
    fprintf(stderr, "usage: bench-tokens -o FILE --rows N --len L --vocab V [--seed S]\n"
                    "  rows, len in 1..1048576 (rows * len at most 2^28); vocab in 1..2^31-1\n");
}

int main(int argc, char **argv) {
    const char *out = NULL;
    long long rows = 0, len = 0, vocab = 0, seed = 1;
    for (int i = 1; i < argc; i += 2) { /* every option takes one value */
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool ok = v != NULL;
        if (ok && strcmp(a, "-o") == 0) out = v;
        else if (ok && strcmp(a, "--rows") == 0) ok = parse_ll(v, 1, 1 << 20, &rows);
        else if (ok && strcmp(a, "--len") == 0) ok = parse_ll(v, 1, 1 << 20, &len);
        else if (ok && strcmp(a, "--vocab") == 0) ok = parse_ll(v, 1, INT32_MAX, &vocab);
        else if (ok && strcmp(a, "--seed") == 0) ok = parse_ll(v, 0, INT64_MAX, &seed);
        else ok = false;
        if (!ok) {
            usage();
            return 2;
        }
    }
    if (!out || rows == 0 || len == 0 || vocab == 0 || rows * len > (1LL << 28)) {
        usage();
        return 2;
    }
    size_t n = (size_t)(rows * len);
    int32_t *ids = malloc(n * sizeof *ids);
    if (!ids) {
        fprintf(stderr, "bench-tokens: out of memory for %lld x %lld ids\n", rows, len);
        return 1;
    }
    uint64_t x = (uint64_t)seed;
    for (size_t i = 0; i < n; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        ids[i] = (int32_t)((x >> 33) % (uint64_t)vocab); /* the high bits: the LCG's best */
    }
    qd_error err = {0};
    int64_t shape[2] = {rows, len};
    qd_st_writer *w = qd_st_writer_new();
    qd_err rc = w ? QD_OK : qd_error_set(&err, QD_ERR_NOMEM, "out of memory");
    if (!rc) rc = qd_st_writer_add(w, "input_ids", QD_DTYPE_I32, 2, shape, ids, &err);
    if (!rc) rc = qd_st_write_file(w, out, &err);
    qd_st_writer_free(w);
    free(ids);
    if (rc) {
        fprintf(stderr, "bench-tokens: %s: %s\n", out, qd_error_text(&err));
        return 1;
    }
    return 0;
}
