/*
 * emu-module.c - libquantd-cuda-emu.so: a CUDA module (kernels/cuda/module.h) whose "device" is
 * host memory and whose every op is the CPU code path quantd runs when no device is given, so
 * that a job run with --device cuda:0 on it must write the same artifact, byte for byte, as the
 * same job on the CPU. CI loads it with QUANTD_CUDA_MODULE (tests/gpu/emu.cmake).
 *
 * DESIGN
 * What it is for. The code that orchestrates a job on a GPU (which buffers it allocates, what
 * it uploads, at which offsets it runs each op, what it downloads) can otherwise only be tested
 * where a GPU is. Here each op computes exactly what the CPU job computes at that step, called
 * the same way (qd_matmul_cpu for a GEMM, qd_gptq_quantize for GPTQ, qd_awq_clip_search with
 * the CPU run options, ...), so any difference between the emulated job's artifact and the CPU
 * job's is an orchestration bug (a stale buffer, a missing upload, a wrong chunk offset) or a
 * device path that does not compute what the CPU computes.
 *
 * Device memory. One emulated device (cuda:0) with a budget of QUANTD_EMU_MEMORY_MIB MiB
 * (default 4096), shared by every context of the process as a GPU's memory is. qd_cuda_alloc
 * counts against it and fails past it with QD_ERR_NOMEM as cudaMalloc does; so do the ops'
 * scratch buffers and the kernel table's staging, which the real module takes from the device
 * too, so a full device fails a job where it would on a GPU. A buffer is host memory from the
 * allocator (256-byte aligned, like cudaMalloc's), so a sanitizer build sees overruns of device
 * buffers too. Buffers up to EMU_POISON_MAX are filled with 0xFF bytes (a float NaN) when
 * allocated, so an op that reads device memory nothing wrote spreads NaN into the result instead
 * of reading zeros; larger ones are left untouched (fresh pages, zeros), so that a test may take
 * the whole budget without the host paying for it.
 *
 * Pointer checks. On the emulator a host pointer passed where device memory belongs would
 * simply work, hiding the bug. So every live buffer is recorded (a table sorted by address), and
 * each op checks that each device argument lies inside one buffer over the whole extent the op
 * reads or writes, and that each host argument does not touch device memory. A bad device
 * argument to a compute op is what a GPU reports as an illegal address: QD_ERR_DEVICE, and the
 * context is broken from then on (qd_cuda_broken), as on a GPU. A bad argument to a copy is
 * QD_ERR_DEVICE without breaking the context (cudaErrorInvalidValue). qd_cuda_free of a pointer
 * that is not a live buffer frees nothing and fails the next synchronising call.
 *
 * Streams. Ops run at once on the calling thread; "asynchronous" ops are done when they return,
 * which is one legal schedule of a stream. One context is used by one thread at a time (the
 * contract); the buffer table and the budget belong to the device, shared under a mutex.
 *
 * The module links its own copies of qd_quantizers, qd_kernels and qd_common; they are hidden
 * (as the real module hides its qd_common), so they never meet quantd's. Their global settings
 * are their own: the CPU ops here use every online CPU whatever quantd's --threads says, which
 * changes no bit (the CPU kernels split work by shape, not by thread count).
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "awq.h"
#include "calib.h"
#include "dtype.h"
#include "gptq.h"
#include "module.h"
#include "ops.h"
#include "pack_check.h"
#include "pack.h"
#include "qlinear.h"
#include "quant.h"

#define EMU_NAME "quantd host emulator"
#define EMU_MEMORY_ENV "QUANTD_EMU_MEMORY_MIB"
#define EMU_DEFAULT_MIB 4096ull
#define EMU_MAX_MIB (1ull << 24) /* 16 TiB: any sane budget, and << 20 still fits size_t */
#define EMU_ALIGN 256            /* cudaMalloc's alignment */
/* Buffers up to this size are poisoned with NaN bytes; larger ones stay untouched pages. */
#define EMU_POISON_MAX ((size_t)64 << 20)
#define EMU_POISON_BYTE 0xFF

/* The real module's limits that decide whether it accepts a call (kernels/cuda's .cu files). */
#define EMU_ATT_MAX_HEAD_DIM 256
#define EMU_GPTQ_MAX_BLOCK 256
#define EMU_STATS_MAX_CHUNKS 128

/* ---- the device: budget and live buffers (shared by every context) ---------------------- */

struct emu_block {
    uintptr_t base;
    size_t size;
};

static struct {
    pthread_mutex_t lock;
    size_t budget;            /* bytes */
    size_t used;              /* bytes of live buffers, scratch and staging */
    struct emu_block *blocks; /* [n_blocks] live buffers, sorted by base */
    size_t n_blocks, cap;
    char why[256];            /* set: the configuration is bad and there is no device */
} g_dev = {.lock = PTHREAD_MUTEX_INITIALIZER};

static pthread_once_t g_once = PTHREAD_ONCE_INIT;

/* The budget from QUANTD_EMU_MEMORY_MIB, once per process: a whole number of MiB in
 * 1..EMU_MAX_MIB. A bad value leaves no device (with the reason) rather than a guessed one. */
static void dev_init(void) {
    unsigned long long mib = EMU_DEFAULT_MIB;
    const char *s = getenv(EMU_MEMORY_ENV);
    if (s && s[0]) {
        char *end = NULL;
        errno = 0;
        unsigned long long v = s[0] >= '0' && s[0] <= '9' ? strtoull(s, &end, 10) : 0;
        if (errno != 0 || !end || *end != '\0' || v < 1 || v > EMU_MAX_MIB) {
            snprintf(g_dev.why, sizeof g_dev.why, "emulator: %s=%.64s is not a whole number "
                     "of MiB in 1..%llu", EMU_MEMORY_ENV, s, EMU_MAX_MIB);
            return;
        }
        mib = v;
    }
    g_dev.budget = (size_t)mib << 20;
}

/* Why there is no device, or NULL when there is one. */
static const char *dev_missing(void) {
    (void)pthread_once(&g_once, dev_init);
    return g_dev.why[0] ? g_dev.why : NULL;
}

/* Index of the last block with base <= p, or -1; under the lock. */
static ptrdiff_t block_at_or_before(uintptr_t p) {
    size_t lo = 0, hi = g_dev.n_blocks; /* ends as the first index with base > p */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (g_dev.blocks[mid].base <= p)
            lo = mid + 1;
        else
            hi = mid;
    }
    return (ptrdiff_t)lo - 1;
}

/* Whether [p, p + n) lies inside one live buffer (n >= 1). */
static bool dev_inside(const void *p, size_t n) {
    uintptr_t a = (uintptr_t)p;
    bool ok = false;
    if (!p || n > UINTPTR_MAX - a) return false;
    pthread_mutex_lock(&g_dev.lock);
    ptrdiff_t i = block_at_or_before(a);
    if (i >= 0) {
        const struct emu_block *b = &g_dev.blocks[i];
        ok = a + n <= b->base + b->size;
    }
    pthread_mutex_unlock(&g_dev.lock);
    return ok;
}

/* Whether any byte of [p, p + n) is inside a live buffer (n >= 1). */
static bool dev_touches(const void *p, size_t n) {
    uintptr_t a = (uintptr_t)p;
    bool hit = false;
    if (!p) return false;
    uintptr_t last = n - 1 > UINTPTR_MAX - a ? UINTPTR_MAX : a + (n - 1);
    pthread_mutex_lock(&g_dev.lock);
    ptrdiff_t i = block_at_or_before(last); /* the only block that can start at or before last
                                             * and still reach a: blocks do not overlap */
    if (i >= 0) {
        const struct emu_block *b = &g_dev.blocks[i];
        hit = b->base + b->size > a;
    }
    pthread_mutex_unlock(&g_dev.lock);
    return hit;
}

/* Take n bytes of the budget; false when they are not there. */
static bool budget_take(size_t n) {
    bool ok;
    pthread_mutex_lock(&g_dev.lock);
    ok = n <= g_dev.budget - g_dev.used;
    if (ok) g_dev.used += n;
    pthread_mutex_unlock(&g_dev.lock);
    return ok;
}

static void budget_give(size_t n) {
    pthread_mutex_lock(&g_dev.lock);
    g_dev.used -= n;
    pthread_mutex_unlock(&g_dev.lock);
}

/* Record a live buffer; false when the table cannot grow. */
static bool block_add(void *p, size_t n) {
    bool ok = true;
    pthread_mutex_lock(&g_dev.lock);
    if (g_dev.n_blocks == g_dev.cap) {
        size_t cap = g_dev.cap ? 2 * g_dev.cap : 64;
        struct emu_block *t = realloc(g_dev.blocks, cap * sizeof *t);
        if (t) {
            g_dev.blocks = t;
            g_dev.cap = cap;
        } else {
            ok = false;
        }
    }
    if (ok) {
        ptrdiff_t i = block_at_or_before((uintptr_t)p) + 1;
        memmove(&g_dev.blocks[i + 1], &g_dev.blocks[i],
                (g_dev.n_blocks - (size_t)i) * sizeof *g_dev.blocks);
        g_dev.blocks[i].base = (uintptr_t)p;
        g_dev.blocks[i].size = n;
        g_dev.n_blocks++;
    }
    pthread_mutex_unlock(&g_dev.lock);
    return ok;
}

/* Forget the buffer that starts at p and give its bytes back; false when no buffer starts
 * there (then nothing changes). */
static bool block_remove(const void *p) {
    bool found = false;
    pthread_mutex_lock(&g_dev.lock);
    ptrdiff_t i = block_at_or_before((uintptr_t)p);
    if (i >= 0 && g_dev.blocks[i].base == (uintptr_t)p) {
        g_dev.used -= g_dev.blocks[i].size;
        memmove(&g_dev.blocks[i], &g_dev.blocks[i + 1],
                (g_dev.n_blocks - (size_t)i - 1) * sizeof *g_dev.blocks);
        g_dev.n_blocks--;
        found = true;
    }
    pthread_mutex_unlock(&g_dev.lock);
    return found;
}

/* ---- the context -------------------------------------------------------------------------- */

struct qd_cuda {
    qd_device_info info;
    bool broken;                  /* an illegal access happened: refuse further work */
    char fault[QD_ERROR_MSG_MAX]; /* set: a misuse without a return value (a bad free), to be
                                   * reported by the next synchronising call */
};

static void fill_info(qd_device_info *out) {
    memset(out, 0, sizeof *out);
    out->kind = QD_BACKEND_CUDA;
    out->index = 0;
    snprintf(out->name, sizeof out->name, "%s", EMU_NAME);
    out->memory_bytes = g_dev.budget;
    out->compute_capability = 0;
}

static int emu_device_count(const char **note) {
    const char *why = dev_missing();
    if (note) *note = why ? why : "ok";
    return why ? 0 : 1;
}

static int emu_device_info(int index, qd_device_info *out) {
    if (dev_missing() || index != 0 || !out) return -1;
    fill_info(out);
    return 0;
}

static qd_err emu_open(int device, qd_cuda **ret_ctx, qd_error *err) {
    const char *why = dev_missing();
    if (why) return qd_error_set(err, QD_ERR_UNAVAILABLE, "cuda: no CUDA device (%s)", why);
    if (device != 0)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda: device %d does not exist (1 "
                            "device)", device);
    qd_cuda *c = calloc(1, sizeof *c);
    if (!c) return qd_error_set(err, QD_ERR_NOMEM, "cuda: no memory for a context");
    fill_info(&c->info);
    *ret_ctx = c;
    return QD_OK;
}

/* Buffers outlive the context, as cudaMalloc's outlive a stream: qd_cuda_free releases them. */
static void emu_close(qd_cuda *c) {
    free(c);
}

static const qd_device_info *emu_info(const qd_cuda *c) {
    return &c->info;
}

/* One "multiprocessor": nothing in quantd's C code sizes work by it. */
static int emu_sm_count(const qd_cuda *c) {
    (void)c;
    return 1;
}

static bool emu_broken(const qd_cuda *c) {
    return c->broken;
}

/* The first line of every entry point, as the real module's qd_cuda_usable. */
static qd_err usable(const qd_cuda *c, qd_error *err) {
    if (!c) return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda: no context");
    if (c->broken)
        return qd_error_set(err, QD_ERR_DEVICE, "cuda: device %d had an unrecoverable error "
                            "earlier; close the context", c->info.index);
    return QD_OK;
}

/* What a synchronising call (sync, download, an op that waits) reports first: a misuse that
 * happened since the last one. */
static qd_err settle(qd_cuda *c, qd_error *err) {
    qd_err rc = usable(c, err);
    if (rc || !c->fault[0]) return rc;
    rc = qd_error_set(err, QD_ERR_DEVICE, "%s", c->fault);
    c->fault[0] = '\0';
    return rc;
}

/* ---- argument checks ---------------------------------------------------------------------- */

/* a * b for counts >= 0, saturating at INT64_MAX (a saturated extent fails every check). */
static int64_t mul_sat(int64_t a, int64_t b) {
    if (a <= 0 || b <= 0) return 0;
    return a > INT64_MAX / b ? INT64_MAX : a * b;
}

/* Bytes of count elements of size elem; SIZE_MAX when it does not fit. */
static size_t bytes_of(int64_t count, size_t elem) {
    if (count <= 0) return 0;
    if ((uint64_t)count > SIZE_MAX / elem) return SIZE_MAX;
    return (size_t)count * elem;
}

/* A device argument of a compute op: `what` (n bytes at p) must lie inside one buffer. A GPU
 * kernel handed anything else faults with an illegal address, which breaks the context. */
static qd_err need_dev(qd_cuda *c, const char *op, const char *what, const void *p, size_t n,
                       qd_error *err) {
    if (n == 0 || dev_inside(p, n)) return QD_OK;
    c->broken = true;
    return qd_error_set(err, QD_ERR_DEVICE, "cuda: %s failed: an illegal memory access was "
                        "encountered (emulated: %s at %p, %zu bytes, is not inside one device "
                        "buffer: a host pointer, a freed buffer or an extent past its end); the "
                        "device is unusable until the process restarts", op, what, p, n);
}

/* A device argument of a copy: as need_dev, but the runtime refuses the copy
 * (cudaErrorInvalidValue) and the context stays usable. */
static qd_err need_dev_copy(const char *op, const char *what, const void *p, size_t n,
                            qd_error *err) {
    if (n == 0 || dev_inside(p, n)) return QD_OK;
    return qd_error_set(err, QD_ERR_DEVICE, "cuda: %s of %zu bytes failed: invalid argument "
                        "(emulated: %s at %p is not inside one device buffer)", op, n, what, p);
}

/* A host argument: n bytes at p that must not touch device memory (the host code reading or
 * writing it would fault on a GPU machine; a copy would be refused). */
static qd_err need_host(const char *op, const char *what, const void *p, size_t n,
                        qd_error *err) {
    if (n == 0 || !dev_touches(p, n)) return QD_OK;
    return qd_error_set(err, QD_ERR_DEVICE, "cuda: %s failed: invalid argument (emulated: %s "
                        "at %p is device memory where a host pointer belongs)", op, what, p);
}

/* ---- memory ------------------------------------------------------------------------------- */

static qd_err no_budget(size_t n, const char *op, const char *what, qd_error *err) {
    size_t used;
    pthread_mutex_lock(&g_dev.lock);
    used = g_dev.used;
    pthread_mutex_unlock(&g_dev.lock);
    return qd_error_set(err, QD_ERR_NOMEM, "cuda: %s of %zu bytes%s%s failed: out of memory "
                        "(emulated, budget %zu MiB, %zu MiB in use; %s sets it)", op, n,
                        what ? " for " : "", what ? what : "", g_dev.budget >> 20, used >> 20,
                        EMU_MEMORY_ENV);
}

/* A device buffer: n bytes of the budget and of host memory, aligned as cudaMalloc's,
 * poisoned unless large, recorded as live. */
static qd_err emu_alloc(qd_cuda *c, size_t nbytes, void **ret_ptr, qd_error *err) {
    qd_err rc = usable(c, err);
    void *p = NULL;
    if (rc) return rc;
    if (nbytes == 0) {
        *ret_ptr = NULL;
        return QD_OK;
    }
    if (!budget_take(nbytes)) return no_budget(nbytes, "cudaMalloc", NULL, err);
    if (posix_memalign(&p, EMU_ALIGN, nbytes) != 0) {
        budget_give(nbytes);
        return qd_error_set(err, QD_ERR_NOMEM, "cuda: cudaMalloc of %zu bytes failed: out of "
                            "memory (emulated: the host has not that much)", nbytes);
    }
    if (nbytes <= EMU_POISON_MAX) memset(p, EMU_POISON_BYTE, nbytes);
    if (!block_add(p, nbytes)) {
        free(p);
        budget_give(nbytes);
        return qd_error_set(err, QD_ERR_NOMEM, "cuda: cudaMalloc of %zu bytes failed: out of "
                            "memory (emulated: no room to record the buffer)", nbytes);
    }
    *ret_ptr = p;
    return QD_OK;
}

static void emu_free(qd_cuda *c, void *ptr) {
    if (!c || !ptr) return;
    if (block_remove(ptr)) {
        free(ptr);
        return;
    }
    /* not a live buffer (a double free, a host pointer, an offset into a buffer): free nothing
     * - it may be anyone's memory - and report it at the next synchronising call */
    if (!c->fault[0])
        snprintf(c->fault, sizeof c->fault, "cuda: cudaFree(%p) failed: invalid argument "
                 "(emulated: not the start of a live device buffer: freed twice, a host "
                 "pointer or an offset into a buffer)", ptr);
}

/* Scratch of an op (the real module's cudaMallocAsync): budget and host memory, released with
 * scratch_free before the op returns. *ret NULL for 0 bytes. */
static qd_err scratch(size_t nbytes, const char *what, void **ret, qd_error *err) {
    *ret = NULL;
    if (nbytes == 0) return QD_OK;
    if (!budget_take(nbytes)) return no_budget(nbytes, "cudaMallocAsync", what, err);
    *ret = malloc(nbytes);
    if (!*ret) {
        budget_give(nbytes);
        return qd_error_set(err, QD_ERR_NOMEM, "cuda: cudaMallocAsync of %zu bytes for %s "
                            "failed: out of memory (emulated: the host has not that much)",
                            nbytes, what);
    }
    return QD_OK;
}

static void scratch_free(void *p, size_t nbytes) {
    if (!p) return;
    free(p);
    budget_give(nbytes);
}

/* Whether the budget has room for the working set of an op whose CPU code allocates its own
 * host memory: the real module takes that much scratch from the device. */
static qd_err scratch_probe(size_t nbytes, const char *what, qd_error *err) {
    if (!budget_take(nbytes)) return no_budget(nbytes, "cudaMallocAsync", what, err);
    budget_give(nbytes);
    return QD_OK;
}

static qd_err emu_upload(qd_cuda *c, void *dst, const void *src, size_t nbytes, qd_error *err) {
    qd_err rc = usable(c, err);
    if (rc || nbytes == 0) return rc;
    if ((rc = need_dev_copy("cudaMemcpyAsync (host to device)", "the destination", dst, nbytes,
                            err)))
        return rc;
    if (!src)
        return qd_error_set(err, QD_ERR_DEVICE, "cuda: cudaMemcpyAsync (host to device) of %zu "
                            "bytes failed: invalid argument (NULL source)", nbytes);
    if ((rc = need_host("cudaMemcpyAsync (host to device)", "the source", src, nbytes, err)))
        return rc;
    memcpy(dst, src, nbytes);
    return QD_OK;
}

static qd_err emu_download(qd_cuda *c, void *dst, const void *src, size_t nbytes,
                           qd_error *err) {
    qd_err rc = settle(c, err);
    if (rc || nbytes == 0) return rc;
    if ((rc = need_dev_copy("cudaMemcpyAsync (device to host)", "the source", src, nbytes,
                            err)))
        return rc;
    if (!dst)
        return qd_error_set(err, QD_ERR_DEVICE, "cuda: cudaMemcpyAsync (device to host) of %zu "
                            "bytes failed: invalid argument (NULL destination)", nbytes);
    if ((rc = need_host("cudaMemcpyAsync (device to host)", "the destination", dst, nbytes,
                        err)))
        return rc;
    memcpy(dst, src, nbytes);
    return QD_OK;
}

static qd_err emu_copy(qd_cuda *c, void *dst, const void *src, size_t nbytes, qd_error *err) {
    qd_err rc = usable(c, err);
    if (rc || nbytes == 0) return rc;
    if ((rc = need_dev_copy("cudaMemcpyAsync (device to device)", "the destination", dst,
                            nbytes, err)) ||
        (rc = need_dev_copy("cudaMemcpyAsync (device to device)", "the source", src, nbytes,
                            err)))
        return rc;
    memmove(dst, src, nbytes);
    return QD_OK;
}

static qd_err emu_fill(qd_cuda *c, void *dst, int byte, size_t nbytes, qd_error *err) {
    qd_err rc = usable(c, err);
    if (rc || nbytes == 0) return rc;
    if ((rc = need_dev_copy("cudaMemsetAsync", "the destination", dst, nbytes, err))) return rc;
    memset(dst, byte, nbytes);
    return QD_OK;
}

static qd_err emu_sync(qd_cuda *c, qd_error *err) {
    return settle(c, err);
}

/* ---- quantization ------------------------------------------------------------------------- */

/* The real module's checks of RTN and the packs (quant.cu check_rtn). */
static qd_err check_rtn(int64_t n, int64_t k, int bits, int64_t group_size, qd_qrule rule,
                        qd_dtype sdt, const char *what, qd_error *err) {
    if (n < 1 || k < 1)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda %s: bad weight shape [%lld, %lld]",
                            what, (long long)n, (long long)k);
    if (bits < QD_QUANT_MIN_BITS || bits > QD_QUANT_MAX_BITS)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda %s: bits %d outside %d..%d", what,
                            bits, QD_QUANT_MIN_BITS, QD_QUANT_MAX_BITS);
    if (group_size < 1 || k % group_size != 0)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda %s: group_size %lld does not divide "
                            "in_features %lld", what, (long long)group_size, (long long)k);
    if (!qd_qrule_valid((int)rule))
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda %s: unknown quantization rule %d",
                            what, (int)rule);
    if (sdt != QD_DTYPE_F32 && sdt != QD_DTYPE_F16 && sdt != QD_DTYPE_BF16)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda %s: scale dtype %d is not F32, F16 "
                            "or BF16", what, (int)sdt);
    return QD_OK;
}

static qd_err emu_quant_rtn(qd_cuda *c, const float *w, int64_t n, int64_t k, int bits,
                            int64_t group_size, qd_qrule rule, qd_dtype scale_dtype,
                            uint8_t *codes, float *scales, float *zeros, qd_error *err) {
    const char *op = "rtn";
    qd_err rc = usable(c, err);
    void *tmp = NULL;
    if (rc) return rc;
    if ((rc = check_rtn(n, k, bits, group_size, rule, scale_dtype, op, err))) return rc;
    if (!w || !scales || !zeros)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda rtn: NULL buffer");
    size_t nk = bytes_of(mul_sat(n, k), 1), np = bytes_of(n * (k / group_size), sizeof(float));
    if ((rc = need_dev(c, op, "w", w, nk * sizeof(float), err)) ||
        (codes && (rc = need_dev(c, op, "codes", codes, nk, err))) ||
        (rc = need_dev(c, op, "scales", scales, np, err)) ||
        (rc = need_dev(c, op, "zeros", zeros, np, err)))
        return rc;
    /* the CPU kernel always writes codes; without a buffer for them they go to scratch */
    if (!codes && (rc = scratch(nk, "rtn codes", &tmp, err))) return rc;
    qd_quant_rtn_cpu(w, n, k, bits, group_size, rule, scale_dtype, codes ? codes : tmp, scales,
                     zeros, 0);
    scratch_free(tmp, nk);
    return QD_OK;
}

static qd_err emu_quant_fp8(qd_cuda *c, const float *w, int64_t n, int64_t k, bool per_channel,
                            qd_dtype scale_dtype, uint8_t *codes, float *scales,
                            qd_error *err) {
    const char *op = "fp8";
    qd_err rc = usable(c, err);
    if (rc) return rc;
    if (n < 1 || k < 1 || !w || !codes || !scales)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda fp8: bad arguments (shape [%lld, "
                            "%lld])", (long long)n, (long long)k);
    if (scale_dtype != QD_DTYPE_F32 && scale_dtype != QD_DTYPE_F16 &&
        scale_dtype != QD_DTYPE_BF16)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda fp8: scale dtype %d is not F32, F16 "
                            "or BF16", (int)scale_dtype);
    size_t nk = bytes_of(mul_sat(n, k), 1);
    if ((rc = need_dev(c, op, "w", w, nk * sizeof(float), err)) ||
        (rc = need_dev(c, op, "codes", codes, nk, err)) ||
        (rc = need_dev(c, op, "scales", scales, bytes_of(n, sizeof(float)), err)))
        return rc;
    qd_quant_fp8_cpu(w, n, k, per_channel, scale_dtype, codes, scales, 0);
    return QD_OK;
}

/* ---- packing (kernels/pack.h; the layouts of qd_cuda.h) ---------------------------------- */


/* Element counts of the three packed tensors of a checked layout. */
struct pack_shape {
    int64_t qweight, qzeros, scales;
    size_t scale_elem; /* bytes per scale */
};

static struct pack_shape pack_shape_of(qd_cuda_layout layout, int64_t n, int64_t k, int bits,
                                       int64_t ng, qd_dtype sdt) {
    const int64_t pf = qd_pack_per_word(bits);
    struct pack_shape s;
    s.scales = n * ng;
    s.scale_elem = 2; /* F16 */
    if (layout == QD_CUDA_LAYOUT_AWQ_GEMM) {
        s.qweight = k * (n / 8);
        s.qzeros = ng * (n / 8);
    } else if (layout == QD_CUDA_LAYOUT_CT_PACKED) {
        s.qweight = n * ((k + pf - 1) / pf);
        s.qzeros = (n + pf - 1) / pf * ng;
        s.scale_elem = qd_dtype_size(sdt);
    } else {
        s.qweight = k / pf * n;
        s.qzeros = ng * (n / pf);
    }
    return s;
}

static qd_err need_packed(qd_cuda *c, const char *op, const struct pack_shape *s,
                          const qd_cuda_packed *out, qd_error *err) {
    qd_err rc;
    if ((rc = need_dev(c, op, "qweight", out->qweight, bytes_of(s->qweight, 4), err)) ||
        (out->qzeros &&
         (rc = need_dev(c, op, "qzeros", out->qzeros, bytes_of(s->qzeros, 4), err))) ||
        (out->scales &&
         (rc = need_dev(c, op, "the scale tensor", out->scales,
                        bytes_of(s->scales, s->scale_elem), err))))
        return rc;
    return QD_OK;
}

/* The layout's words from codes [n, k] and scales, zeros [n, ng] (group order), as the real
 * module's pack kernels lay them out (qd_cuda.h, qd_cuda_layout). */
static void pack_words(qd_cuda_layout layout, const uint8_t *codes, const float *scales,
                       const float *zeros, int64_t n, int64_t k, int bits, int64_t ng,
                       qd_dtype sdt, const qd_cuda_packed *out) {
    const int pf = qd_pack_per_word(bits);
    if (layout == QD_CUDA_LAYOUT_AWQ_GEMM) {
        /* qweight [K, N/8]: word (col, j) holds rows 8j..8j+7 of the column, interleaved;
         * qzeros [NG, N/8] the same interleave, raw */
        const int64_t nw = n / 8;
        for (int64_t col = 0; col < k; col++)
            for (int64_t j = 0; j < nw; j++)
                out->qweight[col * nw + j] = qd_pack_awq(codes + 8 * j * k + col, k);
        if (out->qzeros)
            for (int64_t g = 0; g < ng; g++)
                for (int64_t j = 0; j < nw; j++) {
                    uint32_t word = 0;
                    for (int i = 0; i < 8; i++)
                        word |= qd_pack_zero_field(zeros[(8 * j + qd_awq_order(i)) * ng + g],
                                                   0, 4)
                                << (4 * i);
                    out->qzeros[g * nw + j] = word;
                }
    } else if (layout == QD_CUDA_LAYOUT_CT_PACKED) {
        /* weight_packed [N, ceil(K/pf)], the row's last word padded with 0 fields;
         * weight_zero_point [ceil(N/pf), NG] along the rows, padded with 0 */
        const int64_t wcn = (k + pf - 1) / pf, nrw = (n + pf - 1) / pf;
        for (int64_t r = 0; r < n; r++)
            for (int64_t wc = 0; wc < wcn; wc++) {
                int64_t left = k - wc * pf;
                int cnt = left < pf ? (int)left : pf;
                out->qweight[r * wcn + wc] = qd_pack_seq(codes + r * k + wc * pf, 1, cnt, bits);
            }
        if (out->qzeros)
            for (int64_t rw = 0; rw < nrw; rw++)
                for (int64_t g = 0; g < ng; g++) {
                    uint32_t word = 0;
                    for (int i = 0; i < pf; i++) {
                        int64_t r = rw * pf + i;
                        if (r < n)
                            word |= qd_pack_zero_field(zeros[r * ng + g], 0, bits) << (bits * i);
                    }
                    out->qzeros[rw * ng + g] = word;
                }
    } else {
        /* qweight [K/pf, N]: word (wc, row) packs pf consecutive columns of the row;
         * qzeros [NG, N/pf] along the rows, each zero minus 1 (v1) or raw (v2) */
        const int off = layout == QD_CUDA_LAYOUT_GPTQ_V1 ? 1 : 0;
        const int64_t kw = k / pf, nw = n / pf;
        for (int64_t wc = 0; wc < kw; wc++)
            for (int64_t r = 0; r < n; r++)
                out->qweight[wc * n + r] = qd_pack_seq(codes + r * k + wc * pf, 1, pf, bits);
        if (out->qzeros)
            for (int64_t g = 0; g < ng; g++)
                for (int64_t cw = 0; cw < nw; cw++) {
                    uint32_t word = 0;
                    for (int i = 0; i < pf; i++)
                        word |= qd_pack_zero_field(zeros[(cw * pf + i) * ng + g], off, bits)
                                << (bits * i);
                    out->qzeros[g * nw + cw] = word;
                }
    }
    if (!out->scales) return;
    /* AWQ and GPTQ: F16 [NG, N] (transposed); compressed-tensors: sdt [N, NG] as is */
    const bool ct = layout == QD_CUDA_LAYOUT_CT_PACKED;
    const qd_dtype dt = ct ? sdt : QD_DTYPE_F16;
    for (int64_t t = 0; t < n * ng; t++) {
        float v = scales[ct ? t : (t % n) * ng + t / n];
        if (dt == QD_DTYPE_F16)
            ((uint16_t *)out->scales)[t] = qd_fp32_to_fp16(v);
        else if (dt == QD_DTYPE_BF16)
            ((uint16_t *)out->scales)[t] = qd_fp32_to_bf16(v);
        else
            ((float *)out->scales)[t] = v;
    }
}

static qd_err emu_quant_pack(qd_cuda *c, const float *w, int64_t n, int64_t k, int bits,
                             int64_t group_size, qd_qrule rule, qd_dtype scale_dtype,
                             qd_cuda_layout layout, const qd_cuda_packed *out, qd_error *err) {
    const char *op = "quant_pack";
    qd_err rc = usable(c, err);
    void *tc = NULL, *ts = NULL, *tz = NULL;
    if (rc) return rc;
    if ((rc = check_rtn(n, k, bits, group_size, rule, scale_dtype, "pack", err)) ||
        (rc = qd_cuda_check_layout(layout, n, k, bits, group_size, rule, scale_dtype,
                                     out, err)))
        return rc;
    if (!w) return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda pack: NULL weights");
    const int64_t ng = k / group_size;
    const size_t nk = bytes_of(mul_sat(n, k), 1), np = bytes_of(n * ng, sizeof(float));
    struct pack_shape s = pack_shape_of(layout, n, k, bits, ng, scale_dtype);
    if ((rc = need_dev(c, op, "w", w, nk * sizeof(float), err)) ||
        (rc = need_packed(c, op, &s, out, err)) ||
        (out->codes && (rc = need_dev(c, op, "codes", out->codes, nk, err))) ||
        (out->scales_f32 && (rc = need_dev(c, op, "scales_f32", out->scales_f32, np, err))) ||
        (out->zeros_f32 && (rc = need_dev(c, op, "zeros_f32", out->zeros_f32, np, err))))
        return rc;
    if ((out->codes || (rc = scratch(nk, "pack codes", &tc, err)) == QD_OK) &&
        (out->scales_f32 || (rc = scratch(np, "pack scales", &ts, err)) == QD_OK) &&
        (out->zeros_f32 || (rc = scratch(np, "pack zero points", &tz, err)) == QD_OK)) {
        uint8_t *codes = out->codes ? out->codes : tc;
        float *scales = out->scales_f32 ? out->scales_f32 : ts;
        float *zeros = out->zeros_f32 ? out->zeros_f32 : tz;
        qd_quant_rtn_cpu(w, n, k, bits, group_size, rule, scale_dtype, codes, scales, zeros,
                         0);
        pack_words(layout, codes, scales, zeros, n, k, bits, ng, scale_dtype, out);
    }
    scratch_free(tc, nk);
    scratch_free(ts, np);
    scratch_free(tz, np);
    return rc;
}

static qd_err emu_pack_codes(qd_cuda *c, const uint8_t *codes, const float *scales,
                             const float *zeros, int64_t n, int64_t k, int bits,
                             int64_t group_size, qd_qrule rule, qd_dtype scale_dtype,
                             qd_cuda_layout layout, const qd_cuda_packed *out, qd_error *err) {
    const char *op = "pack_codes";
    qd_err rc = usable(c, err);
    if (rc) return rc;
    if ((rc = check_rtn(n, k, bits, group_size, rule, scale_dtype, "pack", err)) ||
        (rc = qd_cuda_check_layout(layout, n, k, bits, group_size, rule, scale_dtype,
                                     out, err)))
        return rc;
    if (!codes || !scales || !zeros)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda pack: NULL codes or parameters");
    const int64_t ng = k / group_size;
    const size_t np = bytes_of(n * ng, sizeof(float));
    struct pack_shape s = pack_shape_of(layout, n, k, bits, ng, scale_dtype);
    if ((rc = need_dev(c, op, "codes", codes, bytes_of(mul_sat(n, k), 1), err)) ||
        (rc = need_dev(c, op, "scales", scales, np, err)) ||
        (rc = need_dev(c, op, "zeros", zeros, np, err)) ||
        (rc = need_packed(c, op, &s, out, err)))
        return rc;
    pack_words(layout, codes, scales, zeros, n, k, bits, ng, scale_dtype, out);
    return QD_OK;
}

/* ---- dense ops ---------------------------------------------------------------------------- */

/* The real module hands these dimensions to cuBLAS as int. */
static qd_err check_int_dims(int64_t a, int64_t b, int64_t c, const char *what,
                             qd_error *err) {
    if (a < 0 || b < 0 || c < 0 || a > INT_MAX || b > INT_MAX || c > INT_MAX)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda %s: dimensions %lld x %lld x %lld "
                            "outside cuBLAS's int range", what, (long long)a, (long long)b,
                            (long long)c);
    return QD_OK;
}

static qd_err emu_matmul(qd_cuda *c, float *y, const float *x, const float *w,
                         const float *bias, int64_t m, int64_t n, int64_t k, qd_error *err) {
    const char *op = "matmul";
    qd_err rc = usable(c, err);
    if (rc) return rc;
    if ((rc = check_int_dims(m, n, k, op, err))) return rc;
    if (m == 0 || n == 0) return QD_OK;
    if ((rc = need_dev(c, op, "y", y, bytes_of(m * n, sizeof(float)), err)) ||
        (rc = need_dev(c, op, "x", x, bytes_of(m * k, sizeof(float)), err)) ||
        (rc = need_dev(c, op, "w", w, bytes_of(n * k, sizeof(float)), err)) ||
        (bias && (rc = need_dev(c, op, "bias", bias, bytes_of(n, sizeof(float)), err))))
        return rc;
    qd_matmul_cpu(y, x, w, bias, m, n, k);
    return QD_OK;
}

/* The operands converted to f32 (dtype.h's widening, exact), then the f32 GEMM: the real module
 * accumulates the same products in f32 on tensor cores, so this agrees to rounding. */
static qd_err emu_matmul_lp(qd_cuda *c, float *y, const void *x, const void *w, qd_dtype dt,
                            const float *bias, int64_t m, int64_t n, int64_t k, qd_error *err) {
    const char *op = "matmul";
    qd_err rc = usable(c, err);
    void *xf = NULL, *wf = NULL;
    if (rc) return rc;
    if (dt != QD_DTYPE_BF16 && dt != QD_DTYPE_F16)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda matmul: operand dtype %d is not F16 "
                            "or BF16", (int)dt);
    if ((rc = check_int_dims(m, n, k, op, err))) return rc;
    if (m == 0 || n == 0) return QD_OK;
    const size_t xb = bytes_of(m * k, sizeof(float)), wb = bytes_of(n * k, sizeof(float));
    if ((rc = need_dev(c, op, "y", y, bytes_of(m * n, sizeof(float)), err)) ||
        (rc = need_dev(c, op, "x", x, bytes_of(m * k, 2), err)) ||
        (rc = need_dev(c, op, "w", w, bytes_of(n * k, 2), err)) ||
        (bias && (rc = need_dev(c, op, "bias", bias, bytes_of(n, sizeof(float)), err))))
        return rc;
    if ((rc = scratch(xb, "matmul x in f32", &xf, err)) ||
        (rc = scratch(wb, "matmul w in f32", &wf, err)) ||
        (rc = qd_convert(QD_DTYPE_F32, xf, dt, x, (size_t)(m * k), err)) ||
        (rc = qd_convert(QD_DTYPE_F32, wf, dt, w, (size_t)(n * k), err)))
        goto done;
    qd_matmul_cpu(y, xf, wf, bias, m, n, k);
done:
    scratch_free(xf, xb);
    scratch_free(wf, wb);
    return rc;
}

static qd_err emu_convert(qd_cuda *c, void *dst, qd_dtype dst_type, const void *src,
                          qd_dtype src_type, int64_t n, qd_error *err) {
    const char *op = "convert";
    qd_err rc = usable(c, err);
    if (rc) return rc;
    bool src_ok = src_type == QD_DTYPE_F32 || src_type == QD_DTYPE_F16 ||
                  src_type == QD_DTYPE_BF16;
    bool dst_ok = dst_type == QD_DTYPE_F32 || dst_type == QD_DTYPE_F16 ||
                  dst_type == QD_DTYPE_BF16 || dst_type == QD_DTYPE_F8_E4M3;
    if (!src_ok || !dst_ok || n < 0)
        return qd_error_set(err, QD_ERR_UNSUPPORTED, "cuda convert: %s -> %s is not supported",
                            qd_dtype_name(src_type) ? qd_dtype_name(src_type) : "?",
                            qd_dtype_name(dst_type) ? qd_dtype_name(dst_type) : "?");
    if (n == 0) return QD_OK;
    if ((rc = need_dev(c, op, "dst", dst, bytes_of(n, qd_dtype_size(dst_type)), err)) ||
        (rc = need_dev(c, op, "src", src, bytes_of(n, qd_dtype_size(src_type)), err)))
        return rc;
    rc = qd_convert(dst_type, dst, src_type, src, (size_t)n, err);
    if (rc) qd_error_prefix(err, "cuda convert: ");
    return rc;
}

/* h += alpha x^T x. alpha 1 is the CPU kernel itself; any other alpha scales the product
 * x^T x (made by the same kernel in scratch) once per entry, as cublasSsyrk's alpha does. */
static qd_err emu_xtx_accum(qd_cuda *c, float *h, const float *x, int64_t n, int64_t k,
                            float alpha, qd_error *err) {
    const char *op = "xtx";
    qd_err rc = usable(c, err);
    void *t = NULL;
    if (rc) return rc;
    if ((rc = check_int_dims(n, k, 0, op, err))) return rc;
    if (n == 0 || k == 0) return QD_OK;
    const size_t hb = bytes_of(k * k, sizeof(float));
    if ((rc = need_dev(c, op, "h", h, hb, err)) ||
        (rc = need_dev(c, op, "x", x, bytes_of(n * k, sizeof(float)), err)))
        return rc;
    if (alpha == 1.0f) {
        qd_xtx_accum_cpu(h, x, n, k);
        return QD_OK;
    }
    if ((rc = scratch(hb, "x^T x", &t, err))) return rc;
    float *p = t;
    memset(p, 0, hb);
    qd_xtx_accum_cpu(p, x, n, k);
    for (int64_t i = 0; i < k * k; i++) h[i] += alpha * p[i];
    scratch_free(t, hb);
    return QD_OK;
}

static qd_err emu_rmsnorm(qd_cuda *c, float *y, const float *x, const float *w, int64_t n,
                          int64_t d, double eps, qd_error *err) {
    const char *op = "rmsnorm";
    qd_err rc = usable(c, err);
    if (rc) return rc;
    if (n < 0 || d < 1)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda rmsnorm: bad shape [%lld, %lld]",
                            (long long)n, (long long)d);
    if (n == 0) return QD_OK;
    size_t nd = bytes_of(mul_sat(n, d), sizeof(float));
    if ((rc = need_dev(c, op, "y", y, nd, err)) || (rc = need_dev(c, op, "x", x, nd, err)) ||
        (rc = need_dev(c, op, "w", w, bytes_of(d, sizeof(float)), err)))
        return rc;
    qd_rmsnorm_cpu(y, x, w, n, d, eps);
    return QD_OK;
}

static qd_err emu_rope_apply(qd_cuda *c, float *x, int64_t n_tok, int64_t row_stride,
                             int64_t seq_len, int n_heads, int head_dim, const float *cos_t,
                             const float *sin_t, qd_error *err) {
    const char *op = "rope";
    qd_err rc = usable(c, err);
    if (rc) return rc;
    if (n_tok < 0 || seq_len < 1 || n_heads < 0 || head_dim < 2 || head_dim % 2 != 0 ||
        row_stride < (int64_t)n_heads * head_dim)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda rope: bad shape (%lld tokens, "
                            "stride %lld, %d heads of %d)", (long long)n_tok,
                            (long long)row_stride, n_heads, head_dim);
    if (n_tok == 0 || n_heads == 0) return QD_OK;
    /* the last row ends at its heads; positions run to min(n_tok, seq_len) - 1 */
    int64_t span = mul_sat(n_tok - 1, row_stride) + (int64_t)n_heads * head_dim;
    int64_t n_pos = n_tok < seq_len ? n_tok : seq_len;
    size_t tb = bytes_of(mul_sat(n_pos, head_dim / 2), sizeof(float));
    if ((rc = need_dev(c, op, "x", x, bytes_of(span, sizeof(float)), err)) ||
        (rc = need_dev(c, op, "cos_t", cos_t, tb, err)) ||
        (rc = need_dev(c, op, "sin_t", sin_t, tb, err)))
        return rc;
    qd_rope_apply_cpu(x, n_tok, row_stride, seq_len, n_heads, head_dim, cos_t, sin_t);
    return QD_OK;
}

static qd_err emu_silu_mul(qd_cuda *c, float *out, const float *gate, const float *up,
                           int64_t n, qd_error *err) {
    const char *op = "silu_mul";
    qd_err rc = usable(c, err);
    if (rc || n <= 0) return rc;
    size_t b = bytes_of(n, sizeof(float));
    if ((rc = need_dev(c, op, "out", out, b, err)) ||
        (rc = need_dev(c, op, "gate", gate, b, err)) || (rc = need_dev(c, op, "up", up, b, err)))
        return rc;
    qd_silu_mul_cpu(out, gate, up, n);
    return QD_OK;
}

static qd_err emu_attention(qd_cuda *c, float *out, const float *q, const float *k,
                            const float *v, int64_t n_seq, int64_t seq_len, int n_heads,
                            int n_kv_heads, int head_dim, qd_error *err) {
    const char *op = "attention";
    qd_err rc = usable(c, err);
    if (rc) return rc;
    if (n_heads <= 0 || n_kv_heads <= 0 || n_heads % n_kv_heads != 0 || head_dim <= 0)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda attention: %d query heads cannot "
                            "share %d kv heads", n_heads, n_kv_heads);
    if (head_dim > EMU_ATT_MAX_HEAD_DIM || n_heads > 65535 || n_seq > 65535 || n_seq < 0 ||
        seq_len < 0)
        return qd_error_set(err, QD_ERR_UNSUPPORTED, "cuda attention: head_dim %d (max %d), "
                            "%d heads, %lld sequences is beyond this kernel", head_dim,
                            EMU_ATT_MAX_HEAD_DIM, n_heads, (long long)n_seq);
    if (n_seq == 0 || seq_len == 0) return QD_OK;
    int64_t t = mul_sat(n_seq, seq_len);
    size_t qb = bytes_of(mul_sat(t, (int64_t)n_heads * head_dim), sizeof(float));
    size_t kb = bytes_of(mul_sat(t, (int64_t)n_kv_heads * head_dim), sizeof(float));
    if ((rc = need_dev(c, op, "out", out, qb, err)) || (rc = need_dev(c, op, "q", q, qb, err)) ||
        (rc = need_dev(c, op, "k", k, kb, err)) || (rc = need_dev(c, op, "v", v, kb, err)))
        return rc;
    rc = qd_attention_cpu(out, q, k, v, n_seq, seq_len, n_heads, n_kv_heads, head_dim, err);
    if (rc) qd_error_prefix(err, "cuda attention: ");
    return rc;
}

static qd_err emu_add(qd_cuda *c, float *dst, const float *a, const float *b, int64_t n,
                      qd_error *err) {
    const char *op = "add";
    qd_err rc = usable(c, err);
    if (rc || n <= 0) return rc;
    size_t nb = bytes_of(n, sizeof(float));
    if ((rc = need_dev(c, op, "dst", dst, nb, err)) || (rc = need_dev(c, op, "a", a, nb, err)) ||
        (rc = need_dev(c, op, "b", b, nb, err)))
        return rc;
    for (int64_t i = 0; i < n; i++) dst[i] = a[i] + b[i];
    return QD_OK;
}

/* Sum of (a - b)^2 in double in index order: the loop of sq_diff() in quantizers/awq.c, so the
 * device search's objective is the CPU search's, bit for bit. b NULL: b = 0. */
static double sq_diff_seq(const float *a, const float *b, int64_t n) {
    double acc = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)a[i] - (b ? b[i] : 0.0f);
        acc += d * d;
    }
    return acc;
}

static qd_err emu_sq_diff(qd_cuda *c, const float *a, const float *b, int64_t n, double *ret,
                          qd_error *err) {
    const char *op = "sq_diff";
    qd_err rc = settle(c, err);
    if (rc) return rc;
    if (!ret) return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda sq_diff: NULL result");
    if ((rc = need_host(op, "the result", ret, sizeof *ret, err))) return rc;
    *ret = 0.0;
    if (n <= 0) return QD_OK;
    size_t nb = bytes_of(n, sizeof(float));
    if ((rc = need_dev(c, op, "a", a, nb, err)) ||
        (b && (rc = need_dev(c, op, "b", b, nb, err))))
        return rc;
    *ret = sq_diff_seq(a, b, n);
    return QD_OK;
}

static qd_err emu_act_stats_add(qd_cuda *c, const float *x, int64_t n_tok, int64_t n_in,
                                double *sum_abs, float *max_abs, qd_error *err) {
    const char *op = "act_stats";
    qd_err rc = usable(c, err);
    if (rc) return rc;
    if (n_tok < 0 || n_in < 1)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda act stats: bad shape [%lld, %lld]",
                            (long long)n_tok, (long long)n_in);
    if (n_tok == 0) return QD_OK;
    /* the real module's per-chunk partial sums come first: a GPU runs out of memory for them
     * before any kernel touches x */
    int64_t n_chunks = (n_tok + 31) / 32 < EMU_STATS_MAX_CHUNKS ? (n_tok + 31) / 32
                                                                : EMU_STATS_MAX_CHUNKS;
    if ((rc = scratch_probe(bytes_of(mul_sat(n_chunks, n_in), sizeof(double)),
                            "activation statistics", err)))
        return rc;
    if ((rc = need_dev(c, op, "x", x, bytes_of(mul_sat(n_tok, n_in), sizeof(float)), err)) ||
        (rc = need_dev(c, op, "sum_abs", sum_abs, bytes_of(n_in, sizeof(double)), err)) ||
        (rc = need_dev(c, op, "max_abs", max_abs, bytes_of(n_in, sizeof(float)), err)))
        return rc;
    /* calib.c's statistics on the device's running sums (its token count is the caller's) */
    qd_act_stats st = {.n_in = n_in, .n_tok = 0, .sum_abs = sum_abs, .max_abs = max_abs};
    qd_act_stats_add(&st, x, n_tok);
    return QD_OK;
}

/* ---- GPTQ --------------------------------------------------------------------------------- */

/* quantizers/gptq.c qd_gptq_hessian_add on the whole batch, with the device's h and count. */
static qd_err emu_gptq_hessian_add(qd_cuda *c, float *h, int64_t k, int64_t *n_samples,
                                   const float *x, int64_t n_tok, int64_t n_seq,
                                   qd_error *err) {
    const char *op = "gptq_hessian_add";
    qd_err rc = settle(c, err);
    if (rc) return rc;
    if (!h || !n_samples || k < 1 || k > QD_GPTQ_MAX_K || n_seq < 1 || n_tok < 0 ||
        (n_tok > 0 && !x) || *n_samples < 0 || *n_samples > INT64_MAX - n_seq)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda gptq hessian: bad batch (%lld "
                            "rows, %lld sequences)", (long long)n_tok, (long long)n_seq);
    if ((rc = need_host(op, "the sample count", n_samples, sizeof *n_samples, err)) ||
        (rc = need_dev(c, op, "h", h, bytes_of(k * k, sizeof(float)), err)) ||
        (rc = need_dev(c, op, "x", x, bytes_of(mul_sat(n_tok, k), sizeof(float)), err)))
        return rc;
    qd_gptq_hessian hs = {.k = (int)k, .h = h, .n = *n_samples};
    rc = qd_gptq_hessian_add(&hs, x, n_tok, n_seq, err);
    if (rc) {
        qd_error_prefix(err, "cuda: ");
        return rc;
    }
    *n_samples = hs.n;
    return QD_OK;
}

/* The real module's option checks (gptq.cu check_opts), with its messages: what it refuses,
 * the emulator refuses, so a job that passes here is not refused on a GPU. */
static qd_err check_gptq_opts(int n, int k, const qd_cuda_gptq_opts *o, qd_error *err) {
    if (!o) return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda gptq: no options");
    if (n < 1 || k < 1)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda gptq: bad weight shape [%d, %d]", n,
                            k);
    if (o->bits < 2 || o->bits > 8)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda gptq: bits %d outside 2..8", o->bits);
    if (!qd_qrule_valid((int)o->rule))
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda gptq: unknown quantization rule %d",
                            (int)o->rule);
    if (o->scale_dtype != QD_DTYPE_F32 && o->scale_dtype != QD_DTYPE_F16 &&
        o->scale_dtype != QD_DTYPE_BF16)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda gptq: scale dtype %d is not F32, "
                            "F16 or BF16", (int)o->scale_dtype);
    if (o->group_size > 0 && k % o->group_size != 0)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda gptq: group_size %d does not divide "
                            "in_features %d", o->group_size, k);
    if (o->block_size < 1)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda gptq: block_size %d must be >= 1",
                            o->block_size);
    if (o->block_size > EMU_GPTQ_MAX_BLOCK && k > EMU_GPTQ_MAX_BLOCK)
        return qd_error_set(err, QD_ERR_UNSUPPORTED, "cuda gptq: block_size %d is above the %d "
                            "columns a warp keeps in registers", o->block_size,
                            EMU_GPTQ_MAX_BLOCK);
    if (!isfinite(o->damp_percent) || o->damp_percent < 0)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda gptq: damp_percent %g must be >= 0",
                            o->damp_percent);
    if (!isfinite(o->damp_auto_increment) || o->damp_auto_increment < 0)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda gptq: damp_auto_increment %g must "
                            "be >= 0", o->damp_auto_increment);
    return QD_OK;
}

/* qd_gptq_quantize (the CPU's) with the device Hessian, its results copied into the layout
 * qd_cuda.h gives (qd_gptq_quantize_dev downloads them into a qd_qlinear). */
static qd_err emu_gptq_quantize(qd_cuda *c, const float *w, int n, int k, const float *h,
                                const qd_cuda_gptq_opts *o, uint8_t *codes, float *scales,
                                float *zeros, int32_t *ret_g_idx, float *dequant,
                                qd_cuda_gptq_stats *ret_stats, qd_error *err) {
    const char *op = "gptq";
    qd_err rc = settle(c, err);
    if (rc) return rc;
    if ((rc = check_gptq_opts(n, k, o, err))) return rc;
    if (!w || !h || !codes || !scales || !zeros)
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda gptq: NULL buffer");
    const int64_t nn = n, kk = k;
    const int64_t g = o->group_size > 0 ? o->group_size : kk;
    const int64_t bsz = o->block_size < k ? o->block_size : kk;
    const size_t nk = bytes_of(nn * kk, 1), np = bytes_of(nn * (kk / g), sizeof(float));
    if ((rc = need_dev(c, op, "w", w, nk * sizeof(float), err)) ||
        (rc = need_dev(c, op, "h", h, bytes_of(kk * kk, sizeof(float)), err)) ||
        (rc = need_dev(c, op, "codes", codes, nk, err)) ||
        (rc = need_dev(c, op, "scales", scales, np, err)) ||
        (rc = need_dev(c, op, "zeros", zeros, np, err)) ||
        (dequant && (rc = need_dev(c, op, "dequant", dequant, nk * sizeof(float), err))) ||
        (ret_g_idx && (rc = need_host(op, "g_idx", ret_g_idx, bytes_of(kk, 4), err))) ||
        (ret_stats && (rc = need_host(op, "the stats", ret_stats, sizeof *ret_stats, err))))
        return rc;
    /* the device's working set (weight copy, inverse factor, block errors) */
    if ((rc = scratch_probe(bytes_of(nn * kk + kk * kk + nn * bsz, sizeof(float)),
                            "gptq working buffers", err)))
        return rc;
    /* the device holds h and n separately; quantizing needs only n >= 1, which holds because
     * the caller added a batch (qd_gptq_quantize_dev checks it) */
    qd_gptq_hessian hs = {.k = k, .h = (float *)h /* read only */, .n = 1};
    qd_gptq_params p = {
        .bits = o->bits, .group_size = o->group_size, .rule = o->rule,
        .scale_dtype = o->scale_dtype, .damp_percent = o->damp_percent,
        .damp_auto_increment = o->damp_auto_increment, .act_order = o->act_order,
        .static_groups = o->static_groups, .block_size = o->block_size,
    };
    qd_qlinear q;
    qd_gptq_stats st;
    if ((rc = qd_gptq_quantize(w, n, k, &hs, &p, &q, dequant, &st, err))) {
        qd_error_prefix(err, "cuda: ");
        return rc;
    }
    memcpy(codes, q.codes, nk);
    memcpy(scales, q.scales, np);
    memcpy(zeros, q.zeros, np);
    if (ret_g_idx && q.g_idx) memcpy(ret_g_idx, q.g_idx, bytes_of(kk, sizeof(int32_t)));
    if (ret_stats) {
        ret_stats->loss = st.loss;
        ret_stats->damp_percent = st.damp_percent;
        ret_stats->n_dead = st.n_dead;
    }
    qd_qlinear_free(&q);
    return QD_OK;
}

/* ---- AWQ ---------------------------------------------------------------------------------- */

/* The real module's checks (awq.cu check_quant). */
static qd_err check_quant(int64_t n, int64_t k, int bits, int64_t gs, qd_qrule rule,
                          qd_dtype sdt, const char *what, qd_error *err) {
    if (n < 1 || k < 1 || bits < QD_QUANT_MIN_BITS || bits > QD_QUANT_MAX_BITS ||
        !qd_qrule_valid((int)rule) || gs < 1 || k % gs != 0 || gs > INT_MAX || n > INT_MAX ||
        k > INT_MAX || (sdt != QD_DTYPE_F32 && sdt != QD_DTYPE_F16 && sdt != QD_DTYPE_BF16))
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda awq %s: bad arguments ([%lld, %lld], "
                            "%d bits, group %lld, rule %d, scale dtype %d)", what, (long long)n,
                            (long long)k, bits, (long long)gs, (int)rule, (int)sdt);
    return QD_OK;
}

/* The qd_awq_params the CPU's fake quantization and clip search read. */
static qd_awq_params awq_params(int bits, int64_t group_size, qd_qrule rule, qd_dtype sdt) {
    qd_awq_params p;
    qd_awq_params_default(&p);
    p.bits = bits;
    p.group_size = (int)group_size;
    p.rule = rule;
    p.scale_dtype = sdt;
    return p;
}

static qd_err emu_awq_fake_quant(qd_cuda *c, const float *w, int64_t n, int64_t k,
                                 const float *s, int bits, int64_t group_size, qd_qrule rule,
                                 qd_dtype scale_dtype, float *ret, qd_error *err) {
    const char *op = "awq fake quant";
    qd_err rc = usable(c, err);
    if (rc) return rc;
    if ((rc = check_quant(n, k, bits, group_size, rule, scale_dtype, "fake quant", err)))
        return rc;
    size_t wb = bytes_of(mul_sat(n, k), sizeof(float));
    if ((rc = need_dev(c, op, "w", w, wb, err)) || (rc = need_dev(c, op, "ret", ret, wb, err)) ||
        (s && (rc = need_dev(c, op, "s", s, bytes_of(k, sizeof(float)), err))))
        return rc;
    qd_awq_params p = awq_params(bits, group_size, rule, scale_dtype);
    rc = qd_awq_fake_quant(w, n, k, s, &p, ret, err);
    if (rc) qd_error_prefix(err, "cuda: ");
    return rc;
}

/* What the CPU scale search does for one candidate: fake quantization, the group forward
 * (qd_linear_forward_ex -> qd_matmul_cpu) and sq_diff against the float output. */
static qd_err emu_awq_loss(qd_cuda *c, const float *x, int64_t n_tok, const float *w, int64_t n,
                           int64_t k, const float *s, int bits, int64_t group_size,
                           qd_qrule rule, qd_dtype scale_dtype, const float *y_ref,
                           double *ret_sse, qd_error *err) {
    const char *op = "awq loss";
    qd_err rc = settle(c, err);
    void *wq = NULL, *y = NULL;
    if (rc) return rc;
    if (n_tok < 1) return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda awq loss: no tokens");
    if ((rc = check_quant(n, k, bits, group_size, rule, scale_dtype, "loss", err))) return rc;
    if (!ret_sse) return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda awq loss: NULL result");
    const size_t wb = bytes_of(mul_sat(n, k), sizeof(float));
    const size_t yb = bytes_of(mul_sat(n_tok, n), sizeof(float));
    qd_awq_params p = awq_params(bits, group_size, rule, scale_dtype);
    /* scratch first, as on a GPU (out of memory before any kernel reads the arguments) */
    if ((rc = scratch(wb, "the fake-quantized weight", &wq, err)) ||
        (rc = scratch(yb, "the candidate output", &y, err)) ||
        (rc = need_dev(c, op, "x", x, bytes_of(mul_sat(n_tok, k), sizeof(float)), err)) ||
        (rc = need_dev(c, op, "w", w, wb, err)) ||
        (s && (rc = need_dev(c, op, "s", s, bytes_of(k, sizeof(float)), err))) ||
        (rc = need_dev(c, op, "y_ref", y_ref, yb, err)) ||
        (rc = need_host(op, "the result", ret_sse, sizeof *ret_sse, err)))
        goto done;
    if ((rc = qd_awq_fake_quant(w, n, k, s, &p, wq, err))) {
        qd_error_prefix(err, "cuda: ");
        goto done;
    }
    qd_matmul_cpu(y, x, wq, NULL, n_tok, n, k);
    *ret_sse = sq_diff_seq(y, y_ref, mul_sat(n_tok, n));
done:
    scratch_free(wq, wb);
    scratch_free(y, yb);
    return rc;
}

static qd_err emu_awq_clip_search(qd_cuda *c, const float *w, int64_t n, int64_t k,
                                  const float *x, int64_t n_tok, int bits, int64_t group_size,
                                  qd_qrule rule, qd_dtype scale_dtype, double max_shrink,
                                  int clip_n_grid, float *ret_max, qd_error *err) {
    const char *op = "awq clip";
    qd_err rc = usable(c, err);
    if (rc) return rc;
    if ((rc = check_quant(n, k, bits, group_size, rule, scale_dtype, "clip", err))) return rc;
    if (n_tok < 1 || clip_n_grid < 1 || !(max_shrink >= 0 && max_shrink < 1))
        return qd_error_set(err, QD_ERR_INVALID_ARG, "cuda awq clip: %lld tokens, grid %d, "
                            "max_shrink %g", (long long)n_tok, clip_n_grid, max_shrink);
    int n_shrink = (int)(max_shrink * clip_n_grid);
    if (n_shrink < 1) n_shrink = 1;
    const int64_t cols = (int64_t)n_shrink * n;
    if (cols > INT_MAX || n_tok > INT_MAX)
        return qd_error_set(err, QD_ERR_UNSUPPORTED, "cuda awq clip: %lld candidates x %lld "
                            "tokens is beyond one GEMM", (long long)cols, (long long)n_tok);
    /* the device's working set first (candidates, their errors over the tokens, the sums),
     * as on a GPU: out of memory before any kernel reads the arguments */
    const size_t wb = bytes_of(mul_sat(cols, group_size + 1 + n_tok), sizeof(float)) +
                      bytes_of(cols, sizeof(double));
    if ((rc = scratch_probe(wb, "the clip search", err)) ||
        (rc = need_dev(c, op, "w", w, bytes_of(mul_sat(n, k), sizeof(float)), err)) ||
        (rc = need_dev(c, op, "x", x, bytes_of(mul_sat(n_tok, k), sizeof(float)), err)) ||
        (rc = need_dev(c, op, "ret_max", ret_max,
                       bytes_of(mul_sat(n, k / group_size), sizeof(float)), err)))
        return rc;
    qd_awq_params p = awq_params(bits, group_size, rule, scale_dtype);
    p.max_shrink = max_shrink;
    p.clip_n_grid = clip_n_grid;
    rc = qd_awq_clip_search(w, n, k, x, n_tok, &p, NULL /* the CPU's kernels */, ret_max, err);
    if (rc) qd_error_prefix(err, "cuda: ");
    return rc;
}

/* ---- the kernel table (host memory in and out) -------------------------------------------- */

/* The table's entries are the CPU table's ops (backend.c). As the real module stages operands
 * through device scratch, each takes their size from the budget for the call, and every
 * pointer it gets must be host memory. */
struct t_arg {
    const char *name;
    const void *p;
    size_t n; /* bytes the op reads or writes there */
};

/* Check the context and the host arguments, then take `staged` bytes of the budget (given
 * back by t_end). */
static qd_err t_begin(void *ctx, const char *op, const struct t_arg *args, int n_args,
                      size_t staged, qd_error *err) {
    qd_cuda *c = ctx;
    qd_err rc = usable(c, err);
    if (rc) return rc;
    for (int i = 0; i < n_args; i++)
        if (args[i].p && (rc = need_host(op, args[i].name, args[i].p, args[i].n, err)))
            return rc;
    if (!budget_take(staged)) return no_budget(staged, "cudaMallocAsync", op, err);
    return QD_OK;
}

static qd_err t_end(size_t staged, qd_err rc) {
    budget_give(staged);
    return rc;
}

static qd_err t_quant_rtn(void *ctx, const float *w, int64_t n, int64_t k, int bits,
                          int64_t group_size, qd_qrule rule, qd_dtype scale_dtype,
                          uint8_t *codes, float *scales, float *zeros, qd_error *err) {
    int64_t ng = group_size > 0 ? k / group_size : 0;
    size_t nk = bytes_of(mul_sat(n, k), 1), pb = bytes_of(mul_sat(n, ng), sizeof(float));
    const struct t_arg a[] = {
        {"w", w, 4 * nk}, {"codes", codes, nk}, {"scales", scales, pb}, {"zeros", zeros, pb}};
    size_t staged = 5 * nk + 2 * pb;
    qd_err rc = t_begin(ctx, "the table's rtn", a, 4, staged, err);
    if (rc) return rc;
    qd_quant_rtn_cpu(w, n, k, bits, group_size, rule, scale_dtype, codes, scales, zeros, 0);
    return t_end(staged, QD_OK);
}

static qd_err t_quant_fp8(void *ctx, const float *w, int64_t n, int64_t k, bool per_channel,
                          qd_dtype scale_dtype, uint8_t *codes, float *scales, qd_error *err) {
    size_t nk = bytes_of(mul_sat(n, k), 1), sb = bytes_of(n, sizeof(float));
    const struct t_arg a[] = {{"w", w, 4 * nk}, {"codes", codes, nk}, {"scales", scales, sb}};
    size_t staged = 5 * nk + sb;
    qd_err rc = t_begin(ctx, "the table's fp8", a, 3, staged, err);
    if (rc) return rc;
    qd_quant_fp8_cpu(w, n, k, per_channel, scale_dtype, codes, scales, 0);
    return t_end(staged, QD_OK);
}

static qd_err t_matmul(void *ctx, float *y, const float *x, const float *w, const float *bias,
                       int64_t m, int64_t n, int64_t k, qd_error *err) {
    size_t yb = bytes_of(mul_sat(m, n), 4), xb = bytes_of(mul_sat(m, k), 4);
    size_t wb = bytes_of(mul_sat(n, k), 4), bb = bytes_of(n, 4);
    const struct t_arg a[] = {{"y", y, yb}, {"x", x, xb}, {"w", w, wb}, {"bias", bias, bb}};
    size_t staged = yb + xb + wb + (bias ? bb : 0);
    qd_err rc = t_begin(ctx, "the table's matmul", a, 4, staged, err);
    if (rc) return rc;
    qd_matmul_cpu(y, x, w, bias, m, n, k);
    return t_end(staged, QD_OK);
}

static qd_err t_xtx_accum(void *ctx, float *h, const float *x, int64_t n, int64_t k,
                          qd_error *err) {
    size_t hb = bytes_of(mul_sat(k, k), 4), xb = bytes_of(mul_sat(n, k), 4);
    const struct t_arg a[] = {{"h", h, hb}, {"x", x, xb}};
    size_t staged = hb + xb;
    qd_err rc = t_begin(ctx, "the table's xtx", a, 2, staged, err);
    if (rc) return rc;
    qd_xtx_accum_cpu(h, x, n, k);
    return t_end(staged, QD_OK);
}

static qd_err t_rmsnorm(void *ctx, float *y, const float *x, const float *w, int64_t n,
                        int64_t d, double eps, qd_error *err) {
    size_t xb = bytes_of(mul_sat(n, d), 4), wb = bytes_of(d, 4);
    const struct t_arg a[] = {{"y", y, xb}, {"x", x, xb}, {"w", w, wb}};
    size_t staged = 2 * xb + wb;
    qd_err rc = t_begin(ctx, "the table's rmsnorm", a, 3, staged, err);
    if (rc) return rc;
    qd_rmsnorm_cpu(y, x, w, n, d, eps);
    return t_end(staged, QD_OK);
}

static qd_err t_rope_apply(void *ctx, float *x, int64_t n_tok, int64_t row_stride,
                           int64_t seq_len, int n_heads, int head_dim, const float *cos_t,
                           const float *sin_t, qd_error *err) {
    /* the exact extents: x may be the q part of a wider row (stride > heads) */
    int64_t span = n_tok > 0 ? mul_sat(n_tok - 1, row_stride) + (int64_t)n_heads * head_dim : 0;
    int64_t n_pos = n_tok < seq_len ? n_tok : seq_len;
    size_t xb = bytes_of(span, 4), tb = bytes_of(mul_sat(n_pos, head_dim / 2), 4);
    const struct t_arg a[] = {{"x", x, xb}, {"cos_t", cos_t, tb}, {"sin_t", sin_t, tb}};
    size_t staged = xb + 2 * tb;
    qd_err rc = t_begin(ctx, "the table's rope", a, 3, staged, err);
    if (rc) return rc;
    qd_rope_apply_cpu(x, n_tok, row_stride, seq_len, n_heads, head_dim, cos_t, sin_t);
    return t_end(staged, QD_OK);
}

static qd_err t_silu_mul(void *ctx, float *out, const float *gate, const float *up, int64_t n,
                         qd_error *err) {
    size_t nb = bytes_of(n, 4);
    const struct t_arg a[] = {{"out", out, nb}, {"gate", gate, nb}, {"up", up, nb}};
    qd_err rc = t_begin(ctx, "the table's silu_mul", a, 3, 3 * nb, err);
    if (rc) return rc;
    qd_silu_mul_cpu(out, gate, up, n);
    return t_end(3 * nb, QD_OK);
}

static qd_err t_attention(void *ctx, float *out, const float *q, const float *k, const float *v,
                          int64_t n_seq, int64_t seq_len, int n_heads, int n_kv_heads,
                          int head_dim, qd_error *err) {
    int64_t t = mul_sat(n_seq, seq_len);
    size_t qb = bytes_of(mul_sat(t, (int64_t)n_heads * head_dim), 4);
    size_t kb = bytes_of(mul_sat(t, (int64_t)n_kv_heads * head_dim), 4);
    const struct t_arg a[] = {{"out", out, qb}, {"q", q, qb}, {"k", k, kb}, {"v", v, kb}};
    size_t staged = 2 * qb + 2 * kb;
    qd_err rc = t_begin(ctx, "the table's attention", a, 4, staged, err);
    if (rc) return rc;
    rc = qd_attention_cpu(out, q, k, v, n_seq, seq_len, n_heads, n_kv_heads, head_dim, err);
    return t_end(staged, rc);
}

static void emu_kernels(qd_cuda *c, qd_kernels *ret) {
    memset(ret, 0, sizeof *ret);
    ret->kind = QD_BACKEND_CUDA;
    ret->name = "cuda";
    ret->ctx = c;
    ret->quant_rtn = t_quant_rtn;
    ret->quant_fp8 = t_quant_fp8;
    ret->matmul = t_matmul;
    ret->xtx_accum = t_xtx_accum;
    ret->rmsnorm = t_rmsnorm;
    ret->rope_apply = t_rope_apply;
    ret->silu_mul = t_silu_mul;
    ret->attention = t_attention;
}

/* ---- the table ---------------------------------------------------------------------------- */

/* Member by member, as kernels/cuda/module.cu, so each entry is visibly bound to its function
 * (several share a signature). */
static qd_cuda_module make_table(void) {
    qd_cuda_module t;
    memset(&t, 0, sizeof t);
    t.abi = QD_CUDA_MODULE_ABI;
    t.size = (uint32_t)sizeof t;
    t.device_count = emu_device_count;
    t.device_info = emu_device_info;
    t.open = emu_open;
    t.close = emu_close;
    t.info = emu_info;
    t.sm_count = emu_sm_count;
    t.broken = emu_broken;
    t.alloc = emu_alloc;
    t.free = emu_free;
    t.upload = emu_upload;
    t.download = emu_download;
    t.copy = emu_copy;
    t.fill = emu_fill;
    t.sync = emu_sync;
    t.quant_rtn = emu_quant_rtn;
    t.quant_fp8 = emu_quant_fp8;
    t.quant_pack = emu_quant_pack;
    t.pack_codes = emu_pack_codes;
    t.matmul = emu_matmul;
    t.matmul_lp = emu_matmul_lp;
    t.convert = emu_convert;
    t.xtx_accum = emu_xtx_accum;
    t.rmsnorm = emu_rmsnorm;
    t.rope_apply = emu_rope_apply;
    t.silu_mul = emu_silu_mul;
    t.attention = emu_attention;
    t.act_stats_add = emu_act_stats_add;
    t.gptq_hessian_add = emu_gptq_hessian_add;
    t.gptq_quantize = emu_gptq_quantize;
    t.awq_fake_quant = emu_awq_fake_quant;
    t.awq_loss = emu_awq_loss;
    t.awq_clip_search = emu_awq_clip_search;
    t.kernels = emu_kernels;
    t.add = emu_add;
    t.sq_diff = emu_sq_diff;
    return t;
}

static qd_cuda_module g_table;
static pthread_once_t g_table_once = PTHREAD_ONCE_INIT;

static void table_init(void) {
    g_table = make_table();
}

const qd_cuda_module *qd_cuda_module_v1(void) {
    (void)pthread_once(&g_table_once, table_init);
    return &g_table;
}
