/*
 * log.c - the daemon's logger: one line per event on stderr, with a level; under systemd
 * (JOURNAL_STREAM set) each line starts with its syslog priority so the journal files it at
 * the right level. Apart from the transport so that the handlers, the metrics endpoint and
 * their test transport all log through the same code.
 */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "config.h"

static atomic_int log_level = QD_CONFIG_LOG_INFO;
static atomic_int log_journal = -1; /* stderr goes to the journal; -1 not looked up yet */

static const char *const level_names[] = {"error", "warning", "notice", "info", "debug"};
static const int level_priorities[] = {3, 4, 5, 6, 7}; /* syslog LOG_ERR .. LOG_DEBUG */

void qd_server_set_log_level(int level) {
    if (level < 0) level = 0;
    if (level > 4) level = 4;
    atomic_store(&log_level, level);
}

bool qd_server_log_enabled(int level) { return level <= atomic_load(&log_level); }

void qd_server_log(int level, const char *fmt, ...) {
    if (level < 0) level = 0;
    if (level > 4) level = 4;
    if (!qd_server_log_enabled(level)) return;
    /* One write per line, so lines of concurrent threads never interleave. */
    char line[2048];
    size_t n = 0;
    int k;
    int journal = atomic_load(&log_journal);
    if (journal < 0) {
        journal = getenv("JOURNAL_STREAM") != NULL;
        atomic_store(&log_journal, journal);
    }
    if (journal)
        k = snprintf(line, sizeof line, "<%d>quantd: %s: ", level_priorities[level],
                     level_names[level]);
    else
        k = snprintf(line, sizeof line, "quantd: %s: ", level_names[level]);
    if (k > 0) n = (size_t)k;
    va_list ap;
    va_start(ap, fmt);
    k = vsnprintf(line + n, sizeof line - n - 1, fmt, ap);
    va_end(ap);
    if (k > 0) n += (size_t)k < sizeof line - n - 1 ? (size_t)k : sizeof line - n - 2;
    for (size_t i = 0; i < n; i++)
        if (line[i] == '\n' || line[i] == '\r') line[i] = ' '; /* one event, one line */
    line[n++] = '\n';
    for (size_t off = 0; off < n;) {
        ssize_t w = write(STDERR_FILENO, line + off, n - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break;
        off += (size_t)w;
    }
}
