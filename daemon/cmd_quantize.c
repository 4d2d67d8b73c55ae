/*
 * cmd_quantize.c - `quantd quantize MODEL_DIR --method M [options]`: one job, in process.
 *
 * Parses the job spec from flags (and --spec FILE.yaml), validates it against the model
 * before any work starts, runs the job (quantizers/job.h) with progress on stderr, prints the
 * quality report on stdout (per-layer relative output error of each group of linears on the
 * calibration inputs, then `perplexity_fp:` and `perplexity_q:` on the evaluation set), and
 * with -o writes the artifact in the target format (quantizers/artifact.h).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "artifact.h"
#include "commands.h"
#include "fsutil.h"
#include "job.h"
#include "model.h"
#include "ops.h"
#include "safetensors.h"
#include "spec.h"
#include "tokenizer.h"

static void quantize_usage(FILE *out) {
    fprintf(out,
            "usage: quantd quantize MODEL_DIR --method M [spec options] [--calib FILE]\n"
            "                       [--eval-data FILE] [--eval-rows N] [--format F -o OUT_DIR]\n"
            "                       [--threads T] [--device D] [--spec FILE.yaml]\n"
            "\n"
            "Quantize a Hugging Face Llama-family model in process and report its quality.\n"
            "\n"
            "  --method M          rtn | awq | gptq | smoothquant | fp8 | w4a8-awq\n"
            "  --calib FILE        calibration token set (safetensors, input_ids int32\n"
            "                      [rows, seq_len]); needed by awq, gptq, smoothquant,\n"
            "                      w4a8-awq and static fp8; rtn and dynamic fp8 read none\n"
            "  --eval-data FILE    evaluation token set: prints perplexity_fp and perplexity_q\n"
            "  --eval-rows N       evaluate the first N rows only\n"
            "  --format F          awq | gptq | compressed-tensors | modelopt | dashinfer |\n"
            "                      none (default: none, an in-memory report only)\n"
            "  -o, --output DIR    write the artifact there (needs --format; DIR must not\n"
            "                      exist; built in a staging directory, renamed when complete)\n"
            "  --threads T         CPU threads for the kernels and OpenBLAS (default: all CPUs;\n"
            "                      the artifact is the same for any count)\n"
            "  --device D          cpu (default) | cuda:N | auto (cuda:0 when there is one,\n"
            "                      else cpu; the choice is said on stderr)\n"
            "  -q, --quiet         no progress on stderr\n"
            "\n"
            "Exit status: 0 ok, 1 the job failed, 2 usage or invalid spec.\n"
            "\n"
            "Spec options (the YAML keys of --spec FILE and of the service's QuantSpec):\n\n");
    qd_spec_help(out);
}

struct progress {
    bool quiet;
    time_t start;
};

static void on_stage(void *ctx, const char *stage) {
    struct progress *p = ctx;
    if (!p->quiet) fprintf(stderr, "stage: %s\n", stage);
}

static void on_layer(void *ctx, int layer, int n_layers) {
    struct progress *p = ctx;
    if (p->quiet) return;
    double el = difftime(time(NULL), p->start);
    double eta = layer + 1 < n_layers ? el / (layer + 1) * (n_layers - layer - 1) : 0;
    fprintf(stderr, "layer %d/%d  %.0f s elapsed, eta %.0f s\n", layer + 1, n_layers, el, eta);
}

static int parse_count(const char *flag, const char *s, long max, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < 1 || v > max) {
        fprintf(stderr, "quantd quantize: %s '%s': expected an integer 1..%ld\n", flag, s, max);
        return -1;
    }
    *out = v;
    return 0;
}

/* Check the spec against the model's linears (group sizes dividing in_features, ...). */
static qd_err check_against_model(const qd_model *m, const qd_spec *spec, qd_error *err) {
    const qd_llama_config *c = qd_model_config(m);
    size_t n = (size_t)c->num_hidden_layers * QD_LINEAR_COUNT;
    qd_spec_linear *lin = calloc(n, sizeof *lin);
    char (*names)[96] = calloc(n, sizeof *names);
    qd_err rc = (!lin || !names) ? qd_error_set(err, QD_ERR_NOMEM, "out of memory") : QD_OK;
    qd_layer_weights w = {0};
    if (rc == QD_OK) rc = qd_layer_weights_load(m, 0, &w, err); /* shapes only */
    for (size_t i = 0; rc == QD_OK && i < n; i++) {
        int layer = (int)(i / QD_LINEAR_COUNT);
        qd_linear_kind k = (qd_linear_kind)(i % QD_LINEAR_COUNT);
        rc = qd_linear_path(names[i], sizeof names[i], layer, k, err);
        lin[i].name = names[i];
        lin[i].in_features = w.n_in[k];
        lin[i].out_features = w.n_out[k];
    }
    qd_layer_weights_done(&w);
    if (rc == QD_OK) rc = qd_spec_check_model(spec, lin, n, err);
    free(lin);
    free(names);
    return rc;
}

int qd_cmd_quantize(int argc, char **argv) {
    qd_spec spec = {0};
    qd_spec_warnings warn = {0};
    qd_error err = {0};
    int status = 1;
    int *rest = malloc((size_t)(argc > 0 ? argc : 1) * sizeof *rest);
    int n_rest = 0;
    const char *model_dir = NULL, *out_dir = NULL, *eval_path = NULL, *device = "cpu";
    qd_job_device dev = {0};
    bool dev_open = false;
    long eval_rows = 0, threads = 0;
    bool quiet = false, format_given = false;
    qd_model *m = NULL;
    int32_t *calib = NULL, *eval = NULL;
    int64_t c_rows = 0, c_len = 0, e_rows = 0, e_len = 0;
    qd_job_result res = {0};
    bool have_res = false;

    if (!rest) {
        fprintf(stderr, "quantd quantize: out of memory\n");
        return 1;
    }
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            quantize_usage(stdout);
            free(rest);
            return 0;
        }
    if (qd_spec_parse_args(argc, argv, &spec, rest, &n_rest, &err) != QD_OK) {
        fprintf(stderr, "quantd quantize: %s\n", qd_error_text(&err));
        status = 2;
        goto done;
    }
    for (int r = 0; r < n_rest; r++) {
        const char *a = argv[rest[r]];
        const char *val = r + 1 < n_rest && rest[r + 1] == rest[r] + 1 ? argv[rest[r + 1]] : NULL;
        if (strcmp(a, "-o") == 0 || strcmp(a, "--output") == 0 || strcmp(a, "--eval-data") == 0 ||
            strcmp(a, "--eval-rows") == 0 || strcmp(a, "--threads") == 0 ||
            strcmp(a, "--device") == 0) {
            if (!val) {
                fprintf(stderr, "quantd quantize: option '%s' needs a value\n", a);
                status = 2;
                goto done;
            }
            r++;
            if (a[1] == 'o' || strcmp(a, "--output") == 0) out_dir = val;
            else if (strcmp(a, "--eval-data") == 0) eval_path = val;
            else if (strcmp(a, "--device") == 0) {
                int index;
                device = val;
                if (qd_job_device_parse(val, &index, &err) != QD_OK) {
                    fprintf(stderr, "quantd quantize: %s\n", qd_error_text(&err));
                    status = 2;
                    goto done;
                }
            }
            else if (strcmp(a, "--eval-rows") == 0) {
                if (parse_count(a, val, 1L << 30, &eval_rows)) { status = 2; goto done; }
            } else if (parse_count(a, val, 4096, &threads)) {
                status = 2;
                goto done;
            }
        } else if (strcmp(a, "-q") == 0 || strcmp(a, "--quiet") == 0) {
            quiet = true;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "quantd quantize: unknown option '%s' (see quantd quantize --help)\n",
                    a);
            status = 2;
            goto done;
        } else if (!model_dir) {
            model_dir = a;
        } else {
            fprintf(stderr, "quantd quantize: unexpected argument '%s'\n", a);
            status = 2;
            goto done;
        }
    }
    if (!model_dir) {
        fprintf(stderr, "quantd quantize: no MODEL_DIR given (see quantd quantize --help)\n");
        status = 2;
        goto done;
    }
    format_given = spec.format != QD_SPEC_FORMAT_UNSET;
    if (out_dir && (!format_given || spec.format == QD_SPEC_FORMAT_NONE)) {
        fprintf(stderr, "quantd quantize: -o %s: say which format to write with --format\n",
                out_dir);
        status = 2;
        goto done;
    }
    if (!format_given) spec.format = QD_SPEC_FORMAT_NONE;
    if (qd_spec_resolve(&spec, &warn, &err) != QD_OK) {
        fprintf(stderr, "quantd quantize: %s\n", qd_error_text(&err));
        status = 2;
        goto done;
    }
    for (size_t i = 0; i < warn.n; i++) fprintf(stderr, "warning: %s\n", warn.msg[i]);
    if (out_dir && (qd_is_dir(out_dir) || qd_is_file(out_dir))) {
        fprintf(stderr, "quantd quantize: -o %s: already exists; choose a new output path\n",
                out_dir);
        status = 2;
        goto done;
    }
    const char *note = NULL;
    if (qd_job_device_open(device, &dev, &note, &err) != QD_OK) goto fail;
    dev_open = true;
    /* stderr only: the report on stdout is the same whichever device ran the job */
    if (strcmp(device, "auto") == 0 || !quiet)
        fprintf(stderr, "device: %s%s%s%s\n", dev.desc, note ? " (auto: no GPU: " : "",
                note ? note : "", note ? ")" : "");
    if (qd_model_open(model_dir, &m, &err) != QD_OK) goto fail;
    if (check_against_model(m, &spec, &err) != QD_OK) {
        fprintf(stderr, "quantd quantize: %s\n", qd_error_text(&err));
        status = 2;
        goto done;
    }
    if (spec.calibration.path) {
        if (qd_token_set_load(spec.calibration.path, spec.calibration.rows,
                              spec.calibration.seq_len, &calib, &c_rows, &c_len, &err) != QD_OK) {
            qd_error_prefix(&err, "--calib: ");
            goto fail;
        }
        if (qd_model_check_tokens(m, calib, c_rows, c_len, &err) != QD_OK ||
            qd_spec_hash_calibration(&spec, &err) != QD_OK)
            goto fail;
    } else if (qd_spec_needs_calibration(&spec)) {
        fprintf(stderr, "quantd quantize: --calib: method %s needs a calibration token set\n",
                qd_spec_method_name(spec.method));
        status = 2;
        goto done;
    }
    if (eval_path) {
        if (qd_token_set_load(eval_path, eval_rows, 0, &eval, &e_rows, &e_len, &err) != QD_OK) {
            qd_error_prefix(&err, "--eval-data: ");
            goto fail;
        }
        if (qd_model_check_tokens(m, eval, e_rows, e_len, &err) != QD_OK) goto fail;
        if (e_len < 2) {
            qd_error_set(&err, QD_ERR_INVALID_ARG, "--eval-data: rows need at least 2 tokens");
            goto fail;
        }
    }

    char digest[QD_SPEC_DIGEST_HEX];
    if (qd_spec_digest(&spec, digest, &err) != QD_OK) goto fail;
    printf("model: %s\n", model_dir);
    printf("method: %s  format: %s  bits: %u  group_size: %d  symmetric: %s\n",
           qd_spec_method_name(spec.method), qd_spec_format_name(spec.format), spec.bits,
           spec.group_size, spec.symmetric == QD_SPEC_TRUE ? "true" : "false");
    if (calib) printf("calibration: %s (%lld x %lld tokens)\n", spec.calibration.path,
                      (long long)c_rows, (long long)c_len);
    printf("spec digest: %s\n", digest);
    fflush(stdout);

    struct progress prog = {.quiet = quiet, .start = time(NULL)};
    qd_job_progress jp = {.ctx = &prog, .stage = on_stage, .layer_done = on_layer};
    qd_run_opts run = {0};
    qd_job_device_run_opts(&dev, &run);
    if (threads > 0) qd_cpu_set_threads((int)threads); /* results do not depend on it */
    if (qd_job_quantize(m, &spec, calib, c_rows, c_len, &jp, &run, &res, &err) != QD_OK)
        goto fail;
    have_res = true;

    if (calib)
        printf("\nper-layer relative output error on the calibration inputs (||y_q - y||^2 / "
               "||y||^2):\n");
    else
        printf("\nper-layer relative weight error, no calibration inputs (||W_q - W||^2 / "
               "||W||^2):\n");
    bool any = false;
    for (int l = 0; l < res.n_layers; l++) {
        const double *e = res.rel_err + (size_t)l * QD_CALIB_GROUP_COUNT;
        bool row = false;
        for (int g = 0; g < QD_CALIB_GROUP_COUNT; g++) row |= e[g] >= 0;
        if (!row) continue;
        any = true;
        printf("layer %3d", l);
        for (int g = 0; g < QD_CALIB_GROUP_COUNT; g++) {
            if (e[g] >= 0) printf("  %s %.3e", qd_calib_group_name((qd_calib_group)g), e[g]);
            else printf("  %s -", qd_calib_group_name((qd_calib_group)g));
        }
        printf("\n");
    }
    if (!any) printf("(not measured: no calibration data)\n");

    if (eval) {
        double ppl_fp, ppl_q;
        if (!quiet) fprintf(stderr, "stage: evaluate (%lld rows)\n", (long long)e_rows);
        if (qd_job_perplexity(m, NULL, eval, e_rows, e_len, &run, &ppl_fp, &err) != QD_OK ||
            qd_job_perplexity(m, &res, eval, e_rows, e_len, &run, &ppl_q, &err) != QD_OK)
            goto fail;
        printf("\nevaluation: %s (%lld x %lld tokens)\n", eval_path, (long long)e_rows,
               (long long)e_len);
        printf("perplexity_fp: %.6f\n", ppl_fp);
        printf("perplexity_q: %.6f\n", ppl_q);
    }
    if (out_dir) {
        if (!quiet) fprintf(stderr, "stage: pack and write %s\n", out_dir);
        if (qd_artifact_write(model_dir, m, &spec, &res, out_dir, 0, &err) != QD_OK) goto fail;
        printf("artifact: %s\n", out_dir);
    }
    status = 0;
    goto done;
fail:
    fprintf(stderr, "quantd quantize: %s\n", qd_error_text(&err));
    status = 1;
done:
    if (have_res) qd_job_result_free(&res);
    free(calib);
    free(eval);
    qd_model_free(m);
    if (dev_open) qd_job_device_close(&dev);
    qd_spec_free(&spec);
    free(rest);
    return status;
}
