# quantctl's tests (included from tests/CMakeLists.txt): the client's pieces without a server,
# and the service end to end - `quantd serve` on loopback with a temporary data directory,
# driven by quantctl.
if(NOT TARGET quantctl)
  return()
endif()

qd_c_test(test-quantctl LABELS unit SOURCES integration/test-quantctl.c LIBS qd_quantctl)

# Deterministic padding bytes and the raw TCP copy the throughput is compared with.
add_executable(service-tool integration/service-tool.c)
target_compile_options(service-tool PRIVATE ${QD_WARNINGS})
target_link_libraries(service-tool PRIVATE Threads::Threads)

# qd_service_test(<name> <script> [LABELS ...]): a script run with QUANTD and QUANTCTL set.
function(qd_service_test name script)
  cmake_parse_arguments(T "" "" "LABELS" ${ARGN})
  qd_script_test(${name} LABELS integration ${T_LABELS}
    COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/integration/${script})
  get_test_property(${name} ENVIRONMENT env)
  set(tools "QUANTCTL=$<TARGET_FILE:quantctl>;QD_SERVICE_TOOL=$<TARGET_FILE:service-tool>")
  set_tests_properties(${name} PROPERTIES ENVIRONMENT "${env};${tools}" TIMEOUT 120 RUN_SERIAL ON)
endfunction()

qd_service_test(service-e2e service-e2e.sh)
qd_service_test(service-concurrency service-concurrency.sh)
qd_service_test(service-recovery service-recovery.sh)
qd_service_test(service-throughput service-throughput.sh LABELS bench)
