/*
 * synth-llama.c - command-line front end of the synthetic model writer (synth.h).
 *
 *   synth-llama -o DIR [--preset tiny|small|1b] [--hidden N] [--intermediate N] [--layers N]
 *               [--heads N] [--kv-heads N] [--head-dim N] [--vocab N] [--max-pos N]
 *               [--dtype f32|f16|bf16] [--seed N] [--shard-mib N] [--tie|--no-tie]
 *               [--qwen2] [--qkv-bias]
 *
 * Presets: tiny (a few thousand parameters, for tests), small (~10M), 1b (the shape of
 * Llama 3.2 1B: 16 layers, hidden 2048, GQA 32/8, vocab 128256, tied; ~1.24B parameters,
 * 2.5 GB in bf16). Options after --preset override it.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "synth.h"

static void usage(FILE *out) {
    fprintf(out,
            "usage: synth-llama -o DIR [--preset tiny|small|1b] [--hidden N]\n"
            "         [--intermediate N] [--layers N] [--heads N] [--kv-heads N]\n"
            "         [--head-dim N] [--vocab N] [--max-pos N] [--dtype f32|f16|bf16]\n"
            "         [--seed N] [--shard-mib N] [--tie|--no-tie] [--qwen2] [--qkv-bias]\n"
            "\n"
            "Writes a random Llama-family model (config.json + safetensors, sharded when\n"
            "--shard-mib is given) into DIR. The weights depend only on the seed and the\n"
            "shapes. Presets: tiny, small (~10M parameters), 1b (Llama 3.2 1B's shape).\n");
}

static int parse_u64(const char *s, const char *opt, unsigned long long max,
                     unsigned long long *ret) {
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || s[0] == '-' || v > max) {
        fprintf(stderr, "synth-llama: %s needs an integer in 0..%llu, not '%s'\n", opt, max, s);
        return -1;
    }
    *ret = v;
    return 0;
}

static void preset(qd_synth_spec *s, const char *name, int *ok) {
    *ok = 1;
    if (strcmp(name, "tiny") == 0) {
        *s = (qd_synth_spec){.hidden_size = 64, .intermediate_size = 160, .num_hidden_layers = 2,
                             .num_attention_heads = 4, .num_key_value_heads = 2, .head_dim = 16,
                             .vocab_size = 256, .max_position_embeddings = 128,
                             .tie_word_embeddings = true, .dtype = s->dtype, .seed = s->seed};
    } else if (strcmp(name, "small") == 0) {
        *s = (qd_synth_spec){.hidden_size = 512, .intermediate_size = 1408,
                             .num_hidden_layers = 4, .num_attention_heads = 8,
                             .num_key_value_heads = 4, .head_dim = 64, .vocab_size = 8000,
                             .max_position_embeddings = 2048, .tie_word_embeddings = true,
                             .dtype = s->dtype, .seed = s->seed};
    } else if (strcmp(name, "1b") == 0) {
        *s = (qd_synth_spec){.hidden_size = 2048, .intermediate_size = 8192,
                             .num_hidden_layers = 16, .num_attention_heads = 32,
                             .num_key_value_heads = 8, .head_dim = 64, .vocab_size = 128256,
                             .max_position_embeddings = 131072, .rope_theta = 500000.0,
                             .tie_word_embeddings = true, .dtype = s->dtype, .seed = s->seed};
    } else {
        *ok = 0;
    }
}

int main(int argc, char **argv) {
    qd_synth_spec s = {0};
    s.dtype = QD_DTYPE_BF16;
    int ok;
    preset(&s, "tiny", &ok);
    const char *out = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        unsigned long long n = 0;
        int *field = NULL;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "--tie") == 0) {
            s.tie_word_embeddings = true;
            continue;
        } else if (strcmp(a, "--no-tie") == 0) {
            s.tie_word_embeddings = false;
            continue;
        } else if (strcmp(a, "--qwen2") == 0) {
            s.architecture = "Qwen2ForCausalLM";
            continue;
        } else if (strcmp(a, "--qkv-bias") == 0) {
            s.qkv_bias = true;
            continue;
        }
        if (!v) {
            fprintf(stderr, "synth-llama: %s needs a value\n", a);
            return 2;
        }
        i++;
        if (strcmp(a, "-o") == 0) {
            out = v;
        } else if (strcmp(a, "--preset") == 0) {
            preset(&s, v, &ok);
            if (!ok) {
                fprintf(stderr, "synth-llama: unknown preset '%s'\n", v);
                return 2;
            }
        } else if (strcmp(a, "--dtype") == 0) {
            if (strcmp(v, "f32") == 0) s.dtype = QD_DTYPE_F32;
            else if (strcmp(v, "f16") == 0) s.dtype = QD_DTYPE_F16;
            else if (strcmp(v, "bf16") == 0) s.dtype = QD_DTYPE_BF16;
            else {
                fprintf(stderr, "synth-llama: --dtype f32, f16 or bf16, not '%s'\n", v);
                return 2;
            }
        } else if (strcmp(a, "--seed") == 0) {
            if (parse_u64(v, a, ULLONG_MAX, &n)) return 2;
            s.seed = n;
        } else if (strcmp(a, "--shard-mib") == 0) {
            if (parse_u64(v, a, 1ull << 30, &n)) return 2;
            s.max_shard_bytes = n << 20;
        } else {
            if (strcmp(a, "--hidden") == 0) field = &s.hidden_size;
            else if (strcmp(a, "--intermediate") == 0) field = &s.intermediate_size;
            else if (strcmp(a, "--layers") == 0) field = &s.num_hidden_layers;
            else if (strcmp(a, "--heads") == 0) field = &s.num_attention_heads;
            else if (strcmp(a, "--kv-heads") == 0) field = &s.num_key_value_heads;
            else if (strcmp(a, "--head-dim") == 0) field = &s.head_dim;
            else if (strcmp(a, "--vocab") == 0) field = &s.vocab_size;
            else if (strcmp(a, "--max-pos") == 0) field = &s.max_position_embeddings;
            if (!field) {
                fprintf(stderr, "synth-llama: unknown option '%s'\n", a);
                usage(stderr);
                return 2;
            }
            if (parse_u64(v, a, INT_MAX, &n)) return 2;
            *field = (int)n;
        }
    }
    if (!out) {
        usage(stderr);
        return 2;
    }
    qd_error err = {0};
    int64_t params = qd_synth_param_count(&s);
    fprintf(stderr, "synth-llama: writing %" PRId64 " parameters (%s) to %s\n", params,
            qd_dtype_name(s.dtype), out);
    if (qd_synth_write(out, &s, &err) != QD_OK) {
        fprintf(stderr, "synth-llama: %s\n", qd_error_text(&err));
        return 1;
    }
    return 0;
}
