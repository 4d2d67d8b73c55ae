/*
 * yamlwalk.h - the YAML front end shared by table-driven settings files: the daemon's
 * quantd.yaml (daemon/config.c) and job specs (quantizers/spec.c).
 *
 * A caller describes its key table (dotted names such as "limits.chunk_bytes" or "awq.n_grid")
 * and gets one callback per key the text sets, with the key's row index and the value's first
 * event. The walker owns everything that is about YAML rather than about a key: the event
 * stream's shape (nothing, or one document whose root is a mapping), refusing anchors, aliases
 * and tags, nested sections walked into dotted names, unknown keys with a "did you mean"
 * hint, duplicate keys in any spelling (nested or dotted), null sections, and messages of the
 * form "label:line: key: problem".
 */
#ifndef QD_YAMLWALK_H
#define QD_YAMLWALK_H

#include <stdbool.h>
#include <stddef.h>
#include <yaml.h>

#include "error.h"

/* Longest dotted key name the walker builds; longer names cannot be keys. */
#define QD_YAML_NAME_MAX 128
/* How much of a user's text a message quotes, and the buffer qd_yaml_excerpt needs for it. */
#define QD_YAML_EXCERPT_MAX 48
#define QD_YAML_EXCERPT_BUF (QD_YAML_EXCERPT_MAX * 4 + 8)
/* Room for qd_yaml_describe's answer. */
#define QD_YAML_DESCRIBE_BUF (QD_YAML_EXCERPT_BUF + 8)

typedef struct qd_yaml_walk qd_yaml_walk;

/* Key k (its row in the table) is set to the value whose first event is ev (anchors, aliases
 * and tags already refused); kmark is where the key was written. A scalar is read with
 * qd_yaml_scalar, a list with qd_yaml_items. */
typedef qd_err (*qd_yaml_key_fn)(qd_yaml_walk *w, size_t k, const yaml_mark_t *kmark,
                                 const yaml_event_t *ev, void *ctx);

/* One string item (n counts from 1) of a list read by qd_yaml_items; mark is where it is. */
typedef qd_err (*qd_yaml_item_fn)(qd_yaml_walk *w, const char *text, size_t n,
                                  const yaml_mark_t *mark, void *ctx);

typedef struct qd_yaml_opts {
    const char *label;       /* "quantd.yaml", "job.yaml": the start of every message */
    /* The key table: count rows of stride bytes, each with a const char * dotted name at
     * name_offset. A section is any proper dotted prefix of a name. */
    const void *table;
    size_t stride, name_offset, count;
    size_t *lines;           /* out, count entries, zeroed by the caller: line each key was set */
    qd_err fail_code;        /* the code of messages about the content */
    qd_err syntax_code;      /* the code of messages about YAML syntax */
    /* A section that is not a mapping: "expected a mapping of awq keys" (true) or "expected a
     * mapping of keys (a section)" (false). */
    bool name_sections;
    qd_yaml_key_fn on_key;
    void *ctx;
} qd_yaml_opts;

/* Walk text (len bytes; NULL is empty): nothing, or one document whose root is a mapping of
 * known keys and sections. The first error ends the walk. */
qd_err qd_yaml_walk_text(const qd_yaml_opts *o, const char *text, size_t len, qd_error *err);

/* Walk text as a one-value document that is the value of key k (a built-in default): messages
 * carry no line, and o->lines is not touched. */
qd_err qd_yaml_walk_value(const qd_yaml_opts *o, size_t k, const char *text, size_t len,
                          qd_error *err);

/* Fail with "label:line: key: message" (o->fail_code); key may be NULL. */
__attribute__((format(printf, 4, 5))) qd_err qd_yaml_fail(qd_yaml_walk *w,
                                                          const yaml_mark_t *mark,
                                                          const char *key, const char *fmt, ...);

/* A key's value failed to parse with e (code rc): out of memory as it is, anything else as
 * "label:line: key: e's message". */
qd_err qd_yaml_value_error(qd_yaml_walk *w, const yaml_mark_t *mark, const char *key, qd_err rc,
                           const qd_error *e);

/* The text of scalar ev for key, or "key: expected <what>, found a list" when it is not a
 * scalar; refuses embedded NULs. */
qd_err qd_yaml_scalar(qd_yaml_walk *w, const yaml_event_t *ev, const char *key, const char *what,
                      const char **out);

/* Read the string items of the list whose SEQUENCE_START is ev, up to its end, through fn;
 * "key: expected <what>, found ..." when ev starts no list. */
qd_err qd_yaml_items(qd_yaml_walk *w, const yaml_event_t *ev, const char *key, const char *what,
                     qd_yaml_item_fn fn, void *ctx);

/* The walk's error, for messages that carry no line (out of memory). */
qd_error *qd_yaml_err(qd_yaml_walk *w);

/* "a mapping", "a list", "'text'", for "found ..." messages. buf: QD_YAML_DESCRIBE_BUF. */
const char *qd_yaml_describe(const yaml_event_t *ev, char *buf, size_t cap);

/* Up to QD_YAML_EXCERPT_MAX bytes of s (n bytes) for a message, control characters escaped,
 * "..." when cut, never cutting a UTF-8 sequence in two. Returns buf. */
const char *qd_yaml_excerpt(const char *s, size_t n, char *buf, size_t cap);

#endif /* QD_YAMLWALK_H */
