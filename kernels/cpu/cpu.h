/*
 * cpu.h - internals shared by the files of kernels/cpu (not part of the kernel API).
 */
#ifndef QD_KERNELS_CPU_H
#define QD_KERNELS_CPU_H

/* Make OpenBLAS single-threaded, once per process, before the first BLAS call: the cpu ops
 * call BLAS from quantd's own threads, and OpenBLAS's pool would otherwise compete with them
 * for the cores (see matmul.c). */
void qd_cpu_blas_init(void);

#endif /* QD_KERNELS_CPU_H */
