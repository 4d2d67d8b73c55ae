#!/usr/bin/env bash
# test-bench.sh - checks of the benchmark harness's own logic (not of anyone's speed).
#
#   bench/test-bench.sh BUILD_DIR
#
# 1. stages.awk turns a stamped progress log (bench/testdata/stages.txt) into the stage and
#    layer times worked out by hand below.
# 2. profile.awk charges each perf sample of bench/testdata/perf-script.txt to the step the
#    rules give (leaf step wins over the kernel inside it, a kernel names the step inside a
#    container, worker threads and other programs are not counted, clone3 and unwound BLAS
#    frames have their own names).
# 3. bench/run's options: --help, an unknown option and an unknown part are refused (exit 2),
#    --estimate prints the plan of each mode without building or running anything (given no
#    build, it assumes the machine's rates rather than measuring them).
# 4. The bench programs on tiny inputs: bench-tokens is deterministic in its seed and writes
#    rows x len int32 ids; bench-forward counts the linear parameters of synth-llama's tiny
#    preset exactly; bench-tcp moves exactly the bytes of its file; bench-quant prints one row
#    per method and format and refuses none; bench-ref prints positive rates.
# Exit 0 when everything holds, 1 otherwise (each failure is printed).
set -uo pipefail
export LC_ALL=C
here=$(cd "$(dirname "$0")" && pwd)
build=${1:?usage: test-bench.sh BUILD_DIR}
bin="$build/bench"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/test-bench.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
fails=0

check() { # check NAME EXPECTED ACTUAL
    if [ "$2" != "$3" ]; then
        printf 'FAIL %s\n--- expected\n%s\n--- got\n%s\n' "$1" "$2" "$3"
        fails=$((fails + 1))
    else
        printf 'ok   %s\n' "$1"
    fi
}

# ---- 1. stages.awk ---------------------------------------------------------------------------
# start 1.0 s, calibrate+quantize at 1.5 s, layers end at 2.5 s and 4.0 s, pack at 4.2 s,
# end 5.0 s
got=$(awk -v start=1000000 -v end=5000000 -f "$here/stages.awk" "$here/testdata/stages.txt")
want=$(printf '%s\n' \
    $'stage\tstart-up\t0.500' \
    $'layer\t1\t1.000' \
    $'layer\t2\t1.500' \
    $'stage\tcalibrate+quantize\t2.700' \
    $'stage\tpack and write\t0.800' \
    $'total\t-\t4.000')
check "stages.awk splits stages and layers" "$want" "$got"

got=$(printf '' | awk -v start=0 -v end=2500000 -f "$here/stages.awk")
want=$(printf '%s\n' $'stage\tstart-up\t2.500' \
    $'total\t-\t2.500')
check "stages.awk with no progress line" "$want" "$got"

# ---- 2. profile.awk --------------------------------------------------------------------------
got=$(awk -v comm=quantd -f "$here/profile.awk" "$here/testdata/perf-script.txt")
want=$(printf '%s\n' \
    $'step\tawq: scale search\t2' \
    $'step\tBLAS (caller not unwound)\t1' \
    $'step\tcalibration forward pass\t1' \
    $'step\tload layer weights (to fp32)\t1' \
    $'step\tother\t1' \
    $'step\tquantize weights (RTN codes)\t1' \
    $'step\tstart worker threads\t1' \
    $'total\t-\t8')
check "profile.awk charges samples to steps" "$want" "$got"

# ---- 3. bench/run options --------------------------------------------------------------------
"$here/run" --help >"$tmp/help" 2>&1
check "run --help exits 0" 0 $?
grep -q -- '--only layers,forward,e2e,scaling,service' "$tmp/help"
check "run --help lists the parts" 0 $?
"$here/run" --no-such-option >/dev/null 2>&1
check "run refuses an unknown option" 2 $?
"$here/run" --only layers,nothing >/dev/null 2>&1
check "run refuses an unknown part" 2 $?
# (--build names no build, so the estimate uses assumed rates and measures nothing)
got=$("$here/run" --estimate --build "$tmp/none" --work "$tmp/w" 2>/dev/null | head -1)
want="plan (quick): layers 4096x4096 4096x11008 (256 tokens, best of 1); model 4 layers"
want="$want hidden 1024; calibration 8 x 128; scaling over 1 2 4 layers;"
want="$want parts: layers,forward,e2e,scaling,service"
check "run --estimate (quick plan)" "$want" "$got"
got=$("$here/run" --full --only e2e --estimate --build "$tmp/none" --work "$tmp/w" 2>/dev/null |
    head -1)
want="plan (full): layers 4096x4096 4096x11008 (2048 tokens, best of 3); model 16 layers"
want="$want hidden 2048; calibration 128 x 512; scaling over 4 8 16 layers; parts: e2e"
check "run --full --estimate (full plan)" "$want" "$got"

# ---- 4. the programs -------------------------------------------------------------------------
"$bin/bench-tokens" -o "$tmp/a.st" --rows 3 --len 5 --vocab 7 --seed 9 &&
    "$bin/bench-tokens" -o "$tmp/b.st" --rows 3 --len 5 --vocab 7 --seed 9 &&
    "$bin/bench-tokens" -o "$tmp/c.st" --rows 3 --len 5 --vocab 7 --seed 10
check "bench-tokens writes its files" 0 $?
cmp -s "$tmp/a.st" "$tmp/b.st"
check "bench-tokens: same seed, same file" 0 $?
cmp -s "$tmp/a.st" "$tmp/c.st"
check "bench-tokens: another seed, another file" 1 $?
# safetensors: 8-byte header length, the header, then 3 * 5 int32 ids
got=$(od -An -t u8 -N 8 "$tmp/a.st" | tr -d ' ')
check "bench-tokens: 60 bytes of ids after the header" $((8 + got + 60)) "$(wc -c <"$tmp/a.st")"
"$bin/bench-tokens" -o "$tmp/d.st" --rows 0 --len 5 --vocab 7 2>/dev/null
check "bench-tokens refuses 0 rows" 2 $?

"$bin/bench-synth-llama" -o "$tmp/tiny" --preset tiny >/dev/null 2>&1
check "bench-synth-llama writes the tiny preset" 0 $?
"$bin/bench-forward" "$tmp/tiny" --tsv --rows 2 --len 16 >"$tmp/fwd.tsv" 2>"$tmp/fwd.err"
check "bench-forward runs" 0 $?
# tiny: hidden 64, intermediate 160, 2 layers, 4 heads and 2 kv heads of 16:
# q 64*64 + k, v 2 * 64*32 + o 64*64 + gate, up, down 3 * 64*160 = 43008 per layer
check "bench-forward counts the linear parameters" 86016 \
    "$(awk -F '\t' '$1 == "linear_params" { print $2 }' "$tmp/fwd.tsv")"
check "bench-forward counts the tokens" 32 \
    "$(awk -F '\t' '$1 == "tokens" { print $2 }' "$tmp/fwd.tsv")"
check "bench-forward runs every layer" 2 \
    "$(awk -F '\t' '$1 == "layers" { print $2 }' "$tmp/fwd.tsv")"
check "bench-forward reports a positive rate" 1 \
    "$(awk -F '\t' '$1 == "gflops" { print ($2 > 0) }' "$tmp/fwd.tsv")"

head -c 3000000 /dev/zero >"$tmp/blob"
"$bin/bench-tcp" "$tmp/blob" "$tmp/a.st" --reps 2 --tsv >"$tmp/tcp.tsv"
check "bench-tcp runs" 0 $?
check "bench-tcp sends every byte" $((3000000 + $(wc -c <"$tmp/a.st"))) \
    "$(awk -F '\t' '$1 == "bytes" { print $2 }' "$tmp/tcp.tsv")"

"$bin/bench-quant" --tsv --n 64 --k 256 --tokens 32 --reps 1 >"$tmp/q.tsv" 2>"$tmp/q.err"
check "bench-quant runs" 0 $?
# rtn 2 + iq 2 + pack 8 + fp8 + smoothquant + awq + gptq
check "bench-quant prints 16 rows" 16 "$(grep -c '^row' "$tmp/q.tsv")"
check "bench-quant skips no format" 0 "$(grep -c '^skip' "$tmp/q.tsv")"
check "bench-quant: every time and rate positive" 16 \
    "$(awk -F '\t' '$1 == "row" && $4 > 0 && $5 > 0' "$tmp/q.tsv" | wc -l)"
check "bench-quant: GPTQ row has its phases" 1 \
    "$(awk -F '\t' '$2 == "gptq" && $7 ~ /hessian .* quant /' "$tmp/q.tsv" | wc -l)"
"$bin/bench-quant" --n 64 --k 100 >/dev/null 2>&1
check "bench-quant refuses k not a multiple of 128" 2 $?

"$bin/bench-ref" --tsv --mib 16 --gemm 64 --reps 1 >"$tmp/ref.tsv"
check "bench-ref runs" 0 $?
check "bench-ref: four positive rates" 4 \
    "$(awk -F '\t' '$1 ~ /_gbs$|_gflops$/ && $2 > 0' "$tmp/ref.tsv" | wc -l)"

[ "$fails" -eq 0 ] || { echo "$fails check(s) failed"; exit 1; }
echo "all checks passed"
