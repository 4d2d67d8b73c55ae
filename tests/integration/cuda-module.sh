#!/bin/sh
# cuda-module.sh - the CUDA backend as a dlopen'ed module (kernels/cuda/module.h): quantd links
# no CUDA library, the module exports one symbol, it is found where the loader says (next to
# the executable, in its ../lib/quantd, or at $QUANTD_CUDA_MODULE), and each reason CUDA can be
# unavailable reaches the user: no driver, no module, a file that is not a quantd module, a
# module of another ABI.
# Usage (ctest): cuda-module.sh MODULE FAKE_DRIVER_DIR FAKE_ABI_MODULE
#   MODULE           the built libquantd-cuda.so
#   FAKE_DRIVER_DIR  a directory with an empty libcuda.so.1: on LD_LIBRARY_PATH it passes the
#                    loader's driver check on any host, and the CUDA runtime then refuses it
#   FAKE_ABI_MODULE  a library exporting qd_cuda_module_v1 with a table of ABI 999
# Environment (set by ctest): QUANTD (the binary), QD_SOURCE_DIR (the repository).
set -u
module=$1 fake_dir=$2 fake_abi=$3
fail=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
model="$QD_SOURCE_DIR/examples/models/babyllama"

for f in "$module" "$fake_dir/libcuda.so.1" "$fake_abi"; do
    [ -f "$f" ] || { echo "FAIL setup: $f is missing (build the targets first)"; exit 1; }
done

bad() { # bad NAME WHY: report a failure with the last output
    echo "FAIL $1: $2"; sed 's/^/    /' "$tmp/out"; fail=1
}
has() { grep -qF -- "$1" "$tmp/out"; }

# device QUANTD_BINARY DEVICE [VAR=VALUE...]: run a small quantize job on DEVICE with the
# environment additions, output in $tmp/out. Only the device line and errors matter here.
device() {
    bin=$1 dev=$2
    shift 2
    env "$@" "$bin" quantize "$model" --method rtn --bits 4 --group-size 32 --device "$dev" \
        -q >"$tmp/out" 2>&1
}

# ---- 1. quantd links no CUDA library; the module carries them and exports one symbol --------
cuda_libs='libcudart|libcublas|libcublasLt|libcusolver|libcusparse|libnvJitLink|libcuda\.so'
ldd "$QUANTD" >"$tmp/out" 2>&1 || bad ldd-quantd "ldd failed"
if ! has "libc.so"; then bad ldd-quantd "ldd lists no libc: cannot judge"
elif grep -Eq "$cuda_libs" "$tmp/out"; then bad ldd-quantd "quantd links CUDA libraries"
else echo "ok   ldd-quantd (no CUDA library)"; fi

ldd "$module" >"$tmp/out" 2>&1
if grep -q "libcublas" "$tmp/out"; then echo "ok   ldd-module (links cuBLAS)"
else bad ldd-module "the module does not link cuBLAS"; fi

if command -v nm >/dev/null 2>&1; then
    nm -D --defined-only "$module" | awk '{print $NF}' >"$tmp/out"
    if [ "$(cat "$tmp/out")" = "qd_cuda_module_v1" ]; then echo "ok   module-exports"
    else bad module-exports "want exactly qd_cuda_module_v1 exported"; fi
else
    echo "skip module-exports: no nm"
fi

# informative only: the cost of `quantd --version` (no CUDA library is mapped any more)
if [ -x /usr/bin/time ]; then
    /usr/bin/time -f "%e s %M KB" "$QUANTD" --version 2>"$tmp/time" >/dev/null
    echo "info quantd --version: $(tail -n 1 "$tmp/time")"
fi

# ---- 2. the host's own driver ---------------------------------------------------------------
# Whether the dynamic linker can find a libcuda.so.1 (its cache, then LD_LIBRARY_PATH).
have_driver=no
if command -v ldconfig >/dev/null 2>&1 && ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1 '
then have_driver=yes; fi
old_ifs=$IFS; IFS=:
for d in ${LD_LIBRARY_PATH:-}; do [ -n "$d" ] && [ -e "$d/libcuda.so.1" ] && have_driver=yes; done
IFS=$old_ifs

device "$QUANTD" auto
if [ $have_driver = no ]; then
    if has "device: cpu (auto: no GPU: " && has "no NVIDIA driver (libcuda.so.1"
    then echo "ok   no-driver (device line says why)"
    else bad no-driver "the device line does not say there is no NVIDIA driver"; fi
    # without a driver the module is never looked for, whatever QUANTD_CUDA_MODULE says
    device "$QUANTD" cuda:0 QUANTD_CUDA_MODULE="$tmp/none.so"
    if has "no NVIDIA driver" && ! has "$tmp/none.so"; then echo "ok   no-driver-no-module"
    else bad no-driver-no-module "the module was looked for without a driver"; fi
else
    if has "no NVIDIA driver"; then bad driver "libcuda.so.1 is present but was not found"
    else echo "ok   driver (found; device line: $(grep '^device:' "$tmp/out"))"; fi
    device "$QUANTD" auto QUANTD_CUDA_MODULE="/nonexistent/libquantd-cuda.so"
    if has "device: cpu (auto: no GPU: " && has "/nonexistent/libquantd-cuda.so"
    then echo "ok   driver-bad-module-path"
    else bad driver-bad-module-path "the device line does not name QUANTD_CUDA_MODULE's path"; fi
fi

# ---- 3. past the driver check (the stand-in libcuda.so.1): finding and checking the module --
fake="LD_LIBRARY_PATH=$fake_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# QUANTD_CUDA_MODULE names a missing file: the error names it, nothing else is tried
device "$QUANTD" cuda:0 "$fake" QUANTD_CUDA_MODULE="$tmp/nope/libquantd-cuda.so"
if has "QUANTD_CUDA_MODULE=$tmp/nope/libquantd-cuda.so" && has "No such file" &&
   ! has "lib/quantd/"
then echo "ok   env-missing-file"
else bad env-missing-file "want the path from QUANTD_CUDA_MODULE and no other"; fi

# a library that is not a quantd module
device "$QUANTD" cuda:0 "$fake" QUANTD_CUDA_MODULE="$fake_dir/libcuda.so.1"
if has "undefined symbol: qd_cuda_module_v1"; then echo "ok   env-not-a-module"
else bad env-not-a-module "want the missing entry point named"; fi

# a module of another ABI
device "$QUANTD" cuda:0 "$fake" QUANTD_CUDA_MODULE="$fake_abi"
if has "module ABI 999" && has "needs ABI 1"; then echo "ok   env-other-abi"
else bad env-other-abi "want the ABI mismatch reported"; fi

# the right module through QUANTD_CUDA_MODULE: loaded, so the CUDA runtime answers (the
# stand-in driver has nothing in it)
device "$QUANTD" cuda:0 "$fake" QUANTD_CUDA_MODULE="$module"
if has "cuda: no CUDA device (" && ! has "CUDA module not loaded" && ! has "NVIDIA driver ("
then echo "ok   env-module (loaded: $(sed -n 's/.*no CUDA device (\(.*\))$/\1/p' "$tmp/out"))"
else bad env-module "the module named by QUANTD_CUDA_MODULE was not loaded"; fi

# the build tree: found without any setting (<build>/lib/quantd)
device "$QUANTD" cuda:0 "$fake"
if has "cuda: no CUDA device (" && ! has "CUDA module not loaded"; then echo "ok   build-tree"
else bad build-tree "the build tree's quantd did not find its module"; fi

# a copy of quantd with no module near it: every path tried is named
mkdir -p "$tmp/alone/bin" "$tmp/prefix/bin" "$tmp/prefix/lib/quantd" "$tmp/side"
cp "$QUANTD" "$tmp/alone/bin/quantd"
device "$tmp/alone/bin/quantd" cuda:0 "$fake"
if has "CUDA module not loaded"; then
    if has "$tmp/alone/bin/libquantd-cuda.so" &&
       has "$tmp/alone/bin/../lib/quantd/libquantd-cuda.so" && has "QUANTD_CUDA_MODULE"
    then echo "ok   not-found (each path named)"
    else bad not-found "the note does not name every path tried"; fi
else
    echo "skip not-found: a module is installed where this quantd looks last"
fi

# found in <exe>/../lib/quantd (the install layout) and next to the executable
cp "$QUANTD" "$tmp/prefix/bin/quantd"
cp "$module" "$tmp/prefix/lib/quantd/"
device "$tmp/prefix/bin/quantd" cuda:0 "$fake"
if has "cuda: no CUDA device (" && ! has "CUDA module not loaded"; then echo "ok   lib-quantd"
else bad lib-quantd "not found in ../lib/quantd"; fi
cp "$QUANTD" "$module" "$tmp/side/"
device "$tmp/side/quantd" cuda:0 "$fake"
if has "cuda: no CUDA device (" && ! has "CUDA module not loaded"; then echo "ok   next-to-exe"
else bad next-to-exe "not found next to the executable"; fi

# CPU work on a CUDA build is unaffected by all this
if device "$QUANTD" cpu && has "method: rtn"; then echo "ok   cpu-job"
else bad cpu-job "a CPU job failed"; fi

exit $fail
