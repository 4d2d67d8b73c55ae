/*
 * test-safetensors.c - the safetensors reader, writer and model directories.
 *
 * Round trips through the writer check names, order, dtypes, shapes, bytes, metadata and the
 * 8-byte alignment of the data section. Files built byte by byte here (header text written
 * out in the test) check the reader against the format itself rather than against our own
 * writer. Sharded models check the Hugging Face layout: shard names, the index's weight_map
 * and total_size, and the cross-checks qd_st_model_open makes. The malformed-file corpus
 * has its own test (test-st-corpus.c).
 */
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#include <jansson.h>

#include "fsutil.h"
#include "safetensors.h"
#include "test.h"

/* ---- helpers ----------------------------------------------------------------------------- */

/* A fresh empty directory under $TMPDIR (or /tmp); the caller removes it. */
static int make_tmpdir(char *buf, size_t len) {
    const char *base = getenv("TMPDIR");
    snprintf(buf, len, "%s/qd-st-XXXXXX", base && *base ? base : "/tmp");
    return mkdtemp(buf) != NULL;
}

static void remove_tmpdir(const char *dir) {
    qd_error err = {0};
    QD_CHECK_OK(qd_remove_tree(dir, &err), &err);
}

/* n deterministic bytes that differ per seed. */
static void fill(uint8_t *p, size_t n, unsigned seed) {
    uint32_t x = 2463534242u ^ (seed * 2654435761u);
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        p[i] = (uint8_t)(x >> 24);
    }
}

/* A little-endian u64 length, the header text, then the data: a file as the format says. */
static uint8_t *build_file(const char *header, const void *data, size_t data_len,
                           size_t *out_len) {
    size_t hl = strlen(header);
    uint8_t *buf = malloc(8 + hl + data_len + 1);
    if (!buf) return NULL;
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)((uint64_t)hl >> (8 * i));
    memcpy(buf + 8, header, hl);
    if (data_len) memcpy(buf + 8 + hl, data, data_len);
    *out_len = 8 + hl + data_len;
    return buf;
}

static uint64_t le64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

/* The tensors every round-trip test writes: several dtypes, a 0-d and a zero-size one. */
typedef struct spec {
    const char *name;
    qd_dtype dtype;
    int ndim;
    int64_t shape[4];
} spec;

static const spec specs[] = {
    {"model.embed_tokens.weight", QD_DTYPE_F32, 2, {7, 5}},
    {"scalar.i64", QD_DTYPE_I64, 0, {0}},
    {"layers.0.bf16", QD_DTYPE_BF16, 3, {2, 3, 5}},
    {"empty.f16", QD_DTYPE_F16, 2, {4, 0}},
    {"bytes.u8", QD_DTYPE_U8, 1, {13}},
    {"caf\xc3\xa9.i32", QD_DTYPE_I32, 1, {3}},
    {"f8", QD_DTYPE_F8_E4M3, 4, {1, 2, 1, 3}},
    {"mask.bool", QD_DTYPE_BOOL, 1, {6}},
    {"f64", QD_DTYPE_F64, 2, {3, 1}},
};
#define N_SPECS (sizeof specs / sizeof specs[0])

typedef struct data_set {
    uint8_t *buf[N_SPECS];
    uint64_t nbytes[N_SPECS];
} data_set;

static void data_make(data_set *d) {
    for (size_t i = 0; i < N_SPECS; i++) {
        QD_CHECK(qd_shape_nbytes(specs[i].dtype, specs[i].ndim, specs[i].shape, &d->nbytes[i]));
        d->buf[i] = malloc(d->nbytes[i] + 1);
        fill(d->buf[i], d->nbytes[i], (unsigned)i + 1);
    }
}

static void data_free(data_set *d) {
    for (size_t i = 0; i < N_SPECS; i++) free(d->buf[i]);
}

static qd_st_writer *writer_with(const data_set *d, qd_error *err) {
    qd_st_writer *w = qd_st_writer_new();
    if (!w) return NULL;
    for (size_t i = 0; i < N_SPECS; i++)
        if (qd_st_writer_add(w, specs[i].name, specs[i].dtype, specs[i].ndim, specs[i].shape,
                             d->buf[i], err) != QD_OK) {
            qd_st_writer_free(w);
            return NULL;
        }
    return w;
}

/* e holds spec i with the data d->buf[i]. */
static void check_entry(const qd_st_entry *e, size_t i, const data_set *d) {
    QD_REQUIRE(e != NULL);
    QD_CHECK_EQ_STR(e->name, specs[i].name);
    QD_CHECK_EQ_INT(e->dtype, specs[i].dtype);
    QD_CHECK_EQ_INT(e->ndim, specs[i].ndim);
    for (int k = 0; k < specs[i].ndim; k++) QD_CHECK_EQ_INT(e->shape[k], specs[i].shape[k]);
    QD_CHECK_EQ_INT(e->end - e->begin, d->nbytes[i]);
    QD_CHECK_MSG(d->nbytes[i] == 0 || memcmp(e->data, d->buf[i], d->nbytes[i]) == 0,
                 "tensor %s: bytes differ", specs[i].name);
    qd_tensor t = qd_st_entry_view(e);
    QD_CHECK(t.data == e->data);
    QD_CHECK_EQ_INT(qd_tensor_nbytes(&t), d->nbytes[i]);
    QD_CHECK(qd_tensor_is_contiguous(&t));
}

/* ---- the writer, read back --------------------------------------------------------------- */

QD_TEST(write_file_reads_back_identically) {
    char dir[256], path[512];
    QD_REQUIRE(make_tmpdir(dir, sizeof dir));
    snprintf(path, sizeof path, "%s/one.safetensors", dir);
    data_set d;
    data_make(&d);
    qd_error err = {0};
    qd_st_writer *w = writer_with(&d, &err);
    QD_REQUIRE(w != NULL);
    QD_CHECK_OK(qd_st_writer_set_metadata(w, "format", "pt", &err), &err);
    QD_CHECK_OK(qd_st_writer_set_metadata(w, "quant", "none", &err), &err);
    QD_CHECK_OK(qd_st_writer_set_metadata(w, "format", "np", &err), &err); /* replaces */
    QD_CHECK_OK(qd_st_write_file(w, path, &err), &err);
    qd_st_writer_free(w);

    qd_st_file *f = NULL;
    QD_CHECK_OK(qd_st_open(path, &f, &err), &err);
    QD_REQUIRE(f != NULL);
    QD_CHECK_EQ_STR(qd_st_path(f), path);
    QD_CHECK_EQ_INT(qd_st_count(f), N_SPECS);
    for (size_t i = 0; i < N_SPECS && i < qd_st_count(f); i++) {
        check_entry(qd_st_get(f, i), i, &d);       /* insertion order kept */
        QD_CHECK(qd_st_find(f, specs[i].name) == qd_st_get(f, i));
    }
    QD_CHECK(qd_st_get(f, N_SPECS) == NULL);
    QD_CHECK(qd_st_find(f, "nope") == NULL);
    QD_CHECK(qd_st_find(f, "__metadata__") == NULL);
    QD_CHECK_EQ_INT(qd_st_metadata_count(f), 2);
    QD_CHECK_EQ_STR(qd_st_metadata(f, "format"), "np");
    QD_CHECK_EQ_STR(qd_st_metadata(f, "quant"), "none");
    QD_CHECK(qd_st_metadata(f, "missing") == NULL);
    const char *v = NULL;
    QD_CHECK_EQ_STR(qd_st_metadata_get(f, 0, &v), "format");
    QD_CHECK_EQ_STR(v, "np");
    QD_CHECK_EQ_STR(qd_st_metadata_get(f, 1, &v), "quant");
    QD_CHECK(qd_st_metadata_get(f, 2, &v) == NULL);
    qd_st_close(f);

    /* The raw layout: data starts at a multiple of 8, header is '{', JSON, spaces; the
     * offsets are contiguous from 0 in insertion order; __metadata__ comes first. */
    char *raw = NULL;
    size_t len = 0;
    QD_REQUIRE(qd_read_file(path, (size_t)1 << 20, &raw, &len, &err) == QD_OK);
    QD_REQUIRE(len >= 8);
    uint64_t hl = le64((const uint8_t *)raw);
    QD_CHECK_EQ_INT((8 + hl) % 8, 0);
    QD_REQUIRE(8 + hl <= len);
    QD_CHECK(raw[8] == '{');
    size_t end = (size_t)(8 + hl);
    while (end > 8 && raw[end - 1] == ' ') end--;
    QD_CHECK(raw[end - 1] == '}');
    QD_CHECK_MSG(8 + hl - end < 8, "padding of %zu spaces", (size_t)(8 + hl - end));
    QD_CHECK(strncmp(raw + 8, "{\"__metadata__\":", 16) == 0);
    uint64_t total = 0;
    for (size_t i = 0; i < N_SPECS; i++) total += d.nbytes[i];
    QD_CHECK_EQ_INT(len, 8 + hl + total);
    json_error_t jerr;
    json_t *root = json_loadb(raw + 8, (size_t)hl, 0, &jerr);
    QD_REQUIRE(root != NULL);
    uint64_t off = 0;
    for (size_t i = 0; i < N_SPECS; i++) {
        json_t *offs = json_object_get(json_object_get(root, specs[i].name), "data_offsets");
        QD_CHECK_EQ_INT(json_integer_value(json_array_get(offs, 0)), off);
        off += d.nbytes[i];
        QD_CHECK_EQ_INT(json_integer_value(json_array_get(offs, 1)), off);
    }
    json_decref(root);
    free(raw);
    data_free(&d);
    remove_tmpdir(dir);
}

QD_TEST(empty_writer_gives_a_valid_empty_file) {
    char dir[256], path[512];
    QD_REQUIRE(make_tmpdir(dir, sizeof dir));
    snprintf(path, sizeof path, "%s/empty.safetensors", dir);
    qd_error err = {0};
    qd_st_writer *w = qd_st_writer_new();
    QD_REQUIRE(w != NULL);
    QD_CHECK_OK(qd_st_write_file(w, path, &err), &err);
    qd_st_writer_free(w);
    qd_st_file *f = NULL;
    QD_CHECK_OK(qd_st_open(path, &f, &err), &err);
    QD_CHECK_EQ_INT(qd_st_count(f), 0);
    QD_CHECK_EQ_INT(qd_st_metadata_count(f), 0);
    qd_st_close(f);
    remove_tmpdir(dir);
}

QD_TEST(writer_rejects_bad_entries) {
    qd_st_writer *w = qd_st_writer_new();
    QD_REQUIRE(w != NULL);
    float x[4] = {1, 2, 3, 4};
    int64_t shape[QD_MAX_DIMS + 1] = {4, 1, 1, 1, 1, 1, 1, 1, 1};
    int64_t neg[1] = {-4};
    qd_error err = {0};
    QD_CHECK_OK(qd_st_writer_add(w, "x", QD_DTYPE_F32, 1, shape, x, &err), &err);

    QD_CHECK_EQ_INT(qd_st_writer_add(w, "x", QD_DTYPE_F32, 1, shape, x, &err),
                    QD_ERR_INVALID_ARG);
    QD_CHECK(strstr(err.msg, "duplicate") && strstr(err.msg, "'x'"));
    qd_error_clear(&err);
    QD_CHECK_EQ_INT(qd_st_writer_add(w, "__metadata__", QD_DTYPE_F32, 1, shape, x, &err),
                    QD_ERR_INVALID_ARG);
    qd_error_clear(&err);
    QD_CHECK_EQ_INT(qd_st_writer_add(w, "y", QD_DTYPE_F32, QD_MAX_DIMS + 1, shape, x, &err),
                    QD_ERR_INVALID_ARG);
    qd_error_clear(&err);
    QD_CHECK_EQ_INT(qd_st_writer_add(w, "y", QD_DTYPE_F32, 1, neg, x, &err),
                    QD_ERR_INVALID_ARG);
    qd_error_clear(&err);
    QD_CHECK_EQ_INT(qd_st_writer_add(w, "y", QD_DTYPE_COUNT, 1, shape, x, &err),
                    QD_ERR_INVALID_ARG);
    qd_error_clear(&err);
    QD_CHECK_EQ_INT(qd_st_writer_add(w, "y", QD_DTYPE_F32, 1, shape, NULL, &err),
                    QD_ERR_INVALID_ARG);
    qd_error_clear(&err);
    QD_CHECK_EQ_INT(qd_st_writer_add(w, "bad\xff", QD_DTYPE_F32, 1, shape, x, &err),
                    QD_ERR_INVALID_ARG);
    qd_error_clear(&err);
    QD_CHECK_EQ_INT(qd_st_writer_set_metadata(w, "k", "bad\xc3", &err), QD_ERR_INVALID_ARG);
    qd_error_clear(&err);
    /* A zero-size tensor needs no data; "y" was never added by the failed calls. */
    int64_t zero[1] = {0};
    QD_CHECK_OK(qd_st_writer_add(w, "y", QD_DTYPE_F32, 1, zero, NULL, &err), &err);
    qd_st_writer_free(w);
    qd_st_writer_free(NULL);
}

QD_TEST(failed_write_leaves_no_file) {
    char dir[256], path[512], tmp[520];
    QD_REQUIRE(make_tmpdir(dir, sizeof dir));
    snprintf(path, sizeof path, "%s/missing-dir/x.safetensors", dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    qd_st_writer *w = qd_st_writer_new();
    QD_REQUIRE(w != NULL);
    qd_error err = {0};
    QD_CHECK_EQ_INT(qd_st_write_file(w, path, &err), QD_ERR_IO);
    QD_CHECK(strstr(err.msg, "missing-dir") != NULL);
    QD_CHECK(!qd_is_file(path) && !qd_is_file(tmp));
    qd_st_writer_free(w);
    remove_tmpdir(dir);
}

/* ---- hand-built files: the reader against the format --------------------------------- */

QD_TEST(reads_hand_built_file) {
    /* Offsets not in header order, __metadata__ in the middle, JSON whitespace and a
     * \u escape in a name, a header that is not padded (data at an odd offset). */
    const char *hdr =
        "{\n  \"b\": {\"dtype\": \"I16\", \"shape\": [3], \"data_offsets\": [8, 14]},\n"
        "  \"__metadata__\": {\"k\": \"v\\n\", \"empty\": \"\"},\n"
        "  \"caf\\u00e9\": {\"shape\": [2, 1], \"data_offsets\": [0, 8], \"dtype\": \"F32\"}\n"
        "}\t \r\n";
    uint8_t data[14];
    const float a[2] = {1.5f, -2.0f};
    const int16_t b[3] = {-1, 300, 7};
    memcpy(data, a, 8);
    memcpy(data + 8, b, 6);
    size_t len;
    uint8_t *file = build_file(hdr, data, sizeof data, &len);
    QD_REQUIRE(file != NULL);
    qd_st_file *f = NULL;
    qd_error err = {0};
    QD_CHECK_OK(qd_st_open_mem(file, len, "hand", &f, &err), &err);
    QD_REQUIRE(f != NULL);
    QD_CHECK_EQ_INT(qd_st_count(f), 2);
    QD_CHECK_EQ_STR(qd_st_get(f, 0)->name, "b");
    QD_CHECK_EQ_STR(qd_st_get(f, 1)->name, "caf\xc3\xa9");
    const qd_st_entry *eb = qd_st_find(f, "b");
    const qd_st_entry *ea = qd_st_find(f, "caf\xc3\xa9");
    QD_REQUIRE(ea && eb);
    QD_CHECK(ea->data == file + 8 + strlen(hdr));
    QD_CHECK(eb->data == file + 8 + strlen(hdr) + 8);
    QD_CHECK_EQ_INT(eb->dtype, QD_DTYPE_I16);
    QD_CHECK_EQ_INT(ea->ndim, 2);
    QD_CHECK_EQ_INT(ea->shape[0], 2);
    QD_CHECK_EQ_INT(ea->shape[1], 1);
    int16_t bv[3];
    memcpy(bv, eb->data, sizeof bv);
    QD_CHECK_EQ_INT(bv[1], 300);
    float av[2];
    memcpy(av, ea->data, sizeof av);
    QD_CHECK(av[0] == 1.5f && av[1] == -2.0f);
    QD_CHECK_EQ_STR(qd_st_metadata(f, "k"), "v\n");
    QD_CHECK_EQ_STR(qd_st_metadata(f, "empty"), "");
    qd_st_close(f);
    free(file);
}

/* Each header below breaks one rule; check the verdict and the words of the message. */
QD_TEST(rejects_hand_built_bad_headers) {
    static const struct {
        const char *header;
        size_t data_len;
        const char *want;
    } bad[] = {
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 7,
         "tensor 'a': data_offsets [0, 8] past the end"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 9,
         "header: 1 trailing bytes"},
        {"{\"a\":{\"dtype\":\"f32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
         "tensor 'a': unknown dtype 'f32'"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]}}", 8,
         "tensor 'b': data_offsets [0, 8] overlap tensor 'a'"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
         "tensor 'b': data_offsets [0, 4] overlap"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 16,
         "tensor 'a': gap of 4 bytes"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8,
         "tensor 'a': duplicate tensor name"},
        {"{\"x\\ny\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,3]}}", 4,
         "tensor 'x\\x0ay': shape [1] x F32 is 4 bytes but data_offsets [0, 3] cover 3"},
        {"{\"it's\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]},\"z\":5}", 4,
         "tensor 'z': entry is not an object"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1, true],\"data_offsets\":[0,4]}}", 4,
         "tensor 'a': shape[1] is not a non-negative integer"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4.0]}}", 4,
         "tensor 'a': \"data_offsets\" are not non-negative integers"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4,
         "tensor 'a': \"data_offsets\" is not an array of 2"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":{}}}", 4,
         "tensor 'a': \"data_offsets\" is not an array of 2"},
        {"{\"__metadata__\":{\"k\":null}}", 0, "header: '__metadata__' value of 'k'"},
        {"{\"__metadata__\":\"pt\"}", 0, "header: '__metadata__' is not an object"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}} x", 4,
         "header: invalid JSON"},
        {"\"a\"", 0, "header: JSON does not start with '{'"},
        {"{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[0,4]}}",
         4, "tensor 'a': duplicate key 'dtype'"},
        {"{\"caf\xc3\xa9\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
         "\"caf\\u00e9\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}", 2,
         "tensor 'caf\xc3\xa9': duplicate tensor name"},
        {"{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}", 0,
         "header: duplicate key 'k' in '__metadata__'"},
    };
    uint8_t zeros[32] = {0};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        size_t len;
        uint8_t *file = build_file(bad[i].header, zeros, bad[i].data_len, &len);
        QD_REQUIRE(file != NULL);
        qd_st_file *f = NULL;
        qd_error err = {0};
        qd_err rc = qd_st_open_mem(file, len, "hand.st", &f, &err);
        QD_CHECK_MSG(rc == QD_ERR_FORMAT, "case %zu: got %s", i, qd_err_name(rc));
        QD_CHECK(f == NULL);
        QD_CHECK_MSG(strncmp(err.msg, "hand.st: ", 9) == 0 && strstr(err.msg, bad[i].want),
                     "case %zu: message \"%s\" lacks \"%s\"", i, err.msg, bad[i].want);
        qd_st_close(f);
        free(file);
    }
}

QD_TEST(length_prefix_bounds) {
    uint8_t buf[16] = {0};
    qd_st_file *f = NULL;
    qd_error err = {0};
    QD_CHECK_EQ_INT(qd_st_open_mem(buf, 0, "e", &f, &err), QD_ERR_FORMAT);
    QD_CHECK(strstr(err.msg, "empty") != NULL);
    qd_error_clear(&err);
    QD_CHECK_EQ_INT(qd_st_open_mem(buf, 7, "s", &f, &err), QD_ERR_FORMAT);
    qd_error_clear(&err);
    /* "{}" exactly: the smallest valid file. */
    memcpy(buf, "\x02\0\0\0\0\0\0\0{}", 10);
    QD_CHECK_OK(qd_st_open_mem(buf, 10, "min", &f, &err), &err);
    QD_CHECK_EQ_INT(qd_st_count(f), 0);
    qd_st_close(f);
    /* One byte short of the header. */
    buf[0] = 3;
    QD_CHECK_EQ_INT(qd_st_open_mem(buf, 10, "short", &f, &err), QD_ERR_FORMAT);
    QD_CHECK(strstr(err.msg, "past the end of the file") != NULL);
    qd_error_clear(&err);
    /* Exactly the limit is allowed by the bound check (then fails further on: file too
     * short); one more is over it. */
    uint64_t n = QD_ST_MAX_HEADER + 1ull;
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)(n >> (8 * i));
    QD_CHECK_EQ_INT(qd_st_open_mem(buf, 16, "big", &f, &err), QD_ERR_FORMAT);
    QD_CHECK(strstr(err.msg, "exceeds the limit") != NULL);
    qd_error_clear(&err);
    n = QD_ST_MAX_HEADER;
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)(n >> (8 * i));
    QD_CHECK_EQ_INT(qd_st_open_mem(buf, 16, "big", &f, &err), QD_ERR_FORMAT);
    QD_CHECK(strstr(err.msg, "past the end of the file") != NULL);
    QD_CHECK(f == NULL);
}

QD_TEST(open_missing_file_is_not_found) {
    qd_st_file *f = NULL;
    qd_error err = {0};
    QD_CHECK_EQ_INT(qd_st_open("no/such/file.safetensors", &f, &err), QD_ERR_NOT_FOUND);
    QD_CHECK(strstr(err.msg, "no/such/file.safetensors") != NULL);
    QD_CHECK(f == NULL);
}

/* ---- models ------------------------------------------------------------------------------ */

/* dir/name exists as a regular file. */
static int exists_in(const char *dir, const char *name) {
    char p[600];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return qd_is_file(p);
}

QD_TEST(sharded_model_round_trip) {
    char dir[256], path[512];
    QD_REQUIRE(make_tmpdir(dir, sizeof dir));
    data_set d;
    data_make(&d);
    qd_error err = {0};
    qd_st_writer *w = writer_with(&d, &err);
    QD_REQUIRE(w != NULL);
    QD_CHECK_OK(qd_st_writer_set_metadata(w, "format", "pt", &err), &err);
    QD_CHECK_OK(qd_st_write_model_shards(w, dir, 3, &err), &err);
    qd_st_writer_free(w);

    QD_CHECK(exists_in(dir, "model-00001-of-00003.safetensors"));
    QD_CHECK(exists_in(dir, "model-00002-of-00003.safetensors"));
    QD_CHECK(exists_in(dir, "model-00003-of-00003.safetensors"));
    QD_CHECK(exists_in(dir, "model.safetensors.index.json"));
    QD_CHECK(!exists_in(dir, "model.safetensors"));

    /* The index: total_size is the sum of the tensor bytes; weight_map names every
     * tensor with the shard that holds it. */
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    json_error_t jerr;
    json_t *index = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    QD_REQUIRE(index != NULL);
    uint64_t total = 0;
    for (size_t i = 0; i < N_SPECS; i++) total += d.nbytes[i];
    QD_CHECK_EQ_INT(json_integer_value(json_object_get(json_object_get(index, "metadata"),
                                                       "total_size")),
                    total);
    json_t *map = json_object_get(index, "weight_map");
    QD_CHECK_EQ_INT(json_object_size(map), N_SPECS);

    qd_st_model *m = NULL;
    QD_CHECK_OK(qd_st_model_open(dir, &m, &err), &err);
    QD_REQUIRE(m != NULL);
    QD_CHECK_EQ_INT(qd_st_model_shard_count(m), 3);
    QD_CHECK_EQ_INT(qd_st_model_count(m), N_SPECS);
    for (size_t i = 0; i < N_SPECS; i++) {
        check_entry(qd_st_model_get(m, i), i, &d); /* shard order then header order */
        const qd_st_entry *e = qd_st_model_find(m, specs[i].name);
        check_entry(e, i, &d);
        /* ...and it is in the shard the index names. */
        const char *shard = json_string_value(json_object_get(map, specs[i].name));
        QD_REQUIRE(shard != NULL);
        int found = 0;
        for (size_t s = 0; s < qd_st_model_shard_count(m); s++) {
            const qd_st_file *sf = qd_st_model_shard(m, s);
            const char *p = qd_st_path(sf);
            if (qd_st_find(sf, specs[i].name) == e)
                found = strlen(p) >= strlen(shard) &&
                        strcmp(p + strlen(p) - strlen(shard), shard) == 0;
        }
        QD_CHECK_MSG(found, "tensor %s not in shard %s", specs[i].name, shard);
    }
    QD_CHECK(qd_st_model_find(m, "nope") == NULL);
    /* Every shard is non-empty and carries the metadata. */
    for (size_t s = 0; s < qd_st_model_shard_count(m); s++) {
        QD_CHECK(qd_st_count(qd_st_model_shard(m, s)) > 0);
        QD_CHECK_EQ_STR(qd_st_metadata(qd_st_model_shard(m, s), "format"), "pt");
    }
    qd_st_model_close(m);
    json_decref(index);
    data_free(&d);
    remove_tmpdir(dir);
}

QD_TEST(model_by_max_shard_bytes) {
    /* 100, 100, 100, 250, 50 bytes with a 200-byte limit: [100 100] [100] [250] [50]. */
    static uint8_t bytes[600];
    const int64_t sizes[5] = {100, 100, 100, 250, 50};
    char dir[256];
    QD_REQUIRE(make_tmpdir(dir, sizeof dir));
    qd_st_writer *w = qd_st_writer_new();
    QD_REQUIRE(w != NULL);
    qd_error err = {0};
    for (int i = 0; i < 5; i++) {
        char name[16];
        snprintf(name, sizeof name, "t%d", i);
        fill(bytes, sizeof bytes, (unsigned)i);
        QD_CHECK_OK(qd_st_writer_add(w, name, QD_DTYPE_U8, 1, &sizes[i], bytes, &err), &err);
    }
    int n = 0;
    QD_CHECK_OK(qd_st_write_model(w, dir, 200, &n, &err), &err);
    QD_CHECK_EQ_INT(n, 4);
    qd_st_model *m = NULL;
    QD_CHECK_OK(qd_st_model_open(dir, &m, &err), &err);
    QD_REQUIRE(m != NULL);
    QD_CHECK_EQ_INT(qd_st_model_shard_count(m), 4);
    const size_t per_shard[4] = {2, 1, 1, 1};
    for (size_t s = 0; s < 4 && s < qd_st_model_shard_count(m); s++)
        QD_CHECK_EQ_INT(qd_st_count(qd_st_model_shard(m, s)), per_shard[s]);
    qd_st_model_close(m);

    /* No limit: one model.safetensors and no index. */
    char dir1[256];
    QD_REQUIRE(make_tmpdir(dir1, sizeof dir1));
    QD_CHECK_OK(qd_st_write_model(w, dir1, 0, &n, &err), &err);
    QD_CHECK_EQ_INT(n, 1);
    QD_CHECK(exists_in(dir1, "model.safetensors"));
    QD_CHECK(!exists_in(dir1, "model.safetensors.index.json"));
    m = NULL;
    QD_CHECK_OK(qd_st_model_open(dir1, &m, &err), &err);
    QD_CHECK_EQ_INT(qd_st_model_count(m), 5);
    QD_CHECK_EQ_INT(qd_st_model_shard_count(m), 1);
    QD_CHECK_EQ_STR(qd_st_model_get(m, 4)->name, "t4");
    qd_st_model_close(m);

    /* Exactly n shards: more shards than tensors is an error; 5 gives one tensor each. */
    QD_CHECK_EQ_INT(qd_st_write_model_shards(w, dir1, 6, &err), QD_ERR_INVALID_ARG);
    qd_error_clear(&err);
    QD_CHECK_EQ_INT(qd_st_write_model_shards(w, dir1, 0, &err), QD_ERR_INVALID_ARG);
    qd_error_clear(&err);
    char dir5[256];
    QD_REQUIRE(make_tmpdir(dir5, sizeof dir5));
    QD_CHECK_OK(qd_st_write_model_shards(w, dir5, 5, &err), &err);
    QD_CHECK(exists_in(dir5, "model-00005-of-00005.safetensors"));
    m = NULL;
    QD_CHECK_OK(qd_st_model_open(dir5, &m, &err), &err);
    QD_CHECK_EQ_INT(qd_st_model_shard_count(m), 5);
    qd_st_model_close(m);
    qd_st_writer_free(w);
    remove_tmpdir(dir);
    remove_tmpdir(dir1);
    remove_tmpdir(dir5);
}

/* Write one small file dir/name holding U8 tensors of 4 bytes with the given names. */
static void write_small(const char *dir, const char *name, const char *const *tensors,
                        int n) {
    static const uint8_t four[4] = {1, 2, 3, 4};
    const int64_t shape[1] = {4};
    char path[600];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    qd_st_writer *w = qd_st_writer_new();
    QD_REQUIRE(w != NULL);
    qd_error err = {0};
    for (int i = 0; i < n; i++)
        QD_CHECK_OK(qd_st_writer_add(w, tensors[i], QD_DTYPE_U8, 1, shape, four, &err), &err);
    QD_CHECK_OK(qd_st_write_file(w, path, &err), &err);
    qd_st_writer_free(w);
}

static void write_index(const char *dir, const char *json) {
    char path[600];
    qd_error err = {0};
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    QD_CHECK_OK(qd_write_file_atomic(path, json, strlen(json), &err), &err);
}

/* qd_st_model_open(dir) fails with code and a message containing want. */
static void expect_model_error(const char *dir, qd_err code, const char *want) {
    qd_st_model *m = NULL;
    qd_error err = {0};
    qd_err rc = qd_st_model_open(dir, &m, &err);
    QD_CHECK_MSG(rc == code, "want %s, got %s: %s", qd_err_name(code), qd_err_name(rc),
                 qd_error_text(&err));
    QD_CHECK_MSG(strstr(err.msg, want) != NULL, "message \"%s\" lacks \"%s\"", err.msg, want);
    QD_CHECK(m == NULL);
    qd_st_model_close(m);
}

QD_TEST(model_index_is_cross_checked) {
    char dir[256];
    QD_REQUIRE(make_tmpdir(dir, sizeof dir));
    expect_model_error(dir, QD_ERR_NOT_FOUND, dir);
    expect_model_error("no/such/model/dir", QD_ERR_NOT_FOUND, "no/such/model/dir");

    const char *a[] = {"x", "y"}, *b[] = {"y2", "z"}, *b_dup[] = {"y", "z"};
    write_small(dir, "a.safetensors", a, 2);
    write_small(dir, "b.safetensors", b, 2);
    write_index(dir, "{\"weight_map\": {\"x\": \"a.safetensors\", \"y\": \"a.safetensors\","
                     " \"y2\": \"b.safetensors\", \"z\": \"b.safetensors\"}}");
    qd_st_model *m = NULL;
    qd_error err = {0};
    QD_CHECK_OK(qd_st_model_open(dir, &m, &err), &err);
    QD_CHECK_EQ_INT(qd_st_model_count(m), 4);
    QD_CHECK(qd_st_model_find(m, "z") != NULL);
    qd_st_model_close(m);

    /* Shards come in file-name order whatever the order of the weight_map. */
    write_index(dir, "{\"weight_map\": {\"z\": \"b.safetensors\", \"y2\": \"b.safetensors\","
                     " \"x\": \"a.safetensors\", \"y\": \"a.safetensors\"}}");
    m = NULL;
    QD_CHECK_OK(qd_st_model_open(dir, &m, &err), &err);
    QD_REQUIRE(m != NULL);
    QD_REQUIRE(qd_st_model_shard_count(m) == 2);
    const char *p0 = qd_st_path(qd_st_model_shard(m, 0));
    QD_CHECK(strlen(p0) > 14 && strcmp(p0 + strlen(p0) - 14, "/a.safetensors") == 0);
    const char *order[] = {"x", "y", "y2", "z"};
    for (size_t i = 0; i < 4; i++) QD_CHECK_EQ_STR(qd_st_model_get(m, i)->name, order[i]);
    QD_CHECK(qd_st_model_find(m, "y2") == qd_st_find(qd_st_model_shard(m, 1), "y2"));
    qd_st_model_close(m);

    /* A tensor listed for the wrong shard, a listed tensor that is not there, one that the
     * index does not list. */
    write_index(dir, "{\"weight_map\": {\"x\": \"a.safetensors\", \"y\": \"b.safetensors\","
                     " \"y2\": \"b.safetensors\", \"z\": \"b.safetensors\"}}");
    expect_model_error(dir, QD_ERR_FORMAT, "tensor 'y': listed in shard");
    write_index(dir, "{\"weight_map\": {\"x\": \"a.safetensors\", \"y\": \"a.safetensors\","
                     " \"w\": \"a.safetensors\", \"y2\": \"b.safetensors\","
                     " \"z\": \"b.safetensors\"}}");
    expect_model_error(dir, QD_ERR_FORMAT, "tensor 'w': listed in shard");
    write_index(dir, "{\"weight_map\": {\"x\": \"a.safetensors\", \"y\": \"a.safetensors\","
                     " \"z\": \"b.safetensors\"}}");
    expect_model_error(dir, QD_ERR_FORMAT, "tensor 'y2': not listed");
    /* Shard names must stay in the directory. */
    write_index(dir, "{\"weight_map\": {\"x\": \"../a.safetensors\"}}");
    expect_model_error(dir, QD_ERR_FORMAT, "not a plain file name");
    write_index(dir, "{\"weight_map\": {\"x\": \"sub/a.safetensors\"}}");
    expect_model_error(dir, QD_ERR_FORMAT, "not a plain file name");
    write_index(dir, "{\"weight_map\": {\"x\": 3}}");
    expect_model_error(dir, QD_ERR_FORMAT, "not a string");
    write_index(dir, "{\"weight_map\": {}}");
    expect_model_error(dir, QD_ERR_FORMAT, "weight_map");
    write_index(dir, "{\"metadata\": {}}");
    expect_model_error(dir, QD_ERR_FORMAT, "weight_map");
    write_index(dir, "{\"weight_map\": {\"x\": \"a.safetensors\",}");
    expect_model_error(dir, QD_ERR_FORMAT, "invalid JSON");
    write_index(dir, "{\"weight_map\": {\"x\": \"gone.safetensors\"}}");
    expect_model_error(dir, QD_ERR_NOT_FOUND, "gone.safetensors");
    /* The same tensor in two shards. */
    write_small(dir, "b.safetensors", b_dup, 2);
    write_index(dir, "{\"weight_map\": {\"x\": \"a.safetensors\", \"y\": \"a.safetensors\","
                     " \"z\": \"b.safetensors\"}}");
    expect_model_error(dir, QD_ERR_FORMAT, "tensor 'y': in two shards");
    /* A malformed shard reports the shard's own problem. */
    char path[600];
    snprintf(path, sizeof path, "%s/b.safetensors", dir);
    QD_CHECK_OK(qd_write_file_atomic(path, "\x02\0\0\0\0\0\0\0{}junk", 14, &err), &err);
    expect_model_error(dir, QD_ERR_FORMAT, "b.safetensors: header: 4 trailing bytes");
    remove_tmpdir(dir);
}

QD_TEST_MAIN()
