/*
 * blobs.c - the content-addressed blob store (resumable, verified uploads) and the manifest
 * digest rule. No SQLite here: blobs are plain files, their state is their location.
 *
 * DESIGN
 * A blob being uploaded lives in staging/uploads/<sha256>.part. Its length IS its durable
 * state: every append is pwrite + fdatasync before it answers, so the offset it reports
 * survives kill -9 and power loss, and a restarted daemon resumes from the part file's length
 * without any other record. finish() fsyncs, hashes the bytes on disk (not a running hash
 * kept in memory, which a restart would lose, and which could differ from what reached the
 * disk), and renames the part file to blobs/sha256/ab/<62 hex> and fsyncs that directory.
 * A blob in blobs/ is therefore always complete and verified; nothing else is ever there.
 * Should a power loss leave a part file longer than what was synced (zero-filled tail), the
 * hash check at finish catches it: CORRUPT, the part is removed, the client starts over.
 *
 * Nothing here touches SQLite or the qd_store's mutable fields (only its data_dir, fixed at
 * open), so the daemon runs these without its store lock, one writer per blob.
 *
 * Also here, because they hash: qd_store_hash_file and qd_store_hash_tree (an artifact's or a
 * server-side model directory's manifest).
 */
#include "store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "fsutil.h"

static bool is_hex64(const char *s) {
    if (!s) return false;
    for (int i = 0; i < QD_STORE_HEX_LEN; i++) {
        char c = s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
    }
    return s[QD_STORE_HEX_LEN] == '\0';
}

static void to_hex(const unsigned char *md, size_t n, char *out) {
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[md[i] >> 4];
        out[2 * i + 1] = digits[md[i] & 15];
    }
    out[2 * n] = '\0';
}

static qd_err check_sha(const char *sha256, qd_error *err) {
    if (!is_hex64(sha256))
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "blob sha256 '%.80s' is not 64 lowercase hex chars",
                            sha256 ? sha256 : "(null)");
    return QD_OK;
}

static qd_err part_path(struct qd_store *s, const char *sha256, char *buf, size_t len,
                        qd_error *err) {
    int n = snprintf(buf, len, "%s/staging/uploads/%s.part", qd_store_data_dir(s), sha256);
    if (n < 0 || (size_t)n >= len)
        return qd_error_set(err, QD_ERR_TOO_LARGE, "blob %s: part path too long", sha256);
    return QD_OK;
}

static qd_err final_path(struct qd_store *s, const char *sha256, char *buf, size_t len,
                         qd_error *err) {
    int n = snprintf(buf, len, "%s/blobs/sha256/%.2s/%s", qd_store_data_dir(s), sha256,
                     sha256 + 2);
    if (n < 0 || (size_t)n >= len)
        return qd_error_set(err, QD_ERR_TOO_LARGE, "blob %s: path too long", sha256);
    return QD_OK;
}

/* Length of a file, or -1 if it does not exist. */
static qd_err file_length(const char *path, int64_t *ret_len, qd_error *err) {
    struct stat st;
    if (stat(path, &st) != 0) {
        if (errno == ENOENT) {
            *ret_len = -1;
            return QD_OK;
        }
        return qd_error_set(err, QD_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
    }
    if (!S_ISREG(st.st_mode))
        return qd_error_set(err, QD_ERR_CORRUPT, "%s: not a regular file", path);
    *ret_len = (int64_t)st.st_size;
    return QD_OK;
}

/* Shared by stat and begin: is the blob complete, else how long is its part file (-1: none). */
static qd_err blob_state(struct qd_store *s, const char *sha256, uint64_t size,
                         bool *ret_complete, int64_t *ret_part_len, qd_error *err) {
    char path[PATH_MAX];
    int64_t flen = -1;
    qd_err rc = check_sha(sha256, err);
    if (rc == QD_OK) rc = final_path(s, sha256, path, sizeof path, err);
    if (rc == QD_OK) rc = file_length(path, &flen, err);
    if (rc != QD_OK) return rc;
    if (flen >= 0) {
        if ((uint64_t)flen != size)
            return qd_error_set(err, QD_ERR_INVALID_ARG,
                                "blob %s: declared size %" PRIu64 " but the stored blob has "
                                "%" PRId64 " bytes", sha256, size, flen);
        *ret_complete = true;
        *ret_part_len = (int64_t)size;
        return QD_OK;
    }
    *ret_complete = false;
    rc = part_path(s, sha256, path, sizeof path, err);
    if (rc == QD_OK) rc = file_length(path, ret_part_len, err);
    return rc;
}

qd_err qd_store_blob_stat(struct qd_store *s, const char *sha256, uint64_t size,
                          uint64_t *ret_held, bool *ret_complete, qd_error *err) {
    bool complete;
    int64_t plen;
    qd_err rc = blob_state(s, sha256, size, &complete, &plen, err);
    if (rc != QD_OK) return rc;
    /* A part file longer than the declared size cannot belong to this (sha256, size):
     * report nothing held; begin() will restart it. */
    *ret_held = (plen < 0 || (uint64_t)plen > size) ? 0 : (uint64_t)plen;
    *ret_complete = complete;
    return QD_OK;
}

qd_err qd_store_blob_begin(struct qd_store *s, const char *sha256, uint64_t size,
                           uint64_t *ret_held, bool *ret_complete, qd_error *err) {
    bool complete;
    int64_t plen;
    qd_err rc = blob_state(s, sha256, size, &complete, &plen, err);
    if (rc != QD_OK) return rc;
    if (complete || (plen >= 0 && (uint64_t)plen <= size)) {
        *ret_held = (uint64_t)plen;
        *ret_complete = complete;
        return QD_OK;
    }
    char path[PATH_MAX];
    rc = part_path(s, sha256, path, sizeof path, err);
    if (rc != QD_OK) return rc;
    /* No part yet, or one too long for this size: (re)start it empty. */
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return qd_error_set(err, QD_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
    if (fsync(fd) != 0) {
        int e = errno;
        close(fd);
        return qd_error_set(err, QD_ERR_IO, "%s: fsync: %s", path, strerror(e));
    }
    close(fd);
    rc = qd_fsync_dir(path, err);
    if (rc != QD_OK) return rc;
    *ret_held = 0;
    *ret_complete = false;
    return QD_OK;
}

qd_err qd_store_blob_append(struct qd_store *s, const char *sha256, uint64_t size,
                            uint64_t offset, const void *data, size_t len,
                            uint64_t *ret_held, qd_error *err) {
    qd_err rc = check_sha(sha256, err);
    if (rc != QD_OK) return rc;
    if (offset > size || len > size - offset)
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "blob %s: chunk at offset %" PRIu64 " of %zu bytes runs past the "
                            "declared size %" PRIu64, sha256, offset, len, size);
    bool complete;
    int64_t plen;
    rc = blob_state(s, sha256, size, &complete, &plen, err);
    if (rc != QD_OK) return rc;
    if (complete)
        return qd_error_set(err, QD_ERR_EXISTS, "blob %s: already complete", sha256);
    if (plen < 0)
        return qd_error_set(err, QD_ERR_PRECONDITION, "blob %s: no upload begun", sha256);
    if ((uint64_t)plen != offset)
        return qd_error_set(err, QD_ERR_PRECONDITION,
                            "blob %s: chunk at offset %" PRIu64 " but %" PRId64 " bytes are "
                            "held; resume at offset %" PRId64, sha256, offset, plen, plen);
    char path[PATH_MAX];
    rc = part_path(s, sha256, path, sizeof path, err);
    if (rc != QD_OK) return rc;
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return qd_error_set(err, QD_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    if (lseek(fd, (off_t)offset, SEEK_SET) < 0) {
        rc = qd_error_set(err, QD_ERR_IO, "%s: seek: %s", path, strerror(errno));
    } else {
        rc = qd_write_all(fd, data, len, path, err);
    }
    /* The held length we answer must survive a crash: sync before answering. A failed
     * write may have left a tail; cut back to the durable offset so the next resume point
     * is what we last acknowledged. */
    if (rc == QD_OK && fdatasync(fd) != 0)
        rc = qd_error_set(err, QD_ERR_IO, "%s: fdatasync: %s", path, strerror(errno));
    if (rc != QD_OK && ftruncate(fd, (off_t)offset) == 0) (void)fdatasync(fd);
    close(fd);
    if (rc == QD_OK && ret_held) *ret_held = offset + len;
    return rc;
}

/* sha256 of a whole file, streamed; ret_size (may be NULL) gets the bytes read. */
static qd_err hash_file(const char *path, char out[QD_STORE_HEX_LEN + 1], uint64_t *ret_size,
                        qd_error *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return qd_error_set(err, errno == ENOENT ? QD_ERR_NOT_FOUND : QD_ERR_IO,
                            "%s: cannot open: %s", path, strerror(errno));
    uint64_t total = 0;
    enum { BUF = 1 << 16 };
    unsigned char *buf = malloc(BUF);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    qd_err rc = QD_OK;
    if (!buf || !ctx || !EVP_DigestInit_ex(ctx, EVP_sha256(), NULL)) {
        rc = qd_error_set(err, QD_ERR_NOMEM, "%s: cannot start sha256", path);
        goto done;
    }
    for (;;) {
        ssize_t got = read(fd, buf, BUF);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) {
            rc = qd_error_set(err, QD_ERR_IO, "%s: read: %s", path, strerror(errno));
            goto done;
        }
        if (got == 0) break;
        total += (uint64_t)got;
        if (!EVP_DigestUpdate(ctx, buf, (size_t)got)) {
            rc = qd_error_set(err, QD_ERR_INTERNAL, "%s: sha256 update failed", path);
            goto done;
        }
    }
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (!EVP_DigestFinal_ex(ctx, md, &n) || n != 32) {
        rc = qd_error_set(err, QD_ERR_INTERNAL, "%s: sha256 final failed", path);
        goto done;
    }
    to_hex(md, 32, out);
    if (ret_size) *ret_size = total;
done:
    EVP_MD_CTX_free(ctx);
    free(buf);
    close(fd);
    return rc;
}

qd_err qd_store_blob_finish(struct qd_store *s, const char *sha256, uint64_t size,
                            qd_error *err) {
    bool complete;
    int64_t plen;
    qd_err rc = blob_state(s, sha256, size, &complete, &plen, err);
    if (rc != QD_OK || complete) return rc;
    if (plen < 0)
        return qd_error_set(err, QD_ERR_PRECONDITION, "blob %s: no upload begun", sha256);
    if ((uint64_t)plen != size)
        return qd_error_set(err, QD_ERR_PRECONDITION,
                            "blob %s: %" PRId64 " of %" PRIu64 " bytes held; cannot finish",
                            sha256, plen, size);
    char part[PATH_MAX], final[PATH_MAX], got[QD_STORE_HEX_LEN + 1];
    rc = part_path(s, sha256, part, sizeof part, err);
    if (rc == QD_OK) rc = final_path(s, sha256, final, sizeof final, err);
    if (rc != QD_OK) return rc;
    int fd = open(part, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return qd_error_set(err, QD_ERR_IO, "%s: cannot open: %s", part, strerror(errno));
    int sync_rc = fsync(fd);
    int sync_errno = errno;
    close(fd);
    if (sync_rc != 0)
        return qd_error_set(err, QD_ERR_IO, "%s: fsync: %s", part, strerror(sync_errno));
    rc = hash_file(part, got, NULL, err);
    if (rc != QD_OK) return rc;
    if (strcmp(got, sha256) != 0) {
        /* The bytes are not what was announced: drop them so nothing can publish them. */
        (void)unlink(part);
        return qd_error_set(err, QD_ERR_CORRUPT,
                            "blob %s: received %" PRIu64 " bytes hash to %s; upload "
                            "discarded", sha256, size, got);
    }
    char dir[PATH_MAX];
    int n = snprintf(dir, sizeof dir, "%s/blobs/sha256/%.2s", qd_store_data_dir(s), sha256);
    if (n < 0 || (size_t)n >= sizeof dir)
        return qd_error_set(err, QD_ERR_TOO_LARGE, "blob %s: path too long", sha256);
    rc = qd_mkdir_p(dir, 0755, err);
    if (rc != QD_OK) return rc;
    if (rename(part, final) != 0)
        return qd_error_set(err, QD_ERR_IO, "%s: cannot rename to %s: %s", part, final,
                            strerror(errno));
    rc = qd_fsync_dir(final, err);
    if (rc == QD_OK) rc = qd_fsync_dir(part, err);
    return rc;
}

qd_err qd_store_blob_path(struct qd_store *s, const char *sha256, char *buf, size_t len,
                          qd_error *err) {
    qd_err rc = check_sha(sha256, err);
    if (rc == QD_OK) rc = final_path(s, sha256, buf, len, err);
    if (rc != QD_OK) return rc;
    if (!qd_is_file(buf))
        return qd_error_set(err, QD_ERR_NOT_FOUND, "blob %s: not in the store", sha256);
    return QD_OK;
}

qd_err qd_store_blob_open(struct qd_store *s, const char *sha256, int *ret_fd,
                          uint64_t *ret_size, qd_error *err) {
    char path[PATH_MAX];
    qd_err rc = qd_store_blob_path(s, sha256, path, sizeof path, err);
    if (rc != QD_OK) return rc;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return qd_error_set(err, errno == ENOENT ? QD_ERR_NOT_FOUND : QD_ERR_IO,
                            "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return qd_error_set(err, QD_ERR_IO, "%s: fstat: %s", path, strerror(e));
    }
    *ret_fd = fd;
    if (ret_size) *ret_size = (uint64_t)st.st_size;
    return QD_OK;
}

qd_err qd_store_blob_total(struct qd_store *s, uint64_t *ret_bytes, qd_error *err) {
    char root[PATH_MAX], sub[PATH_MAX], path[PATH_MAX];
    int n = snprintf(root, sizeof root, "%s/blobs/sha256", qd_store_data_dir(s));
    if (n < 0 || (size_t)n >= sizeof root)
        return qd_error_set(err, QD_ERR_TOO_LARGE, "blobs: path too long");
    DIR *d = opendir(root);
    if (!d) return qd_error_set(err, QD_ERR_IO, "%s: cannot list: %s", root, strerror(errno));
    uint64_t total = 0;
    qd_err rc = QD_OK;
    struct dirent *de;
    /* Two levels: blobs/sha256/ab/<62 hex>. Nothing else is ever written there. */
    while (rc == QD_OK && (de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.') continue;
        rc = qd_path_join(sub, sizeof sub, root, de->d_name, err);
        DIR *d2 = rc == QD_OK ? opendir(sub) : NULL;
        if (!d2) continue;
        struct dirent *e2;
        while (rc == QD_OK && (e2 = readdir(d2)) != NULL) {
            struct stat st;
            if (e2->d_name[0] == '.') continue;
            rc = qd_path_join(path, sizeof path, sub, e2->d_name, err);
            if (rc == QD_OK && stat(path, &st) == 0 && S_ISREG(st.st_mode))
                total += (uint64_t)st.st_size;
        }
        closedir(d2);
    }
    closedir(d);
    if (rc == QD_OK) *ret_bytes = total;
    return rc;
}

qd_err qd_store_hash_file(const char *path, char ret_hex[QD_STORE_HEX_LEN + 1],
                          uint64_t *ret_size, qd_error *err) {
    char hex[QD_STORE_HEX_LEN + 1];
    uint64_t size = 0;
    qd_err rc = hash_file(path, hex, &size, err);
    if (rc != QD_OK) return rc;
    memcpy(ret_hex, hex, sizeof hex);
    if (ret_size) *ret_size = size;
    return QD_OK;
}

/* ---- a directory's manifest -------------------------------------------------------------- */

struct tree {
    struct qd_store_file *files;
    size_t n, cap;
};

static int cmp_file_name(const void *a, const void *b) {
    /* strcmp compares as unsigned char: the manifest's memcmp order. */
    return strcmp(((const struct qd_store_file *)a)->name,
                  ((const struct qd_store_file *)b)->name);
}

/* Add every regular file under root/rel (rel "" for root itself) to t. */
static qd_err walk_tree(const char *root, const char *rel, int depth, struct tree *t,
                        qd_error *err) {
    char dir[PATH_MAX], path[PATH_MAX], name[PATH_MAX];
    qd_err rc = QD_OK;
    if (*rel) rc = qd_path_join(dir, sizeof dir, root, rel, err);
    else if (strlen(root) >= sizeof dir)
        rc = qd_error_set(err, QD_ERR_TOO_LARGE, "%.200s: path too long", root);
    else memcpy(dir, root, strlen(root) + 1);
    if (rc != QD_OK) return rc;
    if (depth > 16) return qd_error_set(err, QD_ERR_INVALID_ARG, "%s: nested too deep", dir);
    DIR *d = opendir(dir);
    if (!d) return qd_error_set(err, QD_ERR_IO, "%s: cannot list: %s", dir, strerror(errno));
    struct dirent *de;
    while (rc == QD_OK && (de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
        if (*rel) rc = qd_path_join(name, sizeof name, rel, de->d_name, err);
        else if (snprintf(name, sizeof name, "%s", de->d_name) >= (int)sizeof name)
            rc = qd_error_set(err, QD_ERR_TOO_LARGE, "%s/%s: path too long", dir, de->d_name);
        if (rc == QD_OK) rc = qd_path_join(path, sizeof path, root, name, err);
        if (rc != QD_OK) break;
        struct stat st;
        if (lstat(path, &st) != 0) {
            rc = qd_error_set(err, QD_ERR_IO, "%s: %s", path, strerror(errno));
        } else if (S_ISDIR(st.st_mode)) {
            rc = walk_tree(root, name, depth + 1, t, err);
        } else if (!S_ISREG(st.st_mode)) {
            rc = qd_error_set(err, QD_ERR_INVALID_ARG, "%s: not a regular file or directory",
                              path);
        } else {
            if (t->n == t->cap) {
                size_t cap = t->cap ? 2 * t->cap : 16;
                void *p = realloc(t->files, cap * sizeof *t->files);
                if (!p) {
                    rc = qd_error_set(err, QD_ERR_NOMEM, "%s: out of memory", path);
                    break;
                }
                t->files = p;
                t->cap = cap;
            }
            struct qd_store_file *f = &t->files[t->n];
            memset(f, 0, sizeof *f);
            if (!(f->name = strdup(name))) {
                rc = qd_error_set(err, QD_ERR_NOMEM, "%s: out of memory", path);
                break;
            }
            t->n++;
            rc = hash_file(path, f->sha256, &f->size, err);
        }
    }
    closedir(d);
    return rc;
}

qd_err qd_store_hash_tree(const char *dir, struct qd_store_file **ret_files, size_t *ret_n,
                          qd_error *err) {
    struct tree t = {0};
    qd_err rc = walk_tree(dir, "", 0, &t, err);
    if (rc != QD_OK) {
        qd_store_files_free(t.files, t.n);
        return rc;
    }
    if (t.n) qsort(t.files, t.n, sizeof *t.files, cmp_file_name);
    *ret_files = t.files;
    *ret_n = t.n;
    return QD_OK;
}

/* ---- manifest digest --------------------------------------------------------------------- */

/* The name rules of quantd.proto: relative, '/'-separated, non-empty components, none "." or
 * "..", no CR, LF or backslash (NUL cannot occur in a C string). */
static bool name_ok(const char *name) {
    if (!name || !*name) return false;
    const char *p = name;
    for (;;) {
        const char *slash = strchr(p, '/');
        size_t n = slash ? (size_t)(slash - p) : strlen(p);
        if (n == 0) return false;
        if ((n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.')) return false;
        for (size_t i = 0; i < n; i++)
            if (p[i] == '\r' || p[i] == '\n' || p[i] == '\\') return false;
        if (!slash) return true;
        p = slash + 1;
    }
}

qd_err qd_store_manifest_digest(const struct qd_store_file *files, size_t n_files,
                                char ret_hex[QD_STORE_HEX_LEN + 1], qd_error *err) {
    if (!files || n_files == 0)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "manifest: no files");
    for (size_t i = 0; i < n_files; i++) {
        const struct qd_store_file *f = &files[i];
        if (!name_ok(f->name))
            return qd_error_set(err, QD_ERR_INVALID_ARG, "manifest: files[%zu].name '%.200s' "
                                "is not a relative path of plain components", i,
                                f->name ? f->name : "(null)");
        if (!is_hex64(f->sha256))
            return qd_error_set(err, QD_ERR_INVALID_ARG, "manifest: files[%zu].sha256 of '%s' "
                                "is not 64 lowercase hex chars", i, f->name);
        /* strcmp compares as unsigned char: the memcmp order the rule asks for. */
        if (i > 0 && strcmp(files[i - 1].name, f->name) >= 0)
            return qd_error_set(err, QD_ERR_INVALID_ARG, "manifest: files[%zu] '%s' is %s "
                                "'%s'", i, f->name,
                                strcmp(files[i - 1].name, f->name) == 0 ? "a duplicate of"
                                                                        : "sorted before",
                                files[i - 1].name);
    }
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx || !EVP_DigestInit_ex(ctx, EVP_sha256(), NULL)) {
        EVP_MD_CTX_free(ctx);
        return qd_error_set(err, QD_ERR_NOMEM, "manifest: cannot start sha256");
    }
    bool ok = true;
    for (size_t i = 0; i < n_files && ok; i++) {
        char head[QD_STORE_HEX_LEN + 32];
        int n = snprintf(head, sizeof head, "%s  %" PRIu64 "  ", files[i].sha256,
                         files[i].size);
        ok = n > 0 && (size_t)n < sizeof head && EVP_DigestUpdate(ctx, head, (size_t)n) &&
             EVP_DigestUpdate(ctx, files[i].name, strlen(files[i].name)) &&
             EVP_DigestUpdate(ctx, "\n", 1);
    }
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    ok = ok && EVP_DigestFinal_ex(ctx, md, &mdlen) && mdlen == 32;
    EVP_MD_CTX_free(ctx);
    if (!ok) return qd_error_set(err, QD_ERR_INTERNAL, "manifest: sha256 failed");
    to_hex(md, 32, ret_hex);
    return QD_OK;
}
