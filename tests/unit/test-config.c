/*
 * test-config.c - the daemon configuration: the key table, every value type's parser, the
 * YAML loader's rules and messages, the cross-key rules, dump -> parse round trips, the
 * generated reference document, the example config and `quantd config`.
 *
 * Expected values come from the spec of each key (sizes worked out by hand), not from running
 * the code under test. Tests that depend on data_dir's default pin $STATE_DIRECTORY first.
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <unistd.h>

#include "commands.h"
#include "config.h"
#include "error.h"
#include "fsutil.h"
#include "test.h"

#define TEST_STATE_DIR "/var/lib/quantd-test"

/* data_dir's default comes from the environment: pin it. */
static void pin_env(void) {
    setenv("STATE_DIRECTORY", TEST_STATE_DIR, 1);
}

static qd_err parse(const char *yaml, qd_config *c, qd_error *err) {
    pin_env();
    qd_error_clear(err);
    return qd_config_parse(yaml, strlen(yaml), "test.yaml", c, err);
}

/* yaml must fail with QD_ERR_CONFIG and a message holding each of the (up to 3) pieces. */
static void expect_fail_(const char *yaml, const char *a, const char *b, const char *c,
                         const char *file, int line) {
    qd_config cfg = {0};
    qd_error err = {0};
    qd_err rc = parse(yaml, &cfg, &err);
    if (rc != QD_ERR_CONFIG) {
        fprintf(stderr, "%s:%d: expected QD_ERR_CONFIG, got %s for:\n%s\n", file, line,
                qd_err_name(rc), yaml);
        qd_failed_checks_++;
    }
    const char *pieces[] = {a, b, c};
    for (int i = 0; i < 3; i++) {
        if (pieces[i] && !strstr(err.msg, pieces[i])) {
            fprintf(stderr, "%s:%d: message \"%s\" lacks \"%s\"\n", file, line, err.msg,
                    pieces[i]);
            qd_failed_checks_++;
        }
    }
    qd_config_free(&cfg);
}
#define EXPECT_FAIL(yaml, a, b, c) expect_fail_(yaml, a, b, c, __FILE__, __LINE__)

static bool list_is(char **v, size_t n, const char *const *want, size_t nwant) {
    if (n != nwant) return false;
    for (size_t i = 0; i < n; i++)
        if (strcmp(v[i], want[i]) != 0) return false;
    return true;
}

/* ---- the table ------------------------------------------------------------------------------- */

QD_TEST(table_is_well_formed) {
    size_t n = qd_config_key_count();
    QD_CHECK_EQ_INT(n, 24);
    QD_CHECK(qd_config_key_at(n) == NULL);
    for (size_t i = 0; i < n; i++) {
        const qd_config_key *k = qd_config_key_at(i);
        QD_REQUIRE(k != NULL);
        size_t len = strlen(k->name);
        QD_CHECK_MSG(len > 0 && k->name[0] != '.' && k->name[len - 1] != '.' &&
                         !strstr(k->name, ".."),
                     "bad key name '%s'", k->name);
        QD_CHECK_MSG(strspn(k->name, "abcdefghijklmnopqrstuvwxyz0123456789_.") == len,
                     "key name '%s' has characters outside [a-z0-9_.]", k->name);
        QD_CHECK_MSG(k->help && k->help[0] && strlen(k->help) < 100, "%s: help", k->name);
        QD_CHECK_MSG(k->def || k->default_fn, "%s: no default", k->name);
        QD_CHECK_MSG(!k->default_fn || k->def_doc, "%s: computed default not documented",
                     k->name);
        QD_CHECK(qd_config_key_find(k->name) == k);
        if (k->type == QD_CFG_INT || k->type == QD_CFG_SIZE || k->type == QD_CFG_DURATION)
            QD_CHECK_MSG(k->min <= k->max, "%s: empty range", k->name);
        if (k->type == QD_CFG_ENUM) QD_CHECK(k->words && k->words[0]);
        for (size_t j = 0; j < n; j++) {
            const qd_config_key *o = qd_config_key_at(j);
            if (j != i) QD_CHECK_MSG(strcmp(o->name, k->name) != 0, "%s twice", k->name);
            /* A key cannot also be a section ("limits" and "limits.x"). */
            QD_CHECK_MSG(!(strncmp(o->name, k->name, len) == 0 && o->name[len] == '.'),
                         "'%s' is both a key and a section of '%s'", k->name, o->name);
        }
    }
    /* Keys of one section are adjacent (the dump writes each section once). */
    for (size_t i = 0; i < n; i++) {
        const char *a = qd_config_key_at(i)->name, *dot = strchr(a, '.');
        if (!dot) continue;
        size_t sl = (size_t)(dot - a) + 1;
        bool left = false;
        for (size_t j = i + 1; j < n; j++) {
            bool same = strncmp(qd_config_key_at(j)->name, a, sl) == 0;
            if (!same) left = true;
            QD_CHECK_MSG(!(same && left), "section of '%s' is split", a);
        }
    }
    QD_CHECK(qd_config_key_find("limits") == NULL);
    QD_CHECK(qd_config_key_find("nope") == NULL);
    QD_CHECK_EQ_INT(qd_config_key_find("limits.chunk_bytes")->offset,
                    offsetof(qd_config, limits.chunk_bytes));
    QD_CHECK_EQ_INT(qd_config_key_find("shutdown.drain_seconds")->offset,
                    offsetof(qd_config, shutdown.drain_seconds));
    QD_CHECK_EQ_INT(qd_config_key_find("devices")->count_offset, offsetof(qd_config, n_devices));
    const qd_config_key *ll = qd_config_key_find("log_level");
    QD_CHECK_EQ_STR(ll->words[QD_CONFIG_LOG_ERROR], "error");
    QD_CHECK_EQ_STR(ll->words[QD_CONFIG_LOG_WARNING], "warning");
    QD_CHECK_EQ_STR(ll->words[QD_CONFIG_LOG_NOTICE], "notice");
    QD_CHECK_EQ_STR(ll->words[QD_CONFIG_LOG_INFO], "info");
    QD_CHECK_EQ_STR(ll->words[QD_CONFIG_LOG_DEBUG], "debug");
    QD_CHECK(ll->words[QD_CONFIG_LOG_DEBUG + 1] == NULL);
}

QD_TEST(reload_flags_match_the_spec) {
    static const char *const reloadable[] = {
        "log_level", "workers.threads", "limits.chunk_bytes", "limits.max_upload_bytes",
        "limits.max_queued_jobs", "cache.max_bytes", "shutdown.drain_seconds",
        "auth.tokens", "auth.token_file",
    };
    for (size_t i = 0; i < qd_config_key_count(); i++) {
        const qd_config_key *k = qd_config_key_at(i);
        bool want = false;
        for (size_t j = 0; j < sizeof reloadable / sizeof reloadable[0]; j++)
            if (strcmp(k->name, reloadable[j]) == 0) want = true;
        QD_CHECK_MSG(((k->flags & QD_CFG_RELOADABLE) != 0) == want, "%s: reload flag",
                     k->name);
    }
}

QD_TEST(defaults_match_the_spec_and_pass_validation) {
    qd_config c;
    qd_error err = {0};
    pin_env();
    QD_CHECK_OK(qd_config_init_defaults(&c, &err), &err);
    QD_CHECK_OK(qd_config_validate(&c, &err), &err);
    static const char *const listen[] = {"127.0.0.1:7433"};
    static const char *const devices[] = {"auto"};
    QD_CHECK(list_is(c.listen, c.n_listen, listen, 1));
    QD_CHECK(list_is(c.devices, c.n_devices, devices, 1));
    QD_CHECK_EQ_STR(c.data_dir, TEST_STATE_DIR);
    QD_CHECK_EQ_INT(c.log_level, QD_CONFIG_LOG_INFO);
    QD_CHECK_EQ_INT(c.workers.cpu, 1);
    QD_CHECK_EQ_INT(c.workers.threads, 0);
    QD_CHECK_EQ_INT(c.limits.max_message_bytes, 8388608);
    QD_CHECK_EQ_INT(c.limits.chunk_bytes, 1048576);
    QD_CHECK_EQ_INT(c.limits.memory_quota, 536870912);
    QD_CHECK_EQ_INT(c.limits.max_concurrent_streams, 256);
    QD_CHECK_EQ_INT(c.limits.max_upload_bytes, 2199023255552LL);
    QD_CHECK_EQ_INT(c.limits.max_queued_jobs, 1024);
    QD_CHECK_EQ_INT(c.cache.max_bytes, 107374182400LL);
    QD_CHECK_EQ_INT(c.shutdown.drain_seconds, 30);
    qd_config_free(&c);
    QD_CHECK(c.listen == NULL && c.data_dir == NULL && c.n_listen == 0);
    qd_config_free(NULL);

    /* An empty file, a comment-only file, a bare "---" and NULL all mean the defaults. */
    const char *empties[] = {"", "# nothing here\n\n", "---\n", "--- # c\n...\n"};
    qd_config want;
    QD_CHECK_OK(qd_config_init_defaults(&want, &err), &err);
    for (size_t i = 0; i < sizeof empties / sizeof empties[0]; i++) {
        qd_config got = {0};
        QD_CHECK_OK(parse(empties[i], &got, &err), &err);
        QD_CHECK_MSG(qd_config_equal(&got, &want), "'%s' is not all defaults", empties[i]);
        qd_config_free(&got);
    }
    qd_config got = {0};
    QD_CHECK_OK(qd_config_parse(NULL, 0, NULL, &got, &err), &err);
    QD_CHECK(qd_config_equal(&got, &want));
    qd_config_free(&got);
    qd_config_free(&want);
}

/* ---- value parsers --------------------------------------------------------------------------- */

QD_TEST(parse_int) {
    static const struct {
        const char *text;
        long long want;
    } good[] = {
        {"0", 0}, {"42", 42}, {"-7", -7}, {"007", 7}, {"-0", 0},
        {"9223372036854775807", 9223372036854775807LL},
        {"-9223372036854775808", -9223372036854775807LL - 1},
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        int64_t v = 12345;
        qd_error err = {0};
        QD_CHECK_OK(qd_config_parse_int(good[i].text, &v, &err), &err);
        QD_CHECK_EQ_INT(v, good[i].want);
    }
    static const char *const bad[] = {"", "-", "+1", "1.5", "0x10", "1e3", "12a", " 1", "1 ",
                                      "1_000", "--1", "9223372036854775808",
                                      "-9223372036854775809", "99999999999999999999999"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int64_t v = 12345;
        qd_error err = {0};
        QD_CHECK_MSG(qd_config_parse_int(bad[i], &v, &err) == QD_ERR_CONFIG, "'%s' accepted",
                     bad[i]);
        QD_CHECK_EQ_INT(v, 12345);
        QD_CHECK(strstr(err.msg, "expected an integer") != NULL);
    }
    qd_error err = {0};
    int64_t v;
    qd_config_parse_int("12a", &v, &err);
    QD_CHECK_EQ_STR(err.msg, "expected an integer, got '12a'");
    qd_error_clear(&err);
    qd_config_parse_int("99999999999999999999999", &v, &err);
    QD_CHECK(strstr(err.msg, "too large") != NULL);
}

QD_TEST(parse_size) {
    static const struct {
        const char *text;
        unsigned long long want;
    } good[] = {
        {"0", 0},
        {"1", 1},
        {"1048576", 1048576},
        {"1B", 1},
        {"512KiB", 524288},
        {"64MiB", 67108864},
        {"64 MiB", 67108864},
        {"1GiB", 1073741824},
        {"2TiB", 2199023255552ULL},
        {"1PiB", 1125899906842624ULL},
        {"100GB", 100000000000ULL},
        {"1kB", 1000},
        {"1KB", 1000},
        {"3MB", 3000000},
        {"5TB", 5000000000000ULL},
        {"2PB", 2000000000000000ULL},
        {"8191PiB", 9222246136947933184ULL}, /* the largest whole PiB below 2^63 */
        {"9223372036854775807", 9223372036854775807ULL},
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        uint64_t v = 7;
        qd_error err = {0};
        QD_CHECK_OK(qd_config_parse_size(good[i].text, &v, &err), &err);
        QD_CHECK_MSG(v == good[i].want, "'%s' -> %llu, want %llu", good[i].text,
                     (unsigned long long)v, good[i].want);
    }
    static const char *const bad[] = {
        "", "lots", "MiB", "1.5GiB", "-1", "+1", "1mib", "1MIB", "1 ", "1 M", "1M", "1K",
        "1iB", "1 MiB ", "0x10", "1MiB1", "1EiB",
        "8192PiB",                  /* 2^63: past INT64_MAX */
        "9223372036854775808",      /* likewise */
        "99999999999TiB",           /* overflows 64 bits when multiplied */
        "18446744073709551616",     /* overflows while reading the digits */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint64_t v = 7;
        qd_error err = {0};
        QD_CHECK_MSG(qd_config_parse_size(bad[i], &v, &err) == QD_ERR_CONFIG, "'%s' accepted",
                     bad[i]);
        QD_CHECK_EQ_INT(v, 7);
        QD_CHECK(strstr(err.msg, "expected a size such as 1MiB") != NULL);
    }
    qd_error err = {0};
    uint64_t v;
    qd_config_parse_size("99999999999TiB", &v, &err);
    QD_CHECK_EQ_STR(err.msg, "expected a size such as 1MiB, got '99999999999TiB', which is too "
                             "large");
}

QD_TEST(parse_duration) {
    static const struct {
        const char *text;
        long long want;
    } good[] = {{"0", 0},     {"30", 30},    {"30s", 30},  {"5m", 300},
                {"2h", 7200}, {"90 s", 90},  {"0h", 0},    {"1441m", 86460}};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        int64_t v = -1;
        qd_error err = {0};
        QD_CHECK_OK(qd_config_parse_duration(good[i].text, &v, &err), &err);
        QD_CHECK_EQ_INT(v, good[i].want);
    }
    static const char *const bad[] = {"", "s", "1500ms", "1d", "-5s", "5 m ", "1.5h", "5M",
                                      "5sec", "99999999999999999999h", "9223372036854775807h"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int64_t v = -1;
        qd_error err = {0};
        QD_CHECK_MSG(qd_config_parse_duration(bad[i], &v, &err) == QD_ERR_CONFIG,
                     "'%s' accepted", bad[i]);
        QD_CHECK_EQ_INT(v, -1);
        QD_CHECK(strstr(err.msg, "expected a duration such as 30s") != NULL);
    }
}

QD_TEST(parse_bool) {
    static const char *const yes[] = {"true", "yes", "on", "True", "YES"};
    static const char *const no[] = {"false", "no", "off", "False"};
    static const char *const bad[] = {"", "1", "0", "maybe", "y", "truee"};
    qd_error err = {0};
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
        bool v = false;
        QD_CHECK_OK(qd_config_parse_bool(yes[i], &v, &err), &err);
        QD_CHECK(v);
    }
    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++) {
        bool v = true;
        QD_CHECK_OK(qd_config_parse_bool(no[i], &v, &err), &err);
        QD_CHECK(!v);
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        bool v = true;
        qd_error_clear(&err);
        QD_CHECK(qd_config_parse_bool(bad[i], &v, &err) == QD_ERR_CONFIG);
        QD_CHECK(strstr(err.msg, "expected true or false") != NULL);
    }
}

QD_TEST(format_size_and_duration) {
    static const struct {
        unsigned long long v;
        const char *want;
    } sizes[] = {
        {0, "0"},          {1, "1"},           {1024, "1KiB"},      {1536, "1536"},
        {1000, "1kB"},     {1048576, "1MiB"},  {8388608, "8MiB"},   {1000000, "1MB"},
        {100000000000ULL, "100GB"},            {3298534883328ULL, "3TiB"},
        {1125899906842624ULL, "1PiB"},         {1025, "1025"},
    };
    char buf[64];
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        qd_config_format_size(sizes[i].v, buf, sizeof buf);
        QD_CHECK_EQ_STR(buf, sizes[i].want);
    }
    static const struct {
        long long v;
        const char *want;
    } durs[] = {{0, "0s"},   {59, "59s"}, {60, "1m"},   {90, "90s"},
                {3600, "1h"}, {5400, "90m"}, {86400, "24h"}, {86401, "86401s"}};
    for (size_t i = 0; i < sizeof durs / sizeof durs[0]; i++) {
        qd_config_format_duration(durs[i].v, buf, sizeof buf);
        QD_CHECK_EQ_STR(buf, durs[i].want);
    }
    /* Whatever the formatter picks must read back to the same value. */
    uint64_t x = 88172645463325252ULL;
    for (int i = 0; i < 2000; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        uint64_t v = (x >> (x & 63)) & (uint64_t)INT64_MAX;
        if (i % 3 == 0) v &= ~(uint64_t)0xFFFFF; /* often a whole number of MiB */
        uint64_t back = 0;
        int64_t dback = -1;
        qd_error err = {0};
        qd_config_format_size(v, buf, sizeof buf);
        QD_CHECK_OK(qd_config_parse_size(buf, &back, &err), &err);
        QD_CHECK_MSG(back == v, "%s -> %llu, want %llu", buf, (unsigned long long)back,
                     (unsigned long long)v);
        int64_t d = (int64_t)(v % 1000000) * ((i & 1) ? 60 : 1);
        qd_config_format_duration(d, buf, sizeof buf);
        QD_CHECK_OK(qd_config_parse_duration(buf, &dback, &err), &err);
        QD_CHECK_EQ_INT(dback, d);
    }
}

/* ---- keys and ranges through the file -------------------------------------------------------- */

QD_TEST(range_boundaries_of_every_numeric_key) {
    static const struct {
        const char *yaml;
        bool ok;
    } cases[] = {
        {"workers.cpu: 0", true},
        {"workers.cpu: 256", true},
        {"workers.cpu: 257", false},
        {"workers.cpu: -1", false},
        {"workers.threads: 1024", true},
        {"workers.threads: 1025", false},
        {"limits: {max_message_bytes: 64KiB, chunk_bytes: 48KiB}", true},
        {"limits: {max_message_bytes: 65535, chunk_bytes: 4KiB}", false},
        {"limits: {max_message_bytes: 256MiB}", true},
        {"limits: {max_message_bytes: 268435457}", false},
        {"limits: {chunk_bytes: 4KiB}", true},
        {"limits: {chunk_bytes: 4095}", false},
        {"limits: {chunk_bytes: 64MiB, max_message_bytes: 128MiB}", true},
        {"limits: {chunk_bytes: 67108865, max_message_bytes: 128MiB}", false},
        {"limits: {memory_quota: 16MiB}", true},
        {"limits: {memory_quota: 16777215}", false},
        {"limits: {memory_quota: 1TiB}", true},
        {"limits: {memory_quota: 1099511627777}", false},
        {"limits: {max_concurrent_streams: 1}", true},
        {"limits: {max_concurrent_streams: 0}", false},
        {"limits: {max_concurrent_streams: 100000}", true},
        {"limits: {max_concurrent_streams: 100001}", false},
        {"limits: {max_upload_bytes: 1}", true},
        {"limits: {max_upload_bytes: 0}", false},
        {"limits: {max_upload_bytes: 8191PiB}", true},
        {"limits: {max_queued_jobs: 1}", true},
        {"limits: {max_queued_jobs: 0}", false},
        {"limits: {max_queued_jobs: 100000}", true},
        {"limits: {max_queued_jobs: 100001}", false},
        {"cache: {max_bytes: 0}", true},
        {"cache: {max_bytes: 9223372036854775807}", true},
        {"shutdown: {drain_seconds: 0}", true},
        {"shutdown: {drain_seconds: 24h}", true},
        {"shutdown: {drain_seconds: 1440m}", true},
        {"shutdown: {drain_seconds: 1441m}", false},
        {"shutdown: {drain_seconds: 86401}", false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        qd_config c = {0};
        qd_error err = {0};
        qd_err rc = parse(cases[i].yaml, &c, &err);
        QD_CHECK_MSG((rc == QD_OK) == cases[i].ok, "'%s': %s", cases[i].yaml,
                     rc == QD_OK ? "accepted" : err.msg);
        if (!cases[i].ok) QD_CHECK_MSG(strstr(err.msg, "expected a") != NULL, "%s", err.msg);
        qd_config_free(&c);
    }
    EXPECT_FAIL("workers:\n  cpu: 257\n", "test.yaml:2: workers.cpu: expected an integer in "
                "0..256, got '257'", NULL, NULL);
    EXPECT_FAIL("limits:\n  chunk_bytes: 128MiB\n", "test.yaml:2: limits.chunk_bytes: expected "
                "a size in 4KiB..64MiB, got '128MiB'", NULL, NULL);
    EXPECT_FAIL("limits.max_upload_bytes: 0", "expected a size of 1 or more, got '0'", NULL,
                NULL);
    EXPECT_FAIL("shutdown.drain_seconds: 2d", "shutdown.drain_seconds: expected a duration",
                "got '2d'", NULL);
    EXPECT_FAIL("workers:\n  cpu: 99999999999999999999\n", "test.yaml:2: workers.cpu",
                "too large", NULL);
}

QD_TEST(values_of_every_kind_are_applied) {
    qd_config c = {0};
    qd_error err = {0};
    const char *yaml = "listen:\n"
                       "  - unix:/run/quantd/q.sock\n"
                       "  - \"[::1]:7433\"\n"
                       "data_dir: /srv/quantd\n"
                       "log_level: debug\n"
                       "workers: {cpu: 4, threads: \"8\"}\n"
                       "devices: [cuda:0, cuda:1, cpu]\n"
                       "limits:\n"
                       "  max_message_bytes: '16MiB'\n"
                       "  chunk_bytes: 2MiB\n"
                       "limits.max_upload_bytes: 100GB\n"
                       "shutdown:\n"
                       "  drain_seconds: 2m\n";
    QD_CHECK_OK(parse(yaml, &c, &err), &err);
    static const char *const listen[] = {"unix:/run/quantd/q.sock", "[::1]:7433"};
    static const char *const devices[] = {"cuda:0", "cuda:1", "cpu"};
    QD_CHECK(list_is(c.listen, c.n_listen, listen, 2));
    QD_CHECK(list_is(c.devices, c.n_devices, devices, 3));
    QD_CHECK_EQ_STR(c.data_dir, "/srv/quantd");
    QD_CHECK_EQ_INT(c.log_level, QD_CONFIG_LOG_DEBUG);
    QD_CHECK_EQ_INT(c.workers.cpu, 4);
    QD_CHECK_EQ_INT(c.workers.threads, 8);
    QD_CHECK_EQ_INT(c.limits.max_message_bytes, 16777216);
    QD_CHECK_EQ_INT(c.limits.chunk_bytes, 2097152);
    QD_CHECK_EQ_INT(c.limits.max_upload_bytes, 100000000000LL);
    QD_CHECK_EQ_INT(c.shutdown.drain_seconds, 120);
    QD_CHECK_EQ_INT(c.limits.max_queued_jobs, 1024); /* untouched keys keep defaults */
    QD_CHECK_EQ_INT(c.cache.max_bytes, 107374182400LL);
    /* A section whose keys are all commented out is no keys, not an error. */
    QD_CHECK_OK(parse("limits:\n  # chunk_bytes: 2MiB\ncache: ~\n", &c, &err), &err);
    QD_CHECK_EQ_INT(c.limits.chunk_bytes, 1048576);
    QD_CHECK_EQ_INT(c.n_listen, 1); /* the earlier config was replaced, not merged */
    qd_config_free(&c);
}

QD_TEST(list_items_are_checked) {
    static const char *const good_listen[] = {
        "unix:/run/q.sock", "127.0.0.1:7433", "127.0.0.1:0", "localhost:1", "0.0.0.0:65535",
        "[::1]:7433", "[::]:80", "[fe80::1%eth0]:80", "my-host.example_1.org:443",
    };
    static const char *const bad_listen[] = {
        "unix:relative", "unix:", "unix:/", "127.0.0.1", "127.0.0.1:65536",
        "::1:7433", "[::1]", "[zz]:80", "[::1]:", "[]:80", "[fe80::1%]:80", "host:port",
        ":7433", "ho st:80", "127.0.0.1:+80", "", "tcp://x:1",
        ("unix:/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
         "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"), /* 112-byte path: more than sun_path holds */
    };
    static const char *const good_dev[] = {"auto", "cpu", "cuda:0", "cuda:15", "cuda:1023"};
    static const char *const bad_dev[] = {"gpu", "cuda:", "cuda:-1", "cuda:01", "CUDA:0",
                                          "cuda:1024", "cuda:1x", "", "Auto"};
    char yaml[512];
    for (size_t i = 0; i < sizeof good_listen / sizeof good_listen[0]; i++) {
        qd_config c = {0};
        qd_error err = {0};
        /* allow_insecure_remote: this is about the address syntax, not the transport rule */
        snprintf(yaml, sizeof yaml, "allow_insecure_remote: true\nlisten: [\"%s\"]\n",
                 good_listen[i]);
        QD_CHECK_OK(parse(yaml, &c, &err), &err);
        qd_config_free(&c);
    }
    for (size_t i = 0; i < sizeof bad_listen / sizeof bad_listen[0]; i++) {
        snprintf(yaml, sizeof yaml, "listen: [\"127.0.0.1:1\", \"%s\"]\n", bad_listen[i]);
        EXPECT_FAIL(yaml, "test.yaml:1: listen: item 2: expected", NULL, NULL);
    }
    for (size_t i = 0; i < sizeof good_dev / sizeof good_dev[0]; i++) {
        qd_config c = {0};
        qd_error err = {0};
        snprintf(yaml, sizeof yaml, "devices: [\"%s\"]\n", good_dev[i]);
        QD_CHECK_OK(parse(yaml, &c, &err), &err);
        qd_config_free(&c);
    }
    for (size_t i = 0; i < sizeof bad_dev / sizeof bad_dev[0]; i++) {
        snprintf(yaml, sizeof yaml, "devices:\n  - \"%s\"\n", bad_dev[i]);
        EXPECT_FAIL(yaml, "test.yaml:2: devices: item 1: expected 'auto', 'cpu' or 'cuda:N'",
                    NULL, NULL);
    }
    EXPECT_FAIL("listen: 127.0.0.1:80\n", "listen: expected a list", "found '127.0.0.1:80'",
                NULL);
    EXPECT_FAIL("listen: [[a]]\n", "listen: item 1: expected a string, found a list", NULL,
                NULL);
    EXPECT_FAIL("devices: [{a: 1}]\n", "devices: item 1: expected a string, found a mapping",
                NULL, NULL);
}

/* ---- security keys --------------------------------------------------------------------------- */

#define HASH_A "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

QD_TEST(security_defaults_are_open_loopback) {
    qd_config c = {0};
    qd_error err = {0};
    QD_CHECK_OK(parse("", &c, &err), &err);
    QD_CHECK(c.tls.cert == NULL && c.tls.key == NULL && c.tls.client_ca == NULL);
    QD_CHECK(!c.allow_insecure_remote);
    QD_CHECK_EQ_INT(c.auth.n_tokens, 0);
    QD_CHECK(c.auth.token_file == NULL);
    qd_config_free(&c);
}

QD_TEST(plaintext_remote_listen_is_refused) {
    /* Each non-local address is named; loopback and unix sockets pass. */
    EXPECT_FAIL("listen: [\"0.0.0.0:7433\"]\n", "listen: '0.0.0.0:7433' is neither loopback",
                "allow_insecure_remote", NULL);
    EXPECT_FAIL("listen: [\"127.0.0.1:1\", \"[::]:80\"]\n", "'[::]:80' is neither", NULL, NULL);
    EXPECT_FAIL("listen: [\"my-host:80\"]\n", "'my-host:80'", NULL, NULL);
    EXPECT_FAIL("listen: [\"128.0.0.1:80\"]\n", "'128.0.0.1:80'", NULL, NULL);
    qd_config c = {0};
    qd_error err = {0};
    QD_CHECK_OK(parse("listen: [\"127.9.8.7:1\", \"[::1]:2\", \"localhost:3\", "
                      "\"unix:/run/q.sock\"]\n", &c, &err), &err);
    QD_CHECK_OK(parse("listen: [\"0.0.0.0:1\"]\nallow_insecure_remote: yes\n", &c, &err), &err);
    QD_CHECK(c.allow_insecure_remote);
    QD_CHECK_OK(parse("listen: [\"0.0.0.0:1\"]\ntls: {cert: /c.pem, key: /k.pem}\n", &c, &err),
                &err);
    QD_CHECK_EQ_STR(c.tls.cert, "/c.pem");
    QD_CHECK_EQ_STR(c.tls.key, "/k.pem");
    qd_config_free(&c);
    QD_CHECK(qd_config_listen_is_local("127.0.0.1:0"));
    QD_CHECK(qd_config_listen_is_local("[::1]:0"));
    QD_CHECK(!qd_config_listen_is_local("[::]:0"));
    QD_CHECK(!qd_config_listen_is_local("127.0.0.1.example.org:80"));
}

QD_TEST(metrics_endpoint_keys) {
    qd_config c = {0};
    qd_error err = {0};
    /* Off by default; loopback forms pass, port 0 included. */
    QD_CHECK_OK(parse("", &c, &err), &err);
    QD_CHECK(c.metrics.listen == NULL);
    QD_CHECK(!c.metrics.allow_remote);
    static const char *const ok[] = {"127.0.0.1:9100", "127.0.0.1:0", "localhost:9100",
                                     "[::1]:9100", "127.8.9.10:65535"};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        char yaml[128];
        snprintf(yaml, sizeof yaml, "metrics:\n  listen: \"%s\"\n", ok[i]);
        QD_CHECK_OK(parse(yaml, &c, &err), &err);
        QD_CHECK_EQ_STR(c.metrics.listen, ok[i]);
    }
    /* "" unsets it again. */
    QD_CHECK_OK(parse("metrics.listen: \"\"\n", &c, &err), &err);
    QD_CHECK(c.metrics.listen == NULL);

    /* Beyond loopback only with metrics.allow_remote; the message names the key, the line,
     * the address and the way out. allow_insecure_remote (the gRPC rule) does not open it. */
    EXPECT_FAIL("log_level: info\nmetrics:\n  listen: 0.0.0.0:9100\n",
                "test.yaml:3: metrics.listen: '0.0.0.0:9100' is not a loopback address",
                "metrics.allow_remote: true", NULL);
    EXPECT_FAIL("allow_insecure_remote: true\nmetrics.listen: \"[::]:9100\"\n",
                "metrics.listen: '[::]:9100'", "metrics.allow_remote", NULL);
    EXPECT_FAIL("metrics: {listen: \"10.1.2.3:9100\", allow_remote: false}\n",
                "'10.1.2.3:9100'", NULL, NULL);
    QD_CHECK_OK(parse("metrics: {listen: \"0.0.0.0:9100\", allow_remote: true}\n", &c, &err),
                &err);
    QD_CHECK_EQ_STR(c.metrics.listen, "0.0.0.0:9100");
    QD_CHECK(c.metrics.allow_remote);

    /* Forms that are not an address the endpoint can bind. */
    EXPECT_FAIL("metrics.listen: example.com:9100\n", "test.yaml:1: metrics.listen: expected",
                "'example.com:9100'", "names are not resolved");
    EXPECT_FAIL("metrics.listen: \"unix:/run/m.sock\"\n", "metrics.listen: expected", NULL,
                NULL);
    EXPECT_FAIL("metrics.listen: \"::1:9100\"\n", "IPv6 address in brackets", NULL, NULL);
    EXPECT_FAIL("metrics.listen: \"127.0.0.1:65536\"\n", "a port 0..65535", NULL, NULL);
    EXPECT_FAIL("metrics.listen: \"127.0.0.1\"\n", "metrics.listen: expected", NULL, NULL);
    EXPECT_FAIL("metrics.listen: \"[::1%lo]:9100\"\n", "no zone", NULL, NULL);
    EXPECT_FAIL("metrics.allow_remote: maybe\n", "metrics.allow_remote: expected true or false",
                NULL, NULL);

    /* Neither key is reloadable: a reload that changes one is logged as waiting for a
     * restart. */
    qd_config b = {0};
    QD_REQUIRE(parse("metrics: {listen: \"127.0.0.1:9100\", allow_remote: true}\n", &b, &err)
               == QD_OK);
    qd_config_free(&c);
    QD_REQUIRE(parse("", &c, &err) == QD_OK);
    const char *names[4] = {0};
    QD_CHECK_EQ_INT(qd_config_immutable_changes(&c, &b, names, 4), 2);
    QD_CHECK_EQ_STR(names[0], "metrics.listen");
    QD_CHECK_EQ_STR(names[1], "metrics.allow_remote");
    qd_config_free(&b);
    qd_config_free(&c);
}

QD_TEST(tls_keys_come_in_pairs) {
    EXPECT_FAIL("tls.cert: /c.pem\n", "tls.key: not set, but tls.cert is", NULL, NULL);
    EXPECT_FAIL("tls.key: /k.pem\n", "tls.cert: not set, but tls.key is", NULL, NULL);
    EXPECT_FAIL("tls.client_ca: /ca.pem\n", "tls.client_ca: needs tls.cert", NULL, NULL);
    EXPECT_FAIL("tls.cert: c.pem\n", "tls.cert: expected an absolute path", NULL, NULL);
}

QD_TEST(auth_entries) {
    qd_config_token t;
    qd_error err = {0};
    QD_CHECK_OK(qd_config_parse_token("submit:" HASH_A ":ci-bot", &t, &err), &err);
    QD_CHECK_EQ_INT(t.role, QD_ROLE_SUBMIT);
    QD_CHECK_EQ_INT(t.sha256[0], 0x9f);
    QD_CHECK_EQ_INT(t.sha256[31], 0x08);
    QD_CHECK_EQ_STR(t.name, "ci-bot");
    QD_CHECK_OK(qd_config_parse_token("admin:" HASH_A, &t, &err), &err);
    QD_CHECK_EQ_INT(t.role, QD_ROLE_ADMIN);
    QD_CHECK_EQ_STR(t.name, "");
    static const char *const bad[] = {
        "root:" HASH_A, "read", "read:abc", "read:" HASH_A "0", "read:" HASH_A ":",
        "read:" HASH_A ":a b", "read:" HASH_A ":a:b",
        "read:zz86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        qd_error e = {0};
        QD_CHECK_MSG(qd_config_parse_token(bad[i], &t, &e) == QD_ERR_CONFIG, "accepted '%s'",
                     bad[i]);
        /* The hash (or a token pasted in its place) never reaches a message. */
        QD_CHECK_MSG(strstr(e.msg, "9f86d0") == NULL && strstr(e.msg, "zz86") == NULL,
                     "message quotes the hash: %s", e.msg);
    }
    qd_config c = {0};
    QD_CHECK_OK(parse("auth:\n  tokens: [\"read:" HASH_A "\"]\n  token_file: /etc/t\n", &c,
                      &err), &err);
    QD_CHECK_EQ_INT(c.auth.n_tokens, 1);
    QD_CHECK_EQ_STR(c.auth.token_file, "/etc/t");
    qd_config_free(&c);
    EXPECT_FAIL("auth.tokens: [\"writer:" HASH_A "\"]\n", "auth.tokens: item 1",
                "expected a role read, submit or admin, got 'writer'", NULL);
    EXPECT_FAIL("auth.tokens: [\"read:s3cr3t\"]\n", "64 hex digits", NULL, NULL);
}

QD_TEST(path_values) {
    qd_config c = {0};
    qd_error err = {0};
    QD_CHECK_OK(parse("data_dir: \"/var/lib/q w\"", &c, &err), &err);
    QD_CHECK_EQ_STR(c.data_dir, "/var/lib/q w");
    qd_config_free(&c);
    EXPECT_FAIL("data_dir: var/lib/quantd", "test.yaml:1: data_dir: expected an absolute path, "
                "got 'var/lib/quantd'", NULL, NULL);
    EXPECT_FAIL("data_dir: ~/quantd", "~ is not expanded", NULL, NULL);
    EXPECT_FAIL("data_dir:", "data_dir: expected an absolute path, got ''", NULL, NULL);
    EXPECT_FAIL("data_dir: \"/a\\0b\"", "data_dir: contains a NUL character", NULL, NULL);
    EXPECT_FAIL("data_dir: [/a]", "data_dir: expected an absolute path, found a list", NULL,
                NULL);
}

/* ---- YAML rules ------------------------------------------------------------------------------ */

QD_TEST(unknown_key_names_line_and_suggests) {
    EXPECT_FAIL("log_level: info\nlimits:\n  chunk_byte: 1MiB\n",
                "test.yaml:3: limits.chunk_byte: unknown key (did you mean 'limits.chunk_bytes'?)",
                NULL, NULL);
    EXPECT_FAIL("limit:\n  chunk_bytes: 1MiB\n",
                "test.yaml:1: limit: unknown key (did you mean 'limits'?)", NULL, NULL);
    EXPECT_FAIL("\n\nlgo_level: info\n", "test.yaml:3: lgo_level: unknown key (did you mean "
                "'log_level'?)", NULL, NULL);
    /* A key written outside its section: suggest where it lives. */
    EXPECT_FAIL("chunk_bytes: 1MiB\n", "chunk_bytes: unknown key (did you mean "
                "'limits.chunk_bytes'?)", NULL, NULL);
    EXPECT_FAIL("workers:\n  cpus: 2\n", "test.yaml:2: workers.cpus: unknown key (did you mean "
                "'workers.cpu'?)", NULL, NULL);
    /* Nothing close: no suggestion. */
    qd_config c = {0};
    qd_error err = {0};
    QD_CHECK(parse("zzzzzzzz: 1\n", &c, &err) == QD_ERR_CONFIG);
    QD_CHECK_EQ_STR(err.msg, "test.yaml:1: zzzzzzzz: unknown key");
    /* Keys that cannot be names. */
    EXPECT_FAIL("? [a, b]\n: 1\n", "expected a key name, found a list", NULL, NULL);
    EXPECT_FAIL("\"\": 1\n", "test.yaml:1: : unknown key", NULL, NULL);
    EXPECT_FAIL("limits..chunk_bytes: 1MiB\n", "unknown key", NULL, NULL);
    EXPECT_FAIL("\"limits\\0x\": 1\n", "contains a NUL character", NULL, NULL);
    /* A very long key is cut in the message, and nothing overflows. */
    char yaml[1200];
    memset(yaml, 'k', 1000);
    memcpy(yaml + 1000, ": 1\n", 5);
    EXPECT_FAIL(yaml, "test.yaml:1: kkkkkkkk", "...: unknown key", NULL);
    memcpy(yaml, "limits:\n  ", 10);
    EXPECT_FAIL(yaml, "test.yaml:2: limits.kkkk", "...: unknown key", NULL);
}

QD_TEST(duplicate_keys_are_refused) {
    EXPECT_FAIL("log_level: info\nlog_level: debug\n",
                "test.yaml:2: log_level: duplicate key (first at line 1)", NULL, NULL);
    EXPECT_FAIL("limits:\n  chunk_bytes: 1MiB\n  chunk_bytes: 2MiB\n",
                "test.yaml:3: limits.chunk_bytes: duplicate key (first at line 2)", NULL, NULL);
    /* The nested and the dotted spelling are the same key. */
    EXPECT_FAIL("limits:\n  chunk_bytes: 1MiB\nlimits.chunk_bytes: 2MiB\n",
                "test.yaml:3: limits.chunk_bytes: duplicate key (first at line 2)", NULL, NULL);
    EXPECT_FAIL("limits: {}\ncache: {}\nlimits: {}\n",
                "test.yaml:3: limits: duplicate key (first at line 1)", NULL, NULL);
}

QD_TEST(nested_mappings_give_dotted_names) {
    static const char *const forms[] = {
        "limits:\n  chunk_bytes: 2MiB\n  max_message_bytes: 16MiB\n",
        "limits: {chunk_bytes: 2MiB, max_message_bytes: 16MiB}\n",
        "limits.chunk_bytes: 2MiB\nlimits.max_message_bytes: 16MiB\n",
        "limits:\n  chunk_bytes: 2MiB\nlimits.max_message_bytes: 16MiB\n",
        "{\"limits\": {\"chunk_bytes\": \"2MiB\", \"max_message_bytes\": \"16MiB\"}}",
    };
    for (size_t i = 0; i < sizeof forms / sizeof forms[0]; i++) {
        qd_config c = {0};
        qd_error err = {0};
        QD_CHECK_OK(parse(forms[i], &c, &err), &err);
        QD_CHECK_EQ_INT(c.limits.chunk_bytes, 2097152);
        QD_CHECK_EQ_INT(c.limits.max_message_bytes, 16777216);
        qd_config_free(&c);
    }
    EXPECT_FAIL("limits: 5\n", "test.yaml:1: limits: expected a mapping of keys (a section), "
                "found '5'", NULL, NULL);
    EXPECT_FAIL("limits: [a]\n", "limits: expected a mapping of keys", "found a list", NULL);
    EXPECT_FAIL("log_level: {a: 1}\n", "log_level: expected one of error, warning, notice, "
                "info, debug, found a mapping", NULL, NULL);
    EXPECT_FAIL("limits:\n  chunk_bytes:\n    x: 1\n", "test.yaml:3: limits.chunk_bytes: "
                "expected a size such as 1MiB, found a mapping", NULL, NULL);
    /* A mapping below an unknown section stops at the section, however deep it goes. */
    EXPECT_FAIL("limits: {a: {b: {c: {d: 1}}}}\n", "limits.a: unknown key", NULL, NULL);
}

QD_TEST(anchors_aliases_and_tags_are_refused) {
    EXPECT_FAIL("listen: &l [\"127.0.0.1:1\"]\n", "test.yaml:1: listen: anchors are not "
                "supported (&l)", NULL, NULL);
    EXPECT_FAIL("log_level: *lvl\n", "test.yaml:1: log_level: aliases are not supported (*lvl)",
                NULL, NULL);
    EXPECT_FAIL("log_level: !!str info\n", "log_level: tags are not supported", NULL, NULL);
    EXPECT_FAIL("limits: &sec {chunk_bytes: 1MiB}\n", "limits: anchors are not supported",
                NULL, NULL);
    EXPECT_FAIL("limits: !custom {}\n", "limits: tags are not supported (!custom)", NULL, NULL);
    EXPECT_FAIL("devices: [&d cpu]\n", "devices: anchors are not supported", NULL, NULL);
    EXPECT_FAIL("--- !map\nlog_level: info\n", "test.yaml:1: tags are not supported", NULL,
                NULL);
    EXPECT_FAIL("&k log_level: info\n", "anchors are not supported", NULL, NULL);
    EXPECT_FAIL("limits:\n  <<: *base\n", "limits.<<: unknown key", NULL, NULL);
    /* "Billion laughs": refused at the first anchor, nothing expanded. */
    EXPECT_FAIL("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a]\n"
                "c: [*b, *b, *b, *b, *b, *b, *b, *b]\n", "test.yaml:1: a: unknown key", NULL,
                NULL);
}

QD_TEST(document_shapes) {
    EXPECT_FAIL("hello\n", "test.yaml:1: the top level must be a mapping of keys, found 'hello'",
                NULL, NULL);
    EXPECT_FAIL("- a\n- b\n", "the top level must be a mapping of keys, found a list", NULL,
                NULL);
    EXPECT_FAIL("\"\"\n", "the top level must be a mapping", NULL, NULL);
    EXPECT_FAIL("*a\n", "aliases are not supported", NULL, NULL);
    EXPECT_FAIL("log_level: info\n---\nlog_level: debug\n",
                "test.yaml:2: only one YAML document is allowed", NULL, NULL);
    EXPECT_FAIL("log_level: info\nworkers:\n  cpu: 1\n threads: 2\n",
                "test.yaml:4: invalid YAML", NULL, NULL);
    EXPECT_FAIL("log_level: info: debug\n", "test.yaml:1: invalid YAML", NULL, NULL);
    EXPECT_FAIL("limits:\n\tchunk_bytes: 1MiB\n", "test.yaml:2: invalid YAML",
                "cannot indent with tabs", NULL);
    EXPECT_FAIL("listen: [\"127.0.0.1:1\"\n", "invalid YAML", NULL, NULL);
    EXPECT_FAIL("log_level: \"info\x01\"\n", "not valid YAML text", NULL, NULL);
    /* Binary junk, invalid UTF-8 and a NUL byte. */
    static const char junk[] = "\xff\xfe\x00\x01junk\x80\x81";
    qd_config c = {0};
    qd_error err = {0};
    pin_env();
    QD_CHECK(qd_config_parse(junk, sizeof junk - 1, "junk", &c, &err) == QD_ERR_CONFIG);
    qd_error_clear(&err);
    static const char nul[] = "log_level: info\n\0workers: {}\n";
    QD_CHECK(qd_config_parse(nul, sizeof nul - 1, "nul", &c, &err) == QD_ERR_CONFIG);
    QD_CHECK(strstr(err.msg, "nul:2:") != NULL);
    qd_error_clear(&err);
    static const char bad_utf8[] = "log_level: \"\xc3\x28\"\n";
    QD_CHECK(qd_config_parse(bad_utf8, sizeof bad_utf8 - 1, "u", &c, &err) == QD_ERR_CONFIG);
    /* Deep nesting is refused at the top, not recursed into. */
    char deep[20001];
    memset(deep, '[', 10000);
    memset(deep + 10000, ']', 10000);
    deep[20000] = '\0';
    EXPECT_FAIL(deep, "the top level must be a mapping of keys, found a list", NULL, NULL);
    char deep2[20010];
    memcpy(deep2, "listen: ", 8);
    memset(deep2 + 8, '[', 10000);
    deep2[10008] = '\0';
    EXPECT_FAIL(deep2, "listen: item 1: expected a string, found a list", NULL, NULL);
    QD_CHECK(c.listen == NULL);
}

/* ---- cross-key rules ------------------------------------------------------------------------- */

QD_TEST(cross_key_rules) {
    /* chunk_bytes must stay 16KiB under max_message_bytes: 8MiB - 16KiB = 8372224. */
    qd_config c = {0};
    qd_error err = {0};
    QD_CHECK_OK(parse("limits: {chunk_bytes: 8372224, max_message_bytes: 8MiB}", &c, &err),
                &err);
    qd_config_free(&c);
    EXPECT_FAIL("limits:\n  max_message_bytes: 8MiB\n  chunk_bytes: 8372225\n",
                "test.yaml:3: limits.chunk_bytes: 8372225 leaves no room for framing",
                "16KiB below limits.max_message_bytes (8MiB)", NULL);
    /* The rule names chunk_bytes but points at the line that broke it. */
    EXPECT_FAIL("log_level: info\nlimits:\n  max_message_bytes: 1MiB\n",
                "test.yaml:3: limits.chunk_bytes: 1MiB leaves no room", NULL, NULL);
    EXPECT_FAIL("limits: {max_message_bytes: 256MiB, memory_quota: 255MiB}\n",
                "test.yaml:1: limits.memory_quota: 255MiB is less than "
                "limits.max_message_bytes (256MiB)", NULL, NULL);
    EXPECT_FAIL("\nlisten: []\n", "test.yaml:2: listen: no address to listen on", NULL, NULL);
    EXPECT_FAIL("listen: [\"127.0.0.1:1\", \"unix:/a\", \"127.0.0.1:1\"]\n",
                "listen: '127.0.0.1:1' is listed twice", NULL, NULL);
    EXPECT_FAIL("devices: []\n", "devices: no device", NULL, NULL);
    EXPECT_FAIL("devices: [auto, cpu]\n", "devices: 'auto' cannot be combined", NULL, NULL);
    EXPECT_FAIL("devices: [cuda:1, cuda:1]\n", "devices: 'cuda:1' is listed twice", NULL, NULL);
    EXPECT_FAIL("workers: {cpu: 0}\ndevices: [cpu]\n",
                "test.yaml:1: workers.cpu: is 0 but devices has only 'cpu'", NULL, NULL);
    QD_CHECK_OK(parse("workers: {cpu: 0}\ndevices: [cuda:0]\n", &c, &err), &err);
    qd_config_free(&c);

    /* qd_config_validate() on a struct built by hand. */
    QD_CHECK_OK(qd_config_init_defaults(&c, &err), &err);
    c.limits.chunk_bytes = c.limits.max_message_bytes;
    qd_error_clear(&err);
    QD_CHECK(qd_config_validate(&c, &err) == QD_ERR_CONFIG);
    QD_CHECK(strncmp(err.msg, "limits.chunk_bytes: ", 20) == 0);
    c.limits.chunk_bytes = 4096;
    free(c.data_dir);
    c.data_dir = strdup("relative");
    qd_error_clear(&err);
    QD_CHECK(qd_config_validate(&c, &err) == QD_ERR_CONFIG);
    QD_CHECK_EQ_STR(err.msg, "data_dir: expected an absolute path, got 'relative'");
    qd_config_free(&c);
}

QD_TEST(data_dir_default_resolution) {
    static const char *const vars[] = {"STATE_DIRECTORY", "XDG_STATE_HOME", "HOME"};
    char *saved[3];
    for (int i = 0; i < 3; i++) {
        const char *v = getenv(vars[i]);
        saved[i] = v ? strdup(v) : NULL;
        unsetenv(vars[i]);
    }
    static const struct {
        const char *state, *xdg, *home, *want;
    } cases[] = {
        {"/var/lib/quantd", "/x", "/home/u", "/var/lib/quantd"},
        {"/var/lib/quantd:/var/lib/other", NULL, NULL, "/var/lib/quantd"},
        {"/var/lib/quantd/", NULL, NULL, "/var/lib/quantd"},
        {"relative", "/xdg/state", "/home/u", "/xdg/state/quantd"},
        {NULL, "/xdg/state/", NULL, "/xdg/state/quantd"},
        {NULL, "xdg-relative", "/home/u", "/home/u/.local/state/quantd"},
        {NULL, NULL, "/home/u", "/home/u/.local/state/quantd"},
        {NULL, NULL, "/", "/.local/state/quantd"},
        {"/", NULL, NULL, "/"},
        {NULL, NULL, NULL, NULL},
        {"", "", "relative-home", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *vals[3] = {cases[i].state, cases[i].xdg, cases[i].home};
        for (int v = 0; v < 3; v++) {
            if (vals[v]) setenv(vars[v], vals[v], 1);
            else unsetenv(vars[v]);
        }
        char *dir = (char *)"untouched";
        qd_error err = {0};
        qd_err rc = qd_config_default_data_dir(&dir, &err);
        if (cases[i].want) {
            QD_CHECK_OK(rc, &err);
            QD_CHECK_EQ_STR(dir, cases[i].want);
            free(dir);
        } else {
            QD_CHECK_EQ_INT(rc, QD_ERR_NOT_FOUND);
            QD_CHECK(dir == NULL);
            /* No default: fine if the file sets data_dir, an error naming data_dir if not. */
            qd_config c = {0};
            qd_error_clear(&err);
            QD_CHECK(qd_config_parse("log_level: info\n", 16, "q.yaml", &c, &err) ==
                     QD_ERR_CONFIG);
            QD_CHECK(strncmp(err.msg, "q.yaml: data_dir: not set, and no default", 41) == 0);
            QD_CHECK_OK(qd_config_parse("data_dir: /d\n", 13, "q.yaml", &c, &err), &err);
            QD_CHECK_EQ_STR(c.data_dir, "/d");
            qd_config_free(&c);
        }
    }
    for (int i = 0; i < 3; i++) {
        if (saved[i]) setenv(vars[i], saved[i], 1);
        else unsetenv(vars[i]);
        free(saved[i]);
    }
}

QD_TEST(failed_parse_leaves_the_old_config) {
    qd_config c = {0};
    qd_error err = {0};
    QD_REQUIRE(parse("listen: [\"unix:/run/a.sock\"]\nlimits: {chunk_bytes: 2MiB}\n", &c,
                     &err) == QD_OK);
    char **listen = c.listen;
    char *data_dir = c.data_dir;
    static const char *const bad[] = {
        /* each sets values before it fails, in a different stage */
        "listen: [\"127.0.0.1:9\"]\ndata_dir: /x\nlimits: {chunk_bytes: lots}\n",
        "listen: [\"127.0.0.1:9\"]\ndata_dir: /x\nnope: 1\n",
        "listen: [\"127.0.0.1:9\"]\ndata_dir: /x\nlimits: {chunk_bytes: 64MiB}\n",
        "listen: [\"127.0.0.1:9\", \"bad\"]\n",
        "listen: [\"127.0.0.1:9\"]\ndata_dir: /x\nlog_level: [\n",
        "data_dir: /x\nlimits:\n  chunk_bytes: 1MiB\n  chunk_bytes: 1MiB\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        QD_CHECK_MSG(parse(bad[i], &c, &err) != QD_OK, "accepted: %s", bad[i]);
        QD_CHECK(c.listen == listen && c.data_dir == data_dir && c.n_listen == 1);
        QD_CHECK_EQ_STR(c.listen[0], "unix:/run/a.sock");
        QD_CHECK_EQ_STR(c.data_dir, TEST_STATE_DIR);
        QD_CHECK_EQ_INT(c.limits.chunk_bytes, 2097152);
    }
    /* An error already in err is kept (first error wins), and the parse still fails. */
    qd_error_clear(&err);
    qd_error_set(&err, QD_ERR_IO, "earlier");
    QD_CHECK(qd_config_parse("x: 1", 4, "t", &c, &err) == QD_ERR_CONFIG);
    QD_CHECK_EQ_STR(err.msg, "earlier");
    qd_config_free(&c);
}

/* ---- dump, compare --------------------------------------------------------------------------- */

static char *dump_to_string(const qd_config *c, size_t *len) {
    char *buf = NULL;
    FILE *f = open_memstream(&buf, len);
    if (!f) return NULL;
    qd_config_dump(c, f);
    fclose(f);
    return buf;
}

static void check_round_trip(const char *yaml) {
    qd_config a = {0}, b = {0};
    qd_error err = {0};
    QD_CHECK_OK(parse(yaml, &a, &err), &err);
    size_t len = 0;
    char *text = dump_to_string(&a, &len);
    QD_REQUIRE(text != NULL);
    QD_CHECK_OK(qd_config_parse(text, len, "dump", &b, &err), &err);
    QD_CHECK_MSG(qd_config_equal(&a, &b), "dump does not read back:\n%s", text);
    /* Every key appears, with its comment. */
    for (size_t i = 0; i < qd_config_key_count(); i++) {
        const qd_config_key *k = qd_config_key_at(i);
        const char *leaf = strrchr(k->name, '.');
        char line[160];
        snprintf(line, sizeof line, "%s: ", leaf ? leaf + 1 : k->name);
        QD_CHECK_MSG(strstr(text, line) != NULL, "dump lacks %s", k->name);
        QD_CHECK_MSG(strstr(text, k->help) != NULL, "dump lacks the help of %s", k->name);
    }
    free(text);
    qd_config_free(&a);
    qd_config_free(&b);
}

QD_TEST(dump_parses_back_to_the_same_config) {
    check_round_trip("");
    check_round_trip("listen: [\"unix:/run/q.sock\", \"[::1]:7433\", \"h:1\"]\n"
                     "tls: {cert: /etc/q/c.pem, key: /etc/q/k.pem, client_ca: /etc/q/ca.pem}\n"
                     "auth: {tokens: [\"admin:" HASH_A ":ops\"], token_file: /etc/q/tokens}\n"
                     "data_dir: /srv/quantd\n"
                     "log_level: debug\n"
                     "workers: {cpu: 0, threads: 1024}\n"
                     "devices: [cuda:0, cuda:3]\n"
                     "limits:\n"
                     "  max_message_bytes: 100MB\n"
                     "  chunk_bytes: 4097\n"
                     "  memory_quota: 1TiB\n"
                     "  max_concurrent_streams: 1\n"
                     "  max_upload_bytes: 8191PiB\n"
                     "  max_queued_jobs: 100000\n"
                     "cache: {max_bytes: 0}\n"
                     "shutdown: {drain_seconds: 90}\n"
                     "metrics: {listen: \"[::1]:0\", allow_remote: true}\n");
    /* Strings YAML would fold, refuse or misread unless the dump escapes them. */
    check_round_trip("listen: [\"unix:/run/q\\\"b\\\\c\\x01\\u2028\\u2029\\x85\\uFEFF\\uFFFE "
                     "\\t\\r\\x7f\\x9f é 😀 #: - [x]\"]\n"
                     "data_dir: \"/srv/it's: a {test} & *not* !tag\"\n");
    qd_config c = {0};
    qd_error err = {0};
    QD_CHECK_OK(parse("", &c, &err), &err);
    size_t len;
    char *text = dump_to_string(&c, &len);
    QD_REQUIRE(text != NULL);
    /* Sections nest, values use units. */
    QD_CHECK(strstr(text, "\nlimits:\n") != NULL);
    QD_CHECK(strstr(text, "\n  chunk_bytes: 1MiB\n") != NULL);
    QD_CHECK(strstr(text, "\n  drain_seconds: 30s\n") != NULL);
    QD_CHECK(strstr(text, "\nlisten: [\"127.0.0.1:7433\"]\n") != NULL);
    /* No line wider than 100 columns. */
    for (const char *l = text; *l;) {
        const char *e = strchr(l, '\n');
        size_t n = e ? (size_t)(e - l) : strlen(l);
        QD_CHECK_MSG(n <= 100, "dump line too long: %.*s", (int)n, l);
        l += n + (e ? 1 : 0);
    }
    free(text);
    qd_config_free(&c);
}

QD_TEST(immutable_changes_for_reload) {
    qd_config a = {0}, b = {0};
    qd_error err = {0};
    QD_REQUIRE(parse("", &a, &err) == QD_OK);
    QD_REQUIRE(parse("log_level: debug\nworkers: {cpu: 2, threads: 3}\nlisten: [\"h:1\"]\n"
                     "allow_insecure_remote: true\n",
                     &b, &err) == QD_OK);
    const char *names[4] = {0};
    QD_CHECK_EQ_INT(qd_config_immutable_changes(&a, &b, names, 4), 3);
    QD_CHECK_EQ_STR(names[0], "listen");
    QD_CHECK_EQ_STR(names[1], "workers.cpu");
    QD_CHECK_EQ_STR(names[2], "allow_insecure_remote");
    QD_CHECK_EQ_INT(qd_config_immutable_changes(&a, &b, names, 1), 3); /* count beyond cap */
    QD_CHECK_EQ_INT(qd_config_immutable_changes(&a, &a, NULL, 0), 0);
    QD_CHECK(!qd_config_equal(&a, &b));
    QD_CHECK(!qd_config_key_equal(&a, &b, 2)); /* log_level */
    QD_CHECK(qd_config_key_equal(&a, &b, 1));  /* data_dir */
    qd_config_free(&a);
    qd_config_free(&b);
}

/* ---- files and the command ------------------------------------------------------------------- */

QD_TEST(reference_doc_is_current) {
    char *doc = NULL, *gen = NULL;
    size_t doc_len = 0, gen_len = 0;
    qd_error err = {0};
    QD_CHECK_OK(qd_read_file(QD_SOURCE_DIR "/docs/config.md", 1 << 20, &doc, &doc_len, &err),
                &err);
    FILE *f = open_memstream(&gen, &gen_len);
    QD_REQUIRE(f != NULL);
    qd_config_write_markdown(f);
    fclose(f);
    QD_CHECK_MSG(doc && doc_len == gen_len && memcmp(doc, gen, gen_len) == 0,
                 "docs/config.md is stale: regenerate it with "
                 "`quantd config keys --markdown > docs/config.md`");
    /* Every key is in it. */
    for (size_t i = 0; i < qd_config_key_count() && gen; i++) {
        char cell[160];
        snprintf(cell, sizeof cell, "| `%s` |", qd_config_key_at(i)->name);
        QD_CHECK_MSG(strstr(gen, cell) != NULL, "doc lacks %s", qd_config_key_at(i)->name);
    }
    free(doc);
    free(gen);
}

QD_TEST(example_config_passes) {
    qd_config c = {0};
    qd_error err = {0};
    QD_CHECK_OK(qd_config_load(QD_SOURCE_DIR "/systemd/quantd.yaml", &c, &err), &err);
    QD_CHECK_EQ_STR(c.data_dir, "/var/lib/quantd");
    QD_CHECK(c.n_listen >= 1);
    qd_config_free(&c);
    qd_error_clear(&err);
    QD_CHECK_EQ_INT(qd_config_load(QD_SOURCE_DIR "/no/such/quantd.yaml", &c, &err),
                    QD_ERR_NOT_FOUND);
}

/* The corpus doubles as a table of cases: ok-* must load, bad-* must be refused. */
QD_TEST(corpus_files_behave_as_named) {
    const char *dir = QD_SOURCE_DIR "/tests/corpus/config";
    DIR *d = opendir(dir);
    QD_REQUIRE(d != NULL);
    int n_ok = 0, n_bad = 0;
    struct dirent *de;
    pin_env();
    while ((de = readdir(d)) != NULL) {
        bool ok = strncmp(de->d_name, "ok-", 3) == 0, bad = strncmp(de->d_name, "bad-", 4) == 0;
        if (!ok && !bad) continue;
        char path[4096];
        qd_error err = {0};
        qd_config c = {0};
        QD_REQUIRE(qd_path_join(path, sizeof path, dir, de->d_name, &err) == QD_OK);
        qd_err rc = qd_config_load(path, &c, &err);
        if (ok) {
            QD_CHECK_MSG(rc == QD_OK, "%s: %s", de->d_name, err.msg);
            n_ok++;
        } else {
            QD_CHECK_MSG(rc == QD_ERR_CONFIG, "%s: %s", de->d_name,
                         rc == QD_OK ? "accepted" : err.msg);
            n_bad++;
        }
        qd_config_free(&c);
    }
    closedir(d);
    QD_CHECK(n_ok >= 3);
    QD_CHECK(n_bad >= 10);
}

/* Run `quantd config ARGS...` with stdout and stderr captured into out. */
static int run_config(char *out, size_t cap, int argc, char **argv) {
    fflush(stdout);
    fflush(stderr);
    FILE *tmp = tmpfile();
    if (!tmp) return -1;
    int so = dup(1), se = dup(2);
    dup2(fileno(tmp), 1);
    dup2(fileno(tmp), 2);
    int rc = qd_cmd_config(argc, argv);
    fflush(stdout);
    fflush(stderr);
    dup2(so, 1);
    dup2(se, 2);
    close(so);
    close(se);
    rewind(tmp);
    size_t n = fread(out, 1, cap - 1, tmp);
    out[n] = '\0';
    fclose(tmp);
    return rc;
}

QD_TEST(command_line) {
    static char out[1 << 16];
    char example[] = QD_SOURCE_DIR "/systemd/quantd.yaml";
    char missing[] = QD_SOURCE_DIR "/no/such.yaml";
    char config[] = "config", check[] = "check", dump[] = "dump", keys[] = "keys",
         markdown[] = "--markdown", help[] = "--help", frob[] = "frob", opt[] = "-x";
    pin_env();

    char *a1[] = {config, check, example, NULL};
    QD_CHECK_EQ_INT(run_config(out, sizeof out, 3, a1), 0);
    QD_CHECK(strstr(out, "/systemd/quantd.yaml: ok\n") != NULL);

    char *a2[] = {config, check, missing, NULL};
    QD_CHECK_EQ_INT(run_config(out, sizeof out, 3, a2), 1);
    QD_CHECK(strstr(out, "no/such.yaml: cannot open") != NULL);

    char *a3[] = {config, dump, NULL};
    QD_CHECK_EQ_INT(run_config(out, sizeof out, 2, a3), 0);
    QD_CHECK(strstr(out, "chunk_bytes: 1MiB") != NULL);
    QD_CHECK(strstr(out, "data_dir: \"" TEST_STATE_DIR "\"") != NULL);

    char *a4[] = {config, dump, example, NULL};
    QD_CHECK_EQ_INT(run_config(out, sizeof out, 3, a4), 0);
    QD_CHECK(strstr(out, "listen: [\"unix:/run/quantd/quantd.sock\", \"127.0.0.1:7433\"]"));

    char *a5[] = {config, keys, markdown, NULL};
    QD_CHECK_EQ_INT(run_config(out, sizeof out, 3, a5), 0);
    QD_CHECK(strncmp(out, "# quantd configuration reference\n", 33) == 0);

    char *a6[] = {config, keys, NULL};
    QD_CHECK_EQ_INT(run_config(out, sizeof out, 2, a6), 0);
    QD_CHECK(strstr(out, "limits.chunk_bytes  (size, reloadable)") != NULL);

    char *a7[] = {config, help, NULL};
    QD_CHECK_EQ_INT(run_config(out, sizeof out, 2, a7), 0);
    QD_CHECK(strncmp(out, "usage: quantd config", 20) == 0);

    /* Usage errors exit 2. */
    char *u1[] = {config, NULL};
    QD_CHECK_EQ_INT(run_config(out, sizeof out, 1, u1), 2);
    char *u2[] = {config, frob, NULL};
    QD_CHECK_EQ_INT(run_config(out, sizeof out, 2, u2), 2);
    QD_CHECK(strstr(out, "unknown subcommand 'frob'") != NULL);
    char *u3[] = {config, check, NULL};
    QD_CHECK_EQ_INT(run_config(out, sizeof out, 2, u3), 2);
    char *u4[] = {config, check, example, example, NULL};
    QD_CHECK_EQ_INT(run_config(out, sizeof out, 4, u4), 2);
    char *u5[] = {config, keys, opt, NULL};
    QD_CHECK_EQ_INT(run_config(out, sizeof out, 3, u5), 2);
    char *u6[] = {config, dump, markdown, NULL};
    QD_CHECK_EQ_INT(run_config(out, sizeof out, 3, u6), 2);
}

QD_TEST_MAIN()
