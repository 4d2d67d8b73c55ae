/* backend.c - backend names and device discovery (CPU always; CUDA when built and present). */
#include "backend.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#ifdef QD_HAVE_CUDA
/* kernels/cuda/device.cu */
int qd_cuda_device_count(const char **note);
int qd_cuda_device_info(int index, qd_device_info *out);
#endif

const char *qd_backend_name(qd_backend_kind k) {
    switch (k) {
    case QD_BACKEND_REF: return "ref";
    case QD_BACKEND_CPU: return "cpu";
    case QD_BACKEND_CUDA: return "cuda";
    default: return "unknown";
    }
}

bool qd_backend_cuda_built(void) {
#ifdef QD_HAVE_CUDA
    return true;
#else
    return false;
#endif
}

int qd_devices_list(qd_device_info *out, int max, const char **cuda_note) {
    int n = 0;
    if (cuda_note) *cuda_note = "built without CUDA";
    if (max <= 0) return 0;
    memset(&out[0], 0, sizeof out[0]);
    out[0].kind = QD_BACKEND_CPU;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    snprintf(out[0].name, sizeof out[0].name, "cpu (%ld threads)", cpus > 0 ? cpus : 1);
    n = 1;
#ifdef QD_HAVE_CUDA
    const char *note = NULL;
    int count = qd_cuda_device_count(&note);
    if (cuda_note) *cuda_note = note;
    for (int i = 0; i < count && n < max; i++)
        if (qd_cuda_device_info(i, &out[n]) == 0) n++;
#endif
    return n;
}
