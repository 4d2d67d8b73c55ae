# tests/fuzz/rpc.cmake - one fuzz target per RPC of quantd.v1.Quantd and grpc.health.v1.Health
# (fuzz/fuzz-rpc.c built once per method, QD_FUZZ_RPC naming it), its handler driven through
# the in-process transport fuzz/mock-call.c (the handlers library qd_handlers, never the gRPC
# server qd_rpc). Each is always built as fuzz-rpc-<name>-replay, which replays the corpus
# corpus/rpc-<name>/ (labels unit;fuzz; under ASan in the sanitizer build); with QUANTD_FUZZ
# also as a libFuzzer binary, test fuzz-rpc-<name> (label fuzz), run for QD_FUZZ_RPC_SECONDS
# (10) so that thirteen of them keep CI short. The corpora come from gen-rpc-corpus
# (fuzz/gen-rpc-corpus.c): `gen-rpc-corpus tests/corpus` rewrites the generated files.

# <name> <method path> pairs; the names are the corpus directories' and the tests'.
set(QD_FUZZ_RPCS
  put-model       /quantd.v1.Quantd/PutModel
  stat-model      /quantd.v1.Quantd/StatModel
  quantize        /quantd.v1.Quantd/Quantize
  watch-job       /quantd.v1.Quantd/WatchJob
  get-job         /quantd.v1.Quantd/GetJob
  list-jobs       /quantd.v1.Quantd/ListJobs
  cancel-job      /quantd.v1.Quantd/CancelJob
  get-artifact    /quantd.v1.Quantd/GetArtifact
  list-artifacts  /quantd.v1.Quantd/ListArtifacts
  delete-artifact /quantd.v1.Quantd/DeleteArtifact
  get-server-info /quantd.v1.Quantd/GetServerInfo
  health-check    /grpc.health.v1.Health/Check
  health-watch    /grpc.health.v1.Health/Watch
)

set(QD_FUZZ_RPC_DIR ${CMAKE_CURRENT_LIST_DIR})
get_filename_component(QD_FUZZ_RPC_CORPORA ${CMAKE_CURRENT_LIST_DIR}/../corpus ABSOLUTE)

add_library(qd_fuzz_mock_call STATIC ${QD_FUZZ_RPC_DIR}/mock-call.c)
target_compile_options(qd_fuzz_mock_call PRIVATE ${QD_WARNINGS})
target_include_directories(qd_fuzz_mock_call PUBLIC ${QD_FUZZ_RPC_DIR})
target_link_libraries(qd_fuzz_mock_call PUBLIC qd_handlers qd_proto qd_common)

add_executable(gen-rpc-corpus ${QD_FUZZ_RPC_DIR}/gen-rpc-corpus.c)
target_compile_options(gen-rpc-corpus PRIVATE ${QD_WARNINGS})
target_link_libraries(gen-rpc-corpus PRIVATE qd_proto qd_common PkgConfig::OPENSSL)

list(LENGTH QD_FUZZ_RPCS n_rpc_words)
math(EXPR last_rpc "${n_rpc_words} - 1")
foreach(i RANGE 0 ${last_rpc} 2)
  math(EXPR j "${i} + 1")
  list(GET QD_FUZZ_RPCS ${i} name)
  list(GET QD_FUZZ_RPCS ${j} path)
  set(corpus ${QD_FUZZ_RPC_CORPORA}/rpc-${name})
  qd_c_test(fuzz-rpc-${name}-replay LABELS "unit;fuzz"
    SOURCES ${QD_FUZZ_RPC_DIR}/fuzz-rpc.c ${QD_FUZZ_RPC_DIR}/replay.c
    LIBS qd_fuzz_mock_call qd_handlers PkgConfig::OPENSSL)
  target_compile_definitions(fuzz-rpc-${name}-replay PRIVATE QD_FUZZ_RPC="${path}")
  set_tests_properties(fuzz-rpc-${name}-replay PROPERTIES ENVIRONMENT "QD_FUZZ_CORPUS=${corpus}")
  if(QUANTD_FUZZ)
    add_executable(fuzz-rpc-${name} ${QD_FUZZ_RPC_DIR}/fuzz-rpc.c)
    target_compile_options(fuzz-rpc-${name} PRIVATE ${QD_WARNINGS}
                           -fsanitize=fuzzer,address,undefined)
    target_compile_definitions(fuzz-rpc-${name} PRIVATE QD_FUZZ_RPC="${path}")
    target_link_options(fuzz-rpc-${name} PRIVATE -fsanitize=fuzzer,address,undefined)
    target_link_libraries(fuzz-rpc-${name} PRIVATE qd_fuzz_mock_call qd_handlers qd_common
                          PkgConfig::OPENSSL)
    # libFuzzer adds what it finds to the corpus directory it is given: a copy, so the
    # source tree stays as committed.
    string(CONCAT run "d=$(mktemp -d) && cp -r ${corpus}/. \"$d\" && "
           "$<TARGET_FILE:fuzz-rpc-${name}> -max_total_time=\${QD_FUZZ_RPC_SECONDS:-10} "
           "-timeout=10 -rss_limit_mb=2048 \"$d\"; rc=$?; rm -rf \"$d\"; exit $rc")
    add_test(NAME fuzz-rpc-${name} COMMAND sh -c "${run}")
    set_tests_properties(fuzz-rpc-${name} PROPERTIES LABELS fuzz)
  endif()
endforeach()
