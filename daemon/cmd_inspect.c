/*
 * cmd_inspect.c - `quantd inspect PATH`: what a model directory or safetensors file holds.
 *
 * For a model directory: the architecture from config.json, the parameter count (counted from
 * the tensors, and the count the config implies), the files, and a table of every tensor
 * (name, dtype, shape). For a single .safetensors file: its metadata and tensor table.
 * Every input is validated by the readers; an error names the file and the problem.
 *
 * A quantized artifact (quantizers/artifact.h) also gets its format as quantd recognises it
 * ("format: awq (awq, 4-bit, group 128)", the activation scheme), config.json's
 * quantization_config and the format's side config (pretty JSON); its tensor table holds the
 * packed tensors (I32 words, U8/I8 codes, F16 scales, ...) in place of the linears' float
 * weights, so their element count is reported as such, not compared with the parameter count
 * the config implies. A quantization_config quantd does not read is reported and the rest is
 * printed as for any model.
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "artifact.h"
#include "commands.h"
#include "fsutil.h"
#include "hf_config.h"
#include "safetensors.h"

static void inspect_usage(FILE *out) {
    fprintf(out,
            "usage: quantd inspect PATH\n"
            "\n"
            "PATH is a model directory (config.json + model.safetensors, or\n"
            "model.safetensors.index.json + shards) or a single .safetensors file.\n"
            "Prints the architecture, the parameter count and a table of the tensors\n"
            "(name, dtype, shape); for a quantized model also its format and quantization\n"
            "config. Exit status: 0 ok, 1 the input is invalid, 2 usage.\n");
}

/* "1,234,567" */
static const char *group_digits(long long v, char *buf, size_t len) {
    char tmp[32];
    int n = snprintf(tmp, sizeof tmp, "%lld", v < 0 ? -v : v);
    size_t o = 0;
    if (v < 0 && o + 1 < len) buf[o++] = '-';
    for (int i = 0; i < n && o + 2 < len; i++) {
        buf[o++] = tmp[i];
        int left = n - 1 - i;
        if (left > 0 && left % 3 == 0) buf[o++] = ',';
    }
    buf[o] = '\0';
    return buf;
}

static const char *human_bytes(uint64_t b, char *buf, size_t len) {
    const char *unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)b;
    int u = 0;
    while (v >= 1024.0 && u < 4) {
        v /= 1024.0;
        u++;
    }
    if (u == 0) snprintf(buf, len, "%" PRIu64 " B", b);
    else snprintf(buf, len, "%.1f %s", v, unit[u]);
    return buf;
}

typedef struct tensor_totals {
    long long params;
    uint64_t bytes;
    int per_dtype[QD_DTYPE_COUNT];
} tensor_totals;

static void print_tensor_table(const qd_st_entry *const *entries, size_t n, tensor_totals *tot) {
    size_t w = 4;
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(entries[i]->name);
        if (l > w) w = l;
    }
    printf("%-*s  %-7s  %s\n", (int)w, "name", "dtype", "shape");
    for (size_t i = 0; i < n; i++) {
        const qd_st_entry *e = entries[i];
        char shape[128];
        long long numel = 1;
        for (int d = 0; d < e->ndim; d++) numel *= e->shape[d];
        printf("%-*s  %-7s  %s\n", (int)w, e->name, qd_dtype_name(e->dtype),
               qd_shape_str(e->ndim, e->shape, shape, sizeof shape));
        tot->params += numel;
        tot->bytes += e->end - e->begin;
        tot->per_dtype[e->dtype]++;
    }
}

static void print_dtype_summary(const tensor_totals *tot) {
    printf("dtypes:");
    for (int t = 0; t < QD_DTYPE_COUNT; t++)
        if (tot->per_dtype[t]) printf(" %s x%d", qd_dtype_name((qd_dtype)t), tot->per_dtype[t]);
    printf("\n");
}

static int inspect_file(const char *path) {
    qd_error err = {0};
    qd_st_file *f;
    if (qd_st_open(path, &f, &err) != QD_OK) {
        fprintf(stderr, "quantd inspect: %s\n", qd_error_text(&err));
        return 1;
    }
    size_t n = qd_st_count(f);
    printf("file: %s\n", path);
    for (size_t i = 0; i < qd_st_metadata_count(f); i++) {
        const char *v;
        const char *k = qd_st_metadata_get(f, i, &v);
        printf("metadata: %s = %s\n", k, v);
    }
    const qd_st_entry **entries = calloc(n ? n : 1, sizeof *entries);
    if (!entries) {
        qd_st_close(f);
        fprintf(stderr, "quantd inspect: out of memory\n");
        return 1;
    }
    for (size_t i = 0; i < n; i++) entries[i] = qd_st_get(f, i);
    tensor_totals tot = {0};
    printf("\n");
    print_tensor_table(entries, n, &tot);
    char a[32], b[32];
    printf("\ntensors: %zu, elements: %s, data: %s\n", n, group_digits(tot.params, a, sizeof a),
           human_bytes(tot.bytes, b, sizeof b));
    print_dtype_summary(&tot);
    free(entries);
    qd_st_close(f);
    return 0;
}

/* JSON pretty-printed with every line indented by two spaces. */
static void print_json_indented(const json_t *j) {
    char *text = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    if (!text) {
        printf("  (out of memory)\n");
        return;
    }
    fputs("  ", stdout);
    for (const char *p = text; *p; p++) {
        putchar(*p);
        if (*p == '\n') fputs("  ", stdout);
    }
    putchar('\n');
    free(text);
}

static void print_format(const qd_artifact_info *info) {
    char desc[160];
    const qd_format_params *p = &info->params;
    printf("format: %s\n", qd_artifact_describe(info, desc, sizeof desc));
    if (p->type == QD_QTYPE_FP8_E4M3)
        printf("  weights fp8 e4m3, scale per %s\n",
               p->weight_per_tensor ? "tensor" : "output channel");
    else
        printf("  weights int%d, %s%s\n", p->bits, p->symmetric ? "symmetric" : "zero points",
               p->act_order ? (p->static_groups ? ", act-order (static groups)" : ", act-order")
                            : "");
    printf("  activations %s\n", qd_artifact_act_name(p->act));
    if (p->n_ignore) {
        printf("  not quantized:");
        for (int i = 0; i < p->n_ignore; i++) printf(" %s", p->ignore[i]);
        printf("\n");
    }
    printf("quantization_config:\n");
    print_json_indented(info->quantization_config);
    if (info->side_config && info->format->side_config_name) {
        printf("%s:\n", info->format->side_config_name);
        print_json_indented(info->side_config);
    }
}

static int inspect_model(const char *dir) {
    qd_error err = {0};
    qd_llama_config cfg;
    if (qd_llama_config_load(dir, &cfg, &err) != QD_OK) {
        fprintf(stderr, "quantd inspect: %s\n", qd_error_text(&err));
        return 1;
    }
    qd_st_model *m;
    if (qd_st_model_open(dir, &m, &err) != QD_OK) {
        fprintf(stderr, "quantd inspect: %s\n", qd_error_text(&err));
        return 1;
    }
    char a[32], b[32];
    printf("model: %s\n", dir);
    printf("architecture: %s (model_type %s)\n", cfg.architecture, cfg.model_type);
    printf("  hidden_size %d, intermediate_size %d, layers %d\n", cfg.hidden_size,
           cfg.intermediate_size, cfg.num_hidden_layers);
    printf("  attention heads %d, key/value heads %d, head_dim %d\n", cfg.num_attention_heads,
           cfg.num_key_value_heads, cfg.head_dim);
    printf("  vocab_size %d, max_position_embeddings %d\n", cfg.vocab_size,
           cfg.max_position_embeddings);
    printf("  rms_norm_eps %g, rope_theta %g, rope_scaling %s\n", cfg.rms_norm_eps,
           cfg.rope_theta,
           cfg.rope_scaling.type == QD_ROPE_LLAMA3   ? "llama3"
           : cfg.rope_scaling.type == QD_ROPE_LINEAR ? "linear"
                                                     : "none");
    printf("  tie_word_embeddings %s, torch_dtype %s\n", cfg.tie_word_embeddings ? "true" : "false",
           qd_dtype_torch_name(cfg.torch_dtype) ? qd_dtype_torch_name(cfg.torch_dtype) : "?");

    /* the format, when config.json has a quantization_config */
    qd_artifact_info info;
    memset(&info, 0, sizeof info);
    bool quantized = false;
    qd_error ferr = {0};
    if (qd_artifact_detect(dir, &info, &ferr) != QD_OK) {
        quantized = true;
        printf("format: not one quantd reads: %s\n", qd_error_text(&ferr));
    } else if (info.format) {
        quantized = true;
        print_format(&info);
    }
    qd_artifact_info_done(&info);

    size_t n = qd_st_model_count(m);
    size_t shards = qd_st_model_shard_count(m);
    printf("files: %zu safetensors shard%s\n", shards, shards == 1 ? "" : "s");
    for (size_t s = 0; s < shards; s++) printf("  %s\n", qd_st_path(qd_st_model_shard(m, s)));

    const qd_st_entry **entries = calloc(n ? n : 1, sizeof *entries);
    if (!entries) {
        qd_st_model_close(m);
        fprintf(stderr, "quantd inspect: out of memory\n");
        return 1;
    }
    for (size_t i = 0; i < n; i++) entries[i] = qd_st_model_get(m, i);
    tensor_totals tot = {0};
    printf("\n");
    print_tensor_table(entries, n, &tot);

    long long expect = qd_llama_config_param_count(&cfg);
    if (quantized) {
        printf("\nelements: %s (packed; the float model has %s parameters)",
               group_digits(tot.params, a, sizeof a), group_digits(expect, b, sizeof b));
    } else {
        printf("\nparameters: %s", group_digits(tot.params, a, sizeof a));
        if (expect != tot.params)
            printf(" (config.json implies %s)", group_digits(expect, b, sizeof b));
    }
    printf("\ntensors: %zu, data: %s\n", n, human_bytes(tot.bytes, b, sizeof b));
    print_dtype_summary(&tot);
    free(entries);
    qd_st_model_close(m);
    return 0;
}

int qd_cmd_inspect(int argc, char **argv) {
    const char *path = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            inspect_usage(stdout);
            return 0;
        }
        if (argv[i][0] == '-') {
            fprintf(stderr, "quantd inspect: unknown option '%s'\n", argv[i]);
            inspect_usage(stderr);
            return 2;
        }
        if (path) {
            fprintf(stderr, "quantd inspect: more than one PATH given ('%s')\n", argv[i]);
            return 2;
        }
        path = argv[i];
    }
    if (!path) {
        inspect_usage(stderr);
        return 2;
    }
    if (qd_is_dir(path)) return inspect_model(path);
    if (qd_is_file(path)) return inspect_file(path);
    fprintf(stderr, "quantd inspect: %s: no such file or directory\n", path);
    return 1;
}
