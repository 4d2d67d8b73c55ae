/*
 * artifact.c - write a job result as an engine-loadable model directory; recognise and read
 * such directories back (artifact.h).
 *
 * DESIGN
 * Writing is three passes over things that already exist. (1) Validation: the format's
 * check() on the spec and on every quantized linear's shape, the result against the model
 * (layer count, shapes, a weight or a float copy for every linear), the source config, and
 * the output path; nothing is created before these pass. (2) Packing: every linear is packed
 * into its own qd_packed_list (an excluded one into a list holding its float weight converted
 * to the source dtype), and the folded norms are converted likewise; all of it stays in memory
 * until the safetensors writer has written it, because the writer borrows data. (3) Writing:
 * the source's tensors are walked in their own order and each is either replaced (a linear's
 * weight by its packed tensors, a folded norm by its new values), dropped (a bias the format
 * already carries) or passed through as the source's mmap'd bytes, so the artifact keeps the
 * source's tensor order and dtypes. Then config.json (the source text with quantization_config
 * spliced in before the closing brace: re-serialising would rewrite every float of the source,
 * e.g. 1e-05 as 1.0000000000000001e-5), the side config and the other files. All of it goes
 * to "<out>.staging-<pid>", which is renamed to out_dir only when complete.
 *
 * Reading rebuilds qd_format_params from quantization_config (the inverse of what each
 * format's quantization_config() writes, accepting the aliases other writers use: w_bit,
 * q_group_size, GPTQModel's "format"), opens the model without its decoder linears, and
 * materialises each layer from the packed tensors in an on_weights hook.
 */
#include "artifact.h"

#include <dirent.h>
#include <errno.h>
#include <fnmatch.h>
#include <limits.h>
#include <math.h>
#include <regex.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "calib.h"
#include "dtype.h"
#include "fsutil.h"
#include "hf_config.h"
#include "safetensors.h"
#include "smoothquant.h"

#define LIN(layer, kind) ((size_t)(layer) * QD_LINEAR_COUNT + (size_t)(kind))
#define CONFIG_MAX_BYTES (64u << 20) /* config.json and side configs */
#define PATH_BUF 4096

/* snprintf for messages' "where" labels: a label cut short is still a label. */
static void label(char *buf, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void label(char *buf, size_t len, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, len, fmt, ap);
    va_end(ap);
}

static const char *const META_FORMAT = "quantd_format"; /* safetensors metadata key */

/* ---- small helpers --------------------------------------------------------------------------- */

static bool is_float_weight_dtype(qd_dtype t) {
    return t == QD_DTYPE_F32 || t == QD_DTYPE_F16 || t == QD_DTYPE_BF16;
}

/* [n_out, n_in] of linear k as the config implies (the runtime's own shapes). */
static void linear_shape(const qd_llama_config *c, qd_linear_kind k, int64_t ret[2]) {
    int64_t hid = c->hidden_size, inter = c->intermediate_size;
    int64_t qdim = (int64_t)c->num_attention_heads * c->head_dim;
    int64_t kvdim = (int64_t)c->num_key_value_heads * c->head_dim;
    switch (k) {
    case QD_LINEAR_Q: ret[0] = qdim, ret[1] = hid; break;
    case QD_LINEAR_K:
    case QD_LINEAR_V: ret[0] = kvdim, ret[1] = hid; break;
    case QD_LINEAR_O: ret[0] = hid, ret[1] = qdim; break;
    case QD_LINEAR_GATE:
    case QD_LINEAR_UP: ret[0] = inter, ret[1] = hid; break;
    default: ret[0] = hid, ret[1] = inter; break;
    }
}

/* The evaluation's activation quantization for a format's. */
static qd_act_quant act_mode_of(qd_format_act a) {
    switch (a) {
    case QD_FORMAT_ACT_INT8_TOKEN: return QD_ACT_QUANT_INT8_TOKEN;
    case QD_FORMAT_ACT_INT8_TENSOR: return QD_ACT_QUANT_INT8_TENSOR;
    case QD_FORMAT_ACT_FP8_TOKEN: return QD_ACT_QUANT_FP8_TOKEN;
    case QD_FORMAT_ACT_FP8_TENSOR: return QD_ACT_QUANT_FP8_TENSOR;
    default: return QD_ACT_QUANT_NONE;
    }
}

/* Append an owned tensor to a packed list (takes data over, also on failure). */
static qd_err list_append(qd_packed_list *l, const char *name, qd_dtype dt, int ndim,
                          const int64_t *shape, void *data, size_t nbytes, qd_error *err) {
    if (strlen(name) >= QD_PACKED_NAME_MAX) {
        free(data);
        return qd_error_set(err, QD_ERR_TOO_LARGE, "tensor name '%s' is too long", name);
    }
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 8;
        qd_packed_tensor *p = realloc(l->items, (size_t)cap * sizeof *p);
        if (!p) {
            free(data);
            return qd_error_set(err, QD_ERR_NOMEM, "%s: out of memory", name);
        }
        l->items = p;
        l->cap = cap;
    }
    qd_packed_tensor *t = &l->items[l->n++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->dtype = dt;
    t->ndim = ndim;
    for (int d = 0; d < ndim; d++) t->shape[d] = shape[d];
    t->data = data;
    t->nbytes = nbytes;
    return QD_OK;
}

/* A new buffer holding n fp32 values converted to dt. */
static qd_err convert_new(qd_dtype dt, const float *src, size_t n, void **ret, size_t *ret_bytes,
                          const char *what, qd_error *err) {
    size_t nb = n * qd_dtype_size(dt);
    void *buf = malloc(nb ? nb : 1);
    if (!buf) return qd_error_set(err, QD_ERR_NOMEM, "%s: out of memory", what);
    qd_err rc = qd_convert(dt, buf, QD_DTYPE_F32, src, n, err);
    if (rc) {
        free(buf);
        qd_error_prefix(err, "%s: ", what);
        return rc;
    }
    *ret = buf;
    *ret_bytes = nb;
    return QD_OK;
}

/* ---- spec -> format parameters --------------------------------------------------------------- */

qd_err qd_artifact_format_params(const qd_spec *spec, qd_dtype model_dtype,
                                 const qd_format **ret_format, qd_format_params *ret_params,
                                 qd_error *err) {
    const char *name = NULL;
    switch (spec->format) {
    case QD_SPEC_FORMAT_AWQ: name = "awq"; break;
    case QD_SPEC_FORMAT_GPTQ: name = qd_spec_gptq_checkpoint_format(spec); break;
    case QD_SPEC_FORMAT_COMPRESSED_TENSORS: name = "compressed-tensors"; break;
    case QD_SPEC_FORMAT_MODELOPT: name = "modelopt"; break;
    case QD_SPEC_FORMAT_DASHINFER: name = "dashinfer"; break;
    case QD_SPEC_FORMAT_NONE:
        return qd_error_set(err, QD_ERR_INVALID_ARG, "--format none: an in-memory report "
                            "writes no artifact; give a format (awq, gptq, compressed-tensors, "
                            "modelopt, dashinfer)");
    default:
        return qd_error_set(err, QD_ERR_INVALID_ARG, "--format: not set");
    }
    const qd_format *f = qd_format_find(name);
    if (!f) return qd_error_set(err, QD_ERR_INTERNAL, "format '%s' is not registered", name);
    if (!is_float_weight_dtype(model_dtype))
        return qd_error_set(err, QD_ERR_INVALID_ARG, "model dtype %s: expected F32, F16 or "
                            "BF16", qd_dtype_name(model_dtype) ? qd_dtype_name(model_dtype)
                                                               : "?");

    qd_format_params p;
    qd_format_params_init(&p);
    p.dtype = model_dtype;
    switch (spec->method) {
    case QD_SPEC_METHOD_FP8:
        p.type = QD_QTYPE_FP8_E4M3;
        p.bits = 8;
        p.group_size = -1;
        p.symmetric = true;
        p.weight_per_tensor = spec->fp8.weight_scale == QD_SPEC_FP8_WEIGHT_SCALE_TENSOR;
        p.act = spec->fp8.activation_scheme == QD_SPEC_FP8_ACTIVATION_STATIC
                    ? QD_FORMAT_ACT_FP8_TENSOR
                    : QD_FORMAT_ACT_FP8_TOKEN;
        break;
    case QD_SPEC_METHOD_SMOOTHQUANT:
    case QD_SPEC_METHOD_W4A8_AWQ:
    case QD_SPEC_METHOD_RTN:
    case QD_SPEC_METHOD_AWQ:
    case QD_SPEC_METHOD_GPTQ:
        p.type = QD_QTYPE_INT;
        p.bits = (int)spec->bits;
        p.group_size = spec->group_size > 0 ? spec->group_size : -1;
        p.symmetric = spec->symmetric != QD_SPEC_FALSE;
        if (spec->method == QD_SPEC_METHOD_SMOOTHQUANT)
            p.act = spec->format == QD_SPEC_FORMAT_MODELOPT ? QD_FORMAT_ACT_INT8_TENSOR
                                                            : QD_FORMAT_ACT_INT8_TOKEN;
        else if (spec->method == QD_SPEC_METHOD_W4A8_AWQ)
            p.act = QD_FORMAT_ACT_FP8_TENSOR;
        if (spec->method == QD_SPEC_METHOD_GPTQ) {
            p.act_order = spec->gptq.act_order;
            p.static_groups = spec->gptq.act_order && spec->gptq.static_groups;
            if (spec->gptq.damp_percent > 0) p.damp_percent = spec->gptq.damp_percent;
            p.true_sequential = spec->gptq.true_sequential != QD_SPEC_FALSE;
        }
        break;
    default:
        return qd_error_set(err, QD_ERR_INVALID_ARG, "--method: not set");
    }

    size_t n = spec->n_modules_to_not_convert + 1;
    if (n > QD_FORMAT_MAX_IGNORE)
        return qd_error_set(err, QD_ERR_TOO_LARGE, "modules_to_not_convert: %zu entries (at "
                            "most %d)", n - 1, QD_FORMAT_MAX_IGNORE - 1);
    const char **ignore = malloc(n * sizeof *ignore);
    if (!ignore) return qd_error_set(err, QD_ERR_NOMEM, "ignore list: out of memory");
    int ni = 0;
    bool has_head = false;
    for (size_t i = 0; i < spec->n_modules_to_not_convert; i++) {
        const char *mname = spec->modules_to_not_convert[i];
        if (!mname) continue;
        if (strcmp(mname, "lm_head") == 0) has_head = true;
        ignore[ni++] = mname;
    }
    /* the output projection is never quantized: say so, as the reference exporters do */
    if (!has_head) ignore[ni++] = "lm_head";
    p.ignore = ignore;
    p.n_ignore = ni;
    *ret_format = f;
    *ret_params = p;
    return QD_OK;
}

void qd_artifact_params_done(qd_format_params *p) {
    if (!p) return;
    free((void *)p->ignore);
    memset(p, 0, sizeof *p);
}

/* ---- writing: tensor names of the source ----------------------------------------------------- */

typedef enum src_role {
    SRC_OTHER = 0,  /* copied as it is */
    SRC_LINEAR,     /* "model.layers.N.<block>.<linear>.<rest>": *ret_kind, *ret_rest */
    SRC_ATTN_NORM,  /* model.layers.N.input_layernorm.weight */
    SRC_MLP_NORM,   /* model.layers.N.post_attention_layernorm.weight */
} src_role;

/* Classify a tensor name of a layer l < n_layers; rest points after the module path's '.'. */
static src_role classify(const char *name, int n_layers, int *ret_layer, qd_linear_kind *ret_kind,
                         const char **ret_rest) {
    static const char pre[] = "model.layers.";
    if (strncmp(name, pre, sizeof pre - 1) != 0) return SRC_OTHER;
    const char *p = name + sizeof pre - 1;
    if (*p < '0' || *p > '9' || (*p == '0' && p[1] >= '0' && p[1] <= '9')) return SRC_OTHER;
    long layer = 0;
    while (*p >= '0' && *p <= '9') {
        layer = layer * 10 + (*p++ - '0');
        if (layer >= n_layers) return SRC_OTHER;
    }
    if (*p++ != '.') return SRC_OTHER;
    *ret_layer = (int)layer;
    if (strcmp(p, "input_layernorm.weight") == 0) return SRC_ATTN_NORM;
    if (strcmp(p, "post_attention_layernorm.weight") == 0) return SRC_MLP_NORM;
    for (int k = 0; k < QD_LINEAR_COUNT; k++) {
        const char *block = k <= QD_LINEAR_O ? "self_attn." : "mlp.";
        size_t lb = strlen(block), ll = strlen(qd_linear_name((qd_linear_kind)k));
        if (strncmp(p, block, lb) == 0 && strncmp(p + lb, qd_linear_name((qd_linear_kind)k),
                                                  ll) == 0 && p[lb + ll] == '.') {
            *ret_kind = (qd_linear_kind)k;
            *ret_rest = p + lb + ll + 1;
            return SRC_LINEAR;
        }
    }
    return SRC_OTHER;
}

/* ---- writing: packing ------------------------------------------------------------------------ */

typedef struct packed_model {
    int n_layers;
    qd_packed_list *lin;   /* [n_layers * QD_LINEAR_COUNT]: each linear's tensors */
    qd_packed_list norms;  /* folded norms under their source names */
} packed_model;

static void packed_model_done(packed_model *pm) {
    if (pm->lin)
        for (size_t i = 0; i < (size_t)pm->n_layers * QD_LINEAR_COUNT; i++)
            qd_packed_list_free(&pm->lin[i]);
    free(pm->lin);
    qd_packed_list_free(&pm->norms);
    memset(pm, 0, sizeof *pm);
}

/* Validate r against m and the format, before anything is created. */
static qd_err validate_result(const qd_model *m, const qd_format *f, const qd_format_params *p,
                              const qd_job_result *r, qd_error *err) {
    const qd_llama_config *c = qd_model_config(m);
    if (!r->q || !r->keep || r->n_layers != c->num_hidden_layers || r->hidden != c->hidden_size)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "job result of %d layers x %lld hidden "
                            "does not belong to this model (%d x %d)", r->n_layers,
                            (long long)r->hidden, c->num_hidden_layers, c->hidden_size);
    qd_err rc = f->check(p, 0, 0, err);
    if (rc) return rc;
    if (act_mode_of(p->act) != r->act_mode)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "the job result quantizes activations "
                            "differently from what the spec's format stores (%s): was it "
                            "quantized with another spec?", qd_artifact_act_name(p->act));
    char path[128];
    for (int l = 0; l < r->n_layers; l++)
        for (int k = 0; k < QD_LINEAR_COUNT; k++) {
            const qd_qlinear *q = &r->q[LIN(l, k)];
            int64_t shape[2];
            linear_shape(c, (qd_linear_kind)k, shape);
            if ((rc = qd_linear_path(path, sizeof path, l, (qd_linear_kind)k, err))) return rc;
            if (q->codes) {
                if (q->n != shape[0] || q->k != shape[1])
                    return qd_error_set(err, QD_ERR_INVALID_ARG, "%s: quantized shape [%d, %d] "
                                        "but the model's is [%lld, %lld]", path, q->n, q->k,
                                        (long long)shape[0], (long long)shape[1]);
                if ((rc = f->check(p, q->n, q->k, err))) {
                    qd_error_prefix(err, "%s: ", path);
                    return rc;
                }
            } else if (!r->keep[LIN(l, k)]) {
                return qd_error_set(err, QD_ERR_INVALID_ARG, "%s: the job result holds neither "
                                    "a quantized nor a float weight", path);
            }
        }
    return QD_OK;
}

static qd_err pack_model(const qd_model *m, const qd_format *f, const qd_format_params *p,
                         const qd_job_result *r, packed_model *pm, qd_error *err) {
    const qd_llama_config *c = qd_model_config(m);
    const qd_st_model *st = qd_model_weights(m);
    pm->n_layers = r->n_layers;
    pm->lin = calloc((size_t)r->n_layers * QD_LINEAR_COUNT, sizeof *pm->lin);
    if (!pm->lin) return qd_error_set(err, QD_ERR_NOMEM, "packed tensors: out of memory");
    char path[128], name[192];
    qd_err rc = QD_OK;
    for (int l = 0; l < r->n_layers && !rc; l++) {
        for (int k = 0; k < QD_LINEAR_COUNT && !rc; k++) {
            const qd_qlinear *q = &r->q[LIN(l, k)];
            qd_packed_list *out = &pm->lin[LIN(l, k)];
            if ((rc = qd_linear_path(path, sizeof path, l, (qd_linear_kind)k, err))) break;
            if (q->codes) {
                rc = f->pack(p, q, path, out, err);
                continue;
            }
            /* kept in float: "<path>.weight" in the source's dtype */
            snprintf(name, sizeof name, "%s.weight", path);
            const qd_st_entry *e = qd_st_model_find(st, name);
            if (!e || !is_float_weight_dtype(e->dtype)) {
                rc = qd_error_set(err, QD_ERR_PRECONDITION, "source tensor '%s' is missing or "
                                  "not a float weight (was the model opened in full?)", name);
                break;
            }
            int64_t shape[2];
            linear_shape(c, (qd_linear_kind)k, shape);
            void *buf = NULL;
            size_t nb = 0;
            if ((rc = convert_new(e->dtype, r->keep[LIN(l, k)], (size_t)(shape[0] * shape[1]),
                                  &buf, &nb, name, err)))
                break;
            rc = list_append(out, name, e->dtype, 2, shape, buf, nb, err);
        }
        /* norms a method folded scales into, in the source norm's dtype */
        for (int which = 0; which < 2 && !rc; which++) {
            const float *v = which == 0 ? r->attn_norm : r->mlp_norm;
            if (!v) continue;
            snprintf(name, sizeof name, "model.layers.%d.%s.weight", l,
                     which == 0 ? "input_layernorm" : "post_attention_layernorm");
            const qd_st_entry *e = qd_st_model_find(st, name);
            if (!e || !is_float_weight_dtype(e->dtype)) {
                rc = qd_error_set(err, QD_ERR_PRECONDITION, "source tensor '%s' is missing or "
                                  "not a float weight", name);
                break;
            }
            void *buf = NULL;
            size_t nb = 0;
            int64_t hid = r->hidden;
            if ((rc = convert_new(e->dtype, v + (size_t)l * (size_t)hid, (size_t)hid, &buf, &nb,
                                  name, err)))
                break;
            rc = list_append(&pm->norms, name, e->dtype, 1, &hid, buf, nb, err);
        }
    }
    return rc;
}

static qd_err add_list(qd_st_writer *w, const qd_packed_list *l, qd_error *err) {
    for (int i = 0; i < l->n; i++) {
        const qd_packed_tensor *t = &l->items[i];
        qd_err rc = qd_st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data, err);
        if (rc) return rc;
    }
    return QD_OK;
}

/* Add every tensor of the artifact to w, in the source's order (see DESIGN). */
static qd_err add_tensors(qd_st_writer *w, const qd_model *m, const packed_model *pm,
                          qd_error *err) {
    const qd_st_model *st = qd_model_weights(m);
    bool *done = calloc((size_t)pm->n_layers * QD_LINEAR_COUNT, sizeof *done);
    if (!done) return qd_error_set(err, QD_ERR_NOMEM, "out of memory");
    qd_err rc = QD_OK;
    for (size_t i = 0; i < qd_st_model_count(st) && !rc; i++) {
        const qd_st_entry *e = qd_st_model_get(st, i);
        int layer;
        qd_linear_kind kind;
        const char *rest;
        src_role role = classify(e->name, pm->n_layers, &layer, &kind, &rest);
        if (role == SRC_LINEAR) {
            const qd_packed_list *l = &pm->lin[LIN(layer, kind)];
            if (strcmp(rest, "weight") == 0) {
                rc = add_list(w, l, err);
                done[LIN(layer, kind)] = true;
                continue;
            }
            if (qd_packed_list_find(l, e->name)) continue; /* the format carries it (bias) */
        } else if (role == SRC_ATTN_NORM || role == SRC_MLP_NORM) {
            const qd_packed_tensor *t = qd_packed_list_find(&pm->norms, e->name);
            if (t) {
                rc = qd_st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data, err);
                continue;
            }
        }
        rc = qd_st_writer_add(w, e->name, e->dtype, e->ndim, e->shape, e->data, err);
    }
    for (int l = 0; l < pm->n_layers && !rc; l++)
        for (int k = 0; k < QD_LINEAR_COUNT && !rc; k++)
            if (!done[LIN(l, k)]) {
                char path[128];
                qd_linear_path(path, sizeof path, l, (qd_linear_kind)k, NULL);
                rc = qd_error_set(err, QD_ERR_PRECONDITION, "source model has no '%s.weight'",
                                  path);
            }
    free(done);
    return rc;
}

/* ---- writing: files -------------------------------------------------------------------------- */

/* Dump j pretty-printed; with indent_extra, every line after the first is indented by it (to
 * nest the text inside an object). Caller frees. */
static char *dump_json(const json_t *j, const char *indent_extra) {
    char *s = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    if (!s || !indent_extra) return s;
    size_t lines = 0, li = strlen(indent_extra), n = strlen(s);
    for (size_t i = 0; i < n; i++) lines += s[i] == '\n';
    char *o = malloc(n + lines * li + 1);
    if (!o) {
        free(s);
        return NULL;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        o[k++] = s[i];
        if (s[i] == '\n') {
            memcpy(o + k, indent_extra, li);
            k += li;
        }
    }
    o[k] = '\0';
    free(s);
    return o;
}

/* Read and parse dir/config.json: *ret_text (caller frees) and *ret_root (caller decrefs). */
static qd_err load_config(const char *dir, char **ret_text, size_t *ret_len, json_t **ret_root,
                          qd_error *err) {
    char path[PATH_BUF];
    qd_err rc = qd_path_join(path, sizeof path, dir, "config.json", err);
    char *text = NULL;
    size_t len = 0;
    if (!rc) rc = qd_read_file(path, CONFIG_MAX_BYTES, &text, &len, err);
    if (rc) return rc;
    json_error_t je;
    json_t *root = json_loadb(text, len, 0, &je);
    if (!root) {
        rc = qd_error_set(err, QD_ERR_FORMAT, "%s: line %d: %s", path, je.line, je.text);
        free(text);
        return rc;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        free(text);
        return qd_error_set(err, QD_ERR_CONFIG, "%s: not a JSON object", path);
    }
    *ret_text = text;
    if (ret_len) *ret_len = len;
    *ret_root = root;
    return QD_OK;
}

/* The source config.json text with "quantization_config": qc spliced in before the final '}'. */
static qd_err write_config(const char *src_dir, const char *stage, const json_t *qc,
                           qd_error *err) {
    char *text, path[PATH_BUF];
    size_t len;
    json_t *root;
    qd_err rc = load_config(src_dir, &text, &len, &root, err);
    if (rc) return rc;
    bool empty = json_object_size(root) == 0;
    json_decref(root);
    size_t end = len;
    while (end > 0 && (text[end - 1] == ' ' || text[end - 1] == '\n' || text[end - 1] == '\r' ||
                       text[end - 1] == '\t'))
        end--;
    char *body = dump_json(qc, "  ");
    if (end == 0 || text[end - 1] != '}' || !body) {
        free(text);
        free(body);
        return qd_error_set(err, body ? QD_ERR_FORMAT : QD_ERR_NOMEM,
                            "%s/config.json: cannot add quantization_config", src_dir);
    }
    /* drop trailing whitespace before the brace too, so the new key follows the last one */
    size_t head = end - 1;
    while (head > 0 && (text[head - 1] == ' ' || text[head - 1] == '\n' ||
                        text[head - 1] == '\r' || text[head - 1] == '\t'))
        head--;
    static const char key[] = "  \"quantization_config\": ";
    size_t lb = strlen(body);
    size_t cap = head + 2 + sizeof key + lb + 4;
    char *out = malloc(cap);
    if (!out) {
        free(text);
        free(body);
        return qd_error_set(err, QD_ERR_NOMEM, "config.json: out of memory");
    }
    size_t o = 0;
    memcpy(out, text, head);
    o = head;
    if (!empty) out[o++] = ',';
    out[o++] = '\n';
    memcpy(out + o, key, sizeof key - 1);
    o += sizeof key - 1;
    memcpy(out + o, body, lb);
    o += lb;
    memcpy(out + o, "\n}\n", 3);
    o += 3;
    free(text);
    free(body);
    rc = qd_path_join(path, sizeof path, stage, "config.json", err);
    if (!rc) rc = qd_write_file_atomic(path, out, o, err);
    free(out);
    return rc;
}

static qd_err write_json_file(const char *stage, const char *name, const json_t *j,
                              qd_error *err) {
    char path[PATH_BUF];
    qd_err rc = qd_path_join(path, sizeof path, stage, name, err);
    if (rc) return rc;
    char *s = dump_json(j, NULL);
    if (!s) return qd_error_set(err, QD_ERR_NOMEM, "%s: out of memory", path);
    size_t n = strlen(s);
    char *buf = realloc(s, n + 2);
    if (!buf) {
        free(s);
        return qd_error_set(err, QD_ERR_NOMEM, "%s: out of memory", path);
    }
    buf[n] = '\n';
    rc = qd_write_file_atomic(path, buf, n + 1, err);
    free(buf);
    return rc;
}

static bool ends_with(const char *s, const char *suffix) {
    size_t ls = strlen(s), lx = strlen(suffix);
    return ls >= lx && strcmp(s + ls - lx, suffix) == 0;
}

/* Whether a file of the source directory is carried over unchanged: everything but the
 * weights (safetensors and their index, PyTorch/other checkpoints), config.json (rewritten),
 * the side config the format writes, and hidden or temporary files. */
static bool copy_unchanged(const char *name, const qd_format *f) {
    static const char *const weight_suffixes[] = {
        ".safetensors", ".safetensors.index.json", ".pt", ".pth", ".ckpt", ".gguf", ".h5",
        ".msgpack", ".onnx", ".tmp",
    };
    if (name[0] == '.' || strcmp(name, "config.json") == 0) return false;
    if (f->side_config_name && strcmp(name, f->side_config_name) == 0) return false;
    if (strncmp(name, "pytorch_model", 13) == 0 &&
        (ends_with(name, ".bin") || ends_with(name, ".bin.index.json")))
        return false;
    for (size_t i = 0; i < sizeof weight_suffixes / sizeof weight_suffixes[0]; i++)
        if (ends_with(name, weight_suffixes[i])) return false;
    return true;
}

static qd_err copy_other_files(const char *src_dir, const char *stage, const qd_format *f,
                               qd_error *err) {
    DIR *d = opendir(src_dir);
    if (!d) return qd_error_set(err, QD_ERR_IO, "%s: %s", src_dir, strerror(errno));
    qd_err rc = QD_OK;
    struct dirent *de;
    char src[PATH_BUF], dst[PATH_BUF];
    while (!rc && (de = readdir(d)) != NULL) {
        if (!copy_unchanged(de->d_name, f)) continue;
        if ((rc = qd_path_join(src, sizeof src, src_dir, de->d_name, err))) break;
        struct stat sb;
        /* stat, not lstat: Hugging Face cache snapshots are symlinks to blobs */
        if (stat(src, &sb) != 0 || !S_ISREG(sb.st_mode)) continue;
        if ((rc = qd_path_join(dst, sizeof dst, stage, de->d_name, err))) break;
        rc = qd_copy_file(src, dst, err);
    }
    closedir(d);
    return rc;
}

/* out_dir without trailing slashes into buf. */
static qd_err normalise_out(const char *out_dir, char *buf, size_t len, qd_error *err) {
    size_t n = strlen(out_dir);
    while (n > 1 && out_dir[n - 1] == '/') n--;
    if (n == 0 || n >= len)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "output directory '%s': %s", out_dir,
                            n == 0 ? "empty path" : "path too long");
    memcpy(buf, out_dir, n);
    buf[n] = '\0';
    if (strcmp(buf, "/") == 0 || strcmp(buf, ".") == 0 || strcmp(buf, "..") == 0)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "output directory '%s': give a new "
                            "directory's name", out_dir);
    return QD_OK;
}

static void parent_of(const char *path, char *buf, size_t len) {
    const char *slash = strrchr(path, '/');
    if (!slash) {
        snprintf(buf, len, ".");
    } else if (slash == path) {
        snprintf(buf, len, "/");
    } else {
        snprintf(buf, len, "%.*s", (int)(slash - path), path);
    }
}

static bool path_exists(const char *path) {
    struct stat sb;
    return lstat(path, &sb) == 0;
}

/* Build the artifact in stage (which exists and is empty). */
static qd_err build_stage(const char *src_dir, const qd_model *m, const qd_format *f,
                          const qd_format_params *p, const qd_job_result *r, const char *stage,
                          uint64_t max_shard_bytes, qd_error *err) {
    packed_model pm;
    memset(&pm, 0, sizeof pm);
    qd_st_writer *w = NULL;
    json_t *qc = NULL, *side = NULL;
    qd_err rc = pack_model(m, f, p, r, &pm, err);
    if (!rc && !(w = qd_st_writer_new())) rc = qd_error_set(err, QD_ERR_NOMEM, "out of memory");
    if (!rc) rc = qd_st_writer_set_metadata(w, "format", "pt", err);
    if (!rc) rc = qd_st_writer_set_metadata(w, META_FORMAT, f->name, err);
    if (!rc) rc = add_tensors(w, m, &pm, err);
    if (!rc) rc = qd_st_write_model(w, stage, max_shard_bytes, NULL, err);
    qd_st_writer_free(w);
    packed_model_done(&pm);
    if (!rc) rc = f->quantization_config(p, &qc, err);
    if (!rc) rc = write_config(src_dir, stage, qc, err);
    if (!rc && f->side_config_name && f->side_config) {
        rc = f->side_config(p, &side, err);
        if (!rc) rc = write_json_file(stage, f->side_config_name, side, err);
    }
    json_decref(qc);
    json_decref(side);
    if (!rc) rc = copy_other_files(src_dir, stage, f, err);
    if (!rc) rc = qd_fsync_dir(stage, err);
    return rc;
}

qd_err qd_artifact_write(const char *src_model_dir, const qd_model *m, const qd_spec *spec,
                         const qd_job_result *r, const char *out_dir, uint64_t max_shard_bytes,
                         qd_error *err) {
    if (!src_model_dir || !m || !spec || !r || !out_dir)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "artifact: NULL argument");
    char out[PATH_BUF], stage[PATH_BUF + 32], parent[PATH_BUF];
    qd_err rc = normalise_out(out_dir, out, sizeof out, err);
    if (rc) return rc;
    const qd_format *f;
    qd_format_params p;
    if ((rc = qd_artifact_format_params(spec, qd_model_config(m)->torch_dtype, &f, &p, err)))
        return rc;
    if ((rc = validate_result(m, f, &p, r, err))) goto done;

    /* the source must be a float model (an artifact's config.json is not a source's) */
    char *text;
    json_t *root;
    if ((rc = load_config(src_model_dir, &text, NULL, &root, err))) goto done;
    bool quantized = json_object_get(root, "quantization_config") != NULL;
    json_decref(root);
    free(text);
    if (quantized) {
        rc = qd_error_set(err, QD_ERR_UNSUPPORTED, "%s/config.json already has a "
                          "quantization_config: quantize a float model", src_model_dir);
        goto done;
    }
    if (path_exists(out)) {
        rc = qd_error_set(err, QD_ERR_EXISTS, "output directory %s already exists; quantd does "
                          "not overwrite artifacts", out);
        goto done;
    }

    snprintf(stage, sizeof stage, "%s.staging-%ld", out, (long)getpid());
    if ((rc = qd_remove_tree(stage, err))) goto done; /* a leftover of an earlier run */
    if ((rc = qd_mkdir_p(stage, 0755, err))) goto done;
    rc = build_stage(src_model_dir, m, f, &p, r, stage,
                     max_shard_bytes ? max_shard_bytes : QD_ARTIFACT_SHARD_BYTES, err);
    /* out_dir may have appeared meanwhile; rename() would replace an empty directory */
    if (!rc && path_exists(out))
        rc = qd_error_set(err, QD_ERR_EXISTS, "output directory %s appeared while the artifact "
                          "was written; left it alone", out);
    if (!rc && rename(stage, out) != 0)
        rc = qd_error_set(err, QD_ERR_IO, "%s: cannot rename to %s: %s", stage, out,
                          strerror(errno));
    if (rc) {
        qd_remove_tree(stage, NULL);
        qd_error_prefix(err, "writing %s: ", out);
        goto done;
    }
    parent_of(out, parent, sizeof parent);
    rc = qd_fsync_dir(parent, err);
done:
    qd_artifact_params_done(&p);
    return rc;
}

/* ---- recognising ----------------------------------------------------------------------------- */

typedef struct cfg_src {
    const char *where; /* "DIR/config.json quantization_config" */
    const json_t *o;
} cfg_src;

/* The value of the first present (non-null) key of keys[], or NULL. */
static const json_t *cfg_get(const cfg_src *s, const char *const *keys, const char **ret_key) {
    for (int i = 0; keys[i]; i++) {
        const json_t *v = json_object_get(s->o, keys[i]);
        if (v && !json_is_null(v)) {
            *ret_key = keys[i];
            return v;
        }
    }
    *ret_key = keys[0];
    return NULL;
}

static qd_err cfg_int(const cfg_src *s, const char *const *keys, bool required, long long dflt,
                      long long lo, long long hi, long long *ret, qd_error *err) {
    const char *key;
    const json_t *v = cfg_get(s, keys, &key);
    if (!v) {
        if (required)
            return qd_error_set(err, QD_ERR_CONFIG, "%s: key '%s' is missing", s->where, key);
        *ret = dflt;
        return QD_OK;
    }
    if (!json_is_integer(v))
        return qd_error_set(err, QD_ERR_CONFIG, "%s: '%s' must be an integer", s->where, key);
    long long x = json_integer_value(v);
    if (x < lo || x > hi)
        return qd_error_set(err, QD_ERR_CONFIG, "%s: '%s' = %lld is outside %lld..%lld",
                            s->where, key, x, lo, hi);
    *ret = x;
    return QD_OK;
}

static qd_err cfg_bool(const cfg_src *s, const char *const *keys, bool dflt, bool *ret,
                       qd_error *err) {
    const char *key;
    const json_t *v = cfg_get(s, keys, &key);
    if (!v) {
        *ret = dflt;
        return QD_OK;
    }
    if (!json_is_boolean(v))
        return qd_error_set(err, QD_ERR_CONFIG, "%s: '%s' must be true or false", s->where, key);
    *ret = json_is_true(v);
    return QD_OK;
}

static qd_err cfg_str(const cfg_src *s, const char *const *keys, bool required,
                      const char *dflt, const char **ret, qd_error *err) {
    const char *key;
    const json_t *v = cfg_get(s, keys, &key);
    if (!v) {
        if (required)
            return qd_error_set(err, QD_ERR_CONFIG, "%s: key '%s' is missing", s->where, key);
        *ret = dflt;
        return QD_OK;
    }
    if (!json_is_string(v))
        return qd_error_set(err, QD_ERR_CONFIG, "%s: '%s' must be a string", s->where, key);
    *ret = json_string_value(v);
    return QD_OK;
}

/* A list of module names (or null) into p->ignore (strings borrowed from the JSON). */
static qd_err cfg_ignore(const cfg_src *s, const char *key, qd_format_params *p,
                         qd_error *err) {
    const json_t *v = json_object_get(s->o, key);
    if (!v || json_is_null(v)) return QD_OK;
    if (!json_is_array(v))
        return qd_error_set(err, QD_ERR_CONFIG, "%s: '%s' must be a list of module names",
                            s->where, key);
    size_t n = json_array_size(v);
    if (n > QD_FORMAT_MAX_IGNORE)
        return qd_error_set(err, QD_ERR_TOO_LARGE, "%s: '%s' lists %zu modules (at most %d)",
                            s->where, key, n, QD_FORMAT_MAX_IGNORE);
    const char **names = malloc((n ? n : 1) * sizeof *names);
    if (!names) return qd_error_set(err, QD_ERR_NOMEM, "%s: out of memory", s->where);
    for (size_t i = 0; i < n; i++) {
        const json_t *e = json_array_get(v, i);
        if (!json_is_string(e)) {
            free(names);
            return qd_error_set(err, QD_ERR_CONFIG, "%s: '%s'[%zu] must be a string", s->where,
                                key, i);
        }
        names[i] = json_string_value(e);
    }
    free((void *)p->ignore);
    p->ignore = names;
    p->n_ignore = (int)n;
    return QD_OK;
}

#define KEYS(...) ((const char *const[]){__VA_ARGS__, NULL})

static qd_err parse_awq(const cfg_src *s, qd_format_params *p, const qd_format **ret,
                        qd_error *err) {
    const char *version;
    long long bits, group;
    bool zero_point = false;
    qd_err rc;
    if ((rc = cfg_str(s, KEYS("version"), false, "gemm", &version, err))) return rc;
    if (strcasecmp(version, "gemm") != 0)
        return qd_error_set(err, QD_ERR_UNSUPPORTED, "%s: awq version '%s': quantd reads "
                            "AutoAWQ's GEMM layout only", s->where, version);
    if ((rc = cfg_int(s, KEYS("bits", "w_bit"), true, 0, 1, 16, &bits, err)) ||
        (rc = cfg_int(s, KEYS("group_size", "q_group_size"), true, 0, -1, 1 << 20, &group,
                      err)) ||
        (rc = cfg_bool(s, KEYS("zero_point"), true, &zero_point, err)) ||
        (rc = cfg_ignore(s, "modules_to_not_convert", p, err)))
        return rc;
    if (group == 0)
        return qd_error_set(err, QD_ERR_CONFIG, "%s: group_size 0", s->where);
    p->type = QD_QTYPE_INT;
    p->bits = (int)bits;
    p->group_size = (int)group;
    p->symmetric = !zero_point;
    *ret = &qd_format_awq;
    return QD_OK;
}

/* "quantd_format" of the first shard's metadata, or NULL (copied into buf). */
static const char *shard_marker(const char *dir, char *buf, size_t len, qd_error *err,
                                qd_err *ret_rc) {
    qd_st_model *st = NULL;
    *ret_rc = qd_st_model_open(dir, &st, err);
    if (*ret_rc) return NULL;
    const char *v = NULL;
    if (qd_st_model_shard_count(st) > 0) v = qd_st_metadata(qd_st_model_shard(st, 0), META_FORMAT);
    if (v) snprintf(buf, len, "%s", v);
    qd_st_model_close(st);
    return v ? buf : NULL;
}

static qd_err parse_gptq(const char *dir, const cfg_src *s, qd_format_params *p,
                         const qd_format **ret, qd_error *err) {
    const char *cf;
    long long bits, group;
    bool sym = false, desc_act = false, static_groups = false, true_seq = false;
    qd_err rc;
    if ((rc = cfg_str(s, KEYS("checkpoint_format", "format"), false, "gptq", &cf, err)) ||
        (rc = cfg_int(s, KEYS("bits"), true, 0, 1, 16, &bits, err)) ||
        (rc = cfg_int(s, KEYS("group_size"), true, 0, -1, 1 << 20, &group, err)) ||
        (rc = cfg_bool(s, KEYS("sym"), true, &sym, err)) ||
        (rc = cfg_bool(s, KEYS("desc_act"), false, &desc_act, err)) ||
        (rc = cfg_bool(s, KEYS("static_groups"), false, &static_groups, err)) ||
        (rc = cfg_bool(s, KEYS("true_sequential"), true, &true_seq, err)))
        return rc;
    if (group == 0) return qd_error_set(err, QD_ERR_CONFIG, "%s: group_size 0", s->where);
    const json_t *damp = json_object_get(s->o, "damp_percent");
    if (damp && json_is_number(damp)) p->damp_percent = json_number_value(damp);
    p->type = QD_QTYPE_INT;
    p->bits = (int)bits;
    p->group_size = (int)group;
    p->symmetric = sym;
    p->act_order = desc_act;
    p->static_groups = desc_act && static_groups;
    p->true_sequential = true_seq;
    if (strcmp(cf, "gptq_v2") == 0) {
        *ret = &qd_format_gptq_v2;
        return QD_OK;
    }
    if (strcmp(cf, "gptq") != 0)
        return qd_error_set(err, QD_ERR_UNSUPPORTED, "%s: checkpoint_format '%s': quantd reads "
                            "'gptq' (v1) and 'gptq_v2'", s->where, cf);
    char marker[64];
    const char *mk = shard_marker(dir, marker, sizeof marker, err, &rc);
    if (rc) return rc;
    *ret = mk && strcmp(mk, qd_format_dashinfer.name) == 0 ? &qd_format_dashinfer
                                                            : &qd_format_gptq;
    return QD_OK;
}

/* compressed-tensors QuantizationArgs of weights or input_activations. */
typedef struct ct_args {
    long long bits, group;
    const char *type, *strategy, *actorder;
    bool symmetric, dynamic;
} ct_args;

static qd_err parse_ct_args(const cfg_src *s, ct_args *a, qd_error *err) {
    qd_err rc;
    if ((rc = cfg_int(s, KEYS("num_bits"), true, 0, 1, 16, &a->bits, err)) ||
        (rc = cfg_int(s, KEYS("group_size"), false, -1, -1, 1 << 20, &a->group, err)) ||
        (rc = cfg_str(s, KEYS("type"), false, "int", &a->type, err)) ||
        (rc = cfg_str(s, KEYS("strategy"), true, NULL, &a->strategy, err)) ||
        (rc = cfg_str(s, KEYS("actorder"), false, NULL, &a->actorder, err)) ||
        (rc = cfg_bool(s, KEYS("symmetric"), true, &a->symmetric, err)))
        return rc;
    /* "dynamic" is a bool, or the string "local" (a per-group dynamic variant) */
    const json_t *d = json_object_get(s->o, "dynamic");
    if (d && json_is_string(d))
        return qd_error_set(err, QD_ERR_UNSUPPORTED, "%s: dynamic '%s' is not read", s->where,
                            json_string_value(d));
    return cfg_bool(s, KEYS("dynamic"), false, &a->dynamic, err);
}

static qd_err parse_ct(const char *where, const cfg_src *s, qd_format_params *p,
                       const qd_format **ret, qd_error *err) {
    const char *status, *fmt;
    qd_err rc;
    if ((rc = cfg_str(s, KEYS("quantization_status"), false, "compressed", &status, err)) ||
        (rc = cfg_str(s, KEYS("format"), false, NULL, &fmt, err)) ||
        (rc = cfg_ignore(s, "ignore", p, err)))
        return rc;
    if (strcmp(status, "compressed") != 0)
        return qd_error_set(err, QD_ERR_UNSUPPORTED, "%s: quantization_status '%s': quantd "
                            "reads compressed checkpoints only", s->where, status);
    const json_t *sp = json_object_get(s->o, "sparsity_config");
    if (sp && !json_is_null(sp) && !(json_is_object(sp) && json_object_size(sp) == 0))
        return qd_error_set(err, QD_ERR_UNSUPPORTED, "%s: sparsity_config is set; quantd reads "
                            "dense checkpoints only", s->where);
    const json_t *groups = json_object_get(s->o, "config_groups");
    if (!json_is_object(groups) || json_object_size(groups) != 1)
        return qd_error_set(err, json_is_object(groups) ? QD_ERR_UNSUPPORTED : QD_ERR_CONFIG,
                            "%s: config_groups must hold exactly one group (one scheme for "
                            "every Linear)", s->where);
    const char *gname = json_object_iter_key(json_object_iter((json_t *)groups));
    const json_t *g = json_object_get(groups, gname);
    char gwhere[PATH_BUF];
    label(gwhere, sizeof gwhere, "%s.config_groups.%s", s->where, gname);
    if (!json_is_object(g)) return qd_error_set(err, QD_ERR_CONFIG, "%s: not an object", gwhere);
    cfg_src gs = {gwhere, g};
    const char *gfmt;
    if ((rc = cfg_str(&gs, KEYS("format"), false, fmt, &gfmt, err))) return rc;
    if (!gfmt) return qd_error_set(err, QD_ERR_CONFIG, "%s: key 'format' is missing", where);
    const json_t *w = json_object_get(g, "weights"), *in = json_object_get(g, "input_activations");
    const json_t *outa = json_object_get(g, "output_activations");
    if (!json_is_object(w))
        return qd_error_set(err, QD_ERR_CONFIG, "%s: 'weights' must be an object", gwhere);
    if (outa && !json_is_null(outa))
        return qd_error_set(err, QD_ERR_UNSUPPORTED, "%s: output_activations are not read",
                            gwhere);
    char wwhere[PATH_BUF + 16];
    label(wwhere, sizeof wwhere, "%s.weights", gwhere);
    cfg_src ws = {wwhere, w};
    ct_args wa;
    if ((rc = parse_ct_args(&ws, &wa, err))) return rc;

    p->bits = (int)wa.bits;
    p->symmetric = wa.symmetric;
    if (strcmp(wa.type, "int") == 0) {
        p->type = QD_QTYPE_INT;
    } else if (strcmp(wa.type, "float") == 0 && wa.bits == 8) {
        p->type = QD_QTYPE_FP8_E4M3;
    } else {
        return qd_error_set(err, QD_ERR_UNSUPPORTED, "%s: %s %lld-bit weights are not read",
                            wwhere, wa.type, wa.bits);
    }
    if (strcmp(wa.strategy, "group") == 0) {
        if (wa.group <= 0)
            return qd_error_set(err, QD_ERR_CONFIG, "%s: strategy group needs a group_size > 0",
                                wwhere);
        p->group_size = (int)wa.group;
    } else if (strcmp(wa.strategy, "channel") == 0) {
        p->group_size = -1;
    } else if (strcmp(wa.strategy, "tensor") == 0 && p->type == QD_QTYPE_FP8_E4M3) {
        p->group_size = -1;
        p->weight_per_tensor = true;
    } else {
        return qd_error_set(err, QD_ERR_UNSUPPORTED, "%s: strategy '%s' is not read", wwhere,
                            wa.strategy);
    }
    if (wa.actorder) {
        /* aliases of compressed-tensors' ActivationOrdering */
        if (strcmp(wa.actorder, "group") == 0 || strcmp(wa.actorder, "dynamic") == 0) {
            p->act_order = true;
        } else if (strcmp(wa.actorder, "weight") == 0 || strcmp(wa.actorder, "static") == 0) {
            p->act_order = p->static_groups = true;
        } else {
            return qd_error_set(err, QD_ERR_UNSUPPORTED, "%s: actorder '%s' is not read", wwhere,
                                wa.actorder);
        }
    }

    p->act = QD_FORMAT_ACT_NONE;
    if (in && !json_is_null(in)) {
        char iwhere[PATH_BUF + 32];
        label(iwhere, sizeof iwhere, "%s.input_activations", gwhere);
        if (!json_is_object(in))
            return qd_error_set(err, QD_ERR_CONFIG, "%s: not an object", iwhere);
        cfg_src is = {iwhere, in};
        ct_args ia;
        if ((rc = parse_ct_args(&is, &ia, err))) return rc;
        bool fp = strcmp(ia.type, "float") == 0, token = strcmp(ia.strategy, "token") == 0;
        bool tensor = strcmp(ia.strategy, "tensor") == 0;
        if (ia.bits != 8 || !ia.symmetric || !(fp || strcmp(ia.type, "int") == 0) ||
            !((token && ia.dynamic) || (tensor && !ia.dynamic)))
            return qd_error_set(err, QD_ERR_UNSUPPORTED, "%s: quantd reads symmetric 8-bit "
                                "activations, dynamic per token or static per tensor", iwhere);
        p->act = fp ? (token ? QD_FORMAT_ACT_FP8_TOKEN : QD_FORMAT_ACT_FP8_TENSOR)
                    : (token ? QD_FORMAT_ACT_INT8_TOKEN : QD_FORMAT_ACT_INT8_TENSOR);
    }
    /* the compression format must be the one the scheme implies (ctensors.c) */
    const char *want = p->act == QD_FORMAT_ACT_NONE ? "pack-quantized"
                       : p->type == QD_QTYPE_INT    ? "int-quantized"
                                                    : "float-quantized";
    if (strcmp(gfmt, want) != 0)
        return qd_error_set(err, QD_ERR_UNSUPPORTED, "%s: format '%s' with this scheme (quantd "
                            "reads it as '%s')", where, gfmt, want);
    *ret = &qd_format_ctensors;
    return QD_OK;
}

static qd_err parse_modelopt(const cfg_src *s, const json_t *side, const char *side_where,
                             qd_format_params *p, const qd_format **ret, qd_error *err) {
    const char *algo;
    qd_err rc;
    if ((rc = cfg_str(s, KEYS("quant_algo"), true, NULL, &algo, err)) ||
        (rc = cfg_ignore(s, "ignore", p, err)))
        return rc;
    p->type = QD_QTYPE_INT;
    p->symmetric = true;
    if (strcmp(algo, "W8A8_SQ_PER_CHANNEL") == 0) {
        p->bits = 8;
        p->group_size = -1;
        p->act = QD_FORMAT_ACT_INT8_TENSOR;
        *ret = &qd_format_modelopt;
        return QD_OK;
    }
    if (strcmp(algo, "W4A16_AWQ") != 0 && strcmp(algo, "W4A8_AWQ") != 0)
        return qd_error_set(err, QD_ERR_UNSUPPORTED, "%s: quant_algo '%s': quantd reads "
                            "W4A16_AWQ, W4A8_AWQ and W8A8_SQ_PER_CHANNEL", s->where, algo);
    p->bits = 4;
    p->act = strcmp(algo, "W4A8_AWQ") == 0 ? QD_FORMAT_ACT_FP8_TENSOR : QD_FORMAT_ACT_NONE;
    /* the group size is only in hf_quant_config.json's "quantization" */
    const json_t *qz = side ? json_object_get(side, "quantization") : NULL;
    if (!json_is_object(qz))
        return qd_error_set(err, QD_ERR_NOT_FOUND, "%s: needed for %s's group_size, and it is "
                            "missing or has no \"quantization\" object", side_where, algo);
    char where[PATH_BUF + 16];
    label(where, sizeof where, "%s quantization", side_where);
    cfg_src qs = {where, qz};
    long long group;
    if ((rc = cfg_int(&qs, KEYS("group_size"), true, 0, 1, 1 << 20, &group, err))) return rc;
    p->group_size = (int)group;
    if (!p->n_ignore && (rc = cfg_ignore(&qs, "exclude_modules", p, err))) return rc;
    *ret = &qd_format_modelopt;
    return QD_OK;
}

/* The format's side file (dir/name), parsed, or NULL when absent. */
static qd_err load_side(const char *dir, const char *name, json_t **ret, qd_error *err) {
    char path[PATH_BUF];
    *ret = NULL;
    qd_err rc = qd_path_join(path, sizeof path, dir, name, err);
    if (rc || !qd_is_file(path)) return rc;
    char *text;
    size_t len;
    if ((rc = qd_read_file(path, CONFIG_MAX_BYTES, &text, &len, err))) return rc;
    json_error_t je;
    json_t *j = json_loadb(text, len, 0, &je);
    free(text);
    if (!j) return qd_error_set(err, QD_ERR_FORMAT, "%s: line %d: %s", path, je.line, je.text);
    if (!json_is_object(j)) {
        json_decref(j);
        return qd_error_set(err, QD_ERR_CONFIG, "%s: not a JSON object", path);
    }
    *ret = j;
    return QD_OK;
}

void qd_artifact_info_done(qd_artifact_info *info) {
    if (!info) return;
    free((void *)info->params.ignore);
    json_decref(info->quantization_config);
    json_decref(info->side_config);
    memset(info, 0, sizeof *info);
}

qd_err qd_artifact_detect(const char *dir, qd_artifact_info *ret, qd_error *err) {
    qd_artifact_info info;
    memset(&info, 0, sizeof info);
    qd_format_params_init(&info.params);
    char *text;
    size_t len;
    json_t *root;
    qd_err rc = load_config(dir, &text, &len, &root, err);
    if (rc) return rc;
    char path[PATH_BUF], where[PATH_BUF + 32];
    qd_path_join(path, sizeof path, dir, "config.json", NULL);
    qd_llama_config cfg;
    rc = qd_llama_config_parse(text, len, path, &cfg, err);
    free(text);
    json_t *qc = json_object_get(root, "quantization_config");
    if (rc || !qc || json_is_null(qc)) {
        json_decref(root);
        if (!rc) *ret = info;
        return rc;
    }
    info.quantization_config = json_incref(qc);
    json_decref(root);
    info.params.dtype = cfg.torch_dtype;
    label(where, sizeof where, "%s quantization_config", path);
    cfg_src s = {where, info.quantization_config};
    const char *method = NULL;
    if (!json_is_object(qc)) {
        rc = qd_error_set(err, QD_ERR_CONFIG, "%s: not an object", where);
        goto fail;
    }
    if ((rc = cfg_str(&s, KEYS("quant_method"), true, NULL, &method, err))) goto fail;
    if (strcmp(method, "awq") == 0) {
        rc = parse_awq(&s, &info.params, &info.format, err);
    } else if (strcmp(method, "gptq") == 0) {
        rc = parse_gptq(dir, &s, &info.params, &info.format, err);
    } else if (strcmp(method, "compressed-tensors") == 0) {
        rc = parse_ct(where, &s, &info.params, &info.format, err);
    } else if (strcmp(method, "modelopt") == 0) {
        char side_path[PATH_BUF];
        qd_path_join(side_path, sizeof side_path, dir, qd_format_modelopt.side_config_name,
                     NULL);
        rc = load_side(dir, qd_format_modelopt.side_config_name, &info.side_config, err);
        if (!rc) rc = parse_modelopt(&s, info.side_config, side_path, &info.params,
                                     &info.format, err);
    } else {
        rc = qd_error_set(err, QD_ERR_UNSUPPORTED, "%s: quant_method '%s': quantd reads awq, "
                          "gptq, compressed-tensors and modelopt", where, method);
    }
    if (rc) goto fail;
    if (info.format->side_config_name && !info.side_config &&
        (rc = load_side(dir, info.format->side_config_name, &info.side_config, err)))
        goto fail;
    *ret = info;
    return QD_OK;
fail:
    qd_artifact_info_done(&info);
    return rc;
}

const char *qd_artifact_act_name(qd_format_act act) {
    switch (act) {
    case QD_FORMAT_ACT_NONE: return "none";
    case QD_FORMAT_ACT_INT8_TOKEN: return "int8 per token (dynamic)";
    case QD_FORMAT_ACT_INT8_TENSOR: return "int8 per tensor (static)";
    case QD_FORMAT_ACT_FP8_TOKEN: return "fp8 e4m3 per token (dynamic)";
    case QD_FORMAT_ACT_FP8_TENSOR: return "fp8 e4m3 per tensor (static)";
    default: return "?";
    }
}

const char *qd_artifact_describe(const qd_artifact_info *info, char *buf, size_t len) {
    if (!len) return buf;
    if (!info->format) {
        snprintf(buf, len, "float");
        return buf;
    }
    snprintf(buf, len, "%s (%s, %d-bit, group %d)", info->format->name,
             info->format->quant_method, info->params.bits,
             info->params.group_size > 0 ? info->params.group_size : -1);
    return buf;
}

/* ---- reading --------------------------------------------------------------------------------- */

struct qd_artifact {
    qd_artifact_info info;
    qd_model *m;
    int n_layers;
    qd_act_quant act_mode; /* activation quantization the format implies */
    qd_act_fq act;         /* static scales, filled layer by layer by the weight hook */
    /* per linear, filled by the weight hook for the input hook (act_mode != NONE only): */
    float **pre;           /* [n_layers * 7] activation pre-scale, or NULL */
    bool *plain;           /* [n_layers * 7] stored as a float weight */
};

static bool st_lookup(void *ctx, const char *name, qd_tensor *ret_view) {
    const qd_artifact *a = ctx;
    const qd_st_entry *e = qd_st_model_find(qd_model_weights(a->m), name);
    if (!e) return false;
    *ret_view = qd_st_entry_view(e);
    return true;
}

/* Does entry `pattern` of an ignore list name module `name`? The spellings in use: the full
 * name, a run of its dot-separated parts ("down_proj", "mlp.down_proj"), an fnmatch pattern
 * (ModelOpt's "*lm_head*") and compressed-tensors' "re:<regex>" (matched from the start of
 * the name, as Python's re.match). */
static bool ignore_matches(const char *pattern, const char *name) {
    if (strncmp(pattern, "re:", 3) == 0) { /* Python's re.match: anchored at the start */
        size_t lp = strlen(pattern + 3);
        char *anch = malloc(lp + 4);
        if (!anch) return false;
        snprintf(anch, lp + 4, "^(%s)", pattern + 3);
        regex_t re;
        bool ok = regcomp(&re, anch, REG_EXTENDED | REG_NOSUB) == 0;
        free(anch);
        if (!ok) return false;
        ok = regexec(&re, name, 0, NULL, 0) == 0;
        regfree(&re);
        return ok;
    }
    if (strpbrk(pattern, "*?[")) return fnmatch(pattern, name, 0) == 0;
    size_t lp = strlen(pattern);
    for (const char *p = name; p; p = strchr(p, '.')) {
        if (*p == '.') p++;
        if (strncmp(p, pattern, lp) == 0 && (p[lp] == '\0' || p[lp] == '.')) return true;
    }
    return false;
}

static bool ignored(const qd_format_params *p, const char *module) {
    for (int i = 0; i < p->n_ignore; i++)
        if (p->ignore[i] && ignore_matches(p->ignore[i], module)) return true;
    return false;
}

/*
 * Is linear `path` stored as a float "<path>.weight" ([n, k], F32/F16/BF16)? Formats whose
 * quantized tensor is itself called "weight" (ModelOpt, compressed-tensors int-/float-
 * quantized) need the ignore list to say so, so that a quantized weight of a wrong dtype is
 * reported as such rather than taken for a float one.
 */
static qd_err find_plain(const qd_artifact *a, const char *path, const int64_t shape[2],
                         const qd_st_entry **ret, qd_error *err) {
    char name[192];
    snprintf(name, sizeof name, "%s.weight", path);
    *ret = NULL;
    const qd_st_entry *e = qd_st_model_find(qd_model_weights(a->m), name);
    if (!e || !is_float_weight_dtype(e->dtype)) return QD_OK;
    const qd_format *f = a->info.format;
    bool weight_named = f == &qd_format_modelopt ||
                        (f == &qd_format_ctensors && a->info.params.act != QD_FORMAT_ACT_NONE);
    if (weight_named && !ignored(&a->info.params, path)) return QD_OK;
    if (e->ndim != 2 || e->shape[0] != shape[0] || e->shape[1] != shape[1]) {
        char got[96];
        return qd_error_set(err, QD_ERR_FORMAT, "tensor '%s' has shape %s but config.json "
                            "implies [%lld, %lld]", name, qd_shape_str(e->ndim, e->shape, got,
                                                                       sizeof got),
                            (long long)shape[0], (long long)shape[1]);
    }
    *ret = e;
    return QD_OK;
}

static qd_err unpack_linear(const qd_artifact *a, int layer, qd_linear_kind kind, qd_qlinear *q,
                            const qd_st_entry **ret_plain, qd_error *err) {
    char path[128];
    int64_t shape[2];
    linear_shape(qd_model_config(a->m), kind, shape);
    qd_err rc = qd_linear_path(path, sizeof path, layer, kind, err);
    if (!rc) rc = find_plain(a, path, shape, ret_plain, err);
    if (rc || *ret_plain) return rc;
    const qd_format *f = a->info.format;
    if ((rc = f->unpack(&a->info.params, path, st_lookup, (void *)a, q, err))) return rc;
    if (q->n != shape[0] || q->k != shape[1]) {
        rc = qd_error_set(err, QD_ERR_FORMAT, "%s: %s: the packed layer is [%d, %d] but "
                          "config.json implies [%lld, %lld]", f->name, path, q->n, q->k,
                          (long long)shape[0], (long long)shape[1]);
        qd_qlinear_free(q);
    }
    return rc;
}

qd_err qd_artifact_unpack_linear(const qd_artifact *a, int layer, qd_linear_kind kind,
                                 qd_qlinear *ret_q, bool *ret_plain, qd_error *err) {
    if (!a->info.format)
        return qd_error_set(err, QD_ERR_PRECONDITION, "a float model has no packed linears");
    if (layer < 0 || layer >= a->n_layers || (int)kind < 0 || kind >= QD_LINEAR_COUNT)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "layer %d linear %d: out of range", layer,
                            (int)kind);
    const qd_st_entry *plain = NULL;
    qd_qlinear q;
    memset(&q, 0, sizeof q);
    qd_err rc = unpack_linear(a, layer, kind, &q, &plain, err);
    if (rc) return rc;
    *ret_q = q;
    *ret_plain = plain != NULL;
    return QD_OK;
}

static bool same_pre(const float *x, const float *y, int64_t k) {
    if (!x || !y) return x == y;
    return memcmp(x, y, (size_t)k * sizeof *x) == 0;
}

/* on_weights: each linear of the layer from the artifact (see the top of artifact.h). */
static qd_err weights_hook(void *ctx, qd_layer_weights *w, qd_error *err) {
    qd_artifact *a = ctx;
    int l = w->layer;
    for (int k = 0; k < QD_LINEAR_COUNT; k++) {
        qd_qlinear q;
        memset(&q, 0, sizeof q);
        const qd_st_entry *plain = NULL;
        qd_err rc = unpack_linear(a, l, (qd_linear_kind)k, &q, &plain, err);
        if (rc) return rc;
        size_t nk = (size_t)(w->n_out[k] * w->n_in[k]);
        if (a->act_mode != QD_ACT_QUANT_NONE) {
            free(a->pre[LIN(l, k)]);
            a->pre[LIN(l, k)] = NULL;
            a->plain[LIN(l, k)] = plain != NULL;
        }
        if (plain) {
            if ((rc = qd_convert(QD_DTYPE_F32, w->w[k], plain->dtype, plain->data, nk, err))) {
                qd_error_prefix(err, "%s: ", plain->name);
                return rc;
            }
            if (a->act_mode == QD_ACT_QUANT_INT8_TENSOR || a->act_mode == QD_ACT_QUANT_FP8_TENSOR)
                rc = qd_act_fq_set(&a->act, l, (qd_linear_kind)k, 0.0f, err);
            if (rc) return rc;
            continue;
        }
        qd_qlinear_dequant(&q, w->w[k]);
        if (q.pre_scale) /* the engine multiplies the activations: W_eff[n, c] = W'[n, c] p[c] */
            for (int64_t r = 0; r < w->n_out[k]; r++)
                for (int64_t c = 0; c < w->n_in[k]; c++)
                    w->w[k][r * w->n_in[k] + c] *= q.pre_scale[c];
        if (q.bias && w->b[k]) memcpy(w->b[k], q.bias, (size_t)w->n_out[k] * sizeof(float));
        if (a->act_mode == QD_ACT_QUANT_INT8_TENSOR || a->act_mode == QD_ACT_QUANT_FP8_TENSOR)
            rc = qd_act_fq_set(&a->act, l, (qd_linear_kind)k, q.act_scale, err);
        if (!rc && a->act_mode != QD_ACT_QUANT_NONE) {
            a->pre[LIN(l, k)] = q.pre_scale; /* taken over */
            q.pre_scale = NULL;
        }
        qd_qlinear_free(&q);
        if (rc) return rc;
    }
    /* a fused input is quantized once: its linears must agree on the pre-scale */
    for (int g = 0; a->act_mode != QD_ACT_QUANT_NONE && g < QD_CALIB_GROUP_COUNT; g++) {
        qd_linear_kind kinds[3];
        int n = qd_calib_group_linears((qd_calib_group)g, kinds);
        for (int i = 1; i < n; i++)
            if (!same_pre(a->pre[LIN(l, kinds[0])], a->pre[LIN(l, kinds[i])], w->n_in[kinds[0]]))
                return qd_error_set(err, QD_ERR_UNSUPPORTED, "layer %d: %s and %s read one input "
                                    "but carry different pre_quant_scale; their activation "
                                    "quantization cannot be evaluated as one", l,
                                    qd_linear_name(kinds[0]), qd_linear_name(kinds[i]));
    }
    return QD_OK;
}

/* on_linear_input: the activation quantization the format implies, on the pre-scaled input. */
static qd_err input_hook(void *ctx, int layer, qd_linear_kind kind, float *x, int64_t n_tok,
                         int64_t n_in, qd_error *err) {
    qd_artifact *a = ctx;
    if (layer < 0 || layer >= a->n_layers || (int)kind < 0 || kind >= QD_LINEAR_COUNT)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "activation hook: layer %d linear %d",
                            layer, (int)kind);
    qd_calib_group g = kind == QD_LINEAR_Q      ? QD_CALIB_QKV
                       : kind == QD_LINEAR_O    ? QD_CALIB_O
                       : kind == QD_LINEAR_GATE ? QD_CALIB_GATE_UP
                                                : QD_CALIB_DOWN;
    qd_linear_kind kinds[3];
    int n = qd_calib_group_linears(g, kinds);
    bool all_plain = true;
    for (int i = 0; i < n; i++) all_plain = all_plain && a->plain[LIN(layer, kinds[i])];
    if (all_plain) return QD_OK; /* modules left in float read float activations */
    const float *pre = a->pre[LIN(layer, kind)];
    if (pre)
        for (int64_t t = 0; t < n_tok; t++)
            for (int64_t c = 0; c < n_in; c++) x[t * n_in + c] *= pre[c];
    qd_err rc = QD_OK;
    if (a->act_mode == QD_ACT_QUANT_INT8_TENSOR || a->act_mode == QD_ACT_QUANT_FP8_TENSOR)
        rc = qd_act_fq_apply(&a->act, layer, kind, x, n_tok, n_in, err);
    else
        qd_act_fake_quant(a->act_mode, 0.0f, x, n_tok, n_in);
    if (pre) /* the weights carry p (weights_hook): hand the GEMM fq(x p) / p */
        for (int64_t t = 0; t < n_tok; t++)
            for (int64_t c = 0; c < n_in; c++) x[t * n_in + c] /= pre[c];
    return rc;
}

void qd_artifact_free(qd_artifact *a) {
    if (!a) return;
    if (a->pre)
        for (size_t i = 0; i < (size_t)a->n_layers * QD_LINEAR_COUNT; i++) free(a->pre[i]);
    free(a->pre);
    free(a->plain);
    qd_act_fq_done(&a->act);
    qd_model_free(a->m);
    qd_artifact_info_done(&a->info);
    free(a);
}

qd_err qd_artifact_open(const char *dir, qd_artifact **ret, qd_error *err) {
    qd_artifact *a = calloc(1, sizeof *a);
    if (!a) return qd_error_set(err, QD_ERR_NOMEM, "%s: out of memory", dir);
    qd_err rc = qd_artifact_detect(dir, &a->info, err);
    if (!rc)
        rc = qd_model_open_ex(dir, a->info.format ? QD_MODEL_OPEN_EXTERNAL_LINEARS : 0u, &a->m,
                              err);
    if (rc) goto fail;
    a->n_layers = qd_model_config(a->m)->num_hidden_layers;
    a->act_mode = a->info.format ? act_mode_of(a->info.params.act) : QD_ACT_QUANT_NONE;
    if (a->act_mode == QD_ACT_QUANT_INT8_TENSOR || a->act_mode == QD_ACT_QUANT_FP8_TENSOR)
        if ((rc = qd_act_fq_init(&a->act, a->act_mode, a->n_layers, err))) goto fail;
    if (a->act_mode != QD_ACT_QUANT_NONE) {
        size_t n = (size_t)a->n_layers * QD_LINEAR_COUNT;
        a->pre = calloc(n, sizeof *a->pre);
        a->plain = calloc(n, sizeof *a->plain);
        if (!a->pre || !a->plain) {
            rc = qd_error_set(err, QD_ERR_NOMEM, "%s: out of memory", dir);
            goto fail;
        }
    }
    *ret = a;
    return QD_OK;
fail:
    qd_artifact_free(a);
    return rc;
}

const qd_model *qd_artifact_model(const qd_artifact *a) {
    return a->m;
}

const qd_artifact_info *qd_artifact_get_info(const qd_artifact *a) {
    return &a->info;
}

void qd_artifact_run_opts(qd_artifact *a, qd_run_opts *o) {
    o->on_weights = NULL;
    o->hook_ctx = NULL;
    o->on_linear_input = NULL;
    o->linear_input_ctx = NULL;
    if (!a->info.format) return;
    o->on_weights = weights_hook;
    o->hook_ctx = a;
    if (a->act_mode != QD_ACT_QUANT_NONE) {
        o->on_linear_input = input_hook;
        o->linear_input_ctx = a;
    }
}

qd_err qd_artifact_perplexity(qd_artifact *a, const int32_t *tokens, int64_t n_seq,
                              int64_t seq_len, const qd_run_opts *base, double *ret_ppl,
                              qd_error *err) {
    qd_run_opts o;
    memset(&o, 0, sizeof o);
    if (base) o = *base;
    qd_artifact_run_opts(a, &o);
    if (seq_len < 2 || n_seq < 1)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "evaluation rows need >= 2 tokens");
    double *nll = malloc((size_t)n_seq * sizeof *nll);
    if (!nll) return qd_error_set(err, QD_ERR_NOMEM, "out of memory");
    qd_err rc = qd_model_nll(a->m, tokens, n_seq, seq_len, &o, nll, err);
    if (rc == QD_OK) {
        /* summed in row order, as qd_job_perplexity() does */
        double sum = 0;
        for (int64_t i = 0; i < n_seq; i++) sum += nll[i];
        *ret_ppl = exp(sum / ((double)n_seq * (double)(seq_len - 1)));
    }
    free(nll);
    return rc;
}
