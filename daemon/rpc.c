/*
 * rpc.c - the handlers of quantd.v1.Quantd and grpc.health.v1.Health: decode each request
 * with protobuf-c, check it at the edge, make one call into the service core (service.h) and
 * encode the answer. The transport (server.c) drives them; nothing here calls gRPC.
 *
 * DESIGN
 * Edge checks. A request is checked before the service sees it, and every failure names the
 * field the way the proto spells it ("chunk.offset: 4096 past the declared size 1000 of
 * config.json", "spec.format: ..."), so a client can fix its request from the message alone.
 * A message protobuf-c cannot decode is INVALID_ARGUMENT "malformed <MessageName>". The
 * service then checks what only it can (manifests, the spec against the model) and its
 * messages pass through unchanged. A qd_err becomes a gRPC status by qd_err_grpc_status(),
 * with the error's message as the details.
 *
 * Specs. QuantSpec is copied field by field into a qd_spec (0 and absent stay "unset", the
 * *_opt oneofs become tri-states) and qd_service_quantize resolves and validates it. What a
 * qd_spec cannot express is checked here: the required enums, unknown enum values, a params
 * message of another method, a calibration message for a method that reads none. An empty
 * calibration digest becomes the server's default set before validation (docs/spec.md).
 *
 * Responses are built in an arena (struct arena): every string and sub-message of one answer
 * comes from it and goes in one free after packing, so no builder has to track ownership.
 *
 * Streams. PutModel asks for the next message only after the service wrote the current
 * chunk, so an upload runs at the disk's pace (HTTP/2 flow control holds the client back).
 * GetArtifact reads one chunk per step. WatchJob polls its job's events without blocking,
 * subscribes for a wake-up when a new one arrives, and sends a tick every TICK_MS while
 * nothing happens; while the server drains it ends the stream early (UNAVAILABLE, with the
 * seq to resume from) unless the job is running and may still finish.
 *
 * Authentication. Each row of the method table runs its handler through a guard made by
 * GUARDED(), which at START checks the bearer token against the role the row needs (rpc.h)
 * and ends the call before the handler sees anything. The presented token is hashed with
 * sha256 and compared with every configured hash in constant time (no early exit, so the
 * time taken says nothing about which entry or how many bytes matched). The token set is
 * swapped whole under a mutex on reload.
 *
 * Owners. The guard also names the caller (struct ident, handed to the step at START only):
 * the matching entry's NAME, else "token:" and the first 12 hex digits of its sha256, and
 * whether it sees everything (the admin role, or authentication off, whose owner is "").
 * A step that goes on past START (PutModel, WatchJob, GetArtifact) copies it into its state;
 * every service call gets it as a qd_caller, and the service decides what the caller may see
 * (service.h, "Owners"; proto/README.md lists the rule of each RPC).
 */
#include "rpc.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <grpc/status.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <pthread.h>

#include "health.pb-c.h"
#include "quantd.pb-c.h"
#include "service.h"
#include "spec.h"
#include "store.h"
#include "fsutil.h"
#include "yamlwalk.h"

#ifndef QD_VERSION
#define QD_VERSION "0.0.0"
#endif

/* WatchJob sends a tick after this long without an event. */
#define TICK_MS 5000
#define LABEL_MAX 256
/* Longest id or page token looked up; longer ones cannot exist. */
#define ID_ARG_MAX 128
#define PAGE_DEFAULT 50
#define PAGE_MAX 500
/* Room left in a list response for its framing and page token. */
#define LIST_MARGIN 1024
#define MAX_BITS 16

/* ---- shared state ---------------------------------------------------------------------------- */

/* What one method accepts, computed once from the spec rules (quantizers/spec.c). */
struct method_support {
    qd_spec_method method;
    Quantd__V1__Format formats[QD_SPEC_FORMAT_COUNT];
    size_t n_formats;
    uint32_t bits[MAX_BITS];
    size_t n_bits;
};

struct qd_rpc {
    struct qd_service *svc;
    uint64_t max_message_bytes; /* immutable */
    _Atomic uint64_t chunk_bytes; /* reloadable */
    struct method_support support[QD_SPEC_METHOD_COUNT];
    size_t n_support;
    Quantd__V1__Format formats[QD_SPEC_FORMAT_COUNT]; /* every format some method writes */
    size_t n_formats;
    pthread_mutex_t auth_mu;
    struct qd_rpc_auth *auth; /* guarded by auth_mu; reloadable */
};

struct qd_rpc_auth {
    bool on; /* auth.tokens or auth.token_file set */
    qd_config_token *tokens;
    size_t n, cap;
};

/* Who makes a call, as the guard found it. */
struct ident {
    char owner[sizeof ((qd_config_token *)0)->name + 8]; /* a NAME, or "token:" + 12 hex */
    bool all;                                           /* admin, or auth off */
};

/* The service's view of an ident (borrows its owner). */
static qd_caller caller_of(const struct ident *id) {
    qd_caller c = {.owner = id ? id->owner : "", .all = id ? id->all : false};
    return c;
}

/* ---- the response arena ---------------------------------------------------------------------- */

struct arena_block {
    struct arena_block *next;
    max_align_t data[];
};

struct arena {
    struct arena_block *blocks;
    bool failed; /* an allocation failed: the answer is NOMEM */
};

static void *arena_alloc(struct arena *a, size_t n) {
    if (n > SIZE_MAX - sizeof(struct arena_block)) {
        a->failed = true;
        return NULL;
    }
    struct arena_block *b = calloc(1, sizeof *b + n);
    if (!b) {
        a->failed = true;
        return NULL;
    }
    b->next = a->blocks;
    a->blocks = b;
    return b->data;
}

static void arena_free(struct arena *a) {
    for (struct arena_block *b = a->blocks, *n; b; b = n) {
        n = b->next;
        free(b);
    }
    a->blocks = NULL;
}

/* A copy of s in the arena; "" for NULL or on failure (which marks the arena failed), so a
 * string field is never NULL. */
static char *astr(struct arena *a, const char *s) {
    if (!s || !*s) return (char *)protobuf_c_empty_string;
    size_t n = strlen(s) + 1;
    char *d = arena_alloc(a, n);
    if (!d) return (char *)protobuf_c_empty_string;
    memcpy(d, s, n);
    return d;
}

/* A new message of descriptor d, initialised to its defaults. */
static void *anew(struct arena *a, const ProtobufCMessageDescriptor *d) {
    void *m = arena_alloc(a, d->sizeof_message);
    if (m) protobuf_c_message_init(d, m);
    return m;
}

#define ANEW(a, T, desc) ((T *)anew((a), &(desc)))

/* An array of n elements of size sz (NULL for n == 0). */
static void *aarray(struct arena *a, size_t n, size_t sz) {
    if (n == 0) return NULL;
    if (n > SIZE_MAX / sz) {
        a->failed = true;
        return NULL;
    }
    return arena_alloc(a, n * sz);
}

/* ---- small helpers --------------------------------------------------------------------------- */

static bool is_hex(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
    }
    return s[n] == '\0';
}

static bool is_digest(const char *s) { return s && strlen(s) == QD_STORE_HEX_LEN && is_hex(s, 64); }

/* s quoted for a message: control characters escaped, cut at a few dozen bytes. */
static const char *quote(const char *s, char buf[QD_YAML_EXCERPT_BUF]) {
    return qd_yaml_excerpt(s, strlen(s), buf, QD_YAML_EXCERPT_BUF);
}

static qd_err check_digest_field(const char *field, const char *s, qd_error *err) {
    char q[QD_YAML_EXCERPT_BUF];
    if (is_digest(s)) return QD_OK;
    return qd_error_set(err, QD_ERR_INVALID_ARG,
                        "%s: expected 64 lowercase hex digits, got '%s'", field, quote(s, q));
}

/* A required id: present and of a sane length (the service answers NOT_FOUND for the rest). */
static qd_err check_id_field(const char *field, const char *s, qd_error *err) {
    if (!s || !*s) return qd_error_set(err, QD_ERR_INVALID_ARG, "%s: required", field);
    if (strlen(s) > ID_ARG_MAX) {
        char q[QD_YAML_EXCERPT_BUF];
        return qd_error_set(err, QD_ERR_NOT_FOUND, "%s: no such id '%s'", field, quote(s, q));
    }
    return QD_OK;
}

static int64_t now_unix_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t now_mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const char *method_word(qd_spec_method m) {
    const char *n = qd_spec_method_name(m);
    return n ? n : "?";
}

static const char *format_word(qd_spec_format f) {
    const char *n = qd_spec_format_name(f);
    return n ? n : "?";
}

/* End the call with the status of rc and err's message. */
static void finish_err(struct qd_call *call, qd_err rc, const qd_error *err) {
    int status = qd_err_grpc_status(rc);
    const char *text = err && err->code != QD_OK ? qd_error_text(err) : qd_err_str(rc);
    if (status == GRPC_STATUS_INTERNAL)
        qd_server_log(QD_CONFIG_LOG_ERROR, "%s: %s", qd_call_path(call), text);
    else
        qd_server_log(QD_CONFIG_LOG_DEBUG, "%s: %s: %s", qd_call_path(call), qd_err_name(rc),
                      text);
    qd_call_finish(call, status, text, NULL);
}

static void finish_nomem(struct qd_call *call) {
    qd_error err = {0};
    finish_err(call, qd_error_set(&err, QD_ERR_NOMEM, "out of memory"), &err);
}

/* Unpack a request; on failure end the call with INVALID_ARGUMENT and return NULL. */
static ProtobufCMessage *unpack_or_finish(struct qd_call *call, const ProtobufCMessageDescriptor *d,
                                          const uint8_t *msg, size_t len) {
    qd_error err = {0};
    if (!msg) {
        finish_err(call,
                   qd_error_set(&err, QD_ERR_INVALID_ARG, "missing %s: the call carried no message",
                                d->short_name),
                   &err);
        return NULL;
    }
    ProtobufCMessage *m = protobuf_c_message_unpack(d, NULL, len, msg);
    if (!m)
        finish_err(call,
                   qd_error_set(&err, QD_ERR_INVALID_ARG,
                                "malformed %s: %zu bytes that do not decode as %s", d->short_name,
                                len, d->name),
                   &err);
    return m;
}

/* ---- spec: protobuf -> qd_spec --------------------------------------------------------------- */

static qd_err finite_field(const char *field, double v, qd_error *err) {
    if (isfinite(v)) return QD_OK;
    return qd_error_set(err, QD_ERR_INVALID_ARG, "%s: not a finite number", field);
}

static qd_spec_tri tri(bool set, protobuf_c_boolean v) {
    return !set ? QD_SPEC_UNSET : v ? QD_SPEC_TRUE : QD_SPEC_FALSE;
}

/* Copy p into *s (zeroed here). Checks what a qd_spec cannot carry; the rest is left to
 * qd_spec_validate. On failure *s holds nothing. */
static qd_err spec_from_pb(const Quantd__V1__QuantSpec *p, qd_spec *s, qd_error *err) {
    memset(s, 0, sizeof *s);
    if (p->method == QUANTD__V1__METHOD__METHOD_UNSPECIFIED)
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "spec.method: METHOD_UNSPECIFIED: a method is required (rtn, awq, "
                            "gptq, smoothquant, fp8 or w4a8-awq)");
    if ((int)p->method < 0 || (int)p->method >= QD_SPEC_METHOD_COUNT)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "spec.method: unknown value %d",
                            (int)p->method);
    if (p->format == QUANTD__V1__FORMAT__FORMAT_UNSPECIFIED)
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "spec.format: FORMAT_UNSPECIFIED: a format is required (awq, gptq, "
                            "compressed-tensors, modelopt or dashinfer)");
    if ((int)p->format < 0 || (int)p->format > QD_SPEC_FORMAT_DASHINFER)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "spec.format: unknown value %d",
                            (int)p->format);
    s->method = (qd_spec_method)p->method;
    s->format = (qd_spec_format)p->format;
    s->bits = p->bits;
    s->group_size = p->group_size;
    s->symmetric =
        tri(p->symmetric_opt_case == QUANTD__V1__QUANT_SPEC__SYMMETRIC_OPT_SYMMETRIC, p->symmetric);

    if (p->calibration) {
        const Quantd__V1__CalibrationSpec *c = p->calibration;
        if (c->digest[0]) {
            qd_err rc = check_digest_field("spec.calibration.digest", c->digest, err);
            if (rc != QD_OK) return rc;
            memcpy(s->calibration.digest, c->digest, QD_SPEC_DIGEST_HEX);
        }
        s->calibration.rows = c->rows;
        s->calibration.seq_len = c->seq_len;
    }

    const char *mname = method_word(s->method);
    bool awqs = s->method == QD_SPEC_METHOD_AWQ || s->method == QD_SPEC_METHOD_W4A8_AWQ;
    qd_err rc = QD_OK;
    switch (p->params_case) {
    case QUANTD__V1__QUANT_SPEC__PARAMS__NOT_SET:
        break;
    case QUANTD__V1__QUANT_SPEC__PARAMS_AWQ: {
        if (!awqs)
            return qd_error_set(err, QD_ERR_INVALID_ARG,
                                "spec.awq: parameters of methods awq and w4a8-awq, but the "
                                "method is %s",
                                mname);
        const Quantd__V1__AwqParams *a = p->awq;
        if ((rc = finite_field("spec.awq.max_shrink", a->max_shrink, err)) != QD_OK) return rc;
        s->awq.duo_scaling =
            tri(a->duo_scaling_opt_case == QUANTD__V1__AWQ_PARAMS__DUO_SCALING_OPT_DUO_SCALING,
                a->duo_scaling);
        s->awq.n_grid = a->n_grid;
        s->awq.apply_clip =
            tri(a->apply_clip_opt_case == QUANTD__V1__AWQ_PARAMS__APPLY_CLIP_OPT_APPLY_CLIP,
                a->apply_clip);
        s->awq.max_shrink = a->max_shrink;
        s->awq.clip_n_grid = a->clip_n_grid;
        s->awq.n_sample_tokens = a->n_sample_tokens;
        break;
    }
    case QUANTD__V1__QUANT_SPEC__PARAMS_GPTQ: {
        if (s->method != QD_SPEC_METHOD_GPTQ)
            return qd_error_set(err, QD_ERR_INVALID_ARG,
                                "spec.gptq: parameters of method gptq, but the method is %s",
                                mname);
        const Quantd__V1__GptqParams *g = p->gptq;
        if ((rc = finite_field("spec.gptq.damp_percent", g->damp_percent, err)) != QD_OK)
            return rc;
        s->gptq.damp_percent = g->damp_percent;
        s->gptq.act_order = g->act_order;
        s->gptq.static_groups = g->static_groups;
        bool ts_set = g->true_sequential_opt_case ==
                      QUANTD__V1__GPTQ_PARAMS__TRUE_SEQUENTIAL_OPT_TRUE_SEQUENTIAL;
        s->gptq.true_sequential = tri(ts_set, g->true_sequential);
        s->gptq.block_size = g->block_size;
        s->gptq.mse = g->mse;
        break;
    }
    case QUANTD__V1__QUANT_SPEC__PARAMS_SMOOTHQUANT: {
        if (s->method != QD_SPEC_METHOD_SMOOTHQUANT)
            return qd_error_set(err, QD_ERR_INVALID_ARG,
                                "spec.smoothquant: parameters of method smoothquant, but the "
                                "method is %s",
                                mname);
        const Quantd__V1__SmoothQuantParams *q = p->smoothquant;
        if (q->alpha_opt_case == QUANTD__V1__SMOOTH_QUANT_PARAMS__ALPHA_OPT_ALPHA) {
            if ((rc = finite_field("spec.smoothquant.alpha", q->alpha, err)) != QD_OK) return rc;
            s->smoothquant.has_alpha = true;
            s->smoothquant.alpha = q->alpha;
        }
        break;
    }
    case QUANTD__V1__QUANT_SPEC__PARAMS_FP8: {
        if (s->method != QD_SPEC_METHOD_FP8)
            return qd_error_set(err, QD_ERR_INVALID_ARG,
                                "spec.fp8: parameters of method fp8, but the method is %s%s",
                                mname,
                                s->method == QD_SPEC_METHOD_W4A8_AWQ
                                    ? " (whose fp8 half is fixed: tensor scales, static)"
                                    : "");
        const Quantd__V1__Fp8Params *f = p->fp8;
        if ((int)f->weight_scale < 0 || (int)f->weight_scale > 2)
            return qd_error_set(err, QD_ERR_INVALID_ARG, "spec.fp8.weight_scale: unknown value %d",
                                (int)f->weight_scale);
        if ((int)f->activation_scheme < 0 || (int)f->activation_scheme > 2)
            return qd_error_set(err, QD_ERR_INVALID_ARG,
                                "spec.fp8.activation_scheme: unknown value %d",
                                (int)f->activation_scheme);
        s->fp8.weight_scale = (qd_spec_fp8_weight_scale)f->weight_scale;
        s->fp8.activation_scheme = (qd_spec_fp8_activation)f->activation_scheme;
        break;
    }
    default:
        return qd_error_set(err, QD_ERR_INVALID_ARG, "spec.params: unknown case %d",
                            (int)p->params_case);
    }

    if (p->n_modules_to_not_convert) {
        s->modules_to_not_convert = calloc(p->n_modules_to_not_convert, sizeof(char *));
        if (!s->modules_to_not_convert)
            return qd_error_set(err, QD_ERR_NOMEM, "out of memory copying the spec");
        s->n_modules_to_not_convert = p->n_modules_to_not_convert;
        for (size_t i = 0; i < p->n_modules_to_not_convert; i++) {
            size_t n = strlen(p->modules_to_not_convert[i]) + 1;
            s->modules_to_not_convert[i] = malloc(n);
            if (!s->modules_to_not_convert[i]) {
                qd_spec_free(s);
                return qd_error_set(err, QD_ERR_NOMEM, "out of memory copying the spec");
            }
            memcpy(s->modules_to_not_convert[i], p->modules_to_not_convert[i], n);
        }
    }
    return QD_OK;
}

/* ---- qd_* -> protobuf ------------------------------------------------------------------------ */

static protobuf_c_boolean tri_value(qd_spec_tri t) { return t == QD_SPEC_TRUE; }

static Quantd__V1__QuantSpec *spec_to_pb(struct arena *a, const qd_spec *s) {
    Quantd__V1__QuantSpec *m = ANEW(a, Quantd__V1__QuantSpec, quantd__v1__quant_spec__descriptor);
    if (!m) return NULL;
    m->method = (Quantd__V1__Method)s->method;
    m->bits = s->bits;
    m->group_size = s->group_size;
    m->format = s->format <= QD_SPEC_FORMAT_DASHINFER ? (Quantd__V1__Format)s->format
                                                      : QUANTD__V1__FORMAT__FORMAT_UNSPECIFIED;
    if (s->symmetric != QD_SPEC_UNSET) {
        m->symmetric_opt_case = QUANTD__V1__QUANT_SPEC__SYMMETRIC_OPT_SYMMETRIC;
        m->symmetric = tri_value(s->symmetric);
    }
    if (qd_spec_needs_calibration(s) || s->calibration.digest[0]) {
        Quantd__V1__CalibrationSpec *c =
            ANEW(a, Quantd__V1__CalibrationSpec, quantd__v1__calibration_spec__descriptor);
        if (!c) return NULL;
        c->digest = astr(a, s->calibration.digest);
        c->rows = s->calibration.rows;
        c->seq_len = s->calibration.seq_len;
        m->calibration = c;
    }
    if (s->n_modules_to_not_convert) {
        m->modules_to_not_convert = aarray(a, s->n_modules_to_not_convert, sizeof(char *));
        if (!m->modules_to_not_convert) return NULL;
        m->n_modules_to_not_convert = s->n_modules_to_not_convert;
        for (size_t i = 0; i < s->n_modules_to_not_convert; i++)
            m->modules_to_not_convert[i] = astr(a, s->modules_to_not_convert[i]);
    }
    switch (s->method) {
    case QD_SPEC_METHOD_AWQ:
    case QD_SPEC_METHOD_W4A8_AWQ: {
        Quantd__V1__AwqParams *p =
            ANEW(a, Quantd__V1__AwqParams, quantd__v1__awq_params__descriptor);
        if (!p) return NULL;
        if (s->awq.duo_scaling != QD_SPEC_UNSET) {
            p->duo_scaling_opt_case = QUANTD__V1__AWQ_PARAMS__DUO_SCALING_OPT_DUO_SCALING;
            p->duo_scaling = tri_value(s->awq.duo_scaling);
        }
        p->n_grid = s->awq.n_grid;
        if (s->awq.apply_clip != QD_SPEC_UNSET) {
            p->apply_clip_opt_case = QUANTD__V1__AWQ_PARAMS__APPLY_CLIP_OPT_APPLY_CLIP;
            p->apply_clip = tri_value(s->awq.apply_clip);
        }
        p->max_shrink = s->awq.max_shrink;
        p->clip_n_grid = s->awq.clip_n_grid;
        p->n_sample_tokens = s->awq.n_sample_tokens;
        m->params_case = QUANTD__V1__QUANT_SPEC__PARAMS_AWQ;
        m->awq = p;
        break;
    }
    case QD_SPEC_METHOD_GPTQ: {
        Quantd__V1__GptqParams *p =
            ANEW(a, Quantd__V1__GptqParams, quantd__v1__gptq_params__descriptor);
        if (!p) return NULL;
        p->damp_percent = s->gptq.damp_percent;
        p->act_order = s->gptq.act_order;
        p->static_groups = s->gptq.static_groups;
        if (s->gptq.true_sequential != QD_SPEC_UNSET) {
            p->true_sequential_opt_case =
                QUANTD__V1__GPTQ_PARAMS__TRUE_SEQUENTIAL_OPT_TRUE_SEQUENTIAL;
            p->true_sequential = tri_value(s->gptq.true_sequential);
        }
        p->block_size = s->gptq.block_size;
        p->mse = s->gptq.mse;
        m->params_case = QUANTD__V1__QUANT_SPEC__PARAMS_GPTQ;
        m->gptq = p;
        break;
    }
    case QD_SPEC_METHOD_SMOOTHQUANT: {
        Quantd__V1__SmoothQuantParams *p =
            ANEW(a, Quantd__V1__SmoothQuantParams, quantd__v1__smooth_quant_params__descriptor);
        if (!p) return NULL;
        if (s->smoothquant.has_alpha) {
            p->alpha_opt_case = QUANTD__V1__SMOOTH_QUANT_PARAMS__ALPHA_OPT_ALPHA;
            p->alpha = s->smoothquant.alpha;
        }
        m->params_case = QUANTD__V1__QUANT_SPEC__PARAMS_SMOOTHQUANT;
        m->smoothquant = p;
        break;
    }
    case QD_SPEC_METHOD_FP8: {
        Quantd__V1__Fp8Params *p =
            ANEW(a, Quantd__V1__Fp8Params, quantd__v1__fp8_params__descriptor);
        if (!p) return NULL;
        p->weight_scale = (Quantd__V1__Fp8ScaleGranularity)s->fp8.weight_scale;
        p->activation_scheme = (Quantd__V1__Fp8ActivationScheme)s->fp8.activation_scheme;
        m->params_case = QUANTD__V1__QUANT_SPEC__PARAMS_FP8;
        m->fp8 = p;
        break;
    }
    default:
        break;
    }
    return m;
}

static Quantd__V1__Progress *progress_to_pb(struct arena *a, const qd_job_progress_info *p) {
    Quantd__V1__Progress *m = ANEW(a, Quantd__V1__Progress, quantd__v1__progress__descriptor);
    if (!m) return NULL;
    m->fraction = p->fraction;
    m->layer = p->layer;
    m->layer_count = p->layer_count;
    m->eta_unix_ms = p->eta_unix_ms;
    return m;
}

static Quantd__V1__JobError *job_error_to_pb(struct arena *a, const char *code, const char *msg) {
    if (!code[0] && !msg[0]) return NULL;
    Quantd__V1__JobError *e = ANEW(a, Quantd__V1__JobError, quantd__v1__job_error__descriptor);
    if (!e) return NULL;
    e->code = astr(a, code);
    e->message = astr(a, msg);
    return e;
}

static Quantd__V1__Job *job_to_pb(struct arena *a, const qd_job_snapshot *j) {
    Quantd__V1__Job *m = ANEW(a, Quantd__V1__Job, quantd__v1__job__descriptor);
    if (!m) return NULL;
    m->id = astr(a, j->id);
    m->state = (Quantd__V1__JobState)j->state;
    m->stage = (Quantd__V1__Stage)j->stage;
    m->progress = progress_to_pb(a, &j->progress);
    m->created_ms = j->created_ms;
    m->started_ms = j->started_ms;
    m->finished_ms = j->finished_ms;
    m->error = job_error_to_pb(a, j->error_code, j->error_message);
    m->artifact_id = astr(a, j->artifact_id);
    m->device = astr(a, j->device);
    m->cache_hit = j->cache_hit;
    m->model_digest = astr(a, j->model_digest);
    m->model_path = astr(a, j->model_path);
    m->spec = spec_to_pb(a, &j->spec);
    m->spec_digest = astr(a, j->spec_digest);
    m->label = astr(a, j->label);
    m->cancel_requested = j->cancel_requested;
    m->queue_position = j->queue_position;
    return m;
}

static Quantd__V1__FileEntry **files_to_pb(struct arena *a, const struct qd_store_file *f,
                                           size_t n) {
    Quantd__V1__FileEntry **v = aarray(a, n, sizeof *v);
    if (!v) return NULL;
    for (size_t i = 0; i < n; i++) {
        v[i] = ANEW(a, Quantd__V1__FileEntry, quantd__v1__file_entry__descriptor);
        if (!v[i]) return NULL;
        v[i]->name = astr(a, f[i].name);
        v[i]->size = f[i].size;
        v[i]->sha256 = astr(a, f[i].sha256);
    }
    return v;
}

static Quantd__V1__Artifact *artifact_to_pb(struct arena *a, const qd_artifact_entry *e) {
    Quantd__V1__Artifact *m = ANEW(a, Quantd__V1__Artifact, quantd__v1__artifact__descriptor);
    if (!m) return NULL;
    m->id = astr(a, e->id);
    m->model_digest = astr(a, e->model_digest);
    m->spec_digest = astr(a, e->spec_digest);
    m->format = e->format <= QD_SPEC_FORMAT_DASHINFER ? (Quantd__V1__Format)e->format
                                                      : QUANTD__V1__FORMAT__FORMAT_UNSPECIFIED;
    if (e->n_files) {
        m->files = files_to_pb(a, e->files, e->n_files);
        if (!m->files) return NULL;
        m->n_files = e->n_files;
    }
    m->total_bytes = e->total_bytes;
    m->created_ms = e->created_ms;
    m->last_used_ms = e->last_used_ms;
    m->spec = spec_to_pb(a, &e->spec);
    char hex[QD_STORE_HEX_LEN + 1];
    qd_error derr = {0};
    if (e->n_files && qd_store_manifest_digest(e->files, e->n_files, hex, &derr) == QD_OK)
        m->manifest_digest = astr(a, hex);
    char ver[32];
    snprintf(ver, sizeof ver, "%d", QD_NUMERICS_VERSION);
    m->engine_version = astr(a, ver);
    m->job_id = astr(a, e->job_id);
    return m;
}

static Quantd__V1__BundleStatus *bundle_to_pb(struct arena *a, const qd_bundle_status *st) {
    Quantd__V1__BundleStatus *m =
        ANEW(a, Quantd__V1__BundleStatus, quantd__v1__bundle_status__descriptor);
    if (!m) return NULL;
    m->digest = astr(a, st->digest);
    m->kind = (Quantd__V1__BundleKind)st->kind;
    m->complete = st->complete;
    m->held_bytes = st->held_bytes;
    m->total_bytes = st->total_bytes;
    if (st->n_files) {
        m->files = aarray(a, st->n_files, sizeof *m->files);
        if (!m->files) return NULL;
        m->n_files = st->n_files;
        for (size_t i = 0; i < st->n_files; i++) {
            Quantd__V1__FileStatus *f =
                ANEW(a, Quantd__V1__FileStatus, quantd__v1__file_status__descriptor);
            if (!f) return NULL;
            f->name = astr(a, st->files[i].name);
            f->size = st->files[i].size;
            f->held_bytes = st->files[i].held_bytes;
            f->complete = st->files[i].complete;
            m->files[i] = f;
        }
    }
    return m;
}

static Quantd__V1__JobEvent *event_to_pb(struct arena *a, const char *job_id,
                                         const qd_job_event *e) {
    Quantd__V1__JobEvent *m = ANEW(a, Quantd__V1__JobEvent, quantd__v1__job_event__descriptor);
    if (!m) return NULL;
    m->job_id = astr(a, job_id);
    m->seq = e->seq;
    m->time_ms = e->time_ms;
    m->progress = progress_to_pb(a, &e->progress);
    switch (e->kind) {
    case QD_EVENT_QUEUED:
        m->event_case = QUANTD__V1__JOB_EVENT__EVENT_QUEUED;
        m->queued = e->queued;
        break;
    case QD_EVENT_STAGE:
        m->event_case = QUANTD__V1__JOB_EVENT__EVENT_STAGE;
        m->stage = (Quantd__V1__Stage)e->stage;
        break;
    case QD_EVENT_LAYER: {
        Quantd__V1__LayerDone *l =
            ANEW(a, Quantd__V1__LayerDone, quantd__v1__layer_done__descriptor);
        if (!l) return NULL;
        l->index = e->layer.index;
        l->count = e->layer.count;
        l->error = e->layer.error;
        l->duration_ms = e->layer.duration_ms;
        int n = e->layer.n_modules;
        if (n < 0) n = 0;
        if (n > (int)(sizeof e->layer.modules / sizeof e->layer.modules[0]))
            n = (int)(sizeof e->layer.modules / sizeof e->layer.modules[0]);
        if (n > 0) {
            l->modules = aarray(a, (size_t)n, sizeof *l->modules);
            if (!l->modules) return NULL;
            l->n_modules = (size_t)n;
            for (int i = 0; i < n; i++) {
                Quantd__V1__LayerDone__Module *mo =
                    ANEW(a, Quantd__V1__LayerDone__Module,
                         quantd__v1__layer_done__module__descriptor);
                if (!mo) return NULL;
                char name[sizeof e->layer.modules[i].name + 1];
                memcpy(name, e->layer.modules[i].name, sizeof e->layer.modules[i].name);
                name[sizeof e->layer.modules[i].name] = '\0';
                mo->name = astr(a, name);
                mo->error = e->layer.modules[i].error;
                l->modules[i] = mo;
            }
        }
        m->event_case = QUANTD__V1__JOB_EVENT__EVENT_LAYER;
        m->layer = l;
        break;
    }
    case QD_EVENT_DONE: {
        Quantd__V1__JobDone *d = ANEW(a, Quantd__V1__JobDone, quantd__v1__job_done__descriptor);
        if (!d) return NULL;
        d->state = (Quantd__V1__JobState)e->done_state;
        d->error = job_error_to_pb(a, e->error_code, e->error_message);
        d->artifact_id = astr(a, e->artifact_id);
        m->event_case = QUANTD__V1__JOB_EVENT__EVENT_DONE;
        m->done = d;
        break;
    }
    case QD_EVENT_TICK:
    default:
        m->event_case = QUANTD__V1__JOB_EVENT__EVENT_TICK;
        m->tick = 1;
        break;
    }
    return m;
}

/* The manifest's files as the service takes them: names borrowed from mf, sha256s checked
 * (the service checks names, order and sizes). *ret is malloc'd. */
static qd_err manifest_from_pb(const char *field, const Quantd__V1__Manifest *mf,
                               struct qd_store_file **ret, size_t *ret_n, qd_error *err) {
    *ret = NULL;
    *ret_n = 0;
    if (!mf || mf->n_files == 0)
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "%s: no files (a bundle has at least one)", field);
    struct qd_store_file *f = calloc(mf->n_files, sizeof *f);
    if (!f) return qd_error_set(err, QD_ERR_NOMEM, "out of memory reading %s", field);
    for (size_t i = 0; i < mf->n_files; i++) {
        const Quantd__V1__FileEntry *e = mf->files[i];
        if (!is_digest(e->sha256)) {
            char name[64];
            snprintf(name, sizeof name, "%s.files[%zu].sha256", field, i);
            qd_err rc = check_digest_field(name, e->sha256, err);
            free(f);
            return rc;
        }
        f[i].name = e->name;
        f[i].size = e->size;
        memcpy(f[i].sha256, e->sha256, QD_STORE_HEX_LEN + 1);
    }
    *ret = f;
    *ret_n = mf->n_files;
    return QD_OK;
}

/* ---- unary methods --------------------------------------------------------------------------- */

typedef qd_err (*unary_fn)(struct qd_rpc *rpc, const qd_caller *who,
                           const ProtobufCMessage *req, struct arena *a, ProtobufCMessage **ret,
                           qd_error *err);

static void unary_step(struct qd_call *call, qd_call_event ev, const uint8_t *msg, size_t len,
                       const struct ident *id, const ProtobufCMessageDescriptor *d, unary_fn fn) {
    (void)ev; /* unary methods only ever see START */
    ProtobufCMessage *req = unpack_or_finish(call, d, msg, len);
    if (!req) return;
    struct arena a = {0};
    ProtobufCMessage *resp = NULL;
    qd_error err = {0};
    qd_caller who = caller_of(id);
    qd_err rc = fn(qd_call_app(call), &who, req, &a, &resp, &err);
    if (rc == QD_OK && (a.failed || !resp))
        rc = qd_error_set(&err, QD_ERR_NOMEM, "out of memory building the response");
    if (rc == QD_OK)
        qd_call_finish(call, GRPC_STATUS_OK, "", resp);
    else
        finish_err(call, rc, &err);
    arena_free(&a);
    protobuf_c_message_free_unpacked(req, NULL);
}

#define UNARY_STEP(fn, desc)                                                                 \
    static void fn##_step(struct qd_call *call, qd_call_event ev, const uint8_t *msg,        \
                          size_t len, const struct ident *id) {                              \
        unary_step(call, ev, msg, len, id, &(desc), fn);                                     \
    }

/* StatModel */
static qd_err stat_model(struct qd_rpc *rpc, const qd_caller *who, const ProtobufCMessage *m,
                         struct arena *a, ProtobufCMessage **ret, qd_error *err) {
    const Quantd__V1__StatModelRequest *req = (const void *)m;
    qd_bundle_status st = {0};
    qd_err rc;
    switch (req->key_case) {
    case QUANTD__V1__STAT_MODEL_REQUEST__KEY_DIGEST:
        if ((rc = check_digest_field("digest", req->digest, err)) != QD_OK) return rc;
        rc = qd_service_bundle_stat(rpc->svc, who, req->digest, NULL, 0, &st, err);
        break;
    case QUANTD__V1__STAT_MODEL_REQUEST__KEY_MANIFEST: {
        struct qd_store_file *files;
        size_t n;
        if ((rc = manifest_from_pb("manifest", req->manifest, &files, &n, err)) != QD_OK)
            return rc;
        rc = qd_service_bundle_stat(rpc->svc, who, NULL, files, n, &st, err);
        free(files);
        break;
    }
    default:
        return qd_error_set(err, QD_ERR_INVALID_ARG, "key: set digest or manifest");
    }
    if (rc != QD_OK) return rc;
    Quantd__V1__StatModelResponse *r =
        ANEW(a, Quantd__V1__StatModelResponse, quantd__v1__stat_model_response__descriptor);
    if (r) r->status = bundle_to_pb(a, &st);
    qd_bundle_status_free(&st);
    *ret = (ProtobufCMessage *)r;
    return QD_OK;
}
UNARY_STEP(stat_model, quantd__v1__stat_model_request__descriptor)

static const char *outcome_word(qd_quantize_outcome o) {
    switch (o) {
    case QD_QUANTIZE_QUEUED: return "queued";
    case QD_QUANTIZE_JOINED: return "joined an equal job";
    case QD_QUANTIZE_CACHE_HIT: return "answered from the cache";
    }
    return "?";
}

/* Quantize */
static qd_err quantize(struct qd_rpc *rpc, const qd_caller *who, const ProtobufCMessage *m,
                       struct arena *a, ProtobufCMessage **ret, qd_error *err) {
    const Quantd__V1__QuantizeRequest *req = (const void *)m;
    qd_quantize_request q = {0};
    qd_err rc;
    switch (req->model_case) {
    case QUANTD__V1__QUANTIZE_REQUEST__MODEL_MODEL_DIGEST:
        if ((rc = check_digest_field("model_digest", req->model_digest, err)) != QD_OK) return rc;
        q.model_digest = req->model_digest;
        break;
    case QUANTD__V1__QUANTIZE_REQUEST__MODEL_MODEL_PATH:
        if (!req->model_path[0])
            return qd_error_set(err, QD_ERR_INVALID_ARG, "model_path: empty");
        q.model_path = req->model_path;
        break;
    default:
        return qd_error_set(err, QD_ERR_INVALID_ARG, "model: set model_digest or model_path");
    }
    if (!req->spec) return qd_error_set(err, QD_ERR_INVALID_ARG, "spec: required");
    size_t label_len = strlen(req->label);
    if (label_len > LABEL_MAX)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "label: %zu bytes, at most %d", label_len,
                            LABEL_MAX);

    qd_spec spec;
    if ((rc = spec_from_pb(req->spec, &spec, err)) != QD_OK) return rc;
    /* What the method reads decides whether a calibration message may be there, and whether
     * an empty digest means the server's default set. */
    qd_spec probe;
    if ((rc = qd_spec_copy(&probe, &spec, err)) != QD_OK) {
        qd_spec_free(&spec);
        return rc;
    }
    qd_spec_defaults(&probe);
    bool needs = qd_spec_needs_calibration(&probe);
    qd_spec_free(&probe);
    if (!needs && req->spec->calibration) {
        rc = qd_error_set(err, QD_ERR_INVALID_ARG,
                          "spec.calibration: method %s%s reads no calibration data; leave "
                          "calibration unset",
                          method_word(spec.method),
                          spec.method == QD_SPEC_METHOD_FP8 ? " with dynamic activation scales"
                                                            : "");
        qd_spec_free(&spec);
        return rc;
    }
    if (needs && !spec.calibration.digest[0]) {
        qd_service_info info;
        if ((rc = qd_service_info_get(rpc->svc, &info, err)) != QD_OK) {
            qd_spec_free(&spec);
            return rc;
        }
        if (!is_digest(info.default_calibration_digest)) {
            qd_spec_free(&spec);
            return qd_error_set(err, QD_ERR_INVALID_ARG,
                                "spec.calibration.digest: empty, and this server has no default "
                                "calibration set: upload one (PutModel, BUNDLE_KIND_CALIBRATION) "
                                "and give its digest");
        }
        memcpy(spec.calibration.digest, info.default_calibration_digest, QD_SPEC_DIGEST_HEX);
    }
    q.spec = &spec;
    q.label = label_len ? req->label : NULL;
    q.caller = who;

    qd_quantize_outcome outcome = 0;
    qd_job_snapshot job = {0};
    qd_artifact_entry art = {0};
    qd_spec_warnings warn = {0};
    rc = qd_service_quantize(rpc->svc, &q, &outcome, &job, &art, &warn, err);
    if (rc == QD_OK) {
        qd_server_log(QD_CONFIG_LOG_INFO, "job %s: %s (model %.12s, %s into %s%s%s%s%s)", job.id,
                      outcome_word(outcome), job.model_digest, method_word(spec.method),
                      format_word(spec.format), job.label ? ", label " : "",
                      job.label ? job.label : "", who->owner[0] ? ", owner " : "", who->owner);
        for (size_t i = 0; i < warn.n && i < QD_SPEC_WARN_MAX; i++)
            qd_server_log(QD_CONFIG_LOG_INFO, "job %s: warning: %s", job.id, warn.msg[i]);
        Quantd__V1__QuantizeResponse *r =
            ANEW(a, Quantd__V1__QuantizeResponse, quantd__v1__quantize_response__descriptor);
        if (r) {
            r->outcome = (Quantd__V1__QuantizeOutcome)outcome;
            r->job = job_to_pb(a, &job);
            if (outcome == QD_QUANTIZE_CACHE_HIT) r->artifact = artifact_to_pb(a, &art);
        }
        *ret = (ProtobufCMessage *)r;
    }
    qd_job_snapshot_free(&job);
    qd_artifact_entry_free(&art);
    qd_spec_free(&spec);
    return rc;
}
UNARY_STEP(quantize, quantd__v1__quantize_request__descriptor)

/* GetJob */
static qd_err get_job(struct qd_rpc *rpc, const qd_caller *who, const ProtobufCMessage *m,
                      struct arena *a, ProtobufCMessage **ret, qd_error *err) {
    const Quantd__V1__GetJobRequest *req = (const void *)m;
    qd_err rc = check_id_field("job_id", req->job_id, err);
    if (rc != QD_OK) return rc;
    qd_job_snapshot job = {0};
    if ((rc = qd_service_job_get(rpc->svc, who, req->job_id, &job, err)) != QD_OK) return rc;
    Quantd__V1__GetJobResponse *r =
        ANEW(a, Quantd__V1__GetJobResponse, quantd__v1__get_job_response__descriptor);
    if (r) r->job = job_to_pb(a, &job);
    qd_job_snapshot_free(&job);
    *ret = (ProtobufCMessage *)r;
    return QD_OK;
}
UNARY_STEP(get_job, quantd__v1__get_job_request__descriptor)

/* The page size a list request asks for, clamped. */
static size_t page_size(uint32_t asked) {
    if (asked == 0) return PAGE_DEFAULT;
    return asked > PAGE_MAX ? PAGE_MAX : asked;
}

/* Framed size of one element of a repeated message field. */
static size_t framed(const ProtobufCMessage *m) {
    return protobuf_c_message_get_packed_size(m) + 11; /* tag + length varint, at most */
}

/* ListJobs */
static qd_err list_jobs(struct qd_rpc *rpc, const qd_caller *who, const ProtobufCMessage *m,
                        struct arena *a, ProtobufCMessage **ret, qd_error *err) {
    const Quantd__V1__ListJobsRequest *req = (const void *)m;
    char q[QD_YAML_EXCERPT_BUF];
    qd_err rc;
    if (req->model_digest[0] &&
        (rc = check_digest_field("model_digest", req->model_digest, err)) != QD_OK)
        return rc;
    if (strlen(req->page_token) > ID_ARG_MAX)
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "page_token: '%s' is not a token from a previous ListJobs",
                            quote(req->page_token, q));
    qd_job_state *states = NULL;
    if (req->n_states) {
        states = calloc(req->n_states, sizeof *states);
        if (!states) return qd_error_set(err, QD_ERR_NOMEM, "out of memory");
        for (size_t i = 0; i < req->n_states; i++) {
            int v = (int)req->states[i];
            if (v <= QD_JOB_UNSPECIFIED || v > QD_JOB_CANCELLED) {
                free(states);
                if (v == QD_JOB_UNSPECIFIED)
                    return qd_error_set(err, QD_ERR_INVALID_ARG,
                                        "states[%zu]: JOB_STATE_UNSPECIFIED is not a state", i);
                return qd_error_set(err, QD_ERR_INVALID_ARG, "states[%zu]: unknown value %d", i,
                                    v);
            }
            states[i] = (qd_job_state)v;
        }
    }
    size_t limit = page_size(req->page_size);
    qd_job_snapshot *jobs = NULL;
    size_t n = 0;
    bool more = false;
    rc = qd_service_job_list(rpc->svc, who, states, req->n_states,
                             req->model_digest[0] ? req->model_digest : NULL,
                             req->page_token[0] ? req->page_token : NULL, limit, &jobs, &n, &more,
                             err);
    free(states);
    if (rc == QD_ERR_NOT_FOUND && req->page_token[0]) {
        qd_error_clear(err);
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "page_token: '%s' names no job (gone, or not a token from ListJobs); "
                            "list again from the first page",
                            quote(req->page_token, q));
    }
    if (rc != QD_OK) return rc;
    Quantd__V1__ListJobsResponse *r =
        ANEW(a, Quantd__V1__ListJobsResponse, quantd__v1__list_jobs_response__descriptor);
    if (r && n) r->jobs = aarray(a, n, sizeof *r->jobs);
    if (r && (r->jobs || n == 0)) {
        size_t room = rpc->max_message_bytes - LIST_MARGIN, used = 0;
        for (size_t i = 0; i < n; i++) {
            Quantd__V1__Job *j = job_to_pb(a, &jobs[i]);
            if (!j) break;
            size_t sz = framed(&j->base);
            /* A page ends early rather than outgrow the largest message. */
            if (r->n_jobs > 0 && used + sz > room) {
                more = true;
                break;
            }
            used += sz;
            r->jobs[r->n_jobs++] = j;
        }
        if (more && r->n_jobs) r->next_page_token = astr(a, r->jobs[r->n_jobs - 1]->id);
    }
    for (size_t i = 0; i < n; i++) qd_job_snapshot_free(&jobs[i]);
    free(jobs);
    *ret = (ProtobufCMessage *)r;
    return QD_OK;
}
UNARY_STEP(list_jobs, quantd__v1__list_jobs_request__descriptor)

/* CancelJob */
static qd_err cancel_job(struct qd_rpc *rpc, const qd_caller *who, const ProtobufCMessage *m,
                         struct arena *a, ProtobufCMessage **ret, qd_error *err) {
    const Quantd__V1__CancelJobRequest *req = (const void *)m;
    qd_err rc = check_id_field("job_id", req->job_id, err);
    if (rc != QD_OK) return rc;
    qd_job_snapshot job = {0};
    rc = qd_service_job_cancel(rpc->svc, who, req->job_id, &job, err);
    if (rc == QD_ERR_PRECONDITION) {
        /* The proto answers a job already CANCELLED unchanged; only SUCCEEDED and FAILED
         * jobs are FAILED_PRECONDITION. */
        qd_job_snapshot now = {0};
        qd_error e2 = {0};
        if (qd_service_job_get(rpc->svc, who, req->job_id, &now, &e2) == QD_OK &&
            now.state == QD_JOB_CANCELLED) {
            qd_error_clear(err);
            job = now;
            rc = QD_OK;
        } else {
            qd_job_snapshot_free(&now);
        }
    } else if (rc == QD_OK) {
        qd_server_log(QD_CONFIG_LOG_INFO, "job %s: cancel requested (now %s)", job.id,
                      job.state == QD_JOB_CANCELLED ? "cancelled" : "stopping at the next layer");
    }
    if (rc != QD_OK) return rc;
    Quantd__V1__CancelJobResponse *r =
        ANEW(a, Quantd__V1__CancelJobResponse, quantd__v1__cancel_job_response__descriptor);
    if (r) r->job = job_to_pb(a, &job);
    qd_job_snapshot_free(&job);
    *ret = (ProtobufCMessage *)r;
    return QD_OK;
}
UNARY_STEP(cancel_job, quantd__v1__cancel_job_request__descriptor)

/* ListArtifacts: most recently used first, then by id; a page token is the sort key of the
 * last artifact sent ("<last_used_ms>.<id>"), so deleting artifacts does not shift pages. */
static int cmp_mru(const void *pa, const void *pb) {
    const qd_artifact_entry *x = *(const qd_artifact_entry *const *)pa;
    const qd_artifact_entry *y = *(const qd_artifact_entry *const *)pb;
    if (x->last_used_ms != y->last_used_ms) return x->last_used_ms > y->last_used_ms ? -1 : 1;
    return strcmp(x->id, y->id);
}

/* Whether e sorts after the key (used, id) in cmp_mru order. */
static bool after_key(const qd_artifact_entry *e, int64_t used, const char *id) {
    if (e->last_used_ms != used) return e->last_used_ms < used;
    return strcmp(e->id, id) > 0;
}

static bool parse_token(const char *tok, int64_t *used, const char **id) {
    const char *dot = strchr(tok, '.');
    if (!dot || dot == tok || dot - tok > 19 || !dot[1]) return false;
    int64_t v = 0;
    for (const char *p = tok; p < dot; p++) {
        if (*p < '0' || *p > '9') return false;
        if (v > (INT64_MAX - (*p - '0')) / 10) return false;
        v = v * 10 + (*p - '0');
    }
    *used = v;
    *id = dot + 1;
    return true;
}

static qd_err list_artifacts(struct qd_rpc *rpc, const qd_caller *who, const ProtobufCMessage *m,
                             struct arena *a, ProtobufCMessage **ret, qd_error *err) {
    const Quantd__V1__ListArtifactsRequest *req = (const void *)m;
    char q[QD_YAML_EXCERPT_BUF];
    qd_err rc;
    if (req->model_digest[0] &&
        (rc = check_digest_field("model_digest", req->model_digest, err)) != QD_OK)
        return rc;
    if ((int)req->format < 0 || (int)req->format > QD_SPEC_FORMAT_DASHINFER)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "format: unknown value %d",
                            (int)req->format);
    int64_t tok_used = 0;
    const char *tok_id = NULL;
    if (req->page_token[0] && (strlen(req->page_token) > ID_ARG_MAX ||
                               !parse_token(req->page_token, &tok_used, &tok_id)))
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "page_token: '%s' is not a token from a previous ListArtifacts",
                            quote(req->page_token, q));
    qd_artifact_entry *all = NULL;
    size_t n = 0;
    if ((rc = qd_service_artifact_list(rpc->svc, who, &all, &n, err)) != QD_OK) return rc;
    const qd_artifact_entry **sel = calloc(n ? n : 1, sizeof *sel);
    size_t n_sel = 0;
    if (!sel) {
        rc = qd_error_set(err, QD_ERR_NOMEM, "out of memory");
    } else {
        for (size_t i = 0; i < n; i++) {
            const qd_artifact_entry *e = &all[i];
            if (req->model_digest[0] && strcmp(e->model_digest, req->model_digest) != 0) continue;
            if (req->format && (int)e->format != (int)req->format) continue;
            if (tok_id && !after_key(e, tok_used, tok_id)) continue;
            sel[n_sel++] = e;
        }
        qsort(sel, n_sel, sizeof *sel, cmp_mru);
        size_t limit = page_size(req->page_size);
        Quantd__V1__ListArtifactsResponse *r =
            ANEW(a, Quantd__V1__ListArtifactsResponse,
                 quantd__v1__list_artifacts_response__descriptor);
        size_t take = n_sel < limit ? n_sel : limit;
        if (r && take) r->artifacts = aarray(a, take, sizeof *r->artifacts);
        if (r && (r->artifacts || take == 0)) {
            size_t room = rpc->max_message_bytes - LIST_MARGIN, used = 0;
            bool more = n_sel > take;
            for (size_t i = 0; i < take; i++) {
                Quantd__V1__Artifact *x = artifact_to_pb(a, sel[i]);
                if (!x) break;
                size_t sz = framed(&x->base);
                if (r->n_artifacts > 0 && used + sz > room) {
                    more = true;
                    break;
                }
                used += sz;
                r->artifacts[r->n_artifacts++] = x;
            }
            if (more && r->n_artifacts) {
                const qd_artifact_entry *last = sel[r->n_artifacts - 1];
                char tok[32 + QD_STORE_ID_LEN + 8];
                snprintf(tok, sizeof tok, "%" PRId64 ".%s", last->last_used_ms, last->id);
                r->next_page_token = astr(a, tok);
            }
        }
        *ret = (ProtobufCMessage *)r;
    }
    free(sel);
    for (size_t i = 0; i < n; i++) qd_artifact_entry_free(&all[i]);
    free(all);
    return rc;
}
UNARY_STEP(list_artifacts, quantd__v1__list_artifacts_request__descriptor)

/* DeleteArtifact */
static qd_err delete_artifact(struct qd_rpc *rpc, const qd_caller *who, const ProtobufCMessage *m,
                              struct arena *a, ProtobufCMessage **ret, qd_error *err) {
    const Quantd__V1__DeleteArtifactRequest *req = (const void *)m;
    qd_err rc = check_id_field("artifact_id", req->artifact_id, err);
    if (rc != QD_OK) return rc;
    if ((rc = qd_service_artifact_delete(rpc->svc, who, req->artifact_id, err)) != QD_OK)
        return rc;
    qd_server_log(QD_CONFIG_LOG_INFO, "artifact %s: deleted", req->artifact_id);
    *ret = anew(a, &quantd__v1__delete_artifact_response__descriptor);
    return QD_OK;
}
UNARY_STEP(delete_artifact, quantd__v1__delete_artifact_request__descriptor)

/* GetServerInfo */
static uint64_t host_memory(void) {
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
    return pages > 0 && page > 0 ? (uint64_t)pages * (uint64_t)page : 0;
}

static qd_err get_server_info(struct qd_rpc *rpc, const qd_caller *who, const ProtobufCMessage *m,
                              struct arena *a, ProtobufCMessage **ret, qd_error *err) {
    (void)m;
    (void)who; /* the server's facts are everyone's */
    qd_service_info info;
    memset(&info, 0, sizeof info);
    qd_err rc = qd_service_info_get(rpc->svc, &info, err);
    if (rc != QD_OK) return rc;
    Quantd__V1__GetServerInfoResponse *r = ANEW(a, Quantd__V1__GetServerInfoResponse,
                                                quantd__v1__get_server_info_response__descriptor);
    if (!r) return QD_OK;
    info.version[sizeof info.version - 1] = '\0';
    info.engine_version[sizeof info.engine_version - 1] = '\0';
    r->version = astr(a, info.version[0] ? info.version : QD_VERSION);
    r->engine_version = astr(a, info.engine_version);
    int nd = info.n_devices;
    if (nd < 0) nd = 0;
    if (nd > 8) nd = 8;
    if (nd) {
        r->devices = aarray(a, (size_t)nd, sizeof *r->devices);
        if (!r->devices) return QD_OK;
        for (int i = 0; i < nd; i++) {
            /* "cpu (2 threads)" -> name "cpu", description "(2 threads)" */
            char d[sizeof info.devices[0] + 1];
            memcpy(d, info.devices[i], sizeof info.devices[0]);
            d[sizeof info.devices[0]] = '\0';
            char *sp = strchr(d, ' ');
            const char *desc = "";
            if (sp) {
                *sp = '\0';
                desc = sp + 1;
            }
            Quantd__V1__Device *dv = ANEW(a, Quantd__V1__Device, quantd__v1__device__descriptor);
            if (!dv) return QD_OK;
            dv->name = astr(a, d);
            dv->description = astr(a, desc);
            dv->memory_bytes = strcmp(d, "cpu") == 0 ? host_memory() : 0;
            r->devices[r->n_devices++] = dv;
        }
    }
    if (rpc->n_support) {
        r->methods = aarray(a, rpc->n_support, sizeof *r->methods);
        if (!r->methods) return QD_OK;
        for (size_t i = 0; i < rpc->n_support; i++) {
            const struct method_support *s = &rpc->support[i];
            Quantd__V1__MethodSupport *ms =
                ANEW(a, Quantd__V1__MethodSupport, quantd__v1__method_support__descriptor);
            if (!ms) return QD_OK;
            ms->method = (Quantd__V1__Method)s->method;
            ms->formats = aarray(a, s->n_formats, sizeof *ms->formats);
            ms->bits = aarray(a, s->n_bits, sizeof *ms->bits);
            if ((s->n_formats && !ms->formats) || (s->n_bits && !ms->bits)) return QD_OK;
            if (s->n_formats) memcpy(ms->formats, s->formats, s->n_formats * sizeof *s->formats);
            if (s->n_bits) memcpy(ms->bits, s->bits, s->n_bits * sizeof *s->bits);
            ms->n_formats = s->n_formats;
            ms->n_bits = s->n_bits;
            r->methods[r->n_methods++] = ms;
        }
    }
    if (rpc->n_formats) {
        r->formats = aarray(a, rpc->n_formats, sizeof *r->formats);
        if (!r->formats) return QD_OK;
        memcpy(r->formats, rpc->formats, rpc->n_formats * sizeof *rpc->formats);
        r->n_formats = rpc->n_formats;
    }
    Quantd__V1__CacheUsage *c =
        ANEW(a, Quantd__V1__CacheUsage, quantd__v1__cache_usage__descriptor);
    if (!c) return QD_OK;
    c->artifact_bytes = info.cache_bytes;
    c->artifact_limit_bytes = info.cache_limit;
    c->artifact_count = info.n_artifacts > 0 ? (uint32_t)info.n_artifacts : 0;
    c->blob_bytes = info.blob_bytes;
    r->cache = c;
    Quantd__V1__Limits *l = ANEW(a, Quantd__V1__Limits, quantd__v1__limits__descriptor);
    if (!l) return QD_OK;
    uint64_t chunk = atomic_load(&rpc->chunk_bytes);
    l->max_chunk_bytes = chunk > UINT32_MAX ? UINT32_MAX : (uint32_t)chunk;
    l->max_manifest_files = info.max_manifest_files;
    l->max_bundle_bytes = info.max_bundle_bytes;
    l->max_queued_jobs = info.max_queued_jobs;
    r->limits = l;
    info.default_calibration_digest[QD_STORE_HEX_LEN] = '\0';
    r->default_calibration_digest = astr(a, info.default_calibration_digest);
    r->queued_jobs = info.n_jobs_queued > 0 ? (uint32_t)info.n_jobs_queued : 0;
    r->running_jobs = info.n_jobs_running > 0 ? (uint32_t)info.n_jobs_running : 0;
    *ret = (ProtobufCMessage *)r;
    return QD_OK;
}
UNARY_STEP(get_server_info, quantd__v1__get_server_info_request__descriptor)

/* ---- grpc.health.v1.Health ------------------------------------------------------------------- */

static bool health_known(const char *service) {
    return service[0] == '\0' || strcmp(service, "quantd.v1.Quantd") == 0;
}

#define SERVING GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
#define NOT_SERVING GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING
#define SERVICE_UNKNOWN GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN

/* NOT_SERVING once the server drains. */
static int health_now(struct qd_call *call) {
    return qd_call_draining(call) ? NOT_SERVING : SERVING;
}

static void health_check_step(struct qd_call *call, qd_call_event ev, const uint8_t *msg,
                              size_t len) {
    (void)ev;
    Grpc__Health__V1__HealthCheckRequest *req = (void *)unpack_or_finish(
        call, &grpc__health__v1__health_check_request__descriptor, msg, len);
    if (!req) return;
    if (!health_known(req->service)) {
        char q[QD_YAML_EXCERPT_BUF], d[QD_YAML_EXCERPT_BUF + 64];
        snprintf(d, sizeof d, "service: unknown service '%s'", quote(req->service, q));
        qd_call_finish(call, GRPC_STATUS_NOT_FOUND, d, NULL);
    } else {
        Grpc__Health__V1__HealthCheckResponse r = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
        r.status = (Grpc__Health__V1__HealthCheckResponse__ServingStatus)health_now(call);
        qd_call_finish(call, GRPC_STATUS_OK, "", &r.base);
    }
    protobuf_c_message_free_unpacked(&req->base, NULL);
}

/* Health/Watch: the status now, then each change. Draining is the last change: after
 * sending NOT_SERVING the stream ends, so it does not hold the shutdown up. */
struct health_watch {
    bool known;
    int last; /* status last sent; -1 none */
};

static void health_watch_step(struct qd_call *call, qd_call_event ev, const uint8_t *msg,
                              size_t len) {
    struct health_watch *st = qd_call_state(call);
    if (ev == QD_CALL_START) {
        Grpc__Health__V1__HealthCheckRequest *req = (void *)unpack_or_finish(
            call, &grpc__health__v1__health_check_request__descriptor, msg, len);
        if (!req) return;
        st = calloc(1, sizeof *st);
        if (!st) {
            protobuf_c_message_free_unpacked(&req->base, NULL);
            finish_nomem(call);
            return;
        }
        st->known = health_known(req->service);
        st->last = -1;
        qd_call_set_state(call, st);
        protobuf_c_message_free_unpacked(&req->base, NULL);
    }
    int now = st->known ? health_now(call) : SERVICE_UNKNOWN;
    if (now != st->last) {
        Grpc__Health__V1__HealthCheckResponse r = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
        r.status = (Grpc__Health__V1__HealthCheckResponse__ServingStatus)now;
        st->last = now;
        qd_call_send(call, &r.base);
    } else if (qd_call_draining(call)) {
        qd_call_finish(call, GRPC_STATUS_UNAVAILABLE, "quantd is shutting down", NULL);
    } else {
        qd_call_wait(call, -1);
    }
}

static void health_watch_cleanup(struct qd_call *call) { free(qd_call_state(call)); }

/* ---- PutModel -------------------------------------------------------------------------------- */

struct put_state {
    struct ident id; /* the caller */
    struct qd_upload *up;
    Quantd__V1__PutModelRequest *header; /* kept: the manifest's names are borrowed */
    struct qd_store_file *files;
    size_t n_files;
    uint64_t chunks, bytes;
};

static const char *kind_word(qd_bundle_kind k) {
    return k == QD_BUNDLE_MODEL ? "model" : k == QD_BUNDLE_CALIBRATION ? "calibration" : "?";
}

static qd_err put_header(struct qd_rpc *rpc, struct put_state *st,
                         Quantd__V1__PutModelRequest *req, qd_error *err) {
    if (req->msg_case == QUANTD__V1__PUT_MODEL_REQUEST__MSG_CHUNK)
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "PutModelRequest: the first message must be a header, got a chunk");
    if (req->msg_case != QUANTD__V1__PUT_MODEL_REQUEST__MSG_HEADER)
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "PutModelRequest: neither header nor chunk is set");
    const Quantd__V1__PutModelHeader *h = req->header;
    if (h->kind == QUANTD__V1__BUNDLE_KIND__BUNDLE_KIND_UNSPECIFIED)
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "header.kind: BUNDLE_KIND_UNSPECIFIED: say BUNDLE_KIND_MODEL or "
                            "BUNDLE_KIND_CALIBRATION");
    if (h->kind != QUANTD__V1__BUNDLE_KIND__BUNDLE_KIND_MODEL &&
        h->kind != QUANTD__V1__BUNDLE_KIND__BUNDLE_KIND_CALIBRATION)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "header.kind: unknown value %d",
                            (int)h->kind);
    qd_err rc;
    if (h->expected_digest[0] &&
        (rc = check_digest_field("header.expected_digest", h->expected_digest, err)) != QD_OK)
        return rc;
    if ((rc = manifest_from_pb("header.manifest", h->manifest, &st->files, &st->n_files, err)) !=
        QD_OK)
        return rc;
    qd_caller who = caller_of(&st->id);
    rc = qd_service_upload_begin(rpc->svc, &who, (qd_bundle_kind)h->kind, st->files, st->n_files,
                                 h->expected_digest[0] ? h->expected_digest : NULL, &st->up, err);
    if (rc != QD_OK) {
        free(st->files);
        st->files = NULL;
        st->n_files = 0;
        st->up = NULL;
        return rc;
    }
    st->header = req;
    qd_server_log(QD_CONFIG_LOG_DEBUG, "bundle %s (%s): upload of %zu file%s begins",
                  h->expected_digest[0] ? h->expected_digest : "(digest not given)",
                  kind_word((qd_bundle_kind)h->kind), st->n_files, st->n_files == 1 ? "" : "s");
    return QD_OK;
}

static qd_err put_chunk(struct qd_rpc *rpc, struct put_state *st,
                        const Quantd__V1__PutModelRequest *req, qd_error *err) {
    char q[QD_YAML_EXCERPT_BUF];
    if (req->msg_case == QUANTD__V1__PUT_MODEL_REQUEST__MSG_HEADER)
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "PutModelRequest: a second header; every message after the first "
                            "must be a chunk");
    if (req->msg_case != QUANTD__V1__PUT_MODEL_REQUEST__MSG_CHUNK)
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "PutModelRequest: neither header nor chunk is set");
    const Quantd__V1__Chunk *c = req->chunk;
    size_t idx;
    if (c->file_case == QUANTD__V1__CHUNK__FILE_INDEX) {
        if (c->index >= st->n_files)
            return qd_error_set(err, QD_ERR_INVALID_ARG,
                                "chunk.index: %" PRIu32 " out of range: the manifest has %zu "
                                "file%s",
                                c->index, st->n_files, st->n_files == 1 ? "" : "s");
        idx = c->index;
    } else if (c->file_case == QUANTD__V1__CHUNK__FILE_NAME) {
        for (idx = 0; idx < st->n_files; idx++)
            if (strcmp(st->files[idx].name, c->name) == 0) break;
        if (idx == st->n_files)
            return qd_error_set(err, QD_ERR_INVALID_ARG, "chunk.name: '%s' is not in the manifest",
                                quote(c->name, q));
    } else {
        return qd_error_set(err, QD_ERR_INVALID_ARG, "chunk.file: set index or name");
    }
    const struct qd_store_file *f = &st->files[idx];
    uint64_t max = atomic_load(&rpc->chunk_bytes);
    if (c->data.len == 0)
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "chunk.data: empty (a chunk of %s carries 1 to %" PRIu64 " bytes)",
                            quote(f->name, q), max);
    if (c->data.len > max)
        return qd_error_set(err, QD_ERR_TOO_LARGE,
                            "chunk.data: %zu bytes for %s exceed limits.max_chunk_bytes (%" PRIu64
                            ")",
                            c->data.len, quote(f->name, q), max);
    if (c->offset > f->size)
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "chunk.offset: %" PRIu64 " past the declared size %" PRIu64 " of %s",
                            c->offset, f->size, quote(f->name, q));
    if (c->data.len > f->size - c->offset)
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "chunk.offset: %" PRIu64 " + %zu bytes of data pass the declared size "
                            "%" PRIu64 " of %s",
                            c->offset, c->data.len, f->size, quote(f->name, q));
    qd_err rc = qd_service_upload_chunk(st->up, (int64_t)idx, NULL, c->offset, c->data.data,
                                        c->data.len, err);
    if (rc == QD_ERR_EXISTS) { /* the file is complete already: the proto skips its chunks */
        qd_error_clear(err);
        return QD_OK;
    }
    if (rc == QD_OK) {
        st->chunks++;
        st->bytes += c->data.len;
    }
    return rc;
}

static void put_step(struct qd_call *call, qd_call_event ev, const uint8_t *msg, size_t len,
                     const struct ident *id) {
    struct qd_rpc *rpc = qd_call_app(call);
    struct put_state *st = qd_call_state(call);
    qd_error err = {0};
    qd_err rc;
    switch (ev) {
    case QD_CALL_START:
        st = calloc(1, sizeof *st);
        if (!st) {
            finish_nomem(call);
            return;
        }
        if (id) st->id = *id;
        qd_call_set_state(call, st);
        qd_call_recv(call);
        return;
    case QD_CALL_MESSAGE: {
        Quantd__V1__PutModelRequest *req = (void *)unpack_or_finish(
            call, &quantd__v1__put_model_request__descriptor, msg, len);
        if (!req) return;
        if (!st->up) {
            rc = put_header(rpc, st, req, &err);
            if (rc != QD_OK) protobuf_c_message_free_unpacked(&req->base, NULL);
        } else {
            rc = put_chunk(rpc, st, req, &err);
            protobuf_c_message_free_unpacked(&req->base, NULL);
        }
        if (rc != QD_OK)
            finish_err(call, rc, &err);
        else
            qd_call_recv(call);
        return;
    }
    case QD_CALL_END_OF_STREAM: {
        if (!st->up) {
            finish_err(call,
                       qd_error_set(&err, QD_ERR_INVALID_ARG,
                                    "PutModel: the stream ended before its header"),
                       &err);
            return;
        }
        qd_bundle_status bs = {0};
        if ((rc = qd_service_upload_status(st->up, &bs, &err)) != QD_OK) {
            finish_err(call, rc, &err);
            return;
        }
        struct arena a = {0};
        Quantd__V1__PutModelResponse *r =
            ANEW(&a, Quantd__V1__PutModelResponse, quantd__v1__put_model_response__descriptor);
        if (r) r->status = bundle_to_pb(&a, &bs);
        qd_server_log(QD_CONFIG_LOG_INFO,
                      "bundle %.12s (%s): %" PRIu64 " bytes received; %" PRIu64 " of %" PRIu64
                      " bytes held%s",
                      bs.digest, kind_word(bs.kind), st->bytes, bs.held_bytes, bs.total_bytes,
                      bs.complete ? ", complete" : "");
        if (!r || a.failed)
            finish_nomem(call);
        else
            qd_call_finish(call, GRPC_STATUS_OK, "", &r->base);
        arena_free(&a);
        qd_bundle_status_free(&bs);
        return;
    }
    default:
        qd_call_finish(call, GRPC_STATUS_INTERNAL, "PutModel: unexpected event", NULL);
        return;
    }
}

static void put_cleanup(struct qd_call *call) {
    struct put_state *st = qd_call_state(call);
    if (!st) return;
    qd_service_upload_end(st->up);
    free(st->files);
    if (st->header) protobuf_c_message_free_unpacked(&st->header->base, NULL);
    free(st);
}

/* ---- WatchJob -------------------------------------------------------------------------------- */

struct watch_state {
    struct ident id; /* the caller */
    char job_id[ID_ARG_MAX + 1];
    uint64_t after_seq; /* as requested */
    uint64_t last_seq;  /* last event sent */
    bool checked_gap;   /* the first event was compared with after_seq */
    bool done_sent;     /* the DONE event went out: finish after it */
    int64_t last_sent_ms;
    struct qd_subscription *sub;
};

static void watch_wake(void *ctx) { qd_call_wake(ctx); }

static bool terminal(qd_job_state s) {
    return s == QD_JOB_SUCCEEDED || s == QD_JOB_FAILED || s == QD_JOB_CANCELLED;
}

/* Send the next thing the watcher should see, or wait for it. */
static void watch_pump(struct qd_call *call, struct watch_state *st) {
    struct qd_rpc *rpc = qd_call_app(call);
    qd_error err = {0};
    qd_job_event ev;
    memset(&ev, 0, sizeof ev);
    qd_caller who = caller_of(&st->id);
    qd_err rc = qd_service_watch_next(rpc->svc, &who, st->job_id, st->last_seq, 0, &ev, &err);
    struct arena a = {0};
    if (rc == QD_OK) {
        Quantd__V1__JobEvent *m = NULL;
        if (!st->checked_gap && st->after_seq > 0 && ev.seq > st->after_seq + 1) {
            /* Events after after_seq are gone (a restart began a new list): the job as it is
             * now comes first, numbered so that the next event follows it. */
            qd_job_snapshot job = {0};
            if ((rc = qd_service_job_get(rpc->svc, &who, st->job_id, &job, &err)) != QD_OK) {
                finish_err(call, rc, &err);
                return;
            }
            m = ANEW(&a, Quantd__V1__JobEvent, quantd__v1__job_event__descriptor);
            if (m) {
                m->job_id = astr(&a, st->job_id);
                m->seq = ev.seq - 1;
                m->time_ms = now_unix_ms();
                m->progress = progress_to_pb(&a, &job.progress);
                m->event_case = QUANTD__V1__JOB_EVENT__EVENT_SNAPSHOT;
                m->snapshot = job_to_pb(&a, &job);
            }
            qd_job_snapshot_free(&job);
            st->last_seq = ev.seq - 1;
        } else {
            m = event_to_pb(&a, st->job_id, &ev);
            st->last_seq = ev.seq;
            if (ev.kind == QD_EVENT_DONE) st->done_sent = true;
        }
        st->checked_gap = true;
        if (!m || a.failed)
            finish_nomem(call);
        else
            qd_call_send(call, &m->base);
        st->last_sent_ms = now_mono_ms();
        arena_free(&a);
        return;
    }
    if (rc != QD_ERR_DEADLINE) {
        finish_err(call, rc, &err);
        return;
    }
    /* Nothing new. */
    st->checked_gap = true;
    qd_error_clear(&err);
    qd_job_snapshot job = {0};
    if ((rc = qd_service_job_get(rpc->svc, &who, st->job_id, &job, &err)) != QD_OK) {
        finish_err(call, rc, &err);
        return;
    }
    if (terminal(job.state)) {
        /* The done event is appended with the terminal state; look once more so a watcher
         * that raced it still gets it, else the client has seen everything. */
        qd_error_clear(&err);
        rc = qd_service_watch_next(rpc->svc, &who, st->job_id, st->last_seq, 0, &ev, &err);
        qd_job_snapshot_free(&job);
        if (rc == QD_OK) {
            Quantd__V1__JobEvent *m = event_to_pb(&a, st->job_id, &ev);
            st->last_seq = ev.seq;
            if (ev.kind == QD_EVENT_DONE) st->done_sent = true;
            if (!m || a.failed)
                finish_nomem(call);
            else
                qd_call_send(call, &m->base);
            st->last_sent_ms = now_mono_ms();
            arena_free(&a);
        } else {
            qd_call_finish(call, GRPC_STATUS_OK, "", NULL);
        }
        return;
    }
    if (qd_call_draining(call) && job.state != QD_JOB_RUNNING) {
        char d[256];
        snprintf(d, sizeof d,
                 "quantd is shutting down: watch job %s again after the restart with "
                 "after_seq %" PRIu64,
                 st->job_id, st->last_seq);
        qd_job_snapshot_free(&job);
        qd_call_finish(call, GRPC_STATUS_UNAVAILABLE, d, NULL);
        return;
    }
    int64_t idle = now_mono_ms() - st->last_sent_ms;
    if (idle >= TICK_MS) {
        Quantd__V1__JobEvent *m = ANEW(&a, Quantd__V1__JobEvent, quantd__v1__job_event__descriptor);
        if (m) {
            /* A tick is not a new event: it repeats the last seq, so resuming from it loses
             * nothing. */
            m->job_id = astr(&a, st->job_id);
            m->seq = st->last_seq;
            m->time_ms = now_unix_ms();
            m->progress = progress_to_pb(&a, &job.progress);
            m->event_case = QUANTD__V1__JOB_EVENT__EVENT_TICK;
            m->tick = 1;
        }
        qd_job_snapshot_free(&job);
        if (!m || a.failed)
            finish_nomem(call);
        else
            qd_call_send(call, &m->base);
        st->last_sent_ms = now_mono_ms();
        arena_free(&a);
        return;
    }
    qd_job_snapshot_free(&job);
    qd_call_wait(call, TICK_MS - idle);
}

static void watch_step(struct qd_call *call, qd_call_event ev, const uint8_t *msg, size_t len,
                       const struct ident *id) {
    struct qd_rpc *rpc = qd_call_app(call);
    struct watch_state *st = qd_call_state(call);
    qd_error err = {0};
    if (ev == QD_CALL_START) {
        Quantd__V1__WatchJobRequest *req = (void *)unpack_or_finish(
            call, &quantd__v1__watch_job_request__descriptor, msg, len);
        if (!req) return;
        qd_err rc = check_id_field("job_id", req->job_id, &err);
        if (rc != QD_OK) {
            protobuf_c_message_free_unpacked(&req->base, NULL);
            finish_err(call, rc, &err);
            return;
        }
        st = calloc(1, sizeof *st);
        if (!st) {
            protobuf_c_message_free_unpacked(&req->base, NULL);
            finish_nomem(call);
            return;
        }
        if (id) st->id = *id;
        snprintf(st->job_id, sizeof st->job_id, "%s", req->job_id);
        st->after_seq = st->last_seq = req->after_seq;
        st->last_sent_ms = now_mono_ms();
        protobuf_c_message_free_unpacked(&req->base, NULL);
        qd_call_set_state(call, st);
        /* Subscribe before the first look, so an event between the two is not missed. */
        st->sub = qd_service_subscribe(rpc->svc, st->job_id, watch_wake, call, &err);
        if (!st->sub) {
            finish_err(call, err.code != QD_OK ? err.code : QD_ERR_INTERNAL, &err);
            return;
        }
        watch_pump(call, st);
        return;
    }
    if (ev == QD_CALL_SENT && st->done_sent) {
        qd_call_finish(call, GRPC_STATUS_OK, "", NULL);
        return;
    }
    watch_pump(call, st);
}

static void watch_cleanup(struct qd_call *call) {
    struct watch_state *st = qd_call_state(call);
    if (!st) return;
    struct qd_rpc *rpc = qd_call_app(call);
    qd_service_unsubscribe(rpc->svc, st->sub);
    free(st);
}

/* ---- GetArtifact ----------------------------------------------------------------------------- */

struct get_state {
    struct qd_download *dl;
    qd_artifact_entry art;
    char dir[PATH_MAX];
    size_t *sel; /* indices into art.files, in manifest order */
    size_t n_sel;
    size_t pos;      /* in sel */
    uint64_t offset; /* in the current file */
    int fd;          /* of the current file; -1 */
    uint8_t *buf;
    size_t chunk;
    uint64_t sent;
};

static int cmp_index(const void *a, const void *b) {
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return x < y ? -1 : x > y;
}

/* Check the request against the artifact and fill the selection and the start. */
static qd_err get_plan(struct qd_rpc *rpc, struct get_state *st,
                       const Quantd__V1__GetArtifactRequest *req, qd_error *err) {
    char q[QD_YAML_EXCERPT_BUF];
    const qd_artifact_entry *art = &st->art;
    st->sel = calloc(art->n_files ? art->n_files : 1, sizeof *st->sel);
    if (!st->sel) return qd_error_set(err, QD_ERR_NOMEM, "out of memory");
    if (req->n_files == 0) {
        for (size_t i = 0; i < art->n_files; i++) st->sel[i] = i;
        st->n_sel = art->n_files;
    } else {
        bool *picked = calloc(art->n_files ? art->n_files : 1, sizeof *picked);
        if (!picked) return qd_error_set(err, QD_ERR_NOMEM, "out of memory");
        for (size_t k = 0; k < req->n_files; k++) {
            size_t i;
            for (i = 0; i < art->n_files; i++)
                if (strcmp(art->files[i].name, req->files[k]) == 0) break;
            if (i == art->n_files || picked[i]) {
                qd_err rc = qd_error_set(
                    err, QD_ERR_INVALID_ARG, "files[%zu]: '%s' %s", k, quote(req->files[k], q),
                    i == art->n_files ? "is not a file of the artifact" : "is named twice");
                free(picked);
                return rc;
            }
            picked[i] = true;
            st->sel[st->n_sel++] = i;
        }
        free(picked);
        qsort(st->sel, st->n_sel, sizeof *st->sel, cmp_index); /* manifest order */
    }
    if (req->start_file[0]) {
        size_t p;
        for (p = 0; p < st->n_sel; p++)
            if (strcmp(art->files[st->sel[p]].name, req->start_file) == 0) break;
        if (p == st->n_sel)
            return qd_error_set(err, QD_ERR_INVALID_ARG, "start_file: '%s' is not %s",
                                quote(req->start_file, q),
                                req->n_files ? "among the files asked for"
                                             : "a file of the artifact");
        const struct qd_store_file *f = &art->files[st->sel[p]];
        if (req->start_offset > f->size)
            return qd_error_set(err, QD_ERR_INVALID_ARG,
                                "start_offset: %" PRIu64 " past the size %" PRIu64 " of %s",
                                req->start_offset, f->size, quote(f->name, q));
        st->pos = p;
        st->offset = req->start_offset;
    } else if (req->start_offset) {
        return qd_error_set(err, QD_ERR_INVALID_ARG,
                            "start_offset: %" PRIu64 " without start_file", req->start_offset);
    }
    uint64_t limit = atomic_load(&rpc->chunk_bytes);
    st->chunk = req->chunk_bytes == 0 || req->chunk_bytes > limit ? (size_t)limit
                                                                  : (size_t)req->chunk_bytes;
    st->buf = malloc(st->chunk);
    if (!st->buf) return qd_error_set(err, QD_ERR_NOMEM, "out of memory");
    return QD_OK;
}

/* Read the next chunk and send it, or finish when every selected file went out. */
static void get_next(struct qd_call *call, struct get_state *st) {
    qd_error err = {0};
    char q[QD_YAML_EXCERPT_BUF];
    while (st->pos < st->n_sel) {
        size_t fi = st->sel[st->pos];
        const struct qd_store_file *f = &st->art.files[fi];
        if (st->offset >= f->size) {
            if (st->fd >= 0) close(st->fd);
            st->fd = -1;
            st->pos++;
            st->offset = 0;
            continue;
        }
        if (st->fd < 0) {
            char path[PATH_MAX];
            int n = snprintf(path, sizeof path, "%s/%s", st->dir, f->name);
            if (n < 0 || (size_t)n >= sizeof path) {
                finish_err(call,
                           qd_error_set(&err, QD_ERR_IO, "artifact %s: path of %s too long",
                                        st->art.id, quote(f->name, q)),
                           &err);
                return;
            }
            st->fd = open(path, O_RDONLY | O_CLOEXEC);
            if (st->fd < 0) {
                finish_err(call,
                           qd_error_set(&err, QD_ERR_IO, "artifact %s: cannot open %s: %s",
                                        st->art.id, quote(f->name, q), strerror(errno)),
                           &err);
                return;
            }
        }
        uint64_t left = f->size - st->offset;
        size_t want = left < st->chunk ? (size_t)left : st->chunk, got = 0;
        while (got < want) {
            ssize_t r = pread(st->fd, st->buf + got, want - got, (off_t)(st->offset + got));
            if (r < 0 && errno == EINTR) continue;
            if (r < 0) {
                finish_err(call,
                           qd_error_set(&err, QD_ERR_IO, "artifact %s: reading %s: %s",
                                        st->art.id, quote(f->name, q), strerror(errno)),
                           &err);
                return;
            }
            if (r == 0) {
                finish_err(call,
                           qd_error_set(&err, QD_ERR_CORRUPT,
                                        "artifact %s: %s ends at byte %" PRIu64
                                        " on disk, its manifest says %" PRIu64,
                                        st->art.id, quote(f->name, q), st->offset + got, f->size),
                           &err);
                return;
            }
            got += (size_t)r;
        }
        Quantd__V1__Chunk c = QUANTD__V1__CHUNK__INIT;
        c.file_case = QUANTD__V1__CHUNK__FILE_INDEX;
        c.index = (uint32_t)fi;
        c.offset = st->offset;
        c.data.data = st->buf;
        c.data.len = got;
        Quantd__V1__GetArtifactResponse r = QUANTD__V1__GET_ARTIFACT_RESPONSE__INIT;
        r.msg_case = QUANTD__V1__GET_ARTIFACT_RESPONSE__MSG_CHUNK;
        r.chunk = &c;
        qd_call_send(call, &r.base);
        qd_service_count_bytes_out(((struct qd_rpc *)qd_call_app(call))->svc, got);
        st->offset += got;
        st->sent += got;
        return;
    }
    qd_server_log(QD_CONFIG_LOG_DEBUG, "artifact %s: sent %" PRIu64 " bytes of %zu file%s",
                  st->art.id, st->sent, st->n_sel, st->n_sel == 1 ? "" : "s");
    qd_call_finish(call, GRPC_STATUS_OK, "", NULL);
}

static void get_step(struct qd_call *call, qd_call_event ev, const uint8_t *msg, size_t len,
                     const struct ident *id) {
    struct qd_rpc *rpc = qd_call_app(call);
    struct get_state *st = qd_call_state(call);
    qd_error err = {0};
    if (ev != QD_CALL_START) {
        get_next(call, st);
        return;
    }
    Quantd__V1__GetArtifactRequest *req = (void *)unpack_or_finish(
        call, &quantd__v1__get_artifact_request__descriptor, msg, len);
    if (!req) return;
    qd_err rc = check_id_field("artifact_id", req->artifact_id, &err);
    if (rc == QD_OK) {
        st = calloc(1, sizeof *st);
        if (!st) rc = qd_error_set(&err, QD_ERR_NOMEM, "out of memory");
    }
    if (rc == QD_OK) {
        st->fd = -1;
        qd_call_set_state(call, st);
        qd_caller who = caller_of(id);
        rc = qd_service_download_open(rpc->svc, &who, req->artifact_id, &st->dl, &st->art,
                                      st->dir, sizeof st->dir, &err);
    }
    if (rc == QD_OK) rc = get_plan(rpc, st, req, &err);
    protobuf_c_message_free_unpacked(&req->base, NULL);
    if (rc != QD_OK) {
        finish_err(call, rc, &err);
        return;
    }
    struct arena a = {0};
    Quantd__V1__Artifact *art = artifact_to_pb(&a, &st->art);
    if (!art || a.failed) {
        arena_free(&a);
        finish_nomem(call);
        return;
    }
    Quantd__V1__GetArtifactResponse r = QUANTD__V1__GET_ARTIFACT_RESPONSE__INIT;
    r.msg_case = QUANTD__V1__GET_ARTIFACT_RESPONSE__MSG_ARTIFACT;
    r.artifact = art;
    qd_call_send(call, &r.base);
    arena_free(&a);
}

static void get_cleanup(struct qd_call *call) {
    struct get_state *st = qd_call_state(call);
    if (!st) return;
    if (st->fd >= 0) close(st->fd);
    qd_service_download_close(st->dl);
    qd_artifact_entry_free(&st->art);
    free(st->sel);
    free(st->buf);
    free(st);
}

/* ---- authentication -------------------------------------------------------------------------- */

/* A token file is a short list of hashes. */
#define TOKEN_FILE_MAX ((size_t)1 << 20)
/* Longest bearer token read from the metadata; a longer one is simply invalid. */
#define TOKEN_MAX 1024
/* No role needed (the health service, for probes). */
#define ROLE_OPEN (-1)

void qd_rpc_auth_free(struct qd_rpc_auth *auth) {
    if (!auth) return;
    free(auth->tokens);
    free(auth);
}

static qd_err auth_add(struct qd_rpc_auth *a, const qd_config_token *t, qd_error *err) {
    if (a->n == a->cap) {
        size_t ncap = a->cap ? a->cap * 2 : 8;
        qd_config_token *g = realloc(a->tokens, ncap * sizeof *g);
        if (!g) return qd_error_set(err, QD_ERR_NOMEM, "auth: out of memory");
        a->tokens = g;
        a->cap = ncap;
    }
    a->tokens[a->n++] = *t;
    return QD_OK;
}

/* The entries of a token file: one per line; blank lines and '#' comments are skipped. */
static qd_err auth_read_file(struct qd_rpc_auth *a, const char *path, qd_error *err) {
    char *buf;
    size_t len;
    qd_error e = {0};
    qd_err rc = qd_read_file(path, TOKEN_FILE_MAX, &buf, &len, &e);
    if (rc != QD_OK) return qd_error_set(err, rc, "auth.token_file: %s", e.msg);
    size_t line = 0;
    for (char *p = buf; rc == QD_OK && p < buf + len;) {
        char *nl = memchr(p, '\n', (size_t)(buf + len - p));
        char *end = nl ? nl : buf + len;
        line++;
        while (p < end && (*p == ' ' || *p == '\t')) p++;
        char *q = end;
        while (q > p && (q[-1] == ' ' || q[-1] == '\t' || q[-1] == '\r')) q--;
        *q = '\0';
        if (p < q && *p != '#') {
            qd_config_token t;
            if (memchr(p, '\0', (size_t)(q - p)) != NULL ||
                qd_config_parse_token(p, &t, &e) != QD_OK)
                rc = qd_error_set(err, QD_ERR_CONFIG, "auth.token_file: %s:%zu: %s", path, line,
                                  e.code ? e.msg : "a NUL byte in the line");
            else
                rc = auth_add(a, &t, err);
        }
        p = end + 1;
    }
    free(buf);
    return rc;
}

qd_err qd_rpc_auth_load(const qd_config *cfg, struct qd_rpc_auth **ret, qd_error *err) {
    *ret = NULL;
    struct qd_rpc_auth *a = calloc(1, sizeof *a);
    if (!a) return qd_error_set(err, QD_ERR_NOMEM, "auth: out of memory");
    a->on = cfg->auth.n_tokens > 0 || cfg->auth.token_file != NULL;
    qd_err rc = QD_OK;
    for (size_t i = 0; rc == QD_OK && i < cfg->auth.n_tokens; i++) {
        qd_config_token t;
        qd_error e = {0};
        if (qd_config_parse_token(cfg->auth.tokens[i], &t, &e) != QD_OK)
            rc = qd_error_set(err, QD_ERR_CONFIG, "auth.tokens: item %zu: %s", i + 1, e.msg);
        else
            rc = auth_add(a, &t, err);
    }
    if (rc == QD_OK && cfg->auth.token_file) rc = auth_read_file(a, cfg->auth.token_file, err);
    if (rc != QD_OK) {
        qd_rpc_auth_free(a);
        return rc;
    }
    *ret = a;
    return QD_OK;
}

/* The method's name for messages: the last part of its path. */
static const char *method_name(struct qd_call *call) {
    const char *p = qd_call_path(call);
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

/* Whether the call may go on to a handler that needs role; if not, it is finished here.
 * *ret names the caller (owner "" and all with authentication off). */
static bool auth_check(struct qd_call *call, int role, struct ident *ret) {
    memset(ret, 0, sizeof *ret);
    ret->all = true;
    if (role == ROLE_OPEN) return true;
    struct qd_rpc *rpc = qd_call_app(call);
    char value[TOKEN_MAX + 16];
    size_t len;
    bool have = qd_call_metadata(call, "authorization", value, sizeof value, &len);

    pthread_mutex_lock(&rpc->auth_mu);
    bool on = rpc->auth && rpc->auth->on;
    pthread_mutex_unlock(&rpc->auth_mu);
    if (!on) return true;

    unsigned char digest[32];
    bool hashed = false;
    if (have && len < sizeof value && len > 7 && strncasecmp(value, "Bearer ", 7) == 0) {
        const char *tok = value + 7;
        while (*tok == ' ') tok++;
        unsigned int dl = 0;
        hashed = *tok && EVP_Digest(tok, strlen(tok), digest, &dl, EVP_sha256(), NULL) == 1 &&
                 dl == sizeof digest;
    }
    int found = -1;
    char name[sizeof rpc->auth->tokens[0].name] = "";
    unsigned char which[32] = {0};
    if (hashed) {
        pthread_mutex_lock(&rpc->auth_mu);
        for (size_t i = 0; i < rpc->auth->n; i++) {
            const qd_config_token *t = &rpc->auth->tokens[i];
            /* Every entry is compared in full; the best role of the matches wins. */
            int same = CRYPTO_memcmp(t->sha256, digest, sizeof digest) == 0;
            if (same && (int)t->role > found) {
                found = (int)t->role;
                memcpy(name, t->name, sizeof name);
                memcpy(which, t->sha256, sizeof which);
            }
        }
        pthread_mutex_unlock(&rpc->auth_mu);
    }
    OPENSSL_cleanse(value, sizeof value);
    if (found < 0) {
        qd_server_log(QD_CONFIG_LOG_INFO, "%s: refused: missing or invalid bearer token",
                      qd_call_path(call));
        qd_call_finish(call, GRPC_STATUS_UNAUTHENTICATED, "missing or invalid bearer token",
                       NULL);
        return false;
    }
    if (found < role) {
        char details[256];
        snprintf(details, sizeof details, "%s needs the %s role; this token has the %s role",
                 method_name(call), qd_config_role_name((qd_config_role)role),
                 qd_config_role_name((qd_config_role)found));
        qd_server_log(QD_CONFIG_LOG_INFO, "%s: refused token%s%s: %s", qd_call_path(call),
                      name[0] ? " " : "", name, details);
        qd_call_finish(call, GRPC_STATUS_PERMISSION_DENIED, details, NULL);
        return false;
    }
    /* The owner: the entry's name, else a prefix of its hash (the stored hash, not the
     * token: 48 bits say which entry without helping anyone guess the token). */
    name[sizeof name - 1] = '\0';
    if (name[0]) {
        snprintf(ret->owner, sizeof ret->owner, "%s", name);
    } else {
        int k = snprintf(ret->owner, sizeof ret->owner, "token:");
        for (int i = 0; i < 6 && k > 0 && (size_t)k + 2 < sizeof ret->owner; i++, k += 2)
            snprintf(ret->owner + k, sizeof ret->owner - (size_t)k, "%02x", which[i]);
    }
    ret->all = found >= QD_ROLE_ADMIN;
    return true;
}

/* guarded_<step>: the handler step behind the role check of its method; the step gets the
 * caller at START (NULL after: a step that needs it later keeps a copy). */
#define GUARDED(step, role)                                                                     \
    static void guarded_##step(struct qd_call *call, qd_call_event ev, const uint8_t *msg,     \
                               size_t len) {                                                    \
        struct ident id;                                                                        \
        if (ev == QD_CALL_START && !auth_check(call, role, &id)) return;                        \
        step(call, ev, msg, len, ev == QD_CALL_START ? &id : NULL);                             \
    }

GUARDED(put_step, QD_ROLE_SUBMIT)
GUARDED(stat_model_step, QD_ROLE_READ)
GUARDED(quantize_step, QD_ROLE_SUBMIT)
GUARDED(watch_step, QD_ROLE_READ)
GUARDED(get_job_step, QD_ROLE_READ)
GUARDED(list_jobs_step, QD_ROLE_READ)
GUARDED(cancel_job_step, QD_ROLE_SUBMIT)
GUARDED(get_step, QD_ROLE_READ)
GUARDED(list_artifacts_step, QD_ROLE_READ)
GUARDED(delete_artifact_step, QD_ROLE_ADMIN)
GUARDED(get_server_info_step, QD_ROLE_READ)

/* ---- the method table ------------------------------------------------------------------------ */

/* Health stays open: probes carry no token. */
static const qd_rpc_method rpc_methods[] = {
    {"/quantd.v1.Quantd/PutModel", QD_RPC_CLIENT_STREAMING, guarded_put_step, put_cleanup},
    {"/quantd.v1.Quantd/StatModel", QD_RPC_UNARY, guarded_stat_model_step, NULL},
    {"/quantd.v1.Quantd/Quantize", QD_RPC_UNARY, guarded_quantize_step, NULL},
    {"/quantd.v1.Quantd/WatchJob", QD_RPC_SERVER_STREAMING, guarded_watch_step, watch_cleanup},
    {"/quantd.v1.Quantd/GetJob", QD_RPC_UNARY, guarded_get_job_step, NULL},
    {"/quantd.v1.Quantd/ListJobs", QD_RPC_UNARY, guarded_list_jobs_step, NULL},
    {"/quantd.v1.Quantd/CancelJob", QD_RPC_UNARY, guarded_cancel_job_step, NULL},
    {"/quantd.v1.Quantd/GetArtifact", QD_RPC_SERVER_STREAMING, guarded_get_step, get_cleanup},
    {"/quantd.v1.Quantd/ListArtifacts", QD_RPC_UNARY, guarded_list_artifacts_step, NULL},
    {"/quantd.v1.Quantd/DeleteArtifact", QD_RPC_UNARY, guarded_delete_artifact_step, NULL},
    {"/quantd.v1.Quantd/GetServerInfo", QD_RPC_UNARY, guarded_get_server_info_step, NULL},
    {"/grpc.health.v1.Health/Check", QD_RPC_UNARY, health_check_step, NULL},
    {"/grpc.health.v1.Health/Watch", QD_RPC_SERVER_STREAMING, health_watch_step,
     health_watch_cleanup},
};

const qd_rpc_method *qd_rpc_methods(size_t *ret_n) {
    *ret_n = sizeof rpc_methods / sizeof rpc_methods[0];
    return rpc_methods;
}

/* ---- lifecycle ------------------------------------------------------------------------------- */

/* Whether the spec rules accept method m into format f at the given bits (the rest left to
 * defaults; a placeholder calibration digest where the method needs one). */
static bool spec_accepts(qd_spec_method m, qd_spec_format f, uint32_t bits) {
    qd_spec s;
    memset(&s, 0, sizeof s);
    s.method = m;
    s.format = f;
    s.bits = bits;
    qd_spec_defaults(&s);
    if (qd_spec_needs_calibration(&s)) {
        memset(s.calibration.digest, '0', QD_STORE_HEX_LEN);
        s.calibration.digest[QD_STORE_HEX_LEN] = '\0';
    }
    qd_error e = {0};
    bool ok = qd_spec_validate(&s, NULL, &e) == QD_OK;
    qd_spec_free(&s);
    return ok;
}

/* ServerInfo's MethodSupport, asked of the spec rules once rather than kept as a second copy
 * of them. */
static void compute_support(struct qd_rpc *rpc) {
    bool any_format[QD_SPEC_FORMAT_COUNT] = {false};
    for (int m = QD_SPEC_METHOD_RTN; m < QD_SPEC_METHOD_COUNT; m++) {
        struct method_support *s = &rpc->support[rpc->n_support];
        memset(s, 0, sizeof *s);
        s->method = (qd_spec_method)m;
        bool bits_ok[MAX_BITS + 1] = {false};
        for (int f = QD_SPEC_FORMAT_AWQ; f <= QD_SPEC_FORMAT_DASHINFER; f++) {
            bool fok = false;
            for (uint32_t b = 1; b <= MAX_BITS; b++) {
                if (spec_accepts((qd_spec_method)m, (qd_spec_format)f, b)) {
                    fok = true;
                    bits_ok[b] = true;
                }
            }
            if (fok) {
                s->formats[s->n_formats++] = (Quantd__V1__Format)f;
                any_format[f] = true;
            }
        }
        for (uint32_t b = 1; b <= MAX_BITS; b++)
            if (bits_ok[b]) s->bits[s->n_bits++] = b;
        if (s->n_formats) rpc->n_support++;
    }
    for (int f = QD_SPEC_FORMAT_AWQ; f <= QD_SPEC_FORMAT_DASHINFER; f++)
        if (any_format[f]) rpc->formats[rpc->n_formats++] = (Quantd__V1__Format)f;
}

qd_err qd_rpc_create(struct qd_service *svc, const qd_config *cfg, struct qd_rpc **ret,
                     qd_error *err) {
    *ret = NULL;
    if (cfg->limits.max_message_bytes <= LIST_MARGIN)
        return qd_error_set(err, QD_ERR_CONFIG, "limits.max_message_bytes: %" PRIu64 " too small",
                            cfg->limits.max_message_bytes);
    struct qd_rpc *rpc = calloc(1, sizeof *rpc);
    if (!rpc) return qd_error_set(err, QD_ERR_NOMEM, "out of memory");
    rpc->svc = svc;
    rpc->max_message_bytes = cfg->limits.max_message_bytes;
    atomic_init(&rpc->chunk_bytes, cfg->limits.chunk_bytes);
    qd_err rc = qd_rpc_auth_load(cfg, &rpc->auth, err);
    if (rc != QD_OK) {
        free(rpc);
        return rc;
    }
    pthread_mutex_init(&rpc->auth_mu, NULL);
    compute_support(rpc);
    *ret = rpc;
    return QD_OK;
}

void qd_rpc_reload(struct qd_rpc *rpc, const qd_config *cfg, struct qd_rpc_auth *auth) {
    atomic_store(&rpc->chunk_bytes, cfg->limits.chunk_bytes);
    if (!auth) return;
    pthread_mutex_lock(&rpc->auth_mu);
    struct qd_rpc_auth *old = rpc->auth;
    rpc->auth = auth;
    pthread_mutex_unlock(&rpc->auth_mu);
    qd_rpc_auth_free(old);
}

void qd_rpc_free(struct qd_rpc *rpc) {
    if (!rpc) return;
    pthread_mutex_destroy(&rpc->auth_mu);
    qd_rpc_auth_free(rpc->auth);
    free(rpc);
}
