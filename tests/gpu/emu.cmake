# emu.cmake - the host-memory emulator of the CUDA module and the tests that run quantd's GPU
# code paths on it, included from tests/gpu/gpu.cmake. The emulator and its tests exist in CUDA
# builds only (the loader and QD_HAVE_CUDA exist only there); qd_emu_test is defined in every
# build.
#
# libquantd-cuda-emu.so (tests/gpu/emu-module.c) has the CUDA module's table (kernels/cuda/
# module.h), its "device" is host memory and each op is the CPU code quantd runs without a
# device, so a job on `--device cuda:0` under it must write the CPU job's artifact byte for
# byte. It goes to <build>/tests/emu/, where the loader never looks on its own: only a program
# started with QUANTD_CUDA_MODULE pointing at it uses it. The loader insists on an NVIDIA driver
# before it loads any module, so the tests also put the stand-in libcuda.so.1 of gpu.cmake on
# LD_LIBRARY_PATH.

# qd_emu_test(<name> COMMAND <cmd...> [LABELS <labels...>])
# A ctest (label "integration" unless LABELS says otherwise) whose programs get the emulator
# as cuda:0: QUANTD_CUDA_MODULE names it, LD_LIBRARY_PATH the stand-in driver. Scripts also
# find QUANTD (the binary), QD_SOURCE_DIR, QD_BINARY_DIR and QD_EMU_MODULE (the emulator).
# Exit status 77 is NOT a skip here: a test that finds no GPU under the emulator has found a
# broken emulator, and fails. In a build without CUDA it registers nothing (there is no loader
# to load the emulator), so a caller needs no guard of its own.
function(qd_emu_test name)
  if(NOT QD_HAVE_CUDA)
    return()
  endif()
  cmake_parse_arguments(T "" "" "COMMAND;LABELS" ${ARGN})
  if(NOT T_LABELS)
    set(T_LABELS integration)
  endif()
  set(env
    QUANTD_CUDA_MODULE=$<TARGET_FILE:quantd-cuda-emu>
    LD_LIBRARY_PATH=$<TARGET_FILE_DIR:qd-fake-libcuda>
    QD_EMU_MODULE=$<TARGET_FILE:quantd-cuda-emu>
    QD_SOURCE_DIR=${PROJECT_SOURCE_DIR}
    QD_BINARY_DIR=${PROJECT_BINARY_DIR}
    QUANTD=$<TARGET_FILE:quantd>)
  add_test(NAME ${name} COMMAND ${T_COMMAND} WORKING_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR})
  set_tests_properties(${name} PROPERTIES LABELS "${T_LABELS}" ENVIRONMENT "${env}")
endfunction()

if(QD_HAVE_CUDA)
  add_library(quantd-cuda-emu MODULE ${CMAKE_CURRENT_SOURCE_DIR}/gpu/emu-module.c)
  target_compile_options(quantd-cuda-emu PRIVATE ${QD_WARNINGS})
  target_link_libraries(quantd-cuda-emu PRIVATE qd_quantizers qd_kernels qd_common)
  # As the real module (kernels/CMakeLists.txt): one exported symbol, qd_cuda_module_v1; the
  # static libraries inside (its own copies of qd_quantizers, qd_kernels, qd_common) hidden by
  # --exclude-libs, so they never interpose on, or get confused with, quantd's; -z defs: every
  # symbol resolved when the module is linked, not at dlopen time.
  set_target_properties(quantd-cuda-emu PROPERTIES
    OUTPUT_NAME quantd-cuda-emu
    PREFIX lib
    C_VISIBILITY_PRESET hidden
    VISIBILITY_INLINES_HIDDEN ON
    LIBRARY_OUTPUT_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR}/emu)
  target_link_options(quantd-cuda-emu PRIVATE
    "LINKER:--exclude-libs,ALL" "LINKER:-z,defs" "LINKER:--as-needed")
  # The static libraries go into a shared object, so their code must be position-independent
  # (qd_common already is for the real module).
  set_property(TARGET qd_kernels qd_quantizers PROPERTY POSITION_INDEPENDENT_CODE ON)

  # emu-gpu-job: test-gpu-job's whole jobs on cuda:0 = the emulator, where its GPTQ and AWQ
  # artifacts must equal the CPU's byte for byte (test-gpu-job.c says how it knows).
  qd_emu_test(emu-gpu-job COMMAND test-gpu-job)
  # emu-cuda: the cross-backend test of the CUDA module (test-cuda.c) against the emulator:
  # its ops, packed words, argument errors and out-of-memory paths keep the real module's
  # contract, so what passes on the emulator is what the GPU is asked to do.
  qd_emu_test(emu-cuda COMMAND test-cuda)
  # emu-quantize: `quantd quantize --device cuda:0` against --device cpu, AWQ and GPTQ, every
  # file of the artifacts compared.
  qd_emu_test(emu-quantize
    COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/integration/emu-quantize.sh)
endif()
