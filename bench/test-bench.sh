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
#    build, it assumes the machine's rates rather than measuring them). --device takes cpu,
#    cuda:N (N < 1024) and auto and refuses anything else, as does --compare-cpu without a
#    device; --estimate says what runs where, and a device's jobs leave the CPU estimate
#    (--compare-cpu puts them back); a device quantd cannot open stops the run before it starts.
# 4. The bench programs on tiny inputs: bench-tokens is deterministic in its seed and writes
#    rows x len int32 ids; bench-forward counts the linear parameters of synth-llama's tiny
#    preset exactly; bench-tcp moves exactly the bytes of its file; bench-quant prints one row
#    per method and format and refuses none; bench-ref prints positive rates.
# 5. In a CUDA build with the emulated device (tests/gpu/emu.cmake): bench/run --tiny --only e2e
#    --device cuda:0 --compare-cpu prints every device row, labelled with quantd's device line;
#    every artifact is the same bytes as the CPU's (the emulator's ops are the CPU's); the peak
#    GPU memory is "?" without nvidia-smi and, with testdata/nvidia-smi (1000 MiB before a job,
#    1800 while it runs), 800 MiB. A later --only scaling run in the same directory reuses the
#    end-to-end jobs, compares with the CPU run's checksums, and names the file whose checksum
#    was altered.
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

for d in bogus cuda: cuda:x cuda:1024 cuda:-1 CUDA:0 cuda:0x; do
    "$here/run" --device "$d" --estimate --build "$tmp/none" --work "$tmp/w" >/dev/null \
        2>"$tmp/err"
    check "run refuses --device $d" 2 $?
    grep -q -- "--device '$d'" "$tmp/err"
    check "run --device $d: the message names it" 0 $?
done
"$here/run" --compare-cpu --estimate --build "$tmp/none" --work "$tmp/w" >/dev/null 2>&1
check "run refuses --compare-cpu without --device" 2 $?
for d in cpu auto cuda:0 cuda:1023; do
    "$here/run" --device "$d" --estimate --build "$tmp/none" --work "$tmp/w" >/dev/null 2>&1
    check "run takes --device $d" 0 $?
done
est() { # the estimate line's figure, e.g. 174h30m57s
    "$here/run" --estimate --build "$tmp/none" --work "$tmp/w" "$@" 2>/dev/null |
        sed -n 's/^estimate at sgemm [0-9.]* GFLOP\/s: \([0-9hms]*\).*/\1/p'
}
"$here/run" --estimate --device cuda:0 --build "$tmp/none" --work "$tmp/w" >"$tmp/est" 2>&1
want="where: cpu: layers, forward, service; cuda:0: e2e, scaling"
check "run --estimate --device cuda:0: what runs where" "$want" "$(grep '^where:' "$tmp/est")"
grep -q '^estimate at .* on the CPU; on cuda:0 (e2e, scaling): not estimated on a GPU$' \
    "$tmp/est"
check "run --estimate --device cuda:0: the device's jobs are not estimated" 0 $?
got=$("$here/run" --estimate --device cuda:2 --compare-cpu --only e2e --build "$tmp/none" \
    --work "$tmp/w" 2>/dev/null | grep '^where:')
check "run --estimate --compare-cpu: the jobs on both" "where: cpu: e2e; cuda:2: e2e" "$got"
got=$("$here/run" --estimate --build "$tmp/none" --work "$tmp/w" 2>/dev/null | grep '^where:')
check "run --estimate on the CPU: everything there" \
    "where: cpu: layers, forward, e2e, scaling, service" "$got"
# --full's jobs are days on the CPU: on a device only the fixed 30 s are left of them, and
# --compare-cpu brings back the CPU's whole estimate
check "run --estimate --full: no CPU time for the device's jobs" 0h00m30s \
    "$(est --full --only e2e,scaling --device cuda:0)"
check "run --estimate --full --compare-cpu: the CPU's jobs counted" \
    "$(est --full --only e2e,scaling)" "$(est --full --only e2e,scaling --device cuda:0 \
    --compare-cpu)"

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

# ---- 5. the jobs on a device -----------------------------------------------------------------
emu="$build/tests/emu/libquantd-cuda-emu.so"
driver="$build/tests/fake-driver"
if [ -x "$build/daemon/quantd" ]; then
    # a device quantd cannot open (here a module that does not exist) stops the run at once
    QUANTD_CUDA_MODULE="$tmp/none.so" LD_LIBRARY_PATH="$driver" "$here/run" --tiny --only e2e \
        --device cuda:0 --build "$build" --no-build --work "$tmp/w0" >/dev/null 2>"$tmp/err"
    check "run --device cuda:0 that quantd cannot open: exit 1" 1 $?
    grep -q "^bench/run: --device cuda:0: quantd cannot run a job there: " "$tmp/err"
    check "run --device cuda:0 that quantd cannot open: says so" 0 $?
fi
# gpu_run WORK [ARGS]: bench/run --tiny on the emulated cuda:0, the table's rows in WORK.rows
gpu_run() {
    local w=$1
    shift
    QUANTD_CUDA_MODULE="$emu" LD_LIBRARY_PATH="$driver" "$here/run" --tiny --device cuda:0 \
        --build "$build" --no-build --no-profile --work "$w" "$@" >"$w.out" 2>"$w.err"
    local rc=$?
    grep '^| ' "$w.out" | sed 's/^| //; s/ |$//; s/ | /\t/g' >"$w.rows"
    return "$rc"
}
# cell ROWS WHAT_REGEX COLUMN: that column (2 result, 3 reference, 4 ratio) of each matching row
cell() { awk -F '\t' -v re="$2" -v c="$3" '$1 ~ re { print $c }' "$1"; }
if [ -f "$emu" ] && [ -f "$driver/libcuda.so.1" ] && [ -x "$build/daemon/quantd" ]; then
    # without nvidia-smi (when this host has none): "?"
    if ! command -v nvidia-smi >/dev/null 2>&1; then
        gpu_run "$tmp/g1" --only e2e --compare-cpu
        check "run --device cuda:0 --compare-cpu on the emulator" 0 $?
        check "emulator: 3 device wall-time rows, on the emulated cuda:0" 3 \
            "$(grep -c $'^e2e [a-z]* (.*) on cuda:0 (.*): wall time\t' "$tmp/g1.rows")"
        check "emulator, no nvidia-smi: peak GPU memory ? for each job" "$(printf '?\n?\n?')" \
            "$(cell "$tmp/g1.rows" 'on cuda:0 .*: peak GPU memory$' 2)"
    else
        echo "skip emulator without nvidia-smi: this host has one"
    fi
    # with the stand-in nvidia-smi: 1800 - 1000 MiB
    mkdir -p "$tmp/bin"
    cp "$here/testdata/nvidia-smi" "$tmp/bin/nvidia-smi" && chmod +x "$tmp/bin/nvidia-smi"
    PATH="$tmp/bin:$PATH" gpu_run "$tmp/g2" --only e2e --compare-cpu
    check "run --device cuda:0 --compare-cpu with the stand-in nvidia-smi" 0 $?
    check "stand-in nvidia-smi: peak GPU memory 800 MiB for each job" \
        "$(printf '800 MiB\n800 MiB\n800 MiB')" \
        "$(cell "$tmp/g2.rows" 'on cuda:0 .*: peak GPU memory$' 2)"
    grep -q '^machine: .*, GPU Stand-in GPU, 4096 MiB$' "$tmp/g2.out"
    check "stand-in nvidia-smi: the GPU in the header" 0 $?
    for method in rtn awq gptq; do
        ref=$(cell "$tmp/g2.rows" "^e2e $method .* on cuda:0 .*: wall time\$" 3)
        check "emulator: e2e $method is the CPU's artifact" 1 \
            "$(echo "$ref" | grep -c '^cpu run [0-9.]* s; artifact: same bytes$')"
        check "emulator: e2e $method ratio is CPU time / device time" 1 \
            "$(cell "$tmp/g2.rows" "^e2e $method .* on cuda:0 .*: wall time\$" 4 |
               grep -c '^[0-9]*\.[0-9][0-9]x cpu time$')"
        check "emulator: e2e $method also ran on the CPU" 1 \
            "$(grep -c "^e2e $method .* on cpu: wall time"$'\t' "$tmp/g2.rows")"
    done
    # A later run in the same directory, the CPU's RTN checksum of one file altered: the
    # 2-layer scaling jobs are the end-to-end ones, compared through the checksums.
    f=$(awk 'NR == 1 { print $2 }' "$tmp/g2/e2e-rtn.sums")
    sed -i '1s/^./x/' "$tmp/g2/e2e-rtn.sums"
    gpu_run "$tmp/g2" --only scaling
    check "run --only scaling --device cuda:0 after it" 0 $?
    check "scaling: the altered file is named" \
        "differs: $f (sha256)" "$(cell "$tmp/g2.rows" '^scaling rtn: 2 layers, cuda:0 against' 3 |
                                 sed 's/.*; artifact: //')"
    check "scaling: the others are the same bytes" "$(printf 'same bytes (sha256)\n%.0s' 1 2)" \
        "$(cell "$tmp/g2.rows" '^scaling (awq|gptq): 2 layers, cuda:0 against' 3 |
           sed 's/.*; artifact: //')"
    check "scaling: the 1-layer jobs have no CPU run to compare with" 0 \
        "$(grep -c '^scaling [a-z]*: 1 layers, cuda:0 against' "$tmp/g2.rows")"
    check "scaling: a device chain row per method and size" 6 \
        "$(grep -c '^scaling [a-z]*: [12] layers (.*) on cuda:0 (' "$tmp/g2.rows")"
else
    echo "skip the jobs on the emulated device: no CUDA build (or its emulator is not built)"
fi

[ "$fails" -eq 0 ] || { echo "$fails check(s) failed"; exit 1; }
echo "all checks passed"
