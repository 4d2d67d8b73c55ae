/*
 * gen-rpc-corpus.c - writes the seed corpora of the RPC fuzz targets (tests/fuzz/fuzz-rpc.c):
 * for every RPC a directory rpc-<name>/ of requests packed with the generated protobuf-c
 * code, valid ones (each field and oneof case the handler reads) and malformed ones (cut
 * short, wrong wire types, lengths past the end, overlong varints, unknown fields, unknown
 * enum values, control characters and over-long strings).
 *
 *     gen-rpc-corpus OUT_DIR      (OUT_DIR is tests/corpus; files are replaced, none removed)
 *
 * PutModel is client streaming: its inputs are message sequences, each message framed by a
 * 2-byte little-endian length (what fuzz-rpc.c splits them by). Past finds (crash-*) are not
 * written here: they are kept in the corpus directories by hand.
 *
 * The output is deterministic, so running it again and diffing shows what a change of the
 * proto or of this file did to the corpus.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "error.h"
#include "fsutil.h"
#include "health.pb-c.h"
#include "quantd.pb-c.h"

#define BUF_MAX 8192

static const char *out_root;
static int n_written;
static int failed;

/* A digest-shaped string: 64 lowercase hex digits. */
#define HEX64 "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
/* A job or artifact id shape: 32 lowercase hex digits. */
#define ID32 "00112233445566778899aabbccddeeff"
/* Text with control characters and an escape sequence: must come back quoted. */
#define CTRL_TEXT "a\nb\rc\033[31md\001e\177"

/* ---- output ---------------------------------------------------------------------------------- */

static void emit(const char *rpc, const char *name, const uint8_t *data, size_t len) {
    char dir[4096], path[4096];
    qd_error err = {0};
    int n = snprintf(dir, sizeof dir, "%s/rpc-%s", out_root, rpc);
    if (n < 0 || (size_t)n >= sizeof dir || qd_mkdir_p(dir, 0755, &err) != QD_OK ||
        qd_path_join(path, sizeof path, dir, name, &err) != QD_OK ||
        qd_write_file_atomic(path, data, len, &err) != QD_OK) {
        fprintf(stderr, "gen-rpc-corpus: %s/%s: %s\n", rpc, name, qd_error_text(&err));
        failed = 1;
        return;
    }
    n_written++;
}

/* m packed into buf (BUF_MAX); its length. */
static size_t pack(const ProtobufCMessage *m, uint8_t *buf) {
    size_t n = protobuf_c_message_get_packed_size(m);
    if (n > BUF_MAX) {
        fprintf(stderr, "gen-rpc-corpus: a %s of %zu bytes is too large\n", m->descriptor->name,
                n);
        failed = 1;
        return 0;
    }
    return protobuf_c_message_pack(m, buf);
}

/* m as <name>, and as <name>-cut (its last byte gone: a field cut short) and
 * <name>-unknown-field (a field number the proto does not have, which must be skipped). */
static void emit_msg(const char *rpc, const char *name, const ProtobufCMessage *m) {
    uint8_t buf[BUF_MAX + 16];
    char nm[256];
    size_t n = pack(m, buf);
    emit(rpc, name, buf, n);
    if (n > 1) {
        snprintf(nm, sizeof nm, "%s-cut", name);
        emit(rpc, nm, buf, n - 1);
    }
    /* field 1000, wire type 2 (length-delimited): tag varint (1000 << 3 | 2) = 0xc2 0x3e */
    static const uint8_t unknown[] = {0xc2, 0x3e, 0x03, 'x', 'y', 'z'};
    memcpy(buf + n, unknown, sizeof unknown);
    snprintf(nm, sizeof nm, "%s-unknown-field", name);
    emit(rpc, nm, buf, n + sizeof unknown);
}

/* Byte strings that do not decode as any message with a string or message field 1, or that
 * stress the decoder's bounds. */
static void emit_malformed(const char *rpc) {
    static const struct {
        const char *name;
        uint8_t data[24];
        size_t len;
    } bad[] = {
        /* field 1 as a varint where it is a string or message (wrong wire type) */
        {"bad-wire-type-varint", {0x08, 0x01}, 2},
        /* field 1 as a fixed64 */
        {"bad-wire-type-fixed64", {0x09, 1, 2, 3, 4, 5, 6, 7, 8}, 9},
        /* field 1 length 2^32 - 1 with three bytes behind it */
        {"bad-huge-length", {0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 'a', 'b', 'c'}, 9},
        /* field 1 length 100 with two bytes behind it */
        {"bad-length-past-end", {0x0a, 0x64, 'a', 'b'}, 4},
        /* a varint of eleven bytes (ten at most are allowed) */
        {"bad-overlong-varint",
         {0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, 12},
        /* a tag that ends in the middle of its varint */
        {"bad-cut-tag", {0x80}, 1},
        /* field number 0 */
        {"bad-field-zero", {0x02, 0x00}, 2},
        /* the deprecated group wire types */
        {"bad-start-group", {0x0b, 0x0c}, 2},
        {"bad-end-group", {0x0c}, 1},
        /* wire types 6 and 7 do not exist */
        {"bad-wire-type-6", {0x0e, 0x00}, 2},
        {"bad-wire-type-7", {0x0f, 0x00}, 2},
        /* fixed32 cut short */
        {"bad-cut-fixed32", {0x0d, 0x01, 0x02}, 3},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        emit(rpc, bad[i].name, bad[i].data, bad[i].len);
    emit(rpc, "empty", (const uint8_t *)"", 0);
}

/* ---- client streams (PutModel) --------------------------------------------------------------- */

struct stream {
    uint8_t data[BUF_MAX];
    size_t len;
};

static void stream_add_bytes(struct stream *s, const uint8_t *p, size_t n) {
    if (n > 0xffff || s->len + 2 + n > sizeof s->data) {
        fprintf(stderr, "gen-rpc-corpus: a stream outgrew its buffer\n");
        failed = 1;
        return;
    }
    s->data[s->len++] = (uint8_t)(n & 0xff);
    s->data[s->len++] = (uint8_t)(n >> 8);
    memcpy(s->data + s->len, p, n);
    s->len += n;
}

static void stream_add(struct stream *s, const ProtobufCMessage *m) {
    uint8_t buf[BUF_MAX];
    size_t n = pack(m, buf);
    stream_add_bytes(s, buf, n);
}

static void sha256_hex(const void *data, size_t len, char out[65]) {
    unsigned char d[32];
    unsigned int dl = 0;
    if (EVP_Digest(data, len, d, &dl, EVP_sha256(), NULL) != 1 || dl != sizeof d) {
        fprintf(stderr, "gen-rpc-corpus: sha256 failed\n");
        failed = 1;
        memset(d, 0, sizeof d);
    }
    for (size_t i = 0; i < sizeof d; i++) snprintf(out + 2 * i, 3, "%02x", d[i]);
}

/* A PutModel header of n files (names, sizes, sha256s) of the given kind. */
struct header {
    Quantd__V1__FileEntry files[4];
    Quantd__V1__FileEntry *pfiles[4];
    Quantd__V1__Manifest manifest;
    Quantd__V1__PutModelHeader header;
    Quantd__V1__PutModelRequest req;
};

static void header_init(struct header *h, Quantd__V1__BundleKind kind, size_t n,
                        const char *const *names, const uint64_t *sizes,
                        char *const *sha256s) {
    quantd__v1__manifest__init(&h->manifest);
    quantd__v1__put_model_header__init(&h->header);
    quantd__v1__put_model_request__init(&h->req);
    for (size_t i = 0; i < n && i < 4; i++) {
        quantd__v1__file_entry__init(&h->files[i]);
        h->files[i].name = (char *)names[i];
        h->files[i].size = sizes[i];
        h->files[i].sha256 = sha256s[i];
        h->pfiles[i] = &h->files[i];
    }
    h->manifest.n_files = n;
    h->manifest.files = n ? h->pfiles : NULL;
    h->header.manifest = &h->manifest;
    h->header.kind = kind;
    h->req.msg_case = QUANTD__V1__PUT_MODEL_REQUEST__MSG_HEADER;
    h->req.header = &h->header;
}

/* A chunk message by index (name NULL) or by name. */
static void stream_chunk(struct stream *s, int index, const char *name, uint64_t offset,
                         const void *data, size_t len) {
    Quantd__V1__Chunk c = QUANTD__V1__CHUNK__INIT;
    if (name) {
        c.file_case = QUANTD__V1__CHUNK__FILE_NAME;
        c.name = (char *)name;
    } else if (index >= 0) {
        c.file_case = QUANTD__V1__CHUNK__FILE_INDEX;
        c.index = (uint32_t)index;
    }
    c.offset = offset;
    c.data.data = (uint8_t *)data;
    c.data.len = len;
    Quantd__V1__PutModelRequest r = QUANTD__V1__PUT_MODEL_REQUEST__INIT;
    r.msg_case = QUANTD__V1__PUT_MODEL_REQUEST__MSG_CHUNK;
    r.chunk = &c;
    stream_add(s, &r.base);
}

static void gen_put_model(void) {
    const char *rpc = "put-model";
    static const char hello[] = "{\"model_type\": \"llama\"}";
    static const char world[] = "world";
    char sha_hello[65], sha_world[65], bad_sha[65];
    sha256_hex(hello, strlen(hello), sha_hello);
    sha256_hex(world, strlen(world), sha_world);
    memcpy(bad_sha, HEX64, sizeof bad_sha);
    uint64_t hl = strlen(hello), wl = strlen(world);

    const char *one_name[] = {"config.json"};
    uint64_t one_size[] = {hl};
    char *one_sha[] = {sha_hello};
    const char *two_names[] = {"config.json", "model.safetensors"};
    uint64_t two_sizes[] = {hl, wl};
    char *two_shas[] = {sha_hello, sha_world};
    struct header h;
    struct stream s;

    /* header alone: registers the bundle, nothing held */
    header_init(&h, QUANTD__V1__BUNDLE_KIND__BUNDLE_KIND_MODEL, 1, one_name, one_size, one_sha);
    memset(&s, 0, sizeof s);
    stream_add(&s, &h.req.base);
    emit(rpc, "header-only", s.data, s.len);

    /* a whole upload, chunk by index: completes the bundle */
    stream_chunk(&s, 0, NULL, 0, hello, hl);
    emit(rpc, "upload-by-index", s.data, s.len);

    /* the same by name, in two chunks */
    memset(&s, 0, sizeof s);
    stream_add(&s, &h.req.base);
    stream_chunk(&s, -1, "config.json", 0, hello, 10);
    stream_chunk(&s, -1, "config.json", 10, hello + 10, hl - 10);
    emit(rpc, "upload-by-name-two-chunks", s.data, s.len);

    /* two files, a calibration bundle, with the expected digest given (wrong on purpose: the
     * manifest digest rule lives in the store) */
    header_init(&h, QUANTD__V1__BUNDLE_KIND__BUNDLE_KIND_CALIBRATION, 2, two_names, two_sizes,
                two_shas);
    h.header.expected_digest = (char *)HEX64;
    memset(&s, 0, sizeof s);
    stream_add(&s, &h.req.base);
    stream_chunk(&s, 1, NULL, 0, world, wl);
    stream_chunk(&s, 0, NULL, 0, hello, hl);
    emit(rpc, "calibration-two-files-expected-digest", s.data, s.len);
    h.header.expected_digest = (char *)"";
    memset(&s, 0, sizeof s);
    stream_add(&s, &h.req.base);
    stream_chunk(&s, 1, NULL, 0, world, wl);
    emit(rpc, "calibration-two-files-one-sent", s.data, s.len);

    /* chunks the handler must refuse, each after a good header */
    header_init(&h, QUANTD__V1__BUNDLE_KIND__BUNDLE_KIND_MODEL, 1, one_name, one_size, one_sha);
    struct {
        const char *name;
        int index;
        const char *fname;
        uint64_t offset;
        const char *data;
        size_t len;
    } chunks[] = {
        {"chunk-index-out-of-range", 7, NULL, 0, "x", 1},
        {"chunk-name-unknown", -1, "other.json", 0, "x", 1},
        {"chunk-name-control-chars", -1, CTRL_TEXT, 0, "x", 1},
        {"chunk-no-file", -1, NULL, 0, "x", 1},
        {"chunk-empty-data", 0, NULL, 0, "", 0},
        {"chunk-offset-past-size", 0, NULL, 1000, "x", 1},
        {"chunk-offset-huge", 0, NULL, UINT64_MAX, "x", 1},
        {"chunk-data-past-size", 0, NULL, 20, "0123456789", 10},
        {"chunk-gap", 0, NULL, 5, "x", 1},
        {"chunk-wrong-content", 0, NULL, 0, "{\"model_type\": \"LLAMA\"}", 23},
    };
    for (size_t i = 0; i < sizeof chunks / sizeof chunks[0]; i++) {
        memset(&s, 0, sizeof s);
        stream_add(&s, &h.req.base);
        stream_chunk(&s, chunks[i].index, chunks[i].fname, chunks[i].offset, chunks[i].data,
                     chunks[i].len);
        emit(rpc, chunks[i].name, s.data, s.len);
    }

    /* out of order: a chunk first, a second header, neither case set */
    memset(&s, 0, sizeof s);
    stream_chunk(&s, 0, NULL, 0, hello, hl);
    emit(rpc, "chunk-before-header", s.data, s.len);
    memset(&s, 0, sizeof s);
    stream_add(&s, &h.req.base);
    stream_add(&s, &h.req.base);
    emit(rpc, "two-headers", s.data, s.len);
    memset(&s, 0, sizeof s);
    stream_add_bytes(&s, (const uint8_t *)"", 0);
    emit(rpc, "empty-message", s.data, s.len);

    /* headers the handler or the service must refuse */
    struct {
        const char *name;
        int kind;
        const char *fname;
        uint64_t size;
        const char *sha;
    } heads[] = {
        {"header-kind-unspecified", 0, "config.json", 5, sha_hello},
        {"header-kind-unknown", 99, "config.json", 5, sha_hello},
        {"header-kind-negative", -1, "config.json", 5, sha_hello},
        {"header-sha-uppercase", 1, "config.json", 5,
         "0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF"},
        {"header-sha-short", 1, "config.json", 5, "abc"},
        {"header-sha-control-chars", 1, "config.json", 5, CTRL_TEXT},
        {"header-name-dotdot", 1, "../etc/passwd", 5, bad_sha},
        {"header-name-absolute", 1, "/etc/passwd", 5, bad_sha},
        {"header-name-empty", 1, "", 5, bad_sha},
        {"header-name-control-chars", 1, CTRL_TEXT, 5, bad_sha},
        {"header-size-huge", 1, "model.safetensors", UINT64_MAX, bad_sha},
        {"header-size-zero", 1, "empty.txt", 0,
         "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
    };
    for (size_t i = 0; i < sizeof heads / sizeof heads[0]; i++) {
        const char *nm[] = {heads[i].fname};
        uint64_t sz[] = {heads[i].size};
        char *sh[] = {(char *)heads[i].sha};
        header_init(&h, (Quantd__V1__BundleKind)heads[i].kind, 1, nm, sz, sh);
        memset(&s, 0, sizeof s);
        stream_add(&s, &h.req.base);
        emit(rpc, heads[i].name, s.data, s.len);
    }
    /* a manifest with no files, one with a name twice, one out of order */
    header_init(&h, QUANTD__V1__BUNDLE_KIND__BUNDLE_KIND_MODEL, 0, NULL, NULL, NULL);
    memset(&s, 0, sizeof s);
    stream_add(&s, &h.req.base);
    emit(rpc, "header-no-files", s.data, s.len);
    const char *dup_names[] = {"config.json", "config.json"};
    header_init(&h, QUANTD__V1__BUNDLE_KIND__BUNDLE_KIND_MODEL, 2, dup_names, two_sizes,
                two_shas);
    memset(&s, 0, sizeof s);
    stream_add(&s, &h.req.base);
    emit(rpc, "header-name-twice", s.data, s.len);
    const char *unsorted[] = {"model.safetensors", "config.json"};
    header_init(&h, QUANTD__V1__BUNDLE_KIND__BUNDLE_KIND_MODEL, 2, unsorted, two_sizes,
                two_shas);
    memset(&s, 0, sizeof s);
    stream_add(&s, &h.req.base);
    emit(rpc, "header-unsorted", s.data, s.len);
    header_init(&h, QUANTD__V1__BUNDLE_KIND__BUNDLE_KIND_MODEL, 1, one_name, one_size, one_sha);
    h.header.manifest = NULL;
    memset(&s, 0, sizeof s);
    stream_add(&s, &h.req.base);
    emit(rpc, "header-no-manifest", s.data, s.len);

    /* framing and decoding: a header cut short, a malformed message after a good header, a
     * length prefix past the end, a lone byte */
    header_init(&h, QUANTD__V1__BUNDLE_KIND__BUNDLE_KIND_MODEL, 1, one_name, one_size, one_sha);
    uint8_t buf[BUF_MAX];
    size_t n = pack(&h.req.base, buf);
    memset(&s, 0, sizeof s);
    stream_add_bytes(&s, buf, n - 3);
    emit(rpc, "header-cut", s.data, s.len);
    memset(&s, 0, sizeof s);
    stream_add(&s, &h.req.base);
    static const uint8_t huge[] = {0x12, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01};
    stream_add_bytes(&s, huge, sizeof huge);
    emit(rpc, "chunk-huge-length", s.data, s.len);
    memset(&s, 0, sizeof s);
    stream_add(&s, &h.req.base);
    static const uint8_t wire[] = {0x10, 0x05};
    stream_add_bytes(&s, wire, sizeof wire);
    emit(rpc, "chunk-wrong-wire-type", s.data, s.len);
    static const uint8_t past[] = {0xff, 0x00, 0x0a, 0x02};
    emit(rpc, "frame-past-end", past, sizeof past);
    emit(rpc, "lone-byte", (const uint8_t *)"\x0a", 1);
    emit(rpc, "empty", (const uint8_t *)"", 0);
}

/* ---- unary and server-streaming requests ----------------------------------------------------- */

static void gen_stat_model(void) {
    const char *rpc = "stat-model";
    Quantd__V1__StatModelRequest r = QUANTD__V1__STAT_MODEL_REQUEST__INIT;
    r.key_case = QUANTD__V1__STAT_MODEL_REQUEST__KEY_DIGEST;
    r.digest = (char *)HEX64;
    emit_msg(rpc, "digest", &r.base);
    r.digest = (char *)"0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF";
    emit_msg(rpc, "digest-uppercase", &r.base);
    r.digest = (char *)"abc";
    emit_msg(rpc, "digest-short", &r.base);
    r.digest = (char *)CTRL_TEXT;
    emit_msg(rpc, "digest-control-chars", &r.base);
    r.digest = (char *)"";
    emit_msg(rpc, "digest-empty", &r.base);

    Quantd__V1__FileEntry f[2];
    Quantd__V1__FileEntry *pf[2] = {&f[0], &f[1]};
    quantd__v1__file_entry__init(&f[0]);
    quantd__v1__file_entry__init(&f[1]);
    f[0].name = (char *)"config.json";
    f[0].size = 100;
    f[0].sha256 = (char *)HEX64;
    f[1].name = (char *)"model.safetensors";
    f[1].size = 1 << 20;
    f[1].sha256 = (char *)HEX64;
    Quantd__V1__Manifest m = QUANTD__V1__MANIFEST__INIT;
    m.n_files = 2;
    m.files = pf;
    r.key_case = QUANTD__V1__STAT_MODEL_REQUEST__KEY_MANIFEST;
    r.manifest = &m;
    emit_msg(rpc, "manifest", &r.base);
    f[1].name = (char *)"config.json";
    emit_msg(rpc, "manifest-name-twice", &r.base);
    f[1].name = (char *)"../x";
    emit_msg(rpc, "manifest-name-dotdot", &r.base);
    f[1].name = (char *)"model.safetensors";
    f[1].sha256 = (char *)"not-a-digest";
    emit_msg(rpc, "manifest-bad-sha", &r.base);
    m.n_files = 0;
    m.files = NULL;
    emit_msg(rpc, "manifest-empty", &r.base);
    r.key_case = QUANTD__V1__STAT_MODEL_REQUEST__KEY__NOT_SET;
    emit_msg(rpc, "no-key", &r.base);
    emit_malformed(rpc);
}

/* One QuantSpec of each method, and the broken ones. */
static void gen_quantize(void) {
    const char *rpc = "quantize";
    Quantd__V1__QuantSpec spec = QUANTD__V1__QUANT_SPEC__INIT;
    Quantd__V1__QuantizeRequest r = QUANTD__V1__QUANTIZE_REQUEST__INIT;
    r.model_case = QUANTD__V1__QUANTIZE_REQUEST__MODEL_MODEL_DIGEST;
    r.model_digest = (char *)HEX64;
    r.spec = &spec;

    spec.method = QUANTD__V1__METHOD__METHOD_RTN;
    spec.format = QUANTD__V1__FORMAT__FORMAT_DASHINFER;
    spec.bits = 8;
    emit_msg(rpc, "rtn-dashinfer", &r.base);
    spec.format = QUANTD__V1__FORMAT__FORMAT_GPTQ;
    spec.bits = 4;
    spec.group_size = 128;
    spec.symmetric_opt_case = QUANTD__V1__QUANT_SPEC__SYMMETRIC_OPT_SYMMETRIC;
    spec.symmetric = 1;
    r.label = (char *)"nightly";
    emit_msg(rpc, "rtn-gptq-label", &r.base);
    r.label = (char *)"";
    spec.symmetric_opt_case = QUANTD__V1__QUANT_SPEC__SYMMETRIC_OPT__NOT_SET;

    Quantd__V1__AwqParams awq = QUANTD__V1__AWQ_PARAMS__INIT;
    Quantd__V1__CalibrationSpec cal = QUANTD__V1__CALIBRATION_SPEC__INIT;
    spec.method = QUANTD__V1__METHOD__METHOD_AWQ;
    spec.format = QUANTD__V1__FORMAT__FORMAT_AWQ;
    spec.params_case = QUANTD__V1__QUANT_SPEC__PARAMS_AWQ;
    spec.awq = &awq;
    awq.n_grid = 20;
    awq.duo_scaling_opt_case = QUANTD__V1__AWQ_PARAMS__DUO_SCALING_OPT_DUO_SCALING;
    awq.duo_scaling = 1;
    awq.apply_clip_opt_case = QUANTD__V1__AWQ_PARAMS__APPLY_CLIP_OPT_APPLY_CLIP;
    awq.max_shrink = 0.5;
    awq.clip_n_grid = 20;
    awq.n_sample_tokens = 64;
    spec.calibration = &cal;
    cal.digest = (char *)HEX64;
    cal.rows = 8;
    cal.seq_len = 32;
    emit_msg(rpc, "awq-calibration", &r.base);
    cal.digest = (char *)"";
    emit_msg(rpc, "awq-default-calibration", &r.base);
    cal.digest = (char *)"xyz";
    emit_msg(rpc, "awq-calibration-bad-digest", &r.base);
    cal.digest = (char *)HEX64;
    awq.max_shrink = NAN;
    emit_msg(rpc, "awq-max-shrink-nan", &r.base);
    awq.max_shrink = INFINITY;
    emit_msg(rpc, "awq-max-shrink-inf", &r.base);
    awq.max_shrink = 0.5;
    spec.method = QUANTD__V1__METHOD__METHOD_W4A8_AWQ;
    spec.format = QUANTD__V1__FORMAT__FORMAT_MODELOPT;
    emit_msg(rpc, "w4a8-awq-modelopt", &r.base);

    Quantd__V1__GptqParams gptq = QUANTD__V1__GPTQ_PARAMS__INIT;
    spec.method = QUANTD__V1__METHOD__METHOD_GPTQ;
    spec.format = QUANTD__V1__FORMAT__FORMAT_GPTQ;
    spec.params_case = QUANTD__V1__QUANT_SPEC__PARAMS_GPTQ;
    spec.gptq = &gptq;
    gptq.damp_percent = 0.01;
    gptq.act_order = 1;
    gptq.static_groups = 1;
    gptq.true_sequential_opt_case = QUANTD__V1__GPTQ_PARAMS__TRUE_SEQUENTIAL_OPT_TRUE_SEQUENTIAL;
    gptq.true_sequential = 1;
    gptq.block_size = 128;
    gptq.mse = 1;
    char *skip[] = {(char *)"lm_head", (char *)"model.layers.0.mlp.down_proj"};
    spec.modules_to_not_convert = skip;
    spec.n_modules_to_not_convert = 2;
    emit_msg(rpc, "gptq-act-order-skip-modules", &r.base);
    gptq.damp_percent = -INFINITY;
    emit_msg(rpc, "gptq-damp-inf", &r.base);
    gptq.damp_percent = 0.01;
    spec.n_modules_to_not_convert = 0;
    spec.modules_to_not_convert = NULL;
    spec.method = QUANTD__V1__METHOD__METHOD_AWQ;
    emit_msg(rpc, "gptq-params-on-awq", &r.base);

    Quantd__V1__SmoothQuantParams sq = QUANTD__V1__SMOOTH_QUANT_PARAMS__INIT;
    spec.method = QUANTD__V1__METHOD__METHOD_SMOOTHQUANT;
    spec.format = QUANTD__V1__FORMAT__FORMAT_COMPRESSED_TENSORS;
    spec.bits = 8;
    spec.group_size = -1;
    spec.params_case = QUANTD__V1__QUANT_SPEC__PARAMS_SMOOTHQUANT;
    spec.smoothquant = &sq;
    sq.alpha_opt_case = QUANTD__V1__SMOOTH_QUANT_PARAMS__ALPHA_OPT_ALPHA;
    sq.alpha = 0.5;
    emit_msg(rpc, "smoothquant-alpha", &r.base);
    sq.alpha = NAN;
    emit_msg(rpc, "smoothquant-alpha-nan", &r.base);

    Quantd__V1__Fp8Params fp8 = QUANTD__V1__FP8_PARAMS__INIT;
    spec.method = QUANTD__V1__METHOD__METHOD_FP8;
    spec.format = QUANTD__V1__FORMAT__FORMAT_COMPRESSED_TENSORS;
    spec.group_size = 0;
    spec.params_case = QUANTD__V1__QUANT_SPEC__PARAMS_FP8;
    spec.fp8 = &fp8;
    fp8.weight_scale = QUANTD__V1__FP8_SCALE_GRANULARITY__FP8_SCALE_GRANULARITY_PER_CHANNEL;
    fp8.activation_scheme = QUANTD__V1__FP8_ACTIVATION_SCHEME__FP8_ACTIVATION_SCHEME_DYNAMIC;
    spec.calibration = NULL;
    emit_msg(rpc, "fp8-dynamic", &r.base);
    spec.calibration = &cal;
    emit_msg(rpc, "fp8-dynamic-with-calibration", &r.base);
    fp8.activation_scheme = QUANTD__V1__FP8_ACTIVATION_SCHEME__FP8_ACTIVATION_SCHEME_STATIC;
    emit_msg(rpc, "fp8-static", &r.base);
    fp8.weight_scale = (Quantd__V1__Fp8ScaleGranularity)7;
    emit_msg(rpc, "fp8-weight-scale-unknown", &r.base);
    fp8.weight_scale = QUANTD__V1__FP8_SCALE_GRANULARITY__FP8_SCALE_GRANULARITY_PER_TENSOR;
    fp8.activation_scheme = (Quantd__V1__Fp8ActivationScheme)-3;
    emit_msg(rpc, "fp8-activation-negative", &r.base);
    fp8.activation_scheme = QUANTD__V1__FP8_ACTIVATION_SCHEME__FP8_ACTIVATION_SCHEME_DYNAMIC;
    spec.method = QUANTD__V1__METHOD__METHOD_W4A8_AWQ;
    emit_msg(rpc, "fp8-params-on-w4a8", &r.base);

    /* the required enums and the model */
    spec.calibration = NULL;
    spec.params_case = QUANTD__V1__QUANT_SPEC__PARAMS__NOT_SET;
    spec.method = QUANTD__V1__METHOD__METHOD_UNSPECIFIED;
    spec.format = QUANTD__V1__FORMAT__FORMAT_AWQ;
    emit_msg(rpc, "method-unspecified", &r.base);
    spec.method = (Quantd__V1__Method)99;
    emit_msg(rpc, "method-unknown", &r.base);
    spec.method = QUANTD__V1__METHOD__METHOD_RTN;
    spec.format = QUANTD__V1__FORMAT__FORMAT_UNSPECIFIED;
    emit_msg(rpc, "format-unspecified", &r.base);
    spec.format = (Quantd__V1__Format)-1;
    emit_msg(rpc, "format-negative", &r.base);
    spec.format = QUANTD__V1__FORMAT__FORMAT_AWQ;
    spec.bits = 99;
    spec.group_size = -7;
    emit_msg(rpc, "bits-and-group-size-odd", &r.base);
    spec.bits = 4;
    spec.group_size = 128;
    r.spec = NULL;
    emit_msg(rpc, "no-spec", &r.base);
    r.spec = &spec;
    r.model_case = QUANTD__V1__QUANTIZE_REQUEST__MODEL_MODEL_PATH;
    r.model_path = (char *)"/srv/models/llama";
    emit_msg(rpc, "model-path", &r.base);
    r.model_path = (char *)"";
    emit_msg(rpc, "model-path-empty", &r.base);
    r.model_path = (char *)"relative/../../etc";
    emit_msg(rpc, "model-path-relative", &r.base);
    r.model_case = QUANTD__V1__QUANTIZE_REQUEST__MODEL_MODEL_DIGEST;
    r.model_digest = (char *)CTRL_TEXT;
    emit_msg(rpc, "model-digest-control-chars", &r.base);
    r.model_case = QUANTD__V1__QUANTIZE_REQUEST__MODEL__NOT_SET;
    emit_msg(rpc, "no-model", &r.base);
    r.model_case = QUANTD__V1__QUANTIZE_REQUEST__MODEL_MODEL_DIGEST;
    r.model_digest = (char *)HEX64;
    char label[301];
    memset(label, 'l', 300);
    label[300] = '\0';
    r.label = label;
    emit_msg(rpc, "label-too-long", &r.base);
    emit_malformed(rpc);
}

/* Requests whose only field that matters is one id (GetJob, CancelJob, DeleteArtifact...). */
static void gen_id_request(const char *rpc, const ProtobufCMessageDescriptor *d) {
    /* Every one of these messages is { string id = 1; }: fill field 1 by descriptor. */
    void *m = calloc(1, d->sizeof_message);
    if (!m) {
        failed = 1;
        return;
    }
    protobuf_c_message_init(d, m);
    const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field(d, 1);
    if (!f || f->type != PROTOBUF_C_TYPE_STRING) {
        fprintf(stderr, "gen-rpc-corpus: %s: field 1 is not a string\n", d->name);
        failed = 1;
        free(m);
        return;
    }
    char **id = (char **)((char *)m + f->offset);
    char longid[201];
    memset(longid, 'f', 200);
    longid[200] = '\0';
    static const struct {
        const char *name, *value;
    } ids[] = {
        {"id", ID32},
        {"id-uppercase", "00112233445566778899AABBCCDDEEFF"},
        {"id-short", "abc"},
        {"id-empty", ""},
        {"id-control-chars", CTRL_TEXT},
        {"id-path", "../../etc/passwd"},
        {"id-percent", "%s%n%x"},
    };
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        *id = (char *)ids[i].value;
        emit_msg(rpc, ids[i].name, m);
    }
    *id = longid;
    emit_msg(rpc, "id-long", m);
    free(m);
    emit_malformed(rpc);
}

static void gen_watch_job(void) {
    const char *rpc = "watch-job";
    Quantd__V1__WatchJobRequest r = QUANTD__V1__WATCH_JOB_REQUEST__INIT;
    r.job_id = (char *)ID32;
    r.after_seq = 5;
    emit_msg(rpc, "after-seq", &r.base);
    r.after_seq = UINT64_MAX;
    emit_msg(rpc, "after-seq-max", &r.base);
    gen_id_request(rpc, &quantd__v1__watch_job_request__descriptor);
}

static void gen_list_jobs(void) {
    const char *rpc = "list-jobs";
    Quantd__V1__ListJobsRequest r = QUANTD__V1__LIST_JOBS_REQUEST__INIT;
    emit_msg(rpc, "all", &r.base);
    Quantd__V1__JobState states[] = {QUANTD__V1__JOB_STATE__JOB_STATE_QUEUED,
                                     QUANTD__V1__JOB_STATE__JOB_STATE_RUNNING,
                                     QUANTD__V1__JOB_STATE__JOB_STATE_SUCCEEDED};
    r.states = states;
    r.n_states = 3;
    r.page_size = 2;
    emit_msg(rpc, "states-page", &r.base);
    states[1] = QUANTD__V1__JOB_STATE__JOB_STATE_UNSPECIFIED;
    emit_msg(rpc, "state-unspecified", &r.base);
    states[1] = (Quantd__V1__JobState)42;
    emit_msg(rpc, "state-unknown", &r.base);
    r.n_states = 0;
    r.states = NULL;
    r.model_digest = (char *)HEX64;
    r.page_size = 100000;
    emit_msg(rpc, "model-digest-page-huge", &r.base);
    r.model_digest = (char *)"nope";
    emit_msg(rpc, "model-digest-bad", &r.base);
    r.model_digest = (char *)"";
    r.page_token = (char *)ID32;
    emit_msg(rpc, "page-token", &r.base);
    r.page_token = (char *)CTRL_TEXT;
    emit_msg(rpc, "page-token-control-chars", &r.base);
    char longtok[301];
    memset(longtok, 't', 300);
    longtok[300] = '\0';
    r.page_token = longtok;
    emit_msg(rpc, "page-token-long", &r.base);
    emit_malformed(rpc);
}

static void gen_get_artifact(void) {
    const char *rpc = "get-artifact";
    Quantd__V1__GetArtifactRequest r = QUANTD__V1__GET_ARTIFACT_REQUEST__INIT;
    r.artifact_id = (char *)ID32;
    char *files[] = {(char *)"config.json", (char *)"model.safetensors"};
    r.files = files;
    r.n_files = 2;
    r.start_file = (char *)"model.safetensors";
    r.start_offset = 4096;
    r.chunk_bytes = 65536;
    emit_msg(rpc, "resume", &r.base);
    r.n_files = 0;
    r.files = NULL;
    r.start_file = (char *)"";
    emit_msg(rpc, "offset-without-file", &r.base);
    r.start_offset = 0;
    r.chunk_bytes = UINT32_MAX;
    emit_msg(rpc, "chunk-bytes-max", &r.base);
    gen_id_request(rpc, &quantd__v1__get_artifact_request__descriptor);
}

static void gen_list_artifacts(void) {
    const char *rpc = "list-artifacts";
    Quantd__V1__ListArtifactsRequest r = QUANTD__V1__LIST_ARTIFACTS_REQUEST__INIT;
    emit_msg(rpc, "all", &r.base);
    r.format = QUANTD__V1__FORMAT__FORMAT_COMPRESSED_TENSORS;
    r.model_digest = (char *)HEX64;
    r.page_size = 1;
    emit_msg(rpc, "filtered", &r.base);
    r.format = (Quantd__V1__Format)77;
    emit_msg(rpc, "format-unknown", &r.base);
    r.format = (Quantd__V1__Format)-2;
    emit_msg(rpc, "format-negative", &r.base);
    r.format = QUANTD__V1__FORMAT__FORMAT_UNSPECIFIED;
    r.model_digest = (char *)CTRL_TEXT;
    emit_msg(rpc, "model-digest-control-chars", &r.base);
    r.model_digest = (char *)"";
    static const struct {
        const char *name, *tok;
    } toks[] = {
        {"page-token", "1700000000000." ID32},
        {"page-token-no-dot", "12345"},
        {"page-token-no-id", "12345."},
        {"page-token-no-time", ".abc"},
        {"page-token-not-digits", "12a45.abc"},
        {"page-token-overflow", "99999999999999999999." ID32},
        {"page-token-int64-max", "9223372036854775807." ID32},
        {"page-token-control-chars", "1." CTRL_TEXT},
    };
    for (size_t i = 0; i < sizeof toks / sizeof toks[0]; i++) {
        r.page_token = (char *)toks[i].tok;
        emit_msg(rpc, toks[i].name, &r.base);
    }
    emit_malformed(rpc);
}

static void gen_server_info(void) {
    const char *rpc = "get-server-info";
    Quantd__V1__GetServerInfoRequest r = QUANTD__V1__GET_SERVER_INFO_REQUEST__INIT;
    emit_msg(rpc, "plain", &r.base);
    emit_malformed(rpc);
}

static void gen_health(const char *rpc) {
    Grpc__Health__V1__HealthCheckRequest r = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    emit_msg(rpc, "server", &r.base);
    r.service = (char *)"quantd.v1.Quantd";
    emit_msg(rpc, "quantd", &r.base);
    r.service = (char *)"other.v1.Service";
    emit_msg(rpc, "unknown-service", &r.base);
    r.service = (char *)CTRL_TEXT;
    emit_msg(rpc, "service-control-chars", &r.base);
    emit_malformed(rpc);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s OUT_DIR (tests/corpus)\n", argv[0]);
        return 2;
    }
    out_root = argv[1];
    gen_put_model();
    gen_stat_model();
    gen_quantize();
    gen_watch_job();
    gen_id_request("get-job", &quantd__v1__get_job_request__descriptor);
    gen_list_jobs();
    gen_id_request("cancel-job", &quantd__v1__cancel_job_request__descriptor);
    gen_get_artifact();
    gen_list_artifacts();
    gen_id_request("delete-artifact", &quantd__v1__delete_artifact_request__descriptor);
    gen_server_info();
    gen_health("health-check");
    gen_health("health-watch");
    printf("gen-rpc-corpus: wrote %d files under %s\n", n_written, out_root);
    return failed;
}
