#!/usr/bin/env bash
# Install what quantd needs, build it, and run it on the bundled example model: show the
# model, quantize it with AWQ into an AutoAWQ checkpoint with a quality report, and read the
# artifact back.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/install-deps.sh --no-python
scripts/build.sh build >/dev/null
quantd=build/daemon/quantd
model=examples/models/babyllama
data=examples/data/babyllama
out=${QUANTD_EXAMPLE_OUT:-$(mktemp -d)/babyllama-awq}

echo
echo "== quantd inspect $model"
"$quantd" inspect "$model"
echo
echo "== quantd quantize $model --method awq --format awq -o $out"
"$quantd" quantize "$model" --method awq --format awq --bits 4 --group-size 32 \
    --calib "$data/calib.safetensors" --calib-rows 32 \
    --eval-data "$data/eval.safetensors" -o "$out"
echo
echo "== quantd eval $out"
"$quantd" eval "$out" --data "$data/eval.safetensors"
