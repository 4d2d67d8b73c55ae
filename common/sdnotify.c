/*
 * sdnotify.c - sd_notify(3) over a unix datagram socket; see sdnotify.h.
 */
#include "sdnotify.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

qd_err qd_sd_notify(const char *state, qd_error *err) {
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path) return QD_OK;
    if (path[0] != '/' && path[0] != '@')
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "NOTIFY_SOCKET: expected an absolute path or @abstract name, got "
                            "'%.100s'", path);
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    size_t n = strlen(path);
    if (n >= sizeof sa.sun_path)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "NOTIFY_SOCKET: path longer than %zu bytes",
                            sizeof sa.sun_path - 1);
    memcpy(sa.sun_path, path, n);
    if (sa.sun_path[0] == '@') sa.sun_path[0] = '\0'; /* abstract namespace */
    socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);

    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return qd_error_set(err, QD_ERR_IO, "NOTIFY_SOCKET: socket: %s", strerror(errno));
    size_t slen = strlen(state);
    ssize_t w;
    do {
        w = sendto(fd, state, slen, MSG_NOSIGNAL, (const struct sockaddr *)&sa, len);
    } while (w < 0 && errno == EINTR);
    int saved = errno;
    close(fd);
    if (w < 0)
        return qd_error_set(err, QD_ERR_IO, "NOTIFY_SOCKET %s: sendto: %s", path,
                            strerror(saved));
    if ((size_t)w != slen)
        return qd_error_set(err, QD_ERR_IO, "NOTIFY_SOCKET %s: short send (%zd of %zu bytes)",
                            path, w, slen);
    return QD_OK;
}

static int parse_u64(const char *s, uint64_t *out) {
    if (!s || !*s) return 0;
    uint64_t v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9') return 0;
        unsigned d = (unsigned)(*s - '0');
        if (v > (UINT64_MAX - d) / 10) return 0;
        v = v * 10 + d;
    }
    *out = v;
    return 1;
}

uint64_t qd_sd_watchdog_usec(void) {
    uint64_t usec, pid;
    if (!parse_u64(getenv("WATCHDOG_USEC"), &usec) || usec == 0) return 0;
    const char *p = getenv("WATCHDOG_PID");
    if (p && *p && (!parse_u64(p, &pid) || pid != (uint64_t)getpid())) return 0;
    return usec;
}
