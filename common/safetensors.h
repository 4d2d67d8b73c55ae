/*
 * safetensors.h - read and write the safetensors format, one file or a sharded model.
 *
 * Format: u64 little-endian header length N, N bytes of JSON (UTF-8, may be padded with
 * spaces), then the data section. The JSON maps tensor name -> {"dtype", "shape",
 * "data_offsets": [begin, end]} (offsets relative to the data section) plus an optional
 * "__metadata__" object of string -> string.
 *
 * READING treats every file as hostile. qd_st_open() maps the file read-only and validates
 * the whole header before returning: header length bounds (8 + N <= file size, N <= 100 MB),
 * valid UTF-8 and JSON, an object at top level, known dtypes, non-negative shapes of at most
 * QD_MAX_DIMS dims, shape x dtype size == end - begin (overflow checked), offsets inside the
 * data section, no overlaps, no gaps, data section fully covered, duplicate names rejected.
 * Each failure is QD_ERR_FORMAT with a message naming the file, the tensor and the problem.
 * Tensors are then zero-copy views into the mapping, valid until qd_st_close().
 *
 * WRITING collects (name, dtype, shape, borrowed data) entries and writes them in insertion
 * order. qd_st_write_file() writes one file; qd_st_write_model() splits entries into shards
 * of at most max_shard_bytes (a tensor larger than that gets a shard of its own) named
 * model-00001-of-0000N.safetensors with model.safetensors.index.json, or model.safetensors when
 * one shard suffices. Files are written to "<path>.tmp", fsync'd and renamed.
 *
 * A MODEL is a directory holding model.safetensors or model.safetensors.index.json + shards
 * (Hugging Face layout); qd_st_model_open() opens all shards and looks tensors up by name.
 */
#ifndef QD_SAFETENSORS_H
#define QD_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "tensor.h"

#define QD_ST_MAX_HEADER (100u * 1000u * 1000u) /* same bound as the reference reader */

typedef struct qd_st_entry {
    const char *name;       /* NUL-terminated, owned by the file */
    qd_dtype dtype;
    int ndim;
    int64_t shape[QD_MAX_DIMS];
    uint64_t begin, end;    /* byte range within the data section */
    const void *data;       /* points into the mapping */
} qd_st_entry;

typedef struct qd_st_file qd_st_file;

/* Open and validate a file. On failure *out is NULL and err names the problem. */
qd_err qd_st_open(const char *path, qd_st_file **out, qd_error *err);
/* Parse a buffer the caller keeps alive (for tests and fuzzing). label names it in errors. */
qd_err qd_st_open_mem(const void *buf, size_t len, const char *label, qd_st_file **out,
                      qd_error *err);
void qd_st_close(qd_st_file *f); /* accepts NULL */

size_t qd_st_count(const qd_st_file *f);
/* Entries in header order. */
const qd_st_entry *qd_st_get(const qd_st_file *f, size_t i);
/* NULL when absent. */
const qd_st_entry *qd_st_find(const qd_st_file *f, const char *name);
/* A value of __metadata__, or NULL. */
const char *qd_st_metadata(const qd_st_file *f, const char *key);
size_t qd_st_metadata_count(const qd_st_file *f);
/* i-th metadata pair; returns the key and sets *value. */
const char *qd_st_metadata_get(const qd_st_file *f, size_t i, const char **value);
const char *qd_st_path(const qd_st_file *f);
/* Borrowed view of an entry's data (valid until the file is closed). */
qd_tensor qd_st_entry_view(const qd_st_entry *e);

/* ---- writing ---- */

typedef struct qd_st_writer qd_st_writer;

qd_st_writer *qd_st_writer_new(void);
void qd_st_writer_free(qd_st_writer *w); /* accepts NULL */
/* Add a tensor. name is copied; data is borrowed until the write call returns and must hold
 * numel * dtype size bytes. Duplicate names are QD_ERR_INVALID_ARG. */
qd_err qd_st_writer_add(qd_st_writer *w, const char *name, qd_dtype dtype, int ndim,
                        const int64_t *shape, const void *data, qd_error *err);
/* Add a "__metadata__" pair (both strings copied). */
qd_err qd_st_writer_set_metadata(qd_st_writer *w, const char *key, const char *value,
                                 qd_error *err);
/* Write every entry to one file. */
qd_err qd_st_write_file(qd_st_writer *w, const char *path, qd_error *err);
/* Write a model's weights into dir (which must exist), sharded as described above.
 * max_shard_bytes 0 means one file. On success *n_shards (optional) holds the count. */
qd_err qd_st_write_model(qd_st_writer *w, const char *dir, uint64_t max_shard_bytes,
                         int *n_shards, qd_error *err);
/* Like qd_st_write_model but into exactly n_shards shards of roughly equal size
 * (n_shards > number of tensors is an error). */
qd_err qd_st_write_model_shards(qd_st_writer *w, const char *dir, int n_shards,
                                qd_error *err);

/* ---- a model directory ---- */

typedef struct qd_st_model qd_st_model;

/* Open dir/model.safetensors, or dir/model.safetensors.index.json and every shard it names
 * (shard names must be plain file names inside dir). A tensor listed in the index must be in
 * the shard the index says; a tensor in two shards is an error. */
qd_err qd_st_model_open(const char *dir, qd_st_model **out, qd_error *err);
void qd_st_model_close(qd_st_model *m); /* accepts NULL */
size_t qd_st_model_count(const qd_st_model *m);
/* All tensors of all shards: shards in file-name order (model-00001-of-... first), then
 * header order within each. */
const qd_st_entry *qd_st_model_get(const qd_st_model *m, size_t i);
const qd_st_entry *qd_st_model_find(const qd_st_model *m, const char *name);
size_t qd_st_model_shard_count(const qd_st_model *m);
const qd_st_file *qd_st_model_shard(const qd_st_model *m, size_t i);

#endif /* QD_SAFETENSORS_H */
