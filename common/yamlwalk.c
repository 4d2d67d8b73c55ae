/*
 * yamlwalk.c - the shared YAML walker for table-driven settings files (see yamlwalk.h).
 *
 * DESIGN
 *
 * The walker reads libyaml's event stream rather than its document tree: events carry the
 * anchor, alias and tag of every node, so those are refused where they appear (no alias
 * expansion, hence no "billion laughs"), and every error names the line of the node at fault.
 * Nested mappings are walked with the dotted prefix of their parent; a mapping is accepted only
 * where the table has keys below that prefix, so the recursion is as deep as the deepest key
 * name and no deeper, whatever the input.
 *
 * Duplicates are found by name, not by spelling: "awq: {n_grid: 1}" and "awq.n_grid: 2" set
 * the same row, so the second is refused with the line of the first. Keys are tracked in the
 * caller's lines[] (the caller wants those lines for its own messages anyway), sections in a
 * short list that lives for one walk.
 */
#include "yamlwalk.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct seen_section {
    char *name;
    size_t line;
} seen_section;

struct qd_yaml_walk {
    yaml_parser_t parser;
    const qd_yaml_opts *o;
    const char *input; /* the YAML text, for hints about the bytes at an error */
    size_t len;
    bool lines_known;  /* false for a built-in default */
    seen_section *sections; /* sections entered so far, to refuse one given twice */
    size_t n_sections;
    qd_error *err;
};

/* ---- messages -------------------------------------------------------------------------------- */

const char *qd_yaml_excerpt(const char *s, size_t n, char *buf, size_t cap) {
    size_t take = n, o = 0;
    if (take > QD_YAML_EXCERPT_MAX) {
        take = QD_YAML_EXCERPT_MAX;
        while (take > 0 && ((unsigned char)s[take] & 0xC0) == 0x80) take--;
    }
    for (size_t i = 0; i < take && o + 5 < cap; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch < 0x20 || ch == 0x7F) o += (size_t)snprintf(buf + o, cap - o, "\\x%02x", ch);
        else buf[o++] = (char)ch;
    }
    if (take < n && o + 4 < cap) {
        memcpy(buf + o, "...", 3);
        o += 3;
    }
    buf[o < cap ? o : cap - 1] = '\0';
    return buf;
}

const char *qd_yaml_describe(const yaml_event_t *ev, char *buf, size_t cap) {
    switch (ev->type) {
    case YAML_MAPPING_START_EVENT: return "a mapping";
    case YAML_SEQUENCE_START_EVENT: return "a list";
    case YAML_ALIAS_EVENT: return "an alias";
    case YAML_SCALAR_EVENT: {
        char q[QD_YAML_EXCERPT_BUF];
        snprintf(buf, cap, "'%s'",
                 qd_yaml_excerpt((const char *)ev->data.scalar.value, ev->data.scalar.length, q,
                                 sizeof q));
        return buf;
    }
    default: return "something else";
    }
}

static const char *quote(const yaml_char_t *s, char *buf, size_t cap) {
    return qd_yaml_excerpt((const char *)s, strlen((const char *)s), buf, cap);
}

qd_error *qd_yaml_err(qd_yaml_walk *w) { return w->err; }

qd_err qd_yaml_fail(qd_yaml_walk *w, const yaml_mark_t *mark, const char *key, const char *fmt,
                    ...) {
    char msg[QD_ERROR_MSG_MAX], where[64] = "";
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (w->lines_known && mark) snprintf(where, sizeof where, ":%zu", mark->line + 1);
    return qd_error_set(w->err, w->o->fail_code, "%s%s: %s%s%s", w->o->label, where,
                        key ? key : "", key ? ": " : "", msg);
}

qd_err qd_yaml_value_error(qd_yaml_walk *w, const yaml_mark_t *mark, const char *key, qd_err rc,
                           const qd_error *e) {
    if (rc == QD_ERR_NOMEM) return qd_error_set(w->err, rc, "%s: %s", key, e->msg);
    return qd_yaml_fail(w, mark, key, "%s", e->msg);
}

/* 1-based line of byte offset off in the input. */
static size_t line_at(const qd_yaml_walk *w, size_t off) {
    size_t line = 1;
    for (size_t i = 0; i < off && i < w->len; i++)
        if (w->input[i] == '\n') line++;
    return line;
}

/* Whether line line0 (0-based) of the input has a tab in its indentation: libyaml's message
 * for that ("found character that cannot start any token") does not say so. Its marks count
 * characters, not bytes, so look the line up rather than the offset. */
static bool line_indented_with_tab(const qd_yaml_walk *w, size_t line0) {
    size_t i = 0;
    for (size_t l = 0; l < line0 && i < w->len; i++)
        if (w->input[i] == '\n') l++;
    for (; i < w->len && (w->input[i] == ' ' || w->input[i] == '\t'); i++)
        if (w->input[i] == '\t') return true;
    return false;
}

static qd_err syntax_error(qd_yaml_walk *w) {
    const yaml_parser_t *p = &w->parser;
    const char *label = w->o->label;
    if (p->error == YAML_MEMORY_ERROR)
        return qd_error_set(w->err, QD_ERR_NOMEM, "%s: out of memory while parsing", label);
    const char *problem = p->problem ? p->problem : "malformed YAML";
    if (p->error == YAML_READER_ERROR)
        return qd_error_set(w->err, w->o->syntax_code,
                            "%s:%zu: not valid YAML text: %s (byte %zu)", label,
                            line_at(w, p->problem_offset), problem, p->problem_offset);
    const char *hint = line_indented_with_tab(w, p->problem_mark.line)
                           ? "; YAML cannot indent with tabs, use spaces"
                           : "";
    char ctx[96] = "";
    if (p->context)
        snprintf(ctx, sizeof ctx, " (%s at line %zu)", p->context, p->context_mark.line + 1);
    return qd_error_set(w->err, w->o->syntax_code, "%s:%zu: invalid YAML: %s%s%s", label,
                        p->problem_mark.line + 1, problem, ctx, hint);
}

/* ---- events ---------------------------------------------------------------------------------- */

static qd_err next_event(qd_yaml_walk *w, yaml_event_t *ev) {
    if (!yaml_parser_parse(&w->parser, ev)) return syntax_error(w);
    return QD_OK;
}

/* Read the next event and require it to be of type t (libyaml guarantees the stream's shape;
 * this keeps a surprise from being read as something else). */
static qd_err expect_event(qd_yaml_walk *w, yaml_event_type_t t) {
    yaml_event_t ev;
    qd_err rc = next_event(w, &ev);
    if (rc != QD_OK) return rc;
    if (ev.type != t) rc = qd_yaml_fail(w, &ev.start_mark, NULL, "unexpected YAML structure");
    yaml_event_delete(&ev);
    return rc;
}

/* Refuse aliases, anchors and tags: settings files are plain data, and an alias can make a
 * small file expand into a huge one. */
static qd_err check_props(qd_yaml_walk *w, const yaml_event_t *ev, const char *key) {
    const yaml_char_t *anchor = NULL, *tag = NULL;
    char q[QD_YAML_EXCERPT_BUF];
    switch (ev->type) {
    case YAML_ALIAS_EVENT:
        return qd_yaml_fail(w, &ev->start_mark, key,
                            "aliases are not supported (*%s); write the value out",
                            quote(ev->data.alias.anchor, q, sizeof q));
    case YAML_SCALAR_EVENT:
        anchor = ev->data.scalar.anchor;
        tag = ev->data.scalar.tag;
        break;
    case YAML_SEQUENCE_START_EVENT:
        anchor = ev->data.sequence_start.anchor;
        tag = ev->data.sequence_start.tag;
        break;
    case YAML_MAPPING_START_EVENT:
        anchor = ev->data.mapping_start.anchor;
        tag = ev->data.mapping_start.tag;
        break;
    default: break;
    }
    if (anchor)
        return qd_yaml_fail(w, &ev->start_mark, key, "anchors are not supported (&%s)",
                            quote(anchor, q, sizeof q));
    if (tag)
        return qd_yaml_fail(w, &ev->start_mark, key, "tags are not supported (%s)",
                            quote(tag, q, sizeof q));
    return QD_OK;
}

/* The text of a scalar event, refusing embedded NULs (a "\0" escape) that C strings would cut. */
static qd_err scalar_text(qd_yaml_walk *w, const yaml_event_t *ev, const char *key,
                          const char **out) {
    const char *s = (const char *)ev->data.scalar.value;
    if (strlen(s) != ev->data.scalar.length)
        return qd_yaml_fail(w, &ev->start_mark, key, "contains a NUL character");
    *out = s;
    return QD_OK;
}

qd_err qd_yaml_scalar(qd_yaml_walk *w, const yaml_event_t *ev, const char *key, const char *what,
                      const char **out) {
    char found[QD_YAML_DESCRIBE_BUF];
    if (ev->type != YAML_SCALAR_EVENT)
        return qd_yaml_fail(w, &ev->start_mark, key, "expected %s, found %s", what,
                            qd_yaml_describe(ev, found, sizeof found));
    return scalar_text(w, ev, key, out);
}

qd_err qd_yaml_items(qd_yaml_walk *w, const yaml_event_t *ev, const char *key, const char *what,
                     qd_yaml_item_fn fn, void *ctx) {
    char found[QD_YAML_DESCRIBE_BUF];
    if (ev->type != YAML_SEQUENCE_START_EVENT)
        return qd_yaml_fail(w, &ev->start_mark, key, "expected %s, found %s", what,
                            qd_yaml_describe(ev, found, sizeof found));
    for (size_t n = 1;; n++) {
        yaml_event_t item;
        qd_err rc = next_event(w, &item);
        if (rc != QD_OK) return rc;
        if (item.type == YAML_SEQUENCE_END_EVENT) {
            yaml_event_delete(&item);
            return QD_OK;
        }
        const char *text = NULL;
        rc = check_props(w, &item, key);
        if (rc == QD_OK && item.type != YAML_SCALAR_EVENT)
            rc = qd_yaml_fail(w, &item.start_mark, key, "item %zu: expected a string, found %s",
                              n, qd_yaml_describe(&item, found, sizeof found));
        if (rc == QD_OK) rc = scalar_text(w, &item, key, &text);
        if (rc == QD_OK) rc = fn(w, text, n, &item.start_mark, ctx);
        yaml_event_delete(&item);
        if (rc != QD_OK) return rc;
    }
}

/* ---- the key table --------------------------------------------------------------------------- */

static const char *name_at(const qd_yaml_opts *o, size_t i) {
    return *(const char *const *)((const char *)o->table + i * o->stride + o->name_offset);
}

static bool find_key(const qd_yaml_opts *o, const char *name, size_t *k) {
    for (size_t i = 0; i < o->count; i++) {
        if (strcmp(name_at(o, i), name) == 0) {
            *k = i;
            return true;
        }
    }
    return false;
}

/* Whether name (n bytes) is a section: some key's name continues it with '.'. */
static bool is_section(const qd_yaml_opts *o, const char *name, size_t n) {
    for (size_t i = 0; i < o->count; i++)
        if (strncmp(name_at(o, i), name, n) == 0 && name_at(o, i)[n] == '.') return true;
    return false;
}

/* Edit distance between a and b (both at most QD_YAML_NAME_MAX bytes). */
static size_t edit_distance(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b), row[QD_YAML_NAME_MAX + 1];
    if (la > QD_YAML_NAME_MAX || lb > QD_YAML_NAME_MAX) return SIZE_MAX;
    for (size_t j = 0; j <= lb; j++) row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j], best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best) best = up + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

/* The known key or section closest to the unknown name, if close enough to be a typo; else the
 * key whose last part is the same (a key written outside its section, or in the wrong one);
 * else NULL. */
static const char *suggest(const qd_yaml_opts *o, const char *name, char *buf, size_t cap) {
    size_t len = strlen(name);
    size_t allowed = len <= 3 ? 1 : len <= 11 ? 2 : 3, best = SIZE_MAX;
    char cand[QD_YAML_NAME_MAX];
    for (size_t i = 0; i < o->count; i++) {
        const char *kn = name_at(o, i);
        /* The key itself, then each of its sections ("limits" of "limits.chunk_bytes"). */
        for (size_t end = strlen(kn);;) {
            snprintf(cand, sizeof cand, "%.*s", (int)end, kn);
            size_t d = edit_distance(name, cand);
            if (d < best && d <= allowed) {
                best = d;
                snprintf(buf, cap, "%s", cand);
            }
            while (end > 0 && kn[end - 1] != '.') end--;
            if (end == 0) break;
            end--;
        }
    }
    if (best != SIZE_MAX) return buf;
    const char *leaf = strrchr(name, '.');
    leaf = leaf ? leaf + 1 : name;
    for (size_t i = 0; i < o->count; i++) {
        const char *kl = strrchr(name_at(o, i), '.');
        if (strcmp(kl ? kl + 1 : name_at(o, i), leaf) == 0) {
            snprintf(buf, cap, "%s", name_at(o, i));
            return buf;
        }
    }
    return NULL;
}

/* ---- the walk -------------------------------------------------------------------------------- */

static qd_err walk_mapping(qd_yaml_walk *w, const char *prefix);

/* The value of section `full` (whose key is at kmark); vev is its first event. */
static qd_err enter_section(qd_yaml_walk *w, const char *full, const yaml_mark_t *kmark,
                            const yaml_event_t *vev) {
    char found[QD_YAML_DESCRIBE_BUF];
    for (size_t i = 0; i < w->n_sections; i++)
        if (strcmp(w->sections[i].name, full) == 0)
            return qd_yaml_fail(w, kmark, full, "duplicate key (first at line %zu)",
                                w->sections[i].line);
    seen_section *grown = realloc(w->sections, (w->n_sections + 1) * sizeof *grown);
    if (!grown) return qd_error_set(w->err, QD_ERR_NOMEM, "%s: out of memory", full);
    w->sections = grown;
    if (!(grown[w->n_sections].name = strdup(full)))
        return qd_error_set(w->err, QD_ERR_NOMEM, "%s: out of memory", full);
    grown[w->n_sections++].line = kmark->line + 1;

    qd_err rc = check_props(w, vev, full);
    if (rc != QD_OK) return rc;
    if (vev->type == YAML_MAPPING_START_EVENT) return walk_mapping(w, full);
    /* A section whose keys are all commented out reads as null: that is no keys at all. */
    if (vev->type == YAML_SCALAR_EVENT && vev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE) {
        const char *t = (const char *)vev->data.scalar.value;
        if (t[0] == '\0' || strcmp(t, "~") == 0 || strcmp(t, "null") == 0) return QD_OK;
    }
    const char *what = qd_yaml_describe(vev, found, sizeof found);
    if (w->o->name_sections)
        return qd_yaml_fail(w, &vev->start_mark, full, "expected a mapping of %s keys, found %s",
                            full, what);
    return qd_yaml_fail(w, &vev->start_mark, full,
                        "expected a mapping of keys (a section), found %s", what);
}

/* One key: value pair of the mapping under prefix ("" at the top); kev is the key's event. */
static qd_err walk_entry(qd_yaml_walk *w, const char *prefix, const yaml_event_t *kev) {
    char found[QD_YAML_DESCRIBE_BUF], full[QD_YAML_NAME_MAX], hint[QD_YAML_NAME_MAX];
    char q[QD_YAML_EXCERPT_BUF];
    const char *ctx = prefix[0] ? prefix : NULL;
    qd_err rc = check_props(w, kev, ctx);
    if (rc != QD_OK) return rc;
    if (kev->type != YAML_SCALAR_EVENT)
        return qd_yaml_fail(w, &kev->start_mark, ctx, "expected a key name, found %s",
                            qd_yaml_describe(kev, found, sizeof found));
    const char *key = NULL;
    if ((rc = scalar_text(w, kev, ctx, &key)) != QD_OK) return rc;
    int n = snprintf(full, sizeof full, "%s%s%s", prefix, prefix[0] ? "." : "", key);
    bool fits = n >= 0 && (size_t)n < sizeof full;

    size_t k = 0;
    bool known = fits && find_key(w->o, full, &k);
    bool section = !known && fits && is_section(w->o, full, (size_t)n);
    if (!known && !section) {
        /* (a name too long for full was cut by snprintf; the excerpt is shorter anyway) */
        const char *s = fits ? suggest(w->o, full, hint, sizeof hint) : NULL;
        return qd_yaml_fail(w, &kev->start_mark, qd_yaml_excerpt(full, strlen(full), q, sizeof q),
                            "unknown key%s%s%s", s ? " (did you mean '" : "", s ? s : "",
                            s ? "'?)" : "");
    }

    yaml_event_t vev;
    if ((rc = next_event(w, &vev)) != QD_OK) return rc;
    if (section) {
        rc = enter_section(w, full, &kev->start_mark, &vev);
    } else if (w->o->lines[k]) {
        rc = qd_yaml_fail(w, &kev->start_mark, full, "duplicate key (first at line %zu)",
                          w->o->lines[k]);
    } else {
        w->o->lines[k] = kev->start_mark.line + 1;
        rc = check_props(w, &vev, full);
        if (rc == QD_OK) rc = w->o->on_key(w, k, &kev->start_mark, &vev, w->o->ctx);
    }
    yaml_event_delete(&vev);
    return rc;
}

/* The entries of a mapping whose MAPPING_START was just read, up to its MAPPING_END. */
static qd_err walk_mapping(qd_yaml_walk *w, const char *prefix) {
    for (;;) {
        yaml_event_t kev;
        qd_err rc = next_event(w, &kev);
        if (rc != QD_OK) return rc;
        if (kev.type == YAML_MAPPING_END_EVENT) {
            yaml_event_delete(&kev);
            return QD_OK;
        }
        rc = walk_entry(w, prefix, &kev);
        yaml_event_delete(&kev);
        if (rc != QD_OK) return rc;
    }
}

/* The whole stream: nothing, or one document whose root is a mapping (or empty). */
static qd_err walk_stream(qd_yaml_walk *w) {
    yaml_event_t ev;
    char found[QD_YAML_DESCRIBE_BUF];
    qd_err rc = expect_event(w, YAML_STREAM_START_EVENT);
    if (rc != QD_OK) return rc;
    if ((rc = next_event(w, &ev)) != QD_OK) return rc;
    yaml_event_type_t t = ev.type;
    yaml_event_delete(&ev);
    if (t == YAML_STREAM_END_EVENT) return QD_OK; /* empty, or only comments */

    if ((rc = next_event(w, &ev)) != QD_OK) return rc;
    rc = check_props(w, &ev, NULL);
    if (rc == QD_OK) {
        if (ev.type == YAML_MAPPING_START_EVENT) rc = walk_mapping(w, "");
        else if (!(ev.type == YAML_SCALAR_EVENT && ev.data.scalar.length == 0 &&
                   ev.data.scalar.style == YAML_PLAIN_SCALAR_STYLE))
            rc = qd_yaml_fail(w, &ev.start_mark, NULL,
                              "the top level must be a mapping of keys, found %s",
                              qd_yaml_describe(&ev, found, sizeof found));
    }
    yaml_event_delete(&ev);
    if (rc != QD_OK) return rc;

    if ((rc = expect_event(w, YAML_DOCUMENT_END_EVENT)) != QD_OK) return rc;
    if ((rc = next_event(w, &ev)) != QD_OK) return rc;
    if (ev.type != YAML_STREAM_END_EVENT)
        rc = qd_yaml_fail(w, &ev.start_mark, NULL, "only one YAML document is allowed");
    yaml_event_delete(&ev);
    return rc;
}

/* A one-value document, the value of key k. */
static qd_err walk_value(qd_yaml_walk *w, size_t k) {
    yaml_event_t ev;
    qd_err rc = expect_event(w, YAML_STREAM_START_EVENT);
    if (rc == QD_OK) rc = expect_event(w, YAML_DOCUMENT_START_EVENT);
    if (rc == QD_OK) rc = next_event(w, &ev);
    if (rc != QD_OK) return rc;
    rc = check_props(w, &ev, name_at(w->o, k));
    if (rc == QD_OK) rc = w->o->on_key(w, k, &ev.start_mark, &ev, w->o->ctx);
    yaml_event_delete(&ev);
    if (rc == QD_OK) rc = expect_event(w, YAML_DOCUMENT_END_EVENT);
    if (rc == QD_OK) rc = expect_event(w, YAML_STREAM_END_EVENT);
    return rc;
}

/* Run walk_stream (k == SIZE_MAX) or walk_value(k) over text. */
static qd_err run(const qd_yaml_opts *o, size_t k, const char *text, size_t len, qd_error *err) {
    qd_yaml_walk w = {.o = o, .input = text ? text : "", .len = text ? len : 0,
                      .lines_known = k == SIZE_MAX, .err = err};
    if (!yaml_parser_initialize(&w.parser))
        return qd_error_set(err, QD_ERR_NOMEM, "%s: out of memory", o->label);
    yaml_parser_set_input_string(&w.parser, (const unsigned char *)w.input, w.len);
    qd_err rc = k == SIZE_MAX ? walk_stream(&w) : walk_value(&w, k);
    yaml_parser_delete(&w.parser);
    for (size_t i = 0; i < w.n_sections; i++) free(w.sections[i].name);
    free(w.sections);
    return rc;
}

qd_err qd_yaml_walk_text(const qd_yaml_opts *o, const char *text, size_t len, qd_error *err) {
    return run(o, SIZE_MAX, text, len, err);
}

qd_err qd_yaml_walk_value(const qd_yaml_opts *o, size_t k, const char *text, size_t len,
                          qd_error *err) {
    return run(o, k, text, len, err);
}
