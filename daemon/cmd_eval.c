/*
 * cmd_eval.c - `quantd eval MODEL_DIR --data FILE`: perplexity of a model on a token set.
 *
 * The token set is a safetensors file holding `input_ids`, int32 or int64 [rows, seq_len]
 * (what `quantd tokenize` writes). Each row is one sequence; positions 0..L-2 predict tokens
 * 1..L-1, and perplexity = exp(mean negative log-likelihood over all predicted positions of
 * all rows). Rows are run through the model in batches (every decoder layer over the whole
 * batch, one layer's weights in fp32 at a time; see quantizers/model.h); a progress line per
 * batch goes to stderr, and the last line on stdout is `perplexity: <value>`.
 *
 * MODEL_DIR is a float model or a quantized artifact (quantizers/artifact.h): an artifact's
 * format is recognised from its config.json and announced on stderr ("format: gptq (gptq,
 * 4-bit, group 128)"); its linears are dequantized layer by layer from the packed tensors, and
 * the activation quantization its format implies (W8A8, FP8, W4A8) is applied to each
 * linear's input, so the perplexity is the one the quantized model has in an engine.
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "artifact.h"
#include "commands.h"
#include "job.h"
#include "model.h"
#include "ops.h"
#include "safetensors.h"
#include "tokenizer.h"

/* Tokens per forward batch by default: large enough that every GEMM has thousands of rows,
 * small enough that the batch's activations stay in the hundreds of MiB for 4k-wide models. */
#define EVAL_BATCH_TOKENS 16384

static void eval_usage(FILE *out) {
    fprintf(out,
            "usage: quantd eval MODEL_DIR --data FILE [--rows N] [--batch B] [--threads T]\n"
            "                   [--ref] [--device D]\n"
            "\n"
            "Perplexity of the model in MODEL_DIR (config.json + safetensors, F32/F16/BF16,\n"
            "or a quantized artifact: awq, gptq, compressed-tensors, modelopt, dashinfer)\n"
            "on the token set FILE: a safetensors file with `input_ids`, int32 or int64\n"
            "[rows, seq_len]. Positions 0..L-2 of each row predict tokens 1..L-1;\n"
            "perplexity = exp(mean negative log-likelihood over all of them).\n"
            "\n"
            "  --data FILE    the token set (required)\n"
            "  --rows N       evaluate only the first N rows (default: all)\n"
            "  --batch B      rows per forward batch (default: about %d tokens per batch)\n"
            "  --threads T    CPU threads for the kernels and OpenBLAS (default: all CPUs)\n"
            "  --ref          use the reference kernels (slow; for checking the fast ones)\n"
            "  --device D     cpu (default) | cuda:N | auto (cuda:0 when there is one, else\n"
            "                 cpu; the choice is said on stderr)\n"
            "\n"
            "Progress goes to stderr; the last line on stdout is `perplexity: <value>`.\n"
            "Exit status: 0 ok, 1 the evaluation failed, 2 usage.\n",
            EVAL_BATCH_TOKENS);
}

/* A positive int with nothing else in the string. */
static int parse_pos_int(const char *s, const char *opt, int *ret) {
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v <= 0 || v > INT_MAX) {
        fprintf(stderr, "quantd eval: %s needs a positive integer, not '%s'\n", opt, s);
        return -1;
    }
    *ret = (int)v;
    return 0;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int qd_cmd_eval(int argc, char **argv) {
    const char *model_dir = NULL, *data = NULL;
    const char *device = "cpu";
    int rows_opt = 0, batch_opt = 0, threads = 0, dev_index = -1;
    bool use_ref = false;
    qd_error perr = {0};

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            eval_usage(stdout);
            return 0;
        }
        bool takes_value = strcmp(a, "--data") == 0 || strcmp(a, "--rows") == 0 ||
                           strcmp(a, "--batch") == 0 || strcmp(a, "--threads") == 0 ||
                           strcmp(a, "--device") == 0;
        if (takes_value && i + 1 >= argc) {
            fprintf(stderr, "quantd eval: %s needs a value\n", a);
            return 2;
        }
        if (strcmp(a, "--data") == 0) {
            data = argv[++i];
        } else if (strcmp(a, "--rows") == 0) {
            if (parse_pos_int(argv[++i], a, &rows_opt)) return 2;
        } else if (strcmp(a, "--batch") == 0) {
            if (parse_pos_int(argv[++i], a, &batch_opt)) return 2;
        } else if (strcmp(a, "--threads") == 0) {
            if (parse_pos_int(argv[++i], a, &threads)) return 2;
        } else if (strcmp(a, "--device") == 0) {
            device = argv[++i];
            if (qd_job_device_parse(device, &dev_index, &perr) != QD_OK) {
                fprintf(stderr, "quantd eval: %s\n", qd_error_text(&perr));
                return 2;
            }
        } else if (strcmp(a, "--ref") == 0) {
            use_ref = true;
        } else if (a[0] == '-' && a[1] != '\0') {
            fprintf(stderr, "quantd eval: unknown option '%s'\n", a);
            eval_usage(stderr);
            return 2;
        } else if (!model_dir) {
            model_dir = a;
        } else {
            fprintf(stderr, "quantd eval: unexpected argument '%s'\n", a);
            return 2;
        }
    }
    if (!model_dir || !data) {
        eval_usage(stderr);
        return 2;
    }
    if (use_ref && dev_index != -1) {
        fprintf(stderr, "quantd eval: --ref runs the reference kernels on the CPU; it does not "
                        "combine with --device %s\n", device);
        return 2;
    }
    qd_cpu_set_threads(threads);

    qd_error err = {0};
    qd_artifact *art = NULL;
    const qd_model *m = NULL;
    int32_t *tokens = NULL;
    double *nll = NULL;
    int64_t rows = 0, seq_len = 0;
    int status = 1;
    double t_start = now_s();
    qd_job_device dev = {0};
    const char *note = NULL;

    if (qd_job_device_open(device, &dev, &note, &err)) goto fail;
    fprintf(stderr, "device: %s%s%s%s\n", dev.desc, note ? " (auto: no GPU: " : "",
            note ? note : "", note ? ")" : "");
    if (qd_artifact_open(model_dir, &art, &err)) goto fail;
    m = qd_artifact_model(art);
    const qd_artifact_info *info = qd_artifact_get_info(art);
    if (info->format) {
        char desc[160];
        fprintf(stderr, "format: %s\n", qd_artifact_describe(info, desc, sizeof desc));
        if (info->params.type == QD_QTYPE_FP8_E4M3)
            fprintf(stderr, "weights: fp8 e4m3, scale per %s\n",
                    info->params.weight_per_tensor ? "tensor" : "output channel");
        if (info->params.act != QD_FORMAT_ACT_NONE)
            fprintf(stderr, "activations: %s\n", qd_artifact_act_name(info->params.act));
    }
    if (qd_token_set_load(data, 0, 0, &tokens, &rows, &seq_len, &err)) goto fail;
    if (seq_len < 2) {
        qd_error_set(&err, QD_ERR_INVALID_ARG,
                     "%s: rows of %lld token(s) predict nothing (need seq_len >= 2)", data,
                     (long long)seq_len);
        goto fail;
    }
    if (rows_opt > 0 && rows_opt < rows) rows = rows_opt;
    if (qd_model_check_tokens(m, tokens, rows, seq_len, &err)) {
        qd_error_prefix(&err, "%s: ", data);
        goto fail;
    }
    int64_t batch = batch_opt > 0 ? batch_opt : EVAL_BATCH_TOKENS / seq_len;
    if (batch < 1) batch = 1;
    if (batch > rows) batch = rows;
    nll = calloc((size_t)rows, sizeof *nll);
    if (!nll) {
        qd_error_set(&err, QD_ERR_NOMEM, "no memory for %lld rows", (long long)rows);
        goto fail;
    }
    fprintf(stderr, "eval: %s, %lld rows x %lld tokens, %lld rows per batch, %d threads%s\n",
            model_dir, (long long)rows, (long long)seq_len, (long long)batch,
            qd_cpu_threads(), use_ref ? ", reference kernels" : "");

    qd_run_opts opts = {.use_ref = use_ref};
    qd_job_device_run_opts(&dev, &opts);
    qd_artifact_run_opts(art, &opts);
    double total = 0.0;
    for (int64_t r0 = 0; r0 < rows; r0 += batch) {
        int64_t nr = rows - r0 < batch ? rows - r0 : batch;
        if (qd_model_nll(m, tokens + r0 * seq_len, nr, seq_len, &opts, nll + r0, &err)) {
            qd_error_prefix(&err, "rows %lld..%lld: ", (long long)r0,
                            (long long)(r0 + nr - 1));
            goto fail;
        }
        for (int64_t r = r0; r < r0 + nr; r++) total += nll[r];
        double so_far = exp(total / (double)((r0 + nr) * (seq_len - 1)));
        fprintf(stderr, "row %lld/%lld  perplexity so far %.4f  %.1f s\n",
                (long long)(r0 + nr), (long long)rows, so_far, now_s() - t_start);
    }
    double ppl = exp(total / (double)(rows * (seq_len - 1)));
    printf("perplexity: %.6f\n", ppl);
    fflush(stdout);
    status = 0;
    goto done;
fail:
    fprintf(stderr, "quantd eval: %s\n", qd_error_text(&err));
done:
    free(nll);
    free(tokens);
    qd_artifact_free(art);
    qd_job_device_close(&dev);
    return status;
}
