#!/usr/bin/env bash
# Install what quantd needs, build it, start the daemon on its embedded defaults (loopback
# 127.0.0.1:7433, data under the user's state directory), and quantize the bundled example
# model through it with quantctl: AWQ into an AutoAWQ checkpoint. Prints the per-layer
# quality report as the job runs, the artifact path, and the artifact's perplexity read back
# by `quantd eval`. The daemon is stopped (SIGTERM, drained) at the end.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/install-deps.sh --no-python
scripts/build.sh build >/dev/null
quantd=build/daemon/quantd
quantctl=build/clients/quantctl
model=examples/models/babyllama
data=examples/data/babyllama
work=$(mktemp -d)
out=${QUANTD_EXAMPLE_OUT:-$work/babyllama-awq}
log=$work/quantd.log

echo "== quantd serve (embedded defaults; log: $log)"
"$quantd" serve >"$log" 2>&1 &
pid=$!
stop() { kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true; }
trap stop EXIT
for _ in $(seq 1 300); do
    grep -q "listening on" "$log" 2>/dev/null && break
    kill -0 "$pid" 2>/dev/null || { cat "$log"; echo "quickstart: quantd serve exited" >&2; exit 1; }
    sleep 0.1
done
grep "listening on" "$log"

echo
echo "== quantctl quantize $model --method awq --format awq -o $out"
"$quantctl" quantize "$model" --method awq --format awq --bits 4 --group-size 32 \
    --calib "$data/calib.safetensors" --calib-rows 32 -o "$out"
echo
echo "artifact: $out"
echo
echo "== quantd eval $out (the fetched artifact, dequantized as the engine does)"
"$quantd" eval "$out" --data "$data/eval.safetensors"
echo "== quantd eval $model (the original, for comparison)"
"$quantd" eval "$model" --data "$data/eval.safetensors"
