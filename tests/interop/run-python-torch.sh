#!/bin/sh
# run-python-torch.sh [--need MOD[,MOD...]] SCRIPT [ARGS...] - run an interop test that needs
# torch and a format's Python library, or skip it.
#
# The library tests (tests/interop/*_lib.py) compare quantd's artifacts with the code of the
# libraries that define the formats (compressed-tensors, AutoAWQ, AutoGPTQ), which need torch.
# Those are optional, large extras (scripts/install-interop.sh installs them into a
# virtualenv), so this runner looks for a Python that has numpy, safetensors, torch and every
# module named by --need, in this order:
#
#   $QD_INTEROP_PYTHON                            an interpreter named explicitly
#   $QD_BINARY_DIR/interop-venv/bin/python        install-interop.sh into this build tree
#   $QD_SOURCE_DIR/build/interop-venv/bin/python  install-interop.sh's default
#   python3                                       the user's own packages
#
# and runs SCRIPT with the first that has them all. The --need modules are only located
# (importlib.util.find_spec), not imported, because some of them (awq, auto_gptq) cannot be
# imported whole without a GPU; the test imports the parts it uses. Without such a Python the
# test exits 77, which ctest reports as skipped, printing what each candidate lacks.
need=""
if [ "${1:-}" = "--need" ]; then
    need=$2
    shift 2
fi

probe='
import importlib, importlib.util, sys
missing = []
for m in ["numpy", "safetensors", "torch"]:
    try:
        importlib.import_module(m)
    except Exception as e:
        missing.append("%s (%s)" % (m, str(e).splitlines()[0] if str(e) else type(e).__name__))
for m in [x for x in sys.argv[1].split(",") if x]:
    try:
        found = importlib.util.find_spec(m) is not None
    except Exception:
        found = False
    if not found:
        missing.append(m)
if missing:
    print("lacks " + ", ".join(missing))
    sys.exit(1)
'

tried=""
for py in "${QD_INTEROP_PYTHON:-}" "${QD_BINARY_DIR:+$QD_BINARY_DIR/interop-venv/bin/python}" \
          "${QD_SOURCE_DIR:+$QD_SOURCE_DIR/build/interop-venv/bin/python}" python3; do
    [ -n "$py" ] || continue
    if [ "$py" != python3 ] && [ ! -x "$py" ]; then
        continue
    fi
    command -v "$py" >/dev/null 2>&1 || continue
    if why=$("$py" -c "$probe" "$need" 2>&1); then
        exec "$py" "$@"
    fi
    tried="$tried
  $py: $(printf '%s' "$why" | tail -n 1)"
done

echo "skipped: no Python with numpy, safetensors, torch${need:+ and $need}" \
     "(scripts/install-interop.sh installs them)${tried:+; tried:$tried}"
exit 77
