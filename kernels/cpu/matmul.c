/*
 * matmul.c - the cpu linear layer and Gram matrix: OpenBLAS single-threaded per call, the
 * work split across quantd's own threads in fixed tiles, so the bits of every result are the
 * same for any thread count.
 *
 * DESIGN
 * y = x W^T is cblas_sgemm with W transposed in place (W is [n_out, n_in] row-major, which is
 * W^T column-major, so nothing is copied). Threads: OpenBLAS's own pool spins (sched_yield)
 * for a while after each call, and it would then fight quantd's threaded attention and row
 * ops for the same cores. So OpenBLAS is set to one thread once (threads.c), and the work is
 * cut into calls on quantd's threads.
 *
 * Determinism. The artifact cache assumes that a job gives the same bytes on any number of
 * threads, so the way a call is cut must not depend on the thread count. An element's dot
 * product is summed in an order OpenBLAS picks from the shape of the call (its k blocking,
 * its micro-kernel for edge tiles, a small-matrix kernel below a size): cutting y into
 * qd_cpu_threads() row slices, as this file once did, changed the bits of up to two thirds of
 * the outputs between 1 and 3 threads (OpenBLAS 0.3.21, Haswell/Zen and SkylakeX kernels).
 * So y is cut into a grid of tiles that depends on (m, n) only (gemm_tile); each tile is one
 * single-threaded sgemm over the whole k (no partial sums to merge), and the threads only
 * decide who computes which tiles. X^T X is cut into column blocks of QD_XTX_BLOCK the same
 * way. What stays outside quantd's control is the BLAS build and the CPU it picks kernels
 * for: another OpenBLAS version or instruction set may round differently.
 *
 * Tile size. OpenBLAS packs each call's operands, (tm + tn) * k floats for tm * tn * k
 * multiply-adds, so a tile must be big for the packing to vanish against the arithmetic,
 * and the grid must have enough tiles for many threads. Tiles are at most 512 x 1024 and
 * are halved, longer side first, while the grid has fewer than 32 tiles (down to 128 x 256).
 * Single-threaded on a Zen 3 core, tiles of this size stay in cache better than one big
 * call and were as fast or faster (4096^3, 512 x 4096^2, 4096 x 11008 x 512), except
 * GPTQ's trailing update shape 4096 x 1024 x 128 (about 6% slower).
 *
 * BLAS dimensions are int: the callers' shape validation (QD_MODEL_MAX_DIM) keeps n and k far
 * below INT_MAX, and a tile has at most QD_GEMM_TILE_M_MAX rows; X^T X cuts its n rows into
 * slices of at most 2^30.
 */
#include <cblas.h>
#include <stdbool.h>
#include <string.h>

#include "cpu.h"
#include "ops.h"

#define QD_BLAS_MAX_ROWS ((int64_t)1 << 30)
/* Below this many multiply-adds a call runs on the calling thread alone (same tiles). */
#define QD_GEMM_MIN_PARALLEL ((int64_t)1 << 18)
/* The output tile of one sgemm call (rows of x by rows of W): at most this big, and halved
 * down to the minimum until the grid has QD_GEMM_MIN_TILES tiles (see DESIGN). Every size
 * derives from (m, n) alone, never from the thread count; changing these constants changes
 * results, so QD_NUMERICS_VERSION with them. */
#define QD_GEMM_TILE_M_MAX 512
#define QD_GEMM_TILE_N_MAX 1024
#define QD_GEMM_TILE_M_MIN 128
#define QD_GEMM_TILE_N_MIN 256
#define QD_GEMM_MIN_TILES 32
/* Column block of the Gram matrix handled as one work item (fixed, like the tiles). */
#define QD_XTX_BLOCK 128

struct gemm_ctx {
    float *y;
    const float *x, *w, *bias;
    int64_t m, n, k;
    int64_t tm, tn;  /* tile: rows of y, columns of y */
    int64_t tiles_n; /* tiles per row of tiles */
};

static int64_t n_tiles(int64_t len, int64_t tile) {
    return (len + tile - 1) / tile;
}

/* The tile of an [m, n] product: as large as QD_GEMM_TILE_*_MAX, so OpenBLAS's packing of
 * each tile's operands, (tm + tn) * k floats against tm * tn * k multiply-adds, stays cheap;
 * halved (the longer side first) while the grid has fewer than QD_GEMM_MIN_TILES tiles, so
 * that a short batch or a narrow layer still spreads over many threads. */
static void gemm_tile(int64_t m, int64_t n, int64_t *ret_tm, int64_t *ret_tn) {
    int64_t tm = m < QD_GEMM_TILE_M_MAX ? m : QD_GEMM_TILE_M_MAX;
    int64_t tn = n < QD_GEMM_TILE_N_MAX ? n : QD_GEMM_TILE_N_MAX;
    while (n_tiles(m, tm) * n_tiles(n, tn) < QD_GEMM_MIN_TILES) {
        bool cut_n = tn >= 2 * QD_GEMM_TILE_N_MIN && (tn >= 2 * tm || tm < 2 * QD_GEMM_TILE_M_MIN);
        bool cut_m = !cut_n && tm >= 2 * QD_GEMM_TILE_M_MIN;
        if (cut_n)
            tn = (tn + 1) / 2;
        else if (cut_m)
            tm = (tm + 1) / 2;
        else
            break;
    }
    *ret_tm = tm;
    *ret_tn = tn;
}

/* Tiles [b, e) in row-major tile order: a thread's range walks along rows of tiles, so it
 * keeps reusing the same rows of x. */
static void gemm_tiles(void *arg, int64_t b, int64_t e) {
    const struct gemm_ctx *c = arg;
    for (int64_t t = b; t < e; t++) {
        int64_t r0 = t / c->tiles_n * c->tm, c0 = t % c->tiles_n * c->tn;
        int64_t mm = c->m - r0 < c->tm ? c->m - r0 : c->tm;
        int64_t nn = c->n - c0 < c->tn ? c->n - c0 : c->tn;
        float *y = c->y + r0 * c->n + c0; /* [mm, nn] at row stride n */
        if (c->k > 0) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)mm, (int)nn, (int)c->k,
                        1.0f, c->x + r0 * c->k, (int)c->k, c->w + c0 * c->k, (int)c->k, 0.0f,
                        y, (int)c->n);
        } else {
            for (int64_t i = 0; i < mm; i++) memset(y + i * c->n, 0, (size_t)nn * sizeof *y);
        }
        if (c->bias)
            for (int64_t i = 0; i < mm; i++)
                for (int64_t j = 0; j < nn; j++) y[i * c->n + j] += c->bias[c0 + j];
    }
}

void qd_matmul_cpu(float *y, const float *x, const float *w, const float *bias, int64_t m,
                   int64_t n, int64_t k) {
    if (m <= 0 || n <= 0) return;
    qd_cpu_blas_init();
    struct gemm_ctx c = {.y = y, .x = x, .w = w, .bias = bias, .m = m, .n = n, .k = k};
    gemm_tile(m, n, &c.tm, &c.tn);
    c.tiles_n = n_tiles(n, c.tn);
    int t = m * n * (k > 0 ? k : 1) < QD_GEMM_MIN_PARALLEL ? 1 : 0;
    qd_cpu_parallel_for(t, n_tiles(m, c.tm) * c.tiles_n, gemm_tiles, &c);
}

struct xtx_ctx {
    float *h;
    const float *x;
    int64_t n, k, n_blocks;
};

/* Column block b of the upper triangle: h[0:c1, c0:c1] += x[:, 0:c1]^T x[:, c0:c1], one
 * sgemm per slice of rows whatever the thread count. The work of block b grows with b, so
 * items are dealt out zig-zag (0, last, 1, last-1, ...) and each thread's contiguous range of
 * items holds a balanced mix. */
static void xtx_part(void *arg, int64_t b, int64_t e) {
    struct xtx_ctx *c = arg;
    for (int64_t i = b; i < e; i++) {
        int64_t blk = i % 2 == 0 ? i / 2 : c->n_blocks - 1 - i / 2;
        int64_t c0 = blk * QD_XTX_BLOCK;
        int64_t c1 = c0 + QD_XTX_BLOCK < c->k ? c0 + QD_XTX_BLOCK : c->k;
        for (int64_t r = 0; r < c->n; r += QD_BLAS_MAX_ROWS) {
            int64_t nn = c->n - r < QD_BLAS_MAX_ROWS ? c->n - r : QD_BLAS_MAX_ROWS;
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)c1, (int)(c1 - c0),
                        (int)nn, 1.0f, c->x + r * c->k, (int)c->k, c->x + r * c->k + c0,
                        (int)c->k, 1.0f, c->h + c0, (int)c->k);
        }
    }
}

void qd_xtx_accum_cpu(float *h, const float *x, int64_t n, int64_t k) {
    if (n <= 0 || k <= 0) return;
    qd_cpu_blas_init();
    struct xtx_ctx c = {h, x, n, k, (k + QD_XTX_BLOCK - 1) / QD_XTX_BLOCK};
    int t = n * k * k < QD_GEMM_MIN_PARALLEL ? 1 : qd_cpu_threads();
    qd_cpu_parallel_for(t, c.n_blocks, xtx_part, &c);
    /* the upper triangle (and diagonal blocks) are current; mirror them down */
    for (int64_t a = 0; a < k; a++)
        for (int64_t b = a + 1; b < k; b++) h[b * k + a] = h[a * k + b];
}
