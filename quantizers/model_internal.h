/*
 * model_internal.h - the qd_model struct, shared by model.c, forward.c and calib.c only.
 */
#ifndef QD_MODEL_INTERNAL_H
#define QD_MODEL_INTERNAL_H

#include "model.h"
#include "ops.h"

/* The checked safetensors entries of one decoder layer (borrowed from the open shards). */
struct qd_model_layer {
    const qd_st_entry *attn_norm, *mlp_norm;
    const qd_st_entry *w[QD_LINEAR_COUNT]; /* NULL with QD_MODEL_OPEN_EXTERNAL_LINEARS */
    const qd_st_entry *b[QD_LINEAR_COUNT]; /* NULL: no bias */
};

struct qd_model {
    char *dir;
    unsigned flags;                /* QD_MODEL_OPEN_* */
    qd_llama_config cfg;
    qd_st_model *st;
    const qd_st_entry *embed;      /* [vocab, hidden] */
    const qd_st_entry *final_norm; /* [hidden] */
    const qd_st_entry *lm_head;    /* [vocab, hidden]; == embed when tied */
    struct qd_model_layer *layers; /* [num_hidden_layers] */
    qd_rope_spec rope;
    double *inv_freq;              /* [head_dim / 2] */
};

/* The forward pass's chunks (forward.c; model_dev.h's blocks use the same): attention over
 * whole sequences of about this many tokens, the MLP over this many tokens. */
#define QD_FWD_CHUNK_TOKENS 4096

/* Sequences per attention chunk: about QD_FWD_CHUNK_TOKENS tokens, at least one sequence. */
static inline int64_t qd_fwd_seqs_per_chunk(int64_t seq_len) {
    int64_t n = QD_FWD_CHUNK_TOKENS / (seq_len > 0 ? seq_len : 1);
    return n > 0 ? n : 1;
}

/* Convert rows [row0, row0 + n_rows) of a 2-d (or 1-d: one row) entry to fp32 in dst
 * ([n_rows, cols]). */
qd_err qd_model_rows_f32(const qd_st_entry *e, int64_t row0, int64_t n_rows, float *dst,
                         qd_error *err);

/* Drop the resident pages of a range of the read-only weight mapping (after its values were
 * copied): keeps the resident set at about one layer of a model larger than memory. */
void qd_model_release_pages(const void *data, size_t len);

/* qd_block_attention / qd_block_mlp where the output y may be NULL: then only the block's
 * inner activation (attn_out, resp. act) is computed, which must then not be NULL. */
qd_err qd_block_attention_ex(const qd_model *m, const qd_layer_weights *w, const float *xn,
                             int64_t n_seq, int64_t seq_len, float *y, float *attn_out,
                             const qd_run_opts *o, qd_error *err);
qd_err qd_block_mlp_ex(const qd_model *m, const qd_layer_weights *w, const float *xn,
                       int64_t n_tok, float *y, float *act, const qd_run_opts *o,
                       qd_error *err);

#endif /* QD_MODEL_INTERNAL_H */
