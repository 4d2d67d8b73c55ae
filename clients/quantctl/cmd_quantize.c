/*
 * cmd_quantize.c - `quantctl quantize`: a quantization job on the server, from a local model
 * directory to a verified artifact directory.
 *
 * DESIGN
 * The spec comes from the very parser `quantd quantize` uses (quantizers/spec.h), so the flags,
 * the --spec YAML file, the defaults and the error messages are the same, and a spec the
 * parser refuses is refused here before anything is uploaded (exit status 2). What goes on the
 * wire is the spec as written (ctl_spec.c); the server fills in the defaults and computes the
 * spec digest, which is why a request made twice - here, or by another client - meets the
 * server's cache.
 *
 * The steps, each skipped when there is nothing to do:
 *   1. hash MODEL_DIR and upload what the server lacks (PutModel after StatModel);
 *   2. the same for --calib FILE, as a one-file calibration bundle named by the file's base
 *      name, whose digest is then the one qd_spec_hash_calibration computes locally;
 *   3. Quantize: queued, joined (an equal job runs already) or a cache hit (no job runs);
 *   4. WatchJob until the job ends, printing each layer's error as it arrives;
 *   5. GetArtifact into DIR.partial, verify, rename to DIR.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "fsutil.h"
#include "quantctl.h"

static void quantize_usage(FILE *out) {
    fprintf(out,
            "usage: quantctl quantize MODEL_DIR --method M --format F [spec options]\n"
            "                         [--calib FILE] [-o DIR | --no-fetch] [--detach]\n"
            "                         [--label TEXT] [--limit-rate RATE]\n"
            "       quantctl quantize --model-digest HEX ...\n"
            "       quantctl quantize --server-path DIR ...\n"
            "\n"
            "Quantize a model on the server:\n"
            "  1. upload MODEL_DIR and the --calib file, sending only what the server lacks\n"
            "     (files it holds are skipped, partial ones resume at the server's offset);\n"
            "  2. submit the job: an equal job already queued or running is joined, and a\n"
            "     request the server has an artifact for is answered from its cache (no job\n"
            "     runs);\n"
            "  3. watch the job: each layer's error on stdout as it finishes, progress (layer\n"
            "     i/n, ETA) on stderr when it is a terminal;\n"
            "  4. fetch the artifact into DIR and verify every file's sha256.\n"
            "\n"
            "  --model-digest HEX  quantize a model bundle the server holds (quantctl put)\n"
            "  --server-path DIR   quantize a model directory on the server (under one of its\n"
            "                      model roots)\n"
            "  --calib FILE        calibration token set, uploaded as a one-file calibration\n"
            "                      bundle; methods that calibrate and get none use the\n"
            "                      server's default set\n"
            "  -o, --output DIR    where to put the artifact; must not exist\n"
            "                      (default: ./ARTIFACT_ID)\n"
            "  --no-fetch          do not download the artifact\n"
            "  --detach            submit, print the job, and return; do not watch or fetch\n"
            "  --label TEXT        free text shown in job listings (at most 256 bytes)\n"
            "  --limit-rate RATE   upload at most RATE bytes per second (K, M, G suffixes)\n"
            "\n"
            "Exit status: 0 the artifact is in DIR (or the job was submitted, with --detach);\n"
            "1 the job failed or was cancelled, or a local error; 2 usage or an invalid spec;\n"
            "3 the server refused a request; 4 the server could not be reached.\n"
            "\n"
            "Spec options (the same as `quantd quantize`; the YAML keys of --spec FILE and of\n"
            "the service's QuantSpec):\n\n");
    qd_spec_help(out);
}

static const char *outcome_word(int outcome) {
    switch (outcome) {
    case QUANTD__V1__QUANTIZE_OUTCOME__QUANTIZE_OUTCOME_QUEUED: return "queued";
    case QUANTD__V1__QUANTIZE_OUTCOME__QUANTIZE_OUTCOME_JOINED: return "joined";
    case QUANTD__V1__QUANTIZE_OUTCOME__QUANTIZE_OUTCOME_CACHE_HIT: return "cache_hit";
    default: return "unspecified";
    }
}

/* Options of quantize that are not spec keys. */
typedef struct quantize_args {
    const char *model_dir, *model_digest, *server_path, *out_dir, *label;
    double rate;
    bool no_fetch, detach;
} quantize_args;

/* The arguments qd_spec_parse_args left: ours, and the model directory. */
static int parse_rest(int argc, char **argv, const int *rest, int n_rest, quantize_args *a) {
    for (int r = 0; r < n_rest; r++) {
        const char *arg = argv[rest[r]];
        /* A value is the next argument only if the spec parser left that one too. */
        bool has_next = r + 1 < n_rest && rest[r + 1] == rest[r] + 1;
        const char *val = NULL;
        const char *eq = strchr(arg, '=');
        char name[64] = "";
        if (arg[0] == '-' && arg[1] == '-' && eq && (size_t)(eq - arg) < sizeof name) {
            memcpy(name, arg, (size_t)(eq - arg));
            name[eq - arg] = '\0';
            val = eq + 1;
        } else {
            snprintf(name, sizeof name, "%s", arg);
        }
        bool takes_value = strcmp(name, "-o") == 0 || strcmp(name, "--output") == 0 ||
                           strcmp(name, "--label") == 0 || strcmp(name, "--model-digest") == 0 ||
                           strcmp(name, "--server-path") == 0 ||
                           strcmp(name, "--limit-rate") == 0;
        if (takes_value && !val) {
            if (!has_next)
                return qd_ctl_usage_error("quantize", "option '%s' needs a value", name);
            val = argv[rest[++r]];
        }
        if (strcmp(name, "-o") == 0 || strcmp(name, "--output") == 0) {
            a->out_dir = val;
        } else if (strcmp(name, "--label") == 0) {
            a->label = val;
        } else if (strcmp(name, "--model-digest") == 0) {
            a->model_digest = val;
        } else if (strcmp(name, "--server-path") == 0) {
            a->server_path = val;
        } else if (strcmp(name, "--limit-rate") == 0) {
            qd_error e = {0};
            if (qd_ctl_parse_rate(val, &a->rate, &e) != QD_OK)
                return qd_ctl_usage_error("quantize", "%s", qd_error_text(&e));
        } else if (strcmp(arg, "--no-fetch") == 0) {
            a->no_fetch = true;
        } else if (strcmp(arg, "--detach") == 0) {
            a->detach = true;
        } else if (strcmp(arg, "--") == 0) {
            continue;
        } else if (arg[0] == '-' && arg[1]) {
            return qd_ctl_usage_error("quantize", "unknown option '%s'", arg);
        } else if (!a->model_dir) {
            a->model_dir = arg;
        } else {
            return qd_ctl_usage_error("quantize", "unexpected argument '%s'", arg);
        }
    }
    return QD_CTL_EXIT_OK;
}

/* Everything a run accumulates, released in one place. */
typedef struct quantize_run {
    qd_spec spec;
    qd_ctl_bundle model, calib;
    qd_ctl_put_report model_rep, calib_rep;
    bool model_sent, calib_sent;
    struct qd_ctl_conn *conn;
    Quantd__V1__QuantizeResponse *resp;
    qd_ctl_watch_result watch;
    qd_ctl_fetch_report fetch;
    double submitted; /* when Quantize answered */
    json_t *out;      /* the --json result */
} quantize_run;

static void run_done(quantize_run *q) {
    qd_spec_free(&q->spec);
    qd_ctl_bundle_free(&q->model);
    qd_ctl_bundle_free(&q->calib);
    qd_ctl_close(q->conn);
    if (q->resp) protobuf_c_message_free_unpacked(&q->resp->base, NULL);
    qd_ctl_watch_result_done(&q->watch);
    json_decref(q->out);
}

/* Checks that need the spec resolved; on a copy, so what is sent stays as written. */
static int check_spec(const qd_ctl_opts *o, const qd_spec *spec, bool *ret_needs_calib) {
    qd_spec r = {0};
    qd_spec_warnings warn = {0};
    qd_error e = {0};
    if (spec->format == QD_SPEC_FORMAT_UNSET)
        return qd_ctl_usage_error("quantize", "--format: say which format to write (awq, gptq, "
                                              "compressed-tensors, modelopt or dashinfer)");
    if (spec->format == QD_SPEC_FORMAT_NONE)
        return qd_ctl_usage_error("quantize", "--format none keeps a result in memory, for "
                                              "`quantd quantize`; the server writes artifacts");
    if (spec->method == QD_SPEC_METHOD_W4A8_AWQ &&
        (spec->fp8.weight_scale != QD_SPEC_FP8_WEIGHT_SCALE_UNSET ||
         spec->fp8.activation_scheme != QD_SPEC_FP8_ACTIVATION_UNSET))
        return qd_ctl_usage_error("quantize", "--fp8-*: the FP8 half of w4a8-awq is fixed on the "
                                              "server; leave these keys out");
    if (qd_spec_copy(&r, spec, &e) != QD_OK || qd_spec_resolve(&r, &warn, &e) != QD_OK) {
        qd_spec_free(&r);
        fprintf(stderr, "quantctl quantize: %s\n", qd_error_text(&e));
        return QD_CTL_EXIT_USAGE;
    }
    for (size_t i = 0; i < warn.n && !o->quiet; i++)
        fprintf(stderr, "quantctl: warning: %s\n", warn.msg[i]);
    *ret_needs_calib = qd_spec_needs_calibration(&r);
    qd_spec_free(&r);
    if (spec->calibration.path && !*ret_needs_calib)
        return qd_ctl_usage_error("quantize", "--calib: method %s reads no calibration data "
                                              "with these options",
                                  qd_spec_method_name(spec->method));
    return QD_CTL_EXIT_OK;
}

/* Steps 1 and 2: the model and the calibration set on the server. */
static qd_err upload(quantize_run *q, const qd_ctl_opts *o, const quantize_args *a,
                     qd_ctl_error *err) {
    qd_err rc = QD_OK;
    if (a->model_dir) {
        rc = qd_ctl_bundle_load(o, a->model_dir, &q->model, err);
        if (rc == QD_OK)
            rc = qd_ctl_put_bundle(q->conn, o, &q->model,
                                   QUANTD__V1__BUNDLE_KIND__BUNDLE_KIND_MODEL, a->rate, false,
                                   &q->model_rep, err);
        if (rc != QD_OK) return rc;
        q->model_sent = true;
        if (!o->json) qd_ctl_put_report_print("model", &q->model, &q->model_rep);
    }
    if (q->spec.calibration.path) {
        /* The local digest (and a --calib-digest given with --calib must match it). */
        rc = qd_spec_hash_calibration(&q->spec, &err->e);
        if (rc == QD_OK) rc = qd_ctl_bundle_load(o, q->spec.calibration.path, &q->calib, err);
        if (rc != QD_OK) return rc;
        if (strcmp(q->calib.digest, q->spec.calibration.digest) != 0)
            return qd_ctl_error_local(err, QD_ERR_INTERNAL,
                                      "--calib %s: bundle digest %s, spec digest %s differ",
                                      q->spec.calibration.path, q->calib.digest,
                                      q->spec.calibration.digest);
        rc = qd_ctl_put_bundle(q->conn, o, &q->calib,
                               QUANTD__V1__BUNDLE_KIND__BUNDLE_KIND_CALIBRATION, a->rate, false,
                               &q->calib_rep, err);
        if (rc != QD_OK) return rc;
        q->calib_sent = true;
        if (!o->json) qd_ctl_put_report_print("calibration", &q->calib, &q->calib_rep);
    }
    return QD_OK;
}

/* Step 3. */
static qd_err submit(quantize_run *q, const qd_ctl_opts *o, const quantize_args *a,
                     bool needs_calib, qd_ctl_error *err) {
    qd_ctl_spec_msg sm;
    qd_ctl_spec_to_proto(&q->spec, needs_calib, &sm);
    Quantd__V1__QuantizeRequest req = QUANTD__V1__QUANTIZE_REQUEST__INIT;
    if (a->server_path) {
        req.model_case = QUANTD__V1__QUANTIZE_REQUEST__MODEL_MODEL_PATH;
        req.model_path = (char *)a->server_path;
    } else {
        req.model_case = QUANTD__V1__QUANTIZE_REQUEST__MODEL_MODEL_DIGEST;
        req.model_digest = a->model_dir ? q->model.digest : (char *)a->model_digest;
    }
    req.spec = &sm.spec;
    req.label = (char *)(a->label ? a->label : "");
    ProtobufCMessage *resp = NULL;
    double t0 = qd_ctl_now();
    qd_err rc = qd_ctl_unary(q->conn, QD_CTL_QUANTIZE, &req.base,
                             &quantd__v1__quantize_response__descriptor, &resp, err);
    q->submitted = qd_ctl_now();
    double ms = (q->submitted - t0) * 1000.0;
    if (rc != QD_OK) return rc;
    q->resp = (Quantd__V1__QuantizeResponse *)resp;
    const Quantd__V1__Job *job = q->resp->job;
    if (!job || !job->id || !job->id[0]) {
        qd_error_set(&err->e, QD_ERR_INTERNAL, "Quantize: the answer names no job");
        err->exit_status = QD_CTL_EXIT_REFUSED;
        return QD_ERR_INTERNAL;
    }
    json_object_set_new(q->out, "job_id", json_string(job->id));
    json_object_set_new(q->out, "outcome", json_string(outcome_word(q->resp->outcome)));
    json_object_set_new(q->out, "cache_hit",
                        json_boolean(q->resp->outcome ==
                                     QUANTD__V1__QUANTIZE_OUTCOME__QUANTIZE_OUTCOME_CACHE_HIT));
    json_object_set_new(q->out, "quantize_ms", json_real(ms));
    json_object_set_new(q->out, "spec_digest",
                        json_string(job->spec_digest ? job->spec_digest : ""));
    if (o->json) return QD_OK;
    switch (q->resp->outcome) {
    case QUANTD__V1__QUANTIZE_OUTCOME__QUANTIZE_OUTCOME_CACHE_HIT:
        printf("job: %s (cache hit: answered from the cache, no job ran; %.1f ms)\n", job->id, ms);
        break;
    case QUANTD__V1__QUANTIZE_OUTCOME__QUANTIZE_OUTCOME_JOINED:
        printf("job: %s (joined: an equal job was already queued or running)\n", job->id);
        break;
    default:
        printf("job: %s (queued, %u ahead)\n", job->id, job->queue_position);
        break;
    }
    fflush(stdout);
    return QD_OK;
}

int qd_ctl_cmd_quantize(const qd_ctl_opts *o, int argc, char **argv) {
    if (qd_ctl_wants_help(argc, argv)) {
        quantize_usage(stdout);
        return QD_CTL_EXIT_OK;
    }
    quantize_run q = {0};
    quantize_args a = {0};
    qd_ctl_error err = {0};
    int status = QD_CTL_EXIT_OK;
    int *rest = malloc((size_t)argc * sizeof *rest);
    int n_rest = 0;
    bool needs_calib = false;
    double t0 = qd_ctl_now();
    if (!rest) {
        fprintf(stderr, "quantctl: out of memory\n");
        return QD_CTL_EXIT_FAILED;
    }
    if (qd_spec_parse_args(argc, argv, &q.spec, rest, &n_rest, &err.e) != QD_OK) {
        fprintf(stderr, "quantctl quantize: %s\n", qd_error_text(&err.e));
        status = QD_CTL_EXIT_USAGE;
        goto done;
    }
    status = parse_rest(argc, argv, rest, n_rest, &a);
    if (status != QD_CTL_EXIT_OK) goto done;
    int n_models = !!a.model_dir + !!a.model_digest + !!a.server_path;
    if (n_models != 1) {
        status = qd_ctl_usage_error("quantize", n_models ? "give one of MODEL_DIR, --model-digest "
                                                           "and --server-path"
                                                         : "no MODEL_DIR given");
        goto done;
    }
    if (a.model_digest && !qd_ctl_is_digest(a.model_digest)) {
        status = qd_ctl_usage_error("quantize", "--model-digest '%s': expected 64 lowercase hex "
                                                "digits", a.model_digest);
        goto done;
    }
    if (a.label && strlen(a.label) > 256) {
        status = qd_ctl_usage_error("quantize", "--label: at most 256 bytes");
        goto done;
    }
    if (a.out_dir && (a.no_fetch || a.detach)) {
        status = qd_ctl_usage_error("quantize", "-o DIR: nothing is fetched with %s",
                                    a.detach ? "--detach" : "--no-fetch");
        goto done;
    }
    if (a.out_dir && (qd_is_dir(a.out_dir) || qd_is_file(a.out_dir))) {
        status = qd_ctl_usage_error("quantize", "-o %s: already exists; choose a new directory",
                                    a.out_dir);
        goto done;
    }
    status = check_spec(o, &q.spec, &needs_calib);
    if (status != QD_CTL_EXIT_OK) goto done;
    if (!(q.out = json_object())) {
        qd_ctl_error_local(&err, QD_ERR_NOMEM, "out of memory");
        goto fail;
    }

    status = qd_ctl_open(o, &q.conn);
    if (status != QD_CTL_EXIT_OK) goto done;
    t0 = qd_ctl_now();
    if (upload(&q, o, &a, &err) != QD_OK || submit(&q, o, &a, needs_calib, &err) != QD_OK)
        goto fail;
    if (q.model_sent) {
        json_t *m = json_object();
        qd_ctl_put_report_json(m, &q.model, &q.model_rep);
        json_object_set_new(q.out, "model", m);
    } else {
        json_object_set_new(q.out, "model_digest", json_string(q.resp->job->model_digest
                                                                   ? q.resp->job->model_digest
                                                                   : ""));
    }
    if (q.calib_sent) {
        json_t *m = json_object();
        qd_ctl_put_report_json(m, &q.calib, &q.calib_rep);
        json_object_set_new(q.out, "calibration", m);
    }
    const Quantd__V1__Job *job = q.resp->job;
    if (a.detach) {
        json_object_set_new(q.out, "state", json_string(qd_ctl_job_state_word(job->state)));
        goto report;
    }

    /* Step 4: the job's events, unless the cache answered. */
    const char *artifact_id = NULL;
    int state = job->state;
    if (q.resp->outcome == QUANTD__V1__QUANTIZE_OUTCOME__QUANTIZE_OUTCOME_CACHE_HIT) {
        artifact_id = q.resp->artifact && q.resp->artifact->id[0] ? q.resp->artifact->id
                                                                   : job->artifact_id;
        state = QUANTD__V1__JOB_STATE__JOB_STATE_SUCCEEDED;
    } else {
        if (qd_ctl_watch_job(q.conn, o, job->id, 0, false, &q.watch, &err) != QD_OK) {
            /* The job lives on the server whatever happened to this stream. */
            if (!o->quiet)
                fprintf(stderr, "quantctl: job %s: follow it with `quantctl watch %s`\n", job->id,
                        job->id);
            goto fail;
        }
        state = q.watch.state;
        artifact_id = q.watch.artifact_id;
        json_object_set(q.out, "layers", q.watch.layers);
    }
    json_object_set_new(q.out, "state", json_string(qd_ctl_job_state_word(state)));
    if (state != QUANTD__V1__JOB_STATE__JOB_STATE_SUCCEEDED) {
        json_object_set_new(q.out, "error", json_pack("{s:s, s:s}", "code", q.watch.error_code,
                                                      "message", q.watch.error_message));
        if (!o->json)
            fprintf(stderr, "quantctl: job %s %s: %s%s%s\n", job->id,
                    qd_ctl_job_state_word(state), q.watch.error_code,
                    q.watch.error_code[0] ? ": " : "", q.watch.error_message);
        status = QD_CTL_EXIT_FAILED;
        goto report;
    }
    if (!artifact_id || !artifact_id[0]) {
        qd_error_set(&err.e, QD_ERR_INTERNAL, "job %s succeeded without an artifact id", job->id);
        err.exit_status = QD_CTL_EXIT_REFUSED;
        goto fail;
    }
    json_object_set_new(q.out, "artifact_id", json_string(artifact_id));
    if (!o->json) {
        if (q.resp->outcome != QUANTD__V1__QUANTIZE_OUTCOME__QUANTIZE_OUTCOME_CACHE_HIT)
            printf("job %s: succeeded %.1f s after it was submitted\n", job->id,
                   qd_ctl_now() - q.submitted);
        printf("artifact: %s\n", artifact_id);
        fflush(stdout);
    }

    /* Step 5. */
    if (!a.no_fetch) {
        const char *dir = a.out_dir;
        qd_error ne = {0};
        if (!dir) {
            if (strchr(artifact_id, '/') ||
                qd_ctl_check_name(artifact_id, "artifact id", &ne) != QD_OK) {
                qd_ctl_error_local(&err, QD_ERR_INVALID_ARG,
                                   "artifact id '%s' is no directory name: fetch it with -o DIR",
                                   artifact_id);
                goto fail;
            }
            dir = artifact_id;
        }
        if (qd_ctl_fetch_artifact(q.conn, o, artifact_id, dir, 0, &q.fetch, &err) != QD_OK)
            goto fail;
        json_object_set_new(q.out, "output", json_string(dir));
        json_t *f = json_object();
        qd_ctl_fetch_report_json(f, &q.fetch);
        json_object_set_new(q.out, "fetch", f);
        if (!o->json) qd_ctl_fetch_report_print(artifact_id, dir, &q.fetch);
    }
report:
    json_object_set_new(q.out, "seconds", json_real(qd_ctl_now() - t0));
    if (o->json) {
        qd_ctl_json_emit(q.out);
        q.out = NULL;
    }
    goto done;
fail:
    status = qd_ctl_fail(&err);
done:
    run_done(&q);
    free(rest);
    return status;
}
