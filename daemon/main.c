/*
 * main.c - the quantd binary: dispatch to a subcommand.
 *
 *   quantd inspect DIR|FILE       model architecture, parameters, tensor table
 *   quantd convert DIR -o OUT     rewrite a model's weights as f32/f16/bf16, optionally sharded
 *   quantd quantize DIR ...       quantize in process: quality report, artifact
 *   quantd eval DIR --data FILE   perplexity of a model on a token set
 *   quantd tokenize DIR ...       text -> input_ids safetensors
 *   quantd config check|dump      validate or print the daemon configuration
 *   quantd serve [--config FILE]  run the gRPC service
 */
#include <stdio.h>
#include <string.h>

#include "commands.h"

#ifndef QD_VERSION
#define QD_VERSION "0.0.0"
#endif

static const struct {
    const char *name;
    int (*fn)(int, char **);
    const char *summary;
} commands[] = {
    {"inspect", qd_cmd_inspect, "show a model's or artifact's architecture and tensors"},
    {"convert", qd_cmd_convert, "rewrite a model's weights in another dtype or shard count"},
    {"quantize", qd_cmd_quantize, "quantize a model in process, report its quality, write it"},
    {"eval", qd_cmd_eval, "measure perplexity on a token set"},
    {"tokenize", qd_cmd_tokenize, "encode a text file into an input_ids token set"},
    {"config", qd_cmd_config, "check or print the daemon configuration"},
    {"serve", qd_cmd_serve, "run the gRPC service (jobs, cache, uploads, downloads)"},
};

static void usage(FILE *out) {
    fprintf(out, "usage: quantd <command> [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(out, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(out, "\n'quantd <command> --help' describes each command.\n"
                 "'quantd --version' prints the version.\n");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "version") == 0) {
        printf("quantd %s\n", QD_VERSION);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(argv[1], commands[i].name) == 0) return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "quantd: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
