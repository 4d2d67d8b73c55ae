/*
 * test-st-babyllama.c - quantd's safetensors writer and reader on a real checkpoint.
 *
 * examples/models/babyllama/model.safetensors was written by the Python safetensors
 * library. Read it, then write with quantd's writer (into a fresh temporary directory)
 *   - a copy in the same dtype,
 *   - copies converted to F16 and to BF16 (qd_convert),
 *   - a copy sharded into 3 shards with an index,
 * and read each back: the same names in the same order, the same shapes, the metadata, and
 * bytes bit-identical to the original (or to the converted buffers). The F16/BF16 values are
 * also checked against the original within the formats' rounding, so a conversion that
 * produced garbage consistently would still fail.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#include "dtype.h"
#include "fsutil.h"
#include "safetensors.h"
#include "test.h"

#define BABYLLAMA QD_SOURCE_DIR "/examples/models/babyllama/model.safetensors"
#define N_TENSORS 47 /* embeddings, 5 layers x 9, final norm (lm_head is tied) */

static char tmpdir[256];

static qd_st_file *open_original(void) {
    qd_st_file *f = NULL;
    qd_error err = {0};
    QD_CHECK_OK(qd_st_open(BABYLLAMA, &f, &err), &err);
    return f;
}

/* A writer holding every tensor of src, converted to `to` (QD_DTYPE_COUNT: unchanged).
 * Converted buffers go to bufs[i] (the caller frees them). */
static qd_st_writer *copy_writer(const qd_st_file *src, qd_dtype to, void **bufs) {
    qd_error err = {0};
    qd_st_writer *w = qd_st_writer_new();
    if (!w) return NULL;
    for (size_t i = 0; i < qd_st_metadata_count(src); i++) {
        const char *v;
        const char *k = qd_st_metadata_get(src, i, &v);
        QD_CHECK_OK(qd_st_writer_set_metadata(w, k, v, &err), &err);
    }
    for (size_t i = 0; i < qd_st_count(src); i++) {
        const qd_st_entry *e = qd_st_get(src, i);
        const void *data = e->data;
        qd_dtype dt = e->dtype;
        if (to != QD_DTYPE_COUNT) {
            size_t n = (size_t)(e->end - e->begin) / qd_dtype_size(dt);
            bufs[i] = malloc(n * qd_dtype_size(to) + 1);
            QD_CHECK_OK(qd_convert(to, bufs[i], dt, data, n, &err), &err);
            data = bufs[i];
            dt = to;
        }
        QD_CHECK_OK(qd_st_writer_add(w, e->name, dt, e->ndim, e->shape, data, &err), &err);
    }
    return w;
}

/* got holds the same tensor as want (name, shape), in dtype dt with exactly want_bytes. */
static void check_same(const qd_st_entry *got, const qd_st_entry *want, qd_dtype dt,
                       const void *want_bytes) {
    QD_REQUIRE(got != NULL && want != NULL);
    QD_CHECK_EQ_STR(got->name, want->name);
    QD_CHECK_EQ_INT(got->dtype, dt);
    QD_CHECK_EQ_INT(got->ndim, want->ndim);
    for (int k = 0; k < want->ndim; k++) QD_CHECK_EQ_INT(got->shape[k], want->shape[k]);
    uint64_t n = (want->end - want->begin) / qd_dtype_size(want->dtype) * qd_dtype_size(dt);
    QD_REQUIRE(got->end - got->begin == n);
    QD_CHECK_MSG(memcmp(got->data, want_bytes, (size_t)n) == 0, "tensor %s: bytes differ",
                 want->name);
}

QD_TEST(original_is_what_we_expect) {
    qd_st_file *f = open_original();
    QD_REQUIRE(f != NULL);
    QD_CHECK_EQ_INT(qd_st_count(f), N_TENSORS);
    QD_CHECK_EQ_STR(qd_st_metadata(f, "format"), "pt");
    const qd_st_entry *emb = qd_st_find(f, "model.embed_tokens.weight");
    QD_REQUIRE(emb != NULL);
    QD_CHECK_EQ_INT(emb->dtype, QD_DTYPE_F32);
    QD_CHECK_EQ_INT(emb->ndim, 2);
    QD_CHECK_EQ_INT(emb->shape[0], 105); /* vocab */
    QD_CHECK_EQ_INT(emb->shape[1], 128); /* hidden */
    const qd_st_entry *up = qd_st_find(f, "model.layers.4.mlp.up_proj.weight");
    QD_REQUIRE(up != NULL);
    QD_CHECK_EQ_INT(up->shape[0], 352);
    QD_CHECK(qd_st_find(f, "lm_head.weight") == NULL); /* tied */
    /* The layer norms of a trained model are not all ones: the data was really read. */
    const qd_st_entry *ln = qd_st_find(f, "model.norm.weight");
    QD_REQUIRE(ln != NULL);
    float v[128];
    memcpy(v, ln->data, sizeof v);
    int not_one = 0;
    for (int i = 0; i < 128; i++) not_one += isfinite(v[i]) && v[i] != 1.0f;
    QD_CHECK(not_one > 64);
    qd_st_close(f);
}

QD_TEST(same_dtype_copy_is_bit_identical) {
    qd_st_file *src = open_original();
    QD_REQUIRE(src != NULL);
    char path[512];
    snprintf(path, sizeof path, "%s/copy.safetensors", tmpdir);
    qd_error err = {0};
    qd_st_writer *w = copy_writer(src, QD_DTYPE_COUNT, NULL);
    QD_REQUIRE(w != NULL);
    QD_CHECK_OK(qd_st_write_file(w, path, &err), &err);
    qd_st_writer_free(w);
    qd_st_file *f = NULL;
    QD_CHECK_OK(qd_st_open(path, &f, &err), &err);
    QD_REQUIRE(f != NULL);
    QD_CHECK_EQ_INT(qd_st_count(f), qd_st_count(src));
    QD_CHECK_EQ_STR(qd_st_metadata(f, "format"), "pt");
    for (size_t i = 0; i < qd_st_count(src) && i < qd_st_count(f); i++) {
        const qd_st_entry *want = qd_st_get(src, i);
        check_same(qd_st_get(f, i), want, want->dtype, want->data);
    }
    qd_st_close(f);
    qd_st_close(src);
}

/* Write src converted to `to`, read it back, compare with the converted buffers. */
static void converted_copy(qd_dtype to, const char *file, double rel_tol) {
    qd_st_file *src = open_original();
    QD_REQUIRE(src != NULL);
    void **bufs = calloc(qd_st_count(src), sizeof *bufs);
    QD_REQUIRE(bufs != NULL);
    char path[512];
    snprintf(path, sizeof path, "%s/%s", tmpdir, file);
    qd_error err = {0};
    qd_st_writer *w = copy_writer(src, to, bufs);
    QD_REQUIRE(w != NULL);
    QD_CHECK_OK(qd_st_write_file(w, path, &err), &err);
    qd_st_writer_free(w);
    qd_st_file *f = NULL;
    QD_CHECK_OK(qd_st_open(path, &f, &err), &err);
    if (f) {
        QD_CHECK_EQ_INT(qd_st_count(f), qd_st_count(src));
        for (size_t i = 0; i < qd_st_count(src) && i < qd_st_count(f); i++) {
            const qd_st_entry *want = qd_st_get(src, i), *got = qd_st_get(f, i);
            check_same(got, want, to, bufs[i]);
            /* The values: within half an ulp of the format (relative), or tiny. */
            size_t n = (size_t)(want->end - want->begin) / 4;
            for (size_t k = 0; k < n; k++) {
                float x, y;
                uint16_t h;
                memcpy(&x, (const uint8_t *)want->data + 4 * k, 4);
                memcpy(&h, (const uint8_t *)got->data + 2 * k, 2);
                y = to == QD_DTYPE_F16 ? qd_fp16_to_fp32(h) : qd_bf16_to_fp32(h);
                if (!(fabs((double)x - (double)y) <= rel_tol * fabs((double)x) + 1e-7)) {
                    QD_FAIL_("tensor %s[%zu]: %g -> %g", want->name, k, (double)x, (double)y);
                    break;
                }
            }
        }
    }
    qd_st_close(f);
    for (size_t i = 0; i < qd_st_count(src); i++) free(bufs[i]);
    free(bufs);
    qd_st_close(src);
}

QD_TEST(f16_copy_matches_the_converted_values) {
    converted_copy(QD_DTYPE_F16, "copy-f16.safetensors", 1.0 / 2048); /* 2^-11 */
}

QD_TEST(bf16_copy_matches_the_converted_values) {
    converted_copy(QD_DTYPE_BF16, "copy-bf16.safetensors", 1.0 / 256); /* 2^-8 */
}

QD_TEST(sharded_copy_opens_as_a_model) {
    qd_st_file *src = open_original();
    QD_REQUIRE(src != NULL);
    char dir[512];
    snprintf(dir, sizeof dir, "%s/sharded", tmpdir);
    qd_error err = {0};
    QD_CHECK_OK(qd_mkdir_p(dir, 0755, &err), &err);
    qd_st_writer *w = copy_writer(src, QD_DTYPE_COUNT, NULL);
    QD_REQUIRE(w != NULL);
    QD_CHECK_OK(qd_st_write_model_shards(w, dir, 3, &err), &err);
    qd_st_writer_free(w);
    qd_st_model *m = NULL;
    QD_CHECK_OK(qd_st_model_open(dir, &m, &err), &err);
    QD_REQUIRE(m != NULL);
    QD_CHECK_EQ_INT(qd_st_model_shard_count(m), 3);
    QD_CHECK_EQ_INT(qd_st_model_count(m), qd_st_count(src));
    for (size_t i = 0; i < qd_st_count(src) && i < qd_st_model_count(m); i++) {
        const qd_st_entry *want = qd_st_get(src, i);
        check_same(qd_st_model_get(m, i), want, want->dtype, want->data); /* same order */
        QD_CHECK(qd_st_model_find(m, want->name) == qd_st_model_get(m, i));
    }
    /* Roughly equal shards: none holds more than half of the bytes. */
    uint64_t total = 0, biggest = 0;
    for (size_t s = 0; s < qd_st_model_shard_count(m); s++) {
        const qd_st_file *sh = qd_st_model_shard(m, s);
        uint64_t b = 0;
        for (size_t i = 0; i < qd_st_count(sh); i++)
            b += qd_st_get(sh, i)->end - qd_st_get(sh, i)->begin;
        QD_CHECK_EQ_STR(qd_st_metadata(sh, "format"), "pt");
        total += b;
        if (b > biggest) biggest = b;
    }
    QD_CHECK(biggest <= total / 2);
    qd_st_model_close(m);
    qd_st_close(src);
}

int main(void) {
    const char *base = getenv("TMPDIR");
    snprintf(tmpdir, sizeof tmpdir, "%s/qd-babyllama-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    int rc = qd_test_run();
    qd_error err = {0};
    if (qd_remove_tree(tmpdir, &err) != QD_OK) {
        fprintf(stderr, "%s\n", qd_error_text(&err));
        if (rc == 0) rc = 1;
    }
    return rc;
}
