# interop-py.cmake - the artifact interop tests against the Python libraries that define the
# formats (included from tests/CMakeLists.txt). Each skips (exit 77, with the reason) where
# its Python packages are missing: interop-formats-py needs safetensors and numpy
# (run-python.sh); the *-lib tests need torch and the format's library (run-python-torch.sh,
# installed by scripts/install-interop.sh). tests/interop/README.md says what each compares.

set(QD_INTEROP_DIR ${CMAKE_CURRENT_SOURCE_DIR}/interop)

qd_script_test(interop-formats-py LABELS interop
  COMMAND sh ${QD_INTEROP_DIR}/run-python.sh ${QD_INTEROP_DIR}/formats_py.py)
qd_script_test(interop-ctensors-lib LABELS interop
  COMMAND sh ${QD_INTEROP_DIR}/run-python-torch.sh --need compressed_tensors,transformers
          ${QD_INTEROP_DIR}/ctensors_lib.py)
qd_script_test(interop-awq-lib LABELS interop
  COMMAND sh ${QD_INTEROP_DIR}/run-python-torch.sh --need awq
          ${QD_INTEROP_DIR}/awq_lib.py)
qd_script_test(interop-gptq-lib LABELS interop
  COMMAND sh ${QD_INTEROP_DIR}/run-python-torch.sh --need auto_gptq,transformers
          ${QD_INTEROP_DIR}/gptq_lib.py)

# quantd quantize runs a few seconds per artifact, more under the sanitizers; the artifacts
# are cached in the build tree, so only the first of these tests to run pays for them.
set_tests_properties(interop-formats-py interop-ctensors-lib interop-awq-lib interop-gptq-lib
  PROPERTIES TIMEOUT 600)
