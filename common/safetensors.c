/*
 * safetensors.c - the safetensors reader (hostile-input safe), writer and model directories.
 *
 * DESIGN
 *
 * Reading. A file is mapped read-only (MAP_PRIVATE) and parse_file() validates all of it
 * before the caller sees a single entry; afterwards nothing needs checking again, so entry
 * accessors are plain loads. The order of checks follows the layout:
 *
 *   [u64 LE N][N bytes JSON header, '{' first, maybe space-padded][data section]
 *
 *   1. length bounds: at least 8 bytes, 0 < N <= QD_ST_MAX_HEADER, 8 + N <= file size;
 *   2. the header starts with '{' (the format requires it) and jansson parses it whole:
 *      jansson checks UTF-8, rejects NUL in keys, rejects duplicate keys
 *      (JSON_REJECT_DUPLICATES) and, without JSON_DISABLE_EOF_CHECK, anything after the
 *      object except JSON whitespace - so the space padding is accepted and garbage is not;
 *   3. each entry: an object with a known dtype string, a shape array of at most QD_MAX_DIMS
 *      non-negative integers and data_offsets of exactly two non-negative integers
 *      begin <= end inside the data section, whose length equals numel x dtype size
 *      (qd_shape_nbytes() catches overflow; the product of the non-zero dims must fit in
 *      int64 too, so strides stay computable). Unknown extra fields are ignored, as the
 *      reference reader does; "__metadata__" must be an object of strings;
 *   4. the ranges, sorted by (begin, end), must tile [0, data length) exactly: each starts
 *      where the previous one ended (earlier is an overlap, later a gap) and the last ends at
 *      the end of the file (else trailing bytes). Zero-size tensors have begin == end and
 *      may sit at any boundary.
 *
 * The parsed jansson tree stays alive with the file: entry names and metadata strings point
 * into it. Lookup by name goes through an array of entry pointers sorted with strcmp.
 * Names in error messages come from the file, so they are escaped and cut short
 * (msg_escape()) before they reach a log line.
 *
 * A mapped file that another process truncates while we read it raises SIGBUS; quantd's
 * inputs are its own snapshots, so that is accepted rather than guarded against.
 *
 * Writing. Entries keep borrowed data pointers; a write builds the header with jansson in
 * insertion order ("__metadata__" first), pads it with spaces so the data section starts
 * at a multiple of 8, then streams header and tensor bytes to "<path>.tmp" with write(),
 * fsyncs, renames over path and fsyncs the directory. Nothing is buffered whole, so a
 * model bigger than memory can be written.
 *
 * Models. Hugging Face layout: model.safetensors, or model.safetensors.index.json
 * {"metadata": {"total_size": N}, "weight_map": {tensor: shard}} plus the shards
 * model-00001-of-0000N.safetensors. Shards are written first and the index last, so an
 * index on disk implies its shards are complete.
 */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fsutil.h"

#define ST_METADATA_KEY "__metadata__"
#define ST_INDEX_NAME "model.safetensors.index.json"
#define ST_SINGLE_NAME "model.safetensors"
/* Longest escaped name or JSON excerpt put into an error message. */
#define ST_MSG_NAME_MAX 160

struct qd_st_file {
    char *label;                 /* path, or the caller's label for a buffer */
    void *map;                   /* the mapping (NULL for qd_st_open_mem) */
    size_t map_len;
    json_t *root;                /* parsed header; names and metadata point into it */
    json_t *meta;                /* borrowed from root; NULL when absent */
    qd_st_entry *entries;        /* header order */
    size_t n;
    const qd_st_entry **by_name; /* the entries sorted by name, for qd_st_find */
    const char **meta_keys;      /* header order; values in meta_vals */
    const char **meta_vals;
    size_t n_meta;
};

/* ---- error messages ---------------------------------------------------------------------- */

/*
 * Copy len bytes of s into buf (cap bytes) so that they are safe in a one-line message:
 * control bytes become \xNN; so do quotes and backslashes when the text is a file's own
 * string (a name, a key), which the message puts in '...', and bytes >= 0x80 when the text
 * may not be UTF-8 (jansson's error text quotes raw input). Text that does not fit ends in
 * "..." without splitting a UTF-8 sequence. Returns buf.
 */
#define MSG_NAME 1 /* jansson-validated UTF-8, shown in quotes */
#define MSG_RAW 0  /* any bytes, shown bare */
static const char *msg_escape(char *buf, size_t cap, const char *s, size_t len, int kind) {
    bool keep_utf8 = kind == MSG_NAME;
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        bool esc = c < 0x20 || c == 0x7f || (keep_utf8 && (c == '\'' || c == '\\')) ||
                   (c >= 0x80 && !keep_utf8);
        size_t need = esc ? 4 : 1;
        if (!esc && c >= 0xc0) /* a lead byte: keep its whole sequence or none of it */
            need = c >= 0xf0 ? 4 : (c >= 0xe0 ? 3 : 2);
        if (o + need + 4 > cap) { /* room for "..." and the NUL */
            memcpy(buf + o, "...", 3);
            o += 3;
            break;
        }
        if (esc) {
            snprintf(buf + o, cap - o, "\\x%02x", c);
            o += 4;
        } else if (need > 1) {
            for (size_t k = 0; k < need && i < len; k++, i++) buf[o++] = s[i];
            i--;
        } else {
            buf[o++] = (char)c;
        }
    }
    buf[o] = '\0';
    return buf;
}

/* QD_ERR_FORMAT "<label>: tensor '<name>': <problem>". */
__attribute__((format(printf, 4, 5)))
static qd_err fail_tensor(qd_error *err, const char *label, const char *name, const char *fmt,
                          ...) {
    char problem[QD_ERROR_MSG_MAX];
    char esc[ST_MSG_NAME_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(problem, sizeof problem, fmt, ap);
    va_end(ap);
    return qd_error_set(err, QD_ERR_FORMAT, "%s: tensor '%s': %s", label,
                        msg_escape(esc, sizeof esc, name, strlen(name), MSG_NAME), problem);
}

/* QD_ERR_FORMAT "<label>: header: <problem>". */
__attribute__((format(printf, 3, 4)))
static qd_err fail_header(qd_error *err, const char *label, const char *fmt, ...) {
    char problem[QD_ERROR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(problem, sizeof problem, fmt, ap);
    va_end(ap);
    return qd_error_set(err, QD_ERR_FORMAT, "%s: header: %s", label, problem);
}

/* ---- reading ----------------------------------------------------------------------------- */

static uint64_t load_le64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

/*
 * The JSON string token hdr[s, s + n) (quotes excluded), decoded as jansson decodes it and
 * escaped for a message into buf. jansson has already read the token, so it decodes; the raw
 * text is the fallback all the same.
 */
static void token_text(char *buf, size_t cap, const char *hdr, size_t s, size_t n) {
    json_t *str = s > 0 ? json_loadb(hdr + s - 1, n + 2, JSON_DECODE_ANY, NULL) : NULL;
    if (json_is_string(str))
        msg_escape(buf, cap, json_string_value(str), json_string_length(str), MSG_NAME);
    else
        msg_escape(buf, cap, hdr + s, n, MSG_RAW);
    json_decref(str);
}

/*
 * jansson reports a duplicate key with the offset just past it but not the object it is
 * in. Re-scan the (valid up to there) JSON text to learn the nesting depth at that point,
 * the duplicate key (the last string token) and the enclosing top-level key, so the message
 * can say "duplicate tensor name" only when it is one.
 */
static qd_err fail_duplicate(qd_error *err, const char *label, const char *hdr, size_t len,
                             size_t pos) {
    int depth = 0;
    size_t last_s = 0, last_n = 0; /* the last string token, quotes excluded */
    size_t top_s = 0, top_n = 0;   /* the last key at depth 1 */
    bool have_top = false;
    if (pos > len) pos = len;
    for (size_t i = 0; i < pos; i++) {
        char c = hdr[i];
        if (c == '{' || c == '[') {
            depth++;
        } else if (c == '}' || c == ']') {
            depth--;
        } else if (c == '"') {
            size_t s = ++i;
            while (i < len && hdr[i] != '"') i += hdr[i] == '\\' ? 2 : 1;
            if (i > len) i = len;
            last_s = s;
            last_n = i - s;
            if (depth == 1) {
                size_t j = i + 1;
                while (j < len && (hdr[j] == ' ' || hdr[j] == '\t' || hdr[j] == '\n' ||
                                   hdr[j] == '\r'))
                    j++;
                if (j < len && hdr[j] == ':' && j < pos) {
                    top_s = last_s;
                    top_n = last_n;
                    have_top = true;
                }
            }
        }
    }
    char key[ST_MSG_NAME_MAX], top[ST_MSG_NAME_MAX];
    token_text(key, sizeof key, hdr, last_s, last_n);
    if (depth <= 1) {
        if (strcmp(key, ST_METADATA_KEY) == 0)
            return fail_header(err, label, "duplicate '%s' object", ST_METADATA_KEY);
        return qd_error_set(err, QD_ERR_FORMAT, "%s: tensor '%s': duplicate tensor name", label,
                            key);
    }
    if (depth == 2 && have_top) {
        token_text(top, sizeof top, hdr, top_s, top_n);
        if (strcmp(top, ST_METADATA_KEY) == 0)
            return fail_header(err, label, "duplicate key '%s' in '%s'", key, ST_METADATA_KEY);
        return qd_error_set(err, QD_ERR_FORMAT, "%s: tensor '%s': duplicate key '%s'", label,
                            top, key);
    }
    return fail_header(err, label, "duplicate key '%s'", key);
}

/* v as a non-negative integer, or false. */
static bool json_uint(const json_t *v, uint64_t *out) {
    if (!json_is_integer(v) || json_integer_value(v) < 0) return false;
    *out = (uint64_t)json_integer_value(v);
    return true;
}

/* Validate one tensor entry of the header and fill e (data is set later). */
static qd_err parse_entry(const char *label, const char *name, json_t *v, uint64_t data_len,
                          qd_st_entry *e, qd_error *err) {
    char shape_buf[256];
    e->name = name;
    if (!json_is_object(v)) return fail_tensor(err, label, name, "entry is not an object");

    json_t *dt = json_object_get(v, "dtype");
    if (!dt) return fail_tensor(err, label, name, "missing \"dtype\"");
    if (!json_is_string(dt)) return fail_tensor(err, label, name, "\"dtype\" is not a string");
    e->dtype = qd_dtype_from_name(json_string_value(dt));
    if (e->dtype == QD_DTYPE_COUNT) {
        char esc[ST_MSG_NAME_MAX];
        return fail_tensor(err, label, name, "unknown dtype '%s'",
                           msg_escape(esc, sizeof esc, json_string_value(dt),
                                      json_string_length(dt), MSG_NAME));
    }

    json_t *shape = json_object_get(v, "shape");
    if (!shape) return fail_tensor(err, label, name, "missing \"shape\"");
    if (!json_is_array(shape)) return fail_tensor(err, label, name, "\"shape\" is not an array");
    size_t nd = json_array_size(shape);
    if (nd > QD_MAX_DIMS)
        return fail_tensor(err, label, name, "shape has too many dims (%zu, at most %d)", nd,
                           QD_MAX_DIMS);
    e->ndim = (int)nd;
    for (size_t i = 0; i < nd; i++) {
        uint64_t d;
        if (!json_uint(json_array_get(shape, i), &d))
            return fail_tensor(err, label, name, "shape[%zu] is not a non-negative integer", i);
        e->shape[i] = (int64_t)d;
    }

    json_t *offs = json_object_get(v, "data_offsets");
    if (!offs) return fail_tensor(err, label, name, "missing \"data_offsets\"");
    if (!json_is_array(offs) || json_array_size(offs) != 2)
        return fail_tensor(err, label, name, "\"data_offsets\" is not an array of 2 integers");
    if (!json_uint(json_array_get(offs, 0), &e->begin) ||
        !json_uint(json_array_get(offs, 1), &e->end))
        return fail_tensor(err, label, name,
                           "\"data_offsets\" are not non-negative integers");
    if (e->begin > e->end)
        return fail_tensor(err, label, name, "data_offsets begin %llu > end %llu",
                           (unsigned long long)e->begin, (unsigned long long)e->end);

    /* The size must fit even with the zero dims left out: a [0, 2^62, 2^62] tensor holds
     * nothing, but strides computed from its shape would overflow downstream. */
    uint64_t nbytes, nonzero = qd_dtype_size(e->dtype);
    bool overflow = !qd_shape_nbytes(e->dtype, e->ndim, e->shape, &nbytes);
    for (int i = 0; i < e->ndim && !overflow; i++) {
        uint64_t d = e->shape[i] ? (uint64_t)e->shape[i] : 1;
        overflow = nonzero > (uint64_t)INT64_MAX / d;
        nonzero *= d;
    }
    qd_shape_str(e->ndim, e->shape, shape_buf, sizeof shape_buf);
    if (overflow)
        return fail_tensor(err, label, name, "shape %s x %s: byte size overflows", shape_buf,
                           qd_dtype_name(e->dtype));
    if (nbytes != e->end - e->begin)
        return fail_tensor(err, label, name,
                           "shape %s x %s is %llu bytes but data_offsets [%llu, %llu] "
                           "cover %llu",
                           shape_buf, qd_dtype_name(e->dtype), (unsigned long long)nbytes,
                           (unsigned long long)e->begin, (unsigned long long)e->end,
                           (unsigned long long)(e->end - e->begin));
    if (e->end > data_len)
        return fail_tensor(err, label, name,
                           "data_offsets [%llu, %llu] past the end of the data section "
                           "(%llu bytes)",
                           (unsigned long long)e->begin, (unsigned long long)e->end,
                           (unsigned long long)data_len);
    return QD_OK;
}

static int cmp_by_offset(const void *a, const void *b) {
    const qd_st_entry *x = *(const qd_st_entry *const *)a, *y = *(const qd_st_entry *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return x < y ? -1 : (x > y); /* header order: a deterministic message */
}

static int cmp_by_name(const void *a, const void *b) {
    const qd_st_entry *x = *(const qd_st_entry *const *)a, *y = *(const qd_st_entry *const *)b;
    return strcmp(x->name, y->name);
}

/* The tensors' ranges must tile [0, data_len) exactly (see DESIGN). by_off is scratch. */
static qd_err check_tiling(const char *label, const qd_st_entry *entries, size_t n,
                           uint64_t data_len, const qd_st_entry **by_off, qd_error *err) {
    for (size_t i = 0; i < n; i++) by_off[i] = &entries[i];
    if (n > 1) qsort(by_off, n, sizeof *by_off, cmp_by_offset);
    uint64_t cursor = 0;
    const qd_st_entry *prev = NULL;
    for (size_t i = 0; i < n; i++) {
        const qd_st_entry *e = by_off[i];
        char esc[ST_MSG_NAME_MAX];
        if (e->begin < cursor)
            return fail_tensor(err, label, e->name,
                               "data_offsets [%llu, %llu] overlap tensor '%s' (ends at %llu)",
                               (unsigned long long)e->begin, (unsigned long long)e->end,
                               msg_escape(esc, sizeof esc, prev->name, strlen(prev->name),
                                          true),
                               (unsigned long long)cursor);
        if (e->begin > cursor) {
            if (prev)
                return fail_tensor(err, label, e->name,
                                   "gap of %llu bytes before it (after tensor '%s')",
                                   (unsigned long long)(e->begin - cursor),
                                   msg_escape(esc, sizeof esc, prev->name, strlen(prev->name),
                                              true));
            return fail_tensor(err, label, e->name,
                               "gap of %llu bytes before it (at the start of the data)",
                               (unsigned long long)e->begin);
        }
        if (e->end > cursor || !prev) {
            cursor = e->end;
            prev = e;
        }
    }
    if (cursor != data_len)
        return fail_header(err, label,
                           "%llu trailing bytes after the last tensor (data section is %llu "
                           "bytes, tensors cover %llu)",
                           (unsigned long long)(data_len - cursor),
                           (unsigned long long)data_len, (unsigned long long)cursor);
    return QD_OK;
}

static qd_err parse_metadata(const char *label, qd_st_file *f, json_t *meta, qd_error *err) {
    if (!json_is_object(meta))
        return fail_header(err, label, "'%s' is not an object", ST_METADATA_KEY);
    size_t n = json_object_size(meta);
    f->meta_keys = calloc(n ? n : 1, sizeof *f->meta_keys);
    f->meta_vals = calloc(n ? n : 1, sizeof *f->meta_vals);
    if (!f->meta_keys || !f->meta_vals)
        return qd_error_set(err, QD_ERR_NOMEM, "%s: out of memory for metadata", label);
    const char *k;
    json_t *v;
    json_object_foreach(meta, k, v) {
        if (!json_is_string(v)) {
            char esc[ST_MSG_NAME_MAX];
            return fail_header(err, label, "'%s' value of '%s' is not a string",
                               ST_METADATA_KEY,
                               msg_escape(esc, sizeof esc, k, strlen(k), MSG_NAME));
        }
        f->meta_keys[f->n_meta] = k;
        f->meta_vals[f->n_meta++] = json_string_value(v);
    }
    f->meta = meta;
    return QD_OK;
}

/* Validate buf[0, len) as a safetensors file and fill f (see DESIGN for the checks). */
static qd_err parse_file(qd_st_file *f, const uint8_t *buf, size_t len, qd_error *err) {
    const char *label = f->label;
    if (len == 0) return fail_header(err, label, "empty file");
    if (len < 8)
        return fail_header(err, label,
                           "file is %zu bytes, too short for the 8-byte header length", len);
    uint64_t hlen = load_le64(buf);
    if (hlen == 0) return fail_header(err, label, "header length is 0");
    if (hlen > QD_ST_MAX_HEADER)
        return fail_header(err, label, "header length %llu exceeds the limit of %u bytes",
                           (unsigned long long)hlen, QD_ST_MAX_HEADER);
    if (hlen > len - 8)
        return fail_header(err, label,
                           "header length %llu runs past the end of the file (%zu bytes)",
                           (unsigned long long)hlen, len);
    const char *hdr = (const char *)buf + 8;
    const uint8_t *data = buf + 8 + hlen;
    uint64_t data_len = len - 8 - hlen;
    if (hdr[0] != '{') return fail_header(err, label, "JSON does not start with '{' (object)");

    json_error_t jerr;
    f->root = json_loadb(hdr, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!f->root) {
        if (json_error_code(&jerr) == json_error_duplicate_key)
            return fail_duplicate(err, label, hdr, (size_t)hlen,
                                  jerr.position < 0 ? 0 : (size_t)jerr.position);
        if (json_error_code(&jerr) == json_error_invalid_utf8)
            return fail_header(err, label, "invalid UTF-8 in the JSON near byte %d",
                               jerr.position);
        if (json_error_code(&jerr) == json_error_out_of_memory)
            return qd_error_set(err, QD_ERR_NOMEM, "%s: header: out of memory", label);
        char esc[ST_MSG_NAME_MAX];
        return fail_header(err, label, "invalid JSON at byte %d: %s", jerr.position,
                           msg_escape(esc, sizeof esc, jerr.text, strlen(jerr.text), MSG_RAW));
    }
    if (!json_is_object(f->root)) /* unreachable after the '{' check; kept for safety */
        return fail_header(err, label, "JSON top level is not an object");

    json_t *meta = json_object_get(f->root, ST_METADATA_KEY);
    if (meta) {
        qd_err rc = parse_metadata(label, f, meta, err);
        if (rc != QD_OK) return rc;
    }
    size_t n = json_object_size(f->root) - (meta ? 1 : 0);
    f->entries = calloc(n ? n : 1, sizeof *f->entries);
    f->by_name = calloc(n ? n : 1, sizeof *f->by_name);
    if (!f->entries || !f->by_name)
        return qd_error_set(err, QD_ERR_NOMEM, "%s: out of memory for %zu entries", label, n);

    const char *k;
    json_t *v;
    json_object_foreach(f->root, k, v) {
        if (strcmp(k, ST_METADATA_KEY) == 0) continue;
        qd_err rc = parse_entry(label, k, v, data_len, &f->entries[f->n], err);
        if (rc != QD_OK) return rc;
        f->entries[f->n].data = data + f->entries[f->n].begin;
        f->n++;
    }
    /* by_name doubles as scratch space for the offset sort. */
    qd_err rc = check_tiling(label, f->entries, f->n, data_len, f->by_name, err);
    if (rc != QD_OK) return rc;
    for (size_t i = 0; i < f->n; i++) f->by_name[i] = &f->entries[i];
    if (f->n > 1) qsort(f->by_name, f->n, sizeof *f->by_name, cmp_by_name);
    return QD_OK;
}

void qd_st_close(qd_st_file *f) {
    if (!f) return;
    if (f->map) munmap(f->map, f->map_len);
    json_decref(f->root);
    free(f->entries);
    free(f->by_name);
    free(f->meta_keys);
    free(f->meta_vals);
    free(f->label);
    free(f);
}

static qd_st_file *file_new(const char *label, qd_error *err) {
    qd_st_file *f = calloc(1, sizeof *f);
    if (f) f->label = strdup(label ? label : "(buffer)");
    if (!f || !f->label) {
        free(f);
        qd_error_set(err, QD_ERR_NOMEM, "%s: out of memory", label ? label : "(buffer)");
        return NULL;
    }
    return f;
}

qd_err qd_st_open_mem(const void *buf, size_t len, const char *label, qd_st_file **out,
                      qd_error *err) {
    *out = NULL;
    if (!buf && len) return qd_error_set(err, QD_ERR_INVALID_ARG, "st_open_mem: NULL buffer");
    qd_st_file *f = file_new(label, err);
    if (!f) return QD_ERR_NOMEM;
    static const uint8_t empty[1];
    qd_err rc = parse_file(f, buf ? buf : empty, len, err);
    if (rc != QD_OK) {
        qd_st_close(f);
        return rc;
    }
    *out = f;
    return QD_OK;
}

qd_err qd_st_open(const char *path, qd_st_file **out, qd_error *err) {
    *out = NULL;
    int fd;
    uint64_t size;
    qd_err orc = qd_open_regular(path, &fd, &size, err);
    if (orc != QD_OK) return orc;
    if (size > SIZE_MAX) {
        close(fd);
        return qd_error_set(err, QD_ERR_TOO_LARGE, "%s: file too large to map", path);
    }
    qd_st_file *f = file_new(path, err);
    if (!f) {
        close(fd);
        return QD_ERR_NOMEM;
    }
    size_t len = (size_t)size;
    if (len > 0) { /* mmap of 0 bytes fails; parse_file reports the empty file */
        void *p = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            int e = errno;
            close(fd);
            qd_st_close(f);
            return qd_error_set(err, e == ENOMEM ? QD_ERR_NOMEM : QD_ERR_IO,
                                "%s: cannot map: %s", path, strerror(e));
        }
        f->map = p;
        f->map_len = len;
    }
    close(fd);
    static const uint8_t empty[1];
    qd_err rc = parse_file(f, f->map ? f->map : empty, len, err);
    if (rc != QD_OK) {
        qd_st_close(f);
        return rc;
    }
    *out = f;
    return QD_OK;
}

size_t qd_st_count(const qd_st_file *f) { return f ? f->n : 0; }

const qd_st_entry *qd_st_get(const qd_st_file *f, size_t i) {
    return f && i < f->n ? &f->entries[i] : NULL;
}

static const qd_st_entry *find_sorted(const qd_st_entry *const *by_name, size_t n,
                                      const char *name) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(by_name[mid]->name, name);
        if (c == 0) return by_name[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

const qd_st_entry *qd_st_find(const qd_st_file *f, const char *name) {
    if (!f || !name) return NULL;
    return find_sorted(f->by_name, f->n, name);
}

const char *qd_st_metadata(const qd_st_file *f, const char *key) {
    if (!f || !f->meta || !key) return NULL;
    return json_string_value(json_object_get(f->meta, key));
}

size_t qd_st_metadata_count(const qd_st_file *f) { return f ? f->n_meta : 0; }

const char *qd_st_metadata_get(const qd_st_file *f, size_t i, const char **value) {
    if (!f || i >= f->n_meta) {
        if (value) *value = NULL;
        return NULL;
    }
    if (value) *value = f->meta_vals[i];
    return f->meta_keys[i];
}

const char *qd_st_path(const qd_st_file *f) { return f ? f->label : NULL; }

qd_tensor qd_st_entry_view(const qd_st_entry *e) {
    /* The mapping is PROT_READ: the view is for reading only, whatever its pointer type.
     * Other writers do not align the data section, so data may be unaligned for its dtype. */
    return qd_tensor_view(e->dtype, e->ndim, e->shape, (void *)(uintptr_t)e->data);
}

/* ---- writing ----------------------------------------------------------------------------- */

struct st_wentry {
    char *name;
    qd_dtype dtype;
    int ndim;
    int64_t shape[QD_MAX_DIMS];
    const void *data; /* borrowed */
    uint64_t nbytes;
};

struct qd_st_writer {
    struct st_wentry *e;
    size_t n, cap;
    json_t *names; /* set of names added (values null), for the duplicate check */
    json_t *meta;  /* "__metadata__" pairs in insertion order */
};

qd_st_writer *qd_st_writer_new(void) {
    qd_st_writer *w = calloc(1, sizeof *w);
    if (!w) return NULL;
    w->names = json_object();
    w->meta = json_object();
    if (!w->names || !w->meta) {
        qd_st_writer_free(w);
        return NULL;
    }
    return w;
}

void qd_st_writer_free(qd_st_writer *w) {
    if (!w) return;
    for (size_t i = 0; i < w->n; i++) free(w->e[i].name);
    free(w->e);
    json_decref(w->names);
    json_decref(w->meta);
    free(w);
}

qd_err qd_st_writer_add(qd_st_writer *w, const char *name, qd_dtype dtype, int ndim,
                        const int64_t *shape, const void *data, qd_error *err) {
    uint64_t nbytes;
    if (!w || !name)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "st_writer_add: NULL writer or name");
    if (strcmp(name, ST_METADATA_KEY) == 0)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "tensor '%s': reserved name", name);
    if (ndim < 0 || ndim > QD_MAX_DIMS || (ndim > 0 && !shape))
        return qd_error_set(err, QD_ERR_INVALID_ARG, "tensor '%s': bad ndim %d", name, ndim);
    if (!qd_shape_nbytes(dtype, ndim, shape, &nbytes) || nbytes > INT64_MAX)
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "tensor '%s': invalid dtype, negative dim or size overflow", name);
    if (nbytes > 0 && !data)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "tensor '%s': NULL data", name);
    if (json_object_get(w->names, name))
        return qd_error_set(err, QD_ERR_INVALID_ARG, "tensor '%s': duplicate tensor name",
                            name);
    if (w->n == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 16;
        struct st_wentry *e = realloc(w->e, cap * sizeof *e);
        if (!e) return qd_error_set(err, QD_ERR_NOMEM, "tensor '%s': out of memory", name);
        w->e = e;
        w->cap = cap;
    }
    /* json_object_set fails for a name that is not valid UTF-8: the header could not hold it. */
    if (json_object_set_new(w->names, name, json_null()) != 0)
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "tensor name is not valid UTF-8 (or out of memory)");
    struct st_wentry *e = &w->e[w->n];
    memset(e, 0, sizeof *e);
    e->name = strdup(name);
    if (!e->name) {
        json_object_del(w->names, name);
        return qd_error_set(err, QD_ERR_NOMEM, "tensor '%s': out of memory", name);
    }
    e->dtype = dtype;
    e->ndim = ndim;
    for (int i = 0; i < ndim; i++) e->shape[i] = shape[i];
    e->data = data;
    e->nbytes = nbytes;
    w->n++;
    return QD_OK;
}

qd_err qd_st_writer_set_metadata(qd_st_writer *w, const char *key, const char *value,
                                 qd_error *err) {
    if (!w || !key || !value)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "st_writer_set_metadata: NULL argument");
    json_t *s = json_string(value); /* NULL when value is not valid UTF-8 */
    if (!s)
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "metadata '%s': value is not valid UTF-8", key);
    /* Setting a key again replaces its value in place, keeping its position. */
    if (json_object_set_new(w->meta, key, s) != 0)
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "metadata key is not valid UTF-8 (or out of memory)");
    return QD_OK;
}

/* The header text for entries [first, last): NUL-terminated, caller frees. NULL on OOM. */
static char *build_header(const qd_st_writer *w, size_t first, size_t last) {
    json_t *h = json_object();
    int bad = h ? 0 : 1;
    if (h && json_object_size(w->meta) > 0)
        bad |= json_object_set(h, ST_METADATA_KEY, w->meta);
    uint64_t off = 0;
    for (size_t i = first; h && i < last && !bad; i++) {
        const struct st_wentry *e = &w->e[i];
        json_t *o = json_object(), *shape = json_array(), *offs = json_array();
        bad |= json_object_set_new(o, "dtype", json_string(qd_dtype_name(e->dtype)));
        for (int d = 0; d < e->ndim; d++)
            bad |= json_array_append_new(shape, json_integer((json_int_t)e->shape[d]));
        bad |= json_array_append_new(offs, json_integer((json_int_t)off));
        bad |= json_array_append_new(offs, json_integer((json_int_t)(off + e->nbytes)));
        bad |= json_object_set_new(o, "shape", shape);
        bad |= json_object_set_new(o, "data_offsets", offs);
        bad |= json_object_set_new(h, e->name, o);
        off += e->nbytes;
    }
    char *s = bad ? NULL : json_dumps(h, JSON_COMPACT);
    json_decref(h);
    return s;
}

/* Write entries [first, last) to path via "<path>.tmp" (see DESIGN). */
static qd_err write_shard(const qd_st_writer *w, size_t first, size_t last, const char *path,
                          qd_error *err) {
    uint64_t total = 0;
    for (size_t i = first; i < last; i++) {
        if (w->e[i].nbytes > (uint64_t)INT64_MAX - total)
            return qd_error_set(err, QD_ERR_TOO_LARGE, "%s: tensors too large for one file",
                                path);
        total += w->e[i].nbytes;
    }
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return qd_error_set(err, QD_ERR_TOO_LARGE, "%s: path too long", path);
    char *hdr = build_header(w, first, last);
    if (!hdr) return qd_error_set(err, QD_ERR_NOMEM, "%s: cannot build the header", path);
    size_t hlen = strlen(hdr);
    size_t pad = (8 - (8 + hlen) % 8) % 8; /* data section starts at a multiple of 8 */
    uint8_t lenbuf[8];
    uint64_t n = hlen + pad;
    for (int i = 0; i < 8; i++) lenbuf[i] = (uint8_t)(n >> (8 * i));

    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        free(hdr);
        return qd_error_set(err, QD_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
    }
    qd_err rc = qd_write_all(fd, lenbuf, sizeof lenbuf, tmp, err);
    if (rc == QD_OK) rc = qd_write_all(fd, hdr, hlen, tmp, err);
    if (rc == QD_OK && pad) rc = qd_write_all(fd, "        ", pad, tmp, err);
    free(hdr);
    for (size_t i = first; rc == QD_OK && i < last; i++)
        if (w->e[i].nbytes)
            rc = qd_write_all(fd, w->e[i].data, (size_t)w->e[i].nbytes, tmp, err);
    if (rc == QD_OK && fsync(fd) != 0)
        rc = qd_error_set(err, QD_ERR_IO, "%s: fsync failed: %s", tmp, strerror(errno));
    if (close(fd) != 0 && rc == QD_OK)
        rc = qd_error_set(err, QD_ERR_IO, "%s: close failed: %s", tmp, strerror(errno));
    if (rc == QD_OK && rename(tmp, path) != 0)
        rc = qd_error_set(err, QD_ERR_IO, "%s: rename failed: %s", path, strerror(errno));
    if (rc != QD_OK) {
        unlink(tmp);
        return rc;
    }
    return qd_fsync_dir(path, err);
}

qd_err qd_st_write_file(qd_st_writer *w, const char *path, qd_error *err) {
    if (!w || !path) return qd_error_set(err, QD_ERR_INVALID_ARG, "st_write_file: NULL argument");
    return write_shard(w, 0, w->n, path, err);
}

/*
 * Write the shards given by starts[0..n_shards) (shard s holds entries
 * [starts[s], starts[s + 1]), the last one up to w->n) and, for more than one shard, the
 * index. One shard is dir/model.safetensors.
 */
static qd_err write_layout(const qd_st_writer *w, const char *dir, const size_t *starts,
                           int n_shards, qd_error *err) {
    char path[PATH_MAX], fname[64];
    if (n_shards == 1) {
        qd_err rc = qd_path_join(path, sizeof path, dir, ST_SINGLE_NAME, err);
        return rc != QD_OK ? rc : write_shard(w, 0, w->n, path, err);
    }
    json_t *index = json_object(), *meta = json_object(), *map = json_object();
    int bad = !index || !meta || !map;
    uint64_t total = 0;
    qd_err rc = QD_OK;
    for (int s = 0; s < n_shards && rc == QD_OK && !bad; s++) {
        size_t first = starts[s], last = s + 1 < n_shards ? starts[s + 1] : w->n;
        snprintf(fname, sizeof fname, "model-%05d-of-%05d.safetensors", s + 1, n_shards);
        rc = qd_path_join(path, sizeof path, dir, fname, err);
        if (rc == QD_OK) rc = write_shard(w, first, last, path, err);
        for (size_t i = first; i < last && rc == QD_OK; i++) {
            bad |= json_object_set_new(map, w->e[i].name, json_string(fname));
            total += w->e[i].nbytes;
        }
    }
    char *text = NULL;
    if (rc == QD_OK && !bad) {
        bad |= json_object_set_new(meta, "total_size", json_integer((json_int_t)total));
        bad |= json_object_set(index, "metadata", meta);
        bad |= json_object_set(index, "weight_map", map);
        text = bad ? NULL : json_dumps(index, JSON_INDENT(2));
        if (!text) bad = 1;
    }
    if (rc == QD_OK && bad)
        rc = qd_error_set(err, QD_ERR_NOMEM, "%s: cannot build %s", dir, ST_INDEX_NAME);
    if (rc == QD_OK) rc = qd_path_join(path, sizeof path, dir, ST_INDEX_NAME, err);
    if (rc == QD_OK) {
        size_t len = strlen(text);
        char *buf = malloc(len + 2);
        if (!buf) {
            rc = qd_error_set(err, QD_ERR_NOMEM, "%s: out of memory", path);
        } else {
            memcpy(buf, text, len);
            buf[len] = '\n';
            rc = qd_write_file_atomic(path, buf, len + 1, err);
            free(buf);
        }
    }
    free(text);
    json_decref(index);
    json_decref(meta);
    json_decref(map);
    return rc;
}

qd_err qd_st_write_model(qd_st_writer *w, const char *dir, uint64_t max_shard_bytes,
                         int *n_shards, qd_error *err) {
    if (!w || !dir)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "st_write_model: NULL argument");
    size_t *starts = malloc((w->n ? w->n : 1) * sizeof *starts);
    if (!starts) return qd_error_set(err, QD_ERR_NOMEM, "%s: out of memory", dir);
    /* Greedy in insertion order: a new shard starts when the next tensor would overflow the
     * current one; a tensor above the limit gets a shard of its own. */
    size_t ns = 1;
    uint64_t cur = 0;
    starts[0] = 0;
    for (size_t i = 0; i < w->n; i++) {
        uint64_t b = w->e[i].nbytes;
        if (max_shard_bytes && i > starts[ns - 1] &&
            (cur >= max_shard_bytes || b > max_shard_bytes - cur)) {
            starts[ns++] = i;
            cur = 0;
        }
        cur = b > UINT64_MAX - cur ? UINT64_MAX : cur + b;
    }
    if (ns > 99999) {
        free(starts);
        return qd_error_set(err, QD_ERR_INVALID_ARG, "%s: %zu shards exceed the 5-digit names",
                            dir, ns);
    }
    qd_err rc = write_layout(w, dir, starts, (int)ns, err);
    free(starts);
    if (rc == QD_OK && n_shards) *n_shards = (int)ns;
    return rc;
}

qd_err qd_st_write_model_shards(qd_st_writer *w, const char *dir, int n_shards,
                                qd_error *err) {
    if (!w || !dir)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "st_write_model_shards: NULL argument");
    if (n_shards < 1 || n_shards > 99999 || (size_t)n_shards > w->n)
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "%s: cannot split %zu tensors into %d shards", dir, w->n, n_shards);
    size_t *starts = malloc((size_t)n_shards * sizeof *starts);
    if (!starts) return qd_error_set(err, QD_ERR_NOMEM, "%s: out of memory", dir);
    /* Shard s ends near total * (s + 1) / n: take the next tensor while its midpoint is below
     * that target, keeping at least one tensor for each shard still to come. Byte sums are
     * in long double so a huge total cannot overflow. */
    long double total = 0;
    for (size_t i = 0; i < w->n; i++) total += (long double)w->e[i].nbytes;
    size_t i = 0;
    long double cum = 0;
    for (int s = 0; s < n_shards; s++) {
        starts[s] = i;
        cum += (long double)w->e[i++].nbytes; /* every shard holds at least one tensor */
        long double target = total * (long double)(s + 1) / (long double)n_shards;
        size_t left_for_rest = (size_t)(n_shards - s - 1);
        while (i < w->n && w->n - i > left_for_rest &&
               (s == n_shards - 1 || cum + (long double)w->e[i].nbytes / 2 <= target))
            cum += (long double)w->e[i++].nbytes;
    }
    qd_err rc = write_layout(w, dir, starts, n_shards, err);
    free(starts);
    return rc;
}

/* ---- a model directory ------------------------------------------------------------------- */

struct qd_st_model {
    qd_st_file **shards;
    size_t n_shards;
    const qd_st_entry **all;     /* shard order, then header order */
    const qd_st_entry **by_name; /* sorted, for lookup */
    size_t n;
};

void qd_st_model_close(qd_st_model *m) {
    if (!m) return;
    for (size_t i = 0; i < m->n_shards; i++) qd_st_close(m->shards[i]);
    free(m->shards);
    free(m->all);
    free(m->by_name);
    free(m);
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* A shard name from the index must be a plain file name inside the model directory. */
static bool shard_name_ok(const char *s) {
    return s[0] != '\0' && !strchr(s, '/') && !strstr(s, "..") && strcmp(s, ".") != 0;
}

/* Gather every shard's entries into m->all / m->by_name and reject a name in two shards. */
static qd_err index_entries(qd_st_model *m, const char *what, qd_error *err) {
    size_t n = 0;
    for (size_t s = 0; s < m->n_shards; s++) n += qd_st_count(m->shards[s]);
    m->all = calloc(n ? n : 1, sizeof *m->all);
    m->by_name = calloc(n ? n : 1, sizeof *m->by_name);
    if (!m->all || !m->by_name) return qd_error_set(err, QD_ERR_NOMEM, "%s: out of memory", what);
    for (size_t s = 0; s < m->n_shards; s++)
        for (size_t i = 0; i < qd_st_count(m->shards[s]); i++)
            m->all[m->n++] = qd_st_get(m->shards[s], i);
    memcpy(m->by_name, m->all, n * sizeof *m->all);
    if (n > 1) qsort(m->by_name, n, sizeof *m->by_name, cmp_by_name);
    for (size_t i = 1; i < n; i++) {
        if (strcmp(m->by_name[i - 1]->name, m->by_name[i]->name) != 0) continue;
        /* Report the shards in model order: find which shard holds each copy. */
        const char *a = NULL, *b = NULL;
        for (size_t s = 0; s < m->n_shards; s++) {
            if (!qd_st_find(m->shards[s], m->by_name[i]->name)) continue;
            if (!a) a = qd_st_path(m->shards[s]);
            else if (!b) b = qd_st_path(m->shards[s]);
        }
        return fail_tensor(err, what, m->by_name[i]->name, "in two shards: %s and %s",
                           a ? a : "?", b ? b : "?");
    }
    return QD_OK;
}

/* Open the shards an index names and cross-check index and shards both ways. */
static qd_err open_indexed(qd_st_model *m, const char *dir, const char *index_path,
                           qd_error *err) {
    char *text = NULL;
    size_t len = 0;
    json_t *root = NULL, *shard_ids = NULL;
    const char **shard_names = NULL; /* borrowed from root */
    qd_err rc = qd_read_file(index_path, QD_ST_MAX_HEADER, &text, &len, err);
    if (rc != QD_OK) return rc;
    json_error_t jerr;
    root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    free(text);
    if (!root) {
        char esc[ST_MSG_NAME_MAX];
        return qd_error_set(err, QD_ERR_FORMAT, "%s: invalid JSON at byte %d: %s", index_path,
                            jerr.position,
                            msg_escape(esc, sizeof esc, jerr.text, strlen(jerr.text), MSG_RAW));
    }
    json_t *map = json_object_get(root, "weight_map");
    if (!json_is_object(root) || !json_is_object(map) || json_object_size(map) == 0) {
        rc = qd_error_set(err, QD_ERR_FORMAT, "%s: \"weight_map\" is missing, empty or not an "
                          "object", index_path);
        goto done;
    }
    /* The distinct shard names, opened in name order (model-00001-of-N first; the
     * weight_map's own order is arbitrary - Hugging Face writes it sorted by tensor name).
     * shard_ids maps shard name -> index into m->shards. */
    shard_ids = json_object();
    m->shards = calloc(json_object_size(map), sizeof *m->shards);
    shard_names = calloc(json_object_size(map), sizeof *shard_names);
    if (!shard_ids || !m->shards || !shard_names) {
        rc = qd_error_set(err, QD_ERR_NOMEM, "%s: out of memory", index_path);
        goto done;
    }
    const char *name;
    json_t *v;
    size_t n_names = 0;
    json_object_foreach(map, name, v) {
        const char *shard = json_string_value(v);
        char esc[ST_MSG_NAME_MAX];
        if (!shard) {
            rc = fail_tensor(err, index_path, name, "weight_map value is not a string");
            goto done;
        }
        if (!shard_name_ok(shard)) {
            rc = fail_tensor(err, index_path, name,
                             "shard '%s' is not a plain file name in the model directory",
                             msg_escape(esc, sizeof esc, shard, strlen(shard), MSG_NAME));
            goto done;
        }
        if (json_object_get(shard_ids, shard)) continue;
        if (json_object_set_new(shard_ids, shard, json_integer(0)) != 0) {
            rc = qd_error_set(err, QD_ERR_NOMEM, "%s: out of memory", index_path);
            goto done;
        }
        shard_names[n_names++] = shard;
    }
    qsort(shard_names, n_names, sizeof *shard_names, cmp_str);
    for (size_t s = 0; s < n_names; s++) {
        char path[PATH_MAX];
        rc = qd_path_join(path, sizeof path, dir, shard_names[s], err);
        if (rc != QD_OK) goto done;
        rc = qd_st_open(path, &m->shards[m->n_shards], err);
        if (rc != QD_OK) goto done;
        m->n_shards++;
        json_integer_set(json_object_get(shard_ids, shard_names[s]), (json_int_t)s);
    }
    rc = index_entries(m, index_path, err);
    if (rc != QD_OK) goto done;
    /* Index -> shards: every listed tensor is in the shard named for it. */
    json_object_foreach(map, name, v) {
        size_t s = (size_t)json_integer_value(json_object_get(shard_ids, json_string_value(v)));
        if (!qd_st_find(m->shards[s], name)) {
            rc = fail_tensor(err, index_path, name, "listed in shard %s but not in it",
                             qd_st_path(m->shards[s]));
            goto done;
        }
    }
    /* Shards -> index: no tensor the index does not list (for that shard). */
    for (size_t s = 0; s < m->n_shards; s++) {
        for (size_t i = 0; i < qd_st_count(m->shards[s]); i++) {
            const qd_st_entry *e = qd_st_get(m->shards[s], i);
            const char *listed = json_string_value(json_object_get(map, e->name));
            json_t *id = listed ? json_object_get(shard_ids, listed) : NULL;
            if (!id || (size_t)json_integer_value(id) != s) {
                rc = fail_tensor(err, qd_st_path(m->shards[s]), e->name,
                                 "not listed for this shard in %s", index_path);
                goto done;
            }
        }
    }
done:
    free(shard_names);
    json_decref(shard_ids);
    json_decref(root);
    return rc;
}

qd_err qd_st_model_open(const char *dir, qd_st_model **out, qd_error *err) {
    *out = NULL;
    char index_path[PATH_MAX], single[PATH_MAX];
    qd_err rc = qd_path_join(index_path, sizeof index_path, dir, ST_INDEX_NAME, err);
    if (rc == QD_OK) rc = qd_path_join(single, sizeof single, dir, ST_SINGLE_NAME, err);
    if (rc != QD_OK) return rc;
    qd_st_model *m = calloc(1, sizeof *m);
    if (!m) return qd_error_set(err, QD_ERR_NOMEM, "%s: out of memory", dir);
    if (qd_is_file(index_path)) {
        rc = open_indexed(m, dir, index_path, err);
    } else if (qd_is_file(single)) {
        m->shards = calloc(1, sizeof *m->shards);
        if (!m->shards) rc = qd_error_set(err, QD_ERR_NOMEM, "%s: out of memory", dir);
        if (rc == QD_OK) rc = qd_st_open(single, &m->shards[0], err);
        if (rc == QD_OK) m->n_shards = 1;
        if (rc == QD_OK) rc = index_entries(m, single, err);
    } else {
        rc = qd_error_set(err, QD_ERR_NOT_FOUND, "%s: no %s or %s in the model directory", dir,
                          ST_SINGLE_NAME, ST_INDEX_NAME);
    }
    if (rc != QD_OK) {
        qd_st_model_close(m);
        return rc;
    }
    *out = m;
    return QD_OK;
}

size_t qd_st_model_count(const qd_st_model *m) { return m ? m->n : 0; }

const qd_st_entry *qd_st_model_get(const qd_st_model *m, size_t i) {
    return m && i < m->n ? m->all[i] : NULL;
}

const qd_st_entry *qd_st_model_find(const qd_st_model *m, const char *name) {
    if (!m || !name) return NULL;
    return find_sorted(m->by_name, m->n, name);
}

size_t qd_st_model_shard_count(const qd_st_model *m) { return m ? m->n_shards : 0; }

const qd_st_file *qd_st_model_shard(const qd_st_model *m, size_t i) {
    return m && i < m->n_shards ? m->shards[i] : NULL;
}
