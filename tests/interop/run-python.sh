#!/bin/sh
# run-python.sh SCRIPT [ARGS...] - run a Python interop test, or skip it.
#
# The interop tests compare quantd with the reference Python implementations. They need
# python3 with the safetensors and numpy packages; without them the test exits 77, which
# ctest reports as skipped rather than passed. Everything else (the script's own exit
# status) is passed through.
if ! command -v python3 >/dev/null 2>&1; then
    echo "skipped: python3 not found"
    exit 77
fi
if ! python3 -c "import safetensors, numpy" >/dev/null 2>&1; then
    echo "skipped: python3 cannot import safetensors and numpy (pip install safetensors numpy)"
    exit 77
fi
exec python3 "$@"
