/* fsutil.c - filesystem helpers: whole-file read, atomic write, mkdir -p, rm -rf. */
#include "fsutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

qd_err qd_open_regular(const char *path, int *ret_fd, uint64_t *ret_size, qd_error *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return qd_error_set(err, errno == ENOENT ? QD_ERR_NOT_FOUND : QD_ERR_IO,
                            "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return qd_error_set(err, QD_ERR_IO, "%s: not a regular file", path);
    }
    *ret_fd = fd;
    *ret_size = (uint64_t)st.st_size;
    return QD_OK;
}

qd_err qd_read_file(const char *path, size_t max_bytes, char **out, size_t *len,
                    qd_error *err) {
    *out = NULL;
    if (len) *len = 0;
    int fd;
    uint64_t size;
    qd_err rc = qd_open_regular(path, &fd, &size, err);
    if (rc != QD_OK) return rc;
    if (size > max_bytes) {
        close(fd);
        return qd_error_set(err, QD_ERR_TOO_LARGE, "%s: %llu bytes, limit is %zu", path,
                            (unsigned long long)size, max_bytes);
    }
    size_t n = (size_t)size;
    char *buf = malloc(n + 1);
    if (!buf) {
        close(fd);
        return qd_error_set(err, QD_ERR_NOMEM, "%s: cannot allocate %zu bytes", path, n);
    }
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            int e = r < 0 ? errno : EIO;
            free(buf);
            close(fd);
            return qd_error_set(err, QD_ERR_IO, "%s: read failed: %s", path, strerror(e));
        }
        got += (size_t)r;
    }
    close(fd);
    buf[n] = '\0';
    *out = buf;
    if (len) *len = n;
    return QD_OK;
}

qd_err qd_write_all(int fd, const void *buf, size_t len, const char *what, qd_error *err) {
    const char *p = buf;
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0)
            return qd_error_set(err, QD_ERR_IO, "%s: write failed: %s", what,
                                w < 0 ? strerror(errno) : "no progress");
        p += w;
        len -= (size_t)w;
    }
    return QD_OK;
}

qd_err qd_fsync_dir(const char *path, qd_error *err) {
    char tmp[PATH_MAX];
    const char *dir = path;
    if (!qd_is_dir(path)) {
        snprintf(tmp, sizeof tmp, "%s", path);
        dir = dirname(tmp);
    }
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return qd_error_set(err, QD_ERR_IO, "%s: cannot open directory: %s", dir,
                                    strerror(errno));
    int rc = fsync(fd);
    int e = errno;
    close(fd);
    if (rc != 0 && e != EINVAL)
        return qd_error_set(err, QD_ERR_IO, "%s: fsync failed: %s", dir, strerror(e));
    return QD_OK;
}

qd_err qd_write_file_atomic(const char *path, const void *buf, size_t len, qd_error *err) {
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return qd_error_set(err, QD_ERR_TOO_LARGE, "%s: path too long", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return qd_error_set(err, QD_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
    qd_err rc = qd_write_all(fd, buf, len, tmp, err);
    if (rc == QD_OK && fsync(fd) != 0)
        rc = qd_error_set(err, QD_ERR_IO, "%s: fsync failed: %s", tmp, strerror(errno));
    if (close(fd) != 0 && rc == QD_OK)
        rc = qd_error_set(err, QD_ERR_IO, "%s: close failed: %s", tmp, strerror(errno));
    if (rc == QD_OK && rename(tmp, path) != 0)
        rc = qd_error_set(err, QD_ERR_IO, "%s: rename failed: %s", path, strerror(errno));
    if (rc != QD_OK) {
        unlink(tmp);
        return rc;
    }
    return qd_fsync_dir(path, err);
}

qd_err qd_mkdir_p(const char *path, unsigned mode, qd_error *err) {
    char buf[PATH_MAX];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return qd_error_set(err, QD_ERR_TOO_LARGE, "%s: path too long", path);
    for (char *p = buf + 1; ; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            if (mkdir(buf, (mode_t)mode) != 0 && errno != EEXIST)
                return qd_error_set(err, QD_ERR_IO, "%s: cannot create directory: %s", buf,
                                    strerror(errno));
            *p = c;
            if (c == '\0') break;
        }
    }
    if (!qd_is_dir(path))
        return qd_error_set(err, QD_ERR_IO, "%s: exists and is not a directory", path);
    return QD_OK;
}

qd_err qd_copy_file(const char *src, const char *dst, qd_error *err) {
    char *buf;
    size_t len;
    qd_err rc = qd_read_file(src, (size_t)1 << 34, &buf, &len, err);
    if (rc != QD_OK) return rc;
    rc = qd_write_file_atomic(dst, buf, len, err);
    free(buf);
    return rc;
}

qd_err qd_remove_tree(const char *path, qd_error *err) {
    struct stat st;
    if (lstat(path, &st) != 0)
        return errno == ENOENT ? QD_OK
                               : qd_error_set(err, QD_ERR_IO, "%s: %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        if (!d) return qd_error_set(err, QD_ERR_IO, "%s: %s", path, strerror(errno));
        struct dirent *de;
        qd_err rc = QD_OK;
        while (rc == QD_OK && (de = readdir(d)) != NULL) {
            if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
            char child[PATH_MAX];
            rc = qd_path_join(child, sizeof child, path, de->d_name, err);
            if (rc == QD_OK) rc = qd_remove_tree(child, err);
        }
        closedir(d);
        if (rc != QD_OK) return rc;
        if (rmdir(path) != 0)
            return qd_error_set(err, QD_ERR_IO, "%s: %s", path, strerror(errno));
        return QD_OK;
    }
    if (unlink(path) != 0) return qd_error_set(err, QD_ERR_IO, "%s: %s", path, strerror(errno));
    return QD_OK;
}

bool qd_is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

bool qd_is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

qd_err qd_path_join(char *buf, size_t len, const char *a, const char *b, qd_error *err) {
    size_t la = strlen(a);
    int n = snprintf(buf, len, "%s%s%s", a, (la && a[la - 1] == '/') ? "" : "/", b);
    if (n < 0 || (size_t)n >= len)
        return qd_error_set(err, QD_ERR_TOO_LARGE, "path too long: %s/%s", a, b);
    return QD_OK;
}
