/*
 * ctl_transfer.c - moving bytes: uploading a bundle (PutModel) and downloading an artifact
 * (GetArtifact), both resumable.
 *
 * DESIGN
 * Upload. The client never guesses what the server holds: it asks (StatModel by manifest),
 * then opens PutModel and sends, file by file in manifest order, only the bytes from each
 * file's held_bytes on. The server keeps a durable prefix of every file, so an upload cut by
 * anything (a crash of either side, a network drop) resumes where the server's disk says.
 * Another client may be uploading the same files at the same moment (same model, or a shared
 * blob): the server then refuses the second stream with FAILED_PRECONDITION, and this client
 * asks again after a pause, until the files are complete or the server stops making progress.
 *
 * Download. Files arrive in manifest order into "<dir>.partial". The artifact's manifest is
 * kept there as ".quantctl-fetch.json" as soon as it arrives, so an interrupted fetch knows,
 * when run again, which files are whole and at which byte to ask the server to start. Only
 * after every file's sha256 and the manifest digest match is the directory renamed to dir:
 * dir never holds a partial artifact.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fsutil.h"
#include "quantctl.h"

#define CHUNK_BYTES_MAX (1u << 20) /* as fast as larger chunks, and far below any gRPC limit */
#define RETRY_PAUSE_S 0.2
#define RETRY_STALLED_MAX 50       /* pauses without progress before giving up: 10 s */
#define STATE_NAME ".quantctl-fetch.json"

static void sleep_s(double s) {
    if (s <= 0) return;
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* ---- upload --------------------------------------------------------------------------------- */

/* The largest chunk the server accepts, capped at CHUNK_BYTES_MAX. */
static qd_err chunk_size(struct qd_ctl_conn *c, uint32_t *ret, qd_ctl_error *err) {
    Quantd__V1__GetServerInfoRequest req = QUANTD__V1__GET_SERVER_INFO_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    qd_err rc = qd_ctl_unary(c, QD_CTL_GET_SERVER_INFO, &req.base,
                             &quantd__v1__get_server_info_response__descriptor, &resp, err);
    if (rc != QD_OK) return rc;
    const Quantd__V1__GetServerInfoResponse *info = (const void *)resp;
    uint32_t n = CHUNK_BYTES_MAX;
    if (info->limits && info->limits->max_chunk_bytes > 0 && info->limits->max_chunk_bytes < n)
        n = info->limits->max_chunk_bytes;
    protobuf_c_message_free_unpacked(resp, NULL);
    *ret = n;
    return QD_OK;
}

/* The server disagrees with the protocol as quantctl reads it: its fault, exit status 3. */
__attribute__((format(printf, 2, 3))) static qd_err server_fault(qd_ctl_error *err,
                                                                 const char *fmt, ...) {
    if (err->e.code == QD_OK) {
        va_list ap;
        va_start(ap, fmt);
        qd_error_vset(&err->e, QD_ERR_INTERNAL, fmt, ap);
        va_end(ap);
        err->exit_status = QD_CTL_EXIT_REFUSED;
    }
    return QD_ERR_INTERNAL;
}

static qd_err stat_bundle(struct qd_ctl_conn *c, Quantd__V1__Manifest *man, const qd_ctl_bundle *b,
                          Quantd__V1__StatModelResponse **ret, qd_ctl_error *err) {
    Quantd__V1__StatModelRequest req = QUANTD__V1__STAT_MODEL_REQUEST__INIT;
    req.key_case = QUANTD__V1__STAT_MODEL_REQUEST__KEY_MANIFEST;
    req.manifest = man;
    ProtobufCMessage *resp = NULL;
    qd_err rc = qd_ctl_unary(c, QD_CTL_STAT_MODEL, &req.base,
                             &quantd__v1__stat_model_response__descriptor, &resp, err);
    if (rc != QD_OK) return rc;
    Quantd__V1__StatModelResponse *r = (void *)resp;
    const Quantd__V1__BundleStatus *st = r->status;
    if (!st || st->n_files != b->n_files) {
        protobuf_c_message_free_unpacked(resp, NULL);
        return server_fault(err, "StatModel: the answer does not list the manifest's files");
    }
    for (size_t i = 0; i < st->n_files; i++)
        if (!st->files[i] || strcmp(st->files[i]->name, b->files[i].name) != 0) {
            protobuf_c_message_free_unpacked(resp, NULL);
            return server_fault(err, "StatModel: the answer lists '%s' where the manifest has '%s'",
                                st->files[i] ? st->files[i]->name : "", b->files[i].name);
        }
    if (strcmp(st->digest, b->digest) != 0) {
        char ours[QD_CTL_HEX];
        snprintf(ours, sizeof ours, "%s", b->digest);
        protobuf_c_message_free_unpacked(resp, NULL);
        return server_fault(err, "StatModel: the server names the manifest %s, quantctl %s",
                            r->status->digest, ours);
    }
    *ret = r;
    return QD_OK;
}

/* One PutModel stream: the header, then every byte st says the server lacks. */
static qd_err put_once(struct qd_ctl_conn *c, const qd_ctl_opts *o, const qd_ctl_bundle *b,
                       Quantd__V1__PutModelHeader *hdr, const Quantd__V1__BundleStatus *st,
                       unsigned char *buf, uint32_t chunk, double rate_limit,
                       qd_ctl_progress *prog, qd_ctl_put_report *rep,
                       Quantd__V1__PutModelResponse **ret, qd_ctl_error *err) {
    struct qd_ctl_upload *up = NULL;
    qd_err rc = qd_ctl_upload_open(c, QD_CTL_PUT_MODEL, &up, err);
    if (rc != QD_OK) return rc;
    Quantd__V1__PutModelRequest msg = QUANTD__V1__PUT_MODEL_REQUEST__INIT;
    msg.msg_case = QUANTD__V1__PUT_MODEL_REQUEST__MSG_HEADER;
    msg.header = hdr;
    rc = qd_ctl_upload_send(up, &msg.base, err);

    Quantd__V1__Chunk ch = QUANTD__V1__CHUNK__INIT;
    msg.msg_case = QUANTD__V1__PUT_MODEL_REQUEST__MSG_CHUNK;
    msg.chunk = &ch;
    ch.file_case = QUANTD__V1__CHUNK__FILE_INDEX;
    uint64_t held = st->held_bytes;
    double t0 = qd_ctl_now();
    uint64_t sent_here = 0;
    for (size_t i = 0; rc == QD_OK && i < b->n_files; i++) {
        const qd_ctl_file *f = &b->files[i];
        if (st->files[i]->complete || st->files[i]->held_bytes >= f->size) continue;
        int fd = open(f->path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            rc = qd_ctl_error_local(err, QD_ERR_IO, "%s: %s", f->path, strerror(errno));
            break;
        }
        for (uint64_t off = st->files[i]->held_bytes; rc == QD_OK && off < f->size;) {
            size_t want = f->size - off < chunk ? (size_t)(f->size - off) : chunk;
            ssize_t n = pread(fd, buf, want, (off_t)off);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) {
                rc = qd_ctl_error_local(err, QD_ERR_IO, "%s: %s", f->path,
                                        n < 0 ? strerror(errno) : "shorter than when hashed");
                break;
            }
            ch.index = (uint32_t)i;
            ch.offset = off;
            ch.data.data = buf;
            ch.data.len = (size_t)n;
            rc = qd_ctl_upload_send(up, &msg.base, err);
            if (rc != QD_OK) break;
            off += (uint64_t)n;
            sent_here += (uint64_t)n;
            rep->sent_bytes += (uint64_t)n;
            qd_ctl_progress_bytes(prog, "upload", held + sent_here, b->total_bytes, false);
            if (rate_limit > 0) sleep_s((double)sent_here / rate_limit - (qd_ctl_now() - t0));
        }
        close(fd);
    }
    ProtobufCMessage *resp = NULL;
    if (rc == QD_OK)
        rc = qd_ctl_upload_finish(up, &quantd__v1__put_model_response__descriptor, &resp, err);
    qd_ctl_upload_free(up);
    if (rc == QD_OK) *ret = (Quantd__V1__PutModelResponse *)resp;
    return rc;
}

qd_err qd_ctl_put_bundle(struct qd_ctl_conn *c, const qd_ctl_opts *o, const qd_ctl_bundle *b,
                         Quantd__V1__BundleKind kind, double rate_limit, bool dry_run,
                         qd_ctl_put_report *rep, qd_ctl_error *err) {
    memset(rep, 0, sizeof *rep);
    rep->total_bytes = b->total_bytes;
    Quantd__V1__FileEntry *entries = calloc(b->n_files, sizeof *entries);
    Quantd__V1__FileEntry **ptrs = calloc(b->n_files, sizeof *ptrs);
    uint32_t chunk = 0;
    unsigned char *buf = NULL;
    qd_err rc = QD_OK;
    if (!entries || !ptrs) rc = qd_ctl_error_local(err, QD_ERR_NOMEM, "out of memory");
    for (size_t i = 0; rc == QD_OK && i < b->n_files; i++) {
        static const Quantd__V1__FileEntry init = QUANTD__V1__FILE_ENTRY__INIT;
        entries[i] = init;
        entries[i].name = b->files[i].name;
        entries[i].size = b->files[i].size;
        entries[i].sha256 = (char *)b->files[i].sha256;
        ptrs[i] = &entries[i];
    }
    Quantd__V1__Manifest man = QUANTD__V1__MANIFEST__INIT;
    man.n_files = b->n_files;
    man.files = ptrs;
    Quantd__V1__PutModelHeader hdr = QUANTD__V1__PUT_MODEL_HEADER__INIT;
    hdr.manifest = &man;
    hdr.kind = kind;
    hdr.expected_digest = (char *)b->digest;
    if (rc == QD_OK) rc = chunk_size(c, &chunk, err);
    if (rc == QD_OK && !(buf = malloc(chunk)))
        rc = qd_ctl_error_local(err, QD_ERR_NOMEM, "out of memory");

    qd_ctl_progress prog;
    qd_ctl_progress_init(&prog, o);
    double t0 = qd_ctl_now();
    bool first = true;
    int stalled = 0; /* attempts since the server's held bytes last grew */
    uint64_t last_held = 0;
    while (rc == QD_OK) {
        Quantd__V1__StatModelResponse *sr = NULL;
        rc = stat_bundle(c, &man, b, &sr, err);
        if (rc != QD_OK) break;
        const Quantd__V1__BundleStatus *st = sr->status;
        if (first) {
            rep->held_before = st->held_bytes;
            rep->held_all = st->complete;
            for (size_t i = 0; i < st->n_files; i++) {
                const Quantd__V1__FileStatus *fs = st->files[i];
                if (fs->complete || fs->held_bytes == 0) continue;
                rep->n_resumed++;
                if (!o->quiet && !dry_run)
                    fprintf(stderr, "quantctl: resuming %s at byte %" PRIu64 " of %" PRIu64 "\n",
                            fs->name, fs->held_bytes, b->files[i].size);
            }
        } else if (st->held_bytes > last_held) {
            stalled = 0;
        }
        last_held = st->held_bytes;
        if ((st->complete && st->kind == kind) || dry_run) {
            rep->already_complete = first && st->complete && st->kind == kind;
            protobuf_c_message_free_unpacked(&sr->base, NULL);
            break;
        }
        first = false;
        Quantd__V1__PutModelResponse *pr = NULL;
        rc = put_once(c, o, b, &hdr, st, buf, chunk, rate_limit, &prog, rep, &pr, err);
        protobuf_c_message_free_unpacked(&sr->base, NULL);
        if (rc == QD_OK) {
            bool done = pr->status && pr->status->complete;
            protobuf_c_message_free_unpacked(&pr->base, NULL);
            if (done) break;
            stalled++; /* all sent, yet not complete: look again */
        } else if ((err->grpc_code == 9 /* FAILED_PRECONDITION */ ||
                    err->grpc_code == 6 /* ALREADY_EXISTS */) &&
                   stalled < RETRY_STALLED_MAX) {
            /* Another stream is uploading these files, or just finished them: ask again. */
            stalled++;
            memset(err, 0, sizeof *err);
            rc = QD_OK;
        }
        if (rc == QD_OK && stalled > RETRY_STALLED_MAX)
            rc = server_fault(err, "PutModel: the server makes no progress on bundle %s",
                              b->digest);
        if (rc == QD_OK && stalled > 0) sleep_s(RETRY_PAUSE_S);
    }
    qd_ctl_progress_clear(&prog);
    rep->seconds = qd_ctl_now() - t0;
    free(buf);
    free(ptrs);
    free(entries);
    return rc;
}

/* ---- download ------------------------------------------------------------------------------- */

typedef struct fetch_ctx {
    const qd_ctl_opts *o;
    const char *id;
    char partial[PATH_MAX];
    char state[PATH_MAX + 32]; /* partial/STATE_NAME */
    qd_ctl_file *files; /* the manifest, once it arrived (or from the state file) */
    size_t n_files;
    char manifest_digest[QD_CTL_HEX];
    bool got_artifact;
    const bool *wanted; /* NULL: every file from start; else only these (a re-fetch) */
    size_t start;       /* first file asked for, and its offset */
    uint64_t start_off;
    size_t next;        /* files before it are finished */
    size_t cur;         /* file being written (fd open) */
    uint64_t cur_off;
    int fd;
    qd_ctl_progress prog;
    qd_ctl_fetch_report *rep;
    uint64_t done_bytes; /* for the progress line */
    double rate_limit;   /* bytes per second; 0 = none */
    double t0;           /* the download's start */
} fetch_ctx;

static void free_files(qd_ctl_file *f, size_t n) {
    for (size_t i = 0; f && i < n; i++) {
        free(f->name);
        free(f->path);
        f++;
    }
}

static qd_err file_path(const fetch_ctx *x, size_t i, char *buf, size_t cap, qd_ctl_error *err) {
    if (snprintf(buf, cap, "%s/%s", x->partial, x->files[i].name) >= (int)cap)
        return qd_ctl_error_local(err, QD_ERR_TOO_LARGE, "%s/%s: path too long", x->partial,
                                  x->files[i].name);
    return QD_OK;
}

/* The state file: {"artifact_id": ..., "manifest_digest": ..., "files": [{name, size, sha256}]}. */
static qd_err state_write(const fetch_ctx *x, qd_ctl_error *err) {
    json_t *files = json_array(), *root = json_object();
    for (size_t i = 0; files && i < x->n_files; i++)
        json_array_append_new(files, json_pack("{s:s, s:I, s:s}", "name", x->files[i].name, "size",
                                               (json_int_t)x->files[i].size, "sha256",
                                               x->files[i].sha256));
    if (root) {
        json_object_set_new(root, "artifact_id", json_string(x->id));
        json_object_set_new(root, "manifest_digest", json_string(x->manifest_digest));
        json_object_set(root, "files", files);
    }
    json_decref(files);
    char *text = root ? json_dumps(root, JSON_INDENT(1)) : NULL;
    json_decref(root);
    if (!text) return qd_ctl_error_local(err, QD_ERR_NOMEM, "out of memory");
    qd_err rc = qd_write_file_atomic(x->state, text, strlen(text), &err->e);
    free(text);
    return rc;
}

/* Read the state file left by an interrupted fetch, if any (x->files stays NULL if none). */
static qd_err state_read(fetch_ctx *x, qd_ctl_error *err) {
    const char *path = x->state;
    if (!qd_is_file(path)) return QD_OK;
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    const char *id = NULL, *md = NULL;
    json_t *files = NULL;
    if (!root || json_unpack(root, "{s:s, s:s, s:o}", "artifact_id", &id, "manifest_digest", &md,
                             "files", &files) != 0 ||
        !json_is_array(files) || json_array_size(files) == 0) {
        json_decref(root);
        return qd_ctl_error_local(err, QD_ERR_FORMAT,
                                  "%s: unreadable; remove %s and fetch again", path, x->partial);
    }
    if (strcmp(id, x->id) != 0) {
        qd_ctl_error_local(err, QD_ERR_EXISTS,
                           "%s holds a download of artifact %s; remove it or fetch into another "
                           "directory",
                           x->partial, id);
        json_decref(root);
        return QD_ERR_EXISTS;
    }
    size_t n = json_array_size(files);
    qd_ctl_file *v = calloc(n, sizeof *v);
    qd_err rc = v ? QD_OK : qd_ctl_error_local(err, QD_ERR_NOMEM, "out of memory");
    for (size_t i = 0; rc == QD_OK && i < n; i++) {
        const char *name = NULL, *sha = NULL;
        json_int_t size = 0;
        qd_error ne = {0};
        if (json_unpack(json_array_get(files, i), "{s:s, s:I, s:s}", "name", &name, "size", &size,
                        "sha256", &sha) != 0 ||
            size < 0 || !qd_ctl_is_digest(sha) || qd_ctl_check_name(name, "file", &ne) != QD_OK ||
            strcmp(name, STATE_NAME) == 0) {
            rc = qd_ctl_error_local(err, QD_ERR_FORMAT, "%s: unreadable; remove %s and fetch again",
                                    path, x->partial);
            break;
        }
        v[i].name = strdup(name);
        v[i].size = (uint64_t)size;
        snprintf(v[i].sha256, sizeof v[i].sha256, "%s", sha);
        if (!v[i].name) rc = qd_ctl_error_local(err, QD_ERR_NOMEM, "out of memory");
    }
    if (rc == QD_OK) snprintf(x->manifest_digest, sizeof x->manifest_digest, "%s", md);
    json_decref(root);
    if (rc != QD_OK) {
        free_files(v, n);
        free(v);
        return rc;
    }
    x->files = v;
    x->n_files = n;
    return QD_OK;
}

/* Open file i for writing from byte off (what is on disk past off is dropped). */
static qd_err open_file(fetch_ctx *x, size_t i, uint64_t off, qd_ctl_error *err) {
    char path[PATH_MAX];
    qd_err rc = file_path(x, i, path, sizeof path, err);
    if (rc != QD_OK) return rc;
    char *slash = strrchr(path, '/');
    if (slash && slash > path + strlen(x->partial)) {
        *slash = '\0';
        rc = qd_mkdir_p(path, 0755, &err->e);
        *slash = '/';
        if (rc != QD_OK) return rc;
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | (off == 0 ? O_TRUNC : 0), 0644);
    if (fd < 0 || ftruncate(fd, (off_t)off) != 0 || lseek(fd, (off_t)off, SEEK_SET) < 0) {
        int e = errno;
        if (fd >= 0) close(fd);
        return qd_ctl_error_local(err, QD_ERR_IO, "%s: %s", path, strerror(e));
    }
    x->fd = fd;
    x->cur = i;
    x->cur_off = off;
    return QD_OK;
}

/* Finish the open file: it must hold all its bytes. */
static qd_err close_file(fetch_ctx *x, qd_ctl_error *err) {
    if (x->fd < 0) return QD_OK;
    const qd_ctl_file *f = &x->files[x->cur];
    int fd = x->fd;
    x->fd = -1;
    if (fsync(fd) != 0 || close(fd) != 0)
        return qd_ctl_error_local(err, QD_ERR_IO, "%s/%s: %s", x->partial, f->name,
                                  strerror(errno));
    if (x->cur_off != f->size)
        return server_fault(err, "GetArtifact: the server moved on from %s at byte %" PRIu64
                            " of %" PRIu64, f->name, x->cur_off, f->size);
    return QD_OK;
}

static bool wanted(const fetch_ctx *x, size_t i) {
    return x->wanted ? x->wanted[i] : i >= x->start;
}

/* The byte file i's chunks start at in this stream. */
static uint64_t first_byte(const fetch_ctx *x, size_t i) {
    return !x->wanted && i == x->start ? x->start_off : 0;
}

/* Finish the open file, then every wanted file before i, which must need no bytes (empty
 * files get no chunks); then open file i (when i < n_files) at its first byte. */
static qd_err advance_to(fetch_ctx *x, size_t i, qd_ctl_error *err) {
    qd_err rc = QD_OK;
    if (x->fd >= 0) {
        rc = close_file(x, err);
        x->next = x->cur + 1;
    }
    for (size_t k = x->next; rc == QD_OK && k < i && k < x->n_files; k++) {
        if (!wanted(x, k)) continue;
        if (first_byte(x, k) != x->files[k].size)
            return server_fault(err, "GetArtifact: the server sent nothing of %s (%" PRIu64
                                " bytes)", x->files[k].name, x->files[k].size - first_byte(x, k));
        rc = open_file(x, k, x->files[k].size, err);
        if (rc == QD_OK) rc = close_file(x, err);
    }
    if (rc != QD_OK) return rc;
    x->next = i;
    if (i < x->n_files) rc = open_file(x, i, first_byte(x, i), err);
    return rc;
}

static qd_err on_artifact(fetch_ctx *x, const Quantd__V1__Artifact *a, qd_ctl_error *err) {
    if (x->got_artifact || strcmp(a->id, x->id) != 0 || a->n_files == 0)
        return server_fault(err, "GetArtifact: unexpected artifact message for %s (asked %s)",
                            a->id, x->id);
    x->got_artifact = true;
    for (size_t i = 0; i < a->n_files; i++) {
        const Quantd__V1__FileEntry *f = a->files[i];
        qd_error ne = {0};
        if (qd_ctl_check_name(f->name, "artifact file", &ne) != QD_OK ||
            strcmp(f->name, STATE_NAME) == 0 || !qd_ctl_is_digest(f->sha256) ||
            (i > 0 && strcmp(a->files[i - 1]->name, f->name) >= 0))
            return server_fault(err, "GetArtifact: artifact %s lists a bad file entry '%s'",
                                a->id, f->name);
    }
    if (x->files) { /* from the state file, or from this fetch's first stream */
        bool same = a->n_files == x->n_files;
        for (size_t i = 0; same && i < a->n_files; i++)
            same = strcmp(a->files[i]->name, x->files[i].name) == 0 &&
                   a->files[i]->size == x->files[i].size &&
                   strcmp(a->files[i]->sha256, x->files[i].sha256) == 0;
        if (!same)
            return server_fault(err, "GetArtifact: artifact %s is not the one %s was fetching",
                                a->id, x->partial);
        return QD_OK;
    }
    qd_ctl_file *v = calloc(a->n_files, sizeof *v);
    if (!v) return qd_ctl_error_local(err, QD_ERR_NOMEM, "out of memory");
    x->files = v;
    for (size_t i = 0; i < a->n_files; i++) {
        v[i].name = strdup(a->files[i]->name);
        v[i].size = a->files[i]->size;
        snprintf(v[i].sha256, sizeof v[i].sha256, "%s", a->files[i]->sha256);
        x->n_files = i + 1;
        if (!v[i].name) return qd_ctl_error_local(err, QD_ERR_NOMEM, "out of memory");
    }
    snprintf(x->manifest_digest, sizeof x->manifest_digest, "%s",
             a->manifest_digest ? a->manifest_digest : "");
    return state_write(x, err);
}

static qd_err on_chunk(fetch_ctx *x, const Quantd__V1__Chunk *ch, qd_ctl_error *err) {
    if (!x->got_artifact)
        return server_fault(err, "GetArtifact: a chunk came before the artifact %s", x->id);
    size_t i = x->n_files;
    if (ch->file_case == QUANTD__V1__CHUNK__FILE_INDEX) {
        i = ch->index;
    } else if (ch->file_case == QUANTD__V1__CHUNK__FILE_NAME) {
        for (i = 0; i < x->n_files && strcmp(x->files[i].name, ch->name) != 0; i++) {
        }
    }
    if (i >= x->n_files || !wanted(x, i) || i < x->next || (x->fd >= 0 && i < x->cur))
        return server_fault(err, "GetArtifact: a chunk for file %zu out of order (artifact %s)", i,
                            x->id);
    qd_err rc = QD_OK;
    if (x->fd < 0 || i != x->cur) rc = advance_to(x, i, err);
    if (rc != QD_OK) return rc;
    const qd_ctl_file *f = &x->files[i];
    if (ch->offset != x->cur_off || ch->data.len == 0 || ch->data.len > f->size - x->cur_off)
        return server_fault(err,
                            "GetArtifact: a chunk of %s at byte %" PRIu64 " with %zu bytes; "
                            "expected byte %" PRIu64 " of %" PRIu64,
                            f->name, ch->offset, ch->data.len, x->cur_off, f->size);
    rc = qd_write_all(x->fd, ch->data.data, ch->data.len, f->name, &err->e);
    if (rc != QD_OK) return rc;
    x->cur_off += ch->data.len;
    x->rep->received_bytes += ch->data.len;
    x->done_bytes += ch->data.len;
    qd_ctl_progress_bytes(&x->prog, "download", x->done_bytes, x->rep->total_bytes, false);
    if (x->rate_limit > 0)
        sleep_s((double)x->rep->received_bytes / x->rate_limit - (qd_ctl_now() - x->t0));
    return QD_OK;
}

static qd_err on_fetch_message(void *ctx, const ProtobufCMessage *msg, qd_ctl_error *err) {
    fetch_ctx *x = ctx;
    const Quantd__V1__GetArtifactResponse *r = (const void *)msg;
    if (r->msg_case == QUANTD__V1__GET_ARTIFACT_RESPONSE__MSG_ARTIFACT) {
        qd_err rc = on_artifact(x, r->artifact, err);
        if (rc == QD_OK) {
            uint64_t total = 0;
            for (size_t i = 0; i < x->n_files; i++) total += x->files[i].size;
            x->rep->total_bytes = total;
            x->rep->n_files = (uint32_t)x->n_files;
        }
        return rc;
    }
    if (r->msg_case == QUANTD__V1__GET_ARTIFACT_RESPONSE__MSG_CHUNK)
        return on_chunk(x, r->chunk, err);
    return server_fault(err, "GetArtifact: an empty message in the stream of %s", x->id);
}

/* One GetArtifact stream from (start file, offset), or of the files wanted[] marks. */
static qd_err fetch_stream(struct qd_ctl_conn *c, fetch_ctx *x, qd_ctl_error *err) {
    Quantd__V1__GetArtifactRequest req = QUANTD__V1__GET_ARTIFACT_REQUEST__INIT;
    req.artifact_id = (char *)x->id;
    /* Small chunks keep a limited rate smooth. */
    if (x->rate_limit > 0) req.chunk_bytes = 64 * 1024;
    char **names = NULL;
    if (x->wanted) {
        names = calloc(x->n_files, sizeof *names);
        if (!names) return qd_ctl_error_local(err, QD_ERR_NOMEM, "out of memory");
        for (size_t i = 0; i < x->n_files; i++)
            if (x->wanted[i]) names[req.n_files++] = x->files[i].name;
        req.files = names;
    } else if (x->files && x->start < x->n_files) {
        req.start_file = x->files[x->start].name;
        req.start_offset = x->start_off;
    }
    x->got_artifact = false;
    x->fd = -1;
    x->cur = x->next = 0;
    qd_err rc = qd_ctl_server_stream(c, QD_CTL_GET_ARTIFACT, &req.base,
                                     &quantd__v1__get_artifact_response__descriptor,
                                     on_fetch_message, x, err);
    if (rc == QD_OK && !x->got_artifact)
        rc = server_fault(err, "GetArtifact: the stream of %s ended without the artifact", x->id);
    if (rc == QD_OK) rc = advance_to(x, x->n_files, err); /* the last file, empty ones after it */
    if (x->fd >= 0) close(x->fd);
    x->fd = -1;
    free(names);
    return rc;
}

/* Verify every file; bad[i] set for each that does not match. Returns how many are bad. */
static size_t verify_files(fetch_ctx *x, bool *bad, qd_ctl_error *err) {
    size_t n_bad = 0;
    for (size_t i = 0; i < x->n_files && err->e.code == QD_OK; i++) {
        char path[PATH_MAX], hex[QD_CTL_HEX];
        uint64_t size = 0;
        bad[i] = false;
        if (file_path(x, i, path, sizeof path, err) != QD_OK) break;
        qd_error e = {0};
        if (qd_ctl_sha256_file(path, hex, &size, NULL, NULL, 0, 0, &e) != QD_OK ||
            size != x->files[i].size || strcmp(hex, x->files[i].sha256) != 0) {
            bad[i] = true;
            n_bad++;
            if (!x->o->quiet)
                fprintf(stderr, "quantctl: %s: sha256 or size does not match the manifest\n",
                        path);
        }
    }
    return n_bad;
}

/* Make a rename in path's parent directory durable. */
static qd_err fsync_parent(const char *path, qd_error *err) {
    char parent[PATH_MAX];
    if (snprintf(parent, sizeof parent, "%s", path) >= (int)sizeof parent)
        return qd_error_set(err, QD_ERR_TOO_LARGE, "%s: path too long", path);
    size_t n = strlen(parent);
    while (n > 1 && parent[n - 1] == '/') parent[--n] = '\0';
    char *slash = strrchr(parent, '/');
    if (!slash) memcpy(parent, ".", 2);
    else if (slash == parent) parent[1] = '\0';
    else *slash = '\0';
    return qd_fsync_dir(parent, err);
}

qd_err qd_ctl_fetch_artifact(struct qd_ctl_conn *c, const qd_ctl_opts *o, const char *id,
                             const char *dir, double rate_limit, qd_ctl_fetch_report *rep,
                             qd_ctl_error *err) {
    memset(rep, 0, sizeof *rep);
    fetch_ctx x = {.o = o, .id = id, .fd = -1, .rep = rep, .rate_limit = rate_limit};
    if (qd_is_dir(dir) || qd_is_file(dir))
        return qd_ctl_error_local(err, QD_ERR_EXISTS, "%s: already exists; choose a new directory",
                                  dir);
    if (snprintf(x.partial, sizeof x.partial, "%s.partial", dir) >= (int)sizeof x.partial ||
        snprintf(x.state, sizeof x.state, "%s/%s", x.partial, STATE_NAME) >= (int)sizeof x.state)
        return qd_ctl_error_local(err, QD_ERR_TOO_LARGE, "%s: path too long", dir);
    qd_err rc = qd_mkdir_p(x.partial, 0755, &err->e);
    if (rc == QD_OK) rc = state_read(&x, err);

    /* Resume: the first file (in manifest order) that is not all there. */
    if (rc == QD_OK && x.files) {
        x.start = x.n_files;
        for (size_t i = 0; i < x.n_files; i++) {
            char path[PATH_MAX];
            struct stat st;
            if ((rc = file_path(&x, i, path, sizeof path, err)) != QD_OK) break;
            uint64_t have = stat(path, &st) == 0 && S_ISREG(st.st_mode) ? (uint64_t)st.st_size : 0;
            if (have == x.files[i].size) {
                rep->resumed_bytes += have;
                continue;
            }
            x.start = i;
            x.start_off = have < x.files[i].size ? have : 0;
            rep->resumed_bytes += x.start_off;
            break;
        }
        if (x.start == x.n_files) { /* all there: ask for nothing past the last byte */
            x.start = x.n_files - 1;
            x.start_off = x.files[x.start].size;
        }
        if (rc == QD_OK && rep->resumed_bytes > 0 && !o->quiet)
            fprintf(stderr, "quantctl: resuming the download of %s at %s byte %" PRIu64 "\n", id,
                    x.files[x.start].name, x.start_off);
    }
    x.done_bytes = rep->resumed_bytes;
    qd_ctl_progress_init(&x.prog, o);
    x.t0 = qd_ctl_now();
    if (rc == QD_OK) rc = fetch_stream(c, &x, err);
    qd_ctl_progress_clear(&x.prog);
    rep->seconds = qd_ctl_now() - x.t0;

    /* Verify; a file that does not match is fetched once more, whole. */
    bool *bad = rc == QD_OK ? calloc(x.n_files, sizeof *bad) : NULL;
    if (rc == QD_OK && !bad) rc = qd_ctl_error_local(err, QD_ERR_NOMEM, "out of memory");
    double tv = qd_ctl_now();
    if (rc == QD_OK && verify_files(&x, bad, err) > 0 && err->e.code == QD_OK) {
        x.wanted = bad;
        rc = fetch_stream(c, &x, err);
        x.wanted = NULL;
        if (rc == QD_OK && verify_files(&x, bad, err) > 0 && err->e.code == QD_OK)
            rc = qd_ctl_error_local(err, QD_ERR_CORRUPT,
                                    "artifact %s: files in %s do not match their sha256 after a "
                                    "second download",
                                    id, x.partial);
    }
    if (rc == QD_OK && err->e.code != QD_OK) rc = err->e.code;
    if (rc == QD_OK) {
        char hex[QD_CTL_HEX];
        rc = qd_ctl_manifest_digest(x.files, x.n_files, hex, &err->e);
        if (rc == QD_OK && x.manifest_digest[0] && strcmp(hex, x.manifest_digest) != 0)
            rc = server_fault(err, "GetArtifact: the manifest digest is %s, the server says %s",
                              hex, x.manifest_digest);
        if (rc == QD_OK) snprintf(rep->manifest_digest, sizeof rep->manifest_digest, "%s", hex);
    }
    rep->verify_seconds = qd_ctl_now() - tv;
    free(bad);

    /* Publish: drop the state file, rename, make the rename durable. */
    if (rc == QD_OK) {
        if (unlink(x.state) != 0 && errno != ENOENT)
            rc = qd_ctl_error_local(err, QD_ERR_IO, "%s: %s", x.state, strerror(errno));
        else if (rename(x.partial, dir) != 0)
            rc = qd_ctl_error_local(err, QD_ERR_IO, "rename %s to %s: %s", x.partial, dir,
                                    strerror(errno));
        else
            rc = fsync_parent(dir, &err->e);
    }
    free_files(x.files, x.n_files);
    free(x.files);
    return rc;
}
