#!/bin/sh
# cli-basics.sh - the quantd binary end to end: help, inspect, convert, and clean errors.
# Environment (set by ctest): QUANTD (the binary), QD_SOURCE_DIR (the repository).
set -u
fail=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
model="$QD_SOURCE_DIR/examples/models/babyllama"

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

check help 0 "inspect" -- "$QUANTD" --help
check version 0 "^quantd [0-9]" -- "$QUANTD" --version
check unknown-command 2 "unknown command 'frobnicate'" -- "$QUANTD" frobnicate
check no-args 2 "usage" -- "$QUANTD"

# babyllama: V=105, H=128, I=352, 5 layers, 8 heads / 4 kv heads of 16, tied embeddings.
# embed 105*128 + 5 * (q 128*128 + k,v 2*64*128 + o 128*128 + 3*352*128 + 2*128) + norm 128
check inspect-model 0 "architecture: LlamaForCausalLM" -- "$QUANTD" inspect "$model"
grep -q "parameters: 936,448$" "$tmp/out" || { echo "FAIL inspect-model: parameter count"; fail=1; }
grep -q "tensors: 47," "$tmp/out" || { echo "FAIL inspect-model: tensor count"; fail=1; }
grep -q "model.layers.4.mlp.down_proj.weight  *F32  *\[128, 352\]" "$tmp/out" ||
    { echo "FAIL inspect-model: down_proj row"; fail=1; }
check inspect-file 0 "model.norm.weight" -- "$QUANTD" inspect "$model/model.safetensors"
check inspect-missing 1 "no such file" -- "$QUANTD" inspect "$tmp/nope"
check inspect-usage 2 "unknown option" -- "$QUANTD" inspect --bogus

# a truncated weights file: the error names the file
mkdir "$tmp/broken"
cp "$model/config.json" "$tmp/broken/"
head -c 1000 "$model/model.safetensors" >"$tmp/broken/model.safetensors"
check inspect-truncated 1 "model.safetensors" -- "$QUANTD" inspect "$tmp/broken"

# an unsupported architecture is refused by name
mkdir "$tmp/gpt2"
sed 's/LlamaForCausalLM/GPT2LMHeadModel/' "$model/config.json" >"$tmp/gpt2/config.json"
cp "$model/model.safetensors" "$tmp/gpt2/"
check inspect-arch 1 "GPT2LMHeadModel" -- "$QUANTD" inspect "$tmp/gpt2"

# convert: bf16 in 3 shards, then read back
check convert 0 "wrote" -- "$QUANTD" convert "$model" -o "$tmp/bf16" --dtype bf16 --shards 3
check inspect-converted 0 "files: 3 safetensors shards" -- "$QUANTD" inspect "$tmp/bf16"
grep -q "BF16 x47" "$tmp/out" || { echo "FAIL inspect-converted: dtype summary"; fail=1; }
grep -q "torch_dtype bfloat16" "$tmp/out" || { echo "FAIL inspect-converted: torch_dtype"; fail=1; }
grep -q "parameters: 936,448$" "$tmp/out" || { echo "FAIL inspect-converted: params"; fail=1; }
[ -f "$tmp/bf16/tokenizer.bin" ] || { echo "FAIL convert: tokenizer.bin not copied"; fail=1; }
check convert-exists 1 "already exists" -- "$QUANTD" convert "$model" -o "$tmp/bf16"
check convert-bad-dtype 2 "expected f32, f16 or bf16" -- "$QUANTD" convert "$model" -o "$tmp/x" --dtype int3
check convert-bad-shards 1 "only 47 tensors" -- "$QUANTD" convert "$model" -o "$tmp/y" --shards 48
ls "$tmp" | grep -q staging && { echo "FAIL convert: staging directory left behind"; fail=1; }

exit $fail
