/* test-fsutil.c - whole-file read, atomic write, mkdir -p, rm -rf, path joins. */
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fsutil.h"
#include "test.h"

static char dir[256];

static void make_tmpdir(void) {
    snprintf(dir, sizeof dir, "/tmp/qd-fsutil-XXXXXX");
    if (!mkdtemp(dir)) dir[0] = '\0';
}

QD_TEST(write_read_roundtrip) {
    qd_error e = {0};
    char p[512], *buf;
    size_t len;
    QD_REQUIRE(dir[0]);
    QD_CHECK_OK(qd_path_join(p, sizeof p, dir, "a.txt", &e), &e);
    QD_CHECK_OK(qd_write_file_atomic(p, "hello\0world", 11, &e), &e);
    QD_CHECK_OK(qd_read_file(p, 100, &buf, &len, &e), &e);
    QD_CHECK_EQ_INT(len, 11);
    QD_CHECK(memcmp(buf, "hello\0world", 11) == 0 && buf[11] == '\0');
    free(buf);
    /* no temporary file left behind */
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp", p);
    QD_CHECK(access(tmp, F_OK) != 0);
    /* size limit */
    qd_error e2 = {0};
    QD_CHECK_EQ_INT(qd_read_file(p, 10, &buf, &len, &e2), QD_ERR_TOO_LARGE);
    QD_CHECK(strstr(e2.msg, "a.txt") != NULL);
}

QD_TEST(missing_file_names_the_path) {
    qd_error e = {0};
    char *buf;
    size_t len;
    QD_CHECK_EQ_INT(qd_read_file("/nonexistent/quantd-x", 10, &buf, &len, &e), QD_ERR_NOT_FOUND);
    QD_CHECK(strstr(e.msg, "/nonexistent/quantd-x") != NULL);
    qd_error e2 = {0};
    QD_CHECK_EQ_INT(qd_read_file(dir, 10, &buf, &len, &e2), QD_ERR_IO); /* a directory */
}

QD_TEST(mkdir_p_and_remove_tree) {
    qd_error e = {0};
    char p[512], f[600];
    QD_REQUIRE(dir[0]);
    snprintf(p, sizeof p, "%s/x/y/z", dir);
    QD_CHECK_OK(qd_mkdir_p(p, 0755, &e), &e);
    QD_CHECK(qd_is_dir(p));
    QD_CHECK_OK(qd_mkdir_p(p, 0755, &e), &e); /* idempotent */
    snprintf(f, sizeof f, "%s/file", p);
    QD_CHECK_OK(qd_write_file_atomic(f, "1", 1, &e), &e);
    QD_CHECK(qd_is_file(f));
    qd_error e2 = {0};
    QD_CHECK_EQ_INT(qd_mkdir_p(f, 0755, &e2), QD_ERR_IO); /* a file is in the way */
    snprintf(p, sizeof p, "%s/x", dir);
    QD_CHECK_OK(qd_remove_tree(p, &e), &e);
    QD_CHECK(!qd_is_dir(p));
    QD_CHECK_OK(qd_remove_tree(p, &e), &e); /* missing is fine */
}

QD_TEST(copy_file) {
    qd_error e = {0};
    char a[512], b[512], *buf;
    size_t len;
    QD_REQUIRE(dir[0]);
    snprintf(a, sizeof a, "%s/src", dir);
    snprintf(b, sizeof b, "%s/dst", dir);
    QD_CHECK_OK(qd_write_file_atomic(a, "abc", 3, &e), &e);
    QD_CHECK_OK(qd_copy_file(a, b, &e), &e);
    QD_CHECK_OK(qd_read_file(b, 10, &buf, &len, &e), &e);
    QD_CHECK(len == 3 && memcmp(buf, "abc", 3) == 0);
    free(buf);
}

QD_TEST(path_join) {
    qd_error e = {0};
    char p[16];
    QD_CHECK_OK(qd_path_join(p, sizeof p, "a", "b", &e), &e);
    QD_CHECK_EQ_STR(p, "a/b");
    QD_CHECK_OK(qd_path_join(p, sizeof p, "a/", "b", &e), &e);
    QD_CHECK_EQ_STR(p, "a/b");
    QD_CHECK_EQ_INT(qd_path_join(p, sizeof p, "aaaaaaaaaa", "bbbbbbbbbb", &e), QD_ERR_TOO_LARGE);
}

QD_TEST(cleanup) {
    qd_error e = {0};
    if (dir[0]) QD_CHECK_OK(qd_remove_tree(dir, &e), &e);
}

int main(void) {
    make_tmpdir();
    return qd_test_run();
}
