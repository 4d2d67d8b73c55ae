/*
 * test-eval.c - `quantd eval` (daemon/cmd_eval.c) run in-process: the perplexity line, row
 * subsets and batching, int64 token files, --help, usage errors (exit 2) and failures (exit 1)
 * with messages that name the problem.
 */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "commands.h"
#include "fsutil.h"
#include "model.h"
#include "rt-model.h"
#include "safetensors.h"
#include "test.h"

#define BABY QD_SOURCE_DIR "/examples/models/babyllama"
#define BABY_EVAL QD_SOURCE_DIR "/examples/data/babyllama/eval.safetensors"
#define STORIES QD_SOURCE_DIR "/examples/models/stories260k"
#define STORIES_EVAL QD_SOURCE_DIR "/examples/data/stories260k/eval.safetensors"

static char g_out[1 << 16], g_errtext[1 << 16];

static void slurp(const char *path, char *buf, size_t len) {
    char *text = NULL;
    size_t n = 0;
    buf[0] = '\0';
    if (qd_read_file(path, len - 1, &text, &n, NULL) == QD_OK) {
        memcpy(buf, text, n + 1);
        free(text);
    }
}

/* Run qd_cmd_eval with the given arguments; stdout and stderr land in g_out / g_errtext. */
static int run_eval(int argc, const char **args) {
    char *argv[32];
    argv[0] = "eval";
    for (int i = 0; i < argc && i < 30; i++) argv[i + 1] = (char *)args[i];
    argv[argc + 1] = NULL;
    fflush(stdout);
    fflush(stderr);
    int so = dup(1), se = dup(2);
    int fo = open("qd-rt-eval.out", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int fe = open("qd-rt-eval.err", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (so < 0 || se < 0 || fo < 0 || fe < 0) return -100;
    dup2(fo, 1);
    dup2(fe, 2);
    int rc = qd_cmd_eval(argc + 1, argv);
    fflush(stdout);
    fflush(stderr);
    dup2(so, 1);
    dup2(se, 2);
    close(so);
    close(se);
    close(fo);
    close(fe);
    slurp("qd-rt-eval.out", g_out, sizeof g_out);
    slurp("qd-rt-eval.err", g_errtext, sizeof g_errtext);
    unlink("qd-rt-eval.out");
    unlink("qd-rt-eval.err");
    return rc;
}

/* The value of the last stdout line, which must read "perplexity: <value>". */
static double last_perplexity(void) {
    size_t n = strlen(g_out);
    if (n == 0 || g_out[n - 1] != '\n') return -1;
    g_out[n - 1] = '\0';
    const char *line = strrchr(g_out, '\n');
    line = line ? line + 1 : g_out;
    double v = -1;
    char tail;
    if (sscanf(line, "perplexity: %lf%c", &v, &tail) != 1) v = -1;
    g_out[n - 1] = '\n';
    return v;
}

QD_TEST(babyllama_perplexity_line) {
    const char *a[] = {BABY, "--data", BABY_EVAL};
    QD_CHECK_EQ_INT(run_eval(3, a), 0);
    double ppl = last_perplexity();
    QD_CHECK_MSG(fabs(ppl - 6.8898) < 0.00005 * 6.8898, "stdout: %s", g_out);
    QD_CHECK_MSG(strstr(g_errtext, "row 32/32") != NULL, "stderr: %s", g_errtext);
}

QD_TEST(stories260k_perplexity_line) {
    const char *a[] = {STORIES, "--data", STORIES_EVAL, "--threads", "2"};
    QD_CHECK_EQ_INT(run_eval(5, a), 0);
    double ppl = last_perplexity();
    QD_CHECK_MSG(fabs(ppl - 31.3962) < 0.00005 * 31.3962, "stdout: %s", g_out);
}

QD_TEST(rows_and_batches) {
    const char *a[] = {BABY, "--data", BABY_EVAL, "--rows", "4", "--batch", "1"};
    QD_CHECK_EQ_INT(run_eval(7, a), 0);
    double ppl = last_perplexity();
    QD_CHECK(strstr(g_errtext, "row 1/4") && strstr(g_errtext, "row 4/4"));
    QD_CHECK(strstr(g_errtext, "row 5/") == NULL);
    /* the same four rows through the library in one batch */
    qd_error err = {0};
    qd_model *m = NULL;
    int32_t *tok = NULL;
    int64_t rows, len;
    QD_REQUIRE(qd_model_open(BABY, &m, &err) == QD_OK);
    QD_REQUIRE(rt_load_tokens(BABY_EVAL, &tok, &rows, &len, &err) == QD_OK);
    double nll[4];
    QD_CHECK_OK(qd_model_nll(m, tok, 4, len, NULL, nll, &err), &err);
    double want = exp((nll[0] + nll[1] + nll[2] + nll[3]) / (4.0 * (len - 1)));
    QD_CHECK_NEAR(ppl, want, 1e-5 * want);
    QD_CHECK(fabs(want - 6.8898) > 0.01); /* four rows are not the whole set */

    /* int64 token ids give the same answer as int32 */
    int64_t *t64 = malloc(sizeof(int64_t) * 4 * (size_t)len);
    QD_REQUIRE(t64);
    for (int64_t i = 0; i < 4 * len; i++) t64[i] = tok[i];
    qd_st_writer *w = qd_st_writer_new();
    int64_t shape[2] = {4, len};
    QD_CHECK_OK(qd_st_writer_add(w, "input_ids", QD_DTYPE_I64, 2, shape, t64, &err), &err);
    QD_CHECK_OK(qd_st_write_file(w, "qd-rt-eval-i64.safetensors", &err), &err);
    qd_st_writer_free(w);
    const char *b[] = {BABY, "--data", "qd-rt-eval-i64.safetensors", "--batch", "1"};
    QD_CHECK_EQ_INT(run_eval(5, b), 0);
    QD_CHECK_NEAR(last_perplexity(), ppl, 0);

    /* a token outside the vocabulary: exit 1 and the message names it */
    t64[len + 7] = 105;
    w = qd_st_writer_new();
    QD_CHECK_OK(qd_st_writer_add(w, "input_ids", QD_DTYPE_I64, 2, shape, t64, &err), &err);
    QD_CHECK_OK(qd_st_write_file(w, "qd-rt-eval-i64.safetensors", &err), &err);
    qd_st_writer_free(w);
    QD_CHECK_EQ_INT(run_eval(3, b), 1);
    QD_CHECK_MSG(strstr(g_errtext, "105") && strstr(g_errtext, "row 1") &&
                 strstr(g_errtext, "position 7"), "stderr: %s", g_errtext);
    QD_CHECK(strstr(g_out, "perplexity") == NULL);

    /* longer rows than the model has positions */
    int64_t *longer = calloc(2 * 300, sizeof *longer);
    int64_t lshape[2] = {2, 300};
    w = qd_st_writer_new();
    QD_CHECK_OK(qd_st_writer_add(w, "input_ids", QD_DTYPE_I64, 2, lshape, longer, &err), &err);
    QD_CHECK_OK(qd_st_write_file(w, "qd-rt-eval-i64.safetensors", &err), &err);
    qd_st_writer_free(w);
    QD_CHECK_EQ_INT(run_eval(3, b), 1);
    QD_CHECK_MSG(strstr(g_errtext, "300") && strstr(g_errtext, "max_position_embeddings"),
                 "stderr: %s", g_errtext);

    /* a file without input_ids */
    w = qd_st_writer_new();
    QD_CHECK_OK(qd_st_writer_add(w, "tokens", QD_DTYPE_I64, 2, lshape, longer, &err), &err);
    QD_CHECK_OK(qd_st_write_file(w, "qd-rt-eval-i64.safetensors", &err), &err);
    qd_st_writer_free(w);
    QD_CHECK_EQ_INT(run_eval(3, b), 1);
    QD_CHECK_MSG(strstr(g_errtext, "input_ids"), "stderr: %s", g_errtext);
    unlink("qd-rt-eval-i64.safetensors");
    free(longer);
    free(t64);
    free(tok);
    qd_model_free(m);
}

QD_TEST(help_and_usage_errors) {
    const char *h[] = {"--help"};
    QD_CHECK_EQ_INT(run_eval(1, h), 0);
    QD_CHECK(strstr(g_out, "--data") && strstr(g_out, "--rows") && strstr(g_out, "--threads") &&
             strstr(g_out, "perplexity"));

    const char *none[] = {BABY};
    QD_CHECK_EQ_INT(run_eval(1, none), 2); /* --data is required */
    const char *zero[] = {BABY, "--data", BABY_EVAL, "--rows", "0"};
    QD_CHECK_EQ_INT(run_eval(5, zero), 2);
    const char *junk[] = {BABY, "--data", BABY_EVAL, "--threads", "2x"};
    QD_CHECK_EQ_INT(run_eval(5, junk), 2);
    QD_CHECK(strstr(g_errtext, "2x") != NULL);
    const char *unknown[] = {BABY, "--data", BABY_EVAL, "--fast"};
    QD_CHECK_EQ_INT(run_eval(4, unknown), 2);
    const char *dangling[] = {BABY, "--data"};
    QD_CHECK_EQ_INT(run_eval(2, dangling), 2);

    const char *nodata[] = {BABY, "--data", "no-such-file.safetensors"};
    QD_CHECK_EQ_INT(run_eval(3, nodata), 1);
    QD_CHECK(strstr(g_errtext, "no-such-file.safetensors") != NULL);
    const char *nomodel[] = {"no-such-model", "--data", BABY_EVAL};
    QD_CHECK_EQ_INT(run_eval(3, nomodel), 1);
    QD_CHECK(strstr(g_errtext, "no-such-model") != NULL);
}

QD_TEST_MAIN()
