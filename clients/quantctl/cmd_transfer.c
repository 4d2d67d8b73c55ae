/*
 * cmd_transfer.c - `quantctl put` (upload a bundle) and `quantctl fetch` (download an
 * artifact), with the reports both print; quantize prints the same reports.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "fsutil.h"
#include "quantctl.h"

/* ---- reports -------------------------------------------------------------------------------- */

static double mib_per_s(uint64_t bytes, double seconds) {
    return seconds > 0 ? (double)bytes / seconds / (1024.0 * 1024.0) : 0.0;
}

static void on_hash(void *ctx, uint64_t done, uint64_t total) {
    qd_ctl_progress_bytes(ctx, "sha256", done, total, false);
}

qd_err qd_ctl_bundle_load(const qd_ctl_opts *o, const char *path, qd_ctl_bundle *ret,
                          qd_ctl_error *err) {
    qd_ctl_bundle b = {0};
    qd_err rc = qd_ctl_bundle_scan(path, &b, &err->e);
    qd_ctl_progress p;
    qd_ctl_progress_init(&p, o);
    if (rc == QD_OK) rc = qd_ctl_bundle_hash(&b, on_hash, &p, &err->e);
    qd_ctl_progress_clear(&p);
    if (rc != QD_OK) {
        qd_ctl_bundle_free(&b);
        return rc;
    }
    *ret = b;
    return QD_OK;
}

void qd_ctl_put_report_json(json_t *obj, const qd_ctl_bundle *b, const qd_ctl_put_report *r) {
    json_object_set_new(obj, "digest", json_string(b->digest));
    json_object_set_new(obj, "files", json_integer((json_int_t)b->n_files));
    json_object_set_new(obj, "total_bytes", json_integer((json_int_t)r->total_bytes));
    json_object_set_new(obj, "held_before", json_integer((json_int_t)r->held_before));
    json_object_set_new(obj, "sent_bytes", json_integer((json_int_t)r->sent_bytes));
    json_object_set_new(obj, "resumed_files", json_integer(r->n_resumed));
    json_object_set_new(obj, "already_complete", json_boolean(r->already_complete));
    json_object_set_new(obj, "held_all", json_boolean(r->held_all));
    json_object_set_new(obj, "seconds", json_real(r->seconds));
    json_object_set_new(obj, "mib_per_s", json_real(mib_per_s(r->sent_bytes, r->seconds)));
}

void qd_ctl_put_report_print(const char *what, const qd_ctl_bundle *b,
                             const qd_ctl_put_report *r) {
    char total[32], sent[32], held[32];
    qd_ctl_format_bytes(r->total_bytes, total, sizeof total);
    qd_ctl_format_bytes(r->sent_bytes, sent, sizeof sent);
    qd_ctl_format_bytes(r->held_before, held, sizeof held);
    printf("%s: %s (%zu file%s, %s)\n", what, b->digest, b->n_files, b->n_files == 1 ? "" : "s",
           total);
    if (r->already_complete)
        printf("upload: nothing to send, the server holds every file\n");
    else
        printf("upload: sent %s in %.2f s (%.1f MiB/s); the server held %s before\n", sent,
               r->seconds, mib_per_s(r->sent_bytes, r->seconds), held);
}

void qd_ctl_fetch_report_json(json_t *obj, const qd_ctl_fetch_report *r) {
    json_object_set_new(obj, "files", json_integer(r->n_files));
    json_object_set_new(obj, "total_bytes", json_integer((json_int_t)r->total_bytes));
    json_object_set_new(obj, "received_bytes", json_integer((json_int_t)r->received_bytes));
    json_object_set_new(obj, "resumed_bytes", json_integer((json_int_t)r->resumed_bytes));
    json_object_set_new(obj, "seconds", json_real(r->seconds));
    json_object_set_new(obj, "mib_per_s", json_real(mib_per_s(r->received_bytes, r->seconds)));
    json_object_set_new(obj, "verify_seconds", json_real(r->verify_seconds));
    json_object_set_new(obj, "manifest_digest", json_string(r->manifest_digest));
    json_object_set_new(obj, "verified", json_true());
}

void qd_ctl_fetch_report_print(const char *id, const char *dir, const qd_ctl_fetch_report *r) {
    char total[32], got[32];
    qd_ctl_format_bytes(r->total_bytes, total, sizeof total);
    qd_ctl_format_bytes(r->received_bytes, got, sizeof got);
    printf("fetch: artifact %s, %u files, %s; received %s in %.2f s (%.1f MiB/s)", id,
           r->n_files, total, got, r->seconds, mib_per_s(r->received_bytes, r->seconds));
    if (r->resumed_bytes) printf(", %" PRIu64 " bytes were already there", r->resumed_bytes);
    printf("; sha256 verified\noutput: %s\n", dir);
}

/* ---- put ------------------------------------------------------------------------------------ */

static void put_usage(FILE *out) {
    fprintf(out,
            "usage: quantctl put PATH [--kind model|calibration] [--limit-rate RATE]\n"
            "                    [--dry-run]\n"
            "\n"
            "Upload a bundle: a model directory (every regular file under it, recursively,\n"
            "named relative to it; links to regular files count) or a single file (named by\n"
            "its base name). quantctl asks the server what it already holds and sends only\n"
            "the rest: files it holds are skipped, a partly uploaded file resumes at the\n"
            "server's offset.\n"
            "\n"
            "  --kind K           model or calibration (default: model for a directory,\n"
            "                     calibration for a file)\n"
            "  --limit-rate RATE  send at most RATE bytes per second; K, M and G mean 1024,\n"
            "                     1024^2 and 1024^3\n"
            "  --dry-run          only ask what the server holds of the bundle; send nothing\n"
            "\n"
            "Prints the bundle's digest (the sha256 of its manifest), which `quantctl quantize`\n"
            "accepts as --model-digest or --calib-digest.\n");
}

int qd_ctl_cmd_put(const qd_ctl_opts *o, int argc, char **argv) {
    if (qd_ctl_wants_help(argc, argv)) {
        put_usage(stdout);
        return QD_CTL_EXIT_OK;
    }
    const char *path = NULL, *kind_word = NULL, *v = NULL;
    double rate = 0;
    bool dry_run = false;
    for (int i = 1; i < argc; i++) {
        int r;
        if (strcmp(argv[i], "--dry-run") == 0) {
            dry_run = true;
        } else if ((r = qd_ctl_opt("put", argc, argv, &i, "--kind", NULL, &v)) != 0) {
            if (r < 0) return QD_CTL_EXIT_USAGE;
            kind_word = v;
        } else if ((r = qd_ctl_opt("put", argc, argv, &i, "--limit-rate", NULL, &v)) != 0) {
            qd_error e = {0};
            if (r < 0) return QD_CTL_EXIT_USAGE;
            if (qd_ctl_parse_rate(v, &rate, &e) != QD_OK)
                return qd_ctl_usage_error("put", "%s", qd_error_text(&e));
        } else if (argv[i][0] == '-' && argv[i][1] && strcmp(argv[i], "--") != 0) {
            return qd_ctl_usage_error("put", "unknown option '%s'", argv[i]);
        } else if (strcmp(argv[i], "--") == 0 && i + 1 < argc && !path) {
            path = argv[++i];
        } else if (!path) {
            path = argv[i];
        } else {
            return qd_ctl_usage_error("put", "unexpected argument '%s'", argv[i]);
        }
    }
    if (!path) return qd_ctl_usage_error("put", "no PATH given");
    const Quantd__V1__BundleKind model = QUANTD__V1__BUNDLE_KIND__BUNDLE_KIND_MODEL;
    const Quantd__V1__BundleKind calibration = QUANTD__V1__BUNDLE_KIND__BUNDLE_KIND_CALIBRATION;
    Quantd__V1__BundleKind kind = qd_is_dir(path) ? model : calibration;
    if (kind_word) {
        if (strcmp(kind_word, "model") == 0) kind = model;
        else if (strcmp(kind_word, "calibration") == 0) kind = calibration;
        else
            return qd_ctl_usage_error("put", "--kind '%s': expected model or calibration",
                                      kind_word);
    }

    qd_ctl_error err = {0};
    qd_ctl_bundle b = {0};
    if (qd_ctl_bundle_load(o, path, &b, &err) != QD_OK) return qd_ctl_fail(&err);
    struct qd_ctl_conn *c = NULL;
    int status = qd_ctl_open(o, &c);
    if (status != QD_CTL_EXIT_OK) {
        qd_ctl_bundle_free(&b);
        return status;
    }
    qd_ctl_put_report rep;
    if (qd_ctl_put_bundle(c, o, &b, kind, rate, dry_run, &rep, &err) != QD_OK) {
        status = qd_ctl_fail(&err);
    } else if (dry_run && !o->json) {
        char held[32], total[32];
        qd_ctl_format_bytes(rep.held_before, held, sizeof held);
        qd_ctl_format_bytes(rep.total_bytes, total, sizeof total);
        printf("%s: %s (%zu file%s, %s)\nserver: holds %s (%" PRIu64 " bytes)%s\n",
               kind == model ? "model" : "calibration",
               b.digest, b.n_files, b.n_files == 1 ? "" : "s", total, held, rep.held_before,
               rep.already_complete ? ", complete" : rep.held_all ? ", every byte" : "");
    } else if (o->json) {
        json_t *j = json_object();
        if (j) {
            json_object_set_new(j, "kind", json_string(kind == model ? "model" : "calibration"));
            qd_ctl_put_report_json(j, &b, &rep);
        }
        qd_ctl_json_emit(j);
    } else {
        qd_ctl_put_report_print(kind == model ? "model" : "calibration", &b, &rep);
    }
    qd_ctl_close(c);
    qd_ctl_bundle_free(&b);
    return status;
}

/* ---- fetch ---------------------------------------------------------------------------------- */

static void fetch_usage(FILE *out) {
    fprintf(out,
            "usage: quantctl fetch ARTIFACT [-o DIR] [--limit-rate RATE]\n"
            "\n"
            "Download an artifact into DIR (default: ./ARTIFACT), which must not exist. The\n"
            "files go into DIR.partial first; a fetch that was interrupted resumes from there\n"
            "when run again with the same DIR. Every file's sha256, and the manifest digest,\n"
            "are checked against the artifact's manifest (a file that does not match is\n"
            "downloaded once more) before DIR.partial is renamed to DIR.\n"
            "\n"
            "  -o, --output DIR   where to put the artifact\n"
            "  --limit-rate RATE  receive at most RATE bytes per second; K, M and G mean\n"
            "                     1024, 1024^2 and 1024^3\n");
}

int qd_ctl_cmd_fetch(const qd_ctl_opts *o, int argc, char **argv) {
    if (qd_ctl_wants_help(argc, argv)) {
        fetch_usage(stdout);
        return QD_CTL_EXIT_OK;
    }
    const char *id = NULL, *dir = NULL, *v = NULL;
    double rate = 0;
    for (int i = 1; i < argc; i++) {
        int r;
        if ((r = qd_ctl_opt("fetch", argc, argv, &i, "--output", "-o", &v)) != 0) {
            if (r < 0) return QD_CTL_EXIT_USAGE;
            dir = v;
        } else if ((r = qd_ctl_opt("fetch", argc, argv, &i, "--limit-rate", NULL, &v)) != 0) {
            qd_error e = {0};
            if (r < 0) return QD_CTL_EXIT_USAGE;
            if (qd_ctl_parse_rate(v, &rate, &e) != QD_OK)
                return qd_ctl_usage_error("fetch", "%s", qd_error_text(&e));
        } else if (argv[i][0] == '-' && argv[i][1]) {
            return qd_ctl_usage_error("fetch", "unknown option '%s'", argv[i]);
        } else if (!id) {
            id = argv[i];
        } else {
            return qd_ctl_usage_error("fetch", "unexpected argument '%s'", argv[i]);
        }
    }
    if (!id || !id[0]) return qd_ctl_usage_error("fetch", "no ARTIFACT given");
    qd_error ne = {0};
    if (!dir && (strchr(id, '/') || qd_ctl_check_name(id, "artifact id", &ne) != QD_OK))
        return qd_ctl_usage_error("fetch", "artifact id '%s' is no directory name: give -o DIR",
                                  id);
    if (!dir) dir = id;
    if (qd_is_dir(dir) || qd_is_file(dir))
        return qd_ctl_usage_error("fetch", "%s: already exists; choose a new directory", dir);

    struct qd_ctl_conn *c = NULL;
    int status = qd_ctl_open(o, &c);
    if (status != QD_CTL_EXIT_OK) return status;
    qd_ctl_error err = {0};
    qd_ctl_fetch_report rep;
    if (qd_ctl_fetch_artifact(c, o, id, dir, rate, &rep, &err) != QD_OK) {
        status = qd_ctl_fail(&err);
    } else if (o->json) {
        json_t *j = json_object();
        if (j) {
            json_object_set_new(j, "artifact_id", json_string(id));
            json_object_set_new(j, "output", json_string(dir));
            qd_ctl_fetch_report_json(j, &rep);
        }
        qd_ctl_json_emit(j);
    } else {
        qd_ctl_fetch_report_print(id, dir, &rep);
    }
    qd_ctl_close(c);
    return status;
}
