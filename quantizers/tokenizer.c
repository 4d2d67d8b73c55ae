/*
 * tokenizer.c - the llama2.c tokenizer (tokenizer.bin) behind the qd_tokenizer interface, and
 * the helpers that turn a text file into an input_ids token set.
 *
 * DESIGN
 * A qd_tokenizer is a kind, a const ops table and the kind's state. The public functions
 * validate arguments, then dispatch through the ops table, so a Hugging Face tokenizer.json
 * BPE becomes one more ops table and one more branch in qd_tokenizer_load().
 *
 * llama2.c kind. Pieces live in one NUL-separated arena; `sorted` lists (piece, id) sorted by
 * bytes then id, so lookup is a binary search that returns the lowest id among duplicates.
 *
 * Merging follows llama2.c's encode exactly but not its O(n^2) loop: llama2.c rescans every
 * adjacent pair after each merge and takes the best score, leftmost on ties. Here the
 * candidate pairs sit in a max-heap ordered by (score desc, position of the left symbol asc),
 * symbols form a linked list over their original positions, and a popped pair is used only if
 * both symbols are still alive, still adjacent and still hold the ids the pair was built from
 * (a merge changes the left symbol's id and kills the right one, so stale pairs are skipped).
 * The pair popped is therefore always the pair llama2.c's scan would pick, in O(n log n). Like
 * llama2.c, the merge candidate is the concatenation of the two PIECES (so "<0xC3>" +
 * "<0xA9>" is the string "<0xC3><0xA9>", which no vocabulary holds), not of the text bytes.
 * (llama2.c also never merges a pair scoring <= -1e10, its initial best score; quantd has no
 * such cut-off. No real vocabulary has scores that low.)
 */
#include "tokenizer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fsutil.h"
#include "safetensors.h"

/* ---- the tokenizer object --------------------------------------------------------------- */

/* A growable id list. */
typedef struct ids_buf {
    int32_t *v;
    size_t n, cap;
} ids_buf;

/* A growable byte string. */
typedef struct str_buf {
    char *v;
    size_t n, cap;
} str_buf;

typedef struct tok_ops {
    const char *name;
    /* Append the ids of text (no BOS; the kind adds its own prefix conventions). */
    qd_err (*encode)(const qd_tokenizer *t, const char *text, size_t len, ids_buf *out,
                     qd_error *err);
    /* Append the text of one id (in range, not BOS/EOS); after_bos: the previous id was BOS. */
    qd_err (*decode_piece)(const qd_tokenizer *t, int32_t id, bool after_bos, str_buf *out,
                           qd_error *err);
    /* Raw piece bytes of an id in range. */
    const char *(*piece)(const qd_tokenizer *t, int32_t id, size_t *len);
    int32_t (*find)(const qd_tokenizer *t, const char *piece, size_t len);
    void (*done)(qd_tokenizer *t); /* free the kind's state */
} tok_ops;

typedef struct l2c_piece {
    size_t off; /* into arena */
    size_t len;
    float score;
} l2c_piece;

typedef struct l2c_sorted {
    const char *bytes;
    size_t len;
    int32_t id;
} l2c_sorted;

typedef struct l2c_state {
    char *arena;         /* every piece, each followed by a NUL */
    l2c_piece *pieces;   /* [vocab_size] */
    l2c_sorted *sorted;  /* [vocab_size], by (bytes, id) */
    size_t max_piece;    /* longest piece actually present */
    bool byte_fallback;  /* ids 3..258 are "<0x00>".."<0xFF>" */
} l2c_state;

struct qd_tokenizer {
    qd_tokenizer_kind kind;
    const tok_ops *ops;
    int vocab_size;
    int32_t bos_id, eos_id;
    bool byte_fallback;
    union {
        l2c_state l2c;
    } u;
};

/* ---- small buffers ---------------------------------------------------------------------- */

static qd_err ids_push(ids_buf *b, int32_t id, qd_error *err) {
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        int32_t *v = realloc(b->v, cap * sizeof *v);
        if (!v) return qd_error_set(err, QD_ERR_NOMEM, "tokenizer: out of memory (%zu ids)", cap);
        b->v = v;
        b->cap = cap;
    }
    b->v[b->n++] = id;
    return QD_OK;
}

static qd_err str_append(str_buf *b, const char *s, size_t len, qd_error *err) {
    if (len > SIZE_MAX - b->n - 1)
        return qd_error_set(err, QD_ERR_TOO_LARGE, "tokenizer: decoded text too large");
    if (b->n + len + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + len + 1) cap *= 2;
        char *v = realloc(b->v, cap);
        if (!v) return qd_error_set(err, QD_ERR_NOMEM, "tokenizer: out of memory (%zu bytes)",
                                    cap);
        b->v = v;
        b->cap = cap;
    }
    memcpy(b->v + b->n, s, len);
    b->n += len;
    b->v[b->n] = '\0';
    return QD_OK;
}

/* ---- llama2.c: lookup ------------------------------------------------------------------- */

static int cmp_bytes(const char *a, size_t alen, const char *b, size_t blen) {
    size_t m = alen < blen ? alen : blen;
    int c = m ? memcmp(a, b, m) : 0;
    if (c) return c;
    return alen < blen ? -1 : alen > blen ? 1 : 0;
}

static int cmp_sorted(const void *pa, const void *pb) {
    const l2c_sorted *a = pa, *b = pb;
    int c = cmp_bytes(a->bytes, a->len, b->bytes, b->len);
    if (c) return c;
    return a->id < b->id ? -1 : a->id > b->id;
}

static int32_t l2c_find(const qd_tokenizer *t, const char *s, size_t len) {
    const l2c_sorted *v = t->u.l2c.sorted;
    size_t lo = 0, hi = (size_t)t->vocab_size; /* first entry >= s */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cmp_bytes(v[mid].bytes, v[mid].len, s, len) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < (size_t)t->vocab_size && cmp_bytes(v[lo].bytes, v[lo].len, s, len) == 0)
        return v[lo].id;
    return -1;
}

static const char *l2c_piece_bytes(const qd_tokenizer *t, int32_t id, size_t *len) {
    const l2c_piece *p = &t->u.l2c.pieces[id];
    if (len) *len = p->len;
    return t->u.l2c.arena + p->off;
}

/* ---- llama2.c: encode ------------------------------------------------------------------- */

typedef struct sym {
    int32_t id;
    size_t prev, next; /* NONE at the ends */
    bool alive;
} sym;

#define NONE ((size_t)-1)

typedef struct cand {
    float score;
    size_t left, right; /* symbol indices */
    int32_t left_id, right_id, merged_id;
} cand;

/* a ranks before b: higher score, then the leftmost pair */
static bool cand_before(const cand *a, const cand *b) {
    if (a->score != b->score) return a->score > b->score;
    return a->left < b->left;
}

typedef struct heap {
    cand *v;
    size_t n, cap;
} heap;

static qd_err heap_push(heap *h, cand c, qd_error *err) {
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 64;
        cand *v = realloc(h->v, cap * sizeof *v);
        if (!v) return qd_error_set(err, QD_ERR_NOMEM, "tokenizer: out of memory (merge heap)");
        h->v = v;
        h->cap = cap;
    }
    size_t i = h->n++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!cand_before(&c, &h->v[parent])) break;
        h->v[i] = h->v[parent];
        i = parent;
    }
    h->v[i] = c;
    return QD_OK;
}

static cand heap_pop(heap *h) {
    cand top = h->v[0];
    cand last = h->v[--h->n];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, best = i;
        const cand *bv = &last;
        if (l < h->n && cand_before(&h->v[l], bv)) {
            best = l;
            bv = &h->v[l];
        }
        if (r < h->n && cand_before(&h->v[r], bv)) best = r;
        if (best == i) break;
        h->v[i] = h->v[best];
        i = best;
    }
    if (h->n) h->v[i] = last;
    return top;
}

/* Push the pair (a, b) if their concatenated pieces are a piece. scratch holds 2*max_piece. */
static qd_err push_pair(const qd_tokenizer *t, const sym *s, size_t a, size_t b, char *scratch,
                        heap *h, qd_error *err) {
    size_t la, lb;
    const char *pa = l2c_piece_bytes(t, s[a].id, &la);
    const char *pb = l2c_piece_bytes(t, s[b].id, &lb);
    memcpy(scratch, pa, la);
    memcpy(scratch + la, pb, lb);
    int32_t id = l2c_find(t, scratch, la + lb);
    if (id < 0) return QD_OK;
    cand c = {t->u.l2c.pieces[id].score, a, b, s[a].id, s[b].id, id};
    return heap_push(h, c, err);
}

/* Length of the code-point group starting at text[i], as llama2.c groups bytes: one byte plus
 * the continuation bytes (10xxxxxx) that follow it, at most 4 bytes in all. */
static size_t utf8_group(const char *text, size_t len, size_t i) {
    size_t n = 1;
    while (i + n < len && n < 4 && ((unsigned char)text[i + n] & 0xC0) == 0x80) n++;
    return n;
}

/* Append the initial symbols of bytes[0..len) to syms. */
static qd_err l2c_symbols(const qd_tokenizer *t, const char *bytes, size_t len, sym **syms,
                          size_t *n, size_t *cap, qd_error *err) {
    for (size_t i = 0; i < len;) {
        size_t g = utf8_group(bytes, len, i);
        int32_t id = l2c_find(t, bytes + i, g);
        size_t need = id >= 0 ? 1 : t->byte_fallback ? g : 0;
        if (*n + need > *cap) {
            size_t c = *cap ? *cap : 64;
            while (c < *n + need) c *= 2;
            sym *v = realloc(*syms, c * sizeof *v);
            if (!v) return qd_error_set(err, QD_ERR_NOMEM, "tokenizer: out of memory");
            *syms = v;
            *cap = c;
        }
        for (size_t k = 0; k < need; k++) {
            sym *s = &(*syms)[*n];
            s->id = id >= 0 ? id : 3 + (unsigned char)bytes[i + k];
            s->prev = *n ? *n - 1 : NONE;
            s->next = NONE;
            s->alive = true;
            if (*n) (*syms)[*n - 1].next = *n;
            (*n)++;
        }
        i += g;
    }
    return QD_OK;
}

static qd_err l2c_encode(const qd_tokenizer *t, const char *text, size_t len, ids_buf *out,
                         qd_error *err) {
    if (len == 0) return QD_OK;
    sym *s = NULL;
    size_t n = 0, cap = 0;
    heap h = {0};
    char *scratch = NULL;
    qd_err rc;

    /* dummy prefix: sentencepiece's add_dummy_prefix, a space in front of the text */
    if ((rc = l2c_symbols(t, " ", 1, &s, &n, &cap, err)) != QD_OK) goto done;
    if ((rc = l2c_symbols(t, text, len, &s, &n, &cap, err)) != QD_OK) goto done;
    /* the prefix symbols and the text symbols form one list */
    scratch = malloc(2 * t->u.l2c.max_piece + 1);
    if (!scratch) {
        rc = qd_error_set(err, QD_ERR_NOMEM, "tokenizer: out of memory");
        goto done;
    }
    for (size_t i = 0; i + 1 < n; i++)
        if ((rc = push_pair(t, s, i, i + 1, scratch, &h, err)) != QD_OK) goto done;

    while (h.n) {
        cand c = heap_pop(&h);
        sym *a = &s[c.left], *b = &s[c.right];
        if (!a->alive || !b->alive || a->next != c.right || a->id != c.left_id ||
            b->id != c.right_id)
            continue; /* stale: one side merged since this pair was queued */
        a->id = c.merged_id;
        b->alive = false;
        a->next = b->next;
        if (b->next != NONE) s[b->next].prev = c.left;
        if (a->prev != NONE && (rc = push_pair(t, s, a->prev, c.left, scratch, &h, err)))
            goto done;
        if (a->next != NONE && (rc = push_pair(t, s, c.left, a->next, scratch, &h, err)))
            goto done;
    }
    for (size_t i = n ? 0 : NONE; i != NONE; i = s[i].next)
        if ((rc = ids_push(out, s[i].id, err)) != QD_OK) goto done;
    rc = QD_OK;
done:
    free(s);
    free(h.v);
    free(scratch);
    return rc;
}

/* ---- llama2.c: decode ------------------------------------------------------------------- */

static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* "<0xNN>" -> the byte; -1 for any other piece */
static int byte_piece(const char *p, size_t len) {
    if (len != 6 || memcmp(p, "<0x", 3) != 0 || p[5] != '>') return -1;
    int hi = hex_digit(p[3]), lo = hex_digit(p[4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

static qd_err l2c_decode_piece(const qd_tokenizer *t, int32_t id, bool after_bos, str_buf *out,
                               qd_error *err) {
    size_t len;
    const char *p = l2c_piece_bytes(t, id, &len);
    int byte = byte_piece(p, len);
    if (byte >= 0) {
        char c = (char)byte;
        return str_append(out, &c, 1, err);
    }
    /* llama2.c: "following BOS token, sentencepiece decoder strips any leading whitespace" */
    if (after_bos && len > 0 && p[0] == ' ') {
        p++;
        len--;
    }
    return str_append(out, p, len, err);
}

static void l2c_done(qd_tokenizer *t) {
    free(t->u.l2c.arena);
    free(t->u.l2c.pieces);
    free(t->u.l2c.sorted);
}

static const tok_ops l2c_ops = {
    .name = "llama2.c tokenizer.bin",
    .encode = l2c_encode,
    .decode_piece = l2c_decode_piece,
    .piece = l2c_piece_bytes,
    .find = l2c_find,
    .done = l2c_done,
};

/* ---- llama2.c: loading ------------------------------------------------------------------ */

static uint32_t rd_u32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* an IEEE-754 binary32 stored little-endian, whatever the host's byte order */
static float f32_le(const unsigned char *p) {
    uint32_t bits = rd_u32(p);
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

qd_err qd_tokenizer_parse_llama2c(const void *buf, size_t len, int vocab_size,
                                  const char *label, qd_tokenizer **out, qd_error *err) {
    const unsigned char *b = buf;
    qd_tokenizer *t = NULL;
    l2c_state *st;
    size_t pos = 4, arena_len = 0;
    qd_err rc;

    *out = NULL;
    if (!label) label = "tokenizer.bin";
    if (!buf && len)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "%s: no data given", label);
    if (vocab_size < 3)
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "%s: vocab_size %d: a llama2.c vocabulary has at least <unk>, BOS "
                            "and EOS", label, vocab_size);
    if (len < 4)
        return qd_error_set(err, QD_ERR_FORMAT,
                            "%s: %zu bytes, too short for the max_token_length header", label,
                            len);
    uint32_t max_len = rd_u32(b);

    /* First pass: validate every record and size the arena. */
    for (int i = 0; i < vocab_size; i++) {
        if (len - pos < 8)
            return qd_error_set(err, QD_ERR_FORMAT,
                                "%s: ends inside token %d of %d (offset %zu): is vocab_size %d "
                                "right for this tokenizer?", label, i, vocab_size, pos,
                                vocab_size);
        float score = f32_le(b + pos);
        int32_t n = (int32_t)rd_u32(b + pos + 4);
        if (!isfinite(score))
            return qd_error_set(err, QD_ERR_FORMAT, "%s: token %d has a non-finite score",
                                label, i);
        if (n < 0 || (uint32_t)n > max_len)
            return qd_error_set(err, QD_ERR_FORMAT,
                                "%s: token %d has length %d, outside 0..max_token_length %u",
                                label, i, (int)n, max_len);
        pos += 8;
        if (len - pos < (size_t)n)
            return qd_error_set(err, QD_ERR_FORMAT,
                                "%s: token %d (%d bytes) runs past the end of the file", label,
                                i, (int)n);
        pos += (size_t)n;
        arena_len += (size_t)n + 1;
    }
    if (pos != len)
        return qd_error_set(err, QD_ERR_FORMAT,
                            "%s: %zu bytes left after token %d: is vocab_size %d right for "
                            "this tokenizer?", label, len - pos, vocab_size - 1, vocab_size);

    t = calloc(1, sizeof *t);
    if (!t) return qd_error_set(err, QD_ERR_NOMEM, "%s: out of memory", label);
    t->kind = QD_TOKENIZER_LLAMA2C;
    t->ops = &l2c_ops;
    t->vocab_size = vocab_size;
    t->bos_id = 1;
    t->eos_id = 2;
    st = &t->u.l2c;
    st->arena = malloc(arena_len ? arena_len : 1);
    st->pieces = calloc((size_t)vocab_size, sizeof *st->pieces);
    st->sorted = calloc((size_t)vocab_size, sizeof *st->sorted);
    if (!st->arena || !st->pieces || !st->sorted) {
        rc = qd_error_set(err, QD_ERR_NOMEM, "%s: out of memory (%d tokens)", label,
                          vocab_size);
        goto fail;
    }

    /* Second pass: copy. */
    pos = 4;
    size_t off = 0;
    for (int i = 0; i < vocab_size; i++) {
        l2c_piece *p = &st->pieces[i];
        p->score = f32_le(b + pos);
        p->len = rd_u32(b + pos + 4);
        pos += 8;
        p->off = off;
        memcpy(st->arena + off, b + pos, p->len);
        st->arena[off + p->len] = '\0';
        pos += p->len;
        off += p->len + 1;
        if (p->len > st->max_piece) st->max_piece = p->len;
        st->sorted[i] = (l2c_sorted){st->arena + p->off, p->len, i};
    }
    qsort(st->sorted, (size_t)vocab_size, sizeof *st->sorted, cmp_sorted);

    st->byte_fallback = vocab_size >= 3 + 256;
    for (int c = 0; c < 256 && st->byte_fallback; c++) {
        char want[8];
        size_t plen;
        snprintf(want, sizeof want, "<0x%02X>", c);
        const char *p = l2c_piece_bytes(t, 3 + c, &plen);
        st->byte_fallback = plen == 6 && memcmp(p, want, 6) == 0;
    }
    t->byte_fallback = st->byte_fallback;
    *out = t;
    return QD_OK;
fail:
    qd_tokenizer_free(t);
    return rc;
}

qd_err qd_tokenizer_load_llama2c(const char *path, int vocab_size, qd_tokenizer **out,
                                 qd_error *err) {
    char *buf;
    size_t len;
    *out = NULL;
    qd_err rc = qd_read_file(path, QD_TOKENIZER_MAX_FILE, &buf, &len, err);
    if (rc != QD_OK) return rc;
    rc = qd_tokenizer_parse_llama2c(buf, len, vocab_size, path, out, err);
    free(buf);
    return rc;
}

qd_err qd_tokenizer_load(const char *model_dir, int vocab_size, qd_tokenizer **out,
                         qd_error *err) {
    char path[4096];
    qd_err rc;
    *out = NULL;
    if (!model_dir) return qd_error_set(err, QD_ERR_INVALID_ARG, "no model directory given");
    if ((rc = qd_path_join(path, sizeof path, model_dir, "tokenizer.bin", err)) != QD_OK)
        return rc;
    if (qd_is_file(path)) return qd_tokenizer_load_llama2c(path, vocab_size, out, err);
    if ((rc = qd_path_join(path, sizeof path, model_dir, "tokenizer.json", err)) != QD_OK)
        return rc;
    if (qd_is_file(path))
        return qd_error_set(err, QD_ERR_UNSUPPORTED,
                            "%s: Hugging Face tokenizer.json is not supported yet (quantd reads "
                            "llama2.c's tokenizer.bin)", path);
    return qd_error_set(err, QD_ERR_NOT_FOUND,
                        "%s: no tokenizer.bin (llama2.c tokenizer) in this directory",
                        model_dir);
}

void qd_tokenizer_free(qd_tokenizer *t) {
    if (!t) return;
    if (t->ops && t->ops->done) t->ops->done(t);
    free(t);
}

/* ---- public accessors and dispatch ------------------------------------------------------ */

qd_tokenizer_kind qd_tokenizer_get_kind(const qd_tokenizer *t) { return t->kind; }
int qd_tokenizer_vocab_size(const qd_tokenizer *t) { return t->vocab_size; }
int32_t qd_tokenizer_bos_id(const qd_tokenizer *t) { return t->bos_id; }
int32_t qd_tokenizer_eos_id(const qd_tokenizer *t) { return t->eos_id; }
bool qd_tokenizer_has_byte_fallback(const qd_tokenizer *t) { return t->byte_fallback; }

const char *qd_tokenizer_piece(const qd_tokenizer *t, int32_t id, size_t *len) {
    if (id < 0 || id >= t->vocab_size) return NULL;
    return t->ops->piece(t, id, len);
}

int32_t qd_tokenizer_find(const qd_tokenizer *t, const char *piece, size_t len) {
    return t->ops->find(t, piece, len);
}

qd_err qd_tokenizer_encode(const qd_tokenizer *t, const char *text, size_t len, bool bos,
                           int32_t **ids, size_t *n, qd_error *err) {
    ids_buf b = {0};
    qd_err rc = QD_OK;
    *ids = NULL;
    *n = 0;
    if (!text && len) return qd_error_set(err, QD_ERR_INVALID_ARG, "tokenizer: no text given");
    if (bos) rc = ids_push(&b, t->bos_id, err);
    if (rc == QD_OK) rc = t->ops->encode(t, text, len, &b, err);
    if (rc != QD_OK) {
        free(b.v);
        return rc;
    }
    *ids = b.v;
    *n = b.n;
    return QD_OK;
}

qd_err qd_tokenizer_decode(const qd_tokenizer *t, const int32_t *ids, size_t n, char **text,
                           size_t *len, qd_error *err) {
    str_buf s = {0};
    bool after_bos = false;
    qd_err rc = str_append(&s, "", 0, err); /* an empty result is still a string */
    *text = NULL;
    if (len) *len = 0;
    for (size_t i = 0; i < n && rc == QD_OK; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= t->vocab_size) {
            rc = qd_error_set(err, QD_ERR_INVALID_ARG,
                              "tokenizer: id %d at position %zu is outside the vocabulary "
                              "(0..%d)", (int)id, i, t->vocab_size - 1);
            break;
        }
        if (id == t->bos_id || id == t->eos_id) {
            after_bos = id == t->bos_id;
            continue;
        }
        rc = t->ops->decode_piece(t, id, after_bos, &s, err);
        after_bos = false;
    }
    if (rc != QD_OK) {
        free(s.v);
        return rc;
    }
    *text = s.v;
    if (len) *len = s.n;
    return QD_OK;
}

/* ---- text files ------------------------------------------------------------------------- */

/* Decode one code point at text[i]; *n gets its byte length (1 for an invalid byte, whose
 * value is returned as is, so it counts as an ordinary non-space character). */
static uint32_t next_code_point(const char *text, size_t len, size_t i, size_t *n) {
    const unsigned char *p = (const unsigned char *)text + i;
    size_t left = len - i;
    *n = 1;
    if (p[0] < 0x80) return p[0];
    size_t need = (p[0] & 0xE0) == 0xC0 ? 2 : (p[0] & 0xF0) == 0xE0 ? 3
                : (p[0] & 0xF8) == 0xF0 ? 4 : 0;
    if (need == 0 || need > left) return 0xFFFFFFFFu;
    uint32_t cp = p[0] & (0x7F >> need);
    for (size_t k = 1; k < need; k++) {
        if ((p[k] & 0xC0) != 0x80) return 0xFFFFFFFFu;
        cp = cp << 6 | (p[k] & 0x3F);
    }
    *n = need;
    return cp;
}

/* Whitespace as Python's str.split() sees it, so paragraphs normalised with
 * ' '.join(p.split()) come out the same. '\n' is handled by the caller. */
static bool is_space(uint32_t c) {
    return c == ' ' || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F) || c == 0x85 ||
           c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 ||
           c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

qd_err qd_tokenizer_encode_text(const qd_tokenizer *t, const char *text, size_t len,
                                int32_t **ids, size_t *n, qd_error *err) {
    ids_buf b = {0};
    char *para = NULL;
    size_t plen = 0, i = 0;
    bool pending_space = false, line_blank = true;
    qd_err rc = QD_OK;
    *ids = NULL;
    *n = 0;
    if (!text && len) return qd_error_set(err, QD_ERR_INVALID_ARG, "tokenizer: no text given");
    para = malloc(len + 1);
    if (!para) return qd_error_set(err, QD_ERR_NOMEM, "tokenizer: out of memory (%zu bytes)",
                                   len);
    if (len >= 3 && memcmp(text, "\xEF\xBB\xBF", 3) == 0) i = 3; /* UTF-8 byte-order mark */

    /* One pass: a paragraph ends at a blank line (or the end); its words are joined by one
     * space. line_blank tracks whether the current line has shown a non-space yet. */
    while (i <= len && rc == QD_OK) {
        bool end = i == len;
        if (end || text[i] == '\n') {
            if ((end || line_blank) && plen > 0) {
                rc = t->ops->encode(t, para, plen, &b, err);
                plen = 0;
            }
            pending_space = plen > 0;
            line_blank = true;
            i++;
            continue;
        }
        size_t cl;
        uint32_t cp = next_code_point(text, len, i, &cl);
        if (is_space(cp)) {
            pending_space = plen > 0;
        } else {
            if (pending_space) para[plen++] = ' ';
            memcpy(para + plen, text + i, cl);
            plen += cl;
            pending_space = false;
            line_blank = false;
        }
        i += cl;
    }
    free(para);
    if (rc != QD_OK) {
        free(b.v);
        return rc;
    }
    *ids = b.v;
    *n = b.n;
    return QD_OK;
}

qd_err qd_token_windows(const int32_t *ids, size_t n, int rows, int seq_len, int32_t bos,
                        int32_t *out, qd_error *err) {
    if (rows < 1)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "rows is %d, must be at least 1", rows);
    if (seq_len < 2)
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "seq_len is %d, must be at least 2 (BOS and one token)", seq_len);
    size_t w = (size_t)seq_len - 1;
    if (n / w < (size_t)rows)
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "the text gives %zu tokens, enough for %zu row%s of seq_len %d "
                            "(%zu text tokens each after BOS); %d rows were asked for",
                            n, n / w, n / w == 1 ? "" : "s", seq_len, w, rows);
    size_t span = n - w; /* first token of the last window */
    for (int r = 0; r < rows; r++) {
        size_t start = 0;
        if (rows > 1) {
            /* r * span / (rows - 1) without overflowing r * span */
            size_t q = span / (size_t)(rows - 1), rem = span % (size_t)(rows - 1);
            start = (size_t)r * q + (size_t)r * rem / (size_t)(rows - 1);
        }
        int32_t *row = out + (size_t)r * (size_t)seq_len;
        row[0] = bos;
        memcpy(row + 1, ids + start, w * sizeof *ids);
    }
    return QD_OK;
}

/* ---- token sets --------------------------------------------------------------------------- */

qd_err qd_token_set_load(const char *path, int64_t max_rows, int64_t max_len, int32_t **ret,
                         int64_t *ret_rows, int64_t *ret_len, qd_error *err) {
    qd_st_file *f = NULL;
    qd_err rc = qd_st_open(path, &f, err);
    if (rc != QD_OK) return rc;
    const qd_st_entry *e = qd_st_find(f, "input_ids");
    int32_t *t = NULL;
    if (!e) {
        rc = qd_error_set(err, QD_ERR_FORMAT, "%s: no tensor 'input_ids'", path);
        goto done;
    }
    if (e->ndim != 2 || e->shape[0] <= 0 || e->shape[1] <= 0 ||
        (e->dtype != QD_DTYPE_I32 && e->dtype != QD_DTYPE_I64)) {
        char shape[96];
        rc = qd_error_set(err, QD_ERR_FORMAT,
                          "%s: input_ids must be a non-empty I32 or I64 [rows, seq_len] "
                          "tensor, found %s %s", path, qd_dtype_name(e->dtype),
                          qd_shape_str(e->ndim, e->shape, shape, sizeof shape));
        goto done;
    }
    int64_t rows = e->shape[0], len = e->shape[1];
    int64_t use_rows = max_rows > 0 && max_rows < rows ? max_rows : rows;
    int64_t use_len = max_len > 0 && max_len < len ? max_len : len;
    t = malloc((size_t)use_rows * (size_t)use_len * sizeof *t);
    if (!t) {
        rc = qd_error_set(err, QD_ERR_NOMEM, "%s: no memory for %lld tokens", path,
                          (long long)(use_rows * use_len));
        goto done;
    }
    size_t es = e->dtype == QD_DTYPE_I32 ? 4 : 8;
    const unsigned char *data = e->data;
    for (int64_t r = 0; r < use_rows && rc == QD_OK; r++) {
        for (int64_t c = 0; c < use_len; c++) {
            const unsigned char *p = data + (size_t)(r * len + c) * es;
            int64_t v;
            if (es == 4) {
                int32_t x;
                memcpy(&x, p, 4);
                v = x;
            } else {
                memcpy(&v, p, 8);
            }
            if (v < INT32_MIN || v > INT32_MAX) {
                rc = qd_error_set(err, QD_ERR_FORMAT, "%s: input_ids[%lld][%lld] = %lld does "
                                  "not fit a token id", path, (long long)r, (long long)c,
                                  (long long)v);
                break;
            }
            t[r * use_len + c] = (int32_t)v;
        }
    }
    if (rc == QD_OK) {
        *ret = t;
        *ret_rows = use_rows;
        *ret_len = use_len;
        t = NULL;
    }
done:
    free(t);
    qd_st_close(f);
    return rc;
}
