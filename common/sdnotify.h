/*
 * sdnotify.h - the systemd notification protocol (sd_notify(3)), without libsystemd.
 *
 * Under a Type=notify unit, systemd passes $NOTIFY_SOCKET (a unix datagram socket, possibly
 * in the abstract namespace when it starts with '@'); a service writes "READY=1",
 * "STOPPING=1", "RELOADING=1", "WATCHDOG=1" or "STATUS=..." lines to it. Outside systemd the
 * variable is unset and every call here does nothing. $WATCHDOG_USEC (with $WATCHDOG_PID, when
 * set, naming this process) asks for a "WATCHDOG=1" at least that often.
 */
#ifndef QD_SDNOTIFY_H
#define QD_SDNOTIFY_H

#include <stdint.h>

#include "error.h"

/* Send state (one or more "KEY=VALUE" lines). No $NOTIFY_SOCKET: QD_OK, nothing sent.
 * A malformed socket path or a failed send: QD_ERR_INVALID_ARG / QD_ERR_IO with the reason. */
qd_err qd_sd_notify(const char *state, qd_error *err);

/* The watchdog interval systemd asks for, in microseconds; 0 when there is none (unset,
 * malformed, or $WATCHDOG_PID names another process). Ping at half of it. */
uint64_t qd_sd_watchdog_usec(void);

#endif /* QD_SDNOTIFY_H */
