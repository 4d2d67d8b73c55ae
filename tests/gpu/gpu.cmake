# GPU tests (label "gpu") and the GPU benchmark, included from tests/CMakeLists.txt.
#
# test-cuda is built by every build: without the CUDA backend, or on a machine without a GPU
# (CI), it exits 77 and ctest reports it skipped; where nvcc is found it is compiled against
# the CUDA backend, so the GPU code at least builds everywhere. bench-cuda is a plain program
# (not a test): `bench-cuda` prints each kernel's throughput against the device's measured
# memory bandwidth and GEMM rate (docs/cuda.md).
qd_c_test(test-cuda LABELS gpu SOURCES gpu/test-cuda.c LIBS qd_quantizers qd_kernels)

add_executable(bench-cuda ${CMAKE_CURRENT_SOURCE_DIR}/gpu/bench-cuda.c)
target_compile_options(bench-cuda PRIVATE ${QD_WARNINGS})
target_link_libraries(bench-cuda PRIVATE qd_quantizers qd_kernels)

# test-gpu-job: whole jobs (RTN, GPTQ, AWQ) on cuda:0 against the same jobs on the CPU, and a
# job on a device out of memory; skipped (77) without the CUDA backend or a device.
qd_c_test(test-gpu-job LABELS gpu SOURCES gpu/test-gpu-job.c runtime/rt-model.c
          LIBS qd_quantizers qd_kernels)
