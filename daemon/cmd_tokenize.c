/*
 * cmd_tokenize.c - `quantd tokenize`: text files -> an input_ids token set (safetensors).
 *
 * A thin command: argument parsing and file plumbing only. The work is in
 * quantizers/tokenizer.c (qd_tokenizer_encode_text, qd_token_windows), where it is tested;
 * the model's vocab_size and context length come from its config.json (common/hf_config.c).
 */
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "fsutil.h"
#include "hf_config.h"
#include "safetensors.h"
#include "tokenizer.h"

#define TEXT_MAX_BYTES (1u << 30)        /* one text file */
#define MAX_TEXT_FILES 64
#define MAX_OUTPUT_IDS ((size_t)1 << 28) /* rows x seq_len: 1 GiB of int32 */

static void usage(FILE *out) {
    fprintf(out,
            "usage: quantd tokenize MODEL_DIR --text FILE [--text FILE ...] --seq-len L "
            "--rows N -o OUT\n"
            "\n"
            "Encode text into a token set for calibration or evaluation: a safetensors file\n"
            "holding one tensor, input_ids, int32 [N, L]. Every row is BOS followed by L-1\n"
            "tokens of running text.\n"
            "\n"
            "  MODEL_DIR       the model: its config.json gives vocab_size and the context\n"
            "                  length, its tokenizer.bin (llama2.c format) the vocabulary\n"
            "  --text FILE     a UTF-8 text file; repeat to concatenate several, in order.\n"
            "                  Paragraphs are separated by blank lines; inside a paragraph\n"
            "                  every run of whitespace becomes one space. Each paragraph is\n"
            "                  encoded on its own (with the tokenizer's leading-space prefix)\n"
            "                  and the ids of all paragraphs are concatenated.\n"
            "  --seq-len L     tokens per row, BOS included (2 .. max_position_embeddings)\n"
            "  --rows N        number of rows (>= 1)\n"
            "  -o, --output OUT  the safetensors file to write (replaced atomically)\n"
            "  -h, --help      show this help\n"
            "\n"
            "The rows are windows of W = L-1 consecutive tokens. With exactly N*W tokens of\n"
            "text they follow one another; with more, they are spread evenly over the whole\n"
            "text (row r starts at token floor(r*(T-W)/(N-1)), T tokens in all), so the last\n"
            "row ends at the end of the text. Text shorter than N*W tokens is an error that\n"
            "says how many rows it would give. The file's __metadata__ records the text\n"
            "file names (\"source\") and \"seq_len\".\n"
            "\n"
            "Exit status: 0 written, 1 failed, 2 bad arguments.\n");
}

/* A whole decimal int in [min, INT_MAX]; 0 on success, -1 with a message otherwise. */
static int parse_int(const char *opt, const char *s, int min, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < min || v > INT_MAX) {
        fprintf(stderr, "quantd tokenize: %s '%s': expected a whole number >= %d\n", opt, s,
                min);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static const char *base_name(const char *path) {
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

/* Encode every text file and concatenate the ids. */
static qd_err encode_files(const qd_tokenizer *tok, const char **files, int n_files,
                           int32_t **ids, size_t *n, qd_error *err) {
    int32_t *all = NULL;
    size_t total = 0;
    qd_err rc = QD_OK;
    for (int f = 0; f < n_files && rc == QD_OK; f++) {
        char *text;
        size_t len;
        int32_t *part;
        size_t k;
        if ((rc = qd_read_file(files[f], TEXT_MAX_BYTES, &text, &len, err)) != QD_OK) break;
        rc = qd_tokenizer_encode_text(tok, text, len, &part, &k, err);
        free(text);
        if (rc != QD_OK) {
            qd_error_prefix(err, "%s: ", files[f]);
            break;
        }
        int32_t *grown = k ? realloc(all, (total + k) * sizeof *all) : all;
        if (k && !grown) {
            free(part);
            rc = qd_error_set(err, QD_ERR_NOMEM, "%s: out of memory for %zu ids", files[f],
                              total + k);
            break;
        }
        all = grown;
        if (k) memcpy(all + total, part, k * sizeof *part);
        total += k;
        free(part);
    }
    if (rc != QD_OK) {
        free(all);
        return rc;
    }
    *ids = all;
    *n = total;
    return QD_OK;
}

int qd_cmd_tokenize(int argc, char **argv) {
    const char *model_dir = NULL, *out_path = NULL;
    const char *texts[MAX_TEXT_FILES];
    int n_texts = 0, seq_len = 0, rows = 0;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            return 0;
        }
        bool takes_value = strcmp(a, "--text") == 0 || strcmp(a, "--seq-len") == 0 ||
                           strcmp(a, "--rows") == 0 || strcmp(a, "-o") == 0 ||
                           strcmp(a, "--output") == 0;
        if (takes_value && !val) {
            fprintf(stderr, "quantd tokenize: %s needs a value\n", a);
            return 2;
        }
        if (strcmp(a, "--text") == 0) {
            if (n_texts == MAX_TEXT_FILES) {
                fprintf(stderr, "quantd tokenize: at most %d --text files\n", MAX_TEXT_FILES);
                return 2;
            }
            texts[n_texts++] = val;
            i++;
        } else if (strcmp(a, "--seq-len") == 0) {
            if (parse_int(a, val, 2, &seq_len) != 0) return 2;
            i++;
        } else if (strcmp(a, "--rows") == 0) {
            if (parse_int(a, val, 1, &rows) != 0) return 2;
            i++;
        } else if (strcmp(a, "-o") == 0 || strcmp(a, "--output") == 0) {
            out_path = val;
            i++;
        } else if (a[0] == '-' && a[1] != '\0') {
            fprintf(stderr, "quantd tokenize: unknown option '%s' (see --help)\n", a);
            return 2;
        } else if (!model_dir) {
            model_dir = a;
        } else {
            fprintf(stderr, "quantd tokenize: unexpected argument '%s' (one MODEL_DIR)\n", a);
            return 2;
        }
    }
    const char *missing = !model_dir ? "MODEL_DIR" : n_texts == 0 ? "--text FILE"
                        : seq_len == 0 ? "--seq-len L" : rows == 0 ? "--rows N"
                        : !out_path ? "-o OUT" : NULL;
    if (missing) {
        fprintf(stderr, "quantd tokenize: missing %s\n\n", missing);
        usage(stderr);
        return 2;
    }
    if ((size_t)rows > MAX_OUTPUT_IDS / (size_t)seq_len) {
        fprintf(stderr, "quantd tokenize: %d rows x %d tokens is more than the limit of %zu "
                "ids\n", rows, seq_len, MAX_OUTPUT_IDS);
        return 2;
    }

    qd_error err = {0};
    qd_llama_config cfg;
    qd_tokenizer *tok = NULL;
    int32_t *ids = NULL, *out = NULL;
    size_t n_ids = 0;
    qd_st_writer *w = NULL;
    int status = 1;

    if (qd_llama_config_load(model_dir, &cfg, &err) != QD_OK) goto done;
    if (seq_len > cfg.max_position_embeddings) {
        qd_error_set(&err, QD_ERR_INVALID_ARG,
                     "--seq-len %d is longer than the model's max_position_embeddings %d",
                     seq_len, cfg.max_position_embeddings);
        goto done;
    }
    if (qd_tokenizer_load(model_dir, cfg.vocab_size, &tok, &err) != QD_OK) goto done;
    if (encode_files(tok, texts, n_texts, &ids, &n_ids, &err) != QD_OK) goto done;

    out = malloc((size_t)rows * (size_t)seq_len * sizeof *out);
    if (!out) {
        qd_error_set(&err, QD_ERR_NOMEM, "out of memory for %d x %d ids", rows, seq_len);
        goto done;
    }
    if (qd_token_windows(ids, n_ids, rows, seq_len, qd_tokenizer_bos_id(tok), out, &err) !=
        QD_OK) {
        qd_error_prefix(&err, "%s%s: ", texts[0], n_texts > 1 ? " (and the other --text files)"
                                                              : "");
        goto done;
    }

    /* metadata as in the bundled token sets: source file names and seq_len */
    char source[1024] = "", seq[32];
    size_t used = 0;
    for (int f = 0; f < n_texts && used < sizeof source; f++) {
        int k = snprintf(source + used, sizeof source - used, "%s%s", f ? "," : "",
                         base_name(texts[f]));
        if (k < 0) break;
        used += (size_t)k;
    }
    snprintf(seq, sizeof seq, "%d", seq_len);
    const int64_t shape[2] = {rows, seq_len};
    w = qd_st_writer_new();
    if (!w) {
        qd_error_set(&err, QD_ERR_NOMEM, "out of memory");
        goto done;
    }
    if (qd_st_writer_add(w, "input_ids", QD_DTYPE_I32, 2, shape, out, &err) != QD_OK ||
        qd_st_writer_set_metadata(w, "source", source, &err) != QD_OK ||
        qd_st_writer_set_metadata(w, "seq_len", seq, &err) != QD_OK ||
        qd_st_write_file(w, out_path, &err) != QD_OK)
        goto done;

    size_t window = (size_t)seq_len - 1;
    printf("%s: input_ids [%d, %d] from %zu tokens of text", out_path, rows, seq_len, n_ids);
    if (rows > 1)
        printf(" (windows of %zu every %.1f tokens)\n", window,
               (double)(n_ids - window) / (double)(rows - 1));
    else
        printf(" (the first %zu tokens)\n", window);
    status = 0;
done:
    if (status != 0) fprintf(stderr, "quantd tokenize: %s\n", qd_error_text(&err));
    qd_st_writer_free(w);
    free(out);
    free(ids);
    qd_tokenizer_free(tok);
    return status;
}
