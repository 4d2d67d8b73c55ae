#!/usr/bin/env bash
# Install what the tests need, then build and run the whole suite:
#   1. the normal build (CUDA compiled when a toolkit is found), every ctest label;
#   2. an ASan+UBSan build, every test again;
#   3. a clang libFuzzer build, each fuzz target for a bounded time (QD_FUZZ_SECONDS, 30 s, for
#      the file parsers; QD_FUZZ_RPC_SECONDS, 10 s, for each RPC's request decoding).
# Options: --no-asan, --no-fuzz skip steps 2 and 3.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
asan=1
fuzz=1
for a in "$@"; do
    case "$a" in
        --no-asan) asan=0 ;;
        --no-fuzz) fuzz=0 ;;
        -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
        *) echo "test.sh: unknown option '$a'" >&2; exit 2 ;;
    esac
done
jobs=$(nproc 2>/dev/null || echo 2)

scripts/install-deps.sh
# The library interop tests (torch, compressed-tensors, AutoAWQ, AutoGPTQ: several GB) are
# opt-in; without them those tests report skipped. tests/interop/README.md says more.
if [ "${QD_INTEROP:-0}" = 1 ]; then scripts/install-interop.sh; fi

echo "== build (default)"
scripts/build.sh build
echo "== ctest (default)"
ctest --test-dir build -j"$jobs" --output-on-failure

if [ "$asan" -eq 1 ]; then
    echo "== build (ASan+UBSan)"
    scripts/build.sh build-asan -DQUANTD_SANITIZE=ON -DQUANTD_CUDA=OFF
    echo "== ctest (ASan+UBSan)"
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
        ctest --test-dir build-asan -j"$jobs" --output-on-failure
fi

if [ "$fuzz" -eq 1 ]; then
    echo "== build (libFuzzer, clang)"
    CC=clang scripts/build.sh build-fuzz -DQUANTD_FUZZ=ON -DQUANTD_CUDA=OFF \
        -DCMAKE_BUILD_TYPE=RelWithDebInfo
    echo "== fuzz (${QD_FUZZ_SECONDS:-30} s per file target, ${QD_FUZZ_RPC_SECONDS:-10} s per RPC)"
    ctest --test-dir build-fuzz -j"$jobs" -L '^fuzz$' -E replay --output-on-failure
fi
