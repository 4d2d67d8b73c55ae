/*
 * config.c - the daemon's configuration: the key table, the YAML loader, the cross-key rules,
 * the dump and the reference document.
 *
 * DESIGN
 *
 * One static const table, config_keys[], holds a row per key (redis' standardConfig): dotted
 * name, type, reload flag, offset of the field in struct qd_config, default, range or words,
 * an optional per-value check, and a line of help. Everything else is driven by the table:
 * the loader finds rows by name, the dump and both kinds of docs walk it in order, and the
 * reload path compares configs row by row. The FIELD_ macro checks at compile time that each
 * row's field has the C type its key type stores, so a row cannot write the wrong field width.
 *
 * Defaults are written as config text and go through the very code that reads the file (a
 * one-value YAML document per row), so a default that its own key would refuse cannot ship:
 * qd_config_init_defaults() fails and the tests see it. data_dir is the one computed default.
 *
 * The loader is common/yamlwalk.c, shared with job specs: it walks libyaml's events, refuses
 * anchors, aliases and tags, turns nested sections into dotted names, finds unknown and
 * duplicate keys, and hands each key's value to apply_value() here. Every error names the line
 * of the node at fault; the first error ends the walk.
 *
 * qd_config_parse() builds a whole new struct (defaults, then the file, then the cross-key
 * rules) and swaps it into the caller's only when all of that succeeded, so a failed load or
 * reload leaves the old config in place and frees everything it built.
 */
#include "config.h"

#include <arpa/inet.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/un.h>
#include <yaml.h>

#include "fsutil.h"
#include "yamlwalk.h"

#define KIB ((int64_t)1 << 10)
#define MIB ((int64_t)1 << 20)
#define TIB ((int64_t)1 << 40)

/* Sizes stop at INT64_MAX so that every size fits an off_t. */
#define SIZE_NO_LIMIT INT64_MAX
/* Config files are hand-written; anything bigger is a mistake (or an attack). */
#define CFG_FILE_MAX ((size_t)1 << 20)
/* Most items a list key takes: far more than any real listen/devices list. */
#define CFG_LIST_MAX 256
/* Room a chunk message needs above its payload for the gRPC and protobuf framing and the
 * chunk's metadata. Modest on purpose: with the smallest max_message_bytes (64KiB) there must
 * still be a valid chunk_bytes (4KiB..48KiB). */
#define FRAMING_KIB 16
#define FRAMING_BYTES ((uint64_t)FRAMING_KIB << 10)
#define STR_(x) #x
#define XSTR_(x) STR_(x)
/* Highest N accepted in "cuda:N". */
#define CUDA_DEVICE_MAX 1023

/* ---- quoting user text in messages ----------------------------------------------------------- */

/* (quotes go through qd_yaml_excerpt, the same as the loader's messages) */
#define EXCERPT_BUF QD_YAML_EXCERPT_BUF

/* "expected <what>, got '<text>'<why>" (QD_ERR_CONFIG); the caller adds where. */
static qd_err expected(qd_error *err, const char *what, const char *text, const char *why) {
    char q[EXCERPT_BUF];
    return qd_error_set(err, QD_ERR_CONFIG, "expected %s, got '%s'%s", what,
                        qd_yaml_excerpt(text, strlen(text), q, sizeof q), why ? why : "");
}

/* ---- scalar parsers -------------------------------------------------------------------------- */

/* Read the decimal digits at *p into *out and advance *p past them. false if there are none.
 * *overflow is set when the number does not fit in 64 bits (the digits are still consumed). */
static bool read_digits(const char **p, uint64_t *out, bool *overflow) {
    const char *s = *p;
    uint64_t v = 0;
    bool of = false;
    if (*s < '0' || *s > '9') return false;
    for (; *s >= '0' && *s <= '9'; s++) {
        unsigned d = (unsigned)(*s - '0');
        if (v > (UINT64_MAX - d) / 10) of = true;
        else v = v * 10 + d;
    }
    *p = s;
    *out = v;
    *overflow = of;
    return true;
}

qd_err qd_config_parse_int(const char *text, int64_t *out, qd_error *err) {
    const char *p = text;
    bool neg = false, of;
    uint64_t v;
    if (*p == '-') {
        neg = true;
        p++;
    }
    if (!read_digits(&p, &v, &of) || *p != '\0') return expected(err, "an integer", text, NULL);
    uint64_t limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    if (of || v > limit) return expected(err, "an integer", text, ", which is too large");
    if (neg) *out = v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v;
    else *out = (int64_t)v;
    return QD_OK;
}

/* Units a size may carry. The formatter tries them in this order and skips `alias` rows. */
static const struct {
    const char *unit;
    uint64_t mult;
    bool alias;
} size_units[] = {
    {"PiB", (uint64_t)1 << 50, false},
    {"TiB", (uint64_t)1 << 40, false},
    {"GiB", (uint64_t)1 << 30, false},
    {"MiB", (uint64_t)1 << 20, false},
    {"KiB", (uint64_t)1 << 10, false},
    {"PB", UINT64_C(1000000000000000), false},
    {"TB", UINT64_C(1000000000000), false},
    {"GB", UINT64_C(1000000000), false},
    {"MB", UINT64_C(1000000), false},
    {"kB", UINT64_C(1000), false},
    {"KB", UINT64_C(1000), true},
    {"B", 1, true},
};

#define SIZE_EXPECTED "a size such as 1MiB"

qd_err qd_config_parse_size(const char *text, uint64_t *out, qd_error *err) {
    const char *p = text;
    uint64_t v, mult = 1;
    bool of;
    if (!read_digits(&p, &v, &of)) return expected(err, SIZE_EXPECTED, text, NULL);
    while (*p == ' ') p++;
    if (*p != '\0') {
        size_t i;
        for (i = 0; i < sizeof size_units / sizeof size_units[0]; i++)
            if (strcmp(p, size_units[i].unit) == 0) break;
        if (i == sizeof size_units / sizeof size_units[0])
            return expected(err, SIZE_EXPECTED, text, NULL);
        mult = size_units[i].mult;
    } else if (p != text && p[-1] == ' ') {
        return expected(err, SIZE_EXPECTED, text, NULL);
    }
    if (of || v > (uint64_t)SIZE_NO_LIMIT / mult)
        return expected(err, SIZE_EXPECTED, text, ", which is too large");
    *out = v * mult;
    return QD_OK;
}

#define DURATION_EXPECTED "a duration such as 30s, 5m or 2h"

qd_err qd_config_parse_duration(const char *text, int64_t *out, qd_error *err) {
    const char *p = text;
    uint64_t v, mult = 1;
    bool of;
    if (!read_digits(&p, &v, &of)) return expected(err, DURATION_EXPECTED, text, NULL);
    while (*p == ' ') p++;
    if (strcmp(p, "s") == 0) mult = 1;
    else if (strcmp(p, "m") == 0) mult = 60;
    else if (strcmp(p, "h") == 0) mult = 3600;
    else if (*p != '\0' || (p != text && p[-1] == ' '))
        return expected(err, DURATION_EXPECTED, text, NULL);
    if (of || v > (uint64_t)INT64_MAX / mult)
        return expected(err, DURATION_EXPECTED, text, ", which is too large");
    *out = (int64_t)(v * mult);
    return QD_OK;
}

qd_err qd_config_parse_bool(const char *text, bool *out, qd_error *err) {
    static const char *const yes[] = {"true", "yes", "on"};
    static const char *const no[] = {"false", "no", "off"};
    for (size_t i = 0; i < 3; i++) {
        if (strcasecmp(text, yes[i]) == 0) {
            *out = true;
            return QD_OK;
        }
        if (strcasecmp(text, no[i]) == 0) {
            *out = false;
            return QD_OK;
        }
    }
    return expected(err, "true or false", text, NULL);
}

void qd_config_format_size(uint64_t bytes, char *buf, size_t cap) {
    char best[32];
    snprintf(best, sizeof best, "%" PRIu64, bytes);
    /* A unit wins a tie with the plain number: "4KiB" reads better than "4096". */
    size_t best_len = strlen(best) + 1;
    for (size_t i = 0; bytes != 0 && i < sizeof size_units / sizeof size_units[0]; i++) {
        if (size_units[i].alias || bytes % size_units[i].mult != 0) continue;
        char cand[32];
        snprintf(cand, sizeof cand, "%" PRIu64 "%s", bytes / size_units[i].mult,
                 size_units[i].unit);
        if (strlen(cand) < best_len) {
            memcpy(best, cand, sizeof best);
            best_len = strlen(cand);
        }
    }
    snprintf(buf, cap, "%s", best);
}

void qd_config_format_duration(int64_t seconds, char *buf, size_t cap) {
    if (seconds != 0 && seconds % 3600 == 0) snprintf(buf, cap, "%" PRId64 "h", seconds / 3600);
    else if (seconds != 0 && seconds % 60 == 0) snprintf(buf, cap, "%" PRId64 "m", seconds / 60);
    else snprintf(buf, cap, "%" PRId64 "s", seconds);
}

/* ---- per-value checks ------------------------------------------------------------------------ */

static bool parse_port(const char *s) {
    uint64_t v;
    bool of;
    if (!read_digits(&s, &v, &of) || *s != '\0') return false;
    return !of && v <= 65535;
}

#define LISTEN_EXPECTED "'unix:/absolute/path', 'host:port' or '[v6]:port' (port 0..65535)"

/* A gRPC listen address as the daemon accepts it. */
static qd_err check_listen(const char *v, qd_error *err) {
    if (strncmp(v, "unix:", 5) == 0) {
        const char *path = v + 5;
        if (path[0] != '/' || path[1] == '\0')
            return expected(err, "'unix:' followed by an absolute socket path", v, NULL);
        if (strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path))
            return expected(err, "a unix socket path shorter than 108 bytes", v, NULL);
        return QD_OK;
    }
    if (v[0] == '[') {
        const char *close = strchr(v, ']');
        if (!close || close[1] != ':' || !parse_port(close + 2))
            return expected(err, LISTEN_EXPECTED, v, NULL);
        char addr[INET6_ADDRSTRLEN + 1];
        size_t n = (size_t)(close - v - 1);
        const char *zone = memchr(v + 1, '%', n);
        if (zone) {
            if (zone + 1 == close) return expected(err, "an IPv6 address", v, NULL);
            n = (size_t)(zone - v - 1);
        }
        struct in6_addr a6;
        if (n == 0 || n >= sizeof addr) return expected(err, "an IPv6 address", v, NULL);
        memcpy(addr, v + 1, n);
        addr[n] = '\0';
        if (inet_pton(AF_INET6, addr, &a6) != 1)
            return expected(err, "an IPv6 address in brackets", v, NULL);
        return QD_OK;
    }
    const char *colon = strrchr(v, ':');
    if (!colon || colon == v) return expected(err, LISTEN_EXPECTED, v, NULL);
    if (memchr(v, ':', (size_t)(colon - v)))
        return expected(err, "an IPv6 address in brackets, such as '[::1]:7433'", v, NULL);
    for (const char *h = v; h < colon; h++) {
        char ch = *h;
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                  (ch >= '0' && ch <= '9') || ch == '.' || ch == '-' || ch == '_';
        if (!ok) return expected(err, "a host name or IPv4 address before ':port'", v, NULL);
    }
    if (!parse_port(colon + 1))
        return expected(err, "a port 0..65535 after the host (0 picks a free port)", v, NULL);
    return QD_OK;
}

#define METRICS_LISTEN_EXPECTED "'IPV4:PORT', '[IPV6]:PORT' or 'localhost:PORT' (port 0..65535)"

/* A metrics.listen address: an IP literal or localhost, never a name to resolve (the endpoint
 * binds one socket, and which address a name gives is not the operator's choice), and no unix
 * socket (Prometheus scrapes over TCP). daemon/metrics.c parses the same forms to bind. */
static qd_err check_metrics_listen(const char *v, qd_error *err) {
    char host[INET6_ADDRSTRLEN + 1];
    const char *start = v, *end, *port;
    if (v[0] == '[') {
        start = v + 1;
        end = strchr(v, ']');
        if (!end || end[1] != ':') return expected(err, METRICS_LISTEN_EXPECTED, v, NULL);
        port = end + 2;
    } else {
        end = strrchr(v, ':');
        if (!end) return expected(err, METRICS_LISTEN_EXPECTED, v, NULL);
        if (memchr(v, ':', (size_t)(end - v)))
            return expected(err, "an IPv6 address in brackets, such as '[::1]:7434'", v, NULL);
        port = end + 1;
    }
    size_t n = (size_t)(end - start);
    if (n == 0 || n >= sizeof host) return expected(err, METRICS_LISTEN_EXPECTED, v, NULL);
    memcpy(host, start, n);
    host[n] = '\0';
    if (!parse_port(port))
        return expected(err, "a port 0..65535 after the host (0 picks a free port)", v, NULL);
    struct in_addr a4;
    struct in6_addr a6;
    if (v[0] == '[') {
        if (inet_pton(AF_INET6, host, &a6) != 1)
            return expected(err, "an IPv6 address in brackets (no zone)", v, NULL);
    } else if (strcmp(host, "localhost") != 0 && inet_pton(AF_INET, host, &a4) != 1) {
        return expected(err, "an IPv4 address or localhost before ':port' (names are not "
                        "resolved)", v, NULL);
    }
    return QD_OK;
}

/* An absolute path (model_roots items). Roots are compared after realpath(), at use. */
static qd_err check_abs_path(const char *v, qd_error *err) {
    if (v[0] != '/')
        return expected(err, "an absolute path", v, v[0] == '~' ? " (~ is not expanded)" : NULL);
    if (strlen(v) >= PATH_MAX) return expected(err, "a path shorter than PATH_MAX", v, NULL);
    return QD_OK;
}

/* "auto", "cpu" or "cuda:N" (N without leading zeros, so that equal devices compare equal). */
static qd_err check_device(const char *v, qd_error *err) {
    if (strcmp(v, "auto") == 0 || strcmp(v, "cpu") == 0) return QD_OK;
    if (strncmp(v, "cuda:", 5) == 0) {
        const char *p = v + 5;
        uint64_t n;
        bool of;
        if (read_digits(&p, &n, &of) && *p == '\0' && !of && n <= CUDA_DEVICE_MAX &&
            !(v[5] == '0' && v[6] != '\0'))
            return QD_OK;
    }
    return expected(err, "'auto', 'cpu' or 'cuda:N'", v, NULL);
}

/* ---- auth entries ------------------------------------------------------------------------- */

static const char *const role_words[] = {"read", "submit", "admin", NULL};

const char *qd_config_role_name(qd_config_role role) {
    return role >= QD_ROLE_READ && role <= QD_ROLE_ADMIN ? role_words[role] : "?";
}

static int hex_value(char ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

#define TOKEN_EXPECTED "'ROLE:SHA256HEX[:NAME]' (ROLE read, submit or admin)"

/* The messages quote the role and the name, never the hash: a hash is not a secret, but a
 * token pasted by mistake where its hash belongs is, and must not reach a log. */
qd_err qd_config_parse_token(const char *text, qd_config_token *out, qd_error *err) {
    memset(out, 0, sizeof *out);
    const char *colon = strchr(text, ':');
    if (!colon)
        return qd_error_set(err, QD_ERR_CONFIG, "expected " TOKEN_EXPECTED ", got no ':'");
    size_t rl = (size_t)(colon - text);
    int role = -1;
    for (int i = 0; role_words[i]; i++)
        if (strlen(role_words[i]) == rl && strncmp(text, role_words[i], rl) == 0) role = i;
    if (role < 0) {
        char q[EXCERPT_BUF];
        return qd_error_set(err, QD_ERR_CONFIG, "expected a role read, submit or admin, got '%s'",
                            qd_yaml_excerpt(text, rl, q, sizeof q));
    }
    const char *h = colon + 1;
    size_t hl = strcspn(h, ":");
    if (hl != 64)
        return qd_error_set(err, QD_ERR_CONFIG, "%s: expected the token's sha256 as 64 hex "
                            "digits, got %zu characters (store the hash, never the token)",
                            role_words[role], hl);
    for (size_t i = 0; i < 32; i++) {
        int hi = hex_value(h[2 * i]), lo = hex_value(h[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return qd_error_set(err, QD_ERR_CONFIG, "%s: the sha256 has a character that is not "
                                "a hex digit", role_words[role]);
        out->sha256[i] = (unsigned char)(hi * 16 + lo);
    }
    if (h[hl] == ':') {
        const char *name = h + hl + 1;
        size_t nl = strlen(name);
        bool ok = nl > 0 && nl < sizeof out->name;
        for (size_t i = 0; ok && i < nl; i++)
            ok = name[i] > ' ' && name[i] < 0x7f && name[i] != ':';
        if (!ok)
            return qd_error_set(err, QD_ERR_CONFIG, "%s: expected a NAME of 1..%zu printable "
                                "characters without ':' or spaces after the hash",
                                role_words[role], sizeof out->name - 1);
        memcpy(out->name, name, nl + 1);
    }
    out->role = (qd_config_role)role;
    return QD_OK;
}

static qd_err check_token(const char *v, qd_error *err) {
    qd_config_token t;
    return qd_config_parse_token(v, &t, err);
}

bool qd_config_listen_is_local(const char *addr) {
    if (strncmp(addr, "unix:", 5) == 0) return true;
    char host[INET6_ADDRSTRLEN + 1];
    const char *end;
    const char *start = addr;
    if (addr[0] == '[') {
        start = addr + 1;
        end = strchr(addr, ']');
    } else {
        end = strrchr(addr, ':');
    }
    if (!end || (size_t)(end - start) >= sizeof host) return false;
    memcpy(host, start, (size_t)(end - start));
    host[end - start] = '\0';
    if (strcmp(host, "localhost") == 0) return true;
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, host, &a4) == 1) return (ntohl(a4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, host, &a6) == 1) return IN6_IS_ADDR_LOOPBACK(&a6);
    return false;
}

/* The first absolute directory of: $STATE_DIRECTORY's first entry, $XDG_STATE_HOME/quantd,
 * $HOME/.local/state/quantd. Relative values are ignored, as the XDG spec asks. */
qd_err qd_config_default_data_dir(char **out, qd_error *err) {
    static const struct {
        const char *var;
        const char *suffix;
    } candidates[] = {
        {"STATE_DIRECTORY", ""},
        {"XDG_STATE_HOME", "/quantd"},
        {"HOME", "/.local/state/quantd"},
    };
    *out = NULL;
    for (size_t i = 0; i < sizeof candidates / sizeof candidates[0]; i++) {
        const char *base = getenv(candidates[i].var);
        if (!base || base[0] != '/') continue;
        /* systemd joins several StateDirectory= entries with ':'. */
        size_t n = i == 0 ? strcspn(base, ":") : strlen(base);
        while (n > 1 && base[n - 1] == '/') n--;
        const char *suffix = candidates[i].suffix;
        if (n == 1 && suffix[0] == '/') n = 0; /* "/" + "/quantd" */
        size_t sl = strlen(suffix);
        char *s = malloc(n + sl + 1);
        if (!s) return qd_error_set(err, QD_ERR_NOMEM, "data_dir: out of memory");
        memcpy(s, base, n);
        memcpy(s + n, suffix, sl + 1);
        *out = s;
        return QD_OK;
    }
    return qd_error_set(err, QD_ERR_NOT_FOUND,
                        "no default data_dir: $STATE_DIRECTORY, $XDG_STATE_HOME and $HOME are "
                        "all unset or relative");
}

/* ---- the table ------------------------------------------------------------------------------- */

static const char *const log_level_words[] = {"error", "warning", "notice", "info", "debug", NULL};

/* offsetof(qd_config, field), refusing to compile unless the field has type ctype. */
#define FIELD_(field, ctype) _Generic(((qd_config *)0)->field, ctype: offsetof(qd_config, field))

#define KEY_LIST(field, nfield, flags_, def_, check_, allowed_, help_)                         \
    {.name = #field, .type = QD_CFG_LIST, .flags = flags_, .offset = FIELD_(field, char **), \
     .count_offset = FIELD_(nfield, size_t), .def = def_, .check = check_,                  \
     .allowed = allowed_, .help = help_}
#define KEY_PATH(field, flags_, def_, deffn_, defdoc_, help_)                                  \
    {.name = #field, .type = QD_CFG_PATH, .flags = flags_, .offset = FIELD_(field, char *),  \
     .def = def_, .default_fn = deffn_, .def_doc = defdoc_, .allowed = "absolute path",     \
     .help = help_}
#define KEY_STRING(field, flags_, def_, check_, allowed_, help_)                               \
    {.name = #field, .type = QD_CFG_STRING, .flags = flags_, .offset = FIELD_(field, char *), \
     .def = def_, .check = check_, .allowed = allowed_, .help = help_}
#define KEY_BOOL(field, flags_, def_, help_)                                                    \
    {.name = #field, .type = QD_CFG_BOOL, .flags = flags_, .offset = FIELD_(field, bool),    \
     .def = def_, .help = help_}
#define KEY_ENUM(field, flags_, def_, words_, help_)                                            \
    {.name = #field, .type = QD_CFG_ENUM, .flags = flags_, .offset = FIELD_(field, int),     \
     .def = def_, .words = words_, .help = help_}
#define KEY_INT(field, flags_, def_, lo, hi, help_)                                             \
    {.name = #field, .type = QD_CFG_INT, .flags = flags_, .offset = FIELD_(field, int64_t),  \
     .def = def_, .min = lo, .max = hi, .help = help_}
#define KEY_SIZE(field, flags_, def_, lo, hi, help_)                                            \
    {.name = #field, .type = QD_CFG_SIZE, .flags = flags_, .offset = FIELD_(field, uint64_t), \
     .def = def_, .min = lo, .max = hi, .help = help_}
#define KEY_DURATION(field, flags_, def_, lo, hi, help_)                                       \
    {.name = #field, .type = QD_CFG_DURATION, .flags = flags_,                                \
     .offset = FIELD_(field, int64_t), .def = def_, .min = lo, .max = hi, .help = help_}

/* An optional string: unset (NULL) by default, "" unsets it; check_ sees only set values. */
#define KEY_OPT_STRING(field, flags_, check_, allowed_, help_)                                 \
    {.name = #field, .type = QD_CFG_STRING, .flags = (flags_) | QD_CFG_OPTIONAL,              \
     .offset = FIELD_(field, char *), .def = "\"\"", .def_doc = "none", .check = check_,     \
     .allowed = allowed_, .help = help_}

/* An optional path: unset (NULL) by default, "" unsets it. */
#define KEY_OPT_PATH(field, flags_, help_)                                                     \
    {.name = #field, .type = QD_CFG_PATH, .flags = (flags_) | QD_CFG_OPTIONAL,                \
     .offset = FIELD_(field, char *), .def = "\"\"", .def_doc = "none",                      \
     .allowed = "absolute path, or \"\" for none", .help = help_}

#define IMMUTABLE QD_CFG_IMMUTABLE
#define RELOADABLE QD_CFG_RELOADABLE

/* Keys that share a dotted prefix must be adjacent: the dump writes each section once. */
static const qd_config_key config_keys[] = {
    KEY_LIST(listen, n_listen, IMMUTABLE, "[\"127.0.0.1:7433\"]", check_listen,
             "unix:/absolute/path, host:port or [v6]:port",
             "Addresses the gRPC server listens on."),
    KEY_PATH(data_dir, IMMUTABLE, NULL, qd_config_default_data_dir,
             "$STATE_DIRECTORY, else $XDG_STATE_HOME/quantd, else $HOME/.local/state/quantd",
             "Directory for the job database, the artifact cache and uploads."),
    KEY_ENUM(log_level, RELOADABLE, "info", log_level_words, "Least severe messages logged."),
    KEY_INT(workers.cpu, IMMUTABLE, "1", 0, 256,
            "Jobs that run at once on the CPU; 0 leaves all jobs to GPUs."),
    KEY_INT(workers.threads, RELOADABLE, "0", 0, 1024,
            "Threads each CPU job uses; 0 uses every core."),
    KEY_LIST(devices, n_devices, IMMUTABLE, "[auto]", check_device, "auto, cpu, cuda:N",
             "Devices jobs run on; auto means every CUDA GPU found, else the CPU."),
    KEY_LIST(model_roots, n_model_roots, IMMUTABLE, "[]", check_abs_path, "absolute paths",
             "Directories whose models Quantize may read by path; empty = none."),
    KEY_SIZE(limits.max_message_bytes, IMMUTABLE, "8MiB", 64 * KIB, 256 * MIB,
             "Largest gRPC message the server receives or sends."),
    KEY_SIZE(limits.chunk_bytes, RELOADABLE, "1MiB", 4 * KIB, 64 * MIB,
             "Payload of each chunk when weights and artifacts are streamed."),
    KEY_SIZE(limits.memory_quota, IMMUTABLE, "512MiB", 16 * MIB, TIB,
             "Memory the gRPC server may use for its buffers (its resource quota)."),
    KEY_INT(limits.max_concurrent_streams, IMMUTABLE, "256", 1, 100000,
            "gRPC streams one client connection may have open at once."),
    KEY_SIZE(limits.max_upload_bytes, RELOADABLE, "2TiB", 1, SIZE_NO_LIMIT,
             "Largest model a client may upload."),
    KEY_INT(limits.max_queued_jobs, RELOADABLE, "1024", 1, 100000,
            "Jobs that may wait in the queue; further jobs are refused."),
    KEY_SIZE(cache.max_bytes, RELOADABLE, "100GiB", 0, SIZE_NO_LIMIT,
             "Disk space for cached artifacts, least recently used evicted first; 0 = unlimited."),
    /* "default" is a C keyword, so this row names its field by hand. */
    {.name = "calibration.default", .type = QD_CFG_PATH, .flags = IMMUTABLE | QD_CFG_OPTIONAL,
     .offset = FIELD_(calibration.default_path, char *), .def = "\"\"",
     .def_doc = "none", .allowed = "absolute path, or \"\" for none",
     .help = "Token file used when a job names no calibration set; unset = none."},
    KEY_DURATION(shutdown.drain_seconds, RELOADABLE, "30s", 0, 86400,
                 "On SIGTERM, how long running jobs may go on before they are cancelled."),
    KEY_OPT_PATH(tls.cert, IMMUTABLE,
                 "PEM certificate chain of the server; set = TLS on every TCP address."),
    KEY_OPT_PATH(tls.key, IMMUTABLE, "PEM private key of tls.cert; re-read on SIGHUP."),
    KEY_OPT_PATH(tls.client_ca, IMMUTABLE,
                 "PEM CA certificates; set = clients must present a certificate they signed."),
    KEY_BOOL(allow_insecure_remote, IMMUTABLE, "false",
             "Allow plaintext listen addresses other than loopback and unix sockets."),
    KEY_LIST(auth.tokens, auth.n_tokens, RELOADABLE, "[]", check_token, "ROLE:SHA256HEX[:NAME]",
             "Bearer tokens, by sha256: ROLE read, submit or admin; empty with no file = open."),
    KEY_OPT_PATH(auth.token_file, RELOADABLE,
                 "File of more auth.tokens entries, one per line, # comments; re-read on SIGHUP."),
    KEY_OPT_STRING(metrics.listen, IMMUTABLE, check_metrics_listen,
                   "IPV4:PORT, [IPV6]:PORT, localhost:PORT, or \"\" for none",
                   "HTTP address of the Prometheus /metrics endpoint; unset = none; not reloaded."),
    KEY_BOOL(metrics.allow_remote, IMMUTABLE, "false",
             "Allow metrics.listen on an address other than loopback (plain HTTP, no auth)."),
};

#define N_KEYS (sizeof config_keys / sizeof config_keys[0])

size_t qd_config_key_count(void) { return N_KEYS; }

const qd_config_key *qd_config_key_at(size_t i) { return i < N_KEYS ? &config_keys[i] : NULL; }

const qd_config_key *qd_config_key_find(const char *name) {
    for (size_t i = 0; i < N_KEYS; i++)
        if (strcmp(config_keys[i].name, name) == 0) return &config_keys[i];
    return NULL;
}

const char *qd_config_type_name(qd_config_type type) {
    switch (type) {
    case QD_CFG_STRING: return "string";
    case QD_CFG_PATH: return "path";
    case QD_CFG_BOOL: return "bool";
    case QD_CFG_INT: return "int";
    case QD_CFG_SIZE: return "size";
    case QD_CFG_DURATION: return "duration";
    case QD_CFG_ENUM: return "enum";
    case QD_CFG_LIST: return "string list";
    }
    return "?";
}

/* "0..256", "4KiB..64MiB", "error, warning, ...": what a key accepts, for messages and docs. */
static void range_text(const qd_config_key *k, char *buf, size_t cap) {
    char lo[32], hi[32];
    switch (k->type) {
    case QD_CFG_INT:
        snprintf(buf, cap, "%" PRId64 "..%" PRId64, k->min, k->max);
        return;
    case QD_CFG_SIZE:
        qd_config_format_size((uint64_t)k->min, lo, sizeof lo);
        qd_config_format_size((uint64_t)k->max, hi, sizeof hi);
        if (k->max != SIZE_NO_LIMIT) snprintf(buf, cap, "%s..%s", lo, hi);
        else if (k->min == 0) snprintf(buf, cap, "any");
        else snprintf(buf, cap, "%s or more", lo);
        return;
    case QD_CFG_DURATION:
        qd_config_format_duration(k->min, lo, sizeof lo);
        qd_config_format_duration(k->max, hi, sizeof hi);
        snprintf(buf, cap, "%s..%s", lo, hi);
        return;
    case QD_CFG_ENUM: {
        size_t o = 0;
        buf[0] = '\0';
        for (size_t i = 0; k->words[i] && o < cap; i++)
            o += (size_t)snprintf(buf + o, cap - o, "%s%s", i ? ", " : "", k->words[i]);
        return;
    }
    case QD_CFG_BOOL:
        snprintf(buf, cap, "true, false");
        return;
    case QD_CFG_STRING:
    case QD_CFG_PATH:
    case QD_CFG_LIST:
        snprintf(buf, cap, "%s", k->allowed ? k->allowed : "any");
        return;
    }
    snprintf(buf, cap, "?");
}

/* ---- fields ---------------------------------------------------------------------------------- */

static void *field_of(qd_config *c, const qd_config_key *k) { return (char *)c + k->offset; }
static const void *cfield_of(const qd_config *c, const qd_config_key *k) {
    return (const char *)c + k->offset;
}

typedef union cfg_value {
    char *str;  /* STRING, PATH: malloc'd */
    bool b;     /* BOOL */
    int64_t i;  /* INT, DURATION */
    uint64_t u; /* SIZE */
    int e;      /* ENUM */
} cfg_value;

static void free_list(char **items, size_t n) {
    for (size_t i = 0; i < n; i++) free(items[i]);
    free(items);
}

static void free_field(qd_config *c, const qd_config_key *k) {
    void *f = field_of(c, k);
    if (k->type == QD_CFG_STRING || k->type == QD_CFG_PATH) {
        free(*(char **)f);
        *(char **)f = NULL;
    } else if (k->type == QD_CFG_LIST) {
        size_t *n = (size_t *)((char *)c + k->count_offset);
        free_list(*(char ***)f, *n);
        *(char ***)f = NULL;
        *n = 0;
    }
}

/* Store v in c's field for k, taking ownership of v->str. */
static void store(qd_config *c, const qd_config_key *k, cfg_value *v) {
    void *f = field_of(c, k);
    switch (k->type) {
    case QD_CFG_STRING:
    case QD_CFG_PATH:
        free(*(char **)f);
        *(char **)f = v->str;
        v->str = NULL;
        break;
    case QD_CFG_BOOL: *(bool *)f = v->b; break;
    case QD_CFG_INT:
    case QD_CFG_DURATION: *(int64_t *)f = v->i; break;
    case QD_CFG_SIZE: *(uint64_t *)f = v->u; break;
    case QD_CFG_ENUM: *(int *)f = v->e; break;
    case QD_CFG_LIST: break; /* stored by apply_list */
    }
}

/* "a size such as 1MiB", ...: what a value of k looks like, for "expected ..." messages. */
static const char *expect_text(const qd_config_key *k, char *buf, size_t cap) {
    switch (k->type) {
    case QD_CFG_STRING: return "a string";
    case QD_CFG_PATH: return "an absolute path";
    case QD_CFG_BOOL: return "true or false";
    case QD_CFG_INT: return "an integer";
    case QD_CFG_SIZE: return SIZE_EXPECTED;
    case QD_CFG_DURATION: return DURATION_EXPECTED;
    case QD_CFG_ENUM: {
        char words[256];
        range_text(k, words, sizeof words);
        snprintf(buf, cap, "one of %s", words);
        return buf;
    }
    case QD_CFG_LIST:
        snprintf(buf, cap, "a list such as %s", k->def ? k->def : "[\"a\", \"b\"]");
        return buf;
    }
    return "a value";
}

/* Parse one scalar value of k (text is NUL-terminated) into *v, range and check included.
 * Messages are "expected ..., got '...'"; the caller adds where. */
static qd_err parse_scalar(const qd_config_key *k, const char *text, cfg_value *v,
                           qd_error *err) {
    char range[256], what[320];
    qd_err rc = QD_OK;
    switch (k->type) {
    case QD_CFG_STRING:
    case QD_CFG_PATH:
        if ((k->flags & QD_CFG_OPTIONAL) && text[0] == '\0') {
            v->str = NULL; /* unset */
            return QD_OK;
        }
        if (k->type == QD_CFG_PATH && text[0] != '/')
            return expected(err, "an absolute path", text,
                            text[0] == '~' ? " (~ is not expanded)" : NULL);
        if (k->type == QD_CFG_PATH && strlen(text) >= PATH_MAX)
            return expected(err, "a path shorter than PATH_MAX", text, NULL);
        if (k->check && (rc = k->check(text, err)) != QD_OK) return rc;
        v->str = strdup(text);
        if (!v->str) return qd_error_set(err, QD_ERR_NOMEM, "out of memory");
        return QD_OK;
    case QD_CFG_BOOL: return qd_config_parse_bool(text, &v->b, err);
    case QD_CFG_ENUM:
        for (int i = 0; k->words[i]; i++) {
            if (strcmp(text, k->words[i]) == 0) {
                v->e = i;
                return QD_OK;
            }
        }
        return expected(err, expect_text(k, what, sizeof what), text, NULL);
    case QD_CFG_INT:
    case QD_CFG_DURATION:
        rc = k->type == QD_CFG_INT ? qd_config_parse_int(text, &v->i, err)
                                   : qd_config_parse_duration(text, &v->i, err);
        if (rc != QD_OK) return rc;
        if (v->i >= k->min && v->i <= k->max) return QD_OK;
        range_text(k, range, sizeof range);
        snprintf(what, sizeof what, "%s in %s",
                 k->type == QD_CFG_INT ? "an integer" : "a duration", range);
        return expected(err, what, text, NULL);
    case QD_CFG_SIZE:
        if ((rc = qd_config_parse_size(text, &v->u, err)) != QD_OK) return rc;
        if (v->u >= (uint64_t)k->min && v->u <= (uint64_t)k->max) return QD_OK;
        range_text(k, range, sizeof range);
        snprintf(what, sizeof what, "a size %s%s", k->max == SIZE_NO_LIMIT ? "of " : "in ",
                 range);
        return expected(err, what, text, NULL);
    case QD_CFG_LIST: break;
    }
    return qd_error_set(err, QD_ERR_INTERNAL, "%s: not a scalar key", k->name);
}

/* ---- the YAML walker ------------------------------------------------------------------------- */

/* Item n of list key k: checked and appended to the list being built. */
typedef struct list_build {
    const qd_config_key *k;
    char **items;
    size_t n, cap;
} list_build;

static qd_err add_item(qd_yaml_walk *w, const char *text, size_t n, const yaml_mark_t *mark,
                       void *ctx) {
    list_build *b = ctx;
    qd_error e = {0};
    if (b->n == CFG_LIST_MAX)
        return qd_yaml_fail(w, mark, b->k->name, "more than %d items", CFG_LIST_MAX);
    if (b->k->check && b->k->check(text, &e) != QD_OK)
        return qd_yaml_fail(w, mark, b->k->name, "item %zu: %s", n, e.msg);
    if (b->n == b->cap) {
        size_t ncap = b->cap ? b->cap * 2 : 4;
        char **grown = realloc(b->items, ncap * sizeof *grown);
        if (!grown)
            return qd_error_set(qd_yaml_err(w), QD_ERR_NOMEM, "%s: out of memory", b->k->name);
        b->items = grown;
        b->cap = ncap;
    }
    if (!(b->items[b->n] = strdup(text)))
        return qd_error_set(qd_yaml_err(w), QD_ERR_NOMEM, "%s: out of memory", b->k->name);
    b->n++;
    return QD_OK;
}

/* Set key ki of the config being built (ctx) to the value whose first event is ev. A list
 * replaces the field only once all of its items were read. */
static qd_err apply_value(qd_yaml_walk *w, size_t ki, const yaml_mark_t *kmark,
                          const yaml_event_t *ev, void *ctx) {
    (void)kmark;
    qd_config *cfg = ctx;
    const qd_config_key *k = &config_keys[ki];
    char what[320];
    const char *text = NULL;
    if (k->type == QD_CFG_LIST) {
        list_build b = {.k = k};
        qd_err rc = qd_yaml_items(w, ev, k->name, expect_text(k, what, sizeof what), add_item,
                                  &b);
        if (rc != QD_OK) {
            free_list(b.items, b.n);
            return rc;
        }
        free_field(cfg, k);
        *(char ***)field_of(cfg, k) = b.items;
        *(size_t *)((char *)cfg + k->count_offset) = b.n;
        return QD_OK;
    }
    qd_err rc = qd_yaml_scalar(w, ev, k->name, expect_text(k, what, sizeof what), &text);
    if (rc != QD_OK) return rc;
    cfg_value v = {0};
    qd_error e = {0};
    if ((rc = parse_scalar(k, text, &v, &e)) != QD_OK)
        return qd_yaml_value_error(w, &ev->start_mark, k->name, rc, &e);
    store(cfg, k, &v);
    return QD_OK;
}

/* The key table as common/yamlwalk.c sees it; lines is where the file set each key (0 = not
 * set), for the cross-key rules' messages. */
static qd_yaml_opts walk_opts(const char *label, qd_config *cfg, size_t *lines) {
    return (qd_yaml_opts){.label = label, .table = config_keys, .stride = sizeof config_keys[0],
                          .name_offset = offsetof(qd_config_key, name), .count = N_KEYS,
                          .lines = lines, .fail_code = QD_ERR_CONFIG,
                          .syntax_code = QD_ERR_CONFIG, .on_key = apply_value, .ctx = cfg};
}

/* ---- cross-key rules ------------------------------------------------------------------------- */

/* Each rule as the docs state it; validate() below enforces them in this order. */
static const char *const cross_rules[] = {
    "`listen` names at least one address, and none twice.",
    "`data_dir` is set (or has a default) and is absolute.",
    "`devices` names at least one device and none twice; `auto` stands alone.",
    "`workers.cpu` is not 0 when `devices` is only `cpu` (no job could run).",
    "`limits.chunk_bytes` is at least " XSTR_(FRAMING_KIB) "KiB below "
    "`limits.max_message_bytes`, which leaves "
    "room for each chunk message's framing and metadata.",
    "`limits.memory_quota` is at least `limits.max_message_bytes`.",
    "`tls.cert` and `tls.key` are set together; `tls.client_ca` needs them.",
    "Every `listen` address other than loopback (127.x.x.x, `[::1]`, `localhost`) or a unix "
    "socket needs `tls.cert`, unless `allow_insecure_remote` is true (plaintext on a network "
    "is refused by default). Unix sockets stay plaintext: their file mode guards them.",
    "`metrics.listen` other than loopback (127.x.x.x, `[::1]`, `localhost`) needs "
    "`metrics.allow_remote: true`: the endpoint is plain HTTP without auth, and its numbers "
    "(jobs, methods, traffic) are not for everyone.",
};

typedef struct rules {
    const qd_config *c;
    const size_t *lines; /* where each key was set, or NULL */
    const char *label;   /* or NULL */
    qd_error *err;
} rules;

static size_t key_index_at(size_t offset) {
    for (size_t i = 0; i < N_KEYS; i++)
        if (config_keys[i].offset == offset) return i;
    return 0; /* unreachable: every KEY_ below names a field of the table */
}
#define KEY_(field) key_index_at(offsetof(qd_config, field))

/* Fail with "label:line: key: message", the line being where the file set key ki (else alt). */
__attribute__((format(printf, 4, 5))) static qd_err rule_fail(const rules *r, size_t ki,
                                                               size_t alt, const char *fmt,
                                                               ...) {
    char msg[QD_ERROR_MSG_MAX], where[QD_ERROR_MSG_MAX / 2] = "";
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    size_t line = r->lines ? (r->lines[ki] ? r->lines[ki] : r->lines[alt]) : 0;
    if (r->label && line) snprintf(where, sizeof where, "%s:%zu: ", r->label, line);
    else if (r->label) snprintf(where, sizeof where, "%s: ", r->label);
    return qd_error_set(r->err, QD_ERR_CONFIG, "%s%s: %s", where, config_keys[ki].name, msg);
}

static qd_err check_unique(const rules *r, size_t ki, char *const *v, size_t n) {
    char q[EXCERPT_BUF];
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < i; j++)
            if (strcmp(v[i], v[j]) == 0)
                return rule_fail(r, ki, ki, "'%s' is listed twice",
                                 qd_yaml_excerpt(v[i], strlen(v[i]), q, sizeof q));
    return QD_OK;
}

static qd_err validate(const rules *r) {
    const qd_config *c = r->c;
    char a[32], b[32], q[EXCERPT_BUF];
    qd_err rc;

    if (c->n_listen == 0)
        return rule_fail(r, KEY_(listen), KEY_(listen), "no address to listen on");
    if ((rc = check_unique(r, KEY_(listen), c->listen, c->n_listen)) != QD_OK) return rc;

    if (!c->data_dir)
        return rule_fail(r, KEY_(data_dir), KEY_(data_dir),
                         "not set, and no default: $STATE_DIRECTORY, $XDG_STATE_HOME and $HOME "
                         "are all unset or relative");
    if (c->data_dir[0] != '/')
        return rule_fail(r, KEY_(data_dir), KEY_(data_dir), "expected an absolute path, got '%s'",
                         qd_yaml_excerpt(c->data_dir, strlen(c->data_dir), q, sizeof q));

    if (c->n_devices == 0) return rule_fail(r, KEY_(devices), KEY_(devices), "no device");
    if ((rc = check_unique(r, KEY_(devices), c->devices, c->n_devices)) != QD_OK) return rc;
    bool only_cpu = true;
    for (size_t i = 0; i < c->n_devices; i++) {
        if (strcmp(c->devices[i], "auto") == 0 && c->n_devices > 1)
            return rule_fail(r, KEY_(devices), KEY_(devices),
                             "'auto' cannot be combined with other devices");
        if (strcmp(c->devices[i], "cpu") != 0) only_cpu = false;
    }
    if (only_cpu && c->workers.cpu == 0)
        return rule_fail(r, KEY_(workers.cpu), KEY_(devices),
                         "is 0 but devices has only 'cpu', so no job could run");

    if (c->limits.max_message_bytes < FRAMING_BYTES ||
        c->limits.chunk_bytes > c->limits.max_message_bytes - FRAMING_BYTES) {
        qd_config_format_size(c->limits.chunk_bytes, a, sizeof a);
        qd_config_format_size(c->limits.max_message_bytes, b, sizeof b);
        return rule_fail(r, KEY_(limits.chunk_bytes), KEY_(limits.max_message_bytes),
                         "%s leaves no room for framing: it must be at least "
                         XSTR_(FRAMING_KIB) "KiB below limits.max_message_bytes (%s)", a, b);
    }
    if (c->limits.memory_quota < c->limits.max_message_bytes) {
        qd_config_format_size(c->limits.memory_quota, a, sizeof a);
        qd_config_format_size(c->limits.max_message_bytes, b, sizeof b);
        return rule_fail(r, KEY_(limits.memory_quota), KEY_(limits.max_message_bytes),
                         "%s is less than limits.max_message_bytes (%s)", a, b);
    }

    if ((c->tls.cert == NULL) != (c->tls.key == NULL))
        return rule_fail(r, c->tls.cert ? KEY_(tls.key) : KEY_(tls.cert),
                         c->tls.cert ? KEY_(tls.cert) : KEY_(tls.key),
                         "not set, but %s is: set both tls.cert and tls.key",
                         c->tls.cert ? "tls.cert" : "tls.key");
    if (c->tls.client_ca && !c->tls.cert)
        return rule_fail(r, KEY_(tls.client_ca), KEY_(tls.client_ca),
                         "needs tls.cert and tls.key (mutual TLS is TLS first)");
    for (size_t i = 0; !c->tls.cert && !c->allow_insecure_remote && i < c->n_listen; i++) {
        if (qd_config_listen_is_local(c->listen[i])) continue;
        return rule_fail(r, KEY_(listen), KEY_(listen),
                         "'%s' is neither loopback nor a unix socket, and would serve plaintext "
                         "to the network: set tls.cert and tls.key, or allow_insecure_remote: "
                         "true",
                         qd_yaml_excerpt(c->listen[i], strlen(c->listen[i]), q, sizeof q));
    }
    if (c->metrics.listen && !c->metrics.allow_remote &&
        !qd_config_listen_is_local(c->metrics.listen))
        return rule_fail(r, KEY_(metrics.listen), KEY_(metrics.listen),
                         "'%s' is not a loopback address, and the endpoint is plain HTTP "
                         "without auth: set metrics.allow_remote: true to serve it to the "
                         "network",
                         qd_yaml_excerpt(c->metrics.listen, strlen(c->metrics.listen), q,
                                         sizeof q));
    return QD_OK;
}

qd_err qd_config_validate(const qd_config *c, qd_error *err) {
    rules r = {.c = c, .lines = NULL, .label = NULL, .err = err};
    return validate(&r);
}

/* ---- loading --------------------------------------------------------------------------------- */

qd_err qd_config_init_defaults(qd_config *c, qd_error *err) {
    memset(c, 0, sizeof *c);
    qd_err rc = QD_OK;
    for (size_t i = 0; i < N_KEYS && rc == QD_OK; i++) {
        const qd_config_key *k = &config_keys[i];
        if (k->def) {
            qd_yaml_opts o = walk_opts("built-in default", c, NULL);
            rc = qd_yaml_walk_value(&o, i, k->def, strlen(k->def), err);
        } else if (k->default_fn) {
            char *s = NULL;
            qd_error e = {0};
            rc = k->default_fn(&s, &e);
            if (rc == QD_ERR_NOT_FOUND) rc = QD_OK; /* qd_config_validate() reports it */
            else if (rc != QD_OK) qd_error_set(err, rc, "%s: %s", k->name, e.msg);
            else *(char **)field_of(c, k) = s;
        }
    }
    if (rc != QD_OK) qd_config_free(c);
    return rc;
}

qd_err qd_config_parse(const char *yaml, size_t len, const char *label, qd_config *out,
                       qd_error *err) {
    /* Work against a private error so that an error already in *err cannot hide ours (and so
     * that prefixes land on our message only). */
    qd_error e = {0};
    qd_config tmp;
    if (!label) label = "config";
    qd_err rc = qd_config_init_defaults(&tmp, &e);
    if (rc == QD_OK) {
        size_t lines[N_KEYS] = {0};
        qd_yaml_opts o = walk_opts(label, &tmp, lines);
        rc = qd_yaml_walk_text(&o, yaml, len, &e);
        if (rc == QD_OK) {
            rules r = {.c = &tmp, .lines = lines, .label = label, .err = &e};
            rc = validate(&r);
        }
        if (rc != QD_OK) qd_config_free(&tmp);
    }
    if (rc != QD_OK) return qd_error_set(err, rc, "%s", e.msg);
    qd_config_free(out);
    *out = tmp;
    return QD_OK;
}

qd_err qd_config_load(const char *path, qd_config *out, qd_error *err) {
    char *buf;
    size_t len;
    qd_err rc = qd_read_file(path, CFG_FILE_MAX, &buf, &len, err);
    if (rc != QD_OK) return rc;
    rc = qd_config_parse(buf, len, path, out, err);
    free(buf);
    return rc;
}

void qd_config_free(qd_config *c) {
    if (!c) return;
    for (size_t i = 0; i < N_KEYS; i++) free_field(c, &config_keys[i]);
    memset(c, 0, sizeof *c);
}

/* ---- comparing ------------------------------------------------------------------------------- */

static bool str_equal(const char *a, const char *b) {
    return a == b || (a && b && strcmp(a, b) == 0);
}

bool qd_config_key_equal(const qd_config *a, const qd_config *b, size_t i) {
    if (i >= N_KEYS) return false;
    const qd_config_key *k = &config_keys[i];
    const void *fa = cfield_of(a, k), *fb = cfield_of(b, k);
    switch (k->type) {
    case QD_CFG_STRING:
    case QD_CFG_PATH: return str_equal(*(char *const *)fa, *(char *const *)fb);
    case QD_CFG_BOOL: return *(const bool *)fa == *(const bool *)fb;
    case QD_CFG_INT:
    case QD_CFG_DURATION: return *(const int64_t *)fa == *(const int64_t *)fb;
    case QD_CFG_SIZE: return *(const uint64_t *)fa == *(const uint64_t *)fb;
    case QD_CFG_ENUM: return *(const int *)fa == *(const int *)fb;
    case QD_CFG_LIST: {
        size_t na = *(const size_t *)((const char *)a + k->count_offset);
        size_t nb = *(const size_t *)((const char *)b + k->count_offset);
        char *const *va = *(char **const *)fa, *const *vb = *(char **const *)fb;
        if (na != nb) return false;
        for (size_t j = 0; j < na; j++)
            if (!str_equal(va[j], vb[j])) return false;
        return true;
    }
    }
    return false;
}

bool qd_config_equal(const qd_config *a, const qd_config *b) {
    for (size_t i = 0; i < N_KEYS; i++)
        if (!qd_config_key_equal(a, b, i)) return false;
    return true;
}

size_t qd_config_immutable_changes(const qd_config *old_cfg, const qd_config *new_cfg,
                                   const char **names, size_t cap) {
    size_t n = 0;
    for (size_t i = 0; i < N_KEYS; i++) {
        if ((config_keys[i].flags & QD_CFG_RELOADABLE) || qd_config_key_equal(old_cfg, new_cfg, i))
            continue;
        if (names && n < cap) names[n] = config_keys[i].name;
        n++;
    }
    return n;
}

/* ---- output ---------------------------------------------------------------------------------- */

/* Decode the UTF-8 sequence at s (n bytes left) into *cp; returns its length, or 0 if invalid. */
static size_t utf8_decode(const unsigned char *s, size_t n, uint32_t *cp) {
    size_t len;
    uint32_t v, min;
    if (s[0] < 0x80) {
        *cp = s[0];
        return 1;
    }
    if ((s[0] & 0xE0) == 0xC0) {
        len = 2;
        v = s[0] & 0x1Fu;
        min = 0x80;
    } else if ((s[0] & 0xF0) == 0xE0) {
        len = 3;
        v = s[0] & 0x0Fu;
        min = 0x800;
    } else if ((s[0] & 0xF8) == 0xF0) {
        len = 4;
        v = s[0] & 0x07u;
        min = 0x10000;
    } else {
        return 0;
    }
    if (len > n) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        v = (v << 6) | (s[i] & 0x3Fu);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
    *cp = v;
    return len;
}

/* s as a YAML double-quoted scalar that reads back to the same bytes: escapes quotes,
 * backslashes and the C0/C1 controls, which YAML refuses raw (a "\x01" escape in the file can
 * put them in a value). LS, PS, BOM and the non-characters are escaped too: libyaml keeps them,
 * but other YAML readers fold or refuse them, and a dump is for people and tools alike. */
static void write_quoted(FILE *out, const char *s) {
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s);
    fputc('"', out);
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t l = utf8_decode(p + i, n - i, &cp);
        if (l == 0) { /* not UTF-8 (only from the environment): keep what can be kept */
            fprintf(out, "\\x%02x", p[i]);
            i++;
            continue;
        }
        if (cp == '"' || cp == '\\') fprintf(out, "\\%c", (char)cp);
        else if (cp == '\n') fputs("\\n", out);
        else if (cp == '\t') fputs("\\t", out);
        else if (cp == '\r') fputs("\\r", out);
        else if (cp < 0x20 || (cp >= 0x7F && cp <= 0x9F)) fprintf(out, "\\x%02x", (unsigned)cp);
        else if (cp == 0x2028 || cp == 0x2029 || cp == 0xFEFF || cp == 0xFFFE || cp == 0xFFFF)
            fprintf(out, "\\u%04x", (unsigned)cp);
        else fwrite(p + i, 1, l, out);
        i += l;
    }
    fputc('"', out);
}

static void write_value(FILE *out, const qd_config *c, const qd_config_key *k) {
    const void *f = cfield_of(c, k);
    char buf[32];
    switch (k->type) {
    case QD_CFG_STRING:
    case QD_CFG_PATH: write_quoted(out, *(char *const *)f ? *(char *const *)f : ""); break;
    case QD_CFG_BOOL: fputs(*(const bool *)f ? "true" : "false", out); break;
    case QD_CFG_INT: fprintf(out, "%" PRId64, *(const int64_t *)f); break;
    case QD_CFG_SIZE:
        qd_config_format_size(*(const uint64_t *)f, buf, sizeof buf);
        fputs(buf, out);
        break;
    case QD_CFG_DURATION:
        qd_config_format_duration(*(const int64_t *)f, buf, sizeof buf);
        fputs(buf, out);
        break;
    case QD_CFG_ENUM: {
        int e = *(const int *)f, nw = 0;
        while (k->words[nw]) nw++;
        if (e >= 0 && e < nw) fputs(k->words[e], out);
        else fputs("\"\"", out);
        break;
    }
    case QD_CFG_LIST: {
        size_t n = *(const size_t *)((const char *)c + k->count_offset);
        char *const *v = *(char **const *)f;
        fputc('[', out);
        for (size_t i = 0; i < n; i++) {
            if (i) fputs(", ", out);
            write_quoted(out, v[i]);
        }
        fputc(']', out);
        break;
    }
    }
}

/* Number of sections (dotted parts before the last) of name. */
static size_t n_sections_of(const char *name) {
    size_t n = 0;
    for (; *name; name++) n += *name == '.';
    return n;
}

/* Length of the first `parts` dotted parts of name. */
static size_t prefix_len(const char *name, size_t parts) {
    size_t i = 0;
    for (size_t p = 0; p < parts; p++) {
        i += strcspn(name + i, ".");
        if (name[i] == '.' && p + 1 < parts) i++;
    }
    return i;
}

/* How many leading sections names a and b share. */
static size_t shared_sections(const char *a, const char *b) {
    size_t na = n_sections_of(a), nb = n_sections_of(b), s = 0;
    while (s < na && s < nb) {
        size_t la = prefix_len(a, s + 1), lb = prefix_len(b, s + 1);
        if (la != lb || strncmp(a, b, la) != 0) break;
        s++;
    }
    return s;
}

/* What the docs call the default: def_doc when the table gives one (a computed default, or
 * an optional path's "none"), else the default's text. */
static const char *default_text(const qd_config_key *k) {
    return k->def_doc ? k->def_doc : k->def ? k->def : "none";
}

void qd_config_dump(const qd_config *c, FILE *out) {
    fputs("# quantd configuration: every key with its effective value.\n"
          "# `quantd config keys` lists the keys; docs/config.md describes them.\n",
          out);
    const char *prev = "";
    for (size_t i = 0; i < N_KEYS; i++) {
        const qd_config_key *k = &config_keys[i];
        size_t nsec = n_sections_of(k->name), shared = shared_sections(prev, k->name);
        for (size_t s = shared; s < nsec; s++) {
            size_t start = s ? prefix_len(k->name, s) + 1 : 0, end = prefix_len(k->name, s + 1);
            fprintf(out, "\n%*s%.*s:\n", (int)(2 * s), "", (int)(end - start), k->name + start);
        }
        int ind = (int)(2 * nsec);
        char range[256];
        range_text(k, range, sizeof range);
        const char *leaf = nsec ? strrchr(k->name, '.') + 1 : k->name;
        if (shared == nsec) fputc('\n', out);
        fprintf(out, "%*s# %s\n", ind, "", k->help);
        char meta[512];
        int ml = snprintf(meta, sizeof meta, "%s: %s; %s", qd_config_type_name(k->type), range,
                          k->flags & QD_CFG_RELOADABLE ? "reloadable" : "restart to change");
        /* Keep comments within 100 columns: a long default gets a line of its own. */
        const char *def = default_text(k);
        bool own_line = ind + 2 + ml + 11 + (int)strlen(def) > 100;
        fprintf(out, "%*s# %s%s", ind, "", meta, own_line ? "\n" : "; ");
        if (own_line) fprintf(out, "%*s# ", ind, "");
        fprintf(out, "default %s\n", def);
        fprintf(out, "%*s%s: ", ind, "", leaf);
        write_value(out, c, k);
        fputc('\n', out);
        prev = k->name;
    }
}

void qd_config_write_keys(FILE *out) {
    for (size_t i = 0; i < N_KEYS; i++) {
        const qd_config_key *k = &config_keys[i];
        char range[256];
        range_text(k, range, sizeof range);
        fprintf(out, "%s  (%s, %s)\n    %s\n    default: %s\n    allowed: %s\n", k->name,
                qd_config_type_name(k->type),
                k->flags & QD_CFG_RELOADABLE ? "reloadable" : "immutable", k->help,
                default_text(k), range);
    }
}

/* A markdown table cell: | would end the cell. */
static void write_cell(FILE *out, const char *s, bool code) {
    fputs(code ? " `" : " ", out);
    for (; *s; s++) {
        if (*s == '|') fputs("\\|", out);
        else fputc(*s, out);
    }
    fputs(code ? "` |" : " |", out);
}

void qd_config_write_markdown(FILE *out) {
    fputs("# quantd configuration reference\n"
          "\n"
          "<!-- Generated by `quantd config keys --markdown` from the key table in\n"
          "     daemon/config.c; regenerate it rather than editing it (test-config checks). -->\n"
          "\n"
          "The daemon reads one YAML file. `quantd config check FILE` validates a file,\n"
          "`quantd config dump [FILE]` prints the effective configuration (every key, with\n"
          "comments) and `quantd config keys` lists the keys below. systemd/quantd.yaml is an\n"
          "annotated example.\n"
          "\n"
          "## File format\n"
          "\n"
          "The file is a YAML mapping of keys. A nested mapping gives dotted key names, so\n"
          "these two files set the same key:\n"
          "\n"
          "```yaml\n"
          "limits:\n"
          "  chunk_bytes: 1MiB\n"
          "```\n"
          "\n"
          "```yaml\n"
          "limits.chunk_bytes: 1MiB\n"
          "```\n"
          "\n"
          "A key the file does not set keeps its default; an empty file means all defaults.\n"
          "Each value is read as text by its key's type, so YAML never turns `no` into a\n"
          "boolean or `0755` into a number behind your back. Quoting a value is allowed.\n"
          "\n"
          "The file is refused, with a message naming the file, the line and the key, when:\n"
          "\n"
          "- a key is unknown (the message suggests the closest known key), or set twice;\n"
          "- a value does not fit its key: `quantd.yaml:7: limits.chunk_bytes: expected a size\n"
          "  such as 1MiB, got 'lots'`;\n"
          "- it uses anchors, aliases or tags (`&a`, `*a`, `!!str`), or holds more than one\n"
          "  document, or its top level is not a mapping;\n"
          "- the keys together break a rule below.\n"
          "\n"
          "## Value types\n"
          "\n"
          "| Type | Written as |\n"
          "|------|------------|\n"
          "| int | a decimal integer: `4`, `-1` |\n"
          "| size | bytes: `1048576`, or a whole number with a unit: `KiB`, `MiB`, `GiB`, "
          "`TiB`, `PiB` (powers of 1024) or `B`, `kB`, `MB`, `GB`, `TB`, `PB` (powers of "
          "1000): `64MiB`, `100GB` |\n"
          "| duration | seconds: `30`, or a whole number with a unit `s`, `m` or `h`: `30s`, "
          "`5m`, `2h` |\n"
          "| bool | `true` or `false` (also `yes`/`no`, `on`/`off`) |\n"
          "| enum | one of the listed words |\n"
          "| path | an absolute path (`~` is not expanded) |\n"
          "| string | any text |\n"
          "| string list | a YAML list of strings: `[\"a\", \"b\"]`, or one `- item` per line |\n"
          "\n"
          "## Keys\n"
          "\n"
          "Reloadable keys can change while the daemon runs (on SIGHUP); the others take\n"
          "effect at the next start.\n"
          "\n"
          "| Key | Type | Default | Allowed | Reload | Description |\n"
          "|-----|------|---------|---------|--------|-------------|\n",
          out);
    for (size_t i = 0; i < N_KEYS; i++) {
        const qd_config_key *k = &config_keys[i];
        char range[256];
        range_text(k, range, sizeof range);
        fputc('|', out);
        write_cell(out, k->name, true);
        write_cell(out, qd_config_type_name(k->type), false);
        write_cell(out, default_text(k), k->def != NULL && k->def_doc == NULL);
        write_cell(out, range, false);
        write_cell(out, k->flags & QD_CFG_RELOADABLE ? "reloadable" : "restart", false);
        write_cell(out, k->help, false);
        fputc('\n', out);
    }
    fputs("\n## Rules across keys\n\n", out);
    for (size_t i = 0; i < sizeof cross_rules / sizeof cross_rules[0]; i++)
        fprintf(out, "- %s\n", cross_rules[i]);
}
