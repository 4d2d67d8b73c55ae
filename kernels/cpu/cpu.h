/*
 * cpu.h - internals of the cpu backend shared by the files of kernels/cpu, and by the
 * quantizers that call LAPACK directly (gptq.c); not part of the kernel API (ops.h).
 */
#ifndef QD_KERNELS_CPU_H
#define QD_KERNELS_CPU_H

/* Make OpenBLAS single-threaded, once per process, before the first BLAS or LAPACK call: the
 * cpu ops call BLAS from quantd's own threads, and OpenBLAS's pool would otherwise compete
 * with them for the cores (see matmul.c). It also keeps results independent of the thread
 * count: a threaded OpenBLAS routine (spotrf, a big sgemm) splits its work by OpenBLAS's own
 * thread count, and the split changes the rounding. */
void qd_cpu_blas_init(void);

#endif /* QD_KERNELS_CPU_H */
