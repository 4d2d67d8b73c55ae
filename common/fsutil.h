/*
 * fsutil.h - small filesystem helpers with quantd's error discipline.
 *
 * Every function names the path in its error message. "Atomic" writes go to "<path>.tmp",
 * are fsync'd, renamed over path, and the directory is fsync'd, so a crash leaves either the
 * old file or the new one, never half of one.
 */
#ifndef QD_FSUTIL_H
#define QD_FSUTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

/* Open path read-only and check it is a regular file; *ret_size gets its size. Errors name
 * the path: QD_ERR_NOT_FOUND when it does not exist, QD_ERR_IO otherwise. */
qd_err qd_open_regular(const char *path, int *ret_fd, uint64_t *ret_size, qd_error *err);
/* Read a whole regular file into a malloc'd, NUL-terminated buffer (the NUL is not counted
 * in *len). Files above max_bytes are QD_ERR_TOO_LARGE. */
qd_err qd_read_file(const char *path, size_t max_bytes, char **out, size_t *len,
                    qd_error *err);
/* Write buf to path atomically (see above). */
qd_err qd_write_file_atomic(const char *path, const void *buf, size_t len, qd_error *err);
/* write() all of buf to fd, retrying on EINTR and short writes. what names the file. */
qd_err qd_write_all(int fd, const void *buf, size_t len, const char *what, qd_error *err);
/* fsync the directory holding path (or path itself if it is a directory). */
qd_err qd_fsync_dir(const char *dir, qd_error *err);
/* mkdir -p with the given mode. */
qd_err qd_mkdir_p(const char *path, unsigned mode, qd_error *err);
/* Copy a regular file (contents only) atomically. */
qd_err qd_copy_file(const char *src, const char *dst, qd_error *err);
/* rm -rf; a missing path is not an error. */
qd_err qd_remove_tree(const char *path, qd_error *err);
bool qd_is_dir(const char *path);
bool qd_is_file(const char *path);
/* snprintf "a/b" into buf; QD_ERR_TOO_LARGE if it does not fit. */
qd_err qd_path_join(char *buf, size_t len, const char *a, const char *b, qd_error *err);

#endif /* QD_FSUTIL_H */
