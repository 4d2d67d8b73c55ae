/*
 * rt-model.h - test helpers that write modified copies of a model directory and read token
 * sets. Test-only code: failures are reported through qd_error like everywhere else.
 */
#ifndef QD_RT_MODEL_H
#define QD_RT_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "error.h"
#include "tensor.h"

#define RT_MAX_PATCHES 4

typedef struct rt_copy_opts {
    qd_dtype dtype;          /* F32/F16/BF16 for every float tensor; QD_DTYPE_COUNT: keep */
    int n_shards;            /* > 1: exactly that many shards; else one model.safetensors */
    const char *skip;        /* a tensor to leave out (NULL: none) */
    const char *as_i32;      /* a tensor whose bytes are relabelled I32 (an F32 source) */
    struct {
        const char *key;     /* top-level config.json key */
        long long value;     /* written as a JSON integer, or a boolean when is_bool */
        bool is_bool;
    } patch[RT_MAX_PATCHES];
    int n_patch;
} rt_copy_opts;

/* A fresh directory under the current directory ("qd-rt-<tag>-XXXXXX"); buf >= 64 bytes. */
qd_err rt_make_tmpdir(const char *tag, char *buf, size_t len, qd_error *err);

/* Copy the model in src (config.json + weights) into the existing directory dst. */
qd_err rt_copy_model(const char *src, const char *dst, const rt_copy_opts *o, qd_error *err);

/* input_ids (I32) of a token-set file into a new array [rows * seq_len] (caller frees). */
qd_err rt_load_tokens(const char *path, int32_t **ret, int64_t *rows, int64_t *seq_len,
                      qd_error *err);

#endif /* QD_RT_MODEL_H */
