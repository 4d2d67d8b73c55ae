#!/usr/bin/env bash
# Install what quantd needs, build it, and run it on the bundled example model.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/install-deps.sh --no-python
scripts/build.sh build >/dev/null
echo
echo "== quantd inspect examples/models/babyllama"
build/daemon/quantd inspect examples/models/babyllama
