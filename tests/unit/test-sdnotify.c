/*
 * test-sdnotify.c - the sd_notify client against a datagram socket this test listens on, in
 * the filesystem and in the abstract namespace, and the watchdog variables.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "sdnotify.h"
#include "test.h"

/* Bind a datagram socket at name (a path, or "@name" for the abstract namespace). */
static int listen_at(const char *name) {
    int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    if (fd < 0) return -1;
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    size_t n = strlen(name);
    memcpy(sa.sun_path, name, n);
    if (name[0] == '@') sa.sun_path[0] = '\0';
    if (bind(fd, (struct sockaddr *)&sa, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void expect_message(int fd, const char *want) {
    char buf[256];
    ssize_t r = recv(fd, buf, sizeof buf - 1, MSG_DONTWAIT);
    QD_REQUIRE(r >= 0);
    buf[r] = '\0';
    QD_CHECK_EQ_STR(buf, want);
}

QD_TEST(unset_socket_sends_nothing_and_succeeds) {
    unsetenv("NOTIFY_SOCKET");
    qd_error err = {0};
    QD_CHECK_OK(qd_sd_notify("READY=1", &err), &err);
}

QD_TEST(path_socket_receives_the_state) {
    char dir[] = "/tmp/qd-sdnotify.XXXXXX";
    QD_REQUIRE(mkdtemp(dir));
    char path[128];
    snprintf(path, sizeof path, "%s/notify", dir);
    int fd = listen_at(path);
    QD_REQUIRE(fd >= 0);
    setenv("NOTIFY_SOCKET", path, 1);
    qd_error err = {0};
    QD_CHECK_OK(qd_sd_notify("READY=1\nSTATUS=serving", &err), &err);
    expect_message(fd, "READY=1\nSTATUS=serving");
    QD_CHECK_OK(qd_sd_notify("STOPPING=1", &err), &err);
    expect_message(fd, "STOPPING=1");
    close(fd);
    unlink(path);
    rmdir(dir);
    /* The socket is gone: the send fails with the path in the message. */
    qd_error e2 = {0};
    QD_CHECK_EQ_INT(qd_sd_notify("READY=1", &e2), QD_ERR_IO);
    QD_CHECK(strstr(e2.msg, path) != NULL);
    unsetenv("NOTIFY_SOCKET");
}

QD_TEST(abstract_socket_receives_the_state) {
    char name[64];
    snprintf(name, sizeof name, "@qd-sdnotify-test-%ld", (long)getpid());
    int fd = listen_at(name);
    QD_REQUIRE(fd >= 0);
    setenv("NOTIFY_SOCKET", name, 1);
    qd_error err = {0};
    QD_CHECK_OK(qd_sd_notify("WATCHDOG=1", &err), &err);
    expect_message(fd, "WATCHDOG=1");
    close(fd);
    unsetenv("NOTIFY_SOCKET");
}

QD_TEST(relative_socket_path_is_refused) {
    setenv("NOTIFY_SOCKET", "run/notify", 1);
    qd_error err = {0};
    QD_CHECK_EQ_INT(qd_sd_notify("READY=1", &err), QD_ERR_INVALID_ARG);
    QD_CHECK(strstr(err.msg, "run/notify") != NULL);
    unsetenv("NOTIFY_SOCKET");
}

QD_TEST(watchdog_interval_for_this_process_only) {
    char pid[32];
    snprintf(pid, sizeof pid, "%ld", (long)getpid());
    unsetenv("WATCHDOG_PID");
    unsetenv("WATCHDOG_USEC");
    QD_CHECK(qd_sd_watchdog_usec() == 0);
    setenv("WATCHDOG_USEC", "30000000", 1);
    QD_CHECK(qd_sd_watchdog_usec() == 30000000u);
    setenv("WATCHDOG_PID", pid, 1);
    QD_CHECK(qd_sd_watchdog_usec() == 30000000u);
    setenv("WATCHDOG_PID", "1", 1);
    QD_CHECK(qd_sd_watchdog_usec() == 0);
    unsetenv("WATCHDOG_PID");
    static const char *const bad[] = {"", "0", "-5", "12x", "99999999999999999999999"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        setenv("WATCHDOG_USEC", bad[i], 1);
        QD_CHECK(qd_sd_watchdog_usec() == 0);
    }
    unsetenv("WATCHDOG_USEC");
}

QD_TEST_MAIN()
