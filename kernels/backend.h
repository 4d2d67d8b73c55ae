/*
 * backend.h - the compute backends quantd can run on, and the devices behind them.
 *
 * `ref` (plain C) defines every numeric result; `cpu` (threads + BLAS) and `cuda` must agree
 * with it. This header lists which backends this build and this machine offer. The kernel
 * table itself (one entry per op per backend) grows here as the quantizers land.
 */
#ifndef QD_BACKEND_H
#define QD_BACKEND_H

#include <stdbool.h>
#include <stddef.h>

typedef enum qd_backend_kind {
    QD_BACKEND_REF = 0,
    QD_BACKEND_CPU,
    QD_BACKEND_CUDA,
    QD_BACKEND_COUNT
} qd_backend_kind;

typedef struct qd_device_info {
    qd_backend_kind kind;
    int index;              /* cuda:N; 0 for the CPU */
    char name[256];         /* "NVIDIA H100 80GB HBM3", "cpu (2 threads)" */
    size_t memory_bytes;    /* device memory; 0 when unknown */
    int compute_capability; /* 90 for sm_90; 0 for the CPU */
} qd_device_info;

const char *qd_backend_name(qd_backend_kind k);
/* Whether this binary was built with the CUDA backend. */
bool qd_backend_cuda_built(void);
/* Fill up to max devices (the CPU first, then each CUDA device found at run time).
 * Returns the number written. When the CUDA runtime finds no device, *cuda_note (optional)
 * points to a static text saying why. */
int qd_devices_list(qd_device_info *out, int max, const char **cuda_note);

#endif /* QD_BACKEND_H */
