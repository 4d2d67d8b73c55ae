#!/usr/bin/env bash
# Perplexity of every method x bits x group on the bundled models, as a Markdown table.
#   scripts/quality-table.sh [BUILD_DIR]      (default build/)
# Each cell runs `quantd quantize MODEL --method M --bits B --group-size G [--calib CALIB]
# --eval-data EVAL` (format none: an in-memory report; every other setting at its default, so
# AWQ and GPTQ calibrate on all 128 rows) and takes its perplexity_q line.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
quantd=${1:-"$root/build"}/daemon/quantd
[ -x "$quantd" ] || { echo "quality-table: $quantd not built" >&2; exit 1; }

ppl() { # model method bits group sym|asym
    local m=$1 method=$2 bits=$3 group=$4 sym=$5 calib=()
    [ "$method" = rtn ] || calib=(--calib "$root/examples/data/$m/calib.safetensors")
    "$quantd" quantize "$root/examples/models/$m" --method "$method" --bits "$bits" \
        --group-size "$group" "--$sym" "${calib[@]}" \
        --eval-data "$root/examples/data/$m/eval.safetensors" --quiet |
        awk '/^perplexity_q:/ {printf "%.4f", $2}'
}

for m in babyllama stories260k; do
    if [ "$m" = babyllama ]; then groups="32 -1"; else groups="-1"; fi
    fp=$("$quantd" eval "$root/examples/models/$m" \
        --data "$root/examples/data/$m/eval.safetensors" 2>/dev/null | awk '/^perplexity:/ {print $2}')
    echo
    echo "### $m (fp32 perplexity $fp)"
    echo
    echo "| bits | group | sym | RTN | AWQ | GPTQ |"
    echo "|---|---|---|---|---|---|"
    for bits in 4 3; do
        for g in $groups; do
            for sym in asym sym; do
                echo "| w$bits | $g | $sym | $(ppl $m rtn $bits $g $sym) | $(ppl $m awq $bits $g $sym) | $(ppl $m gptq $bits $g $sym) |"
            done
        done
    done
done
