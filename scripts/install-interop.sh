#!/usr/bin/env bash
# Install the optional Python libraries of the interop tests into a virtualenv (best effort).
#
#   scripts/install-interop.sh [VENV_DIR]
#
# VENV_DIR defaults to $QD_INTEROP_VENV, else build/interop-venv; tests/interop/
# run-python-torch.sh finds it there (or as <build dir>/interop-venv, or through
# QD_INTEROP_PYTHON). Installs numpy, safetensors, torch, compressed-tensors (with transformers),
# AutoAWQ and AutoGPTQ. Those two are installed without their dependencies: their GPU kernel
# packages do not build or load on a machine without CUDA, and the tests use only their
# pure-Python unpacking modules.
#
# torch: the default is PyPI's Linux build, which pulls the CUDA runtime libraries (the whole
# virtualenv is about 5.7 GB, a few minutes to download). Set QD_TORCH_INDEX_URL to PyTorch's
# CPU-only wheel index to get the CPU build instead (about 200 MB); it is tried first, then
# PyPI.
#
# Never fails the caller: a package that does not install is reported and its tests skip.
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${1:-${QD_INTEROP_VENV:-$root/build/interop-venv}}

say() { echo "install-interop: $*"; }

if [ ! -x "$venv/bin/python" ]; then
    mkdir -p "$(dirname "$venv")" &&
        python3 -m venv "$venv" >/dev/null 2>&1 || {
        say "cannot create a virtualenv at $venv (python3 -m venv); the library tests will skip"
        exit 0
    }
fi
py="$venv/bin/python"
pip() { "$py" -m pip install --quiet --disable-pip-version-check "$@"; }

pip numpy safetensors || say "numpy/safetensors did not install"

if ! "$py" -c "import torch" >/dev/null 2>&1; then
    if [ -n "${QD_TORCH_INDEX_URL:-}" ] &&
        pip --index-url "$QD_TORCH_INDEX_URL" --timeout 60 --retries 1 torch; then
        say "torch installed from QD_TORCH_INDEX_URL"
    else
        [ -n "${QD_TORCH_INDEX_URL:-}" ] && say "QD_TORCH_INDEX_URL failed; trying PyPI"
        pip torch || say "torch did not install; the library tests will skip"
    fi
fi

pip compressed-tensors || say "compressed-tensors did not install"
# AutoAWQ is an sdist whose requirements include its CUDA kernel package; the test imports
# only awq/utils/packing_utils.py.
pip --no-deps autoawq || say "autoawq did not install"
# AutoGPTQ's wheel carries CUDA extensions that are never loaded here; the test imports only
# auto_gptq/nn_modules/qlinear/qlinear_cuda.py, whose CPU path is plain torch.
pip --no-deps auto-gptq || say "auto-gptq did not install"

say "python: $py"
"$py" - <<'EOF' || true
import importlib.metadata as md
for name in ("numpy", "safetensors", "torch", "transformers", "compressed-tensors", "autoawq",
             "auto-gptq"):
    try:
        print("install-interop:   %-20s %s" % (name, md.version(name)))
    except md.PackageNotFoundError:
        print("install-interop:   %-20s not installed" % name)
EOF
exit 0
