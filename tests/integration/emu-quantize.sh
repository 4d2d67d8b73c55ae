#!/bin/sh
# emu-quantize.sh - `quantd quantize --device cuda:0` on the host emulator of the CUDA module
# (tests/gpu/emu-module.c) writes the same artifact, byte for byte, as `--device cpu`: AWQ into
# the awq format and GPTQ into the gptq format, every file compared; and the cuda:0 run says on
# stderr that its device is the emulator (so a run that fell back to the CPU cannot pass). Also
# the emulated device's memory limit, QUANTD_EMU_MEMORY_MIB, as a job sees it.
# Usage (ctest emu-quantize, registered by tests/gpu/emu.cmake's qd_emu_test): no arguments.
# Environment (set by ctest): QUANTD (the binary), QD_SOURCE_DIR (the repository),
# QUANTD_CUDA_MODULE (the emulator) and LD_LIBRARY_PATH (the stand-in libcuda.so.1).
set -u
fail=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
model="$QD_SOURCE_DIR/examples/models/babyllama"
calib="$QD_SOURCE_DIR/examples/data/babyllama/calib.safetensors"

case "${QUANTD_CUDA_MODULE:-}" in
*emu*) ;;
*) echo "FAIL setup: QUANTD_CUDA_MODULE='${QUANTD_CUDA_MODULE:-}' is not the emulator"; exit 1 ;;
esac

# run NAME DEVICE -- quantize options...: one job into $tmp/NAME, stderr in $tmp/NAME.err
run() {
    name=$1 dev=$2
    shift 3
    if ! "$QUANTD" quantize "$model" "$@" --calib "$calib" --device "$dev" -o "$tmp/$name" \
        >"$tmp/$name.out" 2>"$tmp/$name.err"; then
        echo "FAIL $name: quantd failed on $dev"; sed 's/^/    /' "$tmp/$name.err"; fail=1
        return 1
    fi
}

# same NAME: the cpu and cuda:0 artifacts of NAME hold the same files with the same bytes
same() {
    name=$1 n=0 bad=0
    for f in "$tmp/$name-cpu"/*; do
        b=$(basename "$f")
        n=$((n + 1))
        if ! cmp -s "$f" "$tmp/$name-cuda/$b"; then
            echo "FAIL $name: $b differs between --device cpu and --device cuda:0"; bad=1
        fi
    done
    for f in "$tmp/$name-cuda"/*; do
        [ -e "$tmp/$name-cpu/$(basename "$f")" ] ||
            { echo "FAIL $name: $(basename "$f") written by cuda:0 only"; bad=1; }
    done
    if [ $n -lt 2 ]; then echo "FAIL $name: only $n files in the cpu artifact"; bad=1; fi
    if ! grep -q "quantd host emulator" "$tmp/$name-cuda.err"; then
        echo "FAIL $name: the cuda:0 run does not name the emulator as its device"
        sed 's/^/    /' "$tmp/$name-cuda.err"; bad=1
    fi
    if [ $bad = 0 ]; then
        echo "ok   $name ($n files identical; $(grep -m1 '^device' "$tmp/$name-cuda.err"))"
    else
        fail=1
    fi
}

# AWQ: the scale and clip searches on the device (awq_loss, awq_clip_search, the block
# forwards). 4 rows keep the CPU-bound searches to seconds.
awq="--method awq --format awq --bits 4 --group-size 32 --calib-rows 4"
# shellcheck disable=SC2086
run awq-cpu cpu -- $awq && run awq-cuda cuda:0 -- $awq && same awq

# GPTQ: the device Hessian and qd_gptq_quantize_cuda. 33 rows of 256 tokens are more than one
# 8192-row slice of the device Hessian's host-input path, should the job take it.
gptq="--method gptq --format gptq --bits 4 --group-size 32 --calib-rows 33"
# shellcheck disable=SC2086
run gptq-cpu cpu -- $gptq && run gptq-cuda cuda:0 -- $gptq && same gptq

# The emulated device's memory is QUANTD_EMU_MEMORY_MIB: a job that needs more fails with the
# emulator's out-of-memory error (and no artifact); a value that is not a size is refused with
# its name, rather than replaced by a default.
# shellcheck disable=SC2086
QUANTD_EMU_MEMORY_MIB=1 "$QUANTD" quantize "$model" $gptq --calib "$calib" --device cuda:0 \
    -o "$tmp/tiny" >"$tmp/tiny.out" 2>&1
st=$?
if [ $st -ne 0 ] && grep -q "out of memory (emulated, budget 1 MiB" "$tmp/tiny.out" &&
   [ ! -e "$tmp/tiny" ]
then echo "ok   budget (a job past 1 MiB fails, exit $st)"
else echo "FAIL budget: want an emulated out-of-memory failure, exit $st"
     sed 's/^/    /' "$tmp/tiny.out"; fail=1; fi
QUANTD_EMU_MEMORY_MIB=4G "$QUANTD" quantize "$model" --method rtn --device cuda:0 \
    >"$tmp/bad.out" 2>&1
st=$?
if [ $st -ne 0 ] && grep -q "QUANTD_EMU_MEMORY_MIB=4G is not a whole number of MiB" "$tmp/bad.out"
then echo "ok   budget-setting (refused, exit $st)"
else echo "FAIL budget-setting: want QUANTD_EMU_MEMORY_MIB=4G refused, exit $st"
     sed 's/^/    /' "$tmp/bad.out"; fail=1; fi

exit $fail
