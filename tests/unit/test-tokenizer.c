/*
 * test-tokenizer.c - the llama2.c tokenizer, text normalisation and token windows.
 *
 * Three kinds of evidence:
 *  - tiny hand-made vocabularies whose right answers can be worked out by hand (merge order by
 *    score, leftmost on ties, byte fallback, dropping, the dummy prefix, BOS stripping);
 *  - a plain O(n^2) transcription of llama2.c's encode loop, written here against the file
 *    format read here, compared with quantd's heap-based merge on many random strings;
 *  - the bundled token sets (examples/data/<model>/{calib,eval}.safetensors), made by an
 *    independent tokenizer: decoding their rows and re-encoding must give the same ids back.
 *
 * What must match in the bundled rows, exactly: every piece of these vocabularies holds a space
 * only as its first byte, so no merge can join anything to a following space-led piece, and a
 * token that starts with a space always starts a fresh "word". BPE is therefore word-local: a
 * run of whole words encodes to the same ids wherever it sits. A row is a window cut out of
 * running text, so its first word may be a tail and its last word a head whose merges differ.
 * The test takes the tokens from the first space-led token up to (not including) the last
 * space-led token, decodes them, drops the leading space (the dummy prefix re-creates it) and
 * requires the exact same ids. Rows that begin at a word (row[1] is space-led) are also
 * re-encoded WITH the BOS from the decoded row, which checks BOS stripping in decode and the
 * dummy prefix in encode: the data sets were made with a dummy prefix per paragraph.
 */
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fsutil.h"
#include "safetensors.h"
#include "test.h"
#include "tokenizer.h"

#define MODELS QD_SOURCE_DIR "/examples/models"
#define DATA QD_SOURCE_DIR "/examples/data"

/* ---- a tokenizer.bin writer and reader, independent of the code under test --------------- */

typedef struct vocab {
    int n;
    char **piece; /* NUL-terminated copies */
    size_t *len;
    float *score;
} vocab;

static void vocab_free(vocab *v) {
    for (int i = 0; i < v->n; i++) free(v->piece[i]);
    free(v->piece);
    free(v->len);
    free(v->score);
    memset(v, 0, sizeof *v);
}

static void vocab_add(vocab *v, const char *p, size_t len, float score) {
    v->piece = realloc(v->piece, (size_t)(v->n + 1) * sizeof *v->piece);
    v->len = realloc(v->len, (size_t)(v->n + 1) * sizeof *v->len);
    v->score = realloc(v->score, (size_t)(v->n + 1) * sizeof *v->score);
    v->piece[v->n] = malloc(len + 1);
    memcpy(v->piece[v->n], p, len);
    v->piece[v->n][len] = '\0';
    v->len[v->n] = len;
    v->score[v->n] = score;
    v->n++;
}

static void vocab_add_s(vocab *v, const char *p, float score) { vocab_add(v, p, strlen(p), score); }

/* <unk>, <s>, </s> and, optionally, the 256 byte tokens */
static void vocab_start(vocab *v, int with_bytes) {
    memset(v, 0, sizeof *v);
    vocab_add_s(v, "<unk>", 0);
    vocab_add_s(v, "\n<s>\n", 0);
    vocab_add_s(v, "\n</s>\n", 0);
    for (int b = 0; with_bytes && b < 256; b++) {
        char s[8];
        snprintf(s, sizeof s, "<0x%02X>", b);
        vocab_add_s(v, s, 0);
    }
}

static void put_u32(unsigned char *p, uint32_t x) {
    p[0] = (unsigned char)x;
    p[1] = (unsigned char)(x >> 8);
    p[2] = (unsigned char)(x >> 16);
    p[3] = (unsigned char)(x >> 24);
}

/* Serialise v as tokenizer.bin; caller frees. */
static unsigned char *vocab_bin(const vocab *v, uint32_t max_len, size_t *len) {
    size_t n = 4;
    for (int i = 0; i < v->n; i++) n += 8 + v->len[i];
    unsigned char *b = malloc(n), *p = b + 4;
    put_u32(b, max_len);
    for (int i = 0; i < v->n; i++) {
        memcpy(p, &v->score[i], 4);
        put_u32(p + 4, (uint32_t)v->len[i]);
        memcpy(p + 8, v->piece[i], v->len[i]);
        p += 8 + v->len[i];
    }
    *len = n;
    return b;
}

static qd_tokenizer *vocab_tokenizer(const vocab *v) {
    size_t len;
    unsigned char *b = vocab_bin(v, 64, &len);
    qd_tokenizer *t = NULL;
    qd_error e = {0};
    QD_CHECK_OK(qd_tokenizer_parse_llama2c(b, len, v->n, "test.bin", &t, &e), &e);
    free(b);
    return t;
}

/* Read a tokenizer.bin into v (test's own reader). */
static int vocab_read(const char *path, int n, vocab *v) {
    char *buf;
    size_t len, pos = 4;
    qd_error e = {0};
    memset(v, 0, sizeof *v);
    if (qd_read_file(path, 1u << 24, &buf, &len, &e) != QD_OK) return -1;
    for (int i = 0; i < n && pos + 8 <= len; i++) {
        float s;
        int32_t l;
        memcpy(&s, buf + pos, 4);
        memcpy(&l, buf + pos + 4, 4);
        vocab_add(v, buf + pos + 8, (size_t)l, s);
        pos += 8 + (size_t)l;
    }
    free(buf);
    return v->n == n ? 0 : -1;
}

/* ---- llama2.c's encode, transcribed plainly ---------------------------------------------- */

static int ref_lookup(const vocab *v, const char *s, size_t len) {
    for (int i = 0; i < v->n; i++)
        if (v->len[i] == len && memcmp(v->piece[i], s, len) == 0) return i;
    return -1;
}

static int ref_has_bytes(const vocab *v) {
    if (v->n < 259) return 0;
    for (int b = 0; b < 256; b++) {
        char s[8];
        snprintf(s, sizeof s, "<0x%02X>", b);
        if (strcmp(v->piece[3 + b], s) != 0) return 0;
    }
    return 1;
}

/* tokens of text (no BOS), into out (>= len + 2 entries); returns the count */
static size_t ref_encode(const vocab *v, const char *text, size_t len, int32_t *out) {
    size_t n = 0;
    int bytes = ref_has_bytes(v);
    char buf[256];
    if (len == 0) return 0;
    int sp = ref_lookup(v, " ", 1);
    if (sp >= 0) out[n++] = sp;
    for (size_t i = 0; i < len;) {
        size_t g = 1;
        while (i + g < len && g < 4 && ((unsigned char)text[i + g] & 0xC0) == 0x80) g++;
        int id = ref_lookup(v, text + i, g);
        if (id >= 0)
            out[n++] = id;
        else
            for (size_t k = 0; bytes && k < g; k++) out[n++] = 3 + (unsigned char)text[i + k];
        i += g;
    }
    for (;;) {
        float best = -INFINITY;
        int best_id = -1;
        size_t best_i = 0;
        for (size_t i = 0; i + 1 < n; i++) {
            size_t la = v->len[out[i]], lb = v->len[out[i + 1]];
            if (la + lb > sizeof buf) continue;
            memcpy(buf, v->piece[out[i]], la);
            memcpy(buf + la, v->piece[out[i + 1]], lb);
            int id = ref_lookup(v, buf, la + lb);
            if (id >= 0 && v->score[id] > best) {
                best = v->score[id];
                best_id = id;
                best_i = i;
            }
        }
        if (best_id < 0) break;
        out[best_i] = best_id;
        memmove(out + best_i + 1, out + best_i + 2, (n - best_i - 2) * sizeof *out);
        n--;
    }
    return n;
}

/* ---- helpers ---------------------------------------------------------------------------- */

static qd_tokenizer *load_model(const char *name, int vocab_size) {
    char dir[512];
    qd_tokenizer *t = NULL;
    qd_error e = {0};
    snprintf(dir, sizeof dir, "%s/%s", MODELS, name);
    QD_CHECK_OK(qd_tokenizer_load(dir, vocab_size, &t, &e), &e);
    return t;
}

/* ids of text must be want[0..n) */
static void expect_ids(const qd_tokenizer *t, const char *text, size_t len, bool bos,
                       const int32_t *want, size_t n) {
    int32_t *ids;
    size_t got;
    qd_error e = {0};
    QD_CHECK_OK(qd_tokenizer_encode(t, text, len, bos, &ids, &got, &e), &e);
    if (e.code != QD_OK) return;
    int same = got == n && (n == 0 || memcmp(ids, want, n * sizeof *ids) == 0);
    QD_CHECK_MSG(same, "encode(\"%.*s\"): got %zu ids, want %zu", (int)len, text, got, n);
    for (size_t i = 0; !same && i < got && i < n; i++)
        if (ids[i] != want[i]) fprintf(stderr, "  [%zu] %d != %d\n", i, ids[i], want[i]);
    free(ids);
}

static void expect_decode(const qd_tokenizer *t, const int32_t *ids, size_t n, const char *want,
                          size_t want_len) {
    char *s;
    size_t len;
    qd_error e = {0};
    QD_CHECK_OK(qd_tokenizer_decode(t, ids, n, &s, &len, &e), &e);
    if (e.code != QD_OK) return;
    QD_CHECK_MSG(len == want_len && memcmp(s, want, len) == 0 && s[len] == '\0',
                 "decode: \"%s\" != \"%.*s\"", s, (int)want_len, want);
    free(s);
}

/* input_ids of a bundled token set, read from the safetensors header with jansson. */
static int32_t *read_rows(const char *path, int *rows, int *seq_len) {
    char *buf;
    size_t len;
    qd_error e = {0};
    *rows = *seq_len = 0;
    if (qd_read_file(path, 1u << 26, &buf, &len, &e) != QD_OK || len < 8) return NULL;
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = hl << 8 | (unsigned char)buf[i];
    json_error_t jerr;
    json_t *h = hl <= len - 8 ? json_loadb(buf + 8, (size_t)hl, 0, &jerr) : NULL;
    json_t *t = json_object_get(h, "input_ids");
    json_t *shape = json_object_get(t, "shape");
    json_t *offs = json_object_get(t, "data_offsets");
    int32_t *out = NULL;
    if (t && strcmp(json_string_value(json_object_get(t, "dtype")), "I32") == 0 &&
        json_array_size(shape) == 2) {
        *rows = (int)json_integer_value(json_array_get(shape, 0));
        *seq_len = (int)json_integer_value(json_array_get(shape, 1));
        size_t begin = (size_t)json_integer_value(json_array_get(offs, 0));
        size_t bytes = (size_t)*rows * (size_t)*seq_len * 4;
        if (8 + hl + begin + bytes <= len) {
            out = malloc(bytes);
            memcpy(out, buf + 8 + hl + begin, bytes);
        }
    }
    json_decref(h);
    free(buf);
    return out;
}

static bool space_led(const qd_tokenizer *t, int32_t id) {
    size_t len;
    const char *p = qd_tokenizer_piece(t, id, &len);
    return p && len > 0 && p[0] == ' ';
}

/* ---- loading ---------------------------------------------------------------------------- */

QD_TEST(load_bundled) {
    qd_tokenizer *t = load_model("babyllama", 105);
    QD_REQUIRE(t);
    QD_CHECK_EQ_INT(qd_tokenizer_get_kind(t), QD_TOKENIZER_LLAMA2C);
    QD_CHECK_EQ_INT(qd_tokenizer_vocab_size(t), 105);
    QD_CHECK_EQ_INT(qd_tokenizer_bos_id(t), 1);
    QD_CHECK_EQ_INT(qd_tokenizer_eos_id(t), 2);
    QD_CHECK(!qd_tokenizer_has_byte_fallback(t));
    /* the loaded pieces are the file's, as read by this test's own reader */
    vocab v;
    QD_REQUIRE(vocab_read(MODELS "/babyllama/tokenizer.bin", 105, &v) == 0);
    for (int i = 0; i < v.n; i++) {
        size_t len;
        const char *p = qd_tokenizer_piece(t, i, &len);
        QD_CHECK(p && len == v.len[i] && memcmp(p, v.piece[i], len) == 0);
        QD_CHECK_EQ_INT(qd_tokenizer_find(t, v.piece[i], v.len[i]), i);
    }
    QD_CHECK(qd_tokenizer_piece(t, 105, NULL) == NULL);
    QD_CHECK(qd_tokenizer_piece(t, -1, NULL) == NULL);
    QD_CHECK_EQ_INT(qd_tokenizer_find(t, "qq", 2), -1);
    vocab_free(&v);
    qd_tokenizer_free(t);

    t = load_model("stories260k", 512);
    QD_REQUIRE(t);
    QD_CHECK(qd_tokenizer_has_byte_fallback(t));
    qd_tokenizer_free(t);
}

QD_TEST(vocab_size_must_match_the_file) {
    qd_tokenizer *t = NULL;
    qd_error e = {0};
    QD_CHECK_EQ_INT(qd_tokenizer_load(MODELS "/stories260k", 511, &t, &e), QD_ERR_FORMAT);
    QD_CHECK(t == NULL);
    QD_CHECK(strstr(e.msg, "tokenizer.bin") && strstr(e.msg, "left after token 510"));
    qd_error e2 = {0};
    QD_CHECK_EQ_INT(qd_tokenizer_load(MODELS "/stories260k", 513, &t, &e2), QD_ERR_FORMAT);
    QD_CHECK(strstr(e2.msg, "token 512") != NULL);
    qd_error e3 = {0};
    QD_CHECK_EQ_INT(qd_tokenizer_load(MODELS "/stories260k", 2, &t, &e3), QD_ERR_INVALID_ARG);
}

QD_TEST(missing_or_unsupported_tokenizer) {
    qd_tokenizer *t = NULL;
    qd_error e = {0};
    QD_CHECK_EQ_INT(qd_tokenizer_load("/nonexistent-qd-model", 100, &t, &e), QD_ERR_NOT_FOUND);
    QD_CHECK(strstr(e.msg, "/nonexistent-qd-model") && strstr(e.msg, "tokenizer.bin"));

    char dir[] = "/tmp/qd-tok-XXXXXX", path[600];
    QD_REQUIRE(mkdtemp(dir) != NULL);
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    qd_error e2 = {0};
    QD_CHECK_OK(qd_write_file_atomic(path, "{}", 2, &e2), &e2);
    QD_CHECK_EQ_INT(qd_tokenizer_load(dir, 100, &t, &e2), QD_ERR_UNSUPPORTED);
    QD_CHECK(strstr(e2.msg, "tokenizer.json") != NULL);
    qd_remove_tree(dir, NULL);
}

QD_TEST(malformed_files_fail_cleanly) {
    vocab v;
    vocab_start(&v, 0);
    vocab_add_s(&v, " ", 0);
    vocab_add_s(&v, "ab", -1);
    size_t len;
    unsigned char *b = vocab_bin(&v, 8, &len);
    qd_tokenizer *t = NULL;
    /* every truncation: reading past the end is an error, never a crash */
    for (size_t cut = 0; cut < len; cut++) {
        qd_error e = {0};
        QD_CHECK_EQ_INT(qd_tokenizer_parse_llama2c(b, cut, v.n, "cut.bin", &t, &e),
                        QD_ERR_FORMAT);
        QD_CHECK(t == NULL && strstr(e.msg, "cut.bin") != NULL);
    }
    qd_error e = {0};
    QD_CHECK_OK(qd_tokenizer_parse_llama2c(b, len, v.n, "ok.bin", &t, &e), &e);
    qd_tokenizer_free(t);
    t = NULL;

    /* token 4 ("ab"): its length field sits after 4 header bytes and 4 earlier tokens */
    size_t at = 4;
    for (int i = 0; i < 4; i++) at += 8 + v.len[i];
    unsigned char *bad = malloc(len + 1);
    memcpy(bad, b, len);
    put_u32(bad + at + 4, (uint32_t)-1);
    qd_error e1 = {0};
    QD_CHECK_EQ_INT(qd_tokenizer_parse_llama2c(bad, len, v.n, "neg.bin", &t, &e1),
                    QD_ERR_FORMAT);
    QD_CHECK(strstr(e1.msg, "token 4") != NULL);

    memcpy(bad, b, len);
    put_u32(bad, 1); /* max_token_length 1 < "ab" */
    qd_error e2 = {0};
    QD_CHECK_EQ_INT(qd_tokenizer_parse_llama2c(bad, len, v.n, "max.bin", &t, &e2),
                    QD_ERR_FORMAT);
    QD_CHECK(strstr(e2.msg, "max_token_length") != NULL);

    memcpy(bad, b, len);
    float nan_score = NAN;
    memcpy(bad + at, &nan_score, 4);
    qd_error e3 = {0};
    QD_CHECK_EQ_INT(qd_tokenizer_parse_llama2c(bad, len, v.n, "nan.bin", &t, &e3),
                    QD_ERR_FORMAT);

    memcpy(bad, b, len);
    bad[len] = 'x'; /* one byte after the last token */
    qd_error e4 = {0};
    QD_CHECK_EQ_INT(qd_tokenizer_parse_llama2c(bad, len + 1, v.n, "long.bin", &t, &e4),
                    QD_ERR_FORMAT);
    QD_CHECK(t == NULL);
    free(bad);
    free(b);
    vocab_free(&v);
}

/* ---- encoding by hand-checked examples --------------------------------------------------- */

QD_TEST(merge_by_score_leftmost_on_ties) {
    vocab v;
    vocab_start(&v, 0);
    vocab_add_s(&v, " ", 0);  /* 3 */
    vocab_add_s(&v, "a", 0);  /* 4 */
    vocab_add_s(&v, "b", 0);  /* 5 */
    vocab_add_s(&v, "ab", 1); /* 6 */
    vocab_add_s(&v, "ba", 1); /* 7 */
    qd_tokenizer *t = vocab_tokenizer(&v);
    QD_REQUIRE(t);
    /* "aba": ab and ba tie; the leftmost pair wins */
    expect_ids(t, "aba", 3, false, (const int32_t[]){3, 6, 4}, 3);
    expect_ids(t, "aba", 3, true, (const int32_t[]){1, 3, 6, 4}, 4);
    qd_tokenizer_free(t);

    v.score[7] = 2; /* now ba outranks ab */
    t = vocab_tokenizer(&v);
    QD_REQUIRE(t);
    expect_ids(t, "aba", 3, false, (const int32_t[]){3, 4, 7}, 3);
    qd_tokenizer_free(t);
    vocab_free(&v);
}

QD_TEST(merge_order_is_by_score_not_left_to_right) {
    vocab v;
    vocab_start(&v, 0);
    vocab_add_s(&v, " ", 0);    /* 3 */
    vocab_add_s(&v, "a", 0);    /* 4 */
    vocab_add_s(&v, "b", 0);    /* 5 */
    vocab_add_s(&v, "c", 0);    /* 6 */
    vocab_add_s(&v, "ab", 1);   /* 7 */
    vocab_add_s(&v, "bc", 5);   /* 8 */
    vocab_add_s(&v, " a", -3);  /* 9 */
    vocab_add_s(&v, " abc", 4); /* 10: reachable only as " a" + "bc" */
    qd_tokenizer *t = vocab_tokenizer(&v);
    QD_REQUIRE(t);
    /* bc (5) first, then " a" (-3), then " a"+"bc" = " abc" (4) */
    expect_ids(t, "abc", 3, false, (const int32_t[]){10}, 1);
    /* "abab": ab, ab (both 1), " a"... : " " "a" "b" "a" "b" -> ab at 1 first (leftmost tie),
     * then ab at 3; " " + "ab" is not a piece */
    expect_ids(t, "abab", 4, false, (const int32_t[]){3, 7, 7}, 3);
    /* empty text: no dummy prefix */
    expect_ids(t, "", 0, false, NULL, 0);
    expect_ids(t, "", 0, true, (const int32_t[]){1}, 1);
    qd_tokenizer_free(t);
    vocab_free(&v);
}

QD_TEST(unknown_characters_dropped_without_byte_tokens) {
    vocab v;
    vocab_start(&v, 0);
    vocab_add_s(&v, " ", 0);      /* 3 */
    vocab_add_s(&v, "a", 0);      /* 4 */
    vocab_add_s(&v, "\xC3\xA9", 0); /* 5: é is a piece, è is not */
    qd_tokenizer *t = vocab_tokenizer(&v);
    QD_REQUIRE(t);
    QD_CHECK(!qd_tokenizer_has_byte_fallback(t));
    expect_ids(t, "a\xC3\xA8" "a\xC3\xA9", 6, false, (const int32_t[]){3, 4, 4, 5}, 4);
    expect_ids(t, "zz", 2, false, (const int32_t[]){3}, 1);
    qd_tokenizer_free(t);
    vocab_free(&v);
}

QD_TEST(byte_fallback_and_decode) {
    vocab v;
    vocab_start(&v, 1);
    vocab_add_s(&v, " ", 0);   /* 259 */
    vocab_add_s(&v, "a", 0);   /* 260 */
    vocab_add_s(&v, " a", 1);  /* 261 */
    vocab_add_s(&v, "\xE2\x80\x9C", 0); /* 262: a 3-byte character that is a piece */
    qd_tokenizer *t = vocab_tokenizer(&v);
    QD_REQUIRE(t);
    QD_CHECK(qd_tokenizer_has_byte_fallback(t));
    /* é = C3 A9 is not a piece: two byte tokens */
    const char *text = "a\xC3\xA9 \xE2\x80\x9C" "a";
    const int32_t want[] = {261, 3 + 0xC3, 3 + 0xA9, 259, 262, 260};
    expect_ids(t, text, strlen(text), false, want, 6);
    /* decode: the space after BOS goes; byte tokens become bytes again */
    const int32_t with_bos[] = {1, 261, 3 + 0xC3, 3 + 0xA9, 259, 262, 260, 2};
    expect_decode(t, with_bos, 8, text, strlen(text));
    expect_decode(t, want, 6, " a\xC3\xA9 \xE2\x80\x9C" "a", strlen(text) + 1);
    /* a 4-byte character, a NUL and stray continuation bytes all survive as bytes */
    const char odd[] = "\xF0\x9F\x98\x80" "a\0\x80\x80";
    int32_t *ids;
    size_t n;
    qd_error e = {0};
    QD_CHECK_OK(qd_tokenizer_encode(t, odd, sizeof odd - 1, true, &ids, &n, &e), &e);
    char *s;
    size_t len;
    QD_CHECK_OK(qd_tokenizer_decode(t, ids, n, &s, &len, &e), &e);
    QD_CHECK(len == sizeof odd - 1 && memcmp(s, odd, len) == 0);
    free(s);
    free(ids);
    /* ids outside the vocabulary */
    qd_error e2 = {0};
    const int32_t bad[] = {260, 263};
    QD_CHECK_EQ_INT(qd_tokenizer_decode(t, bad, 2, &s, &len, &e2), QD_ERR_INVALID_ARG);
    QD_CHECK(strstr(e2.msg, "263") && strstr(e2.msg, "position 1"));
    qd_error e3 = {0};
    const int32_t neg[] = {-1};
    QD_CHECK_EQ_INT(qd_tokenizer_decode(t, neg, 1, &s, &len, &e3), QD_ERR_INVALID_ARG);
    qd_tokenizer_free(t);
    vocab_free(&v);
}

/* ---- against the plain transcription of llama2.c --------------------------------------- */

static uint32_t rng_state = 12345;
static uint32_t rng(void) {
    rng_state = rng_state * 1103515245u + 12345u;
    return rng_state >> 8;
}

static void compare_with_reference(const qd_tokenizer *t, const vocab *v, const char **alphabet,
                                   int n_alpha, int n_strings, int max_units) {
    char text[1024];
    int32_t ref[1100];
    int mismatches = 0;
    for (int s = 0; s < n_strings; s++) {
        size_t len = 0;
        int units = (int)(rng() % (uint32_t)max_units);
        for (int u = 0; u < units; u++) {
            const char *a = alphabet[rng() % (uint32_t)n_alpha];
            size_t al = strlen(a);
            if (len + al >= sizeof text) break;
            memcpy(text + len, a, al);
            len += al;
        }
        size_t nref = ref_encode(v, text, len, ref);
        int32_t *ids;
        size_t n;
        qd_error e = {0};
        if (qd_tokenizer_encode(t, text, len, false, &ids, &n, &e) != QD_OK) {
            mismatches++;
            continue;
        }
        if (n != nref || (n && memcmp(ids, ref, n * sizeof *ids) != 0)) {
            if (mismatches < 3) fprintf(stderr, "mismatch on \"%.*s\"\n", (int)len, text);
            mismatches++;
        }
        free(ids);
    }
    QD_CHECK_EQ_INT(mismatches, 0);
}

QD_TEST(matches_reference_on_stories260k) {
    vocab v;
    QD_REQUIRE(vocab_read(MODELS "/stories260k/tokenizer.bin", 512, &v) == 0);
    qd_tokenizer *t = load_model("stories260k", 512);
    QD_REQUIRE(t);
    static const char *alphabet[] = {"e", "t", "a", "o", "h", "n", " ", " ", "s", "i", "d",
                                     "l", "r", "the", " and", ".", ",", "_", "\xC3\xA9", "T",
                                     "\xE2\x80\x94", "!", "\"", "W", "ing", "q", "z"};
    compare_with_reference(t, &v, alphabet, (int)(sizeof alphabet / sizeof alphabet[0]), 300,
                           120);
    qd_tokenizer_free(t);
    vocab_free(&v);
}

QD_TEST(matches_reference_with_many_ties) {
    /* every 2- and 3-letter string over {a,b,c} is a piece, scores from {0,1,2}: ties everywhere
     * and merges that can go several ways */
    vocab v;
    vocab_start(&v, 1);
    vocab_add_s(&v, " ", 0);
    const char *abc = "abc";
    for (int i = 0; i < 3; i++) vocab_add(&v, abc + i, 1, 0);
    for (int len = 2; len <= 3; len++) {
        int count = len == 2 ? 9 : 27;
        for (int k = 0; k < count; k++) {
            char s[4];
            int x = k;
            for (int j = 0; j < len; j++, x /= 3) s[j] = abc[x % 3];
            vocab_add(&v, s, (size_t)len, (float)(rng() % 3));
        }
    }
    qd_tokenizer *t = vocab_tokenizer(&v);
    QD_REQUIRE(t);
    static const char *alphabet[] = {"a", "b", "c", "a", "b", "c", " ", "d"};
    compare_with_reference(t, &v, alphabet, 8, 500, 60);
    qd_tokenizer_free(t);
    vocab_free(&v);
}

/* ---- the bundled token sets ------------------------------------------------------------- */

static void roundtrip_dataset(const char *model, int vocab_size, const char *set) {
    char path[512];
    int rows, seq_len;
    snprintf(path, sizeof path, "%s/%s/%s.safetensors", DATA, model, set);
    int32_t *data = read_rows(path, &rows, &seq_len);
    QD_REQUIRE(data != NULL);
    qd_tokenizer *t = load_model(model, vocab_size);
    QD_REQUIRE(t);
    long long compared = 0, total = 0, word_rows = 0;
    int bad_rows = 0;
    for (int r = 0; r < rows; r++) {
        const int32_t *row = data + (size_t)r * (size_t)seq_len;
        total += seq_len - 1;
        QD_CHECK_EQ_INT(row[0], 1);
        int a = 1, b = seq_len - 1;
        while (a < seq_len && !space_led(t, row[a])) a++;
        while (b > a && !space_led(t, row[b])) b--;
        if (b <= a) continue;
        /* row[a..b): whole words; decode, drop the leading space, re-encode */
        char *text;
        size_t len;
        int32_t *ids;
        size_t n;
        qd_error e = {0};
        QD_CHECK_OK(qd_tokenizer_decode(t, row + a, (size_t)(b - a), &text, &len, &e), &e);
        QD_REQUIRE(e.code == QD_OK && len > 0 && text[0] == ' ');
        QD_CHECK_OK(qd_tokenizer_encode(t, text + 1, len - 1, false, &ids, &n, &e), &e);
        QD_REQUIRE(e.code == QD_OK);
        bool same = n == (size_t)(b - a) && memcmp(ids, row + a, n * sizeof *ids) == 0;
        if (!same && bad_rows++ < 2)
            fprintf(stderr, "%s %s row %d: re-encoding \"%.60s...\" gives other ids\n", model,
                    set, r, text);
        compared += b - a;
        free(ids);
        free(text);
        /* a row that starts at a word: the whole row up to b, BOS included */
        if (a == 1) {
            word_rows++;
            QD_CHECK_OK(qd_tokenizer_decode(t, row, (size_t)b, &text, &len, &e), &e);
            QD_REQUIRE(e.code == QD_OK);
            QD_CHECK(len > 0 && text[0] != ' '); /* the space after BOS was stripped */
            QD_CHECK_OK(qd_tokenizer_encode(t, text, len, true, &ids, &n, &e), &e);
            QD_CHECK_MSG(n == (size_t)b && memcmp(ids, row, n * sizeof *ids) == 0,
                         "%s %s row %d: BOS + dummy prefix re-encoding differs", model, set, r);
            free(ids);
            free(text);
        }
    }
    QD_CHECK_EQ_INT(bad_rows, 0);
    /* the comparison covered nearly everything (only the cut words at each end are skipped) */
    QD_CHECK_MSG(compared * 10 >= total * 9, "%s %s: compared only %lld of %lld tokens", model,
                 set, compared, total);
    QD_CHECK_MSG(word_rows > 0, "%s %s: no row starts at a word", model, set);
    qd_tokenizer_free(t);
    free(data);
}

QD_TEST(babyllama_token_sets_roundtrip) {
    roundtrip_dataset("babyllama", 105, "calib");
    roundtrip_dataset("babyllama", 105, "eval");
}

QD_TEST(stories260k_token_sets_roundtrip) {
    roundtrip_dataset("stories260k", 512, "calib");
    roundtrip_dataset("stories260k", 512, "eval");
}

QD_TEST(first_row_is_the_start_of_the_text) {
    /* calib row 0 opens Emma: "Emma Woodhouse, handsome, clever, and rich, ..." encoded on
     * its own (BOS, dummy prefix) must be exactly the row's first tokens */
    static const char *models[] = {"babyllama", "stories260k"};
    static const int vocab_sizes[] = {105, 512};
    const char *start = "Emma Woodhouse, handsome, clever, and rich, with a comfortable home";
    for (int m = 0; m < 2; m++) {
        char path[512];
        int rows, seq_len;
        snprintf(path, sizeof path, "%s/%s/calib.safetensors", DATA, models[m]);
        int32_t *data = read_rows(path, &rows, &seq_len);
        qd_tokenizer *t = load_model(models[m], vocab_sizes[m]);
        QD_REQUIRE(data && t);
        int32_t *ids;
        size_t n;
        qd_error e = {0};
        QD_CHECK_OK(qd_tokenizer_encode(t, start, strlen(start), true, &ids, &n, &e), &e);
        QD_CHECK(n > 10 && n < (size_t)seq_len);
        QD_CHECK(memcmp(ids, data, n * sizeof *ids) == 0);
        free(ids);
        qd_tokenizer_free(t);
        free(data);
    }
}

/* ---- text files and windows ------------------------------------------------------------- */

static void concat_encode(const qd_tokenizer *t, const char **paras, int n_paras, int32_t *out,
                          size_t *n) {
    *n = 0;
    for (int i = 0; i < n_paras; i++) {
        int32_t *ids;
        size_t k;
        qd_error e = {0};
        QD_CHECK_OK(qd_tokenizer_encode(t, paras[i], strlen(paras[i]), false, &ids, &k, &e), &e);
        memcpy(out + *n, ids, k * sizeof *ids);
        *n += k;
        free(ids);
    }
}

QD_TEST(text_paragraphs_are_normalised) {
    qd_tokenizer *t = load_model("stories260k", 512);
    QD_REQUIRE(t);
    const char *text = "\xEF\xBB\xBF  Emma   Woodhouse,\r\nhandsome,\tclever.\n \n\n"
                       "  \"Poor\xC2\xA0Miss Taylor!\" \r\n\t\n_Second_ line\n";
    const char *paras[] = {"Emma Woodhouse, handsome, clever.", "\"Poor Miss Taylor!\"",
                           "_Second_ line"};
    int32_t want[256];
    size_t n_want;
    concat_encode(t, paras, 3, want, &n_want);
    int32_t *ids;
    size_t n;
    qd_error e = {0};
    QD_CHECK_OK(qd_tokenizer_encode_text(t, text, strlen(text), &ids, &n, &e), &e);
    QD_CHECK(n == n_want && memcmp(ids, want, n * sizeof *ids) == 0);
    free(ids);
    /* nothing but whitespace: no ids */
    QD_CHECK_OK(qd_tokenizer_encode_text(t, " \n\n \t\r\n", 7, &ids, &n, &e), &e);
    QD_CHECK_EQ_INT(n, 0);
    free(ids);
    qd_tokenizer_free(t);
}

QD_TEST(windows_consecutive_and_evenly_spaced) {
    int32_t ids[40], out[3 * 5];
    for (int i = 0; i < 40; i++) ids[i] = 100 + i;
    qd_error e = {0};
    /* exactly rows * (seq_len - 1) tokens: consecutive windows */
    QD_CHECK_OK(qd_token_windows(ids, 12, 3, 5, 1, out, &e), &e);
    for (int r = 0; r < 3; r++) {
        QD_CHECK_EQ_INT(out[r * 5], 1);
        for (int j = 1; j < 5; j++) QD_CHECK_EQ_INT(out[r * 5 + j], 100 + 4 * r + j - 1);
    }
    /* 20 tokens: starts 0, 8, 16; the last window ends on the last token */
    QD_CHECK_OK(qd_token_windows(ids, 20, 3, 5, 1, out, &e), &e);
    QD_CHECK_EQ_INT(out[1], 100);
    QD_CHECK_EQ_INT(out[6], 108);
    QD_CHECK_EQ_INT(out[11], 116);
    QD_CHECK_EQ_INT(out[14], 119);
    /* 21 tokens: span 17 -> starts 0, 8, 17 */
    QD_CHECK_OK(qd_token_windows(ids, 21, 3, 5, 1, out, &e), &e);
    QD_CHECK_EQ_INT(out[6], 108);
    QD_CHECK_EQ_INT(out[11], 117);
    QD_CHECK_EQ_INT(out[14], 120);
    /* one row */
    QD_CHECK_OK(qd_token_windows(ids, 40, 1, 5, 7, out, &e), &e);
    QD_CHECK(out[0] == 7 && out[1] == 100 && out[4] == 103);
    /* too short: says how many rows it gives */
    qd_error e2 = {0};
    QD_CHECK_EQ_INT(qd_token_windows(ids, 11, 3, 5, 1, out, &e2), QD_ERR_INVALID_ARG);
    QD_CHECK(strstr(e2.msg, "enough for 2 rows") != NULL);
    qd_error e3 = {0};
    QD_CHECK_EQ_INT(qd_token_windows(ids, 40, 3, 1, 1, out, &e3), QD_ERR_INVALID_ARG);
    qd_error e4 = {0};
    QD_CHECK_EQ_INT(qd_token_windows(ids, 40, 0, 5, 1, out, &e4), QD_ERR_INVALID_ARG);
}

QD_TEST(long_text_is_fast_enough) {
    /* one 200 KB "word": an O(n^2) merge loop would take minutes here */
    qd_tokenizer *t = load_model("stories260k", 512);
    QD_REQUIRE(t);
    size_t len = 200000;
    char *text = malloc(len);
    const char *w = "thelittlegirlsawabigdog";
    for (size_t i = 0; i < len; i++) text[i] = w[i % strlen(w)];
    int32_t *ids;
    size_t n;
    qd_error e = {0};
    QD_CHECK_OK(qd_tokenizer_encode(t, text, len, false, &ids, &n, &e), &e);
    char *back;
    size_t blen;
    QD_CHECK_OK(qd_tokenizer_decode(t, ids, n, &back, &blen, &e), &e);
    QD_CHECK(blen == len + 1 && back[0] == ' ' && memcmp(back + 1, text, len) == 0);
    QD_CHECK_MSG(n < len * 3 / 4, "%zu ids for %zu bytes", n, len); /* it did merge */
    free(back);
    free(ids);
    free(text);
    qd_tokenizer_free(t);
}

/* ---- `quantd tokenize` end to end ------------------------------------------------------- */

/* The command lives in qd_daemon; this part is built when the test target links it and
 * defines QD_TEST_CMD_TOKENIZE. */
#ifdef QD_TEST_CMD_TOKENIZE
#include "commands.h"

static int run_cmd(const char **args, int n) {
    char *argv[16];
    for (int i = 0; i < n; i++) argv[i] = (char *)args[i];
    argv[n] = NULL;
    fflush(stdout);
    return qd_cmd_tokenize(n, argv);
}

QD_TEST(cmd_tokenize_end_to_end) {
    char dir[] = "/tmp/qd-tokcmd-XXXXXX", text[600], out[600];
    QD_REQUIRE(mkdtemp(dir) != NULL);
    snprintf(text, sizeof text, "%s/story.txt", dir);
    snprintf(out, sizeof out, "%s/ids.safetensors", dir);
    const char *story = "Once upon a time, there was a little girl named Lily.\n"
                        "She liked to play outside.\n\n"
                        "One day she saw a big dog in the park. The dog was happy.\n\n"
                        "\"Hello, dog!\" said Lily, and they played all day long.\n";
    qd_error e = {0};
    QD_CHECK_OK(qd_write_file_atomic(text, story, strlen(story), &e), &e);
    const char *model = MODELS "/stories260k";

    /* what the command must write: windows of the paragraph-wise encoding */
    qd_tokenizer *t = load_model("stories260k", 512);
    QD_REQUIRE(t);
    int32_t *ids, want[3 * 9];
    size_t n;
    QD_CHECK_OK(qd_tokenizer_encode_text(t, story, strlen(story), &ids, &n, &e), &e);
    QD_REQUIRE(n > 3 * 8);
    QD_CHECK_OK(qd_token_windows(ids, n, 3, 9, 1, want, &e), &e);

    const char *ok[] = {"tokenize", model, "--text", text, "--seq-len", "9", "--rows", "3",
                        "-o", out};
    QD_CHECK_EQ_INT(run_cmd(ok, 10), 0);
    int rows, seq_len;
    int32_t *got = read_rows(out, &rows, &seq_len);
    QD_REQUIRE(got != NULL);
    QD_CHECK_EQ_INT(rows, 3);
    QD_CHECK_EQ_INT(seq_len, 9);
    QD_CHECK(memcmp(got, want, sizeof want) == 0);
    free(got);

    /* too little text for the rows: fails, writes nothing */
    char out2[640];
    snprintf(out2, sizeof out2, "%s/none.safetensors", dir);
    char many[32];
    snprintf(many, sizeof many, "%zu", n / 8 + 1);
    const char *few[] = {"tokenize", model, "--text", text, "--seq-len", "9", "--rows", many,
                         "-o", out2};
    QD_CHECK_EQ_INT(run_cmd(few, 10), 1);
    QD_CHECK(!qd_is_file(out2));
    /* bad arguments */
    const char *bad_len[] = {"tokenize", model, "--text", text, "--seq-len", "9x", "--rows",
                             "1", "-o", out2};
    QD_CHECK_EQ_INT(run_cmd(bad_len, 10), 2);
    const char *no_out[] = {"tokenize", model, "--text", text, "--seq-len", "9", "--rows", "1"};
    QD_CHECK_EQ_INT(run_cmd(no_out, 8), 2);
    const char *too_long[] = {"tokenize", model, "--text", text, "--seq-len", "513", "--rows",
                              "1", "-o", out2};
    QD_CHECK_EQ_INT(run_cmd(too_long, 10), 1); /* stories260k has 512 positions */
    /* a model directory without tokenizer.bin */
    char cfg[640];
    snprintf(cfg, sizeof cfg, "%s/config.json", dir);
    QD_CHECK_OK(qd_copy_file(MODELS "/stories260k/config.json", cfg, &e), &e);
    const char *no_tok[] = {"tokenize", dir, "--text", text, "--seq-len", "9", "--rows", "1",
                            "-o", out2};
    QD_CHECK_EQ_INT(run_cmd(no_tok, 10), 1);
    QD_CHECK(!qd_is_file(out2));

    free(ids);
    qd_tokenizer_free(t);
    qd_remove_tree(dir, NULL);
}
#endif /* QD_TEST_CMD_TOKENIZE */

/* ---- token sets ---------------------------------------------------------------------------- */

/* Write one tensor to a temporary safetensors file; path receives its name. */
static bool write_set(char *path, size_t cap, const char *name, qd_dtype dt, int ndim,
                      const int64_t *shape, const void *data) {
    snprintf(path, cap, "/tmp/qd-token-set-%ld.safetensors", (long)getpid());
    qd_error err = {0};
    qd_st_writer *w = qd_st_writer_new();
    bool ok = w && qd_st_writer_add(w, name, dt, ndim, shape, data, &err) == QD_OK &&
              qd_st_write_file(w, path, &err) == QD_OK;
    qd_st_writer_free(w);
    return ok;
}

QD_TEST(token_set_load_cuts_converts_and_refuses) {
    char path[128];
    qd_error err = {0};
    int32_t *t = NULL;
    int64_t rows = 0, len = 0;
    /* I64 [3, 4], cut to 2 rows of 3: values from the right places, converted. */
    int64_t v[12] = {0, 1, 2, 3, 10, 11, 12, 13, 20, 21, 22, 23};
    int64_t shape[2] = {3, 4};
    QD_REQUIRE(write_set(path, sizeof path, "input_ids", QD_DTYPE_I64, 2, shape, v));
    QD_CHECK_OK(qd_token_set_load(path, 2, 3, &t, &rows, &len, &err), &err);
    QD_CHECK_EQ_INT(rows, 2);
    QD_CHECK_EQ_INT(len, 3);
    if (t) {
        QD_CHECK_EQ_INT(t[2], 2);
        QD_CHECK_EQ_INT(t[3], 10);
        QD_CHECK_EQ_INT(t[5], 12);
    }
    free(t);
    t = NULL;
    /* <= 0 keeps everything */
    QD_CHECK_OK(qd_token_set_load(path, 0, 0, &t, &rows, &len, &err), &err);
    QD_CHECK(rows == 3 && len == 4 && t && t[11] == 23);
    free(t);
    t = NULL;
    /* an id outside int32: refused, naming row and column */
    v[6] = (int64_t)1 << 40;
    QD_REQUIRE(write_set(path, sizeof path, "input_ids", QD_DTYPE_I64, 2, shape, v));
    QD_CHECK_EQ_INT(qd_token_set_load(path, 0, 0, &t, &rows, &len, &err), QD_ERR_FORMAT);
    QD_CHECK_MSG(strstr(err.msg, "input_ids[1][2]"), "message: %s", err.msg);
    qd_error_clear(&err);
    /* wrong name, wrong dtype, wrong rank */
    QD_REQUIRE(write_set(path, sizeof path, "ids", QD_DTYPE_I64, 2, shape, v));
    QD_CHECK_EQ_INT(qd_token_set_load(path, 0, 0, &t, &rows, &len, &err), QD_ERR_FORMAT);
    QD_CHECK_MSG(strstr(err.msg, "no tensor 'input_ids'"), "message: %s", err.msg);
    qd_error_clear(&err);
    float f[12] = {0};
    QD_REQUIRE(write_set(path, sizeof path, "input_ids", QD_DTYPE_F32, 2, shape, f));
    QD_CHECK_EQ_INT(qd_token_set_load(path, 0, 0, &t, &rows, &len, &err), QD_ERR_FORMAT);
    QD_CHECK_MSG(strstr(err.msg, "found F32") || strstr(err.msg, "found f32"), "message: %s",
                 err.msg);
    qd_error_clear(&err);
    int64_t flat[1] = {12};
    QD_REQUIRE(write_set(path, sizeof path, "input_ids", QD_DTYPE_I64, 1, flat, v));
    QD_CHECK_EQ_INT(qd_token_set_load(path, 0, 0, &t, &rows, &len, &err), QD_ERR_FORMAT);
    qd_error_clear(&err);
    QD_CHECK(t == NULL);
    unlink(path);
    /* a file that is not there */
    QD_CHECK(qd_token_set_load(path, 0, 0, &t, &rows, &len, &err) != QD_OK);
    QD_CHECK_MSG(strstr(err.msg, path), "message: %s", err.msg);
}

QD_TEST_MAIN()
