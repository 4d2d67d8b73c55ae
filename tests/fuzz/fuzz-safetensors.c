/*
 * fuzz-safetensors.c - libFuzzer target for the safetensors reader.
 *
 * Parses the input with qd_st_open_mem and, when it is accepted, uses everything the reader
 * promised: every entry (its first and last byte must be inside the input, so ASan catches a
 * range the validation let through), lookup by name, the tensor view, every metadata pair.
 * Built with libFuzzer (-DQUANTD_FUZZ=ON) and as fuzz-safetensors-replay, which runs the
 * corpus in tests/corpus/safetensors on every test run.
 */
#include <string.h>

#include "fuzz.h"
#include "safetensors.h"

/* Keeps the reads from being optimised away. */
static volatile uint8_t sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    qd_st_file *f = NULL;
    qd_error err = {0};
    if (qd_st_open_mem(data, size, "fuzz", &f, &err) != QD_OK) {
        /* A rejection always carries a message, and no file. */
        if (err.msg[0] == '\0' || f != NULL) __builtin_trap();
        return 0;
    }
    uint8_t acc = 0;
    for (size_t i = 0; i < qd_st_count(f); i++) {
        const qd_st_entry *e = qd_st_get(f, i);
        const uint8_t *p = e->data;
        uint64_t n = e->end - e->begin;
        if (p < data || p + n > data + size) __builtin_trap();
        if (n > 0) acc ^= (uint8_t)(p[0] ^ p[n - 1]);
        if (qd_st_find(f, e->name) != e) __builtin_trap();
        qd_tensor t = qd_st_entry_view(e);
        if (qd_tensor_nbytes(&t) != n) __builtin_trap();
        acc ^= (uint8_t)strlen(e->name);
    }
    for (size_t i = 0; i < qd_st_metadata_count(f); i++) {
        const char *v = NULL;
        const char *k = qd_st_metadata_get(f, i, &v);
        if (!k || !v || qd_st_metadata(f, k) != v) __builtin_trap();
        acc ^= (uint8_t)(strlen(k) + strlen(v));
    }
    sink = acc;
    qd_st_close(f);
    return 0;
}
