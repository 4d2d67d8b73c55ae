/*
 * ctl_bundle.c - bundles on the client side: which local files make a model or calibration
 * bundle, their sha256s, and the manifest digest that names the bundle (the rule in the header
 * comment of proto/quantd.proto). The digest is computed here, before any upload, so the
 * client can ask the server what it already holds of exactly these bytes.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "quantctl.h"

/* Bounds on what a scan accepts, so a mistaken path (a home directory) fails fast. */
#define MAX_FILES 100000
#define MAX_DEPTH 64
#define HASH_BUF (1u << 20)

bool qd_ctl_is_digest(const char *s) {
    size_t i = 0;
    for (; s[i]; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return false;
    return i == 64;
}

qd_err qd_ctl_check_name(const char *name, const char *what, qd_error *err) {
    if (name[0] == '\0') return qd_error_set(err, QD_ERR_INVALID_ARG, "%s: empty name", what);
    if (strpbrk(name, "\r\n\\"))
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "%s '%s': a bundle name may not hold CR, LF or a backslash", what,
                            name);
    const char *p = name;
    for (;;) {
        const char *slash = strchr(p, '/');
        size_t n = slash ? (size_t)(slash - p) : strlen(p);
        if (n == 0 || (n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.'))
            return qd_error_set(err, QD_ERR_INVALID_ARG,
                                "%s '%s': a name's parts may not be empty, '.' or '..'", what,
                                name);
        if (!slash) break;
        p = slash + 1;
    }
    return QD_OK;
}

/* ---- scanning ------------------------------------------------------------------------------- */

typedef struct file_list {
    qd_ctl_file *v;
    size_t n, cap;
    uint64_t total;
} file_list;

static qd_err list_add(file_list *l, const char *name, const char *path, uint64_t size,
                       qd_error *err) {
    qd_err rc = qd_ctl_check_name(name, "file", err);
    if (rc != QD_OK) return rc;
    if (l->n == MAX_FILES)
        return qd_error_set(err, QD_ERR_TOO_LARGE, "more than %d files: not a model directory",
                            MAX_FILES);
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        qd_ctl_file *v = realloc(l->v, cap * sizeof *v);
        if (!v) return qd_error_set(err, QD_ERR_NOMEM, "out of memory");
        l->v = v;
        l->cap = cap;
    }
    qd_ctl_file *f = &l->v[l->n];
    memset(f, 0, sizeof *f);
    f->name = strdup(name);
    f->path = strdup(path);
    if (!f->name || !f->path) {
        free(f->name);
        free(f->path);
        return qd_error_set(err, QD_ERR_NOMEM, "out of memory");
    }
    f->size = size;
    l->n++;
    l->total += size;
    return QD_OK;
}

/* Add every regular file under root/rel (rel "" for root itself). */
static qd_err walk(const char *root, const char *rel, int depth, file_list *l, qd_error *err) {
    char dir[PATH_MAX];
    if (snprintf(dir, sizeof dir, "%s%s%s", root, rel[0] ? "/" : "", rel) >= (int)sizeof dir)
        return qd_error_set(err, QD_ERR_TOO_LARGE, "%s/%s: path too long", root, rel);
    if (depth > MAX_DEPTH)
        return qd_error_set(err, QD_ERR_TOO_LARGE, "%s: directories nested too deep", dir);
    DIR *d = opendir(dir);
    if (!d) return qd_error_set(err, QD_ERR_IO, "%s: %s", dir, strerror(errno));
    qd_err rc = QD_OK;
    struct dirent *de;
    while (rc == QD_OK && (errno = 0, de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
        char name[PATH_MAX], path[PATH_MAX];
        if (snprintf(name, sizeof name, "%s%s%s", rel, rel[0] ? "/" : "", de->d_name) >=
                (int)sizeof name ||
            snprintf(path, sizeof path, "%s/%s", root, name) >= (int)sizeof path) {
            rc = qd_error_set(err, QD_ERR_TOO_LARGE, "%s/%s: path too long", dir, de->d_name);
            break;
        }
        struct stat st;
        if (lstat(path, &st) != 0) {
            rc = qd_error_set(err, QD_ERR_IO, "%s: %s", path, strerror(errno));
            break;
        }
        if (S_ISLNK(st.st_mode)) {
            /* A link to a regular file is that file (Hugging Face caches are made of them);
             * links to directories are not followed, so a scan cannot loop. */
            if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) continue;
            rc = list_add(l, name, path, (uint64_t)st.st_size, err);
        } else if (S_ISDIR(st.st_mode)) {
            rc = walk(root, name, depth + 1, l, err);
        } else if (S_ISREG(st.st_mode)) {
            rc = list_add(l, name, path, (uint64_t)st.st_size, err);
        }
    }
    if (rc == QD_OK && errno != 0)
        rc = qd_error_set(err, QD_ERR_IO, "%s: %s", dir, strerror(errno));
    closedir(d);
    return rc;
}

static int cmp_file(const void *a, const void *b) {
    /* strcmp compares as unsigned char: the memcmp order the manifest rule asks for. */
    return strcmp(((const qd_ctl_file *)a)->name, ((const qd_ctl_file *)b)->name);
}

qd_err qd_ctl_bundle_scan(const char *path, qd_ctl_bundle *ret, qd_error *err) {
    struct stat st;
    if (stat(path, &st) != 0)
        return qd_error_set(err, errno == ENOENT ? QD_ERR_NOT_FOUND : QD_ERR_IO, "%s: %s", path,
                            strerror(errno));
    file_list l = {0};
    qd_err rc;
    if (S_ISDIR(st.st_mode)) {
        /* Trailing slashes would double up in the paths built below. */
        char root[PATH_MAX];
        snprintf(root, sizeof root, "%s", path);
        size_t n = strlen(root);
        while (n > 1 && root[n - 1] == '/') root[--n] = '\0';
        rc = walk(root, "", 0, &l, err);
        if (rc == QD_OK && l.n == 0)
            rc = qd_error_set(err, QD_ERR_INVALID_ARG, "%s: no files in the directory", path);
    } else if (S_ISREG(st.st_mode)) {
        const char *slash = strrchr(path, '/');
        rc = list_add(&l, slash ? slash + 1 : path, path, (uint64_t)st.st_size, err);
    } else {
        rc = qd_error_set(err, QD_ERR_INVALID_ARG, "%s: neither a directory nor a regular file",
                          path);
    }
    if (rc == QD_OK) {
        qsort(l.v, l.n, sizeof *l.v, cmp_file);
        for (size_t i = 1; i < l.n && rc == QD_OK; i++)
            if (strcmp(l.v[i - 1].name, l.v[i].name) == 0)
                rc = qd_error_set(err, QD_ERR_INVALID_ARG, "file '%s' listed twice", l.v[i].name);
    }
    if (rc != QD_OK) {
        qd_ctl_bundle b = {.files = l.v, .n_files = l.n};
        qd_ctl_bundle_free(&b);
        return rc;
    }
    memset(ret, 0, sizeof *ret);
    ret->files = l.v;
    ret->n_files = l.n;
    ret->total_bytes = l.total;
    return QD_OK;
}

void qd_ctl_bundle_free(qd_ctl_bundle *b) {
    if (!b) return;
    for (size_t i = 0; i < b->n_files; i++) {
        free(b->files[i].name);
        free(b->files[i].path);
    }
    free(b->files);
    memset(b, 0, sizeof *b);
}

/* ---- hashing -------------------------------------------------------------------------------- */

static void to_hex(const unsigned char *md, char hex[QD_CTL_HEX]) {
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        hex[2 * i] = digits[md[i] >> 4];
        hex[2 * i + 1] = digits[md[i] & 15];
    }
    hex[64] = '\0';
}

qd_err qd_ctl_sha256_file(const char *path, char hex[QD_CTL_HEX], uint64_t *ret_size,
                          qd_ctl_hash_fn fn, void *ctx, uint64_t base, uint64_t total,
                          qd_error *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return qd_error_set(err, errno == ENOENT ? QD_ERR_NOT_FOUND : QD_ERR_IO, "%s: %s", path,
                            strerror(errno));
    unsigned char *buf = malloc(HASH_BUF);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    qd_err rc = QD_OK;
    uint64_t done = 0;
    if (!buf || !md) rc = qd_error_set(err, QD_ERR_NOMEM, "%s: out of memory", path);
    else if (!EVP_DigestInit_ex(md, EVP_sha256(), NULL))
        rc = qd_error_set(err, QD_ERR_INTERNAL, "%s: sha256 failed", path);
    while (rc == QD_OK) {
        ssize_t n = read(fd, buf, HASH_BUF);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            rc = qd_error_set(err, QD_ERR_IO, "%s: %s", path, strerror(errno));
            break;
        }
        if (n == 0) break;
        if (!EVP_DigestUpdate(md, buf, (size_t)n)) {
            rc = qd_error_set(err, QD_ERR_INTERNAL, "%s: sha256 failed", path);
            break;
        }
        done += (uint64_t)n;
        if (fn) fn(ctx, base + done, total);
    }
    unsigned char out[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (rc == QD_OK && (!EVP_DigestFinal_ex(md, out, &len) || len != 32))
        rc = qd_error_set(err, QD_ERR_INTERNAL, "%s: sha256 failed", path);
    if (rc == QD_OK) {
        to_hex(out, hex);
        if (ret_size) *ret_size = done;
    }
    EVP_MD_CTX_free(md);
    free(buf);
    close(fd);
    return rc;
}

qd_err qd_ctl_manifest_digest(const qd_ctl_file *files, size_t n, char hex[QD_CTL_HEX],
                              qd_error *err) {
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (!md) return qd_error_set(err, QD_ERR_NOMEM, "out of memory");
    qd_err rc = QD_OK;
    if (!EVP_DigestInit_ex(md, EVP_sha256(), NULL))
        rc = qd_error_set(err, QD_ERR_INTERNAL, "manifest: sha256 failed");
    for (size_t i = 0; rc == QD_OK && i < n; i++) {
        char num[32];
        int k = snprintf(num, sizeof num, "  %" PRIu64 "  ", files[i].size);
        if (strlen(files[i].sha256) != 64 || !EVP_DigestUpdate(md, files[i].sha256, 64) ||
            !EVP_DigestUpdate(md, num, (size_t)k) ||
            !EVP_DigestUpdate(md, files[i].name, strlen(files[i].name)) ||
            !EVP_DigestUpdate(md, "\n", 1))
            rc = qd_error_set(err, QD_ERR_INTERNAL, "manifest: cannot hash file '%s'",
                              files[i].name);
    }
    unsigned char out[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (rc == QD_OK && (!EVP_DigestFinal_ex(md, out, &len) || len != 32))
        rc = qd_error_set(err, QD_ERR_INTERNAL, "manifest: sha256 failed");
    if (rc == QD_OK) to_hex(out, hex);
    EVP_MD_CTX_free(md);
    return rc;
}

qd_err qd_ctl_bundle_hash(qd_ctl_bundle *b, qd_ctl_hash_fn fn, void *ctx, qd_error *err) {
    uint64_t base = 0;
    for (size_t i = 0; i < b->n_files; i++) {
        qd_ctl_file *f = &b->files[i];
        uint64_t size = 0;
        qd_err rc = qd_ctl_sha256_file(f->path, f->sha256, &size, fn, ctx, base, b->total_bytes,
                                       err);
        if (rc != QD_OK) return rc;
        if (size != f->size)
            return qd_error_set(err, QD_ERR_IO,
                                "%s: changed while being read (%" PRIu64 " bytes, then %" PRIu64
                                ")",
                                f->path, f->size, size);
        base += size;
    }
    return qd_ctl_manifest_digest(b->files, b->n_files, b->digest, err);
}
