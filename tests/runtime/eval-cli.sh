#!/bin/sh
# eval-cli.sh - the `quantd eval` binary on the bundled models prints the reference
# perplexities (examples/data/README.md) to 4 significant digits on its last stdout line.
set -u
: "${QUANTD:?QUANTD must name the quantd binary}"
: "${QD_SOURCE_DIR:?}"
fail=0
check() { # model reference
    out=$("$QUANTD" eval "$QD_SOURCE_DIR/examples/models/$1" \
        --data "$QD_SOURCE_DIR/examples/data/$1/eval.safetensors" 2>/dev/null) || {
        echo "FAIL $1: quantd eval exited $?"; fail=1; return; }
    last=$(printf '%s\n' "$out" | tail -n 1)
    case "$last" in
        "perplexity: "*) ;;
        *) echo "FAIL $1: last line is '$last'"; fail=1; return ;;
    esac
    if awk -v v="${last#perplexity: }" -v r="$2" \
        'BEGIN { d = v - r; if (d < 0) d = -d; exit !(d < 0.00005 * r) }'; then
        echo "ok   $1 $last"
    else
        echo "FAIL $1: $last, reference $2"; fail=1
    fi
}
check babyllama 6.8898
check stories260k 31.3962
"$QUANTD" eval --help | grep -q -- "--data" || { echo "FAIL --help"; fail=1; }
exit $fail
