# quantctl: the command-line client of quantd (included from clients/CMakeLists.txt).
#   qd_quantctl  everything but main(), so tests can link the pieces (bundles, spec, JSON)
#   quantctl     the program
set(QD_QUANTCTL_DIR ${CMAKE_CURRENT_LIST_DIR})
add_library(qd_quantctl STATIC
  ${QD_QUANTCTL_DIR}/ctl_args.c
  ${QD_QUANTCTL_DIR}/ctl_rpc.c
  ${QD_QUANTCTL_DIR}/ctl_bundle.c
  ${QD_QUANTCTL_DIR}/ctl_spec.c
  ${QD_QUANTCTL_DIR}/ctl_output.c
  ${QD_QUANTCTL_DIR}/ctl_transfer.c
  ${QD_QUANTCTL_DIR}/ctl_watch.c
  ${QD_QUANTCTL_DIR}/cmd_transfer.c
  ${QD_QUANTCTL_DIR}/cmd_quantize.c
  ${QD_QUANTCTL_DIR}/cmd_jobs.c
)
target_include_directories(qd_quantctl PUBLIC ${QD_QUANTCTL_DIR})
target_compile_options(qd_quantctl PRIVATE ${QD_WARNINGS})
# qd_quantizers for the spec parser (quantizers/spec.h) that `quantd quantize` uses too.
target_link_libraries(qd_quantctl PUBLIC qd_proto qd_quantizers qd_common PkgConfig::GRPC
                      PkgConfig::OPENSSL PkgConfig::JANSSON)

add_executable(quantctl ${QD_QUANTCTL_DIR}/main.c)
target_compile_options(quantctl PRIVATE ${QD_WARNINGS})
target_compile_definitions(quantctl PRIVATE QD_VERSION="${PROJECT_VERSION}")
target_link_libraries(quantctl PRIVATE qd_quantctl)
install(TARGETS quantctl RUNTIME DESTINATION bin)
