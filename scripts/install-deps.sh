#!/usr/bin/env bash
# Install the Debian 12 packages quantd needs to build and test.
# Non-interactive and idempotent: packages already present are left alone.
#
#   scripts/install-deps.sh            build + test dependencies
#   scripts/install-deps.sh --no-python  skip the optional Python interop packages
set -euo pipefail

want_python=1
for arg in "$@"; do
    case "$arg" in
        --no-python) want_python=0 ;;
        -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
        *) echo "install-deps: unknown option '$arg'" >&2; exit 2 ;;
    esac
done

pkgs=(
    build-essential cmake pkg-config git
    libgrpc-dev protobuf-c-compiler libprotobuf-c-dev protobuf-compiler
    libsqlite3-dev libyaml-dev libjansson-dev libssl-dev zlib1g-dev libmicrohttpd-dev
    libopenblas-dev liblapacke-dev
    clang libclang-rt-14-dev
    python3 python3-pip
    # tests: the Python client (Debian's grpcio/protobuf for /usr/bin/python3), the database
    # check after kill -9, TLS certificates, and the systemd unit check
    python3-grpcio python3-protobuf python3-grpc-tools
    sqlite3 openssl systemd
)

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

missing=()
for p in "${pkgs[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done

if [ ${#missing[@]} -gt 0 ]; then
    echo "install-deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -q
    $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
else
    echo "install-deps: all Debian packages present"
fi

# Optional: Python readers used by the interop tests. Their tests skip when these are missing.
if [ "$want_python" -eq 1 ]; then
    if ! python3 -c 'import safetensors, numpy' 2>/dev/null; then
        python3 -m pip install -q safetensors numpy 2>/dev/null \
            || python3 -m pip install -q --break-system-packages safetensors numpy 2>/dev/null \
            || echo "install-deps: python safetensors/numpy not installable; interop tests will skip"
    fi
fi
