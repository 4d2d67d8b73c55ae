/* device.cu - CUDA device discovery. Every runtime call is checked; no device is not an
 * error, it only means the CPU backend runs the jobs. */
#include <cuda_runtime.h>
#include <stdio.h>
#include <string.h>

extern "C" {
#include "../backend.h"

int qd_cuda_device_count(const char **note);
int qd_cuda_device_info(int index, qd_device_info *out);
}

extern "C" int qd_cuda_device_count(const char **note) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        if (note) *note = cudaGetErrorString(e);
        (void)cudaGetLastError(); /* clear the sticky error */
        return 0;
    }
    if (note) *note = n ? "ok" : "no CUDA device";
    return n;
}

extern "C" int qd_cuda_device_info(int index, qd_device_info *out) {
    cudaDeviceProp p;
    if (cudaGetDeviceProperties(&p, index) != cudaSuccess) return -1;
    memset(out, 0, sizeof *out);
    out->kind = QD_BACKEND_CUDA;
    out->index = index;
    snprintf(out->name, sizeof out->name, "%s", p.name);
    out->memory_bytes = p.totalGlobalMem;
    out->compute_capability = p.major * 10 + p.minor;
    return 0;
}
