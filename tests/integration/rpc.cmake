# test-rpc: `quantd serve` end to end over the wire - the daemon on 127.0.0.1:0 with a
# temporary data directory, driven by a raw gRPC C-core client (integration/test-rpc.c).
qd_c_test(test-rpc LABELS integration SOURCES integration/test-rpc.c
          LIBS qd_proto PkgConfig::GRPC PkgConfig::OPENSSL Threads::Threads)
target_compile_definitions(test-rpc PRIVATE QD_QUANTD="$<TARGET_FILE:quantd>")
add_dependencies(test-rpc quantd)
set_tests_properties(test-rpc PROPERTIES TIMEOUT 180)

# security: TLS, mutual TLS, bearer tokens and roles, model paths outside the roots - the
# daemon driven by quantctl, with certificates made at test time by the openssl program
# (integration/security.sh; skipped without it).
if(TARGET quantctl)
  qd_script_test(security LABELS integration
    COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/integration/security.sh)
  get_test_property(security ENVIRONMENT security_env)
  set_tests_properties(security PROPERTIES
    ENVIRONMENT "${security_env};QUANTCTL=$<TARGET_FILE:quantctl>" TIMEOUT 120 RUN_SERIAL ON)
endif()
