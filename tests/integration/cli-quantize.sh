#!/bin/sh
# cli-quantize.sh - `quantd quantize` end to end: the quality report, an artifact written with
# -o that `quantd eval` reads back to the same perplexity, `quantd inspect` on it, and clean
# refusals of bad specs before any work starts.
# Environment (set by ctest): QUANTD (the binary), QD_SOURCE_DIR (the repository).
set -u
fail=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
model="$QD_SOURCE_DIR/examples/models/babyllama"
calib="$QD_SOURCE_DIR/examples/data/babyllama/calib.safetensors"
eval_set="$QD_SOURCE_DIR/examples/data/babyllama/eval.safetensors"

check() { # check NAME EXPECTED_STATUS PATTERN -- command...
    name=$1 want=$2 pattern=$3
    shift 4
    "$@" >"$tmp/out" 2>&1
    got=$?
    if [ "$got" -ne "$want" ]; then
        echo "FAIL $name: exit $got, want $want"; sed 's/^/    /' "$tmp/out"; fail=1; return
    fi
    if [ -n "$pattern" ] && ! grep -q -- "$pattern" "$tmp/out"; then
        echo "FAIL $name: output lacks '$pattern'"; sed 's/^/    /' "$tmp/out"; fail=1; return
    fi
    echo "ok   $name"
}

check help 0 "damp-percent" -- "$QUANTD" quantize --help

# RTN w4 g32 asym, the reference table's convention: 7.0383 (examples/data/README.md)
check rtn-report 0 "perplexity_q: 7.038" -- "$QUANTD" quantize "$model" --method rtn --bits 4 \
    --group-size 32 --asym --eval-data "$eval_set" --quiet
grep -q "^perplexity_fp: 6.8897" "$tmp/out" || { echo "FAIL rtn-report: perplexity_fp"; fail=1; }

# GPTQ into the GPTQ format: the artifact reads back to the in-memory perplexity
check gptq-artifact 0 "artifact: $tmp/gptq" -- "$QUANTD" quantize "$model" --method gptq \
    --format gptq --bits 4 --group-size 32 --calib "$calib" --calib-rows 8 \
    --eval-data "$eval_set" -o "$tmp/gptq" --quiet
mem=$(awk '/^perplexity_q:/ {print $2}' "$tmp/out")
grep -q "^layer   4  qkv [0-9.e+-]*  o [0-9.e+-]*  gate_up [0-9.e+-]*  down " "$tmp/out" ||
    { echo "FAIL gptq-artifact: per-layer report"; fail=1; }
check gptq-eval 0 "perplexity: $mem" -- "$QUANTD" eval "$tmp/gptq" --data "$eval_set"
grep -q "format: gptq" "$tmp/out" || { echo "FAIL gptq-eval: format line"; fail=1; }
check gptq-inspect 0 "qweight" -- "$QUANTD" inspect "$tmp/gptq"
grep -q '"checkpoint_format": "gptq"' "$tmp/out" || { echo "FAIL gptq-inspect: config"; fail=1; }
# --dequantize writes the weights the reader computes with: a float model with the same
# perplexity to the last digit, no packed tensors and no quantization_config left.
check gptq-dequantize 0 "35 linears dequantized" -- "$QUANTD" convert "$tmp/gptq" \
    -o "$tmp/gptq-f32" --dequantize --dtype f32
check gptq-dequantized-eval 0 "perplexity: $mem" -- "$QUANTD" eval "$tmp/gptq-f32" \
    --data "$eval_set"
grep -q "format:" "$tmp/out" && { echo "FAIL gptq-dequantized-eval: still read as packed"; fail=1; }
grep -q quantization_config "$tmp/gptq-f32/config.json" &&
    { echo "FAIL gptq-dequantize: quantization_config kept"; fail=1; }
[ -e "$tmp/gptq-f32/quantize_config.json" ] &&
    { echo "FAIL gptq-dequantize: side config kept"; fail=1; }
check float-dequantize 1 "no packed linears" -- "$QUANTD" convert "$model" -o "$tmp/y" \
    --dequantize

# bad specs are refused before any work, naming the field
check bad-group 2 "--group-size 96: does not divide in_features 128 of model.layers.0.self_attn.q_proj" -- "$QUANTD" quantize "$model" \
    --method rtn --bits 4 --group-size 96
check bad-bits 2 "--bits 3" -- "$QUANTD" quantize "$model" --method awq --format awq --bits 3 \
    --calib "$calib"
check no-calib 2 "calib" -- "$QUANTD" quantize "$model" --method gptq --format gptq
check sym-awq 2 "--sym" -- "$QUANTD" quantize "$model" --method awq --format awq --sym \
    --calib "$calib"
check no-format 2 "--format" -- "$QUANTD" quantize "$model" --method rtn -o "$tmp/x"
check unknown-flag 2 "unknown option '--frobnicate'" -- "$QUANTD" quantize "$model" \
    --method rtn --frobnicate
check exists 2 "already exists" -- "$QUANTD" quantize "$model" --method rtn --format gptq \
    -o "$tmp/gptq"
ls "$tmp" | grep -q staging && { echo "FAIL: staging directory left behind"; fail=1; }
exit $fail
