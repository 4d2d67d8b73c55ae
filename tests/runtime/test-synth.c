/*
 * test-synth.c - the synthetic model writer: what it writes loads, validates and runs; the
 * weights depend on the seed only (not on sharding); each dtype and architecture variant
 * (Qwen2 q/k/v biases, untied lm_head) goes through the runtime.
 */
#include <stdlib.h>
#include <string.h>

#include "dtype.h"
#include "fsutil.h"
#include "model.h"
#include "rt-model.h"
#include "rt-util.h"
#include "safetensors.h"
#include "synth.h"
#include "test.h"

static qd_synth_spec tiny_spec(qd_dtype dt, uint64_t seed) {
    qd_synth_spec s = {.hidden_size = 48, .intermediate_size = 80, .num_hidden_layers = 3,
                       .num_attention_heads = 6, .num_key_value_heads = 2, .head_dim = 8,
                       .vocab_size = 200, .max_position_embeddings = 40,
                       .tie_word_embeddings = true, .dtype = dt, .seed = seed};
    return s;
}

static void random_tokens(int32_t *t, int64_t n, int vocab, uint64_t seed) {
    for (int64_t i = 0; i < n; i++) t[i] = (int32_t)(rt_next(&seed) % (uint64_t)vocab);
}

/* Write spec into a fresh directory and return the logits of tokens [rows, len]. */
static float *synth_logits(const qd_synth_spec *s, const int32_t *tok, int64_t rows,
                           int64_t len, const qd_run_opts *o, int *n_files) {
    qd_error err = {0};
    char dir[64];
    float *lg = NULL;
    qd_model *m = NULL;
    if (rt_make_tmpdir("synth", dir, sizeof dir, &err) || qd_synth_write(dir, s, &err) ||
        qd_model_open(dir, &m, &err)) {
        fprintf(stderr, "synth: %s\n", qd_error_text(&err));
        goto done;
    }
    if (n_files) *n_files = (int)qd_st_model_shard_count(qd_model_weights(m));
    lg = malloc(sizeof(float) * (size_t)(rows * len * s->vocab_size));
    if (lg && qd_model_logits(m, tok, rows, len, o, lg, &err)) {
        fprintf(stderr, "synth logits: %s\n", qd_error_text(&err));
        free(lg);
        lg = NULL;
    }
done:
    qd_model_free(m);
    qd_remove_tree(dir, NULL);
    return lg;
}

QD_TEST(written_model_loads_and_runs) {
    enum { ROWS = 3, LEN = 40 };
    qd_synth_spec s = tiny_spec(QD_DTYPE_BF16, 7);
    qd_error err = {0};
    char dir[64];
    QD_REQUIRE(rt_make_tmpdir("synth", dir, sizeof dir, &err) == QD_OK);
    QD_CHECK_OK(qd_synth_write(dir, &s, &err), &err);
    qd_model *m = NULL;
    QD_CHECK_OK(qd_model_open(dir, &m, &err), &err);
    QD_REQUIRE(m);
    const qd_llama_config *c = qd_model_config(m);
    QD_CHECK_EQ_INT(c->hidden_size, 48);
    QD_CHECK_EQ_INT(c->num_key_value_heads, 2);
    QD_CHECK_EQ_INT(c->head_dim, 8);
    QD_CHECK(c->tie_word_embeddings);
    QD_CHECK_EQ_INT(c->torch_dtype, QD_DTYPE_BF16);
    const qd_st_model *st = qd_model_weights(m);
    /* embeddings, 3 x (2 norms + 7 linears), final norm; tied: no lm_head */
    QD_CHECK_EQ_INT(qd_st_model_count(st), 1 + 3 * 9 + 1);
    QD_CHECK(qd_st_model_find(st, "lm_head.weight") == NULL);
    QD_CHECK_EQ_INT(qd_synth_param_count(&s), 200 * 48 + 3 * (2 * 48 + 48 * 48 + 2 * 16 * 48 +
                                                              48 * 48 + 3 * 48 * 80) + 48);

    /* the values follow the documented ranges */
    const qd_st_entry *q = qd_st_model_find(st, "model.layers.1.self_attn.q_proj.weight");
    const qd_st_entry *n = qd_st_model_find(st, "model.layers.2.input_layernorm.weight");
    QD_REQUIRE(q && n && q->dtype == QD_DTYPE_BF16);
    float qv[48 * 48], nv[48];
    QD_CHECK_OK(qd_convert(QD_DTYPE_F32, qv, q->dtype, q->data, 48 * 48, &err), &err);
    QD_CHECK_OK(qd_convert(QD_DTYPE_F32, nv, n->dtype, n->data, 48, &err), &err);
    double lim = sqrt(3.0 / 48) * 1.01, ss = 0;
    for (int i = 0; i < 48 * 48; i++) {
        QD_CHECK(fabsf(qv[i]) <= lim);
        ss += (double)qv[i] * qv[i];
    }
    QD_CHECK_NEAR(sqrt(ss / (48 * 48)), 1.0 / sqrt(48.0), 0.1 / sqrt(48.0));
    for (int i = 0; i < 48; i++) QD_CHECK(nv[i] >= 0.89f && nv[i] <= 1.11f);

    /* it runs: a random model predicts about uniformly, perplexity near the vocabulary */
    int32_t tok[ROWS * LEN];
    random_tokens(tok, ROWS * LEN, 200, 3);
    double nll[ROWS];
    QD_CHECK_OK(qd_model_nll(m, tok, ROWS, LEN, NULL, nll, &err), &err);
    double ppl = exp((nll[0] + nll[1] + nll[2]) / (ROWS * (LEN - 1)));
    QD_CHECK_MSG(ppl > 100 && ppl < 400, "random model perplexity %g", ppl);
    qd_model_free(m);
    qd_remove_tree(dir, NULL);
}

QD_TEST(weights_depend_on_seed_not_sharding) {
    enum { ROWS = 2, LEN = 24 };
    int32_t tok[ROWS * LEN];
    random_tokens(tok, ROWS * LEN, 200, 4);
    int64_t nlog = ROWS * LEN * 200;
    qd_synth_spec one = tiny_spec(QD_DTYPE_F32, 42);
    qd_synth_spec many = one;
    many.max_shard_bytes = 20000; /* several shards */
    qd_synth_spec other = one;
    other.seed = 43;
    int f1 = 0, fm = 0;
    float *a = synth_logits(&one, tok, ROWS, LEN, NULL, &f1);
    float *b = synth_logits(&many, tok, ROWS, LEN, NULL, &fm);
    float *c = synth_logits(&other, tok, ROWS, LEN, NULL, NULL);
    QD_REQUIRE(a && b && c);
    QD_CHECK_EQ_INT(f1, 1);
    QD_CHECK_MSG(fm > 3, "%d shards", fm);
    QD_CHECK(memcmp(a, b, sizeof(float) * (size_t)nlog) == 0);
    QD_CHECK(rt_max_abs_diff(a, c, nlog) > 1e-3);
    free(a);
    free(b);
    free(c);
}

QD_TEST(half_precision_synthetic_models_track_f32) {
    enum { ROWS = 2, LEN = 32 };
    int32_t tok[ROWS * LEN];
    random_tokens(tok, ROWS * LEN, 200, 5);
    int64_t nlog = ROWS * LEN * 200;
    qd_synth_spec f32 = tiny_spec(QD_DTYPE_F32, 9);
    qd_synth_spec bf = f32, h = f32;
    bf.dtype = QD_DTYPE_BF16;
    h.dtype = QD_DTYPE_F16;
    float *a = synth_logits(&f32, tok, ROWS, LEN, NULL, NULL);
    float *b = synth_logits(&bf, tok, ROWS, LEN, NULL, NULL);
    float *c = synth_logits(&h, tok, ROWS, LEN, NULL, NULL);
    QD_REQUIRE(a && b && c);
    double scale = rt_max_abs(a, nlog);
    /* bf16 keeps 8 mantissa bits, f16 11: the logits move by well under 5% resp. 1% of
     * their range, and not by zero */
    double db = rt_max_abs_diff(a, b, nlog), dh = rt_max_abs_diff(a, c, nlog);
    QD_CHECK_MSG(db > 0 && db < 0.05 * scale, "bf16: %g of %g", db, scale);
    QD_CHECK_MSG(dh > 0 && dh < 0.01 * scale && dh < db, "f16: %g of %g", dh, scale);
    free(a);
    free(b);
    free(c);
}

/* Hook for the Qwen2 test: checks which biases exist, and can zero the q/k/v ones. */
struct bias_probe {
    int zero, qkv_seen, o_seen;
};

static qd_err probe_biases(void *ctx, qd_layer_weights *w, qd_error *err) {
    struct bias_probe *p = ctx;
    qd_linear_kind qkv[3] = {QD_LINEAR_Q, QD_LINEAR_K, QD_LINEAR_V};
    for (int i = 0; i < 3; i++) {
        if (!w->b[qkv[i]]) continue;
        p->qkv_seen++;
        if (p->zero) memset(w->b[qkv[i]], 0, sizeof(float) * (size_t)w->n_out[qkv[i]]);
    }
    p->o_seen += w->b[QD_LINEAR_O] != NULL;
    return QD_OK;
}

QD_TEST(qwen2_biases_and_untied_head) {
    enum { ROWS = 1, LEN = 16 };
    int32_t tok[ROWS * LEN];
    random_tokens(tok, ROWS * LEN, 200, 6);
    int64_t nlog = ROWS * LEN * 200;
    qd_synth_spec s = tiny_spec(QD_DTYPE_BF16, 11);
    s.architecture = "Qwen2ForCausalLM";
    s.tie_word_embeddings = false;
    struct bias_probe keep = {0, 0, 0}, zero = {1, 0, 0};
    qd_run_opts ok = {.on_weights = probe_biases, .hook_ctx = &keep};
    qd_run_opts oz = {.on_weights = probe_biases, .hook_ctx = &zero};
    float *a = synth_logits(&s, tok, ROWS, LEN, &ok, NULL);
    float *b = synth_logits(&s, tok, ROWS, LEN, &oz, NULL);
    QD_REQUIRE(a && b);
    QD_CHECK_EQ_INT(keep.qkv_seen, 3 * 3);
    QD_CHECK_EQ_INT(keep.o_seen, 0);
    /* the biases are used: removing them changes the logits */
    QD_CHECK(rt_max_abs_diff(a, b, nlog) > 1e-4);
    free(a);
    free(b);

    /* Llama with attention_bias: q/k/v and o biases */
    qd_synth_spec l = tiny_spec(QD_DTYPE_F32, 12);
    l.qkv_bias = true;
    struct bias_probe lp = {0, 0, 0};
    qd_run_opts lo = {.on_weights = probe_biases, .hook_ctx = &lp};
    float *c = synth_logits(&l, tok, ROWS, LEN, &lo, NULL);
    QD_CHECK(c != NULL);
    QD_CHECK_EQ_INT(lp.qkv_seen, 9);
    QD_CHECK_EQ_INT(lp.o_seen, 3);
    free(c);
}

QD_TEST(impossible_specs_are_refused) {
    qd_error err = {0};
    qd_synth_spec s = tiny_spec(QD_DTYPE_F32, 1);
    s.num_key_value_heads = 4; /* 6 heads */
    QD_CHECK_EQ_INT(qd_synth_write("qd-rt-never", &s, &err), QD_ERR_INVALID_ARG);
    QD_CHECK(strstr(err.msg, "kv heads") != NULL);
    qd_error e2 = {0};
    s = tiny_spec(QD_DTYPE_I32, 1);
    QD_CHECK_EQ_INT(qd_synth_write("qd-rt-never", &s, &e2), QD_ERR_INVALID_ARG);
    QD_CHECK(!qd_is_dir("qd-rt-never"));
}

QD_TEST_MAIN()
