/*
 * config.h - the daemon's configuration: one table of keys, a YAML loader, a dump and the
 * reference docs, all driven by that table.
 *
 * A config file is a YAML mapping. Nested mappings give dotted key names, so
 * `limits: {chunk_bytes: 1MiB}` and `limits.chunk_bytes: 1MiB` set the same key. Keys the file
 * does not set keep their defaults; an empty file means all defaults. Every value is read as
 * text by its key's type (int, size, duration, ...), never by YAML's implicit typing.
 *
 * Usage:
 *     qd_config cfg = {0};
 *     qd_error err = {0};
 *     if (qd_config_load(path, &cfg, &err) != QD_OK) { report qd_error_text(&err); }
 *     ... cfg.limits.chunk_bytes ...
 *     qd_config_free(&cfg);
 *
 * Loading into a config that already holds values replaces it only on success, so a reload
 * that fails keeps the old config in place (nginx's reload discipline).
 *
 * Adding a key: one field in struct qd_config and one row in the table in config.c; then
 * regenerate docs/config.md with `quantd config keys --markdown` (test-config checks it).
 */
#ifndef QD_CONFIG_H
#define QD_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "error.h"

/* The words of log_level, in this order (the field holds the index). */
enum qd_config_log_level {
    QD_CONFIG_LOG_ERROR,
    QD_CONFIG_LOG_WARNING,
    QD_CONFIG_LOG_NOTICE,
    QD_CONFIG_LOG_INFO,
    QD_CONFIG_LOG_DEBUG,
};

/*
 * The effective configuration. Field paths mirror the dotted key names. Owns its strings and
 * lists: release with qd_config_free(). Zero-initialise before the first load.
 */
typedef struct qd_config {
    char **listen; /* "unix:/abs/path", "host:port" or "[v6]:port" */
    size_t n_listen;
    char *data_dir; /* absolute */
    char **model_roots; /* absolute directories Quantize may read models from by path */
    size_t n_model_roots;
    int log_level;  /* enum qd_config_log_level */
    struct {
        int64_t cpu;     /* CPU workers */
        int64_t threads; /* threads per CPU job; 0 = all cores */
    } workers;
    char **devices; /* "auto", "cpu" or "cuda:N" */
    size_t n_devices;
    struct {
        uint64_t max_message_bytes;
        uint64_t chunk_bytes;
        uint64_t memory_quota;
        int64_t max_concurrent_streams;
        uint64_t max_upload_bytes;
        int64_t max_queued_jobs;
    } limits;
    struct {
        uint64_t max_bytes; /* 0 = unlimited */
    } cache;
    struct {
        char *default_path; /* key calibration.default: a token file; NULL = none */
    } calibration;
    struct {
        int64_t drain_seconds;
    } shutdown;
    struct {
        char *cert;      /* PEM server certificate chain; NULL = plaintext */
        char *key;       /* PEM private key of cert */
        char *client_ca; /* PEM CAs client certificates must chain to; set = mutual TLS */
    } tls;
    bool allow_insecure_remote; /* plaintext on an address other than loopback or unix */
    struct {
        char **tokens; /* "ROLE:SHA256HEX[:NAME]" */
        size_t n_tokens;
        char *token_file; /* one such entry per line; NULL = none */
    } auth;
    struct {
        char *listen;      /* "IPV4:PORT", "[IPV6]:PORT" or "localhost:PORT"; NULL = no endpoint */
        bool allow_remote; /* listen on an address other than loopback */
    } metrics;
} qd_config;

/* The roles a bearer token grants, each including the ones before it. */
typedef enum qd_config_role {
    QD_ROLE_READ,   /* Get*, List*, Watch*, StatModel, GetServerInfo, Health */
    QD_ROLE_SUBMIT, /* + PutModel, Quantize, CancelJob */
    QD_ROLE_ADMIN,  /* + DeleteArtifact */
} qd_config_role;

/* One parsed auth entry "ROLE:SHA256HEX[:NAME]". */
typedef struct qd_config_token {
    qd_config_role role;
    unsigned char sha256[32];
    char name[64]; /* "" when the entry names none */
} qd_config_token;

/* How a key's value is written and which C type its field has. */
typedef enum qd_config_type {
    QD_CFG_STRING,   /* char *, any text */
    QD_CFG_PATH,     /* char *, an absolute path */
    QD_CFG_BOOL,     /* bool */
    QD_CFG_INT,      /* int64_t, decimal, in [min, max] */
    QD_CFG_SIZE,     /* uint64_t bytes: "1048576", "64MiB", "100GB"; in [min, max] */
    QD_CFG_DURATION, /* int64_t seconds: "30", "30s", "5m", "2h"; in [min, max] */
    QD_CFG_ENUM,     /* int, index into words */
    QD_CFG_LIST,     /* char ** plus a size_t count: a YAML sequence of strings */
} qd_config_type;

/* Key flags. A reloadable key may change on SIGHUP; an immutable one needs a restart. An
 * optional PATH or STRING key may be unset (NULL): its default is written "" and so is an unset
 * value in a file or a dump. */
#define QD_CFG_IMMUTABLE 0u
#define QD_CFG_RELOADABLE (1u << 0)
#define QD_CFG_OPTIONAL (1u << 1)

/* One row of the key table. */
typedef struct qd_config_key {
    const char *name; /* dotted: "limits.chunk_bytes" */
    qd_config_type type;
    unsigned flags;      /* QD_CFG_RELOADABLE or QD_CFG_IMMUTABLE */
    size_t offset;       /* of the field in qd_config */
    size_t count_offset; /* QD_CFG_LIST: of the size_t item count */
    /* The default, written as in a config file and parsed by the same code. NULL when the
     * default is computed at load time by default_fn (which may find none: QD_ERR_NOT_FOUND);
     * def_doc then says how, for humans. */
    const char *def;
    qd_err (*default_fn)(char **out, qd_error *err);
    const char *def_doc;
    int64_t min, max;         /* INT, SIZE, DURATION: the accepted range */
    const char *const *words; /* ENUM: the accepted words, NULL-terminated */
    /* STRING, PATH, LIST (each item): extra validation; fills err with "expected ..., got ..."
     * (optional). allowed describes what it accepts, for humans. */
    qd_err (*check)(const char *value, qd_error *err);
    const char *allowed;
    const char *help; /* one line */
} qd_config_key;

/* ---- the table ------------------------------------------------------------------------------- */

size_t qd_config_key_count(void);
/* Row i (i < qd_config_key_count()), or NULL. Borrowed; static. */
const qd_config_key *qd_config_key_at(size_t i);
/* The row named name ("limits.chunk_bytes"), or NULL. */
const qd_config_key *qd_config_key_find(const char *name);
/* "int", "size", "string list", ... */
const char *qd_config_type_name(qd_config_type type);

/* ---- loading --------------------------------------------------------------------------------- */

/*
 * Fill c with every key's default (c's old contents are not freed: pass a zeroed or freed
 * struct). data_dir comes from qd_config_default_data_dir() and stays NULL if none can be
 * found; qd_config_validate() then reports it. Fails only on allocation failure (and on a
 * bad default in the table, which the tests rule out). On failure c holds no allocations.
 */
qd_err qd_config_init_defaults(qd_config *c, qd_error *err);

/*
 * Parse a YAML config of len bytes (need not be NUL-terminated), apply it over the defaults
 * and validate the result. label names the input in messages ("quantd.yaml:7: key: ...").
 * *out must be zeroed or hold an earlier config: on success its old contents are freed and
 * replaced; on failure it is untouched and nothing is leaked. Errors are QD_ERR_CONFIG
 * (QD_ERR_NOMEM on allocation failure).
 */
qd_err qd_config_parse(const char *yaml, size_t len, const char *label, qd_config *out,
                       qd_error *err);

/* qd_config_parse() of the file at path (labelled path). File errors keep their codes
 * (QD_ERR_NOT_FOUND, QD_ERR_IO, QD_ERR_TOO_LARGE above 1 MiB). */
qd_err qd_config_load(const char *path, qd_config *out, qd_error *err);

/* The cross-key rules (chunk_bytes leaves framing room below max_message_bytes, data_dir is
 * set and absolute, listen is not empty, ...), for a config built other than by parsing. */
qd_err qd_config_validate(const qd_config *c, qd_error *err);

/* Free everything c owns and zero it. Accepts NULL and half-built configs. */
void qd_config_free(qd_config *c);

/*
 * The default data_dir, for the daemon and for the table: the first of $STATE_DIRECTORY (set
 * by systemd for StateDirectory=; its first entry if several), $XDG_STATE_HOME/quantd and
 * $HOME/.local/state/quantd that is absolute. *out is malloc'd (caller frees).
 * QD_ERR_NOT_FOUND if none applies.
 */
qd_err qd_config_default_data_dir(char **out, qd_error *err);

/* ---- single values (exposed for tests and for command-line overrides) ------------------------ */

/* Each accepts the whole of text or fails with "expected ..., got '...'" (QD_ERR_CONFIG). */
qd_err qd_config_parse_int(const char *text, int64_t *out, qd_error *err);
qd_err qd_config_parse_size(const char *text, uint64_t *out, qd_error *err);
qd_err qd_config_parse_duration(const char *text, int64_t *out, qd_error *err);
qd_err qd_config_parse_bool(const char *text, bool *out, qd_error *err);
/* Shortest exact text for a size ("64MiB", "100GB", "1000") or duration ("30s", "5m", "2h"),
 * which the parsers above read back to the same value. */
void qd_config_format_size(uint64_t bytes, char *buf, size_t cap);
void qd_config_format_duration(int64_t seconds, char *buf, size_t cap);

/* ---- security ----------------------------------------------------------------------------- */

/* Parse one auth entry "ROLE:SHA256HEX[:NAME]" (ROLE read, submit or admin; 64 hex digits;
 * NAME up to 63 printable characters without ':'). Messages never quote the hash. */
qd_err qd_config_parse_token(const char *text, qd_config_token *out, qd_error *err);
/* "read", "submit", "admin". */
const char *qd_config_role_name(qd_config_role role);
/* Whether a listen address is local: unix:, a 127.x.x.x or ::1 literal, or localhost. */
bool qd_config_listen_is_local(const char *addr);

/* ---- comparing (the reload path) ------------------------------------------------------------- */

/* Whether key i has the same value in a and b. */
bool qd_config_key_equal(const qd_config *a, const qd_config *b, size_t i);
/* Whether every key has the same value. */
bool qd_config_equal(const qd_config *a, const qd_config *b);
/* The immutable keys whose values differ between old_cfg and new_cfg (a reload logs them as
 * ignored until restart): stores up to cap names (static strings), returns how many differ. */
size_t qd_config_immutable_changes(const qd_config *old_cfg, const qd_config *new_cfg,
                                   const char **names, size_t cap);

/* ---- output ---------------------------------------------------------------------------------- */

/* c as YAML with every key, each preceded by a comment with its help, type, range, reload
 * flag and default. Parsing the output gives back an equal config. */
void qd_config_dump(const qd_config *c, FILE *out);
/* The key table as text, one key per entry (`quantd config keys`). */
void qd_config_write_keys(FILE *out);
/* The reference document docs/config.md (`quantd config keys --markdown`). */
void qd_config_write_markdown(FILE *out);

#endif /* QD_CONFIG_H */
