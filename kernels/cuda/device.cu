/* device.cu - CUDA device discovery for qd_devices_list (backend.c). Every runtime call is
 * checked; no device is not an error, it only means the CPU backend runs the jobs. */
#include <cuda_runtime.h>
#include <stdio.h>
#include <string.h>

#include "../backend.h"

extern "C" int qd_cuda_device_count(const char **note);
extern "C" int qd_cuda_device_info(int index, qd_device_info *out);

extern "C" int qd_cuda_device_count(const char **note) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        if (note) *note = cudaGetErrorString(e);
        (void)cudaGetLastError(); /* clear the error so later calls do not report it */
        return 0;
    }
    if (note) *note = n ? "ok" : "no CUDA device";
    return n;
}

extern "C" int qd_cuda_device_info(int index, qd_device_info *out) {
    cudaDeviceProp p;
    if (cudaGetDeviceProperties(&p, index) != cudaSuccess) {
        (void)cudaGetLastError();
        return -1;
    }
    memset(out, 0, sizeof *out);
    out->kind = QD_BACKEND_CUDA;
    out->index = index;
    snprintf(out->name, sizeof out->name, "%s", p.name);
    out->memory_bytes = p.totalGlobalMem;
    out->compute_capability = p.major * 10 + p.minor;
    return 0;
}
