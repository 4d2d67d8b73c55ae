/*
 * cuda_loader.c - finds and loads the CUDA module (libquantd-cuda.so, kernels/cuda/module.h)
 * on first use, and defines every function of kernels/cuda/qd_cuda.h plus the device
 * discovery of backend.c as forwarders through the module's table.
 *
 * DESIGN
 * Loading happens once per process (pthread_once), the first time anything asks for a CUDA
 * device or calls qd_cuda_open(); a process that never does maps no CUDA library.
 *   1. dlopen("libcuda.so.1"), the NVIDIA driver's library. Without it no CUDA call can
 *      succeed, so the module (and the ~1 GB of cuBLAS, cuSOLVER and runtime it pulls in) is
 *      not loaded at all: 0 devices, note "no NVIDIA driver (<dlerror>)". The handle is kept:
 *      the CUDA runtime opens the same library again and must find the one probed here.
 *   2. dlopen(RTLD_NOW | RTLD_LOCAL) the module from the first place that has it:
 *        - $QUANTD_CUDA_MODULE, when set and not empty: that file only. An explicit choice
 *          that fails is reported rather than silently replaced by another copy;
 *        - the running executable's directory, then its ../lib/quantd (the build tree puts
 *          the module in <build>/lib/quantd, one level above every executable's directory,
 *          and an install puts quantd in bin/ next to lib/quantd/);
 *        - the install directory compiled in (QD_CUDA_MODULE_DIR, the libdir's quantd/).
 *      RTLD_NOW resolves every symbol now, so a module with a missing CUDA library fails
 *      here with the library's name instead of at the first call; RTLD_LOCAL keeps the
 *      module's libraries out of the global namespace.
 *   3. The table's abi and size must match module.h (a module from another build is refused
 *      and the next path is tried).
 * When every step fails, the note names each path tried with its dlerror() (or the table
 * mismatch), and it is what qd_devices_list and qd_cuda_open report.
 *
 * Forwarders that take a context can only be reached with one from qd_cuda_open(), so the
 * module is loaded; they still answer QD_ERR_UNAVAILABLE rather than crash when it is not.
 */
#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cuda/module.h"

#ifndef QD_CUDA_MODULE_DIR
#error "QD_CUDA_MODULE_DIR (the module's install directory) must be defined by the build"
#endif

#define DRIVER_LIB "libcuda.so.1"

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static const qd_cuda_module *g_mod;  /* NULL: not loaded; written once under g_once */
/* Why g_mod is NULL (what qd_cuda_device_count and qd_cuda_open report), and the paths tried
 * with their errors while searching. Sized for a few paths of PATH_MAX; longer text is
 * truncated, keeping the first paths tried. Both are written only under g_once. */
static char g_note[4 * PATH_MAX + 256];
static char g_tried[4 * PATH_MAX];

/* Append "; " (unless first) and the formatted text to g_tried, truncating at its end. */
static void tried_add(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void tried_add(const char *fmt, ...) {
    size_t used = strlen(g_tried);
    if (used > 0 && used + 3 < sizeof g_tried) {
        memcpy(g_tried + used, "; ", 3);
        used += 2;
    }
    if (used + 1 >= sizeof g_tried) return;
    va_list ap;
    va_start(ap, fmt);
    (void)vsnprintf(g_tried + used, sizeof g_tried - used, fmt, ap);
    va_end(ap);
}

/* "path: why" for a failed dlopen or dlsym; dlerror() usually begins with the path already. */
static void tried_dlerror(const char *path) {
    const char *e = dlerror();
    if (!e) e = "unknown dlopen error";
    if (strstr(e, path)) tried_add("%s", e);
    else tried_add("%s: %s", path, e);
}

/* Open `path` and check its table; on success sets g_mod and returns 1. The handle of a
 * loaded module is never closed: its code runs until the process exits. */
static int try_module(const char *path) {
    (void)dlerror();
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        tried_dlerror(path);
        return 0;
    }
    void *sym = dlsym(h, QD_CUDA_MODULE_SYMBOL);
    if (!sym) {
        tried_dlerror(path);
        dlclose(h);
        return 0;
    }
    qd_cuda_module_fn entry = (qd_cuda_module_fn)sym;
    const qd_cuda_module *mod = entry();
    if (!mod || mod->abi != QD_CUDA_MODULE_ABI || mod->size < sizeof *mod) {
        tried_add("%s: module ABI %u (table of %u bytes), this quantd needs ABI %u (%zu bytes): "
                  "a module from another build", path, mod ? mod->abi : 0u,
                  mod ? mod->size : 0u, QD_CUDA_MODULE_ABI, sizeof *mod);
        dlclose(h);
        return 0;
    }
    g_mod = mod;
    return 1;
}

/* `dir``rel`/QD_CUDA_MODULE_FILE into buf; 0 when it does not fit. */
static int module_path(char *buf, size_t size, const char *dir, const char *rel) {
    int n = snprintf(buf, size, "%s%s/%s", dir, rel, QD_CUDA_MODULE_FILE);
    return n > 0 && (size_t)n < size;
}

static void load_once(void) {
    static char path[PATH_MAX + 64], exe[PATH_MAX];
    (void)dlerror();
    if (!dlopen(DRIVER_LIB, RTLD_LAZY | RTLD_LOCAL)) {
        const char *e = dlerror();
        snprintf(g_note, sizeof g_note, "no NVIDIA driver (%s)", e ? e : DRIVER_LIB);
        return;
    }
    /* secure_getenv: a set-id quantd must not load code an unprivileged caller names */
    const char *env = secure_getenv(QD_CUDA_MODULE_ENV);
    if (env && env[0]) {
        if (!try_module(env))
            snprintf(g_note, sizeof g_note, "CUDA module not loaded (%s=%s): %s",
                     QD_CUDA_MODULE_ENV, env, g_tried);
        return;
    }
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    char *slash = NULL;
    if (n > 0) {
        exe[n] = '\0';
        slash = strrchr(exe, '/');
    }
    if (slash) {
        *slash = '\0';
        if (module_path(path, sizeof path, exe, "") && try_module(path)) return;
        if (module_path(path, sizeof path, exe, "/../lib/quantd") && try_module(path)) return;
    } else {
        tried_add("/proc/self/exe unreadable: the executable's directory was not searched");
    }
    if (module_path(path, sizeof path, QD_CUDA_MODULE_DIR, "") && try_module(path)) return;
    snprintf(g_note, sizeof g_note, "CUDA module not loaded (set %s to its path): %s",
             QD_CUDA_MODULE_ENV, g_tried);
}

/* The table, loading it on the first call; NULL when the module is unavailable. */
static const qd_cuda_module *module(void) {
    (void)pthread_once(&g_once, load_once);
    return g_mod;
}

/* module(), or NULL with err set to why CUDA is unavailable. */
static const qd_cuda_module *need(qd_error *err) {
    const qd_cuda_module *mod = module();
    if (!mod) qd_error_set(err, QD_ERR_UNAVAILABLE, "cuda: no CUDA device (%s)", g_note);
    return mod;
}

/* ---- device discovery (backend.c) --------------------------------------------------------- */

int qd_cuda_device_count(const char **note) {
    const qd_cuda_module *mod = module();
    if (!mod) {
        if (note) *note = g_note;
        return 0;
    }
    return mod->device_count(note);
}

int qd_cuda_device_info(int index, qd_device_info *out) {
    const qd_cuda_module *mod = module();
    return mod ? mod->device_info(index, out) : -1;
}

/* ---- context ------------------------------------------------------------------------------ */

qd_err qd_cuda_open(int device, qd_cuda **ret_ctx, qd_error *err) {
    const qd_cuda_module *mod = need(err);
    return mod ? mod->open(device, ret_ctx, err) : QD_ERR_UNAVAILABLE;
}

/* Close and free accept NULL without loading anything: cleanup paths of CPU-only work call
 * them, and must not map the CUDA libraries. */
void qd_cuda_close(qd_cuda *c) {
    if (!c) return;
    const qd_cuda_module *mod = module();
    if (mod) mod->close(c);
}

const qd_device_info *qd_cuda_info(const qd_cuda *c) {
    const qd_cuda_module *mod = module();
    return mod ? mod->info(c) : NULL;
}

int qd_cuda_sm_count(const qd_cuda *c) {
    const qd_cuda_module *mod = module();
    return mod ? mod->sm_count(c) : 0;
}

bool qd_cuda_broken(const qd_cuda *c) {
    const qd_cuda_module *mod = module();
    return mod ? mod->broken(c) : true;
}

/* ---- memory ------------------------------------------------------------------------------- */

qd_err qd_cuda_alloc(qd_cuda *c, size_t nbytes, void **ret_ptr, qd_error *err) {
    const qd_cuda_module *mod = need(err);
    return mod ? mod->alloc(c, nbytes, ret_ptr, err) : QD_ERR_UNAVAILABLE;
}

void qd_cuda_free(qd_cuda *c, void *ptr) {
    if (!c || !ptr) return;
    const qd_cuda_module *mod = module();
    if (mod) mod->free(c, ptr);
}

qd_err qd_cuda_upload(qd_cuda *c, void *dst, const void *src, size_t nbytes, qd_error *err) {
    const qd_cuda_module *mod = need(err);
    return mod ? mod->upload(c, dst, src, nbytes, err) : QD_ERR_UNAVAILABLE;
}

qd_err qd_cuda_download(qd_cuda *c, void *dst, const void *src, size_t nbytes, qd_error *err) {
    const qd_cuda_module *mod = need(err);
    return mod ? mod->download(c, dst, src, nbytes, err) : QD_ERR_UNAVAILABLE;
}

qd_err qd_cuda_copy(qd_cuda *c, void *dst, const void *src, size_t nbytes, qd_error *err) {
    const qd_cuda_module *mod = need(err);
    return mod ? mod->copy(c, dst, src, nbytes, err) : QD_ERR_UNAVAILABLE;
}

qd_err qd_cuda_fill(qd_cuda *c, void *dst, int byte, size_t nbytes, qd_error *err) {
    const qd_cuda_module *mod = need(err);
    return mod ? mod->fill(c, dst, byte, nbytes, err) : QD_ERR_UNAVAILABLE;
}

qd_err qd_cuda_sync(qd_cuda *c, qd_error *err) {
    const qd_cuda_module *mod = need(err);
    return mod ? mod->sync(c, err) : QD_ERR_UNAVAILABLE;
}

/* ---- quantization ------------------------------------------------------------------------- */

qd_err qd_quant_rtn_cuda(qd_cuda *c, const float *w, int64_t n, int64_t k, int bits,
                         int64_t group_size, qd_qrule rule, qd_dtype scale_dtype,
                         uint8_t *codes, float *scales, float *zeros, qd_error *err) {
    const qd_cuda_module *mod = need(err);
    return mod ? mod->quant_rtn(c, w, n, k, bits, group_size, rule, scale_dtype, codes, scales,
                                zeros, err)
               : QD_ERR_UNAVAILABLE;
}

qd_err qd_quant_fp8_cuda(qd_cuda *c, const float *w, int64_t n, int64_t k, bool per_channel,
                         qd_dtype scale_dtype, uint8_t *codes, float *scales, qd_error *err) {
    const qd_cuda_module *mod = need(err);
    return mod ? mod->quant_fp8(c, w, n, k, per_channel, scale_dtype, codes, scales, err)
               : QD_ERR_UNAVAILABLE;
}

qd_err qd_quant_pack_cuda(qd_cuda *c, const float *w, int64_t n, int64_t k, int bits,
                          int64_t group_size, qd_qrule rule, qd_dtype scale_dtype,
                          qd_cuda_layout layout, const qd_cuda_packed *out, qd_error *err) {
    const qd_cuda_module *mod = need(err);
    return mod ? mod->quant_pack(c, w, n, k, bits, group_size, rule, scale_dtype, layout, out,
                                 err)
               : QD_ERR_UNAVAILABLE;
}

qd_err qd_pack_codes_cuda(qd_cuda *c, const uint8_t *codes, const float *scales,
                          const float *zeros, int64_t n, int64_t k, int bits,
                          int64_t group_size, qd_qrule rule, qd_dtype scale_dtype,
                          qd_cuda_layout layout, const qd_cuda_packed *out, qd_error *err) {
    const qd_cuda_module *mod = need(err);
    return mod ? mod->pack_codes(c, codes, scales, zeros, n, k, bits, group_size, rule,
                                 scale_dtype, layout, out, err)
               : QD_ERR_UNAVAILABLE;
}

/* ---- dense ops ---------------------------------------------------------------------------- */

qd_err qd_matmul_cuda(qd_cuda *c, float *y, const float *x, const float *w, const float *bias,
                      int64_t m, int64_t n, int64_t k, qd_error *err) {
    const qd_cuda_module *mod = need(err);
    return mod ? mod->matmul(c, y, x, w, bias, m, n, k, err) : QD_ERR_UNAVAILABLE;
}

qd_err qd_matmul_lp_cuda(qd_cuda *c, float *y, const void *x, const void *w, qd_dtype dt,
                         const float *bias, int64_t m, int64_t n, int64_t k, qd_error *err) {
    const qd_cuda_module *mod = need(err);
    return mod ? mod->matmul_lp(c, y, x, w, dt, bias, m, n, k, err) : QD_ERR_UNAVAILABLE;
}

qd_err qd_convert_cuda(qd_cuda *c, void *dst, qd_dtype dst_type, const void *src,
                       qd_dtype src_type, int64_t n, qd_error *err) {
    const qd_cuda_module *mod = need(err);
    return mod ? mod->convert(c, dst, dst_type, src, src_type, n, err) : QD_ERR_UNAVAILABLE;
}

qd_err qd_xtx_accum_cuda(qd_cuda *c, float *h, const float *x, int64_t n, int64_t k,
                         float alpha, qd_error *err) {
    const qd_cuda_module *mod = need(err);
    return mod ? mod->xtx_accum(c, h, x, n, k, alpha, err) : QD_ERR_UNAVAILABLE;
}

qd_err qd_rmsnorm_cuda(qd_cuda *c, float *y, const float *x, const float *w, int64_t n,
                       int64_t d, double eps, qd_error *err) {
    const qd_cuda_module *mod = need(err);
    return mod ? mod->rmsnorm(c, y, x, w, n, d, eps, err) : QD_ERR_UNAVAILABLE;
}

qd_err qd_rope_apply_cuda(qd_cuda *c, float *x, int64_t n_tok, int64_t row_stride,
                          int64_t seq_len, int n_heads, int head_dim, const float *cos_t,
                          const float *sin_t, qd_error *err) {
    const qd_cuda_module *mod = need(err);
    return mod ? mod->rope_apply(c, x, n_tok, row_stride, seq_len, n_heads, head_dim, cos_t,
                                 sin_t, err)
               : QD_ERR_UNAVAILABLE;
}

qd_err qd_silu_mul_cuda(qd_cuda *c, float *out, const float *gate, const float *up, int64_t n,
                        qd_error *err) {
    const qd_cuda_module *mod = need(err);
    return mod ? mod->silu_mul(c, out, gate, up, n, err) : QD_ERR_UNAVAILABLE;
}

qd_err qd_attention_cuda(qd_cuda *c, float *out, const float *q, const float *k,
                         const float *v, int64_t n_seq, int64_t seq_len, int n_heads,
                         int n_kv_heads, int head_dim, qd_error *err) {
    const qd_cuda_module *mod = need(err);
    return mod ? mod->attention(c, out, q, k, v, n_seq, seq_len, n_heads, n_kv_heads, head_dim,
                                err)
               : QD_ERR_UNAVAILABLE;
}

qd_err qd_act_stats_add_cuda(qd_cuda *c, const float *x, int64_t n_tok, int64_t n_in,
                             double *sum_abs, float *max_abs, qd_error *err) {
    const qd_cuda_module *mod = need(err);
    return mod ? mod->act_stats_add(c, x, n_tok, n_in, sum_abs, max_abs, err)
               : QD_ERR_UNAVAILABLE;
}

qd_err qd_add_cuda(qd_cuda *c, float *dst, const float *a, const float *b, int64_t n,
                   qd_error *err) {
    const qd_cuda_module *mod = need(err);
    return mod ? mod->add(c, dst, a, b, n, err) : QD_ERR_UNAVAILABLE;
}

qd_err qd_sq_diff_cuda(qd_cuda *c, const float *a, const float *b, int64_t n, double *ret,
                       qd_error *err) {
    const qd_cuda_module *mod = need(err);
    return mod ? mod->sq_diff(c, a, b, n, ret, err) : QD_ERR_UNAVAILABLE;
}

/* ---- GPTQ --------------------------------------------------------------------------------- */

qd_err qd_gptq_hessian_add_cuda(qd_cuda *c, float *h, int64_t k, int64_t *n_samples,
                                const float *x, int64_t n_tok, int64_t n_seq, qd_error *err) {
    const qd_cuda_module *mod = need(err);
    return mod ? mod->gptq_hessian_add(c, h, k, n_samples, x, n_tok, n_seq, err)
               : QD_ERR_UNAVAILABLE;
}

qd_err qd_gptq_quantize_cuda(qd_cuda *c, const float *w, int n, int k, const float *h,
                             const qd_cuda_gptq_opts *o, uint8_t *codes, float *scales,
                             float *zeros, int32_t *ret_g_idx, float *dequant,
                             qd_cuda_gptq_stats *ret_stats, qd_error *err) {
    const qd_cuda_module *mod = need(err);
    return mod ? mod->gptq_quantize(c, w, n, k, h, o, codes, scales, zeros, ret_g_idx, dequant,
                                    ret_stats, err)
               : QD_ERR_UNAVAILABLE;
}

/* ---- AWQ ---------------------------------------------------------------------------------- */

qd_err qd_awq_fake_quant_cuda(qd_cuda *c, const float *w, int64_t n, int64_t k, const float *s,
                              int bits, int64_t group_size, qd_qrule rule, qd_dtype scale_dtype,
                              float *ret, qd_error *err) {
    const qd_cuda_module *mod = need(err);
    return mod ? mod->awq_fake_quant(c, w, n, k, s, bits, group_size, rule, scale_dtype, ret,
                                     err)
               : QD_ERR_UNAVAILABLE;
}

qd_err qd_awq_loss_cuda(qd_cuda *c, const float *x, int64_t n_tok, const float *w, int64_t n,
                        int64_t k, const float *s, int bits, int64_t group_size, qd_qrule rule,
                        qd_dtype scale_dtype, const float *y_ref, double *ret_sse,
                        qd_error *err) {
    const qd_cuda_module *mod = need(err);
    return mod ? mod->awq_loss(c, x, n_tok, w, n, k, s, bits, group_size, rule, scale_dtype,
                               y_ref, ret_sse, err)
               : QD_ERR_UNAVAILABLE;
}

qd_err qd_awq_clip_search_cuda(qd_cuda *c, const float *w, int64_t n, int64_t k, const float *x,
                               int64_t n_tok, int bits, int64_t group_size, qd_qrule rule,
                               qd_dtype scale_dtype, double max_shrink, int clip_n_grid,
                               float *ret_max, qd_error *err) {
    const qd_cuda_module *mod = need(err);
    return mod ? mod->awq_clip_search(c, w, n, k, x, n_tok, bits, group_size, rule,
                                      scale_dtype, max_shrink, clip_n_grid, ret_max, err)
               : QD_ERR_UNAVAILABLE;
}

/* ---- the kernel table --------------------------------------------------------------------- */

void qd_kernels_cuda(qd_cuda *c, qd_kernels *ret) {
    const qd_cuda_module *mod = module();
    if (mod) {
        mod->kernels(c, ret);
        return;
    }
    /* no module, so no context either: a table with no entries, which callers treat as
     * "this backend does not have the op" */
    memset(ret, 0, sizeof *ret);
    ret->kind = QD_BACKEND_CUDA;
    ret->name = "cuda";
    ret->ctx = c;
}
