# clients/python: the Python client package quantd-client (included from clients/CMakeLists.txt).
#   quantd_python      the package with its stubs generated from proto/*.proto, in
#                      BUILD/clients/python/quantd_client (built by default when the Python
#                      below can import grpc, google.protobuf and grpc_tools)
#   python-client-e2e  clients/python/tests/test_e2e.py against `quantd serve` on loopback;
#                      skipped (77) with the reason when that Python lacks those modules
#
# The stubs are never committed: the custom command regenerates them whenever a .proto or a
# package source changes, so they always match the wire contract.
set(QD_PYTHON_DIR ${CMAKE_CURRENT_LIST_DIR})
# Debian's interpreter: a pyenv or venv python does not see python3-grpcio and friends.
set(QD_PYTHON3 /usr/bin/python3 CACHE FILEPATH
    "Python 3 with grpc, google.protobuf and grpc_tools, for the Python client")
find_program(QD_PROTOC protoc)

set(QD_PYTHON_OUT ${CMAKE_BINARY_DIR}/clients/python)
set(QD_PYTHON_PROTOS ${PROJECT_SOURCE_DIR}/proto/quantd.proto
                     ${PROJECT_SOURCE_DIR}/proto/health.proto)
set(QD_PYTHON_SOURCES ${QD_PYTHON_DIR}/quantd_client/__init__.py
                      ${QD_PYTHON_DIR}/quantd_client/client.py
                      ${QD_PYTHON_DIR}/quantd_client/bundle.py)

execute_process(COMMAND ${QD_PYTHON3} -c "import grpc, google.protobuf, grpc_tools"
                RESULT_VARIABLE qd_python_rc OUTPUT_QUIET ERROR_QUIET)
if(qd_python_rc EQUAL 0 AND QD_PROTOC)
  set(pkg ${QD_PYTHON_OUT}/quantd_client)
  add_custom_command(
    OUTPUT ${pkg}/quantd_pb2.py ${pkg}/quantd_pb2_grpc.py ${pkg}/health_pb2.py
           ${pkg}/health_pb2_grpc.py ${pkg}/__init__.py ${pkg}/client.py ${pkg}/bundle.py
    COMMAND ${QD_PYTHON3} ${QD_PYTHON_DIR}/gen_stubs.py --proto-dir ${PROJECT_SOURCE_DIR}/proto
            --out ${QD_PYTHON_OUT} --protoc ${QD_PROTOC} --python ${QD_PYTHON3}
    DEPENDS ${QD_PYTHON_PROTOS} ${QD_PYTHON_SOURCES} ${QD_PYTHON_DIR}/gen_stubs.py
    COMMENT "Generating the Python client package (quantd_client) from proto/"
    VERBATIM)
  add_custom_target(quantd_python ALL DEPENDS ${pkg}/quantd_pb2.py ${pkg}/quantd_pb2_grpc.py)
  message(STATUS "quantd: Python client package with ${QD_PYTHON3}")
else()
  message(STATUS "quantd: Python client package skipped (${QD_PYTHON3} cannot import grpc, "
                 "google.protobuf and grpc_tools, or no protoc); its test will skip")
endif()

# The top level enables testing after clients/ is read, so enable it for this directory.
if(QUANTD_TESTS AND TARGET quantctl)
  enable_testing()
  # The test generates its own stubs into its temporary directory (with the same script), so
  # it needs no build step of its own and always runs against the current proto.
  add_test(NAME python-client-e2e
           COMMAND ${QD_PYTHON3} ${QD_PYTHON_DIR}/tests/test_e2e.py)
  set(qd_python_env QUANTD=$<TARGET_FILE:quantd> QUANTCTL=$<TARGET_FILE:quantctl>
                    QD_SOURCE_DIR=${PROJECT_SOURCE_DIR} QD_PROTOC=${QD_PROTOC})
  set_tests_properties(python-client-e2e PROPERTIES
    LABELS integration
    SKIP_RETURN_CODE 77
    TIMEOUT 300
    RUN_SERIAL ON
    ENVIRONMENT "${qd_python_env}")
endif()
