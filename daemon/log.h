/*
 * log.h - the daemon's logger (log.c): the serving code (transport, handlers, metrics, the
 * serve command) writes its events through it.
 */
#ifndef QD_LOG_H
#define QD_LOG_H

#include <stdbool.h>

/* Levels are those of the config's log_level (enum qd_config_log_level: 0 error .. 4 debug).
 * A line reads "quantd: <level>: <message>"; under systemd's journal (JOURNAL_STREAM set) it
 * starts with the syslog priority ("<3>") so the journal files it at the right level. */
void qd_server_set_log_level(int level);
bool qd_server_log_enabled(int level);
void qd_server_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif /* QD_LOG_H */
