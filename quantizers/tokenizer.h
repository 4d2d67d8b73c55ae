/*
 * tokenizer.h - text <-> token ids for calibration and evaluation data.
 *
 * One opaque qd_tokenizer, several kinds behind it. Today there is one kind, the llama2.c
 * tokenizer.bin (sentencepiece-style BPE by merge score); a Hugging Face tokenizer.json BPE
 * can be added as another kind with its own ops table in tokenizer.c without changing this
 * interface.
 *
 * tokenizer.bin: u32 max_token_length, then for each of vocab_size tokens: f32 score,
 * i32 byte length, the bytes (no NUL). Everything little-endian. The file holds no count:
 * vocab_size comes from the model's config.json, and the file must end exactly after the
 * last token. Ids 0, 1, 2 are <unk>, BOS and EOS.
 *
 * Encoding (llama2.c's encode): optional BOS; a dummy-prefix space in front of non-empty text;
 * the text split into UTF-8 code points, each looked up as a piece; a code point that is not a
 * piece becomes its bytes as byte-fallback tokens (id = byte + 3) when ids 3..258 are the
 * pieces "<0x00>".."<0xFF>", and is dropped otherwise; then, repeatedly, the adjacent pair
 * whose concatenation is a piece with the highest score is merged (ties: leftmost) until no
 * pair merges. Decoding concatenates pieces, turns "<0xNN>" into the byte, emits nothing for
 * BOS/EOS and drops the leading space of the piece right after a BOS.
 *
 * Data sets: qd_tokenizer_encode_text() encodes a whole text file paragraph by paragraph, and
 * qd_token_windows() cuts the ids into the BOS-led rows of an input_ids set (see below).
 */
#ifndef QD_TOKENIZER_H
#define QD_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

typedef enum qd_tokenizer_kind {
    QD_TOKENIZER_LLAMA2C = 0, /* tokenizer.bin of llama2.c */
    QD_TOKENIZER_KIND_COUNT
} qd_tokenizer_kind;

typedef struct qd_tokenizer qd_tokenizer;

/* Tokenizer files above this size are refused (QD_ERR_TOO_LARGE). */
#define QD_TOKENIZER_MAX_FILE (256u << 20)

/* Load the tokenizer of a model directory: model_dir/tokenizer.bin with vocab_size tokens
 * (the model's config.json vocab_size). A directory without one is QD_ERR_NOT_FOUND (naming
 * what was looked for); one with only a tokenizer.json is QD_ERR_UNSUPPORTED for now.
 * Caller frees *out with qd_tokenizer_free(). */
qd_err qd_tokenizer_load(const char *model_dir, int vocab_size, qd_tokenizer **out,
                         qd_error *err);
/* Load a tokenizer.bin file by path. */
qd_err qd_tokenizer_load_llama2c(const char *path, int vocab_size, qd_tokenizer **out,
                                 qd_error *err);
/* Parse tokenizer.bin bytes (copied; buf may be freed afterwards). label names it in errors.
 * Reading past the end, a length < 0 or > max_token_length, a non-finite score and bytes
 * left after the last token are QD_ERR_FORMAT naming the token index. */
qd_err qd_tokenizer_parse_llama2c(const void *buf, size_t len, int vocab_size,
                                  const char *label, qd_tokenizer **out, qd_error *err);
void qd_tokenizer_free(qd_tokenizer *t); /* accepts NULL */

qd_tokenizer_kind qd_tokenizer_get_kind(const qd_tokenizer *t);
int qd_tokenizer_vocab_size(const qd_tokenizer *t);
int32_t qd_tokenizer_bos_id(const qd_tokenizer *t);
int32_t qd_tokenizer_eos_id(const qd_tokenizer *t);
/* Whether unknown characters become byte tokens (true) or are dropped (false). */
bool qd_tokenizer_has_byte_fallback(const qd_tokenizer *t);
/* The raw bytes of piece id (borrowed, NUL-terminated, *len without the NUL); NULL when id is
 * out of range. */
const char *qd_tokenizer_piece(const qd_tokenizer *t, int32_t id, size_t *len);
/* Lowest id whose piece is exactly these bytes, or -1. */
int32_t qd_tokenizer_find(const qd_tokenizer *t, const char *piece, size_t len);

/* Encode len bytes of text (need not be NUL-terminated; NUL bytes are ordinary characters).
 * *ids is malloc'd (caller frees; NULL when *n is 0). */
qd_err qd_tokenizer_encode(const qd_tokenizer *t, const char *text, size_t len, bool bos,
                           int32_t **ids, size_t *n, qd_error *err);
/* Decode ids into malloc'd, NUL-terminated text (caller frees; *len without the NUL).
 * An id outside the vocabulary is QD_ERR_INVALID_ARG naming its position. */
qd_err qd_tokenizer_decode(const qd_tokenizer *t, const int32_t *ids, size_t n, char **text,
                           size_t *len, qd_error *err);

/* Encode a text file the way quantd's token sets are made: paragraphs are separated by blank
 * lines (lines holding only whitespace); inside a paragraph every run of ASCII whitespace
 * becomes one space and leading/trailing whitespace goes; a UTF-8 byte-order mark at the
 * start is skipped. Each paragraph is encoded without BOS (so each gets its dummy-prefix
 * space) and the ids are concatenated. *ids is malloc'd (caller frees). */
qd_err qd_tokenizer_encode_text(const qd_tokenizer *t, const char *text, size_t len,
                                int32_t **ids, size_t *n, qd_error *err);

/* Cut running-text ids into rows of an input_ids set:
 *   out: (rows, seq_len) row-major int32; out[r][0] = bos, out[r][1..] = ids[s_r .. s_r+W-1]
 *   W = seq_len - 1, s_r = floor(r * (n - W) / (rows - 1)) (s_0 = 0 when rows is 1).
 * So windows are consecutive when n == rows * W and evenly spaced over the whole text, the
 * last one ending at the last id, when n is larger. rows >= 1 and seq_len >= 2 are
 * QD_ERR_INVALID_ARG otherwise; n < rows * W is QD_ERR_INVALID_ARG saying how many rows the
 * text gives. */
qd_err qd_token_windows(const int32_t *ids, size_t n, int rows, int seq_len, int32_t bos,
                        int32_t *out, qd_error *err);

/* Read the input_ids of a token-set file (safetensors, I32 or I64 [rows, seq_len]) into a new
 * row-major int32 array, cut to the first max_rows rows and max_len tokens of each (<= 0: all).
 * Errors name the path: no input_ids, a wrong dtype or shape (saying what was found), an id
 * outside int32 (naming its row and column). *ret is malloc'd (caller frees). */
qd_err qd_token_set_load(const char *path, int64_t max_rows, int64_t max_len, int32_t **ret,
                         int64_t *ret_rows, int64_t *ret_len, qd_error *err);

#endif /* QD_TOKENIZER_H */
